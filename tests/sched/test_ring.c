/* SPDX-License-Identifier: MIT */
/* Semantics and stress tests of sched/ring.h (SPSC and MPMC rings). */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdlib.h>

#include "sched/ring.h"

#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
#define STRESS_ITEMS 20000u /* sanitizers slow every access down ~10x */
#else
#define STRESS_ITEMS 200000u
#endif

/* ---- geometry ----------------------------------------------------------- */

Test(ring, init_rejects_bad_geometry)
{
	struct dp_spsc *s = NULL;
	struct dp_ring *r = NULL;

	cr_expect_eq(dp_spsc_new(0, 8, &s), -EINVAL);
	cr_expect_eq(dp_spsc_new(1, 8, &s), -EINVAL);
	cr_expect_eq(dp_spsc_new(48, 8, &s), -EINVAL, "capacity must be a power of two");
	cr_expect_eq(dp_spsc_new(64, 12, &s), -EINVAL, "element size must be a multiple of 8");
	cr_expect_eq(dp_spsc_new(64, 0, &s), -EINVAL);
	cr_expect_eq(dp_spsc_new(64, DP_RING_ESIZE_MAX + 8, &s), -EINVAL);
	cr_expect_eq(dp_spsc_new(DP_RING_CAPACITY_MAX * 2u, 8, &s), -EINVAL);
	cr_expect_null(s, "output untouched on failure");
	cr_expect_eq(dp_ring_new(64, 8, DP_RING_FLAGS_MAX, &r), -EINVAL, "unknown flags");
	cr_expect_eq(dp_ring_new(100, 8, 0, &r), -EINVAL);
	cr_expect_null(r);
	cr_expect_eq(dp_spsc_memsize(3, 8), 0);
	cr_expect_eq(dp_ring_memsize(64, 7), 0);
}

Test(ring, init_rejects_misaligned_memory)
{
	size_t bytes = dp_spsc_memsize(16, 8);
	unsigned char *mem = aligned_alloc(DP_RING_ALIGN, bytes + DP_RING_ALIGN);

	cr_assert_not_null(mem);
	cr_expect_eq(dp_spsc_init((struct dp_spsc *)(mem + 64), 16, 8), -EINVAL);
	cr_expect_eq(dp_ring_init((struct dp_ring *)(mem + 8), 16, 8, 0), -EINVAL);
	cr_expect_eq(dp_spsc_init((struct dp_spsc *)mem, 16, 8), 0);
	free(mem);
}

/* A failed new leaves NULL behind, and cleanup paths free it. */
Test(ring, free_accepts_null_and_rings_made_after_work)
{
	struct dp_spsc *s = NULL;
	struct dp_ring *r = NULL;
	uint64_t v = 0;

	dp_spsc_free(NULL);
	dp_ring_free(NULL);
	cr_assert_eq(dp_spsc_new(4, 8, &s), 0);
	cr_assert_eq(dp_ring_new(4, 8, 0, &r), 0);
	cr_expect_eq(dp_spsc_enqueue(s, &(uint64_t){7}), 0);
	cr_expect_eq(dp_spsc_dequeue(s, &v), 0);
	cr_expect_eq(v, 7);
	cr_expect_eq(dp_ring_enqueue(r, &(uint64_t){9}), 0);
	cr_expect_eq(dp_ring_dequeue(r, &v), 0);
	cr_expect_eq(v, 9);
	dp_spsc_free(s);
	dp_ring_free(r);
}

/* ---- SPSC, one thread --------------------------------------------------- */

Test(ring, spsc_single_items_come_out_in_order_and_report_full_and_empty)
{
	struct dp_spsc *r;
	uint64_t v;

	cr_assert_eq(dp_spsc_new(8, 8, &r), 0);
	cr_expect_eq(dp_spsc_capacity(r), 8);
	cr_expect(dp_spsc_empty(r));
	cr_expect_eq(dp_spsc_dequeue(r, &v), -EAGAIN, "empty ring");
	for (uint64_t i = 0; i < 8; i++)
		cr_assert_eq(dp_spsc_enqueue(r, &i), 0);
	cr_expect_eq(dp_spsc_count(r), 8);
	v = 99;
	cr_expect_eq(dp_spsc_enqueue(r, &v), -ENOBUFS, "full ring (all slots usable)");
	for (uint64_t i = 0; i < 8; i++) {
		cr_assert_eq(dp_spsc_dequeue(r, &v), 0);
		cr_expect_eq(v, i);
	}
	cr_expect_eq(dp_spsc_dequeue(r, &v), -EAGAIN);
	dp_spsc_free(r);
}

