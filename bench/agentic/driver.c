/* SPDX-License-Identifier: MIT */
/*
 * agentic-driver — play an agentic trace (agentic-gen) against dualpathd in
 * the three ways a parked session's state can come back, same trace, same
 * run, a fresh daemon each:
 *
 *   recompute  --restore recompute: the state is dropped, the whole history
 *              replayed (no reuse);
 *   full       --restore full: load-then-compute, the whole state read
 *              before the turn's compute starts (the compute thread waits);
 *   dualpath   --restore dualpath: restored layer by layer while the
 *              compute already runs (the forward waits per layer, if at all);
 *
 * and once more with no parking at all (no device budget, no evictions):
 * "resident", the compute-only time of the same trace, for the ideal bound.
 * On request (--modes ...,replay) a fifth: "replay", no reuse measured from
 * the client side: no sessions, each turn a one-off Generate carrying the
 * session's whole history (the daemon's --restore recompute only drops a
 * state parked in DRAM: one parked on NVMe keeps its snapshot and comes
 * back from it, so that mode reuses most of the context; the driver says
 * so when it sees it).
 *
 *	agentic-driver --trace FILE --daemon BUILD/daemon/dualpathd --model DIR
 *	               [--modes recompute,full,dualpath] [--no-ideal]
 *	               [--clients N] [--idle-scale F] [--device-bytes B]
 *	               [--dram-bytes B] [--evict] [--threads N] [--io-depth N]
 *	               [--workdir DIR] [--trace-out FILE] [--v4ctl PATH]
 *	               [--daemon-arg ARG]... [--keep] [--events-dir DIR] [--rounds N]
 *	               [--warmup-turns N] [--result-prefix NAME]
 *	               [--throttle-read auto[:F]|BYTES]
 *
 * Parking: each mode's daemon gets --device-bytes and --dram-bytes (default
 * 4M and 4M: on the embedded model a session of a few thousand tokens holds
 * 1-3 MiB of state, so a few sessions stay on the device and a few in DRAM,
 * the rest are demoted to the NVMe tier by the watermarks as other sessions
 * run). With --evict the driver also sends EvictSession after
 * every turn, so every returning turn comes from NVMe.
 *
 * Each daemon runs in a fresh directory under --workdir (default $TMPDIR,
 * else /var/tmp: a disk rather than a tmpfs /tmp, so the NVMe tier's slot
 * file is on a disk and O_DIRECT holds): socket, state directory, log. It
 * is removed after a good run (--keep keeps it) and kept after a failure.
 *
 * Measured, per mode: generated tokens / wall time (first Generate to last
 * final chunk); TTFT (Generate written -> first TokenChunk with ids) and
 * inter-token latency (gaps between such chunks), p50 and p99 over every
 * turn; where each turn's state was when it was sent (ListSessions
 * pipelined before each Generate); the reuse the daemon reported
 * (Usage.cached_tokens); and from its Stats: stall fraction =
 * dualpath_stall_seconds_total / dualpath_step_seconds_total, restores,
 * bytes read from the NVMe tier. The daemon's trace events are polled all
 * along (TraceRequest; it keeps the last 4096) to add up what Stats does
 * not: the time load-then-compute's synchronous loads held the compute
 * thread outside any step, and the compute thread's time between its steps
 * (and loads): journal commits, demotion writeback, admission, and idle
 * time when no turn was pending.
 *
 * Busy time = time the compute thread spent on the turns: its forward
 * steps (dualpath_step_seconds_total, stalls included) plus, for full,
 * those synchronous loads, and for dualpath, its holds
 * (dualpath_restore_hold_seconds_total: no step ran while a session that
 * returned alone was still reading and would have stalled one). The ideal bound = max(compute-only, I/O-only):
 * compute-only = the resident run's step time; I/O-only = the time to read
 * alone, at the io engine's queue depth (--io-depth, default 64 as the
 * daemon's), the NVMe slots the dualpath run read (its
 * dualpath_kv_pages_read_total), each as a 4 KiB header and a 64 KiB page
 * like a restore, O_DIRECT, from that run's own slot file, after its daemon
 * stopped (ioprobe.c). agentic-dualpath-vs-ideal compares busy times.
 *
 * --warmup-turns N plays the first N turns of every session first and
 * leaves them out of every figure: the clients wait until all are done,
 * the driver snapshots the daemon's Stats and trace position, and the
 * figures cover the turns after (the stats as differences). For traces
 * whose first turn builds a long context at once.
 *
 * --rounds N runs N rounds; a round runs every mode back to back on the
 * same trace (same sessions, same tokens, greedy): resident first, then the
 * others, their order reversed every other round. Each mode's run is
 * measured for disturbance three ways (disturb.c): cpu wait, the share of
 * its runnable time the daemon's threads spent waiting for a CPU over the
 * measured turns (/proc/PID/task/TID/schedstat: the scheduler's own
 * account); the CPUs other processes kept busy meanwhile (the machine's
 * CPU time from /proc/stat less this driver's and its children's, over the
 * run's wall time; steal shown apart: on a saturated machine this stays
 * near nproc whatever the daemon gets, so it tells little); and a fixed
 * probe of arithmetic on every CPU, timed just before (and once after the
 * round). The report takes the round whose most disturbed mode waited least
 * (ties: the faster probe); every figure, the ideal bound included, comes
 * from that one round, and a table gives every round's ratios and their
 * spread. RESULT lines say which round and how disturbed (round=K/N
 * cpu_wait=W others_cpus=X probe_slowdown=Y: its slowest probe over the
 * fastest seen in the run).
 *
 * --throttle-read RATE makes the disk slower, stated: every daemon of a
 * restore mode (full, dualpath, recompute, replay) gets --io-read-rate RATE,
 * its io engine's read rate (io/io.h "Read rate": a token bucket paces
 * every read it starts, all channels together), and the I/O probe paces
 * its reads with the same bucket at the same rate. "auto" sets it in each
 * round, after the resident run, to the rate at which the NVMe bytes the
 * restores will read take as long as that run's compute (the previous
 * round's dualpath reads; in the first round, the sessions' state sizes
 * from ListSessions, plus a 4 KiB header a 64 KiB page): the I/O-only and
 * compute-only halves of the ideal bound then come out alike, and the
 * report shows their ratio as measured. "auto:F" aims at I/O-only = F x
 * compute-only instead (F > 1: an io-bound run). Why the daemon paces: this
 * used to be the kernel's cgroup block throttle (blkio / io.max), which
 * holds the rate over its time slice (100 ms on this VM's disk), not per
 * read: a restore of a few MiB after some compute found the slice's budget
 * unspent and read at the disk's own speed (measured: full's loads at
 * 0.9-1.0 GB/s under a 700 MB/s throttle, the probe, which read without
 * pause, at 0.71), so the scenario was balanced on average only; and it
 * needed root. A disk that is really slower paces every read, which the
 * engine's bucket does, as any user. Reads outside the io engine (the
 * model's weights, the slot file's header at start) are not paced.
 *
 * Generated tokens are compared with the resident run's, turn by turn
 * (greedy decoding: a restored state should give the same tokens; batch
 * composition and prefill chunking can still move float rounding).
 *
 * The dualpath run's recent steps go to --trace-out (default
 * WORKDIR/agentic-dualpath.trace.json) as a Chrome trace (v4ctl trace
 * --out: open in https://ui.perfetto.dev; with rounds, the kept round's). --events-dir DIR writes
 *every event polled during each mode's kept run, the whole run, as DIR/agentic-MODE.events.json in
 *the same format.
 *
 * Ends with RESULT lines (see README "Benchmarks"), named
 * NAME-dualpath-vs-load-then-compute, NAME-dualpath-vs-recompute,
 * NAME-dualpath-vs-ideal, NAME-stall-fraction (NAME: --result-prefix,
 * default agentic), and NAME-dualpath-vs-replay when replay ran.
 */
