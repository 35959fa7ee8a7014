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
 * Beyond the hashing, this part serves the rows: a table file format of our own (.dpe, with
 * bf16 or fp8 e4m3 rows), and a store that implements the V4 forward's Engram provider
 * (model/v4.h) with the tables in device memory, pinned DRAM or on NVMe behind the io engine
 * (io/io.h), a hot-row cache and a prefetch call. See "Table files" and "The store" below.
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

/* ---- configs from a model ------------------------------------------------ */

struct dp_v4_model;
struct dp_v4_config;
struct dp_v4_batch_item;
struct dp_v4_engram_provider;
struct dp_gpu;
struct dp_io;

/*
 * The hash of an Engram model (model/v4.h): config.json's engram_* keys with the model's
 * compression map (model.engram.compression_map), pad id (engram_pad_id, else pad_token_id)
 * and seed (engram_seed, default 0, the public demo's). The hash copies what it needs; the
 * model may go first. Returns 0, -ENOENT (no Engram layers), -EINVAL (err says why) or
 * -ENOMEM.
 */
int dp_engram_hash_from_model(const struct dp_v4_model *m, struct dp_engram_hash **ret_hash,
                              char *err, size_t err_len);
/* The table geometry of a config.json alone (no map needed: primes depend only on
 * engram_vocab_size, heads, orders and layer ids), for tools that make tables. */
int dp_engram_hash_from_v4_config(const struct dp_v4_config *c, struct dp_engram_hash **ret_hash,
                                  char *err, size_t err_len);

/* ---- row encodings -------------------------------------------------------- */

/*
 * A table row is head_dim values. bf16: head_dim bfloat16 (round to nearest even), padded to a
 * multiple of 4 bytes. fp8: ceil(head_dim / 32) little-endian fp32 scales, then head_dim fp8
 * e4m3 codes (OCP E4M3FN: bias 7, max 448, subnormals, no infinities, 0x7f/0xff NaN), padded
 * to a multiple of 4 bytes; value i is fp8(code[i]) * scale[i / 32], scale = max|x| / 448 over
 * its 32 values (0 for a group of zeros), codes rounded to nearest even and saturated at 448.
 * The error of a value is then at most 2^-4 |x| (normal codes) or 2^-10 scale (subnormal ones).
 */
enum dp_engram_dtype {
	DP_ENGRAM_DTYPE_BF16,
	DP_ENGRAM_DTYPE_FP8,
	DP_ENGRAM_DTYPE_MAX,
};

#define DP_ENGRAM_FP8_GROUP    32
#define DP_ENGRAM_FP8_MAX      448.0f /* base/dtype.h DP_E4M3_MAX */
#define DP_ENGRAM_HEAD_DIM_MAX 8192

const char *dp_engram_dtype_name(enum dp_engram_dtype dt); /* "bf16", "fp8"; NULL if invalid */
int dp_engram_dtype_parse(const char *name, enum dp_engram_dtype *ret); /* 0 or -EINVAL */

/* Bytes of one encoded row; 0 for an invalid dtype or head_dim (1..DP_ENGRAM_HEAD_DIM_MAX). */
size_t dp_engram_row_bytes(enum dp_engram_dtype dt, uint32_t head_dim);
/* Encode head_dim floats into dst (dp_engram_row_bytes). 0, -EDOM (a NaN or infinity: tables
 * must be finite; nothing written) or -EINVAL. */
int dp_engram_row_encode(enum dp_engram_dtype dt, uint32_t head_dim, const float *src, void *dst);
/* Decode a row into head_dim floats. 0 or -EINVAL. Does not allocate. */
int dp_engram_row_decode(enum dp_engram_dtype dt, uint32_t head_dim, const void *src, float *dst);

/* ---- table files ----------------------------------------------------------- */

