/* SPDX-License-Identifier: MIT */
/*
 * io: the arena and the registered (fixed) buffer table.
 *
 * The table is sparse where the kernel allows it (IORING_RSRC_REGISTER_SPARSE,
 * Linux 5.19): entries [0, arena slots) hold the arena in 1 GiB pieces,
 * and each dp_io_mem_register() region i (1..max_regions) owns a window of
 * IO_REGION_SLOTS entries after them. Without sparse tables only the arena
 * is registered. A request's address is looked up here by the io thread:
 * inside a registered region (and within one entry) it goes as READ_FIXED /
 * WRITE_FIXED, else as a plain READ / WRITE.
 */
#include "io/io-internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <unistd.h>

/* Table entries per caller region: up to 16 GiB each. */
#define IO_REGION_SLOTS 16u

static uint32_t slots_for(size_t len)
{
	return (uint32_t)((len + IO_REGION_SLOT - 1) / IO_REGION_SLOT);
}

static void region_iovecs(const struct io_region *rg, struct iovec *iov)
{
	for (uint32_t s = 0; s < rg->n_slots; s++) {
		size_t off = (size_t)s * IO_REGION_SLOT;
		iov[s].iov_base = (void *)(rg->base + off);
		iov[s].iov_len = rg->len - off < IO_REGION_SLOT ? rg->len - off : IO_REGION_SLOT;
	}
}

static int arena_map(struct dp_io *io, bool huge)
{
	size_t size = (size_t)io->cfg.n_bufs * io->cfg.buf_size;
	int r = dp_topo_alloc_onnode(size, io->cfg.node, huge ? DP_TOPO_MEM_HUGE : 0, &io->arena);

	if (r < 0)
		return r;
	if (!huge)
		madvise(io->arena.addr, io->arena.mapped, MADV_NOHUGEPAGE);
	io->regions[0] = (struct io_region){
	    .base = (uintptr_t)io->arena.addr,
	    .len = size,
	    .first_slot = 0,
	    .n_slots = slots_for(size),
	    .used = true,
	};
	pthread_mutex_lock(&io->lock);
	io->mode.arena_bytes = io->arena.mapped;
	io->mode.arena_node = io->arena.node;
	io->mode.arena_pages = io->arena.pages;
	pthread_mutex_unlock(&io->lock);
	return 0;
}

int io_arena_setup(struct dp_io *io)
{
	if (!io->cfg.n_bufs)
		return 0;
	bool huge = !(io->cfg.flags & DP_IO_NO_HUGE);
	int r = arena_map(io, huge);
	if (r < 0)
		return r;
	if (huge && io->arena.pages == DP_TOPO_PAGES_SMALL)
		io_fallback(io, DP_IO_FB_HUGE_PAGES, -EOPNOTSUPP); /* THP disabled */
	return 0;
}

/* Put region i's entries in the table. */
static int region_push(struct dp_io *io, uint32_t i)
{
	struct io_region *rg = &io->regions[i];
	struct iovec iov[IO_REGION_SLOTS > 64 ? IO_REGION_SLOTS : 64];
	uint32_t done = 0;

	while (done < rg->n_slots) {
		struct io_region part = *rg;
		uint32_t n = rg->n_slots - done;
		if (n > 64)
			n = 64;
		part.base = rg->base + (size_t)done * IO_REGION_SLOT;
		part.len = rg->len - (size_t)done * IO_REGION_SLOT;
		part.n_slots = n;
		region_iovecs(&part, iov);
		int r = io_uring_register_buffers_update_tag(&io->ring, rg->first_slot + done, iov,
		                                             NULL, n);
		if (r < 0)
			return r;
		done += n;
	}
	rg->registered = true;
	return 0;
}

/* Register the table on a fresh ring (dp_io_new, or after an IOPOLL rebuild).
 * Never fails the engine: without fixed buffers requests use plain ones. */
int io_bufs_register(struct dp_io *io)
{
	uint32_t arena_slots = io->regions[0].used ? io->regions[0].n_slots : 0;
	uint32_t total = arena_slots + io->cfg.max_regions * IO_REGION_SLOTS;
	int r = 0;

	io->n_buf_slots = 0;
	io->bufs_sparse = false;
	for (uint32_t i = 0; i <= io->cfg.max_regions; i++)
		io->regions[i].registered = false;
	if ((io->cfg.flags & DP_IO_NO_FIXED_BUFS) || !total)
		return 0;

	r = io_uring_register_buffers_sparse(&io->ring, total);
	if (r == 0) {
		io->bufs_sparse = true;
		io->n_buf_slots = total;
		for (uint32_t i = 1; i <= io->cfg.max_regions; i++)
			if (io->regions[i].used && region_push(io, i) < 0)
				io->regions[i].used = false;
		if (arena_slots) {
			r = region_push(io, 0);
			/* Huge pages refused (never seen: anonymous THP and
			 * hugetlb register fine on 6.x): try base pages, once,
			 * while nobody holds arena addresses yet. */
			if (r < 0 && r != -ENOMEM && io->arena.pages != DP_TOPO_PAGES_SMALL &&
			    !io->mode.owned) {
				io_fallback(io, DP_IO_FB_HUGE_PAGES, r);
				dp_topo_free_onnode(&io->arena);
				r = arena_map(io, false);
				if (r < 0)
					return r;
				r = region_push(io, 0);
			}
		}
	} else if (arena_slots) {
		struct iovec *iov = calloc(arena_slots, sizeof(*iov));
		if (!iov)
			return -ENOMEM;
		region_iovecs(&io->regions[0], iov);
		r = io_uring_register_buffers(&io->ring, iov, arena_slots);
		free(iov);
		if (r == 0) {
			io->n_buf_slots = arena_slots;
			io->regions[0].registered = true;
		}
	}
	if (r < 0)
		io_fallback(io, DP_IO_FB_FIXED_BUFS, r);
	pthread_mutex_lock(&io->lock);
	io->mode.fixed_bufs = io->regions[0].registered || io->bufs_sparse;
	pthread_mutex_unlock(&io->lock);
	return 0;
}

