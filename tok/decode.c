/* SPDX-License-Identifier: MIT */
/*
 * tok/decode.c — ids to bytes (the ByteLevel decoder) and the stream
 * decoder that holds back an incomplete UTF-8 character.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "tok/tok-internal.h"

static bool valid_flags(unsigned flags)
{
	return flags < DP_BPE_FLAGS_MAX;
}

size_t dp_bpe_decode_bound(const struct dp_bpe *b, size_t n, unsigned flags)
{
	size_t per;

	if (!b || !valid_flags(flags))
		return 0;
	per = b->piece_max * ((flags & DP_BPE_LOSSY) ? 3 : 1);
	if (per && n > (SIZE_MAX - 16) / per)
		return 0;
	return n * per;
}

/* The bytes of id, or NULL (and *len 0) when the flags leave it out. */
static const uint8_t *piece(const struct dp_bpe *b, int32_t id, unsigned flags, size_t *len)
{
	if ((flags & DP_BPE_SKIP_SPECIAL) && b->is_special[id]) {
		*len = 0;
		return NULL;
	}
	*len = (size_t)b->dec_len[id];
	return b->blob + b->dec_off[id];
}

int dp_bpe_decode(const struct dp_bpe *b, const int32_t *ids, size_t n, unsigned flags, char *buf,
                  size_t cap, size_t *ret_len)
{
	size_t total = 0, len;

	if (!b || (!ids && n) || (!buf && cap) || !ret_len || !valid_flags(flags))
		return -EINVAL;
	for (size_t i = 0; i < n; i++) {
		if (ids[i] < 0 || ids[i] >= b->n_ids || b->dec_len[ids[i]] < 0)
			return -EINVAL;
		piece(b, ids[i], flags, &len);
		total += len;
	}
	uint8_t *raw = (uint8_t *)buf;
	if (flags & DP_BPE_LOSSY) {
		raw = malloc(total ? total : 1);
		if (!raw)
			return -ENOMEM;
	} else if (total > cap) {
		return -ENOBUFS;
	}
	size_t o = 0;
	for (size_t i = 0; i < n; i++) {
		const uint8_t *p = piece(b, ids[i], flags, &len);
		if (len)
			memcpy(raw + o, p, len);
		o += len;
	}
	if (flags & DP_BPE_LOSSY) {
		uint8_t *fixed = malloc(3 * total + 1);
		if (!fixed) {
			free(raw);
			return -ENOMEM;
		}
		o = dp_bpe_utf8_lossy(raw, total, fixed);
		free(raw);
		if (o > cap) {
			free(fixed);
			return -ENOBUFS;
		}
		if (o)
			memcpy(buf, fixed, o);
		free(fixed);
	}
	*ret_len = o;
	return 0;
}

int dp_bpe_stream_init(struct dp_bpe_stream *s, unsigned flags)
{
	if (!s || !valid_flags(flags))
		return -EINVAL;
	memset(s, 0, sizeof(*s));
	s->flags = (uint8_t)flags;
	return 0;
}

size_t dp_bpe_stream_bound(const struct dp_bpe *b)
{
	return b ? 3 * (b->piece_max + 4) : 0;
}

/* Write an ill-formed run of k bytes: as it is, or one U+FFFD. */
static size_t put_bad(uint8_t *out, const uint8_t *p, size_t k, bool lossy)
{
	if (lossy) {
		memcpy(out, DP_BPE_UTF8_REPLACEMENT, 3);
		return 3;
	}
	memcpy(out, p, k);
	return k;
}

int dp_bpe_stream_next(const struct dp_bpe *b, struct dp_bpe_stream *s, int32_t id, char *buf,
                       size_t cap, size_t *ret_len)
{
	uint8_t pend[4];
	size_t np, len, i = 0, o = 0;

	if (!b || !s || (!buf && cap) || !ret_len || id < 0 || id >= b->n_ids || b->dec_len[id] < 0 ||
	    s->n_pending > 3)
		return -EINVAL;
	const uint8_t *p = piece(b, id, s->flags, &len);
	if (3 * (len + s->n_pending) > cap)
		return -ENOBUFS;
	bool lossy = s->flags & DP_BPE_LOSSY;
	uint8_t *out = (uint8_t *)buf;
	memcpy(pend, s->pending, sizeof(pend));
	np = s->n_pending;
	/* first finish the held-back character, a byte at a time: the first
	 * byte that does not fit it ends it as ill-formed, and is then read
	 * again as the start of what follows */
	while (np && i < len) {
		pend[np++] = p[i++];
		int k = dp_bpe_utf8_char(pend, np);
		if (k > 0) {
			memcpy(out + o, pend, (size_t)k);
			o += (size_t)k;
			np = 0;
		} else if (k < 0) {
			o += put_bad(out + o, pend, np - 1, lossy);
			np = 0;
			i--;
		}
	}
	while (i < len) {
		if (p[i] < 0x80) {
			out[o++] = p[i++];
			continue;
		}
		int k = dp_bpe_utf8_char(p + i, len - i);
		if (k > 0) {
			memcpy(out + o, p + i, (size_t)k);
			o += (size_t)k;
			i += (size_t)k;
		} else if (k < 0) {
			o += put_bad(out + o, p + i, (size_t)-k, lossy);
			i += (size_t)-k;
		} else {
			memcpy(pend, p + i, len - i); /* a proper prefix: at most 3 bytes */
			np = len - i;
			i = len;
		}
	}
	memcpy(s->pending, pend, sizeof(pend));
	s->n_pending = (uint8_t)np;
	*ret_len = o;
	return 0;
}

int dp_bpe_stream_finish(struct dp_bpe_stream *s, char *buf, size_t cap, size_t *ret_len)
{
	size_t o = 0;

	if (!s || (!buf && cap) || !ret_len || s->n_pending > 3)
		return -EINVAL;
	if (s->n_pending) {
		bool lossy = s->flags & DP_BPE_LOSSY;
		if (cap < (lossy ? 3u : s->n_pending))
			return -ENOBUFS;
		o = put_bad((uint8_t *)buf, s->pending, s->n_pending, lossy);
	}
	s->n_pending = 0;
	*ret_len = o;
	return 0;
}
