/* SPDX-License-Identifier: MIT */
#include "kvcache/journal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

struct dp_journal {
	int fd;
	int dirfd;
	char path[4096]; /* for messages */
	char dir[4096];
	const char *name; /* in dirfd */
	char damaged_copy[256]; /* set aside at open ("" if nothing was damaged) */
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

/* The key check: a 16-bit hash of type and key, never 0 (0 marks records
 * written before it existed). */
static uint16_t key_check(uint16_t type, const uint8_t *key, uint32_t len)
{
	uint64_t h = XXH3_64bits_withSeed(key, len, 0x4b4559000000ull | type);
	uint16_t c = (uint16_t)(h ^ (h >> 16) ^ (h >> 32) ^ (h >> 48));
	return c ? c : 1;
}

/* A key at the start of p (avail bytes): its length, or 0 if none fits. */
static uint32_t key_at(const uint8_t *p, uint64_t avail, const uint8_t **ret)
{
	if (avail < 2)
		return 0;
	uint32_t n = (uint32_t)get_le(p, 2);
	if (n == 0 || n > DP_JOURNAL_KEY_MAX || avail < 2 + (uint64_t)n)
		return 0;
	*ret = p + 2;
	return n;
}

/* The key copy that ends at end (avail bytes before it): its length, or 0. */
static uint32_t key_copy_before(const uint8_t *end, uint64_t avail, const uint8_t **ret)
{
	if (avail < 6 || get_le(end - 4, 4) != DP_JOURNAL_KEY_MAGIC)
		return 0;
	uint32_t n = (uint32_t)get_le(end - 6, 2);
	if (n == 0 || n > DP_JOURNAL_KEY_MAX || avail < 6 + (uint64_t)n)
		return 0;
	*ret = end - 6 - n;
	return n;
}

/* The payload a good record's reader sees: without its key copy. */
static uint32_t payload_len(const uint8_t *p, uint32_t len)
{
	const uint8_t *k1, *k2;
	uint32_t n1 = key_at(p, len, &k1), n2 = key_copy_before(p + len, len, &k2);
	/* both copies, apart, and equal: an old record's last bytes (a token, a
	 * page checksum, its key) pass all three by a 2^-32 chance at most */
	if (n1 && n2 == n1 && (uint64_t)len >= 2u * n1 + 8 && !memcmp(k1, k2, n1))
		return len - n1 - 6;
	return len;
}

struct rec {
	uint64_t off, end; /* end: where the header says the record ends */
	uint32_t len;
	uint16_t type, check;
	bool magic;
};

static bool type_ok(uint32_t t)
{
	return t >= 1 && t < DP_JREC_TYPE_MAX;
}

static bool rec_at(const uint8_t *m, uint64_t size, uint64_t off, struct rec *r)
{
	if (size - off < HDR_BYTES)
		return false;
	r->off = off;
	r->magic = get_le(m + off, 4) == DP_JOURNAL_MAGIC;
	r->type = (uint16_t)get_le(m + off + 4, 2);
	r->check = (uint16_t)get_le(m + off + 6, 2);
	r->len = (uint32_t)get_le(m + off + 8, 4);
	r->end = off + HDR_BYTES + r->len + TAIL_BYTES;
	return true;
}

/* Whole, and its checksum holds (which covers type, length and payload;
 * not the magic or the key check). */
static bool rec_good(const uint8_t *m, uint64_t size, const struct rec *r)
{
	return type_ok(r->type) && r->len <= DP_JOURNAL_RECORD_MAX && r->end <= size &&
	       get_le(m + r->end - TAIL_BYTES, 8) == record_sum(r->type, r->len, m + r->off + HDR_BYTES);
}

/* Damaged, but its header and key check name it: a place to resume at. */
static bool rec_named(const uint8_t *m, uint64_t size, const struct rec *r)
{
	const uint8_t *k;
	uint32_t n;
	return r->magic && r->check && type_ok(r->type) && r->len <= DP_JOURNAL_RECORD_MAX &&
	       r->end <= size && (n = key_at(m + r->off + HDR_BYTES, r->len, &k)) &&
	       key_check(r->type, k, n) == r->check;
}

/* The next offset after from where a good or named record starts. */
static uint64_t resync(const uint8_t *m, uint64_t size, uint64_t from)
{
	for (uint64_t p = from; p + HDR_BYTES <= size; p++) {
		if (m[p] != 0x44 /* 'D' */ || get_le(m + p, 4) != DP_JOURNAL_MAGIC)
			continue;
		struct rec r;
		rec_at(m, size, p, &r);
		if (rec_good(m, size, &r) || rec_named(m, size, &r))
			return p;
	}
	return size;
}

/* The span [off, next) as one record with only its type or length damaged:
 * the checksum holds for the length the span implies and some type.
 * Returns that type, or 0. */
static uint16_t repair(const uint8_t *m, const struct rec *r, uint64_t next)
{
	if (next - r->off < HDR_BYTES + TAIL_BYTES || next - r->off - HDR_BYTES - TAIL_BYTES > DP_JOURNAL_RECORD_MAX)
		return 0;
	uint32_t len = (uint32_t)(next - r->off - HDR_BYTES - TAIL_BYTES);
	uint64_t sum = get_le(m + next - TAIL_BYTES, 8);
	const uint8_t *p = m + r->off + HDR_BYTES;
	if (type_ok(r->type) && record_sum(r->type, len, p) == sum)
		return r->type;
	for (uint16_t t = 1; t < DP_JREC_TYPE_MAX; t++)
		if (t != r->type && record_sum(t, len, p) == sum)
			return t;
	return 0;
}

/* Whose the damaged span [r->off, next) was (journal.h: Replay). */
static void attribute(const uint8_t *m, const struct rec *r, uint64_t next,
		      struct dp_journal_damage *d)
{
	const uint8_t *p = m + r->off + HDR_BYTES, *k[3] = { NULL, NULL, NULL };
	uint32_t n[3] = { 0, 0, 0 };
	if (next - r->off < HDR_BYTES)
		return; /* a record resumes inside this one's header */
	uint64_t avail = next - r->off - HDR_BYTES;

