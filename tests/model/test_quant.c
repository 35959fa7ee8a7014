/* SPDX-License-Identifier: MIT */
/*
 * model/quant.h and base/dtype.h's e8m0 / e2m1 / e4m3: every code decodes to the value the
 * format defines (checked against an independent formula); block and group scales land on the
 * right elements; bad scales and NaN weight codes are refused naming the tensor.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <math.h>
#include <string.h>

#include "base/dtype.h"
#include "model/quant.h"

/* e4m3fn by its definition: (-1)^s * 2^(e-7) * (1 + m/8), subnormal 2^-6 * m/8. */
static double e4m3_ref(unsigned v)
{
	unsigned s = v >> 7, e = (v >> 3) & 15, m = v & 7;
	double a = e ? ldexp(1.0 + m / 8.0, (int)e - 7) : ldexp(m / 8.0, -6);

	return s ? -a : a;
}

Test(quant, every_e4m3_code_decodes_as_the_format_defines)
{
	for (unsigned v = 0; v < 256; v++) {
		float f = dp_e4m3_to_f32((uint8_t)v);

		if ((v & 0x7f) == 0x7f) {
			cr_expect(isnan(f), "code 0x%02x is NaN", v);
			continue;
		}
		cr_expect_eq((double)f, e4m3_ref(v), "code 0x%02x: %a, want %a", v, (double)f,
		             e4m3_ref(v));
		cr_expect_eq(signbit(f) != 0, (v & 0x80) != 0, "code 0x%02x sign", v);
	}
	cr_expect_eq(dp_e4m3_to_f32(0x7e), 448.0f);
	cr_expect_eq(dp_e4m3_to_f32(0x01), 0x1p-9f);
}

Test(quant, every_e2m1_code_decodes_as_the_format_defines)
{
	static const float want[16] = {0, 0.5f, 1, 1.5f, 2, 3, 4, 6,
	                               -0.0f, -0.5f, -1, -1.5f, -2, -3, -4, -6};

	for (unsigned v = 0; v < 16; v++) {
		float f = dp_e2m1_to_f32((uint8_t)v);
		/* by definition: e = bits 2..1, m = bit 0; e == 0 is m * 0.5 */
		unsigned e = (v >> 1) & 3, m = v & 1;
		double ref = e ? ldexp(1.0 + m / 2.0, (int)e - 1) : m * 0.5;

		cr_expect_eq(f, want[v], "code %u: %g", v, (double)f);
		cr_expect_eq(fabs((double)f), ref, "code %u against the formula", v);
		cr_expect_eq(signbit(f) != 0, v >= 8, "code %u sign", v);
		cr_expect_eq(dp_e2m1_to_f32((uint8_t)(v | 0xf0)), f, "high bits ignored");
	}
}

Test(quant, every_e8m0_code_is_a_power_of_two_and_255_is_nan)
{
	for (unsigned b = 0; b < 255; b++) {
		float f = dp_e8m0_to_f32((uint8_t)b);
		int e;

		cr_expect_eq((double)f, ldexp(1.0, (int)b - 127), "code %u", b);
		cr_expect(f > 0 && frexpf(f, &e) == 0.5f && e - 1 == (int)b - 127, "code %u", b);
	}
	cr_expect(isnan(dp_e8m0_to_f32(255)));
	cr_expect_eq(dp_e8m0_to_f32(127), 1.0f);
	cr_expect_eq(dp_e8m0_to_f32(0), 0x1p-127f, "2^-127 is an exact fp32 subnormal");
}

/* tensor views over caller memory */
static struct dp_st_tensor view(const char *name, enum dp_st_dtype dt, int64_t r, int64_t c,
                                const void *data)
{
	struct dp_st_tensor t = {.name = name, .file = "test.safetensors", .dtype = dt, .ndim = 2,
	                         .shape = {r, c}, .numel = (uint64_t)(r * c), .data = data};

	t.bytes = t.numel * dp_st_dtype_size(dt);
	return t;
}

