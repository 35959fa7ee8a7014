/* SPDX-License-Identifier: MIT */
/*
 * The cuda backend's shared parts (the .cu files of gpu/cuda only): the backend struct,
 * stream-ordered workspaces, error capture, launch checks and small device
 * helpers. Every op runs on the backend's compute stream, in issue order.
 */
#ifndef DP_GPU_CUDA_INTERNAL_CUH
#define DP_GPU_CUDA_INTERNAL_CUH

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "dp-config.h"
extern "C" {
#include "gpu/gpu-internal.h"
}

/* Largest hc_mult (mHC streams) the kernels handle; the cpu backend's too. */
#define CU_HC_MAX 16
/* Largest compress rate (slots per window). */
#define CU_COMPRESS_RATE_MAX 512
/* Largest head dim of attention (32 lanes x 32 channels). */
#define CU_ATTN_D_MAX 1024
/* Largest indexer top-k (one block sorts it in shared memory). */
#define CU_TOPK_MAX 4096
/* Rows at or below which a product runs the GEMV kernel, not cuBLAS. */
#define CU_GEMV_MAX_M 8

/* Internal workspaces: grown on demand, stream-ordered (a buffer handed out
 * is valid for the ops issued until the next request of the same kind). One
 * per user so that an op can call the dense product helper while holding its
 * own buffer. */
enum cu_ws_kind {
	CU_WS_GEMM, /* the dense product: activations converted to bf16 */
	CU_WS_OP,   /* an op's temporaries (attention partials, scores, MoE) */
	CU_WS_KIND_MAX,
};

struct dp_cuda_ws {
	void *p;
	size_t bytes;
};

struct dp_gpu_cuda {
	struct dp_gpu g; /* first */
	int device;
	int sm_count;
	size_t smem_optin;   /* largest dynamic shared memory a block may opt into */
	cudaStream_t stream; /* compute: every op, upload, download and copy */
	cudaStream_t copy;   /* copy stream: reserved for an async copy API */
	cudaMemPool_t pool;  /* every allocation, stream-ordered */
	cublasHandle_t blas;
	void *blas_ws;
	size_t blas_ws_bytes;
	struct dp_cuda_ws ws[CU_WS_KIND_MAX];
	void *host; /* pinned staging (MoE plans), grown on demand */
	size_t host_bytes;
	bool bf16_split; /* bf16 GEMMs: activations as hi + lo bf16 (two products) */
	char err[256];   /* the last failure, with figures */
};

static inline struct dp_gpu_cuda *cu_of(struct dp_gpu *g)
{
	return (struct dp_gpu_cuda *)g;
}

/* Record a failure and return the errno it maps to (-ENOMEM for allocation
 * failures, -EIO otherwise). */
int dp_cuda_fail(struct dp_gpu_cuda *c, cudaError_t e, const char *what);
int dp_cuda_blas_fail(struct dp_gpu_cuda *c, cublasStatus_t s, const char *what);
/* Make the backend's device current in this thread. */
int dp_cuda_enter(struct dp_gpu_cuda *c);
/* After a kernel launch: 0, or the launch error recorded. */
int dp_cuda_launched(struct dp_gpu_cuda *c, const char *what);
/* A workspace of at least `bytes` (NULL on out-of-memory, c->err set). */
void *dp_cuda_ws(struct dp_gpu_cuda *c, enum cu_ws_kind kind, size_t bytes);
/* Pinned host staging of at least `bytes`; the caller must have synced the
 * stream past every earlier use. */
void *dp_cuda_host(struct dp_gpu_cuda *c, size_t bytes);
/* Stream-ordered device allocation from the backend's pool, not accounted
 * (dp_gpu_alloc accounts its callers; dp_cuda_ws accounts workspaces as scratch);
 * NULL with c->err (requested and free bytes) on failure. */
void *dp_cuda_alloc_raw(struct dp_gpu_cuda *c, size_t bytes);
void dp_cuda_free_raw(struct dp_gpu_cuda *c, void *p);
/* Let kernel `fn` take up to `want` bytes of dynamic shared memory, capped at
 * what the device allows beside the kernel's static shared memory (the sum
 * may not pass sharedMemPerBlockOptin: cudaFuncSetAttribute rejects it). */
int dp_cuda_smem_optin(struct dp_gpu_cuda *c, const void *fn, size_t want, const char *what);
/* Whether a dynamic shared memory size fits (after opting in; for kernels
 * without static shared memory). */
static inline bool cu_smem_fits(const struct dp_gpu_cuda *c, size_t bytes)
{
	return bytes <= c->smem_optin;
}

/* The dense product behind the matmul op, also used by moe and engram_fuse:
 * y[M][rows] (+)= x[M][cols] . w[index]^T. */
int dp_cuda_matmul(struct dp_gpu_cuda *c, const float *x, uint32_t ldx,
                   const struct dp_gpu_weight *w, uint32_t index, float *y, uint32_t ldy,
                   uint32_t M, bool accumulate);
/* Dot products of bf16 or f32 weight rows with fp32 activations. */
bool dp_cuda_weight_ok(const struct dp_gpu_cuda *c, const struct dp_gpu_weight *w);

/* The ops, one file per concern. */
int dp_cuda_op_matmul(struct dp_gpu *g, const float *x, uint32_t ldx, const struct dp_gpu_weight *w,
                      uint32_t index, float *y, uint32_t ldy, uint32_t M, bool accumulate);
int dp_cuda_op_embed(struct dp_gpu *g, const struct dp_gpu_weight *table, const int32_t *ids,
                     uint32_t T, float *y);
