/* SPDX-License-Identifier: MIT */
/*
 * The cuda backend: lifecycle, memory, streams, workspaces and the op table.
 *
 * Streams. Every op, upload, download, copy and zero is issued on one
 * compute stream, so they run in issue order as gpu.h promises. A second,
 * copy stream is created for the prefetch path's host-to-device copies; the
 * interface has no asynchronous copy call yet, so it is idle for now (an
 * async upload would record an event on it that the compute stream waits on).
 *
 * Memory. Allocations come from a memory pool of the backend's own
 * (cudaMallocFromPoolAsync on the compute stream), so freeing scratch in the
 * middle of a forward neither synchronizes the device nor races the kernels
 * still reading it: frees are stream-ordered too. Out of memory is an error
 * (NULL / -ENOMEM) whose message, with the figures, is kept in the backend
 * (struct dp_gpu_cuda.err); the process never aborts.
 *
 * Host transfers. dp_gpu_upload and dp_gpu_download return when the host
 * buffer may be reused or read: both wait for the compute stream. (Uploads
 * of the forward's ids and positions happen while the stream is idle; the
 * KV cache's page uploads are what a later async copy call will take over.)
 *
 * Weights are bf16 (fp32 accumulation everywhere) unless DP_CUDA_WEIGHTS=f32
 * is in the environment when the backend is created; DP_CUDA_BF16_SPLIT=0
 * makes bf16 GEMMs round the activations to bf16 (one tensor-core product)
 * instead of splitting them into hi + lo bf16 halves (two products, about
 * 16 bits of activation mantissa).
 */
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "gpu/cuda/cuda-internal.cuh"

/* cuBLAS workspace (set explicitly so it is stream-ordered and capturable). */
#define CU_BLAS_WS_BYTES (32u << 20)

int dp_cuda_fail(struct dp_gpu_cuda *c, cudaError_t e, const char *what)
{
	snprintf(c->err, sizeof(c->err), "%s: %s", what, cudaGetErrorString(e));
	return e == cudaErrorMemoryAllocation ? -ENOMEM : -EIO;
}

int dp_cuda_blas_fail(struct dp_gpu_cuda *c, cublasStatus_t s, const char *what)
{
	snprintf(c->err, sizeof(c->err), "%s: cuBLAS status %d", what, (int)s);
	return s == CUBLAS_STATUS_ALLOC_FAILED ? -ENOMEM : -EIO;
}

int dp_cuda_enter(struct dp_gpu_cuda *c)
{
	int cur = -1;
	if (cudaGetDevice(&cur) == cudaSuccess && cur == c->device)
		return 0;
	cudaError_t e = cudaSetDevice(c->device);
	return e == cudaSuccess ? 0 : dp_cuda_fail(c, e, "cudaSetDevice");
}

int dp_cuda_launched(struct dp_gpu_cuda *c, const char *what)
{
	cudaError_t e = cudaGetLastError();
	return e == cudaSuccess ? 0 : dp_cuda_fail(c, e, what);
}

int dp_cuda_smem_optin(struct dp_gpu_cuda *c, const void *fn, size_t want, const char *what)
{
	cudaFuncAttributes fa;
	cudaError_t e = cudaFuncGetAttributes(&fa, fn);
	if (e != cudaSuccess)
		return dp_cuda_fail(c, e, what);
	size_t cap = c->smem_optin > fa.sharedSizeBytes ? c->smem_optin - fa.sharedSizeBytes : 0;
	e = cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize,
	                         (int)(want < cap ? want : cap));
	return e == cudaSuccess ? 0 : dp_cuda_fail(c, e, what);
}

static void account(struct dp_gpu_cuda *c, enum dp_gpu_mem_class cls, size_t bytes, bool add)
{
	struct dp_gpu *g = &c->g;
	if (add) {
		g->bytes[cls] += bytes;
	} else {
		g->bytes[cls] -= bytes <= g->bytes[cls] ? bytes : g->bytes[cls];
		return;
	}
	uint64_t total = 0;
	for (int k = 0; k < DP_GPU_MEM_CLASS_MAX; k++)
		total += g->bytes[k];
	if (total > g->peak)
		g->peak = total;
}

