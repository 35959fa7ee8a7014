/* SPDX-License-Identifier: MIT */
/*
 * sched/ring.h — bounded lock-free rings that couple dualpathd's threads.
 *
 * Two ring types, both with power-of-two capacity and fixed-size elements
 * (a multiple of 8 bytes, copied by value):
 *
 *   struct dp_spsc   one producer thread, one consumer thread. Each side
 *                    keeps a private copy of the other side's index and only
 *                    reloads it when the copy says "full" / "empty", so in
 *                    steady state a burst costs one shared-line read at most
 *                    and exactly one publishing store.
 *
 *   struct dp_ring   many producers and/or many consumers (MPMC), or one of
 *                    either side (DP_RING_SP / DP_RING_SC flags make it MPSC,
 *                    SPMC or SPSC). Each side is a head/tail pair: a thread
 *                    reserves slots by moving the head (CAS when shared),
 *                    copies, then publishes by moving the tail in
 *                    reservation order.
 *
 * Calls never block and never allocate. Burst calls move as many elements as
 * fit (0..n) and return the count; bulk calls move all n or none. Single-item
 * calls return 0, or -ENOBUFS when full / -EAGAIN when empty.
 *
 * Who may call what:
 *   dp_spsc_enqueue*  one producer thread at a time (the same thread, or
 *                     handed over with external synchronization).
 *   dp_spsc_dequeue*  one consumer thread at a time, likewise.
 *   dp_ring_enqueue*  any thread, unless DP_RING_SP: then one producer.
 *   dp_ring_dequeue*  any thread, unless DP_RING_SC: then one consumer.
 *   *_count, *_empty  any thread; the answer is a snapshot.
 *   init/new/free     no concurrent users.
 *
 * Layout rules (checked by _Static_assert below):
 *   - every index written by one side lives on its own DP_RING_ALIGN (128 B)
 *     block: its cache line plus the adjacent line that the spatial
 *     ("adjacent-line") prefetcher pulls in pairs, so a producer's store never
 *     invalidates the consumer's line and vice versa;
 *   - the read-mostly geometry (mask, element size) is on a block of its own;
 *   - element slots start on a DP_RING_ALIGN boundary right after the header.
 *
 * Memory-ordering rules: every shared index is published with a release
 * store and read by the other side with an acquire load; each pair is
 * commented where it occurs. No standalone fences are used (ThreadSanitizer
 * models acquire/release on the variables, not fences).
 */
#ifndef DP_SCHED_RING_H
#define DP_SCHED_RING_H

#include <errno.h>
#include <sched.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#ifdef __cplusplus
extern "C" {
#endif

#define DP_CACHE_LINE 64
/* One cache line plus its prefetch buddy: the unit that hot shared state is
 * padded to, as DPDK's RTE_CACHE_GUARD does. */
#define DP_RING_ALIGN (2 * DP_CACHE_LINE)
/* Largest element, in bytes. */
#define DP_RING_ESIZE_MAX 256u
/* Largest capacity: indices are free-running uint32_t, so the distance
 * between head and tail must stay below 2^31 to be unambiguous. */
#define DP_RING_CAPACITY_MAX (1u << 30)

/* Pause-spins a publisher waits for an earlier, possibly preempted, reserver
 * before yielding its core (only matters when threads outnumber cores). */
#define DP_RING_PUBLISH_SPIN 1024u

/* ---- barrier helpers -------------------------------------------------- */

/* Publish an index: all writes to slots before it become visible to a thread
 * that reads the new index with dp_ring_load_acquire(). */
static inline void dp_ring_store_release(_Atomic uint32_t *p, uint32_t v)
{
	atomic_store_explicit(p, v, memory_order_release);
}

/* Observe an index published by the other side: slot writes (or slot reads,
 * for a tail) made before the matching release are complete. */
static inline uint32_t dp_ring_load_acquire(_Atomic uint32_t *p)
{
	return atomic_load_explicit(p, memory_order_acquire);
}

/* Read an index only this thread writes (no ordering needed). */
static inline uint32_t dp_ring_load_own(_Atomic uint32_t *p)
{
	return atomic_load_explicit(p, memory_order_relaxed);
}

/* Tell the core we are spinning (frees the sibling hyperthread, saves power). */
static inline void dp_cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
	__builtin_ia32_pause();
#elif defined(__aarch64__)
	__asm__ __volatile__("yield" ::: "memory");
#else
	__asm__ __volatile__("" ::: "memory");
#endif
}

