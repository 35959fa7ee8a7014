/* SPDX-License-Identifier: MIT */
/*
 * model/quant.c — check scales against their weights and dequantize rows (model/quant.h).
 */
#include "model/quant.h"

#include <errno.h>
#include <math.h>
#include <string.h>

#include "base/dtype.h"
#include "base/err.h"

int dp_quant_format_of(enum dp_st_dtype dtype)
{
	switch (dtype) {
	case DP_ST_F32:
	case DP_ST_BF16:
	case DP_ST_F16:
		return DP_QUANT_NONE;
	case DP_ST_F8_E4M3:
		return DP_QUANT_FP8;
	case DP_ST_I8:
		return DP_QUANT_FP4;
	default:
		return -1;
	}
}

const char *dp_quant_format_name(enum dp_quant_format f)
{
	static const char *const names[DP_QUANT_FORMAT_MAX] = {
	    [DP_QUANT_NONE] = "float", [DP_QUANT_FP8] = "fp8", [DP_QUANT_FP4] = "fp4"};

	return (unsigned)f < DP_QUANT_FORMAT_MAX ? names[f] : NULL;
}

int dp_quant_logical_shape(const struct dp_st_tensor *w, uint64_t *ret_rows, uint64_t *ret_cols)
{
	int f;

	if (!w || !ret_rows || !ret_cols || w->ndim != 2 || (f = dp_quant_format_of(w->dtype)) < 0)
		return -EINVAL;
	*ret_rows = (uint64_t)w->shape[0];
	*ret_cols = (uint64_t)w->shape[1] * (f == DP_QUANT_FP4 ? 2 : 1);
	return 0;
}

static uint64_t ceil_div(uint64_t a, uint64_t b)
{
	return a / b + (a % b != 0);
}

int dp_quant_scale_shape(const struct dp_st_tensor *w, int64_t *ret_shape)
{
	uint64_t rows, cols;

	if (!ret_shape || dp_quant_logical_shape(w, &rows, &cols) < 0)
		return -EINVAL;
	switch (dp_quant_format_of(w->dtype)) {
	case DP_QUANT_FP8:
		ret_shape[0] = (int64_t)ceil_div(rows, DP_QUANT_FP8_BLOCK);
		ret_shape[1] = (int64_t)ceil_div(cols, DP_QUANT_FP8_BLOCK);
		return 0;
	case DP_QUANT_FP4:
		ret_shape[0] = (int64_t)rows;
		ret_shape[1] = (int64_t)ceil_div(cols, DP_QUANT_FP4_GROUP);
		return 0;
	default:
		return -EINVAL;
	}
}

/* An F32 scale as the format promises it: finite, > 0, a power of two. */
static bool pow2_scale(float s)
{
	int e;

	return isfinite(s) && s > 0 && frexpf(s, &e) == 0.5f;
}

int dp_quant_check_scale(const struct dp_st_tensor *w, const struct dp_st_tensor *scale, char *err,
                         size_t err_len)
{
	int64_t want[2];
	int f;

	if (!w || !scale || dp_quant_scale_shape(w, want) < 0)
		return -EINVAL;
	f = dp_quant_format_of(w->dtype);
	if (scale->dtype != DP_ST_F8_E8M0 && !(f == DP_QUANT_FP8 && scale->dtype == DP_ST_F32)) {
		dp_errf(err, err_len, "%s: tensor '%s' (scale of %s weight '%s'): dtype %s, expected %s",
		        scale->file, scale->name, dp_st_dtype_name(w->dtype), w->name,
		        dp_st_dtype_name(scale->dtype),
		        f == DP_QUANT_FP8 ? "F8_E8M0 (or F32 powers of two)" : "F8_E8M0");
		return -EINVAL;
	}
	if (scale->ndim != 2 || scale->shape[0] != want[0] || scale->shape[1] != want[1]) {
		char have[96];

		dp_errf(err, err_len,
		        "%s: tensor '%s' (scale of %s weight '%s'): shape %s, expected [%lld, %lld] "
		        "(%s)",
		        scale->file, scale->name, dp_st_dtype_name(w->dtype), w->name,
		        dp_st_shape_str(scale, have, sizeof(have)), (long long)want[0],
		        (long long)want[1],
		        f == DP_QUANT_FP8 ? "one per 128 x 128 block" : "one per 32 along a row");
		return -EINVAL;
	}
	const unsigned char *p = scale->data;
	for (uint64_t i = 0; i < scale->numel; i++) {
		bool bad;
		float v;

		if (scale->dtype == DP_ST_F8_E8M0) {
			bad = p[i] == DP_E8M0_NAN;
			v = NAN;
		} else {
			memcpy(&v, p + 4 * i, 4);
			bad = !pow2_scale(v);
		}
		if (bad) {
			if (scale->dtype == DP_ST_F8_E8M0)
				dp_errf(err, err_len,
				        "%s: tensor '%s': scale [%llu][%llu] is e8m0 code 255 (NaN), "
				        "which no weight can be scaled by",
				        scale->file, scale->name,
				        (unsigned long long)(i / (uint64_t)want[1]),
				        (unsigned long long)(i % (uint64_t)want[1]));
			else
				dp_errf(err, err_len,
				        "%s: tensor '%s': F32 scale [%llu][%llu] = %g is not a "
				        "positive power of two",
				        scale->file, scale->name,
				        (unsigned long long)(i / (uint64_t)want[1]),
				        (unsigned long long)(i % (uint64_t)want[1]), (double)v);
			return -EINVAL;
		}
	}
	return 0;
}

