/* SPDX-License-Identifier: MIT */
/*
 * Per-sequence V4 state: every array of docs/v4-forward.md "Incremental
 * state" is a stream of fixed-size entries in DP_V4_PAGE_BYTES pages, so the
 * KV cache can move a session's state between tiers page by page.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "model/v4-internal.h"

/* ---- pages ----------------------------------------------------------------- */

static void *default_page_alloc(void *ctx, size_t bytes)
{
	return dp_gpu_alloc(ctx, bytes, DP_GPU_MEM_STATE);
}

static void default_page_free(void *ctx, void *page, size_t bytes)
{
	dp_gpu_dealloc(ctx, page, bytes, DP_GPU_MEM_STATE);
}

static void *default_host_alloc(void *ctx, size_t bytes)
{
	return dp_gpu_host_alloc(ctx, bytes);
}

static void default_host_free(void *ctx, void *page, size_t bytes)
{
	dp_gpu_host_free(ctx, page, bytes);
}

int dp_v4_model_set_csa_host(struct dp_v4_model *m, bool on, const struct dp_v4_page_ops *host_pages)
{
	if (!m || (host_pages && (!host_pages->alloc || !host_pages->free)))
		return -EINVAL;
	m->csa_host = on;
	if (on && host_pages)
		m->host_pages = *host_pages;
	else
		m->host_pages = (struct dp_v4_page_ops){ default_host_alloc, default_host_free, m->g };
	return 0;
}

static const char *const csa_where_names[DP_V4_CSA_WHERE_MAX] = { "device", "host" };

const char *dp_v4_csa_where_name(enum dp_v4_csa_where w)
{
	return (unsigned)w < DP_V4_CSA_WHERE_MAX ? csa_where_names[w] : NULL;
}

int dp_v4_csa_where_parse(const char *s, enum dp_v4_csa_where *ret)
{
	for (int i = 0; s && ret && i < DP_V4_CSA_WHERE_MAX; i++)
		if (!strcmp(s, csa_where_names[i])) {
			*ret = (enum dp_v4_csa_where)i;
			return 0;
		}
	return -EINVAL;
}

bool dp_v4_model_csa_host(const struct dp_v4_model *m)
{
	return m && m->csa_host;
}

void dp_v4_model_set_page_ops(struct dp_v4_model *m, const struct dp_v4_page_ops *ops)
{
	if (ops)
		m->pages = *ops;
	else
		m->pages = (struct dp_v4_page_ops){default_page_alloc, default_page_free, m->g};
}

/* ---- streams ------------------------------------------------------------- */

/* Make room in both page tables for at least `want` pages. */
static int table_reserve(struct dp_v4_seq *seq, struct dp_v4_stream *st, uint32_t want)
{
	struct dp_gpu *g = seq->m->g;
	if (want <= st->cap)
		return 0;
	uint32_t cap = st->cap ? st->cap : 4;
	while (cap < want)
		cap *= 2;
	float **host = realloc(st->host_pages, cap * sizeof(*host));
	if (!host)
		return -ENOMEM;
	st->host_pages = host;
	uint64_t *tags = realloc(st->tags, cap * sizeof(*tags));
	if (!tags)
		return -ENOMEM;
	memset(tags + st->cap, 0, (cap - st->cap) * sizeof(*tags));
	st->tags = tags;
	if (st->host) {
		st->cap = cap;
		return 0;
	}
	float **dev = dp_gpu_alloc(g, cap * sizeof(*dev), DP_GPU_MEM_STATE);
	if (!dev)
		return -ENOMEM;
	if (st->dev_pages) {
		int ret = dp_gpu_copy(g, dev, st->dev_pages, st->n_pages * sizeof(*dev));
		if (ret < 0) {
			dp_gpu_dealloc(g, dev, cap * sizeof(*dev), DP_GPU_MEM_STATE);
			return ret;
		}
		dp_gpu_dealloc(g, st->dev_pages, st->cap * sizeof(*dev), DP_GPU_MEM_STATE);
		seq->bytes -= st->cap * sizeof(*dev);
	}
	st->dev_pages = dev;
	seq->bytes += cap * sizeof(*dev);
	st->cap = cap;
	return 0;
}

