/* SPDX-License-Identifier: MIT */
/*
 * A deliberate hand-off (EvictSession with release; v4ctl evict --release):
 * real daemons on the real cluster (scripts/ceph-test-cluster; DP_CEPH_CONF,
 * DP_CEPH_POOL). The leases here are long (10 s) and never let go for
 * idleness, so a host that takes a session at once can only do so because
 * the hand-off released it. Exits 77 (skip) without a cluster named.
 */
#include "base/macros.h"
#include "shared-host.h"

#define GEN 6
#define LEASE_MS "10000"

static const uint32_t turns[4][7] = {
	{ 11, 42, 7, 200, 12, 5, 77 },
	{ 64, 3, 250, 31, 9, 1, 2 },
	{ 8, 19, 121, 4, 66, 90, 13 },
	{ 2, 2, 240, 17, 55, 6, 30 },
};

TestSuite(handoff, .init = shared_host_set_tag, .fini = shared_host_kill_leftovers, .timeout = 240);

static void start_host(struct daemon_proc *d, char *host, size_t len, const char *which)
{
	shared_host_start(d, host, len, "h", which, LEASE_MS,
			  (const char *const[]){ "--lease-idle-ms", "0", NULL });
}

/* Turn k of session on d: 0 and its GEN tokens in out, or the Error's
 * code (msg holds its message). */
static int turn(struct daemon_proc *d, const char *session, int k, uint32_t *out, char *msg,
		size_t len)
{
	int fd = client_connect(d);
	uint64_t id = 100 + (uint64_t)k;
	send_generate(fd, id, session, turns[k], DP_ARRAY_SIZE(turns[k]), GEN, 0, 0);
	msg[0] = 0;
	int code = 0;
	size_t n = 0;
	for (;;) {
		Dualpath__V1__Response *r = recv_resp(fd, 60000);
		cr_assert_not_null(r, "turn %d: no reply", k);
		if (r->request_id != id) {
			dp_proto_response_free(r);
			continue;
		}
		if (r->body_case == DUALPATH__V1__RESPONSE__BODY_ERROR) {
			code = (int)r->error->code;
			snprintf(msg, len, "%s", r->error->message);
			dp_proto_response_free(r);
			break;
		}
		bool fin = false;
		if (r->body_case == DUALPATH__V1__RESPONSE__BODY_TOKEN_CHUNK) {
			for (size_t i = 0; i < r->token_chunk->n_ids && n < GEN; i++)
				out[n++] = r->token_chunk->ids[i];
			fin = r->token_chunk->finish;
		}
		dp_proto_response_free(r);
		if (fin) {
			cr_assert_eq(n, GEN, "turn %d: %zu tokens", k, n);
			break;
		}
	}
	close(fd);
	return code;
}

/* EvictSession on d with release (and drop): 0 for an Ack, else the
 * Error's code (msg holds its message). */
static int handoff(struct daemon_proc *d, const char *session, bool drop, char *msg, size_t len)
{
	int fd = client_connect(d);
	Dualpath__V1__EvictSession e = DUALPATH__V1__EVICT_SESSION__INIT;
	Dualpath__V1__Request r = DUALPATH__V1__REQUEST__INIT;
	e.session_id = (char *)session;
	e.drop = drop;
	e.release = true;
	r.request_id = 7;
	r.body_case = DUALPATH__V1__REQUEST__BODY_EVICT_SESSION;
	r.evict_session = &e;
	cr_assert_eq(send_req(fd, &r), 0);
	Dualpath__V1__Response *resp = recv_resp(fd, 60000);
	cr_assert_not_null(resp, "no reply to the hand-off");
	msg[0] = 0;
	int code = resp->body_case == DUALPATH__V1__RESPONSE__BODY_ACK ? 0 : -1;
	if (resp->body_case == DUALPATH__V1__RESPONSE__BODY_ERROR) {
		code = (int)resp->error->code;
		snprintf(msg, len, "%s", resp->error->message);
	}
	dp_proto_response_free(resp);
	close(fd);
	cr_assert_neq(code, -1, "the hand-off is answered by an Ack or an Error");
	return code;
}

static double metric_of(struct daemon_proc *d, const char *name)
{
	int fd = client_connect(d);
	double v = metric(fd, 9, name);
	close(fd);
	return v;
}

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* The four turns on one daemon that never moves: what every move must give. */
static void reference(uint32_t ref[4][GEN])
{
	struct daemon_proc r;
	char msg[256];
	daemon_start(&r, NULL);
	for (int k = 0; k < 4; k++)
		cr_assert_eq(turn(&r, "ref", k, ref[k], msg, sizeof(msg)), 0, "%s", msg);
	cr_assert_eq(daemon_stop(&r), 0);
	daemon_cleanup(&r);
}

