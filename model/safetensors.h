/* SPDX-License-Identifier: MIT */
/*
 * model/safetensors.h — read-only, memory-mapped safetensors checkpoints.
 *
 * A struct dp_st is every tensor of a model directory: `model.safetensors`, or the shards that
 * `model.safetensors.index.json` lists (its "weight_map" object: tensor name -> shard file name).
 * When a directory holds both, the single file wins, as in transformers. Each file is mapped
 * whole, PROT_READ and MAP_PRIVATE, and stays mapped until dp_st_free(); a tensor's `data`
 * points into that mapping (no copy). The mappings are excluded from core dumps
 * (MADV_DONTDUMP); dp_st_prefetch() asks the kernel to read a tensor ahead (MADV_WILLNEED).
 *
 * The format (https://github.com/huggingface/safetensors): 8 bytes little-endian N, N bytes of
 * JSON header, then the data section. The header is an object; "__metadata__" (an object) is
 * allowed; every other key is a tensor: {"dtype": "BF16", "shape": [2, 3], "data_offsets":
 * [begin, end]}, offsets relative to the data section.
 *
 * What is checked when opening (each failure -EINVAL, or -ENOTSUP for a dtype we cannot use,
 * with a message naming the file and, where there is one, the tensor):
 *   - the file is a regular file of at least 8 bytes; N <= DP_ST_HEADER_MAX and 8 + N <= size;
 *   - the header is valid JSON (duplicate keys refused), an object; each tensor entry an object
 *     with a "dtype" string, a "shape" list of at most DP_ST_NDIM_MAX integers >= 0 and
 *     "data_offsets" a list of two integers 0 <= begin <= end <= data section size;
 *   - end - begin == numel * dtype size, computed without overflow;
 *   - no two tensors' byte ranges overlap (empty tensors excepted);
 *   - the dtype is F32, BF16, F16, I64 / I32 (integer tables such as the hash-MoE tid2eid,
 *     which the DeepSeek release and transformers save as I64), or one of the published V4
 *     checkpoint's quantized storage dtypes: F8_E4M3 (FP8 weights), F8_E8M0 (their power-of-two
 *     scales) and I8 (FP4 e2m1 codes, two a byte). Those three are opaque bytes here: what
 *     they mean, and which scale goes with which weight, is model/quant.h's business.
 *     F8_E5M2 is refused with "F8_E5M2 is not supported"; any other dtype (F64, U8, BOOL, ...)
 *     with "dtype X is not supported"; an unknown string as unknown;
 *   - sharded: the index is a JSON object with a "weight_map" object of non-empty plain file
 *     names (no '/', no ".."); every listed shard opens and holds every tensor mapped to it; no
 *     shard holds a tensor the index does not map to it; no name appears in two shards.
 * A file changed underneath a live mapping (truncated by another process) can still fault later:
 * the checks run once, at open.
 *
 * Alignment: `data` is as aligned as the file makes it (writers pad the header so the data
 * section starts on 8 bytes, and tensors usually start on multiples of their element size);
 * dp_st_tensor.aligned says whether it is aligned to its dtype size. Use dp_st_read_f32() /
 * dp_st_read_i64() when in doubt: they copy with memcpy.
 *
 * Byte order: the format is little-endian; this code assumes a little-endian host.
 *
 * Threads: a dp_st is read-only after dp_st_open_*(); every const call may run concurrently.
 * Calls never log: on failure they write one line to err (when non-NULL and err_len > 0) and
 * leave output parameters untouched.
 */
#ifndef DP_MODEL_SAFETENSORS_H
#define DP_MODEL_SAFETENSORS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define DP_ST_NDIM_MAX   8
#define DP_ST_HEADER_MAX (100u << 20) /* bytes of header JSON */
#define DP_ST_INDEX_MAX  (100u << 20) /* bytes of model.safetensors.index.json */
#define DP_ST_SHARDS_MAX 65536

enum dp_st_dtype {
	DP_ST_F32,
	DP_ST_BF16,
	DP_ST_F16,
	DP_ST_I64,
	DP_ST_I32,
	DP_ST_F8_E4M3, /* fp8 e4m3fn codes (bias 7, 0x7f/0xff NaN) */
	DP_ST_F8_E8M0, /* fp8 e8m0 power-of-two scales, 2^(b-127) (255 NaN) */
	DP_ST_I8,      /* bytes: in V4 checkpoints, two fp4 e2m1 codes (low nibble first) */
	DP_ST_DTYPE_MAX,
};

struct dp_st;