Test(ring, spsc_wraps_around_the_32bit_index_space_and_the_slots)
{
	struct dp_spsc *r;
	uint64_t in[5], out[5], next_in = 0, next_out = 0;

	cr_assert_eq(dp_spsc_new(8, 8, &r), 0);
	/* Start the indices just below 2^32 so they overflow during the test. */
	atomic_store(&r->head, UINT32_MAX - 20);
	atomic_store(&r->tail, UINT32_MAX - 20);
	r->tail_cache = r->head_cache = UINT32_MAX - 20;
	for (int round = 0; round < 1000; round++) {
		for (int i = 0; i < 5; i++)
			in[i] = next_in++;
		cr_assert_eq(dp_spsc_enqueue_burst(r, in, 5), 5);
		cr_assert_eq(dp_spsc_dequeue_burst(r, out, 5), 5);
		for (int i = 0; i < 5; i++)
			cr_assert_eq(out[i], next_out++, "round %d item %d", round, i);
	}
	cr_expect(dp_spsc_empty(r));
	dp_spsc_free(r);
}

Test(ring, spsc_burst_moves_what_fits_and_bulk_moves_all_or_nothing)
{
	struct dp_spsc *r;
	uint64_t buf[16], out[16];

	for (int i = 0; i < 16; i++)
		buf[i] = 100 + i;
	cr_assert_eq(dp_spsc_new(16, 8, &r), 0);
	cr_expect_eq(dp_spsc_enqueue_burst(r, buf, 0), 0, "empty burst is a no-op");
	cr_expect_eq(dp_spsc_enqueue_burst(r, buf, 10), 10);
	cr_expect_eq(dp_spsc_enqueue_bulk(r, buf, 7), 0, "7 > 6 free: bulk moves nothing");
	cr_expect_eq(dp_spsc_count(r), 10);
	cr_expect_eq(dp_spsc_enqueue_burst(r, buf + 10, 7), 6, "burst fills the 6 free slots");
	cr_expect_eq(dp_spsc_enqueue_burst(r, buf, 1), 0);
	cr_expect_eq(dp_spsc_dequeue_bulk(r, out, 17), 0, "more than present: bulk takes nothing");
	cr_expect_eq(dp_spsc_dequeue_burst(r, out, 17), 16);
	for (int i = 0; i < 16; i++)
		cr_expect_eq(out[i], (uint64_t)(100 + i));
	cr_expect_eq(dp_spsc_dequeue_burst(r, out, 4), 0);
	dp_spsc_free(r);
}

Test(ring, spsc_carries_multiword_elements_across_the_wrap)
{
	struct elem {
		uint64_t a, b, c;
	} in[3], out[3];
	struct dp_spsc *r;

	cr_assert_eq(dp_spsc_new(4, sizeof(struct elem), &r), 0);
	for (uint64_t round = 0; round < 50; round++) {
		for (uint64_t i = 0; i < 3; i++)
			in[i] = (struct elem){ round, i, round * 1000 + i };
		cr_assert_eq(dp_spsc_enqueue_bulk(r, in, 3), 3);
		cr_assert_eq(dp_spsc_dequeue_bulk(r, out, 3), 3);
		cr_assert_arr_eq(in, out, sizeof(in), "round %lu", (unsigned long)round);
	}
	dp_spsc_free(r);
}

/* ---- MPMC, one thread, every flag combination ------------------------------ */