/* ---- slot copy (shared by both ring types) ----------------------------- */

/* Copy n elements of `words` 8-byte words into a ring of `mask+1` slots
 * starting at index `idx`, wrapping once if needed. */
static inline void dp_ring_copy_in(uint64_t *slots, uint32_t mask, uint32_t words,
				   uint32_t idx, const void *objs, uint32_t n)
{
	const uint64_t *src = (const uint64_t *)objs;
	uint32_t first = idx & mask;
	uint32_t size = mask + 1;
	uint32_t n1 = n <= size - first ? n : size - first;

	if (words == 1) {
		for (uint32_t i = 0; i < n1; i++)
			slots[first + i] = src[i];
		for (uint32_t i = n1; i < n; i++)
			slots[i - n1] = src[i];
		return;
	}
	memcpy(slots + (size_t)first * words, src, (size_t)n1 * words * 8);
	if (n1 < n)
		memcpy(slots, src + (size_t)n1 * words, (size_t)(n - n1) * words * 8);
}

static inline void dp_ring_copy_out(const uint64_t *slots, uint32_t mask, uint32_t words,
				    uint32_t idx, void *objs, uint32_t n)
{
	uint64_t *dst = (uint64_t *)objs;
	uint32_t first = idx & mask;
	uint32_t size = mask + 1;
	uint32_t n1 = n <= size - first ? n : size - first;

	if (words == 1) {
		for (uint32_t i = 0; i < n1; i++)
			dst[i] = slots[first + i];
		for (uint32_t i = n1; i < n; i++)
			dst[i] = slots[i - n1];
		return;
	}
	memcpy(dst, slots + (size_t)first * words, (size_t)n1 * words * 8);
	if (n1 < n)
		memcpy(dst + (size_t)n1 * words, slots, (size_t)(n - n1) * words * 8);
}

/* ======================================================================== */
/* SPSC                                                                     */
/* ======================================================================== */

struct dp_spsc {
	/* Producer block: written by the producer only. */
	alignas(DP_RING_ALIGN) _Atomic uint32_t head; /* next index to fill */
	uint32_t tail_cache; /* producer's last view of tail; stale is safe
			      * (it only under-reports free space) */

	/* Consumer block: written by the consumer only. */
	alignas(DP_RING_ALIGN) _Atomic uint32_t tail; /* next index to drain */
	uint32_t head_cache; /* consumer's last view of head; stale is safe */

	/* Geometry: written at init, read-only afterwards. */
	alignas(DP_RING_ALIGN) uint32_t mask; /* capacity - 1 */
	uint32_t words;			      /* element size in 8-byte words */
	uint64_t *slots;		      /* (mask+1) * words words */
};

_Static_assert(offsetof(struct dp_spsc, head) % DP_RING_ALIGN == 0, "producer block alignment");
_Static_assert(offsetof(struct dp_spsc, tail) - offsetof(struct dp_spsc, head) >= DP_RING_ALIGN,
	       "producer and consumer indices must not share a cache line or its prefetch buddy");
_Static_assert(offsetof(struct dp_spsc, mask) - offsetof(struct dp_spsc, tail) >= DP_RING_ALIGN,
	       "consumer index must not share a line pair with the geometry");
_Static_assert(sizeof(struct dp_spsc) % DP_RING_ALIGN == 0, "slots start on a fresh line pair");

/* Bytes needed for a ring of `capacity` elements of `esize` bytes (header and
 * slots, one allocation), or 0 if the arguments are invalid. */
size_t dp_spsc_memsize(uint32_t capacity, uint32_t esize);
/* Initialize a ring in caller-provided memory of dp_spsc_memsize() bytes,
 * aligned to DP_RING_ALIGN (e.g. NUMA-local memory from sched/topo).
 * capacity: power of two, 2..DP_RING_CAPACITY_MAX; esize: multiple of 8,
 * 8..DP_RING_ESIZE_MAX. Returns 0 or -EINVAL. */
