/* SPDX-License-Identifier: MIT */
/*
 * kvcache/tier-rados.c — the shared tier on Ceph RADOS (kvcache/tier.h).
 *
 * librados runs aio completions on its own finisher threads; the callback
 * here only moves the op onto a done list and bumps an eventfd, so every
 * user callback (and every check of the data read) runs on the thread
 * that reaps. Byte order of the on-object headers is the host's
 * (little-endian on every host we build for; a big-endian reader sees a
 * bad magic, -EBADMSG, never data).
 */
#include "kvcache/tier.h"
#include "kvcache/tier-rados-internal.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/time.h>
#include <unistd.h>

#include <rados/librados.h>
#include <xxhash.h>

#define SEG_MAGIC "DPKVSEG1"
#define MAN_MAGIC "DPKVMAN1"
#define TIER_VERSION 1
#define LOCK_NAME "dp.owner"
#define EPOCH_XATTR "dp.epoch"

struct seg_entry {
	uint64_t tag, xxh;
};
struct seg_hdr {
	char magic[8];
	uint32_t version, n;
	uint64_t page_bytes;
	uint64_t xxh; /* of the header with this field 0 */
	struct seg_entry ent[DP_KV_SHARED_GROUP_PAGES];
};
_Static_assert(sizeof(struct seg_hdr) <= DP_KV_SHARED_HEADER_BYTES, "segment header fits");

struct man_hdr {
	char magic[8];
	uint32_t version, pad;
	uint64_t len, xxh; /* of the data */
};

enum op_kind { OP_PUT, OP_GET, OP_DELETE, OP_MANIFEST };

struct op {
	struct op *next;
	enum op_kind kind;
	rados_completion_t c;
	rados_write_op_t wop;
	rados_read_op_t rop;
	dp_kv_shared_cb cb;
	void *arg;
	char *buf; /* put: the segment; manifest: the framed manifest; get: the header */
	size_t len;
	/* get */
	uint32_t n;
	size_t page_bytes;
	struct dp_kv_shared_page *pages;
	uint32_t *idx;
	size_t *got; /* bytes read per range: [0] header, [1 + i] page i */
	int *rv;
	struct dp_kv_shared *t;
};

struct lease {
	char session[256];
	uint64_t epoch;
};

struct dp_kv_shared {
	rados_t cl;
	rados_ioctx_t io;
	char host_id[DP_KV_SHARED_HOST_ID_MAX + 1];
	uint32_t lease_ms;
	int efd;
	pthread_mutex_t lock; /* done list only */
	struct op *done;
	unsigned inflight;
	struct lease *leases;
	size_t n_leases, cap_leases;
	struct dp_kv_shared_stats st;
};

bool dp_kv_shared_rados_available(void)
{
	return true;
}

static bool name_ok(const char *s, size_t max)
{
	size_t n = s ? strlen(s) : 0;
	if (n == 0 || n > max)
		return false;
	for (size_t i = 0; i < n; i++) {
		char c = s[i];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '.' || c == '_' || c == '-' || c == '~'))
			return false;
	}
	return true;
}

static void set_opt(rados_t cl, const char *k, uint32_t ms)
{
	char v[32];
	snprintf(v, sizeof(v), "%u", (ms + 999) / 1000);
	rados_conf_set(cl, k, v);
}

