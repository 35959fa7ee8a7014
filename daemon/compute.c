/* SPDX-License-Identifier: MIT */
/*
 * The compute thread: sessions, admission, continuous batching, sampling,
 * journaling.
 *
 * Every request's work is "feed the history from the state's position to
 * its end": a new request appends its prompt to the history, each sampled
 * token is appended too, and a step feeds each active request either a
 * chunk of what is unfed (a prefill, or a replay after a restart or a lost
 * page) or its one unfed token (a decode). So prefills and decodes of many
 * sessions share each forward step, and a restored state that stands behind
 * its history needs no special path.
 *
 * A turn ends durable: its tokens are journaled (one fsync for every turn
 * that ended in the step) before the final chunk goes out.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "base/err.h"
#include "base/macros.h"
#include "daemon/batch.h"
#include "daemon/cluster.h"
#include "daemon/experts.h"
#include "daemon/log.h"
#include "daemon/server.h"
#include "daemon/shared.h"
#include "daemon/shared-units.h"
#include "kvcache/rsched.h"

struct req {
	struct dp_msg *msg;
	struct dp_kv_session *sess; /* NULL: one-off */
	struct dp_v4_seq *seq;
	/* one-off requests keep their own history */
	int32_t *hist;
	uint64_t hlen, hcap;
	uint32_t generated;
	uint32_t cached; /* context tokens the state already held */
	uint32_t prompt;
	struct dp_sampler sampler;
	void *sscratch;
	bool cancelled, done;
	bool committing; /* its turn is being made durable on the shared tier */
	uint32_t finish;
	uint64_t t_admit, t_first;
	uint64_t t_restore; /* a layer-by-layer restore began (0: none running) */
	enum dp_kv_tier restored_from;
	uint32_t deferred; /* steps left out while its state was arriving */
	/* left out of steps (or held) while its state arrives: since when (0:
	 * not now), and its bound then (restore_join) */
	uint64_t out_since, out_bound_ns;
	/* prefix units (kvcache.h): a one-off may start from a unit; every
	 * request leaves one at unit_at (0: none; just before its prompt's
	 * last token) and one where it ends */
	struct dp_kv_tenant tenant;
	struct dp_kv_session *unit; /* lent by dp_kv_unit_fork: r->seq is its sequence */
	uint64_t unit_at;
	struct req *next;
};

/* events that found the ring to the front full, oldest first */
struct outbox {
	struct dp_spsc *ring;	 /* to this front (socket or HTTP) */
	struct dp_waiter *wake;	 /* ... and its wake-up */
	struct dp_event *ev;
	uint32_t head, n, cap;
};

#define DP_OUTBOX_MIN 1024u
#define DP_OUTBOX_SOFT 16384u

struct compute {
	struct dp_server *srv;
	struct outbox outbox;	 /* to the socket front */
	struct outbox http_out;	 /* to the HTTP front (origins with DP_ORIGIN_HTTP) */
	struct req *waiting, **waiting_tail;
	struct req *active;
	uint32_t n_active, n_waiting;
	float *logits;
	size_t logits_rows;
	struct dp_v4_batch_item *items; /* this step's batch (max_batch) */
	struct req **item_req;
	struct dp_batch_cand *cand;	/* its candidates: the active requests */
	struct req **cand_req;
	struct dp_batch_pick *picks;
	/* sessions each connection created, by slot; gen tells a reused slot's
	 * new connection from the old one, whose close may arrive later */
	struct conn_sessions {
		uint32_t gen, n;
	} *sessions_by_conn;
	bool draining, shutdown;
	uint64_t drain_deadline;
	uint32_t commits_since_compact;
	struct dp_compute_stats st;
	enum dp_restore_mode restore_mode;
	double step_ns_avg;   /* recent step duration */
	double io_bytes_per_ns; /* recent restore read rate */
	double io_rate_dev;	/* its recent relative spread */
	double token_layer_ns;	/* recent compute per token and layer (stalls out) */
	double first_ns;	/* recent time from a restore's first reads to that layer in */
	uint64_t firsts_seen[2]; /* kv restore_first_ns, restore_firsts at the last step */
	uint64_t io_seen[2];	 /* kv restore_io_ns, restore_io_bytes at the last rate */
	uint32_t n_layers;
	uint64_t step_io[DP_RSCHED_CLASS_MAX]; /* bytes issued and not done as the step
						* began, by class (dp_kv_io_inflight) */
	uint32_t step_deferred; /* loading sessions the step left out */
	/* a restore held back (nothing else to run, its layers would come
	 * late): no step runs; the loop waits hold_wait_ns (or a message) and
	 * tries again. hold_t0: when the hold began (0: none) */
	bool holding;
	uint32_t n_held;
	uint64_t *join_bytes; /* restore_join's joiners' bytes left by layer (JOIN_MAX x layers) */
	uint64_t hold_wait_ns, hold_t0;
	uint64_t stall_seen;  /* kv restore_stall_ns at the last step */
	/* trace: the last TRACE_N steps */
	struct dp_trace_ev *trace;
	uint32_t trace_head, trace_n;
	/* evictions whose writes are in flight: answered when durable */
	struct evict {
		struct evict *next;
		struct dp_msg *msg;
		uint64_t pos, t0, steps0; /* steps0: c->st.steps when it began */
		uint32_t tries;
	} *evicts;
	/* shared tier (daemon/shared.h): requests whose turn's commit is with
	 * the worker (answered when it ends), and session operations that wait
	 * for such a commit */
	struct req *committing;
	uint32_t n_committing;
	struct held_op {
		struct held_op *next;
		struct dp_msg *msg;
	} *held_ops;
};

#define TRACE_N 4096u

int dp_server_send(struct dp_server *srv, struct dp_msg *m)
{
	if (dp_ring_enqueue(srv->to_compute, &m) < 0)
		return -EAGAIN;
	dp_waiter_wake(&srv->compute_wake);
	return 0;
}

/*
 * Events to the front. The compute thread never waits for room in the ring:
 * the front drains it only between its own sends to compute, so a compute
 * thread spinning here while the front spins on a full request ring would be
 * a deadlock any client could provoke (issue 13). What does not fit waits in
 * the outbox, in order, and goes out at the next flush; while the outbox
 * holds more than DP_OUTBOX_SOFT events, compute takes no new messages, so
 * the request ring fills and the front refuses new requests (UNAVAILABLE)
 * instead. The outbox's size is bounded by what the taken requests produce.
 */
static bool outbox_flush_one(struct outbox *o)
{
	uint32_t sent = 0;
	while (o->n) {
		if (dp_spsc_enqueue(o->ring, &o->ev[o->head]) < 0)
			break;
		o->head = (o->head + 1) % o->cap;
		o->n--;
		sent++;
	}
	if (o->n < o->cap / 4 && o->cap > DP_OUTBOX_MIN) { /* shrink after a burst */
		struct dp_event *ev = malloc(o->cap / 2 * sizeof(*ev));
		if (ev) {
			for (uint32_t i = 0; i < o->n; i++)
				ev[i] = o->ev[(o->head + i) % o->cap];
			free(o->ev);
			o->ev = ev;
			o->cap /= 2;
			o->head = 0;
		}
	}
	if (sent || o->n) /* the front has events to take (or room to make) */
		dp_waiter_wake(o->wake);
	return o->n == 0;
}

/* Both fronts' outboxes; true when both are empty. */
static bool outbox_flush(struct compute *c)
{
	bool a = outbox_flush_one(&c->outbox);
	return (!c->http_out.n || outbox_flush_one(&c->http_out)) && a;
}

static uint32_t outbox_waiting(const struct compute *c)
{
	return c->outbox.n + c->http_out.n;
}

static void outbox_push(struct compute *c, struct outbox *o, const struct dp_event *ev)
{
	if (o->n == o->cap) {
		uint32_t cap = o->cap ? 2 * o->cap : DP_OUTBOX_MIN;
		struct dp_event *nev = malloc((size_t)cap * sizeof(*nev));
		if (!nev) {
			/* nothing to do but lose it: the request it belongs to
			 * will not see this event (counted) */
			c->st.events_dropped++;
			free(ev->payload);
			return;
		}
		for (uint32_t i = 0; i < o->n; i++)
			nev[i] = o->ev[(o->head + i) % o->cap];
		free(o->ev);
		o->ev = nev;
		o->cap = cap;
		o->head = 0;
	}
	o->ev[(o->head + o->n) % o->cap] = *ev;
	o->n++;
	if (outbox_waiting(c) > c->st.outbox_peak)
		c->st.outbox_peak = outbox_waiting(c);
}

static void send_event(struct compute *c, const struct dp_event *ev)
{
	if (ev->to.conn == UINT32_MAX) { /* to the daemon itself: nobody reads */
		free(ev->payload);
		return;
	}
	/* each front has its own single-producer ring (compute is its only
	 * producer); an HTTP origin without an HTTP front cannot happen */
	struct outbox *o = ev->to.conn & DP_ORIGIN_HTTP ? &c->http_out : &c->outbox;
	if (!o->ring) {
		free(ev->payload);
		return;
	}
	/* order: nothing overtakes what already waits in the outbox */
	if (o->n || dp_spsc_enqueue(o->ring, ev) < 0)
		outbox_push(c, o, ev);
	dp_waiter_wake(o->wake);
}

static void send_error(struct compute *c, const struct dp_msg *m, uint32_t code, const char *fmt,
		       ...) __attribute__((format(printf, 4, 5)));
static void send_error(struct compute *c, const struct dp_msg *m, uint32_t code, const char *fmt,
		       ...)
{
	char *text = malloc(512);
	if (text) {
		va_list ap;
		va_start(ap, fmt);
		dp_verrf(text, 512, fmt, ap);
		va_end(ap);
	}
	struct dp_event ev = { .kind = DP_EV_ERROR, .to = m->from, .request_id = m->request_id,
			       .code = code, .payload = text };
	send_event(c, &ev);
}

static void send_ack(struct compute *c, const struct dp_msg *m)
{
	struct dp_event ev = { .kind = DP_EV_ACK, .to = m->from, .request_id = m->request_id };
	send_event(c, &ev);
}

