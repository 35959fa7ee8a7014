/* SPDX-License-Identifier: MIT */
/* cpu backend: attention with sinks over window + compressed entries, the
 * HCA/CSA compressors and the lightning indexer. */
#include <cblas.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "gpu/cpu/cpu-internal.h"

static double dot(const float *a, const float *b, uint32_t n)
{
	double acc = 0;
	for (uint32_t i = 0; i < n; i++)
		acc += (double)a[i] * b[i];
	return acc;
}

int dp_cpu_attention(struct dp_gpu *g, const struct dp_gpu_attn *a)
{
	struct dp_gpu_cpu *c = (struct dp_gpu_cpu *)g;

	if (!a || !a->q || !a->kv_new || !a->sinks || !a->out || a->window == 0 || !a->d)
		return -EINVAL;
	if (a->pos0 > 0 && a->window > 1 &&
	    (!a->ring || a->ring->n < a->window - 1 || a->ring->dim != a->d))
		return -EINVAL;
	if (a->sel && !a->comp)
		return -EINVAL;
	uint32_t n_comp = a->comp ? a->comp->n : 0;
	uint32_t max_keys = a->window + (a->sel ? a->sel_k : n_comp);
	uint32_t H = a->H, d = a->d;
	/* scratch: the query's keys gathered [max_keys][d], then scores [H][max_keys] */
	float *K = dp_cpu_scratch(c, (size_t)max_keys * d + (size_t)H * max_keys);
	if (!K)
		return -ENOMEM;
	float *P = K + (size_t)max_keys * d;

	for (uint32_t i = 0; i < a->S; i++) {
		uint64_t t = a->pos0 + i;
		uint32_t nk = 0;
		uint64_t first = t + 1 >= a->window ? t + 1 - a->window : 0;
		for (uint64_t p = first; p <= t; p++)
			memcpy(K + (size_t)nk++ * d,
			       p < a->pos0 ? dp_stream_entry(a->ring, (uint32_t)(p % a->ring->n))
					   : a->kv_new + (size_t)(p - a->pos0) * d,
			       d * sizeof(float));
		if (a->sel) {
			for (uint32_t j = 0; j < a->sel_k; j++) {
				int32_t w = a->sel[(size_t)i * a->sel_k + j];
				if (w >= 0 && (uint32_t)w < n_comp)
					memcpy(K + (size_t)nk++ * d, dp_stream_entry(a->comp, (uint32_t)w),
					       d * sizeof(float));
			}
		} else if (n_comp) {
			uint64_t vis = (t + 1) / a->rate;
			for (uint32_t w = 0; w < n_comp && w < vis; w++)
				memcpy(K + (size_t)nk++ * d, dp_stream_entry(a->comp, w),
				       d * sizeof(float));
		}
		const float *q = a->q + (size_t)i * H * d;
		float *o = a->out + (size_t)i * H * d;
		/* scores [H][nk] = q [H][d] . K^T */
		cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)H, (int)nk, (int)d, a->scale,
			    q, (int)d, K, (int)d, 0.0f, P, (int)nk);
		for (uint32_t h = 0; h < H; h++) {
			float *ph = P + (size_t)h * nk;
			double m = a->sinks[h];
			for (uint32_t j = 0; j < nk; j++)
				if (ph[j] > m)
					m = ph[j];
			double den = exp(a->sinks[h] - m);
			for (uint32_t j = 0; j < nk; j++) {
				double e = exp(ph[j] - m);
				den += e;
				ph[j] = (float)e;
			}
			float inv = (float)(1.0 / den);
			for (uint32_t j = 0; j < nk; j++)
				ph[j] *= inv;
		}
		/* out [H][d] = P [H][nk] . K [nk][d] */
		cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)H, (int)d, (int)nk, 1.0f, P,
			    (int)nk, K, (int)d, 0.0f, o, (int)d);
	}
	return 0;
}

