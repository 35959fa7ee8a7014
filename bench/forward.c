/* SPDX-License-Identifier: MIT */
/*
 * bench/forward — prefill and decode tokens/s of the V4 forward pass on the
 * cpu backend. bench/forward-vs-hf runs it beside transformers'
 * DeepseekV4ForCausalLM (bench/forward_hf.py) on the same checkpoint, prompt
 * and thread count, and prints the ratios.
 *
 *   bench-forward --model DIR|builtin [--threads N] [--prompt-len P]
 *                 [--decode N] [--batch B] [--reps R] [--seed S] [--json]
 *
 * Tokens: sequence b's stream is splitmix64 seeded with seed + b, each token
 * (x >> 11) % vocab_size; its first P tokens are the prompt, the following
 * ones are fed during decode (fixed tokens, not sampled: the work does not
 * depend on what the model predicts). forward_hf.py draws the same streams;
 * both print an FNV-1a hash of the tokens so the driver can check.
 *
 * Measurements (each timed region ends when dp_v4_forward returns, logits on
 * the host):
 *   prefill   one warm-up, then R prefills of sequence 0's prompt, each into a
 *             fresh sequence, in one dp_v4_forward call (last-token logits);
 *             tok/s = P / time.
 *   decode    on the last prefilled sequence: a few warm-up steps, then R
 *             rounds of N one-token steps (the context grows from P to
 *             P + (R + 1) * N; attention cost is bounded by the sliding window,
 *             the CSA top-k and P/rate HCA entries, so rounds cost alike);
 *             tok/s = N / round time.
 *   batched   with --batch B > 1: B sequences prefilled together (untimed),
 *             then R rounds of N steps, each step one dp_v4_forward call with
 *             B one-token items; aggregate tok/s = B * N / round time.
 * Reported: best (the least disturbed by the rest of the machine) and median
 * of the R values. Threads: struct dp_gpu_opts.threads (OpenBLAS threads; the
 * backend's own loops are single-threaded).
 */
#include <cblas.h>
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench/bench-util.h"
#include "model/v4.h"

#define WARMUP_STEPS 4u

struct opts {
	const char *model;
	int threads;
	uint32_t prompt_len, decode, batch, reps;
	uint64_t seed;
	bool json;
};

struct stat {
	double best, median; /* tok/s */
	double *v;	     /* per rep */
	uint32_t n;
};

static uint64_t fnv1a(uint64_t h, const int32_t *t, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		uint32_t v = (uint32_t)t[i];
		for (int k = 0; k < 4; k++) {
			h ^= (v >> (8 * k)) & 0xff;
			h *= 0x100000001b3ull;
		}
	}
	return h;
}

static void stat_finish(struct stat *st)
{
	double *tmp = malloc(st->n * sizeof(*tmp));
	st->best = st->median = 0;
	if (!tmp || !st->n) {
		free(tmp);
		return;
	}
	memcpy(tmp, st->v, st->n * sizeof(*tmp));
	qsort(tmp, st->n, sizeof(*tmp), cmp_double);
	st->best = tmp[st->n - 1];
	st->median = st->n % 2 ? tmp[st->n / 2] : 0.5 * (tmp[st->n / 2 - 1] + tmp[st->n / 2]);
	free(tmp);
}

static void usage(FILE *f)
{
	fprintf(f, "usage: bench-forward --model DIR|builtin [--threads N] [--prompt-len P] [--decode N]\n"
		   "                     [--batch B] [--reps R] [--seed S] [--json]\n");
}

static bool parse_u32(const char *s, uint32_t lo, uint32_t hi, uint32_t *ret)
{
	char *end;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (end == s || *end || errno || v < lo || v > hi)
		return false;
	*ret = (uint32_t)v;
	return true;
}

/* The logits must be finite: a forward that returns garbage cannot look fast. */
static int check_logits(const float *l, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (!isfinite(l[i]))
			return -EDOM;
	return 0;
}

struct bench {
	struct opts o;
	struct dp_v4_model *m;
	uint32_t V;
	int32_t **tok; /* [batch][prompt_len + decode tokens] */
	uint32_t tok_len;
	float *logits; /* [batch][V] */
	struct stat prefill, decode, batched;
	double load_s, batch_prefill_s;
	double logit_sum; /* of the last prefill: a fingerprint */
};

