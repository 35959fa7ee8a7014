/* SPDX-License-Identifier: MIT */
/*
 * agentic-stream-http — the HTTP side of the streaming comparison, in C
 * like its counterpart agentic-stream-socket, so HTTP vs the Unix-socket
 * protocol compares the daemon's two fronts and not Python against C: C
 * concurrent POST /v1/completions SSE streams, every one the same prompt
 * ids and --tokens tokens (ignore_eos, temperature 0.8, seed 1, as the
 * socket side asks), return_token_ids so that ids are counted as the socket
 * side counts them, all driven by one thread on an epoll loop (one
 * connection each, non-blocking).
 *
 *	agentic-stream-http --http unix:/PATH|HOST:PORT --streams C --tokens N --prompt ID,ID,...
 *
 * Prints one line: streams=C tokens=T wall_s=S tok_s=R ttft_p50_ms=X ttft_p99_ms=Y
 * (TTFT: the request's write to the first chunk with ids; tok_s: ids
 * received by all streams over the wall time). Exit status 1 on any error.
 */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "http-client.h"
#include "stream.h"

struct stream {
	int fd;
	struct hc_buf req;
	struct hc_resp resp;
	double t0, ttft;
	uint64_t got;
	bool done;
};

/* Write what is left of the request; 0 when all is out, 1 for more. */
static int send_more(struct stream *s)
{
	while (s->req.off < s->req.len) {
		ssize_t k = write(s->fd, s->req.p + s->req.off, s->req.len - s->req.off);
		if (k < 0) {
			if (errno == EAGAIN)
				return 1;
			if (errno == EINTR)
				continue;
			return -errno;
		}
		s->req.off += (size_t)k;
	}
	return 0;
}

/* Read what is there; count the ids of complete SSE chunks. 1 when the
 * response is complete. */
static int recv_more(struct stream *s, const char **what)
{
	char buf[65536];
	for (;;) {
		ssize_t n = read(s->fd, buf, sizeof(buf));
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN)
			return 0;
		if (n <= 0) {
			*what = "the connection closed mid-response";
			return n < 0 ? -errno : -ECONNRESET;
		}
		int fin = hc_resp_feed(&s->resp, buf, (size_t)n, NULL);
		if (fin < 0) {
			*what = "an unreadable HTTP response";
			return fin;
		}
		if (s->resp.status != 200) {
			if (fin) {
				fprintf(stderr, "HTTP %u: %s\n", s->resp.status,
					s->resp.body.p ? s->resp.body.p : "");
				*what = "the daemon refused the request";
				return -EREMOTEIO;
			}
			continue;
		}
		const char *line;
		size_t len;
		while (hc_resp_next_line(&s->resp, &line, &len)) {
			if (len <= 6 || memcmp(line, "data: ", 6) ||
			    (len == 12 && !memcmp(line + 6, "[DONE]", 6)))
				continue;
			json_t *o = json_loadb(line + 6, len - 6, 0, NULL);
			json_t *ids = json_object_get(json_array_get(json_object_get(o, "choices"), 0),
						      "token_ids");
			if (!o || json_object_get(o, "error")) {
				json_decref(o);
				*what = "a chunk is an error or not JSON";
				return -EPROTO;
			}
			if (json_array_size(ids) && !s->got)
				s->ttft = stream_now_s() - s->t0;
			s->got += json_array_size(ids);
			json_decref(o);
		}
		if (fin)
			return 1;
	}
}

int main(int argc, char **argv)
{
	static struct stream_opts o;
	int ret = stream_opts_parse(&o, argc, argv, "http", "unix:/PATH|HOST:PORT");
	if (ret)
		return ret;
	unsigned streams = o.streams;
	const char *addr = o.addr;
	struct hc_buf body = { 0 };
	ret = hc_buf_addf(&body, "{\"prompt\":[");
	for (size_t i = 0; i < o.n_ids && ret == 0; i++)
		ret = hc_buf_addf(&body, i ? ",%u" : "%u", o.ids[i]);
	if (ret == 0)
		ret = hc_buf_addf(&body,
				  "],\"max_tokens\":%u,\"ignore_eos\":true,\"temperature\":0.8,"
				  "\"seed\":1,\"stream\":true,\"return_token_ids\":true}",
				  o.tokens);
	struct stream *s = calloc(streams, sizeof(*s));
	double *ttft = calloc(streams, sizeof(*ttft));
	int ep = epoll_create1(EPOLL_CLOEXEC);
	if (ret < 0 || !s || !ttft || ep < 0) {
		fprintf(stderr, "out of memory\n");
		return 1;
	}
	double t0 = stream_now_s();
	const char *what = "";
	unsigned left = streams;
	for (unsigned i = 0; i < streams; i++) {
		if ((s[i].fd = hc_connect(addr, true)) < 0) {
			fprintf(stderr, "stream %u: connect to %s: %s\n", i, addr, strerror(-s[i].fd));
			return 1;
		}
		hc_resp_reset(&s[i].resp);
		if (hc_post_format(&s[i].req, "/v1/completions", body.p, body.len) < 0)
			return 1;
		s[i].t0 = stream_now_s();
		int k = send_more(&s[i]);
		struct epoll_event ev = { .events = EPOLLIN | (k > 0 ? EPOLLOUT : 0u),
					  .data.u32 = i };
		if (k < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, s[i].fd, &ev) < 0) {
			fprintf(stderr, "stream %u: cannot send: %s\n", i, strerror(k < 0 ? -k : errno));
			return 1;
		}
	}
	int bad = 0;
	while (left && !bad) {
		struct epoll_event evs[256];
		int k = epoll_wait(ep, evs, 256, 600000);
		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0) {
			fprintf(stderr, "no progress for 600 s\n");
			bad = 1;
			break;
		}
		for (int j = 0; j < k && !bad; j++) {
			struct stream *x = &s[evs[j].data.u32];
			if (x->done)
				continue;
			if (evs[j].events & EPOLLOUT) {
				int r = send_more(x);
				if (r == 0) {
					struct epoll_event ev = { .events = EPOLLIN,
								  .data.u32 = evs[j].data.u32 };
					epoll_ctl(ep, EPOLL_CTL_MOD, x->fd, &ev);
				} else if (r < 0) {
					fprintf(stderr, "stream %u: write: %s\n", evs[j].data.u32,
						strerror(-r));
					bad = 1;
				}
			}
			if (!bad && (evs[j].events & (EPOLLIN | EPOLLHUP | EPOLLERR))) {
				int r = recv_more(x, &what);
				if (r < 0) {
					fprintf(stderr, "stream %u: %s: %s\n", evs[j].data.u32, what,
						strerror(-r));
					bad = 1;
				} else if (r == 1) {
					x->done = true;
					left--;
					epoll_ctl(ep, EPOLL_CTL_DEL, x->fd, NULL);
					close(x->fd);
					x->fd = -1;
				}
			}
		}
	}
	double wall = stream_now_s() - t0;
	uint64_t got = 0;
	for (unsigned i = 0; i < streams; i++) {
		got += s[i].got;
		ttft[i] = s[i].ttft;
		if (s[i].fd >= 0)
			close(s[i].fd);
		hc_buf_fini(&s[i].req);
		hc_resp_fini(&s[i].resp);
	}
	if (!bad)
		stream_print(streams, got, wall, ttft);
	close(ep);
	hc_buf_fini(&body);
	free(s);
	free(ttft);
	return bad;
}
