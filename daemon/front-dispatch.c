/* SPDX-License-Identifier: MIT */
/*
 * The front's requests and events. A connection must say Hello first. Each
 * frame is decoded and checked (proto/frame.h); a frame that is not a valid
 * Request (bad length, bad protobuf, a broken UTF-8 string) closes that
 * connection only; a valid Request that breaks a rule gets an Error and the
 * connection stays. Admin requests need root or the admin group
 * (SO_PEERCRED / SO_PEERGROUPS). Hello and Health are answered here; the
 * rest goes to compute, whose events come back as Response frames (token
 * ids decoded to text where asked).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/cluster.h"
#include "daemon/front-internal.h"
#include "daemon/log.h"
#include "model/conv.h"

static struct freq *freq_find(struct conn *c, uint64_t id)
{
	for (uint32_t i = 0; i < c->n_reqs; i++)
		if (c->reqs[i].request_id == id)
			return &c->reqs[i];
	return NULL;
}

static void freq_remove(struct conn *c, struct freq *q)
{
	dp_conv_stream_free(q->chat);
	*q = c->reqs[--c->n_reqs];
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
	front_reply(f, slot, &r);
}

static void on_health(struct front *f, uint32_t slot, uint64_t request_id)
{
	struct dp_server *srv = f->srv;
	Dualpath__V1__HealthReply h = DUALPATH__V1__HEALTH_REPLY__INIT;
	Dualpath__V1__Response r = DUALPATH__V1__RESPONSE__INIT;
	h.status = health_status(srv);
	h.uptime_ms = (dp_clock_ns() - srv->start_ns) / 1000000;
	h.backend = (char *)dp_gpu_kind_name(dp_gpu_kind_of(srv->gpu));
	h.sessions = atomic_load_explicit(&srv->n_sessions, memory_order_relaxed);
	h.active_requests = atomic_load_explicit(&srv->n_active, memory_order_relaxed);
	r.request_id = request_id;
	r.body_case = DUALPATH__V1__RESPONSE__BODY_HEALTH;
	r.health = &h;
	front_reply(f, slot, &r);
}

static struct dp_msg *new_msg(struct front *f, uint32_t slot, enum dp_msg_kind kind, uint64_t id)
{
	struct dp_msg *m = calloc(1, sizeof(*m));
	if (!m) {
		front_reply_error(f, slot, id, DUALPATH__V1__CODE__RESOURCE_EXHAUSTED, "out of memory");
		return NULL;
	}
	m->kind = kind;
	m->from = (struct dp_origin){ slot, f->conns[slot].gen };
	m->uid = (uint32_t)f->conns[slot].uid;
	m->admin = f->conns[slot].admin;
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
		front_reply_error(f, slot, id, DUALPATH__V1__CODE__UNAVAILABLE,
			    "the daemon is overloaded (request queue full); retry");
		return;
	}
	c->pending++;
}

/* "generate.chat: messages[1].role: must be ..." */
static void chat_error_text(char *buf, size_t len, const struct dp_chat_error *e, int rc)
{
	snprintf(buf, len, "generate.chat: %.127s%s%.255s", e->param, e->param[0] ? ": " : "",
		 e->message[0] ? e->message : strerror(-rc));
}

/* Render a chat prompt both ways (server.h, struct dp_msg): as a whole
 * conversation and as a continuation; compute picks by the session's
 * context. Here, on the front thread, as text prompts are tokenized, so the
 * compute thread never waits for it. Returns 0, or -1 after replying. */
static int chat_render(struct front *f, uint32_t slot, uint64_t id, const char *json,
		       struct dp_msg *m, enum dp_chat_mode *mode)
{
	struct dp_server *srv = f->srv;
	struct dp_conv_prompt whole = {0}, cont = {0};
	struct dp_chat_error e;
	char msg[512];
	size_t len = strlen(json);
	int rc;

