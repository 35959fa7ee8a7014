/* SPDX-License-Identifier: MIT */
/*
 * The HTTP routes and the life of a request.
 *
 *   receiving  MHD hands us the body piece by piece (capped: 413)
 *   dispatch   auth (401), route (404/405), parse (400 with param);
 *              answered here (health, models, tokenize) or sent to compute
 *              as a dp_msg holding a slot (429 when none is free)
 *   waiting    the connection is suspended: no thread waits
 *   events     compute's tokens become text (held back by the longest stop
 *              string less one byte, so a stop string split over tokens is
 *              still found), then SSE chunks or, at the end, one JSON body;
 *              the connection is resumed to send them
 *   completed  MHD says the request is over, sent or not: a generation
 *              still running is cancelled (a client that went away)
 *
 * A suspended stream gets a `: ping` comment every keepalive_ms (proxies
 * close streams that stay silent through a long prefill). A reader that lets more than its share of client_buffer_bytes
 * pile up is cut off and its generation cancelled.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "daemon/http-front.h"
#include "daemon/log.h"
#include "model/conv.h"

enum route {
	R_NONE,
	R_CHAT,
	R_COMPLETIONS,
	R_TOKENIZE,
	R_DETOKENIZE,
	R_MODELS,
	R_HEALTH,
	R_METRICS,
};

struct hreq {
	struct dp_http *h;
	struct MHD_Connection *conn;
	enum route route;
	bool dispatched, too_large, suspended, responded, final, cut_off;
	int32_t slot; /* -1: none */
	uint64_t rid;
	struct dp_http_buf body;
	struct dp_http_request req;
	struct dp_tok_stream ts;
	size_t hold;		/* bytes of text held back for stop strings */
	struct dp_http_buf text; /* generated text (chat: content) not sent yet */
	struct dp_http_buf out;	 /* response bytes (SSE), or the whole body */
	/* chat: the output parser, and (not streamed) the reply being built */
	bool chat;
	struct dp_conv_stream *conv;
	struct dp_http_buf reasoning;
	json_t *calls;
	unsigned status;
	const char *content_type;
	const char *finish;
	bool sent_role;
	uint32_t prompt_tokens, cached_tokens, completion_tokens;
	uint64_t t_start, t_first, t_last, t_out;
	int64_t created;
	char id[48];
	char xrid[80];
};

static uint64_t now_ns(void)
{
	return dp_clock_ns();
}

/* ---- answering ------------------------------------------------------------------ */

static void wake(struct hreq *r)
{
	if (r->suspended) {
		r->suspended = false;
		MHD_resume_connection(r->conn);
	}
}

static enum MHD_Result queue(struct hreq *r, unsigned status, const char *type, const char *body,
			     size_t len)
{
	struct MHD_Response *resp = MHD_create_response_from_buffer(len, (void *)body,
								    MHD_RESPMEM_MUST_COPY);
	if (!resp)
		return MHD_NO;
	MHD_add_response_header(resp, "Content-Type", type);
	MHD_add_response_header(resp, "X-Request-Id", r->xrid);
	if (status == 401)
		MHD_add_response_header(resp, "WWW-Authenticate", "Bearer");
	enum MHD_Result ret = MHD_queue_response(r->conn, status, resp);
	MHD_destroy_response(resp);
	r->responded = true;
	if (status >= 500)
		r->h->server_errors++;
	else if (status >= 400)
		r->h->client_errors++;
	return ret;
}

static enum MHD_Result queue_json(struct hreq *r, unsigned status, json_t *o)
{
	char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
	json_decref(o);
	if (!s)
		return queue(r, 500, "application/json",
			     "{\"error\":{\"message\":\"out of memory\",\"type\":\"server_error\","
			     "\"param\":null,\"code\":null}}", 82);
	enum MHD_Result ret = queue(r, status, "application/json", s, strlen(s));
	free(s);
	return ret;
}

static enum MHD_Result queue_error(struct hreq *r, const struct dp_http_error *e)
{
	char *s = dp_http_error_json(e);
	if (!s)
		return queue(r, 500, "application/json", "{}", 2);
	enum MHD_Result ret = queue(r, e->status, "application/json", s, strlen(s));
	free(s);
	return ret;
}

#define REFUSE(r, status, type, code, param, ...)                                           \
	do {                                                                                 \
		struct dp_http_error e_;                                                     \
		dp_http_error_set(&e_, status, type, code, param, __VA_ARGS__);              \
		return queue_error(r, &e_);                                                  \
	} while (0)

/* compute's code -> HTTP status and OpenAI error type */
static void code_status(uint32_t code, unsigned *status, const char **type)
{
	switch (code) {
	case DUALPATH__V1__CODE__INVALID_ARGUMENT:
	case DUALPATH__V1__CODE__FAILED_PRECONDITION:
		*status = 400, *type = "invalid_request_error";
		break;
	case DUALPATH__V1__CODE__NOT_FOUND:
		*status = 404, *type = "not_found_error";
		break;
	case DUALPATH__V1__CODE__PERMISSION_DENIED:
		*status = 403, *type = "permission_error";
		break;
	case DUALPATH__V1__CODE__ALREADY_EXISTS:
		*status = 409, *type = "conflict_error";
		break;
	case DUALPATH__V1__CODE__RESOURCE_EXHAUSTED:
		*status = 429, *type = "rate_limit_error";
		break;
	case DUALPATH__V1__CODE__UNAVAILABLE:
		*status = 503, *type = "service_unavailable";
		break;
	default:
		*status = 500, *type = "server_error";
	}
}

/* ---- slots and compute ------------------------------------------------------------ */

