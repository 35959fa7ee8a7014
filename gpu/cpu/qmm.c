/* SPDX-License-Identifier: MIT */
/*
 * The cpu backend's products with weights kept as the checkpoint stores them
 * (bf16; fp8 e4m3 with 128x128 block scales; fp4 e2m1 with per-32 scales):
 * dequantize-and-multiply fused, so the weights are read once, in their
 * stored size, and never widened to an fp32 copy in memory.
 *
 *   M <= DP_QMM_GEMV_MAX tokens (decode): a GEMV. Each weight vector is
 *   decoded in registers and used for all M tokens; memory-bound by design,
 *   if the decode keeps up: on the SIMD sets e4m3 and e2m1 go through
 *   gemv_eo, which decodes a run of codes into its even and its odd ones
 *   (fewer shuffles than restoring their order) against x reordered to
 *   match once per call (dp_qmm_eo_order).
 *   M > DP_QMM_GEMV_MAX (prefill): a blocked GEMM. A panel of DP_QMM_NR rows x
 *   DP_QMM_KC columns is decoded once into a per-thread fp32 tile, stored
 *   transposed ([KC][NR], L1), and multiplied with every token's
 *   DP_QMM_KC-column slice (L2) by an outer-product micro-kernel (BLAS's:
 *   tile vectors times broadcast x into register accumulators, no horizontal
 *   sums), so each weight block is read once per product however many
 *   tokens there are.
 *
 * Numerics: the value of a weight is code x scale, exactly (every scale of
 * the checkpoints is a power of two; an f32 scale multiplies once, rounded as
 * the dequantize-to-fp32 reference rounds it); products and sums are fp32 —
 * the result is that of an fp32 matmul on the dequantized weight, up to the
 * order of the sums. No narrower activations: the reference graph's W8A8
 * (activations rounded to e4m3 per 128) is a different numerics, not an
 * optimisation of this one.
 *
 * Instruction sets, picked at dp_gpu_new by CPU features (dp_qmm_isa_get):
 * portable C (every machine, and the tests' reference path), AVX2+FMA+F16C
 * and AVX-512 F/BW/VL (qmm-avx2.c and qmm-avx512.c, one template,
 * qmm-simd.h). e4m3 widens through the f16 converter (the code's bits moved
 * into an f16 are the value / 256, subnormals included), e2m1 through a
 * 16-entry register table (vpermps). Not used: AVX512-BF16 dot products and
 * VNNI (both need the activations narrowed to bf16 / int8, which would change
 * the numerics above), AMX (same, and needs the kernel's permission dance).
 *
 * oneDNN (libdnnl-dev) was considered and not taken: Debian's is 2.6.3,
 * whose matmul has no weights decompression (f32 activations times bf16 /
 * int8 / fp8 weights came in the 3.x series) and none has e2m1 with per-32
 * or 128x128-block e8m0 scales, so it would have meant dequantizing to an
 * f32 copy first — four (fp8) to eight (fp4) times the bytes read per
 * token, which is what decode is bound by — or narrowing the activations to
 * bf16, which changes the numerics above. Prefill is where a library could
 * win; against OpenBLAS sgemm on the dequantized weight our GEMM is within
 * ~0.7-1.0x (bench-quant-kernels), without the copy.
 *
 * Threads: output rows are split over the backend's pool (pool.c) in chunks
 * claimed from a counter (GEMM: whole panels), see job_chunks.
 */
#include <errno.h>
#if defined(__x86_64__)
#include <cpuid.h>
#endif
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "base/dtype.h"
#include "gpu/cpu/qmm-internal.h"

/* ---- exact widening tables ----------------------------------------------------- */

/* Filled once by a constructor from base/dtype.h's decoding (exact). The NaN
 * codes hold 0: upload refuses them, so no kernel ever reads those entries. */
float dp_qmm_e4m3_lut[256];
const float dp_qmm_e2m1_lut[16] = { 0.0f,  0.5f,  1.0f,  1.5f,  2.0f,  3.0f,  4.0f,  6.0f,
				    -0.0f, -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f };

__attribute__((constructor)) static void e4m3_lut_init(void)
{
	for (int v = 0; v < 256; v++) /* once, before main */
		dp_qmm_e4m3_lut[v] = (v & 0x7f) == 0x7f ? 0.0f : dp_e4m3_to_f32((uint8_t)v);
}

/* ---- views ---------------------------------------------------------------------- */

