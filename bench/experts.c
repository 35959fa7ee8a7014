/* SPDX-License-Identifier: MIT */
/*
 * bench-experts: decode with routed experts paged in (model/v4.h,
 * dp_v4_model_load_opts) beside the same decode with every expert resident
 * (the anchor), same checkpoint, same tokens, same run: B sequences prefill
 * a prompt each, then decode greedily, batched, token by token; the paged
 * runs' logits must equal the anchor's bit for bit. Paged modes:
 *   dram  experts from a pinned host copy of the checkpoint's bytes;
 *   nvme  experts read from the checkpoint file by the io thread (the
 *         daemon's reader, daemon/experts.c: O_DIRECT, io_uring): hash
 *         layers' read ahead from the tokens, top-k layers' guessed one
 *         layer early (lookahead routing) and read ahead, what the guess
 *         missed read urgently when the router picks it;
 *   nvme-nola  the same without lookahead (top-k layers' experts read only
 *         when picked).
 * Reports decode tokens/s, the hit rate, the bytes brought in and the time
 * waited per token, and the backend memory the experts take.
 *
 * The default model is bench/make_random_model.py's "mid" preset (16
 * experts top-4, 8 layers, 3 MiB of bf16 per expert); its routing is random,
 * so hits come only from slots >= the experts a step needs, not from the
 * skew a trained model's routing has. On the cpu backend "device" memory is
 * host memory: a miss costs a bf16-to-fp32 conversion (dram) or a read plus
 * that conversion (nvme), not a PCIe copy.
 *
 * Usage: bench-experts [--model DIR] [--slots N[,N...]] [--batch B]
 *                      [--prompt-len P] [--decode N] [--threads T] [--quick]
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/macros.h"
#include "bench/bench-util.h"
#include "daemon/experts.h"
#include "io/io.h"
#include "model/v4.h"

struct run {
	double decode_s, load_s;
	float *last; /* logits of the last decode step, B x V */
	struct dp_v4_expert_stats st;
	double io_busy_s[2]; /* urgent, read-ahead: reads in flight */
};

struct opts {
	const char *dir;
	uint32_t B, P, N;
	int threads;
};

/* Load with lo, prefill B prompts, decode N steps; fills r. */
static int run_mode(const struct opts *o, const struct dp_v4_load_opts *lo, const int32_t *prompts,
		    struct run *r)
{
	char err[512] = "";
	struct dp_gpu *g = NULL;
	struct dp_v4_model *m = NULL;
	struct dp_io *io = NULL;
	struct dp_expert_io *xio = NULL;
	struct dp_v4_seq **seq = calloc(o->B, sizeof(*seq));
	struct dp_v4_batch_item *it = calloc(o->B, sizeof(*it));
	int32_t *next = calloc(o->B, sizeof(*next));
	struct dp_gpu_opts go = { .threads = o->threads };
	int ret = seq && it && next ? 0 : -ENOMEM;

