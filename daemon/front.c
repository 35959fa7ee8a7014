/* SPDX-License-Identifier: MIT */
/*
 * The front thread: the Unix socket, the connections, frames in and out.
 *
 * A connection must say Hello first. Each frame is decoded and checked
 * (proto/frame.h); a frame that is not a valid Request (bad length, bad
 * protobuf, a broken UTF-8 string) closes that connection only; a valid
 * Request that breaks a rule gets an Error and the connection stays. Admin
 * requests need root or the admin group (SO_PEERCRED / SO_PEERGROUPS).
 * A client that stops reading is cut off once DP_CONN_OUT_MAX bytes of
 * responses wait for it.
 */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include "daemon/log.h"
#include "daemon/server.h"

#define DP_CONN_OUT_MAX (16u << 20)
#define TAG_LISTEN 1u
#define TAG_EVENTS 2u
#define TAG_CONN 3u

struct freq { /* a Generate in flight */
	uint64_t request_id;
	bool return_text;
	struct dp_tok_stream ts;
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

/* ---- the listening socket ------------------------------------------------------ */

static int make_socket(struct dp_server *srv, char *err, size_t err_len)
{
	const char *path = srv->cfg.socket;
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct stat st;

	if (strlen(path) >= sizeof(sa.sun_path)) {
		snprintf(err, err_len, "socket path %s is longer than %zu bytes", path,
			 sizeof(sa.sun_path) - 1);
		return -ENAMETOOLONG;
	}
	memcpy(sa.sun_path, path, strlen(path) + 1);
	if (lstat(path, &st) == 0) {
		if (!S_ISSOCK(st.st_mode)) {
			snprintf(err, err_len, "%s exists and is not a socket; not touching it", path);
			return -EEXIST;
		}
		int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (probe >= 0 && connect(probe, (struct sockaddr *)&sa, sizeof(sa)) == 0) {
			close(probe);
			snprintf(err, err_len, "%s is in use by a running daemon", path);
			return -EADDRINUSE;
		}
		if (probe >= 0)
			close(probe);
		unlink(path); /* a stale socket of a dead daemon */
	}
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	mode_t old = umask(0117); /* the socket is born 0660 */
	int r = bind(fd, (struct sockaddr *)&sa, sizeof(sa));
	umask(old);
	if (r < 0) {
		r = -errno;
		snprintf(err, err_len, "cannot bind %s: %s", path, strerror(-r));
		close(fd);
		return r;
	}
	if (srv->cfg.socket_group[0]) {
		struct group *g = getgrnam(srv->cfg.socket_group);
		if (!g || chown(path, (uid_t)-1, g->gr_gid) < 0) {
			r = g ? -errno : -ENOENT;
			snprintf(err, err_len, "cannot give %s to group %s: %s", path,
				 srv->cfg.socket_group, g ? strerror(-r) : "no such group");
			close(fd);
			unlink(path);
			return r;
		}
	}
	if (chmod(path, 0660) < 0 || listen(fd, 128) < 0) {
		r = -errno;
		snprintf(err, err_len, "cannot listen on %s: %s", path, strerror(-r));
		close(fd);
		unlink(path);
		return r;
	}
	return fd;
}

int dp_front_init(struct dp_server *srv, char *err, size_t err_len)
{
	int n = sd_listen_fds(1);
	if (n > 1) {
		snprintf(err, err_len, "socket activation passed %d sockets; dualpathd takes one", n);
		return -EINVAL;
	}
	if (n == 1) {
		int fd = SD_LISTEN_FDS_START;
		if (sd_is_socket_unix(fd, SOCK_STREAM, 1, NULL, 0) <= 0) {
			snprintf(err, err_len, "the activated fd is not a listening Unix stream socket");
			return -EINVAL;
		}
		fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
		fcntl(fd, F_SETFD, FD_CLOEXEC);
		srv->listen_fd = fd;
		srv->socket_activated = true;
		return 0;
	}
	int fd = make_socket(srv, err, err_len);
	if (fd < 0)
		return fd;
	srv->listen_fd = fd;
	return 0;
}

/* ---- output -------------------------------------------------------------------- */

static void conn_close(struct front *f, uint32_t slot);

/* Keep f->held equal to what the open connections hold. */
static void conn_account(struct front *f, struct conn *c)
{
	size_t now = c->open ? c->out.cap + dp_frame_reader_capacity(c->rd) : 0;
	f->held = f->held - c->held + now;
	c->held = now;
	if (f->held > f->held_peak)
		f->held_peak = f->held;
}

/* Over client_buffer_bytes: close the connections holding most until under.
 * The one that holds most is the one that reads (or sends) slowest. */
static void enforce_budget(struct front *f)
{
	while (f->held > f->srv->cfg.client_buffer_bytes) {
		uint32_t worst = UINT32_MAX;
		for (uint32_t i = 0; i < f->srv->cfg.max_connections; i++)
			if (f->conns[i].open && (worst == UINT32_MAX || f->conns[i].held > f->conns[worst].held))
				worst = i;
		if (worst == UINT32_MAX)
			return;
		log_warning("connection %s holds %zu bytes (%zu unread responses), the most while all "
			    "connections hold %zu, beyond client_buffer_bytes; closing it",
			    f->conns[worst].name, f->conns[worst].held, f->conns[worst].out.len, f->held);
		f->slow_closes++;
		conn_close(f, worst);
	}
}

/* The epoll events a connection waits for: input until the client shut its
 * side down, output while responses wait. */
static void conn_watch(struct front *f, uint32_t slot)
{
	struct conn *c = &f->conns[slot];
	struct epoll_event ev = { .events = (c->rd_eof ? 0 : EPOLLIN | EPOLLRDHUP) |
					    (c->want_out ? EPOLLOUT : 0),
				  .data.u64 = ((uint64_t)slot << 8) | TAG_CONN };
	epoll_ctl(f->ep, EPOLL_CTL_MOD, c->fd, &ev);
}

/* A half-closed connection closes once its last answer is out. */
static bool conn_finished(const struct conn *c)
{
	return c->open && c->rd_eof && !c->pending && !c->out.len;
}

static void conn_flush(struct front *f, uint32_t slot)
{
	struct conn *c = &f->conns[slot];
	while (c->out.len) {
		ssize_t n = send(c->fd, c->out.data, c->out.len, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				break;
			conn_close(f, slot);
			return;
		}
		dp_frame_buf_consume(&c->out, (size_t)n);
		c->active_ns = dp_now_ns();
	}
	if (!c->out.len && c->out.cap > (64u << 10)) /* drop what a burst grew */
		dp_frame_buf_fini(&c->out);
	conn_account(f, c);
	if (conn_finished(c)) {
		conn_close(f, slot);
		return;
	}
	bool want = c->out.len > 0;
	if (want != c->want_out) {
		c->want_out = want;
		conn_watch(f, slot);
	}
}

static void reply(struct front *f, uint32_t slot, Dualpath__V1__Response *r)
{
	struct conn *c = &f->conns[slot];
	if (!c->open)
		return;
	int ret = dp_frame_append(&c->out, &r->base, DP_FRAME_MAX_LIMIT);
	if (ret < 0) {
		log_warning("connection %s: cannot encode a response: %s", c->name, strerror(-ret));
		return;
	}
	f->frames_out++;
	if (c->out.len > DP_CONN_OUT_MAX) {
		log_warning("connection %s: %zu bytes of responses unread; closing it", c->name, c->out.len);
		f->slow_closes++;
		conn_close(f, slot);
		return;
	}
	conn_flush(f, slot);
	if (c->open)
		enforce_budget(f);
}

static void reply_error(struct front *f, uint32_t slot, uint64_t request_id, uint32_t code,
			const char *msg)
{
	Dualpath__V1__Error e = DUALPATH__V1__ERROR__INIT;
	Dualpath__V1__Response r = DUALPATH__V1__RESPONSE__INIT;
	e.code = (Dualpath__V1__Code)code;
	e.message = (char *)msg;
	r.request_id = request_id;
	r.body_case = DUALPATH__V1__RESPONSE__BODY_ERROR;
	r.error = &e;
	reply(f, slot, &r);
}

/* ---- connections ------------------------------------------------------------- */

static struct freq *freq_find(struct conn *c, uint64_t id)
{
	for (uint32_t i = 0; i < c->n_reqs; i++)
		if (c->reqs[i].request_id == id)
			return &c->reqs[i];
	return NULL;
}

static void freq_remove(struct conn *c, struct freq *q)
{
	*q = c->reqs[--c->n_reqs];
}

/* Hand the CONN_CLOSED notices that waited to compute, in order. The front
 * never waits for room in compute's queue: compute may itself be waiting
 * for the front to drain the events queue (see compute.c's outbox). */
static void send_closes(struct front *f)
{
	uint32_t sent = 0;
	while (sent < f->n_closes && dp_server_send(f->srv, f->closes[sent]) == 0)
		sent++;
	if (sent) {
		memmove(f->closes, f->closes + sent, (f->n_closes - sent) * sizeof(*f->closes));
		f->n_closes -= sent;
	}
}

static void conn_close(struct front *f, uint32_t slot)
{
	struct conn *c = &f->conns[slot];
	if (!c->open)
		return;
	epoll_ctl(f->ep, EPOLL_CTL_DEL, c->fd, NULL);
	close(c->fd);
	c->open = false;
	f->n_open--;
	if (c->admin)
		f->n_admin_open--;
	dp_frame_reader_free(c->rd);
	c->rd = NULL;
	dp_frame_buf_fini(&c->out);
	conn_account(f, c);
	free(c->reqs);
	c->reqs = NULL;
	c->n_reqs = c->cap_reqs = 0;
	/* compute cancels what it still runs for this connection; the
	 * notice carries the generation, so the slot can be reused at once */
	struct dp_msg *m = calloc(1, sizeof(*m));
	if (m) {
		m->kind = DP_MSG_CONN_CLOSED;
		m->from = (struct dp_origin){ slot, c->gen };
		if (f->n_closes || dp_server_send(f->srv, m) < 0) {
			if (f->n_closes == f->cap_closes) {
				uint32_t cap = f->cap_closes ? 2 * f->cap_closes : 64;
				struct dp_msg **q = realloc(f->closes, cap * sizeof(*q));
				if (q) {
					f->closes = q;
					f->cap_closes = cap;
				}
			}
			if (f->n_closes < f->cap_closes)
				f->closes[f->n_closes++] = m;
			else
				free(m); /* no memory: its requests run to their end unread */
		}
	}
	c->gen++;
}

static bool in_group(int fd, gid_t want, gid_t primary)
{
	if (primary == want)
		return true;
	gid_t groups[256];
	socklen_t len = sizeof(groups);
	if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups, &len) < 0)
		return false;
	for (size_t i = 0; i < len / sizeof(gid_t); i++)
		if (groups[i] == want)
			return true;
	return false;
}