static int prefill(struct bench *b, struct dp_v4_seq **seqs, uint32_t n_seqs, double *ret_s)
{
	struct dp_v4_batch_item *items = calloc(n_seqs, sizeof(*items));
	if (!items)
		return -ENOMEM;
	for (uint32_t i = 0; i < n_seqs; i++)
		items[i] = (struct dp_v4_batch_item){ .seq = seqs[i], .tokens = b->tok[i],
						      .n_tokens = b->o.prompt_len };
	double t0 = dp_clock_s();
	int ret = dp_v4_forward(b->m, items, n_seqs, b->logits);
	double t1 = dp_clock_s();
	free(items);
	if (ret == 0)
		ret = check_logits(b->logits, (size_t)n_seqs * b->V);
	*ret_s = t1 - t0;
	return ret;
}

/* n one-token steps of seqs[0..n_seqs) together, starting at decode token k0. */
static int decode_steps(struct bench *b, struct dp_v4_seq **seqs, uint32_t n_seqs, uint32_t k0,
			uint32_t n, double *ret_s)
{
	struct dp_v4_batch_item *items = calloc(n_seqs, sizeof(*items));
	int ret = 0;
	if (!items)
		return -ENOMEM;
	double t0 = dp_clock_s();
	for (uint32_t k = k0; k < k0 + n && ret == 0; k++) {
		for (uint32_t i = 0; i < n_seqs; i++)
			items[i] = (struct dp_v4_batch_item){
				.seq = seqs[i], .tokens = &b->tok[i][b->o.prompt_len + k], .n_tokens = 1
			};
		ret = dp_v4_forward(b->m, items, n_seqs, b->logits);
	}
	double t1 = dp_clock_s();
	free(items);
	if (ret == 0)
		ret = check_logits(b->logits, (size_t)n_seqs * b->V);
	*ret_s = t1 - t0;
	return ret;
}

static void free_seqs(struct dp_v4_seq **seqs, uint32_t n)
{
	for (uint32_t i = 0; i < n; i++) {
		dp_v4_seq_free(seqs[i]);
		seqs[i] = NULL;
	}
}

static int new_seqs(struct bench *b, struct dp_v4_seq **seqs, uint32_t n)
{
	for (uint32_t i = 0; i < n; i++) {
		int ret = dp_v4_seq_new(b->m, &seqs[i]);
		if (ret < 0) {
			free_seqs(seqs, i);
			return ret;
		}
	}
	return 0;
}

static int run(struct bench *b)
{
	const struct opts *o = &b->o;
	struct dp_v4_seq *one = NULL;
	struct dp_v4_seq **many = calloc(o->batch, sizeof(*many));
	double t;
	int ret;

	if (!many)
		return -ENOMEM;
	/* prefill: one warm-up, then R timed, each into a fresh sequence */
	for (uint32_t r = 0; r <= o->reps; r++) {
		dp_v4_seq_free(one);
		if ((ret = dp_v4_seq_new(b->m, &one)) < 0 || (ret = prefill(b, &one, 1, &t)) < 0)
			goto out;
		if (r > 0)
			b->prefill.v[b->prefill.n++] = o->prompt_len / t;
	}
	b->logit_sum = 0;
	for (uint32_t i = 0; i < b->V; i++)
		b->logit_sum += b->logits[i];
	/* decode, batch 1, on the last prefilled sequence */
	if (o->decode) {
		uint32_t w = o->decode < WARMUP_STEPS ? o->decode : WARMUP_STEPS;
		if ((ret = decode_steps(b, &one, 1, 0, w, &t)) < 0)
			goto out;
		for (uint32_t r = 0; r < o->reps; r++) {
			if ((ret = decode_steps(b, &one, 1, w + r * o->decode, o->decode, &t)) < 0)
				goto out;
			b->decode.v[b->decode.n++] = o->decode / t;
		}
	}
	dp_v4_seq_free(one);
	one = NULL;
	/* decode, B sequences together */
	if (o->decode && o->batch > 1) {
		uint32_t w = o->decode < WARMUP_STEPS ? o->decode : WARMUP_STEPS;
		if ((ret = new_seqs(b, many, o->batch)) < 0 ||
		    (ret = prefill(b, many, o->batch, &b->batch_prefill_s)) < 0 ||
		    (ret = decode_steps(b, many, o->batch, 0, w, &t)) < 0)
			goto out;
		for (uint32_t r = 0; r < o->reps; r++) {
			if ((ret = decode_steps(b, many, o->batch, w + r * o->decode, o->decode, &t)) < 0)
				goto out;
			b->batched.v[b->batched.n++] = (double)o->batch * o->decode / t;
		}
	}
	ret = 0;
out:
	dp_v4_seq_free(one);
	free_seqs(many, o->batch);
	free(many);
	stat_finish(&b->prefill);
	stat_finish(&b->decode);
	stat_finish(&b->batched);
	return ret;
}

