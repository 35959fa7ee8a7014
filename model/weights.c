/* SPDX-License-Identifier: MIT */
/*
 * model/weights.c — match a checkpoint's tensors to the config, by the table in weights.h.
 */
#include "model/weights.h"

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/err.h"
#include "base/macros.h"
#include "model/quant.h"

/* Which layers carry a per-layer kind. */
enum need {
	NEED_ALL,
	NEED_COMPRESSED, /* CSA and HCA */
	NEED_CSA,
	NEED_MOE,
	NEED_HASH,
	NEED_ENGRAM,
};

static const struct {
	const char *module; /* after "model.layers.L." */
	const char *file;   /* after "model.layers.L." (saved) or "layers.L." (upstream) */
	const char *sym;    /* the shape in symbols, for messages */
	enum need need;
} ldesc[DP_V4_W_LAYER_MAX] = {
    [DP_V4_W_ATTN_HC_FN] = {"attn_hc.fn", "hc_attn_fn", "[(2+n)n, nD]", NEED_ALL},
    [DP_V4_W_ATTN_HC_BASE] = {"attn_hc.base", "hc_attn_base", "[(2+n)n]", NEED_ALL},
    [DP_V4_W_ATTN_HC_SCALE] = {"attn_hc.scale", "hc_attn_scale", "[3]", NEED_ALL},
    [DP_V4_W_FFN_HC_FN] = {"ffn_hc.fn", "hc_ffn_fn", "[(2+n)n, nD]", NEED_ALL},
    [DP_V4_W_FFN_HC_BASE] = {"ffn_hc.base", "hc_ffn_base", "[(2+n)n]", NEED_ALL},
    [DP_V4_W_FFN_HC_SCALE] = {"ffn_hc.scale", "hc_ffn_scale", "[3]", NEED_ALL},
    [DP_V4_W_INPUT_NORM] = {"input_layernorm.weight", "attn_norm.weight", "[D]", NEED_ALL},
    [DP_V4_W_POST_ATTN_NORM] = {"post_attention_layernorm.weight", "ffn_norm.weight", "[D]",
                                NEED_ALL},
    [DP_V4_W_Q_A] = {"self_attn.q_a_proj.weight", "attn.wq_a.weight", "[Q, D]", NEED_ALL},
    [DP_V4_W_Q_A_NORM] = {"self_attn.q_a_norm.weight", "attn.q_norm.weight", "[Q]", NEED_ALL},
    [DP_V4_W_Q_B] = {"self_attn.q_b_proj.weight", "attn.wq_b.weight", "[H*d, Q]", NEED_ALL},
    [DP_V4_W_KV] = {"self_attn.kv_proj.weight", "attn.wkv.weight", "[d, D]", NEED_ALL},
    [DP_V4_W_KV_NORM] = {"self_attn.kv_norm.weight", "attn.norm.weight", "[d]", NEED_ALL},
    [DP_V4_W_O_A] = {"self_attn.o_a_proj.weight", "attn.wo_a.weight", "[g*R, H*d/g]", NEED_ALL},
    [DP_V4_W_O_B] = {"self_attn.o_b_proj.weight", "attn.wo_b.weight", "[D, g*R]", NEED_ALL},
    [DP_V4_W_SINKS] = {"self_attn.sinks", "attn.attn_sink", "[H]", NEED_ALL},
    [DP_V4_W_CMP_KV] = {"self_attn.compressor.kv_proj.weight", "attn.compressor.wkv.weight",
                        "[x*d, D]", NEED_COMPRESSED},
    [DP_V4_W_CMP_GATE] = {"self_attn.compressor.gate_proj.weight", "attn.compressor.wgate.weight",
                          "[x*d, D]", NEED_COMPRESSED},
    [DP_V4_W_CMP_APE] = {"self_attn.compressor.position_bias", "attn.compressor.ape", "[m, x*d]",
                         NEED_COMPRESSED},
    [DP_V4_W_CMP_NORM] = {"self_attn.compressor.kv_norm.weight", "attn.compressor.norm.weight",
                          "[d]", NEED_COMPRESSED},
    [DP_V4_W_IDX_KV] = {"self_attn.compressor.indexer.kv_proj.weight",
                        "attn.indexer.compressor.wkv.weight", "[2c, D]", NEED_CSA},
    [DP_V4_W_IDX_GATE] = {"self_attn.compressor.indexer.gate_proj.weight",
                          "attn.indexer.compressor.wgate.weight", "[2c, D]", NEED_CSA},
    [DP_V4_W_IDX_APE] = {"self_attn.compressor.indexer.position_bias",
                         "attn.indexer.compressor.ape", "[mC, 2c]", NEED_CSA},
    [DP_V4_W_IDX_NORM] = {"self_attn.compressor.indexer.kv_norm.weight",
                          "attn.indexer.compressor.norm.weight", "[c]", NEED_CSA},
    [DP_V4_W_IDX_Q_B] = {"self_attn.compressor.indexer.q_b_proj.weight", "attn.indexer.wq_b.weight",
                         "[nI*c, Q]", NEED_CSA},
    [DP_V4_W_IDX_WEIGHTS] = {"self_attn.compressor.indexer.scorer.weights_proj.weight",
                             "attn.indexer.weights_proj.weight", "[nI, D]", NEED_CSA},
    [DP_V4_W_ROUTER] = {"mlp.gate.weight", "ffn.gate.weight", "[E, D]", NEED_ALL},
    [DP_V4_W_ROUTER_BIAS] = {"mlp.gate.e_score_correction_bias", "ffn.gate.bias", "[E]", NEED_MOE},
    [DP_V4_W_TID2EID] = {"mlp.gate.tid2eid", "ffn.gate.tid2eid", "[V, k]", NEED_HASH},
    [DP_V4_W_SHARED_GATE] = {"mlp.shared_experts.gate_proj.weight", "ffn.shared_experts.w1.weight",
                             "[I, D]", NEED_ALL},
    [DP_V4_W_SHARED_UP] = {"mlp.shared_experts.up_proj.weight", "ffn.shared_experts.w3.weight",
                           "[I, D]", NEED_ALL},
    [DP_V4_W_SHARED_DOWN] = {"mlp.shared_experts.down_proj.weight", "ffn.shared_experts.w2.weight",
                             "[D, I]", NEED_ALL},
    [DP_V4_W_ENGRAM_WKV] = {"engram.wkv.weight", "engram.wkv.weight", "[(n+1)*D, (N-1)*K*e]",
                            NEED_ENGRAM},
    [DP_V4_W_ENGRAM_X_NORM] = {"engram.x_norm.weight", "engram.x_norm.weight", "[n, D]",
                               NEED_ENGRAM},
    [DP_V4_W_ENGRAM_K_NORM] = {"engram.k_norm.weight", "engram.k_norm.weight", "[n, D]",
                               NEED_ENGRAM},
};

