/* SPDX-License-Identifier: MIT */
/*
 * A minimal HTTP/1.1 client for the benches (http-client.h).
 */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "http-client.h"

#define HC_LINE_MAX 8192 /* a status, header or chunk-size line longer is refused */

enum { ST_STATUS, ST_HEADER, ST_CHUNK_SIZE, ST_CHUNK_DATA, ST_CHUNK_END, ST_TRAILER, ST_LENGTH,
       ST_DONE };

int hc_buf_add(struct hc_buf *b, const void *data, size_t n)
{
	if (b->len + n + 1 > b->cap) {
		size_t cap = b->cap ? b->cap : 256;
		while (cap < b->len + n + 1)
			cap *= 2;
		char *p = realloc(b->p, cap);
		if (!p)
			return -ENOMEM;
		b->p = p;
		b->cap = cap;
	}
	memcpy(b->p + b->len, data, n);
	b->len += n;
	b->p[b->len] = '\0';
	return 0;
}

int hc_buf_addf(struct hc_buf *b, const char *fmt, ...)
{
	char small[256];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(small, sizeof(small), fmt, ap);
	va_end(ap);
	if (n < 0)
		return -EINVAL;
	if ((size_t)n < sizeof(small))
		return hc_buf_add(b, small, (size_t)n);
	char *big = malloc((size_t)n + 1);
	if (!big)
		return -ENOMEM;
	va_start(ap, fmt);
	vsnprintf(big, (size_t)n + 1, fmt, ap);
	va_end(ap);
	int ret = hc_buf_add(b, big, (size_t)n);
	free(big);
	return ret;
}

void hc_buf_fini(struct hc_buf *b)
{
	free(b->p);
	*b = (struct hc_buf){ 0 };
}

int hc_connect(const char *addr, bool nonblock)
{
	int fd;
	if (!strncmp(addr, "unix:", 5)) {
		struct sockaddr_un sa = { .sun_family = AF_UNIX };
		if (strlen(addr + 5) >= sizeof(sa.sun_path))
			return -ENAMETOOLONG;
		strcpy(sa.sun_path, addr + 5);
		if ((fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0)
			return -errno;
		if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
			int e = errno;
			close(fd);
			return -e;
		}
	} else {
		char host[256];
		const char *colon = strrchr(addr, ':');
		if (!colon || (size_t)(colon - addr) >= sizeof(host))
			return -EINVAL;
		memcpy(host, addr, (size_t)(colon - addr));
		host[colon - addr] = '\0';
		if (host[0] == '[') { /* [::1]:8000 */
			size_t hl = strlen(host);
			if (hl < 2 || host[hl - 1] != ']')
				return -EINVAL;
			memmove(host, host + 1, hl - 2);
			host[hl - 2] = '\0';
		}
		struct addrinfo hints = { .ai_socktype = SOCK_STREAM }, *ai;
		if (getaddrinfo(host, colon + 1, &hints, &ai))
			return -EHOSTUNREACH;
		fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (fd < 0 || connect(fd, ai->ai_addr, ai->ai_addrlen) < 0) {
			int e = errno;
			if (fd >= 0)
				close(fd);
			freeaddrinfo(ai);
			return -e;
		}
		freeaddrinfo(ai);
	}
	if (nonblock && fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) < 0) {
		int e = errno;
		close(fd);
		return -e;
	}
	return fd;
}

int hc_post_format(struct hc_buf *out, const char *path, const char *body, size_t len)
{
	int ret = hc_buf_addf(out,
			      "POST %s HTTP/1.1\r\nHost: dualpath\r\nContent-Type: application/json\r\n"
			      "Content-Length: %zu\r\n\r\n",
			      path, len);
	return ret < 0 ? ret : hc_buf_add(out, body, len);
}