	/* A one-off request is always a whole conversation; a session's may be
	 * either, so it goes to compute with each way's error (if any), and
	 * compute answers by the session's context. */
	rc = dp_conv_render_text(srv->conv, json, len, 0, &whole, &e);
	if (rc < 0)
		chat_error_text(m->whole_error, sizeof(m->whole_error), &e, rc);
	if (rc == -ENOMEM || (rc < 0 && !m->session[0])) {
		front_reply_error(f, slot, id, rc == -ENOMEM ? DUALPATH__V1__CODE__RESOURCE_EXHAUSTED
							   : DUALPATH__V1__CODE__INVALID_ARGUMENT,
				  m->whole_error);
		return -1;
	}
	if (m->session[0] &&
	    (rc = dp_conv_render_text(srv->conv, json, len, DP_CONV_CONTINUE, &cont, &e)) < 0)
		chat_error_text(m->cont_error, sizeof(m->cont_error), &e, rc);
	if (whole.n_ids > srv->cfg.max_prompt_tokens || cont.n_ids > srv->cfg.max_prompt_tokens) {
		snprintf(msg, sizeof(msg), "generate.chat: the rendered prompt is %zu tokens, beyond "
			 "max_prompt_tokens %u", whole.n_ids > cont.n_ids ? whole.n_ids : cont.n_ids,
			 srv->cfg.max_prompt_tokens);
		front_reply_error(f, slot, id, DUALPATH__V1__CODE__INVALID_ARGUMENT, msg);
		dp_conv_prompt_fini(&whole);
		dp_conv_prompt_fini(&cont);
		return -1;
	}
	m->tokens = malloc((whole.n_ids + cont.n_ids + 1) * sizeof(int32_t));
	if (m->tokens) {
		if (whole.n_ids)
			memcpy(m->tokens, whole.ids, whole.n_ids * sizeof(int32_t));
		if (cont.n_ids)
			memcpy(m->tokens + whole.n_ids, cont.ids, cont.n_ids * sizeof(int32_t));
	}
	m->n_tokens = (uint32_t)whole.n_ids;
	m->n_cont = (uint32_t)cont.n_ids;
	m->chat = true;
	m->cont_lead = dp_conv_continue_lead(srv->conv);
	*mode = whole.n_ids ? whole.mode : cont.mode;
	dp_conv_prompt_fini(&whole);
	dp_conv_prompt_fini(&cont);
	return 0; /* m->tokens NULL: the caller's out of memory */
}