int dp_spsc_init(struct dp_spsc *r, uint32_t capacity, uint32_t esize);
/* Allocate and initialize; *ret_ring is untouched on failure. */
int dp_spsc_new(uint32_t capacity, uint32_t esize, struct dp_spsc **ret_ring);
void dp_spsc_free(struct dp_spsc *r);

static inline uint32_t dp_spsc_capacity(const struct dp_spsc *r)
{
	return r->mask + 1;
}

/* Producer side. Moves up to n elements (bulk: exactly n or none). */
static inline uint32_t dp_spsc__enqueue(struct dp_spsc *r, const void *objs, uint32_t n, bool bulk)
{
	uint32_t head = dp_ring_load_own(&r->head);
	uint32_t cap = r->mask + 1;
	uint32_t free_slots = cap - (head - r->tail_cache);

	if (free_slots < n) {
		/* acquire: pairs with the consumer's release of tail in
		 * dp_spsc__dequeue; the consumer has finished reading every slot
		 * below tail, so we may overwrite them. */
		r->tail_cache = dp_ring_load_acquire(&r->tail);
		free_slots = cap - (head - r->tail_cache);
		if (free_slots < n) {
			if (bulk)
				return 0;
			n = free_slots;
		}
	}
	if (n == 0)
		return 0;
	dp_ring_copy_in(r->slots, r->mask, r->words, head, objs, n);
	/* release: pairs with the consumer's acquire of head; the slot writes
	 * above are visible before the new head is. One publish per burst. */
	dp_ring_store_release(&r->head, head + n);
	return n;
}

/* Consumer side. Moves up to n elements (bulk: exactly n or none). */
static inline uint32_t dp_spsc__dequeue(struct dp_spsc *r, void *objs, uint32_t n, bool bulk)
{
	uint32_t tail = dp_ring_load_own(&r->tail);
	uint32_t avail = r->head_cache - tail;

	if (avail < n) {
		/* acquire: pairs with the producer's release of head; slots
		 * below head are fully written. */
		r->head_cache = dp_ring_load_acquire(&r->head);
		avail = r->head_cache - tail;
		if (avail < n) {
			if (bulk)
				return 0;
			n = avail;
		}
	}
	if (n == 0)
		return 0;
	dp_ring_copy_out(r->slots, r->mask, r->words, tail, objs, n);
	/* release: pairs with the producer's acquire of tail; our slot reads
	 * complete before the producer may reuse the slots. */
	dp_ring_store_release(&r->tail, tail + n);
	return n;
}

static inline uint32_t dp_spsc_enqueue_burst(struct dp_spsc *r, const void *objs, uint32_t n)
{
	return dp_spsc__enqueue(r, objs, n, false);
}

static inline uint32_t dp_spsc_enqueue_bulk(struct dp_spsc *r, const void *objs, uint32_t n)
{
	return dp_spsc__enqueue(r, objs, n, true);
}

static inline int dp_spsc_enqueue(struct dp_spsc *r, const void *obj)
{
	return dp_spsc__enqueue(r, obj, 1, true) ? 0 : -ENOBUFS;
}

static inline uint32_t dp_spsc_dequeue_burst(struct dp_spsc *r, void *objs, uint32_t n)
{
	return dp_spsc__dequeue(r, objs, n, false);
}

static inline uint32_t dp_spsc_dequeue_bulk(struct dp_spsc *r, void *objs, uint32_t n)
{
	return dp_spsc__dequeue(r, objs, n, true);
}

static inline int dp_spsc_dequeue(struct dp_spsc *r, void *obj)
{
	return dp_spsc__dequeue(r, obj, 1, true) ? 0 : -EAGAIN;
}

/* Elements in the ring right now (a snapshot; any thread). The consumer's
 * index is read first: both indices only grow, so the difference can
 * over-report by what moved between the two loads, never under-report, and
 * is clamped to the capacity. */
static inline uint32_t dp_spsc_count(struct dp_spsc *r)
{
	uint32_t tail = dp_ring_load_acquire(&r->tail);
	uint32_t head = dp_ring_load_acquire(&r->head);
	uint32_t n = head - tail;
	return n > r->mask + 1 ? r->mask + 1 : n;
}

