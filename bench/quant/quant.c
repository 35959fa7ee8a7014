/* SPDX-License-Identifier: MIT */
/*
 * bench-quant: a published-format checkpoint (FP8 block weights, FP4 routed
 * experts, kept as stored) on the cpu backend, beside the memory-bandwidth
 * bound measured in the same run on the same threads.
 *
 * The bound. A decode step must read every weight the forward touches once:
 * the dense ones (attention, compressors, indexer, router, shared expert,
 * mHC, norms, head: every tensor but the routed experts, the embedding and
 * the MTP block, which is not loaded) plus the routed experts the step picked
 * (distinct (layer, expert) pairs: 6 a layer at batch 1, their union at batch
 * B) plus an embedding row and a tid2eid row per token. Bytes from the
 * checkpoint's own headers; the picks counted by the paged runs, which route
 * the same tokens to bitwise the same logits (when those runs are skipped,
 * the expected union under uniform routing, E (1 - (1 - k/E)^B), said so).
 * Read bandwidth: a STREAM-like read of a buffer well past the caches on the
 * same number of threads, best of several passes, measured before every
 * round and at the end (the best is the bound's). bound tokens/s = B /
 * (bytes / bandwidth). KV and activations are left out of the bytes (a few
 * MiB).
 *
 * The runs, each a fresh load of the model in a child process (so its RSS is
 * its own), interleaved over --rounds (the fastest of each counts):
 *   device   every expert resident: decode at each batch, a P-token prefill;
 *   dram N%  experts paged from a host copy, N% of each layer's in slots;
 *   nvme N%  experts read from the checkpoint files by dualpathd's io thread
 *            (daemon/experts.h: O_DIRECT, io_uring), lookahead on;
 * with the run's peak RSS (weights used in place from the mapped shards count
 * once touched, and so do pages the loader only read: anonymous and
 * file-backed shown apart) beside the checkpoint's bytes. Each paged run's
 * logits must equal the device run's bit for bit (exit status 1 otherwise).
 *
 * Usage: bench-quant --model DIR [--threads T] [--batches 1,4] [--decode N]
 *                    [--prompt-len P] [--prefill N] [--slots 25,50]
 *                    [--paged dram,nvme|none] [--stream-mib M] [--rounds R] [--quick]
 */
#include <errno.h>
#include <getopt.h>
#include <immintrin.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "base/macros.h"
#include "bench/bench-util.h"
#include "daemon/experts.h"
#include "io/io.h"
#include "model/safetensors.h"
#include "model/v4.h"

#define MAX_BATCHES 4
#define MAX_SLOTS   4

struct opts {
	const char *dir;
	int threads;
	uint32_t batches[MAX_BATCHES], n_batches;
	uint32_t N, P, prefill, rounds;
	uint32_t slots_pct[MAX_SLOTS], n_slots;
	bool dram, nvme;
	size_t stream_bytes;
};

/* ---- the read bandwidth: a STREAM-like sum over `threads` threads -------------- */

struct stream_arg {
	const uint8_t *p;
	size_t n;
	uint64_t sum;
};

__attribute__((target("avx2"))) static uint64_t sum_avx2(const uint8_t *p, size_t n)
{
	__m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
	for (size_t i = 0; i + 128 <= n; i += 128) {
		a0 = _mm256_add_epi64(a0, _mm256_load_si256((const __m256i *)(p + i)));
		a1 = _mm256_add_epi64(a1, _mm256_load_si256((const __m256i *)(p + i + 32)));
		a2 = _mm256_add_epi64(a2, _mm256_load_si256((const __m256i *)(p + i + 64)));
		a3 = _mm256_add_epi64(a3, _mm256_load_si256((const __m256i *)(p + i + 96)));
	}
	a0 = _mm256_add_epi64(_mm256_add_epi64(a0, a1), _mm256_add_epi64(a2, a3));
	uint64_t v[4];
	_mm256_storeu_si256((__m256i *)v, a0);
	return v[0] + v[1] + v[2] + v[3];
}

static uint64_t sum_portable(const uint8_t *p, size_t n)
{
	const uint64_t *q = (const uint64_t *)p;
	uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
	for (size_t i = 0; i + 4 <= n / 8; i += 4) {
		s0 += q[i];
		s1 += q[i + 1];
		s2 += q[i + 2];
		s3 += q[i + 3];
	}
	return s0 + s1 + s2 + s3;
}

