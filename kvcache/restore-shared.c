/* SPDX-License-Identifier: MIT */
/*
 * The DualPath restore from the shared tier (kvcache/tier.h): a session
 * another host served comes back layer by layer from RADOS while this host
 * already computes, and the forward waits per layer only for that layer's
 * pages (a gate on the sequence, model/v4.h), as restore.c does from NVMe.
 *
 * Every get goes out at once, in layer order: for each layer, one get per
 * segment holding pages of that layer (a sub-range read of the header and
 * those pages). They land in a staging buffer this restore owns, never in
 * the sequence's pages: librados writes into them on its own threads, and a
 * staging buffer can outlive a sequence freed early. The gate of layer l
 * reaps the tier's completions until that layer's gets are done (each page
 * was checked against its segment's xxh3 and tag by the tier), then copies
 * the layer's pages into the sequence. The first get that fails poisons
 * the restore: the gate fails, and the caller recomputes from the history.
 *
 * Nothing is freed while a get is in flight: a failed or abandoned restore
 * first reaps every get it submitted.
 */
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>

#include "base/clock.h"
#include "kvcache/kvcache-internal.h"
#include "kvcache/tier.h"

struct sget { /* one get: the pages of one layer in one segment */
	struct dp_kv_srestore *r;
	uint32_t layer;
};

struct dp_kv_srestore {
	struct dp_kv *kv;
	struct dp_kv_session *s;
	struct dp_v4_seq *seq;
	struct dp_kv_shared *t;
	pthread_mutex_t *lock;
	size_t n;			/* pages */
	struct dp_v4_page_ref *refs;	/* the sequence's pages, layer order */
	void *stage;			/* n pages: where the gets land */
	uint32_t n_layers;
	uint32_t *layer_end;		/* pages [layer_end[l-1], layer_end[l]) */
	uint32_t *pending;		/* per layer: gets not finished */
	uint8_t *layer_done;
	uint32_t layers_ready;
	struct sget *gets;
	size_t n_gets;
	unsigned inflight;		/* gets submitted whose callback has not run */
	int error;			/* the first get's failure */
	bool failed;
	uint64_t t_start, bytes;
};

static void srestore_free(struct dp_kv_srestore *r)
{
	free(r->refs);
	free(r->stage);
	free(r->layer_end);
	free(r->pending);
	free(r->layer_done);
	free(r->gets);
	free(r);
}

/* The tier's thread, while it reaps (under the caller's lock). */
static void on_get(void *arg, int res)
{
	struct sget *g = arg;
	struct dp_kv_srestore *r = g->r;
	r->inflight--;
	r->pending[g->layer]--;
	if (res < 0 && !r->error)
		r->error = res;
}

static void reap(struct dp_kv_srestore *r)
{
	if (r->lock)
		pthread_mutex_lock(r->lock);
	dp_kv_shared_reap(r->t, 0);
	if (r->lock)
		pthread_mutex_unlock(r->lock);
}

/* Reap until layer l's gets are done (l < 0: every get), or one failed. */
static void wait_gets(struct dp_kv_srestore *r, int l)
{
	for (;;) {
		reap(r);
		if (l < 0 ? r->inflight == 0 : r->pending[l] == 0 || r->error)
			return;
		/* another thread may reap too (under the lock): poll briefly */
		struct pollfd p = { .fd = dp_kv_shared_fd(r->t), .events = POLLIN };
		poll(&p, 1, 5);
	}
}

/* A session's restores and a prefix unit's are counted apart (a unit's
 * have their own counters in the daemon: dualpath_shared_units_*). */
static struct dp_kv_shared_restore_stats *stats_of(struct dp_kv *kv, const struct dp_kv_session *s)
{
	return s->unit ? &kv->shared_unit_st : &kv->shared_st;
}

static int layer_in(struct dp_kv_srestore *r, uint32_t l)
{
	struct dp_kv *kv = r->kv;
	if (!r->error && r->pending[l]) {
		uint64_t t0 = dp_clock_ns();
		wait_gets(r, (int)l);
		uint64_t t1 = dp_clock_ns();
		stats_of(kv, r->s)->stall_ns += t1 - t0;
		kv->st.restore_stall_ns += t1 - t0;
		kv->stalls[(kv->stall_head + kv->n_stalls) % DP_KV_STALL_SPANS] =
		    (struct dp_kv_stall){ .t0 = t0, .t1 = t1, .layer = l, .inflight = 0 };
		if (kv->n_stalls < DP_KV_STALL_SPANS)
			kv->n_stalls++;
		else
			kv->stall_head = (kv->stall_head + 1) % DP_KV_STALL_SPANS;
	}
	if (r->error)
		return r->error;
	uint32_t b = l ? r->layer_end[l - 1] : 0, e = r->layer_end[l];
	for (uint32_t i = b; i < e; i++)
		if (dp_kv_page_in(kv, &r->refs[i], (char *)r->stage + (size_t)i * DP_KV_PAGE_BYTES) < 0)
			return -EIO;
	r->bytes += (uint64_t)(e - b) * DP_KV_PAGE_BYTES;
	return 0;
}