int dp_kv_shared_open(const struct dp_kv_shared_opts *o, struct dp_kv_shared **ret, char *err,
		    size_t err_len)
{
	if (!o || !ret || !o->pool || !o->pool[0]) {
		snprintf(err, err_len, "shared tier: rados_pool must be set");
		return -EINVAL;
	}
	if (!name_ok(o->host_id, DP_KV_SHARED_HOST_ID_MAX)) {
		snprintf(err, err_len, "shared tier: host_id \"%s\" must be 1..%d characters of "
				       "[A-Za-z0-9._-]", o->host_id ? o->host_id : "",
			 DP_KV_SHARED_HOST_ID_MAX);
		return -EINVAL;
	}
	if (o->client && o->client[0] && !name_ok(o->client, 128)) {
		snprintf(err, err_len, "shared tier: rados_client \"%s\" is not a client name",
			 o->client);
		return -EINVAL;
	}
	struct dp_kv_shared *t = calloc(1, sizeof(*t));
	if (!t)
		return -ENOMEM;
	snprintf(t->host_id, sizeof(t->host_id), "%s", o->host_id);
	t->lease_ms = o->lease_ms ? o->lease_ms : 10000;
	uint32_t tmo = o->timeout_ms ? o->timeout_ms : 10000;
	t->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	pthread_mutex_init(&t->lock, NULL);
	if (t->efd < 0) {
		int r = -errno;
		free(t);
		return r;
	}
	int r = rados_create(&t->cl, o->client && o->client[0] ? o->client : "admin");
	if (r < 0) {
		snprintf(err, err_len, "shared tier: rados_create: %s", strerror(-r));
		goto fail_fd;
	}
	r = rados_conf_read_file(t->cl, o->conf && o->conf[0] ? o->conf : NULL);
	if (r < 0) {
		snprintf(err, err_len, "shared tier: cannot read rados_conf %s: %s",
			 o->conf && o->conf[0] ? o->conf : "(default)", strerror(-r));
		goto fail_cl;
	}
	set_opt(t->cl, "client_mount_timeout", tmo);
	set_opt(t->cl, "rados_mon_op_timeout", tmo);
	set_opt(t->cl, "rados_osd_op_timeout", tmo);
	/* An op bound for an OSD that died waits for a newer osdmap, and the
	 * client asks the monitor for one only once an op of its is older than
	 * objecter_timeout (10 s): with every op cut at tmo before that, an idle
	 * client never asked, and each op on that OSD's PGs timed out until
	 * another op happened to bring the map (tests/shared/test_faults.c,
	 * an OSD killed). Ask within a quarter of the op timeout. */
	char lag[32];
	snprintf(lag, sizeof(lag), "%.3f", tmo / 4000.0);
	rados_conf_set(t->cl, "objecter_timeout", lag);
	/* Our own log, not the cluster's (the daemon's state dir is not ours to
	 * name here, and librados must not write to stderr). */
	rados_conf_set(t->cl, "log_to_stderr", "false");
	rados_conf_set(t->cl, "err_to_stderr", "false");
	rados_conf_set(t->cl, "log_file", "");
	r = rados_connect(t->cl);
	if (r < 0) {
		snprintf(err, err_len, "shared tier: cannot reach the cluster of %s: %s",
			 o->conf && o->conf[0] ? o->conf : "(default conf)", strerror(-r));
		if (r == -ETIMEDOUT || r == -EINTR)
			r = -ETIMEDOUT;
		goto fail_cl;
	}
	r = rados_ioctx_create(t->cl, o->pool, &t->io);
	if (r < 0) {
		snprintf(err, err_len, "shared tier: pool %s: %s", o->pool, strerror(-r));
		goto fail_shut;
	}
	*ret = t;
	return 0;
fail_shut:
	rados_shutdown(t->cl);
	goto fail_fd;
fail_cl:
	rados_shutdown(t->cl);
fail_fd:
	close(t->efd);
	pthread_mutex_destroy(&t->lock);
	free(t);
	return r;
}

static void op_free(struct op *op)
{
	if (!op)
		return;
	if (op->c)
		rados_aio_release(op->c);
	if (op->wop)
		rados_release_write_op(op->wop);
	if (op->rop)
		rados_release_read_op(op->rop);
	free(op->buf);
	free(op->pages);
	free(op->idx);
	free(op->got);
	free(op->rv);
	free(op);
}

void dp_kv_shared_close(struct dp_kv_shared *t)
{
	if (!t)
		return;
	rados_aio_flush(t->io);
	for (size_t i = 0; i < t->n_leases; i++)
		rados_unlock(t->io, t->leases[i].session, LOCK_NAME, t->host_id);
	free(t->leases);
	struct op *op = t->done;
	while (op) {
		struct op *next = op->next;
		op_free(op);
		op = next;
	}
	rados_ioctx_destroy(t->io);
	rados_shutdown(t->cl);
	close(t->efd);
	pthread_mutex_destroy(&t->lock);
	free(t);
}

