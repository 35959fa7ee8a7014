/* SPDX-License-Identifier: MIT */
/*
 * daemon/shared-units.h — prefix units on the shared tier (daemon/
 * shared-units.c says how): a unit left on one host is published for the
 * others, and a one-off request whose prompt another host's unit covers
 * further than any local one starts from it, restored layer by layer.
 *
 * Threads: start/stop on the main thread (after the tier opened; after the
 * compute thread stopped); publish, fork and stats on the compute thread,
 * none of which makes a round trip to the tier: publishing hands a copy of
 * the state to the units thread (a bounded queue; dropped and counted when
 * full), and the lookup reads an in-memory index the units thread keeps.
 * Each is a no-op (0) without a shared tier.
 */
#ifndef DP_DAEMON_SHARED_UNITS_H
#define DP_DAEMON_SHARED_UNITS_H

#include <stdbool.h>
#include <stdint.h>

#include "daemon/server.h"
#include "kvcache/kvcache.h"

/* Start the units thread (its own tier connection, as the health probe has):
 * 0, or a negative errno (the daemon serves on, without shared units). */
int dp_shared_units_start(struct dp_server *srv);
/* Stop it: what is queued and not yet written is dropped. NULL-safe. */
void dp_shared_units_stop(struct dp_server *srv);

/* A unit of tenant t for tokens[0..n) was left with seq's state (standing at
 * n): unless the index knows it already (published by any host) or the
 * queue is full, its state is copied and queued for the units thread, which
 * writes it once (exclusive create) under a content-addressed name. */
void dp_shared_units_publish(struct dp_server *srv, const struct dp_kv_tenant *t,
                             const int32_t *tokens, uint64_t n, struct dp_v4_seq *seq);

/* A one-off's prompt tokens[0..max): when the index holds a unit of tenant t
 * longer than the longest local one (verified id by id), it is adopted and
 * restored layer by layer from the tier (dp_kv_unit_adopt_shared; layered
 * false: read whole first): returns its length with *ret_seq and *ret_unit
 * set as dp_kv_unit_fork does for a unit lent from NVMe. 0: none (the
 * caller forks locally); never a round trip. A unit whose pages failed
 * their checks on an earlier use is not offered again. */
int dp_shared_units_fork(struct dp_server *srv, const struct dp_kv_tenant *t, const int32_t *tokens,
                         uint64_t max, bool layered, struct dp_v4_seq **ret_seq,
                         struct dp_kv_session **ret_unit);

/* The counters (struct dp_shared_units_stats, server.h). */
void dp_shared_units_stats(struct dp_server *srv, struct dp_shared_units_stats *ret);

#endif /* DP_DAEMON_SHARED_UNITS_H */
