/* SPDX-License-Identifier: MIT */
/*
 * model/v4.h — the DeepSeek-V4 forward pass over the gpu op interface.
 *
 * A struct dp_v4_model holds a checkpoint's weights on one backend. A
 * struct dp_v4_seq is one sequence's state: its position and, per layer, the
 * sliding window of raw kv, the compressors' pending tokens and overlap, and
 * the growing streams of compressed entries and index keys (paged; see
 * struct dp_v4_stream). dp_v4_forward() advances any number of sequences by
 * any number of tokens each in one batch (continuous batching: prefills and
 * one-token decodes side by side); feeding a prompt in one call or in pieces
 * gives the same logits to fp32 rounding.
 *
 * docs/v4-forward.md is the precise description of the computation.
 *
 * Threads: a model and its sequences are used by one thread at a time (the
 * compute thread); the model is read-only during forwards.
 */
#ifndef DP_MODEL_V4_H
#define DP_MODEL_V4_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gpu/gpu.h"
#include "model/config.h"

#ifdef __cplusplus
extern "C" {
#endif

struct dp_v4_model;
struct dp_v4_seq;

/* Page size of the paged state streams. */
#define DP_V4_PAGE_BYTES (64u * 1024u)

/* The streams of one layer's state; every one is a run of fixed-size entries
 * in DP_V4_PAGE_BYTES pages. Which exist depends on the layer type. */
enum dp_v4_stream_kind {
	DP_V4_S_WINDOW,	      /* all: raw kv of the last W positions, a ring */
	DP_V4_S_COMP_PENDING, /* CSA/HCA: kv|gate rows of the unfinished window */
	DP_V4_S_COMP_PREV,    /* CSA: last closed window's Ca values, gates + bias */
	DP_V4_S_COMP,	      /* CSA/HCA: compressed entries (growing) */
	DP_V4_S_IDX_PENDING,  /* CSA: the indexer's unfinished window */
	DP_V4_S_IDX_PREV,     /* CSA: the indexer's overlap */
	DP_V4_S_IDX,	      /* CSA: index keys (growing) */
	DP_V4_S_MAX,
};

/* Where a model's state pages come from (default: dp_gpu_alloc, accounted
 * as DP_GPU_MEM_STATE). alloc returns zeroed backend memory of `bytes`. */
struct dp_v4_page_ops {
	void *(*alloc)(void *ctx, size_t bytes);
	void (*free)(void *ctx, void *page, size_t bytes);
	void *ctx;
};

/*
 * CSA entries in host memory. With csa_host on, the compressed entries
 * (DP_V4_S_COMP) of CSA layers of sequences created from then on live in host
 * pages from `host_pages` (NULL: dp_gpu_host_alloc, pinned) instead of backend
 * memory; everything else (index keys, window, compressor state, HCA entries)
 * stays on the device. Each CSA layer's attention then stages on the device
 * only the entries the lightning indexer picked: those still staged from the
 * previous steps are reused (the speculation: a query's choice changes
 * slowly), the rest are gathered from the host pages into a pinned buffer and
 * copied up in one copy. Logits are bit-identical to the device mode.
 * Returns 0 or -EINVAL. Call before creating sequences.
 */
int dp_v4_model_set_csa_host(struct dp_v4_model *m, bool on, const struct dp_v4_page_ops *host_pages);
bool dp_v4_model_csa_host(const struct dp_v4_model *m);

/* Where CSA layers' compressed entries live, as a setting names it. */
enum dp_v4_csa_where {
	DP_V4_CSA_DEVICE, /* backend memory */
	DP_V4_CSA_HOST,	  /* host pages: dp_v4_model_set_csa_host(m, true, ...) */
	DP_V4_CSA_WHERE_MAX,
};
/* "device", "host"; NULL out of range. Parse: 0 or -EINVAL. */
const char *dp_v4_csa_where_name(enum dp_v4_csa_where w);
int dp_v4_csa_where_parse(const char *s, enum dp_v4_csa_where *ret);

/* Counters of the host-entries mode since the model was loaded. */
struct dp_v4_csa_stats {
	uint64_t steps;	    /* (sequence, CSA layer) attentions that staged entries */
	uint64_t selected;  /* distinct entries the indexer picked, summed over steps */
	uint64_t hits;	    /* of those, already staged on the device */
	uint64_t fetched;   /* of those, gathered from host memory after the indexer */
	uint64_t bytes;	    /* host-to-device bytes of the fetched entries */
	uint64_t gather_ns; /* inside layers: indexer's choice to staged view */
	uint64_t evicted;   /* staged entries dropped (not picked recently) */
};
void dp_v4_model_csa_stats(const struct dp_v4_model *m, struct dp_v4_csa_stats *ret);

/* Load config.json and the safetensors checkpoint in `dir` onto backend g.
 * Every tensor's name, shape and dtype is checked against the config; the
 * message names the file, tensor and the mismatch. */
int dp_v4_model_load(struct dp_gpu *g, const char *dir, struct dp_v4_model **ret_model, char *err,
		     size_t err_len);
void dp_v4_model_free(struct dp_v4_model *m);

/* ---- routed experts paged in (model/v4_experts.c) ------------------------------
 *
 * By default every routed expert is resident in backend memory. With
 * `experts` DRAM or NVME, each layer keeps only `expert_slots` of its E
 * experts there (a cache, CLOCK replacement) and the rest come in when the
 * router picks them:
 *   DRAM  from a host copy of every expert's checkpoint bytes, taken at load
 *         (pinned: dp_gpu_host_alloc);
 *   NVME  read from the checkpoint's own files by the expert reader (struct
 *         dp_v4_expert_io: dualpathd's io thread, O_DIRECT, 4 KiB-aligned
 *         windows) into pinned staging, then filled into the slot; nothing
 *         is copied at load.
 * A hash-routed layer's picks depend only on token ids, so at the start of a
 * forward its misses are read ahead (not urgent), while the earlier layers
 * compute. A top-k layer's picks are known only after its router; NVME
 * guesses them one layer early (lookahead routing: layer l's router applied
 * to layer l-1's MoE input, which the residual stream keeps close to layer
 * l's) and reads the guessed misses ahead while layer l-1's experts run;
 * what the guess missed is read when the router has picked it (urgent: what
 * the layer waits for). A layer whose step picks more experts
 * than it has slots runs them in passes of ascending expert ranges. The
 * logits are bitwise those of resident experts (the moe op adds experts in
 * ascending order either way).
 * NVME reads are checked against a checksum of each matrix taken at load: a
 * checkpoint changed on disk fails the step (-EBADMSG) rather than serving
 * other weights.
 */
enum dp_v4_experts_where {
	DP_V4_EXPERTS_DEVICE,
	DP_V4_EXPERTS_DRAM,
	DP_V4_EXPERTS_NVME,
	DP_V4_EXPERTS_WHERE_MAX,
};
/* "device", "dram", "nvme"; NULL out of range. Parse: 0 or -EINVAL. */
const char *dp_v4_experts_where_name(enum dp_v4_experts_where w);
int dp_v4_experts_where_parse(const char *s, enum dp_v4_experts_where *ret);

/*
 * Which numerics the forward computes (`[model] numerics`, `--numerics`):
 *   TRANSFORMERS  FP8/FP4 weights dequantized exactly, fp32 activations and
 *                 KV: transformers 5.17 on a CPU (the parity of
 *                 tests/model/test_published.c);
 *   REFERENCE     DeepSeek's inference graph (inference/model.py, kernel.py):
 *                 every product with an FP8/FP4 weight but wo_a rounds its
 *                 activation through e4m3 per 128 first and sums per weight
 *                 block (gpu.h, dp_gpu_weight.act_quant); the routed experts
 *                 weigh the SwiGLU output before the down product; window and
 *                 compressed KV's non-RoPE dims go through e4m3 per 64; the
 *                 indexer's q and keys through a Hadamard rotation and e2m1
 *                 per 32 (dp_gpu_ops.round). Activations stay fp32 (the
 *                 reference keeps them in bf16; we do not reproduce that), RoPE
 *                 dims of the KV are not rounded (bf16 in the reference).
 *                 Needs the weights kept as stored (not `dequantize`) and a
 *                 backend with the round op (cpu; cuda: -ENOTSUP). On a
 *                 checkpoint without FP8/FP4 weights only the KV and indexer
 *                 rounding apply (DeepSeek's model.py with dtype bf16).
 *   AUTO          REFERENCE for a checkpoint whose config.json carries a
 *                 quantization_config (the published FP8 release), unless
 *                 `dequantize` is set; TRANSFORMERS otherwise.
 */
enum dp_v4_numerics {
	DP_V4_NUMERICS_AUTO,
	DP_V4_NUMERICS_TRANSFORMERS,
	DP_V4_NUMERICS_REFERENCE,
	DP_V4_NUMERICS_MAX,
};
/* "auto", "transformers", "reference"; NULL out of range. Parse: 0 or -EINVAL. */
const char *dp_v4_numerics_name(enum dp_v4_numerics n);
int dp_v4_numerics_parse(const char *s, enum dp_v4_numerics *ret);

struct dp_v4_load_opts {
	enum dp_v4_experts_where experts;
	uint32_t expert_slots; /* per layer, num_experts_per_tok..E; 0: max(k, E / 4) */
	bool no_lookahead;     /* NVME: do not read top-k layers' experts ahead (below) */
	/* Dequantize FP8/FP4/BF16 weights into the backend's dtype at load (fp32 on
	 * cpu) instead of keeping them as stored: the path before issue 14, kept
	 * for parity tests. Without it (the default) the cpu backend computes on
	 * the stored bytes: single matrices used in place from the mapped
	 * shards, stacks (experts, kv|gate pairs) copied as quantized bytes, and
	 * a backend that has no kernels for FP8/FP4 (cuda) refuses a checkpoint
	 * holding them (-ENOTSUP, the message says which tensor and why). */
	bool dequantize;
	enum dp_v4_numerics numerics; /* above; AUTO by default */
};

/* The numerics a loaded model computes (never AUTO). */
enum dp_v4_numerics dp_v4_model_numerics(const struct dp_v4_model *m);

/* Where a loaded model's weights live. owned: bytes the backend allocated
 * (dp_gpu_mem_stats' DP_GPU_MEM_WEIGHTS); mapped: checkpoint bytes the
 * weights use in place (mmap'd shards, page cache: resident once read);
 * kept: weights held as the checkpoint stores them (FP8, FP4, BF16), of
 * which wrapped in place; dequantized: weights converted at load. */
struct dp_v4_weight_stats {
	uint64_t owned_bytes, mapped_bytes;
	uint32_t kept, wrapped, dequantized;
};
void dp_v4_model_weight_stats(const struct dp_v4_model *m, struct dp_v4_weight_stats *ret);

/* dp_v4_model_load with options (NULL: the defaults, every expert resident). */
int dp_v4_model_load_opts(struct dp_gpu *g, const char *dir, const struct dp_v4_load_opts *opts,
			  struct dp_v4_model **ret_model, char *err, size_t err_len);

/* How an NVME model reads expert bytes. read queues a read of len bytes at
 * offset (both multiples of 4096) of checkpoint file `file` (see
 * dp_v4_model_expert_file) into dst (host memory, 4 KiB-aligned) and returns
 * 0 and a ticket; `layer` is the layer of the forward at hand that needs it
 * and `urgent` says that layer is waiting for it now (a miss, not a read
 * ahead): a reader serves them in the order the forward needs them
 * (dualpathd orders them with the KV restores' pages by layer). wait
 * returns once that
 * read has finished: 0 when at least `need` bytes arrived (the window may
 * reach past the end of the file), -EIO for fewer, or the read's -errno. The
 * model waits for every ticket it got before it frees or reuses dst. */
struct dp_v4_expert_io {
	int (*read)(void *ctx, uint32_t file, uint64_t offset, uint32_t len, void *dst,
		    uint32_t layer, bool urgent, uint64_t *ret_ticket);
	int (*wait)(void *ctx, uint64_t ticket, uint32_t need);
	void *ctx;
};
/* Use io for the expert reads (copied; NULL: the built-in reader, a
 * synchronous pread on the calling thread). -EINVAL unless the model pages
 * its experts from NVMe. Not while a forward runs. */
int dp_v4_model_set_expert_io(struct dp_v4_model *m, const struct dp_v4_expert_io *io);
/* The checkpoint files expert reads name (0 unless NVME), and their paths. */
uint32_t dp_v4_model_expert_file_count(const struct dp_v4_model *m);
const char *dp_v4_model_expert_file(const struct dp_v4_model *m, uint32_t i);

struct dp_v4_expert_stats {
	enum dp_v4_experts_where where;
	uint32_t slots;		/* per layer */
	uint64_t cache_bytes;	/* the slots of every layer, backend memory */
	uint64_t host_bytes;	/* DRAM: the host copy; NVME: staging */
	uint64_t uses;		/* (layer, expert) a step used */
	uint64_t hits;		/* of those, already resident */
	uint64_t misses;	/* brought in when the layer needed them */
	uint64_t prefetched;	/* used, and read ahead (hash layers; lookahead) */
	uint64_t ahead_unused;	/* read ahead, not used by the step (lookahead's misses) */
	uint64_t passes;	/* moe calls: one per layer and step, more when picks > slots */
	uint64_t bytes_in;	/* checkpoint bytes brought in */
	uint64_t wait_ns;	/* compute waiting for expert reads */
	uint64_t fill_ns;	/* filling slots (conversion, host to backend) */
	uint64_t corrupt;	/* NVME reads whose bytes differ from the checkpoint's at load */
};
void dp_v4_model_expert_stats(const struct dp_v4_model *m, struct dp_v4_expert_stats *ret);

const struct dp_v4_config *dp_v4_model_config(const struct dp_v4_model *m);
struct dp_gpu *dp_v4_model_gpu(const struct dp_v4_model *m);

/* Use ops for the state pages of sequences created from now on (NULL:
 * back to the default). */
void dp_v4_model_set_page_ops(struct dp_v4_model *m, const struct dp_v4_page_ops *ops);

/* A fresh sequence at position 0. */
int dp_v4_seq_new(struct dp_v4_model *m, struct dp_v4_seq **ret_seq);
void dp_v4_seq_free(struct dp_v4_seq *s);
/* A sequence standing at position pos, with every state page allocated (and
 * zeroed) but not filled: the KV cache restores a parked state into it page
 * by page (dp_v4_seq_pages). */
int dp_v4_seq_new_at(struct dp_v4_model *m, uint64_t pos, struct dp_v4_seq **ret_seq);

/* One page of a sequence's state. */
struct dp_v4_page_ref {
	uint16_t layer;
	uint8_t kind; /* enum dp_v4_stream_kind */
	uint32_t index;
	bool host;  /* page is host memory (CSA entries in host memory), not backend */
	bool frozen; /* a full page of a growing stream: its bytes never change again */
	uint64_t tag; /* frozen pages: what dp_v4_seq_tag_page left on it (0: none) */
	void *page; /* backend memory (or host, see host), DP_V4_PAGE_BYTES */
};

/* The sequence's state pages in a fixed order (layer, kind, index): writes
 * up to max refs and returns how many there are. Two sequences of one model
 * at the same position have the same list except for the page pointers. */
size_t dp_v4_seq_pages(const struct dp_v4_seq *s, struct dp_v4_page_ref *refs, size_t max);
/*
 * Frozen pages. The growing streams (DP_V4_S_COMP, DP_V4_S_IDX) only ever
 * append entries, so once a page of one is full its bytes never change
 * while the sequence lives (nothing rewinds a sequence). The KV cache uses
 * that to share such pages between the copies it keeps of one conversation
 * (kvcache.h, "Prefix units"): it tags a frozen page with an opaque value
 * naming its own copy of the same bytes, and a later copy of this sequence
 * holds that copy instead of copying the page again. A tag is kept until
 * the sequence is freed; the model never reads it. -EINVAL unless ref
 * names a frozen page of s (layer, kind, index), or tag is 0.
 */
int dp_v4_seq_tag_page(struct dp_v4_seq *s, const struct dp_v4_page_ref *ref, uint64_t tag);

/*
 * A per-layer gate: the forward calls fn(ctx, s, layer) before it touches
 * layer `layer` of the sequence's state, once per layer per forward, in
 * layer order. It returns 0 when that layer's pages are ready (the KV
 * cache's layer-by-layer restore waits there, per layer), or a negative
 * errno when they cannot be (a failed or corrupt restore): the forward then
 * carries on for the other sequences and marks this one poisoned, and the
 * caller must discard its logits and rebuild its state. NULL fn: no gate.
 */
typedef int (*dp_v4_gate_fn)(void *ctx, struct dp_v4_seq *s, int layer);
void dp_v4_seq_set_gate(struct dp_v4_seq *s, dp_v4_gate_fn fn, void *ctx);
/* Whether a gate failed on this sequence: its state is garbage. */
bool dp_v4_seq_poisoned(const struct dp_v4_seq *s);

/* Tokens consumed so far. */
uint64_t dp_v4_seq_pos(const struct dp_v4_seq *s);
/* Backend bytes the sequence's state occupies (staged CSA entries included). */
size_t dp_v4_seq_bytes(const struct dp_v4_seq *s);
/* Host bytes of its host-resident pages (CSA entries in host memory). */
size_t dp_v4_seq_host_bytes(const struct dp_v4_seq *s);

/* One sequence's share of a batch. */
struct dp_v4_batch_item {
	struct dp_v4_seq *seq;
	const int32_t *tokens; /* host memory */
	uint32_t n_tokens;     /* >= 1 */
	bool all_logits;       /* logits of every token, or of the last one only */
};

/*
 * Run the batch. Writes logits (host memory) for each item in order: n_tokens
 * rows if all_logits, else one row, each vocab_size floats. Token ids are
 * validated first (-EINVAL, nothing advanced), then the Engram preconditions
 * (-ENODATA: an Engram model without a provider, or a sequence without its
 * Engram history; nothing advanced). On any other error the sequences of the
 * batch are left in an unspecified state and must be reset or freed.
 * Returns 0 or a negative errno.
 */
int dp_v4_forward(struct dp_v4_model *m, const struct dp_v4_batch_item *items, uint32_t n_items,
		  float *logits);

/* The logits of every position of tokens[0..n) fed to a fresh sequence, in
 * pieces of chunks[0..n_chunks) tokens (which must add up to n; NULL: one
 * call). Writes n x vocab_size floats to out. This is what dp-logits runs. */
int dp_v4_logits(struct dp_v4_model *m, const int32_t *tokens, uint32_t n, const uint32_t *chunks,
		 uint32_t n_chunks, float *out);

/* Rows of logits dp_v4_forward writes for this batch. */
uint32_t dp_v4_batch_rows(const struct dp_v4_batch_item *items, uint32_t n_items);

/* ---- Engram (conditional memory, DeepSeek-V4.1 form) ------------------------
 *
 * A config with engram_layer_ids makes an Engram model: at each Engram layer L,
 * before the attention site's mHC, the forward fuses into every token's residual
 * streams the rows that the token's hashed n-grams address in layer L's tables
 * (the engram_fuse op, gpu/gpu.h, with layer L's engram.wkv and the product of
 * engram.x_norm and engram.k_norm; model/weights.h lists the tensors). The tables
 * are not part of the model: a provider hands the forward each layer's rows.
 *
 * rows(ctx, layer, items, n_items, &rows) is called once per Engram layer per
 * forward, in layer order, with the forward's own items; it returns 0 and, in
 * *ret_rows, backend memory holding [T][F] floats (T = the batch's tokens in item
 * order, F = (N-1) * K * engram_head_dim: the token's rows of the layer's hash
 * heads, dequantized and concatenated, column-major as engram/engram.h numbers
 * them) that stays valid until the provider is called again; or a negative errno,
 * which fails the forward. It should wait only for layer L's rows: a provider
 * whose reads were issued before the forward (engram/engram.h, dp_engram_prefetch)
 * overlaps them with the layers before L.
 *
 * Hashing state. The rows of a position depend on the N-1 tokens before it, so a
 * sequence keeps its last N-1 raw token ids (its Engram history): the forward
 * appends each call's tokens after the call, and a provider reads the history
 * before the call with dp_v4_seq_engram_history. It is plain token ids and is not
 * in the state pages: a sequence rebuilt with dp_v4_seq_new_at() at pos > 0 has
 * no history until dp_v4_seq_set_engram_history() gives it the last tokens of the
 * session's token history (which the KV cache keeps), and an Engram forward
 * refuses it (-ENODATA) until then.
 */
struct dp_v4_engram_provider {
	int (*rows)(void *ctx, int layer, const struct dp_v4_batch_item *items, uint32_t n_items,
		    const float **ret_rows);
	void *ctx;
};

/* Whether the model has Engram layers. */
bool dp_v4_model_has_engram(const struct dp_v4_model *m);
/* Use p for the Engram rows (copied; NULL: none). An Engram model's forward
 * fails with -ENODATA while it has no provider. Returns 0 or -EINVAL. */
int dp_v4_model_set_engram(struct dp_v4_model *m, const struct dp_v4_engram_provider *p);

/* What the model's n-gram hashing needs besides config.json's engram keys. */
struct dp_v4_engram_info {
	const int64_t *compression_map; /* [map_size]: raw id -> compressed id (host memory) */
	int64_t map_size;		/* vocab_size */
	int64_t compressed_vocab_size;	/* engram_compressed_vocab_size, else max(map) + 1 */
	int64_t pad_id;			/* raw id: engram_pad_id, else pad_token_id */
	uint64_t seed;			/* config.json engram_seed, default 0 (the demo's) */
	uint32_t row_floats;		/* F above */
};
/* Returns 0 or -ENOENT (no Engram layers) / -EINVAL. */
int dp_v4_model_engram_info(const struct dp_v4_model *m, struct dp_v4_engram_info *ret);

/* Most tokens of Engram history a sequence keeps (N-1 of them are used). */
#define DP_V4_ENGRAM_HISTORY_MAX (DP_V4_ENGRAM_NGRAM_MAX - 1)
/* The sequence's last min(pos, N-1) raw token ids, oldest first, into out
 * (room for max): returns how many, or -ENODATA (not known: see above) or
 * -EINVAL; 0 for a model without Engram. */
int dp_v4_seq_engram_history(const struct dp_v4_seq *s, int32_t *out, uint32_t max);
/* Give a sequence its history: the last n raw token ids before its position,
 * oldest first; n must be at least min(pos, N-1) (earlier ones are dropped).
 * Returns 0 or -EINVAL. */
int dp_v4_seq_set_engram_history(struct dp_v4_seq *s, const int32_t *tokens, uint32_t n);

/* Model directories. `name` NULL or "builtin" means the embedded default
 * model: $DUALPATH_BUILTIN_MODEL, else where `meson install` put it, else
 * the source tree's model/embedded. Writes the directory to buf. Returns 0,
 * -ENOENT (no embedded model found) or -ENAMETOOLONG. */
int dp_v4_resolve_dir(const char *name, char *buf, size_t len);

struct dp_tok;
/* The tokenizer of a model directory: byte-level when there is no
 * tokenizer.json (ids 0..255 bytes, vocab_size - 256 specials: BOS, EOS,
 * PAD first), else its tokenizer.json (dp_tok_new_bpe, model/tokenizer.h). */
int dp_v4_tokenizer_new(const char *dir, const struct dp_v4_config *c, struct dp_tok **ret_tok,
			char *err, size_t err_len);

#ifdef __cplusplus
}
#endif
#endif /* DP_MODEL_V4_H */
