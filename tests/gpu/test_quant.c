/* SPDX-License-Identifier: MIT */
/*
 * The cpu backend's weights kept as the checkpoint stores them (bf16, e4m3
 * with 128x128 block scales, e2m1 with per-32 scales): every code widens
 * exactly, the codes no kernel may compute with are refused at upload, and
 * every kernel path (portable, avx2, avx512 where the CPU has them) computes
 * the product of the dequantized-to-fp32 weight — GEMV and GEMM, partial
 * blocks, strides, several thread counts — as do moe over quantized expert
 * stacks, plain and paged.
 *
 * The reference dequantizes with base/dtype.h's scalar decodings (not the
 * kernels' tables) and multiplies in double; a product passes when within
 * the fp32 summation bound (K + 2) 2^-24 sum_k |w_k x_k| of it, which any
 * order of fp32 sums meets and a wrong code, scale or block misses by far.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "base/dtype.h"
#include "gpu/gpu.h"
#include "gpu/cpu/qmm-internal.h"

static uint64_t next(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static float uniform(uint64_t *s, float lo, float hi)
{
	return lo + (hi - lo) * (float)((next(s) >> 40) * 0x1p-24);
}

static const enum dp_gpu_isa isas[] = { DP_GPU_ISA_PORTABLE, DP_GPU_ISA_AVX2, DP_GPU_ISA_AVX512 };

static struct dp_gpu *open_cpu(enum dp_gpu_isa isa, int threads)
{
	struct dp_gpu *g = NULL;
	struct dp_gpu_opts o = { .threads = threads, .isa = isa };
	char err[256] = "";
	int r = dp_gpu_new(DP_GPU_CPU, &o, &g, err, sizeof(err));
	cr_assert_eq(r, 0, "dp_gpu_new(%s, %d threads): %d %s", dp_gpu_isa_name(isa), threads, r,
		     err);
	cr_assert_eq(dp_gpu_isa_of(g), isa);
	return g;
}

/* ---- a host weight and its reference dequantization ---------------------------- */

struct hw {
	enum dp_dtype dtype, scale_dtype;
	uint32_t count, rows, cols;
	uint8_t *data;	   /* codes as stored */
	void *scale;	   /* scales as stored */
	size_t data_bytes, scale_n;
	float *ref;	   /* [count][rows][cols] dequantized */
};

static float ref_scale(const struct hw *h, uint32_t i, uint32_t r, uint32_t c)
{
	size_t per = dp_gpu_weight_scales(h->dtype, h->rows, h->cols), at;
	if (h->dtype == DP_DTYPE_E4M3)
		at = (size_t)(r / 128) * ((h->cols + 127) / 128) + c / 128;
	else
		at = (size_t)r * ((h->cols + 31) / 32) + c / 32;
	at += i * per;
	return h->scale_dtype == DP_DTYPE_E8M0 ? dp_e8m0_to_f32(((uint8_t *)h->scale)[at])
					       : ((float *)h->scale)[at];
}

static void hw_dequant(struct hw *h)
{
	size_t n = (size_t)h->count * h->rows * h->cols;
	h->ref = malloc(n * sizeof(float));
	cr_assert_not_null(h->ref);
	for (uint32_t i = 0; i < h->count; i++)
		for (uint32_t r = 0; r < h->rows; r++)
			for (uint32_t c = 0; c < h->cols; c++) {
				size_t e = ((size_t)i * h->rows + r) * h->cols + c;
				float v;
				if (h->dtype == DP_DTYPE_F32) {
					memcpy(&v, h->data + 4 * e, 4);
				} else if (h->dtype == DP_DTYPE_BF16) {
					uint16_t b;
					memcpy(&b, h->data + 2 * e, 2);
					v = dp_bf16_to_f32(b);
				} else if (h->dtype == DP_DTYPE_E4M3) {
					v = dp_e4m3_to_f32(h->data[e]) * ref_scale(h, i, r, c);
				} else {
					uint8_t b = h->data[e / 2];
					v = dp_e2m1_to_f32(e % 2 ? b >> 4 : b & 15) * ref_scale(h, i, r, c);
				}
				h->ref[e] = v;
			}
}

/* Random codes (no NaN) and scales 2^-4 .. 2^3 (e8m0) or arbitrary f32. */
static struct hw hw_random(uint64_t *s, enum dp_dtype dt, enum dp_dtype sdt, uint32_t count,
			   uint32_t rows, uint32_t cols)
{
	struct hw h = { .dtype = dt, .scale_dtype = sdt, .count = count, .rows = rows, .cols = cols };
	h.data_bytes = count * rows * dp_dtype_bytes(dt, cols);
	h.data = malloc(h.data_bytes);
	h.scale_n = count * dp_gpu_weight_scales(dt, rows, cols);
	h.scale = malloc(h.scale_n * 4 + 1);
	cr_assert(h.data && h.scale);
	for (size_t i = 0; i < h.data_bytes; i++) {
		uint8_t b = (uint8_t)next(s);
		if (dt == DP_DTYPE_E4M3 && (b & 0x7f) == 0x7f)
			b ^= 1;
		h.data[i] = b;
	}
	if (dt == DP_DTYPE_F32)
		for (size_t i = 0; i < h.data_bytes / 4; i++) {
			float f = uniform(s, -2, 2);
			memcpy(h.data + 4 * i, &f, 4);
		}
	if (dt == DP_DTYPE_BF16) /* bytes of random bf16 values in [-2, 2] */
		for (size_t i = 0; i < h.data_bytes / 2; i++) {
			uint16_t b = dp_f32_to_bf16(uniform(s, -2, 2));
			memcpy(h.data + 2 * i, &b, 2);
		}
	for (size_t i = 0; i < h.scale_n; i++) {
		if (sdt == DP_DTYPE_E8M0)
			((uint8_t *)h.scale)[i] = (uint8_t)(123 + next(s) % 8);
		else
			((float *)h.scale)[i] = uniform(s, 0.01f, 0.2f);
	}
	hw_dequant(&h);
	return h;
}

