/* SPDX-License-Identifier: MIT */
/*
 * Prefix units share the growing streams (kvcache.h, "Prefix units"): the
 * units of one conversation hold each full page of its compressed entries
 * and index keys once, by reference in the DRAM pool, and copy only their
 * small state (window, compressor buffers) and tail pages. The pool's own
 * page count is the measure: a test fails if a frozen page is copied per
 * unit. Forks that append to a shared state leave the units' pages as they
 * were, and letting one holder go (demoted, dropped, written out by the
 * watermarks) keeps the others'.
 * On the parity model "alt" (CSA rate 3, HCA rate 6: the first index-key
 * page fills at 4095 tokens, the first HCA entries page at 6144).
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gpu/gpu.h"
#include "io/io.h"
#include "kvcache/kvcache.h"
#include "kv-test.h"

#define PAGE DP_V4_PAGE_BYTES

static void setup(void)
{
	kv_test_setup("ushare");
}

static void teardown(void)
{
	kv_test_teardown();
}

TestSuite(unit_share, .init = setup, .fini = teardown, .timeout = 600);

static struct dp_kv *open_kv(void)
{
	char err[512] = "";
	struct dp_kv_opts o = {.state_dir = dir, .dram_bytes = 64u << 20, .numa_node = -1};
	struct dp_kv *kv;
	cr_assert_eq(dp_kv_open(&o, model, &kv, err, sizeof(err)), 0, "%s", err);
	return kv;
}



/* The conversation: turns ending at these positions (a unit left at each). */
#define N_TURNS 7
static const uint32_t cuts[N_TURNS] = {3200, 3800, 4400, 5100, 5800, 6500, 7200};
#define N_TOKENS 7400

struct census {
	size_t pages[N_TURNS];	/* the unit's state pages */
	size_t frozen[N_TURNS]; /* of them, full pages of growing streams */
};

static void count_pages(const struct dp_v4_seq *seq, size_t *ret_pages, size_t *ret_frozen)
{
	size_t n = dp_v4_seq_pages(seq, NULL, 0), f = 0;
	struct dp_v4_page_ref *refs = malloc(n * sizeof(*refs));
	dp_v4_seq_pages(seq, refs, n);
	for (size_t i = 0; i < n; i++)
		f += refs[i].frozen;
	free(refs);
	*ret_pages = n;
	*ret_frozen = f;
}

/*
 * Play the conversation as a stateless client would: turn i forks from the
 * unit the turn before left (the longest prefix), feeds its own tokens and
 * leaves a unit where it ends. forked false: one sequence feeds every turn
 * and leaves the units on its way (what one long request does).
 */
static void converse(struct dp_kv *kv, const struct dp_kv_tenant *te, const int32_t *t, bool forked,
		     struct census *c, float *logits)
{
	struct dp_v4_seq *seq = NULL;
	struct dp_kv_session *lent;
	for (int i = 0; i < N_TURNS; i++) {
		uint32_t from = i ? cuts[i - 1] : 0;
		if (!seq || forked) {
			if (seq)
				dp_v4_seq_free(seq);
			if (i) {
				cr_assert_eq(dp_kv_unit_fork(kv, te, t, cuts[i], false, &seq, &lent),
					     (int)from);
				cr_assert_null(lent);
			} else {
				cr_assert_eq(dp_v4_seq_new(model, &seq), 0);
			}
		}
		kv_test_feed(seq, t + from, cuts[i] - from, logits);
		count_pages(seq, &c->pages[i], &c->frozen[i]);
		cr_assert_eq(dp_kv_unit_leave(kv, te, t, cuts[i], seq), 0);
	}
	dp_v4_seq_free(seq);
}

/* A fresh sequence fed t in the conversation's chunks up to cuts[upto]. */
static struct dp_v4_seq *reference(const int32_t *t, int upto, float *logits)
{
	struct dp_v4_seq *seq;
	cr_assert_eq(dp_v4_seq_new(model, &seq), 0);
	for (int i = 0; i <= upto; i++)
		kv_test_feed(seq, t + (i ? cuts[i - 1] : 0), cuts[i] - (i ? cuts[i - 1] : 0), logits);
	return seq;
}

