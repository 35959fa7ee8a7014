/* SPDX-License-Identifier: MIT */
/*
 * model/config.h — the config.json of a DeepSeek-V4 model, as the forward pass needs it.
 *
 * dp_v4_config_parse() reads an HF `config.json` (model_type "deepseek_v4") into a struct
 * dp_v4_config: every field of transformers' DeepseekV4Config that the forward pass reads, with
 * the defaults and legacy-key folding that transformers 5.17 applies, then validates it. The
 * ground truth is configuration_deepseek_v4.py and modeling_rope_utils.py of transformers 5.17;
 * docs/v4-forward.md describes the fields in our words.
 *
 * Defaults (a key absent, or null where transformers allows None):
 *
 *   vocab_size 129280, hidden_size 4096, moe_intermediate_size 2048, num_hidden_layers 43,
 *   num_attention_heads 64, num_key_value_heads 1, head_dim 512, q_lora_rank 1024,
 *   num_experts_per_tok 6, n_routed_experts 256, n_shared_experts 1,
 *   scoring_func "sqrtsoftplus", norm_topk_prob true, routed_scaling_factor 1.5,
 *   max_position_embeddings 1048576, rope_theta 10000, compress_rope_theta 160000,
 *   hc_mult 4, hc_sinkhorn_iters 20, hc_eps 1e-6, swiglu_limit 10, sliding_window 128,
 *   o_groups 8, o_lora_rank 1024, index_n_heads 64, index_head_dim 128, index_topk 512,
 *   num_nextn_predict_layers 1, hidden_act "silu", rms_norm_eps 1e-6, pad_token_id none,
 *   bos_token_id 0, eos_token_id 1, tie_word_embeddings false, attention_bias false,
 *   mlp_bias false.
 *
 * Derived fields and legacy keys (in transformers' order of precedence):
 *
 *   compress_rates   the object if given, else {CSA: 4, HCA: 128}; then the legacy top-level
 *                    `compress_rate_csa` / `compress_rate_hca` override their entry.
 *   layer_types      the list if given; else legacy `compress_ratios` (0 -> sliding, 4 -> CSA,
 *                    128 -> HCA; any other value is refused, as transformers raises); else
 *                    [HCA, HCA] + [HCA, CSA, HCA, CSA, ...] (index i of the tail: i odd -> CSA).
 *                    A longer list is cut to num_hidden_layers (upstream configs carry one more
 *                    entry, for the MTP layer); a shorter one is an error.
 *   mlp_layer_types  the list if given, else the first `num_hash_layers` (legacy key, default 3)
 *                    layers hash_moe and the rest moe; cut like layer_types.
 *   partial_rotary_factor
 *                    the value if given, else legacy `qk_rope_head_dim / head_dim`, else 0.125.
 *   rope             two ropes, "main" (sliding-only layers) and "compress" (CSA/HCA layers,
 *                    their compressors and the indexer). `rope_scaling` (legacy) is read in place
 *                    of `rope_parameters` when it is a non-empty object. Two forms:
 *                    - nested {"main": {...}, "compress": {...}} (what save_pretrained writes):
 *                      each sub-object gives rope_type (or legacy "type"; default "default"),
 *                      rope_theta (default: the top-level rope_theta — for compress too, as in
 *                      transformers), partial_rotary_factor (default: the top-level key if given;
 *                      else, for yarn, the effective factor above, for default, 1.0 — again as
 *                      transformers does) and the YaRN keys;
 *                    - flat (anything else, or absent): main is default rope with rope_theta;
 *                      compress takes rope_type and the YaRN keys from the object, theta
 *                      compress_rope_theta, and attention_factor 1.0 when yarn and the key is
 *                      absent (the reference V4 does not scale cos/sin).
 *                    Only rope types "default" and "yarn" are supported. YaRN keys: factor
 *                    (required; null -> max_position_embeddings /
 *                    original_max_position_embeddings),
 *                    original_max_position_embeddings (default max_position_embeddings),
 *                    beta_fast (0 or absent -> 32), beta_slow (0 or absent -> 1),
 *                    attention_factor (absent or null -> derived, see dp_v4_rope_inv_freq),
 *                    mscale, mscale_all_dim; `truncate` is accepted and has no effect
 *                    (transformers 5.17 reads it from the wrong dictionary: always true).
 *
 * Validation (each failure is -EINVAL and one message naming the field and the value):
 * JSON types (an integer field given 24.0, "24", true or null is refused as transformers' strict
 * dataclass does; a float field also takes an integer, which transformers would refuse);
 * model_type, when present, is "deepseek_v4"; sizes are positive and below the DP_V4_*_MAX
 * limits, and products the forward forms (H*d, nI*c, g*R, tensor byte sizes) fit in int /
 * size_t; num_key_value_heads == 1; n_shared_experts == 1 (transformers builds exactly one shared
 * expert of width moe_intermediate_size whatever the value; a different value would mean a
 * different checkpoint layout); num_experts_per_tok <= n_routed_experts; (H*d) % o_groups == 0
 * (what the reference's grouped output projection needs; H % o_groups need not be 0);
 * the rope dim r = int(head_dim * partial_rotary_factor) is the same for main and compress, an
 * even integer, 2 <= r <= head_dim, and r <= index_head_dim when a CSA layer exists (the indexer
 * rotates the trailing r of its index_head_dim channels); list lengths and layer type names;
 * every used attention type has a compress rate >= 1; scoring_func is sqrtsoftplus, softmax or
 * sigmoid (note: transformers 5.17 cannot build a softmax model, ACT2FN has no "softmax", so no
 * parity reference exists for it); hidden_act is silu (or its alias swish); attention_bias and
 * mlp_bias are false; epsilons are finite and >= 0; swiglu_limit, routed_scaling_factor and
 * rope thetas are finite and > 0; token ids are >= 0 and pad_token_id < vocab_size.
 * Unknown keys are ignored (transformers keeps them as attributes). norm_topk_prob is stored but
 * the reference always normalises the routed weights.
 *
 * Engram (optional, for later): present when `engram_layer_ids` is a non-empty list. Keys:
 * engram_layer_ids (distinct layer indices in [0, num_hidden_layers)), engram_max_ngram_size
 * (>= 2), engram_n_heads, engram_head_dim, engram_vocab_size (list of table sizes, one per
 * n-gram order 2..max_ngram_size, so max_ngram_size-1 entries), all required then;
 * engram_pad_id (raw token id in [0, vocab_size), default none) and engram_compressed_vocab_size
 * (in [1, vocab_size], default 0 = not given) optional. Any engram_* key without
 * engram_layer_ids is an error.
 *
 * Ownership: a parsed config owns its arrays; release it with dp_v4_config_fini(). Calls never
 * log; on failure they write one line to err (when err is non-NULL and err_len > 0) and leave
 * *ret untouched. A parsed config is read-only; every const call may run from any thread.
 */
