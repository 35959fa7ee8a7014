/* SPDX-License-Identifier: MIT */
#include "kvcache/journal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

struct dp_journal {
	int fd;
	int dirfd;
	char path[4096]; /* for messages */
	char dir[4096];
	const char *name; /* in dirfd */
	uint64_t size;
	struct dp_journal_stats stats;
};

#define HDR_BYTES 12u
#define TAIL_BYTES 8u

/* The checksum covers the payload and, through the seed, type and length. */
static uint64_t record_sum(uint16_t type, uint32_t len, const void *payload)
{
	return XXH3_64bits_withSeed(payload, len, ((uint64_t)type << 32) | len);
}

static void put_le(uint8_t *p, uint64_t v, int n)
{
	for (int i = 0; i < n; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t get_le(const uint8_t *p, int n)
{
	uint64_t v = 0;
	for (int i = 0; i < n; i++)
		v |= (uint64_t)p[i] << (8 * i);
	return v;
}

static int write_all(int fd, const void *buf, size_t len)
{
	const uint8_t *p = buf;
	while (len) {
		ssize_t n = write(fd, p, len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

static int read_all(int fd, void *buf, size_t len)
{
	uint8_t *p = buf;
	size_t got = 0;
	while (got < len) {
		ssize_t n = read(fd, p + got, len - got);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (n == 0)
			break;
		got += (size_t)n;
	}
	return (int)got;
}

/* Replay from the start; cut the file after the last valid record. */
static int replay(struct dp_journal *j, dp_journal_replay_fn fn, void *ctx, char *err,
		  size_t err_len)
{
	uint64_t off = 0;
	uint8_t hdr[HDR_BYTES], tail[TAIL_BYTES];
	uint8_t *buf = NULL;
	int ret = 0;

	if (lseek(j->fd, 0, SEEK_SET) < 0)
		return -errno;
	for (;;) {
		int n = read_all(j->fd, hdr, HDR_BYTES);
		if (n < 0) {
			ret = n;
			break;
		}
		if (n < (int)HDR_BYTES)
			break; /* end, or a torn header */
		uint32_t magic = (uint32_t)get_le(hdr, 4);
		uint16_t type = (uint16_t)get_le(hdr + 4, 2);
		uint32_t len = (uint32_t)get_le(hdr + 8, 4);
		if (magic != DP_JOURNAL_MAGIC || type == 0 || type >= DP_JREC_TYPE_MAX ||
		    len > DP_JOURNAL_RECORD_MAX)
			break;
		uint8_t *nb = realloc(buf, len ? len : 1);
		if (!nb) {
			ret = -ENOMEM;
			break;
		}
		buf = nb;
		if (read_all(j->fd, buf, len) != (int)len || read_all(j->fd, tail, TAIL_BYTES) != (int)TAIL_BYTES)
			break;
		if (get_le(tail, 8) != record_sum(type, len, buf))
			break;
		ret = fn ? fn(ctx, (enum dp_journal_type)type, buf, len) : 0;
		if (ret < 0) {
			if (err && err_len)
				snprintf(err, err_len, "%s: record at offset %llu: %s", j->path,
					 (unsigned long long)off, strerror(-ret));
			break;
		}
		j->stats.records_replayed++;
		off += HDR_BYTES + len + TAIL_BYTES;
	}
	free(buf);
	if (ret < 0)
		return ret;
	struct stat st;
	if (fstat(j->fd, &st) < 0)
		return -errno;
	if ((uint64_t)st.st_size > off) {
		/* a crash tore the tail: drop it, durably */
		j->stats.truncated_bytes = (uint64_t)st.st_size - off;
		if (ftruncate(j->fd, (off_t)off) < 0 || fdatasync(j->fd) < 0)
			return -errno;
	}
	j->size = off;
	j->stats.bytes = off;
	if (lseek(j->fd, (off_t)off, SEEK_SET) < 0)
		return -errno;
	return 0;
}

int dp_kv_state_openat(int dirfd, const char *dir, const char *name, int flags, char *err,
		       size_t err_len)
{
	int fd = openat(dirfd, name, flags | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (fd < 0) {
		int e = -errno;
		if (err && err_len) {
			if (e == -ELOOP)
				snprintf(err, err_len, "%s/%s is a symbolic link: state files are never "
					 "followed out of the state directory; remove it", dir, name);
			else
				snprintf(err, err_len, "cannot open %s/%s: %s", dir, name, strerror(-e));
		}
		return e;
	}
	struct stat st;
	if (fstat(fd, &st) < 0) {
		int e = -errno;
		close(fd);
		return e;
	}
	const char *why = !S_ISREG(st.st_mode)	 ? "is not a regular file"
			  : st.st_uid != geteuid() ? "is owned by another user"
			  : st.st_nlink != 1	   ? "has other hard links"
						   : NULL;
	if (why) {
		if (err && err_len)
			snprintf(err, err_len, "%s/%s %s (uid %u, mode %04o, %ju links); this process "
				 "(uid %u) uses only its own files there: remove it", dir, name, why,
				 (unsigned)st.st_uid, (unsigned)(st.st_mode & 07777),
				 (uintmax_t)st.st_nlink, (unsigned)geteuid());
		close(fd);
		return -EPERM;
	}
	return fd;
}

static int open_file(int dirfd, const char *dir, const char *name, int flags, struct dp_journal *j,
		     char *err, size_t err_len)
{
	snprintf(j->dir, sizeof(j->dir), "%s", dir);
	if ((size_t)snprintf(j->path, sizeof(j->path), "%s/%s", dir, name) >= sizeof(j->path))
		return -ENAMETOOLONG;
	j->name = name;
	j->dirfd = fcntl(dirfd, F_DUPFD_CLOEXEC, 0);
	if (j->dirfd < 0)
		return -errno;
	j->fd = dp_kv_state_openat(dirfd, dir, name, flags, err, err_len);
	if (j->fd < 0) {
		int e = j->fd;
		close(j->dirfd);
		j->dirfd = -1;
		return e;
	}
	return 0;
}

int dp_journal_open(int dirfd, const char *dir, dp_journal_replay_fn fn, void *ctx,
		    struct dp_journal **ret, char *err, size_t err_len)
{
	if (dirfd < 0 || !dir || !ret)
		return -EINVAL;
	struct dp_journal *j = calloc(1, sizeof(*j));
	if (!j)
		return -ENOMEM;
	j->fd = j->dirfd = -1;
	int r = open_file(dirfd, dir, DP_JOURNAL_FILE, O_RDWR | O_CREAT, j, err, err_len);
	if (r < 0) {
		free(j);
		return r;
	}
	/* a compaction that crashed before its rename leaves a stray file */
	unlinkat(j->dirfd, DP_JOURNAL_FILE ".new", 0);
	r = replay(j, fn, ctx, err, err_len);
	if (r < 0) {
		if (err && err_len && !err[0])
			snprintf(err, err_len, "cannot read %s: %s", j->path, strerror(-r));
		dp_journal_close(j);
		return r;
	}
	*ret = j;
	return 0;
}

void dp_journal_close(struct dp_journal *j)
{
	if (!j)
		return;
	if (j->fd >= 0)
		close(j->fd);
	if (j->dirfd >= 0)
		close(j->dirfd);
	free(j);
}

int dp_journal_append(struct dp_journal *j, enum dp_journal_type type, const void *payload,
		      uint32_t len)
{
	if (!j || type == 0 || type >= DP_JREC_TYPE_MAX || len > DP_JOURNAL_RECORD_MAX ||
	    (len && !payload))
		return -EINVAL;
	uint8_t hdr[HDR_BYTES], tail[TAIL_BYTES];
	put_le(hdr, DP_JOURNAL_MAGIC, 4);
	put_le(hdr + 4, type, 2);
	put_le(hdr + 6, 0, 2);
	put_le(hdr + 8, len, 4);
	put_le(tail, record_sum((uint16_t)type, len, payload), 8);
	int r;
	if ((r = write_all(j->fd, hdr, HDR_BYTES)) < 0 || (r = write_all(j->fd, payload, len)) < 0 ||
	    (r = write_all(j->fd, tail, TAIL_BYTES)) < 0) {
		/* leave no half record behind for later appends to follow */
		if (ftruncate(j->fd, (off_t)j->size) == 0)
			lseek(j->fd, (off_t)j->size, SEEK_SET);
		return r;
	}
	j->size += HDR_BYTES + len + TAIL_BYTES;
	j->stats.bytes = j->size;
	return 0;
}

int dp_journal_sync(struct dp_journal *j)
{
	if (!j)
		return -EINVAL;
	if (fdatasync(j->fd) < 0)
		return -errno;
	j->stats.syncs++;
	return 0;
}

int dp_journal_compact(struct dp_journal *j, int (*emit)(void *ctx, struct dp_journal *nj),
		       void *ctx)
{
	struct dp_journal *nj = calloc(1, sizeof(*nj));
	int r;

	if (!nj)
		return -ENOMEM;
	nj->fd = nj->dirfd = -1;
	r = open_file(j->dirfd, j->dir, DP_JOURNAL_FILE ".new", O_RDWR | O_CREAT | O_TRUNC, nj, NULL, 0);
	if (r < 0) {
		free(nj);
		return r;
	}
	r = emit(ctx, nj);
	if (r == 0 && fdatasync(nj->fd) < 0)
		r = -errno;
	if (r == 0 && renameat(nj->dirfd, nj->name, j->dirfd, j->name) < 0)
		r = -errno;
	if (r == 0 && fsync(j->dirfd) < 0) /* the rename itself durable */
		r = -errno;
	if (r < 0) {
		unlinkat(nj->dirfd, nj->name, 0);
		dp_journal_close(nj);
		return r;
	}
	/* continue appending to the new file */
	close(j->fd);
	j->fd = nj->fd;
	nj->fd = -1;
	j->size = nj->size;
	j->stats.bytes = j->size;
	j->stats.compactions++;
	dp_journal_close(nj);
	return 0;
}

void dp_journal_stats(const struct dp_journal *j, struct dp_journal_stats *ret)
{
	*ret = j->stats;
}

/* ---- payloads --------------------------------------------------------------- */

static void jbuf_put(struct dp_jbuf *b, const void *p, uint32_t n)
{
	if (b->error)
		return;
	if (n > DP_JOURNAL_RECORD_MAX - b->len) {
		b->error = -E2BIG;
		return;
	}
	if (b->len + n > b->cap) {
		uint32_t cap = b->cap ? b->cap : 256;
		while (cap < b->len + n)
			cap *= 2;
		uint8_t *d = realloc(b->data, cap);
		if (!d) {
			b->error = -ENOMEM;
			return;
		}
		b->data = d;
		b->cap = cap;
	}
	memcpy(b->data + b->len, p, n);
	b->len += n;
}

void dp_jbuf_put_u8(struct dp_jbuf *b, uint8_t v)
{
	jbuf_put(b, &v, 1);
}

void dp_jbuf_put_u16(struct dp_jbuf *b, uint16_t v)
{
	uint8_t p[2];
	put_le(p, v, 2);
	jbuf_put(b, p, 2);
}

void dp_jbuf_put_u32(struct dp_jbuf *b, uint32_t v)
{
	uint8_t p[4];
	put_le(p, v, 4);
	jbuf_put(b, p, 4);
}

void dp_jbuf_put_u64(struct dp_jbuf *b, uint64_t v)
{
	uint8_t p[8];
	put_le(p, v, 8);
	jbuf_put(b, p, 8);
}

void dp_jbuf_put_str(struct dp_jbuf *b, const char *s)
{
	size_t n = strlen(s);
	if (n > UINT16_MAX) {
		b->error = -E2BIG;
		return;
	}
	dp_jbuf_put_u16(b, (uint16_t)n);
	jbuf_put(b, s, (uint32_t)n);
}

void dp_jbuf_fini(struct dp_jbuf *b)
{
	free(b->data);
	memset(b, 0, sizeof(*b));
}

static const uint8_t *jread(struct dp_jreader *r, uint32_t n)
{
	if (r->error || n > r->left) {
		r->error = -EBADMSG;
		return NULL;
	}
	const uint8_t *p = r->p;
	r->p += n;
	r->left -= n;
	return p;
}

uint8_t dp_jread_u8(struct dp_jreader *r)
{
	const uint8_t *p = jread(r, 1);
	return p ? p[0] : 0;
}

uint16_t dp_jread_u16(struct dp_jreader *r)
{
	const uint8_t *p = jread(r, 2);
	return p ? (uint16_t)get_le(p, 2) : 0;
}

uint32_t dp_jread_u32(struct dp_jreader *r)
{
	const uint8_t *p = jread(r, 4);
	return p ? (uint32_t)get_le(p, 4) : 0;
}

uint64_t dp_jread_u64(struct dp_jreader *r)
{
	const uint8_t *p = jread(r, 8);
	return p ? get_le(p, 8) : 0;
}

int dp_jread_str(struct dp_jreader *r, char *buf, size_t len)
{
	uint16_t n = dp_jread_u16(r);
	const uint8_t *p = jread(r, n);
	if (!p || (size_t)n + 1 > len) {
		r->error = -EBADMSG;
		return -EBADMSG;
	}
	memcpy(buf, p, n);
	buf[n] = '\0';
	return 0;
}
