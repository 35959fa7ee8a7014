/* SPDX-License-Identifier: MIT */
/*
 * A session's state on the shared tier and its DualPath restore from there
 * (kvcache/restore-shared.c) against a real cluster (DP_CEPH_CONF,
 * DP_CEPH_POOL; exits 77 without one), on the small test model: the state
 * written as segments comes back bit for bit, layer by layer behind the
 * forward; a damaged or missing segment poisons the sequence (never served)
 * and the history recomputes the same logits.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <rados/librados.h>

#include "gpu/gpu.h"
#include "kvcache/kvcache.h"
#include "kvcache/tier.h"
#include "model/v4.h"

#define FED 40 /* tokens in the state; the history has one more */

static char dir[64];
static struct dp_gpu *gpu;
static struct dp_v4_model *model;
static struct dp_kv *kv;
static struct dp_kv_shared *tier;
static uint32_t V;
static int32_t hist[FED + 1];
static float *ref; /* logits of hist[FED] after hist[0..FED) */
static struct dp_kv_session *sess;
static char sid[64];
/* the state as written */
static uint64_t pos;
static size_t n_pages;
static uint32_t n_segs;
static char names[64][256];
static const char *np[64];
static struct dp_kv_shared_loc *locs;

static void on_done(void *arg, int res)
{
	int *left = arg;
	cr_assert_geq(res, 0, "tier op: %s", strerror(-res));
	(*left)--;
}

static void wait_left(int *left)
{
	while (*left > 0) {
		struct pollfd p = { .fd = dp_kv_shared_fd(tier), .events = POLLIN };
		poll(&p, 1, 100);
		dp_kv_shared_reap(tier, 0);
	}
}

static void forward(struct dp_v4_seq *seq, const int32_t *t, uint32_t n, float *logits)
{
	struct dp_v4_batch_item it = { .seq = seq, .tokens = t, .n_tokens = n };
	cr_assert_eq(dp_v4_forward(model, &it, 1, logits), 0);
}

