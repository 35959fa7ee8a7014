/* SPDX-License-Identifier: MIT */
/*
 * The HTTP front's thread (daemon/http.h): libmicrohttpd without threads of
 * its own (MHD_USE_EPOLL, run from our loop), an epoll set holding MHD's
 * epoll fd and the eventfd of compute's ring to us, the listening address
 * and the bearer keys. The routes are in http-routes.c, generations in
 * http-gen.c.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "daemon/http-front.h"
#include "daemon/log.h"

/* ---- the listening socket ---------------------------------------------------- */

static int listen_unix(const char *path, char *err, size_t err_len)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct stat st;
	if (!*path || strlen(path) >= sizeof(sa.sun_path)) {
		snprintf(err, err_len, "[http] listen unix:%s: a socket path of 1 to %zu bytes", path,
			 sizeof(sa.sun_path) - 1);
		return -EINVAL;
	}
	memcpy(sa.sun_path, path, strlen(path) + 1);
	if (lstat(path, &st) == 0) {
		if (!S_ISSOCK(st.st_mode)) {
			snprintf(err, err_len, "[http] listen: %s exists and is not a socket", path);
			return -EEXIST;
		}
		unlink(path); /* a stale socket (the Unix front refuses a live daemon first) */
	}
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	mode_t old = umask(0117);
	int r = bind(fd, (struct sockaddr *)&sa, sizeof(sa));
	umask(old);
	if (r < 0 || listen(fd, 128) < 0) {
		r = -errno;
		snprintf(err, err_len, "[http] listen: cannot listen on %s: %s", path, strerror(-r));
		close(fd);
		return r;
	}
	return fd;
}

/* "HOST:PORT", "[v6]:PORT" or "unix:/path" -> a listening, non-blocking socket */
static int listen_address(const char *addr, bool *ret_unix, char *err, size_t err_len)
{
	*ret_unix = !strncmp(addr, "unix:", 5);
	if (*ret_unix)
		return listen_unix(addr + 5, err, err_len);
	char host[256];
	const char *colon = strrchr(addr, ':');
	size_t hlen = colon ? (size_t)(colon - addr) : 0;
	if (!colon || !colon[1] || hlen == 0 || hlen >= sizeof(host)) {
		snprintf(err, err_len, "[http] listen %s: expected HOST:PORT, [IPV6]:PORT or unix:/path",
			 addr);
		return -EINVAL;
	}
	memcpy(host, addr, hlen);
	host[hlen] = '\0';
	if (host[0] == '[') {
		if (hlen < 3 || host[hlen - 1] != ']') {
			snprintf(err, err_len, "[http] listen %s: an IPv6 address goes in brackets", addr);
			return -EINVAL;
		}
		memmove(host, host + 1, hlen - 2);
		host[hlen - 2] = '\0';
	}
	char *end;
	long port = strtol(colon + 1, &end, 10);
	if (*end || port < 1 || port > 65535) {
		snprintf(err, err_len, "[http] listen %s: the port must be 1 to 65535", addr);
		return -EINVAL;
	}
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE | AI_NUMERICSERV };
	struct addrinfo *res = NULL;
	int gr = getaddrinfo(host, colon + 1, &hints, &res);
	if (gr) {
		snprintf(err, err_len, "[http] listen %s: %s", addr, gai_strerror(gr));
		return -EINVAL;
	}
	int fd = socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	int one = 1, r = 0;
	if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
	    (res->ai_family == AF_INET6 &&
	     setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one)) < 0) ||
	    bind(fd, res->ai_addr, res->ai_addrlen) < 0 || listen(fd, 128) < 0) {
		r = -errno;
		snprintf(err, err_len, "[http] listen: cannot listen on %s: %s", addr, strerror(-r));
		if (fd >= 0)
			close(fd);
	}
	freeaddrinfo(res);
	return r < 0 ? r : fd;
}

/* ---- bearer keys ----------------------------------------------------------------- */

/*
 * The key file is a secret: a regular file owned by root or the daemon's
 * user, neither writable by others nor readable by anyone but its owner and
 * group. One key a line (printable ASCII, no spaces); blank lines and lines
 * starting with # are skipped.
 */