int hc_write_all(int fd, const char *p, size_t n)
{
	while (n) {
		ssize_t k = write(fd, p, n);
		if (k < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		p += k;
		n -= (size_t)k;
	}
	return 0;
}

void hc_resp_reset(struct hc_resp *r)
{
	r->state = ST_STATUS;
	r->status = 0;
	r->chunked = false;
	r->left = UINT64_MAX; /* no Content-Length seen */
	r->line.len = r->line.off = 0;
	r->body.len = r->body.off = 0;
}

void hc_resp_fini(struct hc_resp *r)
{
	hc_buf_fini(&r->line);
	hc_buf_fini(&r->body);
}

/* A complete line (CRLF cut) is in r->line: act on it. */
static int on_line(struct hc_resp *r)
{
	char *l = r->line.p ? r->line.p : (char *)"";
	size_t n = r->line.len;
	if (n && l[n - 1] == '\r')
		l[--n] = '\0';
	r->line.len = 0;
	switch (r->state) {
	case ST_STATUS: {
		unsigned st;
		if (sscanf(l, "HTTP/1.%*u %u", &st) != 1 || st < 100 || st > 599)
			return -EPROTO;
		r->status = st;
		r->state = ST_HEADER;
		return 0;
	}
	case ST_HEADER:
		if (n == 0) {
			if (r->chunked)
				r->state = ST_CHUNK_SIZE;
			else if (r->left == UINT64_MAX || r->left == 0)
				r->state = ST_DONE; /* no body (this server always sends a length) */
			else
				r->state = ST_LENGTH;
			return 0;
		}
		if (!strncasecmp(l, "transfer-encoding:", 18) && strcasestr(l + 18, "chunked"))
			r->chunked = true;
		else if (!strncasecmp(l, "content-length:", 15)) {
			char *end;
			unsigned long long v = strtoull(l + 15, &end, 10);
			if (end == l + 15)
				return -EPROTO;
			r->left = v;
		}
		return 0;
	case ST_CHUNK_SIZE: {
		char *end;
		unsigned long long v = strtoull(l, &end, 16);
		if (end == l)
			return -EPROTO;
		r->left = v;
		r->state = v ? ST_CHUNK_DATA : ST_TRAILER;
		return 0;
	}
	case ST_CHUNK_END:
		if (n)
			return -EPROTO;
		r->state = ST_CHUNK_SIZE;
		return 0;
	case ST_TRAILER:
		if (n == 0)
			r->state = ST_DONE;
		return 0;
	}
	return -EPROTO;
}

int hc_resp_feed(struct hc_resp *r, const char *p, size_t n, size_t *ret_used)
{
	size_t i = 0;
	int ret;
	while (i < n && r->state != ST_DONE) {
		if (r->state == ST_CHUNK_DATA || r->state == ST_LENGTH) {
			size_t k = n - i < r->left ? n - i : (size_t)r->left;
			if ((ret = hc_buf_add(&r->body, p + i, k)) < 0)
				return ret;
			i += k;
			r->left -= k;
			if (!r->left)
				r->state = r->state == ST_LENGTH ? ST_DONE : ST_CHUNK_END;
			continue;
		}
		const char *nl = memchr(p + i, '\n', n - i);
		size_t k = nl ? (size_t)(nl - (p + i)) : n - i;
		if (r->line.len + k > HC_LINE_MAX)
			return -EPROTO;
		if ((ret = hc_buf_add(&r->line, p + i, k)) < 0)
			return ret;
		i += k;
		if (nl) {
			i++;
			if ((ret = on_line(r)) < 0)
				return ret;
		}
	}
	if (ret_used)
		*ret_used = i;
	return r->state == ST_DONE;
}

int hc_resp_next_line(struct hc_resp *r, const char **line, size_t *len)
{
	struct hc_buf *b = &r->body;
	if (b->off == b->len) {
		b->off = b->len = 0;
		return 0;
	}
	const char *s = b->p + b->off;
	const char *nl = memchr(s, '\n', b->len - b->off);
	if (!nl) {
		if (b->off) { /* keep the partial line at the front */
			memmove(b->p, s, b->len - b->off);
			b->len -= b->off;
			b->off = 0;
			b->p[b->len] = '\0';
		}
		return 0;
	}
	size_t k = (size_t)(nl - s);
	b->off += k + 1;
	if (k && s[k - 1] == '\r')
		k--;
	*line = s;
	*len = k;
	return 1;
}
