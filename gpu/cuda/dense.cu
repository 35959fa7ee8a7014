/* SPDX-License-Identifier: MIT */
/*
 * Dense products and the embedding lookup.
 *
 * y[M][rows] (+)= x[M][cols] . W^T, W = [rows][cols] bf16 or fp32, x and y
 * fp32 with row strides.
 *
 * - M <= CU_GEMV_MAX_M (decode): our GEMV kernel. One warp per output row
 *   streams the weight row once with 16-byte loads, converts bf16 to fp32
 *   in registers and keeps M fp32 accumulators; x (a few rows) is read
 *   through the cache. This is the bandwidth-bound path: every weight byte
 *   is read once per step. Activations stay fp32, so with bf16 weights the
 *   product is exact up to fp32 accumulation.
 * - larger M (prefill): cuBLAS. fp32 weights: cublasSgemm (no TF32). bf16
 *   weights: cublasGemmEx on tensor cores, bf16 x bf16 -> fp32, with the
 *   activations split into hi = bf16(x) and lo = bf16(x - hi), two products
 *   accumulating into y, which keeps about 16 bits of each activation
 *   (DP_CUDA_BF16_SPLIT=0: hi only, one product).
 *
 * Row-major y = x . W^T is, column-major, y^T = W^T(col) ... i.e. gemm with
 * A = W (op T, lda = cols), B = x (op N, ldb = ldx), C = y (ldc = ldy).
 */
#include <cerrno>

#include "gpu/cuda/cuda-internal.cuh"
#include "gpu/cuda/wvec.cuh"

#define GEMV_WARPS 8

/* One warp per output row r: acc[m] = sum_k W[r][k] * x[m][k]. VEC: cols is
 * a multiple of the vector width and every row of W and x is 16-byte
 * aligned. */
template <typename WT, int M, bool VEC>
__global__ void __launch_bounds__(GEMV_WARPS * 32)
    gemv_kernel(const float *__restrict__ x, uint32_t ldx, const WT *__restrict__ W, uint32_t rows,
                uint32_t cols, float *__restrict__ y, uint32_t ldy, bool accumulate)
{
	uint32_t lane = threadIdx.x & 31;
	uint32_t r = blockIdx.x * GEMV_WARPS + (threadIdx.x >> 5);
	if (r >= rows)
		return;
	const WT *wr = W + (size_t)r * cols;
	float acc[M];
#pragma unroll
	for (int m = 0; m < M; m++)
		acc[m] = 0.0f;
	if (VEC) {
		constexpr int N = wvec<WT>::N;
#pragma unroll 4
		for (uint32_t k = lane * N; k < cols; k += 32 * N) {
			float wv[N];
			wvec<WT>::load(wr + k, wv);
#pragma unroll
			for (int m = 0; m < M; m++) {
				const float4 *xp =
				    reinterpret_cast<const float4 *>(x + (size_t)m * ldx + k);
#pragma unroll
				for (int q = 0; q < N / 4; q++) {
					float4 xv = __ldg(xp + q);
					acc[m] = fmaf(wv[4 * q], xv.x, acc[m]);
					acc[m] = fmaf(wv[4 * q + 1], xv.y, acc[m]);
					acc[m] = fmaf(wv[4 * q + 2], xv.z, acc[m]);
					acc[m] = fmaf(wv[4 * q + 3], xv.w, acc[m]);
				}
			}
		}
	} else {
		for (uint32_t k = lane; k < cols; k += 32) {
			float wv = wvec<WT>::one(wr + k);
#pragma unroll
			for (int m = 0; m < M; m++)
				acc[m] = fmaf(wv, __ldg(x + (size_t)m * ldx + k), acc[m]);
		}
	}
#pragma unroll
	for (int m = 0; m < M; m++) {
		float v = cu_warp_sum(acc[m]);
		if (lane == 0) {
			float *yp = y + (size_t)m * ldy + r;
			*yp = accumulate ? *yp + v : v;
		}
	}
}

