/* SPDX-License-Identifier: MIT */
/*
 * gpu/cuda/wvec.cuh — the GEMV kernels' weight loads (dense.cu, moe.cu):
 * wvec<WT>::load reads 16 bytes of weights through the read-only cache and
 * widens them to N floats; wvec<WT>::one reads a single weight (the tail of
 * a row that is not a multiple of N).
 */
#ifndef DP_GPU_CUDA_WVEC_CUH
#define DP_GPU_CUDA_WVEC_CUH

#include <cuda_bf16.h>
#include <cstdint>

template <typename WT> struct wvec;

/* 16 bytes of weights -> N floats */
template <> struct wvec<__nv_bfloat16> {
	static constexpr int N = 8;
	__device__ __forceinline__ static void load(const __nv_bfloat16 *p, float *out)
	{
		uint4 v = __ldg(reinterpret_cast<const uint4 *>(p));
		const __nv_bfloat162 *h = reinterpret_cast<const __nv_bfloat162 *>(&v);
#pragma unroll
		for (int i = 0; i < 4; i++) {
			float2 f = __bfloat1622float2(h[i]);
			out[2 * i] = f.x;
			out[2 * i + 1] = f.y;
		}
	}
	__device__ __forceinline__ static float one(const __nv_bfloat16 *p)
	{
		return __bfloat162float(p[0]);
	}
};

template <> struct wvec<float> {
	static constexpr int N = 4;
	__device__ __forceinline__ static void load(const float *p, float *out)
	{
		float4 v = __ldg(reinterpret_cast<const float4 *>(p));
		out[0] = v.x;
		out[1] = v.y;
		out[2] = v.z;
		out[3] = v.w;
	}
	__device__ __forceinline__ static float one(const float *p)
	{
		return __ldg(p);
	}
};

#endif /* DP_GPU_CUDA_WVEC_CUH */