/* Whether two sequences hold the same state, byte for byte. */
static bool same_state(const struct dp_v4_seq *a, const struct dp_v4_seq *b)
{
	size_t n = dp_v4_seq_pages(a, NULL, 0);
	if (n != dp_v4_seq_pages(b, NULL, 0) || dp_v4_seq_pos(a) != dp_v4_seq_pos(b))
		return false;
	struct dp_v4_page_ref *ra = malloc(n * sizeof(*ra)), *rb = malloc(n * sizeof(*rb));
	char *pa = malloc(PAGE), *pb = malloc(PAGE);
	dp_v4_seq_pages(a, ra, n);
	dp_v4_seq_pages(b, rb, n);
	bool same = true;
	for (size_t i = 0; i < n && same; i++) {
		cr_assert_eq(dp_gpu_download(gpu, pa, ra[i].page, PAGE), 0);
		cr_assert_eq(dp_gpu_download(gpu, pb, rb[i].page, PAGE), 0);
		same = !memcmp(pa, pb, PAGE);
	}
	free(ra);
	free(rb);
	free(pa);
	free(pb);
	return same;
}

static uint64_t pool_pages(struct dp_kv *kv)
{
	struct dp_kv_stats st;
	dp_kv_stats(kv, &st);
	return st.pages[DP_KV_TIER_DRAM];
}

/* What the units should cost in pool pages: every unit its own unfrozen
 * pages, the frozen ones once (each unit's frozen pages are a prefix of
 * the last one's). And what they cost when each unit owned a copy. */
static void expected(const struct census *c, uint64_t *ret_shared, uint64_t *ret_owned)
{
	uint64_t shared = c->frozen[N_TURNS - 1], owned = 0;
	for (int i = 0; i < N_TURNS; i++) {
		shared += c->pages[i] - c->frozen[i];
		owned += c->pages[i];
	}
	*ret_shared = shared;
	*ret_owned = owned;
}

static void check_sharing(struct dp_kv *kv, const struct census *c, const char *how)
{
	uint64_t shared, owned;
	expected(c, &shared, &owned);
	cr_assert_gt(c->frozen[0], 0, "the first unit already has full pages to share");
	cr_assert_gt(c->frozen[N_TURNS - 1], c->frozen[0], "pages fill during the conversation");
	struct dp_kv_stats st;
	dp_kv_stats(kv, &st);
	cr_expect_eq(st.units, N_TURNS);
	cr_expect_eq(st.pages[DP_KV_TIER_DRAM], shared,
		     "%s: %llu pool pages for %d units; frozen pages held once: %llu "
		     "(a copy per unit: %llu)",
		     how, (unsigned long long)st.pages[DP_KV_TIER_DRAM], N_TURNS,
		     (unsigned long long)shared, (unsigned long long)owned);
	cr_expect_eq(st.unit_copy_bytes, shared * PAGE, "%s: only the unshared pages are copied", how);
	cr_expect_eq(st.unit_shared_bytes, (owned - shared) * PAGE, "%s", how);
	cr_log_info("%s: %d units, pool %llu KiB shared vs %llu KiB owned (%.1fx)", how, N_TURNS,
		    (unsigned long long)(shared * PAGE >> 10), (unsigned long long)(owned * PAGE >> 10),
		    (double)owned / (double)shared);
}

Test(unit_share, units_left_along_one_sequence_hold_its_full_pages_once)
{
	struct dp_kv *kv = open_kv();
	struct dp_kv_tenant te;
	dp_kv_tenant_make(1000, "a", 1, &te);
	int32_t *t = malloc(N_TOKENS * sizeof(*t));
	float *lg = malloc((size_t)V * sizeof(float));
	kv_test_tokens(t, N_TOKENS, 1);
	struct census c;
	converse(kv, &te, t, false, &c, lg);
	check_sharing(kv, &c, "one sequence");
	free(t);
	free(lg);
	dp_kv_close(kv);
}

