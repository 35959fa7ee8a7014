/* SPDX-License-Identifier: MIT */
/*
 * bench-quant-kernels — the cpu backend's products with weights kept as the
 * checkpoint stores them (fp4 e2m1, fp8 e4m3, bf16), V4-Flash shapes:
 *
 *   decode GEMV (batch 1 and 4): GB/s of weight bytes read (codes + scales)
 *     beside the memory-bandwidth bound, a STREAM-like read loop over the
 *     very same bytes on as many threads, measured interleaved with the
 *     kernel (pass for pass; the ratio is the median of each pair's), so it
 *     is the fraction of the bound reached under the load of the moment;
 *   prefill GEMM (512 tokens): GFLOP/s beside OpenBLAS sgemm on the
 *     dequantized fp32 weight, same threads;
 *   the per-call cost of a product (a 16 x 128 bf16 GEMV: the pool's wake
 *     and wait, nothing else).
 *
 * Decode reads a different expert each step, so every product walks a stack
 * of copies far larger than the last-level cache (--ws MiB, default 2048):
 * the figures are DRAM's, not the cache's.
 *
 *   bench-quant-kernels [--threads N] [--isa auto|portable|avx2|avx512]
 *                       [--ws MiB] [--reps N] [--no-gemm] [--quick]
 *
 * Ends with RESULT lines (README "Benchmarks").
 */
#include <cblas.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "base/dtype.h"
#include "bench/bench-util.h"
#include "gpu/gpu.h"

static int threads = 2;
static size_t ws_bytes = (size_t)2048 << 20;
static bool quick, no_gemm;
static int reps = 5;

/* ---- the bandwidth bound: a read loop on `threads` threads ------------------ */

struct stream_arg {
	const uint64_t *p;
	size_t n;
	uint64_t sum;
};

/* The plain loop: what a machine without AVX2 gets. */
static void stream_part_scalar(struct stream_arg *a)
{
	uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
	for (size_t i = 0; i + 4 <= a->n; i += 4) {
		s0 += a->p[i];
		s1 += a->p[i + 1];
		s2 += a->p[i + 2];
		s3 += a->p[i + 3];
	}
	a->sum = s0 + s1 + s2 + s3;
}

#if defined(__x86_64__)
/* Full-width loads, four independent accumulators, two cache lines a step:
 * the loop must be bound by memory, not by its own adds or load width, or
 * the ratio the kernels are judged by is against too low a bound (the
 * autovectorized 128-bit loop read ~half of what sgemv did). */
__attribute__((target("avx512f"))) static void stream_part_avx512(struct stream_arg *a)
{
	__m512i s0 = _mm512_setzero_si512(), s1 = s0, s2 = s0, s3 = s0;
	const __m512i *p = (const __m512i *)(const void *)a->p;
	size_t n = a->n / 8;
	for (size_t i = 0; i + 4 <= n; i += 4) {
		s0 = _mm512_add_epi64(s0, _mm512_loadu_si512(p + i));
		s1 = _mm512_add_epi64(s1, _mm512_loadu_si512(p + i + 1));
		s2 = _mm512_add_epi64(s2, _mm512_loadu_si512(p + i + 2));
		s3 = _mm512_add_epi64(s3, _mm512_loadu_si512(p + i + 3));
	}
	s0 = _mm512_add_epi64(_mm512_add_epi64(s0, s1), _mm512_add_epi64(s2, s3));
	a->sum = (uint64_t)_mm512_reduce_add_epi64(s0);
}

__attribute__((target("avx2"))) static void stream_part_avx2(struct stream_arg *a)
{
	__m256i s0 = _mm256_setzero_si256(), s1 = s0, s2 = s0, s3 = s0;
	const __m256i *p = (const __m256i *)(const void *)a->p;
	size_t n = a->n / 4;
	for (size_t i = 0; i + 4 <= n; i += 4) {
		s0 = _mm256_add_epi64(s0, _mm256_loadu_si256(p + i));
		s1 = _mm256_add_epi64(s1, _mm256_loadu_si256(p + i + 1));
		s2 = _mm256_add_epi64(s2, _mm256_loadu_si256(p + i + 2));
		s3 = _mm256_add_epi64(s3, _mm256_loadu_si256(p + i + 3));
	}
	s0 = _mm256_add_epi64(_mm256_add_epi64(s0, s1), _mm256_add_epi64(s2, s3));
	uint64_t v[4];
	_mm256_storeu_si256((__m256i *)(void *)v, s0);
	a->sum = v[0] + v[1] + v[2] + v[3];
}
#endif

