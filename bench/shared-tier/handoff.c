/* SPDX-License-Identifier: MIT */
/*
 * bench-handoff — the agentic workload on two hosts that hand sessions to
 * each other every K turns, beside the same workload on one host (no
 * moves), in the same run, turn by turn interleaved.
 *
 * Three real dualpathd processes share one RADOS cluster: A and B (the
 * 2-host arm) and C (the 1-host arm; it has the shared tier too, so both
 * arms pay the same per-turn manifest writes and only the moves differ).
 * The workload is an agentic trace (bench/agentic/trace.h: agentic-gen
 * writes it; each turn appends a tool result or user message and generates
 * a few tokens). Session s's turn t runs on C as session c-s, and on A or B
 * as session m-s: on A for turns [0, K), B for [K, 2K), A again... Before
 * each move the host that served the session hands it off (EvictSession
 * with release: parked, lease released) and the other host's Generate
 * takes it over at once, restoring its state from the shared tier layer by
 * layer. Per (turn, session) the order of the two arms flips, so drift in
 * the machine's load falls on both. Idle times in the trace are not waited
 * (closed loop): one client, one turn at a time.
 *
 * Measured: generated tokens/s of each arm (its turns' wall time, and for
 * the 2-host arm its hand-offs' round trips too), TTFT (median, p90) of
 * the moved turns beside the same turns on one host, and of the unmoved
 * ones; what a takeover adds to a turn's first token (moved TTFT minus the
 * same turn's on one host); the hand-off's round trip; the takeover
 * restores (the daemons' dualpath_shared_restore_*: the span from the
 * restore's begin to its last layer in, which overlaps the first step, so
 * it is near that step's time; host C's local restores likewise); every
 * turn's tokens must be the same in both arms (greedy).
 *
 *   bench-handoff --daemon BIN --model DIR --trace FILE --conf CEPH_CONF
 *                 --pool POOL [--every K] [--workdir DIR] [--verbose 1]
 *                 [--daemon-arg ARG]...
 *
 * Ends with RESULT lines (README "Benchmarks"): ours = the 2-host arm,
 * anchor = the 1-host arm.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bench/agentic/agentic.h"
#include "bench/bench-util.h"
#include "v4ctl/client.h"

#define MAX_ARGS 24

struct opts {
	const char *daemon, *model, *trace, *conf, *pool, *workdir;
	const char *extra[MAX_ARGS];
	int n_extra;
	uint32_t every;
	bool verbose;
};

/* One turn as the client saw it. */
struct rec {
	double ttft_ms, turn_ms;
	uint32_t generated;
	uint64_t digest;
	bool moved; /* the 2-host arm: its first turn on the host it moved to */
};

static void usage(void)
{
	fprintf(stderr, "usage: bench-handoff --daemon BIN --model DIR --trace FILE --conf CEPH_CONF "
			"--pool POOL [--every K] [--workdir DIR] [--verbose 1] [--daemon-arg ARG]...\n");
}

static uint64_t fnv1a(uint64_t h, uint32_t v)
{
	for (int i = 0; i < 4; i++) {
		h ^= (v >> (8 * i)) & 0xff;
		h *= 0x100000001b3ull;
	}
	return h;
}