static void device_mem(const struct dp_gpu *g, uint64_t *total, uint64_t *free_bytes)
{
	const struct dp_gpu_cuda *c = (const struct dp_gpu_cuda *)g;
	size_t f = 0, t = 0;
	*total = *free_bytes = 0;
	if (cudaSetDevice(c->device) != cudaSuccess || cudaMemGetInfo(&f, &t) != cudaSuccess) {
		cudaGetLastError();
		return;
	}
	/* memory the pool holds but has not handed out is free to us too */
	uint64_t reserved = 0, used = 0;
	if (cudaMemPoolGetAttribute(c->pool, cudaMemPoolAttrReservedMemCurrent, &reserved) ==
	        cudaSuccess &&
	    cudaMemPoolGetAttribute(c->pool, cudaMemPoolAttrUsedMemCurrent, &used) == cudaSuccess &&
	    reserved > used)
		f += reserved - used;
	*total = t;
	*free_bytes = f;
}

void *dp_cuda_alloc_raw(struct dp_gpu_cuda *c, size_t bytes)
{
	void *p = NULL;
	if (dp_cuda_enter(c) < 0)
		return NULL;
	cudaError_t e = cudaMallocFromPoolAsync(&p, bytes, c->pool, c->stream);
	if (e == cudaErrorMemoryAllocation) {
		/* give back what the pool keeps cached, then try once more */
		cudaGetLastError();
		cudaStreamSynchronize(c->stream);
		cudaMemPoolTrimTo(c->pool, 0);
		e = cudaMallocFromPoolAsync(&p, bytes, c->pool, c->stream);
	}
	if (e != cudaSuccess) {
		cudaGetLastError();
		uint64_t total = 0, free_bytes = 0;
		device_mem(&c->g, &total, &free_bytes);
		snprintf(c->err, sizeof(c->err),
		         "out of device memory: %zu bytes requested, %llu of %llu bytes free (%s)",
		         bytes, (unsigned long long)free_bytes, (unsigned long long)total,
		         cudaGetErrorString(e));
		return NULL;
	}
	return p;
}

void dp_cuda_free_raw(struct dp_gpu_cuda *c, void *p)
{
	if (p && dp_cuda_enter(c) == 0)
		cudaFreeAsync(p, c->stream);
}

void *dp_cuda_ws(struct dp_gpu_cuda *c, enum cu_ws_kind kind, size_t bytes)
{
	struct dp_cuda_ws *w = &c->ws[kind];
	if (bytes <= w->bytes)
		return w->p;
	size_t want = w->bytes ? w->bytes : (1u << 20);
	while (want < bytes)
		want *= 2;
	void *p = dp_cuda_alloc_raw(c, want);
	if (!p) {
		want = bytes; /* no headroom: exactly what is asked */
		p = dp_cuda_alloc_raw(c, want);
		if (!p)
			return NULL;
	}
	if (w->p) {
		dp_cuda_free_raw(c, w->p);
		account(c, DP_GPU_MEM_SCRATCH, w->bytes, false);
	}
	w->p = p;
	w->bytes = want;
	account(c, DP_GPU_MEM_SCRATCH, want, true);
	return p;
}

void *dp_cuda_host(struct dp_gpu_cuda *c, size_t bytes)
{
	if (bytes <= c->host_bytes)
		return c->host;
	size_t want = c->host_bytes ? c->host_bytes : 4096;
	while (want < bytes)
		want *= 2;
	void *p = NULL;
	cudaError_t e = cudaMallocHost(&p, want);
	if (e != cudaSuccess) {
		dp_cuda_fail(c, e, "cudaMallocHost");
		return NULL;
	}
	if (c->host)
		cudaFreeHost(c->host);
	c->host = p;
	c->host_bytes = want;
	return p;
}

/* ---- the backend's memory hooks ------------------------------------------- */

static void *be_alloc(struct dp_gpu *g, size_t bytes)
{
	struct dp_gpu_cuda *c = cu_of(g);
	void *p = dp_cuda_alloc_raw(c, bytes);
	if (!p)
		return NULL;
	cudaError_t e = cudaMemsetAsync(p, 0, bytes, c->stream); /* zeroed, as promised */
	if (e != cudaSuccess) {
		dp_cuda_fail(c, e, "cudaMemsetAsync");
		dp_cuda_free_raw(c, p);
		return NULL;
	}
	return p;
}

static void be_dealloc(struct dp_gpu *g, void *p, size_t bytes)
{
	(void)bytes;
	dp_cuda_free_raw(cu_of(g), p);
}