static inline bool dp_spsc_empty(struct dp_spsc *r)
{
	return dp_spsc_count(r) == 0;
}

/* ======================================================================== */
/* MPMC (with optional single-producer / single-consumer sides)             */
/* ======================================================================== */

enum dp_ring_flags {
	DP_RING_SP = 1u << 0, /* one producer thread: head moves without CAS */
	DP_RING_SC = 1u << 1, /* one consumer thread: head moves without CAS */
	DP_RING_FLAGS_MAX = 1u << 2,
};

/* One side of the ring. Threads of this side reserve [head, head+n) by moving
 * head, fill or drain the slots, and then publish by moving tail from head
 * to head+n once every earlier reservation has published (tail moves in
 * reservation order). The other side reads only tail.
 *
 * head and tail sit on line pairs of their own (unlike rte_ring, which packs
 * them in one line): the other side polls tail, and sharing that line with
 * head would let each poll steal the line between a reservation's CAS and
 * its publish, costing the publisher an extra transfer per burst. */
struct dp_ring_side {
	alignas(DP_RING_ALIGN) _Atomic uint32_t head; /* this side's threads only */
	uint32_t single;			      /* nonzero: one thread, no CAS */
	alignas(DP_RING_ALIGN) _Atomic uint32_t tail; /* read by the other side */
};

_Static_assert(offsetof(struct dp_ring_side, tail) - offsetof(struct dp_ring_side, head) >=
		       DP_RING_ALIGN,
	       "a side's head and tail must not share a line pair");

struct dp_ring {
	alignas(DP_RING_ALIGN) struct dp_ring_side prod;
	alignas(DP_RING_ALIGN) struct dp_ring_side cons;
	alignas(DP_RING_ALIGN) uint32_t mask;
	uint32_t words;
	uint32_t flags;
	uint64_t *slots;
};

_Static_assert(offsetof(struct dp_ring, prod) % DP_RING_ALIGN == 0, "producer side alignment");
_Static_assert(offsetof(struct dp_ring, cons) - offsetof(struct dp_ring, prod) >= DP_RING_ALIGN,
	       "producer and consumer sides must not share a line pair");
_Static_assert(offsetof(struct dp_ring, mask) - offsetof(struct dp_ring, cons) >= DP_RING_ALIGN,
	       "consumer side must not share a line pair with the geometry");
_Static_assert(sizeof(struct dp_ring) % DP_RING_ALIGN == 0, "slots start on a fresh line pair");

size_t dp_ring_memsize(uint32_t capacity, uint32_t esize);
/* As dp_spsc_init; flags is a mask of enum dp_ring_flags. */
int dp_ring_init(struct dp_ring *r, uint32_t capacity, uint32_t esize, uint32_t flags);
int dp_ring_new(uint32_t capacity, uint32_t esize, uint32_t flags, struct dp_ring **ret_ring);
void dp_ring_free(struct dp_ring *r);

static inline uint32_t dp_ring_capacity(const struct dp_ring *r)
{
	return r->mask + 1;
}

/* Reserve up to n slots on `self`, bounded by the other side's tail plus
 * `bound` (capacity for producers, 0 for consumers). Returns the count
 * reserved and the first index in *ret_old. */
static inline uint32_t dp_ring__reserve(struct dp_ring_side *self, struct dp_ring_side *other,
					uint32_t bound, uint32_t n, bool bulk, uint32_t *ret_old)
{
	/* acquire: our head must be read before the other side's tail below,
	 * else a newer head with an older tail could make the distance look
	 * larger than the ring (DPDK's "head before tail" rule). */
	uint32_t old = atomic_load_explicit(&self->head, memory_order_acquire);
	uint32_t want = n;

	for (;;) {
		/* acquire: pairs with the other side's release of its tail in
		 * dp_ring__publish; the slots it released are done with. */
		uint32_t other_tail = dp_ring_load_acquire(&other->tail);
		uint32_t room = bound + other_tail - old;

		n = want;
		if (room < n) {
			if (bulk)
				return 0;
			n = room;
		}
		if (n == 0)
			return 0;
		if (self->single) {
			atomic_store_explicit(&self->head, old + n, memory_order_relaxed);
			break;
		}
		/* Claim [old, old+n). On failure `old` is reloaded with
		 * acquire, for the same head-before-tail reason as above (C11
		 * wants the success order at least as strong; on x86 both are
		 * free). The head publishes no slot data: the tail does. */
		if (atomic_compare_exchange_weak_explicit(&self->head, &old, old + n,
							  memory_order_acquire,
							  memory_order_acquire))
			break;
		dp_cpu_relax();
	}
	*ret_old = old;
	return n;
}

