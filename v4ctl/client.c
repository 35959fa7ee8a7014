/* SPDX-License-Identifier: MIT */
/*
 * v4ctl/client.c — the blocking dualpath.v1 client (see client.h).
 */
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "base/clock.h"
#include "v4ctl/client.h"

/* Largest response accepted. The daemon cuts a connection off once 16 MiB
 * of responses wait for it, so no single response it sends is larger. */
#define DP_CLIENT_RECV_MAX (64u << 20)

struct kept {
	Dualpath__V1__Response *resp;
	struct kept *next;
};

struct dp_client {
	int fd;
	int timeout_ms;
	bool broken; /* framing lost: every call fails */
	uint64_t next_id;
	uint32_t max_frame; /* the daemon's, once known */
	struct dp_frame_buf rbuf;
	struct kept *kept, **kept_tail;
	Dualpath__V1__Response *hello; /* holds the HelloReply */
	Dualpath__V1__Code err_code;
	char *err_msg;
	char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
};

const char *dp_client_default_socket(void)
{
	const char *s = getenv(DP_CLIENT_SOCKET_ENV);
	return s && s[0] ? s : DP_CLIENT_SOCKET_DEFAULT;
}

int dp_client_connect(const char *path, int timeout_ms, struct dp_client **ret_client)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	struct dp_client *c;
	int ret;

	if (!path || !path[0] || !ret_client)
		return -EINVAL;
	if (strlen(path) >= sizeof(sa.sun_path))
		return -ENAMETOOLONG;
	memcpy(sa.sun_path, path, strlen(path) + 1);
	c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	c->timeout_ms = timeout_ms > 0 ? timeout_ms : -1;
	c->next_id = 1;
	c->max_frame = DP_FRAME_MAX_DEFAULT;
	c->kept_tail = &c->kept;
	memcpy(c->path, sa.sun_path, sizeof(c->path));
	dp_frame_buf_init(&c->rbuf);

	c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (c->fd < 0) {
		ret = -errno;
		free(c);
		return ret;
	}
	/* A Unix connect blocks only while the listener's backlog is full;
	 * SO_SNDTIMEO bounds that wait (the kernel then says EAGAIN). */
	if (timeout_ms > 0) {
		struct timeval tv = {.tv_sec = timeout_ms / 1000,
		                     .tv_usec = (timeout_ms % 1000) * 1000};
		(void)setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	}
	do {
		ret = connect(c->fd, (struct sockaddr *)&sa, sizeof(sa));
	} while (ret < 0 && errno == EINTR);
	if (ret < 0) {
		ret = errno == EAGAIN ? -ETIMEDOUT : -errno;
		close(c->fd);
		free(c);
		return ret;
	}
	if (timeout_ms > 0) {
		struct timeval tv = {0};
		(void)setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	}
	*ret_client = c;
	return 0;
}

void dp_client_free(struct dp_client *c)
{
	if (!c)
		return;
	while (c->kept) {
		struct kept *k = c->kept;
		c->kept = k->next;
		dp_proto_response_free(k->resp);
		free(k);
	}
	if (c->fd >= 0)
		close(c->fd);
	dp_frame_buf_fini(&c->rbuf);
	dp_proto_response_free(c->hello);
	free(c->err_msg);
	free(c);
}

int dp_client_fd(const struct dp_client *c)
{
	return c ? c->fd : -EINVAL;
}

const char *dp_client_path(const struct dp_client *c)
{
	return c ? c->path : "";
}

bool dp_client_has_pending(const struct dp_client *c)
{
	return c && c->kept;
}

const Dualpath__V1__HelloReply *dp_client_server(const struct dp_client *c)
{
	return c && c->hello ? c->hello->hello : NULL;
}

uint64_t dp_client_next_id(struct dp_client *c)
{
	uint64_t id = c->next_id++;
	if (c->next_id == 0)
		c->next_id = 1;
	return id;
}

Dualpath__V1__Code dp_client_last_error(const struct dp_client *c, const char **ret_message)
{
	if (ret_message)
		*ret_message = c && c->err_msg ? c->err_msg : "";
	return c ? c->err_code : DUALPATH__V1__CODE__OK;
}

const char *dp_client_code_name(Dualpath__V1__Code code)
{
	const ProtobufCEnumValue *v =
	    protobuf_c_enum_descriptor_get_value(&dualpath__v1__code__descriptor, (int)code);
	return v ? v->name : "UNKNOWN";
}

static void note_error(struct dp_client *c, const Dualpath__V1__Response *r)
{
	if (r->body_case != DUALPATH__V1__RESPONSE__BODY_ERROR || !r->error)
		return;
	c->err_code = r->error->code;
	free(c->err_msg);
	c->err_msg = strdup(r->error->message ? r->error->message : "");
}

int dp_client_send(struct dp_client *c, Dualpath__V1__Request *req)
{
	if (!c || !req)
		return -EINVAL;
	if (c->broken)
		return -ENOTCONN;
	if (!req->request_id)
		req->request_id = dp_client_next_id(c);
	int ret = dp_frame_write_fd(c->fd, &req->base, c->max_frame, c->timeout_ms);
	if (ret < 0 && ret != -EINVAL && ret != -EMSGSIZE)
		c->broken = true; /* part of a frame may be out */
	return ret;
}

