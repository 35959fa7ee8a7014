/* SPDX-License-Identifier: MIT */
/*
 * The cpu backend's forward pass against transformers' DeepseekV4ForCausalLM:
 * tests/model/parity/<config>/ holds a checkpoint, tokens and the reference's
 * logits (scripts/parity/make_parity.py). Runs dp-logits' code path
 * (dp_v4_logits) in one call, in the reference's chunk schedule, and one
 * token per call.
 *
 * Tolerance: per position, max |ours - ref| <= 1e-4 * max |ref| of that row.
 * Positions listed in meta.json "flip_positions" (where the reference's own
 * one-call and chunked runs disagree: a discrete choice on a near tie) are
 * reported and skipped, not compared.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "model/v4.h"
#include "tests/model/parity-data.h"

/* The data with its model on the cpu backend (p->g, p->m). */
static void cpu_parity_open(struct parity *p, const char *name)
{
	char dir[512], err[512] = "";
	parity_dir(name, dir, sizeof(dir));
	cr_assert_eq(dp_gpu_new(DP_GPU_CPU, NULL, &p->g, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(dp_v4_model_load(p->g, dir, &p->m, err, sizeof(err)), 0, "%s: %s", dir, err);
	parity_open(p, name, (uint32_t)dp_v4_model_config(p->m)->vocab_size);
}

static void cpu_parity_close(struct parity *p)
{
	dp_v4_model_free(p->m);
	dp_gpu_free(p->g);
	parity_close(p);
}

/* max |a - b| <= 1e-4 * max |b| */
static bool row_close(const float *a, const float *b, uint32_t V)
{
	double maxref = 0, maxdiff = 0;
	for (uint32_t v = 0; v < V; v++) {
		maxref = fmax(maxref, fabs(b[v]));
		maxdiff = fmax(maxdiff, fabs((double)a[v] - b[v]));
	}
	return maxdiff <= 1e-4 * maxref;
}

/* Run with the given chunks and compare to ref; returns the worst relative error. */
static double run_and_compare(struct parity *p, const uint32_t *chunks, uint32_t n_chunks,
			      const float *ref, const char *mode)
{
	float *out = malloc((size_t)p->n * p->V * sizeof(float));
	cr_assert_not_null(out);
	cr_assert_eq(dp_v4_logits(p->m, p->tokens, p->n, chunks, n_chunks, out), 0, "%s", mode);
	double worst = 0;
	for (uint32_t t = 0; t < p->n; t++) {
		const float *a = out + (size_t)t * p->V, *b = ref + (size_t)t * p->V;
		double maxref = 0, maxdiff = 0;
		for (uint32_t v = 0; v < p->V; v++) {
			maxref = fmax(maxref, fabs(b[v]));
			maxdiff = fmax(maxdiff, fabs((double)a[v] - b[v]));
		}
		if (p->skip[t]) {
			cr_log_info("%s: position %u skipped (the reference flips here)", mode, t);
			continue;
		}
		cr_expect(maxdiff <= 1e-4 * maxref,
			  "%s: position %u: max |diff| %.3g > 1e-4 * max |logit| %.3g", mode, t, maxdiff,
			  maxref);
		worst = fmax(worst, maxdiff / maxref);
	}
	free(out);
	return worst;
}

static void check_all_modes(const char *name)
{
	struct parity p = { 0 };
	cpu_parity_open(&p, name);
	double e1 = run_and_compare(&p, NULL, 0, p.ref_full, "one call");
	double e2 = run_and_compare(&p, p.chunks, p.n_chunks, p.ref_chunked, "chunked");
	uint32_t *ones = malloc(p.n * sizeof(*ones));
	for (uint32_t i = 0; i < p.n; i++)
		ones[i] = 1;
	double e3 = run_and_compare(&p, ones, p.n, p.ref_full, "token by token");
	cr_log_info("%s: worst relative error: one call %.2e, chunked %.2e, token by token %.2e",
		    name, e1, e2, e3);
	free(ones);
	cpu_parity_close(&p);
}

Test(parity, mixed_config_matches_transformers_in_one_call_chunks_and_single_tokens)
{
	check_all_modes("mixed");
}

Test(parity, alt_config_with_yarn_and_sigmoid_matches_transformers_in_every_mode)
{
	check_all_modes("alt");
}

/* Two sequences in one batch (one prefilling, one decoding) give the same
 * logits as each alone: continuous batching must not mix their state. */
Test(parity, batched_sequences_match_their_separate_runs)
{
	struct parity p = { 0 };
	cpu_parity_open(&p, "mixed");
	struct dp_v4_seq *a, *b;
	cr_assert_eq(dp_v4_seq_new(p.m, &a), 0);
	cr_assert_eq(dp_v4_seq_new(p.m, &b), 0);
	/* b runs 30 tokens ahead; then both advance together */
	float *scratch = malloc((size_t)p.n * p.V * sizeof(float));
	struct dp_v4_batch_item first = { b, p.tokens, 30, true };
	cr_assert_eq(dp_v4_forward(p.m, &first, 1, scratch), 0);
	struct dp_v4_batch_item both[2] = {
		{ a, p.tokens, 20, true },	/* prefill of 20 */
		{ b, p.tokens + 30, 1, false }, /* decode of one */
	};
	float *out = malloc((size_t)21 * p.V * sizeof(float));
	cr_assert_eq(dp_v4_batch_rows(both, 2), 21);
	cr_assert_eq(dp_v4_forward(p.m, both, 2, out), 0);
	for (uint32_t t = 0; t < 20; t++)
		cr_expect(row_close(out + (size_t)t * p.V, p.ref_full + (size_t)t * p.V, p.V),
			  "sequence a, position %u", t);
	cr_expect(row_close(out + (size_t)20 * p.V, p.ref_full + (size_t)30 * p.V, p.V),
		  "sequence b, position 30");
	cr_expect_eq(dp_v4_seq_pos(a), 20);
	cr_expect_eq(dp_v4_seq_pos(b), 31);
	free(out);
	free(scratch);
	dp_v4_seq_free(a);
	dp_v4_seq_free(b);
	cpu_parity_close(&p);
}

Test(parity, token_ids_outside_the_vocabulary_are_rejected_without_advancing)
{
	struct parity p = { 0 };
	cpu_parity_open(&p, "alt");
	struct dp_v4_seq *s;
	cr_assert_eq(dp_v4_seq_new(p.m, &s), 0);
	int32_t bad[3] = { 1, (int32_t)p.V, 2 };
	float *out = malloc((size_t)3 * p.V * sizeof(float));
	struct dp_v4_batch_item it = { s, bad, 3, true };
	cr_expect_eq(dp_v4_forward(p.m, &it, 1, out), -EINVAL);
	bad[1] = -1;
	cr_expect_eq(dp_v4_forward(p.m, &it, 1, out), -EINVAL);
	cr_expect_eq(dp_v4_seq_pos(s), 0);
	free(out);
	dp_v4_seq_free(s);
	cpu_parity_close(&p);
}