#ifndef DP_MODEL_CONFIG_H
#define DP_MODEL_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Limits: anything beyond is refused as absurd (the real V4 sizes are far below). */
#define DP_V4_LAYERS_MAX       4096      /* num_hidden_layers */
#define DP_V4_DIM_MAX          (1 << 20) /* hidden, head_dim, ranks, intermediate, index_head_dim */
#define DP_V4_VOCAB_MAX        (1 << 26) /* vocab_size */
#define DP_V4_HEADS_MAX        4096      /* attention / index heads, o_groups */
#define DP_V4_EXPERTS_MAX      65536     /* n_routed_experts */
#define DP_V4_HC_MULT_MAX      64        /* hc_mult */
#define DP_V4_ITERS_MAX        (1 << 20) /* hc_sinkhorn_iters */
#define DP_V4_RATE_MAX         (1 << 20) /* compress rates */
#define DP_V4_EOS_MAX          64        /* entries of an eos_token_id list */
#define DP_V4_ENGRAM_NGRAM_MAX 16        /* engram_max_ngram_size */
#define DP_V4_ENGRAM_TABLE_MAX (1LL << 40) /* one engram_vocab_size entry */

enum dp_v4_layer_type {
	DP_V4_LAYER_SLIDING, /* "sliding_attention": sliding window only, main rope */
	DP_V4_LAYER_CSA,     /* "compressed_sparse_attention": + overlapping compressor + indexer */
	DP_V4_LAYER_HCA,     /* "heavily_compressed_attention": + non-overlapping compressor */
	DP_V4_LAYER_TYPE_MAX,
};

enum dp_v4_mlp_type {
	DP_V4_MLP_HASH_MOE, /* "hash_moe": experts from tid2eid[token] */
	DP_V4_MLP_MOE,      /* "moe": top-k of score + e_score_correction_bias */
	DP_V4_MLP_TYPE_MAX,
};

enum dp_v4_scoring {
	DP_V4_SCORING_SQRTSOFTPLUS, /* sqrt(softplus(logit)) */
	DP_V4_SCORING_SOFTMAX,      /* softmax over the experts */
	DP_V4_SCORING_SIGMOID,      /* sigmoid(logit) */
	DP_V4_SCORING_MAX,
};

enum dp_v4_rope_which {
	DP_V4_ROPE_MAIN,     /* sliding-only layers */
	DP_V4_ROPE_COMPRESS, /* CSA/HCA layers: q, kv, compressed entries, indexer */
	DP_V4_ROPE_WHICH_MAX,
};