#include <errno.h>
#include <getopt.h>
#include <grp.h>
#include <libgen.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "agentic.h"

extern char **environ;

/* each mode's --restore */
static const char *const mode_restore[AG_MODE_MAX] = {"dualpath", "recompute", "full", "dualpath",
                                                      "dualpath"};

/* v4ctl trace --out FILE against the running daemon. */
static int chrome_trace(const struct ag_opts *o, const char *sock, const char *out, char *err,
                        size_t err_len)
{
	const char *argv[] = {o->v4ctl, "--socket", sock, "trace", "--out", out, NULL};
	pid_t pid;
	int r = posix_spawn(&pid, o->v4ctl, NULL, NULL, (char *const *)argv, environ);
	if (r) {
		snprintf(err, err_len, "cannot run %s: %s", o->v4ctl, strerror(r));
		return -r;
	}
	int status;
	if (waitpid(pid, &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status)) {
		snprintf(err, err_len, "%s trace --out %s failed", o->v4ctl, out);
		return -EIO;
	}
	return 0;
}

struct warm_ctx {
	const char *sock;
	pid_t pid;
	struct ag_result *res;
};

/* The daemon is idle between the warm-up and the measured turns. */
static void at_warm(void *arg)
{
	struct warm_ctx *w = arg;
	int r = ag_daemon_stats(w->sock, &w->res->st0, w->res->warm_err, sizeof(w->res->warm_err));
	if (r == 0)
		r = ag_daemon_trace_mark(w->sock, &w->res->mark_us, w->res->warm_err,
		                         sizeof(w->res->warm_err));
	w->res->warm_ok = r == 0;
	w->res->cpu0_s = ag_proc_cpu_s(w->pid);
	if (ag_proc_sched(w->pid, &w->res->run0_s, &w->res->wait0_s) < 0)
		w->res->run0_s = NAN;
}

