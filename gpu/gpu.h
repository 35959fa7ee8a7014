/* SPDX-License-Identifier: MIT */
/*
 * gpu/gpu.h — the compute backends' front door: one op interface, the set of
 * operations the DeepSeek-V4 forward pass needs, implemented by the `cpu`
 * backend (plain C + BLAS, the reference) and the `cuda` backend.
 *
 * Memory model. Every pointer an op takes is *backend memory* (host memory on
 * the cpu backend, device memory on cuda), obtained from dp_gpu_alloc() or a
 * weight upload; the model code never dereferences it. Host data crosses with
 * dp_gpu_upload()/dp_gpu_download(). Counts, shapes and positions are host
 * integers: nothing an op needs to decide *how much* work to do lives in
 * backend memory, so the forward pass can be planned on the host.
 *
 * Activations are fp32, row-major. Weights (struct dp_gpu_weight) are stored
 * in the backend's preferred dtype (cpu: fp32; cuda: bf16) or, through
 * dp_gpu_weight_alloc_as()/_upload_as()/_wrap(), as the checkpoint stores
 * them (cpu: bf16, fp8 e4m3 with 128x128 block scales, fp4 e2m1 with per-32
 * scales; the ops pick their kernel by the weight's own dtype). They are
 * always [rows = out_features][cols = in_features], like a PyTorch Linear; a
 * stack of `count` such matrices (the routed experts) is contiguous, and so
 * are their scales.
 *
 * Paged streams. The growing parts of the KV state (compressed entries, index
 * keys) live in fixed-size pages owned by the KV cache; ops read them through
 * struct dp_gpu_stream, a page table of backend pointers.
 *
 * Errors: ops return 0 or a negative errno (-EINVAL for bad shapes, -ENOMEM).
 * Threads: one dp_gpu is used by one thread at a time (the compute thread);
 * its ops run in issue order. dp_gpu_sync() waits until they have finished.
 */
#ifndef DP_GPU_GPU_H
#define DP_GPU_GPU_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- device discovery --------------------------------------------------- */

#define DP_GPU_MAX_DEVICES 16
#define DP_GPU_BUSID_LEN 32

struct dp_gpu_device_info {
	int index;			   /* CUDA device ordinal */
	char name[96];			   /* e.g. "NVIDIA H100 80GB HBM3" */
	char pci_bus_id[DP_GPU_BUSID_LEN]; /* "0000:3b:00.0", lower case */
	uint64_t total_mem;		   /* bytes */
	int cc_major, cc_minor;		   /* compute capability */
};

/* Whether this build contains the CUDA backend. */
int dp_gpu_cuda_built(void);

/* Fill up to max entries; returns the number of usable CUDA devices (0 when
 * the build has no CUDA, no driver is loaded or no GPU is present — the
 * reason is written to why, if given), or a negative errno on bad arguments. */
int dp_gpu_probe(struct dp_gpu_device_info *out, int max, char *why, size_t why_len);

/* ---- backends ------------------------------------------------------------ */

enum dp_gpu_kind {
	DP_GPU_CPU,
	DP_GPU_CUDA,
	DP_GPU_KIND_MAX,
};

const char *dp_gpu_kind_name(enum dp_gpu_kind kind); /* "cpu", "cuda" */
/* Parse "cpu", "cuda" or "auto" (cuda when a GPU is usable, else cpu). */
int dp_gpu_kind_parse(const char *name, enum dp_gpu_kind *ret_kind);

enum dp_dtype {
	DP_DTYPE_F32,
	DP_DTYPE_BF16,
	DP_DTYPE_F16,
	DP_DTYPE_I32,
	/* Block-scaled weight formats (the published V4 checkpoints; decoding as
	 * base/dtype.h has the scalar decodings). A weight of one of these carries its scales
	 * (struct dp_gpu_weight.scale, of scale_dtype E8M0 or F32):
	 *   E4M3: OCP fp8 e4m3fn codes, one scale per DP_GPU_E4M3_BLOCK x
	 *         DP_GPU_E4M3_BLOCK block: scales [ceil(rows/128)][ceil(cols/128)];
	 *   E2M1: fp4 codes packed two a byte, low nibble first (cols even), one
	 *         scale per DP_GPU_E2M1_BLOCK along a row: scales [rows][ceil(cols/32)];
	 *   E8M0: a scale byte b = 2^(b - 127); 255 (NaN) is refused. */
	DP_DTYPE_E4M3,
	DP_DTYPE_E2M1,
	DP_DTYPE_E8M0,
	DP_DTYPE_MAX,
};

