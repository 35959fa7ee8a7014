/* SPDX-License-Identifier: MIT */
/*
 * io/io-internal.h — the engine's insides, shared by io*.c only.
 *
 * Files: io.c (setup, lifecycle, control calls, introspection), io-loop.c
 * (the io thread's loop), io-chan.c (the requester side), io-file.c (files
 * and O_DIRECT alignment), io-mem.c (arena and registered regions).
 *
 * Ownership of state, by who writes it:
 *
 *   io thread only ("io-private"): the ring, the op pool, the channel list,
 *     each channel's io block (io_next, io_done, fin[], staging), the
 *     region table. Other threads touch these only while no loop can run:
 *     state NEW (before any loop; they hold io->lock, which the loop takes
 *     to start) or EXITED (after the loop's release of `exited`).
 *   requester only: a channel's next_ticket (and its ring's producer side).
 *   io->lock: the control list, state transitions, the file table's
 *     allocation, io->mode.
 *
 * Cross-thread publication, each a release/acquire pair:
 *   chan->done        io thread -> requester: results and buffer contents of
 *                     tickets below it are final (io-loop.c publish()).
 *   chan ring head    requester -> io thread: request slots (sched/ring.h).
 *   chan ring tail    io thread -> requester: slots may be reused; the
 *                     requester's reads of results below done happened
 *                     before it queued more (so the io thread may overwrite
 *                     their result slots).
 *   io->exited        io thread -> everyone: the loop touches no channel
 *                     any more; a requester may consume its own ring.
 *   io->stop          stopper -> io thread and requesters (seq_cst flag).
 *   io->ctl_pending   caller -> io thread: the control list has work (the
 *                     list itself is under io->lock).
 *   io->state         under io->lock; also read lock-free (acquire) to find
 *                     the poll-mode owner.
 */
#ifndef DP_IO_INTERNAL_H
#define DP_IO_INTERNAL_H

#include <liburing.h>
#include <pthread.h>
#include <stdalign.h>
#include <stdatomic.h>

#include "io/io.h"
#include "sched/ring.h"
#include "sched/wait.h"
#include "sched/topo.h"

/* Requests taken from a channel's ring per pass. */
#define IO_STAGE 32u
/* Resubmissions of one request for -EAGAIN / -EINTR before giving up. */
#define IO_RETRY_MAX 1000u
/* Largest fixed-buffer table entry (the kernel's limit per iovec). */
#define IO_REGION_SLOT (1ull << 30)
/* user_data of SQEs that are not requests. */
#define IO_UD_WAKE UINT64_MAX
#define IO_UD_CANCEL (UINT64_MAX - 1)
#define IO_UD_NOP (UINT64_MAX - 2)

enum io_state {
	IO_NEW,     /* no loop has run yet; nobody owns the ring */
	IO_POLLING, /* owned by a thread that calls dp_io_poll() */
	IO_RUNNING, /* a thread is inside dp_io_run() */
	IO_EXITED,  /* stopped for good */
};

struct io_file {
	int fd;
	bool used;
	bool owned;  /* opened by dp_io_file_open: closed on remove */
	bool fixed;  /* in the registered table at index = handle */
	bool direct;
	bool stream;
	bool fell_back;
	int fallback_err;
	uint32_t mem_align, off_align;
	uint32_t inflight; /* io-private: ops in the kernel on this file */
};

struct io_region {
	uintptr_t base;
	size_t len;
	uint32_t first_slot; /* fixed-buffer table index of its first GiB */
	uint32_t n_slots;
	bool used;
	bool registered; /* its entries are in the ring's table */
};

struct io_op {
	struct dp_io_chan *chan;
	uint64_t ticket;
	struct dp_io_req req;
	uint32_t done;    /* bytes moved so far */
	uint32_t retries;
	int32_t next;     /* free list / redo list link */
	bool in_kernel;
};

struct dp_io_chan {
	/* Requester block: written by the requester only. */
	alignas(DP_RING_ALIGN) uint64_t next_ticket;

	/* Published by the io thread (release), read by the requester. */
	alignas(DP_RING_ALIGN) _Atomic uint64_t done;

	/* The requester sleeps here; the io thread wakes it. Aligned inside. */
	struct dp_waiter waiter;