Test(ring, mpmc_single_thread_semantics_hold_for_every_flag_combination)
{
	for (uint32_t flags = 0; flags < DP_RING_FLAGS_MAX; flags++) {
		struct dp_ring *r;
		uint64_t buf[32], out[32], v;

		cr_assert_eq(dp_ring_new(16, 8, flags, &r), 0);
		cr_expect_eq(dp_ring_dequeue(r, &v), -EAGAIN, "flags %u", flags);
		for (int i = 0; i < 32; i++)
			buf[i] = i;
		cr_expect_eq(dp_ring_enqueue_bulk(r, buf, 17), 0, "flags %u", flags);
		cr_expect_eq(dp_ring_enqueue_burst(r, buf, 20), 16, "flags %u", flags);
		cr_expect_eq(dp_ring_enqueue(r, &buf[0]), -ENOBUFS, "flags %u", flags);
		cr_expect_eq(dp_ring_count(r), 16);
		cr_expect_eq(dp_ring_dequeue(r, &v), 0);
		cr_expect_eq(v, 0);
		cr_expect_eq(dp_ring_dequeue_bulk(r, out, 16), 0, "only 15 left");
		cr_expect_eq(dp_ring_dequeue_burst(r, out, 32), 15);
		for (int i = 0; i < 15; i++)
			cr_expect_eq(out[i], (uint64_t)i + 1, "flags %u", flags);
		/* now head and tail sit mid-ring: wrap the slots */
		for (int round = 0; round < 100; round++) {
			cr_assert_eq(dp_ring_enqueue_bulk(r, buf, 11), 11);
			cr_assert_eq(dp_ring_dequeue_bulk(r, out, 11), 11);
			cr_assert_arr_eq(buf, out, 11 * sizeof(uint64_t));
		}
		cr_expect(dp_ring_empty(r));
		dp_ring_free(r);
	}
}

/* ---- multi-thread stress ------------------------------------------------ */

/* An item names its producer and its per-producer sequence number. */
#define ITEM(p, seq) (((uint64_t)(p) << 40) | (seq))
#define ITEM_PRODUCER(x) ((uint32_t)((x) >> 40))
#define ITEM_SEQ(x) ((x) & ((1ull << 40) - 1))
#define MAX_THREADS 8

struct stress {
	struct dp_ring *ring; /* MPMC case */
	struct dp_spsc *spsc; /* SPSC case */
	uint32_t producers, consumers, burst;
	uint32_t items; /* per producer */
	_Atomic uint64_t *seen; /* bitmap per producer: delivered items */
	_Atomic uint64_t consumed;
	_Atomic uint32_t duplicates, disorder, corrupt;
};

struct worker {
	struct stress *s;
	uint32_t id;
};

static uint32_t stress_put(struct stress *s, const uint64_t *v, uint32_t n)
{
	return s->spsc ? dp_spsc_enqueue_burst(s->spsc, v, n) : dp_ring_enqueue_burst(s->ring, v, n);
}

static uint32_t stress_get(struct stress *s, uint64_t *v, uint32_t n)
{
	return s->spsc ? dp_spsc_dequeue_burst(s->spsc, v, n) : dp_ring_dequeue_burst(s->ring, v, n);
}

static void *stress_producer(void *arg)
{
	struct worker *w = arg;
	struct stress *s = w->s;
	uint64_t buf[64];
	uint32_t seq = 0;

	while (seq < s->items) {
		uint32_t n = 0;
		/* vary the burst size so partial bursts and wraps all happen */
		uint32_t want = 1 + (seq * 7 + w->id) % s->burst;
		for (; n < want && seq + n < s->items; n++)
			buf[n] = ITEM(w->id, seq + n);
		uint32_t done = 0;
		while (done < n) {
			uint32_t k = stress_put(s, buf + done, n - done);
			if (k == 0)
				sched_yield();
			done += k;
		}
		seq += n;
	}
	return NULL;
}

static void *stress_consumer(void *arg)
{
	struct worker *w = arg;
	struct stress *s = w->s;
	uint64_t buf[64];
	uint64_t last[MAX_THREADS];
	uint64_t total = (uint64_t)s->producers * s->items;

	for (uint32_t p = 0; p < MAX_THREADS; p++)
		last[p] = UINT64_MAX;
	while (atomic_load(&s->consumed) < total) {
		uint32_t n = stress_get(s, buf, 1 + w->id % s->burst + (s->burst > 1));
		if (n == 0) {
			sched_yield();
			continue;
		}
		for (uint32_t i = 0; i < n; i++) {
			uint32_t p = ITEM_PRODUCER(buf[i]);
			uint64_t seq = ITEM_SEQ(buf[i]);
			if (p >= s->producers || seq >= s->items) {
				atomic_fetch_add(&s->corrupt, 1);
				continue;
			}
			/* One consumer sees each producer's items in that
			 * producer's order (the ring is FIFO). */
			if (last[p] != UINT64_MAX && seq <= last[p])
				atomic_fetch_add(&s->disorder, 1);
			last[p] = seq;
			uint64_t bit = 1ull << (seq % 64);
			uint64_t old = atomic_fetch_or(&s->seen[(size_t)p * (s->items / 64 + 1) + seq / 64], bit);
			if (old & bit)
				atomic_fetch_add(&s->duplicates, 1);
		}
		atomic_fetch_add(&s->consumed, n);
	}
	return NULL;
}