int dp_cpu_compress(struct dp_gpu *g, const struct dp_gpu_compress *c)
{
	struct dp_gpu_cpu *cpu = (struct dp_gpu_cpu *)g;
	uint32_t m = c->rate, dim = c->dim, width = c->width, slot = 2 * width;

	if (!c->slots || !c->bias || !c->norm || !c->inv_freq || !c->out_entries || !m || !dim ||
	    m > DP_GPU_COMPRESS_RATE_MAX)
		return -EINVAL;
	if (c->overlap ? (width != 2 * dim || !c->prev) : width != dim)
		return -EINVAL;
	float *entry = dp_cpu_scratch(cpu, dim);
	if (!entry)
		return -ENOMEM;
	for (uint32_t w = 0; w < c->n_win; w++) {
		const float *win = c->slots + (size_t)w * m * slot;
		for (uint32_t ch = 0; ch < dim; ch++) {
			/* Gather the logits and values of this channel's slots:
			 * HCA: m slots; CSA: m Ca slots (previous window) then m Cb. */
			double lg[2 * DP_GPU_COMPRESS_RATE_MAX], val[2 * DP_GPU_COMPRESS_RATE_MAX];
			uint32_t ns = 0;
			if (c->overlap) {
				const float *pw = w > 0 ? win - (size_t)m * slot : NULL;
				for (uint32_t j = 0; j < m; j++) {
					if (pw) {
						val[ns] = pw[(size_t)j * slot + ch];
						lg[ns++] = (double)pw[(size_t)j * slot + width + ch] +
							   c->bias[(size_t)j * width + ch];
					} else if (c->has_prev) {
						val[ns] = c->prev[(size_t)j * dim + ch];
						lg[ns++] = c->prev[(size_t)(m + j) * dim + ch];
					}
				}
				for (uint32_t j = 0; j < m; j++) {
					val[ns] = win[(size_t)j * slot + dim + ch];
					lg[ns++] = (double)win[(size_t)j * slot + width + dim + ch] +
						   c->bias[(size_t)j * width + dim + ch];
				}
			} else {
				for (uint32_t j = 0; j < m; j++) {
					val[ns] = win[(size_t)j * slot + ch];
					lg[ns++] = (double)win[(size_t)j * slot + width + ch] +
						   c->bias[(size_t)j * width + ch];
				}
			}
			/* the reference adds the bias in fp32 before the softmax */
			double mx = -INFINITY;
			for (uint32_t j = 0; j < ns; j++) {
				lg[j] = (float)lg[j];
				if (lg[j] > mx)
					mx = lg[j];
			}
			double den = 0, acc = 0;
			for (uint32_t j = 0; j < ns; j++) {
				double p = exp(lg[j] - mx);
				den += p;
				acc += p * val[j];
			}
			entry[ch] = (float)(acc / den);
		}
		float *out = c->out_entries + (size_t)w * dim;
		double ss = dot(entry, entry, dim);
		float s = (float)(1.0 / sqrt(ss / dim + c->eps));
		for (uint32_t ch = 0; ch < dim; ch++)
			out[ch] = c->norm[ch] * (entry[ch] * s);
		dp_cpu_rope_vec(out + dim - c->rope_dim, c->rope_dim,
				(int64_t)(c->first_pos + (uint64_t)w * m), c->inv_freq, c->rope_factor,
				false);
	}
	if (c->overlap && c->n_win > 0) {
		/* carry the last window's Ca (values, and gates with bias) */
		const float *last = c->slots + (size_t)(c->n_win - 1) * m * slot;
		for (uint32_t j = 0; j < m; j++)
			for (uint32_t ch = 0; ch < dim; ch++) {
				c->prev[(size_t)j * dim + ch] = last[(size_t)j * slot + ch];
				c->prev[(size_t)(m + j) * dim + ch] =
					last[(size_t)j * slot + width + ch] + c->bias[(size_t)j * width + ch];
			}
	}
	return 0;
}

/* a ranks before b: higher score, or equal score and lower index */
static inline bool ranks_before(const float *score, int32_t a, int32_t b)
{
	return score[a] > score[b] || (score[a] == score[b] && a < b);
}

/* Write the k best of score[0..n) to sel in rank order; -1 past n. A min-heap
 * of the k best seen so far (root: the worst of them), O(n log k). */
static void topk_select(const float *score, uint32_t n, uint32_t k, int32_t *sel)
{
	uint32_t h = 0;

	for (uint32_t w = 0; w < n; w++) {
		int32_t cand = (int32_t)w;
		uint32_t i;
		if (h < k) {
			i = h++;
			while (i > 0 && ranks_before(score, sel[(i - 1) / 2], cand)) {
				sel[i] = sel[(i - 1) / 2];
				i = (i - 1) / 2;
			}
			sel[i] = cand;
			continue;
		}
		if (!ranks_before(score, cand, sel[0]))
			continue;
		i = 0; /* replace the root and sift down */
		for (;;) {
			uint32_t l = 2 * i + 1, r = l + 1, worst = i;
			int32_t wv = cand;
			if (l < h && ranks_before(score, wv, sel[l])) {
				worst = l;
				wv = sel[l];
			}
			if (r < h && ranks_before(score, wv, sel[r]))
				worst = r;
			if (worst == i)
				break;
			sel[i] = sel[worst];
			i = worst;
		}
		sel[i] = cand;
	}
	/* heap order -> rank order: repeatedly move the worst to the end */
	for (uint32_t end = h; end > 1; end--) {
		int32_t worst = sel[0];
		int32_t last = sel[end - 1];
		uint32_t i = 0, size = end - 1;
		for (;;) {
			uint32_t l = 2 * i + 1, r = l + 1, w = i;
			int32_t wv = last;
			if (l < size && ranks_before(score, wv, sel[l])) {
				w = l;
				wv = sel[l];
			}
			if (r < size && ranks_before(score, wv, sel[r]))
				w = r;
			if (w == i)
				break;
			sel[i] = sel[w];
			i = w;
		}
		sel[i] = last;
		sel[end - 1] = worst;
	}
	for (uint32_t j = h; j < k; j++)
		sel[j] = -1;
}