_Static_assert(sizeof(struct ag_stats) % sizeof(double) == 0, "struct ag_stats: doubles only");

/* a -= b, counter by counter (the gauge direct_io stays) */
static void stats_sub(struct ag_stats *a, const struct ag_stats *b)
{
	double keep = a->direct_io;
	double *x = (double *)a;
	const double *y = (const double *)b;
	for (size_t i = 0; i < sizeof(*a) / sizeof(double); i++)
		x[i] -= y[i];
	a->direct_io = keep;
}

static const char *my_group(void)
{
	struct group *g = getgrgid(getegid());
	return g ? g->gr_name : NULL;
}

/* read_bps: the daemon's --io-read-rate (0: none) */
static int run_mode(const struct ag_opts *o, const struct ag_trace *tr, enum ag_mode m,
                    unsigned round, uint64_t read_bps, struct ag_result *res)
{
	char err[512] = "", rate[24];
	const char *args[20 + 2 * AG_MAX_EXTRA];
	int n = 0;
	args[n++] = "--model";
	args[n++] = o->model;
	args[n++] = "--log-level";
	args[n++] = "notice";
	args[n++] = "--restore";
	args[n++] = mode_restore[m];
	args[n++] = "--device-bytes";
	args[n++] = m == AG_MODE_RESIDENT ? "0" : o->device_bytes;
	args[n++] = "--dram-bytes";
	args[n++] = o->dram_bytes;
	args[n++] = "--max-requests-per-client";
	args[n++] = "4096";
	const char *grp = geteuid() ? my_group() : NULL;
	if (grp) { /* EvictSession and Trace are admin requests */
		args[n++] = "--admin-group";
		args[n++] = grp;
	}
	if (o->threads) {
		args[n++] = "--threads";
		args[n++] = o->threads;
	}
	res->read_bps = (double)read_bps;
	if (read_bps) {
		snprintf(rate, sizeof(rate), "%llu", (unsigned long long)read_bps);
		args[n++] = "--io-read-rate";
		args[n++] = rate;
	}
	for (int i = 0; i < o->n_extra; i++)
		args[n++] = o->extra[i];
	args[n] = NULL;

	struct ag_daemon d;
	struct ag_monitor mon = {0};
	struct ag_play p = {.tr = tr,
	                    .threads = o->clients,
	                    .idle_scale = o->idle_scale,
	                    .evict = o->evict && m != AG_MODE_RESIDENT && m != AG_MODE_REPLAY,
	                    .replay = m == AG_MODE_REPLAY,
	                    .warmup_turns = o->warmup};
	struct warm_ctx wc = {.res = res};
	int ret = ag_daemon_start(&d, o->daemon, o->workdir, args, err, sizeof(err));
	if (ret < 0)
		goto out;
	fprintf(stderr, "agentic-driver: %-9s daemon %d in %s ...\n", ag_mode_name[m], (int)d.pid,
	        d.dir);
	p.sock = d.sock;
	wc.sock = d.sock;
	wc.pid = d.pid;
	res->cpu0_s = ag_proc_cpu_s(d.pid); /* the warm-up's end replaces it */
	if (ag_proc_sched(d.pid, &res->run0_s, &res->wait0_s) < 0)
		res->run0_s = NAN;
	p.at_warm = at_warm;
	p.warm_ctx = &wc;
	mon.sock = d.sock;
	mon.interval_ms = 500;
	if ((ret = ag_monitor_start(&mon)) < 0) {
		snprintf(err, sizeof(err), "cannot start the trace poller: %s", strerror(-ret));
		goto out;
	}
	ret = ag_play_run(&p, err, sizeof(err));
	ag_monitor_stop(&mon);
	if (ret < 0)
		goto out;
	if (mon.err < 0)
		fprintf(stderr, "agentic-driver: %s: %s (trace figures incomplete)\n",
		        ag_mode_name[m], mon.what);
	if ((ret = ag_daemon_stats(d.sock, &res->st, err, sizeof(err))) < 0)
		goto out;
	res->cpu_s = ag_proc_cpu_s(d.pid) - res->cpu0_s;
	double run_s, wait_s;
	res->cpu_wait = NAN;
	if (!isnan(res->run0_s) && ag_proc_sched(d.pid, &run_s, &wait_s) == 0 &&
	    run_s + wait_s > res->run0_s + res->wait0_s)
		res->cpu_wait =
		    (wait_s - res->wait0_s) / (run_s + wait_s - res->run0_s - res->wait0_s);
	if (o->warmup) {
		if (!res->warm_ok) {
			snprintf(err, sizeof(err), "snapshot after the warm-up: %s", res->warm_err);
			ret = -EIO;
			goto out;
		}
		stats_sub(&res->st, &res->st0);
	}
	ag_analyse_play(res, &p, tr);
	ag_analyse_events(res, m, mon.ev, mon.n);
	res->trace_gaps = mon.gaps;
	res->ev = mon.ev; /* kept for --events-dir, if this round is kept */
	res->n_ev = mon.n;
	mon.ev = NULL;
	/* a hold (no step while a lone restore comes in) is the compute
	 * thread waiting for restored state as much as a stall or a load */
	res->busy_s = res->st.step_s + res->load_s + res->st.hold_s;
	if (m == AG_MODE_DUALPATH && o->trace_out && o->v4ctl) {
		char terr[2 * PATH_MAX + 64] = "";
		snprintf(res->trace_tmp, sizeof(res->trace_tmp), "%s.round%u", o->trace_out, round);
		if (chrome_trace(o, d.sock, res->trace_tmp, terr, sizeof(terr)) < 0) {
			fprintf(stderr, "agentic-driver: %s\n", terr);
			res->trace_tmp[0] = '\0';
		}
	}
	ag_daemon_stop(&d);
	if (m == AG_MODE_DUALPATH && res->st.pages_read > 0) {
		char path[400];
		snprintf(path, sizeof(path), "%s/slots", d.state);
		int r = ag_io_probe(path, (uint64_t)res->st.pages_read, o->io_depth, read_bps,
		                    &res->io_s, &res->io_bytes, &res->io_direct, res->io_err,
		                    sizeof(res->io_err));
		if (r == 0)
			res->io_gbps = (double)res->io_bytes / res->io_s / 1e9;
	}
	res->ran = true;
	snprintf(res->dir, sizeof(res->dir), "%s", d.dir);
	ret = 0;
out:
	if (ret < 0)
		fprintf(stderr, "agentic-driver: %s: %s%s%s\n", ag_mode_name[m], err,
		        d.log[0] ? "; daemon log: " : "", d.log[0] ? d.log : "");
	ag_monitor_fini(&mon);
	ag_play_fini(&p);
	ag_daemon_stop(&d);
	if (!o->keep && ret == 0)
		ag_daemon_cleanup(&d);
	return ret;
}

