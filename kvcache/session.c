/* SPDX-License-Identifier: MIT */
/*
 * kvcache/session.c — what the part's files share about one session's
 * state: letting go of its DRAM copy or its snapshot, moving it onto its
 * snapshot, its pages on the host, a fresh device sequence for it, its
 * snapshot record and the owner field of its history records; the tenant
 * tag, and the plan of a snapshot's slots (which pages a held slot already
 * has: kvcache-internal.h, "Shared slots").
 *
 * It sits below kvcache.c, restore.c and writeback.c, which all use it, and
 * calls only down (tiers.c, journal.c): the order is drawn at the top of
 * kvcache-internal.h.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <xxhash.h>

#include "kvcache/kvcache-internal.h"

void dp_kv_snap_release(struct dp_kv *kv, struct dp_kv_session *s)
{
	dp_kv_snap_unplan(kv, s->snap, s->n_snap);
	free(s->snap);
	s->snap = NULL;
	s->n_snap = 0;
	s->has_snap = false;
}

void dp_kv_tenant_make(uint32_t uid, const void *salt, size_t salt_len, struct dp_kv_tenant *ret)
{
	uint8_t buf[4 + DP_KV_CACHE_SALT_MAX];
	if (salt_len > DP_KV_CACHE_SALT_MAX)
		salt_len = DP_KV_CACHE_SALT_MAX; /* callers check it; never past buf */
	for (int i = 0; i < 4; i++)
		buf[i] = (uint8_t)(uid >> (8 * i));
	if (salt_len)
		memcpy(buf + 4, salt, salt_len);
	XXH128_hash_t h = XXH3_128bits(buf, 4 + salt_len);
	ret->tag[0] = h.high64;
	ret->tag[1] = h.low64;
}

uint64_t dp_kv_slot_domain(const struct dp_kv_session *s)
{
	struct dp_kv_tenant t = s->tenant;
	if (!s->unit) /* a client's session: its owner's tenant without a salt */
		dp_kv_tenant_make(s->owner, NULL, 0, &t);
	return t.tag[0] ^ (t.tag[1] * 0x9E3779B97F4A7C15ull);
}

static struct dp_kv_slot_key snap_key(uint64_t domain, const struct dp_kv_snap_page *p)
{
	return (struct dp_kv_slot_key){ .sum = p->sum, .domain = domain, .index = p->index,
					.layer = p->layer, .kind = p->kind };
}

int dp_kv_snap_plan(struct dp_kv *kv, const struct dp_kv_session *s, uint64_t pos,
		    const struct dp_v4_page_ref *refs, void *const *pages, size_t n,
		    struct dp_kv_snap_page *sp, struct dp_kv_snap_writes *w)
{
	uint64_t domain = dp_kv_slot_domain(s);
	size_t i;
	int r = 0;
	w->n = 0;
	for (i = 0; i < n && r == 0; i++) {
		sp[i] = (struct dp_kv_snap_page){ .layer = refs[i].layer, .kind = refs[i].kind,
						  .index = refs[i].index,
						  .sum = XXH3_64bits(pages[i], DP_KV_PAGE_BYTES) };
		struct dp_kv_slot_key k = snap_key(domain, &sp[i]);
		if (dp_kv_slots_find(&kv->slots, &k, &sp[i].slot) == 0) {
			dp_kv_slots_hold(&kv->slots, sp[i].slot);
			continue;
		}
		if ((r = dp_kv_slots_alloc(&kv->slots, &sp[i].slot)) < 0)
			break;
		w->ids[w->n] = (struct dp_kv_slot_id){ s->id, pos, sp[i].layer, sp[i].kind,
						       sp[i].index };
		w->slots[w->n] = sp[i].slot;
		w->sums[w->n] = sp[i].sum;
		w->pages[w->n++] = pages[i];
	}
	if (r < 0) {
		dp_kv_snap_unplan(kv, sp, i); /* the failed allocation holds nothing */
		return r;
	}
	return 0;
}

void dp_kv_snap_unplan(struct dp_kv *kv, const struct dp_kv_snap_page *sp, size_t n)
{
	for (size_t i = 0; i < n; i++)
		dp_kv_slots_free(&kv->slots, sp[i].slot);
}

void dp_kv_snap_index(struct dp_kv *kv, const struct dp_kv_session *s)
{
	uint64_t domain = dp_kv_slot_domain(s);
	for (size_t i = 0; i < s->n_snap; i++) {
		struct dp_kv_slot_key k = snap_key(domain, &s->snap[i]);
		dp_kv_slots_index(&kv->slots, s->snap[i].slot, &k);
	}
}

