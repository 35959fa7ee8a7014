/* SPDX-License-Identifier: MIT */
/*
 * bench/engram/bench-engram.c — decode tokens/s of an Engram V4 model with its tables in
 * device memory, in pinned DRAM behind the prefetch path, or on NVMe behind the prefetch path
 * (engram/engram.h, "the store"). bench/engram/run drives it and prints the comparison.
 *
 *   bench-engram --model DIR --tables FILE [--modes MODE,MODE,...] [--batch B]
 *                [--prompt-len P] [--decode N] [--reps R] [--cache ROWS] [--threads T]
 *                [--seed S] [--zipf A] [--json]
 *
 * Modes (default device,dram,nvme), a residency with optional suffixes:
 *   device  residency DEVICE: the whole table in backend memory, rows gathered straight into
 *           the layer's input when the forward asks (no prefetch call: direct lookups). On the
 *           cpu backend backend memory is host memory, allocated as DRAM's is.
 *   dram    residency DRAM: pinned, NUMA-local table; dp_engram_prefetch before each forward,
 *           CPU gather into pinned staging, one copy per layer, hot-row cache. It shares the
 *           device mode's copy of the table when both run (one copy in memory).
 *   nvme    residency NVME: the table file through the io engine (its own thread, a HIGH
 *           priority channel, O_DIRECT 4 KiB block reads); dp_engram_prefetch before each
 *           forward; hot-row cache.
 *   suffixes: -noprefetch (no prefetch call: the first Engram layer's provider call issues
 *           every read itself), -nocache (no hot-row cache), -buffered (nvme: page-cache
 *           reads of the row bytes instead of O_DIRECT blocks), -prefetch (device: call it).
 *
 * Every mode has its own B sequences and runs the same work: the same token streams at the
 * same positions. Steps are interleaved: step k of every mode in turn, the order rotated
 * each step, so a change in the machine's load hits every mode alike; ratios are taken per
 * round (N steps).
 *
 * Tokens: sequence b draws its tokens from a Zipf(A) law over the vocabulary (A = 1.1 by
 * default; ranks shuffled by a fixed permutation) with a splitmix64 stream seeded seed + b:
 * the first P are its prompt, the next ones are fed one per step. They do not depend on the
 * logits (the forward's work is the same whatever token comes next) but follow natural
 * text's skew, so the n-gram rows the store sees are Zipfian as the paper's are.
 *
 * Measurement: per mode, B sequences prefilled together (untimed), 4 warm-up steps, then R
 * rounds of N steps; a step is one dp_v4_forward with B one-token items (last-token logits),
 * preceded by the step's prefetch where the mode has one, timed alone; tok/s = B * N / the
 * round's summed step times.
 * Reported per mode: best and median over rounds, the median over rounds of its tok/s over
 * the first mode's in the same round, and the store's figures per step.
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

#include "base/clock.h"
#include "engram/engram.h"
#include "io/io.h"
#include "model/v4.h"

#define WARMUP_STEPS 4u

struct opts {
	const char *model, *tables, *modes;
	bool json;
	uint32_t batch, prompt_len, decode, reps;
	uint64_t cache, seed;
	int threads;
	double zipf;
};

#define MODES_MAX 8

struct mode {
	char name[32];
	enum dp_engram_residency res;
	bool prefetch, cache, buffered;
	struct dp_engram_store *s;
	struct dp_v4_seq **seqs;
	double *rate, *ratio;
	double load_s;
	struct dp_engram_store_stats st;
	struct dp_io_stats io0, io1;
};

static uint64_t splitmix64(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/* Zipf(a) over V ids: cumulative weights of ranks, and rank -> id. */
struct zipf {
	double *cdf;
	int32_t *id;
	uint32_t V;
};

static int zipf_init(struct zipf *z, uint32_t V, double a, uint64_t seed)
{
	z->V = V;
	z->cdf = malloc(V * sizeof(*z->cdf));
	z->id = malloc(V * sizeof(*z->id));
	if (!z->cdf || !z->id)
		return -ENOMEM;
	double sum = 0;
	for (uint32_t r = 0; r < V; r++) {
		sum += pow(r + 1.0, -a);
		z->cdf[r] = sum;
		z->id[r] = (int32_t)r;
	}
	for (uint32_t r = 0; r < V; r++)
		z->cdf[r] /= sum;
	for (uint32_t r = V - 1; r > 0; r--) { /* which ids are frequent: a fixed shuffle */
		uint32_t j = (uint32_t)(splitmix64(&seed) % (r + 1));
		int32_t t = z->id[r];
		z->id[r] = z->id[j];
		z->id[j] = t;
	}
	return 0;
}

