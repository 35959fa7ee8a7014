/* SPDX-License-Identifier: MIT */
/*
 * model/config.h: config.json resolves as transformers 5.17 resolves it, and every config the
 * forward cannot run is refused with a message naming the field.
 *
 * The expected values come from transformers itself: tests/model/fixtures/gen_fixtures.py ran
 * DeepseekV4Config.from_dict + DeepseekV4RotaryEmbedding on each fixtures/config_<name>.json and
 * wrote fixtures/config_<name>.expected.json (resolved fields, per-layer types, inv_freq buffers
 * and attention scaling of both ropes).
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/macros.h"
#include "model/config.h"

static const char *fixtures(void)
{
	const char *d = getenv("DP_TEST_FIXTURES");

	return d && *d ? d : "tests/model/fixtures";
}

static char *fixture_path(const char *name)
{
	static char buf[4096];

	snprintf(buf, sizeof(buf), "%s/%s", fixtures(), name);
	return buf;
}

static int parse(const char *json, struct dp_v4_config *c, char *err, size_t len)
{
	return dp_v4_config_parse(json, strlen(json), c, err, len);
}

/* Parse json; expect -EINVAL with a message containing every needle. */
static void expect_refused(const char *json, const char *needle1, const char *needle2)
{
	struct dp_v4_config c;
	char err[512] = "";
	int r;

	memset(&c, 0x5a, sizeof(c));
	r = parse(json, &c, err, sizeof(err));
	cr_expect_eq(r, -EINVAL, "refused: %s (r=%d)", json, r);
	cr_expect(strstr(err, needle1), "message \"%s\" names \"%s\" (for %s)", err, needle1, json);
	if (needle2)
		cr_expect(strstr(err, needle2), "message \"%s\" names \"%s\" (for %s)", err,
		          needle2, json);
	unsigned char *p = (unsigned char *)&c;
	for (size_t i = 0; i < sizeof(c); i++)
		if (p[i] != 0x5a) {
			cr_expect_fail("output touched on failure (%s)", json);
			break;
		}
}

static void expect_ok(const char *json, struct dp_v4_config *c)
{
	char err[512] = "";
	int r = parse(json, c, err, sizeof(err));

	cr_assert_eq(r, 0, "accepted: %s: %s", json, err);
}

/* ---- against transformers ----------------------------------------------- */

static bool float_close_ulp(float a, float b, int ulps)
{
	float x = b;

	if (a == b)
		return true;
	for (int i = 0; i < ulps; i++) {
		if (a == nextafterf(x, a))
			return true;
		x = nextafterf(x, a);
	}
	return false;
}

