/* SPDX-License-Identifier: MIT */
/*
 * base/dtype.h: the narrow float formats. fp8 e4m3 against a brute-force nearest code,
 * bf16's rounding, f16 widening (every code: exact, subnormals, infinities, NaN).
 * The e4m3 and bf16 tests were engram's (tests/engram/test_table.c) when the conversions
 * lived in engram/quant.c.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "base/dtype.h"

/* Nearest e4m3 code by brute force (ties to the even code), saturating: an independent
 * reference for dp_f32_to_e4m3. */
static uint8_t e4m3_reference(float x)
{
	uint8_t sign = signbit(x) ? 0x80 : 0;
	double a = fabs((double)x), best = INFINITY;
	int code = 0;
	for (int c = 0; c <= 0x7e; c++) {
		double v = dp_e4m3_to_f32((uint8_t)c), d = fabs(v - a);
		if (d < best || (d == best && (c & 1) == 0)) {
			best = d;
			code = c;
		}
	}
	return sign | (uint8_t)code;
}

Test(dtype, e4m3_codes_round_trip_and_round_to_nearest_even)
{
	for (int c = 0; c < 256; c++) {
		if ((c & 0x7f) == 0x7f) {
			cr_expect(isnan(dp_e4m3_to_f32((uint8_t)c)), "code %#x is NaN", c);
			continue;
		}
		float v = dp_e4m3_to_f32((uint8_t)c);
		cr_expect_eq(dp_f32_to_e4m3(v), c, "code %#x (%g) does not round trip", c, v);
	}
	cr_expect_eq(dp_e4m3_to_f32(0x7e), 448.0f);
	cr_expect_eq(dp_e4m3_to_f32(0x01), 0x1p-9f, "smallest subnormal");
	cr_expect_eq(dp_f32_to_e4m3(1000.0f), 0x7e, "saturates");
	cr_expect_eq(dp_f32_to_e4m3(-1e30f), 0xfe);
	cr_expect_eq(dp_f32_to_e4m3(NAN), 0x7f);
	cr_expect_eq(dp_f32_to_e4m3(0x1p-10f), 0x00, "half the smallest subnormal: to even");
	cr_expect_eq(dp_f32_to_e4m3(3 * 0x1p-10f), 0x02, "1.5 steps: to even");
	cr_expect_eq(dp_f32_to_e4m3(1.0625f), 0x38, "midpoint of 1 and 1.125: to even");
	cr_expect_eq(dp_f32_to_e4m3(1.1875f), 0x3a, "midpoint of 1.125 and 1.25: to even");

	uint64_t x = 88172645463325252ull;
	for (int i = 0; i < 200000; i++) {
		x ^= x << 13, x ^= x >> 7, x ^= x << 17;
		float mant = (float)(x >> 40) * 0x1p-24f, v = ldexpf(mant, (int)(x % 28) - 18);
		if (x & 1)
			v = -v;
		if (fabsf(v) > 448.0f)
			continue;
		cr_assert_eq(dp_f32_to_e4m3(v), e4m3_reference(v), "%a", v);
	}
}

Test(dtype, bf16_rounds_to_nearest_even)
{
	cr_expect_eq(dp_f32_to_bf16(1.0f), 0x3f80);
	cr_expect_eq(dp_f32_to_bf16(1.0f + 0x1p-8f), 0x3f80, "tie to even");
	cr_expect_eq(dp_f32_to_bf16(1.0f + 3 * 0x1p-8f), 0x3f82, "tie to even, up");
	cr_expect_eq(dp_bf16_to_f32(0x3f81), 1.0f + 0x1p-7f);
}

Test(dtype, bf16_widens_exactly_and_keeps_nan_quiet)
{
	for (uint32_t v = 0; v < 0x10000; v++) {
		float f = dp_bf16_to_f32((uint16_t)v);
		uint32_t u;
		memcpy(&u, &f, 4);
		cr_assert_eq(u, v << 16, "bf16 %#x", v);
		if (!isnan(f))
			cr_assert_eq(dp_f32_to_bf16(f), v, "bf16 %#x round trips", v);
	}
	cr_expect(isnan(dp_bf16_to_f32(dp_f32_to_bf16(NAN))));
	/* a signalling NaN whose payload sits in the low half stays a NaN */
	uint32_t snan = 0x7f800001u;
	float f;
	memcpy(&f, &snan, 4);
	cr_expect(isnan(dp_bf16_to_f32(dp_f32_to_bf16(f))));
}

/* The IEEE binary16 value of h by its definition, in double. */
static double f16_reference(uint16_t h)
{
	int sign = h >> 15, e = (h >> 10) & 0x1f, m = h & 0x3ff;
	double a = e == 0 ? ldexp(m, -24) : ldexp(1.0 + m / 1024.0, e - 15);
	if (e == 0x1f)
		a = m ? NAN : INFINITY;
	return sign ? -a : a;
}

Test(dtype, f16_widens_every_code_exactly)
{
	for (uint32_t h = 0; h < 0x10000; h++) {
		float f = dp_f16_to_f32((uint16_t)h);
		double want = f16_reference((uint16_t)h);
		if (isnan(want)) {
			cr_assert(isnan(f), "f16 %#x is NaN", h);
			continue;
		}
		cr_assert_eq((double)f, want, "f16 %#x", h);
		cr_assert_eq(!!signbit(f), h >> 15, "f16 %#x keeps its sign", h);
	}
	cr_expect_eq(dp_f16_to_f32(0x0001), 0x1p-24f, "smallest subnormal");
	cr_expect_eq(dp_f16_to_f32(0x7bff), 65504.0f, "largest finite");
}