static void hw_free(struct hw *h)
{
	free(h->data);
	free(h->scale);
	free(h->ref);
}

/* ---- exact widening of every code ----------------------------------------------- */

Test(quant_codes, every_e4m3_code_widens_exactly_in_every_kernel_path)
{
	/* one row holding the 254 non-NaN codes, scale 2^0 and 2^-20, through each
	 * path's dequant tile and its GEMV against one-hot x (a product that is exact) */
	uint8_t codes[254];
	int n = 0;
	for (int v = 0; v < 256; v++)
		if ((v & 0x7f) != 0x7f)
			codes[n++] = (uint8_t)v;
	for (int v = 0; v < 256; v++)
		if ((v & 0x7f) != 0x7f)
			cr_expect_eq(memcmp(&dp_qmm_e4m3_lut[v], &(float){ dp_e4m3_to_f32((uint8_t)v) }, 4),
				     0, "table entry %#x", v);
	const uint8_t scales[] = { 127, 107, 0, 254 };
	for (size_t si = 0; si < sizeof(scales); si++)
		for (size_t ii = 0; ii < sizeof(isas) / sizeof(isas[0]); ii++) {
			if (!dp_qmm_isa_supported(isas[ii]))
				continue;
			const struct dp_qmm_isa *k = dp_qmm_isa_get(isas[ii]);
			uint8_t sc[2] = { scales[si], scales[si] };
			struct dp_gpu_weight w = { .data = codes, .dtype = DP_DTYPE_E4M3, .count = 1,
						   .rows = 1, .cols = 254, .scale = sc,
						   .scale_dtype = DP_DTYPE_E8M0 };
			struct dp_qmat q;
			cr_assert_eq(dp_qmat_of(&w, 0, &q), 0);
			float t[254];
			k->dequant(&q, 0, 1, 0, 254, t);
			for (int c = 0; c < 254; c++) {
				float want = dp_e4m3_to_f32(codes[c]) * dp_e8m0_to_f32(scales[si]);
				cr_expect(memcmp(&t[c], &want, 4) == 0 || (isinf(want) && t[c] == want),
					  "%s: code %#x scale %u: %a, want %a",
					  dp_gpu_isa_name(isas[ii]), codes[c], scales[si], t[c], want);
			}
			if (scales[si] == 254)
				continue; /* one-hot products of inf codes are NaN by IEEE */
			for (int c = 0; c < 254; c += 37) {
				float x[254] = { 0 }, y = -1;
				x[c] = 1;
				k->gemv(&q, x, 254, 1, &y, 1, 0, 1, false);
				float want = dp_e4m3_to_f32(codes[c]) * dp_e8m0_to_f32(scales[si]);
				cr_expect(y == want, "%s gemv code %#x: %a want %a",
					  dp_gpu_isa_name(isas[ii]), codes[c], y, want);
			}
		}
}

Test(quant_codes, every_e2m1_code_and_e8m0_scale_widens_exactly)
{
	static const float mag[8] = { 0, 0.5f, 1, 1.5f, 2, 3, 4, 6 };
	for (int v = 0; v < 16; v++) {
		float want = (v & 8) ? -mag[v & 7] : mag[v & 7];
		cr_expect(dp_e2m1_to_f32((uint8_t)v) == want && signbit(dp_e2m1_to_f32((uint8_t)v)) ==
							      signbit(want));
		cr_expect_eq(memcmp(&dp_qmm_e2m1_lut[v], &want, 4), 0);
	}
	for (int b = 0; b < 255; b++)
		cr_expect_eq(dp_e8m0_to_f32((uint8_t)b), ldexpf(1.0f, b - 127), "e8m0 %d", b);
	cr_expect(isnan(dp_e8m0_to_f32(255)));

	/* all 256 byte values of a packed row (both nibbles), every path, every
	 * scale byte */
	uint8_t codes[256];
	for (int v = 0; v < 256; v++)
		codes[v] = (uint8_t)v;
	uint8_t sc[16];
	for (int b = 0; b < 255; b++) {
		memset(sc, b, sizeof(sc));
		for (size_t ii = 0; ii < sizeof(isas) / sizeof(isas[0]); ii++) {
			if (!dp_qmm_isa_supported(isas[ii]))
				continue;
			struct dp_gpu_weight w = { .data = codes, .dtype = DP_DTYPE_E2M1, .count = 1,
						   .rows = 1, .cols = 512, .scale = sc,
						   .scale_dtype = DP_DTYPE_E8M0 };
			struct dp_qmat q;
			cr_assert_eq(dp_qmat_of(&w, 0, &q), 0);
			float t[512];
			dp_qmm_isa_get(isas[ii])->dequant(&q, 0, 1, 0, 512, t);
			for (int c = 0; c < 512; c++) {
				float want = dp_e2m1_to_f32(c % 2 ? codes[c / 2] >> 4 : codes[c / 2] & 15) *
					     dp_e8m0_to_f32((uint8_t)b);
				cr_assert(memcmp(&t[c], &want, 4) == 0,
					  "%s: e2m1 %d scale %d: %a want %a",
					  dp_gpu_isa_name(isas[ii]), c, b, t[c], want);
			}
		}
	}
}

/* ---- upload checks ----------------------------------------------------------------- */

/* The NaN scan reads 64 bytes a step and the rest one by one: a NaN code at
 * any position, in a word's any byte, among codes one step from NaN (0x7e,
 * 0xfe: the largest finite magnitudes), is found; none is invented. */
