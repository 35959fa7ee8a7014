/* SPDX-License-Identifier: MIT */
/*
 * kvcache: sessions through every tier, persistence and recovery, corruption
 * detection, crashes at random points, and a bad environment.
 *
 * The check throughout: a session's state, wherever it has been, must give
 * the same next-token logits as a fresh sequence fed the session's whole
 * history (the parity model "alt", tiny and fast).
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#include "base/macros.h"
#include "io/io.h"
#include "kvcache/kvcache.h"
#include "kv-test.h"

static struct dp_io *engine; /* the kv_io suite runs slot I/O through io_uring */

static void setup(void)
{
	kv_test_setup("kv");
}

static void teardown(void)
{
	kv_test_teardown();
}

TestSuite(kv, .init = setup, .fini = teardown);

static void setup_io(void)
{
	setup();
	struct dp_io_config cfg;
	dp_io_config_init(&cfg);
	cfg.queue_depth = 64;
	cr_assert_eq(dp_io_new(&cfg, &engine), 0);
	cr_assert_eq(dp_io_start(engine, -1), 0);
}

static void teardown_io(void)
{
	dp_io_stop(engine, DP_IO_STOP_DRAIN);
	dp_io_free(engine);
	engine = NULL;
	teardown();
}

TestSuite(kv_io, .init = setup_io, .fini = teardown_io);

static struct dp_kv *open_kv(uint64_t dram, uint64_t device)
{
	char err[512] = "";
	struct dp_kv_opts o = { .state_dir = dir, .dram_bytes = dram, .device_bytes = device,
				.numa_node = -1, .direct_io = true, .io = engine };
	struct dp_kv *kv;
	cr_assert_eq(dp_kv_open(&o, model, &kv, err, sizeof(err)), 0, "%s", err);
	return kv;
}

static int32_t tok(uint32_t i, uint32_t salt)
{
	return (int32_t)((i * 2654435761u + salt * 40503u) % 256);
}

/* One turn: bring the state up to the history, feed n new tokens, append
 * them, release. */
static void turn(struct dp_kv *kv, struct dp_kv_session *s, uint32_t n, uint32_t salt)
{
	struct dp_v4_seq *seq;
	float *lg = malloc((size_t)V * sizeof(float));
	cr_assert_eq(dp_kv_session_acquire(kv, s, &seq), 0);
	uint64_t have = dp_v4_seq_pos(seq), len = dp_kv_session_len(s);
	cr_assert_leq(have, len);
	if (have < len) {
		struct dp_v4_batch_item it = { seq, dp_kv_session_history(s) + have,
					       (uint32_t)(len - have), false };
		cr_assert_eq(dp_v4_forward(model, &it, 1, lg), 0);
	}
	int32_t *t = malloc(n * sizeof(*t));
	for (uint32_t i = 0; i < n; i++)
		t[i] = tok((uint32_t)len + i, salt);
	struct dp_v4_batch_item it = { seq, t, n, false };
	cr_assert_eq(dp_v4_forward(model, &it, 1, lg), 0);
	cr_assert_eq(dp_kv_session_append(kv, s, t, n), 0);
	dp_kv_session_release(kv, s);
	free(t);
	free(lg);
}

/* Next-token logits from the session's state vs from a fresh replay. */
static void check_state(struct dp_kv *kv, struct dp_kv_session *s)
{
	struct dp_v4_seq *seq, *fresh;
	float *a = malloc((size_t)V * sizeof(float)), *b = malloc((size_t)V * sizeof(float));
	uint64_t len = dp_kv_session_len(s);
	int32_t probe = 7;

	cr_assert_eq(dp_kv_session_acquire(kv, s, &seq), 0);
	uint64_t have = dp_v4_seq_pos(seq);
	if (have < len) {
		struct dp_v4_batch_item it = { seq, dp_kv_session_history(s) + have,
					       (uint32_t)(len - have), false };
		cr_assert_eq(dp_v4_forward(model, &it, 1, a), 0);
	}
	struct dp_v4_batch_item it = { seq, &probe, 1, false };
	cr_assert_eq(dp_v4_forward(model, &it, 1, a), 0);
	/* the probe token is part of the history now */
	cr_assert_eq(dp_kv_session_append(kv, s, &probe, 1), 0);
	dp_kv_session_release(kv, s);

	cr_assert_eq(dp_v4_seq_new(model, &fresh), 0);
	struct dp_v4_batch_item all = { fresh, dp_kv_session_history(s), (uint32_t)(len + 1), false };
	cr_assert_eq(dp_v4_forward(model, &all, 1, b), 0);
	double worst = 0, maxb = 0;
	for (uint32_t v = 0; v < V; v++) {
		worst = fmax(worst, fabs((double)a[v] - b[v]));
		maxb = fmax(maxb, fabs(b[v]));
	}
	cr_assert(worst <= 1e-4 * maxb, "session %s: state differs from a replay by %g (max %g)",
		  dp_kv_session_id(s), worst, maxb);
	dp_v4_seq_free(fresh);
	free(a);
	free(b);
}

Test(kv, session_ids_reject_path_characters)
{
	cr_expect(dp_kv_session_id_valid("agent-7.turns_2"));
	cr_expect(!dp_kv_session_id_valid(""));
	cr_expect(!dp_kv_session_id_valid("."));
	cr_expect(!dp_kv_session_id_valid(".."));
	cr_expect(!dp_kv_session_id_valid("a/b"));
	cr_expect(!dp_kv_session_id_valid("a b"));
	char longid[DP_KV_SESSION_ID_MAX + 2];
	memset(longid, 'x', sizeof(longid) - 1);
	longid[sizeof(longid) - 1] = '\0';
	cr_expect(!dp_kv_session_id_valid(longid));
}

static void round_trip_body(void)
{
	struct dp_kv *kv = open_kv(8u << 20, 0);
	struct dp_kv_session *s;
	cr_assert_eq(dp_kv_session_create(kv, "rt", &s), 0);
	turn(kv, s, 40, 1);
	cr_expect_eq(dp_kv_session_tier(s), DP_KV_TIER_DEVICE);
	cr_assert_eq(dp_kv_session_demote(kv, s, DP_KV_TIER_DRAM), 0);
	cr_expect_eq(dp_kv_session_tier(s), DP_KV_TIER_DRAM);
	check_state(kv, s);
	turn(kv, s, 9, 2);
	cr_assert_eq(dp_kv_session_demote(kv, s, DP_KV_TIER_NVME), 0);
	cr_expect_eq(dp_kv_session_tier(s), DP_KV_TIER_NVME);
	check_state(kv, s);
	/* device -> dram -> nvme -> device */
	turn(kv, s, 5, 3);
	cr_assert_eq(dp_kv_session_demote(kv, s, DP_KV_TIER_DRAM), 0);
	cr_assert_eq(dp_kv_session_demote(kv, s, DP_KV_TIER_NVME), 0);
	check_state(kv, s);
	struct dp_kv_stats st;
	dp_kv_stats(kv, &st);
	cr_expect_geq(st.promotions, 3);
	cr_expect_geq(st.demotions, 4);
	cr_expect_gt(st.pages_written, 0);
	dp_kv_close(kv);
}

Test(kv, state_round_trips_through_every_tier)
{
	round_trip_body();
}

Test(kv_io, state_round_trips_through_every_tier_with_io_uring)
{
	round_trip_body();
}

Test(kv, a_busy_session_is_not_demoted)
{
	struct dp_kv *kv = open_kv(8u << 20, 0);
	struct dp_kv_session *s;
	struct dp_v4_seq *seq;
	cr_assert_eq(dp_kv_session_create(kv, "busy", &s), 0);
	cr_assert_eq(dp_kv_session_acquire(kv, s, &seq), 0);
	cr_expect_eq(dp_kv_session_demote(kv, s, DP_KV_TIER_NVME), -EBUSY);
	cr_expect_eq(dp_kv_session_drop(kv, s), -EBUSY);
	dp_kv_session_release(kv, s);
	cr_expect_eq(dp_kv_session_demote(kv, s, DP_KV_TIER_NVME), 0);
	dp_kv_close(kv);
}

static void reopen_body(void)
{
	struct dp_kv *kv = open_kv(0, 0);
	struct dp_kv_session *a, *b;
	cr_assert_eq(dp_kv_session_create(kv, "a", &a), 0);
	cr_assert_eq(dp_kv_session_create(kv, "b", &b), 0);
	turn(kv, a, 30, 1);
	turn(kv, b, 17, 2);
	cr_assert_eq(dp_kv_commit(kv), 0);
	cr_assert_eq(dp_kv_session_persist(kv, a), 0); /* a has a snapshot, b not */
	turn(kv, a, 6, 3);			       /* committed below, past the snapshot */
	cr_assert_eq(dp_kv_commit(kv), 0);
	turn(kv, b, 5, 4); /* never committed: lost on reopen */
	dp_kv_close(kv);

	kv = open_kv(0, 0);
	cr_assert_eq(dp_kv_session_count(kv), 2);
	cr_assert_eq(dp_kv_session_find(kv, "a", &a), 0);
	cr_assert_eq(dp_kv_session_find(kv, "b", &b), 0);
	cr_expect_eq(dp_kv_session_len(a), 36);
	cr_expect_eq(dp_kv_session_len(b), 17, "the uncommitted turn is gone");
	cr_expect_eq(dp_kv_session_tier(a), DP_KV_TIER_NVME);
	cr_expect_eq(dp_kv_session_tier(b), DP_KV_TIER_NONE);
	for (uint32_t i = 0; i < 30; i++)
		cr_expect_eq(dp_kv_session_history(a)[i], tok(i, 1));
	check_state(kv, a); /* snapshot at 30, replay of 6 */
	check_state(kv, b); /* full recompute */
	dp_kv_close(kv);
}

Test(kv, committed_turns_and_snapshots_survive_a_reopen)
{
	reopen_body();
}

Test(kv_io, committed_turns_and_snapshots_survive_a_reopen_with_io_uring)
{
	reopen_body();
}

Test(kv, a_dropped_session_stays_dropped)
{
	struct dp_kv *kv = open_kv(0, 0);
	struct dp_kv_session *s;
	cr_assert_eq(dp_kv_session_create(kv, "gone", &s), 0);
	turn(kv, s, 10, 1);
	cr_assert_eq(dp_kv_session_demote(kv, s, DP_KV_TIER_NVME), 0);
	cr_assert_eq(dp_kv_session_drop(kv, s), 0);
	dp_kv_close(kv);
	kv = open_kv(0, 0);
	cr_expect_eq(dp_kv_session_find(kv, "gone", &s), -ENOENT);
	dp_kv_close(kv);
}

/* Damage the slot file (after the file header) at byte `off` of slot 0. */
static void damage_slot(long off, char how)
{
	char path[512];
	snprintf(path, sizeof(path), "%s/slots", dir);
	int fd = open(path, O_RDWR);
	cr_assert_geq(fd, 0);
	off_t at = 4096 + off;
	if (how == 't') {
		cr_assert_eq(ftruncate(fd, at), 0);
	} else {
		unsigned char c;
		cr_assert_eq(pread(fd, &c, 1, at), 1);
		c ^= 0x5a;
		cr_assert_eq(pwrite(fd, &c, 1, at), 1);
	}
	close(fd);
}

static void corruption_is_recomputed(long off, char how)
{
	struct dp_kv *kv = open_kv(0, 0);
	struct dp_kv_session *s;
	cr_assert_eq(dp_kv_session_create(kv, "c", &s), 0);
	turn(kv, s, 50, 1);
	cr_assert_eq(dp_kv_session_demote(kv, s, DP_KV_TIER_NVME), 0);
	dp_kv_close(kv);
	damage_slot(off, how);
	kv = open_kv(0, 0);
	cr_assert_eq(dp_kv_session_find(kv, "c", &s), 0);
	/* slots the truncated file no longer holds are known missing at open */
	cr_expect_eq(dp_kv_session_tier(s), how == 't' ? DP_KV_TIER_NONE : DP_KV_TIER_NVME);
	check_state(kv, s); /* must come out right: the bad page is never served */
	struct dp_kv_stats st;
	dp_kv_stats(kv, &st);
	cr_expect_geq(st.corrupt_pages, 1, "the damage was detected");
	cr_expect_geq(st.recomputed_tokens, 50, "and the state recomputed");
	dp_kv_close(kv);
}