static void *stream_part(void *v)
{
	struct stream_arg *a = v;
	a->sum = __builtin_cpu_supports("avx2") ? sum_avx2(a->p, a->n) : sum_portable(a->p, a->n);
	return NULL;
}

/* GB/s of the best of `reps` reads of buf split over `threads` threads. */
static double stream_read(const uint8_t *buf, size_t bytes, int threads, int reps)
{
	double best = 0;
	size_t per = bytes / (size_t)threads / 4096 * 4096;
	pthread_t th[64];
	struct stream_arg a[64];
	for (int r = 0; r < reps; r++) {
		double t0 = dp_clock_s();
		int started = 1;
		for (int i = 0; i < threads; i++)
			a[i] = (struct stream_arg){ .p = buf + (size_t)i * per, .n = per };
		for (int i = 1; i < threads; i++)
			if (pthread_create(&th[i], NULL, stream_part, &a[i]) == 0)
				started = i + 1;
			else
				break;
		stream_part(&a[0]);
		for (int i = 1; i < started; i++)
			pthread_join(th[i], NULL);
		for (int i = started; i < threads; i++)
			stream_part(&a[i]); /* no thread: read it here (slower, never faster) */
		double dt = dp_clock_s() - t0;
		uint64_t s = 0;
		for (int i = 0; i < threads; i++)
			s += a[i].sum;
		if (s == 42) /* keep the sums live */
			fputc(' ', stderr);
		if (per * (size_t)threads / dt / 1e9 > best)
			best = per * (size_t)threads / dt / 1e9;
	}
	return best;
}

static double stream_gbs(const struct opts *o, int reps)
{
	uint8_t *buf = aligned_alloc(4096, o->stream_bytes);
	if (!buf)
		return 0;
	for (size_t i = 0; i < o->stream_bytes; i += 8) /* touch: fault every page in */
		*(uint64_t *)(buf + i) = i;
	double gbs = stream_read(buf, o->stream_bytes, o->threads, reps);
	free(buf);
	return gbs;
}

/* ---- what a step reads, from the checkpoint's headers --------------------------- */

struct bytes {
	uint64_t file;	       /* every tensor */
	uint64_t dense;	       /* read once a step whatever the batch */
	uint64_t expert;       /* one routed expert (w1, w2, w3 and scales), average */
	uint64_t per_token;    /* embedding row + tid2eid rows */
	uint64_t experts_all;  /* every routed expert of the main layers */
	uint64_t mtp;	       /* the MTP block (not loaded) */
};

static int count_bytes(const char *dir, const struct dp_v4_config *c, struct bytes *b, char *err,
		       size_t len)
{
	struct dp_st *st;
	int r = dp_st_open_dir(dir, &st, err, len);
	if (r < 0)
		return r;
	*b = (struct bytes){ 0 };
	uint32_t n_hash = 0;
	for (size_t i = 0; i < dp_st_count(st); i++) {
		struct dp_st_tensor t;
		if ((r = dp_st_at(st, i, &t)) < 0)
			break;
		b->file += t.bytes;
		if (!strncmp(t.name, "mtp.", 4))
			b->mtp += t.bytes;
		else if (strstr(t.name, ".ffn.experts."))
			b->experts_all += t.bytes;
		else if (!strcmp(t.name, "embed.weight") || !strcmp(t.name, "model.embed_tokens.weight"))
			b->per_token += t.bytes / (uint64_t)c->vocab_size;
		else if (strstr(t.name, "tid2eid")) {
			b->per_token += t.bytes / (uint64_t)c->vocab_size;
			n_hash++;
		} else
			b->dense += t.bytes;
	}
	dp_st_free(st);
	b->expert = b->experts_all / ((uint64_t)c->num_hidden_layers * (uint64_t)c->n_routed_experts);
	return r < 0 ? r : 0;
}

/* ---- one load of the model, its runs --------------------------------------------- */

static long rss_kib(const char *field)
{
	FILE *f = fopen("/proc/self/status", "r");
	char line[256];
	long v = -1;
	size_t n = strlen(field);
	while (f && fgets(line, sizeof(line), f))
		if (!strncmp(line, field, n) && line[n] == ':')
			v = strtol(line + n + 1, NULL, 10);
	if (f)
		fclose(f);
	return v;
}

struct loaded {
	struct dp_gpu *g;
	struct dp_v4_model *m;
	struct dp_io *io;
	struct dp_expert_io *xio;
	double load_s;
};

