/* SPDX-License-Identifier: MIT */
/* io: setup and probing, lifecycle, control calls, introspection. */
#include "io/io-internal.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "base/clock.h"
#include "base/err.h"
#include "base/macros.h"

/* ---- configuration ----------------------------------------------------- */

int dp_io_config_init(struct dp_io_config *cfg)
{
	if (!cfg)
		return -EINVAL;
	memset(cfg, 0, sizeof(*cfg));
	cfg->queue_depth = 128;
	cfg->buf_size = 65536;
	cfg->max_files = 64;
	cfg->max_chans = 16;
	cfg->max_regions = 8;
	cfg->node = -1;
	cfg->sqpoll_cpu = -1;
	cfg->sqpoll_idle_ms = 100;
	cfg->spin_us = 0;
	cfg->read_rate = 0;
	cfg->read_burst = DP_IO_READ_BURST_DEFAULT;
	return 0;
}

static bool config_valid(const struct dp_io_config *c)
{
	if (c->queue_depth < 1 || c->queue_depth > DP_IO_DEPTH_MAX)
		return false;
	if (c->n_bufs && (c->buf_size == 0 || c->buf_size % 4096 ||
	                  (uint64_t)c->n_bufs * c->buf_size > (1ull << 46)))
		return false;
	if (c->max_files < 1 || c->max_files > 65536 || c->max_chans < 1 || c->max_chans > 1024)
		return false;
	if (c->max_regions > 64 || c->node < -1 || c->flags >= DP_IO_FLAGS_MAX ||
	    c->sqpoll_cpu < -1 || c->spin_us > 1000000)
		return false;
	if (c->read_rate > DP_IO_READ_RATE_MAX || c->read_burst > DP_IO_LEN_MAX)
		return false;
	return true;
}

/* ---- fallbacks and mode ------------------------------------------------ */

const char *dp_io_fallback_name(enum dp_io_fallback fb)
{
	static const char *const names[DP_IO_FB_MAX] = {
	    "defer_taskrun", "single_issuer", "ring_fd",    "iopoll",   "sqpoll",
	    "fixed_files",   "fixed_bufs",    "huge_pages", "buffered",
	};
	return (unsigned)fb < DP_IO_FB_MAX ? names[fb] : NULL;
}

static void fallback_locked(struct dp_io *io, enum dp_io_fallback fb, int err)
{
	io->mode.fallbacks |= 1u << fb;
	io->mode.fallback_err[fb] = err;
}

/* Record a fallback; takes io->lock (use only where it is not held). */
void io_fallback(struct dp_io *io, enum dp_io_fallback fb, int err)
{
	pthread_mutex_lock(&io->lock);
	fallback_locked(io, fb, err);
	pthread_mutex_unlock(&io->lock);
}

/*
 * Create the ring with `flags`, dropping what the kernel refuses: newest
 * feature first, so an old kernel ends up with what it has. R_DISABLED goes
 * last: it is older than SINGLE_ISSUER, and without it a SINGLE_ISSUER ring
 * would belong to the creating thread, not the io thread.
 */