#define DP_GPU_E4M3_BLOCK 128
#define DP_GPU_E2M1_BLOCK 32

/* Bytes of one value; 0 for E2M1 (half a byte: use dp_dtype_bytes). */
size_t dp_dtype_size(enum dp_dtype dtype);
/* Bytes n values take (E2M1: (n + 1) / 2); 0 for an unknown dtype. */
size_t dp_dtype_bytes(enum dp_dtype dtype, size_t n);
const char *dp_dtype_name(enum dp_dtype dtype);

/* The cpu backend's kernel path for the block-scaled and bf16 weights. AUTO
 * takes the best the CPU has, unless the environment variable DP_CPU_ISA
 * (portable, avx2, avx512) names one (tests force each path that way). */
enum dp_gpu_isa {
	DP_GPU_ISA_AUTO,
	DP_GPU_ISA_PORTABLE, /* plain C */
	DP_GPU_ISA_AVX2,     /* AVX2 + FMA + F16C */
	DP_GPU_ISA_AVX512,   /* AVX-512 F/BW/VL */
	DP_GPU_ISA_MAX,
};

const char *dp_gpu_isa_name(enum dp_gpu_isa isa); /* "auto", "portable", "avx2", "avx512" */
/* Parse one of those names; -EINVAL otherwise. */
int dp_gpu_isa_parse(const char *name, enum dp_gpu_isa *ret_isa);

struct dp_gpu_opts {
	int threads;	     /* cpu: BLAS/worker threads, 0 = all usable cpus */
	int device;	     /* cuda: device ordinal */
	enum dp_gpu_isa isa; /* cpu: kernel path (a path the CPU lacks: -ENOTSUP) */
};

struct dp_gpu;

int dp_gpu_new(enum dp_gpu_kind kind, const struct dp_gpu_opts *opts, struct dp_gpu **ret_gpu,
	       char *err, size_t err_len);
void dp_gpu_free(struct dp_gpu *g);
enum dp_gpu_kind dp_gpu_kind_of(const struct dp_gpu *g);

/* ---- memory ---------------------------------------------------------------- */

enum dp_gpu_mem_class {
	DP_GPU_MEM_WEIGHTS,
	DP_GPU_MEM_STATE,   /* per-session KV state */
	DP_GPU_MEM_SCRATCH, /* per-step activations */
	DP_GPU_MEM_CLASS_MAX,
};

struct dp_gpu_mem_stats {
	uint64_t bytes[DP_GPU_MEM_CLASS_MAX]; /* live bytes per class */
	uint64_t peak_bytes;		      /* high-water mark of the total */
	uint64_t device_total, device_free;   /* cuda: the device's; cpu: 0 */
};

/* Zeroed backend memory; NULL on failure (sizes are accounted per class). */
void *dp_gpu_alloc(struct dp_gpu *g, size_t bytes, enum dp_gpu_mem_class cls);
void dp_gpu_dealloc(struct dp_gpu *g, void *p, size_t bytes, enum dp_gpu_mem_class cls);
int dp_gpu_upload(struct dp_gpu *g, void *dst, const void *src, size_t bytes);
int dp_gpu_download(struct dp_gpu *g, void *dst, const void *src, size_t bytes);
int dp_gpu_copy(struct dp_gpu *g, void *dst, const void *src, size_t bytes);
int dp_gpu_zero(struct dp_gpu *g, void *dst, size_t bytes);
int dp_gpu_sync(struct dp_gpu *g);
/* The backend's last failure in words ("" if none or the backend keeps
 * none): a call that returned -EIO (e.g. a CUDA kernel fault surfacing at a
 * sync) leaves the reason here. Valid until the next call on g. */
