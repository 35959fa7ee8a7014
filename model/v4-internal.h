/* SPDX-License-Identifier: MIT */
/* The V4 model's weights and state layout; shared by model/v4*.c only. */
#ifndef DP_MODEL_V4_INTERNAL_H
#define DP_MODEL_V4_INTERNAL_H

#include "model/v4.h"

/* Weights of one layer, on the backend. Vectors are fp32. */
struct dp_v4_layer_w {
	/* mHC, attention and MoE sites: fn [(2+n)n][nD], base [(2+n)n], scale [3] */
	float *attn_hc_fn, *attn_hc_base, *attn_hc_scale;
	float *ffn_hc_fn, *ffn_hc_base, *ffn_hc_scale;
	float *in_norm, *post_norm; /* [D] */

	/* attention */
	struct dp_gpu_weight q_a;  /* [Q][D] */
	float *q_a_norm;	   /* [Q] */
	struct dp_gpu_weight q_b;  /* [H*d][Q] */
	struct dp_gpu_weight kv;   /* [d][D] */
	float *kv_norm;		   /* [d] */
	struct dp_gpu_weight o_a;  /* g x [R][H*d/g] */
	struct dp_gpu_weight o_b;  /* [D][g*R] */
	float *sinks;		   /* [H] */

	/* compressor (CSA: width 2d, HCA: width d) */
	struct dp_gpu_weight comp_kvg; /* [2*width][D]: kv_proj rows, then gate_proj rows */
	float *comp_bias;	       /* [m][width] position bias */
	float *comp_norm;	       /* [d] */

	/* lightning indexer (CSA) */
	struct dp_gpu_weight idx_kvg; /* [2*2c][D] */
	float *idx_bias;	      /* [m][2c] */
	float *idx_norm;	      /* [c] */
	struct dp_gpu_weight idx_q_b; /* [nI*c][Q] */
	struct dp_gpu_weight idx_wp;  /* [nI][D] */

	/* MoE */
	struct dp_gpu_weight gate;	 /* [E][D] */
	float *gate_bias;		 /* [E], moe layers */
	int32_t *tid2eid;		 /* [V][k], hash_moe layers */
	struct dp_gpu_weight gate_up;	 /* E x [2I][D]: gate rows, then up rows */
	struct dp_gpu_weight down;	 /* E x [D][I] */
	bool experts_kept;		 /* gate_up/down hold the checkpoint's dtypes */
	struct dp_gpu_weight sh_gate_up; /* [2I][D] */
	struct dp_gpu_weight sh_down;	 /* [D][I] */

	/* Engram layers */
	struct dp_gpu_weight engram_wkv; /* [(n+1)*D][F] */
	float *engram_gain;		 /* [n][D]: x_norm * k_norm */
};

struct dp_v4_experts;
struct dp_st;
struct dp_v4_model {
	struct dp_gpu *g;
	const struct dp_gpu_ops *ops;
	struct dp_v4_config cfg;
	struct dp_gpu_weight embed;   /* [V][D] */
	struct dp_gpu_weight lm_head; /* [V][D]; aliases embed when tied */
	bool tied;
	float *norm;				  /* [D] */
	float *hc_fn, *hc_base, *hc_scale;	  /* [n][nD], [n], [1] */
	float *inv_freq[DP_V4_ROPE_WHICH_MAX];	  /* [r/2] each */
	float rope_factor[DP_V4_ROPE_WHICH_MAX];  /* attention factor */
	struct dp_v4_layer_w *layers;
	size_t weight_bytes;
	/* the checkpoint, kept open while weights use its mapped bytes in
	 * place (dp_gpu_weight_wrap); NULL when none does */
	struct dp_st *st;
	struct dp_v4_weight_stats wst;
	struct dp_v4_page_ops pages; /* where state pages come from */

	/* Engram (cfg.engram.n_layers > 0) */
	struct dp_v4_engram_provider engram;
	struct dp_v4_engram_info engram_info;
	int64_t *engram_map; /* what engram_info.compression_map points at */
	uint32_t engram_hist; /* N - 1: history each sequence keeps */

