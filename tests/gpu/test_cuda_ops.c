/* SPDX-License-Identifier: MIT */
/*
 * The cuda backend against the cpu backend, op by op: random inputs, the same
 * on both, outputs compared. Skips (77) without a CUDA device.
 *
 * Tolerances (relative to the largest |cpu output| of the case, floored):
 *   fp32 weights, products            2e-5  (fp32 sums in another order)
 *   bf16 weights, GEMV (M <= 8)       2e-5  (exact bf16 weights, fp32 x)
 *   bf16 weights, cuBLAS (M > 8)      1e-4  (activations split hi + lo bf16)
 *   norms, rope, mHC, compress        1e-5  (double reductions on both)
 *   attention                         2e-5  (fp32 here, double on the cpu)
 *   index top-k, route indices        exact (the selection, ties included)
 */
#include <errno.h>

#include "gpu-test.h"
#include "base/macros.h"

DP_GPU_TEST_MAIN

/* ---- memory ----------------------------------------------------------------- */

Test(cuda_mem, oversized_allocation_fails_cleanly_and_accounting_tracks_classes)
{
	GT_CUDA_ONLY();
	struct gt_pair p;
	gt_open(&p, false);
	struct dp_gpu_mem_stats st;
	dp_gpu_mem_stats(p.g, &st);
	cr_expect_gt(st.device_total, 0);
	cr_expect_gt(st.device_free, 0);
	uint64_t before = st.bytes[DP_GPU_MEM_STATE];
	void *big = dp_gpu_alloc(p.g, (size_t)1 << 50, DP_GPU_MEM_STATE); /* 1 PiB */
	cr_expect_null(big, "a 1 PiB allocation must fail, not abort");
	void *a = dp_gpu_alloc(p.g, 1 << 20, DP_GPU_MEM_STATE);
	cr_assert_not_null(a);
	dp_gpu_mem_stats(p.g, &st);
	cr_expect_eq(st.bytes[DP_GPU_MEM_STATE], before + (1 << 20));
	/* zeroed as promised */
	uint32_t *h = malloc(1 << 20);
	cr_assert_eq(dp_gpu_download(p.g, h, a, 1 << 20), 0);
	uint32_t acc = 0;
	for (size_t i = 0; i < (1 << 18); i++)
		acc |= h[i];
	cr_expect_eq(acc, 0);
	free(h);
	dp_gpu_dealloc(p.g, a, 1 << 20, DP_GPU_MEM_STATE);
	dp_gpu_mem_stats(p.g, &st);
	cr_expect_eq(st.bytes[DP_GPU_MEM_STATE], before);
	/* the backend still works after the failure */
	cr_expect_eq(dp_gpu_sync(p.g), 0);
	gt_close(&p);
}

Test(cuda_mem, upload_download_copy_zero_and_overlapping_copy_behave_like_the_cpu)
{
	struct gt_pair p;
	gt_open(&p, false);
	uint64_t s = 1;
	size_t n = 10000;
	float *x = gt_rand(&s, n, -1, 1);
	struct gt_buf b = gt_floats(&p, x, n);
	/* overlapping copies both ways (memmove semantics), then a zeroed range */
	cr_assert_eq(dp_gpu_copy(p.c, (float *)b.c + 100, b.c, 5000 * sizeof(float)), 0);
	cr_assert_eq(dp_gpu_copy(p.g, (float *)b.g + 100, b.g, 5000 * sizeof(float)), 0);
	cr_assert_eq(dp_gpu_copy(p.c, b.c, (float *)b.c + 37, 3000 * sizeof(float)), 0);
	cr_assert_eq(dp_gpu_copy(p.g, b.g, (float *)b.g + 37, 3000 * sizeof(float)), 0);
	cr_assert_eq(dp_gpu_zero(p.c, (float *)b.c + 7000, 999 * sizeof(float)), 0);
	cr_assert_eq(dp_gpu_zero(p.g, (float *)b.g + 7000, 999 * sizeof(float)), 0);
	float *hc, *hg;
	gt_fetch(&p, &b, n * sizeof(float), (void **)&hc, (void **)&hg);
	cr_expect_eq(memcmp(hc, hg, n * sizeof(float)), 0);
	free(hc);
	free(hg);
	free(x);
	gt_buf_free(&p, &b);
	gt_close(&p);
}

Test(cuda_mem, weight_fill_converts_rows_to_bf16_with_round_to_nearest_even)
{
	GT_CUDA_ONLY();
	struct gt_pair p;
	gt_open(&p, false);
	uint64_t s = 2;
	uint32_t rows = 7, cols = 33;
	struct dp_gpu_weight w;
	cr_assert_eq(dp_gpu_weight_alloc(p.g, 2, rows, cols, &w), 0);
	cr_expect_eq(w.dtype, DP_DTYPE_BF16);
	float *x = gt_rand(&s, (size_t)3 * cols, -3, 3);
	cr_assert_eq(dp_gpu_weight_fill(p.g, &w, 1, 2, 3, x, DP_DTYPE_F32), 0);
	uint16_t *h = malloc((size_t)2 * rows * cols * 2);
	cr_assert_eq(dp_gpu_download(p.g, h, w.data, (size_t)2 * rows * cols * 2), 0);
	for (uint32_t r = 0; r < rows; r++)
		for (uint32_t k = 0; k < cols; k++) {
			uint16_t got = h[((size_t)rows + r) * cols + k];
			uint16_t want =
			    r >= 2 && r < 5 ? dp_f32_to_bf16(x[(size_t)(r - 2) * cols + k]) : 0;
			cr_expect_eq(got, want, "row %u col %u", r, k);
		}
	free(h);
	free(x);
	dp_gpu_weight_free(p.g, &w);
	gt_close(&p);
}

/* ---- matmul ----------------------------------------------------------------- */

struct mm_case {
	uint32_t M, rows, cols, ldx_pad, ldy_pad, count, index;
	bool accumulate;
};

static void matmul_case(bool f32, const struct mm_case *k, uint64_t seed)
{
	struct gt_pair p;
	gt_open(&p, f32);
	uint64_t s = seed;
	uint32_t ldx = k->cols + k->ldx_pad, ldy = k->rows + k->ldy_pad;
	float *wh = gt_rand(&s, (size_t)k->count * k->rows * k->cols, -1, 1);
	float *xh = gt_rand(&s, (size_t)k->M * ldx, -2, 2);
	float *yh = gt_rand(&s, (size_t)k->M * ldy, -1, 1);
	struct gt_weight w = gt_weight_new(&p, wh, k->count, k->rows, k->cols);
	struct gt_buf x = gt_floats(&p, xh, (size_t)k->M * ldx);
	struct gt_buf y = gt_floats(&p, yh, (size_t)k->M * ldy);
	uint32_t lx = k->ldx_pad ? ldx : 0, ly = k->ldy_pad ? ldy : 0;
	cr_assert_eq(p.oc->matmul(p.c, x.c, lx, &w.c, k->index, y.c, ly, k->M, k->accumulate), 0);
	cr_assert_eq(p.og->matmul(p.g, x.g, lx, &w.g, k->index, y.g, ly, k->M, k->accumulate), 0);
	char what[160];
	snprintf(what, sizeof(what), "matmul %s M=%u rows=%u cols=%u ldx=%u ldy=%u acc=%d",
	         f32 ? "f32" : "bf16", k->M, k->rows, k->cols, lx, ly, k->accumulate);
	double tol = f32 || k->M <= 8 ? 2e-5 : 1e-4;
	gt_expect_close(&p, &y, (size_t)k->M * ldy, tol, 1e-3, what);
	gt_buf_free(&p, &x);
	gt_buf_free(&p, &y);
	gt_weight_free(&p, &w);
	free(wh);
	free(xh);
	free(yh);
	gt_close(&p);
}

static const struct mm_case mm_cases[] = {
    {1, 37, 64, 0, 0, 1, 0, false},    {1, 256, 1024, 0, 0, 3, 2, false},
    {1, 29, 35, 0, 0, 1, 0, true},     {3, 100, 99, 5, 3, 1, 0, false},
    {5, 64, 128, 4, 0, 2, 1, true},    {8, 64, 128, 0, 0, 1, 0, false},
    {9, 50, 48, 0, 0, 1, 0, false},    {33, 130, 200, 8, 2, 2, 1, true},
    {300, 64, 512, 0, 0, 1, 0, false}, {17, 1, 7, 0, 0, 1, 0, false},
    /* rows not a multiple of the 8 warps of a GEMV block, vector loads */
    {8, 45, 136, 0, 0, 1, 0, true},    {2, 13, 4104, 8, 5, 1, 0, false},
    /* the last of 64 stacked matrices (the experts' offset) */
    {1, 24, 40, 0, 0, 64, 63, false},  {12, 24, 40, 0, 0, 64, 63, false},
};