/* Publish [old, old+n) on `self` once the reservations before it have. */
static inline void dp_ring__publish(struct dp_ring_side *self, uint32_t old, uint32_t n)
{
	if (!self->single) {
		/* acquire: pairs with the earlier reserver's release of tail, so
		 * that its slot accesses happen-before our release below and the
		 * other side, acquiring our tail, sees them too. */
		for (uint32_t spins = 0; dp_ring_load_acquire(&self->tail) != old; spins++) {
			/* An earlier reserver was preempted between reserve and
			 * publish: after a bounded spin, give it our core. */
			if (spins >= DP_RING_PUBLISH_SPIN) {
				sched_yield();
				spins = 0;
			} else {
				dp_cpu_relax();
			}
		}
	}
	/* release: pairs with the other side's acquire of this tail in
	 * dp_ring__reserve; our slot writes (producer) or reads (consumer) are
	 * complete before the other side may use those slots. */
	dp_ring_store_release(&self->tail, old + n);
}

static inline uint32_t dp_ring__enqueue(struct dp_ring *r, const void *objs, uint32_t n, bool bulk)
{
	uint32_t old;

	n = dp_ring__reserve(&r->prod, &r->cons, r->mask + 1, n, bulk, &old);
	if (n == 0)
		return 0;
	dp_ring_copy_in(r->slots, r->mask, r->words, old, objs, n);
	dp_ring__publish(&r->prod, old, n);
	return n;
}

static inline uint32_t dp_ring__dequeue(struct dp_ring *r, void *objs, uint32_t n, bool bulk)
{
	uint32_t old;

	n = dp_ring__reserve(&r->cons, &r->prod, 0, n, bulk, &old);
	if (n == 0)
		return 0;
	dp_ring_copy_out(r->slots, r->mask, r->words, old, objs, n);
	dp_ring__publish(&r->cons, old, n);
	return n;
}

static inline uint32_t dp_ring_enqueue_burst(struct dp_ring *r, const void *objs, uint32_t n)
{
	return dp_ring__enqueue(r, objs, n, false);
}

static inline uint32_t dp_ring_enqueue_bulk(struct dp_ring *r, const void *objs, uint32_t n)
{
	return dp_ring__enqueue(r, objs, n, true);
}

static inline int dp_ring_enqueue(struct dp_ring *r, const void *obj)
{
	return dp_ring__enqueue(r, obj, 1, true) ? 0 : -ENOBUFS;
}

static inline uint32_t dp_ring_dequeue_burst(struct dp_ring *r, void *objs, uint32_t n)
{
	return dp_ring__dequeue(r, objs, n, false);
}

static inline uint32_t dp_ring_dequeue_bulk(struct dp_ring *r, void *objs, uint32_t n)
{
	return dp_ring__dequeue(r, objs, n, true);
}

static inline int dp_ring_dequeue(struct dp_ring *r, void *obj)
{
	return dp_ring__dequeue(r, obj, 1, true) ? 0 : -EAGAIN;
}

/* Published elements not yet reserved by a consumer (a snapshot; read in
 * the same order and clamped as dp_spsc_count). */
static inline uint32_t dp_ring_count(struct dp_ring *r)
{
	uint32_t cons = dp_ring_load_acquire(&r->cons.head);
	uint32_t prod = dp_ring_load_acquire(&r->prod.tail);
	uint32_t n = prod - cons;
	return n > r->mask + 1 ? r->mask + 1 : n;
}

static inline bool dp_ring_empty(struct dp_ring *r)
{
	return dp_ring_count(r) == 0;
}

#ifdef __cplusplus
}
#endif
#endif /* DP_SCHED_RING_H */
