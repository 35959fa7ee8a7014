/* SPDX-License-Identifier: MIT */
/* Sessions: histories, tiers, promotion, demotion, persistence, recovery. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#include "base/clock.h"
#include "kvcache/kvcache-internal.h"

static const char *const tier_names[DP_KV_TIER_MAX] = { "device", "dram", "nvme", "none" };

const char *dp_kv_tier_name(enum dp_kv_tier tier)
{
	return tier < DP_KV_TIER_MAX ? tier_names[tier] : NULL;
}

bool dp_kv_session_id_valid(const char *id)
{
	if (!id)
		return false;
	size_t n = strlen(id);
	if (n == 0 || n > DP_KV_SESSION_ID_MAX || !strcmp(id, ".") || !strcmp(id, ".."))
		return false;
	for (size_t i = 0; i < n; i++) {
		char c = id[i];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '.' || c == '_' || c == '-'))
			return false;
	}
	return true;
}

/* ---- the session table ------------------------------------------------------ */

static size_t hash_slot(const struct dp_kv *kv, const char *id)
{
	return (size_t)XXH3_64bits(id, strlen(id)) & (kv->hash_len - 1);
}

static int table_grow(struct dp_kv *kv)
{
	if (kv->n < kv->cap && kv->n < kv->hash_len / 2)
		return 0;
	size_t cap = kv->cap ? 2 * kv->cap : 64;
	struct dp_kv_session **l = realloc(kv->list, cap * sizeof(*l));
	if (!l)
		return -ENOMEM;
	kv->list = l;
	kv->cap = cap;
	size_t hl = 2 * cap;
	struct dp_kv_session **h = calloc(hl, sizeof(*h));
	if (!h)
		return -ENOMEM;
	free(kv->hash);
	kv->hash = h;
	kv->hash_len = hl;
	for (size_t i = 0; i < kv->n; i++) {
		size_t b = hash_slot(kv, kv->list[i]->id);
		kv->list[i]->hash_next = h[b];
		h[b] = kv->list[i];
	}
	return 0;
}

int dp_kv_session_find(struct dp_kv *kv, const char *id, struct dp_kv_session **ret)
{
	if (!kv || !id || !ret)
		return -EINVAL;
	if (!kv->hash_len)
		return -ENOENT;
	for (struct dp_kv_session *s = kv->hash[hash_slot(kv, id)]; s; s = s->hash_next)
		if (!strcmp(s->id, id)) {
			*ret = s;
			return 0;
		}
	return -ENOENT;
}

static int session_add(struct dp_kv *kv, const char *id, struct dp_kv_session **ret);

static void lru_unlink(struct dp_kv *kv, struct dp_kv_session *s)
{
	if (s->lru_prev)
		s->lru_prev->lru_next = s->lru_next;
	else if (kv->lru_head == s)
		kv->lru_head = s->lru_next;
	if (s->lru_next)
		s->lru_next->lru_prev = s->lru_prev;
	else if (kv->lru_tail == s)
		kv->lru_tail = s->lru_prev;
	s->lru_prev = s->lru_next = NULL;
}

static void lru_push_head(struct dp_kv *kv, struct dp_kv_session *s)
{
	s->lru_prev = NULL;
	s->lru_next = kv->lru_head;
	if (kv->lru_head)
		kv->lru_head->lru_prev = s;
	kv->lru_head = s;
	if (!kv->lru_tail)
		kv->lru_tail = s;
}

int dp_kv_session_add(struct dp_kv *kv, const char *id, struct dp_kv_session **ret)
{
	return session_add(kv, id, ret);
}

void dp_kv_lru_touch(struct dp_kv *kv, struct dp_kv_session *s)
{
	s->last_used_ns = dp_clock_ns();
	if (s->busy)
		return;
	lru_unlink(kv, s);
	lru_push_head(kv, s);
}

static int session_add(struct dp_kv *kv, const char *id, struct dp_kv_session **ret)
{
	int r = table_grow(kv);
	if (r < 0)
		return r;
	struct dp_kv_session *s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	snprintf(s->id, sizeof(s->id), "%s", id);
	s->owner = DP_KV_OWNER_NONE;
	s->tier = DP_KV_TIER_NONE;
	s->last_used_ns = dp_clock_ns();
	s->index = kv->n;
	kv->list[kv->n++] = s;
	size_t b = hash_slot(kv, id);
	s->hash_next = kv->hash[b];
	kv->hash[b] = s;
	lru_push_head(kv, s);
	*ret = s;
	return 0;
}

static void session_remove(struct dp_kv *kv, struct dp_kv_session *s)
{
	dp_kv_wb_detach(kv, s);
	dp_kv_restore_complete(kv, s); /* no page freed under a read */
	dp_kv_unit_index_del(kv, s);
	struct dp_kv_session **pp = &kv->hash[hash_slot(kv, s->id)];
	while (*pp && *pp != s)
		pp = &(*pp)->hash_next;
	if (*pp)
		*pp = s->hash_next;
	lru_unlink(kv, s);
	kv->list[s->index] = kv->list[--kv->n];
	kv->list[s->index]->index = s->index;
	dp_v4_seq_free(s->seq);
	dp_kv_dram_release(kv, s);
	dp_kv_snap_release(kv, s);
	free(s->hist);
	free(s);
}

static int hist_reserve(struct dp_kv_session *s, uint64_t n)
{
	if (n <= s->cap)
		return 0;
	uint64_t cap = s->cap ? s->cap : 256;
	while (cap < n)
		cap *= 2;
	int32_t *h = realloc(s->hist, cap * sizeof(*h));
	if (!h)
		return -ENOMEM;
	s->hist = h;
	s->cap = cap;
	return 0;
}