/* One greedy turn: Generate on session over c; fills r. */
static int run_turn(struct dp_client *c, const char *session, uint32_t *ids, uint32_t n, uint32_t gen,
		    struct rec *r, char *err, size_t err_len)
{
	Dualpath__V1__Request req = DUALPATH__V1__REQUEST__INIT;
	Dualpath__V1__Generate g = DUALPATH__V1__GENERATE__INIT;
	Dualpath__V1__TokenIds tk = DUALPATH__V1__TOKEN_IDS__INIT;
	Dualpath__V1__Sampling sp = DUALPATH__V1__SAMPLING__INIT;
	tk.n_ids = n;
	tk.ids = ids;
	sp.ignore_eos = true;
	g.session_id = (char *)session;
	g.prompt_case = DUALPATH__V1__GENERATE__PROMPT_TOKENS;
	g.tokens = &tk;
	g.max_new_tokens = gen;
	g.sampling = &sp;
	req.body_case = DUALPATH__V1__REQUEST__BODY_GENERATE;
	req.generate = &g;
	uint64_t t0 = dp_clock_ns(), t_first = 0;
	int ret = dp_client_send(c, &req);
	if (ret < 0) {
		snprintf(err, err_len, "session %s: send: %s", session, strerror(-ret));
		return ret;
	}
	r->digest = 0xcbf29ce484222325ull;
	r->generated = 0;
	for (;;) {
		Dualpath__V1__Response *resp;
		if ((ret = dp_client_recv_id(c, req.request_id, 300000, &resp)) < 0) {
			snprintf(err, err_len, "session %s: no answer: %s", session, strerror(-ret));
			return ret;
		}
		if (resp->body_case == DUALPATH__V1__RESPONSE__BODY_ERROR) {
			snprintf(err, err_len, "session %s: %s: %s", session,
				 dp_client_code_name(resp->error->code), resp->error->message);
			dp_proto_response_free(resp);
			return -EREMOTEIO;
		}
		bool fin = false;
		if (resp->body_case == DUALPATH__V1__RESPONSE__BODY_TOKEN_CHUNK) {
			const Dualpath__V1__TokenChunk *tc = resp->token_chunk;
			if (tc->n_ids && !t_first)
				t_first = dp_clock_ns();
			for (size_t i = 0; i < tc->n_ids; i++)
				r->digest = fnv1a(r->digest, tc->ids[i]);
			r->generated += (uint32_t)tc->n_ids;
			fin = tc->finish != 0;
		}
		dp_proto_response_free(resp);
		if (fin)
			break;
	}
	uint64_t t1 = dp_clock_ns();
	r->ttft_ms = (double)((t_first ? t_first : t1) - t0) / 1e6;
	r->turn_ms = (double)(t1 - t0) / 1e6;
	return 0;
}

/* EvictSession with release; its round trip in *ret_ms. */
static int handoff(struct dp_client *c, const char *session, double *ret_ms, char *err, size_t err_len)
{
	Dualpath__V1__Request req = DUALPATH__V1__REQUEST__INIT;
	Dualpath__V1__EvictSession e = DUALPATH__V1__EVICT_SESSION__INIT;
	e.session_id = (char *)session;
	e.release = true;
	req.body_case = DUALPATH__V1__REQUEST__BODY_EVICT_SESSION;
	req.evict_session = &e;
	uint64_t t0 = dp_clock_ns();
	Dualpath__V1__Response *resp;
	int ret = dp_client_call(c, &req, &resp);
	if (ret < 0) {
		snprintf(err, err_len, "hand-off of %s: %s", session, strerror(-ret));
		return ret;
	}
	*ret_ms = (double)(dp_clock_ns() - t0) / 1e6;
	if (resp->body_case != DUALPATH__V1__RESPONSE__BODY_ACK) {
		const char *msg = "";
		Dualpath__V1__Code code = dp_client_last_error(c, &msg);
		snprintf(err, err_len, "hand-off of %s: %s: %s", session, dp_client_code_name(code), msg);
		ret = -EREMOTEIO;
	}
	dp_proto_response_free(resp);
	return ret;
}

/* A metric's value from a Stats reply; NAN when absent or unanswered. */
static double metric(struct dp_client *c, const char *name)
{
	Dualpath__V1__Request req = DUALPATH__V1__REQUEST__INIT;
	Dualpath__V1__StatsRequest sr = DUALPATH__V1__STATS_REQUEST__INIT;
	req.body_case = DUALPATH__V1__REQUEST__BODY_STATS;
	req.stats = &sr;
	Dualpath__V1__Response *resp;
	double v = NAN;
	if (dp_client_call(c, &req, &resp) < 0)
		return v;
	if (resp->body_case == DUALPATH__V1__RESPONSE__BODY_STATS)
		for (size_t i = 0; i < resp->stats->n_metrics; i++)
			if (!strcmp(resp->stats->metrics[i]->name, name))
				v = resp->stats->metrics[i]->value;
	dp_proto_response_free(resp);
	return v;
}

/* p-th percentile (0..100) of v[0..n), sorted here; NAN for none. */
static double pct(double *v, size_t n, double p)
{
	if (!n)
		return NAN;
	qsort(v, n, sizeof(*v), cmp_double);
	double k = p / 100.0 * (double)(n - 1);
	size_t i = (size_t)k;
	return i + 1 < n ? v[i] + (k - (double)i) * (v[i + 1] - v[i]) : v[i];
}

static double ratio(double a, double b)
{
	return b > 0 && !isnan(a) ? a / b : 0;
}

