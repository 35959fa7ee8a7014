/* SPDX-License-Identifier: MIT */
/*
 * agentic-http — bench/agentic's trace-based HTTP mode: the same agentic
 * trace played twice in one run, each time on a fresh dualpathd with the
 * same budgets and --restore dualpath:
 *
 *   session    explicit sessions over the Unix socket (play.c: each turn
 *              sends only its new ids to its session)
 *   stateless  no sessions, over the HTTP API (http-play.c: each turn
 *              POSTs the whole history as ids to /v1/completions and sends
 *              back the ids it got with return_token_ids); reuse is the
 *              prefix units'
 *
 * and compares throughput (ids generated over the run's wall time, idle
 * gaps included in both) and cache hits (the sum of cached_tokens over all
 * turns). The goals: stateless throughput within 10% of the
 * session run's, cached tokens within 5%.
 *
 *	agentic-http --trace T --daemon BIN --model DIR [--device-bytes B]
 *	    [--dram-bytes B] [--clients N] [--rounds N] [--idle-scale F]
 *	    [--workdir DIR] [--daemon-arg ARG]... [--result-prefix P]
 *
 * --rounds N interleaves the two modes N times and reports each mode's
 * best round by throughput (a machine shared with other work) and the
 * median of its rounds' throughputs. RESULT
 * lines: P-session, P-stateless (tok_s, cached and prompt tokens, TTFT
 * p50/p99) and P-stateless-vs-session (the ratios).
 */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "http-agentic.h"
#include "http-client.h"

struct fig {
	bool ran;
	double wall_s, tok_s, ttft_p50, ttft_p99;
	uint64_t generated, cached, prompt, prompt_seen;
};

struct opts {
	const char *trace, *daemon, *model, *workdir, *prefix, *device_bytes, *dram_bytes;
	const char *extra[AG_MAX_EXTRA];
	int n_extra;
	unsigned clients, rounds;
	double idle_scale;
};

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

/* The figures of a played trace; stateless: prompt_seen is the whole
 * history each turn sent, prompt the new ids (the session's prompt). */
static void figures(const struct ag_trace *tr, struct ag_turn_rec **recs, uint64_t t0,
		    uint64_t t1, bool stateless, struct fig *f)
{
	size_t n = 0, k = 0;
	for (uint32_t s = 0; s < tr->n_sessions; s++)
		n += tr->sessions[s].n_turns;
	double *ttft = calloc(n ? n : 1, sizeof(*ttft));
	*f = (struct fig){ .ran = true };
	for (uint32_t s = 0; s < tr->n_sessions; s++) {
		uint64_t hist = 0;
		for (uint32_t t = 0; t < tr->sessions[s].n_turns; t++) {
			const struct ag_turn_rec *r = &recs[s][t];
			const struct ag_turn *tt = &tr->sessions[s].turns[t];
			f->generated += r->generated;
			f->cached += r->cached;
			f->prompt += tt->append;
			hist += tt->append;
			f->prompt_seen += stateless ? hist : tt->append;
			hist += tt->gen;
			if (ttft && r->t_first)
				ttft[k++] = (double)(r->t_first - r->t_send) / 1e6;
		}
	}
	f->wall_s = (double)(t1 - t0) / 1e9;
	f->tok_s = f->wall_s > 0 ? (double)f->generated / f->wall_s : 0;
	if (ttft && k) {
		qsort(ttft, k, sizeof(*ttft), cmp_double);
		f->ttft_p50 = ttft[k / 2];
		f->ttft_p99 = ttft[(size_t)(0.99 * (double)(k - 1))];
	}
	free(ttft);
}

/* Wait until the HTTP front accepts connections (it may start after the
 * socket front): up to 60 s. */
static int wait_http(const char *addr)
{
	for (int i = 0; i < 600; i++) {
		int fd = hc_connect(addr, false);
		if (fd >= 0) {
			close(fd);
			return 0;
		}
		usleep(100000);
	}
	return -ETIMEDOUT;
}