static uint32_t get_u32le(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* ---- accessors ----------------------------------------------------------------- */

bool dp_kv_session_lost(struct dp_kv *kv, const char *id)
{
	struct dp_kv_session *s;
	return kv && id && dp_kv_session_find(kv, id, &s) == 0 && s->lost;
}

void dp_kv_recovery(const struct dp_kv *kv, struct dp_kv_recovery *ret)
{
	const char *j = dp_journal_damaged_copy(kv->j);
	snprintf(ret->journal_copy, sizeof(ret->journal_copy), "%s", j ? j : "");
	snprintf(ret->slots_copy, sizeof(ret->slots_copy), "%s",
		 kv->slots.reset ? kv->slots.reset_name : "");
}

int dp_kv_session_create_owned(struct dp_kv *kv, const char *id, uint32_t owner_uid,
			       struct dp_kv_session **ret)
{
	struct dp_kv_session *s;
	if (!kv || !ret || !dp_kv_session_id_valid(id))
		return -EINVAL;
	if (dp_kv_session_find(kv, id, &s) == 0)
		return -EEXIST;
	int r = session_add(kv, id, &s);
	if (r < 0)
		return r;
	s->owner = owner_uid;
	*ret = s;
	return 0;
}

int dp_kv_session_create(struct dp_kv *kv, const char *id, struct dp_kv_session **ret)
{
	return dp_kv_session_create_owned(kv, id, DP_KV_OWNER_NONE, ret);
}

uint32_t dp_kv_session_owner(const struct dp_kv_session *s)
{
	return s->owner;
}

const char *dp_kv_session_id(const struct dp_kv_session *s)
{
	return s->id;
}

uint64_t dp_kv_session_len(const struct dp_kv_session *s)
{
	return s->len;
}

const int32_t *dp_kv_session_history(const struct dp_kv_session *s)
{
	return s->hist;
}

enum dp_kv_tier dp_kv_session_tier(const struct dp_kv_session *s)
{
	return s->tier;
}

bool dp_kv_session_busy(const struct dp_kv_session *s)
{
	return s->busy;
}

uint64_t dp_kv_session_idle_ns(const struct dp_kv *kv, const struct dp_kv_session *s)
{
	(void)kv;
	return s->busy ? 0 : dp_clock_ns() - s->last_used_ns;
}

size_t dp_kv_session_bytes(const struct dp_kv_session *s)
{
	switch (s->tier) {
	case DP_KV_TIER_DEVICE:
		return dp_v4_seq_bytes(s->seq);
	case DP_KV_TIER_DRAM:
		return s->n_dram * DP_KV_PAGE_BYTES;
	case DP_KV_TIER_NVME:
		return s->n_snap * DP_KV_PAGE_BYTES;
	default:
		return 0;
	}
}

int dp_kv_session_at(struct dp_kv *kv, size_t idx, struct dp_kv_session **ret)
{
	if (!kv || !ret)
		return -EINVAL;
	if (idx >= kv->n)
		return -ENOENT;
	*ret = kv->list[idx];
	return 0;
}

size_t dp_kv_session_count(const struct dp_kv *kv)
{
	return kv->n;
}

/* ---- device pages --------------------------------------------------------------- */

static void *device_page_alloc(void *ctx, size_t bytes)
{
	struct dp_kv *kv = ctx;
	void *p = dp_gpu_alloc(kv->g, bytes, DP_GPU_MEM_STATE);
	if (p)
		kv->device_pages++;
	return p;
}

static void device_page_free(void *ctx, void *page, size_t bytes)
{
	struct dp_kv *kv = ctx;
	dp_gpu_dealloc(kv->g, page, bytes, DP_GPU_MEM_STATE);
	kv->device_pages--;
}

/* CSA entries in host memory (model/v4.h): pinned host pages, outside the
 * device budget. */
static void *host_page_alloc(void *ctx, size_t bytes)
{
	struct dp_kv *kv = ctx;
	void *p = dp_gpu_host_alloc(kv->g, bytes);
	if (p)
		kv->host_state_pages++;
	return p;
}

static void host_page_free(void *ctx, void *page, size_t bytes)
{
	struct dp_kv *kv = ctx;
	dp_gpu_host_free(kv->g, page, bytes);
	kv->host_state_pages--;
}

/* ---- persistence: snapshots ------------------------------------------------------ */

/* Write the pages (host memory, refs order) as the session's new snapshot at
 * pos: the pages no held slot has yet into fresh slots, data durable, then
 * the record; only then are the old snapshot's slots released. */
static int write_snapshot(struct dp_kv *kv, struct dp_kv_session *s, uint64_t pos,
			  const struct dp_v4_page_ref *refs, void *const *pages, size_t n)
{
	size_t m = n ? n : 1;
	struct dp_kv_snap_page *sp = calloc(m, sizeof(*sp));
	struct dp_kv_snap_writes w = { calloc(m, sizeof(*w.ids)), calloc(m, sizeof(*w.slots)),
				       calloc(m, sizeof(*w.sums)), calloc(m, sizeof(*w.pages)), 0 };
	int r = -ENOMEM;

	if (!sp || !w.ids || !w.slots || !w.sums || !w.pages ||
	    (r = dp_kv_snap_plan(kv, s, pos, refs, pages, n, sp, &w)) < 0)
		goto out;
	if ((r = dp_kv_slots_write_many(&kv->slots, w.slots, w.ids, w.pages, w.n, w.sums)) < 0 ||
	    (r = dp_kv_journal_snapshot(kv->j, s, pos, sp, n, true)) < 0) {
		dp_kv_snap_unplan(kv, sp, n);
		goto out;
	}
	kv->st.pages_written += w.n;
	kv->st.pages_shared += n - w.n;
	dp_kv_snap_release(kv, s);
	s->snap = sp;
	s->n_snap = n;
	s->snap_pos = pos;
	s->has_snap = true;
	sp = NULL;
	dp_kv_snap_index(kv, s);
out:
	free(sp);
	free(w.ids);
	free(w.slots);
	free(w.sums);
	free(w.pages);
	return r;
}

int dp_kv_session_persist(struct dp_kv *kv, struct dp_kv_session *s)
{
	if (!kv || !s)
		return -EINVAL;
	int r;
	if (s->wb && (r = dp_kv_wb_settle(kv)) < 0)
		return r;
	if ((s->restore || s->srestore) && dp_kv_restore_complete(kv, s) < 0)
		return -EBADMSG;
	if (s->tier == DP_KV_TIER_NONE || s->tier == DP_KV_TIER_NVME)
		return 0; /* nothing newer than what is on NVMe */
	uint64_t pos = s->tier == DP_KV_TIER_DEVICE ? dp_v4_seq_pos(s->seq) : s->state_pos;
	if (s->has_snap && s->snap_pos == pos)
		return 0;
	if ((r = dp_kv_commit_if_behind(kv, s, pos)) < 0)
		return r;
	struct dp_v4_page_ref *refs;
	void **pages, *bounce;
	size_t n;
	if ((r = dp_kv_state_to_host(kv, s, &refs, &pages, &bounce, &n)) < 0)
		return r;
	r = write_snapshot(kv, s, pos, refs, pages, n);
	free(refs);
	free(pages);
	free(bounce);
	return r;
}

/* ---- promotion ---------------------------------------------------------------------- */

static int upload_state(struct dp_kv *kv, const struct dp_kv_session *s, uint64_t pos,
			const struct dp_v4_page_ref *refs, void *const *pages, size_t n,
			struct dp_v4_seq **ret_seq)
{
	return dp_kv_seq_from_host(kv, s, pos, refs, pages, n, ret_seq);
}

/* Read the snapshot into host memory and onto the device. A page that fails
 * its checks makes the whole snapshot unusable (-EBADMSG). */
static int restore_snapshot(struct dp_kv *kv, struct dp_kv_session *s, struct dp_v4_seq **ret_seq)
{
	size_t n = s->n_snap, bad = 0;
	void *buf = NULL;
	struct dp_v4_page_ref *refs = malloc((n ? n : 1) * sizeof(*refs));
	void **pages = malloc((n ? n : 1) * sizeof(*pages));
	struct dp_kv_slot_id *ids = malloc((n ? n : 1) * sizeof(*ids));
	uint64_t *slots = malloc((n ? n : 1) * sizeof(*slots)), *sums = malloc((n ? n : 1) * sizeof(*sums));
	int r = 0;

	if (!refs || !pages || !ids || !slots || !sums ||
	    posix_memalign(&buf, 4096, (n ? n : 1) * DP_KV_PAGE_BYTES)) {
		r = -ENOMEM;
		goto out;
	}
	for (size_t i = 0; i < n; i++) {
		const struct dp_kv_snap_page *p = &s->snap[i];
		ids[i] = (struct dp_kv_slot_id){ s->id, s->snap_pos, p->layer, p->kind, p->index };
		pages[i] = (char *)buf + i * DP_KV_PAGE_BYTES;
		refs[i] = (struct dp_v4_page_ref){ .layer = p->layer, .kind = p->kind, .index = p->index };
		slots[i] = p->slot;
		sums[i] = p->sum;
	}
	r = dp_kv_slots_read_many(&kv->slots, slots, ids, sums, pages, n, &bad);
	kv->st.corrupt_pages += bad;
	if (r == 0) {
		kv->st.pages_read += n;
		r = upload_state(kv, s, s->snap_pos, refs, pages, n, ret_seq);
	}
out:
	free(refs);
	free(pages);
	free(ids);
	free(slots);
	free(sums);
	free(buf);
	return r;
}

/* s now runs on seq, resident, its state at state_pos (the history beyond it
 * is fed again: counted as recomputed), busy and out of the LRU. */
static void resident_busy(struct dp_kv *kv, struct dp_kv_session *s, struct dp_v4_seq *seq,
			  uint64_t state_pos)
{
	s->seq = seq;
	s->tier = DP_KV_TIER_DEVICE;
	s->state_pos = state_pos;
	kv->st.recomputed_tokens += s->len - s->state_pos;
	if (!s->busy)
		lru_unlink(kv, s);
	s->busy = true;
}

int dp_kv_session_acquire(struct dp_kv *kv, struct dp_kv_session *s, struct dp_v4_seq **ret_seq)
{
	if (!kv || !s || !ret_seq)
		return -EINVAL;
	if (s->lost)
		return -ENODATA;
	struct dp_v4_seq *seq = NULL;
	int r = 0;
	uint64_t t0 = dp_clock_ns();

	switch (s->tier) {
	case DP_KV_TIER_DEVICE:
		seq = s->seq;
		break;
	case DP_KV_TIER_DRAM: {
		r = dp_kv_seq_from_pool(kv, s, &seq);
		if (r < 0)
			return r;
		dp_kv_dram_release(kv, s);
		kv->st.promotions++;
		kv->st.loads++;
		kv->st.load_ns += dp_clock_ns() - t0;
		break;
	}
	case DP_KV_TIER_NVME:
		r = restore_snapshot(kv, s, &seq);
		if (r == 0) {
			kv->st.promotions++;
			kv->st.loads++;
			kv->st.load_ns += dp_clock_ns() - t0;
			break;
		}
		if (r != -EBADMSG)
			return r;
		/* a failed load is a miss: drop the snapshot, recompute */
		dp_kv_snap_release(kv, s);
		/* fall through */
	case DP_KV_TIER_NONE:
	default:
		r = dp_v4_seq_new(kv->m, &seq);
		if (r < 0)
			return r;
		break;
	}
	resident_busy(kv, s, seq, dp_v4_seq_pos(seq));
	*ret_seq = seq;
	return 0;
}

int dp_kv_session_acquire_fresh(struct dp_kv *kv, struct dp_kv_session *s,
				struct dp_v4_seq **ret_seq)
{
	if (!kv || !s || !ret_seq)
		return -EINVAL;
	if (s->lost)
		return -ENODATA;
	struct dp_v4_seq *seq;
	int r = dp_v4_seq_new(kv->m, &seq);
	if (r < 0)
		return r;
	dp_kv_restore_complete(kv, s);
	dp_v4_seq_free(s->seq);
	dp_kv_dram_release(kv, s);
	/* the snapshot stays: the state at its position is still what that
	 * prefix of the (append-only) history gives */
	resident_busy(kv, s, seq, 0);
	*ret_seq = seq;
	return 0;
}

int dp_kv_session_acquire_async(struct dp_kv *kv, struct dp_kv_session *s,
				struct dp_v4_seq **ret_seq)
{
	if (!kv || !s || !ret_seq)
		return -EINVAL;
	if (s->lost)
		return -ENODATA;
	bool layered = s->tier == DP_KV_TIER_DRAM || (s->tier == DP_KV_TIER_NVME && kv->restore_chan);
	if (!layered)
		return dp_kv_session_acquire(kv, s, ret_seq);
	struct dp_v4_seq *seq;
	int r = dp_kv_restore_begin(kv, s, &seq);
	if (r == -EBADMSG) {
		/* the parked copy does not describe this model's pages: a miss */
		kv->st.corrupt_pages++;
		if (s->tier == DP_KV_TIER_NVME)
			dp_kv_snap_release(kv, s);
		else
			dp_kv_dram_release(kv, s);
		s->tier = DP_KV_TIER_NONE;
		s->state_pos = 0;
		return dp_kv_session_acquire(kv, s, ret_seq);
	}
	if (r < 0)
		return r;
	kv->st.promotions++;
	resident_busy(kv, s, seq, dp_v4_seq_pos(seq));
	*ret_seq = seq;
	return 0;
}

void dp_kv_session_release(struct dp_kv *kv, struct dp_kv_session *s)
{
	if (!kv || !s || !s->busy)
		return;
	if ((s->restore || s->srestore) && dp_kv_restore_complete(kv, s) < 0) {
		/* the restore failed before anyone used the state: forget it */
		dp_v4_seq_free(s->seq);
		s->seq = NULL;
		s->tier = s->has_snap ? DP_KV_TIER_NVME : DP_KV_TIER_NONE;
		s->state_pos = s->has_snap ? s->snap_pos : 0;
	}
	s->busy = false;
	if (s->seq)
		s->state_pos = dp_v4_seq_pos(s->seq);
	s->last_used_ns = dp_clock_ns();
	lru_push_head(kv, s);
}

void dp_kv_session_forget_state(struct dp_kv *kv, struct dp_kv_session *s)
{
	if (!kv || !s)
		return;
	dp_kv_restore_complete(kv, s);
	dp_v4_seq_free(s->seq);
	s->seq = NULL;
	dp_kv_dram_release(kv, s);
	if (s->has_snap) {
		s->tier = DP_KV_TIER_NVME;
		s->state_pos = s->snap_pos;
	} else {
		s->tier = DP_KV_TIER_NONE;
		s->state_pos = 0;
	}
	dp_kv_session_release(kv, s);
}

int dp_kv_session_append(struct dp_kv *kv, struct dp_kv_session *s, const int32_t *tokens,
			 uint32_t n)
{
	if (!kv || !s || (n && !tokens))
		return -EINVAL;
	if (s->lost)
		return -ENODATA;
	int r = hist_reserve(s, s->len + n);
	if (r < 0)
		return r;
	memcpy(s->hist + s->len, tokens, (size_t)n * sizeof(*tokens));
	s->len += n;
	return 0;
}

int dp_kv_flush(struct dp_kv *kv)
{
	if (!kv)
		return -EINVAL;
	dp_kv_wb_progress(kv);
	if (!kv->wb_recorded)
		return 0;
	int r = dp_journal_sync(kv->j);
	if (r == 0)
		dp_kv_wb_finalize(kv);
	return r;
}

bool dp_kv_writeback_pending(const struct dp_kv *kv)
{
	return kv && (kv->wb_head || kv->wb_recorded);
}

/* ---- demotion ----------------------------------------------------------------------- */

/* The device pages go to the pool (frozen pages a unit of the same
 * conversation already holds are shared, not copied): dp_kv_state_to_pool. */
static int device_to_dram(struct dp_kv *kv, struct dp_kv_session *s)
{
	struct dp_v4_page_ref *refs;
	uint32_t *idx;
	size_t n;
	int r = dp_kv_state_to_pool(kv, s->seq, &refs, &idx, &n, NULL);
	if (r < 0)
		return r;
	s->state_pos = dp_v4_seq_pos(s->seq);
	dp_v4_seq_free(s->seq);
	s->seq = NULL;
	s->dram_refs = refs;
	s->dram_pages = idx;
	s->n_dram = n;
	s->tier = DP_KV_TIER_DRAM;
	return 0;
}

int dp_kv_session_demote(struct dp_kv *kv, struct dp_kv_session *s, enum dp_kv_tier to)
{
	if (!kv || !s || (to != DP_KV_TIER_DRAM && to != DP_KV_TIER_NVME))
		return -EINVAL;
	if (s->busy)
		return -EBUSY;
	if (s->tier >= to)
		return 0; /* already there or lower */
	int r;
	if (to == DP_KV_TIER_DRAM) {
		if (!kv->pool.n_pages)
			return -ENOSPC;
		r = device_to_dram(kv, s);
	} else {
		r = dp_kv_session_persist(kv, s);
		if (r < 0)
			return r;
		dp_kv_state_drop_to_snap(kv, s);
	}
	if (r == 0)
		kv->st.demotions++;
	return r;
}

int dp_kv_session_evict_start(struct dp_kv *kv, struct dp_kv_session *s, uint64_t *ret_pos)
{
	if (!kv || !s || !ret_pos)
		return -EINVAL;
	if (s->busy)
		return -EBUSY;
	if (s->tier >= DP_KV_TIER_NVME) {
		*ret_pos = s->has_snap ? s->snap_pos : 0;
		return 0;
	}
	uint64_t pos = s->tier == DP_KV_TIER_DEVICE ? dp_v4_seq_pos(s->seq) : s->state_pos;
	int r = 0;
	if (s->wb)
		; /* the writeback in flight is of this state: s was idle since */
	else if (kv->wb_chan && !s->restore)
		r = dp_kv_wb_start(kv, s);
	else
		r = dp_kv_session_demote(kv, s, DP_KV_TIER_NVME); /* no io engine: here and now */
	if (r == 0) /* its client waits: not the watermarks' bounded delay */
		dp_kv_wb_expedite(kv, s);
	if (r == 0)
		*ret_pos = pos;
	return r;
}

int dp_kv_session_evict_done(struct dp_kv *kv, const struct dp_kv_session *s, uint64_t pos)
{
	if (!kv || !s)
		return -EINVAL;
	if (s->wb)
		return 1;
	if (s->tier == DP_KV_TIER_NONE && !s->has_snap)
		return pos ? -EIO : 0; /* nothing was there to write, or it was lost */
	if (s->has_snap && s->snap_pos == pos)
		return 0;
	return s->has_snap && s->snap_pos < pos ? -EAGAIN : -EIO;
}

int dp_kv_session_drop(struct dp_kv *kv, struct dp_kv_session *s)
{
	if (!kv || !s)
		return -EINVAL;
	if (s->busy)
		return -EBUSY;
	struct dp_jbuf b = { 0 };
	dp_jbuf_put_str(&b, s->id);
	int r = b.error ? b.error : dp_journal_append(kv->j, DP_JREC_DROP, b.data, b.len);
	dp_jbuf_fini(&b);
	if (r == 0)
		r = dp_journal_sync(kv->j);
	if (r < 0)
		return r;
	kv->st.drops++;
	session_remove(kv, s); /* slots are free once the drop is durable */
	return 0;
}

/* Pages held in a tier and that tier's page budget. */
static uint64_t tier_pages(struct dp_kv *kv, enum dp_kv_tier t)
{
	switch (t) {
	case DP_KV_TIER_DEVICE:
		return kv->device_pages;
	case DP_KV_TIER_DRAM:
		return (uint64_t)kv->pool.n_pages - kv->pool.n_free;
	case DP_KV_TIER_NVME:
		return kv->slots.n_used;
	default:
		return 0;
	}
}

static uint64_t tier_budget(struct dp_kv *kv, enum dp_kv_tier t)
{
	switch (t) {
	case DP_KV_TIER_DEVICE:
		return kv->opts.device_bytes / DP_KV_PAGE_BYTES;
	case DP_KV_TIER_DRAM:
		return kv->pool.n_pages;
	case DP_KV_TIER_NVME:
		return kv->opts.nvme_bytes / DP_KV_SLOT_BYTES;
	default:
		return 0;
	}
}

static int balance(struct dp_kv *kv, bool async)
{
	int moved = 0;
	for (int t = DP_KV_TIER_DEVICE; t <= DP_KV_TIER_NVME; t++) {
		uint64_t budget = tier_budget(kv, t);
		/* pages already being written out are as good as gone */
		if (!budget || tier_pages(kv, t) - kv->wb_leaving[t] <= (uint64_t)(budget * kv->opts.high_watermark))
			continue;
		uint64_t low = (uint64_t)(budget * kv->opts.low_watermark);
		/* oldest idle first */
		for (struct dp_kv_session *s = kv->lru_tail, *prev;
		     s && tier_pages(kv, t) - kv->wb_leaving[t] > low; s = prev) {
			prev = s->lru_prev;
			if (s->tier != (enum dp_kv_tier)t || s->wb)
				continue;
			int r = -ENOSPC;
			if (t == DP_KV_TIER_DEVICE && kv->pool.n_pages)
				r = dp_kv_session_demote(kv, s, DP_KV_TIER_DRAM);
			if (r == -ENOSPC && t != DP_KV_TIER_NVME) {
				if (async && kv->wb_chan)
					r = dp_kv_wb_start(kv, s);
				else
					r = dp_kv_session_demote(kv, s, DP_KV_TIER_NVME);
			}
			if (t == DP_KV_TIER_NVME) {
				/* the disk is over budget: forget the state, keep the
				 * history (the next turn recomputes) */
				dp_kv_snap_release(kv, s);
				s->tier = DP_KV_TIER_NONE;
				s->state_pos = 0;
				r = 0;
			}
			if (r == 0)
				moved++;
		}
	}
	return moved;
}

int dp_kv_balance(struct dp_kv *kv)
{
	return balance(kv, false);
}

int dp_kv_balance_async(struct dp_kv *kv)
{
	return balance(kv, true);
}

/* ---- recovery ----------------------------------------------------------------------- */


/* Forget s's snapshot (replay: its slots are not claimed yet). */
static void snap_forget(struct dp_kv_session *s)
{
	free(s->snap);
	s->snap = NULL;
	s->n_snap = 0;
	s->has_snap = false;
}

static void hist_clear(struct dp_kv_session *s)
{
	s->len = s->committed = 0;
}

/* Journal damage took part of id's history: what is left of it is not its
 * context, so it keeps none, and it stays lost (dp_kv_session_lost) until
 * it is dropped. */
static int mark_lost(struct dp_kv *kv, const char *id)
{
	struct dp_kv_session *s;
	if (dp_kv_session_find(kv, id, &s) < 0 && session_add(kv, id, &s) < 0)
		return -ENOMEM;
	hist_clear(s);
	snap_forget(s);
	s->lost = s->lost_now = true;
	return 0;
}

/* A client's session id or a prefix unit's. */
static bool id_valid(const char *id)
{
	struct dp_kv_tenant t;
	return dp_kv_session_id_valid(id) || dp_kv_unit_id_parse(id, &t);
}

/* After the replay: every unit is indexed by its tokens. A unit without
 * tokens (lost to journal damage) is of no use: dropped. */
static void units_index(struct dp_kv *kv)
{
	for (size_t i = 0; i < kv->n;) {
		struct dp_kv_session *s = kv->list[i];
		struct dp_kv_tenant t;
		if (!dp_kv_unit_id_parse(s->id, &t)) {
			i++;
			continue;
		}
		s->tenant = t;
		if (s->lost || s->len == 0 || dp_kv_unit_index_add(kv, s) < 0) {
			if (dp_kv_session_drop(kv, s) == 0)
				continue; /* the list's last moved to i */
			s->unit = false;
		}
		i++;
	}
}

static int replay_one(void *ctx, enum dp_journal_type type, const uint8_t *payload, uint32_t len)
{
	struct dp_kv *kv = ctx;
	struct dp_jreader rd = { payload, len, 0 };
	char id[DP_KV_SESSION_ID_MAX + 1];
	struct dp_kv_session *s = NULL;

	if (dp_jread_str(&rd, id, sizeof(id)) < 0 || !id_valid(id))
		return -EBADMSG;
	bool exists = dp_kv_session_find(kv, id, &s) == 0;
	switch (type) {
	case DP_JREC_HISTORY:
	case DP_JREC_RESET: {
		uint64_t new_len = dp_jread_u64(&rd);
		uint32_t n = dp_jread_u32(&rd);
		/* a RESET holds the whole history: its length is its tokens (else
		 * the history would be sized, and read, past what it holds) */
		if (rd.error || n > rd.left / 4 || new_len < n ||
		    (type == DP_JREC_RESET && new_len != n))
			return -EBADMSG;
		const uint8_t *tokens = rd.p;
		rd.p += (size_t)n * 4;
		rd.left -= n * 4;
		bool lost = false;
		uint32_t owner = DP_KV_OWNER_NONE;
		while (rd.left >= 4) {
			uint16_t tag = dp_jread_u16(&rd), elen = dp_jread_u16(&rd);
			if (elen > rd.left)
				break; /* a later format's: its fields are its own */
			if (tag == DP_KV_JEXT_OWNER && elen == 4)
				owner = get_u32le(rd.p);
			lost |= tag == DP_KV_JEXT_LOST;
			rd.p += elen;
			rd.left -= elen;
		}
		if (!exists && session_add(kv, id, &s) < 0)
			return -ENOMEM;
		if (type == DP_JREC_RESET) {
			/* the whole session as of a compaction */
			hist_clear(s);
			snap_forget(s);
			s->owner = owner;
			s->lost = lost;
			s->lost_now = false;
			if (lost)
				return 0;
		} else if (new_len == n && (s->len || s->lost)) {
			/* a history that starts over: the session was dropped and
			 * made again, and the drop's record was damaged */
			hist_clear(s);
			snap_forget(s);
			s->owner = owner;
			s->lost = s->lost_now = false;
		} else {
			if (owner != DP_KV_OWNER_NONE) /* records of older builds have none */
				s->owner = owner;
			if (s->lost)
				return 0; /* the rest of a lost history */
			if (s->len + n != new_len) /* a gap: a record of it was lost to damage */
				return mark_lost(kv, id);
		}
		if (hist_reserve(s, new_len) < 0)
			return -ENOMEM;
		for (uint32_t i = 0; i < n; i++)
			s->hist[s->len + i] = (int32_t)get_u32le(tokens + 4 * (size_t)i);
		s->len = new_len;
		s->committed = new_len;
		return 0;
	}
	case DP_JREC_SNAPSHOT: {
		uint64_t pos = dp_jread_u64(&rd);
		uint32_t n = dp_jread_u32(&rd);
		if (rd.error || n > rd.left / 23)
			return -EBADMSG;
		if (exists && s->lost)
			return 0;
		if (!exists) {
			/* a state with no history before it: its history records
			 * were lost (a snapshot at 0 of an empty session needs none) */
			return pos == 0 ? 0 : mark_lost(kv, id);
		}
		struct dp_kv_snap_page *sp = calloc(n ? n : 1, sizeof(*sp));
		if (!sp)
			return -ENOMEM;
		for (uint32_t i = 0; i < n; i++) {
			sp[i].layer = dp_jread_u16(&rd);
			sp[i].kind = dp_jread_u8(&rd);
			sp[i].index = dp_jread_u32(&rd);
			sp[i].slot = dp_jread_u64(&rd);
			sp[i].sum = dp_jread_u64(&rd);
		}
		if (rd.error) {
			free(sp);
			return -EBADMSG;
		}
		free(s->snap); /* slots are marked after the replay */
		s->snap = sp;
		s->n_snap = n;
		s->snap_pos = pos;
		s->has_snap = true;
		return 0;
	}
	case DP_JREC_DROP:
		if (exists) {
			snap_forget(s);
			session_remove(kv, s);
		}
		return 0;
	default:
		return -EBADMSG;
	}
}

/* A damaged span of the journal (journal.h: Replay). A record named by its
 * verified key and type loses exactly what it held: a snapshot (the state
 * is recomputed from the history, which is whole), a drop (applied all the
 * same), or a turn of history (the session is lost). A salvaged key is not
 * trusted to say more than "this session may have lost a turn": it is lost,
 * if the bytes form a valid id at all. With no key, the session's next
 * history record (a gap) is what finds the loss. */
static int replay_damage(void *ctx, const struct dp_journal_damage *d)
{
	struct dp_kv *kv = ctx;
	struct dp_kv_session *s;
	if (!id_valid(d->key))
		return 0;
	bool exists = dp_kv_session_find(kv, d->key, &s) == 0;
	if (d->key_verified && d->type == DP_JREC_SNAPSHOT) {
		if (exists) /* the older snapshot's slots may be another's now */
			snap_forget(s);
		return 0;
	}
	if (d->key_verified && d->type == DP_JREC_DROP) {
		if (exists) {
			snap_forget(s);
			session_remove(kv, s);
		}
		return 0;
	}
	return mark_lost(kv, d->key);
}

/* Whether every page of s's snapshot is in a slot the slot file holds. One
 * past its end (the file lost its tail or was replaced; or a record names
 * slot 2^40) is not there to restore, and claiming it would grow the file
 * to reach it, up to the disk's size. */
static bool snap_in_file(const struct dp_kv *kv, const struct dp_kv_session *s)
{
	for (size_t k = 0; k < s->n_snap; k++)
		if (s->snap[k].slot >= kv->slots.n_slots)
			return false;
	return true;
}

/* After the replay: claim the live snapshots' slots, set tiers, count the
 * sessions this open found lost. */
static void settle(struct dp_kv *kv)
{
	for (size_t i = 0; i < kv->n; i++) {
		struct dp_kv_session *s = kv->list[i];
		if (s->has_snap && s->snap_pos > s->len) {
			/* a state ahead of its history: the history lost turns
			 * (a snapshot is journaled after the turns it holds) */
			hist_clear(s);
			s->lost = s->lost_now = true;
		}
		if (s->has_snap && !s->lost && !kv->slots.reset && !snap_in_file(kv, s)) {
			kv->st.corrupt_pages += s->n_snap; /* missing: no page can check */
			snap_forget(s);
		}
		if (s->has_snap && (s->lost || kv->slots.reset))
			snap_forget(s); /* a reset slot file holds none of them */
		if (s->has_snap) {
			for (size_t k = 0; k < s->n_snap; k++)
				dp_kv_slots_mark(&kv->slots, s->snap[k].slot);
			s->tier = DP_KV_TIER_NVME;
			s->state_pos = s->snap_pos;
		} else {
			s->tier = DP_KV_TIER_NONE;
			s->state_pos = 0;
		}
		kv->st.journal_sessions_lost += s->lost_now;
		s->lost_now = false;
	}
}

static int emit_live(void *ctx, struct dp_journal *nj)
{
	struct dp_kv *kv = ctx;
	for (size_t i = 0; i < kv->n; i++) {
		struct dp_kv_session *s = kv->list[i];
		struct dp_jbuf b = { 0 };
		dp_jbuf_put_str(&b, s->id);
		dp_jbuf_put_u64(&b, s->committed);
		dp_jbuf_put_u32(&b, (uint32_t)s->committed);
		for (uint64_t t = 0; t < s->committed; t++)
			dp_jbuf_put_u32(&b, (uint32_t)s->hist[t]);
		dp_kv_jbuf_put_owner(&b, s);
		if (s->lost)
			dp_kv_jbuf_put_ext(&b, DP_KV_JEXT_LOST, 0);
		int r = b.error ? b.error : dp_journal_append(nj, DP_JREC_RESET, b.data, b.len);
		dp_jbuf_fini(&b);
		if (r < 0)
			return r;
		/* one fdatasync for the whole file, at the end of the compaction */
		if (s->has_snap &&
		    (r = dp_kv_journal_snapshot(nj, s, s->snap_pos, s->snap, s->n_snap, false)) < 0)
			return r;
	}
	return 0;
}

int dp_kv_compact(struct dp_kv *kv)
{
	/* the new file holds installed snapshots only: install every one first */
	int r = dp_kv_wb_settle(kv);
	if (r < 0)
		return r;
	return dp_journal_compact(kv->j, emit_live, kv);
}

/*
 * The state directory is trusted only if this process's user owns it and
 * nobody else may write to it: another user who can create files there can
 * plant a `journal` link to a file of ours (a root daemon would truncate it)
 * or a journal of their making. Checked on the directory fd that every
 * state file is then opened in, so the directory checked is the one used.
 */
static int state_dir_open(const char *dir, char *err, size_t err_len)
{
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0) {
		int e = -errno;
		if (err && err_len)
			snprintf(err, err_len, "cannot open state directory %s: %s", dir, strerror(-e));
		return e;
	}
	struct stat st;
	if (fstat(fd, &st) < 0) {
		int e = -errno;
		close(fd);
		return e;
	}
	unsigned mode = (unsigned)(st.st_mode & 07777), uid = (unsigned)st.st_uid;
	const char *why = st.st_uid != geteuid() ? "is not owned by this process's user"
			  : (st.st_mode & (S_IWGRP | S_IWOTH)) ? "is writable by group or others"
							       : NULL;
	if (why) {
		if (err && err_len)
			snprintf(err, err_len, "state directory %s (owner uid %u, mode %04o) %s (uid %u): "
				 "refusing it; it must be owned by that user and writable by no one else "
				 "(chown/chmod go-w it, or choose another state_dir)", dir, uid, mode, why,
				 (unsigned)geteuid());
		close(fd);
		return -EPERM;
	}
	return fd;
}