Test(cuda_matmul, f32_weights_match_the_cpu_for_gemv_and_gemm_shapes_strides_and_accumulate)
{
	for (size_t i = 0; i < DP_ARRAY_SIZE(mm_cases); i++)
		matmul_case(true, &mm_cases[i], 100 + i);
}

Test(cuda_matmul, bf16_weights_match_the_cpu_on_the_same_rounded_weights)
{
	for (size_t i = 0; i < DP_ARRAY_SIZE(mm_cases); i++)
		matmul_case(false, &mm_cases[i], 200 + i);
}

Test(cuda_matmul, a_weight_of_the_wrong_dtype_or_short_stride_is_rejected)
{
	GT_CUDA_ONLY();
	struct gt_pair p;
	gt_open(&p, false);
	uint64_t s = 3;
	float *wh = gt_rand(&s, 16 * 16, -1, 1);
	struct gt_weight w = gt_weight_new(&p, wh, 1, 16, 16);
	struct gt_buf x = gt_floats(&p, wh, 16 * 16);
	struct dp_gpu_weight bad = w.g;
	bad.dtype = DP_DTYPE_F32;
	cr_expect_eq(p.og->matmul(p.g, x.g, 0, &bad, 0, x.g, 0, 1, false), -EINVAL);
	cr_expect_eq(p.og->matmul(p.g, x.g, 8, &w.g, 0, x.g, 0, 1, false), -EINVAL);
	cr_expect_eq(p.og->matmul(p.g, x.g, 0, &w.g, 1, x.g, 0, 1, false), -EINVAL);
	gt_buf_free(&p, &x);
	gt_weight_free(&p, &w);
	free(wh);
	gt_close(&p);
}

/* ---- embed, norms, rope, elementwise ------------------------------------------ */

Test(cuda_elem, embed_gathers_rows_in_both_weight_dtypes)
{
	for (int f32 = 0; f32 < 2; f32++) {
		struct gt_pair p;
		gt_open(&p, f32);
		uint64_t s = 4;
		uint32_t V = 300, D = 72, T = 9;
		float *tab = gt_rand(&s, (size_t)V * D, -1, 1);
		int32_t ids[9] = {0, 299, 5, 5, 17, 123, 1, 298, 64};
		struct gt_weight w = gt_weight_new(&p, tab, 1, V, D);
		struct gt_buf bid = gt_buf_new(&p, ids, sizeof(ids));
		struct gt_buf y = gt_floats(&p, NULL, (size_t)T * D);
		cr_assert_eq(p.oc->embed(p.c, &w.c, bid.c, T, y.c), 0);
		cr_assert_eq(p.og->embed(p.g, &w.g, bid.g, T, y.g), 0);
		gt_expect_close(&p, &y, (size_t)T * D, 0, 1, f32 ? "embed f32" : "embed bf16");
		gt_buf_free(&p, &bid);
		gt_buf_free(&p, &y);
		gt_weight_free(&p, &w);
		free(tab);
		gt_close(&p);
	}
}

Test(cuda_elem, rmsnorm_with_and_without_gain_and_in_place)
{
	struct gt_pair p;
	gt_open(&p, false);
	uint64_t s = 5;
	uint32_t dims[] = {16, 100, 512, 4096}, rows = 37;
	for (size_t i = 0; i < 4; i++) {
		uint32_t dim = dims[i];
		float *xh = gt_rand(&s, (size_t)rows * dim, -3, 3),
		      *wh = gt_rand(&s, dim, 0.6f, 1.4f);
		struct gt_buf x = gt_floats(&p, xh, (size_t)rows * dim), w = gt_floats(&p, wh, dim);
		struct gt_buf y = gt_floats(&p, NULL, (size_t)rows * dim);
		cr_assert_eq(p.oc->rmsnorm(p.c, x.c, w.c, y.c, rows, dim, 1e-6f), 0);
		cr_assert_eq(p.og->rmsnorm(p.g, x.g, w.g, y.g, rows, dim, 1e-6f), 0);
		gt_expect_close(&p, &y, (size_t)rows * dim, 1e-6, 1, "rmsnorm weighted");
		cr_assert_eq(p.oc->rmsnorm(p.c, x.c, NULL, x.c, rows, dim, 1e-5f), 0);
		cr_assert_eq(p.og->rmsnorm(p.g, x.g, NULL, x.g, rows, dim, 1e-5f), 0);
		gt_expect_close(&p, &x, (size_t)rows * dim, 1e-6, 1,
		                "rmsnorm unweighted, in place");
		gt_buf_free(&p, &x);
		gt_buf_free(&p, &w);
		gt_buf_free(&p, &y);
		free(xh);
		free(wh);
	}
	gt_close(&p);
}

Test(cuda_elem, rope_forward_and_inverse_at_large_positions_with_a_factor)
{
	struct gt_pair p;
	gt_open(&p, false);
	uint64_t s = 6;
	uint32_t rows = 13, heads = 3, hd = 40, rd = 16;
	float *xh = gt_rand(&s, (size_t)rows * heads * hd, -1, 1);
	float inv[8];
	for (int i = 0; i < 8; i++)
		inv[i] = powf(160000.0f, -(float)(2 * i) / rd);
	int64_t pos[13];
	for (int i = 0; i < 13; i++)
		pos[i] = i < 6 ? i : (int64_t)1000003 * i;
	struct gt_buf x = gt_floats(&p, xh, (size_t)rows * heads * hd), fi = gt_floats(&p, inv, 8);
	struct gt_buf bp = gt_buf_new(&p, pos, sizeof(pos));
	for (int inverse = 0; inverse < 2; inverse++) {
		cr_assert_eq(p.oc->rope(p.c, x.c, rows, heads, hd, rd, bp.c, fi.c, 1.25f, inverse),
		             0);
		cr_assert_eq(p.og->rope(p.g, x.g, rows, heads, hd, rd, bp.g, fi.g, 1.25f, inverse),
		             0);
		gt_expect_close(&p, &x, (size_t)rows * heads * hd, 1e-6, 1, "rope");
	}
	gt_buf_free(&p, &x);
	gt_buf_free(&p, &fi);
	gt_buf_free(&p, &bp);
	free(xh);
	gt_close(&p);
}

Test(cuda_elem, hc_expand_swiglu_add_and_gather_rows)
{
	struct gt_pair p;
	gt_open(&p, false);
	uint64_t s = 7;
	uint32_t T = 11, n = 4, D = 50, I = 24;
	float *xh = gt_rand(&s, (size_t)T * 2 * I * 2, -12, 12);
	struct gt_buf x = gt_floats(&p, xh, (size_t)T * 2 * I * 2);
	struct gt_buf X = gt_floats(&p, NULL, (size_t)T * n * D);
	cr_assert_eq(p.oc->hc_expand(p.c, x.c, X.c, T, n, D), 0);
	cr_assert_eq(p.og->hc_expand(p.g, x.g, X.g, T, n, D), 0);
	gt_expect_close(&p, &X, (size_t)T * n * D, 0, 1, "hc_expand");
	struct gt_buf h = gt_floats(&p, NULL, (size_t)T * I);
	cr_assert_eq(p.oc->swiglu(p.c, x.c, (float *)x.c + I, h.c, T, I, 2 * I, 10.0f), 0);
	cr_assert_eq(p.og->swiglu(p.g, x.g, (float *)x.g + I, h.g, T, I, 2 * I, 10.0f), 0);
	gt_expect_close(&p, &h, (size_t)T * I, 1e-6, 1, "swiglu, limit 10");
	cr_assert_eq(p.oc->swiglu(p.c, x.c, (float *)x.c + I, h.c, T, I, 2 * I, 1.5f), 0);
	cr_assert_eq(p.og->swiglu(p.g, x.g, (float *)x.g + I, h.g, T, I, 2 * I, 1.5f), 0);
	gt_expect_close(&p, &h, (size_t)T * I, 1e-6, 1, "swiglu, limit 1.5");
	cr_assert_eq(p.oc->add(p.c, X.c, x.c, (size_t)T * n * D / 2), 0);
	cr_assert_eq(p.og->add(p.g, X.g, x.g, (size_t)T * n * D / 2), 0);
	gt_expect_close(&p, &X, (size_t)T * n * D, 0, 1, "add");
	/* rows of 13 floats out of stride 50 into stride 20, and an overlapping
	 * gather inside one buffer */
	cr_assert_eq(p.oc->gather_rows(p.c, h.c, X.c, 9, 20, 50, 13), 0);
	cr_assert_eq(p.og->gather_rows(p.g, h.g, X.g, 9, 20, 50, 13), 0);
	gt_expect_close(&p, &h, (size_t)T * I, 0, 1, "gather_rows");
	cr_assert_eq(p.oc->gather_rows(p.c, X.c, (float *)X.c + 60, 5, 50, 50, 40), 0);
	cr_assert_eq(p.og->gather_rows(p.g, X.g, (float *)X.g + 60, 5, 50, 50, 40), 0);
	gt_expect_close(&p, &X, (size_t)T * n * D, 0, 1, "gather_rows, overlapping");
	gt_buf_free(&p, &x);
	gt_buf_free(&p, &X);
	gt_buf_free(&p, &h);
	free(xh);
	gt_close(&p);
}

