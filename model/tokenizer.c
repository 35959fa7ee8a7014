/* SPDX-License-Identifier: MIT */
/*
 * The tokenizer interface (model/tokenizer.h) and its byte-level kind.
 *
 * Kinds share everything that works on pieces (decode, streaming, special
 * roles); what differs is dispatched on t->kind in two places: encoding
 * (tok_encode) and the id -> piece / special mapping (tok_piece,
 * dp_tok_is_special). A BPE kind adds its state to the union and a case to
 * each switch.
 */
#include "model/tokenizer.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "tok/tok.h"

struct dp_tok {
	enum dp_tok_kind kind;
	int32_t vocab_size;
	int32_t special[DP_TOK_SPECIAL_MAX]; /* id per role, or -1 */
	size_t piece_max;
	union {
		struct {
			/* piece of byte id b is bytes[b] (one byte); a constant
			 * table kept in the object so that pieces can point at it */
			char bytes[256];
		} bytes;
		struct {
			struct dp_bpe *bpe;
			/* Every id's decoded bytes, computed once at load: piece
			 * of id i is blob[off[i] .. off[i + 1]). A special id's
			 * bytes are its added token's text (its "markup"), which
			 * only DP_TOK_STREAM_SPECIALS shows; ids the tokenizer
			 * does not define (holes, and ids up to the model's
			 * vocab_size past the tokenizer's) have none. */
			char *blob;
			uint32_t *off;
			uint8_t *special; /* 1 per id: an added token marked special */
		} bpe;
	} u;
};

/* ---- construction --------------------------------------------------------- */

int dp_tok_new_bytes(int n_specials, struct dp_tok **ret_tok)
{
	struct dp_tok *t;

	if (!ret_tok || n_specials < 0 || n_specials > DP_TOK_BYTES_SPECIALS_MAX)
		return -EINVAL;
	t = calloc(1, sizeof(*t));
	if (!t)
		return -ENOMEM;
	t->kind = DP_TOK_BYTES;
	t->vocab_size = 256 + n_specials;
	for (int r = 0; r < DP_TOK_SPECIAL_MAX; r++)
		t->special[r] = r < n_specials ? 256 + r : -1;
	t->piece_max = 1;
	for (int b = 0; b < 256; b++)
		t->u.bytes.bytes[b] = (char)(unsigned char)b;
	*ret_tok = t;
	return 0;
}

void dp_tok_free(struct dp_tok *t)
{
	if (t && t->kind == DP_TOK_BPE) {
		dp_bpe_free(t->u.bpe.bpe);
		free(t->u.bpe.blob);
		free(t->u.bpe.off);
		free(t->u.bpe.special);
	}
	free(t);
}

/* ---- queries ------------------------------------------------------------- */

enum dp_tok_kind dp_tok_kind(const struct dp_tok *t)
{
	return t ? t->kind : DP_TOK_KIND_MAX;
}

int32_t dp_tok_vocab_size(const struct dp_tok *t)
{
	return t ? t->vocab_size : -EINVAL;
}

int32_t dp_tok_special(const struct dp_tok *t, enum dp_tok_special role)
{
	if (!t || (unsigned)role >= DP_TOK_SPECIAL_MAX)
		return -EINVAL;
	return t->special[role] >= 0 ? t->special[role] : -ENOENT;
}

bool dp_tok_is_special(const struct dp_tok *t, int32_t id)
{
	if (!t || id < 0 || id >= t->vocab_size)
		return false;
	switch (t->kind) {
	case DP_TOK_BYTES:
		return id >= 256;
	case DP_TOK_BPE:
		return t->u.bpe.special[id];
	default:
		return false;
	}
}

/* The bytes a valid id stands for, a special id's markup included. */
static void tok_markup(const struct dp_tok *t, int32_t id, const char **piece, size_t *len)
{
	*piece = t->u.bpe.blob + t->u.bpe.off[id];
	*len = t->u.bpe.off[id + 1] - t->u.bpe.off[id];
}

