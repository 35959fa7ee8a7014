/* SPDX-License-Identifier: MIT */
/*
 * model/config.c — config.json of a DeepSeek-V4 model: defaults, legacy keys, validation, RoPE
 * inverse frequencies. The rules are stated in config.h; this file follows them in order.
 */
#include "model/config.h"

#include <errno.h>
#include <fcntl.h>
#include <float.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/err.h"
#include "base/macros.h"

#define CONFIG_FILE_MAX (16u << 20)

/* Where a message goes: the caller's buffer, maybe none. */
struct errbuf {
	char *buf;
	size_t len;
};

__attribute__((format(printf, 2, 3))) static int fail(struct errbuf *e, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	dp_verrf(e->buf, e->len, fmt, ap);
	va_end(ap);
	return -EINVAL;
}

/* A short rendering of a JSON value for messages: 24, 24.0, "24", true, null, [...]. */
static const char *show(const json_t *v, char *buf, size_t len)
{
	if (!v)
		snprintf(buf, len, "nothing");
	else if (json_is_integer(v))
		snprintf(buf, len, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
	else if (json_is_real(v)) {
		double d = json_real_value(v);

		if (d == floor(d) && fabs(d) < 1e15)
			snprintf(buf, len, "%.1f", d);
		else
			snprintf(buf, len, "%.17g", d);
	} else if (json_is_string(v))
		snprintf(buf, len, "\"%.40s%s\"", json_string_value(v),
		         json_string_length(v) > 40 ? "..." : "");
	else if (json_is_true(v))
		snprintf(buf, len, "true");
	else if (json_is_false(v))
		snprintf(buf, len, "false");
	else if (json_is_null(v))
		snprintf(buf, len, "null");
	else if (json_is_array(v))
		snprintf(buf, len, "a list of %zu", json_array_size(v));
	else
		snprintf(buf, len, "an object");
	return buf;
}

#define SHOW(v) show((v), (char[64]){0}, 64)

/* A present, non-null member (NULL when absent or null). */
static json_t *member(const json_t *o, const char *key)
{
	json_t *v = o ? json_object_get(o, key) : NULL;

	return json_is_null(v) ? NULL : v;
}

/* ---- typed getters: absent -> default; a wrong type is an error ---------- */

static int get_int64(const json_t *o, const char *where, const char *key, bool nullable,
                     long long def, long long min, long long max, long long *out, struct errbuf *e)
{
	json_t *v = json_object_get(o, key);

	if (!v || (nullable && json_is_null(v))) {
		*out = def;
		return 0;
	}
	if (!json_is_integer(v))
		return fail(e, "%s%s: expected an integer, got %s", where, key, SHOW(v));
	long long x = json_integer_value(v);
	if (x < min || x > max)
		return fail(e, "%s%s: %lld is out of range [%lld, %lld]", where, key, x, min, max);
	*out = x;
	return 0;
}

static int get_int(const json_t *o, const char *key, int def, int min, int max, int *out,
                   struct errbuf *e)
{
	long long x = 0;
	int r = get_int64(o, "", key, false, def, min, max, &x, e);

	if (r == 0)
		*out = (int)x;
	return r;
}

/* A number (integer or real), finite. nullable: null reads as absent. */
static int get_num(const json_t *o, const char *where, const char *key, bool nullable, double def,
                   double *out, bool *present, struct errbuf *e)
{
	json_t *v = json_object_get(o, key);

	if (present)
		*present = false;
	if (!v || (nullable && json_is_null(v))) {
		*out = def;
		return 0;
	}
	if (!json_is_number(v))
		return fail(e, "%s%s: expected a number, got %s", where, key, SHOW(v));
	double x = json_number_value(v);
	if (!isfinite(x))
		return fail(e, "%s%s: %g is not finite", where, key, x);
	*out = x;
	if (present)
		*present = true;
	return 0;
}

static int get_bool(const json_t *o, const char *key, bool def, bool *out, struct errbuf *e)
{
	json_t *v = json_object_get(o, key);

	if (!v) {
		*out = def;
		return 0;
	}
	if (!json_is_boolean(v))
		return fail(e, "%s: expected true or false, got %s", key, SHOW(v));
	*out = json_is_true(v);
	return 0;
}

static int get_str(const json_t *o, const char *where, const char *key, const char *def,
                   const char **out, struct errbuf *e)
{
	json_t *v = json_object_get(o, key);

	if (!v) {
		*out = def;
		return 0;
	}
	if (!json_is_string(v))
		return fail(e, "%s%s: expected a string, got %s", where, key, SHOW(v));
	*out = json_string_value(v);
	return 0;
}

static int lookup(const char *const *names, int n, const char *s)
{
	for (int i = 0; i < n; i++)
		if (strcmp(names[i], s) == 0)
			return i;
	return -1;
}

/* ---- names -------------------------------------------------------------- */

static const char *const layer_type_names[DP_V4_LAYER_TYPE_MAX] = {
    [DP_V4_LAYER_SLIDING] = "sliding_attention",
    [DP_V4_LAYER_CSA] = "compressed_sparse_attention",
    [DP_V4_LAYER_HCA] = "heavily_compressed_attention",
};
static const char *const mlp_type_names[DP_V4_MLP_TYPE_MAX] = {
    [DP_V4_MLP_HASH_MOE] = "hash_moe",
    [DP_V4_MLP_MOE] = "moe",
};
static const char *const scoring_names[DP_V4_SCORING_MAX] = {
    [DP_V4_SCORING_SQRTSOFTPLUS] = "sqrtsoftplus",
    [DP_V4_SCORING_SOFTMAX] = "softmax",
    [DP_V4_SCORING_SIGMOID] = "sigmoid",
};
static const char *const rope_which_names[DP_V4_ROPE_WHICH_MAX] = {
    [DP_V4_ROPE_MAIN] = "main",
    [DP_V4_ROPE_COMPRESS] = "compress",
};
static const char *const rope_type_names[DP_V4_ROPE_TYPE_MAX] = {
    [DP_V4_ROPE_DEFAULT] = "default",
    [DP_V4_ROPE_YARN] = "yarn",
};

const char *dp_v4_layer_type_name(enum dp_v4_layer_type t)
{
	return (unsigned)t < DP_V4_LAYER_TYPE_MAX ? layer_type_names[t] : NULL;
}

const char *dp_v4_mlp_type_name(enum dp_v4_mlp_type t)
{
	return (unsigned)t < DP_V4_MLP_TYPE_MAX ? mlp_type_names[t] : NULL;
}

const char *dp_v4_scoring_name(enum dp_v4_scoring s)
{
	return (unsigned)s < DP_V4_SCORING_MAX ? scoring_names[s] : NULL;
}

const char *dp_v4_rope_which_name(enum dp_v4_rope_which w)
{
	return (unsigned)w < DP_V4_ROPE_WHICH_MAX ? rope_which_names[w] : NULL;
}

const char *dp_v4_rope_type_name(enum dp_v4_rope_type t)
{
	return (unsigned)t < DP_V4_ROPE_TYPE_MAX ? rope_type_names[t] : NULL;
}

/* ---- scalar fields ------------------------------------------------------ */

/* clang-format off */
struct int_field {
	const char *key;
	size_t off;
	int def, min, max;
};

#define F(k, d, lo, hi) { #k, offsetof(struct dp_v4_config, k), d, lo, hi }
static const struct int_field int_fields[] = {
	F(vocab_size, 129280, 1, DP_V4_VOCAB_MAX),
	F(hidden_size, 4096, 1, DP_V4_DIM_MAX),
	F(moe_intermediate_size, 2048, 1, DP_V4_DIM_MAX),
	F(num_hidden_layers, 43, 1, DP_V4_LAYERS_MAX),
	F(num_attention_heads, 64, 1, DP_V4_HEADS_MAX),
	F(num_key_value_heads, 1, INT_MIN, INT_MAX),
	F(head_dim, 512, 1, DP_V4_DIM_MAX),
	F(q_lora_rank, 1024, 1, DP_V4_DIM_MAX),
	F(o_groups, 8, 1, DP_V4_HEADS_MAX),
	F(o_lora_rank, 1024, 1, DP_V4_DIM_MAX),
	F(index_n_heads, 64, 1, DP_V4_HEADS_MAX),
	F(index_head_dim, 128, 1, DP_V4_DIM_MAX),
	F(index_topk, 512, 1, INT_MAX),
	F(sliding_window, 128, 1, INT_MAX),
	F(max_position_embeddings, 1048576, 1, INT_MAX),
	F(num_nextn_predict_layers, 1, 0, DP_V4_LAYERS_MAX),
	F(n_routed_experts, 256, 1, DP_V4_EXPERTS_MAX),
	F(num_experts_per_tok, 6, 1, DP_V4_EXPERTS_MAX),
	F(n_shared_experts, 1, INT_MIN, INT_MAX),
	F(hc_mult, 4, 1, DP_V4_HC_MULT_MAX),
	F(hc_sinkhorn_iters, 20, 1, DP_V4_ITERS_MAX),
};
#undef F

enum num_rule { POSITIVE, NON_NEGATIVE };

struct num_field {
	const char *key;
	size_t off;
	double def;
	enum num_rule rule;
};

#define F(k, d, r) { #k, offsetof(struct dp_v4_config, k), d, r }
static const struct num_field num_fields[] = {
	F(routed_scaling_factor, 1.5, POSITIVE),
	F(swiglu_limit, 10.0, POSITIVE),
	F(hc_eps, 1.0e-6, NON_NEGATIVE),
	F(rms_norm_eps, 1.0e-6, NON_NEGATIVE),
	F(rope_theta, 10000.0, POSITIVE),
	F(compress_rope_theta, 160000.0, POSITIVE),
};
#undef F
/* clang-format on */

static int parse_scalars(const json_t *root, struct dp_v4_config *c, struct errbuf *e)
{
	int r;

	for (size_t i = 0; i < DP_ARRAY_SIZE(int_fields); i++) {
		const struct int_field *f = &int_fields[i];

		r = get_int(root, f->key, f->def, f->min, f->max, (int *)((char *)c + f->off), e);
		if (r)
			return r;
	}
	for (size_t i = 0; i < DP_ARRAY_SIZE(num_fields); i++) {
		const struct num_field *f = &num_fields[i];
		double *x = (double *)((char *)c + f->off);

		r = get_num(root, "", f->key, false, f->def, x, NULL, e);
		if (r)
			return r;
		if (f->rule == POSITIVE && !(*x > 0))
			return fail(e, "%s: %g must be > 0", f->key, *x);
		if (f->rule == NON_NEGATIVE && !(*x >= 0))
			return fail(e, "%s: %g must be >= 0", f->key, *x);
	}

	if (c->num_key_value_heads != 1)
		return fail(e,
		            "num_key_value_heads: %d is not supported: DeepSeek-V4 attention has "
		            "exactly one shared KV head",
		            c->num_key_value_heads);
	if (c->n_shared_experts != 1)
		return fail(e,
		            "n_shared_experts: %d is not supported: the reference builds exactly "
		            "one shared expert of width moe_intermediate_size",
		            c->n_shared_experts);
	if (c->num_experts_per_tok > c->n_routed_experts)
		return fail(e, "num_experts_per_tok: %d exceeds n_routed_experts (%d)",
		            c->num_experts_per_tok, c->n_routed_experts);

	bool attention_bias = false, mlp_bias = false;
	if ((r = get_bool(root, "norm_topk_prob", true, &c->norm_topk_prob, e)) ||
	    (r = get_bool(root, "tie_word_embeddings", false, &c->tie_word_embeddings, e)) ||
	    (r = get_bool(root, "attention_bias", false, &attention_bias, e)) ||
	    (r = get_bool(root, "mlp_bias", false, &mlp_bias, e)))
		return r;
	if (attention_bias)
		return fail(e,
		            "attention_bias: true is not supported (V4 projections have no bias)");
	if (mlp_bias)
		return fail(e, "mlp_bias: true is not supported (V4 experts have no bias)");

	const char *s;
	if ((r = get_str(root, "", "scoring_func", "sqrtsoftplus", &s, e)))
		return r;
	int k = lookup(scoring_names, DP_V4_SCORING_MAX, s);
	if (k < 0)
		return fail(
		    e, "scoring_func: \"%.40s\" is not one of sqrtsoftplus, softmax, sigmoid", s);
	c->scoring_func = (enum dp_v4_scoring)k;

	if ((r = get_str(root, "", "hidden_act", "silu", &s, e)))
		return r;
	if (strcmp(s, "silu") != 0 && strcmp(s, "swish") != 0)
		return fail(e, "hidden_act: \"%.40s\" is not supported (V4 experts use silu)", s);

	const char *model_type = NULL;
	if ((r = get_str(root, "", "model_type", NULL, &model_type, e)))
		return r;
	if (model_type && strcmp(model_type, "deepseek_v4") != 0)
		return fail(e, "model_type: \"%.40s\" is not \"deepseek_v4\"", model_type);

	c->has_quantization_config = member(root, "quantization_config") != NULL;
	return 0;
}

/* A token id names a row of the vocabulary: an eos id beyond it would never
 * be sampled, so no generation would end on it. */
static int check_token_id(const char *key, long long x, int vocab_size, struct errbuf *e)
{
	if (x >= vocab_size)
		return fail(e, "%s: %lld is not a token id (not below vocab_size %d)", key, x,
		            vocab_size);
	return 0;
}

/* bos/pad: int or null; eos: int, list of ints, or null. Each id is below
 * vocab_size. */
static int parse_tokens(const json_t *root, struct dp_v4_config *c, struct errbuf *e)
{
	long long x = 0;
	int r;

	if ((r = get_int64(root, "", "bos_token_id", true, -1, 0, LLONG_MAX, &x, e)) ||
	    (r = check_token_id("bos_token_id", x, c->vocab_size, e)))
		return r;
	c->bos_token_id = json_object_get(root, "bos_token_id") ? x : 0;
	if ((r = get_int64(root, "", "pad_token_id", true, -1, 0, LLONG_MAX, &x, e)) ||
	    (r = check_token_id("pad_token_id", x, c->vocab_size, e)))
		return r;
	c->pad_token_id = x;

	json_t *v = json_object_get(root, "eos_token_id");
	if (!v) {
		c->eos_token_ids = malloc(sizeof(int64_t));
		if (!c->eos_token_ids)
			return -ENOMEM;
		c->eos_token_ids[0] = 1;
		c->n_eos = 1;
		return 0;
	}
	if (json_is_null(v))
		return 0;
	if (json_is_integer(v)) {
		if ((r = get_int64(root, "", "eos_token_id", false, 0, 0, LLONG_MAX, &x, e)) ||
		    (r = check_token_id("eos_token_id", x, c->vocab_size, e)))
			return r;
		c->eos_token_ids = malloc(sizeof(int64_t));
		if (!c->eos_token_ids)
			return -ENOMEM;
		c->eos_token_ids[0] = x;
		c->n_eos = 1;
		return 0;
	}
	if (!json_is_array(v))
		return fail(e, "eos_token_id: expected an integer or a list of integers, got %s",
		            SHOW(v));
	size_t n = json_array_size(v);
	if (n > DP_V4_EOS_MAX)
		return fail(e, "eos_token_id: %zu entries, at most %d supported", n, DP_V4_EOS_MAX);
	if (n == 0)
		return 0;
	c->eos_token_ids = calloc(n, sizeof(int64_t));
	if (!c->eos_token_ids)
		return -ENOMEM;
	for (size_t i = 0; i < n; i++) {
		json_t *it = json_array_get(v, i);

		if (!json_is_integer(it) || json_integer_value(it) < 0)
			return fail(e,
			            "eos_token_id[%zu]: expected a token id (integer >= 0), got %s",
			            i, SHOW(it));
		char key[32];
		snprintf(key, sizeof(key), "eos_token_id[%zu]", i);
		if ((r = check_token_id(key, json_integer_value(it), c->vocab_size, e)))
			return r;
		c->eos_token_ids[i] = json_integer_value(it);
	}
	c->n_eos = (int)n;
	return 0;
}

/* ---- layer schedule ----------------------------------------------------- */

static int parse_compress_rates(const json_t *root, struct dp_v4_config *c, struct errbuf *e)
{
	json_t *rates = member(root, "compress_rates");
	long long csa = 4, hca = 128;
	int r;

	if (rates) {
		if (!json_is_object(rates))
			return fail(e, "compress_rates: expected an object, got %s", SHOW(rates));
		/* A given dict replaces the default one: a missing entry stays missing. */
		csa = hca = 0;
		if ((r = get_int64(rates, "compress_rates.", "compressed_sparse_attention", false,
		                   0, 1, DP_V4_RATE_MAX, &csa, e)) ||
		    (r = get_int64(rates, "compress_rates.", "heavily_compressed_attention", false,
		                   0, 1, DP_V4_RATE_MAX, &hca, e)))
			return r;
	}
	if ((r = get_int64(root, "", "compress_rate_csa", true, csa, 1, DP_V4_RATE_MAX, &csa, e)) ||
	    (r = get_int64(root, "", "compress_rate_hca", true, hca, 1, DP_V4_RATE_MAX, &hca, e)))
		return r;
	c->compress_rate_csa = (int)csa;
	c->compress_rate_hca = (int)hca;
	return 0;
}

/*
 * A per-layer list of names (layer_types, mlp_layer_types). Returns 1 and fills out[0..n-1] when
 * the key is present, 0 when absent or null, or an error. Entries past n are cut off unchecked
 * (transformers validates only the cut list), but each must still be a string.
 */
static int parse_name_list(const json_t *root, const char *key, int n, const char *const *names,
                           int n_names, int *out, struct errbuf *e)
{
	json_t *v = member(root, key);

	if (!v)
		return 0;
	if (!json_is_array(v))
		return fail(e, "%s: expected a list of strings, got %s", key, SHOW(v));
	size_t len = json_array_size(v);
	if (len < (size_t)n)
		return fail(e, "%s: %zu entries, but num_hidden_layers is %d", key, len, n);
	for (size_t i = 0; i < len; i++) {
		json_t *it = json_array_get(v, i);

		if (!json_is_string(it))
			return fail(e, "%s[%zu]: expected a string, got %s", key, i, SHOW(it));
		if (i >= (size_t)n)
			continue;
		int k = lookup(names, n_names, json_string_value(it));
		if (k < 0) {
			char list[160] = "";

			for (int j = 0; j < n_names; j++)
				snprintf(list + strlen(list), sizeof(list) - strlen(list), "%s%s",
				         j ? ", " : "", names[j]);
			return fail(e, "%s[%zu]: unknown type %s (expected one of %s)", key, i,
			            SHOW(it), list);
		}
		out[i] = k;
	}
	return 1;
}

static int parse_layer_types(const json_t *root, struct dp_v4_config *c, struct errbuf *e)
{
	int n = c->num_hidden_layers;
	int *types = calloc((size_t)n, sizeof(int));
	int *mlp = calloc((size_t)n, sizeof(int));
	int r;

	c->layer_types = calloc((size_t)n, sizeof(*c->layer_types));
	c->mlp_layer_types = calloc((size_t)n, sizeof(*c->mlp_layer_types));
	if (!types || !mlp || !c->layer_types || !c->mlp_layer_types) {
		r = -ENOMEM;
		goto out;
	}

	r = parse_name_list(root, "layer_types", n, layer_type_names, DP_V4_LAYER_TYPE_MAX, types,
	                    e);
	if (r < 0)
		goto out;
	if (r == 0) {
		json_t *ratios = member(root, "compress_ratios");

		if (ratios) {
			if (!json_is_array(ratios)) {
				r = fail(e, "compress_ratios: expected a list of integers, got %s",
				         SHOW(ratios));
				goto out;
			}
			size_t len = json_array_size(ratios);
			/* transformers maps every entry before cutting the list */
			for (size_t i = 0; i < len; i++) {
				json_t *it = json_array_get(ratios, i);
				long long v = json_is_integer(it) ? json_integer_value(it) : -1;
				int t = v == 0     ? DP_V4_LAYER_SLIDING
				        : v == 4   ? DP_V4_LAYER_CSA
				        : v == 128 ? DP_V4_LAYER_HCA
				                   : -1;

				if (t < 0) {
					r = fail(
					    e,
					    "compress_ratios[%zu]: %s is not one of 0, 4, 128 "
					    "(the only values transformers maps to a layer type)",
					    i, SHOW(it));
					goto out;
				}
				if (i < (size_t)n)
					types[i] = t;
			}
			if (len < (size_t)n) {
				r = fail(
				    e, "compress_ratios: %zu entries, but num_hidden_layers is %d",
				    len, n);
				goto out;
			}
		} else {
			/* [HCA, HCA] then, for the tail index i, CSA if i is odd else HCA */
			for (int i = 0; i < n; i++)
				types[i] =
				    i < 2 || (i - 2) % 2 == 0 ? DP_V4_LAYER_HCA : DP_V4_LAYER_CSA;
		}
	}

	r = parse_name_list(root, "mlp_layer_types", n, mlp_type_names, DP_V4_MLP_TYPE_MAX, mlp, e);
	if (r < 0)
		goto out;
	if (r == 0) {
		long long n_hash = 0;

		r = get_int64(root, "", "num_hash_layers", true, 3, 0, INT_MAX, &n_hash, e);
		if (r)
			goto out;
		for (int i = 0; i < n; i++)
			mlp[i] = i < n_hash ? DP_V4_MLP_HASH_MOE : DP_V4_MLP_MOE;
	}

	for (int i = 0; i < n; i++) {
		c->layer_types[i] = (enum dp_v4_layer_type)types[i];
		c->mlp_layer_types[i] = (enum dp_v4_mlp_type)mlp[i];
		c->n_layers_of[types[i]]++;
		c->n_mlp_of[mlp[i]]++;
	}
	if (c->n_layers_of[DP_V4_LAYER_CSA] && !c->compress_rate_csa) {
		r = fail(e,
		         "compress_rates: no \"compressed_sparse_attention\" rate, but layer_types "
		         "has %d such layers",
		         c->n_layers_of[DP_V4_LAYER_CSA]);
		goto out;
	}
	if (c->n_layers_of[DP_V4_LAYER_HCA] && !c->compress_rate_hca) {
		r = fail(e,
		         "compress_rates: no \"heavily_compressed_attention\" rate, but "
		         "layer_types has %d such layers",
		         c->n_layers_of[DP_V4_LAYER_HCA]);
		goto out;
	}
	r = 0;
out:
	free(types);
	free(mlp);
	return r;
}

/* ---- rope --------------------------------------------------------------- */

/* g(s, m) of transformers' YaRN: the attention scaling for scale factor s. */
static double yarn_mscale(double scale, double mscale)
{
	if (scale <= 1)
		return 1.0;
	return 0.1 * mscale * log(scale) + 1.0;
}

/* The rope dim of head_dim * prf, as transformers' int(); must be an even integer in [2, hd]. */
static int rope_dim_of(int head_dim, double prf, const char *where, int *out, struct errbuf *e)
{
	if (!(prf > 0 && prf <= 1))
		return fail(e, "%spartial_rotary_factor: %g is outside (0, 1]", where, prf);
	double p = (double)head_dim * prf;
	int r = (int)p;
	if (p != (double)r || r % 2 || r < 2)
		return fail(e,
		            "%spartial_rotary_factor: head_dim * partial_rotary_factor = %d * %g "
		            "= %.15g is not an even integer >= 2 (the rotated channels form pairs)",
		            where, head_dim, prf, p);
	*out = r;
	return 0;
}

/*
 * Fill one rope from its object o (NULL: default rope). `where` prefixes messages
 * ("rope_parameters.compress."). theta and prf are resolved by the caller; flat says o is the
 * flat form, whose yarn attention_factor defaults to 1.
 */
static int parse_rope(const json_t *o, const char *where, const struct dp_v4_config *c,
                      double theta, double prf, bool flat, struct dp_v4_rope *rp, struct errbuf *e)
{
	const char *type = "default";
	int r;

	memset(rp, 0, sizeof(*rp));
	if (o) {
		json_t *t = member(o, "rope_type") ? member(o, "rope_type") : member(o, "type");

		if (t && !json_is_string(t))
			return fail(e, "%srope_type: expected a string, got %s", where, SHOW(t));
		if (t)
			type = json_string_value(t);
	}
	int k = lookup(rope_type_names, DP_V4_ROPE_TYPE_MAX, type);
	if (k < 0)
		return fail(e, "%srope_type: \"%.40s\" is not supported (only default and yarn)",
		            where, type);
	rp->type = (enum dp_v4_rope_type)k;
	rp->theta = theta;
	rp->partial_rotary_factor = prf;
	rp->attention_factor = 1.0;
	if (!(rp->theta > 0))
		return fail(e, "%srope_theta: %g must be > 0", where, rp->theta);
	if ((r = rope_dim_of(c->head_dim, prf, where, &rp->dim, e)))
		return r;
	if (rp->type != DP_V4_ROPE_YARN)
		return 0;

	if (rp->theta == 1)
		return fail(e, "%srope_theta: 1 cannot be used with yarn (ln(theta) divides)",
		            where);
	bool present;
	if (!json_object_get(o, "factor"))
		return fail(e, "%sfactor: missing, and yarn needs it", where);
	if ((r = get_num(o, where, "original_max_position_embeddings", false,
	                 c->max_position_embeddings, &rp->original_max_position_embeddings, NULL,
	                 e)))
		return r;
	if (!(rp->original_max_position_embeddings > 0))
		return fail(e, "%soriginal_max_position_embeddings: %g must be > 0", where,
		            rp->original_max_position_embeddings);
	if ((r = get_num(o, where, "factor", true, 0, &rp->factor, &present, e)))
		return r;
	if (!present)
		rp->factor = c->max_position_embeddings / rp->original_max_position_embeddings;
	if (!(rp->factor > 0))
		return fail(e, "%sfactor: %g must be > 0", where, rp->factor);
	if ((r = get_num(o, where, "beta_fast", true, 0, &rp->beta_fast, NULL, e)) ||
	    (r = get_num(o, where, "beta_slow", true, 0, &rp->beta_slow, NULL, e)) ||
	    (r = get_num(o, where, "mscale", true, 0, &rp->mscale, NULL, e)) ||
	    (r = get_num(o, where, "mscale_all_dim", true, 0, &rp->mscale_all_dim, NULL, e)))
		return r;
	if (rp->beta_fast < 0 || rp->beta_slow < 0)
		return fail(e, "%sbeta_fast / beta_slow: %g / %g must be >= 0", where,
		            rp->beta_fast, rp->beta_slow);
	if (rp->beta_fast == 0)
		rp->beta_fast = 32;
	if (rp->beta_slow == 0)
		rp->beta_slow = 1;

	/* flat form: the V4 config's setdefault("attention_factor", 1.0); an explicit null stays
	 * null and is derived, as is an absent key in the nested form */
	if ((r = get_num(o, where, "attention_factor", true, 0, &rp->attention_factor, &present,
	                 e)))
		return r;
	if (!present && flat && !json_object_get(o, "attention_factor")) {
		rp->attention_factor = 1.0;
	} else if (!present) {
		if (rp->mscale != 0 && rp->mscale_all_dim != 0)
			rp->attention_factor = yarn_mscale(rp->factor, rp->mscale) /
			                       yarn_mscale(rp->factor, rp->mscale_all_dim);
		else
			rp->attention_factor = yarn_mscale(rp->factor, 1);
	}
	if (!isfinite(rp->attention_factor) || !(rp->attention_factor > 0))
		return fail(e, "%sattention_factor: %g must be finite and > 0", where,
		            rp->attention_factor);
	return 0;
}

static int parse_ropes(const json_t *root, struct dp_v4_config *c, struct errbuf *e)
{
	double prf_json = 0;
	bool prf_given;
	int r;

	if ((r = get_num(root, "", "partial_rotary_factor", true, 0, &prf_json, &prf_given, e)))
		return r;
	c->partial_rotary_factor = prf_json;
	if (!prf_given) {
		long long qk = -1;

		if ((r = get_int64(root, "", "qk_rope_head_dim", true, -1, 0, DP_V4_DIM_MAX, &qk,
		                   e)))
			return r;
		c->partial_rotary_factor = qk >= 0 ? (double)qk / c->head_dim : 64.0 / 512.0;
	}

	/* rope_scaling (legacy) wins when it is a non-empty object, as `rope_scaling or ...` */
	json_t *rp = member(root, "rope_scaling");
	const char *name = "rope_scaling";
	if (rp && json_is_object(rp) && json_object_size(rp) == 0)
		rp = NULL;
	if (!rp) {
		rp = member(root, "rope_parameters");
		name = "rope_parameters";
	}
	if (rp && !json_is_object(rp))
		return fail(e, "%s: expected an object, got %s", name, SHOW(rp));

	if (rp && (json_object_get(rp, "main") || json_object_get(rp, "compress"))) {
		/* nested form */
		for (int w = 0; w < DP_V4_ROPE_WHICH_MAX; w++) {
			json_t *sub = json_object_get(rp, rope_which_names[w]);
			char where[64];
			double theta = 0, prf = 0;
			bool given = false;

			snprintf(where, sizeof(where), "%s.%s.", name, rope_which_names[w]);
			if (!json_is_object(sub))
				return fail(e,
				            "%s.%s: expected an object (the nested form needs both "
				            "\"main\" and \"compress\"), got %s",
				            name, rope_which_names[w], SHOW(sub));
			if ((r = get_num(sub, where, "rope_theta", false, c->rope_theta, &theta,
			                 NULL, e)) ||
			    (r = get_num(sub, where, "partial_rotary_factor", false, 0, &prf,
			                 &given, e)))
				return r;
			if (!given) {
				/* transformers: the top-level key if given; else yarn
				 * re-standardizes with the effective value and default rope
				 * reads 1.0 */
				json_t *t = member(sub, "rope_type") ? member(sub, "rope_type")
				                                     : member(sub, "type");
				bool yarn =
				    json_is_string(t) && strcmp(json_string_value(t), "yarn") == 0;

				prf = prf_given ? prf_json : yarn ? c->partial_rotary_factor : 1.0;
			}
			if ((r = parse_rope(sub, where, c, theta, prf, false, &c->rope[w], e)))
				return r;
		}
	} else {
		char where[64];

		snprintf(where, sizeof(where), "%s.", name);
		/* flat form: main is plain rope; compress takes the object's type and YaRN keys */
		if ((r = parse_rope(NULL, "", c, c->rope_theta, c->partial_rotary_factor, true,
		                    &c->rope[DP_V4_ROPE_MAIN], e)) ||
		    (r = parse_rope(rp, where, c, c->compress_rope_theta, c->partial_rotary_factor,
		                    true, &c->rope[DP_V4_ROPE_COMPRESS], e)))
			return r;
	}

	const struct dp_v4_rope *m = &c->rope[DP_V4_ROPE_MAIN], *k = &c->rope[DP_V4_ROPE_COMPRESS];
	if (m->dim != k->dim)
		return fail(e,
		            "%s: the main rope rotates %d channels (partial_rotary_factor %g) but "
		            "the compress rope %d (%g); differing rope dims are not supported",
		            name, m->dim, m->partial_rotary_factor, k->dim,
		            k->partial_rotary_factor);
	c->rope_dim = m->dim;
	if (c->n_layers_of[DP_V4_LAYER_CSA] && c->rope_dim > c->index_head_dim)
		return fail(e,
		            "index_head_dim: %d is smaller than the rope dim %d (the indexer "
		            "rotates the trailing rope dim of its channels)",
		            c->index_head_dim, c->rope_dim);
	return 0;
}

/* ---- sizes the forward forms -------------------------------------------- */

static bool mul_ok(size_t *acc, long long x)
{
	return x >= 0 && !__builtin_mul_overflow(*acc, (size_t)x, acc);
}

/* Does the product a*b*c*d (bytes of a tensor) fit in size_t? */
static bool bytes_ok(long long a, long long b, long long c, long long d)
{
	size_t acc = 1;

	return mul_ok(&acc, a) && mul_ok(&acc, b) && mul_ok(&acc, c) && mul_ok(&acc, d);
}

static int check_sizes(const struct dp_v4_config *c, struct errbuf *e)
{
	long long hd = (long long)c->num_attention_heads * c->head_dim;
	long long ic = (long long)c->index_n_heads * c->index_head_dim;
	long long gr = (long long)c->o_groups * c->o_lora_rank;
	long long n = c->hc_mult;
	long long D = c->hidden_size;

	if (hd > INT_MAX)
		return fail(e, "num_attention_heads * head_dim = %d * %d exceeds %d",
		            c->num_attention_heads, c->head_dim, INT_MAX);
	if (ic > INT_MAX)
		return fail(e, "index_n_heads * index_head_dim = %d * %d exceeds %d",
		            c->index_n_heads, c->index_head_dim, INT_MAX);
	if (gr > INT_MAX)
		return fail(e, "o_groups * o_lora_rank = %d * %d exceeds %d", c->o_groups,
		            c->o_lora_rank, INT_MAX);
	if (hd % c->o_groups)
		return fail(e,
		            "o_groups: %d does not divide num_attention_heads * head_dim = %d * "
		            "%d = %lld",
		            c->o_groups, c->num_attention_heads, c->head_dim, hd);

	/* the largest tensors, in fp32 bytes */
	if (!bytes_ok(c->vocab_size, D, 4, 1) ||
	    !bytes_ok(c->n_routed_experts, 2LL * c->moe_intermediate_size, D, 4) ||
	    !bytes_ok(hd, c->q_lora_rank, 4, 1) || !bytes_ok(ic, c->q_lora_rank, 4, 1) ||
	    !bytes_ok(gr, hd / c->o_groups, 4, 1) || !bytes_ok((2 + n) * n, n * D, 4, 1) ||
	    !bytes_ok(c->compress_rate_csa, 2LL * c->head_dim, 4, 1) ||
	    !bytes_ok(c->compress_rate_hca, c->head_dim, 4, 1) ||
	    !bytes_ok(c->vocab_size, c->num_experts_per_tok, 8, 1))
		return fail(e,
		            "sizes: a weight tensor of this config would not fit in memory "
		            "(hidden_size %d, vocab_size %d, %d experts of %d)",
		            c->hidden_size, c->vocab_size, c->n_routed_experts,
		            c->moe_intermediate_size);
	return 0;
}

/* ---- engram ------------------------------------------------------------- */

static int parse_engram(const json_t *root, struct dp_v4_config *c, struct errbuf *e)
{
	struct dp_v4_engram *g = &c->engram;
	json_t *ids = member(root, "engram_layer_ids");
	long long x = 0;
	int r;

	g->pad_id = -1;
	if (!ids) {
		const char *key;
		json_t *v;

		json_object_foreach(
		    (json_t *)root, key,
		    v) if (strncmp(key, "engram_", 7) == 0 &&
		           !json_is_null(v)) return fail(e, "%s: given without engram_layer_ids",
		                                         key);
		return 0;
	}
	if (!json_is_array(ids))
		return fail(e, "engram_layer_ids: expected a list of layer indices, got %s",
		            SHOW(ids));
	size_t n = json_array_size(ids);
	if (n == 0)
		return 0;
	if (n > (size_t)c->num_hidden_layers)
		return fail(e, "engram_layer_ids: %zu entries for %d layers", n,
		            c->num_hidden_layers);
	g->layer_ids = calloc(n, sizeof(int));
	if (!g->layer_ids)
		return -ENOMEM;
	g->n_layers = (int)n;
	for (size_t i = 0; i < n; i++) {
		json_t *it = json_array_get(ids, i);

		if (!json_is_integer(it) || json_integer_value(it) < 0 ||
		    json_integer_value(it) >= c->num_hidden_layers)
			return fail(e, "engram_layer_ids[%zu]: %s is not a layer index in [0, %d)",
			            i, SHOW(it), c->num_hidden_layers);
		g->layer_ids[i] = (int)json_integer_value(it);
		for (size_t j = 0; j < i; j++)
			if (g->layer_ids[j] == g->layer_ids[i])
				return fail(e, "engram_layer_ids[%zu]: layer %d is listed twice", i,
				            g->layer_ids[i]);
	}

	static const char *const required[] = {"engram_max_ngram_size", "engram_n_heads",
	                                       "engram_head_dim", "engram_vocab_size"};
	for (size_t i = 0; i < DP_ARRAY_SIZE(required); i++)
		if (!member(root, required[i]))
			return fail(e, "%s: missing, and needed with engram_layer_ids",
			            required[i]);
	if ((r = get_int64(root, "", "engram_max_ngram_size", false, 0, 2, DP_V4_ENGRAM_NGRAM_MAX,
	                   &x, e)))
		return r;
	g->max_ngram_size = (int)x;
	if ((r = get_int64(root, "", "engram_n_heads", false, 0, 1, DP_V4_HEADS_MAX, &x, e)))
		return r;
	g->n_heads = (int)x;
	if ((r = get_int64(root, "", "engram_head_dim", false, 0, 1, DP_V4_DIM_MAX, &x, e)))
		return r;
	g->head_dim = (int)x;

	json_t *vs = member(root, "engram_vocab_size");
	if (!json_is_array(vs))
		return fail(e, "engram_vocab_size: expected a list of table sizes, got %s",
		            SHOW(vs));
	if (json_array_size(vs) != (size_t)(g->max_ngram_size - 1))
		return fail(e,
		            "engram_vocab_size: %zu entries, but engram_max_ngram_size %d needs "
		            "%d (one per n-gram order 2..%d)",
		            json_array_size(vs), g->max_ngram_size, g->max_ngram_size - 1,
		            g->max_ngram_size);
	g->n_vocab = g->max_ngram_size - 1;
	g->vocab_size = calloc((size_t)g->n_vocab, sizeof(int64_t));
	if (!g->vocab_size)
		return -ENOMEM;
	size_t rows = 0;
	for (int i = 0; i < g->n_vocab; i++) {
		json_t *it = json_array_get(vs, (size_t)i);

		if (!json_is_integer(it) || json_integer_value(it) < 1 ||
		    json_integer_value(it) > DP_V4_ENGRAM_TABLE_MAX)
			return fail(e, "engram_vocab_size[%d]: %s is not a table size in [1, %lld]",
			            i, SHOW(it), (long long)DP_V4_ENGRAM_TABLE_MAX);
		g->vocab_size[i] = json_integer_value(it);
		rows += (size_t)g->vocab_size[i];
	}
	if (!bytes_ok((long long)rows, g->n_heads, g->head_dim, 2))
		return fail(e,
		            "engram_vocab_size: the tables (%zu rows x %d heads x %d) would not "
		            "fit in memory",
		            rows, g->n_heads, g->head_dim);

	if ((r = get_int64(root, "", "engram_pad_id", true, -1, 0, c->vocab_size - 1, &x, e)))
		return r;
	g->pad_id = x;
	if ((r = get_int64(root, "", "engram_compressed_vocab_size", true, 0, 1, c->vocab_size, &x,
	                   e)))
		return r;
	g->compressed_vocab_size = x;
	return 0;
}

int dp_v4_engram_slot(const struct dp_v4_config *c, int layer)
{
	if (!c)
		return -1;
	for (int i = 0; i < c->engram.n_layers; i++)
		if (c->engram.layer_ids[i] == layer)
			return i;
	return -1;
}

/* ---- entry points -------------------------------------------------------- */

void dp_v4_config_fini(struct dp_v4_config *c)
{
	if (!c)
		return;
	free(c->layer_types);
	free(c->mlp_layer_types);
	free(c->eos_token_ids);
	free(c->engram.layer_ids);
	free(c->engram.vocab_size);
	memset(c, 0, sizeof(*c));
}

int dp_v4_config_parse(const char *json_text, size_t len, struct dp_v4_config *ret, char *err,
                       size_t err_len)
{
	struct errbuf e = {err, err_len};
	struct dp_v4_config c;
	json_error_t jerr;
	json_t *root;
	int r;

	if (err && err_len)
		err[0] = '\0';
	if (!json_text || !ret)
		return fail(&e, "dp_v4_config_parse: NULL argument");
	root = json_loadb(json_text, len, 0, &jerr);
	if (!root)
		return fail(&e, "invalid JSON at line %d, column %d: %s", jerr.line, jerr.column,
		            jerr.text);
	if (!json_is_object(root)) {
		r = fail(&e, "expected a JSON object at the top level, got %s", SHOW(root));
		json_decref(root);
		return r;
	}

	memset(&c, 0, sizeof(c));
	r = parse_scalars(root, &c, &e);
	if (!r)
		r = parse_tokens(root, &c, &e);
	if (!r)
		r = parse_compress_rates(root, &c, &e);
	if (!r)
		r = parse_layer_types(root, &c, &e);
	if (!r)
		r = check_sizes(&c, &e);
	if (!r)
		r = parse_ropes(root, &c, &e);
	if (!r)
		r = parse_engram(root, &c, &e);
	json_decref(root);
	if (r) {
		if (r == -ENOMEM)
			fail(&e, "out of memory");
		dp_v4_config_fini(&c);
		return r;
	}
	*ret = c;
	return 0;
}

int dp_v4_config_load(const char *path, struct dp_v4_config *ret, char *err, size_t err_len)
{
	struct errbuf e = {err, err_len};
	struct stat st;
	char *text = NULL;
	size_t got = 0;
	int fd, r;

	if (!path || !ret)
		return fail(&e, "dp_v4_config_load: NULL argument");
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		r = -errno;
		fail(&e, "%s: %s", path, strerror(-r));
		return r;
	}
	if (fstat(fd, &st) < 0) {
		r = -errno;
		fail(&e, "%s: %s", path, strerror(-r));
		goto out;
	}
	if (S_ISDIR(st.st_mode)) {
		r = -EISDIR;
		fail(&e, "%s: is a directory (expected config.json)", path);
		goto out;
	}
	if (!S_ISREG(st.st_mode) || st.st_size > (off_t)CONFIG_FILE_MAX) {
		r = S_ISREG(st.st_mode) ? -EFBIG : -EINVAL;
		fail(&e, "%s: not a regular file of at most %u bytes", path, CONFIG_FILE_MAX);
		goto out;
	}
	text = malloc((size_t)st.st_size + 1);
	if (!text) {
		r = -ENOMEM;
		fail(&e, "%s: out of memory", path);
		goto out;
	}
	while (got < (size_t)st.st_size) {
		ssize_t n = read(fd, text + got, (size_t)st.st_size - got);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			r = -errno;
			fail(&e, "%s: read: %s", path, strerror(-r));
			goto out;
		}
		if (n == 0)
			break;
		got += (size_t)n;
	}
	r = dp_v4_config_parse(text, got, ret, err, err_len);
	if (r)
		dp_err_prefix(err, err_len, path);