static void compare_with_expected(const char *name)
{
	char cfg_name[128], exp_name[128], err[512] = "";
	struct dp_v4_config c;
	json_error_t jerr;

	snprintf(cfg_name, sizeof(cfg_name), "config_%s.json", name);
	snprintf(exp_name, sizeof(exp_name), "config_%s.expected.json", name);
	int r = dp_v4_config_load(fixture_path(cfg_name), &c, err, sizeof(err));
	cr_assert_eq(r, 0, "%s loads: %s", cfg_name, err);
	json_t *x = json_load_file(fixture_path(exp_name), 0, &jerr);
	cr_assert(x, "%s: %s", exp_name, jerr.text);

	static const struct {
		const char *key;
		size_t off;
	} ints[] = {
#define I(k) {#k, offsetof(struct dp_v4_config, k)}
	    I(vocab_size),
	    I(hidden_size),
	    I(moe_intermediate_size),
	    I(num_hidden_layers),
	    I(num_attention_heads),
	    I(num_key_value_heads),
	    I(head_dim),
	    I(q_lora_rank),
	    I(o_groups),
	    I(o_lora_rank),
	    I(index_n_heads),
	    I(index_head_dim),
	    I(index_topk),
	    I(sliding_window),
	    I(max_position_embeddings),
	    I(num_nextn_predict_layers),
	    I(n_routed_experts),
	    I(num_experts_per_tok),
	    I(n_shared_experts),
	    I(hc_mult),
	    I(hc_sinkhorn_iters),
#undef I
	};
	for (size_t i = 0; i < DP_ARRAY_SIZE(ints); i++) {
		int got = *(const int *)((const char *)&c + ints[i].off);
		json_int_t want = json_integer_value(json_object_get(x, ints[i].key));

		cr_expect_eq(got, want, "%s: %s = %d, transformers %lld", name, ints[i].key, got,
		             (long long)want);
	}
	static const struct {
		const char *key;
		size_t off;
	} nums[] = {
#define N(k) {#k, offsetof(struct dp_v4_config, k)}
	    N(routed_scaling_factor), N(swiglu_limit), N(hc_eps),
	    N(rms_norm_eps),          N(rope_theta),   N(compress_rope_theta),
	    N(partial_rotary_factor),
#undef N
	};
	for (size_t i = 0; i < DP_ARRAY_SIZE(nums); i++) {
		double got = *(const double *)((const char *)&c + nums[i].off);
		double want = json_number_value(json_object_get(x, nums[i].key));

		cr_expect_eq(got, want, "%s: %s = %.17g, transformers %.17g", name, nums[i].key,
		             got, want);
	}
	cr_expect_str_eq(dp_v4_scoring_name(c.scoring_func),
	                 json_string_value(json_object_get(x, "scoring_func")));
	cr_expect_eq(c.norm_topk_prob, json_is_true(json_object_get(x, "norm_topk_prob")));
	cr_expect_eq(c.tie_word_embeddings,
	             json_is_true(json_object_get(x, "tie_word_embeddings")));
	cr_expect_eq(c.rope_dim, json_integer_value(json_object_get(x, "qk_rope_head_dim")),
	             "%s: rope dim", name);

	json_t *lt = json_object_get(x, "layer_types"), *mt = json_object_get(x, "mlp_layer_types");
	cr_assert_eq(json_array_size(lt), (size_t)c.num_hidden_layers);
	for (int l = 0; l < c.num_hidden_layers; l++) {
		cr_expect_str_eq(dp_v4_layer_type_name(c.layer_types[l]),
		                 json_string_value(json_array_get(lt, l)), "%s: layer %d", name, l);
		cr_expect_str_eq(dp_v4_mlp_type_name(c.mlp_layer_types[l]),
		                 json_string_value(json_array_get(mt, l)), "%s: mlp %d", name, l);
	}
	json_t *rates = json_object_get(x, "compress_rates");
	cr_expect_eq(c.compress_rate_csa,
	             json_integer_value(json_object_get(rates, "compressed_sparse_attention")));
	cr_expect_eq(c.compress_rate_hca,
	             json_integer_value(json_object_get(rates, "heavily_compressed_attention")));

	json_t *bos = json_object_get(x, "bos_token_id"), *pad = json_object_get(x, "pad_token_id");
	cr_expect_eq(c.bos_token_id, json_is_null(bos) ? -1 : json_integer_value(bos));
	cr_expect_eq(c.pad_token_id, json_is_null(pad) ? -1 : json_integer_value(pad));
	json_t *eos = json_object_get(x, "eos_token_id");
	cr_assert_eq((size_t)c.n_eos, json_array_size(eos), "%s: eos count", name);
	for (int i = 0; i < c.n_eos; i++)
		cr_expect_eq(c.eos_token_ids[i], json_integer_value(json_array_get(eos, i)));

	for (int w = 0; w < DP_V4_ROPE_WHICH_MAX; w++) {
		json_t *rp = json_object_get(json_object_get(x, "rope"), dp_v4_rope_which_name(w));
		const struct dp_v4_rope *mine = &c.rope[w];
		json_t *inv = json_object_get(rp, "inv_freq");
		float buf[DP_V4_DIM_MAX / 1024];
		int half;

		cr_assert(rp);
		cr_expect_str_eq(dp_v4_rope_type_name(mine->type),
		                 json_string_value(json_object_get(rp, "type")), "%s: %s type",
		                 name, dp_v4_rope_which_name(w));
		cr_expect_eq(mine->theta, json_number_value(json_object_get(rp, "theta")),
		             "%s: %s theta %g", name, dp_v4_rope_which_name(w), mine->theta);
		cr_expect_eq(mine->dim, json_integer_value(json_object_get(rp, "dim")));
		cr_expect(fabs(mine->attention_factor -
		               json_number_value(json_object_get(rp, "attention_factor"))) < 1e-15,
		          "%s: %s attention factor %.17g vs %.17g", name, dp_v4_rope_which_name(w),
		          mine->attention_factor,
		          json_number_value(json_object_get(rp, "attention_factor")));
		half =
		    dp_v4_rope_inv_freq(&c, (enum dp_v4_rope_which)w, buf, (int)DP_ARRAY_SIZE(buf));
		cr_assert_eq(half, (int)json_array_size(inv), "%s: %s inv_freq length", name,
		             dp_v4_rope_which_name(w));
		for (int i = 0; i < half; i++) {
			float want = (float)json_number_value(json_array_get(inv, i));

			cr_expect(float_close_ulp(buf[i], want, 2),
			          "%s: %s inv_freq[%d] = %.9g, transformers %.9g", name,
			          dp_v4_rope_which_name(w), i, buf[i], want);
		}
	}
	json_decref(x);
	dp_v4_config_fini(&c);
}

