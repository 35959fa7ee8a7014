/* SPDX-License-Identifier: MIT */
/*
 * kvcache/writeback.c — demotion to the NVMe tier off the compute path.
 *
 * The watermarks demote idle sessions; writing one to NVMe (hash, write,
 * fdatasync, journal) used to happen inside dp_kv_balance, on the compute
 * thread, between steps. Here its slot writes go into the restore queue
 * (rqueue.c, dp_kv_write_queue) as DP_RSCHED_WRITEBACK items, followed by
 * dp_kv_pump, so the compute thread only plans it (allocates slots, hashes
 * the pages, fills the requests) and later installs it. The queue issues
 * them in deadline order with the restores' and other parts' reads: a
 * writeback is due RQ_WB_DELAY_STEPS steps after it began, so reads needed
 * sooner go first, and it goes before anything needed later (it never
 * starves). They go on the LOW writeback channel (kv->wb_chan), at most
 * RQ_WB_DEVICE_BYTES in the kernel: a read issued later goes to the kernel
 * at once, beside that much writing at most. The fdatasync follows the last
 * write there at once, with a barrier (it starts once they are done).
 *
 * Ownership. A writeback reads DRAM pages it holds (dp_kv_pool_hold: a
 * promotion or restore of the session may release the session's hold
 * meanwhile, the page stays until the writeback puts it) or a bounce copy
 * of device pages (the device state may change meanwhile). It allocates its
 * slots at the start; they become the session's snapshot only once the
 * snapshot record is durable (dp_kv_wb_finalize), and the old snapshot's
 * slots are freed only then, so a crash at any moment leaves the journal
 * pointing at slots that hold what it says (or at none: the history is the
 * truth and the state is recomputed).
 *
 * Tickets. Only the restore queue submits on kv->wb_chan (the compute
 * thread); the writes' and syncs' results are read as they finish, in
 * ticket order, before their result slots can be reused (rqueue.c,
 * dp_kv_rq_reap). A sync is a barrier behind its writes, so it covers them: the
 * data is durable before the snapshot record is written.
 *
 * The commit (dp_kv_commit) is here too, at the end: its journal sync is
 * what installs the recorded writebacks.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "kvcache/kvcache-internal.h"

struct dp_kv_wb {
	struct dp_kv_wb *next;
	struct dp_kv_session *s; /* NULL once the session is gone */
	enum dp_kv_tier from;
	uint64_t pos;
	size_t n;	/* pages of the snapshot */
	size_t nw;	/* of them, written (the rest name slots holding their bytes) */
	size_t leaving; /* of them, pages the tier gets back when it is done (a DRAM
			 * page a unit shares stays: kvcache.h, "Prefix units") */
	struct dp_kv_snap_page *sp; /* the snapshot it makes */
	uint64_t *slots, *sums;	   /* the written pages' */
	struct dp_kv_slot_id *ids; /* ... and what their headers say */
	uint32_t *pool; /* DRAM: the pool pages it holds */
	void *bounce;	/* DEVICE: the pages, downloaded */
	uint8_t *hdrs;
	struct dp_io_req *reqs; /* 2n writes, then the fdatasync: the job's */
	struct dp_kv_wjob job;	/* in the restore queue */
	int err;
};

static void wb_free(struct dp_kv *kv, struct dp_kv_wb *wb, bool free_slots)
{
	/* its pages leave now (installed: the session's tier let them go) or
	 * never (undone); until here they count as leaving, also while the
	 * record waits for the journal sync, else the watermarks would see
	 * them as staying and demote sessions they should keep */
	kv->wb_leaving[wb->from] -= wb->leaving;
	if (free_slots && wb->sp)
		dp_kv_snap_unplan(kv, wb->sp, wb->n);
	if (wb->pool)
		for (size_t i = 0; i < wb->n; i++)
			dp_kv_pool_put(&kv->pool, wb->pool[i]);
	free(wb->sp);
	free(wb->slots);
	free(wb->sums);
	free(wb->ids);
	free(wb->pool);
	free(wb->bounce);
	free(wb->hdrs);
	free(wb->reqs);
	free(wb);
}

