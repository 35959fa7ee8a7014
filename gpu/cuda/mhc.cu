/* SPDX-License-Identifier: MIT */
/*
 * Hyper-connections: mhc_pre (mixing weights, Sinkhorn, stream collapse),
 * mhc_post, hc_head; and the Engram fusion into the residual streams.
 *
 * mhc_pre and hc_head run in two kernels: `mix` spreads the (2+n)n (or n)
 * dot products fn . rms(flat X[t]) over blocks (one to eight rows each, so a
 * decode step of one token still keeps a few SMs busy reading fn), then
 * `finish` does the small per-token part. The small matrix work follows the
 * cpu backend's order of operations (sums in double, in index order; fp32
 * products and sums not fused), so the two agree to a few ulp.
 */
#include <cerrno>

#include "gpu/cuda/cuda-internal.cuh"

#define MIX_THREADS 256
#define MIX_RB_MAX  8

/* mix[t][row] = sum_i fn[row][i] * (X[t][i] * s_t), s_t = rms scale of the
 * token's nD values. Block (token, row group). */
__global__ void __launch_bounds__(MIX_THREADS)
    hc_mix_kernel(const float *__restrict__ X, const float *__restrict__ fn, uint32_t rows,
                  uint32_t nD, float rms_eps, uint32_t rb, float *__restrict__ mix)
{
	__shared__ double sh[32];
	uint32_t t = blockIdx.x, r0 = blockIdx.y * rb;
	const float *Xt = X + (size_t)t * nD;
	double ss = 0;
	for (uint32_t i = threadIdx.x; i < nD; i += blockDim.x)
		ss += (double)Xt[i] * Xt[i];
	ss = cu_block_sum(ss, sh);
	float s = (float)(1.0 / sqrt(ss / nD + rms_eps));
	double acc[MIX_RB_MAX];
#pragma unroll
	for (int r = 0; r < MIX_RB_MAX; r++)
		acc[r] = 0;
	for (uint32_t i = threadIdx.x; i < nD; i += blockDim.x) {
		double v = (double)__fmul_rn(Xt[i], s);
#pragma unroll
		for (int r = 0; r < MIX_RB_MAX; r++)
			if ((uint32_t)r < rb && r0 + r < rows)
				acc[r] += (double)fn[(size_t)(r0 + r) * nD + i] * v;
	}
#pragma unroll
	for (int r = 0; r < MIX_RB_MAX; r++) {
		if ((uint32_t)r >= rb || r0 + r >= rows)
			break;
		double v = cu_block_sum(acc[r], sh);
		if (threadIdx.x == 0)
			mix[(size_t)t * rows + r0 + r] = (float)v;
	}
}

static int launch_mix(struct dp_gpu_cuda *c, const float *X, const float *fn, uint32_t rows,
                      uint32_t T, uint32_t nD, float rms_eps, float *mix)
{
	/* few tokens: one row per block, for parallelism; many: eight, so fn
	 * and X are read fewer times */
	uint32_t rb = T < 32 ? 1 : MIX_RB_MAX;
	dim3 grid(T, (rows + rb - 1) / rb);
	hc_mix_kernel<<<grid, MIX_THREADS, 0, c->stream>>>(X, fn, rows, nD, rms_eps, rb, mix);
	return dp_cuda_launched(c, "hc_mix");
}

/* One block per token: pre, post, comb (softmax + Sinkhorn) and the
 * collapsed sublayer input x[t] = sum_s pre[s] X[t][s]. */