int io_ring_create(struct dp_io *io, uint32_t flags)
{
	struct io_uring_params p;
	unsigned entries = io->cfg.queue_depth + 8; /* + wake poll, cancels */
	int r;

	for (;;) {
		memset(&p, 0, sizeof(p));
		p.flags = flags;
		if (flags & IORING_SETUP_SQPOLL) {
			p.sq_thread_idle = io->cfg.sqpoll_idle_ms;
			if (io->cfg.sqpoll_cpu >= 0) {
				p.flags |= IORING_SETUP_SQ_AFF;
				p.sq_thread_cpu = (uint32_t)io->cfg.sqpoll_cpu;
			}
		}
		r = io_uring_queue_init_params(entries, &io->ring, &p);
		if (r == 0)
			break;
		if (r == -EINVAL && (flags & IORING_SETUP_DEFER_TASKRUN)) {
			/* Before 6.1: cooperative task running (5.19) still
			 * spares the IPI and keeps the TASKRUN flag. */
			flags &= ~IORING_SETUP_DEFER_TASKRUN;
			flags |= IORING_SETUP_COOP_TASKRUN;
			io_fallback(io, DP_IO_FB_DEFER_TASKRUN, r);
		} else if (r == -EINVAL && (flags & IORING_SETUP_COOP_TASKRUN)) {
			flags &= ~(IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG);
		} else if (r == -EINVAL && (flags & IORING_SETUP_SUBMIT_ALL)) {
			flags &= ~IORING_SETUP_SUBMIT_ALL;
		} else if (r == -EINVAL && (flags & IORING_SETUP_SINGLE_ISSUER)) {
			flags &= ~IORING_SETUP_SINGLE_ISSUER;
			io_fallback(io, DP_IO_FB_SINGLE_ISSUER, r);
		} else if (r == -EINVAL && (flags & IORING_SETUP_R_DISABLED)) {
			flags &= ~IORING_SETUP_R_DISABLED;
		} else if ((r == -EINVAL || r == -EPERM) && (flags & IORING_SETUP_SQPOLL)) {
			flags &= ~IORING_SETUP_SQPOLL;
			io_fallback(io, DP_IO_FB_SQPOLL, r);
		} else if (r == -EINVAL && (flags & IORING_SETUP_IOPOLL)) {
			flags &= ~IORING_SETUP_IOPOLL;
			io_fallback(io, DP_IO_FB_IOPOLL, r);
		} else {
			return r;
		}
	}
	io->ring_ok = true;
	io->wake_armed = false;
	io->setup_flags = p.flags;
	pthread_mutex_lock(&io->lock);
	io->mode.setup_flags = p.flags;
	io->mode.features = p.features;
	io->mode.sq_entries = p.sq_entries;
	io->mode.cq_entries = p.cq_entries;
	io->mode.single_issuer = p.flags & IORING_SETUP_SINGLE_ISSUER;
	io->mode.defer_taskrun = p.flags & IORING_SETUP_DEFER_TASKRUN;
	io->mode.iopoll = p.flags & IORING_SETUP_IOPOLL;
	io->mode.sqpoll = p.flags & IORING_SETUP_SQPOLL;
	pthread_mutex_unlock(&io->lock);
	return 0;
}

/* Files and buffers into a fresh ring (at creation and after a rebuild). */
int io_ring_register(struct dp_io *io)
{
	int r = io_bufs_register(io);
	if (r < 0)
		return r;
	return io_files_register(io);
}

/* ---- control calls ----------------------------------------------------- */

int io_ctl_exec(struct dp_io *io, struct io_ctl *c)
{
	switch (c->op) {
	case CTL_CHAN_ADD:
		if (io->n_chans >= io->cfg.max_chans)
			return -EMFILE;
		io->chans[io->n_chans++] = c->chan;
		return 0;
	case CTL_CHAN_DEL:
		return io_chan_detach(io, c->chan);
	case CTL_FILE_REG:
		return io_file_reg(io, c->idx);
	case CTL_FILE_UNREG:
		return io_file_unreg(io, c->idx);
	case CTL_MEM_REG:
		return io_region_add(io, c);
	case CTL_MEM_UNREG:
		return io_region_remove(io, c->idx);
	}
	return -EINVAL;
}

bool io_is_owner(struct dp_io *io)
{
	/* acquire: pairs with the release in io_attach; io->owner was written
	 * before the state said someone owns the ring. */
	int st = atomic_load_explicit(&io->state, memory_order_acquire);
	return (st == IO_POLLING || st == IO_RUNNING) && pthread_equal(io->owner, pthread_self());
}

/*
 * Run a control call where the io-private state may be touched: inline when
 * no loop can run concurrently (NEW: nobody owns the ring yet, and taking
 * ownership needs io->lock, which we hold; EXITED; or we are the owner),
 * else on the io thread, waiting for it.
 */
