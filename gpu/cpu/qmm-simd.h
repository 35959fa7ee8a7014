/* SPDX-License-Identifier: MIT */
/*
 * gpu/cpu/qmm-simd.h — the SIMD kernels of qmm.c as one template, included
 * once per instruction set (qmm-avx2.c, qmm-avx512.c) after it defines:
 *   QV, QW             vector type and its float lanes
 *   Q_LOAD Q_STORE Q_SET1 Q_ZERO Q_FMA Q_MUL Q_HSUM
 *   Q_DEC_E4M3(p)      QW e4m3 codes at p -> value / 256 (f16 converter)
 *   Q_DEC_E2M1(p)      QW e2m1 codes (QW/2 bytes) at p -> value
 *   Q_DEC_BF16(p)      QW bf16 at p -> value
 *   Q_ADD              vector add
 *   Q_MR, Q_NV         GEMM micro-kernel: tokens x vectors of tile columns
 *   Q_RG(M)            weight rows the GEMV runs at once for M tokens
 *   Q_NAME(x)          the set's prefix, Q_ISA its enum, Q_TABLE the table's name
 * Every path computes what qmm.c's portable kernels compute (code x scale
 * exactly, fp32 products and sums), in another order of the sums.
 */
#include <math.h>
#include <string.h>

#define Q_INLINE static inline __attribute__((always_inline))
/* register blocks: loops over accumulators must unroll, or the accumulators
 * live on the stack (the build's -O2 unrolls nothing by itself) */
#define Q_UNROLL _Pragma("GCC unroll 16")

Q_INLINE QV Q_NAME(dec)(const enum dp_dtype dt, const uint8_t *row, uint32_t k)
{
	switch (dt) {
	case DP_DTYPE_E4M3:
		return Q_DEC_E4M3(row + k);
	case DP_DTYPE_E2M1:
		return Q_DEC_E2M1(row + k / 2);
	case DP_DTYPE_BF16:
		return Q_DEC_BF16(row + 2 * (size_t)k);
	default:
		return Q_LOAD((const float *)(const void *)(row + 4 * (size_t)k));
	}
}

/* The multiplier m with dec() * m == code * s exactly: e4m3 decodes to
 * value / 256. Not finite (a scale >= 2^120): the caller goes scalar. */
Q_INLINE float Q_NAME(mul)(const enum dp_dtype dt, float s)
{
	return dt == DP_DTYPE_E4M3 ? s * 256.0f : s;
}

Q_INLINE bool Q_NAME(scaled)(const enum dp_dtype dt)
{
	return dt == DP_DTYPE_E4M3 || dt == DP_DTYPE_E2M1;
}

/* Bytes of n codes of dt. */
Q_INLINE uint32_t Q_NAME(bytes)(const enum dp_dtype dt, uint32_t n)
{
	return dt == DP_DTYPE_E2M1 ? n / 2 : dt == DP_DTYPE_E4M3 ? n : dt == DP_DTYPE_BF16 ? 2 * n : 4 * n;
}

/* The scale of block kb of a row whose scales start at sp (fp32, exact). */
Q_INLINE float Q_NAME(scale_at)(const struct dp_qmat *w, const void *sp, uint32_t kb)
{
	if (w->scale_dtype == DP_DTYPE_F32)
		return ((const float *)sp)[kb];
	uint8_t e = ((const uint8_t *)sp)[kb];
	uint32_t u = e == 0 ? 0x00400000u : (uint32_t)e << 23; /* 255 refused at upload */
	float f;
	__builtin_memcpy(&f, &u, sizeof(f));
	return f;
}

/* ---- GEMV: M tokens x RG rows, each decoded weight vector used M times -------- */

/* Columns one step of the GEMV covers: a scale block (e2m1 32, e4m3 128), for
 * the unscaled dtypes a chunk of 128. A compile-time count, so the vector loop
 * of a block unrolls and every accumulator stays in a register. */
/* Arrays below are sized by these constants, not by RG and M: sized by
 * parameters they would be VLAs, which GCC keeps on the stack even once the
 * sizes are known, and every FMA would load and store its accumulator. */
#define Q_RG_MAX 4
#define Q_GEMV_BLK(dt) ((dt) == DP_DTYPE_E2M1 ? DP_GPU_E2M1_BLOCK : DP_GPU_E4M3_BLOCK)

