/* SPDX-License-Identifier: MIT */
/*
 * bench-csa: decode with CSA layers' compressed entries in host memory
 * (dp_v4_model_set_csa_host) beside the same decode with them in device
 * memory (the anchor), at a long context: the prompt is prefilled in chunks
 * of 512 (as the daemon does), then greedy decode runs token by token in
 * both modes from the same prompt, and their logits must be identical.
 * Reports decode tokens/s of both, the speculation's figures on the decode
 * steps (picked entries found staged, fetched after the indexer, bytes) and
 * the time staging takes per token.
 *
 * On the cpu backend "device" memory is host memory, so the ratio shows the
 * bookkeeping's cost (the union, the gather memcpy, the sel round trip), not
 * a PCIe transfer; the fetched bytes per token are what a GPU would move.
 *
 * Usage: bench-csa [--model DIR|builtin] [--prompt-len N] [--decode N]
 *                  [--threads N] [--quick]
 */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench/bench-util.h"
#include "model/v4.h"

struct run {
	double decode_s;
	float *last; /* logits of the last decode step */
	int32_t *out; /* the decoded tokens */
	struct dp_v4_csa_stats before, after;
	size_t dev_bytes, host_bytes;
};

static int run_mode(struct dp_v4_model *m, bool host, const int32_t *prompt, uint32_t P,
		    uint32_t N, struct run *r)
{
	uint32_t V = (uint32_t)dp_v4_model_config(m)->vocab_size;
	float *lg = malloc((size_t)V * sizeof(float));
	struct dp_v4_seq *s = NULL;
	int ret = lg ? 0 : -ENOMEM;
	if (ret == 0)
		ret = dp_v4_model_set_csa_host(m, host, NULL);
	if (ret == 0)
		ret = dp_v4_seq_new(m, &s);
	for (uint32_t done = 0; ret == 0 && done < P;) {
		uint32_t n = P - done < 512 ? P - done : 512;
		struct dp_v4_batch_item it = { s, prompt + done, n, false };
		ret = dp_v4_forward(m, &it, 1, lg);
		done += n;
	}
	dp_v4_model_csa_stats(m, &r->before);
	double t0 = dp_clock_s();
	for (uint32_t i = 0; ret == 0 && i < N; i++) {
		int32_t t = argmax(lg, V);
		r->out[i] = t;
		struct dp_v4_batch_item it = { s, &t, 1, false };
		ret = dp_v4_forward(m, &it, 1, lg);
	}
	r->decode_s = dp_clock_s() - t0;
	dp_v4_model_csa_stats(m, &r->after);
	if (ret == 0) {
		memcpy(r->last, lg, (size_t)V * sizeof(float));
		r->dev_bytes = dp_v4_seq_bytes(s);
		r->host_bytes = dp_v4_seq_host_bytes(s);
	}
	dp_v4_seq_free(s);
	free(lg);
	return ret;
}

