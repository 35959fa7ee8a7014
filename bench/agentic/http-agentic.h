/* SPDX-License-Identifier: MIT */
/*
 * bench/agentic/http-agentic.h — agentic-http's stateless player
 * (http-play.c): the trace played over dualpathd's HTTP API with no
 * sessions, the whole history each turn as token ids. Internal to
 * agentic-http; errors are negative errno values with a one-line reason in
 * err; nothing prints.
 */
#ifndef DP_BENCH_AGENTIC_HTTP_AGENTIC_H
#define DP_BENCH_AGENTIC_HTTP_AGENTIC_H

#include "agentic.h"

struct ag_http_play {
	const struct ag_trace *tr;
	const char *addr;  /* the HTTP front: unix:/path or HOST:PORT */
	double idle_scale; /* multiplies each IDLE_MS */
	struct ag_played out; /* as struct ag_play's; tier: NEW for turn 0, else NONE */
};

int ag_http_play_run(struct ag_http_play *p, char *err, size_t err_len);
void ag_http_play_fini(struct ag_http_play *p);

#endif /* DP_BENCH_AGENTIC_HTTP_AGENTIC_H */
