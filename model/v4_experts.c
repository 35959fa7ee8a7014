/* SPDX-License-Identifier: MIT */
/*
 * Routed experts paged in and out of backend memory (model/v4.h, "routed
 * experts paged in").
 *
 * Each layer keeps S slots: its gate_up and down weights hold S matrices,
 * and a map slot_of[E] (host, mirrored to backend memory for the moe op's
 * paged stack) says which slot holds which expert. An expert comes in from
 * the host copy (DRAM) or from the checkpoint's files (NVME: three reads, one
 * per matrix, each a 4 KiB-aligned window around the tensor's bytes, into the
 * slot's staging; then converted into the slot).
 *
 * A layer's step: the router's picks come to the host; their distinct
 * experts, ascending, are taken in order: resident ones are pinned, missing
 * ones get a slot (evicting an unpinned one) until no slot is left: that is
 * a pass. Its reads are waited for, its slots filled, slot_of uploaded and
 * the moe op runs on the picks within the pass's expert range (the others
 * masked to -1). Experts the loader kept as stored (FP4, FP8, BF16 on the
 * cpu backend) page as those bytes: a slot of the stored dtype, filled with
 * dp_gpu_weight_fill_blocks from the codes read and the scales kept in host
 * memory; others are converted into the backend's dtype as they come in. The moe op adds each token's experts in ascending order, so
 * passes of ascending ranges add them in the same order as one call over
 * resident experts: the result is bitwise the same.
 *
 * Replacement is CLOCK over the slots not pinned by the pass at hand,
 * sparing experts a later pass of the same step needs.
 *
 * Hash-routed layers: the experts come from tid2eid[token], known when the
 * step's tokens are; dp_v4_experts_step reads their misses ahead into each
 * hash layer's own staging (pending slots, filled when the layer runs).
 * Top-k layers (NVME, lookahead): layer l's router on layer l-1's MoE input
 * guesses layer l's picks; the guessed misses are read ahead, queued behind
 * layer l-1's own misses, into one of two staging areas that alternate by
 * layer (layer l-1's pending reads use the other). Guesses the router did
 * not make are filled anyway when layer l runs (they stay cached) and
 * counted as ahead_unused.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#include "base/clock.h"
#include "model/safetensors.h"
#include "model/v4-internal.h"
#include "model/weights.h"

#define XP_ALIGN 4096u
#define XP_PARTS 3 /* gate, up (rows I.. of gate_up), down */
#define XP_READ_MAX (1u << 30) /* the most one expert read asks for */

struct xp_loc {
	uint32_t file;
	uint64_t offset, bytes;
	enum dp_dtype dtype;
	uint64_t sum; /* NVME: xxh3 of the bytes at load, checked after each read */
};

struct xp_pending {
	bool on;
	char *stage; /* XP_PARTS windows */
	uint64_t ticket[XP_PARTS];
};

struct xp_layer {
	int32_t *slot_of;   /* [E] host: slot or -1 */
	int32_t *slot_dev;  /* [E] backend mirror */
	int32_t *expert_of; /* [S]: expert or -1 */
	uint8_t *ref;	    /* [S] CLOCK bits */
	uint32_t *pin;	    /* [S] stamp of the pass (or read-ahead) that holds it */
	struct xp_pending *pend; /* [S] */
	uint32_t hand;
	bool dirty;	     /* slot_of changed since the upload */
	char *ahead;	     /* hash layers, NVME: read-ahead staging, S experts */
	int32_t *tid2eid;    /* hash layers: [V][k] host copy */
};

struct dp_v4_experts {
	enum dp_v4_experts_where where;
	uint32_t E, k, S, L, I, D, V;
	struct xp_loc *loc; /* [L][E][XP_PARTS] */
	char *host;	    /* DRAM: every part's bytes, at hoff */
	size_t host_bytes;
	uint64_t *hoff;	    /* [L][E][XP_PARTS] */
	char **files;
	uint32_t n_files;
	int *fds;	    /* built-in reader */
	struct dp_v4_expert_io io;
	bool io_set;
	size_t win;	    /* staging bytes per part window */
	char *stage;	    /* NVME: on-demand staging, S experts */
	size_t stage_bytes; /* of one staging area */
	void *conv;	    /* host buffer for dtype conversion (kept: gate|up codes) */
	size_t conv_bytes;
	/* experts kept as stored (the layer's experts_kept): every matrix's
	 * scales, held in host memory from load (a few % of the codes), so a
	 * page-in reads only the codes; an expert's gate and up scales adjoin,
	 * as its gate_up slot wants them */
	char *scales;
	uint64_t *soff;	    /* [L][E][XP_PARTS] into scales */
	size_t scales_bytes;
	int32_t *idx_h;	    /* a layer's picks, host */
	int32_t *idx_mask;  /* one pass's picks, host */
	int32_t *idx_dev;   /* one pass's picks, backend */
	size_t idx_cap;	    /* of both, in picks */
	uint8_t *used;	    /* [E] */
	/* lookahead routing (NVME): two staging areas, layers alternate, so a
	 * layer's guesses land while the layer before it settles its own */
	bool lookahead;
	char *la_area[2];
	uint8_t *la_used;   /* [E] */
	float *la_logits, *la_w; /* backend: [T][E], [T][k] */
	int32_t *la_idx;    /* backend: [T][k] */
	int32_t *la_h;	    /* host: [T][k] */
	size_t la_cap;	    /* tokens */
	uint32_t *uni;	    /* [E] */
	uint32_t stamp;
	struct xp_layer *lay;
	struct dp_v4_expert_stats st;
};

