/* SPDX-License-Identifier: MIT */
/*
 * bench/ring — items/s and ns per item through our rings, beside DPDK's
 * rte_ring and ConcurrencyKit's ck_ring, measured in the same run.
 *
 * One producer thread and one consumer thread, pinned to different cores
 * (sched/topo), move N pointer-sized items through a ring of 1024 slots in
 * bursts of 1 or 32. Cases:
 *   spsc: dp_spsc        vs rte_ring SP/SC        vs ck_ring spsc
 *   mpmc: dp_ring (MPMC) vs rte_ring MP/MC        vs ck_ring mpmc
 * ck_ring has no burst calls: its "burst 32" is 32 single calls, which is
 * what a user of ck_ring would write. Each case runs REPS times; the best run
 * is reported (the least disturbed by the rest of the machine). The consumer
 * checks the sum of what it received, so a broken ring cannot look fast.
 *
 * Usage: bench-ring [--items N] [--reps R] [--quick]
 */
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <ck_ring.h>
#include <rte_ring.h>

#include "base/clock.h"
#include "base/macros.h"
#include "sched/ring.h"
#include "sched/topo.h"

#define RING_SLOTS 1024u
#define MAX_BURST 32u

enum impl { IMPL_DP, IMPL_RTE, IMPL_CK, IMPL_MAX };
static const char *const impl_name[IMPL_MAX] = { "dualpath", "rte_ring", "ck_ring" };
enum kind { KIND_SPSC, KIND_MPMC, KIND_MAX };
static const char *const kind_name[KIND_MAX] = { "spsc", "mpmc" };

struct bench {
	enum impl impl;
	enum kind kind;
	uint32_t burst;
	uint64_t items;
	int cpu_prod, cpu_cons;
	/* the rings */
	struct dp_spsc *dp_spsc;
	struct dp_ring *dp_ring;
	struct rte_ring *rte;
	struct ck_ring ck;
	struct ck_ring_buffer *ck_buf;
	/* start line and result */
	_Atomic int ready;
	uint64_t sum;
	double seconds;
};

static void pin_or_die(int cpu)
{
	int ret = dp_topo_pin_self(cpu);
	if (ret < 0) {
		fprintf(stderr, "bench-ring: cannot pin to cpu %d: %s\n", cpu, strerror(-ret));
		exit(1);
	}
}

static void start_line(struct bench *b)
{
	atomic_fetch_add(&b->ready, 1);
	while (atomic_load(&b->ready) < 2)
		dp_cpu_relax();
}

/* One enqueue attempt of n items; returns how many went in. Inlined per
 * implementation so no indirect call distorts the figures. */
static inline uint32_t put(struct bench *b, void **objs, uint32_t n)
{
	switch (b->impl) {
	case IMPL_DP:
		return b->kind == KIND_SPSC ? dp_spsc_enqueue_burst(b->dp_spsc, objs, n)
					    : dp_ring_enqueue_burst(b->dp_ring, objs, n);
	case IMPL_RTE:
		return b->kind == KIND_SPSC ? rte_ring_sp_enqueue_burst(b->rte, objs, n, NULL)
					    : rte_ring_mp_enqueue_burst(b->rte, objs, n, NULL);
	default: {
		uint32_t i = 0;
		for (; i < n; i++) {
			bool ok = b->kind == KIND_SPSC ? ck_ring_enqueue_spsc(&b->ck, b->ck_buf, objs[i])
						       : ck_ring_enqueue_mpmc(&b->ck, b->ck_buf, objs[i]);
			if (!ok)
				break;
		}
		return i;
	}
	}
}

static inline uint32_t get(struct bench *b, void **objs, uint32_t n)
{
	switch (b->impl) {
	case IMPL_DP:
		return b->kind == KIND_SPSC ? dp_spsc_dequeue_burst(b->dp_spsc, objs, n)
					    : dp_ring_dequeue_burst(b->dp_ring, objs, n);
	case IMPL_RTE:
		return b->kind == KIND_SPSC ? rte_ring_sc_dequeue_burst(b->rte, objs, n, NULL)
					    : rte_ring_mc_dequeue_burst(b->rte, objs, n, NULL);
	default: {
		uint32_t i = 0;
		for (; i < n; i++) {
			bool ok = b->kind == KIND_SPSC ? ck_ring_dequeue_spsc(&b->ck, b->ck_buf, &objs[i])
						       : ck_ring_dequeue_mpmc(&b->ck, b->ck_buf, &objs[i]);
			if (!ok)
				break;
		}
		return i;
	}
	}
}