	n[0] = key_at(p, avail, &k[0]);
	/* the copy ends where the header says the record does, or the span */
	if (r->end - TAIL_BYTES >= r->off + HDR_BYTES && r->end <= next)
		n[1] = key_copy_before(m + r->end - TAIL_BYTES, r->end - TAIL_BYTES - r->off - HDR_BYTES,
				       &k[1]);
	if (next - r->off >= HDR_BYTES + TAIL_BYTES && next != r->end)
		n[2] = key_copy_before(m + next - TAIL_BYTES, avail - TAIL_BYTES, &k[2]);
	for (int i = 0; i < 3; i++) {
		if (n[i] && r->magic && r->check && type_ok(r->type) &&
		    key_check(r->type, k[i], n[i]) == r->check) {
			d->type = (enum dp_journal_type)r->type;
			d->key_verified = true;
			memcpy(d->key, k[i], n[i]);
			d->key[n[i]] = '\0';
			return;
		}
	}
	/* the check itself damaged: two copies that agree name it */
	for (int i = 1; i < 3; i++) {
		if (n[0] && n[i] == n[0] && !memcmp(k[0], k[i], n[0])) {
			d->key_verified = true;
			memcpy(d->key, k[0], n[0]);
			d->key[n[0]] = '\0';
			return;
		}
	}
	if (n[0]) { /* salvaged: the bytes where the key would be */
		memcpy(d->key, k[0], n[0]);
		d->key[n[0]] = '\0';
	}
}

/* A crash tears only the tail, and only so: a header cut short, a record
 * shorter than its header says, or blocks never written (zeros). */
static bool torn_tail(const uint8_t *m, uint64_t size, const struct rec *r, bool hdr)
{
	if (!hdr || (r->magic && type_ok(r->type) && r->end > size))
		return true;
	for (uint64_t p = r->off; p < size; p++)
		if (m[p])
			return false;
	return true;
}

static int deliver(struct dp_journal *j, const struct dp_journal_replay *cb, uint16_t type,
		   const uint8_t *p, uint32_t len, uint64_t off, char *err, size_t err_len)
{
	int ret = cb && cb->record ? cb->record(cb->ctx, (enum dp_journal_type)type, p, payload_len(p, len)) : 0;
	if (ret < 0 && err && err_len)
		snprintf(err, err_len, "%s: record at offset %llu: %s", j->path, (unsigned long long)off,
			 strerror(-ret));
	if (ret == 0)
		j->stats.records_replayed++;
	return ret;
}

/* Replay the whole file (journal.h: Replay); cut a torn tail. */
static int replay(struct dp_journal *j, const struct dp_journal_replay *cb, char *err,
		  size_t err_len)
{
	struct stat st;
	if (fstat(j->fd, &st) < 0)
		return -errno;
	uint64_t size = (uint64_t)st.st_size, off = 0, torn = size;
	const uint8_t *m = NULL;
	int ret = 0;

	if (size) {
		void *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, j->fd, 0);
		if (map == MAP_FAILED)
			return -errno;
		m = map;
	}
	while (off < size && ret == 0) {
		struct rec r;
		bool hdr = rec_at(m, size, off, &r);
		if (hdr && rec_good(m, size, &r)) {
			ret = deliver(j, cb, r.type, m + off + HDR_BYTES, r.len, off, err, err_len);
			off = r.end;
			continue;
		}
		uint64_t next = resync(m, size, off + 1);
		uint16_t t = hdr ? repair(m, &r, next) : 0;
		if (t) {
			j->stats.repaired_records++;
			ret = deliver(j, cb, t, m + off + HDR_BYTES,
				      (uint32_t)(next - off - HDR_BYTES - TAIL_BYTES), off, err, err_len);
			off = next;
			continue;
		}
		if (next == size && torn_tail(m, size, &r, hdr)) {
			torn = off; /* not damage */
			break;
		}
		struct dp_journal_damage d = { .offset = off, .bytes = next - off };
		if (hdr)
			attribute(m, &r, next, &d);
		j->stats.damaged_records++;
		j->stats.damaged_bytes += d.bytes;
		if (cb && cb->damage && (ret = cb->damage(cb->ctx, &d)) < 0 && err && err_len)
			snprintf(err, err_len, "%s: damaged record at offset %llu: %s", j->path,
				 (unsigned long long)off, strerror(-ret));
		off = next;
	}
	if (ret == 0 && (j->stats.damaged_records || j->stats.repaired_records)) {
		/* keep the evidence before anything rewrites it */
		if (dp_kv_state_set_aside(j->dirfd, j->name, m, size, j->damaged_copy,
					  sizeof(j->damaged_copy)) < 0)
			j->damaged_copy[0] = '\0';
	}
	if (m)
		munmap((void *)m, size);
	if (ret < 0)
		return ret;
	if (torn < size) {
		/* drop the torn tail, durably */
		j->stats.truncated_bytes = size - torn;
		if (ftruncate(j->fd, (off_t)torn) < 0 || fdatasync(j->fd) < 0)
			return -errno;
	}
	j->size = torn;
	j->stats.bytes = torn;
	if (lseek(j->fd, (off_t)torn, SEEK_SET) < 0)
		return -errno;
	return 0;
}