Test(config, minimal_config_gets_transformers_defaults)
{
	compare_with_expected("minimal");
}

Test(config, legacy_keys_fold_as_transformers_folds_them)
{
	struct dp_v4_config c;
	char err[256];

	compare_with_expected("legacy");
	cr_assert_eq(dp_v4_config_load(fixture_path("config_legacy.json"), &c, err, sizeof(err)),
	             0);
	cr_expect(c.has_quantization_config);
	cr_expect_eq(c.rope[DP_V4_ROPE_COMPRESS].factor, 16);
	cr_expect_eq(c.rope[DP_V4_ROPE_COMPRESS].original_max_position_embeddings, 256);
	dp_v4_config_fini(&c);
}

Test(config, nested_yarn_inv_freq_and_scaling_match_transformers)
{
	compare_with_expected("yarn_nested");
}

Test(config, flat_yarn_inv_freq_matches_transformers_at_release_sizes)
{
	compare_with_expected("yarn_flat");
}

Test(config, save_pretrained_output_reads_back_as_written)
{
	compare_with_expected("tiny");
}

/* ---- accepted forms ----------------------------------------------------- */

Test(config, longer_layer_lists_are_cut_to_num_hidden_layers)
{
	struct dp_v4_config c;

	expect_ok("{\"num_hidden_layers\": 2, \"layer_types\": [\"sliding_attention\", "
	          "\"compressed_sparse_attention\", \"not_checked_past_the_end\"], "
	          "\"mlp_layer_types\": [\"moe\", \"hash_moe\", \"moe\"]}",
	          &c);
	cr_expect_eq(c.layer_types[1], DP_V4_LAYER_CSA);
	cr_expect_eq(c.mlp_layer_types[0], DP_V4_MLP_MOE);
	cr_expect_eq(c.n_layers_of[DP_V4_LAYER_SLIDING], 1);
	cr_expect_eq(dp_v4_compress_rate(&c, 0), 0);
	cr_expect_eq(dp_v4_compress_rate(&c, 1), 4);
	cr_expect_eq(dp_v4_layer_rope(&c, 0), DP_V4_ROPE_MAIN);
	cr_expect_eq(dp_v4_layer_rope(&c, 1), DP_V4_ROPE_COMPRESS);
	cr_expect(dp_v4_is_csa(&c, 1) && !dp_v4_is_hca(&c, 1) && dp_v4_is_hash_moe(&c, 1));
	dp_v4_config_fini(&c);
}

