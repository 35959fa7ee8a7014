/* SPDX-License-Identifier: MIT */
/*
 * kvcache/rsched.h — the read scheduler: which queued read goes to the io
 * thread next, decided by when compute needs its bytes, not by when it was
 * asked for. Pure logic (no I/O, no clock): the caller submits what it pops
 * and reports completions.
 *
 * Time is counted in layer ticks: tick = step * n_layers + layer, the point
 * of the forward that needs a byte. A stream is one consumer's reads in the
 * order it needs them (a restore: its pages, layer after layer); each read
 * carries rel, the tick relative to the stream's base (a restore: the
 * page's layer), so its deadline is base + rel. Rebasing a stream (a
 * session left out of a step is needed one step later) moves all its
 * deadlines at once.
 *
 * Rules (tests/kvcache/test_rsched.c states each):
 *   - earliest deadline first across streams; ties go to the class that
 *     blocks compute (enum order), then to the older stream, then FIFO;
 *     within a stream, FIFO (rel never decreases within a stream).
 *   - a byte cap on what is issued and not yet done: a read that would
 *     exceed it waits, unless nothing is in flight (progress) or its
 *     deadline is at or before `need`, the tick compute is blocked at
 *     (a gate waiting for its layer must not wait for the cap).
 *   - writeback reads and writes never starve: a DP_RSCHED_WRITEBACK item's
 *     deadline is the tick it was pushed at plus wb_delay, so it goes
 *     before any item needed later than that, however many keep coming.
 *   - a class may have a byte cap of its own (dp_rsched_set_class_cap):
 *     an item that would take its class's issued bytes past it waits
 *     (unless its class has nothing in flight, or its deadline is at or
 *     before `need`), and the items of other classes go meanwhile, in
 *     deadline order. Writeback has one: few of its bytes are ever ahead
 *     of a read that comes later and is needed sooner.
 *   - Engram rows and expert reads are needed by the step at hand: their
 *     rel is the absolute tick of the layer that reads them (their streams
 *     have no base to move).
 *
 * One thread (the compute thread, which owns the KV cache) calls all of it.
 * Errors are negative errno values.
 */
#ifndef DP_KVCACHE_RSCHED_H
#define DP_KVCACHE_RSCHED_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum dp_rsched_class {
	DP_RSCHED_RESTORE,   /* a parked session's state, layer by layer */
	DP_RSCHED_ENGRAM,    /* Engram rows of the step's tokens */
	DP_RSCHED_EXPERT,    /* NVMe-paged routed experts */
	DP_RSCHED_WRITEBACK, /* demotions: nobody waits, bounded delay */
	DP_RSCHED_CLASS_MAX,
};

struct dp_rsched;

/* cap_bytes: issued-not-done bytes at most (0: no cap); wb_delay: the
 * writeback class's deadline, in ticks after its push. 0, -EINVAL, -ENOMEM. */
int dp_rsched_new(uint64_t cap_bytes, uint64_t wb_delay, struct dp_rsched **ret);
void dp_rsched_free(struct dp_rsched *s); /* NULL ok */
int dp_rsched_set_cap(struct dp_rsched *s, uint64_t cap_bytes);
uint64_t dp_rsched_cap(const struct dp_rsched *s);
/* The class's own cap on its issued-not-done bytes (0: none, the default).
 * 0 or -EINVAL. */
int dp_rsched_set_class_cap(struct dp_rsched *s, enum dp_rsched_class klass, uint64_t cap_bytes);

/* The tick compute stands at (never goes back: an earlier value is ignored). */
void dp_rsched_advance(struct dp_rsched *s, uint64_t now);
uint64_t dp_rsched_now(const struct dp_rsched *s);

/* A stream of class klass whose deadlines count from base; ctx is the
 * caller's, handed back by pop. 0 and *ret_id, -EINVAL, -ENOMEM. */
int dp_rsched_stream_open(struct dp_rsched *s, enum dp_rsched_class klass, uint64_t base,
			  void *ctx, uint32_t *ret_id);
/* Drop what the stream still has queued (issued reads stay counted until
 * done). Returns the items dropped, or -EINVAL. */
int dp_rsched_stream_close(struct dp_rsched *s, uint32_t id);
/* A writeback stream a client waits for (an explicit eviction): what it
 * has queued and pushes from now on is due at once, not the class's delay
 * later. 0, or -EINVAL for another class or an unknown stream. */
int dp_rsched_stream_due_now(struct dp_rsched *s, uint32_t id);
/* Move the stream's deadlines: base becomes new_base. -EINVAL for any
 * class but DP_RSCHED_RESTORE (their deadlines are absolute) or an unknown
 * stream. */
int dp_rsched_stream_rebase(struct dp_rsched *s, uint32_t id, uint64_t new_base);
uint64_t dp_rsched_stream_base(const struct dp_rsched *s, uint32_t id);
/* Items the stream has queued (not popped). */
size_t dp_rsched_stream_queued(const struct dp_rsched *s, uint32_t id);
/* The deadline of the stream's next item: 0, or -ENOENT (none queued),
 * -EINVAL (unknown stream). */
int dp_rsched_stream_next(const struct dp_rsched *s, uint32_t id, uint64_t *ret_deadline);

