/* SPDX-License-Identifier: MIT */
/*
 * The DeepSeek-V4 forward pass (docs/v4-forward.md) over the op interface.
 *
 * A batch's tokens are flattened into T rows; every dense step (projections,
 * norms, mHC, MoE) runs once over all T rows, and the steps that read a
 * sequence's state (compressors, indexer, attention, window update) run per
 * sequence on that sequence's slice of rows. The host plans: it knows every
 * count and position, so no op needs to report a size back.
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "model/v4-internal.h"

/* Per-forward scratch layout, in floats (each region 16-float aligned). */
struct scratch {
	float *X, *x, *h, *post, *comb;	  /* residual streams and mHC */
	float *qr, *q, *kv, *att, *oa, *o; /* attention */
	float *cproj, *iproj, *qi, *wI;	   /* compressor / indexer inputs */
	float *slots, *entries;		   /* one sequence's compressor work */
	int32_t *sel;			   /* indexer choices [T][kI] */
	float *rlog, *rw, *mo, *shgu, *shh; /* MoE */
	int32_t *ridx;
	int32_t *ids;
	int64_t *pos;
	float *hrows, *hy, *logits; /* head */
};

static size_t align16(size_t n)
{
	return (n + 15) & ~(size_t)15;
}

/* Lay out (or, with base NULL, size) the scratch for T rows, R head rows and
 * at most S_max tokens in one sequence. Returns floats needed. */
static size_t scratch_layout(const struct dp_v4_config *c, uint32_t T, uint32_t R, uint32_t S_max,
			     float *base, struct scratch *s)
{
	size_t D = c->hidden_size, n = c->hc_mult, H = c->num_attention_heads, d = c->head_dim;
	size_t Q = c->q_lora_rank, E = c->n_routed_experts, k = c->num_experts_per_tok;
	size_t I = c->moe_intermediate_size, ic = c->index_head_dim, nI = c->index_n_heads;
	size_t kI = c->index_topk, g = c->o_groups, Rk = c->o_lora_rank, V = c->vocab_size;
	size_t rc = c->n_layers_of[DP_V4_LAYER_CSA] ? (size_t)c->compress_rate_csa : 0;
	size_t rh = c->n_layers_of[DP_V4_LAYER_HCA] ? (size_t)c->compress_rate_hca : 0;
	size_t m_max = rc > rh ? rc : rh;
	size_t m_min = rc && rh ? (rc < rh ? rc : rh) : m_max;
	size_t slot_w = 4 * (d > ic ? d : ic); /* widest kv|gate row */
	size_t win_rows = m_max + S_max;       /* pending + new */
	size_t off = 0;

#define REGION(field, type, count)                                       \
	do {                                                             \
		if (base)                                                \
			s->field = (type *)(base + off);                 \
		off += align16(((size_t)(count) * sizeof(type) + 3) / 4); \
	} while (0)

	REGION(X, float, (size_t)T * n * D);
	REGION(x, float, (size_t)T * D);
	REGION(h, float, (size_t)T * D);
	REGION(post, float, (size_t)T * n);
	REGION(comb, float, (size_t)T * n * n);
	REGION(qr, float, (size_t)T * Q);
	REGION(q, float, (size_t)T * H * d);
	REGION(kv, float, (size_t)T * d);
	REGION(att, float, (size_t)T * H * d);
	REGION(oa, float, (size_t)T * g * Rk);
	REGION(o, float, (size_t)T * D);
	REGION(cproj, float, (size_t)T * 4 * d);
	REGION(iproj, float, (size_t)T * 4 * ic);
	REGION(qi, float, (size_t)T * nI * ic);
	REGION(wI, float, (size_t)T * nI);
	REGION(slots, float, win_rows * slot_w);
	REGION(entries, float, (win_rows / (m_min ? m_min : 1) + 1) * (d > ic ? d : ic));
	REGION(sel, int32_t, (size_t)T * (kI ? kI : 1));
	REGION(rlog, float, (size_t)T * E);
	REGION(rw, float, (size_t)T * k);
	REGION(ridx, int32_t, (size_t)T * k);
	REGION(mo, float, (size_t)T * D);
	REGION(shgu, float, (size_t)T * 2 * I);
	REGION(shh, float, (size_t)T * I);
	REGION(ids, int32_t, T);
	REGION(pos, int64_t, T);
	REGION(hrows, float, (size_t)R * n * D);
	REGION(hy, float, (size_t)R * D);
	REGION(logits, float, (size_t)R * V);
#undef REGION
	return off;
}