/* What a result owns; a dualpath round's trace file that is not kept. */
static void result_free(struct ag_result *r)
{
	free(r->digests);
	free(r->ev);
	r->digests = NULL;
	r->ev = NULL;
	if (r->trace_tmp[0])
		unlink(r->trace_tmp);
	r->trace_tmp[0] = '\0';
}

/* ---- main ------------------------------------------------------------------ */

static const char usage[] =
    "usage: agentic-driver --trace FILE --daemon DUALPATHD --model DIR\n"
    "                      [--modes recompute,full,dualpath] [--no-ideal] [--clients N]\n"
    "                      [--idle-scale F] [--device-bytes B] [--dram-bytes B] [--evict]\n"
    "                      [--threads N] [--io-depth N] [--workdir DIR] [--trace-out FILE]\n"
    "                      [--v4ctl PATH] [--daemon-arg ARG]... [--keep]\n"
    "                      [--events-dir DIR] [--rounds N] [--warmup-turns N]\n"
    "                      [--result-prefix NAME] [--throttle-read auto[:F]|BYTES]\n"
    "See the header of bench/agentic/driver.c.\n";

static int parse_modes(struct ag_opts *o, const char *list)
{
	char buf[128];
	snprintf(buf, sizeof(buf), "%s", list);
	for (int m = AG_MODE_RECOMPUTE; m < AG_MODE_MAX; m++)
		o->run[m] = false;
	for (char *save, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
		int m = AG_MODE_RECOMPUTE;
		for (; m < AG_MODE_MAX; m++)
			if (!strcmp(t, ag_mode_name[m]))
				break;
		if (!strcmp(t, "load-then-compute"))
			m = AG_MODE_FULL;
		if (m == AG_MODE_MAX) {
			fprintf(stderr,
			        "agentic-driver: --modes: recompute, full, dualpath, replay; not "
			        "'%s'\n",
			        t);
			return -EINVAL;
		}
		o->run[m] = true;
	}
	return 0;
}

