/* SPDX-License-Identifier: MIT */
/*
 * Checkpoints in exactly the published DeepSeek-V4 format (tests/model/published/<variant>/,
 * scripts/quant/make_published.py): "instruct" (FP4 routed experts, e8m0 scales) and "base"
 * (FP8 experts, F32 power-of-two scales), both with FP8 attention and shared experts, an MTP
 * block, two shards and an index.
 *
 * 1. They load on the cpu backend and give transformers 5.17's CPU logits within 1e-4 of
 *    max |logit|, in one call and chunked: with the weights kept as stored (the default: the
 *    kernels dequantize as they multiply, accumulating in fp32 in another order than OpenBLAS)
 *    and dequantized at load (dp_v4_load_opts.dequantize: exact dequantization, fp32 BLAS).
 *    Kept, they take about the checkpoint's bytes (not the 4-8x of fp32), and routed experts
 *    paged from DRAM or NVMe with k slots give the resident experts' logits bitwise.
 * 2. Damaged copies (one edit each, written to a temporary directory) are refused at load with
 *    a message naming the file or the tensor, and nothing is handed back.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "model/safetensors.h"
#include "model/v4.h"
#include "model/weights.h"
#include "st-writer.h"
#include "tests/model/parity-data.h"

static const char *published(void)
{
	const char *root = getenv("DP_TEST_PUBLISHED");
	return root ? root : "tests/model/published";
}

/* ---- 1. parity ------------------------------------------------------------------------ */

static double compare(struct parity *p, const uint32_t *chunks, uint32_t n_chunks, const float *ref,
                      const char *mode)
{
	float *out = malloc((size_t)p->n * p->V * sizeof(float));
	double worst = 0;

	cr_assert_not_null(out);
	cr_assert_eq(dp_v4_logits(p->m, p->tokens, p->n, chunks, n_chunks, out), 0, "%s", mode);
	for (uint32_t t = 0; t < p->n; t++) {
		const float *a = out + (size_t)t * p->V, *b = ref + (size_t)t * p->V;
		double maxref = 0, maxdiff = 0;

		for (uint32_t v = 0; v < p->V; v++) {
			maxref = fmax(maxref, fabs(b[v]));
			maxdiff = fmax(maxdiff, fabs((double)a[v] - b[v]));
		}
		if (p->skip[t])
			continue;
		cr_expect(maxdiff <= 1e-4 * maxref,
		          "%s: position %u: max |diff| %.3g > 1e-4 * max |logit| %.3g", mode, t,
		          maxdiff, maxref);
		worst = fmax(worst, maxdiff / maxref);
	}
	free(out);
	return worst;
}

