/* SPDX-License-Identifier: MIT */
/*
 * daemon/shared-internal.h — what the shared tier's two writers share:
 * sessions' manifests (daemon/shared.c) and prefix units' manifests
 * (daemon/shared-units.c) describe state pages the same way, one record
 * per page with its place in a segment (kvcache/tier.h: dp_kv_shared_put
 * writes the segments, whose header checks each page again on read).
 */
#ifndef DP_DAEMON_SHARED_INTERNAL_H
#define DP_DAEMON_SHARED_INTERNAL_H

#include <stdint.h>
#include <xxhash.h>

#include "model/v4.h"

/* One state page in a manifest: which page (layer, stream kind, index),
 * where it is (segment in the manifest's list, slot in the segment) and an
 * xxh3-128 of its bytes (sessions compare it to find the pages a turn
 * changed). */
struct mpage {
	uint16_t layer;
	uint8_t kind, pad;
	uint32_t index;
	uint32_t seg, slot;
	uint64_t sum[2]; /* xxh3-128 of the page */
};
_Static_assert(sizeof(struct mpage) == 32, "manifest page record");

/* The record of page ref with bytes data (DP_V4_PAGE_BYTES); seg and slot 0. */
static inline struct mpage dp_shared_mpage(const struct dp_v4_page_ref *ref, const void *data)
{
	XXH128_hash_t h = XXH3_128bits(data, DP_V4_PAGE_BYTES);
	return (struct mpage){.layer = ref->layer,
	                      .kind = ref->kind,
	                      .index = ref->index,
	                      .sum = {h.low64, h.high64}};
}

#endif /* DP_DAEMON_SHARED_INTERNAL_H */