static const char *const where_names[DP_V4_EXPERTS_WHERE_MAX] = {
	[DP_V4_EXPERTS_DEVICE] = "device",
	[DP_V4_EXPERTS_DRAM] = "dram",
	[DP_V4_EXPERTS_NVME] = "nvme",
};

const char *dp_v4_experts_where_name(enum dp_v4_experts_where w)
{
	return (unsigned)w < DP_V4_EXPERTS_WHERE_MAX ? where_names[w] : NULL;
}

int dp_v4_experts_where_parse(const char *s, enum dp_v4_experts_where *ret)
{
	for (int i = 0; s && ret && i < DP_V4_EXPERTS_WHERE_MAX; i++)
		if (!strcmp(s, where_names[i])) {
			*ret = (enum dp_v4_experts_where)i;
			return 0;
		}
	return -EINVAL;
}

/* ---- the built-in reader: pread on the calling thread ------------------------- */

/* The ticket is the result: bytes read, or the errno with the top bit set. */
#define XP_TICKET_ERR (1ull << 63)

static int builtin_read(void *ctx, uint32_t file, uint64_t offset, uint32_t len, void *dst,
			uint32_t layer, bool urgent, uint64_t *ret_ticket)
{
	struct dp_v4_experts *x = ctx;
	(void)layer, (void)urgent; /* read here and now */
	if (file >= x->n_files)
		return -EBADF;
	uint32_t got = 0;
	while (got < len) {
		ssize_t r = pread(x->fds[file], (char *)dst + got, len - got, (off_t)(offset + got));
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			*ret_ticket = XP_TICKET_ERR | (uint64_t)errno;
			return 0;
		}
		if (r == 0)
			break; /* the end of the file */
		got += (uint32_t)r;
	}
	*ret_ticket = got;
	return 0;
}

static int builtin_wait(void *ctx, uint64_t ticket, uint32_t need)
{
	(void)ctx;
	if (ticket & XP_TICKET_ERR)
		return -(int)(ticket & ~XP_TICKET_ERR);
	return ticket >= need ? 0 : -EIO;
}

static int open_files(struct dp_v4_experts *x, char *err, size_t err_len)
{
	x->fds = malloc(x->n_files * sizeof(int));
	if (!x->fds)
		return -ENOMEM;
	for (uint32_t i = 0; i < x->n_files; i++)
		x->fds[i] = -1;
	for (uint32_t i = 0; i < x->n_files; i++) {
		int fd = open(x->files[i], O_RDONLY | O_CLOEXEC | O_DIRECT);
		if (fd < 0 && errno == EINVAL) /* a file system without direct I/O */
			fd = open(x->files[i], O_RDONLY | O_CLOEXEC);
		if (fd < 0) {
			int e = errno;
			if (err && err_len)
				snprintf(err, err_len, "%s: cannot open it to page experts from: %s",
					 x->files[i], strerror(e));
			return -e;
		}
		x->fds[i] = fd;
	}
	return 0;
}

/* ---- load ---------------------------------------------------------------------------- */

static int dtype_of(enum dp_st_dtype t, enum dp_dtype *ret)
{
	switch (t) {
	case DP_ST_F32: *ret = DP_DTYPE_F32; return 0;
	case DP_ST_BF16: *ret = DP_DTYPE_BF16; return 0;
	case DP_ST_F16: *ret = DP_DTYPE_F16; return 0;
	default: return -ENOTSUP;
	}
}

static int file_index(struct dp_v4_experts *x, const char *path, uint32_t *ret)
{
	for (uint32_t i = 0; i < x->n_files; i++)
		if (!strcmp(x->files[i], path)) {
			*ret = i;
			return 0;
		}
	char **p = realloc(x->files, (x->n_files + 1) * sizeof(*p));
	if (!p)
		return -ENOMEM;
	x->files = p;
	if (!(p[x->n_files] = strdup(path)))
		return -ENOMEM;
	*ret = x->n_files++;
	return 0;
}

static size_t window_of(const struct xp_loc *lc)
{
	uint64_t a = lc->offset & ~(uint64_t)(XP_ALIGN - 1);
	uint64_t b = (lc->offset + lc->bytes + XP_ALIGN - 1) & ~(uint64_t)(XP_ALIGN - 1);
	return (size_t)(b - a);
}

static void *zalloc_n(size_t n, size_t size)
{
	return calloc(n ? n : 1, size);
}

/* Bytes one stored matrix of w takes, scales included. */
static uint64_t slot_bytes(const struct dp_gpu_weight *w)
{
	size_t ns = dp_gpu_weight_scales(w->dtype, w->rows, w->cols);
	return dp_dtype_bytes(w->dtype, (size_t)w->rows * w->cols) +
	       (ns ? ns * dp_dtype_size(w->scale_dtype) : 0);
}