/* Page-locked host memory: the DMA engines copy it without a bounce. */
static void *be_host_alloc(struct dp_gpu *g, size_t bytes)
{
	struct dp_gpu_cuda *c = cu_of(g);
	void *p = NULL;
	/* portable: pinned for every context, whichever device this thread
	 * has current (the KV cache may allocate from its own threads) */
	if (dp_cuda_enter(c) < 0)
		return NULL;
	cudaError_t e = cudaHostAlloc(&p, bytes, cudaHostAllocPortable);
	if (e != cudaSuccess) {
		dp_cuda_fail(c, e, "cudaHostAlloc");
		return NULL;
	}
	memset(p, 0, bytes);
	return p;
}

static void be_host_free(struct dp_gpu *g, void *p, size_t bytes)
{
	(void)g;
	(void)bytes;
	cudaFreeHost(p);
}

static bool overlaps(const void *a, const void *b, size_t n)
{
	uintptr_t x = (uintptr_t)a, y = (uintptr_t)b;
	return x < y + n && y < x + n;
}

static int memcpy_sync(struct dp_gpu_cuda *c, void *dst, const void *src, size_t bytes,
                       const char *what)
{
	if (bytes == 0)
		return 0;
	if (!dst || !src)
		return -EINVAL;
	int ret = dp_cuda_enter(c);
	if (ret < 0)
		return ret;
	cudaError_t e = cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, c->stream);
	if (e == cudaSuccess)
		e = cudaStreamSynchronize(c->stream);
	return e == cudaSuccess ? 0 : dp_cuda_fail(c, e, what);
}

static int be_upload(struct dp_gpu *g, void *dst, const void *src, size_t bytes)
{
	return memcpy_sync(cu_of(g), dst, src, bytes, "upload");
}

static int be_download(struct dp_gpu *g, void *dst, const void *src, size_t bytes)
{
	return memcpy_sync(cu_of(g), dst, src, bytes, "download");
}

/* Device to device, in stream order; overlapping ranges go through the op
 * workspace (the cpu backend's copy is a memmove). */
static int be_copy(struct dp_gpu *g, void *dst, const void *src, size_t bytes)
{
	struct dp_gpu_cuda *c = cu_of(g);
	if (bytes == 0 || dst == src)
		return 0;
	if (!dst || !src)
		return -EINVAL;
	int ret = dp_cuda_enter(c);
	if (ret < 0)
		return ret;
	cudaError_t e;
	if (overlaps(dst, src, bytes)) {
		void *tmp = dp_cuda_ws(c, CU_WS_OP, bytes);
		if (!tmp)
			return -ENOMEM;
		e = cudaMemcpyAsync(tmp, src, bytes, cudaMemcpyDefault, c->stream);
		if (e == cudaSuccess)
			e = cudaMemcpyAsync(dst, tmp, bytes, cudaMemcpyDefault, c->stream);
	} else {
		e = cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, c->stream);
	}
	return e == cudaSuccess ? 0 : dp_cuda_fail(c, e, "copy");
}

static int be_zero(struct dp_gpu *g, void *dst, size_t bytes)
{
	struct dp_gpu_cuda *c = cu_of(g);
	if (bytes == 0)
		return 0;
	if (!dst)
		return -EINVAL;
	int ret = dp_cuda_enter(c);
	if (ret < 0)
		return ret;
	cudaError_t e = cudaMemsetAsync(dst, 0, bytes, c->stream);
	return e == cudaSuccess ? 0 : dp_cuda_fail(c, e, "zero");
}

static int be_sync(struct dp_gpu *g)
{
	struct dp_gpu_cuda *c = cu_of(g);
	int ret = dp_cuda_enter(c);
	if (ret < 0)
		return ret;
	cudaError_t e = cudaStreamSynchronize(c->stream);
	if (e == cudaSuccess)
		e = cudaStreamSynchronize(c->copy);
	return e == cudaSuccess ? 0 : dp_cuda_fail(c, e, "sync");
}

static void be_destroy(struct dp_gpu *g)
{
	struct dp_gpu_cuda *c = cu_of(g);
	cudaSetDevice(c->device);
	if (c->stream)
		cudaStreamSynchronize(c->stream);
	if (c->blas)
		cublasDestroy(c->blas); /* before its workspace goes */
	if (c->stream) {
		for (int k = 0; k < CU_WS_KIND_MAX; k++)
			if (c->ws[k].p)
				cudaFreeAsync(c->ws[k].p, c->stream);
		if (c->blas_ws)
			cudaFreeAsync(c->blas_ws, c->stream);
		cudaStreamSynchronize(c->stream);
	}
	if (c->stream)
		cudaStreamDestroy(c->stream);
	if (c->copy)
		cudaStreamDestroy(c->copy);
	if (c->pool)
		cudaMemPoolDestroy(c->pool); /* released once the last allocation is freed */
	if (c->host)
		cudaFreeHost(c->host);
	cudaGetLastError();
	free(c);
}

