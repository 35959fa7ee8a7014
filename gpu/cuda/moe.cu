/* SPDX-License-Identifier: MIT */
/*
 * Routing and the routed experts.
 *
 * route: one warp per token. Scores (sqrtsoftplus / sigmoid / softmax) as
 * the cpu backend computes them; hash layers take tid2eid[ids[t]]; top-k of
 * score + bias picks k times the best untaken expert, ties to the lower
 * index; weights = score / (sum + 1e-20) * scale. An out-of-range tid2eid
 * entry gives expert -1 (weight 0), which moe skips (the loader has checked
 * the table; the cpu backend would return -EINVAL).
 *
 * moe: the expert ids are in device memory and the interface keeps counts on
 * the host, so the grouping of the batch's (token, slot) pairs by expert is
 * planned in one of two ways:
 *   - up to CU_MOE_DEVICE_PAIRS pairs (decode and small batches): on the
 *     device, without a host round trip. A one-block kernel counts pairs per
 *     expert, lays them out expert by expert (stable in pair order) and
 *     lists the experts in use; then one "expert GEMV" kernel per matrix
 *     runs over (row block, expert in use): each warp streams one weight row
 *     once per 8 routed tokens, so every expert's weights are read about
 *     once per step. The gate/up kernel applies the clamped SwiGLU before
 *     writing. Nothing here synchronizes the host, so a decode step stays
 *     capturable in a CUDA graph.
 *   - more pairs (prefill): the host waits for the ids (one sync per MoE
 *     layer, cheap beside the prefill's arithmetic), plans, uploads the plan,
 *     gathers each expert's rows and runs its two products through the dense
 *     path (cuBLAS on tensor cores when an expert has more than
 *     CU_GEMV_MAX_M rows).
 * Both end in the same combine kernel: y[t] += w * out, over the token's
 * pairs in expert order, then slot order — the cpu backend's order of
 * additions.
 *
 * Paged stacks (gate_up and down share slot_of, device memory [E]): expert e
 * is stored matrix slot_of[e]. A pick of an expert that is not resident
 * (slot_of[e] < 0, or not below `stored`) is planned like a pick < 0: no
 * slot, skipped by the experts and by the combine, so the picks present
 * give bitwise the plain stack's results (same products on the same rows,
 * same order of additions). The device plan reads slot_of on the device;
 * the host plan downloads it with the ids.
 */
#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "gpu/cuda/cuda-internal.cuh"
#include "gpu/cuda/wvec.cuh"

#define CU_MOE_DEVICE_PAIRS 256
#define CU_MOE_K_MAX        32
#define EXP_WARPS           8
#define EXP_CHUNK           8

/* ---- route ------------------------------------------------------------------ */

#define ROUTE_WARPS 4

__device__ __forceinline__ float softplus_dev(float x)
{
	return x > 20.0f ? x : log1pf(expf(x));
}

/* Bytes of dynamic shared memory per warp: scores [E] floats, then taken
 * [E] bytes, rounded up to 16. */
static inline size_t route_stride(uint32_t E)
{
	return ((size_t)E * 5 + 15) & ~(size_t)15;
}