	double t0 = dp_clock_s();
	if (ret == 0 && (ret = dp_gpu_new(DP_GPU_CPU, &go, &g, err, sizeof(err))) == 0)
		ret = dp_v4_model_load_opts(g, o->dir, lo, &m, err, sizeof(err));
	if (ret == 0 && lo->experts == DP_V4_EXPERTS_NVME) {
		struct dp_io_config ic;
		dp_io_config_init(&ic);
		if ((ret = dp_io_new(&ic, &io)) == 0 && (ret = dp_io_start(io, -1)) == 0)
			ret = dp_expert_io_new(io, NULL, m, &xio, err, sizeof(err));
	}
	r->load_s = dp_clock_s() - t0;
	uint32_t V = m ? (uint32_t)dp_v4_model_config(m)->vocab_size : 0;
	if (ret == 0 && !(r->last = malloc((size_t)o->B * V * sizeof(float))))
		ret = -ENOMEM;
	for (uint32_t b = 0; ret == 0 && b < o->B; b++) {
		if ((ret = dp_v4_seq_new(m, &seq[b])) < 0)
			break;
		struct dp_v4_batch_item one = { seq[b], prompts + (size_t)b * o->P, o->P, false };
		if ((ret = dp_v4_forward(m, &one, 1, r->last)) == 0)
			next[b] = argmax(r->last, V);
	}
	struct dp_v4_expert_stats before;
	dp_v4_model_expert_stats(m, &before);
	uint64_t busy0[2] = { 0 }, busy1[2] = { 0 }, bytes;
	dp_expert_io_busy(xio, &busy0[0], &busy0[1], &bytes);
	t0 = dp_clock_s();
	for (uint32_t s = 0; ret == 0 && s < o->N; s++) {
		for (uint32_t b = 0; b < o->B; b++)
			it[b] = (struct dp_v4_batch_item){ seq[b], &next[b], 1, false };
		if ((ret = dp_v4_forward(m, it, o->B, r->last)) < 0)
			break;
		for (uint32_t b = 0; b < o->B; b++)
			next[b] = argmax(r->last + (size_t)b * V, V);
	}
	r->decode_s = dp_clock_s() - t0;
	dp_v4_model_expert_stats(m, &r->st);
	dp_expert_io_busy(xio, &busy1[0], &busy1[1], &bytes);
	for (int i = 0; i < 2; i++)
		r->io_busy_s[i] = (busy1[i] - busy0[i]) * 1e-9;
	/* the decode steps' figures only */
	r->st.uses -= before.uses;
	r->st.hits -= before.hits;
	r->st.misses -= before.misses;
	r->st.prefetched -= before.prefetched;
	r->st.ahead_unused -= before.ahead_unused;
	r->st.passes -= before.passes;
	r->st.bytes_in -= before.bytes_in;
	r->st.wait_ns -= before.wait_ns;
	r->st.fill_ns -= before.fill_ns;
	if (ret < 0)
		fprintf(stderr, "bench-experts: %s: %s%s%s\n", dp_v4_experts_where_name(lo->experts),
			strerror(-ret), err[0] ? ": " : "", err);
	for (uint32_t b = 0; seq && b < o->B; b++)
		dp_v4_seq_free(seq[b]);
	dp_expert_io_free(xio, m);
	dp_v4_model_free(m);
	if (io) {
		dp_io_stop(io, DP_IO_STOP_DRAIN);
		dp_io_free(io);
	}
	dp_gpu_free(g);
	free(seq);
	free(it);
	free(next);
	return ret;
}

static int parse_u32(const char *s, uint32_t *ret)
{
	char *end;
	unsigned long v = strtoul(s, &end, 10);
	if (end == s || *end || v == 0 || v > 1u << 20)
		return -1;
	*ret = (uint32_t)v;
	return 0;
}

