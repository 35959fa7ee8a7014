/* SPDX-License-Identifier: MIT */
/*
 * daemon/config.h — dualpathd's settings: /etc/dualpath/dualpathd.conf (INI,
 * sections [daemon] [model] [kvcache] [io] [sched] [engram] [http]) and the command line.
 *
 * Every key is also a flag: key `state_dir` in any section is
 * `--state-dir VALUE` (or `--state-dir=VALUE`). Precedence: built-in default
 * < config file < flag. `--config FILE` names the file (default
 * /etc/dualpath/dualpathd.conf, which may be absent; a file named explicitly
 * must exist). Unknown keys and bad values are errors that name the file and
 * line, or the flag. Every number has a range (--help shows it) checked as
 * it is read; the file must be UTF-8 text in lines inih reads whole.
 */
#ifndef DP_DAEMON_CONFIG_H
#define DP_DAEMON_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "daemon/log.h"
#include "engram/engram.h"
#include "gpu/gpu.h"
#include "kvcache/tier.h"
#include "model/v4.h"

#define DP_CONFIG_DEFAULT_PATH "/etc/dualpath/dualpathd.conf"
#define DP_CONFIG_STR_MAX 4096
#define DP_CONFIG_QUEUE_DEPTH_MAX 4096u /* <= DP_IO_DEPTH_MAX (main.c asserts it) */
#define DP_CONFIG_READ_RATE_MAX (1ull << 40) /* <= DP_IO_READ_RATE_MAX (main.c asserts it) */
#define DP_CONFIG_READ_BURST_MAX (1ull << 30) /* <= DP_IO_LEN_MAX (main.c asserts it) */

/* How a parked session's state (DRAM or NVMe tier) returns for its next
 * turn: the compute thread's policy, key [sched] restore. */
enum dp_restore_mode {
	DP_RESTORE_DUALPATH,  /* layer by layer on the io thread, compute waiting per layer */
	DP_RESTORE_FULL,      /* load all of it, then compute */
	DP_RESTORE_RECOMPUTE, /* replay the history (the no-reuse baseline) */
	DP_RESTORE_MODE_MAX,
};
/* "dualpath", "full", "recompute"; NULL out of range. Parse: 0 or -EINVAL. */
const char *dp_restore_mode_name(enum dp_restore_mode m);
int dp_restore_mode_parse(const char *name, enum dp_restore_mode *ret);

/*
 * The settings. A key with a fixed set of values is held as its part's enum,
 * parsed once at load by that part's own parse function (backend:
 * dp_gpu_kind_parse, experts: dp_v4_experts_where_parse, ...): what reads
 * the config uses the enum and parses nothing again.
 */