static struct dp_trace_ev *trace_add(struct compute *c, const char *name, int lane, uint64_t t0,
				     uint64_t t1, uint32_t tokens, uint32_t batch)
{
	struct dp_trace_ev *t = &c->trace[c->trace_head];
	memset(t, 0, sizeof(*t));
	snprintf(t->name, sizeof(t->name), "%s", name);
	t->lane = (uint8_t)lane;
	t->start_us = (t0 - c->srv->start_ns) / 1000;
	t->dur_us = (t1 - t0) / 1000;
	t->tokens = tokens;
	t->batch = batch;
	c->trace_head = (c->trace_head + 1) % TRACE_N;
	if (c->trace_n < TRACE_N)
		c->trace_n++;
	return t;
}

/* A stall or io event's bytes in flight by class, in KiB. */
static void trace_io(struct dp_trace_ev *t, const uint64_t bytes[DP_RSCHED_CLASS_MAX])
{
	t->has_io = true;
	for (int k = 0; k < DP_RSCHED_CLASS_MAX; k++)
		t->io_kib[k] = (uint32_t)(bytes[k] >> 10);
}

/* ---- history helpers ---------------------------------------------------- */

static const int32_t *hist(const struct req *r)
{
	return r->sess ? dp_kv_session_history(r->sess) : r->hist;
}

static uint64_t hist_len(const struct req *r)
{
	return r->sess ? dp_kv_session_len(r->sess) : r->hlen;
}

static int hist_append(struct compute *c, struct req *r, const int32_t *t, uint32_t n)
{
	if (r->sess)
		return dp_kv_session_append(c->srv->kv, r->sess, t, n);
	if (r->hlen + n > r->hcap) {
		uint64_t cap = r->hcap ? r->hcap : 256;
		while (cap < r->hlen + n)
			cap *= 2;
		int32_t *h = realloc(r->hist, cap * sizeof(*h));
		if (!h)
			return -ENOMEM;
		r->hist = h;
		r->hcap = cap;
	}
	memcpy(r->hist + r->hlen, t, (size_t)n * sizeof(*t));
	r->hlen += n;
	return 0;
}

/* The session whose restore r's sequence comes from: its own, or the unit
 * lent to it. */
static struct dp_kv_session *restoring(const struct req *r)
{
	return r->sess ? r->sess : r->unit;
}

/* r's state came back from tier `was` (session or unit s): a layer-by-layer
 * restore still running is traced when it completes (emit_item), a copy
 * that is done already now. */
static void note_restore(struct compute *c, struct req *r, struct dp_kv_session *s,
			 enum dp_kv_tier was, uint64_t t0)
{
	struct dp_kv_restore_info ri;
	dp_kv_session_restore_info(c->srv->kv, s, &ri);
	r->restored_from = was;
	if (ri.active)
		r->t_restore = t0;
	else
		trace_add(c, "restore", 1, t0, dp_clock_ns(), (uint32_t)dp_v4_seq_pos(r->seq),
			  (uint32_t)was);
}

static void req_free(struct compute *c, struct req *r)
{
	if (r->sess)
		dp_kv_session_release(c->srv->kv, r->sess);
	else if (r->unit)
		dp_kv_unit_return(c->srv->kv, r->unit, false);
	else
		dp_v4_seq_free(r->seq);
	free(r->hist);
	free(r->sscratch);
	if (r->msg) {
		free(r->msg->tokens);
		free(r->msg);
	}
	free(r);
}

/* ---- requests ------------------------------------------------------------------ */

static bool session_in_use(struct compute *c, const char *id)
{
	for (struct req *r = c->active; r; r = r->next)
		if (r->msg->session[0] && !strcmp(r->msg->session, id))
			return true;
	for (struct req *r = c->waiting; r; r = r->next)
		if (r->msg->session[0] && !strcmp(r->msg->session, id))
			return true;
	return false;
}

/* Sessions belong to the uid that created them: a client may use its own,
 * one without an owner (from a journal written before owners), or, as root
 * or admin_group, any. To others a session does not exist (NOT_FOUND, the
 * answer for an id nobody has), so its name tells them nothing. */
static bool may_use(const struct dp_msg *m, const struct dp_kv_session *s)
{
	uint32_t owner = dp_kv_session_owner(s);
	return m->admin || owner == DP_KV_OWNER_NONE || owner == m->uid;
}

/* The session m names, if this client may use it. */
static struct dp_kv_session *own_session(struct compute *c, const struct dp_msg *m)
{
	struct dp_kv_session *s;
	if (dp_kv_session_find(c->srv->kv, m->session, &s) < 0 || !may_use(m, s))
		return NULL;
	return s;
}

static void on_generate(struct compute *c, struct dp_msg *m)
{
	struct dp_server *srv = c->srv;
	if (c->draining) {
		send_error(c, m, DUALPATH__V1__CODE__UNAVAILABLE,
			   "the daemon is draining: no new requests (retry on another instance or later)");
		goto drop;
	}
	if (c->n_active + c->n_waiting + c->n_committing >= srv->cfg.max_concurrent_requests) {
		send_error(c, m, DUALPATH__V1__CODE__RESOURCE_EXHAUSTED,
			   "%u requests are in flight, the limit (max_concurrent_requests)",
			   c->n_active + c->n_waiting + c->n_committing);
		goto drop;
	}
	struct dp_kv_session *other;
	if (m->session[0] && dp_kv_session_find(srv->kv, m->session, &other) == 0 && !may_use(m, other)) {
		send_error(c, m, DUALPATH__V1__CODE__NOT_FOUND,
			   "session %s is another user's (session ids are one namespace for all "
			   "users of this daemon: choose another)", m->session);
		goto drop;
	}
	if (m->session[0] && session_in_use(c, m->session)) {
		send_error(c, m, DUALPATH__V1__CODE__FAILED_PRECONDITION,
			   "session %s is busy with another request; send its turns one at a time",
			   m->session);
		goto drop;
	}
	struct req *r = calloc(1, sizeof(*r));
	if (!r) {
		send_error(c, m, DUALPATH__V1__CODE__RESOURCE_EXHAUSTED, "out of memory");
		goto drop;
	}
	r->msg = m;
	*c->waiting_tail = r;
	c->waiting_tail = &r->next;
	c->n_waiting++;
	return;
drop:
	free(m->tokens);
	free(m);
}

/* A one-off's state: from the longest prefix unit of its tenant its prompt
 * starts with (but one token short of the whole prompt: its logits need a
 * token fed), restored from whichever tier holds it, else fresh. */
static int start_one_off(struct compute *c, struct req *r)
{
	struct dp_server *srv = c->srv;
	int got = 0;
	uint64_t t0 = dp_clock_ns();
	if (c->restore_mode != DP_RESTORE_RECOMPUTE && hist_len(r) > 1) {
		/* another host's unit on the shared tier, if longer than ours */
		got = dp_shared_units_fork(srv, &r->tenant, hist(r), hist_len(r) - 1,
					   c->restore_mode == DP_RESTORE_DUALPATH, &r->seq, &r->unit);
		if (got == 0)
			got = dp_kv_unit_fork(srv->kv, &r->tenant, hist(r), hist_len(r) - 1,
					      c->restore_mode == DP_RESTORE_DUALPATH, &r->seq, &r->unit);
		if (got < 0) {
			log_warning("request %llu: no prefix unit restored (%s); computing its prompt",
				    (unsigned long long)r->msg->request_id, strerror(-got));
			r->seq = NULL;
			r->unit = NULL;
		}
	}
	int ret;
	if (!r->seq && (ret = dp_v4_seq_new(srv->model, &r->seq)) < 0) {
		send_error(c, r->msg, DUALPATH__V1__CODE__RESOURCE_EXHAUSTED, "out of memory for state");
		return ret;
	}
	if (r->unit)
		note_restore(c, r, r->unit, DP_KV_TIER_NVME, t0);
	r->cached = (uint32_t)dp_v4_seq_pos(r->seq);
	return 0;
}

/* Leave a prefix unit of r's state where its sequence stands. */
static void leave_unit(struct compute *c, struct req *r)
{
	uint64_t pos = dp_v4_seq_pos(r->seq);
	if (!pos || pos > hist_len(r) || dp_v4_seq_poisoned(r->seq))
		return;
	struct dp_kv_restore_info ri;
	if (restoring(r) && dp_kv_session_restore_info(c->srv->kv, restoring(r), &ri) == 0 &&
	    ri.active && ri.layers_ready < ri.layers)
		return; /* ended before its restored pages all came: they are not its state yet */
	int ret = dp_kv_unit_leave(c->srv->kv, &r->tenant, hist(r), pos, r->seq);
	if (ret == 0) /* for the other hosts too (queued; written off this thread) */
		dp_shared_units_publish(c->srv, &r->tenant, hist(r), pos, r->seq);
	if (ret < 0)
		log_warning("request %llu: no prefix unit left at %llu tokens: %s",
			    (unsigned long long)r->msg->request_id, (unsigned long long)pos,
			    strerror(-ret));
}

