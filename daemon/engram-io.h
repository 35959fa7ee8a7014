/* SPDX-License-Identifier: MIT */
/*
 * daemon/engram-io.h — an NVMe Engram store's reads through the KV cache's
 * read scheduler (engram-io.c).
 *
 * dp_engram_io_new gives store (NVME residency, its io engine the one kv
 * was opened with) a reader (engram.h, dp_engram_store_set_reader) whose
 * reads join the cache's restore queue (kvcache.h, dp_kv_read_queue, class
 * DP_RSCHED_ENGRAM), each due at the tick of the Engram layer that reads
 * it in the step dp_kv_pump began: so a layer's rows go to the device after
 * the restore pages and expert reads earlier layers need and before those
 * later layers need. Call it from the compute thread or before it starts;
 * the reads are the compute thread's. A failed or short read is logged
 * here (naming path, the table file) and fails the step's Engram layer.
 * dp_engram_io_free hands the store its own channel back (waiting for the
 * reads in flight, through kv: call it before kv closes) and frees x;
 * NULL ok.
 */
#ifndef DP_DAEMON_ENGRAM_IO_H
#define DP_DAEMON_ENGRAM_IO_H

#include "engram/engram.h"
#include "kvcache/kvcache.h"

struct dp_engram_io;

int dp_engram_io_new(struct dp_kv *kv, struct dp_engram_store *store, const char *path,
		     struct dp_engram_io **ret);
void dp_engram_io_free(struct dp_engram_io *x, struct dp_engram_store *store);

#endif /* DP_DAEMON_ENGRAM_IO_H */