static int load_keys(struct dp_http *h, const char *path, char *err, size_t err_len)
{
	FILE *f = fopen(path, "re");
	struct stat st;
	if (!f) {
		int e = errno;
		snprintf(err, err_len, "[http] api_key_file %s: %s", path, strerror(e));
		return -e;
	}
	if (fstat(fileno(f), &st) < 0 || !S_ISREG(st.st_mode)) {
		snprintf(err, err_len, "[http] api_key_file %s: not a regular file", path);
		fclose(f);
		return -EINVAL;
	}
	if (st.st_uid != 0 && st.st_uid != geteuid()) {
		snprintf(err, err_len, "[http] api_key_file %s: owned by uid %u; it must be root's or "
			 "the daemon's (uid %u)", path, (unsigned)st.st_uid, (unsigned)geteuid());
		fclose(f);
		return -EPERM;
	}
	if (st.st_mode & 0027) {
		snprintf(err, err_len, "[http] api_key_file %s: mode %03o lets others read it or "
			 "its group write it (chmod 0600 or 0640)", path, (unsigned)(st.st_mode & 0777));
		fclose(f);
		return -EPERM;
	}
	char line[1024];
	unsigned lineno = 0;
	while (fgets(line, sizeof(line), f)) {
		lineno++;
		size_t n = strlen(line);
		if (n == sizeof(line) - 1 && line[n - 1] != '\n') {
			snprintf(err, err_len, "[http] api_key_file %s:%u: longer than %zu bytes", path,
				 lineno, sizeof(line) - 2);
			fclose(f);
			return -EINVAL;
		}
		while (n && (line[n - 1] == '\n' || line[n - 1] == '\r' || line[n - 1] == ' ' ||
			     line[n - 1] == '\t'))
			line[--n] = '\0';
		char *k = line;
		while (*k == ' ' || *k == '\t')
			k++, n--;
		if (!*k || *k == '#')
			continue;
		for (size_t i = 0; i < n; i++)
			if (k[i] <= ' ' || k[i] > '~') {
				snprintf(err, err_len, "[http] api_key_file %s:%u: a key is printable ASCII "
					 "without spaces", path, lineno);
				fclose(f);
				return -EINVAL;
			}
		if (n > DP_HTTP_KEY_MAX) {
			snprintf(err, err_len, "[http] api_key_file %s:%u: a key of %zu bytes; at most %d",
				 path, lineno, n, DP_HTTP_KEY_MAX);
			fclose(f);
			return -EINVAL;
		}
		char **keys = realloc(h->keys, (h->n_keys + 1) * sizeof(*keys));
		if (!keys || !(keys[h->n_keys] = strdup(k))) {
			if (keys)
				h->keys = keys;
			fclose(f);
			return -ENOMEM;
		}
		h->keys = keys;
		h->n_keys++;
	}
	fclose(f);
	if (!h->n_keys) {
		snprintf(err, err_len, "[http] api_key_file %s: no key in it", path);
		return -EINVAL;
	}
	return 0;
}

/* Constant time in the key's bytes: every key compared over its whole
 * length (and the given one's), no early exit. */
int http_key_match(const struct dp_http *h, const char *auth)
{
	if (!h->n_keys)
		return DP_HTTP_KEYS_OFF;
	if (!auth || strncmp(auth, "Bearer ", 7))
		return -EACCES;
	const char *k = auth + 7;
	size_t klen = strnlen(k, DP_HTTP_KEY_MAX + 1);
	/* every key compared in full, the match picked without a branch: the
	 * time does not say which key (or how much of one) matched */
	unsigned found = 0, index = 0;
	for (size_t i = 0; i < h->n_keys; i++) {
		size_t n = strlen(h->keys[i]);
		unsigned diff = (unsigned)(n ^ klen);
		for (size_t j = 0; j < n; j++)
			diff |= (unsigned char)h->keys[i][j] ^ (unsigned char)(j < klen ? k[j] : 0);
		unsigned hit = 0u - (unsigned)(diff == 0); /* all ones on a match */
		index |= hit & ~(0u - found) & (unsigned)i;
		found |= hit & 1u;
	}
	return found ? (int)index : -EACCES;
}

/* ---- init, the loop, free --------------------------------------------------------- */

int dp_http_init(struct dp_server *srv, char *err, size_t err_len)
{
	struct dp_http *h = calloc(1, sizeof(*h));
	if (!h)
		return -ENOMEM;
	h->srv = srv;
	h->listen_fd = -1;
	h->ep = -1;
	srv->http = h;
	int ret = listen_address(srv->cfg.http_listen, &h->is_unix, err, err_len);
	if (ret < 0)
		return ret;
	h->listen_fd = ret;
	if (srv->cfg.http_api_key_file[0] &&
	    (ret = load_keys(h, srv->cfg.http_api_key_file, err, err_len)) < 0)
		return ret;
	h->slots = calloc(srv->cfg.http_max_requests, sizeof(*h->slots));
	if (!h->slots)
		return -ENOMEM;
	const char *m = strrchr(srv->cfg.model, '/');
	m = m && m[1] ? m + 1 : srv->cfg.model;
	snprintf(h->model_name, sizeof(h->model_name), "%.255s", m);
	h->lim.max_body = srv->cfg.http_max_body_bytes;
	h->lim.max_depth = srv->cfg.http_max_json_depth;
	h->lim.max_tools = srv->cfg.http_max_tools;
	h->replay.cap = srv->cfg.http_replay_cache_bytes;
	h->lim.max_new_tokens = srv->cfg.max_new_tokens;
	return 0;
}

