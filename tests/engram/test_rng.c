/* SPDX-License-Identifier: MIT */
/*
 * engram/numpy_random.c and engram/prime.c: numpy's SeedSequence, PCG64 and
 * Generator.integers(..., dtype=int64) reproduced bit for bit, and the Engram table primes
 * chosen as the reference chooses them.
 *
 * The expected values come from numpy itself: tests/engram/gen_fixtures.py wrote
 * fixtures/numpy_rng.json (seeds are decimal strings: some exceed 64 bits).
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/macros.h"
#include "engram/engram-internal.h"
#include "engram/engram.h"

static const char *test_dir(void)
{
	const char *d = getenv("DP_TEST_ENGRAM");

	return d && *d ? d : "tests/engram";
}

static json_t *load_fixture(const char *name)
{
	char path[4096];
	json_error_t je;
	json_t *root;

	snprintf(path, sizeof(path), "%s/fixtures/%s", test_dir(), name);
	root = json_load_file(path, 0, &je);
	cr_assert(root, "%s: %s (line %d)", path, je.text, je.line);
	return root;
}

/* A decimal string -> little-endian uint32 words (what numpy's SeedSequence sees). */
static size_t decimal_words(const char *s, uint32_t *w, size_t max)
{
	size_t n = 1;

	w[0] = 0;
	for (; *s; s++) {
		uint64_t carry = (uint64_t)(*s - '0');

		cr_assert(*s >= '0' && *s <= '9', "bad decimal %s", s);
		for (size_t i = 0; i < n; i++) {
			uint64_t v = (uint64_t)w[i] * 10 + carry;

			w[i] = (uint32_t)v;
			carry = v >> 32;
		}
		if (carry) {
			cr_assert(n < max, "seed too large");
			w[n++] = (uint32_t)carry;
		}
	}
	return n;
}

static void seed_from(struct dp_engram_pcg64 *g, const char *decimal)
{
	uint32_t w[DP_ENGRAM_NP_ENTROPY_MAX];
	size_t n = decimal_words(decimal, w, DP_ENGRAM_NP_ENTROPY_MAX);

	dp_engram_pcg64_seed(g, w, n);
}

static void draw(struct dp_engram_pcg64 *g, int64_t bound, const json_t *values, const char *what)
{
	size_t n = json_array_size(values);
	int64_t got[64];

	cr_assert(n <= 64);
	memset(got, 0x5a, sizeof(got));
	dp_engram_np_integers_i64(g, 0, bound, n, got);
	for (size_t i = 0; i < n; i++)
		cr_expect_eq(got[i], json_integer_value(json_array_get(values, i)),
		             "%s: value %zu: got %" PRId64 ", numpy %" PRId64, what, i, got[i],
		             (int64_t)json_integer_value(json_array_get(values, i)));
}

Test(numpy_rng, seedsequence_state_matches_numpy_for_1_to_6_entropy_words)
{
	json_t *root = load_fixture("numpy_rng.json");
	const json_t *cases = json_object_get(root, "seedseq");
	size_t i;
	const json_t *c;
	int long_entropy = 0;

	cr_assert(json_array_size(cases) >= 7);
	json_array_foreach(cases, i, c)
	{
		const json_t *ent = json_object_get(c, "entropy");
		const json_t *st = json_object_get(c, "state");
		uint32_t w[DP_ENGRAM_NP_ENTROPY_MAX], out[8], dec[DP_ENGRAM_NP_ENTROPY_MAX];
		size_t n = json_array_size(ent);

		for (size_t k = 0; k < n; k++)
			w[k] = (uint32_t)json_integer_value(json_array_get(ent, k));
		/* the decimal seed splits into the same words numpy used */
		cr_expect_eq(decimal_words(json_string_value(json_object_get(c, "seed")), dec,
		                           DP_ENGRAM_NP_ENTROPY_MAX),
		             n);
		cr_expect_arr_eq(dec, w, n * sizeof(*w));
		long_entropy += n > DP_ENGRAM_NP_POOL;
		dp_engram_np_seedseq_state(w, n, out, 8);
		for (size_t k = 0; k < 8; k++)
			cr_expect_eq(out[k], (uint32_t)json_integer_value(json_array_get(st, k)),
			             "case %zu word %zu", i, k);
	}
	cr_expect(long_entropy >= 2, "entropy longer than the pool is covered");
	json_decref(root);
}

Test(numpy_rng, entropy_words_split_integers_as_numpy_does)
{
	uint32_t w[4];

	cr_expect_eq(dp_engram_np_entropy_words(0, w), 1);
	cr_expect_eq(w[0], 0);
	cr_expect_eq(dp_engram_np_entropy_words(0xffffffffu, w), 1);
	cr_expect_eq(dp_engram_np_entropy_words((dp_engram_u128)1 << 32, w), 2);
	cr_expect(w[0] == 0 && w[1] == 1);
	cr_expect_eq(dp_engram_np_entropy_words(~(dp_engram_u128)0, w), 4);
}