static int scratch_get(struct dp_v4_model *m, uint32_t T, uint32_t R, uint32_t S_max,
		       struct scratch *s)
{
	size_t floats = scratch_layout(&m->cfg, T, R, S_max, NULL, s);
	size_t bytes = floats * sizeof(float);

	if (bytes > m->scratch_bytes) {
		void *p = dp_gpu_alloc(m->g, bytes, DP_GPU_MEM_SCRATCH);
		if (!p)
			return -ENOMEM;
		dp_gpu_dealloc(m->g, m->scratch, m->scratch_bytes, DP_GPU_MEM_SCRATCH);
		m->scratch = p;
		m->scratch_bytes = bytes;
	}
	scratch_layout(&m->cfg, T, R, S_max, m->scratch, s);
	return 0;
}

/* Host room for T rows' ids and positions (m->host_ids, m->host_pos). */
static int host_rows_get(struct dp_v4_model *m, uint32_t T)
{
	if (T <= m->host_rows)
		return 0;
	int32_t *ids = realloc(m->host_ids, (size_t)T * sizeof(*ids));
	if (!ids)
		return -ENOMEM;
	m->host_ids = ids;
	int64_t *pos = realloc(m->host_pos, (size_t)T * sizeof(*pos));
	if (!pos)
		return -ENOMEM;
	m->host_pos = pos;
	m->host_rows = T;
	return 0;
}

uint32_t dp_v4_batch_rows(const struct dp_v4_batch_item *items, uint32_t n_items)
{
	uint32_t rows = 0;
	for (uint32_t i = 0; i < n_items; i++)
		rows += items[i].all_logits ? items[i].n_tokens : 1;
	return rows;
}

#define CHECK(expr)                      \
	do {                             \
		int ret_ = (expr);       \
		if (ret_ < 0)            \
			return ret_;     \
	} while (0)

/*
 * Feed rows proj[0..S) ([S][2*width]: kv | gate) into a compressor whose
 * unfinished window holds pos0 % m rows in the `pending` stream; close every
 * window that completes and append its entry to `out`.
 */
static int compress_feed(struct dp_v4_model *m, struct scratch *s, struct dp_v4_seq *seq,
			 const float *proj, uint32_t S, uint64_t pos0, uint32_t m_rate,
			 uint32_t width, uint32_t dim, struct dp_v4_stream *pending,
			 struct dp_v4_stream *prev, const float *bias, const float *norm,
			 struct dp_v4_stream *out, enum dp_v4_rope_which rope, int round_how)
{
	struct dp_gpu *g = m->g;
	uint32_t row = 2 * width;
	uint32_t nbuf = (uint32_t)(pos0 % m_rate);
	uint32_t total = nbuf + S, n_win = total / m_rate, rem = total % m_rate;

