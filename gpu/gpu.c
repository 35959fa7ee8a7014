/* SPDX-License-Identifier: MIT */
/* Backend-independent parts of the op interface: dispatch, accounting,
 * dtype conversion, weight upload. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dp-config.h"
#include "base/dtype.h"
#include "gpu/gpu-internal.h"

static const char *const kind_names[DP_GPU_KIND_MAX] = { "cpu", "cuda" };

const char *dp_gpu_kind_name(enum dp_gpu_kind kind)
{
	return kind < DP_GPU_KIND_MAX ? kind_names[kind] : NULL;
}

int dp_gpu_kind_parse(const char *name, enum dp_gpu_kind *ret_kind)
{
	if (!name || !ret_kind)
		return -EINVAL;
	if (!strcmp(name, "auto")) {
		struct dp_gpu_device_info info;
		*ret_kind = DP_GPU_CUDA_OPS_READY && dp_gpu_probe(&info, 1, NULL, 0) > 0 ? DP_GPU_CUDA
											 : DP_GPU_CPU;
		return 0;
	}
	for (int k = 0; k < DP_GPU_KIND_MAX; k++)
		if (!strcmp(name, kind_names[k])) {
			*ret_kind = (enum dp_gpu_kind)k;
			return 0;
		}
	return -EINVAL;
}

int dp_gpu_cuda_built(void)
{
	return DP_HAVE_CUDA;
}

int dp_gpu_probe(struct dp_gpu_device_info *out, int max, char *why, size_t why_len)
{
	if ((!out && max > 0) || max < 0)
		return -EINVAL;
#if DP_HAVE_CUDA
	return dp_gpu_cuda_probe(out, max, why, why_len);
#else
	if (why && why_len)
		snprintf(why, why_len, "built without CUDA (-Dcuda=disabled or no toolkit)");
	return 0;
#endif
}

static const size_t dtype_sizes[DP_DTYPE_MAX] = { 4, 2, 2, 4, 1, 0, 1 };
static const char *const dtype_names[DP_DTYPE_MAX] = { "f32",  "bf16", "f16", "i32",
						       "e4m3", "e2m1", "e8m0" };

size_t dp_dtype_size(enum dp_dtype dtype)
{
	return dtype < DP_DTYPE_MAX ? dtype_sizes[dtype] : 0;
}

size_t dp_dtype_bytes(enum dp_dtype dtype, size_t n)
{
	if (dtype == DP_DTYPE_E2M1)
		return (n + 1) / 2;
	return dp_dtype_size(dtype) * n;
}

static const char *const isa_names[DP_GPU_ISA_MAX] = { "auto", "portable", "avx2", "avx512" };

const char *dp_gpu_isa_name(enum dp_gpu_isa isa)
{
	return isa < DP_GPU_ISA_MAX ? isa_names[isa] : NULL;
}

int dp_gpu_isa_parse(const char *name, enum dp_gpu_isa *ret_isa)
{
	if (!name || !ret_isa)
		return -EINVAL;
	for (int i = 0; i < DP_GPU_ISA_MAX; i++)
		if (!strcmp(name, isa_names[i])) {
			*ret_isa = (enum dp_gpu_isa)i;
			return 0;
		}
	return -EINVAL;
}

enum dp_gpu_isa dp_gpu_isa_of(const struct dp_gpu *g)
{
	return g && g->kind == DP_GPU_CPU ? g->isa : DP_GPU_ISA_MAX;
}

const char *dp_dtype_name(enum dp_dtype dtype)
{
	return dtype < DP_DTYPE_MAX ? dtype_names[dtype] : NULL;
}

int dp_gpu_new(enum dp_gpu_kind kind, const struct dp_gpu_opts *opts, struct dp_gpu **ret_gpu,
	       char *err, size_t err_len)
{
	static const struct dp_gpu_opts defaults = { 0 };

	if (!ret_gpu || kind >= DP_GPU_KIND_MAX)
		return -EINVAL;
	if (!opts)
		opts = &defaults;
	switch (kind) {
	case DP_GPU_CPU:
		return dp_gpu_cpu_new(opts, ret_gpu, err, err_len);
	case DP_GPU_CUDA:
#if DP_HAVE_CUDA
		return dp_gpu_cuda_new(opts, ret_gpu, err, err_len);
#else
		if (err && err_len)
			snprintf(err, err_len, "this build has no CUDA backend (configure with -Dcuda=enabled)");
		return -ENOTSUP;
#endif
	default:
		return -EINVAL;
	}
}

void dp_gpu_free(struct dp_gpu *g)
{
	if (g)
		g->be->destroy(g);
}

enum dp_gpu_kind dp_gpu_kind_of(const struct dp_gpu *g)
{
	return g->kind;
}

const struct dp_gpu_ops *dp_gpu_ops(const struct dp_gpu *g)
{
	return g->ops;
}

void *dp_gpu_alloc(struct dp_gpu *g, size_t bytes, enum dp_gpu_mem_class cls)
{
	if (!g || cls >= DP_GPU_MEM_CLASS_MAX || bytes == 0)
		return NULL;
	void *p = g->be->alloc(g, bytes);
	if (!p)
		return NULL;
	g->bytes[cls] += bytes;
	uint64_t total = 0;
	for (int c = 0; c < DP_GPU_MEM_CLASS_MAX; c++)
		total += g->bytes[c];
	if (total > g->peak)
		g->peak = total;
	return p;
}

void dp_gpu_dealloc(struct dp_gpu *g, void *p, size_t bytes, enum dp_gpu_mem_class cls)
{
	if (!g || !p || cls >= DP_GPU_MEM_CLASS_MAX)
		return;
	g->be->dealloc(g, p, bytes);
	g->bytes[cls] -= bytes <= g->bytes[cls] ? bytes : g->bytes[cls];
}

void *dp_gpu_host_alloc(struct dp_gpu *g, size_t bytes)
{
	if (!g || bytes == 0)
		return NULL;
	return g->be->host_alloc(g, bytes);
}

void dp_gpu_host_free(struct dp_gpu *g, void *p, size_t bytes)
{
	if (g && p)
		g->be->host_free(g, p, bytes);
}

int dp_gpu_upload(struct dp_gpu *g, void *dst, const void *src, size_t bytes)
{
	return g->be->upload(g, dst, src, bytes);
}

int dp_gpu_download(struct dp_gpu *g, void *dst, const void *src, size_t bytes)
{
	return g->be->download(g, dst, src, bytes);
}

int dp_gpu_copy(struct dp_gpu *g, void *dst, const void *src, size_t bytes)
{
	return g->be->copy(g, dst, src, bytes);
}

int dp_gpu_zero(struct dp_gpu *g, void *dst, size_t bytes)
{
	return g->be->zero(g, dst, bytes);
}

int dp_gpu_sync(struct dp_gpu *g)
{
	return g->be->sync(g);
}

const char *dp_gpu_last_error(const struct dp_gpu *g)
{
	const char *e = g && g->be->last_error ? g->be->last_error(g) : NULL;
	if ((!e || !e[0]) && g)
		e = g->why;
	return e ? e : "";
}

void dp_gpu_mem_stats(const struct dp_gpu *g, struct dp_gpu_mem_stats *ret)
{
	memset(ret, 0, sizeof(*ret));
	memcpy(ret->bytes, g->bytes, sizeof(ret->bytes));
	ret->peak_bytes = g->peak;
	if (g->be->device_mem)
		g->be->device_mem(g, &ret->device_total, &ret->device_free);
}

/* ---- dtype conversion ---------------------------------------------------- */