/* Piece of a valid id (the caller has checked the range). */
static void tok_piece(const struct dp_tok *t, int32_t id, const char **piece, size_t *len)
{
	switch (t->kind) {
	case DP_TOK_BPE:
		tok_markup(t, id, piece, len);
		if (t->u.bpe.special[id])
			*len = 0;
		return;
	case DP_TOK_BYTES:
		if (id < 256) {
			*piece = &t->u.bytes.bytes[id];
			*len = 1;
		} else {
			*piece = t->u.bytes.bytes; /* any valid pointer; empty */
			*len = 0;
		}
		return;
	default:
		*piece = "";
		*len = 0;
		return;
	}
}

int dp_tok_piece(const struct dp_tok *t, int32_t id, const char **ret_piece, size_t *ret_len)
{
	const char *p;
	size_t n;

	if (!t || !ret_piece || !ret_len || id < 0 || id >= t->vocab_size)
		return -EINVAL;
	tok_piece(t, id, &p, &n);
	*ret_piece = p;
	*ret_len = n;
	return 0;
}

size_t dp_tok_piece_max(const struct dp_tok *t)
{
	return t ? t->piece_max : 0;
}

/* ---- encode -------------------------------------------------------------- */

/* Ids for the text alone, at most. */
static size_t tok_text_bound(const struct dp_tok *t, size_t len)
{
	switch (t->kind) {
	case DP_TOK_BYTES:
		return len;
	case DP_TOK_BPE:
		return dp_bpe_encode_bound(t->u.bpe.bpe, len);
	default:
		return 0;
	}
}

size_t dp_tok_encode_bound(const struct dp_tok *t, size_t len, unsigned flags)
{
	size_t n, extra;

	if (!t || flags >= DP_TOK_ENCODE_FLAGS_MAX)
		return 0;
	n = tok_text_bound(t, len);
	extra = !!(flags & DP_TOK_ADD_BOS) + !!(flags & DP_TOK_ADD_EOS);
	if (n > SIZE_MAX - extra)
		return 0;
	return n + extra;
}

/* Encode the text alone into ids[0..cap); returns the count or -ENOBUFS. */
static int tok_encode(const struct dp_tok *t, const unsigned char *text, size_t len, int32_t *ids,
                      size_t cap, size_t *n)
{
	switch (t->kind) {
	case DP_TOK_BYTES:
		if (len > cap)
			return -ENOBUFS;
		for (size_t i = 0; i < len; i++)
			ids[i] = text[i];
		*n = len;
		return 0;
	case DP_TOK_BPE:
		return dp_bpe_encode(t->u.bpe.bpe, text, len, ids, cap, n);
	default:
		return -EINVAL;
	}
}

int dp_tok_encode(const struct dp_tok *t, const void *text, size_t len, unsigned flags,
                  int32_t *ids, size_t cap, size_t *ret_n)
{
	size_t n = 0, body;
	int ret;

	if (!t || (!text && len) || !ids || !ret_n || flags >= DP_TOK_ENCODE_FLAGS_MAX)
		return -EINVAL;
	if ((flags & DP_TOK_ADD_BOS) && t->special[DP_TOK_BOS] < 0)
		return -ENOENT;
	if ((flags & DP_TOK_ADD_EOS) && t->special[DP_TOK_EOS] < 0)
		return -ENOENT;
	/* A byte tokenizer's result size is known exactly: fail before writing. */
	if (t->kind == DP_TOK_BYTES && dp_tok_encode_bound(t, len, flags) > cap)
		return -ENOBUFS;
	if (flags & DP_TOK_ADD_BOS) {
		if (cap < 1)
			return -ENOBUFS;
		ids[n++] = t->special[DP_TOK_BOS];
	}
	ret = tok_encode(t, text, len, ids + n, cap - n, &body);
	if (ret < 0)
		return ret;
	n += body;
	if (flags & DP_TOK_ADD_EOS) {
		if (n >= cap)
			return -ENOBUFS;
		ids[n++] = t->special[DP_TOK_EOS];
	}
	*ret_n = n;
	return 0;
}

/* ---- decode -------------------------------------------------------------- */

