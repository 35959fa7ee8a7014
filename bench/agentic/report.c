/* SPDX-License-Identifier: MIT */
/*
 * agentic-driver's report: what the clients and the daemon's trace events
 * say about a run (TTFT, ITL, tiers, loads, stalls, the compute thread's
 * gaps), the tables, the ideal bound and the RESULT lines. The meaning of
 * every column is printed under the tables, and described in driver.c.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "agentic.h"

const char *const ag_mode_name[AG_MODE_MAX] = {"resident", "recompute", "full", "dualpath",
                                               "replay"};

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

/* p-th percentile (0..100) of v[n] (sorted here); NAN for n == 0 */
static double pct(double *v, size_t n, double p)
{
	if (n == 0)
		return NAN;
	qsort(v, n, sizeof(*v), cmp_double);
	size_t i = (size_t)ceil(p / 100.0 * (double)n);
	return v[i ? i - 1 : 0];
}

/* Every polled event of the run as a Chrome trace, as v4ctl trace writes
 * them (compute lane tid 1, io lane tid 2). */
int ag_write_events(const char *dir, enum ag_mode m, const struct ag_ev *ev, size_t n)
{
	char path[PATH_MAX];
	snprintf(path, sizeof(path), "%s/agentic-%s.events.json", dir, ag_mode_name[m]);
	FILE *f = fopen(path, "w");
	if (!f)
		return -errno;
	fprintf(f,
	        "{\"traceEvents\":[\n"
	        "{\"name\":\"process_name\",\"ph\":\"M\",\"pid\":1,\"args\":{\"name\":"
	        "\"dualpathd %s\"}},\n"
	        "{\"name\":\"thread_name\",\"ph\":\"M\",\"pid\":1,\"tid\":1,\"args\":"
	        "{\"name\":\"compute\"}},\n"
	        "{\"name\":\"thread_name\",\"ph\":\"M\",\"pid\":1,\"tid\":2,\"args\":"
	        "{\"name\":\"io\"}}",
	        ag_mode_name[m]);
	for (size_t i = 0; i < n; i++) {
		const struct ag_ev *e = &ev[i];
		bool restore = !strcmp(e->name, "restore"), stall = !strcmp(e->name, "stall");
		bool io = !strcmp(e->name, "io"); /* as daemon/front-dispatch.c names them */
		bool hold = !strcmp(e->name, "hold");
		fprintf(f,
		        ",\n{\"name\":\"%s\",\"cat\":\"%s\",\"ph\":\"X\",\"ts\":%llu,\"dur\":%llu,"
		        "\"pid\":1,\"tid\":%d,\"args\":{\"%s\":%u,\"%s\":\"%s\"",
		        e->name, e->io_lane ? "io" : "compute", (unsigned long long)e->start_us,
		        (unsigned long long)e->dur_us, e->io_lane ? 2 : 1,
		        restore ? "position"
		        : stall ? "layer"
		        : io    ? "restore_kib_in_flight"
		        : hold  ? "sessions"
		                : "tokens",
		        e->arg0,
		        restore ? "from_tier"
		        : stall ? "restore_kib_in_flight"
		        : io    ? "deferred"
		        : hold  ? "restore_kib_in_flight"
		                : "sequences",
		        e->arg1);
		static const char *const kib[] = AG_EV_KIB_NAMES;
		for (size_t k = 0; e->has_kib && k < sizeof(kib) / sizeof(kib[0]); k++)
			fprintf(f, ",\"%s\":%u", kib[k], e->kib[k]);
		fprintf(f, "}}");
	}
	fprintf(f, "\n],\"displayTimeUnit\":\"ms\"}\n");
	return fclose(f) ? -errno : 0;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

void ag_analyse_events(struct ag_result *res, enum ag_mode m, const struct ag_ev *ev, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		const struct ag_ev *e = &ev[i];
		double s = (double)e->dur_us / 1e6;
		if (e->start_us < res->mark_us)
			continue; /* the warm-up's */
		if (!strcmp(e->name, "restore")) {
			res->restore_events++;
			res->restore_span_s += s;
			if (m == AG_MODE_FULL) /* synchronous, on the compute thread */
				res->load_s += s;
		} else if (!strcmp(e->name, "stall")) {
			res->stall_ev_s += s;
		} else if (!strcmp(e->name, "step") && e->arg0 >= 64) {
			res->big_step_s += s;
			res->big_step_tokens += e->arg0;
		}
	}

	/* the compute thread's time outside steps (and, in full, outside its
	 * loads; in dualpath, outside its holds): the gaps between them, from
	 * the first measured one to the last */
	uint64_t *iv = malloc((n ? n : 1) * 2 * sizeof(*iv));
	size_t k = 0;
	if (!iv)
		return;
	for (size_t i = 0; i < n; i++) {
		const struct ag_ev *e = &ev[i];
		bool lane = !strcmp(e->name, "step") || !strcmp(e->name, "hold") ||
		            (m == AG_MODE_FULL && !strcmp(e->name, "restore"));
		if (lane && e->start_us >= res->mark_us) {
			iv[2 * k] = e->start_us;
			iv[2 * k + 1] = e->start_us + e->dur_us;
			k++;
		}
	}
	qsort(iv, k, 2 * sizeof(*iv), cmp_u64);
	uint64_t end = k ? iv[1] : 0, gaps = 0;
	for (size_t i = 1; i < k; i++) {
		if (iv[2 * i] > end)
			gaps += iv[2 * i] - end;
		if (iv[2 * i + 1] > end)
			end = iv[2 * i + 1];
	}
	res->between_s = (double)gaps / 1e6;
	free(iv);
}

