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