/* Done, either way: the gets are all reaped, the gate goes, r is freed. */
static void finish(struct dp_kv_srestore *r)
{
	struct dp_kv *kv = r->kv;
	if (r->inflight)
		wait_gets(r, -1);
	dp_v4_seq_set_gate(r->seq, NULL, NULL);
	struct dp_kv_shared_restore_stats *st = stats_of(kv, r->s);
	if (r->failed) {
		st->failed++;
		kv->st.corrupt_pages++;
	} else {
		st->completed++;
		st->ns += dp_clock_ns() - r->t_start;
	}
	st->bytes += r->bytes;
	r->s->srestore = NULL;
	srestore_free(r);
}

static int gate(void *ctx, struct dp_v4_seq *seq, int layer)
{
	struct dp_kv_srestore *r = ctx;
	(void)seq;
	if (layer < 0 || (uint32_t)layer >= r->n_layers)
		return -EINVAL;
	if (!r->layer_done[layer]) {
		if (layer_in(r, (uint32_t)layer) < 0) {
			/* never served: the caller recomputes from the history */
			r->failed = true;
			finish(r);
			return -EBADMSG;
		}
		r->layer_done[layer] = 1;
		r->layers_ready++;
	}
	if (r->layers_ready == r->n_layers)
		finish(r);
	return 0;
}

int dp_kv_srestore_complete(struct dp_kv *kv, struct dp_kv_session *s)
{
	(void)kv;
	struct dp_kv_srestore *r = s->srestore;
	if (!r)
		return 0;
	uint32_t n_layers = r->n_layers; /* the last gate frees r */
	for (uint32_t l = 0; s->srestore && l < n_layers; l++)
		if (gate(r, r->seq, (int)l) < 0)
			return -EBADMSG;
	return 0;
}

void dp_kv_srestore_info(const struct dp_kv_srestore *r, struct dp_kv_restore_info *ret)
{
	ret->active = true;
	ret->layers = r->n_layers;
	uint64_t left = 0;
	for (uint32_t l = 0; l < r->n_layers; l++) {
		uint32_t b = l ? r->layer_end[l - 1] : 0;
		if (r->pending[l] == 0 && left == 0)
			ret->layers_ready++;
		else if (r->pending[l])
			left += (uint64_t)(r->layer_end[l] - b) * DP_KV_PAGE_BYTES;
	}
	ret->bytes_left = left;
}

int dp_kv_session_state_copy(struct dp_kv *kv, struct dp_kv_session *s, uint64_t *ret_pos,
			     struct dp_v4_page_ref **ret_refs, void **ret_data, size_t *ret_n)
{
	if (!kv || !s || !ret_pos || !ret_refs || !ret_data || !ret_n)
		return -EINVAL;
	if (s->tier != DP_KV_TIER_DEVICE || !s->seq || s->restore || s->srestore ||
	    dp_v4_seq_poisoned(s->seq))
		return -ENODATA;
	struct dp_v4_page_ref *refs;
	void **pages, *bounce;
	size_t n;
	int r = dp_kv_state_to_host(kv, s, &refs, &pages, &bounce, &n);
	if (r < 0)
		return r;
	free(pages); /* pages[i] is bounce + i pages: the device tier downloads */
	*ret_pos = dp_v4_seq_pos(s->seq);
	*ret_refs = refs;
	*ret_data = bounce;
	*ret_n = n;
	return 0;
}

/* Submit layer by layer: for each layer, one get per segment it has pages
 * in, in the order the segments first appear. */