/*
 * A .dpe file holds the Engram tables of every Engram layer of a model:
 *
 *   header   header_bytes (a multiple of 4096), little-endian:
 *              0  magic "DPENGRAM"         8  u32 version (1)      12 u32 header_bytes
 *             16  u32 dtype                20 u32 head_dim         24 u32 row_bytes
 *             28  u32 block_bytes          32 u32 rows_per_block   36 u32 n_layers
 *             40  u32 max_ngram_size (N)   44 u32 n_heads (K)      48 u32 n_columns ((N-1)K)
 *             52  u32 scale_group (32 for fp8, else 0)
 *             56  u64 data_bytes           64 u64 data_xxh64 (XXH64, seed 0, of all data bytes)
 *             72  u64 header_xxh64: XXH64 (seed 0) of the header_bytes bytes with this field 0
 *             80  u64 reserved[2] (0)
 *             96  n_layers entries of 32 bytes: i32 layer_id, u32 0, u64 rows, u64 offset
 *                 (of the layer's first block in the file), u64 0
 *              then n_layers x n_columns u64: each hash head's table size (its prime), in
 *                 column order; the rest is zero
 *   data     per layer, in header order: its rows in flat order (head c's row r is flat row
 *            offsets[c] + r, as dp_engram_hash_offsets numbers them), rows_per_block =
 *            block_bytes / row_bytes rows per block, never straddling one; block_bytes is
 *            the smallest multiple of 4096 that holds a row, so a row is one aligned
 *            O_DIRECT read away; the layer's last block is zero-padded.
 *
 * The file size must be header_bytes + data_bytes exactly. dp_engram_table_open checks the
 * magic (-EINVAL "not an Engram table"), version (-ENOTSUP), header checksum (-EBADMSG), every
 * field against the others and the file size (-EINVAL, truncated or grown files included);
 * data are checked on demand (dp_engram_table_verify: -EBADMSG). Messages name the file and
 * the field.
 *
 * Table tensors in safetensors (what `dp-engram convert` reads): per Engram layer L the flat
 * table of all its heads, model.layers.L.engram.multi_head_embedding.embedding.weight
 * [offsets[n_columns], head_dim] (the public demo's MultiHeadEmbedding; also accepted without
 * "model."), F32, BF16 or F16.
 */
#define DP_ENGRAM_TABLE_MAGIC   "DPENGRAM"
#define DP_ENGRAM_TABLE_VERSION 1
#define DP_ENGRAM_BLOCK         4096u

struct dp_engram_table;
struct dp_engram_writer;

struct dp_engram_table_info {
	uint32_t version;
	enum dp_engram_dtype dtype;
	uint32_t head_dim, row_bytes, block_bytes, rows_per_block;
	uint32_t n_layers, max_ngram_size, n_heads, n_columns;
	uint64_t header_bytes, data_bytes, file_bytes, data_xxh64;
};

/* Geometry of a file to write: the layers of h, head_dim and dtype. */
struct dp_engram_table_spec {
	const struct dp_engram_hash *hash; /* layers, columns, table sizes */
	enum dp_engram_dtype dtype;
	uint32_t head_dim;
};

/* Create path.tmp for writing (renamed to path by finish). Returns 0, -EINVAL, or open's
 * error (err names the file). */
int dp_engram_writer_new(const char *path, const struct dp_engram_table_spec *spec,
                         struct dp_engram_writer **ret, char *err, size_t err_len);
/* The next n rows (head_dim floats each), in file order: layer by layer (config order), flat
 * row order within a layer. 0, -EDOM (a non-finite value; err says which row), -E2BIG (more
 * rows than the tables hold), -EIO/-ENOSPC... */
int dp_engram_writer_put(struct dp_engram_writer *w, const float *rows, uint64_t n, char *err,
                         size_t err_len);
/* Same, rows already encoded (n * row_bytes bytes). */
int dp_engram_writer_put_encoded(struct dp_engram_writer *w, const void *rows, uint64_t n,
                                 char *err, size_t err_len);
/* Rows written so far and in all. */
uint64_t dp_engram_writer_rows(const struct dp_engram_writer *w, uint64_t *ret_total);
/* Write the header (checksums), fsync, rename into place. -EINVAL if rows are missing. */
int dp_engram_writer_finish(struct dp_engram_writer *w, char *err, size_t err_len);
/* Free; an unfinished file is removed. NULL ok. */
void dp_engram_writer_free(struct dp_engram_writer *w);