__global__ void route_kernel(const float *__restrict__ logits, const float *__restrict__ bias,
                             const int32_t *__restrict__ tid2eid, const int32_t *__restrict__ ids,
                             uint32_t T, uint32_t E, uint32_t k, int fn, float scale, size_t stride,
                             int32_t *__restrict__ idx, float *__restrict__ w)
{
	extern __shared__ __align__(16) unsigned char smem[];
	uint32_t warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
	uint32_t t = blockIdx.x * ROUTE_WARPS + warp;
	float *sc = (float *)(smem + (size_t)warp * stride);
	unsigned char *taken = (unsigned char *)(sc + E);
	if (t >= T)
		return;
	const float *lt = logits + (size_t)t * E;
	int32_t *it = idx + (size_t)t * k;
	float *wt = w + (size_t)t * k;

	if (fn == DP_GPU_SCORE_SOFTMAX) {
		float m = -INFINITY;
		for (uint32_t e = lane; e < E; e += 32)
			m = fmaxf(m, lt[e]);
		m = cu_warp_max(m);
		double sum = 0;
		for (uint32_t e = lane; e < E; e += 32) {
			sc[e] = expf(lt[e] - m);
			sum += sc[e];
		}
		sum = cu_warp_sum(sum);
		for (uint32_t e = lane; e < E; e += 32)
			sc[e] = (float)(sc[e] / sum);
	} else {
		for (uint32_t e = lane; e < E; e += 32)
			sc[e] = fn == DP_GPU_SCORE_SIGMOID ? cu_sigmoidf(lt[e])
			                                   : sqrtf(softplus_dev(lt[e]));
	}
	for (uint32_t e = lane; e < E; e += 32)
		taken[e] = 0;
	__syncwarp();

	if (tid2eid) {
		const int32_t *row = tid2eid + (size_t)ids[t] * k;
		for (uint32_t j = lane; j < k; j += 32) {
			int32_t e = row[j];
			it[j] = e >= 0 && (uint32_t)e < E ? e : -1;
		}
	} else {
		for (uint32_t j = 0; j < k; j++) {
			int32_t best = -1;
			float bv = 0;
			for (uint32_t e = lane; e < E; e += 32) {
				if (taken[e])
					continue;
				float v = __fadd_rn(sc[e], bias ? bias[e] : 0.0f);
				if (best < 0 || v > bv) {
					best = (int32_t)e;
					bv = v;
				}
			}
			for (int o = 16; o > 0; o >>= 1) {
				int32_t ob = __shfl_xor_sync(0xffffffffu, best, o);
				float ov = __shfl_xor_sync(0xffffffffu, bv, o);
				if (ob >= 0 && (best < 0 || ov > bv || (ov == bv && ob < best))) {
					best = ob;
					bv = ov;
				}
			}
			if (lane == 0) {
				it[j] = best;
				if (best >= 0)
					taken[best] = 1;
			}
			__syncwarp();
		}
	}
	__syncwarp();
	if (lane == 0) {
		double sum = 0;
		for (uint32_t j = 0; j < k; j++)
			if (it[j] >= 0)
				sum += sc[it[j]];
		float den = __fadd_rn((float)sum, 1e-20f);
		for (uint32_t j = 0; j < k; j++)
			wt[j] = it[j] >= 0 ? __fmul_rn(__fdiv_rn(sc[it[j]], den), scale) : 0.0f;
	}
}

int dp_cuda_op_route(struct dp_gpu *g, const float *logits, const float *bias,
                     const int32_t *tid2eid, const int32_t *ids, uint32_t T, uint32_t E, uint32_t k,
                     enum dp_gpu_score_fn fn, float scale, int32_t *idx, float *w)
{
	struct dp_gpu_cuda *c = cu_of(g);
	if (!logits || !idx || !w || k == 0 || k > E || fn >= DP_GPU_SCORE_FN_MAX ||
	    (tid2eid && !ids))
		return -EINVAL;
	size_t smem = ROUTE_WARPS * route_stride(E);
	if (smem > 48 * 1024)
		return -EINVAL; /* more than ~2400 experts: not a V4 shape */
	if (T == 0)
		return 0;
	int ret = dp_cuda_enter(c);
	if (ret < 0)
		return ret;
	route_kernel<<<cu_blocks(T, ROUTE_WARPS), ROUTE_WARPS * 32, smem, c->stream>>>(
	    logits, bias, tid2eid, ids, T, E, k, (int)fn, scale, route_stride(E), idx, w);
	return dp_cuda_launched(c, "route");
}

/* ---- moe: planning ------------------------------------------------------------ */

struct moe_plan {
	int32_t *off;      /* [E + 1]: slots of expert e are off[e] .. off[e+1] */
	int32_t *active;   /* [min(P, E)]: experts in use, ascending */
	int32_t *n_active; /* [1] */
	int32_t *perm;     /* [P]: slot -> pair (t * k + j) */
	int32_t *pos;      /* [P]: pair -> slot, -1 for an invalid expert */
};