int io_ctl_call(struct dp_io *io, struct io_ctl *c)
{
	pthread_mutex_lock(&io->lock);
	int st = atomic_load_explicit(&io->state, memory_order_relaxed);
	if (st == IO_NEW || st == IO_EXITED || pthread_equal(io->owner, pthread_self())) {
		int r = io_ctl_exec(io, c);
		pthread_mutex_unlock(&io->lock);
		return r;
	}
	c->done = false;
	c->next = NULL;
	*io->ctl_tail = c;
	io->ctl_tail = &c->next;
	/* release: the io thread's acquire of ctl_pending (a hint; the list is
	 * read under the lock). */
	atomic_store_explicit(&io->ctl_pending, 1, memory_order_release);
	pthread_mutex_unlock(&io->lock);
	/* Forced: the io thread may sleep unannounced (all ops busy). */
	dp_waiter_wake_slow(&io->wake);
	pthread_mutex_lock(&io->lock);
	while (!c->done)
		pthread_cond_wait(&io->cond, &io->lock);
	pthread_mutex_unlock(&io->lock);
	return c->ret;
}

static void ctl_drain_locked(struct dp_io *io)
{
	struct io_ctl *c;

	while ((c = io->ctl_head)) {
		io->ctl_head = c->next;
		if (!io->ctl_head)
			io->ctl_tail = &io->ctl_head;
		c->ret = io_ctl_exec(io, c);
		c->done = true;
	}
	atomic_store_explicit(&io->ctl_pending, 0, memory_order_relaxed);
	pthread_cond_broadcast(&io->cond);
}

/* On the io thread, between passes (no publish pending). */
void io_ctl_drain(struct dp_io *io)
{
	pthread_mutex_lock(&io->lock);
	ctl_drain_locked(io);
	pthread_mutex_unlock(&io->lock);
}

/* ---- lifecycle --------------------------------------------------------- */

/* Become the ring's owner (or confirm we are). */
static int io_attach(struct dp_io *io, enum io_state as)
{
	int r = 0;

	pthread_mutex_lock(&io->lock);
	int st = atomic_load_explicit(&io->state, memory_order_relaxed);
	if (st == IO_EXITED) {
		r = -ESHUTDOWN;
	} else if (st != IO_NEW) {
		if (!pthread_equal(io->owner, pthread_self()))
			r = -EBUSY;
		else if (st != (int)as)
			atomic_store_explicit(&io->state, as, memory_order_release);
	} else {
		/* With SINGLE_ISSUER the ring belongs to the task that enables
		 * it; IORING_REGISTER_ENABLE_RINGS directly, since Debian's
		 * liburing 2.3 declares io_uring_enable_rings but does not
		 * export it. */
		if (io->setup_flags & IORING_SETUP_R_DISABLED)
			r = io_uring_register(io->ring.ring_fd, IORING_REGISTER_ENABLE_RINGS, NULL,
			                      0);
		if (r == 0) {
			/* The registered ring fd lives in this task's io_uring
			 * context: register and unregister it here. */
			int rr = io_uring_register_ring_fd(&io->ring);
			io->mode.ring_fd = rr == 1;
			if (rr != 1)
				fallback_locked(io, DP_IO_FB_RING_FD, rr < 0 ? rr : -EIO);
			io->owner = pthread_self();
			io->mode.owned = true;
			io->t_mark = dp_clock_ns();
			/* release: pairs with io_is_owner's acquire. */
			atomic_store_explicit(&io->state, as, memory_order_release);
		}
	}
	pthread_mutex_unlock(&io->lock);
	return r;
}

