/* SPDX-License-Identifier: MIT */
/*
 * kvcache/rsched.c — the read scheduler (rsched.h): earliest deadline
 * first over a handful of streams, under a byte cap (and per-class caps).
 *
 * A pop scans the streams' heads: a batch holds tens of restoring sessions
 * at most, and a scan keeps rebasing a stream O(1), where a heap of items
 * would have to be rebuilt.
 */
#include "kvcache/rsched.h"

#include <errno.h>
#include <stdlib.h>

struct rs_item {
	uint64_t rel; /* writeback: the absolute deadline */
	uint64_t tag;
	uint32_t bytes;
};

struct rs_stream {
	bool used;
	uint8_t klass;
	uint64_t base;
	uint64_t age; /* open order: older streams win ties */
	bool due_now; /* writeback: someone waits (dp_rsched_stream_due_now) */
	void *ctx;
	struct rs_item *q;
	size_t head, n, cap; /* queued: q[head .. n) */
};

struct dp_rsched {
	uint64_t cap_bytes, wb_delay;
	uint64_t now, inflight, opened;
	uint64_t class_cap[DP_RSCHED_CLASS_MAX];      /* 0: none */
	uint64_t class_inflight[DP_RSCHED_CLASS_MAX]; /* issued, not done */
	uint64_t class_queued[DP_RSCHED_CLASS_MAX];   /* pushed, not issued */
	struct rs_stream *st;
	uint32_t n_st;
};

int dp_rsched_new(uint64_t cap_bytes, uint64_t wb_delay, struct dp_rsched **ret)
{
	if (!ret)
		return -EINVAL;
	struct dp_rsched *s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	s->cap_bytes = cap_bytes;
	s->wb_delay = wb_delay;
	*ret = s;
	return 0;
}

void dp_rsched_free(struct dp_rsched *s)
{
	if (!s)
		return;
	for (uint32_t i = 0; i < s->n_st; i++)
		free(s->st[i].q);
	free(s->st);
	free(s);
}

int dp_rsched_set_cap(struct dp_rsched *s, uint64_t cap_bytes)
{
	if (!s)
		return -EINVAL;
	s->cap_bytes = cap_bytes;
	return 0;
}

uint64_t dp_rsched_cap(const struct dp_rsched *s)
{
	return s ? s->cap_bytes : 0;
}

int dp_rsched_set_class_cap(struct dp_rsched *s, enum dp_rsched_class klass, uint64_t cap_bytes)
{
	if (!s || (unsigned)klass >= DP_RSCHED_CLASS_MAX)
		return -EINVAL;
	s->class_cap[klass] = cap_bytes;
	return 0;
}

void dp_rsched_advance(struct dp_rsched *s, uint64_t now)
{
	if (s && now > s->now)
		s->now = now;
}

uint64_t dp_rsched_now(const struct dp_rsched *s)
{
	return s ? s->now : 0;
}

/* Only a restore's deadlines count from its stream's base (it may be left
 * out of a step); the others' are absolute ticks. */
static bool absolute(uint8_t klass)
{
	return klass != DP_RSCHED_RESTORE;
}

static struct rs_stream *stream(const struct dp_rsched *s, uint32_t id)
{
	return s && id < s->n_st && s->st[id].used ? &s->st[id] : NULL;
}

int dp_rsched_stream_open(struct dp_rsched *s, enum dp_rsched_class klass, uint64_t base,
			  void *ctx, uint32_t *ret_id)
{
	if (!s || !ret_id || (unsigned)klass >= DP_RSCHED_CLASS_MAX)
		return -EINVAL;
	uint32_t id = 0;
	while (id < s->n_st && s->st[id].used)
		id++;
	if (id == s->n_st) {
		uint32_t n = s->n_st ? 2 * s->n_st : 8;
		struct rs_stream *st = realloc(s->st, n * sizeof(*st));
		if (!st)
			return -ENOMEM;
		for (uint32_t i = s->n_st; i < n; i++)
			st[i] = (struct rs_stream){ 0 };
		s->st = st;
		s->n_st = n;
	}
	struct rs_stream *t = &s->st[id];
	t->used = true;
	t->klass = (uint8_t)klass;
	t->base = base;
	t->age = s->opened++;
	t->ctx = ctx;
	t->due_now = false;
	t->head = t->n = 0;
	*ret_id = id;
	return 0;
}

int dp_rsched_stream_close(struct dp_rsched *s, uint32_t id)
{
	struct rs_stream *t = stream(s, id);
	if (!t)
		return -EINVAL;
	int dropped = (int)(t->n - t->head);
	for (size_t i = t->head; i < t->n; i++)
		s->class_queued[t->klass] -= t->q[i].bytes;
	t->used = false;
	t->head = t->n = 0;
	t->ctx = NULL;
	return dropped;
}