Test(handoff, a_handed_off_session_continues_on_another_host_at_once_as_if_it_never_moved_and_comes_back)
{
	uint32_t ref[4][GEN], out[GEN];
	reference(ref);
	struct daemon_proc a, b;
	char ha[64], hb[64], sid[64], msg[512];
	snprintf(sid, sizeof(sid), "ho-%s", tag);
	start_host(&a, ha, sizeof(ha), "a");
	start_host(&b, hb, sizeof(hb), "b");

	cr_assert_eq(turn(&a, sid, 0, out, msg, sizeof(msg)), 0, "%s", msg);
	cr_assert_arr_eq(out, ref[0], sizeof(out), "turn 0 on A as on a host that never moved");
	cr_assert_eq(turn(&a, sid, 1, out, msg, sizeof(msg)), 0, "%s", msg);
	cr_assert_arr_eq(out, ref[1], sizeof(out));
	/* A's lease is live (10 s, never let go idle): B is refused, naming A */
	cr_assert_eq(turn(&b, sid, 2, out, msg, sizeof(msg)), DUALPATH__V1__CODE__FAILED_PRECONDITION);
	cr_assert(strstr(msg, ha), "the owner is named: %s", msg);

	/* the hand-off: answered once the lease is released */
	cr_assert_eq(handoff(&a, sid, false, msg, sizeof(msg)), 0, "%s", msg);
	cr_assert_eq(metric_of(&a, "dualpath_shared_leases_held"), 0, "A holds no lease now");
	cr_assert_eq(metric_of(&a, "dualpath_shared_handoffs_total"), 1);

	/* B takes it at once (well within the 10 s lease) and goes on exactly */
	double t0 = now_s();
	cr_assert_eq(turn(&b, sid, 2, out, msg, sizeof(msg)), 0, "B serves it at once: %s", msg);
	cr_assert_lt(now_s() - t0, 8.0, "no lease was waited out");
	cr_assert_arr_eq(out, ref[2], sizeof(out), "turn 2 on B continues A's turns exactly");
	cr_expect_eq(metric_of(&b, "dualpath_shared_takeovers_total"), 1);
	cr_expect_eq(metric_of(&b, "dualpath_shared_restores_total"), 1, "B restored A's state");
	cr_expect_eq(metric_of(&b, "dualpath_shared_recomputes_total"), 0, "B did not recompute");

	/* A asks for it while B holds it: refused, naming B */
	cr_assert_eq(turn(&a, sid, 3, out, msg, sizeof(msg)), DUALPATH__V1__CODE__FAILED_PRECONDITION);
	cr_assert(strstr(msg, hb), "names %s: %s", hb, msg);

	/* B hands it back with v4ctl; A's next request takes it back and
	 * continues B's turn (A's own copy is two turns old: replaced) */
	char cmd[512], line[512] = "";
	snprintf(cmd, sizeof(cmd), "%s --socket %s evict --release %s", getenv("V4CTL"), b.sock, sid);
	FILE *p = popen(cmd, "r");
	cr_assert_not_null(p);
	size_t n = fread(line, 1, sizeof(line) - 1, p);
	line[n] = 0;
	cr_assert_eq(pclose(p), 0, "v4ctl evict --release: %s", line);
	cr_assert(strstr(line, "lease is released"), "v4ctl says so: %s", line);
	cr_assert_eq(turn(&a, sid, 3, out, msg, sizeof(msg)), 0, "A takes it back: %s", msg);
	cr_assert_arr_eq(out, ref[3], sizeof(out), "turn 3 back on A continues B's turn exactly");
	cr_expect_eq(metric_of(&a, "dualpath_shared_restores_total"), 1, "A restored B's state");
	cr_expect_eq(metric_of(&a, "dualpath_shared_recomputes_total"), 0);
	cr_expect_eq(metric_of(&a, "dualpath_shared_leases_held"), 1);
	cr_expect_eq(metric_of(&b, "dualpath_shared_leases_held"), 0);

	cr_expect_eq(daemon_stop(&a), 0);
	cr_expect_eq(daemon_stop(&b), 0);
	daemon_cleanup(&a);
	daemon_cleanup(&b);
}

/* Nobody took it: the host that let it go serves its next turn as any
 * host would, from its own copy (no restore from the tier: the manifest
 * names the history it holds). */
