/* SPDX-License-Identifier: MIT */
/*
 * ClusterRequest's rules (proto/check.c): at most 64 session ids, each a
 * valid one; an empty request (members only) is fine.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include "proto/frame.h"

static int check(char **ids, size_t n, struct dp_proto_fault *f, char *msg, size_t len)
{
	Dualpath__V1__ClusterRequest c = DUALPATH__V1__CLUSTER_REQUEST__INIT;
	Dualpath__V1__Request r = DUALPATH__V1__REQUEST__INIT;
	struct dp_proto_limits lim;
	dp_proto_limits_init(&lim);
	c.n_session_ids = n;
	c.session_ids = ids;
	r.request_id = 7;
	r.body_case = DUALPATH__V1__REQUEST__BODY_CLUSTER;
	r.cluster = &c;
	return dp_proto_request_check(&r, &lim, f, msg, len);
}

Test(cluster_proto, members_only_and_64_valid_ids_pass)
{
	struct dp_proto_fault f;
	char msg[256], buf[64][16], *ids[64];
	cr_assert_eq(check(NULL, 0, &f, msg, sizeof(msg)), 0);
	for (int i = 0; i < 64; i++) {
		snprintf(buf[i], sizeof(buf[i]), "s-%d", i);
		ids[i] = buf[i];
	}
	cr_assert_eq(check(ids, 64, &f, msg, sizeof(msg)), 0, "%s", msg);
}

Test(cluster_proto, more_than_64_ids_are_refused_naming_the_limit)
{
	struct dp_proto_fault f;
	char msg[256], *ids[65];
	for (int i = 0; i < 65; i++)
		ids[i] = "s";
	cr_assert_lt(check(ids, 65, &f, msg, sizeof(msg)), 0);
	cr_assert_eq(f.rule, DP_PROTO_RULE_CLUSTER_SESSIONS);
	cr_assert_eq(f.code, DUALPATH__V1__CODE__INVALID_ARGUMENT);
	cr_assert(strstr(msg, "cluster.session_ids: 65 ids, at most 64"), "%s", msg);
}

Test(cluster_proto, a_bad_or_empty_id_is_refused_naming_the_field)
{
	struct dp_proto_fault f;
	char msg[256];
	char *bad[] = { "ok", "../etc" };
	cr_assert_lt(check(bad, 2, &f, msg, sizeof(msg)), 0);
	cr_assert_eq(f.rule, DP_PROTO_RULE_SESSION_ID);
	cr_assert(strstr(msg, "cluster.session_id"), "%s", msg);
	char *empty[] = { "" };
	cr_assert_lt(check(empty, 1, &f, msg, sizeof(msg)), 0);
	cr_assert_eq(f.rule, DP_PROTO_RULE_SESSION_ID_MISSING);
}