static int slot_take(struct dp_http *h, struct hreq *r)
{
	for (uint32_t i = 0; i < h->srv->cfg.http_max_requests; i++)
		if (!h->slots[i].r) {
			h->slots[i].r = r;
			h->n_busy++;
			r->slot = (int32_t)i;
			r->rid = ++h->next_rid;
			return 0;
		}
	h->refused_busy++;
	return -EBUSY;
}

static struct dp_msg *msg_new(struct dp_http *h, struct hreq *r, enum dp_msg_kind kind)
{
	struct dp_msg *m = calloc(1, sizeof(*m));
	if (!m)
		return NULL;
	m->kind = kind;
	m->from = (struct dp_origin){ DP_ORIGIN_HTTP | (uint32_t)r->slot, h->slots[r->slot].gen };
	/* HTTP clients are no local users: their sessions belong to one owner
	 * no Unix user has (the uid nobody is 65534; this is one above) */
	m->uid = 65535;
	m->request_id = r->rid;
	return m;
}

/* Release the slot; a generation still running is cancelled (best effort:
 * a full queue leaves it to finish, its events dropped by generation). */
static void slot_release(struct dp_http *h, struct hreq *r, bool cancel)
{
	if (r->slot < 0)
		return;
	if (cancel) {
		struct dp_msg *m = msg_new(h, r, DP_MSG_CANCEL);
		if (m) {
			m->cancel_target = r->rid;
			if (dp_server_send(h->srv, m) < 0)
				free(m);
		}
	}
	h->slots[r->slot].r = NULL;
	h->slots[r->slot].gen++;
	h->n_busy--;
	r->slot = -1;
}

/* ---- output: chunks and bodies --------------------------------------------------- */

static json_t *chunk_new(struct hreq *r, bool chat)
{
	return json_pack("{s:s, s:s, s:I, s:s, s:[]}", "id", r->id, "object",
			 chat ? "chat.completion.chunk" : "text_completion", "created",
			 (json_int_t)r->created, "model", r->h->model_name, "choices");
}

static json_t *usage_new(const struct hreq *r)
{
	return json_pack("{s:i, s:i, s:i, s:{s:i}, s:i, s:i}", "prompt_tokens", r->prompt_tokens,
			 "completion_tokens", r->completion_tokens, "total_tokens",
			 r->prompt_tokens + r->completion_tokens, "prompt_tokens_details",
			 "cached_tokens", r->cached_tokens, "prompt_cache_hit_tokens", r->cached_tokens,
			 "prompt_cache_miss_tokens", r->prompt_tokens - r->cached_tokens);
}

static void cut_off(struct hreq *r);

static void out_event(struct hreq *r, json_t *o)
{
	if (!o || dp_http_sse_event(&r->out, o) < 0)
		cut_off(r);
	json_decref(o);
	struct dp_server *srv = r->h->srv;
	size_t share = srv->cfg.client_buffer_bytes / srv->cfg.http_max_requests;
	if (share < (1u << 20))
		share = 1u << 20;
	if (r->out.len - r->out.off > share) { /* a reader this far behind is cut off */
		r->h->cut_slow++;
		cut_off(r);
	}
}

/* A chat chunk: one choice with this delta (stolen) and finish_reason. */
static void emit_delta(struct hreq *r, json_t *delta, const char *finish)
{
	json_t *c = chunk_new(r, true);
	if (!r->sent_role) { /* the first chunk says who speaks */
		json_object_set_new(delta, "role", json_string("assistant"));
		r->sent_role = true;
	}
	json_array_append_new(json_object_get(c, "choices"),
			      json_pack("{s:i, s:o, s:n, s:o}", "index", 0, "delta", delta, "logprobs",
					"finish_reason", finish ? json_string(finish) : json_null()));
	out_event(r, c);
}

/* A completions chunk with text (or the final one with finish_reason). */
static void emit_text(struct hreq *r, const char *text, size_t len, const char *finish)
{
	if (r->chat) {
		emit_delta(r, finish && !len ? json_object() : json_pack("{s:s%}", "content", text, len),
			   finish);
		return;
	}
	json_t *c = chunk_new(r, false);
	json_array_append_new(json_object_get(c, "choices"),
			      json_pack("{s:i, s:s%, s:n, s:o}", "index", 0, "text", text, len,
					"logprobs", "finish_reason",
					finish ? json_string(finish) : json_null()));
	out_event(r, c);
}

/* Send what of r->text no stop string can still claim; all of it at the end. */
static void flush_text(struct hreq *r, bool all)
{
	size_t n = r->text.len - r->text.off;
	if (!all)
		n = n > r->hold ? n - r->hold : 0;
	/* never split a UTF-8 character between two chunks */
	while (n && !all && ((unsigned char)r->text.p[r->text.off + n] & 0xc0) == 0x80)
		n--;
	if (!n)
		return;
	if (r->req.stream)
		emit_text(r, r->text.p + r->text.off, n, NULL);
	else if (dp_http_buf_add(&r->out, r->text.p + r->text.off, n) < 0)
		cut_off(r);
	r->text.off += n;
	dp_http_buf_compact(&r->text);
}