/* Refuse a connection with a reason, before hanging up. */
static void refuse(struct front *f, int fd, const char *why)
{
	Dualpath__V1__Error e = DUALPATH__V1__ERROR__INIT;
	Dualpath__V1__Response r = DUALPATH__V1__RESPONSE__INIT;
	uint8_t buf[256];
	size_t len;
	e.code = DUALPATH__V1__CODE__RESOURCE_EXHAUSTED;
	e.message = (char *)why;
	r.body_case = DUALPATH__V1__RESPONSE__BODY_ERROR;
	r.error = &e;
	if (dp_frame_encode(&r.base, sizeof(buf), buf, sizeof(buf), &len) == 0)
		(void)!send(fd, buf, len, MSG_NOSIGNAL | MSG_DONTWAIT);
	close(fd);
	f->rejected++;
}

#define ACCEPT_BACKOFF_NS (100ull * 1000000)
#define ACCEPT_LOG_EVERY_NS (10ull * 1000000000)

/*
 * accept() failed for want of a resource (EMFILE, ENFILE, ENOBUFS, ENOMEM):
 * the pending connection stays in the backlog and the listening socket stays
 * readable, so retrying at once would spin. Stop watching it for a while and
 * say so at most every 10 s.
 */
static void pause_accept(struct front *f, int err)
{
	uint64_t now = dp_now_ns();
	f->accept_errors++;
	if (!f->accept_paused) {
		epoll_ctl(f->ep, EPOLL_CTL_DEL, f->srv->listen_fd, NULL);
		f->accept_paused = true;
	}
	f->accept_resume_ns = now + ACCEPT_BACKOFF_NS;
	if (now >= f->accept_log_ns) {
		log_warning("accept: %s (%u connections open); not accepting for %llu ms%s", strerror(err),
			    f->n_open, ACCEPT_BACKOFF_NS / 1000000,
			    f->accept_log_skipped ? " (the same happened again meanwhile, not logged)" : "");
		f->accept_log_ns = now + ACCEPT_LOG_EVERY_NS;
		f->accept_log_skipped = 0;
	} else {
		f->accept_log_skipped++;
	}
}

static void resume_accept(struct front *f, uint64_t now)
{
	if (!f->accept_paused || now < f->accept_resume_ns)
		return;
	struct epoll_event ev = { .events = EPOLLIN, .data.u64 = TAG_LISTEN };
	if (epoll_ctl(f->ep, EPOLL_CTL_ADD, f->srv->listen_fd, &ev) == 0)
		f->accept_paused = false;
}

