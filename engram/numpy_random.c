/* SPDX-License-Identifier: MIT */
/*
 * engram/numpy_random.c — numpy's SeedSequence, PCG64 and Lemire bounded integers, so the
 * Engram multipliers come out as numpy.random.default_rng(...).integers(...) gives them.
 *
 * Each function names the numpy routine it follows (numpy/random/bit_generator.pyx,
 * src/pcg64/pcg64.h, src/distributions/distributions.c); engram-internal.h has the overview.
 * All arithmetic is unsigned and wraps exactly as numpy's uint32_t / uint64_t / __uint128_t does.
 */
#include <assert.h>

#include "engram/engram-internal.h"

/* ---- SeedSequence (bit_generator.pyx) ------------------------------------ */

#define NP_INIT_A     0x43b0d7e5u
#define NP_MULT_A     0x931e8875u
#define NP_INIT_B     0x8b51f9ddu
#define NP_MULT_B     0x58f38dedu
#define NP_MIX_MULT_L 0xca01f9ddu
#define NP_MIX_MULT_R 0x4973f715u
#define NP_XSHIFT     16 /* uint32 bits / 2 */

static uint32_t np_hashmix(uint32_t value, uint32_t *hash_const)
{
	value ^= *hash_const;
	*hash_const *= NP_MULT_A;
	value *= *hash_const;
	value ^= value >> NP_XSHIFT;
	return value;
}

static uint32_t np_mix(uint32_t x, uint32_t y)
{
	uint32_t result = NP_MIX_MULT_L * x - NP_MIX_MULT_R * y;

	result ^= result >> NP_XSHIFT;
	return result;
}

/* SeedSequence.mix_entropy(pool, entropy) with an empty spawn key. */
static void np_mix_entropy(uint32_t pool[DP_ENGRAM_NP_POOL], const uint32_t *entropy, size_t n)
{
	uint32_t hash_const = NP_INIT_A;

	for (size_t i = 0; i < DP_ENGRAM_NP_POOL; i++)
		pool[i] = np_hashmix(i < n ? entropy[i] : 0, &hash_const);
	/* every word into every other, so late words affect early ones */
	for (size_t src = 0; src < DP_ENGRAM_NP_POOL; src++)
		for (size_t dst = 0; dst < DP_ENGRAM_NP_POOL; dst++)
			if (src != dst)
				pool[dst] = np_mix(pool[dst], np_hashmix(pool[src], &hash_const));
	/* entropy beyond the pool size, each word into every pool word */
	for (size_t src = DP_ENGRAM_NP_POOL; src < n; src++)
		for (size_t dst = 0; dst < DP_ENGRAM_NP_POOL; dst++)
			pool[dst] = np_mix(pool[dst], np_hashmix(entropy[src], &hash_const));
}

size_t dp_engram_np_entropy_words(dp_engram_u128 v, uint32_t out[4])
{
	size_t n = 0;

	do {
		out[n++] = (uint32_t)v;
		v >>= 32;
	} while (v);
	return n;
}

void dp_engram_np_seedseq_state(const uint32_t *entropy, size_t n_entropy, uint32_t *out,
                                size_t n_words)
{
	uint32_t pool[DP_ENGRAM_NP_POOL];
	uint32_t hash_const = NP_INIT_B;

	assert(n_entropy >= 1 && n_entropy <= DP_ENGRAM_NP_ENTROPY_MAX);
	np_mix_entropy(pool, entropy, n_entropy);
	/* generate_state(): the pool cycled, each word hashed */
	for (size_t i = 0; i < n_words; i++) {
		uint32_t v = pool[i % DP_ENGRAM_NP_POOL];

		v ^= hash_const;
		hash_const *= NP_MULT_B;
		v *= hash_const;
		v ^= v >> NP_XSHIFT;
		out[i] = v;
	}
}

/* ---- PCG64 (pcg64.h: pcg_setseq_128_xsl_rr_64) ------------------------- */

#define PCG_MULT_HIGH 2549297995355413924ull
#define PCG_MULT_LOW  4865540595714422341ull

static inline dp_engram_u128 u128_of(uint64_t hi, uint64_t lo)
{
	return (dp_engram_u128)hi << 64 | lo;
}

static inline void pcg_step(struct dp_engram_pcg64 *g)
{
	g->state = g->state * u128_of(PCG_MULT_HIGH, PCG_MULT_LOW) + g->inc;
}

static inline uint64_t pcg_output_xsl_rr(dp_engram_u128 state)
{
	uint64_t x = (uint64_t)(state >> 64) ^ (uint64_t)state;
	unsigned rot = (unsigned)(state >> 122);

	return (x >> rot) | (x << ((64 - rot) & 63));
}