void ag_analyse_play(struct ag_result *res, const struct ag_play *p, const struct ag_trace *tr)
{
	size_t n = 0, k = 0, nv = 0;
	uint32_t w = p->warmup_turns;
	for (uint32_t s = 0; s < tr->n_sessions; s++)
		n += tr->sessions[s].n_turns > w ? tr->sessions[s].n_turns - w : 0;
	double *ttft = malloc((n ? n : 1) * sizeof(*ttft));
	double *nvme = malloc((n ? n : 1) * sizeof(*nvme));
	double *itl = malloc((p->out.n_itl ? p->out.n_itl : 1) * sizeof(*itl));
	res->digests = malloc((n ? n : 1) * sizeof(*res->digests));
	if (!ttft || !nvme || !itl || !res->digests) {
		fprintf(stderr, "agentic-driver: out of memory\n");
		exit(1);
	}
	for (uint32_t s = 0; s < tr->n_sessions; s++) {
		for (uint32_t t = w; t < tr->sessions[s].n_turns; t++, k++) {
			const struct ag_turn_rec *r = &p->out.recs[s][t];
			ttft[k] = (double)(r->t_first - r->t_send) / 1e6;
			if (r->tier == AG_TIER_NVME)
				nvme[nv++] = ttft[k];
			res->tier_turns[r->tier]++;
			if ((r->tier == AG_TIER_DRAM || r->tier == AG_TIER_NVME) && r->cached > 0)
				res->parked_reused++;
			res->generated += r->generated;
			res->prompt += tr->sessions[s].turns[t].append;
			res->cached += r->cached;
			res->state_bytes += r->bytes;
			res->digests[k] = r->digest;
		}
	}
	for (size_t i = 0; i < p->out.n_itl; i++)
		itl[i] = (double)p->out.itl_us[i] / 1e3;
	res->turns = n;
	res->wall_s = (double)(p->out.t_end - p->out.t_start) / 1e9;
	res->tok_s = (double)res->generated / res->wall_s;
	res->ttft_p50 = pct(ttft, n, 50);
	res->ttft_p99 = pct(ttft, n, 99);
	res->ttft_nvme_p50 = pct(nvme, nv, 50);
	res->itl_p50 = pct(itl, p->out.n_itl, 50);
	res->itl_p99 = pct(itl, p->out.n_itl, 99);
	res->evict_errors = p->evict_errors;
	res->evict_ms = p->evicts ? (double)p->evict_ns / (double)p->evicts / 1e6 : 0;
	free(ttft);
	free(nvme);
	free(itl);
}

