/* SPDX-License-Identifier: MIT */
/*
 * io: the io thread's loop.
 *
 * One pass (io_iter): run control calls; take requests off every channel
 * (round robin, IO_STAGE at a time) and prepare an SQE for each while ops
 * and SQ slots last; submit them all with one io_uring_enter, which with
 * DEFER_TASKRUN also runs the completions' task work; reap the CQ; resubmit
 * short transfers and -EAGAIN; publish each channel's counter once. For
 * spin_us after the last pass that moved something, passes keep polling the
 * channels and the ring's TASKRUN flag (with DEFER_TASKRUN, completions
 * wait as task work until we enter the kernel; the flag says when). After
 * that the thread sleeps in io_uring_enter until a CQE arrives: an I/O
 * completion or the multishot poll on io->wake's eventfd, which a requester
 * writes only when the io thread has announced itself asleep (sched/wait.h's
 * protocol).
 */
#include "io/io-internal.h"

#include <assert.h>
#include <errno.h>
#include <poll.h>
#include <string.h>
#include <unistd.h>
#include <xxhash.h>

#include "base/clock.h"

/* ---- ops --------------------------------------------------------------- */

static struct io_op *op_alloc(struct dp_io *io)
{
	struct io_op *op = &io->ops[io->free_op];
	io->free_op = op->next;
	return op;
}

static void op_free(struct dp_io *io, struct io_op *op)
{
	op->chan = NULL;
	op->next = io->free_op;
	io->free_op = (int32_t)(op - io->ops);
}

static void redo_push(struct dp_io *io, struct io_op *op)
{
	int32_t i = (int32_t)(op - io->ops);
	op->next = -1;
	if (io->redo_tail >= 0)
		io->ops[io->redo_tail].next = i;
	else
		io->redo_head = i;
	io->redo_tail = i;
}

static struct io_op *redo_pop(struct dp_io *io)
{
	struct io_op *op = &io->ops[io->redo_head];
	io->redo_head = op->next;
	if (io->redo_head < 0)
		io->redo_tail = -1;
	return op;
}

/* ---- completion bookkeeping -------------------------------------------- */

/* Record ticket's result; advance the channel's io_done over every ticket
 * finished in order. Published later by io_publish(). */
static void chan_finish(struct dp_io *io, struct dp_io_chan *c, uint64_t ticket, int32_t res,
                        unsigned flags)
{
	uint32_t i = (uint32_t)ticket & c->mask;

	c->results[i] = res;
	if (res > 0)
		io_stat_add(&c->bytes, (uint64_t)res);
	/* Its busy time so far goes out with the bytes, at every completion:
	 * a reader's rate over a stretch sees both move (published only when
	 * the channel fell idle, a long run of reads showed its bytes and not
	 * its time). The channel stays busy while requests remain or a read
	 * of it waits for the read-rate bucket. */
	c->inflight--;
	if (c->busy_since) {
		uint64_t now = dp_clock_ns();
		io_stat_add(&c->busy_ns, now - c->busy_since);
		c->busy_since = c->inflight || c->rate_held_since ? now : 0;
	}
	if (flags & DP_IO_F_BARRIER)
		c->barrier = false;
	if (ticket != c->io_done) {
		c->fin[i] = 1; /* out of order: wait for the earlier ones */
		return;
	}
	c->io_done++;
	while (c->fin[c->io_done & c->mask]) {
		c->fin[c->io_done & c->mask] = 0;
		c->io_done++;
	}
	if (!c->dirty) {
		c->dirty = true;
		c->dirty_next = io->dirty;
		io->dirty = c;
	}
}

static void io_publish(struct dp_io *io)
{
	struct dp_io_chan *c = io->dirty, *next;

	for (; c; c = next) {
		next = c->dirty_next;
		c->dirty = false;
		/* release: pairs with the requester's acquire in
		 * dp_io_completed/dp_io_wait/dp_io_result. The result slots of
		 * every ticket below io_done, and what the kernel put in their
		 * buffers (complete before its CQE, which we have read), are
		 * visible before the counter is. */
		atomic_store_explicit(&c->done, c->io_done, memory_order_release);
		dp_waiter_wake(&c->waiter);
	}
	io->dirty = NULL;
}