int dp_kv_open(const struct dp_kv_opts *opts, struct dp_v4_model *m, struct dp_kv **ret_kv,
	       char *err, size_t err_len)
{
	if (!opts || !opts->state_dir || !m || !ret_kv)
		return -EINVAL;
	struct dp_kv *kv = calloc(1, sizeof(*kv));
	if (!kv)
		return -ENOMEM;
	kv->dirfd = -1;
	kv->opts = *opts;
	snprintf(kv->state_dir, sizeof(kv->state_dir), "%s", opts->state_dir);
	kv->opts.state_dir = kv->state_dir;
	if (kv->opts.high_watermark <= 0 || kv->opts.high_watermark > 1)
		kv->opts.high_watermark = 0.90;
	if (kv->opts.low_watermark <= 0 || kv->opts.low_watermark > kv->opts.high_watermark)
		kv->opts.low_watermark = 0.75 * kv->opts.high_watermark / 0.90;
	kv->m = m;
	kv->g = dp_v4_model_gpu(m);
	kv->slots.fd = -1;

	int r = kv->dirfd = state_dir_open(kv->state_dir, err, err_len);
	if (r >= 0)
		r = dp_kv_slots_open(&kv->slots, kv->dirfd, kv->state_dir, opts->direct_io,
				     opts->nvme_bytes, opts->io, err, err_len);
	struct dp_journal_replay cb = { replay_one, replay_damage, kv };
	if (r == 0)
		r = dp_journal_open(kv->dirfd, kv->state_dir, &cb, &kv->j, err, err_len);
	if (r == 0) {
		r = dp_kv_pool_init(&kv->pool, opts->dram_bytes, opts->numa_node);
		if (r < 0 && err && err_len)
			snprintf(err, err_len, "cannot allocate the %llu-byte DRAM tier: %s",
				 (unsigned long long)opts->dram_bytes, strerror(-r));
	}
	if (r < 0) {
		dp_kv_close(kv);
		return r;
	}
	if (opts->io) {
		/* restores first, writeback last (the io thread serves by priority) */
		dp_io_chan_set_priority(kv->slots.chan, DP_IO_PRIO_LOW);
		int rr = dp_io_chan_new(opts->io, 8192, &kv->restore_chan);
		if (rr == 0)
			dp_io_chan_set_priority(kv->restore_chan, DP_IO_PRIO_HIGH);
		else
			kv->restore_chan = NULL; /* restores fall back to synchronous reads */
		/* asynchronous writebacks write through the restore queue
		 * (rqueue.c): without it, demotions to NVMe stay synchronous */
		if (kv->restore_chan && dp_io_chan_new(opts->io, 8192, &kv->wb_chan) == 0)
			dp_io_chan_set_priority(kv->wb_chan, DP_IO_PRIO_LOW);
		else
			kv->wb_chan = NULL;
	}
	if (opts->io && kv->pool.n_pages) {
		/* NVMe reads land in the DRAM tier's pages directly */
		int rr = dp_io_mem_register(opts->io, kv->pool.mem.addr, kv->pool.mem.mapped,
					    &kv->pool_region);
		kv->pool_registered = rr == 0;
	}
	settle(kv);
	units_index(kv);
	for (size_t i = 0; i < kv->n; i++) /* the replayed snapshots' slots may be shared */
		if (kv->list[i]->has_snap)
			dp_kv_snap_index(kv, kv->list[i]);
	kv->st.slot_file_resets = kv->slots.reset;
	struct dp_journal_stats js;
	dp_journal_stats(kv->j, &js);
	kv->st.journal_damaged_records = js.damaged_records;
	kv->st.journal_damaged_bytes = js.damaged_bytes;
	kv->st.journal_repaired_records = js.repaired_records;
	if (js.damaged_records || js.repaired_records || kv->slots.reset) {
		/* Rewrite the journal from what was recovered (the damaged one is
		 * kept aside): later opens do not meet the damage again, and no
		 * snapshot names a slot of the file set aside. If this fails the
		 * next open finds the same damage: nothing is lost by going on. */
		dp_kv_compact(kv);
	}
	kv->st.direct_io = kv->slots.direct;
	struct dp_v4_page_ops ops = { device_page_alloc, device_page_free, kv };
	dp_v4_model_set_page_ops(m, &ops);
	struct dp_v4_page_ops hops = { host_page_alloc, host_page_free, kv };
	dp_v4_model_set_csa_host(m, dp_v4_model_csa_host(m), &hops);
	*ret_kv = kv;
	return 0;
}

