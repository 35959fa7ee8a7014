/* SPDX-License-Identifier: MIT */
/* qmm.c's kernels for AVX-512 F/BW/VL (this file is built with those flags;
 * qmm.c calls it only on a CPU that has them). */
#include <immintrin.h>
#include <string.h>

#include "gpu/cpu/qmm-internal.h"

#define QV __m512
#define QW 16
#define Q_LOAD(p) _mm512_loadu_ps(p)
#define Q_STORE(p, v) _mm512_storeu_ps(p, v)
#define Q_SET1(f) _mm512_set1_ps(f)
#define Q_ZERO() _mm512_setzero_ps()
#define Q_FMA(a, b, c) _mm512_fmadd_ps(a, b, c)
#define Q_MUL(a, b) _mm512_mul_ps(a, b)
#define Q_HSUM(v) _mm512_reduce_add_ps(v)
#define Q_ADD(a, b) _mm512_add_ps(a, b)
#define Q_RG(M) ((M) <= 4 ? 4 : 2)
#define Q_POST_OK(M) ((M) <= 2)
#define Q_MR 12
#define Q_NV 2
#define Q_NAME(x) avx512_##x
#define Q_ISA DP_GPU_ISA_AVX512
#define Q_TABLE dp_qmm_avx512

/* e4m3 s.eeee.mmm moved into f16 as s.0eeee.mmm0000000: the value / 2^8 */
static inline __m512 Q_DEC_E4M3(const uint8_t *p)
{
	__m256i h = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(const void *)p));
	__m256i sign = _mm256_slli_epi16(_mm256_and_si256(h, _mm256_set1_epi16(0x80)), 8);
	__m256i mag = _mm256_slli_epi16(_mm256_and_si256(h, _mm256_set1_epi16(0x7f)), 7);
	return _mm512_cvtph_ps(_mm256_or_si256(sign, mag));
}

/* 8 bytes = 16 codes, low nibble first: a 16-entry signed table (vpermps) */
static inline __m512 Q_DEC_E2M1(const uint8_t *p)
{
	__m128i b = _mm_loadl_epi64((const __m128i *)(const void *)p);
	__m128i lo = _mm_and_si128(b, _mm_set1_epi8(0x0f));
	__m128i hi = _mm_and_si128(_mm_srli_epi16(b, 4), _mm_set1_epi8(0x0f));
	__m512i idx = _mm512_cvtepu8_epi32(_mm_unpacklo_epi8(lo, hi));
	return _mm512_permutexvar_ps(idx, _mm512_loadu_ps(dp_qmm_e2m1_lut));
}

/* 16 bytes = 32 codes, low nibble first, through tbl (the 16-entry signed
 * table, scaled): vpermps reads only an index's low 4 bits, so neither
 * nibble needs masking */
#define Q_E2M1_LUT() _mm512_loadu_ps(dp_qmm_e2m1_lut)
#define Q_DEC_E2M1_2(p, tbl, lo, hi)                                                         \
	do {                                                                                 \
		__m128i b_ = _mm_loadu_si128((const __m128i *)(const void *)(p));             \
		__m128i h_ = _mm_srli_epi16(b_, 4);                                           \
		(lo) = _mm512_permutexvar_ps(_mm512_cvtepu8_epi32(_mm_unpacklo_epi8(b_, h_)), (tbl)); \
		(hi) = _mm512_permutexvar_ps(_mm512_cvtepu8_epi32(_mm_unpackhi_epi8(b_, h_)), (tbl)); \
	} while (0)

/* gemv_eo's decodes: 2 x 16 codes, the even ones and the odd ones.
 * e4m3, 32 bytes as 16 words (odd code high): each byte shifted into the
 * high byte of its word, then s.eeee.mmm -> f16 s.0eeee.mmm0000000 by an
 * arithmetic shift of one (the sign lands in bits 15 and 14) and a mask. */
#define Q_DEC2_E4M3(p, ev, od)                                                              \
	do {                                                                                \
		__m256i w_ = _mm256_loadu_si256((const __m256i *)(const void *)(p));         \
		__m256i m_ = _mm256_set1_epi16((short)0xbf80);                               \
		(ev) = _mm512_cvtph_ps(_mm256_and_si256(_mm256_srai_epi16(_mm256_slli_epi16(w_, 8), 1), m_)); \
		(od) = _mm512_cvtph_ps(_mm256_and_si256(_mm256_srai_epi16(w_, 1), m_));      \
	} while (0)
/* e2m1, 16 bytes: each byte widened to a lane; the table by its low nibble,
 * then by its high one */
#define Q_DEC2_E2M1(p, tbl, ev, od)                                                         \
	do {                                                                                \
		__m512i i_ = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(const void *)(p))); \
		(ev) = _mm512_permutexvar_ps(i_, (tbl));                                     \
		(od) = _mm512_permutexvar_ps(_mm512_srli_epi32(i_, 4), (tbl));               \
	} while (0)

/* 16 e8m0 scales -> their values (2^(e-127); e = 0: 2^-127, a subnormal) */
#define Q_E8M0_16(p, out)                                                                   \
	do {                                                                                \
		__m512i e_ = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(const void *)(p))); \
		__m512i v_ = _mm512_mask_mov_epi32(_mm512_slli_epi32(e_, 23),                 \
						   _mm512_testn_epi32_mask(e_, e_),           \
						   _mm512_set1_epi32(0x00400000));            \
		_mm512_storeu_ps((out), _mm512_castsi512_ps(v_));                             \
	} while (0)

static inline __m512 Q_DEC_BF16(const uint8_t *p)
{
	__m512i u = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(const void *)p));
	return _mm512_castsi512_ps(_mm512_slli_epi32(u, 16));
}

#include "gpu/cpu/qmm-simd.h"
