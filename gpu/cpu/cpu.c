/* SPDX-License-Identifier: MIT */
/*
 * The cpu backend: the reference implementation of the op interface, in
 * plain C with fp32 arithmetic; dense products go through BLAS (OpenBLAS).
 * Reductions that decide the numerics (norms, softmaxes, dot products outside
 * BLAS) accumulate in double, so this backend sits within fp32 rounding of the
 * exact result; the cuda backend is held to it.
 *
 * Weights kept as the checkpoint stores them (bf16, e4m3 and e2m1 with their
 * block scales) are new cases of the same ops, chosen by the weight's dtype:
 * matmul (and so moe and engram_fuse) goes through qmm.c's fused
 * dequantize-and-multiply kernels on the backend's worker pool.
 */
#include <cblas.h>
#include <errno.h>
#include <math.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gpu/cpu/cpu-internal.h"

/* ---- lifecycle and memory ------------------------------------------------- */

static void cpu_destroy(struct dp_gpu *g)
{
	struct dp_gpu_cpu *c = (struct dp_gpu_cpu *)g;
	dp_cpu_pool_fini(&c->pool);
	free(c->tiles);
	free(c->scratch);
	free(c);
}


static void *cpu_alloc(struct dp_gpu *g, size_t bytes)
{
	(void)g;
	/* 64-byte aligned for vector loads; page-sized and larger buffers 4 KiB
	 * aligned, so O_DIRECT reads can land in them (the KV cache restores
	 * state pages straight from NVMe); zeroed as the interface promises */
	size_t align = bytes >= 4096 ? 4096 : 64;
	size_t rounded = (bytes + align - 1) & ~(align - 1);
	void *p = aligned_alloc(align, rounded);
	if (p)
		memset(p, 0, rounded);
	return p;
}

static void cpu_dealloc(struct dp_gpu *g, void *p, size_t bytes)
{
	(void)g;
	(void)bytes;
	free(p);
}

static int cpu_memcpy(struct dp_gpu *g, void *dst, const void *src, size_t bytes)
{
	(void)g;
	if (bytes && (!dst || !src))
		return -EINVAL;
	memmove(dst, src, bytes);
	return 0;
}

static int cpu_zero(struct dp_gpu *g, void *dst, size_t bytes)
{
	(void)g;
	if (bytes && !dst)
		return -EINVAL;
	memset(dst, 0, bytes);
	return 0;
}

static int cpu_sync(struct dp_gpu *g)
{
	(void)g;
	return 0;
}

float *dp_cpu_scratch(struct dp_gpu_cpu *c, size_t floats)
{
	if (floats > c->scratch_len) {
		float *p = realloc(c->scratch, floats * sizeof(float));
		if (!p)
			return NULL;
		c->scratch = p;
		c->scratch_len = floats;
	}
	return c->scratch;
}

static const struct dp_gpu_backend cpu_backend = {
	.weight_dtype = DP_DTYPE_F32,
	.destroy = cpu_destroy,
	.alloc = cpu_alloc,
	.dealloc = cpu_dealloc,
	.upload = cpu_memcpy,
	.download = cpu_memcpy,
	.copy = cpu_memcpy,
	.zero = cpu_zero,
	.sync = cpu_sync,
	.host_alloc = cpu_alloc, /* host memory is what this backend computes on */
	.host_free = cpu_dealloc,
};

/* ---- dense ops ----------------------------------------------------------- */

/* An fp32 product y[M][rows] = x[M][cols] . W^T (+ beta y) on the backend's
 * pool: OpenBLAS runs single-threaded (see dp_gpu_cpu_new), each pool thread
 * one slice of W's rows, or of the tokens when W has fewer 16-row panels
 * than the pool has threads (the hyper-connection mixes: 8 rows). Products
 * smaller than this many multiply-adds stay on the caller's thread. */
#define F32_POOL_MIN_MACS (1ull << 18)

struct f32_product {
	const float *W, *x;
	float *y;
	uint32_t M, rows, cols, ldx, ldy;
	float beta;
};

