/* SPDX-License-Identifier: MIT */
/*
 * The lightning indexer (gpu.h, struct dp_gpu_index): scores, then top-k.
 *
 * Scores. One thread per (query, visible key): in double, the same sums in
 * the same order as the cpu backend — per head a sequential dot product of
 * fp32 values (each product exact in double), the relu'd dot rounded to
 * fp32 and scaled, times the fp32 head weight — so the scores are
 * bit-identical to the cpu backend's for identical inputs, and so is the
 * selection, ties included. A block stages its query's heads and its 128
 * keys in shared memory when they fit.
 *
 * Top-k. One block per query. Each (score, index) becomes a 64-bit key that
 * orders exactly as the cpu backend ranks: the score's bits mapped to an
 * unsigned order (-0 taken as +0) in the high half, the complement of the
 * index in the low half (equal scores: the lower index is the larger key).
 * All keys are distinct, so an 8-bit radix select (8 histogram passes) finds
 * the k-th largest exactly; the keys at or above it are collected and
 * bitonic-sorted in shared memory, descending; -1 pads.
 *
 * Queries are processed in chunks so the score buffer stays bounded.
 */
#include <cerrno>

#include "gpu/cuda/cuda-internal.cuh"

#define IDX_KT          128 /* keys per scoring block */
#define TOPK_THREADS    512
#define IDX_SCORE_BYTES (64u << 20) /* score buffer per chunk of queries */

struct idx_k {
	const float *qi, *weights;
	const float *const *pages;
	uint32_t per_page, key_dim, n;
	uint32_t nh, dim, rate, k;
	uint64_t pos0;
	float key_scale, weight_scale;
	uint32_t q0;   /* first query of the chunk */
	bool stage_q;  /* the query's heads in shared memory */
	bool stage_k;  /* the block's keys in shared memory */
	float *scores; /* [chunk][n] */
	int32_t *sel;
};

__device__ __forceinline__ uint32_t idx_visible(const idx_k &a, uint32_t i)
{
	uint64_t vis = (a.pos0 + i + 1) / a.rate;
	return vis < a.n ? (uint32_t)vis : a.n;
}

__global__ void __launch_bounds__(IDX_KT) idx_score_kernel(idx_k a)
{
	extern __shared__ __align__(16) float sm[];
	uint32_t qi_n = a.stage_q ? a.nh * a.dim : 0;
	float *qs = sm;                      /* [nh][dim] */
	float *ws = sm + qi_n;               /* [nh] */
	float *ks = ws + ((a.nh + 3) & ~3u); /* [KT][dim + 1] */
	uint32_t row = blockIdx.y, i = a.q0 + row;
	uint32_t vis = idx_visible(a, i);
	uint32_t w0 = blockIdx.x * IDX_KT;
	if (w0 >= vis)
		return; /* block-uniform */
	const float *q = a.qi + (size_t)i * a.nh * a.dim;
	for (uint32_t x = threadIdx.x; x < qi_n; x += blockDim.x)
		qs[x] = q[x];
	for (uint32_t h = threadIdx.x; h < a.nh; h += blockDim.x)
		ws[h] = __fmul_rn(a.weights[(size_t)i * a.nh + h], a.weight_scale);
	uint32_t nk = vis - w0 < IDX_KT ? vis - w0 : IDX_KT;
	if (a.stage_k)
		for (uint32_t x = threadIdx.x; x < nk * a.dim; x += blockDim.x) {
			uint32_t kk = x / a.dim, c = x % a.dim;
			ks[kk * (a.dim + 1) + c] =
			    cu_stream_entry(a.pages, a.per_page, a.key_dim, w0 + kk)[c];
		}
	__syncthreads();
	uint32_t w = w0 + threadIdx.x;
	if (threadIdx.x >= nk)
		return;
	const float *key = a.stage_k ? ks + threadIdx.x * (a.dim + 1)
	                             : cu_stream_entry(a.pages, a.per_page, a.key_dim, w);
	const float *qb = a.stage_q ? qs : q;
	double acc = 0;
	for (uint32_t h = 0; h < a.nh; h++) {
		const float *qh = qb + (size_t)h * a.dim;
		double d = 0;
		for (uint32_t c = 0; c < a.dim; c++)
			d += (double)qh[c] * key[c];
		float r = d > 0 ? __fmul_rn((float)d, a.key_scale) : 0.0f;
		acc += (double)r * ws[h];
	}
	a.scores[(size_t)row * a.n + w] = (float)acc;
}

