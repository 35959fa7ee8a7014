/* SPDX-License-Identifier: MIT */
/*
 * The Engram fusion against its golden data (tests/engram/fusion, made by
 * scripts/engram/make_golden.py from the formula alone, in PyTorch fp32):
 *
 *   - the cpu backend's engram_fuse op on random inputs (op.safetensors);
 *   - a whole forward of a tiny Engram V4 model (model/): transformers' DeepseekV4 layers with
 *     the fusion inserted, tables converted to a bf16 table file and served by the store, in one
 *     call, in chunks and one token per call (so the Engram history carries across calls);
 *   - the same model with every Engram wkv zero (zero/) gives exactly the logits of the model
 *     without Engram (noengram/), which itself matches transformers;
 *   - the forward's Engram preconditions (-ENODATA).
 *
 * Tolerance as in tests/model/test_parity.c: per position, max|ours - ref| <= 1e-4 max|ref|.
 */
#include "engram-test.h"

#define REL_TOL 1e-4

static void load_tensor(struct dp_st *st, const char *name, float **ret, uint64_t *ret_n)
{
	struct dp_st_tensor t;

	cr_assert_eq(dp_st_get(st, name, &t), 0, "no tensor %s", name);
	*ret = malloc(t.numel * sizeof(float));
	cr_assert_not_null(*ret);
	cr_assert_eq(dp_st_read_f32(&t, 0, t.numel, *ret), 0);
	*ret_n = t.numel;
}

Test(fusion, engram_fuse_op_matches_the_pytorch_formula)
{
	char path[512], err[512] = "";
	struct dp_st *st;
	struct dp_gpu *g;
	json_error_t jerr;

	json_t *meta = json_load_file(et_path(path, sizeof(path), "fusion/op.json"), 0, &jerr);
	cr_assert_not_null(meta, "%s: %s", path, jerr.text);
	uint32_t T = (uint32_t)json_integer_value(json_object_get(meta, "T"));
	uint32_t n = (uint32_t)json_integer_value(json_object_get(meta, "n"));
	uint32_t D = (uint32_t)json_integer_value(json_object_get(meta, "D"));
	uint32_t E = (uint32_t)json_integer_value(json_object_get(meta, "E"));
	float eps = (float)json_real_value(json_object_get(meta, "eps"));
	json_decref(meta);

	cr_assert_eq(dp_st_open_file(et_path(path, sizeof(path), "fusion/op.safetensors"), &st, err,
	                             sizeof(err)),
	             0, "%s", err);
	float *X, *rows, *wkv, *xn, *kn, *Y;
	uint64_t nX, nr, nw, nx, nk, nY;
	load_tensor(st, "X_in", &X, &nX);
	load_tensor(st, "rows", &rows, &nr);
	load_tensor(st, "wkv", &wkv, &nw);
	load_tensor(st, "x_norm", &xn, &nx);
	load_tensor(st, "k_norm", &kn, &nk);
	load_tensor(st, "X_out", &Y, &nY);
	cr_assert_eq(nX, (uint64_t)T * n * D);
	cr_assert_eq(nr, (uint64_t)T * E);
	cr_assert_eq(nw, (uint64_t)(n + 1) * D * E);

	cr_assert_eq(dp_gpu_new(DP_GPU_CPU, NULL, &g, err, sizeof(err)), 0, "%s", err);
	struct dp_gpu_weight w;
	float *gain_h = malloc(nx * sizeof(float)), *gain;
	for (uint64_t i = 0; i < nx; i++)
		gain_h[i] = xn[i] * kn[i];
	cr_assert_eq(dp_gpu_weight_upload(g, wkv, DP_DTYPE_F32, 1, (n + 1) * D, E, &w), 0);
	cr_assert_eq(dp_gpu_vector_upload(g, gain_h, DP_DTYPE_F32, nx, &gain), 0);
	float *dX = dp_gpu_alloc(g, nX * sizeof(float), DP_GPU_MEM_SCRATCH);
	float *dR = dp_gpu_alloc(g, nr * sizeof(float), DP_GPU_MEM_SCRATCH);
	cr_assert(dX && dR);
	cr_assert_eq(dp_gpu_upload(g, dX, X, nX * sizeof(float)), 0);
	cr_assert_eq(dp_gpu_upload(g, dR, rows, nr * sizeof(float)), 0);
	struct dp_gpu_engram e = {.X = dX,
	                          .rows = dR,
	                          .wkv = &w,
	                          .gain = gain,
	                          .T = T,
	                          .n = n,
	                          .D = D,
	                          .E = E,
	                          .eps = eps};
	cr_assert_eq(dp_gpu_ops(g)->engram_fuse(g, &e), 0);
	float *out = malloc(nX * sizeof(float));
	cr_assert_eq(dp_gpu_download(g, out, dX, nX * sizeof(float)), 0);

	/* per stream: max|ours - ref| <= 1e-6 * max|ref| (fp32 rounding of a few products) */
	double worst = 0;
	for (uint64_t r = 0; r < (uint64_t)T * n; r++) {
		double maxref = 0, maxdiff = 0;
		for (uint32_t d = 0; d < D; d++) {
			maxref = fmax(maxref, fabs(Y[r * D + d]));
			maxdiff = fmax(maxdiff, fabs((double)out[r * D + d] - Y[r * D + d]));
		}
		worst = fmax(worst, maxdiff / maxref);
	}
	cr_expect_leq(worst, 1e-6, "engram_fuse differs from the formula by %.3g relative", worst);
	/* token 0 has zero rows: kv = 0, the streams stay exactly as they were */
	cr_expect_eq(memcmp(out, X, (size_t)n * D * sizeof(float)), 0,
	             "zero rows must leave the streams bit-for-bit unchanged");

	/* the op checks its shapes */
	struct dp_gpu_engram bad = e;
	bad.E = E + 1;
	cr_expect_eq(dp_gpu_ops(g)->engram_fuse(g, &bad), -EINVAL);
	bad = e;
	bad.n = n + 1;
	cr_expect_eq(dp_gpu_ops(g)->engram_fuse(g, &bad), -EINVAL);

	dp_gpu_dealloc(g, dX, nX * sizeof(float), DP_GPU_MEM_SCRATCH);
	dp_gpu_dealloc(g, dR, nr * sizeof(float), DP_GPU_MEM_SCRATCH);
	dp_gpu_dealloc(g, gain, nx * sizeof(float), DP_GPU_MEM_WEIGHTS);
	dp_gpu_weight_free(g, &w);
	dp_gpu_free(g);
	dp_st_free(st);
	free(X), free(rows), free(wkv), free(xn), free(kn), free(Y), free(out), free(gain_h);
}

