/* SPDX-License-Identifier: MIT */
/*
 * kvcache/tier-units.c — write-once objects and their index on the RADOS
 * tier (kvcache/tier-units.h).
 *
 * Exclusive create is one write op: create(EXCLUSIVE) then write_full, so
 * the object either appears whole under its first writer or the op fails
 * with -EEXIST and nothing is written. The frame (magic, version, length,
 * xxh3 of the data) makes a damaged object read as -EBADMSG, never as data.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <xxhash.h>

#include "kvcache/tier-rados-internal.h"
#include "kvcache/tier-units.h"

#define OBJ_MAGIC   "DPKVOBJ1"
#define OBJ_VERSION 1

struct obj_hdr {
	char magic[8];
	uint32_t version, pad;
	uint64_t len, xxh; /* of the data */
};

static bool name_ok(const char *s)
{
	size_t n = s ? strnlen(s, DP_KV_SHARED_INDEX_KEY_MAX) : 0;
	if (n == 0 || n >= DP_KV_SHARED_INDEX_KEY_MAX - 20)
		return false;
	for (size_t i = 0; i < n; i++) {
		char c = s[i];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '.' || c == '_' || c == '-' || c == '~'))
			return false;
	}
	return true;
}

int dp_kv_shared_object_create(struct dp_kv_shared *t, const char *name, const void *data,
                               size_t len)
{
	if (!t || !name_ok(name) || (!data && len) || len > DP_KV_SHARED_OBJECT_MAX)
		return -EINVAL;
	size_t total = sizeof(struct obj_hdr) + len;
	char *buf = malloc(total);
	rados_write_op_t op = rados_create_write_op();
	if (!buf || !op) {
		free(buf);
		if (op)
			rados_release_write_op(op);
		return -ENOMEM;
	}
	struct obj_hdr h = {.version = OBJ_VERSION, .len = len, .xxh = XXH3_64bits(data, len)};
	memcpy(h.magic, OBJ_MAGIC, 8);
	memcpy(buf, &h, sizeof(h));
	if (len)
		memcpy(buf + sizeof(h), data, len);
	rados_write_op_create(op, LIBRADOS_CREATE_EXCLUSIVE, NULL);
	rados_write_op_write_full(op, buf, total);
	int r = rados_write_op_operate(op, dp_kv_shared_rados_ioctx(t), name, NULL, 0);
	rados_release_write_op(op);
	free(buf);
	return r;
}

int dp_kv_shared_object_exists(struct dp_kv_shared *t, const char *name)
{
	if (!t || !name_ok(name))
		return -EINVAL;
	uint64_t size;
	time_t mtime;
	int r = rados_stat(dp_kv_shared_rados_ioctx(t), name, &size, &mtime);
	if (r == -ENOENT)
		return 0;
	return r < 0 ? r : 1;
}

int dp_kv_shared_object_get(struct dp_kv_shared *t, const char *name, void **ret, size_t *ret_len)
{
	if (!t || !name_ok(name) || !ret || !ret_len)
		return -EINVAL;
	rados_ioctx_t io = dp_kv_shared_rados_ioctx(t);
	uint64_t size;
	time_t mtime;
	int r = rados_stat(io, name, &size, &mtime);
	if (r < 0)
		return r;
	if (size < sizeof(struct obj_hdr) ||
	    size > sizeof(struct obj_hdr) + DP_KV_SHARED_OBJECT_MAX)
		return -EBADMSG;
	char *buf = malloc(size);
	if (!buf)
		return -ENOMEM;
	r = rados_read(io, name, buf, size, 0);
	if (r < 0) {
		free(buf);
		return r;
	}
	struct obj_hdr h;
	memcpy(&h, buf, sizeof(h));
	if ((uint64_t)r != size || memcmp(h.magic, OBJ_MAGIC, 8) || h.version != OBJ_VERSION ||
	    h.len != size - sizeof(h) || XXH3_64bits(buf + sizeof(h), h.len) != h.xxh) {
		free(buf);
		return -EBADMSG;
	}
	memmove(buf, buf + sizeof(h), h.len);
	*ret = buf;
	*ret_len = h.len;
	return 0;
}

int dp_kv_shared_index_add(struct dp_kv_shared *t, const char *index, const char *name)
{
	if (!t || !name_ok(index) || !name_ok(name))
		return -EINVAL;
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	uint64_t ms = (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
	char key[DP_KV_SHARED_INDEX_KEY_MAX];
	snprintf(key, sizeof(key), "%016" PRIx64 ".%s", ms, name);
	const char *keys[1] = {key};
	const char *vals[1] = {""};
	size_t klen[1] = {strlen(key)}, vlen[1] = {0};
	rados_write_op_t op = rados_create_write_op();
	if (!op)
		return -ENOMEM;
	rados_write_op_omap_set2(op, keys, vals, klen, vlen, 1);
	int r = rados_write_op_operate(op, dp_kv_shared_rados_ioctx(t), index, NULL, 0);
	rados_release_write_op(op);
	return r;
}

int dp_kv_shared_index_list(struct dp_kv_shared *t, const char *index, const char *after,
                            char (*keys)[DP_KV_SHARED_INDEX_KEY_MAX], size_t max, size_t *ret_n,
                            bool *ret_more)
{
	if (!t || !name_ok(index) || !after || (!keys && max) || !ret_n || !ret_more)
		return -EINVAL;
	rados_read_op_t op = rados_create_read_op();
	if (!op)
		return -ENOMEM;
	rados_omap_iter_t it = NULL;
	int prval = 0;
	unsigned char more = 0;
	rados_read_op_omap_get_keys2(op, after, max, &it, &more, &prval);
	int r = rados_read_op_operate(op, dp_kv_shared_rados_ioctx(t), index, 0);
	size_t n = 0;
	if (r == -ENOENT) { /* nothing published yet */
		r = 0;
		more = 0;
	} else if (r == 0) {
		r = prval;
		char *k, *v;
		size_t kl, vl;
		while (r == 0 && it && n < max && rados_omap_get_next2(it, &k, &v, &kl, &vl) == 0 &&
		       k) {
			if (kl >= DP_KV_SHARED_INDEX_KEY_MAX)
				continue; /* not ours */
			memcpy(keys[n], k, kl);
			keys[n][kl] = 0;
			n++;
		}
	}
	if (it)
		rados_omap_get_end(it);
	rados_release_read_op(op);
	if (r < 0)
		return r;
	*ret_n = n;
	*ret_more = more;
	return 0;
}

int dp_kv_shared_index_key_parse(const char *key, uint64_t *ret_ms, const char **ret_name)
{
	if (!key || !ret_ms || !ret_name)
		return -EINVAL;
	uint64_t ms = 0;
	for (int i = 0; i < 16; i++) {
		char c = key[i];
		int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
		if (d < 0)
			return -EBADMSG;
		ms = ms << 4 | (uint64_t)d;
	}
	if (key[16] != '.' || !name_ok(key + 17))
		return -EBADMSG;
	*ret_ms = ms;
	*ret_name = key + 17;
	return 0;
}