/* ---- mHC --------------------------------------------------------------------- */

static void mhc_case(uint32_t T, uint32_t n, uint32_t D, uint32_t iters, float heps, uint64_t seed)
{
	struct gt_pair p;
	gt_open(&p, false);
	uint64_t s = seed;
	uint32_t rows = (2 + n) * n;
	float *Xh = gt_rand(&s, (size_t)T * n * D, -2, 2);
	float *fnh = gt_rand(&s, (size_t)rows * n * D, -0.05f, 0.05f);
	float *bh = gt_rand(&s, rows, -1, 1), sc[3] = {0.7f, 1.3f, 0.9f};
	float *oh = gt_rand(&s, (size_t)T * D, -1, 1);
	struct gt_buf X = gt_floats(&p, Xh, (size_t)T * n * D),
	              fn = gt_floats(&p, fnh, (size_t)rows * n * D);
	struct gt_buf base = gt_floats(&p, bh, rows), scale = gt_floats(&p, sc, 3);
	struct gt_buf o = gt_floats(&p, oh, (size_t)T * D);
	struct gt_buf x = gt_floats(&p, NULL, (size_t)T * D),
	              post = gt_floats(&p, NULL, (size_t)T * n);
	struct gt_buf comb = gt_floats(&p, NULL, (size_t)T * n * n);
	cr_assert_eq(p.oc->mhc_pre(p.c, X.c, fn.c, base.c, scale.c, T, n, D, 1e-6f, heps, iters,
	                           x.c, post.c, comb.c),
	             0);
	cr_assert_eq(p.og->mhc_pre(p.g, X.g, fn.g, base.g, scale.g, T, n, D, 1e-6f, heps, iters,
	                           x.g, post.g, comb.g),
	             0);
	char what[96];
	snprintf(what, sizeof(what), "mhc_pre T=%u n=%u D=%u iters=%u", T, n, D, iters);
	gt_expect_close(&p, &comb, (size_t)T * n * n, 1e-5, 1e-3, what);
	gt_expect_close(&p, &post, (size_t)T * n, 1e-5, 1e-3, what);
	gt_expect_close(&p, &x, (size_t)T * D, 1e-5, 1e-3, what);
	cr_assert_eq(p.oc->mhc_post(p.c, X.c, o.c, post.c, comb.c, T, n, D), 0);
	cr_assert_eq(p.og->mhc_post(p.g, X.g, o.g, post.g, comb.g, T, n, D), 0);
	gt_expect_close(&p, &X, (size_t)T * n * D, 1e-5, 1e-3, "mhc_post");
	/* hc_head: fn of n rows (the first n of fn), one scale */
	struct gt_buf y = gt_floats(&p, NULL, (size_t)T * D);
	cr_assert_eq(p.oc->hc_head(p.c, X.c, fn.c, base.c, scale.c, T, n, D, 1e-6f, heps, y.c), 0);
	cr_assert_eq(p.og->hc_head(p.g, X.g, fn.g, base.g, scale.g, T, n, D, 1e-6f, heps, y.g), 0);
	gt_expect_close(&p, &y, (size_t)T * D, 1e-5, 1e-3, "hc_head");
	struct gt_buf *all[] = {&X, &fn, &base, &scale, &o, &x, &post, &comb, &y};
	for (size_t i = 0; i < DP_ARRAY_SIZE(all); i++)
		gt_buf_free(&p, all[i]);
	free(Xh);
	free(fnh);
	free(bh);
	free(oh);
	gt_close(&p);
}

Test(cuda_mhc, pre_post_and_head_match_for_decode_prefill_and_odd_stream_counts)
{
	mhc_case(1, 4, 4096, 20, 1e-6f, 11); /* decode, V4 sizes */
	mhc_case(40, 4, 256, 20, 1e-6f, 12); /* prefill: eight rows a block */
	mhc_case(7, 2, 24, 6, 1e-2f, 13);    /* the alt parity config */
	mhc_case(3, 16, 32, 3, 1e-6f, 14);   /* the most streams */
	mhc_case(33, 3, 50, 1, 1e-6f, 15);   /* one Sinkhorn round */
}

/* ---- routing and MoE --------------------------------------------------------- */

static void route_case(enum dp_gpu_score_fn fn, bool with_bias, bool hash, bool ties, uint32_t T,
                       uint32_t E, uint32_t k, uint64_t seed)
{
	struct gt_pair p;
	gt_open(&p, false);
	uint64_t s = seed;
	uint32_t V = 50;
	float *lg = gt_rand(&s, (size_t)T * E, -4, 4), *bias = gt_rand(&s, E, -0.5f, 0.5f);
	if (ties) /* groups of equal logits: the lower expert must win */
		for (size_t i = 0; i < (size_t)T * E; i++)
			lg[i] = (float)((int)(lg[i] * 1.5f)) / 2;
	int32_t *tid = malloc((size_t)V * k * sizeof(int32_t)), *ids = malloc(T * sizeof(int32_t));
	for (uint32_t v = 0; v < V; v++)
		for (uint32_t j = 0; j < k; j++)
			tid[v * k + j] = (int32_t)((v * 7 + j * 3) % E);
	for (uint32_t t = 0; t < T; t++)
		ids[t] = (int32_t)(gt_next(&s) % V);
	struct gt_buf L = gt_floats(&p, lg, (size_t)T * E), B = gt_floats(&p, bias, E);
	struct gt_buf TI = gt_buf_new(&p, tid, (size_t)V * k * 4), I = gt_buf_new(&p, ids, T * 4);
	struct gt_buf idx = gt_buf_new(&p, NULL, (size_t)T * k * 4),
	              w = gt_floats(&p, NULL, (size_t)T * k);
	cr_assert_eq(p.oc->route(p.c, L.c, with_bias ? B.c : NULL, hash ? TI.c : NULL, I.c, T, E, k,
	                         fn, 1.5f, idx.c, w.c),
	             0);
	cr_assert_eq(p.og->route(p.g, L.g, with_bias ? B.g : NULL, hash ? TI.g : NULL, I.g, T, E, k,
	                         fn, 1.5f, idx.g, w.g),
	             0);
	int32_t *ic, *ig;
	cr_assert_eq(dp_gpu_sync(p.g), 0, "route: the cuda side failed (kernel error at the sync): %s",
	             dp_gpu_last_error(p.g));
	gt_fetch(&p, &idx, (size_t)T * k * 4, (void **)&ic, (void **)&ig);
	for (size_t i = 0; i < (size_t)T * k; i++)
		cr_expect_eq(
		    ic[i], ig[i],
		    "route fn %d bias %d hash %d ties %d: token %zu slot %zu: cpu %d cuda %d", fn,
		    with_bias, hash, ties, i / k, i % k, ic[i], ig[i]);
	free(ic);
	free(ig);
	gt_expect_close(&p, &w, (size_t)T * k, 1e-6, 1e-3, "route weights");
	struct gt_buf *all[] = {&L, &B, &TI, &I, &idx, &w};
	for (size_t i = 0; i < 6; i++)
		gt_buf_free(&p, all[i]);
	free(lg);
	free(bias);
	free(tid);
	free(ids);
	gt_close(&p);
}