static int add_page(struct dp_v4_seq *seq, struct dp_v4_stream *st)
{
	struct dp_v4_model *m = seq->m;
	int ret = table_reserve(seq, st, st->n_pages + 1);
	if (ret < 0)
		return ret;
	if (st->host) {
		float *page = m->host_pages.alloc(m->host_pages.ctx, DP_V4_PAGE_BYTES);
		if (!page)
			return -ENOMEM;
		st->host_pages[st->n_pages++] = page;
		seq->host_bytes += DP_V4_PAGE_BYTES;
		return 0;
	}
	float *page = m->pages.alloc(m->pages.ctx, DP_V4_PAGE_BYTES);
	if (!page)
		return -ENOMEM;
	ret = dp_gpu_upload(m->g, st->dev_pages + st->n_pages, &page, sizeof(page));
	if (ret < 0) {
		m->pages.free(m->pages.ctx, page, DP_V4_PAGE_BYTES);
		return ret;
	}
	st->host_pages[st->n_pages++] = page;
	seq->bytes += DP_V4_PAGE_BYTES;
	return 0;
}

static int stream_init(struct dp_v4_seq *seq, struct dp_v4_stream *st, uint32_t dim,
                       uint32_t fixed_entries, bool host)
{
	memset(st, 0, sizeof(*st));
	if (dim == 0)
		return 0; /* this layer has no such stream */
	st->host = host;
	if ((size_t)dim * sizeof(float) > DP_V4_PAGE_BYTES)
		return -ENOTSUP;
	st->dim = dim;
	st->per_page = DP_V4_PAGE_BYTES / (dim * (uint32_t)sizeof(float));
	if (fixed_entries) {
		st->fixed = true;
		st->n = fixed_entries;
		for (uint32_t i = 0; i < (fixed_entries + st->per_page - 1) / st->per_page; i++) {
			int ret = add_page(seq, st);
			if (ret < 0)
				return ret;
		}
	}
	return 0;
}

static void stream_fini(struct dp_v4_seq *seq, struct dp_v4_stream *st)
{
	struct dp_v4_model *m = seq->m;
	for (uint32_t i = 0; i < st->n_pages; i++) {
		if (!st->host_pages[i])
			continue;
		if (st->host) {
			m->host_pages.free(m->host_pages.ctx, st->host_pages[i], DP_V4_PAGE_BYTES);
			seq->host_bytes -= DP_V4_PAGE_BYTES;
		} else {
			m->pages.free(m->pages.ctx, st->host_pages[i], DP_V4_PAGE_BYTES);
			seq->bytes -= DP_V4_PAGE_BYTES;
		}
	}
	if (st->dev_pages) {
		dp_gpu_dealloc(m->g, st->dev_pages, st->cap * sizeof(float *), DP_GPU_MEM_STATE);
		seq->bytes -= st->cap * sizeof(float *);
	}
	free(st->host_pages);
	free(st->tags);
	memset(st, 0, sizeof(*st));
}

static inline float *entry(const struct dp_v4_stream *st, uint32_t i)
{
	return st->host_pages[i / st->per_page] + (size_t)(i % st->per_page) * st->dim;
}

/* Copy between contiguous backend memory and entries [first, first + n),
 * one page run at a time (a host stream's pages are crossed with a
 * download / upload). */
static int stream_copy(struct dp_gpu *g, const struct dp_v4_stream *st, uint32_t first, float *mem,
                       uint32_t n, bool to_stream)
{
	if (first > st->n || n > st->n - first)
		return -EINVAL;
	while (n > 0) {
		uint32_t k = st->per_page - first % st->per_page;
		if (k > n)
			k = n;
		size_t bytes = (size_t)k * st->dim * sizeof(float);
		int ret;
		if (st->host)
			ret = to_stream ? dp_gpu_download(g, entry(st, first), mem, bytes)
			                : dp_gpu_upload(g, mem, entry(st, first), bytes);
		else
			ret = to_stream ? dp_gpu_copy(g, entry(st, first), mem, bytes)
			                : dp_gpu_copy(g, mem, entry(st, first), bytes);
		if (ret < 0)
			return ret;
		first += k;
		mem += (size_t)k * st->dim;
		n -= k;
	}
	return 0;
}

int dp_v4_stream_write(struct dp_gpu *g, struct dp_v4_stream *st, uint32_t first, const float *src,
                       uint32_t n)
{
	return stream_copy(g, st, first, (float *)src, n, true);
}

int dp_v4_stream_read(struct dp_gpu *g, const struct dp_v4_stream *st, uint32_t first, float *dst,
                      uint32_t n)
{
	return stream_copy(g, st, first, dst, n, false);
}

int dp_v4_stream_append(struct dp_v4_seq *seq, struct dp_v4_stream *st, const float *src,
                        uint32_t n)
{
	if (st->fixed || !st->dim)
		return -EINVAL;
	uint32_t need = (st->n + n + st->per_page - 1) / st->per_page;
	while (st->n_pages < need) {
		int ret = add_page(seq, st);
		if (ret < 0)
			return ret;
	}
	st->n += n;
	return dp_v4_stream_write(seq->m->g, st, st->n - n, src, n);
}

