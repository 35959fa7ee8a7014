/* SPDX-License-Identifier: MIT */
/*
 * The I/O-only time of a run: the reads its restores did, done alone, at
 * the io engine's depth, on the same slot file. Linux AIO (io_submit) with
 * O_DIRECT keeps `depth` reads in flight without a library; each slot is
 * read as the daemon reads it (kvcache/restore.c): its 4 KiB header, then
 * its 64 KiB page, two requests. Slots go in a shuffled order (a restore
 * reads one session's slots, scattered over the file by earlier demotions
 * of all sessions), cycling over the file when asked for more slots than
 * it has.
 *
 * At a read rate (--throttle-read: the daemons' --io-read-rate) the reads
 * are paced as the daemon's io engine paces them (io/io.h "Read rate"):
 * the same token bucket, read by read, with the engine's default burst, so
 * the I/O-only half of the ideal bound is the paced time.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/aio_abi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "agentic.h"
#include "io/io.h"

static long aio_setup(unsigned n, aio_context_t *ctx)
{
	return syscall(SYS_io_setup, n, ctx);
}

static long aio_destroy(aio_context_t ctx)
{
	return syscall(SYS_io_destroy, ctx);
}

static long aio_submit(aio_context_t ctx, long n, struct iocb **cbs)
{
	return syscall(SYS_io_submit, ctx, n, cbs);
}

static long aio_getevents(aio_context_t ctx, long min, long max, struct io_event *ev,
                          struct timespec *timeout)
{
	return syscall(SYS_io_getevents, ctx, min, max, ev, timeout);
}

/* The io engine's token bucket (io/io-loop.c): a read starts while the
 * bucket is not in debt and takes its length; tokens count bytes x 1e9 and
 * refill at rate bytes a second up to the burst. */
struct bucket {
	uint64_t rate; /* 0: no limit */
	int64_t tokens, cap;
	uint64_t t;
};

static void bucket_refill(struct bucket *b, uint64_t now)
{
	if (!b->rate || now <= b->t)
		return;
	uint64_t dt = now - b->t, room = (uint64_t)(b->cap - b->tokens);
	b->t = now;
	if (dt > room / b->rate)
		b->tokens = b->cap;
	else
		b->tokens += (int64_t)(dt * b->rate);
}

static int64_t bucket_wait_ns(const struct bucket *b)
{
	return (int64_t)(((uint64_t)-b->tokens + b->rate - 1) / b->rate);
}

