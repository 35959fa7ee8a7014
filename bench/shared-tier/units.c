/* SPDX-License-Identifier: MIT */
/*
 * bench-shared-units — time to first token on host B for a long prompt
 * prefix another host (A) left as a prefix unit on the shared tier
 * (daemon/shared-units.c), beside the same prompt recomputed on B, in the
 * same run, rounds interleaved (the order flips every round).
 *
 * Two real dualpathd processes share the cluster (their own state
 * directories, host ids bench-a-<pid>, bench-b-<pid>). Each round: a fresh
 * prompt of --tokens ids (units are content-addressed and the pool outlives
 * a run) is served on A with cache_salt "s<round>" (A leaves a unit at its
 * end and publishes it); once B's index holds it, B gets the prompt plus
 * --new more ids with the same salt (from A's unit: ours) and with another
 * salt (no unit anywhere: recomputed, the anchor). "Once B's index holds it":
 * both indexes settled at start, A's counts its own units at once, so B
 * has caught up when its count reaches A's. TTFT is the daemon's own
 * (Usage.time_to_first_token_us). The next tokens of both are compared
 * (they may differ on a near tie: a recompute cuts the prompt into other
 * steps than A did).
 *
 *   bench-shared-units --dualpathd PATH --conf CEPH_CONF --pool POOL
 *                      [--model DIR] [--tokens N] [--new M] [--rounds R]
 *
 * Ends with RESULT lines (README "Benchmarks"): ours = from the tier's
 * unit, anchor = recomputed.
 */
#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bench/bench-util.h"
#include "v4ctl/client.h"

#define GEN 4

struct host {
	pid_t pid;
	char dir[64], sock[128], state[128], log[128], id[64];
};

static void usage(void)
{
	fprintf(stderr, "usage: bench-shared-units --dualpathd PATH --conf CEPH_CONF --pool POOL "
	                "[--model DIR] [--tokens N] [--new M] [--rounds R]\n");
}

static int host_start(struct host *h, const char *bin, const char *model, const char *conf,
                      const char *pool, const char *name)
{
	snprintf(h->dir, sizeof(h->dir), "/var/tmp/dp-bench-units-XXXXXX");
	if (!mkdtemp(h->dir))
		return -errno;
	snprintf(h->sock, sizeof(h->sock), "%s/sock", h->dir);
	snprintf(h->state, sizeof(h->state), "%s/state", h->dir);
	snprintf(h->log, sizeof(h->log), "%s/log", h->dir);
	snprintf(h->id, sizeof(h->id), "%s-%d", name, (int)getpid());
	mkdir(h->state, 0700);
	pid_t self = getpid();
	h->pid = fork();
	if (h->pid < 0)
		return -errno;
	if (h->pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (getppid() != self)
			_exit(127);
		const char *argv[] = {bin,         "--config",
		                      "/dev/null", "--socket",
		                      h->sock,     "--state-dir",
		                      h->state,    "--model",
		                      model,       "--log-file",
		                      h->log,      "--pin-threads",
		                      "false",     "--shared-tier",
		                      "rados",     "--rados-conf",
		                      conf,        "--rados-pool",
		                      pool,        "--host-id",
		                      h->id,       NULL};
		execv(bin, (char *const *)argv);
		_exit(127);
	}
	for (int i = 0; i < 60000; i++) { /* a loaded machine loads the model slowly */
		struct dp_client *c;
		if (dp_client_connect(h->sock, 1000, &c) == 0) {
			dp_client_free(c);
			return 0;
		}
		int st;
		if (waitpid(h->pid, &st, WNOHANG) == h->pid) {
			fprintf(stderr,
			        "bench-shared-units: dualpathd %s exited at start (log %s)\n",
			        h->id, h->log);
			h->pid = 0;
			return -ECHILD;
		}
		usleep(10000);
	}
	return -ETIMEDOUT;
}

static void host_stop(struct host *h)
{
	if (h->pid > 0) {
		int st;
		kill(h->pid, SIGTERM);
		waitpid(h->pid, &st, 0);
		h->pid = 0;
	}
	char cmd[128];
	snprintf(cmd, sizeof(cmd), "rm -rf %s", h->dir);
	(void)!system(cmd);
}

static struct dp_client *host_client(const struct host *h)
{
	struct dp_client *c;
	if (dp_client_connect(h->sock, 5000, &c) < 0)
		return NULL;
	if (dp_client_hello(c, "bench-shared-units") < 0) {
		dp_client_free(c);
		return NULL;
	}
	return c;
}

/* A greedy one-off: its first tokens into out[GEN], its TTFT (us) and its
 * cached tokens; 0 or -1. */
