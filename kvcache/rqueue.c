/* SPDX-License-Identifier: MIT */
/*
 * The restore queue: one read scheduler (rsched.h) for every NVMe restore's
 * page reads, earliest-needed first (a page of layer l of a session in step
 * S is needed at tick S * layers + l), at most a window of bytes
 * outstanding, topped up at each gate (restore.c) and once per step, after
 * admission (dp_kv_pump issues the step's first layer; dp_kv_restore_pump
 * the rest). So restores that begin together come back layer by layer
 * across the batch, not session after session: compute at layer l never
 * waits behind another session's pages of a later layer.
 *
 * The same queue orders the other parts' reads (dp_kv_read_queue: expert
 * reads and Engram rows, on the restore channel) and the writebacks' writes
 * (dp_kv_write_queue, writeback.c): those go on the LOW writeback channel,
 * at most RQ_WB_DEVICE_BYTES of them in the kernel, so a read the queue
 * pops after them reaches the kernel at once rather than behind them in a
 * channel's FIFO; the writeback class's own cap (RQ_WB_BYTES) bounds what
 * is issued ahead, and its deadline (RQ_WB_DELAY_STEPS after the push)
 * keeps it from starving. A writeback's sync follows its last write on the
 * same channel, with a barrier.
 */
#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "kvcache/rqueue-internal.h"

/* ABANDONED: its wait gave up while it was queued; dropped when popped,
 * never issued (its buffer is the caller's again) */
enum { RQ_READ_FREE, RQ_READ_QUEUED, RQ_READ_ISSUED, RQ_READ_FAILED, RQ_READ_ABANDONED };

static void rq_read_put(struct dp_kv_rq *q, uint32_t i)
{
	q->rd[i].state = RQ_READ_FREE;
	q->rd[i].next_free = q->free_rd;
	q->free_rd = i;
}

/* Before a first dp_kv_set_restore_window: 8 MiB, about a few layers of a
 * small batch at NVMe speed (the daemon sets it from the measured rate). */
#define RQ_WINDOW_DEFAULT (8ull << 20)
/* restore reads in the kernel at once (io.h, dp_io_chan_set_limit): enough
 * to keep an NVMe device busy, few enough that a layer's pages are not
 * served together with the next layers' */
#define RQ_DEVICE_BYTES (1ull << 20)
/* writeback items: at most this many steps late */
#define RQ_WB_DELAY_STEPS 4u
/* writeback writes in the kernel at once (on the LOW writeback channel,
 * dp_io_chan_set_limit): what a read needed now may share the device with.
 * Eight 64 KiB pages: enough to keep a device writing at full speed when
 * nothing else runs, little enough to cost a read ~0.3 ms at 1.6 GB/s */
#define RQ_WB_DEVICE_BYTES (RQ_DEVICE_BYTES / 2)
/* writeback bytes issued and not written at most, unless due: handed to
 * the writeback channel ahead of what the queue pops later (a read popped
 * later still reaches the kernel first: only the device is shared). Eight
 * of its in-kernel limits: an eviction of a few MiB goes in one turn of the
 * compute thread, whose next top-up may be a step away */
#define RQ_WB_BYTES (8 * RQ_WB_DEVICE_BYTES)

struct dp_kv_rq *dp_kv_rq_get(struct dp_kv *kv)
{
	if (kv->rq)
		return kv->rq;
	struct dp_kv_rq *q = calloc(1, sizeof(*q));
	if (!q)
		return NULL;
	q->layers = (uint32_t)dp_v4_model_config(kv->m)->num_hidden_layers;
	q->free_rd = UINT32_MAX;
	if (dp_rsched_new(kv->rq_window ? kv->rq_window : RQ_WINDOW_DEFAULT,
			  (uint64_t)RQ_WB_DELAY_STEPS * q->layers, &q->rs) < 0) {
		free(q);
		return NULL;
	}
	dp_rsched_set_class_cap(q->rs, DP_RSCHED_WRITEBACK, RQ_WB_BYTES);
	/* the device works on the earliest pages first: without a limit it
	 * takes queue_depth reads at once and finishes them together, so the
	 * first layer came in no sooner than the whole state */
	dp_io_chan_set_limit(kv->restore_chan, RQ_DEVICE_BYTES);
	if (kv->wb_chan)
		dp_io_chan_set_limit(kv->wb_chan, RQ_WB_DEVICE_BYTES);
	kv->rq = q;
	return q;
}