/* --throttle-read auto[:F] | BYTES[K|M|G] (a second) */
static int parse_rate(struct ag_opts *o, const char *v)
{
	char *end;
	o->throttle = v;
	o->throttle_bps = 0;
	o->throttle_io_ratio = 1.0;
	if (!strcmp(v, "auto"))
		return 0;
	if (!strncmp(v, "auto:", 5)) {
		o->throttle_io_ratio = strtod(v + 5, &end);
		if (end == v + 5 || *end || !(o->throttle_io_ratio >= 0.05) ||
		    o->throttle_io_ratio > 20) {
			fprintf(stderr,
			        "agentic-driver: --throttle-read auto:F: F, the I/O-only time over "
			        "the compute-only time, 0.05..20, not '%s'\n",
			        v + 5);
			return -EINVAL;
		}
		return 0;
	}
	double x = strtod(v, &end);
	double k = *end == 'K' ? 1024 : *end == 'M' ? 1048576 : *end == 'G' ? 1073741824 : 1;
	if (k > 1)
		end++;
	/* the range dualpathd's --io-read-rate takes */
	if (end == v || *end || !(x * k >= 1048576) || x * k > 1099511627776.0) {
		fprintf(stderr,
		        "agentic-driver: --throttle-read: 'auto' or a read rate in bytes a second, "
		        "1M..1024G (K, M, G suffixes: powers of 1024), not '%s'\n",
		        v);
		return -EINVAL;
	}
	o->throttle_bps = (uint64_t)(x * k);
	return 0;
}