int dp_convert_to_f32(float *dst, const void *src, enum dp_dtype src_dtype, size_t n)
{
	switch (src_dtype) {
	case DP_DTYPE_F32:
		memcpy(dst, src, n * sizeof(float));
		return 0;
	case DP_DTYPE_BF16: {
		/* the bits shifted into place, a block at a time (vectorizes) */
		const uint16_t *s = src;
		uint32_t blk[256];
		for (size_t i = 0; i < n; i += 256) {
			size_t k = n - i < 256 ? n - i : 256;
			for (size_t j = 0; j < k; j++)
				blk[j] = (uint32_t)s[i + j] << 16;
			memcpy(dst + i, blk, k * sizeof(float));
		}
		return 0;
	}
	case DP_DTYPE_F16: {
		const uint16_t *s = src;
		for (size_t i = 0; i < n; i++)
			dst[i] = dp_f16_to_f32(s[i]);
		return 0;
	}
	default:
		return -EINVAL;
	}
}

/* ---- weights ----------------------------------------------------------- */

int dp_gpu_weight_alloc(struct dp_gpu *g, uint32_t count, uint32_t rows, uint32_t cols,
			struct dp_gpu_weight *ret_w)
{
	if (!g || !ret_w || !count || !rows || !cols)
		return -EINVAL;
	enum dp_dtype dt = g->be->weight_dtype;
	size_t bytes = (size_t)count * rows * cols * dp_dtype_size(dt);
	void *dev = dp_gpu_alloc(g, bytes, DP_GPU_MEM_WEIGHTS);
	if (!dev)
		return -ENOMEM;
	*ret_w = (struct dp_gpu_weight){ .data = dev, .dtype = dt, .count = count, .rows = rows,
					 .cols = cols };
	return 0;
}

