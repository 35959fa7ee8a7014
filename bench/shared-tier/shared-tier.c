/* SPDX-License-Identifier: MIT */
/*
 * bench-shared-tier — one parked session restored with the DualPath restore
 * (layer by layer, the forward waiting per layer) from the shared tier
 * (RADOS, kvcache/restore-shared.c) beside the same session restored from
 * the local NVMe tier (kvcache/restore.c, O_DIRECT through the io engine),
 * in the same run, rounds interleaved (the order flips every round).
 *
 * The session: --tokens history tokens fed through the model on the cpu
 * backend, one more appended (the next turn's first token). Its state is
 * written to the tier as segments (as daemon/shared.c writes a turn's) and
 * persisted to NVMe as its snapshot. Each round, from each tier: the
 * restore alone (begun, then completed with no compute: every layer waited
 * for, every page checked and copied in) gives the rate, the state's bytes
 * over its time; then the DualPath restore (acquire, feed the one token,
 * read the logits; later layers arrive while earlier ones compute) gives
 * the time to first token. Both must give the same next
 * token (and the same as a recompute from the history, run once).
 *
 *   bench-shared-tier --conf CEPH_CONF --pool POOL [--model DIR] [--tokens N]
 *                     [--rounds R] [--threads T] [--dir STATE_PARENT]
 *
 * Ends with RESULT lines (README "Benchmarks"): ours = RADOS, anchor = NVMe.
 */
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench/bench-util.h"
#include "gpu/gpu.h"
#include "io/io.h"
#include "kvcache/kvcache.h"
#include "kvcache/tier.h"
#include "model/v4.h"

static void usage(void)
{
	fprintf(stderr, "usage: bench-shared-tier --conf CEPH_CONF --pool POOL [--model DIR] "
			"[--tokens N] [--rounds R] [--threads T] [--dir DIR]\n");
}

struct done {
	int left, err;
};

static void on_done(void *arg, int res)
{
	struct done *d = arg;
	d->left--;
	if (res < 0 && !d->err)
		d->err = res;
}

static void wait_tier(struct dp_kv_shared *t, struct done *d)
{
	while (d->left > 0) {
		struct pollfd p = { .fd = dp_kv_shared_fd(t), .events = POLLIN };
		poll(&p, 1, 100);
		dp_kv_shared_reap(t, 0);
	}
}

/* Feed tokens[0..n) to seq in chunks; the logits of the last into logits. */
static int feed(struct dp_v4_model *m, struct dp_v4_seq *seq, const int32_t *tokens, uint64_t n,
		float *logits)
{
	for (uint64_t off = 0; off < n;) {
		uint32_t k = n - off > 512 ? 512 : (uint32_t)(n - off);
		struct dp_v4_batch_item it = { .seq = seq, .tokens = tokens + off, .n_tokens = k };
		int ret = dp_v4_forward(m, &it, 1, logits);
		if (ret < 0)
			return ret;
		if (dp_v4_seq_poisoned(seq))
			return -EBADMSG;
		off += k;
	}
	return 0;
}

/* Acquire s with its restore begun: from the tier (k 0) or NVMe (k 1). */
static int restore_begin(struct dp_kv *kv, struct dp_kv_session *s, struct dp_kv_shared *t, int k,
			 uint64_t pos, const char *const *np, uint32_t n_segs,
			 const struct dp_kv_shared_loc *locs, size_t n, struct dp_v4_seq **seq)
{
	if (k == 1)
		return dp_kv_session_acquire_async(kv, s, seq);
	int ret = dp_kv_session_acquire_fresh(kv, s, seq);
	if (ret == 0)
		ret = dp_kv_session_restore_shared(kv, s, t, NULL, pos, np, n_segs, locs, n, seq);
	return ret;
}

static int cmp_d(const void *a, const void *b)
{
	return cmp_double(a, b);
}