/* Logits of tokens fed in `chunks` (NULL: one call) through the bundle's model. */
static float *run(struct et_bundle *b, const int32_t *tok, uint32_t n, const uint32_t *chunks,
                  uint32_t n_chunks)
{
	float *out = malloc((size_t)n * b->V * sizeof(float));
	cr_assert_not_null(out);
	int r = dp_v4_logits(b->m, tok, n, chunks, n_chunks, out);
	cr_assert_eq(r, 0, "forward failed: %s", strerror(-r));
	return out;
}

static uint32_t schedule(uint32_t n, uint32_t *chunks)
{
	/* 17 + 9 leave partial n-gram windows and compressor windows pending; then single tokens */
	uint32_t k = 0, done = 0;
	chunks[k++] = 17;
	chunks[k++] = 9;
	done = 26;
	while (done < n) {
		chunks[k++] = 1;
		done++;
	}
	return k;
}

static void check_model(enum dp_engram_residency res, enum dp_engram_dtype dt, double tol)
{
	char dir[512], tmp[256], table[300], path[600];
	struct et_bundle b;
	uint32_t n, chunks[64];

	et_path(dir, sizeof(dir), "fusion/model");
	et_bundle_open(&b, dir);
	et_mkdtemp(tmp, sizeof(tmp));
	snprintf(table, sizeof(table), "%s/tables.dpe", tmp);
	et_convert(dir, b.h, b.hd, dt, table);
	if (!et_bundle_store(&b, table, res, 64, 0)) {
		et_bundle_close(&b);
		et_rmtree(tmp);
		cr_skip_test("io_uring is not available here");
	}
	int32_t *tok = et_tokens(dir, &n);
	snprintf(path, sizeof(path), "%s/logits.bin", dir);
	float *ref = et_read_floats(path, (size_t)n * b.V);

	float *full = run(&b, tok, n, NULL, 0);
	uint32_t k = schedule(n, chunks);
	float *chunked = run(&b, tok, n, chunks, k);
	for (uint32_t i = 0; i < n; i++)
		chunks[i] = 1;
	float *steps = run(&b, tok, n, chunks, n);
	double e1 = et_worst_rel(full, ref, n, b.V), e2 = et_worst_rel(chunked, ref, n, b.V);
	double e3 = et_worst_rel(steps, ref, n, b.V);
	cr_expect_leq(e1, tol, "%s/%s one call: %.3g relative", dp_engram_residency_name(res),
	              dp_engram_dtype_name(dt), e1);
	cr_expect_leq(e2, tol, "%s/%s chunks: %.3g relative", dp_engram_residency_name(res),
	              dp_engram_dtype_name(dt), e2);
	cr_expect_leq(e3, tol, "%s/%s token by token: %.3g relative", dp_engram_residency_name(res),
	              dp_engram_dtype_name(dt), e3);
	free(full), free(chunked), free(steps), free(ref), free(tok);
	et_bundle_close(&b);
	et_rmtree(tmp);
}