void dp_kv_restore_queue_free(struct dp_kv *kv)
{
	if (!kv || !kv->rq)
		return;
	dp_rsched_free(kv->rq->rs);
	free(kv->rq->fl.v);
	free(kv->rq->wfl.v);
	free(kv->rq->rd);
	free(kv->rq);
	kv->rq = NULL;
}

int dp_kv_set_restore_window(struct dp_kv *kv, uint64_t bytes)
{
	if (!kv)
		return -EINVAL;
	kv->rq_window = bytes;
	if (kv->rq)
		dp_rsched_set_cap(kv->rq->rs, bytes);
	return 0;
}

uint64_t dp_kv_restore_inflight(const struct dp_kv *kv)
{
	return kv && kv->rq ? dp_rsched_inflight_class(kv->rq->rs, DP_RSCHED_RESTORE) : 0;
}

void dp_kv_io_inflight(const struct dp_kv *kv, uint64_t ret[DP_RSCHED_CLASS_MAX])
{
	for (int k = 0; ret && k < DP_RSCHED_CLASS_MAX; k++)
		ret[k] = kv && kv->rq ? dp_rsched_inflight_class(kv->rq->rs, (enum dp_rsched_class)k)
				      : 0;
}

void dp_kv_io_queued(const struct dp_kv *kv, uint64_t ret[DP_RSCHED_CLASS_MAX])
{
	for (int k = 0; ret && k < DP_RSCHED_CLASS_MAX; k++)
		ret[k] = kv && kv->rq ? dp_rsched_queued_class(kv->rq->rs, (enum dp_rsched_class)k) : 0;
}

/* Room for one more flight, so that adding it cannot fail. */
static int rq_ring_reserve(struct rq_ring *r)
{
	if (r->n == r->cap) {
		size_t cap = r->cap ? 2 * r->cap : 256;
		struct rq_flight *v = malloc(cap * sizeof(*v));
		if (!v)
			return -ENOMEM;
		for (size_t k = 0; k < r->n; k++)
			v[k] = r->v[(r->head + k) % r->cap];
		free(r->v);
		r->v = v;
		r->cap = cap;
		r->head = 0;
	}
	return 0;
}

static int rq_ring_add(struct rq_ring *r, struct rq_flight f)
{
	if (rq_ring_reserve(r) < 0)
		return -ENOMEM;
	r->v[(r->head + r->n++) % r->cap] = f;
	return 0;
}

static int rq_flight_add(struct dp_kv_rq *q, uint64_t ticket, uint32_t bytes,
			 enum dp_rsched_class klass)
{
	return rq_ring_add(&q->fl, (struct rq_flight){ ticket, bytes, klass, NULL });
}

/* Every write of the job is issued: its sync (a barrier: it starts once
 * they are done, and the data is durable when it is), on the writeback
 * channel behind them, at once: it needs no other turn of the compute
 * thread. Without one, or after a failed write, the job is finished once
 * its pages are. */
static void wjob_sync(struct dp_kv *kv, struct dp_kv_wjob *j)
{
	struct dp_kv_rq *q = kv->rq;
	if (j->err || !j->sync) {
		j->finished = !j->left;
		return;
	}
	uint64_t t;
	int ret;
	while ((ret = dp_io_submit(kv->wb_chan, j->sync, 1, &t)) == -EAGAIN)
		dp_io_wait(kv->wb_chan, dp_io_completed(kv->wb_chan), -1); /* a full window */
	if (ret < 0 || rq_ring_add(&q->wfl, (struct rq_flight){ t, 0, DP_RSCHED_WRITEBACK, j }) < 0) {
		if (ret == 1) /* in flight but untracked: wait for it here */
			dp_io_wait(kv->wb_chan, t, -1);
		j->err = ret < 0 ? ret : -ENOMEM;
		j->finished = !j->left;
		return;
	}
	j->sync_sent = true;
}

