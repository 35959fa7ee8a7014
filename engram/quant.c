/* SPDX-License-Identifier: MIT */
/*
 * engram/quant.c — the row encodings of Engram table files: bf16, and fp8 e4m3 (OCP E4M3FN)
 * with one fp32 scale per 32 values. See engram.h "row encodings".
 */
#include <errno.h>
#include <math.h>
#include <string.h>

#include "base/dtype.h"
#include "engram/engram.h"

static const char *const dtype_names[DP_ENGRAM_DTYPE_MAX] = {"bf16", "fp8"};

const char *dp_engram_dtype_name(enum dp_engram_dtype dt)
{
	return (unsigned)dt < DP_ENGRAM_DTYPE_MAX ? dtype_names[dt] : NULL;
}

int dp_engram_dtype_parse(const char *name, enum dp_engram_dtype *ret)
{
	if (!name || !ret)
		return -EINVAL;
	for (int i = 0; i < DP_ENGRAM_DTYPE_MAX; i++)
		if (strcmp(name, dtype_names[i]) == 0) {
			*ret = (enum dp_engram_dtype)i;
			return 0;
		}
	if (strcmp(name, "fp8_e4m3") == 0 || strcmp(name, "e4m3") == 0) {
		*ret = DP_ENGRAM_DTYPE_FP8;
		return 0;
	}
	return -EINVAL;
}

static uint32_t groups(uint32_t head_dim)
{
	return (head_dim + DP_ENGRAM_FP8_GROUP - 1) / DP_ENGRAM_FP8_GROUP;
}

size_t dp_engram_row_bytes(enum dp_engram_dtype dt, uint32_t head_dim)
{
	size_t b;

	if (head_dim == 0 || head_dim > DP_ENGRAM_HEAD_DIM_MAX)
		return 0;
	switch (dt) {
	case DP_ENGRAM_DTYPE_BF16:
		b = 2 * (size_t)head_dim;
		break;
	case DP_ENGRAM_DTYPE_FP8:
		b = 4 * (size_t)groups(head_dim) + head_dim;
		break;
	default:
		return 0;
	}
	return (b + 3) & ~(size_t)3;
}

/* ---- rows ------------------------------------------------------------------ */