int dp_qmat_of(const struct dp_gpu_weight *w, uint32_t index, struct dp_qmat *ret)
{
	struct dp_qmat q = { .dtype = w->dtype, .rows = w->rows, .cols = w->cols };
	size_t nscale = dp_gpu_weight_scales(w->dtype, w->rows, w->cols);

	switch (w->dtype) {
	case DP_DTYPE_F32:
	case DP_DTYPE_BF16:
		q.kblock = w->cols;
		break;
	case DP_DTYPE_E4M3:
	case DP_DTYPE_E2M1:
		if (!w->scale || (w->scale_dtype != DP_DTYPE_E8M0 && w->scale_dtype != DP_DTYPE_F32))
			return -EINVAL;
		q.kblock = w->dtype == DP_DTYPE_E4M3 ? DP_GPU_E4M3_BLOCK : DP_GPU_E2M1_BLOCK;
		q.scale_ld = (w->cols + q.kblock - 1) / q.kblock;
		q.scale_dtype = w->scale_dtype;
		q.scale = (const char *)w->scale + index * nscale * dp_dtype_size(w->scale_dtype);
		break;
	default:
		return -EINVAL;
	}
	q.row_bytes = dp_dtype_bytes(w->dtype, w->cols);
	q.data = (const uint8_t *)w->data + index * q.row_bytes * w->rows;
	*ret = q;
	return 0;
}

/* ---- portable kernels ------------------------------------------------------------- */

static void gemv_portable(const struct dp_qmat *w, const float *x, size_t ldx, uint32_t M, float *y,
			  size_t ldy, uint32_t r0, uint32_t r1, bool acc)
{
	float a[DP_QMM_GEMV_MAX];

	for (uint32_t r = r0; r < r1; r++) {
		const uint8_t *row = w->data + r * w->row_bytes;
		memset(a, 0, sizeof(a));
		for (uint32_t k0 = 0, kb = 0; k0 < w->cols; k0 += w->kblock, kb++) {
			uint32_t end = w->cols - k0 < w->kblock ? w->cols : k0 + w->kblock;
			float s = dp_qmat_scale(w, r, kb);
			for (uint32_t k = k0; k < end; k++) {
				float wv = dp_qmat_code(w, row, k) * s;
				for (uint32_t m = 0; m < M; m++)
					a[m] += wv * x[m * ldx + k];
			}
		}
		for (uint32_t m = 0; m < M; m++)
			y[m * ldy + r] = acc ? y[m * ldy + r] + a[m] : a[m];
	}
}

static void dequant_portable(const struct dp_qmat *w, uint32_t r0, uint32_t nr, uint32_t k0,
			     uint32_t kc, float *t)
{
	for (uint32_t i = 0; i < nr; i++) {
		const uint8_t *row = w->data + (r0 + i) * w->row_bytes;
		for (uint32_t k = k0; k < k0 + kc; k++)
			t[(size_t)i * kc + (k - k0)] =
			    dp_qmat_code(w, row, k) * dp_qmat_scale(w, r0 + i, k / w->kblock);
	}
}

static void tile_portable(const float *x, size_t ldx, uint32_t M, const float *t, uint32_t nr,
			  uint32_t kc, float *y, size_t ldy)
{
	for (uint32_t m = 0; m < M; m++)
		for (uint32_t r = 0; r < nr; r++) {
			const float *xm = x + m * ldx;
			float a = 0;
			for (uint32_t k = 0; k < kc; k++)
				a += xm[k] * t[(size_t)k * DP_QMM_NR + r];
			y[m * ldy + r] += a;
		}
}

const struct dp_qmm_isa dp_qmm_portable = {
	.isa = DP_GPU_ISA_PORTABLE,
	.gemv = gemv_portable,
	.dequant = dequant_portable,
	.tile = tile_portable,
};

/* ---- dispatch ----------------------------------------------------------------------- */

#if defined(__x86_64__)
/* F16C from cpuid itself: clang 14's __builtin_cpu_supports has no "f16c"
 * (the fuzz build is clang's). */
static bool cpu_has_f16c(void)
{
	unsigned a, b, c, d;
	return __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C);
}
#endif

bool dp_qmm_isa_supported(enum dp_gpu_isa isa)
{
	switch (isa) {
	case DP_GPU_ISA_AUTO:
	case DP_GPU_ISA_PORTABLE:
		return true;
#if defined(__x86_64__)
	case DP_GPU_ISA_AVX2:
		__builtin_cpu_init();
		return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && cpu_has_f16c();
	case DP_GPU_ISA_AVX512:
		__builtin_cpu_init();
		return dp_qmm_isa_supported(DP_GPU_ISA_AVX2) && __builtin_cpu_supports("avx512f") &&
		       __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
#endif
	default:
		return false;
	}
}