static void finish(struct hreq *r, const char *reason)
{
	struct dp_http *h = r->h;
	flush_text(r, true);
	if (r->chat && json_array_size(r->calls) && !strcmp(reason, "stop"))
		reason = "tool_calls";
	r->finish = reason;
	if (r->req.stream) {
		emit_text(r, "", 0, reason);
		if (r->req.include_usage) {
			json_t *c = chunk_new(r, r->chat);
			json_object_set_new(c, "usage", usage_new(r));
			out_event(r, c);
		}
		if (dp_http_sse_done(&r->out) < 0)
			cut_off(r);
	} else {
		json_t *o;
		if (r->chat) {
			json_t *msg = json_pack("{s:s, s:o}", "role", "assistant", "content",
						r->out.len || !json_array_size(r->calls)
							? json_stringn(r->out.p ? r->out.p : "", r->out.len)
							: json_null());
			if (msg && r->reasoning.len)
				json_object_set_new(msg, "reasoning_content",
						    json_stringn(r->reasoning.p, r->reasoning.len));
			if (msg && json_array_size(r->calls))
				json_object_set(msg, "tool_calls", r->calls);
			o = json_pack("{s:s, s:s, s:I, s:s, s:[{s:i, s:o, s:n, s:s}], s:o}", "id", r->id,
				      "object", "chat.completion", "created", (json_int_t)r->created,
				      "model", h->model_name, "choices", "index", 0, "message", msg,
				      "logprobs", "finish_reason", reason, "usage", usage_new(r));
		} else {
			o = json_pack("{s:s, s:s, s:I, s:s, s:[{s:i, s:s%, s:n, s:s}], s:o}", "id",
				      r->id, "object", "text_completion", "created",
				      (json_int_t)r->created, "model", h->model_name, "choices",
				      "index", 0, "text", r->out.p ? r->out.p : "", r->out.len,
				      "logprobs", "finish_reason", reason, "usage", usage_new(r));
		}
		char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
		json_decref(o);
		r->out.len = r->out.off = 0;
		if (!s || dp_http_buf_add(&r->out, s, strlen(s)) < 0)
			r->status = 500;
		else
			r->status = 200;
		free(s);
	}
	r->final = true;
	wake(r);
}

static void cut_off(struct hreq *r)
{
	r->cut_off = true;
	r->final = true;
	slot_release(r->h, r, true);
	wake(r);
}

/* The first stop string in the unsent text: cut there and finish. */
static bool stop_hit(struct hreq *r)
{
	const char *t = r->text.p ? r->text.p + r->text.off : NULL;
	size_t best = SIZE_MAX;
	for (uint32_t i = 0; t && i < r->req.n_stop; i++) {
		const char *p = strstr(t, r->req.stop[i]);
		if (p && (size_t)(p - t) < best)
			best = (size_t)(p - t);
	}
	if (best == SIZE_MAX)
		return false;
	r->text.len = r->text.off + best;
	r->text.p[r->text.len] = '\0';
	return true;
}

/* What the output parser made certain: reasoning and tool calls go out as
 * they come; content joins r->text, where stop strings are looked for. */
static int chat_delta(struct hreq *r, const struct dp_chat_delta *d)
{
	if (d->reasoning_len) {
		if (r->req.stream)
			emit_delta(r, json_pack("{s:s%}", "reasoning_content", d->reasoning,
						d->reasoning_len), NULL);
		else if (dp_http_buf_add(&r->reasoning, d->reasoning, d->reasoning_len) < 0)
			return -ENOMEM;
	}
	if (d->content_len && dp_http_buf_add(&r->text, d->content, d->content_len) < 0)
		return -ENOMEM;
	for (size_t i = 0; i < d->n_calls; i++) {
		const struct dp_chat_tool_call *c = &d->calls[i];
		size_t index = json_array_size(r->calls);
		json_t *call = json_pack("{s:s, s:s, s:{s:s, s:s}}", "id", c->id, "type", "function",
					 "function", "name", c->name, "arguments", c->arguments);
		if (!call || json_array_append_new(r->calls, call) < 0)
			return -ENOMEM;
		if (r->req.stream) {
			flush_text(r, true); /* content before the call goes first */
			json_t *sc = json_deep_copy(call);
			json_object_set_new(sc, "index", json_integer((json_int_t)index));
			emit_delta(r, json_pack("{s:[o]}", "tool_calls", sc), NULL);
		}
	}
	return 0;
}

static void on_tokens(struct hreq *r, const struct dp_event *e)
{
	struct dp_http *h = r->h;
	struct dp_server *srv = h->srv;
	uint64_t t = now_ns();
	if (e->n_ids) {
		if (!r->t_first) {
			r->t_first = t;
			dp_http_hist_add(&h->ttft, (t - r->t_start) / 1e9);
		} else {
			for (uint32_t i = 0; i < e->n_ids; i++)
				dp_http_hist_add(&h->itl, (t - r->t_last) / 1e9 / e->n_ids);
		}
		r->t_last = t;
	}
	char piece[256];
	size_t bound = dp_tok_stream_bound(srv->tok);
	for (uint32_t i = 0; i < e->n_ids; i++) {
		size_t got = 0;
		r->completion_tokens++;
		if (r->chat) {
			struct dp_chat_delta d;
			if (dp_conv_stream_feed(r->conv, e->ids[i], &d) < 0 || chat_delta(r, &d) < 0) {
				cut_off(r);
				return;
			}
		} else if (bound <= sizeof(piece) &&
		    dp_tok_stream_next(srv->tok, &r->ts, e->ids[i], piece, sizeof(piece), &got) == 0 &&
		    got && dp_http_buf_add(&r->text, piece, got) < 0)
			{
			cut_off(r);
			return;
		}
		if (r->req.n_stop && stop_hit(r)) {
			slot_release(h, r, true); /* compute stops; its last events find no one */
			{
			finish(r, "stop");
			return;
		}
		}
	}
	if (e->finish) {
		size_t got = 0;
		struct dp_chat_delta d;
		if (r->chat) {
			if (dp_conv_stream_finish(r->conv, &d) < 0 || chat_delta(r, &d) < 0) {
				cut_off(r);
				return;
			}
		} else if (dp_tok_stream_flush(&r->ts, piece, sizeof(piece), &got) == 0 && got) {
			dp_http_buf_add(&r->text, piece, got);
		}
		if (r->req.n_stop && stop_hit(r)) {
			slot_release(h, r, false);
			{
			finish(r, "stop");
			return;
		}
		}
		/* compute counts the tokens it prefilled and the session's state it
		 * reused; OpenAI's prompt_tokens is both, cached_tokens the second */
		r->prompt_tokens = e->prompt_tokens + e->cached_tokens;
		r->cached_tokens = e->cached_tokens;
		r->completion_tokens = e->generated_tokens;
		slot_release(h, r, false);
		const char *why = e->finish == DUALPATH__V1__FINISH_REASON__FINISH_LENGTH ? "length"
				  : e->finish == DUALPATH__V1__FINISH_REASON__FINISH_CANCELLED ? "cancelled"
											  : "stop";
		{
			finish(r, why);
			return;
		}
	}
	flush_text(r, false);
	wake(r);
}