void dp_kv_close(struct dp_kv *kv)
{
	if (!kv)
		return;
	if (kv->j)
		dp_kv_wb_settle(kv);
	while (kv->n)
		session_remove(kv, kv->list[kv->n - 1]);
	dp_kv_wb_finalize(kv); /* sessionless now: frees what a failed sync kept */
	if (kv->m) {
		dp_v4_model_set_page_ops(kv->m, NULL);
		dp_v4_model_set_csa_host(kv->m, dp_v4_model_csa_host(kv->m), NULL);
	}
	dp_journal_close(kv->j);
	dp_kv_restore_queue_free(kv);
	dp_io_chan_free(kv->restore_chan);
	dp_io_chan_free(kv->wb_chan);
	dp_kv_slots_close(&kv->slots);
	if (kv->pool_registered)
		dp_io_mem_unregister(kv->opts.io, kv->pool_region);
	dp_kv_pool_fini(&kv->pool);
	if (kv->dirfd >= 0)
		close(kv->dirfd);
	free(kv->list);
	free(kv->hash);
	free(kv->units);
	free(kv);
}

size_t dp_kv_take_stalls(struct dp_kv *kv, struct dp_kv_stall *out, size_t max)
{
	size_t n = 0;
	for (; kv && n < max && kv->n_stalls; n++) {
		out[n] = kv->stalls[kv->stall_head];
		kv->stall_head = (kv->stall_head + 1) % DP_KV_STALL_SPANS;
		kv->n_stalls--;
	}
	return n;
}