Test(cuda_moe, route_matches_for_every_score_function_bias_hash_and_ties)
{
	uint64_t seed = 30;
	for (int fn = 0; fn < DP_GPU_SCORE_FN_MAX; fn++) {
		route_case(fn, true, false, false, 17, 64, 6, seed++);
		route_case(fn, false, false, false, 5, 256, 8, seed++);
		route_case(fn, false, false, true, 9, 40, 5, seed++);
		route_case(fn, true, false, true, 9, 40, 5, seed++);
		route_case(fn, false, true, false, 12, 8, 2, seed++);
		route_case(fn, true, false, false, 3, 7, 7, seed++); /* k == E */
		route_case(fn, true, false, false, 7, 384, 8, seed++); /* V4 sizes */
		route_case(fn, false, true, false, 5, 384, 8, seed++); /* V4 hash layer */
	}
}

static void moe_case(bool f32, uint32_t T, uint32_t E, uint32_t k, uint32_t D, uint32_t I,
                     bool dups, uint64_t seed)
{
	struct gt_pair p;
	gt_open(&p, f32);
	uint64_t s = seed;
	float *xh = gt_rand(&s, (size_t)T * D, -1, 1), *yh = gt_rand(&s, (size_t)T * D, -1, 1);
	float *gu = gt_rand(&s, (size_t)E * 2 * I * D, -0.3f, 0.3f);
	float *dn = gt_rand(&s, (size_t)E * D * I, -0.3f, 0.3f);
	float *wh = gt_rand(&s, (size_t)T * k, 0, 1);
	int32_t *ih = malloc((size_t)T * k * 4);
	for (uint32_t t = 0; t < T; t++)
		for (uint32_t j = 0; j < k; j++) {
			/* distinct experts per token, some skipped (-1) or repeated */
			int32_t e = (int32_t)((t * 5 + j * 3 + (gt_next(&s) % 2)) % E);
			if (dups && j > 0 && t % 7 == 3)
				e = ih[t * k];
			if (t % 11 == 5 && j == k - 1)
				e = -1;
			ih[t * k + j] = e;
		}
	struct gt_weight wgu = gt_weight_new(&p, gu, E, 2 * I, D),
	                 wdn = gt_weight_new(&p, dn, E, D, I);
	struct gt_buf x = gt_floats(&p, xh, (size_t)T * D), y = gt_floats(&p, yh, (size_t)T * D);
	struct gt_buf w = gt_floats(&p, wh, (size_t)T * k),
	              idx = gt_buf_new(&p, ih, (size_t)T * k * 4);
	cr_assert_eq(p.oc->moe(p.c, x.c, idx.c, w.c, T, k, &wgu.c, &wdn.c, 1.5f, y.c), 0);
	cr_assert_eq(p.og->moe(p.g, x.g, idx.g, w.g, T, k, &wgu.g, &wdn.g, 1.5f, y.g), 0);
	char what[128];
	snprintf(what, sizeof(what), "moe %s T=%u E=%u k=%u D=%u I=%u (%s plan)",
	         f32 ? "f32" : "bf16", T, E, k, D, I, T * k <= 256 ? "device" : "host");
	gt_expect_close(&p, &y, (size_t)T * D, f32 ? 2e-5 : 1e-4, 1e-3, what);
	gt_buf_free(&p, &x);
	gt_buf_free(&p, &y);
	gt_buf_free(&p, &w);
	gt_buf_free(&p, &idx);
	gt_weight_free(&p, &wgu);
	gt_weight_free(&p, &wdn);
	free(xh);
	free(yh);
	free(gu);
	free(dn);
	free(wh);
	free(ih);
	gt_close(&p);
}

Test(cuda_moe, routed_experts_match_on_the_device_and_host_planned_paths)
{
	for (int f32 = 1; f32 >= 0; f32--) {
		moe_case(f32, 1, 8, 2, 32, 16, false, 50);     /* decode, parity sizes */
		moe_case(f32, 1, 64, 6, 256, 128, false, 51);  /* decode, six experts */
		moe_case(f32, 5, 16, 4, 40, 24, true, 52);     /* odd widths, repeats */
		moe_case(f32, 40, 8, 6, 64, 48, true, 53);     /* 240 pairs: device */
		moe_case(f32, 100, 8, 3, 64, 48, true, 54);    /* 300 pairs: host */
		moe_case(f32, 300, 32, 6, 128, 64, false, 55); /* prefill: cuBLAS */
		moe_case(f32, 32, 384, 8, 64, 40, false, 56);  /* 256 pairs: device, V4 E, k */
		moe_case(f32, 33, 384, 8, 64, 40, false, 57);  /* 264 pairs: host */
	}
}

/* ---- moe on paged stacks ------------------------------------------------------
 * On the backend under test alone: a paged stack against the plain stack of
 * the same experts, bitwise. Matrix sizes are multiples of 256 bytes, so an
 * expert's matrix is aligned alike in either stack. */

static void shuffle_i32(uint64_t *s, int32_t *v, uint32_t n)
{
	for (uint32_t i = n; i > 1; i--) {
		uint32_t j = (uint32_t)(gt_next(s) % i);
		int32_t t = v[i - 1];
		v[i - 1] = v[j];
		v[j] = t;
	}
}

/* gate_up [E][2I][D] and down [E][D][I] as paged stacks of `stored` slots
 * sharing one slot table; the slots, plain stacks, own the memory. */
struct paged_experts {
	struct dp_gpu_weight gu_slots, dn_slots, gu, dn;
	int32_t *slot_of; /* backend memory [E] */
};

static void paged_new(struct gt_pair *p, struct paged_experts *pe, uint32_t E, uint32_t stored,
                      uint32_t D, uint32_t I)
{
	cr_assert_eq(dp_gpu_weight_alloc(p->g, stored, 2 * I, D, &pe->gu_slots), 0);
	cr_assert_eq(dp_gpu_weight_alloc(p->g, stored, D, I, &pe->dn_slots), 0);
	pe->slot_of = dp_gpu_alloc(p->g, (size_t)E * sizeof(int32_t), DP_GPU_MEM_WEIGHTS);
	cr_assert_not_null(pe->slot_of);
	pe->gu = pe->gu_slots;
	pe->dn = pe->dn_slots;
	pe->gu.count = pe->dn.count = E;
	pe->gu.slot_of = pe->dn.slot_of = pe->slot_of;
	pe->gu.stored = pe->dn.stored = stored;
}

/* Page in: slot i holds expert of_slot[i] of the host stacks, or stale
 * random data where of_slot[i] < 0; then the slot table follows. */
static void paged_load(struct gt_pair *p, struct paged_experts *pe, const float *gu,
                       const float *dn, const int32_t *of_slot, uint64_t *s)
{
	uint32_t E = pe->gu.count, D = pe->gu.cols, I = pe->dn.cols;
	size_t n_gu = (size_t)2 * I * D, n_dn = (size_t)D * I;
	int32_t *tab = malloc((size_t)E * sizeof(int32_t));
	cr_assert_not_null(tab);
	for (uint32_t e = 0; e < E; e++)
		tab[e] = -1;
	for (uint32_t i = 0; i < pe->gu.stored; i++) {
		int32_t e = of_slot[i];
		float *stale_gu = e < 0 ? gt_rand(s, n_gu, -1, 1) : NULL;
		float *stale_dn = e < 0 ? gt_rand(s, n_dn, -1, 1) : NULL;
		cr_assert_eq(dp_gpu_weight_fill(p->g, &pe->gu_slots, i, 0, 2 * I,
		                                e < 0 ? stale_gu : gu + (size_t)e * n_gu,
		                                DP_DTYPE_F32),
		             0);
		cr_assert_eq(dp_gpu_weight_fill(p->g, &pe->dn_slots, i, 0, D,
		                                e < 0 ? stale_dn : dn + (size_t)e * n_dn,
		                                DP_DTYPE_F32),
		             0);
		free(stale_gu);
		free(stale_dn);
		if (e >= 0)
			tab[e] = (int32_t)i;
	}
	cr_assert_eq(dp_gpu_upload(p->g, pe->slot_of, tab, (size_t)E * sizeof(int32_t)), 0);
	free(tab);
}

static void paged_free(struct gt_pair *p, struct paged_experts *pe)
{
	dp_gpu_dealloc(p->g, pe->slot_of, (size_t)pe->gu.count * sizeof(int32_t),
	               DP_GPU_MEM_WEIGHTS);
	dp_gpu_weight_free(p->g, &pe->gu_slots);
	dp_gpu_weight_free(p->g, &pe->dn_slots);
}