static int admit_one(struct compute *c, struct req *r)
{
	struct dp_server *srv = c->srv;
	struct dp_msg *m = r->msg;
	int ret;

	dp_kv_tenant_make(m->uid, m->cache_salt, m->cache_salt_len, &r->tenant);
	if (m->session[0]) {
		/* one host at a time serves a session (daemon/shared.h) */
		char why[384];
		if ((ret = dp_shared_claim(srv, m->session, why, sizeof(why))) == -EINPROGRESS)
			return ret; /* the worker takes the lease: r waits (admit) */
		if (ret < 0) {
			send_error(c, m, ret == -EBUSY ? DUALPATH__V1__CODE__FAILED_PRECONDITION
						       : DUALPATH__V1__CODE__UNAVAILABLE, "%s", why);
			return ret;
		}
		if (ret == 1)
			log_info("session %s: taken over from the shared tier (%llu tokens of history)",
				 m->session, (unsigned long long)(dp_kv_session_find(srv->kv, m->session,
					 &r->sess) == 0 ? dp_kv_session_len(r->sess) : 0));
		r->sess = NULL;
		if (dp_kv_session_find(srv->kv, m->session, &r->sess) == 0 && !may_use(m, r->sess)) {
			/* created by another user since this request was queued */
			r->sess = NULL;
			send_error(c, m, DUALPATH__V1__CODE__NOT_FOUND, "session %s is another user's",
				   m->session);
			return -EPERM;
		}
		if (r->sess && dp_kv_session_lost(srv->kv, m->session)) {
			/* never served as an empty context: the client must know */
			r->sess = NULL;
			send_error(c, m, DUALPATH__V1__CODE__DATA_LOSS,
				   "session %s: its history was lost to damage in the state journal (see "
				   "the daemon's log); send CloseSession without persist to drop it, then "
				   "start it over", m->session);
			return -ENODATA;
		}
		if (!r->sess) {
			struct conn_sessions *cs = m->from.conn < srv->cfg.max_connections
							   ? &c->sessions_by_conn[m->from.conn] : NULL;
			if (cs && cs->gen != m->from.gen)
				*cs = (struct conn_sessions){ .gen = m->from.gen };
			uint32_t *mine = cs ? &cs->n : NULL;
			size_t n_sessions = dp_kv_session_count(srv->kv) - dp_kv_unit_count(srv->kv);
			if (n_sessions >= srv->cfg.max_sessions) {
				send_error(c, m, DUALPATH__V1__CODE__RESOURCE_EXHAUSTED,
					   "%zu sessions exist, the limit (max_sessions); close some",
					   n_sessions);
				return -ENOSPC;
			}
			if (mine && *mine >= srv->cfg.max_sessions_per_client) {
				send_error(c, m, DUALPATH__V1__CODE__RESOURCE_EXHAUSTED,
					   "this connection created %u sessions, the limit "
					   "(max_sessions_per_client)", *mine);
				return -ENOSPC;
			}
			if ((ret = dp_kv_session_create_owned(srv->kv, m->session, m->uid, &r->sess)) < 0) {
				send_error(c, m, DUALPATH__V1__CODE__INVALID_ARGUMENT,
					   "cannot create session %s: %s", m->session, strerror(-ret));
				return ret;
			}
			if (mine)
				(*mine)++;
		}
		uint64_t t0 = dp_clock_ns();
		enum dp_kv_tier was = dp_kv_session_tier(r->sess);
		bool parked = was == DP_KV_TIER_DRAM || was == DP_KV_TIER_NVME;
		if ((ret = dp_shared_acquire(srv, r->sess, &r->seq)) != 0) /* taken over: from the tier */
			ret = ret < 0 ? ret : 0;
		else if (parked && c->restore_mode == DP_RESTORE_RECOMPUTE) /* the no-reuse baseline */
			ret = dp_kv_session_acquire_fresh(srv->kv, r->sess, &r->seq);
		else if (parked && c->restore_mode == DP_RESTORE_DUALPATH)
			ret = dp_kv_session_acquire_async(srv->kv, r->sess, &r->seq);
		else
			ret = dp_kv_session_acquire(srv->kv, r->sess, &r->seq);
		if (ret < 0) {
			r->sess = NULL;
			send_error(c, m, DUALPATH__V1__CODE__INTERNAL,
				   "cannot restore session %s: %s", m->session, strerror(-ret));
			return ret;
		}
		if (parked && c->restore_mode != DP_RESTORE_RECOMPUTE)
			note_restore(c, r, r->sess, was, t0);
		r->cached = (uint32_t)dp_v4_seq_pos(r->seq);
	}
	/* a chat turn on a session with a context continues it (server.h) */
	if (m->chat && hist_len(r) == 0 && m->whole_error[0]) {
		send_error(c, m, DUALPATH__V1__CODE__INVALID_ARGUMENT, "%s", m->whole_error);
		return -EINVAL;
	}
	if (m->chat && hist_len(r) > 0) {
		if (m->cont_error[0]) {
			send_error(c, m, DUALPATH__V1__CODE__INVALID_ARGUMENT, "%s", m->cont_error);
			return -EINVAL;
		}
		memmove(m->tokens, m->tokens + m->n_tokens, m->n_cont * sizeof(*m->tokens));
		m->n_tokens = m->n_cont;
		if (m->cont_lead >= 0 && hist(r)[hist_len(r) - 1] != m->cont_lead &&
		    (ret = hist_append(c, r, &m->cont_lead, 1)) < 0) {
			send_error(c, m, DUALPATH__V1__CODE__RESOURCE_EXHAUSTED, "out of memory for history");
			return ret;
		}
	}
	uint64_t ctx = hist_len(r) + m->n_tokens + m->max_new + 1;
	uint64_t maxpos = (uint64_t)dp_v4_model_config(srv->model)->max_position_embeddings;
	if (ctx > maxpos) {
		send_error(c, m, DUALPATH__V1__CODE__INVALID_ARGUMENT,
			   "context would reach %llu tokens, beyond the model's %llu",
			   (unsigned long long)ctx, (unsigned long long)maxpos);
		return -E2BIG;
	}
	/* a text prompt that starts a context begins with BOS */
	int32_t bos = dp_tok_special(srv->tok, DP_TOK_BOS);
	if (hist_len(r) == 0 && m->n_tokens && m->tokens[0] != bos && bos >= 0 && m->prompt_is_text)
		hist_append(c, r, &bos, 1);
	if ((ret = hist_append(c, r, m->tokens, m->n_tokens)) < 0) {
		send_error(c, m, DUALPATH__V1__CODE__RESOURCE_EXHAUSTED, "out of memory for history");
		return ret;
	}
	r->prompt = m->n_tokens;
	bool seeded = false;
	if (!r->sess && (ret = start_one_off(c, r)) < 0)
		return ret;
	if (r->sess && r->cached == 0 && c->restore_mode != DP_RESTORE_RECOMPUTE) {
		/* a session without state (new, or its state lost) may find its
		 * conversation in a unit */
		int got = dp_kv_session_seed(srv->kv, r->sess, &r->tenant, &r->seq);
		if (got < 0)
			log_warning("session %s: no prefix unit restored (%s); computing its context",
				    m->session, strerror(-got));
		else {
			r->cached = (uint32_t)got;
			seeded = got > 0;
		}
	}
	/* Usage: prompt_tokens counts what this request computes, cached_tokens
	 * what it reused. A session with state reuses its earlier context, apart
	 * from this prompt; a one-off or seeded request reuses a prefix unit, a
	 * part of its own prompt, which is then not computed (the HTTP front adds
	 * the two for OpenAI's prompt_tokens, so they must not overlap). */
	if ((!r->sess || seeded) && r->cached)
		r->prompt = (uint32_t)(hist_len(r) - r->cached);
	if (c->restore_mode != DP_RESTORE_RECOMPUTE && hist_len(r) > 1 && hist_len(r) - 1 > r->cached)
		r->unit_at = hist_len(r) - 1;
	size_t sb = dp_sampler_scratch_size((int)srv->vocab);
	r->sscratch = m->sampling.temperature > 0 ? malloc(sb) : NULL;
	if ((m->sampling.temperature > 0 && !r->sscratch) ||
	    dp_sampler_init(&r->sampler, &m->sampling, r->sscratch, r->sscratch ? sb : 0) < 0) {
		send_error(c, m, DUALPATH__V1__CODE__INVALID_ARGUMENT, "invalid sampling parameters");
		return -EINVAL;
	}
	r->t_admit = dp_clock_ns();
	c->st.requests_started++;
	log_debug("request %llu of connection %u: session %s, context %llu (state at %u), prompt %u, "
		  "max_new %u", (unsigned long long)m->request_id, m->from.conn,
		  m->session[0] ? m->session : "(one-off)", (unsigned long long)hist_len(r), r->cached,
		  m->n_tokens, m->max_new);
	return 0;
}

/* Whether session id's last turn is still being committed to the shared
 * tier (its next request waits; so do an eviction or close of it). */
static bool committing(const struct compute *c, const char *id)
{
	for (const struct req *r = c->committing; r; r = r->next)
		if (!strcmp(r->msg->session, id))
			return true;
	return false;
}

/* A request on a session waits in the queue, without holding up the others,
 * while the session's last turn commits or its lease is being taken. */
static bool held_back(struct compute *c, const struct req *r)
{
	return r->msg->session[0] && c->srv->tier &&
	       (committing(c, r->msg->session) || dp_shared_claim_pending(c->srv, r->msg->session));
}

static void admit(struct compute *c)
{
	for (struct req **pp = &c->waiting;
	     *pp && c->n_active < c->srv->cfg.max_batch && !c->draining;) {
		struct req *r = *pp;
		if (held_back(c, r)) {
			pp = &r->next;
			continue;
		}
		*pp = r->next;
		if (!*pp)
			c->waiting_tail = pp;
		c->n_waiting--;
		r->next = NULL;
		int ret = admit_one(c, r);
		if (ret == -EINPROGRESS) { /* back in its place until its lease is taken */
			r->next = *pp;
			*pp = r;
			if (!r->next)
				c->waiting_tail = &r->next;
			c->n_waiting++;
			pp = &r->next;
			continue;
		}
		if (ret < 0) {
			c->st.requests_failed++;
			req_free(c, r);
			continue;
		}
		r->next = c->active;
		c->active = r;
		c->n_active++;
	}
}

/* ---- steps ------------------------------------------------------------------- */

static bool is_eos(const struct dp_server *srv, int32_t t)
{
	for (uint32_t i = 0; i < srv->n_eos; i++)
		if (srv->eos[i] == t)
			return true;
	return false;
}

static void emit(struct compute *c, struct req *r, const int32_t *ids, uint32_t n, uint32_t finish)
{
	struct dp_event ev = { .kind = DP_EV_TOKENS, .to = r->msg->from,
			       .request_id = r->msg->request_id, .n_ids = n, .finish = finish,
			       .position = hist_len(r) };
	if (n)
		memcpy(ev.ids, ids, n * sizeof(*ids));
	if (finish) {
		uint64_t now = dp_clock_ns();
		ev.prompt_tokens = r->prompt;
		ev.cached_tokens = r->cached;
		ev.generated_tokens = r->generated;
		ev.ttft_us = r->t_first ? (r->t_first - r->msg->t_recv_ns) / 1000 : 0;
		ev.total_us = (now - r->msg->t_recv_ns) / 1000;
	}
	send_event(c, &ev);
}

/* Journal compaction rewrites every live session's history: off the token
 * path, in the first idle moment after compact_every commits; a daemon that
 * is never idle compacts anyway at 4 x compact_every, so the journal (and the
 * next start's replay) stays bounded. */
static void maybe_compact(struct compute *c)
{
	uint32_t every = c->srv->cfg.compact_every;
	if (!every || c->commits_since_compact < every)
		return;
	bool idle = !c->active && !c->waiting;
	if (!idle && c->commits_since_compact / 4 < every)
		return;
	c->commits_since_compact = 0;
	int ret = dp_kv_compact(c->srv->kv);
	if (ret < 0)
		log_warning("journal compaction failed: %s", strerror(-ret));
}

