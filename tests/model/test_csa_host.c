/* SPDX-License-Identifier: MIT */
/*
 * CSA entries in host memory (model/v4.h, dp_v4_model_set_csa_host): the
 * compressed entries of CSA layers live in host pages and each step stages
 * only the entries the lightning indexer picked. The logits must equal the
 * device mode's bit for bit, over a context long enough that the indexer
 * picks a strict subset (the parity models have index_topk 3 and 5, rate 4:
 * 240 tokens give 60 entries per CSA layer), in one call, in chunks and one
 * token per call; and decode steps must find most picked entries staged.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/macros.h"
#include "model/v4-internal.h"

#define N_TOK 240u

struct fx {
	struct dp_gpu *g;
	struct dp_v4_model *m;
	int32_t tokens[N_TOK];
	uint32_t V;
};

static void fx_open(struct fx *f, const char *name)
{
	char dir[512], err[512] = "";
	const char *root = getenv("DP_TEST_PARITY");
	snprintf(dir, sizeof(dir), "%s/%s", root ? root : "tests/model/parity", name);
	cr_assert_eq(dp_gpu_new(DP_GPU_CPU, NULL, &f->g, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(dp_v4_model_load(f->g, dir, &f->m, err, sizeof(err)), 0, "%s: %s", dir, err);
	f->V = (uint32_t)dp_v4_model_config(f->m)->vocab_size;
	uint64_t x = 0x9e3779b97f4a7c15ull;
	for (uint32_t i = 0; i < N_TOK; i++) {
		x = x * 6364136223846793005ull + 1442695040888963407ull;
		f->tokens[i] = (int32_t)((x >> 33) % f->V);
	}
}

static void fx_close(struct fx *f)
{
	dp_v4_model_free(f->m);
	dp_gpu_free(f->g);
}

/* Logits of every position in the given chunking, in one mode. */
static float *logits(struct fx *f, bool host, const uint32_t *chunks, uint32_t n_chunks)
{
	float *out = malloc((size_t)N_TOK * f->V * sizeof(float));
	cr_assert_not_null(out);
	cr_assert_eq(dp_v4_model_set_csa_host(f->m, host, NULL), 0);
	cr_assert_eq(dp_v4_logits(f->m, f->tokens, N_TOK, chunks, n_chunks, out), 0);
	return out;
}

static void expect_identical(const float *a, const float *b, uint32_t V, const char *what)
{
	for (uint32_t t = 0; t < N_TOK; t++)
		cr_expect(!memcmp(a + (size_t)t * V, b + (size_t)t * V, V * sizeof(float)),
			  "%s: position %u differs", what, t);
}

static void check_modes(const char *name)
{
	struct fx f;
	fx_open(&f, name);
	const struct dp_v4_config *c = dp_v4_model_config(f.m);
	cr_assert_gt(c->n_layers_of[DP_V4_LAYER_CSA], 0);
	cr_assert_lt((uint32_t)c->index_topk, N_TOK / (uint32_t)c->compress_rate_csa / 4,
		     "the context must be long enough for the indexer to choose");
	uint32_t chunks[] = { 37, 1, 64, 100, 1, 1, 36 }, ones[N_TOK];
	for (uint32_t i = 0; i < N_TOK; i++)
		ones[i] = 1;
	struct {
		const uint32_t *chunks;
		uint32_t n;
		const char *what;
	} modes[] = {{NULL, 0, "one call"},
	             {chunks, DP_ARRAY_SIZE(chunks), "chunks"},
	             {ones, N_TOK, "token by token"}};
	for (size_t i = 0; i < DP_ARRAY_SIZE(modes); i++) {
		float *dev = logits(&f, false, modes[i].chunks, modes[i].n);
		struct dp_v4_csa_stats before, after;
		dp_v4_model_csa_stats(f.m, &before);
		float *host = logits(&f, true, modes[i].chunks, modes[i].n);
		dp_v4_model_csa_stats(f.m, &after);
		cr_expect_gt(after.steps, before.steps, "%s: host mode staged nothing", modes[i].what);
		expect_identical(host, dev, f.V, modes[i].what);
		free(dev);
		free(host);
	}
	fx_close(&f);
}

Test(csa_host, mixed_config_logits_equal_device_mode_bit_for_bit_in_every_chunking)
{
	check_modes("mixed");
}

Test(csa_host, alt_config_logits_equal_device_mode_bit_for_bit_in_every_chunking)
{
	check_modes("alt");
}

/* Decode steps: the indexer's choice changes slowly, so most picked entries
 * are still staged; only the difference is fetched, and the staged set stays
 * bounded (2 x index_topk per layer) while the host holds every entry. */