/* ---- report --------------------------------------------------------------- */

static double ratio(double a, double b)
{
	return b > 0 ? a / b : NAN;
}

/* "12.3ms", or "-" where there was nothing to measure */
static const char *fmt_ms(char buf[16], double ms)
{
	if (isnan(ms))
		return "-";
	snprintf(buf, 16, "%.1fms", ms);
	return buf;
}

static void print_tables(const struct ag_opts *o, struct ag_result *res)
{
	const struct ag_result *rs = &res[AG_MODE_RESIDENT];
	const struct ag_result *any = NULL;
	for (int m = 0; m < AG_MODE_MAX; m++)
		if (res[m].ran)
			any = &res[m];
	if (!any)
		return; /* nothing ran */
	printf("\nagentic: %s: %llu turns, %llu prompt + %llu generated tokens; %u client threads, "
	       "idle times x%g; parking: %s; --device-bytes %s --dram-bytes %s (resident: no "
	       "device limit, no evictions)\n",
	       o->trace, (unsigned long long)any->turns, (unsigned long long)any->prompt,
	       (unsigned long long)any->generated, o->clients, o->idle_scale,
	       o->evict ? "EvictSession (to NVMe) after every turn, and the tier budgets"
	                : "the tier budgets (watermarks)",
	       o->device_bytes, o->dram_bytes);
	if (o->warmup)
		printf("every figure leaves out the first %u turn%s of each session (warm-up)\n",
		       o->warmup, o->warmup == 1 ? "" : "s");
	printf("\n");
	printf("%-9s %7s %9s %8s %8s %10s %7s %7s %8s %7s %7s %6s %8s %8s  %s\n", "mode", "wall s",
	       "gen tok/s", "TTFT p50", "TTFT p99", "TTFT nvme", "ITL p50", "ITL p99", "busy s",
	       "stall", "io wait", "reuse", "restores", "MiB read", "turns dev/dram/nvme/none/new");
	for (int m = 0; m < AG_MODE_MAX; m++) {
		const struct ag_result *r = &res[m];
		if (!r->ran)
			continue;
		uint64_t parked = r->tier_turns[AG_TIER_DRAM] + r->tier_turns[AG_TIER_NVME];
		char t50[16], t99[16], tnv[16], i50[16], i99[16];
		printf(
		    "%-9s %7.2f %9.1f %8s %8s %10s %7s %7s %8.3f %7.4f %7.4f "
		    "%5.1f%% %8llu %8.1f  %llu/%llu/%llu/%llu/%llu\n",
		    ag_mode_name[m], r->wall_s, r->tok_s, fmt_ms(t50, r->ttft_p50),
		    fmt_ms(t99, r->ttft_p99), fmt_ms(tnv, r->ttft_nvme_p50),
		    fmt_ms(i50, r->itl_p50), fmt_ms(i99, r->itl_p99), r->busy_s,
		    r->st.step_s > 0 ? r->st.stall_s / r->st.step_s : 0.0,
		    r->busy_s > 0 ? (r->st.stall_s + r->load_s + r->st.hold_s) / r->busy_s : 0.0,
		    100.0 * (double)r->cached / (double)(r->cached + r->prompt),
		    (unsigned long long)(m == AG_MODE_DUALPATH ? (uint64_t)r->st.restores : parked),
		    r->st.io_read_bytes / 1048576.0,
		    (unsigned long long)r->tier_turns[AG_TIER_DEVICE],
		    (unsigned long long)r->tier_turns[AG_TIER_DRAM],
		    (unsigned long long)r->tier_turns[AG_TIER_NVME],
		    (unsigned long long)r->tier_turns[AG_TIER_NONE],
		    (unsigned long long)r->tier_turns[AG_TIER_NEW]);
	}
	printf("\n%-9s %8s %8s %8s %8s %9s %9s %8s %9s %10s %9s %9s %8s %7s  %s\n", "mode",
	       "step s", "stall s", "held s", "load s", "between s", "restore s", "cpu s", "prefill",
	       "recomputed",
	       "MiB wrote", "demotions", "ms/tok", "differ", "notes");
	for (int m = 0; m < AG_MODE_MAX; m++) {
		struct ag_result *r = &res[m];
		if (!r->ran)
			continue;
		char differ[24] = "-", notes[256] = "";
		size_t nl = 0;
		if (m != AG_MODE_RESIDENT && rs->ran) {
			r->differ = 0;
			for (uint64_t k = 0; k < r->turns; k++)
				r->differ += r->digests[k] != rs->digests[k];
			snprintf(differ, sizeof(differ), "%llu", (unsigned long long)r->differ);
		}
		if (r->trace_gaps)
			nl += (size_t)snprintf(notes + nl, sizeof(notes) - nl,
			                       "trace polls missed events %llu times; ",
			                       (unsigned long long)r->trace_gaps);
		if (r->evict_ms > 0 && nl < sizeof(notes))
			nl += (size_t)snprintf(notes + nl, sizeof(notes) - nl,
			                       "EvictSession round trip %.1f ms on average; ",
			                       r->evict_ms);
		if (r->st.holds > 0 && nl < sizeof(notes))
			nl += (size_t)snprintf(notes + nl, sizeof(notes) - nl,
			                       "holds %.0f, joins past their bound %.0f; ",
			                       r->st.holds, r->st.joins_forced);
		if (r->st.pages_shared > 0 && nl < sizeof(notes))
			nl += (size_t)snprintf(notes + nl, sizeof(notes) - nl,
			                       "snapshot pages written %.0f, shared %.0f; ",
			                       r->st.pages_written, r->st.pages_shared);
		if (r->evict_errors && nl < sizeof(notes))
			nl += (size_t)snprintf(notes + nl, sizeof(notes) - nl,
			                       "%llu evictions refused; ",
			                       (unsigned long long)r->evict_errors);
		if (r->st.corrupt_pages > 0 && nl < sizeof(notes))
			nl += (size_t)snprintf(notes + nl, sizeof(notes) - nl,
			                       "%.0f pages failed their checks; ",
			                       r->st.corrupt_pages);
		if (r->st.direct_io == 0 && m != AG_MODE_RESIDENT && nl < sizeof(notes))
			nl += (size_t)snprintf(notes + nl, sizeof(notes) - nl,
			                       "NVMe tier without O_DIRECT; ");
		if (m == AG_MODE_RECOMPUTE && r->parked_reused && nl < sizeof(notes))
			snprintf(notes + nl, sizeof(notes) - nl,
			         "NOT no-reuse: %llu parked turns came back with state",
			         (unsigned long long)r->parked_reused);
		/* ms/tok: "-" where no step was big enough (scenarios 2 and 3) */
		char mst[16] = "-";
		if (r->big_step_tokens > 0)
			snprintf(mst, sizeof(mst), "%.3f", 1e3 * r->big_step_s / r->big_step_tokens);
		printf("%-9s %8.3f %8.3f %8.3f %8.3f %9.3f %9.3f %8.2f %9.0f %10.0f %9.1f %9.0f %8s "
		       "%7s  %s\n",
		       ag_mode_name[m], r->st.step_s, r->st.stall_s, r->st.hold_s, r->load_s,
		       r->between_s,
		       r->restore_span_s, r->cpu_s, r->st.tokens_prefill, r->st.recomputed_tokens,
		       r->st.io_written_bytes / 1048576.0, r->st.demotions, mst, differ, notes);
	}
	printf(
	    "\nwall s: first Generate to last final chunk. busy s: the compute thread's forward "
	    "steps\n(dualpath_step_seconds_total, stalls included) plus, for full, its synchronous "
	    "loads\n(load s, from the daemon's restore trace events), for dualpath its holds (held s:"
	    "\ndualpath_restore_hold_seconds_total, no step ran while a session returning alone "
	    "read on\nand would have stalled one). stall = dualpath_stall_seconds_total / step s;\n"
	    "io wait = (stall s + load s + held s) / busy s: the compute thread waiting for "
	    "restored\nstate, in steps or holds (dualpath) or before them (full)."
	    "\nreuse: context the state already held "
	    "(Usage.cached_tokens) / context the turns needed.\nrestores: dualpath: "
	    "layer-by-layer restores completed; others: turns whose state was parked.\nTTFT nvme: "
	    "p50 over turns whose state was on NVMe when sent. differ: turns whose generated\n"
	    "tokens differ from the resident run's (greedy). restore s: restores' spans, admission "
	    "to\nlast layer in (overlapped with steps in dualpath). between s: the compute thread "
	    "outside steps\nand loads (journal commits, demotion writeback, admission; and idle "
	    "time when no turn was\npending: compare with resident, which demotes nothing). cpu s: "
	    "the daemon's CPU time (all\nthreads) over the measured turns: other work on the "
	    "machine inflates it far less than the\ntimes. ms/tok: step time per token in steps of "
	    ">= 64 tokens, the machine's compute speed\nduring the run (other work on the machine "
	    "slows it). MiB wrote: the io engine's writes (NVMe slots,\nheaders included); "
	    "snapshot pages written / shared: pages written, and pages that named\na slot already "
	    "holding their bytes instead (dualpath_kv_pages_{written,shared}_total).\n");
}

