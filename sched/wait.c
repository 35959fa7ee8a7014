/* SPDX-License-Identifier: MIT */
#include "sched/wait.h"

#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "base/clock.h"

static int futex_wait(_Atomic uint32_t *word, uint32_t expected, const struct timespec *rel)
{
	return (int)syscall(SYS_futex, (uint32_t *)word, FUTEX_WAIT_PRIVATE, expected, rel, NULL, 0);
}

static void futex_wake_all(_Atomic uint32_t *word)
{
	syscall(SYS_futex, (uint32_t *)word, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
}

int dp_waiter_init(struct dp_waiter *w, enum dp_waiter_kind kind, uint32_t spin)
{
	if (!w || kind >= DP_WAITER_KIND_MAX)
		return -EINVAL;
	atomic_init(&w->epoch, 0);
	atomic_init(&w->sleepers, 0);
	atomic_init(&w->n_sleeps, 0);
	w->kind = kind;
	w->spin = spin ? spin : DP_WAITER_SPIN_DEFAULT;
	w->efd = -1;
	if (kind == DP_WAITER_EVENTFD) {
		w->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
		if (w->efd < 0)
			return -errno;
	}
	return 0;
}

void dp_waiter_fini(struct dp_waiter *w)
{
	if (!w)
		return;
	if (w->efd >= 0)
		close(w->efd);
	w->efd = -1;
}

uint32_t dp_waiter_prepare(struct dp_waiter *w)
{
	/* Read the epoch before announcing: a wake that happens after our
	 * announcement bumps it past this key, so the futex wait below cannot
	 * sleep through it. */
	uint32_t key = atomic_load_explicit(&w->epoch, memory_order_acquire);
	/* seq_cst RMW: pairs with the waker's RMW in dp_waiter_wake (see
	 * wait.h); the caller's re-check comes after it. */
	atomic_fetch_add_explicit(&w->sleepers, 1, memory_order_seq_cst);
	return key;
}

void dp_waiter_cancel(struct dp_waiter *w)
{
	atomic_fetch_sub_explicit(&w->sleepers, 1, memory_order_relaxed);
}

static void eventfd_drain(int fd)
{
	uint64_t v;
	while (read(fd, &v, sizeof(v)) == (ssize_t)sizeof(v))
		;
}

void dp_waiter_consume(struct dp_waiter *w)
{
	if (w->efd >= 0)
		eventfd_drain(w->efd);
	dp_waiter_cancel(w);
}

int dp_waiter_sleep(struct dp_waiter *w, uint32_t key, int64_t timeout_ns)
{
	struct timespec ts, *tsp = NULL;
	int ret = 0;

	if (timeout_ns >= 0) {
		ts.tv_sec = timeout_ns / 1000000000;
		ts.tv_nsec = timeout_ns % 1000000000;
		tsp = &ts;
	}
	atomic_fetch_add_explicit(&w->n_sleeps, 1, memory_order_relaxed);
	if (w->kind == DP_WAITER_FUTEX) {
		if (futex_wait(&w->epoch, key, tsp) < 0) {
			if (errno == ETIMEDOUT)
				ret = -ETIMEDOUT;
			else if (errno == EINTR)
				ret = -EINTR;
			/* EAGAIN: the epoch moved before we slept: woken. */
		}
	} else {
		struct pollfd p = { .fd = w->efd, .events = POLLIN };
		int ms = timeout_ns < 0 ? -1 : (int)((timeout_ns + 999999) / 1000000);
		int n = atomic_load_explicit(&w->epoch, memory_order_acquire) != key ? 1 : poll(&p, 1, ms);
		if (n == 0)
			ret = -ETIMEDOUT;
		else if (n < 0)
			ret = errno == EINTR ? -EINTR : -errno;
		eventfd_drain(w->efd);
	}
	dp_waiter_cancel(w);
	return ret;
}

void dp_waiter_wake_slow(struct dp_waiter *w)
{
	/* release: a sleeper that wakes and re-reads the epoch sees the bump. */
	atomic_fetch_add_explicit(&w->epoch, 1, memory_order_release);
	if (w->kind == DP_WAITER_FUTEX) {
		futex_wake_all(&w->epoch);
	} else {
		uint64_t one = 1;
		/* EAGAIN only if the counter is saturated: a wake is pending anyway. */
		ssize_t n = write(w->efd, &one, sizeof(one));
		(void)n;
	}
}

int dp_waiter_wait(struct dp_waiter *w, bool (*ready)(void *arg), void *arg, int64_t timeout_ns)
{
	for (uint32_t i = 0; i < w->spin; i++) {
		if (ready(arg))
			return 0;
		dp_cpu_relax();
	}
	int64_t deadline = timeout_ns < 0 ? -1 : (int64_t)dp_clock_ns() + timeout_ns;
	for (;;) {
		uint32_t key = dp_waiter_prepare(w);
		if (ready(arg)) {
			dp_waiter_cancel(w);
			return 0;
		}
		int64_t left = -1;
		if (deadline >= 0) {
			left = deadline - (int64_t)dp_clock_ns();
			if (left <= 0) {
				dp_waiter_cancel(w);
				return -ETIMEDOUT;
			}
		}
		dp_waiter_sleep(w, key, left);
	}
}