__global__ void mhc_finish_kernel(const float *__restrict__ X, const float *__restrict__ mix,
                                  const float *__restrict__ base, const float *__restrict__ scale,
                                  uint32_t n, uint32_t D, float hc_eps, uint32_t iters,
                                  float *__restrict__ x, float *__restrict__ post,
                                  float *__restrict__ comb)
{
	__shared__ float pre[CU_HC_MAX];
	__shared__ float ct[CU_HC_MAX * CU_HC_MAX];
	__shared__ float den[CU_HC_MAX];
	uint32_t t = blockIdx.x, rows = (2 + n) * n, nn = n * n;
	const float *mt = mix + (size_t)t * rows;
	uint32_t tid = threadIdx.x, j = tid / n, k = tid % n;
	bool cell = tid < nn;

	if (tid < n) {
		pre[tid] = __fadd_rn(
		    cu_sigmoidf(__fadd_rn(__fmul_rn(mt[tid], scale[0]), base[tid])), hc_eps);
		post[(size_t)t * n + tid] =
		    2.0f * cu_sigmoidf(__fadd_rn(__fmul_rn(mt[n + tid], scale[1]), base[n + tid]));
	}
	/* comb: row softmax + eps */
	if (cell)
		ct[tid] = __fadd_rn(__fmul_rn(mt[2 * n + tid], scale[2]), base[2 * n + tid]);
	__syncthreads();
	float e = 0;
	if (cell) {
		float m = -INFINITY;
		for (uint32_t q = 0; q < n; q++)
			m = fmaxf(m, ct[j * n + q]);
		e = expf(ct[tid] - m);
	}
	__syncthreads();
	if (cell)
		ct[tid] = e;
	__syncthreads();
	if (cell) {
		double sum = 0;
		for (uint32_t q = 0; q < n; q++)
			sum += ct[j * n + q];
		e = __fadd_rn((float)(ct[tid] / sum), hc_eps);
	}
	__syncthreads();
	if (cell)
		ct[tid] = e;
	__syncthreads();
	/* Sinkhorn: columns; then iters-1 rounds of rows, then columns */
	for (uint32_t it = 0; it < iters; it++) {
		if (it > 0) {
			if (tid < n) {
				double sum = 0;
				for (uint32_t q = 0; q < n; q++)
					sum += ct[tid * n + q];
				den[tid] = __fadd_rn((float)sum, hc_eps);
			}
			__syncthreads();
			if (cell)
				ct[tid] = __fdiv_rn(ct[tid], den[j]);
			__syncthreads();
		}
		if (tid < n) {
			double sum = 0;
			for (uint32_t q = 0; q < n; q++)
				sum += ct[q * n + tid];
			den[tid] = __fadd_rn((float)sum, hc_eps);
		}
		__syncthreads();
		if (cell)
			ct[tid] = __fdiv_rn(ct[tid], den[k]);
		__syncthreads();
	}
	if (cell)
		comb[(size_t)t * nn + tid] = ct[tid];
	const float *Xt = X + (size_t)t * n * D;
	for (uint32_t d = tid; d < D; d += blockDim.x) {
		float acc = 0;
		for (uint32_t s = 0; s < n; s++)
			acc = __fadd_rn(acc, __fmul_rn(pre[s], Xt[(size_t)s * D + d]));
		x[(size_t)t * D + d] = acc;
	}
}

int dp_cuda_op_mhc_pre(struct dp_gpu *g, const float *X, const float *fn, const float *base,
                       const float *scale, uint32_t T, uint32_t n, uint32_t D, float rms_eps,
                       float hc_eps, uint32_t iters, float *x, float *post, float *comb)
{
	struct dp_gpu_cuda *c = cu_of(g);
	if (!X || !fn || !base || !scale || !x || !post || !comb || n == 0 || n > CU_HC_MAX ||
	    iters == 0 || D == 0)
		return -EINVAL;
	if (T == 0)
		return 0;
	int ret = dp_cuda_enter(c);
	if (ret < 0)
		return ret;
	uint32_t rows = (2 + n) * n;
	float *mix = (float *)dp_cuda_ws(c, CU_WS_OP, (size_t)T * rows * sizeof(float));
	if (!mix)
		return -ENOMEM;
	if ((ret = launch_mix(c, X, fn, rows, T, n * D, rms_eps, mix)) < 0)
		return ret;
	mhc_finish_kernel<<<T, 256, 0, c->stream>>>(X, mix, base, scale, n, D, hc_eps, iters, x,
	                                            post, comb);
	return dp_cuda_launched(c, "mhc_finish");
}

/* X'[k][d] = post[k] * o[d] + sum_j comb[j][k] X[j][d], in place: each
 * thread owns one channel d of every stream of its token. */
__global__ void mhc_post_kernel(float *X, const float *__restrict__ o,
                                const float *__restrict__ post, const float *__restrict__ comb,
                                uint32_t T, uint32_t n, uint32_t D)
{
	size_t total = (size_t)T * D;
	for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
	     i += (size_t)gridDim.x * blockDim.x) {
		size_t t = i / D, d = i % D;
		float *Xt = X + t * n * D;
		const float *ct = comb + t * n * n;
		float old[CU_HC_MAX];
		for (uint32_t j = 0; j < n; j++)
			old[j] = Xt[(size_t)j * D + d];
		float ot = o[t * D + d];
		for (uint32_t k = 0; k < n; k++) {
			float acc = 0;
			for (uint32_t j = 0; j < n; j++)
				acc = __fadd_rn(acc, __fmul_rn(ct[j * n + k], old[j]));
			Xt[(size_t)k * D + d] = __fadd_rn(__fmul_rn(post[t * n + k], ot), acc);
		}
	}
}

int dp_cuda_op_mhc_post(struct dp_gpu *g, float *X, const float *o, const float *post,
                        const float *comb, uint32_t T, uint32_t n, uint32_t D)
{
	struct dp_gpu_cuda *c = cu_of(g);
	if (!X || !o || !post || !comb || n == 0 || n > CU_HC_MAX)
		return -EINVAL;
	size_t total = (size_t)T * D;
	if (total == 0)
		return 0;
	int ret = dp_cuda_enter(c);
	if (ret < 0)
		return ret;
	uint32_t blocks = cu_blocks(total, 256);
	if (blocks > 65535)
		blocks = 65535;
	mhc_post_kernel<<<blocks, 256, 0, c->stream>>>(X, o, post, comb, T, n, D);
	return dp_cuda_launched(c, "mhc_post");
}

