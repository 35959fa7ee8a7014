/* SPDX-License-Identifier: MIT */
/* Behaviour of model/sample.h: greedy, temperature, top-k, top-p, PRNG. */
#include <criterion/criterion.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "base/macros.h"
#include "model/sample.h"

#define VOCAB_MAX 1024

/* Scratch for one sampler at a time, in the test's own storage. */
static struct dp_sample_cand scratch[VOCAB_MAX];

static struct dp_sampler make(float temperature, int top_k, float top_p, uint64_t seed)
{
	struct dp_sampler s;
	struct dp_sampler_params p = {
	    .temperature = temperature, .top_k = top_k, .top_p = top_p, .seed = seed};

	cr_assert_eq(dp_sampler_init(&s, &p, scratch, sizeof(scratch)), 0);
	return s;
}

static int sample1(struct dp_sampler *s, const float *l, int n)
{
	int id = -1;

	cr_assert_eq(dp_sampler_sample(s, l, n, &id), 0);
	cr_assert(id >= 0 && id < n);
	return id;
}

/* Deterministic pseudo-random logits in [-4, 4). */
static void fill_logits(float *l, int n, uint64_t seed)
{
	struct dp_rng r;

	dp_rng_seed(&r, seed);
	for (int i = 0; i < n; i++)
		l[i] = (float)(dp_rng_uniform(&r) * 8.0 - 4.0);
}

static void softmax(const float *l, int n, float t, double *p)
{
	double max = -INFINITY, sum = 0.0;

	for (int i = 0; i < n; i++)
		max = fmax(max, l[i]);
	for (int i = 0; i < n; i++)
		sum += p[i] = exp((l[i] - max) / t);
	for (int i = 0; i < n; i++)
		p[i] /= sum;
}

/* Pearson chi-square of observed counts against probabilities p (bins with
 * p == 0 must be empty). */
static double chi_square(const long *count, const double *p, int n, long draws)
{
	double chi = 0.0;

	for (int i = 0; i < n; i++) {
		if (p[i] == 0.0) {
			cr_expect_eq(count[i], 0, "id %d has probability 0 but was drawn", i);
			continue;
		}
		double e = p[i] * (double)draws;
		chi += (count[i] - e) * (count[i] - e) / e;
	}
	return chi;
}

/* ---- PRNG ------------------------------------------------------------------ */

Test(sample, rng_matches_xoshiro256starstar_seeded_by_splitmix64)
{
	struct dp_rng r;

	/* splitmix64(0) gives the state; first outputs computed from the
	 * reference algorithms (prng.di.unimi.it). */
	dp_rng_seed(&r, 0);
	cr_expect_eq(r.s[0], 0xe220a8397b1dcdafull);
	cr_expect_eq(r.s[1], 0x6e789e6aa1b965f4ull);
	cr_expect_eq(r.s[2], 0x06c45d188009454full);
	cr_expect_eq(r.s[3], 0xf88bb8a8724c81ecull);
	uint64_t a = dp_rng_next(&r);
	cr_expect_eq(a, 0x99ec5f36cb75f2b4ull);
	for (int i = 0; i < 1000; i++) {
		double u = dp_rng_uniform(&r);
		cr_assert(u >= 0.0 && u < 1.0);
	}
}

/* ---- greedy ---------------------------------------------------------------- */

Test(sample, greedy_picks_the_argmax_and_the_lowest_index_on_ties)
{
	struct dp_sampler s = make(0.0f, 0, 1.0f, 1);
	float l[] = {0.5f, 3.0f, -1.0f, 3.0f, 2.9f};

	cr_expect_eq(sample1(&s, l, 5), 1);
	float flat[] = {7.0f, 7.0f, 7.0f};
	cr_expect_eq(sample1(&s, flat, 3), 0);
	float one[] = {-100.0f};
	cr_expect_eq(sample1(&s, one, 1), 0);
}