static const struct {
	const char *names[2]; /* module/saved, upstream */
	const char *sym;
} gdesc[DP_V4_W_GLOBAL_MAX] = {
    [DP_V4_W_EMBED] = {{"model.embed_tokens.weight", "embed.weight"}, "[V, D]"},
    [DP_V4_W_NORM] = {{"model.norm.weight", "norm.weight"}, "[D]"},
    [DP_V4_W_LM_HEAD] = {{"lm_head.weight", "head.weight"}, "[V, D]"},
    [DP_V4_W_HC_HEAD_FN] = {{"model.hc_head.hc_fn", "hc_head_fn"}, "[n, nD]"},
    [DP_V4_W_HC_HEAD_BASE] = {{"model.hc_head.hc_base", "hc_head_base"}, "[n]"},
    [DP_V4_W_HC_HEAD_SCALE] = {{"model.hc_head.hc_scale", "hc_head_scale"}, "[1]"},
    [DP_V4_W_ENGRAM_MAP] = {{"model.engram.compression_map", "engram.compression_map"}, "[V]"},
};

/* Kinds the published checkpoints may store as FP8 block weights (model/quant.h): the matrices
 * the loader dequantizes row by row. Vectors, mHC tensors and position biases are float. */
static bool may_be_fp8(enum dp_v4_layer_tensor t)
{
	switch (t) {
	case DP_V4_W_Q_A:
	case DP_V4_W_Q_B:
	case DP_V4_W_KV:
	case DP_V4_W_O_A:
	case DP_V4_W_O_B:
	case DP_V4_W_CMP_KV:
	case DP_V4_W_CMP_GATE:
	case DP_V4_W_IDX_KV:
	case DP_V4_W_IDX_GATE:
	case DP_V4_W_IDX_Q_B:
	case DP_V4_W_IDX_WEIGHTS:
	case DP_V4_W_ROUTER:
	case DP_V4_W_SHARED_GATE:
	case DP_V4_W_SHARED_UP:
	case DP_V4_W_SHARED_DOWN:
	case DP_V4_W_ENGRAM_WKV:
		return true;
	default:
		return false;
	}
}

/* What a tensor may be stored as. */
enum store {
	STORE_FLOAT,   /* F32, BF16, F16 */
	STORE_INT,     /* I64, I32 */
	STORE_FP8,     /* float, or FP8 block weight + scale */
	STORE_FP8_FP4, /* float, FP8 or FP4 (routed experts) */
};

/* expert matrices: saved leaf per part, and the fused module tensors */
static const char *const expert_leaf[DP_V4_EXPERT_PART_MAX] = {"w1", "w3", "w2"};
static const char *const expert_part_name[DP_V4_EXPERT_PART_MAX] = {"gate", "up", "down"};

const char *dp_v4_layer_tensor_name(enum dp_v4_layer_tensor t)
{
	return (unsigned)t < DP_V4_W_LAYER_MAX ? ldesc[t].module : NULL;
}

const char *dp_v4_global_tensor_name(enum dp_v4_global_tensor g)
{
	return (unsigned)g < DP_V4_W_GLOBAL_MAX ? gdesc[g].names[0] : NULL;
}

struct layer_experts {
	bool fused;
	long gate_up, down; /* fused: [E, 2I, D], [E, D, I] */
	long *per;          /* not fused: [E][DP_V4_EXPERT_PART_MAX] */
};

struct dp_v4_weights {
	const struct dp_v4_config *c;
	const struct dp_st *st;
	long *scale_of; /* per dp_st tensor: its scale's index, or -1 */
	unsigned char *mtp_of; /* per dp_st tensor: 1 when the MTP block claimed it */
	long global[DP_V4_W_GLOBAL_MAX];
	long *layer; /* [num_hidden_layers][DP_V4_W_LAYER_MAX]; -1: none */
	struct layer_experts *experts;
	struct dp_v4_weights_stats stats;
};

/* ---- building ----------------------------------------------------------- */

struct build {
	struct dp_v4_weights *w;
	unsigned char *claimed; /* per dp_st tensor */
	bool mtp;               /* claims count as the MTP block's */
	char *err;
	size_t err_len;
};

__attribute__((format(printf, 3, 4))) static int fail(struct build *b, int r, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	dp_verrf(b->err, b->err_len, fmt, ap);
	va_end(ap);
	return r;
}

/*
 * One transformer block's tensors: a layer of the model ("model.layers.L." / "layers.L."), or
 * an MTP block ("mtp.K.", the release's spelling only: a sliding-attention, top-k MoE block).
 */
struct blk {
	int layer;                 /* the layer, or -1 - K for MTP block K */
	enum dp_v4_layer_type lt;
	enum dp_v4_mlp_type mt;
	int rate;                  /* compress rate (0: sliding) */
	bool engram;
	char pfx[3][32];           /* module, saved, upstream prefixes ("" none) */
	char label[32];            /* "layer 3", "MTP block 0" */
};

static void blk_layer(const struct dp_v4_config *c, int layer, struct blk *k)
{
	memset(k, 0, sizeof(*k));
	k->layer = layer;
	k->lt = c->layer_types[layer];
	k->mt = c->mlp_layer_types[layer];
	k->rate = dp_v4_compress_rate(c, layer);
	k->engram = dp_v4_engram_slot(c, layer) >= 0;
	snprintf(k->pfx[0], sizeof(k->pfx[0]), "model.layers.%d.", layer);
	snprintf(k->pfx[1], sizeof(k->pfx[1]), "model.layers.%d.", layer);
	snprintf(k->pfx[2], sizeof(k->pfx[2]), "layers.%d.", layer);
	snprintf(k->label, sizeof(k->label), "layer %d", layer);
}

