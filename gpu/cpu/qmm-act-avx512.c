/* SPDX-License-Identifier: MIT */
/*
 * The reference numerics' act-quantized product (qmm-act.c) with AVX-512 F/BW/VL,
 * built for that instruction set only and called only on a CPU that has it.
 *
 * Same bits as the portable path: every weight block's sum is exact (products of
 * two e4m3 values, or e4m3 x e2m1, are exact in double and a block of them sums
 * exactly in double in any order), rounded to fp32 once, and added to the fp32
 * accumulator in K order with the portable path's fp32 operations, lane by lane.
 *
 * Layout: a thread owns panels of DP_QACT_NR weight rows. For each DP_QACT_KC-
 * column chunk the panel's codes are decoded once into doubles (bit manipulation
 * for e4m3, a 16-entry permute for e2m1; 16 KiB, L1) and every token (one or two
 * at a time) runs over them: 8 or 16 independent double FMA chains, one per
 * (token, row), reduced together at the end of each weight block into one vector
 * of 8 block sums, converted to fp32 and scaled as the portable path does.
 */
#include <immintrin.h>
#include <string.h>

#include "gpu/cpu/qmm-internal.h"

/* 16 e4m3 codes as fp32, exactly, without touching an fp32 subnormal (an
 * input the multiplier takes a slow assist for): sign, exponent and mantissa
 * moved into fp32's with the bias raised from 7 to 127 — right for a normal
 * code; a subnormal code (exponent 0, mantissa m) then reads (1 + m/8) 2^-7
 * and becomes that times 2 minus 2^-6 = m/8 2^-6 (one exact fused op, sign
 * carried). Two differences from dp_qmm_e4m3_lut, neither visible in a
 * product: -0 (0x80) reads +0 (the fp32 accumulator starts at +0, so a zero's
 * sign never reaches y), and the NaN codes are not handled (uploads refuse
 * them: gpu.c check_codes). */
static inline __m512 e4m3x16(const uint8_t *p)
{
	__m512i c = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)p));
	__m512i v = _mm512_srai_epi32(_mm512_slli_epi32(c, 24), 4); /* sign at 31..27, code at 26..20 */
	v = _mm512_and_si512(v, _mm512_set1_epi32((int)0x87f00000u));
	__m512 f = _mm512_castsi512_ps(_mm512_add_epi32(v, _mm512_set1_epi32(120 << 23)));
	__mmask16 sub = _mm512_testn_epi32_mask(c, _mm512_set1_epi32(0x78));
	__m512 low = _mm512_castsi512_ps(_mm512_or_si512(_mm512_and_si512(v, _mm512_set1_epi32((int)0x80000000u)),
						     _mm512_castps_si512(_mm512_set1_ps(0x1p-6f))));
	return _mm512_mask_fmsub_ps(f, sub, _mm512_set1_ps(2.0f), low);
}

static inline void store_pd16(double *d, __m512 f)
{
	_mm512_storeu_pd(d, _mm512_cvtps_pd(_mm512_castps512_ps256(f)));
	__m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(f), 1));
	_mm512_storeu_pd(d + 8, _mm512_cvtps_pd(hi));
}

/* Codes [k0, k0 + kc) of one weight row as doubles (kc a multiple of 32). */
static void decode(const struct dp_qmat *w, const uint8_t *row, uint32_t k0, uint32_t kc, double *d)
{
	if (w->dtype == DP_DTYPE_E4M3) {
		for (uint32_t k = 0; k < kc; k += 16)
			store_pd16(d + k, e4m3x16(row + k0 + k));
		return;
	}
	/* e2m1, low nibble first: 16 bytes are 32 codes */
	const __m512 lut = _mm512_loadu_ps(dp_qmm_e2m1_lut);
	const __m512i lo_idx = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
	const __m512i hi_idx =
		_mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
	for (uint32_t k = 0; k < kc; k += 32) {
		__m512i c = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(row + (k0 + k) / 2)));
		__m512 even = _mm512_permutexvar_ps(_mm512_and_si512(c, _mm512_set1_epi32(15)), lut);
		__m512 odd = _mm512_permutexvar_ps(_mm512_srli_epi32(c, 4), lut);
		store_pd16(d + k, _mm512_permutex2var_ps(even, lo_idx, odd));
		store_pd16(d + k + 16, _mm512_permutex2var_ps(even, hi_idx, odd));
	}
}

