/* SPDX-License-Identifier: MIT */
/*
 * kvcache/tier-members.c — membership on the RADOS tier (kvcache/tier.h).
 *
 * Why a lock per member and an omap for the list: the lock (cls_lock with a
 * duration, the primitive the session leases use) is what makes a host id
 * exclusive — a second process cannot take it while the first renews it,
 * and it frees itself when its holder dies; the omap of one object is what
 * makes listing cheap (one read op, no pool scan). Members watch that
 * object (watch/notify) and notify it when they join or leave, so that the
 * others re-read the list at once instead of at their next periodic re-read
 * (a third of a lease); a router may just poll the list. Liveness is still
 * judged by heartbeat age: a dead member sends no notify.
 *
 * An entry's value is text, so `rados listomapvals dp.members` reads it:
 *   "dpm1 <start_ms> <beat_ms> <ttl_ms>\n<socket>\n<http>\n"
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

#include "kvcache/tier-rados-internal.h"

#define MEMBERS_OBJ "dp.members"
#define MEMBER_LOCK "dp.member"
#define MEMBERS_MAX 4096

static uint64_t realtime_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static bool addr_ok(const char *s)
{
	size_t n = strnlen(s, DP_KV_SHARED_ADDR_MAX);
	if (n >= DP_KV_SHARED_ADDR_MAX)
		return false;
	for (size_t i = 0; i < n; i++)
		if (s[i] == '\n' || s[i] == '\r')
			return false;
	return true;
}

static int member_obj(struct dp_kv_shared *t, char *obj, size_t len)
{
	const char *host = dp_kv_shared_host_id(t);
	if (!host)
		return -EINVAL;
	snprintf(obj, len, "dp.m.%s", host);
	return 0;
}

static int encode(const struct dp_kv_shared_member *m, char *buf, size_t len)
{
	int n = snprintf(buf, len, "dpm1 %" PRIu64 " %" PRIu64 " %" PRIu32 "\n%s\n%s\n", m->start_ms,
			 m->beat_ms, m->ttl_ms, m->socket, m->http);
	return n > 0 && (size_t)n < len ? n : -ENAMETOOLONG;
}

/* -EBADMSG unless val is an entry written by encode(). */
static int decode(const char *key, const char *val, size_t len, struct dp_kv_shared_member *ret)
{
	char buf[3 * DP_KV_SHARED_ADDR_MAX + 64];
	if (len >= sizeof(buf) || strlen(key) > DP_KV_SHARED_HOST_ID_MAX)
		return -EBADMSG;
	memcpy(buf, val, len);
	buf[len] = 0;
	struct dp_kv_shared_member m = { 0 };
	int used = 0;
	if (sscanf(buf, "dpm1 %" SCNu64 " %" SCNu64 " %" SCNu32 "\n%n", &m.start_ms, &m.beat_ms,
		   &m.ttl_ms, &used) != 3 || used == 0)
		return -EBADMSG;
	char *p = buf + used, *nl = strchr(p, '\n');
	if (!nl || (size_t)(nl - p) >= sizeof(m.socket))
		return -EBADMSG;
	memcpy(m.socket, p, (size_t)(nl - p));
	p = nl + 1;
	nl = strchr(p, '\n');
	if (!nl || (size_t)(nl - p) >= sizeof(m.http) || nl[1])
		return -EBADMSG;
	memcpy(m.http, p, (size_t)(nl - p));
	snprintf(m.host, sizeof(m.host), "%s", key);
	*ret = m;
	return 0;
}

static int entry_write(struct dp_kv_shared *t, const struct dp_kv_shared_member *m)
{
	char val[3 * DP_KV_SHARED_ADDR_MAX + 64];
	int n = encode(m, val, sizeof(val));
	if (n < 0)
		return n;
	const char *keys[1] = { m->host }, *vals[1] = { val };
	size_t klen[1] = { strlen(m->host) }, vlen[1] = { (size_t)n };
	rados_write_op_t op = rados_create_write_op();
	if (!op)
		return -ENOMEM;
	rados_write_op_omap_set2(op, keys, vals, klen, vlen, 1);
	int r = rados_write_op_operate(op, dp_kv_shared_rados_ioctx(t), MEMBERS_OBJ, NULL, 0);
	rados_release_write_op(op);
	return r;
}