static int run_mode(const struct opts *o, const struct ag_trace *tr, bool stateless, struct fig *f)
{
	char err[512] = "", http[300] = "", addr[310] = "";
	const char *args[16 + AG_MAX_EXTRA];
	int n = 0, ret;
	args[n++] = "--model";
	args[n++] = o->model;
	args[n++] = "--log-level";
	args[n++] = "notice";
	args[n++] = "--restore";
	args[n++] = "dualpath";
	args[n++] = "--device-bytes";
	args[n++] = o->device_bytes;
	args[n++] = "--dram-bytes";
	args[n++] = o->dram_bytes;
	args[n++] = "--max-requests-per-client";
	args[n++] = "4096";
	if (stateless) {
		snprintf(http, sizeof(http), "%s/dp-agentic-http.%d.sock", o->workdir, (int)getpid());
		snprintf(addr, sizeof(addr), "unix:%s", http);
		unlink(http);
		args[n++] = "--http";
		args[n++] = addr;
	}
	for (int i = 0; i < o->n_extra; i++)
		args[n++] = o->extra[i];
	args[n] = NULL;

	struct ag_daemon d;
	if ((ret = ag_daemon_start(&d, o->daemon, o->workdir, args, err, sizeof(err))) < 0) {
		fprintf(stderr, "agentic-http: start %s: %s (log: %s)\n", o->daemon, err, d.log);
		ag_daemon_stop(&d);
		return ret;
	}
	if (stateless) {
		struct ag_http_play p = { .tr = tr, .addr = addr, .idle_scale = o->idle_scale };
		if ((ret = wait_http(addr)) < 0)
			snprintf(err, sizeof(err), "the HTTP front at %s never answered", addr);
		else if ((ret = ag_http_play_run(&p, err, sizeof(err))) == 0)
			figures(tr, p.out.recs, p.out.t_start, p.out.t_end, true, f);
		ag_http_play_fini(&p);
	} else {
		struct ag_play p = { .tr = tr, .sock = d.sock, .threads = o->clients,
				     .idle_scale = o->idle_scale };
		if ((ret = ag_play_run(&p, err, sizeof(err))) == 0)
			figures(tr, p.out.recs, p.out.t_start, p.out.t_end, false, f);
		ag_play_fini(&p);
	}
	ag_daemon_stop(&d);
	if (ret < 0)
		fprintf(stderr, "agentic-http: %s mode: %s (daemon log: %s)\n",
			stateless ? "stateless" : "session", err, d.log);
	else
		ag_daemon_cleanup(&d);
	if (http[0])
		unlink(http);
	return ret;
}

static void usage(FILE *to)
{
	fprintf(to, "usage: agentic-http --trace T --daemon BIN --model DIR [--device-bytes B]\n"
		    "    [--dram-bytes B] [--clients N] [--rounds N] [--idle-scale F] [--workdir DIR]\n"
		    "    [--daemon-arg ARG]... [--result-prefix P]\n");
}