const struct dp_qmm_isa *dp_qmm_isa_get(enum dp_gpu_isa isa)
{
	if (!dp_qmm_isa_supported(isa))
		return NULL;
#if defined(__x86_64__)
	if (isa == DP_GPU_ISA_AUTO)
		isa = dp_qmm_isa_supported(DP_GPU_ISA_AVX512) ? DP_GPU_ISA_AVX512
		      : dp_qmm_isa_supported(DP_GPU_ISA_AVX2) ? DP_GPU_ISA_AVX2
							      : DP_GPU_ISA_PORTABLE;
	if (isa == DP_GPU_ISA_AVX512)
		return &dp_qmm_avx512;
	if (isa == DP_GPU_ISA_AVX2)
		return &dp_qmm_avx2;
#endif
	return &dp_qmm_portable;
}

/* ---- the product over the pool --------------------------------------------------------- */

struct qmm_job {
	const struct dp_qmm_isa *k;
	void (*gemv)(const struct dp_qmat *w, const float *x, size_t ldx, uint32_t M, float *y,
		     size_t ldy, uint32_t r0, uint32_t r1, bool acc);
	const struct dp_qmat *w;
	const float *x;
	size_t ldx;
	uint32_t M;
	float *y;
	size_t ldy;
	bool acc;
	float *tiles;
	uint32_t chunk;         /* rows a claim takes (GEMM: a multiple of DP_QMM_NR) */
	uint32_t chunks;        /* claims in all */
	_Atomic uint32_t next;  /* the next unclaimed chunk */
};

/* Rows go out in chunks claimed from a shared counter, not in one fixed
 * share a thread: on a machine whose cores are shared (the daemon's io
 * thread, other processes), a thread that is preempted mid-product leaves
 * its chunks to the others instead of holding up the call by a whole time
 * slice. Chunks are contiguous rows in ascending order, so each thread still
 * streams long runs of memory (>= 64 KiB of weight a claim where the matrix
 * allows), and there are ~8 of them a thread so the tail is short. */
static void job_chunks(struct qmm_job *j, int n, uint32_t align, size_t min_bytes)
{
	uint32_t rows = j->w->rows;
	uint64_t per = ((uint64_t)rows + 8u * (uint32_t)n - 1) / (8u * (uint32_t)n);
	uint64_t min_rows = (min_bytes + j->w->row_bytes - 1) / j->w->row_bytes;
	if (per < min_rows)
		per = min_rows;
	per = (per + align - 1) / align * align;
	if (per > rows)
		per = rows;
	j->chunk = (uint32_t)per;
	j->chunks = (uint32_t)((rows + per - 1) / per);
	atomic_init(&j->next, 0);
}

static void gemv_job(void *arg, int tid, int n)
{
	struct qmm_job *j = arg;
	uint32_t c;
	(void)tid;
	(void)n;
	while ((c = atomic_fetch_add_explicit(&j->next, 1, memory_order_relaxed)) < j->chunks) {
		uint32_t r0 = c * j->chunk;
		uint32_t r1 = j->w->rows - r0 < j->chunk ? j->w->rows : r0 + j->chunk;
		j->gemv(j->w, j->x, j->ldx, j->M, j->y, j->ldy, r0, r1, j->acc);
	}
}

/* rows[nr][kc] -> t[kc][DP_QMM_NR], rows nr.. zero (the micro-kernel reads
 * all NR). Scalar: a tile is used by all M tokens, so this is ~1/M of the
 * FMAs. */
static void transpose(const float *rows, uint32_t nr, uint32_t kc, float *t)
{
	for (uint32_t k = 0; k < kc; k++) {
		float *tk = t + (size_t)k * DP_QMM_NR;
		for (uint32_t i = 0; i < nr; i++)
			tk[i] = rows[(size_t)i * kc + k];
		for (uint32_t i = nr; i < DP_QMM_NR; i++)
			tk[i] = 0;
	}
}

/* One claim: rows [r0, r1), whole panels. */
static void gemm_chunk(const struct qmm_job *j, float *tile, uint32_t r0, uint32_t r1)
{
	const struct dp_qmat *w = j->w;
	float rows[DP_QMM_NR * DP_QMM_KC]; /* 32 KiB of the thread's stack */

	if (!j->acc)
		for (uint32_t m = 0; m < j->M; m++)
			memset(j->y + m * j->ldy + r0, 0, (r1 - r0) * sizeof(float));
	/* K outermost: the tokens' KC-column slice stays in L2 across panels */
	for (uint32_t k0 = 0; k0 < w->cols; k0 += DP_QMM_KC) {
		uint32_t kc = w->cols - k0 < DP_QMM_KC ? w->cols - k0 : DP_QMM_KC;
		for (uint32_t r = r0; r < r1; r += DP_QMM_NR) {
			uint32_t nr = r1 - r < DP_QMM_NR ? r1 - r : DP_QMM_NR;
			j->k->dequant(w, r, nr, k0, kc, rows);
			transpose(rows, nr, kc, tile);
			j->k->tile(j->x + k0, j->ldx, j->M, tile, nr, kc, j->y + r, j->ldy);
		}
	}
}