static int op_finish(struct dp_io *io, struct io_op *op, int32_t res)
{
	struct io_counters *st = &io->st;

	switch (op->req.op) {
	case DP_IO_OP_READ:
		io_stat_add(&st->reads, 1);
		if (res > 0)
			io_stat_add(&st->bytes_read, (uint64_t)res);
		break;
	case DP_IO_OP_WRITE:
		io_stat_add(&st->writes, 1);
		if (res > 0)
			io_stat_add(&st->bytes_written, (uint64_t)res);
		break;
	default:
		io_stat_add(&st->syncs, 1);
		break;
	}
	if (res == -ECANCELED)
		io_stat_add(&st->cancelled, 1);
	else if (res < 0)
		io_stat_add(&st->errors, 1);
	op->chan->kbytes -= op->req.len;
	/* a DP_IO_F_HASH read's checksum, before the requester can see it done */
	uint64_t *h = &op->chan->hashes[2 * (op->ticket & op->chan->mask)];
	if ((op->req.flags & DP_IO_F_HASH) && op->req.op == DP_IO_OP_READ &&
	    res == (int32_t)op->req.len) {
		h[0] = XXH3_64bits(op->req.addr, op->req.len);
		h[1] = op->ticket + 1;
	} else {
		h[1] = 0;
	}
	chan_finish(io, op->chan, op->ticket, res, op->req.flags);
	op_free(io, op);
	return 1;
}

static void want_rebuild(struct dp_io *io, int err)
{
	if (io->rebuild || io->broken)
		return;
	io->rebuild = true;
	io_fallback(io, DP_IO_FB_IOPOLL, err);
}

/* A CQE for op: finish it, or queue it for resubmission. Returns 1 if
 * finished. */
static int op_complete(struct dp_io *io, struct io_op *op, int32_t res)
{
	const struct io_file *f = &io->files[op->req.file];
	bool read = op->req.op == DP_IO_OP_READ;

	if (res == -EAGAIN || res == -EINTR) {
		if (io->cancelling || op->retries >= IO_RETRY_MAX)
			return op_finish(io, op, op->done ? (int32_t)op->done : res);
		op->retries++;
		io_stat_add(&io->st.retries, 1);
		redo_push(io, op);
		return 0;
	}
	if (res == -EOPNOTSUPP && (io->setup_flags & IORING_SETUP_IOPOLL)) {
		/* No poll queues on this device (or not O_DIRECT): rebuild
		 * without IOPOLL when the ring is quiet, then resubmit. */
		want_rebuild(io, res);
		redo_push(io, op);
		return 0;
	}
	if (res < 0 || op->req.op >= DP_IO_OP_FSYNC)
		return op_finish(io, op, res);

	op->done += (uint32_t)res;
	if (op->done >= op->req.len)
		return op_finish(io, op, (int32_t)op->done);
	/* Short. At the end of the file (nothing more, or a direct transfer
	 * that stopped inside a block, which only EOF does) or on a stream:
	 * final. Else resubmit the rest. */
	if (res == 0 || f->stream || (f->direct && ((uint32_t)res & (f->off_align - 1))) ||
	    io->cancelling) {
		if (read && !f->stream)
			io_stat_add(&io->st.short_reads, 1);
		return op_finish(io, op, (int32_t)op->done);
	}
	op->retries++;
	io_stat_add(&io->st.retries, 1);
	redo_push(io, op);
	return 0;
}

/* ---- the read rate ----------------------------------------------------- */

#define RB_NS 1000000000ll

/* Credit the time since the last refill, up to the burst. */
static void rate_refill(struct dp_io *io, uint64_t now)
{
	uint64_t rate = io->cfg.read_rate;

	if (!rate || now <= io->rb_t)
		return;
	uint64_t dt = now - io->rb_t;
	uint64_t room = (uint64_t)(io->rb_cap - io->rb_tokens);
	io->rb_t = now;
	/* dt <= room / rate keeps dt * rate <= room: no overflow */
	if (dt > room / rate)
		io->rb_tokens = io->rb_cap;
	else
		io->rb_tokens += (int64_t)(dt * rate);
}

/* May a read start now? (No limit, or the bucket is out of debt.) */
static bool rate_ready(struct dp_io *io)
{
	if (!io->cfg.read_rate || io->rb_tokens >= 0)
		return true;
	rate_refill(io, dp_clock_ns());
	return io->rb_tokens >= 0;
}

