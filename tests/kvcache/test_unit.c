/* SPDX-License-Identifier: MIT */
/*
 * Prefix units (kvcache.h): the lookup by token prefix (longest unit,
 * tenants apart, colliding keys told apart by the ids), forks that give the
 * unit's state, and units coming back from NVMe after a reopen. On the
 * parity model "alt".
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kvcache/kvcache.h"
#include "kv-test.h"

static void setup(void)
{
	kv_test_setup("unit");
}

static void teardown(void)
{
	kv_test_teardown();
}

TestSuite(unit, .init = setup, .fini = teardown, .timeout = 300);

static struct dp_kv *open_kv(uint32_t key_bits)
{
	char err[512] = "";
	struct dp_kv_opts o = {
	    .state_dir = dir, .dram_bytes = 4u << 20, .numa_node = -1, .unit_key_bits = key_bits};
	struct dp_kv *kv;
	cr_assert_eq(dp_kv_open(&o, model, &kv, err, sizeof(err)), 0, "%s", err);
	return kv;
}



/* Feed t[0..n) into a fresh sequence, leaving units of tenant te at each
 * cut (ascending, < n). */
static void run_leaving(struct dp_kv *kv, const struct dp_kv_tenant *te, const int32_t *t,
                        uint32_t n, const uint32_t *cuts, size_t n_cuts)
{
	float *lg = malloc((size_t)V * sizeof(float));
	struct dp_v4_seq *seq;
	cr_assert_eq(dp_v4_seq_new(model, &seq), 0);
	uint32_t at = 0;
	for (size_t i = 0; i <= n_cuts; i++) {
		uint32_t to = i < n_cuts ? cuts[i] : n;
		kv_test_feed(seq, t + at, to - at, lg);
		at = to;
		if (i < n_cuts)
			cr_assert_eq(dp_kv_unit_leave(kv, te, t, at, seq), 0);
	}
	dp_v4_seq_free(seq);
	free(lg);
}

/* The logits after t[0..n) fed in the chunks ending at cuts[] then the
 * rest, from a fresh sequence: what a fork at the last cut must reproduce
 * bit for bit (chunks change the rounding, so they are the same). */
static void reference(const int32_t *t, const uint32_t *cuts, size_t n_cuts, uint32_t n, float *lg)
{
	struct dp_v4_seq *seq;
	cr_assert_eq(dp_v4_seq_new(model, &seq), 0);
	uint32_t at = 0;
	for (size_t i = 0; i <= n_cuts; i++) {
		uint32_t to = i < n_cuts ? cuts[i] : n;
		kv_test_feed(seq, t + at, to - at, lg);
		at = to;
	}
	dp_v4_seq_free(seq);
}