__device__ __forceinline__ uint64_t rank_key(float f, uint32_t w)
{
	uint32_t u = f == 0.0f ? 0u : __float_as_uint(f); /* -0 ranks as +0 */
	u = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
	return ((uint64_t)u << 32) | (uint32_t)~w;
}

/* Dynamic shared memory: cand[p2] keys. */
__global__ void __launch_bounds__(TOPK_THREADS) idx_topk_kernel(idx_k a, uint32_t p2)
{
	extern __shared__ __align__(16) uint64_t cand[];
	__shared__ uint32_t hist[256];
	__shared__ uint64_t s_prefix;
	__shared__ uint32_t s_want, s_count;
	uint32_t row = blockIdx.x, i = a.q0 + row, tid = threadIdx.x;
	uint32_t vis = idx_visible(a, i);
	uint32_t K = a.k < vis ? a.k : vis;
	const float *sc = a.scores + (size_t)row * a.n;
	int32_t *sel = a.sel + (size_t)i * a.k;

	uint64_t threshold = 0; /* every real key is above 0: ~w has its top bit set */
	if (K > 0 && K < vis) {
		uint64_t prefix = 0;
		uint32_t want = K;
		for (int shift = 56; shift >= 0; shift -= 8) {
			for (uint32_t b = tid; b < 256; b += blockDim.x)
				hist[b] = 0;
			__syncthreads();
			for (uint32_t w = tid; w < vis; w += blockDim.x) {
				uint64_t key = rank_key(sc[w], w);
				if (shift == 56 || (key >> (shift + 8)) == (prefix >> (shift + 8)))
					atomicAdd(&hist[(key >> shift) & 255], 1u);
			}
			__syncthreads();
			if (tid == 0) {
				uint32_t cum = 0, b = 255;
				for (;; b--) {
					if (cum + hist[b] >= want || b == 0)
						break;
					cum += hist[b];
				}
				s_prefix = prefix | ((uint64_t)b << shift);
				s_want = want - cum;
			}
			__syncthreads();
			prefix = s_prefix;
			want = s_want;
		}
		threshold = prefix; /* the k-th largest key itself */
	}
	for (uint32_t j = tid; j < p2; j += blockDim.x)
		cand[j] = 0;
	if (tid == 0)
		s_count = 0;
	__syncthreads();
	for (uint32_t w = tid; w < vis && K > 0; w += blockDim.x) {
		uint64_t key = rank_key(sc[w], w);
		if (key >= threshold) {
			uint32_t at = atomicAdd(&s_count, 1u);
			if (at < p2)
				cand[at] = key;
		}
	}
	__syncthreads();
	/* bitonic sort, descending */
	for (uint32_t size = 2; size <= p2; size <<= 1) {
		for (uint32_t j = size >> 1; j > 0; j >>= 1) {
			for (uint32_t x = tid; x < p2; x += blockDim.x) {
				uint32_t y = x ^ j;
				if (y > x) {
					uint64_t u = cand[x], v = cand[y];
					bool desc = (x & size) == 0;
					if (desc ? u < v : u > v) {
						cand[x] = v;
						cand[y] = u;
					}
				}
			}
			__syncthreads();
		}
	}
	for (uint32_t j = tid; j < a.k; j += blockDim.x)
		sel[j] = j < K ? (int32_t) ~(uint32_t)cand[j] : -1;
}

static size_t score_smem(uint32_t nh, uint32_t dim, bool stage_q, bool stage_k)
{
	size_t floats = (stage_q ? (size_t)nh * dim : 0) + ((nh + 3) & ~3u);
	if (stage_k)
		floats += (size_t)IDX_KT * (dim + 1);
	return floats * sizeof(float);
}