/* Nanoseconds until the bucket is out of debt (it is in debt). */
static int64_t rate_wait_ns(const struct dp_io *io)
{
	uint64_t debt = (uint64_t)-io->rb_tokens, rate = io->cfg.read_rate;
	return (int64_t)((debt + rate - 1) / rate);
}

/* A read of channel c starts: it takes its length (debt allowed); if it
 * waited, count the wait. */
static void rate_take(struct dp_io *io, struct dp_io_chan *c, uint32_t len)
{
	if (!io->cfg.read_rate)
		return;
	io->rb_tokens -= (int64_t)len * RB_NS;
	if (c->rate_held_since) {
		io_stat_add(&io->st.read_waits, 1);
		io_stat_add(&io->st.read_wait_ns, io->rb_t - c->rate_held_since);
		c->rate_held_since = 0;
	}
}

/* ---- submission -------------------------------------------------------- */

static void op_prep(struct dp_io *io, struct io_op *op, struct io_uring_sqe *sqe)
{
	struct io_file *f = &io->files[op->req.file];
	int fd = f->fixed ? (int)op->req.file : f->fd;
	char *addr = (char *)op->req.addr + op->done;
	uint32_t len = op->req.len - op->done;
	/* -1: the file's own position, which is what a stream has. */
	uint64_t off = f->stream ? (uint64_t)-1 : op->req.offset + op->done;
	int bi;

	switch (op->req.op) {
	case DP_IO_OP_READ:
		bi = io_buf_index(io, addr, len);
		if (bi >= 0)
			io_uring_prep_read_fixed(sqe, fd, addr, len, off, bi);
		else
			io_uring_prep_read(sqe, fd, addr, len, off);
		break;
	case DP_IO_OP_WRITE:
		bi = io_buf_index(io, addr, len);
		if (bi >= 0)
			io_uring_prep_write_fixed(sqe, fd, addr, len, off, bi);
		else
			io_uring_prep_write(sqe, fd, addr, len, off);
		break;
	case DP_IO_OP_FSYNC:
		io_uring_prep_fsync(sqe, fd, 0);
		break;
	default:
		io_uring_prep_fsync(sqe, fd, IORING_FSYNC_DATASYNC);
		break;
	}
	if (f->fixed)
		sqe->flags |= IOSQE_FIXED_FILE;
	io_uring_sqe_set_data64(sqe, (uint64_t)(op - io->ops));
	op->in_kernel = true;
	if (op->req.op == DP_IO_OP_WRITE)
		io_stat_add(&io->st.write_bytes_submitted, len);
	f->inflight++;
	io->inflight++;
	io->unsubmitted++;
	if (io->inflight > atomic_load_explicit(&io->st.inflight_max, memory_order_relaxed))
		io_stat_set32(&io->st.inflight_max, io->inflight);
}

/* What an IOPOLL ring takes: reads and writes on O_DIRECT regular files. */
static bool iopoll_takes(const struct dp_io_req *r, const struct io_file *f)
{
	return r->op <= DP_IO_OP_WRITE && f->direct && !f->stream;
}

/* Start requests of one channel. Returns SQEs prepared; *finished counts
 * requests finished without reaching the kernel. */