size_t dp_tok_decode_bound(const struct dp_tok *t, size_t n)
{
	if (!t || (t->piece_max && n > SIZE_MAX / t->piece_max))
		return 0;
	return n * t->piece_max;
}

int dp_tok_decode(const struct dp_tok *t, const int32_t *ids, size_t n, char *buf, size_t cap,
                  size_t *ret_len)
{
	size_t len = 0, at = 0;
	const char *p;
	size_t k;

	if (!t || (!ids && n) || (!buf && cap) || !ret_len)
		return -EINVAL;
	/* Check and measure first: nothing is written on failure. */
	for (size_t i = 0; i < n; i++) {
		if (ids[i] < 0 || ids[i] >= t->vocab_size)
			return -EINVAL;
		tok_piece(t, ids[i], &p, &k);
		len += k;
	}
	if (len > cap)
		return -ENOBUFS;
	for (size_t i = 0; i < n; i++) {
		tok_piece(t, ids[i], &p, &k);
		memcpy(buf + at, p, k);
		at += k;
	}
	*ret_len = len;
	return 0;
}

/* ---- streaming decode ---------------------------------------------------- */

int dp_tok_stream_init(struct dp_tok_stream *s, unsigned flags)
{
	if (!s || flags >= DP_TOK_STREAM_FLAGS_MAX)
		return -EINVAL;
	memset(s, 0, sizeof(*s));
	s->flags = (uint8_t)flags;
	return 0;
}

size_t dp_tok_stream_bound(const struct dp_tok *t)
{
	if (!t)
		return 0;
	return 3 * (t->piece_max + 3);
}

/* Length of the UTF-8 character that lead byte b starts, or 0 if b cannot
 * start one (continuation bytes, overlong leads C0/C1, F5..FF). */
static unsigned utf8_lead_len(unsigned char b)
{
	if (b >= 0xc2 && b <= 0xdf)
		return 2;
	if (b >= 0xe0 && b <= 0xef)
		return 3;
	if (b >= 0xf0 && b <= 0xf4)
		return 4;
	return 0;
}

/* Range allowed for the byte after `lead` (Unicode Table 3-7: no overlongs,
 * no surrogates, nothing above U+10FFFF); later bytes are 80..BF. */
static void utf8_second_range(unsigned char lead, unsigned char *lo, unsigned char *hi)
{
	*lo = 0x80;
	*hi = 0xbf;
	if (lead == 0xe0)
		*lo = 0xa0;
	else if (lead == 0xed)
		*hi = 0x9f;
	else if (lead == 0xf0)
		*lo = 0x90;
	else if (lead == 0xf4)
		*hi = 0x8f;
}

/* Output cursor that only counts when out is NULL (the measuring pass). */
struct out_cursor {
	char *out;
	size_t len;
};

static void out_put(struct out_cursor *o, const void *p, size_t n)
{
	if (o->out)
		memcpy(o->out + o->len, p, n);
	o->len += n;
}

static void utf8_feed(struct dp_tok_stream *s, unsigned char b, struct out_cursor *o)
{
	unsigned char lo, hi;

	for (;;) {
		if (s->n_pending == 0) {
			unsigned need = utf8_lead_len(b);

			if (b < 0x80) {
				out_put(o, &b, 1);
			} else if (need) {
				s->pending[0] = b;
				s->n_pending = 1;
				s->need = (uint8_t)need;
			} else {
				out_put(o, DP_TOK_UTF8_REPLACEMENT, 3);
			}
			return;
		}
		lo = 0x80;
		hi = 0xbf;
		if (s->n_pending == 1)
			utf8_second_range(s->pending[0], &lo, &hi);
		if (b >= lo && b <= hi) {
			s->pending[s->n_pending++] = b;
			if (s->n_pending == s->need) {
				out_put(o, s->pending, s->n_pending);
				s->n_pending = 0;
			}
			return;
		}
		/* The pending bytes are a maximal ill-formed subpart: one U+FFFD
		 * for them, then b starts afresh. */
		out_put(o, DP_TOK_UTF8_REPLACEMENT, 3);
		s->n_pending = 0;
	}
}