Test(numpy_rng, pcg64_raw_outputs_match_numpy)
{
	json_t *root = load_fixture("numpy_rng.json");
	const json_t *cases = json_object_get(root, "cases");
	size_t i;
	const json_t *c;

	json_array_foreach(cases, i, c)
	{
		struct dp_engram_pcg64 g;
		const json_t *raw = json_object_get(c, "raw");

		seed_from(&g, json_string_value(json_object_get(c, "seed")));
		for (size_t k = 0; k < json_array_size(raw); k++) {
			uint64_t want =
			    strtoull(json_string_value(json_array_get(raw, k)), NULL, 10);
			uint64_t got = dp_engram_pcg64_next64(&g);

			cr_expect_eq(got, want,
			             "case %zu (seed %s) raw %zu: %" PRIu64 " != %" PRIu64, i,
			             json_string_value(json_object_get(c, "seed")), k, got, want);
		}
	}
	json_decref(root);
}

Test(numpy_rng, integers_matches_numpy_on_200_seed_bound_cases)
{
	json_t *root = load_fixture("numpy_rng.json");
	const json_t *cases = json_object_get(root, "cases");
	size_t i;
	const json_t *c;
	int bound1 = 0, small = 0, full32 = 0, large = 0;

	cr_assert_eq(json_array_size(cases), 200);
	json_array_foreach(cases, i, c)
	{
		struct dp_engram_pcg64 g;
		int64_t bound = json_integer_value(json_object_get(c, "bound"));
		char what[128];

		snprintf(what, sizeof(what), "case %zu (seed %s, bound %" PRId64 ")", i,
		         json_string_value(json_object_get(c, "seed")), bound);
		seed_from(&g, json_string_value(json_object_get(c, "seed")));
		draw(&g, bound, json_object_get(c, "values"), what);
		bound1 += bound == 1;
		small += bound > 1 && bound - 1 < 0xffffffffll;
		full32 += bound - 1 == 0xffffffffll;
		large += bound - 1 > 0xffffffffll;
	}
	cr_expect(bound1 && small > 20 && full32 && large > 20,
	          "paths covered: bound 1 %d, 32-bit Lemire %d, full 32-bit %d, 64-bit Lemire %d",
	          bound1, small, full32, large);
	json_decref(root);
}

Test(numpy_rng, integers_carries_the_spare_32_bit_word_across_calls)
{
	json_t *root = load_fixture("numpy_rng.json");
	const json_t *seqs = json_object_get(root, "sequences");
	size_t i;
	const json_t *s;

	cr_assert(json_array_size(seqs) > 0);
	json_array_foreach(seqs, i, s)
	{
		struct dp_engram_pcg64 g;
		const json_t *calls = json_object_get(s, "calls");
		size_t k;
		const json_t *c;

		seed_from(&g, json_string_value(json_object_get(s, "seed")));
		json_array_foreach(calls, k, c)
		{
			char what[96];

			snprintf(what, sizeof(what), "sequence %zu call %zu", i, k);
			draw(&g, json_integer_value(json_object_get(c, "bound")),
			     json_object_get(c, "values"), what);
		}
	}
	json_decref(root);
}

Test(numpy_rng, engram_multipliers_match_numpy_for_any_seed_layer_and_vocab)
{
	json_t *root = load_fixture("numpy_rng.json");
	const json_t *cases = json_object_get(root, "multipliers");
	size_t i;
	const json_t *c;

	cr_assert(json_array_size(cases) > 0);
	json_array_foreach(cases, i, c)
	{
		int layer = (int)json_integer_value(json_object_get(c, "layer"));
		int N = (int)json_integer_value(json_object_get(c, "max_ngram_size"));
		int64_t vocab[DP_ENGRAM_NGRAM_MAX], map[1] = {0};
		struct dp_engram_config cfg = {
		    .n_layers = 1,
		    .layer_ids = &layer,
		    .max_ngram_size = N,
		    .n_heads = 1,
		    .vocab_size = vocab,
		    .compressed_vocab_size =
		        json_integer_value(json_object_get(c, "compressed_vocab_size")),
		    .map_size = 1,
		    .compression_map = map,
		    .pad_id = 0,
		    .seed = strtoull(json_string_value(json_object_get(c, "seed")), NULL, 10),
		};
		struct dp_engram_hash *h = NULL;
		const json_t *want = json_object_get(c, "multipliers");
		const int64_t *m;

		for (int k = 0; k < N - 1; k++)
			vocab[k] = 100;
		cr_assert_eq(dp_engram_hash_new(&cfg, &h), 0, "case %zu", i);
		m = dp_engram_hash_multipliers(h, 0);
		for (int k = 0; k < N; k++) {
			cr_expect_eq(m[k], json_integer_value(json_array_get(want, (size_t)k)),
			             "case %zu k %d", i, k);
			cr_expect(m[k] > 0 && (m[k] & 1), "multipliers are odd and positive");
		}
		dp_engram_hash_free(h);
	}
	json_decref(root);
}

/* ---- primes --------------------------------------------------------------------- */