int dp_kv_wb_start(struct dp_kv *kv, struct dp_kv_session *s)
{
	if (!kv->wb_chan)
		return -ENOTSUP;
	if (s->busy || s->wb || s->restore || s->srestore ||
	    (s->tier != DP_KV_TIER_DEVICE && s->tier != DP_KV_TIER_DRAM))
		return -EBUSY;
	uint64_t pos = s->tier == DP_KV_TIER_DEVICE ? dp_v4_seq_pos(s->seq) : s->state_pos;
	if (s->has_snap && s->snap_pos == pos) {
		/* already on NVMe: nothing to write. What dp_kv_session_demote
		 * does for such a session (idle, no writeback, no restore), without
		 * calling back up into kvcache.c. */
		dp_kv_state_drop_to_snap(kv, s);
		kv->st.demotions++;
		return 0;
	}
	int r = dp_kv_commit_if_behind(kv, s, pos);
	if (r < 0)
		return r;

	struct dp_kv_wb *wb = calloc(1, sizeof(*wb));
	struct dp_v4_page_ref *refs = NULL;
	void **pages = NULL, **wpages = NULL;
	bool planned = false;
	if (!wb)
		return -ENOMEM;
	wb->from = s->tier;
	wb->pos = pos;
	if ((r = dp_kv_state_to_host(kv, s, &refs, &pages, &wb->bounce, &wb->n)) < 0) {
		free(wb);
		return r;
	}
	size_t n = wb->n, m = n ? n : 1;
	wb->sp = calloc(m, sizeof(*wb->sp));
	wb->slots = calloc(m, sizeof(*wb->slots));
	wb->sums = calloc(m, sizeof(*wb->sums));
	wb->ids = calloc(m, sizeof(*wb->ids));
	wb->hdrs = dp_kv_slots_headers_alloc(n);
	wb->reqs = calloc(2 * n + 1, sizeof(*wb->reqs));
	wpages = calloc(m, sizeof(*wpages));
	if (wb->from == DP_KV_TIER_DRAM)
		wb->pool = calloc(m, sizeof(*wb->pool));
	r = -ENOMEM;
	if (!wb->sp || !wb->slots || !wb->sums || !wb->ids || !wb->hdrs || !wb->reqs || !wpages ||
	    (wb->from == DP_KV_TIER_DRAM && !wb->pool))
		goto fail;
	/* the pages a held slot already has are not written again */
	struct dp_kv_snap_writes w = { wb->ids, wb->slots, wb->sums, wpages, 0 };
	if ((r = dp_kv_snap_plan(kv, s, pos, refs, pages, n, wb->sp, &w)) < 0)
		goto fail;
	planned = true;
	size_t nw = w.n;
	r = dp_kv_slots_write_reqs(&kv->slots, wb->slots, wb->ids, wpages, nw, wb->sums, wb->hdrs,
				   wb->reqs);
	if (r < 0)
		goto fail;
	wb->nw = nw;
	wb->job = (struct dp_kv_wjob){ .reqs = wb->reqs, .sync = &wb->reqs[2 * nw], .n = nw };
	if ((r = dp_kv_write_queue(kv, &wb->job)) < 0)
		goto fail;
	wb->leaving = n;
	if (wb->from == DP_KV_TIER_DRAM)
		for (size_t i = 0; i < n; i++) {
			wb->pool[i] = s->dram_pages[i];
			wb->leaving -= kv->pool.refs[wb->pool[i]] > 1;
			dp_kv_pool_hold(&kv->pool, wb->pool[i]);
		}
	free(refs);
	free(pages);
	free(wpages);
	wb->s = s;
	s->wb = wb;
	if (kv->wb_tail)
		kv->wb_tail->next = wb;
	else
		kv->wb_head = wb;
	kv->wb_tail = wb;
	kv->wb_leaving[wb->from] += wb->leaving;
	kv->wb_pages += nw;
	kv->st.writebacks++;
	dp_kv_wb_progress(kv);
	return 0;
fail:
	if (planned)
		dp_kv_snap_unplan(kv, wb->sp, n);
	wb->n = 0;
	free(refs);
	free(pages);
	free(wpages);
	wb_free(kv, wb, false);
	return r;
}

/* A writeback whose requests have all finished: on success its record goes
 * into the journal (durable at the next sync), else it is undone. */
static void wb_done(struct dp_kv *kv, struct dp_kv_wb *wb)
{
	kv->wb_pages -= wb->nw;
	if (!wb->err && wb->s)
		wb->err = dp_kv_journal_snapshot(kv->j, wb->s, wb->pos, wb->sp, wb->n, false);
	if (wb->err || !wb->s) {
		if (wb->err)
			kv->st.writeback_errors++;
		if (wb->s)
			wb->s->wb = NULL;
		wb_free(kv, wb, true);
		return;
	}
	kv->st.pages_written += wb->nw;
	kv->st.pages_shared += wb->n - wb->nw;
	wb->next = kv->wb_recorded;
	kv->wb_recorded = wb;
}

