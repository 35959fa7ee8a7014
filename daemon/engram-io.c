/* SPDX-License-Identifier: MIT */
/*
 * An NVMe Engram store's reads in the KV cache's deadline order
 * (engram-io.h). The store hands each Engram slot's reads over with the
 * model layer that consumes the slot; they are queued at that layer's tick
 * of the step (dp_kv_pump began it before the step's prefetch), on the
 * restore channel with the restore pages and the expert reads. Before, they
 * went on their own HIGH channel at the step's start, all Engram layers at
 * once: the rows of a late Engram layer went ahead of the restore pages of
 * every earlier layer.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/clock.h"
#include "daemon/engram-io.h"
#include "daemon/log.h"

/* a failing table logs at most this often (every read of a step fails) */
#define EIO_LOG_EVERY_NS 1000000000ull

struct dp_engram_io {
	struct dp_kv *kv;
	char path[512];
	uint64_t failures, logged_at;
};

static int eio_read(void *ctx, uint32_t file, uint64_t offset, uint32_t len, void *dst,
		    uint32_t layer, uint64_t *ret_ticket)
{
	struct dp_engram_io *x = ctx;
	struct dp_io_req req = { .op = DP_IO_OP_READ, .file = file, .offset = offset,
				 .addr = dst, .len = len };
	return dp_kv_read_queue(x->kv, DP_RSCHED_ENGRAM, layer, &req, ret_ticket);
}

static int eio_wait(void *ctx, uint64_t ticket, uint32_t len)
{
	struct dp_engram_io *x = ctx;
	int32_t res = 0;
	int r = dp_kv_read_wait(x->kv, ticket, &res);
	if (r == 0 && res >= 0 && (uint32_t)res == len)
		return res;
	uint64_t now = dp_clock_ns();
	if (!x->failures++ || now - x->logged_at >= EIO_LOG_EVERY_NS) {
		char what[64];
		if (r == 0 && res >= 0)
			snprintf(what, sizeof(what), "%d of %u bytes (the file is shorter)", res, len);
		else
			snprintf(what, sizeof(what), "%s", strerror(r < 0 ? -r : -res));
		log_err("Engram tables %s: a row read failed: %s (%llu failed reads so far); "
			"the step's Engram layer fails", x->path, what,
			(unsigned long long)x->failures);
		x->logged_at = now;
	}
	return r < 0 ? r : res; /* short: the store fails the layer with -EIO */
}

int dp_engram_io_new(struct dp_kv *kv, struct dp_engram_store *store, const char *path,
		     struct dp_engram_io **ret)
{
	if (!kv || !store || !path || !ret)
		return -EINVAL;
	struct dp_engram_io *x = calloc(1, sizeof(*x));
	if (!x)
		return -ENOMEM;
	x->kv = kv;
	snprintf(x->path, sizeof(x->path), "%s", path);
	struct dp_engram_reader rd = { .read = eio_read, .wait = eio_wait, .ctx = x };
	int r = dp_engram_store_set_reader(store, &rd);
	if (r < 0) {
		free(x);
		return r;
	}
	*ret = x;
	return 0;
}

void dp_engram_io_free(struct dp_engram_io *x, struct dp_engram_store *store)
{
	if (!x)
		return;
	if (store && dp_engram_store_set_reader(store, NULL) < 0)
		log_warning("Engram tables %s: no io channel of its own after the KV cache's "
			    "queue: the store reads nothing more", x->path);
	free(x);
}