static const char *be_last_error(const struct dp_gpu *g)
{
	return ((const struct dp_gpu_cuda *)g)->err;
}

#define BACKEND(name, dtype)                                                                       \
	static const struct dp_gpu_backend name = {                                                \
	    .weight_dtype = dtype,                                                                 \
	    .destroy = be_destroy,                                                                 \
	    .alloc = be_alloc,                                                                     \
	    .dealloc = be_dealloc,                                                                 \
	    .upload = be_upload,                                                                   \
	    .download = be_download,                                                               \
	    .copy = be_copy,                                                                       \
	    .zero = be_zero,                                                                       \
	    .sync = be_sync,                                                                       \
	    .device_mem = device_mem,                                                              \
	    .host_alloc = be_host_alloc,                                                           \
	    .host_free = be_host_free,                                                             \
	    .last_error = be_last_error,                                                           \
	}
BACKEND(backend_bf16, DP_DTYPE_BF16);
BACKEND(backend_f32, DP_DTYPE_F32);

static const struct dp_gpu_ops cuda_ops = {
    .matmul = dp_cuda_op_matmul,
    .embed = dp_cuda_op_embed,
    .rmsnorm = dp_cuda_op_rmsnorm,
    .rope = dp_cuda_op_rope,
    .hc_expand = dp_cuda_op_hc_expand,
    .mhc_pre = dp_cuda_op_mhc_pre,
    .mhc_post = dp_cuda_op_mhc_post,
    .hc_head = dp_cuda_op_hc_head,
    .route = dp_cuda_op_route,
    .moe = dp_cuda_op_moe,
    .swiglu = dp_cuda_op_swiglu,
    .add = dp_cuda_op_add,
    .attention = dp_cuda_op_attention,
    .compress = dp_cuda_op_compress,
    .index_topk = dp_cuda_op_index_topk,
    .gather_rows = dp_cuda_op_gather_rows,
    .engram_fuse = dp_cuda_op_engram_fuse,
    .round = nullptr, /* no reference numerics on cuda (refused at load) */
};

static int new_fail(struct dp_gpu_cuda *c, int ret, char *err, size_t err_len)
{
	if (err && err_len)
		snprintf(err, err_len, "%s", c->err);
	be_destroy(&c->g);
	return ret;
}

/* DP_CUDA_WEIGHTS: "bf16" (default) or "f32". */
static int weight_dtype_from_env(enum dp_dtype *ret, char *err, size_t err_len)
{
	const char *v = getenv("DP_CUDA_WEIGHTS");
	if (!v || !*v || !strcmp(v, "bf16")) {
		*ret = DP_DTYPE_BF16;
		return 0;
	}
	if (!strcmp(v, "f32") || !strcmp(v, "fp32")) {
		*ret = DP_DTYPE_F32;
		return 0;
	}
	if (err && err_len)
		snprintf(err, err_len, "DP_CUDA_WEIGHTS must be bf16 or f32, not %s", v);
	return -EINVAL;
}