static void on_error(struct hreq *r, const struct dp_event *e)
{
	struct dp_http_error err;
	unsigned status;
	const char *type;
	code_status(e->code, &status, &type);
	dp_http_error_set(&err, status, type, NULL, NULL, "%s",
			  e->payload ? (const char *)e->payload : "the request failed");
	slot_release(r->h, r, false);
	char *s = dp_http_error_json(&err);
	r->out.len = r->out.off = 0;
	if (r->responded) /* a stream under way: one error event, then close */
		dp_http_buf_addf(&r->out, "data: %s\n\n", s ? s : "{}");
	else {
		r->status = status;
		dp_http_buf_add(&r->out, s ? s : "{}", s ? strlen(s) : 2);
	}
	free(s);
	r->final = true;
	wake(r);
}

/* /metrics: the one metric list (front-metrics.c) in Prometheus text, then
 * the HTTP front's own counters and latency histograms. */
static void label_escaped(struct dp_http_buf *b, const char *s)
{
	for (; *s; s++) {
		if (*s == '\\' || *s == '"')
			dp_http_buf_addf(b, "\\%c", *s);
		else if (*s == '\n')
			dp_http_buf_add(b, "\\n", 2);
		else
			dp_http_buf_add(b, s, 1);
	}
}

static void on_stats(struct hreq *r, struct dp_compute_stats *s)
{
	struct dp_http *h = r->h;
	struct dp_metric_set *ms = malloc(sizeof(*ms));
	struct dp_http_buf *b = &r->out;
	slot_release(h, r, false);
	if (!ms) {
		r->status = 500;
		r->final = true;
		wake(r);
		return;
	}
	dp_metrics_fill(h->srv, NULL, s, ms);
	for (size_t i = 0; i < ms->n; i++) {
		const Dualpath__V1__Metric *m = ms->ptrs[i];
		bool first = true;
		for (size_t j = 0; j < i && first; j++)
			first = strcmp(ms->ptrs[j]->name, m->name) != 0;
		if (!first)
			continue;
		dp_http_buf_addf(b, "# HELP %s %s\n# TYPE %s %s\n", m->name, m->help, m->name,
				 m->type == DUALPATH__V1__METRIC_TYPE__METRIC_COUNTER ? "counter"
											: "gauge");
		for (size_t j = i; j < ms->n; j++) { /* every sample of the name */
			const Dualpath__V1__Metric *x = ms->ptrs[j];
			if (strcmp(x->name, m->name))
				continue;
			dp_http_buf_addf(b, "%s", x->name);
			for (size_t k = 0; k < x->n_labels; k++) {
				dp_http_buf_addf(b, "%s%s=\"", k ? "," : "{", x->labels[k]->name);
				label_escaped(b, x->labels[k]->value);
				dp_http_buf_add(b, "\"", 1);
			}
			dp_http_buf_addf(b, "%s %.17g\n", x->n_labels ? "}" : "", x->value);
		}
	}
	free(ms);
#define HC(name, help, v)                                                                  \
	dp_http_buf_addf(b, "# HELP " name " " help "\n# TYPE " name " counter\n" name " %" PRIu64 "\n", \
			 (uint64_t)(v))
	HC("dualpath_http_requests_total", "HTTP requests received", h->requests);
	HC("dualpath_http_streams_total", "HTTP requests answered as event streams", h->streams);
	HC("dualpath_http_client_errors_total", "HTTP answers with a 4xx status", h->client_errors);
	HC("dualpath_http_server_errors_total", "HTTP answers with a 5xx status", h->server_errors);
	HC("dualpath_http_busy_total", "HTTP requests refused with 429 ([http] max_requests)",
	   h->refused_busy);
	HC("dualpath_http_unauthorized_total", "HTTP requests refused for a missing or wrong key",
	   h->refused_auth);
	HC("dualpath_http_disconnects_total", "generations cancelled because the client went away",
	   h->disconnects);
	HC("dualpath_http_slow_reader_cuts_total",
	   "streams cut off for not reading their share of client_buffer_bytes", h->cut_slow);
	/* the prefix cache for stateless clients is not built yet: hits are what
	 * compute reports for sessions (usage.cached_tokens), not counted here */
#undef HC
	dp_http_buf_addf(b, "# HELP dualpath_http_requests_active HTTP requests waiting for compute\n"
			    "# TYPE dualpath_http_requests_active gauge\ndualpath_http_requests_active %u\n",
			 h->n_busy);
	dp_http_hist_render(b, "dualpath_http_time_to_first_token_seconds",
			    "from the request's arrival to its first generated token", &h->ttft);
	dp_http_hist_render(b, "dualpath_http_inter_token_latency_seconds",
			    "between generated tokens of one request", &h->itl);
	r->status = 200;
	r->content_type = "text/plain; version=0.0.4; charset=utf-8";
	r->final = true;
	wake(r);
}