const char *dp_gpu_last_error(const struct dp_gpu *g);
void dp_gpu_mem_stats(const struct dp_gpu *g, struct dp_gpu_mem_stats *ret);
/* The cpu backend's kernel path in use (never AUTO); DP_GPU_ISA_MAX on cuda. */
enum dp_gpu_isa dp_gpu_isa_of(const struct dp_gpu *g);
/* Zeroed host memory the backend copies to and from at full speed (cuda:
 * page-locked, cudaHostAlloc; cpu: 4 KiB-aligned heap memory), for staging
 * buffers and host-resident state pages; NULL on failure. The host may read
 * and write it directly; ops never take it. Free with dp_gpu_host_free. */
void *dp_gpu_host_alloc(struct dp_gpu *g, size_t bytes);
void dp_gpu_host_free(struct dp_gpu *g, void *p, size_t bytes);

/* ---- weights --------------------------------------------------------------- */

struct dp_gpu_weight {
	void *data;	     /* backend memory */
	enum dp_dtype dtype; /* as stored in the backend */
	uint32_t count;	     /* stacked matrices (experts), >= 1 */
	uint32_t rows, cols; /* per matrix */
	/* A paged stack (routed experts paged in and out of a cache; only the
	 * moe op takes one, every other op refuses it): `count` matrices by
	 * index, of which `stored` are at data; slot_of (backend memory,
	 * [count]) gives the stored matrix holding matrix i, or -1 when it is
	 * not resident. NULL: a plain stack, matrix i at data + i. */
	const int32_t *slot_of;
	uint32_t stored;
	/* E4M3 / E2M1: the scales of every stored matrix, one matrix's after
	 * another (dp_gpu_weight_scales() a matrix), of scale_dtype E8M0 or
	 * F32 (finite; the Base checkpoints' powers of two); NULL otherwise. */
	void *scale;
	enum dp_dtype scale_dtype;
	/* Wrapped caller memory (dp_gpu_weight_wrap): free forgets it. */
	bool borrowed;
	/* DeepSeek's reference numerics (E4M3 / E2M1 weights only; the model
	 * sets it): products with this weight first round their activation
	 * through e4m3 per DP_GPU_ACT_BLOCK values along K (dp_gpu_act_quant),
	 * then sum each weight K block exactly, round that sum to fp32 once and
	 * add it times (activation scale x weight scale), blocks in K order
	 * (gpu/cpu/qmm-act.c). The moe op also applies the routing weight
	 * before the down product instead of after it, as the reference does.
	 * The cuda backend has no such kernels (its uploads refuse E4M3/E2M1). */
	bool act_quant;
};

/* Scales per matrix of a weight of `dtype` and shape [rows][cols] (0 for
 * the unscaled dtypes). */
size_t dp_gpu_weight_scales(enum dp_dtype dtype, uint32_t rows, uint32_t cols);

/* A new, zeroed weight of count x [rows][cols] in the backend's dtype. */
int dp_gpu_weight_alloc(struct dp_gpu *g, uint32_t count, uint32_t rows, uint32_t cols,
			struct dp_gpu_weight *ret_w);
/* Fill rows [row0, row0 + n_rows) of matrix `index` from host data of
 * `src_dtype` ([n_rows][cols]), converting as needed. */
int dp_gpu_weight_fill(struct dp_gpu *g, struct dp_gpu_weight *w, uint32_t index, uint32_t row0,
		       uint32_t n_rows, const void *src, enum dp_dtype src_dtype);
/* The same through the caller's host buffer (buf_bytes of it; none is
 * needed when src_dtype is the weight's dtype): no allocation, for weights
 * paged in while serving. */
int dp_gpu_weight_fill_buf(struct dp_gpu *g, struct dp_gpu_weight *w, uint32_t index, uint32_t row0,
			   uint32_t n_rows, const void *src, enum dp_dtype src_dtype, void *buf,
			   size_t buf_bytes);