	/* per-forward scratch, kept here and grown only when a larger batch
	 * arrives, so a forward allocates nothing: backend memory (scratch_get),
	 * and the host copies of the rows' ids and positions */
	void *scratch;
	size_t scratch_bytes;
	int32_t *host_ids; /* [host_rows] */
	int64_t *host_pos; /* [host_rows] */
	uint32_t host_rows;

	/* routed experts paged in (v4_experts.c); NULL: all resident */
	struct dp_v4_load_opts load_opts; /* numerics resolved: never AUTO */
	struct dp_v4_experts *experts;

	/* CSA entries in host memory (dp_v4_model_set_csa_host; v4_csa.c) */
	bool csa_host;
	struct dp_v4_page_ops host_pages; /* where those pages come from */
	struct dp_v4_csa_stats csa_st;
	/* host scratch of the staging step, grown on demand */
	int32_t *csa_sel;   /* [S][k]: the indexer's choice, then slots */
	size_t csa_sel_cap;
	int32_t *csa_miss;  /* entries to fetch */
	size_t csa_miss_cap;
	void *csa_order;    /* trim's sort array */
	size_t csa_order_cap;
	float *csa_stage;   /* pinned (dp_gpu_host_alloc): [misses][d] */
	size_t csa_stage_bytes;
};

/* A run of fixed-size entries in pages of backend memory; entries never
 * straddle pages. The page table exists twice: on the host (to address pages
 * from the host) and in backend memory (for the ops). Fixed streams (window,
 * pending rows, overlap) have all their pages from the start; growing ones
 * (compressed entries, index keys) gain pages as they grow. */
struct dp_v4_stream {
	float **host_pages;
	float **dev_pages; /* backend memory, cap entries */
	uint64_t *tags;	   /* host, cap entries: frozen pages' tags (dp_v4_seq_tag_page) */
	uint32_t n_pages, cap;
	uint32_t per_page; /* entries per page */
	uint32_t dim;	   /* floats per entry */
	uint32_t n;	   /* entries: present (growing) or capacity (fixed) */
	bool fixed;
	bool host; /* pages in host memory (the model's host_pages); no dev_pages */
};

/* The entries of a host-resident CSA stream staged on the device for one
 * (sequence, layer): slots [0, live) of `dev` hold entries slot_entry[...];
 * where[] maps an entry to its slot (-1: not staged). Kept from step to step
 * (the speculation: the indexer's choice changes slowly), trimmed after each
 * step (v4_csa.c). */
struct dp_v4_csa_cache {
	float *dev;	     /* backend: [mem_cap][dim] */
	float **tab;	     /* backend: one page pointer (dev), for the op view */
	uint32_t mem_cap, live, dim;
	int32_t *slot_entry; /* host [host_cap] */
	uint64_t *slot_use;  /* host [host_cap]: step << 32 | (last query row + 1) */
	uint32_t host_cap;
	int32_t *where;	     /* host [where_cap] */
	uint32_t where_cap;
	uint64_t step;
};

/* One layer of a sequence's state (docs/v4-forward.md "Incremental state"),
 * one stream per enum dp_v4_stream_kind; absent streams have dim 0. */
struct dp_v4_layer_state {
	struct dp_v4_stream s[DP_V4_S_MAX];
	struct dp_v4_csa_cache *csa; /* host-resident CSA entries: the staged ones */
};

struct dp_v4_seq {
	struct dp_v4_model *m;
	uint64_t pos;
	dp_v4_gate_fn gate;
	void *gate_ctx;
	bool poisoned;
	struct dp_v4_layer_state *layers;
	size_t bytes;	   /* backend memory */
	size_t host_bytes; /* host-resident pages (CSA entries in host memory) */
	/* Engram history: the last hist_n (<= N-1) raw token ids, oldest first */
	int32_t hist[DP_V4_ENGRAM_HISTORY_MAX];
	uint32_t hist_n;
	bool hist_unknown; /* rebuilt at pos > 0 and not given its history yet */
};

