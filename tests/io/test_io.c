/* SPDX-License-Identifier: MIT */
/* io/io.h: the io_uring engine — data, ordering, errors, fallbacks, idling, stopping. */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#include "base/clock.h"
#include "base/macros.h"
#include "io/io.h"

#define SEC          1000000000ll
#define TMPFS_MAGIC_ 0x01021994

/* ---- helpers ----------------------------------------------------------- */

/* Where test files go: the build directory (a real disk: /tmp may be
 * tmpfs), else /var/tmp. */
static const char *test_dir(void)
{
	const char *d = getenv("DP_TEST_DIR");
	return d && *d ? d : "/var/tmp";
}

static uint8_t pattern(uint64_t off, uint8_t seed)
{
	return (uint8_t)(off * 131 + (off >> 12) * 7 + seed);
}

static void fill(uint8_t *p, size_t len, uint64_t off, uint8_t seed)
{
	for (size_t i = 0; i < len; i++)
		p[i] = pattern(off + i, seed);
}

static bool check(const uint8_t *p, size_t len, uint64_t off, uint8_t seed)
{
	for (size_t i = 0; i < len; i++)
		if (p[i] != pattern(off + i, seed))
			return false;
	return true;
}

/* A file of `size` pattern bytes in dir; its path in `path`. */
static void make_file(const char *dir, char *path, size_t path_len, size_t size, uint8_t seed)
{
	uint8_t buf[65536];

	snprintf(path, path_len, "%s/dp-io-test-XXXXXX", dir);
	int fd = mkstemp(path);
	cr_assert_geq(fd, 0, "mkstemp in %s: %s", dir, strerror(errno));
	for (size_t off = 0; off < size; off += sizeof(buf)) {
		size_t n = size - off < sizeof(buf) ? size - off : sizeof(buf);
		fill(buf, n, off, seed);
		cr_assert_eq(pwrite(fd, buf, n, (off_t)off), (ssize_t)n);
	}
	close(fd);
}

static struct dp_io *engine_cfg(const struct dp_io_config *cfg)
{
	struct dp_io *io = NULL;

	int r = dp_io_new(cfg, &io);
	if (r == -ENOSYS || r == -EPERM)
		cr_skip_test("io_uring unavailable: %s", strerror(-r));
	cr_assert_eq(r, 0, "dp_io_new: %s", strerror(-r));
	return io;
}

static void config_of(struct dp_io_config *cfg, uint32_t depth, uint32_t n_bufs,
                      uint32_t buf_size, unsigned flags)
{
	dp_io_config_init(cfg);
	cfg->queue_depth = depth;
	cfg->n_bufs = n_bufs;
	cfg->buf_size = buf_size;
	cfg->flags = flags;
}

static struct dp_io *engine(uint32_t depth, uint32_t n_bufs, uint32_t buf_size, unsigned flags)
{
	struct dp_io_config cfg;

	config_of(&cfg, depth, n_bufs, buf_size, flags);
	return engine_cfg(&cfg);
}

/* Open a pattern file through the engine, unlinked at once (nothing is left
 * behind if the test fails). */
static uint32_t open_pattern(struct dp_io *io, const char *dir, size_t size, uint8_t seed,
                             unsigned flags)
{
	char path[512];
	uint32_t f;

	make_file(dir, path, sizeof(path), size, seed);
	int r = dp_io_file_open(io, path, O_RDWR, 0, flags, &f);
	unlink(path);
	cr_assert_eq(r, 0, "dp_io_file_open %s: %s", path, strerror(-r));
	return f;
}

static int32_t wait_result(struct dp_io_chan *c, uint64_t t)
{
	int32_t res = INT32_MIN;
	cr_assert_eq(dp_io_wait(c, t, 10 * SEC), 0, "ticket %llu finished in time",
	             (unsigned long long)t);
	cr_assert_eq(dp_io_result(c, t, &res), 0);
	return res;
}

static bool is_direct(struct dp_io *io, uint32_t f)
{
	struct dp_io_file_info fi;
	cr_assert_eq(dp_io_file_info(io, f, &fi), 0);
	return fi.direct;
}

static void stats(struct dp_io *io, struct dp_io_stats *s)
{
	cr_assert_eq(dp_io_get_stats(io, s), 0);
}

static void sleep_ms(long ms)
{
	struct timespec ts = {ms / 1000, (ms % 1000) * 1000000};
	nanosleep(&ts, NULL);
}

/* Wait until `reads` requests have finished (any order), up to 10 s. */
static void wait_finished_reads(struct dp_io *io, uint64_t reads)
{
	struct dp_io_stats s;
	for (int i = 0; i < 10000; i++) {
		stats(io, &s);
		if (s.reads >= reads)
			return;
		sleep_ms(1);
	}
	cr_assert_fail("only %llu of %llu reads finished", (unsigned long long)s.reads,
	               (unsigned long long)reads);
}

/* ---- setup and reporting ----------------------------------------------- */

Test(io, config_rejects_bad_values)
{
	struct dp_io_config cfg;
	struct dp_io *io = NULL;

	cr_assert_eq(dp_io_config_init(&cfg), 0);
	cr_expect_eq(dp_io_new(&cfg, NULL), -EINVAL);
	cfg.queue_depth = 0;
	cr_expect_eq(dp_io_new(&cfg, &io), -EINVAL);
	dp_io_config_init(&cfg);
	cfg.n_bufs = 4;
	cfg.buf_size = 1000;
	cr_expect_eq(dp_io_new(&cfg, &io), -EINVAL, "buffers must be whole pages");
	dp_io_config_init(&cfg);
	cfg.flags = DP_IO_FLAGS_MAX;
	cr_expect_eq(dp_io_new(&cfg, &io), -EINVAL);
	cr_expect_null(io, "output untouched on failure");
	dp_io_free(NULL);
	dp_io_chan_free(NULL);
}

Test(io, describe_reports_the_flags_in_effect_and_the_ring_fd_after_start)
{
	struct dp_io *io = engine(64, 8, 65536, 0);
	struct dp_io_mode m;
	char desc[1024];

	cr_assert_eq(dp_io_get_mode(io, &m), 0);
	cr_expect(!m.owned && !m.ring_fd, "nobody owns the ring before start");
	cr_assert_eq(dp_io_start(io, -1), 0);
	cr_expect_eq(dp_io_start(io, -1), -EBUSY, "one io thread per engine");
	cr_assert_eq(dp_io_get_mode(io, &m), 0);
	cr_assert_eq(dp_io_describe(io, desc, sizeof(desc)), 0);
	cr_log_info("%s", desc);
	cr_expect(m.owned);
	cr_expect(m.single_issuer == !!strstr(desc, "SINGLE_ISSUER"));
	cr_expect(m.defer_taskrun == !!strstr(desc, "DEFER_TASKRUN"));
	cr_expect(m.defer_taskrun || (m.fallbacks & (1u << DP_IO_FB_DEFER_TASKRUN)),
	          "DEFER_TASKRUN is in effect or reported as a fallback");
	cr_expect(m.ring_fd || (m.fallbacks & (1u << DP_IO_FB_RING_FD)));
	cr_expect(!m.iopoll && !m.sqpoll, "both opt-in");
	cr_expect_geq(m.arena_bytes, 8u * 65536);
	cr_expect(m.fixed_bufs || (m.fallbacks & (1u << DP_IO_FB_FIXED_BUFS)));
	cr_expect(m.fixed_files || (m.fallbacks & (1u << DP_IO_FB_FIXED_FILES)));
	cr_expect_not_null(strstr(desc, "interrupt-driven"));
	cr_expect_eq(dp_io_stop(io, DP_IO_STOP_DRAIN), 0);
	cr_expect_eq(dp_io_stop(io, DP_IO_STOP_DRAIN), 0, "stop twice is harmless");
	dp_io_free(io);
}

/* ---- data -------------------------------------------------------------- */

