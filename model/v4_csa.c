/* SPDX-License-Identifier: MIT */
/*
 * CSA entries in host memory (v4.h, dp_v4_model_set_csa_host).
 *
 * A CSA layer's compressed entries grow with the context (one per
 * compress_rate_csa tokens, head_dim floats each) but each query attends to
 * only index_topk of them, picked by the lightning indexer from the index
 * keys, which stay on the device. In this mode the entries live in host
 * pages; per (sequence, layer) a small device cache holds the entries staged
 * for recent steps. After the indexer:
 *
 *   1. its choice (sel [S][k]) comes to the host;
 *   2. the union of the picked entries is split into those still staged
 *      (hits) and the rest (misses);
 *   3. the misses are gathered from the host pages into a pinned staging
 *      buffer and copied to the device in one copy, into the slots after the
 *      cache's live ones;
 *   4. sel is rewritten to slot numbers and goes back; the attention op reads
 *      the cache as a one-page stream: the same entries in the same order as
 *      from the device pages, so the logits are bit-identical.
 *
 * The speculation is the cache itself: a decode step's choice overlaps the
 * previous step's heavily (the indexer scores change slowly), so the
 * previous selections stay staged and only the difference crosses the bus
 * inside the layer. After the attention op (off the indexer-to-attention
 * path) dp_v4_csa_trim evicts entries not picked in the last KEEP_STEPS steps
 * and, past TARGET_PER_K * k staged entries, the least recently picked;
 * survivors are moved down so the live slots stay a prefix (misses always
 * land in one contiguous run), and a cache a long prefill grew is shrunk.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/clock.h"
#include "model/v4-internal.h"

/* Staged entries not picked for this many steps of their layer are evicted. */
#define KEEP_STEPS 8u
/* The cache keeps at most this many times index_topk entries between steps. */
#define TARGET_PER_K 2u

struct order {
	uint64_t use;
	uint32_t slot;
};

/* Grow a host array of elem-sized items to at least want. */
static int grow(void **p, size_t *cap, size_t want, size_t elem)
{
	if (want <= *cap)
		return 0;
	size_t c = *cap ? *cap : 64;
	while (c < want)
		c *= 2;
	void *q = realloc(*p, c * elem);
	if (!q)
		return -ENOMEM;
	*p = q;
	*cap = c;
	return 0;
}

static uint32_t target_of(const struct dp_v4_model *m)
{
	return TARGET_PER_K * (uint32_t)m->cfg.index_topk;
}

/* Give the cache `cap` device slots (cap >= live), keeping the live ones. */
static int cache_realloc(struct dp_v4_model *m, struct dp_v4_seq *seq, struct dp_v4_csa_cache *c,
			 uint32_t cap)
{
	struct dp_gpu *g = m->g;
	size_t row = (size_t)c->dim * sizeof(float);
	if (cap > c->host_cap) {
		int32_t *se = realloc(c->slot_entry, cap * sizeof(*se));
		if (!se)
			return -ENOMEM;
		c->slot_entry = se;
		uint64_t *su = realloc(c->slot_use, cap * sizeof(*su));
		if (!su)
			return -ENOMEM;
		c->slot_use = su;
		c->host_cap = cap;
	}
	float *dev = dp_gpu_alloc(g, cap * row, DP_GPU_MEM_STATE);
	if (!dev)
		return -ENOMEM;
	int ret = c->live ? dp_gpu_copy(g, dev, c->dev, c->live * row) : 0;
	if (ret == 0)
		ret = dp_gpu_upload(g, c->tab, &dev, sizeof(dev));
	if (ret < 0) {
		dp_gpu_dealloc(g, dev, cap * row, DP_GPU_MEM_STATE);
		return ret;
	}
	if (c->dev) {
		dp_gpu_dealloc(g, c->dev, c->mem_cap * row, DP_GPU_MEM_STATE);
		seq->bytes -= c->mem_cap * row;
	}
	c->dev = dev;
	c->mem_cap = cap;
	seq->bytes += cap * row;
	return 0;
}

static int cache_new(struct dp_v4_model *m, struct dp_v4_seq *seq, uint32_t dim,
		     struct dp_v4_csa_cache **ret_cache)
{
	struct dp_v4_csa_cache *c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	c->dim = dim;
	c->tab = dp_gpu_alloc(m->g, sizeof(float *), DP_GPU_MEM_STATE);
	if (!c->tab) {
		free(c);
		return -ENOMEM;
	}
	seq->bytes += sizeof(float *);
	int ret = cache_realloc(m, seq, c, target_of(m) ? target_of(m) : 16);
	if (ret < 0) {
		dp_v4_csa_cache_free(m, seq, c);
		return ret;
	}
	*ret_cache = c;
	return 0;
}