Test(primes, miller_rabin_agrees_with_a_sieve_below_2_million)
{
	enum { LIM = 2000000 };
	unsigned char *composite = calloc(LIM, 1);

	cr_assert(composite);
	composite[0] = composite[1] = 1;
	for (uint64_t i = 2; i * i < LIM; i++)
		if (!composite[i])
			for (uint64_t j = i * i; j < LIM; j += i)
				composite[j] = 1;
	for (uint64_t n = 0; n < LIM; n++)
		if (dp_engram_is_prime(n) != !composite[n]) {
			cr_expect_fail("is_prime(%" PRIu64 ") wrong", n);
			break;
		}
	free(composite);
}

Test(primes, miller_rabin_is_exact_on_64_bit_pseudoprimes_and_primes)
{
	/* strong pseudoprimes to many small bases, Carmichael numbers, big primes */
	static const uint64_t composites[] = {
	    561,
	    1105,
	    2047,
	    1373653,
	    25326001,
	    3215031751ull,
	    2152302898747ull,
	    3474749660383ull,
	    341550071728321ull,
	    3825123056546413051ull,
	    UINT64_MAX,
	    4294967297ull /* 641 * 6700417 */,
	    18446744073709551556ull,
	    (uint64_t)4294967291ull * 4294967279ull,
	};
	static const uint64_t primes[] = {
	    2,
	    3,
	    1000003,
	    4294967291ull,
	    4294967311ull,
	    2305843009213693951ull /* 2^61-1 */,
	    18446744073709551557ull /* largest below 2^64 */,
	    1099511627791ull,
	};

	for (size_t i = 0; i < DP_ARRAY_SIZE(composites); i++)
		cr_expect(!dp_engram_is_prime(composites[i]), "%" PRIu64 " is composite",
		          composites[i]);
	for (size_t i = 0; i < DP_ARRAY_SIZE(primes); i++)
		cr_expect(dp_engram_is_prime(primes[i]), "%" PRIu64 " is prime", primes[i]);
	cr_expect_eq(dp_engram_next_prime(1099511627776ull), 1099511627791ull, "after 2^40");
	cr_expect_eq(dp_engram_next_prime(18446744073709551557ull), 0, "none left below 2^64");
	cr_expect_eq(dp_engram_next_prime(0), 2);
	cr_expect_eq(dp_engram_next_prime(7), 11, "strictly greater");
}

static bool slow_prime(int64_t n)
{
	if (n < 2)
		return false;
	for (int64_t d = 2; d * d <= n; d++)
		if (n % d == 0)
			return false;
	return true;
}

/* The reference's find_next_prime loop, with trial division: smallest prime > start not used. */
static int64_t slow_take(int64_t start, const int64_t *used, size_t n_used)
{
	for (int64_t c = start + 1;; c++) {
		bool taken = false;

		if (!slow_prime(c))
			continue;
		for (size_t i = 0; i < n_used; i++)
			taken |= used[i] == c;
		if (!taken)
			return c;
	}
}

Test(primes, table_sizes_are_distinct_primes_chosen_as_the_reference_does)
{
	/* overlapping ranges across orders and layers force skips; order 3's vocab is prime */
	int layers[] = {7, 0, 3, 12};
	int64_t vocab[] = {100, 97, 100, 53};
	int64_t map[4] = {0, 1, 2, 3};
	struct dp_engram_config cfg = {
	    .n_layers = 4,
	    .layer_ids = layers,
	    .max_ngram_size = 5,
	    .n_heads = 6,
	    .vocab_size = vocab,
	    .compressed_vocab_size = 4,
	    .map_size = 4,
	    .compression_map = map,
	    .pad_id = 2,
	    .seed = 0,
	};
	struct dp_engram_hash *h;
	int64_t used[4 * 4 * 6];
	size_t n_used = 0;

	cr_assert_eq(dp_engram_hash_new(&cfg, &h), 0);
	cr_assert_eq(dp_engram_hash_n_columns(h), 24);
	for (int l = 0; l < 4; l++) {
		const int64_t *sz = dp_engram_hash_table_sizes(h, l);
		const int64_t *off = dp_engram_hash_offsets(h, l);

		cr_expect_eq(off[0], 0);
		for (int n = 2; n <= 5; n++) {
			int64_t start = vocab[n - 2] - 1;

			for (int head = 0; head < 6; head++) {
				int c = dp_engram_column(6, n, head);
				int64_t want = slow_take(start, used, n_used);

				cr_expect_eq(sz[c], want,
				             "layer %d n %d head %d: %" PRId64 " != %" PRId64,
				             layers[l], n, head, sz[c], want);
				if (head)
					cr_expect_gt(sz[c], sz[c - 1],
					             "increasing within an order");
				for (size_t i = 0; i < n_used; i++)
					cr_expect_neq(used[i], sz[c], "distinct across the config");
				used[n_used++] = want;
				start = want;
				cr_expect_eq(off[c + 1], off[c] + sz[c], "offsets are prefix sums");
			}
		}
	}
	/* order 3 of the first layer starts at its vocab size, 97, itself prime */
	cr_expect_eq(dp_engram_hash_table_sizes(h, 0)[dp_engram_column(6, 3, 0)], 97);
	dp_engram_hash_free(h);
}
