/* SPDX-License-Identifier: MIT */
/*
 * bench-quant-act — the cpu backend's products in DeepSeek's reference numerics
 * (dp_gpu_weight.act_quant: activations rounded through e4m3, exact block sums;
 * gpu/cpu/qmm-act.c) beside the transformers numerics' products on the same
 * weight (dequantized exactly, fp32 math; gpu/cpu/qmm.c), V4-Flash shapes:
 *
 *   fp8 4096->1024, fp8 1024->32768, fp4 expert 4096->2048, fp8 2048->4096,
 *   M = 1, 4, 64, 512 tokens,
 *
 * the two timed interleaved (one call of each per round, medians), ratio =
 * reference time / transformers time. The two results are also checked to be
 * close (they differ by the activation rounding only): a bench of a wrong kernel
 * is no bench. The weights are one matrix each: small shapes stay in cache.
 * With one thread the times are the thread's CPU time (robust to a loaded host).
 *
 *   bench-quant-act [--threads N] [--isa auto|portable|avx2|avx512] [--quick]
 *                   [--case SUBSTRING] [--m TOKENS]   (only those cases / that M)
 *
 * Ends with RESULT lines (README "Benchmarks").
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/dtype.h"
#include "bench/bench-util.h"
#include "gpu/gpu.h"

static uint64_t seed = 42;
/* One thread: the calling thread's CPU time (the products run on it), which a
 * loaded machine's preemption does not inflate; more: wall time. */
