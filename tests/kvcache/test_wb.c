/* SPDX-License-Identifier: MIT */
/*
 * Asynchronous writebacks through the restore queue (kvcache/writeback.c,
 * restore.c): a restore that begins while megabytes of writeback are queued
 * has its first layer read ahead of them (the writes used to go on their own
 * channel, all at once, and the device served the read behind them); a
 * writeback alone goes out whole without a step; its bytes in flight are
 * counted by class; and with restores arriving every step it still goes out
 * within its bounded delay.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "io/io.h"
#include "kvcache/kvcache.h"
#include "kv-test.h"

static struct dp_io *engine;

/* The engine is driven by the test's thread (dp_io_poll, and dp_io_wait on
 * it): nothing reaches the kernel between two passes, so what a pass hands
 * the kernel can be counted. */
static void setup(void)
{
	kv_test_setup("wb");
	struct dp_io_config cfg;
	dp_io_config_init(&cfg);
	/* a deep kernel queue: what the old LOW channel filled with writes */
	cfg.queue_depth = 256;
	cr_assert_eq(dp_io_new(&cfg, &engine), 0);
	cr_assert_geq(dp_io_poll(engine, 0), 0, "the test's thread owns the ring");
}

static void teardown(void)
{
	dp_io_stop(engine, DP_IO_STOP_DRAIN);
	dp_io_free(engine);
	engine = NULL;
	kv_test_teardown();
}

TestSuite(wb, .init = setup, .fini = teardown, .timeout = 300);

static struct dp_kv *open_kv_device(uint64_t device_bytes)
{
	char err[512] = "";
	struct dp_kv_opts o = { .state_dir = dir, .numa_node = -1, .direct_io = true, .io = engine,
				.device_bytes = device_bytes };
	struct dp_kv *kv;
	cr_assert_eq(dp_kv_open(&o, model, &kv, err, sizeof(err)), 0, "%s", err);
	return kv;
}

static struct dp_kv *open_kv(void)
{
	return open_kv_device(0);
}

/* A session of n tokens, its state on the device, its turn committed. */
static struct dp_kv_session *session(struct dp_kv *kv, const char *id, uint32_t n, uint32_t salt)
{
	struct dp_kv_session *s;
	struct dp_v4_seq *seq;
	int32_t *t = malloc(n * sizeof(*t));
	float *lg = malloc((size_t)V * sizeof(float));
	cr_assert_eq(dp_kv_session_create(kv, id, &s), 0);
	cr_assert_eq(dp_kv_session_acquire(kv, s, &seq), 0);
	kv_test_tokens(t, n, salt);
	kv_test_feed(seq, t, n, lg);
	cr_assert_eq(dp_kv_session_append(kv, s, t, n), 0);
	dp_kv_session_release(kv, s);
	cr_assert_eq(dp_kv_commit(kv), 0);
	free(t);
	free(lg);
	return s;
}

/* n sessions PREFIX0.. of `tokens` tokens each, stream salt, salt + 1, ... */
static void sessions(struct dp_kv *kv, const char *prefix, int n, uint32_t tokens, uint32_t salt,
		     struct dp_kv_session **out)
{
	for (int i = 0; i < n; i++) {
		char id[32];
		snprintf(id, sizeof(id), "%s%d", prefix, i);
		out[i] = session(kv, id, tokens, salt + (uint32_t)i);
	}
}

static struct dp_io_stats io_stats(void)
{
	struct dp_io_stats st;
	cr_assert_eq(dp_io_get_stats(engine, &st), 0);
	return st;
}

static void settle(struct dp_kv *kv)
{
	for (int i = 0; i < 100000 && dp_kv_writeback_pending(kv); i++) {
		dp_io_poll(engine, 100000);
		dp_kv_pump(kv);
		cr_assert_eq(dp_kv_flush(kv), 0);
	}
	cr_assert(!dp_kv_writeback_pending(kv), "the writebacks never finished");
}

/* kvcache/restore.c: RQ_WB_DEVICE_BYTES (writes in the kernel at once) and
 * RQ_WB_BYTES (issued ahead) */
#define WB_DEVICE_BYTES (512u << 10)
#define WB_BYTES (4u << 20)
#define SLOT ((4u << 10) + (64u << 10)) /* a page and its header */