Test(kv, a_flipped_data_byte_is_detected_and_recomputed)
{
	corruption_is_recomputed(4096 + 1000, 'f');
}

Test(kv_io, a_flipped_data_byte_is_detected_with_io_uring)
{
	corruption_is_recomputed(4096 + 1000, 'f');
}

Test(kv_io, a_truncated_slot_file_is_detected_with_io_uring)
{
	corruption_is_recomputed(4096 + 100, 't');
}

Test(kv, a_flipped_header_byte_is_detected_and_recomputed)
{
	corruption_is_recomputed(40, 'f');
}

Test(kv, a_truncated_slot_file_is_detected_and_recomputed)
{
	corruption_is_recomputed(4096 + 100, 't');
}

Test(kv, a_page_header_of_another_version_is_not_served)
{
	corruption_is_recomputed(8, 'f'); /* the version field */
}

/* Rewrite the slot file's header: version v, checksum valid or not. */
static void rewrite_file_header(uint32_t version, bool valid_sum)
{
	char path[512];
	uint8_t h[32];
	snprintf(path, sizeof(path), "%s/slots", dir);
	int fd = open(path, O_RDWR);
	cr_assert_geq(fd, 0);
	cr_assert_eq(pread(fd, h, sizeof(h), 0), (ssize_t)sizeof(h));
	memcpy(h + 8, &version, 4);
	if (valid_sum) {
		uint64_t sum = XXH3_64bits(h, 24);
		memcpy(h + 24, &sum, 8);
	}
	cr_assert_eq(pwrite(fd, h, sizeof(h), 0), (ssize_t)sizeof(h));
	close(fd);
}

Test(kv, a_slot_file_of_another_version_is_refused_with_a_message)
{
	struct dp_kv *kv = open_kv(0, 0);
	dp_kv_close(kv);
	rewrite_file_header(99, true);
	char err[512] = "";
	struct dp_kv_opts o = { .state_dir = dir, .numa_node = -1 };
	cr_expect_eq(dp_kv_open(&o, model, &kv, err, sizeof(err)), -EPROTO);
	cr_expect(strstr(err, "version 99") != NULL, "message: %s", err);
}

Test(kv, a_damaged_slot_file_header_is_set_aside_and_the_states_recomputed)
{
	struct dp_kv *kv = open_kv(0, 0);
	struct dp_kv_session *s[3];
	for (int i = 0; i < 3; i++) {
		char id[8];
		snprintf(id, sizeof(id), "h%d", i);
		cr_assert_eq(dp_kv_session_create(kv, id, &s[i]), 0);
		turn(kv, s[i], 20 + 5 * i, (uint32_t)i);
		cr_assert_eq(dp_kv_session_demote(kv, s[i], DP_KV_TIER_NVME), 0);
	}
	dp_kv_close(kv);
	rewrite_file_header(1, false);
	rewrite_file_header(2, false); /* checksum no longer matches */

	char err[512] = "";
	struct dp_kv_opts o = { .state_dir = dir, .numa_node = -1 };
	cr_assert_eq(dp_kv_open(&o, model, &kv, err, sizeof(err)), 0, "%s", err);
	struct dp_kv_stats st;
	dp_kv_stats(kv, &st);
	cr_expect_eq(st.slot_file_resets, 1);
	cr_expect_eq(st.journal_sessions_lost, 0);
	struct dp_kv_recovery rec;
	dp_kv_recovery(kv, &rec);
	cr_assert(!strncmp(rec.slots_copy, "slots.damaged-", 14), "kept as: '%s'", rec.slots_copy);
	char kept[512];
	snprintf(kept, sizeof(kept), "%s/%s", dir, rec.slots_copy);
	cr_expect_eq(access(kept, F_OK), 0, "%s is there", kept);
	for (int i = 0; i < 3; i++) {
		char id[8];
		snprintf(id, sizeof(id), "h%d", i);
		cr_assert_eq(dp_kv_session_find(kv, id, &s[i]), 0);
		cr_expect_eq(dp_kv_session_len(s[i]), 20 + 5 * (uint64_t)i);
		cr_expect_eq(dp_kv_session_tier(s[i]), DP_KV_TIER_NONE, "the state comes from the history");
		check_state(kv, s[i]);
	}
	/* the new slot file serves as the old did */
	cr_assert_eq(dp_kv_commit(kv), 0);
	cr_assert_eq(dp_kv_session_demote(kv, s[0], DP_KV_TIER_NVME), 0);
	dp_kv_close(kv);
	kv = open_kv(0, 0);
	dp_kv_stats(kv, &st);
	cr_expect_eq(st.slot_file_resets, 0);
	cr_assert_eq(dp_kv_session_find(kv, "h0", &s[0]), 0);
	cr_expect_eq(dp_kv_session_tier(s[0]), DP_KV_TIER_NVME);
	check_state(kv, s[0]);
	dp_kv_stats(kv, &st);
	cr_expect_eq(st.corrupt_pages, 0);
	cr_expect_eq(st.recomputed_tokens, 0, "restored from the new slot file");
	dp_kv_close(kv);
}

Test(kv, a_torn_journal_tail_keeps_the_earlier_turns)
{
	struct dp_kv *kv = open_kv(0, 0);
	struct dp_kv_session *s;
	cr_assert_eq(dp_kv_session_create(kv, "torn", &s), 0);
	turn(kv, s, 12, 1);
	cr_assert_eq(dp_kv_commit(kv), 0);
	turn(kv, s, 8, 2);
	cr_assert_eq(dp_kv_commit(kv), 0);
	dp_kv_close(kv);
	char path[512];
	snprintf(path, sizeof(path), "%s/journal", dir);
	struct stat st;
	cr_assert_eq(stat(path, &st), 0);
	cr_assert_eq(truncate(path, st.st_size - 5), 0); /* tear the second record */
	kv = open_kv(0, 0);
	cr_assert_eq(dp_kv_session_find(kv, "torn", &s), 0);
	cr_expect_eq(dp_kv_session_len(s), 12);
	struct dp_kv_stats ks;
	dp_kv_stats(kv, &ks);
	cr_expect_eq(ks.journal_damaged_records, 0, "a torn tail is a crash's, not damage");
	cr_expect_eq(ks.journal_sessions_lost, 0);
	check_state(kv, s);
	dp_kv_close(kv);
}

Test(kv, compaction_keeps_histories_and_snapshots)
{
	struct dp_kv *kv = open_kv(0, 0);
	struct dp_kv_session *s;
	for (int i = 0; i < 4; i++) {
		char id[16];
		snprintf(id, sizeof(id), "s%d", i);
		cr_assert_eq(dp_kv_session_create(kv, id, &s), 0);
		for (int t = 0; t < 3; t++) {
			turn(kv, s, 5, (uint32_t)(i * 10 + t));
			cr_assert_eq(dp_kv_commit(kv), 0);
		}
		if (i % 2)
			cr_assert_eq(dp_kv_session_demote(kv, s, DP_KV_TIER_NVME), 0);
	}
	cr_assert_eq(dp_kv_session_find(kv, "s0", &s), 0);
	cr_assert_eq(dp_kv_session_drop(kv, s), 0);
	struct dp_kv_stats before, after;
	dp_kv_stats(kv, &before);
	cr_assert_eq(dp_kv_compact(kv), 0);
	dp_kv_stats(kv, &after);
	cr_expect_lt(after.journal_bytes, before.journal_bytes);
	dp_kv_close(kv);
	kv = open_kv(0, 0);
	cr_expect_eq(dp_kv_session_count(kv), 3);
	cr_assert_eq(dp_kv_session_find(kv, "s1", &s), 0);
	cr_expect_eq(dp_kv_session_len(s), 15);
	cr_expect_eq(dp_kv_session_tier(s), DP_KV_TIER_NVME);
	check_state(kv, s);
	dp_kv_close(kv);
}

/* Many sessions, tiny budgets, random operations in random order: every
 * session's state stays right wherever the balancing moved it. */
static void random_body(void);

Test(kv, random_promotion_and_demotion_keep_every_state_right)
{
	random_body();
}

/* the same with every NVMe transfer going through the io thread */
Test(kv_io, random_promotion_and_demotion_through_io_uring_keep_every_state_right)
{
	random_body();
}

static void random_body(void)
{
	/* device room for ~2 sessions, DRAM for ~3 */
	struct dp_kv *kv = open_kv(12u * 65536, 6u * 65536);
	struct dp_kv_session *s[8];
	unsigned seed = 12345;
	for (int i = 0; i < 8; i++) {
		char id[16];
		snprintf(id, sizeof(id), "r%d", i);
		cr_assert_eq(dp_kv_session_create(kv, id, &s[i]), 0);
	}
	for (int step = 0; step < 120; step++) {
		struct dp_kv_session *x = s[rand_r(&seed) % 8];
		switch (rand_r(&seed) % 6) {
		case 0:
		case 1:
			turn(kv, x, 1 + rand_r(&seed) % 9, (uint32_t)step);
			break;
		case 2:
			cr_assert_eq(dp_kv_commit(kv), 0);
			break;
		case 3:
			dp_kv_session_demote(kv, x, rand_r(&seed) % 2 ? DP_KV_TIER_DRAM : DP_KV_TIER_NVME);
			break;
		case 4:
			if (rand_r(&seed) % 2)
				cr_assert_geq(dp_kv_balance(kv), 0);
			else
				cr_assert_geq(dp_kv_balance_async(kv), 0);
			dp_kv_pump(kv);
			if (rand_r(&seed) % 3 == 0)
				cr_assert_eq(dp_kv_flush(kv), 0);
			break;
		default:
			if (dp_kv_session_len(x))
				check_state(kv, x);
			break;
		}
	}
	for (int i = 0; i < 8; i++)
		check_state(kv, s[i]);
	struct dp_kv_stats st;
	dp_kv_stats(kv, &st);
	cr_expect_gt(st.demotions, 0);
	cr_expect_gt(st.promotions, 0);
	dp_kv_close(kv);
}

/*
 * Crash test: a child runs turns on three sessions (committing each turn and
 * demoting/persisting along the way) and tells the parent after every
 * committed turn; the parent kills it with SIGKILL at a random moment, then
 * reopens: every reported turn must be there, and every state must be right.
 */