static void write_then_read_back(uint32_t page)
{
	struct dp_io *io = engine(32, 16, 65536, 0);
	struct dp_io_chan *c;
	struct dp_io_mode m;
	uint64_t t;
	const uint32_t pages = 8;

	cr_assert_eq(dp_io_start(io, -1), 0);
	cr_assert_eq(dp_io_chan_new(io, 0, &c), 0);
	uint32_t f = open_pattern(io, test_dir(), 1 << 20, 0, 0);
	/* Pages 0..7 from arena buffers 0..7, with a fresh pattern. */
	for (uint32_t i = 0; i < pages; i++) {
		uint8_t *b = dp_io_buf(io, i);
		fill(b, page, (uint64_t)i * page, 9);
		cr_assert_eq(dp_io_write(c, f, (uint64_t)i * page, b, page, 0, &t), 0);
	}
	cr_expect_eq(wait_result(c, t), (int32_t)page);
	for (uint32_t i = 0; i < pages; i++) {
		int32_t res;
		cr_expect_eq(dp_io_result(c, i, &res), 0);
		cr_expect_eq(res, (int32_t)page, "write %u", i);
	}
	/* Back into buffers 8..15. */
	for (uint32_t i = 0; i < pages; i++) {
		uint8_t *b = dp_io_buf(io, 8 + i);
		memset(b, 0, page);
		cr_assert_eq(dp_io_read(c, f, (uint64_t)i * page, b, page, 0, &t), 0);
	}
	cr_expect_eq(wait_result(c, t), (int32_t)page);
	for (uint32_t i = 0; i < pages; i++)
		cr_expect(check(dp_io_buf(io, 8 + i), page, (uint64_t)i * page, 9), "page %u", i);
	/* Beyond what was rewritten the file still holds the old pattern. */
	uint8_t *b = dp_io_buf(io, 0);
	cr_assert_eq(dp_io_read(c, f, (uint64_t)pages * page, b, page, 0, &t), 0);
	cr_expect_eq(wait_result(c, t), (int32_t)page);
	cr_expect(check(b, page, (uint64_t)pages * page, 0));

	struct dp_io_stats s;
	stats(io, &s);
	cr_expect_eq(s.writes, pages);
	cr_expect_eq(s.bytes_read, (uint64_t)(pages + 1) * page);
	cr_expect_eq(s.errors, 0);
	cr_expect_eq(dp_io_get_mode(io, &m), 0);
	cr_log_info("page %u: direct=%d fixed_bufs=%d batches %llu sqes %llu", page,
	            is_direct(io, f), m.fixed_bufs, (unsigned long long)s.submits,
	            (unsigned long long)s.sqes);
	dp_io_chan_free(c);
	dp_io_free(io);
}

/* A DP_IO_F_HASH read's checksum is computed on the io thread as it
 * finishes (the KV cache's restores check pages with it, off the compute
 * thread): XXH3 of what it read; none for a read without the flag, nor for
 * one that read less than its length. */
Test(io, a_hash_read_gives_the_checksum_of_what_it_read)
{
	struct dp_io *io = engine(32, 4, 65536, 0);
	struct dp_io_chan *c;
	uint64_t t, h = 0;
	cr_assert_eq(dp_io_start(io, -1), 0);
	cr_assert_eq(dp_io_chan_new(io, 0, &c), 0);
	uint32_t f = open_pattern(io, test_dir(), 1 << 20, 7, 0);
	uint8_t *b = dp_io_buf(io, 0);
	cr_assert_eq(dp_io_read(c, f, 65536, b, 65536, DP_IO_F_HASH, &t), 0);
	cr_expect_eq(wait_result(c, t), 65536);
	cr_assert_eq(dp_io_result_hash(c, t, &h), 0);
	cr_expect(check(b, 65536, 65536, 7));
	cr_expect_eq(h, XXH3_64bits(b, 65536), "the io thread's hash is the buffer's");
	cr_assert_eq(dp_io_read(c, f, 0, b, 65536, 0, &t), 0);
	cr_expect_eq(wait_result(c, t), 65536);
	cr_expect_eq(dp_io_result_hash(c, t, &h), -ENODATA, "no flag, no hash");
	cr_assert_eq(dp_io_read(c, f, (1 << 20) - 4096, b, 65536, DP_IO_F_HASH, &t), 0);
	cr_expect_eq(wait_result(c, t), 4096, "a short read at the end of the file");
	cr_expect_eq(dp_io_result_hash(c, t, &h), -ENODATA, "a short read has no hash");
	cr_expect_eq(dp_io_result_hash(c, t + 1, &h), -EINVAL, "a ticket not handed out");
	dp_io_chan_free(c);
	dp_io_free(io);
}

Test(io, writes_then_reads_back_4k_pages_through_registered_buffers)
{
	write_then_read_back(4096);
}

Test(io, writes_then_reads_back_64k_pages_through_registered_buffers)
{
	write_then_read_back(65536);
}

Test(io, caller_memory_registered_as_a_region_carries_io)
{
	struct dp_io *io = engine(16, 0, 65536, 0);
	struct dp_io_chan *c;
	uint32_t region;
	uint64_t t;
	size_t len = 2 << 20;
	uint8_t *mem = aligned_alloc(4096, len);

	cr_assert_not_null(mem);
	int r = dp_io_mem_register(io, mem, len, &region);
	if (r == -EOPNOTSUPP) {
		free(mem);
		dp_io_free(io);
		cr_skip_test("no sparse fixed-buffer tables on this kernel");
	}
	cr_assert_eq(r, 0, "dp_io_mem_register: %s", strerror(-r));
	cr_expect_eq(dp_io_mem_register(io, mem + 1, 4096, &region), -EINVAL, "page-aligned only");
	cr_assert_eq(dp_io_start(io, -1), 0);
	cr_assert_eq(dp_io_chan_new(io, 0, &c), 0);
	uint32_t f = open_pattern(io, test_dir(), 1 << 20, 3, 0);
	cr_assert_eq(dp_io_read(c, f, 65536, mem + 65536, 65536, 0, &t), 0);
	cr_expect_eq(wait_result(c, t), 65536);
	cr_expect(check(mem + 65536, 65536, 65536, 3));
	/* After start, registration goes through the io thread. */
	uint32_t region2;
	uint8_t *mem2 = aligned_alloc(4096, 65536);
	cr_assert_eq(dp_io_mem_register(io, mem2, 65536, &region2), 0);
	cr_expect_neq(region2, region);
	cr_assert_eq(dp_io_read(c, f, 0, mem2, 65536, 0, &t), 0);
	cr_expect_eq(wait_result(c, t), 65536);
	cr_expect(check(mem2, 65536, 0, 3));
	cr_expect_eq(dp_io_mem_unregister(io, region2), 0);
	cr_expect_eq(dp_io_mem_unregister(io, region2), -ENOENT);
	cr_expect_eq(dp_io_mem_unregister(io, region), 0);
	dp_io_chan_free(c);
	dp_io_free(io);
	free(mem2);
	free(mem);
}

Test(io, file_on_disk_runs_o_direct_and_other_file_systems_report_what_they_do)
{
	struct dp_io *io = engine(16, 4, 65536, 0);
	struct dp_io_chan *c;
	struct statfs sfs;
	const char *dirs[] = {test_dir(), "/var/tmp", "/tmp", "/dev/shm"};

	cr_assert_eq(dp_io_start(io, -1), 0);
	cr_assert_eq(dp_io_chan_new(io, 0, &c), 0);
	for (size_t i = 0; i < DP_ARRAY_SIZE(dirs); i++) {
		struct dp_io_file_info fi;
		uint64_t t;
		if (access(dirs[i], W_OK) != 0 || statfs(dirs[i], &sfs) != 0)
			continue;
		uint32_t f = open_pattern(io, dirs[i], 1 << 18, (uint8_t)i, 0);
		cr_assert_eq(dp_io_file_info(io, f, &fi), 0);
		cr_log_info("%s (%s): direct=%d fell_back=%d (%d) align mem %u off %u", dirs[i],
		            sfs.f_type == TMPFS_MAGIC_ ? "tmpfs" : "disk", fi.direct, fi.fell_back,
		            fi.fallback_err, fi.mem_align, fi.offset_align);
		cr_expect(fi.direct || fi.fell_back, "O_DIRECT, or a reported fallback");
		if (i == 0 && sfs.f_type != TMPFS_MAGIC_)
			cr_expect(fi.direct, "the build directory is on a disk: O_DIRECT works");
		uint8_t *b = dp_io_buf(io, 0);
		cr_assert_eq(dp_io_read(c, f, 4096, b, 8192, 0, &t), 0);
		cr_expect_eq(wait_result(c, t), 8192, "%s", dirs[i]);
		cr_expect(check(b, 8192, 4096, (uint8_t)i));
		cr_expect_eq(dp_io_file_remove(io, f), 0);
	}
	dp_io_chan_free(c);
	dp_io_free(io);
}