/* With a shared tier, a turn is acknowledged only once its session's
 * manifest is written there: one that is not (the tier failed, or another
 * host took the session: fenced) ends in an error, not a final chunk. The
 * writes run on the shared tier's worker (daemon/shared.h): the requests
 * whose turns commit leave the active list for c->committing, and compute
 * steps on; commits_poll answers them when the worker is done. */
static void shared_flush(struct compute *c, struct req **rs, struct dp_kv_session **ss, size_t n)
{
	int ret = dp_shared_commit_start(c->srv, ss, (void *const *)rs, n);
	for (size_t i = 0; i < n; i++) {
		if (ret == 0) {
			rs[i]->committing = true;
			continue;
		}
		send_error(c, rs[i]->msg, DUALPATH__V1__CODE__UNAVAILABLE,
			   "session %s: the turn is not durable on the shared tier (%s); it is not "
			   "acknowledged", dp_kv_session_id(rs[i]->sess), strerror(-ret));
		rs[i]->finish = DUALPATH__V1__FINISH_REASON__FINISH_ERROR;
		c->st.requests_failed++;
	}
}

static void shared_commit(struct compute *c)
{
	struct dp_kv_session *ss[64];
	struct req *rs[64];
	size_t n = 0;
	for (struct req *r = c->active; r; r = r->next) {
		if (!r->done || !r->sess || r->finish == DUALPATH__V1__FINISH_REASON__FINISH_ERROR ||
		    dp_kv_session_is_unit(r->sess))
			continue;
		rs[n] = r;
		ss[n++] = r->sess;
		if (n == DP_ARRAY_SIZE(ss)) {
			shared_flush(c, rs, ss, n);
			n = 0;
		}
	}
	if (n)
		shared_flush(c, rs, ss, n);
}

static void on_session_op_now(struct compute *c, struct dp_msg *m);

/* The commits the worker finished: each turn's final chunk, or its error;
 * then the session operations that waited for them. Cheap when none. */
static void commits_poll(struct compute *c)
{
	struct dp_shared_done done[64];
	size_t n;
	while ((n = dp_shared_poll(c->srv, done, DP_ARRAY_SIZE(done))) > 0)
		for (size_t i = 0; i < n; i++) {
			struct req *r = done[i].tag, **pp = &c->committing;
			while (*pp != r)
				pp = &(*pp)->next;
			*pp = r->next;
			c->n_committing--;
			if (done[i].res == 0) {
				c->st.requests_finished++;
				emit(c, r, NULL, 0, r->finish);
			} else {
				int res = done[i].res;
				send_error(c, r->msg, DUALPATH__V1__CODE__UNAVAILABLE,
					   "session %s: the turn is not durable on the shared tier (%s); "
					   "it is not acknowledged", r->msg->session,
					   res == -ECANCELED || res == -ENOLCK
						   ? "another host took the session over"
						   : strerror(-res));
				c->st.requests_failed++;
			}
			log_debug("request %llu of connection %u: finished (%u, shared tier %d), %u "
				  "tokens generated", (unsigned long long)r->msg->request_id,
				  r->msg->from.conn, r->finish, done[i].res, r->generated);
			req_free(c, r);
		}
	for (struct held_op **pp = &c->held_ops; *pp;) {
		struct held_op *h = *pp;
		if (committing(c, h->msg->session)) {
			pp = &h->next;
			continue;
		}
		*pp = h->next;
		on_session_op_now(c, h->msg);
		free(h);
	}
}

/* Finish the requests marked done: journal their turns (one fsync), then
 * the final chunk, then release. */
static void retire(struct compute *c)
{
	struct dp_server *srv = c->srv;
	bool any = false;
	for (struct req *r = c->active; r; r = r->next)
		any |= r->done;
	if (!any)
		return;
	/* each ended turn leaves a unit where it stands, journaled with it */
	for (struct req *r = c->active; r; r = r->next)
		if (r->done && r->seq && r->finish != DUALPATH__V1__FINISH_REASON__FINISH_ERROR &&
		    c->restore_mode != DP_RESTORE_RECOMPUTE)
			leave_unit(c, r);
	int ret = dp_kv_commit(srv->kv);
	if (ret < 0)
		log_err("journal commit failed: %s; the turns just finished are not durable",
			strerror(-ret));
	else
		c->commits_since_compact++;
	if (srv->tier && ret >= 0)
		shared_commit(c);
	for (struct req **pp = &c->active; *pp;) {
		struct req *r = *pp;
		if (!r->done) {
			pp = &r->next;
			continue;
		}
		*pp = r->next;
		c->n_active--;
		if (r->committing) { /* answered by commits_poll */
			r->next = c->committing;
			c->committing = r;
			c->n_committing++;
			continue;
		}
		if (r->finish == DUALPATH__V1__FINISH_REASON__FINISH_CANCELLED)
			c->st.requests_cancelled++;
		else if (r->finish != DUALPATH__V1__FINISH_REASON__FINISH_ERROR)
			c->st.requests_finished++;
		/* a failed request was ended by its Error */
		if (r->finish != DUALPATH__V1__FINISH_REASON__FINISH_ERROR)
			emit(c, r, NULL, 0, r->finish);
		log_debug("request %llu of connection %u: finished (%u), %u tokens generated",
			  (unsigned long long)r->msg->request_id, r->msg->from.conn, r->finish, r->generated);
		req_free(c, r);
	}
	/* demotions to NVMe run on the io thread's LOW channel; dp_kv_pump
	 * advances them and a later commit or flush installs them */
	dp_kv_balance_async(srv->kv);
}

/*
 * Staggered admission by the measured I/O rate (kvcache/rsched.h,
 * dp_rsched_join): the sessions whose state is still arriving join the step
 * in order while each of their layers should arrive by the time the forward
 * reaches it (the joiners' remaining bytes, layer-major, at the rate restore
 * reads get recently after the time a restore's first layer took to come,
 * behind the reads already issued ahead of theirs, against the compute per
 * token and layer of recent steps and the items ahead of it in the layer),
 * within one token-layer of compute.
 * When several return together, one's compute so covers the next one's
 * first layers; those left out keep reading, due later
 * (dp_kv_restore_defer), and join ready. When nothing else runs, no step
 * runs until the first would be in time (a hold). One left out long is
 * aged (its reads go first) and, much later, joins regardless (no
 * starvation; below). The forward then waits per layer only for that
 * layer's pages.
 */
#define RESTORE_MAX_DEFER 16u

/* x within [lo, hi] */
static double clampd(double x, double lo, double hi)
{
	return x < lo ? lo : x > hi ? hi : x;
}

static double layer_ns(const struct compute *c)
{
	return c->n_layers ? c->step_ns_avg / c->n_layers : c->step_ns_avg;
}

/* The tokens candidate cd feeds if the step takes it whole. */
static uint32_t cand_tokens(const struct compute *c, const struct dp_batch_cand *cd)
{
	uint64_t t = cd->len > cd->at ? cd->len - cd->at : 0;
	uint32_t chunk = c->srv->cfg.prefill_chunk;
	return (uint32_t)(chunk && t > chunk ? chunk : t);
}

/* Left out (held, or deferred by a step): its reads go behind the joiners'
 * (two steps later; an aged one's one step later, ahead of the others'). It
 * is aged once left out RESTORE_AGE_STEPS steps or past its bound (twice the
 * time its bytes and those issued ahead of them take at the measured rate
 * after the measured latency, at least RESTORE_OUT_MIN_NS; a quarter second
 * before any rate is measured, when a held state comes whole), and joins
 * regardless once left out RESTORE_MAX_DEFER steps or four times its bound:
 * its reads are in by then unless the rate fell far below the measured one,
 * and a join that waits for I/O is the lesser harm than waiting longer. A
 * hold's wait between tries: the predicted lateness, within these. */
#define RESTORE_AGE_STEPS 4u
/* loading sessions one decision takes (those past it are taken as in) */
#define JOIN_MAX 64u
#define RESTORE_OUT_MIN_NS 5000000.0
#define RESTORE_OUT_UNMEASURED_NS 250000000.0
#define RESTORE_HOLD_TRY_MIN_NS 100000.0
#define RESTORE_HOLD_TRY_MAX_NS 2000000.0

static bool left_out_past(const struct req *r, uint64_t now, uint32_t bounds)
{
	return r->out_since && now - r->out_since >= bounds * r->out_bound_ns;
}

static bool aged(const struct req *r, uint64_t now)
{
	return r->deferred >= RESTORE_AGE_STEPS || left_out_past(r, now, 1);
}

/* Set io_ready of the n candidates' loading ones (dp_rsched_join), and
 * start the bound of those left out for the first time. When none of the n
 * can run (nothing settled, no loading one in time), the step is held
 * back: returns true, with c->hold_wait_ns set. */