static unsigned chan_fill(struct dp_io *io, struct dp_io_chan *c, int *finished)
{
	unsigned n = 0;

	while (io->free_op >= 0) {
		if (!c->stage_n) {
			c->stage_head = 0;
			c->stage_n = dp_spsc_dequeue_burst(c->ring, c->stage, IO_STAGE);
			if (!c->stage_n)
				break;
		}
		if (c->barrier)
			break;
		const struct dp_io_req *r = &c->stage[c->stage_head];
		if ((r->flags & DP_IO_F_BARRIER) && c->inflight)
			break;
		/* the channel's byte limit: the device works on its earliest
		 * requests first (one always goes, else nothing would move) */
		uint64_t lim = atomic_load_explicit(&c->kbytes_max, memory_order_relaxed);
		if (lim && c->inflight && c->kbytes + r->len > lim)
			break;
		assert(r->file < io->cfg.max_files);
		struct io_file *f = &io->files[r->file];
		int err = io->broken ? io->broken : f->used ? 0 : -EBADF;
		struct io_uring_sqe *sqe = NULL;
		if (!err) {
			if ((io->setup_flags & IORING_SETUP_IOPOLL) && !iopoll_takes(r, f)) {
				want_rebuild(io, -EOPNOTSUPP);
				break;
			}
			/* the read rate: a read waits while the bucket is in
			 * debt, and the channel's later requests behind it */
			if (r->op == DP_IO_OP_READ && io->rb_tokens < 0 && io->cfg.read_rate) {
				if (!c->rate_held_since)
					c->rate_held_since = io->rb_t;
				/* the channel's I/O time as its requester sees it:
				 * waiting for the bucket is part of it (else the rate
				 * measured over it is the device's, not the paced) */
				if (!c->inflight && !c->busy_since)
					c->busy_since = dp_clock_ns();
				break;
			}
			sqe = io_uring_get_sqe(&io->ring);
			if (!sqe)
				break;
		}
		struct io_op *op = op_alloc(io);
		op->chan = c;
		op->ticket = c->io_next++;
		op->req = *r;
		c->kbytes += r->len;
		op->done = 0;
		op->retries = 0;
		c->stage_head++;
		c->stage_n--;
		if (c->inflight++ == 0 && !c->busy_since) /* else it waited for the bucket */
			c->busy_since = dp_clock_ns();
		if (r->flags & DP_IO_F_BARRIER)
			c->barrier = true;
		if (err) { /* no SQE was taken */
			c->rate_held_since = 0; /* nothing of it waits now */
			*finished += op_finish(io, op, err);
			continue;
		}
		if (op->req.op == DP_IO_OP_READ)
			rate_take(io, c, op->req.len);
		op_prep(io, op, sqe);
		n++;
	}
	return n;
}

static unsigned io_fill(struct dp_io *io, int *finished)
{
	unsigned n = 0;

	if (io->rebuild)
		return 0;
	if (io->cfg.read_rate)
		rate_refill(io, dp_clock_ns());
	while (io->redo_head >= 0) {
		struct io_uring_sqe *sqe = io_uring_get_sqe(&io->ring);
		if (!sqe)
			return n;
		struct io_op *op = redo_pop(io);
		if (io->broken) {
			*finished += op_finish(io, op, io->broken);
			continue;
		}
		op_prep(io, op, sqe);
		n++;
	}
	/* free slots go to the highest-priority channels first; round robin
	 * among channels of one priority */
	uint32_t nc = io->n_chans;
	for (uint32_t p = 0; p < DP_IO_PRIO_MAX; p++)
		for (uint32_t k = 0; k < nc && io->free_op >= 0 && !io->rebuild; k++) {
			struct dp_io_chan *c = io->chans[(io->rr + k) % nc];
			if (atomic_load_explicit(&c->prio, memory_order_relaxed) == p)
				n += chan_fill(io, c, finished);
		}
	io->rr++;
	return n;
}

static void io_count_submit(struct dp_io *io, unsigned n)
{
	if (n) {
		io_stat_add(&io->st.submits, 1);
		io_stat_add(&io->st.sqes, n);
	}
	io->unsubmitted = 0;
}

/* Hand prepared SQEs to the kernel: one io_uring_enter, which also runs
 * deferred completion work (GETEVENTS). With SQPOLL the kernel thread
 * submits and io_uring_submit enters only to wake it. */
static void io_submit(struct dp_io *io, unsigned n)
{
	int r;

	do {
		if (io->setup_flags & IORING_SETUP_SQPOLL)
			r = io_uring_submit(&io->ring);
		else
			r = io_uring_submit_and_get_events(&io->ring);
	} while (r == -EINTR);
	io_count_submit(io, n);
	/* -EAGAIN/-EBUSY: the kernel is short of memory or the CQ is full;
	 * the SQEs stay queued and go with the next enter. */
}

/* ---- reaping ----------------------------------------------------------- */

