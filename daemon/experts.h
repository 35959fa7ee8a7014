/* SPDX-License-Identifier: MIT */
/*
 * daemon/experts.h — paged experts read by the io thread (experts.c).
 *
 * dp_expert_io_new opens model m's checkpoint files in the io engine and
 * gives the model a reader (dp_v4_model_set_expert_io). With a KV cache kv
 * (dualpathd) its reads join the cache's restore queue (kvcache.h,
 * dp_kv_read_queue), each due at the tick of the layer that needs it, so
 * expert reads and restore pages reach the device in the order the forward
 * needs them; without one (kv NULL), it makes an urgent (HIGH) and a
 * read-ahead (NORMAL) channel. Call it from the thread that will run the
 * forward passes, or before it starts: the queue and channels belong to
 * that thread. dp_expert_io_free gives the model back its built-in reader
 * (m may be NULL once the model is gone) and closes everything; no forward
 * may be running. busy (without kv): how long each channel (urgent,
 * read-ahead) had reads in flight, and the bytes both read; with kv the
 * reads are on the restore channel, counted with the restores' (0 here).
 */
#ifndef DP_DAEMON_EXPERTS_H
#define DP_DAEMON_EXPERTS_H

#include "io/io.h"
#include "kvcache/kvcache.h"
#include "model/v4.h"

struct dp_expert_io;

int dp_expert_io_new(struct dp_io *io, struct dp_kv *kv, struct dp_v4_model *m,
		     struct dp_expert_io **ret, char *err, size_t err_len);
void dp_expert_io_free(struct dp_expert_io *x, struct dp_v4_model *m);
void dp_expert_io_busy(const struct dp_expert_io *x, uint64_t *ret_urgent_ns,
		       uint64_t *ret_ahead_ns, uint64_t *ret_bytes);

#endif /* DP_DAEMON_EXPERTS_H */