/* The ideal bound of a round: max(compute-only, I/O-only). */
static double ideal_of(const struct ag_result *res)
{
	const struct ag_result *dp = &res[AG_MODE_DUALPATH], *rs = &res[AG_MODE_RESIDENT];
	if (!dp->ran || !rs->ran)
		return NAN;
	return rs->st.step_s > dp->io_s ? rs->st.step_s : dp->io_s;
}

static void print_results(const struct ag_opts *o, const struct ag_result *res, const char *tag)
{
	const struct ag_result *dp = &res[AG_MODE_DUALPATH], *full = &res[AG_MODE_FULL],
	                       *rc = &res[AG_MODE_RECOMPUTE];
	const struct ag_result *rs = &res[AG_MODE_RESIDENT];
	double ideal = ideal_of(res);
	if (dp->ran && rs->ran) {
		double io = dp->io_s;
		char paced[64] = "";
		if (dp->read_bps > 0)
			snprintf(paced, sizeof(paced), " paced to %.1f MB/s,", dp->read_bps / 1e6);
		printf(
		    "\nideal bound = max(compute-only %.3f s: the resident run's forward steps,\n"
		    "                  I/O-only %.4f s: the %.0f NVMe slots the dualpath run read "
		    "(%.1f MiB), read alone\n"
		    "                  at depth %u%s,%s %.2f GB/s) = %.3f s; I/O-only / "
		    "compute-only = %.4f\n",
		    rs->st.step_s, io, dp->st.pages_read, (double)dp->io_bytes / 1048576.0,
		    o->io_depth, dp->io_direct ? " with O_DIRECT" : " (buffered: no O_DIRECT)",
		    paced, dp->io_gbps, ideal, ratio(io, rs->st.step_s));
		if (dp->io_err[0])
			printf("  (I/O probe failed: %s; I/O-only taken as 0)\n", dp->io_err);
		printf("dualpath busy %.3f s = %.3fx the ideal bound\n", dp->busy_s,
		       ratio(dp->busy_s, ideal));
	}
	printf("\n");
	if (rc->ran && rc->parked_reused)
		printf("note: the recompute run reused parked state on %llu of its turns (the "
		       "daemon's "
		       "--restore recompute\nrestores a session parked on NVMe from its snapshot): "
		       "%s-dualpath-vs-recompute is not against\na no-reuse baseline%s\n",
		       (unsigned long long)rc->parked_reused, o->prefix,
		       res[AG_MODE_REPLAY].ran ? "; replay is"
		                               : " (--modes ...,replay measures one)");
	if (dp->ran && full->ran)
		printf("RESULT %s-dualpath-vs-load-then-compute ours=%.2f anchor=%.2f ratio=%.3f "
		       "unit=tok/s better=higher%s\n",
		       o->prefix, dp->tok_s, full->tok_s, ratio(dp->tok_s, full->tok_s), tag);
	/* a restored turn's latency: load-then-compute pays I/O + prefill,
	 * the overlapped restore max(I/O, prefill) */
	if (dp->ran && full->ran && dp->ttft_nvme_p50 > 0 && full->ttft_nvme_p50 > 0)
		printf("RESULT %s-ttft-nvme-dualpath-vs-load-then-compute ours=%.2f anchor=%.2f "
		       "ratio=%.3f unit=ms better=lower%s\n",
		       o->prefix, dp->ttft_nvme_p50, full->ttft_nvme_p50,
		       ratio(dp->ttft_nvme_p50, full->ttft_nvme_p50), tag);
	if (dp->ran && rc->ran)
		printf("RESULT %s-dualpath-vs-recompute ours=%.2f anchor=%.2f ratio=%.3f "
		       "unit=tok/s better=higher%s\n",
		       o->prefix, dp->tok_s, rc->tok_s, ratio(dp->tok_s, rc->tok_s), tag);
	if (dp->ran && res[AG_MODE_REPLAY].ran)
		printf("RESULT %s-dualpath-vs-replay ours=%.2f anchor=%.2f ratio=%.3f "
		       "unit=tok/s better=higher%s\n",
		       o->prefix, dp->tok_s, res[AG_MODE_REPLAY].tok_s,
		       ratio(dp->tok_s, res[AG_MODE_REPLAY].tok_s), tag);
	if (dp->ran && rs->ran)
		printf("RESULT %s-dualpath-vs-ideal ours=%.3f anchor=%.3f ratio=%.3f unit=s "
		       "better=lower%s\n",
		       o->prefix, dp->busy_s, ideal, ratio(dp->busy_s, ideal), tag);
	if (dp->ran) {
		double sf = dp->st.step_s > 0 ? dp->st.stall_s / dp->st.step_s : 0;
		printf("RESULT %s-stall-fraction ours=%.4f anchor=0.05 ratio=%.3f unit=fraction "
		       "better=lower%s\n",
		       o->prefix, sf, sf / 0.05, tag);
	}
	if (dp->ran && o->trace_out && o->v4ctl)
		printf(
		    "\nChrome trace of the dualpath run (its last 4096 steps and restores): %s\n",
		    o->trace_out);
	fflush(stdout);
}