static bool restore_join(struct compute *c, uint32_t n)
{
	struct dp_rsched_joiner jn[JOIN_MAX];
	bool join[JOIN_MAX];
	uint32_t settled = 0, m = 0, idx[JOIN_MAX];
	bool ready = false, flowing = true;
	uint64_t now = dp_clock_ns();
	for (uint32_t i = 0; i < n; i++) {
		struct dp_batch_cand *cd = &c->cand[i];
		if (!cd->loading) {
			settled += cand_tokens(c, cd);
			ready = true;
			continue;
		}
		struct dp_kv_restore_info ri;
		struct req *r = c->cand_req[i];
		bool room = m < DP_ARRAY_SIZE(jn);
		uint64_t *lb = room ? c->join_bytes + (size_t)m * c->n_layers : NULL;
		int nl = dp_kv_session_restore_layers(c->srv->kv, restoring(r), &ri, lb,
						      room ? c->n_layers : 0);
		if (nl < 0 || !ri.active || ri.layers_ready == ri.layers || !room) {
			cd->io_ready = true; /* all in (or past what one decision takes) */
			ready = true;
			continue;
		}
		bool forced = left_out_past(r, now, 4);
		jn[m] = (struct dp_rsched_joiner){ .bytes_left = ri.bytes_left,
						   .bytes_ahead = ri.bytes_ahead,
						   .layer_bytes = nl > 0 ? lb : NULL,
						   .layers_left = ri.layers - ri.layers_ready,
						   .tokens = cand_tokens(c, cd),
						   .deferred = forced ? RESTORE_MAX_DEFER : r->deferred };
		flowing &= r->out_since != 0;
		idx[m++] = i;
	}
	if (!m)
		return false;
	struct dp_rsched_join_in in = {
		.io_bytes_per_ns = c->io_bytes_per_ns,
		/* left out before: its reads were handed out then, and come */
		.latency_ns = !settled && flowing ? 0 : c->first_ns,
		/* a rate spread s: reads predicted 2 s slower (within 2-50%) */
		.io_margin = clampd(2 * c->io_rate_dev, 0.02, 0.5),
		.token_layer_ns = c->token_layer_ns,
		.slack_ns = c->token_layer_ns,
		.layers = c->n_layers,
		.settled_tokens = settled,
		.max_defer = RESTORE_MAX_DEFER,
		.lone_waits = true,
	};
	int k = dp_rsched_join(&in, jn, m, join);
	if (k < 0)
		for (uint32_t i = 0; i < m; i++)
			join[i] = true;
	bool hold = !ready && k == 0;
	for (uint32_t i = 0; i < m; i++) {
		struct req *r = c->cand_req[idx[i]];
		c->cand[idx[i]].io_ready = join[i];
		if (join[i] && jn[i].deferred >= RESTORE_MAX_DEFER)
			c->st.joins_forced++;
		if (join[i])
			continue;
		if (!r->out_since) {
			/* no rate measured yet: the state comes whole (dp_rsched_join) */
			double b = c->io_bytes_per_ns <= 0
				       ? RESTORE_OUT_UNMEASURED_NS
				       : 2.0 * (c->first_ns + (double)(jn[i].bytes_ahead + jn[i].bytes_left) /
							      c->io_bytes_per_ns);
			r->out_since = now;
			r->out_bound_ns = (uint64_t)fmax(b, RESTORE_OUT_MIN_NS);
		}
		/* held: session after session, the first's (and an aged one's)
		 * reads all go now (dp_kv_restore_pump_step), so it comes in
		 * as soon as its own bytes allow (layer by layer across them
		 * all, each would wait for every one); in a step: behind the
		 * joiners', an aged one's first */
		if (hold && (i == 0 || aged(r, now)))
			continue;
		dp_kv_restore_defer(c->srv->kv, restoring(r), aged(r, now) ? 1 : 2);
	}
	if (!hold)
		return false;
	/* held back: try again when the first would be in time */
	bool one = true;
	double late = dp_rsched_join_wait_ns(&in, jn, 1, &one) - in.slack_ns;
	c->hold_wait_ns = (uint64_t)clampd(late, RESTORE_HOLD_TRY_MIN_NS, RESTORE_HOLD_TRY_MAX_NS);
	c->n_held = m;
	return true;
}

/* The restore window (dp_kv_set_restore_window): [sched] restore_window, or
 * a few layers of compute at the measured read rate. */
#define RESTORE_WINDOW_LAYERS 4.0
#define RESTORE_WINDOW_MIN (1ull << 20)
#define RESTORE_WINDOW_MAX (256ull << 20)

static void restore_window(struct compute *c)
{
	uint64_t w = c->srv->cfg.restore_window;
	if (!w) {
		if (c->io_bytes_per_ns <= 0 || c->step_ns_avg <= 0)
			return; /* not measured yet: the cache's default */
		double b = c->io_bytes_per_ns * layer_ns(c) * RESTORE_WINDOW_LAYERS;
		w = (uint64_t)clampd(b, (double)RESTORE_WINDOW_MIN, (double)RESTORE_WINDOW_MAX);
	}
	dp_kv_set_restore_window(c->srv->kv, w);
}

/* The step's batch: ends what is cancelled or has nothing left to feed,
 * then lets dp_batch_form (daemon/batch.h) choose; fills c->items. */
static uint32_t form_batch(struct compute *c)
{
	const struct dp_config *cfg = &c->srv->cfg;
	uint32_t n = 0;
	for (struct req *r = c->active; r; r = r->next) {
		if (r->cancelled && !r->done) {
			r->done = true;
			r->finish = DUALPATH__V1__FINISH_REASON__FINISH_CANCELLED;
		}
		if (!r->done && dp_v4_seq_pos(r->seq) >= hist_len(r)) { /* max_new_tokens 0 */
			r->done = true;
			r->finish = DUALPATH__V1__FINISH_REASON__FINISH_LENGTH;
		}
		if (r->done)
			continue;
		c->cand[n] = (struct dp_batch_cand){ .at = dp_v4_seq_pos(r->seq), .len = hist_len(r),
						     .loading = r->t_restore != 0 };
		if (r->unit_at > c->cand[n].at) /* the prefill stops there for a unit */
			c->cand[n].len = r->unit_at;
		c->cand[n].io_ready = true;
		c->cand_req[n++] = r;
	}
	/* staggered admission: a loading session that would stall the step
	 * is no candidate this time; its reads go on, due a step later, and
	 * it waits one step more (bounded). With nothing else to run, no step
	 * runs: it is held back, its reads all handed out */
	c->step_deferred = 0;
	if ((c->holding = restore_join(c, n))) {
		dp_kv_restore_pump_step(c->srv->kv);
		return 0;
	}
	uint32_t m = 0;
	for (uint32_t i = 0; i < n; i++) {
		if (c->cand[i].loading && !c->cand[i].io_ready) {
			c->cand_req[i]->deferred++, c->step_deferred++;
			continue;
		}
		c->cand[m] = c->cand[i];
		c->cand_req[m++] = c->cand_req[i];
	}
	n = m;
	dp_kv_restore_pump(c->srv->kv); /* the joiners' pages first, then theirs */
	struct dp_batch_limits lim = { .max_batch_tokens = cfg->max_batch_tokens,
				       .prefill_chunk = cfg->prefill_chunk, .max_seqs = cfg->max_batch };
	uint32_t k = dp_batch_form(c->cand, n, &lim, c->picks);
	/* one the budget left out waits one step more too */
	for (uint32_t i = 0; i < n; i++)
		if (c->cand[i].loading)
			c->cand_req[i]->deferred++, c->step_deferred++;
	for (uint32_t i = 0; i < k; i++)
		if (c->cand[c->picks[i].cand].loading)
			c->cand_req[c->picks[i].cand]->deferred = 0, c->step_deferred--,
			c->cand_req[c->picks[i].cand]->out_since = 0;
	for (uint32_t i = 0; i < k; i++) {
		const struct dp_batch_cand *cd = &c->cand[c->picks[i].cand];
		struct req *r = c->cand_req[c->picks[i].cand];
		uint32_t feed = c->picks[i].feed;
		c->items[i] = (struct dp_v4_batch_item){ .seq = r->seq, .tokens = hist(r) + cd->at,
							 .n_tokens = feed };
		c->item_req[i] = r;
		if (feed == 1 && cd->len - cd->at == 1 && r->generated)
			c->st.tokens_decode++;
		else
			c->st.tokens_prefill += feed;
	}
	return k;
}

/* Run the batch's forward. A failure fails its requests (their state no
 * longer matches their history: dropped, rebuilt from it next time). */
static int run_batch(struct compute *c, uint32_t n)
{
	struct dp_server *srv = c->srv;
	if (srv->engram) {
		/* the step's tokens are known: issue its Engram rows' reads now,
		 * so each Engram layer waits only for its own (a failure here
		 * shows again, as an error, when the forward asks for them) */
		int pr = dp_engram_prefetch(srv->engram, c->items, n);
		if (pr < 0)
			log_warning("Engram prefetch of a %u-sequence step failed: %s", n, strerror(-pr));
	}
	int ret = dp_v4_forward(srv->model, c->items, n, c->logits);
	if (ret == 0)
		return 0;
	const char *why = dp_gpu_last_error(srv->gpu);
	log_err("forward step of %u sequences failed: %s%s%s; failing them", n, strerror(-ret),
		why[0] ? ": " : "", why);
	for (uint32_t i = 0; i < n; i++) {
		struct req *r = c->item_req[i];
		send_error(c, r->msg, DUALPATH__V1__CODE__INTERNAL, "forward pass failed: %s",
			   strerror(-ret));
		r->done = true;
		r->finish = DUALPATH__V1__FINISH_REASON__FINISH_ERROR;
		c->st.requests_failed++;
		if (r->sess) {
			dp_kv_session_forget_state(srv->kv, r->sess);
			r->sess = NULL;
			r->seq = NULL;
		} else if (r->unit) {
			dp_kv_unit_return(srv->kv, r->unit, false);
			r->unit = NULL;
			r->seq = NULL;
		}
	}
	return ret;
}

/* After the forward, one item: a restored page that failed its checks is
 * recomputed; a finished restore is traced; a sequence whose history is
 * all fed samples its next token and sends it. */
