/* SPDX-License-Identifier: MIT */
/*
 * gpu/cpu/qmm-internal.h — the cpu backend's kernels for weights kept as the
 * checkpoint stores them (bf16, e4m3 with 128x128 block scales, e2m1 with
 * per-32 scales): dequantize-and-multiply fused, fp32 accumulation, one
 * kernel table per instruction set (qmm.c portable C, qmm-avx2.c,
 * qmm-avx512.c), and the worker pool that runs them over output rows.
 * Internal to gpu/ and its tests.
 */
#ifndef DP_GPU_CPU_QMM_INTERNAL_H
#define DP_GPU_CPU_QMM_INTERNAL_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "gpu/gpu.h"

/* Up to this many tokens a product is a GEMV (each weight decoded once and
 * used for every token from registers); above, a blocked GEMM. */
#define DP_QMM_GEMV_MAX 8
/* GEMM blocking: a panel of DP_QMM_NR weight rows by DP_QMM_KC columns is
 * dequantized into a per-thread fp32 tile stored transposed, t[KC][NR]
 * (32 KiB: L1), then multiplied with every token by an outer-product
 * micro-kernel; KC is a multiple of both block widths. The tokens' KC-column
 * slice (M x 1 KiB) is what stays in L2. */
#define DP_QMM_NR 32
#define DP_QMM_KC 256

/* One matrix of a weight, as the kernels read it. */
struct dp_qmat {
	const uint8_t *data; /* row r at data + r * row_bytes */
	const void *scale;   /* this matrix's scales (E4M3/E2M1), else NULL */
	enum dp_dtype dtype, scale_dtype;
	uint32_t rows, cols;
	size_t row_bytes;
	uint32_t scale_ld; /* scales per scale row */
	uint32_t kblock;   /* columns per scale along K (cols for BF16/F32) */
};

/* A view of matrix `index` (a stored matrix) of w; -EINVAL if w's dtype
 * has no kernels. */
int dp_qmat_of(const struct dp_gpu_weight *w, uint32_t index, struct dp_qmat *ret);

/* The scale of row r, K block kb, as fp32 (exact: a power of two or the
 * f32 scale as stored). */
static inline float dp_qmat_scale(const struct dp_qmat *w, uint32_t r, uint32_t kb)
{
	size_t i;
	if (w->dtype == DP_DTYPE_E4M3)
		i = (size_t)(r / DP_GPU_E4M3_BLOCK) * w->scale_ld + kb;
	else if (w->dtype == DP_DTYPE_E2M1)
		i = (size_t)r * w->scale_ld + kb;
	else
		return 1.0f;
	if (w->scale_dtype == DP_DTYPE_F32)
		return ((const float *)w->scale)[i];
	uint8_t b = ((const uint8_t *)w->scale)[i];
	uint32_t u = b == 0 ? 0x00400000u : (uint32_t)b << 23; /* 255 refused at upload */
	float f;
	__builtin_memcpy(&f, &u, sizeof(f));
	return f;
}

/* The unscaled value of code k of row r (portable; tails of the vector
 * paths). e4m3 and e2m1 codes widen through exact tables. */
extern float dp_qmm_e4m3_lut[256]; /* set before main, then read-only */
extern const float dp_qmm_e2m1_lut[16];
static inline float dp_qmat_code(const struct dp_qmat *w, const uint8_t *row, uint32_t k)
{
	switch (w->dtype) {
	case DP_DTYPE_E4M3:
		return dp_qmm_e4m3_lut[row[k]];
	case DP_DTYPE_E2M1:
		return dp_qmm_e2m1_lut[(row[k / 2] >> (4 * (k & 1))) & 15];
	case DP_DTYPE_BF16: {
		uint16_t h;
		__builtin_memcpy(&h, row + 2 * (size_t)k, 2);
		uint32_t u = (uint32_t)h << 16;
		float f;
		__builtin_memcpy(&f, &u, sizeof(f));
		return f;
	}
	default: {
		float f;
		__builtin_memcpy(&f, row + 4 * (size_t)k, 4);
		return f;
	}
	}
}

/* One instruction set's kernels. All compute y[m][r] = sum_k x[m][k] W[r][k]
 * with W dequantized exactly (code x scale) and fp32 products and sums. */
struct dp_qmm_isa {
	enum dp_gpu_isa isa;
	/* rows [r0, r1), M <= DP_QMM_GEMV_MAX tokens; y += when acc */
	void (*gemv)(const struct dp_qmat *w, const float *x, size_t ldx, uint32_t M, float *y,
		     size_t ldy, uint32_t r0, uint32_t r1, bool acc);
	/* t[nr][kc] = W[r0 .. r0+nr)[k0 .. k0+kc), k0 a multiple of w->kblock
	 * (or of DP_QMM_KC); qmm.c transposes it for tile */
	void (*dequant)(const struct dp_qmat *w, uint32_t r0, uint32_t nr, uint32_t k0, uint32_t kc,
			float *t);
	/* y[m][r] += sum_{k < kc} x[m][k] t[k][r], m < M, r < nr */
	void (*tile)(const float *x, size_t ldx, uint32_t M, const float *t, uint32_t nr,
		     uint32_t kc, float *y, size_t ldy);
	/* gemv for e4m3 and e2m1 with x in even/odd order: within each run of
	 * 2 * eo_run columns, the even columns first, then the odd ones
	 * (dp_qmm_eo_order); columns from the last whole scale block on stay
	 * in place. NULL where the set has none (portable). */
	void (*gemv_eo)(const struct dp_qmat *w, const float *x, size_t ldx, uint32_t M, float *y,
			size_t ldy, uint32_t r0, uint32_t r1, bool acc);
	uint32_t eo_run;
};

