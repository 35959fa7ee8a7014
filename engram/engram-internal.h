/* SPDX-License-Identifier: MIT */
/*
 * engram/engram-internal.h — the pieces under engram.h: numpy's random stream and the primes.
 *
 * Not part of the public contract: the sources of engram/ and tests/engram use it.
 *
 * numpy_random.c reproduces, bit for bit, what this Python line returns (numpy >= 1.17; checked
 * against numpy 2.4 by tests/engram/test_rng.c on fixtures numpy wrote):
 *
 *     numpy.random.default_rng(seed).integers(0, high, n, dtype=numpy.int64)
 *
 * That is three layers, each a faithful transcription of numpy's algorithm:
 *
 *   SeedSequence   the entropy (a non-negative integer, as little-endian uint32 words) is
 *                  hashed into a 4-word pool (hashmix with INIT_A/MULT_A, mix with
 *                  MIX_MULT_L/MIX_MULT_R, XSHIFT 16); generate_state() then draws words from
 *                  the pool cycled, hashed with INIT_B/MULT_B.
 *   PCG64          generate_state(4, uint64) gives seed = (w0 << 64 | w1) and
 *                  inc = (w2 << 64 | w3); pcg_setseq_128_srandom_r: state = 0,
 *                  inc = inc << 1 | 1, step, state += seed, step. Each 64-bit output steps the
 *                  LCG (multiplier 2549297995355413924 * 2^64 + 4865540595714422341) and
 *                  applies XSL-RR to the new state. A 32-bit draw takes the low half of a
 *                  64-bit output and keeps the high half for the next 32-bit draw (the
 *                  generator's has_uint32 / uinteger fields; it survives across calls).
 *   integers       Generator.integers uses Lemire's method (use_masked = false) through
 *                  random_bounded_uint64_fill with off = low, rng = high - 1 - low:
 *                  rng == 0: no draw; rng <= 0xFFFFFFFF: 32-bit draws (rng == 0xFFFFFFFF: the
 *                  raw 32-bit word; else 32-bit Lemire with rejection); rng == 2^64 - 1: the
 *                  raw 64-bit word; else 64-bit Lemire (128-bit product, rejection while
 *                  the low half < (2^64 - 1 - rng) % (rng + 1)).
 */
#ifndef DP_ENGRAM_INTERNAL_H
#define DP_ENGRAM_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

__extension__ typedef unsigned __int128 dp_engram_u128;

/* SeedSequence's pool size (numpy's DEFAULT_POOL_SIZE). */
#define DP_ENGRAM_NP_POOL 4
/* Most entropy words accepted (an integer below 2^1024). */
#define DP_ENGRAM_NP_ENTROPY_MAX 32

/* numpy's PCG64 bit generator state (pcg64_state). */
struct dp_engram_pcg64 {
	dp_engram_u128 state;
	dp_engram_u128 inc;
	bool has_uint32; /* uinteger holds the unused high half of the last 64-bit output */
	uint32_t uinteger;
};

/* Split a non-negative integer into the uint32 words numpy's SeedSequence sees (least
 * significant first; 0 is one word). Returns the count (1..4). */
size_t dp_engram_np_entropy_words(dp_engram_u128 v, uint32_t out[4]);

/* SeedSequence(entropy).generate_state(n_words, uint32) into out. n_entropy in
 * 1..DP_ENGRAM_NP_ENTROPY_MAX. */
void dp_engram_np_seedseq_state(const uint32_t *entropy, size_t n_entropy, uint32_t *out,
                                size_t n_words);

/* PCG64(SeedSequence(entropy)): what default_rng(int) builds. */
void dp_engram_pcg64_seed(struct dp_engram_pcg64 *g, const uint32_t *entropy, size_t n_entropy);

uint64_t dp_engram_pcg64_next64(struct dp_engram_pcg64 *g);
uint32_t dp_engram_pcg64_next32(struct dp_engram_pcg64 *g);

/* random_bounded_uint64_fill(off, rng, cnt, use_masked = false, out). */
void dp_engram_np_bounded_u64_fill(struct dp_engram_pcg64 *g, uint64_t off, uint64_t rng,
                                   size_t cnt, uint64_t *out);

/* Generator.integers(low, high, cnt, dtype=int64): high exclusive, low < high. */
void dp_engram_np_integers_i64(struct dp_engram_pcg64 *g, int64_t low, int64_t high, size_t cnt,
                               int64_t *out);

/* ---- primes (prime.c) --------------------------------------------------- */

/* Deterministic Miller-Rabin, exact for every 64-bit n. */
bool dp_engram_is_prime(uint64_t n);

/* Smallest prime > n; 0 when there is none below 2^64. */
uint64_t dp_engram_next_prime(uint64_t n);

/* ---- JSON and files (config.c) ------------------------------------------- */

struct dp_engram_config;
struct json_t;

/* Largest file the loaders read. */
#define DP_ENGRAM_FILE_MAX (1LL << 30)

/* Parse JSON text (duplicate keys refused); -EINVAL with line and column on bad JSON. */
int dp_engram_json_parse(const char *text, size_t len, struct json_t **ret_root, char *err,
                         size_t err_len);

/* Read a whole file (NUL-terminated; *ret_len excludes the NUL). -errno, -EFBIG over
 * DP_ENGRAM_FILE_MAX; err starts with the path. */
int dp_engram_read_file(const char *path, char **ret_buf, size_t *ret_len, char *err,
                        size_t err_len);

/* The config keys of a parsed JSON object into *ret (checked; owned arrays). */
int dp_engram_config_from_json(const struct json_t *root, struct dp_engram_config *ret, char *err,
                               size_t err_len);

/* "an integer", "a string", ... for messages. */
const char *dp_engram_json_kind(const struct json_t *v);

/* ---- the hot-row cache (cache.c) -------------------------------------------- */

/* Decoded rows by key, CLOCK replacement; entries used in the current epoch are pinned. */
struct dp_engram_cache {
	uint32_t cap, dim; /* entries (0: no cache), floats per entry */
	float *data;       /* [cap][dim] */
	uint64_t *key;     /* [cap]; UINT64_MAX: unused */
	uint64_t *epoch;   /* [cap]: the step that last used it */
	uint8_t *ref;      /* [cap]: CLOCK reference bits */
	uint32_t hand, used;
	uint32_t *index; /* [mask + 1]: entry + 1, 0 = free */
	uint32_t mask;
};

/* cap 0 makes a cache that holds nothing. 0, -EINVAL or -ENOMEM. */
int dp_engram_cache_init(struct dp_engram_cache *c, uint32_t cap, uint32_t dim);
void dp_engram_cache_fini(struct dp_engram_cache *c);
/* The entry holding key (marked used in epoch), or -1. */
int64_t dp_engram_cache_lookup(struct dp_engram_cache *c, uint64_t key, uint64_t epoch);
/* Add key's row (dim floats). Returns the entry, -EEXIST (already there: marked used) or
 * -ENOSPC (every entry pinned, or no cache); *ret_evicted says whether an entry was evicted. */
int64_t dp_engram_cache_insert(struct dp_engram_cache *c, uint64_t key, const float *row,
                               uint64_t epoch, bool *ret_evicted);

/* ---- table files (table.c) ------------------------------------------------ */

struct dp_engram_table;

/* The table's read-only descriptor (owned by the table). */
int dp_engram_table_fd(const struct dp_engram_table *t);

#ifdef __cplusplus
}
#endif

#endif /* DP_ENGRAM_INTERNAL_H */
