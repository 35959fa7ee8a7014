/* SPDX-License-Identifier: MIT */
/*
 * kvcache/tier-units.h — the shared tier's write-once objects and their
 * index, for prefix units (daemon/shared-units.c). A unit is published as
 * segments (dp_kv_shared_put, kvcache/tier.h) and one small manifest object
 * created exclusively: the first host to create it wins, a second finds it
 * there (-EEXIST) and its copy goes. The index is the omap of one object:
 * a key per published object, "<16 hex digits of CLOCK_REALTIME ms>.<name>",
 * so a reader lists what is new since a time without scanning the pool.
 *
 * Synchronous (one round trip each, bounded by the op timeout): call them
 * from a thread of their own, never from the compute thread. Same thread
 * rules as kvcache/tier.h (one thread per handle).
 */
#ifndef DP_KVCACHE_TIER_UNITS_H
#define DP_KVCACHE_TIER_UNITS_H

#include <stddef.h>
#include <stdint.h>

#include "kvcache/tier.h"

#define DP_KV_SHARED_OBJECT_MAX    (16u << 20) /* a write-once object's data, at most */
#define DP_KV_SHARED_INDEX_KEY_MAX 256

/* Create object name holding data[0..len), framed (magic, length, xxh3) so
 * that a torn or damaged object reads as -EBADMSG: 0, or -EEXIST when it
 * exists already (nothing written). */
int dp_kv_shared_object_create(struct dp_kv_shared *t, const char *name, const void *data,
                               size_t len);
/* 1 when object name exists, 0 when not, or a negative errno. */
int dp_kv_shared_object_exists(struct dp_kv_shared *t, const char *name);
/* Read it: *ret (malloc'd; the caller frees), *ret_len. -ENOENT none,
 * -EBADMSG its frame or checksum is wrong. */
int dp_kv_shared_object_get(struct dp_kv_shared *t, const char *name, void **ret, size_t *ret_len);

/* Add name to index object `index` under the current time (ms): 0 or a
 * negative errno. */
int dp_kv_shared_index_add(struct dp_kv_shared *t, const char *index, const char *name);
/* Up to max keys of index sorted after `after` ("" from the start), into
 * keys[i] (DP_KV_SHARED_INDEX_KEY_MAX each): *ret_n, and *ret_more when
 * there are more. 0 (none when the index does not exist) or a negative
 * errno. dp_kv_shared_index_key_parse splits a key into its time and name. */
int dp_kv_shared_index_list(struct dp_kv_shared *t, const char *index, const char *after,
                            char (*keys)[DP_KV_SHARED_INDEX_KEY_MAX], size_t max, size_t *ret_n,
                            bool *ret_more);
int dp_kv_shared_index_key_parse(const char *key, uint64_t *ret_ms, const char **ret_name);

#endif /* DP_KVCACHE_TIER_UNITS_H */