/* Whether pair expert e has weights: in range and, for a paged stack,
 * resident. */
__device__ __forceinline__ bool moe_present(int32_t e, uint32_t E,
                                            const int32_t *__restrict__ slot_of, uint32_t stored)
{
	if (e < 0 || (uint32_t)e >= E)
		return false;
	if (!slot_of)
		return true;
	int32_t s = slot_of[e];
	return s >= 0 && (uint32_t)s < stored;
}

/* One block: the device-side plan of P pairs (P <= CU_MOE_DEVICE_PAIRS).
 * Pairs whose expert is not present get no slot (pos -1). */
__global__ void moe_plan_kernel(const int32_t *__restrict__ idx, uint32_t P, uint32_t E,
                                const int32_t *__restrict__ slot_of, uint32_t stored,
                                struct moe_plan pl)
{
	extern __shared__ int32_t cnt[]; /* [E] */
	uint32_t tid = threadIdx.x;
	for (uint32_t e = tid; e < E; e += blockDim.x)
		cnt[e] = 0;
	__syncthreads();
	for (uint32_t p = tid; p < P; p += blockDim.x) {
		int32_t e = idx[p];
		if (moe_present(e, E, slot_of, stored))
			atomicAdd(&cnt[e], 1);
	}
	__syncthreads();
	if (tid < 32) { /* exclusive scan over experts: one warp, a chunk per lane */
		uint32_t chunk = (E + 31) / 32, b = tid * chunk, en = b + chunk < E ? b + chunk : E;
		int32_t local = 0, la = 0;
		for (uint32_t e = b; e < en; e++) {
			local += cnt[e];
			la += cnt[e] > 0;
		}
		int32_t incl = local, incla = la;
		for (int o = 1; o < 32; o <<= 1) {
			int32_t v = __shfl_up_sync(0xffffffffu, incl, o);
			int32_t va = __shfl_up_sync(0xffffffffu, incla, o);
			if ((int)tid >= o) {
				incl += v;
				incla += va;
			}
		}
		int32_t run = incl - local, ra = incla - la;
		for (uint32_t e = b; e < en; e++) {
			pl.off[e] = run;
			if (cnt[e])
				pl.active[ra++] = (int32_t)e;
			run += cnt[e];
		}
		if (tid == 31) {
			pl.off[E] = incl;
			*pl.n_active = incla;
		}
	}
	__syncthreads();
	for (uint32_t p = tid; p < P; p += blockDim.x) {
		int32_t e = idx[p];
		if (!moe_present(e, E, slot_of, stored)) {
			pl.pos[p] = -1;
			continue;
		}
		int32_t rank = 0;
		for (uint32_t q = 0; q < p; q++)
			rank += idx[q] == e;
		int32_t slot = pl.off[e] + rank;
		pl.perm[slot] = (int32_t)p;
		pl.pos[p] = slot;
	}
}

/* ---- moe: expert GEMV (device-planned path) -------------------------------- */

/* acc[b] += W[row] . in[b] for nb (<= EXP_CHUNK) inputs of `cols` floats;
 * NW rows at once (gate and up share the inputs). */