/* A writeback page's two writes, or its sync, finished: their results into
 * its job. */
static void wjob_done(struct dp_kv *kv, const struct rq_flight *f)
{
	struct dp_kv_wjob *j = f->wj;
	int32_t res;
	if (!f->bytes) { /* the sync */
		if (dp_io_result(kv->wb_chan, f->ticket, &res) < 0)
			res = -EIO;
		if (res < 0 && !j->err)
			j->err = res;
		j->finished = true;
		return;
	}
	for (int k = 0; k < 2; k++) {
		if (dp_io_result(kv->wb_chan, f->ticket - 1 + (uint64_t)k, &res) < 0)
			res = -EIO;
		/* f->bytes: the header's and the data's (a page's zero tail is
		 * not written: dp_kv_slots_write_reqs) */
		uint32_t len = k ? f->bytes - DP_KV_HDR_BYTES : DP_KV_HDR_BYTES;
		if (res < 0 && !j->err)
			j->err = res;
		else if (res >= 0 && (uint32_t)res != len && !j->err)
			j->err = -EIO;
	}
	if (--j->left == 0 && !j->sync_sent)
		j->finished = true; /* no sync follows (a failed write, or none) */
}

static void rq_reap_ring(struct dp_kv *kv, struct rq_ring *r, struct dp_io_chan *c)
{
	uint64_t done = dp_io_completed(c);
	while (r->n && r->v[r->head].ticket < done) {
		struct rq_flight f = r->v[r->head];
		r->head = (r->head + 1) % r->cap;
		r->n--;
		if (f.bytes)
			dp_rsched_done(kv->rq->rs, f.klass, f.bytes);
		if (f.wj)
			wjob_done(kv, &f);
	}
	r->reaped = done;
}

/* Account the requests the io thread has finished (a writeback's results
 * are read here, in ticket order, before their slots can be reused: the
 * pump keeps each channel's unreaped tickets within its depth). */
void dp_kv_rq_reap(struct dp_kv *kv)
{
	rq_reap_ring(kv, &kv->rq->fl, kv->restore_chan);
	if (kv->wb_chan)
		rq_reap_ring(kv, &kv->rq->wfl, kv->wb_chan);
}

/* A restore that cannot go on: its queued pages go, its gates say -EBADMSG. */
void dp_kv_rq_fail(struct dp_kv *kv, struct dp_kv_restore *r)
{
	r->failed = true;
	if (r->queued) {
		dp_rsched_stream_close(kv->rq->rs, r->stream);
		r->queued = false;
	}
}

/* Another part's read whose turn has come: to the io thread, on the restore
 * channel (so the kernel sees the reads in deadline order too). */
static void rq_issue_read(struct dp_kv *kv, struct rq_read *rd, const struct dp_rsched_item *it)
{
	struct dp_kv_rq *q = kv->rq;
	uint64_t t;
	int ret = dp_io_submit(kv->restore_chan, &rd->req, 1, &t);
	if (ret == 1) {
		/* in flight; untracked (no memory) it leaves the window's
		 * count, and its wait still waits for it */
		if (rq_flight_add(q, t, it->bytes, it->klass) < 0)
			dp_rsched_done(q->rs, it->klass, it->bytes);
		rd->ticket = t;
		rd->state = RQ_READ_ISSUED;
		return;
	}
	dp_rsched_done(q->rs, it->klass, it->bytes);
	rd->state = RQ_READ_FAILED;
	rd->res = ret < 0 ? ret : -EIO;
}

