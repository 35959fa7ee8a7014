/* SPDX-License-Identifier: MIT */
/*
 * The restore queue's and the layer-by-layer restore's shared structures,
 * for restore.c (the restore: its gates) and rqueue.c (the queue that
 * issues its page reads, and every other read and writeback write, in the
 * order compute needs them). Nothing else includes it.
 */
#ifndef DP_KVCACHE_RQUEUE_INTERNAL_H
#define DP_KVCACHE_RQUEUE_INTERNAL_H

#include "kvcache/kvcache-internal.h"
#include "kvcache/rsched.h"

/* What is in flight on a channel: requests complete in ticket order, so a
 * FIFO of (last ticket, bytes). */
struct rq_flight {
	uint64_t ticket; /* the data ticket (its header's is one below) */
	uint32_t bytes;	 /* 0: a writeback's sync */
	enum dp_rsched_class klass;
	struct dp_kv_wjob *wj; /* a writeback's page or sync: its results go there */
};

struct rq_ring {
	struct rq_flight *v;
	size_t head, n, cap;
	uint64_t reaped; /* every ticket below it is accounted (rq_reap) */
};

static inline struct rq_flight *rq_ring_head(struct rq_ring *r)
{
	return &r->v[r->head];
}

/* The restore queue: every NVMe restore's page reads, in the order compute
 * needs them (and the other parts' reads, and the writebacks' writes). */
struct dp_kv_rq {
	struct dp_rsched *rs;
	uint64_t step;	  /* steps begun (dp_kv_restore_step) */
	uint32_t layers;
	struct rq_ring fl;  /* on the restore channel: reads */
	struct rq_ring wfl; /* on the writeback channel: writebacks' writes and syncs */
	/* other parts' reads in the same order (dp_kv_read_queue): a few
	 * streams of each class, since a part's deadlines may go back (a
	 * layer's misses after the next layer's read-ahead) and a stream's may
	 * not; a stream serves one class (its ties and its bytes in flight) */
#define RQ_XSTREAMS 8
	uint32_t xs[RQ_XSTREAMS];
	uint64_t xs_last[RQ_XSTREAMS];
	uint8_t xs_klass[RQ_XSTREAMS];
	uint8_t n_xs;
	struct rq_read {
		struct dp_io_req req;
		uint64_t ticket, deadline;
		uint32_t gen;
		uint8_t state; /* RQ_READ_* */
		int32_t res;   /* RQ_READ_FAILED: why */
		uint32_t next_free;
	} *rd;
	uint32_t n_rd, free_rd; /* free list through next_free; UINT32_MAX: none */
	char xtag;		/* the ctx of their items: tells them from restores */
};

struct dp_kv_restore {
	struct dp_kv *kv;
	struct dp_kv_session *s;
	struct dp_v4_seq *seq;
	bool from_nvme;
	size_t n;			 /* pages */
	struct dp_v4_page_ref *refs;	 /* the sequence's pages, layer order */
	void **host;			 /* where each page's data lands */
	void *bounce;			 /* when device memory is not host memory */
	uint8_t *hdrs;			 /* NVMe: n headers */
	struct dp_kv_slot_id *ids;
	struct dp_dram_src { uint32_t pool; } *dram; /* DRAM: source pool pages */
	uint64_t *ticket;		 /* per request (2 per page), valid below next */
	size_t next;			 /* requests submitted */
	uint32_t n_layers;
	uint32_t *layer_end;		 /* pages [layer_end[l-1], layer_end[l]) */
	uint8_t *layer_done;
	uint32_t layers_ready;
	uint32_t stream;	/* in the restore queue (NVMe) */
	bool queued;		/* stream open */
	uint64_t gated_step;	/* the step of its last gate call */
	bool first_in;		/* its first gate found its layer in */
	uint64_t begin_step;	/* the restore queue's step when it began */
	uint64_t t_issue;	/* its first layer's reads went out */
	bool failed;
	uint64_t t_start, bytes;
};

/* rqueue.c, for restore.c. The queue, made on first use (NULL: no memory). */
struct dp_kv_rq *dp_kv_rq_get(struct dp_kv *kv);
/* Account the requests the io thread has finished. */
void dp_kv_rq_reap(struct dp_kv *kv);
/* A restore that cannot go on: its queued pages go, its gates say -EBADMSG. */
void dp_kv_rq_fail(struct dp_kv *kv, struct dp_kv_restore *r);
/* Top the io thread up, earliest-needed first, while the window takes them
 * and none is needed after tick horizon; what is needed at or before tick
 * need goes past the window. dp_kv_rq_pump: no horizon. */
void dp_kv_rq_pump_until(struct dp_kv *kv, uint64_t need, uint64_t horizon);
void dp_kv_rq_pump(struct dp_kv *kv, uint64_t need);
/* Bytes of the reads issued on the restore channel with tickets in
 * [done, last] (the queue exists). */
uint64_t dp_kv_rq_reads_ahead(const struct dp_kv *kv, uint64_t last, uint64_t done);

#endif