/* Convert n values to the backend dtype `dt` into dst (host). */
static int convert_to(void *dst, enum dp_dtype dt, const void *src, enum dp_dtype src_dtype,
		      size_t n)
{
	if (dt == DP_DTYPE_F32)
		return dp_convert_to_f32(dst, src, src_dtype, n);
	if (dt != DP_DTYPE_BF16)
		return -EINVAL;
	uint16_t *h = dst;
	switch (src_dtype) {
	case DP_DTYPE_BF16:
		memcpy(dst, src, n * 2);
		return 0;
	case DP_DTYPE_F32: {
		const float *s = src;
		for (size_t i = 0; i < n; i++)
			h[i] = dp_f32_to_bf16(s[i]);
		return 0;
	}
	case DP_DTYPE_F16: {
		const uint16_t *s = src;
		for (size_t i = 0; i < n; i++)
			h[i] = dp_f32_to_bf16(dp_f16_to_f32(s[i]));
		return 0;
	}
	default:
		return -EINVAL;
	}
}

int dp_gpu_weight_fill_buf(struct dp_gpu *g, struct dp_gpu_weight *w, uint32_t index, uint32_t row0,
			   uint32_t n_rows, const void *src, enum dp_dtype src_dtype, void *buf,
			   size_t buf_bytes)
{
	if (!g || !w || !w->data || w->slot_of || w->borrowed || !src || index >= w->count ||
	    row0 > w->rows || n_rows > w->rows - row0 || src_dtype >= DP_DTYPE_MAX ||
	    src_dtype == DP_DTYPE_I32 || src_dtype >= DP_DTYPE_E4M3 ||
	    (w->dtype != DP_DTYPE_F32 && w->dtype != DP_DTYPE_BF16)) /* blocks: fill_blocks */
		return -EINVAL;
	size_t esz = dp_dtype_size(w->dtype), ssz = dp_dtype_size(src_dtype);
	size_t n = (size_t)n_rows * w->cols;
	char *dst = (char *)w->data + (((size_t)index * w->rows + row0) * w->cols) * esz;
	if (n == 0)
		return 0;
	if (src_dtype == w->dtype)
		return dp_gpu_upload(g, dst, src, n * esz);
	if (dp_gpu_kind_of(g) == DP_GPU_CPU) /* backend memory is host memory */
		return convert_to(dst, w->dtype, src, src_dtype, n);
	/* convert through the host buffer, as much at a time as it holds */
	size_t chunk = buf ? buf_bytes / esz : 0;
	if (!chunk)
		return -EINVAL;
	int ret = 0;
	for (size_t done = 0; done < n && ret == 0; done += chunk) {
		size_t k = n - done < chunk ? n - done : chunk;
		ret = convert_to(buf, w->dtype, (const char *)src + done * ssz, src_dtype, k);
		if (ret == 0)
			ret = dp_gpu_upload(g, dst + done * esz, buf, k * esz);
	}
	return ret;
}

int dp_gpu_weight_fill(struct dp_gpu *g, struct dp_gpu_weight *w, uint32_t index, uint32_t row0,
		       uint32_t n_rows, const void *src, enum dp_dtype src_dtype)
{
	if (!g || !w)
		return -EINVAL;
	size_t n = (size_t)n_rows * w->cols;
	size_t bytes = (n < (1u << 20) ? n : (1u << 20)) * dp_dtype_size(w->dtype);
	void *host = malloc(bytes ? bytes : 1); /* 1 Mi elements at a time */
	if (!host)
		return -ENOMEM;
	int ret = dp_gpu_weight_fill_buf(g, w, index, row0, n_rows, src, src_dtype, host, bytes);
	free(host);
	return ret;
}

