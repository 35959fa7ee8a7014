/* SPDX-License-Identifier: MIT */
/*
 * v4ctl/client.h — a small blocking client for dualpathd's Unix socket
 * (protocol dualpath.v1, proto/dualpath.proto; frames per proto/frame.h).
 *
 * Used by v4ctl, the integration tests and bench/socket. One struct
 * dp_client is one connection:
 *
 *	struct dp_client *c;
 *	ret = dp_client_connect(path, timeout_ms, &c);   // socket + connect
 *	ret = dp_client_hello(c, "v4ctl/0.1");           // must come first
 *	Dualpath__V1__Request req = DUALPATH__V1__REQUEST__INIT;
 *	Dualpath__V1__HealthRequest h = DUALPATH__V1__HEALTH_REQUEST__INIT;
 *	req.body_case = DUALPATH__V1__REQUEST__BODY_HEALTH;
 *	req.health = &h;
 *	ret = dp_client_call(c, &req, &resp);            // send, wait for its reply
 *	...
 *	dp_proto_response_free(resp);
 *	dp_client_free(c);
 *
 * Multiplexing: every request gets a fresh nonzero request_id (the caller's
 * when it set one). dp_client_recv_id() waits for a response to one id and
 * keeps responses to other ids, in arrival order, for later
 * dp_client_recv() / dp_client_recv_id() calls. A response with
 * request_id 0 is the daemon talking about the connection itself (e.g.
 * "too many connections" before it hangs up): it answers every wait.
 *
 * Errors are negative errno values:
 *   connect:   -errno of socket(2)/connect(2) (-ENOENT: no socket there,
 *              -ECONNREFUSED: nobody listens, -EACCES: socket permissions),
 *              -ENAMETOOLONG for a path that does not fit sockaddr_un;
 *   I/O:       -ETIMEDOUT (no whole response within the timeout),
 *              -ECONNRESET / -EPIPE (the daemon closed the connection),
 *              -EMSGSIZE, -EPROTO, -EBADMSG, -EILSEQ (broken frame or
 *              message: the connection is unusable after these);
 *   hello:     -EREMOTEIO when the daemon answered with an Error
 *              (dp_client_last_error() says which), -EPROTO for another
 *              unexpected reply.
 * After any I/O error but -ETIMEDOUT the connection is lost: free it.
 *
 * The library never logs or prints. Threads: a struct dp_client belongs to
 * one thread at a time; distinct clients are independent.
 */
#ifndef DP_V4CTL_CLIENT_H
#define DP_V4CTL_CLIENT_H

#include <stdbool.h>
#include <stdint.h>

#include "proto/frame.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The default socket path, and the environment variable that overrides it. */
#define DP_CLIENT_SOCKET_DEFAULT "/run/dualpath/dualpathd.sock"
#define DP_CLIENT_SOCKET_ENV     "DUALPATH_SOCKET"
/* The default wait for one response, in ms. */
#define DP_CLIENT_TIMEOUT_DEFAULT 30000

struct dp_client;

/* $DUALPATH_SOCKET if set and not empty, else DP_CLIENT_SOCKET_DEFAULT. */
const char *dp_client_default_socket(void);

/*
 * Connect to the daemon's socket at path. timeout_ms is the default wait
 * for one response (dp_client_call, dp_client_hello; < 0 or 0: no limit)
 * and bounds the connect itself. Returns 0 and *ret_client, or -errno as
 * above; -EINVAL for bad arguments, -ENOMEM.
 */
int dp_client_connect(const char *path, int timeout_ms, struct dp_client **ret_client);
/* Close the connection and free everything; accepts NULL. */
void dp_client_free(struct dp_client *c);

/*
 * Say Hello (protocol version DP_PROTO_VERSION) and wait for HelloReply,
 * which dp_client_server() returns from then on. client_name may be NULL.
 * Returns 0, -EREMOTEIO (an Error reply: see dp_client_last_error()), or an
 * I/O error.
 */
int dp_client_hello(struct dp_client *c, const char *client_name);
/* The daemon's HelloReply, or NULL before a successful hello. Owned by c. */
const Dualpath__V1__HelloReply *dp_client_server(const struct dp_client *c);

/* The socket (to poll(2) on it beside other fds). */
int dp_client_fd(const struct dp_client *c);
/* The path given to connect. */
const char *dp_client_path(const struct dp_client *c);
/* True when responses are kept from earlier waits (poll would not see them). */
bool dp_client_has_pending(const struct dp_client *c);

/* A fresh nonzero request id. */
uint64_t dp_client_next_id(struct dp_client *c);

/*
 * Send a request. A request_id of 0 is replaced by dp_client_next_id();
 * either way req->request_id holds the id sent. Returns 0 or -errno (the
 * write is bounded by the default timeout).
 */
int dp_client_send(struct dp_client *c, Dualpath__V1__Request *req);

/*
 * The next response, kept ones first; waits at most timeout_ms (< 0: no
 * limit). On success *ret_resp is the caller's (dp_proto_response_free).
 */
int dp_client_recv(struct dp_client *c, int timeout_ms, Dualpath__V1__Response **ret_resp);

/* The next response to request id (or with request_id 0); others are kept.
 * timeout_ms bounds the whole wait (< 0: no limit). */
int dp_client_recv_id(struct dp_client *c, uint64_t id, int timeout_ms,
                      Dualpath__V1__Response **ret_resp);

/*
 * dp_client_send() then dp_client_recv_id() with the default timeout. The
 * response may be an Error: dp_client_call() returns 0 whatever the body,
 * and records an Error's code and message for dp_client_last_error().
 */
int dp_client_call(struct dp_client *c, Dualpath__V1__Request *req,
                   Dualpath__V1__Response **ret_resp);

/*
 * The last Error response seen by hello, call or recv*: its code, and its
 * message in *ret_message (owned by c, valid until the next call on c; ""
 * if none). Returns DUALPATH__V1__CODE__OK if none was seen.
 */
Dualpath__V1__Code dp_client_last_error(const struct dp_client *c, const char **ret_message);

/* The code's name as in dualpath.proto ("INVALID_ARGUMENT",
 * "PERMISSION_DENIED"...); "UNKNOWN" for a code this version does not know.
 * Never NULL. */
const char *dp_client_code_name(Dualpath__V1__Code code);

#ifdef __cplusplus
}
#endif

#endif /* DP_V4CTL_CLIENT_H */