/* Fixed-buffer index for [addr, addr+len), or -1. io thread. */
int io_buf_index(const struct dp_io *io, const void *addr, uint32_t len)
{
	uintptr_t a = (uintptr_t)addr;

	for (uint32_t i = 0; i <= io->cfg.max_regions; i++) {
		const struct io_region *rg = &io->regions[i];
		if (!rg->registered || a < rg->base || a - rg->base >= rg->len)
			continue;
		size_t off = a - rg->base;
		if (len > rg->len - off)
			return -1;
		/* One table entry must hold it all. */
		if (off / IO_REGION_SLOT != (off + len - 1) / IO_REGION_SLOT)
			return -1;
		return (int)(rg->first_slot + off / IO_REGION_SLOT);
	}
	return -1;
}

/* CTL_MEM_REG (io->lock held; on the io thread or with no loop running). */
int io_region_add(struct dp_io *io, struct io_ctl *c)
{
	if (atomic_load_explicit(&io->state, memory_order_relaxed) == IO_EXITED)
		return -ESHUTDOWN;
	if (!io->bufs_sparse)
		return -EOPNOTSUPP;
	uint32_t arena_slots = io->regions[0].used ? io->regions[0].n_slots : 0;
	for (uint32_t i = 1; i <= io->cfg.max_regions; i++) {
		struct io_region *rg = &io->regions[i];
		if (rg->used)
			continue;
		*rg = (struct io_region){
		    .base = (uintptr_t)c->addr,
		    .len = c->len,
		    .first_slot = arena_slots + (i - 1) * IO_REGION_SLOTS,
		    .n_slots = slots_for(c->len),
		    .used = true,
		};
		int r = region_push(io, i);
		if (r < 0) {
			memset(rg, 0, sizeof(*rg));
			return r;
		}
		c->idx = i;
		return 0;
	}
	return -ENOSPC;
}

/* CTL_MEM_UNREG: empty iovecs clear sparse entries. */
int io_region_remove(struct dp_io *io, uint32_t idx)
{
	struct io_region *rg;
	struct iovec iov[IO_REGION_SLOTS];

	if (idx == 0 || idx > io->cfg.max_regions || !io->regions[idx].used)
		return -ENOENT;
	rg = &io->regions[idx];
	if (rg->registered && atomic_load_explicit(&io->state, memory_order_relaxed) != IO_EXITED) {
		memset(iov, 0, sizeof(iov));
		io_uring_register_buffers_update_tag(&io->ring, rg->first_slot, iov, NULL,
		                                     rg->n_slots);
	}
	memset(rg, 0, sizeof(*rg));
	return 0;
}

int dp_io_mem_register(struct dp_io *io, void *addr, size_t len, uint32_t *ret_region)
{
	long page = sysconf(_SC_PAGESIZE);

	if (!io || !addr || !len || !ret_region || ((uintptr_t)addr % (uintptr_t)page) ||
	    len % (size_t)page || len > IO_REGION_SLOTS * IO_REGION_SLOT)
		return -EINVAL;
	struct io_ctl c = {.op = CTL_MEM_REG, .addr = addr, .len = len};
	int r = io_ctl_call(io, &c);
	if (r < 0)
		return r;
	*ret_region = c.idx;
	return 0;
}

int dp_io_mem_unregister(struct dp_io *io, uint32_t region)
{
	if (!io || region == 0)
		return -EINVAL;
	struct io_ctl c = {.op = CTL_MEM_UNREG, .idx = region};
	return io_ctl_call(io, &c);
}

uint32_t dp_io_buf_count(const struct dp_io *io)
{
	return io && io->arena.addr ? io->cfg.n_bufs : 0;
}

uint32_t dp_io_buf_size(const struct dp_io *io)
{
	return io && io->arena.addr ? io->cfg.buf_size : 0;
}

void *dp_io_buf(const struct dp_io *io, uint32_t idx)
{
	if (!io || !io->arena.addr || idx >= io->cfg.n_bufs)
		return NULL;
	return (char *)io->arena.addr + (size_t)idx * io->cfg.buf_size;
}
