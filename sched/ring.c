/* SPDX-License-Identifier: MIT */
/* Setup and teardown of the rings; the data path is inline in ring.h. */
#include "sched/ring.h"

#include <stdlib.h>

static bool ring_geometry_valid(uint32_t capacity, uint32_t esize)
{
	if (capacity < 2 || capacity > DP_RING_CAPACITY_MAX || (capacity & (capacity - 1)))
		return false;
	if (esize == 0 || esize % 8 || esize > DP_RING_ESIZE_MAX)
		return false;
	return true;
}

static size_t ring_memsize(size_t header, uint32_t capacity, uint32_t esize)
{
	if (!ring_geometry_valid(capacity, esize))
		return 0;
	size_t bytes = header + (size_t)capacity * esize;
	/* round up so aligned_alloc() accepts it */
	return (bytes + DP_RING_ALIGN - 1) / DP_RING_ALIGN * DP_RING_ALIGN;
}

size_t dp_spsc_memsize(uint32_t capacity, uint32_t esize)
{
	return ring_memsize(sizeof(struct dp_spsc), capacity, esize);
}

size_t dp_ring_memsize(uint32_t capacity, uint32_t esize)
{
	return ring_memsize(sizeof(struct dp_ring), capacity, esize);
}

int dp_spsc_init(struct dp_spsc *r, uint32_t capacity, uint32_t esize)
{
	if (!r || ((uintptr_t)r % DP_RING_ALIGN) || !ring_geometry_valid(capacity, esize))
		return -EINVAL;
	memset(r, 0, sizeof(*r));
	atomic_init(&r->head, 0);
	atomic_init(&r->tail, 0);
	r->mask = capacity - 1;
	r->words = esize / 8;
	r->slots = (uint64_t *)(r + 1);
	return 0;
}

int dp_spsc_new(uint32_t capacity, uint32_t esize, struct dp_spsc **ret_ring)
{
	size_t bytes = dp_spsc_memsize(capacity, esize);

	if (!ret_ring || bytes == 0)
		return -EINVAL;
	struct dp_spsc *r = aligned_alloc(DP_RING_ALIGN, bytes);
	if (!r)
		return -ENOMEM;
	int ret = dp_spsc_init(r, capacity, esize);
	if (ret < 0) {
		free(r);
		return ret;
	}
	*ret_ring = r;
	return 0;
}

void dp_spsc_free(struct dp_spsc *r)
{
	free(r);
}

int dp_ring_init(struct dp_ring *r, uint32_t capacity, uint32_t esize, uint32_t flags)
{
	if (!r || ((uintptr_t)r % DP_RING_ALIGN) || !ring_geometry_valid(capacity, esize) ||
	    flags >= DP_RING_FLAGS_MAX)
		return -EINVAL;
	memset(r, 0, sizeof(*r));
	atomic_init(&r->prod.head, 0);
	atomic_init(&r->prod.tail, 0);
	atomic_init(&r->cons.head, 0);
	atomic_init(&r->cons.tail, 0);
	r->prod.single = !!(flags & DP_RING_SP);
	r->cons.single = !!(flags & DP_RING_SC);
	r->mask = capacity - 1;
	r->words = esize / 8;
	r->flags = flags;
	r->slots = (uint64_t *)(r + 1);
	return 0;
}

int dp_ring_new(uint32_t capacity, uint32_t esize, uint32_t flags, struct dp_ring **ret_ring)
{
	size_t bytes = dp_ring_memsize(capacity, esize);

	if (!ret_ring || bytes == 0 || flags >= DP_RING_FLAGS_MAX)
		return -EINVAL;
	struct dp_ring *r = aligned_alloc(DP_RING_ALIGN, bytes);
	if (!r)
		return -ENOMEM;
	int ret = dp_ring_init(r, capacity, esize, flags);
	if (ret < 0) {
		free(r);
		return ret;
	}
	*ret_ring = r;
	return 0;
}

void dp_ring_free(struct dp_ring *r)
{
	free(r);
}
