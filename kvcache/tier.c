/* SPDX-License-Identifier: MIT */
/* kvcache/tier.c — the shared tier's names (kvcache/tier.h), with or without a backend. */
#include "kvcache/tier.h"

#include <errno.h>
#include <string.h>

static const char *const shared_names[DP_KV_SHARED_MAX] = { "none", "rados" };

const char *dp_kv_shared_tier_name(enum dp_kv_shared_tier t)
{
	return (unsigned)t < DP_KV_SHARED_MAX ? shared_names[t] : NULL;
}

int dp_kv_shared_tier_parse(const char *name, enum dp_kv_shared_tier *ret)
{
	for (int i = 0; name && ret && i < DP_KV_SHARED_MAX; i++)
		if (!strcmp(name, shared_names[i])) {
			*ret = (enum dp_kv_shared_tier)i;
			return 0;
		}
	return -EINVAL;
}

uint32_t dp_kv_shared_group_pages(size_t page_bytes)
{
	if (page_bytes == 0 || page_bytes > DP_KV_SHARED_SEGMENT_MAX - DP_KV_SHARED_HEADER_BYTES)
		return 0;
	size_t n = (DP_KV_SHARED_SEGMENT_MAX - DP_KV_SHARED_HEADER_BYTES) / page_bytes;
	return n < DP_KV_SHARED_GROUP_PAGES ? (uint32_t)n : DP_KV_SHARED_GROUP_PAGES;
}