static int io_reap(struct dp_io *io)
{
	struct io_uring_cqe *cqe;
	unsigned head, seen = 0;
	int finished = 0;

	io_uring_for_each_cqe(&io->ring, head, cqe)
	{
		uint64_t ud = io_uring_cqe_get_data64(cqe);
		seen++;
		if (ud == IO_UD_WAKE) {
			/* A requester wrote the eventfd: clear it, so the
			 * next write is a fresh wake-up. */
			uint64_t v;
			if (!(cqe->flags & IORING_CQE_F_MORE))
				io->wake_armed = false;
			ssize_t rn = read(dp_waiter_fd(&io->wake), &v, sizeof(v));
			(void)rn;
			continue;
		}
		if (ud >= IO_UD_NOP)
			continue;
		struct io_op *op = &io->ops[ud];
		op->in_kernel = false;
		io->inflight--;
		io->files[op->req.file].inflight--;
		finished += op_complete(io, op, cqe->res);
	}
	if (seen)
		io_uring_cq_advance(&io->ring, seen);
	io_stat_set32(&io->st.inflight, io->inflight);
	return finished;
}

/* ---- IOPOLL fallback --------------------------------------------------- */

/* IOPOLL was refused at submission; nothing is in the kernel. Build the
 * ring again without it, register files and buffers, and go on. */
static void io_rebuild(struct dp_io *io)
{
	uint32_t flags = io->setup_flags &
	                 ~(IORING_SETUP_IOPOLL | IORING_SETUP_R_DISABLED | IORING_SETUP_SQ_AFF);
	bool ring_fd = io->mode.ring_fd;
	int r;

	io->rebuild = false;
	if (ring_fd)
		io_uring_unregister_ring_fd(&io->ring);
	io_uring_queue_exit(&io->ring);
	io->ring_ok = false;
	r = io_ring_create(io, flags);
	if (r == 0)
		r = io_ring_register(io);
	if (r == 0 && ring_fd && io_uring_register_ring_fd(&io->ring) != 1)
		ring_fd = false;
	pthread_mutex_lock(&io->lock);
	io->mode.ring_fd = r == 0 && ring_fd;
	pthread_mutex_unlock(&io->lock);
	if (r < 0)
		io->broken = r; /* every request from now on fails with it */
}

/* ---- sleeping ---------------------------------------------------------- */

/* Could a pass start something now? (Blocked work, e.g. behind a barrier or
 * with every op in use, waits for a completion, which wakes us anyway.) */
static bool io_has_work(struct dp_io *io)
{
	bool held = false;

	io->rb_held = false;
	if (atomic_load_explicit(&io->ctl_pending, memory_order_acquire))
		return true;
	/* A stop is news to the run loop, not to io_shutdown's own passes. */
	if (!io->shutting_down && atomic_load_explicit(&io->stop, memory_order_acquire))
		return true;
	if (io->rebuild)
		return !io->inflight;
	if (io->redo_head >= 0)
		return true;
	if (io->free_op < 0)
		return false;
	for (uint32_t i = 0; i < io->n_chans; i++) {
		struct dp_io_chan *c = io->chans[i];
		if (c->barrier)
			continue;
		/* held by its byte limit: a completion of its own frees it (and
		 * must be waited for: with DEFER_TASKRUN only a waiting enter
		 * posts it) */
		uint64_t lim = atomic_load_explicit(&c->kbytes_max, memory_order_relaxed);
		if (c->stage_n) {
			const struct dp_io_req *r = &c->stage[c->stage_head];
			if ((r->flags & DP_IO_F_BARRIER) && c->inflight)
				continue;
			if (lim && c->inflight && c->kbytes + r->len > lim)
				continue;
			/* held by the read rate: the bucket's refill frees it
			 * (io_sleep's timeout) */
			if (r->op == DP_IO_OP_READ && !rate_ready(io)) {
				held = true;
				continue;
			}
			return true;
		}
		if (lim && c->inflight && c->kbytes >= lim)
			continue;
		if (!dp_spsc_empty(c->ring))
			return true;
	}
	io->rb_held = held;
	return false;
}

static void arm_wake(struct dp_io *io)
{
	struct io_uring_sqe *sqe;

	if (io->wake_armed)
		return;
	sqe = io_uring_get_sqe(&io->ring);
	if (!sqe)
		return; /* SQ full: there is work in flight to wake us */
	io_uring_prep_poll_multishot(sqe, dp_waiter_fd(&io->wake), POLLIN);
	io_uring_sqe_set_data64(sqe, IO_UD_WAKE);
	io->wake_armed = true;
}