Test(unit_share, a_stateless_conversation_forking_each_turn_holds_its_full_pages_once)
{
	struct dp_kv *kv = open_kv();
	struct dp_kv_tenant te;
	dp_kv_tenant_make(1000, "a", 1, &te);
	int32_t *t = malloc(N_TOKENS * sizeof(*t));
	float *a = malloc((size_t)V * sizeof(float)), *b = malloc((size_t)V * sizeof(float));
	kv_test_tokens(t, N_TOKENS, 2);
	struct census c;
	converse(kv, &te, t, true, &c, a);
	check_sharing(kv, &c, "forked turns");
	struct dp_v4_seq *ref = reference(t, N_TURNS - 1, b);
	cr_expect_eq(memcmp(a, b, (size_t)V * sizeof(float)), 0,
		     "the last turn's logits are the recompute's");
	/* the last unit, forked, is the recompute's state byte for byte */
	struct dp_v4_seq *seq;
	struct dp_kv_session *lent;
	cr_assert_eq(dp_kv_unit_fork(kv, &te, t, N_TOKENS, false, &seq, &lent), (int)cuts[N_TURNS - 1]);
	cr_expect(same_state(seq, ref));
	dp_v4_seq_free(seq);
	dp_v4_seq_free(ref);
	free(t);
	free(a);
	free(b);
	dp_kv_close(kv);
}

Test(unit_share, a_fork_appending_other_tokens_leaves_the_shared_pages_unchanged)
{
	struct dp_kv *kv = open_kv();
	struct dp_kv_tenant te;
	dp_kv_tenant_make(1000, "a", 1, &te);
	int32_t *t = malloc(N_TOKENS * sizeof(*t)), *x = malloc(N_TOKENS * sizeof(*x));
	float *a = malloc((size_t)V * sizeof(float)), *b = malloc((size_t)V * sizeof(float));
	kv_test_tokens(t, N_TOKENS, 3);
	struct census c;
	converse(kv, &te, t, true, &c, a);
	uint64_t before = pool_pages(kv);

	/* a branch off the third unit: its tail pages fill and new pages
	 * start with tokens the conversation never had, and it leaves a unit
	 * of its own (sharing the third unit's frozen pages) */
	memcpy(x, t, cuts[2] * sizeof(*x));
	kv_test_tokens(x + cuts[2], N_TOKENS - cuts[2], 4);
	struct dp_v4_seq *seq;
	struct dp_kv_session *lent;
	cr_assert_eq(dp_kv_unit_fork(kv, &te, x, cuts[2] + 1, false, &seq, &lent), (int)cuts[2]);
	kv_test_feed(seq, x + cuts[2], 2500, a);
	size_t n, f;
	count_pages(seq, &n, &f);
	cr_assert_gt(f, c.frozen[2], "the branch filled pages of its own");
	cr_assert_eq(dp_kv_unit_leave(kv, &te, x, cuts[2] + 2500, seq), 0);
	dp_v4_seq_free(seq);
	cr_expect_eq(pool_pages(kv), before + (n - c.frozen[2]),
		     "the branch's unit holds the third unit's frozen pages, copies the rest");

	/* every unit of the conversation still holds the recompute's state */
	struct dp_v4_seq *ref;
	cr_assert_eq(dp_v4_seq_new(model, &ref), 0);
	for (int i = 0; i < N_TURNS; i++) {
		kv_test_feed(ref, t + (i ? cuts[i - 1] : 0), cuts[i] - (i ? cuts[i - 1] : 0), b);
		cr_assert_eq(dp_kv_unit_fork(kv, &te, t, cuts[i] + 1, false, &seq, &lent), (int)cuts[i]);
		cr_expect(same_state(seq, ref), "unit %d is as it was", i);
		dp_v4_seq_free(seq);
	}
	dp_v4_seq_free(ref);
	free(t);
	free(x);
	free(a);
	free(b);
	dp_kv_close(kv);
}