int dp_rsched_stream_rebase(struct dp_rsched *s, uint32_t id, uint64_t new_base)
{
	struct rs_stream *t = stream(s, id);
	if (!t || absolute(t->klass))
		return -EINVAL;
	t->base = new_base;
	return 0;
}

uint64_t dp_rsched_stream_base(const struct dp_rsched *s, uint32_t id)
{
	const struct rs_stream *t = stream(s, id);
	return t ? t->base : 0;
}

size_t dp_rsched_stream_queued(const struct dp_rsched *s, uint32_t id)
{
	const struct rs_stream *t = stream(s, id);
	return t ? t->n - t->head : 0;
}

static uint64_t head_deadline(const struct rs_stream *t);

int dp_rsched_stream_next(const struct dp_rsched *s, uint32_t id, uint64_t *ret_deadline)
{
	const struct rs_stream *t = stream(s, id);
	if (!t || !ret_deadline)
		return -EINVAL;
	if (t->head == t->n)
		return -ENOENT;
	*ret_deadline = head_deadline(t);
	return 0;
}

int dp_rsched_stream_due_now(struct dp_rsched *s, uint32_t id)
{
	struct rs_stream *t = stream(s, id);
	if (!t || t->klass != DP_RSCHED_WRITEBACK)
		return -EINVAL;
	t->due_now = true;
	for (size_t i = t->head; i < t->n; i++) /* stays ascending: all at most now */
		if (t->q[i].rel > s->now)
			t->q[i].rel = s->now;
	return 0;
}

int dp_rsched_push(struct dp_rsched *s, uint32_t id, uint64_t rel, uint32_t bytes, uint64_t tag)
{
	struct rs_stream *t = stream(s, id);
	if (!t || !bytes)
		return -EINVAL;
	if (t->klass == DP_RSCHED_WRITEBACK)
		rel = s->now + (t->due_now ? 0 : s->wb_delay);
	if (t->n > t->head && rel < t->q[t->n - 1].rel)
		return -EINVAL;
	if (t->head == t->n)
		t->head = t->n = 0; /* empty: reuse from the start */
	if (t->n == t->cap) {
		if (t->head) { /* slide the queued part down first */
			for (size_t i = t->head; i < t->n; i++)
				t->q[i - t->head] = t->q[i];
			t->n -= t->head;
			t->head = 0;
		}
		if (t->n == t->cap) {
			size_t c = t->cap ? 2 * t->cap : 64;
			struct rs_item *q = realloc(t->q, c * sizeof(*q));
			if (!q)
				return -ENOMEM;
			t->q = q;
			t->cap = c;
		}
	}
	t->q[t->n++] = (struct rs_item){ .rel = rel, .tag = tag, .bytes = bytes };
	s->class_queued[t->klass] += bytes;
	return 0;
}

static uint64_t head_deadline(const struct rs_stream *t)
{
	const struct rs_item *it = &t->q[t->head];
	return absolute(t->klass) ? it->rel : t->base + it->rel;
}

/* Whether the stream's head waits for its class's cap: then the other
 * classes go meanwhile (a class cap holds back its own class only). */
static bool class_held(const struct dp_rsched *s, const struct rs_stream *t, uint64_t dl,
		       uint64_t need)
{
	uint64_t cap = s->class_cap[t->klass], in = s->class_inflight[t->klass];
	return cap && in && in + t->q[t->head].bytes > cap && dl > need;
}

/* The stream whose head goes next, or NULL (*ret_held: some head waits for
 * its class's cap). */
static struct rs_stream *pick(const struct dp_rsched *s, uint64_t need, bool *ret_held)
{
	struct rs_stream *best = NULL;
	uint64_t best_dl = 0;
	*ret_held = false;
	for (uint32_t i = 0; i < s->n_st; i++) {
		struct rs_stream *t = &s->st[i];
		if (!t->used || t->head == t->n)
			continue;
		uint64_t dl = head_deadline(t);
		if (class_held(s, t, dl, need)) {
			*ret_held = true;
			continue;
		}
		if (!best || dl < best_dl ||
		    (dl == best_dl && (t->klass < best->klass ||
				       (t->klass == best->klass && t->age < best->age)))) {
			best = t;
			best_dl = dl;
		}
	}
	return best;
}

static struct dp_rsched_item item_of(const struct dp_rsched *s, const struct rs_stream *t)
{
	const struct rs_item *it = &t->q[t->head];
	return (struct dp_rsched_item){ .stream = (uint32_t)(t - s->st),
					.klass = (enum dp_rsched_class)t->klass, .ctx = t->ctx,
					.tag = it->tag, .deadline = head_deadline(t),
					.bytes = it->bytes };
}

int dp_rsched_peek(const struct dp_rsched *s, uint64_t need, struct dp_rsched_item *ret)
{
	if (!s || !ret)
		return -EINVAL;
	bool held;
	struct rs_stream *t = pick(s, need, &held);
	if (!t)
		return held ? -EAGAIN : -ENOENT;
	*ret = item_of(s, t);
	return 0;
}

