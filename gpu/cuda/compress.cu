/* SPDX-License-Identifier: MIT */
/*
 * The HCA / CSA compressors (gpu.h, struct dp_gpu_compress): one block per
 * closed window. Each thread pools channels: a softmax over the window's
 * slots (HCA: rate; CSA: the previous window's Ca then this window's Cb) of
 * gate + position bias, weighting the kv values; then the block RMS-norms
 * the entry and rotates its trailing rope_dim channels at the window's
 * position. Like the cpu backend: gates plus bias rounded to fp32, the
 * softmax and the weighted sum in double.
 *
 * CSA carries the last window's Ca (values, gates with bias) in `prev`; a
 * second kernel writes it after every window has read the old one.
 */
#include <cerrno>

#include "gpu/cuda/cuda-internal.cuh"

struct comp_k {
	const float *slots;
	uint32_t n_win, rate, width, dim, rope_dim;
	bool overlap, has_prev;
	const float *prev;
	const float *bias, *norm, *inv_freq;
	float eps, rope_factor;
	uint64_t first_pos;
	float *out;
};

__global__ void compress_kernel(comp_k a)
{
	extern __shared__ float ent[]; /* [dim] */
	__shared__ double sh[32];
	uint32_t w = blockIdx.x, m = a.rate, dim = a.dim, width = a.width, slot = 2 * width;
	const float *win = a.slots + (size_t)w * m * slot;
	const float *pw = a.overlap && w > 0 ? win - (size_t)m * slot : NULL;

	for (uint32_t ch = threadIdx.x; ch < dim; ch += blockDim.x) {
		/* pass 1: the largest logit; pass 2: softmax-weighted sum. Slot q
		 * of 2m (CSA) or m (HCA); CSA's Ca slots q < m exist only with a
		 * previous window (in the batch, or carried in prev). */
		bool ca = a.overlap && (pw || a.has_prev);
		double mx = -INFINITY;
		for (int pass = 0; pass < 2; pass++) {
			double den = 0, acc = 0;
			for (uint32_t q = 0; q < (a.overlap ? 2 * m : m); q++) {
				float lg, val;
				if (a.overlap && q < m) {
					if (!ca)
						continue;
					if (pw) {
						val = pw[(size_t)q * slot + ch];
						lg = __fadd_rn(pw[(size_t)q * slot + width + ch],
						               a.bias[(size_t)q * width + ch]);
					} else {
						val = a.prev[(size_t)q * dim + ch];
						lg = a.prev[(size_t)(m + q) * dim + ch];
					}
				} else {
					uint32_t j = a.overlap ? q - m : q,
					         off = a.overlap ? dim : 0;
					val = win[(size_t)j * slot + off + ch];
					lg = __fadd_rn(win[(size_t)j * slot + width + off + ch],
					               a.bias[(size_t)j * width + off + ch]);
				}
				if (pass == 0) {
					if (lg > mx)
						mx = lg;
				} else {
					double p = exp((double)lg - mx);
					den += p;
					acc += p * val;
				}
			}
			if (pass == 1)
				ent[ch] = (float)(acc / den);
		}
	}
	__syncthreads();
	double ss = 0;
	for (uint32_t ch = threadIdx.x; ch < dim; ch += blockDim.x)
		ss += (double)ent[ch] * ent[ch];
	ss = cu_block_sum(ss, sh);
	float s = (float)(1.0 / sqrt(ss / dim + a.eps));
	for (uint32_t ch = threadIdx.x; ch < dim; ch += blockDim.x)
		ent[ch] = __fmul_rn(a.norm[ch], __fmul_rn(ent[ch], s));
	__syncthreads();
	int64_t pos = (int64_t)(a.first_pos + (uint64_t)w * m);
	float *rv = ent + (dim - a.rope_dim);
	for (uint32_t p = threadIdx.x; p < a.rope_dim / 2; p += blockDim.x)
		cu_rope_pair(rv + 2 * p, rv + 2 * p + 1, pos, a.inv_freq[p], a.rope_factor, false);
	__syncthreads();
	for (uint32_t ch = threadIdx.x; ch < dim; ch += blockDim.x)
		a.out[(size_t)w * dim + ch] = ent[ch];
}

/* prev = the last window's Ca: values, then gates + bias. */
__global__ void compress_carry_kernel(comp_k a, float *prev)
{
	uint32_t m = a.rate, dim = a.dim, width = a.width, slot = 2 * width;
	const float *last = a.slots + (size_t)(a.n_win - 1) * m * slot;
	size_t n = (size_t)m * dim;
	for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
	     i += (size_t)gridDim.x * blockDim.x) {
		uint32_t j = (uint32_t)(i / dim), ch = (uint32_t)(i % dim);
		prev[(size_t)j * dim + ch] = last[(size_t)j * slot + ch];
		prev[(size_t)(m + j) * dim + ch] =
		    __fadd_rn(last[(size_t)j * slot + width + ch], a.bias[(size_t)j * width + ch]);
	}
}

int dp_cuda_op_compress(struct dp_gpu *g, const struct dp_gpu_compress *c)
{
	struct dp_gpu_cuda *cu = cu_of(g);
	uint32_t m = c ? c->rate : 0, dim = c ? c->dim : 0, width = c ? c->width : 0;

	if (!c || !c->slots || !c->bias || !c->norm || !c->inv_freq || !c->out_entries || !m ||
	    !dim || m > CU_COMPRESS_RATE_MAX || c->rope_dim > dim || c->rope_dim % 2)
		return -EINVAL;
	if (c->overlap ? (width != 2 * dim || !c->prev) : width != dim)
		return -EINVAL;
	if (c->n_win == 0)
		return 0;
	int ret = dp_cuda_enter(cu);
	if (ret < 0)
		return ret;
	comp_k a;
	a.slots = c->slots;
	a.n_win = c->n_win;
	a.rate = m;
	a.width = width;
	a.dim = dim;
	a.rope_dim = c->rope_dim;
	a.overlap = c->overlap;
	a.has_prev = c->overlap && c->has_prev;
	a.prev = c->prev;
	a.bias = c->bias;
	a.norm = c->norm;
	a.inv_freq = c->inv_freq;
	a.eps = c->eps;
	a.rope_factor = c->rope_factor;
	a.first_pos = c->first_pos;
	a.out = c->out_entries;
	size_t smem = (size_t)dim * sizeof(float);
	/* dynamic + static (the block sum's 32 doubles) within the 48 KiB a
	 * block has without opting in: entries of up to 12224 floats */
	if (smem + 32 * sizeof(double) > 48 * 1024)
		return -EINVAL;
	uint32_t threads = dim >= 256 ? 256 : dim >= 128 ? 128 : 64;
	compress_kernel<<<c->n_win, threads, smem, cu->stream>>>(a);
	if ((ret = dp_cuda_launched(cu, "compress")) < 0)
		return ret;
	if (c->overlap) {
		size_t n = (size_t)m * dim;
		uint32_t blocks = cu_blocks(n, 256);
		if (blocks > 1024)
			blocks = 1024;
		compress_carry_kernel<<<blocks, 256, 0, cu->stream>>>(a, c->prev);
		ret = dp_cuda_launched(cu, "compress carry");
	}
	return ret;
}
