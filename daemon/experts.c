/* SPDX-License-Identifier: MIT */
/*
 * The io thread reads paged experts (model/v4.h, "routed experts paged in"):
 * the model's struct dp_v4_expert_io over the io engine.
 *
 * In dualpathd (a KV cache given) every read joins the cache's restore
 * queue (kvcache.h, dp_kv_read_queue): it is due at the tick of the layer
 * that needs it, so expert reads and restore pages go to the device in the
 * order the forward needs them: a restore page for layer l + 3 never goes
 * ahead of the experts layer l waits for, nor the next layer's read-ahead
 * ahead of a page layer l waits for; writeback stays last (LOW). Their time
 * on the device is then the restore channel's.
 *
 * Without a cache (the benchmarks' reader), two channels, so the io thread
 * serves a layer's misses (urgent: the compute thread waits for them)
 * before the read-ahead:
 *   urgent      HIGH
 *   read-ahead  NORMAL
 * The checkpoint files are opened by the engine, O_DIRECT where the file
 * system has it. A ticket is the queue's read id, or the channel's ticket
 * with the channel in its top bit.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/experts.h"

#define XIO_AHEAD (1ull << 63)

struct dp_expert_io {
	struct dp_io *io;
	struct dp_kv *kv; /* NULL: the channels */
	struct dp_io_chan *urgent, *ahead;
	uint32_t *file; /* the model's file i -> the engine's handle */
	uint32_t n_files;
};

static int xio_read(void *ctx, uint32_t file, uint64_t offset, uint32_t len, void *dst,
		    uint32_t layer, bool urgent, uint64_t *ret_ticket)
{
	struct dp_expert_io *x = ctx;
	if (file >= x->n_files)
		return -EBADF;
	if (x->kv) {
		struct dp_io_req req = { .op = DP_IO_OP_READ, .file = x->file[file],
					 .offset = offset, .addr = dst, .len = len };
		return dp_kv_read_queue(x->kv, DP_RSCHED_EXPERT, layer, &req, ret_ticket);
	}
	uint64_t t;
	int r = dp_io_read(urgent ? x->urgent : x->ahead, x->file[file], offset, dst, len, 0, &t);
	if (r < 0)
		return r;
	*ret_ticket = urgent ? t : t | XIO_AHEAD;
	return 0;
}

static int xio_wait(void *ctx, uint64_t ticket, uint32_t need)
{
	struct dp_expert_io *x = ctx;
	int32_t res = 0;
	int r;
	if (x->kv) {
		r = dp_kv_read_wait(x->kv, ticket, &res);
	} else {
		struct dp_io_chan *c = ticket & XIO_AHEAD ? x->ahead : x->urgent;
		uint64_t t = ticket & ~XIO_AHEAD;
		r = dp_io_wait(c, t, -1);
		if (r == 0)
			r = dp_io_result(c, t, &res);
	}
	if (r < 0)
		return r;
	if (res < 0)
		return res;
	return (uint32_t)res >= need ? 0 : -EIO;
}

int dp_expert_io_new(struct dp_io *io, struct dp_kv *kv, struct dp_v4_model *m,
		     struct dp_expert_io **ret, char *err, size_t err_len)
{
	uint32_t n = dp_v4_model_expert_file_count(m);
	if (!io || !m || !ret || !n)
		return -EINVAL;
	struct dp_expert_io *x = calloc(1, sizeof(*x));
	if (!x)
		return -ENOMEM;
	x->io = io;
	x->kv = kv;
	int r = -ENOMEM;
	if (!(x->file = calloc(n, sizeof(*x->file))))
		goto fail;
	for (; x->n_files < n; x->n_files++) {
		const char *path = dp_v4_model_expert_file(m, x->n_files);
		if ((r = dp_io_file_open(io, path, O_RDONLY, 0, 0, &x->file[x->n_files])) < 0) {
			snprintf(err, err_len, "%s: the io engine cannot open it to page experts "
				 "from: %s", path, strerror(-r));
			goto fail;
		}
	}
	if (kv)
		goto reader;
	/* room for every read one pass (urgent) or one step's read-ahead can have */
	const struct dp_v4_config *c = dp_v4_model_config(m);
	struct dp_v4_expert_stats st;
	dp_v4_model_expert_stats(m, &st);
	uint64_t hash = 0;
	for (int l = 0; l < c->num_hidden_layers; l++)
		hash += dp_v4_is_hash_moe(c, l);
	uint64_t urgent = 2ull * 3 * st.slots, ahead = 2ull * 3 * st.slots * (hash ? hash : 1);
	if (urgent > DP_IO_CHAN_DEPTH_MAX || ahead > DP_IO_CHAN_DEPTH_MAX) {
		r = -E2BIG;
		snprintf(err, err_len, "expert_slots %u: too many reads in flight for an io channel",
			 st.slots);
		goto fail;
	}
	if ((r = dp_io_chan_new(io, (uint32_t)urgent, &x->urgent)) < 0 ||
	    (r = dp_io_chan_set_priority(x->urgent, DP_IO_PRIO_HIGH)) < 0 ||
	    (r = dp_io_chan_new(io, (uint32_t)ahead, &x->ahead)) < 0 ||
	    (r = dp_io_chan_set_priority(x->ahead, DP_IO_PRIO_NORMAL)) < 0) {
		snprintf(err, err_len, "cannot open the expert io channels: %s", strerror(-r));
		goto fail;
	}
reader:;
	struct dp_v4_expert_io p = { .read = xio_read, .wait = xio_wait, .ctx = x };
	if ((r = dp_v4_model_set_expert_io(m, &p)) < 0) {
		snprintf(err, err_len, "the model does not page its experts from NVMe");
		goto fail;
	}
	*ret = x;
	return 0;
fail:
	dp_expert_io_free(x, NULL);
	return r;
}

void dp_expert_io_free(struct dp_expert_io *x, struct dp_v4_model *m)
{
	if (!x)
		return;
	if (m)
		dp_v4_model_set_expert_io(m, NULL); /* the model has waited for its reads */
	dp_io_chan_free(x->urgent);
	dp_io_chan_free(x->ahead);
	for (uint32_t i = 0; i < x->n_files; i++)
		dp_io_file_remove(x->io, x->file[i]);
	free(x->file);
	free(x);
}

void dp_expert_io_busy(const struct dp_expert_io *x, uint64_t *ret_urgent_ns,
		       uint64_t *ret_ahead_ns, uint64_t *ret_bytes)
{
	uint64_t a = 0, b = 0, c = 0, d = 0;
	if (x) {
		dp_io_chan_busy(x->urgent, &a, &b);
		dp_io_chan_busy(x->ahead, &c, &d);
	}
	*ret_urgent_ns = a;
	*ret_ahead_ns = c;
	*ret_bytes = b + d;
}
