/* SPDX-License-Identifier: MIT */
/*
 * bench/gpu — decode and prefill tokens/s of the V4 forward on one backend
 * (cuda by default), beside the memory-bandwidth bound of the decode step.
 * bench/gpu/run runs it over models, batches and contexts, with transformers
 * on the same GPU beside it (bench/gpu/hf_gpu.py).
 *
 *   bench-gpu --model DIR|builtin [--backend cuda|cpu] [--batch B,...] [--context C,...]
 *             [--decode N] [--prefill] [--prefill-max T] [--chunk P] [--reps R] [--seed S]
 *             [--json]
 *
 * Every (batch, context) pair of the two lists is measured with the model
 * loaded once; one report (or JSON line) each.
 *
 * decode   B sequences standing at position C (dp_v4_seq_new_at: state pages
 *          allocated and zeroed, as after a restore, without spending a
 *          prefill on them; the work of a step does not depend on the values),
 *          4 warm-up steps, then R rounds of N steps, each step one
 *          dp_v4_forward of B one-token items (last-token logits on the
 *          host); tok/s = B * N / round time. Best and median over rounds.
 * prefill  with --prefill, where B * C <= --prefill-max (default 65536): B
 *          fresh sequences fed C tokens each, P tokens per sequence per
 *          forward (default: all at once, capped at 8192 rows a forward),
 *          last-token logits; tok/s = B * C / time. One warm-up prefill of
 *          min(C, 256) tokens first.
 * bound    bytes a decode step must read: every weight except the embedding
 *          table (one row a token) and the routed experts, plus the experts B
 *          tokens touch (expected distinct experts of B uniform top-k draws,
 *          per MoE layer), plus each sequence's state the step reads (window,
 *          HCA entries, CSA selected entries and all index keys), over the
 *          measured device-to-device copy bandwidth (read + write bytes / s of
 *          a 1 GiB copy); bound tok/s = B / (bytes / bandwidth).
 * Tokens: splitmix64 streams as bench/forward (sequence b: seed + b).
 * Ends with RESULT lines (anchor = the bandwidth bound).
 */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench/bench-util.h"
#include "model/v4.h"

#define LIST_MAX 16

struct opts {
	const char *model, *backend;
	uint32_t batch[LIST_MAX], n_batch, context[LIST_MAX], n_context;
	uint32_t decode, chunk, reps;
	uint64_t prefill_max, seed;
	bool prefill, json;
};

static void usage(FILE *f)
{
	fprintf(f, "usage: bench-gpu --model DIR|builtin [--backend cuda|cpu] [--batch B,...]\n"
	           "                 [--context C,...] [--decode N] [--prefill] [--prefill-max T]\n"
	           "                 [--chunk P] [--reps R] [--seed S] [--json]\n");
}

static bool parse_u32(const char *s, uint32_t *ret)
{
	char *end;
	errno = 0;
	unsigned long v = strtoul(s, &end, 10);
	if (errno || *end || end == s || v > UINT32_MAX)
		return false;
	*ret = (uint32_t)v;
	return true;
}

/* "1,8,64" -> list (each > 0 unless zero_ok). */
static bool parse_list(const char *s, uint32_t *out, uint32_t *n, bool zero_ok)
{
	char buf[256], *save = NULL;
	snprintf(buf, sizeof(buf), "%s", s);
	*n = 0;
	for (char *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
		if (*n == LIST_MAX || !parse_u32(t, &out[*n]) || (!zero_ok && out[*n] == 0))
			return false;
		(*n)++;
	}
	return *n > 0;
}

/* Device-to-device copy bandwidth, read + write bytes per second. */
static double copy_bandwidth(struct dp_gpu *g, size_t bytes)
{
	void *a = dp_gpu_alloc(g, bytes, DP_GPU_MEM_SCRATCH),
	     *b = dp_gpu_alloc(g, bytes, DP_GPU_MEM_SCRATCH);
	double best = 0;
	if (a && b && dp_gpu_copy(g, b, a, bytes) == 0 && dp_gpu_sync(g) == 0) {
		for (int r = 0; r < 5; r++) {
			double t0 = dp_clock_s();
			if (dp_gpu_copy(g, b, a, bytes) < 0 || dp_gpu_copy(g, a, b, bytes) < 0 ||
			    dp_gpu_sync(g) < 0)
				break;
			double bw = 4.0 * bytes / (dp_clock_s() - t0);
			if (bw > best)
				best = bw;
		}
	}
	dp_gpu_dealloc(g, a, bytes, DP_GPU_MEM_SCRATCH);
	dp_gpu_dealloc(g, b, bytes, DP_GPU_MEM_SCRATCH);
	return best;
}