static void parity_of_opts(const char *variant, const struct dp_v4_load_opts *o)
{
	struct parity p = {0};
	char dir[600], err[512] = "";

	setenv("DP_TEST_PARITY", published(), 1);
	parity_dir(variant, dir, sizeof(dir));
	cr_assert_eq(dp_gpu_new(DP_GPU_CPU, NULL, &p.g, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(dp_v4_model_load_opts(p.g, dir, o, &p.m, err, sizeof(err)), 0, "%s: %s", dir,
	             err);
	struct dp_v4_weight_stats ws;
	dp_v4_model_weight_stats(p.m, &ws);
	if (o && o->dequantize)
		cr_expect_eq(ws.kept, 0, "dequantize: nothing kept as stored");
	else
		cr_expect_gt(ws.wrapped, 0, "kept: single matrices used in place");
	parity_open(&p, variant, (uint32_t)dp_v4_model_config(p.m)->vocab_size);
	double e1 = compare(&p, NULL, 0, p.ref_full, "one call");
	double e2 = compare(&p, p.chunks, p.n_chunks, p.ref_chunked, "chunked");
	cr_log_info("%s: worst relative error: one call %.2e, chunked %.2e", variant, e1, e2);
	dp_v4_model_free(p.m);
	dp_gpu_free(p.g);
	parity_close(&p);
}

/* These checkpoints carry quantization_config, so AUTO would pick the reference numerics
 * (test_reference.c): transformers' parity asks for its own. */
static const struct dp_v4_load_opts transformers = { .numerics = DP_V4_NUMERICS_TRANSFORMERS };

static void parity_of(const char *variant)
{
	parity_of_opts(variant, &transformers);
}

static const struct dp_v4_load_opts dequantized = { .dequantize = true,
						    .numerics = DP_V4_NUMERICS_TRANSFORMERS };

Test(published, fp4_expert_checkpoint_matches_transformers_in_one_call_and_chunked)
{
	parity_of("instruct");
}

Test(published, base_fp8_expert_checkpoint_with_f32_scales_matches_transformers)
{
	parity_of("base");
}

Test(published, fp4_checkpoint_dequantized_at_load_matches_transformers)
{
	parity_of_opts("instruct", &dequantized);
}

Test(published, base_checkpoint_dequantized_at_load_matches_transformers)
{
	parity_of_opts("base", &dequantized);
}

/* Backend-owned plus mapped weight bytes of a cpu load, against the checkpoint bytes the forward
 * reads (MTP block excluded). */
static void resident_of(const char *variant, const struct dp_v4_load_opts *o, uint64_t *ret_res,
                        uint64_t *ret_disk)
{
	struct dp_v4_config c;
	struct dp_v4_weights *w;
	struct dp_v4_weights_stats s;
	struct dp_v4_weight_stats ws;
	struct dp_st *st;
	struct dp_gpu *g;
	struct dp_v4_model *m;
	char dir[600], path[700], err[512] = "";

	snprintf(dir, sizeof(dir), "%s/%s", published(), variant);
	snprintf(path, sizeof(path), "%s/config.json", dir);
	cr_assert_eq(dp_v4_config_load(path, &c, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(dp_st_open_dir(dir, &st, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(dp_v4_weights_new(&c, st, 0, &w, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(dp_v4_weights_stats(w, &s), 0);
	dp_v4_weights_free(w);
	dp_st_free(st);
	dp_v4_config_fini(&c);

	cr_assert_eq(dp_gpu_new(DP_GPU_CPU, NULL, &g, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(dp_v4_model_load_opts(g, dir, o, &m, err, sizeof(err)), 0, "%s", err);
	dp_v4_model_weight_stats(m, &ws);
	*ret_res = ws.owned_bytes + ws.mapped_bytes;
	*ret_disk = s.bytes_used;
	cr_log_info("%s%s: checkpoint %llu B read by the forward; resident %llu B (owned %llu, "
	            "mapped %llu; %u kept, %u wrapped, %u dequantized)",
	            variant, o && o->dequantize ? " (dequantized)" : "",
	            (unsigned long long)s.bytes_used, (unsigned long long)*ret_res,
	            (unsigned long long)ws.owned_bytes, (unsigned long long)ws.mapped_bytes, ws.kept,
	            ws.wrapped, ws.dequantized);
	dp_v4_model_free(m);
	dp_gpu_free(g);
}

static void resident_close_to_checkpoint(const char *variant)
{
	uint64_t res, disk, res_dq, disk_dq;

	resident_of(variant, NULL, &res, &disk);
	resident_of(variant, &dequantized, &res_dq, &disk_dq);
	/* fp32 vectors (norms, mHC) and the bf16 router rows aside, the kept weights are the
	 * checkpoint's bytes: well under 1.25x, where dequantizing takes 3-8x */
	cr_expect(res <= disk + disk / 4, "%s: resident %llu B, checkpoint %llu B", variant,
	          (unsigned long long)res, (unsigned long long)disk);
	cr_expect(res_dq > 2 * res, "%s: dequantized %llu B vs kept %llu B", variant,
	          (unsigned long long)res_dq, (unsigned long long)res);
}

Test(published, fp4_checkpoint_kept_as_stored_is_about_its_bytes_resident)
{
	resident_close_to_checkpoint("instruct");
}

Test(published, base_checkpoint_kept_as_stored_is_about_its_bytes_resident)
{
	resident_close_to_checkpoint("base");
}

/* Logits of every token of tokens.json, one call. */
static float *logits_with(const char *variant, const struct dp_v4_load_opts *o, uint32_t *ret_n)
{
	struct parity p = {0};
	char dir[600], err[512] = "";

	setenv("DP_TEST_PARITY", published(), 1);
	parity_dir(variant, dir, sizeof(dir));
	cr_assert_eq(dp_gpu_new(DP_GPU_CPU, NULL, &p.g, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(dp_v4_model_load_opts(p.g, dir, o, &p.m, err, sizeof(err)), 0, "%s: %s", dir,
	             err);
	parity_open(&p, variant, (uint32_t)dp_v4_model_config(p.m)->vocab_size);
	size_t n = (size_t)p.n * p.V;
	float *out = malloc(n * sizeof(float));
	cr_assert_not_null(out);
	cr_assert_eq(dp_v4_logits(p.m, p.tokens, p.n, p.chunks, p.n_chunks, out), 0, "%s", variant);
	*ret_n = (uint32_t)n;
	dp_v4_model_free(p.m);
	dp_gpu_free(p.g);
	parity_close(&p);
	return out;
}

static void paged_matches_resident(const char *variant)
{
	uint32_t n, n2;
	float *res = logits_with(variant, NULL, &n);
	char dir[600], path[700], err[512] = "";
	struct dp_v4_config c;

	snprintf(dir, sizeof(dir), "%s/%s", published(), variant);
	snprintf(path, sizeof(path), "%s/config.json", dir);
	cr_assert_eq(dp_v4_config_load(path, &c, err, sizeof(err)), 0, "%s", err);
	uint32_t k = (uint32_t)c.num_experts_per_tok;
	dp_v4_config_fini(&c);
	static const enum dp_v4_experts_where where[] = { DP_V4_EXPERTS_DRAM, DP_V4_EXPERTS_NVME };
	for (size_t i = 0; i < 2; i++) {
		struct dp_v4_load_opts o = { .experts = where[i], .expert_slots = k };
		float *pg = logits_with(variant, &o, &n2);
		cr_assert_eq(n2, n);
		cr_expect(memcmp(pg, res, n * sizeof(float)) == 0,
		          "%s: experts paged from %s with %u slots differ from resident ones", variant,
		          dp_v4_experts_where_name(where[i]), k);
		free(pg);
	}
	free(res);
}

Test(published, fp4_experts_paged_from_dram_and_nvme_give_the_resident_logits)
{
	paged_matches_resident("instruct");
}

Test(published, fp8_experts_paged_from_dram_and_nvme_give_the_resident_logits)
{
	paged_matches_resident("base");
}

Test(published, mtp_block_is_validated_but_not_kept)
{
	struct dp_v4_config c;
	struct dp_v4_weights *w;
	struct dp_v4_weights_stats s;
	struct dp_st *st;
	char dir[600], path[700], err[512] = "";

	snprintf(dir, sizeof(dir), "%s/instruct", published());
	snprintf(path, sizeof(path), "%s/config.json", dir);
	cr_assert_eq(dp_v4_config_load(path, &c, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(dp_st_open_dir(dir, &st, err, sizeof(err)), 0, "%s", err);
	cr_expect_eq(dp_st_file_count(st), 2, "two shards through the index");
	cr_assert_eq(dp_v4_weights_new(&c, st, 0, &w, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(dp_v4_weights_stats(w, &s), 0);
	cr_expect(s.has_mtp);
	cr_expect_gt(s.n_mtp, 20);
	cr_expect_eq(s.n_used + s.n_mtp, dp_st_count(st), "every tensor accounted for");
	cr_expect_eq(s.n_extra, 0);
	dp_v4_weights_free(w);
	dp_st_free(st);
	dp_v4_config_fini(&c);
}

/* ---- 2. damaged copies ------------------------------------------------------------------ */

/* Every tensor of a fixture, editable, with its shard. */
struct tset {
	struct stw_tensor t[512];
	char names[512][128];
	char dtypes[512][16];
	int shard[512]; /* 0, 1; -1 dropped */
	size_t n;
	struct dp_st *st[2];
	unsigned char *owned[512]; /* replaced data */
};

static char tmp[4096];
static const char *const shard_name[2] = {"model-00001-of-00002.safetensors",
                                          "model-00002-of-00002.safetensors"};

static void tset_load(struct tset *s, const char *variant)
{
	char path[800], err[512] = "";

	memset(s, 0, sizeof(*s));
	for (int i = 0; i < 2; i++) {
		snprintf(path, sizeof(path), "%s/%s/%s", published(), variant, shard_name[i]);
		cr_assert_eq(dp_st_open_file(path, &s->st[i], err, sizeof(err)), 0, "%s", err);
		for (size_t k = 0; k < dp_st_count(s->st[i]); k++) {
			struct dp_st_tensor x;
			size_t j = s->n++;

			cr_assert_lt(j, 512);
			dp_st_at(s->st[i], k, &x);
			snprintf(s->names[j], sizeof(s->names[j]), "%s", x.name);
			snprintf(s->dtypes[j], sizeof(s->dtypes[j]), "%s", dp_st_dtype_name(x.dtype));
			s->t[j] = (struct stw_tensor){.name = s->names[j], .dtype = s->dtypes[j],
			                              .ndim = x.ndim, .data = x.data, .bytes = x.bytes};
			memcpy(s->t[j].shape, x.shape, sizeof(s->t[j].shape));
			s->shard[j] = i;
		}
	}
}

static struct stw_tensor *tset_find(struct tset *s, const char *name)
{
	for (size_t i = 0; i < s->n; i++)
		if (s->shard[i] >= 0 && strcmp(s->names[i], name) == 0)
			return &s->t[i];
	cr_assert_fail("fixture has no tensor %s", name);
	return NULL;
}

static void tset_drop(struct tset *s, const char *name)
{
	s->shard[tset_find(s, name) - s->t] = -1;
}

/* A writable copy of a tensor's bytes. */
static unsigned char *tset_own(struct tset *s, struct stw_tensor *t)
{
	size_t i = (size_t)(t - s->t);
	unsigned char *p = malloc(t->bytes ? t->bytes : 1);

	cr_assert_not_null(p);
	memcpy(p, t->data, t->bytes);
	free(s->owned[i]);
	s->owned[i] = p;
	t->data = p;
	return p;
}

/* Write the set, its index and the variant's config.json to tmp. */
static void tset_write(struct tset *s, const char *variant)
{
	char path[8192], src[800];
	struct stw_tensor *v = calloc(s->n, sizeof(*v));
	json_t *map = json_object();

	cr_assert_not_null(v);
	for (int i = 0; i < 2; i++) {
		size_t m = 0;

		for (size_t j = 0; j < s->n; j++)
			if (s->shard[j] == i) {
				v[m++] = s->t[j];
				json_object_set_new(map, s->names[j], json_string(shard_name[i]));
			}
		snprintf(path, sizeof(path), "%s/%s", tmp, shard_name[i]);
		cr_assert_eq(stw_write(path, v, m, NULL), 0);
	}
	free(v);
	json_t *idx = json_pack("{s:{},s:o}", "metadata", "weight_map", map);
	char *text = json_dumps(idx, 0);
	cr_assert_eq(stw_write_text(tmp, "model.safetensors.index.json", text), 0);
	free(text);
	json_decref(idx);
	snprintf(src, sizeof(src), "%s/%s/config.json", published(), variant);
	json_t *cfg = json_load_file(src, 0, NULL);
	cr_assert_not_null(cfg);
	text = json_dumps(cfg, 0);
	cr_assert_eq(stw_write_text(tmp, "config.json", text), 0);
	free(text);
	json_decref(cfg);
	for (size_t j = 0; j < s->n; j++)
		free(s->owned[j]);
	dp_st_free(s->st[0]);
	dp_st_free(s->st[1]);
}

/* Load tmp; expect failure `want` and a message holding both needles; nothing handed back. */
static void expect_load_fails(int want, const char *needle1, const char *needle2)
{
	struct dp_gpu *g;
	struct dp_v4_model *m = (struct dp_v4_model *)0x1;
	char err[1024] = "";

	cr_assert_eq(dp_gpu_new(DP_GPU_CPU, NULL, &g, err, sizeof(err)), 0, "%s", err);
	int r = dp_v4_model_load(g, tmp, &m, err, sizeof(err));
	cr_expect_eq(r, want, "load returns %d, want %d (%s)", r, want, err);
	cr_expect_eq(m, (struct dp_v4_model *)0x1, "nothing handed back on failure");
	if (needle1)
		cr_expect(strstr(err, needle1), "message \"%s\" names \"%s\"", err, needle1);
	if (needle2)
		cr_expect(strstr(err, needle2), "message \"%s\" names \"%s\"", err, needle2);
	dp_gpu_free(g);
}

static void setup(void)
{
	cr_assert(stw_tmpdir(tmp, sizeof(tmp)), "mkdtemp");
}

static void teardown(void)
{
	stw_rm_rf(tmp);
}

Test(published, the_untouched_copy_loads, .init = setup, .fini = teardown)
{
	struct tset s;
	struct dp_gpu *g;
	struct dp_v4_model *m;
	char err[512] = "";

	tset_load(&s, "instruct");
	tset_write(&s, "instruct");
	cr_assert_eq(dp_gpu_new(DP_GPU_CPU, NULL, &g, err, sizeof(err)), 0, "%s", err);
	cr_expect_eq(dp_v4_model_load(g, tmp, &m, err, sizeof(err)), 0, "%s", err);
	dp_v4_model_free(m);
	dp_gpu_free(g);
}

Test(published, checkpoint_without_an_mtp_block_loads, .init = setup, .fini = teardown)
{
	struct tset s;
	struct dp_gpu *g;
	struct dp_v4_model *m;
	char err[512] = "";

	tset_load(&s, "base");
	for (size_t i = 0; i < s.n; i++)
		if (strncmp(s.names[i], "mtp.", 4) == 0)
			s.shard[i] = -1;
	tset_write(&s, "base");
	cr_assert_eq(dp_gpu_new(DP_GPU_CPU, NULL, &g, err, sizeof(err)), 0, "%s", err);
	cr_expect_eq(dp_v4_model_load(g, tmp, &m, err, sizeof(err)), 0, "%s", err);
	dp_v4_model_free(m);
	dp_gpu_free(g);
}

Test(published, scale_of_the_wrong_shape_is_refused, .init = setup, .fini = teardown)
{
	static const unsigned char two[2] = {127, 127};
	struct tset s;

	tset_load(&s, "instruct");
	struct stw_tensor *t = tset_find(&s, "layers.1.attn.wq_a.scale");
	t->shape[1] = 2; /* [1, 1] -> [1, 2] */
	t->data = two;
	t->bytes = 2;
	tset_write(&s, "instruct");
	expect_load_fails(-EINVAL, "'layers.1.attn.wq_a.scale'", "expected [1, 1]");
}

Test(published, scale_of_the_wrong_dtype_is_refused, .init = setup, .fini = teardown)
{
	static const unsigned char bf16_one[2] = {0x80, 0x3f};
	struct tset s;

	tset_load(&s, "instruct");
	struct stw_tensor *t = tset_find(&s, "layers.0.ffn.shared_experts.w2.scale");
	t->dtype = "BF16";
	t->data = bf16_one;
	t->bytes = 2;
	tset_write(&s, "instruct");
	expect_load_fails(-EINVAL, "'layers.0.ffn.shared_experts.w2.scale'", "dtype BF16");
}

Test(published, fp4_scale_of_the_wrong_shape_is_refused, .init = setup, .fini = teardown)
{
	struct tset s;

	tset_load(&s, "instruct");
	struct stw_tensor *t = tset_find(&s, "layers.2.ffn.experts.1.w2.scale");
	t->shape[0] /= 2; /* [128, 4] -> [64, 4]: half the rows */
	t->bytes /= 2;
	tset_write(&s, "instruct");
	expect_load_fails(-EINVAL, "'layers.2.ffn.experts.1.w2.scale'", "one per 32 along a row");
}

Test(published, weight_without_its_scale_is_refused, .init = setup, .fini = teardown)
{
	struct tset s;

	tset_load(&s, "base");
	tset_drop(&s, "layers.2.ffn.experts.0.w3.scale");
	tset_write(&s, "base");
	expect_load_fails(-EINVAL, "'layers.2.ffn.experts.0.w3.weight'",
	                  "has no scale 'layers.2.ffn.experts.0.w3.scale'");
}

Test(published, e8m0_scale_code_255_is_refused, .init = setup, .fini = teardown)
{
	struct tset s;

	tset_load(&s, "instruct");
	struct stw_tensor *t = tset_find(&s, "layers.1.ffn.experts.2.w1.scale");
	tset_own(&s, t)[7] = 255;
	tset_write(&s, "instruct");
	expect_load_fails(-EINVAL, "'layers.1.ffn.experts.2.w1.scale'", "code 255");
}

Test(published, f32_scale_not_a_power_of_two_is_refused, .init = setup, .fini = teardown)
{
	struct tset s;
	float three = 3.0f;

	tset_load(&s, "base");
	struct stw_tensor *t = tset_find(&s, "layers.1.attn.wo_a.scale");
	memcpy(tset_own(&s, t), &three, 4);
	tset_write(&s, "base");
	expect_load_fails(-EINVAL, "'layers.1.attn.wo_a.scale'", "power of two");
}

Test(published, e4m3_nan_weight_code_is_refused_naming_the_element, .init = setup,
     .fini = teardown)
{
	struct tset s;

	tset_load(&s, "instruct");
	struct stw_tensor *t = tset_find(&s, "layers.2.attn.wo_b.weight");
	tset_own(&s, t)[3 * 256 + 9] = 0xff; /* [128, 256]: element [3][9] */
	tset_write(&s, "instruct");
	expect_load_fails(-EINVAL, "'layers.2.attn.wo_b.weight'", "[3][9] is e4m3 code 0xff (NaN)");
}

Test(published, unknown_tensor_is_refused_naming_it, .init = setup, .fini = teardown)
{
	struct tset s;

	tset_load(&s, "instruct");
	size_t j = s.n++;
	snprintf(s.names[j], sizeof(s.names[j]), "layers.1.attn.wq_c.weight");
	s.t[j] = (struct stw_tensor){.name = s.names[j], .dtype = "BF16", .ndim = 1, .shape = {4},
	                             .data = NULL, .bytes = 8};
	s.shard[j] = 1;
	tset_write(&s, "instruct");
	expect_load_fails(-EINVAL, "unexpected tensor 'layers.1.attn.wq_c.weight'", NULL);
}

Test(published, missing_tensor_is_refused_naming_it, .init = setup, .fini = teardown)
{
	struct tset s;

	tset_load(&s, "instruct");
	tset_drop(&s, "layers.2.ffn.gate.bias");
	tset_write(&s, "instruct");
	expect_load_fails(-EINVAL, "layer 2", "'layers.2.ffn.gate.bias'");
}

Test(published, incomplete_mtp_block_is_refused_naming_the_missing_tensor, .init = setup,
     .fini = teardown)
{
	struct tset s;

	tset_load(&s, "instruct");
	tset_drop(&s, "mtp.0.hnorm.weight");
	tset_write(&s, "instruct");
	expect_load_fails(-EINVAL, "MTP block 0", "mtp.0.hnorm.weight");
}

Test(published, unknown_dtype_is_refused_naming_the_tensor, .init = setup, .fini = teardown)
{
	struct tset s;

	tset_load(&s, "instruct");
	tset_find(&s, "layers.0.attn.attn_sink")->dtype = "Q4_K";
	tset_write(&s, "instruct");
	expect_load_fails(-EINVAL, "model-00001-of-00002.safetensors", "'layers.0.attn.attn_sink'");
}

Test(published, truncated_shard_is_refused_naming_the_file, .init = setup, .fini = teardown)
{
	struct tset s;
	char path[8192];

	tset_load(&s, "instruct");
	tset_write(&s, "instruct");
	snprintf(path, sizeof(path), "%s/%s", tmp, shard_name[1]);
	cr_assert_eq(truncate(path, 100000), 0);
	expect_load_fails(-EINVAL, "model-00002-of-00002.safetensors", NULL);
}

Test(published, index_naming_a_missing_shard_is_refused_naming_the_file, .init = setup,
     .fini = teardown)
{
	struct tset s;
	char path[8192];

	tset_load(&s, "instruct");
	tset_write(&s, "instruct");
	snprintf(path, sizeof(path), "%s/%s", tmp, shard_name[1]);
	cr_assert_eq(unlink(path), 0);
	expect_load_fails(-ENOENT, "model-00002-of-00002.safetensors", "does not exist");
}

Test(published, index_and_shard_disagreeing_is_refused_naming_the_tensor, .init = setup,
     .fini = teardown)
{
	struct tset s;
	char path[8192];

	tset_load(&s, "instruct");
	tset_write(&s, "instruct");
	/* the index lists a tensor that no shard holds */
	snprintf(path, sizeof(path), "%s/model.safetensors.index.json", tmp);
	json_t *idx = json_load_file(path, 0, NULL);
	cr_assert_not_null(idx);
	json_object_set_new(json_object_get(idx, "weight_map"), "layers.0.attn.ghost",
	                    json_string(shard_name[0]));
	char *text = json_dumps(idx, 0);
	cr_assert_eq(stw_write_text(tmp, "model.safetensors.index.json", text), 0);
	free(text);
	json_decref(idx);
	expect_load_fails(-EINVAL, "'layers.0.attn.ghost'", "has no such tensor");
}
