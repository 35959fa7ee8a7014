/* SPDX-License-Identifier: MIT */
/*
 * v4ctl/v4ctl.h — what v4ctl's command files share: the global options,
 * exit codes, option parsing helpers and the message helpers that turn
 * client errors into one actionable line on stderr.
 */
#ifndef DP_V4CTL_V4CTL_H
#define DP_V4CTL_V4CTL_H

#include <getopt.h>
#include <stdbool.h>
#include <stdint.h>

#include "v4ctl/client.h"

/* Exit codes (documented in main.c and `v4ctl --help`). */
enum dp_v4ctl_exit {
	DP_V4CTL_EXIT_OK = 0,
	DP_V4CTL_EXIT_DAEMON_ERROR = 1,  /* the daemon answered Error */
	DP_V4CTL_EXIT_USAGE = 2,         /* bad command line */
	DP_V4CTL_EXIT_CONNECT = 3,       /* cannot connect to the socket */
	DP_V4CTL_EXIT_PROTOCOL = 4,      /* protocol, timeout or I/O error */
	DP_V4CTL_EXIT_NOT_SERVING = 5,   /* health: the daemon is not SERVING */
	DP_V4CTL_EXIT_INTERRUPTED = 130, /* generate: cancelled by Ctrl-C */
};

/* Global settings, from the options before or after the command. */
struct dp_v4ctl {
	const char *socket;
	int timeout_ms;   /* one response; -1: no limit */
	bool timeout_set; /* --timeout given (generate defaults to no limit) */
};

/* Long options every command accepts; a command's table starts with these
 * (DP_V4CTL_COMMON_OPTS) and its getopt string with DP_V4CTL_COMMON_SHORT. */
enum {
	DP_V4CTL_OPT_SOCKET = 0x100,
	DP_V4CTL_OPT_TIMEOUT,
	DP_V4CTL_OPT_TEMPERATURE, /* the sampling options (DP_V4CTL_SAMPLING_OPTS) */
	DP_V4CTL_OPT_TOP_K,
	DP_V4CTL_OPT_TOP_P,
	DP_V4CTL_OPT_SEED,
	DP_V4CTL_OPT_FIRST_COMMAND, /* commands number their own options from here */
};
#define DP_V4CTL_COMMON_OPTS                                                                       \
	{"socket", required_argument, NULL, DP_V4CTL_OPT_SOCKET},                                  \
	    {"timeout", required_argument, NULL, DP_V4CTL_OPT_TIMEOUT},                            \
	{                                                                                          \
		"help", no_argument, NULL, 'h'                                                     \
	}
#define DP_V4CTL_COMMON_SHORT "h"

/* The sampling options of the commands that generate (generate, chat): a
 * command's table lists DP_V4CTL_SAMPLING_OPTS and its usage
 * DP_V4CTL_SAMPLING_USAGE; dp_v4ctl_sampling_opt takes them. */
#define DP_V4CTL_SAMPLING_OPTS                                                                     \
	{"temperature", required_argument, NULL, DP_V4CTL_OPT_TEMPERATURE},                        \
	    {"top-k", required_argument, NULL, DP_V4CTL_OPT_TOP_K},                                \
	    {"top-p", required_argument, NULL, DP_V4CTL_OPT_TOP_P},                                \
	{                                                                                          \
		"seed", required_argument, NULL, DP_V4CTL_OPT_SEED                                 \
	}
#define DP_V4CTL_SAMPLING_USAGE                                                                    \
	"  --temperature T     0 (default) is greedy\n"                                           \
	"  --top-k K           sample among the K likeliest (0: off)\n"                           \
	"  --top-p P           nucleus sampling (0 or 1: off)\n"                                  \
	"  --seed S            sampling seed\n"

struct dp_v4ctl_sampling {
	float temperature, top_p;
	uint64_t top_k, seed;
	bool any; /* an option was given: the request carries Sampling */
};
/* 1 when opt is a sampling option (taken), 0 when it is not, -1 after
 * printing a usage error. */
