/* SPDX-License-Identifier: MIT */
/*
 * model/weights.h — does a checkpoint fit its config, and where is each weight.
 *
 * dp_v4_weights_new() resolves every tensor the DeepSeek-V4 forward pass reads to a tensor of an
 * open struct dp_st, checking name, shape and dtype against the config, and keeps the result for
 * lookup by (layer, kind). Tensors are not copied: the views point into the dp_st's mappings.
 *
 * Names. A checkpoint may spell each tensor three ways; all are accepted, per tensor:
 *   module    transformers' module names, what model.state_dict() has
 *             (model.layers.L.self_attn.q_a_proj.weight; experts fused into 3-d tensors);
 *   saved     what save_pretrained of transformers 5.17 writes: it reverses its loading
 *             conversion, so the leaf names are upstream's, under the "model." prefix, and the
 *             experts are split into one matrix per expert (model.layers.L.attn.wq_a.weight,
 *             model.layers.L.ffn.experts.E.w1.weight, head.weight);
 *   upstream  the DeepSeek release: the saved names without "model." (layers.L.attn.wq_a.weight,
 *             embed.weight, norm.weight, hc_head_fn, head.weight).
 * Two spellings of one tensor both present is an error (ambiguous).
 *
 * The table (verified against DeepseekV4ForCausalLM of transformers 5.17: state_dict() and the
 * save_pretrained file of a 4-layer config with every dimension distinct; the list is
 * tests/model/fixtures/tiny_tensors.json). Symbols: V vocab_size, D hidden_size, H
 * num_attention_heads, d head_dim, Q q_lora_rank, g o_groups, R o_lora_rank, n hc_mult, E
 * n_routed_experts, k num_experts_per_tok, I moe_intermediate_size, c index_head_dim, nI
 * index_n_heads, mC / mH compress rate of CSA / HCA. "kind" is enum dp_v4_*_tensor without its
 * DP_V4_W_ prefix. Per-layer names follow "model.layers.L." (module, saved); the upstream name
 * is the saved one without "model." ("layers.L.", and "up:" below for the globals). Routed
 * experts are either two fused module tensors (gate_up_proj holds each expert's gate rows, then
 * its up rows) or, saved, three matrices per expert e: w1 gate [I, D], w3 up [I, D], w2 down
 * [D, I]; dp_v4_weights_expert() hides the difference.
 *
 *   kind           module name                           saved name                   shape
 *   EMBED          model.embed_tokens.weight             (same); up: embed.weight     [V, D]
 *   NORM           model.norm.weight                     (same); up: norm.weight      [D]
 *   LM_HEAD        lm_head.weight                        head.weight                  [V, D]
 *   HC_HEAD_FN     model.hc_head.hc_fn                   (same); up: hc_head_fn       [n, nD]
 *   HC_HEAD_BASE   model.hc_head.hc_base                 (same); up: hc_head_base     [n]
 *   HC_HEAD_SCALE  model.hc_head.hc_scale                (same); up: hc_head_scale    [1]
 *   every layer:
 *   ATTN_HC_FN     attn_hc.fn                            hc_attn_fn                   [(2+n)n, nD]
 *   ATTN_HC_BASE   attn_hc.base                          hc_attn_base                 [(2+n)n]
 *   ATTN_HC_SCALE  attn_hc.scale                         hc_attn_scale                [3]
 *   FFN_HC_*       ffn_hc.{fn,base,scale}                hc_ffn_{fn,base,scale}       as ATTN_HC_*
 *   INPUT_NORM     input_layernorm.weight                attn_norm.weight             [D]
 *   POST_ATTN_NORM post_attention_layernorm.weight       ffn_norm.weight              [D]
 *   Q_A            self_attn.q_a_proj.weight             attn.wq_a.weight             [Q, D]
 *   Q_A_NORM       self_attn.q_a_norm.weight             attn.q_norm.weight           [Q]
 *   Q_B            self_attn.q_b_proj.weight             attn.wq_b.weight             [H*d, Q]
 *   KV             self_attn.kv_proj.weight              attn.wkv.weight              [d, D]
 *   KV_NORM        self_attn.kv_norm.weight              attn.norm.weight             [d]
 *   O_A            self_attn.o_a_proj.weight             attn.wo_a.weight             [g*R, H*d/g]
 *   O_B            self_attn.o_b_proj.weight             attn.wo_b.weight             [D, g*R]
 *   SINKS          self_attn.sinks                       attn.attn_sink               [H]
 *   ROUTER         mlp.gate.weight                       ffn.gate.weight              [E, D]
 *   SHARED_GATE    mlp.shared_experts.gate_proj.weight   ffn.shared_experts.w1.weight [I, D]
 *   SHARED_UP      mlp.shared_experts.up_proj.weight     ffn.shared_experts.w3.weight [I, D]
 *   SHARED_DOWN    mlp.shared_experts.down_proj.weight   ffn.shared_experts.w2.weight [D, I]
 *   (experts)      mlp.experts.gate_up_proj              ffn.experts.<e>.w1.weight    [E, 2I, D]
 *                                                        ffn.experts.<e>.w3.weight    [I, D] each
 *                  mlp.experts.down_proj                 ffn.experts.<e>.w2.weight    [E, D, I]
 *   "moe" layers only:
 *   ROUTER_BIAS    mlp.gate.e_score_correction_bias      ffn.gate.bias                [E]
 *   "hash_moe" layers only:
 *   TID2EID        mlp.gate.tid2eid                      ffn.gate.tid2eid             [V, k] (I64)
 *   CSA and HCA layers (x = 2 on CSA, 1 on HCA; m its compress rate):
 *   CMP_KV         self_attn.compressor.kv_proj.weight   attn.compressor.wkv.weight   [x*d, D]
 *   CMP_GATE       self_attn.compressor.gate_proj.weight attn.compressor.wgate.weight [x*d, D]
 *   CMP_APE        self_attn.compressor.position_bias    attn.compressor.ape          [m, x*d]
 *   CMP_NORM       self_attn.compressor.kv_norm.weight   attn.compressor.norm.weight  [d]
 *   CSA layers only (module names under self_attn.compressor.indexer., saved under attn.indexer.):
 *   IDX_KV         kv_proj.weight                        compressor.wkv.weight        [2c, D]
 *   IDX_GATE       gate_proj.weight                      compressor.wgate.weight      [2c, D]
 *   IDX_APE        position_bias                         compressor.ape               [mC, 2c]
 *   IDX_NORM       kv_norm.weight                        compressor.norm.weight       [c]
 *   IDX_Q_B        q_b_proj.weight                       wq_b.weight                  [nI*c, Q]
 *   IDX_WEIGHTS    scorer.weights_proj.weight            weights_proj.weight          [nI, D]
 *   Engram layers only (engram_layer_ids; our names: transformers 5.17 has no Engram, so there
 *   is no module spelling; "model.layers.L." or, upstream, "layers.L."):
 *   ENGRAM_WKV     engram.wkv.weight                                                  [(n+1)*D, F]
 *   ENGRAM_X_NORM  engram.x_norm.weight                                               [n, D]
 *   ENGRAM_K_NORM  engram.k_norm.weight                                               [n, D]
 *   with F = (N-1)*K*e (N engram_max_ngram_size, K engram_n_heads, e engram_head_dim): the
 *   concatenated rows of the layer's (N-1)*K hash heads. wkv's rows are the n stream keys (row
 *   block m*D..m*D+D-1 is stream m's key), then the value (rows n*D..n*D+D-1); x_norm and
 *   k_norm are the RMSNorm gains of the streams and of the keys (the fusion uses their
 *   product; see engram_fuse in gpu/gpu.h).
 *   ENGRAM_MAP     model.engram.compression_map          up: engram.compression_map   [V] (int)
 *   (a global, present with engram_layer_ids: raw token id -> compressed id, each >= 0 and
 *   below engram_compressed_vocab_size when that is given.)
 *   The tables themselves (model.layers.L.engram.multi_head_embedding.embedding.weight
 *   [rows, e], the name of the public Engram demo's module; also without "model.") are not
 *   read here: they are served from a table file (engram/engram.h), so a checkpoint that
 *   carries them has them counted as ignored.
 *
 * Every matrix is [out, in], row-major. Float tensors may be F32, BF16 or F16 (mixed freely);
 * tid2eid must be an integer tensor (transformers saves it as I64), and each of its entries
 * must be an expert index in [0, E) — checked here, so the forward can index with it.
 *
 * Quantized storage (the published checkpoints; model/quant.h decodes it). The matrices the
 * loader fills row by row (Q_A, Q_B, KV, O_A, O_B, the compressor and indexer projections,
 * ROUTER, SHARED_*, ENGRAM_WKV; e_proj / h_proj of an MTP block) may be FP8 block weights
 * (F8_E4M3); routed experts may be FP8 or FP4 (I8, two codes a byte: the shape checked is the
 * logical [out, in], the file's [out, in/2]). Which, is each tensor's dtype, never config.json.
 * A quantized "X.weight" needs its scale "X.scale" (or transformers' "X.weight_scale_inv"),
 * checked by dp_quant_check_scale() for dtype, shape and values; a float weight with a scale
 * beside it is an error too. Vectors, mHC tensors, position biases, embed and head are float.
 *
 * The release's MTP block ("mtp.K.*", K < num_nextn_predict_layers) is validated when any of its
 * tensors is present: a sliding-attention, top-k-MoE block under the layer names above, plus
 * e_proj, h_proj [D, D], enorm, hnorm, norm [D], hc_head_fn [n, nD], hc_head_base [n],
 * hc_head_scale [1]. A missing or unknown tensor in it is an error; the block is counted in
 * stats (n_mtp, bytes_mtp, has_mtp) and never loaded. A checkpoint without one is fine.
 *
 * With tie_word_embeddings, DP_V4_W_LM_HEAD is the embedding (transformers ties them after
 * loading, so a head tensor in the file is ignored).
 *
 * Other tensors in the checkpoint:
 *   - ignored (counted in stats): Engram tables (above), "model.mtp.*", the
 *     num_nextn_predict_layers layers right after the last one
 *     ("model.layers.N.*" / "layers.N.*" with num_hidden_layers <= N < num_hidden_layers +
 *     num_nextn_predict_layers: MTP stored as extra layers, as DeepSeek-V3 conversions did), and
 *     the head when tied — transformers does not build them either;
 *   - anything else is an error by default: a tensor the forward would not read usually means
 *     the config does not describe the checkpoint (a layer type, a bias, an MLP kind that
 *     differs) and the logits would be silently wrong. DP_V4_WEIGHTS_ALLOW_EXTRA downgrades
 *     that to ignoring them (stats.n_extra counts them).
 *
 * Errors are -EINVAL (-ENOMEM) with one message: which tensor (all spellings looked for when
 * missing), what was expected (shape with the symbols, dtype) and what was found.
 *
 * Ownership: the dp_v4_weights borrows the config and the dp_st, which must outlive it.
 * Threads: read-only after dp_v4_weights_new(); every const call may run concurrently.
 */
