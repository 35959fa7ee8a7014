/* SPDX-License-Identifier: MIT */
/*
 * bench/agentic/stream.h — what agentic-stream-socket and
 * agentic-stream-http share: their command line (the same streams asked
 * the same way of either front), the clock and the one line they print.
 * Internal to those two programs.
 */
#ifndef DP_BENCH_AGENTIC_STREAM_H
#define DP_BENCH_AGENTIC_STREAM_H

#include <stddef.h>
#include <stdint.h>

#define STREAM_MAX_IDS 4096

struct stream_opts {
	const char *addr; /* the front: --socket PATH, or --http ADDR */
	unsigned streams, tokens;
	uint32_t ids[STREAM_MAX_IDS]; /* --prompt */
	size_t n_ids;
};

/* --ADDR_OPT A --streams C --tokens N --prompt ID,ID,...; addr_what names
 * A's form in the usage. 0, or an exit status (2) after saying what is
 * wrong on stderr. */
int stream_opts_parse(struct stream_opts *o, int argc, char **argv, const char *addr_opt,
                      const char *addr_what);

/* CLOCK_MONOTONIC, seconds */
double stream_now_s(void);

/* streams=C tokens=T wall_s=S tok_s=R ttft_p50_ms=X ttft_p99_ms=Y on stdout;
 * ttft[streams] (seconds) is sorted here. */
void stream_print(unsigned streams, uint64_t got, double wall_s, double *ttft);

#endif /* DP_BENCH_AGENTIC_STREAM_H */