/* n floats of the backend under test, after a sync (malloc'd). */
static float *paged_fetch(struct gt_pair *p, const struct gt_buf *b, size_t n, const char *what)
{
	cr_assert_eq(dp_gpu_sync(p->g), 0,
	             "%s: the cuda side failed (kernel error at the sync): %s", what,
	             dp_gpu_last_error(p->g));
	float *h = malloc(n * sizeof(float));
	cr_assert_not_null(h);
	cr_assert_eq(dp_gpu_download(p->g, h, b->g, n * sizeof(float)), 0);
	return h;
}

static void expect_bitwise(const float *want, const float *got, size_t n, const char *what)
{
	size_t i = 0;
	while (i < n && memcmp(&want[i], &got[i], sizeof(float)) == 0)
		i++;
	cr_expect_eq(i, n, "%s: differs first at %zu: want %.9g, got %.9g", what, i,
	             i < n ? want[i] : 0.0f, i < n ? got[i] : 0.0f);
}

/* The routed picks: k distinct experts of pool[n] per token, some skipped
 * (-1), some repeated when dups. */
static int32_t *paged_picks(uint64_t *s, const int32_t *pool, uint32_t n, uint32_t T, uint32_t k,
                            bool dups)
{
	int32_t *ih = malloc((size_t)T * k * sizeof(int32_t)), *pick = malloc(n * sizeof(int32_t));
	cr_assert(ih && pick && n >= k);
	for (uint32_t t = 0; t < T; t++) {
		memcpy(pick, pool, n * sizeof(int32_t));
		for (uint32_t j = 0; j < k; j++) {
			uint32_t r = j + (uint32_t)(gt_next(s) % (n - j));
			int32_t e = pick[r];
			pick[r] = pick[j];
			pick[j] = e;
			if (dups && j > 0 && t % 7 == 3)
				e = ih[(size_t)t * k];
			if ((t * k + j) % 5 == 2)
				e = -1;
			ih[(size_t)t * k + j] = e;
		}
	}
	free(pick);
	return ih;
}

/* What both paged-moe cases set up: random activations, weights and routing
 * weights, the plain stack, an empty paged stack of `stored` slots, and y0
 * (for the plain stack) and y1 (paged) starting from the same values. */
struct paged_fx {
	struct gt_pair p;
	uint32_t T, E, k, D, I;
	size_t n; /* T * D */
	uint64_t s;
	float *xh, *yh, *gu, *dn, *wh;
	int32_t *experts; /* 0..E-1, for picks */
	struct dp_gpu_weight wgu, wdn;
	struct paged_experts pe;
	struct gt_buf x, w, y0, y1;
};

static void pfx_open(struct paged_fx *f, bool f32, uint32_t T, uint32_t E, uint32_t k, uint32_t D,
                     uint32_t I, uint32_t stored, uint64_t seed)
{
	memset(f, 0, sizeof(*f));
	gt_open(&f->p, f32);
	f->T = T, f->E = E, f->k = k, f->D = D, f->I = I;
	f->n = (size_t)T * D;
	f->s = seed;
	f->xh = gt_rand(&f->s, f->n, -1, 1);
	f->yh = gt_rand(&f->s, f->n, -1, 1);
	f->gu = gt_rand(&f->s, (size_t)E * 2 * I * D, -0.3f, 0.3f);
	f->dn = gt_rand(&f->s, (size_t)E * D * I, -0.3f, 0.3f);
	f->wh = gt_rand(&f->s, (size_t)T * k, 0, 1);
	f->experts = malloc(E * sizeof(int32_t));
	cr_assert_not_null(f->experts);
	for (uint32_t e = 0; e < E; e++)
		f->experts[e] = (int32_t)e;
	cr_assert_eq(dp_gpu_weight_upload(f->p.g, f->gu, DP_DTYPE_F32, E, 2 * I, D, &f->wgu), 0);
	cr_assert_eq(dp_gpu_weight_upload(f->p.g, f->dn, DP_DTYPE_F32, E, D, I, &f->wdn), 0);
	paged_new(&f->p, &f->pe, E, stored, D, I);
	f->x = gt_floats(&f->p, f->xh, f->n);
	f->w = gt_floats(&f->p, f->wh, (size_t)T * k);
	f->y0 = gt_floats(&f->p, f->yh, f->n);
	f->y1 = gt_floats(&f->p, f->yh, f->n);
}

static void pfx_close(struct paged_fx *f)
{
	struct gt_buf *all[] = {&f->x, &f->w, &f->y0, &f->y1};
	for (size_t i = 0; i < 4; i++)
		gt_buf_free(&f->p, all[i]);
	paged_free(&f->p, &f->pe);
	dp_gpu_weight_free(f->p.g, &f->wgu);
	dp_gpu_weight_free(f->p.g, &f->wdn);
	free(f->xh);
	free(f->yh);
	free(f->gu);
	free(f->dn);
	free(f->wh);
	free(f->experts);
	gt_close(&f->p);
}

/* stored - 1 resident experts in shuffled slots beside one stale slot;
 * picks among them; y from the paged stack == y from the plain stack. */
static void paged_moe_case(bool f32, uint32_t T, uint32_t E, uint32_t k, uint32_t D, uint32_t I,
                           uint32_t stored, uint64_t seed)
{
	struct paged_fx f;
	pfx_open(&f, f32, T, E, k, D, I, stored, seed);
	uint32_t n_res = stored - 1;
	int32_t *slots = malloc(stored * sizeof(int32_t)), *of_slot = malloc(stored * sizeof(int32_t));
	cr_assert(slots && of_slot);
	for (uint32_t i = 0; i < stored; i++)
		slots[i] = (int32_t)i;
	shuffle_i32(&f.s, f.experts, E);
	shuffle_i32(&f.s, slots, stored);
	for (uint32_t i = 0; i < stored; i++)
		of_slot[slots[i]] = i < n_res ? f.experts[i] : -1;
	int32_t *ih = paged_picks(&f.s, f.experts, n_res, T, k, true);
	paged_load(&f.p, &f.pe, f.gu, f.dn, of_slot, &f.s);
	struct gt_buf idx = gt_buf_new(&f.p, ih, (size_t)T * k * sizeof(int32_t));
	cr_assert_eq(f.p.og->moe(f.p.g, f.x.g, idx.g, f.w.g, T, k, &f.wgu, &f.wdn, 1.5f, f.y0.g), 0);
	cr_assert_eq(f.p.og->moe(f.p.g, f.x.g, idx.g, f.w.g, T, k, &f.pe.gu, &f.pe.dn, 1.5f, f.y1.g),
	             0, "moe on a paged stack: %s", dp_gpu_last_error(f.p.g));
	char what[160];
	snprintf(what, sizeof(what), "paged moe %s T=%u E=%u k=%u D=%u I=%u stored=%u (%s plan)",
	         f32 ? "f32" : "bf16", T, E, k, D, I, stored, T * k <= 256 ? "device" : "host");
	float *want = paged_fetch(&f.p, &f.y0, f.n, what), *got = paged_fetch(&f.p, &f.y1, f.n, what);
	expect_bitwise(want, got, f.n, what);

	free(want);
	free(got);
	gt_buf_free(&f.p, &idx);
	free(slots);
	free(of_slot);
	free(ih);
	pfx_close(&f);
}

Test(cuda_moe, moe_on_a_paged_stack_equals_the_plain_stack)
{
	for (int f32 = 1; f32 >= 0; f32--) {
		paged_moe_case(f32, 1, 16, 4, 32, 16, 9, 70);    /* decode */
		paged_moe_case(f32, 5, 16, 4, 36, 20, 9, 71);    /* odd widths: scalar loads */
		paged_moe_case(f32, 37, 32, 6, 64, 48, 13, 72);  /* 222 pairs: device */
		paged_moe_case(f32, 60, 32, 6, 64, 48, 13, 73);  /* 360 pairs: host, cuBLAS */
		paged_moe_case(f32, 33, 384, 8, 64, 40, 97, 74); /* 264 pairs: host, V4 E, k */
	}
}

/* The model's split of a step by expert ranges: experts [0, E/2) resident,
 * one call with every pick; then [E/2, E), the same call again. Picks of
 * absent experts are skipped (cuda), so the two calls add up bitwise to one
 * call on the plain stack. With nothing resident, y stays as it was. */