const char *dp_kv_shared_host_id(const struct dp_kv_shared *t)
{
	return t ? t->host_id : NULL;
}

int dp_kv_shared_fd(const struct dp_kv_shared *t)
{
	return t ? t->efd : -EINVAL;
}

unsigned dp_kv_shared_inflight(const struct dp_kv_shared *t)
{
	return t ? t->inflight : 0;
}

/* librados finisher thread: hand the op to the reaper. */
static void on_complete(rados_completion_t c, void *arg)
{
	(void)c;
	struct op *op = arg;
	struct dp_kv_shared *t = op->t;
	pthread_mutex_lock(&t->lock);
	op->next = t->done;
	t->done = op;
	pthread_mutex_unlock(&t->lock);
	uint64_t one = 1;
	ssize_t w = write(t->efd, &one, sizeof(one));
	(void)w; /* an eventfd at its maximum is still readable */
}

static struct op *op_new(struct dp_kv_shared *t, enum op_kind kind, dp_kv_shared_cb cb, void *arg)
{
	struct op *op = calloc(1, sizeof(*op));
	if (!op)
		return NULL;
	op->kind = kind;
	op->cb = cb;
	op->arg = arg;
	op->t = t;
	if (rados_aio_create_completion2(op, on_complete, &op->c) < 0) {
		free(op);
		return NULL;
	}
	return op;
}

/* Hand op to librados: r is what the submitting call returned. On failure
 * the op is freed and r returned; else it counts as in flight until reaped. */
static int op_start(struct dp_kv_shared *t, struct op *op, int r)
{
	if (r < 0) {
		op_free(op);
		return r;
	}
	t->inflight++;
	return 0;
}

static uint64_t seg_hdr_xxh(const struct seg_hdr *h)
{
	struct seg_hdr c = *h;
	c.xxh = 0;
	return XXH3_64bits(&c, sizeof(c));
}

int dp_kv_shared_segment_name(const char *session, uint64_t epoch, uint64_t n, char *name,
			    size_t name_len)
{
	if (!name_ok(session, 200) || !name || name_len < 256)
		return -EINVAL;
	snprintf(name, name_len, "dp.g.%s.%llu.%llu", session, (unsigned long long)epoch,
		 (unsigned long long)n);
	return 0;
}

static bool group_ok(uint32_t n, size_t page_bytes)
{
	return n >= 1 && n <= DP_KV_SHARED_GROUP_PAGES && page_bytes > 0 &&
	       page_bytes <= DP_KV_SHARED_SEGMENT_MAX &&
	       DP_KV_SHARED_HEADER_BYTES + (uint64_t)n * page_bytes <= DP_KV_SHARED_SEGMENT_MAX;
}

int dp_kv_shared_put(struct dp_kv_shared *t, const char *segment, const struct dp_kv_shared_page *pages,
		   uint32_t n, size_t page_bytes, dp_kv_shared_cb cb, void *arg)
{
	if (!t || !segment || !segment[0] || !pages || !group_ok(n, page_bytes))
		return -EINVAL;
	for (uint32_t i = 0; i < n; i++)
		if (!pages[i].buf)
			return -EINVAL;
	struct op *op = op_new(t, OP_PUT, cb, arg);
	if (!op)
		return -ENOMEM;
	op->len = DP_KV_SHARED_HEADER_BYTES + (size_t)n * page_bytes;
	op->buf = calloc(1, op->len);
	if (!op->buf) {
		op_free(op);
		return -ENOMEM;
	}
	struct seg_hdr *h = (struct seg_hdr *)op->buf;
	memcpy(h->magic, SEG_MAGIC, 8);
	h->version = TIER_VERSION;
	h->n = n;
	h->page_bytes = page_bytes;
	for (uint32_t i = 0; i < n; i++) {
		char *dst = op->buf + DP_KV_SHARED_HEADER_BYTES + (size_t)i * page_bytes;
		memcpy(dst, pages[i].buf, page_bytes);
		h->ent[i].tag = pages[i].tag;
		h->ent[i].xxh = XXH3_64bits(dst, page_bytes);
	}
	h->xxh = seg_hdr_xxh(h);
	int r = op_start(t, op, rados_aio_write_full(t->io, segment, op->c, op->buf, op->len));
	if (r < 0)
		return r;
	t->st.puts++;
	t->st.put_bytes += (uint64_t)n * page_bytes;
	return 0;
}