static void on_accept(struct front *f)
{
	const struct dp_config *cfg = &f->srv->cfg;
	for (;;) {
		int fd = accept4(f->srv->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0) {
			int e = errno;
			if (e == EMFILE || e == ENFILE || e == ENOBUFS || e == ENOMEM)
				pause_accept(f, e);
			else if (e != EAGAIN && e != EWOULDBLOCK && e != EINTR && e != ECONNABORTED)
				log_warning("accept: %s", strerror(e));
			return;
		}
		struct ucred cred = { .pid = 0, .uid = (uid_t)-1, .gid = (gid_t)-1 };
		socklen_t cl = sizeof(cred);
		bool admin = false;
		if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &cl) == 0)
			admin = cred.uid == 0 ||
				(f->srv->have_admin_gid && in_group(fd, f->srv->admin_gid, cred.gid));
		/* the last admin_connections slots are for root and admin_group */
		uint32_t others = f->n_open - f->n_admin_open;
		if (f->n_open >= cfg->max_connections ||
		    (!admin && others >= cfg->max_connections - cfg->admin_connections)) {
			refuse(f, fd, "too many connections (max_connections)");
			continue;
		}
		uint32_t slot = UINT32_MAX;
		for (uint32_t i = 0; i < cfg->max_connections && slot == UINT32_MAX; i++)
			if (!f->conns[i].open)
				slot = i;
		struct conn *c = &f->conns[slot];
		uint32_t gen = c->gen;
		memset(c, 0, sizeof(*c));
		c->gen = gen;
		c->fd = fd;
		c->uid = cred.uid;
		c->pid = cred.pid;
		c->admin = admin;
		c->opened_ns = c->active_ns = dp_now_ns();
		snprintf(c->name, sizeof(c->name), "%u (pid %d, uid %u)", slot, (int)c->pid, (unsigned)c->uid);
		if (dp_frame_reader_new(cfg->max_frame_bytes, &c->rd) < 0) {
			close(fd);
			continue;
		}
		struct epoll_event ev = { .events = EPOLLIN | EPOLLRDHUP,
					  .data.u64 = ((uint64_t)slot << 8) | TAG_CONN };
		if (epoll_ctl(f->ep, EPOLL_CTL_ADD, fd, &ev) < 0) {
			dp_frame_reader_free(c->rd);
			close(fd);
			continue;
		}
		c->open = true;
		f->n_open++;
		if (admin)
			f->n_admin_open++;
		f->accepted++;
		log_debug("connection %s opened", c->name);
	}
}

/* Hello and idle timeouts, checked a few times a second. */
static void sweep(struct front *f, uint64_t now)
{
	const struct dp_config *cfg = &f->srv->cfg;
	if (now - f->last_sweep_ns < 50ull * 1000000)
		return;
	f->last_sweep_ns = now;
	for (uint32_t i = 0; i < cfg->max_connections; i++) {
		struct conn *c = &f->conns[i];
		if (!c->open)
			continue;
		if (!c->hello && now - c->opened_ns > (uint64_t)cfg->hello_timeout_ms * 1000000) {
			log_info("connection %s: no Hello within hello_timeout_ms (%u); closing it", c->name,
				 cfg->hello_timeout_ms);
			f->hello_timeouts++;
			conn_close(f, i);
		} else if (cfg->idle_timeout_ms && !c->pending && !c->out.len &&
			   now - c->active_ns > (uint64_t)cfg->idle_timeout_ms * 1000000) {
			log_debug("connection %s: idle for idle_timeout_ms (%u); closing it", c->name,
				  cfg->idle_timeout_ms);
			f->idle_closes++;
			conn_close(f, i);
		}
	}
}

/* ---- requests ---------------------------------------------------------------- */

static Dualpath__V1__HealthReply__Status health_status(struct dp_server *srv)
{
	switch (atomic_load(&srv->state)) {
	case DP_STATE_SERVING: return DUALPATH__V1__HEALTH_REPLY__STATUS__SERVING;
	case DP_STATE_DRAINING: return DUALPATH__V1__HEALTH_REPLY__STATUS__DRAINING;
	case DP_STATE_STOPPING: return DUALPATH__V1__HEALTH_REPLY__STATUS__STOPPING;
	default: return DUALPATH__V1__HEALTH_REPLY__STATUS__STARTING;
	}
}

static void on_hello(struct front *f, uint32_t slot, const Dualpath__V1__Request *req)
{
	struct dp_server *srv = f->srv;
	struct conn *c = &f->conns[slot];
	Dualpath__V1__HelloReply h = DUALPATH__V1__HELLO_REPLY__INIT;
	Dualpath__V1__Response r = DUALPATH__V1__RESPONSE__INIT;
	uint32_t eos[DP_V4_EOS_MAX + 1];
	for (uint32_t i = 0; i < srv->n_eos; i++)
		eos[i] = (uint32_t)srv->eos[i];
	h.protocol_version = DP_PROTO_VERSION;
	h.server_version = DP_VERSION;
	h.model = srv->cfg.model;
	h.vocab_size = srv->vocab;
	h.max_frame_bytes = srv->cfg.max_frame_bytes;
	h.n_eos_ids = srv->n_eos;
	h.eos_ids = eos;
	h.backend = (char *)dp_gpu_kind_name(dp_gpu_kind_of(srv->gpu));
	r.request_id = req->request_id;
	r.body_case = DUALPATH__V1__RESPONSE__BODY_HELLO;
	r.hello = &h;
	c->hello = true;
	if (req->hello->client_name && req->hello->client_name[0])
		log_debug("connection %s is %s", c->name, req->hello->client_name);
	reply(f, slot, &r);
}

static void on_health(struct front *f, uint32_t slot, uint64_t request_id)
{
	struct dp_server *srv = f->srv;
	Dualpath__V1__HealthReply h = DUALPATH__V1__HEALTH_REPLY__INIT;
	Dualpath__V1__Response r = DUALPATH__V1__RESPONSE__INIT;
	h.status = health_status(srv);
	h.uptime_ms = (dp_now_ns() - srv->start_ns) / 1000000;
	h.backend = (char *)dp_gpu_kind_name(dp_gpu_kind_of(srv->gpu));
	h.sessions = atomic_load_explicit(&srv->n_sessions, memory_order_relaxed);
	h.active_requests = atomic_load_explicit(&srv->n_active, memory_order_relaxed);
	r.request_id = request_id;
	r.body_case = DUALPATH__V1__RESPONSE__BODY_HEALTH;
	r.health = &h;
	reply(f, slot, &r);
}

static struct dp_msg *new_msg(struct front *f, uint32_t slot, enum dp_msg_kind kind, uint64_t id)
{
	struct dp_msg *m = calloc(1, sizeof(*m));
	if (!m) {
		reply_error(f, slot, id, DUALPATH__V1__CODE__RESOURCE_EXHAUSTED, "out of memory");
		return NULL;
	}
	m->kind = kind;
	m->from = (struct dp_origin){ slot, f->conns[slot].gen };
	m->request_id = id;
	return m;
}

/* Hand a request to compute; its final answer comes back as an event. A
 * full queue is refused here, never waited for. */
static void forward(struct front *f, uint32_t slot, struct dp_msg *m)
{
	struct conn *c = &f->conns[slot];
	if (f->n_closes || dp_server_send(f->srv, m) < 0) {
		f->overloaded++;
		struct freq *q = freq_find(c, m->request_id);
		if (q && m->kind == DP_MSG_GENERATE)
			freq_remove(c, q);
		uint64_t id = m->request_id;
		free(m->tokens);
		free(m);
		reply_error(f, slot, id, DUALPATH__V1__CODE__UNAVAILABLE,
			    "the daemon is overloaded (request queue full); retry");
		return;
	}
	c->pending++;
}