template <typename WT, bool VEC, int NW>
__device__ __forceinline__ void exp_dot(const WT *const *wrow, const float *const *in, int nb,
                                        uint32_t cols, uint32_t lane, float acc[NW][EXP_CHUNK])
{
	if (VEC) {
		constexpr int N = wvec<WT>::N;
		for (uint32_t kk = lane * N; kk < cols; kk += 32 * N) {
			float wv[NW][N];
#pragma unroll
			for (int r = 0; r < NW; r++)
				wvec<WT>::load(wrow[r] + kk, wv[r]);
#pragma unroll
			for (int b = 0; b < EXP_CHUNK; b++) {
				if (b >= nb)
					break;
#pragma unroll
				for (int q = 0; q < N / 4; q++) {
					float4 xv =
					    __ldg(reinterpret_cast<const float4 *>(in[b] + kk) + q);
#pragma unroll
					for (int r = 0; r < NW; r++) {
						acc[r][b] = fmaf(wv[r][4 * q], xv.x, acc[r][b]);
						acc[r][b] = fmaf(wv[r][4 * q + 1], xv.y, acc[r][b]);
						acc[r][b] = fmaf(wv[r][4 * q + 2], xv.z, acc[r][b]);
						acc[r][b] = fmaf(wv[r][4 * q + 3], xv.w, acc[r][b]);
					}
				}
			}
		}
	} else {
		for (uint32_t kk = lane; kk < cols; kk += 32) {
			float wv[NW];
#pragma unroll
			for (int r = 0; r < NW; r++)
				wv[r] = wvec<WT>::one(wrow[r] + kk);
#pragma unroll
			for (int b = 0; b < EXP_CHUNK; b++) {
				if (b >= nb)
					break;
				float xv = __ldg(in[b] + kk);
#pragma unroll
				for (int r = 0; r < NW; r++)
					acc[r][b] = fmaf(wv[r], xv, acc[r][b]);
			}
		}
	}
}

/* h[slot][i] = swiglu(gate_e[i] . x[t], up_e[i] . x[t]) for every slot of
 * expert e = active[blockIdx.y] (stored matrix slot_of[e] of a paged stack,
 * which the plan has checked); warp = row i. */
template <typename WT, bool VEC>
__global__ void __launch_bounds__(EXP_WARPS * 32)
    exp_gate_up_kernel(const float *__restrict__ x, const WT *__restrict__ gate_up,
                       const int32_t *__restrict__ slot_of, uint32_t D, uint32_t I, uint32_t k,
                       struct moe_plan pl, float limit, float *__restrict__ h)
{
	uint32_t ai = blockIdx.y;
	if (ai >= (uint32_t)*pl.n_active)
		return;
	uint32_t lane = threadIdx.x & 31, i = blockIdx.x * EXP_WARPS + (threadIdx.x >> 5);
	if (i >= I)
		return;
	int32_t e = pl.active[ai], m = slot_of ? slot_of[e] : e;
	int32_t s0 = pl.off[e], cnt = pl.off[e + 1] - s0;
	const WT *wrow[2] = {gate_up + ((size_t)m * 2 * I + i) * D,
	                     gate_up + ((size_t)m * 2 * I + I + i) * D};
	for (int32_t c0 = 0; c0 < cnt; c0 += EXP_CHUNK) {
		int nb = cnt - c0 < EXP_CHUNK ? cnt - c0 : EXP_CHUNK;
		const float *in[EXP_CHUNK];
		float acc[2][EXP_CHUNK];
#pragma unroll
		for (int b = 0; b < EXP_CHUNK; b++) {
			in[b] = b < nb ? x + (size_t)(pl.perm[s0 + c0 + b] / (int32_t)k) * D : x;
			acc[0][b] = acc[1][b] = 0.0f;
		}
		exp_dot<WT, VEC, 2>(wrow, in, nb, D, lane, acc);
#pragma unroll
		for (int b = 0; b < EXP_CHUNK; b++) {
			float gv = cu_warp_sum(acc[0][b]), uv = cu_warp_sum(acc[1][b]);
			if (lane == 0 && b < nb) {
				gv = fminf(gv, limit);
				uv = fminf(fmaxf(uv, -limit), limit);
				h[(size_t)(s0 + c0 + b) * I + i] = __fmul_rn(cu_siluf(gv), uv);
			}
		}
	}
}

/* os[slot][r] = down_e[r] . h[slot] (stored matrix slot_of[e] of a paged
 * stack); warp = row r of D. */