static void blk_mtp(int k_mtp, struct blk *k)
{
	memset(k, 0, sizeof(*k));
	k->layer = -1 - k_mtp;
	k->lt = DP_V4_LAYER_SLIDING;
	k->mt = DP_V4_MLP_MOE;
	snprintf(k->pfx[2], sizeof(k->pfx[2]), "mtp.%d.", k_mtp);
	snprintf(k->label, sizeof(k->label), "MTP block %d", k_mtp);
}

static bool needed(const struct blk *k, enum need need)
{
	switch (need) {
	case NEED_ALL:
		return true;
	case NEED_COMPRESSED:
		return k->lt != DP_V4_LAYER_SLIDING;
	case NEED_CSA:
		return k->lt == DP_V4_LAYER_CSA;
	case NEED_MOE:
		return k->mt == DP_V4_MLP_MOE;
	case NEED_HASH:
		return k->mt == DP_V4_MLP_HASH_MOE;
	case NEED_ENGRAM:
		return k->engram;
	}
	return false;
}

/* Expected shape of a per-layer kind (the config guarantees every product fits). */
static int layer_shape(const struct dp_v4_config *c, const struct blk *k,
                       enum dp_v4_layer_tensor t, int64_t *s)
{
	int64_t D = c->hidden_size, n = c->hc_mult, Q = c->q_lora_rank, d = c->head_dim;
	int64_t Hd = (int64_t)c->num_attention_heads * d,
	        gR = (int64_t)c->o_groups * c->o_lora_rank;
	int64_t E = c->n_routed_experts, I = c->moe_intermediate_size, ci = c->index_head_dim;
	int64_t x = k->lt == DP_V4_LAYER_CSA ? 2 : 1;
	int64_t m = k->rate;

	switch (t) {
	case DP_V4_W_ATTN_HC_FN:
	case DP_V4_W_FFN_HC_FN:
		s[0] = (2 + n) * n, s[1] = n * D;
		return 2;
	case DP_V4_W_ATTN_HC_BASE:
	case DP_V4_W_FFN_HC_BASE:
		s[0] = (2 + n) * n;
		return 1;
	case DP_V4_W_ATTN_HC_SCALE:
	case DP_V4_W_FFN_HC_SCALE:
		s[0] = 3;
		return 1;
	case DP_V4_W_INPUT_NORM:
	case DP_V4_W_POST_ATTN_NORM:
		s[0] = D;
		return 1;
	case DP_V4_W_Q_A:
		s[0] = Q, s[1] = D;
		return 2;
	case DP_V4_W_Q_A_NORM:
		s[0] = Q;
		return 1;
	case DP_V4_W_Q_B:
		s[0] = Hd, s[1] = Q;
		return 2;
	case DP_V4_W_KV:
		s[0] = d, s[1] = D;
		return 2;
	case DP_V4_W_KV_NORM:
	case DP_V4_W_CMP_NORM:
		s[0] = d;
		return 1;
	case DP_V4_W_O_A:
		s[0] = gR, s[1] = Hd / c->o_groups;
		return 2;
	case DP_V4_W_O_B:
		s[0] = D, s[1] = gR;
		return 2;
	case DP_V4_W_SINKS:
		s[0] = c->num_attention_heads;
		return 1;
	case DP_V4_W_CMP_KV:
	case DP_V4_W_CMP_GATE:
		s[0] = x * d, s[1] = D;
		return 2;
	case DP_V4_W_CMP_APE:
		s[0] = m, s[1] = x * d;
		return 2;
	case DP_V4_W_IDX_KV:
	case DP_V4_W_IDX_GATE:
		s[0] = 2 * ci, s[1] = D;
		return 2;
	case DP_V4_W_IDX_APE:
		s[0] = c->compress_rate_csa, s[1] = 2 * ci;
		return 2;
	case DP_V4_W_IDX_NORM:
		s[0] = ci;
		return 1;
	case DP_V4_W_IDX_Q_B:
		s[0] = (int64_t)c->index_n_heads * ci, s[1] = Q;
		return 2;
	case DP_V4_W_IDX_WEIGHTS:
		s[0] = c->index_n_heads, s[1] = D;
		return 2;
	case DP_V4_W_ROUTER:
		s[0] = E, s[1] = D;
		return 2;
	case DP_V4_W_ROUTER_BIAS:
		s[0] = E;
		return 1;
	case DP_V4_W_TID2EID:
		s[0] = c->vocab_size, s[1] = c->num_experts_per_tok;
		return 2;
	case DP_V4_W_SHARED_GATE:
	case DP_V4_W_SHARED_UP:
		s[0] = I, s[1] = D;
		return 2;
	case DP_V4_W_SHARED_DOWN:
		s[0] = D, s[1] = I;
		return 2;
	case DP_V4_W_ENGRAM_WKV:
		s[0] = (n + 1) * D;
		s[1] = (int64_t)(c->engram.max_ngram_size - 1) * c->engram.n_heads *
		       c->engram.head_dim;
		return 2;
	case DP_V4_W_ENGRAM_X_NORM:
	case DP_V4_W_ENGRAM_K_NORM:
		s[0] = n, s[1] = D;
		return 2;
	default:
		return 0;
	}
}

static int global_shape(const struct dp_v4_config *c, enum dp_v4_global_tensor g, int64_t *s)
{
	int64_t D = c->hidden_size, n = c->hc_mult;

	switch (g) {
	case DP_V4_W_EMBED:
	case DP_V4_W_LM_HEAD:
		s[0] = c->vocab_size, s[1] = D;
		return 2;
	case DP_V4_W_NORM:
		s[0] = D;
		return 1;
	case DP_V4_W_HC_HEAD_FN:
		s[0] = n, s[1] = n * D;
		return 2;
	case DP_V4_W_HC_HEAD_BASE:
		s[0] = n;
		return 1;
	case DP_V4_W_HC_HEAD_SCALE:
		s[0] = 1;
		return 1;
	case DP_V4_W_ENGRAM_MAP:
		s[0] = c->vocab_size;
		return 1;
	default:
		return 0;
	}
}