/* Read one response off the socket, waiting at most timeout_ms for it to
 * begin (< 0: forever). */
static int read_one(struct dp_client *c, int timeout_ms, Dualpath__V1__Response **ret_resp)
{
	struct pollfd p = {.fd = c->fd, .events = POLLIN};
	int ret;

	if (c->broken)
		return -ENOTCONN;
	do {
		ret = poll(&p, 1, timeout_ms);
	} while (ret < 0 && errno == EINTR);
	if (ret < 0)
		return -errno;
	if (ret == 0)
		return -ETIMEDOUT; /* nothing began: the connection is intact */
	/* a response began: the rest follows at once from a live daemon */
	ret = dp_frame_read_fd(c->fd, &c->rbuf, DP_CLIENT_RECV_MAX,
	                       c->timeout_ms > 0 ? c->timeout_ms : -1);
	if (ret == 0) {
		c->broken = true;
		return -ECONNRESET; /* closed between frames */
	}
	if (ret < 0) {
		c->broken = true;
		return ret;
	}
	ret = dp_proto_response_decode(c->rbuf.data, c->rbuf.len, 0, ret_resp);
	if (ret < 0) {
		c->broken = true;
		return ret;
	}
	note_error(c, *ret_resp);
	return 0;
}

int dp_client_recv(struct dp_client *c, int timeout_ms, Dualpath__V1__Response **ret_resp)
{
	if (!c || !ret_resp)
		return -EINVAL;
	if (c->kept) {
		struct kept *k = c->kept;
		c->kept = k->next;
		if (!c->kept)
			c->kept_tail = &c->kept;
		*ret_resp = k->resp;
		free(k);
		return 0;
	}
	return read_one(c, timeout_ms, ret_resp);
}

int dp_client_recv_id(struct dp_client *c, uint64_t id, int timeout_ms,
                      Dualpath__V1__Response **ret_resp)
{
	if (!c || !ret_resp)
		return -EINVAL;
	for (struct kept **pp = &c->kept; *pp; pp = &(*pp)->next) {
		struct kept *k = *pp;
		if (k->resp->request_id != id && k->resp->request_id != 0)
			continue;
		*pp = k->next;
		if (!k->next)
			c->kept_tail = pp; /* removed the tail */
		*ret_resp = k->resp;
		free(k);
		return 0;
	}
	uint64_t deadline = timeout_ms >= 0 ? dp_clock_ms() + (uint64_t)timeout_ms : 0;
	for (;;) {
		int left = -1;
		if (timeout_ms >= 0) {
			uint64_t t = dp_clock_ms();
			left = t >= deadline ? 0 : (int)(deadline - t);
		}
		Dualpath__V1__Response *r;
		int ret = read_one(c, left, &r);
		if (ret < 0)
			return ret;
		if (r->request_id == id || r->request_id == 0) {
			*ret_resp = r;
			return 0;
		}
		struct kept *k = malloc(sizeof(*k));
		if (!k) {
			dp_proto_response_free(r);
			return -ENOMEM;
		}
		k->resp = r;
		k->next = NULL;
		*c->kept_tail = k;
		c->kept_tail = &k->next;
	}
}

int dp_client_call(struct dp_client *c, Dualpath__V1__Request *req,
                   Dualpath__V1__Response **ret_resp)
{
	if (!c || !req || !ret_resp)
		return -EINVAL;
	int ret = dp_client_send(c, req);
	if (ret < 0)
		return ret;
	return dp_client_recv_id(c, req->request_id, c->timeout_ms, ret_resp);
}

int dp_client_hello(struct dp_client *c, const char *client_name)
{
	Dualpath__V1__Request req = DUALPATH__V1__REQUEST__INIT;
	Dualpath__V1__Hello h = DUALPATH__V1__HELLO__INIT;
	Dualpath__V1__Response *r;

	if (!c)
		return -EINVAL;
	h.protocol_version = DP_PROTO_VERSION;
	h.client_name = (char *)(client_name ? client_name : "");
	req.body_case = DUALPATH__V1__REQUEST__BODY_HELLO;
	req.hello = &h;
	int ret = dp_client_call(c, &req, &r);
	if (ret < 0)
		return ret;
	if (r->body_case == DUALPATH__V1__RESPONSE__BODY_ERROR) {
		dp_proto_response_free(r);
		return -EREMOTEIO;
	}
	if (r->body_case != DUALPATH__V1__RESPONSE__BODY_HELLO || !r->hello) {
		dp_proto_response_free(r);
		c->broken = true;
		return -EPROTO;
	}
	dp_proto_response_free(c->hello);
	c->hello = r;
	if (r->hello->max_frame_bytes && r->hello->max_frame_bytes <= DP_FRAME_MAX_LIMIT)
		c->max_frame = r->hello->max_frame_bytes;
	return 0;
}