static bool cpu_clock;

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(cpu_clock ? CLOCK_THREAD_CPUTIME_ID : CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

struct qcase {
	const char *name;
	enum dp_dtype dtype;
	uint32_t rows, cols; /* out x in */
};

static const struct qcase cases[] = {
	{ "fp8-4096x1024", DP_DTYPE_E4M3, 1024, 4096 },
	{ "fp8-1024x32768", DP_DTYPE_E4M3, 32768, 1024 },
	{ "fp4-4096x2048", DP_DTYPE_E2M1, 2048, 4096 },
	{ "fp8-2048x4096", DP_DTYPE_E4M3, 4096, 2048 },
};

static void random_weight(enum dp_dtype dt, uint32_t rows, uint32_t cols, uint8_t *data,
			  uint8_t *scale)
{
	size_t nb = (size_t)rows * dp_dtype_bytes(dt, cols);
	for (size_t i = 0; i < nb; i++) {
		data[i] = (uint8_t)splitmix64(&seed);
		if (dt == DP_DTYPE_E4M3 && (data[i] & 0x7f) == 0x7f)
			data[i] ^= 1; /* no NaN codes */
	}
	size_t ns = dp_gpu_weight_scales(dt, rows, cols);
	for (size_t i = 0; i < ns; i++)
		scale[i] = (uint8_t)(119 + splitmix64(&seed) % 3);
}

static int cmp_d(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

static double median(double *v, int n)
{
	qsort(v, (size_t)n, sizeof(double), cmp_d);
	return v[n / 2];
}

static double timed(const struct dp_gpu_ops *ops, struct dp_gpu *g, const float *x,
		    struct dp_gpu_weight *w, bool act, float *y, uint32_t M)
{
	w->act_quant = act;
	double t0 = now_s();
	int r = ops->matmul(g, x, 0, w, 0, y, 0, M, false);
	double t = now_s() - t0;
	return r < 0 ? -1.0 : t;
}

static int run_case(struct dp_gpu *g, const struct qcase *qc, uint32_t M, bool quick)
{
	const struct dp_gpu_ops *ops = dp_gpu_ops(g);
	uint32_t R = qc->rows, C = qc->cols;
	size_t code_b = (size_t)R * dp_dtype_bytes(qc->dtype, C);
	size_t nscale = dp_gpu_weight_scales(qc->dtype, R, C);
	uint8_t *data = malloc(code_b), *scale = malloc(nscale);
	float *x = malloc((size_t)M * C * sizeof(float));
	float *yr = malloc((size_t)M * R * sizeof(float)), *yt = malloc((size_t)M * R * sizeof(float));
	if (!data || !scale || !x || !yr || !yt)
		return -ENOMEM;
	random_weight(qc->dtype, R, C, data, scale);
	for (size_t i = 0; i < (size_t)M * C; i++)
		x[i] = (float)((int)(splitmix64(&seed) % 2001) - 1000) / 1000;
	struct dp_gpu_weight w;
	int r = dp_gpu_weight_upload_as(g, data, scale, qc->dtype, DP_DTYPE_E8M0, 1, R, C, &w);
	if (r < 0)
		return r;

	/* rounds: about 2 s of work at the first call's speed, 3 .. 41 */
	double first = timed(ops, g, x, &w, true, yr, M);
	if (first < 0 || timed(ops, g, x, &w, false, yt, M) < 0)
		return -EINVAL;
	int rounds = (int)((quick ? 0.5 : 2.0) / (first + 1e-6));
	rounds = rounds < 3 ? 3 : rounds > 41 ? 41 : rounds;
	double *tr = malloc(sizeof(double) * (size_t)rounds), *tt = malloc(sizeof(double) * (size_t)rounds);
	if (!tr || !tt)
		return -ENOMEM;
	for (int i = 0; i < rounds; i++) {
		tt[i] = timed(ops, g, x, &w, false, yt, M);
		tr[i] = timed(ops, g, x, &w, true, yr, M);
	}
	/* the two agree up to the activation's e4m3 rounding */
	double amax = 0, dmax = 0;
	for (size_t i = 0; i < (size_t)M * R; i++) {
		amax = fmax(amax, fabs(yt[i]));
		dmax = fmax(dmax, fabs((double)yt[i] - yr[i]));
	}
	double mr = median(tr, rounds) * 1e6, mt = median(tt, rounds) * 1e6;
	printf("%-16s M=%-4u reference %10.1f us  transformers %10.1f us  ratio %6.2f  (max|diff| %.3g of max|y| %.3g, %d rounds)\n",
	       qc->name, M, mr, mt, mr / mt, dmax, amax, rounds);
	printf("RESULT quant-act-%s-m%u-vs-transformers ours=%.1f anchor=%.1f ratio=%.3f unit=us better=lower\n",
	       qc->name, M, mr, mt, mr / mt);
	bool bad = !(dmax <= 0.1 * amax);
	if (bad)
		fprintf(stderr, "bench-quant-act: %s M=%u: the reference product is off the transformers one by %g (max|y| %g)\n",
			qc->name, M, dmax, amax);
	dp_gpu_weight_free(g, &w);
	free(tr);
	free(tt);
	free(data);
	free(scale);
	free(x);
	free(yr);
	free(yt);
	return bad ? -EINVAL : 0;
}

int main(int argc, char **argv)
{
	int threads = 1;
	bool quick = false;
	enum dp_gpu_isa isa = DP_GPU_ISA_AUTO;
	const char *only = NULL;
	uint32_t only_m = 0;
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--threads") && i + 1 < argc) {
			threads = atoi(argv[++i]);
			if (threads < 1 || threads > 256) {
				fprintf(stderr, "bench-quant-act: --threads %s: 1 .. 256\n", argv[i]);
				return 2;
			}
		} else if (!strcmp(argv[i], "--isa") && i + 1 < argc) {
			if (dp_gpu_isa_parse(argv[++i], &isa) < 0) {
				fprintf(stderr, "bench-quant-act: --isa %s: auto, portable, avx2 or avx512\n", argv[i]);
				return 2;
			}
		} else if (!strcmp(argv[i], "--case") && i + 1 < argc) {
			only = argv[++i];
		} else if (!strcmp(argv[i], "--m") && i + 1 < argc) {
			only_m = (uint32_t)atoi(argv[++i]);
			if (only_m < 1 || only_m > 4096) {
				fprintf(stderr, "bench-quant-act: --m %s: 1 .. 4096\n", argv[i]);
				return 2;
			}
		} else if (!strcmp(argv[i], "--quick")) {
			quick = true;
		} else {
			fprintf(stderr, "usage: bench-quant-act [--threads N] [--isa NAME] [--quick] [--case SUBSTRING] [--m TOKENS]\n");
			return 2;
		}
	}
	struct dp_gpu *g;
	char err[256];
	struct dp_gpu_opts o = { .threads = threads, .isa = isa };
	if (dp_gpu_new(DP_GPU_CPU, &o, &g, err, sizeof(err)) < 0) {
		fprintf(stderr, "bench-quant-act: %s\n", err);
		return 1;
	}
	cpu_clock = threads == 1;
	printf("bench-quant-act: %d thread(s), kernel path %s, %s\n", threads,
	       dp_gpu_isa_name(dp_gpu_isa_of(g)), cpu_clock ? "thread CPU time" : "wall time");
	uint32_t Ms[] = { 1, 4, 64, 512 };
	size_t nm = quick ? 3 : 4;
	if (only_m) {
		Ms[0] = only_m;
		nm = 1;
	}
	int ret = 0;
	for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++)
		for (size_t m = 0; m < nm; m++) {
			if (only && !strstr(cases[c].name, only))
				continue;
			int r = run_case(g, &cases[c], Ms[m], quick);
			if (r < 0) {
				fprintf(stderr, "bench-quant-act: %s M=%u: %s\n", cases[c].name, Ms[m], strerror(-r));
				ret = 1;
			}
		}
	dp_gpu_free(g);
	return ret;
}