struct dp_config {
	/* [daemon] */
	char socket[DP_CONFIG_STR_MAX];
	char socket_group[256];	 /* group owning the socket; "" = the daemon's */
	char admin_group[256];	 /* may Drain/Evict/Shutdown; root always may */
	char state_dir[DP_CONFIG_STR_MAX];
	char log_file[DP_CONFIG_STR_MAX]; /* "" = stderr (journald) */
	enum dp_log_level log_level;	   /* dp_log_level_parse */
	uint32_t max_frame_bytes;
	uint32_t max_prompt_tokens;
	uint32_t max_new_tokens;
	uint32_t max_sessions;
	uint32_t max_sessions_per_client;
	uint32_t max_requests_per_client;
	uint32_t max_concurrent_requests;
	uint32_t max_connections;
	uint32_t drain_grace_ms;
	uint32_t status_interval_ms;
	uint64_t client_buffer_bytes;	  /* queued responses + partial requests, all connections */
	uint32_t hello_timeout_ms;	  /* a connection must say Hello within this */
	uint32_t idle_timeout_ms;	  /* a connection with nothing in flight is closed after this (0: never) */
	uint32_t admin_connections;	  /* connection slots only root and admin_group may take */
	/* [model] */
	char model[DP_CONFIG_STR_MAX]; /* directory, or "builtin" */
	enum dp_gpu_kind backend;      /* dp_gpu_kind_parse; "auto" is resolved at load */
	bool backend_auto;	       /* ... it was "auto" (kept for --print-config) */
	uint32_t threads;	       /* cpu backend threads; 0 = all */
	enum dp_v4_experts_where experts; /* where routed experts live */
	uint32_t expert_slots;	       /* experts a layer keeps on the device when paged */
	bool expert_lookahead;	       /* nvme: top-k layers' experts guessed and read ahead */
	enum dp_v4_numerics numerics;  /* transformers, reference or auto (model/v4.h) */
	/* [kvcache] */
	uint64_t device_bytes;
	uint64_t dram_bytes;
	uint64_t nvme_bytes;
	double high_watermark;
	double low_watermark;
	bool direct_io;
	uint32_t compact_every; /* journal compaction after this many commits; 0 = never */
	uint32_t max_units;	/* prefix units kept (kvcache.h, "Prefix units") */
	enum dp_v4_csa_where csa_entries; /* where CSA layers' compressed entries live */
	enum dp_kv_shared_tier shared_tier; /* none or rados (kvcache/tier.h) */
	char rados_conf[DP_CONFIG_STR_MAX];   /* ceph.conf; "" = librados's default search */
	char rados_pool[DP_CONFIG_STR_MAX];
	char rados_client[DP_CONFIG_STR_MAX]; /* without "client."; "" = admin */
	char host_id[DP_CONFIG_STR_MAX];      /* this host in leases; "" = the hostname */
	uint32_t lease_ms;		      /* session lease on the shared tier */
	uint32_t lease_idle_ms;		      /* release an idle session's lease (0: never) */
	char advertise[DP_CONFIG_STR_MAX];    /* HTTP address in the member list ("" http_listen) */
	/* [io] */
	uint32_t queue_depth;
	bool sqpoll;
	bool iopoll;
	uint64_t read_rate;	/* bytes a second, all reads of the io thread (0: no limit) */
	uint64_t read_burst;	/* bytes the read rate's bucket holds (0: the io engine's default) */
	/* [sched] */
	bool pin_threads;
	uint32_t max_batch_tokens; /* tokens per forward step */
	uint32_t prefill_chunk;	   /* prompt tokens of one request per step */
	uint32_t max_batch;	   /* sequences per step */
	enum dp_restore_mode restore; /* how parked state returns */
	uint64_t restore_window;      /* restore bytes in flight at most (0: from the rate) */
	/* [engram] */
	char engram_tables[DP_CONFIG_STR_MAX]; /* .dpe file; "" = none (a model without Engram) */
	enum dp_engram_residency engram_residency;
	uint64_t engram_cache_rows;	       /* hot-row cache entries (dram, nvme) */
	/* [http] (daemon/http.h) */
	char http_listen[DP_CONFIG_STR_MAX];	     /* "" off; HOST:PORT or unix:/path; flag --http */
	char http_api_key_file[DP_CONFIG_STR_MAX]; /* "" no keys asked */
	uint64_t http_max_body_bytes;
	uint32_t http_max_json_depth;
	uint32_t http_max_requests; /* in flight; more get 429 */
	uint32_t http_max_tools;
	uint64_t http_replay_cache_bytes; /* sampled ids of recent V4 replies (0: off) */
	uint32_t http_keepalive_ms; /* SSE ": ping" after this long without output */

	char config_path[DP_CONFIG_STR_MAX];
};

void dp_config_defaults(struct dp_config *c);

/*
 * Read --config (or the default file) and then the flags. Returns 0; 1 when
 * --help or --version was handled (out gets the text); or a negative errno
 * with a message naming the file:line or flag.
 */
int dp_config_load(struct dp_config *c, int argc, char **argv, FILE *out, char *err, size_t err_len);

/* Write the settings in config-file form (for --print-config and logs):
 * settings loaded from a file print as a file that loads as the same
 * settings. (A string set by a flag may be longer than a config file's
 * line can be; it is printed all the same.) */
void dp_config_print(const struct dp_config *c, FILE *f);

#endif /* DP_DAEMON_CONFIG_H */