int dp_gpu_weight_upload(struct dp_gpu *g, const void *src, enum dp_dtype src_dtype,
			 uint32_t count, uint32_t rows, uint32_t cols, struct dp_gpu_weight *ret_w)
{
	struct dp_gpu_weight w;
	int ret = dp_gpu_weight_alloc(g, count, rows, cols, &w);
	if (ret < 0)
		return ret;
	for (uint32_t i = 0; i < count && ret == 0; i++)
		ret = dp_gpu_weight_fill(g, &w, i, 0, rows,
					 (const char *)src + (size_t)i * rows * cols * dp_dtype_size(src_dtype),
					 src_dtype);
	if (ret < 0) {
		dp_gpu_weight_free(g, &w);
		return ret;
	}
	*ret_w = w;
	return 0;
}

int dp_gpu_vector_upload(struct dp_gpu *g, const void *src, enum dp_dtype src_dtype, size_t n,
			 float **ret_vec)
{
	if (!g || !src || !ret_vec || !n)
		return -EINVAL;
	float *host = malloc(n * sizeof(float));
	if (!host)
		return -ENOMEM;
	int ret = dp_convert_to_f32(host, src, src_dtype, n);
	if (ret < 0) {
		free(host);
		return ret;
	}
	float *dev = dp_gpu_alloc(g, n * sizeof(float), DP_GPU_MEM_WEIGHTS);
	if (!dev) {
		free(host);
		return -ENOMEM;
	}
	ret = dp_gpu_upload(g, dev, host, n * sizeof(float));
	free(host);
	if (ret < 0) {
		dp_gpu_dealloc(g, dev, n * sizeof(float), DP_GPU_MEM_WEIGHTS);
		return ret;
	}
	*ret_vec = dev;
	return 0;
}

/* Bytes of one matrix's codes and of its scales. */
static size_t matrix_bytes(enum dp_dtype dtype, uint32_t rows, uint32_t cols)
{
	return (size_t)rows * dp_dtype_bytes(dtype, cols);
}

static size_t scale_bytes(enum dp_dtype dtype, enum dp_dtype scale_dtype, uint32_t rows,
			  uint32_t cols)
{
	return dp_gpu_weight_scales(dtype, rows, cols) * dp_dtype_size(scale_dtype);
}

void dp_gpu_weight_free(struct dp_gpu *g, struct dp_gpu_weight *w)
{
	if (!g || !w || !w->data)
		return;
	if (!w->borrowed) {
		uint32_t n = w->slot_of ? w->stored : w->count;
		dp_gpu_dealloc(g, w->data, n * matrix_bytes(w->dtype, w->rows, w->cols),
			       DP_GPU_MEM_WEIGHTS);
		if (w->scale)
			dp_gpu_dealloc(g, w->scale,
				       n * scale_bytes(w->dtype, w->scale_dtype, w->rows, w->cols),
				       DP_GPU_MEM_WEIGHTS);
	}
	memset(w, 0, sizeof(*w));
}

/* ---- block-scaled weights, kept as stored ---------------------------------- */

size_t dp_gpu_weight_scales(enum dp_dtype dtype, uint32_t rows, uint32_t cols)
{
	switch (dtype) {
	case DP_DTYPE_E4M3:
		return (size_t)((rows + DP_GPU_E4M3_BLOCK - 1) / DP_GPU_E4M3_BLOCK) *
		       ((cols + DP_GPU_E4M3_BLOCK - 1) / DP_GPU_E4M3_BLOCK);
	case DP_DTYPE_E2M1:
		return (size_t)rows * ((cols + DP_GPU_E2M1_BLOCK - 1) / DP_GPU_E2M1_BLOCK);
	default:
		return 0;
	}
}

static bool scaled(enum dp_dtype dtype)
{
	return dtype == DP_DTYPE_E4M3 || dtype == DP_DTYPE_E2M1;
}

/* The dtypes and shape a stored weight may have on backend g: 0, -EINVAL,
 * or -ENOTSUP with the reason in g->why. */
