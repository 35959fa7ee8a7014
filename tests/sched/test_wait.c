/* SPDX-License-Identifier: MIT */
/* sched/wait.h: bounded spin, then sleep; wake only sleepers; no lost wake-ups. */
#include <criterion/criterion.h>
#include <poll.h>
#include <pthread.h>
#include <time.h>
#include <unistd.h>

#include "base/clock.h"
#include "sched/ring.h"
#include "sched/wait.h"

#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
#define PINGPONG_ROUNDS 2000u
#else
#define PINGPONG_ROUNDS 20000u
#endif

static bool ring_nonempty(void *arg)
{
	return !dp_spsc_empty(arg);
}

Test(wait, init_rejects_unknown_kind)
{
	struct dp_waiter w;
	cr_expect_eq(dp_waiter_init(&w, DP_WAITER_KIND_MAX, 0), -EINVAL);
	cr_expect_eq(dp_waiter_init(NULL, DP_WAITER_FUTEX, 0), -EINVAL);
}

Test(wait, wake_without_sleepers_does_not_signal)
{
	struct dp_waiter w;
	cr_assert_eq(dp_waiter_init(&w, DP_WAITER_EVENTFD, 0), 0);
	for (int i = 0; i < 100; i++)
		dp_waiter_wake(&w);
	cr_expect_eq(atomic_load(&w.epoch), 0, "no sleeper: the slow path never ran");
	struct pollfd p = { .fd = dp_waiter_fd(&w), .events = POLLIN };
	cr_expect_eq(poll(&p, 1, 0), 0, "eventfd was not written");
	dp_waiter_fini(&w);
}

Test(wait, wait_returns_at_once_when_ready_and_times_out_when_not)
{
	struct dp_spsc *r;
	struct dp_waiter w;
	uint64_t v = 1;

	cr_assert_eq(dp_spsc_new(4, 8, &r), 0);
	cr_assert_eq(dp_waiter_init(&w, DP_WAITER_FUTEX, 16), 0);
	uint64_t a = dp_clock_ns();
	cr_expect_eq(dp_waiter_wait(&w, ring_nonempty, r, 20 * 1000000), -ETIMEDOUT);
	double ms = (double)(dp_clock_ns() - a) / 1e6;
	cr_expect_geq(ms, 19.0, "slept until the timeout (%.1f ms)", ms);
	cr_expect_geq(atomic_load(&w.n_sleeps), 1, "it slept instead of spinning");
	cr_expect_eq(atomic_load(&w.sleepers), 0, "announcement ended");
	dp_spsc_enqueue(r, &v);
	cr_expect_eq(dp_waiter_wait(&w, ring_nonempty, r, 0), 0);
	dp_waiter_fini(&w);
	dp_spsc_free(r);
}

struct pingpong {
	struct dp_spsc *to_b, *to_a;
	struct dp_waiter wa, wb;
	_Atomic uint32_t timeouts;
};

static bool to_b_ready(void *arg)
{
	struct pingpong *pp = arg;
	return !dp_spsc_empty(pp->to_b);
}

static bool to_a_ready(void *arg)
{
	struct pingpong *pp = arg;
	return !dp_spsc_empty(pp->to_a);
}

static void *pong(void *arg)
{
	struct pingpong *pp = arg;
	uint64_t v;
	for (uint32_t i = 0; i < PINGPONG_ROUNDS; i++) {
		/* 2 s: far longer than any real wake-up; a timeout is a lost wake */
		if (dp_waiter_wait(&pp->wb, to_b_ready, pp, 2000000000LL) < 0) {
			atomic_fetch_add(&pp->timeouts, 1);
			return NULL;
		}
		cr_assert_eq(dp_spsc_dequeue(pp->to_b, &v), 0);
		cr_assert_eq(v, i);
		cr_assert_eq(dp_spsc_enqueue(pp->to_a, &v), 0);
		dp_waiter_wake(&pp->wa);
	}
	return NULL;
}

static void run_pingpong(enum dp_waiter_kind kind, uint32_t spin)
{
	struct pingpong pp = { 0 };
	pthread_t t;
	uint64_t v;

	cr_assert_eq(dp_spsc_new(4, 8, &pp.to_b), 0);
	cr_assert_eq(dp_spsc_new(4, 8, &pp.to_a), 0);
	cr_assert_eq(dp_waiter_init(&pp.wa, kind, spin), 0);
	cr_assert_eq(dp_waiter_init(&pp.wb, kind, spin), 0);
	cr_assert_eq(pthread_create(&t, NULL, pong, &pp), 0);
	for (uint64_t i = 0; i < PINGPONG_ROUNDS; i++) {
		cr_assert_eq(dp_spsc_enqueue(pp.to_b, &i), 0);
		dp_waiter_wake(&pp.wb);
		if (dp_waiter_wait(&pp.wa, to_a_ready, &pp, 2000000000LL) < 0) {
			atomic_fetch_add(&pp.timeouts, 1);
			break;
		}
		cr_assert_eq(dp_spsc_dequeue(pp.to_a, &v), 0);
		cr_assert_eq(v, i);
	}
	pthread_join(t, NULL);
	cr_expect_eq(atomic_load(&pp.timeouts), 0, "a wake-up was lost");
	dp_waiter_fini(&pp.wa);
	dp_waiter_fini(&pp.wb);
	dp_spsc_free(pp.to_a);
	dp_spsc_free(pp.to_b);
}

/* spin 1: nearly every wait sleeps, so every wake races a sleeper. */
Test(wait, futex_pingpong_never_loses_a_wakeup)
{
	run_pingpong(DP_WAITER_FUTEX, 1);
}

Test(wait, eventfd_pingpong_never_loses_a_wakeup)
{
	run_pingpong(DP_WAITER_EVENTFD, 1);
}

Test(wait, spinning_pingpong_never_loses_a_wakeup)
{
	run_pingpong(DP_WAITER_FUTEX, 0);
}

Test(wait, eventfd_becomes_readable_for_an_announced_sleeper)
{
	struct dp_waiter w;
	cr_assert_eq(dp_waiter_init(&w, DP_WAITER_EVENTFD, 0), 0);
	dp_waiter_prepare(&w); /* as a thread about to epoll_wait would */
	dp_waiter_wake(&w);
	struct pollfd p = { .fd = dp_waiter_fd(&w), .events = POLLIN };
	cr_expect_eq(poll(&p, 1, 1000), 1, "the eventfd woke the poller");
	dp_waiter_consume(&w);
	cr_expect_eq(poll(&p, 1, 0), 0, "consumed");
	cr_expect_eq(atomic_load(&w.sleepers), 0);
	dp_waiter_fini(&w);
}