void dp_kv_wb_progress(struct dp_kv *kv)
{
	if (!kv->wb_head)
		return;
	/* writes go out when they come first in the queue's order (the
	 * restore queue's own pumps take them in turn with the reads) */
	dp_kv_write_pump(kv);
	/* journaled in queue order */
	while (kv->wb_head && kv->wb_head->job.finished) {
		struct dp_kv_wb *wb = kv->wb_head;
		kv->wb_head = wb->next;
		if (!kv->wb_head)
			kv->wb_tail = NULL;
		wb->next = NULL;
		wb->err = wb->job.err;
		wb_done(kv, wb);
	}
}

void dp_kv_wb_finalize(struct dp_kv *kv)
{
	struct dp_kv_wb *wb = kv->wb_recorded;
	kv->wb_recorded = NULL;
	while (wb) {
		struct dp_kv_wb *next = wb->next;
		struct dp_kv_session *s = wb->s;
		if (!s) {
			/* the session was dropped after the record: its drop is
			 * durable too (dp_kv_session_drop syncs) */
			wb_free(kv, wb, true);
			wb = next;
			continue;
		}
		s->wb = NULL;
		if (s->restore)
			dp_kv_restore_complete(kv, s); /* it may be reading the old slots */
		dp_kv_snap_release(kv, s);
		s->snap = wb->sp;
		s->n_snap = wb->n;
		s->snap_pos = wb->pos;
		s->has_snap = true;
		wb->sp = NULL;
		dp_kv_snap_index(kv, s);
		/* still idle and exactly the state written: it moves to NVMe */
		if (!s->busy && !s->restore && s->tier == wb->from && s->state_pos == wb->pos) {
			if (s->tier == DP_KV_TIER_DRAM) {
				dp_kv_dram_release(kv, s);
			} else {
				dp_v4_seq_free(s->seq);
				s->seq = NULL;
			}
			s->tier = DP_KV_TIER_NVME;
			kv->st.demotions++;
		}
		wb_free(kv, wb, false);
		wb = next;
	}
}

int dp_kv_wb_settle(struct dp_kv *kv)
{
	while (kv->wb_head) {
		dp_kv_write_wait(kv, &kv->wb_head->job);
		dp_kv_wb_progress(kv);
	}
	if (!kv->wb_recorded)
		return 0;
	int r = dp_journal_sync(kv->j);
	if (r == 0)
		dp_kv_wb_finalize(kv);
	return r;
}

void dp_kv_wb_expedite(struct dp_kv *kv, struct dp_kv_session *s)
{
	if (!s->wb || s->wb->job.due_now)
		return;
	dp_kv_write_expedite(kv, &s->wb->job);
	dp_kv_wb_progress(kv);
}

void dp_kv_wb_detach(struct dp_kv *kv, struct dp_kv_session *s)
{
	(void)kv;
	if (s->wb) {
		s->wb->s = NULL;
		s->wb = NULL;
	}
}

/* ---- the commit ----------------------------------------------------------------
 *
 * dp_kv_commit (kvcache.h) lives here, not in kvcache.c with the rest of the
 * API: its journal sync is what installs the writebacks recorded before it
 * (dp_kv_wb_finalize), and dp_kv_wb_start commits first (a snapshot is never
 * ahead of the durable history), so in kvcache.c the two files would call
 * each other.
 */

int dp_kv_commit(struct dp_kv *kv)
{
	bool any = false;
	for (size_t i = 0; i < kv->n; i++) {
		struct dp_kv_session *s = kv->list[i];
		if (s->committed == s->len)
			continue;
		struct dp_jbuf b = { 0 };
		dp_jbuf_put_str(&b, s->id);
		dp_jbuf_put_u64(&b, s->len);
		dp_jbuf_put_u32(&b, (uint32_t)(s->len - s->committed));
		for (uint64_t t = s->committed; t < s->len; t++)
			dp_jbuf_put_u32(&b, (uint32_t)s->hist[t]);
		dp_kv_jbuf_put_owner(&b, s);
		int r = b.error ? b.error : dp_journal_append(kv->j, DP_JREC_HISTORY, b.data, b.len);
		dp_jbuf_fini(&b);
		if (r < 0)
			return r;
		s->committed = s->len;
		any = true;
	}
	if (!any && !kv->wb_recorded)
		return 0;
	int r = dp_journal_sync(kv->j);
	if (r == 0) {
		kv->st.commits += any;
		dp_kv_wb_finalize(kv); /* writebacks journaled before this sync */
	}
	return r;
}

int dp_kv_commit_if_behind(struct dp_kv *kv, const struct dp_kv_session *s, uint64_t pos)
{
	/* a snapshot must never be ahead of the durable history */
	return s->committed < pos ? dp_kv_commit(kv) : 0;
}