void dp_engram_pcg64_seed(struct dp_engram_pcg64 *g, const uint32_t *entropy, size_t n_entropy)
{
	uint32_t w[8];
	uint64_t q[4];

	/* generate_state(4, uint64): 8 uint32 words read as little-endian uint64 pairs */
	dp_engram_np_seedseq_state(entropy, n_entropy, w, 8);
	for (int i = 0; i < 4; i++)
		q[i] = (uint64_t)w[2 * i] | (uint64_t)w[2 * i + 1] << 32;

	/* pcg64_set_seed(state, seed = q[0..1], inc = q[2..3]); PCG_128BIT_CONSTANT(high, low) */
	g->state = 0;
	g->inc = u128_of(q[2], q[3]) << 1 | 1u;
	pcg_step(g);
	g->state += u128_of(q[0], q[1]);
	pcg_step(g);
	g->has_uint32 = false;
	g->uinteger = 0;
}

uint64_t dp_engram_pcg64_next64(struct dp_engram_pcg64 *g)
{
	pcg_step(g);
	return pcg_output_xsl_rr(g->state);
}

uint32_t dp_engram_pcg64_next32(struct dp_engram_pcg64 *g)
{
	uint64_t next;

	if (g->has_uint32) {
		g->has_uint32 = false;
		return g->uinteger;
	}
	next = dp_engram_pcg64_next64(g);
	g->has_uint32 = true;
	g->uinteger = (uint32_t)(next >> 32);
	return (uint32_t)next;
}

/* ---- bounded integers (distributions.c) --------------------------------- */

/* buffered_bounded_lemire_uint32: rng < 0xFFFFFFFF. */
static uint32_t np_lemire32(struct dp_engram_pcg64 *g, uint32_t rng)
{
	const uint32_t rng_excl = rng + 1;
	uint64_t m = (uint64_t)dp_engram_pcg64_next32(g) * rng_excl;
	uint32_t leftover = (uint32_t)m;

	if (leftover < rng_excl) {
		const uint32_t threshold = (UINT32_MAX - rng) % rng_excl;

		while (leftover < threshold) {
			m = (uint64_t)dp_engram_pcg64_next32(g) * rng_excl;
			leftover = (uint32_t)m;
		}
	}
	return (uint32_t)(m >> 32);
}

/* bounded_lemire_uint64 (the __uint128_t branch): rng < 2^64 - 1. */
static uint64_t np_lemire64(struct dp_engram_pcg64 *g, uint64_t rng)
{
	const uint64_t rng_excl = rng + 1;
	dp_engram_u128 m = (dp_engram_u128)dp_engram_pcg64_next64(g) * rng_excl;
	uint64_t leftover = (uint64_t)m;

	if (leftover < rng_excl) {
		const uint64_t threshold = (UINT64_MAX - rng) % rng_excl;

		while (leftover < threshold) {
			m = (dp_engram_u128)dp_engram_pcg64_next64(g) * rng_excl;
			leftover = (uint64_t)m;
		}
	}
	return (uint64_t)(m >> 64);
}

void dp_engram_np_bounded_u64_fill(struct dp_engram_pcg64 *g, uint64_t off, uint64_t rng,
                                   size_t cnt, uint64_t *out)
{
	if (rng == 0) {
		for (size_t i = 0; i < cnt; i++)
			out[i] = off;
	} else if (rng <= 0xFFFFFFFFu) {
		/* the full 32-bit range is the raw word, as numpy 2.x does (older sources fed
		 * it to Lemire with rng_excl == 0, which always returned off) */
		for (size_t i = 0; i < cnt; i++)
			out[i] = off + (rng == 0xFFFFFFFFu ? dp_engram_pcg64_next32(g)
			                                   : np_lemire32(g, (uint32_t)rng));
	} else if (rng == UINT64_MAX) {
		for (size_t i = 0; i < cnt; i++)
			out[i] = off + dp_engram_pcg64_next64(g);
	} else {
		for (size_t i = 0; i < cnt; i++)
			out[i] = off + np_lemire64(g, rng);
	}
}

void dp_engram_np_integers_i64(struct dp_engram_pcg64 *g, int64_t low, int64_t high, size_t cnt,
                               int64_t *out)
{
	/* _rand_int64: closed interval [low, high - 1]; rng and off as unsigned */
	uint64_t rng = (uint64_t)high - 1u - (uint64_t)low;
	uint64_t off = (uint64_t)low;

	assert(low < high);
	for (size_t i = 0; i < cnt; i++) {
		uint64_t v;

		dp_engram_np_bounded_u64_fill(g, off, rng, 1, &v);
		/* the bit pattern numpy stores into its int64 array */
		out[i] = v <= INT64_MAX ? (int64_t)v : -(int64_t)(~v) - 1;
	}
}