Test(wb, a_restore_that_begins_during_a_large_writeback_meets_few_writes_in_the_kernel)
{
	struct dp_kv *kv = open_kv();
	/* the session to restore, parked on NVMe */
	struct dp_kv_session *r = session(kv, "back", 60, 1);
	cr_assert_eq(dp_kv_session_demote(kv, r, DP_KV_TIER_NVME), 0);
	/* long ones evicted: their states are written back (three: pages'
	 * zero tails are not written, and one writes ~0.5 MiB) */
	enum { BIG = 3 };
	struct dp_kv_session *bigs[BIG];
	sessions(kv, "big", BIG, 8192, 2, bigs);
	struct dp_kv_stats ks;
	dp_kv_stats(kv, &ks);
	/* at most: a page's zero tail is not written */
	uint64_t most = ks.pages[DP_KV_TIER_DEVICE] * SLOT;
	/* bytes: the limit's, and a page's more should one finish and the
	 * next start within the pass */
	uint64_t bound = WB_DEVICE_BYTES + 2 * SLOT;
	struct dp_io_stats s0 = io_stats();
	uint64_t pos;
	for (int i = 0; i < BIG; i++)
		cr_assert_eq(dp_kv_session_evict_start(kv, bigs[i], &pos), 0);
	uint64_t fl[DP_RSCHED_CLASS_MAX], q[DP_RSCHED_CLASS_MAX];
	dp_kv_io_inflight(kv, fl);
	dp_kv_io_queued(kv, q);
	cr_expect_gt(fl[DP_RSCHED_WRITEBACK], 0, "nothing else queued: the writeback goes at once");
	cr_expect_leq(fl[DP_RSCHED_WRITEBACK], WB_BYTES, "writeback issued past its cap: %llu",
		      (unsigned long long)fl[DP_RSCHED_WRITEBACK]);
	uint64_t total = fl[DP_RSCHED_WRITEBACK] + q[DP_RSCHED_WRITEBACK];
	cr_expect_leq(total, most, "more than its slots: %llu", (unsigned long long)total);
	cr_assert_gt(total, 2 * bound, "a writeback too small to tell: %llu bytes",
		     (unsigned long long)total);

	/* one pass of the io thread: what it hands the kernel is what the
	 * restore's first reads will find there. The old LOW channel had the
	 * whole writeback there (up to the queue depth); now at most the
	 * writeback channel's in-kernel limit */
	dp_io_poll(engine, 0);
	struct dp_io_stats s1 = io_stats();
	uint64_t in_kernel = s1.write_bytes_submitted - s0.write_bytes_submitted;
	cr_expect_leq(in_kernel, bound, "%llu KiB of writes (%llu requests) in the kernel as the "
		      "restore begins, more than %llu KiB", (unsigned long long)(in_kernel >> 10),
		      (unsigned long long)(s1.inflight + (s1.writes - s0.writes)),
		      (unsigned long long)(bound >> 10));
	cr_log_info("writeback %llu KiB; KiB of writes in the kernel as a restore begins: %llu "
		    "(bound %llu)", (unsigned long long)(total >> 10),
		    (unsigned long long)(in_kernel >> 10), (unsigned long long)(bound >> 10));

	/* the restore begins: its first layer goes to the kernel at the next
	 * pass and comes in */
	struct dp_v4_seq *seq;
	cr_assert_eq(dp_kv_session_acquire_async(kv, r, &seq), 0);
	dp_kv_io_inflight(kv, fl);
	cr_expect_gt(fl[DP_RSCHED_RESTORE], 0, "the first layer's reads are out");
	struct dp_kv_restore_info ri = { 0 };
	for (int i = 0; i < 100000; i++) {
		cr_assert_eq(dp_kv_session_restore_info(kv, r, &ri), 0);
		if (!ri.active || ri.layers_ready >= 1)
			break;
		dp_io_poll(engine, 100000);
	}
	cr_assert(!ri.active || ri.layers_ready >= 1, "the first layer never came");
	dp_kv_session_release(kv, r); /* completes the restore */
	settle(kv);
	for (int i = 0; i < BIG; i++)
		cr_expect_eq(dp_kv_session_tier(bigs[i]), DP_KV_TIER_NVME);
	cr_expect_eq(io_stats().write_bytes_submitted - s0.write_bytes_submitted, total,
		     "every byte of it went out, once");
	dp_kv_io_inflight(kv, fl);
	dp_kv_io_queued(kv, q);
	for (int k = 0; k < DP_RSCHED_CLASS_MAX; k++) {
		cr_expect_eq(fl[k], 0, "class %d: bytes still counted in flight", k);
		cr_expect_eq(q[k], 0, "class %d: bytes still counted queued", k);
	}
	dp_kv_stats(kv, &ks);
	cr_expect_eq(ks.writeback_errors, 0);
	dp_kv_close(kv);
}