#ifndef DP_MODEL_WEIGHTS_H
#define DP_MODEL_WEIGHTS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "model/config.h"
#include "model/safetensors.h"

#ifdef __cplusplus
extern "C" {
#endif

enum dp_v4_global_tensor {
	DP_V4_W_EMBED,
	DP_V4_W_NORM,
	DP_V4_W_LM_HEAD,
	DP_V4_W_HC_HEAD_FN,
	DP_V4_W_HC_HEAD_BASE,
	DP_V4_W_HC_HEAD_SCALE,
	DP_V4_W_ENGRAM_MAP, /* with engram_layer_ids */
	DP_V4_W_GLOBAL_MAX,
};

enum dp_v4_layer_tensor {
	DP_V4_W_ATTN_HC_FN,
	DP_V4_W_ATTN_HC_BASE,
	DP_V4_W_ATTN_HC_SCALE,
	DP_V4_W_FFN_HC_FN,
	DP_V4_W_FFN_HC_BASE,
	DP_V4_W_FFN_HC_SCALE,
	DP_V4_W_INPUT_NORM,
	DP_V4_W_POST_ATTN_NORM,
	DP_V4_W_Q_A,
	DP_V4_W_Q_A_NORM,
	DP_V4_W_Q_B,
	DP_V4_W_KV,
	DP_V4_W_KV_NORM,
	DP_V4_W_O_A,
	DP_V4_W_O_B,
	DP_V4_W_SINKS,
	DP_V4_W_CMP_KV, /* CSA, HCA */
	DP_V4_W_CMP_GATE,
	DP_V4_W_CMP_APE,
	DP_V4_W_CMP_NORM,
	DP_V4_W_IDX_KV, /* CSA */
	DP_V4_W_IDX_GATE,
	DP_V4_W_IDX_APE,
	DP_V4_W_IDX_NORM,
	DP_V4_W_IDX_Q_B,
	DP_V4_W_IDX_WEIGHTS,
	DP_V4_W_ROUTER,
	DP_V4_W_ROUTER_BIAS, /* moe */
	DP_V4_W_TID2EID,     /* hash_moe */
	DP_V4_W_SHARED_GATE,
	DP_V4_W_SHARED_UP,
	DP_V4_W_SHARED_DOWN,
	DP_V4_W_ENGRAM_WKV, /* Engram layers */
	DP_V4_W_ENGRAM_X_NORM,
	DP_V4_W_ENGRAM_K_NORM,
	DP_V4_W_LAYER_MAX,
};

enum dp_v4_expert_part {
	DP_V4_EXPERT_GATE, /* [I, D] */
	DP_V4_EXPERT_UP,   /* [I, D] */
	DP_V4_EXPERT_DOWN, /* [D, I] */
	DP_V4_EXPERT_PART_MAX,
};

enum dp_v4_weights_flags {
	DP_V4_WEIGHTS_ALLOW_EXTRA = 1u << 0, /* ignore unexpected tensors instead of failing */
	DP_V4_WEIGHTS_FLAGS_MAX = 1u << 1,
};

struct dp_v4_weights;

struct dp_v4_weights_stats {
	size_t n_used;    /* checkpoint tensors the forward reads (scales included) */
	size_t n_ignored; /* transformers-spelled MTP layers, tied head, Engram tables */
	size_t n_extra;   /* unexpected, ignored under DP_V4_WEIGHTS_ALLOW_EXTRA */
	size_t n_mtp;     /* tensors of the release's MTP block ("mtp.K."), validated, unused */
	uint64_t bytes_used;
	uint64_t bytes_mtp;
	bool has_mtp;
};

/* Resolve and check every tensor. Returns 0, -EINVAL (a mismatch; err says which) or -ENOMEM.
 * *ret untouched on failure. */
int dp_v4_weights_new(const struct dp_v4_config *c, const struct dp_st *st, unsigned flags,
                      struct dp_v4_weights **ret, char *err, size_t err_len);
void dp_v4_weights_free(struct dp_v4_weights *w); /* accepts NULL */

/* dp_v4_weights_new + free: only the verdict. */
int dp_v4_weights_check(const struct dp_v4_config *c, const struct dp_st *st, unsigned flags,
                        char *err, size_t err_len);

/* A global tensor. Returns 0 or -EINVAL. */
int dp_v4_weights_global(const struct dp_v4_weights *w, enum dp_v4_global_tensor g,
                         struct dp_st_tensor *ret);

/* A per-layer tensor. Returns 0, -ENOENT when this layer's type has no such tensor (a
 * compressor on a sliding layer, tid2eid on a moe layer...), or -EINVAL. */
int dp_v4_weights_layer(const struct dp_v4_weights *w, int layer, enum dp_v4_layer_tensor t,
                        struct dp_st_tensor *ret);

/* One routed expert's matrix, whichever way the file stores experts. For fused storage the view
 * is a slice of mlp.experts.gate_up_proj / down_proj (its name is the fused tensor's). */
int dp_v4_weights_expert(const struct dp_v4_weights *w, int layer, int expert,
                         enum dp_v4_expert_part part, struct dp_st_tensor *ret);

/* The scale of a quantized weight t (a view from this dp_v4_weights): 0, -ENOENT when t is
 * stored unquantized, or -EINVAL. model/quant.h dequantizes the pair. */
int dp_v4_weights_scale(const struct dp_v4_weights *w, const struct dp_st_tensor *t,
                        struct dp_st_tensor *ret);

/* Drop from the process's resident set (model/safetensors.h: dp_st_release) the pages of the
 * tensors the forward never reads through the mapping: the MTP block (validated, not loaded) and
 * the routed experts with their scales (a loader copies, dequantizes or pages them; none is
 * used in place). For the end of a load: pages a later read faulted back in around its own
 * (the kernel's fault-around) go too. Returns 0, -EINVAL, or the first madvise error. */
int dp_v4_weights_release_unread(const struct dp_v4_weights *w);

/* Counts of what the checkpoint held. Returns 0 or -EINVAL. */
int dp_v4_weights_stats(const struct dp_v4_weights *w, struct dp_v4_weights_stats *ret);

/* Module-name suffix of a per-layer kind ("self_attn.q_a_proj.weight"), or of a global
 * ("model.embed_tokens.weight"); NULL if out of range. */
const char *dp_v4_layer_tensor_name(enum dp_v4_layer_tensor t);
const char *dp_v4_global_tensor_name(enum dp_v4_global_tensor g);

#ifdef __cplusplus
}
#endif

#endif /* DP_MODEL_WEIGHTS_H */
