/* SPDX-License-Identifier: MIT */
/*
 * The DualPath restore: a parked session's state comes back layer by layer
 * while the compute path already runs, and the forward waits per layer only
 * for that layer's pages (a gate on the sequence, model/v4.h).
 *
 * From NVMe, page reads (header and data) go to the io thread through the
 * restore queue (rqueue.c): earliest-needed first across every restoring
 * session, at most a window of bytes outstanding, topped up at each gate
 * (dp_kv_restore_defer moves a session admission left out to the next
 * step). A gate whose own layer is not all submitted yet takes its pages
 * past the window. The channel is HIGH priority; on a backend whose device
 * memory the host can address (cpu) the data lands straight in the
 * sequence's pages, else in a bounce buffer uploaded at the gate. The gate
 * of layer l waits for that layer's last ticket, checks each of its pages
 * (header fields, and the xxh3 the io thread computed as the page's read
 * finished: DP_IO_F_HASH) and returns; a page that fails poisons the
 * sequence, which the caller then recomputes from the history. From DRAM,
 * the gate copies the layer's pages.
 *
 * Pages are never freed while a read into them is in flight: aborting a
 * restore first waits for every ticket it submitted.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "base/clock.h"
#include "kvcache/rqueue-internal.h"

static void restore_free(struct dp_kv_restore *r)
{
	free(r->refs);
	free(r->host);
	free(r->bounce);
	free(r->hdrs);
	free(r->ids);
	free(r->dram);
	free(r->ticket);
	free(r->layer_end);
	free(r->layer_done);
	free(r);
}

int dp_kv_restore_defer(struct dp_kv *kv, struct dp_kv_session *s, uint32_t steps)
{
	if (!kv || !s || !steps)
		return -EINVAL;
	struct dp_kv_restore *r = s->restore;
	if (!r || !r->queued || !kv->rq)
		return 0;
	struct dp_kv_rq *q = kv->rq;
	uint64_t next = (q->step + steps) * q->layers;
	if (dp_rsched_stream_base(q->rs, r->stream) < next)
		dp_rsched_stream_rebase(q->rs, r->stream, next);
	return 0;
}

/* Wait for every request submitted so far (never free a page the kernel is
 * still writing into). */
static void drain(struct dp_kv_restore *r)
{
	if (r->from_nvme && r->next)
		dp_io_wait(r->kv->restore_chan, r->ticket[r->next - 1], -1);
	if (r->from_nvme && r->kv->rq)
		dp_kv_rq_reap(r->kv);
}

static void stall_note(struct dp_kv *kv, uint64_t t0, uint64_t t1, uint32_t l)
{
	kv->st.restore_stall_ns += t1 - t0;
	struct dp_kv_stall *sp = &kv->stalls[(kv->stall_head + kv->n_stalls) % DP_KV_STALL_SPANS];
	*sp = (struct dp_kv_stall){ t0, t1, l, dp_kv_restore_inflight(kv), { 0 } };
	dp_kv_io_inflight(kv, sp->by_class);
	if (kv->n_stalls < DP_KV_STALL_SPANS)
		kv->n_stalls++;
	else
		kv->stall_head = (kv->stall_head + 1) % DP_KV_STALL_SPANS;
}