static int entry_read(struct dp_kv_shared *t, const char *host, struct dp_kv_shared_member *ret)
{
	rados_read_op_t op = rados_create_read_op();
	if (!op)
		return -ENOMEM;
	rados_omap_iter_t it = NULL;
	int prval = 0;
	const char *keys[1] = { host };
	size_t klen[1] = { strlen(host) };
	rados_read_op_omap_get_vals_by_keys2(op, keys, 1, klen, &it, &prval);
	int r = rados_read_op_operate(op, dp_kv_shared_rados_ioctx(t), MEMBERS_OBJ, 0);
	if (r == 0)
		r = prval;
	if (r == 0) {
		char *k, *v;
		size_t kl, vl;
		r = -ENOENT;
		if (rados_omap_get_next2(it, &k, &v, &kl, &vl) == 0 && k && kl == klen[0])
			r = decode(host, v, vl, ret);
	}
	if (it)
		rados_omap_get_end(it);
	rados_release_read_op(op);
	return r;
}

static int lock_take(struct dp_kv_shared *t, uint32_t ttl_ms, uint8_t flags)
{
	char obj[128];
	int r = member_obj(t, obj, sizeof(obj));
	if (r < 0)
		return r;
	struct timeval dur = { .tv_sec = ttl_ms / 1000, .tv_usec = (ttl_ms % 1000) * 1000 };
	return rados_lock_exclusive(dp_kv_shared_rados_ioctx(t), obj, MEMBER_LOCK,
				    dp_kv_shared_host_id(t), "member", &dur, flags);
}

static bool self_ok(struct dp_kv_shared *t, const struct dp_kv_shared_member *m)
{
	const char *host = dp_kv_shared_host_id(t);
	return host && !strcmp(m->host, host) && addr_ok(m->socket) && addr_ok(m->http) &&
	       m->ttl_ms > 0;
}

int dp_kv_shared_member_join(struct dp_kv_shared *t, const struct dp_kv_shared_member *self,
			     struct dp_kv_shared_member *ret_other)
{
	if (!t || !self || !self_ok(t, self))
		return -EINVAL;
	int r = lock_take(t, self->ttl_ms, 0);
	if (r == -EBUSY) {
		if (ret_other) {
			struct dp_kv_shared_member o = { 0 };
			if (entry_read(t, self->host, &o) < 0)
				snprintf(o.host, sizeof(o.host), "%s", self->host);
			*ret_other = o;
		}
		return -EBUSY;
	}
	if (r < 0 && r != -EEXIST)
		return r;
	struct dp_kv_shared_member m = *self;
	m.beat_ms = realtime_ms();
	return entry_write(t, &m);
}

int dp_kv_shared_member_beat(struct dp_kv_shared *t, const struct dp_kv_shared_member *self)
{
	if (!t || !self || !self_ok(t, self))
		return -EINVAL;
	int r = lock_take(t, self->ttl_ms, LIBRADOS_LOCK_FLAG_MUST_RENEW);
	if (r == -ENOENT)
		r = lock_take(t, self->ttl_ms, 0); /* expired, nobody took it: ours again */
	if (r == -EBUSY)
		return -ENOLCK;
	if (r < 0 && r != -EEXIST)
		return r;
	struct dp_kv_shared_member m = *self;
	m.beat_ms = realtime_ms();
	return entry_write(t, &m);
}

