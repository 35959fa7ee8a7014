/* SPDX-License-Identifier: MIT */
/*
 * Playing a trace: client threads, each with its own connection, each
 * driving its share of the sessions concurrently over that one connection
 * (the protocol multiplexes by request id). A session waits its idle time,
 * then its turn goes out as two pipelined requests, ListSessions (where the
 * state is now: device, DRAM, NVMe or none) and Generate (the turn's prompt
 * ids, greedy, ignore_eos, max_new_tokens = GEN); its chunks are timed as
 * they arrive: TTFT from the Generate's write to the first chunk with ids,
 * inter-token latency as the gaps between such chunks. With evict set, an
 * EvictSession follows each finished turn on the same connection, so the
 * daemon parks the state on NVMe before the session's next turn can arrive.
 *
 * With replay, no session exists on the daemon: each turn is a one-off
 * Generate (empty session id) whose prompt is the session's whole history
 * so far (every earlier prompt and generated id) plus the turn's prompt, so
 * the daemon recomputes everything, every turn: no reuse, measured from the
 * client side.
 */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "agentic.h"
#include "v4ctl/client.h"

enum sess_state { S_IDLE, S_RUNNING, S_DONE };

struct sess {
	uint32_t idx;
	char id[24];
	enum sess_state state;
	uint32_t turn; /* the turn running, or the next one */
	uint64_t due;  /* S_IDLE: when the next turn goes out */
	uint64_t rid_gen, rid_list;
	uint64_t rid_evict, t_evict; /* an EvictSession not answered yet, sent then */
	uint64_t t_last;
	uint32_t *ids; /* prompt buffer */
	uint32_t ids_cap;
	uint32_t *hist; /* replay: the history, prompts and generated ids */
	uint32_t hist_len, hist_cap;
};

struct shared {
	pthread_barrier_t barrier; /* the workers and the caller, around the snapshot */
	bool failed;               /* a worker failed during the warm-up (__atomic) */
};

struct worker {
	struct ag_play *p;
	struct shared *shared;
	unsigned idx;
	uint32_t limit;            /* this phase's turns end before this one */
	uint32_t evicts_out;       /* EvictSession requests not answered yet */
	uint64_t evict_ns, evicts; /* answered: total round trip, count */
	struct sess *ss;
	uint32_t n_ss, n_done;
	uint32_t *itl;
	size_t n_itl, cap_itl;
	uint64_t t_first_send, t_last_end, evict_errors;
	int err;
	char what[200];
};

static int itl_push(struct worker *w, uint64_t gap_ns)
{
	if (w->n_itl == w->cap_itl) {
		size_t n = w->cap_itl ? 2 * w->cap_itl : 4096;
		uint32_t *p = realloc(w->itl, n * sizeof(*p));
		if (!p)
			return -ENOMEM;
		w->itl = p;
		w->cap_itl = n;
	}
	uint64_t us = gap_ns / 1000;
	w->itl[w->n_itl++] = us > UINT32_MAX ? UINT32_MAX : (uint32_t)us;
	return 0;
}

static uint64_t fnv1a(uint64_t h, uint32_t v)
{
	for (int i = 0; i < 4; i++) {
		h ^= (v >> (8 * i)) & 0xff;
		h *= 0x100000001b3ull;
	}
	return h;
}

static int hist_push(struct sess *s, const uint32_t *ids, size_t n)
{
	if (s->hist_len + n > s->hist_cap) {
		size_t cap = s->hist_cap ? s->hist_cap : 4096;
		while (cap < s->hist_len + n)
			cap *= 2;
		uint32_t *p = realloc(s->hist, cap * sizeof(*p));
		if (!p)
			return -ENOMEM;
		s->hist = p;
		s->hist_cap = (uint32_t)cap;
	}
	memcpy(s->hist + s->hist_len, ids, n * sizeof(*ids));
	s->hist_len += (uint32_t)n;
	return 0;
}