static int parse(int argc, char **argv, struct opts *o)
{
	*o = (struct opts){ .every = 3, .workdir = "/var/tmp" };
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
		if (!v) {
			fprintf(stderr, "bench-handoff: %s needs a value\n", a);
			return -EINVAL;
		}
		i++;
		if (!strcmp(a, "--daemon"))
			o->daemon = v;
		else if (!strcmp(a, "--model"))
			o->model = v;
		else if (!strcmp(a, "--trace"))
			o->trace = v;
		else if (!strcmp(a, "--conf"))
			o->conf = v;
		else if (!strcmp(a, "--pool"))
			o->pool = v;
		else if (!strcmp(a, "--workdir"))
			o->workdir = v;
		else if (!strcmp(a, "--verbose"))
			o->verbose = !strcmp(v, "1");
		else if (!strcmp(a, "--every")) {
			char *end;
			unsigned long k = strtoul(v, &end, 10);
			if (*end || k < 1 || k > 1000) {
				fprintf(stderr, "bench-handoff: --every %s: want turns per host, 1..1000\n", v);
				return -EINVAL;
			}
			o->every = (uint32_t)k;
		} else if (!strcmp(a, "--daemon-arg")) {
			if (o->n_extra >= MAX_ARGS) {
				fprintf(stderr, "bench-handoff: more than %d --daemon-arg\n", MAX_ARGS);
				return -E2BIG;
			}
			o->extra[o->n_extra++] = v;
		} else {
			fprintf(stderr, "bench-handoff: unknown option %s\n", a);
			return -EINVAL;
		}
	}
	if (!o->daemon || !o->model || !o->trace || !o->conf || !o->pool) {
		fprintf(stderr, "bench-handoff: --daemon, --model, --trace, --conf and --pool are needed\n");
		return -EINVAL;
	}
	return 0;
}

enum { HOST_A, HOST_B, HOST_C, N_HOSTS };
static const char *const host_name[N_HOSTS] = { "A", "B", "C" };