static void f32_product_slice(const struct f32_product *p, uint32_t m0, uint32_t m1, uint32_t r0,
			      uint32_t r1)
{
	const float *W = p->W + (size_t)r0 * p->cols;
	float *y = p->y + (size_t)m0 * p->ldy + r0;
	if (m1 - m0 == 1)
		cblas_sgemv(CblasRowMajor, CblasNoTrans, (int)(r1 - r0), (int)p->cols, 1.0f, W,
			    (int)p->cols, p->x + (size_t)m0 * p->ldx, 1, p->beta, y, 1);
	else
		cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)(m1 - m0), (int)(r1 - r0),
			    (int)p->cols, 1.0f, p->x + (size_t)m0 * p->ldx, (int)p->ldx, W,
			    (int)p->cols, p->beta, y, (int)p->ldy);
}

static void f32_product_part(void *arg, int tid, int n)
{
	const struct f32_product *p = arg;
	/* slices of whole 16-row panels: no two threads write one cache line of y */
	uint32_t panels = (p->rows + 15) / 16;
	if (panels < (uint32_t)n && p->M >= (uint32_t)n) {
		uint32_t m0 = (uint32_t)((uint64_t)p->M * tid / n);
		uint32_t m1 = (uint32_t)((uint64_t)p->M * (tid + 1) / n);
		if (m0 < m1)
			f32_product_slice(p, m0, m1, 0, p->rows);
		return;
	}
	uint32_t r0 = (uint32_t)((uint64_t)panels * tid / n) * 16;
	uint32_t r1 = (uint32_t)((uint64_t)panels * (tid + 1) / n) * 16;
	if (r1 > p->rows)
		r1 = p->rows;
	if (r0 < r1)
		f32_product_slice(p, 0, p->M, r0, r1);
}

static void f32_product_run(struct dp_gpu_cpu *c, const struct f32_product *p)
{
	if ((uint64_t)p->M * p->rows * p->cols < F32_POOL_MIN_MACS || c->pool.n == 1)
		f32_product_part((void *)p, 0, 1);
	else
		dp_cpu_pool_run(&c->pool, f32_product_part, (void *)p);
}

static int cpu_matmul(struct dp_gpu *g, const float *x, uint32_t ldx, const struct dp_gpu_weight *w,
		      uint32_t index, float *y, uint32_t ldy, uint32_t M, bool accumulate)
{
	if (!x || !w || !y || !w->data || index >= w->count || w->slot_of ||
	    (ldx && ldx < w->cols) || (ldy && ldy < w->rows))
		return -EINVAL;
	if (w->act_quant && w->dtype != DP_DTYPE_E4M3 && w->dtype != DP_DTYPE_E2M1)
		return -EINVAL;
	if (w->dtype != DP_DTYPE_F32) { /* bf16, e4m3, e2m1: the fused kernels */
		struct dp_gpu_cpu *c = (struct dp_gpu_cpu *)g;
		struct dp_qmat q;
		if (dp_qmat_of(w, index, &q) < 0)
			return -EINVAL;
		if (w->act_quant) /* the reference numerics (qmm-act.c) */
			return dp_qact_run(&c->pool, c->qmm->isa, &q, x, ldx ? ldx : w->cols, M, y,
					   ldy ? ldy : w->rows, accumulate);
		dp_qmm_run(c->qmm, &c->pool, c->tiles, &q, x, ldx ? ldx : w->cols, M, y,
			   ldy ? ldy : w->rows, accumulate);
		return 0;
	}
	if (M == 0)
		return 0;
	struct f32_product p = {
		.W = (const float *)w->data + (size_t)index * w->rows * w->cols,
		.x = x, .y = y, .M = M, .rows = w->rows, .cols = w->cols,
		.ldx = ldx ? ldx : w->cols, .ldy = ldy ? ldy : w->rows,
		.beta = accumulate ? 1.0f : 0.0f,
	};
	f32_product_run((struct dp_gpu_cpu *)g, &p);
	return 0;
}

