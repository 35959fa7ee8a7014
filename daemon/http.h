/* SPDX-License-Identifier: MIT */
/*
 * daemon/http.h — the OpenAI-compatible HTTP front: a thread of dualpathd
 * beside the socket front, on when [http] listen (--http) is set.
 *
 *   HTTP clients --> [http thread: libmicrohttpd, external epoll loop]
 *        --MPSC ring (struct dp_msg *)--> [compute]
 *        <--SPSC ring srv->to_http (struct dp_event)-- [compute]
 *
 * One thread serves every connection: a request waiting for compute is a
 * suspended libmicrohttpd connection, resumed when its events arrive, so a
 * token stream holds no thread and the compute thread never waits on HTTP.
 * Requests it forwards carry origins with DP_ORIGIN_HTTP set (server.h).
 *
 * Endpoints: POST /v1/chat/completions, /v1/completions, /tokenize,
 * /detokenize; GET /v1/models, /health, /metrics. Admin operations (drain,
 * evict, shutdown) stay on the Unix socket.
 *
 * Call order (main thread): dp_http_init before compute starts (it binds the
 * address and reads the key file: errors name them), dp_http_main as the
 * thread, dp_http_free after it is joined.
 */
#ifndef DP_DAEMON_HTTP_H
#define DP_DAEMON_HTTP_H

#include <stddef.h>

struct dp_server;

int dp_http_init(struct dp_server *srv, char *err, size_t err_len);
void *dp_http_main(void *arg);
void dp_http_free(struct dp_server *srv);

#endif /* DP_DAEMON_HTTP_H */