static void paged_moe_ranges_case(bool f32, uint32_t T, uint32_t E, uint32_t k, uint32_t D,
                                  uint32_t I, uint64_t seed)
{
	struct paged_fx f;
	uint32_t half = E / 2;
	pfx_open(&f, f32, T, E, k, D, I, half, seed);
	int32_t *of_slot = malloc(half * sizeof(int32_t));
	cr_assert_not_null(of_slot);
	int32_t *ih = paged_picks(&f.s, f.experts, E, T, k, false);
	struct gt_buf idx = gt_buf_new(&f.p, ih, (size_t)T * k * sizeof(int32_t));
	cr_assert_eq(f.p.og->moe(f.p.g, f.x.g, idx.g, f.w.g, T, k, &f.wgu, &f.wdn, 1.5f, f.y0.g), 0);
	for (uint32_t r = 0; r < 2; r++) {
		for (uint32_t i = 0; i < half; i++)
			of_slot[i] = (int32_t)(r * half + i);
		shuffle_i32(&f.s, of_slot, half);
		paged_load(&f.p, &f.pe, f.gu, f.dn, of_slot, &f.s);
		cr_assert_eq(f.p.og->moe(f.p.g, f.x.g, idx.g, f.w.g, T, k, &f.pe.gu, &f.pe.dn, 1.5f,
		                         f.y1.g),
		             0, "moe on experts [%u, %u): %s", r * half, (r + 1) * half,
		             dp_gpu_last_error(f.p.g));
	}
	char what[160];
	snprintf(what, sizeof(what), "paged moe by ranges %s T=%u E=%u k=%u D=%u I=%u (%s plan)",
	         f32 ? "f32" : "bf16", T, E, k, D, I, T * k <= 256 ? "device" : "host");
	float *want = paged_fetch(&f.p, &f.y0, f.n, what), *got = paged_fetch(&f.p, &f.y1, f.n, what);
	expect_bitwise(want, got, f.n, what);

	for (uint32_t i = 0; i < half; i++)
		of_slot[i] = -1;
	paged_load(&f.p, &f.pe, f.gu, f.dn, of_slot, &f.s);
	cr_assert_eq(f.p.og->moe(f.p.g, f.x.g, idx.g, f.w.g, T, k, &f.pe.gu, &f.pe.dn, 1.5f, f.y1.g),
	             0);
	float *after = paged_fetch(&f.p, &f.y1, f.n, what);
	expect_bitwise(got, after, f.n, "paged moe with nothing resident");

	free(want);
	free(got);
	free(after);
	gt_buf_free(&f.p, &idx);
	free(of_slot);
	free(ih);
	pfx_close(&f);
}

Test(cuda_moe, moe_on_a_paged_stack_skips_absent_experts_so_calls_by_expert_range_add_up)
{
	GT_CUDA_ONLY(); /* the cpu backend refuses a pick of an absent expert */
	for (int f32 = 1; f32 >= 0; f32--) {
		paged_moe_ranges_case(f32, 3, 16, 4, 32, 16, 80);   /* device plan */
		paged_moe_ranges_case(f32, 70, 16, 4, 64, 48, 81);  /* 280 pairs: host */
		paged_moe_ranges_case(f32, 40, 384, 8, 64, 40, 82); /* 320 pairs: host, V4 */
	}
}

Test(cuda_moe, a_paged_stack_is_refused_by_matmul_and_embed_and_moe_checks_the_pair)
{
	struct gt_pair p;
	gt_open(&p, false);
	uint64_t s = 83;
	uint32_t E = 8, stored = 4, D = 32, I = 16, T = 1, k = 2;
	float *gu = gt_rand(&s, (size_t)E * 2 * I * D, -0.3f, 0.3f);
	float *dn = gt_rand(&s, (size_t)E * D * I, -0.3f, 0.3f);
	float *xh = gt_rand(&s, (size_t)2 * I, -1, 1);
	int32_t of_slot[4] = {5, 2, -1, 7}, ih[2] = {5, 2}, tab[8];
	for (uint32_t e = 0; e < E; e++)
		tab[e] = e == 5 ? 0 : e == 2 ? 1 : e == 7 ? 3 : -1;
	struct paged_experts pe;
	paged_new(&p, &pe, E, stored, D, I);
	paged_load(&p, &pe, gu, dn, of_slot, &s);
	struct gt_buf x = gt_floats(&p, xh, (size_t)2 * I), y = gt_floats(&p, NULL, (size_t)2 * I);
	struct gt_buf w = gt_floats(&p, xh, k), idx = gt_buf_new(&p, ih, sizeof(ih));
	struct gt_buf tab2 = gt_buf_new(&p, tab, sizeof(tab)); /* the same table elsewhere */

	cr_expect_eq(p.og->matmul(p.g, x.g, 0, &pe.gu, 0, y.g, 0, 1, false), -EINVAL);
	cr_expect_eq(p.og->matmul(p.g, x.g, 0, &pe.gu, 5, y.g, 0, 1, false), -EINVAL);
	cr_expect_eq(p.og->embed(p.g, &pe.gu, idx.g, 1, y.g), -EINVAL);
	cr_expect_eq(p.og->matmul(p.g, x.g, 0, &pe.gu_slots, 1, y.g, 0, 1, false), 0,
	             "the slots themselves are a plain stack");
	cr_expect_eq(p.og->moe(p.g, x.g, idx.g, w.g, T, k, &pe.gu, &pe.dn, 1.5f, y.g), 0);
	struct dp_gpu_weight bad = pe.dn_slots; /* down plain, gate_up paged */
	cr_expect_eq(p.og->moe(p.g, x.g, idx.g, w.g, T, k, &pe.gu, &bad, 1.5f, y.g), -EINVAL);
	bad = pe.dn;
	bad.stored = stored - 1;
	cr_expect_eq(p.og->moe(p.g, x.g, idx.g, w.g, T, k, &pe.gu, &bad, 1.5f, y.g), -EINVAL);
	bad = pe.dn;
	bad.slot_of = tab2.g;
	cr_expect_eq(p.og->moe(p.g, x.g, idx.g, w.g, T, k, &pe.gu, &bad, 1.5f, y.g), -EINVAL);
	struct dp_gpu_weight none_gu = pe.gu, none_dn = pe.dn;
	none_gu.stored = none_dn.stored = 0;
	cr_expect_eq(p.og->moe(p.g, x.g, idx.g, w.g, T, k, &none_gu, &none_dn, 1.5f, y.g), -EINVAL);
	cr_expect_eq(dp_gpu_sync(p.g), 0, "%s", dp_gpu_last_error(p.g));

	struct gt_buf *all[] = {&x, &y, &w, &idx, &tab2};
	for (size_t i = 0; i < 5; i++)
		gt_buf_free(&p, all[i]);
	paged_free(&p, &pe);
	free(gu);
	free(dn);
	free(xh);
	gt_close(&p);
}

/* ---- attention ---------------------------------------------------------------- */

struct attn_case {
	uint32_t S, H, d, window;
	uint64_t pos0;
	int mode; /* 0 sliding only, 1 HCA, 2 CSA */
	uint32_t n_comp, rate, sel_k, per_page;
};