Test(unit_share, letting_one_holder_go_keeps_the_other_units_pages)
{
	struct dp_kv *kv = open_kv();
	struct dp_kv_tenant te;
	dp_kv_tenant_make(1000, "a", 1, &te);
	int32_t *t = malloc(N_TOKENS * sizeof(*t));
	float *a = malloc((size_t)V * sizeof(float)), *b = malloc((size_t)V * sizeof(float));
	kv_test_tokens(t, N_TOKENS, 5);
	struct census c;
	converse(kv, &te, t, true, &c, a);

	/* the oldest unit dropped (what the LRU does past max_units), one in
	 * the middle written to NVMe (its own copy) and let go from DRAM */
	struct dp_kv_session *u;
	uint64_t before = pool_pages(kv);
	cr_assert_eq(dp_kv_unit_find(kv, &te, t, cuts[0], &u), (int)cuts[0]);
	cr_assert_eq(dp_kv_session_drop(kv, u), 0);
	cr_assert_eq(dp_kv_unit_find(kv, &te, t, cuts[3], &u), (int)cuts[3]);
	cr_assert_eq(dp_kv_session_demote(kv, u, DP_KV_TIER_NVME), 0);
	cr_expect_eq(pool_pages(kv), before - (c.pages[0] - c.frozen[0]) - (c.pages[3] - c.frozen[3]),
		     "only the pages no other unit holds are freed");

	struct dp_v4_seq *seq, *ref;
	struct dp_kv_session *lent;
	cr_assert_eq(dp_v4_seq_new(model, &ref), 0);
	for (int i = 0; i < N_TURNS; i++) {
		kv_test_feed(ref, t + (i ? cuts[i - 1] : 0), cuts[i] - (i ? cuts[i - 1] : 0), b);
		if (i == 0)
			continue;
		cr_assert_eq(dp_kv_unit_fork(kv, &te, t, cuts[i] + 1, false, &seq, &lent), (int)cuts[i]);
		cr_assert(i == 3 ? lent != NULL : lent == NULL);
		cr_expect(same_state(seq, ref), "unit %d", i);
		if (lent)
			dp_kv_unit_return(kv, lent, false);
		else
			dp_v4_seq_free(seq);
	}
	dp_v4_seq_free(ref);
	/* all of them on NVMe: the pool is empty again (every hold put) */
	for (int i = 1; i < N_TURNS; i++) {
		cr_assert_eq(dp_kv_unit_find(kv, &te, t, cuts[i], &u), (int)cuts[i]);
		cr_assert_eq(dp_kv_session_demote(kv, u, DP_KV_TIER_NVME), 0);
	}
	cr_expect_eq(pool_pages(kv), 0);
	ref = reference(t, N_TURNS - 1, b);
	cr_assert_eq(dp_kv_unit_fork(kv, &te, t, N_TOKENS, false, &seq, &lent), (int)cuts[N_TURNS - 1]);
	cr_assert_not_null(lent);
	cr_expect(same_state(seq, ref), "the last unit from its own NVMe copy");
	dp_kv_unit_return(kv, lent, false);
	dp_v4_seq_free(ref);
	free(t);
	free(a);
	free(b);
	dp_kv_close(kv);
}

Test(unit_share, a_session_demoted_to_dram_shares_the_pages_its_units_hold)
{
	struct dp_kv *kv = open_kv();
	struct dp_kv_tenant te;
	dp_kv_tenant_make(1000, "a", 1, &te);
	int32_t *t = malloc(N_TOKENS * sizeof(*t));
	float *lg = malloc((size_t)V * sizeof(float));
	kv_test_tokens(t, N_TOKENS, 6);
	struct dp_kv_session *s;
	struct dp_v4_seq *seq;
	cr_assert_eq(dp_kv_session_create(kv, "chat", &s), 0);
	cr_assert_eq(dp_kv_session_acquire(kv, s, &seq), 0);
	for (int i = 0; i <= 3; i++) /* the reference's chunks */
		kv_test_feed(seq, t + (i ? cuts[i - 1] : 0), cuts[i] - (i ? cuts[i - 1] : 0), lg);
	cr_assert_eq(dp_kv_session_append(kv, s, t, cuts[3]), 0);
	cr_assert_eq(dp_kv_unit_leave(kv, &te, t, cuts[3], seq), 0);
	size_t n, f;
	count_pages(seq, &n, &f);
	cr_assert_gt(f, 0);
	dp_kv_session_release(kv, s);
	uint64_t before = pool_pages(kv);
	cr_expect_eq(before, n);
	cr_assert_eq(dp_kv_session_demote(kv, s, DP_KV_TIER_DRAM), 0);
	cr_expect_eq(pool_pages(kv), before + (n - f), "the session holds the unit's frozen pages");
	/* and comes back as it was */
	struct dp_v4_seq *ref = reference(t, 3, lg);
	cr_assert_eq(dp_kv_session_acquire(kv, s, &seq), 0);
	cr_expect(same_state(seq, ref));
	dp_kv_session_release(kv, s);
	dp_v4_seq_free(ref);
	free(t);
	free(lg);
	dp_kv_close(kv);
}