static void on_event(struct dp_http *h, struct dp_event *e)
{
	uint32_t slot = e->to.conn & ~DP_ORIGIN_HTTP;
	if (slot >= h->srv->cfg.http_max_requests || !h->slots[slot].r || h->slots[slot].gen != e->to.gen)
		return; /* a request that ended (cancelled, disconnected) */
	struct hreq *r = h->slots[slot].r;
	if (r->rid != e->request_id)
		return;
	switch (e->kind) {
	case DP_EV_TOKENS:
		on_tokens(r, e);
		break;
	case DP_EV_ERROR:
		on_error(r, e);
		break;
	case DP_EV_STATS:
		on_stats(r, e->payload);
		break;
	default:
		break;
	}
}

void http_drain_events(struct dp_http *h)
{
	struct dp_event ev[32];
	uint32_t n;
	while ((n = dp_spsc_dequeue_burst(h->srv->to_http, ev, 32)) > 0)
		for (uint32_t i = 0; i < n; i++) {
			on_event(h, &ev[i]);
			free(ev[i].payload);
		}
}

void http_tick(struct dp_http *h, uint64_t now)
{
	uint64_t every = (uint64_t)h->srv->cfg.http_keepalive_ms * 1000000;
	for (uint32_t i = 0; i < h->srv->cfg.http_max_requests; i++) {
		struct hreq *r = h->slots[i].r;
		if (r && r->req.stream && r->responded && !r->final && now - r->t_out > every) {
			dp_http_sse_ping(&r->out);
			r->t_out = now;
			wake(r);
		}
	}
}

void http_stop_all(struct dp_http *h)
{
	for (uint32_t i = 0; i < h->srv->cfg.http_max_requests; i++) {
		struct hreq *r = h->slots[i].r;
		if (r)
			cut_off(r);
	}
}

/* ---- the stream's body ------------------------------------------------------------ */

static ssize_t sse_read(void *cls, uint64_t pos, char *buf, size_t max)
{
	struct hreq *r = cls;
	(void)pos;
	size_t avail = r->out.len - r->out.off;
	if (avail) {
		size_t n = avail < max ? avail : max;
		memcpy(buf, r->out.p + r->out.off, n);
		r->out.off += n;
		dp_http_buf_compact(&r->out);
		r->t_out = now_ns();
		return (ssize_t)n;
	}
	if (r->cut_off)
		return MHD_CONTENT_READER_END_WITH_ERROR;
	if (r->final)
		return MHD_CONTENT_READER_END_OF_STREAM;
	/* nothing yet: wait without a thread until compute's events wake us */
	r->suspended = true;
	MHD_suspend_connection(r->conn);
	return 0;
}

/* ---- routes -------------------------------------------------------------------------- */

static enum route route_of(const char *url)
{
	static const struct {
		const char *url;
		enum route r;
	} t[] = {
		{ "/v1/chat/completions", R_CHAT }, { "/v1/completions", R_COMPLETIONS },
		{ "/tokenize", R_TOKENIZE },	     { "/detokenize", R_DETOKENIZE },
		{ "/v1/models", R_MODELS },	     { "/health", R_HEALTH },
		{ "/metrics", R_METRICS },
	};
	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++)
		if (!strcmp(url, t[i].url))
			return t[i].r;
	return R_NONE;
}

static bool route_is_post(enum route r)
{
	return r == R_CHAT || r == R_COMPLETIONS || r == R_TOKENIZE || r == R_DETOKENIZE;
}

static enum MHD_Result on_health(struct hreq *r)
{
	int st = atomic_load(&r->h->srv->state);
	const char *name = st == DP_STATE_SERVING ? "ok" : st == DP_STATE_STARTING ? "loading"
						   : st == DP_STATE_DRAINING ? "draining" : "stopping";
	return queue_json(r, st == DP_STATE_SERVING ? 200 : 503, json_pack("{s:s}", "status", name));
}

static enum MHD_Result on_models(struct hreq *r)
{
	struct dp_http *h = r->h;
	return queue_json(r, 200, json_pack("{s:s, s:[{s:s, s:s, s:I, s:s, s:i}]}", "object", "list",
					    "data", "id", h->model_name, "object", "model",
					    "created", (json_int_t)time(NULL),
					    "owned_by", "dualpath", "max_model_len",
					    (int)h->srv->cfg.max_prompt_tokens));
}

static int encode(struct dp_http *h, const char *text, size_t len, bool bos, int32_t **ret,
		  size_t *ret_n)
{
	unsigned flags = bos && dp_tok_special(h->srv->tok, DP_TOK_BOS) >= 0 ? DP_TOK_ADD_BOS : 0;
	size_t cap = dp_tok_encode_bound(h->srv->tok, len, flags);
	int32_t *ids = malloc((cap ? cap : 1) * sizeof(*ids));
	size_t n = 0;
	int ret_ = ids ? dp_tok_encode(h->srv->tok, text, len, flags, ids, cap, &n) : -ENOMEM;
	if (ret_ < 0) {
		free(ids);
		return ret_;
	}
	*ret = ids;
	*ret_n = n;
	return 0;
}

static json_t *render_request(const struct dp_http_request *q);