Test(unit, the_longest_unit_a_prompt_starts_with_is_found_and_its_fork_continues_exactly)
{
	struct dp_kv *kv = open_kv(0);
	struct dp_kv_tenant te;
	dp_kv_tenant_make(1000, "a", 1, &te);
	int32_t t[48];
	kv_test_tokens(t, 48, 1);
	uint32_t cuts[] = {10, 25};
	run_leaving(kv, &te, t, 40, cuts, 2);
	cr_expect_eq(dp_kv_unit_count(kv), 2);

	struct dp_kv_session *u;
	cr_expect_eq(dp_kv_unit_find(kv, &te, t, 30, &u), 25);
	cr_expect_eq(dp_kv_unit_find(kv, &te, t, 25, &u), 25, "a unit as long as the prompt");
	cr_expect_eq(dp_kv_unit_find(kv, &te, t, 24, &u), 10);
	cr_expect_eq(dp_kv_unit_find(kv, &te, t, 9, &u), -ENOENT);
	int32_t other[30];
	memcpy(other, t, sizeof(other));
	other[3] ^= 1; /* differs inside both units */
	cr_expect_eq(dp_kv_unit_find(kv, &te, other, 30, &u), -ENOENT);
	other[3] ^= 1;
	other[12] ^= 1; /* inside the longer only */
	cr_expect_eq(dp_kv_unit_find(kv, &te, other, 30, &u), 10);

	struct dp_v4_seq *seq;
	struct dp_kv_session *lent;
	cr_assert_eq(dp_kv_unit_fork(kv, &te, t, 32, false, &seq, &lent), 25);
	cr_assert_null(lent, "a DRAM or device unit is copied, not lent");
	cr_assert_eq(dp_v4_seq_pos(seq), 25);
	float *a = malloc((size_t)V * sizeof(float)), *b = malloc((size_t)V * sizeof(float));
	kv_test_feed(seq, t + 25, 7, a);
	dp_v4_seq_free(seq);
	reference(t, cuts, 2, 32, b);
	cr_expect_eq(memcmp(a, b, (size_t)V * sizeof(float)), 0,
	             "the fork's logits are the recompute's");
	/* the unit is intact for the next request */
	cr_assert_eq(dp_kv_unit_fork(kv, &te, t, 32, false, &seq, &lent), 25);
	kv_test_feed(seq, t + 25, 7, a);
	dp_v4_seq_free(seq);
	cr_expect_eq(memcmp(a, b, (size_t)V * sizeof(float)), 0, "a second fork is the same");
	struct dp_kv_stats st;
	dp_kv_stats(kv, &st);
	cr_expect_eq(st.prefix_hits, 2);
	cr_expect_eq(st.prefix_cached_tokens, 50);
	cr_expect_eq(st.units_left, 2);
	free(a);
	free(b);
	dp_kv_close(kv);
}

Test(unit, a_unit_is_found_only_by_its_own_tenant)
{
	struct dp_kv *kv = open_kv(0);
	struct dp_kv_tenant a, b, c, a2;
	dp_kv_tenant_make(1000, "salt-a", 6, &a);
	dp_kv_tenant_make(1000, "salt-b", 6, &b);
	dp_kv_tenant_make(1001, "salt-a", 6, &c);
	dp_kv_tenant_make(1000, "salt-a", 6, &a2);
	cr_expect(a.tag[0] == a2.tag[0] && a.tag[1] == a2.tag[1]);
	int32_t t[20];
	kv_test_tokens(t, 20, 2);
	uint32_t cuts[] = {12};
	run_leaving(kv, &a, t, 16, cuts, 1);
	struct dp_kv_session *u;
	cr_expect_eq(dp_kv_unit_find(kv, &a2, t, 20, &u), 12);
	cr_expect_eq(dp_kv_unit_find(kv, &b, t, 20, &u), -ENOENT, "another salt");
	cr_expect_eq(dp_kv_unit_find(kv, &c, t, 20, &u), -ENOENT, "another uid");
	struct dp_v4_seq *seq;
	struct dp_kv_session *lent;
	cr_expect_eq(dp_kv_unit_fork(kv, &b, t, 20, false, &seq, &lent), 0);
	cr_expect_null(seq, "a miss gives no state");
	dp_kv_close(kv);
}

Test(unit, colliding_chain_keys_are_told_apart_by_the_token_ids)
{
	struct dp_kv *kv = open_kv(1); /* two keys: nearly everything collides */
	struct dp_kv_tenant te;
	dp_kv_tenant_make(7, NULL, 0, &te);
	int32_t x[16], y[16], z[16];
	kv_test_tokens(x, 16, 3);
	kv_test_tokens(y, 16, 4);
	kv_test_tokens(z, 16, 5);
	uint32_t cuts[] = {4, 8};
	run_leaving(kv, &te, x, 12, cuts, 2);
	run_leaving(kv, &te, y, 12, cuts, 2);
	cr_expect_eq(dp_kv_unit_count(kv), 4);
	struct dp_kv_session *u;
	cr_assert_eq(dp_kv_unit_find(kv, &te, x, 16, &u), 8);
	cr_expect_eq(memcmp(dp_kv_session_history(u), x, 8 * sizeof(int32_t)), 0, "x's own unit");
	cr_assert_eq(dp_kv_unit_find(kv, &te, y, 6, &u), 4);
	cr_expect_eq(memcmp(dp_kv_session_history(u), y, 4 * sizeof(int32_t)), 0, "y's own unit");
	cr_expect_eq(dp_kv_unit_find(kv, &te, z, 16, &u), -ENOENT, "equal keys, other ids");
	/* the same tokens again: the unit is touched, not duplicated */
	run_leaving(kv, &te, x, 12, cuts, 2);
	cr_expect_eq(dp_kv_unit_count(kv), 4);
	dp_kv_close(kv);
}

