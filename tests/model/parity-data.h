/* SPDX-License-Identifier: MIT */
/*
 * tests/model/parity-data.h — the committed parity data, shared by the cpu
 * backend's parity test and the cuda model test (header-only).
 *
 * tests/model/parity/<config>/ (scripts/parity/make_parity.py) holds a
 * checkpoint, tokens.json (the tokens and the reference's chunk schedule),
 * meta.json ("flip_positions": near ties where the reference's own one-call
 * and chunked runs disagree; skipped, not compared) and transformers' logits,
 * float32 [n][V]: logits_full.bin (one call), logits_chunked.bin (the chunk
 * schedule). $DP_TEST_PARITY names the directory (else the source tree's).
 */
#ifndef DP_TESTS_MODEL_PARITY_DATA_H
#define DP_TESTS_MODEL_PARITY_DATA_H

#include <criterion/criterion.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>

struct dp_gpu;
struct dp_v4_model;

struct parity {
	char dir[512];
	int32_t *tokens;
	uint32_t n, n_chunks, V;
	uint32_t *chunks;
	bool *skip; /* per position: a flip position */
	float *ref_full, *ref_chunked;
	struct dp_gpu *g;	/* for a test that keeps one model with the data */
	struct dp_v4_model *m;
};

static inline void parity_dir(const char *name, char *buf, size_t len)
{
	const char *root = getenv("DP_TEST_PARITY");
	snprintf(buf, len, "%s/%s", root ? root : "tests/model/parity", name);
}

static inline float *parity_read_floats(const char *path, size_t n)
{
	FILE *f = fopen(path, "rb");
	cr_assert_not_null(f, "cannot open %s", path);
	float *v = malloc(n * sizeof(float));
	cr_assert_not_null(v);
	cr_assert_eq(fread(v, sizeof(float), n, f), n, "%s is short", path);
	fclose(f);
	return v;
}

/* Read config `name`'s data, for a model of vocabulary V. */
static inline void parity_open(struct parity *p, const char *name, uint32_t V)
{
	char path[700];
	json_error_t jerr;
	parity_dir(name, p->dir, sizeof(p->dir));
	snprintf(path, sizeof(path), "%s/tokens.json", p->dir);
	json_t *tj = json_load_file(path, 0, &jerr);
	cr_assert_not_null(tj, "%s: %s", path, jerr.text);
	json_t *toks = json_object_get(tj, "tokens"), *chunks = json_object_get(tj, "chunks");
	p->n = (uint32_t)json_array_size(toks);
	p->n_chunks = (uint32_t)json_array_size(chunks);
	p->tokens = calloc(p->n, sizeof(*p->tokens));
	p->chunks = calloc(p->n_chunks, sizeof(*p->chunks));
	p->skip = calloc(p->n, sizeof(*p->skip));
	cr_assert(p->tokens && p->chunks && p->skip);
	for (uint32_t i = 0; i < p->n; i++)
		p->tokens[i] = (int32_t)json_integer_value(json_array_get(toks, i));
	for (uint32_t i = 0; i < p->n_chunks; i++)
		p->chunks[i] = (uint32_t)json_integer_value(json_array_get(chunks, i));
	json_decref(tj);
	snprintf(path, sizeof(path), "%s/meta.json", p->dir);
	json_t *meta = json_load_file(path, 0, &jerr);
	cr_assert_not_null(meta, "%s: %s", path, jerr.text);
	json_t *flips = json_object_get(meta, "flip_positions");
	for (size_t i = 0; i < json_array_size(flips); i++) {
		json_int_t pos = json_integer_value(json_array_get(flips, i));
		if (pos >= 0 && (uint32_t)pos < p->n)
			p->skip[pos] = true;
	}
	json_decref(meta);
	p->V = V;
	snprintf(path, sizeof(path), "%s/logits_full.bin", p->dir);
	p->ref_full = parity_read_floats(path, (size_t)p->n * V);
	snprintf(path, sizeof(path), "%s/logits_chunked.bin", p->dir);
	p->ref_chunked = parity_read_floats(path, (size_t)p->n * V);
}

/* Free the data (not g and m: their owner frees them). */
static inline void parity_close(struct parity *p)
{
	free(p->tokens);
	free(p->chunks);
	free(p->skip);
	free(p->ref_full);
	free(p->ref_chunked);
}

#endif /* DP_TESTS_MODEL_PARITY_DATA_H */