static void on_generate(struct front *f, uint32_t slot, const Dualpath__V1__Request *req)
{
	struct dp_server *srv = f->srv;
	struct conn *c = &f->conns[slot];
	const Dualpath__V1__Generate *g = req->generate;

	if (freq_find(c, req->request_id)) {
		reply_error(f, slot, req->request_id, DUALPATH__V1__CODE__ALREADY_EXISTS,
			    "request_id is in use by a running Generate on this connection");
		return;
	}
	if (c->n_reqs >= srv->cfg.max_requests_per_client) {
		char msg[128];
		snprintf(msg, sizeof(msg), "%u requests in flight on this connection, the limit "
			 "(max_requests_per_client)", c->n_reqs);
		reply_error(f, slot, req->request_id, DUALPATH__V1__CODE__RESOURCE_EXHAUSTED, msg);
		return;
	}
	struct dp_msg *m = new_msg(f, slot, DP_MSG_GENERATE, req->request_id);
	if (!m)
		return;
	snprintf(m->session, sizeof(m->session), "%s", g->session_id ? g->session_id : "");
	if (g->prompt_case == DUALPATH__V1__GENERATE__PROMPT_TOKENS) {
		m->n_tokens = (uint32_t)g->tokens->n_ids;
		m->tokens = malloc((m->n_tokens ? m->n_tokens : 1) * sizeof(int32_t));
		for (uint32_t i = 0; m->tokens && i < m->n_tokens; i++)
			m->tokens[i] = (int32_t)g->tokens->ids[i];
	} else {
		size_t len = strlen(g->text);
		size_t cap = dp_tok_encode_bound(srv->tok, len, 0);
		m->tokens = malloc((cap ? cap : 1) * sizeof(int32_t));
		size_t n = 0;
		if (m->tokens && dp_tok_encode(srv->tok, g->text, len, 0, m->tokens, cap, &n) < 0) {
			reply_error(f, slot, req->request_id, DUALPATH__V1__CODE__INVALID_ARGUMENT,
				    "the prompt text cannot be tokenized");
			free(m->tokens);
			free(m);
			return;
		}
		m->n_tokens = (uint32_t)n;
		m->prompt_is_text = true;
		if (n > srv->cfg.max_prompt_tokens) {
			char msg[128];
			snprintf(msg, sizeof(msg), "the prompt is %zu tokens, beyond max_prompt_tokens %u",
				 n, srv->cfg.max_prompt_tokens);
			reply_error(f, slot, req->request_id, DUALPATH__V1__CODE__INVALID_ARGUMENT, msg);
			free(m->tokens);
			free(m);
			return;
		}
	}
	if (!m->tokens) {
		reply_error(f, slot, req->request_id, DUALPATH__V1__CODE__RESOURCE_EXHAUSTED, "out of memory");
		free(m);
		return;
	}
	m->max_new = g->max_new_tokens;
	if (g->sampling) {
		m->sampling.temperature = g->sampling->temperature;
		m->sampling.top_k = g->sampling->top_k > INT32_MAX ? INT32_MAX : (int)g->sampling->top_k;
		m->sampling.top_p = g->sampling->top_p > 0 ? g->sampling->top_p : 1.0f;
		m->sampling.seed = g->sampling->seed;
		m->ignore_eos = g->sampling->ignore_eos;
		m->n_stop = (uint32_t)g->sampling->n_stop_ids;
		for (uint32_t i = 0; i < m->n_stop; i++)
			m->stop[i] = (int32_t)g->sampling->stop_ids[i];
	} else {
		m->sampling.top_p = 1.0f;
	}
	m->t_recv_ns = dp_now_ns();
	if (c->n_reqs == c->cap_reqs) {
		uint32_t cap = c->cap_reqs ? 2 * c->cap_reqs : 4;
		struct freq *q = realloc(c->reqs, cap * sizeof(*q));
		if (!q) {
			reply_error(f, slot, req->request_id, DUALPATH__V1__CODE__RESOURCE_EXHAUSTED, "out of memory");
			free(m->tokens);
			free(m);
			return;
		}
		c->reqs = q;
		c->cap_reqs = cap;
	}
	struct freq *q = &c->reqs[c->n_reqs++];
	q->request_id = req->request_id;
	q->return_text = g->return_text;
	dp_tok_stream_init(&q->ts, DP_TOK_STREAM_UTF8);
	forward(f, slot, m);
}

static void on_request(struct front *f, uint32_t slot, const uint8_t *body, size_t len)
{
	struct dp_server *srv = f->srv;
	struct conn *c = &f->conns[slot];
	Dualpath__V1__Request *req = NULL;
	char msg[256];
	struct dp_proto_fault fault;

	f->frames_in++;
	int ret = dp_proto_request_decode(body, len, 0, &req);
	if (ret < 0) {
		/* not a Request at all: the stream cannot be trusted */
		log_info("connection %s: bad frame (%s); closing it", c->name, strerror(-ret));
		f->bad_frames++;
		conn_close(f, slot);
		return;
	}
	if (dp_proto_request_check(req, &f->lim, &fault, msg, sizeof(msg)) < 0) {
		reply_error(f, slot, req->request_id, fault.code, msg);
		if (fault.rule == DP_PROTO_RULE_VERSION || fault.rule == DP_PROTO_RULE_VERSION_MISSING)
			conn_close(f, slot);
		goto out;
	}
	if (!c->hello && req->body_case != DUALPATH__V1__REQUEST__BODY_HELLO) {
		reply_error(f, slot, req->request_id, DUALPATH__V1__CODE__FAILED_PRECONDITION,
			    "say Hello first (with protocol_version 1)");
		conn_close(f, slot);
		goto out;
	}
	if (dp_proto_request_admin(req) && !c->admin) {
		f->denied++;
		snprintf(msg, sizeof(msg), "%s is for root and group %.128s only", dp_proto_request_name(req),
			 srv->cfg.admin_group);
		reply_error(f, slot, req->request_id, DUALPATH__V1__CODE__PERMISSION_DENIED, msg);
		goto out;
	}
	struct dp_msg *m = NULL;
	switch (req->body_case) {
	case DUALPATH__V1__REQUEST__BODY_HELLO:
		on_hello(f, slot, req);
		break;
	case DUALPATH__V1__REQUEST__BODY_HEALTH:
		on_health(f, slot, req->request_id);
		break;
	case DUALPATH__V1__REQUEST__BODY_GENERATE:
		on_generate(f, slot, req);
		break;
	case DUALPATH__V1__REQUEST__BODY_CANCEL:
		if ((m = new_msg(f, slot, DP_MSG_CANCEL, req->request_id))) {
			m->cancel_target = req->cancel->target_request_id;
			forward(f, slot, m);
		}
		break;
	case DUALPATH__V1__REQUEST__BODY_CLOSE_SESSION:
		if ((m = new_msg(f, slot, DP_MSG_CLOSE_SESSION, req->request_id))) {
			snprintf(m->session, sizeof(m->session), "%s", req->close_session->session_id);
			m->persist = req->close_session->persist;
			forward(f, slot, m);
		}
		break;
	case DUALPATH__V1__REQUEST__BODY_EVICT_SESSION:
		if ((m = new_msg(f, slot, DP_MSG_EVICT, req->request_id))) {
			snprintf(m->session, sizeof(m->session), "%s", req->evict_session->session_id);
			m->drop = req->evict_session->drop;
			forward(f, slot, m);
		}
		break;
	case DUALPATH__V1__REQUEST__BODY_STATS:
		if ((m = new_msg(f, slot, DP_MSG_STATS, req->request_id)))
			forward(f, slot, m);
		break;
	case DUALPATH__V1__REQUEST__BODY_LIST_SESSIONS:
		if ((m = new_msg(f, slot, DP_MSG_SESSIONS, req->request_id)))
			forward(f, slot, m);
		break;
	case DUALPATH__V1__REQUEST__BODY_TRACE:
		if ((m = new_msg(f, slot, DP_MSG_TRACE, req->request_id))) {
			m->trace_max_events = req->trace->max_events;
			forward(f, slot, m);
		}
		break;
	case DUALPATH__V1__REQUEST__BODY_DRAIN:
		if ((m = new_msg(f, slot, DP_MSG_DRAIN, req->request_id))) {
			m->grace_ms = req->drain->grace_ms;
			log_notice("drain requested by connection %s", c->name);
			forward(f, slot, m);
		}
		break;
	case DUALPATH__V1__REQUEST__BODY_SHUTDOWN:
		if ((m = new_msg(f, slot, DP_MSG_SHUTDOWN, req->request_id))) {
			log_notice("shutdown requested by connection %s", c->name);
			forward(f, slot, m);
		}
		break;
	default:
		reply_error(f, slot, req->request_id, DUALPATH__V1__CODE__INVALID_ARGUMENT, "unknown request");
		break;
	}
out:
	dp_proto_request_free(req);
}