/* The owner leaves for good: every ticket is finished (io_shutdown ran). */
static void io_detach(struct dp_io *io)
{
	struct timespec ts;

	if (io->mode.ring_fd)
		io_uring_unregister_ring_fd(&io->ring);
	if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) == 0)
		atomic_store_explicit(&io->st.cpu_ns,
		                      (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec,
		                      memory_order_relaxed);
	pthread_mutex_lock(&io->lock);
	io->mode.ring_fd = false;
	atomic_store_explicit(&io->state, IO_EXITED, memory_order_release);
	/* release: pairs with the requesters' acquire of `exited`; the loop
	 * touches no channel after this, so a requester may drain its own ring
	 * (io_chan_self_cancel). */
	atomic_store_explicit(&io->exited, true, memory_order_release);
	ctl_drain_locked(io);
	for (uint32_t i = 0; i < io->n_chans; i++)
		dp_waiter_wake(&io->chans[i]->waiter);
	pthread_cond_broadcast(&io->cond);
	pthread_mutex_unlock(&io->lock);
}

static void io_run_attached(struct dp_io *io)
{
	uint32_t s;

	while (!(s = atomic_load_explicit(&io->stop, memory_order_acquire)))
		io_iter(io, -1, true);
	io_shutdown(io, (enum dp_io_stop)(s - 1));
	io_detach(io);
}

int dp_io_run(struct dp_io *io)
{
	if (!io)
		return -EINVAL;
	int r = io_attach(io, IO_RUNNING);
	if (r < 0)
		return r;
	io_run_attached(io);
	return 0;
}

int dp_io_poll(struct dp_io *io, int64_t timeout_ns)
{
	if (!io)
		return -EINVAL;
	int r = io_attach(io, IO_POLLING);
	if (r < 0)
		return r;
	uint32_t s = atomic_load_explicit(&io->stop, memory_order_acquire);
	if (s) {
		io_shutdown(io, (enum dp_io_stop)(s - 1));
		io_detach(io);
		return -ESHUTDOWN;
	}
	return io_iter(io, timeout_ns, false);
}

static void *io_thread_main(void *arg)
{
	struct dp_io *io = arg;
	int r = 0;

	pthread_setname_np(pthread_self(), "dp-io");
	if (io->thread_cpu >= 0)
		r = dp_topo_pin_self(io->thread_cpu);
	if (r == 0)
		r = io_attach(io, IO_RUNNING);
	pthread_mutex_lock(&io->lock);
	io->attach_ret = r;
	io->attach_done = true;
	pthread_cond_broadcast(&io->cond);
	pthread_mutex_unlock(&io->lock);
	if (r == 0)
		io_run_attached(io);
	return NULL;
}

int dp_io_start(struct dp_io *io, int cpu)
{
	if (!io || cpu < -1)
		return -EINVAL;
	pthread_mutex_lock(&io->lock);
	if (atomic_load_explicit(&io->state, memory_order_relaxed) != IO_NEW ||
	    io->thread_started) {
		pthread_mutex_unlock(&io->lock);
		return -EBUSY;
	}
	io->thread_cpu = cpu;
	io->attach_done = false;
	int r = pthread_create(&io->thread, NULL, io_thread_main, io);
	if (r) {
		pthread_mutex_unlock(&io->lock);
		return -r;
	}
	io->thread_started = true;
	while (!io->attach_done)
		pthread_cond_wait(&io->cond, &io->lock);
	r = io->attach_ret;
	if (r < 0)
		io->thread_joined = true;
	pthread_mutex_unlock(&io->lock);
	if (r < 0) {
		pthread_join(io->thread, NULL);
		pthread_mutex_lock(&io->lock);
		io->thread_started = false;
		io->thread_joined = false;
		pthread_mutex_unlock(&io->lock);
	}
	return r;
}