static void *stream_part(void *v)
{
	struct stream_arg *a = v;
#if defined(__x86_64__)
	if (__builtin_cpu_supports("avx512f"))
		stream_part_avx512(a);
	else if (__builtin_cpu_supports("avx2"))
		stream_part_avx2(a);
	else
#endif
		stream_part_scalar(a);
	return NULL;
}

/* Seconds of one pass over buf (bytes) split over the threads in
 * contiguous parts, as the GEMV splits its rows. */
static double stream_pass(const void *buf, size_t bytes)
{
	pthread_t th[64];
	struct stream_arg a[64];
	size_t words = bytes / 8, per = words / (size_t)threads / 32 * 32;
	uint64_t t0 = dp_clock_ns();
	for (int i = 0; i < threads; i++) {
		a[i] = (struct stream_arg){ .p = (const uint64_t *)buf + i * per, .n = per };
		if (i)
			pthread_create(&th[i], NULL, stream_part, &a[i]);
	}
	stream_part(&a[0]);
	for (int i = 1; i < threads; i++)
		pthread_join(th[i], NULL);
	double s = (dp_clock_ns() - t0) * 1e-9;
	if (a[0].sum == 42) /* keep the sums alive */
		fprintf(stderr, " ");
	return s * (double)bytes / (double)(per * 8 * (size_t)threads);
}

/* ---- one case -------------------------------------------------------------- */

struct qcase {
	const char *name;
	enum dp_dtype dtype;
	uint32_t rows, cols;
};

static uint64_t seed = 1;

/* Random host codes (no NaN codes) and e8m0 scales near 2^-8. */
static void random_weight(enum dp_dtype dt, uint32_t rows, uint32_t cols, uint8_t *data,
			  uint8_t *scale)
{
	size_t nb = (size_t)rows * dp_dtype_bytes(dt, cols);
	for (size_t i = 0; i < nb; i += 8) {
		uint64_t v = splitmix64(&seed);
		memcpy(data + i, &v, nb - i < 8 ? nb - i : 8);
	}
	if (dt == DP_DTYPE_E4M3)
		for (size_t i = 0; i < nb; i++)
			if ((data[i] & 0x7f) == 0x7f)
				data[i] ^= 1;
	if (dt == DP_DTYPE_BF16)
		for (size_t i = 0; i < nb; i += 2) {
			uint16_t b = dp_f32_to_bf16((float)((int)(splitmix64(&seed) % 2001) - 1000) / 1000);
			memcpy(data + i, &b, 2);
		}
	size_t ns = dp_gpu_weight_scales(dt, rows, cols);
	for (size_t i = 0; i < ns; i++)
		scale[i] = (uint8_t)(119 + splitmix64(&seed) % 3);
}

static int cmp_d(const void *a, const void *b)
{
	return cmp_double(a, b);
}

static double median(double *v, int n)
{
	qsort(v, (size_t)n, sizeof(double), cmp_d);
	return v[n / 2];
}

/* The product of matrix 0 against OpenBLAS on its fp32 dequantization (a
 * bench of a wrong kernel is no bench). */