static void on_readable(struct front *f, uint32_t slot)
{
	struct conn *c = &f->conns[slot];
	for (int rounds = 0; c->open && !c->rd_eof && rounds < 16; rounds++) {
		int n = dp_frame_reader_read_fd(c->rd, c->fd);
		if (n > 0)
			c->active_ns = dp_now_ns();
		conn_account(f, c);
		const uint8_t *body;
		size_t len;
		int ret = -EAGAIN;
		while (c->open && (ret = dp_frame_reader_next(c->rd, &body, &len)) == 0)
			on_request(f, slot, body, len);
		if (!c->open)
			return;
		if (ret != -EAGAIN) {
			log_info("connection %s: %s; closing it", c->name,
				 ret == -EMSGSIZE ? "frame larger than max_frame_bytes" : "broken framing");
			f->bad_frames++;
			conn_close(f, slot);
			return;
		}
		if (n == 0 && (c->pending || c->out.len)) {
			/* shutdown(SHUT_WR): the client still reads; answer what
			 * it asked, then close (conn_flush, on_event) */
			c->rd_eof = true;
			conn_watch(f, slot);
			return;
		}
		if (n == 0 || (n < 0 && n != -EAGAIN && n != -EINTR)) {
			conn_close(f, slot);
			return;
		}
		if (n == -EAGAIN)
			break;
	}
	if (c->open)
		enforce_budget(f);
}

/* ---- events from compute ------------------------------------------------------ */

static void add_metric(Dualpath__V1__Metric *m, Dualpath__V1__Metric **ptrs, size_t *n,
		       Dualpath__V1__Label *lab, size_t max, const char *name, const char *help,
		       bool counter, double v, const char *lname, const char *lvalue)
{
	if (*n >= max) {
		log_err("internal: more metrics than the reply has room for; %s left out", name);
		return;
	}
	Dualpath__V1__Metric *x = &m[*n];
	dualpath__v1__metric__init(x);
	x->name = (char *)name;
	x->help = (char *)help;
	x->type = counter ? DUALPATH__V1__METRIC_TYPE__METRIC_COUNTER : DUALPATH__V1__METRIC_TYPE__METRIC_GAUGE;
	x->value = v;
	if (lname) {
		dualpath__v1__label__init(&lab[*n]);
		lab[*n].name = (char *)lname;
		lab[*n].value = (char *)lvalue;
		x->n_labels = 1; /* labels pointer set once the arrays are final */
	}
	ptrs[*n] = x;
	(*n)++;
}