Test(quant_upload, a_nan_code_anywhere_in_a_weight_is_found)
{
	struct dp_gpu *g = open_cpu(DP_GPU_ISA_PORTABLE, 1);
	enum { ROWS = 3, COLS = 128 + 72 }; /* 600 bytes: 9 words of 64 and a 24-byte tail */
	uint8_t d[ROWS * COLS], s8[ROWS * 2];
	struct dp_gpu_weight w;
	memset(s8, 127, sizeof(s8));
	for (size_t i = 0; i < sizeof(d); i++)
		d[i] = i & 1 ? 0x7e : 0xfe;
	cr_assert_eq(dp_gpu_weight_wrap(g, d, s8, DP_DTYPE_E4M3, DP_DTYPE_E8M0, 1, ROWS, COLS, &w), 0,
		     "448 and -448 are finite");
	dp_gpu_weight_free(g, &w);
	for (size_t at = 0; at < sizeof(d); at++)
		for (int v = 0; v < 2; v++) {
			uint8_t keep = d[at];
			d[at] = v ? 0xff : 0x7f;
			cr_expect_eq(dp_gpu_weight_wrap(g, d, s8, DP_DTYPE_E4M3, DP_DTYPE_E8M0, 1, ROWS,
							COLS, &w),
				     -EINVAL, "NaN code %#x at byte %zu", d[at], at);
			d[at] = keep;
		}
	dp_gpu_free(g);
}

Test(quant_upload, nan_codes_and_scales_are_refused_at_upload_and_wrap)
{
	struct dp_gpu *g = open_cpu(DP_GPU_ISA_PORTABLE, 1);
	uint8_t d[256 * 128];
	uint8_t s8[4] = { 127, 127, 127, 127 };
	float sf[4] = { 1, 1, 1, 1 };
	struct dp_gpu_weight w;
	memset(d, 0x38, sizeof(d)); /* e4m3 1.0 */
	cr_expect_eq(dp_gpu_weight_upload_as(g, d, s8, DP_DTYPE_E4M3, DP_DTYPE_E8M0, 1, 128, 256, &w),
		     0);
	dp_gpu_weight_free(g, &w);
	for (int bad = 0; bad < 2; bad++) {
		d[1000] = bad ? 0xff : 0x7f;
		cr_expect_eq(dp_gpu_weight_upload_as(g, d, s8, DP_DTYPE_E4M3, DP_DTYPE_E8M0, 1, 128,
						     256, &w),
			     -EINVAL, "e4m3 NaN code %#x", d[1000]);
		cr_expect_eq(dp_gpu_weight_wrap(g, d, s8, DP_DTYPE_E4M3, DP_DTYPE_E8M0, 1, 128, 256,
						&w),
			     -EINVAL);
	}
	d[1000] = 0x38;
	s8[1] = 255;
	cr_expect_eq(dp_gpu_weight_upload_as(g, d, s8, DP_DTYPE_E4M3, DP_DTYPE_E8M0, 1, 128, 256, &w),
		     -EINVAL, "e8m0 255");
	cr_expect_eq(dp_gpu_weight_wrap(g, d, s8, DP_DTYPE_E2M1, DP_DTYPE_E8M0, 1, 1, 64, &w), -EINVAL);
	sf[1] = NAN;
	cr_expect_eq(dp_gpu_weight_wrap(g, d, sf, DP_DTYPE_E4M3, DP_DTYPE_F32, 1, 128, 256, &w),
		     -EINVAL);
	sf[1] = INFINITY;
	cr_expect_eq(dp_gpu_weight_upload_as(g, d, sf, DP_DTYPE_E2M1, DP_DTYPE_F32, 1, 2, 64, &w),
		     -EINVAL);
	/* shapes and dtypes that have no kernel */
	s8[1] = 127;
	cr_expect_eq(dp_gpu_weight_upload_as(g, d, s8, DP_DTYPE_E2M1, DP_DTYPE_E8M0, 1, 1, 63, &w),
		     -EINVAL, "odd e2m1 row");
	cr_expect_eq(dp_gpu_weight_upload_as(g, d, s8, DP_DTYPE_E4M3, DP_DTYPE_BF16, 1, 1, 64, &w),
		     -EINVAL);
	cr_expect_eq(dp_gpu_weight_upload_as(g, d, NULL, DP_DTYPE_E4M3, DP_DTYPE_E8M0, 1, 1, 64, &w),
		     -EINVAL);
	cr_expect_eq(dp_gpu_weight_alloc_as(g, DP_DTYPE_I32, DP_DTYPE_E8M0, 1, 1, 64, &w), -EINVAL);
	/* a hand-made weight without scales is refused by the op, not computed */
	float x[64] = { 0 }, y[1];
	struct dp_gpu_weight hand = { .data = d, .dtype = DP_DTYPE_E4M3, .count = 1, .rows = 1,
				      .cols = 64 };
	cr_expect_eq(dp_gpu_ops(g)->matmul(g, x, 0, &hand, 0, y, 0, 1, false), -EINVAL);
	dp_gpu_free(g);
}