Test(config, default_schedule_starts_with_two_hca_layers_then_interleaves)
{
	static const enum dp_v4_layer_type want[] = {DP_V4_LAYER_HCA, DP_V4_LAYER_HCA,
	                                             DP_V4_LAYER_HCA, DP_V4_LAYER_CSA,
	                                             DP_V4_LAYER_HCA, DP_V4_LAYER_CSA};
	struct dp_v4_config c;

	expect_ok("{\"num_hidden_layers\": 6, \"num_hash_layers\": 0}", &c);
	for (int l = 0; l < 6; l++) {
		cr_expect_eq(c.layer_types[l], want[l], "layer %d", l);
		cr_expect_eq(c.mlp_layer_types[l], DP_V4_MLP_MOE);
	}
	dp_v4_config_fini(&c);
}

Test(config, eos_token_id_may_be_an_int_a_list_or_null)
{
	struct dp_v4_config c;

	expect_ok("{\"eos_token_id\": 5, \"bos_token_id\": null}", &c);
	cr_expect_eq(c.n_eos, 1);
	cr_expect_eq(c.eos_token_ids[0], 5);
	cr_expect_eq(c.bos_token_id, -1);
	dp_v4_config_fini(&c);
	expect_ok("{\"eos_token_id\": [2, 3, 4]}", &c);
	cr_expect_eq(c.n_eos, 3);
	cr_expect_eq(c.eos_token_ids[2], 4);
	cr_expect_eq(c.bos_token_id, 0);
	dp_v4_config_fini(&c);
	expect_ok("{\"eos_token_id\": null}", &c);
	cr_expect_eq(c.n_eos, 0);
	cr_expect_null(c.eos_token_ids);
	dp_v4_config_fini(&c);
	expect_refused("{\"eos_token_id\": [1, \"2\"]}", "eos_token_id[1]", "\"2\"");
	expect_refused("{\"eos_token_id\": -1}", "eos_token_id", "-1");
	expect_refused("{\"pad_token_id\": 129280}", "pad_token_id", "129280");
}

/* An end-of-sequence id the model can never sample ends no generation: a
 * typo in config.json must not serve a model that runs to max_new_tokens. */
Test(config, token_ids_beyond_the_vocabulary_are_refused)
{
	struct dp_v4_config c;

	expect_refused("{\"vocab_size\": 300, \"eos_token_id\": 300}", "eos_token_id", "300");
	expect_refused("{\"vocab_size\": 300, \"eos_token_id\": 129279}", "eos_token_id",
	               "vocab_size");
	expect_refused("{\"vocab_size\": 300, \"eos_token_id\": [1, 2, 999]}", "eos_token_id[2]",
	               "999");
	expect_refused("{\"vocab_size\": 300, \"eos_token_id\": [1, -2]}", "eos_token_id[1]", "-2");
	expect_refused("{\"vocab_size\": 300, \"bos_token_id\": 300}", "bos_token_id", "300");
	expect_refused("{\"bos_token_id\": -3}", "bos_token_id", "-3");
	expect_refused("{\"vocab_size\": 300, \"pad_token_id\": 300}", "pad_token_id", "300");
	expect_refused("{\"pad_token_id\": -1}", "pad_token_id", "-1");
	/* the last id of the vocabulary is an id */
	expect_ok("{\"vocab_size\": 300, \"eos_token_id\": [299], \"bos_token_id\": 299, "
	          "\"pad_token_id\": 299}",
	          &c);
	cr_expect_eq(c.eos_token_ids[0], 299);
	cr_expect_eq(c.bos_token_id, 299);
	dp_v4_config_fini(&c);
}

Test(config, integer_where_a_float_is_expected_is_accepted)
{
	struct dp_v4_config c;

	expect_ok("{\"routed_scaling_factor\": 2, \"hc_eps\": 0}", &c);
	cr_expect_eq(c.routed_scaling_factor, 2.0);
	cr_expect_eq(c.hc_eps, 0.0);
	dp_v4_config_fini(&c);
}