static int check_as(struct dp_gpu *g, enum dp_dtype dtype, enum dp_dtype scale_dtype,
		    uint32_t count, uint32_t rows, uint32_t cols)
{
	if (!count || !rows || !cols)
		return -EINVAL;
	if (dtype != DP_DTYPE_F32 && dtype != DP_DTYPE_BF16 && !scaled(dtype))
		return -EINVAL;
	if (scaled(dtype) && scale_dtype != DP_DTYPE_E8M0 && scale_dtype != DP_DTYPE_F32)
		return -EINVAL;
	if (dtype == DP_DTYPE_E2M1 && cols % 2)
		return -EINVAL; /* a row is whole bytes */
	if (g->kind != DP_GPU_CPU && dtype != g->be->weight_dtype) {
		snprintf(g->why, sizeof(g->why),
			 "the %s backend has no kernels for %s weights (it computes with %s): "
			 "use the cpu backend for this checkpoint",
			 dp_gpu_kind_name(g->kind), dp_dtype_name(dtype),
			 dp_dtype_name(g->be->weight_dtype));
		return -ENOTSUP;
	}
	return 0;
}

/* Refuse the codes no kernel may compute with: e4m3 NaN (s1111111), e8m0
 * 255 (NaN), non-finite f32 scales. Reads every byte once. */
static int check_codes(enum dp_dtype dtype, const void *data, size_t data_bytes,
		       enum dp_dtype scale_dtype, const void *scale, size_t n_scales)
{
	if (dtype == DP_DTYPE_E4M3) {
		/* NaN codes (0x7f, 0xff) 8 bytes a word: (w & 0x7f..) + 0x01.. sets a
		 * byte's top bit exactly when its low 7 bits are all ones, and no carry
		 * crosses into the next byte. A whole checkpoint passes through here
		 * at load: GCC 12 leaves the byte loop scalar (~1.3 GB/s), this reads
		 * ~6 GB/s on one core. */
		const uint8_t *p = data;
		uint64_t acc = 0;
		size_t i = 0;
		for (; i + 64 <= data_bytes; i += 64) {
			uint64_t w[8];
			memcpy(w, p + i, sizeof(w));
			for (int k = 0; k < 8; k++)
				acc |= (w[k] & 0x7f7f7f7f7f7f7f7full) + 0x0101010101010101ull;
		}
		unsigned bad = (acc & 0x8080808080808080ull) != 0;
		for (; i < data_bytes; i++)
			bad |= (p[i] & 0x7fu) == 0x7fu;
		if (bad)
			return -EINVAL;
	}
	if (!scaled(dtype))
		return 0;
	if (scale_dtype == DP_DTYPE_E8M0) {
		const uint8_t *p = scale;
		unsigned bad = 0;
		for (size_t i = 0; i < n_scales; i++)
			bad |= p[i] == 0xffu;
		return bad ? -EINVAL : 0;
	}
	const float *f = scale;
	for (size_t i = 0; i < n_scales; i++)
		if (!isfinite(f[i]))
			return -EINVAL;
	return 0;
}

int dp_gpu_weight_alloc_as(struct dp_gpu *g, enum dp_dtype dtype, enum dp_dtype scale_dtype,
			   uint32_t count, uint32_t rows, uint32_t cols,
			   struct dp_gpu_weight *ret_w)
{
	if (!g || !ret_w)
		return -EINVAL;
	int ret = check_as(g, dtype, scale_dtype, count, rows, cols);
	if (ret < 0)
		return ret;
	struct dp_gpu_weight w = { .dtype = dtype, .count = count, .rows = rows, .cols = cols };
	w.data = dp_gpu_alloc(g, count * matrix_bytes(dtype, rows, cols), DP_GPU_MEM_WEIGHTS);
	if (!w.data)
		return -ENOMEM;
	if (scaled(dtype)) {
		size_t n = count * dp_gpu_weight_scales(dtype, rows, cols);
		w.scale_dtype = scale_dtype;
		w.scale = dp_gpu_alloc(g, n * dp_dtype_size(scale_dtype), DP_GPU_MEM_WEIGHTS);
		if (!w.scale) {
			dp_gpu_weight_free(g, &w);
			return -ENOMEM;
		}
		/* scales 2^0, so a zeroed weight is zero and not a NaN-free lie */
		void *one = malloc(n * dp_dtype_size(scale_dtype));
		if (!one) {
			dp_gpu_weight_free(g, &w);
			return -ENOMEM;
		}
		for (size_t i = 0; i < n; i++) {
			if (scale_dtype == DP_DTYPE_E8M0)
				((uint8_t *)one)[i] = 127;
			else
				((float *)one)[i] = 1.0f;
		}
		ret = dp_gpu_upload(g, w.scale, one, n * dp_dtype_size(scale_dtype));
		free(one);
		if (ret < 0) {
			dp_gpu_weight_free(g, &w);
			return ret;
		}
	}
	*ret_w = w;
	return 0;
}