/* One tensor: a view into the mapping, valid until dp_st_free(). */
struct dp_st_tensor {
	const char *name; /* owned by the dp_st */
	const char *file; /* path of the file holding it, for messages */
	enum dp_st_dtype dtype;
	int ndim;                      /* 0 (a scalar) .. DP_ST_NDIM_MAX */
	int64_t shape[DP_ST_NDIM_MAX]; /* entries past ndim are 0 */
	uint64_t numel;                /* product of shape (1 for a scalar) */
	size_t bytes;                  /* numel * dtype size */
	const void *data;              /* first byte; not NULL even when bytes == 0 */
	uint64_t offset;               /* of the first byte in `file` (for reads that bypass the map) */
	bool aligned;                  /* data is aligned to the dtype size */
};

/*
 * Open the checkpoint in directory `dir` (model.safetensors, else model.safetensors.index.json
 * and its shards). Returns 0, -ENOENT (neither file; a shard missing), -EINVAL (a check above
 * failed), -ENOTSUP (a dtype we do not read), -ENOMEM, or another negative errno from open/mmap.
 */
int dp_st_open_dir(const char *dir, struct dp_st **ret, char *err, size_t err_len);

/* Open one .safetensors file. Same returns as dp_st_open_dir. */
int dp_st_open_file(const char *path, struct dp_st **ret, char *err, size_t err_len);

/* Unmap and free. Accepts NULL. */
void dp_st_free(struct dp_st *st);

/* Number of tensors (all files together). */
size_t dp_st_count(const struct dp_st *st);

/* Number of files mapped (1, or the number of shards). */
size_t dp_st_file_count(const struct dp_st *st);

/* The idx-th tensor, in strcmp order of names (for iteration). Returns 0 or -EINVAL / -ERANGE. */
int dp_st_at(const struct dp_st *st, size_t idx, struct dp_st_tensor *ret);

/* The index of tensor `name` in dp_st_at() order, or -ENOENT (or -EINVAL). */
long dp_st_index(const struct dp_st *st, const char *name);

/* Look a tensor up by name. Returns 0, -ENOENT or -EINVAL. */
int dp_st_get(const struct dp_st *st, const char *name, struct dp_st_tensor *ret);

/* Names: "F32", "BF16", "F16", "I64", "I32", "F8_E4M3", "F8_E8M0", "I8"; NULL if out of range. Element size in bytes (0 if
 * out of range). */
const char *dp_st_dtype_name(enum dp_st_dtype dtype);
size_t dp_st_dtype_size(enum dp_st_dtype dtype);
static inline bool dp_st_dtype_is_float(enum dp_st_dtype dtype)
{
	return dtype == DP_ST_F32 || dtype == DP_ST_BF16 || dtype == DP_ST_F16;
}

/* Write "[2, 3, 4]" (or "[]") to buf, truncated like snprintf; returns buf. */
const char *dp_st_shape_str(const struct dp_st_tensor *t, char *buf, size_t len);

/*
 * Convert elements [first, first + count) of a float tensor (F32, BF16, F16) to float32 in out.
 * Exact (bf16 and f16 widen without rounding; NaN and infinities kept). Returns 0, or -EINVAL
 * (an integer or quantized dtype: F8_E4M3 needs its scale, model/quant.h; NULL arguments) or -ERANGE (the range is outside the tensor).
 */
int dp_st_read_f32(const struct dp_st_tensor *t, uint64_t first, uint64_t count, float *out);

/* The whole tensor: out must hold n >= numel floats. */
int dp_st_to_f32(const struct dp_st_tensor *t, float *out, uint64_t n);

/* Elements [first, first + count) of an integer tensor (I64, I32, I8) as int64. -EINVAL for a float
 * dtype, -ERANGE as above. */
int dp_st_read_i64(const struct dp_st_tensor *t, uint64_t first, uint64_t count, int64_t *out);

/* Hint that the tensor's bytes will be read soon (madvise MADV_WILLNEED on its pages). Returns 0
 * or a negative errno from madvise. */
int dp_st_prefetch(const struct dp_st_tensor *t);

/*
 * Release bytes [first, first + len) of tensor t from this process: madvise(MADV_DONTNEED) on
 * the whole pages inside that range (a page the range only shares with a neighbouring tensor is
 * kept, so a tensor used in place is never touched). For a loader that copied those bytes or only
 * validated them: the mapping is PROT_READ and MAP_PRIVATE and never written, so the pages are
 * clean and the call only drops them from the process's resident set (RssFile); they stay in the
 * page cache, which the kernel may reclaim, and a later read faults them back in with the same
 * bytes. MADV_DONTNEED rather than MADV_COLD (only ages the pages: they stay mapped and counted)
 * or MADV_PAGEOUT (also evicts them from the page cache, which other processes, or the next load,
 * may still be reading). Returns 0, -ERANGE (outside t), -EINVAL, or a negative errno from
 * madvise.
 */
int dp_st_release(const struct dp_st_tensor *t, uint64_t first, uint64_t len);

#ifdef __cplusplus
}
#endif

#endif /* DP_MODEL_SAFETENSORS_H */
