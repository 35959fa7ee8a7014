/* SPDX-License-Identifier: MIT */
/*
 * model/weights.h: the tensors transformers writes for a config are exactly what the checker
 * expects (in all three spellings), and a checkpoint that does not fit its config is refused
 * with the tensor, the expected and the found shape.
 *
 * fixtures/config_tiny.json and fixtures/tiny_tensors.json were written by
 * fixtures/gen_fixtures.py from transformers 5.17: the config as save_pretrained wrote it, and
 * the (name, dtype, shape) of every tensor in its model.safetensors ("saved") and in
 * model.state_dict() ("state_dict"). The tests write zero-filled checkpoints with those names
 * and shapes into temporary directories.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <string.h>

#include "st-writer.h"
#include "base/macros.h"
#include "model/config.h"
#include "model/safetensors.h"
#include "model/weights.h"

static char dir[4096];
static struct dp_v4_config cfg;
static json_t *tensors;

static const char *fixtures(void)
{
	const char *d = getenv("DP_TEST_FIXTURES");

	return d && *d ? d : "tests/model/fixtures";
}

static void load_config(const char *name)
{
	char path[4200], err[512] = "";

	snprintf(path, sizeof(path), "%s/%s", fixtures(), name);
	cr_assert_eq(dp_v4_config_load(path, &cfg, err, sizeof(err)), 0, "%s", err);
}

static void setup(void)
{
	char path[4200];
	json_error_t jerr;

	cr_assert(stw_tmpdir(dir, sizeof(dir)), "mkdtemp");
	load_config("config_tiny.json");
	snprintf(path, sizeof(path), "%s/tiny_tensors.json", fixtures());
	tensors = json_load_file(path, 0, &jerr);
	cr_assert(tensors, "%s: %s", path, jerr.text);
}

static void teardown(void)
{
	stw_rm_rf(dir);
	dp_v4_config_fini(&cfg);
	json_decref(tensors);
}

TestSuite(weights, .init = setup, .fini = teardown);

/* One tensor of a checkpoint being built. */
struct item {
	char name[256];
	char dtype[16];
	int ndim;
	int64_t shape[8];
	void *data; /* NULL: zeros */
};

struct ckpt {
	struct item it[512];
	size_t n;
};

static const char *st_dtype(const char *d)
{
	if (strcmp(d, "float32") == 0)
		return "F32";
	if (strcmp(d, "int64") == 0)
		return "I64";
	return d;
}

/* The tensors of list "saved" or "state_dict". */
static void from_fixture(struct ckpt *k, const char *list)
{
	json_t *l = json_object_get(tensors, list), *e;
	size_t i;

	cr_assert(json_is_array(l));
	k->n = 0;
	json_array_foreach(l, i, e)
	{
		struct item *it = &k->it[k->n++];
		json_t *shape = json_array_get(e, 2);

		cr_assert_lt(k->n, 512u);
		memset(it, 0, sizeof(*it));
		snprintf(it->name, sizeof(it->name), "%s", json_string_value(json_array_get(e, 0)));
		snprintf(it->dtype, sizeof(it->dtype), "%s",
		         st_dtype(json_string_value(json_array_get(e, 1))));
		it->ndim = (int)json_array_size(shape);
		for (int d = 0; d < it->ndim; d++)
			it->shape[d] = json_integer_value(json_array_get(shape, (size_t)d));
	}
}

static struct item *find_item(struct ckpt *k, const char *name)
{
	for (size_t i = 0; i < k->n; i++)
		if (strcmp(k->it[i].name, name) == 0)
			return &k->it[i];
	cr_assert_fail("fixture has no tensor %s", name);
	return NULL;
}

static void drop(struct ckpt *k, const char *name)
{
	struct item *it = find_item(k, name);

	*it = k->it[--k->n];
}

static struct item *add(struct ckpt *k, const char *name, const char *dtype, int ndim, int64_t d0,
                        int64_t d1)
{
	struct item *it = &k->it[k->n++];

	memset(it, 0, sizeof(*it));
	snprintf(it->name, sizeof(it->name), "%s", name);
	snprintf(it->dtype, sizeof(it->dtype), "%s", dtype);
	it->ndim = ndim;
	it->shape[0] = d0;
	it->shape[1] = d1;
	return it;
}

