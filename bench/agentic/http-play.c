/* SPDX-License-Identifier: MIT */
/*
 * Playing a trace statelessly over the HTTP API, as an agent framework
 * talks to an OpenAI-compatible server: no session on the daemon; each turn
 * of a session is one POST /v1/completions whose prompt is the session's
 * whole history as token ids (every earlier prompt, every id generated),
 * plus the turn's new ids; greedy, ignore_eos, max_tokens = GEN, streamed
 * (SSE) with stream_options.include_usage and return_token_ids, so the ids
 * generated come back as ids and go into the next turn's prompt exactly.
 * Reuse is then the daemon's prefix units' (docs/DESIGN.md "KV state"):
 * usage.prompt_tokens_details.cached_tokens says how much of the history it
 * found.
 *
 * One thread and one keep-alive connection per session, so every session
 * can have its turn in flight at once, as over the socket (play.c
 * multiplexes the sessions of a client thread on one connection; an HTTP/1.1
 * connection carries one request at a time). Times as play.c's: TTFT from
 * the request's write to the first chunk carrying ids, gaps between such
 * chunks, idle time before each turn scaled by idle_scale.
 */
#include <errno.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "http-agentic.h"
#include "http-client.h"

struct hsess {
	struct ag_http_play *p;
	uint32_t idx;
	pthread_t th;
	uint32_t *hist;
	size_t n_hist, cap_hist;
	uint32_t *itl;
	size_t n_itl, cap_itl;
	uint64_t t_first_send, t_last_end;
	int err;
	char what[200];
};

static int push_u32(uint32_t **a, size_t *n, size_t *cap, uint32_t v)
{
	if (*n == *cap) {
		size_t c = *cap ? 2 * *cap : 4096;
		uint32_t *p = realloc(*a, c * sizeof(*p));
		if (!p)
			return -ENOMEM;
		*a = p;
		*cap = c;
	}
	(*a)[(*n)++] = v;
	return 0;
}

static void sleep_ns(uint64_t ns)
{
	struct timespec ts = { .tv_sec = (time_t)(ns / 1000000000u),
			       .tv_nsec = (long)(ns % 1000000000u) };
	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

/* One SSE data line of turn rec: ids, usage, or an error. */
static int on_data(struct hsess *s, struct ag_turn_rec *rec, const char *data, size_t len,
		   bool *done)
{
	if (len == 6 && !memcmp(data, "[DONE]", 6)) {
		*done = true;
		return 0;
	}
	json_error_t je;
	json_t *o = json_loadb(data, len, 0, &je);
	if (!o) {
		snprintf(s->what, sizeof(s->what), "a chunk is not JSON: %s", je.text);
		return -EPROTO;
	}
	int ret = 0;
	json_t *e = json_object_get(o, "error");
	if (e) {
		snprintf(s->what, sizeof(s->what), "the daemon answered an error: %.150s",
			 json_string_value(json_object_get(e, "message")));
		ret = -EREMOTEIO;
		goto out;
	}
	uint64_t now = dp_clock_ns();
	json_t *ch = json_array_get(json_object_get(o, "choices"), 0);
	json_t *ids = json_object_get(ch, "token_ids");
	if (ch && !json_is_array(ids)) {
		snprintf(s->what, sizeof(s->what), "a chunk has no token_ids (return_token_ids)");
		ret = -EPROTO;
		goto out;
	}
	if (json_array_size(ids)) {
		if (!rec->t_first)
			rec->t_first = now;
		else if ((ret = push_u32(&s->itl, &s->n_itl, &s->cap_itl,
					 (uint32_t)((now - rec->t_end) / 1000))) < 0)
			goto out;
		rec->t_end = now; /* the last chunk with ids, so far */
	}
	size_t i;
	json_t *v;
	json_array_foreach(ids, i, v) {
		uint32_t id = (uint32_t)json_integer_value(v);
		rec->digest = (rec->digest ^ id) * 0x100000001b3ull;
		rec->generated++;
		if ((ret = push_u32(&s->hist, &s->n_hist, &s->cap_hist, id)) < 0)
			goto out;
	}
	json_t *u = json_object_get(o, "usage");
	if (json_is_object(u))
		rec->cached = (uint32_t)json_integer_value(
			json_object_get(json_object_get(u, "prompt_tokens_details"), "cached_tokens"));
out:
	json_decref(o);
	return ret;
}

/* One turn: the POST, then its SSE stream to [DONE]. */
static int play_turn(struct hsess *s, int *fd, struct hc_buf *req, struct hc_resp *resp,
		     uint32_t turn)
{
	struct ag_http_play *p = s->p;
	const struct ag_turn *t = &p->tr->sessions[s->idx].turns[turn];
	struct ag_turn_rec *rec = &p->out.recs[s->idx][turn];
	int ret;

	size_t n0 = s->n_hist;
	for (uint32_t i = 0; i < t->append; i++)
		if ((ret = push_u32(&s->hist, &s->n_hist, &s->cap_hist, 0)) < 0)
			return ret;
	ag_turn_tokens(p->tr, s->idx, turn, s->hist + n0, t->append);

	struct hc_buf body = { 0 };
	ret = hc_buf_addf(&body, "{\"prompt\":[");
	for (size_t i = 0; ret == 0 && i < s->n_hist; i++)
		ret = hc_buf_addf(&body, i ? ",%u" : "%u", s->hist[i]);
	if (ret == 0)
		ret = hc_buf_addf(&body,
				  "],\"max_tokens\":%u,\"temperature\":0,\"ignore_eos\":true,"
				  "\"stream\":true,\"stream_options\":{\"include_usage\":true},"
				  "\"return_token_ids\":true}",
				  t->gen);
	req->len = req->off = 0;
	if (ret == 0)
		ret = hc_post_format(req, "/v1/completions", body.p, body.len);
	hc_buf_fini(&body);
	if (ret < 0)
		return ret;

	memset(rec, 0, sizeof(*rec));
	rec->tier = turn ? AG_TIER_NONE : AG_TIER_NEW;
	rec->digest = 0xcbf29ce484222325ull;
	for (int attempt = 0;; attempt++) {
		if (*fd < 0 && (*fd = hc_connect(p->addr, false)) < 0) {
			ret = *fd;
			snprintf(s->what, sizeof(s->what), "connect to %s", p->addr);
			return ret;
		}
		rec->t_send = dp_clock_ns();
		if ((ret = hc_write_all(*fd, req->p, req->len)) == 0)
			break;
		/* the server closed the idle keep-alive connection: once more */
		close(*fd);
		*fd = -1;
		if (attempt) {
			snprintf(s->what, sizeof(s->what), "write the request");
			return ret;
		}
	}
	if (!s->t_first_send)
		s->t_first_send = rec->t_send;

	hc_resp_reset(resp);
	bool done = false;
	char buf[65536];
	for (;;) {
		ssize_t n = read(*fd, buf, sizeof(buf));
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			snprintf(s->what, sizeof(s->what), "the connection closed mid-response");
			return n < 0 ? -errno : -ECONNRESET;
		}
		int fin = hc_resp_feed(resp, buf, (size_t)n, NULL);
		if (fin < 0) {
			snprintf(s->what, sizeof(s->what), "an unreadable HTTP response");
			return fin;
		}
		if (resp->status != 200 && fin) {
			snprintf(s->what, sizeof(s->what), "HTTP %u: %.150s", resp->status,
				 resp->body.p ? resp->body.p : "");
			return -EREMOTEIO;
		}
		const char *line;
		size_t len;
		while (resp->status == 200 && hc_resp_next_line(resp, &line, &len))
			if (len > 6 && !memcmp(line, "data: ", 6) &&
			    (ret = on_data(s, rec, line + 6, len - 6, &done)) < 0)
				return ret;
		if (fin)
			break;
	}
	s->t_last_end = rec->t_end = dp_clock_ns();
	if (!done || rec->generated != t->gen) {
		snprintf(s->what, sizeof(s->what), "turn %u ended after %u of %u tokens%s", turn,
			 rec->generated, t->gen, done ? "" : " without [DONE]");
		return -EPROTO;
	}
	return 0;
}