static void send_stats(struct front *f, uint32_t slot, uint64_t id, const struct dp_compute_stats *s)
{
	struct dp_server *srv = f->srv;
	enum { MAXM = 128 }; /* room for every metric below (add_metric checks) */
	Dualpath__V1__Metric m[MAXM];
	Dualpath__V1__Metric *ptrs[MAXM];
	Dualpath__V1__Label lab[MAXM];
	Dualpath__V1__Label *labp[MAXM];
	size_t n = 0;
	static const char *const tiers[] = { "device", "dram", "nvme", "none" };
	static const char *const classes[] = { "weights", "state", "scratch" };

#define G(name, help, v) add_metric(m, ptrs, &n, lab, MAXM, name, help, false, (double)(v), NULL, NULL)
#define C(name, help, v) add_metric(m, ptrs, &n, lab, MAXM, name, help, true, (double)(v), NULL, NULL)
#define GL(name, help, v, ln, lv) add_metric(m, ptrs, &n, lab, MAXM, name, help, false, (double)(v), ln, lv)
#define CL(name, help, v, ln, lv) add_metric(m, ptrs, &n, lab, MAXM, name, help, true, (double)(v), ln, lv)
	G("dualpath_uptime_seconds", "seconds since start", (dp_now_ns() - srv->start_ns) / 1e9);
	GL("dualpath_backend_info", "compute backend", 1, "backend", s->backend);
	G("dualpath_draining", "1 while draining", s->draining);
	G("dualpath_connections", "open client connections", f->n_open);
	C("dualpath_connections_total", "connections accepted", f->accepted);
	C("dualpath_frames_in_total", "request frames received", f->frames_in);
	C("dualpath_frames_out_total", "response frames sent", f->frames_out);
	C("dualpath_bad_frames_total", "connections closed for a bad frame", f->bad_frames);
	C("dualpath_permission_denied_total", "admin requests refused", f->denied);
	C("dualpath_slow_client_closes_total", "connections closed for not reading", f->slow_closes);
	C("dualpath_connections_refused_total", "connections refused (max_connections)", f->rejected);
	C("dualpath_accept_errors_total", "accept() failures (out of file descriptors...), each "
	  "pausing accept for 100 ms", f->accept_errors);
	C("dualpath_hello_timeouts_total", "connections closed for no Hello in hello_timeout_ms",
	  f->hello_timeouts);
	C("dualpath_idle_closes_total", "connections closed after idle_timeout_ms", f->idle_closes);
	C("dualpath_requests_overloaded_total", "requests refused: compute's queue was full",
	  f->overloaded);
	G("dualpath_client_buffer_bytes", "memory connections hold (responses unread, requests "
	  "partly received)", f->held);
	G("dualpath_client_buffer_peak_bytes", "... its high-water mark", f->held_peak);
	G("dualpath_events_outbox_peak", "most events compute held while the front was behind",
	  s->outbox_peak);
	C("dualpath_events_dropped_total", "events to the front lost for want of memory",
	  s->events_dropped);
	G("dualpath_requests_active", "requests being computed", s->active);
	G("dualpath_requests_waiting", "requests waiting for admission", s->waiting);
	C("dualpath_requests_started_total", "requests admitted", s->requests_started);
	C("dualpath_requests_finished_total", "requests that ended normally", s->requests_finished);
	C("dualpath_requests_cancelled_total", "requests cancelled", s->requests_cancelled);
	C("dualpath_requests_failed_total", "requests that failed", s->requests_failed);
	C("dualpath_steps_total", "forward steps", s->steps);
	C("dualpath_step_seconds_total", "time in forward steps", s->step_ns_total / 1e9);
	C("dualpath_compute_seconds_total", "step time spent computing", s->compute_ns / 1e9);
	C("dualpath_stall_seconds_total", "step time the compute path waited for restored pages",
	  s->stall_ns / 1e9);
	C("dualpath_kv_restores_total", "layer-by-layer restores completed", s->kv.restores);
	C("dualpath_kv_restore_seconds_total", "their total duration", s->kv.restore_ns / 1e9);
	C("dualpath_kv_restore_io_seconds_total", "time restore reads were in flight",
	  s->kv.restore_io_ns / 1e9);
	C("dualpath_kv_restore_io_bytes_total", "bytes restore reads moved", s->kv.restore_io_bytes);
	C("dualpath_kv_loads_total", "whole-state loads the compute thread waited for (restore=full)",
	  s->kv.loads);
	C("dualpath_kv_load_seconds_total", "their total duration", s->kv.load_ns / 1e9);
	CL("dualpath_tokens_total", "tokens through the model", s->tokens_prefill, "phase", "prefill");
	CL("dualpath_tokens_total", "tokens through the model", s->tokens_decode, "phase", "decode");
	G("dualpath_tokens_per_second", "recent forward throughput", s->tok_s);
	G("dualpath_sessions", "sessions", s->sessions);
	for (int t = 0; t < DP_KV_TIER_MAX; t++) {
		GL("dualpath_kv_sessions", "sessions by state tier", s->kv.sessions[t], "tier", tiers[t]);
		if (t == DP_KV_TIER_NONE)
			continue;
		GL("dualpath_kv_bytes", "state bytes by tier", s->kv.bytes[t], "tier", tiers[t]);
		GL("dualpath_kv_budget_bytes", "tier budget (0: none)", s->kv.budget[t], "tier", tiers[t]);
	}
	C("dualpath_kv_promotions_total", "state promotions", s->kv.promotions);
	C("dualpath_kv_demotions_total", "state demotions", s->kv.demotions);
	C("dualpath_kv_drops_total", "sessions dropped", s->kv.drops);
	C("dualpath_kv_pages_written_total", "pages written to NVMe", s->kv.pages_written);
	C("dualpath_kv_pages_read_total", "pages read from NVMe", s->kv.pages_read);
	C("dualpath_kv_writebacks_total", "demotions to NVMe written behind the compute path",
	  s->kv.writebacks);
	C("dualpath_kv_writeback_errors_total", "writebacks that failed (the state stayed)",
	  s->kv.writeback_errors);
	G("dualpath_kv_writeback_pages", "pages being written out now", s->kv.writeback_pages);
	C("dualpath_kv_corrupt_pages_total", "pages that failed their checks (recomputed)", s->kv.corrupt_pages);
	C("dualpath_kv_recomputed_tokens_total", "history tokens replayed into state", s->kv.recomputed_tokens);
	C("dualpath_journal_commits_total", "journal fsyncs of finished turns", s->kv.commits);
	G("dualpath_journal_bytes", "journal size", s->kv.journal_bytes);
	C("dualpath_journal_compactions_total", "journal rewrites down to the live sessions", s->kv.compactions);
	G("dualpath_kv_direct_io", "1 if the NVMe tier uses O_DIRECT", s->kv.direct_io);
	GL("dualpath_io_info", "how the NVMe tier does I/O", 1, "mode", s->io_mode);
	if (s->engram) {
		const struct dp_engram_store_stats *e = &s->engram_store;
		C("dualpath_engram_rows_total", "Engram row lookups served", e->rows);
		C("dualpath_engram_cache_hits_total", "... found in the hot-row cache", e->cache_hits);
		C("dualpath_engram_cache_misses_total", "... not found there", e->cache_misses);
		C("dualpath_engram_sync_prefetches_total", "steps whose rows were not prefetched",
		  e->sync_prefetches);
		C("dualpath_engram_read_bytes_total", "bytes the Engram reads moved (nvme)",
		  e->bytes_read);
		C("dualpath_engram_wait_seconds_total", "time Engram layers waited for their rows",
		  e->wait_ns / 1e9);
		G("dualpath_engram_table_bytes", "Engram table bytes held in memory", e->table_bytes);
	}
	if (s->experts.where != DP_V4_EXPERTS_DEVICE) {
		const struct dp_v4_expert_stats *x = &s->experts;
		GL("dualpath_experts_info", "where routed experts are paged from", 1, "from",
		   dp_v4_experts_where_name(x->where));
		G("dualpath_experts_slots", "experts a layer keeps on the device", x->slots);
		G("dualpath_experts_cache_bytes", "backend memory of the expert slots", x->cache_bytes);
		C("dualpath_experts_uses_total", "(layer, expert) pairs steps used", x->uses);
		C("dualpath_experts_hits_total", "... already on the device", x->hits);
		C("dualpath_experts_misses_total", "... brought in when the layer needed them",
		  x->misses);
		C("dualpath_experts_read_ahead_total", "... read ahead (hash layers; lookahead)",
		  x->prefetched);
		C("dualpath_experts_read_ahead_unused_total", "lookahead guesses the router did not make",
		  x->ahead_unused);
		C("dualpath_experts_passes_total", "moe calls (more than one a layer when picks > slots)",
		  x->passes);
		C("dualpath_experts_in_bytes_total", "checkpoint bytes brought in", x->bytes_in);
		C("dualpath_experts_corrupt_total",
		  "expert reads that differed from the checkpoint at load (step failed)", x->corrupt);
		C("dualpath_experts_wait_seconds_total", "time layers waited for expert reads",
		  x->wait_ns / 1e9);
		CL("dualpath_experts_io_seconds_total", "time expert reads were in flight, per channel",
		   s->experts_io_ns[0] / 1e9, "channel", "urgent");
		CL("dualpath_experts_io_seconds_total", "time expert reads were in flight, per channel",
		   s->experts_io_ns[1] / 1e9, "channel", "read_ahead");
	}
	if (s->csa_host) {
		const struct dp_v4_csa_stats *a = &s->csa;
		C("dualpath_csa_entries_selected_total",
		  "CSA entries the indexer picked (distinct per sequence, layer and step)", a->selected);
		C("dualpath_csa_entries_staged_hits_total", "... already staged on the device", a->hits);
		C("dualpath_csa_entries_fetched_total", "... fetched from host memory after the indexer",
		  a->fetched);
		C("dualpath_csa_entries_fetched_bytes_total", "host-to-device bytes of those", a->bytes);
		C("dualpath_csa_entries_evicted_total", "staged entries dropped (not picked recently)",
		  a->evicted);
		C("dualpath_csa_gather_seconds_total", "time layers spent staging picked entries",
		  a->gather_ns / 1e9);
		G("dualpath_csa_host_bytes", "host memory holding CSA entries", s->kv.host_state_bytes);
	}
	C("dualpath_io_reads_total", "io engine reads finished", s->io.reads);
	C("dualpath_io_writes_total", "io engine writes finished", s->io.writes);
	C("dualpath_io_syncs_total", "io engine syncs finished", s->io.syncs);
	C("dualpath_io_read_bytes_total", "bytes read by the io engine", s->io.bytes_read);
	C("dualpath_io_written_bytes_total", "bytes written by the io engine", s->io.bytes_written);
	C("dualpath_io_errors_total", "io engine requests that failed", s->io.errors);
	C("dualpath_io_retries_total", "short or EAGAIN transfers resubmitted", s->io.retries);
	G("dualpath_io_inflight", "requests in the kernel now", s->io.inflight);
	C("dualpath_io_busy_seconds_total", "io thread time awake", s->io.busy_ns / 1e9);
	for (int k = 0; k < DP_GPU_MEM_CLASS_MAX; k++)
		GL("dualpath_backend_bytes", "backend memory by class", s->mem.bytes[k], "class", classes[k]);
	G("dualpath_backend_peak_bytes", "backend memory high-water mark", s->mem.peak_bytes);
#undef G
#undef C
#undef GL
#undef CL
	/* labels: one per labelled metric */
	for (size_t i = 0; i < n; i++)
		if (m[i].n_labels) {
			labp[i] = &lab[i];
			m[i].labels = &labp[i];
		}
	Dualpath__V1__StatsReply sr = DUALPATH__V1__STATS_REPLY__INIT;
	Dualpath__V1__Response r = DUALPATH__V1__RESPONSE__INIT;
	sr.n_metrics = n;
	sr.metrics = ptrs;
	r.request_id = id;
	r.body_case = DUALPATH__V1__RESPONSE__BODY_STATS;
	r.stats = &sr;
	reply(f, slot, &r);
}