static int check_case(struct dp_gpu *g, const struct qcase *qc, const struct dp_gpu_weight *w,
		      const uint8_t *data, const uint8_t *scale, const float *x, float *deq)
{
	uint32_t R = qc->rows, C = qc->cols;
	for (uint32_t rr = 0; rr < R; rr++)
		for (uint32_t c = 0; c < C; c++) {
			size_t e = (size_t)rr * C + c;
			float v;
			if (qc->dtype == DP_DTYPE_BF16) {
				uint16_t b;
				memcpy(&b, data + 2 * e, 2);
				v = dp_bf16_to_f32(b);
			} else if (qc->dtype == DP_DTYPE_E4M3) {
				v = dp_e4m3_to_f32(data[e]) *
				    dp_e8m0_to_f32(scale[(rr / 128) * ((C + 127) / 128) + c / 128]);
			} else {
				uint8_t b = data[e / 2];
				v = dp_e2m1_to_f32(e % 2 ? b >> 4 : b & 15) *
				    dp_e8m0_to_f32(scale[(size_t)rr * ((C + 31) / 32) + c / 32]);
			}
			deq[e] = v;
		}
	float *y = malloc(4 * (size_t)R * sizeof(float)), *yb = malloc(4 * (size_t)R * sizeof(float));
	if (!y || !yb) {
		free(y);
		free(yb);
		return -ENOMEM;
	}
	int ret = 0;
	for (uint32_t M = 1; M <= 4 && !ret; M += 3) {
		dp_gpu_ops(g)->matmul(g, x, 0, w, 0, y, 0, M, false);
		cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)M, (int)R, (int)C, 1.0f, x,
			    (int)C, deq, (int)C, 0.0f, yb, (int)R);
		double maxd = 0, maxr = 1e-30;
		for (size_t i = 0; i < (size_t)M * R; i++) {
			maxd = fmax(maxd, fabs((double)y[i] - yb[i]));
			maxr = fmax(maxr, fabs(yb[i]));
		}
		if (maxd > 1e-4 * maxr) {
			fprintf(stderr, "bench-quant-kernels: %s M=%u: ours differs from sgemm by %.3g of %.3g\n",
				qc->name, M, maxd, maxr);
			ret = -EIO;
		}
	}
	free(y);
	free(yb);
	return ret;
}