int main(int argc, char **argv)
{
	const char *model = "builtin";
	uint32_t P = 8192, N = 64;
	int threads = 1;
	bool quick = false;
	static const struct option lopts[] = {
		{ "model", required_argument, NULL, 'm' }, { "prompt-len", required_argument, NULL, 'p' },
		{ "decode", required_argument, NULL, 'n' }, { "threads", required_argument, NULL, 't' },
		{ "quick", no_argument, NULL, 'q' },	    { 0 },
	};
	for (int c; (c = getopt_long(argc, argv, "m:p:n:t:q", lopts, NULL)) != -1;) {
		switch (c) {
		case 'm': model = optarg; break;
		case 'p': P = (uint32_t)strtoul(optarg, NULL, 10); break;
		case 'n': N = (uint32_t)strtoul(optarg, NULL, 10); break;
		case 't': threads = atoi(optarg); break;
		case 'q': quick = true; break;
		default:
			fprintf(stderr, "usage: bench-csa [--model DIR] [--prompt-len N] [--decode N] "
					"[--threads N] [--quick]\n");
			return 2;
		}
	}
	if (quick) {
		P = 2048;
		N = 32;
	}
	if (!P || !N) {
		fprintf(stderr, "bench-csa: --prompt-len and --decode must be positive\n");
		return 2;
	}
	char dir[PATH_MAX], err[512] = "";
	int ret = dp_v4_resolve_dir(model, dir, sizeof(dir));
	if (ret < 0) {
		fprintf(stderr, "bench-csa: cannot find model %s: %s\n", model, strerror(-ret));
		return 1;
	}
	struct dp_gpu_opts go = { .threads = threads };
	struct dp_gpu *g;
	struct dp_v4_model *m;
	if (dp_gpu_new(DP_GPU_CPU, &go, &g, err, sizeof(err)) < 0 ||
	    dp_v4_model_load(g, dir, &m, err, sizeof(err)) < 0) {
		fprintf(stderr, "bench-csa: %s: %s\n", dir, err);
		return 1;
	}
	const struct dp_v4_config *c = dp_v4_model_config(m);
	if (!c->n_layers_of[DP_V4_LAYER_CSA]) {
		fprintf(stderr, "bench-csa: model %s has no CSA layers\n", dir);
		return 1;
	}
	uint32_t V = (uint32_t)c->vocab_size;
	/* the prompt: text-like bytes (a trained byte model's own vocabulary) */
	int32_t *prompt = malloc(P * sizeof(*prompt));
	uint64_t x = 1;
	for (uint32_t i = 0; i < P; i++) {
		x = x * 6364136223846793005ull + 1442695040888963407ull;
		uint32_t r = (uint32_t)(x >> 33);
		prompt[i] = (int32_t)((r % 7 == 0 ? 32 : 97 + r % 26) % V);
	}
	struct run rd = { 0 }, rh = { 0 };
	rd.last = malloc((size_t)V * sizeof(float));
	rh.last = malloc((size_t)V * sizeof(float));
	rd.out = malloc(N * sizeof(int32_t));
	rh.out = malloc(N * sizeof(int32_t));
	if ((ret = run_mode(m, false, prompt, P, N, &rd)) < 0 ||
	    (ret = run_mode(m, true, prompt, P, N, &rh)) < 0) {
		fprintf(stderr, "bench-csa: forward failed: %s\n", strerror(-ret));
		return 1;
	}
	bool same = !memcmp(rd.last, rh.last, (size_t)V * sizeof(float)) &&
		    !memcmp(rd.out, rh.out, N * sizeof(int32_t));
	uint32_t n_csa = (uint32_t)c->n_layers_of[DP_V4_LAYER_CSA];
	uint64_t entries = (uint64_t)(P + N) / (uint64_t)c->compress_rate_csa;
	double sel = (double)(rh.after.selected - rh.before.selected);
	double hits = (double)(rh.after.hits - rh.before.hits);
	double got = (double)(rh.after.fetched - rh.before.fetched);
	double bytes = (double)(rh.after.bytes - rh.before.bytes);
	double gather_s = (double)(rh.after.gather_ns - rh.before.gather_ns) * 1e-9;
	double tps_d = N / rd.decode_s, tps_h = N / rh.decode_s;

	printf("bench-csa: %s, %u CSA layers, index_topk %d, rate %d; context %u tokens "
	       "(%llu compressed entries per CSA layer), %u greedy decode steps, %d thread(s)\n",
	       dir, n_csa, c->index_topk, c->compress_rate_csa, P + N, (unsigned long long)entries, N,
	       threads);
	printf("| entries in | decode tok/s | device state bytes | host state bytes |\n");
	printf("| --- | --- | --- | --- |\n");
	printf("| device (anchor) | %.1f | %zu | %zu |\n", tps_d, rd.dev_bytes, rd.host_bytes);
	printf("| host | %.1f | %zu | %zu |\n", tps_h, rh.dev_bytes, rh.host_bytes);
	printf("decode steps, host mode: %.0f entries picked (per layer and step %.1f), %.0f found "
	       "staged (%.1f%%), %.0f fetched after the indexer (%.1f per layer and step, %.0f bytes "
	       "per token)\n",
	       sel, sel / N / n_csa, hits, sel ? 100 * hits / sel : 0, got, got / N / n_csa,
	       bytes / N);
	printf("staging inside the layers: %.1f us per token (%.1f us per layer), %.1f%% of the "
	       "host-mode step\n",
	       gather_s / N * 1e6, gather_s / N / n_csa * 1e6, 100 * gather_s / rh.decode_s);
	printf("logits and tokens identical in both modes: %s\n", same ? "yes" : "NO");
	printf("RESULT csa_host_decode_tok_s ours=%.2f anchor=%.2f ratio=%.3f unit=tok/s "
	       "better=higher\n",
	       tps_h, tps_d, tps_h / tps_d);
	/* without the staged set every pick is fetched: 1 fetch per pick */
	printf("RESULT csa_fetched_per_pick ours=%.3f anchor=1 ratio=%.3f unit=entries "
	       "better=lower\n",
	       sel ? got / sel : 0, sel ? got / sel : 0);
	printf("RESULT csa_gather_us_per_token ours=%.2f anchor=%.2f ratio=%.4f unit=us "
	       "better=lower\n",
	       gather_s / N * 1e6, rd.decode_s / N * 1e6, gather_s / rd.decode_s);
	free(prompt);
	free(rd.last);
	free(rh.last);
	free(rd.out);
	free(rh.out);
	dp_v4_model_free(m);
	dp_gpu_free(g);
	return same ? 0 : 1;
}
