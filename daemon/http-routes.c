/* SPDX-License-Identifier: MIT */
/*
 * The HTTP routes: a request from its first byte to its answer.
 *
 *   receiving  MHD hands us the body piece by piece (capped: 413)
 *   dispatch   auth (401), route (404/405), parse (400 with param);
 *              answered here (health, models, tokenize, detokenize,
 *              metrics) or sent to compute (completions, chat: http-gen.c)
 *   completed  MHD says the request is over, sent or not: a generation
 *              still running is cancelled (a client that went away)
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "daemon/http-front.h"
#include "model/conv.h"

static uint64_t now_ns(void)
{
	return dp_clock_ns();
}

enum MHD_Result http_queue(struct hreq *r, unsigned status, const char *type, const char *body,
			     size_t len)
{
	struct MHD_Response *resp = MHD_create_response_from_buffer(len, (void *)body,
								    MHD_RESPMEM_MUST_COPY);
	if (!resp)
		return MHD_NO;
	MHD_add_response_header(resp, "Content-Type", type);
	MHD_add_response_header(resp, "X-Request-Id", r->xrid);
	if (status == 503 && atomic_load(&r->h->srv->state) == DP_STATE_STARTING)
		MHD_add_response_header(resp, "Retry-After", "5"); /* the model is loading */
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

enum MHD_Result http_queue_json(struct hreq *r, unsigned status, json_t *o)
{
	char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
	json_decref(o);
	if (!s)
		return http_queue(r, 500, "application/json",
			     "{\"error\":{\"message\":\"out of memory\",\"type\":\"server_error\","
			     "\"param\":null,\"code\":null}}", 82);
	enum MHD_Result ret = http_queue(r, status, "application/json", s, strlen(s));
	free(s);
	return ret;
}

char *http_error_text(const struct hreq *r, const struct dp_http_error *e)
{
	if (r->route != R_MESSAGES)
		return dp_http_error_json(e);
	/* Anthropic's envelope and error types */
	const char *type = e->status == 401 ? "authentication_error"
			   : e->status == 403 ? "permission_error"
			   : e->status == 404 ? "not_found_error"
			   : e->status == 413 ? "request_too_large"
			   : e->status == 429 ? "rate_limit_error"
			   : e->status == 503 ? "overloaded_error"
			   : e->status >= 500 ? "api_error" : "invalid_request_error";
	char msg[sizeof(e->message) + sizeof(e->param) + 4];
	snprintf(msg, sizeof(msg), "%s%s%s", e->param[0] && !strstr(e->message, e->param) ? e->param : "",
		 e->param[0] && !strstr(e->message, e->param) ? ": " : "", e->message);
	json_t *o = json_pack("{s:s, s:{s:s, s:s}}", "type", "error", "error", "type", type, "message",
			      msg);
	char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
	json_decref(o);
	return s;
}

