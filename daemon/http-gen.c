/* SPDX-License-Identifier: MIT */
/*
 * The HTTP front's generations: a request sent to compute holding a slot
 * (429 when none is free), compute's events turned into output, and the
 * stream's body.
 *
 *   waiting    the connection is suspended: no thread waits
 *   events     compute's tokens become text (held back by the longest stop
 *              string less one byte, so a stop string split over tokens is
 *              still found; chat: parsed by model/conv.h into reasoning,
 *              content and tool calls), then SSE chunks or, at the end, one
 *              JSON body; the connection is resumed to send them
 *
 * A suspended stream gets a `: ping` comment every keepalive_ms (proxies
 * close streams that stay silent through a long prefill). A reader that
 * lets more than its share of client_buffer_bytes pile up is cut off and
 * its generation cancelled.
 */
#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "daemon/http-front.h"
#include "model/conv.h"

static uint64_t now_ns(void)
{
	return dp_clock_ns();
}

void http_wake(struct hreq *r)
{
	if (r->suspended) {
		r->suspended = false;
		MHD_resume_connection(r->conn);
	}
}

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

int http_slot_take(struct dp_http *h, struct hreq *r)
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

struct dp_msg *http_msg_new(struct dp_http *h, struct hreq *r, enum dp_msg_kind kind)
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
	/* The prefix cache's tenant within them: the API key the request came
	 * with, then its cache_salt (checked to fit by the parser), so that
	 * holders of different keys, or of different salts, never share state. */
	_Static_assert(DP_HTTP_CACHE_SALT_MAX + sizeof("key -2147483648;") <= sizeof(m->cache_salt),
		       "a tenant key fits the message's cache_salt");
	int n = snprintf((char *)m->cache_salt, sizeof(m->cache_salt), "key %d;", r->key);
	const char *salt = r->req.cache_salt;
	size_t len = salt ? strlen(salt) : 0;
	assert(n > 0 && (size_t)n + len <= sizeof(m->cache_salt));
	memcpy(m->cache_salt + n, salt ? salt : "", len);
	m->cache_salt_len = (uint32_t)n + (uint32_t)len;
	return m;
}

/* Release the slot; a generation still running is cancelled (best effort:
 * a full queue leaves it to finish, its events dropped by generation). */