static void gemm_job(void *arg, int tid, int n)
{
	struct qmm_job *j = arg;
	float *tile = j->tiles + (size_t)tid * DP_QMM_NR * DP_QMM_KC;
	uint32_t c;
	(void)n;
	while ((c = atomic_fetch_add_explicit(&j->next, 1, memory_order_relaxed)) < j->chunks) {
		uint32_t r0 = c * j->chunk;
		uint32_t r1 = j->w->rows - r0 < j->chunk ? j->w->rows : r0 + j->chunk;
		gemm_chunk(j, tile, r0, r1);
	}
}

void dp_qmm_eo_order(const struct dp_qmat *w, uint32_t run, const float *x, size_t ldx, uint32_t M,
		     float *xs, size_t ldxs)
{
	uint32_t blk = w->dtype == DP_DTYPE_E2M1 ? DP_GPU_E2M1_BLOCK : DP_GPU_E4M3_BLOCK;
	uint32_t upto = w->cols / blk * blk; /* a multiple of 2 * run */
	for (uint32_t m = 0; m < M; m++) {
		const float *xm = x + m * ldx;
		float *o = xs + m * ldxs;
		for (uint32_t c = 0; c < upto; c += 2 * run)
			for (uint32_t i = 0; i < run; i++) {
				o[c + i] = xm[c + 2 * i];
				o[c + run + i] = xm[c + 2 * i + 1];
			}
		memcpy(o + upto, xm + upto, (w->cols - upto) * sizeof(float));
	}
}

/* The GEMV: e4m3 and e2m1 through gemv_eo where the set has it, on x
 * reordered once for all rows into the tiles (idle during a GEMV) or, when
 * larger, a buffer of its own; without memory, the in-order gemv. */
static void gemv_run(struct qmm_job *j, struct dp_cpu_pool *pool)
{
	const struct dp_qmat *w = j->w;
	float *xs = NULL;
	j->gemv = j->k->gemv;
	if (j->k->gemv_eo && (w->dtype == DP_DTYPE_E4M3 || w->dtype == DP_DTYPE_E2M1)) {
		size_t ldxs = ((size_t)w->cols + 15) & ~(size_t)15;
		size_t need = ldxs * j->M, have = (size_t)pool->n * DP_QMM_NR * DP_QMM_KC;
		float *buf = need <= have ? j->tiles : (xs = malloc(need * sizeof(float)));
		if (buf) {
			dp_qmm_eo_order(w, j->k->eo_run, j->x, j->ldx, j->M, buf, ldxs);
			j->x = buf;
			j->ldx = ldxs;
			j->gemv = j->k->gemv_eo;
		}
	}
	job_chunks(j, pool->n, 16, 64 << 10);
	dp_cpu_pool_run(pool, gemv_job, j);
	free(xs);
}

void dp_qmm_run(const struct dp_qmm_isa *k, struct dp_cpu_pool *pool, float *tiles,
		const struct dp_qmat *w, const float *x, size_t ldx, uint32_t M, float *y, size_t ldy,
		bool acc)
{
	struct qmm_job j = { .k = k, .w = w, .x = x, .ldx = ldx, .M = M, .y = y, .ldy = ldy,
			     .acc = acc, .tiles = tiles };
	if (M == 0)
		return;
	if (M <= DP_QMM_GEMV_MAX) {
		gemv_run(&j, pool);
		return;
	}
	/* The micro-kernel reads Q_MR token rows at once, ldx apart: at a
	 * multiple of 4 KiB (every model width) they all fall in one L1 set and
	 * evict each other. A copy at a stride 64 bytes past such a multiple
	 * (~1% of the product's time) spreads them; without memory, the
	 * product runs on x as it is. */
	size_t lds = (((size_t)w->cols + 15) & ~(size_t)15) + 16;
	float *xs = malloc(lds * M * sizeof(float));
	if (xs) {
		for (uint32_t m = 0; m < M; m++)
			memcpy(xs + m * lds, x + m * ldx, w->cols * sizeof(float));
		j.x = xs;
		j.ldx = lds;
	}
	job_chunks(&j, pool->n, DP_QMM_NR, 0);
	dp_cpu_pool_run(pool, gemm_job, &j);
	free(xs);
}