/* Upload host data of dtype `src_dtype` ([count][rows][cols]) into a new
 * weight in the backend's preferred dtype, converting as needed. */
int dp_gpu_weight_upload(struct dp_gpu *g, const void *src, enum dp_dtype src_dtype,
			 uint32_t count, uint32_t rows, uint32_t cols, struct dp_gpu_weight *ret_w);
/* A weight's values converted to fp32 in a new backend buffer (norm gains,
 * biases, sinks: small vectors the ops read as floats). */
int dp_gpu_vector_upload(struct dp_gpu *g, const void *src, enum dp_dtype src_dtype, size_t n,
			 float **ret_vec);
void dp_gpu_weight_free(struct dp_gpu *g, struct dp_gpu_weight *w);

/* Weights kept as the checkpoint stores them. `dtype` is F32, BF16, E4M3 or
 * E2M1; `scale_dtype` E8M0 or F32 for E4M3/E2M1 (ignored otherwise). Host
 * data: codes [count][rows][cols] (E2M1 packed: [count][rows][cols / 2]
 * bytes) and, for E4M3/E2M1, scales [count][dp_gpu_weight_scales()].
 * Every code is checked: an e4m3 NaN code (0x7f, 0xff), an e8m0 255 or a
 * non-finite f32 scale is -EINVAL, so no kernel computes with a NaN the
 * checkpoint smuggled in. The cuda backend has no kernels for E4M3/E2M1:
 * -ENOTSUP (dp_gpu_last_error says so); it takes its own weight dtype only.
 *
 * A new zeroed weight (scales 2^0) of the given dtypes. */
int dp_gpu_weight_alloc_as(struct dp_gpu *g, enum dp_dtype dtype, enum dp_dtype scale_dtype,
			   uint32_t count, uint32_t rows, uint32_t cols,
			   struct dp_gpu_weight *ret_w);
/* Fill stored matrix `index` (codes and scales) from host data of the
 * weight's own dtypes, copied as is after the check. */
int dp_gpu_weight_fill_blocks(struct dp_gpu *g, struct dp_gpu_weight *w, uint32_t index,
			      const void *data, const void *scale);
/* alloc_as + fill_blocks of every matrix. */
int dp_gpu_weight_upload_as(struct dp_gpu *g, const void *data, const void *scale,
			    enum dp_dtype dtype, enum dp_dtype scale_dtype, uint32_t count,
			    uint32_t rows, uint32_t cols, struct dp_gpu_weight *ret_w);
/* A weight over caller-owned host memory, used in place (no copy: bytes of
 * an mmap'd checkpoint stay in the page cache). The caller keeps data and
 * scale mapped and unchanged until dp_gpu_weight_free (which frees nothing
 * of them). Every code is checked as above, which reads every byte once.
 * cpu backend only: cuda returns -ENOTSUP. */
int dp_gpu_weight_wrap(struct dp_gpu *g, const void *data, const void *scale, enum dp_dtype dtype,
		       enum dp_dtype scale_dtype, uint32_t count, uint32_t rows, uint32_t cols,
		       struct dp_gpu_weight *ret_w);

/* ---- paged streams ---------------------------------------------------------- */

/* A growing array of fixed-size fp32 entries in pages: entry i is at
 * pages[i / per_page] + (i % per_page) * dim. `pages` itself is backend
 * memory (an array of backend pointers). */
struct dp_gpu_stream {
	float *const *pages;
	uint32_t per_page; /* entries per page */
	uint32_t dim;	   /* floats per entry */
	uint32_t n;	   /* entries present */
};

/* ---- the ops ---------------------------------------------------------------- */

enum dp_gpu_score_fn {
	DP_GPU_SCORE_SQRTSOFTPLUS,
	DP_GPU_SCORE_SOFTMAX,
	DP_GPU_SCORE_SIGMOID,
	DP_GPU_SCORE_FN_MAX,
};

