/* SPDX-License-Identifier: MIT */
/*
 * DeepSeek's reference numerics on the cpu backend (V4-REAL.md section 4,
 * confirmed against DeepSeek-V4's inference/kernel.py and model.py):
 *
 *   - act_quant: before a product with an FP8/FP4 weight the activation is
 *     rounded through e4m3 per 128 values along K: amax floored at 1e-4,
 *     scale = the power of two at or above amax * fp32(1/448) (kernel.py's
 *     fast_round_scale: the fp32 product's exponent, plus one when its
 *     mantissa is not zero), q = e4m3(clamp(x / scale, +-448)), rounded to
 *     nearest, ties to even (the hardware cast).
 *   - fp8_gemm / fp4_gemm: each K block of the weight (128 for e4m3 128x128
 *     blocks, 32 for e2m1; the activation's scale block stays 128) is summed
 *     on its own and added to an fp32 accumulator times the two scales —
 *     fp8: partial * (sa * sw), fp4: partial * sa * sw, as kernel.py writes
 *     them. The GPU sums a block's 128 products in its tensor cores' order;
 *     here the block sum is EXACT (every e4m3 x e4m3 product is a multiple
 *     of 2^-18 below 2^18, so 128 of them sum exactly in a double whatever
 *     the order; e4m3 x e2m1 likewise) and rounded to fp32 once. The result
 *     is therefore deterministic: any implementation that sums the blocks in
 *     K order gets these bits (scripts/quant/make_reference.py does, so the
 *     golden products match bit for bit). kernel.py writes the result as
 *     bf16; we keep fp32 (we do not reproduce the reference's bf16
 *     activations anywhere).
 *   - KV rounding: the non-RoPE dims of window and compressed KV through
 *     e4m3 per 64 values (act_quant(kv[..., :-rd], 64, inplace=True)).
 *   - indexer q and index keys: rotate_activation (Walsh-Hadamard, scale
 *     d^-1/2) then fp4_act_quant per 32 (amax floored at 6 * 2^-126, scale
 *     2^ceil(log2(amax * fp32(1/6))), e2m1 round to nearest even).
 *
 * Each activation row is quantized once (the pool's threads split the rows),
 * then the product runs on one of: portable C; the block sums with AVX2+FMA
 * (the avx2 path); AVX-512 panels (qmm-act-avx512.c: weights decoded once per
 * panel into doubles, every token over them, block sums reduced eight at a
 * time). All give the same bits, the sums being exact; tests hold every path
 * to the portable one.
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "base/dtype.h"
#include "gpu/cpu/qmm-internal.h"

/* ---- scalar rounding ------------------------------------------------------------- */

static inline uint32_t bits_of(float f)
{
	uint32_t u;
	memcpy(&u, &f, sizeof(u));
	return u;
}

static inline float float_of(uint32_t u)
{
	float f;
	memcpy(&f, &u, sizeof(f));
	return f;
}

/* kernel.py's fast_round_scale: 2^(exponent of s, + 1 unless s is a power of
 * two), read from s's bits (s > 0, finite). A subnormal s counts exponent
 * -127 (+1): the scale is then 2^-126, never 0 for the amax floors used. */
static inline float round_scale(float s)
{
	uint32_t u = bits_of(s);
	int32_t e = (int32_t)((u >> 23) & 0xff) - 127 + ((u & 0x7fffff) != 0);
	return float_of((uint32_t)(e + 127) << 23);
}

/* Round-to-nearest-even of a finite |a| (its bits u) to `mb` mantissa bits,
 * exponent bias `bias`, as a code without sign; a below the smallest normal
 * 2^(1-bias) rounds on the subnormal grid 2^(1-bias-mb). */