Test(unit, a_unit_on_nvme_comes_back_after_a_reopen_and_is_lent_then_returned)
{
	struct dp_kv *kv = open_kv(0);
	struct dp_kv_tenant te;
	dp_kv_tenant_make(5, "k", 1, &te);
	int32_t t[40];
	kv_test_tokens(t, 40, 6);
	uint32_t cuts[] = {20};
	run_leaving(kv, &te, t, 24, cuts, 1);
	struct dp_kv_session *u;
	cr_assert_eq(dp_kv_unit_find(kv, &te, t, 30, &u), 20);
	cr_assert_eq(dp_kv_session_demote(kv, u, DP_KV_TIER_NVME), 0);
	cr_assert_eq(dp_kv_commit(kv), 0);
	dp_kv_close(kv);

	kv = open_kv(0);
	cr_assert_eq(dp_kv_unit_find(kv, &te, t, 30, &u), 20, "the unit is back from the journal");
	cr_expect_eq(dp_kv_session_tier(u), DP_KV_TIER_NVME);
	struct dp_v4_seq *seq;
	struct dp_kv_session *lent;
	cr_assert_eq(dp_kv_unit_fork(kv, &te, t, 30, false, &seq, &lent), 20);
	cr_assert_eq(lent, u, "an NVMe unit is lent");
	cr_expect_eq(dp_kv_unit_find(kv, &te, t, 30, &u), -ENOENT, "a lent unit is not found");
	float *a = malloc((size_t)V * sizeof(float)), *b = malloc((size_t)V * sizeof(float));
	kv_test_feed(seq, t + 20, 10, a);
	dp_kv_unit_return(kv, lent, false);
	reference(t, cuts, 1, 30, b);
	cr_expect_eq(memcmp(a, b, (size_t)V * sizeof(float)), 0);
	cr_assert_eq(dp_kv_unit_find(kv, &te, t, 30, &u), 20, "returned to its snapshot");
	cr_expect_eq(dp_kv_session_tier(u), DP_KV_TIER_NVME);

	/* a session whose state is gone starts from the unit (a copy: the
	 * unit goes back to NVMe) */
	struct dp_kv_session *s;
	cr_assert_eq(dp_kv_session_create(kv, "seeded", &s), 0);
	cr_assert_eq(dp_kv_session_append(kv, s, t, 30), 0);
	cr_assert_eq(dp_kv_session_acquire(kv, s, &seq), 0);
	cr_assert_eq(dp_v4_seq_pos(seq), 0);
	cr_assert_eq(dp_kv_session_seed(kv, s, &te, &seq), 20);
	cr_assert_eq(dp_v4_seq_pos(seq), 20);
	kv_test_feed(seq, t + 20, 10, a);
	dp_kv_session_release(kv, s);
	cr_expect_eq(memcmp(a, b, (size_t)V * sizeof(float)), 0,
	             "the seeded session continues exactly");
	cr_expect_eq(dp_kv_session_tier(u), DP_KV_TIER_NVME, "the unit is back on its snapshot");
	free(a);
	free(b);
	dp_kv_close(kv);
}