/* A writeback that cannot go on: what it has queued is dropped, err says
 * why (its pages in flight still finish and are counted). */
static void wjob_fail(struct dp_kv *kv, struct dp_kv_wjob *j, int err)
{
	if (!j->err)
		j->err = err;
	if (j->queued) {
		int dropped = dp_rsched_stream_close(kv->rq->rs, j->stream);
		j->left -= dropped > 0 ? (size_t)dropped : 0;
		j->queued = false;
	}
	if (!j->left && !j->sync_sent)
		j->finished = true;
}

/* A writeback page whose turn has come: its header and data writes, on the
 * writeback channel (LOW: a read the queue pops later goes to the kernel
 * before them, and RQ_WB_DEVICE_BYTES of them at most are there). */
static void rq_issue_write(struct dp_kv *kv, const struct dp_rsched_item *it)
{
	struct dp_kv_rq *q = kv->rq;
	struct dp_kv_wjob *j = it->ctx;
	size_t i = (size_t)it->tag;
	assert(i == j->issued); /* a stream is popped in its own order */
	uint64_t t;
	int ret = dp_io_submit(kv->wb_chan, j->reqs + 2 * i, 2, &t);
	if (ret == 2) {
		/* room reserved: cannot fail */
		rq_ring_add(&q->wfl, (struct rq_flight){ t + 1, it->bytes, it->klass, j });
		if (++j->issued == j->n) { /* all of it out: the stream goes, the sync follows */
			dp_rsched_stream_close(q->rs, j->stream);
			j->queued = false;
			wjob_sync(kv, j);
		}
		return;
	}
	dp_rsched_done(q->rs, it->klass, it->bytes);
	if (ret == 1) /* cannot happen: the room was checked */
		dp_io_wait(kv->wb_chan, t, -1);
	j->left--;
	wjob_fail(kv, j, ret < 0 ? ret : -EIO);
}

/* Room on ch for n more requests without overwriting a result not yet
 * reaped. */
static bool rq_room(struct dp_kv *kv, struct rq_ring *r, struct dp_io_chan *ch, uint32_t n)
{
	if (dp_io_chan_next(ch) - r->reaped + n <= dp_io_chan_depth(ch))
		return true;
	dp_kv_rq_reap(kv);
	return dp_io_chan_next(ch) - r->reaped + n <= dp_io_chan_depth(ch);
}

/* Top the io thread up: every restore's pages (and the other parts' reads
 * and the writebacks' writes), earliest-needed first, while the window
 * takes them and none is needed after tick `horizon`; pages needed at or
 * before tick `need` (a gate is waiting for them) go past the window. With
 * writes_only, only while the next is a writeback's (dp_kv_write_pump). */