	/* Published by the io thread (relaxed) at each completion, read by
	 * anyone: time with at least one of the channel's requests in flight
	 * or a read of it waiting for the read rate, and bytes moved. */
	alignas(DP_RING_ALIGN) _Atomic uint64_t busy_ns;
	_Atomic uint64_t bytes;

	/* io-private block. */
	alignas(DP_RING_ALIGN) uint64_t io_next; /* tickets taken off the ring */
	uint64_t io_done;                        /* what `done` will be published as */
	uint32_t inflight;                       /* taken, not finished (kernel or redo) */
	uint64_t kbytes;                         /* their bytes */
	uint64_t busy_since; /* when inflight last left 0, or a read began to wait for the bucket */
	uint32_t stage_head, stage_n;
	uint64_t rate_held_since;                /* its next read waits for the read
	                                          * rate since then; 0: it does not */
	bool barrier;                            /* a barrier request is unfinished */
	bool dirty;                              /* io_done moved since the last publish */
	struct dp_io_chan *dirty_next;
	struct dp_io_req stage[IO_STAGE];

	/* Geometry: written at creation, read-only afterwards. */
	alignas(DP_RING_ALIGN) struct dp_io *io;
	struct dp_spsc *ring;
	int32_t *results; /* written by the io thread, read by the requester after done */
	uint64_t *hashes; /* DP_IO_F_HASH reads: the hash, and its ticket + 1 (0: none) */
	uint8_t *fin;     /* io-private: ticket finished, waiting for earlier ones */
	uint32_t mask;    /* depth - 1 */
	_Atomic uint32_t prio; /* enum dp_io_prio; read by the io thread each pass */
	_Atomic uint64_t kbytes_max; /* dp_io_chan_set_limit; read by the io thread each pass */
};

_Static_assert(offsetof(struct dp_io_chan, done) - offsetof(struct dp_io_chan, next_ticket) >=
		       DP_RING_ALIGN,
	       "requester and completion blocks must not share a line pair");
_Static_assert(offsetof(struct dp_io_chan, io_next) - offsetof(struct dp_io_chan, done) >=
		       DP_RING_ALIGN,
	       "completion and io blocks must not share a line pair");
_Static_assert(sizeof(struct dp_io_req) % 8 == 0 && sizeof(struct dp_io_req) <= DP_RING_ESIZE_MAX,
	       "requests travel by value on sched rings");

/* Counters: written by the io thread only (relaxed load + store, no RMW),
 * read by anyone with relaxed loads. */
struct io_counters {
	_Atomic uint64_t reads, writes, syncs, bytes_read, bytes_written;
	_Atomic uint64_t errors, cancelled, retries, short_reads;
	_Atomic uint64_t submits, sqes, sleeps, busy_ns, sleep_ns, cpu_ns;
	_Atomic uint64_t read_waits, read_wait_ns;
	_Atomic uint64_t write_bytes_submitted;
	_Atomic uint32_t inflight, inflight_max;
};

enum io_ctl_op {
	CTL_CHAN_ADD,
	CTL_CHAN_DEL,
	CTL_FILE_REG,
	CTL_FILE_UNREG,
	CTL_MEM_REG,
	CTL_MEM_UNREG,
};

struct io_ctl {
	enum io_ctl_op op;
	struct dp_io_chan *chan;
	uint32_t idx;
	void *addr;
	size_t len;
	int ret;
	bool done;
	struct io_ctl *next;
};

struct dp_io {
	/* Read-mostly, shared. */
	alignas(DP_RING_ALIGN) struct dp_io_config cfg;
	struct io_file *files; /* cfg.max_files */
	struct dp_topo_mem arena;
	_Atomic uint32_t stop;  /* 0, or 1 + enum dp_io_stop */
	_Atomic bool exited;
	_Atomic int state;      /* enum io_state; changed under lock */

	/* The io thread sleeps here; requesters and control calls wake it. */
	struct dp_waiter wake;

