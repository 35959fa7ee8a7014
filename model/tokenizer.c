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
#include <stdlib.h>
#include <string.h>

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
	default:
		return false;
	}
}

/* Piece of a valid id (the caller has checked the range). */
static void tok_piece(const struct dp_tok *t, int32_t id, const char **piece, size_t *len)
{
	switch (t->kind) {
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