int dp_io_stop(struct dp_io *io, enum dp_io_stop how)
{
	if (!io || (unsigned)how >= DP_IO_STOP_MAX)
		return -EINVAL;
	pthread_mutex_lock(&io->lock);
	int st = atomic_load_explicit(&io->state, memory_order_relaxed);
	bool self = st != IO_NEW && st != IO_EXITED && pthread_equal(io->owner, pthread_self());
	if (self && st == IO_RUNNING) {
		pthread_mutex_unlock(&io->lock);
		return -EDEADLK;
	}
	if (st != IO_EXITED) {
		uint32_t want = 1 + (uint32_t)how;
		uint32_t cur = atomic_load_explicit(&io->stop, memory_order_relaxed);
		/* seq_cst: ordered before the wake below and before a
		 * requester's check in dp_io_submit. */
		if (cur == 0 || want > cur)
			atomic_store_explicit(&io->stop, want, memory_order_seq_cst);
	}
	if (st == IO_NEW) {
		/* No loop ever ran: nothing is in the kernel. Requests queued on
		 * channels are cancelled by their requesters once they see
		 * `exited`. */
		atomic_store_explicit(&io->state, IO_EXITED, memory_order_release);
		atomic_store_explicit(&io->exited, true, memory_order_release);
		ctl_drain_locked(io);
		for (uint32_t i = 0; i < io->n_chans; i++)
			dp_waiter_wake(&io->chans[i]->waiter);
		pthread_mutex_unlock(&io->lock);
		return 0;
	}
	if (self) {
		uint32_t s = atomic_load_explicit(&io->stop, memory_order_relaxed);
		pthread_mutex_unlock(&io->lock);
		io_shutdown(io, (enum dp_io_stop)(s - 1));
		io_detach(io);
		return 0;
	}
	if (st != IO_EXITED) {
		pthread_mutex_unlock(&io->lock);
		dp_waiter_wake_slow(&io->wake); /* forced, as in io_ctl_call */
		pthread_mutex_lock(&io->lock);
		while (atomic_load_explicit(&io->state, memory_order_relaxed) != IO_EXITED)
			pthread_cond_wait(&io->cond, &io->lock);
	}
	bool join = io->thread_started && !io->thread_joined;
	io->thread_joined = true;
	pthread_mutex_unlock(&io->lock);
	if (join)
		pthread_join(io->thread, NULL);
	return 0;
}

/* ---- creation ---------------------------------------------------------- */

int dp_io_new(const struct dp_io_config *cfg, struct dp_io **ret_io)
{
	struct dp_io_config c;
	struct dp_io *io;
	int r;

	if (!ret_io)
		return -EINVAL;
	if (cfg)
		c = *cfg;
	else
		dp_io_config_init(&c);
	if (!config_valid(&c))
		return -EINVAL;

	io = aligned_alloc(DP_RING_ALIGN, io_align_up(sizeof(*io)));
	if (!io)
		return -ENOMEM;
	memset(io, 0, sizeof(*io));
	io->cfg = c;
	atomic_init(&io->stop, 0);
	atomic_init(&io->exited, false);
	atomic_init(&io->state, IO_NEW);
	atomic_init(&io->ctl_pending, 0);
	pthread_mutex_init(&io->lock, NULL);
	pthread_cond_init(&io->cond, NULL);
	io->ctl_tail = &io->ctl_head;
	io->free_op = -1;
	io->redo_head = io->redo_tail = -1;
	io->mode.arena_node = -1;
	io->mode.queue_depth = c.queue_depth;
	io->spin_ns = (uint64_t)c.spin_us * 1000;
	io->rb_cap = (int64_t)c.read_burst * 1000000000;
	io->rb_tokens = io->rb_cap; /* a full bucket: the first reads go at once */
	io->rb_t = dp_clock_ns();
	io->wake.efd = -1;

	r = dp_waiter_init(&io->wake, DP_WAITER_EVENTFD, 1);
	if (r < 0)
		goto fail;
	r = -ENOMEM;
	io->files = calloc(c.max_files, sizeof(*io->files));
	io->ops = calloc(c.queue_depth, sizeof(*io->ops));
	io->chans = calloc(c.max_chans, sizeof(*io->chans));
	io->regions = calloc(1 + (size_t)c.max_regions, sizeof(*io->regions));
	if (!io->files || !io->ops || !io->chans || !io->regions)
		goto fail;
	for (uint32_t i = 0; i < c.max_files; i++)
		io->files[i].fd = -1;
	for (uint32_t i = c.queue_depth; i-- > 0;) {
		io->ops[i].next = io->free_op;
		io->free_op = (int32_t)i;
	}

	r = io_arena_setup(io);
	if (r < 0)
		goto fail;
	uint32_t flags =
	    IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_SUBMIT_ALL | IORING_SETUP_R_DISABLED;
	/* DEFER_TASKRUN runs completions in the submitter's task; with SQPOLL
	 * that is the kernel thread, and the kernel refuses the pair. */
	if (c.flags & DP_IO_SQPOLL)
		flags |= IORING_SETUP_SQPOLL;
	else /* TASKRUN_FLAG: a spinning io thread sees pending completions */
		flags |= IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_TASKRUN_FLAG;
	if (c.flags & DP_IO_IOPOLL)
		flags |= IORING_SETUP_IOPOLL;
	r = io_ring_create(io, flags);
	if (r < 0)
		goto fail;
	r = io_ring_register(io);
	if (r < 0)
		goto fail;
	*ret_io = io;
	return 0;
fail:
	dp_io_free(io);
	return r;
}

