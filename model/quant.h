/* SPDX-License-Identifier: MIT */
/*
 * model/quant.h — the quantized weight formats of the published DeepSeek-V4 checkpoints, and
 * their exact dequantization (shared/V4-REAL.md sections 2 and 3). The one place that knows
 * which scale goes with which weight code.
 *
 * A quantized weight is two tensors, `X.weight` and `X.scale`; the format follows from the
 * weight's dtype (never from config.json):
 *
 *   DP_QUANT_FP8  weight F8_E4M3 [out, in]; scale F8_E8M0, or F32 holding powers of two (Base
 *                 checkpoints), [ceil(out/128), ceil(in/128)]: one scale per 128 x 128 block.
 *                 W[r][c] = e4m3(q[r][c]) * scale[r/128][c/128].
 *   DP_QUANT_FP4  weight I8 [out, in/2]: two e2m1 codes a byte, LOW nibble first (element 2j
 *                 in bits 3..0, 2j+1 in bits 7..4); scale F8_E8M0 [out, in/32]: one scale per
 *                 32 elements along a row. W[r][c] = e2m1(nibble c) * scale[r][c/32].
 *
 * Every scale is a power of two, so each dequantized value is exact in fp32 (and in bf16: an
 * e4m3 or e2m1 significand times 2^k). What is refused, and why:
 *   - an e8m0 scale code 255 (NaN in the format): a scale with no value;
 *   - an F32 scale that is not a finite positive power of two: the format promises one, and
 *     without it dequantization would round;
 *   - an e4m3 weight code 0x7F or 0xFF (NaN). DeepSeek's inference/kernel.py (weight_dequant:
 *     x.to(float32) * s) and transformers' fine-grained FP8 path read such a code as NaN, which
 *     then poisons every output of that matrix; no released weight carries one, so a NaN code
 *     means a damaged file and the load stops naming the tensor and the element.
 * e2m1 has no NaN or infinity: every FP4 byte is valid.
 *
 * Threads: pure functions of their arguments. Calls never log: on failure they write one line
 * to err (when non-NULL and err_len > 0) naming the file and the tensor, and leave output
 * parameters untouched.
 */
#ifndef DP_MODEL_QUANT_H
#define DP_MODEL_QUANT_H

#include <stddef.h>
#include <stdint.h>

#include "model/safetensors.h"

#ifdef __cplusplus
extern "C" {
#endif

#define DP_QUANT_FP8_BLOCK 128 /* rows and columns of one FP8 scale block */
#define DP_QUANT_FP4_GROUP 32  /* elements along a row sharing one FP4 scale */

enum dp_quant_format {
	DP_QUANT_NONE, /* F32, BF16, F16: no scale */
	DP_QUANT_FP8,
	DP_QUANT_FP4,
	DP_QUANT_FORMAT_MAX,
};

/* The format of a weight stored in `dtype`: NONE for float dtypes, FP8 for F8_E4M3, FP4 for I8;
 * -1 for a dtype no weight is stored in (I64, I32, F8_E8M0). */
int dp_quant_format_of(enum dp_st_dtype dtype);

/* "bf16/f32/f16", "fp8", "fp4"; NULL if out of range. */
const char *dp_quant_format_name(enum dp_quant_format f);

/* The logical [rows, cols] of a 2-d weight tensor (an FP4 tensor holds two columns a byte).
 * Returns 0, or -EINVAL for a tensor that is not a 2-d weight. */
int dp_quant_logical_shape(const struct dp_st_tensor *w, uint64_t *ret_rows, uint64_t *ret_cols);

/* The shape `w`'s scale must have ([2]). Returns 0 or -EINVAL (w is not quantized). */
int dp_quant_scale_shape(const struct dp_st_tensor *w, int64_t *ret_shape);

/*
 * Check that `scale` fits quantized weight `w`: its dtype (FP8: F8_E8M0 or F32; FP4: F8_E8M0),
 * its shape, and every scale value (no e8m0 255; F32 finite positive powers of two). Returns 0
 * or -EINVAL with a message naming the file and both tensors.
 */
int dp_quant_check_scale(const struct dp_st_tensor *w, const struct dp_st_tensor *scale, char *err,
                         size_t err_len);

/*
 * Dequantize rows [row0, row0 + n_rows) of `w` (logical shape) into out ([n_rows][cols] fp32),
 * exactly. `scale` is w's scale (checked with dp_quant_check_scale), or NULL for an unquantized
 * w (then this is dp_st_read_f32). Returns 0, -ERANGE (rows outside w), or -EINVAL (bad
 * arguments, or an e4m3 NaN code: err names the tensor, row and column).
 */
int dp_quant_dequant_rows(const struct dp_st_tensor *w, const struct dp_st_tensor *scale,
                          uint64_t row0, uint64_t n_rows, float *out, char *err, size_t err_len);

#ifdef __cplusplus
}
#endif

#endif /* DP_MODEL_QUANT_H */