static int entry_remove(struct dp_kv_shared *t, const char *host)
{
	const char *keys[1] = { host };
	size_t klen[1] = { strlen(host) };
	rados_write_op_t op = rados_create_write_op();
	if (!op)
		return -ENOMEM;
	rados_write_op_omap_rm_keys2(op, keys, klen, 1);
	int r = rados_write_op_operate(op, dp_kv_shared_rados_ioctx(t), MEMBERS_OBJ, NULL, 0);
	rados_release_write_op(op);
	return r == -ENOENT ? 0 : r;
}

int dp_kv_shared_member_forget(struct dp_kv_shared *t, const char *host)
{
	if (!t || !host || !host[0] || strlen(host) > DP_KV_SHARED_HOST_ID_MAX)
		return -EINVAL;
	return entry_remove(t, host);
}

int dp_kv_shared_member_leave(struct dp_kv_shared *t)
{
	char obj[128];
	if (!t || member_obj(t, obj, sizeof(obj)) < 0)
		return -EINVAL;
	const char *host = dp_kv_shared_host_id(t);
	int r = entry_remove(t, host);
	int u = rados_unlock(dp_kv_shared_rados_ioctx(t), obj, MEMBER_LOCK, host);
	return r < 0 ? r : u == -ENOENT ? 0 : u;
}

int dp_kv_shared_members(struct dp_kv_shared *t, struct dp_kv_shared_member **ret, size_t *ret_n)
{
	if (!t || !ret || !ret_n)
		return -EINVAL;
	rados_read_op_t op = rados_create_read_op();
	if (!op)
		return -ENOMEM;
	rados_omap_iter_t it = NULL;
	int prval = 0;
	unsigned char more = 0;
	rados_read_op_omap_get_vals2(op, "", "", MEMBERS_MAX, &it, &more, &prval);
	int r = rados_read_op_operate(op, dp_kv_shared_rados_ioctx(t), MEMBERS_OBJ, 0);
	if (r == -ENOENT) { /* nobody ever joined */
		rados_release_read_op(op);
		*ret = NULL;
		*ret_n = 0;
		return 0;
	}
	if (r == 0)
		r = prval;
	struct dp_kv_shared_member *v = NULL;
	size_t n = 0;
	if (r == 0) {
		unsigned cap = rados_omap_iter_size(it);
		v = calloc(cap ? cap : 1, sizeof(*v));
		if (!v)
			r = -ENOMEM;
		char *k, *val;
		size_t kl, vl;
		while (v && n < cap && rados_omap_get_next2(it, &k, &val, &kl, &vl) == 0 && k) {
			char key[DP_KV_SHARED_HOST_ID_MAX + 1];
			if (kl >= sizeof(key))
				continue;
			memcpy(key, k, kl);
			key[kl] = 0;
			if (decode(key, val, vl, &v[n]) == 0)
				n++;
		}
	}
	if (it)
		rados_omap_get_end(it);
	rados_release_read_op(op);
	if (r < 0) {
		free(v);
		return r;
	}
	*ret = v;
	*ret_n = n;
	return 0;
}

/* ---- watch/notify ---------------------------------------------------------------- */

#define NOTIFY_OUT_MAX 8

struct notify_out {
	rados_completion_t c;
	char *reply;
	size_t reply_len;
};

struct dp_kv_shared_watch {
	rados_ioctx_t io;
	uint64_t cookie;
	bool watching;
	dp_kv_shared_watch_cb cb;
	void *arg;
	/* notifies not reaped yet; each its own allocation: librados writes
	 * the reply to &out[i]->reply when the notify ends, so an entry never
	 * moves while its notify is out */
	struct notify_out *out[NOTIFY_OUT_MAX];
	size_t n_out;
};

/* librados's thread: ack at once (the notifier waits for every ack), then
 * tell the owner. */
static void on_notify(void *arg, uint64_t notify_id, uint64_t handle, uint64_t notifier_id,
		      void *data, size_t data_len)
{
	struct dp_kv_shared_watch *w = arg;
	(void)notifier_id, (void)data, (void)data_len;
	rados_notify_ack(w->io, MEMBERS_OBJ, notify_id, handle, NULL, 0);
	w->cb(w->arg, 0);
}