/* ---- with the io engine: the watermarks write units out asynchronously ---- */

static struct dp_io *engine;

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

TestSuite(unit_share_io, .init = setup_io, .fini = teardown_io, .timeout = 600);

Test(unit_share_io, writebacks_of_the_oldest_units_keep_the_pages_the_newer_ones_share)
{
	char err[512] = "";
	/* 96 pool pages; the conversation holds ~80 of them, so the watermarks
	 * (0.5, 0.25) write the oldest units out */
	struct dp_kv_opts o = {.state_dir = dir, .dram_bytes = 96u * PAGE, .numa_node = -1,
	                       .high_watermark = 0.5, .low_watermark = 0.25, .io = engine};
	struct dp_kv *kv;
	cr_assert_eq(dp_kv_open(&o, model, &kv, err, sizeof(err)), 0, "%s", err);
	struct dp_kv_tenant te;
	dp_kv_tenant_make(1000, "a", 1, &te);
	int32_t *t = malloc(N_TOKENS * sizeof(*t));
	float *a = malloc((size_t)V * sizeof(float)), *b = malloc((size_t)V * sizeof(float));
	kv_test_tokens(t, N_TOKENS, 7);
	struct census c;
	converse(kv, &te, t, true, &c, a);
	cr_assert_eq(dp_kv_commit(kv), 0);
	uint64_t before = pool_pages(kv);
	cr_assert_gt(before, 48);
	cr_assert_gt(dp_kv_balance_async(kv), 0);
	for (int i = 0; i < 100000 && dp_kv_writeback_pending(kv); i++) {
		dp_kv_pump(kv);
		cr_assert_eq(dp_kv_flush(kv), 0);
		if (dp_kv_writeback_pending(kv))
			usleep(100);
	}
	cr_assert(!dp_kv_writeback_pending(kv), "the writebacks never finished");
	struct dp_kv_stats st;
	dp_kv_stats(kv, &st);
	cr_expect_eq(st.writeback_errors, 0);
	cr_expect_gt(st.sessions[DP_KV_TIER_NVME], 0, "the oldest units went to NVMe");
	cr_expect_gt(st.sessions[DP_KV_TIER_DRAM], 0, "the newest stayed in DRAM");
	cr_expect_lt(pool_pages(kv), before);
	cr_expect_geq(pool_pages(kv), c.frozen[N_TURNS - 1], "the shared pages stay in DRAM");

	/* every unit, from DRAM (shared pages) or from its own NVMe copy, is
	 * the recompute's state */
	struct dp_v4_seq *ref, *seq;
	struct dp_kv_session *lent;
	size_t from_nvme = 0;
	cr_assert_eq(dp_v4_seq_new(model, &ref), 0);
	for (int i = 0; i < N_TURNS; i++) {
		kv_test_feed(ref, t + (i ? cuts[i - 1] : 0), cuts[i] - (i ? cuts[i - 1] : 0), b);
		cr_assert_eq(dp_kv_unit_fork(kv, &te, t, cuts[i] + 1, false, &seq, &lent), (int)cuts[i]);
		cr_expect(same_state(seq, ref), "unit %d", i);
		if (lent) {
			from_nvme++;
			dp_kv_unit_return(kv, lent, false);
		} else {
			dp_v4_seq_free(seq);
		}
	}
	cr_expect_eq(from_nvme, st.sessions[DP_KV_TIER_NVME]);
	dp_v4_seq_free(ref);
	free(t);
	free(a);
	free(b);
	dp_kv_close(kv);
}