static void unload(struct loaded *l)
{
	dp_expert_io_free(l->xio, l->m);
	dp_v4_model_free(l->m);
	if (l->io) {
		dp_io_stop(l->io, DP_IO_STOP_DRAIN);
		dp_io_free(l->io);
	}
	dp_gpu_free(l->g);
	*l = (struct loaded){ 0 };
}

static int load(const struct opts *o, const struct dp_v4_load_opts *lo, struct loaded *l)
{
	char err[512] = "";
	struct dp_gpu_opts go = { .threads = o->threads };
	double t0 = dp_clock_s();
	*l = (struct loaded){ 0 };
	int r = dp_gpu_new(DP_GPU_CPU, &go, &l->g, err, sizeof(err));
	if (r == 0)
		r = dp_v4_model_load_opts(l->g, o->dir, lo, &l->m, err, sizeof(err));
	if (r == 0 && lo->experts == DP_V4_EXPERTS_NVME) {
		struct dp_io_config ic;
		dp_io_config_init(&ic);
		if ((r = dp_io_new(&ic, &l->io)) == 0 && (r = dp_io_start(l->io, -1)) == 0)
			r = dp_expert_io_new(l->io, NULL, l->m, &l->xio, err, sizeof(err));
	}
	l->load_s = dp_clock_s() - t0;
	if (r < 0) {
		fprintf(stderr, "bench-quant: loading %s (experts %s): %s%s%s\n", o->dir,
			dp_v4_experts_where_name(lo->experts), strerror(-r), err[0] ? ": " : "", err);
		unload(l);
	}
	return r;
}

struct decode {
	double s;			/* decode time */
	struct dp_v4_expert_stats st;	/* over the decode steps */
};

static void stats_sub(struct dp_v4_expert_stats *a, const struct dp_v4_expert_stats *b)
{
	a->uses -= b->uses;
	a->hits -= b->hits;
	a->misses -= b->misses;
	a->prefetched -= b->prefetched;
	a->ahead_unused -= b->ahead_unused;
	a->passes -= b->passes;
	a->bytes_in -= b->bytes_in;
	a->wait_ns -= b->wait_ns;
	a->fill_ns -= b->fill_ns;
}

/* B sequences prefill P tokens each (one by one), then N greedy decode steps of the whole
 * batch; the last step's logits (B x V) to logits. */
static int run_decode(const struct opts *o, struct loaded *l, uint32_t B, struct decode *d,
		      float *logits)
{
	uint32_t V = (uint32_t)dp_v4_model_config(l->m)->vocab_size;
	struct dp_v4_seq **seq = calloc(B, sizeof(*seq));
	struct dp_v4_batch_item *it = calloc(B, sizeof(*it));
	int32_t *next = calloc(B, sizeof(*next)), *prompt = malloc(o->P * sizeof(int32_t));
	int r = seq && it && next && prompt ? 0 : -ENOMEM;
	for (uint32_t b = 0; r == 0 && b < B; b++) {
		stream_tokens(14, b, V, prompt, o->P);
		if ((r = dp_v4_seq_new(l->m, &seq[b])) < 0)
			break;
		struct dp_v4_batch_item one = { seq[b], prompt, o->P, false };
		if ((r = dp_v4_forward(l->m, &one, 1, logits)) == 0)
			next[b] = argmax(logits, V);
	}
	struct dp_v4_expert_stats s0;
	dp_v4_model_expert_stats(l->m, &s0);
	double t0 = dp_clock_s();
	for (uint32_t s = 0; r == 0 && s < o->N; s++) {
		for (uint32_t b = 0; b < B; b++)
			it[b] = (struct dp_v4_batch_item){ seq[b], &next[b], 1, false };
		if ((r = dp_v4_forward(l->m, it, B, logits)) < 0)
			break;
		for (uint32_t b = 0; b < B; b++)
			next[b] = argmax(logits + (size_t)b * V, V);
	}
	d->s = dp_clock_s() - t0;
	dp_v4_model_expert_stats(l->m, &d->st);
	stats_sub(&d->st, &s0);
	for (uint32_t b = 0; seq && b < B; b++)
		dp_v4_seq_free(seq[b]);
	free(seq);
	free(it);
	free(next);
	free(prompt);
	return r;
}