int dp_gpu_weight_fill_blocks(struct dp_gpu *g, struct dp_gpu_weight *w, uint32_t index,
			      const void *data, const void *scale)
{
	if (!g || !w || !w->data || w->borrowed || !data || (scaled(w->dtype) && !scale))
		return -EINVAL;
	if (index >= (w->slot_of ? w->stored : w->count))
		return -EINVAL;
	size_t mb = matrix_bytes(w->dtype, w->rows, w->cols);
	size_t ns = dp_gpu_weight_scales(w->dtype, w->rows, w->cols);
	size_t sb = ns * dp_dtype_size(w->scale_dtype);
	int ret = check_codes(w->dtype, data, mb, w->scale_dtype, scale, ns);
	if (ret < 0)
		return ret;
	ret = dp_gpu_upload(g, (char *)w->data + index * mb, data, mb);
	if (ret == 0 && scaled(w->dtype))
		ret = dp_gpu_upload(g, (char *)w->scale + index * sb, scale, sb);
	return ret;
}

int dp_gpu_weight_upload_as(struct dp_gpu *g, const void *data, const void *scale,
			    enum dp_dtype dtype, enum dp_dtype scale_dtype, uint32_t count,
			    uint32_t rows, uint32_t cols, struct dp_gpu_weight *ret_w)
{
	struct dp_gpu_weight w;

	if (!data || (scaled(dtype) && !scale) || !ret_w)
		return -EINVAL;
	int ret = dp_gpu_weight_alloc_as(g, dtype, scale_dtype, count, rows, cols, &w);
	if (ret < 0)
		return ret;
	size_t mb = matrix_bytes(dtype, rows, cols);
	size_t sb = scale_bytes(dtype, scale_dtype, rows, cols);
	for (uint32_t i = 0; i < count && ret == 0; i++)
		ret = dp_gpu_weight_fill_blocks(g, &w, i, (const char *)data + i * mb,
						scale ? (const char *)scale + i * sb : NULL);
	if (ret < 0) {
		dp_gpu_weight_free(g, &w);
		return ret;
	}
	*ret_w = w;
	return 0;
}

int dp_gpu_weight_wrap(struct dp_gpu *g, const void *data, const void *scale, enum dp_dtype dtype,
		       enum dp_dtype scale_dtype, uint32_t count, uint32_t rows, uint32_t cols,
		       struct dp_gpu_weight *ret_w)
{
	if (!g || !data || (scaled(dtype) && !scale) || !ret_w)
		return -EINVAL;
	if (g->kind != DP_GPU_CPU) {
		snprintf(g->why, sizeof(g->why),
			 "the %s backend cannot compute on host memory in place: upload the "
			 "weight (dp_gpu_weight_upload_as) instead of wrapping it",
			 dp_gpu_kind_name(g->kind));
		return -ENOTSUP;
	}
	int ret = check_as(g, dtype, scale_dtype, count, rows, cols);
	if (ret < 0)
		return ret;
	ret = check_codes(dtype, data, count * matrix_bytes(dtype, rows, cols), scale_dtype, scale,
			  count * dp_gpu_weight_scales(dtype, rows, cols));
	if (ret < 0)
		return ret;
	/* the ops never write a weight: casting const away is the interface's
	 * (struct dp_gpu_weight.data is not const for the backends that fill) */
	*ret_w = (struct dp_gpu_weight){ .data = (void *)(uintptr_t)data,
					 .dtype = dtype,
					 .count = count,
					 .rows = rows,
					 .cols = cols,
					 .scale = scaled(dtype) ? (void *)(uintptr_t)scale : NULL,
					 .scale_dtype = scaled(dtype) ? scale_dtype : DP_DTYPE_F32,
					 .borrowed = true };
	return 0;
}