static int layer_init(struct dp_v4_model *m, struct dp_v4_experts *x, uint32_t l)
{
	struct xp_layer *y = &x->lay[l];
	struct dp_gpu *g = m->g;

	y->slot_of = malloc(x->E * sizeof(int32_t));
	y->expert_of = malloc(x->S * sizeof(int32_t));
	y->ref = zalloc_n(x->S, 1);
	y->pin = zalloc_n(x->S, sizeof(uint32_t));
	y->pend = zalloc_n(x->S, sizeof(struct xp_pending));
	y->slot_dev = dp_gpu_alloc(g, x->E * sizeof(int32_t), DP_GPU_MEM_WEIGHTS);
	if (!y->slot_of || !y->expert_of || !y->ref || !y->pin || !y->pend || !y->slot_dev)
		return -ENOMEM;
	for (uint32_t e = 0; e < x->E; e++)
		y->slot_of[e] = -1;
	for (uint32_t s = 0; s < x->S; s++)
		y->expert_of[s] = -1;
	y->dirty = true;
	if (dp_v4_is_hash_moe(&m->cfg, (int)l)) {
		size_t n = (size_t)x->V * x->k;
		y->tid2eid = malloc(n * sizeof(int32_t));
		if (!y->tid2eid)
			return -ENOMEM;
		int r = dp_gpu_download(g, y->tid2eid, m->layers[l].tid2eid, n * sizeof(int32_t));
		if (r < 0)
			return r;
		if (x->where == DP_V4_EXPERTS_NVME &&
		    !(y->ahead = dp_gpu_host_alloc(g, x->stage_bytes)))
			return -ENOMEM;
	}
	return 0;
}

int dp_v4_experts_init(struct dp_v4_model *m, const struct dp_v4_weights *w, char *err,
		       size_t err_len)
{
	const struct dp_v4_config *c = &m->cfg;
	struct dp_v4_experts *x = calloc(1, sizeof(*x));
	int r = -ENOMEM;

	if (!x)
		return -ENOMEM;
	m->experts = x;
	x->where = m->load_opts.experts;
	x->E = (uint32_t)c->n_routed_experts;
	x->k = (uint32_t)c->num_experts_per_tok;
	x->S = m->load_opts.expert_slots;
	x->L = (uint32_t)c->num_hidden_layers;
	x->I = (uint32_t)c->moe_intermediate_size;
	x->D = (uint32_t)c->hidden_size;
	x->V = (uint32_t)c->vocab_size;
	size_t n_loc = (size_t)x->L * x->E * XP_PARTS;
	x->loc = zalloc_n(n_loc, sizeof(*x->loc));
	x->hoff = zalloc_n(n_loc, sizeof(*x->hoff));
	x->soff = zalloc_n(n_loc, sizeof(*x->soff));
	x->lay = zalloc_n(x->L, sizeof(*x->lay));
	x->used = zalloc_n(x->E, 1);
	x->uni = zalloc_n(x->E, sizeof(uint32_t));
	if (!x->loc || !x->hoff || !x->soff || !x->lay || !x->used || !x->uni)
		goto fail;

	/* where each matrix is, and how much a host copy takes */
	static const enum dp_v4_expert_part parts[XP_PARTS] = {
		DP_V4_EXPERT_GATE, DP_V4_EXPERT_UP, DP_V4_EXPERT_DOWN };
	size_t total = 0;
	for (uint32_t l = 0; l < x->L; l++)
		for (uint32_t e = 0; e < x->E; e++)
			for (int p = 0; p < XP_PARTS; p++) {
				struct dp_st_tensor t;
				struct xp_loc *lc = &x->loc[((size_t)l * x->E + e) * XP_PARTS + p];
				if ((r = dp_v4_weights_expert(w, (int)l, (int)e, parts[p], &t)) < 0)
					goto fail;
				if (m->layers[l].experts_kept) {
					struct dp_st_tensor sc;
					const struct dp_gpu_weight *kw =
						p == 2 ? &m->layers[l].down : &m->layers[l].gate_up;
					lc->dtype = kw->dtype;
					x->soff[((size_t)l * x->E + e) * XP_PARTS + p] = x->scales_bytes;
					if (dp_v4_weights_scale(w, &t, &sc) == 0)
						x->scales_bytes += sc.bytes;
				} else if ((r = dtype_of(t.dtype, &lc->dtype)) < 0) {
					if (err && err_len)
						snprintf(err, err_len, "%s: %s: experts of dtype %s "
							 "cannot be paged", t.file, t.name,
							 dp_st_dtype_name(t.dtype));
					goto fail;
				}
				lc->offset = t.offset;
				lc->bytes = t.bytes;
				if (x->where == DP_V4_EXPERTS_NVME) { /* what a read must bring back */
					lc->sum = XXH3_64bits(t.data, t.bytes);
					/* read by the io thread from now on, never through
					 * the mapping: out of the process's RSS */
					(void)dp_st_release(&t, 0, t.bytes);
				}
				if ((r = file_index(x, t.file, &lc->file)) < 0)
					goto fail;
				x->hoff[((size_t)l * x->E + e) * XP_PARTS + p] = total;
				total += (t.bytes + 63) & ~(size_t)63;
				size_t wn = window_of(lc);
				if (wn > XP_READ_MAX) {
					r = -E2BIG;
					if (err && err_len)
						snprintf(err, err_len, "%s: %s: an expert matrix of %zu "
							 "bytes is larger than one read can be", t.file,
							 t.name, t.bytes);
					goto fail;
				}
				if (wn > x->win)
					x->win = wn;
			}
	x->stage_bytes = (size_t)x->S * XP_PARTS * x->win;
	if (x->scales_bytes) {
		if (!(x->scales = malloc(x->scales_bytes)))
			goto nomem;
		for (uint32_t l = 0; l < x->L; l++)
			for (uint32_t e = 0; m->layers[l].experts_kept && e < x->E; e++)
				for (int p = 0; p < XP_PARTS; p++) {
					struct dp_st_tensor t, sc;
					size_t i = ((size_t)l * x->E + e) * XP_PARTS + p;
					if ((r = dp_v4_weights_expert(w, (int)l, (int)e, parts[p], &t)) < 0)
						goto fail;
					if (dp_v4_weights_scale(w, &t, &sc) == 0) {
						memcpy(x->scales + x->soff[i], sc.data, sc.bytes);
						(void)dp_st_release(&sc, 0, sc.bytes);
					}
				}
	}

	if (x->where == DP_V4_EXPERTS_DRAM) {
		/* the host copy, from the mapped checkpoint */
		x->host = dp_gpu_host_alloc(m->g, total ? total : 1);
		if (!x->host)
			goto nomem;
		x->host_bytes = total;
		for (uint32_t l = 0; l < x->L; l++)
			for (uint32_t e = 0; e < x->E; e++)
				for (int p = 0; p < XP_PARTS; p++) {
					struct dp_st_tensor t;
					size_t i = ((size_t)l * x->E + e) * XP_PARTS + p;
					if ((r = dp_v4_weights_expert(w, (int)l, (int)e, parts[p], &t)) < 0)
						goto fail;
					memcpy(x->host + x->hoff[i], t.data, t.bytes);
					(void)dp_st_release(&t, 0, t.bytes); /* copied */
				}
	} else {
		if ((r = open_files(x, err, err_len)) < 0)
			goto fail;
		x->io = (struct dp_v4_expert_io){ .read = builtin_read, .wait = builtin_wait,
						  .ctx = x };
		if (!(x->stage = dp_gpu_host_alloc(m->g, x->stage_bytes)))
			goto nomem;
		x->lookahead = !m->load_opts.no_lookahead;
		if (x->lookahead && (!(x->la_used = zalloc_n(x->E, 1)) ||
				     !(x->la_area[0] = dp_gpu_host_alloc(m->g, x->stage_bytes)) ||
				     !(x->la_area[1] = dp_gpu_host_alloc(m->g, x->stage_bytes))))
			goto nomem;
	}
	/* conversion: one matrix of the backend's dtype at a time */
	x->conv_bytes = (size_t)x->I * x->D * sizeof(float);
	for (uint32_t l = 0; l < x->L; l++) /* kept: gate|up codes side by side */
		if (m->layers[l].experts_kept && 2 * x->win > x->conv_bytes)
			x->conv_bytes = 2 * x->win;
	if (!(x->conv = dp_gpu_host_alloc(m->g, x->conv_bytes)))
		goto nomem;
	for (uint32_t l = 0; l < x->L; l++)
		if ((r = layer_init(m, x, l)) < 0) {
			if (r == -ENOMEM)
				goto nomem;
			if (err && err_len)
				snprintf(err, err_len, "paged experts, layer %u: %s", l, strerror(-r));
			goto fail;
		}
	x->st.where = x->where;
	x->st.slots = x->S;
	x->st.cache_bytes = 0;
	for (uint32_t l = 0; l < x->L; l++)
		x->st.cache_bytes += (uint64_t)x->S * (slot_bytes(&m->layers[l].gate_up) +
						       slot_bytes(&m->layers[l].down));
	x->st.host_bytes = x->where == DP_V4_EXPERTS_DRAM ? x->host_bytes : x->stage_bytes;
	x->st.host_bytes += x->scales_bytes;
	for (uint32_t l = 0; l < x->L; l++)
		if (x->lay[l].ahead)
			x->st.host_bytes += x->stage_bytes;
	if (x->lookahead)
		x->st.host_bytes += 2 * x->stage_bytes;
	return 0;
nomem:
	r = -ENOMEM;
	if (err && err_len)
		snprintf(err, err_len, "out of memory for paged experts (%u slots a layer)", x->S);
fail:
	if (r == -ENOMEM && err && err_len && !err[0])
		snprintf(err, err_len, "out of memory for paged experts");
	return r;
}

