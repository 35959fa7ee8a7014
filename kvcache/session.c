/* SPDX-License-Identifier: MIT */
/*
 * kvcache/session.c — what the part's files share about one session's
 * state: letting go of its DRAM copy or its snapshot, moving it onto its
 * snapshot, its pages on the host, a fresh device sequence for it, its
 * snapshot record and the owner field of its history records.
 *
 * It sits below kvcache.c, restore.c and writeback.c, which all use it, and
 * calls only down (tiers.c, journal.c): the order is drawn at the top of
 * kvcache-internal.h.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "kvcache/kvcache-internal.h"

void dp_kv_snap_release(struct dp_kv *kv, struct dp_kv_session *s)
{
	for (size_t i = 0; i < s->n_snap; i++)
		dp_kv_slots_free(&kv->slots, s->snap[i].slot);
	free(s->snap);
	s->snap = NULL;
	s->n_snap = 0;
	s->has_snap = false;
}

void dp_kv_dram_release(struct dp_kv *kv, struct dp_kv_session *s)
{
	for (size_t i = 0; i < s->n_dram; i++)
		dp_kv_pool_put(&kv->pool, s->dram_pages[i]);
	free(s->dram_pages);
	free(s->dram_refs);
	s->dram_pages = NULL;
	s->dram_refs = NULL;
	s->n_dram = 0;
}

void dp_kv_state_drop_to_snap(struct dp_kv *kv, struct dp_kv_session *s)
{
	if (s->tier == DP_KV_TIER_DEVICE) {
		dp_v4_seq_free(s->seq);
		s->seq = NULL;
	} else {
		dp_kv_dram_release(kv, s);
	}
	s->state_pos = s->snap_pos;
	s->tier = DP_KV_TIER_NVME;
}

/* The state's pages on the host: DRAM pages as they are, device pages
 * downloaded into a bounce buffer. */
int dp_kv_state_to_host(struct dp_kv *kv, struct dp_kv_session *s, struct dp_v4_page_ref **ret_refs,
			void ***ret_pages, void **ret_bounce, size_t *ret_n)
{
	size_t n;
	struct dp_v4_page_ref *refs;
	void **pages;
	void *bounce = NULL;

	if (s->tier == DP_KV_TIER_DRAM) {
		n = s->n_dram;
		refs = malloc((n ? n : 1) * sizeof(*refs));
		pages = malloc((n ? n : 1) * sizeof(*pages));
		if (!refs || !pages)
			goto oom;
		memcpy(refs, s->dram_refs, n * sizeof(*refs));
		for (size_t i = 0; i < n; i++)
			pages[i] = dp_kv_pool_page(&kv->pool, s->dram_pages[i]);
	} else {
		n = dp_v4_seq_pages(s->seq, NULL, 0);
		refs = malloc((n ? n : 1) * sizeof(*refs));
		pages = malloc((n ? n : 1) * sizeof(*pages));
		if (!refs || !pages || posix_memalign(&bounce, 4096, (n ? n : 1) * DP_KV_PAGE_BYTES))
			goto oom;
		dp_v4_seq_pages(s->seq, refs, n);
		for (size_t i = 0; i < n; i++) {
			pages[i] = (char *)bounce + i * DP_KV_PAGE_BYTES;
			int r = dp_kv_page_out(kv, pages[i], &refs[i]);
			if (r < 0) {
				free(refs);
				free(pages);
				free(bounce);
				return r;
			}
		}
	}
	*ret_refs = refs;
	*ret_pages = pages;
	*ret_bounce = bounce;
	*ret_n = n;
	return 0;
oom:
	free(refs);
	free(pages);
	free(bounce);
	return -ENOMEM;
}

int dp_kv_seq_new_at(struct dp_kv *kv, const struct dp_kv_session *s, uint64_t pos,
		     struct dp_v4_seq **ret_seq)
{
	struct dp_v4_seq *seq;
	if (pos > s->len)
		return -EBADMSG; /* state ahead of the history: never */
	int r = dp_v4_seq_new_at(kv->m, pos, &seq);
	if (r < 0)
		return r;
	if (pos > 0 && dp_v4_model_has_engram(kv->m)) {
		uint32_t n = pos < DP_V4_ENGRAM_HISTORY_MAX ? (uint32_t)pos : DP_V4_ENGRAM_HISTORY_MAX;
		if ((r = dp_v4_seq_set_engram_history(seq, s->hist + (pos - n), n)) < 0) {
			dp_v4_seq_free(seq);
			return r;
		}
	}
	*ret_seq = seq;
	return 0;
}

int dp_kv_journal_snapshot(struct dp_journal *j, const struct dp_kv_session *s, uint64_t pos,
			   const struct dp_kv_snap_page *pages, size_t n, bool sync)
{
	struct dp_jbuf b = { 0 };
	dp_jbuf_put_str(&b, s->id);
	dp_jbuf_put_u64(&b, pos);
	dp_jbuf_put_u32(&b, (uint32_t)n);
	for (size_t i = 0; i < n; i++) {
		dp_jbuf_put_u16(&b, pages[i].layer);
		dp_jbuf_put_u8(&b, pages[i].kind);
		dp_jbuf_put_u32(&b, pages[i].index);
		dp_jbuf_put_u64(&b, pages[i].slot);
		dp_jbuf_put_u64(&b, pages[i].sum);
	}
	int r = b.error ? b.error : dp_journal_append(j, DP_JREC_SNAPSHOT, b.data, b.len);
	dp_jbuf_fini(&b);
	return r < 0 || !sync ? r : dp_journal_sync(j);
}

void dp_kv_jbuf_put_ext(struct dp_jbuf *b, uint16_t tag, uint16_t len)
{
	dp_jbuf_put_u16(b, tag);
	dp_jbuf_put_u16(b, len);
}

void dp_kv_jbuf_put_owner(struct dp_jbuf *b, const struct dp_kv_session *s)
{
	if (s->owner == DP_KV_OWNER_NONE)
		return;
	dp_kv_jbuf_put_ext(b, DP_KV_JEXT_OWNER, 4);
	dp_jbuf_put_u32(b, s->owner);
}