static void stream_run(struct dp_tok_stream *s, const char *piece, size_t n, struct out_cursor *o)
{
	if (!(s->flags & DP_TOK_STREAM_UTF8)) {
		out_put(o, piece, n);
		return;
	}
	for (size_t i = 0; i < n; i++)
		utf8_feed(s, (unsigned char)piece[i], o);
}

int dp_tok_stream_next(const struct dp_tok *t, struct dp_tok_stream *s, int32_t id, char *buf,
                       size_t cap, size_t *ret_len)
{
	struct dp_tok_stream dry;
	struct out_cursor o = {0};
	const char *p;
	size_t n;

	if (!t || !s || (!buf && cap) || !ret_len || id < 0 || id >= t->vocab_size)
		return -EINVAL;
	if ((s->flags & DP_TOK_STREAM_SPECIALS) && t->kind == DP_TOK_BPE)
		tok_markup(t, id, &p, &n);
	else
		tok_piece(t, id, &p, &n);
	/* Measure on a copy, so that a short buffer changes nothing. */
	dry = *s;
	stream_run(&dry, p, n, &o);
	if (o.len > cap)
		return -ENOBUFS;
	o.out = buf;
	o.len = 0;
	stream_run(s, p, n, &o);
	*ret_len = o.len;
	return 0;
}

int dp_tok_stream_flush(struct dp_tok_stream *s, char *buf, size_t cap, size_t *ret_len)
{
	size_t len;

	if (!s || (!buf && cap) || !ret_len)
		return -EINVAL;
	len = s->n_pending ? 3 : 0;
	if (len > cap)
		return -ENOBUFS;
	if (len)
		memcpy(buf, DP_TOK_UTF8_REPLACEMENT, 3);
	s->n_pending = 0;
	s->need = 0;
	*ret_len = len;
	return 0;
}

/* ---- the BPE kind (tok/) ------------------------------------------------- */

static void bpe_fail(char *err, size_t err_len, const char *path, const char *why)
{
	if (err && err_len)
		snprintf(err, err_len, "%s: %s", path, why);
}

/* A special token named by tokenizer_config.json's key (a string or an
 * object with "content"), as an id of b; -ENOENT when absent. */
static int32_t config_token(const struct dp_bpe *b, json_t *cfg, const char *key)
{
	json_t *v = cfg ? json_object_get(cfg, key) : NULL;

	if (json_is_object(v))
		v = json_object_get(v, "content");
	if (!json_is_string(v))
		return -ENOENT;
	return dp_bpe_token_id(b, json_string_value(v));
}

/* Each id's bytes, once: decoding one id is the ByteLevel decoder's map of
 * its characters, so the concatenation of these pieces is dp_bpe_decode of
 * any sequence (without DP_BPE_LOSSY), which the stream decoder relies on. */
static int bpe_pieces(struct dp_tok *t)
{
	const struct dp_bpe *b = t->u.bpe.bpe;
	int32_t n_ids = dp_bpe_n_ids(b);
	size_t cap = 1 << 20, at = 0, one = dp_bpe_decode_bound(b, 1, 0);
	char *blob = malloc(cap);

	t->u.bpe.off = calloc((size_t)t->vocab_size + 1, sizeof(uint32_t));
	t->u.bpe.special = calloc((size_t)t->vocab_size, 1);
	if (!blob || !t->u.bpe.off || !t->u.bpe.special || !one) {
		free(blob);
		return -ENOMEM;
	}
	t->piece_max = 1;
	for (int32_t id = 0; id < t->vocab_size; id++) {
		size_t len = 0;

		t->u.bpe.off[id] = (uint32_t)at;
		if (id >= n_ids)
			continue;
		if (cap - at < one) {
			char *p;

			if (cap > UINT32_MAX / 2) {
				free(blob);
				return -ENOMEM;
			}
			p = realloc(blob, cap * 2);
			if (!p) {
				free(blob);
				return -ENOMEM;
			}
			blob = p;
			cap *= 2;
		}
		/* -EINVAL: a hole, an id neither vocab nor added tokens define */
		if (dp_bpe_decode(b, &id, 1, 0, blob + at, cap - at, &len) < 0)
			len = 0;
		at += len;
		if (len > t->piece_max)
			t->piece_max = len;
		t->u.bpe.special[id] = dp_bpe_is_special(b, id);
	}
	t->u.bpe.off[t->vocab_size] = (uint32_t)at;
	t->u.bpe.blob = blob;
	return 0;
}