static size_t elem_size(const char *dtype)
{
	return strcmp(dtype, "I64") == 0 ? 8 : strcmp(dtype, "F32") == 0 ? 4 : 2;
}

/* Write the checkpoint as dir/model.safetensors. */
static void write_ckpt(const struct ckpt *k)
{
	struct stw_tensor *t = calloc(k->n, sizeof(*t));
	char path[4200];

	for (size_t i = 0; i < k->n; i++) {
		size_t numel = 1;

		for (int d = 0; d < k->it[i].ndim; d++)
			numel *= (size_t)k->it[i].shape[d];
		t[i].name = k->it[i].name;
		t[i].dtype = k->it[i].dtype;
		t[i].ndim = k->it[i].ndim;
		memcpy(t[i].shape, k->it[i].shape, sizeof(t[i].shape));
		t[i].data = k->it[i].data;
		t[i].bytes = numel * elem_size(k->it[i].dtype);
	}
	snprintf(path, sizeof(path), "%s/model.safetensors", dir);
	cr_assert_eq(stw_write(path, t, k->n, "{\"format\": \"pt\"}"), 0);
	free(t);
}

/* Open dir and run the checker; returns its result, message in err. */
static int check_dir(unsigned flags, char *err, size_t len, struct dp_v4_weights_stats *stats)
{
	struct dp_st *st;
	struct dp_v4_weights *w;
	char e2[512];
	int r;

	cr_assert_eq(dp_st_open_dir(dir, &st, e2, sizeof(e2)), 0, "%s", e2);
	r = dp_v4_weights_new(&cfg, st, flags, &w, err, len);
	if (!r) {
		if (stats)
			dp_v4_weights_stats(w, stats);
		dp_v4_weights_free(w);
	}
	cr_expect_eq(dp_v4_weights_check(&cfg, st, flags, NULL, 0), r, "check agrees with new");
	dp_st_free(st);
	return r;
}

static void expect_refused(const struct ckpt *k, const char *n1, const char *n2, const char *n3)
{
	char err[1024] = "";

	write_ckpt(k);
	cr_expect_eq(check_dir(0, err, sizeof(err), NULL), -EINVAL, "refused (%s)", err);
	cr_expect(strstr(err, n1), "message \"%s\" contains \"%s\"", err, n1);
	if (n2)
		cr_expect(strstr(err, n2), "message \"%s\" contains \"%s\"", err, n2);
	if (n3)
		cr_expect(strstr(err, n3), "message \"%s\" contains \"%s\"", err, n3);
}

static struct ckpt k;