static void rq_pump_some(struct dp_kv *kv, uint64_t need, uint64_t horizon, bool writes_only)
{
	struct dp_kv_rq *q = kv->rq;
	if (!q)
		return;
	dp_kv_rq_reap(kv);
	for (;;) {
		/* the channel's window must take both requests of a page (and
		 * a writeback's sync), and no result not yet reaped may be
		 * overwritten (a writeback's are read at the reap); else the
		 * next gate or step pumps again */
		struct dp_rsched_item it;
		if (dp_rsched_peek(q->rs, need, &it) < 0 || it.deadline > horizon ||
		    (writes_only && it.klass != DP_RSCHED_WRITEBACK))
			return;
		bool write = it.klass == DP_RSCHED_WRITEBACK;
		if (write ? !rq_room(kv, &q->wfl, kv->wb_chan, 3) || rq_ring_reserve(&q->wfl) < 0
			  : !rq_room(kv, &q->fl, kv->restore_chan, 2) || rq_ring_reserve(&q->fl) < 0)
			return;
		if (dp_rsched_pop(q->rs, need, &it) < 0)
			return;
		if (write) {
			rq_issue_write(kv, &it);
			continue;
		}
		if (it.ctx == &q->xtag) {
			if (q->rd[it.tag].state == RQ_READ_ABANDONED) {
				dp_rsched_done(q->rs, it.klass, it.bytes);
				rq_read_put(q, (uint32_t)it.tag);
			} else {
				rq_issue_read(kv, &q->rd[it.tag], &it);
			}
			continue;
		}
		struct dp_kv_restore *r = it.ctx;
		size_t i = (size_t)it.tag;
		assert(r->next == 2 * i); /* a stream is popped in its own order */
		struct dp_io_req req[2];
		for (int k = 0; k < 2; k++)
			req[k] = (struct dp_io_req){
				.op = DP_IO_OP_READ,
				.file = kv->slots.io_file,
				.offset = (uint64_t)(DP_KV_HDR_BYTES +
						     r->s->snap[i].slot * (uint64_t)DP_KV_SLOT_BYTES +
						     (k ? DP_KV_HDR_BYTES : 0)),
				.addr = k ? r->host[i] : r->hdrs + i * DP_KV_HDR_BYTES,
				.len = k ? DP_KV_PAGE_BYTES : DP_KV_HDR_BYTES,
				/* the page's checksum on the io thread, off the gate */
				.flags = k ? DP_IO_F_HASH : 0,
			};
		uint64_t t;
		int ret = dp_io_submit(kv->restore_chan, req, 2, &t);
		if (ret == 1) { /* cannot happen: the room was checked */
			r->ticket[r->next++] = t;
			ret = -EAGAIN;
		}
		if (ret < 0 || rq_flight_add(q, t + 1, it.bytes, it.klass) < 0) {
			dp_rsched_done(q->rs, it.klass, it.bytes);
			if (ret == 2) /* in flight but untracked: drain() waits for it */
				r->ticket[r->next++] = t, r->ticket[r->next++] = t + 1;
			dp_kv_rq_fail(kv, r);
			continue;
		}
		r->ticket[r->next++] = t;
		r->ticket[r->next++] = t + 1;
	}
}

void dp_kv_rq_pump_until(struct dp_kv *kv, uint64_t need, uint64_t horizon)
{
	rq_pump_some(kv, need, horizon, false);
}

void dp_kv_rq_pump(struct dp_kv *kv, uint64_t need)
{
	dp_kv_rq_pump_until(kv, need, UINT64_MAX);
}

/* A step begins (dp_kv_pump): a restore left out of the last step is needed
 * in this one at the earliest, so its deadlines move up to it; then the
 * window is topped up for the step's first layers. */
void dp_kv_restore_step(struct dp_kv *kv)
{
	struct dp_kv_rq *q = kv->rq;
	if (!q)
		return;
	q->step++;
	uint64_t base = q->step * q->layers;
	for (size_t i = 0; i < kv->n; i++) {
		struct dp_kv_restore *r = kv->list[i]->restore;
		if (r && r->queued && r->gated_step + 1 != q->step &&
		    dp_rsched_stream_base(q->rs, r->stream) < base)
			dp_rsched_stream_rebase(q->rs, r->stream, base);
	}
	dp_rsched_advance(q->rs, base);
	/* only the step's first layer now: which loading sessions join the
	 * step is decided after this (dp_kv_restore_defer), and the pages of
	 * one left out must not go ahead of the joiners' later layers; the
	 * rest goes at dp_kv_restore_pump and at the gates */
	dp_kv_rq_pump_until(kv, base, base);
}

void dp_kv_restore_pump(struct dp_kv *kv)
{
	if (kv && kv->rq)
		dp_kv_rq_pump(kv, kv->rq->step * kv->rq->layers);
}

void dp_kv_restore_pump_step(struct dp_kv *kv)
{
	if (kv && kv->rq)
		dp_kv_rq_pump(kv, (kv->rq->step + 1) * kv->rq->layers - 1);
}