Test(config, engram_keys_are_parsed_when_present)
{
	struct dp_v4_config c;

	expect_ok("{\"num_hidden_layers\": 4, \"engram_layer_ids\": [1, 3], "
	          "\"engram_max_ngram_size\": 3, \"engram_n_heads\": 8, \"engram_head_dim\": 64, "
	          "\"engram_vocab_size\": [646400, 646401], \"engram_pad_id\": 2, "
	          "\"engram_compressed_vocab_size\": 100000}",
	          &c);
	cr_expect_eq(c.engram.n_layers, 2);
	cr_expect_eq(c.engram.max_ngram_size, 3);
	cr_expect_eq(c.engram.n_vocab, 2);
	cr_expect_eq(c.engram.vocab_size[1], 646401);
	cr_expect_eq(c.engram.pad_id, 2);
	cr_expect_eq(c.engram.compressed_vocab_size, 100000);
	cr_expect_eq(dp_v4_engram_slot(&c, 3), 1);
	cr_expect_eq(dp_v4_engram_slot(&c, 0), -1);
	dp_v4_config_fini(&c);

	expect_ok("{}", &c);
	cr_expect_eq(c.engram.n_layers, 0, "absent = no engram");
	cr_expect_eq(dp_v4_engram_slot(&c, 1), -1);
	dp_v4_config_fini(&c);
}

Test(config, engram_keys_are_validated)
{
#define E                                                                                          \
	"\"num_hidden_layers\": 4, \"engram_max_ngram_size\": 3, \"engram_n_heads\": 8, "          \
	"\"engram_head_dim\": 64"
	expect_refused("{" E ", \"engram_layer_ids\": [1], \"engram_vocab_size\": [10]}",
	               "engram_vocab_size", "needs 2");
	expect_refused("{" E ", \"engram_layer_ids\": [4], \"engram_vocab_size\": [10, 10]}",
	               "engram_layer_ids[0]", "[0, 4)");
	expect_refused("{" E ", \"engram_layer_ids\": [1, 1], \"engram_vocab_size\": [10, 10]}",
	               "engram_layer_ids[1]", "twice");
	expect_refused("{" E ", \"engram_layer_ids\": [1], \"engram_vocab_size\": [10, 0]}",
	               "engram_vocab_size[1]", "0");
	expect_refused("{" E ", \"engram_layer_ids\": [1], \"engram_vocab_size\": [10, 10], "
	               "\"engram_pad_id\": 200000}",
	               "engram_pad_id", "200000");
	expect_refused("{\"engram_layer_ids\": [1], \"engram_vocab_size\": [10, 10]}",
	               "engram_max_ngram_size", "missing");
	expect_refused("{\"engram_n_heads\": 8}", "engram_n_heads", "without engram_layer_ids");
#undef E
}

/* ---- refused ------------------------------------------------------------- */

Test(config, unknown_layer_type_is_refused)
{
	expect_refused("{\"num_hidden_layers\": 2, \"layer_types\": [\"sliding_attention\", "
	               "\"full_attention\"]}",
	               "layer_types[1]", "\"full_attention\"");
	expect_refused("{\"num_hidden_layers\": 1, \"mlp_layer_types\": [\"dense\"]}",
	               "mlp_layer_types[0]", "\"dense\"");
}

Test(config, list_shorter_than_num_hidden_layers_is_refused)
{
	expect_refused("{\"num_hidden_layers\": 3, \"layer_types\": [\"sliding_attention\"]}",
	               "layer_types: 1 entries", "num_hidden_layers is 3");
	expect_refused("{\"num_hidden_layers\": 3, \"mlp_layer_types\": [\"moe\", \"moe\"]}",
	               "mlp_layer_types: 2 entries", NULL);
	expect_refused("{\"num_hidden_layers\": 3, \"compress_ratios\": [0, 4]}",
	               "compress_ratios: 2 entries", NULL);
}

Test(config, legacy_compress_ratio_other_than_0_4_128_is_refused)
{
	expect_refused("{\"num_hidden_layers\": 2, \"compress_ratios\": [0, 8]}",
	               "compress_ratios[1]", "8");
	/* transformers maps every entry, also those past num_hidden_layers */
	expect_refused("{\"num_hidden_layers\": 2, \"compress_ratios\": [0, 4, 3]}",
	               "compress_ratios[2]", "3");
}