static void on_watch_error(void *arg, uint64_t cookie, int err)
{
	struct dp_kv_shared_watch *w = arg;
	(void)cookie;
	w->cb(w->arg, err < 0 ? err : -EIO);
}

/* The object must exist to be watched: a member's join wrote it; a watch
 * begun before any join creates it empty (an omap write of no keys). */
static int watch_begin(struct dp_kv_shared_watch *w)
{
	int r = rados_watch2(w->io, MEMBERS_OBJ, &w->cookie, on_notify, on_watch_error, w);
	if (r == -ENOENT) {
		rados_write_op_t op = rados_create_write_op();
		if (!op)
			return -ENOMEM;
		rados_write_op_create(op, LIBRADOS_CREATE_IDEMPOTENT, NULL);
		r = rados_write_op_operate(op, w->io, MEMBERS_OBJ, NULL, 0);
		rados_release_write_op(op);
		if (r == 0)
			r = rados_watch2(w->io, MEMBERS_OBJ, &w->cookie, on_notify, on_watch_error, w);
	}
	w->watching = r == 0;
	return r;
}

int dp_kv_shared_members_watch(struct dp_kv_shared *t, dp_kv_shared_watch_cb cb, void *arg,
			       struct dp_kv_shared_watch **ret)
{
	if (!t || !cb || !ret)
		return -EINVAL;
	struct dp_kv_shared_watch *w = calloc(1, sizeof(*w));
	if (!w)
		return -ENOMEM;
	w->io = dp_kv_shared_rados_ioctx(t);
	w->cb = cb;
	w->arg = arg;
	int r = watch_begin(w);
	if (r < 0) {
		free(w);
		return r;
	}
	*ret = w;
	return 0;
}

int dp_kv_shared_members_rewatch(struct dp_kv_shared *t, struct dp_kv_shared_watch *w)
{
	if (!t || !w)
		return -EINVAL;
	if (w->watching)
		rados_unwatch2(w->io, w->cookie); /* a lost watch: its error is expected */
	w->watching = false;
	return watch_begin(w);
}

static void notify_reap(struct dp_kv_shared_watch *w, bool wait)
{
	for (size_t i = 0; i < w->n_out;) {
		struct notify_out *o = w->out[i];
		if (wait)
			rados_aio_wait_for_complete(o->c);
		else if (!rados_aio_is_complete(o->c)) {
			i++;
			continue;
		}
		rados_aio_release(o->c);
		if (o->reply) /* set even when the notify timed out */
			rados_buffer_free(o->reply);
		free(o);
		w->out[i] = w->out[--w->n_out];
	}
}

int dp_kv_shared_members_notify(struct dp_kv_shared *t, struct dp_kv_shared_watch *w)
{
	if (!t || !w)
		return -EINVAL;
	notify_reap(w, false);
	if (w->n_out == NOTIFY_OUT_MAX)
		return -EAGAIN;
	struct notify_out *o = calloc(1, sizeof(*o));
	if (!o)
		return -ENOMEM;
	int r = rados_aio_create_completion2(NULL, NULL, &o->c);
	if (r < 0) {
		free(o);
		return r;
	}
	const char *host = dp_kv_shared_host_id(t);
	r = rados_aio_notify(w->io, MEMBERS_OBJ, o->c, host ? host : "", host ? (int)strlen(host) : 0,
			     DP_KV_SHARED_NOTIFY_MS, &o->reply, &o->reply_len);
	if (r < 0) {
		rados_aio_release(o->c);
		free(o);
		return r;
	}
	w->out[w->n_out++] = o;
	return 0;
}

void dp_kv_shared_members_unwatch(struct dp_kv_shared_watch *w)
{
	if (!w)
		return;
	if (w->watching)
		rados_unwatch2(w->io, w->cookie);
	/* no callback runs on w after this (librados's queue is drained) */
	rados_watch_flush(rados_ioctx_get_cluster(w->io));
	notify_reap(w, true);
	free(w);
}