template <typename WT, bool VEC>
__global__ void __launch_bounds__(EXP_WARPS * 32)
    exp_down_kernel(const float *__restrict__ h, const WT *__restrict__ down,
                    const int32_t *__restrict__ slot_of, uint32_t D, uint32_t I, struct moe_plan pl,
                    float *__restrict__ os)
{
	uint32_t ai = blockIdx.y;
	if (ai >= (uint32_t)*pl.n_active)
		return;
	uint32_t lane = threadIdx.x & 31, r = blockIdx.x * EXP_WARPS + (threadIdx.x >> 5);
	if (r >= D)
		return;
	int32_t e = pl.active[ai], m = slot_of ? slot_of[e] : e;
	int32_t s0 = pl.off[e], cnt = pl.off[e + 1] - s0;
	const WT *wrow[1] = {down + ((size_t)m * D + r) * I};
	for (int32_t c0 = 0; c0 < cnt; c0 += EXP_CHUNK) {
		int nb = cnt - c0 < EXP_CHUNK ? cnt - c0 : EXP_CHUNK;
		const float *in[EXP_CHUNK];
		float acc[1][EXP_CHUNK];
#pragma unroll
		for (int b = 0; b < EXP_CHUNK; b++) {
			in[b] = h + (size_t)(b < nb ? s0 + c0 + b : s0) * I;
			acc[0][b] = 0.0f;
		}
		exp_dot<WT, VEC, 1>(wrow, in, nb, I, lane, acc);
#pragma unroll
		for (int b = 0; b < EXP_CHUNK; b++) {
			float v = cu_warp_sum(acc[0][b]);
			if (lane == 0 && b < nb)
				os[(size_t)(s0 + c0 + b) * D + r] = v;
		}
	}
}

/* ---- moe: host-planned path helpers, combine ---------------------------------- */

__global__ void moe_gather_kernel(const float *__restrict__ x, const int32_t *__restrict__ perm,
                                  uint32_t n_slots, uint32_t D, uint32_t k, float *__restrict__ xs)
{
	size_t total = (size_t)n_slots * D;
	for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
	     i += (size_t)gridDim.x * blockDim.x) {
		size_t s = i / D, d = i % D;
		xs[i] = x[(size_t)(perm[s] / (int32_t)k) * D + d];
	}
}

/* y[t][d] += sum over the token's pairs, in (expert, slot) order, of
 * w * os[pos][d]. */
__global__ void moe_combine_kernel(const int32_t *__restrict__ idx, const float *__restrict__ w,
                                   const int32_t *__restrict__ pos, const float *__restrict__ os,
                                   uint32_t T, uint32_t k, uint32_t D, float *__restrict__ y)
{
	size_t total = (size_t)T * D;
	for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
	     i += (size_t)gridDim.x * blockDim.x) {
		size_t t = i / D, d = i % D;
		const int32_t *it = idx + t * k;
		/* the token's valid pairs sorted by (expert, j): insertion sort */
		uint8_t order[CU_MOE_K_MAX];
		uint32_t n = 0;
		for (uint32_t j = 0; j < k; j++) {
			if (pos[t * k + j] < 0)
				continue;
			uint32_t q = n++;
			while (q > 0 && it[order[q - 1]] > it[j]) {
				order[q] = order[q - 1];
				q--;
			}
			order[q] = (uint8_t)j;
		}
		float acc = y[i];
		for (uint32_t q = 0; q < n; q++) {
			uint32_t j = order[q];
			acc = __fadd_rn(
			    acc, __fmul_rn(w[t * k + j], os[(size_t)pos[t * k + j] * D + d]));
		}
		y[i] = acc;
	}
}

static uint32_t grid_of(size_t n)
{
	uint32_t b = cu_blocks(n, 256);
	return b > 65535 ? 65535 : b;
}

static size_t up256(size_t n)
{
	return (n + 255) & ~(size_t)255;
}

