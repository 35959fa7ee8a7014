/* SPDX-License-Identifier: MIT */
/*
 * tests/gpu/gpu-test.h — helpers of the GPU suites: a cpu and a cuda backend
 * side by side, buffers holding the same data on both, comparisons, and a
 * main() that skips the whole suite (exit 77, meson's skip) when there is no
 * usable CUDA device or the build has no CUDA. Test-only (static, header-only).
 *
 * Criterion runs each test in a fresh process (BoxFort re-executes the
 * binary), so a test may set DP_CUDA_WEIGHTS before creating its backends.
 *
 * DP_GPU_TEST_SELFTEST=1 runs the suites without a GPU, the cpu backend
 * standing in for cuda: it checks the tests themselves (buffers, streams,
 * checkpoint copies, comparisons), not the cuda backend; the cuda-specific
 * tests skip.
 */
#ifndef DP_TESTS_GPU_TEST_H
#define DP_TESTS_GPU_TEST_H

#include <criterion/criterion.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/dtype.h"
#include "gpu/gpu.h"

/* ---- the skip ------------------------------------------------------------- */

static inline bool gt_selftest(void)
{
	const char *v = getenv("DP_GPU_TEST_SELFTEST");
	return v && v[0] == '1';
}

/* The backend under test: cuda, or cpu in a self-test. */
static inline enum dp_gpu_kind gt_cuda_kind(void)
{
	return gt_selftest() ? DP_GPU_CPU : DP_GPU_CUDA;
}

#define GT_CUDA_ONLY()                                                          \
	do {                                                                     \
		if (gt_selftest())                                               \
			cr_skip_test("checks the cuda backend itself (self-test)"); \
	} while (0)

#define DP_GPU_TEST_MAIN                                                             \
	int main(int argc, char *argv[])                                             \
	{                                                                            \
		struct dp_gpu_device_info info;                                      \
		char why[256] = "";                                                  \
		if (gt_selftest()) {                                                 \
			printf("SELF-TEST: the cpu backend stands in for cuda\n");   \
		} else if (dp_gpu_probe(&info, 1, why, sizeof(why)) <= 0) {          \
			printf("SKIP: no CUDA device: %s\n", why[0] ? why : "none"); \
			return 77;                                                   \
		} else {                                                             \
			printf("device: %s (cc %d.%d, %llu MiB)\n", info.name,       \
			       info.cc_major, info.cc_minor,                         \
			       (unsigned long long)(info.total_mem >> 20));          \
		}                                                                    \
		struct criterion_test_set *tests = criterion_initialize();           \
		int result = 0;                                                      \
		if (criterion_handle_args(argc, argv, true))                         \
			result = !criterion_run_all_tests(tests);                    \
		criterion_finalize(tests);                                           \
		return result;                                                       \
	}

/* ---- random data ------------------------------------------------------------ */

