/* SPDX-License-Identifier: MIT */
#include "daemon/batch.h"

#include <stddef.h>

uint32_t dp_batch_form(const struct dp_batch_cand *cand, uint32_t n, const struct dp_batch_limits *lim,
		       struct dp_batch_pick *out)
{
	if (!cand || !lim || !out || !lim->max_batch_tokens || !lim->prefill_chunk || !lim->max_seqs)
		return 0;
	uint32_t budget = lim->max_batch_tokens, k = 0, settled = 0;
	for (int pass = 0; pass < 2; pass++) {
		for (uint32_t i = 0; i < n && budget && k < lim->max_seqs; i++) {
			const struct dp_batch_cand *c = &cand[i];
			if (c->loading != (pass == 1) || c->at >= c->len)
				continue;
			if (c->loading && !c->io_ready && settled)
				continue; /* still arriving: the step does not wait for it */
			uint64_t feed = c->len - c->at;
			if (feed > lim->prefill_chunk)
				feed = lim->prefill_chunk;
			if (feed > budget)
				feed = budget;
			budget -= (uint32_t)feed;
			out[k++] = (struct dp_batch_pick){ .cand = i, .feed = (uint32_t)feed };
		}
		settled = k; /* requests with their state in place take part */
	}
	return k;
}