static const char *shape_str(const int64_t *s, int nd, char *buf, size_t len)
{
	struct dp_st_tensor t = {.ndim = nd};

	memcpy(t.shape, s, (size_t)nd * sizeof(*s));
	return dp_st_shape_str(&t, buf, len);
}

/*
 * The one of n candidate names present in the checkpoint: its index in *ret, 0. -ENOENT when
 * none is (no message: the caller says what was missing), -EINVAL when two are.
 */
static int find(struct build *b, char cand[][256], int n, long *ret)
{
	long found = -1;
	int which = -1;

	for (int i = 0; i < n; i++) {
		long idx = dp_st_index(b->w->st, cand[i]);

		if (idx < 0)
			continue;
		if (found >= 0)
			return fail(b, -EINVAL,
			            "both '%s' and '%s' are in the checkpoint: two "
			            "spellings of one tensor",
			            cand[which], cand[i]);
		found = idx;
		which = i;
	}
	if (found < 0)
		return -ENOENT;
	*ret = found;
	return 0;
}

/* Claim tensor idx for the forward pass (or the MTP block). */
static void claim(struct build *b, long idx, const struct dp_st_tensor *t)
{
	if (b->claimed[idx])
		return;
	b->claimed[idx] = 1;
	if (b->mtp) {
		b->w->stats.n_mtp++;
		b->w->stats.bytes_mtp += t->bytes;
		/* validated (its scale read) and kept out of memory until something uses
		 * it: the pages the check faulted in (and their neighbours, by fault-around)
		 * leave the process's RSS */
		(void)dp_st_release(t, 0, t->bytes);
		b->w->mtp_of[idx] = 1;
	} else {
		b->w->stats.n_used++;
		b->w->stats.bytes_used += t->bytes;
	}
}

/* The scale of quantized weight t: "X.weight" -> "X.scale" (the release), or
 * "X.weight_scale_inv" (transformers' spelling). -ENOENT when neither is there. */
static int find_scale(struct build *b, const struct dp_st_tensor *t, long *ret, char *name,
                      size_t name_len)
{
	char cand[2][256];
	size_t n = strlen(t->name);

	if (n < 7 || strcmp(t->name + n - 7, ".weight") != 0 || n + 12 > sizeof(cand[0])) {
		snprintf(name, name_len, "%s.scale", t->name);
		return -ENOENT;
	}
	snprintf(cand[0], sizeof(cand[0]), "%.*s.scale", (int)(n - 7), t->name);
	snprintf(cand[1], sizeof(cand[1]), "%s_scale_inv", t->name);
	snprintf(name, name_len, "%s", cand[0]);
	return find(b, cand, 2, ret);
}

/* Check a found tensor's shape and dtype against what `what` should be; for a quantized
 * weight, find and check its scale too (model/quant.h); claim both. */
static int check(struct build *b, long idx, const int64_t *want, int nd, const char *sym,
                 enum store store, const char *what)
{
	struct dp_st_tensor t;
	char have[128], exp[128], sname[300];
	int fmt, r;
	long sidx = -1;
	bool same;

	dp_st_at(b->w->st, (size_t)idx, &t);
	fmt = dp_quant_format_of(t.dtype);
	if (store == STORE_INT ? (t.dtype != DP_ST_I64 && t.dtype != DP_ST_I32)
	                       : fmt < 0 || (fmt == DP_QUANT_FP8 && store < STORE_FP8) ||
	                             (fmt == DP_QUANT_FP4 && store < STORE_FP8_FP4))
		return fail(b, -EINVAL, "%s: tensor '%s' (%s): dtype %s, expected %s", t.file, t.name,
		            what, dp_st_dtype_name(t.dtype),
		            store == STORE_INT      ? "an integer type (I64 or I32)"
		            : store == STORE_FLOAT  ? "F32, BF16 or F16"
		            : store == STORE_FP8    ? "F32, BF16, F16 or F8_E4M3 (with a scale)"
		                                    : "F32, BF16, F16, F8_E4M3 or I8 (FP4), with a "
		                                      "scale when quantized");
	same = t.ndim == nd;
	for (int i = 0; same && i < nd; i++)
		same = t.shape[i] * (fmt == DP_QUANT_FP4 && i == nd - 1 ? 2 : 1) == want[i];
	if (!same)
		return fail(b, -EINVAL, "%s: tensor '%s' (%s): shape %s%s, expected %s = %s", t.file,
		            t.name, what, dp_st_shape_str(&t, have, sizeof(have)),
		            fmt == DP_QUANT_FP4 ? " (two FP4 codes a byte)" : "",
		            shape_str(want, nd, exp, sizeof(exp)), sym);
	if (store >= STORE_FP8) {
		r = find_scale(b, &t, &sidx, sname, sizeof(sname));
		if (r == -EINVAL)
			return r;
		if (fmt == DP_QUANT_NONE && r == 0)
			return fail(b, -EINVAL,
			            "%s: tensor '%s' (%s) is %s but the checkpoint has a scale '%s' "
			            "for it",
			            t.file, t.name, what, dp_st_dtype_name(t.dtype),
			            dp_st_index(b->w->st, sname) >= 0 ? sname : "(transformers' "
			                                                        "weight_scale_inv)");
		if (fmt != DP_QUANT_NONE && r == -ENOENT)
			return fail(b, -EINVAL, "%s: tensor '%s' (%s) is %s but has no scale '%s'",
			            t.file, t.name, what, dp_st_dtype_name(t.dtype), sname);
		if (fmt != DP_QUANT_NONE) {
			struct dp_st_tensor sc;

			dp_st_at(b->w->st, (size_t)sidx, &sc);
			if ((r = dp_quant_check_scale(&t, &sc, b->err, b->err_len)) < 0)
				return r;
			claim(b, sidx, &sc);
			b->w->scale_of[idx] = sidx;
		}
	}
	claim(b, idx, &t);
	return 0;
}

/* Compression map entries must be compressed ids: >= 0 and below engram_compressed_vocab_size
 * when the config gives it. */