Test(weights, checkpoint_saved_by_transformers_fits_its_config)
{
	struct dp_v4_weights_stats stats;
	struct dp_st *st;
	struct dp_v4_weights *w;
	struct dp_st_tensor t;
	char err[1024] = "";

	from_fixture(&k, "saved");
	write_ckpt(&k);
	cr_assert_eq(check_dir(0, err, sizeof(err), &stats), 0, "%s", err);
	cr_expect_eq(stats.n_used, k.n, "every saved tensor is used");
	cr_expect_eq(stats.n_ignored + stats.n_extra, 0);

	/* accessors: config_tiny is sliding, CSA, HCA, CSA and hash, moe, hash, moe */
	cr_assert_eq(dp_st_open_dir(dir, &st, NULL, 0), 0);
	cr_assert_eq(dp_v4_weights_new(&cfg, st, 0, &w, NULL, 0), 0);
	cr_expect_eq(dp_v4_weights_layer(w, 0, DP_V4_W_CMP_KV, &t), -ENOENT,
	             "sliding: no compressor");
	cr_expect_eq(dp_v4_weights_layer(w, 2, DP_V4_W_IDX_KV, &t), -ENOENT, "HCA: no indexer");
	cr_expect_eq(dp_v4_weights_layer(w, 1, DP_V4_W_TID2EID, &t), -ENOENT, "moe: no tid2eid");
	cr_expect_eq(dp_v4_weights_layer(w, 0, DP_V4_W_ROUTER_BIAS, &t), -ENOENT);
	cr_assert_eq(dp_v4_weights_layer(w, 1, DP_V4_W_IDX_Q_B, &t), 0);
	cr_expect_str_eq(t.name, "model.layers.1.attn.indexer.wq_b.weight");
	cr_expect(t.shape[0] == 30 && t.shape[1] == 14, "[nI*c, Q] = [3*10, 14]");
	cr_assert_eq(dp_v4_weights_layer(w, 2, DP_V4_W_CMP_APE, &t), 0);
	cr_expect(t.shape[0] == 4 && t.shape[1] == 12, "HCA ape [mH, d]");
	cr_assert_eq(dp_v4_weights_layer(w, 2, DP_V4_W_TID2EID, &t), 0);
	cr_expect_eq(t.dtype, DP_ST_I64);
	cr_assert_eq(dp_v4_weights_expert(w, 3, 6, DP_V4_EXPERT_DOWN, &t), 0);
	cr_expect_str_eq(t.name, "model.layers.3.ffn.experts.6.w2.weight");
	cr_expect(t.shape[0] == 20 && t.shape[1] == 9);
	cr_expect_eq(dp_v4_weights_expert(w, 3, 7, DP_V4_EXPERT_DOWN, &t), -EINVAL);
	cr_expect_eq(dp_v4_weights_layer(w, 4, DP_V4_W_KV, &t), -EINVAL);
	cr_assert_eq(dp_v4_weights_global(w, DP_V4_W_LM_HEAD, &t), 0);
	cr_expect_str_eq(t.name, "head.weight");
	cr_assert_eq(dp_v4_weights_global(w, DP_V4_W_HC_HEAD_FN, &t), 0);
	cr_expect(t.shape[0] == 3 && t.shape[1] == 60);
	cr_expect_str_eq(dp_v4_layer_tensor_name(DP_V4_W_Q_B), "self_attn.q_b_proj.weight");
	cr_expect_str_eq(dp_v4_global_tensor_name(DP_V4_W_EMBED), "model.embed_tokens.weight");
	cr_expect_null(dp_v4_layer_tensor_name(DP_V4_W_LAYER_MAX));
	dp_v4_weights_free(w);
	dp_v4_weights_free(NULL);
	dp_st_free(st);
}

Test(weights, module_names_with_fused_experts_fit_and_slice_per_expert)
{
	struct dp_st *st;
	struct dp_v4_weights *w;
	struct dp_st_tensor t;
	char err[1024] = "";
	/* layer 1 gate_up_proj [E=7, 2I=18, D=20]: element value = its flat index */
	static float gu[7 * 18 * 20], dn[7 * 20 * 9];
	float v;

	for (size_t i = 0; i < DP_ARRAY_SIZE(gu); i++)
		gu[i] = (float)i;
	for (size_t i = 0; i < DP_ARRAY_SIZE(dn); i++)
		dn[i] = (float)i;
	from_fixture(&k, "state_dict");
	find_item(&k, "model.layers.1.mlp.experts.gate_up_proj")->data = gu;
	find_item(&k, "model.layers.1.mlp.experts.down_proj")->data = dn;
	write_ckpt(&k);
	cr_assert_eq(dp_st_open_dir(dir, &st, NULL, 0), 0);
	cr_assert_eq(dp_v4_weights_new(&cfg, st, 0, &w, err, sizeof(err)), 0, "%s", err);

	cr_assert_eq(dp_v4_weights_expert(w, 1, 2, DP_V4_EXPERT_GATE, &t), 0);
	cr_expect(t.ndim == 2 && t.shape[0] == 9 && t.shape[1] == 20 && t.numel == 180);
	cr_assert_eq(dp_st_read_f32(&t, 0, 1, &v), 0);
	cr_expect_eq(v, 2 * 18 * 20, "gate of expert 2 starts at row 0 of its block");
	cr_assert_eq(dp_v4_weights_expert(w, 1, 2, DP_V4_EXPERT_UP, &t), 0);
	cr_assert_eq(dp_st_read_f32(&t, 179, 1, &v), 0);
	cr_expect_eq(v, 2 * 18 * 20 + 9 * 20 + 179, "up rows follow the gate rows");
	cr_assert_eq(dp_v4_weights_expert(w, 1, 6, DP_V4_EXPERT_DOWN, &t), 0);
	cr_expect(t.shape[0] == 20 && t.shape[1] == 9);
	cr_assert_eq(dp_st_read_f32(&t, 0, 1, &v), 0);
	cr_expect_eq(v, 6 * 20 * 9);
	cr_expect_eq(dp_st_read_f32(&t, 180, 1, &v), -ERANGE, "the view ends with the expert");
	cr_assert_eq(dp_v4_weights_global(w, DP_V4_W_LM_HEAD, &t), 0);
	cr_expect_str_eq(t.name, "lm_head.weight");
	dp_v4_weights_free(w);
	dp_st_free(st);
}