/* v4_state.c */
/* Append n entries from `src` ([n][dim], backend memory) to a growing stream. */
int dp_v4_stream_append(struct dp_v4_seq *seq, struct dp_v4_stream *st, const float *src,
			uint32_t n);
/* Copy n entries between contiguous backend memory and entries
 * [first, first + n) of a stream (which must exist). */
int dp_v4_stream_write(struct dp_gpu *g, struct dp_v4_stream *st, uint32_t first, const float *src,
		       uint32_t n);
int dp_v4_stream_read(struct dp_gpu *g, const struct dp_v4_stream *st, uint32_t first, float *dst,
		      uint32_t n);
/* Append a call's tokens to the sequence's Engram history. */
void dp_v4_seq_engram_advance(struct dp_v4_seq *s, const int32_t *tokens, uint32_t n);
/* 0, or -ENOTSUP when an entry of some stream would not fit a page. */
int dp_v4_state_supported(const struct dp_v4_config *c);
/* v4_csa.c */
/* After the indexer wrote sel ([S][k], backend memory) for layer l of seq,
 * whose compressed entries are in host memory: stage the entries the
 * queries picked on the device (only those not staged already), rewrite sel
 * to index the staged slots, and give the op view of them. The attention op
 * then reads the same entries in the same order as from device pages. */
int dp_v4_csa_stage(struct dp_v4_model *m, struct dp_v4_seq *seq, int l, int32_t *sel,
		    uint32_t S, uint32_t k, struct dp_gpu_stream *ret_view);
/* After the attention op: drop staged entries not picked recently, keep the
 * staged set compact. Off the path between the indexer and the attention. */
int dp_v4_csa_trim(struct dp_v4_model *m, struct dp_v4_seq *seq, int l);
void dp_v4_csa_cache_free(struct dp_v4_model *m, struct dp_v4_seq *seq, struct dp_v4_csa_cache *c);
void dp_v4_csa_model_fini(struct dp_v4_model *m);

/* Routed experts paged in (v4_experts.c). init: after the layers are loaded
 * (their gate_up/down allocated with expert_slots matrices, unfilled), from
 * the checkpoint's expert tensors. step: at the start of a forward, with the
 * step's token ids (host), read the hash layers' misses ahead. moe: the moe
 * op of layer l over the cache (idx, w: the router's output). */
struct dp_v4_weights;
int dp_v4_experts_init(struct dp_v4_model *m, const struct dp_v4_weights *w, char *err,
		       size_t err_len);
void dp_v4_experts_fini(struct dp_v4_model *m);
int dp_v4_experts_step(struct dp_v4_model *m, const int32_t *ids, uint32_t T);
int dp_v4_experts_moe(struct dp_v4_model *m, int l, const float *x, const int32_t *idx,
		      const float *w, uint32_t T, float limit, float *y, const int32_t *ahead_idx);
/* Lookahead routing: whether layer l's experts are guessed one layer early,
 * and scratch (backend) for the guess's router logits [T][E], picks and
 * weights [T][k]. moe's ahead_idx: layer l + 1's guessed picks (or NULL),
 * read ahead once layer l's own misses are queued. */
bool dp_v4_experts_lookahead(const struct dp_v4_model *m, int l);
int dp_v4_experts_ahead_bufs(struct dp_v4_model *m, uint32_t T, float **ret_logits,
			     int32_t **ret_idx, float **ret_w);

/* The op view of a stream. */
static inline struct dp_gpu_stream dp_v4_stream_view(const struct dp_v4_stream *st)
{
	return (struct dp_gpu_stream){ .pages = (float *const *)st->dev_pages,
				       .per_page = st->per_page,
				       .dim = st->dim,
				       .n = st->n };
}

#endif /* DP_MODEL_V4_INTERNAL_H */