	if (n_win == 0)
		return dp_v4_stream_write(g, pending, nbuf, proj, S);
	/* slots = pending rows ++ the new rows that complete windows */
	uint32_t take = n_win * m_rate - nbuf;
	CHECK(dp_v4_stream_read(g, pending, 0, s->slots, nbuf));
	CHECK(dp_gpu_copy(g, s->slots + (size_t)nbuf * row, proj, (size_t)take * row * sizeof(float)));
	struct dp_gpu_compress cc = {
		.slots = s->slots,
		.n_win = n_win,
		.rate = m_rate,
		.width = width,
		.dim = dim,
		.overlap = prev != NULL,
		.prev = prev ? prev->host_pages[0] : NULL,
		.has_prev = prev && pos0 / m_rate > 0,
		.bias = bias,
		.norm = norm,
		.eps = (float)m->cfg.rms_norm_eps,
		.inv_freq = m->inv_freq[rope],
		.rope_dim = (uint32_t)m->cfg.rope_dim,
		.rope_factor = m->rope_factor[rope],
		.first_pos = (pos0 / m_rate) * m_rate,
		.out_entries = s->entries,
	};
	CHECK(m->ops->compress(g, &cc));
	/* reference numerics: entries rounded as DeepSeek's compressor leaves them
	 * (KV: the non-RoPE dims through e4m3; index keys: Hadamard, e2m1) */
	if (round_how == DP_GPU_ROUND_E4M3_KV)
		CHECK(m->ops->round(g, s->entries, n_win, dim, dim - (uint32_t)m->cfg.rope_dim,
				    DP_GPU_ROUND_E4M3_KV));
	else if (round_how == DP_GPU_ROUND_HADAMARD_E2M1)
		CHECK(m->ops->round(g, s->entries, n_win, dim, dim, DP_GPU_ROUND_HADAMARD_E2M1));
	CHECK(dp_v4_stream_append(seq, out, s->entries, n_win));
	return dp_v4_stream_write(g, pending, 0, proj + (size_t)take * row, rem);
}

