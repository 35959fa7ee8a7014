/* SPDX-License-Identifier: MIT */
/* io: the requester's side of a channel. */
#include "io/io-internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "base/clock.h"

static uint32_t pow2_at_least(uint32_t v)
{
	uint32_t p = 2;
	while (p < v)
		p <<= 1;
	return p;
}

void io_chan_destroy(struct dp_io_chan *c)
{
	if (!c)
		return;
	dp_waiter_fini(&c->waiter);
	dp_spsc_free(c->ring);
	free(c->results);
	free(c->hashes);
	free(c->fin);
	free(c);
}

int dp_io_chan_new(struct dp_io *io, uint32_t depth, struct dp_io_chan **ret_chan)
{
	struct dp_io_chan *c;
	int r;

	if (!io || !ret_chan || depth > DP_IO_CHAN_DEPTH_MAX)
		return -EINVAL;
	if (depth == 0)
		depth = 2 * io->cfg.queue_depth;
	depth = pow2_at_least(depth);
	if (depth > DP_IO_CHAN_DEPTH_MAX)
		depth = DP_IO_CHAN_DEPTH_MAX;

	c = aligned_alloc(DP_RING_ALIGN, io_align_up(sizeof(*c)));
	if (!c)
		return -ENOMEM;
	memset(c, 0, sizeof(*c));
	atomic_init(&c->done, 0);
	atomic_init(&c->busy_ns, 0);
	atomic_init(&c->bytes, 0);
	c->io = io;
	c->mask = depth - 1;
	atomic_init(&c->prio, DP_IO_PRIO_NORMAL);
	atomic_init(&c->kbytes_max, 0);
	c->waiter.efd = -1;
	/* dp_io_wait polls for spin_us itself; the waiter only sleeps. */
	r = dp_waiter_init(&c->waiter, DP_WAITER_FUTEX, 1);
	if (r < 0)
		goto fail;
	/* The ring holds what the io thread has not taken yet, never more
	 * than the window of unfinished tickets: capacity == depth, so a
	 * submission the window allows always fits. */
	r = dp_spsc_new(depth, sizeof(struct dp_io_req), &c->ring);
	if (r < 0)
		goto fail;
	r = -ENOMEM;
	c->results = calloc(depth, sizeof(*c->results));
	c->hashes = calloc(2 * (size_t)depth, sizeof(*c->hashes));
	c->fin = calloc(depth, sizeof(*c->fin));
	if (!c->results || !c->hashes || !c->fin)
		goto fail;
	struct io_ctl ctl = {.op = CTL_CHAN_ADD, .chan = c};
	r = io_ctl_call(io, &ctl);
	if (r < 0)
		goto fail;
	*ret_chan = c;
	return 0;
fail:
	io_chan_destroy(c);
	return r;
}

void dp_io_chan_free(struct dp_io_chan *c)
{
	if (!c)
		return;
	/* While a loop runs, detaching is refused until every ticket has
	 * finished: wait and retry. */
	for (;;) {
		struct io_ctl ctl = {.op = CTL_CHAN_DEL, .chan = c};
		if (io_ctl_call(c->io, &ctl) != -EBUSY)
			break;
		dp_io_wait(c, c->next_ticket - 1, 10000000);
	}
	io_chan_destroy(c);
}

uint32_t dp_io_chan_depth(const struct dp_io_chan *c)
{
	return c ? c->mask + 1 : 0;
}

int dp_io_chan_busy(const struct dp_io_chan *c, uint64_t *ret_busy_ns, uint64_t *ret_bytes)
{
	if (!c)
		return -EINVAL;
	if (ret_busy_ns)
		*ret_busy_ns = atomic_load_explicit(&c->busy_ns, memory_order_relaxed);
	if (ret_bytes)
		*ret_bytes = atomic_load_explicit(&c->bytes, memory_order_relaxed);
	return 0;
}

uint64_t dp_io_completed(const struct dp_io_chan *c)
{
	/* acquire: pairs with the io thread's release in io_publish(). */
	return atomic_load_explicit(&c->done, memory_order_acquire);
}

const _Atomic uint64_t *dp_io_chan_counter(const struct dp_io_chan *c)
{
	return c ? &c->done : NULL;
}

uint64_t dp_io_chan_next(const struct dp_io_chan *c)
{
	return c ? c->next_ticket : 0;
}

