/* SPDX-License-Identifier: MIT */
/*
 * sched/wait.h — let an idle consumer sleep, and wake it only if it sleeps.
 *
 * An event count: the consumer spins a bounded number of times on its
 * condition (usually "my ring is not empty"), then announces itself as a
 * sleeper, re-checks the condition and sleeps on a futex word (or an eventfd,
 * when it also waits on other fds through epoll/io_uring). A producer calls
 * dp_waiter_wake() after publishing; that costs one atomic read-modify-write
 * on a line the consumer rarely writes, and a system call only when a
 * consumer is actually asleep.
 *
 * No lost wake-up: the consumer increments `sleepers` (a read-modify-write)
 * before its re-check, and the producer performs a read-modify-write on
 * `sleepers` after its publish. The two RMWs are totally ordered: either the
 * producer's comes second and sees the sleeper (and wakes it), or the
 * consumer's comes second, synchronizes with the producer's release, and its
 * re-check sees the published item.
 *
 * Who may call what: dp_waiter_wake from any thread; prepare/sleep/cancel and
 * dp_waiter_wait from the waiting thread(s).
 */
#ifndef DP_SCHED_WAIT_H
#define DP_SCHED_WAIT_H

#include <stdalign.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "sched/ring.h"

enum dp_waiter_kind {
	DP_WAITER_FUTEX,   /* sleep on a futex word: cheapest */
	DP_WAITER_EVENTFD, /* sleep on an eventfd, which can also sit in an epoll set */
	DP_WAITER_KIND_MAX,
};

#define DP_WAITER_SPIN_DEFAULT 2048u

struct dp_waiter {
	/* Futex word, bumped by a waker that found sleepers. */
	alignas(DP_RING_ALIGN) _Atomic uint32_t epoch;
	_Atomic uint32_t sleepers;
	/* Read-mostly. */
	alignas(DP_RING_ALIGN) int efd; /* -1 unless DP_WAITER_EVENTFD */
	uint32_t spin;			/* polls before sleeping */
	enum dp_waiter_kind kind;
	/* Statistics, written by waiters only (relaxed). */
	_Atomic uint64_t n_sleeps;
};

/* spin: how many times dp_waiter_wait polls before sleeping (0: default). */
int dp_waiter_init(struct dp_waiter *w, enum dp_waiter_kind kind, uint32_t spin);
void dp_waiter_fini(struct dp_waiter *w);

/* The eventfd to put in an epoll set (DP_WAITER_EVENTFD), else -1. */
static inline int dp_waiter_fd(const struct dp_waiter *w)
{
	return w->efd;
}

/* Announce an intent to sleep; returns the key for dp_waiter_sleep. The
 * caller must re-check its condition after this and either sleep or cancel. */
uint32_t dp_waiter_prepare(struct dp_waiter *w);
/* Sleep until woken, the timeout passes (timeout_ns < 0: none) or a signal.
 * Ends the announcement. Returns 0, -ETIMEDOUT or -EINTR. */
int dp_waiter_sleep(struct dp_waiter *w, uint32_t key, int64_t timeout_ns);
/* End an announcement without sleeping (the re-check found work). */
void dp_waiter_cancel(struct dp_waiter *w);
/* For eventfd waiters woken through epoll: consume the eventfd's count and
 * end the announcement. */
void dp_waiter_consume(struct dp_waiter *w);

/* Wake every sleeper, if any. Call after publishing work. */
void dp_waiter_wake_slow(struct dp_waiter *w);
static inline void dp_waiter_wake(struct dp_waiter *w)
{
	/* seq_cst RMW: ordered after the caller's publish (see the header
	 * comment); reads the latest sleeper count. */
	if (atomic_fetch_add_explicit(&w->sleepers, 0, memory_order_seq_cst) != 0)
		dp_waiter_wake_slow(w);
}

/* Spin, then sleep, until ready(arg) returns true or the timeout passes.
 * Returns 0, or -ETIMEDOUT. */
int dp_waiter_wait(struct dp_waiter *w, bool (*ready)(void *arg), void *arg, int64_t timeout_ns);

#endif /* DP_SCHED_WAIT_H */
