/* SPDX-License-Identifier: MIT */
/*
 * model/tokenizer.h — text <-> token ids, behind one interface.
 *
 * A struct dp_tok is opaque; its kind picks the implementation:
 *
 *   DP_TOK_BYTES  byte level (the embedded model): ids 0..255 are the bytes
 *                 0x00..0xff, then n_specials special ids: 256 = BOS,
 *                 257 = EOS, 258 = PAD, 259.. reserved (special, no role).
 *                 vocab size = 256 + n_specials.
 *   DP_TOK_BPE    a model directory's tokenizer.json (tok/tok.h's byte-level
 *                 BPE, DeepSeek V4's). vocab size is the model's (config.json
 *                 vocab_size); a tokenizer that can produce an id past it is
 *                 refused at load. Ids no token defines have empty pieces.
 *                 Roles: tokenizer_config.json's bos_token / eos_token /
 *                 pad_token, else config.json's *_token_id (V4: BOS 0, EOS 1).
 *                 Unlike the byte kind, encoding matches the added tokens
 *                 written in the text ("<｜User｜>" is one special id), as
 *                 `tokenizers` does and as V4's chat format needs.
 *
 * Every id of the vocabulary has a *piece*: the bytes it stands for. A
 * special id's piece is empty, so decoding a special id emits nothing (no
 * marker); callers that want to show one test dp_tok_is_special() first.
 * Decoding is the concatenation of pieces; ids outside [0, vocab size) are
 * -EINVAL.
 *
 * Encoding takes raw bytes (any bytes, NUL included, not necessarily UTF-8).
 * The byte kind never produces a special id from text: "<s>" in a prompt is
 * three bytes. Specials are added on request (DP_TOK_ADD_BOS / _EOS).
 *
 * Streaming decode turns one id at a time into bytes for a client. With
 * DP_TOK_STREAM_UTF8 it emits only whole, valid UTF-8: the bytes of an
 * incomplete character wait in the stream until it completes, and every
 * ill-formed sequence (maximal subpart, as Unicode's "substitution of
 * maximal subparts") comes out as U+FFFD. dp_tok_stream_flush() ends the
 * stream. Without the flag each id's piece is emitted as it is.
 *
 * No call allocates except dp_tok_new_*; every output goes to a buffer the
 * caller sizes with the *_bound() helpers, so the per-token path (the
 * stream calls) is allocation-free. A struct dp_tok is immutable after
 * creation: any thread may use it concurrently. A struct dp_tok_stream
 * belongs to one decoding sequence (one thread at a time).
 *
 * Errors are negative errno values; ret_* outputs are untouched on failure:
 *   -EINVAL   a bad argument or an id outside the vocabulary
 *   -ENOBUFS  the output buffer is too small (use the *_bound() helpers)
 *   -ENOENT   the tokenizer has no such special id (dp_tok_special)
 *   -ENOMEM   allocation failed (dp_tok_new_*)
 */
#ifndef DP_MODEL_TOKENIZER_H
#define DP_MODEL_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum dp_tok_kind {
	DP_TOK_BYTES,
	DP_TOK_BPE, /* tokenizer.json (tok/) */
	DP_TOK_KIND_MAX,
};

/* Roles a special id can play. */
enum dp_tok_special {
	DP_TOK_BOS,
	DP_TOK_EOS,
	DP_TOK_PAD,
	DP_TOK_SPECIAL_MAX,
};

/* dp_tok_encode flags. */
enum dp_tok_encode_flags {
	DP_TOK_ADD_BOS = 1u << 0, /* prepend BOS (-ENOENT if there is none) */
	DP_TOK_ADD_EOS = 1u << 1, /* append EOS (-ENOENT if there is none) */
	DP_TOK_ENCODE_FLAGS_MAX = 1u << 2,
};

/* dp_tok_stream_init flags. */
enum dp_tok_stream_flags {
	DP_TOK_STREAM_UTF8 = 1u << 0, /* emit whole valid UTF-8 only (see above) */
	/* emit a special id's text (BPE: its added token, "</think>") instead of
	 * nothing: what an output parser must see */
	DP_TOK_STREAM_SPECIALS = 1u << 1,
	DP_TOK_STREAM_FLAGS_MAX = 1u << 2,
};

/* The byte tokenizer's fixed ids. */
#define DP_TOK_BYTES_BOS 256
#define DP_TOK_BYTES_EOS 257
#define DP_TOK_BYTES_PAD 258
/* Most specials a byte tokenizer may have (ids stay below 2^16). */
#define DP_TOK_BYTES_SPECIALS_MAX (65536 - 256)

