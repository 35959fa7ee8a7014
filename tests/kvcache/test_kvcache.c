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
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#include "io/io.h"
#include "kvcache/kvcache.h"

static char dir[256];
static struct dp_io *engine; /* the kv_io suite runs slot I/O through io_uring */
static struct dp_gpu *gpu;
static struct dp_v4_model *model;
static uint32_t V;

static void setup(void)
{
	char err[512] = "", path[512];
	const char *root = getenv("DP_TEST_PARITY");
	snprintf(dir, sizeof(dir), "/var/tmp/dp-test-kv-XXXXXX");
	if (!mkdtemp(dir)) {
		snprintf(dir, sizeof(dir), "/tmp/dp-test-kv-XXXXXX");
		cr_assert_not_null(mkdtemp(dir));
	}
	snprintf(path, sizeof(path), "%s/alt", root ? root : "tests/model/parity");
	cr_assert_eq(dp_gpu_new(DP_GPU_CPU, NULL, &gpu, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(dp_v4_model_load(gpu, path, &model, err, sizeof(err)), 0, "%s", err);
	V = (uint32_t)dp_v4_model_config(model)->vocab_size;
}

static void teardown(void)
{
	char cmd[300];
	dp_v4_model_free(model);
	dp_gpu_free(gpu);
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	cr_expect_eq(system(cmd), 0);
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
	cr_expect_eq(dp_kv_session_tier(s), DP_KV_TIER_NVME);
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

Test(kv, a_damaged_slot_file_header_is_refused_with_a_message)
{
	struct dp_kv *kv = open_kv(0, 0);
	dp_kv_close(kv);
	rewrite_file_header(1, false);
	rewrite_file_header(2, false); /* checksum no longer matches */
	char err[512] = "";
	struct dp_kv_opts o = { .state_dir = dir, .numa_node = -1 };
	cr_expect_eq(dp_kv_open(&o, model, &kv, err, sizeof(err)), -EPROTO);
	cr_expect(strstr(err, "not a dualpath slot file") != NULL, "message: %s", err);
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
