/* SPDX-License-Identifier: MIT */
/*
 * engram/store.c — the Engram row store (engram.h "the store"): the V4 forward's provider,
 * with the tables in device memory, pinned DRAM, or on NVMe behind the io engine.
 *
 * A step's plan, per Engram layer slot, holds one entry per (token, column): the flat row,
 * the cache entry that has it (or none) and, on NVMe, where in the block pool its bytes
 * will land. Reads are issued slot by slot (in ascending model layer), so the channel's
 * in-order completion counter passing a slot's last ticket means all of that slot's rows are
 * in. With a reader (engram.h, dp_engram_store_set_reader) the tickets are the store's own
 * count, each mapped to the reader's ticket, and waited for one by one in that order.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "base/clock.h"
#include "base/err.h"
#include "engram/engram-internal.h"
#include "engram/engram.h"
#include "gpu/gpu.h"
#include "io/io.h"
#include "model/v4.h"
#include "sched/topo.h"

#define NONE UINT32_MAX
/* Blocks merged into one read at most (adjacent blocks of one layer). */
#define MERGE_MAX 32u
/* Chunk of the initial table load. */
#define LOAD_CHUNK (64u << 20)

struct slot_step {
	uint64_t first, end; /* its tickets: [first, end) */
	int err;             /* a read of it failed */
};

struct dp_engram_store {
	const struct dp_engram_hash *h;
	struct dp_engram_table *table;
	struct dp_engram_table_info info;
	struct dp_engram_store_config cfg;
	uint32_t n_slots, C, hd, F; /* slots, columns, head_dim, floats per token */
	uint64_t *slot_data;        /* per slot: byte offset of its rows in the data region */

	/* DEVICE / DRAM: the data region in memory (DEVICE on the cpu backend, whose backend
	 * memory is host memory: allocated the same way as DRAM, so the two differ only in the
	 * path rows take) */
	struct dp_topo_mem mem;
	const unsigned char *data;

	/* NVME */
	struct dp_io_chan *chan;    /* without a reader */
	struct dp_engram_reader rd; /* rd.read: reads go to the reader instead */
	uint64_t *rtk;              /* with a reader: its ticket per store ticket of the step */
	uint32_t *order;            /* slots in ascending model layer: the order of the reads */
	uint32_t file;
	bool file_open, direct;
	struct dp_topo_mem pool; /* block (or row) buffers */
	uint32_t region;
	bool registered;
	uint64_t pool_units;    /* buffers the pool holds */
	uint32_t unit_bytes;    /* block_bytes (direct) or row_bytes (buffered) */
	struct dp_io_req *reqs; /* a slot's reads */
	uint32_t *tlen;         /* expected bytes per ticket of the step */
	uint64_t step_first;    /* first ticket of the step */
	uint64_t issued;        /* tickets handed out so far (the channel's next, or a count) */
	uint64_t checked;       /* tickets whose result was checked */

	/* the step: capacity in tokens, plan per slot */
	uint32_t cap;
	int64_t *flat;     /* [n_slots][cap * C] */
	uint32_t *centry;  /* [n_slots][cap * C]: cache entry or NONE */
	uint64_t *poff;    /* [n_slots][cap * C]: NVME: byte offset of the row in the pool */
	uint64_t *sortkey; /* [cap * C] */
	struct slot_step *ss;
	struct dp_topo_mem staging; /* [cap][F] floats, pinned */
	float **out;                /* per slot, backend memory [cap][F] */
	size_t out_floats;
	int64_t *tok64, *hrows; /* hashing scratch: [cap], [n_slots][cap][C] */

	/* what the step was planned for */
	bool planned;
	uint32_t T;
	uint32_t sig_n, sig_cap, sig_tok_cap;
	struct sig {
		const struct dp_v4_seq *seq;
		uint64_t pos;
		uint32_t n;
	} * sig;
	int32_t *sig_tok;
	uint64_t epoch;

	struct dp_engram_cache cache;
	struct dp_engram_store_stats st;
};

static const char *const res_names[DP_ENGRAM_RES_MAX] = {"device", "dram", "nvme"};

const char *dp_engram_residency_name(enum dp_engram_residency r)
{
	return (unsigned)r < DP_ENGRAM_RES_MAX ? res_names[r] : NULL;
}

