/* SPDX-License-Identifier: MIT */
/*
 * What the bench programs share: the clock, greedy picking, and the token
 * streams their transformers anchors (bench/forward_hf.py, bench/gpu/hf_gpu.py,
 * both through bench/bench_util.py) reproduce: sequence b of a run with seed S
 * is splitmix64 from S + b, token (x >> 11) % vocab. Change them together or
 * the anchors measure other tokens.
 */
#ifndef DP_BENCH_UTIL_H
#define DP_BENCH_UTIL_H

#include <stdint.h>

#include "base/clock.h"

static inline uint64_t splitmix64(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/* Sequence b's first n tokens. */
static inline void stream_tokens(uint64_t seed, uint32_t b, uint32_t vocab, int32_t *out,
				 uint32_t n)
{
	uint64_t s = seed + b;
	for (uint32_t i = 0; i < n; i++)
		out[i] = (int32_t)((splitmix64(&s) >> 11) % vocab);
}

/* The index of the largest of n logits (the first on a tie): greedy decoding. */
static inline int32_t argmax(const float *v, uint32_t n)
{
	uint32_t best = 0;
	for (uint32_t i = 1; i < n; i++)
		if (v[i] > v[best])
			best = i;
	return (int32_t)best;
}

/* qsort order of doubles, ascending. */
static inline int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

#endif /* DP_BENCH_UTIL_H */