static void on_mhd_log(void *cls, const char *fmt, va_list ap)
{
	(void)cls;
	char msg[512];
	vsnprintf(msg, sizeof(msg), fmt, ap);
	size_t n = strlen(msg);
	while (n && msg[n - 1] == '\n')
		msg[--n] = '\0';
	log_debug("http: %s", msg);
}

void *dp_http_main(void *arg)
{
	struct dp_server *srv = arg;
	struct dp_http *h = srv->http;
	struct epoll_event evs[8];

	h->ep = epoll_create1(EPOLL_CLOEXEC);
	/* MHD with no thread of its own: MHD_run from this loop */
	h->d = MHD_start_daemon(MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG, 0, NULL, NULL, http_on_request, h, MHD_OPTION_LISTEN_SOCKET,
				h->listen_fd, MHD_OPTION_NOTIFY_COMPLETED, http_on_completed, h,
				MHD_OPTION_CONNECTION_LIMIT, srv->cfg.http_max_requests + 64u,
				MHD_OPTION_CONNECTION_TIMEOUT, 600u, MHD_OPTION_EXTERNAL_LOGGER,
				on_mhd_log, NULL, MHD_OPTION_END);
	const union MHD_DaemonInfo *di = h->d ? MHD_get_daemon_info(h->d, MHD_DAEMON_INFO_EPOLL_FD)
					     : NULL;
	if (h->ep < 0 || !di) {
		log_err("http: cannot start on %s (libmicrohttpd refused)", srv->cfg.http_listen);
		atomic_store(&srv->fatal, -EIO);
		return NULL;
	}
	h->listen_fd = -1; /* MHD's now */
	struct epoll_event ev = { .events = EPOLLIN, .data.u32 = 1 };
	epoll_ctl(h->ep, EPOLL_CTL_ADD, di->epoll_fd, &ev);
	ev.data.u32 = 2;
	epoll_ctl(h->ep, EPOLL_CTL_ADD, dp_waiter_fd(&srv->http_wake), &ev);
	log_info("http: serving the OpenAI-compatible API on %s%s (503 until the model is loaded)",
		 srv->cfg.http_listen, h->n_keys ? " (bearer keys required)" : "");

	while (!atomic_load(&srv->stop)) {
		MHD_UNSIGNED_LONG_LONG mt = 0;
		int timeout = 100;
		if (MHD_get_timeout(h->d, &mt) == MHD_YES && mt < (MHD_UNSIGNED_LONG_LONG)timeout)
			timeout = (int)mt;
		dp_waiter_prepare(&srv->http_wake);
		if (!dp_spsc_empty(srv->to_http))
			timeout = 0;
		epoll_wait(h->ep, evs, 8, timeout);
		dp_waiter_consume(&srv->http_wake);
		http_drain_events(h);
		http_tick(h, dp_clock_ns());
		MHD_run(h->d);
	}
	/* what compute said last, then every waiting request ends */
	http_drain_events(h);
	http_stop_all(h);
	for (int i = 0; i < 20; i++)
		MHD_run(h->d);
	MHD_stop_daemon(h->d);
	h->d = NULL;
	return NULL;
}

void dp_http_free(struct dp_server *srv)
{
	struct dp_http *h = srv->http;
	if (!h)
		return;
	if (h->d)
		MHD_stop_daemon(h->d);
	if (h->listen_fd >= 0)
		close(h->listen_fd);
	if (h->ep >= 0)
		close(h->ep);
	if (h->is_unix && !strncmp(srv->cfg.http_listen, "unix:", 5))
		unlink(srv->cfg.http_listen + 5);
	for (size_t i = 0; i < h->n_keys; i++)
		free(h->keys[i]);
	free(h->keys);
	free(h->slots);
	dp_http_buf_fini(&h->scratch);
	dp_http_buf_fini(&h->scratch_key);
	http_replay_fini(&h->replay);
	free(h);
	srv->http = NULL;
}