static enum MHD_Result on_tokenize(struct hreq *r)
{
	struct dp_http *h = r->h;
	int32_t *ids = NULL;
	size_t n = 0;
	if (r->req.messages) { /* the prompt a chat request renders to */
		struct dp_conv_prompt p = { 0 };
		struct dp_chat_error ce;
		json_t *req = render_request(&r->req);
		int rc = req ? dp_conv_render(h->srv->conv, req, 0, &p, &ce) : -ENOMEM;
		json_decref(req);
		if (rc == -ENOMEM)
			REFUSE(r, 500, "server_error", NULL, NULL, "out of memory");
		if (rc < 0)
			REFUSE(r, rc == -ENOMEM ? 500 : 400, rc == -ENOMEM ? "server_error"
				   : "invalid_request_error", NULL, ce.param, "%s", ce.message);
		ids = p.ids;
		n = p.n_ids;
		p.ids = NULL;
		dp_conv_prompt_fini(&p);
	} else if (encode(h, r->req.prompt, r->req.prompt_len, r->req.add_special, &ids, &n) < 0) {
		REFUSE(r, 400, "invalid_request_error", NULL, "prompt", "the prompt cannot be tokenized");
	}
	json_t *a = json_array();
	for (size_t i = 0; i < n; i++)
		json_array_append_new(a, json_integer(ids[i]));
	free(ids);
	return queue_json(r, 200, json_pack("{s:o, s:I, s:i}", "tokens", a, "count", (json_int_t)n,
					    "max_model_len", (int)h->srv->cfg.max_prompt_tokens));
}

static enum MHD_Result on_detokenize(struct hreq *r)
{
	struct dp_http *h = r->h;
	size_t cap = 1;
	for (size_t i = 0; i < r->req.n_ids; i++) {
		const char *p;
		size_t len = 0;
		dp_tok_piece(h->srv->tok, r->req.ids[i], &p, &len);
		cap += len;
	}
	char *text = malloc(cap);
	size_t len = 0;
	if (!text || dp_tok_decode(h->srv->tok, r->req.ids, r->req.n_ids, text, cap, &len) < 0) {
		free(text);
		REFUSE(r, 400, "invalid_request_error", NULL, "tokens", "the tokens cannot be decoded");
	}
	json_t *o = json_pack("{s:s%}", "prompt", text, len);
	free(text);
	if (!o) /* not UTF-8 (a token cut inside a character) */
		REFUSE(r, 400, "invalid_request_error", NULL, "tokens",
		       "the tokens decode to bytes that are not UTF-8 text");
	return queue_json(r, 200, o);
}

/* Send m (its prompt set) to compute and answer as a stream or, later, as
 * one body. r holds a slot (taken by the caller). */
static enum MHD_Result generate(struct hreq *r, struct dp_msg *m)
{
	struct dp_http *h = r->h;
	struct dp_server *srv = h->srv;
	struct dp_http_request *q = &r->req;

	m->max_new = q->max_tokens ? q->max_tokens : srv->cfg.max_new_tokens;
	m->sampling = q->sampling;
	if (!q->has_seed && getrandom(&m->sampling.seed, sizeof(m->sampling.seed), GRND_NONBLOCK) < 0)
		m->sampling.seed = now_ns();
	memcpy(m->stop, q->stop_ids, q->n_stop_ids * sizeof(int32_t));
	m->n_stop = q->n_stop_ids;
	m->ignore_eos = q->ignore_eos;
	m->t_recv_ns = r->t_start;
	for (uint32_t i = 0; i < q->n_stop; i++)
		if (strlen(q->stop[i]) - 1 > r->hold)
			r->hold = strlen(q->stop[i]) - 1;
	dp_tok_stream_init(&r->ts, DP_TOK_STREAM_UTF8);
	r->created = time(NULL);
	snprintf(r->id, sizeof(r->id), "%s-%016" PRIx64 "%08" PRIx64, r->chat ? "chatcmpl" : "cmpl",
		 now_ns(), r->rid);
	if (dp_server_send(srv, m) < 0) {
		free(m->tokens);
		free(m);
		slot_release(h, r, false);
		REFUSE(r, 503, "service_unavailable", NULL, NULL,
		       "the daemon is overloaded (request queue full); retry");
	}
	if (!q->stream) {
		r->suspended = true;
		MHD_suspend_connection(r->conn);
		return MHD_YES;
	}
	h->streams++;
	struct MHD_Response *resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16384,
								      sse_read, r, NULL);
	if (!resp) {
		slot_release(h, r, true);
		return MHD_NO;
	}
	MHD_add_response_header(resp, "Content-Type", "text/event-stream");
	MHD_add_response_header(resp, "Cache-Control", "no-cache");
	MHD_add_response_header(resp, "X-Request-Id", r->xrid);
	enum MHD_Result ret = MHD_queue_response(r->conn, 200, resp);
	MHD_destroy_response(resp);
	r->responded = true;
	r->t_out = now_ns();
	return ret;
}

static enum MHD_Result model_refused(struct hreq *r)
{
	REFUSE(r, 404, "invalid_request_error", "model_not_found", "model",
	       "the model '%.100s' is not served here (GET /v1/models: '%.100s')", r->req.model,
	       r->h->model_name);
}

static enum MHD_Result too_long(struct hreq *r, size_t n, const char *param)
{
	REFUSE(r, 400, "invalid_request_error", "context_length_exceeded", param,
	       "the prompt is %zu tokens; this server takes at most %u (max_prompt_tokens)", n,
	       r->h->srv->cfg.max_prompt_tokens);
}

static enum MHD_Result busy(struct hreq *r)
{
	REFUSE(r, 429, "rate_limit_error", NULL, NULL,
	       "%u requests are in flight, this server's limit ([http] max_requests); retry",
	       r->h->srv->cfg.http_max_requests);
}

static enum MHD_Result on_completions(struct hreq *r)
{
	struct dp_http *h = r->h;
	struct dp_http_request *q = &r->req;