/* Attention of one sequence's S new queries (positions pos0..pos0+S-1).
 * Keys = values (shared-KV MQA, one head of dim d):
 *   - sliding window: query t sees positions (t-window, t]. Those before pos0
 *     are in the paged `ring` (position p is entry p % ring->n); the chunk's
 *     own are in `kv_new` [S][d];
 *   - compressed entries in `comp` (may be NULL / empty):
 *       HCA (sel == NULL): query t sees entries w < (t+1) / rate;
 *       CSA (sel != NULL): query t sees the entries listed in
 *       sel[i*sel_k .. +sel_k) that are >= 0.
 * Each head's softmax includes its sink logit as an extra column. */
struct dp_gpu_attn {
	const float *q;	     /* [S][H][d], RoPE applied */
	const float *kv_new; /* [S][d] */
	const struct dp_gpu_stream *ring; /* ring->n >= window - 1 entries of d */
	uint32_t window;
	const struct dp_gpu_stream *comp;
	uint32_t rate;	    /* compress rate (HCA visibility) */
	const int32_t *sel; /* [S][sel_k] or NULL */
	uint32_t sel_k;
	const float *sinks; /* [H] */
	float scale;
	uint32_t S, H, d;
	uint64_t pos0;
	float *out; /* [S][H][d] */
};

/* Compress n_win closed windows of `rate` tokens into n_win entries.
 * Slots hold per token `width` kv values then `width` gate values (gate
 * without position bias): slots [(n_win * rate)][2 * width].
 * HCA (overlap == false, width == dim): entry = softmax_j(gate + bias) . kv
 *   per channel over the window's rate tokens.
 * CSA (overlap == true, width == 2 * dim): entry w mixes the first halves
 *   (Ca) of window w-1 with the second halves (Cb) of window w over 2*rate
 *   slots; window 0's Ca comes from `prev` ([2][rate][dim]: kv, then
 *   gate + bias) when has_prev, else gets weight 0. On return `prev` holds
 *   the last window's Ca (the state carried to the next call).
 * Then RMSNorm with `norm` (eps) and RoPE (inv_freq, rope_dim trailing
 * channels) at position (first_pos + w * rate). Entries are appended to
 * `out_entries` ([n_win][dim], backend memory). */
struct dp_gpu_compress {
	const float *slots;
	uint32_t n_win, rate, width, dim;
	bool overlap;
	float *prev; /* CSA: [2][rate][dim] */
	bool has_prev;
	const float *bias; /* position bias [rate][width] */
	const float *norm; /* [dim] */
	float eps;
	const float *inv_freq; /* [rope_dim / 2] */
	uint32_t rope_dim;
	float rope_factor;
	uint64_t first_pos;
	float *out_entries;
};

/* Lightning indexer: for each of S queries (positions pos0..), score every
 * visible index key w < (t+1)/rate:
 *   score = sum_h weights[i][h] * weight_scale * relu(qi[i][h] . keys[w]) * key_scale,
 * and write the `k` best visible entries (score order, ties to the lower
 * index) to sel[i][0..k), -1 where fewer than k are visible. */
struct dp_gpu_index {
	const float *qi;      /* [S][nh][dim], RoPE applied */
	const float *weights; /* [S][nh], weights_proj output */
	const struct dp_gpu_stream *keys;
	uint32_t S, nh, dim, rate, k;
	uint64_t pos0;
	float key_scale;    /* index_head_dim^-0.5 */
	float weight_scale; /* index_n_heads^-0.5 */
	int32_t *sel;	    /* [S][k] */
};

