/* SPDX-License-Identifier: MIT */
/* qmm.c's kernels for AVX2 + FMA + F16C (this file is built with those
 * flags; qmm.c calls it only on a CPU that has them). */
#include <immintrin.h>
#include <string.h>

#include "gpu/cpu/qmm-internal.h"

#define QV __m256
#define QW 8
#define Q_LOAD(p) _mm256_loadu_ps(p)
#define Q_STORE(p, v) _mm256_storeu_ps(p, v)
#define Q_SET1(f) _mm256_set1_ps(f)
#define Q_ZERO() _mm256_setzero_ps()
#define Q_FMA(a, b, c) _mm256_fmadd_ps(a, b, c)
#define Q_MUL(a, b) _mm256_mul_ps(a, b)
#define Q_ADD(a, b) _mm256_add_ps(a, b)
#define Q_RG(M) ((M) == 1 ? 4 : (M) <= 4 ? 2 : 1)
#define Q_POST_OK(M) ((M) <= 2)
#define Q_MR 6
#define Q_NV 2
#define Q_NAME(x) avx2_##x
#define Q_ISA DP_GPU_ISA_AVX2
#define Q_TABLE dp_qmm_avx2

static inline float Q_HSUM(__m256 v)
{
	__m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
	s = _mm_add_ps(s, _mm_movehl_ps(s, s));
	s = _mm_add_ss(s, _mm_movehdup_ps(s));
	return _mm_cvtss_f32(s);
}

/* e4m3 s.eeee.mmm moved into f16 as s.0eeee.mmm0000000: the value / 2^8 */
static inline __m256 Q_DEC_E4M3(const uint8_t *p)
{
	__m128i h = _mm_cvtepu8_epi16(_mm_loadl_epi64((const __m128i *)(const void *)p));
	__m128i sign = _mm_slli_epi16(_mm_and_si128(h, _mm_set1_epi16(0x80)), 8);
	__m128i mag = _mm_slli_epi16(_mm_and_si128(h, _mm_set1_epi16(0x7f)), 7);
	return _mm256_cvtph_ps(_mm_or_si128(sign, mag));
}

/* 4 bytes = 8 codes, low nibble first: magnitude by table, sign bit 3 -> 31 */
static inline __m256 Q_DEC_E2M1(const uint8_t *p)
{
	int v;
	memcpy(&v, p, 4);
	__m128i b = _mm_cvtsi32_si128(v);
	__m128i lo = _mm_and_si128(b, _mm_set1_epi8(0x0f));
	__m128i hi = _mm_and_si128(_mm_srli_epi16(b, 4), _mm_set1_epi8(0x0f));
	__m256i idx = _mm256_cvtepu8_epi32(_mm_unpacklo_epi8(lo, hi));
	__m256 mag = _mm256_permutevar8x32_ps(
	    _mm256_setr_ps(0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f), idx);
	__m256i sign = _mm256_slli_epi32(_mm256_and_si256(idx, _mm256_set1_epi32(8)), 28);
	return _mm256_xor_ps(mag, _mm256_castsi256_ps(sign));
}

/* 8 bytes = 16 codes, low nibble first: magnitude through tbl (the 8
 * magnitudes, scaled; vpermps reads an index's low 3 bits), sign bit 3 -> 31
 * (exact: a negation) */
#define Q_E2M1_LUT() _mm256_setr_ps(0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f)
static inline __m256 avx2_e2m1_signed(__m128i codes, __m256 tbl)
{
	__m256i idx = _mm256_cvtepu8_epi32(codes);
	__m256i sign = _mm256_slli_epi32(_mm256_and_si256(idx, _mm256_set1_epi32(8)), 28);
	return _mm256_xor_ps(_mm256_permutevar8x32_ps(tbl, idx), _mm256_castsi256_ps(sign));
}
#define Q_DEC_E2M1_2(p, tbl, lo, hi)                                                     \
	do {                                                                             \
		__m128i b_ = _mm_loadl_epi64((const __m128i *)(const void *)(p));         \
		__m128i c_ = _mm_unpacklo_epi8(b_, _mm_srli_epi16(b_, 4));                \
		(lo) = avx2_e2m1_signed(c_, (tbl));                                       \
		(hi) = avx2_e2m1_signed(_mm_srli_si128(c_, 8), (tbl));                    \
	} while (0)

/* gemv_eo's decodes: 2 x 8 codes, the even ones and the odd ones (as in
 * qmm-avx512.c) */
#define Q_DEC2_E4M3(p, ev, od)                                                              \
	do {                                                                                \
		__m128i w_ = _mm_loadu_si128((const __m128i *)(const void *)(p));            \
		__m128i m_ = _mm_set1_epi16((short)0xbf80);                                  \
		(ev) = _mm256_cvtph_ps(_mm_and_si128(_mm_srai_epi16(_mm_slli_epi16(w_, 8), 1), m_)); \
		(od) = _mm256_cvtph_ps(_mm_and_si128(_mm_srai_epi16(w_, 1), m_));             \
	} while (0)
#define Q_DEC2_E2M1(p, tbl, ev, od)                                                         \
	do {                                                                                \
		__m128i b_ = _mm_loadl_epi64((const __m128i *)(const void *)(p));             \
		(ev) = avx2_e2m1_signed(b_, (tbl));                                           \
		(od) = avx2_e2m1_signed(_mm_srli_epi16(b_, 4), (tbl));                       \
	} while (0)

/* 16 e8m0 scales -> their values (2^(e-127); e = 0: 2^-127, a subnormal) */
static inline void avx2_e8m0_8(const uint8_t *p, float *out)
{
	__m256i e = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(const void *)p));
	__m256i z = _mm256_cmpeq_epi32(e, _mm256_setzero_si256());
	__m256i v = _mm256_blendv_epi8(_mm256_slli_epi32(e, 23), _mm256_set1_epi32(0x00400000), z);
	_mm256_storeu_ps(out, _mm256_castsi256_ps(v));
}
#define Q_E8M0_16(p, out)                  \
	do {                               \
		avx2_e8m0_8((p), (out));       \
		avx2_e8m0_8((p) + 8, (out) + 8); \
	} while (0)

static inline __m256 Q_DEC_BF16(const uint8_t *p)
{
	__m256i u = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(const void *)p));
	return _mm256_castsi256_ps(_mm256_slli_epi32(u, 16));
}

#include "gpu/cpu/qmm-simd.h"