int ag_io_probe(const char *path, uint64_t n, unsigned depth, uint64_t read_bps, double *ret_secs,
                uint64_t *ret_bytes, bool *ret_direct, char *err, size_t err_len)
{
	bool direct = true;
	struct bucket b = {.rate = read_bps,
	                   .cap = (int64_t)DP_IO_READ_BURST_DEFAULT * 1000000000,
	                   .tokens = (int64_t)DP_IO_READ_BURST_DEFAULT * 1000000000,
	                   .t = dp_clock_ns()};

	err[0] = '\0';
	int fd = open(path, O_RDONLY | O_DIRECT | O_CLOEXEC);
	if (fd < 0 && errno == EINVAL) {
		direct = false;
		fd = open(path, O_RDONLY | O_CLOEXEC);
	}
	if (fd < 0) {
		int e = errno;
		snprintf(err, err_len, "open %s: %s", path, strerror(e));
		return -e;
	}
	struct stat st;
	if (fstat(fd, &st) < 0 || (uint64_t)st.st_size < AG_SLOTS_FILE_HDR + AG_SLOT_BYTES) {
		snprintf(err, err_len, "%s holds no slots", path);
		close(fd);
		return -ENODATA;
	}
	uint64_t slots = ((uint64_t)st.st_size - AG_SLOTS_FILE_HDR) / AG_SLOT_BYTES;
	if (depth < 2)
		depth = 2;
	depth &= ~1u; /* whole slots in flight */
	uint64_t *order = malloc(slots * sizeof(*order));
	struct iocb *cb = calloc(depth, sizeof(*cb));
	struct iocb **cbp = calloc(depth, sizeof(*cbp));
	struct io_event *ev = calloc(depth, sizeof(*ev));
	unsigned *free_idx = calloc(depth, sizeof(*free_idx));
	unsigned *pair_left = calloc(depth, sizeof(*pair_left));
	void *buf = NULL;
	aio_context_t ctx = 0;
	int ret = -ENOMEM;

	if (!order || !cb || !cbp || !ev || !free_idx || !pair_left ||
	    posix_memalign(&buf, 4096, (size_t)depth / 2 * AG_SLOT_BYTES))
		goto out;
	if (aio_setup(depth, &ctx) < 0) {
		ret = -errno;
		snprintf(err, err_len, "io_setup(%u): %s", depth, strerror(-ret));
		goto out;
	}
	uint64_t rng = 0x5eed;
	for (uint64_t i = 0; i < slots; i++)
		order[i] = i;
	for (uint64_t i = slots; i > 1; i--) {
		uint64_t j = ag_splitmix64(&rng) % i, t = order[i - 1];
		order[i - 1] = order[j];
		order[j] = t;
	}
	/* pairs of iocbs (header, page) share a slot buffer: pair p uses cb[2p],
	 * cb[2p+1] and buf + p * SLOT; read r is slot r / 2's header (even) or
	 * page (odd), one by one, so the read rate paces each as the daemon's
	 * engine does */
	unsigned n_free = depth / 2, inflight = 0, cur = 0;
	for (unsigned p = 0; p < depth / 2; p++)
		free_idx[p] = p;
	b.t = dp_clock_ns();
	uint64_t next = 0, done = 0, bytes = 0;
	uint64_t t0 = b.t;
	while (done < n) {
		unsigned k = 0;
		bool held = false;
		bucket_refill(&b, dp_clock_ns());
		while (next < 2 * n) {
			bool page = next & 1;
			if (!page && !n_free)
				break;
			if (b.rate && b.tokens < 0) {
				held = true;
				break;
			}
			if (!page) {
				cur = free_idx[--n_free];
				pair_left[cur] = 2;
			}
			uint64_t off = AG_SLOTS_FILE_HDR + order[next / 2 % slots] * AG_SLOT_BYTES;
			uint32_t len = page ? AG_PAGE_BYTES : AG_HDR_BYTES;
			struct iocb *c = &cb[2 * cur + page];
			memset(c, 0, sizeof(*c));
			c->aio_fildes = (uint32_t)fd;
			c->aio_lio_opcode = IOCB_CMD_PREAD;
			c->aio_buf =
			    (uint64_t)(uintptr_t)((char *)buf + (size_t)cur * AG_SLOT_BYTES +
			                          (page ? AG_HDR_BYTES : 0));
			c->aio_nbytes = len;
			c->aio_offset = (int64_t)(off + (page ? AG_HDR_BYTES : 0));
			c->aio_data = cur;
			cbp[k++] = c;
			if (b.rate)
				b.tokens -= (int64_t)len * 1000000000;
			next++;
		}
		for (unsigned s = 0; s < k;) {
			long r = aio_submit(ctx, (long)(k - s), cbp + s);
			if (r < 0) {
				ret = -errno;
				snprintf(err, err_len, "io_submit: %s", strerror(-ret));
				goto out;
			}
			s += (unsigned)r;
		}
		inflight += k;
		/* held by the rate: wait for a completion or the bucket */
		struct timespec ts, *tsp = NULL;
		if (held) {
			int64_t ns = bucket_wait_ns(&b);
			ts = (struct timespec){.tv_sec = ns / 1000000000,
			                       .tv_nsec = ns % 1000000000};
			tsp = &ts;
			if (!inflight) {
				nanosleep(&ts, NULL);
				continue;
			}
		}
		long got = aio_getevents(ctx, 1, (long)inflight, ev, tsp);
		if (got < 0) {
			if (errno == EINTR)
				continue;
			ret = -errno;
			snprintf(err, err_len, "io_getevents: %s", strerror(-ret));
			goto out;
		}
		for (long i = 0; i < got; i++) {
			unsigned p = (unsigned)ev[i].data;
			struct iocb *c = (struct iocb *)(uintptr_t)ev[i].obj;
			if (ev[i].res != (int64_t)c->aio_nbytes) {
				ret = ev[i].res < 0 ? (int)ev[i].res : -EIO;
				snprintf(err, err_len, "read of %llu bytes at %lld in %s: %s",
				         (unsigned long long)c->aio_nbytes,
				         (long long)c->aio_offset, path,
				         ev[i].res < 0 ? strerror((int)-ev[i].res) : "short");
				goto out;
			}
			bytes += c->aio_nbytes;
			inflight--;
			if (--pair_left[p] == 0) {
				free_idx[n_free++] = p;
				done++;
			}
		}
	}
	*ret_secs = (double)(dp_clock_ns() - t0) / 1e9;
	*ret_bytes = bytes;
	*ret_direct = direct;
	ret = 0;
out:
	if (ret == -ENOMEM && !err[0])
		snprintf(err, err_len, "out of memory");
	if (ctx)
		aio_destroy(ctx); /* waits for reads still landing in buf */
	free(order);
	free(cb);
	free(cbp);
	free(ev);
	free(free_idx);
	free(pair_left);
	free(buf);
	close(fd);
	return ret;
}