/* Wait for a pending slot's reads (the staging must not be reused before). */
static int pend_wait(struct dp_v4_experts *x, uint32_t l, uint32_t e, struct xp_pending *pd)
{
	int ret = 0;
	for (int p = 0; p < XP_PARTS; p++) {
		const struct xp_loc *lc = &x->loc[((size_t)l * x->E + e) * XP_PARTS + p];
		uint32_t need = (uint32_t)(lc->offset % XP_ALIGN + lc->bytes);
		int r = x->io.wait(x->io.ctx, pd->ticket[p], need);
		if (r < 0 && ret == 0)
			ret = r;
	}
	pd->on = false;
	return ret;
}

void dp_v4_experts_fini(struct dp_v4_model *m)
{
	struct dp_v4_experts *x = m->experts;
	if (!x)
		return;
	struct dp_gpu *g = m->g;
	for (uint32_t l = 0; x->lay && l < x->L; l++) {
		struct xp_layer *y = &x->lay[l];
		for (uint32_t s = 0; y->pend && s < x->S; s++)
			if (y->pend[s].on && y->expert_of[s] >= 0)
				pend_wait(x, l, (uint32_t)y->expert_of[s], &y->pend[s]);
		free(y->slot_of);
		free(y->expert_of);
		free(y->ref);
		free(y->pin);
		free(y->pend);
		free(y->tid2eid);
		if (y->slot_dev)
			dp_gpu_dealloc(g, y->slot_dev, x->E * sizeof(int32_t), DP_GPU_MEM_WEIGHTS);
		if (y->ahead)
			dp_gpu_host_free(g, y->ahead, x->stage_bytes);
	}
	if (x->host)
		dp_gpu_host_free(g, x->host, x->host_bytes ? x->host_bytes : 1);
	if (x->stage)
		dp_gpu_host_free(g, x->stage, x->stage_bytes);
	for (int i = 0; i < 2; i++)
		if (x->la_area[i])
			dp_gpu_host_free(g, x->la_area[i], x->stage_bytes);
	if (x->la_cap) {
		dp_gpu_dealloc(g, x->la_logits, x->la_cap * x->E * sizeof(float), DP_GPU_MEM_SCRATCH);
		dp_gpu_dealloc(g, x->la_w, x->la_cap * x->k * sizeof(float), DP_GPU_MEM_SCRATCH);
		dp_gpu_dealloc(g, x->la_idx, x->la_cap * x->k * sizeof(int32_t), DP_GPU_MEM_SCRATCH);
	}
	free(x->la_h);
	free(x->la_used);
	if (x->conv)
		dp_gpu_host_free(g, x->conv, x->conv_bytes);
	if (x->idx_dev)
		dp_gpu_dealloc(g, x->idx_dev, x->idx_cap * sizeof(int32_t), DP_GPU_MEM_SCRATCH);
	free(x->idx_h);
	free(x->idx_mask);
	for (uint32_t i = 0; i < x->n_files; i++) {
		if (x->fds && x->fds[i] >= 0)
			close(x->fds[i]);
		free(x->files[i]);
	}
	free(x->fds);
	free(x->files);
	free(x->loc);
	free(x->hoff);
	free(x->soff);
	free(x->scales);
	free(x->lay);
	free(x->used);
	free(x->uni);
	free(x);
	m->experts = NULL;
}