/* The Generate of s's next turn; its record starts here. */
static int send_generate(struct worker *w, struct dp_client *c, struct sess *s, uint32_t *ids,
                         uint32_t n, char *session_id)
{
	const struct ag_turn *t = &w->p->tr->sessions[s->idx].turns[s->turn];
	int ret;
	Dualpath__V1__Request req = DUALPATH__V1__REQUEST__INIT;
	Dualpath__V1__Generate g = DUALPATH__V1__GENERATE__INIT;
	Dualpath__V1__TokenIds tk = DUALPATH__V1__TOKEN_IDS__INIT;
	Dualpath__V1__Sampling sp = DUALPATH__V1__SAMPLING__INIT;
	tk.n_ids = n;
	tk.ids = ids;
	sp.temperature = 0;
	sp.ignore_eos = true;
	g.session_id = session_id;
	g.prompt_case = DUALPATH__V1__GENERATE__PROMPT_TOKENS;
	g.tokens = &tk;
	g.max_new_tokens = t->gen;
	g.sampling = &sp;
	req.body_case = DUALPATH__V1__REQUEST__BODY_GENERATE;
	req.generate = &g;
	struct ag_turn_rec *rec = &w->p->out.recs[s->idx][s->turn];
	memset(rec, 0, sizeof(*rec));
	rec->tier = w->p->replay ? (s->turn ? AG_TIER_NONE : AG_TIER_NEW) : AG_TIER_NEW;
	rec->digest = 0xcbf29ce484222325ull;
	rec->t_send = dp_clock_ns();
	if ((ret = dp_client_send(c, &req)) < 0)
		return ret;
	s->rid_gen = req.request_id;
	if (!w->t_first_send)
		w->t_first_send = rec->t_send;
	s->state = S_RUNNING;
	s->t_last = 0;
	return 0;
}

/* ListSessions then Generate for s's next turn, back to back (replay: the
 * Generate alone, one-off, with the whole history). */
static int send_turn(struct worker *w, struct dp_client *c, struct sess *s)
{
	const struct ag_trace *tr = w->p->tr;
	const struct ag_turn *t = &tr->sessions[s->idx].turns[s->turn];
	int ret;

	if (t->append > s->ids_cap) {
		uint32_t *p = realloc(s->ids, (size_t)t->append * sizeof(*p));
		if (!p)
			return -ENOMEM;
		s->ids = p;
		s->ids_cap = t->append;
	}
	ag_turn_tokens(tr, s->idx, s->turn, s->ids, t->append);
	if (w->p->replay) {
		if ((ret = hist_push(s, s->ids, t->append)) < 0)
			return ret;
		static char one_off[] = ""; /* no session: state dropped at the end */
		return send_generate(w, c, s, s->hist, s->hist_len, one_off);
	}

	Dualpath__V1__Request lreq = DUALPATH__V1__REQUEST__INIT;
	Dualpath__V1__ListSessionsRequest ls = DUALPATH__V1__LIST_SESSIONS_REQUEST__INIT;
	lreq.body_case = DUALPATH__V1__REQUEST__BODY_LIST_SESSIONS;
	lreq.list_sessions = &ls;
	if ((ret = dp_client_send(c, &lreq)) < 0)
		return ret;
	s->rid_list = lreq.request_id;
	return send_generate(w, c, s, s->ids, t->append, s->id);
}

static int send_evict(struct dp_client *c, struct sess *s)
{
	Dualpath__V1__Request req = DUALPATH__V1__REQUEST__INIT;
	Dualpath__V1__EvictSession ev = DUALPATH__V1__EVICT_SESSION__INIT;
	ev.session_id = s->id;
	req.body_case = DUALPATH__V1__REQUEST__BODY_EVICT_SESSION;
	req.evict_session = &ev;
	/* the daemon answers once the state is durable on NVMe (the writes run
	 * on its io thread meanwhile); the session's next turn waits for that,
	 * so that it comes back from NVMe, which is what --evict measures */
	int ret = dp_client_send(c, &req);
	if (ret == 0) {
		s->rid_evict = req.request_id;
		s->t_evict = dp_clock_ns();
	}
	return ret;
}

static enum ag_tier tier_of(const char *t)
{
	if (!strcmp(t, "device"))
		return AG_TIER_DEVICE;
	if (!strcmp(t, "dram"))
		return AG_TIER_DRAM;
	if (!strcmp(t, "nvme"))
		return AG_TIER_NVME;
	return AG_TIER_NONE;
}