int dp_rsched_pop(struct dp_rsched *s, uint64_t need, struct dp_rsched_item *ret)
{
	if (!s || !ret)
		return -EINVAL;
	bool held;
	struct rs_stream *t = pick(s, need, &held);
	if (!t)
		return held ? -EAGAIN : -ENOENT;
	struct dp_rsched_item it = item_of(s, t);
	if (s->cap_bytes && s->inflight && s->inflight + it.bytes > s->cap_bytes &&
	    it.deadline > need)
		return -EAGAIN;
	*ret = it;
	s->inflight += it.bytes;
	s->class_inflight[t->klass] += it.bytes;
	s->class_queued[t->klass] -= it.bytes;
	t->head++;
	return 0;
}

static uint64_t minus(uint64_t a, uint64_t b)
{
	return a > b ? a - b : 0;
}

void dp_rsched_done(struct dp_rsched *s, enum dp_rsched_class klass, uint32_t bytes)
{
	if (!s || (unsigned)klass >= DP_RSCHED_CLASS_MAX)
		return;
	s->inflight = minus(s->inflight, bytes);
	s->class_inflight[klass] = minus(s->class_inflight[klass], bytes);
}

uint64_t dp_rsched_inflight(const struct dp_rsched *s)
{
	return s ? s->inflight : 0;
}

uint64_t dp_rsched_inflight_class(const struct dp_rsched *s, enum dp_rsched_class klass)
{
	return s && (unsigned)klass < DP_RSCHED_CLASS_MAX ? s->class_inflight[klass] : 0;
}

uint64_t dp_rsched_queued_class(const struct dp_rsched *s, enum dp_rsched_class klass)
{
	return s && (unsigned)klass < DP_RSCHED_CLASS_MAX ? s->class_queued[klass] : 0;
}

static bool join_in_ok(const struct dp_rsched_join_in *in)
{
	return in && in->layers;
}

double dp_rsched_join_wait_ns(const struct dp_rsched_join_in *in, const struct dp_rsched_joiner *j,
			      uint32_t n, const bool *join)
{
	if (!join_in_ok(in) || (n && (!j || !join)) || in->io_bytes_per_ns <= 0 ||
	    in->token_layer_ns <= 0)
		return 0;
	double total = in->settled_tokens; /* tokens of one layer of the step */
	bool any = false;
	for (uint32_t i = 0; i < n; i++)
		if (join[i]) {
			total += j[i].tokens;
			any = true;
		}
	if (!any)
		return 0;
	double margin = in->io_margin > 0 ? in->io_margin : 0;
	double worst = -1e300, cum = 0; /* bytes of the joiners' layers < l */
	for (uint32_t l = 0; l < in->layers; l++) {
		double ahead = in->settled_tokens, layer = 0, first = 0;
		for (uint32_t i = 0; i < n; i++) {
			if (!join[i])
				continue;
			/* others' reads issued before a joiner's come before it
			 * and every joiner after it */
			if ((double)j[i].bytes_ahead > first)
				first = (double)j[i].bytes_ahead;
			uint32_t left = j[i].layers_left > in->layers ? in->layers : j[i].layers_left;
			double mine = j[i].layer_bytes ? (double)j[i].layer_bytes[l]
				      : left && l >= in->layers - left ? (double)j[i].bytes_left / left
									: 0;
			if (mine > 0) {
				layer += mine;
				double arrive = (in->latency_ns > 0 ? in->latency_ns : 0) +
						(first + cum + layer) / in->io_bytes_per_ns * (1 + margin);
				double need = in->token_layer_ns * ((double)l * total + ahead);
				if (arrive - need > worst)
					worst = arrive - need;
			}
			ahead += j[i].tokens;
		}
		cum += layer;
	}
	return worst == -1e300 ? 0 : worst;
}

int dp_rsched_join(const struct dp_rsched_join_in *in, const struct dp_rsched_joiner *j,
		   uint32_t n, bool *ret_join)
{
	if (!join_in_ok(in) || (n && (!j || !ret_join)))
		return -EINVAL;
	bool measured = in->io_bytes_per_ns > 0 && in->token_layer_ns > 0;
	int k = 0;
	for (uint32_t i = 0; i < n; i++)
		ret_join[i] = false;
	if (!measured && in->lone_waits && !in->settled_tokens) {
		/* nothing to predict with and nothing else to run: their states
		 * come whole first (those at their bound join) */
		for (uint32_t i = 0; i < n; i++)
			k += ret_join[i] = j[i].deferred >= in->max_defer;
		return k;
	}
	for (uint32_t i = 0; i < n; i++) {
		ret_join[i] = true;
		if (!measured || (!in->settled_tokens && k == 0 && !in->lone_waits) ||
		    j[i].deferred >= in->max_defer ||
		    dp_rsched_join_wait_ns(in, j, i + 1, ret_join) <= in->slack_ns)
			k++;
		else
			ret_join[i] = false;
	}
	return k;
}