	if (q->model && strcmp(q->model, h->model_name))
		return model_refused(r);
	int32_t *ids = q->ids;
	size_t n = q->n_ids;
	if (!ids && encode(h, q->prompt, q->prompt_len, true, &ids, &n) < 0)
		REFUSE(r, 400, "invalid_request_error", NULL, "prompt", "the prompt cannot be tokenized");
	q->ids = ids;
	q->n_ids = n;
	if (n > h->srv->cfg.max_prompt_tokens)
		return too_long(r, n, "prompt");
	if (slot_take(h, r) < 0)
		return busy(r);
	struct dp_msg *m = msg_new(h, r, DP_MSG_GENERATE);
	if (!m) {
		slot_release(h, r, false);
		REFUSE(r, 500, "server_error", NULL, NULL, "out of memory");
	}
	m->tokens = ids;
	m->n_tokens = (uint32_t)n;
	q->ids = NULL; /* compute frees it with the message */
	m->prompt_is_text = false; /* BOS, if any, is in the ids already */
	snprintf(m->session, sizeof(m->session), "%s", q->session_id ? q->session_id : "");
	r->prompt_tokens = (uint32_t)n;
	return generate(r, m);
}

/* The request as the renderer takes it: tool_choice "none" offers no tools
 * (the model never sees them); other fields as sent. New reference. */
static json_t *render_request(const struct dp_http_request *q)
{
	const char *tc = json_string_value(q->tool_choice);
	if (!tc || strcmp(tc, "none"))
		return json_incref(q->root);
	json_t *o = json_copy(q->root);
	json_object_del(o, "tools");
	json_object_del(o, "tool_choice");
	return o;
}

static void chat_error_text(char *buf, size_t len, const struct dp_chat_error *e, int rc)
{
	snprintf(buf, len, "%.127s%s%.255s", e->param, e->param[0] ? ": " : "",
		 e->message[0] ? e->message : strerror(-rc));
}

/*
 * Chat: rendered and tokenized by model/conv.h. With a session_id the
 * prompt goes both ways, as the socket front sends it (server.h, struct
 * dp_msg): a whole conversation and a continuation of the session's
 * context; compute picks by the session.
 */
static enum MHD_Result on_chat(struct hreq *r)
{
	struct dp_http *h = r->h;
	struct dp_server *srv = h->srv;
	struct dp_http_request *q = &r->req;
	struct dp_conv_prompt whole = { 0 }, cont = { 0 };
	struct dp_chat_error ce;
	char whole_error[416] = "", cont_error[416] = "";

	if (q->model && strcmp(q->model, h->model_name))
		return model_refused(r);
	const char *tc = json_string_value(q->tool_choice);
	if (q->tool_choice && (!tc || !strcmp(tc, "required")))
		REFUSE(r, 400, "invalid_request_error", NULL, "tool_choice",
		       "tool_choice %s is not supported: this server cannot force a tool call "
		       "(none or auto)", tc ? "\"required\"" : "naming a function");
	json_t *req = render_request(q);
	if (!req)
		REFUSE(r, 500, "server_error", NULL, NULL, "out of memory");
	int rc = dp_conv_render(srv->conv, req, 0, &whole, &ce);
	if (rc < 0) {
		if (rc == -ENOMEM || !q->session_id) {
			json_decref(req);
			if (rc == -ENOMEM)
				REFUSE(r, 500, "server_error", NULL, NULL, "out of memory");
			REFUSE(r, 400, "invalid_request_error", NULL, ce.param, "%s", ce.message);
		}
		chat_error_text(whole_error, sizeof(whole_error), &ce, rc);
	}
	if (q->session_id && (rc = dp_conv_render(srv->conv, req, DP_CONV_CONTINUE, &cont, &ce)) < 0)
		chat_error_text(cont_error, sizeof(cont_error), &ce, rc);
	json_decref(req);
	size_t longest = whole.n_ids > cont.n_ids ? whole.n_ids : cont.n_ids;
	enum dp_chat_mode mode = whole.n_ids ? whole.mode : cont.mode;
	int32_t *ids = malloc((whole.n_ids + cont.n_ids + 1) * sizeof(int32_t));
	if (ids) {
		if (whole.n_ids) /* a session's later turn may render only as a continuation */
			memcpy(ids, whole.ids, whole.n_ids * sizeof(int32_t));
		if (cont.n_ids)
			memcpy(ids + whole.n_ids, cont.ids, cont.n_ids * sizeof(int32_t));
	}
	size_t n_whole = whole.n_ids, n_cont = cont.n_ids;
	dp_conv_prompt_fini(&whole);
	dp_conv_prompt_fini(&cont);
	if (!ids)
		REFUSE(r, 500, "server_error", NULL, NULL, "out of memory");
	if (longest > srv->cfg.max_prompt_tokens) {
		free(ids);
		return too_long(r, longest, "messages");
	}
	char prefix[48];
	snprintf(prefix, sizeof(prefix), "call_%" PRIx64 "_", h->next_rid + 1);
	r->chat = true;
	r->calls = json_array();
	if (!r->calls || dp_conv_stream_new(srv->conv, mode, prefix, &r->conv) < 0) {
		free(ids);
		REFUSE(r, 500, "server_error", NULL, NULL, "out of memory");
	}
	if (slot_take(h, r) < 0) {
		free(ids);
		return busy(r);
	}
	struct dp_msg *m = msg_new(h, r, DP_MSG_GENERATE);
	if (!m) {
		free(ids);
		slot_release(h, r, false);
		REFUSE(r, 500, "server_error", NULL, NULL, "out of memory");
	}
	m->tokens = ids;
	m->n_tokens = (uint32_t)n_whole;
	m->n_cont = (uint32_t)n_cont;
	m->chat = true;
	m->cont_lead = dp_conv_continue_lead(srv->conv);
	snprintf(m->whole_error, sizeof(m->whole_error), "%s", whole_error);
	snprintf(m->cont_error, sizeof(m->cont_error), "%s", cont_error);
	snprintf(m->session, sizeof(m->session), "%s", q->session_id ? q->session_id : "");
	r->prompt_tokens = (uint32_t)(n_whole ? n_whole : n_cont);
	return generate(r, m);
}