/* Attention sublayer for all rows: s->h in, s->o out. */
static int attention(struct dp_v4_model *m, int l, struct scratch *s,
		     const struct dp_v4_batch_item *items, uint32_t n_items, uint32_t T)
{
	const struct dp_v4_config *c = &m->cfg;
	const struct dp_gpu_ops *ops = m->ops;
	struct dp_gpu *g = m->g;
	const struct dp_v4_layer_w *w = &m->layers[l];
	uint32_t H = c->num_attention_heads, d = c->head_dim, r = c->rope_dim;
	uint32_t ic = c->index_head_dim, nI = c->index_n_heads, W = c->sliding_window;
	uint32_t G = c->o_groups, Rk = c->o_lora_rank, K = H * d / G;
	float eps = (float)c->rms_norm_eps;
	enum dp_v4_rope_which rope = dp_v4_layer_rope(c, l);
	const float *inv_freq = m->inv_freq[rope];
	float factor = m->rope_factor[rope];
	bool csa = dp_v4_is_csa(c, l), hca = dp_v4_is_hca(c, l);
	uint32_t rate = (uint32_t)dp_v4_compress_rate(c, l);

	CHECK(ops->matmul(g, s->h, 0, &w->q_a, 0, s->qr, 0, T, false));
	CHECK(ops->rmsnorm(g, s->qr, w->q_a_norm, s->qr, T, c->q_lora_rank, eps));
	CHECK(ops->matmul(g, s->qr, 0, &w->q_b, 0, s->q, 0, T, false));
	CHECK(ops->rmsnorm(g, s->q, NULL, s->q, T * H, d, eps));
	CHECK(ops->rope(g, s->q, T, H, d, r, s->pos, inv_freq, factor, false));
	CHECK(ops->matmul(g, s->h, 0, &w->kv, 0, s->kv, 0, T, false));
	CHECK(ops->rmsnorm(g, s->kv, w->kv_norm, s->kv, T, d, eps));
	CHECK(ops->rope(g, s->kv, T, 1, d, r, s->pos, inv_freq, factor, false));
	bool ref = m->load_opts.numerics == DP_V4_NUMERICS_REFERENCE;
	if (ref) /* the window KV's non-RoPE dims through e4m3, as the reference keeps them */
		CHECK(ops->round(g, s->kv, T, d, d - r, DP_GPU_ROUND_E4M3_KV));
	if (csa || hca)
		CHECK(ops->matmul(g, s->h, 0, &w->comp_kvg, 0, s->cproj, 0, T, false));
	if (csa) {
		CHECK(ops->matmul(g, s->h, 0, &w->idx_kvg, 0, s->iproj, 0, T, false));
		CHECK(ops->matmul(g, s->qr, 0, &w->idx_q_b, 0, s->qi, 0, T, false));
		CHECK(ops->rope(g, s->qi, T, nI, ic, r, s->pos, inv_freq, factor, false));
		if (ref) /* the indexer's q: Hadamard-rotated and rounded through e2m1 */
			CHECK(ops->round(g, s->qi, T * nI, ic, ic, DP_GPU_ROUND_HADAMARD_E2M1));
		CHECK(ops->matmul(g, s->h, 0, &w->idx_wp, 0, s->wI, 0, T, false));
	}

	uint32_t o = 0;
	for (uint32_t it = 0; it < n_items; it++) {
		struct dp_v4_seq *seq = items[it].seq;
		struct dp_v4_layer_state *ls = &seq->layers[l];
		uint32_t S = items[it].n_tokens;
		uint64_t pos0 = seq->pos;
		/* layer l of this sequence's state may still be arriving */
		if (seq->gate && seq->gate(seq->gate_ctx, seq, l) < 0)
			seq->poisoned = true;
		uint32_t cw = csa ? 2 * d : d;
		struct dp_v4_stream *st = ls->s;
		if (csa || hca)
			CHECK(compress_feed(m, s, seq, s->cproj + (size_t)o * 2 * cw, S, pos0, rate, cw,
					    d, &st[DP_V4_S_COMP_PENDING],
					    csa ? &st[DP_V4_S_COMP_PREV] : NULL, w->comp_bias,
					    w->comp_norm, &st[DP_V4_S_COMP], rope,
					    ref ? DP_GPU_ROUND_E4M3_KV : -1));
		struct dp_gpu_stream comp = dp_v4_stream_view(&st[DP_V4_S_COMP]);
		struct dp_gpu_stream ring = dp_v4_stream_view(&st[DP_V4_S_WINDOW]);
		if (csa) {
			CHECK(compress_feed(m, s, seq, s->iproj + (size_t)o * 4 * ic, S, pos0, rate,
					    2 * ic, ic, &st[DP_V4_S_IDX_PENDING], &st[DP_V4_S_IDX_PREV],
					    w->idx_bias, w->idx_norm, &st[DP_V4_S_IDX], rope,
					    ref ? DP_GPU_ROUND_HADAMARD_E2M1 : -1));
			struct dp_gpu_stream keys = dp_v4_stream_view(&st[DP_V4_S_IDX]);
			struct dp_gpu_index ix = {
				.qi = s->qi + (size_t)o * nI * ic,
				.weights = s->wI + (size_t)o * nI,
				.keys = &keys,
				.S = S,
				.nh = nI,
				.dim = ic,
				.rate = rate,
				.k = (uint32_t)c->index_topk,
				.pos0 = pos0,
				.key_scale = 1.0f / sqrtf((float)ic),
				.weight_scale = 1.0f / sqrtf((float)nI),
				.sel = s->sel,
			};
			CHECK(ops->index_topk(g, &ix));
			/* entries in host memory: stage the picked ones, read those */
			if (st[DP_V4_S_COMP].host)
				CHECK(dp_v4_csa_stage(m, seq, l, s->sel, S, (uint32_t)c->index_topk,
						      &comp));
		}
		struct dp_gpu_attn a = {
			.q = s->q + (size_t)o * H * d,
			.kv_new = s->kv + (size_t)o * d,
			.ring = &ring,
			.window = W,
			.comp = (csa || hca) ? &comp : NULL,
			.rate = rate ? rate : 1,
			.sel = csa ? s->sel : NULL,
			.sel_k = csa ? (uint32_t)c->index_topk : 0,
			.sinks = w->sinks,
			.scale = 1.0f / sqrtf((float)d),
			.S = S,
			.H = H,
			.d = d,
			.pos0 = pos0,
			.out = s->att + (size_t)o * H * d,
		};
		CHECK(ops->attention(g, &a));
		if (csa && st[DP_V4_S_COMP].host)
			CHECK(dp_v4_csa_trim(m, seq, l));
		/* the window keeps the last W positions, position p at entry
		 * p % W: at most two contiguous runs */
		uint32_t keep = S < W ? S : W;
		for (uint32_t j = S - keep; j < S;) {
			uint32_t at = (uint32_t)((pos0 + j) % W), run = W - at;
			if (run > S - j)
				run = S - j;
			CHECK(dp_v4_stream_write(g, &st[DP_V4_S_WINDOW], at, s->kv + (size_t)(o + j) * d,
						 run));
			j += run;
		}
		o += S;
	}

	CHECK(ops->rope(g, s->att, T, H, d, r, s->pos, inv_freq, factor, true));
	for (uint32_t gi = 0; gi < G; gi++)
		CHECK(ops->matmul(g, s->att + (size_t)gi * K, H * d, &w->o_a, gi, s->oa + (size_t)gi * Rk,
				  G * Rk, T, false));
	CHECK(ops->matmul(g, s->oa, 0, &w->o_b, 0, s->o, 0, T, false));
	return 0;
}