enum dp_v4_rope_type {
	DP_V4_ROPE_DEFAULT,
	DP_V4_ROPE_YARN,
	DP_V4_ROPE_TYPE_MAX,
};

/* One rope, fully resolved (defaults applied). */
struct dp_v4_rope {
	enum dp_v4_rope_type type;
	double theta;                 /* base */
	double partial_rotary_factor; /* as resolved for this rope */
	int dim;                      /* rotated channels: int(head_dim * partial_rotary_factor) */
	double attention_factor;      /* multiplies cos and sin; 1 for default rope */
	/* YaRN only (zero otherwise); values after transformers' defaults. */
	double factor;
	double original_max_position_embeddings;
	double beta_fast; /* 32 when absent or 0 */
	double beta_slow; /* 1 when absent or 0 */
	double mscale;    /* 0 when absent (only used to derive attention_factor) */
	double mscale_all_dim;
};

struct dp_v4_engram {
	int n_layers;                  /* entries of layer_ids; 0: no engram */
	int *layer_ids;                /* as listed (distinct, each in [0, num_hidden_layers)) */
	int max_ngram_size;            /* N: n-grams of order 2..N */
	int n_heads;                   /* hash heads per n-gram order */
	int head_dim;                  /* embedding width per head */
	int n_vocab;                   /* entries of vocab_size: max_ngram_size - 1 */
	int64_t *vocab_size;           /* table size per n-gram order (2, 3, ...) */
	int64_t pad_id;                /* raw token id; -1: not given */
	int64_t compressed_vocab_size; /* 0: not given */
};

struct dp_v4_config {
	/* sizes */
	int vocab_size;
	int hidden_size;
	int moe_intermediate_size;
	int num_hidden_layers;
	int num_attention_heads;
	int num_key_value_heads; /* always 1 */
	int head_dim;
	int q_lora_rank;
	int o_groups;
	int o_lora_rank;
	int index_n_heads;
	int index_head_dim;
	int index_topk;
	int sliding_window;
	int max_position_embeddings;
	int num_nextn_predict_layers; /* MTP layers in upstream checkpoints; never built */

	/* MoE */
	int n_routed_experts;
	int num_experts_per_tok;
	int n_shared_experts; /* always 1 */
	enum dp_v4_scoring scoring_func;
	bool norm_topk_prob; /* stored; the reference normalises regardless */
	double routed_scaling_factor;
	double swiglu_limit;

	/* mHC */
	int hc_mult;
	int hc_sinkhorn_iters;
	double hc_eps;

	double rms_norm_eps;

	/* attention schedule: arrays of num_hidden_layers entries */
	enum dp_v4_layer_type *layer_types;
	enum dp_v4_mlp_type *mlp_layer_types;
	/* compress_rates["compressed_sparse_attention"] and [..."heavily_compressed_attention"];
	 * 0 when absent (allowed only if no layer has that type) */
	int compress_rate_csa;
	int compress_rate_hca;
	int n_layers_of[DP_V4_LAYER_TYPE_MAX];
	int n_mlp_of[DP_V4_MLP_TYPE_MAX];

	/* rope */
	double partial_rotary_factor; /* effective top-level value */
	double rope_theta;
	double compress_rope_theta;
	int rope_dim; /* r, common to both ropes */
	struct dp_v4_rope rope[DP_V4_ROPE_WHICH_MAX];

	/* tokens: -1 means none (null) */
	int64_t bos_token_id;
	int64_t pad_token_id;
	int n_eos;              /* 0..DP_V4_EOS_MAX */
	int64_t *eos_token_ids; /* n_eos entries (NULL when 0) */

	bool tie_word_embeddings;
	bool has_quantization_config; /* config.json carries "quantization_config" (FP8 release) */

	struct dp_v4_engram engram;
};

/*
 * Parse the JSON text (len bytes, need not be NUL-terminated) into *ret. Returns 0, -EINVAL (bad
 * JSON, a wrong type, a value out of range or inconsistent; err says which field and value) or
 * -ENOMEM. ret is untouched on failure.
 */
int dp_v4_config_parse(const char *json_text, size_t len, struct dp_v4_config *ret, char *err,
                       size_t err_len);

/* Read and parse the file at path (a config.json). As dp_v4_config_parse, plus -ENOENT, -EACCES,
 * -EISDIR, -EFBIG (over 16 MiB) or another errno from open/read; messages start with the path. */
int dp_v4_config_load(const char *path, struct dp_v4_config *ret, char *err, size_t err_len);

/* Free what c owns and zero it. Accepts NULL and a zeroed struct; idempotent. */
void dp_v4_config_fini(struct dp_v4_config *c);

/* ---- per-layer helpers (layer must be in [0, num_hidden_layers)) ------- */