void dp_io_free(struct dp_io *io)
{
	if (!io)
		return;
	dp_io_stop(io, DP_IO_STOP_CANCEL);
	for (uint32_t i = 0; i < io->n_chans; i++)
		io_chan_destroy(io->chans[i]);
	io->n_chans = 0;
	io_file_close_all(io);
	if (io->ring_ok)
		io_uring_queue_exit(&io->ring);
	dp_topo_free_onnode(&io->arena);
	dp_waiter_fini(&io->wake);
	free(io->files);
	free(io->ops);
	free(io->chans);
	free(io->regions);
	pthread_cond_destroy(&io->cond);
	pthread_mutex_destroy(&io->lock);
	free(io);
}

/* ---- introspection ----------------------------------------------------- */

int dp_io_get_mode(struct dp_io *io, struct dp_io_mode *ret_mode)
{
	if (!io || !ret_mode)
		return -EINVAL;
	pthread_mutex_lock(&io->lock);
	*ret_mode = io->mode;
	pthread_mutex_unlock(&io->lock);
	return 0;
}

static uint64_t rd(const _Atomic uint64_t *p)
{
	return atomic_load_explicit(p, memory_order_relaxed);
}

int dp_io_get_stats(struct dp_io *io, struct dp_io_stats *ret)
{
	struct dp_io_stats s;
	const struct io_counters *c;

	if (!io || !ret)
		return -EINVAL;
	c = &io->st;
	memset(&s, 0, sizeof(s));
	s.reads = rd(&c->reads);
	s.writes = rd(&c->writes);
	s.syncs = rd(&c->syncs);
	s.bytes_read = rd(&c->bytes_read);
	s.bytes_written = rd(&c->bytes_written);
	s.errors = rd(&c->errors);
	s.cancelled = rd(&c->cancelled);
	s.retries = rd(&c->retries);
	s.short_reads = rd(&c->short_reads);
	s.submits = rd(&c->submits);
	s.sqes = rd(&c->sqes);
	s.sleeps = rd(&c->sleeps);
	s.busy_ns = rd(&c->busy_ns);
	s.sleep_ns = rd(&c->sleep_ns);
	s.inflight = atomic_load_explicit(&c->inflight, memory_order_relaxed);
	s.inflight_max = atomic_load_explicit(&c->inflight_max, memory_order_relaxed);
	s.cpu_ns = rd(&c->cpu_ns);
	s.read_waits = rd(&c->read_waits);
	s.write_bytes_submitted = rd(&c->write_bytes_submitted);
	s.read_wait_ns = rd(&c->read_wait_ns);
	pthread_mutex_lock(&io->lock);
	int st = atomic_load_explicit(&io->state, memory_order_relaxed);
	if (st == IO_RUNNING || st == IO_POLLING) {
		clockid_t cid;
		struct timespec ts;
		if (pthread_getcpuclockid(io->owner, &cid) == 0 && clock_gettime(cid, &ts) == 0)
			s.cpu_ns = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
	}
	pthread_mutex_unlock(&io->lock);
	*ret = s;
	return 0;
}

