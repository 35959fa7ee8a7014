/* SPDX-License-Identifier: MIT */
/*
 * dp-generate — generate text with a V4 model on one backend.
 *
 *   dp-generate [--model DIR|builtin] --prompt TEXT [-n N] [--temperature T]
 *               [--top-k K] [--top-p P] [--seed S] [--backend cpu|cuda|auto]
 *               [--stats] [--engram-tables FILE [--engram-residency device|dram|nvme]
 *               [--engram-cache ROWS]]
 *               [--experts device|dram|nvme [--expert-slots N]] (tools/expert-opts.h)
 *
 * Prints the prompt, then the generated text as it comes. Stops after N new
 * tokens or at the model's EOS. --stats prints prefill and decode tokens/s
 * to stderr (and the Engram store's figures). An Engram model needs its
 * tables (tools/engram-opts.h); each step's rows are prefetched as soon
 * as its token is known, before the forward.
 */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/clock.h"
#include "model/sample.h"
#include "model/tokenizer.h"
#include "model/v4.h"
#include "tools/engram-opts.h"
#include "tools/expert-opts.h"

static void usage(FILE *f)
{
	fprintf(f, "usage: dp-generate [--model DIR|builtin] --prompt TEXT [-n N] [--temperature T]\n"
		   "                   [--top-k K] [--top-p P] [--seed S] [--backend cpu|cuda|auto]\n"
		   "                   [--stats] " ENGRAM_USAGE "\n"
		   "                   " EXPERT_USAGE "\n"
		   "                   [--numerics transformers|reference|auto]\n");
}

static bool parse_num(const char *s, double lo, double hi, double *ret)
{
	char *end;
	errno = 0;
	double v = strtod(s, &end);
	if (end == s || *end || errno || v < lo || v > hi)
		return false;
	*ret = v;
	return true;
}

