/* SPDX-License-Identifier: MIT */
/*
 * tools/engram-opts.h — the Engram options of dp-generate and dp-logits:
 *
 *   --engram-tables FILE          the model's Engram tables (a .dpe file: dp-engram convert)
 *   --engram-residency R          device | dram (default) | nvme
 *   --engram-cache ROWS           hot-row cache entries (default 65536; 0: none)
 *
 * For nvme the tool runs an io engine (io/io.h) of its own. Tool-only helpers (static,
 * header-only); they print their own messages.
 */
#ifndef DP_TOOLS_ENGRAM_OPTS_H
#define DP_TOOLS_ENGRAM_OPTS_H

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engram/engram.h"
#include "io/io.h"
#include "model/v4.h"

struct engram_opts {
	const char *tables;    /* --engram-tables */
	const char *residency; /* --engram-residency */
	const char *cache;     /* --engram-cache */
	struct dp_engram_hash *h;
	struct dp_engram_store *s;
	struct dp_io *io;
};

#define ENGRAM_USAGE "[--engram-tables FILE [--engram-residency device|dram|nvme] " \
		     "[--engram-cache ROWS]]"

/* Set up the store (or check that none is needed). Returns 0 or -1 (message printed). */
static int engram_opts_open(struct engram_opts *o, const char *tool, struct dp_v4_model *m,
			    struct dp_gpu *g)
{
	struct dp_engram_store_config cfg;
	struct dp_v4_engram_provider p;
	enum dp_engram_residency res = DP_ENGRAM_RES_DRAM;
	char err[512] = "";
	int r;

	if (!dp_v4_model_has_engram(m)) {
		if (o->tables) {
			fprintf(stderr, "%s: --engram-tables: the model has no Engram layers\n", tool);
			return -1;
		}
		return 0;
	}
	if (!o->tables) {
		fprintf(stderr, "%s: the model has Engram layers: give its tables with --engram-tables "
			"FILE (dp-engram convert writes them)\n", tool);
		return -1;
	}
	if (o->residency && dp_engram_residency_parse(o->residency, &res) < 0) {
		fprintf(stderr, "%s: --engram-residency must be device, dram or nvme, not %s\n", tool,
			o->residency);
		return -1;
	}
	dp_engram_store_config_init(&cfg);
	cfg.residency = res;
	cfg.gpu = g;
	if (o->cache) {
		char *end;
		errno = 0;
		unsigned long long v = strtoull(o->cache, &end, 10);
		if (errno || *end || end == o->cache || v > (1u << 30)) {
			fprintf(stderr, "%s: --engram-cache: not a row count: %s\n", tool, o->cache);
			return -1;
		}
		cfg.cache_rows = v;
	}
	if ((r = dp_engram_hash_from_model(m, &o->h, err, sizeof(err))) < 0) {
		fprintf(stderr, "%s: the model's Engram hashing: %s\n", tool, *err ? err : strerror(-r));
		return -1;
	}
	if (res == DP_ENGRAM_RES_NVME) {
		if ((r = dp_io_new(NULL, &o->io)) < 0 || (r = dp_io_start(o->io, -1)) < 0) {
			fprintf(stderr, "%s: cannot start the io engine for --engram-residency nvme: %s\n",
				tool, strerror(-r));
			return -1;
		}
		cfg.io = o->io;
	}
	r = dp_engram_store_new(o->h, (uint32_t)dp_v4_model_config(m)->engram.head_dim, o->tables,
				&cfg, &o->s, err, sizeof(err));
	if (r < 0) {
		fprintf(stderr, "%s: --engram-tables: %s\n", tool, *err ? err : strerror(-r));
		return -1;
	}
	dp_engram_store_provider(o->s, &p);
	dp_v4_model_set_engram(m, &p);
	return 0;
}

static void engram_opts_close(struct engram_opts *o, struct dp_v4_model *m)
{
	if (m)
		dp_v4_model_set_engram(m, NULL);
	dp_engram_store_free(o->s);
	if (o->io) {
		dp_io_stop(o->io, DP_IO_STOP_DRAIN);
		dp_io_free(o->io);
	}
	dp_engram_hash_free(o->h);
	memset(o, 0, sizeof(*o));
}

#endif /* DP_TOOLS_ENGRAM_OPTS_H */