int dp_kv_shared_get(struct dp_kv_shared *t, const char *segment, const uint32_t *idx,
		   const struct dp_kv_shared_page *pages, uint32_t n, size_t page_bytes,
		   dp_kv_shared_cb cb, void *arg)
{
	if (!t || !segment || !segment[0] || !idx || !pages || !group_ok(n, page_bytes))
		return -EINVAL;
	for (uint32_t i = 0; i < n; i++)
		if (!pages[i].buf || idx[i] >= DP_KV_SHARED_GROUP_PAGES)
			return -EINVAL;
	struct op *op = op_new(t, OP_GET, cb, arg);
	if (!op)
		return -ENOMEM;
	op->n = n;
	op->page_bytes = page_bytes;
	op->buf = malloc(DP_KV_SHARED_HEADER_BYTES);
	op->pages = malloc(n * sizeof(*op->pages));
	op->idx = malloc(n * sizeof(*op->idx));
	op->got = calloc(n + 1, sizeof(*op->got));
	op->rv = calloc(n + 1, sizeof(*op->rv));
	op->rop = rados_create_read_op();
	if (!op->buf || !op->pages || !op->idx || !op->got || !op->rv || !op->rop) {
		op_free(op);
		return -ENOMEM;
	}
	memcpy(op->pages, pages, n * sizeof(*pages));
	memcpy(op->idx, idx, n * sizeof(*idx));
	/* One op, n + 1 ranges: the header and each page asked for. */
	rados_read_op_read(op->rop, 0, DP_KV_SHARED_HEADER_BYTES, op->buf, &op->got[0], &op->rv[0]);
	for (uint32_t i = 0; i < n; i++)
		rados_read_op_read(op->rop, DP_KV_SHARED_HEADER_BYTES + (uint64_t)idx[i] * page_bytes,
				   page_bytes, pages[i].buf, &op->got[1 + i], &op->rv[1 + i]);
	int r = op_start(t, op, rados_aio_read_op_operate(op->rop, t->io, op->c, segment, 0));
	if (r < 0)
		return r;
	t->st.gets++;
	return 0;
}

int dp_kv_shared_delete(struct dp_kv_shared *t, const char *segment, dp_kv_shared_cb cb, void *arg)
{
	if (!t || !segment || !segment[0])
		return -EINVAL;
	struct op *op = op_new(t, OP_DELETE, cb, arg);
	if (!op)
		return -ENOMEM;
	int r = op_start(t, op, rados_aio_remove(t->io, segment, op->c));
	if (r < 0)
		return r;
	t->st.deletes++;
	return 0;
}

/* On the reaping thread: is what a get read whole and checked? */
static int get_check(struct dp_kv_shared *t, struct op *op)
{
	const struct seg_hdr *h = (const struct seg_hdr *)op->buf;
	if (op->got[0] < sizeof(*h) || memcmp(h->magic, SEG_MAGIC, 8) ||
	    h->version != TIER_VERSION || h->xxh != seg_hdr_xxh(h) ||
	    h->page_bytes != op->page_bytes || h->n > DP_KV_SHARED_GROUP_PAGES) {
		t->st.bad_pages++;
		return -EBADMSG;
	}
	for (uint32_t i = 0; i < op->n; i++) {
		uint32_t k = op->idx[i];
		if (op->rv[1 + i] < 0)
			return op->rv[1 + i];
		if (k >= h->n || op->got[1 + i] != op->page_bytes ||
		    h->ent[k].tag != op->pages[i].tag ||
		    XXH3_64bits(op->pages[i].buf, op->page_bytes) != h->ent[k].xxh) {
			t->st.bad_pages++;
			return -EBADMSG;
		}
	}
	t->st.get_bytes += (uint64_t)op->n * op->page_bytes;
	return 0;
}

