/* SPDX-License-Identifier: MIT */
/*
 * kvcache/unit.c — prefix units (kvcache.h, "Prefix units"): finding the
 * longest unit a prompt starts with, starting a sequence from it, leaving
 * new ones.
 *
 * A unit is a session (kvcache.c keeps, journals, demotes and restores it
 * like any other); what this file adds is the index by token prefix and the
 * rule that a unit's state is never changed: a fork copies it, or lends the
 * unit's own sequence while it comes back from NVMe and puts the unit back
 * onto its snapshot afterwards.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/macros.h"
#include "kvcache/kvcache-internal.h"

#define UNITS_DEFAULT 4096u

bool dp_kv_session_is_unit(const struct dp_kv_session *s)
{
	return s && s->unit;
}

size_t dp_kv_unit_count(const struct dp_kv *kv)
{
	return kv ? kv->n_units : 0;
}

static bool same_tenant(const struct dp_kv_tenant *a, const struct dp_kv_tenant *b)
{
	return a->tag[0] == b->tag[0] && a->tag[1] == b->tag[1];
}

/* The unit of tenant t holding exactly tokens[0..n) (key: their chain key),
 * verified id by id. */
static struct dp_kv_session *unit_exact(struct dp_kv *kv, const struct dp_kv_tenant *t,
                                        uint64_t key, const int32_t *tokens, uint64_t n)
{
	if (!kv->units_len)
		return NULL;
	for (struct dp_kv_session *u = kv->units[key & (kv->units_len - 1)]; u; u = u->unit_next)
		if (u->unit_key == key && u->len == n && same_tenant(&u->tenant, t) &&
		    !memcmp(u->hist, tokens, (size_t)n * sizeof(*tokens)))
			return u;
	return NULL;
}

static bool usable(const struct dp_kv_session *u)
{
	return !u->busy && !u->lost && u->tier != DP_KV_TIER_NONE && u->state_pos == u->len;
}

/* A unit lent from NVMe whose snapshot a twin can restore once more. */
static bool twinnable(const struct dp_kv *kv, const struct dp_kv_session *u)
{
	return u->busy && (u->lent || u->twins) && !u->twin_bad && !u->lost && u->has_snap &&
	       u->snap_pos == u->len && kv->restore_chan && u->twins < UINT32_MAX;
}

/* The longest unit of t that tokens[0..max) starts with: usable, or (twins
 * true) lent from NVMe and twinnable. */
static struct dp_kv_session *longest(struct dp_kv *kv, const struct dp_kv_tenant *t,
                                     const int32_t *tokens, uint64_t max, bool twins)
{
	if (!kv->n_units || !max)
		return NULL;
	uint64_t *keys = malloc(max * sizeof(*keys));
	if (!keys)
		return NULL;
	uint64_t key = dp_kv_unit_seed(kv, t);
	for (uint64_t i = 0; i < max; i++)
		keys[i] = key = dp_kv_unit_step(kv, key, tokens[i]);
	struct dp_kv_session *found = NULL;
	for (uint64_t n = max; n > 0 && !found; n--) {
		struct dp_kv_session *u = unit_exact(kv, t, keys[n - 1], tokens, n);
		if (u && (usable(u) || (twins && twinnable(kv, u))))
			found = u;
	}
	free(keys);
	return found;
}

int dp_kv_unit_find(struct dp_kv *kv, const struct dp_kv_tenant *t, const int32_t *tokens,
                    uint64_t max, struct dp_kv_session **ret)
{
	if (!kv || !t || (max && !tokens) || !ret)
		return -EINVAL;
	struct dp_kv_session *u = longest(kv, t, tokens, max, false);
	if (!u)
		return -ENOENT;
	*ret = u;
	return (int)(u->len > INT32_MAX ? INT32_MAX : u->len);
}

/* A copy of a unit's device or DRAM state in a new sequence. */
static int copy_state(struct dp_kv *kv, struct dp_kv_session *u, struct dp_v4_seq **ret_seq)
{
	if (u->tier == DP_KV_TIER_DRAM)
		return dp_kv_seq_from_pool(kv, u, ret_seq);
	struct dp_v4_page_ref *refs = NULL;
	void **pages = NULL, *bounce = NULL;
	size_t n = 0;
	int r = dp_kv_state_to_host(kv, u, &refs, &pages, &bounce, &n);
	if (r == 0)
		r = dp_kv_seq_from_host(kv, u, u->state_pos, refs, pages, n, ret_seq);
	if (r == 0) /* the unit's own sequence's tags (a device unit) */
		dp_kv_seq_copy_tags(*ret_seq, refs, n);
	free(refs);
	free(pages);
	free(bounce);
	return r;
}