struct index_job {
	const struct dp_gpu_index *ix;
	float *score; /* n floats per thread (by tokens), or the token's n (by keys) */
	uint32_t n;
	uint32_t i, vis; /* by keys: the token, its visible entries */
};

/* Token i's score of compressed entries [w0, w1). */
static void index_scores(const struct dp_gpu_index *ix, uint32_t i, uint32_t w0, uint32_t w1,
			 float *score)
{
	for (uint32_t w = w0; w < w1; w++) {
		const float *key = dp_stream_entry(ix->keys, w);
		double acc = 0;
		for (uint32_t h = 0; h < ix->nh; h++) {
			double d = dot(ix->qi + ((size_t)i * ix->nh + h) * ix->dim, key, ix->dim);
			float r = d > 0 ? (float)d * ix->key_scale : 0.0f;
			acc += (double)r * (ix->weights[(size_t)i * ix->nh + h] * ix->weight_scale);
		}
		score[w] = (float)acc;
	}
}

static uint32_t index_visible(const struct dp_gpu_index *ix, uint32_t i, uint32_t n)
{
	uint64_t vis = (ix->pos0 + i + 1) / ix->rate;
	return vis < n ? (uint32_t)vis : n;
}

/* Tokens [S * tid / nt, S * (tid + 1) / nt) of the index: each token's scores
 * and pick are its own, so the split changes no bit. */
static void index_by_tokens(void *arg, int tid, int nt)
{
	const struct index_job *j = arg;
	const struct dp_gpu_index *ix = j->ix;
	float *score = j->score + (size_t)tid * j->n;
	uint32_t i0 = (uint32_t)((uint64_t)ix->S * tid / nt);
	uint32_t i1 = (uint32_t)((uint64_t)ix->S * (tid + 1) / nt);
	for (uint32_t i = i0; i < i1; i++) {
		uint32_t vis = index_visible(ix, i, j->n);
		index_scores(ix, i, 0, vis, score);
		topk_select(score, vis, ix->k, ix->sel + (size_t)i * ix->k);
	}
}

/* Entries [vis * tid / nt, vis * (tid + 1) / nt) of token j->i: a decode
 * step's one token scores its whole context; each entry's score is its own. */
static void index_by_keys(void *arg, int tid, int nt)
{
	const struct index_job *j = arg;
	index_scores(j->ix, j->i, (uint32_t)((uint64_t)j->vis * tid / nt),
		     (uint32_t)((uint64_t)j->vis * (tid + 1) / nt), j->score);
}

/* Scoring below this many entries stays on the caller's thread. */
#define INDEX_POOL_MIN_KEYS 256u

int dp_cpu_index_topk(struct dp_gpu *g, const struct dp_gpu_index *ix)
{
	struct dp_gpu_cpu *c = (struct dp_gpu_cpu *)g;
	uint32_t n = ix->keys ? ix->keys->n : 0;

	if (!ix->qi || !ix->weights || !ix->sel || !ix->rate || !ix->k)
		return -EINVAL;
	/* a prefill chunk's tokens over the pool, or a few tokens' entries */
	int nt = c->pool.n;
	bool by_tokens = nt > 1 && ix->S >= (uint32_t)nt;
	float *score = dp_cpu_scratch(c, (size_t)(n ? n : 1) * (by_tokens ? (size_t)nt : 1));
	if (!score)
		return -ENOMEM;
	struct index_job j = { .ix = ix, .score = score, .n = n };
	if (by_tokens) {
		dp_cpu_pool_run(&c->pool, index_by_tokens, &j);
		return 0;
	}
	for (uint32_t i = 0; i < ix->S; i++) {
		j.i = i;
		j.vis = index_visible(ix, i, n);
		if (nt > 1 && j.vis >= INDEX_POOL_MIN_KEYS)
			dp_cpu_pool_run(&c->pool, index_by_keys, &j);
		else
			index_scores(ix, i, 0, j.vis, score);
		topk_select(score, j.vis, ix->k, ix->sel + (size_t)i * ix->k);
	}
	return 0;
}