static void setup(void)
{
	char err[512] = "";
	const char *root = getenv("DP_TEST_PARITY");
	char path[256];
	snprintf(path, sizeof(path), "%s/alt", root ? root : "tests/model/parity");
	snprintf(dir, sizeof(dir), "/var/tmp/dp-test-tr-XXXXXX");
	cr_assert_not_null(mkdtemp(dir));
	cr_assert_eq(dp_gpu_new(DP_GPU_CPU, NULL, &gpu, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(dp_v4_model_load(gpu, path, &model, err, sizeof(err)), 0, "%s", err);
	V = (uint32_t)dp_v4_model_config(model)->vocab_size;
	struct dp_kv_opts o = { .state_dir = dir, .numa_node = -1 };
	cr_assert_eq(dp_kv_open(&o, model, &kv, err, sizeof(err)), 0, "%s", err);
	struct dp_kv_shared_opts to = { .conf = getenv("DP_CEPH_CONF"), .pool = getenv("DP_CEPH_POOL"),
					.host_id = "restore-test", .timeout_ms = 20000 };
	cr_assert_eq(dp_kv_shared_open(&to, &tier, err, sizeof(err)), 0, "%s", err);

	/* a session: FED tokens fed, one more in its history */
	for (uint32_t i = 0; i <= FED; i++)
		hist[i] = (int32_t)((i * 37 + 11) % V);
	snprintf(sid, sizeof(sid), "rs-%ld-%d", (long)time(NULL), (int)getpid());
	struct dp_v4_seq *seq;
	ref = malloc(V * sizeof(float));
	float *scratch = malloc(V * sizeof(float));
	cr_assert_eq(dp_kv_session_create(kv, sid, &sess), 0);
	cr_assert_eq(dp_kv_session_acquire(kv, sess, &seq), 0);
	forward(seq, hist, FED, scratch);
	cr_assert_eq(dp_kv_session_append(kv, sess, hist, FED + 1), 0);
	cr_assert_eq(dp_kv_commit(kv), 0);

	/* its state on the tier, a few pages per segment (several gets per layer) */
	struct dp_v4_page_ref *refs;
	void *data;
	cr_assert_eq(dp_kv_session_state_copy(kv, sess, &pos, &refs, &data, &n_pages), 0);
	cr_assert_eq(pos, FED);
	const uint32_t per = 3;
	n_segs = (uint32_t)((n_pages + per - 1) / per);
	cr_assert_leq(n_segs, 64);
	locs = calloc(n_pages, sizeof(*locs));
	int left = 0;
	for (uint32_t k = 0; k < n_segs; k++) {
		struct dp_kv_shared_page pg[3];
		uint32_t cnt = n_pages - (size_t)k * per < per ? (uint32_t)(n_pages - (size_t)k * per) : per;
		dp_kv_shared_segment_name(sid, 1, k, names[k], sizeof(names[k]));
		np[k] = names[k];
		/* pages in reverse within a segment: slots need not follow the list */
		for (uint32_t j = 0; j < cnt; j++) {
			size_t i = (size_t)k * per + j;
			uint32_t slot = cnt - 1 - j;
			pg[slot].tag = dp_kv_shared_page_tag(refs[i].layer, refs[i].kind, refs[i].index);
			pg[slot].buf = (char *)data + i * DP_V4_PAGE_BYTES;
			locs[i] = (struct dp_kv_shared_loc){ refs[i].layer, refs[i].kind, refs[i].index, k,
							     slot };
		}
		cr_assert_eq(dp_kv_shared_put(tier, names[k], pg, cnt, DP_V4_PAGE_BYTES, on_done, &left),
			     0);
		left++;
	}
	wait_left(&left);
	free(refs);
	free(data);
	/* what the next token gives from this state */
	forward(seq, hist + FED, 1, ref);
	dp_kv_session_forget_state(kv, sess); /* no state: NONE */
	free(scratch);
}

static void teardown(void)
{
	for (uint32_t k = 0; k < n_segs; k++)
		dp_kv_shared_delete(tier, names[k], NULL, NULL);
	dp_kv_shared_close(tier); /* waits for the deletes */
	dp_kv_close(kv);
	dp_v4_model_free(model);
	dp_gpu_free(gpu);
	free(ref);
	free(locs);
	char cmd[128];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	cr_expect_eq(system(cmd), 0);
}

TestSuite(tier_restore, .init = setup, .fini = teardown, .timeout = 120);

/* Acquire the session restoring from the tier; feed the next token. */
static struct dp_v4_seq *restore_and_step(float *logits)
{
	struct dp_v4_seq *seq;
	cr_assert_eq(dp_kv_session_acquire_fresh(kv, sess, &seq), 0);
	cr_assert_eq(dp_kv_session_restore_shared(kv, sess, tier, NULL, pos, np, n_segs, locs, n_pages,
						  &seq),
		     0);
	cr_assert_eq(dp_v4_seq_pos(seq), FED);
	struct dp_kv_restore_info ri;
	cr_assert_eq(dp_kv_session_restore_info(kv, sess, &ri), 0);
	cr_assert(ri.active, "the restore runs behind the forward");
	forward(seq, hist + FED, 1, logits);
	return seq;
}

Test(tier_restore, a_state_restored_from_the_tier_gives_the_same_next_logits)
{
	float *lg = malloc(V * sizeof(float));
	struct dp_v4_seq *seq = restore_and_step(lg);
	cr_assert_not(dp_v4_seq_poisoned(seq));
	cr_assert_arr_eq(lg, ref, V * sizeof(float), "bit for bit");
	struct dp_kv_restore_info ri;
	dp_kv_session_restore_info(kv, sess, &ri);
	cr_assert_not(ri.active, "every layer came in the forward");
	struct dp_kv_shared_restore_stats st;
	dp_kv_shared_restore_stats(kv, &st);
	cr_assert_eq(st.completed, 1);
	cr_assert_eq(st.failed, 0);
	cr_assert_eq(st.bytes, (uint64_t)n_pages * DP_V4_PAGE_BYTES);
	dp_kv_session_release(kv, sess);
	free(lg);
}

static void damage(const char *name)
{
	rados_t cl;
	rados_ioctx_t io;
	cr_assert_eq(rados_create(&cl, "admin"), 0);
	cr_assert_eq(rados_conf_read_file(cl, getenv("DP_CEPH_CONF")), 0);
	cr_assert_eq(rados_connect(cl), 0);
	cr_assert_eq(rados_ioctx_create(cl, getenv("DP_CEPH_POOL"), &io), 0);
	if (name) {
		char junk[8] = "garbage";
		cr_assert_eq(rados_write(io, name, junk, sizeof(junk), DP_KV_SHARED_HEADER_BYTES + 7), 0);
	} else {
		cr_assert_eq(rados_remove(io, names[n_segs - 1]), 0);
	}
	rados_ioctx_destroy(io);
	rados_shutdown(cl);
}

static void expect_poisoned_then_recomputed(void)
{
	float *lg = malloc(V * sizeof(float));
	struct dp_v4_seq *seq = restore_and_step(lg);
	cr_assert(dp_v4_seq_poisoned(seq), "a damaged state is never served");
	struct dp_kv_shared_restore_stats st;
	dp_kv_shared_restore_stats(kv, &st);
	cr_assert_eq(st.failed, 1);
	cr_assert_eq(st.completed, 0);
	/* the caller's way out: forget, acquire, recompute from the history */
	dp_kv_session_forget_state(kv, sess);
	cr_assert_eq(dp_kv_session_acquire(kv, sess, &seq), 0);
	cr_assert_eq(dp_v4_seq_pos(seq), 0);
	float *scratch = malloc(V * sizeof(float));
	forward(seq, hist, FED, scratch);
	forward(seq, hist + FED, 1, lg);
	cr_assert_arr_eq(lg, ref, V * sizeof(float));
	dp_kv_session_release(kv, sess);
	free(lg);
	free(scratch);
}

Test(tier_restore, a_page_that_fails_its_checksum_poisons_the_restore)
{
	damage(names[0]); /* layer 0's first get */
	expect_poisoned_then_recomputed();
}

Test(tier_restore, a_missing_segment_poisons_the_restore)
{
	damage(NULL); /* the last layer's */
	expect_poisoned_then_recomputed();
}

Test(tier_restore, a_page_list_that_is_not_the_sequences_is_refused_before_anything_is_read)
{
	struct dp_v4_seq *seq;
	cr_assert_eq(dp_kv_session_acquire_fresh(kv, sess, &seq), 0);
	locs[0].index += 1;
	cr_assert_eq(dp_kv_session_restore_shared(kv, sess, tier, NULL, pos, np, n_segs, locs, n_pages,
						  &seq),
		     -EBADMSG);
	locs[0].index -= 1;
	cr_assert_eq(dp_kv_session_restore_shared(kv, sess, tier, NULL, pos, np, n_segs, locs,
						  n_pages - 1, &seq),
		     -EBADMSG);
	cr_assert_eq(dp_v4_seq_pos(seq), 0, "the session keeps the sequence it had");
	dp_kv_session_release(kv, sess);
}

int main(int argc, char *argv[])
{
	if (!dp_kv_shared_rados_available()) {
		printf("SKIP: built without librados\n");
		return 77;
	}
	if (!getenv("DP_CEPH_CONF") || !getenv("DP_CEPH_POOL")) {
		printf("SKIP: no cluster named (scripts/ceph-test-cluster start; export "
		       "DP_CEPH_CONF and DP_CEPH_POOL)\n");
		return 77;
	}
	struct criterion_test_set *tests = criterion_initialize();
	int result = 0;
	if (criterion_handle_args(argc, argv, true))
		result = !criterion_run_all_tests(tests);
	criterion_finalize(tests);
	return result;
}