static int32_t zipf_draw(const struct zipf *z, uint64_t *s)
{
	double u = (splitmix64(s) >> 11) * 0x1p-53;
	uint32_t lo = 0, hi = z->V - 1;
	while (lo < hi) {
		uint32_t mid = (lo + hi) / 2;
		if (z->cdf[mid] < u)
			lo = mid + 1;
		else
			hi = mid;
	}
	return z->id[lo];
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

static double median_of(const double *v, uint32_t n, double *ret_best)
{
	double s[1000];
	memcpy(s, v, n * sizeof(double));
	qsort(s, n, sizeof(double), cmp_double);
	if (ret_best)
		*ret_best = s[n - 1];
	return n % 2 ? s[n / 2] : 0.5 * (s[n / 2 - 1] + s[n / 2]);
}

static void usage(FILE *f)
{
	fprintf(f, "usage: bench-engram --model DIR --tables FILE [--modes MODE,...] [--batch B]\n"
		   "                    [--prompt-len P] [--decode N] [--reps R] [--cache ROWS]\n"
		   "                    [--threads T] [--seed S] [--zipf A] [--json]\n"
		   "  MODE: device|dram|nvme, suffixes -noprefetch -nocache -buffered -prefetch\n");
}

static bool parse_u64(const char *s, uint64_t lo, uint64_t hi, uint64_t *ret)
{
	char *end;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno || *end || end == s || v < lo || v > hi)
		return false;
	*ret = v;
	return true;
}

static int parse_mode(const char *spec, size_t len, struct mode *md)
{
	char buf[32], *save = NULL;

	if (len == 0 || len >= sizeof(buf))
		return -EINVAL;
	memcpy(buf, spec, len);
	buf[len] = 0;
	snprintf(md->name, sizeof(md->name), "%s", buf);
	char *tok = strtok_r(buf, "-", &save);
	if (dp_engram_residency_parse(tok, &md->res) < 0)
		return -EINVAL;
	md->prefetch = md->res != DP_ENGRAM_RES_DEVICE;
	md->cache = true;
	while ((tok = strtok_r(NULL, "-", &save))) {
		if (!strcmp(tok, "noprefetch"))
			md->prefetch = false;
		else if (!strcmp(tok, "prefetch"))
			md->prefetch = true;
		else if (!strcmp(tok, "nocache"))
			md->cache = false;
		else if (!strcmp(tok, "buffered") && md->res == DP_ENGRAM_RES_NVME)
			md->buffered = true;
		else
			return -EINVAL;
	}
	return 0;
}