static void crash_body(bool async)
{
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
	int rounds = 6;
#else
	int rounds = 20;
#endif
	uint64_t total_reported = 0;
	for (int round = 0; round < rounds; round++) {
		int pfd[2];
		cr_assert_eq(pipe(pfd), 0);
		pid_t pid = fork();
		cr_assert_geq(pid, 0);
		if (pid == 0) {
			close(pfd[0]);
			if (async) {
				/* the parent's io thread did not survive the fork */
				struct dp_io_config cfg;
				dp_io_config_init(&cfg);
				cfg.queue_depth = 64;
				if (dp_io_new(&cfg, &engine) < 0 || dp_io_start(engine, -1) < 0)
					_exit(5);
			}
			/* async: room for about one session on the device and one
			 * in DRAM, so the watermarks keep writebacks going */
			struct dp_kv *kv = async ? open_kv(2u * 65536, 3u * 65536) : open_kv(4u * 65536, 0);
			struct dp_kv_session *s[3];
			for (int i = 0; i < 3; i++) {
				char id[16];
				snprintf(id, sizeof(id), "k%d", i);
				if (dp_kv_session_find(kv, id, &s[i]) < 0)
					dp_kv_session_create(kv, id, &s[i]);
			}
			for (uint32_t t = 0;; t++) {
				int i = (int)(t % 3);
				turn(kv, s[i], 3 + t % 5, t);
				if (dp_kv_commit(kv) < 0)
					_exit(3);
				/* report: session, committed length */
				uint64_t msg[2] = { (uint64_t)i, dp_kv_session_len(s[i]) };
				if (write(pfd[1], msg, sizeof(msg)) != sizeof(msg))
					_exit(4);
				if (async) {
					dp_kv_balance_async(kv);
					dp_kv_pump(kv);
				}
				if (t % 4 == 3)
					dp_kv_session_demote(kv, s[(i + 1) % 3], DP_KV_TIER_NVME);
				if (t % 7 == 6)
					dp_kv_session_persist(kv, s[(i + 2) % 3]);
				if (t % 11 == 10)
					dp_kv_compact(kv);
			}
		}
		close(pfd[1]);
		struct timespec ts = { 0, (long)((rand() % 150 + 5) * 1000000L) };
		nanosleep(&ts, NULL);
		kill(pid, SIGKILL);
		int status;
		waitpid(pid, &status, 0);
		uint64_t reported[3] = { 0, 0, 0 }, msg[2];
		while (read(pfd[0], msg, sizeof(msg)) == sizeof(msg))
			if (msg[0] < 3 && msg[1] > reported[msg[0]])
				reported[msg[0]] = msg[1];
		close(pfd[0]);

		struct dp_kv *kv = async ? open_kv(2u * 65536, 3u * 65536) : open_kv(4u * 65536, 0);
		total_reported += reported[0] + reported[1] + reported[2];
		for (int i = 0; i < 3; i++) {
			char id[16];
			struct dp_kv_session *s;
			snprintf(id, sizeof(id), "k%d", i);
			if (reported[i] == 0)
				continue;
			cr_assert_eq(dp_kv_session_find(kv, id, &s), 0, "round %d: %s lost", round, id);
			cr_assert_geq(dp_kv_session_len(s), reported[i],
				      "round %d: %s has %llu tokens, %llu were committed", round, id,
				      (unsigned long long)dp_kv_session_len(s),
				      (unsigned long long)reported[i]);
			check_state(kv, s);
		}
		cr_assert_eq(dp_kv_commit(kv), 0); /* the probes of check_state */
		dp_kv_close(kv);
	}
	cr_log_info("crash test: %d rounds, %llu committed tokens checked", rounds,
		    (unsigned long long)total_reported);
	cr_expect_gt(total_reported, 0, "the writer never got to commit: the test checked nothing");
}

Test(kv, kill_9_at_any_moment_loses_no_committed_turn, .timeout = 240)
{
	crash_body(false);
}

/* the same with the watermarks writing sessions out asynchronously */
Test(kv_io, kill_9_during_asynchronous_writebacks_loses_no_committed_turn, .timeout = 240)
{
	crash_body(true);
}

/* Drive the writebacks until none is in flight or waiting for a sync. */
static void settle_writebacks(struct dp_kv *kv)
{
	for (int i = 0; i < 100000 && dp_kv_writeback_pending(kv); i++) {
		dp_kv_pump(kv);
		cr_assert_eq(dp_kv_flush(kv), 0);
		if (dp_kv_writeback_pending(kv))
			usleep(100);
	}
	cr_assert(!dp_kv_writeback_pending(kv), "the writebacks never finished");
}

Test(kv_io, an_asynchronous_writeback_moves_idle_sessions_to_nvme_without_blocking)
{
	/* device room for about one session, no DRAM tier */
	struct dp_kv *kv = open_kv(0, 3u * 65536);
	struct dp_kv_session *s[4];
	for (int i = 0; i < 4; i++) {
		char id[16];
		snprintf(id, sizeof(id), "w%d", i);
		cr_assert_eq(dp_kv_session_create(kv, id, &s[i]), 0);
		turn(kv, s[i], 20, (uint32_t)i);
	}
	cr_assert_eq(dp_kv_commit(kv), 0);
	cr_assert_gt(dp_kv_balance_async(kv), 0);
	struct dp_kv_stats st;
	dp_kv_stats(kv, &st);
	cr_expect_gt(st.writebacks, 0);
	cr_expect_gt(st.writeback_pages, 0, "pages on their way out");
	/* nothing moved yet: the sessions stay where they were until their
	 * snapshot is durable */
	for (int i = 0; i < 4; i++)
		cr_expect_eq(dp_kv_session_tier(s[i]), DP_KV_TIER_DEVICE);
	settle_writebacks(kv);
	dp_kv_stats(kv, &st);
	cr_expect_eq(st.writeback_errors, 0);
	cr_expect_eq(st.writeback_pages, 0);
	cr_expect_geq(st.sessions[DP_KV_TIER_NVME], 1, "the oldest went to NVMe");
	cr_expect_eq(st.sessions[DP_KV_TIER_NVME], st.writebacks);
	for (int i = 0; i < 4; i++)
		check_state(kv, s[i]);
	cr_assert_eq(dp_kv_commit(kv), 0);
	dp_kv_close(kv);
	/* and the snapshots are what a restart finds */
	kv = open_kv(0, 3u * 65536);
	for (int i = 0; i < 4; i++) {
		char id[16];
		snprintf(id, sizeof(id), "w%d", i);
		cr_assert_eq(dp_kv_session_find(kv, id, &s[i]), 0);
		check_state(kv, s[i]);
	}
	dp_kv_stats(kv, &st);
	cr_expect_eq(st.corrupt_pages, 0);
	dp_kv_close(kv);
}

/* Pages of a session's state after a 20-token turn. */
static uint64_t pages_per_session(void)
{
	struct dp_kv *kv = open_kv(0, 0);
	struct dp_kv_session *m;
	struct dp_kv_stats st;
	cr_assert_eq(dp_kv_session_create(kv, "measure", &m), 0);
	turn(kv, m, 20, 9);
	dp_kv_stats(kv, &st);
	cr_assert_eq(dp_kv_session_drop(kv, m), 0);
	dp_kv_close(kv);
	cr_assert_gt(st.pages[DP_KV_TIER_DEVICE], 0);
	return st.pages[DP_KV_TIER_DEVICE];
}

Test(kv_io, a_session_used_during_its_writeback_keeps_its_state)
{
	/* DRAM holds exactly one session: one there is over the watermark */
	uint64_t P = pages_per_session();
	struct dp_kv *kv = open_kv(P * 65536, 0);
	struct dp_kv_session *a, *b;
	cr_assert_eq(dp_kv_session_create(kv, "a", &a), 0);
	cr_assert_eq(dp_kv_session_create(kv, "b", &b), 0);
	turn(kv, a, 20, 1);
	turn(kv, b, 20, 2);
	cr_assert_eq(dp_kv_commit(kv), 0);
	cr_assert_eq(dp_kv_session_demote(kv, a, DP_KV_TIER_DRAM), 0);
	cr_assert_eq(dp_kv_balance_async(kv), 1);
	struct dp_kv_stats st;
	dp_kv_stats(kv, &st);
	cr_assert_eq(st.writebacks, 1);
	/* a turn on each while the writes may still be in flight: a's DRAM
	 * pages stay held by the writeback after its promotion lets them go */
	turn(kv, a, 5, 3);
	turn(kv, b, 5, 4);
	cr_assert_eq(dp_kv_commit(kv), 0);
	settle_writebacks(kv);
	cr_expect_eq(dp_kv_session_tier(a), DP_KV_TIER_DEVICE, "a moved on: it stays");
	dp_kv_stats(kv, &st);
	cr_expect_eq(st.pages[DP_KV_TIER_DRAM], 0, "the writeback let the DRAM pages go");
	cr_expect_eq(st.pages[DP_KV_TIER_NVME], P, "a's snapshot at 20 tokens");
	check_state(kv, a);
	check_state(kv, b);
	cr_assert_eq(dp_kv_commit(kv), 0);
	dp_kv_close(kv);
	kv = open_kv(P * 65536, 0);
	cr_assert_eq(dp_kv_session_find(kv, "a", &a), 0);
	check_state(kv, a);
	dp_kv_stats(kv, &st);
	cr_expect_eq(st.corrupt_pages, 0);
	dp_kv_close(kv);
}

Test(kv_io, a_writeback_written_but_not_yet_installed_still_counts_as_leaving)
{
	/* DRAM holds four sessions: all four there are over the high watermark
	 * (0.9), and one out brings it to the low one (0.75) */
	uint64_t P = pages_per_session();
	struct dp_kv *kv = open_kv(4 * P * 65536, 0);
	struct dp_kv_session *s[4];
	for (int i = 0; i < 4; i++) {
		char id[16];
		snprintf(id, sizeof(id), "l%d", i);
		cr_assert_eq(dp_kv_session_create(kv, id, &s[i]), 0);
		turn(kv, s[i], 20, (uint32_t)i);
		cr_assert_eq(dp_kv_session_demote(kv, s[i], DP_KV_TIER_DRAM), 0);
	}
	cr_assert_eq(dp_kv_commit(kv), 0);
	cr_assert_eq(dp_kv_balance_async(kv), 1);
	/* its writes finish; the record waits for the next journal sync, so
	 * the pages are still in DRAM: yet they are on their way out, and the
	 * watermarks must not send another session after them (they did when
	 * a written writeback stopped counting before its install) */
	struct dp_kv_stats st;
	for (int i = 0; i < 100000; i++) {
		dp_kv_pump(kv);
		dp_kv_stats(kv, &st);
		if (!st.writeback_pages)
			break;
		usleep(100);
	}
	cr_assert_eq(st.writeback_pages, 0, "the writes never finished");
	cr_expect_eq(st.pages[DP_KV_TIER_DRAM], 4 * P, "not installed before the sync");
	cr_expect_eq(dp_kv_balance_async(kv), 0, "a second session was sent out");
	settle_writebacks(kv);
	dp_kv_stats(kv, &st);
	cr_expect_eq(st.sessions[DP_KV_TIER_NVME], 1);
	cr_expect_eq(st.sessions[DP_KV_TIER_DRAM], 3);
	cr_expect_eq(dp_kv_balance_async(kv), 0, "below the high watermark after the install");
	for (int i = 0; i < 4; i++)
		check_state(kv, s[i]);
	cr_assert_eq(dp_kv_commit(kv), 0);
	dp_kv_close(kv);
}

Test(kv_io, a_session_dropped_during_its_writeback_leaves_no_slot_behind)
{
	/* the device holds two sessions: over the watermark; one out is enough */
	uint64_t P = pages_per_session();
	struct dp_kv *kv = open_kv(0, 2 * P * 65536);
	struct dp_kv_session *a, *b;
	cr_assert_eq(dp_kv_session_create(kv, "a", &a), 0);
	cr_assert_eq(dp_kv_session_create(kv, "b", &b), 0);
	turn(kv, a, 20, 1);
	turn(kv, b, 20, 2);
	cr_assert_eq(dp_kv_commit(kv), 0);
	cr_assert_eq(dp_kv_balance_async(kv), 1);
	cr_assert(dp_kv_writeback_pending(kv));
	cr_assert_eq(dp_kv_session_drop(kv, a), 0);
	settle_writebacks(kv);
	struct dp_kv_stats st;
	dp_kv_stats(kv, &st);
	cr_expect_eq(st.pages[DP_KV_TIER_NVME], 0, "the dropped session's slots are free");
	check_state(kv, b);
	cr_assert_eq(dp_kv_commit(kv), 0);
	dp_kv_close(kv);
	kv = open_kv(0, 2 * P * 65536);
	cr_expect_eq(dp_kv_session_find(kv, "a", &a), -ENOENT);
	cr_assert_eq(dp_kv_session_find(kv, "b", &b), 0);
	check_state(kv, b);
	dp_kv_close(kv);
}