/* Scale element i of a checked scale tensor. */
static float scale_at(const struct dp_st_tensor *s, uint64_t i)
{
	const unsigned char *p = s->data;
	float v;

	if (s->dtype == DP_ST_F8_E8M0)
		return dp_e8m0_to_f32(p[i]);
	memcpy(&v, p + 4 * i, 4);
	return v;
}

int dp_quant_dequant_rows(const struct dp_st_tensor *w, const struct dp_st_tensor *scale,
                          uint64_t row0, uint64_t n_rows, float *out, char *err, size_t err_len)
{
	uint64_t rows, cols;
	int f;

	if (!w || (!out && n_rows))
		return -EINVAL;
	f = dp_quant_format_of(w->dtype);
	if (f == DP_QUANT_NONE && !scale) {
		uint64_t c = w->ndim ? (uint64_t)w->shape[w->ndim - 1] : 1;

		if (c && (row0 > w->numel / c || n_rows > w->numel / c - row0))
			return -ERANGE;
		return dp_st_read_f32(w, row0 * c, n_rows * c, out);
	}
	if (f <= DP_QUANT_NONE || !scale || dp_quant_logical_shape(w, &rows, &cols) < 0)
		return -EINVAL;
	if (row0 > rows || n_rows > rows - row0)
		return -ERANGE;

	const unsigned char *q = w->data;
	if (f == DP_QUANT_FP8) {
		uint64_t sc = ceil_div(cols, DP_QUANT_FP8_BLOCK);

		for (uint64_t r = 0; r < n_rows; r++) {
			uint64_t row = row0 + r, srow = row / DP_QUANT_FP8_BLOCK;
			const unsigned char *qr = q + row * cols;
			float *o = out + r * cols;

			for (uint64_t c0 = 0; c0 < cols; c0 += DP_QUANT_FP8_BLOCK) {
				uint64_t c1 = c0 + DP_QUANT_FP8_BLOCK < cols ? c0 + DP_QUANT_FP8_BLOCK
				                                              : cols;
				float s = scale_at(scale, srow * sc + c0 / DP_QUANT_FP8_BLOCK);

				for (uint64_t c = c0; c < c1; c++) {
					if ((qr[c] & 0x7f) == 0x7f) {
						dp_errf(err, err_len,
						        "%s: tensor '%s': element [%llu][%llu] is "
						        "e4m3 code 0x%02x (NaN)",
						        w->file, w->name, (unsigned long long)row,
						        (unsigned long long)c, qr[c]);
						return -EINVAL;
					}
					o[c] = dp_e4m3_to_f32(qr[c]) * s;
				}
			}
		}
		return 0;
	}
	/* FP4: byte j of a row holds elements 2j (low nibble) and 2j + 1 (high nibble) */
	uint64_t sc = ceil_div(cols, DP_QUANT_FP4_GROUP), half = cols / 2;
	for (uint64_t r = 0; r < n_rows; r++) {
		uint64_t row = row0 + r;
		const unsigned char *qr = q + row * half;
		float *o = out + r * cols;

		for (uint64_t j = 0; j < half; j++) {
			uint64_t c = 2 * j;
			float s = scale_at(scale, row * sc + c / DP_QUANT_FP4_GROUP);

			/* 2j and 2j + 1 share a group: groups are 32 wide, even */
			o[c] = dp_e2m1_to_f32(qr[j] & 15) * s;
			o[c + 1] = dp_e2m1_to_f32(qr[j] >> 4) * s;
		}
	}
	return 0;
}