template <typename WT, int M>
static void gemv_launch_m(const float *x, uint32_t ldx, const WT *W, uint32_t rows, uint32_t cols,
                          float *y, uint32_t ldy, bool accumulate, bool vec, cudaStream_t st)
{
	dim3 grid(cu_blocks(rows, GEMV_WARPS));
	if (vec)
		gemv_kernel<WT, M, true>
		    <<<grid, GEMV_WARPS * 32, 0, st>>>(x, ldx, W, rows, cols, y, ldy, accumulate);
	else
		gemv_kernel<WT, M, false>
		    <<<grid, GEMV_WARPS * 32, 0, st>>>(x, ldx, W, rows, cols, y, ldy, accumulate);
}

template <typename WT>
static void gemv_launch(const float *x, uint32_t ldx, const WT *W, uint32_t rows, uint32_t cols,
                        float *y, uint32_t ldy, uint32_t M, bool accumulate, cudaStream_t st)
{
	constexpr int N = wvec<WT>::N;
	bool vec =
	    cols % N == 0 && ldx % 4 == 0 && ((uintptr_t)x & 15) == 0 && ((uintptr_t)W & 15) == 0;
	switch (M) {
#define CASE(m)                                                                                    \
	case m:                                                                                    \
		gemv_launch_m<WT, m>(x, ldx, W, rows, cols, y, ldy, accumulate, vec, st);          \
		break;
		CASE(1)
		CASE(2)
		CASE(3) CASE(4) CASE(5) CASE(6) CASE(7) CASE(8)
#undef CASE
		    default : break;
	}
}

/* hi = bf16(x), lo = bf16(x - hi), dense [M][cols]. */
__global__ void split_bf16_kernel(const float *__restrict__ x, uint32_t ldx, uint32_t M,
                                  uint32_t cols, __nv_bfloat16 *__restrict__ hi,
                                  __nv_bfloat16 *__restrict__ lo)
{
	size_t n = (size_t)M * cols;
	for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
	     i += (size_t)gridDim.x * blockDim.x) {
		size_t m = i / cols, k = i % cols;
		float v = x[m * ldx + k];
		__nv_bfloat16 h = __float2bfloat16_rn(v);
		hi[i] = h;
		if (lo)
			lo[i] = __float2bfloat16_rn(v - __bfloat162float(h));
	}
}

/* A plain stack in the backend's dtype. A paged stack (slot_of) is refused:
 * only moe takes one, and checks it itself. */
bool dp_cuda_weight_ok(const struct dp_gpu_cuda *c, const struct dp_gpu_weight *w)
{
	return w && w->data && !w->slot_of && w->dtype == c->g.be->weight_dtype && w->count >= 1 &&
	       w->rows && w->cols;
}