static int layer_in(struct dp_kv_restore *r, uint32_t l)
{
	struct dp_kv *kv = r->kv;
	uint32_t b = l ? r->layer_end[l - 1] : 0, e = r->layer_end[l];

	if (r->from_nvme) {
		struct dp_kv_rq *q = kv->rq;
		uint64_t need = dp_rsched_stream_base(q->rs, r->stream) + l;
		uint64_t t0 = 0;
		dp_rsched_advance(q->rs, q->step * q->layers + l);
		r->gated_step = q->step;
		/* every request of the layer submitted (past the window), then
		 * its last one done */
		while (!r->failed && r->next < 2 * (size_t)e) {
			dp_kv_rq_pump(kv, need);
			if (r->failed || r->next >= 2 * (size_t)e)
				break;
			if (!q->fl.n) { /* nothing in flight, nothing taken: cannot go on */
				dp_kv_rq_fail(kv, r);
				break;
			}
			if (!t0)
				t0 = dp_clock_ns();
			dp_io_wait(kv->restore_chan, rq_ring_head(&q->fl)->ticket, -1);
		}
		if (r->failed)
			return -EIO;
		if (e > b && dp_io_completed(kv->restore_chan) <= r->ticket[2 * (size_t)e - 1]) {
			if (!t0)
				t0 = dp_clock_ns();
			dp_io_wait(kv->restore_chan, r->ticket[2 * (size_t)e - 1], -1);
		}
		uint64_t t1 = t0 || !r->first_in ? dp_clock_ns() : 0;
		if (t0)
			stall_note(kv, t0, t1, l);
		if (!r->first_in) { /* how long a first layer takes to come (admission) */
			r->first_in = true;
			if (q->step == r->begin_step + 1) { /* not left out meanwhile */
				kv->st.restore_first_ns += t1 - r->t_issue;
				kv->st.restore_firsts++;
			}
		}
		dp_kv_rq_pump(kv, need); /* the window has room again: the next layers */
		for (uint32_t i = b; i < e; i++) {
			int32_t res[2];
			if (dp_io_result(kv->restore_chan, r->ticket[2 * i], &res[0]) < 0 ||
			    dp_io_result(kv->restore_chan, r->ticket[2 * i + 1], &res[1]) < 0 ||
			    res[0] != (int32_t)DP_KV_HDR_BYTES || res[1] != (int32_t)DP_KV_PAGE_BYTES)
				return -EIO;
			uint64_t h;
			bool hashed = dp_io_result_hash(kv->restore_chan, r->ticket[2 * i + 1], &h) == 0;
			int tail = dp_kv_slot_check_hashed(&r->ids[i], r->s->snap[i].sum,
							   r->hdrs + (size_t)i * DP_KV_HDR_BYTES,
							   r->host[i], hashed ? &h : NULL);
			if (tail < 0) {
				kv->st.corrupt_pages++;
				dp_kv_snap_page_bad(kv, r->s, i); /* no new snapshot shares it */
				return -EBADMSG;
			}
			kv->st.pages_hashed_io += hashed && !tail;
			kv->st.pages_zero_tail += tail > 0;
			if (r->host[i] != r->refs[i].page && dp_kv_page_in(kv, &r->refs[i], r->host[i]) < 0)
				return -EIO;
		}
		kv->st.pages_read += e - b;
	} else {
		for (uint32_t i = b; i < e; i++)
			if (dp_kv_page_in(kv, &r->refs[i], dp_kv_pool_page(&kv->pool, r->dram[i].pool)) < 0)
				return -EIO;
	}
	r->bytes += (uint64_t)(e - b) * DP_KV_PAGE_BYTES;
	return 0;
}

/* All layers are in (or the restore failed): the session stands on the
 * device like any other; release what the restore held. */
static void finish(struct dp_kv_restore *r)
{
	struct dp_kv *kv = r->kv;
	struct dp_kv_session *s = r->s;
	drain(r);
	if (r->queued) /* every page was taken: this only closes the stream */
		dp_rsched_stream_close(kv->rq->rs, r->stream);
	if (!r->from_nvme) {
		for (size_t i = 0; i < r->n; i++)
			dp_kv_pool_put(&kv->pool, r->dram[i].pool);
	}
	dp_v4_seq_set_gate(r->seq, NULL, NULL);
	kv->st.restores++;
	kv->st.restore_ns += dp_clock_ns() - r->t_start;
	s->restore = NULL;
	restore_free(r);
}

static int gate(void *ctx, struct dp_v4_seq *seq, int layer)
{
	struct dp_kv_restore *r = ctx;
	(void)seq;
	if (layer < 0 || (uint32_t)layer >= r->n_layers)
		return -EINVAL;
	if (!r->failed && !r->layer_done[layer]) {
		int ret = layer_in(r, (uint32_t)layer);
		if (ret < 0) {
			r->failed = true;
		} else {
			r->layer_done[layer] = 1;
			r->layers_ready++;
		}
	}
	if (r->failed) {
		/* the state is garbage from here on: the caller recomputes it */
		return -EBADMSG;
	}
	if (r->layers_ready == r->n_layers)
		finish(r);
	return 0;
}