uint64_t dp_kv_rq_reads_ahead(const struct dp_kv *kv, uint64_t last, uint64_t done)
{
	const struct rq_ring *fl = &kv->rq->fl;
	uint64_t ahead = 0;
	for (size_t i = 0; i < fl->n; i++) {
		const struct rq_flight *f = &fl->v[(fl->head + i) % fl->cap];
		if (f->ticket > last)
			break;
		if (f->ticket >= done)
			ahead += f->bytes;
	}
	return ahead;
}

/* ---- other parts' reads in the restore queue's order --------------------------- */

int dp_kv_read_queue(struct dp_kv *kv, enum dp_rsched_class klass, uint32_t layer,
		     const struct dp_io_req *req, uint64_t *ret_id)
{
	if (!kv || !req || !ret_id || klass == DP_RSCHED_RESTORE ||
	    (unsigned)klass >= DP_RSCHED_CLASS_MAX || req->op != DP_IO_OP_READ || !req->len)
		return -EINVAL;
	if (!kv->restore_chan)
		return -ENOTSUP;
	struct dp_kv_rq *q = dp_kv_rq_get(kv);
	if (!q)
		return -ENOMEM;
	if (layer >= q->layers)
		return -EINVAL;
	/* needed by this step's forward (begun by dp_kv_pump) at its layer */
	uint64_t dl = q->step * q->layers + layer;
	/* a stream of its class that takes dl (empty, or its last no later);
	 * else a new one, or an empty one of another class reopened */
	uint32_t k = 0, empty = RQ_XSTREAMS;
	for (; k < q->n_xs; k++) {
		bool idle = !dp_rsched_stream_queued(q->rs, q->xs[k]);
		if (q->xs_klass[k] == klass && (idle || q->xs_last[k] <= dl))
			break;
		if (idle && empty == RQ_XSTREAMS)
			empty = k;
	}
	if (k == q->n_xs) {
		bool reuse = k == RQ_XSTREAMS;
		if (reuse) {
			if (empty == RQ_XSTREAMS)
				return -EBUSY; /* cannot happen: a class's deadlines go back once a layer */
			k = empty;
			dp_rsched_stream_close(q->rs, q->xs[k]); /* nothing queued: drops nothing */
		}
		/* reopening takes the id just closed: no allocation, no failure */
		int r = dp_rsched_stream_open(q->rs, klass, 0, &q->xtag, &q->xs[k]);
		if (r < 0)
			return r;
		q->xs_klass[k] = (uint8_t)klass;
		if (!reuse)
			q->n_xs++;
	}
	uint32_t i = q->free_rd;
	if (i == UINT32_MAX) {
		if (q->n_rd == UINT32_MAX >> 1)
			return -ENOMEM;
		uint32_t n = q->n_rd ? 2 * q->n_rd : 64;
		struct rq_read *rd = realloc(q->rd, n * sizeof(*rd));
		if (!rd)
			return -ENOMEM;
		for (uint32_t j = q->n_rd; j < n; j++)
			rd[j] = (struct rq_read){ .state = RQ_READ_FREE,
						  .next_free = j + 1 < n ? j + 1 : UINT32_MAX };
		q->rd = rd;
		q->free_rd = q->n_rd;
		q->n_rd = n;
		i = q->free_rd;
	}
	struct rq_read *rd = &q->rd[i];
	int r = dp_rsched_push(q->rs, q->xs[k], dl, req->len, i);
	if (r < 0)
		return r;
	q->xs_last[k] = dl;
	q->free_rd = rd->next_free;
	rd->req = *req;
	rd->deadline = dl;
	rd->state = RQ_READ_QUEUED;
	rd->gen++;
	*ret_id = (uint64_t)rd->gen << 32 | i;
	/* out now if the window has room and nothing is needed sooner */
	dp_kv_rq_pump(kv, q->step * q->layers);
	return 0;
}