/* RG rows at once: each token's x vector is loaded once for RG rows and the
 * RG x M accumulators are independent FMA chains. The scale is applied where
 * it costs least and changes nothing:
 *   e2m1: the 16-entry table is multiplied by the block's scale (one multiply
 *     a block; table x s is code x s, rounded as the reference rounds it);
 *   e4m3, e8m0 scales (`post`): the block's products go into their own
 *     accumulators, multiplied by the power of two once at the block's end
 *     (exact: the same sums, each scaled by 2^e);
 *   e4m3, f32 scales: each decoded vector times the scale (code x s rounded,
 *     as dequantized).
 * A block whose multiplier is not finite (e4m3 with a scale >= 2^120) and the
 * columns past the last whole block go through the exact scalar path.
 *
 * `eo` (e4m3, e2m1): x comes in the even/odd order of dp_qmm_isa.eo_run, and
 * the codes are decoded two vectors at a time without restoring their order:
 * the even codes of 2*QW columns in one vector, the odd ones in the other
 * (e4m3: a word's low and high byte shifted into f16 in place; e2m1: a
 * byte's low and high nibble through the table). About half the shuffles of
 * the in-order decode, which is what bounds it. */
Q_INLINE void Q_NAME(gemv_t)(const struct dp_qmat *w, const float *x, size_t ldx, float *y,
			     size_t ldy, uint32_t r, bool acc, const enum dp_dtype dt,
			     const bool e8, const bool eo, const uint32_t M, const uint32_t RG)
{
	const uint32_t B = Q_GEMV_BLK(dt);
	const bool post = e8 && dt == DP_DTYPE_E4M3 && Q_POST_OK(M);
	const bool v8 = e8 && dt == DP_DTYPE_E2M1; /* multipliers 16 blocks at a time */
	float ms[Q_RG_MAX][16];
	const bool scaled = Q_NAME(scaled)(dt);
	const uint8_t *row[Q_RG_MAX];
	const void *sp[Q_RG_MAX];
	QV a[Q_RG_MAX][DP_QMM_GEMV_MAX];
	float t[Q_RG_MAX][DP_QMM_GEMV_MAX];
	size_t ssz = w->scale_dtype == DP_DTYPE_F32 ? 4 : 1;
	Q_UNROLL for (uint32_t i = 0; i < RG; i++) {
		row[i] = w->data + (r + i) * w->row_bytes;
		uint32_t srow = dt == DP_DTYPE_E4M3 ? (r + i) / DP_GPU_E4M3_BLOCK : r + i;
		sp[i] = scaled ? (const char *)w->scale + (size_t)srow * w->scale_ld * ssz : NULL;
		Q_UNROLL for (uint32_t m = 0; m < M; m++) {
			a[i][m] = Q_ZERO();
			t[i][m] = 0;
		}
	}
	uint32_t nb = w->cols / B;
	for (uint32_t kb = 0; kb < nb; kb++) {
		const uint32_t k0 = kb * B;
		/* the next row group's same block, a group ahead in memory, into
		 * L2 (into L1 the prefetches hold the line-fill buffers the
		 * loads need): the hardware prefetcher alone leaves short rows
		 * (wq_b's 1 KiB, a new 4 KiB page every group) waiting on DRAM */
		Q_UNROLL for (uint32_t i = 0; i < RG; i++)
			Q_UNROLL for (uint32_t o = 0; o < Q_NAME(bytes)(dt, B); o += 64)
				__builtin_prefetch(row[i] + RG * w->row_bytes + Q_NAME(bytes)(dt, k0) + o, 0, 2);
		float s[Q_RG_MAX];
		QV vm[Q_RG_MAX];
		bool fin = true;
		if (v8 && kb < nb / 16 * 16) {
			/* e2m1's block is 32 columns: a scale a block converted
			 * one at a time (scalar, then a broadcast on the shuffle
			 * port) cost as much as the block's decode */
			if (kb % 16 == 0)
				Q_UNROLL for (uint32_t i = 0; i < RG; i++)
					Q_E8M0_16((const uint8_t *)sp[i] + kb, ms[i]);
			Q_UNROLL for (uint32_t i = 0; i < RG; i++)
				vm[i] = Q_MUL(Q_E2M1_LUT(), Q_SET1(ms[i][kb % 16]));
		} else
			Q_UNROLL for (uint32_t i = 0; i < RG; i++) {
				s[i] = scaled ? Q_NAME(scale_at)(w, sp[i], kb) : 1.0f;
				float mul = Q_NAME(mul)(dt, s[i]);
				fin = fin && isfinite(mul);
				vm[i] = dt == DP_DTYPE_E2M1 ? Q_MUL(Q_E2M1_LUT(), Q_SET1(mul)) : Q_SET1(mul);
			}
		if (__builtin_expect(!fin, 0)) {
			for (uint32_t p = k0; p < k0 + B; p++) {
				/* position p of x holds column k */
				uint32_t q = p % (2 * QW), k = eo ? p - q + 2 * (q % QW) + q / QW : p;
				for (uint32_t i = 0; i < RG; i++) {
					float wv = dp_qmat_code(w, row[i], k) * s[i];
					for (uint32_t m = 0; m < M; m++)
						t[i][m] += wv * x[m * ldx + p];
				}
			}
			continue;
		}
		QV b[Q_RG_MAX][DP_QMM_GEMV_MAX];
		if (post)
			Q_UNROLL for (uint32_t i = 0; i < RG; i++)
				Q_UNROLL for (uint32_t m = 0; m < M; m++)
					b[i][m] = Q_ZERO();
		if (eo) {
			Q_UNROLL for (uint32_t k = k0; k < k0 + B; k += 2 * QW) {
				Q_UNROLL for (uint32_t i = 0; i < RG; i++) {
					QV ev, od;
					if (dt == DP_DTYPE_E2M1) {
						Q_DEC2_E2M1(row[i] + k / 2, vm[i], ev, od);
					} else {
						Q_DEC2_E4M3(row[i] + k, ev, od);
						if (!post) {
							ev = Q_MUL(ev, vm[i]);
							od = Q_MUL(od, vm[i]);
						}
					}
					Q_UNROLL for (uint32_t m = 0; m < M; m++) {
						QV xe = Q_LOAD(x + m * ldx + k), xo = Q_LOAD(x + m * ldx + k + QW);
						if (post) {
							b[i][m] = Q_FMA(ev, xe, b[i][m]);
							b[i][m] = Q_FMA(od, xo, b[i][m]);
						} else {
							a[i][m] = Q_FMA(ev, xe, a[i][m]);
							a[i][m] = Q_FMA(od, xo, a[i][m]);
						}
					}
				}
			}
		} else if (dt == DP_DTYPE_E2M1) {
			/* two vectors of codes from one load of QW bytes */
			Q_UNROLL for (uint32_t k = k0; k < k0 + B; k += 2 * QW) {
				Q_UNROLL for (uint32_t i = 0; i < RG; i++) {
					QV lo, hi;
					Q_DEC_E2M1_2(row[i] + k / 2, vm[i], lo, hi);
					Q_UNROLL for (uint32_t m = 0; m < M; m++) {
						a[i][m] = Q_FMA(lo, Q_LOAD(x + m * ldx + k), a[i][m]);
						a[i][m] = Q_FMA(hi, Q_LOAD(x + m * ldx + k + QW), a[i][m]);
					}
				}
			}
			continue;
		} else
		Q_UNROLL for (uint32_t k = k0; k < k0 + B; k += QW) {
			Q_UNROLL for (uint32_t i = 0; i < RG; i++) {
				QV wv = Q_NAME(dec)(dt, row[i], k);
				if (scaled && !post)
					wv = Q_MUL(wv, vm[i]);
				Q_UNROLL for (uint32_t m = 0; m < M; m++) {
					if (post)
						b[i][m] = Q_FMA(wv, Q_LOAD(x + m * ldx + k), b[i][m]);
					else
						a[i][m] = Q_FMA(wv, Q_LOAD(x + m * ldx + k), a[i][m]);
				}
			}
		}
		if (post)
			Q_UNROLL for (uint32_t i = 0; i < RG; i++)
				Q_UNROLL for (uint32_t m = 0; m < M; m++)
					a[i][m] = Q_FMA(b[i][m], vm[i], a[i][m]);
	}
	for (uint32_t k = nb * B; k < w->cols; k++)
		for (uint32_t i = 0; i < RG; i++) {
			float wv = dp_qmat_code(w, row[i], k) * dp_qmat_scale(w, r + i, k / w->kblock);
			for (uint32_t m = 0; m < M; m++)
				t[i][m] += wv * x[m * ldx + k];
		}
	Q_UNROLL for (uint32_t i = 0; i < RG; i++)
		Q_UNROLL for (uint32_t m = 0; m < M; m++) {
			float v = Q_HSUM(a[i][m]) + t[i][m];
			float *o = y + m * ldy + r + i;
			*o = acc ? *o + v : v;
		}
}