/* hc_head: pre = sigmoid(mix * scale0 + base) + eps; y = sum_s pre[s] X[s]. */
__global__ void hc_head_finish_kernel(const float *__restrict__ X, const float *__restrict__ mix,
                                      const float *__restrict__ base,
                                      const float *__restrict__ scale, uint32_t n, uint32_t D,
                                      float hc_eps, float *__restrict__ y)
{
	__shared__ float pre[CU_HC_MAX];
	uint32_t t = blockIdx.x;
	if (threadIdx.x < n)
		pre[threadIdx.x] = __fadd_rn(
		    cu_sigmoidf(__fadd_rn(__fmul_rn(mix[(size_t)t * n + threadIdx.x], scale[0]),
		                          base[threadIdx.x])),
		    hc_eps);
	__syncthreads();
	const float *Xt = X + (size_t)t * n * D;
	for (uint32_t d = threadIdx.x; d < D; d += blockDim.x) {
		float acc = 0;
		for (uint32_t s = 0; s < n; s++)
			acc = __fadd_rn(acc, __fmul_rn(pre[s], Xt[(size_t)s * D + d]));
		y[(size_t)t * D + d] = acc;
	}
}

int dp_cuda_op_hc_head(struct dp_gpu *g, const float *X, const float *fn, const float *base,
                       const float *scale, uint32_t T, uint32_t n, uint32_t D, float rms_eps,
                       float hc_eps, float *y)
{
	struct dp_gpu_cuda *c = cu_of(g);
	if (!X || !fn || !base || !scale || !y || n == 0 || n > CU_HC_MAX || D == 0)
		return -EINVAL;
	if (T == 0)
		return 0;
	int ret = dp_cuda_enter(c);
	if (ret < 0)
		return ret;
	float *mix = (float *)dp_cuda_ws(c, CU_WS_OP, (size_t)T * n * sizeof(float));
	if (!mix)
		return -ENOMEM;
	if ((ret = launch_mix(c, X, fn, n, T, n * D, rms_eps, mix)) < 0)
		return ret;
	hc_head_finish_kernel<<<T, 256, 0, c->stream>>>(X, mix, base, scale, n, D, hc_eps, y);
	return dp_cuda_launched(c, "hc_head_finish");
}

/* ---- Engram fusion ----------------------------------------------------------- */

/* Block (token t, stream m): the gate from X[t][m], gain and key[m] (double
 * reductions, as the cpu backend), then X[t][m] += gate * value. */
__global__ void engram_gate_kernel(float *X, const float *__restrict__ kv,
                                   const float *__restrict__ gain, uint32_t n, uint32_t D,
                                   float eps)
{
	__shared__ double sh[32];
	uint32_t t = blockIdx.x, m = blockIdx.y;
	size_t W = (size_t)(n + 1) * D;
	float *x = X + ((size_t)t * n + m) * D;
	const float *key = kv + t * W + (size_t)m * D, *value = kv + t * W + (size_t)n * D;
	const float *w = gain + (size_t)m * D;
	double sx = 0, sk = 0, dot = 0;
	for (uint32_t d = threadIdx.x; d < D; d += blockDim.x) {
		sx += (double)x[d] * x[d];
		sk += (double)key[d] * key[d];
		dot += __dmul_rn((double)x[d] * w[d], (double)key[d]);
	}
	sx = cu_block_sum(sx, sh);
	sk = cu_block_sum(sk, sh);
	dot = cu_block_sum(dot, sh);
	double rx = 1.0 / sqrt(sx / D + eps), rk = 1.0 / sqrt(sk / D + eps);
	double s = dot * rx * rk * (1.0 / sqrt((double)D));
	double a = sqrt(fmax(fabs(s), 1e-6));
	double z = s > 0 ? a : s < 0 ? -a : 0.0;
	float gate = (float)(1.0 / (1.0 + exp(-z)));
	for (uint32_t d = threadIdx.x; d < D; d += blockDim.x)
		x[d] = __fadd_rn(x[d], __fmul_rn(gate, value[d]));
}

int dp_cuda_op_engram_fuse(struct dp_gpu *g, const struct dp_gpu_engram *e)
{
	struct dp_gpu_cuda *c = cu_of(g);
	if (!e || !e->X || !e->rows || !e->wkv || !e->gain || !e->n || !e->D || !e->E ||
	    e->n > CU_HC_MAX || !dp_cuda_weight_ok(c, e->wkv) ||
	    e->wkv->rows != (e->n + 1) * e->D || e->wkv->cols != e->E)
		return -EINVAL;
	if (e->T == 0)
		return 0;
	int ret = dp_cuda_enter(c);
	if (ret < 0)
		return ret;
	size_t W = (size_t)(e->n + 1) * e->D;
	float *kv = (float *)dp_cuda_ws(c, CU_WS_OP, (size_t)e->T * W * sizeof(float));
	if (!kv)
		return -ENOMEM;
	if ((ret = dp_cuda_matmul(c, e->rows, 0, e->wkv, 0, kv, 0, e->T, false)) < 0)
		return ret;
	engram_gate_kernel<<<dim3(e->T, e->n), 256, 0, c->stream>>>(e->X, kv, e->gain, e->n, e->D,
	                                                            e->eps);
	return dp_cuda_launched(c, "engram_gate");
}
