/* SPDX-License-Identifier: MIT */
/*
 * dp-logits — logits of every position of a token sequence, for parity
 * checks against other implementations.
 *
 *   dp-logits --model DIR --tokens 5,17,99,... [--chunks 40,17,1,1,...]
 *             [--backend cpu|cuda|auto] --out FILE
 *             [--engram-tables FILE [--engram-residency device|dram|nvme]
 *             [--engram-cache ROWS]]
 *             [--experts device|dram|nvme [--expert-slots N]] (tools/expert-opts.h)
 *
 * Writes little-endian float32, row-major [n_tokens][vocab_size]. With
 * --chunks the prompt is fed in those pieces, state carried between calls
 * (the pieces must add up to the number of tokens); default: one call.
 * This interface is stable: other tools rely on it. An Engram model needs
 * its tables (tools/engram-opts.h).
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tools/engram-opts.h"
#include "tools/expert-opts.h"
#include "model/v4.h"

static int parse_list(const char *s, int32_t **ret, uint32_t *ret_n, const char *what)
{
	uint32_t n = 0, cap = 16;
	int32_t *v = malloc(cap * sizeof(*v));
	const char *p = s;

	if (!v)
		return -ENOMEM;
	while (*p) {
		char *end;
		errno = 0;
		long x = strtol(p, &end, 10);
		if (end == p || errno || x < 0 || x > INT32_MAX || (*end && *end != ',')) {
			fprintf(stderr, "dp-logits: --%s: not a list of non-negative integers: %s\n", what, s);
			free(v);
			return -EINVAL;
		}
		if (n == cap) {
			int32_t *nv = realloc(v, 2 * cap * sizeof(*v));
			if (!nv) {
				free(v);
				return -ENOMEM;
			}
			v = nv;
			cap *= 2;
		}
		v[n++] = (int32_t)x;
		p = *end ? end + 1 : end;
	}
	if (n == 0) {
		fprintf(stderr, "dp-logits: --%s is empty\n", what);
		free(v);
		return -EINVAL;
	}
	*ret = v;
	*ret_n = n;
	return 0;
}

static void usage(FILE *f)
{
	fprintf(f, "usage: dp-logits --model DIR --tokens 5,17,99,... [--chunks 40,17,1,...]\n"
		   "                 [--backend cpu|cuda|auto] --out FILE\n"
		   "                 " ENGRAM_USAGE "\n"
		   "                 " EXPERT_USAGE "\n"
		   "                 [--numerics transformers|reference|auto]\n");
}

int main(int argc, char **argv)
{
	const char *model = NULL, *tokens_arg = NULL, *chunks_arg = NULL, *out = NULL;
	const char *backend = "cpu";
	struct engram_opts eo = { 0 };
	const char *xwhere = NULL, *xslots = NULL, *numerics = NULL;
	struct dp_v4_load_opts lo;
	static const struct option opts[] = {
		{ "model", required_argument, NULL, 'm' },   { "tokens", required_argument, NULL, 't' },
		{ "chunks", required_argument, NULL, 'c' },  { "out", required_argument, NULL, 'o' },
		{ "backend", required_argument, NULL, 'b' }, { "help", no_argument, NULL, 'h' },
		{ "engram-tables", required_argument, NULL, 'E' },
		{ "engram-residency", required_argument, NULL, 'R' },
		{ "engram-cache", required_argument, NULL, 'C' },
		{ "experts", required_argument, NULL, 'X' },
		{ "expert-slots", required_argument, NULL, 'S' },
		{ "numerics", required_argument, NULL, 'N' },
		{ 0 },
	};
	for (int c; (c = getopt_long(argc, argv, "m:t:c:o:b:h", opts, NULL)) != -1;) {
		switch (c) {
		case 'm': model = optarg; break;
		case 't': tokens_arg = optarg; break;
		case 'c': chunks_arg = optarg; break;
		case 'o': out = optarg; break;
		case 'b': backend = optarg; break;
		case 'E': eo.tables = optarg; break;
		case 'R': eo.residency = optarg; break;
		case 'C': eo.cache = optarg; break;
		case 'X': xwhere = optarg; break;
		case 'S': xslots = optarg; break;
		case 'N': numerics = optarg; break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (!model || !tokens_arg || !out || optind != argc) {
		usage(stderr);
		return 2;
	}
	int32_t *tokens = NULL, *chunks = NULL;
	uint32_t n_tokens = 0, n_chunks = 0;
	if (parse_list(tokens_arg, &tokens, &n_tokens, "tokens") < 0)
		return 2;
	if (chunks_arg) {
		if (parse_list(chunks_arg, &chunks, &n_chunks, "chunks") < 0)
			return 2;
		uint64_t sum = 0;
		for (uint32_t i = 0; i < n_chunks; i++) {
			if (chunks[i] == 0) {
				fprintf(stderr, "dp-logits: --chunks: a chunk of 0 tokens\n");
				return 2;
			}
			sum += (uint64_t)chunks[i];
		}
		if (sum != n_tokens) {
			fprintf(stderr, "dp-logits: --chunks add up to %llu, but --tokens has %u\n",
				(unsigned long long)sum, n_tokens);
			return 2;
		}
	}

	enum dp_gpu_kind kind;
	char err[512] = "";
	if (expert_opts_parse("dp-logits", xwhere, xslots, &lo) < 0)
		return 2;
	/* model/v4.h: auto is reference for a checkpoint with quantization_config */
	if (numerics && dp_v4_numerics_parse(numerics, &lo.numerics) < 0) {
		fprintf(stderr, "dp-logits: --numerics must be transformers, reference or auto, not %s\n",
			numerics);
		return 2;
	}
	if (dp_gpu_kind_parse(backend, &kind) < 0) {
		fprintf(stderr, "dp-logits: --backend must be cpu, cuda or auto, not %s\n", backend);
		return 2;
	}
	struct dp_gpu *g;
	int ret = dp_gpu_new(kind, NULL, &g, err, sizeof(err));
	if (ret < 0) {
		fprintf(stderr, "dp-logits: cannot start the %s backend: %s\n", dp_gpu_kind_name(kind), err);
		return 1;
	}
	struct dp_v4_model *m;
	ret = dp_v4_model_load_opts(g, model, &lo, &m, err, sizeof(err));
	if (ret < 0) {
		fprintf(stderr, "dp-logits: cannot load model %s: %s\n", model, err);
		dp_gpu_free(g);
		return 1;
	}
	if (engram_opts_open(&eo, "dp-logits", m, g) < 0) {
		engram_opts_close(&eo, m);
		dp_v4_model_free(m);
		dp_gpu_free(g);
		return 1;
	}
	uint32_t V = (uint32_t)dp_v4_model_config(m)->vocab_size;
	float *logits = malloc((size_t)n_tokens * V * sizeof(float));
	if (!logits) {
		fprintf(stderr, "dp-logits: out of memory for %u x %u logits\n", n_tokens, V);
		return 1;
	}
	ret = dp_v4_logits(m, tokens, n_tokens, (const uint32_t *)chunks, n_chunks, logits);
	if (ret == -EINVAL)
		fprintf(stderr, "dp-logits: invalid input (a token id >= vocab size %u?)\n", V);
	else if (ret < 0)
		fprintf(stderr, "dp-logits: forward failed: %s%s%s\n", strerror(-ret),
			dp_gpu_last_error(g)[0] ? ": " : "", dp_gpu_last_error(g));
	if (ret == 0) {
		FILE *f = fopen(out, "wb");
		if (!f || fwrite(logits, sizeof(float), (size_t)n_tokens * V, f) != (size_t)n_tokens * V ||
		    fclose(f) != 0) {
			fprintf(stderr, "dp-logits: cannot write %s: %s\n", out, strerror(errno));
			ret = -EIO;
		}
	}
	engram_opts_close(&eo, m);
	dp_v4_model_free(m);
	dp_gpu_free(g);
	free(logits);
	free(tokens);
	free(chunks);
	return ret == 0 ? 0 : 1;
}
