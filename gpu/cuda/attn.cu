/* SPDX-License-Identifier: MIT */
/*
 * Attention with sinks over the sliding window and compressed entries
 * (gpu.h, struct dp_gpu_attn): one kernel for prefill and decode.
 *
 * Block = (query i, group of up to 8 heads, key split). The query's key list
 * is virtual: index j < nwin is window position first + j (the paged ring
 * before pos0, the chunk's own kv_new after), then the compressed entries
 * (HCA: the visible prefix; CSA: sel[i][..], where -1 or an index past the
 * stream is a masked key). Keys are shared by all heads (one kv head), so a
 * block stages TK keys at a time in shared memory for its heads; each warp
 * is one head: lane j scores key j (a full dot product over d, the tile row
 * padded by one float against bank conflicts), the warp keeps an online
 * softmax (running max m, sum l) and each lane accumulates d/32 output
 * channels.
 *
 * When S x head groups would not fill the GPU (decode), the keys are split
 * across blocks (flash-decoding): each split writes (m, l, acc) and a combine
 * kernel merges them with the sink column. Otherwise the block finishes
 * itself: out = acc * e^(m-M) / (l e^(m-M) + e^(sink-M)), M = max(m, sink).
 *
 * Numerics: fp32 dot products and softmax with the running-max rescale; the
 * cpu backend uses double, the difference is within fp32 rounding.
 */
#include <cerrno>

#include "gpu/cuda/cuda-internal.cuh"

#define ATT_TK     32
#define ATT_HB_MAX 8

enum { ATT_NONE, ATT_HCA, ATT_CSA };

struct attn_k {
	const float *q, *kv_new;
	const float *const *ring;
	uint32_t ring_pp, ring_n;
	const float *const *comp;
	uint32_t comp_pp, comp_n;
	uint32_t window, rate;
	const int32_t *sel;
	uint32_t sel_k;
	const float *sinks;
	float scale;
	uint32_t S, H, d, hb, nsplit;
	uint64_t pos0;
	int mode;
	float *out;
	float *part; /* [S * H][nsplit][d + 2] when nsplit > 1 */
};

static size_t attn_smem(uint32_t hb, uint32_t d)
{
	size_t floats = (size_t)hb * d + (size_t)ATT_TK * (d + 1);
	floats = (floats + 1) & ~(size_t)1; /* the pointer array after it is 8-aligned */
	return floats * sizeof(float) + ATT_TK * sizeof(const float *);
}

__device__ __forceinline__ void attn_range(const attn_k &a, uint32_t i, uint64_t *first,
                                           uint32_t *nwin, uint32_t *nkeys)
{
	uint64_t t = a.pos0 + i;
	*first = t + 1 >= a.window ? t + 1 - a.window : 0;
	*nwin = (uint32_t)(t - *first + 1);
	uint32_t ncomp = 0;
	if (a.mode == ATT_HCA) {
		uint64_t vis = (t + 1) / a.rate;
		ncomp = vis < a.comp_n ? (uint32_t)vis : a.comp_n;
	} else if (a.mode == ATT_CSA) {
		ncomp = a.sel_k;
	}
	*nkeys = *nwin + ncomp;
}