static int check_engram_map(struct build *b, long idx)
{
	const struct dp_v4_config *c = b->w->c;
	int64_t cv = c->engram.compressed_vocab_size, buf[4096];
	struct dp_st_tensor t;
	uint64_t done = 0;

	dp_st_at(b->w->st, (size_t)idx, &t);
	while (done < t.numel) {
		uint64_t n = t.numel - done < 4096 ? t.numel - done : 4096;

		dp_st_read_i64(&t, done, n, buf);
		for (uint64_t i = 0; i < n; i++)
			if (buf[i] < 0 || (cv > 0 && buf[i] >= cv))
				return fail(
				    b, -EINVAL,
				    "tensor '%s' (Engram compression map): entry [%llu] = %lld "
				    "is not a compressed id in [0, %lld)",
				    t.name, (unsigned long long)(done + i), (long long)buf[i],
				    cv > 0 ? (long long)cv : (long long)INT64_MAX);
		done += n;
	}
	return 0;
}

static int resolve_globals(struct build *b)
{
	const struct dp_v4_config *c = b->w->c;
	char cand[2][256];
	int64_t s[DP_ST_NDIM_MAX];
	int r;

	for (int g = 0; g < DP_V4_W_GLOBAL_MAX; g++) {
		int nd = global_shape(c, (enum dp_v4_global_tensor)g, s);
		long idx = -1;

		if (g == DP_V4_W_LM_HEAD && c->tie_word_embeddings) {
			b->w->global[g] = b->w->global[DP_V4_W_EMBED];
			continue;
		}
		if (g == DP_V4_W_ENGRAM_MAP && c->engram.n_layers == 0)
			continue;
		for (int i = 0; i < 2; i++)
			snprintf(cand[i], sizeof(cand[i]), "%s", gdesc[g].names[i]);
		r = find(b, cand, 2, &idx);
		if (r == -ENOENT)
			return fail(b, -EINVAL, "missing %s %s (looked for '%s' and '%s')%s",
			            gdesc[g].names[0], gdesc[g].sym, cand[0], cand[1],
			            g == DP_V4_W_LM_HEAD ? "; the config says tie_word_embeddings "
			                                   "is false"
			                                 : "");
		if (r)
			return r;
		if ((r = check(b, idx, s, nd, gdesc[g].sym,
		               g == DP_V4_W_ENGRAM_MAP ? STORE_INT : STORE_FLOAT, gdesc[g].names[0])))
			return r;
		if (g == DP_V4_W_ENGRAM_MAP && (r = check_engram_map(b, idx)))
			return r;
		b->w->global[g] = idx;
	}
	return 0;
}

/* tid2eid entries must be expert indices. */
static int check_tid2eid(struct build *b, int layer, long idx)
{
	struct dp_st_tensor t;
	int64_t buf[4096];
	uint64_t done = 0;
	int k = b->w->c->num_experts_per_tok;

	dp_st_at(b->w->st, (size_t)idx, &t);
	while (done < t.numel) {
		uint64_t n = t.numel - done < 4096 ? t.numel - done : 4096;

		dp_st_read_i64(&t, done, n, buf);
		for (uint64_t i = 0; i < n; i++)
			if (buf[i] < 0 || buf[i] >= b->w->c->n_routed_experts)
				return fail(b, -EINVAL,
				            "tensor '%s' (layer %d tid2eid): entry [%llu][%llu] "
				            "= %lld is not an expert index in [0, %d)",
				            t.name, layer, (unsigned long long)((done + i) / k),
				            (unsigned long long)((done + i) % k), (long long)buf[i],
				            b->w->c->n_routed_experts);
		done += n;
	}
	return 0;
}

/* Tensor t's name after "layers.L." in DeepSeek's release: as transformers saves it,
 * but for the attention's kv norm, which the release spells attn.kv_norm (transformers'
 * conversion maps both spellings to self_attn.kv_norm and saves attn.norm). */
static const char *upstream_leaf(int t)
{
	return t == DP_V4_W_KV_NORM ? "attn.kv_norm.weight" : ldesc[t].file;
}

/* The per-layer kinds of block k into out[DP_V4_W_LAYER_MAX]. */
static int resolve_block(struct build *b, const struct blk *k, long *out)
{
	const struct dp_v4_config *c = b->w->c;
	char cand[3][256], what[160];
	int64_t s[DP_ST_NDIM_MAX];
	int r;

	for (int t = 0; t < DP_V4_W_LAYER_MAX; t++) {
		long idx = -1;
		int n_cand = 0;

		out[t] = -1;
		if (!needed(k, ldesc[t].need))
			continue;
		/* module spelling, saved, upstream; a repeated or absent one is skipped */
		const char *leaf[3] = {ldesc[t].module, ldesc[t].file, upstream_leaf(t)};
		for (int i = 0; i < 3; i++) {
			if (!k->pfx[i][0])
				continue;
			snprintf(cand[n_cand], sizeof(cand[n_cand]), "%s%s", k->pfx[i], leaf[i]);
			if (n_cand == 0 || strcmp(cand[n_cand], cand[n_cand - 1]) != 0)
				n_cand++;
		}
		snprintf(what, sizeof(what), "%s %s", k->label, ldesc[t].module);
		int nd = layer_shape(c, k, (enum dp_v4_layer_tensor)t, s);
		r = find(b, cand, n_cand, &idx);
		if (r == -ENOENT) {
			char exp[128], looked[800] = "";

			for (int i = 0; i < n_cand; i++)
				snprintf(looked + strlen(looked), sizeof(looked) - strlen(looked),
				         "%s'%s'", i ? ", " : "", cand[i]);
			return fail(b, -EINVAL, "%s (%s, %s): missing %s %s = %s (looked for %s)",
			            k->label, dp_v4_layer_type_name(k->lt),
			            dp_v4_mlp_type_name(k->mt), ldesc[t].module, ldesc[t].sym,
			            shape_str(s, nd, exp, sizeof(exp)), looked);
		}
		if (r)
			return r;
		enum store store = t == DP_V4_W_TID2EID ? STORE_INT
		                   : may_be_fp8((enum dp_v4_layer_tensor)t) ? STORE_FP8
		                                                             : STORE_FLOAT;
		if ((r = check(b, idx, s, nd, ldesc[t].sym, store, what)))
			return r;
		if (t == DP_V4_W_TID2EID && (r = check_tid2eid(b, k->layer, idx)))
			return r;
		out[t] = idx;
	}
	return 0;
}