int dp_engram_residency_parse(const char *name, enum dp_engram_residency *ret)
{
	if (!name || !ret)
		return -EINVAL;
	for (int i = 0; i < DP_ENGRAM_RES_MAX; i++)
		if (strcmp(name, res_names[i]) == 0) {
			*ret = (enum dp_engram_residency)i;
			return 0;
		}
	return -EINVAL;
}

int dp_engram_store_config_init(struct dp_engram_store_config *cfg)
{
	if (!cfg)
		return -EINVAL;
	*cfg = (struct dp_engram_store_config){
	    .residency = DP_ENGRAM_RES_DRAM,
	    .node = -1,
	    .cache_rows = 65536,
	    .max_tokens = 256,
	};
	return 0;
}

/* ---- buffers ------------------------------------------------------------------ */

static void pool_release(struct dp_engram_store *s)
{
	if (s->registered)
		dp_io_mem_unregister(s->cfg.io, s->region);
	s->registered = false;
	dp_topo_free_onnode(&s->pool);
	s->pool_units = 0;
}

static void step_release(struct dp_engram_store *s)
{
	free(s->flat);
	free(s->centry);
	free(s->poff);
	free(s->sortkey);
	free(s->tok64);
	free(s->hrows);
	free(s->reqs);
	free(s->tlen);
	free(s->rtk);
	s->flat = NULL;
	s->centry = NULL;
	s->poff = NULL;
	s->sortkey = NULL;
	s->tok64 = s->hrows = NULL;
	s->reqs = NULL;
	s->tlen = NULL;
	s->rtk = NULL;
	if (s->staging.addr)
		munlock(s->staging.addr, s->staging.mapped);
	dp_topo_free_onnode(&s->staging);
	for (uint32_t i = 0; s->out && i < s->n_slots; i++)
		if (s->out[i])
			dp_gpu_dealloc(s->cfg.gpu, s->out[i], s->out_floats * sizeof(float),
			               DP_GPU_MEM_SCRATCH);
	free(s->out);
	s->out = NULL;
	s->cap = 0;
}

/* Room for a step of T tokens (everything sized by tokens). Called with no read in flight. */
static int step_reserve(struct dp_engram_store *s, uint32_t T)
{
	if (T <= s->cap)
		return 0;
	uint32_t cap = s->cap ? s->cap : 1;
	while (cap < T)
		cap *= 2;
	if ((uint64_t)cap * s->C >= (1ull << 24))
		return -E2BIG; /* sort keys carry the request index in 24 bits */
	step_release(s);
	pool_release(s);
	size_t per = (size_t)cap * s->C, all = per * s->n_slots;
	s->flat = malloc(all * sizeof(*s->flat));
	s->centry = malloc(all * sizeof(*s->centry));
	s->poff = malloc(all * sizeof(*s->poff));
	s->sortkey = malloc(per * sizeof(*s->sortkey));
	s->tok64 = malloc((size_t)cap * sizeof(*s->tok64));
	s->hrows = malloc(all * sizeof(*s->hrows));
	s->reqs = malloc(per * sizeof(*s->reqs));
	s->tlen = malloc(all * sizeof(*s->tlen));
	s->rtk = malloc(all * sizeof(*s->rtk));
	s->out = calloc(s->n_slots, sizeof(*s->out));
	if (!s->flat || !s->centry || !s->poff || !s->sortkey || !s->tok64 || !s->hrows ||
	    !s->reqs || !s->tlen || !s->rtk || !s->out)
		goto nomem;
	s->out_floats = (size_t)cap * s->F;
	for (uint32_t i = 0; i < s->n_slots; i++)
		if (!(s->out[i] = dp_gpu_alloc(s->cfg.gpu, s->out_floats * sizeof(float),
		                               DP_GPU_MEM_SCRATCH)))
			goto nomem;
	if (s->cfg.residency != DP_ENGRAM_RES_DEVICE) {
		if (dp_topo_alloc_onnode(s->out_floats * sizeof(float), s->cfg.node, 0,
		                         &s->staging) < 0)
			goto nomem;
		mlock(s->staging.addr, s->staging.mapped); /* best effort: pinned staging */
	}
	if (s->cfg.residency == DP_ENGRAM_RES_NVME) {
		/* worst case: every row of the step in a block (or row buffer) of its own */
		s->pool_units = all;
		if (dp_topo_alloc_onnode(all * s->unit_bytes, s->cfg.node, 0, &s->pool) < 0)
			goto nomem;
		int r = dp_io_mem_register(s->cfg.io, s->pool.addr, s->pool.mapped, &s->region);
		s->registered = r == 0; /* else plain buffers: still correct */
	}
	s->cap = cap;
	return 0;
nomem:
	step_release(s);
	pool_release(s);
	return -ENOMEM;
}