/* ---- public knobs -------------------------------------------------------------------- */

int dp_v4_model_set_expert_io(struct dp_v4_model *m, const struct dp_v4_expert_io *io)
{
	struct dp_v4_experts *x = m ? m->experts : NULL;
	if (!x || x->where != DP_V4_EXPERTS_NVME || (io && (!io->read || !io->wait)))
		return -EINVAL;
	x->io = io ? *io
		   : (struct dp_v4_expert_io){ .read = builtin_read, .wait = builtin_wait, .ctx = x };
	x->io_set = io != NULL;
	return 0;
}

uint32_t dp_v4_model_expert_file_count(const struct dp_v4_model *m)
{
	return m && m->experts && m->experts->where == DP_V4_EXPERTS_NVME ? m->experts->n_files : 0;
}

const char *dp_v4_model_expert_file(const struct dp_v4_model *m, uint32_t i)
{
	return i < dp_v4_model_expert_file_count(m) ? m->experts->files[i] : NULL;
}

void dp_v4_model_expert_stats(const struct dp_v4_model *m, struct dp_v4_expert_stats *ret)
{
	if (!ret)
		return;
	memset(ret, 0, sizeof(*ret));
	if (m && m->experts)
		*ret = m->experts->st;
	else if (m)
		ret->slots = (uint32_t)m->cfg.n_routed_experts;
}

/* ---- the cache -------------------------------------------------------------------------- */

/* A slot for a new expert: CLOCK over the slots not pinned by `stamp` and
 * not waiting for reads, sparing those whose expert the step still needs
 * (x->used[e] == XP_NEEDED: a later pass's hit) unless nothing else is
 * left; -1 when there is none. */
enum { XP_UNUSED, XP_NEEDED, XP_DONE };

static int victim(struct dp_v4_experts *x, struct xp_layer *y, uint32_t stamp,
		  const uint8_t *used)
{
	for (int spare = 1; spare >= 0; spare--)
		for (uint32_t n = 0; n < 2 * x->S; n++) {
			uint32_t s = y->hand;
			y->hand = (y->hand + 1) % x->S;
			int32_t e = y->expert_of[s];
			if (y->pin[s] == stamp || y->pend[s].on ||
			    (spare && e >= 0 && used[e] == XP_NEEDED))
				continue;
			if (e >= 0 && y->ref[s]) {
				y->ref[s] = 0;
				continue;
			}
			return (int)s;
		}
	return -1;
}

static void assign(struct xp_layer *y, uint32_t s, uint32_t e, uint32_t stamp)
{
	if (y->expert_of[s] >= 0)
		y->slot_of[y->expert_of[s]] = -1;
	y->expert_of[s] = (int32_t)e;
	y->slot_of[e] = (int32_t)s;
	y->pin[s] = stamp;
	y->ref[s] = 1;
	y->dirty = true;
}

static void unassign(struct xp_layer *y, uint32_t s)
{
	if (y->expert_of[s] >= 0)
		y->slot_of[y->expert_of[s]] = -1;
	y->expert_of[s] = -1;
	y->ref[s] = 0;
	y->dirty = true;
}

/* Queue the reads of expert e of layer l into stage (XP_PARTS windows). */
static int issue(struct dp_v4_experts *x, uint32_t l, uint32_t e, char *stage, bool urgent,
		 struct xp_pending *pd)
{
	uint64_t t0 = dp_clock_ns(); /* the built-in reader reads right here */
	for (int p = 0; p < XP_PARTS; p++) {
		const struct xp_loc *lc = &x->loc[((size_t)l * x->E + e) * XP_PARTS + p];
		uint64_t a = lc->offset & ~(uint64_t)(XP_ALIGN - 1);
		int r = x->io.read(x->io.ctx, lc->file, a, (uint32_t)window_of(lc),
				   stage + (size_t)p * x->win, l, urgent, &pd->ticket[p]);
		if (r < 0) {
			/* the parts queued so far must finish before stage is reused */
			for (int q = 0; q < p; q++)
				x->io.wait(x->io.ctx, pd->ticket[q], 0);
			return r;
		}
	}
	pd->on = true;
	pd->stage = stage;
	x->st.wait_ns += dp_clock_ns() - t0;
	return 0;
}