/* Candidate names of expert e's part leaf in block k: saved and upstream spellings. */
static int expert_cands(const struct blk *k, int e, const char *leaf, char cand[][256])
{
	int n = 0;

	for (int i = 1; i < 3; i++) {
		if (!k->pfx[i][0])
			continue;
		snprintf(cand[n], 256, "%sffn.experts.%d.%s.weight", k->pfx[i], e, leaf);
		if (n == 0 || strcmp(cand[n], cand[n - 1]) != 0)
			n++;
	}
	return n;
}

/* Routed experts of block k: fused module tensors, or one matrix per expert and part in any
 * storage (float, FP8 or FP4: each expert's dtype says which). */
static int resolve_experts(struct build *b, const struct blk *k, struct layer_experts *x)
{
	const struct dp_v4_config *c = b->w->c;
	int64_t E = c->n_routed_experts, I = c->moe_intermediate_size, D = c->hidden_size;
	char cand[2][256], fname[2][256], what[96];
	long fused_gu = -1, fused_d = -1, per0 = -1;
	int r, rf = -ENOENT, rp, n_cand;

	if (k->pfx[0][0]) {
		snprintf(fname[0], sizeof(fname[0]), "%smlp.experts.gate_up_proj", k->pfx[0]);
		rf = find(b, fname, 1, &fused_gu);
	}
	n_cand = expert_cands(k, 0, "w1", cand);
	rp = find(b, cand, n_cand, &per0);
	if (rp == -EINVAL)
		return rp;
	if (rf == 0 && rp == 0)
		return fail(b, -EINVAL,
		            "%s: experts stored both fused (mlp.experts.gate_up_proj) and per expert "
		            "(%s)",
		            k->label, cand[0]);
	if (rf == -ENOENT && rp == -ENOENT)
		return fail(b, -EINVAL, "%s: missing routed experts (looked for %s'%s'%s%s%s)",
		            k->label, k->pfx[0][0] ? "'" : "", k->pfx[0][0] ? fname[0] : "",
		            k->pfx[0][0] ? "', '" : "", cand[0], n_cand > 1 ? "', '" : "");

	if (rf == 0) {
		int64_t gu[3] = {E, 2 * I, D}, dn[3] = {E, D, I};

		snprintf(fname[0], sizeof(fname[0]), "%smlp.experts.down_proj", k->pfx[0]);
		r = find(b, fname, 1, &fused_d);
		if (r == -ENOENT)
			return fail(b, -EINVAL, "%s: missing %s [E, D, I] (gate_up_proj is there)",
			            k->label, fname[0]);
		snprintf(what, sizeof(what), "%s mlp.experts.gate_up_proj", k->label);
		if ((r = check(b, fused_gu, gu, 3, "[E, 2I, D]", STORE_FLOAT, what)))
			return r;
		snprintf(what, sizeof(what), "%s mlp.experts.down_proj", k->label);
		if ((r = check(b, fused_d, dn, 3, "[E, D, I]", STORE_FLOAT, what)))
			return r;
		x->fused = true;
		x->gate_up = fused_gu;
		x->down = fused_d;
		return 0;
	}

	x->per = calloc((size_t)E * DP_V4_EXPERT_PART_MAX, sizeof(long));
	if (!x->per)
		return fail(b, -ENOMEM, "out of memory");
	for (int e = 0; e < E; e++)
		for (int p = 0; p < DP_V4_EXPERT_PART_MAX; p++) {
			int64_t s[2] = {p == DP_V4_EXPERT_DOWN ? D : I,
			                p == DP_V4_EXPERT_DOWN ? I : D};
			long idx = -1;

			n_cand = expert_cands(k, e, expert_leaf[p], cand);
			r = find(b, cand, n_cand, &idx);
			if (r == -ENOENT)
				return fail(b, -EINVAL,
				            "%s: missing expert %d's %s matrix (looked for '%s'%s%s%s)",
				            k->label, e, expert_part_name[p], cand[0],
				            n_cand > 1 ? ", '" : "", n_cand > 1 ? cand[1] : "",
				            n_cand > 1 ? "'" : "");
			if (r)
				return r;
			snprintf(what, sizeof(what), "%s expert %d %s", k->label, e,
			         expert_part_name[p]);
			if ((r = check(b, idx, s, 2, p == DP_V4_EXPERT_DOWN ? "[D, I]" : "[I, D]",
			               STORE_FP8_FP4, what)))
				return r;
			x->per[(size_t)e * DP_V4_EXPERT_PART_MAX + p] = idx;
		}
	return 0;
}

/* The tensors an MTP block has beyond a layer's (the release's names, under "mtp.K."). */
static const struct {
	const char *leaf;
	const char *sym;
	enum store store;
} mtp_extra[] = {
    {"e_proj.weight", "[D, D]", STORE_FP8},   {"h_proj.weight", "[D, D]", STORE_FP8},
    {"enorm.weight", "[D]", STORE_FLOAT},     {"hnorm.weight", "[D]", STORE_FLOAT},
    {"norm.weight", "[D]", STORE_FLOAT},      {"hc_head_fn", "[n, nD]", STORE_FLOAT},
    {"hc_head_base", "[n]", STORE_FLOAT},     {"hc_head_scale", "[1]", STORE_FLOAT},
};

/*
 * MTP block k_mtp, when the checkpoint has one: every tensor named, shaped and stored as the
 * release has it (the block is validated, not kept: nothing runs it yet). A checkpoint without
 * any "mtp.K." tensor is fine.
 */
