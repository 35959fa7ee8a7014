/* SPDX-License-Identifier: MIT */
/*
 * daemon/experts.h — paged experts read by the io thread (experts.c).
 *
 * dp_expert_io_new opens model m's checkpoint files in the io engine, makes
 * an urgent (HIGH) and a read-ahead (NORMAL) channel for the compute thread
 * and gives them to the model (dp_v4_model_set_expert_io). Call it from the
 * thread that will run the forward passes, or before it starts: the channels
 * belong to that thread. dp_expert_io_free gives the model back its built-in
 * reader (m may be NULL once the model is gone) and closes everything; no
 * forward may be running. busy: how long each channel (urgent, read-ahead)
 * had reads in flight, and the bytes both read.
 */
#ifndef DP_DAEMON_EXPERTS_H
#define DP_DAEMON_EXPERTS_H

#include "io/io.h"
#include "model/v4.h"

struct dp_expert_io;

int dp_expert_io_new(struct dp_io *io, struct dp_v4_model *m, struct dp_expert_io **ret,
		     char *err, size_t err_len);
void dp_expert_io_free(struct dp_expert_io *x, struct dp_v4_model *m);
void dp_expert_io_busy(const struct dp_expert_io *x, uint64_t *ret_urgent_ns,
		       uint64_t *ret_ahead_ns, uint64_t *ret_bytes);

#endif /* DP_DAEMON_EXPERTS_H */