static int submit(struct dp_kv_srestore *r, const char *const *segments,
		  const struct dp_kv_shared_loc *locs)
{
	uint32_t *idx = malloc(DP_KV_SHARED_GROUP_PAGES * sizeof(*idx));
	struct dp_kv_shared_page *pg = malloc(DP_KV_SHARED_GROUP_PAGES * sizeof(*pg));
	uint8_t *taken = calloc(r->n ? r->n : 1, 1);
	int ret = 0;
	if (!idx || !pg || !taken) {
		ret = -ENOMEM;
		goto out;
	}
	for (uint32_t l = 0; l < r->n_layers && ret == 0; l++) {
		uint32_t b = l ? r->layer_end[l - 1] : 0, e = r->layer_end[l];
		for (uint32_t i = b; i < e && ret == 0; i++) {
			if (taken[i])
				continue;
			uint32_t seg = locs[i].segment, k = 0;
			for (uint32_t j = i; j < e && k < DP_KV_SHARED_GROUP_PAGES; j++) {
				if (taken[j] || locs[j].segment != seg)
					continue;
				taken[j] = 1;
				idx[k] = locs[j].slot;
				pg[k].tag = dp_kv_shared_page_tag(locs[j].layer, locs[j].kind,
								  locs[j].index);
				pg[k].buf = (char *)r->stage + (size_t)j * DP_KV_PAGE_BYTES;
				k++;
			}
			struct sget *g = &r->gets[r->n_gets];
			*g = (struct sget){ .r = r, .layer = l };
			if (r->lock)
				pthread_mutex_lock(r->lock);
			ret = dp_kv_shared_get(r->t, segments[seg], idx, pg, k, DP_KV_PAGE_BYTES, on_get, g);
			if (r->lock)
				pthread_mutex_unlock(r->lock);
			if (ret == 0) {
				r->n_gets++;
				r->inflight++;
				r->pending[l]++;
			}
		}
	}
out:
	free(idx);
	free(pg);
	free(taken);
	return ret;
}

int dp_kv_session_restore_shared(struct dp_kv *kv, struct dp_kv_session *s, struct dp_kv_shared *t,
				 pthread_mutex_t *lock, uint64_t pos, const char *const *segments,
				 size_t n_segments, const struct dp_kv_shared_loc *locs, size_t n,
				 struct dp_v4_seq **ret_seq)
{
	if (!kv || !s || !t || !segments || (!locs && n) || !ret_seq)
		return -EINVAL;
	if (!s->busy || s->tier != DP_KV_TIER_DEVICE || s->restore || s->srestore)
		return -EBUSY;
	struct dp_kv_srestore *r = calloc(1, sizeof(*r));
	struct dp_v4_seq *seq = NULL;
	int ret;
	if (!r)
		return -ENOMEM;
	r->kv = kv;
	r->s = s;
	r->t = t;
	r->lock = lock;
	r->t_start = dp_clock_ns();
	r->n_layers = (uint32_t)dp_v4_model_config(kv->m)->num_hidden_layers;
	if ((ret = dp_kv_seq_new_at(kv, s, pos, &seq)) < 0)
		goto fail;
	r->seq = seq;
	r->n = dp_v4_seq_pages(seq, NULL, 0);
	ret = -EBADMSG; /* the manifest must describe exactly this sequence's pages */
	if (r->n != n)
		goto fail;
	size_t cnt = n ? n : 1;
	r->refs = calloc(cnt, sizeof(*r->refs));
	r->layer_end = calloc(r->n_layers ? r->n_layers : 1, sizeof(*r->layer_end));
	r->pending = calloc(r->n_layers ? r->n_layers : 1, sizeof(*r->pending));
	r->layer_done = calloc(r->n_layers ? r->n_layers : 1, 1);
	r->gets = calloc(cnt, sizeof(*r->gets)); /* at most one get per page */
	if (!r->refs || !r->layer_end || !r->pending || !r->layer_done || !r->gets ||
	    posix_memalign(&r->stage, 4096, cnt * DP_KV_PAGE_BYTES)) {
		ret = -ENOMEM;
		goto fail;
	}
	dp_v4_seq_pages(seq, r->refs, n);
	uint32_t per_seg = dp_kv_shared_group_pages(DP_KV_PAGE_BYTES);
	for (size_t i = 0; i < n; i++) {
		if (locs[i].layer != r->refs[i].layer || locs[i].kind != r->refs[i].kind ||
		    locs[i].index != r->refs[i].index || locs[i].segment >= n_segments ||
		    !segments[locs[i].segment] || locs[i].slot >= per_seg ||
		    locs[i].layer >= r->n_layers)
			goto fail;
	}
	dp_kv_layer_ends(r->refs, n, r->layer_end, r->n_layers);
	ret = submit(r, segments, locs);
	if (ret < 0) {
		/* what went out is reaped before anything is freed */
		wait_gets(r, -1);
		goto fail;
	}
	/* the sequence acquire gave s (fresh, at 0) makes way for this one */
	dp_v4_seq_free(s->seq);
	s->seq = seq;
	kv->st.recomputed_tokens -= pos < s->state_pos ? 0 : pos - s->state_pos;
	s->state_pos = pos;
	s->srestore = r;
	stats_of(kv, s)->started++;
	dp_v4_seq_set_gate(seq, gate, r);
	*ret_seq = seq;
	return 0;
fail:
	dp_v4_seq_free(seq);
	srestore_free(r);
	return ret;
}

void dp_kv_shared_restore_stats(const struct dp_kv *kv, struct dp_kv_shared_restore_stats *ret)
{
	if (kv && ret)
		*ret = kv->shared_st;
}