static int run_case(struct dp_gpu *g, const struct qcase *qc)
{
	const struct dp_gpu_ops *ops = dp_gpu_ops(g);
	uint32_t R = qc->rows, C = qc->cols;
	size_t code_b = (size_t)R * dp_dtype_bytes(qc->dtype, C);
	size_t nscale = dp_gpu_weight_scales(qc->dtype, R, C);
	size_t wbytes = code_b + nscale; /* e8m0: a byte a scale */
	uint32_t copies = (uint32_t)(ws_bytes / wbytes);
	if (copies < 2)
		copies = 2;

	/* the quantized stack: `copies` different matrices, wrapped in place */
	uint8_t *data = malloc(code_b * copies), *scale = malloc(nscale * copies + 1);
	float *deq = malloc((size_t)R * C * sizeof(float));
	uint32_t Mg = quick ? 128 : 512;
	float *x = malloc((size_t)Mg * C * sizeof(float)), *y = malloc((size_t)Mg * R * sizeof(float));
	double *tq = malloc(sizeof(double) * (size_t)reps), *ts = malloc(sizeof(double) * (size_t)reps);
	int ret = -ENOMEM;
	struct dp_gpu_weight w = { 0 };
	if (!data || !scale || !deq || !x || !y || !tq || !ts)
		goto out;
	for (uint32_t i = 0; i < copies; i++)
		random_weight(qc->dtype, R, C, data + i * code_b, scale + i * nscale);
	for (size_t i = 0; i < (size_t)Mg * C; i++)
		x[i] = (float)((int)(splitmix64(&seed) % 2001) - 1000) / 1000;
	ret = dp_gpu_weight_wrap(g, data, nscale ? scale : NULL, qc->dtype, DP_DTYPE_E8M0, copies, R,
				 C, &w);
	if (ret < 0)
		goto out;
	ret = check_case(g, qc, &w, data, scale, x, deq);
	if (ret < 0)
		goto out;

	/* decode: a pass of the kernel over every copy, then a STREAM pass over
	 * the same bytes (codes, then scales), alternating */
	for (uint32_t M = 1; M <= 4; M += 3) {
		for (int rep = 0; rep < reps; rep++) {
			uint64_t t0 = dp_clock_ns();
			for (uint32_t i = 0; i < copies; i++)
				ops->matmul(g, x, 0, &w, i, y, 0, M, false);
			tq[rep] = (dp_clock_ns() - t0) * 1e-9;
			ts[rep] = stream_pass(data, code_b * copies) +
				  (nscale ? stream_pass(scale, nscale * copies) : 0);
		}
		/* the ratio of each rep's two neighbouring passes, then the
		 * median: the machine's load drifts between reps more than
		 * within one */
		double *rt = malloc(sizeof(double) * (size_t)reps);
		if (!rt) {
			ret = -ENOMEM;
			goto out;
		}
		for (int rep = 0; rep < reps; rep++)
			rt[rep] = ts[rep] / tq[rep];
		double ratio = median(rt, reps);
		free(rt);
		double q = median(tq, reps), st = median(ts, reps);
		double bytes = (double)wbytes * copies;
		double gbs = bytes / q / 1e9, bound = bytes / st / 1e9;
		printf("%-24s gemv M=%u %8.1f us/matrix %6.2f GB/s | read bound %6.2f GB/s | %3.0f%% of bound\n",
		       qc->name, M, q / copies * 1e6, gbs, bound, 100 * ratio);
		printf("RESULT quant-gemv%u-%s-vs-read-bw ours=%.2f anchor=%.2f ratio=%.3f unit=GB/s better=higher\n",
		       M, qc->name, gbs, bound, ratio);
		fflush(stdout);
	}

	if (!no_gemm) {
		/* prefill GEMM, Mg tokens, beside sgemm on matrix 0 dequantized
		 * (compute-bound: the weight's bytes are not what limits it) */
		int greps = 3;
		for (int i = 0; i < greps; i++) {
			uint64_t t0 = dp_clock_ns();
			ops->matmul(g, x, 0, &w, (uint32_t)i % copies, y, 0, Mg, false);
			tq[i] = (dp_clock_ns() - t0) * 1e-9;
			t0 = dp_clock_ns();
			cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)Mg, (int)R, (int)C, 1.0f,
				    x, (int)C, deq, (int)C, 0.0f, y, (int)R);
			ts[i] = (dp_clock_ns() - t0) * 1e-9;
		}
		double gq = median(tq, greps), gb = median(ts, greps);
		double flop = 2.0 * Mg * R * C;
		printf("%-24s gemm M=%u %8.2f ms %6.1f GFLOP/s | sgemm fp32 %8.2f ms %6.1f GFLOP/s | %.2fx\n",
		       qc->name, Mg, gq * 1e3, flop / gq / 1e9, gb * 1e3, flop / gb / 1e9, gb / gq);
		printf("RESULT quant-gemm%u-%s-vs-sgemm ours=%.2f anchor=%.2f ratio=%.3f unit=GFLOP/s better=higher\n",
		       Mg, qc->name, flop / gq / 1e9, flop / gb / 1e9, gb / gq);
		fflush(stdout);
	}
	ret = 0;
out:
	dp_gpu_weight_free(g, &w);
	free(data);
	free(scale);
	free(deq);
	free(x);
	free(y);
	free(tq);
	free(ts);
	return ret;
}

/* Microseconds a product costs beyond its arithmetic: a 16 x 128 bf16 GEMV
 * (in L1) is the pool's wake and wait. */
static int call_cost(struct dp_gpu *g)
{
	uint16_t wb[16 * 128];
	float x[128], y[16];
	for (int i = 0; i < 16 * 128; i++)
		wb[i] = dp_f32_to_bf16(0.5f);
	for (int i = 0; i < 128; i++)
		x[i] = 1.0f;
	struct dp_gpu_weight w;
	int r = dp_gpu_weight_wrap(g, wb, NULL, DP_DTYPE_BF16, DP_DTYPE_F32, 1, 16, 128, &w);
	if (r < 0)
		return r;
	enum { N = 2000 };
	double t[N];
	for (int i = 0; i < N; i++) {
		uint64_t t0 = dp_clock_ns();
		dp_gpu_ops(g)->matmul(g, x, 0, &w, 0, y, 0, 1, false);
		t[i] = (dp_clock_ns() - t0) * 1e-9;
	}
	double med = median(t, N);
	dp_gpu_weight_free(g, &w);
	printf("per-call cost (16x128 bf16 GEMV, %d threads): median %.1f us\n", threads, med * 1e6);
	printf("RESULT quant-call-cost ours=%.2f anchor=%.2f ratio=1.000 unit=us better=lower\n",
	       med * 1e6, med * 1e6);
	return 0;
}