static int on_chunk(struct worker *w, struct dp_client *c, struct sess *s,
                    const Dualpath__V1__TokenChunk *k, uint64_t now)
{
	struct ag_turn_rec *rec = &w->p->out.recs[s->idx][s->turn];
	const struct ag_turn *t = &w->p->tr->sessions[s->idx].turns[s->turn];
	int ret;

	if (k->n_ids) {
		if (!rec->t_first)
			rec->t_first = now;
		else if ((ret = itl_push(w, now - s->t_last)) < 0)
			return ret;
		s->t_last = now;
		for (size_t i = 0; i < k->n_ids; i++)
			rec->digest = fnv1a(rec->digest, k->ids[i]);
		rec->generated += (uint32_t)k->n_ids;
		if (w->p->replay && (ret = hist_push(s, k->ids, k->n_ids)) < 0)
			return ret;
	}
	if (k->finish == DUALPATH__V1__FINISH_REASON__FINISH_NONE)
		return 0;
	rec->t_end = now;
	w->t_last_end = now;
	if (k->usage)
		rec->cached = k->usage->cached_tokens;
	if (k->finish != DUALPATH__V1__FINISH_REASON__FINISH_LENGTH || rec->generated != t->gen) {
		snprintf(w->what, sizeof(w->what),
		         "session %s turn %u ended with finish %d after %u of %u tokens", s->id,
		         s->turn, (int)k->finish, rec->generated, t->gen);
		return -EPROTO;
	}
	if (w->p->evict) {
		if ((ret = send_evict(c, s)) < 0)
			return ret;
		w->evicts_out++;
	}
	s->rid_gen = s->rid_list = 0;
	if (++s->turn == w->p->tr->sessions[s->idx].n_turns || s->turn >= w->limit) {
		s->state = S_DONE;
		w->n_done++;
	} else {
		s->state = S_IDLE;
		s->due = now + (uint64_t)((double)t[1].idle_ms * w->p->idle_scale * 1e6);
	}
	return 0;
}

static int on_response(struct worker *w, struct dp_client *c, Dualpath__V1__Response *r)
{
	uint64_t now = dp_clock_ns();
	for (uint32_t i = 0; i < w->n_ss; i++) {
		struct sess *s = &w->ss[i];
		if (!s->rid_evict || r->request_id != s->rid_evict)
			continue;
		/* an EvictSession's answer */
		w->evict_ns += now - s->t_evict;
		w->evicts++;
		w->evicts_out--;
		s->rid_evict = 0;
		if (r->body_case == DUALPATH__V1__RESPONSE__BODY_ERROR)
			w->evict_errors++;
		return 0;
	}
	for (uint32_t i = 0; i < w->n_ss; i++) {
		struct sess *s = &w->ss[i];
		if (s->state != S_RUNNING)
			continue;
		if (r->request_id == s->rid_list) {
			if (r->body_case != DUALPATH__V1__RESPONSE__BODY_SESSIONS)
				return 0; /* an Error: the tier stays unknown (new) */
			for (size_t k = 0; k < r->sessions->n_sessions; k++) {
				const Dualpath__V1__SessionInfo *si = r->sessions->sessions[k];
				if (strcmp(si->session_id, s->id))
					continue;
				w->p->out.recs[s->idx][s->turn].tier = (uint8_t)tier_of(si->tier);
				w->p->out.recs[s->idx][s->turn].bytes = si->bytes;
			}
			return 0;
		}
		if (r->request_id != s->rid_gen)
			continue;
		if (r->body_case == DUALPATH__V1__RESPONSE__BODY_TOKEN_CHUNK)
			return on_chunk(w, c, s, r->token_chunk, now);
		const char *msg = "";
		dp_client_last_error(c, &msg);
		snprintf(w->what, sizeof(w->what), "session %s turn %u: the daemon answered %s: %s",
		         s->id, s->turn,
		         r->body_case == DUALPATH__V1__RESPONSE__BODY_ERROR
		             ? dp_client_code_name(r->error->code)
		             : "something else",
		         r->body_case == DUALPATH__V1__RESPONSE__BODY_ERROR && r->error->message
		             ? r->error->message
		             : msg);
		return -EREMOTEIO;
	}
	return 0; /* nobody's: ignored */
}