Test(unit_share_io, a_unit_lent_from_nvme_serves_a_second_request_with_a_twin)
{
	char err[512] = "";
	struct dp_kv_opts o = {.state_dir = dir, .dram_bytes = 16u << 20, .numa_node = -1, .io = engine};
	struct dp_kv *kv;
	cr_assert_eq(dp_kv_open(&o, model, &kv, err, sizeof(err)), 0, "%s", err);
	struct dp_kv_tenant te;
	dp_kv_tenant_make(1000, "a", 1, &te);
	int32_t t[40];
	kv_test_tokens(t, 40, 8);
	float *a = malloc((size_t)V * sizeof(float)), *b = malloc((size_t)V * sizeof(float));
	struct dp_v4_seq *seq;
	cr_assert_eq(dp_v4_seq_new(model, &seq), 0);
	kv_test_feed(seq, t, 20, a);
	cr_assert_eq(dp_kv_unit_leave(kv, &te, t, 20, seq), 0);
	kv_test_feed(seq, t + 20, 10, b); /* the reference: [0, 20) then [20, 30) */
	dp_v4_seq_free(seq);
	struct dp_kv_session *u;
	cr_assert_eq(dp_kv_unit_find(kv, &te, t, 30, &u), 20);
	cr_assert_eq(dp_kv_session_demote(kv, u, DP_KV_TIER_NVME), 0);
	cr_assert_eq(dp_kv_commit(kv), 0);

	for (int round = 0; round < 2; round++) {
		struct dp_v4_seq *sa, *sb;
		struct dp_kv_session *la, *lb, *probe;
		cr_assert_eq(dp_kv_unit_fork(kv, &te, t, 30, true, &sa, &la), 20);
		cr_assert_eq(la, u, "the first request borrows the unit");
		cr_assert_eq(dp_kv_unit_fork(kv, &te, t, 30, true, &sb, &lb), 20,
			     "the second gets the whole unit too, not a shorter one");
		cr_assert(lb && lb != u && sb != sa, "a twin with a sequence of its own");
		cr_expect_str_eq(dp_kv_session_id(lb), dp_kv_session_id(u));
		cr_expect_eq(dp_kv_unit_find(kv, &te, t, 30, &probe), -ENOENT, "lent meanwhile");
		float *x = malloc((size_t)V * sizeof(float));
		kv_test_feed(sb, t + 20, 10, x);
		cr_expect_eq(memcmp(x, b, (size_t)V * sizeof(float)), 0, "the twin continues exactly");
		kv_test_feed(sa, t + 20, 10, x);
		cr_expect_eq(memcmp(x, b, (size_t)V * sizeof(float)), 0, "so does the lender");
		free(x);
		if (round == 0) {
			dp_kv_unit_return(kv, la, false);
			cr_expect_eq(dp_kv_unit_find(kv, &te, t, 30, &probe), -ENOENT,
				     "busy while its twin is out");
			dp_kv_unit_return(kv, lb, false);
			cr_assert_eq(dp_kv_unit_find(kv, &te, t, 30, &probe), 20, "back");
			cr_expect_eq(dp_kv_session_tier(probe), DP_KV_TIER_NVME, "on its snapshot");
		} else {
			/* a twin whose page failed its checks takes the unit with
			 * it once everyone is back */
			dp_kv_unit_return(kv, lb, true);
			dp_kv_unit_return(kv, la, false);
			cr_expect_eq(dp_kv_unit_find(kv, &te, t, 30, &probe), -ENOENT, "dropped");
		}
	}
	struct dp_kv_stats st;
	dp_kv_stats(kv, &st);
	cr_expect_eq(st.prefix_hits, 4);
	cr_expect_eq(st.units_corrupt, 1);
	cr_expect_eq(st.units, 0);
	free(a);
	free(b);
	dp_kv_close(kv);
}

/* The sequence a daemon goes through when the second of two requests for a
 * unit on NVMe is admitted only after the first one's prefill (the first
 * leaves a unit one token short of its prompt, from the lent sequence):
 * the second starts from that longer unit, a copy in DRAM, exactly; a
 * third, shorter prompt still gets the lent unit as a twin, and once both
 * are back the unit is on its snapshot again. */