/* ---- opening -------------------------------------------------------------------- */

/* Read the whole data region into dst (host memory, page-aligned), O_DIRECT when the file
 * system allows (no second copy in the page cache), else buffered. */
static int load_data(struct dp_engram_store *s, void *dst, char *err, size_t err_len)
{
	const char *path = dp_engram_table_path(s->table);
	uint64_t base = s->info.header_bytes, n = s->info.data_bytes;
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_DIRECT);
	bool direct = fd >= 0;
	int r = 0;

	if (fd < 0)
		fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		dp_errf(err, err_len, "%s: %s", path, strerror(errno));
		return -errno;
	}
	for (uint64_t done = 0; r == 0 && done < n;) {
		size_t k = n - done < LOAD_CHUNK ? (size_t)(n - done) : LOAD_CHUNK;
		void *to = (unsigned char *)dst + done;
		ssize_t got = pread(fd, to, k, (off_t)(base + done));
		if (got < 0 && errno == EINTR)
			continue;
		if (got < 0 && errno == EINVAL && direct) {
			/* O_DIRECT refused at read time: go buffered */
			close(fd);
			fd = open(path, O_RDONLY | O_CLOEXEC);
			direct = false;
			if (fd < 0)
				r = -errno;
			continue;
		}
		if (got <= 0) {
			r = got < 0 ? -errno : -EIO;
			break;
		}
		done += (uint64_t)got;
	}
	if (fd >= 0)
		close(fd);
	if (r < 0)
		dp_errf(err, err_len, "%s: loading the tables: %s", path, strerror(-r));
	return r;
}

static void check_tickets(struct dp_engram_store *s, uint64_t end);

void dp_engram_store_free(struct dp_engram_store *s)
{
	if (!s)
		return;
	if (s->rd.read)
		check_tickets(s, s->issued); /* the reader's reads land in the pool */
	if (s->chan) {
		dp_io_chan_free(s->chan); /* waits for its reads */
		s->chan = NULL;
	}
	step_release(s);
	pool_release(s);
	if (s->file_open)
		dp_io_file_remove(s->cfg.io, s->file);
	if (s->mem.addr && s->st.pinned)
		munlock(s->mem.addr, s->mem.mapped);
	dp_topo_free_onnode(&s->mem);
	dp_engram_cache_fini(&s->cache);
	dp_engram_table_close(s->table);
	free(s->slot_data);
	free(s->order);
	free(s->ss);
	free(s->sig);
	free(s->sig_tok);
	free(s);
}

/* NVME without a reader: the HIGH channel, room for a step of max_tokens. */
static int open_chan(struct dp_engram_store *s)
{
	uint64_t depth = (uint64_t)s->cfg.max_tokens * s->C * s->n_slots;
	if (depth > DP_IO_CHAN_DEPTH_MAX)
		depth = DP_IO_CHAN_DEPTH_MAX;
	int r = dp_io_chan_new(s->cfg.io, (uint32_t)depth, &s->chan);
	if (r == 0 && (r = dp_io_chan_set_priority(s->chan, DP_IO_PRIO_HIGH)) < 0) {
		dp_io_chan_free(s->chan);
		s->chan = NULL;
	}
	if (r == 0)
		s->issued = s->checked = dp_io_chan_next(s->chan);
	return r;
}

static int cmp_slot_layer(const void *a, const void *b, void *h)
{
	int x = dp_engram_hash_layer_id(h, (int)*(const uint32_t *)a);
	int y = dp_engram_hash_layer_id(h, (int)*(const uint32_t *)b);
	return x < y ? -1 : x > y;
}

