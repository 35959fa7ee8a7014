/* SPDX-License-Identifier: MIT */
/*
 * kvcache/tier-rados-internal.h — what the RADOS tier's files share: the
 * handle's pool context, for the parts kept in their own file (membership,
 * tier-members.c). Same thread rules as kvcache/tier.h.
 */
#ifndef DP_KVCACHE_TIER_RADOS_INTERNAL_H
#define DP_KVCACHE_TIER_RADOS_INTERNAL_H

#include <rados/librados.h>

#include "kvcache/tier.h"

rados_ioctx_t dp_kv_shared_rados_ioctx(struct dp_kv_shared *t);

#endif