int main(int argc, char **argv)
{
	enum dp_gpu_isa isa = DP_GPU_ISA_AUTO;
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--threads") && i + 1 < argc)
			threads = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--isa") && i + 1 < argc) {
			if (dp_gpu_isa_parse(argv[++i], &isa) < 0) {
				fprintf(stderr, "bench-quant-kernels: --isa %s: auto, portable, avx2 or avx512\n", argv[i]);
				return 2;
			}
		} else if (!strcmp(argv[i], "--ws") && i + 1 < argc)
			ws_bytes = (size_t)atol(argv[++i]) << 20;
		else if (!strcmp(argv[i], "--reps") && i + 1 < argc)
			reps = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--no-gemm"))
			no_gemm = true;
		else if (!strcmp(argv[i], "--quick"))
			quick = true;
		else {
			fprintf(stderr, "usage: bench-quant-kernels [--threads N] [--isa NAME] [--ws MiB] [--reps N] [--no-gemm] [--quick]\n");
			return 2;
		}
	}
	if (threads < 1 || threads > 64) {
		fprintf(stderr, "bench-quant-kernels: --threads %d: 1 to 64\n", threads);
		return 2;
	}
	if (reps < 1 || reps > 1000) {
		fprintf(stderr, "bench-quant-kernels: --reps %d: 1 to 1000\n", reps);
		return 2;
	}
	if (ws_bytes < ((size_t)16 << 20)) {
		fprintf(stderr, "bench-quant-kernels: --ws: at least 16 MiB\n");
		return 2;
	}
	if (quick) {
		if (ws_bytes > ((size_t)256 << 20))
			ws_bytes = (size_t)256 << 20;
		reps = 3;
	}
	__builtin_cpu_init();

	struct dp_gpu *g;
	char err[256] = "";
	struct dp_gpu_opts o = { .threads = threads, .isa = isa };
	if (dp_gpu_new(DP_GPU_CPU, &o, &g, err, sizeof(err)) < 0) {
		fprintf(stderr, "bench-quant-kernels: %s\n", err);
		return 1;
	}
	printf("cpu backend, %d threads, kernels %s, working set %zu MiB a case\n", threads,
	       dp_gpu_isa_name(dp_gpu_isa_of(g)), ws_bytes >> 20);
	if (call_cost(g) < 0)
		return 1;

	/* V4-Flash shapes (rows = outputs x cols = inputs): attention's wq_a
	 * (4096 -> 1024) and wq_b (1024 -> 32768) in fp8, a routed expert's
	 * w1/w3 (4096 -> 2048) and w2 (2048 -> 4096) in fp4, a 4096 x 4096
	 * projection in fp8 and in bf16 */
	const struct qcase cases[] = {
		{ "e4m3-wq_a-1024x4096", DP_DTYPE_E4M3, 1024, 4096 },
		{ "e4m3-wq_b-32768x1024", DP_DTYPE_E4M3, 32768, 1024 },
		{ "e4m3-4096x4096", DP_DTYPE_E4M3, 4096, 4096 },
		{ "e2m1-w1-2048x4096", DP_DTYPE_E2M1, 2048, 4096 },
		{ "e2m1-w2-4096x2048", DP_DTYPE_E2M1, 4096, 2048 },
		{ "bf16-4096x4096", DP_DTYPE_BF16, 4096, 4096 },
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		int r = run_case(g, &cases[i]);
		if (r < 0) {
			fprintf(stderr, "bench-quant-kernels: %s: %s\n", cases[i].name, strerror(-r));
			return 1;
		}
	}
	dp_gpu_free(g);
	return 0;
}