static int cpu_embed(struct dp_gpu *g, const struct dp_gpu_weight *table, const int32_t *ids,
		     uint32_t T, float *y)
{
	(void)g;
	if (!table || !ids || !y || table->slot_of ||
	    (table->dtype != DP_DTYPE_F32 && table->dtype != DP_DTYPE_BF16))
		return -EINVAL;
	for (uint32_t t = 0; t < T; t++)
		if (ids[t] < 0 || (uint32_t)ids[t] >= table->rows)
			return -EINVAL;
	for (uint32_t t = 0; t < T; t++)
		if (table->dtype == DP_DTYPE_BF16) /* rows widen exactly */
			dp_convert_to_f32(y + (size_t)t * table->cols,
					  (const uint16_t *)table->data + (size_t)ids[t] * table->cols,
					  DP_DTYPE_BF16, table->cols);
		else
			memcpy(y + (size_t)t * table->cols,
			       (const float *)table->data + (size_t)ids[t] * table->cols,
			       table->cols * sizeof(float));
	return 0;
}

/* 1 / sqrt(mean(x^2) + eps) */
static float rms_scale(const float *x, uint32_t n, float eps)
{
	double ss = 0;
	for (uint32_t i = 0; i < n; i++)
		ss += (double)x[i] * x[i];
	return (float)(1.0 / sqrt(ss / n + eps));
}

static int cpu_rmsnorm(struct dp_gpu *g, const float *x, const float *w, float *y, uint32_t rows,
		       uint32_t dim, float eps)
{
	(void)g;
	if (!x || !y || !dim)
		return -EINVAL;
	for (uint32_t r = 0; r < rows; r++) {
		const float *xr = x + (size_t)r * dim;
		float *yr = y + (size_t)r * dim;
		float s = rms_scale(xr, dim, eps);
		for (uint32_t i = 0; i < dim; i++)
			yr[i] = w ? w[i] * (xr[i] * s) : xr[i] * s;
	}
	return 0;
}

/* Interleaved RoPE on the trailing rope_dim channels of one vector:
 * pair (2i, 2i+1) rotates by pos * inv_freq[i] (negated when inverse). The
 * angle is formed in fp32 as the reference does; cos/sin are then taken in
 * double and rounded, i.e. correctly rounded. */
void dp_cpu_rope_vec(float *v, uint32_t rope_dim, int64_t pos, const float *inv_freq, float factor,
		     bool inverse)
{
	for (uint32_t i = 0; i < rope_dim / 2; i++) {
		float ang = inv_freq[i] * (float)pos;
		float c = (float)cos((double)ang) * factor;
		float s = (float)sin((double)ang) * factor;
		if (inverse)
			s = -s;
		float a = v[2 * i], b = v[2 * i + 1];
		v[2 * i] = a * c - b * s;
		v[2 * i + 1] = b * c + a * s;
	}
}

static int cpu_rope(struct dp_gpu *g, float *x, uint32_t rows, uint32_t heads, uint32_t head_dim,
		    uint32_t rope_dim, const int64_t *pos, const float *inv_freq, float factor,
		    bool inverse)
{
	(void)g;
	if (!x || !pos || !inv_freq || rope_dim > head_dim || rope_dim % 2)
		return -EINVAL;
	for (uint32_t r = 0; r < rows; r++)
		for (uint32_t h = 0; h < heads; h++)
			dp_cpu_rope_vec(x + ((size_t)r * heads + h) * head_dim + (head_dim - rope_dim),
					rope_dim, pos[r], inv_freq, factor, inverse);
	return 0;
}

static int cpu_hc_expand(struct dp_gpu *g, const float *x, float *X, uint32_t T, uint32_t n,
			 uint32_t D)
{
	(void)g;
	for (uint32_t t = 0; t < T; t++)
		for (uint32_t s = 0; s < n; s++)
			memcpy(X + ((size_t)t * n + s) * D, x + (size_t)t * D, D * sizeof(float));
	return 0;
}

static inline float sigmoidf(float x)
{
	return 1.0f / (1.0f + expf(-x));
}