int dp_cuda_index_init(struct dp_gpu_cuda *c)
{
	/* the top-k kernel has static shared memory (its histogram) beside the
	 * dynamic candidates: opting it into all of smem_optin would fail */
	int ret = dp_cuda_smem_optin(c, (const void *)idx_score_kernel, c->smem_optin,
	                             "indexer scores: shared memory opt-in");
	if (ret == 0)
		ret = dp_cuda_smem_optin(c, (const void *)idx_topk_kernel,
		                         (size_t)CU_TOPK_MAX * sizeof(uint64_t),
		                         "indexer top-k: shared memory opt-in");
	return ret;
}

int dp_cuda_op_index_topk(struct dp_gpu *g, const struct dp_gpu_index *ix)
{
	struct dp_gpu_cuda *c = cu_of(g);
	if (!ix || !ix->qi || !ix->weights || !ix->sel || !ix->rate || !ix->k || !ix->dim ||
	    ix->k > CU_TOPK_MAX)
		return -EINVAL;
	uint32_t n = ix->keys ? ix->keys->n : 0;
	if (n && (!ix->keys->pages || !ix->keys->per_page || ix->keys->dim < ix->dim))
		return -EINVAL;
	if (ix->S == 0)
		return 0;
	int ret = dp_cuda_enter(c);
	if (ret < 0)
		return ret;

	idx_k a;
	a.qi = ix->qi;
	a.weights = ix->weights;
	a.pages = n ? ix->keys->pages : NULL;
	a.per_page = n ? ix->keys->per_page : 1;
	a.key_dim = n ? ix->keys->dim : ix->dim;
	a.n = n;
	a.nh = ix->nh;
	a.dim = ix->dim;
	a.rate = ix->rate;
	a.k = ix->k;
	a.pos0 = ix->pos0;
	a.key_scale = ix->key_scale;
	a.weight_scale = ix->weight_scale;
	a.sel = ix->sel;
	a.stage_q = a.stage_k = true;
	if (!cu_smem_fits(c, score_smem(a.nh, a.dim, true, true)))
		a.stage_k = false;
	if (!cu_smem_fits(c, score_smem(a.nh, a.dim, true, a.stage_k)))
		a.stage_q = false;
	size_t s_smem = score_smem(a.nh, a.dim, a.stage_q, a.stage_k);
	if (!cu_smem_fits(c, s_smem))
		return -EINVAL;

	uint32_t p2 = 1;
	while (p2 < ix->k)
		p2 <<= 1;
	size_t t_smem = (size_t)p2 * sizeof(uint64_t);

	/* queries per chunk: the score rows fit IDX_SCORE_BYTES */
	size_t row_bytes = (size_t)(n ? n : 1) * sizeof(float);
	uint32_t chunk = (uint32_t)(IDX_SCORE_BYTES / row_bytes);
	if (chunk < 1)
		chunk = 1;
	if (chunk > ix->S)
		chunk = ix->S;
	if (chunk > 65535)
		chunk = 65535;
	a.scores = (float *)dp_cuda_ws(c, CU_WS_OP, (size_t)chunk * row_bytes);
	if (!a.scores)
		return -ENOMEM;
	for (uint32_t q0 = 0; q0 < ix->S; q0 += chunk) {
		uint32_t rows = ix->S - q0 < chunk ? ix->S - q0 : chunk;
		a.q0 = q0;
		/* most keys any query of the chunk sees */
		uint64_t vis = (ix->pos0 + q0 + rows) / ix->rate;
		uint32_t vmax = vis < n ? (uint32_t)vis : n;
		if (vmax) {
			dim3 grid(cu_blocks(vmax, IDX_KT), rows);
			idx_score_kernel<<<grid, IDX_KT, s_smem, c->stream>>>(a);
			if ((ret = dp_cuda_launched(c, "index scores")) < 0)
				return ret;
		}
		idx_topk_kernel<<<rows, TOPK_THREADS, t_smem, c->stream>>>(a, p2);
		if ((ret = dp_cuda_launched(c, "index top-k")) < 0)
			return ret;
	}
	return 0;
}