/* MoE sublayer: s->h in, s->mo out. */
static int moe(struct dp_v4_model *m, int l, struct scratch *s, uint32_t T)
{
	const struct dp_v4_config *c = &m->cfg;
	const struct dp_gpu_ops *ops = m->ops;
	struct dp_gpu *g = m->g;
	const struct dp_v4_layer_w *w = &m->layers[l];
	uint32_t E = c->n_routed_experts, k = c->num_experts_per_tok, I = c->moe_intermediate_size;
	float lim = (float)c->swiglu_limit;
	static const enum dp_gpu_score_fn fns[DP_V4_SCORING_MAX] = {
		[DP_V4_SCORING_SQRTSOFTPLUS] = DP_GPU_SCORE_SQRTSOFTPLUS,
		[DP_V4_SCORING_SOFTMAX] = DP_GPU_SCORE_SOFTMAX,
		[DP_V4_SCORING_SIGMOID] = DP_GPU_SCORE_SIGMOID,
	};

	CHECK(ops->matmul(g, s->h, 0, &w->gate, 0, s->rlog, 0, T, false));
	CHECK(ops->route(g, s->rlog, w->gate_bias, w->tid2eid, s->ids, T, E, k,
			 fns[c->scoring_func], (float)c->routed_scaling_factor, s->ridx, s->rw));
	CHECK(dp_gpu_zero(g, s->mo, (size_t)T * c->hidden_size * sizeof(float)));
	int32_t *aidx = NULL;
	if (dp_v4_experts_lookahead(m, l + 1)) {
		/* guess the next layer's picks from this layer's MoE input: read
		 * ahead while this layer's experts run */
		const struct dp_v4_layer_w *nw = &m->layers[l + 1];
		float *alog, *aw;
		CHECK(dp_v4_experts_ahead_bufs(m, T, &alog, &aidx, &aw));
		CHECK(ops->matmul(g, s->h, 0, &nw->gate, 0, alog, 0, T, false));
		CHECK(ops->route(g, alog, nw->gate_bias, NULL, NULL, T, E, k, fns[c->scoring_func],
				 (float)c->routed_scaling_factor, aidx, aw));
	}
	if (m->experts)
		CHECK(dp_v4_experts_moe(m, l, s->h, s->ridx, s->rw, T, lim, s->mo, aidx));
	else
		CHECK(ops->moe(g, s->h, s->ridx, s->rw, T, k, &w->gate_up, &w->down, lim, s->mo));
	CHECK(ops->matmul(g, s->h, 0, &w->sh_gate_up, 0, s->shgu, 0, T, false));
	CHECK(ops->swiglu(g, s->shgu, s->shgu + I, s->shh, T, I, 2 * I, lim));
	CHECK(ops->matmul(g, s->shh, 0, &w->sh_down, 0, s->mo, 0, T, true));
	return 0;
}

