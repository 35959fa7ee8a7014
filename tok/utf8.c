/* SPDX-License-Identifier: MIT */
/*
 * tok/utf8.c — UTF-8 well-formedness as Unicode's Table 3-7 states it, and
 * the substitution of maximal subparts (one U+FFFD per maximal ill-formed
 * subpart), which Python's bytes.decode(errors="replace") and Rust's
 * String::from_utf8_lossy both follow: what `tokenizers` users feed it.
 */
#include <string.h>

#include "tok/tok-internal.h"

int dp_bpe_utf8_char(const uint8_t *s, size_t n)
{
	uint8_t c = s[0];
	int need;
	uint8_t lo = 0x80, hi = 0xbf; /* range of the second byte */

	if (c < 0x80)
		return 1;
	if (c >= 0xc2 && c <= 0xdf) {
		need = 2;
	} else if (c >= 0xe0 && c <= 0xef) {
		need = 3;
		if (c == 0xe0)
			lo = 0xa0;
		else if (c == 0xed)
			hi = 0x9f;
	} else if (c >= 0xf0 && c <= 0xf4) {
		need = 4;
		if (c == 0xf0)
			lo = 0x90;
		else if (c == 0xf4)
			hi = 0x8f;
	} else {
		return -1;
	}
	for (int i = 1; i < need; i++) {
		if ((size_t)i >= n)
			return 0;
		uint8_t x = s[i];
		bool ok = i == 1 ? (x >= lo && x <= hi) : (x >= 0x80 && x <= 0xbf);
		if (!ok)
			return -i;
	}
	return need;
}

size_t dp_bpe_utf8_lossy(const uint8_t *src, size_t n, uint8_t *dst)
{
	size_t i = 0, o = 0;

	while (i < n) {
		/* runs of ASCII copy fast */
		if (src[i] < 0x80) {
			dst[o++] = src[i++];
			continue;
		}
		int k = dp_bpe_utf8_char(src + i, n - i);
		if (k > 0) {
			memcpy(dst + o, src + i, (size_t)k);
			o += (size_t)k;
			i += (size_t)k;
		} else {
			memcpy(dst + o, DP_BPE_UTF8_REPLACEMENT, 3);
			o += 3;
			i += k == 0 ? n - i : (size_t)-k;
		}
	}
	return o;
}

bool dp_bpe_utf8_valid(const uint8_t *s, size_t n)
{
	size_t i = 0;

	while (i < n) {
		if (s[i] < 0x80) {
			i++;
			continue;
		}
		int k = dp_bpe_utf8_char(s + i, n - i);
		if (k <= 0)
			return false;
		i += (size_t)k;
	}
	return true;
}