static void unit_drop(struct dp_kv *kv, struct dp_kv_session *u, bool corrupt)
{
	if (dp_kv_session_drop(kv, u) < 0) {
		/* the drop is not durable: at least never serve it again */
		dp_kv_unit_index_del(kv, u);
		return;
	}
	if (corrupt)
		kv->st.units_corrupt++;
	else
		kv->st.units_dropped++;
}

/* A twin of u (lent from NVMe): the same snapshot restored layer by layer
 * into a sequence of its own. Its page list is a copy; the slots, the id
 * (which the slots' headers name) and the tokens are u's, which stays busy
 * until the twin is returned. */
static int twin_restore(struct dp_kv *kv, struct dp_kv_session *u, struct dp_kv_session **ret_twin,
                        struct dp_v4_seq **ret_seq)
{
	struct dp_kv_session *tw = calloc(1, sizeof(*tw));
	struct dp_kv_snap_page *snap = malloc((u->n_snap ? u->n_snap : 1) * sizeof(*snap));
	if (!tw || !snap) {
		free(tw);
		free(snap);
		return -ENOMEM;
	}
	memcpy(snap, u->snap, u->n_snap * sizeof(*snap));
	memcpy(tw->id, u->id, sizeof(tw->id));
	tw->hist = u->hist; /* borrowed: u is busy, nothing appends to a unit */
	tw->len = tw->committed = u->len;
	tw->owner = u->owner;
	tw->tier = DP_KV_TIER_NVME;
	tw->state_pos = tw->snap_pos = u->snap_pos;
	tw->snap = snap;
	tw->n_snap = u->n_snap;
	tw->has_snap = true;
	tw->busy = true;
	tw->unit = true;
	tw->tenant = u->tenant;
	tw->unit_key = u->unit_key;
	tw->twin_of = u;
	struct dp_v4_seq *seq;
	int r = dp_kv_restore_begin(kv, tw, &seq);
	if (r < 0) {
		free(snap);
		free(tw);
		return r;
	}
	tw->seq = seq;
	tw->tier = DP_KV_TIER_DEVICE;
	u->twins++;
	kv->st.promotions++;
	*ret_twin = tw;
	*ret_seq = seq;
	return 0;
}

/* u's lend and twins are all back: it goes back on its snapshot and the LRU
 * (or, if a page of it failed its checks, it goes). */
static void unit_settle(struct dp_kv *kv, struct dp_kv_session *u)
{
	if (u->lent || u->twins)
		return;
	bool bad = u->twin_bad;
	u->twin_bad = false;
	dp_kv_session_release(kv, u);
	if (bad)
		unit_drop(kv, u, true);
}

int dp_kv_unit_fork(struct dp_kv *kv, const struct dp_kv_tenant *t, const int32_t *tokens,
                    uint64_t max, bool layered, struct dp_v4_seq **ret_seq,
                    struct dp_kv_session **ret_unit)
{
	if (!kv || !t || (max && !tokens) || !ret_seq || !ret_unit)
		return -EINVAL;
	for (;;) {
		struct dp_kv_session *u = longest(kv, t, tokens, max, layered);
		if (!u) {
			kv->st.prefix_misses++;
			*ret_seq = NULL;
			*ret_unit = NULL;
			return 0;
		}
		struct dp_v4_seq *seq = NULL;
		int r;
		if (u->busy) { /* lent: a twin restores its snapshot once more */
			struct dp_kv_session *tw;
			r = twin_restore(kv, u, &tw, &seq);
			if (r == -EBADMSG) { /* its page list does not fit: never again */
				u->twin_bad = true;
				continue;
			}
			if (r < 0)
				return r;
			*ret_unit = tw;
		} else if (u->tier == DP_KV_TIER_DEVICE || u->tier == DP_KV_TIER_DRAM) {
			r = copy_state(kv, u, &seq);
			if (r == -EBADMSG) { /* its pages do not describe this model's */
				unit_drop(kv, u, true);
				continue;
			}
			if (r < 0)
				return r;
			dp_kv_lru_touch(kv, u);
			*ret_unit = NULL;
		} else {
			r = layered ? dp_kv_session_acquire_async(kv, u, &seq)
			            : dp_kv_session_acquire(kv, u, &seq);
			if (r < 0)
				return r;
			if (dp_v4_seq_pos(seq) != u->len) {
				/* its snapshot failed its checks: acquire fell
				 * back to recomputing; the unit goes */
				dp_kv_unit_return(kv, u, true);
				continue;
			}
			u->lent = true;
			*ret_unit = u;
		}
		kv->st.prefix_hits++;
		kv->st.prefix_cached_tokens += u->len;
		*ret_seq = seq;
		return (int)(u->len > INT32_MAX ? INT32_MAX : u->len);
	}
}