Test(fusion, engram_model_matches_transformers_with_the_fusion_from_dram)
{
	check_model(DP_ENGRAM_RES_DRAM, DP_ENGRAM_DTYPE_BF16, REL_TOL);
}

Test(fusion, engram_model_matches_transformers_with_the_fusion_from_device_memory)
{
	check_model(DP_ENGRAM_RES_DEVICE, DP_ENGRAM_DTYPE_BF16, REL_TOL);
}

Test(fusion, engram_model_matches_transformers_with_the_fusion_from_nvme)
{
	check_model(DP_ENGRAM_RES_NVME, DP_ENGRAM_DTYPE_BF16, REL_TOL);
}

/* fp8 tables are not exact: the logits move, but by little (rows within 2^-4 relative). */
Test(fusion, engram_model_with_fp8_tables_stays_close)
{
	check_model(DP_ENGRAM_RES_DRAM, DP_ENGRAM_DTYPE_FP8, 0.1);
}

Test(fusion, engram_model_with_zero_weights_gives_the_non_engram_logits_exactly)
{
	char mdir[512], zdir[512], ndir[512], tmp[256], table[300], path[600];
	struct et_bundle zb, nb, mb;
	uint32_t n;

	et_path(mdir, sizeof(mdir), "fusion/model");
	et_path(zdir, sizeof(zdir), "fusion/zero");
	et_path(ndir, sizeof(ndir), "fusion/noengram");
	/* zero/ carries no tables: serve model/'s (same geometry) */
	et_bundle_open(&mb, mdir);
	et_mkdtemp(tmp, sizeof(tmp));
	snprintf(table, sizeof(table), "%s/tables.dpe", tmp);
	et_convert(mdir, mb.h, mb.hd, DP_ENGRAM_DTYPE_BF16, table);
	et_bundle_close(&mb);

	et_bundle_open(&zb, zdir);
	et_bundle_store(&zb, table, DP_ENGRAM_RES_DRAM, 0, 0);
	et_bundle_open(&nb, ndir);
	cr_assert_not(dp_v4_model_has_engram(nb.m));
	int32_t *tok = et_tokens(ndir, &n);
	float *z = run(&zb, tok, n, NULL, 0), *plain = run(&nb, tok, n, NULL, 0);
	cr_expect_eq(memcmp(z, plain, (size_t)n * zb.V * sizeof(float)), 0,
	             "zero Engram weights must not change a single logit bit");
	snprintf(path, sizeof(path), "%s/logits.bin", ndir);
	float *ref = et_read_floats(path, (size_t)n * nb.V);
	double e = et_worst_rel(plain, ref, n, nb.V);
	cr_expect_leq(e, REL_TOL, "the base model differs from transformers by %.3g relative", e);
	/* and Engram does matter in model/: the golden logits are far from these */
	snprintf(path, sizeof(path), "%s/logits.bin", mdir);
	float *eref = et_read_floats(path, (size_t)n * nb.V);
	cr_expect_gt(et_worst_rel(plain, eref, n, nb.V), 0.05);
	free(z), free(plain), free(ref), free(eref), free(tok);
	et_bundle_close(&zb);
	et_bundle_close(&nb);
	et_rmtree(tmp);
}

