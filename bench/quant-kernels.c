/* SPDX-License-Identifier: MIT */
/*
 * bench-quant-kernels — the cpu backend's products with weights kept as the
 * checkpoint stores them (fp4 e2m1, fp8 e4m3, bf16), V4-Flash-sized:
 *
 *   decode GEMV (1 token): GB/s of weight bytes read (codes + scales), beside
 *     a STREAM-like read loop over the same threads in the same run (ratio =
 *     the fraction of the memory-bandwidth bound reached), and beside
 *     OpenBLAS sgemv on the dequantized fp32 weight (time ratio);
 *   prefill GEMM (512 tokens): GFLOP/s beside OpenBLAS sgemm on the
 *     dequantized fp32 weight, same threads.
 *
 * Decode reads a different expert each step, so every product walks a stack
 * of copies larger than the last-level cache (--ws MiB, default 1024): the
 * figures are DRAM's, not the cache's.
 *
 *   bench-quant-kernels [--threads N] [--isa auto|portable|avx2|avx512]
 *                       [--ws MiB] [--quick]
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
static size_t ws_bytes = (size_t)1024 << 20;
static bool quick;

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

/* GB/s of the best of `reps` passes over buf (bytes) split over the threads. */
static double stream_read(const uint64_t *buf, size_t bytes, int reps)
{
	double best = 0;
	__builtin_cpu_init();
	size_t words = bytes / 8, per = words / (size_t)threads;
	for (int r = 0; r < reps; r++) {
		pthread_t th[64];
		struct stream_arg a[64];
		uint64_t t0 = dp_clock_ns();
		for (int i = 0; i < threads; i++) {
			a[i] = (struct stream_arg){ .p = buf + i * per, .n = per };
			if (i)
				pthread_create(&th[i], NULL, stream_part, &a[i]);
		}
		stream_part(&a[0]);
		for (int i = 1; i < threads; i++)
			pthread_join(th[i], NULL);
		double s = (dp_clock_ns() - t0) * 1e-9, gbs = bytes / s / 1e9;
		if (gbs > best)
			best = gbs;
		if (a[0].sum == 42) /* keep the sums alive */
			fprintf(stderr, " ");
	}
	return best;
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

static int run_case(struct dp_gpu *g, const struct qcase *qc, double stream_gbs)
{
	const struct dp_gpu_ops *ops = dp_gpu_ops(g);
	uint32_t R = qc->rows, C = qc->cols;
	size_t code_b = (size_t)R * dp_dtype_bytes(qc->dtype, C);
	size_t nscale = dp_gpu_weight_scales(qc->dtype, R, C);
	size_t wbytes = code_b + nscale; /* e8m0: a byte a scale */
	uint32_t copies = (uint32_t)(ws_bytes / wbytes);
	uint32_t fcopies = (uint32_t)(ws_bytes / ((size_t)R * C * 4));
	if (copies < 2)
		copies = 2;
	if (fcopies < 2)
		fcopies = 2;

	/* the quantized stack: `copies` different matrices */
	uint8_t *data = malloc(code_b * copies), *scale = malloc(nscale * copies + 1);
	float *deq = malloc((size_t)R * C * sizeof(float));
	if (!data || !scale || !deq)
		return -ENOMEM;
	for (uint32_t i = 0; i < copies; i++)
		random_weight(qc->dtype, R, C, data + i * code_b, scale + i * nscale);
	struct dp_gpu_weight w;
	int r = dp_gpu_weight_upload_as(g, data, nscale ? scale : NULL, qc->dtype, DP_DTYPE_E8M0,
					copies, R, C, &w);
	if (r < 0)
		return r;
	/* the fp32 anchor: matrix 0 dequantized with base/dtype.h's decodings,
	 * repeated over `fcopies` copies so it too comes from DRAM */
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
	float *fw = malloc((size_t)R * C * sizeof(float) * fcopies);
	if (!fw)
		return -ENOMEM;
	for (uint32_t i = 0; i < fcopies; i++)
		memcpy(fw + (size_t)i * R * C, deq, (size_t)R * C * sizeof(float));

	uint32_t Mg = quick ? 128 : 512;
	float *x = malloc((size_t)Mg * C * sizeof(float)), *y = malloc((size_t)Mg * R * sizeof(float));
	for (size_t i = 0; i < (size_t)Mg * C; i++)
		x[i] = (float)((int)(splitmix64(&seed) % 2001) - 1000) / 1000;

	/* decode GEMV, one token, a different copy each call */
	int reps = quick ? 40 : 200;
	double *t = malloc(sizeof(double) * (size_t)reps), *ta = malloc(sizeof(double) * (size_t)reps);
	/* ours, then the anchor: not interleaved, since OpenBLAS's threads spin
	 * a while after each call and would steal our workers' cores */
	for (int i = 0; i < reps; i++) {
		uint64_t t0 = dp_clock_ns();
		ops->matmul(g, x, 0, &w, (uint32_t)i % copies, y, 0, 1, false);
		t[i] = (dp_clock_ns() - t0) * 1e-9;
	}
	for (int i = 0; i < reps; i++) {
		uint64_t t0 = dp_clock_ns();
		cblas_sgemv(CblasRowMajor, CblasNoTrans, (int)R, (int)C, 1.0f,
			    fw + (size_t)(i % fcopies) * R * C, (int)C, x, 1, 0.0f, y, 1);
		ta[i] = (dp_clock_ns() - t0) * 1e-9;
	}
	/* the two agree (matrix 0 both sides): a bench of a wrong kernel is no bench */
	float *yb = malloc(R * sizeof(float));
	ops->matmul(g, x, 0, &w, 0, y, 0, 1, false);
	cblas_sgemv(CblasRowMajor, CblasNoTrans, (int)R, (int)C, 1.0f, fw, (int)C, x, 1, 0.0f, yb, 1);
	double maxd = 0, maxr = 1e-30;
	for (uint32_t i = 0; i < R; i++) {
		maxd = fmax(maxd, fabs((double)y[i] - yb[i]));
		maxr = fmax(maxr, fabs(yb[i]));
	}
	free(yb);
	if (maxd > 1e-4 * maxr) {
		fprintf(stderr, "bench-quant-kernels: %s: ours differs from sgemv by %.3g of %.3g\n",
			qc->name, maxd, maxr);
		return -EIO;
	}
	double tq = median(t, reps), tb = median(ta, reps);
	double gbs = wbytes / tq / 1e9, gbs_blas = (double)R * C * 4 / tb / 1e9;
	printf("%-22s gemv  ours %8.1f us %6.1f GB/s (%.0f%% of read bw) | sgemv fp32 %8.1f us %6.1f GB/s | %.2fx\n",
	       qc->name, tq * 1e6, gbs, 100 * gbs / stream_gbs, tb * 1e6, gbs_blas, tb / tq);

	/* prefill GEMM, Mg tokens */
	int greps = quick ? 2 : 3;
	for (int i = 0; i < greps; i++) {
		uint64_t t0 = dp_clock_ns();
		ops->matmul(g, x, 0, &w, (uint32_t)i % copies, y, 0, Mg, false);
		t[i] = (dp_clock_ns() - t0) * 1e-9;
	}
	for (int i = 0; i < greps; i++) {
		uint64_t t0 = dp_clock_ns();
		cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)Mg, (int)R, (int)C, 1.0f, x,
			    (int)C, fw + (size_t)(i % fcopies) * R * C, (int)C, 0.0f, y, (int)R);
		ta[i] = (dp_clock_ns() - t0) * 1e-9;
	}
	double gq = median(t, greps), gb = median(ta, greps);
	double flop = 2.0 * Mg * R * C;
	printf("%-22s gemm%-4u ours %8.2f ms %6.1f GFLOP/s | sgemm fp32 %8.2f ms %6.1f GFLOP/s | %.2fx\n",
	       qc->name, Mg, gq * 1e3, flop / gq / 1e9, gb * 1e3, flop / gb / 1e9, gb / gq);

	printf("RESULT quant-gemv-%s-vs-read-bw ours=%.2f anchor=%.2f ratio=%.3f unit=GB/s better=higher\n",
	       qc->name, gbs, stream_gbs, gbs / stream_gbs);
	printf("RESULT quant-gemv-%s-vs-sgemv ours=%.1f anchor=%.1f ratio=%.3f unit=us better=lower\n",
	       qc->name, tq * 1e6, tb * 1e6, tq / tb);
	printf("RESULT quant-gemm%u-%s-vs-sgemm ours=%.2f anchor=%.2f ratio=%.3f unit=GFLOP/s better=higher\n",
	       Mg, qc->name, flop / gq / 1e9, flop / gb / 1e9, gb / gq);
	fflush(stdout);

	dp_gpu_weight_free(g, &w);
	free(data);
	free(scale);
	free(deq);
	free(fw);
	free(x);
	free(y);
	free(t);
	free(ta);
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
		else if (!strcmp(argv[i], "--quick"))
			quick = true;
		else {
			fprintf(stderr, "usage: bench-quant-kernels [--threads N] [--isa NAME] [--ws MiB] [--quick]\n");
			return 2;
		}
	}
	if (threads < 1 || threads > 64)
		threads = 2;
	if (quick && ws_bytes > ((size_t)256 << 20))
		ws_bytes = (size_t)256 << 20;

	struct dp_gpu *g;
	char err[256] = "";
	struct dp_gpu_opts o = { .threads = threads, .isa = isa };
	if (dp_gpu_new(DP_GPU_CPU, &o, &g, err, sizeof(err)) < 0) {
		fprintf(stderr, "bench-quant-kernels: %s\n", err);
		return 1;
	}
	uint64_t *buf = malloc(ws_bytes);
	if (!buf)
		return 1;
	memset(buf, 1, ws_bytes);
	double stream = stream_read(buf, ws_bytes, quick ? 3 : 8);
	free(buf);
	printf("cpu backend, %d threads, kernels %s, working set %zu MiB; read bandwidth %.1f GB/s\n",
	       threads, dp_gpu_isa_name(dp_gpu_isa_of(g)), ws_bytes >> 20, stream);

	/* V4-Flash shapes: an expert's w1/w3 (2048 x 4096) and w2 (4096 x 2048)
	 * in fp4; a 4096 x 4096 projection in fp8 and in bf16 */
	const struct qcase cases[] = {
		{ "e2m1-2048x4096", DP_DTYPE_E2M1, 2048, 4096 },
		{ "e2m1-4096x2048", DP_DTYPE_E2M1, 4096, 2048 },
		{ "e4m3-4096x4096", DP_DTYPE_E4M3, 4096, 4096 },
		{ "bf16-4096x4096", DP_DTYPE_BF16, 4096, 4096 },
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		int r = run_case(g, &cases[i], stream);
		if (r < 0) {
			fprintf(stderr, "bench-quant-kernels: %s: %s\n", cases[i].name, strerror(-r));
			return 1;
		}
	}
	dp_gpu_free(g);
	return 0;
}