/* Open and validate a table file (read-only). */
int dp_engram_table_open(const char *path, struct dp_engram_table **ret, char *err, size_t err_len);
void dp_engram_table_close(struct dp_engram_table *t); /* NULL ok */
int dp_engram_table_get_info(const struct dp_engram_table *t, struct dp_engram_table_info *ret);
const char *dp_engram_table_path(const struct dp_engram_table *t);
/* Layer entry of slot (file order): id, flat rows, file offset. 0 or -EINVAL. */
int dp_engram_table_layer(const struct dp_engram_table *t, int slot, int *ret_layer_id,
                          uint64_t *ret_rows, uint64_t *ret_offset);
/* Table sizes of slot's columns (n_columns entries), owned by t; NULL if out of range. */
const int64_t *dp_engram_table_sizes(const struct dp_engram_table *t, int slot);
/* File offset of a layer's flat row; UINT64_MAX when out of range. */
uint64_t dp_engram_table_row_offset(const struct dp_engram_table *t, int slot, uint64_t flat);
/* Does the file fit a hash and head_dim: same layers in the same order, orders, heads and
 * table sizes? 0 or -EINVAL (err names the first difference). */
int dp_engram_table_check(const struct dp_engram_table *t, const struct dp_engram_hash *h,
                          uint32_t head_dim, char *err, size_t err_len);
/* Read and decode n flat rows of slot with pread (tools, tests, the direct path). */
int dp_engram_table_read_rows(const struct dp_engram_table *t, int slot, const int64_t *flat,
                              size_t n, float *out);
/* Read all data and compare data_xxh64: 0, -EBADMSG (err says so) or a read error. */
int dp_engram_table_verify(const struct dp_engram_table *t, char *err, size_t err_len);

/* ---- the store --------------------------------------------------------------- */

/*
 * A store serves one table file's rows to the V4 forward (struct dp_v4_engram_provider in
 * model/v4.h) for one model and one compute thread.
 *
 * Residency (where the tables live):
 *   DEVICE  the whole table in backend memory; a layer's rows are gathered straight into the
 *           output: no staging, copy or cache (the "tables in device memory" baseline; a
 *           prefetch only hashes). Only on the cpu backend for now, whose backend memory is
 *           host memory, allocated as DRAM's is (so the two differ only in the rows' path); a
 *           cuda backend needs a gather op (-ENOTSUP).
 *   DRAM    the whole table in pinned (mlocked where allowed), NUMA-local host memory
 *           (dp_topo_alloc_onnode); a layer's rows are gathered on the CPU into pinned
 *           staging and copied to the backend in one batch per layer.
 *   NVME    the table file read through the io engine (io/io.h) on a HIGH priority
 *           channel, or through a reader (below): O_DIRECT reads of the block that holds
 *           each missing row (block_bytes, 4 KiB for rows up to 4 KiB), duplicates coalesced
 *           and adjacent blocks merged into one read, into registered block buffers; then
 *           gathered and copied as for DRAM.
 *           DP_ENGRAM_STORE_BUFFERED reads just the row's bytes through the page cache
 *           instead: the measured alternative, and the worse one (cold, on the dev VM:
 *           readahead pulled ~3x the bytes, the io thread spent 3.6x the CPU, and a step
 *           waited 0.49 ms for its rows against 0.01 ms; and the page cache holds a second,
 *           unpinned copy: a table that fits in RAM belongs in DRAM residency).
 *
 * The hot-row cache (DRAM, NVME; cache_rows > 0) stands in for the device-side cache of a
 * GPU build: decoded rows keyed by (layer, flat row) — i.e. (layer, column, row) — with
 * CLOCK replacement. Rows a step uses are pinned until the step is over. The n-gram
 * frequencies are Zipfian, so a modest cache takes most lookups.
 *
 * A step: dp_engram_prefetch(s, items) as soon as the step's tokens are known (before the
 * forward): it hashes every token of every item for every Engram layer (each sequence's
 * Engram history, model/v4.h, continues the hash), looks every row up in the cache and
 * issues all layers' reads, layer by layer (in ascending model layer), without waiting. Then
 * the forward calls the provider once per Engram layer; the call for layer L waits only for
 * L's reads, gathers L's rows into staging, copies them to the backend in one
 * batch and returns them. A provider call for items that were not prefetched (a different
 * batch, or none) prefetches them itself first (counted in sync_prefetches); so a plain
 * dp_v4_forward or dp_v4_logits works without any prefetch call. The rows returned for a
 * layer stay valid until the next prefetch.
 *
 * A reader (NVME; dp_engram_store_set_reader) takes the reads off the store's channel: each
 * slot's reads are handed to it with the model layer that consumes the slot, so a reader
 * that orders reads by when compute needs them (dualpathd's: the KV cache's read scheduler,
 * kvcache/rsched.h, at that layer's tick of the step) puts them after what earlier layers
 * need and before what later layers need; the provider call for layer L waits for L's
 * tickets only. Without one, all layers' reads go on the store's own HIGH channel at once.
 * Either way the previous step's reads are waited for before a step is planned (they land
 * in the buffers the next one reuses), and a failed or short read fails the provider call
 * of its layer (the error, -EIO for a short read), not the others.
 *
 * On the cpu backend "device" is host memory and the copy is a memcpy; a cuda backend's
 * copy is the same one upload per layer from pinned staging (a copy stream and an event per
 * layer), which this interface already has.
 *
 * Threads: a store is used by one thread (the compute thread), which is also its io
 * channel's requester; the io engine runs its own thread. Decode steps within max_tokens
 * do not allocate; larger batches grow the buffers.
 */