static void json_stat(FILE *f, const char *name, const struct stat *st, bool last)
{
	fprintf(f, "  \"%s\": {\"tok_s_best\": %.6g, \"tok_s_median\": %.6g, \"tok_s\": [", name,
		st->best, st->median);
	for (uint32_t i = 0; i < st->n; i++)
		fprintf(f, "%s%.6g", i ? ", " : "", st->v[i]);
	fprintf(f, "]}%s\n", last ? "" : ",");
}

static void json_string(FILE *f, const char *s)
{
	fputc('"', f);
	for (; *s; s++) {
		unsigned char ch = (unsigned char)*s;
		if (ch == '"' || ch == '\\')
			fprintf(f, "\\%c", ch);
		else if (ch < 0x20)
			fprintf(f, "\\u%04x", ch);
		else
			fputc(ch, f);
	}
	fputc('"', f);
}

static void report(const struct bench *b, const char *dir, uint64_t tok_hash)
{
	const struct opts *o = &b->o;
	FILE *f = o->json ? stderr : stdout;

	fprintf(f, "bench-forward: %s, cpu backend, %d thread%s (OpenBLAS %d), load %.2f s\n", dir,
		o->threads, o->threads == 1 ? "" : "s", openblas_get_num_threads(), b->load_s);
	fprintf(f, "  prefill %u tokens:        best %9.1f tok/s  median %9.1f tok/s  (%u reps)\n",
		o->prompt_len, b->prefill.best, b->prefill.median, o->reps);
	if (o->decode)
		fprintf(f, "  decode  %u x 1 token:     best %9.1f tok/s  median %9.1f tok/s\n",
			o->decode, b->decode.best, b->decode.median);
	if (o->decode && o->batch > 1)
		fprintf(f, "  decode  %u x %u sequences: best %9.1f tok/s  median %9.1f tok/s  "
			   "(aggregate; batched prefill %.2f s)\n",
			o->decode, o->batch, b->batched.best, b->batched.median, b->batch_prefill_s);
	if (!o->json)
		return;
	printf("{\n  \"impl\": \"ours\",\n  \"backend\": \"cpu\",\n  \"model\": ");
	json_string(stdout, dir);
	printf(",\n");
	printf("  \"threads\": %d,\n  \"blas_threads\": %d,\n  \"prompt_len\": %u,\n  \"decode\": %u,\n",
	       o->threads, openblas_get_num_threads(), o->prompt_len, o->decode);
	printf("  \"batch\": %u,\n  \"reps\": %u,\n  \"seed\": %llu,\n  \"tokens_fnv1a\": \"%016llx\",\n",
	       o->batch, o->reps, (unsigned long long)o->seed, (unsigned long long)tok_hash);
	printf("  \"load_s\": %.4f,\n  \"batch_prefill_s\": %.4f,\n  \"last_logit_sum\": %.6g,\n",
	       b->load_s, b->batch_prefill_s, b->logit_sum);
	json_stat(stdout, "prefill", &b->prefill, false);
	json_stat(stdout, "decode", &b->decode, false);
	json_stat(stdout, "decode_batch", &b->batched, true);
	printf("}\n");
}