int main(int argc, char **argv)
{
	static const struct option lo[] = {
	    {"trace", required_argument, NULL, 't'},
	    {"daemon", required_argument, NULL, 'd'},
	    {"model", required_argument, NULL, 'm'},
	    {"modes", required_argument, NULL, 'M'},
	    {"no-ideal", no_argument, NULL, 'N'},
	    {"clients", required_argument, NULL, 'c'},
	    {"idle-scale", required_argument, NULL, 'i'},
	    {"device-bytes", required_argument, NULL, 'D'},
	    {"dram-bytes", required_argument, NULL, 'R'},
	    {"evict", no_argument, NULL, 'e'},
	    {"threads", required_argument, NULL, 'T'},
	    {"io-depth", required_argument, NULL, 'q'},
	    {"workdir", required_argument, NULL, 'w'},
	    {"trace-out", required_argument, NULL, 'o'},
	    {"v4ctl", required_argument, NULL, 'v'},
	    {"daemon-arg", required_argument, NULL, 'a'},
	    {"keep", no_argument, NULL, 'k'},
	    {"rounds", required_argument, NULL, 'r'},
	    {"warmup-turns", required_argument, NULL, 'W'},
	    {"result-prefix", required_argument, NULL, 'P'},
	    {"events-dir", required_argument, NULL, 'E'},
	    {"throttle-read", required_argument, NULL, 'L'},
	    {"help", no_argument, NULL, 'h'},
	    {0},
	};
	struct ag_opts o = {.prefix = "agentic",
	                    .device_bytes = "4M",
	                    .dram_bytes = "4M",
	                    .clients = 4,
	                    .io_depth = 64,
	                    .rounds = 1,
	                    .idle_scale = 1.0,
	                    .run = {true, true, true, true, false}};
	char v4ctl_default[PATH_MAX];
	int opt;

	while ((opt = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
		char *end;
		switch (opt) {
		case 't':
			o.trace = optarg;
			break;
		case 'd':
			o.daemon = optarg;
			break;
		case 'm':
			o.model = optarg;
			break;
		case 'M':
			if (parse_modes(&o, optarg) < 0)
				return 2;
			break;
		case 'N':
			o.run[AG_MODE_RESIDENT] = false;
			break;
		case 'c':
			o.clients = (unsigned)strtoul(optarg, &end, 10);
			if (*end || o.clients < 1 || o.clients > 1024) {
				fprintf(stderr, "agentic-driver: --clients: 1..1024\n");
				return 2;
			}
			break;
		case 'i':
			o.idle_scale = strtod(optarg, &end);
			if (*end || !(o.idle_scale >= 0)) {
				fprintf(stderr, "agentic-driver: --idle-scale: a number >= 0\n");
				return 2;
			}
			break;
		case 'D':
			o.device_bytes = optarg;
			break;
		case 'R':
			o.dram_bytes = optarg;
			break;
		case 'e':
			o.evict = true;
			break;
		case 'T':
			o.threads = optarg;
			break;
		case 'q':
			o.io_depth = (unsigned)strtoul(optarg, &end, 10);
			if (*end || o.io_depth < 2 || o.io_depth > 4096) {
				fprintf(stderr, "agentic-driver: --io-depth: 2..4096\n");
				return 2;
			}
			break;
		case 'w':
			o.workdir = optarg;
			break;
		case 'o':
			o.trace_out = optarg;
			break;
		case 'v':
			o.v4ctl = optarg;
			break;
		case 'a':
			if (o.n_extra == AG_MAX_EXTRA) {
				fprintf(stderr, "agentic-driver: at most %d --daemon-arg\n",
				        AG_MAX_EXTRA);
				return 2;
			}
			o.extra[o.n_extra++] = optarg;
			break;
		case 'k':
			o.keep = true;
			break;
		case 'r':
			o.rounds = (unsigned)strtoul(optarg, &end, 10);
			if (*end || o.rounds < 1 || o.rounds > 100) {
				fprintf(stderr, "agentic-driver: --rounds: 1..100\n");
				return 2;
			}
			break;
		case 'W':
			o.warmup = (unsigned)strtoul(optarg, &end, 10);
			if (*end || o.warmup > 1000000) {
				fprintf(stderr, "agentic-driver: --warmup-turns: a turn count\n");
				return 2;
			}
			break;
		case 'P':
			o.prefix = optarg;
			break;
		case 'E':
			o.events_dir = optarg;
			break;
		case 'L':
			if (parse_rate(&o, optarg) < 0)
				return 2;
			break;
		case 'h':
			fputs(usage, stdout);
			return 0;
		default:
			fputs(usage, stderr);
			return 2;
		}
	}
	if (!o.trace || !o.daemon || !o.model || optind < argc) {
		fputs(usage, stderr);
		return 2;
	}
	if (!o.workdir) {
		/* the NVMe tier's file lives here: a disk, not a tmpfs /tmp */
		const char *t = getenv("TMPDIR");
		o.workdir = t && *t ? t : "/var/tmp";
	}
	if (!o.v4ctl) {
		char tmp[PATH_MAX];
		snprintf(tmp, sizeof(tmp), "%s", o.daemon);
		snprintf(v4ctl_default, sizeof(v4ctl_default), "%s/../v4ctl/v4ctl", dirname(tmp));
		if (access(v4ctl_default, X_OK) == 0)
			o.v4ctl = v4ctl_default;
	}
	char trace_default[PATH_MAX];
	if (!o.trace_out && o.v4ctl) {
		snprintf(trace_default, sizeof(trace_default), "%s/agentic-dualpath.trace.json",
		         o.workdir);
		o.trace_out = trace_default;
	}

	char err[512];
	struct ag_trace *tr;
	if (ag_trace_load(o.trace, &tr, err, sizeof(err)) < 0) {
		fprintf(stderr, "agentic-driver: %s\n", err);
		return 1;
	}
	signal(SIGPIPE, SIG_IGN);

	struct ag_result(*res)[AG_MODE_MAX] = calloc(o.rounds, sizeof(*res));
	struct ag_round *rd = calloc(o.rounds, sizeof(*rd));
	if (!res || !rd) {
		fprintf(stderr, "agentic-driver: out of memory\n");
		free(res);
		free(rd);
		ag_trace_free(tr);
		return 1;
	}

	/* Every round runs every mode back to back, same trace, a fresh daemon
	 * each: resident first (its tokens are the reference, its steps the
	 * compute-only time, in auto the read rate's yardstick), then the others,
	 * in reverse order every other round (drift over a round favours no
	 * mode). Each mode's run is bracketed by the machine's CPU time and the
	 * probe; the report takes the round whose most disturbed mode was
	 * disturbed least, ratios and ideal bound from that round alone. */
	int failed = 0;
	double probe_best = INFINITY, last_bytes = 0;
	for (unsigned round = 1; round <= o.rounds; round++) {
		struct ag_result *rr = res[round - 1];
		struct ag_round *g = &rd[round - 1];
		int order[AG_MODE_MAX], n_order = 0;
		order[n_order++] = AG_MODE_RESIDENT;
		for (int i = 1; i < AG_MODE_MAX; i++)
			order[n_order++] = round % 2 ? i : AG_MODE_MAX - i;
		g->complete = true;
		g->read_bps = (double)o.throttle_bps;
		for (int i = 0; i < n_order; i++) {
			int m = order[i];
			if (!o.run[m])
				continue;
			if (o.throttle && !o.throttle_bps && m != AG_MODE_RESIDENT &&
			    g->read_bps == 0 && rr[AG_MODE_RESIDENT].ran) {
				/* auto: the restores' bytes (the last round's reads, else
				 * the states' sizes plus a 4 KiB header a 64 KiB page)
				 * at the rate that makes them last the compute-only time */
				double c = rr[AG_MODE_RESIDENT].st.step_s;
				g->est_bytes = last_bytes > 0
				                   ? last_bytes
				                   : (double)rr[AG_MODE_RESIDENT].state_bytes *
				                         AG_SLOT_BYTES / AG_PAGE_BYTES;
				g->read_bps = c > 0 ? g->est_bytes / (c * o.throttle_io_ratio) : 0;
				/* a floor against a broken estimate: the daemon takes
				 * 0 or 1 MiB/s and more */
				if (g->read_bps > 0 && g->read_bps < 1048576)
					g->read_bps = 1048576;
				g->read_bps = floor(g->read_bps);
				fprintf(
				    stderr,
				    "agentic-driver: round %u: reads paced to %.1f MB/s "
				    "(--io-read-rate %.0f: %.1f MiB in the resident run's %.3f s "
				    "of compute)\n",
				    round, g->read_bps / 1e6, g->read_bps, g->est_bytes / 1048576.0,
				    c);
			}
			struct ag_result r = {.round = round};
			struct ag_cpu_snap a, b;
			r.probe_ms = ag_probe_ms();
			probe_best = fmin(probe_best, r.probe_ms);
			g->probe_ms = fmax(g->probe_ms, r.probe_ms);
			int sa = ag_cpu_snap(&a);
			uint64_t bps = m == AG_MODE_RESIDENT ? 0 : (uint64_t)g->read_bps;
			if (run_mode(&o, tr, (enum ag_mode)m, round, bps, &r) < 0) {
				failed++;
				g->complete = false;
				result_free(&r);
				continue;
			}
			if (sa == 0 && ag_cpu_snap(&b) == 0)
				ag_cpu_since(&a, &b, &r.others_cpus, &r.steal_cpus);
			g->others_cpus = fmax(g->others_cpus, r.others_cpus);
			g->cpu_wait = fmax(g->cpu_wait, isnan(r.cpu_wait) ? 0 : r.cpu_wait);
			g->steal_cpus = fmax(g->steal_cpus, r.steal_cpus);
			if (m == AG_MODE_DUALPATH && r.io_bytes)
				last_bytes = (double)r.io_bytes;
			fprintf(
			    stderr,
			    "agentic-driver: round %u %-9s wall %.2f s, busy %.3f s, stall %.3f s, "
			    "hold %.3f s, load %.3f s, read %.1f MiB%s; cpu wait %.2f, others %.2f "
			    "CPUs, probe %.1f ms%s%s\n",
			    round, ag_mode_name[m], r.wall_s, r.busy_s, r.st.stall_s, r.st.hold_s,
			    r.load_s,
			    r.st.io_read_bytes / 1048576.0, bps ? " (paced)" : "", r.cpu_wait,
			    r.others_cpus, r.probe_ms, o.keep ? ", kept " : "",
			    o.keep ? r.dir : "");
			rr[m] = r;
		}
		double end = ag_probe_ms();
		probe_best = fmin(probe_best, end);
		g->probe_ms = fmax(g->probe_ms, end);
	}

	/* the least disturbed complete round: the one whose most disturbed
	 * daemon waited least for a CPU (a tie: the faster probe) */
	unsigned chosen = 0;
	bool have = false;
	for (unsigned i = 0; i < o.rounds; i++) {
		if (!rd[i].complete)
			continue;
		if (!have || rd[i].cpu_wait < rd[chosen].cpu_wait - 0.005 ||
		    (rd[i].cpu_wait < rd[chosen].cpu_wait + 0.005 &&
		     rd[i].probe_ms < rd[chosen].probe_ms))
			chosen = i;
		have = true;
	}
	if (have) {
		struct ag_result *rr = res[chosen];
		for (int m = 0; m < AG_MODE_MAX; m++) {
			if (!rr[m].ran)
				continue;
			if (o.events_dir && ag_write_events(o.events_dir, (enum ag_mode)m, rr[m].ev,
			                                    rr[m].n_ev) < 0)
				fprintf(stderr, "agentic-driver: cannot write the events to %s\n",
				        o.events_dir);
			if (rr[m].trace_tmp[0] && rename(rr[m].trace_tmp, o.trace_out) < 0)
				fprintf(stderr, "agentic-driver: cannot rename %s to %s: %s\n",
				        rr[m].trace_tmp, o.trace_out, strerror(errno));
			rr[m].trace_tmp[0] = '\0';
		}
		ag_report(&o, res, rd, chosen, probe_best);
	} else {
		fprintf(stderr, "agentic-driver: no round ran every mode\n");
	}
	for (unsigned i = 0; i < o.rounds; i++)
		for (int m = 0; m < AG_MODE_MAX; m++)
			result_free(&res[i][m]);
	free(res);
	free(rd);
	ag_trace_free(tr);
	return failed ? 1 : 0;
}