static void io_sleep(struct dp_io *io, int64_t timeout_ns)
{
	/* With every op in use no request can start before a completion,
	 * which wakes us anyway: do not announce, so requesters pay for no
	 * wake-up (control calls and stops force one; the eventfd poll is
	 * armed either way). IOPOLL sleeps on the waiter itself: announce. */
	bool iopoll = io->setup_flags & IORING_SETUP_IOPOLL;
	bool announce = iopoll || io->free_op >= 0;
	uint32_t key = announce ? dp_waiter_prepare(&io->wake) : 0;

	/* The re-check after announcing (sched/wait.h): a requester that
	 * published before our announcement is seen here; one after it sees
	 * us asleep and writes the eventfd. */
	if (io_has_work(io)) {
		if (announce)
			dp_waiter_cancel(&io->wake);
		return;
	}
	/* Reads held by the read rate: wake when the bucket lets the next one
	 * go (a request, a completion or a control call may come sooner). */
	if (io->rb_held) {
		int64_t rate_ns = rate_wait_ns(io);
		if (timeout_ns < 0 || rate_ns < timeout_ns)
			timeout_ns = rate_ns;
	}
	uint64_t t0 = dp_clock_ns();
	io_stat_add(&io->st.busy_ns, t0 - io->t_mark);
	/* The waits below also submit SQEs still pending (io_iter leaves
	 * them when the device is busy): one io_uring_enter for both. */
	unsigned pending = io->unsubmitted;
	if (iopoll && io->inflight) {
		/* IOPOLL rings cannot poll an eventfd; polling for completions
		 * is what this mode is for (and a held read waits for the next
		 * one, which a polled device posts soon). */
		dp_waiter_cancel(&io->wake);
		io_uring_submit_and_wait(&io->ring, 1);
		io_count_submit(io, pending);
		io->t_mark = t0;
		return;
	}
	if (iopoll) {
		/* Nothing in flight, so nothing pending either. */
		dp_waiter_sleep(&io->wake, key, timeout_ns); /* ends the announcement */
	} else {
		arm_wake(io);
		if (timeout_ns < 0) {
			io_uring_submit_and_wait(&io->ring, 1);
		} else {
			struct __kernel_timespec ts = {
			    .tv_sec = timeout_ns / 1000000000,
			    .tv_nsec = timeout_ns % 1000000000,
			};
			struct io_uring_cqe *cqe;
			io_uring_submit_and_wait_timeout(&io->ring, &cqe, 1, &ts, NULL);
		}
		io_count_submit(io, pending);
		if (announce)
			dp_waiter_cancel(&io->wake);
	}
	uint64_t t1 = dp_clock_ns();
	io_stat_add(&io->st.sleeps, 1);
	io_stat_add(&io->st.sleep_ns, t1 - t0);
	io->t_mark = t1;
}

/* ---- one pass ---------------------------------------------------------- */

/*
 * Submit what io_fill prepared now, or leave it for the next wait's
 * io_uring_enter (fio's pattern: submit and wait in one call)? Now when the
 * device would otherwise idle, when the caller will not come back for a
 * wait (poll mode, shutdown), or when polling (no wait follows soon).
 */
static void io_flush(struct dp_io *io, bool run_loop)
{
	if (!io->unsubmitted)
		return;
	if (run_loop && !io->spin_ns && io->inflight > io->unsubmitted)
		return;
	io_submit(io, io->unsubmitted);
}

int io_iter(struct dp_io *io, int64_t timeout_ns, bool spin)
{
	int finished = 0;

	if (atomic_load_explicit(&io->ctl_pending, memory_order_acquire))
		io_ctl_drain(io);
	unsigned n = io_fill(io, &finished);
	int reaped = io_reap(io);
	if (reaped) /* freed ops: start what is queued */
		n += io_fill(io, &finished);
	finished += reaped;
	/* Submit before waking requesters: the device's next request does
	 * not wait behind their wake-ups. */
	io_flush(io, spin);
	if (io->rebuild && !io->inflight)
		io_rebuild(io);
	io_publish(io);
	uint64_t t = dp_clock_ns();
	if (n || finished) {
		io_stat_add(&io->st.busy_ns, t - io->t_mark);
		io->t_mark = t;
		io->t_active = t;
		return finished;
	}
	if (timeout_ns == 0)
		return 0;
	/* Poll a while after the last work: a requester that answers a
	 * completion with new requests within spin_us finds us awake (no
	 * eventfd write, no wake-up), and completions are reaped as soon as
	 * the kernel flags them (TASKRUN_FLAG), without sleeping. */
	if (spin && t - io->t_active < io->spin_ns) {
		if (IO_URING_READ_ONCE(*io->ring.sq.kflags) & IORING_SQ_TASKRUN)
			io_uring_get_events(&io->ring);
		else
			dp_cpu_relax();
		return 0;
	}
	io_sleep(io, timeout_ns);
	reaped = io_reap(io);
	if (reaped)
		io_fill(io, &finished);
	finished += reaped;
	io_flush(io, spin);
	io_publish(io);
	return finished;
}