static int one_off(const struct host *h, const int32_t *p, uint32_t n, const char *salt,
                   uint32_t *out, double *ret_ttft_us, uint32_t *ret_cached)
{
	struct dp_client *c = host_client(h);
	if (!c)
		return -1;
	Dualpath__V1__Generate g = DUALPATH__V1__GENERATE__INIT;
	Dualpath__V1__TokenIds t = DUALPATH__V1__TOKEN_IDS__INIT;
	Dualpath__V1__Sampling s = DUALPATH__V1__SAMPLING__INIT;
	Dualpath__V1__Request r = DUALPATH__V1__REQUEST__INIT;
	t.n_ids = n;
	t.ids = (uint32_t *)p;
	s.ignore_eos = true;
	g.session_id = "";
	g.prompt_case = DUALPATH__V1__GENERATE__PROMPT_TOKENS;
	g.tokens = &t;
	g.max_new_tokens = GEN;
	g.sampling = &s;
	g.cache_salt.data = (uint8_t *)salt;
	g.cache_salt.len = strlen(salt);
	r.body_case = DUALPATH__V1__REQUEST__BODY_GENERATE;
	r.generate = &g;
	int ret = dp_client_send(c, &r) < 0 ? -1 : 1;
	size_t got = 0;
	while (ret == 1) {
		Dualpath__V1__Response *m;
		if (dp_client_recv_id(c, r.request_id, 600000, &m) < 0) {
			ret = -1;
			break;
		}
		if (m->body_case == DUALPATH__V1__RESPONSE__BODY_ERROR) {
			fprintf(stderr, "bench-shared-units: %s: %s\n", h->id, m->error->message);
			ret = -1;
		} else if (m->body_case == DUALPATH__V1__RESPONSE__BODY_TOKEN_CHUNK) {
			for (size_t i = 0; i < m->token_chunk->n_ids && got < GEN; i++)
				out[got++] = m->token_chunk->ids[i];
			if (m->token_chunk->finish) {
				ret = m->token_chunk->usage ? 0 : -1;
				if (m->token_chunk->usage) {
					*ret_ttft_us =
					    (double)m->token_chunk->usage->time_to_first_token_us;
					*ret_cached = m->token_chunk->usage->cached_tokens;
				}
			}
		}
		dp_proto_response_free(m);
	}
	dp_client_free(c);
	return ret;
}

static double metric(const struct host *h, const char *name)
{
	struct dp_client *c = host_client(h);
	if (!c)
		return -1;
	Dualpath__V1__StatsRequest st = DUALPATH__V1__STATS_REQUEST__INIT;
	Dualpath__V1__Request r = DUALPATH__V1__REQUEST__INIT;
	r.body_case = DUALPATH__V1__REQUEST__BODY_STATS;
	r.stats = &st;
	Dualpath__V1__Response *m = NULL;
	double v = -1;
	if (dp_client_call(c, &r, &m) == 0 && m->body_case == DUALPATH__V1__RESPONSE__BODY_STATS)
		for (size_t i = 0; i < m->stats->n_metrics; i++)
			if (!strcmp(m->stats->metrics[i]->name, name))
				v = m->stats->metrics[i]->value;
	dp_proto_response_free(m);
	dp_client_free(c);
	return v;
}