/* fp8 e4m3 code -> value (dp_e4m3_to_f32 of every code). */
static const float fp8_lut[256] = {
    0.0f,     0x1p-9f,    0x1p-8f,    0x1.8p-8f,  0x1p-7f,    0x1.4p-7f,  0x1.8p-7f,  0x1.cp-7f,
    0x1p-6f,  0x1.2p-6f,  0x1.4p-6f,  0x1.6p-6f,  0x1.8p-6f,  0x1.ap-6f,  0x1.cp-6f,  0x1.ep-6f,
    0x1p-5f,  0x1.2p-5f,  0x1.4p-5f,  0x1.6p-5f,  0x1.8p-5f,  0x1.ap-5f,  0x1.cp-5f,  0x1.ep-5f,
    0x1p-4f,  0x1.2p-4f,  0x1.4p-4f,  0x1.6p-4f,  0x1.8p-4f,  0x1.ap-4f,  0x1.cp-4f,  0x1.ep-4f,
    0x1p-3f,  0x1.2p-3f,  0x1.4p-3f,  0x1.6p-3f,  0x1.8p-3f,  0x1.ap-3f,  0x1.cp-3f,  0x1.ep-3f,
    0x1p-2f,  0x1.2p-2f,  0x1.4p-2f,  0x1.6p-2f,  0x1.8p-2f,  0x1.ap-2f,  0x1.cp-2f,  0x1.ep-2f,
    0x1p-1f,  0x1.2p-1f,  0x1.4p-1f,  0x1.6p-1f,  0x1.8p-1f,  0x1.ap-1f,  0x1.cp-1f,  0x1.ep-1f,
    0x1p+0f,  0x1.2p+0f,  0x1.4p+0f,  0x1.6p+0f,  0x1.8p+0f,  0x1.ap+0f,  0x1.cp+0f,  0x1.ep+0f,
    0x1p+1f,  0x1.2p+1f,  0x1.4p+1f,  0x1.6p+1f,  0x1.8p+1f,  0x1.ap+1f,  0x1.cp+1f,  0x1.ep+1f,
    0x1p+2f,  0x1.2p+2f,  0x1.4p+2f,  0x1.6p+2f,  0x1.8p+2f,  0x1.ap+2f,  0x1.cp+2f,  0x1.ep+2f,
    0x1p+3f,  0x1.2p+3f,  0x1.4p+3f,  0x1.6p+3f,  0x1.8p+3f,  0x1.ap+3f,  0x1.cp+3f,  0x1.ep+3f,
    0x1p+4f,  0x1.2p+4f,  0x1.4p+4f,  0x1.6p+4f,  0x1.8p+4f,  0x1.ap+4f,  0x1.cp+4f,  0x1.ep+4f,
    0x1p+5f,  0x1.2p+5f,  0x1.4p+5f,  0x1.6p+5f,  0x1.8p+5f,  0x1.ap+5f,  0x1.cp+5f,  0x1.ep+5f,
    0x1p+6f,  0x1.2p+6f,  0x1.4p+6f,  0x1.6p+6f,  0x1.8p+6f,  0x1.ap+6f,  0x1.cp+6f,  0x1.ep+6f,
    0x1p+7f,  0x1.2p+7f,  0x1.4p+7f,  0x1.6p+7f,  0x1.8p+7f,  0x1.ap+7f,  0x1.cp+7f,  0x1.ep+7f,
    0x1p+8f,  0x1.2p+8f,  0x1.4p+8f,  0x1.6p+8f,  0x1.8p+8f,  0x1.ap+8f,  0x1.cp+8f,  NAN,
    -0.0f,    -0x1p-9f,   -0x1p-8f,   -0x1.8p-8f, -0x1p-7f,   -0x1.4p-7f, -0x1.8p-7f, -0x1.cp-7f,
    -0x1p-6f, -0x1.2p-6f, -0x1.4p-6f, -0x1.6p-6f, -0x1.8p-6f, -0x1.ap-6f, -0x1.cp-6f, -0x1.ep-6f,
    -0x1p-5f, -0x1.2p-5f, -0x1.4p-5f, -0x1.6p-5f, -0x1.8p-5f, -0x1.ap-5f, -0x1.cp-5f, -0x1.ep-5f,
    -0x1p-4f, -0x1.2p-4f, -0x1.4p-4f, -0x1.6p-4f, -0x1.8p-4f, -0x1.ap-4f, -0x1.cp-4f, -0x1.ep-4f,
    -0x1p-3f, -0x1.2p-3f, -0x1.4p-3f, -0x1.6p-3f, -0x1.8p-3f, -0x1.ap-3f, -0x1.cp-3f, -0x1.ep-3f,
    -0x1p-2f, -0x1.2p-2f, -0x1.4p-2f, -0x1.6p-2f, -0x1.8p-2f, -0x1.ap-2f, -0x1.cp-2f, -0x1.ep-2f,
    -0x1p-1f, -0x1.2p-1f, -0x1.4p-1f, -0x1.6p-1f, -0x1.8p-1f, -0x1.ap-1f, -0x1.cp-1f, -0x1.ep-1f,
    -0x1p+0f, -0x1.2p+0f, -0x1.4p+0f, -0x1.6p+0f, -0x1.8p+0f, -0x1.ap+0f, -0x1.cp+0f, -0x1.ep+0f,
    -0x1p+1f, -0x1.2p+1f, -0x1.4p+1f, -0x1.6p+1f, -0x1.8p+1f, -0x1.ap+1f, -0x1.cp+1f, -0x1.ep+1f,
    -0x1p+2f, -0x1.2p+2f, -0x1.4p+2f, -0x1.6p+2f, -0x1.8p+2f, -0x1.ap+2f, -0x1.cp+2f, -0x1.ep+2f,
    -0x1p+3f, -0x1.2p+3f, -0x1.4p+3f, -0x1.6p+3f, -0x1.8p+3f, -0x1.ap+3f, -0x1.cp+3f, -0x1.ep+3f,
    -0x1p+4f, -0x1.2p+4f, -0x1.4p+4f, -0x1.6p+4f, -0x1.8p+4f, -0x1.ap+4f, -0x1.cp+4f, -0x1.ep+4f,
    -0x1p+5f, -0x1.2p+5f, -0x1.4p+5f, -0x1.6p+5f, -0x1.8p+5f, -0x1.ap+5f, -0x1.cp+5f, -0x1.ep+5f,
    -0x1p+6f, -0x1.2p+6f, -0x1.4p+6f, -0x1.6p+6f, -0x1.8p+6f, -0x1.ap+6f, -0x1.cp+6f, -0x1.ep+6f,
    -0x1p+7f, -0x1.2p+7f, -0x1.4p+7f, -0x1.6p+7f, -0x1.8p+7f, -0x1.ap+7f, -0x1.cp+7f, -0x1.ep+7f,
    -0x1p+8f, -0x1.2p+8f, -0x1.4p+8f, -0x1.6p+8f, -0x1.8p+8f, -0x1.ap+8f, -0x1.cp+8f, NAN,
};