Test(quant_upload, wrapped_weight_is_used_in_place_and_free_leaves_it_to_the_caller)
{
	uint64_t s = 7;
	struct hw h = hw_random(&s, DP_DTYPE_E2M1,
				DP_DTYPE_E8M0, 2, 40, 96);
	struct dp_gpu *g = open_cpu(DP_GPU_ISA_PORTABLE, 2);
	struct dp_gpu_mem_stats before, after;
	dp_gpu_mem_stats(g, &before);
	struct dp_gpu_weight wr, up;
	cr_assert_eq(dp_gpu_weight_wrap(g, h.data, h.scale, h.dtype, h.scale_dtype, 2, 40, 96, &wr), 0);
	cr_expect_eq(wr.data, (void *)h.data, "wrapped, not copied");
	cr_expect_eq(wr.scale, h.scale);
	dp_gpu_mem_stats(g, &after);
	cr_expect_eq(after.bytes[DP_GPU_MEM_WEIGHTS], before.bytes[DP_GPU_MEM_WEIGHTS]);
	cr_assert_eq(dp_gpu_weight_upload_as(g, h.data, h.scale, h.dtype, h.scale_dtype, 2, 40, 96, &up),
		     0);
	cr_expect_neq(up.data, (void *)h.data);
	float x[3 * 96], ya[3 * 40], yb[3 * 40];
	for (int i = 0; i < 3 * 96; i++)
		x[i] = uniform(&s, -1, 1);
	cr_assert_eq(dp_gpu_ops(g)->matmul(g, x, 0, &wr, 1, ya, 0, 3, false), 0);
	cr_assert_eq(dp_gpu_ops(g)->matmul(g, x, 0, &up, 1, yb, 0, 3, false), 0);
	cr_expect_eq(memcmp(ya, yb, sizeof(ya)), 0);
	/* a wrapped weight is not a fill target */
	cr_expect_eq(dp_gpu_weight_fill_blocks(g, &wr, 0, h.data, h.scale), -EINVAL);
	dp_gpu_weight_free(g, &wr); /* frees nothing of h (ASan would say) */
	cr_expect_null(wr.data);
	dp_gpu_weight_free(g, &up);
	dp_gpu_mem_stats(g, &after);
	cr_expect_eq(after.bytes[DP_GPU_MEM_WEIGHTS], before.bytes[DP_GPU_MEM_WEIGHTS]);
	h.data[0] ^= 0x11; /* still ours */
	dp_gpu_free(g);
	hw_free(&h);
}

/* ---- products ----------------------------------------------------------------------- */

/* y[M][rows] of matrix `index` against the reference, within the fp32 bound. */
static void check_product(const struct hw *h, uint32_t index, const float *x, size_t ldx,
			  uint32_t M, const float *y, size_t ldy, const float *y0, const char *what)
{
	const float *W = h->ref + (size_t)index * h->rows * h->cols;
	double worst = 0;
	for (uint32_t m = 0; m < M; m++)
		for (uint32_t r = 0; r < h->rows; r++) {
			double ref = y0 ? y0[m * ldy + r] : 0, mag = fabs(ref);
			for (uint32_t k = 0; k < h->cols; k++) {
				double p = (double)W[(size_t)r * h->cols + k] * x[m * ldx + k];
				ref += p;
				mag += fabs(p);
			}
			double err = fabs(y[m * ldy + r] - ref), bound = (h->cols + 2) * 0x1p-24 * mag + 1e-30;
			if (err / bound > worst)
				worst = err / bound;
			cr_assert(err <= bound, "%s: y[%u][%u] = %.9g, reference %.9g (bound %.3g)",
				  what, m, r, y[m * ldy + r], ref, bound);
		}
	cr_log_info("%s: worst error %.3f of the bound", what, worst);
}

static void products(enum dp_gpu_isa isa)
{
	if (!dp_qmm_isa_supported(isa))
		cr_skip_test("this CPU has no %s", dp_gpu_isa_name(isa));
	struct shape {
		enum dp_dtype dt, sdt;
		uint32_t rows, cols;
	} shapes[] = {
		{ DP_DTYPE_E4M3, DP_DTYPE_E8M0, 200, 300 }, /* partial 128x128 blocks both ways */
		{ DP_DTYPE_E4M3, DP_DTYPE_F32, 130, 256 },
		{ DP_DTYPE_E4M3, DP_DTYPE_E8M0, 16, 7 },    /* narrower than a vector */
		{ DP_DTYPE_E2M1, DP_DTYPE_E8M0, 70, 100 },  /* 100 = 3 blocks of 32 + 4 */
		{ DP_DTYPE_E2M1, DP_DTYPE_E8M0, 20, 608 },  /* 19 blocks: a run of 16 scales and 3 */
		{ DP_DTYPE_E2M1, DP_DTYPE_F32, 33, 576 },
		{ DP_DTYPE_BF16, DP_DTYPE_F32, 33, 77 },
		{ DP_DTYPE_BF16, DP_DTYPE_F32, 64, 1030 },  /* two K chunks in the GEMM */
		{ DP_DTYPE_F32, DP_DTYPE_F32, 33, 77 },	    /* fp32 (BLAS), on the caller's thread */
		{ DP_DTYPE_F32, DP_DTYPE_F32, 300, 1000 },  /* fp32 split over the pool: 19 panels */
		{ DP_DTYPE_F32, DP_DTYPE_F32, 8, 1030 },    /* fp32, one panel: split over M = 37 */
	};
	const uint32_t Ms[] = { 1, 2, 3, 4, 5, 8, 9, 13, 37 }; /* every GEMV register shape */
	const int threads[] = { 1, 2, 3 };
	uint64_t s = 42 + isa;
	for (size_t ti = 0; ti < sizeof(threads) / sizeof(threads[0]); ti++) {
		struct dp_gpu *g = open_cpu(isa, threads[ti]);
		const struct dp_gpu_ops *ops = dp_gpu_ops(g);
		for (size_t si = 0; si < sizeof(shapes) / sizeof(shapes[0]); si++) {
			struct shape sh = shapes[si];
			struct hw h = hw_random(&s, sh.dt, sh.sdt, 2, sh.rows, sh.cols);
			struct dp_gpu_weight w;
			cr_assert_eq(dp_gpu_weight_upload_as(g, h.data, h.scale, sh.dt, sh.sdt, 2, sh.rows,
							     sh.cols, &w),
				     0);
			for (size_t mi = 0; mi < sizeof(Ms) / sizeof(Ms[0]); mi++) {
				uint32_t M = Ms[mi];
				size_t ldx = sh.cols + 3, ldy = sh.rows + 5; /* strided rows */
				float *x = malloc(M * ldx * sizeof(float));
				float *y = malloc(M * ldy * sizeof(float));
				float *y0 = malloc(M * ldy * sizeof(float));
				cr_assert(x && y && y0);
				for (size_t i = 0; i < M * ldx; i++)
					x[i] = uniform(&s, -1, 1);
				for (size_t i = 0; i < M * ldy; i++)
					y0[i] = y[i] = uniform(&s, -1, 1);
				char what[128];
				snprintf(what, sizeof(what), "%s %d threads %s/%s %ux%u M=%u",
					 dp_gpu_isa_name(isa), threads[ti], dp_dtype_name(sh.dt),
					 dp_dtype_name(sh.sdt), sh.rows, sh.cols, M);
				cr_assert_eq(ops->matmul(g, x, (uint32_t)ldx, &w, 1, y, (uint32_t)ldy, M, true),
					     0);
				check_product(&h, 1, x, ldx, M, y, ldy, y0, what);
				/* the gaps between strided rows are left alone */
				for (uint32_t m = 0; m < M; m++)
					for (size_t r = sh.rows; r < ldy; r++)
						cr_assert_eq(y[m * ldy + r], y0[m * ldy + r]);
				cr_assert_eq(ops->matmul(g, x, (uint32_t)ldx, &w, 0, y, (uint32_t)ldy, M, false),
					     0);
				check_product(&h, 0, x, ldx, M, y, ldy, NULL, what);
				free(x);
				free(y);
				free(y0);
			}
			dp_gpu_weight_free(g, &w);
			hw_free(&h);
		}
		dp_gpu_free(g);
	}
}

