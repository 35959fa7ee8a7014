/* SPDX-License-Identifier: MIT */
/*
 * io: the file table, O_DIRECT and its alignment.
 *
 * Handles are indices into io->files and, when the kernel takes a
 * registered file table, into that table too (IOSQE_FIXED_FILE).
 * Alignment for direct I/O, in order of trust:
 *   1. statx(STATX_DIOALIGN) (Linux 6.1+; ext4, xfs, f2fs, block devices):
 *      offsets/lengths and memory separately; 0 means the file has no
 *      direct I/O, which makes us fall back to buffered;
 *   2. a block device: its logical block size (BLKSSZGET);
 *   3. a file: the logical block size of the disk under it (sysfs);
 *   4. 4096, a multiple of every logical block size in use.
 */
#include "io/io-internal.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

static bool pow2(uint32_t v)
{
	return v && !(v & (v - 1));
}

static uint32_t sysfs_block_size(dev_t dev)
{
	static const char *const fmt[] = {
	    "/sys/dev/block/%u:%u/queue/logical_block_size",
	    "/sys/dev/block/%u:%u/../queue/logical_block_size", /* a partition */
	};
	char path[96];
	unsigned v = 0;

	for (size_t i = 0; i < 2; i++) {
		snprintf(path, sizeof(path), fmt[i], major(dev), minor(dev));
		FILE *f = fopen(path, "re");
		if (!f)
			continue;
		int n = fscanf(f, "%u", &v);
		fclose(f);
		if (n == 1 && pow2(v))
			return v;
	}
	return 0;
}

/* 0, or -EOPNOTSUPP when the file system says it has no direct I/O. */
static int dio_align(int fd, const struct stat *st, uint32_t *ret_mem, uint32_t *ret_off)
{
	uint32_t mem = 0, off = 0;

#ifdef STATX_DIOALIGN
	struct statx sx;
	if (statx(fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &sx) == 0 &&
	    (sx.stx_mask & STATX_DIOALIGN)) {
		if (!sx.stx_dio_offset_align)
			return -EOPNOTSUPP;
		mem = sx.stx_dio_mem_align;
		off = sx.stx_dio_offset_align;
	}
#endif
	if (!off && S_ISBLK(st->st_mode)) {
		int bs = 0;
		if (ioctl(fd, BLKSSZGET, &bs) == 0 && bs > 0)
			off = (uint32_t)bs;
	}
	if (!off && S_ISREG(st->st_mode))
		off = sysfs_block_size(st->st_dev);
	if (!pow2(off))
		off = 4096;
	if (!pow2(mem))
		mem = off;
	*ret_mem = mem;
	*ret_off = off;
	return 0;
}

/* Fill a table slot for fd and register it. fb_err: O_DIRECT was refused at
 * open (the fd is buffered). */
static int file_add(struct dp_io *io, int fd, bool owned, bool want_direct, int fb_err,
                    uint32_t *ret_file)
{
	struct io_file f = {.fd = fd, .owned = owned, .used = true, .mem_align = 1, .off_align = 1};
	struct stat st;
	uint32_t idx;

	if (fstat(fd, &st) < 0)
		return -errno;
	int fl = fcntl(fd, F_GETFL);
	if (fl < 0)
		return -errno;
	f.stream = S_ISFIFO(st.st_mode) || S_ISSOCK(st.st_mode) || S_ISCHR(st.st_mode);
	f.direct = (fl & O_DIRECT) && !f.stream;
	if (f.direct && dio_align(fd, &st, &f.mem_align, &f.off_align) == -EOPNOTSUPP) {
		/* Opened, but the file system reports no direct I/O. */
		if (fcntl(fd, F_SETFL, fl & ~O_DIRECT) == 0) {
			f.direct = false;
			fb_err = -EOPNOTSUPP;
		}
	}
	if (fb_err && want_direct) {
		f.fell_back = true;
		f.fallback_err = fb_err;
	}

	pthread_mutex_lock(&io->lock);
	for (idx = 0; idx < io->cfg.max_files && io->files[idx].used; idx++)
		;
	if (idx == io->cfg.max_files) {
		pthread_mutex_unlock(&io->lock);
		return -ENFILE;
	}
	io->files[idx] = f;
	if (f.fell_back) {
		io->mode.fallbacks |= 1u << DP_IO_FB_BUFFERED;
		io->mode.fallback_err[DP_IO_FB_BUFFERED] = fb_err;
	}
	pthread_mutex_unlock(&io->lock);

	struct io_ctl c = {.op = CTL_FILE_REG, .idx = idx};
	int r = io_ctl_call(io, &c);
	if (r < 0) {
		pthread_mutex_lock(&io->lock);
		memset(&io->files[idx], 0, sizeof(io->files[idx]));
		io->files[idx].fd = -1;
		pthread_mutex_unlock(&io->lock);
		return r;
	}
	*ret_file = idx;
	return 0;
}