void dp_v4_csa_cache_free(struct dp_v4_model *m, struct dp_v4_seq *seq, struct dp_v4_csa_cache *c)
{
	if (!c)
		return;
	if (c->dev) {
		dp_gpu_dealloc(m->g, c->dev, (size_t)c->mem_cap * c->dim * sizeof(float),
			       DP_GPU_MEM_STATE);
		seq->bytes -= (size_t)c->mem_cap * c->dim * sizeof(float);
	}
	if (c->tab) {
		dp_gpu_dealloc(m->g, c->tab, sizeof(float *), DP_GPU_MEM_STATE);
		seq->bytes -= sizeof(float *);
	}
	free(c->slot_entry);
	free(c->slot_use);
	free(c->where);
	free(c);
}

void dp_v4_csa_model_fini(struct dp_v4_model *m)
{
	free(m->csa_sel);
	free(m->csa_miss);
	free(m->csa_order);
	dp_gpu_host_free(m->g, m->csa_stage, m->csa_stage_bytes);
	m->csa_sel = m->csa_miss = NULL;
	m->csa_order = NULL;
	m->csa_stage = NULL;
	m->csa_sel_cap = m->csa_miss_cap = m->csa_order_cap = m->csa_stage_bytes = 0;
}

static int stage_reserve(struct dp_v4_model *m, size_t bytes)
{
	if (bytes <= m->csa_stage_bytes)
		return 0;
	size_t b = m->csa_stage_bytes ? m->csa_stage_bytes : 64 * 1024;
	while (b < bytes)
		b *= 2;
	float *p = dp_gpu_host_alloc(m->g, b);
	if (!p)
		return -ENOMEM;
	dp_gpu_host_free(m->g, m->csa_stage, m->csa_stage_bytes);
	m->csa_stage = p;
	m->csa_stage_bytes = b;
	return 0;
}

static const float *host_entry(const struct dp_v4_stream *st, uint32_t e)
{
	return st->host_pages[e / st->per_page] + (size_t)(e % st->per_page) * st->dim;
}

int dp_v4_csa_stage(struct dp_v4_model *m, struct dp_v4_seq *seq, int l, int32_t *sel,
		    uint32_t S, uint32_t k, struct dp_gpu_stream *ret_view)
{
	uint64_t t0 = dp_clock_ns();
	struct dp_gpu *g = m->g;
	struct dp_v4_layer_state *ls = &seq->layers[l];
	const struct dp_v4_stream *st = &ls->s[DP_V4_S_COMP];
	size_t ns = (size_t)S * k;
	int ret;

	if (!ls->csa && (ret = cache_new(m, seq, st->dim, &ls->csa)) < 0)
		return ret;
	struct dp_v4_csa_cache *c = ls->csa;
	if (st->n > c->where_cap) {
		size_t cap = c->where_cap;
		void *w = c->where;
		if ((ret = grow(&w, &cap, st->n, sizeof(int32_t))) < 0)
			return ret;
		c->where = w;
		for (size_t i = c->where_cap; i < cap; i++)
			c->where[i] = -1;
		c->where_cap = (uint32_t)cap;
	}
	void *p = m->csa_sel;
	if ((ret = grow(&p, &m->csa_sel_cap, ns, sizeof(int32_t))) < 0)
		return ret;
	int32_t *hs = m->csa_sel = p;
	if ((ret = dp_gpu_download(g, hs, sel, ns * sizeof(*hs))) < 0)
		return ret;

	/* hits and misses of the union; a miss is marked -2 until it has a slot */
	uint64_t step = ++c->step;
	uint32_t n_miss = 0, hits = 0;
	for (size_t i = 0; i < ns; i++) {
		int32_t e = hs[i];
		if (e < 0 || (uint32_t)e >= st->n)
			continue;
		int32_t w = c->where[e];
		if (w >= 0) {
			if (c->slot_use[w] >> 32 != step) {
				hits++;
				c->slot_use[w] = step << 32;
			}
		} else if (w == -1) {
			p = m->csa_miss;
			if ((ret = grow(&p, &m->csa_miss_cap, n_miss + 1, sizeof(int32_t))) < 0)
				goto unmark;
			m->csa_miss = p;
			m->csa_miss[n_miss++] = e;
			c->where[e] = -2;
		}
	}
	size_t row = (size_t)c->dim * sizeof(float);
	if (c->live + n_miss > c->mem_cap) {
		uint32_t cap = c->mem_cap * 2;
		if (cap < c->live + n_miss)
			cap = c->live + n_miss;
		if ((ret = cache_realloc(m, seq, c, cap)) < 0)
			goto unmark;
	}
	if ((ret = stage_reserve(m, n_miss * row)) < 0)
		goto unmark;

	/* gather the misses into the pinned buffer; one copy up */
	for (uint32_t j = 0; j < n_miss; j++) {
		int32_t e = m->csa_miss[j];
		uint32_t slot = c->live + j;
		memcpy(m->csa_stage + (size_t)j * c->dim, host_entry(st, (uint32_t)e), row);
		c->where[e] = (int32_t)slot;
		c->slot_entry[slot] = e;
		c->slot_use[slot] = step << 32;
	}
	if (n_miss && (ret = dp_gpu_upload(g, c->dev + (size_t)c->live * c->dim, m->csa_stage,
					   n_miss * row)) < 0) {
		for (uint32_t j = 0; j < n_miss; j++)
			c->where[m->csa_miss[j]] = -1;
		return ret;
	}
	c->live += n_miss;

	/* sel -> slots; a slot's use records the last query row that picked it */
	for (uint32_t i = 0; i < S; i++)
		for (uint32_t j = 0; j < k; j++) {
			int32_t *p = &hs[(size_t)i * k + j];
			if (*p < 0 || (uint32_t)*p >= st->n) {
				*p = -1;
				continue;
			}
			int32_t slot = c->where[*p];
			c->slot_use[slot] = step << 32 | (i + 1);
			*p = slot;
		}
	if ((ret = dp_gpu_upload(g, sel, hs, ns * sizeof(*hs))) < 0)
		return ret;

	m->csa_st.steps++;
	m->csa_st.selected += hits + n_miss;
	m->csa_st.hits += hits;
	m->csa_st.fetched += n_miss;
	m->csa_st.bytes += n_miss * row;
	m->csa_st.gather_ns += dp_clock_ns() - t0;
	*ret_view = (struct dp_gpu_stream){ .pages = c->tab, .per_page = c->mem_cap, .dim = c->dim,
					    .n = c->live };
	return 0;
unmark:
	for (uint32_t j = 0; j < n_miss; j++)
		c->where[m->csa_miss[j]] = -1;
	return ret;
}