	/* io-private. */
	alignas(DP_RING_ALIGN) struct io_uring ring;
	bool ring_ok;           /* ring initialized */
	bool wake_armed;        /* multishot poll on wake's eventfd is armed */
	bool shutting_down;     /* io_shutdown() runs */
	bool cancelling;        /* DP_IO_STOP_CANCEL in progress */
	bool rebuild;           /* IOPOLL refused: rebuild the ring when quiet */
	int broken;             /* rebuilding failed: every request gets this */
	uint32_t setup_flags;   /* of the ring in use */
	uint32_t inflight;      /* ops in the kernel (or prepared for it) */
	uint32_t unsubmitted;   /* prepared SQEs not yet submitted */
	struct io_op *ops;      /* cfg.queue_depth */
	int32_t free_op;
	int32_t redo_head, redo_tail;
	struct dp_io_chan **chans; /* cfg.max_chans */
	uint32_t n_chans;
	uint32_t rr;
	struct dp_io_chan *dirty;
	struct io_region *regions; /* 1 + cfg.max_regions: [0] is the arena */
	uint32_t n_buf_slots;      /* fixed-buffer table size; 0: none */
	bool bufs_sparse;          /* table can be updated */
	uint64_t t_mark;           /* busy-time accounting */
	uint64_t t_active;         /* last pass that moved something */
	uint64_t spin_ns;          /* cfg.spin_us */
	/* The read rate's token bucket (cfg.read_rate; io.h "Read rate").
	 * Tokens count bytes x 1e9, so that dt ns of refill add exactly
	 * dt x read_rate: no rounding, the average is the rate. Bounds: the
	 * cap is read_burst <= 1 GiB (~1.07e18), the debt at most one read's
	 * length (<= 1 GiB) below 0, both far inside int64. */
	int64_t rb_tokens;         /* < 0: in debt, reads wait */
	int64_t rb_cap;            /* cfg.read_burst x 1e9 */
	uint64_t rb_t;             /* the last refill */
	bool rb_held;              /* io_has_work found a read held by it */

	/* Counters (their own line pair). */
	alignas(DP_RING_ALIGN) struct io_counters st;

	/* Under lock. */
	alignas(DP_RING_ALIGN) pthread_mutex_t lock;
	pthread_cond_t cond;
	struct io_ctl *ctl_head, **ctl_tail;
	_Atomic uint32_t ctl_pending;
	struct dp_io_mode mode;
	pthread_t owner;        /* valid when state is POLLING or RUNNING */
	pthread_t thread;       /* dp_io_start's */
	bool thread_started, thread_joined, attach_done;
	int attach_ret;
	int thread_cpu;
};

/* io.c */
int io_ctl_call(struct dp_io *io, struct io_ctl *c);
void io_ctl_drain(struct dp_io *io);
int io_ctl_exec(struct dp_io *io, struct io_ctl *c);
void io_fallback(struct dp_io *io, enum dp_io_fallback fb, int err);
int io_ring_create(struct dp_io *io, uint32_t flags);
int io_ring_register(struct dp_io *io);
bool io_is_owner(struct dp_io *io);

/* io-loop.c */
int io_iter(struct dp_io *io, int64_t timeout_ns, bool spin);
void io_shutdown(struct dp_io *io, enum dp_io_stop how);
int io_chan_detach(struct dp_io *io, struct dp_io_chan *c);

/* io-chan.c */
void io_chan_self_cancel(struct dp_io_chan *c);
void io_chan_destroy(struct dp_io_chan *c);

/* io-mem.c */
int io_arena_setup(struct dp_io *io);
int io_bufs_register(struct dp_io *io);
int io_region_add(struct dp_io *io, struct io_ctl *c);
int io_region_remove(struct dp_io *io, uint32_t idx);
int io_buf_index(const struct dp_io *io, const void *addr, uint32_t len);

/* io-file.c */
int io_files_register(struct dp_io *io);
int io_file_reg(struct dp_io *io, uint32_t idx);
int io_file_unreg(struct dp_io *io, uint32_t idx);
void io_file_close_all(struct dp_io *io);

/* Bytes rounded up to whole line pairs, for aligned_alloc(DP_RING_ALIGN). */
static inline size_t io_align_up(size_t n)
{
	const size_t a = DP_RING_ALIGN;
	return (n + a - 1) / a * a;
}

/* Counter helpers: single writer, so load + store (no RMW on the hot path). */
static inline void io_stat_add(_Atomic uint64_t *s, uint64_t v)
{
	atomic_store_explicit(s, atomic_load_explicit(s, memory_order_relaxed) + v,
			      memory_order_relaxed);
}

static inline void io_stat_set32(_Atomic uint32_t *s, uint32_t v)
{
	atomic_store_explicit(s, v, memory_order_relaxed);
}

#endif /* DP_IO_INTERNAL_H */