/* U+FFFD REPLACEMENT CHARACTER in UTF-8: what ill-formed input becomes. */
#define DP_TOK_UTF8_REPLACEMENT "\xef\xbf\xbd"

struct dp_tok;

/* Streaming-decode state: embed it anywhere, set it up with
 * dp_tok_stream_init(). Fields are private. */
struct dp_tok_stream {
	uint8_t pending[4]; /* bytes of an incomplete UTF-8 character */
	uint8_t n_pending;
	uint8_t need; /* total length of that character */
	uint8_t flags;
};

/* A byte tokenizer with n_specials special ids after the 256 byte ids:
 * 0 <= n_specials <= DP_TOK_BYTES_SPECIALS_MAX; the first three take the
 * roles BOS, EOS, PAD in that order (fewer specials: fewer roles).
 * dualpath's byte models use n_specials = 3 (vocab 259). */
int dp_tok_new_bytes(int n_specials, struct dp_tok **ret_tok);
/* The tokenizer.json of model directory dir (and its tokenizer_config.json
 * and config.json for the special roles) for a model of vocab_size ids
 * (0: as many as the tokenizer defines, for tools without a model).
 * -EINVAL (a malformed or unsupported tokenizer.json, ids past vocab_size)
 * and I/O errors fill err with one line naming the file and the fault. */
int dp_tok_new_bpe(const char *dir, int32_t vocab_size, struct dp_tok **ret_tok, char *err,
                   size_t err_len);
/* Accepts NULL. */
void dp_tok_free(struct dp_tok *t);

enum dp_tok_kind dp_tok_kind(const struct dp_tok *t);
/* Number of ids (valid ids are 0 .. vocab size - 1). */
int32_t dp_tok_vocab_size(const struct dp_tok *t);
/* The id playing `role`, or -ENOENT if none does, -EINVAL on bad input. */
int32_t dp_tok_special(const struct dp_tok *t, enum dp_tok_special role);
/* True for special (control) ids; false for ordinary and invalid ids. */
bool dp_tok_is_special(const struct dp_tok *t, int32_t id);
/* The piece of `id`: *ret_piece points into the tokenizer (valid until
 * dp_tok_free) and is not NUL-terminated; *ret_len is 0 for specials. */
int dp_tok_piece(const struct dp_tok *t, int32_t id, const char **ret_piece, size_t *ret_len);
/* Longest piece (special texts included), in bytes. */
size_t dp_tok_piece_max(const struct dp_tok *t);

/* Ids needed at most to encode `len` bytes with `flags` (0 on overflow). */
size_t dp_tok_encode_bound(const struct dp_tok *t, size_t len, unsigned flags);
/* Encode text[0..len) into ids[0..cap); *ret_n = ids written. text may be
 * NULL when len is 0. -ENOBUFS when cap is short of what the text needs
 * (cap >= dp_tok_encode_bound() never is); ids[] is then unspecified (the
 * byte tokenizer writes nothing). */
int dp_tok_encode(const struct dp_tok *t, const void *text, size_t len, unsigned flags,
                  int32_t *ids, size_t cap, size_t *ret_n);

/* Bytes needed at most to decode n ids (0 on overflow). */
size_t dp_tok_decode_bound(const struct dp_tok *t, size_t n);
/* Decode ids[0..n) into buf[0..cap) (not NUL-terminated); *ret_len = bytes
 * written. Nothing is written unless every id is valid and the result fits. */
int dp_tok_decode(const struct dp_tok *t, const int32_t *ids, size_t n, char *buf, size_t cap,
                  size_t *ret_len);

/* Streaming decode. flags: a mask of enum dp_tok_stream_flags. */
int dp_tok_stream_init(struct dp_tok_stream *s, unsigned flags);
/* Buffer size that always suffices for one dp_tok_stream_next/_flush call:
 * 3 * (dp_tok_piece_max + 3), as every held-back or ill-formed run becomes a
 * 3-byte U+FFFD. */
size_t dp_tok_stream_bound(const struct dp_tok *t);
/* Feed one id; the bytes now ready go to buf, *ret_len of them (maybe 0).
 * On error (invalid id, small buffer) the stream is unchanged. */
int dp_tok_stream_next(const struct dp_tok *t, struct dp_tok_stream *s, int32_t id, char *buf,
                       size_t cap, size_t *ret_len);
/* End the stream: emit what is held back (U+FFFD for an incomplete UTF-8
 * character) and reset it for reuse. */
int dp_tok_stream_flush(struct dp_tok_stream *s, char *buf, size_t cap, size_t *ret_len);

#ifdef __cplusplus
}
#endif
#endif /* DP_MODEL_TOKENIZER_H */