int dp_kv_restore_begin(struct dp_kv *kv, struct dp_kv_session *s, struct dp_v4_seq **ret_seq)
{
	bool from_nvme = s->tier == DP_KV_TIER_NVME;
	uint64_t pos = from_nvme ? s->snap_pos : s->state_pos;
	struct dp_kv_restore *r = calloc(1, sizeof(*r));
	struct dp_v4_seq *seq = NULL;
	int ret;

	if (!r)
		return -ENOMEM;
	r->kv = kv;
	r->s = s;
	r->from_nvme = from_nvme;
	r->t_start = dp_clock_ns();
	r->n_layers = (uint32_t)dp_v4_model_config(kv->m)->num_hidden_layers;
	if ((ret = dp_kv_seq_new_at(kv, s, pos, &seq)) < 0)
		goto fail;
	r->seq = seq;
	r->n = dp_v4_seq_pages(seq, NULL, 0);
	size_t src_n = from_nvme ? s->n_snap : s->n_dram;
	r->refs = calloc(r->n ? r->n : 1, sizeof(*r->refs));
	r->host = calloc(r->n ? r->n : 1, sizeof(*r->host));
	r->layer_end = calloc(r->n_layers, sizeof(*r->layer_end));
	r->layer_done = calloc(r->n_layers, 1);
	ret = -ENOMEM;
	if (!r->refs || !r->host || !r->layer_end || !r->layer_done)
		goto fail;
	dp_v4_seq_pages(seq, r->refs, r->n);
	/* the parked copy must describe exactly these pages */
	ret = -EBADMSG;
	if (src_n != r->n)
		goto fail;
	for (size_t i = 0; i < r->n; i++) {
		uint16_t L = from_nvme ? s->snap[i].layer : s->dram_refs[i].layer;
		uint8_t K = from_nvme ? s->snap[i].kind : s->dram_refs[i].kind;
		uint32_t I = from_nvme ? s->snap[i].index : s->dram_refs[i].index;
		if (L != r->refs[i].layer || K != r->refs[i].kind || I != r->refs[i].index)
			goto fail;
	}
	dp_kv_layer_ends(r->refs, r->n, r->layer_end, r->n_layers);
	ret = -ENOMEM;
	if (from_nvme) {
		bool host_memory = dp_gpu_kind_of(kv->g) == DP_GPU_CPU;
		r->hdrs = NULL;
		r->ids = calloc(r->n ? r->n : 1, sizeof(*r->ids));
		r->ticket = calloc(2 * (r->n ? r->n : 1), sizeof(*r->ticket));
		if (posix_memalign((void **)&r->hdrs, 4096, (r->n ? r->n : 1) * DP_KV_HDR_BYTES) ||
		    !r->ids || !r->ticket)
			goto fail;
		if (!host_memory &&
		    posix_memalign(&r->bounce, 4096, (r->n ? r->n : 1) * DP_KV_PAGE_BYTES))
			goto fail;
		for (size_t i = 0; i < r->n; i++) {
			/* host-resident pages (and every page on the cpu backend)
			 * are read into directly */
			r->host[i] = host_memory || r->refs[i].host ? r->refs[i].page
								    : (char *)r->bounce + i * DP_KV_PAGE_BYTES;
			r->ids[i] = (struct dp_kv_slot_id){ s->id, pos, s->snap[i].layer, s->snap[i].kind,
							    s->snap[i].index };
		}
	} else {
		r->dram = calloc(r->n ? r->n : 1, sizeof(*r->dram));
		if (!r->dram)
			goto fail;
		for (size_t i = 0; i < r->n; i++)
			r->dram[i].pool = s->dram_pages[i];
		/* the pool pages now belong to the restore */
		free(s->dram_pages);
		free(s->dram_refs);
		s->dram_pages = NULL;
		s->dram_refs = NULL;
		s->n_dram = 0;
	}
	if (from_nvme) {
		/* its pages join the restore queue, needed from the next step on */
		struct dp_kv_rq *q = dp_kv_rq_get(kv);
		ret = -ENOMEM;
		if (!q || dp_rsched_stream_open(q->rs, DP_RSCHED_RESTORE, (q->step + 1) * q->layers,
						r, &r->stream) < 0)
			goto fail;
		r->queued = true;
		for (size_t i = 0; i < r->n; i++)
			if (dp_rsched_push(q->rs, r->stream, r->refs[i].layer, DP_KV_SLOT_BYTES, i) < 0) {
				dp_rsched_stream_close(q->rs, r->stream);
				goto fail;
			}
		r->gated_step = q->step;
		r->begin_step = q->step;
	}
	s->restore = r;
	dp_v4_seq_set_gate(seq, gate, r);
	if (from_nvme) {
		/* its first layer goes now, the rest when the step begins: a
		 * session admitted after it must not find its whole state queued
		 * ahead of its own first layer */
		uint64_t first = (kv->rq->step + 1) * kv->rq->layers;
		r->t_issue = dp_clock_ns();
		dp_kv_rq_pump_until(kv, first, first);
	}
	*ret_seq = seq;
	return 0;
fail:
	dp_v4_seq_free(seq);
	restore_free(r);
	return ret;
}