static int resolve_mtp(struct build *b, int k_mtp)
{
	const struct dp_v4_config *c = b->w->c;
	int64_t D = c->hidden_size, n = c->hc_mult;
	long out[DP_V4_W_LAYER_MAX];
	struct layer_experts x = {0};
	char pfx[32], name[256], what[96];
	struct blk k;
	size_t count = dp_st_count(b->w->st);
	bool any = false;
	int r;

	snprintf(pfx, sizeof(pfx), "mtp.%d.", k_mtp);
	for (size_t i = 0; i < count && !any; i++) {
		struct dp_st_tensor t;

		dp_st_at(b->w->st, i, &t);
		any = strncmp(t.name, pfx, strlen(pfx)) == 0;
	}
	if (!any)
		return 0;
	blk_mtp(k_mtp, &k);
	b->mtp = true;
	b->w->stats.has_mtp = true;
	r = resolve_block(b, &k, out);
	if (!r)
		r = resolve_experts(b, &k, &x);
	free(x.per);
	for (size_t i = 0; !r && i < DP_ARRAY_SIZE(mtp_extra); i++) {
		int64_t s[2];
		int nd;
		long idx;

		if (strcmp(mtp_extra[i].sym, "[D, D]") == 0)
			s[0] = D, s[1] = D, nd = 2;
		else if (strcmp(mtp_extra[i].sym, "[D]") == 0)
			s[0] = D, nd = 1;
		else if (strcmp(mtp_extra[i].sym, "[n, nD]") == 0)
			s[0] = n, s[1] = n * D, nd = 2;
		else if (strcmp(mtp_extra[i].sym, "[n]") == 0)
			s[0] = n, nd = 1;
		else
			s[0] = 1, nd = 1;
		snprintf(name, sizeof(name), "%s%s", pfx, mtp_extra[i].leaf);
		idx = dp_st_index(b->w->st, name);
		if (idx < 0) {
			r = fail(b, -EINVAL, "MTP block %d: missing %s %s", k_mtp, name,
			         mtp_extra[i].sym);
			break;
		}
		snprintf(what, sizeof(what), "MTP block %d %s", k_mtp, mtp_extra[i].leaf);
		r = check(b, idx, s, nd, mtp_extra[i].sym, mtp_extra[i].store, what);
	}
	b->mtp = false;
	return r;
}

/* The layer number of "model.layers.N." / "layers.N." names, else -1. */
static long layer_of(const char *name)
{
	const char *p = NULL;
	char *end;

	if (strncmp(name, "model.layers.", 13) == 0)
		p = name + 13;
	else if (strncmp(name, "layers.", 7) == 0)
		p = name + 7;
	if (!p || *p < '0' || *p > '9')
		return -1;
	long v = strtol(p, &end, 10);
	return *end == '.' ? v : -1;
}

/* Tensors nobody claimed: ignored by rule, else extra (an error unless allowed). */
static int sort_unclaimed(struct build *b, unsigned flags)
{
	const struct dp_v4_config *c = b->w->c;
	size_t n = dp_st_count(b->w->st), n_extra = 0;
	const char *first = NULL;

	for (size_t i = 0; i < n; i++) {
		struct dp_st_tensor t;

		if (b->claimed[i])
			continue;
		dp_st_at(b->w->st, i, &t);
		long l = layer_of(t.name);
		bool tied_head = c->tie_word_embeddings && (strcmp(t.name, "lm_head.weight") == 0 ||
		                                            strcmp(t.name, "head.weight") == 0);
		bool mtp_layer = l >= c->num_hidden_layers &&
		                 l < (long)c->num_hidden_layers + c->num_nextn_predict_layers;
		const char *leaf = l >= 0 ? strchr(strchr(t.name, '.') + 1, '.') : NULL;
		if (leaf && strncmp(t.name, "model.", 6) == 0)
			leaf = strchr(leaf + 1, '.');
		bool engram_table =
		    leaf && l < c->num_hidden_layers && dp_v4_engram_slot(c, (int)l) >= 0 &&
		    strcmp(leaf, ".engram.multi_head_embedding.embedding.weight") == 0;
		if (strncmp(t.name, "model.mtp.", 10) == 0 || mtp_layer || tied_head ||
		    engram_table) {
			b->w->stats.n_ignored++;
			continue;
		}
		if (!first)
			first = t.name;
		n_extra++;
	}
	b->w->stats.n_extra = n_extra;
	if (!n_extra || (flags & DP_V4_WEIGHTS_ALLOW_EXTRA))
		return 0;
	if (n_extra == 1)
		return fail(b, -EINVAL,
		            "unexpected tensor '%s': the config does not describe it "
		            "(different layer or MLP types? DP_V4_WEIGHTS_ALLOW_EXTRA "
		            "ignores such tensors)",
		            first);
	return fail(b, -EINVAL,
	            "unexpected tensor '%s' and %zu more: the config does not describe "
	            "them (different layer or MLP types? DP_V4_WEIGHTS_ALLOW_EXTRA "
	            "ignores such tensors)",
	            first, n_extra - 1);
}

void dp_v4_weights_free(struct dp_v4_weights *w)
{
	if (!w)
		return;
	if (w->experts)
		for (int l = 0; l < w->c->num_hidden_layers; l++)
			free(w->experts[l].per);
	free(w->experts);
	free(w->layer);
	free(w->scale_of);
	free(w->mtp_of);
	free(w);
}

int dp_v4_weights_release_unread(const struct dp_v4_weights *w)
{
	static const enum dp_v4_expert_part parts[] = { DP_V4_EXPERT_GATE, DP_V4_EXPERT_UP,
	                                                DP_V4_EXPERT_DOWN };
	int r = 0, q;

	if (!w)
		return -EINVAL;
	for (size_t i = 0; i < dp_st_count(w->st); i++) {
		struct dp_st_tensor t;

		if (w->mtp_of[i] && dp_st_at(w->st, i, &t) == 0 &&
		    (q = dp_st_release(&t, 0, t.bytes)) < 0 && !r)
			r = q;
	}
	for (int l = 0; l < w->c->num_hidden_layers; l++)
		for (int e = 0; w->experts && (w->experts[l].fused || w->experts[l].per) &&
		                e < w->c->n_routed_experts;
		     e++)
			for (size_t p = 0; p < DP_ARRAY_SIZE(parts); p++) {
				struct dp_st_tensor t, sc;

				if (dp_v4_weights_expert(w, l, e, parts[p], &t) < 0)
					continue; /* a dense layer */
				if ((q = dp_st_release(&t, 0, t.bytes)) < 0 && !r)
					r = q;
				if (dp_v4_weights_scale(w, &t, &sc) == 0 &&
				    (q = dp_st_release(&sc, 0, sc.bytes)) < 0 && !r)
					r = q;
			}
	return r;
}