int main(int argc, char **argv)
{
	struct opts o = { .prefix = "agentic-http", .device_bytes = "4M", .dram_bytes = "2M",
			  .clients = 4, .rounds = 1, .idle_scale = 1.0 };
	static const struct option lo[] = {
		{ "trace", required_argument, NULL, 't' },
		{ "daemon", required_argument, NULL, 'd' },
		{ "model", required_argument, NULL, 'm' },
		{ "device-bytes", required_argument, NULL, 'D' },
		{ "dram-bytes", required_argument, NULL, 'R' },
		{ "clients", required_argument, NULL, 'c' },
		{ "rounds", required_argument, NULL, 'r' },
		{ "idle-scale", required_argument, NULL, 'i' },
		{ "workdir", required_argument, NULL, 'w' },
		{ "daemon-arg", required_argument, NULL, 'a' },
		{ "result-prefix", required_argument, NULL, 'p' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	int c;
	char *end;
	while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
		switch (c) {
		case 't': o.trace = optarg; break;
		case 'd': o.daemon = optarg; break;
		case 'm': o.model = optarg; break;
		case 'D': o.device_bytes = optarg; break;
		case 'R': o.dram_bytes = optarg; break;
		case 'w': o.workdir = optarg; break;
		case 'p': o.prefix = optarg; break;
		case 'c':
		case 'r': {
			unsigned long v = strtoul(optarg, &end, 10);
			if (*end || !v || v > 1024) {
				fprintf(stderr, "agentic-http: --%s must be 1..1024, not '%s'\n",
					c == 'c' ? "clients" : "rounds", optarg);
				return 2;
			}
			*(c == 'c' ? &o.clients : &o.rounds) = (unsigned)v;
			break;
		}
		case 'i':
			o.idle_scale = strtod(optarg, &end);
			if (*end || !(o.idle_scale >= 0) || !isfinite(o.idle_scale)) {
				fprintf(stderr, "agentic-http: --idle-scale must be >= 0, not '%s'\n",
					optarg);
				return 2;
			}
			break;
		case 'a':
			if (o.n_extra == AG_MAX_EXTRA) {
				fprintf(stderr, "agentic-http: more than %d --daemon-arg\n",
					AG_MAX_EXTRA);
				return 2;
			}
			o.extra[o.n_extra++] = optarg;
			break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (!o.trace || !o.daemon || !o.model) {
		usage(stderr);
		return 2;
	}
	if (!o.workdir)
		o.workdir = getenv("TMPDIR") ? getenv("TMPDIR") : "/var/tmp";
	struct ag_trace *tr;
	char err[256];
	if (ag_trace_load(o.trace, &tr, err, sizeof(err)) < 0) {
		fprintf(stderr, "agentic-http: %s: %s\n", o.trace, err);
		return 1;
	}
	struct fig best[2] = { 0 };
	double *tok_s[2] = { calloc(o.rounds, sizeof(double)), calloc(o.rounds, sizeof(double)) };
	if (!tok_s[0] || !tok_s[1]) {
		fprintf(stderr, "agentic-http: out of memory\n");
		return 1;
	}
	static const char *const name[2] = { "session", "stateless" };
	int status = 0;
	for (unsigned r = 0; r < o.rounds && !status; r++)
		for (int m = 0; m < 2; m++) {
			struct fig f;
			if (run_mode(&o, tr, m == 1, &f) < 0) {
				status = 1;
				break;
			}
			printf("  round %u %-9s wall %.2f s  %.1f tok/s  cached %llu tokens (%llu new "
			       "prompt tokens, %llu sent)  TTFT p50 %.0f ms\n",
			       r + 1, name[m], f.wall_s, f.tok_s, (unsigned long long)f.cached,
			       (unsigned long long)f.prompt, (unsigned long long)f.prompt_seen,
			       f.ttft_p50);
			fflush(stdout);
			tok_s[m][r] = f.tok_s;
			if (!best[m].ran || f.tok_s > best[m].tok_s)
				best[m] = f;
		}
	ag_trace_free(tr);
	if (status) {
		free(tok_s[0]);
		free(tok_s[1]);
		return status;
	}
	double med[2];
	for (int m = 0; m < 2; m++) {
		qsort(tok_s[m], o.rounds, sizeof(double), cmp_double);
		med[m] = tok_s[m][o.rounds / 2];
		printf("RESULT %s-%s tok_s=%.2f tok_s_median=%.2f generated=%llu wall_s=%.2f "
		       "cached_tokens=%llu prompt_tokens_sent=%llu ttft_p50_ms=%.1f ttft_p99_ms=%.1f\n",
		       o.prefix, name[m], best[m].tok_s, med[m],
		       (unsigned long long)best[m].generated, best[m].wall_s,
		       (unsigned long long)best[m].cached, (unsigned long long)best[m].prompt_seen,
		       best[m].ttft_p50, best[m].ttft_p99);
		free(tok_s[m]);
	}
	double tr_ratio = best[0].tok_s > 0 ? best[1].tok_s / best[0].tok_s : 0;
	double c_ratio = best[0].cached ? (double)best[1].cached / (double)best[0].cached : 0;
	printf("RESULT %s-stateless-vs-session throughput_ratio=%.3f median_throughput_ratio=%.3f "
	       "cached_ratio=%.3f (goals: >= 0.90, >= 0.95)\n",
	       o.prefix, tr_ratio, med[0] > 0 ? med[1] / med[0] : 0, c_ratio);
	return 0;
}
