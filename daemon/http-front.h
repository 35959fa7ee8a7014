/* SPDX-License-Identifier: MIT */
/*
 * daemon/http-front.h — the HTTP thread's state, shared by its files:
 *
 *   http.c      the thread: listening address, keys, MHD in our epoll loop
 *   http-gen.c  the routes: requests in, compute's events out (SSE chunks,
 *               whole responses), metrics
 *
 * Everything here runs on the HTTP thread only (dp_http_init: main thread,
 * before it starts).
 */
#ifndef DP_DAEMON_HTTP_FRONT_H
#define DP_DAEMON_HTTP_FRONT_H

#include <microhttpd.h>
#include <stdbool.h>
#include <stdint.h>

#include "daemon/http-parse.h"
#include "daemon/http.h"
#include "daemon/server.h"

#define DP_HTTP_KEY_MAX 512

struct hreq;

/* A request waiting for compute holds a slot; its origin is
 * DP_ORIGIN_HTTP | slot with the slot's generation, bumped at release, so
 * that events of a finished (or cancelled) request find no one. */
struct hslot {
	struct hreq *r;
	uint32_t gen;
};

struct dp_http {
	struct dp_server *srv;
	struct MHD_Daemon *d;
	int ep, listen_fd;
	bool is_unix;
	char **keys;
	size_t n_keys;
	struct hslot *slots; /* cfg.http_max_requests */
	uint32_t n_busy;
	uint64_t next_rid;
	char model_name[256];
	struct dp_http_limits lim;
	struct dp_http_buf scratch;
	/* counters for /metrics */
	uint64_t requests, refused_busy, refused_auth, client_errors, server_errors, disconnects,
		cut_slow, streams;
	struct dp_http_hist ttft, itl;
};

/* http.c */
bool http_key_ok(const struct dp_http *h, const char *authorization);
/* http-gen.c */
enum MHD_Result http_on_request(void *cls, struct MHD_Connection *c, const char *url,
				const char *method, const char *version, const char *upload,
				size_t *upload_size, void **con_cls);
void http_on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
		       enum MHD_RequestTerminationCode toe);
void http_drain_events(struct dp_http *h);
void http_tick(struct dp_http *h, uint64_t now);
void http_stop_all(struct dp_http *h);

#endif /* DP_DAEMON_HTTP_FRONT_H */