static inline uint32_t rne_code(float a, uint32_t mb, int32_t bias)
{
	uint32_t u = bits_of(a);
	int32_t e = (int32_t)(u >> 23) - 127;
	if (e < 1 - bias) { /* subnormal: a * 2^(bias-1+mb) is exact, split it */
		float t = a * float_of((uint32_t)(127 + bias - 1 + (int32_t)mb) << 23); /* exact */
		uint32_t m = (uint32_t)t;
		float f = t - (float)m;
		if (f > 0.5f || (f == 0.5f && (m & 1)))
			m++;
		return m; /* m == 2^mb is the smallest normal's code: right */
	}
	uint32_t drop = 23 - mb, mant = u & 0x7fffff;
	uint32_t keep = mant >> drop, rest = mant & ((1u << drop) - 1), half = 1u << (drop - 1);
	if (rest > half || (rest == half && (keep & 1)))
		keep++;
	return ((uint32_t)(e + bias) << mb) + keep; /* a carry moves into the exponent */
}

uint8_t dp_gpu_e4m3_of(float x)
{
	uint8_t sign = (bits_of(x) >> 24) & 0x80;
	float a = fminf(fabsf(x), 448.0f);
	return (uint8_t)(sign | rne_code(a, 3, 7));
}

uint8_t dp_gpu_e2m1_of(float x)
{
	uint8_t sign = (bits_of(x) >> 28) & 0x8;
	float a = fminf(fabsf(x), 6.0f);
	return (uint8_t)(sign | rne_code(a, 1, 1));
}

/* One block: the scale (a power of two) and the codes. */
static float quant_block(const float *x, uint32_t n, bool fp4, uint8_t *codes)
{
	float amax = 0.0f;
	for (uint32_t i = 0; i < n; i++)
		amax = fmaxf(amax, fabsf(x[i]));
	float s = fp4 ? round_scale(fmaxf(amax, 6.0f * 0x1p-126f) * (float)(1.0 / 6.0))
		      : round_scale(fmaxf(amax, 1e-4f) * (float)(1.0 / 448.0));
	/* x / s as x * (1 / s): s is a power of two whose inverse is a normal
	 * fp32 (s in [2^-126, 2^126] for both floors), so both round the same
	 * exact value: the same bits, without a division per value */
	float inv = 1.0f / s;
	for (uint32_t i = 0; i < n; i++)
		codes[i] = fp4 ? dp_gpu_e2m1_of(x[i] * inv) : dp_gpu_e4m3_of(x[i] * inv);
	return s;
}

static int quant(const float *x, size_t n, uint32_t block, uint8_t *codes, uint8_t *scales,
		 bool fp4)
{
	if ((n && (!x || !codes || !scales)) || !block)
		return -EINVAL;
	for (size_t b = 0, i = 0; i < n; b++, i += block) {
		uint32_t len = n - i < block ? (uint32_t)(n - i) : block;
		float s = quant_block(x + i, len, fp4, codes + i);
		scales[b] = (uint8_t)(bits_of(s) >> 23);
	}
	return 0;
}

int dp_gpu_act_quant(const float *x, size_t n, uint32_t block, uint8_t *codes, uint8_t *scales)
{
	return quant(x, n, block, codes, scales, false);
}

int dp_gpu_fp4_quant(const float *x, size_t n, uint32_t block, uint8_t *codes, uint8_t *scales)
{
	return quant(x, n, block, codes, scales, true);
}

int dp_gpu_hadamard(float *x, uint32_t n)
{
	if (!x || !n || (n & (n - 1)))
		return -EINVAL;
	double *t = malloc(n * sizeof(double));
	if (!t)
		return -ENOMEM;
	for (uint32_t i = 0; i < n; i++)
		t[i] = x[i];
	/* butterflies: H_2n = [[H, H], [H, -H]], Sylvester order; every partial
	 * sum of n fp32 values is exact in a double up to n = 2^29 */
	for (uint32_t h = 1; h < n; h *= 2)
		for (uint32_t i = 0; i < n; i += 2 * h)
			for (uint32_t j = i; j < i + h; j++) {
				double a = t[j], b = t[j + h];
				t[j] = a + b;
				t[j + h] = a - b;
			}
	double sc = 1.0 / sqrt((double)n);
	for (uint32_t i = 0; i < n; i++)
		x[i] = (float)(t[i] * sc);
	free(t);
	return 0;
}