Test(kv_io, an_asynchronous_demotion_of_a_session_already_on_nvme_writes_nothing)
{
	/* the device holds two sessions: over the watermark; one out is enough */
	uint64_t P = pages_per_session();
	struct dp_kv *kv = open_kv(0, 2 * P * 65536);
	struct dp_kv_session *a, *b;
	cr_assert_eq(dp_kv_session_create(kv, "a", &a), 0);
	cr_assert_eq(dp_kv_session_create(kv, "b", &b), 0);
	turn(kv, a, 20, 1);
	turn(kv, b, 20, 2);
	/* a's snapshot holds its state; a stays on the device */
	cr_assert_eq(dp_kv_session_persist(kv, a), 0);
	cr_assert_eq(dp_kv_session_tier(a), DP_KV_TIER_DEVICE);
	struct dp_kv_stats st;
	dp_kv_stats(kv, &st);
	uint64_t written = st.pages_written;
	cr_assert_eq(dp_kv_balance_async(kv), 1);
	dp_kv_stats(kv, &st);
	cr_expect_eq(st.writebacks, 0, "nothing to write: no writeback");
	cr_expect_not(dp_kv_writeback_pending(kv));
	cr_expect_eq(st.pages_written, written);
	cr_expect_eq(st.demotions, 1);
	cr_expect_eq(dp_kv_session_tier(a), DP_KV_TIER_NVME, "at once, onto its snapshot");
	cr_expect_eq(dp_kv_session_tier(b), DP_KV_TIER_DEVICE);
	cr_expect_eq(st.pages[DP_KV_TIER_DEVICE], P);
	cr_expect_eq(st.pages[DP_KV_TIER_NVME], P);
	check_state(kv, a);
	check_state(kv, b);
	cr_assert_eq(dp_kv_commit(kv), 0);
	dp_kv_close(kv);
}

/* ---- shared slots (kvcache-internal.h, "Shared slots") ---------------------------- */

static bool check_state_async(struct dp_kv *kv, struct dp_kv_session *s);

/* Evict s to NVMe and wait until its snapshot is durable (with an io engine
 * through the asynchronous writeback, without one in place). */
static void evict(struct dp_kv *kv, struct dp_kv_session *s)
{
	uint64_t pos;
	cr_assert_eq(dp_kv_session_evict_start(kv, s, &pos), 0);
	settle_writebacks(kv);
	cr_assert_eq(dp_kv_session_evict_done(kv, s, pos), 0);
	cr_assert_eq(dp_kv_session_tier(s), DP_KV_TIER_NVME);
}

struct written {
	uint64_t written, shared;
};

static struct written written_since(struct dp_kv *kv, struct written *last)
{
	struct dp_kv_stats st;
	dp_kv_stats(kv, &st);
	struct written d = { st.pages_written - last->written, st.pages_shared - last->shared };
	*last = (struct written){ st.pages_written, st.pages_shared };
	return d;
}

/* s's state checks, and again after an eviction and a reopen; closes kv */
static void check_evict_reopen_check(struct dp_kv *kv, struct dp_kv_session *s)
{
	char id[DP_KV_SESSION_ID_MAX + 1];
	snprintf(id, sizeof(id), "%s", dp_kv_session_id(s));
	check_state(kv, s);
	evict(kv, s);
	cr_assert_eq(dp_kv_commit(kv), 0);
	dp_kv_close(kv);
	kv = open_kv(0, 0);
	cr_assert_eq(dp_kv_session_find(kv, id, &s), 0);
	check_state(kv, s);
	dp_kv_close(kv);
}

/* long enough for full pages of the compressed and index streams */
#define SHARE_TOKENS 2500u

Test(kv_io, a_session_evicted_again_after_a_restore_rewrites_only_the_pages_that_changed,
     .timeout = 120)
{
	struct dp_kv *kv = open_kv(0, 0);
	struct dp_kv_session *s;
	struct written w = { 0 };
	cr_assert_eq(dp_kv_session_create(kv, "again", &s), 0);
	turn(kv, s, SHARE_TOKENS, 1);
	evict(kv, s);
	struct written first = written_since(kv, &w);
	cr_expect_eq(first.shared, 0, "nothing on NVMe to share yet");
	/* back from NVMe, one token on, out again */
	turn(kv, s, 1, 1);
	evict(kv, s);
	struct written again = written_since(kv, &w);
	cr_expect_gt(again.shared, 0, "the full pages of the growing streams are on NVMe already");
	cr_expect_lt(again.written, first.written,
		     "wrote %llu pages again of %llu (the old code wrote them all)",
		     (unsigned long long)again.written, (unsigned long long)first.written);
	cr_log_info("first eviction %llu pages; again: %llu written, %llu shared",
		    (unsigned long long)first.written, (unsigned long long)again.written,
		    (unsigned long long)again.shared);
	/* from the shared and the new slots, as a replay gives; layer by layer,
	 * each page checksummed on the io thread, or at the gate once its zero
	 * tail is zeroed (every page of this small model's state has one) */
	struct dp_kv_stats st;
	dp_kv_stats(kv, &st);
	uint64_t read0 = st.pages_read, io0 = st.pages_hashed_io, tail0 = st.pages_zero_tail;
	cr_expect(!check_state_async(kv, s));
	dp_kv_stats(kv, &st);
	cr_log_info("layered restore: %llu pages read, %llu hashed on the io thread, %llu with a zero tail",
		    (unsigned long long)(st.pages_read - read0), (unsigned long long)(st.pages_hashed_io - io0),
		    (unsigned long long)(st.pages_zero_tail - tail0));
	cr_expect_gt(st.pages_read, read0);
	cr_expect_eq(st.pages_hashed_io - io0 + st.pages_zero_tail - tail0, st.pages_read - read0);
	check_evict_reopen_check(kv, s);
}

/* Two sessions of one owner with the same history, a and b; b evicted after
 * a shares all of a's slots; then a goes, and sessions of other histories
 * take the slots freed. b must still come back whole, before and after a
 * reopen (the replay counts each slot's holders). */
static void shared_slot_outlives_its_writer(bool reopen_first)
{
	struct dp_kv *kv = open_kv(0, 0);
	struct dp_kv_session *a, *b, *o;
	struct written w = { 0 };
	cr_assert_eq(dp_kv_session_create(kv, "a", &a), 0);
	cr_assert_eq(dp_kv_session_create(kv, "b", &b), 0);
	turn(kv, a, SHARE_TOKENS, 3);
	turn(kv, b, SHARE_TOKENS, 3);
	evict(kv, a);
	struct written wa = written_since(kv, &w);
	evict(kv, b);
	struct written wb = written_since(kv, &w);
	cr_expect_eq(wb.written, 0, "b's pages are a's bytes: %llu written",
		     (unsigned long long)wb.written);
	cr_expect_eq(wb.shared, wa.written);
	struct dp_kv_stats st;
	dp_kv_stats(kv, &st);
	cr_expect_eq(st.pages[DP_KV_TIER_NVME], wa.written, "one copy on NVMe");
	if (reopen_first) {
		cr_assert_eq(dp_kv_commit(kv), 0);
		dp_kv_close(kv);
		kv = open_kv(0, 0);
		cr_assert_eq(dp_kv_session_find(kv, "a", &a), 0);
		cr_assert_eq(dp_kv_session_find(kv, "b", &b), 0);
	}
	cr_assert_eq(dp_kv_session_drop(kv, a), 0);
	dp_kv_stats(kv, &st);
	cr_expect_eq(st.pages[DP_KV_TIER_NVME], wa.written, "b still holds every slot");
	for (int i = 0; i < 2; i++) {
		char id[8];
		snprintf(id, sizeof(id), "o%d", i);
		cr_assert_eq(dp_kv_session_create(kv, id, &o), 0);
		turn(kv, o, 600, 10 + (uint32_t)i);
		evict(kv, o);
	}
	check_evict_reopen_check(kv, b);
}

Test(kv_io, a_slot_shared_by_two_sessions_outlives_the_one_that_wrote_it, .timeout = 120)
{
	shared_slot_outlives_its_writer(false);
}

Test(kv_io, a_slot_shared_before_a_reopen_is_still_held_after_it, .timeout = 120)
{
	shared_slot_outlives_its_writer(true);
}

Test(kv, a_synchronous_persist_shares_slots_too, .timeout = 120)
{
	struct dp_kv *kv = open_kv(0, 0);
	struct dp_kv_session *a, *b;
	struct written w = { 0 };
	cr_assert_eq(dp_kv_session_create(kv, "a", &a), 0);
	cr_assert_eq(dp_kv_session_create(kv, "b", &b), 0);
	turn(kv, a, 600, 4);
	turn(kv, b, 600, 4);
	cr_assert_eq(dp_kv_session_persist(kv, a), 0);
	struct written wa = written_since(kv, &w);
	cr_assert_eq(dp_kv_session_persist(kv, b), 0);
	struct written wb = written_since(kv, &w);
	cr_expect_eq(wb.written, 0);
	cr_expect_eq(wb.shared, wa.written);
	cr_assert_eq(dp_kv_session_drop(kv, a), 0);
	cr_assert_eq(dp_kv_session_demote(kv, b, DP_KV_TIER_NVME), 0);
	check_state(kv, b);
	dp_kv_close(kv);
}

Test(kv_io, sessions_of_different_owners_share_no_slot, .timeout = 120)
{
	struct dp_kv *kv = open_kv(0, 0);
	struct dp_kv_session *a, *b;
	struct written w = { 0 };
	cr_assert_eq(dp_kv_session_create_owned(kv, "alice", 1000, &a), 0);
	cr_assert_eq(dp_kv_session_create_owned(kv, "bob", 1001, &b), 0);
	turn(kv, a, 600, 5);
	turn(kv, b, 600, 5);
	evict(kv, a);
	struct written wa = written_since(kv, &w);
	evict(kv, b);
	struct written wb = written_since(kv, &w);
	cr_expect_eq(wb.shared, 0, "the same bytes, but another owner's");
	cr_expect_eq(wb.written, wa.written);
	check_state(kv, b);
	dp_kv_close(kv);
}

Test(kv_io, a_page_that_failed_its_checks_is_not_shared_again, .timeout = 120)
{
	struct dp_kv *kv = open_kv(0, 0);
	struct dp_kv_session *a, *b, *c;
	struct written w = { 0 };
	/* a and c hold the same slots; a's first page is damaged, the gate
	 * of a's restore meets it: c still holds it, but nobody shares it */
	cr_assert_eq(dp_kv_session_create(kv, "a", &a), 0);
	cr_assert_eq(dp_kv_session_create(kv, "c", &c), 0);
	turn(kv, a, 600, 6);
	turn(kv, c, 600, 6);
	evict(kv, a);
	struct written wa = written_since(kv, &w);
	evict(kv, c);
	cr_assert_eq(written_since(kv, &w).written, 0);
	cr_assert_eq(dp_kv_commit(kv), 0);
	dp_kv_close(kv);
	damage_slot(4096 + 2000, 'f'); /* the first slot's data */
	kv = open_kv(0, 0);
	cr_assert_eq(dp_kv_session_find(kv, "a", &a), 0);
	cr_expect(check_state_async(kv, a), "the damage was met at a gate");
	cr_assert_eq(dp_kv_session_create(kv, "b", &b), 0);
	turn(kv, b, 600, 6);
	written_since(kv, &w);
	evict(kv, b);
	struct written wb = written_since(kv, &w);
	cr_expect_eq(wb.written, 1, "only the damaged page is written again (%llu of %llu)",
		     (unsigned long long)wb.written, (unsigned long long)wa.written);
	cr_expect_eq(wb.shared, wa.written - 1);
	check_state(kv, b);
	dp_kv_close(kv);
}

/* A page's zero tail is not written: a short state (a few rows in each of its
 * pages) writes far less than its pages, and comes back whole, also into a
 * slot whose earlier occupant left other bytes where the tail is. */