int dp_v4_forward(struct dp_v4_model *m, const struct dp_v4_batch_item *items, uint32_t n_items,
		  float *logits)
{
	if (!m || !items || !n_items || !logits)
		return -EINVAL;
	const struct dp_v4_config *c = &m->cfg;
	const struct dp_gpu_ops *ops = m->ops;
	struct dp_gpu *g = m->g;
	uint32_t T = 0, S_max = 0;

	for (uint32_t i = 0; i < n_items; i++) {
		if (!items[i].seq || items[i].seq->m != m || !items[i].tokens || !items[i].n_tokens)
			return -EINVAL;
		for (uint32_t j = 0; j < n_items; j++)
			if (j != i && items[j].seq == items[i].seq)
				return -EINVAL; /* one slice per sequence */
		for (uint32_t t = 0; t < items[i].n_tokens; t++)
			if (items[i].tokens[t] < 0 || items[i].tokens[t] >= c->vocab_size)
				return -EINVAL;
		if (items[i].n_tokens > UINT32_MAX - T)
			return -EINVAL;
		T += items[i].n_tokens;
		if (items[i].n_tokens > S_max)
			S_max = items[i].n_tokens;
	}
	if (c->engram.n_layers > 0) {
		if (!m->engram.rows)
			return -ENODATA;
		if (!ops->engram_fuse)
			return -ENOTSUP; /* a backend without the op */
		for (uint32_t i = 0; i < n_items; i++)
			if (items[i].seq->hist_unknown)
				return -ENODATA;
	}
	uint32_t R = dp_v4_batch_rows(items, n_items);
	uint32_t n = c->hc_mult, D = c->hidden_size, V = c->vocab_size;
	float eps = (float)c->rms_norm_eps, heps = (float)c->hc_eps;
	struct scratch s;

	CHECK(scratch_get(m, T, R, S_max, &s));
	CHECK(host_rows_get(m, T));

	/* ids and positions of every row */
	int32_t *hids = m->host_ids;
	int64_t *hpos = m->host_pos;
	for (uint32_t i = 0, o = 0; i < n_items; i++)
		for (uint32_t t = 0; t < items[i].n_tokens; t++, o++) {
			hids[o] = items[i].tokens[t];
			hpos[o] = (int64_t)(items[i].seq->pos + t);
		}
	int ret = dp_gpu_upload(g, s.ids, hids, (size_t)T * sizeof(*hids));
	if (ret == 0)
		ret = dp_gpu_upload(g, s.pos, hpos, (size_t)T * sizeof(*hpos));
	if (ret == 0) /* the hash layers' experts, read ahead */
		ret = dp_v4_experts_step(m, hids, T);
	CHECK(ret);

	CHECK(ops->embed(g, &m->embed, s.ids, T, s.x));
	CHECK(ops->hc_expand(g, s.x, s.X, T, n, D));
	for (int l = 0; l < c->num_hidden_layers; l++) {
		const struct dp_v4_layer_w *w = &m->layers[l];
		if (w->engram_gain) {
			/* Engram: this layer's rows, fused into the streams */
			const float *rows = NULL;
			CHECK(m->engram.rows(m->engram.ctx, l, items, n_items, &rows));
			if (!rows)
				return -EIO;
			struct dp_gpu_engram e = { .X = s.X, .rows = rows, .wkv = &w->engram_wkv,
						   .gain = w->engram_gain, .T = T, .n = n, .D = D,
						   .E = m->engram_info.row_floats, .eps = eps };
			CHECK(ops->engram_fuse(g, &e));
		}
		CHECK(ops->mhc_pre(g, s.X, w->attn_hc_fn, w->attn_hc_base, w->attn_hc_scale, T, n, D,
				   eps, heps, c->hc_sinkhorn_iters, s.x, s.post, s.comb));
		CHECK(ops->rmsnorm(g, s.x, w->in_norm, s.h, T, D, eps));
		CHECK(attention(m, l, &s, items, n_items, T));
		CHECK(ops->mhc_post(g, s.X, s.o, s.post, s.comb, T, n, D));
		CHECK(ops->mhc_pre(g, s.X, w->ffn_hc_fn, w->ffn_hc_base, w->ffn_hc_scale, T, n, D, eps,
				   heps, c->hc_sinkhorn_iters, s.x, s.post, s.comb));
		CHECK(ops->rmsnorm(g, s.x, w->post_norm, s.h, T, D, eps));
		CHECK(moe(m, l, &s, T));
		CHECK(ops->mhc_post(g, s.X, s.mo, s.post, s.comb, T, n, D));
	}

	/* head: only the rows whose logits are wanted */
	uint32_t o = 0, rr = 0;
	for (uint32_t i = 0; i < n_items; i++) {
		uint32_t S = items[i].n_tokens;
		uint32_t first = items[i].all_logits ? 0 : S - 1;
		uint32_t cnt = S - first;
		CHECK(dp_gpu_copy(g, s.hrows + (size_t)rr * n * D, s.X + (size_t)(o + first) * n * D,
				  (size_t)cnt * n * D * sizeof(float)));
		rr += cnt;
		o += S;
	}
	CHECK(ops->hc_head(g, s.hrows, m->hc_fn, m->hc_base, m->hc_scale, R, n, D, eps, heps, s.hy));
	CHECK(ops->rmsnorm(g, s.hy, m->norm, s.hy, R, D, eps));
	CHECK(ops->matmul(g, s.hy, 0, &m->lm_head, 0, s.logits, 0, R, false));
	CHECK(dp_gpu_download(g, logits, s.logits, (size_t)R * V * sizeof(float)));

	for (uint32_t i = 0; i < n_items; i++) {
		items[i].seq->pos += items[i].n_tokens;
		dp_v4_seq_engram_advance(items[i].seq, items[i].tokens, items[i].n_tokens);
	}
	return 0;
}