int dp_kv_shared_reap(struct dp_kv_shared *t, unsigned max)
{
	if (!t)
		return -EINVAL;
	uint64_t v;
	ssize_t rd = read(t->efd, &v, sizeof(v));
	(void)rd;
	pthread_mutex_lock(&t->lock);
	struct op *list = t->done;
	t->done = NULL;
	pthread_mutex_unlock(&t->lock);
	/* The list is newest first; run callbacks in completion order. */
	struct op *rev = NULL;
	while (list) {
		struct op *next = list->next;
		list->next = rev;
		rev = list;
		list = next;
	}
	int ran = 0;
	while (rev && (max == 0 || (unsigned)ran < max)) {
		struct op *op = rev;
		rev = op->next;
		int res = rados_aio_get_return_value(op->c);
		if (res >= 0 && op->kind == OP_GET)
			res = get_check(t, op);
		else if (res > 0)
			res = 0;
		if (res == -ECANCELED && op->kind == OP_MANIFEST)
			t->st.fenced++;
		if (res < 0)
			t->st.errors++;
		t->inflight--;
		if (op->cb)
			op->cb(op->arg, res);
		op_free(op);
		ran++;
	}
	if (rev) { /* past max: back to the list, and the fd stays readable */
		struct op *fwd = NULL; /* newest first, as the list keeps them */
		while (rev) {
			struct op *next = rev->next;
			rev->next = fwd;
			fwd = rev;
			rev = next;
		}
		pthread_mutex_lock(&t->lock);
		struct op **tail = &t->done; /* what finished meanwhile is newer */
		while (*tail)
			tail = &(*tail)->next;
		*tail = fwd;
		pthread_mutex_unlock(&t->lock);
		uint64_t one = 1;
		ssize_t w = write(t->efd, &one, sizeof(one));
		(void)w;
	}
	return ran;
}

/* Leases */

static int sess_obj(const char *session, char *obj, size_t len)
{
	if (!name_ok(session, 200))
		return -EINVAL;
	snprintf(obj, len, "dp.s.%s", session);
	return 0;
}

static struct lease *lease_find(struct dp_kv_shared *t, const char *obj)
{
	for (size_t i = 0; i < t->n_leases; i++)
		if (!strcmp(t->leases[i].session, obj))
			return &t->leases[i];
	return NULL;
}

static void lease_drop(struct dp_kv_shared *t, struct lease *l)
{
	*l = t->leases[--t->n_leases];
	t->st.leases = t->n_leases;
}

static int read_epoch(struct dp_kv_shared *t, const char *obj, uint64_t *ret)
{
	char v[32];
	int r = rados_getxattr(t->io, obj, EPOCH_XATTR, v, sizeof(v) - 1);
	if (r == -ENODATA || r == -ENOENT) {
		*ret = 0;
		return 0;
	}
	if (r < 0)
		return r;
	v[r] = 0;
	char *end;
	unsigned long long e = strtoull(v, &end, 10);
	if (end == v || *end)
		return -EBADMSG;
	*ret = e;
	return 0;
}

int dp_kv_shared_lease_owner(struct dp_kv_shared *t, const char *session, char *owner,
			   size_t owner_len, uint64_t *ret_epoch)
{
	char obj[256];
	if (!t || !owner || owner_len == 0 || sess_obj(session, obj, sizeof(obj)) < 0)
		return -EINVAL;
	int excl;
	char tag[64], clients[512], cookies[512], addrs[512];
	size_t tl = sizeof(tag), cl = sizeof(clients), ck = sizeof(cookies), al = sizeof(addrs);
	ssize_t n = rados_list_lockers(t->io, obj, LOCK_NAME, &excl, tag, &tl, clients, &cl,
				       cookies, &ck, addrs, &al);
	if (n == -ENOENT)
		n = 0;
	if (n < 0)
		return (int)n;
	if (n == 0)
		owner[0] = 0;
	else
		snprintf(owner, owner_len, "%s", cookies); /* the cookie is the host id */
	if (ret_epoch) {
		uint64_t e;
		int r = read_epoch(t, obj, &e);
		if (r < 0)
			return r;
		*ret_epoch = e;
	}
	return 0;
}