/* ---- sequences ------------------------------------------------------------- */

/* Entry size (floats) and fixed entry count of each stream of layer l. */
static void stream_shape(const struct dp_v4_config *c, int l, enum dp_v4_stream_kind k,
                         uint32_t *ret_dim, uint32_t *ret_fixed)
{
	uint32_t d = (uint32_t)c->head_dim, ic = (uint32_t)c->index_head_dim;
	uint32_t m = (uint32_t)dp_v4_compress_rate(c, l);
	bool csa = dp_v4_is_csa(c, l), hca = dp_v4_is_hca(c, l);
	uint32_t dim = 0, fixed = 0;

	switch (k) {
	case DP_V4_S_WINDOW:
		dim = d;
		fixed = (uint32_t)c->sliding_window;
		break;
	case DP_V4_S_COMP_PENDING:
		if (csa || hca) {
			dim = (csa ? 4 : 2) * d;
			fixed = m;
		}
		break;
	case DP_V4_S_COMP_PREV:
		if (csa) {
			dim = 2 * m * d;
			fixed = 1;
		}
		break;
	case DP_V4_S_COMP:
		if (csa || hca)
			dim = d;
		break;
	case DP_V4_S_IDX_PENDING:
		if (csa) {
			dim = 4 * ic;
			fixed = m;
		}
		break;
	case DP_V4_S_IDX_PREV:
		if (csa) {
			dim = 2 * m * ic;
			fixed = 1;
		}
		break;
	case DP_V4_S_IDX:
		if (csa)
			dim = ic;
		break;
	default:
		break;
	}
	*ret_dim = dim;
	*ret_fixed = fixed;
}

int dp_v4_state_supported(const struct dp_v4_config *c)
{
	for (int l = 0; l < c->num_hidden_layers; l++)
		for (int k = 0; k < DP_V4_S_MAX; k++) {
			uint32_t dim, fixed;
			stream_shape(c, l, (enum dp_v4_stream_kind)k, &dim, &fixed);
			if ((size_t)dim * sizeof(float) > DP_V4_PAGE_BYTES)
				return -ENOTSUP;
		}
	return 0;
}

void dp_v4_seq_free(struct dp_v4_seq *s)
{
	if (!s)
		return;
	for (int l = 0; s->layers && l < s->m->cfg.num_hidden_layers; l++) {
		dp_v4_csa_cache_free(s->m, s, s->layers[l].csa);
		for (int k = 0; k < DP_V4_S_MAX; k++)
			stream_fini(s, &s->layers[l].s[k]);
	}
	free(s->layers);
	free(s);
}

int dp_v4_seq_new(struct dp_v4_model *m, struct dp_v4_seq **ret_seq)
{
	if (!m || !ret_seq)
		return -EINVAL;
	const struct dp_v4_config *c = &m->cfg;
	struct dp_v4_seq *s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	s->m = m;
	s->layers = calloc((size_t)c->num_hidden_layers, sizeof(*s->layers));
	if (!s->layers) {
		free(s);
		return -ENOMEM;
	}
	for (int l = 0; l < c->num_hidden_layers; l++)
		for (int k = 0; k < DP_V4_S_MAX; k++) {
			uint32_t dim, fixed;
			stream_shape(c, l, (enum dp_v4_stream_kind)k, &dim, &fixed);
			bool host = m->csa_host && k == DP_V4_S_COMP && dp_v4_is_csa(c, l);
			int ret = stream_init(s, &s->layers[l].s[k], dim, fixed, host);
			if (ret < 0) {
				dp_v4_seq_free(s);
				return ret;
			}
		}
	*ret_seq = s;
	return 0;
}

int dp_v4_seq_new_at(struct dp_v4_model *m, uint64_t pos, struct dp_v4_seq **ret_seq)
{
	struct dp_v4_seq *s;
	int ret = dp_v4_seq_new(m, &s);
	if (ret < 0)
		return ret;
	const struct dp_v4_config *c = &m->cfg;
	for (int l = 0; l < c->num_hidden_layers; l++) {
		uint64_t rate = (uint64_t)dp_v4_compress_rate(c, l);
		enum dp_v4_stream_kind growing[2] = { DP_V4_S_COMP, DP_V4_S_IDX };
		for (int i = 0; i < 2; i++) {
			struct dp_v4_stream *st = &s->layers[l].s[growing[i]];
			if (!st->dim)
				continue;
			uint64_t n = pos / rate;
			if (n > UINT32_MAX) {
				dp_v4_seq_free(s);
				return -E2BIG;
			}
			uint32_t need = (uint32_t)((n + st->per_page - 1) / st->per_page);
			while (st->n_pages < need) {
				if ((ret = add_page(s, st)) < 0) {
					dp_v4_seq_free(s);
					return ret;
				}
			}
			st->n = (uint32_t)n;
		}
	}
	s->pos = pos;
	s->hist_unknown = pos > 0 && m->engram_hist > 0;
	*ret_seq = s;
	return 0;
}

