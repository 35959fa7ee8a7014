/* SPDX-License-Identifier: MIT */
/*
 * Token sampling (model/sample.h).
 *
 * Cost per call, n logits: greedy one pass. Temperature alone: one pass of
 * exp() and one walk. top-k: one pass keeping a k-entry heap (mostly one
 * comparison per logit), exp() of the k kept. top-p: an O(m) heapify of the
 * m ids weighed and one O(log m) pop per id in the nucleus. Nothing ever
 * sorts the whole vocabulary.
 */
#include "model/sample.h"

#include <assert.h>
#include <errno.h>
#include <math.h>
#include <stdalign.h>
#include <stdbool.h>
#include <string.h>

/* ---- PRNG ------------------------------------------------------------------ */

static uint64_t splitmix64(uint64_t *x)
{
	uint64_t z = (*x += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static inline uint64_t rotl(uint64_t x, int k)
{
	return (x << k) | (x >> (64 - k));
}

void dp_rng_seed(struct dp_rng *r, uint64_t seed)
{
	uint64_t x = seed;

	for (int i = 0; i < 4; i++)
		r->s[i] = splitmix64(&x);
	/* splitmix64 is a bijection of distinct counters, so the four words
	 * cannot all be zero; xoshiro's only bad state is excluded. */
}

uint64_t dp_rng_next(struct dp_rng *r)
{
	uint64_t *s = r->s;
	uint64_t result = rotl(s[1] * 5, 7) * 9;
	uint64_t t = s[1] << 17;

	s[2] ^= s[0];
	s[3] ^= s[1];
	s[1] ^= s[2];
	s[0] ^= s[3];
	s[2] ^= t;
	s[3] = rotl(s[3], 45);
	return result;
}

double dp_rng_uniform(struct dp_rng *r)
{
	return (double)(dp_rng_next(r) >> 11) * 0x1.0p-53;
}

/* ---- setup --------------------------------------------------------------- */

size_t dp_sampler_scratch_size(int n_vocab)
{
	if (n_vocab <= 0)
		return 0;
	return (size_t)n_vocab * sizeof(struct dp_sample_cand);
}

static bool params_valid(const struct dp_sampler_params *p)
{
	/* Written so that NaN fails every test. */
	if (!(p->temperature >= 0.0f) || !isfinite(p->temperature))
		return false;
	if (p->top_k < 0)
		return false;
	if (!(p->top_p > 0.0f && p->top_p <= 1.0f))
		return false;
	return true;
}

int dp_sampler_init(struct dp_sampler *s, const struct dp_sampler_params *params, void *scratch,
                    size_t scratch_bytes)
{
	if (!s || !params || !params_valid(params))
		return -EINVAL;
	if (!scratch && scratch_bytes)
		return -EINVAL;
	if ((uintptr_t)scratch % alignof(struct dp_sample_cand))
		return -EINVAL;
	s->params = *params;
	dp_rng_seed(&s->rng, params->seed);
	s->cand = scratch;
	s->cand_cap = scratch_bytes / sizeof(struct dp_sample_cand);
	return 0;
}

/* ---- sampling ------------------------------------------------------------ */

/* Lowest index of the largest logit, NaN skipped; -1 if every logit is NaN
 * or -inf. */
static int argmax(const float *l, int n)
{
	int best = -1;

	for (int i = 0; i < n; i++) {
		if (isnan(l[i]) || l[i] == -INFINITY)
			continue;
		if (best < 0 || l[i] > l[best])
			best = i;
	}
	return best;
}

/* Candidate order: higher value first, then lower id (deterministic ties).
 * The value is a logit during top-k selection and a weight afterwards;
 * exp() is monotonic, so both give the same order. */
static inline bool cand_before(const struct dp_sample_cand *a, const struct dp_sample_cand *b)
{
	return a->p > b->p || (a->p == b->p && a->id < b->id);
}

static inline void cand_swap(struct dp_sample_cand *a, struct dp_sample_cand *b)
{
	struct dp_sample_cand t = *a;

	*a = *b;
	*b = t;
}

/* Max-heap (best at the root) sift-down over h[0..n). */
static void sift_down_best(struct dp_sample_cand *h, size_t n, size_t i)
{
	for (;;) {
		size_t l = 2 * i + 1, r = l + 1, top = i;

		if (l < n && cand_before(&h[l], &h[top]))
			top = l;
		if (r < n && cand_before(&h[r], &h[top]))
			top = r;
		if (top == i)
			return;
		cand_swap(&h[i], &h[top]);
		i = top;
	}
}

/* Min-heap (worst at the root) sift-down over h[0..n). */
static void sift_down_worst(struct dp_sample_cand *h, size_t n, size_t i)
{
	for (;;) {
		size_t l = 2 * i + 1, r = l + 1, low = i;

		if (l < n && cand_before(&h[low], &h[l]))
			low = l;
		if (r < n && cand_before(&h[low], &h[r]))
			low = r;
		if (low == i)
			return;
		cand_swap(&h[i], &h[low]);
		i = low;
	}
}

/* The k best logits (NaN and -inf skipped) into c[0..ret), unordered, with
 * c[].p = logit: a k-entry min-heap whose root is the worst kept, so most
 * logits cost one comparison. */
static size_t select_top_k(const float *l, int n, size_t k, struct dp_sample_cand *c)
{
	size_t m = 0;

	for (int i = 0; i < n; i++) {
		struct dp_sample_cand e = {.p = l[i], .id = i};

		if (isnan(l[i]) || l[i] == -INFINITY)
			continue;
		if (m < k) {
			/* sift up */
			size_t j = m++;

			c[j] = e;
			while (j > 0 && cand_before(&c[(j - 1) / 2], &c[j])) {
				cand_swap(&c[(j - 1) / 2], &c[j]);
				j = (j - 1) / 2;
			}
		} else if (cand_before(&e, &c[0])) {
			c[0] = e;
			sift_down_worst(c, m, 0);
		}
	}
	return m;
}

/* Weight of a logit: exp((l - max) / T) in (0, 1], or, when the row holds
 * +inf, 1 for the +inf ids and 0 for the rest. (l - max) / T rather than
 * (l - max) * (1 / T): 1 / T overflows for tiny T. */
static inline float weight(float l, float max, float t)
{
	if (max == INFINITY)
		return l == INFINITY ? 1.0f : 0.0f;
	return expf((l - max) / t);
}

/* Draw from c[0..m) with weights c[].p summing to `mass`, walking them
 * from c[0] up, or from c[m-1] down when `backwards`. Zero weights are
 * never drawn. */
static int32_t draw(struct dp_rng *rng, const struct dp_sample_cand *c, size_t m, double mass,
                    bool backwards)
{
	double target = dp_rng_uniform(rng) * mass, cum = 0.0;
	int32_t last = -1;

	for (size_t k = 0; k < m; k++) {
		const struct dp_sample_cand *e = backwards ? &c[m - 1 - k] : &c[k];

		if (!(e->p > 0.0f))
			continue;
		cum += e->p;
		last = e->id;
		if (target < cum)
			return e->id;
	}
	return last; /* rounding left target at the very end */
}

int dp_sampler_sample(struct dp_sampler *s, const float *logits, int n, int *ret_id)
{
	const struct dp_sampler_params *p;
	struct dp_sample_cand *c;
	size_t m = 0, kept;
	double total = 0.0;
	float max, t;
	int best;

	if (!s || !logits || n <= 0 || !ret_id)
		return -EINVAL;
	p = &s->params;
	best = argmax(logits, n);
	if (best < 0)
		return -EDOM;
	if (p->temperature == 0.0f) {
		*ret_id = best;
		return 0;
	}
	if ((size_t)n > s->cand_cap)
		return -ENOBUFS;

	c = s->cand;
	max = logits[best];
	t = p->temperature;
	if (p->top_k > 0 && p->top_k < n) {
		/* top-k: select by logit, weigh only the k kept */
		m = select_top_k(logits, n, (size_t)p->top_k, c);
		for (size_t i = 0; i < m; i++) {
			c[i].p = weight(c[i].p, max, t);
			total += c[i].p;
		}
	} else {
		/* every id with a non-zero weight (NaN, -inf and underflow out) */
		for (int i = 0; i < n; i++) {
			float w;

			if (isnan(logits[i]))
				continue;
			w = weight(logits[i], max, t);
			if (!(w > 0.0f))
				continue;
			c[m].p = w;
			c[m].id = i;
			m++;
			total += w;
		}
	}
	/* The argmax is kept and weighs exp(0) = 1 (or is +inf): total >= 1. */
	assert(m >= 1 && total >= 1.0);

	if (p->top_p >= 1.0f) {
		*ret_id = draw(&s->rng, c, m, total, false);
		return 0;
	}

	/* top-p: heapify, then pop the best to the tail (the i-th best lands at
	 * c[m-1-i]) until the popped mass reaches top_p of the total — a
	 * peaked row pops a few ids, never a sort of the vocabulary. */
	double goal = (double)p->top_p * total, cum = 0.0;

	for (size_t i = m / 2; i-- > 0;)
		sift_down_best(c, m, i);
	for (kept = 0; kept < m;) {
		cand_swap(&c[0], &c[m - 1 - kept]);
		sift_down_best(c, m - 1 - kept, 0);
		cum += c[m - 1 - kept].p;
		kept++;
		if (cum >= goal)
			break;
	}
	*ret_id = draw(&s->rng, c + (m - kept), kept, cum, true);
	return 0;
}