/* Fill slot s of layer l with expert e's matrices from their bytes: the host
 * copy (DRAM) or the staging windows (NVME). */
static int fill(struct dp_v4_model *m, uint32_t l, uint32_t s, uint32_t e, const char *stage)
{
	struct dp_v4_experts *x = m->experts;
	struct dp_v4_layer_w *w = &m->layers[l];
	uint64_t t0 = dp_clock_ns();
	int r = 0;
	if (w->experts_kept) {
		const char *src[XP_PARTS];
		size_t i0 = ((size_t)l * x->E + e) * XP_PARTS;
		for (int p = 0; p < XP_PARTS; p++) {
			const struct xp_loc *lc = &x->loc[i0 + p];
			src[p] = stage ? stage + (size_t)p * x->win + lc->offset % XP_ALIGN
				       : x->host + x->hoff[i0 + p];
			x->st.bytes_in += lc->bytes;
		}
		/* the slot wants gate's codes then up's; their scales adjoin already */
		memcpy(x->conv, src[0], x->loc[i0].bytes);
		memcpy((char *)x->conv + x->loc[i0].bytes, src[1], x->loc[i0 + 1].bytes);
		r = dp_gpu_weight_fill_blocks(m->g, &w->gate_up, s, x->conv,
					      w->gate_up.scale ? x->scales + x->soff[i0] : NULL);
		if (r == 0)
			r = dp_gpu_weight_fill_blocks(m->g, &w->down, s, src[2],
						      w->down.scale ? x->scales + x->soff[i0 + 2]
								    : NULL);
		x->st.fill_ns += dp_clock_ns() - t0;
		return r;
	}
	for (int p = 0; p < XP_PARTS && r == 0; p++) {
		size_t i = ((size_t)l * x->E + e) * XP_PARTS + p;
		const struct xp_loc *lc = &x->loc[i];
		const char *src = stage ? stage + (size_t)p * x->win + lc->offset % XP_ALIGN
					: x->host + x->hoff[i];
		if (p == 2)
			r = dp_gpu_weight_fill_buf(m->g, &w->down, s, 0, x->D, src, lc->dtype,
						   x->conv, x->conv_bytes);
		else
			r = dp_gpu_weight_fill_buf(m->g, &w->gate_up, s, p ? x->I : 0, x->I, src,
						   lc->dtype, x->conv, x->conv_bytes);
		x->st.bytes_in += lc->bytes;
	}
	x->st.fill_ns += dp_clock_ns() - t0;
	return r;
}

/* Wait for slot s's pending reads and fill it; a failed one empties the slot. */
static int settle(struct dp_v4_model *m, uint32_t l, uint32_t s)
{
	struct dp_v4_experts *x = m->experts;
	struct xp_layer *y = &x->lay[l];
	struct xp_pending *pd = &y->pend[s];
	if (!pd->on)
		return 0;
	uint32_t e = (uint32_t)y->expert_of[s];
	uint64_t t0 = dp_clock_ns();
	int r = pend_wait(x, l, e, pd);
	x->st.wait_ns += dp_clock_ns() - t0;
	/* the checkpoint on disk must still hold what was loaded */
	for (int p = 0; p < XP_PARTS && r == 0; p++) {
		const struct xp_loc *lc = &x->loc[((size_t)l * x->E + e) * XP_PARTS + p];
		if (XXH3_64bits(pd->stage + (size_t)p * x->win + lc->offset % XP_ALIGN, lc->bytes) !=
		    lc->sum) {
			x->st.corrupt++;
			r = -EBADMSG;
		}
	}
	if (r == 0)
		r = fill(m, l, s, e, pd->stage);
	if (r < 0)
		unassign(y, s);
	return r;
}

/* Read ahead the hash layers' experts for a step of T tokens. */
int dp_v4_experts_step(struct dp_v4_model *m, const int32_t *ids, uint32_t T)
{
	struct dp_v4_experts *x = m->experts;
	if (!x || x->where != DP_V4_EXPERTS_NVME)
		return 0;
	/* what an earlier step that failed before some layer left pending:
	 * filled, or (its read failed too) emptied, to be read again; so no
	 * staging area has reads of two layers in flight */
	for (uint32_t l = 0; l < x->L; l++)
		for (uint32_t s = 0; s < x->S; s++)
			if (x->lay[l].pend[s].on)
				settle(m, l, s);
	for (uint32_t l = 0; l < x->L; l++) {
		struct xp_layer *y = &x->lay[l];
		if (!y->tid2eid)
			continue;
		memset(x->used, XP_UNUSED, x->E);
		for (uint32_t t = 0; t < T; t++)
			for (uint32_t j = 0; j < x->k; j++)
				x->used[y->tid2eid[(size_t)ids[t] * x->k + j]] = XP_NEEDED;
		uint32_t stamp = ++x->stamp;
		for (uint32_t e = 0; e < x->E; e++) {
			if (!x->used[e])
				continue;
			int32_t s = y->slot_of[e];
			if (s >= 0) {
				y->pin[s] = stamp;
				continue;
			}
			if ((s = victim(x, y, stamp, x->used)) < 0)
				break; /* the rest when the layer runs */
			assign(y, (uint32_t)s, e, stamp);
			int r = issue(x, l, e, y->ahead + (size_t)s * XP_PARTS * x->win, false,
				      &y->pend[s]);
			if (r < 0) {
				unassign(y, (uint32_t)s);
				return r;
			}
		}
	}
	return 0;
}