int main(int argc, char **argv)
{
	struct opts o = { .modes = "device,dram,nvme", .batch = 8, .prompt_len = 64, .decode = 16,
			  .reps = 5, .cache = 65536, .seed = 1, .zipf = 1.1 };
	static const struct option lopts[] = {
		{ "model", required_argument, NULL, 'm' },    { "tables", required_argument, NULL, 't' },
		{ "modes", required_argument, NULL, 'M' },    { "batch", required_argument, NULL, 'b' },
		{ "prompt-len", required_argument, NULL, 'p' }, { "decode", required_argument, NULL, 'd' },
		{ "reps", required_argument, NULL, 'r' },     { "cache", required_argument, NULL, 'c' },
		{ "threads", required_argument, NULL, 'T' },  { "seed", required_argument, NULL, 's' },
		{ "zipf", required_argument, NULL, 'z' },     { "json", no_argument, NULL, 'j' },
		{ "help", no_argument, NULL, 'h' },	      { 0 },
	};
	for (int c; (c = getopt_long(argc, argv, "h", lopts, NULL)) != -1;) {
		uint64_t v = 0;
		bool ok = true;
		switch (c) {
		case 'm': o.model = optarg; break;
		case 't': o.tables = optarg; break;
		case 'M': o.modes = optarg; break;
		case 'b': ok = parse_u64(optarg, 1, 4096, &v), o.batch = (uint32_t)v; break;
		case 'p': ok = parse_u64(optarg, 1, 1 << 20, &v), o.prompt_len = (uint32_t)v; break;
		case 'd': ok = parse_u64(optarg, 1, 1 << 20, &v), o.decode = (uint32_t)v; break;
		case 'r': ok = parse_u64(optarg, 1, 1000, &v), o.reps = (uint32_t)v; break;
		case 'c': ok = parse_u64(optarg, 0, 1u << 30, &o.cache); break;
		case 'T': ok = parse_u64(optarg, 0, 1024, &v), o.threads = (int)v; break;
		case 's': ok = parse_u64(optarg, 0, UINT64_MAX, &o.seed); break;
		case 'z': o.zipf = atof(optarg), ok = o.zipf >= 0 && o.zipf < 10; break;
		case 'j': o.json = true; break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
		if (!ok) {
			fprintf(stderr, "bench-engram: bad option value: %s\n", optarg);
			return 2;
		}
	}
	struct mode modes[MODES_MAX];
	uint32_t n_modes = 0;
	memset(modes, 0, sizeof(modes));
	for (const char *p = o.modes; p && *p;) {
		const char *comma = strchr(p, ',');
		size_t len = comma ? (size_t)(comma - p) : strlen(p);
		if (n_modes == MODES_MAX || parse_mode(p, len, &modes[n_modes]) < 0) {
			fprintf(stderr, "bench-engram: --modes: bad mode in %s\n", o.modes);
			return 2;
		}
		n_modes++;
		p = comma ? comma + 1 : NULL;
	}
	if (!o.model || !o.tables || !n_modes || optind != argc) {
		usage(stderr);
		return 2;
	}

	char err[512] = "";
	struct dp_gpu_opts gopts = { .threads = o.threads };
	struct dp_gpu *g;
	struct dp_v4_model *m;
	struct dp_engram_hash *h;
	struct dp_io *io = NULL;
	int r;
	if ((r = dp_gpu_new(DP_GPU_CPU, &gopts, &g, err, sizeof(err))) < 0 ||
	    (r = dp_v4_model_load(g, o.model, &m, err, sizeof(err))) < 0 ||
	    (r = dp_engram_hash_from_model(m, &h, err, sizeof(err))) < 0) {
		fprintf(stderr, "bench-engram: %s: %s\n", o.model, *err ? err : strerror(-r));
		return 1;
	}
	uint32_t V = (uint32_t)dp_v4_model_config(m)->vocab_size, B = o.batch;
	uint32_t hd = (uint32_t)dp_v4_model_config(m)->engram.head_dim;
	const struct dp_engram_store *in_memory = NULL;
	for (uint32_t i = 0; i < n_modes; i++) {
		struct mode *md = &modes[i];
		struct dp_engram_store_config cfg;
		dp_engram_store_config_init(&cfg);
		cfg.residency = md->res;
		cfg.gpu = g;
		cfg.cache_rows = md->cache ? o.cache : 0;
		cfg.max_tokens = B * (o.prompt_len > 1 ? o.prompt_len : 1);
		if (cfg.max_tokens > 4096)
			cfg.max_tokens = 4096;
		cfg.flags = md->buffered ? DP_ENGRAM_STORE_BUFFERED : 0;
		if (md->res != DP_ENGRAM_RES_NVME)
			cfg.share = in_memory;
		if (md->res == DP_ENGRAM_RES_NVME) {
			if (!io) {
				struct dp_io_config icfg;
				dp_io_config_init(&icfg);
				icfg.queue_depth = 256;
				icfg.max_regions = 16;
				if ((r = dp_io_new(&icfg, &io)) < 0 || (r = dp_io_start(io, -1)) < 0) {
					fprintf(stderr, "bench-engram: io engine: %s\n", strerror(-r));
					return 1;
				}
			}
			cfg.io = io;
		}
		double t = dp_clock_s();
		r = dp_engram_store_new(h, hd, o.tables, &cfg, &md->s, err, sizeof(err));
		md->load_s = dp_clock_s() - t;
		if (r < 0) {
			fprintf(stderr, "bench-engram: %s: %s: %s\n", md->name, o.tables,
				*err ? err : strerror(-r));
			return 1;
		}
		if (md->res != DP_ENGRAM_RES_NVME && !in_memory)
			in_memory = md->s;
		md->seqs = calloc(B, sizeof(*md->seqs));
		md->rate = calloc(o.reps, sizeof(double));
		md->ratio = calloc(o.reps, sizeof(double));
		if (!md->seqs || !md->rate || !md->ratio)
			return 1;
		for (uint32_t b = 0; b < B; b++)
			if ((r = dp_v4_seq_new(m, &md->seqs[b])) < 0)
				return 1;
	}

	uint32_t total = o.prompt_len + WARMUP_STEPS + o.reps * o.decode;
	struct zipf z;
	int32_t *tok = malloc((size_t)B * total * sizeof(*tok));
	struct dp_v4_batch_item *it = calloc(B, sizeof(*it));
	float *logits = malloc((size_t)B * V * sizeof(float));
	if (!tok || !it || !logits || zipf_init(&z, V, o.zipf, o.seed) < 0) {
		fprintf(stderr, "bench-engram: out of memory\n");
		return 1;
	}
	for (uint32_t b = 0; b < B; b++) {
		uint64_t st = o.seed + b;
		for (uint32_t i = 0; i < total; i++)
			tok[(size_t)b * total + i] = zipf_draw(&z, &st);
	}

	/* one step of mode md: every sequence's tokens [at, at + n) */
#define STEP(md, at, n)                                                                      \
	do {                                                                                 \
		for (uint32_t b = 0; b < B; b++)                                             \
			it[b] = (struct dp_v4_batch_item){ .seq = (md)->seqs[b],            \
							   .tokens = tok + (size_t)b * total + (at), \
							   .n_tokens = (n) };                   \
		if ((md)->prefetch && (r = dp_engram_prefetch((md)->s, it, B)) < 0)         \
			break;                                                               \
		r = dp_v4_forward(m, it, B, logits);                                         \
	} while (0)

	for (uint32_t i = 0; i < n_modes; i++) {
		struct mode *md = &modes[i];
		struct dp_v4_engram_provider p;
		dp_engram_store_provider(md->s, &p);
		dp_v4_model_set_engram(m, &p);
		STEP(md, 0, o.prompt_len);
		for (uint32_t k = 0; r == 0 && k < WARMUP_STEPS; k++)
			STEP(md, o.prompt_len + k, 1);
		if (r < 0) {
			fprintf(stderr, "bench-engram: %s: forward failed: %s\n", md->name, strerror(-r));
			return 1;
		}
		dp_engram_store_reset_stats(md->s);
	}
	/* steps interleaved: step k of every mode in turn (the order rotated each step), so a
	 * burst of other work on the machine falls on all modes alike */
	double *spent = calloc(n_modes, sizeof(double));
	if (!spent)
		return 1;
	for (uint32_t rep = 0; rep < o.reps; rep++) {
		memset(spent, 0, n_modes * sizeof(double));
		for (uint32_t k = 0; k < o.decode; k++)
			for (uint32_t j = 0; j < n_modes; j++) {
				uint32_t i = (j + k + rep) % n_modes;
				struct mode *md = &modes[i];
				struct dp_v4_engram_provider p;
				struct dp_io_stats a_io, b_io;
				uint32_t at = o.prompt_len + WARMUP_STEPS + rep * o.decode + k;
				dp_engram_store_provider(md->s, &p);
				dp_v4_model_set_engram(m, &p);
				if (io)
					dp_io_get_stats(io, &a_io);
				double a = dp_clock_s();
				STEP(md, at, 1);
				spent[i] += dp_clock_s() - a;
				if (io) { /* this mode's share of the engine's counters */
					dp_io_get_stats(io, &b_io);
					md->io1.submits += b_io.submits - a_io.submits;
					md->io1.sqes += b_io.sqes - a_io.sqes;
					md->io1.cpu_ns += b_io.cpu_ns - a_io.cpu_ns;
				}
				if (r < 0) {
					fprintf(stderr, "bench-engram: %s: forward failed: %s\n",
						md->name, strerror(-r));
					return 1;
				}
			}
		for (uint32_t i = 0; i < n_modes; i++)
			modes[i].rate[rep] = (double)B * o.decode / spent[i];
	}
	free(spent);
	for (uint32_t i = 0; i < n_modes; i++)
		for (uint32_t rep = 0; rep < o.reps; rep++)
			modes[i].ratio[rep] = modes[i].rate[rep] / modes[0].rate[rep];
	double steps = (double)o.reps * o.decode;
	struct dp_engram_table_info ti = { 0 };
	struct dp_engram_table *tt;
	if (dp_engram_table_open(o.tables, &tt, err, sizeof(err)) == 0) {
		dp_engram_table_get_info(tt, &ti);
		dp_engram_table_close(tt);
	}
	for (uint32_t i = 0; i < n_modes; i++) {
		struct mode *md = &modes[i];
		struct dp_engram_store_stats *st = &md->st;
		double best, median = median_of(md->rate, o.reps, &best);
		double ratio = median_of(md->ratio, o.reps, NULL);
		dp_engram_store_get_stats(md->s, st);
		double hit = st->cache_hits + st->cache_misses
				     ? (double)st->cache_hits / (double)(st->cache_hits + st->cache_misses)
				     : 0;
		if (o.json) {
			printf("{\"mode\": \"%s\", \"residency\": \"%s\", \"prefetch\": %s, "
			       "\"cache_rows\": %llu, \"batch\": %u, \"decode\": %u, \"reps\": %u, "
			       "\"best\": %.3f, \"median\": %.3f, \"ratio_to_first\": %.4f, \"rates\": [",
			       md->name, dp_engram_residency_name(md->res), md->prefetch ? "true" : "false",
			       (unsigned long long)(md->cache ? o.cache : 0), B, o.decode, o.reps, best,
			       median, ratio);
			for (uint32_t k = 0; k < o.reps; k++)
				printf("%s%.3f", k ? ", " : "", md->rate[k]);
			printf("], \"table_bytes\": %llu, \"load_s\": %.2f, \"pinned\": %s, "
			       "\"hit_rate\": %.4f, \"rows_per_step\": %.1f, \"reads_per_step\": %.1f, "
			       "\"blocks_per_step\": %.1f, \"wait_ms_per_step\": %.4f, "
			       "\"gather_ms_per_step\": %.4f, \"plan_ms_per_step\": %.4f, "
			       "\"io_cpu_ms_per_step\": %.4f, \"step_ms\": %.3f, "
			       "\"sync_prefetches\": %llu, \"sqes_per_submit\": %.2f}\n",
			       (unsigned long long)ti.file_bytes, md->load_s, st->pinned ? "true" : "false",
			       hit, st->rows / steps, st->reads / steps, st->blocks_read / steps,
			       st->wait_ns / steps * 1e-6, st->gather_ns / steps * 1e-6,
			       st->plan_ns / steps * 1e-6, md->io1.cpu_ns / steps * 1e-6,
			       1e3 * B / median, (unsigned long long)st->sync_prefetches,
			       md->io1.submits ? (double)md->io1.sqes / (double)md->io1.submits : 0.0);
		} else {
			printf("%-18s %8.1f tok/s best %8.1f median  x%.4f  hit %5.1f%%  %6.1f reads; "
			       "per step: %.3f ms plan, %.3f wait, %.3f gather, %.3f io cpu\n",
			       md->name, best, median, ratio, 100 * hit, st->reads / steps,
			       st->plan_ns / steps * 1e-6, st->wait_ns / steps * 1e-6,
			       st->gather_ns / steps * 1e-6, md->io1.cpu_ns / steps * 1e-6);
		}
	}
	dp_v4_model_set_engram(m, NULL);
	for (int i = (int)n_modes - 1; i >= 0; i--) { /* sharers before the owner */
		for (uint32_t b = 0; b < B; b++)
			dp_v4_seq_free(modes[i].seqs[b]);
		dp_engram_store_free(modes[i].s);
		free(modes[i].seqs), free(modes[i].rate), free(modes[i].ratio);
	}
	if (io) {
		dp_io_stop(io, DP_IO_STOP_DRAIN);
		dp_io_free(io);
	}
	dp_engram_hash_free(h);
	dp_v4_model_free(m);
	dp_gpu_free(g);
	free(tok), free(it), free(logits), free(z.cdf), free(z.id);
	return 0;
}
