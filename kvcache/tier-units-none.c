/* SPDX-License-Identifier: MIT */
/*
 * kvcache/tier-units-none.c — a build without librados: no struct
 * dp_kv_shared can exist (kvcache/tier-none.c), so these refuse with
 * -EOPNOTSUPP; they are here so that callers link the same way.
 */
#include <errno.h>

#include "kvcache/tier-units.h"

int dp_kv_shared_object_create(struct dp_kv_shared *t, const char *name, const void *data,
                               size_t len)
{
	(void)t, (void)name, (void)data, (void)len;
	return -EOPNOTSUPP;
}

int dp_kv_shared_object_exists(struct dp_kv_shared *t, const char *name)
{
	(void)t, (void)name;
	return -EOPNOTSUPP;
}

int dp_kv_shared_object_get(struct dp_kv_shared *t, const char *name, void **ret, size_t *ret_len)
{
	(void)t, (void)name, (void)ret, (void)ret_len;
	return -EOPNOTSUPP;
}

int dp_kv_shared_index_add(struct dp_kv_shared *t, const char *index, const char *name)
{
	(void)t, (void)index, (void)name;
	return -EOPNOTSUPP;
}

int dp_kv_shared_index_list(struct dp_kv_shared *t, const char *index, const char *after,
                            char (*keys)[DP_KV_SHARED_INDEX_KEY_MAX], size_t max, size_t *ret_n,
                            bool *ret_more)
{
	(void)t, (void)index, (void)after, (void)keys, (void)max, (void)ret_n, (void)ret_more;
	return -EOPNOTSUPP;
}

int dp_kv_shared_index_key_parse(const char *key, uint64_t *ret_ms, const char **ret_name)
{
	(void)key, (void)ret_ms, (void)ret_name;
	return -EOPNOTSUPP;
}