static int idx_reserve(struct dp_v4_model *m, size_t n)
{
	struct dp_v4_experts *x = m->experts;
	if (n <= x->idx_cap)
		return 0;
	size_t cap = n < 256 ? 256 : n;
	int32_t *h = malloc(cap * sizeof(int32_t)), *k = malloc(cap * sizeof(int32_t));
	int32_t *d = dp_gpu_alloc(m->g, cap * sizeof(int32_t), DP_GPU_MEM_SCRATCH);
	if (!h || !k || !d) {
		free(h);
		free(k);
		if (d)
			dp_gpu_dealloc(m->g, d, cap * sizeof(int32_t), DP_GPU_MEM_SCRATCH);
		return -ENOMEM;
	}
	free(x->idx_h);
	free(x->idx_mask);
	if (x->idx_dev)
		dp_gpu_dealloc(m->g, x->idx_dev, x->idx_cap * sizeof(int32_t), DP_GPU_MEM_SCRATCH);
	x->idx_h = h;
	x->idx_mask = k;
	x->idx_dev = d;
	x->idx_cap = cap;
	return 0;
}

static int ahead(struct dp_v4_model *m, int l, const int32_t *idx, uint32_t T);

int dp_v4_experts_moe(struct dp_v4_model *m, int l, const float *xin, const int32_t *idx,
		      const float *wt, uint32_t T, float limit, float *yout, const int32_t *ahead_idx)
{
	struct dp_v4_experts *x = m->experts;
	struct xp_layer *y = &x->lay[l];
	struct dp_v4_layer_w *w = &m->layers[l];
	size_t P = (size_t)T * x->k;
	int r;

	if (T == 0)
		return 0;
	if ((r = idx_reserve(m, P)) < 0 ||
	    (r = dp_gpu_download(m->g, x->idx_h, idx, P * sizeof(int32_t))) < 0)
		return r;
	memset(x->used, XP_UNUSED, x->E);
	for (size_t p = 0; p < P; p++)
		if (x->idx_h[p] >= 0 && (uint32_t)x->idx_h[p] < x->E)
			x->used[x->idx_h[p]] = XP_NEEDED;
	uint32_t nu = 0;
	for (uint32_t e = 0; e < x->E; e++)
		if (x->used[e])
			x->uni[nu++] = e;
	x->st.uses += nu;
	/* lookahead guesses the router did not make: settled, so their slots
	 * can be reused (a failed read just empties its slot) */
	for (uint32_t s = 0; s < x->S; s++)
		if (y->pend[s].on && x->used[y->expert_of[s]] != XP_NEEDED) {
			settle(m, (uint32_t)l, s);
			x->st.ahead_unused++;
		}

	struct dp_gpu_weight gu = w->gate_up, dn = w->down;
	gu.count = dn.count = x->E;
	gu.stored = dn.stored = x->S;
	gu.slot_of = dn.slot_of = y->slot_dev;

	if (nu == 0 && ahead_idx && (r = ahead(m, l + 1, ahead_idx, T)) < 0)
		return r;
	for (uint32_t i = 0; i < nu;) {
		uint32_t first = i, stamp = ++x->stamp;
		/* the pass: resident experts pinned, missing ones given a slot */
		for (; i < nu; i++) {
			uint32_t e = x->uni[i];
			int32_t s = y->slot_of[e];
			if (s >= 0) {
				y->pin[s] = stamp;
				y->ref[s] = 1;
				if (y->pend[s].on)
					x->st.prefetched++;
				else
					x->st.hits++;
				continue;
			}
			if ((s = victim(x, y, stamp, x->used)) < 0 && i == first) {
				/* every slot is being read into (guesses for later
				 * experts of this step): let those reads land */
				for (uint32_t q = 0; q < x->S; q++)
					if (y->pend[q].on)
						settle(m, (uint32_t)l, q);
				s = victim(x, y, stamp, x->used);
			}
			if (s < 0)
				break;
			assign(y, (uint32_t)s, e, stamp);
			x->st.misses++;
			if (x->where == DP_V4_EXPERTS_DRAM) {
				if ((r = fill(m, (uint32_t)l, (uint32_t)s, e, NULL)) < 0) {
					unassign(y, (uint32_t)s);
					return r;
				}
				continue;
			}
			r = issue(x, (uint32_t)l, e, x->stage + (size_t)s * XP_PARTS * x->win, true,
				  &y->pend[s]);
			if (r < 0) {
				unassign(y, (uint32_t)s);
				break;
			}
		}
		/* the next layer's guesses queue behind this pass's misses */
		if (ahead_idx && r >= 0) {
			r = ahead(m, l + 1, ahead_idx, T);
			ahead_idx = NULL;
		}
		/* every slot of the pass filled (read ahead or just now) */
		int first_err = r < 0 ? r : 0;
		for (uint32_t j = first; j < i; j++) {
			int32_t s = y->slot_of[x->uni[j]];
			int rr = s >= 0 ? settle(m, (uint32_t)l, (uint32_t)s) : -EIO;
			if (rr < 0 && first_err == 0)
				first_err = rr;
		}
		if (first_err < 0)
			return first_err;
		if (i == first)
			return -ENOSPC; /* cannot happen: a new pass pins nothing */
		if (y->dirty) {
			if ((r = dp_gpu_upload(m->g, y->slot_dev, y->slot_of,
					       x->E * sizeof(int32_t))) < 0)
				return r;
			y->dirty = false;
		}
		const int32_t *pidx = idx;
		if (first > 0 || i < nu) {
			/* only this pass's expert range */
			uint32_t lo = x->uni[first], hi = x->uni[i - 1];
			for (size_t p = 0; p < P; p++) {
				int32_t e = x->idx_h[p];
				x->idx_mask[p] = e >= 0 && (uint32_t)e >= lo && (uint32_t)e <= hi ? e : -1;
			}
			r = dp_gpu_upload(m->g, x->idx_dev, x->idx_mask, P * sizeof(int32_t));
			if (r < 0)
				return r;
			pidx = x->idx_dev;
		}
		x->st.passes++;
		if ((r = m->ops->moe(m->g, xin, pidx, wt, T, x->k, &gu, &dn, limit, yout)) < 0)
			return r;
		for (uint32_t j = first; j < i; j++)
			x->used[x->uni[j]] = XP_DONE; /* may make room for the next pass */
	}
	return 0;
}