/* ---- stopping ---------------------------------------------------------- */

/* Is anything queued, staged, waiting for resubmission or in the kernel? */
static bool io_busy(struct dp_io *io)
{
	if (io->inflight || io->redo_head >= 0)
		return true;
	for (uint32_t i = 0; i < io->n_chans; i++)
		if (io->chans[i]->stage_n || !dp_spsc_empty(io->chans[i]->ring))
			return true;
	return false;
}

/* Finish everything that has not reached the kernel with -ECANCELED (or the
 * bytes a resubmission had already moved). */
static void cancel_queued(struct dp_io *io)
{
	while (io->redo_head >= 0) {
		struct io_op *op = redo_pop(io);
		op_finish(io, op, op->done ? (int32_t)op->done : -ECANCELED);
	}
	for (uint32_t i = 0; i < io->n_chans; i++) {
		struct dp_io_chan *c = io->chans[i];
		for (;;) {
			if (!c->stage_n) {
				c->stage_head = 0;
				c->stage_n = dp_spsc_dequeue_burst(c->ring, c->stage, IO_STAGE);
				if (!c->stage_n)
					break;
			}
			const struct dp_io_req *r = &c->stage[c->stage_head++];
			c->stage_n--;
			c->inflight++;
			io_stat_add(&io->st.cancelled, 1);
			chan_finish(io, c, c->io_next++, -ECANCELED, r->flags);
		}
	}
}

void io_shutdown(struct dp_io *io, enum dp_io_stop how)
{
	io->shutting_down = true;
	if (how == DP_IO_STOP_DRAIN) {
		while (io_busy(io))
			io_iter(io, -1, false);
		return;
	}
	io->cancelling = true;
	io->rebuild = false;
	cancel_queued(io);
	for (uint32_t i = 0; i < io->cfg.queue_depth; i++) {
		if (!io->ops[i].in_kernel)
			continue;
		struct io_uring_sqe *sqe = io_uring_get_sqe(&io->ring);
		if (!sqe) {
			io_submit(io, 0);
			sqe = io_uring_get_sqe(&io->ring);
			if (!sqe)
				break;
		}
		io_uring_prep_cancel64(sqe, i, 0);
		io_uring_sqe_set_data64(sqe, IO_UD_CANCEL);
	}
	io_submit(io, 0);
	io_publish(io);
	while (io->inflight) {
		io_uring_submit_and_wait(&io->ring, 1);
		io_reap(io);
		cancel_queued(io);
		io_publish(io);
	}
	cancel_queued(io);
	io_publish(io);
}

/* CTL_CHAN_DEL: drop the channel from the loop. While a loop runs, -EBUSY
 * until every request it queued has finished (the caller waits and
 * retries); with no loop (never started, or exited), requests that never
 * started are dropped. */
int io_chan_detach(struct dp_io *io, struct dp_io_chan *c)
{
	int st = atomic_load_explicit(&io->state, memory_order_relaxed);
	uint32_t i;

	if (c->inflight)
		return -EBUSY;
	if ((st == IO_RUNNING || st == IO_POLLING) && (c->stage_n || !dp_spsc_empty(c->ring)))
		return -EBUSY;
	c->stage_n = 0;
	struct dp_io_req r;
	while (dp_spsc_dequeue(c->ring, &r) == 0)
		;
	for (i = 0; i < io->n_chans && io->chans[i] != c; i++)
		;
	if (i == io->n_chans)
		return -ENOENT;
	memmove(&io->chans[i], &io->chans[i + 1], (io->n_chans - i - 1) * sizeof(io->chans[0]));
	io->n_chans--;
	return 0;
}