int dp_v4_weights_new(const struct dp_v4_config *c, const struct dp_st *st, unsigned flags,
                      struct dp_v4_weights **ret, char *err, size_t err_len)
{
	struct build b = {.err = err, .err_len = err_len};
	struct dp_v4_weights *w;
	int r = 0;

	if (err && err_len)
		err[0] = '\0';
	if (!c || !st || !ret || !c->layer_types || flags >= DP_V4_WEIGHTS_FLAGS_MAX)
		return fail(&b, -EINVAL, "dp_v4_weights_new: bad argument");
	w = calloc(1, sizeof(*w));
	if (!w)
		return fail(&b, -ENOMEM, "out of memory");
	w->c = c;
	w->st = st;
	b.w = w;
	w->layer = calloc((size_t)c->num_hidden_layers * DP_V4_W_LAYER_MAX, sizeof(long));
	w->experts = calloc((size_t)c->num_hidden_layers, sizeof(*w->experts));
	b.claimed = calloc(dp_st_count(st) + 1, 1);
	w->scale_of = malloc((dp_st_count(st) + 1) * sizeof(long));
	w->mtp_of = calloc(dp_st_count(st) + 1, 1);
	if (!w->layer || !w->experts || !b.claimed || !w->scale_of || !w->mtp_of) {
		r = fail(&b, -ENOMEM, "out of memory");
		goto out;
	}
	for (int g = 0; g < DP_V4_W_GLOBAL_MAX; g++)
		w->global[g] = -1;
	for (size_t i = 0; i <= dp_st_count(st); i++)
		w->scale_of[i] = -1;

	r = resolve_globals(&b);
	for (int l = 0; !r && l < c->num_hidden_layers; l++) {
		struct blk k;

		blk_layer(c, l, &k);
		r = resolve_block(&b, &k, &w->layer[(size_t)l * DP_V4_W_LAYER_MAX]);
		if (!r)
			r = resolve_experts(&b, &k, &w->experts[l]);
	}
	for (int m = 0; !r && m < c->num_nextn_predict_layers; m++)
		r = resolve_mtp(&b, m);
	if (!r)
		r = sort_unclaimed(&b, flags);
out:
	free(b.claimed);
	if (r) {
		dp_v4_weights_free(w);
		return r;
	}
	*ret = w;
	return 0;
}

int dp_v4_weights_check(const struct dp_v4_config *c, const struct dp_st *st, unsigned flags,
                        char *err, size_t err_len)
{
	struct dp_v4_weights *w;
	int r = dp_v4_weights_new(c, st, flags, &w, err, err_len);

	if (!r)
		dp_v4_weights_free(w);
	return r;
}

/* ---- lookup ------------------------------------------------------------- */

int dp_v4_weights_global(const struct dp_v4_weights *w, enum dp_v4_global_tensor g,
                         struct dp_st_tensor *ret)
{
	if (!w || !ret || (unsigned)g >= DP_V4_W_GLOBAL_MAX)
		return -EINVAL;
	return dp_st_at(w->st, (size_t)w->global[g], ret);
}

int dp_v4_weights_layer(const struct dp_v4_weights *w, int layer, enum dp_v4_layer_tensor t,
                        struct dp_st_tensor *ret)
{
	if (!w || !ret || layer < 0 || layer >= w->c->num_hidden_layers ||
	    (unsigned)t >= DP_V4_W_LAYER_MAX)
		return -EINVAL;
	long idx = w->layer[(size_t)layer * DP_V4_W_LAYER_MAX + t];
	if (idx < 0)
		return -ENOENT;
	return dp_st_at(w->st, (size_t)idx, ret);
}

int dp_v4_weights_expert(const struct dp_v4_weights *w, int layer, int expert,
                         enum dp_v4_expert_part part, struct dp_st_tensor *ret)
{
	if (!w || !ret || layer < 0 || layer >= w->c->num_hidden_layers || expert < 0 ||
	    expert >= w->c->n_routed_experts || (unsigned)part >= DP_V4_EXPERT_PART_MAX)
		return -EINVAL;
	const struct layer_experts *x = &w->experts[layer];
	if (!x->fused)
		return dp_st_at(w->st,
		                (size_t)x->per[(size_t)expert * DP_V4_EXPERT_PART_MAX + part], ret);

	struct dp_st_tensor t;
	uint64_t I = (uint64_t)w->c->moe_intermediate_size, D = (uint64_t)w->c->hidden_size;
	uint64_t first; /* element offset of the slice */
	int r = dp_st_at(w->st, (size_t)(part == DP_V4_EXPERT_DOWN ? x->down : x->gate_up), &t);

	if (r)
		return r;
	if (part == DP_V4_EXPERT_DOWN) {
		first = (uint64_t)expert * D * I;
		t.shape[0] = (int64_t)D, t.shape[1] = (int64_t)I;
	} else {
		first = (uint64_t)expert * 2 * I * D + (part == DP_V4_EXPERT_UP ? I * D : 0);
		t.shape[0] = (int64_t)I, t.shape[1] = (int64_t)D;
	}
	size_t esize = dp_st_dtype_size(t.dtype);
	t.ndim = 2;
	t.shape[2] = 0;
	t.numel = I * D;
	t.bytes = (size_t)(I * D) * esize;
	t.data = (const char *)t.data + first * esize;
	t.offset += first * esize;
	t.aligned = ((uintptr_t)t.data % esize) == 0;
	*ret = t;
	return 0;
}

int dp_v4_weights_scale(const struct dp_v4_weights *w, const struct dp_st_tensor *t,
                        struct dp_st_tensor *ret)
{
	if (!w || !t || !t->name || !ret)
		return -EINVAL;
	long i = dp_st_index(w->st, t->name);
	if (i < 0)
		return (int)i;
	if (w->scale_of[i] < 0)
		return -ENOENT;
	return dp_st_at(w->st, (size_t)w->scale_of[i], ret);
}

int dp_v4_weights_stats(const struct dp_v4_weights *w, struct dp_v4_weights_stats *ret)
{
	if (!w || !ret)
		return -EINVAL;
	*ret = w->stats;
	return 0;
}
