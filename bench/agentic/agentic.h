/* SPDX-License-Identifier: MIT */
/*
 * bench/agentic/agentic.h — agentic-driver's parts (driver.c runs the
 * modes; play.c plays a trace over the socket; daemon.c starts, watches and
 * stops a dualpathd; ioprobe.c times the I/O-only bound; report.c turns what
 * was measured into the tables and RESULT lines).
 * Internal to the driver. Errors are negative errno values; the functions
 * put a one-line reason in err and never print; driver.c does.
 */
#ifndef DP_BENCH_AGENTIC_AGENTIC_H
#define DP_BENCH_AGENTIC_AGENTIC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <limits.h>
#include <sys/types.h>

#include "base/clock.h"

#include "trace.h"

/* ---- play.c: the clients ------------------------------------------------ */

/* Where a session's state was when its turn was sent (ListSessions just
 * before the Generate, on the same connection). */
enum ag_tier {
	AG_TIER_DEVICE,
	AG_TIER_DRAM,
	AG_TIER_NVME,
	AG_TIER_NONE, /* no state: recomputed from the history */
	AG_TIER_NEW,  /* the session's first turn */
	AG_TIER_MAX,
};

/* One turn as the client saw it. Times are dp_clock_ns(). */
struct ag_turn_rec {
	uint64_t t_send;  /* Generate written */
	uint64_t t_first; /* first TokenChunk with ids */
	uint64_t t_end;   /* the final chunk */
	uint32_t cached;  /* Usage.cached_tokens: context the state already held */
	uint32_t generated;
	uint8_t tier;    /* enum ag_tier */
	uint64_t digest; /* FNV-1a of the generated ids */
	uint64_t bytes;  /* the state's size when sent (ListSessions), 0 if none */
};

/* What playing a trace recorded (play.c's player and http-play.c's). */
struct ag_played {
	struct ag_turn_rec **recs; /* [session][turn] */
	uint32_t *itl_us;          /* every gap between chunks, all turns */
	size_t n_itl;
	uint64_t t_start, t_end; /* first send, last final chunk */
};
/* A zeroed record for every turn of tr (t_start UINT64_MAX, t_end 0). */
int ag_played_init(struct ag_played *o, const struct ag_trace *tr);
/* One player thread's part: its first send, last end and gaps, added. */
int ag_played_add(struct ag_played *o, uint64_t first_send, uint64_t last_end, const uint32_t *itl,
                  size_t n_itl);
/* Free what init and add allocated; accepts a zeroed one. */
void ag_played_fini(struct ag_played *o, const struct ag_trace *tr);

struct ag_play {
	const struct ag_trace *tr;
	const char *sock;
	unsigned threads;  /* client threads; session s goes to thread s % threads */
	double idle_scale; /* multiplies each IDLE_MS */
	bool evict;        /* EvictSession (to NVMe) after every turn */
	bool replay;       /* no sessions: each turn a one-off request carrying
	                      the whole history so far (client-side recompute) */
	/* Warm-up: play turns [0, warmup_turns) of every session first; when
	 * all are done, call at_warm(warm_ctx) (the daemon is idle: snapshot
	 * its counters), then play the rest. The warm-up turns are recorded
	 * but t_start, t_end and the gaps cover the rest only. */
	uint32_t warmup_turns;
	void (*at_warm)(void *warm_ctx);
	void *warm_ctx;
	/* out */
	struct ag_played out; /* allocated by ag_play_run */
	uint64_t evict_errors;
	uint64_t evicts, evict_ns; /* EvictSessions answered, their round trips' sum */
};

/* Play the whole trace; blocks until every turn has finished. */
int ag_play_run(struct ag_play *p, char *err, size_t err_len);
/* Free what ag_play_run allocated; accepts a zeroed or partly run play. */
void ag_play_fini(struct ag_play *p);

/* ---- daemon.c: one dualpathd --------------------------------------------- */

struct ag_daemon {
	pid_t pid;
	char dir[256]; /* work directory: socket, state/, log */
	char sock[300];
	char state[300];
	char log[300];
};

/* Start bin with args (NULL-terminated; --socket, --state-dir and --config
 * are added) in a fresh directory under parent; wait until it serves. */
int ag_daemon_start(struct ag_daemon *d, const char *bin, const char *parent,
                    const char *const *args, char *err, size_t err_len);
/* CPU time (user + system, all threads) of process pid so far; NAN if
 * unknown. */
double ag_proc_cpu_s(pid_t pid);
/* SIGTERM (the daemon persists its sessions), wait, SIGKILL after 120 s. */
void ag_daemon_stop(struct ag_daemon *d);
/* Remove the work directory. */
void ag_daemon_cleanup(struct ag_daemon *d);