static const char *errname(int err)
{
	const char *n = err ? strerrorname_np(-err) : NULL;
	return n ? n : "?";
}

int dp_io_describe(struct dp_io *io, char *buf, size_t len)
{
	static const struct {
		uint32_t flag;
		const char *name;
	} setup[] = {
	    {IORING_SETUP_IOPOLL, "IOPOLL"},
	    {IORING_SETUP_SQPOLL, "SQPOLL"},
	    {IORING_SETUP_SQ_AFF, "SQ_AFF"},
	    {IORING_SETUP_SUBMIT_ALL, "SUBMIT_ALL"},
	    {IORING_SETUP_R_DISABLED, "R_DISABLED"},
	    {IORING_SETUP_SINGLE_ISSUER, "SINGLE_ISSUER"},
	    {IORING_SETUP_DEFER_TASKRUN, "DEFER_TASKRUN"},
	    {IORING_SETUP_COOP_TASKRUN, "COOP_TASKRUN"},
	    {IORING_SETUP_TASKRUN_FLAG, "TASKRUN_FLAG"},
	};
	struct dp_io_mode m;
	size_t pos = 0;

	if (!io || !buf || !len)
		return -EINVAL;
	buf[0] = '\0';
	dp_io_get_mode(io, &m);
	dp_appendf(buf, len, &pos, "io_uring depth %u (sq %u, cq %u), flags", m.queue_depth,
	           m.sq_entries, m.cq_entries);
	const char *sep = " ";
	for (size_t i = 0; i < DP_ARRAY_SIZE(setup); i++) {
		if (m.setup_flags & setup[i].flag) {
			dp_appendf(buf, len, &pos, "%s%s", sep, setup[i].name);
			sep = "|";
		}
	}
	if (!m.setup_flags)
		dp_appendf(buf, len, &pos, " none");
	dp_appendf(buf, len, &pos, "; ring fd %s",
	           m.ring_fd ? "registered"
	           : m.owned ? "plain"
	                     : "not yet registered (no io thread)");
	dp_appendf(buf, len, &pos, "; files %s", m.fixed_files ? "registered" : "plain fds");
	if (m.arena_bytes)
		dp_appendf(buf, len, &pos, "; arena %zu MiB, %s pages, node %d%s, %s",
		           m.arena_bytes >> 20, dp_topo_pages_name(m.arena_pages), m.arena_node,
		           m.arena_node < 0 ? " (unbound)" : "",
		           m.fixed_bufs ? "registered" : "not registered");
	else
		dp_appendf(buf, len, &pos, "; no arena");
	if (io->cfg.read_rate)
		dp_appendf(buf, len, &pos, "; reads paced to %.1f MB/s (burst %u KiB)",
		           (double)io->cfg.read_rate / 1e6, io->cfg.read_burst >> 10);
	dp_appendf(buf, len, &pos, "; completions %s%s",
	           m.iopoll ? "polled (IOPOLL)" : "interrupt-driven",
	           m.sqpoll ? ", submission by kernel thread (SQPOLL)" : "");
	if (m.fallbacks) {
		dp_appendf(buf, len, &pos, "; fallbacks:");
		sep = " ";
		for (int fb = 0; fb < DP_IO_FB_MAX; fb++) {
			if (!(m.fallbacks & (1u << fb)))
				continue;
			dp_appendf(buf, len, &pos, "%s%s (%s)", sep, dp_io_fallback_name(fb),
			           errname(m.fallback_err[fb]));
			sep = ", ";
		}
	}
	return 0;
}