static void send_sessions(struct front *f, uint32_t slot, uint64_t id, const struct dp_session_list *l)
{
	Dualpath__V1__SessionInfo *rows = calloc(l->n ? l->n : 1, sizeof(*rows));
	Dualpath__V1__SessionInfo **ptrs = calloc(l->n ? l->n : 1, sizeof(*ptrs));
	if (!rows || !ptrs) {
		free(rows);
		free(ptrs);
		reply_error(f, slot, id, DUALPATH__V1__CODE__RESOURCE_EXHAUSTED, "out of memory");
		return;
	}
	for (uint32_t i = 0; i < l->n; i++) {
		dualpath__v1__session_info__init(&rows[i]);
		rows[i].session_id = (char *)l->rows[i].id;
		rows[i].tokens = l->rows[i].tokens;
		rows[i].tier = (char *)dp_kv_tier_name(l->rows[i].tier);
		rows[i].bytes = l->rows[i].bytes;
		rows[i].idle_ms = l->rows[i].idle_ms;
		rows[i].busy = l->rows[i].busy;
		ptrs[i] = &rows[i];
	}
	Dualpath__V1__SessionList sl = DUALPATH__V1__SESSION_LIST__INIT;
	Dualpath__V1__Response r = DUALPATH__V1__RESPONSE__INIT;
	sl.n_sessions = l->n;
	sl.sessions = ptrs;
	r.request_id = id;
	r.body_case = DUALPATH__V1__RESPONSE__BODY_SESSIONS;
	r.sessions = &sl;
	reply(f, slot, &r);
	free(rows);
	free(ptrs);
}

static void send_trace(struct front *f, uint32_t slot, uint64_t id, const struct dp_trace_dump *d)
{
	Dualpath__V1__TraceEvent *ev = calloc(d->n ? d->n : 1, sizeof(*ev));
	Dualpath__V1__TraceEvent **ptrs = calloc(d->n ? d->n : 1, sizeof(*ptrs));
	Dualpath__V1__Label *lab = calloc(2 * (size_t)(d->n ? d->n : 1), sizeof(*lab));
	Dualpath__V1__Label **labp = calloc(2 * (size_t)(d->n ? d->n : 1), sizeof(*labp));
	char (*vals)[2][24] = calloc(d->n ? d->n : 1, sizeof(*vals));
	if (!ev || !ptrs || !lab || !labp || !vals) {
		reply_error(f, slot, id, DUALPATH__V1__CODE__RESOURCE_EXHAUSTED, "out of memory");
		goto out;
	}
	for (uint32_t i = 0; i < d->n; i++) {
		dualpath__v1__trace_event__init(&ev[i]);
		ev[i].name = (char *)d->ev[i].name;
		ev[i].lane = d->ev[i].lane ? "io" : "compute";
		ev[i].start_us = d->ev[i].start_us;
		ev[i].dur_us = d->ev[i].dur_us;
		/* a step: tokens and sequences; a restore: the position restored
		 * and the tier it came from; a stall: the layer waited for */
		bool restore = !strcmp(d->ev[i].name, "restore");
		bool stall = !strcmp(d->ev[i].name, "stall");
		snprintf(vals[i][0], sizeof(vals[i][0]), "%u", d->ev[i].tokens);
		if (restore)
			snprintf(vals[i][1], sizeof(vals[i][1]), "%s", dp_kv_tier_name(d->ev[i].batch));
		else
			snprintf(vals[i][1], sizeof(vals[i][1]), "%u", d->ev[i].batch);
		for (int k = 0; k < 2; k++) {
			dualpath__v1__label__init(&lab[2 * i + k]);
			lab[2 * i + k].name = restore ? (k ? "from_tier" : "position")
					      : stall	? (k ? "sequences" : "layer")
							: (k ? "sequences" : "tokens");
			lab[2 * i + k].value = vals[i][k];
			labp[2 * i + k] = &lab[2 * i + k];
		}
		ev[i].n_args = 2;
		ev[i].args = &labp[2 * i];
		ptrs[i] = &ev[i];
	}
	Dualpath__V1__TraceReply tr = DUALPATH__V1__TRACE_REPLY__INIT;
	Dualpath__V1__Response r = DUALPATH__V1__RESPONSE__INIT;
	tr.n_events = d->n;
	tr.events = ptrs;
	r.request_id = id;
	r.body_case = DUALPATH__V1__RESPONSE__BODY_TRACE;
	r.trace = &tr;
	reply(f, slot, &r);
out:
	free(ev);
	free(ptrs);
	free(lab);
	free(labp);
	free(vals);
}