static void zero_tails_are_not_written(bool io)
{
	struct dp_kv *kv = open_kv(0, 0);
	struct dp_kv_session *a, *b;
	struct dp_io_stats ios0, ios1;
	cr_assert_eq(dp_kv_session_create(kv, "big", &a), 0);
	turn(kv, a, 600, 7);
	cr_assert_eq(dp_kv_session_demote(kv, a, DP_KV_TIER_NVME), 0);
	/* every slot free, and full of other bytes: what a short state's
	 * unwritten tails would read back if nothing zeroed them */
	cr_assert_eq(dp_kv_session_drop(kv, a), 0);
	char path[512];
	snprintf(path, sizeof(path), "%s/slots", dir);
	int fd = open(path, O_WRONLY);
	cr_assert_geq(fd, 0);
	struct stat sb;
	cr_assert_eq(fstat(fd, &sb), 0);
	cr_assert_gt(sb.st_size, 4096);
	char *junk = malloc((size_t)sb.st_size - 4096);
	cr_assert_not_null(junk);
	memset(junk, 0xa5, (size_t)sb.st_size - 4096);
	cr_assert_eq(pwrite(fd, junk, (size_t)sb.st_size - 4096, 4096), sb.st_size - 4096);
	cr_assert_eq(fsync(fd), 0);
	close(fd);
	free(junk);
	cr_assert_eq(dp_kv_session_create(kv, "short", &b), 0);
	turn(kv, b, 3, 8);
	struct dp_kv_stats st;
	dp_kv_stats(kv, &st);
	uint64_t pages = st.pages_written;
	if (io)
		cr_assert_eq(dp_io_get_stats(engine, &ios0), 0);
	cr_assert_eq(dp_kv_session_demote(kv, b, DP_KV_TIER_NVME), 0);
	dp_kv_stats(kv, &st);
	pages = st.pages_written - pages;
	cr_assert_gt(pages, 0);
	if (io) {
		cr_assert_eq(dp_io_get_stats(engine, &ios1), 0);
		uint64_t wrote = ios1.bytes_written - ios0.bytes_written;
		cr_expect_lt(wrote, pages * (4096 + 65536) / 4,
			     "%llu bytes for %llu pages of a 3-token state (the old code wrote "
			     "every page whole)", (unsigned long long)wrote, (unsigned long long)pages);
	}
	if (io)
		cr_expect(!check_state_async(kv, b), "the tails zeroed, the pages check");
	else
		check_state(kv, b);
	dp_kv_stats(kv, &st);
	cr_expect_eq(st.corrupt_pages, 0);
	if (io)
		cr_expect_gt(st.pages_zero_tail, 0);
	dp_kv_close(kv);
}

Test(kv_io, a_pages_zero_tail_is_not_written_and_comes_back_zero)
{
	zero_tails_are_not_written(true);
}

Test(kv, a_pages_zero_tail_is_not_written_and_comes_back_zero_without_io_uring)
{
	zero_tails_are_not_written(false);
}

Test(kv, a_missing_state_directory_is_a_clear_error)
{
	char err[512] = "";
	struct dp_kv *kv;
	struct dp_kv_opts o = { .state_dir = "/nonexistent/dualpath-state", .numa_node = -1 };
	cr_expect_lt(dp_kv_open(&o, model, &kv, err, sizeof(err)), 0);
	cr_expect(strstr(err, "/nonexistent/dualpath-state") != NULL, "message: %s", err);
}

Test(kv, a_read_only_state_directory_is_a_clear_error)
{
	char err[512] = "";
	struct dp_kv *kv;
	int bound = 0;

	if (geteuid() != 0) {
		cr_assert_eq(chmod(dir, 0500), 0);
	} else {
		/* Root ignores the mode bits: make the directory read-only the
		 * way an operator's ReadOnlyPaths= would, with a read-only bind
		 * mount in a mount namespace of this test's own. */
		if (unshare(CLONE_NEWNS) != 0 || mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0 ||
		    mount(dir, dir, NULL, MS_BIND, NULL) != 0 ||
		    mount(NULL, dir, NULL, MS_BIND | MS_REMOUNT | MS_RDONLY, NULL) != 0)
			cr_skip_test("root, and no read-only bind mount here (%s)", strerror(errno));
		bound = 1;
	}
	struct dp_kv_opts o = { .state_dir = dir, .numa_node = -1 };
	cr_expect_lt(dp_kv_open(&o, model, &kv, err, sizeof(err)), 0);
	cr_expect(strstr(err, dir) != NULL, "the message names the directory: %s", err);
	if (bound)
		umount2(dir, MNT_DETACH);
	else
		chmod(dir, 0700);
}

Test(kv, a_full_nvme_tier_fails_the_persist_and_loses_nothing)
{
	char err[512] = "";
	struct dp_kv *kv;
	/* room for 2 slots: a session's state needs more */
	struct dp_kv_opts o = { .state_dir = dir, .nvme_bytes = 2 * (4096 + 65536), .numa_node = -1 };
	cr_assert_eq(dp_kv_open(&o, model, &kv, err, sizeof(err)), 0, "%s", err);
	struct dp_kv_session *s;
	cr_assert_eq(dp_kv_session_create(kv, "full", &s), 0);
	turn(kv, s, 20, 1);
	cr_expect_eq(dp_kv_session_demote(kv, s, DP_KV_TIER_NVME), -ENOSPC);
	cr_expect_eq(dp_kv_session_tier(s), DP_KV_TIER_DEVICE, "the state stays where it was");
	check_state(kv, s);
	dp_kv_close(kv);
}

Test(kv, a_filesystem_without_o_direct_falls_back_to_buffered_io)
{
	struct stat st;
	if (stat("/dev/shm", &st) != 0)
		cr_skip_test("no /dev/shm (tmpfs) here");
	char shm[64], err[512] = "", probe[96];
	snprintf(shm, sizeof(shm), "/dev/shm/dp-test-kv-XXXXXX");
	cr_assert_not_null(mkdtemp(shm));
	snprintf(probe, sizeof(probe), "%s/probe", shm);
	int pfd = open(probe, O_RDWR | O_CREAT | O_DIRECT, 0600);
	if (pfd >= 0) {
		close(pfd);
		unlink(probe);
		rmdir(shm);
		cr_skip_test("this kernel's tmpfs has O_DIRECT (6.6+): no filesystem without it here");
	}
	struct dp_kv_opts o = { .state_dir = shm, .direct_io = true, .numa_node = -1 };
	struct dp_kv *kv;
	cr_assert_eq(dp_kv_open(&o, model, &kv, err, sizeof(err)), 0, "%s", err);
	struct dp_kv_stats ks;
	dp_kv_stats(kv, &ks);
	cr_expect(!ks.direct_io, "tmpfs has no O_DIRECT: buffered, and reported");
	struct dp_kv_session *s;
	cr_assert_eq(dp_kv_session_create(kv, "shm", &s), 0);
	turn(kv, s, 10, 1);
	cr_assert_eq(dp_kv_session_demote(kv, s, DP_KV_TIER_NVME), 0);
	check_state(kv, s);
	dp_kv_close(kv);
	char cmd[128];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", shm);
	cr_expect_eq(system(cmd), 0);
}

/* ---- the DualPath restore: layer by layer, behind the forward --------------- */

/* Next-token logits of a session brought back with acquire_async, compared
 * with a fresh replay. Returns whether the state was poisoned (and then
 * recomputed) on the way. */
static bool check_state_async(struct dp_kv *kv, struct dp_kv_session *s)
{
	struct dp_v4_seq *seq, *fresh;
	float *a = malloc((size_t)V * sizeof(float)), *b = malloc((size_t)V * sizeof(float));
	uint64_t len = dp_kv_session_len(s);
	int32_t probe = 11;
	bool poisoned = false;

	cr_assert_eq(dp_kv_session_acquire_async(kv, s, &seq), 0);
	for (int attempt = 0; attempt < 2; attempt++) {
		uint64_t have = dp_v4_seq_pos(seq);
		/* feed the unfed history and the probe in one forward: the gates
		 * run inside it, layer by layer */
		uint32_t n = (uint32_t)(len - have) + 1;
		int32_t *t = malloc(n * sizeof(*t));
		memcpy(t, dp_kv_session_history(s) + have, (n - 1) * sizeof(*t));
		t[n - 1] = probe;
		struct dp_v4_batch_item it = { seq, t, n, false };
		cr_assert_eq(dp_v4_forward(model, &it, 1, a), 0);
		free(t);
		if (!dp_v4_seq_poisoned(seq))
			break;
		cr_assert_eq(attempt, 0, "poisoned twice");
		poisoned = true;
		dp_kv_session_forget_state(kv, s);
		cr_assert_eq(dp_kv_session_acquire(kv, s, &seq), 0);
	}
	cr_assert_eq(dp_kv_session_append(kv, s, &probe, 1), 0);
	dp_kv_session_release(kv, s);
	cr_assert_eq(dp_v4_seq_new(model, &fresh), 0);
	struct dp_v4_batch_item all = { fresh, dp_kv_session_history(s), (uint32_t)(len + 1), false };
	cr_assert_eq(dp_v4_forward(model, &all, 1, b), 0);
	double worst = 0, maxb = 0;
	for (uint32_t v = 0; v < V; v++) {
		worst = fmax(worst, fabs((double)a[v] - b[v]));
		maxb = fmax(maxb, fabs(b[v]));
	}
	cr_assert(worst <= 1e-4 * maxb, "session %s: async-restored state differs by %g",
		  dp_kv_session_id(s), worst);
	dp_v4_seq_free(fresh);
	free(a);
	free(b);
	return poisoned;
}

Test(kv_io, a_layer_by_layer_restore_from_nvme_gives_the_same_state)
{
	struct dp_kv *kv = open_kv(0, 0);
	struct dp_kv_session *s;
	cr_assert_eq(dp_kv_session_create(kv, "lay", &s), 0);
	turn(kv, s, 60, 1);
	cr_assert_eq(dp_kv_session_demote(kv, s, DP_KV_TIER_NVME), 0);
	cr_expect(!check_state_async(kv, s));
	struct dp_kv_stats st;
	dp_kv_stats(kv, &st);
	cr_expect_eq(st.restores, 1, "a layered restore ran");
	cr_expect_gt(st.pages_read, 0);
	cr_expect_eq(st.pages_hashed_io + st.pages_zero_tail, st.pages_read,
		     "every page read back was checksummed on the io thread (%llu of %llu), but "
		     "those with a zero tail (%llu), checksummed at the gate once it was zeroed",
		     (unsigned long long)st.pages_hashed_io, (unsigned long long)st.pages_read,
		     (unsigned long long)st.pages_zero_tail);
	dp_kv_close(kv);
}

Test(kv_io, a_layer_by_layer_restore_from_dram_gives_the_same_state)
{
	struct dp_kv *kv = open_kv(8u << 20, 0);
	struct dp_kv_session *s;
	cr_assert_eq(dp_kv_session_create(kv, "lay", &s), 0);
	turn(kv, s, 33, 2);
	cr_assert_eq(dp_kv_session_demote(kv, s, DP_KV_TIER_DRAM), 0);
	cr_expect(!check_state_async(kv, s));
	dp_kv_close(kv);
}

Test(kv_io, a_corrupt_page_met_by_a_gate_poisons_the_sequence_and_is_recomputed)
{
	struct dp_kv *kv = open_kv(0, 0);
	struct dp_kv_session *s;
	cr_assert_eq(dp_kv_session_create(kv, "c", &s), 0);
	turn(kv, s, 50, 1);
	cr_assert_eq(dp_kv_session_demote(kv, s, DP_KV_TIER_NVME), 0);
	dp_kv_close(kv);
	damage_slot(4096 + 2000, 'f');
	kv = open_kv(0, 0);
	cr_assert_eq(dp_kv_session_find(kv, "c", &s), 0);
	cr_expect(check_state_async(kv, s), "the damage was met at a gate");
	struct dp_kv_stats st;
	dp_kv_stats(kv, &st);
	cr_expect_geq(st.corrupt_pages, 1);
	dp_kv_close(kv);
}