int main(int argc, char **argv)
{
	struct opts o;
	if (argc > 1 && !strcmp(argv[1], "--help")) {
		usage();
		return 0;
	}
	if (parse(argc, argv, &o) < 0) {
		usage();
		return 2;
	}
	char err[512] = "";
	struct ag_trace *tr = NULL;
	if (ag_trace_load(o.trace, &tr, err, sizeof(err)) < 0) {
		fprintf(stderr, "bench-handoff: %s\n", err);
		return 1;
	}
	uint32_t S = tr->n_sessions, T = 0;
	for (uint32_t s = 0; s < S; s++)
		T = tr->sessions[s].n_turns > T ? tr->sessions[s].n_turns : T;

	/* host ids and session ids unique per run: the pool outlives it */
	char tag[32];
	snprintf(tag, sizeof(tag), "%ld-%d", (long)time(NULL) % 100000000, (int)getpid());
	char hosts[N_HOSTS][64];
	struct ag_daemon d[N_HOSTS] = { 0 };
	struct dp_client *c[N_HOSTS] = { 0 };
	int status = 1;
	for (int h = 0; h < N_HOSTS; h++) {
		snprintf(hosts[h], sizeof(hosts[h]), "bh%s-%s", tag, host_name[h]);
		const char *args[MAX_ARGS + 20];
		int n = 0;
		const char *const base[] = { "--model", o.model, "--shared-tier", "rados", "--rados-conf",
					     o.conf, "--rados-pool", o.pool, "--host-id", hosts[h],
					     "--lease-ms", "10000", "--lease-idle-ms", "0" };
		for (size_t i = 0; i < sizeof(base) / sizeof(base[0]); i++)
			args[n++] = base[i];
		for (int i = 0; i < o.n_extra; i++)
			args[n++] = o.extra[i];
		args[n] = NULL;
		if (ag_daemon_start(&d[h], o.daemon, o.workdir, args, err, sizeof(err)) < 0 ||
		    dp_client_connect(d[h].sock, 300000, &c[h]) < 0 ||
		    dp_client_hello(c[h], "bench-handoff") < 0) {
			fprintf(stderr, "bench-handoff: host %s: %s\n", host_name[h],
				err[0] ? err : "cannot connect");
			goto out;
		}
	}
	printf("bench-handoff: %u sessions, up to %u turns, sessions move between A and B every %u "
	       "turns; C serves the same turns without moving; one client, turn by turn\n",
	       S, T, o.every);

	struct rec *two = calloc((size_t)S * T, sizeof(*two)), *one = calloc((size_t)S * T, sizeof(*one));
	double *handoff_ms = calloc((size_t)S * T + 1, sizeof(double));
	uint32_t *ids = NULL, ids_cap = 0;
	size_t n_handoffs = 0;
	if (!two || !one || !handoff_ms)
		goto out_free;
	for (uint32_t t = 0; t < T; t++) {
		for (uint32_t s = 0; s < S; s++) {
			const struct ag_session *se = &tr->sessions[s];
			if (t >= se->n_turns)
				continue;
			const struct ag_turn *tu = &se->turns[t];
			if (tu->append > ids_cap) {
				uint32_t *p = realloc(ids, tu->append * sizeof(*p));
				if (!p)
					goto out_free;
				ids = p;
				ids_cap = tu->append;
			}
			ag_turn_tokens(tr, s, t, ids, tu->append);
			char sid_one[48], sid_two[48];
			snprintf(sid_one, sizeof(sid_one), "c%s-%u", tag, s);
			snprintf(sid_two, sizeof(sid_two), "m%s-%u", tag, s);
			int host = (t / o.every) % 2 ? HOST_B : HOST_A;
			bool moves = t > 0 && t % o.every == 0;
			struct rec *r2 = &two[(size_t)s * T + t], *r1 = &one[(size_t)s * T + t];
			for (int k = 0; k < 2; k++) {
				bool arm_two = (k == 0) == ((s + t) % 2 == 0);
				if (!arm_two) {
					if (run_turn(c[HOST_C], sid_one, ids, tu->append, tu->gen, r1, err,
						     sizeof(err)) < 0)
						goto fail;
					continue;
				}
				if (moves && handoff(c[host == HOST_A ? HOST_B : HOST_A], sid_two,
						     &handoff_ms[n_handoffs++], err, sizeof(err)) < 0)
					goto fail;
				if (run_turn(c[host], sid_two, ids, tu->append, tu->gen, r2, err,
					     sizeof(err)) < 0)
					goto fail;
				r2->moved = moves;
			}
			if (o.verbose)
				printf("session %u turn %u: host %s%s TTFT %.1f ms (turn %.1f), 1 host %.1f "
				       "ms (turn %.1f)\n", s, t, host_name[host], moves ? " (moved)" : "",
				       r2->ttft_ms, r2->turn_ms, r1->ttft_ms, r1->turn_ms);
		}
	}

	/* ---- the report ---- */
	double gen1 = 0, gen2 = 0, wall1 = 0, wall2 = 0, ho_sum = 0;
	size_t n_moved = 0, n_still = 0, differ = 0, n_turns = 0;
	double *mv = calloc((size_t)S * T + 1, sizeof(double)), *mv1 = calloc((size_t)S * T + 1, sizeof(double));
	double *st = calloc((size_t)S * T + 1, sizeof(double)), *st1 = calloc((size_t)S * T + 1, sizeof(double));
	double *extra = calloc((size_t)S * T + 1, sizeof(double));
	if (!mv || !mv1 || !st || !st1 || !extra) {
		free(mv);
		free(mv1);
		free(st);
		free(st1);
		free(extra);
		goto out_free;
	}
	for (uint32_t s = 0; s < S; s++)
		for (uint32_t t = 0; t < tr->sessions[s].n_turns; t++) {
			const struct rec *r2 = &two[(size_t)s * T + t], *r1 = &one[(size_t)s * T + t];
			n_turns++;
			gen1 += r1->generated;
			gen2 += r2->generated;
			wall1 += r1->turn_ms;
			wall2 += r2->turn_ms;
			differ += r1->digest != r2->digest || r1->generated != r2->generated;
			if (t == 0)
				continue; /* a session's first turn: nothing to reuse or move */
			if (r2->moved) {
				extra[n_moved] = r2->ttft_ms - r1->ttft_ms;
				mv[n_moved] = r2->ttft_ms;
				mv1[n_moved++] = r1->ttft_ms;
			} else {
				st[n_still] = r2->ttft_ms;
				st1[n_still++] = r1->ttft_ms;
			}
		}
	for (size_t i = 0; i < n_handoffs; i++)
		ho_sum += handoff_ms[i];
	wall2 += ho_sum;
	double restores = 0, restore_s = 0, restore_b = 0, takeovers = 0, recomputes = 0;
	for (int h = HOST_A; h <= HOST_B; h++) {
		restores += metric(c[h], "dualpath_shared_restores_total");
		restore_s += metric(c[h], "dualpath_shared_restore_seconds_total");
		restore_b += metric(c[h], "dualpath_shared_restore_bytes_total");
		takeovers += metric(c[h], "dualpath_shared_takeovers_total");
		recomputes += metric(c[h], "dualpath_shared_recomputes_total");
	}
	double lrest = metric(c[HOST_C], "dualpath_kv_restores_total");
	double lrest_s = metric(c[HOST_C], "dualpath_kv_restore_seconds_total");
	double tok2 = gen2 / (wall2 / 1e3), tok1 = gen1 / (wall1 / 1e3);
	double m50 = pct(mv, n_moved, 50), m90 = pct(mv, n_moved, 90);
	double a50 = pct(mv1, n_moved, 50), a90 = pct(mv1, n_moved, 90);
	double s50 = pct(st, n_still, 50), s90 = pct(st, n_still, 90);
	double b50 = pct(st1, n_still, 50), b90 = pct(st1, n_still, 90);
	double ho50 = pct(handoff_ms, n_handoffs, 50), x50 = pct(extra, n_moved, 50);
	double rest_ms = restores > 0 ? restore_s * 1e3 / restores : NAN;
	double lrest_ms = lrest > 0 ? lrest_s * 1e3 / lrest : NAN;

	printf("\n%zu turns a arm, %zu moved (%zu hand-offs), %zu not moved (first turns left out)\n",
	       n_turns, n_moved, n_handoffs, n_still);
	printf("%-34s %12s %12s %8s\n", "", "2 hosts", "1 host", "ratio");
	printf("%-34s %12.1f %12.1f %8.3f\n", "generated tokens/s (turns+moves)", tok2, tok1,
	       ratio(tok2, tok1));
	printf("%-34s %12.1f %12.1f %8.3f\n", "TTFT moved turns p50 (ms)", m50, a50, ratio(m50, a50));
	printf("%-34s %12.1f %12.1f %8.3f\n", "TTFT moved turns p90 (ms)", m90, a90, ratio(m90, a90));
	printf("%-34s %12.1f %12.1f %8.3f\n", "TTFT unmoved turns p50 (ms)", s50, b50, ratio(s50, b50));
	printf("%-34s %12.1f %12.1f %8.3f\n", "TTFT unmoved turns p90 (ms)", s90, b90, ratio(s90, b90));
	printf("hand-off round trip (EvictSession release: park, lease released): median %.1f ms\n",
	       ho50);
	printf("takeover cost to the first token (moved turn's TTFT minus the same turn's on 1 host): "
	       "median %.1f ms\n", x50);
	printf("takeovers %.0f, restored from RADOS %.0f (%.2f MiB each; restore span, begin to last "
	       "layer in, overlapped with the first step: mean %.1f ms), recomputed %.0f; host C's "
	       "local restores %.0f (span mean %.1f ms)\n",
	       takeovers, restores, restores > 0 ? restore_b / restores / 1048576.0 : 0, rest_ms,
	       recomputes, lrest, lrest_ms);
	printf("turns whose tokens differ between the arms: %zu (must be 0)\n", differ);
	printf("RESULT handoff_tok_s ours=%.2f anchor=%.2f ratio=%.3f unit=tok/s better=higher\n", tok2,
	       tok1, ratio(tok2, tok1));
	printf("RESULT handoff_moved_ttft_p50_ms ours=%.2f anchor=%.2f ratio=%.3f unit=ms better=lower\n",
	       m50, a50, ratio(m50, a50));
	printf("RESULT handoff_moved_ttft_p90_ms ours=%.2f anchor=%.2f ratio=%.3f unit=ms better=lower\n",
	       m90, a90, ratio(m90, a90));
	printf("RESULT handoff_unmoved_ttft_p50_ms ours=%.2f anchor=%.2f ratio=%.3f unit=ms "
	       "better=lower\n", s50, b50, ratio(s50, b50));
	printf("RESULT handoff_takeover_restore_span_ms ours=%.2f anchor=%.2f ratio=%.3f unit=ms "
	       "better=lower\n", rest_ms, lrest_ms, ratio(rest_ms, lrest_ms));
	free(extra);
	free(mv);
	free(mv1);
	free(st);
	free(st1);
	status = differ || n_moved == 0 ? 1 : 0;
	goto out_free;
fail:
	fprintf(stderr, "bench-handoff: %s\n", err);
out_free:
	free(two);
	free(one);
	free(handoff_ms);
	free(ids);
out:
	for (int h = 0; h < N_HOSTS; h++) {
		dp_client_free(c[h]);
		if (status != 0 && d[h].pid > 0)
			fprintf(stderr, "bench-handoff: host %s's log: %s\n", host_name[h], d[h].log);
		ag_daemon_stop(&d[h]);
		if (status == 0)
			ag_daemon_cleanup(&d[h]);
	}
	ag_trace_free(tr);
	return status;
}