/* Queue one read of `bytes` needed at base + rel (Engram, expert: at tick
 * rel; writeback: rel ignored).
 * 0, -EINVAL (unknown stream, bytes 0, rel below the stream's last),
 * -ENOMEM. */
int dp_rsched_push(struct dp_rsched *s, uint32_t id, uint64_t rel, uint32_t bytes, uint64_t tag);

struct dp_rsched_item {
	uint32_t stream;
	enum dp_rsched_class klass; /* its stream's */
	void *ctx;
	uint64_t tag;
	uint64_t deadline;
	uint32_t bytes;
};

/* The next read to issue: 0 and *ret (now counted as in flight), -ENOENT
 * (nothing queued) or -EAGAIN (the cap, or a class's, holds it back; see
 * need above). */
int dp_rsched_pop(struct dp_rsched *s, uint64_t need, struct dp_rsched_item *ret);
/* The read pop(need) would consider (class caps applied, the cap not):
 * 0 and *ret, nothing taken; -ENOENT when none, -EAGAIN when what is
 * queued waits for its class's cap. */
int dp_rsched_peek(const struct dp_rsched *s, uint64_t need, struct dp_rsched_item *ret);
/* An issued read of `bytes` of class klass finished. */
void dp_rsched_done(struct dp_rsched *s, enum dp_rsched_class klass, uint32_t bytes);
/* Bytes issued and not done: all classes, one class; bytes queued (not
 * issued) of one class. */
uint64_t dp_rsched_inflight(const struct dp_rsched *s);
uint64_t dp_rsched_inflight_class(const struct dp_rsched *s, enum dp_rsched_class klass);
uint64_t dp_rsched_queued_class(const struct dp_rsched *s, enum dp_rsched_class klass);

/*
 * Staggered admission by the measured I/O rate: which of the sessions whose
 * state is still arriving join this step, and which join a later one
 * rather than stall everyone. The step's items run layer by layer, within a
 * layer in order (the sessions whose state is in place first, then the
 * loading ones); the reads of the loading sessions that join come back
 * layer-major (earliest deadline first): layer l of every joiner before
 * layer l + 1 of any. So joiner j's layer l arrives once the joiners' bytes
 * of layers < l and those of layer l up to j's own are read, at the
 * measured rate after the measured latency, and is needed once compute has done l layers of the whole
 * step and, in layer l, the items ahead of j (compute per token and layer,
 * measured). Each joiner's bytes left by layer are layer_bytes or else its
 * bytes_left spread evenly over its last layers_left; the others' reads already issued
 * ahead of a joiner's (bytes_ahead: a session left out or held, another
 * part's) come before its and every later joiner's.
 *
 * Candidates are taken in order; each joins when, with it, every joiner's
 * every layer is predicted late by at most slack_ns: so one's compute covers
 * the next one's first layers, and those left out go on reading, ready a
 * step later. One already left out max_defer steps joins regardless (no
 * starvation). When nothing else runs, the first loading session joins
 * regardless too, unless lone_waits: then it joins only in time like the
 * others, and its caller holds the step back (runs nothing) until it would
 * be, or until its own bound has passed (it says so with deferred =
 * max_defer): the session's first token comes as early as either way (its
 * last layers' reads bound it), the compute waits outside a step, and what
 * arrives meanwhile runs at once instead of behind a step stalled on I/O.
 * Without a measured rate or compute, all join; with lone_waits and nothing
 * else running, none does (but one at its bound): the caller holds the step
 * until a state is all in.
 */
struct dp_rsched_join_in {
	double io_bytes_per_ns;	 /* measured restore read rate (<= 0: not yet) */
	double latency_ns;	 /* measured: a read's first bytes come this late */
	double io_margin;	 /* reads are predicted this fraction slower (>= 0:
				  * the rate's measured spread) */
	double token_layer_ns;	 /* compute per token and layer (<= 0: not yet) */
	double slack_ns;	 /* the lateness a joiner may be predicted */
	uint32_t layers;	 /* the model's */
	uint32_t settled_tokens; /* tokens of the step's items whose state is in */
	uint32_t max_defer;	 /* left out this many steps: joins regardless */
	bool lone_waits;	 /* with nothing else running, a late joiner waits too */
};

struct dp_rsched_joiner {
	uint64_t bytes_left;  /* its state's bytes not yet read */
	uint64_t bytes_ahead; /* others' reads issued before its own: read first */
	const uint64_t *layer_bytes; /* bytes_left by layer ([layers]); NULL: spread
				      * evenly over its last layers_left */
	uint32_t layers_left; /* its last layers_left layers are not all in */
	uint32_t tokens;      /* tokens it feeds in the step */
	uint32_t deferred;    /* steps it was already left out of */
};

/* Decide for the n loading candidates j[0..n), in order: ret_join[i] says
 * whether j[i] joins the step. Returns how many join, or -EINVAL. */
int dp_rsched_join(const struct dp_rsched_join_in *in, const struct dp_rsched_joiner *j,
		   uint32_t n, bool *ret_join);
/* The predicted worst lateness (ns, <= 0: all in time) of the joiners
 * j[i] with join[i] set, for traces and tests; 0 without a rate. */
double dp_rsched_join_wait_ns(const struct dp_rsched_join_in *in, const struct dp_rsched_joiner *j,
			      uint32_t n, const bool *join);

#endif /* DP_KVCACHE_RSCHED_H */