enum dp_engram_residency {
	DP_ENGRAM_RES_DEVICE,
	DP_ENGRAM_RES_DRAM,
	DP_ENGRAM_RES_NVME,
	DP_ENGRAM_RES_MAX,
};

const char *dp_engram_residency_name(enum dp_engram_residency r); /* "device", "dram", "nvme" */
int dp_engram_residency_parse(const char *name, enum dp_engram_residency *ret);

enum dp_engram_store_flags {
	DP_ENGRAM_STORE_BUFFERED = 1u << 0, /* NVME: page-cache reads of the row bytes */
	DP_ENGRAM_STORE_NO_PIN = 1u << 1,   /* DRAM/DEVICE: do not mlock the table */
	DP_ENGRAM_STORE_FLAGS_MAX = 1u << 2,
};

struct dp_engram_store_config {
	enum dp_engram_residency residency;
	struct dp_gpu *gpu;  /* the model's backend: where rows go */
	struct dp_io *io;    /* NVME: a running io engine (dp_io_start); else unused */
	int node;            /* NUMA node for the table and staging (-1: any) */
	uint64_t cache_rows; /* hot-row cache entries (DRAM, NVME); 0: none */
	uint32_t max_tokens; /* tokens per step without allocation (default 256) */
	unsigned flags;      /* enum dp_engram_store_flags */
	/* DEVICE/DRAM: use this store's copy of the same table file instead of loading one (one
	 * DRAM copy for several compute threads; it must outlive this store). */
	const struct dp_engram_store *share;
};

/* Defaults: DRAM, no gpu (must be set), no io, node -1, 65536 cache rows, 256 tokens. */
int dp_engram_store_config_init(struct dp_engram_store_config *cfg);

struct dp_engram_store;

/*
 * Open the table file at path for the hash h (the model's, dp_engram_hash_from_model; the
 * store keeps a pointer: h must outlive it) and row width head_dim, and load it into its
 * residency (DEVICE/DRAM read the whole file now). Returns 0, -EINVAL (bad config, or the
 * file does not fit h: err says what), -ENOMEM, -ENOTSUP, or the table's and io engine's
 * errors.
 */