/* mix[t] = fn . rms(flat X[t]) for all T tokens at once: one GEMM over the
 * tokens (fn [rows][nD]), then each row scaled by its token's rms factor
 * (fn . (x * s) == s * (fn . x)). Returns a scratch buffer [T][rows]. */
static float *hc_mix_all(struct dp_gpu_cpu *c, const float *X, const float *fn, uint32_t T,
			 uint32_t rows, uint32_t nD, float rms_eps)
{
	float *mix = dp_cpu_scratch(c, (size_t)T * rows);
	if (!mix)
		return NULL;
	f32_product_run(c, &(struct f32_product){ .W = fn, .x = X, .y = mix, .M = T, .rows = rows,
						   .cols = nD, .ldx = nD, .ldy = rows });
	for (uint32_t t = 0; t < T; t++) {
		float s = rms_scale(X + (size_t)t * nD, nD, rms_eps);
		for (uint32_t j = 0; j < rows; j++)
			mix[(size_t)t * rows + j] *= s;
	}
	return mix;
}

static int cpu_mhc_pre(struct dp_gpu *g, const float *X, const float *fn, const float *base,
		       const float *scale, uint32_t T, uint32_t n, uint32_t D, float rms_eps,
		       float hc_eps, uint32_t iters, float *x, float *post, float *comb)
{
	uint32_t rows = (2 + n) * n;
	float pre[DP_GPU_HC_MAX];

	if (n == 0 || n > DP_GPU_HC_MAX || iters == 0)
		return -EINVAL;
	float *mix_all = hc_mix_all((struct dp_gpu_cpu *)g, X, fn, T, rows, n * D, rms_eps);
	if (!mix_all)
		return -ENOMEM;
	for (uint32_t t = 0; t < T; t++) {
		const float *Xt = X + (size_t)t * n * D;
		float *ct = comb + (size_t)t * n * n;
		const float *mix = mix_all + (size_t)t * rows;
		for (uint32_t s = 0; s < n; s++) {
			pre[s] = sigmoidf(mix[s] * scale[0] + base[s]) + hc_eps;
			post[(size_t)t * n + s] = 2.0f * sigmoidf(mix[n + s] * scale[1] + base[n + s]);
		}
		/* comb: row softmax + eps, then column-normalize; then iters-1
		 * rounds of row- then column-normalization (Sinkhorn). */
		for (uint32_t j = 0; j < n; j++) {
			float *row = ct + j * n;
			float m = -INFINITY;
			for (uint32_t k = 0; k < n; k++) {
				row[k] = mix[2 * n + j * n + k] * scale[2] + base[2 * n + j * n + k];
				m = fmaxf(m, row[k]);
			}
			double sum = 0;
			for (uint32_t k = 0; k < n; k++) {
				row[k] = expf(row[k] - m);
				sum += row[k];
			}
			for (uint32_t k = 0; k < n; k++)
				row[k] = (float)(row[k] / sum) + hc_eps;
		}
		for (uint32_t it = 0; it < iters; it++) {
			if (it > 0) {
				for (uint32_t j = 0; j < n; j++) {
					double sum = 0;
					for (uint32_t k = 0; k < n; k++)
						sum += ct[j * n + k];
					float den = (float)sum + hc_eps;
					for (uint32_t k = 0; k < n; k++)
						ct[j * n + k] /= den;
				}
			}
			for (uint32_t k = 0; k < n; k++) {
				double sum = 0;
				for (uint32_t j = 0; j < n; j++)
					sum += ct[j * n + k];
				float den = (float)sum + hc_eps;
				for (uint32_t j = 0; j < n; j++)
					ct[j * n + k] /= den;
			}
		}
		float *xt = x + (size_t)t * D;
		for (uint32_t d = 0; d < D; d++) {
			float acc = 0;
			for (uint32_t s = 0; s < n; s++)
				acc += pre[s] * Xt[(size_t)s * D + d];
			xt[d] = acc;
		}
	}
	return 0;
}