int main(int argc, char **argv)
{
	const char *model_name = "builtin", *prompt = NULL, *backend = "auto";
	double n_new = 64, temperature = 0, top_k = 0, top_p = 1, seed = 0;
	bool stats = false;
	struct engram_opts eo = { 0 };
	const char *xwhere = NULL, *xslots = NULL, *numerics = NULL;
	struct dp_v4_load_opts lo;
	static const struct option opts[] = {
		{ "model", required_argument, NULL, 'm' },	 { "prompt", required_argument, NULL, 'p' },
		{ "tokens", required_argument, NULL, 'n' },	 { "temperature", required_argument, NULL, 't' },
		{ "top-k", required_argument, NULL, 'k' },	 { "top-p", required_argument, NULL, 'P' },
		{ "seed", required_argument, NULL, 's' },	 { "backend", required_argument, NULL, 'b' },
		{ "stats", no_argument, NULL, 'S' },		 { "help", no_argument, NULL, 'h' },
		{ "engram-tables", required_argument, NULL, 'E' },
		{ "engram-residency", required_argument, NULL, 'R' },
		{ "engram-cache", required_argument, NULL, 'C' },
		{ "experts", required_argument, NULL, 'X' },
		{ "expert-slots", required_argument, NULL, 'L' },
		{ "numerics", required_argument, NULL, 'N' },
		{ 0 },
	};
	for (int c; (c = getopt_long(argc, argv, "m:p:n:t:k:P:s:b:Sh", opts, NULL)) != -1;) {
		bool ok = true;
		switch (c) {
		case 'm': model_name = optarg; break;
		case 'p': prompt = optarg; break;
		case 'n': ok = parse_num(optarg, 1, 1 << 20, &n_new); break;
		case 't': ok = parse_num(optarg, 0, 100, &temperature); break;
		case 'k': ok = parse_num(optarg, 0, INT_MAX, &top_k); break;
		case 'P': ok = parse_num(optarg, 1e-9, 1, &top_p); break;
		case 's': ok = parse_num(optarg, 0, 1e18, &seed); break;
		case 'b': backend = optarg; break;
		case 'S': stats = true; break;
		case 'E': eo.tables = optarg; break;
		case 'R': eo.residency = optarg; break;
		case 'C': eo.cache = optarg; break;
		case 'X': xwhere = optarg; break;
		case 'L': xslots = optarg; break;
		case 'N': numerics = optarg; break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
		if (!ok) {
			fprintf(stderr, "dp-generate: bad value for -%c: %s\n", c, optarg);
			return 2;
		}
	}
	if (!prompt || optind != argc) {
		usage(stderr);
		return 2;
	}

	char dir[PATH_MAX], err[512] = "";
	int ret = dp_v4_resolve_dir(model_name, dir, sizeof(dir));
	if (ret < 0) {
		fprintf(stderr, "dp-generate: cannot find the %s model: %s\n", model_name,
			ret == -ENOENT ? "no embedded model installed (set DUALPATH_BUILTIN_MODEL)"
				       : strerror(-ret));
		return 1;
	}
	enum dp_gpu_kind kind;
	if (expert_opts_parse("dp-generate", xwhere, xslots, &lo) < 0)
		return 2;
	/* model/v4.h: auto is reference for a checkpoint with quantization_config */
	if (numerics && dp_v4_numerics_parse(numerics, &lo.numerics) < 0) {
		fprintf(stderr, "dp-generate: --numerics must be transformers, reference or auto, not %s\n",
			numerics);
		return 2;
	}
	if (dp_gpu_kind_parse(backend, &kind) < 0) {
		fprintf(stderr, "dp-generate: --backend must be cpu, cuda or auto, not %s\n", backend);
		return 2;
	}
	struct dp_gpu *g;
	if ((ret = dp_gpu_new(kind, NULL, &g, err, sizeof(err))) < 0) {
		fprintf(stderr, "dp-generate: cannot start the %s backend: %s\n", dp_gpu_kind_name(kind), err);
		return 1;
	}
	struct dp_v4_model *m;
	if ((ret = dp_v4_model_load_opts(g, dir, &lo, &m, err, sizeof(err))) < 0) {
		fprintf(stderr, "dp-generate: cannot load model %s: %s\n", dir, err);
		dp_gpu_free(g);
		return 1;
	}
	if (engram_opts_open(&eo, "dp-generate", m, g) < 0) {
		engram_opts_close(&eo, m);
		dp_v4_model_free(m);
		dp_gpu_free(g);
		return 1;
	}
	const struct dp_v4_config *c = dp_v4_model_config(m);
	struct dp_tok *tok;
	if ((ret = dp_v4_tokenizer_new(dir, c, &tok, err, sizeof(err))) < 0) {
		fprintf(stderr, "dp-generate: %s\n", err);
		return 1;
	}
	size_t cap = dp_tok_encode_bound(tok, strlen(prompt), DP_TOK_ADD_BOS);
	int32_t *ids = malloc((cap ? cap : 1) * sizeof(*ids));
	size_t n_ids = 0;
	if (!ids || dp_tok_encode(tok, prompt, strlen(prompt), DP_TOK_ADD_BOS, ids, cap, &n_ids) < 0 ||
	    n_ids == 0) {
		fprintf(stderr, "dp-generate: cannot tokenize the prompt\n");
		return 1;
	}
	int32_t eos = dp_tok_special(tok, DP_TOK_EOS);

	struct dp_sampler_params sp = { .temperature = (float)temperature, .top_k = (int)top_k,
					.top_p = (float)top_p, .seed = (uint64_t)seed };
	size_t sbytes = dp_sampler_scratch_size(c->vocab_size);
	void *sscratch = malloc(sbytes);
	struct dp_sampler sampler;
	if (!sscratch || dp_sampler_init(&sampler, &sp, sscratch, sbytes) < 0) {
		fprintf(stderr, "dp-generate: invalid sampling parameters\n");
		return 2;
	}
	float *logits = malloc((size_t)c->vocab_size * sizeof(float));
	struct dp_v4_seq *seq;
	if (!logits || dp_v4_seq_new(m, &seq) < 0) {
		fprintf(stderr, "dp-generate: out of memory\n");
		return 1;
	}

	fwrite(prompt, 1, strlen(prompt), stdout);
	fflush(stdout);
	double t0 = dp_clock_s();
	struct dp_v4_batch_item it = { .seq = seq, .tokens = ids, .n_tokens = (uint32_t)n_ids };
	ret = eo.s ? dp_engram_prefetch(eo.s, &it, 1) : 0;
	if (ret == 0)
		ret = dp_v4_forward(m, &it, 1, logits);
	double t1 = dp_clock_s(), t_decode = 0;
	struct dp_tok_stream ts;
	dp_tok_stream_init(&ts, DP_TOK_STREAM_UTF8);
	char *out = malloc(dp_tok_stream_bound(tok));
	int generated = 0;
	while (ret == 0 && generated < (int)n_new) {
		int id;
		if ((ret = dp_sampler_sample(&sampler, logits, c->vocab_size, &id)) < 0)
			break;
		generated++;
		if (id == eos)
			break;
		size_t len = 0;
		if (dp_tok_stream_next(tok, &ts, id, out, dp_tok_stream_bound(tok), &len) == 0) {
			fwrite(out, 1, len, stdout);
			fflush(stdout);
		}
		if (generated == (int)n_new)
			break;
		int32_t next = id;
		struct dp_v4_batch_item step = { .seq = seq, .tokens = &next, .n_tokens = 1 };
		double a = dp_clock_s();
		/* the token is known: issue its Engram reads before the forward */
		ret = eo.s ? dp_engram_prefetch(eo.s, &step, 1) : 0;
		if (ret == 0)
			ret = dp_v4_forward(m, &step, 1, logits);
		t_decode += dp_clock_s() - a;
	}
	size_t len = 0;
	if (dp_tok_stream_flush(&ts, out, dp_tok_stream_bound(tok), &len) == 0)
		fwrite(out, 1, len, stdout);
	fputc('\n', stdout);
	if (ret < 0)
		fprintf(stderr, "dp-generate: generation failed: %s%s%s\n", strerror(-ret),
			dp_gpu_last_error(g)[0] ? ": " : "", dp_gpu_last_error(g));
	if (stats)
		fprintf(stderr, "dp-generate: %s backend, prefill %zu tokens in %.3f s (%.1f tok/s), "
			"decode %d tokens in %.3f s (%.1f tok/s)\n", dp_gpu_kind_name(kind), n_ids,
			t1 - t0, n_ids / (t1 - t0), generated > 1 ? generated - 1 : 0, t_decode,
			generated > 1 ? (generated - 1) / t_decode : 0.0);
	if (stats && eo.s) {
		struct dp_engram_store_stats es;
		dp_engram_store_get_stats(eo.s, &es);
		fprintf(stderr, "dp-generate: Engram %s: %llu rows, cache %llu hits / %llu misses, "
			"%llu reads (%llu blocks, %llu shared), waited %.3f s, gathered %.3f s\n",
			eo.residency ? eo.residency : "dram", (unsigned long long)es.rows,
			(unsigned long long)es.cache_hits, (unsigned long long)es.cache_misses,
			(unsigned long long)es.reads, (unsigned long long)es.blocks_read,
			(unsigned long long)es.blocks_shared, es.wait_ns * 1e-9, es.gather_ns * 1e-9);
	}
	if (stats && lo.experts != DP_V4_EXPERTS_DEVICE) {
		struct dp_v4_expert_stats xs;
		dp_v4_model_expert_stats(m, &xs);
		fprintf(stderr, "dp-generate: experts paged from %s, %u slots a layer: %llu uses, "
			"%llu hits, %llu misses, %llu read ahead (%llu more unused), %llu passes, "
			"%.1f MiB in, waited %.3f s, filled %.3f s\n",
			dp_v4_experts_where_name(xs.where), xs.slots, (unsigned long long)xs.uses,
			(unsigned long long)xs.hits, (unsigned long long)xs.misses,
			(unsigned long long)xs.prefetched, (unsigned long long)xs.ahead_unused,
			(unsigned long long)xs.passes, xs.bytes_in / 1048576.0, xs.wait_ns * 1e-9,
			xs.fill_ns * 1e-9);
	}
	free(out);
	free(logits);
	free(sscratch);
	free(ids);
	dp_v4_seq_free(seq);
	dp_tok_free(tok);
	engram_opts_close(&eo, m);
	dp_v4_model_free(m);
	dp_gpu_free(g);
	return ret < 0 ? 1 : 0;
}