int dp_kv_shared_lease_take(struct dp_kv_shared *t, const char *session, uint64_t *ret_epoch,
			  char *owner, size_t owner_len)
{
	char obj[256];
	if (!t || sess_obj(session, obj, sizeof(obj)) < 0)
		return -EINVAL;
	struct lease *held = lease_find(t, obj);
	struct timeval dur = { .tv_sec = t->lease_ms / 1000,
			       .tv_usec = (t->lease_ms % 1000) * 1000 };
	int r = rados_lock_exclusive(t->io, obj, LOCK_NAME, t->host_id, t->host_id, &dur,
				     held ? LIBRADOS_LOCK_FLAG_MAY_RENEW : 0);
	if (r == -EBUSY) {
		if (held)
			lease_drop(t, held); /* someone took it after ours expired */
		if (owner && owner_len)
			if (dp_kv_shared_lease_owner(t, session, owner, owner_len, NULL) < 0)
				snprintf(owner, owner_len, "?");
		return -EBUSY;
	}
	if (r == -EEXIST)
		r = 0; /* ours already (same client and cookie) */
	if (r < 0)
		return r;
	uint64_t e;
	r = read_epoch(t, obj, &e);
	if (r < 0)
		goto unlock;
	if (held && e == held->epoch) {
		if (ret_epoch)
			*ret_epoch = held->epoch;
		return 0;
	}
	if (held) /* ours expired, another host held it meanwhile and let go */
		lease_drop(t, held);
	/* A new holder: bump the epoch, so a previous holder's manifest writes
	 * (conditional on its epoch) fail from now on. We hold the lock, so no
	 * other taker races this read-modify-write. */
	char v[32];
	snprintf(v, sizeof(v), "%llu", (unsigned long long)(e + 1));
	r = rados_setxattr(t->io, obj, EPOCH_XATTR, v, strlen(v));
	if (r < 0)
		goto unlock;
	if (t->n_leases == t->cap_leases) {
		size_t cap = t->cap_leases ? 2 * t->cap_leases : 16;
		struct lease *nl = realloc(t->leases, cap * sizeof(*nl));
		if (!nl) {
			r = -ENOMEM;
			goto unlock;
		}
		t->leases = nl;
		t->cap_leases = cap;
	}
	struct lease *l = &t->leases[t->n_leases++];
	snprintf(l->session, sizeof(l->session), "%s", obj);
	l->epoch = e + 1;
	t->st.leases = t->n_leases;
	if (ret_epoch)
		*ret_epoch = e + 1;
	return 1;
unlock:
	rados_unlock(t->io, obj, LOCK_NAME, t->host_id);
	return r;
}

bool dp_kv_shared_lease_held(struct dp_kv_shared *t, const char *session)
{
	char obj[256];
	return t && sess_obj(session, obj, sizeof(obj)) == 0 && lease_find(t, obj);
}

int dp_kv_shared_lease_renew(struct dp_kv_shared *t, const char *session)
{
	char obj[256];
	if (!t || sess_obj(session, obj, sizeof(obj)) < 0)
		return -EINVAL;
	struct lease *l = lease_find(t, obj);
	if (!l)
		return -ENOLCK;
	struct timeval dur = { .tv_sec = t->lease_ms / 1000,
			       .tv_usec = (t->lease_ms % 1000) * 1000 };
	int r = rados_lock_exclusive(t->io, obj, LOCK_NAME, t->host_id, t->host_id, &dur,
				     LIBRADOS_LOCK_FLAG_MUST_RENEW);
	if (r == -EBUSY || r == -ENOENT) {
		lease_drop(t, l);
		return -ENOLCK;
	}
	if (r < 0)
		return r;
	/* Expired and not yet taken: the lock is ours again, but only if the
	 * epoch is still ours (nobody took it in between). */
	uint64_t e;
	r = read_epoch(t, obj, &e);
	if (r < 0)
		return r;
	if (e != l->epoch) {
		lease_drop(t, l);
		return -ENOLCK;
	}
	return 0;
}