int dp_cuda_matmul(struct dp_gpu_cuda *c, const float *x, uint32_t ldx,
                   const struct dp_gpu_weight *w, uint32_t index, float *y, uint32_t ldy,
                   uint32_t M, bool accumulate)
{
	if (!x || !y || !dp_cuda_weight_ok(c, w) || index >= w->count || (ldx && ldx < w->cols) ||
	    (ldy && ldy < w->rows))
		return -EINVAL;
	if (M == 0)
		return 0;
	uint32_t rows = w->rows, cols = w->cols;
	ldx = ldx ? ldx : cols;
	ldy = ldy ? ldy : rows;
	size_t off = (size_t)index * rows * cols;
	bool bf16 = w->dtype == DP_DTYPE_BF16;

	if (M <= CU_GEMV_MAX_M) {
		if (bf16)
			gemv_launch((const float *)x, ldx, (const __nv_bfloat16 *)w->data + off,
			            rows, cols, y, ldy, M, accumulate, c->stream);
		else
			gemv_launch((const float *)x, ldx, (const float *)w->data + off, rows, cols,
			            y, ldy, M, accumulate, c->stream);
		return dp_cuda_launched(c, "gemv");
	}

	float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
	cublasStatus_t s;
	if (!bf16) {
		s = cublasSgemm(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)rows, (int)M, (int)cols,
		                &alpha, (const float *)w->data + off, (int)cols, x, (int)ldx, &beta,
		                y, (int)ldy);
		return s == CUBLAS_STATUS_SUCCESS ? 0 : dp_cuda_blas_fail(c, s, "cublasSgemm");
	}
	size_t n = (size_t)M * cols;
	bool split = c->bf16_split;
	__nv_bfloat16 *hi = (__nv_bfloat16 *)dp_cuda_ws(c, CU_WS_GEMM, (split ? 2 : 1) * n * 2);
	if (!hi)
		return -ENOMEM;
	__nv_bfloat16 *lo = split ? hi + n : NULL;
	uint32_t blocks = cu_blocks(n, 256) > 4096 ? 4096 : cu_blocks(n, 256);
	split_bf16_kernel<<<blocks, 256, 0, c->stream>>>(x, ldx, M, cols, hi, lo);
	int ret = dp_cuda_launched(c, "split_bf16");
	if (ret < 0)
		return ret;
	const __nv_bfloat16 *W = (const __nv_bfloat16 *)w->data + off;
	for (int part = 0; part < (split ? 2 : 1); part++) {
		s = cublasGemmEx(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)rows, (int)M, (int)cols,
		                 &alpha, W, CUDA_R_16BF, (int)cols, part ? lo : hi, CUDA_R_16BF,
		                 (int)cols, part ? &alpha : &beta, y, CUDA_R_32F, (int)ldy,
		                 CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
		if (s != CUBLAS_STATUS_SUCCESS)
			return dp_cuda_blas_fail(c, s, "cublasGemmEx");
	}
	return 0;
}

int dp_cuda_op_matmul(struct dp_gpu *g, const float *x, uint32_t ldx, const struct dp_gpu_weight *w,
                      uint32_t index, float *y, uint32_t ldy, uint32_t M, bool accumulate)
{
	struct dp_gpu_cuda *c = cu_of(g);
	int ret = dp_cuda_enter(c);
	return ret < 0 ? ret : dp_cuda_matmul(c, x, ldx, w, index, y, ldy, M, accumulate);
}

/* ---- embedding ------------------------------------------------------------- */

/* Row ids[t] of the table, widened to fp32. An id outside the table gives a
 * zero row (the model validates ids on the host before uploading them; the
 * kernel cannot report an error). */
template <typename WT>
__global__ void embed_kernel(const WT *__restrict__ table, uint32_t rows, uint32_t cols,
                             const int32_t *__restrict__ ids, float *__restrict__ y)
{
	uint32_t t = blockIdx.x;
	int32_t id = ids[t];
	bool ok = id >= 0 && (uint32_t)id < rows;
	const WT *src = table + (size_t)(ok ? id : 0) * cols;
	float *dst = y + (size_t)t * cols;
	for (uint32_t i = threadIdx.x; i < cols; i += blockDim.x)
		dst[i] = ok ? (float)src[i] : 0.0f;
}

int dp_cuda_op_embed(struct dp_gpu *g, const struct dp_gpu_weight *table, const int32_t *ids,
                     uint32_t T, float *y)
{
	struct dp_gpu_cuda *c = cu_of(g);
	if (!dp_cuda_weight_ok(c, table) || !ids || !y)
		return -EINVAL;
	if (T == 0)
		return 0;
	int ret = dp_cuda_enter(c);
	if (ret < 0)
		return ret;
	if (table->dtype == DP_DTYPE_BF16)
		embed_kernel<<<T, 256, 0, c->stream>>>((const __nv_bfloat16 *)table->data,
		                                       table->rows, table->cols, ids, y);
	else
		embed_kernel<<<T, 256, 0, c->stream>>>((const float *)table->data, table->rows,
		                                       table->cols, ids, y);
	return dp_cuda_launched(c, "embed");
}