static inline enum dp_v4_layer_type dp_v4_layer_type(const struct dp_v4_config *c, int layer)
{
	return c->layer_types[layer];
}

static inline bool dp_v4_is_csa(const struct dp_v4_config *c, int layer)
{
	return c->layer_types[layer] == DP_V4_LAYER_CSA;
}

static inline bool dp_v4_is_hca(const struct dp_v4_config *c, int layer)
{
	return c->layer_types[layer] == DP_V4_LAYER_HCA;
}

static inline bool dp_v4_is_hash_moe(const struct dp_v4_config *c, int layer)
{
	return c->mlp_layer_types[layer] == DP_V4_MLP_HASH_MOE;
}

/* Compress rate m of the layer: 0 for sliding-only layers. */
static inline int dp_v4_compress_rate(const struct dp_v4_config *c, int layer)
{
	switch (c->layer_types[layer]) {
	case DP_V4_LAYER_CSA:
		return c->compress_rate_csa;
	case DP_V4_LAYER_HCA:
		return c->compress_rate_hca;
	default:
		return 0;
	}
}

/* Which rope the layer's attention (and compressor, indexer) uses. */
static inline enum dp_v4_rope_which dp_v4_layer_rope(const struct dp_v4_config *c, int layer)
{
	return c->layer_types[layer] == DP_V4_LAYER_SLIDING ? DP_V4_ROPE_MAIN : DP_V4_ROPE_COMPRESS;
}

/* Index of layer in engram.layer_ids, or -1 when the layer has no Engram. */
int dp_v4_engram_slot(const struct dp_v4_config *c, int layer);

/* Names as in config.json ("sliding_attention", "hash_moe", "sqrtsoftplus", "main", "yarn");
 * NULL when out of range. */
const char *dp_v4_layer_type_name(enum dp_v4_layer_type t);
const char *dp_v4_mlp_type_name(enum dp_v4_mlp_type t);
const char *dp_v4_scoring_name(enum dp_v4_scoring s);
const char *dp_v4_rope_which_name(enum dp_v4_rope_which w);
const char *dp_v4_rope_type_name(enum dp_v4_rope_type t);

/*
 * The inverse frequencies of rope `which`: writes r/2 floats (r = c->rope_dim) to out and
 * returns r/2, or -EINVAL (n < r/2, bad arguments). Computed in float32 operation by operation as
 * transformers does (torch float32 tensors). The one difference is the pow: torch evaluates it
 * with SLEEF's vectorised powf (1-ulp accurate), we round a double pow, so about 1% of the values
 * differ from the reference's `<which>_inv_freq` buffer by 1 ulp (2 after the reciprocal); all
 * values of the test fixtures (including the V4 release's rope) are bit-exact:
 *
 *   p[i]   = fl(theta ^ fl(fl(2i) / r))                        i = 0 .. r/2-1
 *   default:  inv_freq[i] = fl(1 / p[i])
 *   yarn:     extra[i] = fl(1 / p[i]),  inter[i] = fl(1 / fl(factor * p[i]))
 *             cdim(b)  = r * ln(M0 / (b * 2*pi)) / (2 * ln(theta))   (double; M0 =
 *                        original_max_position_embeddings)
 *             low  = max(floor(cdim(beta_fast)), 0),  high = min(ceil(cdim(beta_slow)), r - 1)
 *             (if low == high: high += 0.001)
 *             ramp[i] = clamp(fl(fl(i - low) / (high - low)), 0, 1),  e[i] = fl(1 - ramp[i])
 *             inv_freq[i] = fl(fl(inter[i] * fl(1 - e[i])) + fl(extra[i] * e[i]))
 *
 * (fl = round to float32.) The angle of pair i at position p is fl(fl(p) * inv_freq[i]), and the
 * rotation multiplies cos and sin by c->rope[which].attention_factor, which for yarn is the
 * config's attention_factor if set; else, with mscale and mscale_all_dim both non-zero,
 * g(factor, mscale) / g(factor, mscale_all_dim), else g(factor, 1), where
 * g(s, m) = 0.1 * m * ln(s) + 1 for s > 1 and 1 otherwise. (The flat config form sets it to 1.)
 */
int dp_v4_rope_inv_freq(const struct dp_v4_config *c, enum dp_v4_rope_which which, float *out,
                        int n);

/* One line for a log, e.g. "43 layers (HCA 22, CSA 21), hidden 4096, 64 heads x 512 (rope 64),
 * 256 experts top-6 (3 hash), vocab 129280". Truncated to len like snprintf; 0 or -EINVAL. */
int dp_v4_config_describe(const struct dp_v4_config *c, char *buf, size_t len);

#ifdef __cplusplus
}
#endif

#endif /* DP_MODEL_CONFIG_H */
