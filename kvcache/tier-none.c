/* SPDX-License-Identifier: MIT */
/*
 * kvcache/tier-none.c — a build without librados: the shared tier is
 * absent, and opening it says so (-EOPNOTSUPP) rather than pretending.
 */
#include "kvcache/tier.h"

#include <errno.h>
#include <stdio.h>

bool dp_kv_shared_rados_available(void)
{
	return false;
}

int dp_kv_shared_open(const struct dp_kv_shared_opts *opts, struct dp_kv_shared **ret, char *err,
		    size_t err_len)
{
	(void)opts;
	(void)ret;
	snprintf(err, err_len, "shared tier: this dualpathd was built without librados "
			       "(install librados-dev and rebuild)");
	return -EOPNOTSUPP;
}

void dp_kv_shared_close(struct dp_kv_shared *t)
{
	(void)t;
}
