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
 *   Q_MR, Q_NT         tile register block: tokens x weight rows
 *   Q_RG(M)            weight rows the GEMV runs at once for M tokens
 *   Q_NAME(x)          the set's prefix, Q_ISA its enum, Q_TABLE the table's name
 * Every path computes what qmm.c's portable kernels compute (code x scale
 * exactly, fp32 products and sums), in another order of the sums.
 */
#include <math.h>
#include <string.h>

#define Q_INLINE static inline __attribute__((always_inline))

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

/* RG rows at once: each token's x vector is loaded once for RG rows (the loads
 * were half the work at M = 1) and the RG x M accumulators are independent FMA
 * chains. A row's scale is read once per block straight from its scale row
 * (no per-block division or dtype switch), and the block's vector loop has no
 * branch but its bound. */
Q_INLINE void Q_NAME(gemv_t)(const struct dp_qmat *w, const float *x, size_t ldx, float *y,
			     size_t ldy, uint32_t r, bool acc, const enum dp_dtype dt,
			     const uint32_t M, const uint32_t RG)
{
	const uint8_t *row[RG];
	const void *sp[RG];
	QV a[RG][M];
	float t[RG][M];
	size_t ssz = w->scale_dtype == DP_DTYPE_F32 ? 4 : 1;
	for (uint32_t i = 0; i < RG; i++) {
		row[i] = w->data + (r + i) * w->row_bytes;
		uint32_t srow = dt == DP_DTYPE_E4M3 ? (r + i) / DP_GPU_E4M3_BLOCK : r + i;
		sp[i] = Q_NAME(scaled)(dt) ? (const char *)w->scale + (size_t)srow * w->scale_ld * ssz
					   : NULL;
		for (uint32_t m = 0; m < M; m++) {
			a[i][m] = Q_ZERO();
			t[i][m] = 0;
		}
	}
	for (uint32_t k0 = 0, kb = 0; k0 < w->cols; k0 += w->kblock, kb++) {
		uint32_t end = w->cols - k0 < w->kblock ? w->cols : k0 + w->kblock;
		float s[RG];
		QV vm[RG];
		bool fin = true;
		for (uint32_t i = 0; i < RG; i++) {
			s[i] = Q_NAME(scaled)(dt) ? Q_NAME(scale_at)(w, sp[i], kb) : 1.0f;
			float mul = Q_NAME(mul)(dt, s[i]);
			fin = fin && isfinite(mul);
			vm[i] = Q_SET1(mul);
		}
		uint32_t k = k0;
		if (__builtin_expect(fin, 1))
			for (; k + QW <= end; k += QW) {
				QV xv[M];
				for (uint32_t m = 0; m < M; m++)
					xv[m] = Q_LOAD(x + m * ldx + k);
				for (uint32_t i = 0; i < RG; i++) {
					QV wv = Q_NAME(dec)(dt, row[i], k);
					if (Q_NAME(scaled)(dt))
						wv = Q_MUL(wv, vm[i]);
					for (uint32_t m = 0; m < M; m++)
						a[i][m] = Q_FMA(wv, xv[m], a[i][m]);
				}
			}
		for (; k < end; k++)
			for (uint32_t i = 0; i < RG; i++) {
				float wv = dp_qmat_code(w, row[i], k) * s[i];
				for (uint32_t m = 0; m < M; m++)
					t[i][m] += wv * x[m * ldx + k];
			}
	}
	for (uint32_t i = 0; i < RG; i++)
		for (uint32_t m = 0; m < M; m++) {
			float v = Q_HSUM(a[i][m]) + t[i][m];
			float *o = y + m * ldy + r + i;
			*o = acc ? *o + v : v;
		}
}

/* rows [r0, r1) in groups of Q_RG(M), the rest one at a time */
Q_INLINE void Q_NAME(gemv_m)(const struct dp_qmat *w, const float *x, size_t ldx, float *y,
			     size_t ldy, uint32_t r0, uint32_t r1, bool acc, const enum dp_dtype dt,
			     const uint32_t M)
{
	uint32_t r = r0;
	for (; r + Q_RG(M) <= r1; r += Q_RG(M))
		Q_NAME(gemv_t)(w, x, ldx, y, ldy, r, acc, dt, M, Q_RG(M));
	for (; r < r1; r++)
		Q_NAME(gemv_t)(w, x, ldx, y, ldy, r, acc, dt, M, 1);
}