/* Engram fusion (DeepSeek-V4.1 form) into the residual streams of T tokens,
 * before a layer's attention site. Per token t, with e = rows[t] (E floats:
 * the token's looked-up table rows, dequantized and concatenated) and
 * kv = wkv . e ((n+1)*D floats, no bias: one key per stream, then the value
 * all streams share), for each stream m:
 *   dot[m] = sum_d X[m][d] * gain[m][d] * key[m][d]
 *            * rsqrt(mean_d(X[m][d]^2) + eps) * rsqrt(mean_d(key[m][d]^2) + eps)
 *            / sqrt(D)
 *   g[m]   = sigmoid(sign(dot[m]) * sqrt(max(|dot[m]|, 1e-6)))
 *   X[m]  += g[m] * value                                        (in place)
 * where gain = x_norm * k_norm, the product of the two RMSNorm gains. With a
 * zero wkv every gate is sigmoid(0) = 1/2 and the value 0: X is unchanged.
 * The cpu backend forms kv with BLAS (fp32) and the norms and dot products in
 * double. */
struct dp_gpu_engram {
	float *X;			 /* [T][n][D], updated in place */
	const float *rows;		 /* [T][E] */
	const struct dp_gpu_weight *wkv; /* [(n+1)*D][E]: n key blocks, then the value */
	const float *gain;		 /* [n][D] */
	uint32_t T, n, D, E;
	float eps;			 /* rms_norm_eps */
};

/* How the round op rounds (DeepSeek's reference graph, V4-REAL.md section 4). */
enum dp_gpu_round {
	/* each run of DP_GPU_KV_BLOCK values (the last run may be shorter)
	 * through e4m3 with a power-of-two scale: the window and compressed
	 * KV's non-RoPE dims */
	DP_GPU_ROUND_E4M3_KV,
	/* a Walsh-Hadamard rotation of the whole row (Sylvester order, scale
	 * cols^-1/2, cols a power of two), then each DP_GPU_E2M1_BLOCK values
	 * through e2m1 with a power-of-two scale: the indexer's q and keys */
	DP_GPU_ROUND_HADAMARD_E2M1,
	DP_GPU_ROUND_MAX,
};

#define DP_GPU_ACT_BLOCK 128 /* activation values per e4m3 scale before a product */
#define DP_GPU_KV_BLOCK 64   /* KV values per e4m3 scale */

/*
 * The reference numerics' rounding functions on host memory (the round op
 * and the act_quant products use them; tests and tools may too). All take
 * finite values; n need not be a multiple of the block (the last block is
 * shorter). Scales are powers of two, returned as e8m0 bytes (2^(b-127)).
 *
 * dp_gpu_act_quant: per `block` values, amax = max(max |x|, 1e-4),
 *   scale = 2^ceil(log2(amax * fp32(1/448))) (the product in fp32, the
 *   ceiling from its bits as DeepSeek's kernel.py takes it), codes =
 *   e4m3(clamp(x / scale, -448, 448)) rounded to nearest, ties to even.
 * dp_gpu_fp4_quant: the same with e2m1, amax floored at 6 * 2^-126,
 *   fp32(1/6) and a clamp at +-6; codes one a byte (low nibble).
 * dp_gpu_hadamard: y = H x * n^-1/2 in place, H the Sylvester-order
 *   Walsh-Hadamard matrix (n a power of two), summed in double.
 * Return 0, or -EINVAL (NULL pointers, block 0, n not a power of two).
 */
int dp_gpu_act_quant(const float *x, size_t n, uint32_t block, uint8_t *codes, uint8_t *scales);
int dp_gpu_fp4_quant(const float *x, size_t n, uint32_t block, uint8_t *codes, uint8_t *scales);
int dp_gpu_hadamard(float *x, uint32_t n);
/* One value rounded through e4m3 / e2m1 (after clamping to +-448 / +-6): the code,
 * round to nearest, ties to even, the sign kept (-0 included). */
uint8_t dp_gpu_e4m3_of(float x);
uint8_t dp_gpu_e2m1_of(float x);

