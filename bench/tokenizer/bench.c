/* SPDX-License-Identifier: MIT */
/*
 * bench-tokenizer TOKENIZER_JSON PARITY_BIN [REPS [SKIP_KIND]] — tok/'s encode and
 * decode speed, single thread, on the documents of a parity file
 * (tests/tok/gen_parity.py's format; each document encoded on its own, as
 * a request is). Prints one line per rep for bench/tokenizer/run, which
 * runs tokenizers (Rust, through its Python binding) on the same documents
 * in the same run, interleaved, and prints the table and RESULT lines:
 *
 *   encode bytes=B ids=N seconds=S
 *   decode ids=N bytes=B seconds=S
 *
 * SKIP_KIND leaves out the documents of that kind (10: the long runs of
 * one character, on which tokenizers is far slower than on text).
 * Load time is not counted (a daemon loads once).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/clock.h"
#include "tok/tok.h"

struct doc {
	const uint8_t *text;
	size_t len;
	int32_t *ids;
	size_t n_ids;
};

static uint8_t *read_file(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	if (!f)
		return NULL;
	fseek(f, 0, SEEK_END);
	long n = ftell(f);
	fseek(f, 0, SEEK_SET);
	uint8_t *p = n >= 0 ? malloc((size_t)n + 1) : NULL;
	if (p && fread(p, 1, (size_t)n, f) != (size_t)n) {
		free(p);
		p = NULL;
	}
	fclose(f);
	*len = (size_t)n;
	return p;
}

static uint32_t u32(const uint8_t *p, size_t *pos, size_t len, bool *ok)
{
	uint32_t v = 0;
	if (*pos + 4 > len) {
		*ok = false;
		return 0;
	}
	memcpy(&v, p + *pos, 4);
	*pos += 4;
	return v;
}

int main(int argc, char **argv)
{
	if (argc < 3 || argc > 5) {
		fprintf(stderr, "usage: bench-tokenizer TOKENIZER_JSON PARITY_BIN [REPS [SKIP_KIND]]\n");
		return 2;
	}
	int reps = argc >= 4 ? atoi(argv[3]) : 1;
	long skip = argc == 5 ? atol(argv[4]) : -1;
	char err[256] = "";
	struct dp_bpe *b;
	int r = dp_bpe_load(argv[1], &b, err, sizeof(err));
	if (r < 0) {
		fprintf(stderr, "bench-tokenizer: %s\n", err[0] ? err : strerror(-r));
		return 1;
	}
	size_t len, pos = 16;
	uint8_t *data = read_file(argv[2], &len);
	if (!data || len < 16 || memcmp(data, "DPTOKPAR", 8) != 0) {
		fprintf(stderr, "bench-tokenizer: %s is not a parity file\n", argv[2]);
		return 1;
	}
	uint32_t n_docs;
	memcpy(&n_docs, data + 12, 4);
	struct doc *docs = calloc(n_docs, sizeof(*docs));
	bool ok = docs != NULL;
	size_t total = 0, max_ids = 0;
	uint32_t kept = 0;
	for (uint32_t i = 0; ok && i < n_docs; i++) {
		uint32_t kind = u32(data, &pos, len, &ok);
		struct doc *d = &docs[kept];
		d->len = u32(data, &pos, len, &ok);
		d->text = data + pos;
		pos += d->len;
		pos += 4 * (size_t)u32(data, &pos, len, &ok);
		ok = ok && pos <= len;
		if ((long)kind == skip)
			continue;
		kept++;
		total += d->len;
		size_t cap = dp_bpe_encode_bound(b, d->len);
		d->ids = malloc((cap ? cap : 1) * sizeof(int32_t));
		ok = ok && d->ids;
		if (cap > max_ids)
			max_ids = cap;
	}
	n_docs = kept;
	if (!ok) {
		fprintf(stderr, "bench-tokenizer: %s is truncated\n", argv[2]);
		return 1;
	}
	char *out = malloc(dp_bpe_decode_bound(b, max_ids, 0) + 1);
	for (int rep = 0; rep < reps; rep++) {
		size_t n_ids = 0, bytes = 0;
		uint64_t t0 = dp_clock_ns();
		for (uint32_t i = 0; i < n_docs; i++) {
			r = dp_bpe_encode(b, docs[i].text, docs[i].len, docs[i].ids,
			                  dp_bpe_encode_bound(b, docs[i].len), &docs[i].n_ids);
			if (r < 0) {
				fprintf(stderr, "bench-tokenizer: encode: %s\n", strerror(-r));
				return 1;
			}
			n_ids += docs[i].n_ids;
		}
		uint64_t t1 = dp_clock_ns();
		printf("encode bytes=%zu ids=%zu seconds=%.6f\n", total, n_ids, (double)(t1 - t0) * 1e-9);
		t0 = dp_clock_ns();
		for (uint32_t i = 0; i < n_docs; i++) {
			size_t got;
			r = dp_bpe_decode(b, docs[i].ids, docs[i].n_ids, 0, out,
			                  dp_bpe_decode_bound(b, docs[i].n_ids, 0), &got);
			if (r < 0) {
				fprintf(stderr, "bench-tokenizer: decode: %s\n", strerror(-r));
				return 1;
			}
			bytes += got;
		}
		t1 = dp_clock_ns();
		printf("decode ids=%zu bytes=%zu seconds=%.6f\n", n_ids, bytes, (double)(t1 - t0) * 1e-9);
		fflush(stdout);
	}
	for (uint32_t i = 0; i < n_docs; i++)
		free(docs[i].ids);
	free(docs);
	free(out);
	free(data);
	dp_bpe_free(b);
	return 0;
}