template <typename WT>
static int device_experts(struct dp_gpu_cuda *c, const float *x, const WT *gu, const WT *dn,
                          const int32_t *slot_of, uint32_t D, uint32_t I, uint32_t k,
                          uint32_t grid_e, const struct moe_plan &pl, float limit, float *h,
                          float *os)
{
	bool vec_gu = D % wvec<WT>::N == 0 && ((uintptr_t)x & 15) == 0 && ((uintptr_t)gu & 15) == 0;
	bool vec_dn = I % wvec<WT>::N == 0 && ((uintptr_t)h & 15) == 0 && ((uintptr_t)dn & 15) == 0;
	dim3 g1(cu_blocks(I, EXP_WARPS), grid_e), g2(cu_blocks(D, EXP_WARPS), grid_e);
	if (vec_gu)
		exp_gate_up_kernel<WT, true>
		    <<<g1, EXP_WARPS * 32, 0, c->stream>>>(x, gu, slot_of, D, I, k, pl, limit, h);
	else
		exp_gate_up_kernel<WT, false>
		    <<<g1, EXP_WARPS * 32, 0, c->stream>>>(x, gu, slot_of, D, I, k, pl, limit, h);
	int ret = dp_cuda_launched(c, "moe gate_up");
	if (ret < 0)
		return ret;
	if (vec_dn)
		exp_down_kernel<WT, true>
		    <<<g2, EXP_WARPS * 32, 0, c->stream>>>(h, dn, slot_of, D, I, pl, os);
	else
		exp_down_kernel<WT, false>
		    <<<g2, EXP_WARPS * 32, 0, c->stream>>>(h, dn, slot_of, D, I, pl, os);
	return dp_cuda_launched(c, "moe down");
}

/* Host plan: download the ids (and a paged stack's slot table), group the
 * pairs of present experts, upload perm and pos. ret_slot[e]: the stored
 * matrix of expert e (e itself in a plain stack), -1 when not resident. */
static int host_plan(struct dp_gpu_cuda *c, const int32_t *idx, uint32_t P, uint32_t E,
                     const int32_t *slot_of, uint32_t stored, const struct moe_plan &pl,
                     int32_t *ret_off /* [E + 1], host */, int32_t *ret_slot /* [E], host */)
{
	cudaError_t e = cudaStreamSynchronize(c->stream); /* also frees dp_cuda_host to regrow */
	if (e != cudaSuccess)
		return dp_cuda_fail(c, e, "moe: sync");
	size_t n_slot = slot_of ? E : 0;
	int32_t *h = (int32_t *)dp_cuda_host(c, ((size_t)3 * P + n_slot) * sizeof(int32_t));
	if (!h)
		return -ENOMEM;
	int32_t *hperm = h + P, *hpos = h + 2 * (size_t)P, *hslot = h + 3 * (size_t)P;
	if ((e = cudaMemcpyAsync(h, idx, (size_t)P * sizeof(int32_t), cudaMemcpyDeviceToHost,
	                         c->stream)) != cudaSuccess ||
	    (slot_of && (e = cudaMemcpyAsync(hslot, slot_of, n_slot * sizeof(int32_t),
	                                     cudaMemcpyDeviceToHost, c->stream)) != cudaSuccess) ||
	    (e = cudaStreamSynchronize(c->stream)) != cudaSuccess)
		return dp_cuda_fail(c, e, "moe: ids download");
	for (uint32_t q = 0; q < E; q++) {
		if (!slot_of)
			ret_slot[q] = (int32_t)q;
		else
			ret_slot[q] = hslot[q] >= 0 && (uint32_t)hslot[q] < stored ? hslot[q] : -1;
	}
	memset(ret_off, 0, ((size_t)E + 1) * sizeof(int32_t));
	for (uint32_t p = 0; p < P; p++) {
		if (h[p] < 0 || (uint32_t)h[p] >= E || ret_slot[h[p]] < 0)
			h[p] = -1; /* no weights: planned like a pick < 0 */
		else
			ret_off[h[p] + 1]++;
	}
	for (uint32_t q = 0; q < E; q++)
		ret_off[q + 1] += ret_off[q];
	/* stable: pairs of one expert in pair order */
	int32_t *fill = (int32_t *)malloc(((size_t)E + 1) * sizeof(int32_t));
	if (!fill)
		return -ENOMEM;
	memcpy(fill, ret_off, ((size_t)E + 1) * sizeof(int32_t));
	for (uint32_t p = 0; p < P; p++) {
		if (h[p] < 0) {
			hpos[p] = -1;
			continue;
		}
		int32_t s = fill[h[p]]++;
		hperm[s] = (int32_t)p;
		hpos[p] = s;
	}
	free(fill);
	/* pinned source, async: the next use of the staging buffer comes after
	 * a stream sync (above) */
	if ((e = cudaMemcpyAsync(pl.perm, hperm, (size_t)P * sizeof(int32_t),
	                         cudaMemcpyHostToDevice, c->stream)) != cudaSuccess ||
	    (e = cudaMemcpyAsync(pl.pos, hpos, (size_t)P * sizeof(int32_t), cudaMemcpyHostToDevice,
	                         c->stream)) != cudaSuccess)
		return dp_cuda_fail(c, e, "moe: plan upload");
	return 0;
}