Test(io, file_system_without_o_direct_falls_back_to_buffered_and_reports_it)
{
	/* procfs refuses O_DIRECT at open (EINVAL), as tmpfs did before Linux
	 * 6.6 and ramfs still does. */
	struct dp_io *io = engine(16, 0, 65536, 0);
	struct dp_io_chan *c;
	struct dp_io_file_info fi;
	struct dp_io_mode m;
	char want[256], got[256];
	uint64_t t;
	uint32_t f;

	int fd = open("/proc/self/cmdline", O_RDONLY);
	cr_assert_geq(fd, 0);
	ssize_t n = read(fd, want, sizeof(want));
	close(fd);
	cr_assert_gt(n, 0);
	cr_assert_eq(dp_io_file_open(io, "/proc/self/cmdline", O_RDONLY, 0, 0, &f), 0);
	cr_assert_eq(dp_io_file_info(io, f, &fi), 0);
	cr_expect(!fi.direct && fi.fell_back);
	cr_expect_eq(fi.fallback_err, -EINVAL);
	cr_assert_eq(dp_io_get_mode(io, &m), 0);
	cr_expect(m.fallbacks & (1u << DP_IO_FB_BUFFERED));
	cr_expect_eq(m.fallback_err[DP_IO_FB_BUFFERED], -EINVAL);
	cr_assert_eq(dp_io_start(io, -1), 0);
	cr_assert_eq(dp_io_chan_new(io, 0, &c), 0);
	/* Unaligned is fine on a buffered file; the read is short (EOF). */
	cr_assert_eq(dp_io_read(c, f, 0, got, sizeof(got), 0, &t), 0);
	cr_expect_eq(wait_result(c, t), (int32_t)n);
	cr_expect_arr_eq(got, want, (size_t)n);
	dp_io_chan_free(c);
	dp_io_free(io);
}

/* ---- ordering ---------------------------------------------------------- */

Test(io, completion_counter_advances_in_ticket_order_while_completions_arrive_out_of_order)
{
	struct dp_io *io = engine(32, 16, 4096, 0);
	struct dp_io_chan *c;
	uint32_t pf, f;
	int p[2];
	uint64_t t;
	char pipebuf[64];

	cr_assert_eq(pipe(p), 0);
	cr_assert_eq(dp_io_start(io, -1), 0);
	cr_assert_eq(dp_io_chan_new(io, 0, &c), 0);
	cr_assert_eq(dp_io_file_add(io, p[0], &pf), 0);
	f = open_pattern(io, test_dir(), 1 << 20, 5, 0);
	/* Ticket 0 waits for the pipe; tickets 1..8 can finish at once. */
	cr_assert_eq(dp_io_read(c, pf, 0, pipebuf, sizeof(pipebuf), 0, &t), 0);
	cr_expect_eq(t, 0);
	for (uint32_t i = 0; i < 8; i++) {
		cr_assert_eq(dp_io_read(c, f, (uint64_t)i * 4096, dp_io_buf(io, i), 4096, 0, &t),
		             0);
		cr_expect_eq(t, 1 + i);
	}
	wait_finished_reads(io, 8);
	sleep_ms(20);
	cr_expect_eq(dp_io_completed(c), 0, "ticket 0 holds the counter back");
	int32_t res;
	cr_expect_eq(dp_io_result(c, 5, &res), -EAGAIN, "no result before the counter passes it");
	cr_expect_eq(dp_io_wait(c, 8, 20000000), -ETIMEDOUT);
	cr_assert_eq(write(p[1], "hello", 5), 5);
	cr_expect_eq(wait_result(c, 0), 5);
	cr_expect_eq(dp_io_completed(c), 9, "then it jumps past every finished ticket");
	cr_expect_eq(atomic_load_explicit(dp_io_chan_counter(c), memory_order_acquire), 9);
	cr_expect_arr_eq(pipebuf, "hello", 5);
	for (uint32_t i = 0; i < 8; i++) {
		cr_expect_eq(dp_io_result(c, 1 + i, &res), 0);
		cr_expect_eq(res, 4096);
		cr_expect(check(dp_io_buf(io, i), 4096, (uint64_t)i * 4096, 5));
	}
	dp_io_chan_free(c);
	dp_io_free(io);
	close(p[0]);
	close(p[1]);
}

Test(io, barrier_request_waits_for_earlier_ones_and_holds_later_ones)
{
	struct dp_io *io = engine(32, 4, 4096, 0);
	struct dp_io_chan *c;
	struct dp_io_stats s;
	uint32_t pf, f;
	int p[2];
	uint64_t t;
	char pipebuf[8];

	cr_assert_eq(pipe(p), 0);
	cr_assert_eq(dp_io_start(io, -1), 0);
	cr_assert_eq(dp_io_chan_new(io, 0, &c), 0);
	cr_assert_eq(dp_io_file_add(io, p[0], &pf), 0);
	f = open_pattern(io, test_dir(), 1 << 16, 1, 0);
	cr_assert_eq(dp_io_read(c, pf, 0, pipebuf, 1, 0, &t), 0);                   /* 0: blocks */
	cr_assert_eq(dp_io_sync(c, f, DP_IO_OP_FDATASYNC, DP_IO_F_BARRIER, &t), 0); /* 1 */
	fill(dp_io_buf(io, 0), 4096, 0, 2);
	cr_assert_eq(dp_io_write(c, f, 0, dp_io_buf(io, 0), 4096, 0, &t), 0); /* 2 */
	sleep_ms(50);
	stats(io, &s);
	cr_expect_eq(s.syncs, 0, "the barrier has not started before ticket 0 finished");
	cr_expect_eq(s.writes, 0, "nothing after the barrier has started either");
	cr_expect_eq(s.inflight, 1);
	cr_assert_eq(write(p[1], "x", 1), 1);
	cr_expect_eq(wait_result(c, 2), 4096);
	cr_expect_eq(wait_result(c, 1), 0);
	stats(io, &s);
	cr_expect_eq(s.syncs, 1);
	cr_expect_eq(s.writes, 1);
	dp_io_chan_free(c);
	dp_io_free(io);
	close(p[0]);
	close(p[1]);
}

/* ---- load -------------------------------------------------------------- */

