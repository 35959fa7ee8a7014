/* SPDX-License-Identifier: MIT */
/*
 * base/dtype.h — scalar conversions between fp32 and the narrow float formats
 * the weights and tables come in: bfloat16, IEEE binary16 (f16) and OCP fp8
 * E4M3FN. Host code; pure functions of their argument (any thread).
 *
 * Rounding, where a conversion narrows, is to nearest, ties to even. Widening
 * (to fp32) is exact for all three formats.
 */
#ifndef DP_BASE_DTYPE_H
#define DP_BASE_DTYPE_H

#include <math.h>
#include <stdint.h>
#include <string.h>

/* ---- bfloat16: the top half of an fp32 ---------------------------------------- */

static inline float dp_bf16_to_f32(uint16_t v)
{
	uint32_t u = (uint32_t)v << 16;
	float f;
	memcpy(&f, &u, sizeof(f));
	return f;
}

/* Round to nearest even; a NaN stays a (quiet) NaN. */
static inline uint16_t dp_f32_to_bf16(float f)
{
	uint32_t u;
	memcpy(&u, &f, sizeof(u));
	if ((u & 0x7fffffffu) > 0x7f800000u) /* NaN: keep it a quiet NaN */
		return (uint16_t)((u >> 16) | 0x40);
	u += 0x7fffu + ((u >> 16) & 1u);
	return (uint16_t)(u >> 16);
}

/* ---- IEEE binary16 ---------------------------------------------------------------- */

static inline float dp_f16_to_f32(uint16_t h)
{
	uint32_t sign = (uint32_t)(h >> 15) << 31;
	uint32_t exp = (h >> 10) & 0x1f;
	uint32_t man = h & 0x3ff;
	uint32_t u;

	if (exp == 0x1f) {
		u = sign | 0x7f800000u | (man << 13);
	} else if (exp == 0) {
		if (man == 0) {
			u = sign;
		} else { /* subnormal: value = man * 2^-24, exact in fp32 */
			float f = ldexpf((float)man, -24);
			memcpy(&u, &f, sizeof(u));
			u |= sign;
		}
	} else {
		u = sign | ((exp + 112) << 23) | (man << 13);
	}
	float f;
	memcpy(&f, &u, sizeof(f));
	return f;
}

/* ---- fp8 E4M3FN (OCP) ----------------------------------------------------------- */

/*
 * Code layout: s eeee mmm, bias 7. e == 0: subnormal m * 2^-9; else (1 + m/8) * 2^(e-7);
 * s 1111 111 is NaN (no infinities), so the largest finite value is 1.75 * 2^8 = 448 (0x7e).
 */
#define DP_E4M3_MAX 448.0f

static inline float dp_e4m3_to_f32(uint8_t v)
{
	int e = (v >> 3) & 15, m = v & 7;
	float a;

	if (e == 15 && m == 7)
		return NAN;
	a = e == 0 ? ldexpf((float)m, -9) : ldexpf(1.0f + m / 8.0f, e - 7);
	return (v & 0x80) ? -a : a;
}

/* Round to nearest even, saturating at +-448; NaN -> 0x7f. */
static inline uint8_t dp_f32_to_e4m3(float f)
{
	if (isnan(f))
		return 0x7f;
	uint8_t sign = signbit(f) ? 0x80 : 0;
	float a = fabsf(f);

	if (a < 0x1p-6f) {
		/* subnormal range (code 8, 2^-6, is where rounding up lands) */
		float q = nearbyintf(ldexpf(a, 9)); /* exact scaling; RNE */
		return (uint8_t)(sign | (uint8_t)q);
	}
	if (a >= DP_E4M3_MAX)
		return (uint8_t)(sign | 0x7e); /* saturate */
	int e;
	float fr = frexpf(a, &e); /* a = fr * 2^e, fr in [0.5, 1) */
	int exp = e - 1;          /* a = (2 fr) * 2^exp, 2 fr in [1, 2) */
	float m = nearbyintf((2.0f * fr - 1.0f) * 8.0f);
	if (m >= 8.0f) {
		m = 0;
		exp++;
	}
	int code = ((exp + 7) << 3) | (int)m;
	if (code > 0x7e)
		code = 0x7e;
	return (uint8_t)(sign | (uint8_t)code);
}

/* ---- fp4 E2M1 and E8M0 scales (the V4 checkpoints' block formats) ---------------------- */

/* A 4-bit code s eem: magnitudes 0, 0.5, 1, 1.5, 2, 3, 4, 6 by bits 2..0, sign bit 3
 * (the high nibble of `v` is ignored). */
static inline float dp_e2m1_to_f32(uint8_t v)
{
	static const float mag[8] = { 0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f };
	float a = mag[v & 7];
	return (v & 8) ? -a : a;
}

/* A scale byte: 2^(b - 127) for b in 0..254 (b = 0 is the fp32 subnormal 2^-127);
 * 255 is NaN. Built from its bits, never through a float cast of b. */
static inline float dp_e8m0_to_f32(uint8_t b)
{
	uint32_t u = b == 255 ? 0x7fc00000u : b == 0 ? 0x00400000u : (uint32_t)b << 23;
	float f;
	memcpy(&f, &u, sizeof(f));
	return f;
}

#endif /* DP_BASE_DTYPE_H */