static int by_use_desc(const void *a, const void *b)
{
	const struct order *x = a, *y = b;
	if (x->use != y->use)
		return x->use > y->use ? -1 : 1;
	return x->slot < y->slot ? -1 : x->slot > y->slot;
}

int dp_v4_csa_trim(struct dp_v4_model *m, struct dp_v4_seq *seq, int l)
{
	struct dp_v4_csa_cache *c = seq->layers[l].csa;
	if (!c || !c->live)
		return 0;
	struct dp_gpu *g = m->g;
	uint32_t target = target_of(m);
	uint64_t step = c->step;
	size_t row = (size_t)c->dim * sizeof(float);
	int ret;

	/* candidates: picked within KEEP_STEPS; past target, the most recent */
	if ((ret = grow(&m->csa_order, &m->csa_order_cap, c->live, sizeof(struct order))) < 0)
		return ret;
	struct order *ord = m->csa_order;
	uint32_t n_cand = 0;
	for (uint32_t s = 0; s < c->live; s++)
		if ((c->slot_use[s] >> 32) + KEEP_STEPS > step)
			ord[n_cand++] = (struct order){ c->slot_use[s], s };
	if (n_cand == c->live && n_cand <= target)
		return 0;
	uint32_t keep = n_cand;
	if (keep > target) {
		qsort(ord, n_cand, sizeof(*ord), by_use_desc);
		keep = target;
	}
	/* evict: every slot not among ord[0, keep) */
	for (uint32_t s = 0; s < c->live; s++)
		c->slot_use[s] |= 1ull << 31; /* mark; row numbers stay below 2^31 */
	for (uint32_t i = 0; i < keep; i++)
		c->slot_use[ord[i].slot] &= ~(1ull << 31);
	for (uint32_t s = 0; s < c->live; s++)
		if (c->slot_use[s] & (1ull << 31)) {
			c->where[c->slot_entry[s]] = -1;
			c->slot_entry[s] = -1;
			m->csa_st.evicted++;
		}
	/* compact: the survivors above `keep` move into the holes below it */
	uint32_t lo = 0, hi = c->live;
	for (;;) {
		while (lo < keep && c->slot_entry[lo] >= 0)
			lo++;
		while (hi > keep && c->slot_entry[hi - 1] < 0)
			hi--;
		if (lo >= keep || hi <= keep)
			break;
		uint32_t from = hi - 1;
		if ((ret = dp_gpu_copy(g, c->dev + (size_t)lo * c->dim, c->dev + (size_t)from * c->dim,
				       row)) < 0)
			return ret;
		c->slot_entry[lo] = c->slot_entry[from];
		c->slot_use[lo] = c->slot_use[from];
		c->where[c->slot_entry[lo]] = (int32_t)lo;
		c->slot_entry[from] = -1;
		hi--;
	}
	c->live = keep;
	/* a cache a long prefill grew goes back to its working size */
	if (target && c->mem_cap > 4 * target && c->live <= target)
		return cache_realloc(m, seq, c, 2 * target);
	return 0;
}

void dp_v4_model_csa_stats(const struct dp_v4_model *m, struct dp_v4_csa_stats *ret)
{
	if (!m || !ret)
		return;
	*ret = m->csa_st;
}