template <int DPL> __global__ void __launch_bounds__(ATT_HB_MAX * 32) attn_kernel(attn_k a)
{
	extern __shared__ __align__(16) float sm[];
	uint32_t d = a.d, hb = a.hb;
	float *qs = sm;          /* [hb][d] */
	float *ks = qs + hb * d; /* [TK][d + 1] */
	size_t kp_off = ((size_t)hb * d + (size_t)ATT_TK * (d + 1) + 1) & ~(size_t)1;
	const float **kp = (const float **)(sm + kp_off); /* [TK] */

	uint32_t i = blockIdx.x, h0 = blockIdx.y * hb, sp = blockIdx.z;
	uint32_t warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
	uint32_t h = h0 + warp;
	bool active = warp < hb && h < a.H;

	uint64_t first;
	uint32_t nwin, nkeys;
	attn_range(a, i, &first, &nwin, &nkeys);
	uint32_t per = (nkeys + a.nsplit - 1) / a.nsplit;
	per = (per + ATT_TK - 1) / ATT_TK * ATT_TK;
	uint32_t kb = sp * per, ke = kb + per < nkeys ? kb + per : nkeys;

	for (uint32_t x = threadIdx.x; x < hb * d; x += blockDim.x) {
		uint32_t hh = h0 + x / d;
		qs[x] = hh < a.H ? a.q[((size_t)i * a.H + hh) * d + x % d] : 0.0f;
	}

	float m = -INFINITY, l = 0.0f, acc[DPL];
#pragma unroll
	for (int u = 0; u < DPL; u++)
		acc[u] = 0.0f;

	for (uint32_t k0 = kb; k0 < ke; k0 += ATT_TK) {
		__syncthreads(); /* the previous tile (and q) fully used / written */
		if (threadIdx.x < ATT_TK) {
			uint32_t j = k0 + threadIdx.x;
			const float *p = NULL;
			if (j < ke) {
				if (j < nwin) {
					uint64_t pos = first + j;
					p = pos < a.pos0
					        ? cu_stream_entry(a.ring, a.ring_pp, d,
					                          (uint32_t)(pos % a.ring_n))
					        : a.kv_new + (size_t)(pos - a.pos0) * d;
				} else if (a.mode == ATT_HCA) {
					p = cu_stream_entry(a.comp, a.comp_pp, d, j - nwin);
				} else {
					int32_t w = a.sel[(size_t)i * a.sel_k + (j - nwin)];
					if (w >= 0 && (uint32_t)w < a.comp_n)
						p = cu_stream_entry(a.comp, a.comp_pp, d,
						                    (uint32_t)w);
				}
			}
			kp[threadIdx.x] = p;
		}
		__syncthreads();
		for (uint32_t x = threadIdx.x; x < ATT_TK * d; x += blockDim.x) {
			uint32_t kk = x / d, ch = x % d;
			const float *p = kp[kk];
			ks[kk * (d + 1) + ch] = p ? p[ch] : 0.0f;
		}
		__syncthreads();
		if (!active)
			continue;
		const float *qh = qs + warp * d, *kr = ks + lane * (d + 1);
		bool valid = kp[lane] != NULL;
		float s = -INFINITY;
		if (valid) {
			float dot = 0.0f;
			for (uint32_t ch = 0; ch < d; ch++)
				dot = fmaf(qh[ch], kr[ch], dot);
			s = dot * a.scale;
		}
		float tmax = cu_warp_max(s);
		if (tmax == -INFINITY)
			continue; /* every key of the tile masked (warp-uniform) */
		float mn = fmaxf(m, tmax);
		float p = valid ? expf(s - mn) : 0.0f;
		float corr = expf(m - mn); /* 0 while m is -inf */
		l = l * corr + cu_warp_sum(p);
#pragma unroll
		for (int u = 0; u < DPL; u++)
			acc[u] *= corr;
		for (int kk = 0; kk < ATT_TK; kk++) {
			float pk = __shfl_sync(0xffffffffu, p, kk);
			if (pk == 0.0f)
				continue;
			const float *row = ks + kk * (d + 1);
#pragma unroll
			for (int u = 0; u < DPL; u++) {
				uint32_t ch = lane + 32 * u;
				if (ch < d)
					acc[u] = fmaf(pk, row[ch], acc[u]);
			}
		}
		m = mn;
	}
	if (!active)
		return;
	if (a.nsplit == 1) {
		float sink = a.sinks[h];
		float M = fmaxf(m, sink);
		float em = expf(m - M);
		float f = em / (l * em + expf(sink - M));
		float *o = a.out + ((size_t)i * a.H + h) * d;
#pragma unroll
		for (int u = 0; u < DPL; u++) {
			uint32_t ch = lane + 32 * u;
			if (ch < d)
				o[ch] = acc[u] * f;
		}
	} else {
		float *pp = a.part + (((size_t)i * a.H + h) * a.nsplit + sp) * (d + 2);
#pragma unroll
		for (int u = 0; u < DPL; u++) {
			uint32_t ch = lane + 32 * u;
			if (ch < d)
				pp[ch] = acc[u];
		}
		if (lane == 0) {
			pp[d] = m;
			pp[d + 1] = l;
		}
	}
}

/* Merge the splits of one (query, head) with the sink column. */
__global__ void attn_combine_kernel(const float *__restrict__ part, const float *__restrict__ sinks,
                                    uint32_t H, uint32_t d, uint32_t nsplit,
                                    float *__restrict__ out)
{
	uint32_t qh = blockIdx.x, h = qh % H;
	const float *pp = part + (size_t)qh * nsplit * (d + 2);
	float sink = sinks[h], M = sink;
	for (uint32_t s = 0; s < nsplit; s++)
		M = fmaxf(M, pp[(size_t)s * (d + 2) + d]);
	float den = expf(sink - M);
	for (uint32_t s = 0; s < nsplit; s++) {
		const float *ps = pp + (size_t)s * (d + 2);
		den += ps[d + 1] * expf(ps[d] - M);
	}
	for (uint32_t ch = threadIdx.x; ch < d; ch += blockDim.x) {
		float o = 0.0f;
		for (uint32_t s = 0; s < nsplit; s++) {
			const float *ps = pp + (size_t)s * (d + 2);
			o += ps[ch] * expf(ps[d] - M);
		}
		out[(size_t)qh * d + ch] = o / den;
	}
}

typedef void (*attn_fn)(attn_k);
static const attn_fn attn_kernels[] = {attn_kernel<1>, attn_kernel<2>,  attn_kernel<4>,
                                       attn_kernel<8>, attn_kernel<16>, attn_kernel<32>};