/* Lane i: the sum of a[i]'s 8 lanes (exact here: any order). */
static inline __m512d reduce8(const __m512d a[8])
{
	__m512d t0 = _mm512_add_pd(_mm512_unpacklo_pd(a[0], a[1]), _mm512_unpackhi_pd(a[0], a[1]));
	__m512d t1 = _mm512_add_pd(_mm512_unpacklo_pd(a[2], a[3]), _mm512_unpackhi_pd(a[2], a[3]));
	__m512d t2 = _mm512_add_pd(_mm512_unpacklo_pd(a[4], a[5]), _mm512_unpackhi_pd(a[4], a[5]));
	__m512d t3 = _mm512_add_pd(_mm512_unpacklo_pd(a[6], a[7]), _mm512_unpackhi_pd(a[6], a[7]));
	__m512d u0 = _mm512_add_pd(_mm512_shuffle_f64x2(t0, t1, _MM_SHUFFLE(2, 0, 2, 0)),
				   _mm512_shuffle_f64x2(t0, t1, _MM_SHUFFLE(3, 1, 3, 1)));
	__m512d u1 = _mm512_add_pd(_mm512_shuffle_f64x2(t2, t3, _MM_SHUFFLE(2, 0, 2, 0)),
				   _mm512_shuffle_f64x2(t2, t3, _MM_SHUFFLE(3, 1, 3, 1)));
	return _mm512_add_pd(_mm512_shuffle_f64x2(u0, u1, _MM_SHUFFLE(2, 0, 2, 0)),
			     _mm512_shuffle_f64x2(u0, u1, _MM_SHUFFLE(3, 1, 3, 1)));
}

/* The fp32 step of one block for 8 rows: a += pf * (sa * sw) (FP8) or
 * a += pf * sa * sw (FP4), each lane as the portable path rounds it. */
static inline __m256 scale_add(__m256 a, __m512d sums, float sa, const float *sw, bool fp4)
{
	__m256 pf = _mm512_cvtpd_ps(sums);
	__m256 vsa = _mm256_set1_ps(sa), vsw = _mm256_loadu_ps(sw);
	__m256 t = fp4 ? _mm256_mul_ps(_mm256_mul_ps(pf, vsa), vsw)
		       : _mm256_mul_ps(pf, _mm256_mul_ps(vsa, vsw));
	return _mm256_add_ps(a, t);
}

/* Tokens m0 .. m0 + MR (MR 1 or 2) over the decoded chunk t[NR][kc]:
 * accf[m][r] updated block by block. */