enum MHD_Result http_queue_error(struct hreq *r, const struct dp_http_error *e)
{
	char *s = http_error_text(r, e);
	if (!s)
		return http_queue(r, 500, "application/json", "{}", 2);
	enum MHD_Result ret = http_queue(r, e->status, "application/json", s, strlen(s));
	free(s);
	return ret;
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

static void http_metrics_own(struct dp_http *h, struct dp_http_buf *b);
#define LOADING_HELP                                                                       \
	"# HELP dualpath_loading 1 while the model loads (only /health and /metrics answer)\n" \
	"# TYPE dualpath_loading gauge\ndualpath_loading "

void http_on_stats(struct hreq *r, struct dp_compute_stats *s)
{
	struct dp_http *h = r->h;
	struct dp_metric_set *ms = malloc(sizeof(*ms));
	struct dp_http_buf *b = &r->out;
	http_slot_release(h, r, false);
	if (!ms) {
		r->status = 500;
		r->final = true;
		http_wake(r);
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
	dp_http_buf_addf(b, LOADING_HELP "0\n");
	http_metrics_own(h, b);
	r->status = 200;
	r->content_type = "text/plain; version=0.0.4; charset=utf-8";
	r->final = true;
	http_wake(r);
}

/* The HTTP front's own counters and histograms, the part of /metrics that
 * needs no answer from compute. */
static void http_metrics_own(struct dp_http *h, struct dp_http_buf *b)
{
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
	HC("dualpath_http_replayed_turns_total",
	   "assistant turns sent back by a client and put back as the ids sampled",
	   h->replay.turns_replayed);
	HC("dualpath_http_replay_evictions_total",
	   "replies dropped from the replay cache for room ([http] replay_cache_bytes)",
	   h->replay.evicted);
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
}

/* /metrics while the model loads: compute is not running yet; the HTTP
 * front's own figures, and dualpath_loading 1. */
static enum MHD_Result on_metrics_loading(struct hreq *r)
{
	struct dp_http_buf b = { 0 };
	dp_http_buf_addf(&b, LOADING_HELP "1\n");
	http_metrics_own(r->h, &b);
	enum MHD_Result ret = http_queue(r, 200, "text/plain; version=0.0.4; charset=utf-8",
					 b.p ? b.p : "", b.len);
	dp_http_buf_fini(&b);
	return ret;
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
		{ "/metrics", R_METRICS },	     { "/v1/messages", R_MESSAGES },
	};
	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++)
		if (!strcmp(url, t[i].url))
			return t[i].r;
	return R_NONE;
}

static bool route_is_post(enum route r)
{
	return r == R_CHAT || r == R_COMPLETIONS || r == R_TOKENIZE || r == R_DETOKENIZE ||
	       r == R_MESSAGES;
}

static enum MHD_Result on_health(struct hreq *r)
{
	int st = atomic_load(&r->h->srv->state);
	const char *name = st == DP_STATE_SERVING ? "ok" : st == DP_STATE_STARTING ? "loading"
						   : st == DP_STATE_DRAINING ? "draining" : "stopping";
	return http_queue_json(r, st == DP_STATE_SERVING ? 200 : 503, json_pack("{s:s}", "status", name));
}

static enum MHD_Result on_models(struct hreq *r)
{
	struct dp_http *h = r->h;
	return http_queue_json(r, 200, json_pack("{s:s, s:[{s:s, s:s, s:I, s:s, s:i}]}", "object", "list",
					    "data", "id", h->model_name, "object", "model",
					    "created", (json_int_t)time(NULL),
					    "owned_by", "dualpath", "max_model_len",
					    (int)h->srv->cfg.max_prompt_tokens));
}