out:
	free(text);
	close(fd);
	return r;
}

/* ---- rope inverse frequencies ------------------------------------------- */

int dp_v4_rope_inv_freq(const struct dp_v4_config *c, enum dp_v4_rope_which which, float *out,
                        int n)
{
	if (!c || !out || (unsigned)which >= DP_V4_ROPE_WHICH_MAX)
		return -EINVAL;
	const struct dp_v4_rope *rp = &c->rope[which];
	int r = rp->dim, half = r / 2;
	if (half <= 0 || n < half)
		return -EINVAL;

	/* Float32 step by step, as torch does: every assignment to a float rounds (ISO C mode does
	 * not contract separate statements into fused multiply-adds). */
	const float base = (float)rp->theta;
	double lo = 0, hi = 0;
	if (rp->type == DP_V4_ROPE_YARN) {
		const double two_pi = 2.0 * 3.14159265358979323846;

		lo = (double)r *
		     log(rp->original_max_position_embeddings / (rp->beta_fast * two_pi)) /
		     (2 * log(rp->theta));
		hi = (double)r *
		     log(rp->original_max_position_embeddings / (rp->beta_slow * two_pi)) /
		     (2 * log(rp->theta));
		lo = fmax(floor(lo), 0);
		hi = fmin(ceil(hi), r - 1);
		if (lo == hi)
			hi += 0.001;
	}
	const float factor = (float)rp->factor, flo = (float)lo, span = (float)(hi - lo);
	for (int i = 0; i < half; i++) {
		float ex = (float)(2 * i) / (float)r;
		float p = (float)pow((double)base, (double)ex);
		float extra = 1.0f / p;

		if (rp->type != DP_V4_ROPE_YARN) {
			out[i] = extra;
			continue;
		}
		float fp = factor * p;
		float inter = 1.0f / fp;
		float ramp = fminf(fmaxf(((float)i - flo) / span, 0.0f), 1.0f);
		float ef = 1.0f - ramp;
		float keep = 1.0f - ef;
		float a = inter * keep;
		float b = extra * ef;

		out[i] = a + b;
	}
	return half;
}

int dp_v4_config_describe(const struct dp_v4_config *c, char *buf, size_t len)
{
	if (!c || !buf || !len || !c->layer_types)
		return -EINVAL;
	snprintf(buf, len,
	         "%d layers (sliding %d, CSA %d, HCA %d), hidden %d, %d heads x %d (rope %d), "
	         "%d experts top-%d (%d hash layers), vocab %d%s",
	         c->num_hidden_layers, c->n_layers_of[DP_V4_LAYER_SLIDING],
	         c->n_layers_of[DP_V4_LAYER_CSA], c->n_layers_of[DP_V4_LAYER_HCA], c->hidden_size,
	         c->num_attention_heads, c->head_dim, c->rope_dim, c->n_routed_experts,
	         c->num_experts_per_tok, c->n_mlp_of[DP_V4_MLP_HASH_MOE], c->vocab_size,
	         c->engram.n_layers ? ", engram" : "");
	return 0;
}