void dp_kv_stats(const struct dp_kv *kv, struct dp_kv_stats *ret)
{
	*ret = kv->st;
	memset(ret->pages, 0, sizeof(ret->pages));
	memset(ret->sessions, 0, sizeof(ret->sessions));
	for (int t = 0; t < DP_KV_TIER_MAX; t++) {
		ret->pages[t] = tier_pages((struct dp_kv *)kv, t);
		ret->bytes[t] = ret->pages[t] * DP_KV_PAGE_BYTES;
		ret->budget[t] = tier_budget((struct dp_kv *)kv, t) * DP_KV_PAGE_BYTES;
	}
	ret->lost_sessions = 0;
	for (size_t i = 0; i < kv->n; i++) {
		ret->sessions[kv->list[i]->tier]++;
		ret->lost_sessions += kv->list[i]->lost;
	}
	struct dp_journal_stats js;
	dp_journal_stats(kv->j, &js);
	ret->journal_bytes = js.bytes;
	ret->compactions = js.compactions;
	if (kv->restore_chan)
		dp_io_chan_busy(kv->restore_chan, &ret->restore_io_ns, &ret->restore_io_bytes);
	ret->host_state_bytes = kv->host_state_pages * DP_KV_PAGE_BYTES;
	ret->units = kv->n_units;
	ret->writeback_pages = kv->wb_pages;
}