int dp_kv_shared_lease_release(struct dp_kv_shared *t, const char *session)
{
	char obj[256];
	if (!t || sess_obj(session, obj, sizeof(obj)) < 0)
		return -EINVAL;
	struct lease *l = lease_find(t, obj);
	if (!l)
		return -ENOLCK;
	lease_drop(t, l);
	int r = rados_unlock(t->io, obj, LOCK_NAME, t->host_id);
	return r == -ENOENT ? -ENOLCK : r;
}

/* Manifests */

int dp_kv_shared_manifest_put(struct dp_kv_shared *t, const char *session, const void *data,
			    size_t len, dp_kv_shared_cb cb, void *arg)
{
	char obj[256];
	if (!t || (!data && len) || len > DP_KV_SHARED_MANIFEST_MAX ||
	    sess_obj(session, obj, sizeof(obj)) < 0)
		return -EINVAL;
	struct lease *l = lease_find(t, obj);
	if (!l)
		return -ENOLCK;
	struct op *op = op_new(t, OP_MANIFEST, cb, arg);
	if (!op)
		return -ENOMEM;
	op->len = sizeof(struct man_hdr) + len;
	op->buf = malloc(op->len);
	op->wop = rados_create_write_op();
	if (!op->buf || !op->wop) {
		op_free(op);
		return -ENOMEM;
	}
	struct man_hdr h = { .version = TIER_VERSION, .len = len };
	memcpy(h.magic, MAN_MAGIC, 8);
	h.xxh = XXH3_64bits(data, len);
	memcpy(op->buf, &h, sizeof(h));
	if (len)
		memcpy(op->buf + sizeof(h), data, len);
	/* The fence: the whole write op fails (-ECANCELED) unless the epoch is
	 * still the one this host took the session with. */
	char v[32];
	snprintf(v, sizeof(v), "%llu", (unsigned long long)l->epoch);
	rados_write_op_cmpxattr(op->wop, EPOCH_XATTR, LIBRADOS_CMPXATTR_OP_EQ, v, strlen(v));
	rados_write_op_write_full(op->wop, op->buf, op->len);
	int r = op_start(t, op, rados_aio_write_op_operate(op->wop, t->io, op->c, obj, NULL, 0));
	if (r < 0)
		return r;
	t->st.manifests++;
	return 0;
}

int dp_kv_shared_manifest_get(struct dp_kv_shared *t, const char *session, void **ret,
			    size_t *ret_len)
{
	char obj[256];
	if (!t || !ret || !ret_len || sess_obj(session, obj, sizeof(obj)) < 0)
		return -EINVAL;
	uint64_t size;
	time_t mtime;
	int r = rados_stat(t->io, obj, &size, &mtime);
	if (r < 0)
		return r;
	if (size == 0)
		return -ENOENT; /* the lock object of a session never written */
	if (size < sizeof(struct man_hdr) || size > sizeof(struct man_hdr) + DP_KV_SHARED_MANIFEST_MAX)
		return -EBADMSG;
	char *buf = malloc(size);
	if (!buf)
		return -ENOMEM;
	r = rados_read(t->io, obj, buf, size, 0);
	if (r < 0) {
		free(buf);
		return r;
	}
	struct man_hdr h;
	memcpy(&h, buf, sizeof(h));
	if ((uint64_t)r != size || memcmp(h.magic, MAN_MAGIC, 8) || h.version != TIER_VERSION ||
	    h.len != size - sizeof(h) || XXH3_64bits(buf + sizeof(h), h.len) != h.xxh) {
		free(buf);
		t->st.bad_pages++;
		return -EBADMSG;
	}
	memmove(buf, buf + sizeof(h), h.len);
	*ret = buf;
	*ret_len = h.len;
	return 0;
}

void dp_kv_shared_stats(const struct dp_kv_shared *t, struct dp_kv_shared_stats *ret)
{
	if (t && ret)
		*ret = t->st;
}

rados_ioctx_t dp_kv_shared_rados_ioctx(struct dp_kv_shared *t)
{
	return t->io;
}