/* A fork's child has the backend but not its pool's threads: its products
 * (split over the pool in the parent) still finish, and right (the daemon's
 * kill tests fork a writer after the parent made a backend: it hung). */
Test(quant_products, a_backend_made_before_fork_computes_in_the_child, .timeout = 60)
{
	struct dp_gpu *g = open_cpu(DP_GPU_ISA_PORTABLE, 2);
	const struct dp_gpu_ops *ops = dp_gpu_ops(g);
	uint64_t s = 7;
	struct hw h = hw_random(&s, DP_DTYPE_F32, DP_DTYPE_F32, 1, 300, 1000);
	struct hw q = hw_random(&s, DP_DTYPE_BF16, DP_DTYPE_F32, 1, 64, 1030);
	struct dp_gpu_weight w, wq;
	cr_assert_eq(dp_gpu_weight_upload_as(g, h.data, h.scale, h.dtype, h.scale_dtype, 1, 300, 1000,
					     &w),
		     0);
	cr_assert_eq(dp_gpu_weight_upload_as(g, q.data, q.scale, q.dtype, q.scale_dtype, 1, 64, 1030,
					     &wq),
		     0);
	const uint32_t M = 9;
	float *x = malloc(M * 1030 * sizeof(float)), *y = malloc(M * 300 * sizeof(float));
	float *yc = mmap(NULL, M * 300 * sizeof(float), PROT_READ | PROT_WRITE,
			 MAP_SHARED | MAP_ANONYMOUS, -1, 0); /* the child's product */
	cr_assert(x && y && yc != MAP_FAILED);
	for (size_t i = 0; i < M * 1030; i++)
		x[i] = uniform(&s, -1, 1);
	pid_t pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0) {
		alarm(30); /* a product waiting for workers that are not there */
		int ok = ops->matmul(g, x, 0, &wq, 0, y, 0, M, false) == 0 &&
			 ops->matmul(g, x, 1030, &w, 0, yc, 0, M, false) == 0;
		_exit(ok ? 0 : 1);
	}
	int status = 0;
	cr_assert_eq(waitpid(pid, &status, 0), pid);
	cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0,
		  "the child's products did not finish (status %#x)", status);
	check_product(&h, 0, x, 1030, M, yc, 300, NULL, "fp32 300x1000 in a fork's child");
	munmap(yc, M * 300 * sizeof(float));
	/* and in the parent, after the fork, as before */
	cr_assert_eq(ops->matmul(g, x, 1030, &w, 0, y, 0, M, false), 0);
	check_product(&h, 0, x, 1030, M, y, 300, NULL, "fp32 300x1000 after a fork");
	free(x);
	free(y);
	dp_gpu_weight_free(g, &w);
	dp_gpu_weight_free(g, &wq);
	hw_free(&h);
	hw_free(&q);
	dp_gpu_free(g);
}

Test(quant_portable, gemv_and_gemm_match_the_dequantized_fp32_product) { products(DP_GPU_ISA_PORTABLE); }
Test(quant_avx2, gemv_and_gemm_match_the_dequantized_fp32_product) { products(DP_GPU_ISA_AVX2); }
Test(quant_avx512, gemv_and_gemm_match_the_dequantized_fp32_product) { products(DP_GPU_ISA_AVX512); }

/* The SIMD sets have two GEMVs for e4m3 and e2m1: the in-order one (used
 * when the even/odd copy of x cannot be had) and gemv_eo on the reordered
 * x; matmul reaches only the second, so both are called here directly. */
