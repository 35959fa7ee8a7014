/* SPDX-License-Identifier: MIT */
/* What every backend shares; not part of the public interface. */
#ifndef DP_GPU_INTERNAL_H
#define DP_GPU_INTERNAL_H

#include "gpu/gpu.h"

/* Whether `auto` may pick the cuda backend. The cuda ops exist (gpu/cuda) and
 * `--backend cuda` uses them, but they have not yet run on a GPU: this stays
 * 0 until the GPU suite (scripts/gpu-suite: tests/gpu against the cpu backend
 * and the parity data) has passed on the GPU machine. */
#define DP_GPU_CUDA_OPS_READY 0

/* Lifecycle and memory, per backend. */
struct dp_gpu_backend {
	enum dp_dtype weight_dtype; /* what weights are stored as */
	void (*destroy)(struct dp_gpu *g);
	void *(*alloc)(struct dp_gpu *g, size_t bytes); /* zeroed */
	void (*dealloc)(struct dp_gpu *g, void *p, size_t bytes);
	int (*upload)(struct dp_gpu *g, void *dst, const void *src, size_t bytes);
	int (*download)(struct dp_gpu *g, void *dst, const void *src, size_t bytes);
	int (*copy)(struct dp_gpu *g, void *dst, const void *src, size_t bytes);
	int (*zero)(struct dp_gpu *g, void *dst, size_t bytes);
	int (*sync)(struct dp_gpu *g);
	void (*device_mem)(const struct dp_gpu *g, uint64_t *total, uint64_t *free_bytes);
	void *(*host_alloc)(struct dp_gpu *g, size_t bytes); /* zeroed, pinned where it matters */
	void (*host_free)(struct dp_gpu *g, void *p, size_t bytes);
	const char *(*last_error)(const struct dp_gpu *g); /* optional */
};

/* Backends embed this first in their own struct. */
struct dp_gpu {
	enum dp_gpu_kind kind;
	const struct dp_gpu_backend *be;
	const struct dp_gpu_ops *ops;
	uint64_t bytes[DP_GPU_MEM_CLASS_MAX];
	uint64_t peak;
	/* why gpu.c refused a call with -ENOTSUP (dp_gpu_last_error falls back
	 * to it when the backend has nothing to say) */
	char why[160];
	enum dp_gpu_isa isa; /* cpu: the kernel path in use */
};

int dp_gpu_cpu_new(const struct dp_gpu_opts *opts, struct dp_gpu **ret, char *err, size_t err_len);
#if DP_HAVE_CUDA
int dp_gpu_cuda_new(const struct dp_gpu_opts *opts, struct dp_gpu **ret, char *err,
		    size_t err_len);
int dp_gpu_cuda_probe(struct dp_gpu_device_info *out, int max, char *why, size_t why_len);
#endif

/* Convert n values of `src_dtype` to fp32 (gpu.c; the scalar conversions are base/dtype.h's).
 * Returns 0 or -EINVAL. */
int dp_convert_to_f32(float *dst, const void *src, enum dp_dtype src_dtype, size_t n);

#endif /* DP_GPU_INTERNAL_H */
