/* SPDX-License-Identifier: MIT */
/*
 * daemon/front-internal.h — the front thread's state, shared by its files:
 *
 *   front.c           the thread's loop (epoll over the listening socket,
 *                     the connections and the events ring's eventfd)
 *   front-conn.c      the socket, connections: accept, output, budgets and
 *                     timeouts, close
 *   front-dispatch.c  requests in (decode, check, answer or forward to
 *                     compute) and events out (token chunks, errors, acks)
 *   front-metrics.c   the Stats reply: every metric, rendered
 *
 * Everything here runs on the front thread only.
 */
#ifndef DP_DAEMON_FRONT_INTERNAL_H
#define DP_DAEMON_FRONT_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "daemon/server.h"
#include "model/conv.h"

#define DP_CONN_OUT_MAX (16u << 20)
#define TAG_LISTEN 1u
#define TAG_EVENTS 2u
#define TAG_CONN 3u

struct freq { /* a Generate in flight */
	uint64_t request_id;
	bool return_text;
	struct dp_tok_stream ts;
	struct dp_conv_stream *chat; /* a chat prompt's output parser, or NULL */
};

struct conn {
	int fd;
	uint32_t gen;
	bool open, hello, admin, want_out;
	bool rd_eof;	  /* the client shut down its side: finish what it asked, then close */
	uint32_t pending; /* forwarded requests whose final answer has not come back yet */
	uint64_t opened_ns, active_ns; /* accepted; last byte in or out */
	size_t held;	  /* memory it holds (output queue + input buffer), in f->held */
	uid_t uid;
	pid_t pid;
	struct dp_frame_reader *rd;
	struct dp_frame_buf out;
	struct freq *reqs;
	uint32_t n_reqs, cap_reqs;
	char name[64];
};

struct front {
	struct dp_server *srv;
	int ep;
	struct conn *conns;
	uint32_t n_open;
	uint64_t accepted, frames_in, frames_out, bad_frames, rejected, slow_closes, denied;
	uint64_t overloaded;	  /* requests refused because compute's queue was full */
	uint64_t accept_errors;	  /* accept() failures (EMFILE, ENFILE, ENOMEM...) */
	uint64_t hello_timeouts, idle_closes;
	uint32_t n_admin_open;	  /* open connections of root or admin_group */
	size_t held, held_peak;	  /* bytes all connections hold, and its high-water mark */
	/* accept paused after a failure such as EMFILE, until this time */
	bool accept_paused;
	uint64_t accept_resume_ns;
	uint64_t accept_log_ns, accept_log_skipped; /* rate limit of its log line */
	/* CONN_CLOSED notices that found compute's queue full, oldest first */
	struct dp_msg **closes;
	uint32_t n_closes, cap_closes;
	uint64_t last_sweep_ns;
	struct dp_proto_limits lim;
	char *textbuf;
	size_t textcap;
};

/* front-conn.c */
void front_conn_account(struct front *f, struct conn *c);
void front_enforce_budget(struct front *f);
void front_conn_watch(struct front *f, uint32_t slot);
bool front_conn_finished(const struct conn *c);
void front_conn_flush(struct front *f, uint32_t slot);
void front_conn_close(struct front *f, uint32_t slot);
void front_send_closes(struct front *f);
void front_reply(struct front *f, uint32_t slot, Dualpath__V1__Response *r);
void front_reply_error(struct front *f, uint32_t slot, uint64_t request_id, uint32_t code,
		       const char *msg);
void front_on_accept(struct front *f);
void front_resume_accept(struct front *f, uint64_t now);
void front_sweep(struct front *f, uint64_t now);
void front_on_readable(struct front *f, uint32_t slot);
/* front-dispatch.c */
void front_on_request(struct front *f, uint32_t slot, const uint8_t *body, size_t len);
void front_drain_events(struct front *f);
/* front-metrics.c */
void front_send_stats(struct front *f, uint32_t slot, uint64_t id, const struct dp_compute_stats *s);
/* front-cluster.c: ClusterRequest, answered on the front thread */
void front_on_cluster(struct front *f, uint32_t slot, const Dualpath__V1__Request *req);

#endif /* DP_DAEMON_FRONT_INTERNAL_H */