/* rows [r0, r1) in groups of Q_RG(M), the rest one at a time */
Q_INLINE void Q_NAME(gemv_m)(const struct dp_qmat *w, const float *x, size_t ldx, float *y,
			     size_t ldy, uint32_t r0, uint32_t r1, bool acc, const enum dp_dtype dt,
			     const bool e8, const bool eo, const uint32_t M)
{
	uint32_t r = r0;
	for (; r + Q_RG(M) <= r1; r += Q_RG(M))
		Q_NAME(gemv_t)(w, x, ldx, y, ldy, r, acc, dt, e8, eo, M, Q_RG(M));
	for (; r < r1; r++)
		Q_NAME(gemv_t)(w, x, ldx, y, ldy, r, acc, dt, e8, eo, M, 1);
}

#define Q_GEMV_M(dt, e8, eo)                                                                      \
	switch (M) {                                                                            \
	case 1: Q_NAME(gemv_m)(w, x, ldx, y, ldy, r0, r1, acc, dt, e8, eo, 1); break;             \
	case 2: Q_NAME(gemv_m)(w, x, ldx, y, ldy, r0, r1, acc, dt, e8, eo, 2); break;             \
	case 3: Q_NAME(gemv_m)(w, x, ldx, y, ldy, r0, r1, acc, dt, e8, eo, 3); break;             \
	case 4: Q_NAME(gemv_m)(w, x, ldx, y, ldy, r0, r1, acc, dt, e8, eo, 4); break;             \
	case 5: Q_NAME(gemv_m)(w, x, ldx, y, ldy, r0, r1, acc, dt, e8, eo, 5); break; \
	case 6: Q_NAME(gemv_m)(w, x, ldx, y, ldy, r0, r1, acc, dt, e8, eo, 6); break; \
	case 7: Q_NAME(gemv_m)(w, x, ldx, y, ldy, r0, r1, acc, dt, e8, eo, 7); break; \
	default:                                                                                \
		Q_NAME(gemv_m)(w, x, ldx, y, ldy, r0, r1, acc, dt, e8, eo, DP_QMM_GEMV_MAX); \
		break;                                                                          \
	}