Test(handoff, a_session_handed_off_and_asked_of_the_same_host_again_is_taken_back_there)
{
	uint32_t ref[4][GEN], out[GEN];
	reference(ref);
	struct daemon_proc a;
	char ha[64], sid[64], msg[512];
	snprintf(sid, sizeof(sid), "hs-%s", tag);
	start_host(&a, ha, sizeof(ha), "a");
	cr_assert_eq(turn(&a, sid, 0, out, msg, sizeof(msg)), 0, "%s", msg);
	cr_assert_eq(turn(&a, sid, 1, out, msg, sizeof(msg)), 0, "%s", msg);
	cr_assert_eq(handoff(&a, sid, false, msg, sizeof(msg)), 0, "%s", msg);
	cr_assert_eq(metric_of(&a, "dualpath_shared_leases_held"), 0);
	/* a second hand-off of a session held nowhere releases nothing: Ack */
	cr_assert_eq(handoff(&a, sid, false, msg, sizeof(msg)), 0, "%s", msg);
	cr_assert_eq(metric_of(&a, "dualpath_shared_handoffs_total"), 1);
	cr_assert_eq(turn(&a, sid, 2, out, msg, sizeof(msg)), 0, "%s", msg);
	cr_assert_arr_eq(out, ref[2], sizeof(out));
	cr_expect_eq(metric_of(&a, "dualpath_shared_leases_held"), 1);
	cr_expect_eq(metric_of(&a, "dualpath_shared_restores_total"), 0, "its own copy served");
	/* with drop: the local copy goes too; the next turn comes from the tier */
	cr_assert_eq(handoff(&a, sid, true, msg, sizeof(msg)), 0, "%s", msg);
	cr_assert_eq(turn(&a, sid, 3, out, msg, sizeof(msg)), 0, "%s", msg);
	cr_assert_arr_eq(out, ref[3], sizeof(out), "restored from the tier after the drop");
	cr_expect_eq(metric_of(&a, "dualpath_shared_restores_total"), 1);
	/* closed with drop, the session is deleted on the tier too (a tombstone)
	 * and its lease let go by the shared tier's worker; a hand-off after
	 * that finds no session */
	int fd = client_connect(&a);
	cr_assert_eq(close_session(fd, 8, sid, false), 0);
	close(fd);
	double held = 1;
	for (int i = 0; i < 50 && (held = metric_of(&a, "dualpath_shared_leases_held")) != 0; i++)
		usleep(100000);
	cr_assert_eq(held, 0, "the deleted session's lease is let go");
	cr_assert_eq(handoff(&a, sid, false, msg, sizeof(msg)), DUALPATH__V1__CODE__NOT_FOUND, "%s",
		     msg);
	cr_assert_eq(metric_of(&a, "dualpath_shared_leases_held"), 0);
	cr_expect_eq(daemon_stop(&a), 0);
	daemon_cleanup(&a);
}

Test(handoff, a_hand_off_without_a_shared_tier_is_refused_naming_what_is_missing)
{
	struct daemon_proc d;
	uint32_t out[GEN];
	char msg[512];
	daemon_start(&d, NULL);
	cr_assert_eq(turn(&d, "solo", 0, out, msg, sizeof(msg)), 0, "%s", msg);
	cr_assert_eq(handoff(&d, "solo", false, msg, sizeof(msg)),
		     DUALPATH__V1__CODE__FAILED_PRECONDITION);
	cr_assert(strstr(msg, "solo") && strstr(msg, "no shared tier") && strstr(msg, "shared_tier"),
		  "names the session and the missing tier: %s", msg);
	/* refused before anything was done: the session is still here */
	cr_assert_eq(turn(&d, "solo", 1, out, msg, sizeof(msg)), 0, "%s", msg);
	cr_expect_eq(daemon_stop(&d), 0);
	daemon_cleanup(&d);
}

int main(int argc, char *argv[])
{
	if (!getenv("DP_CEPH_CONF") || !getenv("DP_CEPH_POOL")) {
		printf("SKIP: no cluster named (scripts/ceph-test-cluster start; export "
		       "DP_CEPH_CONF and DP_CEPH_POOL)\n");
		return 77;
	}
	struct criterion_test_set *tests = criterion_initialize();
	int result = 0;
	bool run = criterion_handle_args(argc, argv, true);
	criterion_options.jobs = 1; /* they share the cluster */
	if (run)
		result = !criterion_run_all_tests(tests);
	criterion_finalize(tests);
	return result;
}