/* In place: each block of `block` values replaced by its rounded value. */
static void round_row(float *x, uint32_t n, uint32_t block, bool fp4)
{
	uint8_t codes[DP_GPU_ACT_BLOCK];
	for (uint32_t i = 0; i < n; i += block) {
		uint32_t len = n - i < block ? n - i : block;
		float s = quant_block(x + i, len, fp4, codes);
		for (uint32_t j = 0; j < len; j++)
			x[i + j] = (fp4 ? dp_e2m1_to_f32(codes[j]) : dp_e4m3_to_f32(codes[j])) * s;
	}
}

int dp_qact_round(float *x, uint32_t rows, uint32_t ld, uint32_t cols, enum dp_gpu_round how)
{
	if (!x || (rows > 1 && ld < cols) || (unsigned)how >= DP_GPU_ROUND_MAX)
		return -EINVAL;
	if (how == DP_GPU_ROUND_HADAMARD_E2M1 && (!cols || (cols & (cols - 1))))
		return -EINVAL;
	for (uint32_t r = 0; r < rows; r++) {
		float *row = x + (size_t)r * ld;
		if (how == DP_GPU_ROUND_E4M3_KV) {
			round_row(row, cols, DP_GPU_KV_BLOCK, false);
		} else {
			int ret = dp_gpu_hadamard(row, cols);
			if (ret < 0)
				return ret;
			round_row(row, cols, DP_GPU_E2M1_BLOCK, true);
		}
	}
	return 0;
}

/* ---- the act-quantized product ------------------------------------------------------ */

struct qact_job {
	struct dp_qact_args a;
	const float *x; /* the activation as given */
	size_t ldx;
	bool vector;	/* AVX-512 panels (dp_qact_avx512_panels), else qact_rows */
	bool failed;	/* a worker could not get its buffers */
	double (*dot)(const double *x, const double *w, uint32_t n); /* a block's exact sum */
};

/* The weight row's unscaled values as doubles (exact). */
static void decode_row(const struct dp_qmat *w, const uint8_t *row, double *wv)
{
	uint32_t K = w->cols;
	if (w->dtype == DP_DTYPE_E4M3) {
		for (uint32_t k = 0; k < K; k++)
			wv[k] = dp_qmm_e4m3_lut[row[k]];
	} else { /* E2M1: low nibble first */
		for (uint32_t k = 0; k + 1 < K; k += 2) {
			wv[k] = dp_qmm_e2m1_lut[row[k / 2] & 15];
			wv[k + 1] = dp_qmm_e2m1_lut[row[k / 2] >> 4];
		}
		if (K & 1)
			wv[K - 1] = dp_qmm_e2m1_lut[row[K / 2] & 15];
	}
}

/* sum_k x[k] w[k] over n values: exact whatever the order (see the top), so
 * any grouping of the sums gives these bits. */
static double block_dot_portable(const double *x, const double *w, uint32_t n)
{
	double p0 = 0.0, p1 = 0.0, p2 = 0.0, p3 = 0.0;
	uint32_t k = 0;
	for (; k + 4 <= n; k += 4) {
		p0 += x[k] * w[k];
		p1 += x[k + 1] * w[k + 1];
		p2 += x[k + 2] * w[k + 2];
		p3 += x[k + 3] * w[k + 3];
	}
	for (; k < n; k++)
		p0 += x[k] * w[k];
	return (p0 + p1) + (p2 + p3);
}

#if defined(__x86_64__)
#include <immintrin.h>
/* The same with AVX2 + FMA (chosen at run time): a fused multiply-add of two
 * exact products into an exact sum rounds nothing either. */