static void on_generate(struct front *f, uint32_t slot, const Dualpath__V1__Request *req)
{
	struct dp_server *srv = f->srv;
	struct conn *c = &f->conns[slot];
	const Dualpath__V1__Generate *g = req->generate;

	if (freq_find(c, req->request_id)) {
		front_reply_error(f, slot, req->request_id, DUALPATH__V1__CODE__ALREADY_EXISTS,
			    "request_id is in use by a running Generate on this connection");
		return;
	}
	if (c->n_reqs >= srv->cfg.max_requests_per_client) {
		char msg[128];
		snprintf(msg, sizeof(msg), "%u requests in flight on this connection, the limit "
			 "(max_requests_per_client)", c->n_reqs);
		front_reply_error(f, slot, req->request_id, DUALPATH__V1__CODE__RESOURCE_EXHAUSTED, msg);
		return;
	}
	enum dp_chat_mode chat_mode = DP_CHAT_MODE_CHAT;
	struct dp_msg *m = new_msg(f, slot, DP_MSG_GENERATE, req->request_id);
	if (!m)
		return;
	snprintf(m->session, sizeof(m->session), "%s", g->session_id ? g->session_id : "");
	/* checked against DP_PROTO_CACHE_SALT_MAX: fits m->cache_salt */
	_Static_assert(DP_PROTO_CACHE_SALT_MAX == DP_KV_CACHE_SALT_MAX, "cache_salt limits agree");
	m->cache_salt_len = (uint32_t)g->cache_salt.len;
	if (m->cache_salt_len)
		memcpy(m->cache_salt, g->cache_salt.data, m->cache_salt_len);
	if (g->prompt_case == DUALPATH__V1__GENERATE__PROMPT_TOKENS) {
		m->n_tokens = (uint32_t)g->tokens->n_ids;
		m->tokens = malloc((m->n_tokens ? m->n_tokens : 1) * sizeof(int32_t));
		for (uint32_t i = 0; m->tokens && i < m->n_tokens; i++)
			m->tokens[i] = (int32_t)g->tokens->ids[i];
	} else if (g->prompt_case == DUALPATH__V1__GENERATE__PROMPT_CHAT) {
		if (chat_render(f, slot, req->request_id, g->chat, m, &chat_mode) < 0) {
			free(m);
			return;
		}
	} else {
		size_t len = strlen(g->text);
		size_t cap = dp_tok_encode_bound(srv->tok, len, 0);
		m->tokens = malloc((cap ? cap : 1) * sizeof(int32_t));
		size_t n = 0;
		if (m->tokens && dp_tok_encode(srv->tok, g->text, len, 0, m->tokens, cap, &n) < 0) {
			front_reply_error(f, slot, req->request_id, DUALPATH__V1__CODE__INVALID_ARGUMENT,
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
			front_reply_error(f, slot, req->request_id, DUALPATH__V1__CODE__INVALID_ARGUMENT, msg);
			free(m->tokens);
			free(m);
			return;
		}
	}
	if (!m->tokens) {
		front_reply_error(f, slot, req->request_id, DUALPATH__V1__CODE__RESOURCE_EXHAUSTED, "out of memory");
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
	m->t_recv_ns = dp_clock_ns();
	if (c->n_reqs == c->cap_reqs) {
		uint32_t cap = c->cap_reqs ? 2 * c->cap_reqs : 4;
		struct freq *q = realloc(c->reqs, cap * sizeof(*q));
		if (!q) {
			front_reply_error(f, slot, req->request_id, DUALPATH__V1__CODE__RESOURCE_EXHAUSTED, "out of memory");
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
	q->chat = NULL;
	if (m->chat && dp_conv_stream_new(srv->conv, chat_mode, NULL, &q->chat) < 0) {
		c->n_reqs--;
		front_reply_error(f, slot, req->request_id, DUALPATH__V1__CODE__RESOURCE_EXHAUSTED, "out of memory");
		free(m->tokens);
		free(m);
		return;
	}
	forward(f, slot, m);
}

void front_on_request(struct front *f, uint32_t slot, const uint8_t *body, size_t len)
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
		front_conn_close(f, slot);
		return;
	}
	if (dp_proto_request_check(req, &f->lim, &fault, msg, sizeof(msg)) < 0) {
		front_reply_error(f, slot, req->request_id, fault.code, msg);
		if (fault.rule == DP_PROTO_RULE_VERSION || fault.rule == DP_PROTO_RULE_VERSION_MISSING)
			front_conn_close(f, slot);
		goto out;
	}
	if (!c->hello && req->body_case != DUALPATH__V1__REQUEST__BODY_HELLO) {
		front_reply_error(f, slot, req->request_id, DUALPATH__V1__CODE__FAILED_PRECONDITION,
			    "say Hello first (with protocol_version 1)");
		front_conn_close(f, slot);
		goto out;
	}
	if (dp_proto_request_admin(req) && !c->admin) {
		f->denied++;
		snprintf(msg, sizeof(msg), "%s is for root and group %.128s only", dp_proto_request_name(req),
			 srv->cfg.admin_group);
		front_reply_error(f, slot, req->request_id, DUALPATH__V1__CODE__PERMISSION_DENIED, msg);
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
			m->release = req->evict_session->release;
			forward(f, slot, m);
		}
		break;
	case DUALPATH__V1__REQUEST__BODY_STATS:
		if ((m = new_msg(f, slot, DP_MSG_STATS, req->request_id)))
			forward(f, slot, m);
		break;
	case DUALPATH__V1__REQUEST__BODY_LIST_SESSIONS:
		if ((m = new_msg(f, slot, DP_MSG_SESSIONS, req->request_id))) {
			m->list_units = req->list_sessions->units;
			forward(f, slot, m);
		}
		break;
	case DUALPATH__V1__REQUEST__BODY_CLUSTER:
		front_on_cluster(f, slot, req);
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
		front_reply_error(f, slot, req->request_id, DUALPATH__V1__CODE__INVALID_ARGUMENT, "unknown request");
		break;
	}
out:
	dp_proto_request_free(req);
}

static void send_sessions(struct front *f, uint32_t slot, uint64_t id, const struct dp_session_list *l)
{
	Dualpath__V1__SessionInfo *rows = calloc(l->n ? l->n : 1, sizeof(*rows));
	Dualpath__V1__SessionInfo **ptrs = calloc(l->n ? l->n : 1, sizeof(*ptrs));
	if (!rows || !ptrs) {
		free(rows);
		free(ptrs);
		front_reply_error(f, slot, id, DUALPATH__V1__CODE__RESOURCE_EXHAUSTED, "out of memory");
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
		rows[i].owner_uid = l->rows[i].owner;
		rows[i].lost = l->rows[i].lost;
		rows[i].host = dp_cluster_holds(f->srv->cluster, l->rows[i].id) ? f->srv->host_id : "";
		ptrs[i] = &rows[i];
	}
	Dualpath__V1__SessionList sl = DUALPATH__V1__SESSION_LIST__INIT;
	Dualpath__V1__Response r = DUALPATH__V1__RESPONSE__INIT;
	sl.n_sessions = l->n;
	sl.sessions = ptrs;
	r.request_id = id;
	r.body_case = DUALPATH__V1__RESPONSE__BODY_SESSIONS;
	r.sessions = &sl;
	front_reply(f, slot, &r);
	free(rows);
	free(ptrs);
}

static void send_trace(struct front *f, uint32_t slot, uint64_t id, const struct dp_trace_dump *d)
{
	Dualpath__V1__TraceEvent *ev = calloc(d->n ? d->n : 1, sizeof(*ev));
	Dualpath__V1__TraceEvent **ptrs = calloc(d->n ? d->n : 1, sizeof(*ptrs));
	/* two values each, and a stall's or io's bytes in flight of the
	 * classes besides restore */
	static const char *const io_names[DP_RSCHED_CLASS_MAX] = {
		[DP_RSCHED_ENGRAM] = "engram_kib_in_flight",
		[DP_RSCHED_EXPERT] = "expert_kib_in_flight",
		[DP_RSCHED_WRITEBACK] = "writeback_kib_in_flight",
	};
	enum { ARGS = 1 + DP_RSCHED_CLASS_MAX };
	Dualpath__V1__Label *lab = calloc(ARGS * (size_t)(d->n ? d->n : 1), sizeof(*lab));
	Dualpath__V1__Label **labp = calloc(ARGS * (size_t)(d->n ? d->n : 1), sizeof(*labp));
	char (*vals)[ARGS][24] = calloc(d->n ? d->n : 1, sizeof(*vals));
	if (!ev || !ptrs || !lab || !labp || !vals) {
		front_reply_error(f, slot, id, DUALPATH__V1__CODE__RESOURCE_EXHAUSTED, "out of memory");
		goto out;
	}
	for (uint32_t i = 0; i < d->n; i++) {
		dualpath__v1__trace_event__init(&ev[i]);
		ev[i].name = (char *)d->ev[i].name;
		ev[i].lane = d->ev[i].lane ? "io" : "compute";
		ev[i].start_us = d->ev[i].start_us;
		ev[i].dur_us = d->ev[i].dur_us;
		/* a step: tokens and sequences; a restore: the position restored
		 * and the tier it came from; a stall: the layer waited for and the
		 * restore KiB in flight; a hold: the sessions held back and the
		 * restore KiB in flight as it ended; io: the restore KiB in flight
		 * as the step began and the loading sessions it left out; both
		 * stall and io then the
		 * Engram, expert and writeback KiB in flight */
		bool restore = !strcmp(d->ev[i].name, "restore");
		bool stall = !strcmp(d->ev[i].name, "stall");
		bool io = !strcmp(d->ev[i].name, "io");
		bool hold = !strcmp(d->ev[i].name, "hold");
		snprintf(vals[i][0], sizeof(vals[i][0]), "%u", d->ev[i].tokens);
		if (restore)
			snprintf(vals[i][1], sizeof(vals[i][1]), "%s", dp_kv_tier_name(d->ev[i].batch));
		else
			snprintf(vals[i][1], sizeof(vals[i][1]), "%u", d->ev[i].batch);
		size_t a = ARGS * (size_t)i, n_args = 0;
		for (int k = 0; k < 2; k++, n_args++) {
			dualpath__v1__label__init(&lab[a + k]);
			lab[a + k].name = restore ? (k ? "from_tier" : "position")
					  : stall ? (k ? "restore_kib_in_flight" : "layer")
					  : io	  ? (k ? "deferred" : "restore_kib_in_flight")
					  : hold  ? (k ? "restore_kib_in_flight" : "sessions")
						  : (k ? "sequences" : "tokens");
			lab[a + k].value = vals[i][k];
			labp[a + k] = &lab[a + k];
		}
		for (int k = 0; d->ev[i].has_io && k < DP_RSCHED_CLASS_MAX; k++) {
			if (!io_names[k])
				continue;
			snprintf(vals[i][n_args], sizeof(vals[i][n_args]), "%u", d->ev[i].io_kib[k]);
			dualpath__v1__label__init(&lab[a + n_args]);
			lab[a + n_args].name = (char *)io_names[k];
			lab[a + n_args].value = vals[i][n_args];
			labp[a + n_args] = &lab[a + n_args];
			n_args++;
		}
		ev[i].n_args = n_args;
		ev[i].args = &labp[a];
		ptrs[i] = &ev[i];
	}
	Dualpath__V1__TraceReply tr = DUALPATH__V1__TRACE_REPLY__INIT;
	Dualpath__V1__Response r = DUALPATH__V1__RESPONSE__INIT;
	tr.n_events = d->n;
	tr.events = ptrs;
	r.request_id = id;
	r.body_case = DUALPATH__V1__RESPONSE__BODY_TRACE;
	r.trace = &tr;
	front_reply(f, slot, &r);
out:
	free(ev);
	free(ptrs);
	free(lab);
	free(labp);
	free(vals);
}

/* One chunk's parsed output, gathered over its ids (the parser's deltas
 * live until its next call, so they are copied). */
struct chat_out {
	char *reasoning, *content;
	size_t reasoning_len, content_len;
	Dualpath__V1__ToolCall *calls;
	Dualpath__V1__ToolCall **ptrs;
	size_t n_calls;
	bool oom;
};

static void chat_out_add(char **s, size_t *len, const char *p, size_t n, bool *oom)
{
	char *t = realloc(*s, *len + n + 1);
	if (!t) {
		*oom = true;
		return;
	}
	memcpy(t + *len, p, n);
	*len += n;
	t[*len] = '\0';
	*s = t;
}

static void chat_out_take(struct chat_out *o, const struct dp_chat_delta *d,
			  Dualpath__V1__ChatDelta *cd)
{
	chat_out_add(&o->reasoning, &o->reasoning_len, d->reasoning, d->reasoning_len, &o->oom);
	chat_out_add(&o->content, &o->content_len, d->content, d->content_len, &o->oom);
	for (size_t i = 0; i < d->n_calls && !o->oom; i++) {
		Dualpath__V1__ToolCall *c = realloc(o->calls, (o->n_calls + 1) * sizeof(*c));
		if (!c) {
			o->oom = true;
			break;
		}
		o->calls = c;
		dualpath__v1__tool_call__init(&c[o->n_calls]);
		c[o->n_calls].id = strdup(d->calls[i].id);
		c[o->n_calls].name = strdup(d->calls[i].name);
		c[o->n_calls].arguments = strdup(d->calls[i].arguments);
		o->n_calls++;
		if (!c[o->n_calls - 1].id || !c[o->n_calls - 1].name || !c[o->n_calls - 1].arguments)
			o->oom = true;
	}
	cd->flags = d->flags;
	cd->malformed = (d->flags & DP_CHAT_PARSE_MALFORMED) != 0;
	cd->ended = cd->ended || d->ended;
}

static void chat_out_fini(struct chat_out *o)
{
	for (size_t i = 0; i < o->n_calls; i++) {
		free(o->calls[i].id);
		free(o->calls[i].name);
		free(o->calls[i].arguments);
	}
	free(o->calls);
	free(o->ptrs);
	free(o->reasoning);
	free(o->content);
}

/* Feed the chunk's ids to the request's parser (and finish it on the last
 * chunk). Returns 0 with cd filled, or -1 (out of memory, a parser error:
 * the chunk then goes without its delta). */
static int chat_parse(struct freq *q, const struct dp_event *e, struct chat_out *o,
		      Dualpath__V1__ChatDelta *cd)
{
	struct dp_chat_delta d;

	chat_out_add(&o->reasoning, &o->reasoning_len, "", 0, &o->oom);
	chat_out_add(&o->content, &o->content_len, "", 0, &o->oom);
	for (uint32_t i = 0; i < e->n_ids; i++) {
		if (dp_conv_stream_feed(q->chat, e->ids[i], &d) < 0)
			return -1;
		chat_out_take(o, &d, cd);
	}
	if (e->finish) {
		if (dp_conv_stream_finish(q->chat, &d) < 0)
			return -1;
		chat_out_take(o, &d, cd);
	}
	if (o->n_calls && !o->oom) {
		o->ptrs = malloc(o->n_calls * sizeof(*o->ptrs));
		if (!o->ptrs)
			return -1;
		for (size_t i = 0; i < o->n_calls; i++)
			o->ptrs[i] = &o->calls[i];
	}
	if (o->oom)
		return -1;
	cd->reasoning = o->reasoning;
	cd->content = o->content;
	cd->n_tool_calls = o->n_calls;
	cd->tool_calls = o->ptrs;
	return 0;
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
			tc.text.data = (uint8_t *)f->textbuf;
			tc.text.len = tlen;
		}
	}
	struct chat_out co = {0};
	Dualpath__V1__ChatDelta cd = DUALPATH__V1__CHAT_DELTA__INIT;
	if (q && q->chat && chat_parse(q, e, &co, &cd) == 0)
		tc.chat = &cd;
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
	front_reply(f, slot, &r);
	chat_out_fini(&co);
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
			front_reply_error(f, slot, e->request_id, e->code, e->payload ? e->payload : "error");
			break;
		}
		case DP_EV_ACK: {
			Dualpath__V1__Ack a = DUALPATH__V1__ACK__INIT;
			Dualpath__V1__Response r = DUALPATH__V1__RESPONSE__INIT;
			r.request_id = e->request_id;
			r.body_case = DUALPATH__V1__RESPONSE__BODY_ACK;
			r.ack = &a;
			front_reply(f, slot, &r);
			break;
		}
		case DP_EV_STATS:
			front_send_stats(f, slot, e->request_id, e->payload);
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
		if (front_conn_finished(c))
			front_conn_close(f, slot);
	}
	free(e->payload);
}

void front_drain_events(struct front *f)
{
	struct dp_event ev[32];
	uint32_t n;
	while ((n = dp_spsc_dequeue_burst(f->srv->to_front, ev, 32)) > 0)
		for (uint32_t i = 0; i < n; i++)
			on_event(f, &ev[i]);
}