static void attn_case(const struct attn_case *k, uint64_t seed)
{
	struct gt_pair p;
	gt_open(&p, false);
	uint64_t s = seed;
	uint32_t S = k->S, H = k->H, d = k->d, W = k->window;
	float *qh = gt_rand(&s, (size_t)S * H * d, -1, 1), *kvh = gt_rand(&s, (size_t)S * d, -1, 1);
	float *ringh = gt_rand(&s, (size_t)W * d, -1, 1),
	      *comph = gt_rand(&s, (size_t)(k->n_comp + 1) * d, -1, 1);
	float *sinks = gt_rand(&s, H, -1, 2);
	uint32_t sel_k = k->mode == 2 ? k->sel_k : 0;
	int32_t *selh = malloc(((size_t)S * sel_k + 1) * 4);
	for (size_t i = 0; i < (size_t)S * sel_k; i++) {
		uint64_t r = gt_next(&s) % (k->n_comp + 4);
		selh[i] = r >= k->n_comp + 2 ? -1 : (int32_t)r; /* -1s and out-of-range entries */
	}
	struct gt_buf q = gt_floats(&p, qh, (size_t)S * H * d),
	              kv = gt_floats(&p, kvh, (size_t)S * d);
	struct gt_buf sk = gt_floats(&p, sinks, H), out = gt_floats(&p, NULL, (size_t)S * H * d);
	struct gt_buf sel = gt_buf_new(&p, selh, (size_t)S * sel_k * 4);
	struct gt_stream ring, comp;
	gt_stream_new(&p, &ring, ringh, W, d, k->per_page);
	gt_stream_new(&p, &comp, comph, k->n_comp, d, k->per_page);
	struct dp_gpu_attn a = {
	    .window = W,
	    .rate = k->rate,
	    .sel_k = sel_k,
	    .scale = 1.0f / sqrtf((float)d),
	    .S = S,
	    .H = H,
	    .d = d,
	    .pos0 = k->pos0,
	};
	struct dp_gpu_attn ac = a, ag = a;
	ac.q = q.c, ac.kv_new = kv.c, ac.ring = &ring.c, ac.sinks = sk.c, ac.out = out.c;
	ag.q = q.g, ag.kv_new = kv.g, ag.ring = &ring.g, ag.sinks = sk.g, ag.out = out.g;
	if (k->mode) {
		ac.comp = &comp.c;
		ag.comp = &comp.g;
	}
	if (k->mode == 2) {
		ac.sel = sel.c;
		ag.sel = sel.g;
	}
	cr_assert_eq(p.oc->attention(p.c, &ac), 0);
	cr_assert_eq(p.og->attention(p.g, &ag), 0);
	char what[160];
	snprintf(what, sizeof(what),
	         "attention S=%u H=%u d=%u W=%u pos0=%llu mode=%d n_comp=%u rate=%u sel_k=%u", S, H,
	         d, W, (unsigned long long)k->pos0, k->mode, k->n_comp, k->rate, sel_k);
	gt_expect_close(&p, &out, (size_t)S * H * d, 2e-5, 0.1, what);
	gt_stream_free(&p, &ring);
	gt_stream_free(&p, &comp);
	struct gt_buf *all[] = {&q, &kv, &sk, &out, &sel};
	for (size_t i = 0; i < 5; i++)
		gt_buf_free(&p, all[i]);
	free(qh);
	free(kvh);
	free(ringh);
	free(comph);
	free(sinks);
	free(selh);
	gt_close(&p);
}

static const struct attn_case attn_cases[] = {
    /* S  H   d    W    pos0  mode n_comp rate sel_k per_page */
    {1, 4, 16, 16, 100, 1, 12, 8, 0, 5},          /* HCA decode, paged ring */
    {37, 4, 16, 16, 0, 1, 9, 4, 0, 4},            /* HCA prefill from 0 */
    {17, 4, 16, 16, 41, 2, 14, 4, 5, 3},          /* CSA chunk, -1 selections */
    {2, 4, 16, 16, 3, 0, 0, 1, 0, 16},            /* window past the start */
    {1, 8, 48, 8, 63, 2, 21, 3, 3, 7},            /* d not a multiple of 32 */
    {5, 1, 64, 1, 9, 1, 2, 4, 0, 2},              /* window 1: only the query itself */
    {1, 64, 512, 128, 5000, 2, 1250, 4, 512, 32}, /* V4 decode: split keys */
    {3, 64, 512, 128, 5000, 1, 39, 128, 0, 32},   /* V4 HCA decode, batch-ish */
    {300, 8, 128, 128, 700, 2, 250, 4, 64, 32},   /* prefill chunk */
    {1, 2, 1024, 4, 2, 0, 0, 1, 0, 4},            /* the widest head */
    /* 1M-token context, HCA: 8192 visible entries split across blocks */
    {1, 64, 512, 128, 1048575, 1, 8192, 128, 0, 16},
    /* HCA prefill whose queries see different entry counts */
    {45, 8, 512, 128, 1000, 1, 9, 128, 0, 16},
    /* CSA with V4's largest top-k: repeated selections, -1s, past-the-end */
    {2, 64, 512, 128, 900, 2, 225, 4, 2048, 16},
    /* heads not a multiple of the 8 a block takes, odd head dim */
    {3, 13, 72, 7, 20, 2, 5, 4, 9, 3},
};

Test(cuda_attention, matches_the_cpu_for_sliding_hca_csa_decode_and_prefill)
{
	for (size_t i = 0; i < DP_ARRAY_SIZE(attn_cases); i++)
		attn_case(&attn_cases[i], 300 + i);
}

Test(cuda_attention, bad_arguments_are_rejected)
{
	GT_CUDA_ONLY();
	struct gt_pair p;
	gt_open(&p, false);
	struct gt_buf b = gt_floats(&p, NULL, 4096);
	struct dp_gpu_attn a = {.q = b.g,
	                        .kv_new = b.g,
	                        .sinks = b.g,
	                        .out = b.g,
	                        .window = 0,
	                        .S = 1,
	                        .H = 1,
	                        .d = 16,
	                        .scale = 1};
	cr_expect_eq(p.og->attention(p.g, &a), -EINVAL, "window 0");
	a.window = 4;
	a.pos0 = 10; /* no ring */
	cr_expect_eq(p.og->attention(p.g, &a), -EINVAL, "missing ring");
	a.pos0 = 0;
	int32_t sel = 0;
	a.sel = &sel; /* sel without comp */
	cr_expect_eq(p.og->attention(p.g, &a), -EINVAL, "sel without comp");
	a.sel = NULL;
	a.d = 2048;
	cr_expect_eq(p.og->attention(p.g, &a), -EINVAL, "d past the kernel's limit");
	gt_buf_free(&p, &b);
	gt_close(&p);
}

/* ---- compressors --------------------------------------------------------------- */

static void compress_case(bool overlap, bool has_prev, uint32_t n_win, uint32_t rate, uint32_t dim,
                          uint32_t rope_dim, uint64_t first_pos, uint64_t seed)
{
	struct gt_pair p;
	gt_open(&p, false);
	uint64_t s = seed;
	uint32_t width = overlap ? 2 * dim : dim;
	size_t nslots = (size_t)n_win * rate * 2 * width;
	float *sl = gt_rand(&s, nslots, -2, 2), *bias = gt_rand(&s, (size_t)rate * width, -1, 1);
	float *nrm = gt_rand(&s, dim, 0.6f, 1.4f),
	      *prev = gt_rand(&s, (size_t)2 * rate * dim, -2, 2);
	float inv[512];
	for (uint32_t i = 0; i < rope_dim / 2; i++)
		inv[i] = powf(160000.0f, -(float)(2 * i) / rope_dim);
	struct gt_buf S = gt_floats(&p, sl, nslots), B = gt_floats(&p, bias, (size_t)rate * width);
	struct gt_buf N = gt_floats(&p, nrm, dim), P = gt_floats(&p, prev, (size_t)2 * rate * dim);
	struct gt_buf F = gt_floats(&p, inv, rope_dim / 2 ? rope_dim / 2 : 1);
	struct gt_buf O = gt_floats(&p, NULL, (size_t)n_win * dim);
	struct dp_gpu_compress c = {.n_win = n_win,
	                            .rate = rate,
	                            .width = width,
	                            .dim = dim,
	                            .overlap = overlap,
	                            .has_prev = has_prev,
	                            .eps = 1e-6f,
	                            .rope_dim = rope_dim,
	                            .rope_factor = 1.0f,
	                            .first_pos = first_pos};
	struct dp_gpu_compress cc = c, cg = c;
	cc.slots = S.c, cc.prev = overlap ? P.c : NULL, cc.bias = B.c, cc.norm = N.c,
	cc.inv_freq = F.c, cc.out_entries = O.c;
	cg.slots = S.g, cg.prev = overlap ? P.g : NULL, cg.bias = B.g, cg.norm = N.g,
	cg.inv_freq = F.g, cg.out_entries = O.g;
	cr_assert_eq(p.oc->compress(p.c, &cc), 0);
	cr_assert_eq(p.og->compress(p.g, &cg), 0);
	char what[128];
	snprintf(what, sizeof(what), "compress %s prev=%d n_win=%u rate=%u dim=%u",
	         overlap ? "CSA" : "HCA", has_prev, n_win, rate, dim);
	gt_expect_close(&p, &O, (size_t)n_win * dim, 1e-5, 1e-3, what);
	if (overlap)
		gt_expect_close(&p, &P, (size_t)2 * rate * dim, 0, 1e-3, "compress: carried Ca");
	struct gt_buf *all[] = {&S, &B, &N, &P, &F, &O};
	for (size_t i = 0; i < 6; i++)
		gt_buf_free(&p, all[i]);
	free(sl);
	free(bias);
	free(nrm);
	free(prev);
	gt_close(&p);
}