/* One round's ratios, NAN where a mode did not run. */
struct round_figs {
	double dp_full, dp_ideal, ttft, stall, io_compute;
};

static struct round_figs round_figs(const struct ag_result *res)
{
	const struct ag_result *dp = &res[AG_MODE_DUALPATH], *full = &res[AG_MODE_FULL],
	                       *rs = &res[AG_MODE_RESIDENT];
	struct round_figs f = {NAN, NAN, NAN, NAN, NAN};
	if (dp->ran && full->ran) {
		f.dp_full = ratio(dp->tok_s, full->tok_s);
		if (dp->ttft_nvme_p50 > 0 && full->ttft_nvme_p50 > 0)
			f.ttft = ratio(dp->ttft_nvme_p50, full->ttft_nvme_p50);
	}
	if (dp->ran) {
		f.stall = dp->st.step_s > 0 ? dp->st.stall_s / dp->st.step_s : 0;
		f.dp_ideal = ratio(dp->busy_s, ideal_of(res));
	}
	if (dp->ran && rs->ran)
		f.io_compute = ratio(dp->io_s, rs->st.step_s);
	return f;
}

/* min..max of the finite values, or "-" */
static const char *fmt_span(char buf[32], const double *v, unsigned n)
{
	double lo = INFINITY, hi = -INFINITY;
	for (unsigned i = 0; i < n; i++)
		if (isfinite(v[i])) {
			lo = fmin(lo, v[i]);
			hi = fmax(hi, v[i]);
		}
	if (!isfinite(lo))
		snprintf(buf, 32, "-");
	else
		snprintf(buf, 32, "%.3f-%.3f", lo, hi);
	return buf;
}