static void emit_item(struct compute *c, uint32_t i)
{
	struct dp_server *srv = c->srv;
	struct req *r = c->item_req[i];
	if (r->sess && dp_v4_seq_poisoned(r->seq)) {
		/* never served: rebuild the state from the history, carry on */
		log_warning("session %s: a restored page failed its checks; recomputing",
			    r->msg->session);
		dp_kv_session_forget_state(srv->kv, r->sess);
		r->t_restore = 0;
		if (dp_kv_session_acquire(srv->kv, r->sess, &r->seq) < 0) {
			send_error(c, r->msg, DUALPATH__V1__CODE__INTERNAL, "cannot rebuild session %s",
				   r->msg->session);
			r->sess = NULL;
			r->seq = NULL;
			r->done = true;
			r->finish = DUALPATH__V1__FINISH_REASON__FINISH_ERROR;
		}
		return;
	}
	if (r->unit && dp_v4_seq_poisoned(r->seq)) {
		/* a prefix unit's page failed its checks: the unit goes, the
		 * prompt is computed */
		log_warning("request %llu: a restored page of prefix unit %s failed its checks; "
			    "dropping the unit, recomputing", (unsigned long long)r->msg->request_id,
			    dp_kv_session_id(r->unit));
		dp_kv_unit_return(srv->kv, r->unit, true);
		r->unit = NULL;
		r->seq = NULL;
		r->t_restore = 0;
		r->cached = 0;
		r->unit_at = hist_len(r) > 1 ? hist_len(r) - 1 : 0;
		if (dp_v4_seq_new(srv->model, &r->seq) < 0) {
			send_error(c, r->msg, DUALPATH__V1__CODE__RESOURCE_EXHAUSTED,
				   "out of memory for state");
			r->done = true;
			r->finish = DUALPATH__V1__FINISH_REASON__FINISH_ERROR;
		}
		return;
	}
	if (r->t_restore) { /* its restore completed inside this step */
		struct dp_kv_restore_info ri;
		dp_kv_session_restore_info(srv->kv, restoring(r), &ri);
		if (!ri.active) {
			trace_add(c, "restore", 1, r->t_restore, dp_clock_ns(), (uint32_t)r->cached,
				  (uint32_t)r->restored_from);
			r->t_restore = 0;
		}
	}
	if (r->unit_at && dp_v4_seq_pos(r->seq) == r->unit_at) {
		leave_unit(c, r);
		r->unit_at = 0;
	}
	if (dp_v4_seq_pos(r->seq) < hist_len(r))
		return; /* a prefill chunk: no token yet */
	if (r->generated >= r->msg->max_new) {
		r->done = true;
		r->finish = DUALPATH__V1__FINISH_REASON__FINISH_LENGTH;
		return;
	}
	int id;
	if (dp_sampler_sample(&r->sampler, c->logits + (size_t)i * srv->vocab, (int)srv->vocab, &id) < 0) {
		send_error(c, r->msg, DUALPATH__V1__CODE__INTERNAL, "sampling failed (no finite logit)");
		r->done = true;
		r->finish = DUALPATH__V1__FINISH_REASON__FINISH_ERROR;
		return;
	}
	int32_t t = id;
	hist_append(c, r, &t, 1);
	r->generated++;
	atomic_fetch_add_explicit(&srv->tokens_out, 1, memory_order_relaxed);
	if (!r->t_first)
		r->t_first = dp_clock_ns();
	uint32_t finish = 0;
	if (!r->msg->ignore_eos && is_eos(srv, t))
		finish = DUALPATH__V1__FINISH_REASON__FINISH_EOS;
	for (uint32_t k = 0; k < r->msg->n_stop && !finish; k++)
		if (r->msg->stop[k] == t)
			finish = DUALPATH__V1__FINISH_REASON__FINISH_STOP;
	if (!finish && r->generated >= r->msg->max_new)
		finish = DUALPATH__V1__FINISH_REASON__FINISH_LENGTH;
	if (finish) {
		/* the last token goes out now; the finish follows once the turn
		 * is journaled (retire) */
		r->done = true;
		r->finish = finish;
		struct dp_event ev = { .kind = DP_EV_TOKENS, .to = r->msg->from,
				       .request_id = r->msg->request_id, .n_ids = 1,
				       .position = hist_len(r) };
		ev.ids[0] = t;
		send_event(c, &ev);
	} else {
		emit(c, r, &t, 1, 0);
	}
}

/* The step's figures: time computing vs waiting for restored pages, the
 * restore read rate admission estimates with, the trace. */
#define RATE_SPAN_NS 2000000u
static void account_step(struct compute *c, uint64_t t0, uint32_t n)
{
	struct dp_server *srv = c->srv;
	uint32_t step_tokens = 0;
	for (uint32_t i = 0; i < n; i++)
		step_tokens += c->items[i].n_tokens;
	uint64_t dt = dp_clock_ns() - t0;
	struct dp_kv_stats ks;
	dp_kv_stats(srv->kv, &ks);
	uint64_t stall = ks.restore_stall_ns - c->stall_seen;
	c->stall_seen = ks.restore_stall_ns;
	c->st.stall_ns += stall;
	c->st.compute_ns += dt > stall ? dt - stall : 0;
	c->step_ns_avg = c->st.steps ? 0.9 * c->step_ns_avg + 0.1 * (double)dt : (double)dt;
	if (step_tokens && c->n_layers && dt > stall) {
		double tl = (double)(dt - stall) / ((double)step_tokens * c->n_layers);
		c->token_layer_ns = c->token_layer_ns > 0 ? 0.9 * c->token_layer_ns + 0.1 * tl : tl;
	}
	/* the rate restore reads get: bytes over the time they were in flight
	 * (not over restore spans, which include the steps they wait for),
	 * recently: over each stretch of at least RATE_SPAN_NS of it */
	uint64_t io_ns = ks.restore_io_ns - c->io_seen[0], io_b = ks.restore_io_bytes - c->io_seen[1];
	if (io_ns >= RATE_SPAN_NS && io_b) {
		double rate = (double)io_b / (double)io_ns;
		if (c->io_bytes_per_ns > 0) { /* and how far from it a stretch's rate goes */
			double dev = fabs(rate - c->io_bytes_per_ns) / c->io_bytes_per_ns;
			c->io_rate_dev = 0.7 * c->io_rate_dev + 0.3 * dev;
		}
		c->io_bytes_per_ns = c->io_bytes_per_ns > 0 ? 0.7 * c->io_bytes_per_ns + 0.3 * rate : rate;
		c->io_seen[0] = ks.restore_io_ns;
		c->io_seen[1] = ks.restore_io_bytes;
	}
	if (ks.restore_firsts > c->firsts_seen[1]) {
		double f = (double)(ks.restore_first_ns - c->firsts_seen[0]) /
			   (double)(ks.restore_firsts - c->firsts_seen[1]);
		c->first_ns = c->first_ns > 0 ? 0.8 * c->first_ns + 0.2 * f : f;
		c->firsts_seen[0] = ks.restore_first_ns;
		c->firsts_seen[1] = ks.restore_firsts;
	}
	restore_window(c);
	/* each wait where it happened (layer in the event's args) */
	struct dp_kv_stall sp[DP_KV_STALL_SPANS];
	size_t n_sp = dp_kv_take_stalls(srv->kv, sp, DP_KV_STALL_SPANS);
	for (size_t i = 0; i < n_sp; i++)
		trace_io(trace_add(c, "stall", 0, sp[i].t0, sp[i].t1, sp[i].layer,
				   (uint32_t)(sp[i].by_class[DP_RSCHED_RESTORE] >> 10)),
			 sp[i].by_class);
	/* why a step waited: the bytes in flight as it began (restore pages,
	 * Engram rows, expert reads, writeback writes), and the loading
	 * sessions it left out (admission); an instant, not a span */
	bool io = c->step_deferred;
	for (int k = 0; k < DP_RSCHED_CLASS_MAX; k++)
		io |= c->step_io[k] != 0;
	if (io)
		trace_io(trace_add(c, "io", 1, t0, t0, (uint32_t)(c->step_io[DP_RSCHED_RESTORE] >> 10),
				   c->step_deferred),
			 c->step_io);
	c->st.steps++;
	c->st.step_ns_total += dt;
	c->st.last_step_tokens = step_tokens;
	double rate = dt ? step_tokens * 1e9 / (double)dt : 0;
	c->st.tok_s = c->st.steps == 1 ? rate : 0.9 * c->st.tok_s + 0.1 * rate;
	trace_add(c, "step", 0, t0, t0 + dt, step_tokens, n);
}

/* One forward step: form the batch, run it, emit what it produced. */
/* Shared tier: a turn longer than lease_ms keeps its session (another host
 * would otherwise take it over and this turn would be fenced at its end).
 * The cluster thread renews the leases (daemon/cluster.h); compute only
 * says, after each step, which sessions are still running — no round trip
 * here. A lease found lost is left to the fence (the turn ends in an error
 * at its commit). */
static void renew_leases(struct compute *c)
{
	struct dp_server *srv = c->srv;
	if (!srv->tier)
		return;
	const char *stack[64], **ids = stack;
	if (c->n_active > DP_ARRAY_SIZE(stack) && !(ids = malloc(c->n_active * sizeof(*ids))))
		return; /* without memory: as though idle (released after lease_idle_ms) */
	size_t n = 0;
	for (struct req *r = c->active; r; r = r->next)
		if (r->sess && !r->done && !dp_kv_session_is_unit(r->sess))
			ids[n++] = dp_kv_session_id(r->sess);
	dp_shared_renew(srv, ids, n);
	if (ids != stack)
		free(ids);
}

/* A hold ends (a step runs, or nothing waits any more): its span. */
static void hold_end(struct compute *c, uint64_t t)
{
	if (!c->hold_t0)
		return;
	c->st.hold_ns += t - c->hold_t0;
	trace_add(c, "hold", 0, c->hold_t0, t, c->n_held,
		  (uint32_t)(dp_kv_restore_inflight(c->srv->kv) >> 10));
	c->hold_t0 = 0;
}

static int step(struct compute *c)
{
	uint64_t t0 = dp_clock_ns();
	dp_kv_io_inflight(c->srv->kv, c->step_io);
	uint32_t n = form_batch(c);
	if (c->holding && !c->hold_t0) {
		c->hold_t0 = t0;
		c->st.holds++;
	}
	if (!c->holding)
		hold_end(c, t0);
	if (n == 0)
		return 0;
	int ret = run_batch(c, n);
	if (ret < 0)
		return ret;
	for (uint32_t i = 0; i < n; i++)
		emit_item(c, i);
	account_step(c, t0, n);
	renew_leases(c);
	return 0;
}

/* ---- other messages ----------------------------------------------------------- */

static void cancel_where(struct compute *c, const struct dp_origin *o, uint64_t request_id,
			 bool any_request)
{
	for (int pass = 0; pass < 2; pass++) {
		for (struct req **pp = pass ? &c->waiting : &c->active; *pp;) {
			struct req *r = *pp;
			bool hit = r->msg->from.conn == o->conn && r->msg->from.gen == o->gen &&
				   (any_request || r->msg->request_id == request_id);
			if (hit && pass == 0) {
				r->cancelled = true;
			} else if (hit && pass == 1) {
				/* never admitted: nothing to journal */
				*pp = r->next;
				c->n_waiting--;
				if (!any_request) {
					struct dp_event ev = { .kind = DP_EV_TOKENS, .to = r->msg->from,
							       .request_id = r->msg->request_id,
							       .finish = DUALPATH__V1__FINISH_REASON__FINISH_CANCELLED };
					send_event(c, &ev);
				}
				c->st.requests_cancelled++;
				req_free(c, r);
				continue;
			}
			pp = &r->next;
		}
	}
	c->waiting_tail = &c->waiting;
	while (*c->waiting_tail)
		c->waiting_tail = &(*c->waiting_tail)->next;
}