extern "C" int dp_gpu_cuda_new(const struct dp_gpu_opts *opts, struct dp_gpu **ret, char *err,
                               size_t err_len)
{
	enum dp_dtype wdt;
	int ret_code = weight_dtype_from_env(&wdt, err, err_len);
	if (ret_code < 0)
		return ret_code;

	int n = 0;
	cudaError_t e = cudaGetDeviceCount(&n);
	if (e != cudaSuccess || n == 0) {
		cudaGetLastError();
		if (err && err_len)
			snprintf(err, err_len, "no usable CUDA device: %s",
			         e != cudaSuccess ? cudaGetErrorString(e)
			                          : "the driver reports none");
		return -ENODEV;
	}
	if (opts->device < 0 || opts->device >= n) {
		if (err && err_len)
			snprintf(err, err_len, "CUDA device %d does not exist (%d present)",
			         opts->device, n);
		return -ENODEV;
	}

	struct dp_gpu_cuda *c = (struct dp_gpu_cuda *)calloc(1, sizeof(*c));
	if (!c) {
		if (err && err_len)
			snprintf(err, err_len, "out of memory creating the cuda backend");
		return -ENOMEM;
	}
	c->g.kind = DP_GPU_CUDA;
	c->g.be = wdt == DP_DTYPE_F32 ? &backend_f32 : &backend_bf16;
	c->g.ops = &cuda_ops;
	c->device = opts->device;
	const char *split = getenv("DP_CUDA_BF16_SPLIT");
	c->bf16_split = !(split && !strcmp(split, "0"));

	if ((e = cudaSetDevice(c->device)) != cudaSuccess)
		return new_fail(c, dp_cuda_fail(c, e, "cudaSetDevice"), err, err_len);
	cudaDeviceProp prop;
	if ((e = cudaGetDeviceProperties(&prop, c->device)) != cudaSuccess)
		return new_fail(c, dp_cuda_fail(c, e, "cudaGetDeviceProperties"), err, err_len);
	if (prop.major < 8) {
		snprintf(c->err, sizeof(c->err),
		         "%.96s has compute capability %d.%d; bf16 kernels need 8.0+", prop.name,
		         prop.major, prop.minor);
		return new_fail(c, -ENOTSUP, err, err_len);
	}
	c->sm_count = prop.multiProcessorCount;
	c->smem_optin = prop.sharedMemPerBlockOptin;

	if ((e = cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking)) != cudaSuccess ||
	    (e = cudaStreamCreateWithFlags(&c->copy, cudaStreamNonBlocking)) != cudaSuccess)
		return new_fail(c, dp_cuda_fail(c, e, "cudaStreamCreate"), err, err_len);

	cudaMemPoolProps pp;
	memset(&pp, 0, sizeof(pp));
	pp.allocType = cudaMemAllocationTypePinned;
	pp.handleTypes = cudaMemHandleTypeNone;
	pp.location.type = cudaMemLocationTypeDevice;
	pp.location.id = c->device;
	if ((e = cudaMemPoolCreate(&c->pool, &pp)) != cudaSuccess)
		return new_fail(c, dp_cuda_fail(c, e, "cudaMemPoolCreate"), err, err_len);
	/* keep freed memory in the pool: scratch regrows and state pages come
	 * and go without a trip to the driver (dp_cuda_alloc_raw trims on failure) */
	uint64_t keep = UINT64_MAX;
	if ((e = cudaMemPoolSetAttribute(c->pool, cudaMemPoolAttrReleaseThreshold, &keep)) !=
	    cudaSuccess)
		return new_fail(c, dp_cuda_fail(c, e, "cudaMemPoolSetAttribute"), err, err_len);

	cublasStatus_t bs = cublasCreate(&c->blas);
	if (bs != CUBLAS_STATUS_SUCCESS) {
		c->blas = NULL;
		return new_fail(c, dp_cuda_blas_fail(c, bs, "cublasCreate"), err, err_len);
	}
	c->blas_ws = dp_cuda_alloc_raw(c, CU_BLAS_WS_BYTES);
	if (!c->blas_ws)
		return new_fail(c, -ENOMEM, err, err_len);
	c->blas_ws_bytes = CU_BLAS_WS_BYTES;
	account(c, DP_GPU_MEM_SCRATCH, CU_BLAS_WS_BYTES, true);
	/* CUBLAS_DEFAULT_MATH: fp32 products stay fp32 (no TF32) */
	if ((bs = cublasSetStream(c->blas, c->stream)) != CUBLAS_STATUS_SUCCESS ||
	    (bs = cublasSetWorkspace(c->blas, c->blas_ws, c->blas_ws_bytes)) !=
	        CUBLAS_STATUS_SUCCESS ||
	    (bs = cublasSetMathMode(c->blas, CUBLAS_DEFAULT_MATH)) != CUBLAS_STATUS_SUCCESS ||
	    (bs = cublasSetPointerMode(c->blas, CUBLAS_POINTER_MODE_HOST)) != CUBLAS_STATUS_SUCCESS)
		return new_fail(c, dp_cuda_blas_fail(c, bs, "cuBLAS set-up"), err, err_len);

	int r;
	if ((r = dp_cuda_attn_init(c)) < 0 || (r = dp_cuda_index_init(c)) < 0)
		return new_fail(c, r, err, err_len);
	if ((e = cudaStreamSynchronize(c->stream)) != cudaSuccess)
		return new_fail(c, dp_cuda_fail(c, e, "cudaStreamSynchronize"), err, err_len);
	*ret = &c->g;
	return 0;
}