static void on_tokens(struct front *f, uint32_t slot, const struct dp_event *e)
{
	struct dp_server *srv = f->srv;
	struct conn *c = &f->conns[slot];
	struct freq *q = freq_find(c, e->request_id);
	Dualpath__V1__TokenChunk tc = DUALPATH__V1__TOKEN_CHUNK__INIT;
	Dualpath__V1__Usage u = DUALPATH__V1__USAGE__INIT;
	Dualpath__V1__Response r = DUALPATH__V1__RESPONSE__INIT;
	uint32_t ids[DP_EVENT_IDS];
	size_t tlen = 0;

	for (uint32_t i = 0; i < e->n_ids; i++)
		ids[i] = (uint32_t)e->ids[i];
	tc.n_ids = e->n_ids;
	tc.ids = ids;
	if (q && q->return_text) {
		size_t bound = dp_tok_stream_bound(srv->tok) * (e->n_ids + 1) + 1;
		if (bound > f->textcap) {
			char *t = realloc(f->textbuf, bound);
			if (t) {
				f->textbuf = t;
				f->textcap = bound;
			}
		}
		if (f->textcap >= bound) {
			for (uint32_t i = 0; i < e->n_ids; i++) {
				size_t got = 0;
				if (dp_tok_stream_next(srv->tok, &q->ts, e->ids[i], f->textbuf + tlen,
						       f->textcap - tlen, &got) == 0)
					tlen += got;
			}
			if (e->finish) {
				size_t got = 0;
				if (dp_tok_stream_flush(&q->ts, f->textbuf + tlen, f->textcap - tlen, &got) == 0)
					tlen += got;
			}
			f->textbuf[tlen] = '\0';
			tc.text = f->textbuf;
		}
	}
	tc.finish = (Dualpath__V1__FinishReason)e->finish;
	tc.position = e->position;
	if (e->finish) {
		u.prompt_tokens = e->prompt_tokens;
		u.cached_tokens = e->cached_tokens;
		u.generated_tokens = e->generated_tokens;
		u.time_to_first_token_us = e->ttft_us;
		u.total_time_us = e->total_us;
		tc.usage = &u;
	}
	r.request_id = e->request_id;
	r.body_case = DUALPATH__V1__RESPONSE__BODY_TOKEN_CHUNK;
	r.token_chunk = &tc;
	reply(f, slot, &r);
	if (e->finish && c->open && (q = freq_find(c, e->request_id)))
		freq_remove(c, q);
}

/* Does this event end the request it answers? (Every forwarded request
 * gets exactly one such event.) */
static bool event_is_final(const struct dp_event *e)
{
	return e->kind != DP_EV_TOKENS || e->finish;
}

static void on_event(struct front *f, struct dp_event *e)
{
	uint32_t slot = e->to.conn;
	bool live = slot < f->srv->cfg.max_connections && f->conns[slot].open &&
		    f->conns[slot].gen == e->to.gen;
	if (live) {
		struct conn *c = &f->conns[slot];
		if (event_is_final(e) && c->pending)
			c->pending--;
		switch (e->kind) {
		case DP_EV_TOKENS:
			on_tokens(f, slot, e);
			break;
		case DP_EV_ERROR: {
			/* an Error ends its request */
			struct freq *q = freq_find(&f->conns[slot], e->request_id);
			if (q)
				freq_remove(&f->conns[slot], q);
			reply_error(f, slot, e->request_id, e->code, e->payload ? e->payload : "error");
			break;
		}
		case DP_EV_ACK: {
			Dualpath__V1__Ack a = DUALPATH__V1__ACK__INIT;
			Dualpath__V1__Response r = DUALPATH__V1__RESPONSE__INIT;
			r.request_id = e->request_id;
			r.body_case = DUALPATH__V1__RESPONSE__BODY_ACK;
			r.ack = &a;
			reply(f, slot, &r);
			break;
		}
		case DP_EV_STATS:
			send_stats(f, slot, e->request_id, e->payload);
			break;
		case DP_EV_SESSIONS:
			send_sessions(f, slot, e->request_id, e->payload);
			break;
		case DP_EV_TRACE:
			send_trace(f, slot, e->request_id, e->payload);
			break;
		default:
			break;
		}
		if (conn_finished(c))
			conn_close(f, slot);
	}
	free(e->payload);
}

static void drain_events(struct front *f)
{
	struct dp_event ev[32];
	uint32_t n;
	while ((n = dp_spsc_dequeue_burst(f->srv->to_front, ev, 32)) > 0)
		for (uint32_t i = 0; i < n; i++)
			on_event(f, &ev[i]);
}

void *dp_front_main(void *arg)
{
	struct dp_server *srv = arg;
	struct front f = { .srv = srv };
	struct epoll_event evs[64];

	f.conns = calloc(srv->cfg.max_connections, sizeof(*f.conns));
	f.ep = epoll_create1(EPOLL_CLOEXEC);
	if (!f.conns || f.ep < 0) {
		log_err("front thread: cannot start (%s)", strerror(errno));
		atomic_store(&srv->stop, true);
		return NULL;
	}
	dp_proto_limits_init(&f.lim);
	f.lim.vocab_size = srv->vocab;
	f.lim.max_prompt_tokens = srv->cfg.max_prompt_tokens;
	f.lim.max_new_tokens = srv->cfg.max_new_tokens;
	f.lim.max_text_bytes = srv->cfg.max_frame_bytes;
	f.lim.max_stop_ids = DP_STOP_IDS_MAX;
	struct epoll_event ev = { .events = EPOLLIN, .data.u64 = TAG_LISTEN };
	epoll_ctl(f.ep, EPOLL_CTL_ADD, srv->listen_fd, &ev);
	ev.data.u64 = TAG_EVENTS;
	epoll_ctl(f.ep, EPOLL_CTL_ADD, dp_waiter_fd(&srv->front_wake), &ev);

	bool listening = true;
	while (!atomic_load(&srv->stop)) {
		/* stop taking connections once the daemon stops */
		if (listening && atomic_load(&srv->state) == DP_STATE_STOPPING) {
			epoll_ctl(f.ep, EPOLL_CTL_DEL, srv->listen_fd, NULL);
			listening = false;
		}
		dp_waiter_prepare(&srv->front_wake);
		int timeout = !dp_spsc_empty(srv->to_front) ? 0 : f.n_closes || f.accept_paused ? 10 : 100;
		int n = epoll_wait(f.ep, evs, 64, timeout);
		dp_waiter_consume(&srv->front_wake);
		drain_events(&f);
		send_closes(&f);
		uint64_t now = dp_now_ns();
		resume_accept(&f, now);
		sweep(&f, now);
		for (int i = 0; i < n; i++) {
			uint64_t tag = evs[i].data.u64 & 0xff;
			uint32_t slot = (uint32_t)(evs[i].data.u64 >> 8);
			if (tag == TAG_LISTEN) {
				if (!f.accept_paused)
					on_accept(&f);
			} else if (tag == TAG_CONN && f.conns[slot].open) {
				if (evs[i].events & EPOLLIN)
					on_readable(&f, slot);
				if (f.conns[slot].open && (evs[i].events & EPOLLOUT))
					conn_flush(&f, slot);
				if (f.conns[slot].open && (evs[i].events & (EPOLLHUP | EPOLLERR)))
					conn_close(&f, slot);
				else if (f.conns[slot].open && !f.conns[slot].rd_eof &&
					 (evs[i].events & EPOLLRDHUP) && !(evs[i].events & EPOLLIN))
					on_readable(&f, slot); /* reads the end of file */
			}
		}
		drain_events(&f);
	}
	/* last words: what compute sent before stopping, then close */
	drain_events(&f);
	for (uint32_t i = 0; i < srv->cfg.max_connections; i++)
		if (f.conns[i].open) {
			conn_flush(&f, i);
			if (f.conns[i].open) {
				epoll_ctl(f.ep, EPOLL_CTL_DEL, f.conns[i].fd, NULL);
				close(f.conns[i].fd);
				dp_frame_reader_free(f.conns[i].rd);
				dp_frame_buf_fini(&f.conns[i].out);
				free(f.conns[i].reqs);
			}
		}
	for (uint32_t i = 0; i < f.n_closes; i++)
		free(f.closes[i]);
	free(f.closes);
	close(f.ep);
	free(f.conns);
	free(f.textbuf);
	return NULL;
}