/* saved name -> upstream name */
static void to_upstream(char *name)
{
	static const char *const map[][2] = {
	    {"model.embed_tokens.weight", "embed.weight"},
	    {"model.norm.weight", "norm.weight"},
	    {"model.hc_head.hc_fn", "hc_head_fn"},
	    {"model.hc_head.hc_base", "hc_head_base"},
	    {"model.hc_head.hc_scale", "hc_head_scale"},
	};
	for (size_t i = 0; i < DP_ARRAY_SIZE(map); i++)
		if (strcmp(name, map[i][0]) == 0) {
			strcpy(name, map[i][1]);
			return;
		}
	if (strncmp(name, "model.", 6) == 0)
		memmove(name, name + 6, strlen(name + 6) + 1);
	/* the release's attn.kv_norm, saved by transformers as attn.norm */
	size_t n = strlen(name);
	const char *saved = ".attn.norm.weight";
	if (n > strlen(saved) && strcmp(name + n - strlen(saved), saved) == 0)
		strcpy(name + n - strlen(saved), ".attn.kv_norm.weight");
}

Test(weights, upstream_names_without_model_prefix_fit)
{
	struct dp_v4_weights_stats stats;
	char err[1024] = "";

	from_fixture(&k, "saved");
	for (size_t i = 0; i < k.n; i++)
		to_upstream(k.it[i].name);
	/* transformers' spelling of the MTP layer (one past the last) is ignored */
	add(&k, "layers.4.attn.wq_a.weight", "F32", 2, 14, 20);
	write_ckpt(&k);
	cr_assert_eq(check_dir(0, err, sizeof(err), &stats), 0, "%s", err);
	cr_expect_eq(stats.n_ignored, 1);
	cr_expect_eq(stats.n_used, k.n - 1);
	cr_expect(!stats.has_mtp, "no mtp.0.* tensor: no MTP block, and that loads");
}

Test(weights, partial_mtp_block_is_refused_naming_the_missing_tensor)
{
	char err[1024] = "";

	from_fixture(&k, "saved");
	for (size_t i = 0; i < k.n; i++)
		to_upstream(k.it[i].name);
	add(&k, "mtp.0.attn.wq_a.weight", "F32", 2, 14, 20);
	write_ckpt(&k);
	cr_expect_eq(check_dir(0, err, sizeof(err), NULL), -EINVAL);
	cr_expect(strstr(err, "MTP block 0") && strstr(err, "missing") && strstr(err, "mtp.0."),
	          "%s", err);
}

Test(weights, half_precision_weights_are_accepted)
{
	char err[1024] = "";

	from_fixture(&k, "saved");
	for (size_t i = 0; i < k.n; i++)
		if (strcmp(k.it[i].dtype, "F32") == 0)
			strcpy(k.it[i].dtype, i % 2 ? "BF16" : "F16");
	write_ckpt(&k);
	cr_expect_eq(check_dir(0, err, sizeof(err), NULL), 0, "%s", err);
}

Test(weights, missing_tensor_is_named_with_every_spelling)
{
	from_fixture(&k, "saved");
	drop(&k, "model.layers.2.attn.compressor.wkv.weight");
	expect_refused(&k, "layer 2 (heavily_compressed_attention, hash_moe)",
	               "missing self_attn.compressor.kv_proj.weight [x*d, D] = [12, 20]",
	               "'layers.2.attn.compressor.wkv.weight'");

	from_fixture(&k, "saved");
	drop(&k, "model.layers.3.ffn.experts.4.w3.weight");
	expect_refused(&k, "layer 3", "expert 4's up matrix", NULL);

	from_fixture(&k, "saved");
	drop(&k, "head.weight");
	expect_refused(&k, "missing lm_head.weight", "tie_word_embeddings", NULL);

	from_fixture(&k, "saved");
	drop(&k, "model.layers.1.ffn.gate.bias");
	expect_refused(&k, "layer 1", "e_score_correction_bias", NULL);

	from_fixture(&k, "state_dict");
	drop(&k, "model.layers.0.mlp.experts.down_proj");
	expect_refused(&k, "layer 0", "model.layers.0.mlp.experts.down_proj", NULL);

	from_fixture(&k, "state_dict");
	drop(&k, "model.layers.0.mlp.experts.gate_up_proj");
	drop(&k, "model.layers.0.mlp.experts.down_proj");
	expect_refused(&k, "layer 0: missing routed experts", NULL, NULL);
}