int main(int argc, char **argv)
{
	struct bench b = { .o = { .model = NULL, .threads = 1, .prompt_len = 256, .decode = 32,
				  .batch = 1, .reps = 3, .seed = 1 } };
	struct opts *o = &b.o;
	static const struct option lopts[] = {
		{ "model", required_argument, NULL, 'm' },  { "threads", required_argument, NULL, 't' },
		{ "prompt-len", required_argument, NULL, 'p' }, { "decode", required_argument, NULL, 'n' },
		{ "batch", required_argument, NULL, 'b' },  { "reps", required_argument, NULL, 'r' },
		{ "seed", required_argument, NULL, 's' },   { "json", no_argument, NULL, 'j' },
		{ "help", no_argument, NULL, 'h' },	    { 0 },
	};
	for (int c; (c = getopt_long(argc, argv, "m:t:p:n:b:r:s:jh", lopts, NULL)) != -1;) {
		bool ok = true;
		uint32_t v = 0;
		switch (c) {
		case 'm': o->model = optarg; break;
		case 't':
			ok = parse_u32(optarg, 0, 4096, &v);
			o->threads = (int)v;
			break;
		case 'p': ok = parse_u32(optarg, 1, 1u << 20, &o->prompt_len); break;
		case 'n': ok = parse_u32(optarg, 0, 1u << 20, &o->decode); break;
		case 'b': ok = parse_u32(optarg, 1, 4096, &o->batch); break;
		case 'r': ok = parse_u32(optarg, 1, 1000, &o->reps); break;
		case 's':
			ok = parse_u32(optarg, 0, UINT32_MAX, &v);
			o->seed = v;
			break;
		case 'j': o->json = true; break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
		if (!ok) {
			fprintf(stderr, "bench-forward: bad value for -%c: %s\n", c, optarg);
			return 2;
		}
	}
	if (!o->model || optind != argc) {
		usage(stderr);
		return 2;
	}

	char dir[PATH_MAX], err[512] = "";
	int ret = dp_v4_resolve_dir(o->model, dir, sizeof(dir));
	if (ret < 0) {
		fprintf(stderr, "bench-forward: cannot find model %s: %s\n", o->model, strerror(-ret));
		return 1;
	}
	struct dp_gpu_opts gopts = { .threads = o->threads };
	struct dp_gpu *g;
	if ((ret = dp_gpu_new(DP_GPU_CPU, &gopts, &g, err, sizeof(err))) < 0) {
		fprintf(stderr, "bench-forward: cannot start the cpu backend: %s\n", err);
		return 1;
	}
	double t0 = dp_clock_s();
	if ((ret = dp_v4_model_load(g, dir, &b.m, err, sizeof(err))) < 0) {
		fprintf(stderr, "bench-forward: cannot load model %s: %s\n", dir, err);
		dp_gpu_free(g);
		return 1;
	}
	b.load_s = dp_clock_s() - t0;
	b.V = (uint32_t)dp_v4_model_config(b.m)->vocab_size;

	/* token streams: the prompt, then warm-up + R rounds of decode tokens */
	uint32_t w = o->decode < WARMUP_STEPS ? o->decode : WARMUP_STEPS;
	b.tok_len = o->prompt_len + w + o->reps * o->decode;
	b.tok = calloc(o->batch, sizeof(*b.tok));
	b.logits = malloc((size_t)o->batch * b.V * sizeof(float));
	b.prefill.v = calloc(o->reps, sizeof(double));
	b.decode.v = calloc(o->reps, sizeof(double));
	b.batched.v = calloc(o->reps, sizeof(double));
	ret = b.tok && b.logits && b.prefill.v && b.decode.v && b.batched.v ? 0 : -ENOMEM;
	uint64_t h = 0xcbf29ce484222325ull;
	for (uint32_t i = 0; ret == 0 && i < o->batch; i++) {
		if (!(b.tok[i] = malloc(b.tok_len * sizeof(int32_t)))) {
			ret = -ENOMEM;
			break;
		}
		stream_tokens(o->seed, i, b.V, b.tok[i], b.tok_len);
		h = fnv1a(h, b.tok[i], b.tok_len);
	}
	if (ret == 0)
		ret = run(&b);
	if (ret < 0)
		fprintf(stderr, "bench-forward: %s\n",
			ret == -EDOM ? "the forward pass produced non-finite logits" : strerror(-ret));
	else
		report(&b, dir, h);

	for (uint32_t i = 0; b.tok && i < o->batch; i++)
		free(b.tok[i]);
	free(b.tok);
	free(b.logits);
	free(b.prefill.v);
	free(b.decode.v);
	free(b.batched.v);
	dp_v4_model_free(b.m);
	dp_gpu_free(g);
	return ret < 0 ? 1 : 0;
}
