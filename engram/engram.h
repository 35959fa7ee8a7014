/* SPDX-License-Identifier: MIT */
/*
 * engram/engram.h — Engram n-gram hashing, bit-exact with DeepSeek's reference.
 *
 * Engram (DeepSeek, arXiv 2601.07372) adds to chosen layers an embedding looked up by hashed
 * n-grams of the input. This part computes those row ids exactly as the public demo does
 * (deepseek-ai/Engram, engram_demo_v1.py, class NgramHashMapping), so tables trained with the
 * reference index the same rows here. Per Engram layer L, with compressed token ids x' (a raw
 * id -> compressed id map; the pad id is mapped too), max n-gram order N and K heads per order:
 *
 *   multipliers   numpy.random.default_rng(seed + 10007 * L).integers(0, bound, N, int64) with
 *                 bound = max(1, (INT64_MAX // C) // 2), C = compressed vocab size;
 *                 mult[k] = 2 * r[k] + 1. numpy's SeedSequence, PCG64 and Lemire draw are
 *                 reimplemented (engram/numpy_random.c), so any config works.
 *   table sizes   for each layer in config order, each order n = 2..N, each head: the smallest
 *                 prime p > start that no earlier head, order or layer took, where start is
 *                 vocab_size[n - 2] - 1 for the first head and the previous head's prime after
 *                 it. So the first head's table is vocab_size[n - 2] itself when that is a
 *                 free prime; primes are distinct across the whole config, increasing within
 *                 one (layer, order) but not across orders.
 *   rows          at position t, tok[k] = x'[t - k], or the compressed pad id before the start;
 *                 mix(n) = XOR over k < n of tok[k] * mult[k] in int64 that wraps, as numpy
 *                 does; row(n, h) = mix(n) mod prime(n, h), the remainder taking the sign of
 *                 the (positive) prime as numpy's % does, so 0 <= row < prime.
 *   columns       n-major then head: column c = (n - 2) * K + h, DP_ENGRAM_COLUMNS(N, K) of
 *                 them. A row is local to its head's table; the head's table starts at
 *                 offsets[c] in the layer's flat table of offsets[ncols] rows.
 *
 * Raw token ids are int64. A negative id is passed through unmapped (the demo's compressor
 * maps only ids >= 0), so it may make the product overflow and mix negative; both are
 * reproduced. An id >= the map's size is refused (-ERANGE; numpy raises IndexError).
 *
 * Configs: struct dp_engram_config holds the demo's inputs; dp_engram_config_parse reads them
 * from JSON in the golden-vector format of /work/shared/golden/engram (tests/engram/golden):
 * keys compression_map (list of compressed ids, indexed by raw id), compressed_vocab_size,
 * engram_vocab_size (max_ngram_size - 1 table sizes, for n = 2..N), max_ngram_size,
 * n_head_per_ngram, layer_ids, pad_id (a raw id), seed, and optionally vocab_size (must equal
 * the map's length). Other keys are ignored. dp_engram_golden_check also reads input_ids,
 * multipliers, head_table_sizes and hashes and compares.
 *
 * Ownership and threads: a parsed config owns its arrays (dp_engram_config_fini); a hash
 * object copies what it needs from the config and is read-only after dp_engram_hash_new, so
 * every call taking a const struct dp_engram_hash * may run from any thread at once. A
 * struct dp_engram_state belongs to one sequence and one thread at a time. Hashing calls never
 * allocate. Calls never log; the parsers write one line to err (when err is non-NULL and
 * err_len > 0). Errors are negative errno values; ret_* and output buffers are untouched on
 * failure (a failed hashing call writes no row and leaves the state as it was).
 */
#ifndef DP_ENGRAM_ENGRAM_H
#define DP_ENGRAM_ENGRAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Limits: anything beyond is refused as absurd (the demo uses N = 3, K = 8, 2 layers). */
#define DP_ENGRAM_NGRAM_MAX    16              /* max_ngram_size */
#define DP_ENGRAM_HEADS_MAX    64              /* n_head_per_ngram */
#define DP_ENGRAM_LAYERS_MAX   256             /* entries of layer_ids */
#define DP_ENGRAM_LAYER_ID_MAX ((1 << 20) - 1) /* one layer id */
#define DP_ENGRAM_TABLE_MAX    (1LL << 40)     /* one engram_vocab_size entry */
#define DP_ENGRAM_VOCAB_MAX    (1LL << 30)     /* compression_map entries (raw vocabulary) */
/* The per-layer seed step of the reference (PRIME_1). */
#define DP_ENGRAM_LAYER_SEED_STEP 10007