Test(config, used_attention_type_without_compress_rate_is_refused)
{
	expect_refused("{\"num_hidden_layers\": 2, \"compress_rates\": "
	               "{\"compressed_sparse_attention\": 8}}",
	               "heavily_compressed_attention", "2 such layers");
	expect_refused("{\"compress_rates\": {\"compressed_sparse_attention\": 0}}",
	               "compress_rates.compressed_sparse_attention", "0");
	expect_refused("{\"compress_rate_hca\": -4}", "compress_rate_hca", "-4");
}

Test(config, dims_that_do_not_divide_are_refused)
{
	/* 64 heads x 512 = 32768 is not divisible by 3 */
	expect_refused("{\"o_groups\": 3}", "o_groups", "3");
	/* 512 * 0.3 = 153.6 */
	expect_refused("{\"partial_rotary_factor\": 0.3}", "partial_rotary_factor", "153.6");
	/* odd rope dim */
	expect_refused("{\"head_dim\": 10, \"partial_rotary_factor\": 0.5}",
	               "partial_rotary_factor", "not an even integer");
	expect_refused("{\"qk_rope_head_dim\": 7}", "not an even integer", NULL);
	expect_refused("{\"partial_rotary_factor\": 1.5}", "partial_rotary_factor", "(0, 1]");
	expect_refused("{\"partial_rotary_factor\": 0}", "partial_rotary_factor", "(0, 1]");
	/* the indexer rotates rope_dim of its index_head_dim channels (only with CSA layers) */
	expect_refused("{\"index_head_dim\": 32}", "index_head_dim", "32");

	struct dp_v4_config c;
	expect_ok("{\"num_hidden_layers\": 2, \"index_head_dim\": 32, \"layer_types\": "
	          "[\"sliding_attention\", \"heavily_compressed_attention\"]}",
	          &c);
	dp_v4_config_fini(&c);
	/* (H*d) % g == 0 suffices, as in the reference: 6 heads x 4 in 4 groups */
	expect_ok("{\"num_attention_heads\": 6, \"head_dim\": 4, \"o_groups\": 4, "
	          "\"partial_rotary_factor\": 0.5}",
	          &c);
	dp_v4_config_fini(&c);
}

Test(config, wrong_json_types_are_refused)
{
	expect_refused("{\"hidden_size\": 24.0}", "hidden_size", "expected an integer, got 24.0");
	expect_refused("{\"hidden_size\": \"24\"}", "hidden_size", "\"24\"");
	expect_refused("{\"hidden_size\": true}", "hidden_size", "true");
	expect_refused("{\"hidden_size\": null}", "hidden_size", "null");
	expect_refused("{\"rms_norm_eps\": \"1e-6\"}", "rms_norm_eps", "expected a number");
	expect_refused("{\"tie_word_embeddings\": 1}", "tie_word_embeddings", "true or false");
	expect_refused("{\"layer_types\": \"sliding_attention\"}", "layer_types",
	               "expected a list");
	expect_refused("{\"num_hidden_layers\": 1, \"layer_types\": [3]}", "layer_types[0]",
	               "expected a string");
	expect_refused("{\"compress_rates\": [4, 128]}", "compress_rates", "expected an object");
	expect_refused("{\"scoring_func\": 1}", "scoring_func", "expected a string");
	expect_refused("{\"rope_parameters\": \"yarn\"}", "rope_parameters", "expected an object");
	expect_refused("{\"rope_parameters\": {\"rope_type\": 7}}", "rope_type", "7");
	expect_refused("{\"model_type\": \"deepseek_v3\"}", "model_type", "deepseek_v3");
}