struct dp_gpu_ops {
	/* y[M][rows] (+)= x[M][cols] . w[index]^T; ldx/ldy: row strides in
	 * floats (0: dense). */
	int (*matmul)(struct dp_gpu *g, const float *x, uint32_t ldx, const struct dp_gpu_weight *w,
		      uint32_t index, float *y, uint32_t ldy, uint32_t M, bool accumulate);
	int (*embed)(struct dp_gpu *g, const struct dp_gpu_weight *table, const int32_t *ids,
		     uint32_t T, float *y);
	int (*rmsnorm)(struct dp_gpu *g, const float *x, const float *w, float *y, uint32_t rows,
		       uint32_t dim, float eps);
	/* Interleaved RoPE on the trailing rope_dim channels of each head of
	 * each row; row r is at position pos[r]; cos and sin are multiplied by
	 * `factor` (the rope's attention factor); inverse negates the angle. */
	int (*rope)(struct dp_gpu *g, float *x, uint32_t rows, uint32_t heads, uint32_t head_dim,
		    uint32_t rope_dim, const int64_t *pos, const float *inv_freq, float factor,
		    bool inverse);
	int (*hc_expand)(struct dp_gpu *g, const float *x, float *X, uint32_t T, uint32_t n,
			 uint32_t D);
	int (*mhc_pre)(struct dp_gpu *g, const float *X, const float *fn, const float *base,
		       const float *scale, uint32_t T, uint32_t n, uint32_t D, float rms_eps,
		       float hc_eps, uint32_t iters, float *x, float *post, float *comb);
	int (*mhc_post)(struct dp_gpu *g, float *X, const float *o, const float *post,
			const float *comb, uint32_t T, uint32_t n, uint32_t D);
	int (*hc_head)(struct dp_gpu *g, const float *X, const float *fn, const float *base,
		       const float *scale, uint32_t T, uint32_t n, uint32_t D, float rms_eps,
		       float hc_eps, float *y);
	int (*route)(struct dp_gpu *g, const float *logits, const float *bias,
		     const int32_t *tid2eid, const int32_t *ids, uint32_t T, uint32_t E,
		     uint32_t k, enum dp_gpu_score_fn fn, float scale, int32_t *idx, float *w);
	/* Routed experts: y[t] += sum over j < k with idx[t][j] >= 0 of
	 * w[t][j] * down_e(swiglu(gate_up_e . x[t], limit)), e = idx[t][j],
	 * the contributions to each y[t] added in ascending expert order
	 * (transformers' order); picks < 0 are skipped. gate_up and down may be
	 * paged stacks (slot_of): a pick of an expert that is not resident is
	 * an error (cpu) or skipped (cuda); the results are bitwise those of
	 * the plain stack, so a caller may split a step's picks into calls by
	 * ascending expert ranges. */
	int (*moe)(struct dp_gpu *g, const float *x, const int32_t *idx, const float *w,
		   uint32_t T, uint32_t k, const struct dp_gpu_weight *gate_up,
		   const struct dp_gpu_weight *down, float limit, float *y);
	int (*swiglu)(struct dp_gpu *g, const float *gate, const float *up, float *h, uint32_t rows,
		      uint32_t inter, uint32_t stride, float limit);
	int (*add)(struct dp_gpu *g, float *y, const float *x, size_t n);
	int (*attention)(struct dp_gpu *g, const struct dp_gpu_attn *a);
	int (*compress)(struct dp_gpu *g, const struct dp_gpu_compress *c);
	int (*index_topk)(struct dp_gpu *g, const struct dp_gpu_index *ix);
	int (*gather_rows)(struct dp_gpu *g, float *dst, const float *src, uint32_t rows,
			   uint32_t dst_stride, uint32_t src_stride, uint32_t cols);
	int (*engram_fuse)(struct dp_gpu *g, const struct dp_gpu_engram *e);
	/* Round x[r][0..cols) in place, rows r < rows ld floats apart, as
	 * `how` says (enum dp_gpu_round): the reference numerics' KV and
	 * indexer rounding. NULL on a backend without it (cuda). */
	int (*round)(struct dp_gpu *g, float *x, uint32_t rows, uint32_t ld, uint32_t cols,
		     enum dp_gpu_round how);
};

/* The backend's op table (valid for the backend's lifetime). */
const struct dp_gpu_ops *dp_gpu_ops(const struct dp_gpu *g);

#ifdef __cplusplus
}
#endif
#endif /* DP_GPU_GPU_H */