int dp_engram_store_new(const struct dp_engram_hash *h, uint32_t head_dim, const char *path,
                        const struct dp_engram_store_config *cfg, struct dp_engram_store **ret,
                        char *err, size_t err_len)
{
	struct dp_engram_store *s;
	int r;

	if (!h || !path || !cfg || !ret || !cfg->gpu || cfg->residency >= DP_ENGRAM_RES_MAX ||
	    cfg->flags >= DP_ENGRAM_STORE_FLAGS_MAX || cfg->cache_rows > (1u << 30) ||
	    (cfg->residency == DP_ENGRAM_RES_NVME && !cfg->io)) {
		dp_errf(err, err_len, "dp_engram_store_new: bad configuration%s",
		        cfg && cfg->residency == DP_ENGRAM_RES_NVME && !cfg->io
		            ? " (NVMe residency needs an io engine)"
		            : "");
		return -EINVAL;
	}
	if (cfg->residency == DP_ENGRAM_RES_DEVICE && dp_gpu_kind_of(cfg->gpu) != DP_GPU_CPU) {
		dp_errf(err, err_len, "device residency needs a gather op on the %s backend",
		        dp_gpu_kind_name(dp_gpu_kind_of(cfg->gpu)));
		return -ENOTSUP;
	}
	s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	s->h = h;
	s->cfg = *cfg;
	if (!s->cfg.max_tokens)
		s->cfg.max_tokens = 256;
	s->st.node = -1;
	if ((r = dp_engram_table_open(path, &s->table, err, err_len)) < 0 ||
	    (r = dp_engram_table_check(s->table, h, head_dim, err, err_len)) < 0)
		goto fail;
	dp_engram_table_get_info(s->table, &s->info);
	s->n_slots = s->info.n_layers;
	s->C = s->info.n_columns;
	s->hd = head_dim;
	s->F = s->C * head_dim;
	s->slot_data = calloc(s->n_slots, sizeof(*s->slot_data));
	s->order = calloc(s->n_slots, sizeof(*s->order));
	if (!s->slot_data || !s->order) {
		r = -ENOMEM;
		goto fail;
	}
	for (uint32_t i = 0; i < s->n_slots; i++)
		s->order[i] = i;
	qsort_r(s->order, s->n_slots, sizeof(*s->order), cmp_slot_layer, (void *)h);
	for (uint32_t i = 0; i < s->n_slots; i++) {
		uint64_t off;
		dp_engram_table_layer(s->table, (int)i, NULL, NULL, &off);
		s->slot_data[i] = off - s->info.header_bytes;
	}
	if (s->cfg.residency != DP_ENGRAM_RES_DEVICE &&
	    (r = dp_engram_cache_init(&s->cache, (uint32_t)s->cfg.cache_rows, head_dim)) < 0)
		goto fail;

	switch (s->cfg.residency) {
	case DP_ENGRAM_RES_DEVICE:
	case DP_ENGRAM_RES_DRAM:
		if (cfg->share) {
			const struct dp_engram_store *o = cfg->share;
			if (!o->data || o->info.data_bytes != s->info.data_bytes ||
			    o->info.data_xxh64 != s->info.data_xxh64 ||
			    o->info.row_bytes != s->info.row_bytes || o->n_slots != s->n_slots) {
				r = -EINVAL;
				dp_errf(err, err_len,
				        "%s: the store to share holds no copy of "
				        "this table",
				        path);
				goto fail;
			}
			s->data = o->data;
			s->st.pinned = o->st.pinned;
			s->st.node = o->st.node;
			break;
		}
		r = dp_topo_alloc_onnode(s->info.data_bytes, s->cfg.node, DP_TOPO_MEM_HUGE,
		                         &s->mem);
		if (r < 0) {
			dp_errf(err, err_len,
			        "%s: no room for %" PRIu64 " bytes of tables on "
			        "node %d",
			        path, s->info.data_bytes, s->cfg.node);
			goto fail;
		}
		if ((r = load_data(s, s->mem.addr, err, err_len)) < 0)
			goto fail;
		s->data = s->mem.addr;
		if (!(s->cfg.flags & DP_ENGRAM_STORE_NO_PIN))
			s->st.pinned = mlock(s->mem.addr, s->mem.mapped) == 0;
		s->st.node = s->mem.node;
		s->st.table_bytes = s->info.data_bytes;
		break;
	case DP_ENGRAM_RES_NVME: {
		unsigned fl = (s->cfg.flags & DP_ENGRAM_STORE_BUFFERED) ? DP_IO_FILE_BUFFERED : 0;
		struct dp_io_file_info fi;
		r = dp_io_file_open(s->cfg.io, path, O_RDONLY, 0, fl, &s->file);
		if (r < 0) {
			dp_errf(err, err_len, "%s: the io engine cannot open it: %s", path,
			        strerror(-r));
			goto fail;
		}
		s->file_open = true;
		if ((r = dp_io_file_info(s->cfg.io, s->file, &fi)) < 0)
			goto fail;
		s->direct = fi.direct;
		if (fi.direct &&
		    (fi.offset_align > DP_ENGRAM_BLOCK || fi.mem_align > DP_ENGRAM_BLOCK)) {
			r = -ENOTSUP;
			dp_errf(err, err_len,
			        "%s: direct I/O wants %u-byte alignment; blocks are "
			        "%u bytes",
			        path, fi.offset_align, DP_ENGRAM_BLOCK);
			goto fail;
		}
		/* direct (and the default): whole blocks; buffered: just the row's bytes */
		s->unit_bytes = (s->cfg.flags & DP_ENGRAM_STORE_BUFFERED) ? s->info.row_bytes
		                                                          : s->info.block_bytes;
		if ((r = open_chan(s)) < 0) {
			dp_errf(err, err_len, "cannot open an io channel: %s", strerror(-r));
			goto fail;
		}
		break;
	}
	default:
		break;
	}
	if ((r = step_reserve(s, s->cfg.max_tokens)) < 0) {
		dp_errf(err, err_len, "out of memory for %u tokens of staging", s->cfg.max_tokens);
		goto fail;
	}
	*ret = s;
	return 0;
fail:
	dp_engram_store_free(s);
	return r;
}