int dp_kv_state_set_aside(int dirfd, const char *name, const void *data, uint64_t size, char *out,
			  size_t out_len)
{
	char to[256];
	long now = (long)time(NULL);
	for (int i = 0; i < 100; i++) {
		if (i)
			snprintf(to, sizeof(to), "%s.damaged-%ld-%d", name, now, i);
		else
			snprintf(to, sizeof(to), "%s.damaged-%ld", name, now);
		if (!data) {
			/* renameat2(RENAME_NOREPLACE) would be exact; a link and an
			 * unlink keep an existing name as well */
			if (linkat(dirfd, name, dirfd, to, 0) < 0) {
				if (errno == EEXIST)
					continue;
				return -errno;
			}
			if (unlinkat(dirfd, name, 0) < 0)
				return -errno;
		} else {
			int fd = openat(dirfd, to, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
			if (fd < 0) {
				if (errno == EEXIST)
					continue;
				return -errno;
			}
			int r = write_all(fd, data, (size_t)size);
			if (r == 0 && fsync(fd) < 0)
				r = -errno;
			close(fd);
			if (r < 0) {
				unlinkat(dirfd, to, 0);
				return r;
			}
		}
		if (fsync(dirfd) < 0)
			return -errno;
		snprintf(out, out_len, "%s", to);
		return 0;
	}
	return -EEXIST;
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

int dp_journal_open(int dirfd, const char *dir, const struct dp_journal_replay *cb,
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
	r = replay(j, cb, err, err_len);
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

static int writev_all(int fd, struct iovec *iov, int n)
{
	while (n) {
		ssize_t w = writev(fd, iov, n);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		for (; n && (size_t)w >= iov->iov_len; n--, iov++)
			w -= (ssize_t)iov->iov_len;
		if (n) {
			iov->iov_base = (uint8_t *)iov->iov_base + w;
			iov->iov_len -= (size_t)w;
		}
	}
	return 0;
}

int dp_journal_append(struct dp_journal *j, enum dp_journal_type type, const void *payload,
		      uint32_t len)
{
	const uint8_t *key;
	uint32_t klen;
	if (!j || !type_ok(type) || !payload || !(klen = key_at(payload, len, &key)) ||
	    len > DP_JOURNAL_RECORD_MAX - klen - 6)
		return -EINVAL;
	/* the payload, then the key's second copy (journal.h) */
	uint8_t hdr[HDR_BYTES], trailer[6], tail[TAIL_BYTES];
	uint32_t total = len + klen + 6;
	put_le(trailer, klen, 2);
	put_le(trailer + 2, DP_JOURNAL_KEY_MAGIC, 4);
	put_le(hdr, DP_JOURNAL_MAGIC, 4);
	put_le(hdr + 4, type, 2);
	put_le(hdr + 6, key_check((uint16_t)type, key, klen), 2);
	put_le(hdr + 8, total, 4);
	XXH3_state_t *h = XXH3_createState();
	if (!h)
		return -ENOMEM;
	XXH3_64bits_reset_withSeed(h, ((uint64_t)type << 32) | total);
	XXH3_64bits_update(h, payload, len);
	XXH3_64bits_update(h, key, klen);
	XXH3_64bits_update(h, trailer, sizeof(trailer));
	put_le(tail, XXH3_64bits_digest(h), 8);
	XXH3_freeState(h);
	struct iovec iov[5] = { { hdr, HDR_BYTES }, { (void *)payload, len }, { (void *)key, klen },
				{ trailer, sizeof(trailer) }, { tail, TAIL_BYTES } };
	int r = writev_all(j->fd, iov, 5);
	if (r < 0) {
		/* leave no half record behind for later appends to follow */
		if (ftruncate(j->fd, (off_t)j->size) == 0)
			lseek(j->fd, (off_t)j->size, SEEK_SET);
		return r;
	}
	j->size += HDR_BYTES + total + TAIL_BYTES;
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

const char *dp_journal_damaged_copy(const struct dp_journal *j)
{
	return j->damaged_copy[0] ? j->damaged_copy : NULL;
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