static uint64_t xorshift(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

Test(io, depth_128_runs_many_concurrent_requests_with_the_right_data)
{
	const uint32_t depth = 128, n = 4096, bs = 4096, fsize = 8 << 20;
	struct dp_io *io = engine(depth, 256, bs, 0);
	struct dp_io_chan *c;
	struct dp_io_stats s;
	uint64_t rng = 88172645463325252ull, offs[256], first;

	cr_assert_eq(dp_io_start(io, -1), 0);
	cr_assert_eq(dp_io_chan_new(io, 256, &c), 0);
	cr_assert_eq(dp_io_chan_depth(c), 256);
	uint32_t f = open_pattern(io, test_dir(), fsize, 7, 0);
	uint64_t next = 0, checked = 0;
	while (checked < n) {
		/* Refill the window, one burst. */
		struct dp_io_req reqs[256];
		uint32_t k = 0;
		while (next + k < n && next + k - checked < 256) {
			uint64_t t = next + k;
			offs[t % 256] = (xorshift(&rng) % (fsize / bs)) * bs;
			reqs[k] = (struct dp_io_req){.op = DP_IO_OP_READ,
			                             .file = f,
			                             .offset = offs[t % 256],
			                             .addr = dp_io_buf(io, (uint32_t)(t % 256)),
			                             .len = bs};
			k++;
		}
		if (k) {
			int r = dp_io_submit(c, reqs, k, &first);
			cr_assert_eq(r, (int)k);
			cr_assert_eq(first, next);
			next += k;
		}
		cr_assert_eq(dp_io_wait(c, checked, 10 * SEC), 0);
		uint64_t done = dp_io_completed(c);
		for (; checked < done; checked++) {
			int32_t res;
			cr_assert_eq(dp_io_result(c, checked, &res), 0);
			cr_assert_eq(res, (int32_t)bs);
			cr_assert(check(dp_io_buf(io, (uint32_t)(checked % 256)), bs,
			                offs[checked % 256], 7),
			          "ticket %llu", (unsigned long long)checked);
		}
	}
	stats(io, &s);
	cr_log_info("%u reads: inflight max %u, %llu submits for %llu sqes, %llu sleeps", n,
	            s.inflight_max, (unsigned long long)s.submits, (unsigned long long)s.sqes,
	            (unsigned long long)s.sleeps);
	cr_expect_eq(s.reads, n);
	cr_expect_leq(s.inflight_max, depth, "never more than the queue depth in the kernel");
	cr_expect_gt(s.inflight_max, 1, "requests ran concurrently");
	cr_expect_lt(s.submits, s.sqes, "submission is batched");
	dp_io_chan_free(c);
	dp_io_free(io);
}

struct requester {
	struct dp_io *io;
	uint32_t file;
	uint32_t id;
	uint32_t fails;
	uint8_t *mem;
};

static void *requester_main(void *arg)
{
	struct requester *q = arg;
	struct dp_io_chan *c;
	uint64_t rng = 0x9e3779b97f4a7c15ull * (q->id + 1), offs[16];

	if (dp_io_chan_new(q->io, 16, &c) < 0) {
		q->fails++;
		return NULL;
	}
	for (uint64_t t = 0; t < 400; t++) {
		if (t >= 16) {
			int32_t res;
			uint64_t old = t - 16;
			if (dp_io_wait(c, old, 10 * SEC) || dp_io_result(c, old, &res) ||
			    res != 4096 ||
			    !check(q->mem + (old % 16) * 4096, 4096, offs[old % 16], 4))
				q->fails++;
		}
		uint64_t ticket;
		offs[t % 16] = (xorshift(&rng) % 256) * 4096;
		if (dp_io_read(c, q->file, offs[t % 16], q->mem + (t % 16) * 4096, 4096, 0,
		               &ticket) < 0 ||
		    ticket != t)
			q->fails++;
	}
	dp_io_chan_free(c); /* waits for the last ones */
	return NULL;
}

Test(io, concurrent_requesters_each_get_their_own_results)
{
	struct dp_io *io = engine(64, 64, 4096, 0);
	struct requester q[4];
	pthread_t th[4];

	cr_assert_eq(dp_io_start(io, -1), 0);
	uint32_t f = open_pattern(io, test_dir(), 1 << 20, 4, 0);
	for (uint32_t i = 0; i < 4; i++) {
		q[i] =
		    (struct requester){.io = io, .file = f, .id = i, .mem = dp_io_buf(io, i * 16)};
		cr_assert_eq(pthread_create(&th[i], NULL, requester_main, &q[i]), 0);
	}
	for (uint32_t i = 0; i < 4; i++) {
		pthread_join(th[i], NULL);
		cr_expect_eq(q[i].fails, 0, "requester %u", i);
	}
	struct dp_io_stats s;
	stats(io, &s);
	cr_expect_eq(s.reads, 4 * 400);
	dp_io_free(io);
}

/* ---- short transfers and errors ---------------------------------------- */

Test(io, read_past_end_of_file_returns_what_exists)
{
	struct dp_io *io = engine(16, 4, 65536, 0);
	struct dp_io_chan *c;
	struct dp_io_stats s;
	uint64_t t;

	cr_assert_eq(dp_io_start(io, -1), 0);
	cr_assert_eq(dp_io_chan_new(io, 0, &c), 0);
	/* Buffered: 10000 bytes, read 16384 at 8192: 1808 (a retry finds EOF). */
	uint32_t fb = open_pattern(io, test_dir(), 10000, 6, DP_IO_FILE_BUFFERED);
	uint8_t *b = dp_io_buf(io, 0);
	cr_assert_eq(dp_io_read(c, fb, 8192, b, 16384, 0, &t), 0);
	cr_expect_eq(wait_result(c, t), 10000 - 8192);
	cr_expect(check(b, 10000 - 8192, 8192, 6));
	cr_assert_eq(dp_io_read(c, fb, 65536, b, 4096, 0, &t), 0);
	cr_expect_eq(wait_result(c, t), 0, "past the end: nothing");
	/* Direct: 6144 bytes, read 8192 at 4096: 2048, ending inside a block. */
	uint32_t fd = open_pattern(io, test_dir(), 6144, 8, 0);
	if (is_direct(io, fd)) {
		cr_assert_eq(dp_io_read(c, fd, 4096, b, 8192, 0, &t), 0);
		cr_expect_eq(wait_result(c, t), 2048);
		cr_expect(check(b, 2048, 4096, 8));
		cr_assert_eq(dp_io_read(c, fd, 16384, b, 4096, 0, &t), 0);
		cr_expect_eq(wait_result(c, t), 0);
	}
	stats(io, &s);
	cr_expect_geq(s.short_reads, 2);
	cr_expect_eq(s.errors, 0, "short is not an error");
	dp_io_chan_free(c);
	dp_io_free(io);
}

Test(io, read_from_a_write_only_fd_fails_on_the_request)
{
	struct dp_io *io = engine(16, 0, 65536, 0);
	struct dp_io_chan *c;
	struct dp_io_stats s;
	char path[512], buf[4096];
	uint64_t t;
	uint32_t f;

	make_file(test_dir(), path, sizeof(path), 8192, 0);
	int fd = open(path, O_WRONLY);
	unlink(path);
	cr_assert_geq(fd, 0);
	cr_assert_eq(dp_io_file_add(io, fd, &f), 0);
	cr_assert_eq(dp_io_start(io, -1), 0);
	cr_assert_eq(dp_io_chan_new(io, 0, &c), 0);
	cr_assert_eq(dp_io_read(c, f, 0, buf, sizeof(buf), 0, &t), 0);
	cr_expect_eq(wait_result(c, t), -EBADF);
	/* The channel goes on working after an error. */
	cr_assert_eq(dp_io_write(c, f, 0, buf, sizeof(buf), 0, &t), 0);
	cr_expect_eq(wait_result(c, t), (int32_t)sizeof(buf));
	stats(io, &s);
	cr_expect_eq(s.errors, 1);
	dp_io_chan_free(c);
	dp_io_free(io);
	close(fd);
}

Test(io, write_beyond_the_file_size_limit_fails_with_efbig)
{
	struct dp_io *io = engine(16, 0, 65536, 0);
	struct dp_io_chan *c;
	struct rlimit old, lim;
	char buf[8192];
	uint64_t t;

	cr_assert_eq(getrlimit(RLIMIT_FSIZE, &old), 0);
	void (*oldsig)(int) = signal(SIGXFSZ, SIG_IGN);
	uint32_t f = open_pattern(io, test_dir(), 0, 0, DP_IO_FILE_BUFFERED);
	cr_assert_eq(dp_io_start(io, -1), 0);
	cr_assert_eq(dp_io_chan_new(io, 0, &c), 0);
	lim = old;
	lim.rlim_cur = 4096;
	cr_assert_eq(setrlimit(RLIMIT_FSIZE, &lim), 0);
	memset(buf, 1, sizeof(buf));
	int r = dp_io_write(c, f, 1 << 20, buf, sizeof(buf), 0, &t);
	int32_t res = r == 0 ? wait_result(c, t) : r;
	setrlimit(RLIMIT_FSIZE, &old);
	signal(SIGXFSZ, oldsig);
	cr_expect_eq(res, -EFBIG);
	dp_io_chan_free(c);
	dp_io_free(io);
}

Test(io, write_on_a_full_file_system_fails_with_enospc)
{
	char dir[] = "/var/tmp/dp-io-full-XXXXXX";
	struct dp_io *io;
	struct dp_io_chan *c;
	uint64_t t;
	uint32_t f;

	cr_assert_not_null(mkdtemp(dir));
	/* A private mount namespace for this thread: the small tmpfs is seen
	 * by nobody else and goes away with us, even if the test crashes. */
	if (unshare(CLONE_NEWNS) != 0 || mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0 ||
	    mount("dp-io-test", dir, "tmpfs", MS_NOSUID | MS_NODEV, "size=64k") != 0) {
		int e = errno;
		rmdir(dir);
		cr_skip_test("cannot mount a small tmpfs here (%s)", strerror(e));
	}
	io = engine(16, 4, 65536, 0);
	char path[600];
	snprintf(path, sizeof(path), "%s/full", dir);
	int r = dp_io_file_open(io, path, O_RDWR | O_CREAT, 0600, DP_IO_FILE_BUFFERED, &f);
	cr_assert_eq(r, 0);
	cr_assert_eq(dp_io_start(io, -1), 0);
	cr_assert_eq(dp_io_chan_new(io, 0, &c), 0);
	uint8_t *b = dp_io_buf(io, 0);
	memset(b, 7, 65536);
	/* 4 x 64 KiB into 64 KiB: the first fills it, the rest cannot. */
	for (int i = 0; i < 4; i++)
		cr_assert_eq(dp_io_write(c, f, (uint64_t)i * 65536, b, 65536, 0, &t), 0);
	int enospc = 0;
	for (uint64_t i = 0; i < 4; i++) {
		int32_t res = wait_result(c, i);
		cr_expect(res == -ENOSPC || res > 0, "a count or -ENOSPC, got %d", res);
		enospc += res == -ENOSPC;
	}
	cr_expect_geq(enospc, 1, "the full file system shows on a request");
	dp_io_chan_free(c);
	dp_io_free(io);
	umount2(dir, MNT_DETACH);
	rmdir(dir);
}

Test(io, misaligned_o_direct_requests_are_rejected_before_submission)
{
	struct dp_io *io = engine(16, 4, 65536, 0);
	struct dp_io_chan *c;
	struct dp_io_file_info fi;
	struct dp_io_stats s;
	uint64_t t;

	uint32_t f = open_pattern(io, test_dir(), 1 << 16, 0, 0);
	cr_assert_eq(dp_io_file_info(io, f, &fi), 0);
	if (!fi.direct) {
		dp_io_free(io);
		cr_skip_test("%s has no O_DIRECT", test_dir());
	}
	cr_assert_eq(dp_io_start(io, -1), 0);
	cr_assert_eq(dp_io_chan_new(io, 0, &c), 0);
	uint8_t *b = dp_io_buf(io, 0);
	uint32_t a = fi.offset_align;
	cr_expect_eq(dp_io_read(c, f, a / 2, b, a, 0, &t), -EINVAL, "offset");
	cr_expect_eq(dp_io_read(c, f, 0, b, a + a / 2, 0, &t), -EINVAL, "length");
	if (fi.mem_align > 1)
		cr_expect_eq(dp_io_read(c, f, 0, b + fi.mem_align / 2, a, 0, &t), -EINVAL,
		             "buffer");
	cr_expect_eq(dp_io_write(c, f, 1, b, a, 0, &t), -EINVAL);
	cr_expect_eq(dp_io_read(c, f, 0, b, 0, 0, &t), -EINVAL, "empty");
	cr_expect_eq(dp_io_read(c, 63, 0, b, a, 0, &t), -EBADF, "unknown file");
	cr_expect_eq(dp_io_chan_next(c), 0, "no ticket was handed out");
	stats(io, &s);
	cr_expect_eq(s.sqes, 0, "nothing reached the kernel");
	cr_expect_eq(dp_io_read(c, f, a, b, a, 0, &t), 0, "aligned is fine");
	cr_expect_eq(wait_result(c, t), (int32_t)a);
	dp_io_chan_free(c);
	dp_io_free(io);
}

/* ---- idling, stopping, modes ------------------------------------------- */

Test(io, idle_io_thread_does_not_spin_and_a_request_wakes_it_promptly)
{
	struct dp_io *io = engine(16, 4, 4096, 0);
	struct dp_io_chan *c;
	struct dp_io_stats s0, s1;
	uint64_t t;

	cr_assert_eq(dp_io_start(io, -1), 0);
	cr_assert_eq(dp_io_chan_new(io, 0, &c), 0);
	uint32_t f = open_pattern(io, test_dir(), 1 << 16, 0, 0);
	sleep_ms(20);
	stats(io, &s0);
	sleep_ms(200);
	stats(io, &s1);
	double cpu_ms = (double)(s1.cpu_ns - s0.cpu_ns) / 1e6;
	cr_log_info("idle 200 ms: io thread cpu %.3f ms, sleeps %llu", cpu_ms,
	            (unsigned long long)(s1.sleeps - s0.sleeps));
	cr_expect_lt(cpu_ms, 10.0, "asleep, not spinning (%.3f ms of cpu)", cpu_ms);
	cr_expect_leq(s1.sleeps - s0.sleeps, 2, "one sleep covers the idle time");
	uint64_t a = dp_clock_ns();
	cr_assert_eq(dp_io_read(c, f, 0, dp_io_buf(io, 0), 4096, 0, &t), 0);
	cr_expect_eq(wait_result(c, t), 4096);
	double ms = (double)(dp_clock_ns() - a) / 1e6;
	cr_log_info("wake + read: %.3f ms", ms);
	cr_expect_lt(ms, 100.0, "a sleeping io thread wakes for a request");
	stats(io, &s1);
	cr_expect_gt(s1.sleep_ns, 150000000u, "the idle time is accounted as sleep");
	dp_io_chan_free(c);
	dp_io_free(io);
}

Test(io, stop_cancels_requests_in_flight_and_queued_cleanly)
{
	struct dp_io *io = engine(8, 64, 4096, 0);
	struct dp_io_chan *c;
	uint32_t pf, f;
	int p[2];
	uint64_t t;
	char pipebuf[8];

	cr_assert_eq(pipe(p), 0);
	cr_assert_eq(dp_io_start(io, -1), 0);
	cr_assert_eq(dp_io_chan_new(io, 64, &c), 0);
	cr_assert_eq(dp_io_file_add(io, p[0], &pf), 0);
	f = open_pattern(io, test_dir(), 1 << 20, 0, 0);
	/* A read that never finishes by itself, then more than the depth. */
	cr_assert_eq(dp_io_read(c, pf, 0, pipebuf, 1, 0, &t), 0);
	for (uint32_t i = 0; i < 40; i++)
		cr_assert_eq(dp_io_read(c, f, (uint64_t)i * 4096, dp_io_buf(io, i), 4096, 0, &t),
		             0);
	sleep_ms(20);
	cr_assert_eq(dp_io_stop(io, DP_IO_STOP_CANCEL), 0);
	cr_expect_eq(dp_io_completed(c), 41, "every ticket is finished after the stop");
	int32_t res;
	cr_expect_eq(dp_io_result(c, 0, &res), 0);
	cr_expect_eq(res, -ECANCELED, "the pipe read was cancelled in the kernel");
	for (uint64_t i = 1; i <= 40; i++) {
		cr_expect_eq(dp_io_result(c, i, &res), 0);
		cr_expect(res == 4096 || res == -ECANCELED, "ticket %llu: %d",
		          (unsigned long long)i, res);
	}
	cr_expect_eq(dp_io_read(c, f, 0, dp_io_buf(io, 0), 4096, 0, &t), -ESHUTDOWN);
	cr_expect_eq(dp_io_poll(io, 0), -ESHUTDOWN);
	dp_io_chan_free(c);
	dp_io_free(io);
	close(p[0]);
	close(p[1]);
}

Test(io, stop_drain_finishes_every_queued_request)
{
	struct dp_io *io = engine(8, 128, 4096, 0);
	struct dp_io_chan *c;
	uint64_t t;

	cr_assert_eq(dp_io_start(io, -1), 0);
	cr_assert_eq(dp_io_chan_new(io, 128, &c), 0);
	uint32_t f = open_pattern(io, test_dir(), 1 << 20, 2, 0);
	for (uint32_t i = 0; i < 128; i++)
		cr_assert_eq(dp_io_read(c, f, (uint64_t)i * 4096, dp_io_buf(io, i), 4096, 0, &t),
		             0);
	cr_assert_eq(dp_io_stop(io, DP_IO_STOP_DRAIN), 0);
	cr_expect_eq(dp_io_completed(c), 128);
	for (uint64_t i = 0; i < 128; i++) {
		int32_t res;
		cr_expect_eq(dp_io_result(c, i, &res), 0);
		cr_expect_eq(res, 4096);
		cr_expect(check(dp_io_buf(io, (uint32_t)i), 4096, i * 4096, 2));
	}
	dp_io_chan_free(c);
	dp_io_free(io);
}

Test(io, iopoll_on_a_device_without_poll_queues_falls_back_and_reports_it)
{
	struct dp_io *io = engine(16, 4, 65536, DP_IO_IOPOLL);
	struct dp_io_chan *c;
	struct dp_io_mode m;
	char desc[1024];
	uint64_t t;

	uint32_t f = open_pattern(io, test_dir(), 1 << 18, 3, 0);
	if (!is_direct(io, f)) {
		dp_io_free(io);
		cr_skip_test("%s has no O_DIRECT", test_dir());
	}
	cr_assert_eq(dp_io_get_mode(io, &m), 0);
	cr_expect(m.iopoll || (m.fallbacks & (1u << DP_IO_FB_IOPOLL)), "asked for at setup");
	cr_assert_eq(dp_io_start(io, -1), 0);
	cr_assert_eq(dp_io_chan_new(io, 0, &c), 0);
	for (uint32_t i = 0; i < 4; i++)
		cr_assert_eq(dp_io_read(c, f, (uint64_t)i * 65536, dp_io_buf(io, i), 65536, 0, &t),
		             0);
	for (uint64_t i = 0; i < 4; i++) {
		cr_expect_eq(wait_result(c, i), 65536, "the refused reads were resubmitted");
		cr_expect(check(dp_io_buf(io, (uint32_t)i), 65536, i * 65536, 3));
	}
	/* fsync is never polled: it forces the fallback even on a poll device. */
	cr_assert_eq(dp_io_sync(c, f, DP_IO_OP_FSYNC, 0, &t), 0);
	cr_expect_eq(wait_result(c, t), 0);
	cr_assert_eq(dp_io_get_mode(io, &m), 0);
	cr_assert_eq(dp_io_describe(io, desc, sizeof(desc)), 0);
	cr_log_info("%s", desc);
	cr_expect(!m.iopoll, "interrupt-driven now");
	cr_expect(m.fallbacks & (1u << DP_IO_FB_IOPOLL), "and it says so");
	cr_expect_eq(m.fallback_err[DP_IO_FB_IOPOLL], -EOPNOTSUPP);
	cr_expect_not_null(strstr(desc, "iopoll (EOPNOTSUPP)"));
	cr_expect(m.fixed_bufs, "buffers registered again on the new ring");
	cr_assert_eq(dp_io_read(c, f, 0, dp_io_buf(io, 0), 65536, 0, &t), 0);
	cr_expect_eq(wait_result(c, t), 65536);
	dp_io_chan_free(c);
	dp_io_free(io);
}

Test(io, sqpoll_when_asked_runs_or_reports_why_not)
{
	struct dp_io *io = engine(16, 4, 4096, DP_IO_SQPOLL);
	struct dp_io_chan *c;
	struct dp_io_mode m;
	uint64_t t;

	cr_assert_eq(dp_io_get_mode(io, &m), 0);
	cr_expect(m.sqpoll || (m.fallbacks & (1u << DP_IO_FB_SQPOLL)));
	cr_expect(!m.defer_taskrun, "the kernel does not take DEFER_TASKRUN with SQPOLL");
	uint32_t f = open_pattern(io, test_dir(), 1 << 16, 1, 0);
	cr_assert_eq(dp_io_start(io, -1), 0);
	cr_assert_eq(dp_io_chan_new(io, 0, &c), 0);
	for (uint32_t i = 0; i < 4; i++)
		cr_assert_eq(dp_io_read(c, f, (uint64_t)i * 4096, dp_io_buf(io, i), 4096, 0, &t),
		             0);
	for (uint64_t i = 0; i < 4; i++)
		cr_expect_eq(wait_result(c, i), 4096);
	dp_io_chan_free(c);
	dp_io_free(io);
}

struct poll_other {
	struct dp_io *io;
	int ret;
};

static void *poll_from_other(void *arg)
{
	struct poll_other *o = arg;
	o->ret = dp_io_poll(o->io, 0);
	return NULL;
}

Test(io, poll_mode_runs_the_loop_in_the_callers_thread)
{
	struct dp_io *io = engine(16, 4, 4096, 0);
	struct dp_io_chan *c;
	uint64_t t;
	pthread_t th;

	cr_assert_eq(dp_io_chan_new(io, 0, &c), 0);
	uint32_t f = open_pattern(io, test_dir(), 1 << 16, 4, 0);
	cr_assert_eq(dp_io_read(c, f, 4096, dp_io_buf(io, 0), 4096, 0, &t), 0);
	cr_expect_geq(dp_io_poll(io, 0), 0, "the caller owns the ring now");
	/* dp_io_wait on the owner drives the loop. */
	cr_expect_eq(wait_result(c, t), 4096);
	cr_expect(check(dp_io_buf(io, 0), 4096, 4096, 4));
	struct poll_other o = {io, 0};
	cr_assert_eq(pthread_create(&th, NULL, poll_from_other, &o), 0);
	pthread_join(th, NULL);
	cr_expect_eq(o.ret, -EBUSY, "one owner");
	cr_expect_eq(dp_io_start(io, -1), -EBUSY);
	cr_assert_eq(dp_io_stop(io, DP_IO_STOP_DRAIN), 0);
	dp_io_chan_free(c);
	dp_io_free(io);
}

Test(io, window_full_gives_eagain_and_free_drops_requests_never_started)
{
	struct dp_io *io = engine(16, 8, 4096, 0);
	struct dp_io_chan *c, *c2;
	uint64_t t;
	int32_t res;

	cr_assert_eq(dp_io_chan_new(io, 3, &c), 0);
	cr_expect_eq(dp_io_chan_depth(c), 4, "rounded up to a power of two");
	uint32_t f = open_pattern(io, test_dir(), 1 << 16, 0, 0);
	for (uint32_t i = 0; i < 4; i++)
		cr_assert_eq(dp_io_read(c, f, 0, dp_io_buf(io, i), 4096, 0, &t), 0);
	cr_expect_eq(dp_io_read(c, f, 0, dp_io_buf(io, 4), 4096, 0, &t), -EAGAIN);
	cr_expect_eq(dp_io_result(c, 0, &res), -EAGAIN, "not finished: nobody runs the loop");
	cr_expect_eq(dp_io_wait(c, 3, 1000000), -ETIMEDOUT);
	cr_expect_eq(dp_io_wait(c, 4, 0), -EINVAL, "not handed out");
	dp_io_chan_free(c); /* the engine never ran: the requests are dropped */
	cr_assert_eq(dp_io_chan_new(io, 4, &c2), 0);
	cr_assert_eq(dp_io_start(io, -1), 0);
	for (uint64_t i = 0; i < 6; i++) {
		cr_assert_eq(dp_io_read(c2, f, 0, dp_io_buf(io, 0), 4096, 0, &t), 0);
		cr_expect_eq(wait_result(c2, t), 4096);
	}
	cr_expect_eq(dp_io_result(c2, 1, &res), -ESTALE, "its slot was reused");
	cr_expect_eq(dp_io_result(c2, 2, &res), 0);
	dp_io_free(io); /* frees c2 too */
}

Test(io, stop_before_start_cancels_what_was_queued)
{
	struct dp_io *io = engine(16, 8, 4096, 0);
	struct dp_io_chan *c;
	uint64_t t;
	int32_t res;

	cr_assert_eq(dp_io_chan_new(io, 8, &c), 0);
	uint32_t f = open_pattern(io, test_dir(), 1 << 16, 0, 0);
	cr_assert_eq(dp_io_read(c, f, 0, dp_io_buf(io, 0), 4096, 0, &t), 0);
	cr_assert_eq(dp_io_stop(io, DP_IO_STOP_DRAIN), 0);
	cr_expect_eq(dp_io_wait(c, t, SEC), 0);
	cr_expect_eq(dp_io_result(c, t, &res), 0);
	cr_expect_eq(res, -ECANCELED);
	cr_expect_eq(dp_io_start(io, -1), -EBUSY);
	cr_expect_eq(dp_io_file_open(io, "/dev/null", O_RDONLY, 0, 0, &f), -ESHUTDOWN);
	dp_io_chan_free(c);
	dp_io_free(io);
}

Test(io, stop_and_control_calls_reach_an_io_thread_whose_ops_are_all_busy)
{
	/* Every op holds a read that never finishes: the io thread sleeps
	 * without announcing itself to requesters, yet a control call and a
	 * stop must still wake it. */
	struct dp_io *io = engine(2, 0, 4096, 0);
	struct dp_io_chan *c;
	uint32_t pf, f2;
	int p[2];
	uint64_t t;
	char b[4][8];

	cr_assert_eq(pipe(p), 0);
	cr_assert_eq(dp_io_start(io, -1), 0);
	cr_assert_eq(dp_io_chan_new(io, 8, &c), 0);
	cr_assert_eq(dp_io_file_add(io, p[0], &pf), 0);
	for (int i = 0; i < 4; i++)
		cr_assert_eq(dp_io_read(c, pf, 0, b[i], 1, 0, &t), 0);
	sleep_ms(20);
	struct dp_io_stats s;
	stats(io, &s);
	cr_expect_eq(s.inflight, 2, "both ops busy, two requests queued");
	cr_expect_eq(dp_io_file_add(io, p[1], &f2), 0, "a control call gets through");
	cr_expect_eq(dp_io_file_remove(io, f2), 0);
	cr_assert_eq(dp_io_stop(io, DP_IO_STOP_CANCEL), 0);
	cr_expect_eq(dp_io_completed(c), 4);
	for (uint64_t i = 0; i < 4; i++) {
		int32_t res;
		cr_expect_eq(dp_io_result(c, i, &res), 0);
		cr_expect_eq(res, -ECANCELED);
	}
	dp_io_chan_free(c);
	dp_io_free(io);
	close(p[0]);
	close(p[1]);
}

/* A HIGH channel's request is served before the bulk a LOW channel queued
 * earlier: with 2 kernel slots, it waits for at most what the io thread had
 * already taken off the LOW ring, not for the whole backlog. */
Test(io, a_high_priority_channel_overtakes_a_low_priority_backlog)
{
	const uint32_t n = 512, bs = 65536, fsize = 16 << 20;
	struct dp_io *io = engine(2, 2, bs, 0);
	struct dp_io_chan *low, *high;
	uint64_t first, t;

	cr_assert_eq(dp_io_start(io, -1), 0);
	cr_assert_eq(dp_io_chan_new(io, 1024, &low), 0);
	cr_assert_eq(dp_io_chan_new(io, 4, &high), 0);
	cr_assert_eq(dp_io_chan_set_priority(low, DP_IO_PRIO_LOW), 0);
	cr_assert_eq(dp_io_chan_set_priority(high, DP_IO_PRIO_HIGH), 0);
	cr_expect_eq(dp_io_chan_set_priority(high, DP_IO_PRIO_MAX), -EINVAL);
	uint32_t f = open_pattern(io, test_dir(), fsize, 3, 0);
	struct dp_io_req *reqs = calloc(n, sizeof(*reqs));
	for (uint32_t i = 0; i < n; i++)
		reqs[i] = (struct dp_io_req){ .op = DP_IO_OP_READ, .file = f,
					      .offset = (uint64_t)(i % (fsize / bs)) * bs,
					      .addr = dp_io_buf(io, 0), .len = bs };
	for (uint32_t queued = 0; queued < n;) {
		int r = dp_io_submit(low, reqs + queued, n - queued, &first);
		cr_assert_gt(r, 0);
		queued += (uint32_t)r;
	}
	cr_assert_eq(dp_io_read(high, f, 0, dp_io_buf(io, 1), bs, 0, &t), 0);
	cr_assert_eq(dp_io_wait(high, t, 30 * SEC), 0);
	uint64_t low_done = dp_io_completed(low);
	cr_expect_lt(low_done, n / 2, "the high-priority read waited for %llu of %u low ones",
		     (unsigned long long)low_done, n);
	cr_assert_eq(dp_io_wait(low, n - 1, 60 * SEC), 0);
	free(reqs);
	dp_io_chan_free(high);
	dp_io_chan_free(low);
	dp_io_free(io);
}

/* A channel's byte limit holds its requests in the kernel to that many bytes
 * (the restore queue's pacing: earliest pages first), while the engine's
 * depth would take many more; every request still finishes, with the right
 * results. */
Test(io, a_channel_byte_limit_bounds_its_requests_in_the_kernel)
{
	const uint32_t n = 256, bs = 65536, fsize = 16 << 20;
	struct dp_io *io = engine(64, 2, bs, 0);
	struct dp_io_chan *c;
	uint64_t first;

	cr_assert_eq(dp_io_start(io, -1), 0);
	cr_assert_eq(dp_io_chan_new(io, 1024, &c), 0);
	cr_expect_eq(dp_io_chan_set_limit(NULL, bs), -EINVAL);
	cr_assert_eq(dp_io_chan_set_limit(c, 2 * bs), 0);
	uint32_t f = open_pattern(io, test_dir(), fsize, 3, 0);
	struct dp_io_req *reqs = calloc(n, sizeof(*reqs));
	for (uint32_t i = 0; i < n; i++)
		reqs[i] = (struct dp_io_req){ .op = DP_IO_OP_READ, .file = f,
					      .offset = (uint64_t)(i % (fsize / bs)) * bs,
					      .addr = dp_io_buf(io, i % 2), .len = bs };
	for (uint32_t queued = 0; queued < n;) {
		int r = dp_io_submit(c, reqs + queued, n - queued, &first);
		cr_assert_gt(r, 0);
		queued += (uint32_t)r;
	}
	cr_assert_eq(dp_io_wait(c, n - 1, 60 * SEC), 0);
	struct dp_io_stats st;
	cr_assert_eq(dp_io_get_stats(io, &st), 0);
	cr_expect_leq(st.inflight_max, 2, "%u requests of 64 KiB in the kernel at once under a "
		      "128 KiB limit", st.inflight_max);
	for (uint32_t i = 0; i < n; i++) {
		int32_t res;
		if (dp_io_result(c, i, &res) == 0)
			cr_expect_eq(res, (int32_t)bs, "request %u", i);
	}
	free(reqs);
	dp_io_chan_free(c);
	dp_io_free(io);
}

/* ---- the read rate ----------------------------------------------------- */

#define RB_BS 65536u

/* An engine whose reads are paced to rate bytes a second, burst bytes. */
static struct dp_io *paced_engine(uint64_t rate, uint32_t burst, uint32_t n_bufs, unsigned flags)
{
	struct dp_io_config cfg;

	config_of(&cfg, 32, n_bufs, RB_BS, flags);
	cfg.read_rate = rate;
	cfg.read_burst = burst;
	return engine_cfg(&cfg);
}

/* n reads of 64 KiB, offsets going round the file, into arena buffers
 * round robin (their contents are not checked here); all queued at once. */
static void queue_reads(struct dp_io *io, struct dp_io_chan *c, uint32_t f, uint32_t n,
                        uint32_t fsize)
{
	uint64_t first;

	for (uint32_t i = 0; i < n; i++) {
		struct dp_io_req r = {.op = DP_IO_OP_READ,
		                      .file = f,
		                      .offset = (uint64_t)i * RB_BS % fsize,
		                      .addr = dp_io_buf(io, i % dp_io_buf_count(io)),
		                      .len = RB_BS};
		int k = dp_io_submit(c, &r, 1, &first);
		cr_assert_eq(k, 1, "read %u queued: %d", i, k);
	}
}

/*
 * N bytes read through a limit of R bytes a second with a burst B: the
 * bytes started by time t are at most B + R t plus the one read that took
 * the bucket into debt, so the last 64 KiB read starts no sooner than
 * (N - B - 64 KiB) / R. A lower bound only (it holds however loaded the
 * machine is) and a generous sanity bound above. While reads wait the io
 * thread sleeps (sleep_ns), it does not spin.
 */
static void reads_are_paced(unsigned flags, bool poll_mode)
{
	const uint64_t rate = 4u << 20;
	const uint32_t burst = 256u << 10, n = 32, fsize = 1u << 20;
	struct dp_io *io = paced_engine(rate, burst, 4, flags);
	struct dp_io_chan *c;
	struct dp_io_stats s;

	if (!poll_mode)
		cr_assert_eq(dp_io_start(io, -1), 0);
	cr_assert_eq(dp_io_chan_new(io, 64, &c), 0);
	uint32_t f = open_pattern(io, test_dir(), fsize, 5, 0);
	uint64_t t0 = dp_clock_ns();
	queue_reads(io, c, f, n, fsize);
	/* in poll mode this thread owns the ring from its first dp_io_poll on,
	 * and dp_io_wait drives the loop */
	if (poll_mode)
		cr_assert_geq(dp_io_poll(io, 0), 0);
	/* halfway, the channel is busy still (reads queue behind the bucket)
	 * and its time so far is out with its bytes: the rate a reader takes
	 * over the stretch is the paced one, not bytes over no time */
	cr_assert_eq(dp_io_wait(c, n / 2 - 1, 60 * SEC), 0);
	uint64_t mid_ns = 0, mid_bytes = 0;
	cr_assert_eq(dp_io_chan_busy(c, &mid_ns, &mid_bytes), 0);
	cr_expect_geq(mid_bytes, (uint64_t)(n / 2) * RB_BS);
	double mid_bound = (double)(mid_bytes - burst - RB_BS) / (double)rate;
	cr_expect_geq((double)mid_ns / 1e9, 0.99 * mid_bound,
		      "halfway: %llu KiB read in %.4f s of channel time, paced they take %.4f s",
		      (unsigned long long)mid_bytes >> 10, (double)mid_ns / 1e9, mid_bound);
	cr_assert_eq(dp_io_wait(c, n - 1, 60 * SEC), 0);
	double secs = (double)(dp_clock_ns() - t0) / 1e9;
	double bound = (double)((uint64_t)n * RB_BS - burst - RB_BS) / (double)rate;
	stats(io, &s);
	cr_log_info("%u KiB at %.1f MiB/s (burst %u KiB, flags %u, %s): %.3f s, at least %.3f s; "
	            "%llu reads waited %.3f s; io thread slept %.3f s in %llu sleeps",
	            n * RB_BS >> 10, (double)rate / 1048576, burst >> 10, flags,
	            poll_mode ? "poll mode" : "io thread", secs, bound,
	            (unsigned long long)s.read_waits, (double)s.read_wait_ns / 1e9,
	            (double)s.sleep_ns / 1e9, (unsigned long long)s.sleeps);
	cr_expect_geq(secs, bound, "%.3f s for %u KiB at %llu B/s", secs, n * RB_BS >> 10,
	              (unsigned long long)rate);
	cr_expect_lt(secs, 10 * bound + 5, "paced, not stuck: %.3f s", secs);
	for (uint32_t i = 0; i < n; i++) {
		int32_t res;
		cr_expect_eq(dp_io_result(c, i, &res), 0);
		cr_expect_eq(res, (int32_t)RB_BS, "read %u", i);
	}
	cr_expect_eq(s.reads, n);
	/* the channel's I/O time counts the waits for the bucket: the rate
	 * it gives (what admission predicts with) is the paced one, not the
	 * device's (before, the time nothing of it was in flight was lost,
	 * nearly all of it). The bucket is full a few microseconds before the
	 * first read starts the channel's clock: 1% of slack covers that on a
	 * slow (sanitized, loaded) machine and still tells the two apart. */
	uint64_t busy_ns = 0, bytes = 0;
	cr_assert_eq(dp_io_chan_busy(c, &busy_ns, &bytes), 0);
	cr_expect_eq(bytes, (uint64_t)n * RB_BS);
	cr_expect_geq((double)busy_ns / 1e9, 0.99 * bound,
	              "channel busy %.4f s, paced reads take %.4f s", (double)busy_ns / 1e9, bound);
	cr_expect_gt(s.read_waits, 0, "reads waited for the bucket");
	cr_expect_gt(s.read_wait_ns, 0);
	cr_expect_gt((double)s.sleep_ns / 1e9, secs / 2,
	             "the io thread slept while reads waited (%.3f of %.3f s)",
	             (double)s.sleep_ns / 1e9, secs);
	if (poll_mode)
		cr_assert_eq(dp_io_stop(io, DP_IO_STOP_DRAIN), 0);
	dp_io_chan_free(c);
	dp_io_free(io);
}

Test(io, reads_through_a_read_rate_take_at_least_bytes_less_burst_over_the_rate)
{
	reads_are_paced(0, false);
}

Test(io, reads_through_a_read_rate_are_paced_in_poll_mode)
{
	reads_are_paced(0, true);
}

Test(io, reads_through_a_read_rate_are_paced_with_iopoll_asked_for)
{
	reads_are_paced(DP_IO_IOPOLL, false);
}

/* Writes are not paced, even on a channel of their own beside reads that
 * the bucket holds: 2 MiB of writes finish while 2 MiB of reads at 1 MiB/s
 * (about 2 s) are still waiting, and well within the time they would take
 * at that rate. */
Test(io, writes_are_not_paced_and_go_on_beside_reads_held_by_the_rate)
{
	const uint64_t rate = 1u << 20;
	const uint32_t n = 32, fsize = 2u << 20;
	struct dp_io *io = paced_engine(rate, 64u << 10, 8, 0);
	struct dp_io_chan *rc, *wc;
	uint64_t first;

	cr_assert_eq(dp_io_start(io, -1), 0);
	cr_assert_eq(dp_io_chan_new(io, 64, &rc), 0);
	cr_assert_eq(dp_io_chan_new(io, 64, &wc), 0);
	uint32_t f = open_pattern(io, test_dir(), fsize, 6, 0);
	queue_reads(io, rc, f, n, fsize);
	uint64_t t0 = dp_clock_ns();
	uint8_t *wb = dp_io_buf(io, 7);
	fill(wb, RB_BS, 0, 6);
	for (uint32_t i = 0; i < n; i++) {
		struct dp_io_req r = {.op = DP_IO_OP_WRITE,
		                      .file = f,
		                      .offset = (uint64_t)i * RB_BS,
		                      .addr = wb,
		                      .len = RB_BS};
		cr_assert_eq(dp_io_submit(wc, &r, 1, &first), 1);
	}
	cr_assert_eq(dp_io_wait(wc, n - 1, 60 * SEC), 0);
	double secs = (double)(dp_clock_ns() - t0) / 1e9;
	uint64_t reads_done = dp_io_completed(rc);
	cr_log_info("%u KiB of writes in %.3f s; %llu of %u reads done meanwhile", n * RB_BS >> 10,
	            secs, (unsigned long long)reads_done, n);
	cr_expect_lt(reads_done, n, "the writes did not wait for the held reads");
	cr_expect_lt(secs, (double)(n * RB_BS) / (double)rate / 2,
	             "writes at the disk's speed, not the read rate: %.3f s", secs);
	for (uint32_t i = 0; i < n; i++) {
		int32_t res;
		cr_expect_eq(dp_io_result(wc, i, &res), 0);
		cr_expect_eq(res, (int32_t)RB_BS, "write %u", i);
	}
	cr_assert_eq(dp_io_wait(rc, n - 1, 60 * SEC), 0);
	dp_io_chan_free(wc);
	dp_io_chan_free(rc);
	dp_io_free(io);
}

Test(io, a_read_rate_or_burst_out_of_range_is_refused)
{
	struct dp_io_config cfg;
	struct dp_io *io = NULL;

	dp_io_config_init(&cfg);
	cr_expect_eq(cfg.read_rate, 0, "no limit by default");
	cr_expect_eq(cfg.read_burst, DP_IO_READ_BURST_DEFAULT);
	cfg.read_rate = DP_IO_READ_RATE_MAX + 1;
	cr_expect_eq(dp_io_new(&cfg, &io), -EINVAL, "a rate above DP_IO_READ_RATE_MAX");
	dp_io_config_init(&cfg);
	cfg.read_rate = 1u << 20;
	cfg.read_burst = DP_IO_LEN_MAX + 1;
	cr_expect_eq(dp_io_new(&cfg, &io), -EINVAL, "a burst above DP_IO_LEN_MAX");
	cr_expect_null(io, "output untouched on failure");
	/* the extremes are taken */
	dp_io_config_init(&cfg);
	cfg.read_rate = DP_IO_READ_RATE_MAX;
	cfg.read_burst = DP_IO_LEN_MAX;
	io = engine_cfg(&cfg);
	char desc[1024];
	cr_assert_eq(dp_io_describe(io, desc, sizeof(desc)), 0);
	cr_expect_not_null(strstr(desc, "reads paced to"), "%s", desc);
	dp_io_free(io);
	cfg.read_burst = 0; /* every read waits for the one before to be paid */
	io = engine_cfg(&cfg);
	dp_io_free(io);
}

/* A drain finishes reads the bucket still holds (paced: the rate is the
 * device's), a cancel drops them at once. */
Test(io, stop_drain_finishes_reads_held_by_the_rate_and_cancel_drops_them)
{
	const uint64_t rate = 2u << 20;
	const uint32_t burst = 64u << 10, n = 16, fsize = 1u << 20;
	struct dp_io *io = paced_engine(rate, burst, 16, 0);
	struct dp_io_chan *c;

	cr_assert_eq(dp_io_start(io, -1), 0);
	cr_assert_eq(dp_io_chan_new(io, 64, &c), 0);
	uint32_t f = open_pattern(io, test_dir(), fsize, 7, 0);
	uint64_t t0 = dp_clock_ns();
	queue_reads(io, c, f, n, fsize);
	cr_assert_eq(dp_io_stop(io, DP_IO_STOP_DRAIN), 0);
	double secs = (double)(dp_clock_ns() - t0) / 1e9;
	double bound = (double)((uint64_t)n * RB_BS - burst - RB_BS) / (double)rate;
	cr_log_info("drain of %u held reads: %.3f s (at least %.3f s)", n, secs, bound);
	cr_expect_eq(dp_io_completed(c), n, "every read finished");
	cr_expect_geq(secs, bound, "and paced");
	for (uint32_t i = 0; i < n; i++) {
		int32_t res;
		cr_expect_eq(dp_io_result(c, i, &res), 0);
		cr_expect_eq(res, (int32_t)RB_BS, "read %u", i);
		cr_expect(check(dp_io_buf(io, i), RB_BS, (uint64_t)i * RB_BS, 7), "read %u's data",
		          i);
	}
	dp_io_chan_free(c);
	dp_io_free(io);

	/* 64 reads at 1 MiB/s would take 4 s: a cancel does not wait for them */
	io = paced_engine(1u << 20, burst, 16, 0);
	cr_assert_eq(dp_io_start(io, -1), 0);
	cr_assert_eq(dp_io_chan_new(io, 64, &c), 0);
	f = open_pattern(io, test_dir(), fsize, 7, 0);
	queue_reads(io, c, f, 64, fsize);
	sleep_ms(20);
	t0 = dp_clock_ns();
	cr_assert_eq(dp_io_stop(io, DP_IO_STOP_CANCEL), 0);
	secs = (double)(dp_clock_ns() - t0) / 1e9;
	cr_expect_eq(dp_io_completed(c), 64);
	uint32_t cancelled = 0;
	for (uint32_t i = 0; i < 64; i++) {
		int32_t res;
		cr_expect_eq(dp_io_result(c, i, &res), 0);
		cr_expect(res == (int32_t)RB_BS || res == -ECANCELED, "read %u: %d", i, res);
		cancelled += res == -ECANCELED;
	}
	cr_log_info("cancel: %.3f s, %u of 64 held reads cancelled", secs, cancelled);
	cr_expect_gt(cancelled, 32, "held reads were cancelled, not read");
	cr_expect_lt(secs, 2.0, "the cancel did not wait for the rate");
	dp_io_chan_free(c);
	dp_io_free(io);
}