static double median(double *v, int n)
{
	qsort(v, (size_t)n, sizeof(*v), cmp_d);
	return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

int main(int argc, char **argv)
{
	const char *conf = NULL, *pool = NULL, *model = "builtin", *parent = "/var/tmp";
	uint64_t N = 8192;
	int rounds = 7, threads = 0;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
		if (!strcmp(a, "--help")) {
			usage();
			return 0;
		}
		if (!v) {
			usage();
			return 2;
		}
		if (!strcmp(a, "--conf"))
			conf = v;
		else if (!strcmp(a, "--pool"))
			pool = v;
		else if (!strcmp(a, "--model"))
			model = v;
		else if (!strcmp(a, "--tokens"))
			N = strtoull(v, NULL, 10);
		else if (!strcmp(a, "--rounds"))
			rounds = atoi(v);
		else if (!strcmp(a, "--threads"))
			threads = atoi(v);
		else if (!strcmp(a, "--dir"))
			parent = v;
		else {
			usage();
			return 2;
		}
		i++;
	}
	if (!conf || !pool || N < 2 || rounds < 1 || rounds > 1000) {
		usage();
		fprintf(stderr, "bench-shared-tier: --conf and --pool are required; --tokens >= 2, "
				"--rounds 1..1000\n");
		return 2;
	}
	char dir[PATH_MAX], mdir[PATH_MAX], err[512] = "";
	int ret = dp_v4_resolve_dir(model, mdir, sizeof(mdir));
	if (ret < 0) {
		fprintf(stderr, "bench-shared-tier: cannot find model %s: %s\n", model, strerror(-ret));
		return 1;
	}
	struct dp_gpu_opts go = { .threads = threads };
	struct dp_gpu *g;
	struct dp_v4_model *m;
	if (dp_gpu_new(DP_GPU_CPU, &go, &g, err, sizeof(err)) < 0 ||
	    dp_v4_model_load(g, mdir, &m, err, sizeof(err)) < 0) {
		fprintf(stderr, "bench-shared-tier: %s: %s\n", mdir, err);
		return 1;
	}
	const struct dp_v4_config *c = dp_v4_model_config(m);
	if (N + 1 > (uint64_t)c->max_position_embeddings) {
		fprintf(stderr, "bench-shared-tier: --tokens %llu is past the model's %lld positions\n",
			(unsigned long long)N, (long long)c->max_position_embeddings);
		return 2;
	}
	uint32_t V = (uint32_t)c->vocab_size;
	snprintf(dir, sizeof(dir), "%s/dp-bench-shared-XXXXXX", parent);
	if (!mkdtemp(dir)) {
		fprintf(stderr, "bench-shared-tier: cannot make a directory in %s: %s\n", parent,
			strerror(errno));
		return 1;
	}
	struct dp_io_config ic;
	dp_io_config_init(&ic);
	ic.queue_depth = 64;
	struct dp_io *io;
	if ((ret = dp_io_new(&ic, &io)) < 0 || (ret = dp_io_start(io, -1)) < 0) {
		fprintf(stderr, "bench-shared-tier: io engine: %s\n", strerror(-ret));
		return 1;
	}
	struct dp_kv_opts ko = { .state_dir = dir, .numa_node = -1, .direct_io = true, .io = io };
	struct dp_kv *kv;
	if ((ret = dp_kv_open(&ko, m, &kv, err, sizeof(err))) < 0) {
		fprintf(stderr, "bench-shared-tier: %s\n", err);
		return 1;
	}
	char host[64];
	snprintf(host, sizeof(host), "bench-%d", (int)getpid());
	struct dp_kv_shared_opts to = { .conf = conf, .pool = pool, .host_id = host };
	struct dp_kv_shared *t;
	if ((ret = dp_kv_shared_open(&to, &t, err, sizeof(err))) < 0) {
		fprintf(stderr, "bench-shared-tier: %s\n", err);
		return 1;
	}

	/* the session: N tokens fed, one more in its history */
	int32_t *hist = malloc((N + 1) * sizeof(*hist));
	float *logits = malloc((size_t)V * sizeof(float));
	stream_tokens(1, 0, V, hist, (uint32_t)(N + 1));
	struct dp_kv_session *s;
	struct dp_v4_seq *seq;
	char sid[64];
	snprintf(sid, sizeof(sid), "bench-%d", (int)getpid());
	double t0 = dp_clock_ns() / 1e9;
	if ((ret = dp_kv_session_create(kv, sid, &s)) < 0 || (ret = dp_kv_session_acquire(kv, s, &seq)) < 0 ||
	    (ret = feed(m, seq, hist, N, logits)) < 0 ||
	    (ret = dp_kv_session_append(kv, s, hist, (uint32_t)(N + 1))) < 0 ||
	    (ret = dp_kv_commit(kv)) < 0) {
		fprintf(stderr, "bench-shared-tier: building the session: %s\n", strerror(-ret));
		return 1;
	}
	double prefill_s = dp_clock_ns() / 1e9 - t0;

	/* its state on the tier, as a turn's commit writes it */
	uint64_t pos;
	struct dp_v4_page_ref *refs;
	void *data;
	size_t n;
	if ((ret = dp_kv_session_state_copy(kv, s, &pos, &refs, &data, &n)) < 0) {
		fprintf(stderr, "bench-shared-tier: state copy: %s\n", strerror(-ret));
		return 1;
	}
	uint32_t per = dp_kv_shared_group_pages(DP_V4_PAGE_BYTES);
	uint32_t n_segs = (uint32_t)((n + per - 1) / per);
	char(*names)[256] = calloc(n_segs ? n_segs : 1, sizeof(*names));
	const char **np = calloc(n_segs ? n_segs : 1, sizeof(*np));
	struct dp_kv_shared_loc *locs = calloc(n ? n : 1, sizeof(*locs));
	struct dp_kv_shared_page *pg = calloc(per, sizeof(*pg));
	struct done d = { 0 };
	for (uint32_t k = 0; k < n_segs; k++) {
		dp_kv_shared_segment_name(sid, 1, k, names[k], sizeof(names[k]));
		np[k] = names[k];
		uint32_t cnt = 0;
		for (size_t i = (size_t)k * per; i < n && cnt < per; i++, cnt++) {
			pg[cnt].tag = dp_kv_shared_page_tag(refs[i].layer, refs[i].kind, refs[i].index);
			pg[cnt].buf = (char *)data + i * DP_V4_PAGE_BYTES;
			locs[i] = (struct dp_kv_shared_loc){ refs[i].layer, refs[i].kind, refs[i].index, k,
							     cnt };
		}
		if ((ret = dp_kv_shared_put(t, names[k], pg, cnt, DP_V4_PAGE_BYTES, on_done, &d)) < 0) {
			fprintf(stderr, "bench-shared-tier: put %s: %s\n", names[k], strerror(-ret));
			return 1;
		}
		d.left++;
	}
	t0 = dp_clock_ns() / 1e9;
	wait_tier(t, &d);
	double put_s = dp_clock_ns() / 1e9 - t0;
	if (d.err) {
		fprintf(stderr, "bench-shared-tier: writing the segments: %s\n", strerror(-d.err));
		return 1;
	}
	double bytes = (double)n * DP_V4_PAGE_BYTES;
	/* ... and on NVMe, parked there */
	if ((ret = dp_kv_session_persist(kv, s)) < 0) {
		fprintf(stderr, "bench-shared-tier: persist: %s\n", strerror(-ret));
		return 1;
	}
	dp_kv_session_release(kv, s);
	if ((ret = dp_kv_session_demote(kv, s, DP_KV_TIER_NVME)) < 0 ||
	    dp_kv_session_tier(s) != DP_KV_TIER_NVME) {
		fprintf(stderr, "bench-shared-tier: demote to NVMe: %s\n", strerror(-ret));
		return 1;
	}
	printf("bench-shared-tier: model %s, %llu tokens (prefill %.2f s); state %zu pages, %.1f MiB "
	       "in %u segments (written to RADOS in %.3f s, %.2f GB/s)\n",
	       mdir, (unsigned long long)N, prefill_s, n, bytes / (1 << 20), n_segs, put_s,
	       bytes / put_s / 1e9);
	printf("the cluster is memstore on loopback (scripts/ceph-test-cluster: 1 monitor, 3 memstore "
	       "OSDs, pool size 3) on this machine, %ld CPUs: not a network, not disks\n",
	       sysconf(_SC_NPROCESSORS_ONLN));

	double *ttft[2], *gbs[2];
	for (int k = 0; k < 2; k++) {
		ttft[k] = calloc((size_t)rounds, sizeof(double));
		gbs[k] = calloc((size_t)rounds, sizeof(double));
	}
	int32_t next[2] = { -1, -1 };
	bool same = true;
	static const char *const tier_name[2] = { "rados", "nvme" };
	for (int r = 0; r < rounds; r++) {
		for (int o = 0; o < 2; o++) {
			int k = (r + o) % 2; /* 0: RADOS, 1: NVMe; the order flips each round */
			/* the restore alone: begun, then completed with no compute
			 * (every layer waited for): its rate */
			uint64_t a = dp_clock_ns();
			ret = restore_begin(kv, s, t, k, pos, np, n_segs, locs, n, &seq);
			if (ret == 0)
				dp_kv_session_release(kv, s); /* completes it */
			uint64_t b = dp_clock_ns();
			if (ret == 0 && dp_kv_session_tier(s) != DP_KV_TIER_DEVICE)
				ret = -EBADMSG; /* it failed its checks */
			dp_kv_session_forget_state(kv, s);
			double rs = (b - a) / 1e9;
			/* the DualPath restore: the first token computed while
			 * later layers still arrive */
			a = dp_clock_ns();
			if (ret == 0)
				ret = restore_begin(kv, s, t, k, pos, np, n_segs, locs, n, &seq);
			if (ret == 0)
				ret = feed(m, seq, hist + N, 1, logits);
			b = dp_clock_ns();
			if (ret < 0) {
				fprintf(stderr, "bench-shared-tier: round %d from %s: %s\n", r,
					tier_name[k], strerror(-ret));
				return 1;
			}
			int32_t tok = argmax(logits, V);
			if (next[k] >= 0 && next[k] != tok)
				same = false;
			next[k] = tok;
			ttft[k][r] = (b - a) / 1e6;
			gbs[k][r] = rs > 0 ? bytes / rs / 1e9 : 0;
			printf("round %d %-5s: restore alone %.2f ms (%.2f GB/s); time to first token "
			       "%.2f ms, next token %d\n",
			       r, tier_name[k], rs * 1e3, gbs[k][r], ttft[k][r], tok);
			/* back to the NVMe snapshot: the same parked state next round */
			dp_kv_session_forget_state(kv, s);
		}
	}
	/* the baseline: no state, the whole history recomputed */
	uint64_t a = dp_clock_ns();
	if ((ret = dp_kv_session_acquire_fresh(kv, s, &seq)) < 0 ||
	    (ret = feed(m, seq, hist, N + 1, logits)) < 0) {
		fprintf(stderr, "bench-shared-tier: recompute: %s\n", strerror(-ret));
		return 1;
	}
	double recompute_ms = (dp_clock_ns() - a) / 1e6;
	int32_t tok = argmax(logits, V);
	same = same && next[0] == next[1] && next[0] == tok;
	dp_kv_session_forget_state(kv, s);
	printf("recompute from the history: time to first token %.1f ms, next token %d\n",
	       recompute_ms, tok);
	printf("next tokens identical from RADOS, NVMe and the recompute: %s\n", same ? "yes" : "NO");

	double tr = median(ttft[0], rounds), tn = median(ttft[1], rounds);
	double gr = median(gbs[0], rounds), gn = median(gbs[1], rounds);
	printf("medians over %d rounds: RADOS %.2f ms, %.2f GB/s; NVMe %.2f ms, %.2f GB/s\n", rounds,
	       tr, gr, tn, gn);
	printf("RESULT shared_tier_restore_gb_s ours=%.3f anchor=%.3f ratio=%.3f unit=GB/s "
	       "better=higher\n", gr, gn, gn > 0 ? gr / gn : 0);
	printf("RESULT shared_tier_ttft_ms ours=%.2f anchor=%.2f ratio=%.3f unit=ms better=lower\n", tr,
	       tn, tn > 0 ? tr / tn : 0);
	printf("RESULT shared_tier_ttft_vs_recompute_ms ours=%.2f anchor=%.2f ratio=%.4f unit=ms "
	       "better=lower\n", tr, recompute_ms, tr / recompute_ms);

	/* leave nothing behind */
	d = (struct done){ 0 };
	for (uint32_t k = 0; k < n_segs; k++)
		if (dp_kv_shared_delete(t, names[k], on_done, &d) == 0)
			d.left++;
	wait_tier(t, &d);
	dp_kv_session_drop(kv, s);
	dp_kv_close(kv);
	dp_kv_shared_close(t);
	dp_io_stop(io, DP_IO_STOP_DRAIN);
	dp_io_free(io);
	char cmd[PATH_MAX + 16];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	if (system(cmd) != 0)
		fprintf(stderr, "bench-shared-tier: could not remove %s\n", dir);
	free(hist);
	free(logits);
	free(refs);
	free(data);
	free(names);
	free(np);
	free(locs);
	free(pg);
	for (int k = 0; k < 2; k++) {
		free(ttft[k]);
		free(gbs[k]);
	}
	dp_v4_model_free(m);
	dp_gpu_free(g);
	return same ? 0 : 1;
}
