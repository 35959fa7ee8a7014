/* SPDX-License-Identifier: MIT */
/*
 * The cpu backend's worker pool: the block-scaled kernels split a product's
 * output rows over it, and so do the fp32 products (OpenBLAS runs on one
 * thread) and the indexer's top-k. A fork's child has the pool but not its
 * threads (fork copies the caller alone): there the caller runs every part
 * itself, and fini has no workers to stop.
 * A job is a generation number under one mutex: the caller publishes fn/arg
 * and bumps gen, workers run fn(arg, tid, n) and count down `pending`; the
 * caller runs tid 0 itself and waits for the count. Between jobs a worker
 * (and the caller, for the count) polls for POOL_SPIN_NS before it sleeps on
 * its condition variable: a decode step hands the pool dozens of products
 * microseconds apart, and on a VM a vCPU that went idle between two of them
 * takes tens of microseconds to wake (without the spin, decode on this
 * 2-vCPU VM ran at 1233-1271 tok/s against 1452-1493 with OpenBLAS's own
 * spinning thread keeping the second vCPU awake). Bounded: a step's end
 * puts the workers to sleep 100 us later, so they steal no cycles from the
 * io thread or another process beyond that.
 */
#include <errno.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "gpu/cpu/qmm-internal.h"

struct worker_arg {
	struct dp_cpu_pool *p;
	int tid;
};

#define POOL_SPIN_NS 100000ull

static inline void pool_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
	__builtin_ia32_pause();
#endif
}

static uint64_t pool_now_ns(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

/* Poll until *v != old (the acquire pairs with the release that changed it)
 * or POOL_SPIN_NS pass; the caller then sleeps under the mutex if need be. */
static void pool_spin(const uint64_t *v, uint64_t old, const bool *stop)
{
	uint64_t t0 = 0;
	for (unsigned i = 0;; i++) {
		if (__atomic_load_n(v, __ATOMIC_ACQUIRE) != old ||
		    __atomic_load_n(stop, __ATOMIC_RELAXED))
			return;
		if ((i & 63) == 0) {
			uint64_t t = pool_now_ns();
			if (!t0)
				t0 = t;
			else if (t - t0 > POOL_SPIN_NS)
				return;
		}
		pool_relax();
	}
}

static void *worker(void *v)
{
	struct worker_arg wa = *(struct worker_arg *)v;
	struct dp_cpu_pool *p = wa.p;
	uint64_t seen = 0;

	free(v);
	for (;;) {
		pool_spin(&p->gen, seen, &p->stop);
		pthread_mutex_lock(&p->mu);
		while (!p->stop && p->gen == seen) {
			p->sleepers++;
			pthread_cond_wait(&p->go, &p->mu);
			p->sleepers--;
		}
		if (p->stop) {
			pthread_mutex_unlock(&p->mu);
			break;
		}
		seen = p->gen;
		void (*fn)(void *, int, int) = p->fn;
		void *arg = p->arg;
		pthread_mutex_unlock(&p->mu);
		fn(arg, wa.tid, p->n);
		pthread_mutex_lock(&p->mu);
		__atomic_store_n(&p->pending, p->pending - 1, __ATOMIC_RELEASE);
		if (p->pending == 0 && p->waiting)
			pthread_cond_signal(&p->done);
		pthread_mutex_unlock(&p->mu);
	}
	return NULL;
}

int dp_cpu_pool_init(struct dp_cpu_pool *p, int n)
{
	*p = (struct dp_cpu_pool){ .n = n < 1 ? 1 : n, .owner = getpid() };
	pthread_mutex_init(&p->mu, NULL);
	pthread_cond_init(&p->go, NULL);
	pthread_cond_init(&p->done, NULL);
	if (p->n == 1)
		return 0;
	p->th = calloc((size_t)p->n - 1, sizeof(*p->th));
	if (!p->th)
		return -ENOMEM;
	for (int i = 1; i < p->n; i++) {
		struct worker_arg *wa = malloc(sizeof(*wa));
		if (wa)
			*wa = (struct worker_arg){ .p = p, .tid = i };
		if (!wa || pthread_create(&p->th[i - 1], NULL, worker, wa)) {
			free(wa);
			p->n = i; /* the ones started are joined by fini */
			dp_cpu_pool_fini(p);
			return -ENOMEM;
		}
	}
	return 0;
}

void dp_cpu_pool_fini(struct dp_cpu_pool *p)
{
	if (p->th && p->owner != getpid()) { /* a fork's child: no workers to stop */
		free(p->th);
		p->th = NULL;
	}
	if (p->th) {
		pthread_mutex_lock(&p->mu);
		__atomic_store_n(&p->stop, true, __ATOMIC_RELAXED);
		pthread_cond_broadcast(&p->go);
		pthread_mutex_unlock(&p->mu);
		for (int i = 1; i < p->n; i++)
			pthread_join(p->th[i - 1], NULL);
		free(p->th);
		p->th = NULL;
	}
	pthread_cond_destroy(&p->go);
	pthread_cond_destroy(&p->done);
	pthread_mutex_destroy(&p->mu);
}

void dp_cpu_pool_run(struct dp_cpu_pool *p, void (*fn)(void *arg, int tid, int n), void *arg)
{
	if (p->n == 1) {
		fn(arg, 0, 1);
		return;
	}
	if (p->owner != getpid()) { /* a fork's child: the caller runs every part */
		for (int t = 0; t < p->n; t++)
			fn(arg, t, p->n);
		return;
	}
	pthread_mutex_lock(&p->mu);
	p->fn = fn;
	p->arg = arg;
	p->pending = p->n - 1;
	__atomic_store_n(&p->gen, p->gen + 1, __ATOMIC_RELEASE);
	if (p->sleepers)
		pthread_cond_broadcast(&p->go);
	pthread_mutex_unlock(&p->mu);
	fn(arg, 0, p->n);
	if (__atomic_load_n(&p->pending, __ATOMIC_ACQUIRE)) {
		uint64_t t0 = pool_now_ns();
		while (__atomic_load_n(&p->pending, __ATOMIC_ACQUIRE) &&
		       pool_now_ns() - t0 < POOL_SPIN_NS)
			pool_relax();
	}
	pthread_mutex_lock(&p->mu);
	p->waiting = true;
	while (p->pending)
		pthread_cond_wait(&p->done, &p->mu);
	p->waiting = false;
	pthread_mutex_unlock(&p->mu);
}
