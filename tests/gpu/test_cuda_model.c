/* SPDX-License-Identifier: MIT */
/*
 * The V4 forward pass on the cuda backend: the committed parity data
 * (tests/model/parity/{mixed,alt}: a checkpoint, tokens and transformers'
 * logits) in one call, in the reference's chunks and one token per call, and
 * greedy decoding of the embedded model. Skips (77) without a CUDA device.
 *
 * Tolerances, per position, as max |diff| over max |logit| of the row:
 *   fp32 weights (DP_CUDA_WEIGHTS=f32)
 *     vs transformers' logits         1e-4   (the cpu backend's parity bound)
 *     vs the cpu backend's logits     1e-5
 *   bf16 weights (the default), on a bf16 copy of the checkpoint that the
 *   cpu backend loads too (so both compute with identical weights)
 *     vs the cpu backend's logits     1e-4   (bf16 x hi+lo bf16 products)
 *     vs transformers' fp32 logits    reported only (the weights differ)
 *   the embedded model (bf16): 64 greedy tokens equal to the cpu backend's.
 *   routed experts paged (dram, nvme; k slots): bitwise the resident logits.
 * Positions in meta.json "flip_positions" are skipped, as the cpu test does.
 */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <sys/stat.h>
#include <unistd.h>

#include "gpu-test.h"
#include "model/v4.h"
#include "tests/model/parity-data.h"

DP_GPU_TEST_MAIN

struct runner {
	struct dp_gpu *g;
	struct dp_v4_model *m;
};

static void runner_open_opts(struct runner *r, enum dp_gpu_kind kind, bool f32, const char *dir,
                             const struct dp_v4_load_opts *opts)
{
	char err[1024] = "";
	setenv("DP_CUDA_WEIGHTS", f32 ? "f32" : "bf16", 1);
	if (kind == DP_GPU_CUDA)
		kind = gt_cuda_kind(); /* cpu in a self-test */
	cr_assert_eq(dp_gpu_new(kind, NULL, &r->g, err, sizeof(err)), 0, "%s backend: %s",
	             dp_gpu_kind_name(kind), err);
	cr_assert_eq(dp_v4_model_load_opts(r->g, dir, opts, &r->m, err, sizeof(err)), 0, "%s: %s",
	             dir, err);
}

static void runner_open(struct runner *r, enum dp_gpu_kind kind, bool f32, const char *dir)
{
	runner_open_opts(r, kind, f32, dir, NULL);
}

static void runner_close(struct runner *r)
{
	dp_v4_model_free(r->m);
	dp_gpu_free(r->g);
}

static float *logits_of(struct runner *r, const struct parity *p, const uint32_t *chunks,
                        uint32_t n_chunks)
{
	float *out = malloc((size_t)p->n * p->V * sizeof(float));
	cr_assert_not_null(out);
	int ret = dp_v4_logits(r->m, p->tokens, p->n, chunks, n_chunks, out);
	cr_assert_eq(ret, 0, "dp_v4_logits on %s: %d", dp_gpu_kind_name(dp_gpu_kind_of(r->g)), ret);
	return out;
}

/* Worst per-position max|a-b| / max|ref|; with tol > 0 every position must
 * be within it. */
static double compare(const float *a, const float *ref, const struct parity *p, double tol,
                      const char *what)
{
	double worst = 0;
	uint32_t bad = 0;
	for (uint32_t t = 0; t < p->n; t++) {
		if (p->skip[t])
			continue;
		const float *x = a + (size_t)t * p->V, *y = ref + (size_t)t * p->V;
		double maxref = 0, maxdiff = 0;
		for (uint32_t v = 0; v < p->V; v++) {
			maxref = fmax(maxref, fabs(y[v]));
			double d = fabs((double)x[v] - y[v]);
			maxdiff = isnan(d) ? INFINITY : fmax(maxdiff, d);
		}
		double rel = maxdiff / (maxref > 0 ? maxref : 1);
		worst = fmax(worst, rel);
		if (tol > 0 && !(rel <= tol) && bad++ < 5)
			cr_log_error("%s: position %u: relative %.3g > %.3g", what, t, rel, tol);
	}
	cr_log_info("%s: worst relative difference %.3g%s", what, worst,
	            tol > 0 ? "" : " (reported only)");
	if (tol > 0)
		cr_expect_eq(bad, 0, "%s: %u positions past %.3g (worst %.3g)", what, bad, tol,
		             worst);
	return worst;
}

