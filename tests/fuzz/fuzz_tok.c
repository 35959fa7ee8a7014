/* SPDX-License-Identifier: MIT */
/*
 * tests/fuzz/fuzz_tok.c — libFuzzer targets for tok/ (built twice):
 *
 *   fuzz_tokjson  the input is a tokenizer.json: dp_bpe_load_buf must load
 *                 it or refuse it with a message; a loaded one then encodes
 *                 the input itself (checked as below, less the round trip,
 *                 which Removed splits and prefix spaces break)
 *   fuzz_tok      the input is text for V4's tokenizer.json (DP_FUZZ_TOKJSON,
 *                 decompressed by the build): encode, then
 *                 decode(encode(x)) == x with ill-formed UTF-8 replaced by
 *                 U+FFFD, and a stream fed the ids one by one emits exactly
 *                 that decode, raw and lossy
 *
 * Every id must be below dp_bpe_n_ids, and the id count within
 * dp_bpe_encode_bound. ASan/UBSan/LSan watch tok/; jansson and PCRE2 are
 * the system's libraries.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tok/tok.h"

#define CHECK(cond)                                                                              \
	do {                                                                                     \
		if (!(cond)) {                                                                   \
			fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
			abort();                                                                 \
		}                                                                                \
	} while (0)

/* Encode, check ids and the stream against decode; return the decode
 * (malloc'd, lossy) for the caller's round-trip check. */
static char *encode_checked(const struct dp_bpe *b, const uint8_t *data, size_t size, size_t *ret_len)
{
	size_t cap = dp_bpe_encode_bound(b, size), n = 0;
	int32_t *ids = malloc((cap ? cap : 1) * sizeof(*ids));
	CHECK(ids);
	int r = dp_bpe_encode(b, data, size, ids, cap, &n);
	CHECK(r == 0 || r == -ENOMEM || r == -E2BIG);
	if (r < 0) {
		free(ids);
		return NULL;
	}
	CHECK(n <= cap);
	for (size_t i = 0; i < n; i++)
		CHECK(ids[i] >= 0 && ids[i] < dp_bpe_n_ids(b));
	char *out = NULL;
	size_t len = 0;
	for (unsigned flags = 0; flags < DP_BPE_FLAGS_MAX; flags++) {
		size_t dcap = dp_bpe_decode_bound(b, n, flags), dlen;
		char *dec = malloc(dcap + 1);
		CHECK(dec);
		CHECK(dp_bpe_decode(b, ids, n, flags, dec, dcap, &dlen) == 0);
		struct dp_bpe_stream s;
		size_t sb = dp_bpe_stream_bound(b), at = 0, k;
		char *chunk = malloc(sb);
		CHECK(chunk && dp_bpe_stream_init(&s, flags) == 0);
		for (size_t i = 0; i < n; i++) {
			CHECK(dp_bpe_stream_next(b, &s, ids[i], chunk, sb, &k) == 0);
			CHECK(at + k <= dlen && memcmp(dec + at, chunk, k) == 0);
			at += k;
		}
		CHECK(dp_bpe_stream_finish(&s, chunk, sb, &k) == 0);
		CHECK(at + k == dlen && memcmp(dec + at, chunk, k) == 0);
		free(chunk);
		if (flags == DP_BPE_LOSSY) {
			out = dec;
			len = dlen;
		} else {
			free(dec);
		}
	}
	free(ids);
	*ret_len = len;
	return out;
}

#ifdef DP_FUZZ_TOKJSON
static struct dp_bpe *v4;

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	char err[256] = "";
	(void)argc;
	(void)argv;
	if (dp_bpe_load(DP_FUZZ_TOKJSON, &v4, err, sizeof(err)) < 0) {
		fprintf(stderr, "fuzz_tok: %s\n", err);
		abort();
	}
	return 0;
}
#endif

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	size_t len;
#ifdef DP_FUZZ_TOKJSON
	char *dec = encode_checked(v4, data, size, &len);
	if (dec) {
		uint8_t *want = malloc(3 * size + 1);
		CHECK(want);
		size_t want_len = dp_bpe_utf8_lossy(data, size, want);
		CHECK(len == want_len && memcmp(dec, want, len) == 0);
		free(want);
		free(dec);
	}
#else
	struct dp_bpe *b = NULL;
	char err[256] = "";
	int r = dp_bpe_load_buf((const char *)data, size, &b, err, sizeof(err));
	CHECK(r == 0 || r == -EINVAL || r == -ENOMEM);
	if (r == -EINVAL)
		CHECK(err[0]);
	if (r == 0) {
		free(encode_checked(b, data, size, &len));
		dp_bpe_free(b);
	}
#endif
	return 0;
}