static enum MHD_Result on_metrics(struct hreq *r)
{
	struct dp_http *h = r->h;
	if (slot_take(h, r) < 0)
		REFUSE(r, 429, "rate_limit_error", NULL, NULL, "too many requests in flight; retry");
	struct dp_msg *m = msg_new(h, r, DP_MSG_STATS);
	if (!m || dp_server_send(h->srv, m) < 0) {
		free(m);
		slot_release(h, r, false);
		REFUSE(r, 503, "service_unavailable", NULL, NULL, "the daemon is overloaded; retry");
	}
	r->suspended = true;
	MHD_suspend_connection(r->conn);
	return MHD_YES;
}

static enum MHD_Result dispatch(struct hreq *r, const char *method)
{
	struct dp_http *h = r->h;
	static const enum dp_http_api api_of[] = {
		[R_CHAT] = DP_HTTP_CHAT, [R_COMPLETIONS] = DP_HTTP_COMPLETIONS,
		[R_TOKENIZE] = DP_HTTP_TOKENIZE, [R_DETOKENIZE] = DP_HTTP_DETOKENIZE,
	};
	r->dispatched = true;
	h->requests++;
	if (r->route == R_NONE)
		REFUSE(r, 404, "invalid_request_error", "not_found", NULL,
		       "no such endpoint (POST /v1/chat/completions, /v1/completions, /tokenize, "
		       "/detokenize; GET /v1/models, /health, /metrics)");
	bool post = route_is_post(r->route);
	if (strcmp(method, post ? "POST" : "GET"))
		REFUSE(r, 405, "invalid_request_error", "method_not_allowed", NULL,
		       "this endpoint takes %s, not %.16s", post ? "POST" : "GET", method);
	if (r->route != R_HEALTH &&
	    !http_key_ok(h, MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "Authorization"))) {
		h->refused_auth++;
		REFUSE(r, 401, "authentication_error", "invalid_api_key", NULL,
		       "a valid API key is required (Authorization: Bearer KEY)");
	}
	if (r->too_large)
		REFUSE(r, 413, "invalid_request_error", "request_too_large", NULL,
		       "the request body is larger than this server's limit of %zu bytes "
		       "([http] max_body_bytes)", h->lim.max_body);
	if (r->route == R_HEALTH)
		return on_health(r);
	if (r->route == R_MODELS)
		return on_models(r);
	if (r->route == R_METRICS)
		return on_metrics(r);
	struct dp_http_error err;
	if (dp_http_request_parse(api_of[r->route], r->body.p ? r->body.p : "", r->body.len, &h->lim,
				  &r->req, &err) < 0)
		return queue_error(r, &err);
	switch (r->route) {
	case R_TOKENIZE:
		return on_tokenize(r);
	case R_DETOKENIZE:
		return on_detokenize(r);
	case R_COMPLETIONS:
		return on_completions(r);
	default: /* R_CHAT */
		return on_chat(r);
	}
}

enum MHD_Result http_on_request(void *cls, struct MHD_Connection *c, const char *url,
				const char *method, const char *version, const char *upload,
				size_t *upload_size, void **con_cls)
{
	struct dp_http *h = cls;
	struct hreq *r = *con_cls;
	(void)version;
	if (!r) {
		r = calloc(1, sizeof(*r));
		if (!r)
			return MHD_NO;
		r->h = h;
		r->conn = c;
		r->slot = -1;
		r->t_start = now_ns();
		r->route = route_of(url);
		const char *xrid = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "X-Request-Id");
		bool ok = xrid && *xrid && strlen(xrid) < sizeof(r->xrid);
		for (const char *p = xrid; ok && *p; p++)
			ok = *p > ' ' && *p <= '~';
		if (ok)
			snprintf(r->xrid, sizeof(r->xrid), "%s", xrid);
		else
			snprintf(r->xrid, sizeof(r->xrid), "%016" PRIx64 "-%" PRIu64, now_ns(),
				 h->requests + 1);
		/* a declared length over the cap is refused before any byte is read */
		const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Length");
		if (cl && strtoull(cl, NULL, 10) > h->lim.max_body)
			r->too_large = true;
		*con_cls = r;
		return MHD_YES;
	}
	if (*upload_size) {
		if (!r->too_large && r->body.len + *upload_size > h->lim.max_body)
			r->too_large = true;
		if (!r->too_large && dp_http_buf_add(&r->body, upload, *upload_size) < 0)
			return MHD_NO;
		*upload_size = 0;
		return MHD_YES;
	}
	if (!r->dispatched)
		return dispatch(r, method);
	if (r->responded || !r->final) {
		if (!r->final && !r->responded) { /* woken early: wait on */
			r->suspended = true;
			MHD_suspend_connection(c);
		}
		return MHD_YES;
	}
	/* resumed with the whole answer */
	if (r->cut_off)
		REFUSE(r, 503, "service_unavailable", NULL, NULL, "the daemon is stopping");
	return queue(r, r->status ? r->status : 200,
		     r->content_type ? r->content_type : "application/json", r->out.p ? r->out.p : "",
		     r->out.len);
}

void http_on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
		       enum MHD_RequestTerminationCode toe)
{
	struct dp_http *h = cls;
	struct hreq *r = *con_cls;
	(void)c;
	if (!r)
		return;
	if (r->slot >= 0) { /* still generating: the client went away */
		if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK)
			h->disconnects++;
		slot_release(h, r, true);
	}
	dp_http_request_fini(&r->req);
	dp_conv_stream_free(r->conv);
	json_decref(r->calls);
	dp_http_buf_fini(&r->reasoning);
	dp_http_buf_fini(&r->body);
	dp_http_buf_fini(&r->text);
	dp_http_buf_fini(&r->out);
	free(r);
	*con_cls = NULL;
}