Test(cuda_compress, hca_and_csa_windows_with_and_without_a_carried_previous_window)
{
	compress_case(false, false, 3, 4, 16, 8, 8, 60);
	compress_case(false, false, 1, 128, 512, 64, 128 * 40, 61); /* V4 HCA */
	compress_case(true, false, 1, 4, 16, 8, 0, 62);             /* first window */
	compress_case(true, true, 4, 4, 16, 8, 12, 63);
	compress_case(true, true, 2, 3, 12, 8, 3, 64);         /* alt indexer sizes */
	compress_case(true, true, 5, 4, 512, 64, 4 * 777, 65); /* V4 CSA */
	compress_case(true, true, 1, 4, 128, 64, 4 * 9, 66);   /* V4 indexer */
}

/* ---- indexer top-k ----------------------------------------------------------------- */

enum { IX_RANDOM, IX_DUP_KEYS, IX_ALL_ZERO };

static void index_case(uint32_t S, uint32_t nh, uint32_t dim, uint32_t n, uint32_t rate, uint32_t k,
                       uint64_t pos0, uint32_t per_page, int kind, uint64_t seed)
{
	struct gt_pair p;
	gt_open(&p, false);
	uint64_t s = seed;
	float *qi = gt_rand(&s, (size_t)S * nh * dim, -1, 1),
	      *wt = gt_rand(&s, (size_t)S * nh, -1, 1);
	float *keys = gt_rand(&s, (size_t)(n + 1) * dim, -1, 1);
	if (kind == IX_DUP_KEYS) /* seven distinct keys: equal scores everywhere */
		for (uint32_t w = 7; w < n; w++)
			memcpy(keys + (size_t)w * dim, keys + (size_t)(w % 7) * dim,
			       dim * sizeof(float));
	if (kind == IX_ALL_ZERO) { /* every relu zero: every score exactly 0 */
		for (size_t i = 0; i < (size_t)S * nh * dim; i++)
			qi[i] = -fabsf(qi[i]);
		for (size_t i = 0; i < (size_t)n * dim; i++)
			keys[i] = fabsf(keys[i]);
	}
	struct gt_buf Q = gt_floats(&p, qi, (size_t)S * nh * dim),
	              Wt = gt_floats(&p, wt, (size_t)S * nh);
	struct gt_buf sel = gt_buf_new(&p, NULL, (size_t)S * k * 4);
	struct gt_stream ks;
	gt_stream_new(&p, &ks, keys, n, dim, per_page);
	struct dp_gpu_index ix = {.S = S,
	                          .nh = nh,
	                          .dim = dim,
	                          .rate = rate,
	                          .k = k,
	                          .pos0 = pos0,
	                          .key_scale = 1.0f / sqrtf((float)dim),
	                          .weight_scale = 1.0f / sqrtf((float)nh)};
	struct dp_gpu_index ic = ix, ig = ix;
	ic.qi = Q.c, ic.weights = Wt.c, ic.keys = &ks.c, ic.sel = sel.c;
	ig.qi = Q.g, ig.weights = Wt.g, ig.keys = &ks.g, ig.sel = sel.g;
	cr_assert_eq(p.oc->index_topk(p.c, &ic), 0);
	cr_assert_eq(p.og->index_topk(p.g, &ig), 0);
	int32_t *sc, *sg;
	cr_assert_eq(dp_gpu_sync(p.g), 0,
	             "index_topk: the cuda side failed (kernel error at the sync): %s",
	             dp_gpu_last_error(p.g));
	gt_fetch(&p, &sel, (size_t)S * k * 4, (void **)&sc, (void **)&sg);
	uint32_t bad = 0;
	for (size_t i = 0; i < (size_t)S * k; i++)
		if (sc[i] != sg[i] && bad++ < 8)
			cr_log_error(
			    "index kind %d S=%u n=%u k=%u: query %zu rank %zu: cpu %d cuda %d",
			    kind, S, n, k, i / k, i % k, sc[i], sg[i]);
	cr_expect_eq(bad, 0,
	             "index top-k kind %d S=%u nh=%u dim=%u n=%u k=%u: %u selections differ", kind,
	             S, nh, dim, n, k, bad);
	free(sc);
	free(sg);
	gt_stream_free(&p, &ks);
	gt_buf_free(&p, &Q);
	gt_buf_free(&p, &Wt);
	gt_buf_free(&p, &sel);
	free(qi);
	free(wt);
	free(keys);
	gt_close(&p);
}

Test(cuda_index, top_k_selection_is_identical_including_ties_padding_and_paging)
{
	index_case(1, 16, 16, 18, 4, 5, 71, 5, IX_RANDOM, 80);           /* parity sizes, decode */
	index_case(41, 16, 16, 10, 4, 5, 0, 3, IX_RANDOM, 81);           /* prefill: -1 padding */
	index_case(9, 12, 12, 20, 3, 3, 55, 4, IX_DUP_KEYS, 82);         /* equal scores */
	index_case(6, 4, 8, 30, 4, 10, 100, 7, IX_ALL_ZERO, 83);         /* all zero: index order */
	index_case(2, 64, 128, 5000, 4, 512, 20000, 128, IX_RANDOM, 84); /* V4: radix select */
	index_case(2, 64, 128, 3000, 4, 512, 12000, 128, IX_DUP_KEYS, 85);
	index_case(70, 8, 32, 700, 4, 64, 2700, 100, IX_RANDOM, 86); /* many queries */
	index_case(3, 4, 16, 0, 4, 8, 0, 4, IX_RANDOM, 87);          /* no keys yet */
	index_case(5, 4, 16, 9, 4, 1, 30, 2, IX_DUP_KEYS, 88);       /* k = 1 */
	/* k = 2048: visible keys 2046..2049, fewer than k, then more */
	index_case(12, 16, 64, 2100, 4, 2048, 8186, 64, IX_RANDOM, 89);
	index_case(12, 16, 64, 2100, 4, 2048, 8186, 64, IX_DUP_KEYS, 90);
	/* k not a power of two, keys not a multiple of the 128 a block scores */
	index_case(4, 64, 128, 1337, 4, 500, 5340, 32, IX_RANDOM, 91);
	/* the largest k the cuda top-k takes (its whole dynamic shared memory) */
	index_case(2, 4, 16, 5000, 4, 4096, 19000, 128, IX_RANDOM, 92);
}

/* ---- Engram fusion -------------------------------------------------------------------- */

Test(cuda_engram, fusion_matches_in_both_weight_dtypes)
{
	for (int f32 = 1; f32 >= 0; f32--) {
		struct gt_pair p;
		gt_open(&p, f32);
		uint64_t s = 90;
		uint32_t T = 13, n = 4, D = 32, E = 48;
		float *X = gt_rand(&s, (size_t)T * n * D, -2, 2),
		      *rows = gt_rand(&s, (size_t)T * E, -1, 1);
		float *wkv = gt_rand(&s, (size_t)(n + 1) * D * E, -0.2f, 0.2f);
		float *gain = gt_rand(&s, (size_t)n * D, 0.5f, 1.5f);
		struct gt_weight w = gt_weight_new(&p, wkv, 1, (n + 1) * D, E);
		struct gt_buf bX = gt_floats(&p, X, (size_t)T * n * D),
		              bR = gt_floats(&p, rows, (size_t)T * E);
		struct gt_buf bG = gt_floats(&p, gain, (size_t)n * D);
		struct dp_gpu_engram ec = {.X = bX.c,
		                           .rows = bR.c,
		                           .wkv = &w.c,
		                           .gain = bG.c,
		                           .T = T,
		                           .n = n,
		                           .D = D,
		                           .E = E,
		                           .eps = 1e-6f};
		struct dp_gpu_engram eg = {.X = bX.g,
		                           .rows = bR.g,
		                           .wkv = &w.g,
		                           .gain = bG.g,
		                           .T = T,
		                           .n = n,
		                           .D = D,
		                           .E = E,
		                           .eps = 1e-6f};
		cr_assert_eq(p.oc->engram_fuse(p.c, &ec), 0);
		cr_assert_eq(p.og->engram_fuse(p.g, &eg), 0);
		gt_expect_close(&p, &bX, (size_t)T * n * D, f32 ? 2e-5 : 1e-4, 1e-3,
		                f32 ? "engram f32" : "engram bf16");
		gt_buf_free(&p, &bX);
		gt_buf_free(&p, &bR);
		gt_buf_free(&p, &bG);
		gt_weight_free(&p, &w);
		free(X);
		free(rows);
		free(wkv);
		free(gain);
		gt_close(&p);
	}
}
