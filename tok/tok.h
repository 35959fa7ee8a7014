/* SPDX-License-Identifier: MIT */
/*
 * tok/tok.h — Hugging Face tokenizer.json byte-level BPE (DeepSeek V4, V3/R1,
 * GPT-2 family): load, encode, decode, streaming decode. The front door of
 * the part tok/; what it does is exact to the `tokenizers` library (PyPI,
 * Rust), checked id for id by tests/tok on a committed corpus.
 *
 * Names are dp_bpe_*: model/tokenizer.h already owns dp_tok_* (the byte
 * tokenizer behind one interface whose DP_TOK_BPE kind is meant to wrap a
 * struct dp_bpe).
 *
 * What is loaded (anything else is refused with the component named, never
 * approximated):
 *   model          BPE with vocab and merges ("a b" strings or [a, b]
 *                  arrays), ignore_merges; no dropout, no subword
 *                  prefix/suffix, no byte_fallback; every byte's token in
 *                  the vocab (byte level needs all 256)
 *   added_tokens   matched in the text before pre-tokenization, leftmost
 *                  longest, first those with normalized=false, then those
 *                  with normalized=true in what is left (as `tokenizers`
 *                  does); lstrip, rstrip, single_word honoured; special
 *                  ones are dropped by DP_BPE_SKIP_SPECIAL
 *   normalizer     null or an empty Sequence
 *   pre_tokenizer  Split (Regex or String pattern; behaviour Isolated or
 *                  Removed; invert), Digits, ByteLevel (add_prefix_space,
 *                  use_regex), nested in Sequences; ByteLevel must be last
 *   post_processor null, ByteLevel, TemplateProcessing or Sequence, none
 *                  of them applied: encoding is `tokenizers`'
 *                  encode(text, add_special_tokens=False), and a caller
 *                  puts BOS where its format says
 *   decoder        ByteLevel
 * Regexes run in PCRE2 (UTF, UCP, JIT); tests/tok/test_unicode.c checks that
 * its Unicode classes equal Oniguruma's (what `tokenizers` uses) on every
 * code point.
 *
 * Text in is bytes. `tokenizers` works on Rust strings, so its callers must
 * turn bytes into valid UTF-8 first; Python's bytes.decode(errors="replace")
 * and Rust's String::from_utf8_lossy both put one U+FFFD for each maximal
 * ill-formed subpart (Unicode ch. 3, "U+FFFD substitution of maximal
 * subparts"). dp_bpe_encode does the same, so ill-formed input encodes as
 * that replacement text does (and decodes back to it, not to the input).
 *
 * Decoding follows the ByteLevel decoder: each token's characters map back
 * to bytes (a token with a character outside the byte map, such as the
 * added token "<｜User｜>", is its own UTF-8). `tokenizers` then applies
 * from_utf8_lossy to the whole; we give the bytes as they are unless
 * DP_BPE_LOSSY asks for that replacement (then the result equals
 * `tokenizers`' decode). A token can end inside a UTF-8 character, so the
 * stream decoder holds such bytes back until the character completes: the
 * concatenation of everything a stream emits (dp_bpe_stream_next, then
 * dp_bpe_stream_finish) equals dp_bpe_decode of all its ids with the same
 * flags.
 *
 * Threads: a struct dp_bpe is immutable after dp_bpe_load*; any number of
 * threads may encode and decode with it at once. A struct dp_bpe_stream
 * belongs to one sequence. Encoding allocates scratch per call; decoding
 * does not allocate except with DP_BPE_LOSSY in dp_bpe_decode.
 *
 * Errors are negative errno values; ret_* outputs are untouched on failure:
 *   -EINVAL   bad argument, an id outside the vocabulary, a tokenizer.json
 *             that is malformed or of a kind not implemented (err says
 *             which component)
 *   -ENOBUFS  output buffer too small (the *_bound() helpers size it)
 *   -ENOMEM   allocation failed
 *   -EIO etc  reading the file (dp_bpe_load)
 */