/* The Stats figures the report uses: doubles only (the driver subtracts
 * two snapshots field by field). */
struct ag_stats {
	double step_s, compute_s, stall_s, hold_s, holds, joins_forced;
	double restores, restore_s;
	double tokens_prefill, tokens_decode;
	double promotions, demotions;
	double pages_read, pages_written, pages_shared, recomputed_tokens, corrupt_pages;
	double io_read_bytes, io_written_bytes, io_reads;
	double direct_io;
	double steps;
};
int ag_daemon_stats(const char *sock, struct ag_stats *ret, char *err, size_t err_len);

/* The end (us since the daemon started) of its most recent trace event:
 * events starting from then on came later. */
int ag_daemon_trace_mark(const char *sock, uint64_t *ret_end_us, char *err, size_t err_len);

/* Trace events, gathered by polling TraceRequest while a run goes (the
 * daemon keeps its last 4096). */
struct ag_ev {
	char name[16];
	bool io_lane;
	uint64_t start_us, dur_us;
	uint32_t arg0; /* step: tokens; restore: position */
	char arg1[16]; /* step: sequences; restore: from_tier */
	/* io, stall: the KiB in flight of the classes after restore's (arg0
	 * or arg1), when the daemon gives them */
	bool has_kib;
	uint32_t kib[3]; /* engram, expert, writeback */
};

/* Their names in the trace, as daemon/front-dispatch.c gives them. */
#define AG_EV_KIB_NAMES { "engram_kib_in_flight", "expert_kib_in_flight", "writeback_kib_in_flight" }

struct ag_monitor {
	const char *sock;
	unsigned interval_ms;
	/* out */
	struct ag_ev *ev;
	size_t n, cap;
	uint64_t polls, gaps; /* polls that found no overlap: events lost */
	int err;
	char what[160];
	/* internal */
	bool stop; /* __atomic: set by ag_monitor_stop, read by the poller */
	void *thread;
};
int ag_monitor_start(struct ag_monitor *m);
/* Stops the polling after one last poll. */
void ag_monitor_stop(struct ag_monitor *m);
void ag_monitor_fini(struct ag_monitor *m);

/* ---- ioprobe.c: the I/O-only time ----------------------------------------- */

/*
 * Read n slots of the daemon's slot file (path) as a restore does: per
 * slot a 4 KiB header read and a 64 KiB page read, O_DIRECT, `depth` reads
 * in flight (Linux AIO), slots in a shuffled order, cycling if n exceeds
 * the file; paced to read_bps bytes a second as the daemon's io engine
 * paces its reads at --io-read-rate (0: no limit). *ret_secs is the time,
 * *ret_bytes the bytes read, *ret_direct whether O_DIRECT held (a file
 * system without it falls back to buffered).
 */
int ag_io_probe(const char *path, uint64_t n, unsigned depth, uint64_t read_bps, double *ret_secs,
                uint64_t *ret_bytes, bool *ret_direct, char *err, size_t err_len);

/* ---- disturb.c: how much other work shared the machine -------------------- */

struct ag_cpu_snap {
	double busy_s;  /* the machine's CPU time, all CPUs (/proc/stat) */
	double steal_s; /* of which steal */
	double ours_s;  /* this process and its reaped children (getrusage) */
	uint64_t t_ns;
};
int ag_cpu_snap(struct ag_cpu_snap *ret);
/* Between two snapshots: the CPUs other processes kept busy (CPU seconds a
 * second; the machine has nproc) and steal, likewise. Children still running
 * at b count as others: take b after they are reaped. */
void ag_cpu_since(const struct ag_cpu_snap *a, const struct ag_cpu_snap *b, double *ret_others,
                  double *ret_steal);
/* The time process pid's threads (those alive now) have run, and have
 * waited runnable for a CPU, so far. */
int ag_proc_sched(pid_t pid, double *ret_run_s, double *ret_wait_s);
/* A fixed piece of arithmetic on every CPU at once, ms (median of 3): the
 * undisturbed machine's time is the lowest seen. */
double ag_probe_ms(void);

/* ---- the driver (driver.c) and its report (report.c) ----------------------- */

enum ag_mode {
	AG_MODE_RESIDENT,  /* nothing parked: the compute-only time */
	AG_MODE_RECOMPUTE, /* --restore recompute */
	AG_MODE_FULL,      /* --restore full: load-then-compute */
	AG_MODE_DUALPATH,  /* --restore dualpath */
	AG_MODE_REPLAY,    /* no sessions: one-off requests with the whole history */
	AG_MODE_MAX,
};
extern const char *const ag_mode_name[AG_MODE_MAX];

#define AG_MAX_EXTRA 32