Test(weights, wrong_shape_reports_expected_and_found)
{
	from_fixture(&k, "saved");
	find_item(&k, "model.layers.1.attn.wq_b.weight")->shape[0] = 44;
	expect_refused(&k, "'model.layers.1.attn.wq_b.weight'", "shape [44, 14]",
	               "expected [48, 14] = [H*d, Q]");

	from_fixture(&k, "saved");
	find_item(&k, "model.layers.3.attn.compressor.ape")->ndim = 1;
	expect_refused(&k, "ape", "shape [2]", "[m, x*d]");

	from_fixture(&k, "state_dict");
	find_item(&k, "model.layers.2.mlp.experts.gate_up_proj")->shape[1] = 9;
	expect_refused(&k, "gate_up_proj", "expected [7, 18, 20] = [E, 2I, D]", NULL);
}

Test(weights, config_that_does_not_describe_the_checkpoint_is_caught)
{
	/* the config says layer 3 is HCA, the checkpoint has a CSA compressor there */
	cfg.layer_types[3] = DP_V4_LAYER_HCA;
	cfg.n_layers_of[DP_V4_LAYER_CSA]--;
	cfg.n_layers_of[DP_V4_LAYER_HCA]++;
	from_fixture(&k, "saved");
	expect_refused(&k, "model.layers.3.attn.compressor.wkv.weight", "shape [24, 20]",
	               "expected [12, 20]");
}

Test(weights, wrong_dtypes_are_refused)
{
	from_fixture(&k, "saved");
	strcpy(find_item(&k, "model.layers.0.ffn.gate.tid2eid")->dtype, "F32");
	expect_refused(&k, "tid2eid", "dtype F32", "integer");

	from_fixture(&k, "saved");
	strcpy(find_item(&k, "model.norm.weight")->dtype, "I64");
	expect_refused(&k, "'model.norm.weight'", "dtype I64", "F32, BF16 or F16");
}

Test(weights, tid2eid_entries_must_be_expert_indices)
{
	static int64_t table[50 * 2];

	from_fixture(&k, "saved");
	table[2 * 31 + 1] = 7; /* E = 7 */
	find_item(&k, "model.layers.2.ffn.gate.tid2eid")->data = table;
	expect_refused(&k, "tid2eid", "[31][1] = 7", "[0, 7)");
	table[2 * 31 + 1] = -1;
	expect_refused(&k, "[31][1] = -1", NULL, NULL);
}

Test(weights, unexpected_tensor_is_refused_unless_allowed)
{
	struct dp_v4_weights_stats stats;
	char err[1024] = "";

	from_fixture(&k, "saved");
	add(&k, "model.layers.0.attn.compressor.wkv.weight", "F32", 2, 12, 20);
	add(&k, "model.layers.1.ffn.gate.tid2eid", "I64", 2, 50, 2);
	expect_refused(&k, "unexpected tensor 'model.layers.0.attn.compressor.wkv.weight'",
	               "and 1 more", "DP_V4_WEIGHTS_ALLOW_EXTRA");
	/* a checkpoint with more layers than the config: only num_nextn_predict_layers (1) extra
	 * layer is taken for MTP */
	from_fixture(&k, "saved");
	add(&k, "model.layers.4.attn.wq_a.weight", "F32", 2, 14, 20);
	add(&k, "model.layers.5.attn.wq_a.weight", "F32", 2, 14, 20);
	expect_refused(&k, "unexpected tensor 'model.layers.5.attn.wq_a.weight'", NULL, NULL);
	from_fixture(&k, "saved");
	add(&k, "model.layers.0.attn.compressor.wkv.weight", "F32", 2, 12, 20);
	add(&k, "model.layers.1.ffn.gate.tid2eid", "I64", 2, 50, 2);
	write_ckpt(&k);
	cr_expect_eq(check_dir(DP_V4_WEIGHTS_ALLOW_EXTRA, err, sizeof(err), &stats), 0, "%s", err);
	cr_expect_eq(stats.n_extra, 2);
	cr_expect_eq(check_dir(DP_V4_WEIGHTS_FLAGS_MAX, err, sizeof(err), NULL), -EINVAL,
	             "unknown flag");
}