/* ---- the step ------------------------------------------------------------------ */

/* Has the step been planned for exactly these items? */
static bool same_step(const struct dp_engram_store *s, const struct dp_v4_batch_item *items,
                      uint32_t n_items)
{
	if (!s->planned || n_items != s->sig_n)
		return false;
	for (uint32_t i = 0, o = 0; i < n_items; o += items[i].n_tokens, i++) {
		const struct sig *g = &s->sig[i];
		if (g->seq != items[i].seq || g->pos != dp_v4_seq_pos(items[i].seq) ||
		    g->n != items[i].n_tokens ||
		    memcmp(s->sig_tok + o, items[i].tokens, g->n * sizeof(int32_t)) != 0)
			return false;
	}
	return true;
}

static int remember(struct dp_engram_store *s, const struct dp_v4_batch_item *items,
                    uint32_t n_items, uint32_t T)
{
	if (n_items > s->sig_cap) {
		struct sig *p = realloc(s->sig, n_items * sizeof(*p));
		if (!p)
			return -ENOMEM;
		s->sig = p;
		s->sig_cap = n_items;
	}
	if (T > s->sig_tok_cap) {
		int32_t *p = realloc(s->sig_tok, T * sizeof(*p));
		if (!p)
			return -ENOMEM;
		s->sig_tok = p;
		s->sig_tok_cap = T;
	}
	for (uint32_t i = 0, o = 0; i < n_items; o += items[i].n_tokens, i++) {
		s->sig[i] =
		    (struct sig){items[i].seq, dp_v4_seq_pos(items[i].seq), items[i].n_tokens};
		memcpy(s->sig_tok + o, items[i].tokens, items[i].n_tokens * sizeof(int32_t));
	}
	s->sig_n = n_items;
	s->T = T;
	s->planned = true;
	return 0;
}

