/* SPDX-License-Identifier: MIT */
/*
 * Loading a V4 checkpoint onto a backend. model/weights.c resolves every
 * tensor (any of the three name spellings) and checks names, shapes, dtypes
 * and tid2eid's range against the config; this file uploads what it found,
 * in the layout the ops want (kv|gate projections stacked, o_a split into its
 * groups, experts stacked, vectors as fp32, tid2eid as int32).
 */
#include <assert.h>
#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/err.h"
#include "base/macros.h"
#include "model/quant.h"
#include "model/safetensors.h"
#include "model/v4-internal.h"
#include "model/weights.h"

struct loader {
	struct dp_v4_model *m;
	struct dp_v4_weights *w;
	const struct dp_st *st;
	bool keep; /* weights as stored (cpu backend, no dequantize option) */
	char *err;
	size_t err_len;
};

static int fail(struct loader *ld, int ret, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(struct loader *ld, int ret, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	dp_verrf(ld->err, ld->err_len, fmt, ap);
	va_end(ap);
	return ret;
}

/*
 * Fill rows [row0, row0 + n_rows) of w[index] from rows [src0, src0 + n_rows) of tensor t,
 * dequantized exactly when t is an FP8 or FP4 weight (model/quant.h: its scale is the one
 * weights.c checked). n_rows 0: all of t's rows from src0 on.
 */
static int fill_rows(struct loader *ld, struct dp_gpu_weight *w, uint32_t index, uint32_t row0,
		     const struct dp_st_tensor *t, uint64_t src0, uint64_t n_rows)
{
	struct dp_st_tensor sc;
	const struct dp_st_tensor *scale = NULL;
	uint64_t rows, cols;
	int ret = dp_v4_weights_scale(ld->w, t, &sc);

	if (ret == 0)
		scale = &sc;
	else if (ret != -ENOENT)
		return fail(ld, ret, "internal: no scale lookup for %s", t->name);
	if (scale) {
		if ((ret = dp_quant_logical_shape(t, &rows, &cols)) < 0)
			return fail(ld, ret, "%s: %s is not a 2-d weight", t->file, t->name);
	} else {
		rows = t->ndim >= 2 ? (uint64_t)t->shape[t->ndim - 2] : 1;
		cols = t->ndim >= 1 ? (uint64_t)t->shape[t->ndim - 1] : 1;
	}
	if (!n_rows)
		n_rows = rows - src0;
	uint64_t step = cols > (1u << 20) ? 1 : (1u << 20) / cols;
	float *buf = malloc(step * cols * sizeof(float));

	ret = 0;
	if (!buf)
		return fail(ld, -ENOMEM, "out of memory loading %s", t->name);
	for (uint64_t r = 0; r < n_rows && ret == 0; r += step) {
		uint64_t k = n_rows - r < step ? n_rows - r : step;
		ret = dp_quant_dequant_rows(t, scale, src0 + r, k, buf, ld->err, ld->err_len);
		if (ret == -EINVAL && scale) { /* a NaN code: err names it */
			free(buf);
			return ret;
		}
		if (ret == 0)
			ret = dp_gpu_weight_fill(ld->m->g, w, index, row0 + (uint32_t)r, (uint32_t)k, buf,
						 DP_DTYPE_F32);
	}
	free(buf);
	if (ret < 0)
		return fail(ld, ret, "%s: loading tensor %s onto the %s backend failed: %s", t->file,
			    t->name, dp_gpu_kind_name(dp_gpu_kind_of(ld->m->g)), strerror(-ret));
	/* dequantized into the backend's memory: the stored rows leave RSS */
	if (t->ndim <= 2 && rows)
		(void)dp_st_release(t, src0 * (t->bytes / rows), n_rows * (t->bytes / rows));
	return 0;
}

/* ---- weights kept as stored (issue 14) -------------------------------------
 *
 * On the cpu backend a weight stays in the checkpoint's dtype (FP8 e4m3 with
 * its 128x128 block scales, FP4 e2m1 with its per-32 scales, BF16, F32) and
 * the ops' kernels dequantize as they multiply. A matrix whose codes and
 * scales are one run of the mapped shard in the layout gpu/gpu.h asks for
 * (a whole tensor; o_a's groups, whole 128-row blocks each) is wrapped in
 * place: no copy, the bytes stay in the page cache, and the dp_st stays open
 * with the model. A weight made of several tensors (kv|gate pairs, an
 * expert's gate|up) is one alloc_as and a copy of the stored bytes, codes
 * and scales concatenated by rows. Routed experts too: each is a tensor of
 * its own in the checkpoint, and an op takes a stack as one contiguous
 * array (struct dp_gpu_weight has one data pointer), so a wrap per expert
 * would need an op interface of per-matrix pointers; copying the quantized
 * bytes costs what the checkpoint holds, not 4-8x as fp32 did. What cannot
 * be kept (F16, an FP8 stack whose parts are not whole 128-row blocks) is
 * dequantized as before and counted in the model's weight stats. */

struct kept {
	struct dp_st_tensor t, sc; /* the weight and its scale (when scaled) */
	bool scaled;
	enum dp_dtype dtype, scale_dtype;
	uint64_t rows, cols; /* logical */
};

/* Whether tensor t can be kept as stored: 1 (kp filled), 0 (dequantize it), or < 0. */
static int keepable(struct loader *ld, const struct dp_st_tensor *t, struct kept *kp)
{
	int ret;

	if (!ld->keep || t->ndim != 2)
		return 0;
	kp->t = *t;
	ret = dp_v4_weights_scale(ld->w, t, &kp->sc);
	if (ret < 0 && ret != -ENOENT)
		return fail(ld, ret, "internal: no scale lookup for %s", t->name);
	kp->scaled = ret == 0;
	switch (t->dtype) {
	case DP_ST_F8_E4M3: kp->dtype = DP_DTYPE_E4M3; break;
	case DP_ST_I8: kp->dtype = DP_DTYPE_E2M1; break;
	case DP_ST_BF16:
		/* kept in a quantized (published) checkpoint, where its bf16
		 * tensors are large; a plain bf16 checkpoint (the embedded and
		 * trained models) widens to fp32 as before: OpenBLAS's sgemm
		 * still beats the bf16 kernels there (bench/agentic: 0.20 vs
		 * 0.28 ms a token on the embedded model) */
		if (!ld->m->cfg.has_quantization_config)
			return 0;
		kp->dtype = DP_DTYPE_BF16;
		break;
	case DP_ST_F32: kp->dtype = DP_DTYPE_F32; break;
	default: return 0; /* F16: the kernels take no F16 weight */
	}
	if (kp->scaled != (kp->dtype == DP_DTYPE_E4M3 || kp->dtype == DP_DTYPE_E2M1))
		return 0; /* weights.c refuses that pairing; cannot happen */
	kp->scale_dtype = DP_DTYPE_F32;
	if (kp->scaled) {
		if (kp->sc.dtype == DP_ST_F8_E8M0)
			kp->scale_dtype = DP_DTYPE_E8M0;
		else if (kp->sc.dtype != DP_ST_F32)
			return 0;
		if ((ret = dp_quant_logical_shape(t, &kp->rows, &kp->cols)) < 0)
			return fail(ld, ret, "%s: %s is not a 2-d weight", t->file, t->name);
	} else {
		kp->rows = (uint64_t)t->shape[0];
		kp->cols = (uint64_t)t->shape[1];
	}
	return 1;
}

/* Rows [r0, r0 + n) of a kept tensor as one matrix of a weight: its codes and scales, each a
 * contiguous run in the mapping, or false when the rows split a scale block (FP8: 128 rows). */
static bool kept_rows(const struct kept *kp, uint64_t r0, uint64_t n, const char **ret_codes,
		      size_t *ret_code_bytes, const char **ret_scales, size_t *ret_scale_bytes)
{
	size_t row_bytes = dp_dtype_bytes(kp->dtype, kp->cols);
	size_t ssz = dp_dtype_size(kp->scale_dtype);
	size_t srow = 0, s0 = 0, sn = 0;

	if (kp->dtype == DP_DTYPE_E4M3) {
		if (r0 % DP_GPU_E4M3_BLOCK || (n % DP_GPU_E4M3_BLOCK && r0 + n != kp->rows))
			return false;
		srow = (kp->cols + DP_GPU_E4M3_BLOCK - 1) / DP_GPU_E4M3_BLOCK;
		s0 = r0 / DP_GPU_E4M3_BLOCK;
		sn = (n + DP_GPU_E4M3_BLOCK - 1) / DP_GPU_E4M3_BLOCK;
	} else if (kp->dtype == DP_DTYPE_E2M1) {
		srow = (kp->cols + DP_GPU_E2M1_BLOCK - 1) / DP_GPU_E2M1_BLOCK;
		s0 = r0;
		sn = n;
	}
	*ret_codes = (const char *)kp->t.data + r0 * row_bytes;
	*ret_code_bytes = n * row_bytes;
	*ret_scales = kp->scaled ? (const char *)kp->sc.data + s0 * srow * ssz : NULL;
	*ret_scale_bytes = sn * srow * ssz;
	return true;
}

/* A kept tensor the backend refused (-EINVAL: a NaN code): whether the dequantizer found the
 * code, writing the message the dequantize-at-load path gives (it names the element). */
static bool nan_named(struct loader *ld, const struct kept *k)
{
	if (k->scaled) {
		uint64_t step = k->cols > (1u << 16) ? 1 : (1u << 16) / k->cols;
		float *buf = malloc(step * k->cols * sizeof(float));
		for (uint64_t r = 0; buf && r < k->rows; r += step) {
			uint64_t n = k->rows - r < step ? k->rows - r : step;
			if (dp_quant_dequant_rows(&k->t, &k->sc, r, n, buf, ld->err, ld->err_len) ==
			    -EINVAL) {
				free(buf);
				return true;
			}
		}
		free(buf);
	}
	return false;
}

/* One part of a kept matrix stacked by rows. */
struct kpart {
	struct kept k;
	uint64_t r0, n;
};

/* Whether parts stack into one matrix of the first part's dtypes. */
static bool kparts_stack(const struct kpart *p, int n_parts)
{
	for (int i = 0; i < n_parts; i++) {
		const char *c, *s;
		size_t cb, sb;
		if (p[i].k.dtype != p[0].k.dtype || p[i].k.scale_dtype != p[0].k.scale_dtype ||
		    p[i].k.cols != p[0].k.cols || !kept_rows(&p[i].k, p[i].r0, p[i].n, &c, &cb, &s, &sb))
			return false;
		/* FP8: a part that ends inside a block would share it with the next */
		if (p[i].k.dtype == DP_DTYPE_E4M3 && i + 1 < n_parts && p[i].n % DP_GPU_E4M3_BLOCK)
			return false;
	}
	return true;
}

/* Bytes the weight now holds a copy of leave the process's RSS (safetensors.h: dp_st_release;
 * pages shared with a neighbour used in place stay). Without this a resident model kept every
 * shard page the copy read, 1.4 GiB beyond the weights on bench/quant's Flash-shaped model. */
static void release_copied(const struct kept *k, const char *codes, size_t code_bytes,
			   const char *scales, size_t scale_bytes)
{
	(void)dp_st_release(&k->t, (uint64_t)(codes - (const char *)k->t.data), code_bytes);
	if (k->scaled && scales)
		(void)dp_st_release(&k->sc, (uint64_t)(scales - (const char *)k->sc.data),
				    scale_bytes);
}

/* Fill matrix `index` of w (alloc_as'd with the parts' dtypes) from the parts stacked by rows:
 * the stored bytes, concatenated (one part: straight from the mapping). */
static int kparts_fill(struct loader *ld, struct dp_gpu_weight *w, uint32_t index,
		       const struct kpart *p, int n_parts)
{
	const char *c[4], *s[4];
	size_t cb[4], sb[4], ctot = 0, stot = 0;
	int ret;

	assert(n_parts >= 1 && n_parts <= 4);
	for (int i = 0; i < n_parts; i++) {
		if (!kept_rows(&p[i].k, p[i].r0, p[i].n, &c[i], &cb[i], &s[i], &sb[i]))
			return fail(ld, -EINVAL, "internal: %s does not stack", p[i].k.t.name);
		ctot += cb[i];
		stot += sb[i];
	}
	if (n_parts == 1) {
		ret = dp_gpu_weight_fill_blocks(ld->m->g, w, index, c[0], s[0]);
	} else {
		char *buf = malloc(ctot + stot + 1);
		if (!buf)
			return fail(ld, -ENOMEM, "out of memory loading %s", p[0].k.t.name);
		size_t co = 0, so = ctot;
		for (int i = 0; i < n_parts; i++) {
			memcpy(buf + co, c[i], cb[i]);
			co += cb[i];
			if (sb[i])
				memcpy(buf + so, s[i], sb[i]);
			so += sb[i];
		}
		ret = dp_gpu_weight_fill_blocks(ld->m->g, w, index, buf, p[0].k.scaled ? buf + ctot : NULL);
		free(buf);
	}
	if (ret == 0) {
		for (int i = 0; i < n_parts; i++)
			release_copied(&p[i].k, c[i], cb[i], s[i], sb[i]);
		return 0;
	}
	for (int i = 0; ret == -EINVAL && i < n_parts; i++) /* which part holds the NaN */
		if (nan_named(ld, &p[i].k))
			return ret;
	return fail(ld, ret, "%s: keeping tensor %s as %s failed: %s", p[0].k.t.file,
		    p[0].k.t.name, dp_dtype_name(p[0].k.dtype), strerror(-ret));
}

static int alloc_kept(struct loader *ld, const struct kept *k, uint32_t count, uint32_t rows,
		      uint32_t cols, struct dp_gpu_weight *w)
{
	int ret = dp_gpu_weight_alloc_as(ld->m->g, k->dtype, k->scale_dtype, count, rows, cols, w);
	if (ret < 0)
		return fail(ld, ret, "out of %s backend memory for a %u x %u x %u %s weight (%s)",
			    dp_gpu_kind_name(dp_gpu_kind_of(ld->m->g)), count, rows, cols,
			    dp_dtype_name(k->dtype), strerror(-ret));
	ld->m->wst.kept++;
	return 0;
}

/* count matrices of `rows` rows each, from rows 0.. of a kept tensor: wrapped in place when the
 * bytes allow (one run, aligned for their dtype), else copied. 0 (not kept: dequantize), 1, or
 * < 0. */
static int keep_matrices(struct loader *ld, const struct kept *k, uint32_t count, uint32_t rows,
			 struct dp_gpu_weight *w)
{
	const char *c, *s;
	size_t cb, sb;
	int ret;

	if ((uint64_t)count * rows != k->rows)
		return 0;
	for (uint32_t i = 0; i < count; i++)
		if (!kept_rows(k, (uint64_t)i * rows, rows, &c, &cb, &s, &sb))
			return 0; /* FP8 groups splitting a 128-row block */
	if (count > 1 && k->dtype == DP_DTYPE_E4M3 && rows % DP_GPU_E4M3_BLOCK)
		return 0;
	bool aligned = k->t.aligned && (!k->scaled || k->sc.aligned);
	if (aligned) {
		ret = dp_gpu_weight_wrap(ld->m->g, k->t.data, k->scaled ? k->sc.data : NULL, k->dtype,
					 k->scale_dtype, count, rows, (uint32_t)k->cols, w);
		if (ret < 0)
			return ret == -EINVAL && nan_named(ld, k)
				       ? ret
				       : fail(ld, ret, "%s: using tensor %s in place as %s failed: %s",
					      k->t.file, k->t.name, dp_dtype_name(k->dtype),
					      strerror(-ret));
		kept_rows(k, 0, k->rows, &c, &cb, &s, &sb);
		ld->m->wst.kept++;
		ld->m->wst.wrapped++;
		ld->m->wst.mapped_bytes += cb + sb;
		return 1;
	}
	if ((ret = alloc_kept(ld, k, count, rows, (uint32_t)k->cols, w)) < 0)
		return ret;
	for (uint32_t i = 0; i < count; i++) {
		struct kpart p = { .k = *k, .r0 = (uint64_t)i * rows, .n = rows };
		if ((ret = kparts_fill(ld, w, i, &p, 1)) < 0)
			return ret;
	}
	return 1;
}

static int fill(struct loader *ld, struct dp_gpu_weight *w, uint32_t index, uint32_t row0,
		const struct dp_st_tensor *t)
{
	return fill_rows(ld, w, index, row0, t, 0, 0);
}

static int tensor(struct loader *ld, int layer, int kind, struct dp_st_tensor *t)
{
	int ret = layer < 0 ? dp_v4_weights_global(ld->w, (enum dp_v4_global_tensor)kind, t)
			    : dp_v4_weights_layer(ld->w, layer, (enum dp_v4_layer_tensor)kind, t);
	if (ret < 0)
		return fail(ld, ret, "internal: tensor %d of layer %d was not resolved", kind, layer);
	return 0;
}

static int alloc_w(struct loader *ld, uint32_t count, uint32_t rows, uint32_t cols,
		   struct dp_gpu_weight *w)
{
	int ret = dp_gpu_weight_alloc(ld->m->g, count, rows, cols, w);
	if (ret < 0)
		return fail(ld, ret, "out of %s backend memory for a %u x %u x %u weight",
			    dp_gpu_kind_name(dp_gpu_kind_of(ld->m->g)), count, rows, cols);
	return 0;
}

/* A matrix as one weight. */
static int load_matrix(struct loader *ld, int layer, int kind, struct dp_gpu_weight *w)
{
	struct dp_st_tensor t;
	int ret;

	uint64_t rows, cols;

	if ((ret = tensor(ld, layer, kind, &t)) < 0)
		return ret;
	struct kept k;
	if ((ret = keepable(ld, &t, &k)) < 0)
		return ret;
	if (ret == 1 && (ret = keep_matrices(ld, &k, 1, (uint32_t)k.rows, w)) != 0)
		return ret < 0 ? ret : 0;
	ld->m->wst.dequantized++;
	if (dp_quant_logical_shape(&t, &rows, &cols) < 0)
		rows = (uint64_t)t.shape[0], cols = (uint64_t)t.shape[1];
	if ((ret = alloc_w(ld, 1, (uint32_t)rows, (uint32_t)cols, w)) < 0)
		return ret;
	return fill(ld, w, 0, 0, &t);
}

/* Two matrices of one shape stacked by rows into one weight. */
static int load_pair(struct loader *ld, int layer, int kind1, int kind2, struct dp_gpu_weight *w)
{
	struct dp_st_tensor a, b;
	int ret;

	if ((ret = tensor(ld, layer, kind1, &a)) < 0 || (ret = tensor(ld, layer, kind2, &b)) < 0)
		return ret;
	struct kpart p[2];
	int ka, kb;
	if ((ka = keepable(ld, &a, &p[0].k)) < 0 || (kb = keepable(ld, &b, &p[1].k)) < 0)
		return ka < 0 ? ka : kb;
	p[0].r0 = p[1].r0 = 0;
	p[0].n = p[0].k.rows;
	p[1].n = p[1].k.rows;
	if (ka == 1 && kb == 1 && kparts_stack(p, 2)) {
		if ((ret = alloc_kept(ld, &p[0].k, 1, (uint32_t)(p[0].n + p[1].n),
				      (uint32_t)p[0].k.cols, w)) < 0)
			return ret;
		return kparts_fill(ld, w, 0, p, 2);
	}
	ld->m->wst.dequantized++;
	if ((ret = alloc_w(ld, 1, 2 * (uint32_t)a.shape[0], (uint32_t)a.shape[1], w)) < 0 ||
	    (ret = fill(ld, w, 0, 0, &a)) < 0)
		return ret;
	return fill(ld, w, 0, (uint32_t)a.shape[0], &b);
}

/* Any float tensor as an fp32 vector. */
static int load_vector(struct loader *ld, int layer, int kind, float **ret_vec)
{
	struct dp_st_tensor t;
	int ret = tensor(ld, layer, kind, &t);
	if (ret < 0)
		return ret;
	float *host = malloc(t.numel * sizeof(float));
	if (!host)
		return fail(ld, -ENOMEM, "out of memory loading %s", t.name);
	ret = dp_st_to_f32(&t, host, t.numel);
	if (ret == 0)
		ret = dp_gpu_vector_upload(ld->m->g, host, DP_DTYPE_F32, t.numel, ret_vec);
	free(host);
	if (ret < 0)
		return fail(ld, ret, "%s: loading tensor %s failed: %s", t.file, t.name, strerror(-ret));
	return 0;
}

static int load_experts(struct loader *ld, int l, struct dp_v4_layer_w *w)
{
	const struct dp_v4_config *c = &ld->m->cfg;
	uint32_t E = c->n_routed_experts, I = c->moe_intermediate_size, D = c->hidden_size;
	struct dp_st_tensor t;
	int ret;

	/* paged: expert_slots matrices, filled as the router picks experts */
	uint32_t n = ld->m->load_opts.experts == DP_V4_EXPERTS_DEVICE ? E
								      : ld->m->load_opts.expert_slots;
	/* kept as stored when every expert's gate|up stacks and all share dtypes */
	struct kpart gu[2], dn;
	bool keep = true;

	memset(gu, 0, sizeof(gu));
	memset(&dn, 0, sizeof(dn));
	for (uint32_t e = 0; keep && e < E; e++) {
		struct kpart q[2], r;
		static const enum dp_v4_expert_part part[3] = { DP_V4_EXPERT_GATE, DP_V4_EXPERT_UP,
								DP_V4_EXPERT_DOWN };
		struct kpart *dst[3] = { &q[0], &q[1], &r };
		for (int i = 0; keep && i < 3; i++) {
			if ((ret = dp_v4_weights_expert(ld->w, l, (int)e, part[i], &t)) < 0)
				return fail(ld, ret, "internal: expert %u of layer %d", e, l);
			if ((ret = keepable(ld, &t, &dst[i]->k)) < 0)
				return ret;
			keep = ret == 1;
			dst[i]->r0 = 0;
			dst[i]->n = dst[i]->k.rows;
		}
		keep = keep && kparts_stack(q, 2) && kparts_stack(&r, 1);
		if (keep && e == 0) {
			gu[0] = q[0];
			gu[1] = q[1];
			dn = r;
		}
		keep = keep && q[0].k.dtype == gu[0].k.dtype &&
		       q[0].k.scale_dtype == gu[0].k.scale_dtype && r.k.dtype == dn.k.dtype &&
		       r.k.scale_dtype == dn.k.scale_dtype;
		if (keep && ld->m->load_opts.experts == DP_V4_EXPERTS_DEVICE &&
		    (ret = e == 0 ? alloc_kept(ld, &gu[0].k, n, 2 * I, D, &w->gate_up) : 0) == 0 &&
		    (ret = e == 0 ? alloc_kept(ld, &dn.k, n, D, I, &w->down) : 0) == 0 &&
		    (ret = kparts_fill(ld, &w->gate_up, e, q, 2)) == 0)
			ret = kparts_fill(ld, &w->down, e, &r, 1);
		if (ret < 0)
			return ret;
	}
	if (keep && ld->m->load_opts.experts != DP_V4_EXPERTS_DEVICE) {
		/* paged: slots of the stored dtypes, filled by v4_experts.c */
		if ((ret = alloc_kept(ld, &gu[0].k, n, 2 * I, D, &w->gate_up)) < 0 ||
		    (ret = alloc_kept(ld, &dn.k, n, D, I, &w->down)) < 0)
			return ret;
	}
	w->experts_kept = keep;
	if (keep)
		return 0;
	/* dequantized; an expert kept before a later one could not be: start over */
	dp_gpu_weight_free(ld->m->g, &w->gate_up);
	dp_gpu_weight_free(ld->m->g, &w->down);
	ld->m->wst.dequantized++;
	if ((ret = alloc_w(ld, n, 2 * I, D, &w->gate_up)) < 0 ||
	    (ret = alloc_w(ld, n, D, I, &w->down)) < 0)
		return ret;
	for (uint32_t e = 0; n == E && e < E; e++) {
		if ((ret = dp_v4_weights_expert(ld->w, l, (int)e, DP_V4_EXPERT_GATE, &t)) < 0 ||
		    (ret = fill(ld, &w->gate_up, e, 0, &t)) < 0 ||
		    (ret = dp_v4_weights_expert(ld->w, l, (int)e, DP_V4_EXPERT_UP, &t)) < 0 ||
		    (ret = fill(ld, &w->gate_up, e, I, &t)) < 0 ||
		    (ret = dp_v4_weights_expert(ld->w, l, (int)e, DP_V4_EXPERT_DOWN, &t)) < 0 ||
		    (ret = fill(ld, &w->down, e, 0, &t)) < 0)
			return ret < 0 && ld->err && !ld->err[0]
				       ? fail(ld, ret, "expert %u of layer %d: %s", e, l, strerror(-ret))
				       : ret;
	}
	return 0;
}

/* tid2eid [V][k] as int32 (weights.c checked the range). */
static int load_tid2eid(struct loader *ld, int l, struct dp_v4_layer_w *w)
{
	struct dp_st_tensor t;
	int ret = tensor(ld, l, DP_V4_W_TID2EID, &t);
	if (ret < 0)
		return ret;
	int64_t *v = malloc(t.numel * sizeof(*v));
	int32_t *h = malloc(t.numel * sizeof(*h));
	if (!v || !h) {
		free(v);
		free(h);
		return fail(ld, -ENOMEM, "out of memory loading %s", t.name);
	}
	ret = dp_st_read_i64(&t, 0, t.numel, v);
	for (uint64_t i = 0; i < t.numel; i++)
		h[i] = (int32_t)v[i];
	if (ret == 0) {
		w->tid2eid = dp_gpu_alloc(ld->m->g, t.numel * sizeof(int32_t), DP_GPU_MEM_WEIGHTS);
		ret = w->tid2eid ? dp_gpu_upload(ld->m->g, w->tid2eid, h, t.numel * sizeof(int32_t))
				 : fail(ld, -ENOMEM, "out of backend memory for %s", t.name);
	}
	free(v);
	free(h);
	return ret;
}

/* Engram layer weights: wkv as a matrix, the gain x_norm * k_norm (fp32 product) as a vector. */
static int load_engram_layer(struct loader *ld, int l, struct dp_v4_layer_w *w)
{
	struct dp_st_tensor xt, kt;
	int ret;

	if ((ret = load_matrix(ld, l, DP_V4_W_ENGRAM_WKV, &w->engram_wkv)) < 0 ||
	    (ret = tensor(ld, l, DP_V4_W_ENGRAM_X_NORM, &xt)) < 0 ||
	    (ret = tensor(ld, l, DP_V4_W_ENGRAM_K_NORM, &kt)) < 0)
		return ret;
	float *x = malloc(xt.numel * sizeof(float)), *k = malloc(kt.numel * sizeof(float));
	if (!x || !k) {
		free(x);
		free(k);
		return fail(ld, -ENOMEM, "out of memory loading %s", xt.name);
	}
	ret = dp_st_to_f32(&xt, x, xt.numel);
	if (ret == 0)
		ret = dp_st_to_f32(&kt, k, kt.numel);
	for (uint64_t i = 0; ret == 0 && i < xt.numel; i++)
		x[i] *= k[i];
	if (ret == 0)
		ret = dp_gpu_vector_upload(ld->m->g, x, DP_DTYPE_F32, xt.numel, &w->engram_gain);
	free(x);
	free(k);
	if (ret < 0)
		return fail(ld, ret, "%s: loading layer %d's Engram norms failed: %s", xt.file, l,
			    strerror(-ret));
	return 0;
}

static int load_layer(struct loader *ld, int l)
{
	const struct dp_v4_config *c = &ld->m->cfg;
	struct dp_v4_layer_w *w = &ld->m->layers[l];
	uint32_t H = c->num_attention_heads, d = c->head_dim, G = c->o_groups, R = c->o_lora_rank;
	int ret;

#define TRY(x)                       \
	do {                         \
		if ((ret = (x)) < 0) \
			return ret;  \
	} while (0)

	TRY(load_vector(ld, l, DP_V4_W_ATTN_HC_FN, &w->attn_hc_fn));
	TRY(load_vector(ld, l, DP_V4_W_ATTN_HC_BASE, &w->attn_hc_base));
	TRY(load_vector(ld, l, DP_V4_W_ATTN_HC_SCALE, &w->attn_hc_scale));
	TRY(load_vector(ld, l, DP_V4_W_FFN_HC_FN, &w->ffn_hc_fn));
	TRY(load_vector(ld, l, DP_V4_W_FFN_HC_BASE, &w->ffn_hc_base));
	TRY(load_vector(ld, l, DP_V4_W_FFN_HC_SCALE, &w->ffn_hc_scale));
	TRY(load_vector(ld, l, DP_V4_W_INPUT_NORM, &w->in_norm));
	TRY(load_vector(ld, l, DP_V4_W_POST_ATTN_NORM, &w->post_norm));

	TRY(load_matrix(ld, l, DP_V4_W_Q_A, &w->q_a));
	TRY(load_vector(ld, l, DP_V4_W_Q_A_NORM, &w->q_a_norm));
	TRY(load_matrix(ld, l, DP_V4_W_Q_B, &w->q_b));
	TRY(load_matrix(ld, l, DP_V4_W_KV, &w->kv));
	TRY(load_vector(ld, l, DP_V4_W_KV_NORM, &w->kv_norm));
	{
		/* o_a: g blocks of R rows in the file; one matrix per group here */
		struct dp_st_tensor t;
		struct kept k;
		TRY(tensor(ld, l, DP_V4_W_O_A, &t));
		TRY(keepable(ld, &t, &k));
		if (ret == 1)
			TRY(keep_matrices(ld, &k, G, R, &w->o_a));
		if (ret == 0) {
			ld->m->wst.dequantized++;
			TRY(alloc_w(ld, G, R, H * d / G, &w->o_a));
			for (uint32_t gi = 0; gi < G; gi++)
				TRY(fill_rows(ld, &w->o_a, gi, 0, &t, (uint64_t)gi * R, R));
		}
	}
	TRY(load_matrix(ld, l, DP_V4_W_O_B, &w->o_b));
	TRY(load_vector(ld, l, DP_V4_W_SINKS, &w->sinks));
	if (dp_v4_compress_rate(c, l) > 0) {
		TRY(load_pair(ld, l, DP_V4_W_CMP_KV, DP_V4_W_CMP_GATE, &w->comp_kvg));
		TRY(load_vector(ld, l, DP_V4_W_CMP_APE, &w->comp_bias));
		TRY(load_vector(ld, l, DP_V4_W_CMP_NORM, &w->comp_norm));
	}
	if (dp_v4_is_csa(c, l)) {
		TRY(load_pair(ld, l, DP_V4_W_IDX_KV, DP_V4_W_IDX_GATE, &w->idx_kvg));
		TRY(load_vector(ld, l, DP_V4_W_IDX_APE, &w->idx_bias));
		TRY(load_vector(ld, l, DP_V4_W_IDX_NORM, &w->idx_norm));
		TRY(load_matrix(ld, l, DP_V4_W_IDX_Q_B, &w->idx_q_b));
		TRY(load_matrix(ld, l, DP_V4_W_IDX_WEIGHTS, &w->idx_wp));
	}
	TRY(load_matrix(ld, l, DP_V4_W_ROUTER, &w->gate));
	if (dp_v4_is_hash_moe(c, l))
		TRY(load_tid2eid(ld, l, w));
	else
		TRY(load_vector(ld, l, DP_V4_W_ROUTER_BIAS, &w->gate_bias));
	TRY(load_experts(ld, l, w));
	TRY(load_pair(ld, l, DP_V4_W_SHARED_GATE, DP_V4_W_SHARED_UP, &w->sh_gate_up));
	TRY(load_matrix(ld, l, DP_V4_W_SHARED_DOWN, &w->sh_down));
	if (dp_v4_engram_slot(c, l) >= 0)
		TRY(load_engram_layer(ld, l, w));
#undef TRY
	return 0;
}

static void vec_free(struct dp_gpu *g, float **v, size_t n)
{
	if (*v)
		dp_gpu_dealloc(g, *v, n * sizeof(float), DP_GPU_MEM_WEIGHTS);
	*v = NULL;
}

static void release_weights(struct dp_v4_model *m)
{
	const struct dp_v4_config *c = &m->cfg;
	struct dp_gpu *g = m->g;
	size_t D = c->hidden_size, n = c->hc_mult, mix = (2 + n) * n;

	for (int l = 0; m->layers && l < c->num_hidden_layers; l++) {
		struct dp_v4_layer_w *w = &m->layers[l];
		size_t d = c->head_dim, ic = c->index_head_dim, rate = dp_v4_compress_rate(c, l);
		size_t cw = dp_v4_is_csa(c, l) ? 2 * d : d;
		vec_free(g, &w->attn_hc_fn, mix * n * D);
		vec_free(g, &w->attn_hc_base, mix);
		vec_free(g, &w->attn_hc_scale, 3);
		vec_free(g, &w->ffn_hc_fn, mix * n * D);
		vec_free(g, &w->ffn_hc_base, mix);
		vec_free(g, &w->ffn_hc_scale, 3);
		vec_free(g, &w->in_norm, D);
		vec_free(g, &w->post_norm, D);
		vec_free(g, &w->q_a_norm, c->q_lora_rank);
		vec_free(g, &w->kv_norm, d);
		vec_free(g, &w->sinks, c->num_attention_heads);
		vec_free(g, &w->comp_bias, rate * cw);
		vec_free(g, &w->comp_norm, d);
		vec_free(g, &w->idx_bias, rate * 2 * ic);
		vec_free(g, &w->idx_norm, ic);
		vec_free(g, &w->gate_bias, c->n_routed_experts);
		vec_free(g, &w->engram_gain, n * D);
		dp_gpu_weight_free(g, &w->engram_wkv);
		if (w->tid2eid)
			dp_gpu_dealloc(g, w->tid2eid,
				       (size_t)c->vocab_size * c->num_experts_per_tok * sizeof(int32_t),
				       DP_GPU_MEM_WEIGHTS);
		struct dp_gpu_weight *mats[] = { &w->q_a, &w->q_b, &w->kv, &w->o_a, &w->o_b,
						 &w->comp_kvg, &w->idx_kvg, &w->idx_q_b, &w->idx_wp,
						 &w->gate, &w->gate_up, &w->down, &w->sh_gate_up,
						 &w->sh_down };
		for (size_t i = 0; i < DP_ARRAY_SIZE(mats); i++)
			dp_gpu_weight_free(g, mats[i]);
	}
	free(m->layers);
	m->layers = NULL;
	free(m->engram_map);
	m->engram_map = NULL;
	if (!m->tied)
		dp_gpu_weight_free(g, &m->lm_head);
	dp_gpu_weight_free(g, &m->embed);
	vec_free(g, &m->norm, D);
	vec_free(g, &m->hc_fn, n * n * D);
	vec_free(g, &m->hc_base, n);
	vec_free(g, &m->hc_scale, 1);
	for (int r = 0; r < DP_V4_ROPE_WHICH_MAX; r++)
		vec_free(g, &m->inv_freq[r], (size_t)(c->rope_dim / 2 ? c->rope_dim / 2 : 1));
}

void dp_v4_model_free(struct dp_v4_model *m)
{
	if (!m)
		return;
	dp_v4_experts_fini(m);
	release_weights(m);
	if (m->scratch)
		dp_gpu_dealloc(m->g, m->scratch, m->scratch_bytes, DP_GPU_MEM_SCRATCH);
	free(m->host_ids);
	free(m->host_pos);
	dp_v4_csa_model_fini(m);
	dp_v4_config_fini(&m->cfg);
	dp_st_free(m->st); /* after the weights that used its bytes in place */
	free(m);
}

void dp_v4_model_weight_stats(const struct dp_v4_model *m, struct dp_v4_weight_stats *ret)
{
	struct dp_gpu_mem_stats ms;

	if (!m || !ret)
		return;
	dp_gpu_mem_stats(m->g, &ms);
	*ret = m->wst;
	ret->owned_bytes = ms.bytes[DP_GPU_MEM_WEIGHTS];
}

/* A backend without kernels for FP8/FP4 weights (cuda) refuses a checkpoint holding them before
 * anything is uploaded, naming the first such tensor: dequantizing a 1.6 TB checkpoint to bf16
 * would silently double what the device must hold. (dequantize: the caller asked for that.) */
static int refuse_quantized(struct loader *ld)
{
	const struct dp_v4_config *c = &ld->m->cfg;
	struct dp_st_tensor t, sc;

	for (int l = 0; l < c->num_hidden_layers; l++) {
		for (int k = 0; k < DP_V4_W_LAYER_MAX; k++)
			if (dp_v4_weights_layer(ld->w, l, (enum dp_v4_layer_tensor)k, &t) == 0 &&
			    dp_v4_weights_scale(ld->w, &t, &sc) == 0)
				goto refuse;
		for (int e = 0; e < c->n_routed_experts; e++)
			for (int p = 0; p < DP_V4_EXPERT_PART_MAX; p++)
				if (dp_v4_weights_expert(ld->w, l, e, (enum dp_v4_expert_part)p, &t) == 0 &&
				    dp_v4_weights_scale(ld->w, &t, &sc) == 0)
					goto refuse;
	}
	return 0;
refuse:
	return fail(ld, -ENOTSUP, "%s: tensor %s is %s (%s): the %s backend has no kernels for "
		    "block-scaled FP8/FP4 weights and does not dequantize them at load; serve this "
		    "checkpoint with the cpu backend", t.file, t.name, dp_st_dtype_name(t.dtype),
		    dp_quant_format_name((enum dp_quant_format)dp_quant_format_of(t.dtype)),
		    dp_gpu_kind_name(dp_gpu_kind_of(ld->m->g)));
}

/* The compression map (host memory, for the provider's hashing) and what the
 * hashing needs besides: compressed vocab size, pad id, row width. */
static int load_engram_map(struct loader *ld)
{
	struct dp_v4_model *m = ld->m;
	const struct dp_v4_config *c = &m->cfg;
	struct dp_v4_engram_info *in = &m->engram_info;
	struct dp_st_tensor t;
	int ret = tensor(ld, -1, DP_V4_W_ENGRAM_MAP, &t);

	if (ret < 0)
		return ret;
	m->engram_map = malloc(t.numel * sizeof(int64_t));
	if (!m->engram_map)
		return fail(ld, -ENOMEM, "out of memory loading %s", t.name);
	if ((ret = dp_st_read_i64(&t, 0, t.numel, m->engram_map)) < 0)
		return fail(ld, ret, "%s: reading %s failed: %s", t.file, t.name, strerror(-ret));
	int64_t top = 0;
	for (uint64_t i = 0; i < t.numel; i++)
		if (m->engram_map[i] + 1 > top)
			top = m->engram_map[i] + 1;
	in->compression_map = m->engram_map;
	in->map_size = (int64_t)t.numel;
	in->compressed_vocab_size = c->engram.compressed_vocab_size > 0
					    ? c->engram.compressed_vocab_size : top;
	in->pad_id = c->engram.pad_id >= 0 ? c->engram.pad_id : c->pad_token_id;
	in->row_floats = (uint32_t)((c->engram.max_ngram_size - 1) * c->engram.n_heads *
				    c->engram.head_dim);
	m->engram_hist = (uint32_t)(c->engram.max_ngram_size - 1);
	if (in->pad_id < 0)
		return fail(ld, -EINVAL, "config.json: engram_pad_id is missing and pad_token_id is "
			    "null: the n-gram hashing needs a pad id");
	return 0;
}

/* config.json's optional engram_seed (the hashing seed; the public demo's default is 0). */
static int read_engram_seed(const char *path, uint64_t *ret, char *err, size_t err_len)
{
	json_error_t jerr;
	json_t *root = json_load_file(path, 0, &jerr);
	int r = 0;

	*ret = 0;
	if (!root)
		return 0; /* dp_v4_config_load read it: cannot happen but for a race */
	json_t *v = json_object_get(root, "engram_seed");
	if (v && !json_is_null(v)) {
		if (!json_is_integer(v) || json_integer_value(v) < 0) {
			if (err && err_len)
				snprintf(err, err_len, "%s: engram_seed: expected an integer >= 0", path);
			r = -EINVAL;
		} else {
			*ret = (uint64_t)json_integer_value(v);
		}
	}
	json_decref(root);
	return r;
}

static const char *const numerics_names[DP_V4_NUMERICS_MAX] = {
	[DP_V4_NUMERICS_AUTO] = "auto",
	[DP_V4_NUMERICS_TRANSFORMERS] = "transformers",
	[DP_V4_NUMERICS_REFERENCE] = "reference",
};

const char *dp_v4_numerics_name(enum dp_v4_numerics n)
{
	return (unsigned)n < DP_V4_NUMERICS_MAX ? numerics_names[n] : NULL;
}

int dp_v4_numerics_parse(const char *s, enum dp_v4_numerics *ret)
{
	if (!s || !ret)
		return -EINVAL;
	for (int i = 0; i < DP_V4_NUMERICS_MAX; i++)
		if (strcmp(s, numerics_names[i]) == 0) {
			*ret = (enum dp_v4_numerics)i;
			return 0;
		}
	return -EINVAL;
}

enum dp_v4_numerics dp_v4_model_numerics(const struct dp_v4_model *m)
{
	return m ? m->load_opts.numerics : DP_V4_NUMERICS_MAX;
}

/* The reference numerics: every FP8/FP4 product but wo_a's act-quantizes its
 * input (DeepSeek's Linear dispatches on the weight's dtype the same way; its
 * convert.py turns wo_a into bf16, which computes as our exactly-dequantized
 * e4m3 wo_a does). Set after load_all: the paged experts' slot stacks are
 * copied from these structs at every forward. */
static void mark_act_quant(struct dp_v4_model *m)
{
	for (int l = 0; l < m->cfg.num_hidden_layers; l++) {
		struct dp_v4_layer_w *w = &m->layers[l];
		struct dp_gpu_weight *ws[] = { &w->q_a, &w->q_b, &w->kv, &w->o_b, &w->comp_kvg,
					       &w->idx_kvg, &w->idx_q_b, &w->idx_wp, &w->gate,
					       &w->gate_up, &w->down, &w->sh_gate_up, &w->sh_down };
		for (size_t i = 0; i < sizeof(ws) / sizeof(ws[0]); i++)
			ws[i]->act_quant = ws[i]->data &&
					   (ws[i]->dtype == DP_DTYPE_E4M3 || ws[i]->dtype == DP_DTYPE_E2M1);
	}
}

/* Resolve AUTO and refuse a reference numerics the load cannot give. */
static int resolve_numerics(struct dp_v4_model *m, const char *path, char *err, size_t err_len)
{
	enum dp_v4_numerics *n = &m->load_opts.numerics;

	if ((unsigned)*n >= DP_V4_NUMERICS_MAX)
		return -EINVAL;
	if (*n == DP_V4_NUMERICS_AUTO)
		*n = m->cfg.has_quantization_config && !m->load_opts.dequantize
			     ? DP_V4_NUMERICS_REFERENCE : DP_V4_NUMERICS_TRANSFORMERS;
	if (*n != DP_V4_NUMERICS_REFERENCE)
		return 0;
	if (m->load_opts.dequantize) {
		if (err && err_len)
			snprintf(err, err_len, "%s: numerics reference computes on the FP8/FP4 weights "
				 "as stored and cannot be combined with dequantizing them at load; use "
				 "numerics transformers", path);
		return -EINVAL;
	}
	if (!m->ops->round) {
		if (err && err_len)
			snprintf(err, err_len, "%s: the %s backend has no kernels for DeepSeek's reference "
				 "numerics (activation, KV and indexer rounding); use numerics "
				 "transformers or the cpu backend", path, dp_gpu_kind_name(dp_gpu_kind_of(m->g)));
		return -ENOTSUP;
	}
	return 0;
}

static int load_all(struct loader *ld)
{
	struct dp_v4_model *m = ld->m;
	const struct dp_v4_config *c = &m->cfg;
	int ret;

	if ((ret = load_matrix(ld, -1, DP_V4_W_EMBED, &m->embed)) < 0)
		return ret;
	if (c->tie_word_embeddings) {
		m->lm_head = m->embed;
		m->tied = true;
	} else if ((ret = load_matrix(ld, -1, DP_V4_W_LM_HEAD, &m->lm_head)) < 0) {
		return ret;
	}
	if ((ret = load_vector(ld, -1, DP_V4_W_NORM, &m->norm)) < 0 ||
	    (ret = load_vector(ld, -1, DP_V4_W_HC_HEAD_FN, &m->hc_fn)) < 0 ||
	    (ret = load_vector(ld, -1, DP_V4_W_HC_HEAD_BASE, &m->hc_base)) < 0 ||
	    (ret = load_vector(ld, -1, DP_V4_W_HC_HEAD_SCALE, &m->hc_scale)) < 0)
		return ret;
	for (int l = 0; l < c->num_hidden_layers; l++)
		if ((ret = load_layer(ld, l)) < 0)
			return ret;
	if (c->engram.n_layers > 0 && (ret = load_engram_map(ld)) < 0)
		return ret;
	if (m->load_opts.experts != DP_V4_EXPERTS_DEVICE &&
	    (ret = dp_v4_experts_init(m, ld->w, ld->err, ld->err_len)) < 0)
		return ret;
	for (int r = 0; r < DP_V4_ROPE_WHICH_MAX; r++) {
		int half = c->rope_dim / 2 ? c->rope_dim / 2 : 1;
		float *host = calloc((size_t)half, sizeof(float));
		if (!host)
			return fail(ld, -ENOMEM, "out of memory");
		ret = c->rope_dim ? dp_v4_rope_inv_freq(c, (enum dp_v4_rope_which)r, host, half) : 0;
		if (ret >= 0)
			ret = dp_gpu_vector_upload(m->g, host, DP_DTYPE_F32, (size_t)half, &m->inv_freq[r]);
		free(host);
		if (ret < 0)
			return fail(ld, ret, "computing the %s rope failed", dp_v4_rope_which_name(r));
		m->rope_factor[r] = (float)c->rope[r].attention_factor;
	}
	return 0;
}

int dp_v4_model_load(struct dp_gpu *g, const char *dir, struct dp_v4_model **ret_model, char *err,
		     size_t err_len)
{
	return dp_v4_model_load_opts(g, dir, NULL, ret_model, err, err_len);
}

int dp_v4_model_load_opts(struct dp_gpu *g, const char *dir, const struct dp_v4_load_opts *opts,
			  struct dp_v4_model **ret_model, char *err, size_t err_len)
{
	char path[PATH_MAX];
	int ret;

	if (err && err_len)
		err[0] = '\0';
	if (!g || !dir || !ret_model ||
	    (opts && (unsigned)opts->experts >= DP_V4_EXPERTS_WHERE_MAX))
		return -EINVAL;
	struct dp_v4_model *m = calloc(1, sizeof(*m));
	if (!m)
		return -ENOMEM;
	m->g = g;
	m->ops = dp_gpu_ops(g);
	if (opts)
		m->load_opts = *opts;
	snprintf(path, sizeof(path), "%s/config.json", dir);
	ret = dp_v4_config_load(path, &m->cfg, err, err_len);
	if (ret < 0) {
		free(m);
		return ret;
	}
	if (m->load_opts.experts != DP_V4_EXPERTS_DEVICE) {
		uint32_t E = (uint32_t)m->cfg.n_routed_experts, k = (uint32_t)m->cfg.num_experts_per_tok;
		uint32_t *S = &m->load_opts.expert_slots;
		if (!*S)
			*S = E / 4 > k ? E / 4 : k;
		if (*S < k || *S > E) {
			if (err && err_len)
				snprintf(err, err_len, "expert_slots %u: a layer needs at least "
					 "num_experts_per_tok (%u) slots and has %u experts", *S, k, E);
			dp_v4_config_fini(&m->cfg);
			free(m);
			return -EINVAL;
		}
	}
	if (m->cfg.hc_mult > 16 || (m->cfg.rope_dim > m->cfg.index_head_dim &&
				    m->cfg.n_layers_of[DP_V4_LAYER_CSA] > 0)) {
		if (err && err_len)
			snprintf(err, err_len, "%s: hc_mult %d > 16 or rope dim %d > index_head_dim %d is not supported",
				 path, m->cfg.hc_mult, m->cfg.rope_dim, m->cfg.index_head_dim);
		dp_v4_config_fini(&m->cfg);
		free(m);
		return -ENOTSUP;
	}
	if (dp_v4_state_supported(&m->cfg) < 0) {
		if (err && err_len)
			snprintf(err, err_len, "%s: a state entry of this config (head_dim %d, compress "
				 "rates %d/%d) exceeds the %u-byte state page", path, m->cfg.head_dim,
				 m->cfg.compress_rate_csa, m->cfg.compress_rate_hca, DP_V4_PAGE_BYTES);
		dp_v4_config_fini(&m->cfg);
		free(m);
		return -ENOTSUP;
	}
	if ((ret = resolve_numerics(m, path, err, err_len)) < 0) {
		dp_v4_config_fini(&m->cfg);
		free(m);
		return ret;
	}
	if (m->cfg.engram.n_layers > 0 &&
	    (ret = read_engram_seed(path, &m->engram_info.seed, err, err_len)) < 0) {
		dp_v4_config_fini(&m->cfg);
		free(m);
		return ret;
	}
	dp_v4_model_set_page_ops(m, NULL);
	dp_v4_model_set_csa_host(m, false, NULL);
	m->layers = calloc((size_t)m->cfg.num_hidden_layers, sizeof(*m->layers));
	struct loader ld = { .m = m, .err = err, .err_len = err_len,
			     .keep = dp_gpu_kind_of(g) == DP_GPU_CPU && !m->load_opts.dequantize };
	if (!m->layers) {
		dp_v4_model_free(m);
		return -ENOMEM;
	}
	struct dp_st *st = NULL;
	ret = dp_st_open_dir(dir, &st, err, err_len);
	if (ret == 0)
		ret = dp_v4_weights_new(&m->cfg, st, 0, &ld.w, err, err_len);
	if (ret == 0 && dp_gpu_kind_of(g) != DP_GPU_CPU && !m->load_opts.dequantize)
		ret = refuse_quantized(&ld);
	if (ret == 0)
		ret = load_all(&ld);
	if (ret == 0 && m->load_opts.numerics == DP_V4_NUMERICS_REFERENCE)
		mark_act_quant(m);
	/* a last sweep over what the forward never reads in place (MTP, routed experts): the
	 * copies above released their pages as they went, but later reads of neighbouring
	 * weights fault pages back in around them; an madvise error only costs RSS */
	if (ret == 0 && m->wst.mapped_bytes) /* else the shards are unmapped below */
		(void)dp_v4_weights_release_unread(ld.w);
	dp_v4_weights_free(ld.w);
	if (m->wst.mapped_bytes) /* weights use its bytes in place: freed with the model */
		m->st = st;
	else
		dp_st_free(st);
	if (ret < 0) {
		dp_v4_model_free(m);
		return ret;
	}
	*ret_model = m;
	return 0;
}