static void Q_NAME(gemv)(const struct dp_qmat *w, const float *x, size_t ldx, uint32_t M, float *y,
			 size_t ldy, uint32_t r0, uint32_t r1, bool acc)
{
	switch (w->dtype) {
	case DP_DTYPE_E4M3:
		if (w->scale_dtype == DP_DTYPE_E8M0)
			Q_GEMV_M(DP_DTYPE_E4M3, true, false)
		else
			Q_GEMV_M(DP_DTYPE_E4M3, false, false)
		break;
	case DP_DTYPE_E2M1:
		if (w->scale_dtype == DP_DTYPE_E8M0)
			Q_GEMV_M(DP_DTYPE_E2M1, true, false)
		else
			Q_GEMV_M(DP_DTYPE_E2M1, false, false)
		break;
	case DP_DTYPE_BF16:
		Q_GEMV_M(DP_DTYPE_BF16, false, false);
		break;
	default:
		Q_GEMV_M(DP_DTYPE_F32, false, false);
		break;
	}
}

/* e4m3 and e2m1 with x in even/odd order (dp_qmm_isa.gemv_eo) */
static void Q_NAME(gemv_eo)(const struct dp_qmat *w, const float *x, size_t ldx, uint32_t M,
			    float *y, size_t ldy, uint32_t r0, uint32_t r1, bool acc)
{
	if (w->dtype == DP_DTYPE_E2M1 && w->scale_dtype == DP_DTYPE_E8M0)
		Q_GEMV_M(DP_DTYPE_E2M1, true, true)
	else if (w->dtype == DP_DTYPE_E2M1)
		Q_GEMV_M(DP_DTYPE_E2M1, false, true)
	else if (w->scale_dtype == DP_DTYPE_E8M0)
		Q_GEMV_M(DP_DTYPE_E4M3, true, true)
	else
		Q_GEMV_M(DP_DTYPE_E4M3, false, true)
}
#undef Q_GEMV_M

/* ---- GEMM: a panel decoded, transposed by qmm.c, then tokens x tile ------------- */

Q_INLINE void Q_NAME(dequant_t)(const struct dp_qmat *w, uint32_t r0, uint32_t nr, uint32_t k0,
				uint32_t kc, float *t, const enum dp_dtype dt)
{
	for (uint32_t i = 0; i < nr; i++) {
		const uint8_t *row = w->data + (r0 + i) * w->row_bytes;
		float *ti = t + (size_t)i * kc - k0;
		for (uint32_t k = k0; k < k0 + kc;) {
			uint32_t kb = k / w->kblock;
			uint32_t end = (kb + 1) * w->kblock < k0 + kc ? (kb + 1) * w->kblock : k0 + kc;
			float s = dp_qmat_scale(w, r0 + i, kb), mul = Q_NAME(mul)(dt, s);
			if (isfinite(mul)) {
				QV vm = Q_SET1(mul);
				for (; k + QW <= end; k += QW) {
					QV wv = Q_NAME(dec)(dt, row, k);
					Q_STORE(ti + k, Q_NAME(scaled)(dt) ? Q_MUL(wv, vm) : wv);
				}
			}
			for (; k < end; k++)
				ti[k] = dp_qmat_code(w, row, k) * s;
		}
	}
}