static double median(double *v, int n)
{
	qsort(v, (size_t)n, sizeof(*v), cmp_double);
	return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

int main(int argc, char **argv)
{
	const char *bin = NULL, *conf = NULL, *pool = NULL, *model = "builtin";
	uint32_t tokens = 4096, extra = 64;
	int rounds = 3;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
		if (!v) {
			usage();
			return 2;
		}
		if (!strcmp(a, "--dualpathd"))
			bin = v;
		else if (!strcmp(a, "--conf"))
			conf = v;
		else if (!strcmp(a, "--pool"))
			pool = v;
		else if (!strcmp(a, "--model"))
			model = v;
		else if (!strcmp(a, "--tokens"))
			tokens = (uint32_t)strtoul(v, NULL, 10);
		else if (!strcmp(a, "--new"))
			extra = (uint32_t)strtoul(v, NULL, 10);
		else if (!strcmp(a, "--rounds"))
			rounds = atoi(v);
		else {
			usage();
			return 2;
		}
		i++;
	}
	if (!bin || !conf || !pool || tokens < 16 || extra < 1 || rounds < 1 || rounds > 64) {
		usage();
		return 2;
	}
	struct host a = {0}, b = {0};
	if (host_start(&a, bin, model, conf, pool, "bench-a") < 0 ||
	    host_start(&b, bin, model, conf, pool, "bench-b") < 0) {
		fprintf(stderr, "bench-shared-units: cannot start dualpathd\n");
		host_stop(&a);
		host_stop(&b);
		return 1;
	}
	struct dp_client *c = host_client(&a);
	uint32_t vocab = c ? dp_client_server(c)->vocab_size : 0;
	dp_client_free(c);
	int32_t *p = malloc((size_t)(tokens + extra) * sizeof(*p));
	double ours[64], anchor[64];
	int same = 0, ok = 0, status = 0;
	uint64_t seed = (uint64_t)time(NULL) ^ (uint64_t)getpid() << 32;
	/* both indexes have taken in what the pool held from earlier runs */
	for (int i = 0; i < 200; i++) {
		double ia = metric(&a, "dualpath_shared_units_indexed");
		double ib = metric(&b, "dualpath_shared_units_indexed");
		usleep(700000);
		if (ia == metric(&a, "dualpath_shared_units_indexed") &&
		    ib == metric(&b, "dualpath_shared_units_indexed") && ia == ib)
			break;
	}
	for (int r = 0; r < rounds && p && vocab; r++) {
		stream_tokens(seed, (uint32_t)r, vocab, p, tokens + extra);
		char salt[32], other[32];
		snprintf(salt, sizeof(salt), "s%d", r);
		snprintf(other, sizeof(other), "o%d", r);
		uint32_t out_a[GEN], out_t[GEN], out_r[GEN], cached_t = 0, cached_r = 0, ca = 0;
		double t_a, t_t = 0, t_r = 0;
		double before = metric(&a, "dualpath_shared_units_published_total");
		if (one_off(&a, p, tokens, salt, out_a, &t_a, &ca) < 0) {
			status = 1;
			break;
		}
		/* the prompt's unit and the reply's, both published and indexed */
		for (int i = 0;
		     i < 600 && metric(&a, "dualpath_shared_units_published_total") < before + 2;
		     i++)
			usleep(100000);
		for (int i = 0; i < 600 && metric(&b, "dualpath_shared_units_indexed") <
		                               metric(&a, "dualpath_shared_units_indexed");
		     i++)
			usleep(100000);
		bool tier_first = r % 2 == 0;
		double rs = 0, st = 0, sp = 0; /* B's restore, stall and step seconds (tier run) */
		for (int k = 0; k < 2; k++) {
			bool tier = (k == 0) == tier_first;
			double rs0 = metric(&b, "dualpath_shared_restore_seconds_total");
			double st0 = metric(&b, "dualpath_stall_seconds_total");
			double sp0 = metric(&b, "dualpath_step_seconds_total");
			if (one_off(&b, p, tokens + extra, tier ? salt : other,
			            tier ? out_t : out_r, tier ? &t_t : &t_r,
			            tier ? &cached_t : &cached_r) < 0)
				status = 1;
			if (tier) {
				rs = metric(&b, "dualpath_shared_restore_seconds_total") - rs0;
				st = metric(&b, "dualpath_stall_seconds_total") - st0;
				sp = metric(&b, "dualpath_step_seconds_total") - sp0;
			}
		}
		if (status)
			break;
		printf("round %d: TTFT from A's unit %.1f ms (%u tokens reused; restore %.1f ms, "
		       "gates "
		       "waited %.1f ms, steps %.1f ms of the whole request), recomputed %.1f ms "
		       "(%u), same "
		       "first tokens: %s\n",
		       r, t_t / 1e3, cached_t, rs * 1e3, st * 1e3, sp * 1e3, t_r / 1e3, cached_r,
		       memcmp(out_t, out_r, sizeof(out_t)) ? "no" : "yes");
		if (cached_t < tokens - 1 || cached_r != 0) {
			fprintf(stderr,
			        "bench-shared-units: round %d: B reused %u tokens from the tier "
			        "(want >= %u) and %u without a unit (want 0)\n",
			        r, cached_t, tokens - 1, cached_r);
			status = 1;
			break;
		}
		ours[ok] = t_t / 1e3;
		anchor[ok] = t_r / 1e3;
		same += !memcmp(out_t, out_r, sizeof(out_t));
		ok++;
	}
	if (ok) {
		double found = metric(&b, "dualpath_shared_units_found_total");
		double mo = median(ours, ok), ma = median(anchor, ok);
		printf("B, %u-token prefix from A's unit on the tier + %u new tokens: TTFT median "
		       "%.1f ms; "
		       "recomputed: %.1f ms (%d rounds, %d with the same first %d tokens; B found "
		       "%.0f "
		       "units on the tier)\n",
		       tokens, extra, mo, ma, ok, same, GEN, found);
		double pub = metric(&a, "dualpath_shared_units_published_total");
		double pub_s = metric(&a, "dualpath_shared_units_publish_seconds_total");
		printf("A published %.0f units; its compute thread spent %.2f ms per unit queueing "
		       "them "
		       "(the state's copy; the writes are the units thread's)\n",
		       pub, pub > 0 ? pub_s * 1e3 / pub : 0);
		printf("RESULT shared_units_ttft_ms ours=%.2f anchor=%.2f ratio=%.4f unit=ms "
		       "better=lower\n",
		       mo, ma, ma > 0 ? mo / ma : 0);
	}
	free(p);
	host_stop(&b);
	host_stop(&a);
	return status || !ok;
}