Test(kv_io, releasing_a_session_mid_restore_waits_out_its_reads)
{
	struct dp_kv *kv = open_kv(0, 0);
	struct dp_kv_session *s;
	struct dp_v4_seq *seq;
	cr_assert_eq(dp_kv_session_create(kv, "rel", &s), 0);
	turn(kv, s, 80, 1);
	cr_assert_eq(dp_kv_session_demote(kv, s, DP_KV_TIER_NVME), 0);
	cr_assert_eq(dp_kv_session_acquire_async(kv, s, &seq), 0);
	struct dp_kv_restore_info ri;
	cr_assert_eq(dp_kv_session_restore_info(kv, s, &ri), 0);
	cr_expect(ri.active);
	cr_expect_eq(ri.layers, (uint32_t)dp_v4_model_config(model)->num_hidden_layers);
	dp_kv_session_release(kv, s); /* no forward ran: the release completes it */
	cr_assert_eq(dp_kv_session_restore_info(kv, s, &ri), 0);
	cr_expect(!ri.active);
	cr_expect_eq(dp_kv_session_tier(s), DP_KV_TIER_DEVICE);
	check_state(kv, s);
	dp_kv_close(kv);
}

/* What admission predicts with: the bytes a restore from NVMe still has to
 * read, in total and layer by layer from the same walk, agree; a buffer
 * shorter than the model's layers is refused. */
Test(kv_io, a_restores_bytes_left_by_layer_add_up_to_its_bytes_left)
{
	struct dp_kv *kv = open_kv(0, 0);
	struct dp_kv_session *s;
	struct dp_v4_seq *seq;
	uint32_t layers = (uint32_t)dp_v4_model_config(model)->num_hidden_layers;
	uint64_t lb[64];
	cr_assert_leq(layers, 64);
	cr_assert_eq(dp_kv_session_create(kv, "lb", &s), 0);
	turn(kv, s, 80, 1);
	cr_assert_eq(dp_kv_session_demote(kv, s, DP_KV_TIER_NVME), 0);
	cr_assert_eq(dp_kv_session_acquire_async(kv, s, &seq), 0);
	struct dp_kv_restore_info ri, ri2;
	cr_assert_eq(dp_kv_session_restore_layers(kv, s, &ri, lb, layers), (int)layers);
	cr_assert_eq(dp_kv_session_restore_info(kv, s, &ri2), 0);
	cr_expect(ri.active);
	uint64_t sum = 0;
	uint32_t with_bytes = 0;
	for (uint32_t l = 0; l < layers; l++) {
		sum += lb[l];
		with_bytes += lb[l] > 0;
	}
	/* the io thread may finish reads between the two calls: never more */
	cr_expect_geq(ri.bytes_left, ri2.bytes_left);
	cr_expect_eq(sum, ri.bytes_left, "layers add up to %llu, bytes left %llu",
		     (unsigned long long)sum, (unsigned long long)ri.bytes_left);
	cr_expect_gt(ri.layers_ready < layers ? with_bytes : 1, 0,
		     "a layer still to come has bytes to read");
	cr_expect_eq(dp_kv_session_restore_layers(kv, s, &ri, lb, layers - 1), -EINVAL);
	cr_expect_eq(dp_kv_session_restore_layers(kv, s, &ri, NULL, layers), -EINVAL);
	dp_kv_session_release(kv, s);
	cr_expect_eq(dp_kv_session_restore_layers(kv, s, &ri, lb, layers), 0, "no restore runs");
	cr_expect(!ri.active);
	check_state(kv, s);
	dp_kv_close(kv);
}

/* ---- CSA entries in host memory (model/v4.h, dp_v4_model_set_csa_host) ---- */

/* The CSA layer's compressed entries live in host pages: they move through
 * the tiers with the rest of the state (a host copy instead of a download to
 * DRAM, straight into host pages from NVMe) and the state stays right. */
Test(kv, csa_entries_in_host_memory_round_trip_through_every_tier)
{
	cr_assert_eq(dp_v4_model_set_csa_host(model, true, NULL), 0);
	round_trip_body();
}

Test(kv_io, csa_entries_in_host_memory_round_trip_through_every_tier_with_io_uring)
{
	cr_assert_eq(dp_v4_model_set_csa_host(model, true, NULL), 0);
	round_trip_body();
}

Test(kv_io, csa_entries_in_host_memory_restore_layer_by_layer_from_nvme_and_dram)
{
	cr_assert_eq(dp_v4_model_set_csa_host(model, true, NULL), 0);
	struct dp_kv *kv = open_kv(8u << 20, 0);
	struct dp_kv_session *s;
	cr_assert_eq(dp_kv_session_create(kv, "lay", &s), 0);
	turn(kv, s, 70, 1);
	cr_assert_eq(dp_kv_session_demote(kv, s, DP_KV_TIER_NVME), 0);
	cr_expect(!check_state_async(kv, s));
	turn(kv, s, 30, 2);
	cr_assert_eq(dp_kv_session_demote(kv, s, DP_KV_TIER_DRAM), 0);
	cr_expect(!check_state_async(kv, s));
	struct dp_kv_stats st;
	dp_kv_stats(kv, &st);
	cr_expect_eq(st.restores, 2);
	dp_kv_close(kv);
}

/* The device budget counts device pages only: the host-resident ones are
 * reported apart, and the device tier holds that many pages fewer than in
 * the device mode. */
Test(kv, csa_entries_in_host_memory_are_outside_the_device_budget)
{
	uint64_t dev_pages[2], host_bytes[2];
	for (int host = 0; host < 2; host++) {
		cr_assert_eq(dp_v4_model_set_csa_host(model, host, NULL), 0);
		struct dp_kv *kv = open_kv(0, 0);
		struct dp_kv_session *s;
		cr_assert_eq(dp_kv_session_create(kv, "acct", &s), 0);
		turn(kv, s, 200, 1);
		struct dp_kv_stats st;
		dp_kv_stats(kv, &st);
		dev_pages[host] = st.pages[DP_KV_TIER_DEVICE];
		host_bytes[host] = st.host_state_bytes;
		cr_assert_eq(dp_kv_session_drop(kv, s), 0);
		dp_kv_stats(kv, &st);
		cr_expect_eq(st.host_state_bytes, 0, "dropping the session frees its host pages");
		dp_kv_close(kv);
	}
	cr_expect_eq(host_bytes[0], 0);
	cr_expect_gt(host_bytes[1], 0);
	cr_expect_eq(dev_pages[0] - dev_pages[1], host_bytes[1] / DP_V4_PAGE_BYTES);
}

/* ---- the state directory is used only when it is this process's own -------- */

static void write_file(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");
	cr_assert_not_null(f, "%s: %s", path, strerror(errno));
	fputs(text, f);
	cr_assert_eq(fclose(f), 0);
}

static bool file_says(const char *path, const char *text)
{
	char buf[256] = "";
	FILE *f = fopen(path, "r");
	if (!f)
		return false;
	size_t n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = '\0';
	return strcmp(buf, text) == 0;
}

Test(kv, a_state_file_symlink_is_refused_and_its_target_left_untouched)
{
	static const char *const names[] = { "journal", "slots" };
	for (int i = 0; i < 2; i++) {
		char victim[300], link[300], err[512] = "";
		snprintf(victim, sizeof(victim), "%s.victim", dir);
		snprintf(link, sizeof(link), "%s/%s", dir, names[i]);
		write_file(victim, "someone else's file\n");
		unlink(link); /* the other file's round may have created it */
		cr_assert_eq(symlink(victim, link), 0);
		struct dp_kv_opts o = { .state_dir = dir, .numa_node = -1 };
		struct dp_kv *kv = NULL;
		cr_expect_lt(dp_kv_open(&o, model, &kv, err, sizeof(err)), 0, "%s: opened through the link",
			     names[i]);
		cr_expect(strstr(err, "symbolic link") && strstr(err, names[i]), "message: %s", err);
		cr_expect(file_says(victim, "someone else's file\n"), "%s: the link's target was changed",
			  names[i]);
		unlink(link);
		unlink(victim);
	}
}

Test(kv, a_state_directory_writable_by_others_is_refused_with_a_message)
{
	static const mode_t modes[] = { 0777, 0770, 0702 };
	for (int i = 0; i < 3; i++) {
		char err[512] = "", want[16];
		cr_assert_eq(chmod(dir, modes[i]), 0);
		struct dp_kv_opts o = { .state_dir = dir, .numa_node = -1 };
		struct dp_kv *kv = NULL;
		cr_expect_eq(dp_kv_open(&o, model, &kv, err, sizeof(err)), -EPERM, "mode %04o",
			     (unsigned)modes[i]);
		snprintf(want, sizeof(want), "mode %04o", (unsigned)modes[i]);
		cr_expect(strstr(err, dir) && strstr(err, want), "names directory and mode: %s", err);
	}
	cr_assert_eq(chmod(dir, 0750), 0);
	struct dp_kv *kv = open_kv(0, 0); /* group-readable is fine */
	dp_kv_close(kv);
}

Test(kv, a_state_directory_owned_by_another_user_is_refused_with_a_message)
{
	if (geteuid() != 0)
		cr_skip_test("needs root to give the directory away");
	cr_assert_eq(chown(dir, 65534, 65534), 0);
	char err[512] = "";
	struct dp_kv_opts o = { .state_dir = dir, .numa_node = -1 };
	struct dp_kv *kv = NULL;
	cr_expect_eq(dp_kv_open(&o, model, &kv, err, sizeof(err)), -EPERM);
	cr_expect(strstr(err, dir) && strstr(err, "uid 65534"), "names directory and owner: %s", err);
	char journal[300];
	snprintf(journal, sizeof(journal), "%s/journal", dir);
	cr_expect_neq(access(journal, F_OK), 0, "nothing was created in it");
}

/* ---- a damaged journal: everything that checks comes back, losses are named -- */

/* The journal's records as the file has them (kvcache/journal.h: u32
 * magic, u16 type, u16 key check, u32 length, payload, u64 checksum). */
struct jrec {
	long off;
	uint32_t len;
	uint16_t type;
	char key[256];
};

static void *read_whole(const char *path, size_t *ret_len)
{
	FILE *f = fopen(path, "rb");
	cr_assert_not_null(f, "%s", path);
	cr_assert_eq(fseek(f, 0, SEEK_END), 0);
	long n = ftell(f);
	rewind(f);
	void *p = malloc((size_t)n + 1);
	cr_assert_eq(fread(p, 1, (size_t)n, f), (size_t)n);
	fclose(f);
	*ret_len = (size_t)n;
	return p;
}

static int journal_records(struct jrec *out, int max)
{
	char path[512];
	size_t n;
	snprintf(path, sizeof(path), "%s/journal", dir);
	uint8_t *m = read_whole(path, &n);
	int k = 0;
	for (size_t off = 0; off + 12 <= n && k < max; k++) {
		uint32_t len;
		uint16_t type, klen;
		memcpy(&type, m + off + 4, 2);
		memcpy(&len, m + off + 8, 4);
		memcpy(&klen, m + off + 12, 2);
		out[k] = (struct jrec){ (long)off, len, type, "" };
		memcpy(out[k].key, m + off + 14, klen < 255 ? klen : 255);
		off += 12 + len + 8;
	}
	free(m);
	return k;
}

/* The record of `type` for `key`, the nth (0-based) of them. */
static struct jrec find_record(uint16_t type, const char *key, int nth)
{
	static struct jrec r[512];
	int n = journal_records(r, 512);
	for (int i = 0; i < n; i++)
		if (r[i].type == type && !strcmp(r[i].key, key) && nth-- == 0)
			return r[i];
	cr_assert_fail("no record %u of %s", type, key);
	return r[0];
}

/* XOR bytes [off, off + n) of the journal with x (0: zero them). */
static void damage_journal(long off, size_t n, uint8_t x)
{
	char path[512];
	snprintf(path, sizeof(path), "%s/journal", dir);
	int fd = open(path, O_RDWR);
	cr_assert_geq(fd, 0);
	for (size_t i = 0; i < n; i++) {
		uint8_t c;
		cr_assert_eq(pread(fd, &c, 1, off + (long)i), 1);
		c = x ? c ^ x : 0;
		cr_assert_eq(pwrite(fd, &c, 1, off + (long)i), 1);
	}
	close(fd);
}

static int32_t htok(int sess, uint32_t i)
{
	return tok(i, (uint32_t)sess * 7 + 3);
}

/* n sessions "j00".., `rounds` committed turns each of 3 tokens, one
 * HISTORY record per session and turn, interleaved. */