/* agentic-driver's options. */
struct ag_opts {
	const char *trace, *daemon, *model, *v4ctl, *workdir, *trace_out, *events_dir;
	const char *prefix; /* of the RESULT names */
	const char *device_bytes, *dram_bytes, *threads;
	const char *extra[AG_MAX_EXTRA];
	int n_extra;
	bool run[AG_MODE_MAX];
	unsigned clients, io_depth, rounds, warmup;
	double idle_scale;
	bool evict, keep;
	/* --throttle-read: NULL none; "auto": each round, the rate at which the
	 * restores' reads take as long as the round's compute-only time; the
	 * restore modes' daemons get it as --io-read-rate, the I/O probe paces
	 * its reads at it */
	const char *throttle;
	uint64_t throttle_bps;    /* a fixed rate, when not auto */
	double throttle_io_ratio; /* auto: the I/O-only / compute-only aimed at */
};

/* One round: every mode back to back; how disturbed it was. */
struct ag_round {
	bool complete;      /* every mode asked for ran */
	double cpu_wait;    /* the most any of its modes' daemon waited (ag_result) */
	double others_cpus; /* the most any of its modes saw */
	double steal_cpus;
	double probe_ms;  /* the slowest probe around its modes */
	double read_bps;  /* the read rate its restore modes ran under; 0: none */
	double est_bytes; /* auto: the bytes the rate was set for */
};

/* One mode's run, as measured (report.c fills most of it). */
struct ag_result {
	bool ran;
	double wall_s, tok_s;
	uint64_t generated, turns, prompt, cached;
	double ttft_p50, ttft_p99, itl_p50, itl_p99, ttft_nvme_p50; /* ms */
	uint64_t tier_turns[AG_TIER_MAX];
	struct ag_stats st;
	struct ag_stats st0; /* at the end of the warm-up */
	uint64_t mark_us;    /* events from then on are measured */
	bool warm_ok;
	char warm_err[160];
	double load_s, restore_span_s, stall_ev_s; /* from the trace events */
	double big_step_s, big_step_tokens;        /* steps of >= 64 tokens */
	double between_s;     /* compute lane gaps: retire (commits, demotions), admission, idle */
	double cpu0_s, cpu_s; /* the daemon's CPU time: at the warm-up's end, over the run */
	uint64_t restore_events, trace_gaps;
	double busy_s;
	uint64_t evict_errors, differ; /* turns whose tokens differ from resident */
	double evict_ms;               /* mean EvictSession round trip */
	uint64_t parked_reused;        /* turns parked in DRAM/NVMe that came back with state */
	uint64_t *digests;             /* per turn, session-major */
	struct ag_ev *ev;              /* the run's trace events */
	size_t n_ev;
	char trace_tmp[PATH_MAX]; /* dualpath: this round's v4ctl trace */
	unsigned round;
	uint64_t state_bytes; /* ListSessions' sizes over the measured turns */
	/* disturbance: during the run (ag_cpu_since) and the probe just before */
	double others_cpus, steal_cpus, probe_ms;
	/* the daemon's threads over the measured turns: waited runnable for a
	 * CPU / (that + ran); NAN if unknown */
	double run0_s, wait0_s, cpu_wait;
	double read_bps; /* its daemon's --io-read-rate (0: none), and the probe's pacing */
	/* dualpath: the I/O-only probe */
	double io_s, io_gbps;
	uint64_t io_bytes;
	bool io_direct;
	char io_err[160];
	char dir[256];
};

/* Fold a run's polled trace events (from mark_us on) into res: loads,
 * restore spans, stalls, the compute thread's gaps, big steps. */
void ag_analyse_events(struct ag_result *res, enum ag_mode m, const struct ag_ev *ev, size_t n);
/* Fold a played trace into res: TTFT, ITL, tiers, reuse, digests. */
void ag_analyse_play(struct ag_result *res, const struct ag_play *p, const struct ag_trace *tr);
/* Every event as a Chrome trace, DIR/agentic-MODE.events.json. */
int ag_write_events(const char *dir, enum ag_mode m, const struct ag_ev *ev, size_t n);
/* The chosen round's tables, its ideal bound, every round's figures and
 * their spread, and the chosen round's RESULT lines, on stdout. */
void ag_report(const struct ag_opts *o, struct ag_result (*res)[AG_MODE_MAX],
               const struct ag_round *rounds, unsigned chosen, double probe_best_ms);

#define AG_HDR_BYTES  4096u
#define AG_PAGE_BYTES 65536u
#define AG_SLOT_BYTES (AG_HDR_BYTES + AG_PAGE_BYTES)
/* The slot file begins with one header of its own. */
#define AG_SLOTS_FILE_HDR 4096u

#endif /* DP_BENCH_AGENTIC_AGENTIC_H */