static int cpu_mhc_post(struct dp_gpu *g, float *X, const float *o, const float *post,
			const float *comb, uint32_t T, uint32_t n, uint32_t D)
{
	struct dp_gpu_cpu *c = (struct dp_gpu_cpu *)g;
	float *tmp = dp_cpu_scratch(c, (size_t)n * D);

	if (!tmp)
		return -ENOMEM;
	for (uint32_t t = 0; t < T; t++) {
		float *Xt = X + (size_t)t * n * D;
		const float *ct = comb + (size_t)t * n * n;
		const float *ot = o + (size_t)t * D;
		for (uint32_t k = 0; k < n; k++) {
			/* same operations in the same order as summing over j per
			 * channel, but with the channel loop innermost (contiguous) */
			float pk = post[(size_t)t * n + k];
			float *tk = tmp + (size_t)k * D;
			memset(tk, 0, D * sizeof(float));
			for (uint32_t j = 0; j < n; j++) {
				float c = ct[j * n + k];
				const float *xj = Xt + (size_t)j * D;
				for (uint32_t d = 0; d < D; d++)
					tk[d] += c * xj[d];
			}
			for (uint32_t d = 0; d < D; d++)
				tk[d] = pk * ot[d] + tk[d];
		}
		memcpy(Xt, tmp, (size_t)n * D * sizeof(float));
	}
	return 0;
}

static int cpu_hc_head(struct dp_gpu *g, const float *X, const float *fn, const float *base,
		       const float *scale, uint32_t T, uint32_t n, uint32_t D, float rms_eps,
		       float hc_eps, float *y)
{
	float *mix_all = hc_mix_all((struct dp_gpu_cpu *)g, X, fn, T, n, n * D, rms_eps);

	if (n == 0 || n > DP_GPU_HC_MAX)
		return -EINVAL;
	if (!mix_all)
		return -ENOMEM;
	for (uint32_t t = 0; t < T; t++) {
		const float *Xt = X + (size_t)t * n * D;
		float *mix = mix_all + (size_t)t * n;
		for (uint32_t s = 0; s < n; s++)
			mix[s] = sigmoidf(mix[s] * scale[0] + base[s]) + hc_eps;
		float *yt = y + (size_t)t * D;
		for (uint32_t d = 0; d < D; d++) {
			float acc = 0;
			for (uint32_t s = 0; s < n; s++)
				acc += mix[s] * Xt[(size_t)s * D + d];
			yt[d] = acc;
		}
	}
	return 0;
}

/* ---- MoE ------------------------------------------------------------------ */

static float softplusf(float x)
{
	/* torch's softplus: linear above the threshold 20 */
	return x > 20.0f ? x : log1pf(expf(x));
}

static int cpu_route(struct dp_gpu *g, const float *logits, const float *bias,
		     const int32_t *tid2eid, const int32_t *ids, uint32_t T, uint32_t E, uint32_t k,
		     enum dp_gpu_score_fn fn, float scale, int32_t *idx, float *w)
{
	struct dp_gpu_cpu *c = (struct dp_gpu_cpu *)g;
	float *scores = dp_cpu_scratch(c, E);