Test(fusion, engram_forward_needs_a_provider_and_each_sequence_history)
{
	char dir[512], tmp[256], table[300];
	struct et_bundle b;
	struct dp_v4_seq *s, *r;
	uint32_t n;

	et_path(dir, sizeof(dir), "fusion/model");
	et_bundle_open(&b, dir);
	int32_t *tok = et_tokens(dir, &n);
	float *logits = malloc((size_t)n * b.V * sizeof(float)), *ref = malloc(b.V * sizeof(float));
	cr_assert_eq(dp_v4_seq_new(b.m, &s), 0);
	struct dp_v4_batch_item it = {.seq = s, .tokens = tok, .n_tokens = 5};
	cr_expect_eq(dp_v4_forward(b.m, &it, 1, logits), -ENODATA, "no provider");
	cr_expect_eq(dp_v4_seq_pos(s), 0, "nothing advanced");

	et_mkdtemp(tmp, sizeof(tmp));
	snprintf(table, sizeof(table), "%s/tables.dpe", tmp);
	et_convert(dir, b.h, b.hd, DP_ENGRAM_DTYPE_BF16, table);
	et_bundle_store(&b, table, DP_ENGRAM_RES_DRAM, 16, 0);
	cr_assert_eq(dp_v4_forward(b.m, &it, 1, logits), 0);

	/* history: the last N-1 = 2 raw tokens */
	int32_t hist[DP_V4_ENGRAM_HISTORY_MAX];
	cr_assert_eq(dp_v4_seq_engram_history(s, hist, DP_V4_ENGRAM_HISTORY_MAX), 2);
	cr_expect(hist[0] == tok[3] && hist[1] == tok[4]);

	/* a sequence rebuilt at pos 5 is refused until it has its history */
	cr_assert_eq(dp_v4_seq_new_at(b.m, 5, &r), 0);
	cr_expect_eq(dp_v4_seq_engram_history(r, hist, DP_V4_ENGRAM_HISTORY_MAX), -ENODATA);
	struct dp_v4_batch_item ir = {.seq = r, .tokens = tok + 5, .n_tokens = 1};
	cr_expect_eq(dp_v4_forward(b.m, &ir, 1, logits), -ENODATA);
	cr_expect_eq(dp_v4_seq_set_engram_history(r, tok + 4, 1), -EINVAL, "too short");
	cr_expect_eq(dp_v4_seq_set_engram_history(r, tok, 5), 0);
	cr_expect_eq(dp_v4_seq_engram_history(r, hist, DP_V4_ENGRAM_HISTORY_MAX), 2);
	cr_expect(hist[0] == tok[3] && hist[1] == tok[4]);
	dp_v4_seq_free(r);

	/* without its pages the rebuilt sequence's logits are not the point here; the history
	 * is: the next token's rows equal the continuing sequence's */
	const float *ra, *rb;
	float *copy = malloc((size_t)b.hd * 4 * 2 * sizeof(float));
	cr_assert_eq(dp_v4_seq_new_at(b.m, 5, &r), 0);
	cr_assert_eq(dp_v4_seq_set_engram_history(r, tok, 5), 0);
	struct dp_v4_batch_item next_s = {.seq = s, .tokens = tok + 5, .n_tokens = 1};
	struct dp_v4_batch_item next_r = {.seq = r, .tokens = tok + 5, .n_tokens = 1};
	int layer = dp_engram_hash_layer_id(b.h, 1);
	cr_assert_eq(dp_engram_store_rows(b.s, layer, &next_s, 1, &ra), 0);
	memcpy(copy, ra, (size_t)b.hd * 4 * sizeof(float));
	cr_assert_eq(dp_engram_store_rows(b.s, layer, &next_r, 1, &rb), 0);
	cr_expect_eq(memcmp(copy, rb, (size_t)b.hd * 4 * sizeof(float)), 0);
	dp_v4_seq_free(r);
	free(copy);

	dp_v4_seq_free(s);
	free(logits), free(ref), free(tok);
	et_bundle_close(&b);
	et_rmtree(tmp);
}

Test(fusion, a_checkpoint_without_the_engram_weights_is_refused_naming_the_tensor)
{
	char tmp[256], path[700], src[512];
	struct dp_gpu *g;
	struct dp_v4_model *m = NULL;
	char err[512] = "", cwd[256];

	/* config of the Engram model, checkpoint of the one without Engram */
	et_mkdtemp(tmp, sizeof(tmp));
	snprintf(path, sizeof(path), "cp %s/fusion/model/config.json %s/", et_src(), tmp);
	cr_assert_eq(system(path), 0);
	cr_assert_not_null(getcwd(cwd, sizeof(cwd)));
	snprintf(src, sizeof(src), "%s/fusion/noengram/model.safetensors", et_src());
	snprintf(path, sizeof(path), "%s/model.safetensors", tmp);
	if (src[0] == '/') {
		cr_assert_eq(symlink(src, path), 0);
	} else {
		char abs[800];
		snprintf(abs, sizeof(abs), "%s/%s", cwd, src);
		cr_assert_eq(symlink(abs, path), 0);
	}
	cr_assert_eq(dp_gpu_new(DP_GPU_CPU, NULL, &g, err, sizeof(err)), 0, "%s", err);
	cr_expect_eq(dp_v4_model_load(g, tmp, &m, err, sizeof(err)), -EINVAL);
	cr_expect_not_null(strstr(err, "engram"), "%s", err);
	cr_expect_null(m);
	dp_gpu_free(g);
	et_rmtree(tmp);
}