Test(quant, fp8_block_scales_cover_128_by_128_and_the_partial_edge_blocks)
{
	/* [130, 260]: 2 x 3 scale blocks, the last row and column blocks partial */
	enum { R = 130, C = 260 };
	static unsigned char q[R * C];
	unsigned char s[6] = {127, 128, 129, 126, 120, 0};
	static float out[R * C];
	char err[256] = "";

	for (int i = 0; i < R * C; i++)
		q[i] = (unsigned char)(i % 251) == 0x7f ? 0 : (unsigned char)(i % 251);
	struct dp_st_tensor w = view("x.weight", DP_ST_F8_E4M3, R, C, q);
	struct dp_st_tensor sc = view("x.scale", DP_ST_F8_E8M0, 2, 3, s);
	cr_assert_eq(dp_quant_check_scale(&w, &sc, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(dp_quant_dequant_rows(&w, &sc, 0, R, out, err, sizeof(err)), 0, "%s", err);
	for (int r = 0; r < R; r++)
		for (int c = 0; c < C; c++) {
			float want = dp_e4m3_to_f32(q[r * C + c]) *
			             ldexpf(1.0f, s[(r / 128) * 3 + c / 128] - 127);
			if (out[r * C + c] != want)
				cr_assert_fail("[%d][%d] = %a, want %a", r, c,
				               (double)out[r * C + c], (double)want);
		}
	/* a row range in the second block row */
	float part[2 * C];
	cr_assert_eq(dp_quant_dequant_rows(&w, &sc, 128, 2, part, NULL, 0), 0);
	cr_expect_eq(memcmp(part, out + 128 * C, sizeof(part)), 0);
	cr_expect_eq(dp_quant_dequant_rows(&w, &sc, 129, 2, part, NULL, 0), -ERANGE);
}

Test(quant, fp8_with_f32_power_of_two_scales_as_base_checkpoints_store_them)
{
	unsigned char q[128 * 256];
	float s[2] = {0.25f, 0x1p-20f}, out[256];

	for (int i = 0; i < 128 * 256; i++)
		q[i] = (unsigned char)(i & 0x7e);
	struct dp_st_tensor w = view("e.weight", DP_ST_F8_E4M3, 128, 256, q);
	struct dp_st_tensor sc = view("e.scale", DP_ST_F32, 1, 2, s);
	cr_assert_eq(dp_quant_check_scale(&w, &sc, NULL, 0), 0);
	cr_assert_eq(dp_quant_dequant_rows(&w, &sc, 5, 1, out, NULL, 0), 0);
	for (int c = 0; c < 256; c++)
		cr_expect_eq(out[c], dp_e4m3_to_f32(q[5 * 256 + c]) * s[c / 128]);
}

Test(quant, fp4_low_nibble_first_and_one_scale_per_32)
{
	enum { R = 3, C = 64 };
	unsigned char q[R * C / 2], s[R * 2];
	float out[R * C];

	for (int i = 0; i < R * C / 2; i++)
		q[i] = (unsigned char)((i * 37 + 11) & 0xff);
	for (int i = 0; i < R * 2; i++)
		s[i] = (unsigned char)(120 + i);
	struct dp_st_tensor w = view("layers.0.ffn.experts.0.w1.weight", DP_ST_I8, R, C / 2, q);
	struct dp_st_tensor sc = view("layers.0.ffn.experts.0.w1.scale", DP_ST_F8_E8M0, R, 2, s);
	uint64_t rows, cols;
	cr_assert_eq(dp_quant_logical_shape(&w, &rows, &cols), 0);
	cr_expect(rows == R && cols == C);
	cr_assert_eq(dp_quant_check_scale(&w, &sc, NULL, 0), 0);
	cr_assert_eq(dp_quant_dequant_rows(&w, &sc, 0, R, out, NULL, 0), 0);
	for (int r = 0; r < R; r++)
		for (int c = 0; c < C; c++) {
			unsigned char b = q[r * C / 2 + c / 2];
			float want = dp_e2m1_to_f32(c % 2 ? b >> 4 : b & 15) *
			             ldexpf(1.0f, s[r * 2 + c / 32] - 127);
			cr_expect_eq(out[r * C + c], want, "[%d][%d]", r, c);
		}
	/* byte 0x21: element 0 is code 1 (0.5), element 1 is code 2 (1.0) */
	unsigned char one[16] = {0x21}, s1 = 127;
	float o1[32];
	struct dp_st_tensor w1 = view("w", DP_ST_I8, 1, 16, one), s1t = view("s", DP_ST_F8_E8M0, 1, 1, &s1);
	cr_assert_eq(dp_quant_dequant_rows(&w1, &s1t, 0, 1, o1, NULL, 0), 0);
	cr_expect(o1[0] == 0.5f && o1[1] == 1.0f && o1[2] == 0.0f);
}

Test(quant, e8m0_code_255_is_refused_naming_the_tensor)
{
	unsigned char q[128 * 128] = {0}, s[1] = {255};
	char err[256] = "";
	struct dp_st_tensor w = view("layers.0.attn.wq_a.weight", DP_ST_F8_E4M3, 128, 128, q);
	struct dp_st_tensor sc = view("layers.0.attn.wq_a.scale", DP_ST_F8_E8M0, 1, 1, s);

	cr_expect_eq(dp_quant_check_scale(&w, &sc, err, sizeof(err)), -EINVAL);
	cr_expect(strstr(err, "layers.0.attn.wq_a.scale") && strstr(err, "255"), "%s", err);
	cr_expect(strstr(err, "test.safetensors"), "%s", err);
}

Test(quant, scale_of_the_wrong_shape_or_dtype_is_refused)
{
	unsigned char q[256 * 128] = {0}, s[4] = {127, 127, 127, 127};
	float f[2] = {1.0f, 3.0f};
	char err[256] = "";
	struct dp_st_tensor w = view("x.weight", DP_ST_F8_E4M3, 256, 128, q);
	struct dp_st_tensor sc = view("x.scale", DP_ST_F8_E8M0, 1, 2, s);

	cr_expect_eq(dp_quant_check_scale(&w, &sc, err, sizeof(err)), -EINVAL);
	cr_expect(strstr(err, "x.scale") && strstr(err, "expected [2, 1]"), "%s", err);
	sc = view("x.scale", DP_ST_BF16, 2, 1, s);
	cr_expect_eq(dp_quant_check_scale(&w, &sc, err, sizeof(err)), -EINVAL);
	cr_expect(strstr(err, "dtype BF16"), "%s", err);
	sc = view("x.scale", DP_ST_F32, 2, 1, f);
	cr_expect_eq(dp_quant_check_scale(&w, &sc, err, sizeof(err)), -EINVAL);
	cr_expect(strstr(err, "power of two") && strstr(err, "[1][0]"), "%s", err);
	/* FP4 scales must be e8m0 */
	struct dp_st_tensor w4 = view("e.weight", DP_ST_I8, 2, 16, q);
	sc = view("e.scale", DP_ST_F32, 2, 1, f);
	cr_expect_eq(dp_quant_check_scale(&w4, &sc, err, sizeof(err)), -EINVAL);
	cr_expect(strstr(err, "expected F8_E8M0"), "%s", err);
}

Test(quant, e4m3_nan_codes_are_refused_naming_the_element)
{
	static unsigned char q[2 * 128];
	unsigned char s = 127;
	float out[2 * 128];
	char err[256] = "";

	for (int bad = 0; bad < 2; bad++) {
		memset(q, 0x38, sizeof(q));
		q[128 + 5] = bad ? 0xff : 0x7f;
		struct dp_st_tensor w = view("layers.1.attn.wo_b.weight", DP_ST_F8_E4M3, 2, 128, q);
		struct dp_st_tensor sc = view("layers.1.attn.wo_b.scale", DP_ST_F8_E8M0, 1, 1, &s);
		cr_expect_eq(dp_quant_dequant_rows(&w, &sc, 0, 1, out, err, sizeof(err)), 0,
		             "row 0 is clean");
		cr_expect_eq(dp_quant_dequant_rows(&w, &sc, 0, 2, out, err, sizeof(err)), -EINVAL);
		cr_expect(strstr(err, "layers.1.attn.wo_b.weight") && strstr(err, "[1][5]") &&
		              strstr(err, "NaN"),
		          "%s", err);
	}
}

Test(quant, formats_follow_the_dtype)
{
	cr_expect_eq(dp_quant_format_of(DP_ST_BF16), DP_QUANT_NONE);
	cr_expect_eq(dp_quant_format_of(DP_ST_F8_E4M3), DP_QUANT_FP8);
	cr_expect_eq(dp_quant_format_of(DP_ST_I8), DP_QUANT_FP4);
	cr_expect_lt(dp_quant_format_of(DP_ST_F8_E8M0), 0);
	cr_expect_lt(dp_quant_format_of(DP_ST_I64), 0);
}
