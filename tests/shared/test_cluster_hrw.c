/* SPDX-License-Identifier: MIT */
/*
 * Rendezvous hashing (daemon/cluster.h): the documented score (XXH3-64 of
 * host id, a 0 byte, session id), the highest live member wins, the choice
 * moves only what it must when members come and go. No cluster needed.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include <xxhash.h>

#include "daemon/cluster.h"

static struct dp_kv_shared_member mk(const char *host)
{
	struct dp_kv_shared_member m = { 0 };
	snprintf(m.host, sizeof(m.host), "%s", host);
	m.ttl_ms = 1000;
	return m;
}

Test(cluster_hrw, the_score_is_xxh3_of_host_a_zero_byte_and_the_session)
{
	char buf[64];
	memcpy(buf, "host-a\0agent-7", 14);
	cr_assert_eq(dp_cluster_hrw_score("host-a", "agent-7"), XXH3_64bits(buf, 14));
	cr_assert_neq(dp_cluster_hrw_score("host-a", "agent-7"), dp_cluster_hrw_score("host-ag", "ent-7"),
		      "the 0 byte keeps host and session apart");
}

Test(cluster_hrw, the_member_with_the_highest_score_wins_whatever_the_order)
{
	struct dp_kv_shared_member m[3] = { mk("h1"), mk("h2"), mk("h3") };
	struct dp_kv_shared_member r[3] = { mk("h3"), mk("h1"), mk("h2") };
	for (int s = 0; s < 200; s++) {
		char id[32];
		snprintf(id, sizeof(id), "s%d", s);
		int a = dp_cluster_rendezvous(m, NULL, 3, id), b = dp_cluster_rendezvous(r, NULL, 3, id);
		cr_assert(a >= 0 && b >= 0);
		cr_assert_str_eq(m[a].host, r[b].host, "%s: the order of the list does not matter", id);
		for (int i = 0; i < 3; i++)
			cr_assert_geq(dp_cluster_hrw_score(m[a].host, id), dp_cluster_hrw_score(m[i].host, id));
	}
}

Test(cluster_hrw, dead_members_are_skipped_and_none_live_is_enoent)
{
	struct dp_kv_shared_member m[2] = { mk("h1"), mk("h2") };
	bool live[2] = { false, true };
	for (int s = 0; s < 50; s++) {
		char id[32];
		snprintf(id, sizeof(id), "x%d", s);
		cr_assert_eq(dp_cluster_rendezvous(m, live, 2, id), 1);
	}
	live[1] = false;
	cr_assert_eq(dp_cluster_rendezvous(m, live, 2, "x"), -ENOENT);
	cr_assert_eq(dp_cluster_rendezvous(NULL, NULL, 0, "x"), -ENOENT);
	cr_assert_eq(dp_cluster_rendezvous(m, NULL, 2, NULL), -EINVAL);
}

/* The point of rendezvous hashing: a member leaving moves only its own
 * sessions; one joining takes sessions only for itself; load spreads. */
Test(cluster_hrw, a_member_leaving_moves_only_its_sessions_and_the_load_spreads)
{
	struct dp_kv_shared_member m[4] = { mk("host-a"), mk("host-b"), mk("host-c"), mk("host-d") };
	bool live4[4] = { true, true, true, true }, live3[4] = { true, true, false, true };
	int count[4] = { 0 };
	enum { N = 4000 };
	for (int s = 0; s < N; s++) {
		char id[32];
		snprintf(id, sizeof(id), "session-%d", s);
		int with = dp_cluster_rendezvous(m, live4, 4, id);
		int without = dp_cluster_rendezvous(m, live3, 4, id);
		count[with]++;
		if (with != 2)
			cr_assert_eq(without, with, "%s moved though its host stayed", id);
		else
			cr_assert_neq(without, 2);
	}
	for (int i = 0; i < 4; i++)
		cr_assert(count[i] > N / 4 - N / 10 && count[i] < N / 4 + N / 10,
			  "%s got %d of %d sessions", m[i].host, count[i], N);
}

Test(cluster_hrw, a_member_is_live_while_its_heartbeat_is_within_its_ttl)
{
	struct dp_kv_shared_member m = mk("h");
	m.beat_ms = 10000;
	cr_assert(dp_cluster_member_live(&m, 10000));
	cr_assert(dp_cluster_member_live(&m, 11000));
	cr_assert_not(dp_cluster_member_live(&m, 11001));
	cr_assert(dp_cluster_member_live(&m, 9000), "a beat a little in our future (clock skew)");
}