static int dpl_index(uint32_t d)
{
	int i = 0;
	for (uint32_t lim = 32; lim < d; lim *= 2)
		i++;
	return i;
}

int dp_cuda_attn_init(struct dp_gpu_cuda *c)
{
	for (int i = 0; i < (int)(sizeof(attn_kernels) / sizeof(attn_kernels[0])); i++) {
		int ret = dp_cuda_smem_optin(c, (const void *)attn_kernels[i],
		                             attn_smem(ATT_HB_MAX, 32u << i),
		                             "attention: shared memory opt-in");
		if (ret < 0)
			return ret;
	}
	return 0;
}

int dp_cuda_op_attention(struct dp_gpu *g, const struct dp_gpu_attn *a)
{
	struct dp_gpu_cuda *c = cu_of(g);
	if (!a || !a->q || !a->kv_new || !a->sinks || !a->out || a->window == 0 || !a->d || !a->H ||
	    a->d > CU_ATTN_D_MAX)
		return -EINVAL;
	if (a->pos0 > 0 && a->window > 1 &&
	    (!a->ring || a->ring->n < a->window - 1 || a->ring->dim != a->d || !a->ring->pages ||
	     !a->ring->per_page))
		return -EINVAL;
	if (a->sel && !a->comp)
		return -EINVAL;
	if (a->comp && a->comp->n &&
	    (a->comp->dim != a->d || !a->comp->pages || !a->comp->per_page))
		return -EINVAL;
	if (a->comp && !a->sel && a->comp->n && !a->rate)
		return -EINVAL;
	if (a->S == 0)
		return 0;
	int ret = dp_cuda_enter(c);
	if (ret < 0)
		return ret;

	attn_k k;
	k.q = a->q;
	k.kv_new = a->kv_new;
	bool use_ring = a->ring && a->ring->n && a->ring->pages;
	k.ring = use_ring ? a->ring->pages : NULL;
	k.ring_pp = use_ring ? a->ring->per_page : 1;
	k.ring_n = use_ring ? a->ring->n : 1;
	k.comp = a->comp ? a->comp->pages : NULL;
	k.comp_pp = a->comp && a->comp->per_page ? a->comp->per_page : 1;
	k.comp_n = a->comp ? a->comp->n : 0;
	k.window = a->window;
	k.rate = a->rate ? a->rate : 1;
	k.sel = a->sel;
	k.sel_k = a->sel ? a->sel_k : 0;
	k.sinks = a->sinks;
	k.scale = a->scale;
	k.S = a->S;
	k.H = a->H;
	k.d = a->d;
	k.hb = a->H < ATT_HB_MAX ? a->H : ATT_HB_MAX;
	k.pos0 = a->pos0;
	k.mode = a->sel ? ATT_CSA : (a->comp && a->comp->n) ? ATT_HCA : ATT_NONE;
	k.out = a->out;
	k.part = NULL;

	/* split the keys when the blocks would not fill the GPU twice over */
	uint32_t hblocks = (a->H + k.hb - 1) / k.hb;
	uint64_t blocks = (uint64_t)a->S * hblocks, target = 2 * (uint64_t)c->sm_count;
	uint64_t last = a->pos0 + a->S;
	uint64_t max_keys = (a->window < last ? a->window : last);
	if (k.mode == ATT_HCA)
		max_keys += (last / k.rate < k.comp_n ? last / k.rate : k.comp_n);
	else if (k.mode == ATT_CSA)
		max_keys += k.sel_k;
	uint64_t nsplit = 1;
	if (blocks < target) {
		uint64_t want = (target + blocks - 1) / blocks;
		uint64_t cap = (max_keys + 4 * ATT_TK - 1) / (4 * ATT_TK); /* >= 4 tiles each */
		nsplit = want < cap ? want : cap;
		if (nsplit < 1)
			nsplit = 1;
		if (nsplit > 1024)
			nsplit = 1024;
	}
	k.nsplit = (uint32_t)nsplit;
	if (nsplit > 1) {
		k.part = (float *)dp_cuda_ws(
		    c, CU_WS_OP, (size_t)a->S * a->H * nsplit * (a->d + 2) * sizeof(float));
		if (!k.part)
			return -ENOMEM;
	}
	size_t smem = attn_smem(k.hb, a->d);
	if (!cu_smem_fits(c, smem))
		return -EINVAL;
	dim3 grid(a->S, hblocks, (uint32_t)nsplit);
	attn_kernels[dpl_index(a->d)]<<<grid, k.hb * 32, smem, c->stream>>>(k);
	if ((ret = dp_cuda_launched(c, "attention")) < 0)
		return ret;
	if (nsplit > 1) {
		attn_combine_kernel<<<a->S * a->H, 128, 0, c->stream>>>(k.part, a->sinks, a->H,
		                                                        a->d, k.nsplit, a->out);
		ret = dp_cuda_launched(c, "attention combine");
	}
	return ret;
}