static void print_rounds(const struct ag_opts *o, struct ag_result (*res)[AG_MODE_MAX],
                         const struct ag_round *rd, unsigned chosen, double probe_best)
{
	unsigned n = o->rounds;
	double *col[5];
	for (int c = 0; c < 5; c++)
		if (!(col[c] = calloc(n, sizeof(double))))
			return;
	printf(
	    "\nrounds (each: every mode back to back; the most any of its modes saw of: cpu wait, "
	    "the share of\nits runnable time the daemon waited for a CPU; others, CPUs of %ld kept "
	    "busy by other processes;\nsteal; probe, the probe's time over the fastest of the "
	    "run, %.1f ms):\n",
	    sysconf(_SC_NPROCESSORS_ONLN), probe_best);
	printf("%-6s %8s %7s %6s %6s %9s %9s %8s %8s %10s %7s %10s\n", "round", "cpu wait",
	       "others", "steal", "probe", "compute s", "I/O s", "I/O/comp", "dp/full", "dp/ideal",
	       "stall", "TTFT dp/full");
	for (unsigned i = 0; i < n; i++) {
		struct round_figs f = round_figs(res[i]);
		col[0][i] = f.dp_full;
		col[1][i] = f.dp_ideal;
		col[2][i] = f.ttft;
		col[3][i] = f.stall;
		col[4][i] = f.io_compute;
		const struct ag_result *rs = &res[i][AG_MODE_RESIDENT],
		                       *dp = &res[i][AG_MODE_DUALPATH];
		printf("%-6u %8.2f %7.2f %6.2f %6.2f %9.3f %9.3f %8.3f %8.3f %10.3f %7.4f %10.3f "
		       "%s%s\n",
		       i + 1, rd[i].cpu_wait, rd[i].others_cpus, rd[i].steal_cpus,
		       rd[i].probe_ms / probe_best, rs->ran ? rs->st.step_s : NAN,
		       dp->ran ? dp->io_s : NAN, f.io_compute, f.dp_full, f.dp_ideal, f.stall,
		       f.ttft, i == chosen ? "<- reported" : "",
		       rd[i].complete ? "" : " (incomplete)");
	}
	char b[5][32];
	printf("spread over the rounds: I/O/compute %s, dp/full tok/s %s, dp/ideal %s, stall %s, "
	       "TTFT nvme dp/full %s\n",
	       fmt_span(b[4], col[4], n), fmt_span(b[0], col[0], n), fmt_span(b[1], col[1], n),
	       fmt_span(b[3], col[3], n), fmt_span(b[2], col[2], n));
	if (rd[chosen].read_bps > 0 && o->throttle_bps)
		printf("NVMe tier reads paced by the daemons' io engine (--throttle-read: "
		       "--io-read-rate) to %.1f MB/s, every read, the I/O probe's alike\n",
		       rd[chosen].read_bps / 1e6);
	else if (rd[chosen].read_bps > 0)
		printf(
		    "NVMe tier reads paced by the daemons' io engine (--throttle-read %s: "
		    "--io-read-rate) to %.1f MB/s in the reported round, every read, the I/O "
		    "probe's alike: the rate at which the restores' bytes take %g x the resident "
		    "run's compute time\n",
		    o->throttle, rd[chosen].read_bps / 1e6, o->throttle_io_ratio);
	for (int c = 0; c < 5; c++)
		free(col[c]);
}

void ag_report(const struct ag_opts *o, struct ag_result (*res)[AG_MODE_MAX],
               const struct ag_round *rd, unsigned chosen, double probe_best)
{
	char tag[128];
	snprintf(tag, sizeof(tag),
	         " round=%u/%u cpu_wait=%.2f others_cpus=%.2f probe_slowdown=%.2f", chosen + 1,
	         o->rounds, rd[chosen].cpu_wait, rd[chosen].others_cpus,
	         rd[chosen].probe_ms / probe_best);
	print_tables(o, res[chosen]);
	printf("\nreported: round %u of %u (the least disturbed)\n", chosen + 1, o->rounds);
	print_rounds(o, res, rd, chosen, probe_best);
	print_results(o, res[chosen], tag);
}
