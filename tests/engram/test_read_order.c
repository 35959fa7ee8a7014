/* SPDX-License-Identifier: MIT */
/*
 * Engram rows in the KV cache's read queue (kvcache.h, dp_kv_read_queue,
 * class DP_RSCHED_ENGRAM: what dualpathd's Engram reader does, daemon/
 * engram-io.c), with a real io engine: a session restoring from NVMe has
 * its pages of every layer queued when the step's Engram read for layer l
 * comes; it must reach the device after the pages of layers <= l (due
 * sooner, or at the same tick: restore first) and before those of later
 * layers.
 *
 * How the order is seen: the Engram read is of a pipe nobody has written
 * yet, so it stays in flight; the restore channel counts completions in
 * ticket order (io.h), so the layers that come in meanwhile are exactly
 * those whose pages went before it. The model is tests/model/parity/mixed
 * (4 layers).
 */
#include <criterion/criterion.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "gpu/gpu.h"
#include "io/io.h"
#include "kvcache/kvcache.h"
#include "kvcache/rsched.h"
#include "model/v4.h"

static char dir[256];
static struct dp_gpu *gpu;
static struct dp_v4_model *model;
static struct dp_io *engine;
static int pipe_fd[2] = {-1, -1};

static void setup(void)
{
	char err[512] = "", path[512];
	const char *root = getenv("DP_TEST_PARITY");
	snprintf(dir, sizeof(dir), "/var/tmp/dp-test-eo-XXXXXX");
	cr_assert_not_null(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/mixed", root ? root : "tests/model/parity");
	cr_assert_eq(dp_gpu_new(DP_GPU_CPU, NULL, &gpu, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(dp_v4_model_load(gpu, path, &model, err, sizeof(err)), 0, "%s", err);
	struct dp_io_config cfg;
	dp_io_config_init(&cfg);
	cfg.queue_depth = 64;
	if (dp_io_new(&cfg, &engine) < 0 || dp_io_start(engine, -1) < 0)
		engine = NULL; /* the test skips */
}

static void teardown(void)
{
	if (pipe_fd[1] >= 0)
		close(pipe_fd[1]); /* a read still waiting on the pipe ends (EOF) */
	if (engine) {
		dp_io_stop(engine, DP_IO_STOP_DRAIN);
		dp_io_free(engine);
	}
	if (pipe_fd[0] >= 0)
		close(pipe_fd[0]);
	dp_v4_model_free(model);
	dp_gpu_free(gpu);
	char cmd[300];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	(void)!system(cmd);
}

TestSuite(read_order, .init = setup, .fini = teardown, .timeout = 120);

/* One turn of n tokens on a fresh session, then parked on NVMe. */
static struct dp_kv_session *parked(struct dp_kv *kv, const char *id, uint32_t n)
{
	struct dp_kv_session *s;
	struct dp_v4_seq *seq;
	uint32_t V = (uint32_t)dp_v4_model_config(model)->vocab_size;
	float *lg = malloc((size_t)V * sizeof(float));
	int32_t *t = malloc(n * sizeof(*t));
	for (uint32_t i = 0; i < n; i++)
		t[i] = (int32_t)((i * 2654435761u + 7u) % 200) + 3;
	cr_assert_eq(dp_kv_session_create(kv, id, &s), 0);
	cr_assert_eq(dp_kv_session_acquire(kv, s, &seq), 0);
	struct dp_v4_batch_item it = {seq, t, n, false};
	cr_assert_eq(dp_v4_forward(model, &it, 1, lg), 0);
	cr_assert_eq(dp_kv_session_append(kv, s, t, n), 0);
	dp_kv_session_release(kv, s);
	cr_assert_eq(dp_kv_commit(kv), 0);
	cr_assert_eq(dp_kv_session_demote(kv, s, DP_KV_TIER_NVME), 0);
	free(t);
	free(lg);
	return s;
}

/* Layers of s's restore whose reads have all finished. */
static uint32_t ready(struct dp_kv *kv, struct dp_kv_session *s)
{
	struct dp_kv_restore_info ri;
	cr_assert_eq(dp_kv_session_restore_info(kv, s, &ri), 0);
	cr_assert(ri.active);
	return ri.layers_ready;
}

/* Poll until at least `want` layers are in (or 5 s), then a while longer:
 * returns how many are in. */
static uint32_t settle(struct dp_kv *kv, struct dp_kv_session *s, uint32_t want)
{
	for (int i = 0; i < 500 && ready(kv, s) < want; i++)
		usleep(10000);
	usleep(100000); /* what was issued before the blocked read is long done */
	return ready(kv, s);
}

/* A KV cache on the engine with no restore window: every queued read goes
 * out at once, in deadline order. */
static struct dp_kv *open_queue(void)
{
	char err[512] = "";
	struct dp_kv_opts o = {.state_dir = dir, .numa_node = -1, .direct_io = true, .io = engine};
	struct dp_kv *kv;
	cr_assert_eq(dp_kv_open(&o, model, &kv, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(dp_kv_set_restore_window(kv, 0), 0);
	return kv;
}

Test(read_order, an_engram_read_goes_after_the_restore_pages_due_no_later_and_before_the_rest)
{
	if (!engine)
		cr_skip_test("io_uring is not available here");
	struct dp_kv *kv = open_queue();
	uint32_t L = (uint32_t)dp_v4_model_config(model)->num_hidden_layers;
	cr_assert_geq(L, 4);
	static const uint32_t layers[] = {0, 2};
	for (size_t k = 0; k < sizeof(layers) / sizeof(layers[0]); k++) {
		uint32_t el = layers[k];
		char id[16];
		snprintf(id, sizeof(id), "r%u", el);
		struct dp_kv_session *s = parked(kv, id, 300);
		cr_assert_eq(pipe2(pipe_fd, O_CLOEXEC), 0);
		uint32_t pf;
		cr_assert_eq(dp_io_file_add(engine, pipe_fd[0], &pf), 0);

		/* the session comes back: its pages of every layer are queued */
		struct dp_v4_seq *seq;
		cr_assert_eq(dp_kv_session_acquire_async(kv, s, &seq), 0);
		dp_kv_pump(kv); /* the step begins */
		static char buf[4096] __attribute__((aligned(4096)));
		struct dp_io_req req = {
		    .op = DP_IO_OP_READ, .file = pf, .addr = buf, .len = sizeof(buf)};
		uint64_t rid;
		cr_assert_eq(dp_kv_read_queue(kv, DP_RSCHED_ENGRAM, el, &req, &rid), 0);
		cr_expect_eq(settle(kv, s, el + 1), el + 1,
		             "Engram read for layer %u: the layers in while it waits", el);

		/* its bytes come: then every layer */
		char data[sizeof(buf)];
		for (size_t i = 0; i < sizeof(data); i++)
			data[i] = (char)(i * 7 + el);
		cr_assert_eq(write(pipe_fd[1], data, sizeof(data)), (ssize_t)sizeof(data));
		int32_t res = 0;
		cr_assert_eq(dp_kv_read_wait(kv, rid, &res), 0);
		cr_expect_eq(res, (int32_t)sizeof(buf));
		cr_expect_eq(memcmp(buf, data, sizeof(buf)), 0);
		cr_expect_eq(settle(kv, s, L), L, "the rest of the restore came after it");
		dp_kv_session_release(kv, s); /* no forward: the release completes it */
		cr_expect_eq(dp_kv_session_tier(s), DP_KV_TIER_DEVICE);
		dp_io_file_remove(engine, pf);
		close(pipe_fd[0]);
		close(pipe_fd[1]);
		pipe_fd[0] = pipe_fd[1] = -1;
	}
	dp_kv_close(kv);
}

/* Engram and expert reads share the queue's side streams but not their class:
 * an expert read, then an Engram read for the same layer, each count (and
 * tie) as their own (the streams were shared by deadline alone, so an Engram read
 * could count as an expert read in the trace's bytes in flight). */
Test(read_order, engram_and_expert_reads_keep_their_own_class)
{
	if (!engine)
		cr_skip_test("io_uring is not available here");
	struct dp_kv *kv = open_queue();
	int px[2], pe[2];
	uint32_t fx, fe;
	cr_assert_eq(pipe2(px, O_CLOEXEC), 0);
	cr_assert_eq(pipe2(pe, O_CLOEXEC), 0);
	cr_assert_eq(dp_io_file_add(engine, px[0], &fx), 0);
	cr_assert_eq(dp_io_file_add(engine, pe[0], &fe), 0);
	dp_kv_pump(kv); /* a step begins */
	static char bx[4096] __attribute__((aligned(4096))), be[4096] __attribute__((aligned(4096)));
	struct dp_io_req rx = {.op = DP_IO_OP_READ, .file = fx, .addr = bx, .len = sizeof(bx)};
	struct dp_io_req re = {.op = DP_IO_OP_READ, .file = fe, .addr = be, .len = sizeof(be)};
	uint64_t ix, ie;
	cr_assert_eq(dp_kv_read_queue(kv, DP_RSCHED_EXPERT, 3, &rx, &ix), 0);
	cr_assert_eq(dp_kv_read_queue(kv, DP_RSCHED_ENGRAM, 3, &re, &ie), 0);
	uint64_t fl[DP_RSCHED_CLASS_MAX], qd[DP_RSCHED_CLASS_MAX];
	dp_kv_io_inflight(kv, fl);
	dp_kv_io_queued(kv, qd);
	cr_expect_eq(fl[DP_RSCHED_EXPERT] + qd[DP_RSCHED_EXPERT], sizeof(bx),
		     "expert bytes %llu in flight, %llu queued", (unsigned long long)fl[DP_RSCHED_EXPERT],
		     (unsigned long long)qd[DP_RSCHED_EXPERT]);
	cr_expect_eq(fl[DP_RSCHED_ENGRAM] + qd[DP_RSCHED_ENGRAM], sizeof(be),
		     "Engram bytes %llu in flight, %llu queued", (unsigned long long)fl[DP_RSCHED_ENGRAM],
		     (unsigned long long)qd[DP_RSCHED_ENGRAM]);
	char data[4096];
	memset(data, 5, sizeof(data));
	cr_assert_eq(write(px[1], data, sizeof(data)), (ssize_t)sizeof(data));
	cr_assert_eq(write(pe[1], data, sizeof(data)), (ssize_t)sizeof(data));
	int32_t res = 0;
	cr_assert_eq(dp_kv_read_wait(kv, ix, &res), 0);
	cr_expect_eq(res, (int32_t)sizeof(bx));
	cr_assert_eq(dp_kv_read_wait(kv, ie, &res), 0);
	cr_expect_eq(res, (int32_t)sizeof(be));
	dp_io_file_remove(engine, fx);
	dp_io_file_remove(engine, fe);
	for (int i = 0; i < 2; i++) {
		close(px[i]);
		close(pe[i]);
	}
	dp_kv_close(kv);
}