int dp_tok_new_bpe(const char *dir, int32_t vocab_size, struct dp_tok **ret_tok, char *err,
                   size_t err_len)
{
	static const char *const keys[DP_TOK_SPECIAL_MAX] = {"bos_token", "eos_token", "pad_token"};
	static const char *const ids_keys[DP_TOK_SPECIAL_MAX] = {"bos_token_id", "eos_token_id",
	                                                         "pad_token_id"};
	/* DeepSeek's names, for a directory with neither file saying (a
	 * tokenizer.json alone, as dp-tokenize accepts) */
	static const char *const deepseek[DP_TOK_SPECIAL_MAX] = {
	    "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜▁pad▁｜>"};
	char path[4096], why[512] = "";
	json_t *tcfg = NULL, *mcfg = NULL;
	struct dp_tok *t;
	int ret;

	if (!dir || !ret_tok || vocab_size < 0)
		return -EINVAL;
	t = calloc(1, sizeof(*t));
	if (!t)
		return -ENOMEM;
	t->kind = DP_TOK_BPE;
	t->vocab_size = vocab_size;
	snprintf(path, sizeof(path), "%s/tokenizer.json", dir);
	ret = dp_bpe_load(path, &t->u.bpe.bpe, why, sizeof(why));
	if (ret < 0) {
		bpe_fail(err, err_len, path,
		         why[0] ? why : (ret == -ENOMEM ? "out of memory" : strerror(-ret)));
		goto fail;
	}
	if (!vocab_size)
		vocab_size = t->vocab_size = dp_bpe_n_ids(t->u.bpe.bpe);
	if (dp_bpe_n_ids(t->u.bpe.bpe) > vocab_size) {
		if (err && err_len)
			snprintf(err, err_len,
			         "%s: the tokenizer can produce ids up to %d, past config.json's "
			         "vocab_size %d (the model has no embedding row for them)",
			         path, dp_bpe_n_ids(t->u.bpe.bpe) - 1, vocab_size);
		ret = -EINVAL;
		goto fail;
	}
	if ((ret = bpe_pieces(t)) < 0) {
		bpe_fail(err, err_len, path, "out of memory");
		goto fail;
	}
	/* Special roles: tokenizer_config.json's bos_token/eos_token/pad_token
	 * (what transformers uses), else config.json's *_token_id. V4: BOS 0
	 * "<｜begin▁of▁sentence｜>", EOS 1 "<｜end▁of▁sentence｜>"; failing both,
	 * those DeepSeek token names themselves. */
	snprintf(path, sizeof(path), "%s/tokenizer_config.json", dir);
	tcfg = json_load_file(path, 0, NULL);
	snprintf(path, sizeof(path), "%s/config.json", dir);
	mcfg = json_load_file(path, 0, NULL);
	for (int r = 0; r < DP_TOK_SPECIAL_MAX; r++) {
		int32_t id = config_token(t->u.bpe.bpe, tcfg, keys[r]);
		json_t *v = mcfg ? json_object_get(mcfg, ids_keys[r]) : NULL;

		if (id < 0 && json_is_integer(v) && json_integer_value(v) >= 0 &&
		    json_integer_value(v) < dp_bpe_n_ids(t->u.bpe.bpe))
			id = (int32_t)json_integer_value(v);
		if (id < 0)
			id = dp_bpe_token_id(t->u.bpe.bpe, deepseek[r]);
		t->special[r] = id >= 0 ? id : -1;
	}
	json_decref(tcfg);
	json_decref(mcfg);
	*ret_tok = t;
	return 0;
fail:
	dp_tok_free(t);
	return ret;
}
