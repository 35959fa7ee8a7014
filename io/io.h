/* SPDX-License-Identifier: MIT */
/*
 * io/io.h — the prefetch path's I/O engine: one io_uring, owned by one
 * thread (the io thread), fed by requester threads through rings.
 *
 * Pieces:
 *
 *   struct dp_io        the engine: one io_uring ring (SINGLE_ISSUER and
 *                       DEFER_TASKRUN and a registered ring fd where the
 *                       kernel has them; IOPOLL and SQPOLL opt-in), a table
 *                       of registered files, and an arena of registered
 *                       (fixed) buffers on a NUMA node (sched/topo).
 *   struct dp_io_chan   one requester's connection to it: an SPSC ring of
 *                       requests (requester -> io thread), a ticket per
 *                       request, a completion counter and a result slot per
 *                       ticket (io thread -> requester), and a waiter the
 *                       requester may sleep on.
 *
 * Completion contract (the part other code relies on):
 *
 *   - dp_io_submit() hands out tickets 0, 1, 2, ... per channel, in the order
 *     the requests were queued.
 *   - dp_io_completed(c) is a counter: every ticket below it is finished
 *     (result recorded, kernel done with the buffer). The io thread advances it
 *     in ticket order even though io_uring completes out of order, so one
 *     number describes the whole channel.
 *   - A buffer named by ticket t belongs to the engine from dp_io_submit()
 *     until dp_io_completed(c) > t. Until then the caller must not free it,
 *     reuse it for another request, overwrite it (writes) or read it (reads).
 *     This is how the KV cache knows a page is free again: a page whose last
 *     copy has ticket t is free once completed > t.
 *   - Visibility: the counter is published with a release store after the
 *     result slot is written and after the kernel posted the completion, and
 *     dp_io_completed()/dp_io_wait() read it with an acquire load, so a thread
 *     that saw completed > t also sees the data a read put in the buffer and
 *     the ticket's result (dp_io_result()).
 *   - The result slot of ticket t is kept until the channel's ticket
 *     t + depth is submitted; read it before that (dp_io_result() says
 *     -ESTALE otherwise). A channel never has more than depth tickets
 *     unfinished: dp_io_submit() returns -EAGAIN when the window is full.
 *   - Results: reads and writes give the bytes moved; a read that reaches the
 *     end of the file gives what exists (a short count; 0 at or past the
 *     end). Short transfers that are not at the end of the file, -EAGAIN and
 *     -EINTR are resubmitted by the engine (counted as retries). Other errors
 *     are the request's result as a negative errno (-EIO, -ENOSPC, -EBADF,
 *     -EFBIG...). Syncs give 0 or a negative errno. Requests cancelled by
 *     dp_io_stop(DP_IO_STOP_CANCEL) give -ECANCELED (or the bytes moved so far).
 *   - Ordering: requests of one channel may run concurrently and complete in
 *     any order, except around a request flagged DP_IO_F_BARRIER, which starts
 *     only after every earlier request of its channel has finished, and
 *     before which no later request of its channel starts (journal writes:
 *     write records, then fdatasync with DP_IO_F_BARRIER, then the next
 *     records). A sync without the flag may run beside earlier writes.
 *
 * Memory: the arena is dp_topo_alloc_onnode() memory, hugetlb or THP backed
 * where available (DP_IO_NO_HUGE: base pages), registered with io_uring as
 * fixed buffers in regions of at most 1 GiB. io_uring pins the pages itself
 * (FOLL_LONGTERM), so no mlock is needed. Registration of anonymous THP and
 * hugetlb memory works (checked on Linux 6.18; file-backed memory would give
 * EOPNOTSUPP); if it fails on huge pages the engine retries on base pages
 * (MADV_NOHUGEPAGE), and if it fails again (RLIMIT_MEMLOCK: pinned pages are
 * charged to it without CAP_IPC_LOCK; raise LimitMEMLOCK= for the daemon) it
 * runs with plain, unregistered buffers and reports DP_IO_FB_FIXED_BUFS.
 * Requests may name any memory: an address inside the arena uses the fixed
 * buffer, anything else a plain read/write.
 *
 * O_DIRECT: dp_io_file_open() opens with O_DIRECT unless told not to and
 * queries the file's alignment with statx(STATX_DIOALIGN) (Linux 6.1+), else
 * the disk's logical block size (BLKSSZGET for block devices, sysfs for
 * files), else 4096. A file system that refuses O_DIRECT (open gives EINVAL:
 * procfs, ramfs, tmpfs before Linux 6.6) or says it has no direct I/O (statx
 * alignment 0) is opened buffered instead: dp_io_file_info() says so and
 * dp_io_get_mode() reports DP_IO_FB_BUFFERED. On direct files, requests whose
 * offset, length or address is not aligned are refused by dp_io_submit()
 * with -EINVAL before anything is submitted.
 *
 * Modes (probed in dp_io_new(); dp_io_get_mode()/dp_io_describe() say what
 * runs and which fallbacks were taken, with the errno that caused each):
 *   - ring flags are tried newest first and dropped one by one on EINVAL:
 *     DEFER_TASKRUN, SUBMIT_ALL, SINGLE_ISSUER, R_DISABLED (so the ring can
 *     be set up by one thread and owned by the io thread).
 *   - DP_IO_IOPOLL: completions are polled, not interrupt driven. Needs
 *     O_DIRECT files on a device with poll queues (nvme poll_queues=N); on
 *     others (virtio-blk, buffered files, fsync) the kernel refuses at
 *     submission (EOPNOTSUPP). The engine then rebuilds its ring without
 *     IOPOLL, resubmits what was refused and reports DP_IO_FB_IOPOLL.
 *   - DP_IO_SQPOLL: a kernel thread submits. Only worth it with a core to
 *     itself (on a 2-core VM fio fell from ~70k to ~6k IOPS with it); it
 *     excludes DEFER_TASKRUN.
 *
 * The io thread's loop: take requests from every channel in bursts, prepare
 * SQEs, submit them with one io_uring_enter per batch (while the device is
 * busy, the same enter that waits for the next completion), reap
 * completions, start queued requests on the freed slots, resubmit short
 * transfers and -EAGAIN, then publish each channel's counter once per batch
 * and wake its requester only if it sleeps. With nothing to do it polls for
 * spin_us (default 0), then sleeps in io_uring_enter until a completion or
 * a requester's wake (an eventfd polled by the ring), so an idle engine uses
 * no CPU. While all queue_depth slots are busy it sleeps without telling
 * requesters, who then queue without a wake-up system call.
 *
 * Read rate (read_rate, read_burst): a token bucket on the io thread paces
 * every read the engine starts, all channels together (it stands for the
 * device's rate: an operator's cap that keeps the NVMe tier's reads from
 * starving other tenants of a shared disk, or a slower disk for a
 * benchmark). A read starts only while the bucket is not in debt (tokens
 * >= 0), then takes its whole length (debt allowed: a read larger than the
 * burst still goes, and the average over any long run is exactly the rate);
 * tokens refill at read_rate bytes a second up to read_burst. Every read is
 * paced, not an average over a time slice as the kernel's blkio throttle
 * does (which lets a read after a pause go at the disk's own speed).
 * Resubmissions of a short read are not charged again; writes and syncs
 * are not paced, and a channel whose next request is a held read holds its
 * later requests behind it (channel order) while other channels' requests
 * go on. While reads are held the io thread sleeps until the bucket allows
 * the next one (a timeout on its wait), or until other work comes (an
 * IOPOLL ring with requests in flight waits for the next completion, which
 * a polled device posts soon). dp_io_stats says how long reads waited.
 *
 * Depth: queue_depth bounds requests in the kernel (fio's iodepth). A
 * channel's depth bounds unfinished tickets; make it larger (2-4x) so the
 * kernel stays busy while the in-order counter waits for a slow request.
 *
 * Who may call what:
 *   dp_io_new, dp_io_free           no concurrent users; free after stop.
 *   dp_io_start / dp_io_run         once per engine: the thread that runs
 *   / dp_io_poll                    the loop first (the io thread) owns the
 *                                   ring for good; run/poll from another
 *                                   thread give -EBUSY.
 *   dp_io_stop                      any thread but the io thread (in poll
 *                                   mode another thread's stop waits for the
 *                                   owner's next dp_io_poll).
 *   dp_io_file_*, dp_io_chan_new,   any thread, any time (they hand work to
 *   dp_io_get_*, dp_io_describe     the io thread and wait, or run inline
 *                                   when no loop runs or on the io thread).
 *   dp_io_buf*                      any thread.
 *   dp_io_submit/read/write/fsync,  the channel's requester: one thread at a
 *   dp_io_wait, dp_io_result,       time (hand a channel over with external
 *   dp_io_chan_free                 synchronization).
 *   dp_io_completed,                any thread (a snapshot).
 *   dp_io_chan_counter
 *
 * Errors are negative errno values; output parameters are untouched on
 * failure. Nothing here logs.
 */