/* ---- lookahead routing ------------------------------------------------------------------- */

bool dp_v4_experts_lookahead(const struct dp_v4_model *m, int l)
{
	const struct dp_v4_experts *x = m->experts;
	return x && x->lookahead && l >= 1 && (uint32_t)l < x->L && !x->lay[l].tid2eid;
}

int dp_v4_experts_ahead_bufs(struct dp_v4_model *m, uint32_t T, float **ret_logits,
			     int32_t **ret_idx, float **ret_w)
{
	struct dp_v4_experts *x = m->experts;
	if (T > x->la_cap) {
		size_t cap = T < 64 ? 64 : T;
		float *lg = dp_gpu_alloc(m->g, cap * x->E * sizeof(float), DP_GPU_MEM_SCRATCH);
		float *w = dp_gpu_alloc(m->g, cap * x->k * sizeof(float), DP_GPU_MEM_SCRATCH);
		int32_t *ix = dp_gpu_alloc(m->g, cap * x->k * sizeof(int32_t), DP_GPU_MEM_SCRATCH);
		int32_t *h = malloc(cap * x->k * sizeof(int32_t));
		if (!lg || !w || !ix || !h) {
			if (lg)
				dp_gpu_dealloc(m->g, lg, cap * x->E * sizeof(float), DP_GPU_MEM_SCRATCH);
			if (w)
				dp_gpu_dealloc(m->g, w, cap * x->k * sizeof(float), DP_GPU_MEM_SCRATCH);
			if (ix)
				dp_gpu_dealloc(m->g, ix, cap * x->k * sizeof(int32_t), DP_GPU_MEM_SCRATCH);
			free(h);
			return -ENOMEM;
		}
		if (x->la_cap) {
			dp_gpu_dealloc(m->g, x->la_logits, x->la_cap * x->E * sizeof(float),
				       DP_GPU_MEM_SCRATCH);
			dp_gpu_dealloc(m->g, x->la_w, x->la_cap * x->k * sizeof(float), DP_GPU_MEM_SCRATCH);
			dp_gpu_dealloc(m->g, x->la_idx, x->la_cap * x->k * sizeof(int32_t),
				       DP_GPU_MEM_SCRATCH);
		}
		free(x->la_h);
		x->la_logits = lg;
		x->la_w = w;
		x->la_idx = ix;
		x->la_h = h;
		x->la_cap = cap;
	}
	*ret_logits = x->la_logits;
	*ret_idx = x->la_idx;
	*ret_w = x->la_w;
	return 0;
}

/* Read layer l's guessed misses ahead into its staging area (the one layer
 * l - 1 does not use), as many as its unpinned slots take. */
static int ahead(struct dp_v4_model *m, int l, const int32_t *idx, uint32_t T)
{
	struct dp_v4_experts *x = m->experts;
	struct xp_layer *y = &x->lay[l];
	size_t P = (size_t)T * x->k;
	int r = dp_gpu_download(m->g, x->la_h, idx, P * sizeof(int32_t));
	if (r < 0)
		return r;
	memset(x->la_used, XP_UNUSED, x->E);
	for (size_t p = 0; p < P; p++)
		if (x->la_h[p] >= 0 && (uint32_t)x->la_h[p] < x->E)
			x->la_used[x->la_h[p]] = XP_NEEDED;
	uint32_t stamp = ++x->stamp;
	char *area = x->la_area[l % 2];
	for (uint32_t e = 0; e < x->E; e++) {
		if (!x->la_used[e])
			continue;
		int32_t s = y->slot_of[e];
		if (s >= 0) {
			y->pin[s] = stamp;
			y->ref[s] = 1;
			continue;
		}
		if ((s = victim(x, y, stamp, x->la_used)) < 0)
			break;
		assign(y, (uint32_t)s, e, stamp);
		if ((r = issue(x, (uint32_t)l, e, area + (size_t)s * XP_PARTS * x->win, false,
			       &y->pend[s])) < 0) {
			unassign(y, (uint32_t)s);
			return r;
		}
	}
	return 0;
}