static uint32_t vocab_of(const char *name)
{
	char dir[512], err[512] = "";
	parity_dir(name, dir, sizeof(dir));
	struct dp_gpu *g;
	struct dp_v4_model *m;
	cr_assert_eq(dp_gpu_new(DP_GPU_CPU, NULL, &g, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(dp_v4_model_load(g, dir, &m, err, sizeof(err)), 0, "%s", err);
	uint32_t V = (uint32_t)dp_v4_model_config(m)->vocab_size;
	dp_v4_model_free(m);
	dp_gpu_free(g);
	return V;
}

/* ---- fp32 weights ------------------------------------------------------------- */

static void fp32_parity(const char *name)
{
	struct parity p = {0};
	parity_open(&p, name, vocab_of(name));
	struct runner cpu, cu;
	runner_open(&cpu, DP_GPU_CPU, true, p.dir);
	runner_open(&cu, DP_GPU_CUDA, true, p.dir);
	uint32_t *ones = malloc(p.n * sizeof(*ones));
	for (uint32_t i = 0; i < p.n; i++)
		ones[i] = 1;
	struct {
		const char *mode;
		const uint32_t *chunks;
		uint32_t n_chunks;
		const float *ref;
	} modes[] = {
	    {"one call", NULL, 0, p.ref_full},
	    {"chunked", p.chunks, p.n_chunks, p.ref_chunked},
	    {"token by token", ones, p.n, p.ref_full},
	};
	for (size_t i = 0; i < 3; i++) {
		char what[128];
		float *a = logits_of(&cu, &p, modes[i].chunks, modes[i].n_chunks);
		float *b = logits_of(&cpu, &p, modes[i].chunks, modes[i].n_chunks);
		snprintf(what, sizeof(what), "%s, fp32 weights, %s: cuda vs transformers", name,
		         modes[i].mode);
		compare(a, modes[i].ref, &p, 1e-4, what);
		snprintf(what, sizeof(what), "%s, fp32 weights, %s: cuda vs cpu backend", name,
		         modes[i].mode);
		compare(a, b, &p, 1e-5, what);
		free(a);
		free(b);
	}
	free(ones);
	runner_close(&cu);
	runner_close(&cpu);
	parity_close(&p);
}

Test(cuda_parity, mixed_fp32_weights_match_transformers_and_the_cpu_backend, .timeout = 600)
{
	fp32_parity("mixed");
}

Test(cuda_parity, alt_fp32_weights_match_transformers_and_the_cpu_backend, .timeout = 600)
{
	fp32_parity("alt");
}

/* ---- bf16 weights ------------------------------------------------------------------ */

/* Copy dir's config.json and model.safetensors into a new temporary
 * directory, every F32 tensor rounded to BF16. Returns the directory. */
static void bf16_copy(const char *dir, char *out, size_t out_len)
{
	char path[1024];
	snprintf(out, out_len, "/tmp/dp-gpu-bf16-XXXXXX");
	cr_assert_not_null(mkdtemp(out));
	/* config.json as is */
	snprintf(path, sizeof(path), "%s/config.json", dir);
	FILE *f = fopen(path, "rb");
	cr_assert_not_null(f, "%s", path);
	fseek(f, 0, SEEK_END);
	long clen = ftell(f);
	fseek(f, 0, SEEK_SET);
	char *cfg = malloc((size_t)clen);
	cr_assert_eq(fread(cfg, 1, (size_t)clen, f), (size_t)clen);
	fclose(f);
	snprintf(path, sizeof(path), "%s/config.json", out);
	f = fopen(path, "wb");
	cr_assert_not_null(f);
	cr_assert_eq(fwrite(cfg, 1, (size_t)clen, f), (size_t)clen);
	fclose(f);
	free(cfg);

	snprintf(path, sizeof(path), "%s/model.safetensors", dir);
	f = fopen(path, "rb");
	cr_assert_not_null(f, "%s", path);
	fseek(f, 0, SEEK_END);
	long flen = ftell(f);
	fseek(f, 0, SEEK_SET);
	unsigned char *buf = malloc((size_t)flen);
	cr_assert_eq(fread(buf, 1, (size_t)flen, f), (size_t)flen);
	fclose(f);
	uint64_t hlen;
	memcpy(&hlen, buf, 8);
	json_error_t jerr;
	json_t *h = json_loadb((const char *)buf + 8, hlen, 0, &jerr);
	cr_assert_not_null(h, "header: %s", jerr.text);
	const unsigned char *data = buf + 8 + hlen;
	unsigned char *nd = malloc((size_t)flen); /* the new data: never larger */
	size_t at = 0;
	const char *key;
	json_t *v;
	json_object_foreach(h, key, v)
	{
		if (!strcmp(key, "__metadata__"))
			continue;
		const char *dt = json_string_value(json_object_get(v, "dtype"));
		json_t *offs = json_object_get(v, "data_offsets");
		size_t b = (size_t)json_integer_value(json_array_get(offs, 0));
		size_t e = (size_t)json_integer_value(json_array_get(offs, 1));
		size_t start = at;
		if (dt && !strcmp(dt, "F32")) {
			for (size_t i = b; i < e; i += 4) {
				float x;
				memcpy(&x, data + i, 4);
				uint16_t hb = dp_f32_to_bf16(x);
				memcpy(nd + at, &hb, 2);
				at += 2;
			}
			json_object_set_new(v, "dtype", json_string("BF16"));
		} else {
			memcpy(nd + at, data + b, e - b);
			at += e - b;
		}
		json_array_set_new(offs, 0, json_integer((json_int_t)start));
		json_array_set_new(offs, 1, json_integer((json_int_t)at));
	}
	char *hs = json_dumps(h, JSON_COMPACT);
	size_t hl = strlen(hs), padded = (hl + 7) & ~(size_t)7;
	snprintf(path, sizeof(path), "%s/model.safetensors", out);
	f = fopen(path, "wb");
	cr_assert_not_null(f);
	uint64_t nh = padded;
	cr_assert_eq(fwrite(&nh, 8, 1, f), 1);
	cr_assert_eq(fwrite(hs, 1, hl, f), hl);
	for (size_t i = hl; i < padded; i++)
		fputc(' ', f);
	cr_assert_eq(fwrite(nd, 1, at, f), at);
	cr_assert_eq(fclose(f), 0);
	free(hs);
	json_decref(h);
	free(nd);
	free(buf);
}

static void rm_copy(const char *dir)
{
	char path[1024];
	snprintf(path, sizeof(path), "%s/config.json", dir);
	unlink(path);
	snprintf(path, sizeof(path), "%s/model.safetensors", dir);
	unlink(path);
	rmdir(dir);
}

static void bf16_parity(const char *name)
{
	struct parity p = {0};
	parity_open(&p, name, vocab_of(name));
	char bdir[256];
	bf16_copy(p.dir, bdir, sizeof(bdir));
	struct runner cpu, cu;
	runner_open(&cpu, DP_GPU_CPU, false, bdir);
	runner_open(&cu, DP_GPU_CUDA, false, bdir);
	for (int chunked = 0; chunked < 2; chunked++) {
		char what[128];
		const uint32_t *ch = chunked ? p.chunks : NULL;
		uint32_t nch = chunked ? p.n_chunks : 0;
		float *a = logits_of(&cu, &p, ch, nch), *b = logits_of(&cpu, &p, ch, nch);
		const char *mode = chunked ? "chunked" : "one call";
		snprintf(what, sizeof(what), "%s, bf16 weights, %s: cuda vs cpu backend", name,
		         mode);
		compare(a, b, &p, 1e-4, what);
		snprintf(what, sizeof(what), "%s, bf16 weights, %s: cuda vs transformers (fp32)",
		         name, mode);
		compare(a, chunked ? p.ref_chunked : p.ref_full, &p, 0, what);
		free(a);
		free(b);
	}
	runner_close(&cu);
	runner_close(&cpu);
	rm_copy(bdir);
	parity_close(&p);
}

Test(cuda_parity, mixed_bf16_weights_match_the_cpu_backend_on_the_same_weights, .timeout = 600)
{
	bf16_parity("mixed");
}

Test(cuda_parity, alt_bf16_weights_match_the_cpu_backend_on_the_same_weights, .timeout = 600)
{
	bf16_parity("alt");
}

/* ---- batching and greedy decoding ---------------------------------------------------- */

/* Two sequences in one batch (one prefilling, one decoding) on cuda give
 * transformers' logits, as on the cpu backend (tests/model/test_parity.c). */
Test(cuda_parity, batched_sequences_match_their_separate_runs, .timeout = 600)
{
	struct parity p = {0};
	parity_open(&p, "mixed", vocab_of("mixed"));
	struct runner cu;
	runner_open(&cu, DP_GPU_CUDA, true, p.dir);
	struct dp_v4_seq *a, *b;
	cr_assert_eq(dp_v4_seq_new(cu.m, &a), 0);
	cr_assert_eq(dp_v4_seq_new(cu.m, &b), 0);
	float *scratch = malloc((size_t)p.n * p.V * sizeof(float));
	struct dp_v4_batch_item first = {b, p.tokens, 30, true};
	cr_assert_eq(dp_v4_forward(cu.m, &first, 1, scratch), 0);
	struct dp_v4_batch_item both[2] = {
	    {a, p.tokens, 20, true},
	    {b, p.tokens + 30, 1, false},
	};
	float *out = malloc((size_t)21 * p.V * sizeof(float));
	cr_assert_eq(dp_v4_forward(cu.m, both, 2, out), 0);
	struct parity one = p;
	one.n = 20;
	compare(out, p.ref_full, &one, 1e-4, "batched: sequence a (prefill of 20)");
	one.n = 1;
	compare(out + (size_t)20 * p.V, p.ref_full + (size_t)30 * p.V, &one, 1e-4,
	        "batched: sequence b (position 30)");
	free(out);
	free(scratch);
	dp_v4_seq_free(a);
	dp_v4_seq_free(b);
	runner_close(&cu);
	parity_close(&p);
}

/* Routed experts paged into k slots a layer (so prefill runs each layer in
 * passes), from a host copy and from the checkpoint files with lookahead:
 * the cuda moe op on the paged stacks gives the resident logits bitwise. */
static void paged_equals_resident(const char *name)
{
	struct parity p;
	parity_open(&p, name, vocab_of(name));
	struct runner res;
	runner_open(&res, DP_GPU_CUDA, false, p.dir);
	uint32_t k = (uint32_t)dp_v4_model_config(res.m)->num_experts_per_tok;
	float *want = logits_of(&res, &p, p.chunks, p.n_chunks);
	runner_close(&res);
	for (int where = DP_V4_EXPERTS_DRAM; where <= DP_V4_EXPERTS_NVME; where++) {
		struct dp_v4_load_opts o = { .experts = (enum dp_v4_experts_where)where,
		                             .expert_slots = k };
		struct runner r;
		runner_open_opts(&r, DP_GPU_CUDA, false, p.dir, &o);
		float *got = logits_of(&r, &p, p.chunks, p.n_chunks);
		cr_expect(!memcmp(got, want, (size_t)p.n * p.V * sizeof(float)),
		          "%s: experts paged from %s differ from resident ones", name,
		          dp_v4_experts_where_name(o.experts));
		struct dp_v4_expert_stats st;
		dp_v4_model_expert_stats(r.m, &st);
		cr_expect_gt(st.misses + st.prefetched, 0);
		free(got);
		runner_close(&r);
	}
	free(want);
	parity_close(&p);
}

Test(cuda_model, paged_experts_give_the_resident_logits_bitwise, .timeout = 600)
{
	paged_equals_resident("mixed");
	paged_equals_resident("alt");
}

static uint32_t argmax(const float *v, uint32_t n)
{
	uint32_t best = 0;
	for (uint32_t i = 1; i < n; i++)
		if (v[i] > v[best])
			best = i;
	return best;
}

/* Greedy tokens from a byte prompt; logits of every step kept. */
static void greedy(struct runner *r, const char *prompt, uint32_t n_new, int32_t *toks,
                   float *logits)
{
	uint32_t V = (uint32_t)dp_v4_model_config(r->m)->vocab_size, np = (uint32_t)strlen(prompt);
	struct dp_v4_seq *s;
	cr_assert_eq(dp_v4_seq_new(r->m, &s), 0);
	int32_t *pt = malloc(np * sizeof(int32_t));
	for (uint32_t i = 0; i < np; i++)
		pt[i] = (unsigned char)prompt[i];
	struct dp_v4_batch_item it = {s, pt, np, false};
	cr_assert_eq(dp_v4_forward(r->m, &it, 1, logits), 0);
	for (uint32_t i = 0; i < n_new; i++) {
		toks[i] = (int32_t)argmax(logits + (size_t)i * V, V);
		if (i + 1 == n_new)
			break;
		struct dp_v4_batch_item step = {s, &toks[i], 1, false};
		cr_assert_eq(dp_v4_forward(r->m, &step, 1, logits + (size_t)(i + 1) * V), 0);
	}
	free(pt);
	dp_v4_seq_free(s);
}

Test(cuda_model, greedy_tokens_on_the_embedded_model_equal_the_cpu_backends, .timeout = 600)
{
	char dir[1024];
	cr_assert_eq(dp_v4_resolve_dir(NULL, dir, sizeof(dir)), 0,
	             "no embedded model (set DUALPATH_BUILTIN_MODEL)");
	struct runner cpu, cu;
	runner_open(&cpu, DP_GPU_CPU, false, dir);
	runner_open(&cu, DP_GPU_CUDA, false, dir);
	uint32_t V = (uint32_t)dp_v4_model_config(cpu.m)->vocab_size, N = 64;
	int32_t tc[64], tg[64];
	float *lc = malloc((size_t)N * V * sizeof(float)),
	      *lg = malloc((size_t)N * V * sizeof(float));
	const char *prompt = "The hacker ethic, as the Jargon File tells it, ";
	greedy(&cpu, prompt, N, tc, lc);
	greedy(&cu, prompt, N, tg, lg);
	double worst = 0;
	for (uint32_t i = 0; i < N; i++) {
		double mr = 0, md = 0;
		for (uint32_t v = 0; v < V; v++) {
			mr = fmax(mr, fabs(lc[(size_t)i * V + v]));
			md = fmax(md, fabs((double)lg[(size_t)i * V + v] - lc[(size_t)i * V + v]));
		}
		worst = fmax(worst, md / mr);
		if (tc[i] != tg[i]) {
			/* the margin of the cpu's choice over the cuda's, on the cpu's logits */
			const float *l = lc + (size_t)i * V;
			cr_log_error(
			    "step %u: cpu token %d, cuda token %d (cpu logits %.6g vs %.6g)", i,
			    tc[i], tg[i], l[tc[i]], l[tg[i]]);
			break;
		}
	}
	cr_log_info("embedded, bf16 weights: worst relative logit difference over %u steps %.3g", N,
	            worst);
	cr_expect_eq(memcmp(tc, tg, sizeof(tc)), 0, "greedy tokens differ");
	free(lc);
	free(lg);
	runner_close(&cu);
	runner_close(&cpu);
}

/* The published V4 format (FP8 + FP4) has no cuda kernels: the load is refused before anything
 * is uploaded, naming a quantized tensor and the way out, unless the caller asks to dequantize.
 * (The refusal needs a cuda dp_gpu, hence a device: it cannot run in the cpu-only suites.) */
Test(cuda_model, published_fp8_fp4_checkpoint_is_refused_with_a_clear_message)
{
	GT_CUDA_ONLY();
	const char *root = getenv("DP_TEST_PUBLISHED");
	char dir[600], err[1024] = "";
	struct dp_gpu *g;
	struct dp_v4_model *m = NULL;

	snprintf(dir, sizeof(dir), "%s/instruct", root ? root : "tests/model/published");
	cr_assert_eq(dp_gpu_new(DP_GPU_CUDA, NULL, &g, err, sizeof(err)), 0, "%s", err);
	cr_expect_eq(dp_v4_model_load(g, dir, &m, err, sizeof(err)), -ENOTSUP, "%s", err);
	cr_expect_null(m);
	cr_expect(strstr(err, "cuda backend has no kernels") && strstr(err, "cpu backend"),
	          "message: %s", err);
	dp_gpu_free(g);
}