int dp_kv_session_seed(struct dp_kv *kv, struct dp_kv_session *s, const struct dp_kv_tenant *t,
                       struct dp_v4_seq **ret_seq)
{
	if (!kv || !s || !t || !ret_seq || !s->busy || !s->seq || s->unit)
		return -EINVAL;
	if (dp_v4_seq_pos(s->seq) != 0 || s->len < 2 || s->restore)
		return 0;
	struct dp_v4_seq *seq = NULL;
	struct dp_kv_session *lent = NULL;
	int got = dp_kv_unit_fork(kv, t, s->hist, s->len - 1, false, &seq, &lent);
	if (got <= 0)
		return got;
	struct dp_v4_seq *copy = seq;
	int r = 0;
	if (lent) { /* the unit's own sequence: s takes a copy */
		copy = NULL;
		r = copy_state(kv, lent, &copy);
		dp_kv_unit_return(kv, lent, false);
	}
	if (r < 0)
		return r;
	dp_v4_seq_free(s->seq);
	s->seq = copy;
	s->state_pos = dp_v4_seq_pos(copy);
	/* the acquire counted the whole history as to be recomputed */
	kv->st.recomputed_tokens -=
	    kv->st.recomputed_tokens < s->state_pos ? kv->st.recomputed_tokens : s->state_pos;
	*ret_seq = copy;
	return got;
}

/* An adopted unit from the shared tier goes: its reads are all in first
 * (the tier writes into the restore's staging, never after this). */
static void shared_unit_free(struct dp_kv *kv, struct dp_kv_session *u, bool bad)
{
	if (u->srestore && dp_kv_srestore_complete(kv, u) < 0)
		bad = true;
	if (u->seq && dp_v4_seq_poisoned(u->seq))
		bad = true;
	dp_v4_seq_free(u->seq);
	if (bad) {
		kv->st.shared_units_corrupt++;
		kv->shared_bad[(kv->shared_bad_head + kv->n_shared_bad) %
		               DP_ARRAY_SIZE(kv->shared_bad)] = u->shared_cookie;
		if (kv->n_shared_bad < DP_ARRAY_SIZE(kv->shared_bad))
			kv->n_shared_bad++;
		else
			kv->shared_bad_head =
			    (kv->shared_bad_head + 1) % DP_ARRAY_SIZE(kv->shared_bad);
	} else {
		kv->st.shared_units_restored++;
	}
	free(u->hist);
	free(u);
}

void dp_kv_unit_return(struct dp_kv *kv, struct dp_kv_session *u, bool bad)
{
	if (!kv || !u || !u->busy)
		return;
	if (u->shared_unit) {
		shared_unit_free(kv, u, bad);
		return;
	}
	if (u->restore && dp_kv_restore_complete(kv, u) < 0)
		bad = true;
	dp_v4_seq_free(u->seq);
	u->seq = NULL;
	if (u->twin_of) {
		struct dp_kv_session *of = u->twin_of;
		free(u->snap); /* the list only: the slots are of's */
		free(u);
		of->twins--;
		of->twin_bad |= bad;
		unit_settle(kv, of);
		return;
	}
	if (u->has_snap && u->snap_pos == u->len) {
		u->tier = DP_KV_TIER_NVME;
		u->state_pos = u->snap_pos;
	} else {
		u->tier = DP_KV_TIER_NONE;
		u->state_pos = 0;
		bad = true;
	}
	u->lent = false;
	u->twin_bad |= bad;
	unit_settle(kv, u);
}