void http_slot_release(struct dp_http *h, struct hreq *r, bool cancel)
{
	if (r->slot < 0)
		return;
	if (cancel) {
		struct dp_msg *m = http_msg_new(h, r, DP_MSG_CANCEL);
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

static json_t *ids_json(const struct dp_http_buf *b)
{
	json_t *a = json_array();
	const int32_t *ids = (const int32_t *)(const void *)b->p;
	for (size_t i = 0; a && i < b->len / sizeof(int32_t); i++)
		if (json_array_append_new(a, json_integer(ids[i])) < 0) {
			json_decref(a);
			return NULL;
		}
	return a;
}

/* return_token_ids (vLLM's names): the choice's token_ids, the generated
 * ids not carried yet (all of them in a whole body), and prompt_token_ids
 * once — on the choice for completions, on the object for chat, as vLLM
 * puts them. */
static void put_token_ids(struct hreq *r, json_t *obj, json_t *choice)
{
	if (!r->req.return_token_ids || !choice)
		return;
	json_object_set_new(choice, "token_ids", ids_json(&r->new_ids));
	r->new_ids.len = r->new_ids.off = 0;
	if (!r->sent_prompt_ids) {
		json_object_set_new(r->chat ? obj : choice, "prompt_token_ids",
				    ids_json(&r->prompt_ids));
		r->sent_prompt_ids = true;
	}
}

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
/* ---- the Messages API's stream (POST /v1/messages) ---- */

static void ant_event(struct hreq *r, const char *type, json_t *data)
{
	char *s = data ? json_dumps(data, JSON_COMPACT) : NULL;
	json_decref(data);
	if (!s || dp_http_buf_addf(&r->out, "event: %s\ndata: %s\n\n", type, s) < 0)
		cut_off(r);
	free(s);
}

static void ant_close_block(struct hreq *r)
{
	if (!r->ant_kind)
		return;
	ant_event(r, "content_block_stop", json_pack("{s:s, s:i}", "type", "content_block_stop",
						      "index", r->ant_index));
	r->ant_kind = NULL;
	r->ant_index++;
}

/* text or thinking: open a block of that kind unless one is open */
static void ant_text(struct hreq *r, const char *kind, const char *text, size_t len)
{
	bool thinking = !strcmp(kind, "thinking");
	if (r->ant_kind && strcmp(r->ant_kind, kind))
		ant_close_block(r);
	if (!r->ant_kind) {
		r->ant_kind = thinking ? "thinking" : "text";
		ant_event(r, "content_block_start",
			  json_pack("{s:s, s:i, s:{s:s, s:s}}", "type", "content_block_start", "index",
				    r->ant_index, "content_block", "type", r->ant_kind, r->ant_kind, ""));
	}
	ant_event(r, "content_block_delta",
		  json_pack("{s:s, s:i, s:{s:s, s:s%}}", "type", "content_block_delta", "index",
			    r->ant_index, "delta", "type", thinking ? "thinking_delta" : "text_delta",
			    r->ant_kind, text, len));
}

static const char *ant_stop_reason(const struct hreq *r, const char *finish)
{
	return !strcmp(finish, "length") ? "max_tokens" : !strcmp(finish, "tool_calls") ? "tool_use"
	       : r->stop_seq ? "stop_sequence" : "end_turn";
}

/* One OpenAI-shaped delta (what chat builds) as Messages API events. */
static void ant_delta(struct hreq *r, json_t *delta, const char *finish)
{
	if (!r->sent_role) {
		ant_event(r, "message_start",
			  json_pack("{s:s, s:{s:s, s:s, s:s, s:s, s:[], s:n, s:n, s:{s:i, s:i}}}", "type",
				    "message_start", "message", "id", r->id, "type", "message", "role",
				    "assistant", "model", r->h->model_name, "content", "stop_reason",
				    "stop_sequence", "usage", "input_tokens", r->prompt_tokens,
				    "output_tokens", 0));
		r->sent_role = true;
	}
	const json_t *v;
	if ((v = json_object_get(delta, "reasoning_content")))
		ant_text(r, "thinking", json_string_value(v), json_string_length(v));
	if ((v = json_object_get(delta, "content")) && json_string_length(v))
		ant_text(r, "text", json_string_value(v), json_string_length(v));
	json_t *calls = json_object_get(delta, "tool_calls");
	for (size_t i = 0; i < json_array_size(calls); i++) {
		json_t *c = json_array_get(calls, i), *fn = json_object_get(c, "function");
		ant_close_block(r);
		ant_event(r, "content_block_start",
			  json_pack("{s:s, s:i, s:{s:s, s:O, s:O, s:{}}}", "type", "content_block_start",
				    "index", r->ant_index, "content_block", "type", "tool_use", "id",
				    json_object_get(c, "id"), "name", json_object_get(fn, "name"), "input"));
		ant_event(r, "content_block_delta",
			  json_pack("{s:s, s:i, s:{s:s, s:O}}", "type", "content_block_delta", "index",
				    r->ant_index, "delta", "type", "input_json_delta", "partial_json",
				    json_object_get(fn, "arguments")));
		r->ant_kind = "tool_use";
		ant_close_block(r);
	}
	json_decref(delta);
	if (!finish)
		return;
	ant_close_block(r);
	ant_event(r, "message_delta",
		  json_pack("{s:s, s:{s:s, s:o}, s:{s:i, s:i}}", "type", "message_delta", "delta",
			    "stop_reason", ant_stop_reason(r, finish), "stop_sequence",
			    r->stop_seq ? json_string(r->stop_seq) : json_null(), "usage", "output_tokens",
			    r->completion_tokens, "cache_read_input_tokens", r->cached_tokens));
	ant_event(r, "message_stop", json_pack("{s:s}", "type", "message_stop"));
}

/* The whole reply as one Messages API object (not streamed). */
static json_t *ant_body(struct hreq *r, const char *finish)
{
	json_t *content = json_array();
	if (r->reasoning.len)
		json_array_append_new(content, json_pack("{s:s, s:s%, s:s}", "type", "thinking", "thinking",
							 r->reasoning.p, r->reasoning.len, "signature", ""));
	if (r->out.len)
		json_array_append_new(content, json_pack("{s:s, s:s%}", "type", "text", "text", r->out.p,
							 r->out.len));
	for (size_t i = 0; i < json_array_size(r->calls); i++) {
		json_t *c = json_array_get(r->calls, i), *fn = json_object_get(c, "function");
		json_t *input = json_loads(json_string_value(json_object_get(fn, "arguments")), 0, NULL);
		json_array_append_new(content, json_pack("{s:s, s:O, s:O, s:o}", "type", "tool_use", "id",
							 json_object_get(c, "id"), "name",
							 json_object_get(fn, "name"), "input",
							 input ? input : json_object()));
	}
	return json_pack("{s:s, s:s, s:s, s:s, s:o, s:s, s:o, s:{s:i, s:i, s:i}}", "id", r->id, "type",
			 "message", "role", "assistant", "model", r->h->model_name, "content", content,
			 "stop_reason", ant_stop_reason(r, finish), "stop_sequence",
			 r->stop_seq ? json_string(r->stop_seq) : json_null(), "usage", "input_tokens",
			 r->prompt_tokens, "output_tokens", r->completion_tokens,
			 "cache_read_input_tokens", r->cached_tokens);
}

static void emit_delta(struct hreq *r, json_t *delta, const char *finish)
{
	if (r->route == R_MESSAGES) {
		ant_delta(r, delta, finish);
		return;
	}
	json_t *c = chunk_new(r, true);
	if (!r->sent_role) { /* the first chunk says who speaks */
		json_object_set_new(delta, "role", json_string("assistant"));
		r->sent_role = true;
	}
	json_t *ch = json_pack("{s:i, s:o, s:n, s:o}", "index", 0, "delta", delta, "logprobs",
			       "finish_reason", finish ? json_string(finish) : json_null());
	put_token_ids(r, c, ch);
	json_array_append_new(json_object_get(c, "choices"), ch);
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
	json_t *ch = json_pack("{s:i, s:s%, s:n, s:o}", "index", 0, "text", text, len, "logprobs",
			       "finish_reason", finish ? json_string(finish) : json_null());
	put_token_ids(r, c, ch);
	json_array_append_new(json_object_get(c, "choices"), ch);
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
		if (r->route == R_MESSAGES) { /* message_stop was the last event */
			r->final = true;
			http_wake(r);
			return;
		}
		if (r->req.include_usage) {
			json_t *c = chunk_new(r, r->chat);
			json_object_set_new(c, "usage", usage_new(r));
			out_event(r, c);
		}
		if (dp_http_sse_done(&r->out) < 0)
			cut_off(r);
	} else {
		json_t *o;
		if (r->route == R_MESSAGES) {
			o = ant_body(r, reason);
		} else if (r->chat) {
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
			if (o)
				put_token_ids(r, o, json_array_get(json_object_get(o, "choices"), 0));
		} else {
			o = json_pack("{s:s, s:s, s:I, s:s, s:[{s:i, s:s%, s:n, s:s}], s:o}", "id",
				      r->id, "object", "text_completion", "created",
				      (json_int_t)r->created, "model", h->model_name, "choices",
				      "index", 0, "text", r->out.p ? r->out.p : "", r->out.len,
				      "logprobs", "finish_reason", reason, "usage", usage_new(r));
			if (o)
				put_token_ids(r, o, json_array_get(json_object_get(o, "choices"), 0));
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
	http_wake(r);
}

static void cut_off(struct hreq *r)
{
	r->cut_off = true;
	r->final = true;
	http_slot_release(r->h, r, true);
	http_wake(r);
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
	for (uint32_t i = 0; i < r->req.n_stop; i++)
		if (!strncmp(t + best, r->req.stop[i], strlen(r->req.stop[i])))
			r->stop_seq = r->req.stop[i];
	r->text.len = r->text.off + best;
	r->text.p[r->text.len] = '\0';
	return true;
}

/* What the output parser made certain: reasoning and tool calls go out as
 * they come; content joins r->text, where stop strings are looked for. */
static int chat_delta(struct hreq *r, const struct dp_chat_delta *d)
{
	if (r->replay &&
	    (dp_http_buf_add(&r->said_reasoning, d->reasoning, d->reasoning_len) < 0 ||
	     dp_http_buf_add(&r->said, d->content, d->content_len) < 0))
		return -ENOMEM;
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

/* A reply kept under what the client was sent (http-replay.c): the ids
 * sampled, and EOS where the reply did not end on it (a length limit, a stop
 * id), as a session's context gets it before its next turn
 * (dp_conv_continue_lead). Failing to keep one only costs a later cache hit. */
static void replay_keep(struct hreq *r)
{
	struct dp_http *h = r->h;
	int32_t eos = dp_conv_continue_lead(h->srv->conv);
	size_t n = r->sampled.len / sizeof(int32_t);
	if (!n || eos < 0)
		return;
	if (((const int32_t *)(const void *)r->sampled.p)[n - 1] != eos) {
		if (dp_http_buf_add(&r->sampled, &eos, sizeof(eos)) < 0)
			return;
		n++;
	}
	if (http_replay_key(&h->scratch_key, r->key, r->req.cache_salt, r->mode, r->said.p,
			    r->said.len, r->said_reasoning.p, r->said_reasoning.len, r->calls) < 0)
		return;
	(void)http_replay_put(&h->replay, h->scratch_key.p, h->scratch_key.len,
			      (const int32_t *)(const void *)r->sampled.p, n);
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
	if (r->replay && dp_http_buf_add(&r->sampled, e->ids, e->n_ids * sizeof(int32_t)) < 0)
		r->replay = false;
	if (r->req.return_token_ids &&
	    dp_http_buf_add(&r->new_ids, e->ids, e->n_ids * sizeof(int32_t)) < 0) {
		cut_off(r);
		return;
	}
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
			http_slot_release(h, r, true); /* compute stops; its last events find no one */
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
			http_slot_release(h, r, false);
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
		http_slot_release(h, r, false);
		const char *why = e->finish == DUALPATH__V1__FINISH_REASON__FINISH_LENGTH ? "length"
				  : e->finish == DUALPATH__V1__FINISH_REASON__FINISH_CANCELLED ? "cancelled"
											  : "stop";
		if (r->replay && (!strcmp(why, "stop") || !strcmp(why, "length")))
			replay_keep(r);
		{
			finish(r, why);
			return;
		}
	}
	flush_text(r, false);
	http_wake(r);
}

static void on_error(struct hreq *r, const struct dp_event *e)
{
	struct dp_http_error err;
	unsigned status;
	const char *type;
	code_status(e->code, &status, &type);
	dp_http_error_set(&err, status, type, NULL, NULL, "%s",
			  e->payload ? (const char *)e->payload : "the request failed");
	http_slot_release(r->h, r, false);
	char *s = http_error_text(r, &err);
	r->out.len = r->out.off = 0;
	if (r->responded) /* a stream under way: one error event, then close */
		dp_http_buf_addf(&r->out, "%sdata: %s\n\n", r->route == R_MESSAGES ? "event: error\n" : "",
				 s ? s : "{}");
	else {
		r->status = status;
		dp_http_buf_add(&r->out, s ? s : "{}", s ? strlen(s) : 2);
	}
	free(s);
	r->final = true;
	http_wake(r);
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
		http_on_stats(r, e->payload);
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
			http_wake(r);
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

int http_encode(struct dp_http *h, const char *text, size_t len, bool bos, int32_t **ret,
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
	snprintf(r->id, sizeof(r->id), "%s%016" PRIx64 "%08" PRIx64,
		 r->route == R_MESSAGES ? "msg_" : r->chat ? "chatcmpl-" : "cmpl-", now_ns(), r->rid);
	if (dp_server_send(srv, m) < 0) {
		free(m->tokens);
		free(m);
		http_slot_release(h, r, false);
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
		http_slot_release(h, r, true);
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

enum MHD_Result http_on_completions(struct hreq *r)
{
	struct dp_http *h = r->h;
	struct dp_http_request *q = &r->req;

	if (q->model && strcmp(q->model, h->model_name))
		return model_refused(r);
	int32_t *ids = q->ids;
	size_t n = q->n_ids;
	if (!ids && http_encode(h, q->prompt, q->prompt_len, true, &ids, &n) < 0)
		REFUSE(r, 400, "invalid_request_error", NULL, "prompt", "the prompt cannot be tokenized");
	q->ids = ids;
	q->n_ids = n;
	if (n > h->srv->cfg.max_prompt_tokens)
		return too_long(r, n, "prompt");
	if (http_slot_take(h, r) < 0)
		return busy(r);
	struct dp_msg *m = http_msg_new(h, r, DP_MSG_GENERATE);
	if (!m) {
		http_slot_release(h, r, false);
		REFUSE(r, 500, "server_error", NULL, NULL, "out of memory");
	}
	if (q->return_token_ids && dp_http_buf_add(&r->prompt_ids, ids, n * sizeof(int32_t)) < 0) {
		free(m);
		http_slot_release(h, r, false);
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
json_t *http_render_request(const struct dp_http_request *q)
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
enum MHD_Result http_on_chat(struct hreq *r)
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
	json_t *req = http_render_request(q);
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
	if (rc == 0)
		http_replay_splice(h, r, &whole);
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
	snprintf(prefix, sizeof(prefix), "%s%" PRIx64 "_", r->route == R_MESSAGES ? "toolu_" : "call_",
		 h->next_rid + 1);
	r->chat = true;
	r->mode = mode;
	r->replay = r->route == R_CHAT && h->replay.cap &&
		    dp_conv_format(srv->conv) == DP_CHAT_FORMAT_V4;
	r->calls = json_array();
	if (!r->calls || dp_conv_stream_new(srv->conv, mode, prefix, &r->conv) < 0) {
		free(ids);
		REFUSE(r, 500, "server_error", NULL, NULL, "out of memory");
	}
	if (http_slot_take(h, r) < 0) {
		free(ids);
		return busy(r);
	}
	struct dp_msg *m = http_msg_new(h, r, DP_MSG_GENERATE);
	if (!m) {
		free(ids);
		http_slot_release(h, r, false);
		REFUSE(r, 500, "server_error", NULL, NULL, "out of memory");
	}
	/* the prompt as rendered whole (a session's continuation when only
	 * that one renders) */
	if (q->return_token_ids &&
	    dp_http_buf_add(&r->prompt_ids, n_whole ? ids : ids + n_whole,
			    (n_whole ? n_whole : n_cont) * sizeof(int32_t)) < 0) {
		free(ids);
		free(m);
		http_slot_release(h, r, false);
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