int dp_v4ctl_sampling_opt(struct dp_v4ctl_sampling *s, int opt, const char *arg);
/* The request's Sampling from s (stop ids are the caller's); NULL when no
 * option was given (the daemon's default: greedy). */
Dualpath__V1__Sampling *dp_v4ctl_sampling_fill(const struct dp_v4ctl_sampling *s,
                                               Dualpath__V1__Sampling *ret);

/*
 * Handle a common option (opt as getopt_long returned it). Returns 1 when
 * handled, 0 when opt is not a common one, or -1 after printing a usage
 * error. 'h' prints usage (the command's) and exits 0.
 */
int dp_v4ctl_common_opt(struct dp_v4ctl *ctl, int opt, const char *arg, const char *usage);
/* For '?' and unknown options: point at --help; returns DP_V4CTL_EXIT_USAGE. */
int dp_v4ctl_usage_error(const char *cmd, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Parse an unsigned number in [min, max]; prints a usage error naming opt. */
int dp_v4ctl_parse_u64(const char *opt, const char *arg, uint64_t min, uint64_t max, uint64_t *ret);
int dp_v4ctl_parse_float(const char *opt, const char *arg, float min, float max, float *ret);
/* "1,2,3" -> ids (malloc'd, *ret_n of them, at most max). */
int dp_v4ctl_parse_ids(const char *opt, const char *arg, uint32_t max, uint32_t **ret_ids,
                       size_t *ret_n);

/*
 * Connect and say Hello, printing what went wrong (with the socket path
 * and a hint) on failure. Returns DP_V4CTL_EXIT_OK and *ret_client, or the
 * exit code to leave with.
 */
int dp_v4ctl_open(const struct dp_v4ctl *ctl, struct dp_client **ret_client);

/*
 * Send req and wait for its response; the expected body case is
 * want (an Error reply or an I/O error is printed, and its exit code
 * returned). Returns DP_V4CTL_EXIT_OK and *ret_resp (the caller frees).
 */
int dp_v4ctl_call(const struct dp_v4ctl *ctl, struct dp_client *c, Dualpath__V1__Request *req,
                  Dualpath__V1__Response__BodyCase want, Dualpath__V1__Response **ret_resp);

/* Print an Error response as "v4ctl: CODE: message" plus a hint where one
 * helps; returns DP_V4CTL_EXIT_DAEMON_ERROR. */
int dp_v4ctl_print_error(const Dualpath__V1__Error *e, const char *what);
/* Print a client I/O error (ret < 0) while doing what; returns the exit code. */
int dp_v4ctl_print_io_error(const struct dp_v4ctl *ctl, struct dp_client *c, int ret,
                            const char *what);

/* Commands: argc/argv start at the command name. Each returns an exit code. */
int dp_v4ctl_generate(struct dp_v4ctl *ctl, int argc, char **argv);
int dp_v4ctl_chat(struct dp_v4ctl *ctl, int argc, char **argv);
int dp_v4ctl_stats(struct dp_v4ctl *ctl, int argc, char **argv);
int dp_v4ctl_sessions(struct dp_v4ctl *ctl, int argc, char **argv);
int dp_v4ctl_health(struct dp_v4ctl *ctl, int argc, char **argv);
int dp_v4ctl_drain(struct dp_v4ctl *ctl, int argc, char **argv);
int dp_v4ctl_evict(struct dp_v4ctl *ctl, int argc, char **argv);
int dp_v4ctl_close(struct dp_v4ctl *ctl, int argc, char **argv);
int dp_v4ctl_shutdown(struct dp_v4ctl *ctl, int argc, char **argv);
int dp_v4ctl_trace(struct dp_v4ctl *ctl, int argc, char **argv);
int dp_v4ctl_cluster(struct dp_v4ctl *ctl, int argc, char **argv);

/* Human formats: "1.5 MiB", "3m12s" (into buf, returns buf). */
const char *dp_v4ctl_fmt_bytes(uint64_t bytes, char *buf, size_t len);
const char *dp_v4ctl_fmt_ms(uint64_t ms, char *buf, size_t len);

#endif /* DP_V4CTL_V4CTL_H */