/* Bytes one decode step of B sequences at context C must read. */
static double step_bytes(const struct dp_v4_config *c, uint64_t weight_bytes, size_t wsize,
                         uint32_t B, uint64_t C, double *ret_weights, double *ret_state)
{
	double D = c->hidden_size, I = c->moe_intermediate_size, E = c->n_routed_experts;
	double k = c->num_experts_per_tok, L = c->num_hidden_layers;
	double expert = 3.0 * I * D * wsize; /* gate, up, down */
	double all_experts = expert * E * L;
	double embed = (double)c->vocab_size * D * wsize;
	double dense = (double)weight_bytes - all_experts - (c->tie_word_embeddings ? 0 : embed);
	double touched = E * (1.0 - pow(1.0 - k / E, B)); /* expected distinct experts */
	double w = dense + touched * expert * L;
	double d = c->head_dim, ic = c->index_head_dim, W = c->sliding_window;
	double state = 0;
	for (int l = 0; l < c->num_hidden_layers; l++) {
		double s = (C + 1 < W ? C + 1 : W) * d; /* the raw window */
		double m = dp_v4_compress_rate(c, l);
		if (dp_v4_is_hca(c, l))
			s += floor((C + 1) / m) * d;
		if (dp_v4_is_csa(c, l)) {
			double n = floor((C + 1) / m);
			s += (n < c->index_topk ? n : c->index_topk) * d + n * ic;
		}
		state += s * sizeof(float);
	}
	*ret_weights = w;
	*ret_state = state * B;
	return w + state * B;
}

struct bench {
	struct opts o;
	struct dp_gpu *g;
	struct dp_v4_model *m;
	enum dp_gpu_kind kind;
	char dir[4096];
	double load_s, bw;
	uint64_t wbytes;
	size_t wsize;
};