/* Play every session up to turn `limit` (exclusive; or its last turn). */
static int play_phase(struct worker *w, struct dp_client *c, uint32_t limit)
{
	const struct ag_trace *tr = w->p->tr;
	uint64_t t0 = dp_clock_ns();
	int ret;

	w->limit = limit;
	w->n_done = 0;
	for (uint32_t i = 0; i < w->n_ss; i++) {
		struct sess *s = &w->ss[i];
		const struct ag_session *ts = &tr->sessions[s->idx];
		if (s->turn >= ts->n_turns || s->turn >= limit) {
			s->state = S_DONE;
			w->n_done++;
		} else if (s->turn > 0 && s->state != S_IDLE) {
			/* after the warm-up: the idle gap counts from now */
			s->state = S_IDLE;
			s->due = t0 + (uint64_t)((double)ts->turns[s->turn].idle_ms *
			                         w->p->idle_scale * 1e6);
		}
	}
	while (w->n_done < w->n_ss) {
		uint64_t now = dp_clock_ns(), next = UINT64_MAX;
		bool running = false;
		for (uint32_t i = 0; i < w->n_ss; i++) {
			struct sess *s = &w->ss[i];
			if (s->state == S_IDLE && s->due <= now && !s->rid_evict) {
				if ((ret = send_turn(w, c, s)) < 0) {
					snprintf(w->what, sizeof(w->what),
					         "send session %s turn %u", s->id, s->turn);
					return ret;
				}
			}
			if (s->state == S_IDLE && !s->rid_evict && s->due < next)
				next = s->due;
			running |= s->state == S_RUNNING || s->rid_evict;
		}
		int wait_ms = 600000; /* a turn that takes longer is a hang */
		if (next != UINT64_MAX) {
			uint64_t d = next > now ? next - now : 0;
			wait_ms = (int)((d + 999999) / 1000000);
		}
		if (!running) {
			struct timespec ts = {.tv_sec = (time_t)(wait_ms / 1000),
			                      .tv_nsec = (long)(wait_ms % 1000) * 1000000};
			nanosleep(&ts, NULL);
			continue;
		}
		Dualpath__V1__Response *r;
		ret = dp_client_recv(c, wait_ms, &r);
		if (ret == -ETIMEDOUT) {
			if (next == UINT64_MAX) {
				snprintf(w->what, sizeof(w->what), "no answer for 600 s");
				return ret;
			}
			continue;
		}
		if (ret < 0) {
			snprintf(w->what, sizeof(w->what), "receive");
			return ret;
		}
		ret = on_response(w, c, r);
		dp_proto_response_free(r);
		if (ret < 0) {
			if (!w->what[0])
				snprintf(w->what, sizeof(w->what), "handling a response");
			return ret;
		}
	}
	/* the evictions' answers: the daemon has parked every state when the
	 * phase ends */
	while (w->evicts_out > 0) {
		Dualpath__V1__Response *r;
		if ((ret = dp_client_recv(c, 600000, &r)) < 0) {
			snprintf(w->what, sizeof(w->what), "waiting for EvictSession answers");
			return ret;
		}
		ret = on_response(w, c, r);
		dp_proto_response_free(r);
		if (ret < 0)
			return ret;
	}
	return 0;
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	struct ag_play *p = w->p;
	struct dp_client *c = NULL;
	int ret;

	if ((ret = dp_client_connect(p->sock, 60000, &c)) < 0 ||
	    (ret = dp_client_hello(c, "agentic-driver")) < 0)
		snprintf(w->what, sizeof(w->what), "connect to %s", p->sock);
	if (p->warmup_turns) {
		if (ret == 0)
			ret = play_phase(w, c, p->warmup_turns);
		if (ret < 0)
			__atomic_store_n(&w->shared->failed, true, __ATOMIC_RELAXED);
		/* the barrier orders the failed flag and the caller's snapshot */
		pthread_barrier_wait(&w->shared->barrier); /* warm-up done */
		pthread_barrier_wait(&w->shared->barrier); /* snapshot taken */
		if (ret < 0 || __atomic_load_n(&w->shared->failed, __ATOMIC_RELAXED))
			goto out;
		w->t_first_send = w->t_last_end = 0;
		w->n_itl = 0; /* the warm-up's gaps do not count */
	}
	if (ret == 0)
		ret = play_phase(w, c, UINT32_MAX);
out:
	w->err = ret;
	dp_client_free(c);
	return NULL;
}

int ag_played_init(struct ag_played *o, const struct ag_trace *tr)
{
	*o = (struct ag_played){.t_start = UINT64_MAX};
	if (!(o->recs = calloc(tr->n_sessions, sizeof(*o->recs))))
		return -ENOMEM;
	for (uint32_t s = 0; s < tr->n_sessions; s++)
		if (!(o->recs[s] = calloc(tr->sessions[s].n_turns, sizeof(*o->recs[s]))))
			return -ENOMEM;
	return 0;
}