Test(config, non_positive_sizes_are_refused)
{
	static const char *const keys[] = {
	    "vocab_size",
	    "hidden_size",
	    "moe_intermediate_size",
	    "num_hidden_layers",
	    "num_attention_heads",
	    "head_dim",
	    "q_lora_rank",
	    "o_groups",
	    "o_lora_rank",
	    "index_n_heads",
	    "index_head_dim",
	    "index_topk",
	    "sliding_window",
	    "n_routed_experts",
	    "num_experts_per_tok",
	    "hc_mult",
	    "hc_sinkhorn_iters",
	    "max_position_embeddings",
	};
	for (size_t i = 0; i < DP_ARRAY_SIZE(keys); i++) {
		char json[128];

		snprintf(json, sizeof(json), "{\"%s\": 0}", keys[i]);
		expect_refused(json, keys[i], "out of range");
		snprintf(json, sizeof(json), "{\"%s\": -5}", keys[i]);
		expect_refused(json, keys[i], "-5");
	}
	expect_refused("{\"swiglu_limit\": 0}", "swiglu_limit", "> 0");
	expect_refused("{\"routed_scaling_factor\": -1.5}", "routed_scaling_factor", "> 0");
	expect_refused("{\"rms_norm_eps\": -1e-6}", "rms_norm_eps", ">= 0");
	expect_refused("{\"rope_theta\": 0}", "rope_theta", "> 0");
}

Test(config, absurd_sizes_are_refused)
{
	expect_refused("{\"vocab_size\": 1000000000000}", "vocab_size", "1000000000000");
	expect_refused("{\"hidden_size\": 2097152}", "hidden_size", "out of range");
	/* each within limits, product past INT_MAX */
	expect_refused("{\"num_attention_heads\": 4096, \"head_dim\": 1048576, \"o_groups\": 1}",
	               "num_attention_heads * head_dim", NULL);
	expect_refused("{\"index_n_heads\": 4096, \"index_head_dim\": 1048576}",
	               "index_n_heads * index_head_dim", NULL);
	expect_refused("{\"num_hidden_layers\": 100000}", "num_hidden_layers", "out of range");
	expect_refused("{\"eos_token_id\": [1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,"
	               "1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,"
	               "1,1,1]}",
	               "eos_token_id", "at most");
}

Test(config, top_k_above_experts_is_refused)
{
	expect_refused("{\"n_routed_experts\": 4, \"num_experts_per_tok\": 5}",
	               "num_experts_per_tok", "n_routed_experts (4)");
}

Test(config, unsupported_choices_are_refused)
{
	expect_refused("{\"scoring_func\": \"topk\"}", "scoring_func", "\"topk\"");
	expect_refused("{\"num_key_value_heads\": 8}", "num_key_value_heads", "8");
	expect_refused("{\"n_shared_experts\": 2}", "n_shared_experts", "2");
	expect_refused("{\"hidden_act\": \"gelu\"}", "hidden_act", "\"gelu\"");
	expect_refused("{\"attention_bias\": true}", "attention_bias", NULL);
	expect_refused("{\"mlp_bias\": true}", "mlp_bias", NULL);
	expect_refused("{\"rope_parameters\": {\"rope_type\": \"linear\", \"factor\": 2.0}}",
	               "rope_type", "\"linear\"");

	struct dp_v4_config c;
	expect_ok("{\"scoring_func\": \"softmax\", \"hidden_act\": \"swish\"}", &c);
	cr_expect_eq(c.scoring_func, DP_V4_SCORING_SOFTMAX);
	dp_v4_config_fini(&c);
}

Test(config, yarn_without_factor_is_refused)
{
	expect_refused("{\"rope_parameters\": {\"rope_type\": \"yarn\", "
	               "\"original_max_position_embeddings\": 4096}}",
	               "rope_parameters.factor", "missing");
	expect_refused("{\"rope_parameters\": {\"main\": {}, \"compress\": {\"type\": \"yarn\"}}}",
	               "rope_parameters.compress.factor", "missing");
	expect_refused("{\"rope_scaling\": {\"type\": \"yarn\", \"factor\": 4, \"beta_fast\": -1}}",
	               "rope_scaling.beta_fast", NULL);

	/* factor null: max_position_embeddings / original_max_position_embeddings */
	struct dp_v4_config c;
	expect_ok("{\"rope_parameters\": {\"rope_type\": \"yarn\", \"factor\": null, "
	          "\"original_max_position_embeddings\": 65536}}",
	          &c);
	cr_expect_eq(c.rope[DP_V4_ROPE_COMPRESS].factor, 16.0);
	cr_expect_eq(c.rope[DP_V4_ROPE_COMPRESS].attention_factor, 1.0);
	cr_expect_eq(c.rope[DP_V4_ROPE_MAIN].type, DP_V4_ROPE_DEFAULT);
	dp_v4_config_fini(&c);
}