/* gate_up and down: plain stacks, or paged stacks over one slot table with
 * the same number of stored matrices; the stored matrices as weight_ok
 * wants them. */
static bool moe_weights_ok(const struct dp_gpu_cuda *c, const struct dp_gpu_weight *gate_up,
                           const struct dp_gpu_weight *down)
{
	if (!gate_up || !down || gate_up->slot_of != down->slot_of)
		return false;
	struct dp_gpu_weight gu = *gate_up, dn = *down;
	if (gate_up->slot_of) {
		if (!gate_up->stored || gate_up->stored != down->stored)
			return false;
		gu.slot_of = dn.slot_of = NULL;
		gu.count = dn.count = gate_up->stored;
	}
	return dp_cuda_weight_ok(c, &gu) && dp_cuda_weight_ok(c, &dn);
}

/* Stored matrix s of a stack, as a plain one-matrix weight. */
static struct dp_gpu_weight moe_matrix(const struct dp_gpu_weight *w, uint32_t s)
{
	struct dp_gpu_weight m;
	memset(&m, 0, sizeof(m));
	m.data = (char *)w->data + (size_t)s * w->rows * w->cols * dp_dtype_size(w->dtype);
	m.dtype = w->dtype;
	m.count = 1;
	m.rows = w->rows;
	m.cols = w->cols;
	return m;
}