Test(sample, greedy_needs_no_scratch_and_ignores_top_k_and_top_p)
{
	struct dp_sampler s;
	struct dp_sampler_params p = {.temperature = 0.0f, .top_k = 3, .top_p = 0.1f, .seed = 9};
	float l[300];
	int id;

	fill_logits(l, 300, 5);
	l[123] = 10.0f;
	cr_assert_eq(dp_sampler_init(&s, &p, NULL, 0), 0);
	cr_assert_eq(dp_sampler_sample(&s, l, 300, &id), 0);
	cr_expect_eq(id, 123);
}

/* ---- reproducibility ------------------------------------------------------- */

Test(sample, same_seed_gives_the_same_sequence_and_a_different_seed_does_not)
{
	float l[64];
	int a[200], b[200], c[200];

	fill_logits(l, 64, 1);
	struct dp_sampler s1 = make(1.0f, 0, 1.0f, 42);
	struct dp_sampler s2 = make(1.0f, 0, 1.0f, 42);
	struct dp_sampler s3 = make(1.0f, 0, 1.0f, 43);
	for (int i = 0; i < 200; i++) {
		a[i] = sample1(&s1, l, 64);
		b[i] = sample1(&s2, l, 64);
		c[i] = sample1(&s3, l, 64);
	}
	cr_expect_arr_eq(a, b, sizeof(a));
	int same = 0;
	for (int i = 0; i < 200; i++)
		same += a[i] == c[i];
	cr_expect_lt(same, 100, "seeds 42 and 43 agree on %d of 200 draws", same);
}

Test(sample, same_seed_reproduces_with_top_k_and_top_p_too)
{
	float l[500];
	int a[100], b[100];

	fill_logits(l, 500, 2);
	struct dp_sampler s1 = make(0.7f, 50, 0.9f, 7);
	struct dp_sampler s2 = make(0.7f, 50, 0.9f, 7);
	for (int i = 0; i < 100; i++) {
		a[i] = sample1(&s1, l, 500);
		b[i] = sample1(&s2, l, 500);
	}
	cr_expect_arr_eq(a, b, sizeof(a));
}

/* ---- top-k and top-p degenerate to greedy ---------------------------------- */

Test(sample, top_k_1_equals_greedy)
{
	float l[VOCAB_MAX];

	for (uint64_t seed = 0; seed < 20; seed++) {
		fill_logits(l, VOCAB_MAX, seed);
		struct dp_sampler g = make(0.0f, 0, 1.0f, seed);
		struct dp_sampler k = make(1.5f, 1, 1.0f, seed);
		int want = sample1(&g, l, VOCAB_MAX);
		for (int i = 0; i < 10; i++)
			cr_expect_eq(sample1(&k, l, VOCAB_MAX), want);
	}
	/* ties: top-1 keeps the lowest index, as greedy does */
	float tie[] = {1.0f, 5.0f, 5.0f, 5.0f};
	struct dp_sampler k = make(1.0f, 1, 1.0f, 3);
	for (int i = 0; i < 50; i++)
		cr_expect_eq(sample1(&k, tie, 4), 1);
}

Test(sample, tiny_top_p_equals_greedy)
{
	float l[VOCAB_MAX];

	for (uint64_t seed = 0; seed < 20; seed++) {
		fill_logits(l, VOCAB_MAX, seed + 100);
		struct dp_sampler g = make(0.0f, 0, 1.0f, seed);
		struct dp_sampler p = make(1.0f, 0, 1e-6f, seed);
		int want = sample1(&g, l, VOCAB_MAX);
		for (int i = 0; i < 10; i++)
			cr_expect_eq(sample1(&p, l, VOCAB_MAX), want);
	}
}

/* ---- distributions --------------------------------------------------------- */

#define DRAWS 200000L
/* chi-square 99.99th percentiles: 7 degrees of freedom 29.9, 2: 18.4.
 * Fixed seeds make each test deterministic; the bound documents the margin. */