/* x[M][cols] (rows ldx apart) -> xs[M][cols] (rows ldxs apart) in the
 * even/odd order of gemv_eo with runs of 2 * run columns, for w's dtype. */
void dp_qmm_eo_order(const struct dp_qmat *w, uint32_t run, const float *x, size_t ldx, uint32_t M,
		     float *xs, size_t ldxs);

extern const struct dp_qmm_isa dp_qmm_portable;
#if defined(__x86_64__)
extern const struct dp_qmm_isa dp_qmm_avx2;
extern const struct dp_qmm_isa dp_qmm_avx512;
#endif

/* Whether this CPU runs `isa` (AUTO: always). */
bool dp_qmm_isa_supported(enum dp_gpu_isa isa);
/* The kernel table of a supported isa (AUTO: the best supported). */
const struct dp_qmm_isa *dp_qmm_isa_get(enum dp_gpu_isa isa);

/* ---- the worker pool --------------------------------------------------------- */

/* n threads in all: the caller plus n - 1 workers that sleep between jobs.
 * Used by one thread at a time (the backend's compute thread). */
struct dp_cpu_pool {
	int n;
	pthread_t *th;
	pthread_mutex_t mu;
	pthread_cond_t go, done;
	uint64_t gen;  /* bumped per job (under mu) */
	int pending;   /* workers still running the job (written under mu, polled) */
	int sleepers;  /* workers asleep on go (under mu) */
	bool waiting;  /* the caller sleeps on done (under mu) */
	bool stop;
	void (*fn)(void *arg, int tid, int n);
	void *arg;
	pid_t owner; /* the process whose threads they are (a fork's child has none) */
};

int dp_cpu_pool_init(struct dp_cpu_pool *p, int n);
void dp_cpu_pool_fini(struct dp_cpu_pool *p);
/* fn(arg, tid, n) on every thread, tid 0 the caller; returns when all are done. */
void dp_cpu_pool_run(struct dp_cpu_pool *p, void (*fn)(void *arg, int tid, int n), void *arg);

/* y[M][rows] (+)= x[M][cols] . W^T with isa's kernels on the pool's threads;
 * tiles: the pool's n x DP_QMM_NR x DP_QMM_KC floats. */
void dp_qmm_run(const struct dp_qmm_isa *k, struct dp_cpu_pool *pool, float *tiles,
		const struct dp_qmat *w, const float *x, size_t ldx, uint32_t M, float *y, size_t ldy,
		bool acc);

/* ---- DeepSeek's reference numerics (qmm-act.c) ---------------------------------- */

/* y[M][rows] (+)= the act-quantized product of x[M][cols] and W (an E4M3 or
 * E2M1 matrix; struct dp_gpu_weight.act_quant says what it computes) on the
 * pool's threads, block sums vectorized on an isa that has AVX2 (same bits).
 * 0, -EINVAL (another dtype) or -ENOMEM. */
int dp_qact_run(struct dp_cpu_pool *pool, enum dp_gpu_isa isa, const struct dp_qmat *w,
		const float *x, size_t ldx, uint32_t M, float *y, size_t ldy, bool acc);
/* The product's vector path: panels of DP_QACT_NR weight rows decoded
 * DP_QACT_KC columns at a time into doubles (16 KiB per thread). Taken for an
 * E4M3 matrix with 128-wide blocks or an E2M1 one with 32-wide blocks whose
 * cols is a multiple of the block; other shapes take the portable path. */
#define DP_QACT_NR 8
#define DP_QACT_KC 256

/* One product, as the threads share it. */
struct dp_qact_args {
	const struct dp_qmat *w;
	const double *xa; /* [M][cols] the activation's e4m3 values, unscaled (exact) */
	const float *sa;  /* [M][nab] their scales */
	uint32_t nab;	  /* activation blocks per row */
	uint32_t M;
	float *y;
	size_t ldy;
	bool acc;
};

/* A thread's buffers for the vector path. */
struct dp_qact_scratch {
	double *t;   /* [DP_QACT_NR][DP_QACT_KC] decoded weights */
	float *sw;   /* [DP_QACT_KC / 32][DP_QACT_NR] their scales */
	float *accf; /* [panels][M][DP_QACT_NR] the fp32 accumulators */
};

#if defined(__x86_64__)
/* Panels [p0, p1) (rows p0 * DP_QACT_NR .. , fewer at the end) of the product,
 * AVX-512 F/BW/VL (qmm-act-avx512.c): y's bits are the portable path's. */
void dp_qact_avx512_panels(const struct dp_qact_args *j, uint32_t p0, uint32_t p1,
			   struct dp_qact_scratch *s);
#endif

/* The round op (gpu.h, dp_gpu_ops.round) on host memory. */
int dp_qact_round(float *x, uint32_t rows, uint32_t ld, uint32_t cols, enum dp_gpu_round how);

#endif /* DP_GPU_CPU_QMM_INTERNAL_H */
