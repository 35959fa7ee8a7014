/* SPDX-License-Identifier: MIT */
/*
 * Row-wise and elementwise ops: RMSNorm, RoPE, hc_expand, SwiGLU, add,
 * gather_rows. Reductions accumulate in double like the cpu backend.
 */
#include <cerrno>

#include "gpu/cuda/cuda-internal.cuh"

/* ---- RMSNorm --------------------------------------------------------------- */

/* One block per row; in place (x == y) is fine: every thread reads its own
 * elements again after the reduction and writes only those. */
__global__ void rmsnorm_kernel(const float *x, const float *__restrict__ w, float *y, uint32_t dim,
                               float eps)
{
	__shared__ double sh[32];
	const float *xr = x + (size_t)blockIdx.x * dim;
	float *yr = y + (size_t)blockIdx.x * dim;
	double ss = 0;
	for (uint32_t i = threadIdx.x; i < dim; i += blockDim.x)
		ss += (double)xr[i] * xr[i];
	ss = cu_block_sum(ss, sh);
	float s = (float)(1.0 / sqrt(ss / dim + eps));
	for (uint32_t i = threadIdx.x; i < dim; i += blockDim.x) {
		float v = __fmul_rn(xr[i], s);
		yr[i] = w ? __fmul_rn(w[i], v) : v;
	}
}

int dp_cuda_op_rmsnorm(struct dp_gpu *g, const float *x, const float *w, float *y, uint32_t rows,
                       uint32_t dim, float eps)
{
	struct dp_gpu_cuda *c = cu_of(g);
	if (!x || !y || !dim)
		return -EINVAL;
	if (rows == 0)
		return 0;
	int ret = dp_cuda_enter(c);
	if (ret < 0)
		return ret;
	uint32_t threads = dim >= 1024 ? 512 : dim >= 256 ? 256 : 64;
	rmsnorm_kernel<<<rows, threads, 0, c->stream>>>(x, w, y, dim, eps);
	return dp_cuda_launched(c, "rmsnorm");
}

/* ---- RoPE ------------------------------------------------------------------ */

__global__ void rope_kernel(float *x, uint32_t rows, uint32_t heads, uint32_t head_dim,
                            uint32_t rope_dim, const int64_t *__restrict__ pos,
                            const float *__restrict__ inv_freq, float factor, bool inverse)
{
	uint32_t half = rope_dim / 2;
	size_t n = (size_t)rows * heads * half;
	for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
	     i += (size_t)gridDim.x * blockDim.x) {
		uint32_t p = (uint32_t)(i % half);
		size_t rh = i / half; /* row * heads + head */
		size_t r = rh / heads;
		float *v = x + rh * head_dim + (head_dim - rope_dim) + 2 * p;
		cu_rope_pair(v, v + 1, pos[r], inv_freq[p], factor, inverse);
	}
}

int dp_cuda_op_rope(struct dp_gpu *g, float *x, uint32_t rows, uint32_t heads, uint32_t head_dim,
                    uint32_t rope_dim, const int64_t *pos, const float *inv_freq, float factor,
                    bool inverse)
{
	struct dp_gpu_cuda *c = cu_of(g);
	if (!x || !pos || !inv_freq || rope_dim > head_dim || rope_dim % 2)
		return -EINVAL;
	size_t n = (size_t)rows * heads * (rope_dim / 2);
	if (n == 0)
		return 0;
	int ret = dp_cuda_enter(c);
	if (ret < 0)
		return ret;
	uint32_t blocks = cu_blocks(n, 256);
	if (blocks > 65535)
		blocks = 65535;
	rope_kernel<<<blocks, 256, 0, c->stream>>>(x, rows, heads, head_dim, rope_dim, pos,
	                                           inv_freq, factor, inverse);
	return dp_cuda_launched(c, "rope");
}

/* ---- hc_expand, swiglu, add ------------------------------------------------ */

__global__ void hc_expand_kernel(const float *__restrict__ x, float *__restrict__ X, uint32_t T,
                                 uint32_t n, uint32_t D)
{
	size_t total = (size_t)T * n * D;
	for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
	     i += (size_t)gridDim.x * blockDim.x) {
		size_t t = i / ((size_t)n * D), d = i % D;
		X[i] = x[t * D + d];
	}
}

static uint32_t grid_for(size_t n)
{
	uint32_t b = cu_blocks(n, 256);
	return b > 65535 ? 65535 : b;
}