Test(sample, temperature_1_frequencies_match_the_softmax)
{
	float l[8] = {1.0f, 2.0f, 0.5f, -1.0f, 3.0f, 2.5f, 0.0f, -2.0f};
	double p[8];
	long count[8] = {0};
	struct dp_sampler s = make(1.0f, 0, 1.0f, 2024);

	softmax(l, 8, 1.0f, p);
	for (long i = 0; i < DRAWS; i++)
		count[sample1(&s, l, 8)]++;
	double chi = chi_square(count, p, 8, DRAWS);
	cr_expect_lt(chi, 29.9, "chi-square %.2f with 7 dof", chi);
	for (int i = 0; i < 8; i++)
		cr_expect(fabs(count[i] / (double)DRAWS - p[i]) < 0.005, "id %d: %.4f vs %.4f", i,
		          count[i] / (double)DRAWS, p[i]);
}

Test(sample, temperature_scales_the_logits)
{
	float l[8] = {1.0f, 2.0f, 0.5f, -1.0f, 3.0f, 2.5f, 0.0f, -2.0f};
	double p[8];
	long count[8] = {0};
	struct dp_sampler s = make(0.5f, 0, 1.0f, 77);

	softmax(l, 8, 0.5f, p);
	for (long i = 0; i < DRAWS; i++)
		count[sample1(&s, l, 8)]++;
	double chi = chi_square(count, p, 8, DRAWS);
	cr_expect_lt(chi, 29.9, "chi-square %.2f with 7 dof", chi);
}

Test(sample, top_k_restricts_support_to_the_k_best_renormalised)
{
	float l[8] = {1.0f, 2.0f, 0.5f, -1.0f, 3.0f, 2.5f, 0.0f, -2.0f};
	/* the 3 best are ids 4, 5, 1 */
	float top[8] = {-INFINITY, 2.0f, -INFINITY, -INFINITY, 3.0f, 2.5f, -INFINITY, -INFINITY};
	double p[8];
	long count[8] = {0};
	struct dp_sampler s = make(1.0f, 3, 1.0f, 5);

	softmax(top, 8, 1.0f, p);
	for (long i = 0; i < DRAWS; i++)
		count[sample1(&s, l, 8)]++;
	double chi = chi_square(count, p, 8, DRAWS);
	cr_expect_lt(chi, 18.4, "chi-square %.2f with 2 dof", chi);
	cr_expect_eq(count[0] + count[2] + count[3] + count[6] + count[7], 0);
}

Test(sample, top_p_keeps_the_smallest_prefix_reaching_p)
{
	/* probabilities 0.5, 0.3, 0.15, 0.05 (in scrambled order) */
	float l[4] = {logf(0.15f), logf(0.5f), logf(0.05f), logf(0.3f)};
	long count[4] = {0};
	struct dp_sampler s = make(1.0f, 0, 0.7f, 11);

	for (long i = 0; i < DRAWS / 4; i++)
		count[sample1(&s, l, 4)]++;
	cr_expect_eq(count[0] + count[2], 0, "0.5 + 0.3 reaches 0.7: only ids 1 and 3");
	/* 0.5 : 0.3 renormalised = 0.625 : 0.375 */
	cr_expect(fabs(count[1] / (double)(DRAWS / 4) - 0.625) < 0.01);

	struct dp_sampler s2 = make(1.0f, 0, 0.9f, 12);
	memset(count, 0, sizeof(count));
	for (long i = 0; i < DRAWS / 4; i++)
		count[sample1(&s2, l, 4)]++;
	cr_expect_eq(count[2], 0, "0.95 reaches 0.9 without the 0.05 id");
	cr_expect_gt(count[0], 0);
}