int dp_io_file_open(struct dp_io *io, const char *path, int oflags, mode_t mode, unsigned flags,
                    uint32_t *ret_file)
{
	bool want_direct;
	int fd = -1, fb_err = 0;

	if (!io || !path || !ret_file || flags >= DP_IO_FILE_FLAGS_MAX)
		return -EINVAL;
	if (atomic_load_explicit(&io->exited, memory_order_acquire))
		return -ESHUTDOWN;
	want_direct = !(flags & DP_IO_FILE_BUFFERED);
	oflags = (oflags | O_CLOEXEC) & ~O_DIRECT;
	if (want_direct) {
		fd = open(path, oflags | O_DIRECT, mode);
		if (fd < 0 && errno != EINVAL)
			return -errno;
		if (fd < 0)
			fb_err = -EINVAL; /* the file system refuses O_DIRECT */
	}
	if (fd < 0) {
		fd = open(path, oflags, mode);
		if (fd < 0)
			return -errno;
	}
	int r = file_add(io, fd, true, want_direct, fb_err, ret_file);
	if (r < 0)
		close(fd);
	return r;
}

int dp_io_file_add(struct dp_io *io, int fd, uint32_t *ret_file)
{
	if (!io || fd < 0 || !ret_file)
		return -EINVAL;
	if (atomic_load_explicit(&io->exited, memory_order_acquire))
		return -ESHUTDOWN;
	return file_add(io, fd, false, false, 0, ret_file);
}

int dp_io_file_remove(struct dp_io *io, uint32_t file)
{
	if (!io || file >= io->cfg.max_files)
		return -EINVAL;
	struct io_ctl c = {.op = CTL_FILE_UNREG, .idx = file};
	return io_ctl_call(io, &c);
}

int dp_io_file_info(struct dp_io *io, uint32_t file, struct dp_io_file_info *ret)
{
	if (!io || !ret || file >= io->cfg.max_files)
		return -EINVAL;
	pthread_mutex_lock(&io->lock);
	const struct io_file *f = &io->files[file];
	if (!f->used) {
		pthread_mutex_unlock(&io->lock);
		return -EBADF;
	}
	*ret = (struct dp_io_file_info){
	    .fd = f->fd,
	    .direct = f->direct,
	    .fixed = f->fixed,
	    .stream = f->stream,
	    .fell_back = f->fell_back,
	    .fallback_err = f->fallback_err,
	    .mem_align = f->mem_align,
	    .offset_align = f->off_align,
	};
	pthread_mutex_unlock(&io->lock);
	return 0;
}

/* ---- the registered table (io->lock held; io thread or no loop) -------- */

/* A fresh ring: create the table, put every open file in it. */
int io_files_register(struct dp_io *io)
{
	uint32_t n = io->cfg.max_files;
	int r;

	for (uint32_t i = 0; i < n; i++)
		io->files[i].fixed = false;
	if (io->cfg.flags & DP_IO_NO_FIXED_FILES)
		return 0;
	r = io_uring_register_files_sparse(&io->ring, n);
	if (r == -EINVAL) {
		/* Before sparse tables (5.19): a table of -1 entries. */
		int *fds = malloc(n * sizeof(int));
		if (!fds)
			return -ENOMEM;
		for (uint32_t i = 0; i < n; i++)
			fds[i] = -1;
		r = io_uring_register_files(&io->ring, fds, n);
		free(fds);
	}
	pthread_mutex_lock(&io->lock);
	io->mode.fixed_files = r == 0;
	if (r < 0) {
		io->mode.fallbacks |= 1u << DP_IO_FB_FIXED_FILES;
		io->mode.fallback_err[DP_IO_FB_FIXED_FILES] = r;
	}
	for (uint32_t i = 0; r == 0 && i < n; i++)
		if (io->files[i].used)
			io->files[i].fixed =
			    io_uring_register_files_update(&io->ring, i, &io->files[i].fd, 1) == 1;
	pthread_mutex_unlock(&io->lock);
	return 0;
}

/* CTL_FILE_REG. */
int io_file_reg(struct dp_io *io, uint32_t idx)
{
	struct io_file *f = &io->files[idx];

	if (atomic_load_explicit(&io->state, memory_order_relaxed) == IO_EXITED)
		return -ESHUTDOWN;
	if (!io->mode.fixed_files)
		return 0;
	int r = io_uring_register_files_update(&io->ring, idx, &f->fd, 1);
	f->fixed = r == 1;
	if (r < 0) {
		io->mode.fallbacks |= 1u << DP_IO_FB_FIXED_FILES;
		io->mode.fallback_err[DP_IO_FB_FIXED_FILES] = r;
	}
	return 0;
}

/* CTL_FILE_UNREG. */
int io_file_unreg(struct dp_io *io, uint32_t idx)
{
	struct io_file *f = &io->files[idx];

	if (!f->used)
		return -EBADF;
	if (f->inflight)
		return -EBUSY;
	if (f->fixed && atomic_load_explicit(&io->state, memory_order_relaxed) != IO_EXITED) {
		int none = -1;
		io_uring_register_files_update(&io->ring, idx, &none, 1);
	}
	if (f->owned)
		close(f->fd);
	memset(f, 0, sizeof(*f));
	f->fd = -1;
	return 0;
}

void io_file_close_all(struct dp_io *io)
{
	if (!io->files)
		return;
	for (uint32_t i = 0; i < io->cfg.max_files; i++) {
		if (io->files[i].used && io->files[i].owned)
			close(io->files[i].fd);
		io->files[i].used = false;
	}
}