	if (!scores || !logits || !idx || !w || k == 0 || k > E || fn >= DP_GPU_SCORE_FN_MAX ||
	    (tid2eid && !ids))
		return -EINVAL;
	for (uint32_t t = 0; t < T; t++) {
		const float *lt = logits + (size_t)t * E;
		int32_t *it = idx + (size_t)t * k;
		float *wt = w + (size_t)t * k;
		if (fn == DP_GPU_SCORE_SOFTMAX) {
			float m = -INFINITY;
			for (uint32_t e = 0; e < E; e++)
				m = fmaxf(m, lt[e]);
			double sum = 0;
			for (uint32_t e = 0; e < E; e++) {
				scores[e] = expf(lt[e] - m);
				sum += scores[e];
			}
			for (uint32_t e = 0; e < E; e++)
				scores[e] = (float)(scores[e] / sum);
		} else {
			for (uint32_t e = 0; e < E; e++)
				scores[e] = fn == DP_GPU_SCORE_SIGMOID ? sigmoidf(lt[e])
								       : sqrtf(softplusf(lt[e]));
		}
		if (tid2eid) {
			const int32_t *row = tid2eid + (size_t)ids[t] * k;
			for (uint32_t j = 0; j < k; j++) {
				if (row[j] < 0 || (uint32_t)row[j] >= E)
					return -EINVAL;
				it[j] = row[j];
			}
		} else {
			/* top-k of score + bias; ties go to the lower expert */
			for (uint32_t j = 0; j < k; j++) {
				int32_t best = -1;
				float bv = -INFINITY;
				for (uint32_t e = 0; e < E; e++) {
					bool taken = false;
					for (uint32_t q = 0; q < j; q++)
						taken |= it[q] == (int32_t)e;
					float v = scores[e] + (bias ? bias[e] : 0.0f);
					if (!taken && (best < 0 || v > bv)) {
						best = (int32_t)e;
						bv = v;
					}
				}
				it[j] = best;
			}
		}
		double sum = 0;
		for (uint32_t j = 0; j < k; j++)
			sum += scores[it[j]];
		float den = (float)sum + 1e-20f;
		for (uint32_t j = 0; j < k; j++)
			wt[j] = scores[it[j]] / den * scale;
	}
	return 0;
}

static inline float siluf(float x)
{
	return x / (1.0f + expf(-x));
}

static int cpu_swiglu(struct dp_gpu *g, const float *gate, const float *up, float *h,
		      uint32_t rows, uint32_t inter, uint32_t stride, float limit)
{
	(void)g;
	for (uint32_t r = 0; r < rows; r++) {
		const float *gr = gate + (size_t)r * stride;
		const float *ur = up + (size_t)r * stride;
		float *hr = h + (size_t)r * inter;
		for (uint32_t i = 0; i < inter; i++) {
			float gv = fminf(gr[i], limit);
			float uv = fminf(fmaxf(ur[i], -limit), limit);
			hr[i] = siluf(gv) * uv;
		}
	}
	return 0;
}

/* Routed experts: each expert runs once over the tokens routed to it. */
static int cpu_moe(struct dp_gpu *g, const float *x, const int32_t *idx, const float *w,
		   uint32_t T, uint32_t k, const struct dp_gpu_weight *gate_up,
		   const struct dp_gpu_weight *down, float limit, float *y)
{
	struct dp_gpu_cpu *c = (struct dp_gpu_cpu *)g;
	uint32_t E = gate_up->count, inter = gate_up->rows / 2, D = gate_up->cols;
	const int32_t *slot_of = gate_up->slot_of;

	if (down->count != E || down->rows != D || down->cols != inter || gate_up->rows % 2 ||
	    down->slot_of != slot_of || (slot_of && (gate_up->stored != down->stored ||
						     !gate_up->stored)))
		return -EINVAL;
	/* a paged stack: expert e is stored matrix slot_of[e] of a plain view */
	struct dp_gpu_weight gu_view = *gate_up, dn_view = *down;
	if (slot_of) {
		gu_view.slot_of = dn_view.slot_of = NULL;
		gu_view.count = dn_view.count = gate_up->stored;
		for (size_t p = 0; p < (size_t)T * k; p++)
			if (idx[p] >= 0 && ((uint32_t)idx[p] >= E || slot_of[idx[p]] < 0 ||
					    (uint32_t)slot_of[idx[p]] >= gate_up->stored))
				return -EINVAL; /* a pick of an expert that is not resident */
	}
	/* scratch: gathered x [T][D], gate_up [T][2I], h [T][inter], out [T][D], map [T] */
	size_t need = (size_t)T * (D + 2 * inter + inter + D) + 2 * (size_t)T;
	float *s = dp_cpu_scratch(c, need);
	if (!s)
		return -ENOMEM;
	float *xs = s, *gu = xs + (size_t)T * D, *hs = gu + (size_t)T * 2 * inter;
	float *os = hs + (size_t)T * inter;
	uint32_t *tok = (uint32_t *)(os + (size_t)T * D);
	float *wt = (float *)(tok + T);

	for (uint32_t e = 0; e < E; e++) {
		uint32_t m = 0;
		for (uint32_t t = 0; t < T; t++)
			for (uint32_t j = 0; j < k; j++)
				if (idx[(size_t)t * k + j] == (int32_t)e) {
					tok[m] = t;
					wt[m] = w[(size_t)t * k + j];
					memcpy(xs + (size_t)m * D, x + (size_t)t * D, D * sizeof(float));
					m++;
				}
		if (m == 0)
			continue;
		uint32_t s = slot_of ? (uint32_t)slot_of[e] : e;
		int ret = cpu_matmul(g, xs, 0, &gu_view, s, gu, 0, m, false);
		if (ret < 0)
			return ret;
		cpu_swiglu(g, gu, gu + inter, hs, m, inter, 2 * inter, limit);
		/* the reference graph weighs the SwiGLU output before the down
		 * product (its input is then act-quantized); transformers after */
		bool before = down->act_quant;
		if (before)
			for (uint32_t r = 0; r < m; r++)
				for (uint32_t i = 0; i < inter; i++)
					hs[(size_t)r * inter + i] *= wt[r];
		if ((ret = cpu_matmul(g, hs, 0, &dn_view, s, os, 0, m, false)) < 0)
			return ret;
		for (uint32_t r = 0; r < m; r++) {
			float *yt = y + (size_t)tok[r] * D;
			const float *orow = os + (size_t)r * D;
			if (before)
				for (uint32_t d = 0; d < D; d++)
					yt[d] += orow[d];
			else
				for (uint32_t d = 0; d < D; d++)
					yt[d] += wt[r] * orow[d];
		}
	}
	return 0;
}