static void *producer(void *arg)
{
	struct bench *b = arg;
	void *objs[MAX_BURST];
	uint64_t next = 1;

	pin_or_die(b->cpu_prod);
	start_line(b);
	while (next <= b->items) {
		uint32_t n = b->burst;
		if (b->items - next + 1 < n)
			n = (uint32_t)(b->items - next + 1);
		for (uint32_t i = 0; i < n; i++)
			objs[i] = (void *)(uintptr_t)(next + i);
		uint32_t done = 0;
		while (done < n) {
			uint32_t k = put(b, objs + done, n - done);
			if (!k)
				dp_cpu_relax();
			done += k;
		}
		next += n;
	}
	return NULL;
}

static void *consumer(void *arg)
{
	struct bench *b = arg;
	void *objs[MAX_BURST];
	uint64_t got = 0, sum = 0;

	pin_or_die(b->cpu_cons);
	start_line(b);
	double t0 = dp_clock_s();
	while (got < b->items) {
		uint32_t k = get(b, objs, b->burst);
		if (!k) {
			dp_cpu_relax();
			continue;
		}
		for (uint32_t i = 0; i < k; i++)
			sum += (uintptr_t)objs[i];
		got += k;
	}
	b->seconds = dp_clock_s() - t0;
	b->sum = sum;
	return NULL;
}

static int setup(struct bench *b)
{
	switch (b->impl) {
	case IMPL_DP:
		if (b->kind == KIND_SPSC)
			return dp_spsc_new(RING_SLOTS, sizeof(void *), &b->dp_spsc);
		return dp_ring_new(RING_SLOTS, sizeof(void *), 0, &b->dp_ring);
	case IMPL_RTE: {
		ssize_t bytes = rte_ring_get_memsize(RING_SLOTS);
		if (bytes < 0)
			return (int)bytes;
		b->rte = aligned_alloc(128, ((size_t)bytes + 127) / 128 * 128);
		if (!b->rte)
			return -ENOMEM;
		unsigned flags = b->kind == KIND_SPSC ? RING_F_SP_ENQ | RING_F_SC_DEQ : 0;
		return rte_ring_init(b->rte, "bench", RING_SLOTS, flags);
	}
	default:
		b->ck_buf = aligned_alloc(128, RING_SLOTS * sizeof(*b->ck_buf));
		if (!b->ck_buf)
			return -ENOMEM;
		ck_ring_init(&b->ck, RING_SLOTS);
		return 0;
	}
}

static void teardown(struct bench *b)
{
	dp_spsc_free(b->dp_spsc);
	dp_ring_free(b->dp_ring);
	free(b->rte);
	free(b->ck_buf);
}

/* Best-of-reps seconds for one case. */
static double run_case(enum impl impl, enum kind kind, uint32_t burst, uint64_t items, int reps,
		       int cpu_prod, int cpu_cons)
{
	double best = 1e30;

	for (int r = 0; r < reps; r++) {
		struct bench *b = aligned_alloc(128, (sizeof(*b) + 127) / 128 * 128);
		if (!b) {
			fprintf(stderr, "bench-ring: out of memory\n");
			exit(1);
		}
		memset(b, 0, sizeof(*b));
		*b = (struct bench){ .impl = impl, .kind = kind, .burst = burst, .items = items,
				     .cpu_prod = cpu_prod, .cpu_cons = cpu_cons };
		int ret = setup(b);
		if (ret < 0) {
			fprintf(stderr, "bench-ring: %s %s setup failed: %s\n", impl_name[impl],
				kind_name[kind], strerror(-ret));
			exit(1);
		}
		pthread_t tp, tc;
		pthread_create(&tc, NULL, consumer, b);
		pthread_create(&tp, NULL, producer, b);
		pthread_join(tp, NULL);
		pthread_join(tc, NULL);
		uint64_t want = items * (items + 1) / 2;
		if (b->sum != want) {
			fprintf(stderr, "bench-ring: %s %s burst %u lost or corrupted items\n",
				impl_name[impl], kind_name[kind], burst);
			exit(1);
		}
		if (b->seconds < best)
			best = b->seconds;
		teardown(b);
		free(b);
	}
	return best;
}