int dp_cuda_op_rmsnorm(struct dp_gpu *g, const float *x, const float *w, float *y, uint32_t rows,
                       uint32_t dim, float eps);
int dp_cuda_op_rope(struct dp_gpu *g, float *x, uint32_t rows, uint32_t heads, uint32_t head_dim,
                    uint32_t rope_dim, const int64_t *pos, const float *inv_freq, float factor,
                    bool inverse);
int dp_cuda_op_hc_expand(struct dp_gpu *g, const float *x, float *X, uint32_t T, uint32_t n,
                         uint32_t D);
int dp_cuda_op_mhc_pre(struct dp_gpu *g, const float *X, const float *fn, const float *base,
                       const float *scale, uint32_t T, uint32_t n, uint32_t D, float rms_eps,
                       float hc_eps, uint32_t iters, float *x, float *post, float *comb);
int dp_cuda_op_mhc_post(struct dp_gpu *g, float *X, const float *o, const float *post,
                        const float *comb, uint32_t T, uint32_t n, uint32_t D);
int dp_cuda_op_hc_head(struct dp_gpu *g, const float *X, const float *fn, const float *base,
                       const float *scale, uint32_t T, uint32_t n, uint32_t D, float rms_eps,
                       float hc_eps, float *y);
int dp_cuda_op_route(struct dp_gpu *g, const float *logits, const float *bias,
                     const int32_t *tid2eid, const int32_t *ids, uint32_t T, uint32_t E, uint32_t k,
                     enum dp_gpu_score_fn fn, float scale, int32_t *idx, float *w);
int dp_cuda_op_moe(struct dp_gpu *g, const float *x, const int32_t *idx, const float *w, uint32_t T,
                   uint32_t k, const struct dp_gpu_weight *gate_up,
                   const struct dp_gpu_weight *down, float limit, float *y);
int dp_cuda_op_swiglu(struct dp_gpu *g, const float *gate, const float *up, float *h, uint32_t rows,
                      uint32_t inter, uint32_t stride, float limit);
int dp_cuda_op_add(struct dp_gpu *g, float *y, const float *x, size_t n);
int dp_cuda_op_attention(struct dp_gpu *g, const struct dp_gpu_attn *a);
int dp_cuda_op_compress(struct dp_gpu *g, const struct dp_gpu_compress *c);
int dp_cuda_op_index_topk(struct dp_gpu *g, const struct dp_gpu_index *ix);
int dp_cuda_op_gather_rows(struct dp_gpu *g, float *dst, const float *src, uint32_t rows,
                           uint32_t dst_stride, uint32_t src_stride, uint32_t cols);
int dp_cuda_op_engram_fuse(struct dp_gpu *g, const struct dp_gpu_engram *e);

/* Kernel attributes that need opting in (shared memory), once per backend. */
int dp_cuda_attn_init(struct dp_gpu_cuda *c);
int dp_cuda_index_init(struct dp_gpu_cuda *c);

/* ---- device helpers ------------------------------------------------------ */

static inline uint32_t cu_blocks(size_t n, uint32_t per)
{
	size_t b = (n + per - 1) / per;
	return b > 0x7fffffffu ? 0x7fffffffu : (uint32_t)(b ? b : 1);
}

/* Entry i of a paged stream: pages[i / per_page] + (i % per_page) * dim. */
__device__ __forceinline__ const float *cu_stream_entry(const float *const *pages,
                                                        uint32_t per_page, uint32_t dim, uint32_t i)
{
	return pages[i / per_page] + (size_t)(i % per_page) * dim;
}

template <typename T> __device__ __forceinline__ T cu_warp_sum(T v)
{
	for (int o = 16; o > 0; o >>= 1)
		v += __shfl_xor_sync(0xffffffffu, v, o);
	return v;
}

__device__ __forceinline__ float cu_warp_max(float v)
{
	for (int o = 16; o > 0; o >>= 1)
		v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
	return v;
}

/* Sum over the block (blockDim.x a multiple of 32, <= 1024); every thread
 * gets the result. `sh` holds 32 values; the call ends with a barrier so sh
 * may be reused. */
template <typename T> __device__ __forceinline__ T cu_block_sum(T v, T *sh)
{
	unsigned lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
	v = cu_warp_sum(v);
	if (lane == 0)
		sh[warp] = v;
	__syncthreads();
	T r = lane < nw ? sh[lane] : (T)0;
	r = cu_warp_sum(r);
	__syncthreads();
	return r;
}

/* The host's float rounding of sigmoid (the cpu backend's sigmoidf). */
__device__ __forceinline__ float cu_sigmoidf(float x)
{
	return 1.0f / (1.0f + expf(-x));
}

__device__ __forceinline__ float cu_siluf(float x)
{
	return x / (1.0f + expf(-x));
}

/* Interleaved RoPE of one pair, as the cpu backend (dp_cpu_rope_vec): angle
 * in fp32, cos/sin in double then rounded, products not fused. */
__device__ __forceinline__ void cu_rope_pair(float *a, float *b, int64_t pos, float inv_freq,
                                             float factor, bool inverse)
{
	float ang = __fmul_rn(inv_freq, (float)pos);
	double sd, cd;
	sincos((double)ang, &sd, &cd);
	float co = __fmul_rn((float)cd, factor);
	float si = __fmul_rn((float)sd, factor);
	if (inverse)
		si = -si;
	float x = *a, y = *b;
	*a = __fsub_rn(__fmul_rn(x, co), __fmul_rn(y, si));
	*b = __fadd_rn(__fmul_rn(y, co), __fmul_rn(x, si));
}

#endif /* DP_GPU_CUDA_INTERNAL_CUH */