Test(quant_products, in_order_and_even_odd_gemv_both_match_the_reference)
{
	struct {
		enum dp_dtype dt, sdt;
		uint32_t rows, cols;
	} shapes[] = {
		{ DP_DTYPE_E4M3, DP_DTYPE_E8M0, 200, 300 },
		{ DP_DTYPE_E4M3, DP_DTYPE_F32, 130, 512 },
		{ DP_DTYPE_E2M1, DP_DTYPE_E8M0, 70, 100 },
		{ DP_DTYPE_E2M1, DP_DTYPE_E8M0, 20, 608 },
		{ DP_DTYPE_E2M1, DP_DTYPE_F32, 33, 576 },
	};
	uint64_t s = 11;
	for (size_t si = 0; si < sizeof(shapes) / sizeof(shapes[0]); si++) {
		struct hw h = hw_random(&s, shapes[si].dt, shapes[si].sdt, 1, shapes[si].rows,
					shapes[si].cols);
		struct dp_gpu_weight w = { .data = h.data, .scale = h.scale, .dtype = h.dtype,
					   .scale_dtype = h.scale_dtype, .count = 1, .rows = h.rows,
					   .cols = h.cols };
		struct dp_qmat q;
		cr_assert_eq(dp_qmat_of(&w, 0, &q), 0);
		for (size_t ii = 1; ii < sizeof(isas) / sizeof(isas[0]); ii++) {
			if (!dp_qmm_isa_supported(isas[ii]))
				continue;
			const struct dp_qmm_isa *k = dp_qmm_isa_get(isas[ii]);
			cr_assert_not_null(k->gemv_eo, "%s has an even/odd GEMV", dp_gpu_isa_name(isas[ii]));
			for (uint32_t M = 1; M <= 8; M++) {
				size_t ldx = h.cols + 1, ldxs = h.cols + 7;
				float *x = malloc(M * ldx * sizeof(float)), *xs = malloc(M * ldxs * sizeof(float));
				float *y = malloc(M * h.rows * sizeof(float));
				cr_assert(x && xs && y);
				for (size_t i = 0; i < M * ldx; i++)
					x[i] = uniform(&s, -1, 1);
				char what[96];
				snprintf(what, sizeof(what), "%s %s/%s M=%u", dp_gpu_isa_name(isas[ii]),
					 dp_dtype_name(h.dtype), dp_dtype_name(h.scale_dtype), M);
				k->gemv(&q, x, ldx, M, y, h.rows, 0, h.rows, false);
				check_product(&h, 0, x, ldx, M, y, h.rows, NULL, what);
				dp_qmm_eo_order(&q, k->eo_run, x, ldx, M, xs, ldxs);
				k->gemv_eo(&q, xs, ldxs, M, y, h.rows, 0, h.rows, false);
				check_product(&h, 0, x, ldx, M, y, h.rows, NULL, what);
				free(x);
				free(xs);
				free(y);
			}
		}
		hw_free(&h);
	}
}

/* e8m0 code 0 is 2^-127 (a subnormal) and 254 is 2^127: the kernels convert
 * scales 16 at a time (e2m1) or scale a block's sums (e4m3), and both ends
 * must come out as the scalar decoding says. */
Test(quant_products, e8m0_scales_at_both_ends_widen_exactly_in_every_path)
{
	struct {
		enum dp_dtype dt;
		uint8_t scale, mask; /* scale code; mask on the codes (small, for 2^127) */
		float xmag;          /* |x| up to this: products stay normal and finite */
	} cases[] = {
		{ DP_DTYPE_E2M1, 0, 0xff, 0x1p100f },
		{ DP_DTYPE_E2M1, 254, 0x33, 0x1p-100f }, /* codes 0 .. 1.5 */
		{ DP_DTYPE_E4M3, 0, 0xff, 0x1p100f },
		{ DP_DTYPE_E4M3, 246, 0x9f, 0x1p-100f }, /* the largest the f16 route takes */
	};
	uint64_t s = 5;
	for (size_t ci = 0; ci < sizeof(cases) / sizeof(cases[0]); ci++) {
		/* 1056 columns: 33 e2m1 blocks (two runs of 16 and one alone), 8 e4m3
		 * blocks and a tail */
		struct hw h = hw_random(&s, cases[ci].dt, DP_DTYPE_E8M0, 1, 24, 1056);
		for (size_t i = 0; i < h.data_bytes; i++)
			h.data[i] &= cases[ci].mask;
		memset(h.scale, cases[ci].scale, h.scale_n);
		free(h.ref);
		hw_dequant(&h);
		for (size_t ii = 0; ii < sizeof(isas) / sizeof(isas[0]); ii++) {
			if (!dp_qmm_isa_supported(isas[ii]))
				continue;
			struct dp_gpu *g = open_cpu(isas[ii], 2);
			struct dp_gpu_weight w;
			cr_assert_eq(dp_gpu_weight_wrap(g, h.data, h.scale, h.dtype, h.scale_dtype, 1, 24,
							1056, &w),
				     0);
			float *x = malloc(9 * 1056 * sizeof(float)), y[9 * 24];
			cr_assert_not_null(x);
			for (int i = 0; i < 9 * 1056; i++)
				x[i] = uniform(&s, -cases[ci].xmag, cases[ci].xmag);
			for (uint32_t M = 1; M <= 9; M += 3) {
				char what[64];
				snprintf(what, sizeof(what), "%s %s scale %u M=%u", dp_gpu_isa_name(isas[ii]),
					 dp_dtype_name(h.dtype), cases[ci].scale, M);
				cr_assert_eq(dp_gpu_ops(g)->matmul(g, x, 0, &w, 0, y, 0, M, false), 0);
				check_product(&h, 0, x, 1056, M, y, 24, NULL, what);
			}
			free(x);
			dp_gpu_weight_free(g, &w);
			dp_gpu_free(g);
		}
		hw_free(&h);
	}
}