/*
 * Eviction (and CloseSession with persist) is an asynchronous writeback
 * (kvcache.h, dp_kv_session_evict_start): the compute thread plans it and
 * goes on stepping every other session while the io thread writes it at the
 * lowest priority; the reply goes out from evicts_poll once the state is
 * durable. It used to be dp_kv_session_demote here, which wrote, fsynced and
 * journaled on this thread: 8-150 ms in which no session stepped.
 */
#define EVICT_TRIES 3u

static void evict_fail(struct compute *c, const struct dp_msg *m, int ret)
{
	send_error(c, m, ret == -ENOSPC ? DUALPATH__V1__CODE__RESOURCE_EXHAUSTED
			 : ret == -EBUSY ? DUALPATH__V1__CODE__FAILED_PRECONDITION
					 : DUALPATH__V1__CODE__INTERNAL,
		   "cannot persist session %s: %s", m->session,
		   ret == -EBUSY ? "it was used again before its state was written" : strerror(-ret));
}

/* A hand-off (EvictSession with release), parked or dropped here: let its
 * lease go now. Every acknowledged turn's manifest is on the shared tier
 * already (dp_shared_commit waits for it before the turn is acknowledged),
 * so once the lease is released another host may take the session at once.
 * A lease not held here (let go idle, lost, never taken) is nothing to
 * release: acknowledged too. */
static void handoff_finish(struct compute *c, const struct dp_msg *m)
{
	int ret = dp_cluster_release(c->srv->cluster, m->session);
	if (ret < 0 && ret != -ENOENT) {
		send_error(c, m, DUALPATH__V1__CODE__UNAVAILABLE,
			   "session %s is parked, but its lease could not be released on the shared "
			   "tier (%s): it is no longer renewed and expires within lease_ms (%u ms)",
			   m->session, strerror(-ret), c->srv->cfg.lease_ms);
		return;
	}
	send_ack(c, m);
}

/* Answer the evictions whose state is durable (or failed); restart one whose
 * writeback finished with an older state. Cheap when none is pending. */
static void evicts_poll(struct compute *c)
{
	struct dp_kv *kv = c->srv->kv;
	if (!c->evicts)
		return;
	/* finished writebacks wait for a journal sync to be installed */
	int ret = dp_kv_flush(kv);
	if (ret < 0)
		log_warning("journal sync of finished writebacks failed: %s", strerror(-ret));
	for (struct evict **pp = &c->evicts; *pp;) {
		struct evict *e = *pp;
		struct dp_kv_session *s;
		/* a failed sync fails what waits (it would wait for ever, and
		 * shutdown waits for the evictions) */
		int r = ret < 0 ? ret
			: dp_kv_session_find(kv, e->msg->session, &s) < 0 ? -ENOENT
			: dp_kv_session_evict_done(kv, s, e->pos);
		if (r == -EAGAIN && ret >= 0 && ++e->tries < EVICT_TRIES) {
			r = dp_kv_session_evict_start(kv, s, &e->pos);
			r = r < 0 ? r : 1;
		}
		if (r == 1) {
			pp = &e->next;
			continue;
		}
		/* the trace shows it on the io lane: the position written and
		 * the steps that ran meanwhile (0 when this thread wrote it) */
		trace_add(c, "evict", 1, e->t0, dp_clock_ns(), (uint32_t)e->pos,
			  (uint32_t)(c->st.steps - e->steps0));
		if (r == 0 && e->msg->release)
			handoff_finish(c, e->msg);
		else if (r == 0)
			send_ack(c, e->msg);
		else if (r == -ENOENT)
			send_error(c, e->msg, DUALPATH__V1__CODE__NOT_FOUND,
				   "session %s was dropped before its eviction was durable",
				   e->msg->session);
		else
			evict_fail(c, e->msg, r);
		*pp = e->next;
		free(e->msg->tokens);
		free(e->msg);
		free(e);
	}
}

/* Returns true when it keeps m (an eviction in flight). */
static bool session_op(struct compute *c, struct dp_msg *m)
{
	struct dp_server *srv = c->srv;
	struct dp_kv_session *s = own_session(c, m);
	if (!s && m->kind == DP_MSG_EVICT && m->release && m->admin &&
	    dp_cluster_holds(srv->cluster, m->session)) {
		/* gone here but still leased (a drop whose tombstone the worker
		 * has not written yet, or could not: it keeps the lease then) */
		handoff_finish(c, m);
		return false;
	}
	if (!s) {
		send_error(c, m, DUALPATH__V1__CODE__NOT_FOUND, "no session %s", m->session);
		return false;
	}
	if (session_in_use(c, m->session)) {
		send_error(c, m, DUALPATH__V1__CODE__FAILED_PRECONDITION,
			   "session %s has a request running; cancel it first", m->session);
		return false;
	}
	bool release = m->kind == DP_MSG_EVICT && m->release;
	if (release && !srv->cluster) {
		send_error(c, m, DUALPATH__V1__CODE__FAILED_PRECONDITION,
			   "cannot hand session %s off: %s; no other host could take it", m->session,
			   srv->shared_configured ? "this dualpathd's shared tier is down"
						  : "this dualpathd has no shared tier ([kvcache] "
						    "shared_tier = rados)");
		return false;
	}
	bool drop = m->kind == DP_MSG_CLOSE_SESSION ? !m->persist : m->drop;
	if (drop) {
		/* a deleted session's objects on the shared tier go too; a hand-off
		 * that drops only forgets it here (the next host takes the tier's) */
		if (!release)
			dp_shared_drop(srv, m->session);
		int ret = dp_kv_session_drop(srv->kv, s);
		if (ret < 0) {
			send_error(c, m, DUALPATH__V1__CODE__INTERNAL, "cannot drop session %s: %s",
				   m->session, strerror(-ret));
			return false;
		}
		if (release)
			handoff_finish(c, m);
		else
			send_ack(c, m);
		return false;
	}
	struct evict *e = calloc(1, sizeof(*e));
	int ret = e ? dp_kv_session_evict_start(srv->kv, s, &e->pos) : -ENOMEM;
	if (ret < 0) {
		free(e);
		evict_fail(c, m, ret);
		return false;
	}
	e->msg = m;
	e->t0 = dp_clock_ns();
	e->steps0 = c->st.steps;
	struct evict **tail = &c->evicts; /* answered in the order they came */
	while (*tail)
		tail = &(*tail)->next;
	*tail = e;
	/* already on NVMe, or written here (no io engine): answered now */
	if (dp_kv_session_evict_done(srv->kv, s, e->pos) != 1)
		evicts_poll(c);
	return true;
}

/* A session operation that waited for a commit (commits_poll). */
static void on_session_op_now(struct compute *c, struct dp_msg *m)
{
	if (!session_op(c, m)) {
		free(m->tokens);
		free(m);
	}
}

/* Evict or close: one on a session whose turn is committing to the shared
 * tier waits for it (kept: true), like an eviction in flight. */
static bool on_session_op(struct compute *c, struct dp_msg *m)
{
	struct held_op *h;
	if (c->srv->tier && m->session[0] && committing(c, m->session) &&
	    (h = calloc(1, sizeof(*h)))) {
		h->msg = m;
		struct held_op **tail = &c->held_ops; /* in the order they came */
		while (*tail)
			tail = &(*tail)->next;
		*tail = h;
		return true;
	}
	return session_op(c, m);
}

static void fill_stats(struct compute *c, struct dp_compute_stats *st)
{
	struct dp_server *srv = c->srv;
	*st = c->st;
	st->active = c->n_active;
	st->waiting = c->n_waiting;
	st->sessions = (uint32_t)(dp_kv_session_count(srv->kv) - dp_kv_unit_count(srv->kv));
	st->draining = c->draining;
	dp_kv_stats(srv->kv, &st->kv);
	dp_shared_stats(srv, &st->shared);
	dp_shared_units_stats(srv, &st->units);
	memset(&st->io, 0, sizeof(st->io));
	snprintf(st->io_mode, sizeof(st->io_mode), "sync");
	if (srv->io) {
		struct dp_io_mode mode;
		dp_io_get_stats(srv->io, &st->io);
		if (dp_io_get_mode(srv->io, &mode) == 0)
			snprintf(st->io_mode, sizeof(st->io_mode), "io_uring%s%s%s%s",
				 mode.sqpoll ? "+sqpoll" : "", mode.iopoll ? "+iopoll" : "",
				 mode.defer_taskrun ? "+defer_taskrun" : "",
				 mode.fixed_bufs ? "+fixed_bufs" : "");
	}
	st->engram = srv->engram != NULL;
	if (srv->engram)
		dp_engram_store_get_stats(srv->engram, &st->engram_store);
	dp_v4_model_expert_stats(srv->model, &st->experts);
	st->csa_host = dp_v4_model_csa_host(srv->model);
	dp_v4_model_csa_stats(srv->model, &st->csa);
	dp_gpu_mem_stats(srv->gpu, &st->mem);
	snprintf(st->backend, sizeof(st->backend), "%s", dp_gpu_kind_name(dp_gpu_kind_of(srv->gpu)));
}

static void on_stats(struct compute *c, struct dp_msg *m)
{
	struct dp_compute_stats *st = malloc(sizeof(*st));
	if (!st) {
		send_error(c, m, DUALPATH__V1__CODE__RESOURCE_EXHAUSTED, "out of memory");
		return;
	}
	fill_stats(c, st);
	struct dp_event ev = { .kind = DP_EV_STATS, .to = m->from, .request_id = m->request_id,
			       .payload = st };
	send_event(c, &ev);
}

static void on_sessions(struct compute *c, struct dp_msg *m)
{
	struct dp_kv *kv = c->srv->kv;
	size_t n = dp_kv_session_count(kv);
	struct dp_session_list *l = malloc(sizeof(*l) + n * sizeof(l->rows[0]));
	if (!l) {
		send_error(c, m, DUALPATH__V1__CODE__RESOURCE_EXHAUSTED, "out of memory");
		return;
	}
	l->n = 0;
	for (size_t i = 0; i < n; i++) {
		struct dp_kv_session *s;
		dp_kv_session_at(kv, i, &s);
		if (dp_kv_session_is_unit(s) != m->list_units || !may_use(m, s) ||
		    (m->list_units && !m->admin))
			continue; /* others' sessions are not listed, units to admins only */
		struct dp_session_row *row = &l->rows[l->n++];
		snprintf(row->id, sizeof(row->id), "%s", dp_kv_session_id(s));
		row->tokens = dp_kv_session_len(s);
		row->bytes = dp_kv_session_bytes(s);
		row->idle_ms = dp_kv_session_idle_ns(kv, s) / 1000000;
		row->tier = dp_kv_session_tier(s);
		row->busy = dp_kv_session_busy(s);
		uint32_t owner = dp_kv_session_owner(s);
		row->owner = owner == DP_KV_OWNER_NONE ? -1 : (int64_t)owner;
		row->lost = dp_kv_session_lost(kv, row->id);
	}
	struct dp_event ev = { .kind = DP_EV_SESSIONS, .to = m->from, .request_id = m->request_id,
			       .payload = l };
	send_event(c, &ev);
}