/* Columns of one layer's rows: (N - 1) orders times K heads. */
#define DP_ENGRAM_COLUMNS(N, K) (((N)-1) * (K))
#define DP_ENGRAM_COLUMNS_MAX   DP_ENGRAM_COLUMNS(DP_ENGRAM_NGRAM_MAX, DP_ENGRAM_HEADS_MAX)

/* Column of order n (2..N), head h (0..K-1). */
static inline int dp_engram_column(int n_heads, int n, int head)
{
	return (n - 2) * n_heads + head;
}

/* ---- config -------------------------------------------------------------- */

struct dp_engram_config {
	int n_layers;        /* 1..DP_ENGRAM_LAYERS_MAX */
	int *layer_ids;      /* distinct, 0..DP_ENGRAM_LAYER_ID_MAX; primes go in this order */
	int max_ngram_size;  /* N: orders 2..N; 2..DP_ENGRAM_NGRAM_MAX */
	int n_heads;         /* K: heads per order; 1..DP_ENGRAM_HEADS_MAX */
	int64_t *vocab_size; /* N - 1 entries (order 2, 3, ...), 1..DP_ENGRAM_TABLE_MAX */
	int64_t compressed_vocab_size; /* C >= 1 */
	int64_t map_size;              /* raw vocabulary: entries of compression_map, >= 1 */
	int64_t *compression_map;      /* raw id -> compressed id, each in [0, C) */
	int64_t pad_id;                /* raw id in [0, map_size) */
	uint64_t seed;
};

/* Check c against the rules above. Returns 0 or -EINVAL (err names the field and value). */
int dp_engram_config_check(const struct dp_engram_config *c, char *err, size_t err_len);

/*
 * Parse JSON text (len bytes, need not be NUL-terminated) into *ret and check it. Integer keys
 * must be JSON integers (not 3.0, "3" or true). Returns 0, -EINVAL (bad JSON, a missing key, a
 * wrong type or a value out of range; err says which) or -ENOMEM. ret is untouched on failure.
 */
int dp_engram_config_parse(const char *json_text, size_t len, struct dp_engram_config *ret,
                           char *err, size_t err_len);

/* Read and parse the file at path. As dp_engram_config_parse, plus -ENOENT, -EACCES, -EISDIR,
 * -EFBIG (over 1 GiB) or another errno from open/read; messages start with the path. */
int dp_engram_config_load(const char *path, struct dp_engram_config *ret, char *err,
                          size_t err_len);

/* Free what a parsed config owns and zero it. Accepts NULL and a zeroed struct. */
void dp_engram_config_fini(struct dp_engram_config *c);

/* ---- the hash ------------------------------------------------------------ */

struct dp_engram_hash;

/* Build multipliers, table sizes and offsets for every layer of c (which the caller keeps).
 * Returns 0, -EINVAL (c fails dp_engram_config_check) or -ENOMEM. */
int dp_engram_hash_new(const struct dp_engram_config *c, struct dp_engram_hash **ret_hash);
void dp_engram_hash_free(struct dp_engram_hash *h);

/* Geometry; -EINVAL when h is NULL. */
int dp_engram_hash_n_layers(const struct dp_engram_hash *h);
int dp_engram_hash_max_ngram(const struct dp_engram_hash *h);
int dp_engram_hash_n_heads(const struct dp_engram_hash *h);
int dp_engram_hash_n_columns(const struct dp_engram_hash *h);    /* DP_ENGRAM_COLUMNS(N, K) */
int64_t dp_engram_hash_map_size(const struct dp_engram_hash *h); /* raw ids: 0..map_size-1 */
int64_t dp_engram_hash_pad_id(const struct dp_engram_hash *h);   /* the compressed pad id */

/* Layer id of slot (0..n_layers-1, config order), or -EINVAL. */
int dp_engram_hash_layer_id(const struct dp_engram_hash *h, int slot);
/* Slot of layer_id, -ENOENT when it has no Engram, -EINVAL for a NULL h. */
int dp_engram_hash_layer_slot(const struct dp_engram_hash *h, int layer_id);

/* Per-layer arrays, owned by h; NULL when h is NULL or slot out of range.
 *   multipliers   N entries, mult[k] for tok[k] (all odd, > 0)
 *   table_sizes   n_columns primes, column order
 *   offsets       n_columns + 1 prefix sums of table_sizes: head c's rows start at
 *                 offsets[c] in the layer's flat table of offsets[n_columns] rows */
const int64_t *dp_engram_hash_multipliers(const struct dp_engram_hash *h, int slot);
const int64_t *dp_engram_hash_table_sizes(const struct dp_engram_hash *h, int slot);
const int64_t *dp_engram_hash_offsets(const struct dp_engram_hash *h, int slot);