Test(sample, top_p_applies_after_top_k_over_the_renormalised_top_k)
{
	/* probabilities 0.4, 0.3, 0.2, 0.1; top-2 renormalised: 0.571, 0.429.
	 * top_p 0.5 over those keeps only the best; over the full row it would
	 * need two ids (0.4 < 0.5). */
	float l[4] = {logf(0.4f), logf(0.3f), logf(0.2f), logf(0.1f)};
	struct dp_sampler s = make(1.0f, 2, 0.5f, 13);

	for (int i = 0; i < 1000; i++)
		cr_expect_eq(sample1(&s, l, 4), 0);
	struct dp_sampler s2 = make(1.0f, 0, 0.5f, 13);
	int seen1 = 0;
	for (int i = 0; i < 1000; i++)
		seen1 += sample1(&s2, l, 4) == 1;
	cr_expect_gt(seen1, 0);
}

Test(sample, large_vocabulary_with_top_k_and_top_p_draws_from_the_head)
{
	static float l[VOCAB_MAX];
	struct dp_sampler s = make(0.8f, 40, 0.95f, 21);
	int rank_ok = 1;

	fill_logits(l, VOCAB_MAX, 31);
	for (int i = 0; i < 2000; i++) {
		int id = sample1(&s, l, VOCAB_MAX);
		int better = 0;
		for (int j = 0; j < VOCAB_MAX; j++)
			better += l[j] > l[id];
		rank_ok &= better < 40;
	}
	cr_expect(rank_ok, "every draw is among the 40 best");
}

/* ---- non-finite logits ----------------------------------------------------- */

Test(sample, nan_is_never_picked)
{
	float l[4] = {NAN, 1.0f, NAN, 0.5f};
	struct dp_sampler g = make(0.0f, 0, 1.0f, 1);
	struct dp_sampler s = make(1.0f, 0, 1.0f, 1);
	struct dp_sampler k = make(1.0f, 2, 0.9f, 1);

	cr_expect_eq(sample1(&g, l, 4), 1);
	for (int i = 0; i < 1000; i++) {
		int a = sample1(&s, l, 4), b = sample1(&k, l, 4);
		cr_expect(a == 1 || a == 3);
		cr_expect(b == 1 || b == 3);
	}
}

Test(sample, minus_inf_has_probability_zero)
{
	float l[3] = {-INFINITY, 0.0f, -INFINITY};
	struct dp_sampler s = make(2.0f, 0, 1.0f, 1);

	for (int i = 0; i < 100; i++)
		cr_expect_eq(sample1(&s, l, 3), 1);
}

Test(sample, plus_inf_ids_share_all_probability)
{
	float l[5] = {3.0f, INFINITY, 1e30f, INFINITY, NAN};
	struct dp_sampler g = make(0.0f, 0, 1.0f, 1);
	struct dp_sampler s = make(1.0f, 0, 1.0f, 1);
	long count[5] = {0};

	cr_expect_eq(sample1(&g, l, 5), 1, "greedy: the lowest +inf id");
	for (int i = 0; i < 10000; i++)
		count[sample1(&s, l, 5)]++;
	cr_expect_eq(count[0] + count[2] + count[4], 0);
	cr_expect(count[1] > 4500 && count[3] > 4500, "%ld / %ld", count[1], count[3]);
}

Test(sample, row_without_a_finite_logit_is_edom_and_output_untouched)
{
	float l[3] = {NAN, -INFINITY, NAN};
	struct dp_sampler g = make(0.0f, 0, 1.0f, 1);
	struct dp_sampler s = make(1.0f, 5, 0.5f, 1);
	int id = 77;

	cr_expect_eq(dp_sampler_sample(&g, l, 3, &id), -EDOM);
	cr_expect_eq(dp_sampler_sample(&s, l, 3, &id), -EDOM);
	cr_expect_eq(id, 77);
}