/* One fresh sequence, o->prefill tokens in one forward. */
static int run_prefill(const struct opts *o, struct loaded *l, double *ret_s)
{
	uint32_t V = (uint32_t)dp_v4_model_config(l->m)->vocab_size;
	int32_t *tok = malloc(o->prefill * sizeof(int32_t));
	float *logits = malloc((size_t)V * sizeof(float));
	struct dp_v4_seq *s = NULL;
	int r = tok && logits ? 0 : -ENOMEM;
	if (r == 0) {
		stream_tokens(1000, 0, V, tok, o->prefill);
		r = dp_v4_seq_new(l->m, &s);
	}
	if (r == 0) {
		struct dp_v4_batch_item one = { s, tok, o->prefill, false };
		double t0 = dp_clock_s();
		r = dp_v4_forward(l->m, &one, 1, logits);
		*ret_s = dp_clock_s() - t0;
	}
	dp_v4_seq_free(s);
	free(tok);
	free(logits);
	return r;
}

/* ---- one run in a child process: its RSS is the run's own ------------------------ */

struct mode {
	enum dp_v4_experts_where where;
	uint32_t pct, slots; /* paged: % of E, slots a layer */
	char name[16];
};

struct result {
	int ret; /* 0, or the failure's negative errno */
	double load_s, prefill_s;
	struct decode dec[MAX_BATCHES];
	long rss_kib, hwm_kib, anon_kib, file_kib; /* at the end of the run */
	struct dp_v4_weight_stats ws;
};

