/* SPDX-License-Identifier: MIT */
/*
 * engram/prime.c — primality for the Engram table sizes (the demo uses sympy.isprime).
 *
 * Miller-Rabin with the first twelve prime bases is exact below 3.3 * 10^24, so for every
 * 64-bit n (Sorenson & Webster 2015: the bases 2..37 have no common strong pseudoprime below
 * 318665857834031151167461).
 */
#include "base/macros.h"
#include "engram/engram-internal.h"

static const uint64_t small_primes[] = {2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37};

static inline uint64_t mulmod(uint64_t a, uint64_t b, uint64_t m)
{
	return (uint64_t)((dp_engram_u128)a * b % m);
}

static uint64_t powmod(uint64_t b, uint64_t e, uint64_t m)
{
	uint64_t r = 1;

	b %= m;
	while (e) {
		if (e & 1)
			r = mulmod(r, b, m);
		b = mulmod(b, b, m);
		e >>= 1;
	}
	return r;
}

bool dp_engram_is_prime(uint64_t n)
{
	uint64_t d;
	int s = 0;

	if (n < 2)
		return false;
	for (size_t i = 0; i < DP_ARRAY_SIZE(small_primes); i++) {
		if (n == small_primes[i])
			return true;
		if (n % small_primes[i] == 0)
			return false;
	}
	/* n - 1 = d * 2^s, d odd */
	d = n - 1;
	while (!(d & 1)) {
		d >>= 1;
		s++;
	}
	for (size_t i = 0; i < DP_ARRAY_SIZE(small_primes); i++) {
		uint64_t x = powmod(small_primes[i], d, n);

		if (x == 1 || x == n - 1)
			continue;
		for (int r = 1; r < s; r++) {
			x = mulmod(x, x, n);
			if (x == n - 1)
				break;
		}
		if (x != n - 1)
			return false;
	}
	return true;
}

uint64_t dp_engram_next_prime(uint64_t n)
{
	while (n < UINT64_MAX) {
		n++;
		if (dp_engram_is_prime(n))
			return n;
	}
	return 0;
}