Test(sample, extreme_temperatures_stay_finite)
{
	float l[4] = {1.0f, 1.0f + 1e-3f, -50.0f, 0.0f};
	struct dp_sampler cold = make(1e-8f, 0, 1.0f, 1);
	struct dp_sampler hot = make(1e8f, 0, 1.0f, 1);
	long count[4] = {0};

	struct dp_sampler denormal = make(1e-45f, 0, 1.0f, 1);

	for (int i = 0; i < 100; i++) {
		cr_expect_eq(sample1(&cold, l, 4), 1);
		cr_expect_eq(sample1(&denormal, l, 4), 1, "1/T overflows; (l - max)/T must not");
	}
	for (int i = 0; i < 40000; i++)
		count[sample1(&hot, l, 4)]++;
	for (int i = 0; i < 4; i++)
		cr_expect(count[i] > 9000, "hot is near uniform: id %d drawn %ld", i, count[i]);
}

/* ---- argument checking ----------------------------------------------------- */

Test(sample, invalid_params_are_rejected_and_the_sampler_untouched)
{
	struct dp_sampler s, before;
	struct dp_sampler_params ok = {.temperature = 1.0f, .top_k = 0, .top_p = 1.0f, .seed = 0};
	struct dp_sampler_params bad[] = {
	    {.temperature = -0.1f, .top_k = 0, .top_p = 1.0f},
	    {.temperature = NAN, .top_k = 0, .top_p = 1.0f},
	    {.temperature = INFINITY, .top_k = 0, .top_p = 1.0f},
	    {.temperature = 1.0f, .top_k = -1, .top_p = 1.0f},
	    {.temperature = 1.0f, .top_k = 0, .top_p = 0.0f},
	    {.temperature = 1.0f, .top_k = 0, .top_p = -0.5f},
	    {.temperature = 1.0f, .top_k = 0, .top_p = 1.01f},
	    {.temperature = 1.0f, .top_k = 0, .top_p = NAN},
	};

	memset(&s, 0xa5, sizeof(s));
	before = s;
	for (size_t i = 0; i < DP_ARRAY_SIZE(bad); i++)
		cr_expect_eq(dp_sampler_init(&s, &bad[i], scratch, sizeof(scratch)), -EINVAL,
		             "params %zu", i);
	cr_expect_eq(dp_sampler_init(NULL, &ok, scratch, sizeof(scratch)), -EINVAL);
	cr_expect_eq(dp_sampler_init(&s, NULL, scratch, sizeof(scratch)), -EINVAL);
	cr_expect_eq(dp_sampler_init(&s, &ok, NULL, 64), -EINVAL);
	cr_expect_eq(dp_sampler_init(&s, &ok, (char *)scratch + 1, 64), -EINVAL, "misaligned");
	cr_expect_arr_eq(&s, &before, sizeof(s));
}

Test(sample, bad_sample_arguments_are_rejected)
{
	struct dp_sampler s = make(1.0f, 0, 1.0f, 1);
	float l[4] = {0};
	int id = 5;

	cr_expect_eq(dp_sampler_sample(NULL, l, 4, &id), -EINVAL);
	cr_expect_eq(dp_sampler_sample(&s, NULL, 4, &id), -EINVAL);
	cr_expect_eq(dp_sampler_sample(&s, l, 0, &id), -EINVAL);
	cr_expect_eq(dp_sampler_sample(&s, l, -3, &id), -EINVAL);
	cr_expect_eq(dp_sampler_sample(&s, l, 4, NULL), -EINVAL);
	cr_expect_eq(id, 5);
}

Test(sample, a_row_longer_than_the_scratch_is_enobufs)
{
	struct dp_sampler s;
	struct dp_sampler_params p = {.temperature = 1.0f, .top_k = 0, .top_p = 1.0f, .seed = 1};
	float l[16] = {0};
	int id = 5;

	cr_expect_eq(dp_sampler_scratch_size(16), 16 * sizeof(struct dp_sample_cand));
	cr_expect_eq(dp_sampler_scratch_size(0), 0);
	cr_assert_eq(dp_sampler_init(&s, &p, scratch, dp_sampler_scratch_size(8)), 0);
	cr_expect_eq(dp_sampler_sample(&s, l, 16, &id), -ENOBUFS);
	cr_expect_eq(id, 5);
	cr_expect_eq(dp_sampler_sample(&s, l, 8, &id), 0);
}