/*
 * The engine has exited (acquired `exited`): it will not take anything more
 * off this ring, and every ticket it took is finished. Become the ring's
 * consumer and finish what is left with -ECANCELED.
 */
void io_chan_self_cancel(struct dp_io_chan *c)
{
	struct dp_io_req r;

	while (dp_spsc_dequeue(c->ring, &r) == 0) {
		c->results[c->io_next & c->mask] = -ECANCELED;
		c->io_next++;
	}
	c->io_done = c->io_next;
	atomic_store_explicit(&c->done, c->io_done, memory_order_release);
}

static int req_check(const struct dp_io *io, const struct dp_io_req *r)
{
	if (r->op >= DP_IO_OP_MAX || r->flags >= DP_IO_F_MAX || r->reserved || r->reserved2)
		return -EINVAL;
	if (r->file >= io->cfg.max_files)
		return -EBADF;
	const struct io_file *f = &io->files[r->file];
	if (!f->used)
		return -EBADF;
	if (r->op >= DP_IO_OP_FSYNC)
		return r->len ? -EINVAL : 0;
	if (!r->addr || !r->len || r->len > DP_IO_LEN_MAX)
		return -EINVAL;
	/* O_DIRECT: refuse what the kernel would, before it costs a trip. */
	if (f->direct && ((r->offset & (f->off_align - 1)) || (r->len & (f->off_align - 1)) ||
	                  ((uintptr_t)r->addr & (f->mem_align - 1))))
		return -EINVAL;
	return 0;
}

int dp_io_submit(struct dp_io_chan *c, const struct dp_io_req *reqs, uint32_t n,
                 uint64_t *ret_first)
{
	if (!c || !reqs || !n || !ret_first)
		return -EINVAL;
	struct dp_io *io = c->io;
	/* acquire: pairs with dp_io_stop's store; a request queued after we
	 * saw no stop is still finished (by the loop or io_chan_self_cancel). */
	if (atomic_load_explicit(&io->stop, memory_order_acquire))
		return -ESHUTDOWN;
	for (uint32_t i = 0; i < n; i++) {
		int r = req_check(io, &reqs[i]);
		if (r < 0)
			return r;
	}
	uint32_t room = c->mask + 1 - (uint32_t)(c->next_ticket - dp_io_completed(c));
	if (!room)
		return -EAGAIN;
	if (n > room)
		n = room;
	uint32_t k = dp_spsc_enqueue_bulk(c->ring, reqs, n);
	if (k != n) /* cannot happen: the ring is as deep as the window */
		return -EAGAIN;
	*ret_first = c->next_ticket;
	c->next_ticket += n;
	/* seq_cst RMW after the ring's release (sched/wait.h): wakes the io
	 * thread only if it announced itself asleep. */
	dp_waiter_wake(&io->wake);
	if (atomic_load_explicit(&io->exited, memory_order_acquire))
		io_chan_self_cancel(c);
	return (int)n;
}

static int submit_one(struct dp_io_chan *c, const struct dp_io_req *r, uint64_t *ret_ticket)
{
	uint64_t t;
	int n;

	if (!ret_ticket)
		return -EINVAL;
	n = dp_io_submit(c, r, 1, &t);
	if (n < 0)
		return n;
	*ret_ticket = t;
	return 0;
}

int dp_io_read(struct dp_io_chan *c, uint32_t file, uint64_t offset, void *addr, uint32_t len,
               unsigned flags, uint64_t *ret_ticket)
{
	struct dp_io_req r = {
	    .op = DP_IO_OP_READ,
	    .flags = (uint8_t)flags,
	    .file = file,
	    .offset = offset,
	    .addr = addr,
	    .len = len,
	};
	if (flags >= DP_IO_F_MAX)
		return -EINVAL;
	return submit_one(c, &r, ret_ticket);
}

int dp_io_write(struct dp_io_chan *c, uint32_t file, uint64_t offset, const void *addr,
                uint32_t len, unsigned flags, uint64_t *ret_ticket)
{
	struct dp_io_req r = {
	    .op = DP_IO_OP_WRITE,
	    .flags = (uint8_t)flags,
	    .file = file,
	    .offset = offset,
	    .addr = (void *)addr,
	    .len = len,
	};
	if (flags >= DP_IO_F_MAX)
		return -EINVAL;
	return submit_one(c, &r, ret_ticket);
}