/* One (batch, context) point. Returns 0 or a negative errno. */
static int run_one(struct bench *bn, uint32_t B, uint32_t C)
{
	const struct opts *o = &bn->o;
	struct dp_v4_model *m = bn->m;
	const struct dp_v4_config *c = dp_v4_model_config(m);
	uint32_t V = (uint32_t)c->vocab_size;
	bool do_prefill = o->prefill && C > 0 && (uint64_t)B * C <= o->prefill_max;
	uint32_t ntok = (do_prefill ? C : 0) + o->decode + 8;
	float *logits = malloc((size_t)B * V * sizeof(float));
	struct dp_v4_batch_item *items = calloc(B, sizeof(*items));
	struct dp_v4_seq **seqs = calloc(B, sizeof(*seqs));
	int32_t *toks = malloc((size_t)B * ntok * sizeof(int32_t));
	double *round_tps = calloc(o->reps, sizeof(double));
	int ret = 0;
	if (!logits || !items || !seqs || !toks || !round_tps) {
		ret = -ENOMEM;
		goto out;
	}
	for (uint32_t b = 0; b < B; b++)
		stream_tokens(o->seed, b, V, toks + (size_t)b * ntok, ntok);

	/* ---- prefill ---- */
	double prefill_tps = 0;
	if (do_prefill) {
		uint32_t P = o->chunk ? o->chunk : C;
		if ((uint64_t)P * B > 8192)
			P = 8192 / B ? 8192 / B : 1;
		for (int warm = 1; warm >= 0 && ret == 0; warm--) {
			uint32_t len = warm ? (C < 256 ? C : 256) : C;
			for (uint32_t b = 0; b < B && ret == 0; b++)
				ret = dp_v4_seq_new(m, &seqs[b]);
			double ts = dp_clock_s();
			for (uint32_t done = 0; done < len && ret == 0;) {
				uint32_t n = len - done < P ? len - done : P;
				for (uint32_t b = 0; b < B; b++)
					items[b] = (struct dp_v4_batch_item){
					    seqs[b], toks + (size_t)b * ntok + done, n, false};
				ret = dp_v4_forward(m, items, B, logits);
				done += n;
			}
			if (!warm && ret == 0)
				prefill_tps = (double)B * len / (dp_clock_s() - ts);
			for (uint32_t b = 0; b < B; b++) {
				dp_v4_seq_free(seqs[b]);
				seqs[b] = NULL;
			}
		}
		if (ret < 0) {
			fprintf(stderr, "bench-gpu: prefill of %u x %u failed: %s\n", B, C,
			        strerror(-ret));
			goto out;
		}
	}

	/* ---- decode at context C ---- */
	for (uint32_t b = 0; b < B && ret == 0; b++)
		ret = dp_v4_seq_new_at(m, C, &seqs[b]);
	if (ret < 0) {
		fprintf(stderr, "bench-gpu: cannot place %u sequences at position %u: %s\n", B, C,
		        strerror(-ret));
		goto out;
	}
	uint32_t step = 0, first = do_prefill ? C : 0;
	for (uint32_t r = 0; r <= o->reps && ret == 0; r++) {
		uint32_t n = r == 0 ? 4 : o->decode; /* round 0: warm-up */
		double ts = dp_clock_s();
		for (uint32_t s = 0; s < n && ret == 0; s++, step++) {
			for (uint32_t b = 0; b < B; b++)
				items[b] = (struct dp_v4_batch_item){
				    seqs[b],
				    toks + (size_t)b * ntok + first + step % (ntok - first), 1,
				    false};
			ret = dp_v4_forward(m, items, B, logits);
		}
		if (r > 0)
			round_tps[r - 1] = (double)B * n / (dp_clock_s() - ts);
	}
	if (ret < 0) {
		fprintf(stderr, "bench-gpu: decode of %u x 1 at %u failed: %s\n", B, C,
		        strerror(-ret));
		goto out;
	}
	qsort(round_tps, o->reps, sizeof(double), cmp_double);
	double best = round_tps[o->reps - 1],
	       median = o->reps % 2 ? round_tps[o->reps / 2]
	                            : 0.5 * (round_tps[o->reps / 2 - 1] + round_tps[o->reps / 2]);
	double wread, sread;
	double bytes = step_bytes(c, bn->wbytes, bn->wsize, B, C, &wread, &sread);
	double bound = bn->bw > 0 ? B / (bytes / bn->bw) : 0;
	struct dp_gpu_mem_stats ms;
	dp_gpu_mem_stats(bn->g, &ms);

	if (o->json) {
		printf(
		    "{\"impl\": \"ours\", \"backend\": \"%s\", \"model\": \"%s\", \"batch\": %u, "
		    "\"context\": %u, \"decode\": %u, \"reps\": %u, \"decode_tok_s\": %.3f, "
		    "\"decode_tok_s_median\": %.3f, \"prefill_len\": %u, \"prefill_tok_s\": %.3f, "
		    "\"weight_bytes\": %llu, \"step_weight_bytes\": %.0f, \"step_state_bytes\": "
		    "%.0f, "
		    "\"copy_bw\": %.0f, \"bound_tok_s\": %.3f, \"peak_bytes\": %llu, \"load_s\": "
		    "%.2f}\n",
		    dp_gpu_kind_name(bn->kind), bn->dir, B, C, o->decode, o->reps, best, median,
		    do_prefill ? C : 0, prefill_tps, (unsigned long long)bn->wbytes, wread, sread,
		    bn->bw, bound, (unsigned long long)ms.peak_bytes, bn->load_s);
	} else {
		printf("model %s, %s backend, batch %u, context %u\n", bn->dir,
		       dp_gpu_kind_name(bn->kind), B, C);
		printf("  decode   %10.1f tok/s (median %.1f), %.3f ms a step\n", best, median,
		       1e3 * B / best);
		printf(
		    "  bound    %10.1f tok/s: %.1f MB weights + %.1f MB state a step at %.0f GB/s "
		    "(ours at %.0f%% of it)\n",
		    bound, wread / 1e6, sread / 1e6, bn->bw / 1e9,
		    bound > 0 ? 100.0 * best / bound : 0.0);
		if (do_prefill)
			printf("  prefill  %10.1f tok/s (%u x %u tokens)\n", prefill_tps, B, C);
		printf("RESULT gpu-decode-b%u-c%u ours=%.3f anchor=%.3f ratio=%.4f unit=tok/s "
		       "better=higher\n",
		       B, C, best, bound, bound > 0 ? best / bound : 0.0);
	}
	fflush(stdout);
out:
	for (uint32_t b = 0; seqs && b < B; b++)
		dp_v4_seq_free(seqs[b]);
	free(logits);
	free(items);
	free(seqs);
	free(toks);
	free(round_tps);
	return ret;
}