#ifndef DP_IO_H
#define DP_IO_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "sched/topo.h"

#ifdef __cplusplus
extern "C" {
#endif

struct dp_io;
struct dp_io_chan;

/* ---- configuration ----------------------------------------------------- */

enum dp_io_flags {
	DP_IO_IOPOLL = 1u << 0,         /* poll for completions (see above) */
	DP_IO_SQPOLL = 1u << 1,         /* kernel submission thread (see above) */
	DP_IO_NO_HUGE = 1u << 2,        /* arena on base pages */
	DP_IO_NO_FIXED_BUFS = 1u << 3,  /* do not register the arena */
	DP_IO_NO_FIXED_FILES = 1u << 4, /* do not register files */
	DP_IO_FLAGS_MAX = 1u << 5,
};

#define DP_IO_DEPTH_MAX 4096u
#define DP_IO_CHAN_DEPTH_MAX 65536u
#define DP_IO_LEN_MAX (1u << 30) /* bytes per request */
#define DP_IO_READ_RATE_MAX (1ull << 40) /* bytes a second (1 TiB/s) */
#define DP_IO_READ_BURST_DEFAULT (256u << 10)

struct dp_io_config {
	uint32_t queue_depth;    /* requests in the kernel at most, 1..DP_IO_DEPTH_MAX */
	uint32_t n_bufs;         /* buffers in the arena (0: no arena) */
	uint32_t buf_size;       /* bytes per buffer, a multiple of 4096 */
	uint32_t max_files;      /* file table slots, 1..65536 */
	uint32_t max_chans;      /* channels at once, 1..1024 */
	uint32_t max_regions;    /* dp_io_mem_register() regions, 0..64 */
	int node;                /* NUMA node for the arena; -1: no binding */
	unsigned flags;          /* enum dp_io_flags */
	int sqpoll_cpu;          /* DP_IO_SQPOLL: cpu for the kernel thread; -1: any */
	uint32_t sqpoll_idle_ms; /* DP_IO_SQPOLL: idle time before it sleeps */
	uint32_t spin_us;        /* after its last work the io thread, and a
	                          * requester in dp_io_wait, poll this long
	                          * before sleeping (0: sleep at once) */
	uint64_t read_rate;      /* bytes a second all reads together may start
	                          * at, 0..DP_IO_READ_RATE_MAX (0: no limit);
	                          * see "Read rate" above */
	uint32_t read_burst;     /* bytes the bucket holds at most, 0..DP_IO_LEN_MAX
	                          * (reads that may start at once after a pause) */
};

/* Defaults: depth 128, no arena, 64 files, 16 channels, 8 regions, node -1,
 * no flags, sqpoll_cpu -1, sqpoll_idle_ms 100, spin_us 0 (on a busy 2-core
 * VM any polling lost throughput: the poller takes the core the other
 * thread needs; give it a few tens of us where cores are dedicated),
 * read_rate 0 (no limit), read_burst DP_IO_READ_BURST_DEFAULT (256 KiB: a
 * few restore pages at once).
 * Returns 0 or -EINVAL. */
int dp_io_config_init(struct dp_io_config *cfg);

/* ---- engine ------------------------------------------------------------ */

/* Create the ring, the arena and the tables (cfg NULL: defaults). Returns 0,
 * -EINVAL (bad config: a field out of its range above), -ENOMEM, or the
 * error of io_uring_setup (-EPERM when io_uring is disabled by sysctl,
 * -ENOSYS...). */
int dp_io_new(const struct dp_io_config *cfg, struct dp_io **ret_io);
/* Stop (DP_IO_STOP_CANCEL) if still running, free channels still attached,
 * close the files it opened, release the ring and arena. NULL ok. */
void dp_io_free(struct dp_io *io);

/* Spawn the io thread running dp_io_run(); pin it to `cpu` (-1: no
 * pinning). Returns when the thread owns the ring: 0, -EBUSY (a loop already
 * ran), -EINVAL (cpu), or the error of taking the ring over. */
int dp_io_start(struct dp_io *io, int cpu);

enum dp_io_stop {
	DP_IO_STOP_DRAIN,  /* finish every request queued before the stop */
	DP_IO_STOP_CANCEL, /* cancel what has not started (-ECANCELED), ask the
	                    * kernel to cancel what has, wait for the rest */
	DP_IO_STOP_MAX,
};

/* Stop the loop and wait until it has exited; join the thread of
 * dp_io_start(). Every ticket handed out before the stop is then finished;
 * later dp_io_submit() calls give -ESHUTDOWN. 0, -EINVAL, or -EDEADLK on
 * the io thread. Calling it again is harmless. */
int dp_io_stop(struct dp_io *io, enum dp_io_stop how);

/* Run the loop in the calling thread until dp_io_stop(). Returns 0 after a
 * stop, -EBUSY if another thread owns the ring, -ESHUTDOWN after a stop. */
int dp_io_run(struct dp_io *io);

/* One pass of the loop in the calling thread (which becomes the io thread),
 * for tests and for callers that drive the engine themselves: take requests,
 * submit, reap. If nothing moved, wait up to timeout_ns (0: not at all,
 * <0: until something happens) for a completion or a request. Returns the
 * number of requests finished, -EBUSY (another thread owns the ring) or
 * -ESHUTDOWN (stopped). dp_io_wait() on this thread drives it too. */
int dp_io_poll(struct dp_io *io, int64_t timeout_ns);

/* ---- what runs --------------------------------------------------------- */

enum dp_io_fallback {
	DP_IO_FB_DEFER_TASKRUN, /* IORING_SETUP_DEFER_TASKRUN refused */
	DP_IO_FB_SINGLE_ISSUER, /* IORING_SETUP_SINGLE_ISSUER refused */
	DP_IO_FB_RING_FD,       /* io_uring_register_ring_fd refused */
	DP_IO_FB_IOPOLL,        /* IOPOLL asked for, refused at setup or submission */
	DP_IO_FB_SQPOLL,        /* SQPOLL asked for, refused at setup */
	DP_IO_FB_FIXED_FILES,   /* file registration refused: plain fds */
	DP_IO_FB_FIXED_BUFS,    /* buffer registration refused: plain buffers */
	DP_IO_FB_HUGE_PAGES,    /* arena on base pages although huge were allowed */
	DP_IO_FB_BUFFERED,      /* a file asked for O_DIRECT runs buffered */
	DP_IO_FB_MAX,
};

const char *dp_io_fallback_name(enum dp_io_fallback fb); /* "iopoll"...; NULL if out of range */

struct dp_io_mode {
	uint32_t setup_flags;   /* IORING_SETUP_* of the ring in use */
	uint32_t features;      /* IORING_FEAT_* the kernel reported */
	uint32_t sq_entries, cq_entries;
	uint32_t queue_depth;
	bool single_issuer, defer_taskrun, iopoll, sqpoll;
	bool ring_fd;           /* ring fd registered (io thread attached) */
	bool fixed_files;       /* a registered file table exists */
	bool fixed_bufs;        /* the arena is registered */
	bool owned;             /* a thread owns the ring (loop started) */
	size_t arena_bytes;     /* mapped bytes, 0: no arena */
	int arena_node;         /* -1: not bound */
	enum dp_topo_pages arena_pages;
	uint32_t fallbacks;     /* bit 1u << enum dp_io_fallback per fallback taken */
	int fallback_err[DP_IO_FB_MAX]; /* the negative errno behind each */
};

int dp_io_get_mode(struct dp_io *io, struct dp_io_mode *ret_mode);

/* One paragraph for a log: flags in effect, fallbacks and why. Truncated to
 * len like snprintf. Returns 0 or -EINVAL. */
int dp_io_describe(struct dp_io *io, char *buf, size_t len);

/* Counters, updated by the io thread, read from any thread (a snapshot). */
struct dp_io_stats {
	uint64_t reads, writes, syncs; /* requests finished, by kind */
	uint64_t bytes_read, bytes_written;
	uint64_t errors;        /* finished with an error other than -ECANCELED */
	uint64_t cancelled;     /* finished with -ECANCELED */
	uint64_t retries;       /* resubmissions (short transfers, -EAGAIN, -EINTR) */
	uint64_t short_reads;   /* reads that ended short at the end of the file */
	uint64_t submits;       /* io_uring_enter calls that submitted */
	uint64_t sqes;          /* SQEs submitted (sqes / submits: batch size) */
	uint64_t sleeps;        /* times the io thread slept */
	uint64_t busy_ns;       /* time in the loop not asleep */
	uint64_t sleep_ns;      /* time asleep */
	uint64_t cpu_ns;        /* CPU time of the io thread (user + system) */
	uint64_t read_waits;    /* reads that waited for the read rate (read_rate) */
	uint64_t read_wait_ns;  /* their time waiting, summed (a channel's next
	                         * read held from when it was first held) */
	uint64_t write_bytes_submitted; /* bytes of writes handed to the kernel (a
	                         * resubmitted remainder counted again) */
	uint32_t inflight;      /* requests in the kernel now */
	uint32_t inflight_max;  /* most at once */
};

int dp_io_get_stats(struct dp_io *io, struct dp_io_stats *ret_stats);

/* ---- the arena --------------------------------------------------------- */

uint32_t dp_io_buf_count(const struct dp_io *io);
uint32_t dp_io_buf_size(const struct dp_io *io);
/* Address of arena buffer idx, or NULL when out of range. Which buffers are
 * in use is the caller's business (the KV cache's page allocator). */
void *dp_io_buf(const struct dp_io *io, uint32_t idx);

/* Register caller memory as fixed buffers too (e.g. the KV cache's DRAM
 * tier): addr and len page-aligned, any size (split into 1 GiB table
 * entries). The memory stays the caller's and must outlive the
 * registration. Requests into it then use fixed-buffer reads and writes.
 * Returns 0 and a handle, -EINVAL, -ENOSPC (max_regions or table full),
 * -EOPNOTSUPP (no fixed buffers here: the memory still works, unregistered),
 * -ENOMEM (RLIMIT_MEMLOCK), -ESHUTDOWN. */
int dp_io_mem_register(struct dp_io *io, void *addr, size_t len, uint32_t *ret_region);
/* Drop a registration. No request into the region may be in flight. */
int dp_io_mem_unregister(struct dp_io *io, uint32_t region);

/* ---- files ------------------------------------------------------------- */

enum dp_io_file_flags {
	DP_IO_FILE_BUFFERED = 1u << 0, /* do not try O_DIRECT */
	DP_IO_FILE_FLAGS_MAX = 1u << 1,
};

/* Open `path` (oflags as open(2), O_CLOEXEC and, unless DP_IO_FILE_BUFFERED,
 * O_DIRECT added; mode for O_CREAT) and register it. The engine owns the fd.
 * Returns 0, -EINVAL, -ENFILE (table full), -ESHUTDOWN, or open's error. */
int dp_io_file_open(struct dp_io *io, const char *path, int oflags, mode_t mode, unsigned flags,
                    uint32_t *ret_file);
/* Register an fd the caller keeps owning (it must stay open until removed).
 * O_DIRECT is in effect if the fd has it. Pipes, sockets and character
 * devices are streams: offsets are ignored and short reads are final. */
int dp_io_file_add(struct dp_io *io, int fd, uint32_t *ret_file);
/* Unregister (and close, if the engine opened it). The caller must have
 * seen every request on it finish: -EBUSY while some are in the kernel. */
int dp_io_file_remove(struct dp_io *io, uint32_t file);

struct dp_io_file_info {
	int fd;
	bool direct;           /* O_DIRECT in effect */
	bool fixed;            /* in the registered file table */
	bool stream;           /* pipe, socket or character device */
	bool fell_back;        /* O_DIRECT asked for, buffered instead */
	int fallback_err;      /* why (-EINVAL...), 0 if not */
	uint32_t mem_align;    /* buffer alignment direct I/O needs (1: none) */
	uint32_t offset_align; /* offset and length alignment (1: none) */
};

int dp_io_file_info(struct dp_io *io, uint32_t file, struct dp_io_file_info *ret_info);

/* ---- requests ---------------------------------------------------------- */

enum dp_io_op {
	DP_IO_OP_READ,
	DP_IO_OP_WRITE,
	DP_IO_OP_FSYNC,
	DP_IO_OP_FDATASYNC,
	DP_IO_OP_MAX,
};

enum dp_io_req_flags {
	DP_IO_F_BARRIER = 1u << 0, /* see "Ordering" above */
	DP_IO_F_HASH = 1u << 1,    /* a read: the io thread hashes what it read (dp_io_result_hash) */
	DP_IO_F_MAX = 1u << 2,
};

/* One request, copied by value into the channel's ring. */
struct dp_io_req {
	uint8_t op;        /* enum dp_io_op */
	uint8_t flags;     /* enum dp_io_req_flags */
	uint16_t reserved; /* 0 */
	uint32_t file;     /* handle from dp_io_file_open/add */
	uint64_t offset;   /* bytes into the file (read, write) */
	void *addr;        /* buffer (read, write): arena or any memory */
	uint32_t len;      /* bytes, 1..DP_IO_LEN_MAX (read, write); 0 for syncs */
	uint32_t reserved2;
};

/* A channel for the calling (requester) thread, with room for `depth`
 * unfinished tickets (rounded up to a power of two, 2..DP_IO_CHAN_DEPTH_MAX;
 * 0: twice the queue depth). Returns 0, -EINVAL, -ENOMEM, -EMFILE (max_chans
 * reached). */
int dp_io_chan_new(struct dp_io *io, uint32_t depth, struct dp_io_chan **ret_chan);
/* Wait for the channel's tickets (drop those not started, if the engine
 * never ran or has stopped), detach it and free it. NULL ok. */
void dp_io_chan_free(struct dp_io_chan *c);
uint32_t dp_io_chan_depth(const struct dp_io_chan *c);

/* Which channels the io thread serves first when it has free slots: every
 * HIGH channel's queued requests before any NORMAL one's, NORMAL before LOW
 * (round robin among equals). The prefetch path puts what the next layer
 * needs on HIGH and writeback on LOW. New channels are NORMAL. Any thread. */
enum dp_io_prio {
	DP_IO_PRIO_HIGH,
	DP_IO_PRIO_NORMAL,
	DP_IO_PRIO_LOW,
	DP_IO_PRIO_MAX,
};
int dp_io_chan_set_priority(struct dp_io_chan *c, enum dp_io_prio prio);

/* At most `bytes` of the channel's requests in the kernel at once (0: no
 * limit; one request always goes, whatever its size). The io thread starts
 * the next queued request as soon as one finishes, so a requester that
 * queues in the order it needs its data (the restore queue, earliest layer
 * first) gets its earliest bytes first instead of the device working on
 * queue_depth requests in parallel and finishing them together; and the
 * slots the limit leaves go to other channels (writeback). Any thread. */
int dp_io_chan_set_limit(struct dp_io_chan *c, uint64_t bytes);

/* Queue up to n requests (all valid, or none queued: -EINVAL for a bad
 * request, e.g. a misaligned one on a direct file, -EBADF for an unknown
 * file) and wake the io thread if it sleeps. Queues as many as the window
 * holds: returns that count (>= 1) and the first one's ticket in *ret_first
 * (the others follow); -EAGAIN when the window is full, -ESHUTDOWN after a
 * stop. */
int dp_io_submit(struct dp_io_chan *c, const struct dp_io_req *reqs, uint32_t n,
                 uint64_t *ret_first);

/* One request each; 0 and its ticket, or dp_io_submit's errors. */
int dp_io_read(struct dp_io_chan *c, uint32_t file, uint64_t offset, void *addr, uint32_t len,
               unsigned flags, uint64_t *ret_ticket);
int dp_io_write(struct dp_io_chan *c, uint32_t file, uint64_t offset, const void *addr,
                uint32_t len, unsigned flags, uint64_t *ret_ticket);
/* op: DP_IO_OP_FSYNC or DP_IO_OP_FDATASYNC. */
int dp_io_sync(struct dp_io_chan *c, uint32_t file, enum dp_io_op op, unsigned flags,
               uint64_t *ret_ticket);

/* The channel's I/O time: how long at least one of its requests was in
 * flight or waiting for the read rate (so concurrent requests count once),
 * and the bytes its finished requests moved; bytes / busy_ns is the rate
 * the channel actually got, paced or not. Both move at each completion
 * (the time up to it), so a rate over any stretch of a long run of reads
 * holds too. Any thread (relaxed snapshots). */
int dp_io_chan_busy(const struct dp_io_chan *c, uint64_t *ret_busy_ns, uint64_t *ret_bytes);

/* Every ticket below the returned value is finished (acquire; any thread). */
uint64_t dp_io_completed(const struct dp_io_chan *c);
/* The counter itself, to poll inline: load it with memory_order_acquire. */
const _Atomic uint64_t *dp_io_chan_counter(const struct dp_io_chan *c);
/* Tickets handed out so far (the next ticket). Requester only. */
uint64_t dp_io_chan_next(const struct dp_io_chan *c);

/* Spin, then sleep, until ticket is finished or timeout_ns passes (<0:
 * none). Returns 0, -ETIMEDOUT, or -EINVAL (ticket not handed out). */
int dp_io_wait(struct dp_io_chan *c, uint64_t ticket, int64_t timeout_ns);

/* The finished ticket's result (bytes or -errno) in *ret_res. Returns 0,
 * -EAGAIN (not finished yet), -ESTALE (slot reused: ticket + depth was
 * submitted) or -EINVAL. */
int dp_io_result(const struct dp_io_chan *c, uint64_t ticket, int32_t *ret_res);
/* A finished DP_IO_F_HASH read's XXH3_64bits of the bytes it read (all of
 * its len), computed on the io thread as it finished, so the requester
 * checks a checksum without reading the buffer again. Returns 0, -ENODATA
 * (not such a read, or it read less than its len), or dp_io_result's errors. */
int dp_io_result_hash(const struct dp_io_chan *c, uint64_t ticket, uint64_t *ret_hash);

#ifdef __cplusplus
}
#endif

#endif /* DP_IO_H */