static inline __attribute__((always_inline)) void tokens(const struct dp_qact_args *j,
							 const double *t, uint32_t k0, uint32_t kc,
							 const float *sw, uint32_t m0, int MR,
							 float *accf)
{
	uint32_t K = j->w->cols, kbw = j->w->kblock;
	bool fp4 = j->w->dtype == DP_DTYPE_E2M1;
	const double *x0 = j->xa + (size_t)m0 * K + k0;
	const double *x1 = MR > 1 ? x0 + K : x0;
	const float *sa0 = j->sa + (size_t)m0 * j->nab;
	const float *sa1 = MR > 1 ? sa0 + j->nab : sa0;
	__m256 a0 = _mm256_loadu_ps(accf + (size_t)m0 * DP_QACT_NR);
	__m256 a1 = MR > 1 ? _mm256_loadu_ps(accf + (size_t)(m0 + 1) * DP_QACT_NR) : a0;

	for (uint32_t b = 0; b < kc; b += kbw) {
		/* 8 or 16 accumulators, kept in registers (the loops over r unrolled) */
		__m512d c0[DP_QACT_NR], c1[DP_QACT_NR];
#pragma GCC unroll 8
		for (int r = 0; r < DP_QACT_NR; r++)
			c0[r] = c1[r] = _mm512_setzero_pd();
		for (uint32_t k = b; k < b + kbw; k += 8) {
			__m512d v0 = _mm512_loadu_pd(x0 + k);
			__m512d v1 = MR > 1 ? _mm512_loadu_pd(x1 + k) : v0;
#pragma GCC unroll 8
			for (int r = 0; r < DP_QACT_NR; r++) {
				__m512d wv = _mm512_loadu_pd(t + (size_t)r * DP_QACT_KC + k);
				c0[r] = _mm512_fmadd_pd(v0, wv, c0[r]);
				if (MR > 1)
					c1[r] = _mm512_fmadd_pd(v1, wv, c1[r]);
			}
		}
		uint32_t ab = (k0 + b) / DP_GPU_ACT_BLOCK;
		const float *swb = sw + (size_t)(b / kbw) * DP_QACT_NR;
		a0 = scale_add(a0, reduce8(c0), sa0[ab], swb, fp4);
		if (MR > 1)
			a1 = scale_add(a1, reduce8(c1), sa1[ab], swb, fp4);
	}
	_mm256_storeu_ps(accf + (size_t)m0 * DP_QACT_NR, a0);
	if (MR > 1)
		_mm256_storeu_ps(accf + (size_t)(m0 + 1) * DP_QACT_NR, a1);
}

void dp_qact_avx512_panels(const struct dp_qact_args *j, uint32_t p0, uint32_t p1,
			   struct dp_qact_scratch *s)
{
	const struct dp_qmat *w = j->w;
	uint32_t K = w->cols, M = j->M, kbw = w->kblock;
	size_t per_panel = (size_t)M * DP_QACT_NR;

	memset(s->accf, 0, (size_t)(p1 - p0) * per_panel * sizeof(float));
	/* chunks outermost: the tokens' chunk of x (M x 2 KiB) stays in L2 while
	 * every panel of the thread passes over it */
	for (uint32_t k0 = 0; k0 < K; k0 += DP_QACT_KC) {
		uint32_t kc = K - k0 < DP_QACT_KC ? K - k0 : DP_QACT_KC;
		for (uint32_t p = p0; p < p1; p++) {
			uint32_t r0 = p * DP_QACT_NR;
			uint32_t nr = w->rows - r0 < DP_QACT_NR ? w->rows - r0 : DP_QACT_NR;
			float *accf = s->accf + (size_t)(p - p0) * per_panel;
			for (uint32_t r = 0; r < DP_QACT_NR; r++) {
				uint32_t rr = r0 + (r < nr ? r : nr - 1); /* a short panel repeats its last row */
				decode(w, w->data + (size_t)rr * w->row_bytes, k0, kc,
				       s->t + (size_t)r * DP_QACT_KC);
				for (uint32_t b = 0; b < kc / kbw; b++)
					s->sw[b * DP_QACT_NR + r] = dp_qmat_scale(w, rr, (k0 + b * kbw) / kbw);
			}
			uint32_t m = 0;
			for (; m + 2 <= M; m += 2)
				tokens(j, s->t, k0, kc, s->sw, m, 2, accf);
			if (m < M)
				tokens(j, s->t, k0, kc, s->sw, m, 1, accf);
		}
	}
	for (uint32_t p = p0; p < p1; p++) {
		uint32_t r0 = p * DP_QACT_NR;
		uint32_t nr = w->rows - r0 < DP_QACT_NR ? w->rows - r0 : DP_QACT_NR;
		for (uint32_t m = 0; m < M; m++) {
			float *ym = j->y + (size_t)m * j->ldy + r0;
			const float *am = s->accf + (size_t)(p - p0) * per_panel + (size_t)m * DP_QACT_NR;
			for (uint32_t r = 0; r < nr; r++)
				ym[r] = j->acc ? ym[r] + am[r] : am[r];
		}
	}
}
