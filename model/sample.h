/* SPDX-License-Identifier: MIT */
/*
 * model/sample.h — pick the next token from a row of logits.
 *
 * One struct dp_sampler per generation request: it holds the request's
 * sampling parameters, its own PRNG (xoshiro256**, seeded through
 * splitmix64, so the same seed gives the same tokens on every machine) and a
 * caller-provided scratch buffer. dp_sampler_sample() never allocates and
 * never blocks: it is meant for the per-token path.
 *
 * The distribution, in the order Hugging Face's generate applies it:
 *   1. temperature == 0: greedy, the argmax (lowest index on ties); top_k and
 *      top_p are ignored and no random number is drawn;
 *   2. otherwise p_i proportional to exp(logit_i / temperature);
 *   3. top_k > 0 keeps the k most probable ids (ties broken towards the lower
 *      index); 0 keeps all;
 *   4. top_p < 1 keeps, of those, the smallest most-probable-first prefix
 *      whose probability (renormalised over step 3's ids) reaches top_p —
 *      at least one id; 1 keeps all;
 *   5. one id is drawn in proportion to p_i over what is kept.
 *
 * Non-finite logits: NaN counts as -inf (never picked). -inf has
 * probability 0. If any logit is +inf, the row is the limit of the softmax:
 * the +inf ids share all probability equally (greedy: the lowest +inf id).
 * A row without any logit above -inf gives -EDOM.
 *
 * Threads: a sampler is used by one thread at a time; samplers are
 * independent (no shared state).
 */
#ifndef DP_MODEL_SAMPLE_H
#define DP_MODEL_SAMPLE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

struct dp_sampler_params {
	float temperature; /* >= 0 and finite; 0 = greedy */
	int top_k;         /* >= 0; 0 = off */
	float top_p;       /* in (0, 1]; 1 = off */
	uint64_t seed;     /* PRNG seed */
};

/* xoshiro256** state (Blackman & Vigna). Never all zero once seeded. */
struct dp_rng {
	uint64_t s[4];
};

/* Seed through splitmix64, as the xoshiro authors recommend. */
void dp_rng_seed(struct dp_rng *r, uint64_t seed);
uint64_t dp_rng_next(struct dp_rng *r);
/* Uniform double in [0, 1) with 53 random bits. */
double dp_rng_uniform(struct dp_rng *r);

/* One candidate of the scratch buffer (private). */
struct dp_sample_cand {
	float p;
	int32_t id;
};

/* Fields are private; the struct is public so it can live inside a request. */
struct dp_sampler {
	struct dp_sampler_params params;
	struct dp_rng rng;
	struct dp_sample_cand *cand; /* scratch, owned by the caller */
	size_t cand_cap;             /* entries the scratch holds */
};

/* Bytes of scratch a sampler needs for rows of n_vocab logits (0 if n_vocab
 * is not positive). Greedy-only samplers need none. */
size_t dp_sampler_scratch_size(int n_vocab);
/* Check params and set the sampler up; scratch (scratch_bytes of it,
 * aligned for float and int32_t, owned by the caller and used until the
 * sampler is no longer used) may be NULL/0 when temperature == 0.
 * Returns 0 or -EINVAL (bad params, misaligned scratch); *s is untouched on
 * failure. */
int dp_sampler_init(struct dp_sampler *s, const struct dp_sampler_params *params, void *scratch,
                    size_t scratch_bytes);
/* Pick one id from logits[0..n). Returns 0 and sets *ret_id, or
 * -EINVAL (bad arguments), -ENOBUFS (scratch holds fewer than n entries),
 * -EDOM (no logit above -inf); *ret_id is untouched on failure, and the
 * PRNG advances only on success. */
int dp_sampler_sample(struct dp_sampler *s, const float *logits, int n, int *ret_id);

#ifdef __cplusplus
}
#endif
#endif /* DP_MODEL_SAMPLE_H */