static int cpu_add(struct dp_gpu *g, float *y, const float *x, size_t n)
{
	(void)g;
	for (size_t i = 0; i < n; i++)
		y[i] += x[i];
	return 0;
}

static int cpu_gather_rows(struct dp_gpu *g, float *dst, const float *src, uint32_t rows,
			   uint32_t dst_stride, uint32_t src_stride, uint32_t cols)
{
	(void)g;
	for (uint32_t r = 0; r < rows; r++)
		memmove(dst + (size_t)r * dst_stride, src + (size_t)r * src_stride,
			cols * sizeof(float));
	return 0;
}

/* Engram fusion (gpu.h, struct dp_gpu_engram). */
static int cpu_engram_fuse(struct dp_gpu *g, const struct dp_gpu_engram *e)
{
	struct dp_gpu_cpu *c = (struct dp_gpu_cpu *)g;

	if (!e || !e->X || !e->rows || !e->wkv || !e->gain || !e->n || !e->D || !e->E ||
	    e->n > DP_GPU_HC_MAX || e->wkv->count < 1 || e->wkv->slot_of ||
	    e->wkv->rows != (e->n + 1) * e->D ||
	    e->wkv->cols != e->E)
		return -EINVAL;
	if (e->T == 0)
		return 0;
	uint32_t T = e->T, n = e->n, D = e->D, W = (n + 1) * D;
	float *kv = dp_cpu_scratch(c, (size_t)T * W);
	if (!kv)
		return -ENOMEM;
	int ret = cpu_matmul(g, e->rows, 0, e->wkv, 0, kv, 0, T, false);
	if (ret < 0)
		return ret;
	double inv_sqrt_d = 1.0 / sqrt((double)D);
	for (uint32_t t = 0; t < T; t++) {
		const float *kt = kv + (size_t)t * W, *value = kt + (size_t)n * D;
		for (uint32_t m = 0; m < n; m++) {
			float *x = e->X + ((size_t)t * n + m) * D;
			const float *key = kt + (size_t)m * D, *w = e->gain + (size_t)m * D;
			double sx = 0, sk = 0, dot = 0;
			for (uint32_t d = 0; d < D; d++) {
				sx += (double)x[d] * x[d];
				sk += (double)key[d] * key[d];
				dot += (double)x[d] * w[d] * key[d];
			}
			double rx = 1.0 / sqrt(sx / D + e->eps), rk = 1.0 / sqrt(sk / D + e->eps);
			double s = dot * rx * rk * inv_sqrt_d;
			double a = sqrt(fmax(fabs(s), 1e-6));
			double z = s > 0 ? a : s < 0 ? -a : 0.0;
			float gate = (float)(1.0 / (1.0 + exp(-z)));
			for (uint32_t d = 0; d < D; d++)
				x[d] += gate * value[d];
		}
	}
	return 0;
}