static void write_sessions(int n, int rounds)
{
	struct dp_kv *kv = open_kv(0, 0);
	for (int r = 0; r < rounds; r++)
		for (int i = 0; i < n; i++) {
			char id[8];
			struct dp_kv_session *s;
			snprintf(id, sizeof(id), "j%02d", i);
			if (r == 0)
				cr_assert_eq(dp_kv_session_create(kv, id, &s), 0);
			else
				cr_assert_eq(dp_kv_session_find(kv, id, &s), 0);
			int32_t t[3];
			for (uint32_t k = 0; k < 3; k++)
				t[k] = htok(i, (uint32_t)(3 * r) + k);
			cr_assert_eq(dp_kv_session_append(kv, s, t, 3), 0);
			cr_assert_eq(dp_kv_commit(kv), 0);
		}
	dp_kv_close(kv);
}

/* Every session but `lost` (-1: none) is back whole; `lost` is lost. */
static void expect_sessions(struct dp_kv *kv, int n, int rounds, int lost)
{
	cr_expect_eq(dp_kv_session_count(kv), (size_t)n);
	for (int i = 0; i < n; i++) {
		char id[8];
		struct dp_kv_session *s;
		snprintf(id, sizeof(id), "j%02d", i);
		cr_assert_eq(dp_kv_session_find(kv, id, &s), 0, "%s is gone", id);
		if (i == lost) {
			cr_expect(dp_kv_session_lost(kv, id), "%s is reported lost", id);
			cr_expect_eq(dp_kv_session_len(s), 0);
			continue;
		}
		cr_expect(!dp_kv_session_lost(kv, id), "%s is whole, not lost", id);
		cr_assert_eq(dp_kv_session_len(s), 3 * (uint64_t)rounds, "%s", id);
		for (uint32_t k = 0; k < 3 * (uint32_t)rounds; k++)
			cr_assert_eq(dp_kv_session_history(s)[k], htok(i, k), "%s, token %u", id, k);
	}
}

Test(kv, a_flipped_byte_in_a_middle_journal_record_loses_only_its_session)
{
	write_sessions(64, 2);
	/* j20's second turn, in the middle of 128 records: a token byte */
	struct jrec r = find_record(1, "j20", 1);
	damage_journal(r.off + 12 + 2 + 3 + 8 + 4 + 5, 1, 0x5a);
	char path[512];
	size_t dlen;
	snprintf(path, sizeof(path), "%s/journal", dir);
	void *damaged = read_whole(path, &dlen);

	struct dp_kv *kv = open_kv(0, 0);
	expect_sessions(kv, 64, 2, 20);
	struct dp_kv_session *s;
	struct dp_v4_seq *seq;
	cr_assert_eq(dp_kv_session_find(kv, "j20", &s), 0);
	cr_expect_eq(dp_kv_session_acquire(kv, s, &seq), -ENODATA, "not served as an empty context");
	cr_expect_eq(dp_kv_session_acquire_async(kv, s, &seq), -ENODATA);
	cr_expect_eq(dp_kv_session_append(kv, s, (int32_t[]){ 1 }, 1), -ENODATA);
	cr_expect_eq(dp_kv_session_create(kv, "j20", &s), -EEXIST);
	struct dp_kv_stats st;
	dp_kv_stats(kv, &st);
	cr_expect_eq(st.journal_damaged_records, 1);
	cr_expect_eq(st.journal_damaged_bytes, 12 + r.len + 8, "the record's bytes");
	cr_expect_eq(st.journal_repaired_records, 0);
	cr_expect_eq(st.journal_sessions_lost, 1);
	cr_expect_eq(st.lost_sessions, 1);
	/* the damaged journal as it was, kept aside */
	struct dp_kv_recovery rec;
	dp_kv_recovery(kv, &rec);
	cr_assert(!strncmp(rec.journal_copy, "journal.damaged-", 16), "kept as '%s'", rec.journal_copy);
	char kept[512];
	size_t klen;
	snprintf(kept, sizeof(kept), "%s/%s", dir, rec.journal_copy);
	void *copy = read_whole(kept, &klen);
	cr_expect(klen == dlen && !memcmp(copy, damaged, dlen), "the copy is the damaged file");
	free(copy);
	free(damaged);
	cr_assert_eq(dp_kv_session_find(kv, "j21", &s), 0);
	check_state(kv, s); /* a recovered history serves */
	cr_assert_eq(dp_kv_commit(kv), 0);
	dp_kv_close(kv);

	/* the journal was rewritten: the loss stays known, the damage is gone */
	kv = open_kv(0, 0);
	cr_expect(dp_kv_session_lost(kv, "j20"), "still lost after a restart");
	dp_kv_stats(kv, &st);
	cr_expect_eq(st.journal_damaged_records, 0);
	cr_expect_eq(st.journal_sessions_lost, 0, "counted once, when found");
	cr_expect_eq(st.lost_sessions, 1);
	dp_kv_recovery(kv, &rec);
	cr_expect_str_eq(rec.journal_copy, "");
	cr_assert_eq(dp_kv_compact(kv), 0);
	dp_kv_close(kv);

	/* dropping it is how its client starts over, for good */
	kv = open_kv(0, 0);
	cr_expect(dp_kv_session_lost(kv, "j20"), "still lost after a compaction");
	cr_assert_eq(dp_kv_session_find(kv, "j20", &s), 0);
	cr_assert_eq(dp_kv_session_drop(kv, s), 0);
	cr_expect(!dp_kv_session_lost(kv, "j20"));
	cr_assert_eq(dp_kv_session_create(kv, "j20", &s), 0);
	turn(kv, s, 4, 9);
	cr_assert_eq(dp_kv_commit(kv), 0);
	dp_kv_close(kv);
	kv = open_kv(0, 0);
	cr_expect(!dp_kv_session_lost(kv, "j20"));
	cr_assert_eq(dp_kv_session_find(kv, "j20", &s), 0);
	cr_expect_eq(dp_kv_session_len(s), 4);
	dp_kv_close(kv);
}

Test(kv, a_damaged_key_in_a_sessions_last_record_still_names_the_session)
{
	write_sessions(16, 2);
	/* j07's last record, nothing of j07 after it: a byte of the key */
	struct jrec r = find_record(1, "j07", 1);
	damage_journal(r.off + 12 + 2 + 1, 1, 0x01); /* "j07" -> "j17": another valid id */
	struct dp_kv *kv = open_kv(0, 0);
	expect_sessions(kv, 16, 2, 7);
	struct dp_kv_stats st;
	dp_kv_stats(kv, &st);
	cr_expect_eq(st.journal_sessions_lost, 1, "j17 is not blamed");
	dp_kv_close(kv);
}

Test(kv, a_wiped_record_is_found_by_the_gap_in_its_sessions_history)
{
	write_sessions(16, 3);
	/* every byte of j05's first record: nothing names it */
	struct jrec r = find_record(1, "j05", 0);
	damage_journal(r.off, 12 + r.len + 8, 0);
	struct dp_kv *kv = open_kv(0, 0);
	expect_sessions(kv, 16, 3, 5);
	struct dp_kv_stats st;
	dp_kv_stats(kv, &st);
	cr_expect_eq(st.journal_damaged_records, 1);
	cr_expect_eq(st.journal_sessions_lost, 1);
	dp_kv_close(kv);
}

Test(kv, a_damaged_type_or_length_field_is_repaired_and_loses_nothing)
{
	write_sessions(8, 2);
	struct jrec a = find_record(1, "j02", 0), b = find_record(1, "j05", 1);
	damage_journal(a.off + 4, 1, 0x5a);  /* type */
	damage_journal(b.off + 9, 1, 0x11);  /* length */
	struct dp_kv *kv = open_kv(0, 0);
	expect_sessions(kv, 8, 2, -1);
	struct dp_kv_stats st;
	dp_kv_stats(kv, &st);
	cr_expect_eq(st.journal_repaired_records, 2);
	cr_expect_eq(st.journal_damaged_records, 0);
	cr_expect_eq(st.journal_sessions_lost, 0);
	struct dp_kv_recovery rec;
	dp_kv_recovery(kv, &rec);
	cr_expect_neq(rec.journal_copy[0], '\0', "the damaged file is kept all the same");
	dp_kv_close(kv);
}

Test(kv, a_damaged_snapshot_record_costs_the_state_not_the_session)
{
	struct dp_kv *kv = open_kv(0, 0);
	struct dp_kv_session *s;
	cr_assert_eq(dp_kv_session_create(kv, "snap", &s), 0);
	turn(kv, s, 30, 1);
	cr_assert_eq(dp_kv_session_demote(kv, s, DP_KV_TIER_NVME), 0);
	turn(kv, s, 5, 2);
	cr_assert_eq(dp_kv_commit(kv), 0);
	dp_kv_close(kv);
	struct jrec r = find_record(2, "snap", 0);
	damage_journal(r.off + 12 + 2 + 4 + 8 + 4 + 3, 1, 0x5a); /* a page's slot number */
	kv = open_kv(0, 0);
	cr_assert_eq(dp_kv_session_find(kv, "snap", &s), 0);
	cr_expect(!dp_kv_session_lost(kv, "snap"));
	cr_expect_eq(dp_kv_session_len(s), 35);
	cr_expect_eq(dp_kv_session_tier(s), DP_KV_TIER_NONE, "recomputed from the history");
	check_state(kv, s);
	struct dp_kv_stats st;
	dp_kv_stats(kv, &st);
	cr_expect_eq(st.journal_damaged_records, 1);
	cr_expect_eq(st.journal_sessions_lost, 0);
	cr_expect_eq(st.pages[DP_KV_TIER_NVME], 0, "no slot is claimed by the lost snapshot");
	dp_kv_close(kv);
}

Test(kv, a_damaged_drop_record_still_drops_the_session)
{
	write_sessions(4, 1);
	struct dp_kv *kv = open_kv(0, 0);
	struct dp_kv_session *s;
	cr_assert_eq(dp_kv_session_find(kv, "j01", &s), 0);
	cr_assert_eq(dp_kv_session_drop(kv, s), 0);
	dp_kv_close(kv);
	struct jrec r = find_record(3, "j01", 0);
	damage_journal(r.off + 12 + 3, 1, 0x20); /* the key's first copy: "j01" -> "j11" */
	kv = open_kv(0, 0);
	cr_expect_eq(dp_kv_session_find(kv, "j01", &s), -ENOENT, "dropped all the same");
	cr_expect(!dp_kv_session_lost(kv, "j01"));
	cr_expect_eq(dp_kv_session_count(kv), 3);
	struct dp_kv_stats st;
	dp_kv_stats(kv, &st);
	cr_expect_eq(st.journal_damaged_records, 1);
	cr_expect_eq(st.journal_sessions_lost, 0);
	dp_kv_close(kv);
}

Test(kv, a_damaged_last_record_of_the_journal_is_reported_not_cut_as_a_torn_tail)
{
	write_sessions(4, 2);
	struct jrec r = find_record(1, "j03", 1); /* the file's last record */
	damage_journal(r.off + 12 + r.len - 12, 1, 0x5a); /* a byte of its body's end */
	struct dp_kv *kv = open_kv(0, 0);
	expect_sessions(kv, 4, 2, 3);
	struct dp_kv_stats st;
	dp_kv_stats(kv, &st);
	cr_expect_eq(st.journal_damaged_records, 1);
	cr_expect_eq(st.journal_sessions_lost, 1);
	dp_kv_close(kv);
}

/* ---- owners ----------------------------------------------------------------- */