static int write_all(int fd, const void *p, size_t n)
{
	for (const char *c = p; n;) {
		ssize_t w = write(fd, c, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return -1;
		c += w;
		n -= (size_t)w;
	}
	return 0;
}

static int read_all(int fd, void *p, size_t n)
{
	for (char *c = p; n;) {
		ssize_t r = read(fd, c, n);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return -1;
		c += r;
		n -= (size_t)r;
	}
	return 0;
}

/* Load the model as mode says and run every batch (and the prefill, if asked); the result
 * and each batch's last logits go to fd. */
static void child(const struct opts *o, const struct mode *md, bool prefill, uint32_t V, int fd)
{
	struct result res = { 0 };
	struct loaded l;
	struct dp_v4_load_opts lo = { .experts = md->where, .expert_slots = md->slots };
	uint32_t maxB = 0;
	for (uint32_t i = 0; i < o->n_batches; i++)
		maxB = o->batches[i] > maxB ? o->batches[i] : maxB;
	float *logits = calloc((size_t)maxB * o->n_batches * V, sizeof(float));
	res.ret = logits ? load(o, &lo, &l) : -ENOMEM;
	if (res.ret == 0) {
		res.load_s = l.load_s;
		for (uint32_t i = 0; res.ret == 0 && i < o->n_batches; i++)
			if ((res.ret = run_decode(o, &l, o->batches[i], &res.dec[i],
						  logits + (size_t)i * maxB * V)) < 0)
				fprintf(stderr, "bench-quant: %s: decode at batch %u: %s\n", md->name,
					o->batches[i], strerror(-res.ret));
		if (res.ret == 0 && prefill && (res.ret = run_prefill(o, &l, &res.prefill_s)) < 0)
			fprintf(stderr, "bench-quant: %s: prefill of %u tokens: %s\n", md->name,
				o->prefill, strerror(-res.ret));
		res.rss_kib = rss_kib("VmRSS");
		res.hwm_kib = rss_kib("VmHWM");
		res.anon_kib = rss_kib("RssAnon");
		res.file_kib = rss_kib("RssFile");
		dp_v4_model_weight_stats(l.m, &res.ws);
		unload(&l);
	}
	if (write_all(fd, &res, sizeof(res)) < 0 ||
	    (logits && write_all(fd, logits, (size_t)maxB * o->n_batches * V * sizeof(float)) < 0))
		_exit(1);
	_exit(0);
}

/* Fork a child for mode; its result to *res, its logits to logits (maxB x n_batches x V). */
static int run_child(const struct opts *o, const struct mode *md, bool prefill, uint32_t V,
		     size_t n_logits, struct result *res, float *logits)
{
	int fds[2];
	if (pipe(fds) < 0)
		return -errno;
	fflush(NULL);
	pid_t pid = fork();
	if (pid < 0) {
		close(fds[0]);
		close(fds[1]);
		return -errno;
	}
	if (pid == 0) {
		close(fds[0]);
		child(o, md, prefill, V, fds[1]);
	}
	close(fds[1]);
	int r = read_all(fds[0], res, sizeof(*res)) < 0 ? -EPIPE : res->ret;
	if (r == 0 && read_all(fds[0], logits, n_logits * sizeof(float)) < 0)
		r = -EPIPE;
	close(fds[0]);
	int st;
	while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
		;
	if (r == 0 && !(WIFEXITED(st) && WEXITSTATUS(st) == 0))
		r = -ECHILD;
	return r;
}

/* ---- options ----------------------------------------------------------------------- */

static int parse_list(const char *s, uint32_t *out, uint32_t max, uint32_t lo, uint32_t hi,
		      uint32_t *ret_n)
{
	char buf[128];
	uint32_t n = 0;
	snprintf(buf, sizeof(buf), "%s", s);
	for (char *save, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
		char *end;
		unsigned long v = strtoul(t, &end, 10);
		if (end == t || *end || v < lo || v > hi || n == max)
			return -1;
		out[n++] = (uint32_t)v;
	}
	if (n == 0)
		return -1;
	*ret_n = n;
	return 0;
}

static int parse_u32(const char *s, uint32_t lo, uint32_t hi, uint32_t *ret)
{
	uint32_t n;
	return parse_list(s, ret, 1, lo, hi, &n);
}

static void usage(FILE *f)
{
	fprintf(f, "usage: bench-quant --model DIR [--threads T] [--batches 1,4] [--decode N]\n"
		   "                   [--prompt-len P] [--prefill N] [--slots 25,50] [--paged dram,nvme|none]\n"
		   "                   [--stream-mib M] [--rounds R] [--quick]\n");
}

static int parse_opts(int argc, char **argv, struct opts *o)
{
	*o = (struct opts){ .threads = 2, .batches = { 1, 4 }, .n_batches = 2, .N = 16, .P = 32,
			    .prefill = 512, .rounds = 2, .slots_pct = { 25, 50 }, .n_slots = 2,
			    .dram = true, .nvme = true, .stream_bytes = 1024u << 20 };
	static const struct option lopts[] = {
		{ "model", required_argument, NULL, 'm' },	{ "threads", required_argument, NULL, 't' },
		{ "batches", required_argument, NULL, 'b' },	{ "decode", required_argument, NULL, 'n' },
		{ "prompt-len", required_argument, NULL, 'p' }, { "prefill", required_argument, NULL, 'P' },
		{ "slots", required_argument, NULL, 's' },	{ "paged", required_argument, NULL, 'x' },
		{ "stream-mib", required_argument, NULL, 'S' }, { "rounds", required_argument, NULL, 'r' },
		{ "quick", no_argument, NULL, 'q' },		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	uint32_t v;
	for (int c; (c = getopt_long(argc, argv, "m:t:b:n:p:P:s:x:S:r:qh", lopts, NULL)) != -1;) {
		int bad = 0;
		switch (c) {
		case 'm': o->dir = optarg; break;
		case 't': bad = parse_u32(optarg, 1, 64, &v); o->threads = (int)v; break;
		case 'b': bad = parse_list(optarg, o->batches, MAX_BATCHES, 1, 256, &o->n_batches); break;
		case 'n': bad = parse_u32(optarg, 1, 1 << 16, &o->N); break;
		case 'p': bad = parse_u32(optarg, 1, 1 << 16, &o->P); break;
		case 'P': bad = parse_u32(optarg, 0, 1 << 16, &o->prefill); break;
		case 's': bad = parse_list(optarg, o->slots_pct, MAX_SLOTS, 1, 100, &o->n_slots); break;
		case 'S': bad = parse_u32(optarg, 64, 1 << 16, &v); o->stream_bytes = (size_t)v << 20; break;
		case 'r': bad = parse_u32(optarg, 1, 100, &o->rounds); break;
		case 'x':
			o->dram = strstr(optarg, "dram") != NULL;
			o->nvme = strstr(optarg, "nvme") != NULL;
			bad = !(o->dram || o->nvme || !strcmp(optarg, "none"));
			break;
		case 'q': o->N = 6; o->rounds = 1; o->prefill = 128; break;
		case 'h': usage(stdout); exit(0);
		default: usage(stderr); return -1;
		}
		if (bad) {
			fprintf(stderr, "bench-quant: bad value for --%s: %s\n",
				c == 'x' ? "paged (dram, nvme, both comma-separated, or none)" : "option", optarg);
			return -1;
		}
	}
	if (!o->dir || optind != argc) {
		usage(stderr);
		return -1;
	}
	return 0;
}

/* ---- main -------------------------------------------------------------------------- */

static double mib(uint64_t b)
{
	return b / 1048576.0;
}

int main(int argc, char **argv)
{
	struct opts o;
	if (parse_opts(argc, argv, &o) < 0)
		return 2;

	char path[4096], err[512] = "";
	struct dp_v4_config c;
	snprintf(path, sizeof(path), "%s/config.json", o.dir);
	if (dp_v4_config_load(path, &c, err, sizeof(err)) < 0) {
		fprintf(stderr, "bench-quant: %s: %s\n", path, err);
		return 1;
	}
	uint32_t L = (uint32_t)c.num_hidden_layers, E = (uint32_t)c.n_routed_experts;
	uint32_t k = (uint32_t)c.num_experts_per_tok, V = (uint32_t)c.vocab_size;
	struct bytes by;
	if (count_bytes(o.dir, &c, &by, err, sizeof(err)) < 0) {
		fprintf(stderr, "bench-quant: %s: %s\n", o.dir, err);
		return 1;
	}
	dp_v4_config_fini(&c);

	/* the runs: resident, then each paged mode; interleaved, o.rounds times */
	struct mode modes[1 + 2 * MAX_SLOTS] = { { DP_V4_EXPERTS_DEVICE, 100, E, "device" } };
	uint32_t n_modes = 1;
	for (int w = 0; w < 2; w++) {
		if ((w == 0 && !o.dram) || (w == 1 && !o.nvme))
			continue;
		for (uint32_t si = 0; si < o.n_slots; si++) {
			struct mode *md = &modes[n_modes++];
			md->where = w ? DP_V4_EXPERTS_NVME : DP_V4_EXPERTS_DRAM;
			md->pct = o.slots_pct[si];
			md->slots = (E * md->pct + 99) / 100;
			md->slots = md->slots < k ? k : md->slots > E ? E : md->slots;
			snprintf(md->name, sizeof(md->name), "%s %u%%", w ? "nvme" : "dram", md->pct);
		}
	}
	uint32_t maxB = 0;
	for (uint32_t i = 0; i < o.n_batches; i++)
		maxB = o.batches[i] > maxB ? o.batches[i] : maxB;
	size_t n_logits = (size_t)maxB * o.n_batches * V;
	float *ref = calloc(n_logits, sizeof(float)), *got = calloc(n_logits, sizeof(float));
	struct result best[1 + 2 * MAX_SLOTS];
	bool have[1 + 2 * MAX_SLOTS] = { false }, same[1 + 2 * MAX_SLOTS];
	if (!ref || !got)
		return 1;

	printf("bench-quant: %s: %u layers, %u experts top-%u, vocab %u; cpu backend, %d threads; "
	       "decode %u steps after %u-token prompts, best of %u interleaved rounds\n"
	       "  checkpoint %.1f MiB: dense %.1f MiB a step, routed experts %.1f MiB (%.2f MiB each), "
	       "MTP %.1f MiB (not loaded), %.1f KiB a token (embedding, tid2eid rows)\n",
	       o.dir, L, E, k, V, o.threads, o.N, o.P, o.rounds, mib(by.file), mib(by.dense),
	       mib(by.experts_all), mib(by.expert), mib(by.mtp), by.per_token / 1024.0);
	fflush(stdout);
	double bw = 0, bws[16];
	uint32_t n_bw = 0;
	int status = 0;
	for (uint32_t round = 0; round < o.rounds; round++) {
		double g = stream_gbs(&o, 6);
		if (n_bw < 16)
			bws[n_bw++] = g;
		bw = g > bw ? g : bw;
		for (uint32_t mi = 0; mi < n_modes; mi++) {
			struct result res;
			float *lg = mi == 0 && round == 0 ? ref : got;
			int r = run_child(&o, &modes[mi], mi == 0 && o.prefill, V, n_logits, &res, lg);
			if (r < 0) {
				fprintf(stderr, "bench-quant: %s run failed: %s\n", modes[mi].name, strerror(-r));
				status = 1;
				continue;
			}
			fprintf(stderr, "bench-quant: round %u %s: load %.1f s, decode", round + 1,
				modes[mi].name, res.load_s);
			for (uint32_t i = 0; i < o.n_batches; i++)
				fprintf(stderr, " b%u %.2f tok/s", o.batches[i],
					o.batches[i] * o.N / res.dec[i].s);
			fprintf(stderr, "\n");
			if (!have[mi]) {
				best[mi] = res;
				same[mi] = true;
			}
			if (lg != ref && memcmp(lg, ref, n_logits * sizeof(float)))
				same[mi] = false;
			for (uint32_t i = 0; have[mi] && i < o.n_batches; i++)
				if (res.dec[i].s < best[mi].dec[i].s)
					best[mi].dec[i] = res.dec[i];
			if (have[mi] && res.prefill_s > 0 && res.prefill_s < best[mi].prefill_s)
				best[mi].prefill_s = res.prefill_s;
			if (have[mi] && res.hwm_kib > best[mi].hwm_kib) {
				best[mi].hwm_kib = res.hwm_kib;
				best[mi].rss_kib = res.rss_kib;
				best[mi].anon_kib = res.anon_kib;
				best[mi].file_kib = res.file_kib;
			}
			have[mi] = true;
		}
	}
	double g = stream_gbs(&o, 6);
	if (n_bw < 16)
		bws[n_bw++] = g;
	bw = g > bw ? g : bw;
	if (!have[0]) {
		fprintf(stderr, "bench-quant: the resident run failed: nothing to report\n");
		return 1;
	}

	/* distinct experts a decode step reads: the first paged run's count (same tokens, same
	 * routing, bitwise the same logits), else the expectation under uniform routing */
	double picked[MAX_BATCHES];
	int from = -1;
	for (uint32_t mi = 1; mi < n_modes && from < 0; mi++)
		if (have[mi] && same[mi])
			from = (int)mi;
	for (uint32_t i = 0; i < o.n_batches; i++)
		picked[i] = from >= 0 ? (double)best[from].dec[i].st.uses / o.N
				      : L * E * (1.0 - pow(1.0 - (double)k / E, o.batches[i]));

	printf("  read bandwidth (STREAM-like read of %zu MiB, %d threads, before each round and "
	       "after):", o.stream_bytes >> 20, o.threads);
	for (uint32_t i = 0; i < n_bw; i++)
		printf(" %.2f", bws[i]);
	printf(" GB/s; the bound uses the best, %.2f GB/s\n"
	       "  routed experts a decode step reads: %s\n\n", bw,
	       from >= 0 ? "counted by a paged run (same tokens, same routing)"
			 : "expected under uniform routing (no paged run)");

	struct result *dv = &best[0];
	printf("%-16s %9s %9s %9s %8s %9s %9s\n", "experts resident", "MiB/step", "experts", "tok/s",
	       "bound", "% bound", "RSS MiB");
	for (uint32_t i = 0; i < o.n_batches; i++) {
		uint32_t B = o.batches[i];
		double bytes = by.dense + picked[i] * by.expert + (double)B * by.per_token;
		double tps = (double)B * o.N / dv->dec[i].s, bound = B / (bytes / (bw * 1e9));
		char name[32];
		snprintf(name, sizeof(name), "decode batch %u", B);
		printf("%-16s %9.1f %9.1f %9.2f %8.2f %9.1f %9.0f\n", name, bytes / 1048576.0,
		       picked[i], tps, bound, 100 * tps / bound, dv->hwm_kib / 1024.0);
	}
	if (o.prefill) {
		double bytes = by.dense + (double)L * E * by.expert + (double)o.prefill * by.per_token;
		double tps = o.prefill / dv->prefill_s, bound = o.prefill / (bytes / (bw * 1e9));
		char name[32];
		snprintf(name, sizeof(name), "prefill %u", o.prefill);
		printf("%-16s %9.1f %9.1f %9.2f %8.2f %9.1f %9.0f\n", name, bytes / 1048576.0,
		       (double)L * E, tps, bound, 100 * tps / bound, dv->hwm_kib / 1024.0);
	}
	printf("(\"experts\": distinct (layer, expert) pairs a step reads; RSS: the run's peak, "
	       "VmHWM)\n\nresident run: RSS %.0f MiB (peak %.0f; %.0f anonymous, %.0f file-backed) for a "
	       "%.0f MiB checkpoint (%.0f MiB of it MTP, not loaded); backend-owned %.0f MiB, mapped in "
	       "place %.0f MiB; load %.1f s\n",
	       dv->rss_kib / 1024.0, dv->hwm_kib / 1024.0, dv->anon_kib / 1024.0,
	       dv->file_kib / 1024.0, mib(by.file), mib(by.mtp),
	       mib(dv->ws.owned_bytes), mib(dv->ws.mapped_bytes), dv->load_s);

	printf("\n%-10s %5s %8s %6s %6s %7s", "experts", "slots", "RSS MiB", "anon", "file",
	       "load s");
	for (uint32_t i = 0; i < o.n_batches; i++) {
		char h[16];
		snprintf(h, sizeof(h), "b%u tok/s", o.batches[i]);
		printf(" %9s %6s %5s", h, "ratio", "hit%");
	}
	printf("  logits\n");
	for (uint32_t mi = 0; mi < n_modes; mi++) {
		struct result *r = &best[mi];
		if (!have[mi])
			continue;
		printf("%-10s %5u %8.0f %6.0f %6.0f %7.1f", modes[mi].name, modes[mi].slots,
		       r->hwm_kib / 1024.0, r->anon_kib / 1024.0, r->file_kib / 1024.0, r->load_s);
		for (uint32_t i = 0; i < o.n_batches; i++) {
			double tps = (double)o.batches[i] * o.N / r->dec[i].s;
			double a = (double)o.batches[i] * o.N / dv->dec[i].s;
			printf(" %9.2f %6.2f %5.0f", tps, tps / a,
			       r->dec[i].st.uses ? 100.0 * r->dec[i].st.hits / r->dec[i].st.uses : 100.0);
		}
		printf("  %s\n", mi == 0 ? "(anchor)" : same[mi] ? "identical" : "DIFFER");
		if (mi && !same[mi])
			status = 1;
	}
	printf("(bB tok/s: decode at batch B; ratio: to resident; hit%%: uses found in a slot; RSS: "
	       "peak; anon, file: RssAnon, RssFile at the end, MiB)\n\n");

	for (uint32_t i = 0; i < o.n_batches; i++) {
		uint32_t B = o.batches[i];
		double bytes = by.dense + picked[i] * by.expert + (double)B * by.per_token;
		double tps = (double)B * o.N / dv->dec[i].s, bound = B / (bytes / (bw * 1e9));
		printf("RESULT quant_decode_b%u_tok_s ours=%.3f anchor=%.3f ratio=%.3f unit=tok/s "
		       "better=higher anchor_is=bandwidth_bound\n", B, tps, bound, tps / bound);
	}
	if (o.prefill) {
		double bytes = by.dense + (double)L * E * by.expert + (double)o.prefill * by.per_token;
		double tps = o.prefill / dv->prefill_s, bound = o.prefill / (bytes / (bw * 1e9));
		printf("RESULT quant_prefill%u_tok_s ours=%.3f anchor=%.3f ratio=%.3f unit=tok/s "
		       "better=higher anchor_is=bandwidth_bound\n", o.prefill, tps, bound, tps / bound);
	}
	printf("RESULT quant_rss_resident_mib ours=%.0f anchor=%.0f ratio=%.3f unit=MiB better=lower "
	       "anchor_is=checkpoint_bytes\n", dv->hwm_kib / 1024.0, mib(by.file),
	       dv->hwm_kib / 1024.0 / mib(by.file));
	for (uint32_t mi = 1; mi < n_modes; mi++) {
		if (!have[mi])
			continue;
		char tag[16];
		snprintf(tag, sizeof(tag), "%s%u", modes[mi].where == DP_V4_EXPERTS_NVME ? "nvme" : "dram",
			 modes[mi].pct);
		for (uint32_t i = 0; i < o.n_batches; i++) {
			double tps = (double)o.batches[i] * o.N / best[mi].dec[i].s;
			double a = (double)o.batches[i] * o.N / dv->dec[i].s;
			printf("RESULT quant_experts_%s_b%u_tok_s ours=%.3f anchor=%.3f ratio=%.3f "
			       "unit=tok/s better=higher anchor_is=all_resident\n", tag, o.batches[i], tps,
			       a, tps / a);
		}
		printf("RESULT quant_experts_%s_rss_mib ours=%.0f anchor=%.0f ratio=%.3f unit=MiB "
		       "better=lower anchor_is=all_resident\n", tag, best[mi].hwm_kib / 1024.0,
		       dv->hwm_kib / 1024.0, (double)best[mi].hwm_kib / dv->hwm_kib);
	}
	free(ref);
	free(got);
	return status;
}