int dp_cuda_op_hc_expand(struct dp_gpu *g, const float *x, float *X, uint32_t T, uint32_t n,
                         uint32_t D)
{
	struct dp_gpu_cuda *c = cu_of(g);
	if (!x || !X)
		return -EINVAL;
	size_t total = (size_t)T * n * D;
	if (total == 0)
		return 0;
	int ret = dp_cuda_enter(c);
	if (ret < 0)
		return ret;
	hc_expand_kernel<<<grid_for(total), 256, 0, c->stream>>>(x, X, T, n, D);
	return dp_cuda_launched(c, "hc_expand");
}

/* h = silu(min(gate, L)) * clamp(up, -L, L); h must not overlap gate or up
 * (the rows are processed in parallel). */
__global__ void swiglu_kernel(const float *gate, const float *up, float *h, uint32_t rows,
                              uint32_t inter, uint32_t stride, float limit)
{
	size_t total = (size_t)rows * inter;
	for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
	     i += (size_t)gridDim.x * blockDim.x) {
		size_t r = i / inter, k = i % inter;
		float gv = fminf(gate[r * stride + k], limit);
		float uv = fminf(fmaxf(up[r * stride + k], -limit), limit);
		h[i] = __fmul_rn(cu_siluf(gv), uv);
	}
}

int dp_cuda_op_swiglu(struct dp_gpu *g, const float *gate, const float *up, float *h, uint32_t rows,
                      uint32_t inter, uint32_t stride, float limit)
{
	struct dp_gpu_cuda *c = cu_of(g);
	if (!gate || !up || !h)
		return -EINVAL;
	size_t total = (size_t)rows * inter;
	if (total == 0)
		return 0;
	int ret = dp_cuda_enter(c);
	if (ret < 0)
		return ret;
	swiglu_kernel<<<grid_for(total), 256, 0, c->stream>>>(gate, up, h, rows, inter, stride,
	                                                      limit);
	return dp_cuda_launched(c, "swiglu");
}

__global__ void add_kernel(float *y, const float *x, size_t n)
{
	for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
	     i += (size_t)gridDim.x * blockDim.x)
		y[i] += x[i];
}

int dp_cuda_op_add(struct dp_gpu *g, float *y, const float *x, size_t n)
{
	struct dp_gpu_cuda *c = cu_of(g);
	if (!y || !x)
		return -EINVAL;
	if (n == 0)
		return 0;
	int ret = dp_cuda_enter(c);
	if (ret < 0)
		return ret;
	add_kernel<<<grid_for(n), 256, 0, c->stream>>>(y, x, n);
	return dp_cuda_launched(c, "add");
}

/* ---- gather_rows ----------------------------------------------------------- */

/* Rows of cols floats at src_stride into dst_stride. The cpu backend copies
 * row by row with memmove; when source and destination overlap this copies
 * through the op workspace, which gives the same result whenever the rows
 * themselves do not overlap one another. */
int dp_cuda_op_gather_rows(struct dp_gpu *g, float *dst, const float *src, uint32_t rows,
                           uint32_t dst_stride, uint32_t src_stride, uint32_t cols)
{
	struct dp_gpu_cuda *c = cu_of(g);
	if (!dst || !src || (rows > 1 && (dst_stride < cols || src_stride < cols)))
		return -EINVAL;
	if (rows == 0 || cols == 0)
		return 0;
	int ret = dp_cuda_enter(c);
	if (ret < 0)
		return ret;
	size_t wb = cols * sizeof(float);
	size_t span_s = ((size_t)(rows - 1) * src_stride + cols) * sizeof(float);
	size_t span_d = ((size_t)(rows - 1) * dst_stride + cols) * sizeof(float);
	uintptr_t s0 = (uintptr_t)src, d0 = (uintptr_t)dst;
	bool overlap = s0 < d0 + span_d && d0 < s0 + span_s;
	cudaError_t e;
	if (overlap) {
		float *tmp = (float *)dp_cuda_ws(c, CU_WS_OP, (size_t)rows * wb);
		if (!tmp)
			return -ENOMEM;
		e = cudaMemcpy2DAsync(tmp, wb, src, (size_t)src_stride * sizeof(float), wb, rows,
		                      cudaMemcpyDeviceToDevice, c->stream);
		if (e == cudaSuccess)
			e = cudaMemcpy2DAsync(dst, (size_t)dst_stride * sizeof(float), tmp, wb, wb,
			                      rows, cudaMemcpyDeviceToDevice, c->stream);
	} else {
		e = cudaMemcpy2DAsync(dst, (size_t)(rows > 1 ? dst_stride : cols) * sizeof(float),
		                      src, (size_t)(rows > 1 ? src_stride : cols) * sizeof(float),
		                      wb, rows, cudaMemcpyDeviceToDevice, c->stream);
	}
	return e == cudaSuccess ? 0 : dp_cuda_fail(c, e, "gather_rows");
}