#ifndef DP_TOK_TOK_H
#define DP_TOK_TOK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct dp_bpe;

/* Decode and stream flags. */
enum dp_bpe_flags {
	DP_BPE_SKIP_SPECIAL = 1u << 0, /* leave out added tokens marked special */
	DP_BPE_LOSSY = 1u << 1,        /* ill-formed UTF-8 out becomes U+FFFD */
	DP_BPE_FLAGS_MAX = 1u << 2,
};

/* Load tokenizer.json from a file, or from json[0..len). On -EINVAL err
 * (if not NULL) holds one line naming what is wrong or not implemented. */
int dp_bpe_load(const char *path, struct dp_bpe **ret_bpe, char *err, size_t err_len);
int dp_bpe_load_buf(const char *json, size_t len, struct dp_bpe **ret_bpe, char *err,
                    size_t err_len);
/* Accepts NULL. */
void dp_bpe_free(struct dp_bpe *b);

/* 1 + the largest id of the vocabulary or the added tokens. Ids below it
 * that neither defines are invalid (-EINVAL). */
int32_t dp_bpe_n_ids(const struct dp_bpe *b);
/* The id of a token by its content (vocab or added token), or -ENOENT. */
int32_t dp_bpe_token_id(const struct dp_bpe *b, const char *content);
/* True for added tokens marked special; false otherwise and for bad ids. */
bool dp_bpe_is_special(const struct dp_bpe *b, int32_t id);

/* Ids that encoding len bytes can take at most (0 on overflow). */
size_t dp_bpe_encode_bound(const struct dp_bpe *b, size_t len);
/* Encode text[0..len) into ids[0..cap), *ret_n of them. text may be NULL
 * when len is 0. -ENOBUFS when cap is short (never at the bound). */
int dp_bpe_encode(const struct dp_bpe *b, const void *text, size_t len, int32_t *ids, size_t cap,
                  size_t *ret_n);

/* Bytes that decoding n ids can take at most with flags (0 on overflow). */
size_t dp_bpe_decode_bound(const struct dp_bpe *b, size_t n, unsigned flags);
/* Decode ids[0..n) into buf[0..cap) (no NUL), *ret_len bytes. */
int dp_bpe_decode(const struct dp_bpe *b, const int32_t *ids, size_t n, unsigned flags, char *buf,
                  size_t cap, size_t *ret_len);

/* Streaming decode: embed anywhere, set up with dp_bpe_stream_init. */
struct dp_bpe_stream {
	uint8_t pending[4]; /* the start of an incomplete UTF-8 character */
	uint8_t n_pending;
	uint8_t flags;
};
int dp_bpe_stream_init(struct dp_bpe_stream *s, unsigned flags);
/* A buffer of this size always suffices for one next or finish call. */
size_t dp_bpe_stream_bound(const struct dp_bpe *b);
/* Feed one id; the bytes now complete go to buf, *ret_len of them (maybe
 * 0). On error the stream is unchanged. */
int dp_bpe_stream_next(const struct dp_bpe *b, struct dp_bpe_stream *s, int32_t id, char *buf,
                       size_t cap, size_t *ret_len);
/* End of the sequence: emit what is held back (as it is, or one U+FFFD with
 * DP_BPE_LOSSY) and make the stream ready for a new sequence. */
int dp_bpe_stream_finish(struct dp_bpe_stream *s, char *buf, size_t cap, size_t *ret_len);

/* The text dp_bpe_encode tokenizes: src[0..n) with each maximal ill-formed
 * UTF-8 subpart (a trailing incomplete character included) replaced by
 * U+FFFD, into dst (room for 3 * n bytes); returns its length. */
size_t dp_bpe_utf8_lossy(const uint8_t *src, size_t n, uint8_t *dst);

#endif /* DP_TOK_TOK_H */