/* Past max_units: the least recently used idle unit goes. */
static void units_trim(struct dp_kv *kv)
{
	uint32_t max = kv->opts.max_units ? kv->opts.max_units : UNITS_DEFAULT;
	while (kv->n_units >= max) {
		struct dp_kv_session *v = kv->lru_tail;
		while (v && (!v->unit || v->busy))
			v = v->lru_prev;
		if (!v)
			return;
		unit_drop(kv, v, false);
	}
}

/* s takes seq's state: DRAM pages when the pool has room (sharing the
 * frozen pages earlier units of the conversation hold: dp_kv_state_to_pool),
 * else a device sequence of its own. */
static int unit_state(struct dp_kv *kv, struct dp_kv_session *s, struct dp_v4_seq *seq)
{
	uint64_t copied = 0;
	int r = kv->pool.n_pages ? dp_kv_state_to_pool(kv, seq, &s->dram_refs, &s->dram_pages,
	                                               &s->n_dram, &copied)
	                         : -ENOSPC;
	if (r == 0) {
		s->tier = DP_KV_TIER_DRAM;
		s->state_pos = dp_v4_seq_pos(seq);
		kv->st.unit_copy_bytes += copied;
		kv->st.unit_shared_bytes += s->n_dram * DP_KV_PAGE_BYTES - copied;
		return 0;
	}
	if (r != -ENOSPC)
		return r;
	/* through a host bounce: the backend copies only between host and device */
	size_t n = dp_v4_seq_pages(seq, NULL, 0);
	struct dp_v4_page_ref *refs = malloc((n ? n : 1) * sizeof(*refs));
	void *bounce = NULL;
	void **pages = malloc((n ? n : 1) * sizeof(*pages));
	if (!refs || !pages || posix_memalign(&bounce, 4096, (n ? n : 1) * DP_KV_PAGE_BYTES)) {
		free(pages);
		free(refs);
		return -ENOMEM;
	}
	dp_v4_seq_pages(seq, refs, n);
	r = 0;
	for (size_t i = 0; i < n && r == 0; i++) {
		pages[i] = (char *)bounce + i * DP_KV_PAGE_BYTES;
		r = dp_kv_page_out(kv, pages[i], &refs[i]);
	}
	struct dp_v4_seq *copy = NULL;
	if (r == 0)
		r = dp_kv_seq_from_host(kv, s, dp_v4_seq_pos(seq), refs, pages, n, &copy);
	if (r == 0)
		dp_kv_seq_copy_tags(copy, refs, n);
	free(pages);
	free(bounce);
	free(refs);
	if (r < 0)
		return r;
	s->seq = copy;
	s->tier = DP_KV_TIER_DEVICE;
	s->state_pos = dp_v4_seq_pos(copy);
	kv->st.unit_copy_bytes += n * DP_KV_PAGE_BYTES;
	return 0;
}

int dp_kv_unit_leave(struct dp_kv *kv, const struct dp_kv_tenant *t, const int32_t *tokens,
                     uint64_t n, struct dp_v4_seq *seq)
{
	if (!kv || !t || !n || !tokens || !seq)
		return -EINVAL;
	if (dp_v4_seq_pos(seq) != n)
		return -EINVAL;
	uint64_t t0 = dp_clock_ns();
	uint64_t key = dp_kv_unit_seed(kv, t);
	for (uint64_t i = 0; i < n; i++)
		key = dp_kv_unit_step(kv, key, tokens[i]);
	struct dp_kv_session *u = unit_exact(kv, t, key, tokens, n);
	if (u && usable(u)) {
		dp_kv_lru_touch(kv, u);
		return 0;
	}
	if (u && !u->busy) /* one without state: made again below */
		unit_drop(kv, u, false);
	else if (u)
		return 0; /* lent to a request: it comes back */
	units_trim(kv);
	char id[DP_KV_SESSION_ID_MAX + 1];
	struct dp_kv_session *probe;
	for (uint32_t k = 0;; k++) { /* keys may collide: the counter tells units apart */
		snprintf(id, sizeof(id),
		         DP_KV_UNIT_MARK "%016" PRIx64 "%016" PRIx64 ".%016" PRIx64 ".%x",
		         t->tag[0], t->tag[1], key, k);
		if (dp_kv_session_find(kv, id, &probe) < 0)
			break;
	}
	struct dp_kv_session *s;
	int r = dp_kv_session_add(kv, id, &s);
	if (r < 0)
		return r;
	s->tenant = *t;
	if ((r = dp_kv_session_append(kv, s, tokens, (uint32_t)n)) < 0 ||
	    (r = unit_state(kv, s, seq)) < 0 || (r = dp_kv_unit_index_add(kv, s)) < 0) {
		/* nothing of it is journaled yet: the drop record is harmless */
		dp_kv_session_drop(kv, s);
		return r;
	}
	kv->st.units_left++;
	kv->st.unit_leave_ns += dp_clock_ns() - t0;
	return 0;
}