__attribute__((target("avx2,fma"))) static double block_dot_avx2(const double *x, const double *w,
								  uint32_t n)
{
	__m256d a0 = _mm256_setzero_pd(), a1 = _mm256_setzero_pd();
	uint32_t k = 0;
	for (; k + 8 <= n; k += 8) {
		a0 = _mm256_fmadd_pd(_mm256_loadu_pd(x + k), _mm256_loadu_pd(w + k), a0);
		a1 = _mm256_fmadd_pd(_mm256_loadu_pd(x + k + 4), _mm256_loadu_pd(w + k + 4), a1);
	}
	__m256d a = _mm256_add_pd(a0, a1);
	__m128d h = _mm_add_pd(_mm256_castpd256_pd128(a), _mm256_extractf128_pd(a, 1));
	double p = _mm_cvtsd_f64(_mm_add_sd(h, _mm_unpackhi_pd(h, h)));
	for (; k < n; k++)
		p += x[k] * w[k];
	return p;
}
#endif

static void qact_rows(const struct qact_job *j, uint32_t r0, uint32_t r1, double *wv, float *sw)
{
	const struct dp_qmat *w = j->a.w;
	uint32_t K = w->cols, kbw = w->kblock, nkb = (K + kbw - 1) / kbw;
	bool fp4 = w->dtype == DP_DTYPE_E2M1;

	for (uint32_t r = r0; r < r1; r++) {
		decode_row(w, w->data + (size_t)r * w->row_bytes, wv);
		for (uint32_t kb = 0; kb < nkb; kb++)
			sw[kb] = dp_qmat_scale(w, r, kb);
		for (uint32_t m = 0; m < j->a.M; m++) {
			const double *xm = j->a.xa + (size_t)m * K;
			const float *sam = j->a.sa + (size_t)m * j->a.nab;
			float a = 0.0f;
			for (uint32_t k0 = 0, kb = 0; k0 < K; k0 += kbw, kb++) {
				uint32_t len = K - k0 < kbw ? K - k0 : kbw;
				float pf = (float)j->dot(xm + k0, wv + k0, len);
				float sa = sam[k0 / DP_GPU_ACT_BLOCK];
				a += fp4 ? pf * sa * sw[kb] : pf * (sa * sw[kb]);
			}
			float *ym = j->a.y + (size_t)m * j->a.ldy + r;
			*ym = j->a.acc ? *ym + a : a;
		}
	}
}

/* The activation rows [m0, m1) quantized: scales and e4m3 values. */
static void qact_quant_run(void *arg, int tid, int n)
{
	struct qact_job *j = arg;
	uint32_t M = j->a.M, K = j->a.w->cols, nab = j->a.nab;
	uint32_t m0 = (uint32_t)((uint64_t)M * tid / n), m1 = (uint32_t)((uint64_t)M * (tid + 1) / n);
	uint8_t codes[DP_GPU_ACT_BLOCK];
	double *xa = (double *)j->a.xa;
	float *sa = (float *)j->a.sa;
	for (uint32_t m = m0; m < m1; m++)
		for (uint32_t b = 0; b < nab; b++) {
			uint32_t k0 = b * DP_GPU_ACT_BLOCK;
			uint32_t len = K - k0 < DP_GPU_ACT_BLOCK ? K - k0 : DP_GPU_ACT_BLOCK;
			sa[(size_t)m * nab + b] = quant_block(j->x + m * j->ldx + k0, len, false, codes);
			for (uint32_t k = 0; k < len; k++)
				xa[(size_t)m * K + k0 + k] = dp_e4m3_to_f32(codes[k]);
		}
}