void dp_kv_snap_page_bad(struct dp_kv *kv, const struct dp_kv_session *s, size_t i)
{
	struct dp_kv_slot_key k = snap_key(dp_kv_slot_domain(s), &s->snap[i]);
	dp_kv_slots_unindex(&kv->slots, s->snap[i].slot, &k);
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

/* ---- prefix units: chain keys and the index ---------------------------------- */

static uint64_t mix64(uint64_t x)
{
	/* murmur3's finalizer: every input bit reaches every output bit */
	x ^= x >> 33;
	x *= 0xff51afd7ed558ccdull;
	x ^= x >> 33;
	x *= 0xc4ceb9fe1a85ec53ull;
	x ^= x >> 33;
	return x;
}

static uint64_t key_mask(const struct dp_kv *kv)
{
	uint32_t bits = kv->opts.unit_key_bits;
	return bits == 0 || bits >= 64 ? UINT64_MAX : (1ull << bits) - 1;
}

uint64_t dp_kv_unit_seed(const struct dp_kv *kv, const struct dp_kv_tenant *t)
{
	return mix64(t->tag[0] ^ mix64(t->tag[1] + 0x9e3779b97f4a7c15ull)) & key_mask(kv);
}

uint64_t dp_kv_unit_step(const struct dp_kv *kv, uint64_t key, int32_t token)
{
	return mix64(key * 0x9e3779b97f4a7c15ull + (uint32_t)token + 1) & key_mask(kv);
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

bool dp_kv_unit_id_parse(const char *id, struct dp_kv_tenant *ret)
{
	size_t mark = strlen(DP_KV_UNIT_MARK);
	if (strncmp(id, DP_KV_UNIT_MARK, mark) != 0)
		return false;
	const char *p = id + mark;
	uint64_t tag[2] = { 0, 0 };
	for (int w = 0; w < 2; w++)
		for (int i = 0; i < 16; i++) {
			int v = hexval(*p++);
			if (v < 0)
				return false;
			tag[w] = tag[w] << 4 | (uint64_t)v;
		}
	if (*p != '.' || !p[1]) /* the key and counter after it are not trusted */
		return false;
	for (const char *q = p + 1; *q; q++)
		if (hexval(*q) < 0 && *q != '.')
			return false;
	if (strlen(id) > DP_KV_SESSION_ID_MAX)
		return false;
	ret->tag[0] = tag[0];
	ret->tag[1] = tag[1];
	return true;
}

int dp_kv_unit_index_add(struct dp_kv *kv, struct dp_kv_session *s)
{
	if (kv->n_units + 1 > kv->units_len / 2) {
		size_t len = kv->units_len ? 2 * kv->units_len : 256;
		struct dp_kv_session **b = calloc(len, sizeof(*b));
		if (!b)
			return -ENOMEM;
		for (size_t i = 0; i < kv->units_len; i++)
			for (struct dp_kv_session *u = kv->units[i], *next; u; u = next) {
				next = u->unit_next;
				u->unit_next = b[u->unit_key & (len - 1)];
				b[u->unit_key & (len - 1)] = u;
			}
		free(kv->units);
		kv->units = b;
		kv->units_len = len;
	}
	uint64_t key = dp_kv_unit_seed(kv, &s->tenant);
	for (uint64_t i = 0; i < s->len; i++)
		key = dp_kv_unit_step(kv, key, s->hist[i]);
	s->unit = true;
	s->unit_key = key;
	size_t b = key & (kv->units_len - 1);
	s->unit_next = kv->units[b];
	kv->units[b] = s;
	kv->n_units++;
	return 0;
}

void dp_kv_unit_index_del(struct dp_kv *kv, struct dp_kv_session *s)
{
	if (!s->unit || !kv->units_len)
		return;
	struct dp_kv_session **pp = &kv->units[s->unit_key & (kv->units_len - 1)];
	while (*pp && *pp != s)
		pp = &(*pp)->unit_next;
	if (*pp) {
		*pp = s->unit_next;
		kv->n_units--;
	}
	s->unit = false;
}

int dp_kv_seq_from_host(struct dp_kv *kv, const struct dp_kv_session *s, uint64_t pos,
			const struct dp_v4_page_ref *refs, void *const *pages, size_t n,
			struct dp_v4_seq **ret_seq)
{
	struct dp_v4_seq *seq;
	int r = dp_kv_seq_new_at(kv, s, pos, &seq);
	if (r < 0)
		return r;
	size_t have = dp_v4_seq_pages(seq, NULL, 0);
	struct dp_v4_page_ref *dst = malloc((have ? have : 1) * sizeof(*dst));
	if (!dst) {
		dp_v4_seq_free(seq);
		return -ENOMEM;
	}
	dp_v4_seq_pages(seq, dst, have);
	if (have != n)
		r = -EBADMSG;
	for (size_t i = 0; r == 0 && i < n; i++) {
		if (dst[i].layer != refs[i].layer || dst[i].kind != refs[i].kind ||
		    dst[i].index != refs[i].index)
			r = -EBADMSG;
		else
			r = dp_kv_page_in(kv, &dst[i], pages[i]);
	}
	free(dst);
	if (r < 0) {
		dp_v4_seq_free(seq);
		return r;
	}
	*ret_seq = seq;
	return 0;
}

int dp_kv_seq_from_pool(struct dp_kv *kv, const struct dp_kv_session *s,
			struct dp_v4_seq **ret_seq)
{
	size_t n = s->n_dram;
	void **pages = calloc(n ? n : 1, sizeof(*pages));
	struct dp_v4_page_ref *now = malloc((n ? n : 1) * sizeof(*now));
	if (!pages || !now) {
		free(pages);
		free(now);
		return -ENOMEM;
	}
	for (size_t i = 0; i < n; i++)
		pages[i] = dp_kv_pool_page(&kv->pool, s->dram_pages[i]);
	struct dp_v4_seq *seq;
	int r = dp_kv_seq_from_host(kv, s, s->state_pos, s->dram_refs, pages, n, &seq);
	if (r == 0) {
		/* the same list (checked above): tag its frozen pages with the
		 * pool pages holding their bytes */
		dp_v4_seq_pages(seq, now, n);
		for (size_t i = 0; i < n && r == 0; i++)
			if (now[i].frozen)
				r = dp_v4_seq_tag_page(seq, &now[i],
						       dp_kv_pool_tag(&kv->pool, s->dram_pages[i]));
		if (r < 0)
			dp_v4_seq_free(seq);
		else
			*ret_seq = seq;
	}
	free(pages);
	free(now);
	return r;
}

int dp_kv_state_to_pool(struct dp_kv *kv, struct dp_v4_seq *seq, struct dp_v4_page_ref **ret_refs,
			uint32_t **ret_idx, size_t *ret_n, uint64_t *ret_copied)
{
	size_t n = dp_v4_seq_pages(seq, NULL, 0);
	struct dp_v4_page_ref *refs = malloc((n ? n : 1) * sizeof(*refs));
	uint32_t *idx = malloc((n ? n : 1) * sizeof(*idx));
	if (!refs || !idx) {
		free(refs);
		free(idx);
		return -ENOMEM;
	}
	dp_v4_seq_pages(seq, refs, n);
	/* held first: a page shared is one the pool need not find room for */
	size_t need = 0;
	for (size_t i = 0; i < n; i++) {
		int got = refs[i].tag ? dp_kv_pool_share(&kv->pool, refs[i].tag) : -ENOENT;
		idx[i] = got < 0 ? UINT32_MAX : (uint32_t)got;
		need += got < 0;
	}
	int r = need > kv->pool.n_free ? -ENOSPC : 0;
	uint64_t copied = 0;
	for (size_t i = 0; i < n && r == 0; i++) {
		if (idx[i] != UINT32_MAX)
			continue;
		idx[i] = (uint32_t)dp_kv_pool_get(&kv->pool);
		/* host-resident pages are a DRAM-to-DRAM copy; the copy is
		 * complete when page_out returns */
		r = dp_kv_page_out(kv, dp_kv_pool_page(&kv->pool, idx[i]), &refs[i]);
		copied++;
		if (r == 0 && refs[i].frozen)
			r = dp_v4_seq_tag_page(seq, &refs[i], dp_kv_pool_tag(&kv->pool, idx[i]));
	}
	if (r < 0) {
		for (size_t i = 0; i < n; i++)
			if (idx[i] != UINT32_MAX)
				dp_kv_pool_put(&kv->pool, idx[i]);
		free(refs);
		free(idx);
		return r;
	}
	for (size_t i = 0; i < n; i++) {
		refs[i].page = NULL; /* the pool page idx[i] holds it */
		refs[i].tag = 0;
	}
	*ret_refs = refs;
	*ret_idx = idx;
	*ret_n = n;
	if (ret_copied)
		*ret_copied = copied * DP_KV_PAGE_BYTES;
	return 0;
}

void dp_kv_seq_copy_tags(struct dp_v4_seq *dst, const struct dp_v4_page_ref *src, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (src[i].frozen && src[i].tag)
			(void)dp_v4_seq_tag_page(dst, &src[i], src[i].tag); /* same list: cannot fail */
}

void dp_kv_layer_ends(const struct dp_v4_page_ref *refs, size_t n, uint32_t *layer_end,
		      uint32_t n_layers)
{
	memset(layer_end, 0, n_layers * sizeof(*layer_end));
	for (size_t i = 0; i < n; i++)
		if (refs[i].layer < n_layers)
			layer_end[refs[i].layer] = (uint32_t)i + 1;
	for (uint32_t l = 1; l < n_layers; l++)
		if (layer_end[l] < layer_end[l - 1])
			layer_end[l] = layer_end[l - 1];
}
