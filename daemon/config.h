/* SPDX-License-Identifier: MIT */
/*
 * daemon/config.h — dualpathd's settings: /etc/dualpath/dualpathd.conf (INI,
 * sections [daemon] [model] [kvcache] [io] [sched]) and the command line.
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

#define DP_CONFIG_DEFAULT_PATH "/etc/dualpath/dualpathd.conf"
#define DP_CONFIG_STR_MAX 4096
#define DP_CONFIG_QUEUE_DEPTH_MAX 4096u /* <= DP_IO_DEPTH_MAX (main.c asserts it) */

struct dp_config {
	/* [daemon] */
	char socket[DP_CONFIG_STR_MAX];
	char socket_group[256];	 /* group owning the socket; "" = the daemon's */
	char admin_group[256];	 /* may Drain/Evict/Shutdown; root always may */
	char state_dir[DP_CONFIG_STR_MAX];
	char log_file[DP_CONFIG_STR_MAX]; /* "" = stderr (journald) */
	char log_level[16];		   /* err, warning, notice, info, debug */
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
	char backend[16];	       /* auto, cpu, cuda */
	uint32_t threads;	       /* cpu backend threads; 0 = all */
	char experts[16];	       /* device, dram, nvme: where routed experts live */
	uint32_t expert_slots;	       /* experts a layer keeps on the device when paged */
	bool expert_lookahead;	       /* nvme: top-k layers' experts guessed and read ahead */
	/* [kvcache] */
	uint64_t device_bytes;
	uint64_t dram_bytes;
	uint64_t nvme_bytes;
	double high_watermark;
	double low_watermark;
	bool direct_io;
	uint32_t compact_every; /* journal compaction after this many commits; 0 = never */
	char csa_entries[16];	/* device, host: where CSA layers' compressed entries live */
	/* [io] */
	uint32_t queue_depth;
	bool sqpoll;
	bool iopoll;
	/* [sched] */
	bool pin_threads;
	uint32_t max_batch_tokens; /* tokens per forward step */
	uint32_t prefill_chunk;	   /* prompt tokens of one request per step */
	uint32_t max_batch;	   /* sequences per step */
	char restore[16];	   /* dualpath, full, recompute: how parked state returns */
	/* [engram] */
	char engram_tables[DP_CONFIG_STR_MAX]; /* .dpe file; "" = none (a model without Engram) */
	char engram_residency[16];	       /* device, dram, nvme */
	uint64_t engram_cache_rows;	       /* hot-row cache entries (dram, nvme) */

	char config_path[DP_CONFIG_STR_MAX];
};

void dp_config_defaults(struct dp_config *c);

/*
 * Read --config (or the default file) and then the flags. Returns 0; 1 when
 * --help or --version was handled (out gets the text); or a negative errno
 * with a message naming the file:line or flag.
 */
int dp_config_load(struct dp_config *c, int argc, char **argv, FILE *out, char *err, size_t err_len);

/* Write the settings in config-file form (for --print-config and logs). */
void dp_config_print(const struct dp_config *c, FILE *f);

#endif /* DP_DAEMON_CONFIG_H */