/* A full page of a growing stream: appends never reach it again. */
static bool page_frozen(const struct dp_v4_stream *st, uint32_t i)
{
	return !st->fixed && st->dim && (uint64_t)(i + 1) * st->per_page <= st->n;
}

size_t dp_v4_seq_pages(const struct dp_v4_seq *s, struct dp_v4_page_ref *refs, size_t max)
{
	size_t n = 0;
	for (int l = 0; l < s->m->cfg.num_hidden_layers; l++)
		for (int k = 0; k < DP_V4_S_MAX; k++) {
			const struct dp_v4_stream *st = &s->layers[l].s[k];
			for (uint32_t i = 0; i < st->n_pages; i++, n++)
				if (refs && n < max)
					refs[n] = (struct dp_v4_page_ref){ .layer = (uint16_t)l,
									   .kind = (uint8_t)k,
									   .index = i,
									   .host = st->host,
									   .frozen = page_frozen(st, i),
									   .tag = st->tags[i],
									   .page = st->host_pages[i] };
		}
	return n;
}

int dp_v4_seq_tag_page(struct dp_v4_seq *s, const struct dp_v4_page_ref *ref, uint64_t tag)
{
	if (!s || !ref || !tag || ref->layer >= s->m->cfg.num_hidden_layers || ref->kind >= DP_V4_S_MAX)
		return -EINVAL;
	struct dp_v4_stream *st = &s->layers[ref->layer].s[ref->kind];
	if (ref->index >= st->n_pages || !page_frozen(st, ref->index))
		return -EINVAL;
	st->tags[ref->index] = tag;
	return 0;
}

void dp_v4_seq_set_gate(struct dp_v4_seq *s, dp_v4_gate_fn fn, void *ctx)
{
	s->gate = fn;
	s->gate_ctx = ctx;
}

bool dp_v4_seq_poisoned(const struct dp_v4_seq *s)
{
	return s->poisoned;
}

uint64_t dp_v4_seq_pos(const struct dp_v4_seq *s)
{
	return s->pos;
}

size_t dp_v4_seq_bytes(const struct dp_v4_seq *s)
{
	return s->bytes;
}

size_t dp_v4_seq_host_bytes(const struct dp_v4_seq *s)
{
	return s->host_bytes;
}

/* ---- Engram history ----------------------------------------------------- */

int dp_v4_seq_engram_history(const struct dp_v4_seq *s, int32_t *out, uint32_t max)
{
	if (!s || (!out && max))
		return -EINVAL;
	if (s->hist_unknown)
		return -ENODATA;
	if (s->hist_n > max)
		return -EINVAL;
	memcpy(out, s->hist, s->hist_n * sizeof(*out));
	return (int)s->hist_n;
}

int dp_v4_seq_set_engram_history(struct dp_v4_seq *s, const int32_t *tokens, uint32_t n)
{
	if (!s || (!tokens && n))
		return -EINVAL;
	uint32_t keep = s->m->engram_hist;
	uint32_t need = s->pos < keep ? (uint32_t)s->pos : keep;
	if (n < need)
		return -EINVAL;
	for (uint32_t i = n - need; i < n; i++)
		if (tokens[i] < 0 || tokens[i] >= s->m->cfg.vocab_size)
			return -EINVAL;
	memcpy(s->hist, tokens + (n - need), need * sizeof(*tokens));
	s->hist_n = need;
	s->hist_unknown = false;
	return 0;
}

/* After a call fed tokens[0..n): keep the last N-1 of history ++ tokens. */
void dp_v4_seq_engram_advance(struct dp_v4_seq *s, const int32_t *tokens, uint32_t n)
{
	uint32_t keep = s->m->engram_hist;
	if (keep == 0)
		return;
	if (n >= keep) {
		memcpy(s->hist, tokens + (n - keep), keep * sizeof(*tokens));
		s->hist_n = keep;
		return;
	}
	uint32_t old = s->hist_n + n > keep ? keep - n : s->hist_n; /* old entries kept */
	memmove(s->hist, s->hist + (s->hist_n - old), old * sizeof(*tokens));
	memcpy(s->hist + old, tokens, n * sizeof(*tokens));
	s->hist_n = old + n;
}