int dp_io_sync(struct dp_io_chan *c, uint32_t file, enum dp_io_op op, unsigned flags,
               uint64_t *ret_ticket)
{
	struct dp_io_req r = {.op = (uint8_t)op, .flags = (uint8_t)flags, .file = file};

	if ((op != DP_IO_OP_FSYNC && op != DP_IO_OP_FDATASYNC) || flags >= DP_IO_F_MAX)
		return -EINVAL;
	return submit_one(c, &r, ret_ticket);
}

struct wait_arg {
	struct dp_io_chan *c;
	uint64_t ticket;
};

static bool ticket_ready(void *arg)
{
	struct wait_arg *a = arg;
	return dp_io_completed(a->c) > a->ticket ||
	       atomic_load_explicit(&a->c->io->exited, memory_order_acquire);
}

int dp_io_wait(struct dp_io_chan *c, uint64_t ticket, int64_t timeout_ns)
{
	if (!c || ticket >= c->next_ticket)
		return -EINVAL;
	if (dp_io_completed(c) > ticket)
		return 0;
	struct dp_io *io = c->io;
	uint64_t deadline = timeout_ns < 0 ? UINT64_MAX : dp_clock_ns() + (uint64_t)timeout_ns;

	if (io_is_owner(io)) {
		/* We are the io thread (poll mode): drive the loop. */
		for (;;) {
			uint64_t now = dp_clock_ns();
			int r = dp_io_poll(io, timeout_ns < 0   ? -1
			                       : now < deadline ? (int64_t)(deadline - now)
			                                        : 0);
			if (dp_io_completed(c) > ticket)
				return 0;
			if (r == -ESHUTDOWN)
				break;
			if (dp_clock_ns() >= deadline)
				return -ETIMEDOUT;
		}
	} else {
		struct wait_arg a = {c, ticket};
		/* Poll for spin_us (completions usually come sooner than a
		 * sleep and a wake-up would take), then sleep. */
		uint64_t now = dp_clock_ns(), spin_end = now + io->spin_ns;
		if (spin_end > deadline)
			spin_end = deadline;
		while (!ticket_ready(&a) && now < spin_end) {
			for (int i = 0; i < 32 && !ticket_ready(&a); i++)
				dp_cpu_relax();
			now = dp_clock_ns();
		}
		if (!ticket_ready(&a) && now < deadline)
			dp_waiter_wait(&c->waiter, ticket_ready, &a,
			               timeout_ns < 0 ? -1 : (int64_t)(deadline - now));
	}
	if (dp_io_completed(c) <= ticket && atomic_load_explicit(&io->exited, memory_order_acquire))
		io_chan_self_cancel(c);
	return dp_io_completed(c) > ticket ? 0 : -ETIMEDOUT;
}

int dp_io_result(const struct dp_io_chan *c, uint64_t ticket, int32_t *ret_res)
{
	if (!c || !ret_res || ticket >= c->next_ticket)
		return -EINVAL;
	if (dp_io_completed(c) <= ticket)
		return -EAGAIN;
	if (c->next_ticket - ticket > (uint64_t)c->mask + 1)
		return -ESTALE;
	*ret_res = c->results[ticket & c->mask];
	return 0;
}

int dp_io_result_hash(const struct dp_io_chan *c, uint64_t ticket, uint64_t *ret_hash)
{
	int32_t res;
	int r = dp_io_result(c, ticket, &res);
	if (r < 0)
		return r;
	if (!ret_hash)
		return -EINVAL;
	const uint64_t *h = &c->hashes[2 * (ticket & c->mask)];
	if (h[1] != ticket + 1)
		return -ENODATA;
	*ret_hash = h[0];
	return 0;
}

int dp_io_chan_set_priority(struct dp_io_chan *c, enum dp_io_prio prio)
{
	if (!c || prio >= DP_IO_PRIO_MAX)
		return -EINVAL;
	atomic_store_explicit(&c->prio, prio, memory_order_relaxed);
	return 0;
}

int dp_io_chan_set_limit(struct dp_io_chan *c, uint64_t bytes)
{
	if (!c)
		return -EINVAL;
	atomic_store_explicit(&c->kbytes_max, bytes, memory_order_relaxed);
	return 0;
}