Test(quant_products, scales_too_large_for_the_vector_widening_take_the_exact_path)
{
	/* e8m0 250 = 2^123: the f16 route's multiplier 2^131 is not a float */
	uint64_t s = 3;
	struct hw h = hw_random(&s, DP_DTYPE_E4M3, DP_DTYPE_E8M0, 1, 8, 256);
	for (size_t i = 0; i < h.data_bytes; i++)
		h.data[i] &= 0x9f; /* small codes: products stay finite */
	memset(h.scale, 250, h.scale_n);
	free(h.ref);
	hw_dequant(&h);
	for (size_t ii = 0; ii < sizeof(isas) / sizeof(isas[0]); ii++) {
		if (!dp_qmm_isa_supported(isas[ii]))
			continue;
		struct dp_gpu *g = open_cpu(isas[ii], 1);
		struct dp_gpu_weight w;
		cr_assert_eq(dp_gpu_weight_upload_as(g, h.data, h.scale, h.dtype, h.scale_dtype, 1, 8,
						     256, &w),
			     0);
		float x[12 * 256], y[12 * 8];
		for (int i = 0; i < 12 * 256; i++)
			x[i] = uniform(&s, -0x1p-100f, 0x1p-100f);
		for (uint32_t M = 1; M <= 12; M += 11) {
			cr_assert_eq(dp_gpu_ops(g)->matmul(g, x, 0, &w, 0, y, 0, M, false), 0);
			check_product(&h, 0, x, 256, M, y, 8, NULL, dp_gpu_isa_name(isas[ii]));
		}
		dp_gpu_weight_free(g, &w);
		dp_gpu_free(g);
	}
	hw_free(&h);
}

Test(quant_products, bf16_embedding_rows_widen_exactly)
{
	struct dp_gpu *g = open_cpu(DP_GPU_ISA_PORTABLE, 1);
	uint16_t tab[5 * 6];
	for (int i = 0; i < 30; i++)
		tab[i] = dp_f32_to_bf16((float)i * 0.37f - 3);
	struct dp_gpu_weight w;
	cr_assert_eq(dp_gpu_weight_upload_as(g, tab, NULL, DP_DTYPE_BF16, DP_DTYPE_F32, 1, 5, 6, &w), 0);
	int32_t ids[3] = { 4, 0, 2 };
	float y[18];
	cr_assert_eq(dp_gpu_ops(g)->embed(g, &w, ids, 3, y), 0);
	for (int t = 0; t < 3; t++)
		for (int c = 0; c < 6; c++)
			cr_expect_eq(y[t * 6 + c], dp_bf16_to_f32(tab[ids[t] * 6 + c]));
	dp_gpu_weight_free(g, &w);
	dp_gpu_free(g);
}

/* ---- moe over quantized expert stacks ------------------------------------------------ */

