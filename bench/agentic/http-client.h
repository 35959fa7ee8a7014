/* SPDX-License-Identifier: MIT */
/*
 * bench/agentic/http-client.h — the smallest HTTP/1.1 client the benches
 * need to talk to dualpathd's HTTP front from C (agentic-http's stateless
 * player, agentic-stream-http's concurrent streams): a connection over
 * TCP or a Unix socket, a POST written whole, and an incremental response
 * parser fed whatever bytes arrive (status line, headers, then the body
 * de-chunked or by Content-Length), so one thread can drive many
 * connections from an epoll loop as well as one blocking one.
 *
 * Not a general client: no redirects, no TLS, no trailers of interest,
 * one request in flight per connection. Errors are negative errno values;
 * -EPROTO for a response it cannot read.
 */
#ifndef DP_BENCH_AGENTIC_HTTP_CLIENT_H
#define DP_BENCH_AGENTIC_HTTP_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* A growable byte buffer; off: bytes already consumed. */
struct hc_buf {
	char *p;
	size_t len, off, cap;
};
int hc_buf_add(struct hc_buf *b, const void *data, size_t n);
int hc_buf_addf(struct hc_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void hc_buf_fini(struct hc_buf *b);

/* Connect to "unix:/path" or "HOST:PORT" (blocking connect; nonblock then
 * sets O_NONBLOCK). Returns the fd or -errno. */
int hc_connect(const char *addr, bool nonblock);

/* The request bytes of a JSON POST to path, keep-alive, appended to out. */
int hc_post_format(struct hc_buf *out, const char *path, const char *body, size_t len);

/* The response parser. body receives the de-chunked body bytes. */
struct hc_resp {
	int state; /* internal */
	unsigned status;
	bool chunked;
	uint64_t left; /* bytes left of the body (length) or of this chunk */
	struct hc_buf line; /* a status, header or chunk-size line being read */
	struct hc_buf body;
};
void hc_resp_reset(struct hc_resp *r);
void hc_resp_fini(struct hc_resp *r);
/* Feed n bytes; returns 1 once the whole response is in (bytes after it
 * are left: *ret_used says how many were taken), 0 for more, or -EPROTO. */
int hc_resp_feed(struct hc_resp *r, const char *p, size_t n, size_t *ret_used);

/* The next complete line ('\n'-terminated, the '\n' and a '\r' before it
 * cut) of r->body not consumed yet: 1 and *line, *len (valid until the
 * next call or feed), or 0 when no complete line is there. SSE reads as lines. */
int hc_resp_next_line(struct hc_resp *r, const char **line, size_t *len);

/* Blocking: write all of b to fd. */
int hc_write_all(int fd, const char *p, size_t n);

#endif /* DP_BENCH_AGENTIC_HTTP_CLIENT_H */
