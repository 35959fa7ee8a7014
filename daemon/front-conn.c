/* SPDX-License-Identifier: MIT */
/*
 * The front's connections: the listening socket, accept (with room kept for
 * the admin group, and a pause when descriptors run out), output queues,
 * one memory budget for all of them, Hello and idle timeouts, half-close,
 * close.
 *
 * A client that stops reading is cut off once DP_CONN_OUT_MAX bytes of
 * responses wait for it, or earlier when all connections together hold
 * more than client_buffer_bytes and it holds most. No function here waits:
 * a close whose notice finds compute's queue full queues it (send_closes).
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

#include "daemon/front-internal.h"
#include "daemon/log.h"

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


/* Keep f->held equal to what the open connections hold. */
void front_conn_account(struct front *f, struct conn *c)
{
	size_t now = c->open ? c->out.cap + dp_frame_reader_capacity(c->rd) : 0;
	f->held = f->held - c->held + now;
	c->held = now;
	if (f->held > f->held_peak)
		f->held_peak = f->held;
}

/* Over client_buffer_bytes: close the connections holding most until under.
 * The one that holds most is the one that reads (or sends) slowest. */
void front_enforce_budget(struct front *f)
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
		front_conn_close(f, worst);
	}
}

/* The epoll events a connection waits for: input until the client shut its
 * side down, output while responses wait. */
void front_conn_watch(struct front *f, uint32_t slot)
{
	struct conn *c = &f->conns[slot];
	struct epoll_event ev = { .events = (c->rd_eof ? 0 : EPOLLIN | EPOLLRDHUP) |
					    (c->want_out ? EPOLLOUT : 0),
				  .data.u64 = ((uint64_t)slot << 8) | TAG_CONN };
	epoll_ctl(f->ep, EPOLL_CTL_MOD, c->fd, &ev);
}

/* A half-closed connection closes once its last answer is out. */
bool front_conn_finished(const struct conn *c)
{
	return c->open && c->rd_eof && !c->pending && !c->out.len;
}

void front_conn_flush(struct front *f, uint32_t slot)
{
	struct conn *c = &f->conns[slot];
	while (c->out.len) {
		ssize_t n = send(c->fd, c->out.data, c->out.len, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				break;
			front_conn_close(f, slot);
			return;
		}
		dp_frame_buf_consume(&c->out, (size_t)n);
		c->active_ns = dp_clock_ns();
	}
	if (!c->out.len && c->out.cap > (64u << 10)) /* drop what a burst grew */
		dp_frame_buf_fini(&c->out);
	front_conn_account(f, c);
	if (front_conn_finished(c)) {
		front_conn_close(f, slot);
		return;
	}
	bool want = c->out.len > 0;
	if (want != c->want_out) {
		c->want_out = want;
		front_conn_watch(f, slot);
	}
}

void front_reply(struct front *f, uint32_t slot, Dualpath__V1__Response *r)
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
		front_conn_close(f, slot);
		return;
	}
	front_conn_flush(f, slot);
	if (c->open)
		front_enforce_budget(f);
}

void front_reply_error(struct front *f, uint32_t slot, uint64_t request_id, uint32_t code,
			const char *msg)
{
	Dualpath__V1__Error e = DUALPATH__V1__ERROR__INIT;
	Dualpath__V1__Response r = DUALPATH__V1__RESPONSE__INIT;
	e.code = (Dualpath__V1__Code)code;
	e.message = (char *)msg;
	r.request_id = request_id;
	r.body_case = DUALPATH__V1__RESPONSE__BODY_ERROR;
	r.error = &e;
	front_reply(f, slot, &r);
}

/* ---- connections ------------------------------------------------------------- */

/* Hand the CONN_CLOSED notices that waited to compute, in order. The front
 * never waits for room in compute's queue: compute may itself be waiting
 * for the front to drain the events queue (see compute.c's outbox). */
void front_send_closes(struct front *f)
{
	uint32_t sent = 0;
	while (sent < f->n_closes && dp_server_send(f->srv, f->closes[sent]) == 0)
		sent++;
	if (sent) {
		memmove(f->closes, f->closes + sent, (f->n_closes - sent) * sizeof(*f->closes));
		f->n_closes -= sent;
	}
}

void front_conn_close(struct front *f, uint32_t slot)
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
	front_conn_account(f, c);
	for (uint32_t i = 0; i < c->n_reqs; i++)
		dp_conv_stream_free(c->reqs[i].chat);
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
	uint64_t now = dp_clock_ns();
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

void front_resume_accept(struct front *f, uint64_t now)
{
	if (!f->accept_paused || now < f->accept_resume_ns)
		return;
	struct epoll_event ev = { .events = EPOLLIN, .data.u64 = TAG_LISTEN };
	if (epoll_ctl(f->ep, EPOLL_CTL_ADD, f->srv->listen_fd, &ev) == 0)
		f->accept_paused = false;
}

void front_on_accept(struct front *f)
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
		c->opened_ns = c->active_ns = dp_clock_ns();
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
void front_sweep(struct front *f, uint64_t now)
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
			front_conn_close(f, i);
		} else if (cfg->idle_timeout_ms && !c->pending && !c->out.len &&
			   now - c->active_ns > (uint64_t)cfg->idle_timeout_ms * 1000000) {
			log_debug("connection %s: idle for idle_timeout_ms (%u); closing it", c->name,
				  cfg->idle_timeout_ms);
			f->idle_closes++;
			front_conn_close(f, i);
		}
	}
}

void front_on_readable(struct front *f, uint32_t slot)
{
	struct conn *c = &f->conns[slot];
	for (int rounds = 0; c->open && !c->rd_eof && rounds < 16; rounds++) {
		int n = dp_frame_reader_read_fd(c->rd, c->fd);
		if (n > 0)
			c->active_ns = dp_clock_ns();
		front_conn_account(f, c);
		const uint8_t *body;
		size_t len;
		int ret = -EAGAIN;
		while (c->open && (ret = dp_frame_reader_next(c->rd, &body, &len)) == 0)
			front_on_request(f, slot, body, len);
		if (!c->open)
			return;
		if (ret != -EAGAIN) {
			log_info("connection %s: %s; closing it", c->name,
				 ret == -EMSGSIZE ? "frame larger than max_frame_bytes" : "broken framing");
			f->bad_frames++;
			front_conn_close(f, slot);
			return;
		}
		if (n == 0 && (c->pending || c->out.len)) {
			/* shutdown(SHUT_WR): the client still reads; answer what
			 * it asked, then close (conn_flush, on_event) */
			c->rd_eof = true;
			front_conn_watch(f, slot);
			return;
		}
		if (n == 0 || (n < 0 && n != -EAGAIN && n != -EINTR)) {
			front_conn_close(f, slot);
			return;
		}
		if (n == -EAGAIN)
			break;
	}
	if (c->open)
		front_enforce_budget(f);
}