int dp_kv_unit_adopt_shared(struct dp_kv *kv, const struct dp_kv_tenant *t, const int32_t *tokens,
                            uint64_t n, uint64_t cookie, struct dp_kv_shared *tier,
                            pthread_mutex_t *lock, const char *const *segments, size_t n_segments,
                            const struct dp_kv_shared_loc *locs, size_t n_locs, bool layered,
                            struct dp_v4_seq **ret_seq, struct dp_kv_session **ret_unit)
{
	if (!kv || !t || !tokens || !n || n > INT32_MAX || !tier || !segments ||
	    (n_locs && !locs) || !ret_seq || !ret_unit)
		return -EINVAL;
	struct dp_kv_session *u = calloc(1, sizeof(*u));
	int32_t *hist = malloc(n * sizeof(*hist));
	if (!u || !hist) {
		free(u);
		free(hist);
		return -ENOMEM;
	}
	memcpy(hist, tokens, n * sizeof(*hist));
	snprintf(u->id, sizeof(u->id), DP_KV_UNIT_MARK "shared.%016" PRIx64, cookie);
	u->hist = hist;
	u->len = u->cap = u->committed = n;
	u->owner = DP_KV_OWNER_NONE;
	u->tier = DP_KV_TIER_DEVICE;
	u->state_pos = n; /* the restore counts nothing as recomputed */
	u->busy = true;
	u->unit = true;
	u->tenant = *t;
	u->shared_unit = true;
	u->shared_cookie = cookie;
	struct dp_v4_seq *seq = NULL;
	int r = dp_kv_session_restore_shared(kv, u, tier, lock, n, segments, n_segments, locs,
	                                     n_locs, &seq);
	if (r < 0) {
		free(hist);
		free(u);
		return r;
	}
	kv->st.shared_units_lent++;
	if (!layered && dp_kv_srestore_complete(kv, u) < 0) {
		shared_unit_free(kv, u, true);
		return -EBADMSG;
	}
	kv->st.prefix_hits++;
	kv->st.prefix_cached_tokens += n;
	*ret_seq = seq;
	*ret_unit = u;
	return (int)n;
}

size_t dp_kv_unit_take_shared_bad(struct dp_kv *kv, uint64_t *out, size_t max)
{
	if (!kv || (!out && max))
		return 0;
	size_t k = 0;
	while (k < max && kv->n_shared_bad) {
		out[k++] = kv->shared_bad[kv->shared_bad_head];
		kv->shared_bad_head = (kv->shared_bad_head + 1) % DP_ARRAY_SIZE(kv->shared_bad);
		kv->n_shared_bad--;
	}
	return k;
}

int dp_kv_seq_state_copy(struct dp_kv *kv, struct dp_v4_seq *seq, struct dp_v4_page_ref **ret_refs,
                         void **ret_data, size_t *ret_n)
{
	if (!kv || !seq || !ret_refs || !ret_data || !ret_n)
		return -EINVAL;
	size_t n = dp_v4_seq_pages(seq, NULL, 0);
	struct dp_v4_page_ref *refs = malloc((n ? n : 1) * sizeof(*refs));
	void *data = NULL;
	if (!refs || posix_memalign(&data, 4096, (n ? n : 1) * DP_KV_PAGE_BYTES)) {
		free(refs);
		return -ENOMEM;
	}
	dp_v4_seq_pages(seq, refs, n);
	int r = 0;
	for (size_t i = 0; i < n && r == 0; i++)
		r = dp_kv_page_out(kv, (char *)data + i * DP_KV_PAGE_BYTES, &refs[i]);
	if (r < 0) {
		free(refs);
		free(data);
		return r;
	}
	*ret_refs = refs;
	*ret_data = data;
	*ret_n = n;
	return 0;
}