Test(unit_share_io, a_unit_left_from_a_lent_sequence_serves_a_later_request_exactly)
{
	char err[512] = "";
	struct dp_kv_opts o = {
	    .state_dir = dir, .dram_bytes = 16u << 20, .numa_node = -1, .io = engine};
	struct dp_kv *kv;
	cr_assert_eq(dp_kv_open(&o, model, &kv, err, sizeof(err)), 0, "%s", err);
	struct dp_kv_tenant te;
	dp_kv_tenant_make(1000, "a", 1, &te);
	int32_t t[40];
	kv_test_tokens(t, 40, 9);
	float *b = malloc((size_t)V * sizeof(float)), *b1 = malloc((size_t)V * sizeof(float));
	float *x = malloc((size_t)V * sizeof(float));
	/* the references, fed in the same pieces as the forks below (the
	 * numerics depend on how a prompt is cut into steps) */
	struct dp_v4_seq *seq, *seq1;
	cr_assert_eq(dp_v4_seq_new(model, &seq), 0);
	cr_assert_eq(dp_v4_seq_new(model, &seq1), 0);
	kv_test_feed(seq, t, 20, x);
	kv_test_feed(seq1, t, 20, x);
	cr_assert_eq(dp_kv_unit_leave(kv, &te, t, 20, seq), 0);
	kv_test_feed(seq, t + 20, 10, b); /* [0, 20) then [20, 30) */
	kv_test_feed(seq1, t + 20, 9, x);
	kv_test_feed(seq1, t + 29, 1, b1); /* [0, 20), [20, 29), [29, 30) */
	dp_v4_seq_free(seq);
	dp_v4_seq_free(seq1);
	struct dp_kv_session *u, *probe;
	cr_assert_eq(dp_kv_unit_find(kv, &te, t, 30, &u), 20);
	cr_assert_eq(dp_kv_session_demote(kv, u, DP_KV_TIER_NVME), 0);
	cr_assert_eq(dp_kv_commit(kv), 0);

	struct dp_v4_seq *sa, *sb, *sc;
	struct dp_kv_session *la, *lb, *lc;
	cr_assert_eq(dp_kv_unit_fork(kv, &te, t, 30, true, &sa, &la), 20);
	cr_assert_eq(la, u, "the first request borrows the unit");
	kv_test_feed(sa, t + 20, 9, x); /* its prefill stops one token short: a unit there */
	cr_assert_eq(dp_kv_unit_leave(kv, &te, t, 29, sa), 0);
	cr_assert_eq(dp_kv_unit_fork(kv, &te, t, 30, true, &sb, &lb), 29,
	             "the second starts from the longer unit the first left");
	cr_expect_null(lb, "a copy of a unit in DRAM: nothing lent");
	kv_test_feed(sb, t + 29, 1, x);
	cr_expect_eq(memcmp(x, b1, (size_t)V * sizeof(float)), 0, "it continues exactly");
	kv_test_feed(sa, t + 29, 1, x);
	cr_expect_eq(memcmp(x, b1, (size_t)V * sizeof(float)), 0, "so does the lender");
	cr_assert_eq(dp_kv_unit_fork(kv, &te, t, 21, true, &sc, &lc), 20,
	             "a prompt below the longer unit gets the whole lent unit");
	cr_assert(lc && lc != u, "as a twin");
	kv_test_feed(sc, t + 20, 10, x);
	cr_expect_eq(memcmp(x, b, (size_t)V * sizeof(float)), 0, "the twin continues exactly");
	dp_v4_seq_free(sb);
	dp_kv_unit_return(kv, la, false);
	cr_expect_eq(dp_kv_unit_find(kv, &te, t, 21, &probe), -ENOENT,
	             "busy while its twin is out");
	dp_kv_unit_return(kv, lc, false);
	cr_assert_eq(dp_kv_unit_find(kv, &te, t, 21, &probe), 20, "back");
	cr_expect_eq(probe, u);
	cr_expect_eq(dp_kv_session_tier(probe), DP_KV_TIER_NVME, "on its snapshot");
	cr_expect_eq(dp_kv_unit_find(kv, &te, t, 30, &probe), 29, "the longer unit stays");
	struct dp_kv_stats st;
	dp_kv_stats(kv, &st);
	cr_expect_eq(st.prefix_hits, 3);
	cr_expect_eq(st.units_corrupt, 0);
	cr_expect_eq(st.units, 2);
	free(b);
	free(b1);
	free(x);
	dp_kv_close(kv);
}