int dp_kv_restore_complete(struct dp_kv *kv, struct dp_kv_session *s)
{
	if (s->srestore) /* from the shared tier (restore-shared.c) */
		return dp_kv_srestore_complete(kv, s);
	struct dp_kv_restore *r = s->restore;
	if (!r)
		return 0;
	uint32_t n_layers = r->n_layers; /* the last gate frees r */
	for (uint32_t l = 0; s->restore && l < n_layers; l++)
		if (gate(r, r->seq, (int)l) < 0) {
			/* failed: wait out what is in flight, let go of the pages */
			drain(r);
			if (r->queued)
				dp_rsched_stream_close(kv->rq->rs, r->stream);
			if (!r->from_nvme)
				for (size_t i = 0; i < r->n; i++)
					dp_kv_pool_put(&kv->pool, r->dram[i].pool);
			dp_v4_seq_set_gate(r->seq, NULL, NULL);
			s->restore = NULL;
			restore_free(r);
			return -EBADMSG;
		}
	return 0;
}

int dp_kv_session_restore_layers(struct dp_kv *kv, struct dp_kv_session *s,
				 struct dp_kv_restore_info *ret, uint64_t *layer_bytes, uint32_t n)
{
	if (!kv || !s || !ret || (n && !layer_bytes))
		return -EINVAL;
	memset(ret, 0, sizeof(*ret));
	if (s->srestore) {
		dp_kv_srestore_info(s->srestore, ret);
		return 0;
	}
	struct dp_kv_restore *r = s->restore;
	if (!r)
		return 0;
	ret->active = true;
	ret->layers = r->n_layers;
	if (!r->from_nvme || r->failed) {
		/* a copy at the gate: no waiting; or nothing more will come (the
		 * gate finds it failed and the state is rebuilt) */
		ret->layers_ready = r->n_layers;
		return 0;
	}
	if (n && n < r->n_layers)
		return -EINVAL;
	/* layers whose reads the io thread has finished (checks still pending) */
	uint64_t done = dp_io_completed(kv->restore_chan);
	for (uint32_t l = 0; l < r->n_layers; l++) {
		size_t last = 2 * (size_t)r->layer_end[l];
		if (last == 0 || (last <= r->next && r->ticket[last - 1] < done))
			ret->layers_ready++;
		else
			break;
	}
	/* one walk over its pages: what each still has to read (a page not
	 * issued, all of it; issued, its parts not done), by layer */
	if (n)
		memset(layer_bytes, 0, r->n_layers * sizeof(*layer_bytes));
	uint64_t own = 0; /* its pages in flight, as the queue counts them */
	uint32_t l = 0;
	for (size_t i = 0; i < r->n; i++) {
		uint64_t b = 0;
		if (2 * i >= r->next) {
			b = DP_KV_SLOT_BYTES;
		} else {
			if (r->ticket[2 * i] >= done)
				b += DP_KV_HDR_BYTES;
			if (2 * i + 1 >= r->next) {
				b += DP_KV_PAGE_BYTES;
			} else if (r->ticket[2 * i + 1] >= done) {
				b += DP_KV_PAGE_BYTES;
				own += DP_KV_SLOT_BYTES;
			}
		}
		ret->bytes_left += b;
		while (l < r->n_layers && i >= r->layer_end[l])
			l++;
		if (n && l < r->n_layers)
			layer_bytes[l] += b;
	}
	/* the others' reads issued before its last one and not done (all of
	 * them while some of its own are not issued yet): the io thread
	 * serves the channel in order, so they come first */
	if (kv->rq) {
		uint64_t last = r->next < 2 * r->n || !r->next ? UINT64_MAX : r->ticket[r->next - 1];
		uint64_t ahead = dp_kv_rq_reads_ahead(kv, last, done);
		ret->bytes_ahead = ahead > own ? ahead - own : 0;
	}
	return n ? (int)r->n_layers : 0;
}

int dp_kv_session_restore_info(struct dp_kv *kv, struct dp_kv_session *s,
			       struct dp_kv_restore_info *ret)
{
	int rc = dp_kv_session_restore_layers(kv, s, ret, NULL, 0);
	return rc < 0 ? rc : 0;
}