int dp_engram_store_new(const struct dp_engram_hash *h, uint32_t head_dim, const char *path,
                        const struct dp_engram_store_config *cfg, struct dp_engram_store **ret,
                        char *err, size_t err_len);
/* Wait for its reads, release its channel, file, buffers. NULL ok. */
void dp_engram_store_free(struct dp_engram_store *s);

/*
 * Where an NVME store's reads go instead of its channel. Both calls come from the store's
 * thread (the compute thread).
 *   read  queue a read of len bytes at offset of file (a handle of the io engine the store
 *         was given, dp_io_file_open) into dst; layer is the model layer whose provider call
 *         needs it, in the step the store's prefetch is for. 0 and *ret_ticket, or -errno
 *         (the step's planning fails with it).
 *   wait  wait for a ticket read returned (len: the bytes it asked for, so the reader can
 *         tell a short read): the bytes read (>= 0) or -errno. The store waits for every
 *         ticket exactly once; fewer bytes than len fail the layer with -EIO.
 */
struct dp_engram_reader {
	int (*read)(void *ctx, uint32_t file, uint64_t offset, uint32_t len, void *dst,
	            uint32_t layer, uint64_t *ret_ticket);
	int (*wait)(void *ctx, uint64_t ticket, uint32_t len);
	void *ctx;
};

/* Use reader for the NVME reads (copied; NULL: the store's own HIGH channel again, opened
 * anew). Waits first for every read issued the old way, so it may be called between steps
 * and must be, with NULL, before what the reader uses goes away (the store's free waits for
 * its reads through the reader). 0, -EINVAL (not NVME, or a reader without both calls), or
 * the io engine's error opening the channel (the store then has no way to read: its steps
 * fail until a reader is set). */
int dp_engram_store_set_reader(struct dp_engram_store *s, const struct dp_engram_reader *reader);

/* Issue the step's lookups (above). items as for dp_v4_forward, before it runs. 0, -EINVAL,
 * -ENODATA (a sequence without its Engram history), -ERANGE (a token outside the map),
 * -ENOMEM, or an io engine error. */
int dp_engram_prefetch(struct dp_engram_store *s, const struct dp_v4_batch_item *items,
                       uint32_t n_items);
/* The provider's call: layer's rows for the items' tokens, [T][F] backend memory. */
int dp_engram_store_rows(struct dp_engram_store *s, int layer, const struct dp_v4_batch_item *items,
                         uint32_t n_items, const float **ret_rows);
/* A provider for dp_v4_model_set_engram that calls dp_engram_store_rows. */
int dp_engram_store_provider(struct dp_engram_store *s, struct dp_v4_engram_provider *ret);

struct dp_engram_store_stats {
	uint64_t steps;                    /* prefetches (explicit or not) */
	uint64_t sync_prefetches;          /* ... of which a provider call had to make */
	uint64_t rows;                     /* row lookups served (tokens x columns x layers) */
	uint64_t cache_hits, cache_misses; /* lookups with a cache (hits + misses = those) */
	uint64_t cache_inserts, cache_evictions;
	uint64_t reads, blocks_read, bytes_read; /* NVME: requests, blocks, bytes */
	uint64_t blocks_shared; /* NVME: rows served by a block another row already needed */
	uint64_t plan_ns;       /* time spent planning steps: hashing, cache lookups, issuing */
	uint64_t wait_ns;       /* time provider calls spent waiting for reads */
	uint64_t gather_ns;     /* time spent gathering and copying rows */
	uint64_t table_bytes;   /* DEVICE/DRAM: bytes held in memory */
	bool pinned;            /* DEVICE/DRAM: the table memory is mlocked (by its owner) */
	int node;               /* node the table memory is bound to, -1 if not */
};

int dp_engram_store_get_stats(const struct dp_engram_store *s, struct dp_engram_store_stats *ret);
void dp_engram_store_reset_stats(struct dp_engram_store *s);

#ifdef __cplusplus
}
#endif

#endif /* DP_ENGRAM_ENGRAM_H */