int main(int argc, char **argv)
{
	struct bench bn = {.o = {.model = "builtin",
	                         .backend = "cuda",
	                         .batch = {1},
	                         .n_batch = 1,
	                         .context = {4096},
	                         .n_context = 1,
	                         .decode = 32,
	                         .reps = 3,
	                         .prefill_max = 65536,
	                         .seed = 1}};
	struct opts *o = &bn.o;
	static const struct option lo[] = {
	    {"model", required_argument, NULL, 'm'},
	    {"backend", required_argument, NULL, 'k'},
	    {"batch", required_argument, NULL, 'b'},
	    {"context", required_argument, NULL, 'c'},
	    {"decode", required_argument, NULL, 'n'},
	    {"prefill", no_argument, NULL, 'p'},
	    {"prefill-max", required_argument, NULL, 'X'},
	    {"chunk", required_argument, NULL, 'P'},
	    {"reps", required_argument, NULL, 'r'},
	    {"seed", required_argument, NULL, 's'},
	    {"json", no_argument, NULL, 'j'},
	    {"help", no_argument, NULL, 'h'},
	    {0},
	};
	for (int ch; (ch = getopt_long(argc, argv, "m:k:b:c:n:pX:P:r:s:jh", lo, NULL)) != -1;) {
		bool ok = true;
		uint32_t v = 0;
		switch (ch) {
		case 'm':
			o->model = optarg;
			break;
		case 'k':
			o->backend = optarg;
			break;
		case 'b':
			ok = parse_list(optarg, o->batch, &o->n_batch, false);
			break;
		case 'c':
			ok = parse_list(optarg, o->context, &o->n_context, true);
			break;
		case 'n':
			ok = parse_u32(optarg, &o->decode) && o->decode > 0;
			break;
		case 'p':
			o->prefill = true;
			break;
		case 'X':
			ok = parse_u32(optarg, &v);
			o->prefill_max = v;
			break;
		case 'P':
			ok = parse_u32(optarg, &o->chunk);
			break;
		case 'r':
			ok = parse_u32(optarg, &o->reps) && o->reps > 0;
			break;
		case 's':
			ok = parse_u32(optarg, &v);
			o->seed = v;
			break;
		case 'j':
			o->json = true;
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
		if (!ok) {
			fprintf(stderr, "bench-gpu: bad value for -%c: %s\n", ch, optarg);
			return 2;
		}
	}

	char err[1024] = "";
	if (dp_v4_resolve_dir(o->model, bn.dir, sizeof(bn.dir)) < 0) {
		fprintf(stderr, "bench-gpu: cannot find the model %s\n", o->model);
		return 1;
	}
	if (dp_gpu_kind_parse(o->backend, &bn.kind) < 0) {
		fprintf(stderr, "bench-gpu: --backend must be cuda, cpu or auto\n");
		return 2;
	}
	if (dp_gpu_new(bn.kind, NULL, &bn.g, err, sizeof(err)) < 0) {
		fprintf(stderr, "bench-gpu: cannot start the %s backend: %s\n",
		        dp_gpu_kind_name(bn.kind), err);
		return 1;
	}
	double t0 = dp_clock_s();
	if (dp_v4_model_load(bn.g, bn.dir, &bn.m, err, sizeof(err)) < 0) {
		fprintf(stderr, "bench-gpu: cannot load %s: %s\n", bn.dir, err);
		dp_gpu_free(bn.g);
		return 1;
	}
	bn.load_s = dp_clock_s() - t0;
	struct dp_gpu_mem_stats ms;
	dp_gpu_mem_stats(bn.g, &ms);
	bn.wbytes = ms.bytes[DP_GPU_MEM_WEIGHTS];
	const char *wenv = getenv("DP_CUDA_WEIGHTS");
	bn.wsize = bn.kind == DP_GPU_CUDA && !(wenv && !strcmp(wenv, "f32")) ? 2 : 4;
	bn.bw = copy_bandwidth(bn.g, bn.kind == DP_GPU_CUDA ? (size_t)1 << 30 : (size_t)256 << 20);
	fprintf(
	    stderr,
	    "bench-gpu: %s on %s: %.2f GB weights, loaded in %.1f s; copy bandwidth %.0f GB/s\n",
	    bn.dir, dp_gpu_kind_name(bn.kind), bn.wbytes / 1e9, bn.load_s, bn.bw / 1e9);
	int status = 0;
	for (uint32_t i = 0; i < o->n_context; i++)
		for (uint32_t j = 0; j < o->n_batch; j++)
			if (run_one(&bn, o->batch[j], o->context[i]) < 0)
				status = 1;
	dp_v4_model_free(bn.m);
	dp_gpu_free(bn.g);
	return status;
}