int dp_engram_row_encode(enum dp_engram_dtype dt, uint32_t head_dim, const float *src, void *dst)
{
	size_t bytes = dp_engram_row_bytes(dt, head_dim);

	if (!bytes || !src || !dst)
		return -EINVAL;
	for (uint32_t i = 0; i < head_dim; i++)
		if (!isfinite(src[i]))
			return -EDOM;
	if (dt == DP_ENGRAM_DTYPE_BF16) {
		uint16_t *o = dst;
		for (uint32_t i = 0; i < head_dim; i++)
			o[i] = dp_f32_to_bf16(src[i]);
		memset((char *)dst + 2 * (size_t)head_dim, 0, bytes - 2 * (size_t)head_dim);
		return 0;
	}
	uint32_t G = groups(head_dim);
	unsigned char *codes = (unsigned char *)dst + 4 * (size_t)G;
	for (uint32_t g = 0; g < G; g++) {
		uint32_t lo = g * DP_ENGRAM_FP8_GROUP;
		uint32_t hi =
		    lo + DP_ENGRAM_FP8_GROUP < head_dim ? lo + DP_ENGRAM_FP8_GROUP : head_dim;
		float amax = 0;
		for (uint32_t i = lo; i < hi; i++)
			amax = fmaxf(amax, fabsf(src[i]));
		float scale = amax / DP_ENGRAM_FP8_MAX;
		memcpy((char *)dst + 4 * (size_t)g, &scale, 4);
		for (uint32_t i = lo; i < hi; i++)
			codes[i] = scale > 0 ? dp_f32_to_e4m3(src[i] / scale) : 0;
	}
	memset(codes + head_dim, 0, bytes - 4 * (size_t)G - head_dim);
	return 0;
}

int dp_engram_row_decode(enum dp_engram_dtype dt, uint32_t head_dim, const void *src, float *dst)
{
	if (!dp_engram_row_bytes(dt, head_dim) || !src || !dst)
		return -EINVAL;
	if (dt == DP_ENGRAM_DTYPE_BF16) {
		const uint16_t *in = src;
		for (uint32_t i = 0; i < head_dim; i++)
			dst[i] = dp_bf16_to_f32(in[i]);
		return 0;
	}
	uint32_t G = groups(head_dim);
	const unsigned char *codes = (const unsigned char *)src + 4 * (size_t)G;
	for (uint32_t g = 0; g < G; g++) {
		float scale;
		memcpy(&scale, (const char *)src + 4 * (size_t)g, 4);
		uint32_t lo = g * DP_ENGRAM_FP8_GROUP;
		uint32_t hi =
		    lo + DP_ENGRAM_FP8_GROUP < head_dim ? lo + DP_ENGRAM_FP8_GROUP : head_dim;
		for (uint32_t i = lo; i < hi; i++)
			dst[i] = fp8_lut[codes[i]] * scale;
	}
	return 0;
}