int dp_cuda_op_moe(struct dp_gpu *g, const float *x, const int32_t *idx, const float *w, uint32_t T,
                   uint32_t k, const struct dp_gpu_weight *gate_up,
                   const struct dp_gpu_weight *down, float limit, float *y)
{
	struct dp_gpu_cuda *c = cu_of(g);
	if (!x || !idx || !w || !y || !moe_weights_ok(c, gate_up, down) || k == 0 ||
	    k > CU_MOE_K_MAX)
		return -EINVAL;
	uint32_t E = gate_up->count, I = gate_up->rows / 2, D = gate_up->cols;
	if (down->count != E || down->rows != D || down->cols != I || gate_up->rows % 2)
		return -EINVAL;
	if (T == 0)
		return 0;
	if ((size_t)T * k > INT32_MAX)
		return -EINVAL;
	int ret = dp_cuda_enter(c);
	if (ret < 0)
		return ret;
	uint32_t P = T * k;
	bool on_device = P <= CU_MOE_DEVICE_PAIRS;
	const int32_t *slot_of = gate_up->slot_of;
	uint32_t stored = slot_of ? gate_up->stored : E; /* experts with weights, at most */
	uint32_t grid_e = P < E ? P : E;
	grid_e = grid_e < stored ? grid_e : stored;

	/* workspace: plan, h [P][I], os [P][D]; host path: xs [P][D], gu [P][2I] */
	size_t sz_off = up256(((size_t)E + 1) * 4), sz_act = up256((size_t)E * 4), sz_na = 256;
	size_t sz_p = up256((size_t)P * 4);
	size_t sz_h = up256((size_t)P * I * 4), sz_os = up256((size_t)P * D * 4);
	size_t sz_xs = on_device ? 0 : sz_os, sz_gu = on_device ? 0 : up256((size_t)P * 2 * I * 4);
	size_t total = sz_off + sz_act + sz_na + 2 * sz_p + sz_h + sz_os + sz_xs + sz_gu;
	char *base = (char *)dp_cuda_ws(c, CU_WS_OP, total);
	if (!base)
		return -ENOMEM;
	struct moe_plan pl;
	char *at = base;
	pl.off = (int32_t *)at;
	at += sz_off;
	pl.active = (int32_t *)at;
	at += sz_act;
	pl.n_active = (int32_t *)at;
	at += sz_na;
	pl.perm = (int32_t *)at;
	at += sz_p;
	pl.pos = (int32_t *)at;
	at += sz_p;
	float *h = (float *)at;
	at += sz_h;
	float *os = (float *)at;
	at += sz_os;
	float *xs = (float *)at;
	at += sz_xs;
	float *gu = (float *)at;
	bool bf16 = gate_up->dtype == DP_DTYPE_BF16;

	if (on_device) {
		size_t smem = (size_t)E * sizeof(int32_t);
		if (smem > 48 * 1024)
			return -EINVAL;
		moe_plan_kernel<<<1, 256, smem, c->stream>>>(idx, P, E, slot_of, stored, pl);
		if ((ret = dp_cuda_launched(c, "moe plan")) < 0)
			return ret;
		ret = bf16 ? device_experts(c, x, (const __nv_bfloat16 *)gate_up->data,
		                            (const __nv_bfloat16 *)down->data, slot_of, D, I, k,
		                            grid_e, pl, limit, h, os)
		           : device_experts(c, x, (const float *)gate_up->data,
		                            (const float *)down->data, slot_of, D, I, k, grid_e, pl,
		                            limit, h, os);
		if (ret < 0)
			return ret;
	} else {
		/* off [E + 1], then slot [E] */
		int32_t *off = (int32_t *)malloc(((size_t)2 * E + 1) * sizeof(int32_t));
		if (!off)
			return -ENOMEM;
		int32_t *slot = off + E + 1;
		ret = host_plan(c, idx, P, E, slot_of, stored, pl, off, slot);
		uint32_t n_slots = ret == 0 ? (uint32_t)off[E] : 0;
		if (ret == 0 && n_slots) {
			moe_gather_kernel<<<grid_of((size_t)n_slots * D), 256, 0, c->stream>>>(
			    x, pl.perm, n_slots, D, k, xs);
			ret = dp_cuda_launched(c, "moe gather");
		}
		for (uint32_t e = 0; ret == 0 && e < E; e++) {
			uint32_t s0 = (uint32_t)off[e], m = (uint32_t)(off[e + 1] - off[e]);
			if (!m)
				continue;
			struct dp_gpu_weight mw = moe_matrix(gate_up, (uint32_t)slot[e]);
			ret = dp_cuda_matmul(c, xs + (size_t)s0 * D, 0, &mw, 0,
			                     gu + (size_t)s0 * 2 * I, 0, m, false);
		}
		if (ret == 0 && n_slots)
			ret = dp_cuda_op_swiglu(g, gu, gu + I, h, n_slots, I, 2 * I, limit);
		for (uint32_t e = 0; ret == 0 && e < E; e++) {
			uint32_t s0 = (uint32_t)off[e], m = (uint32_t)(off[e + 1] - off[e]);
			if (!m)
				continue;
			struct dp_gpu_weight mw = moe_matrix(down, (uint32_t)slot[e]);
			ret = dp_cuda_matmul(c, h + (size_t)s0 * I, 0, &mw, 0, os + (size_t)s0 * D,
			                     0, m, false);
		}
		free(off);
		if (ret < 0)
			return ret;
	}
	moe_combine_kernel<<<grid_of((size_t)T * D), 256, 0, c->stream>>>(idx, w, pl.pos, os, T, k,
	                                                                  D, y);
	return dp_cuda_launched(c, "moe combine");
}