int dp_kv_read_wait(struct dp_kv *kv, uint64_t id, int32_t *ret_res)
{
	struct dp_kv_rq *q = kv ? kv->rq : NULL;
	uint32_t i = (uint32_t)id;
	if (!q || !ret_res || i >= q->n_rd || q->rd[i].gen != (uint32_t)(id >> 32) ||
	    q->rd[i].state == RQ_READ_FREE || q->rd[i].state == RQ_READ_ABANDONED)
		return -EINVAL;
	struct rq_read *rd = &q->rd[i];
	/* its turn first: it and everything needed sooner go past the window */
	while (rd->state == RQ_READ_QUEUED) {
		dp_kv_rq_pump(kv, rd->deadline);
		if (rd->state != RQ_READ_QUEUED)
			break;
		if (!q->fl.n) { /* nothing in flight, nothing taken: cannot go on */
			rd->state = RQ_READ_ABANDONED;
			return -EIO;
		}
		dp_io_wait(kv->restore_chan, rq_ring_head(&q->fl)->ticket, -1);
		dp_kv_rq_reap(kv);
	}
	int ret = 0;
	if (rd->state == RQ_READ_ISSUED) {
		ret = dp_io_wait(kv->restore_chan, rd->ticket, -1);
		if (ret == 0)
			ret = dp_io_result(kv->restore_chan, rd->ticket, ret_res);
		dp_kv_rq_reap(kv);
		dp_kv_rq_pump(kv, q->step * q->layers); /* the window has room again */
	} else {
		*ret_res = rd->res;
	}
	rq_read_put(q, i);
	return ret;
}

/* ---- writebacks' writes in the restore queue's order ---------------------------- */

int dp_kv_write_queue(struct dp_kv *kv, struct dp_kv_wjob *j)
{
	if (!kv || !j || (j->n && !j->reqs))
		return -EINVAL;
	if (!kv->restore_chan || !kv->wb_chan)
		return -ENOTSUP;
	struct dp_kv_rq *q = dp_kv_rq_get(kv);
	if (!q)
		return -ENOMEM;
	j->issued = 0;
	j->left = j->n;
	j->err = 0;
	j->queued = false;
	j->sync_sent = false;
	j->finished = false;
	j->due_now = false;
	if (!j->n) {
		wjob_sync(kv, j);
		return 0;
	}
	int r = dp_rsched_stream_open(q->rs, DP_RSCHED_WRITEBACK, 0, j, &j->stream);
	if (r < 0)
		return r;
	for (size_t i = 0; i < j->n; i++)
		if ((r = dp_rsched_push(q->rs, j->stream, 0, j->reqs[2 * i].len + j->reqs[2 * i + 1].len,
					i)) < 0) {
			dp_rsched_stream_close(q->rs, j->stream);
			return r;
		}
	j->queued = true;
	return 0;
}

void dp_kv_write_expedite(struct dp_kv *kv, struct dp_kv_wjob *j)
{
	j->due_now = true;
	if (j->queued && kv->rq)
		dp_rsched_stream_due_now(kv->rq->rs, j->stream);
}

void dp_kv_write_pump(struct dp_kv *kv)
{
	if (kv && kv->rq)
		rq_pump_some(kv, kv->rq->step * kv->rq->layers, UINT64_MAX, true);
}

void dp_kv_write_wait(struct dp_kv *kv, struct dp_kv_wjob *j)
{
	struct dp_kv_rq *q = kv->rq;
	while (q && !j->finished) {
		/* its turn first: it and everything needed sooner go past the
		 * window and the class's cap */
		uint64_t dl;
		if (j->queued && dp_rsched_stream_next(q->rs, j->stream, &dl) == 0)
			dp_kv_rq_pump(kv, dl);
		dp_kv_rq_reap(kv);
		if (j->finished)
			break;
		if (q->wfl.n)
			dp_io_wait(kv->wb_chan, rq_ring_head(&q->wfl)->ticket, -1);
		else if (q->fl.n)
			dp_io_wait(kv->restore_chan, rq_ring_head(&q->fl)->ticket, -1);
		else /* nothing in flight, nothing taken: cannot go on */
			wjob_fail(kv, j, -EIO);
	}
}