static inline uint64_t gt_next(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/* uniform in [lo, hi) */
static inline float gt_uniform(uint64_t *s, float lo, float hi)
{
	return lo + (hi - lo) * (float)((gt_next(s) >> 40) * (1.0 / 16777216.0));
}

static inline float *gt_rand(uint64_t *s, size_t n, float lo, float hi)
{
	float *v = malloc((n ? n : 1) * sizeof(float));
	cr_assert_not_null(v);
	for (size_t i = 0; i < n; i++)
		v[i] = gt_uniform(s, lo, hi);
	return v;
}

/* ---- the two backends ---------------------------------------------------------- */

struct gt_pair {
	struct dp_gpu *c, *g; /* cpu, cuda */
	const struct dp_gpu_ops *oc, *og;
	bool f32; /* cuda weights are fp32 */
};

static inline void gt_open(struct gt_pair *p, bool f32_weights)
{
	char err[512] = "";
	memset(p, 0, sizeof(*p));
	setenv("DP_CUDA_WEIGHTS", f32_weights ? "f32" : "bf16", 1);
	/* the self-test's reference runs on one thread and its stand-in on the
	 * pool of two threads: ops split over threads must agree with
	 * the unsplit ones */
	struct dp_gpu_opts one = {.threads = 1}, two = {.threads = 2};
	cr_assert_eq(dp_gpu_new(DP_GPU_CPU, gt_selftest() ? &one : NULL, &p->c, err, sizeof(err)), 0,
	             "cpu: %s", err);
	cr_assert_eq(dp_gpu_new(gt_cuda_kind(), gt_selftest() ? &two : NULL, &p->g, err, sizeof(err)),
	             0, "cuda: %s", err);
	p->oc = dp_gpu_ops(p->c);
	p->og = dp_gpu_ops(p->g);
	p->f32 = f32_weights;
}

static inline void gt_close(struct gt_pair *p)
{
	dp_gpu_free(p->g);
	dp_gpu_free(p->c);
}

/* The same bytes in both backends' memory. */
struct gt_buf {
	void *c, *g;
	size_t bytes;
};

static inline struct gt_buf gt_buf_new(struct gt_pair *p, const void *host, size_t bytes)
{
	struct gt_buf b = {0};
	b.bytes = bytes ? bytes : 4;
	b.c = dp_gpu_alloc(p->c, b.bytes, DP_GPU_MEM_SCRATCH);
	b.g = dp_gpu_alloc(p->g, b.bytes, DP_GPU_MEM_SCRATCH);
	cr_assert(b.c && b.g, "alloc %zu bytes", b.bytes);
	if (host && bytes) {
		cr_assert_eq(dp_gpu_upload(p->c, b.c, host, bytes), 0);
		cr_assert_eq(dp_gpu_upload(p->g, b.g, host, bytes), 0);
	}
	return b;
}

static inline struct gt_buf gt_floats(struct gt_pair *p, const float *host, size_t n)
{
	return gt_buf_new(p, host, n * sizeof(float));
}

static inline void gt_buf_free(struct gt_pair *p, struct gt_buf *b)
{
	dp_gpu_dealloc(p->c, b->c, b->bytes, DP_GPU_MEM_SCRATCH);
	dp_gpu_dealloc(p->g, b->g, b->bytes, DP_GPU_MEM_SCRATCH);
	memset(b, 0, sizeof(*b));
}

/* Both sides downloaded (malloc'd; free them). */
static inline void gt_fetch(struct gt_pair *p, const struct gt_buf *b, size_t bytes, void **ret_c,
                            void **ret_g)
{
	void *hc = malloc(bytes ? bytes : 1), *hg = malloc(bytes ? bytes : 1);
	cr_assert(hc && hg);
	cr_assert_eq(dp_gpu_download(p->c, hc, b->c, bytes), 0);
	cr_assert_eq(dp_gpu_download(p->g, hg, b->g, bytes), 0, "cuda download (a kernel failed?): %s",
	             dp_gpu_last_error(p->g));
	*ret_c = hc;
	*ret_g = hg;
}

/* max |g - c| / max(max |c|, floor); logs and returns it. */
static inline double gt_rel_err(const float *c, const float *g, size_t n, double floor_,
                                const char *what)
{
	double maxref = floor_, maxdiff = 0;
	size_t worst = 0;
	for (size_t i = 0; i < n; i++) {
		maxref = fmax(maxref, fabs(c[i]));
		double d = fabs((double)g[i] - c[i]);
		if (!(d <= maxdiff)) { /* NaN counts as the worst */
			maxdiff = isnan(d) ? INFINITY : d;
			worst = i;
		}
	}
	double rel = maxdiff / maxref;
	cr_log_info("%s: max |diff| %.3g at %zu (cpu %.7g, cuda %.7g), relative %.3g", what,
	            maxdiff, worst, n ? c[worst] : 0.0, n ? g[worst] : 0.0, rel);
	return rel;
}

/* Compare n floats of a buffer on both sides within tol (relative to the
 * largest |cpu value|, at least floor_). */
static inline void gt_expect_close(struct gt_pair *p, const struct gt_buf *b, size_t n, double tol,
                                   double floor_, const char *what)
{
	float *hc, *hg;
	/* a kernel's fault surfaces at the next sync: name the op it came from */
	cr_assert_eq(dp_gpu_sync(p->g), 0, "%s: the cuda side failed (kernel error at the sync): %s",
	             what, dp_gpu_last_error(p->g));
	gt_fetch(p, b, n * sizeof(float), (void **)&hc, (void **)&hg);
	double rel = gt_rel_err(hc, hg, n, floor_, what);
	cr_expect(rel <= tol, "%s: relative error %.3g > %.3g", what, rel, tol);
	free(hc);
	free(hg);
}

/* Weights: the same matrices on both (bf16-exact values when the cuda side
 * stores bf16, so both compute with identical weights). */
struct gt_weight {
	struct dp_gpu_weight c, g;
};

static inline struct gt_weight gt_weight_new(struct gt_pair *p, const float *host, uint32_t count,
                                             uint32_t rows, uint32_t cols)
{
	struct gt_weight w;
	size_t n = (size_t)count * rows * cols;
	if (p->f32) {
		cr_assert_eq(
		    dp_gpu_weight_upload(p->c, host, DP_DTYPE_F32, count, rows, cols, &w.c), 0);
		cr_assert_eq(
		    dp_gpu_weight_upload(p->g, host, DP_DTYPE_F32, count, rows, cols, &w.g), 0);
	} else {
		uint16_t *h = malloc(n * 2);
		cr_assert_not_null(h);
		for (size_t i = 0; i < n; i++)
			h[i] = dp_f32_to_bf16(host[i]);
		cr_assert_eq(dp_gpu_weight_upload(p->c, h, DP_DTYPE_BF16, count, rows, cols, &w.c),
		             0);
		cr_assert_eq(dp_gpu_weight_upload(p->g, h, DP_DTYPE_BF16, count, rows, cols, &w.g),
		             0);
		free(h);
	}
	return w;
}

static inline void gt_weight_free(struct gt_pair *p, struct gt_weight *w)
{
	dp_gpu_weight_free(p->c, &w->c);
	dp_gpu_weight_free(p->g, &w->g);
}

/* A paged stream of n entries of dim floats, per_page entries a page, filled
 * from host data, on both backends. */
struct gt_stream {
	struct dp_gpu_stream c, g;
	struct gt_buf *pages; /* one per page */
	struct gt_buf table;
	uint32_t n_pages;
};

static inline void gt_stream_new(struct gt_pair *p, struct gt_stream *s, const float *data,
                                 uint32_t n, uint32_t dim, uint32_t per_page)
{
	memset(s, 0, sizeof(*s));
	s->n_pages = n ? (n + per_page - 1) / per_page : 1;
	s->pages = calloc(s->n_pages, sizeof(*s->pages));
	void **tc = calloc(s->n_pages, sizeof(void *)), **tg = calloc(s->n_pages, sizeof(void *));
	cr_assert(s->pages && tc && tg);
	for (uint32_t i = 0; i < s->n_pages; i++) {
		uint32_t first = i * per_page, cnt = n - first < per_page ? n - first : per_page;
		s->pages[i] = gt_buf_new(p, NULL, (size_t)per_page * dim * sizeof(float));
		if (n && cnt) {
			cr_assert_eq(dp_gpu_upload(p->c, s->pages[i].c, data + (size_t)first * dim,
			                           (size_t)cnt * dim * sizeof(float)),
			             0);
			cr_assert_eq(dp_gpu_upload(p->g, s->pages[i].g, data + (size_t)first * dim,
			                           (size_t)cnt * dim * sizeof(float)),
			             0);
		}
		tc[i] = s->pages[i].c;
		tg[i] = s->pages[i].g;
	}
	s->table = gt_buf_new(p, NULL, s->n_pages * sizeof(void *));
	cr_assert_eq(dp_gpu_upload(p->c, s->table.c, tc, s->n_pages * sizeof(void *)), 0);
	cr_assert_eq(dp_gpu_upload(p->g, s->table.g, tg, s->n_pages * sizeof(void *)), 0);
	free(tc);
	free(tg);
	s->c =
	    (struct dp_gpu_stream){.pages = s->table.c, .per_page = per_page, .dim = dim, .n = n};
	s->g =
	    (struct dp_gpu_stream){.pages = s->table.g, .per_page = per_page, .dim = dim, .n = n};
}

static inline void gt_stream_free(struct gt_pair *p, struct gt_stream *s)
{
	for (uint32_t i = 0; i < s->n_pages; i++)
		gt_buf_free(p, &s->pages[i]);
	gt_buf_free(p, &s->table);
	free(s->pages);
}

#endif /* DP_TESTS_GPU_TEST_H */
