/* SPDX-License-Identifier: MIT */
/*
 * tools/expert-opts.h — the paged-expert options of dp-generate and dp-logits:
 *
 *   --experts device|dram|nvme    where routed experts live (model/v4.h; default device)
 *   --expert-slots N              experts a layer keeps in backend memory (paged only)
 *
 * nvme reads with the model's built-in reader (pread on the compute thread; dualpathd uses
 * its io thread). Tool-only helpers; they print their own messages.
 */
#ifndef DP_TOOLS_EXPERT_OPTS_H
#define DP_TOOLS_EXPERT_OPTS_H

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

#include "model/v4.h"

#define EXPERT_USAGE "[--experts device|dram|nvme [--expert-slots N]]"

/* Fill opts from the two option values (either may be NULL). 0, or -1 (message printed). */
static int expert_opts_parse(const char *tool, const char *where, const char *slots,
			     struct dp_v4_load_opts *opts)
{
	*opts = (struct dp_v4_load_opts){ 0 };
	if (where && dp_v4_experts_where_parse(where, &opts->experts) < 0) {
		fprintf(stderr, "%s: --experts must be device, dram or nvme, not %s\n", tool, where);
		return -1;
	}
	if (slots) {
		char *end;
		errno = 0;
		unsigned long v = strtoul(slots, &end, 10);
		if (end == slots || *end || errno || v == 0 || v > UINT32_MAX) {
			fprintf(stderr, "%s: --expert-slots: not a positive count: %s\n", tool, slots);
			return -1;
		}
		if (opts->experts == DP_V4_EXPERTS_DEVICE) {
			fprintf(stderr, "%s: --expert-slots needs --experts dram or nvme\n", tool);
			return -1;
		}
		opts->expert_slots = (uint32_t)v;
	}
	return 0;
}

#endif /* DP_TOOLS_EXPERT_OPTS_H */