#if defined(__x86_64__)
#define DP_QACT_PANEL_BY_PANEL 16
/* The vector path: whole panels per thread. */
static void qact_panels_run(struct qact_job *j, int tid, int n)
{
	uint32_t np = (j->a.w->rows + DP_QACT_NR - 1) / DP_QACT_NR;
	uint32_t p0 = (uint32_t)((uint64_t)np * tid / n), p1 = (uint32_t)((uint64_t)np * (tid + 1) / n);
	if (p0 >= p1)
		return;
	struct dp_qact_scratch s = {
		.t = malloc((size_t)DP_QACT_NR * DP_QACT_KC * sizeof(double)),
		.sw = malloc((size_t)(DP_QACT_KC / DP_GPU_E2M1_BLOCK) * DP_QACT_NR * sizeof(float)),
		.accf = malloc((size_t)(p1 - p0) * j->a.M * DP_QACT_NR * sizeof(float)),
	};
	/* few tokens: panel after panel (each weight row read straight through);
	 * more: all the thread's panels per K chunk (the tokens' chunk stays in
	 * L2), see dp_qact_avx512_panels */
	if (s.t && s.sw && s.accf && j->a.M <= DP_QACT_PANEL_BY_PANEL)
		for (uint32_t p = p0; p < p1; p++)
			dp_qact_avx512_panels(&j->a, p, p + 1, &s);
	else if (s.t && s.sw && s.accf)
		dp_qact_avx512_panels(&j->a, p0, p1, &s);
	else
		__atomic_store_n(&j->failed, true, __ATOMIC_RELAXED);
	free(s.t);
	free(s.sw);
	free(s.accf);
}
#endif

static void qact_job_run(void *arg, int tid, int n)
{
	struct qact_job *j = arg;
#if defined(__x86_64__)
	if (j->vector) {
		qact_panels_run(j, tid, n);
		return;
	}
#endif
	uint32_t rows = j->a.w->rows;
	uint32_t r0 = (uint32_t)((uint64_t)rows * tid / n), r1 = (uint32_t)((uint64_t)rows * (tid + 1) / n);
	if (r0 >= r1)
		return;
	uint32_t K = j->a.w->cols, nkb = (K + j->a.w->kblock - 1) / j->a.w->kblock;
	double *wv = malloc(K * sizeof(double));
	float *sw = malloc(nkb * sizeof(float));
	if (wv && sw)
		qact_rows(j, r0, r1, wv, sw);
	else
		__atomic_store_n(&j->failed, true, __ATOMIC_RELAXED);
	free(wv);
	free(sw);
}

/* Whether the vector path takes w: full blocks of the widths it knows. */
static bool qact_vector_fits(const struct dp_qmat *w)
{
	if (w->dtype == DP_DTYPE_E4M3)
		return w->kblock == DP_GPU_E4M3_BLOCK && w->cols % DP_GPU_E4M3_BLOCK == 0;
	return w->kblock == DP_GPU_E2M1_BLOCK && w->cols % DP_GPU_E2M1_BLOCK == 0;
}

int dp_qact_run(struct dp_cpu_pool *pool, enum dp_gpu_isa isa, const struct dp_qmat *w,
		const float *x, size_t ldx, uint32_t M, float *y, size_t ldy, bool acc)
{
	if (w->dtype != DP_DTYPE_E4M3 && w->dtype != DP_DTYPE_E2M1)
		return -EINVAL;
	if (M == 0)
		return 0;
	uint32_t K = w->cols, nab = (K + DP_GPU_ACT_BLOCK - 1) / DP_GPU_ACT_BLOCK;
	double *xa = malloc((size_t)M * K * sizeof(double));
	float *sa = malloc((size_t)M * nab * sizeof(float));
	if (!xa || !sa) {
		free(xa);
		free(sa);
		return -ENOMEM;
	}
	struct qact_job j = { .a = { .w = w, .xa = xa, .sa = sa, .nab = nab, .M = M, .y = y,
				     .ldy = ldy, .acc = acc },
			      .x = x, .ldx = ldx, .dot = block_dot_portable };
	/* each activation row is quantized once, by one thread, before any product */
	dp_cpu_pool_run(pool, qact_quant_run, &j);
#if defined(__x86_64__)
	/* the backend's kernel path (DP_CPU_ISA=portable keeps the portable sum) */
	if (isa == DP_GPU_ISA_AVX2 || isa == DP_GPU_ISA_AVX512)
		j.dot = block_dot_avx2;
	j.vector = isa == DP_GPU_ISA_AVX512 && qact_vector_fits(w);
#endif
	dp_cpu_pool_run(pool, qact_job_run, &j);
	free(xa);
	free(sa);
	return j.failed ? -ENOMEM : 0;
}
