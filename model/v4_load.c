/* SPDX-License-Identifier: MIT */
/*
 * Loading a V4 checkpoint onto a backend. model/weights.c resolves every
 * tensor (any of the three name spellings) and checks names, shapes, dtypes
 * and tid2eid's range against the config; this file uploads what it found,
 * in the layout the ops want (kv|gate projections stacked, o_a split into its
 * groups, experts stacked, vectors as fp32, tid2eid as int32).
 */
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
	return 0;
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

	if ((ret = tensor(ld, layer, kind1, &a)) < 0 || (ret = tensor(ld, layer, kind2, &b)) < 0 ||
	    (ret = alloc_w(ld, 1, 2 * (uint32_t)a.shape[0], (uint32_t)a.shape[1], w)) < 0 ||
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
		TRY(tensor(ld, l, DP_V4_W_O_A, &t));
		TRY(alloc_w(ld, G, R, H * d / G, &w->o_a));
		for (uint32_t gi = 0; gi < G; gi++)
			TRY(fill_rows(ld, &w->o_a, gi, 0, &t, (uint64_t)gi * R, R));
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
	free(m);
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
	if (m->cfg.engram.n_layers > 0 &&
	    (ret = read_engram_seed(path, &m->engram_info.seed, err, err_len)) < 0) {
		dp_v4_config_fini(&m->cfg);
		free(m);
		return ret;
	}
	dp_v4_model_set_page_ops(m, NULL);
	dp_v4_model_set_csa_host(m, false, NULL);
	m->layers = calloc((size_t)m->cfg.num_hidden_layers, sizeof(*m->layers));
	struct loader ld = { .m = m, .err = err, .err_len = err_len };
	if (!m->layers) {
		dp_v4_model_free(m);
		return -ENOMEM;
	}
	struct dp_st *st = NULL;
	ret = dp_st_open_dir(dir, &st, err, err_len);
	if (ret == 0)
		ret = dp_v4_weights_new(&m->cfg, st, 0, &ld.w, err, err_len);
	if (ret == 0)
		ret = load_all(&ld);
	dp_v4_weights_free(ld.w);
	dp_st_free(st);
	if (ret < 0) {
		dp_v4_model_free(m);
		return ret;
	}
	*ret_model = m;
	return 0;
}