Test(csa_host, decode_steps_hit_the_staged_entries_and_fetch_only_the_difference)
{
	struct fx f;
	fx_open(&f, "mixed");
	const struct dp_v4_config *c = dp_v4_model_config(f.m);
	uint32_t k = (uint32_t)c->index_topk, d = (uint32_t)c->head_dim;
	cr_assert_eq(dp_v4_model_set_csa_host(f.m, true, NULL), 0);
	struct dp_v4_seq *s;
	cr_assert_eq(dp_v4_seq_new(f.m, &s), 0);
	float *out = malloc((size_t)f.V * sizeof(float));
	struct dp_v4_batch_item prefill = { s, f.tokens, 160, false };
	cr_assert_eq(dp_v4_forward(f.m, &prefill, 1, out), 0);
	struct dp_v4_csa_stats a, b;
	dp_v4_model_csa_stats(f.m, &a);
	uint32_t steps = N_TOK - 160;
	/* a run of one repeated token: the queries differ by position only, as
	 * consecutive queries of a real model differ little (a random token
	 * stream through random weights has no such coherence) */
	for (uint32_t t = 160; t < N_TOK; t++) {
		struct dp_v4_batch_item one = { s, f.tokens + 159, 1, false };
		cr_assert_eq(dp_v4_forward(f.m, &one, 1, out), 0);
	}
	dp_v4_model_csa_stats(f.m, &b);
	uint64_t sel = b.selected - a.selected, hits = b.hits - a.hits, got = b.fetched - a.fetched;
	uint32_t n_csa = (uint32_t)c->n_layers_of[DP_V4_LAYER_CSA];
	cr_expect_eq(b.steps - a.steps, (uint64_t)steps * n_csa);
	cr_expect_eq(sel, hits + got);
	cr_expect_eq(sel, (uint64_t)steps * n_csa * k, "one query picks k distinct entries");
	cr_log_info("decode: %llu picked, %llu staged already, %llu fetched", (unsigned long long)sel,
		    (unsigned long long)hits, (unsigned long long)got);
	cr_expect_gt(hits, sel / 2, "decode hits %llu of %llu", (unsigned long long)hits,
		     (unsigned long long)sel);
	cr_expect_gt(got, 0, "new entries appear and get picked");
	cr_expect_eq(b.bytes - a.bytes, got * d * sizeof(float));
	/* every CSA layer's entries are in host pages; on the device only the
	 * staged ones, at most 2k per layer between steps */
	for (int l = 0; l < c->num_hidden_layers; l++) {
		if (!dp_v4_is_csa(c, l))
			continue;
		cr_expect(s->layers[l].s[DP_V4_S_COMP].host);
		cr_expect_eq(s->layers[l].s[DP_V4_S_COMP].n, N_TOK / (uint32_t)c->compress_rate_csa);
		cr_assert_not_null(s->layers[l].csa);
		cr_expect_leq(s->layers[l].csa->live, 2 * k);
	}
	cr_expect_gt(dp_v4_seq_host_bytes(s), 0);
	struct dp_v4_page_ref refs[256];
	size_t n = dp_v4_seq_pages(s, refs, 256), n_host = 0;
	cr_assert_leq(n, 256);
	for (size_t i = 0; i < n; i++)
		if (refs[i].host) {
			n_host++;
			cr_expect(dp_v4_is_csa(c, refs[i].layer) && refs[i].kind == DP_V4_S_COMP);
		}
	cr_expect_eq(n_host * DP_V4_PAGE_BYTES, dp_v4_seq_host_bytes(s));
	free(out);
	dp_v4_seq_free(s);
	fx_close(&f);
}

/* Batching: a prefilling and a decoding sequence in one forward, host mode,
 * give the device mode's logits. */
Test(csa_host, batched_sequences_equal_device_mode)
{
	struct fx f;
	fx_open(&f, "mixed");
	float *out[2];
	for (int host = 0; host < 2; host++) {
		cr_assert_eq(dp_v4_model_set_csa_host(f.m, host, NULL), 0);
		struct dp_v4_seq *a, *b;
		cr_assert_eq(dp_v4_seq_new(f.m, &a), 0);
		cr_assert_eq(dp_v4_seq_new(f.m, &b), 0);
		float *tmp = malloc((size_t)f.V * sizeof(float));
		struct dp_v4_batch_item first = { b, f.tokens, 150, false };
		cr_assert_eq(dp_v4_forward(f.m, &first, 1, tmp), 0);
		struct dp_v4_batch_item both[2] = { { a, f.tokens + 10, 90, true },
						    { b, f.tokens + 150, 1, false } };
		out[host] = malloc((size_t)91 * f.V * sizeof(float));
		cr_assert_eq(dp_v4_forward(f.m, both, 2, out[host]), 0);
		free(tmp);
		dp_v4_seq_free(a);
		dp_v4_seq_free(b);
	}
	cr_expect(!memcmp(out[0], out[1], (size_t)91 * f.V * sizeof(float)));
	free(out[0]);
	free(out[1]);
	fx_close(&f);
}
