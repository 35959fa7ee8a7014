/* SPDX-License-Identifier: MIT */
/*
 * The cpu backend's worker pool: the block-scaled kernels split a product's
 * output rows over it, and so do the fp32 products (OpenBLAS runs on one
 * thread) and the indexer's top-k. A fork's child has the pool but not its
 * threads (fork copies the caller alone): there the caller runs every part
 * itself, and fini has no workers to stop.
 * A job is a generation number under one mutex: the caller publishes fn/arg
 * and bumps gen, workers run fn(arg, tid, n) and count down `pending`; the
 * caller runs tid 0 itself and waits for the count. A mutex and two condition
 * variables rather than spinning: on a shared 2-core machine a spinning
 * worker steals the cycles the caller needs.
 */
#include <errno.h>
#include <stdlib.h>
#include <unistd.h>

#include "gpu/cpu/qmm-internal.h"

struct worker_arg {
	struct dp_cpu_pool *p;
	int tid;
};

static void *worker(void *v)
{
	struct worker_arg wa = *(struct worker_arg *)v;
	struct dp_cpu_pool *p = wa.p;
	uint64_t seen = 0;

	free(v);
	pthread_mutex_lock(&p->mu);
	for (;;) {
		while (!p->stop && p->gen == seen)
			pthread_cond_wait(&p->go, &p->mu);
		if (p->stop)
			break;
		seen = p->gen;
		void (*fn)(void *, int, int) = p->fn;
		void *arg = p->arg;
		pthread_mutex_unlock(&p->mu);
		fn(arg, wa.tid, p->n);
		pthread_mutex_lock(&p->mu);
		if (--p->pending == 0)
			pthread_cond_signal(&p->done);
	}
	pthread_mutex_unlock(&p->mu);
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
		p->stop = true;
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
	p->gen++;
	pthread_cond_broadcast(&p->go);
	pthread_mutex_unlock(&p->mu);
	fn(arg, 0, p->n);
	pthread_mutex_lock(&p->mu);
	while (p->pending)
		pthread_cond_wait(&p->done, &p->mu);
	pthread_mutex_unlock(&p->mu);
}