int main(int argc, char **argv)
{
	struct opts o = { .dir = "build/bench-models/v4-mid", .B = 4, .P = 32, .N = 32,
			  .threads = 1 };
	const char *slots_arg = NULL;
	static const struct option lopts[] = {
		{ "model", required_argument, NULL, 'm' },   { "slots", required_argument, NULL, 's' },
		{ "batch", required_argument, NULL, 'b' },   { "prompt-len", required_argument, NULL, 'p' },
		{ "decode", required_argument, NULL, 'n' },  { "threads", required_argument, NULL, 't' },
		{ "quick", no_argument, NULL, 'q' },	     { "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	for (int c; (c = getopt_long(argc, argv, "m:s:b:p:n:t:qh", lopts, NULL)) != -1;) {
		int bad = 0;
		switch (c) {
		case 'm': o.dir = optarg; break;
		case 's': slots_arg = optarg; break;
		case 'b': bad = parse_u32(optarg, &o.B); break;
		case 'p': bad = parse_u32(optarg, &o.P); break;
		case 'n': bad = parse_u32(optarg, &o.N); break;
		case 't': o.threads = atoi(optarg); break;
		case 'q': o.N = 8; break;
		default:
			fprintf(c == 'h' ? stdout : stderr,
				"usage: bench-experts [--model DIR] [--slots N[,N...]] [--batch B] "
				"[--prompt-len P] [--decode N] [--threads T] [--quick]\n");
			return c == 'h' ? 0 : 2;
		}
		if (bad) {
			fprintf(stderr, "bench-experts: -%c: not a positive count: %s\n", c, optarg);
			return 2;
		}
	}

	/* the anchor first: every expert resident */
	struct dp_v4_load_opts lo = { 0 };
	struct dp_gpu *g0;
	struct dp_v4_model *m0;
	char err[512] = "";
	if (dp_gpu_new(DP_GPU_CPU, NULL, &g0, err, sizeof(err)) < 0 ||
	    dp_v4_model_load(g0, o.dir, &m0, err, sizeof(err)) < 0) {
		fprintf(stderr, "bench-experts: %s: %s (make it with python3 bench/make_random_model.py "
			"--preset mid --out %s)\n", o.dir, err, o.dir);
		return 1;
	}
	const struct dp_v4_config *c = dp_v4_model_config(m0);
	uint32_t E = (uint32_t)c->n_routed_experts, k = (uint32_t)c->num_experts_per_tok;
	uint32_t V = (uint32_t)c->vocab_size, L = (uint32_t)c->num_hidden_layers;
	dp_v4_model_free(m0);
	dp_gpu_free(g0);

	uint32_t slots[8], n_slots = 0;
	if (slots_arg) {
		char buf[128];
		snprintf(buf, sizeof(buf), "%s", slots_arg);
		for (char *save, *tok = strtok_r(buf, ",", &save); tok && n_slots < 8;
		     tok = strtok_r(NULL, ",", &save))
			if (parse_u32(tok, &slots[n_slots++]) < 0 || slots[n_slots - 1] < k ||
			    slots[n_slots - 1] > E) {
				fprintf(stderr, "bench-experts: --slots: each in %u..%u\n", k, E);
				return 2;
			}
	} else {
		slots[n_slots++] = E / 2;
		slots[n_slots++] = E * 3 / 4;
	}
	int32_t *prompts = malloc((size_t)o.B * o.P * sizeof(int32_t));
	uint64_t x = 0x2545f4914f6cdd1dull;
	for (size_t i = 0; i < (size_t)o.B * o.P; i++) {
		x = x * 6364136223846793005ull + 1442695040888963407ull;
		prompts[i] = (int32_t)((x >> 33) % V);
	}

	printf("bench-experts: %s: %u layers, %u experts top-%u; batch %u, prompt %u, decode %u "
	       "steps, cpu backend, %d thread(s)\n", o.dir, L, E, k, o.B, o.P, o.N, o.threads);
	struct run anchor = { 0 };
	if (run_mode(&o, &lo, prompts, &anchor) < 0)
		return 1;
	double tok = (double)o.B * o.N, a_tps = tok / anchor.decode_s;
	printf("\n%-9s %5s %10s %7s %7s %9s %10s %10s %9s %s\n", "mode", "slots", "decode t/s",
	       "ratio", "hit %", "MiB/tok", "wait ms/t", "fill ms/t", "exp. MiB", "logits");
	printf("%-9s %5u %10.2f %7.3f %7s %9s %10s %10s %9s %s\n", "device", E, a_tps, 1.0, "100",
	       "0", "0", "0", "all", "(anchor)");
	int status = 0;
	static const struct {
		enum dp_v4_experts_where where;
		bool no_lookahead;
		const char *name;
	} modes[] = { { DP_V4_EXPERTS_DRAM, false, "dram" },
		      { DP_V4_EXPERTS_NVME, false, "nvme" },
		      { DP_V4_EXPERTS_NVME, true, "nvme-nola" } };
	for (uint32_t si = 0; si < n_slots; si++)
		for (size_t w = 0; w < DP_ARRAY_SIZE(modes); w++) {
			struct dp_v4_load_opts po = { .experts = modes[w].where,
						      .expert_slots = slots[si],
						      .no_lookahead = modes[w].no_lookahead };
			struct run r = { 0 };
			if (run_mode(&o, &po, prompts, &r) < 0) {
				status = 1;
				continue;
			}
			bool same = !memcmp(r.last, anchor.last, (size_t)o.B * V * sizeof(float));
			double tps = tok / r.decode_s;
			const char *name = modes[w].name;
			printf("%-9s %5u %10.2f %7.3f %7.1f %9.2f %10.3f %10.3f %9.0f %s\n", name,
			       slots[si], tps, tps / a_tps,
			       r.st.uses ? 100.0 * r.st.hits / r.st.uses : 0.0,
			       r.st.bytes_in / 1048576.0 / tok, r.st.wait_ns * 1e-6 / tok,
			       r.st.fill_ns * 1e-6 / tok, r.st.cache_bytes / 1048576.0,
			       same ? "identical" : "DIFFER");
			if (po.experts == DP_V4_EXPERTS_NVME)
				printf("          (reads in flight %.3f ms/token urgent, %.3f read-ahead; "
				       "%llu uses read ahead, %llu guesses unused, %llu misses, %llu "
				       "passes over %u steps x %u layers)\n",
				       r.io_busy_s[0] * 1e3 / tok, r.io_busy_s[1] * 1e3 / tok,
				       (unsigned long long)r.st.prefetched,
				       (unsigned long long)r.st.ahead_unused,
				       (unsigned long long)r.st.misses, (unsigned long long)r.st.passes,
				       o.N, L);
			printf("RESULT experts_%s_%u_of_%u_decode_tok_s ours=%.2f anchor=%.2f "
			       "ratio=%.3f unit=tok/s better=higher\n", name, slots[si], E, tps, a_tps,
			       tps / a_tps);
			if (!same)
				status = 1;
			free(r.last);
		}
	free(anchor.last);
	free(prompts);
	return status;
}