Test(weights, two_spellings_of_one_tensor_are_ambiguous)
{
	from_fixture(&k, "saved");
	add(&k, "model.layers.0.self_attn.sinks", "F32", 1, 4, 0);
	expect_refused(&k, "both", "'model.layers.0.self_attn.sinks'",
	               "'model.layers.0.attn.attn_sink'");

	from_fixture(&k, "saved");
	add(&k, "model.layers.1.mlp.experts.gate_up_proj", "F32", 3, 7, 18)->shape[2] = 20;
	expect_refused(&k, "layer 1", "both fused", NULL);
}

Test(weights, tied_embeddings_use_the_embedding_as_head)
{
	struct dp_v4_weights_stats stats;
	struct dp_st *st;
	struct dp_v4_weights *w;
	struct dp_st_tensor t;
	char err[1024] = "";

	cfg.tie_word_embeddings = true;
	from_fixture(&k, "saved");
	drop(&k, "head.weight");
	write_ckpt(&k);
	cr_assert_eq(dp_st_open_dir(dir, &st, NULL, 0), 0);
	cr_assert_eq(dp_v4_weights_new(&cfg, st, 0, &w, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(dp_v4_weights_global(w, DP_V4_W_LM_HEAD, &t), 0);
	cr_expect_str_eq(t.name, "model.embed_tokens.weight");
	dp_v4_weights_free(w);
	dp_st_free(st);

	/* a head tensor next to tied embeddings is ignored, as transformers ignores it */
	add(&k, "head.weight", "F32", 2, 50, 20);
	write_ckpt(&k);
	cr_expect_eq(check_dir(0, err, sizeof(err), &stats), 0, "%s", err);
	cr_expect_eq(stats.n_ignored, 1);
}

Test(weights, bad_arguments_are_einval)
{
	struct dp_v4_weights *w = (struct dp_v4_weights *)0x1;
	struct dp_v4_config empty = {0};
	struct dp_st *st;

	from_fixture(&k, "saved");
	write_ckpt(&k);
	cr_assert_eq(dp_st_open_dir(dir, &st, NULL, 0), 0);
	cr_expect_eq(dp_v4_weights_new(NULL, st, 0, &w, NULL, 0), -EINVAL);
	cr_expect_eq(dp_v4_weights_new(&cfg, NULL, 0, &w, NULL, 0), -EINVAL);
	cr_expect_eq(dp_v4_weights_new(&empty, st, 0, &w, NULL, 0), -EINVAL);
	cr_expect_eq(dp_v4_weights_new(&cfg, st, 0, NULL, NULL, 0), -EINVAL);
	cr_expect_eq(w, (struct dp_v4_weights *)0x1);
	dp_st_free(st);
}

/* The parity checkpoints made by scripts/parity/make_parity.py with transformers
 * (DP_TEST_PARITY, else fixtures/../parity). */
static void check_parity_dir(const char *name)
{
	char pdir[4200], cpath[4300], err[1024] = "";
	struct dp_v4_config c;
	struct dp_st *st;

	const char *parity = getenv("DP_TEST_PARITY");

	if (parity && *parity)
		snprintf(pdir, sizeof(pdir), "%s/%s", parity, name);
	else
		snprintf(pdir, sizeof(pdir), "%s/../parity/%s", fixtures(), name);
	snprintf(cpath, sizeof(cpath), "%s/config.json", pdir);
	if (access(cpath, R_OK) != 0)
		cr_skip_test("no parity data at %s", pdir);
	cr_assert_eq(dp_v4_config_load(cpath, &c, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(dp_st_open_dir(pdir, &st, err, sizeof(err)), 0, "%s", err);
	cr_expect_eq(dp_v4_weights_check(&c, st, 0, err, sizeof(err)), 0, "%s: %s", name, err);
	dp_st_free(st);
	dp_v4_config_fini(&c);
}

Test(weights, parity_checkpoint_alt_fits_its_config)
{
	check_parity_dir("alt");
}

Test(weights, parity_checkpoint_mixed_fits_its_config)
{
	check_parity_dir("mixed");
}
