/* SPDX-License-Identifier: MIT */
/*
 * kvcache/tier-none.c — a build without librados: the shared tier is
 * absent. Opening it says so (-EOPNOTSUPP); since no struct dp_kv_shared
 * can exist, the other calls are unreachable and refuse with -EOPNOTSUPP
 * (they are here so that callers link the same way in every build).
 */
#include "kvcache/tier.h"

#include <errno.h>
#include <stdio.h>

bool dp_kv_shared_rados_available(void)
{
	return false;
}

int dp_kv_shared_open(const struct dp_kv_shared_opts *opts, struct dp_kv_shared **ret, char *err,
		      size_t err_len)
{
	(void)opts;
	(void)ret;
	snprintf(err, err_len, "shared tier: this dualpathd was built without librados "
			       "(install librados-dev and rebuild)");
	return -EOPNOTSUPP;
}

void dp_kv_shared_close(struct dp_kv_shared *t)
{
	(void)t;
}

const char *dp_kv_shared_host_id(const struct dp_kv_shared *t)
{
	(void)t;
	return NULL;
}

int dp_kv_shared_fd(const struct dp_kv_shared *t)
{
	(void)t;
	return -EOPNOTSUPP;
}

int dp_kv_shared_reap(struct dp_kv_shared *t, unsigned max)
{
	(void)t;
	(void)max;
	return -EOPNOTSUPP;
}

unsigned dp_kv_shared_inflight(const struct dp_kv_shared *t)
{
	(void)t;
	return 0;
}

int dp_kv_shared_segment_name(const char *session, uint64_t epoch, uint64_t n, char *name,
			      size_t name_len)
{
	(void)session, (void)epoch, (void)n, (void)name, (void)name_len;
	return -EOPNOTSUPP;
}

int dp_kv_shared_put(struct dp_kv_shared *t, const char *segment,
		     const struct dp_kv_shared_page *pages, uint32_t n, size_t page_bytes,
		     dp_kv_shared_cb cb, void *arg)
{
	(void)t, (void)segment, (void)pages, (void)n, (void)page_bytes, (void)cb, (void)arg;
	return -EOPNOTSUPP;
}

int dp_kv_shared_get(struct dp_kv_shared *t, const char *segment, const uint32_t *idx,
		     const struct dp_kv_shared_page *pages, uint32_t n, size_t page_bytes,
		     dp_kv_shared_cb cb, void *arg)
{
	(void)t, (void)segment, (void)idx, (void)pages, (void)n, (void)page_bytes, (void)cb,
		(void)arg;
	return -EOPNOTSUPP;
}

int dp_kv_shared_delete(struct dp_kv_shared *t, const char *segment, dp_kv_shared_cb cb,
			void *arg)
{
	(void)t, (void)segment, (void)cb, (void)arg;
	return -EOPNOTSUPP;
}

int dp_kv_shared_lease_take(struct dp_kv_shared *t, const char *session, uint64_t *ret_epoch,
			    char *owner, size_t owner_len)
{
	(void)t, (void)session, (void)ret_epoch, (void)owner, (void)owner_len;
	return -EOPNOTSUPP;
}

int dp_kv_shared_lease_renew(struct dp_kv_shared *t, const char *session)
{
	(void)t, (void)session;
	return -EOPNOTSUPP;
}

bool dp_kv_shared_lease_held(struct dp_kv_shared *t, const char *session)
{
	(void)t, (void)session;
	return false;
}

int dp_kv_shared_lease_release(struct dp_kv_shared *t, const char *session)
{
	(void)t, (void)session;
	return -EOPNOTSUPP;
}

int dp_kv_shared_lease_owner(struct dp_kv_shared *t, const char *session, char *owner,
			     size_t owner_len, uint64_t *ret_epoch)
{
	(void)t, (void)session, (void)owner, (void)owner_len, (void)ret_epoch;
	return -EOPNOTSUPP;
}

int dp_kv_shared_manifest_put(struct dp_kv_shared *t, const char *session, const void *data,
			      size_t len, dp_kv_shared_cb cb, void *arg)
{
	(void)t, (void)session, (void)data, (void)len, (void)cb, (void)arg;
	return -EOPNOTSUPP;
}

int dp_kv_shared_manifest_get(struct dp_kv_shared *t, const char *session, void **ret,
			      size_t *ret_len)
{
	(void)t, (void)session, (void)ret, (void)ret_len;
	return -EOPNOTSUPP;
}

void dp_kv_shared_stats(const struct dp_kv_shared *t, struct dp_kv_shared_stats *ret)
{
	(void)t;
	(void)ret;
}

int dp_kv_shared_member_join(struct dp_kv_shared *t, const struct dp_kv_shared_member *self,
			     struct dp_kv_shared_member *ret_other)
{
	(void)t;
	(void)self;
	(void)ret_other;
	return -EOPNOTSUPP;
}

int dp_kv_shared_member_beat(struct dp_kv_shared *t, const struct dp_kv_shared_member *self)
{
	(void)t;
	(void)self;
	return -EOPNOTSUPP;
}

int dp_kv_shared_member_leave(struct dp_kv_shared *t)
{
	(void)t;
	return -EOPNOTSUPP;
}

int dp_kv_shared_members(struct dp_kv_shared *t, struct dp_kv_shared_member **ret, size_t *ret_n)
{
	(void)t;
	(void)ret;
	(void)ret_n;
	return -EOPNOTSUPP;
}

int dp_kv_shared_member_forget(struct dp_kv_shared *t, const char *host)
{
	(void)t;
	(void)host;
	return -EOPNOTSUPP;
}

int dp_kv_shared_members_watch(struct dp_kv_shared *t, dp_kv_shared_watch_cb cb, void *arg,
			       struct dp_kv_shared_watch **ret)
{
	(void)t, (void)cb, (void)arg, (void)ret;
	return -EOPNOTSUPP;
}

int dp_kv_shared_members_rewatch(struct dp_kv_shared *t, struct dp_kv_shared_watch *w)
{
	(void)t, (void)w;
	return -EOPNOTSUPP;
}

int dp_kv_shared_members_notify(struct dp_kv_shared *t, struct dp_kv_shared_watch *w)
{
	(void)t, (void)w;
	return -EOPNOTSUPP;
}

void dp_kv_shared_members_unwatch(struct dp_kv_shared_watch *w)
{
	(void)w;
}