static void moe_case(enum dp_gpu_isa isa, enum dp_dtype dt, int threads, uint32_t T)
{
	if (!dp_qmm_isa_supported(isa))
		return;
	const uint32_t E = 5, k = 2, D = 96, I = 64; /* gate_up [2I][D], down [D][I] */
	uint64_t s = 99 + T + dt;
	struct hw gu = hw_random(&s, dt, DP_DTYPE_E8M0, E, 2 * I, D);
	struct hw dn = hw_random(&s, dt, DP_DTYPE_E8M0, E, D, I);
	struct dp_gpu *g = open_cpu(isa, threads);
	const struct dp_gpu_ops *ops = dp_gpu_ops(g);
	struct dp_gpu_weight qgu, qdn, fgu, fdn;
	cr_assert_eq(dp_gpu_weight_upload_as(g, gu.data, gu.scale, dt, DP_DTYPE_E8M0, E, 2 * I, D, &qgu), 0);
	cr_assert_eq(dp_gpu_weight_upload_as(g, dn.data, dn.scale, dt, DP_DTYPE_E8M0, E, D, I, &qdn), 0);
	/* the same experts dequantized, through the fp32 (BLAS) path */
	cr_assert_eq(dp_gpu_weight_upload(g, gu.ref, DP_DTYPE_F32, E, 2 * I, D, &fgu), 0);
	cr_assert_eq(dp_gpu_weight_upload(g, dn.ref, DP_DTYPE_F32, E, D, I, &fdn), 0);

	float *x = malloc((size_t)T * D * 4), *w = malloc((size_t)T * k * 4);
	float *yq = calloc((size_t)T * D, 4), *yf = calloc((size_t)T * D, 4), *yp = calloc((size_t)T * D, 4);
	int32_t *idx = malloc((size_t)T * k * 4);
	cr_assert(x && w && yq && yf && yp && idx);
	for (size_t i = 0; i < (size_t)T * D; i++)
		x[i] = uniform(&s, -1, 1);
	for (uint32_t t = 0; t < T; t++) {
		idx[t * k] = (int32_t)(t % 3 == 0 ? 1 : 3);	 /* experts 1 and 3 ... */
		idx[t * k + 1] = (int32_t)(t % 2 ? 4 : -1);	 /* ... 4, and skipped picks */
		w[t * k] = 0.7f;
		w[t * k + 1] = 0.3f;
	}
	cr_assert_eq(ops->moe(g, x, idx, w, T, k, &qgu, &qdn, 7.0f, yq), 0);
	cr_assert_eq(ops->moe(g, x, idx, w, T, k, &fgu, &fdn, 7.0f, yf), 0);
	double maxref = 1e-6, maxdiff = 0;
	for (size_t i = 0; i < (size_t)T * D; i++) {
		maxref = fmax(maxref, fabs(yf[i]));
		maxdiff = fmax(maxdiff, fabs((double)yq[i] - yf[i]));
	}
	cr_expect(maxdiff <= 1e-5 * maxref, "%s %s T=%u: moe differs from the fp32 experts by %.3g of %.3g",
		  dp_gpu_isa_name(isa), dp_dtype_name(dt), T, maxdiff, maxref);

	/* a paged stack: experts 1, 3, 4 resident in slots 2, 0, 1 of a 3-slot cache,
	 * bitwise the plain stack's result */
	struct dp_gpu_weight pgu, pdn;
	cr_assert_eq(dp_gpu_weight_alloc_as(g, dt, DP_DTYPE_E8M0, 3, 2 * I, D, &pgu), 0);
	cr_assert_eq(dp_gpu_weight_alloc_as(g, dt, DP_DTYPE_E8M0, 3, D, I, &pdn), 0);
	const int32_t slot_host[5] = { -1, 2, -1, 0, 1 };
	size_t gmb = 2 * I * dp_dtype_bytes(dt, D), dmb = D * dp_dtype_bytes(dt, I);
	size_t gsn = dp_gpu_weight_scales(dt, 2 * I, D), dsn = dp_gpu_weight_scales(dt, D, I);
	for (uint32_t e = 0; e < E; e++)
		if (slot_host[e] >= 0) {
			cr_assert_eq(dp_gpu_weight_fill_blocks(g, &pgu, (uint32_t)slot_host[e],
							       gu.data + e * gmb, (uint8_t *)gu.scale + e * gsn),
				     0);
			cr_assert_eq(dp_gpu_weight_fill_blocks(g, &pdn, (uint32_t)slot_host[e],
							       dn.data + e * dmb, (uint8_t *)dn.scale + e * dsn),
				     0);
		}
	int32_t *slot_of = dp_gpu_alloc(g, sizeof(slot_host), DP_GPU_MEM_STATE);
	cr_assert_eq(dp_gpu_upload(g, slot_of, slot_host, sizeof(slot_host)), 0);
	struct dp_gpu_weight vgu = pgu, vdn = pdn;
	vgu.count = vdn.count = E;
	vgu.stored = vdn.stored = 3;
	vgu.slot_of = vdn.slot_of = slot_of;
	cr_assert_eq(ops->moe(g, x, idx, w, T, k, &vgu, &vdn, 7.0f, yp), 0);
	cr_expect_eq(memcmp(yp, yq, (size_t)T * D * 4), 0, "paged stack differs from the plain one");
	/* a pick of an expert that is not resident is an error */
	idx[0] = 2;
	cr_expect_eq(ops->moe(g, x, idx, w, T, k, &vgu, &vdn, 7.0f, yp), -EINVAL);

	dp_gpu_dealloc(g, slot_of, sizeof(slot_host), DP_GPU_MEM_STATE);
	dp_gpu_weight_free(g, &pgu);
	dp_gpu_weight_free(g, &pdn);
	dp_gpu_weight_free(g, &qgu);
	dp_gpu_weight_free(g, &qdn);
	dp_gpu_weight_free(g, &fgu);
	dp_gpu_weight_free(g, &fdn);
	struct dp_gpu_mem_stats st;
	dp_gpu_mem_stats(g, &st);
	cr_expect_eq(st.bytes[DP_GPU_MEM_WEIGHTS], 0, "every weight byte given back");
	dp_gpu_free(g);
	free(x);
	free(w);
	free(yq);
	free(yf);
	free(yp);
	free(idx);
	hw_free(&gu);
	hw_free(&dn);
}

Test(quant_moe, quantized_expert_stacks_plain_and_paged_match_the_fp32_experts)
{
	const enum dp_dtype dts[] = { DP_DTYPE_E2M1, DP_DTYPE_E4M3 };
	for (size_t ii = 0; ii < sizeof(isas) / sizeof(isas[0]); ii++)
		for (size_t d = 0; d < 2; d++) {
			moe_case(isas[ii], dts[d], 2, 1);  /* decode */
			moe_case(isas[ii], dts[d], 3, 40); /* prefill: GEMM per expert */
		}
}

/* ---- dispatch ---------------------------------------------------------------------------- */

Test(quant_dispatch, dp_cpu_isa_forces_a_path_and_a_bad_name_is_refused)
{
	struct dp_gpu *g = NULL;
	char err[256];
	setenv("DP_CPU_ISA", "portable", 1);
	cr_assert_eq(dp_gpu_new(DP_GPU_CPU, NULL, &g, err, sizeof(err)), 0);
	cr_expect_eq(dp_gpu_isa_of(g), DP_GPU_ISA_PORTABLE);
	dp_gpu_free(g);
	setenv("DP_CPU_ISA", "sse9", 1);
	cr_expect_eq(dp_gpu_new(DP_GPU_CPU, NULL, &g, err, sizeof(err)), -EINVAL);
	cr_expect(strstr(err, "DP_CPU_ISA") != NULL, "%s", err);
	unsetenv("DP_CPU_ISA");
	cr_assert_eq(dp_gpu_new(DP_GPU_CPU, NULL, &g, err, sizeof(err)), 0);
	enum dp_gpu_isa best = dp_qmm_isa_supported(DP_GPU_ISA_AVX512) ? DP_GPU_ISA_AVX512
			       : dp_qmm_isa_supported(DP_GPU_ISA_AVX2) ? DP_GPU_ISA_AVX2
								       : DP_GPU_ISA_PORTABLE;
	cr_expect_eq(dp_gpu_isa_of(g), best, "auto takes the best path the CPU has");
	dp_gpu_free(g);
	enum dp_gpu_isa parsed;
	cr_expect_eq(dp_gpu_isa_parse("avx2", &parsed), 0);
	cr_expect_eq(parsed, DP_GPU_ISA_AVX2);
}