static enum MHD_Result on_tokenize(struct hreq *r)
{
	struct dp_http *h = r->h;
	int32_t *ids = NULL;
	size_t n = 0;
	if (r->req.messages) { /* the prompt a chat request renders to */
		struct dp_conv_prompt p = { 0 };
		struct dp_chat_error ce;
		json_t *req = http_render_request(&r->req);
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
	} else if (http_encode(h, r->req.prompt, r->req.prompt_len, r->req.add_special, &ids, &n) < 0) {
		REFUSE(r, 400, "invalid_request_error", NULL, "prompt", "the prompt cannot be tokenized");
	}
	json_t *a = json_array();
	for (size_t i = 0; i < n; i++)
		json_array_append_new(a, json_integer(ids[i]));
	free(ids);
	return http_queue_json(r, 200, json_pack("{s:o, s:I, s:i}", "tokens", a, "count", (json_int_t)n,
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
	return http_queue_json(r, 200, o);
}

static enum MHD_Result on_metrics(struct hreq *r)
{
	struct dp_http *h = r->h;
	if (http_slot_take(h, r) < 0)
		REFUSE(r, 429, "rate_limit_error", NULL, NULL, "too many requests in flight; retry");
	struct dp_msg *m = http_msg_new(h, r, DP_MSG_STATS);
	if (!m || dp_server_send(h->srv, m) < 0) {
		free(m);
		http_slot_release(h, r, false);
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
		[R_MESSAGES] = DP_HTTP_MESSAGES,
	};
	r->dispatched = true;
	h->requests++;
	if (r->route == R_NONE)
		REFUSE(r, 404, "invalid_request_error", "not_found", NULL,
		       "no such endpoint (POST /v1/chat/completions, /v1/completions, /v1/messages, "
		       "/tokenize, /detokenize; GET /v1/models, /health, /metrics)");
	bool post = route_is_post(r->route);
	if (strcmp(method, post ? "POST" : "GET"))
		REFUSE(r, 405, "invalid_request_error", "method_not_allowed", NULL,
		       "this endpoint takes %s, not %.16s", post ? "POST" : "GET", method);
	/* Authorization: Bearer KEY, or (Anthropic's clients) x-api-key: KEY */
	const char *auth = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "Authorization");
	const char *xkey = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "x-api-key");
	char bearer[DP_HTTP_KEY_MAX + 16];
	if (!auth && xkey && strlen(xkey) <= DP_HTTP_KEY_MAX) {
		snprintf(bearer, sizeof(bearer), "Bearer %s", xkey);
		auth = bearer;
	}
	r->key = http_key_match(h, auth);
	if (r->route != R_HEALTH && r->key < DP_HTTP_KEYS_OFF) {
		h->refused_auth++;
		REFUSE(r, 401, "authentication_error", "invalid_api_key", NULL,
		       "a valid API key is required (Authorization: Bearer KEY, or x-api-key: KEY)");
	}
	if (r->too_large)
		REFUSE(r, 413, "invalid_request_error", "request_too_large", NULL,
		       "the request body is larger than this server's limit of %zu bytes "
		       "([http] max_body_bytes)", h->lim.max_body);
	if (r->route == R_HEALTH)
		return on_health(r);
	/* Before the model is loaded (the front starts first) only /health and
	 * /metrics answer. The state is read once: SERVING was stored after the
	 * model, tokenizer and renderer the routes below read. */
	if (atomic_load(&h->srv->state) == DP_STATE_STARTING) {
		if (r->route == R_METRICS)
			return on_metrics_loading(r);
		REFUSE(r, 503, "service_unavailable", "model_loading", NULL,
		       "the model is loading; retry (GET /health says when it is served)");
	}
	h->lim.vocab = (int32_t)h->srv->vocab;
	if (r->route == R_MODELS)
		return on_models(r);
	if (r->route == R_METRICS)
		return on_metrics(r);
	struct dp_http_error err;
	if (dp_http_request_parse(api_of[r->route], r->body.p ? r->body.p : "", r->body.len, &h->lim,
				  &r->req, &err) < 0)
		return http_queue_error(r, &err);
	switch (r->route) {
	case R_TOKENIZE:
		return on_tokenize(r);
	case R_DETOKENIZE:
		return on_detokenize(r);
	case R_COMPLETIONS:
		return http_on_completions(r);
	default: /* R_CHAT, R_MESSAGES */
		return http_on_chat(r);
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
	return http_queue(r, r->status ? r->status : 200,
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
		http_slot_release(h, r, true);
	}
	dp_http_request_fini(&r->req);
	dp_conv_stream_free(r->conv);
	json_decref(r->calls);
	dp_http_buf_fini(&r->reasoning);
	dp_http_buf_fini(&r->sampled);
	dp_http_buf_fini(&r->said);
	dp_http_buf_fini(&r->said_reasoning);
	dp_http_buf_fini(&r->prompt_ids);
	dp_http_buf_fini(&r->new_ids);
	dp_http_buf_fini(&r->body);
	dp_http_buf_fini(&r->text);
	dp_http_buf_fini(&r->out);
	free(r);
	*con_cls = NULL;
}