static void *sess_main(void *arg)
{
	struct hsess *s = arg;
	struct ag_http_play *p = s->p;
	const struct ag_session *ts = &p->tr->sessions[s->idx];
	struct hc_buf req = { 0 };
	struct hc_resp resp = { 0 };
	int fd = -1;
	uint64_t t0 = dp_clock_ns(), due = t0;

	for (uint32_t turn = 0; turn < ts->n_turns && !s->err; turn++) {
		due += (uint64_t)((double)ts->turns[turn].idle_ms * p->idle_scale * 1e6);
		uint64_t now = dp_clock_ns();
		if (due > now)
			sleep_ns(due - now);
		s->err = play_turn(s, &fd, &req, &resp, turn);
		due = dp_clock_ns(); /* the idle time counts from the turn's end */
	}
	if (fd >= 0)
		close(fd);
	hc_buf_fini(&req);
	hc_resp_fini(&resp);
	return NULL;
}

void ag_http_play_fini(struct ag_http_play *p)
{
	ag_played_fini(&p->out, p->tr);
}

int ag_http_play_run(struct ag_http_play *p, char *err, size_t err_len)
{
	const struct ag_trace *tr = p->tr;
	struct hsess *ss = calloc(tr->n_sessions, sizeof(*ss));
	int ret = -ENOMEM;

	err[0] = '\0';
	if (!ss || ag_played_init(&p->out, tr) < 0)
		goto out;
	uint32_t started = 0;
	for (; started < tr->n_sessions; started++) {
		ss[started].p = p;
		ss[started].idx = started;
		if ((ret = -pthread_create(&ss[started].th, NULL, sess_main, &ss[started])) < 0) {
			snprintf(err, err_len, "cannot start session thread %u", started);
			break;
		}
	}
	for (uint32_t i = 0; i < started; i++) {
		pthread_join(ss[i].th, NULL);
		if (ss[i].err && !err[0]) {
			ret = ss[i].err;
			snprintf(err, err_len, "session %u: %s: %s", i, ss[i].what, strerror(-ret));
		}
		if (!err[0] && (ret = ag_played_add(&p->out, ss[i].t_first_send, ss[i].t_last_end,
		                                    ss[i].itl, ss[i].n_itl)) < 0)
			snprintf(err, err_len, "out of memory");
	}
	if (err[0])
		goto out;
	ret = 0;
out:
	if (ret == -ENOMEM && !err[0])
		snprintf(err, err_len, "out of memory");
	for (uint32_t i = 0; ss && i < tr->n_sessions; i++) {
		free(ss[i].hist);
		free(ss[i].itl);
	}
	free(ss);
	return ret;
}