/* RQ_WB_DELAY_STEPS of kvcache/restore.c */
#define WB_DELAY_STEPS 4u

/* A restore begins every step and holds a window of one byte, so nothing
 * needed later than it gets room. A writeback begun at step 1 by the
 * watermarks (explicit: by an eviction its client waits for) must be all
 * issued within its delay; an explicit one at once. */
static void writeback_under_restores(bool explicit)
{
	struct dp_kv *kv = open_kv_device(explicit ? 0 : 12u * 65536);
	/* a window of one byte: restore pages always hold it (each step's
	 * restore begins a step ahead), so nothing needed later gets room */
	cr_assert_eq(dp_kv_set_restore_window(kv, 1), 0);
	enum { N = 12 };
	struct dp_kv_session *r[N];
	sessions(kv, "r", N, 60, 10, r);
	for (int i = 0; i < N; i++)
		cr_assert_eq(dp_kv_session_demote(kv, r[i], DP_KV_TIER_NVME), 0);
	struct dp_kv_session *big = session(kv, "big", 2048, 3);
	float *lg = malloc((size_t)V * sizeof(float));
	struct dp_v4_seq *seq[N];
	int32_t probe = 5;
	uint64_t q[DP_RSCHED_CLASS_MAX];
	int started = -1, gone = -1, held = 0;
	dp_kv_pump(kv);
	cr_assert_eq(dp_kv_session_acquire_async(kv, r[0], &seq[0]), 0);
	for (int k = 0; k + 1 < N && gone < 0; k++) {
		dp_kv_pump(kv); /* step k begins */
		/* the next step's restore begins now (a session coming back),
		 * and this step's runs through its gates */
		cr_assert_eq(dp_kv_session_acquire_async(kv, r[k + 1], &seq[k + 1]), 0);
		dp_kv_restore_pump(kv); /* after admission, as the daemon does */
		if (k == 1) {
			uint64_t pos;
			if (explicit)
				cr_assert_eq(dp_kv_session_evict_start(kv, big, &pos), 0);
			else /* big, the oldest idle session, over the device's budget */
				cr_assert_geq(dp_kv_balance_async(kv), 1);
			dp_kv_io_queued(kv, q);
			if (explicit) /* ahead of the restores queued before it */
				cr_expect_eq(q[DP_RSCHED_WRITEBACK], 0, "%llu bytes left queued",
					     (unsigned long long)q[DP_RSCHED_WRITEBACK]);
			else
				cr_assert_gt(q[DP_RSCHED_WRITEBACK], 0, "the writeback began");
			started = k;
		}
		kv_test_feed(seq[k], &probe, 1, lg);
		cr_assert(!dp_v4_seq_poisoned(seq[k]));
		cr_assert_eq(dp_kv_session_append(kv, r[k], &probe, 1), 0);
		dp_kv_session_release(kv, r[k]);
		dp_io_poll(engine, 0);
		dp_kv_io_queued(kv, q);
		if (started >= 0 && q[DP_RSCHED_WRITEBACK] == 0)
			gone = k;
		else if (started >= 0)
			held++;
	}
	cr_assert_geq(gone, 0, "the writeback never went");
	if (explicit) {
		cr_expect_eq(held, 0, "its client waits: held %d steps", held);
	} else {
		cr_expect_geq(held, 1, "the restores never held it back: the test shows nothing");
		cr_expect_leq((unsigned)(gone - started), WB_DELAY_STEPS,
			      "its last byte went %d steps after it began", gone - started);
	}
	cr_log_info("writeback began at step %d, all issued by step %d (held %d steps)", started,
		    gone, held);
	free(lg);
	for (int i = 0; i < N; i++)
		if (dp_kv_session_tier(r[i]) != DP_KV_TIER_NVME && dp_kv_session_busy(r[i]))
			dp_kv_session_release(kv, r[i]); /* the last one, begun ahead */
	settle(kv);
	cr_expect_eq(dp_kv_session_tier(big), DP_KV_TIER_NVME);
	dp_kv_close(kv);
}

Test(wb, a_writeback_goes_within_its_delay_however_many_restores_keep_coming)
{
	writeback_under_restores(false);
}

Test(wb, an_explicit_evictions_writes_go_at_once_however_many_restores_keep_coming)
{
	writeback_under_restores(true);
}