Test(kv, a_sessions_owner_survives_a_reopen_and_a_compaction)
{
	static const struct { const char *id; uint32_t owner; } want[] = {
		{ "alice", 1000 }, { "root", 0 }, { "nobody", DP_KV_OWNER_NONE } };
	struct dp_kv *kv = open_kv(0, 0);
	struct dp_kv_session *s;
	cr_assert_eq(dp_kv_session_create_owned(kv, "alice", 1000, &s), 0);
	cr_assert_eq(dp_kv_session_create_owned(kv, "root", 0, &s), 0);
	cr_assert_eq(dp_kv_session_create(kv, "nobody", &s), 0);
	cr_expect_eq(dp_kv_session_create_owned(kv, "alice", 1001, &s), -EEXIST);
	for (int round = 0; round < 2; round++)
		for (int i = 0; i < 3; i++) {
			cr_assert_eq(dp_kv_session_find(kv, want[i].id, &s), 0);
			turn(kv, s, 4, (uint32_t)(round * 3 + i));
			cr_assert_eq(dp_kv_commit(kv), 0);
		}
	for (int pass = 0; pass < 3; pass++) {
		for (int i = 0; i < 3; i++) {
			cr_assert_eq(dp_kv_session_find(kv, want[i].id, &s), 0);
			cr_expect_eq(dp_kv_session_owner(s), want[i].owner, "pass %d: %s", pass, want[i].id);
			cr_expect_eq(dp_kv_session_len(s), 8);
		}
		if (pass == 1)
			cr_assert_eq(dp_kv_compact(kv), 0); /* the reopen below reads RESET records */
		dp_kv_close(kv);
		kv = open_kv(0, 0);
	}
	dp_kv_close(kv);
}

/* A record as builds before the key check wrote it: check 0, no key copy. */
static void put_old_record(FILE *f, uint16_t type, const void *payload, uint32_t len)
{
	uint8_t hdr[12];
	uint32_t magic = 0x314a5044u;
	uint16_t zero = 0;
	memcpy(hdr, &magic, 4);
	memcpy(hdr + 4, &type, 2);
	memcpy(hdr + 6, &zero, 2);
	memcpy(hdr + 8, &len, 4);
	uint64_t sum = XXH3_64bits_withSeed(payload, len, ((uint64_t)type << 32) | len);
	cr_assert_eq(fwrite(hdr, 1, 12, f), 12);
	cr_assert_eq(fwrite(payload, 1, len, f), len);
	cr_assert_eq(fwrite(&sum, 1, 8, f), 8);
}

/* An old HISTORY (or RESET) payload: id, new length, n, tokens. */
static uint32_t old_history(uint8_t *p, const char *id, uint64_t new_len, uint32_t n, uint32_t first)
{
	uint16_t k = (uint16_t)strlen(id);
	memcpy(p, &k, 2);
	memcpy(p + 2, id, k);
	memcpy(p + 2 + k, &new_len, 8);
	memcpy(p + 10 + k, &n, 4);
	for (uint32_t i = 0; i < n; i++) {
		int32_t t = tok(first + i, 5);
		memcpy(p + 14 + k + 4 * i, &t, 4);
	}
	return 14u + k + 4 * n;
}

/* A journal of the format before this one: old1 (3 + 2 tokens), old2
 * (dropped), old3 (a compacted RESET of 4). */
static void write_old_journal(void)
{
	char path[512];
	uint8_t p[256];
	snprintf(path, sizeof(path), "%s/journal", dir);
	FILE *f = fopen(path, "wb");
	cr_assert_not_null(f);
	put_old_record(f, 4, p, old_history(p, "old3", 4, 4, 0));
	put_old_record(f, 1, p, old_history(p, "old1", 3, 3, 0));
	put_old_record(f, 1, p, old_history(p, "old2", 2, 2, 0));
	put_old_record(f, 1, p, old_history(p, "old1", 5, 2, 3));
	uint16_t k = 4;
	memcpy(p, &k, 2);
	memcpy(p + 2, "old2", 4);
	put_old_record(f, 3, p, 6);
	cr_assert_eq(fclose(f), 0);
}

Test(kv, an_old_format_journal_still_replays_and_its_sessions_have_no_owner)
{
	write_old_journal();
	for (int pass = 0; pass < 2; pass++) {
		struct dp_kv *kv = open_kv(0, 0);
		struct dp_kv_session *s;
		struct dp_kv_stats st;
		dp_kv_stats(kv, &st);
		cr_expect_eq(st.journal_damaged_records + st.journal_repaired_records, 0, "pass %d", pass);
		cr_expect_eq(dp_kv_session_count(kv), 2, "pass %d", pass);
		cr_expect_eq(dp_kv_session_find(kv, "old2", &s), -ENOENT);
		cr_assert_eq(dp_kv_session_find(kv, "old3", &s), 0);
		cr_expect_eq(dp_kv_session_len(s), 4);
		cr_assert_eq(dp_kv_session_find(kv, "old1", &s), 0);
		cr_expect_eq(dp_kv_session_owner(s), DP_KV_OWNER_NONE);
		cr_assert_eq(dp_kv_session_len(s), 5 + 4 * (uint64_t)pass);
		for (uint32_t i = 0; i < 5; i++)
			cr_expect_eq(dp_kv_session_history(s)[i], tok(i, 5), "old1, token %u", i);
		if (pass == 0) {
			/* new records after old ones */
			turn(kv, s, 4, 8);
			cr_assert_eq(dp_kv_commit(kv), 0);
		}
		dp_kv_close(kv);
	}
}

Test(kv, a_damaged_old_format_record_is_blamed_on_the_id_its_bytes_hold)
{
	write_old_journal();
	/* old1's last record, a token: no key check, no copy; the id at its
	 * start is what is left to name it (and nothing of old1 follows) */
	struct jrec r = find_record(1, "old1", 1);
	damage_journal(r.off + 12 + 2 + 4 + 8 + 4 + 1, 1, 0x5a);
	struct dp_kv *kv = open_kv(0, 0);
	cr_expect(dp_kv_session_lost(kv, "old1"));
	cr_expect(!dp_kv_session_lost(kv, "old3"));
	struct dp_kv_stats st;
	dp_kv_stats(kv, &st);
	cr_expect_eq(st.journal_damaged_records, 1);
	cr_expect_eq(st.journal_sessions_lost, 1);
	dp_kv_close(kv);
}

/* found by tests/fuzz/fuzz_kv: a RESET record (a whole history, written by
 * a compaction) was taken at its word for the history's length whatever
 * tokens it held: new length 2^45 with 2 tokens asked realloc for 128 TiB,
 * and 1000 with 2 made a session of 998 tokens of uninitialised memory. */
Test(kv, a_reset_record_whose_length_is_not_its_tokens_is_refused)
{
	static const uint64_t lens[] = { 1000, 1ull << 45 };
	for (size_t i = 0; i < DP_ARRAY_SIZE(lens); i++) {
		char path[512], err[512] = "";
		uint8_t p[256];
		snprintf(path, sizeof(path), "%s/journal", dir);
		FILE *f = fopen(path, "wb");
		cr_assert_not_null(f);
		put_old_record(f, 4, p, old_history(p, "whole", 2, 2, 0));
		put_old_record(f, 4, p, old_history(p, "short", lens[i], 2, 0));
		cr_assert_eq(fclose(f), 0);
		struct dp_kv_opts o = { .state_dir = dir, .numa_node = -1 };
		struct dp_kv *kv;
		int ret = dp_kv_open(&o, model, &kv, err, sizeof(err));
		cr_expect_eq(ret, -EBADMSG, "new length %llu with 2 tokens",
			     (unsigned long long)lens[i]);
		if (ret == 0)
			dp_kv_close(kv);
		cr_expect(strstr(err, "journal") && strstr(err, "offset"), "%s", err);
	}
}

/* found by tests/fuzz/fuzz_kv: replay claimed a snapshot's slots by growing
 * the slot file to reach them, 64 slots (4.25 MiB) at a time, so a snapshot
 * naming a slot past the file's end (a file that lost its tail; a record
 * naming slot 2^40) had the open allocate up to the disk's size. Its pages
 * are not there: the snapshot is forgotten and the state recomputed. */
Test(kv, a_snapshot_naming_slots_past_the_slot_files_end_is_forgotten_and_grows_nothing)
{
	/* before the fix, this stopped the growth at 64 MiB, not a full disk */
	struct rlimit rl = { 64 << 20, 64 << 20 };
	signal(SIGXFSZ, SIG_IGN);
	cr_assert_eq(setrlimit(RLIMIT_FSIZE, &rl), 0);
	char path[512];
	uint8_t p[256];
	snprintf(path, sizeof(path), "%s/journal", dir);
	FILE *f = fopen(path, "wb");
	cr_assert_not_null(f);
	put_old_record(f, 1, p, old_history(p, "far", 3, 3, 0));
	/* a SNAPSHOT at 3 of two pages: slot 0, and slot 2^40 */
	uint16_t k = 3;
	uint64_t pos = 3, slots[2] = { 0, 1ull << 40 };
	uint32_t n = 2, len = 2 + 3 + 8 + 4;
	memcpy(p, &k, 2);
	memcpy(p + 2, "far", 3);
	memcpy(p + 5, &pos, 8);
	memcpy(p + 13, &n, 4);
	for (int i = 0; i < 2; i++) {
		memset(p + len, 0, 7); /* layer, kind, index */
		memcpy(p + len + 7, &slots[i], 8);
		memset(p + len + 15, 0, 8); /* page checksum */
		len += 23;
	}
	put_old_record(f, 2, p, len);
	cr_assert_eq(fclose(f), 0);

	struct dp_kv *kv = open_kv(0, 0);
	struct dp_kv_session *s;
	struct stat st;
	snprintf(path, sizeof(path), "%s/slots", dir);
	cr_assert_eq(stat(path, &st), 0);
	cr_expect_eq(st.st_size, 4096, "the slot file holds its header only: %lld bytes",
		     (long long)st.st_size);
	cr_assert_eq(dp_kv_session_find(kv, "far", &s), 0);
	cr_expect(!dp_kv_session_lost(kv, "far"));
	cr_expect_eq(dp_kv_session_tier(s), DP_KV_TIER_NONE, "tier %s",
		     dp_kv_tier_name(dp_kv_session_tier(s)));
	cr_assert_eq(dp_kv_session_len(s), 3);
	struct dp_kv_stats kst;
	dp_kv_stats(kv, &kst);
	cr_expect_eq(kst.corrupt_pages, 2, "the snapshot's pages count as failed checks");
	check_state(kv, s);
	dp_kv_close(kv);
}

Test(kv_io, a_slot_file_that_fails_to_open_leaves_the_engines_other_files_registered)
{
	char other[300], link[300];
	snprintf(other, sizeof(other), "%s/other", dir);
	int fd = open(other, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	cr_assert_geq(fd, 0);
	uint32_t idx;
	cr_assert_eq(dp_io_file_add(engine, fd, &idx), 0);
	snprintf(link, sizeof(link), "%s/slots", dir);
	cr_assert_eq(symlink(other, link), 0);
	char err[512] = "";
	struct dp_kv_opts o = { .state_dir = dir, .numa_node = -1, .io = engine };
	struct dp_kv *kv = NULL;
	cr_assert_lt(dp_kv_open(&o, model, &kv, err, sizeof(err)), 0);
	struct dp_io_file_info fi;
	cr_expect_eq(dp_io_file_info(engine, idx, &fi), 0, "file %u was unregistered", idx);
	dp_io_file_remove(engine, idx);
	close(fd);
}

Test(kv, an_empty_sessions_snapshot_does_not_stop_the_next_open)
{
	/* a session made and acquired but never given a token (a request
	 * that failed after creating it), persisted at shutdown */
	struct dp_kv *kv = open_kv(0, 0);
	struct dp_kv_session *s;
	struct dp_v4_seq *seq;
	cr_assert_eq(dp_kv_session_create(kv, "empty", &s), 0);
	cr_assert_eq(dp_kv_session_acquire(kv, s, &seq), 0);
	dp_kv_session_release(kv, s);
	cr_assert_eq(dp_kv_session_persist(kv, s), 0);
	dp_kv_close(kv);
	char err[512] = "";
	struct dp_kv_opts o = { .state_dir = dir, .numa_node = -1 };
	cr_assert_eq(dp_kv_open(&o, model, &kv, err, sizeof(err)), 0, "%s", err);
	cr_expect_eq(dp_kv_session_find(kv, "empty", &s), -ENOENT, "it had nothing to keep");
	dp_kv_close(kv);
}
