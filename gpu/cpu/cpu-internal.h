/* SPDX-License-Identifier: MIT */
#ifndef DP_GPU_CPU_INTERNAL_H
#define DP_GPU_CPU_INTERNAL_H

#include "gpu/gpu-internal.h"
#include "gpu/cpu/qmm-internal.h"

/* Largest hc_mult the ops handle (stack buffers). */
#define DP_GPU_HC_MAX 16
/* Largest compress rate (slots per window) the compressor handles. */
#define DP_GPU_COMPRESS_RATE_MAX 512

struct dp_gpu_cpu {
	struct dp_gpu g; /* first */
	float *scratch;	 /* grows on demand; valid during one op */
	size_t scratch_len;
	/* products with bf16 / e4m3 / e2m1 weights (qmm.c) */
	const struct dp_qmm_isa *qmm;
	struct dp_cpu_pool pool;
	float *tiles; /* pool.n x DP_QMM_NR x DP_QMM_KC */
};

/* A scratch buffer of at least `floats` floats, or NULL. */
float *dp_cpu_scratch(struct dp_gpu_cpu *c, size_t floats);
void dp_cpu_rope_vec(float *v, uint32_t rope_dim, int64_t pos, const float *inv_freq, float factor,
		     bool inverse);

int dp_cpu_attention(struct dp_gpu *g, const struct dp_gpu_attn *a);
int dp_cpu_compress(struct dp_gpu *g, const struct dp_gpu_compress *c);
int dp_cpu_index_topk(struct dp_gpu *g, const struct dp_gpu_index *ix);

static inline const float *dp_stream_entry(const struct dp_gpu_stream *s, uint32_t i)
{
	return s->pages[i / s->per_page] + (size_t)(i % s->per_page) * s->dim;
}

#endif