int dp_v4_logits(struct dp_v4_model *m, const int32_t *tokens, uint32_t n, const uint32_t *chunks,
		 uint32_t n_chunks, float *out)
{
	struct dp_v4_seq *seq;
	uint64_t sum = 0;

	if (!m || !tokens || !n || !out || (chunks && !n_chunks))
		return -EINVAL;
	for (uint32_t i = 0; chunks && i < n_chunks; i++) {
		if (!chunks[i])
			return -EINVAL;
		sum += chunks[i];
	}
	if (chunks && sum != n)
		return -EINVAL;
	int ret = dp_v4_seq_new(m, &seq);
	if (ret < 0)
		return ret;
	size_t V = (size_t)m->cfg.vocab_size;
	for (uint32_t i = 0, done = 0; ret == 0 && done < n; i++) {
		struct dp_v4_batch_item it = { .seq = seq, .tokens = tokens + done,
					       .n_tokens = chunks ? chunks[i] : n, .all_logits = true };
		ret = dp_v4_forward(m, &it, 1, out + done * V);
		done += it.n_tokens;
	}
	dp_v4_seq_free(seq);
	return ret;
}

const struct dp_v4_config *dp_v4_model_config(const struct dp_v4_model *m)
{
	return &m->cfg;
}

struct dp_gpu *dp_v4_model_gpu(const struct dp_v4_model *m)
{
	return m->g;
}

bool dp_v4_model_has_engram(const struct dp_v4_model *m)
{
	return m && m->cfg.engram.n_layers > 0;
}

int dp_v4_model_set_engram(struct dp_v4_model *m, const struct dp_v4_engram_provider *p)
{
	if (!m || (p && !p->rows))
		return -EINVAL;
	m->engram = p ? *p : (struct dp_v4_engram_provider){ 0 };
	return 0;
}

int dp_v4_model_engram_info(const struct dp_v4_model *m, struct dp_v4_engram_info *ret)
{
	if (!m || !ret)
		return -EINVAL;
	if (m->cfg.engram.n_layers == 0)
		return -ENOENT;
	*ret = m->engram_info;
	return 0;
}