static void on_trace(struct compute *c, struct dp_msg *m)
{
	uint32_t n = c->trace_n;
	if (m->trace_max_events && m->trace_max_events < n)
		n = m->trace_max_events;
	struct dp_trace_dump *d = malloc(sizeof(*d) + n * sizeof(d->ev[0]));
	if (!d) {
		send_error(c, m, DUALPATH__V1__CODE__RESOURCE_EXHAUSTED, "out of memory");
		return;
	}
	d->n = n;
	for (uint32_t i = 0; i < n; i++)
		d->ev[i] = c->trace[(c->trace_head + TRACE_N - n + i) % TRACE_N];
	struct dp_event ev = { .kind = DP_EV_TRACE, .to = m->from, .request_id = m->request_id,
			       .payload = d };
	send_event(c, &ev);
}

static void start_drain(struct compute *c, uint32_t grace_ms)
{
	if (!c->draining) {
		c->draining = true;
		atomic_store(&c->srv->state, DP_STATE_DRAINING);
		c->drain_deadline = dp_clock_ns() + (uint64_t)(grace_ms ? grace_ms : c->srv->cfg.drain_grace_ms) * 1000000u;
		log_notice("draining: %u running, %u waiting; cancelling what still runs in %u ms",
			   c->n_active, c->n_waiting, grace_ms ? grace_ms : c->srv->cfg.drain_grace_ms);
		/* waiting requests never start */
		while (c->waiting) {
			struct req *r = c->waiting;
			c->waiting = r->next;
			send_error(c, r->msg, DUALPATH__V1__CODE__UNAVAILABLE,
				   "the daemon is draining; this request was not started");
			req_free(c, r);
		}
		c->waiting_tail = &c->waiting;
		c->n_waiting = 0;
	}
}

static void handle(struct compute *c, struct dp_msg *m)
{
	struct dp_server *srv = c->srv;
	switch (m->kind) {
	case DP_MSG_GENERATE:
		m->t_recv_ns = m->t_recv_ns ? m->t_recv_ns : dp_clock_ns();
		on_generate(c, m);
		return; /* owns m now */
	case DP_MSG_CANCEL:
		cancel_where(c, &m->from, m->cancel_target, false);
		send_ack(c, m);
		break;
	case DP_MSG_CONN_CLOSED:
		cancel_where(c, &m->from, 0, true);
		if (m->from.conn < srv->cfg.max_connections)
			if (c->sessions_by_conn[m->from.conn].gen == m->from.gen)
				c->sessions_by_conn[m->from.conn].n = 0;
		break;
	case DP_MSG_CLOSE_SESSION:
	case DP_MSG_EVICT:
		if (on_session_op(c, m))
			return; /* answered when its writes are durable */
		break;
	case DP_MSG_STATS:
		on_stats(c, m);
		break;
	case DP_MSG_SESSIONS:
		on_sessions(c, m);
		break;
	case DP_MSG_TRACE:
		on_trace(c, m);
		break;
	case DP_MSG_DRAIN:
		start_drain(c, m->grace_ms);
		send_ack(c, m);
		break;
	case DP_MSG_SHUTDOWN:
		c->shutdown = true;
		start_drain(c, m->grace_ms);
		send_ack(c, m);
		break;
	default:
		break;
	}
	free(m->tokens);
	free(m);
}

/* Shutdown: every session's state to NVMe, every turn durable. */
static void persist_all(struct compute *c)
{
	struct dp_kv *kv = c->srv->kv;
	int ret = dp_kv_commit(kv);
	if (ret < 0)
		log_err("final journal commit failed: %s", strerror(-ret));
	size_t n = dp_kv_session_count(kv), ok = 0;
	for (size_t i = 0; i < n; i++) {
		struct dp_kv_session *s;
		dp_kv_session_at(kv, i, &s);
		if ((ret = dp_kv_session_persist(kv, s)) < 0)
			log_warning("session %s not persisted (%s): it will be recomputed from its "
				    "history after the restart", dp_kv_session_id(s), strerror(-ret));
		else
			ok++;
	}
	if ((ret = dp_kv_compact(kv)) < 0)
		log_warning("journal compaction at shutdown failed: %s", strerror(-ret));
	log_notice("persisted %zu of %zu sessions", ok, n);
}

static bool ring_ready(void *arg)
{
	struct dp_server *srv = arg;
	return !dp_ring_empty(srv->to_compute) || dp_shared_news(srv);
}

static void compute_free(struct compute *c)
{
	for (uint32_t i = 0; i < c->outbox.n; i++)
		free(c->outbox.ev[(c->outbox.head + i) % c->outbox.cap].payload);
	free(c->outbox.ev);
	for (uint32_t i = 0; i < c->http_out.n; i++)
		free(c->http_out.ev[(c->http_out.head + i) % c->http_out.cap].payload);
	free(c->http_out.ev);
	free(c->logits);
	free(c->items);
	free(c->item_req);
	free(c->cand);
	free(c->cand_req);
	free(c->picks);
	free(c->join_bytes);
	free(c->sessions_by_conn);
	free(c->trace);
}

void *dp_compute_main(void *arg)
{
	struct dp_server *srv = arg;
	struct compute c = { .srv = srv };
	c.outbox.ring = srv->to_front;
	c.outbox.wake = &srv->front_wake;
	c.http_out.ring = srv->to_http; /* NULL: no HTTP front */
	c.http_out.wake = &srv->http_wake;
	c.waiting_tail = &c.waiting;
	c.restore_mode = srv->cfg.restore;
	c.n_layers = (uint32_t)dp_v4_model_config(srv->model)->num_hidden_layers;
	uint32_t maxb = srv->cfg.max_batch;
	c.logits = malloc((size_t)maxb * srv->vocab * sizeof(float));
	c.items = calloc(maxb, sizeof(*c.items));
	c.item_req = calloc(maxb, sizeof(*c.item_req));
	c.cand = calloc(maxb, sizeof(*c.cand));
	c.cand_req = calloc(maxb, sizeof(*c.cand_req));
	c.picks = calloc(maxb, sizeof(*c.picks));
	c.join_bytes = calloc(JOIN_MAX * (size_t)(c.n_layers ? c.n_layers : 1), sizeof(*c.join_bytes));
	c.sessions_by_conn = calloc(srv->cfg.max_connections, sizeof(*c.sessions_by_conn));
	c.trace = calloc(TRACE_N, sizeof(*c.trace));
	if (!c.logits || !c.items || !c.item_req || !c.cand || !c.cand_req || !c.picks ||
	    !c.sessions_by_conn || !c.trace || !c.join_bytes) {
		log_err("compute thread: out of memory");
		atomic_store(&srv->fatal, -ENOMEM);
		compute_free(&c);
		atomic_store(&srv->compute_done, true);
		return NULL;
	}

	for (;;) {
		atomic_fetch_add_explicit(&srv->compute_beat, 1, memory_order_relaxed);
		struct dp_msg *msgs[64];
		uint32_t k;
		outbox_flush(&c);
		/* back-pressure: while the front is behind, take no new work */
		while (outbox_waiting(&c) <= DP_OUTBOX_SOFT &&
		       (k = dp_ring_dequeue_burst(srv->to_compute, msgs, 64)) > 0)
			for (uint32_t i = 0; i < k; i++)
				handle(&c, msgs[i]);
		if (c.draining && dp_clock_ns() > c.drain_deadline) {
			for (struct req *r = c.active; r; r = r->next)
				r->cancelled = true;
		}
		commits_poll(&c);
		admit(&c);
		dp_kv_pump(srv->kv);
		c.holding = false;
		if (c.active) {
			step(&c);
			retire(&c);
			outbox_flush(&c);
		} else {
			hold_end(&c, dp_clock_ns());
		}
		atomic_store_explicit(&srv->n_active, c.n_active, memory_order_relaxed);
		atomic_store_explicit(&srv->n_sessions,
				      (uint32_t)(dp_kv_session_count(srv->kv) - dp_kv_unit_count(srv->kv)),
				      memory_order_relaxed);
		evicts_poll(&c);
		if (c.shutdown && !c.active && !c.waiting && !c.evicts && !c.committing)
			break;
		maybe_compact(&c);
		if (!c.active) { /* what waits is held back (admit): idle too */
			/* idle: make finished writebacks durable; while some are
			 * still in flight, come back soon to advance them */
			int ret = dp_kv_flush(srv->kv);
			if (ret < 0)
				log_warning("journal sync of finished writebacks failed: %s",
					    strerror(-ret));
			bool wb = dp_kv_writeback_pending(srv->kv) || c.evicts;
			/* events still in the outbox: come back soon to send them */
			dp_waiter_wait(&srv->compute_wake, ring_ready, srv,
				       wb || outbox_waiting(&c) ? 1000000 : 100000000);
		} else if (c.holding) {
			/* a restore held back: until it would come in time, or a
			 * message brings something to run */
			dp_waiter_wait(&srv->compute_wake, ring_ready, srv, (int64_t)c.hold_wait_ns);
		}
	}
	persist_all(&c);
	/* the shared tier's worker ends what it was handed (a release, a
	 * tombstone) and stops here, before main stops the cluster thread its
	 * jobs call into */
	dp_shared_fini(srv);
	/* the last answers (Shutdown's Ack): the front reads until main stops
	 * it, which happens only after this thread is done */
	for (int i = 0; i < 1000 && !outbox_flush(&c); i++)
		usleep(1000);
	compute_free(&c);
	atomic_store(&srv->compute_done, true);
	if (srv->main_wake_fd >= 0) {
		unsigned char zero = 0;
		ssize_t n = write(srv->main_wake_fd, &zero, 1);
		(void)n;
	}
	return NULL;
}