static void run_stress(uint32_t producers, uint32_t consumers, uint32_t burst, uint32_t flags, bool spsc)
{
	struct stress s = { .producers = producers, .consumers = consumers, .burst = burst,
			    .items = STRESS_ITEMS };
	size_t words = (size_t)producers * (s.items / 64 + 1);
	pthread_t th[2 * MAX_THREADS];
	struct worker w[2 * MAX_THREADS];

	cr_assert(producers <= MAX_THREADS && consumers <= MAX_THREADS && burst <= 64);
	s.seen = calloc(words, sizeof(*s.seen));
	cr_assert_not_null(s.seen);
	if (spsc)
		cr_assert_eq(dp_spsc_new(256, 8, &s.spsc), 0);
	else
		cr_assert_eq(dp_ring_new(256, 8, flags, &s.ring), 0);

	uint32_t nt = 0;
	for (uint32_t i = 0; i < consumers; i++, nt++) {
		w[nt] = (struct worker){ &s, i };
		cr_assert_eq(pthread_create(&th[nt], NULL, stress_consumer, &w[nt]), 0);
	}
	for (uint32_t i = 0; i < producers; i++, nt++) {
		w[nt] = (struct worker){ &s, i };
		cr_assert_eq(pthread_create(&th[nt], NULL, stress_producer, &w[nt]), 0);
	}
	for (uint32_t i = 0; i < nt; i++)
		pthread_join(th[i], NULL);

	cr_expect_eq(atomic_load(&s.corrupt), 0, "items that no producer made");
	cr_expect_eq(atomic_load(&s.duplicates), 0, "items delivered twice");
	cr_expect_eq(atomic_load(&s.disorder), 0, "items out of their producer's order");
	cr_expect_eq(atomic_load(&s.consumed), (uint64_t)producers * s.items);
	for (uint32_t p = 0; p < producers; p++)
		for (uint32_t seq = 0; seq < s.items; seq++) {
			uint64_t word = atomic_load(&s.seen[(size_t)p * (s.items / 64 + 1) + seq / 64]);
			if (!(word & (1ull << (seq % 64)))) {
				cr_assert_fail("item %u of producer %u was never delivered", seq, p);
			}
		}
	if (spsc)
		cr_expect(dp_spsc_empty(s.spsc));
	else
		cr_expect(dp_ring_empty(s.ring));
	dp_spsc_free(s.spsc);
	dp_ring_free(s.ring);
	free(s.seen);
}

Test(ring_stress, spsc_delivers_each_item_once_in_order_single_items)
{
	run_stress(1, 1, 1, 0, true);
}

Test(ring_stress, spsc_delivers_each_item_once_in_order_bursts)
{
	run_stress(1, 1, 32, 0, true);
}

Test(ring_stress, mpmc_delivers_each_item_once_keeping_producer_order)
{
	run_stress(4, 3, 1, 0, false);
}

Test(ring_stress, mpmc_bursts_deliver_each_item_once_keeping_producer_order)
{
	run_stress(4, 4, 32, 0, false);
}

Test(ring_stress, mpsc_delivers_each_item_once_keeping_producer_order)
{
	run_stress(6, 1, 16, DP_RING_SC, false);
}

Test(ring_stress, spmc_delivers_each_item_once)
{
	run_stress(1, 4, 8, DP_RING_SP, false);
}

Test(ring_stress, ring_with_both_sides_single_matches_spsc)
{
	run_stress(1, 1, 32, DP_RING_SP | DP_RING_SC, false);
}