#define Q_GEMV_M(dt)                                                                          \
	switch (M) {                                                                          \
	case 1: Q_NAME(gemv_m)(w, x, ldx, y, ldy, r0, r1, acc, dt, 1); break;               \
	case 2: Q_NAME(gemv_m)(w, x, ldx, y, ldy, r0, r1, acc, dt, 2); break;               \
	case 3: Q_NAME(gemv_m)(w, x, ldx, y, ldy, r0, r1, acc, dt, 3); break;               \
	case 4: Q_NAME(gemv_m)(w, x, ldx, y, ldy, r0, r1, acc, dt, 4); break;               \
	case 5: Q_NAME(gemv_m)(w, x, ldx, y, ldy, r0, r1, acc, dt, 5); break;               \
	case 6: Q_NAME(gemv_m)(w, x, ldx, y, ldy, r0, r1, acc, dt, 6); break;               \
	case 7: Q_NAME(gemv_m)(w, x, ldx, y, ldy, r0, r1, acc, dt, 7); break;               \
	default: Q_NAME(gemv_m)(w, x, ldx, y, ldy, r0, r1, acc, dt, DP_QMM_GEMV_MAX); break; \
	}

static void Q_NAME(gemv)(const struct dp_qmat *w, const float *x, size_t ldx, uint32_t M, float *y,
			 size_t ldy, uint32_t r0, uint32_t r1, bool acc)
{
	switch (w->dtype) {
	case DP_DTYPE_E4M3:
		Q_GEMV_M(DP_DTYPE_E4M3);
		break;
	case DP_DTYPE_E2M1:
		Q_GEMV_M(DP_DTYPE_E2M1);
		break;
	case DP_DTYPE_BF16:
		Q_GEMV_M(DP_DTYPE_BF16);
		break;
	default:
		Q_GEMV_M(DP_DTYPE_F32);
		break;
	}
}
#undef Q_GEMV_M

/* ---- GEMM: a panel decoded into an fp32 tile, then tile x tokens ---------------- */

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

/* One token's dot with one tile row. */
Q_INLINE float Q_NAME(dot)(const float *a, const float *b, uint32_t n)
{
	QV v = Q_ZERO();
	uint32_t k = 0;
	for (; k + QW <= n; k += QW)
		v = Q_FMA(Q_LOAD(a + k), Q_LOAD(b + k), v);
	float s = Q_HSUM(v);
	for (; k < n; k++)
		s += a[k] * b[k];
	return s;
}

/* Q_MR tokens x Q_NT tile rows, in registers over the whole kc. */
Q_INLINE void Q_NAME(block)(const float *x, size_t ldx, const float *t, uint32_t kc, float *y,
			    size_t ldy)
{
	QV a[Q_MR][Q_NT];
	for (int i = 0; i < Q_MR; i++)
		for (int j = 0; j < Q_NT; j++)
			a[i][j] = Q_ZERO();
	uint32_t k = 0;
	for (; k + QW <= kc; k += QW) {
		QV xv[Q_MR];
		for (int i = 0; i < Q_MR; i++)
			xv[i] = Q_LOAD(x + i * ldx + k);
		for (int j = 0; j < Q_NT; j++) {
			QV tv = Q_LOAD(t + (size_t)j * kc + k);
			for (int i = 0; i < Q_MR; i++)
				a[i][j] = Q_FMA(xv[i], tv, a[i][j]);
		}
	}
	for (int i = 0; i < Q_MR; i++)
		for (int j = 0; j < Q_NT; j++) {
			float s = Q_HSUM(a[i][j]);
			for (uint32_t kk = k; kk < kc; kk++)
				s += x[i * ldx + kk] * t[(size_t)j * kc + kk];
			y[i * ldy + j] += s;
		}
}

static void Q_NAME(tile)(const float *x, size_t ldx, uint32_t M, const float *t, uint32_t nr,
			 uint32_t kc, float *y, size_t ldy)
{
	uint32_t m = 0;
	for (; m + Q_MR <= M; m += Q_MR) {
		uint32_t r = 0;
		for (; r + Q_NT <= nr; r += Q_NT)
			Q_NAME(block)(x + m * ldx, ldx, t + (size_t)r * kc, kc, y + m * ldy + r, ldy);
		for (; r < nr; r++)
			for (uint32_t i = 0; i < Q_MR; i++)
				y[(m + i) * ldy + r] +=
				    Q_NAME(dot)(x + (m + i) * ldx, t + (size_t)r * kc, kc);
	}
	for (; m < M; m++)
		for (uint32_t r = 0; r < nr; r++)
			y[m * ldy + r] += Q_NAME(dot)(x + m * ldx, t + (size_t)r * kc, kc);
}

const struct dp_qmm_isa Q_TABLE = {
	.isa = Q_ISA,
	.gemv = Q_NAME(gemv),
	.dequant = Q_NAME(dequant),
	.tile = Q_NAME(tile),
};