static void Q_NAME(dequant)(const struct dp_qmat *w, uint32_t r0, uint32_t nr, uint32_t k0,
			    uint32_t kc, float *t)
{
	switch (w->dtype) {
	case DP_DTYPE_E4M3:
		Q_NAME(dequant_t)(w, r0, nr, k0, kc, t, DP_DTYPE_E4M3);
		break;
	case DP_DTYPE_E2M1:
		Q_NAME(dequant_t)(w, r0, nr, k0, kc, t, DP_DTYPE_E2M1);
		break;
	case DP_DTYPE_BF16:
		Q_NAME(dequant_t)(w, r0, nr, k0, kc, t, DP_DTYPE_BF16);
		break;
	default:
		Q_NAME(dequant_t)(w, r0, nr, k0, kc, t, DP_DTYPE_F32);
		break;
	}
}

/* The outer-product micro-kernel (BLAS's): MR tokens x Q_NV*QW tile columns
 * in MR*Q_NV accumulators for the whole kc; each step loads Q_NV tile vectors
 * and broadcasts one x per token. No horizontal sums: lane j of a[i][v] is
 * output column v*QW + j. ncol (<= Q_NV*QW) of them are stored. */
Q_INLINE void Q_NAME(micro)(const float *x, size_t ldx, const float *t, uint32_t kc, float *y,
			    size_t ldy, uint32_t ncol, const uint32_t MR)
{
	QV a[MR][Q_NV];
	Q_UNROLL for (uint32_t i = 0; i < MR; i++)
		Q_UNROLL for (int v = 0; v < Q_NV; v++)
			a[i][v] = Q_ZERO();
	for (uint32_t k = 0; k < kc; k++) {
		QV b[Q_NV];
		Q_UNROLL for (int v = 0; v < Q_NV; v++)
			b[v] = Q_LOAD(t + (size_t)k * DP_QMM_NR + v * QW);
		Q_UNROLL for (uint32_t i = 0; i < MR; i++) {
			QV xb = Q_SET1(x[i * ldx + k]);
			Q_UNROLL for (int v = 0; v < Q_NV; v++)
				a[i][v] = Q_FMA(xb, b[v], a[i][v]);
		}
	}
	for (uint32_t i = 0; i < MR; i++) {
		float *yi = y + i * ldy;
		if (ncol == Q_NV * QW) {
			for (int v = 0; v < Q_NV; v++)
				Q_STORE(yi + v * QW, Q_ADD(Q_LOAD(yi + v * QW), a[i][v]));
		} else {
			float o[Q_NV * QW];
			for (int v = 0; v < Q_NV; v++)
				Q_STORE(o + v * QW, a[i][v]);
			for (uint32_t j = 0; j < ncol; j++)
				yi[j] += o[j];
		}
	}
}

static void Q_NAME(tile)(const float *x, size_t ldx, uint32_t M, const float *t, uint32_t nr,
			 uint32_t kc, float *y, size_t ldy)
{
	for (uint32_t c = 0; c < nr; c += Q_NV * QW) {
		uint32_t ncol = nr - c < Q_NV * QW ? nr - c : Q_NV * QW;
		uint32_t m = 0;
		for (; m + Q_MR <= M; m += Q_MR)
			Q_NAME(micro)(x + m * ldx, ldx, t + c, kc, y + m * ldy + c, ldy, ncol, Q_MR);
		for (; m + 4 <= M; m += 4)
			Q_NAME(micro)(x + m * ldx, ldx, t + c, kc, y + m * ldy + c, ldy, ncol, 4);
		for (; m < M; m++)
			Q_NAME(micro)(x + m * ldx, ldx, t + c, kc, y + m * ldy + c, ldy, ncol, 1);
	}
}

const struct dp_qmm_isa Q_TABLE = {
	.isa = Q_ISA,
	.gemv = Q_NAME(gemv),
	.gemv_eo = Q_NAME(gemv_eo),
	.eo_run = QW,
	.dequant = Q_NAME(dequant),
	.tile = Q_NAME(tile),
};