/* Check the results of tickets below `end` (waiting for them); a failed read marks its slot. */
static void check_tickets(struct dp_engram_store *s, uint64_t end)
{
	for (; s->checked < end; s->checked++) {
		uint64_t t = s->checked;
		int32_t res = 0;
		int r;
		if (s->rd.read) {
			r = s->rd.wait(s->rd.ctx, s->rtk[t - s->step_first],
			               s->tlen[t - s->step_first]);
			res = r < 0 ? 0 : r;
			r = r < 0 ? r : 0;
		} else {
			r = dp_io_wait(s->chan, t, -1);
			if (r == 0)
				r = dp_io_result(s->chan, t, &res);
		}
		if (r == 0 && res != (int32_t)s->tlen[t - s->step_first])
			r = res < 0 ? res : -EIO;
		if (r < 0 && t >= s->step_first)
			for (uint32_t i = 0; i < s->n_slots; i++)
				if (t >= s->ss[i].first && t < s->ss[i].end && !s->ss[i].err)
					s->ss[i].err = r;
	}
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

/* Queue reqs[0..n) (for model layer `layer`) on the reader, or on the channel. A channel
 * ticket's result slot is reused by the ticket `depth` later, so no more than depth tickets
 * may be unchecked: wait for the oldest when full. */
static int submit_all(struct dp_engram_store *s, const struct dp_io_req *reqs, uint32_t n,
                      uint32_t layer)
{
	if (s->rd.read) {
		for (uint32_t i = 0; i < n; i++) {
			uint64_t t;
			int r = s->rd.read(s->rd.ctx, reqs[i].file, reqs[i].offset, reqs[i].len,
			                   reqs[i].addr, layer, &t);
			if (r < 0)
				return r;
			s->rtk[s->issued++ - s->step_first] = t;
		}
		return 0;
	}
	if (!s->chan)
		return -ENODEV; /* a reader's channel could not be opened again */
	uint64_t depth = dp_io_chan_depth(s->chan);

	while (n) {
		uint64_t first, room = s->checked + depth - s->issued;
		if (room == 0) {
			check_tickets(s, s->checked + 1);
			continue;
		}
		int k = dp_io_submit(s->chan, reqs, n < room ? n : (uint32_t)room, &first);
		if (k == -EAGAIN) {
			check_tickets(s, s->checked + 1); /* wait for the oldest */
			continue;
		}
		if (k < 0)
			return k;
		s->issued = first + (uint64_t)k;
		reqs += k;
		n -= (uint32_t)k;
	}
	return 0;
}

/* Plan slot i's misses on NVMe: unique blocks (or rows), merged reads, submitted. */
static int plan_reads(struct dp_engram_store *s, uint32_t slot, uint64_t *unit_next,
                      uint32_t *tl_next)
{
	size_t n = (size_t)s->T * s->C, base = (size_t)slot * s->cap * s->C;
	const int64_t *flat = s->flat + base;
	const uint32_t *ce = s->centry + base;
	uint64_t *poff = s->poff + base;
	bool rows_only = s->unit_bytes != s->info.block_bytes;
	uint32_t rpb = s->info.rows_per_block, rb = s->info.row_bytes, bb = s->info.block_bytes;
	uint64_t file_base = s->info.header_bytes + s->slot_data[slot];
	size_t m = 0;

	/* misses as (unit << 24 | request): a unit is a block, or a row when reading rows */
	for (size_t i = 0; i < n; i++)
		if (ce[i] == NONE)
			s->sortkey[m++] =
			    ((uint64_t)(rows_only ? flat[i] : flat[i] / rpb) << 24) | i;
	qsort(s->sortkey, m, sizeof(*s->sortkey), cmp_u64);

	uint32_t nreq = 0;
	uint64_t prev = UINT64_MAX, buf = 0;
	for (size_t j = 0; j < m; j++) {
		uint64_t unit = s->sortkey[j] >> 24;
		size_t i = s->sortkey[j] & ((1u << 24) - 1);
		if (unit != prev) {
			buf = (*unit_next)++;
			struct dp_io_req *q = nreq ? &s->reqs[nreq - 1] : NULL;
			uint64_t off = rows_only ? file_base + unit / rpb * bb + unit % rpb * rb
			                         : file_base + unit * bb;
			if (!rows_only && q && unit == prev + 1 && q->len < MERGE_MAX * bb) {
				q->len += bb; /* adjacent block: one read */
			} else {
				s->reqs[nreq++] = (struct dp_io_req){
				    .op = DP_IO_OP_READ,
				    .file = s->file,
				    .offset = off,
				    .addr = (unsigned char *)s->pool.addr + buf * s->unit_bytes,
				    .len = s->unit_bytes};
			}
			s->st.blocks_read++;
			prev = unit;
		} else {
			s->st.blocks_shared++;
		}
		poff[i] = buf * s->unit_bytes + (rows_only ? 0 : (uint64_t)(flat[i] % rpb) * rb);
	}
	s->ss[slot].first = s->issued;
	for (uint32_t q = 0; q < nreq; q++) {
		s->tlen[(*tl_next)++] = s->reqs[q].len;
		s->st.bytes_read += s->reqs[q].len;
	}
	s->st.reads += nreq;
	int r = submit_all(s, s->reqs, nreq, (uint32_t)dp_engram_hash_layer_id(s->h, (int)slot));
	s->ss[slot].end = s->issued;
	return r;
}

static int plan(struct dp_engram_store *s, const struct dp_v4_batch_item *items, uint32_t n_items)
{
	int32_t hist[DP_V4_ENGRAM_HISTORY_MAX];
	int64_t hist64[DP_V4_ENGRAM_HISTORY_MAX];
	uint64_t T = 0;
	int r;

	if (!items || !n_items)
		return -EINVAL;
	for (uint32_t i = 0; i < n_items; i++) {
		if (!items[i].seq || !items[i].tokens || !items[i].n_tokens)
			return -EINVAL;
		T += items[i].n_tokens;
	}
	if (T > UINT32_MAX)
		return -E2BIG;
	/* the previous step's reads land in buffers this one reuses */
	if (s->issued > s->checked)
		check_tickets(s, s->issued);
	s->planned = false;
	if ((r = step_reserve(s, (uint32_t)T)) < 0)
		return r;
	if (!s->ss && !(s->ss = calloc(s->n_slots, sizeof(*s->ss))))
		return -ENOMEM;

	/* hash every item: rows of all slots, continuing each sequence's history */
	uint32_t o = 0;
	for (uint32_t i = 0; i < n_items; i++) {
		struct dp_engram_state est;
		uint32_t n = items[i].n_tokens;
		int k = dp_v4_seq_engram_history(items[i].seq, hist, DP_V4_ENGRAM_HISTORY_MAX);
		if (k < 0)
			return k;
		for (int j = 0; j < k; j++)
			hist64[j] = hist[j];
		for (uint32_t t = 0; t < n; t++)
			s->tok64[t] = items[i].tokens[t];
		if ((r = dp_engram_state_init(s->h, &est)) < 0 ||
		    (r = dp_engram_state_feed(s->h, &est, hist64, (size_t)k)) < 0 ||
		    (r = dp_engram_hash_sequence(s->h, &est, s->tok64, n, s->hrows)) < 0)
			return r;
		for (uint32_t sl = 0; sl < s->n_slots; sl++) {
			const int64_t *off = dp_engram_hash_offsets(s->h, (int)sl);
			int64_t *dst = s->flat + ((size_t)sl * s->cap + o) * s->C;
			const int64_t *src = s->hrows + (size_t)sl * n * s->C;
			for (size_t j = 0; j < (size_t)n * s->C; j++)
				dst[j] = off[j % s->C] + src[j];
		}
		o += n;
	}
	if ((r = remember(s, items, n_items, (uint32_t)T)) < 0)
		return r;
	s->epoch++;
	s->st.steps++;

	/* cache lookups; on NVMe the misses' reads, slot by slot */
	uint64_t unit_next = 0;
	uint32_t tl_next = 0;
	s->step_first = s->issued;
	for (uint32_t k = 0; k < s->n_slots; k++) {
		uint32_t sl = s->order[k];
		size_t base = (size_t)sl * s->cap * s->C, n = (size_t)T * s->C;
		s->ss[sl] = (struct slot_step){.first = s->issued, .end = s->issued};
		for (size_t j = 0; j < n; j++) {
			int64_t e = -1;
			if (s->cache.cap) {
				e = dp_engram_cache_lookup(
				    &s->cache, (uint64_t)s->flat[base + j] << 8 | sl, s->epoch);
				if (e >= 0)
					s->st.cache_hits++;
				else
					s->st.cache_misses++;
			}
			s->centry[base + j] = e >= 0 ? (uint32_t)e : NONE;
		}
		if (s->cfg.residency == DP_ENGRAM_RES_NVME &&
		    (r = plan_reads(s, sl, &unit_next, &tl_next)) < 0) {
			s->planned = false;
			return r;
		}
	}
	return 0;
}

/* plan(), timed */
static int plan_timed(struct dp_engram_store *s, const struct dp_v4_batch_item *items,
                      uint32_t n_items)
{
	uint64_t t0 = dp_clock_ns();
	int r = plan(s, items, n_items);
	s->st.plan_ns += dp_clock_ns() - t0;
	return r;
}

int dp_engram_store_set_reader(struct dp_engram_store *s, const struct dp_engram_reader *reader)
{
	if (!s || s->cfg.residency != DP_ENGRAM_RES_NVME ||
	    (reader && (!reader->read || !reader->wait)))
		return -EINVAL;
	/* what went the old way lands in the pool: in before the tickets change meaning */
	check_tickets(s, s->issued);
	s->planned = false; /* the plan's tickets are the old way's: plan the step again */
	if (reader) {
		dp_io_chan_free(s->chan);
		s->chan = NULL;
		s->rd = *reader;
		return 0;
	}
	s->rd = (struct dp_engram_reader){0};
	return s->chan ? 0 : open_chan(s);
}

int dp_engram_prefetch(struct dp_engram_store *s, const struct dp_v4_batch_item *items,
                       uint32_t n_items)
{
	if (!s)
		return -EINVAL;
	return plan_timed(s, items, n_items);
}

/* Gather slot's rows: cache hits, table memory or pool bytes, into dst ([T][F] floats). */
static void gather(struct dp_engram_store *s, uint32_t slot, float *dst)
{
	size_t n = (size_t)s->T * s->C, base = (size_t)slot * s->cap * s->C;
	uint32_t rpb = s->info.rows_per_block, rb = s->info.row_bytes, bb = s->info.block_bytes;
	const unsigned char *mem = s->data ? s->data + s->slot_data[slot] : NULL;
	enum dp_engram_dtype dt = s->info.dtype;

	for (size_t j = 0; j < n; j++) {
		float *row = dst + j * s->hd;
		uint32_t e = s->centry[base + j];
		if (e != NONE) {
			memcpy(row, s->cache.data + (size_t)e * s->hd, s->hd * sizeof(float));
			continue;
		}
		uint64_t f = (uint64_t)s->flat[base + j];
		const unsigned char *src =
		    mem ? mem + f / rpb * bb + f % rpb * rb
		        : (const unsigned char *)s->pool.addr + s->poff[base + j];
		dp_engram_row_decode(dt, s->hd, src, row);
		if (s->cache.cap) {
			bool ev;
			int64_t r =
			    dp_engram_cache_insert(&s->cache, f << 8 | slot, row, s->epoch, &ev);
			s->st.cache_inserts += r >= 0;
			s->st.cache_evictions += ev;
		}
	}
	s->st.rows += n;
}

int dp_engram_store_rows(struct dp_engram_store *s, int layer, const struct dp_v4_batch_item *items,
                         uint32_t n_items, const float **ret_rows)
{
	if (!s || !ret_rows)
		return -EINVAL;
	int slot = dp_engram_hash_layer_slot(s->h, layer);
	if (slot < 0)
		return -EINVAL;
	if (!same_step(s, items, n_items)) {
		int r = plan_timed(s, items, n_items);
		if (r < 0)
			return r;
		s->st.sync_prefetches++;
	}
	if (s->cfg.residency == DP_ENGRAM_RES_NVME) {
		uint64_t t0 = dp_clock_ns();
		check_tickets(s, s->ss[slot].end);
		s->st.wait_ns += dp_clock_ns() - t0;
		if (s->ss[slot].err)
			return s->ss[slot].err;
	}
	uint64_t t0 = dp_clock_ns();
	float *out = s->out[slot];
	if (s->cfg.residency == DP_ENGRAM_RES_DEVICE) {
		gather(s, (uint32_t)slot, out); /* straight into backend memory (cpu backend) */
	} else {
		gather(s, (uint32_t)slot, s->staging.addr);
		int r = dp_gpu_upload(s->cfg.gpu, out, s->staging.addr,
		                      (size_t)s->T * s->F * sizeof(float));
		if (r < 0)
			return r;
	}
	s->st.gather_ns += dp_clock_ns() - t0;
	*ret_rows = out;
	return 0;
}

static int provider_rows(void *ctx, int layer, const struct dp_v4_batch_item *items,
                         uint32_t n_items, const float **ret_rows)
{
	return dp_engram_store_rows(ctx, layer, items, n_items, ret_rows);
}

int dp_engram_store_provider(struct dp_engram_store *s, struct dp_v4_engram_provider *ret)
{
	if (!s || !ret)
		return -EINVAL;
	*ret = (struct dp_v4_engram_provider){.rows = provider_rows, .ctx = s};
	return 0;
}

int dp_engram_store_get_stats(const struct dp_engram_store *s, struct dp_engram_store_stats *ret)
{
	if (!s || !ret)
		return -EINVAL;
	*ret = s->st;
	return 0;
}

void dp_engram_store_reset_stats(struct dp_engram_store *s)
{
	if (!s)
		return;
	struct dp_engram_store_stats keep = s->st;
	memset(&s->st, 0, sizeof(s->st));
	s->st.table_bytes = keep.table_bytes;
	s->st.pinned = keep.pinned;
	s->st.node = keep.node;
}