Test(config, nested_rope_form_needs_both_parts_and_equal_dims)
{
	expect_refused("{\"rope_parameters\": {\"main\": {\"rope_type\": \"default\"}}}",
	               "rope_parameters.compress", "expected an object");
	/* main without a partial_rotary_factor rotates all of head_dim (as transformers does),
	 * compress (yarn) the effective 0.125 */
	expect_refused(
	    "{\"rope_parameters\": {\"main\": {}, \"compress\": {\"rope_type\": \"yarn\", "
	    "\"factor\": 2}}}",
	    "differing rope dims", NULL);
}

Test(config, invalid_json_is_refused)
{
	expect_refused("{\"vocab_size\": 12,", "invalid JSON", "line 1");
	expect_refused("", "invalid JSON", NULL);
	expect_refused("[1, 2]", "JSON object", "a list of 2");
	expect_refused("{\"a\": NaN}", "invalid JSON", NULL);
}

Test(config, missing_file_is_enoent_and_names_the_path)
{
	struct dp_v4_config c;
	char err[512] = "";

	cr_expect_eq(dp_v4_config_load("/nonexistent/dir/config.json", &c, err, sizeof(err)),
	             -ENOENT);
	cr_expect(strstr(err, "/nonexistent/dir/config.json"), "%s", err);
	cr_expect_eq(dp_v4_config_load(fixtures(), &c, err, sizeof(err)), -EISDIR);
	cr_expect(strstr(err, "directory"), "%s", err);
}

Test(config, load_prefixes_parse_errors_with_the_path)
{
	char path[] = "/tmp/dp_config_XXXXXX";
	int fd = mkstemp(path);
	struct dp_v4_config c;
	char err[512] = "";

	cr_assert_geq(fd, 0);
	cr_assert_eq(write(fd, "{\"o_groups\": 3}", 15), 15);
	close(fd);
	cr_expect_eq(dp_v4_config_load(path, &c, err, sizeof(err)), -EINVAL);
	cr_expect(strstr(err, path) && strstr(err, "o_groups"), "%s", err);
	unlink(path);
}

Test(config, null_arguments_and_tiny_error_buffers_are_safe)
{
	struct dp_v4_config c;
	char err[4];

	cr_expect_eq(dp_v4_config_parse(NULL, 0, &c, NULL, 0), -EINVAL);
	cr_expect_eq(dp_v4_config_parse("{}", 2, NULL, NULL, 0), -EINVAL);
	cr_expect_eq(dp_v4_config_parse("{\"o_groups\": 3}", 15, &c, err, sizeof(err)), -EINVAL);
	cr_expect_eq(strlen(err), 3u, "truncated, terminated");
	dp_v4_config_fini(NULL);
	memset(&c, 0, sizeof(c));
	dp_v4_config_fini(&c);
	dp_v4_config_fini(&c);
}

Test(config, inv_freq_needs_room_for_half_the_rope_dim)
{
	struct dp_v4_config c;
	float buf[32];
	char line[256];

	expect_ok("{}", &c);
	cr_expect_eq(c.rope_dim, 64);
	cr_expect_eq(dp_v4_rope_inv_freq(&c, DP_V4_ROPE_MAIN, buf, 31), -EINVAL);
	cr_expect_eq(dp_v4_rope_inv_freq(&c, DP_V4_ROPE_WHICH_MAX, buf, 32), -EINVAL);
	cr_expect_eq(dp_v4_rope_inv_freq(&c, DP_V4_ROPE_COMPRESS, buf, 32), 32);
	cr_expect_eq(buf[0], 1.0f);
	cr_expect_eq(dp_v4_config_describe(&c, line, sizeof(line)), 0);
	cr_expect(strstr(line, "43 layers") && strstr(line, "CSA 20") && strstr(line, "HCA 23"),
	          "%s", line);
	dp_v4_config_fini(&c);
}