int main(int argc, char **argv)
{
	uint64_t items = 20000000;
	int reps = 5;
	static const struct option opts[] = {
		{ "items", required_argument, NULL, 'n' },
		{ "reps", required_argument, NULL, 'r' },
		{ "quick", no_argument, NULL, 'q' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	for (int c; (c = getopt_long(argc, argv, "n:r:qh", opts, NULL)) != -1;) {
		switch (c) {
		case 'n':
			items = strtoull(optarg, NULL, 0);
			break;
		case 'r':
			reps = atoi(optarg);
			break;
		case 'q':
			items = 2000000;
			reps = 2;
			break;
		default:
			fprintf(stderr, "usage: %s [--items N] [--reps R] [--quick]\n", argv[0]);
			return c == 'h' ? 0 : 2;
		}
	}
	if (items == 0 || reps < 1) {
		fprintf(stderr, "bench-ring: --items and --reps must be positive\n");
		return 2;
	}

	struct dp_topo *topo;
	int ret = dp_topo_new(&topo);
	if (ret < 0) {
		fprintf(stderr, "bench-ring: topology discovery failed: %s\n", strerror(-ret));
		return 1;
	}
	/* Two cpus on different physical cores if there are any, else two
	 * hardware threads of one core. */
	const struct dp_topo_pu *pus;
	int n_pus = dp_topo_pus(topo, &pus), cpu_prod = -1, cpu_cons = -1;
	for (int i = 1; i < n_pus && cpu_prod < 0; i++)
		if (pus[i].core != pus[0].core) {
			cpu_prod = pus[0].cpu;
			cpu_cons = pus[i].cpu;
		}
	if (cpu_prod < 0 && n_pus >= 2) {
		cpu_prod = pus[0].cpu;
		cpu_cons = pus[1].cpu;
	}
	dp_topo_free(topo);
	if (cpu_prod < 0) {
		fprintf(stderr, "bench-ring: needs two usable cpus\n");
		return 1;
	}
	printf("bench-ring: %llu items per run, best of %d, ring of %u slots, producer on cpu %d, "
	       "consumer on cpu %d\n", (unsigned long long)items, reps, RING_SLOTS, cpu_prod, cpu_cons);
	printf("%-5s %5s | %12s %8s | %12s %8s | %12s %8s | %9s %9s\n", "ring", "burst", "dualpath",
	       "ns/item", "rte_ring", "ns/item", "ck_ring", "ns/item", "vs rte", "vs ck");

	static const uint32_t bursts[] = { 1, 32 };
	char results[16][256];
	int nres = 0;
	for (int k = 0; k < KIND_MAX; k++) {
		for (size_t bi = 0; bi < DP_ARRAY_SIZE(bursts); bi++) {
			double mips[IMPL_MAX];
			for (int i = 0; i < IMPL_MAX; i++) {
				double s = run_case(i, k, bursts[bi], items, reps, cpu_prod, cpu_cons);
				mips[i] = items / s / 1e6;
			}
			printf("%-5s %5u | %9.1f M/s %8.2f | %9.1f M/s %8.2f | %9.1f M/s %8.2f | %8.2fx %8.2fx\n",
			       kind_name[k], bursts[bi], mips[IMPL_DP], 1e3 / mips[IMPL_DP], mips[IMPL_RTE],
			       1e3 / mips[IMPL_RTE], mips[IMPL_CK], 1e3 / mips[IMPL_CK],
			       mips[IMPL_DP] / mips[IMPL_RTE], mips[IMPL_DP] / mips[IMPL_CK]);
			for (int a = IMPL_RTE; a < IMPL_MAX; a++)
				snprintf(results[nres++], sizeof(results[0]),
					 "RESULT ring_%s_burst%u_vs_%s ours=%.2f anchor=%.2f ratio=%.3f unit=Mitems/s better=higher",
					 kind_name[k], bursts[bi], impl_name[a], mips[IMPL_DP], mips[a],
					 mips[IMPL_DP] / mips[a]);
			fflush(stdout);
		}
	}
	for (int i = 0; i < nres; i++)
		printf("%s\n", results[i]);
	return 0;
}