int ag_played_add(struct ag_played *o, uint64_t first_send, uint64_t last_end, const uint32_t *itl,
                  size_t n_itl)
{
	if (first_send && first_send < o->t_start)
		o->t_start = first_send;
	if (last_end > o->t_end)
		o->t_end = last_end;
	uint32_t *p = realloc(o->itl_us, (o->n_itl + n_itl + 1) * sizeof(*p));
	if (!p)
		return -ENOMEM;
	o->itl_us = p;
	if (n_itl)
		memcpy(p + o->n_itl, itl, n_itl * sizeof(*itl));
	o->n_itl += n_itl;
	return 0;
}

void ag_played_fini(struct ag_played *o, const struct ag_trace *tr)
{
	if (o->recs)
		for (uint32_t s = 0; s < tr->n_sessions; s++)
			free(o->recs[s]);
	free(o->recs);
	free(o->itl_us);
	*o = (struct ag_played){0};
}

void ag_play_fini(struct ag_play *p)
{
	ag_played_fini(&p->out, p->tr);
}

int ag_play_run(struct ag_play *p, char *err, size_t err_len)
{
	const struct ag_trace *tr = p->tr;
	unsigned nt = p->threads < tr->n_sessions ? p->threads : tr->n_sessions;
	struct worker *w = calloc(nt, sizeof(*w));
	pthread_t *th = calloc(nt, sizeof(*th));
	struct sess *all = calloc(tr->n_sessions, sizeof(*all));
	struct shared sh = {.failed = false};
	int ret = -ENOMEM;

	err[0] = '\0';
	if (!w || !th || !all || ag_played_init(&p->out, tr) < 0)
		goto out;
	/* sessions s, s + nt, s + 2 nt... to thread s; contiguous in all[] */
	uint64_t t0 = dp_clock_ns();
	uint32_t k = 0;
	for (unsigned i = 0; i < nt; i++) {
		w[i].p = p;
		w[i].shared = &sh;
		w[i].idx = i;
		w[i].ss = &all[k];
		for (uint32_t s = i; s < tr->n_sessions; s += nt, k++) {
			struct sess *ss = &all[k];
			ss->idx = s;
			snprintf(ss->id, sizeof(ss->id), "agent-%u", s);
			ss->due = t0 + (uint64_t)((double)tr->sessions[s].turns[0].idle_ms *
			                          p->idle_scale * 1e6);
			w[i].n_ss++;
		}
	}
	if (p->warmup_turns && (ret = -pthread_barrier_init(&sh.barrier, NULL, nt + 1)) < 0) {
		snprintf(err, err_len, "pthread_barrier_init: %s", strerror(-ret));
		goto out;
	}
	unsigned started = 0;
	for (; started < nt; started++)
		if ((ret = -pthread_create(&th[started], NULL, worker_main, &w[started])) < 0)
			break;
	int first_err = ret < 0 ? ret : 0;
	if (first_err) {
		snprintf(err, err_len, "cannot start client thread %u: %s", started,
		         strerror(-first_err));
		if (p->warmup_turns) { /* the barrier expects them all */
			fprintf(stderr, "agentic-driver: %s\n", err);
			abort();
		}
	}
	if (p->warmup_turns) {
		pthread_barrier_wait(&sh.barrier);
		if (!__atomic_load_n(&sh.failed, __ATOMIC_RELAXED) && p->at_warm)
			p->at_warm(p->warm_ctx);
		pthread_barrier_wait(&sh.barrier);
	}
	p->evict_errors = p->evict_ns = p->evicts = 0;
	for (unsigned i = 0; i < started; i++) {
		pthread_join(th[i], NULL);
		if (w[i].err && !first_err) {
			first_err = w[i].err;
			snprintf(err, err_len, "client %u: %s: %s", i, w[i].what,
			         strerror(-w[i].err));
		}
		p->evict_errors += w[i].evict_errors;
		p->evict_ns += w[i].evict_ns;
		p->evicts += w[i].evicts;
		if (!first_err && ag_played_add(&p->out, w[i].t_first_send, w[i].t_last_end,
		                                w[i].itl, w[i].n_itl) < 0)
			first_err = -ENOMEM;
	}
	ret = first_err;
	if (p->warmup_turns)
		pthread_barrier_destroy(&sh.barrier);
out:
	if (ret == -ENOMEM && !err[0])
		snprintf(err, err_len, "out of memory");
	for (unsigned i = 0; w && i < nt; i++)
		free(w[i].itl);
	for (uint32_t s = 0; all && s < tr->n_sessions; s++) {
		free(all[s].ids);
		free(all[s].hist);
	}
	free(all);
	free(th);
	free(w);
	return ret;
}