/* Compressed id of a raw id (negative ids pass through). Returns 0, -ERANGE (id >= map size)
 * or -EINVAL. */
int dp_engram_hash_compress(const struct dp_engram_hash *h, int64_t raw_id, int64_t *ret_id);

/*
 * The history a position's rows depend on: the compressed ids of the N - 1 tokens before it,
 * hist[0] the latest (x'[t-1]), hist[k-1] = x'[t-k]; entries from N - 1 on are unused. A fresh
 * sequence starts with every entry the compressed pad id. Plain data: a decode session may
 * store it (8 * (N - 1) bytes) and resume from a copy.
 */
struct dp_engram_state {
	int64_t hist[DP_ENGRAM_NGRAM_MAX - 1];
};

/* Start a sequence: every history entry the compressed pad id. Returns 0 or -EINVAL. */
int dp_engram_state_init(const struct dp_engram_hash *h, struct dp_engram_state *st);

/* Advance st over n raw token ids without computing rows (e.g. to resume after a prefix).
 * Returns 0, -ERANGE (an id >= map size; st untouched) or -EINVAL. */
int dp_engram_state_feed(const struct dp_engram_hash *h, struct dp_engram_state *st,
                         const int64_t *tokens, size_t n);

/*
 * Rows of n raw token ids, for every layer: rows[(slot * n + t) * n_columns + c] (layer-major,
 * then position, then column, as the reference's hashes[layer][b][t][c]). With st NULL the
 * sequence starts fresh (pad history); otherwise it continues st's history and st is advanced
 * past the n tokens on success (so chunked prefill equals one call). Returns 0, -ERANGE (an id
 * >= map size; nothing written) or -EINVAL. Does not allocate.
 */
int dp_engram_hash_sequence(const struct dp_engram_hash *h, struct dp_engram_state *st,
                            const int64_t *tokens, size_t n, int64_t *rows);

/* One decode step: rows of the next raw token id given st, into rows[slot * n_columns + c],
 * and st advanced. Same as dp_engram_hash_sequence with n = 1. Does not allocate. */
int dp_engram_hash_step(const struct dp_engram_hash *h, struct dp_engram_state *st, int64_t token,
                        int64_t *rows);

/* ---- golden vectors ------------------------------------------------------ */

enum dp_engram_check_kind {
	DP_ENGRAM_CHECK_MULTIPLIER, /* index: k (0..N-1) */
	DP_ENGRAM_CHECK_TABLE_SIZE, /* index: column */
	DP_ENGRAM_CHECK_HASH,       /* index: column; row, position: where in input_ids */
	DP_ENGRAM_CHECK_KIND_MAX,
};

struct dp_engram_mismatch {
	enum dp_engram_check_kind kind;
	int layer_id;
	int64_t row;      /* batch row of input_ids (hashes only, else -1) */
	int64_t position; /* position in the row (hashes only, else -1) */
	int index;        /* multiplier index or column */
	int64_t expected; /* the file's value */
	int64_t got;      /* ours */
};

struct dp_engram_check {
	int64_t n_checked;               /* values compared: multipliers + table sizes + hashes */
	int64_t n_mismatch;              /* of those, how many differ (0: the file matches) */
	struct dp_engram_mismatch first; /* the first that differs, when n_mismatch > 0; in the
	                                  * order multipliers (all layers), table sizes (all
	                                  * layers), hashes (layer, row, position, column) */
};

/*
 * Compare a golden-vector JSON (the config keys above plus input_ids [B][T] of raw ids,
 * multipliers {layer: [N]}, head_table_sizes {layer: [ncols]}, hashes {layer: [B][T][ncols]},
 * layers keyed by their id as a string) with what this part computes. Returns 0 when the file
 * was well-formed and compared (*ret says whether it matched), -EINVAL (malformed: bad JSON, a
 * missing key or layer, a wrong type or shape, an input id outside the map; err says where),
 * -ENOMEM, or from the _file variant the errors of dp_engram_config_load.
 */
int dp_engram_golden_check(const char *json_text, size_t len, struct dp_engram_check *ret,
                           char *err, size_t err_len);
int dp_engram_golden_check_file(const char *path, struct dp_engram_check *ret, char *err,
                                size_t err_len);

/* "multiplier", "table size", "hash"; NULL when out of range. */
const char *dp_engram_check_kind_name(enum dp_engram_check_kind kind);

#ifdef __cplusplus
}
#endif

#endif /* DP_ENGRAM_ENGRAM_H */
