/* SPDX-License-Identifier: MIT */
/*
 * daemon/batch.h — forming one forward step's batch (continuous batching).
 *
 * Every active request's work is "feed the history from the state's position
 * to its end". A step gives each request either a chunk of what is unfed (a
 * prefill, or a replay), at most prefill_chunk tokens, or its one unfed token
 * (a decode), until the step's token budget (max_batch_tokens) or its
 * sequence slots (max_seqs) run out, in the order the requests are given.
 *
 * Requests whose state is still arriving (a layer-by-layer restore) go last:
 * the forward takes the items in order within a layer, so a wait at one's
 * gate comes after the others' work on that layer, not before. Such a
 * request joins when its remaining reads should finish within the step
 * (io_ready, the caller's estimate) or when nothing else runs (an idle step
 * gains nothing by waiting).
 *
 * A pure function of its arguments: no state, no allocation, any thread.
 */
#ifndef DP_DAEMON_BATCH_H
#define DP_DAEMON_BATCH_H

#include <stdbool.h>
#include <stdint.h>

struct dp_batch_cand {
	uint64_t at;   /* the state's position in the history */
	uint64_t len;  /* the history's length (at < len: something to feed) */
	bool loading;  /* its state is still arriving */
	bool io_ready; /* loading: its reads should be done within the step */
};

struct dp_batch_limits {
	uint32_t max_batch_tokens; /* tokens in one step */
	uint32_t prefill_chunk;	   /* tokens of one request in one step */
	uint32_t max_seqs;	   /* requests in one step */
};

struct dp_batch_pick {
	uint32_t cand;	/* index into the candidates */
	uint32_t feed;	/* tokens it feeds this step, >= 1 */
};

/* Choose this step's items from n candidates; out has room for
 * lim->max_seqs picks. Returns how many were picked (0 if any argument is
 * invalid: a limit of 0, NULL arrays). */
uint32_t dp_batch_form(const struct dp_batch_cand *cand, uint32_t n, const struct dp_batch_limits *lim,
		       struct dp_batch_pick *out);

#endif /* DP_DAEMON_BATCH_H */