static int cpu_round(struct dp_gpu *g, float *x, uint32_t rows, uint32_t ld, uint32_t cols,
		     enum dp_gpu_round how)
{
	(void)g;
	return dp_qact_round(x, rows, ld, cols, how);
}

static const struct dp_gpu_ops cpu_ops = {
	.matmul = cpu_matmul,
	.embed = cpu_embed,
	.rmsnorm = cpu_rmsnorm,
	.rope = cpu_rope,
	.hc_expand = cpu_hc_expand,
	.mhc_pre = cpu_mhc_pre,
	.mhc_post = cpu_mhc_post,
	.hc_head = cpu_hc_head,
	.route = cpu_route,
	.moe = cpu_moe,
	.swiglu = cpu_swiglu,
	.add = cpu_add,
	.attention = dp_cpu_attention,
	.compress = dp_cpu_compress,
	.index_topk = dp_cpu_index_topk,
	.gather_rows = cpu_gather_rows,
	.engram_fuse = cpu_engram_fuse,
	.round = cpu_round,
};

int dp_gpu_cpu_new(const struct dp_gpu_opts *opts, struct dp_gpu **ret, char *err, size_t err_len)
{
	struct dp_gpu_cpu *c = calloc(1, sizeof(*c));

	if (!c) {
		if (err && err_len)
			snprintf(err, err_len, "out of memory creating the cpu backend");
		return -ENOMEM;
	}
	c->g.kind = DP_GPU_CPU;
	c->g.be = &cpu_backend;
	c->g.ops = &cpu_ops;

	enum dp_gpu_isa isa = opts->isa;
	const char *env = getenv("DP_CPU_ISA");
	if (isa == DP_GPU_ISA_AUTO && env && env[0] && dp_gpu_isa_parse(env, &isa) < 0) {
		if (err && err_len)
			snprintf(err, err_len,
				 "DP_CPU_ISA=%s: not a kernel path (auto, portable, avx2, avx512)", env);
		free(c);
		return -EINVAL;
	}
	c->qmm = isa < DP_GPU_ISA_MAX ? dp_qmm_isa_get(isa) : NULL;
	if (!c->qmm) {
		if (err && err_len)
			snprintf(err, err_len, "this CPU cannot run the %s kernels",
				 dp_gpu_isa_name(isa) ? dp_gpu_isa_name(isa) : "(unknown)");
		free(c);
		return isa < DP_GPU_ISA_MAX ? -ENOTSUP : -EINVAL;
	}
	int threads = opts->threads;
	if (threads <= 0) {
		cpu_set_t set;
		threads = sched_getaffinity(0, sizeof(set), &set) == 0 ? CPU_COUNT(&set) : 1;
	}
	c->tiles = malloc((size_t)threads * DP_QMM_NR * DP_QMM_KC * sizeof(float));
	if (!c->tiles || dp_cpu_pool_init(&c->pool, threads) < 0) {
		if (err && err_len)
			snprintf(err, err_len, "out of memory starting %d cpu worker threads", threads);
		free(c->tiles);
		free(c);
		return -ENOMEM;
	}
	c->g.isa = c->qmm->isa;
	/* OpenBLAS's own threads spin (sched_yield) for ~0.1 s after every
	 * threaded call before they sleep: on a small host they took a CPU from
	 * the io thread and the kernel's I/O work while restores overlapped the
	 * steps (the daemon's CPU time over the agentic benchmark's io-bound
	 * turns roughly halved without them). So BLAS runs on the caller's
	 * thread and the large fp32 products are split over the pool, whose
	 * workers sleep on a condition variable. */
	openblas_set_num_threads(1);
	*ret = &c->g;
	return 0;
}
