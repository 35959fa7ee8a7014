/* SPDX-License-Identifier: MIT */
/*
 * Faults on the shared tier, against the real cluster and real dualpathd
 * processes: a host paused past its lease with a turn pending, an OSD killed
 * while turns commit, and the whole cluster ceasing to answer mid-run. Each
 * checks behaviour a client sees: which turns are acknowledged, and that
 * greedy outputs equal those of a host that never saw a fault.
 */
#include "test_faults.h"

#define GEN 6
#define LEASE "1500"
#define LEASE_US 1500000

static const uint32_t turns[][6] = {
	{ 11, 42, 7, 200, 12, 5 },
	{ 64, 3, 250, 31, 9, 1 },
	{ 8, 19, 77, 140, 2, 33 },
	{ 90, 14, 6, 181, 27, 4 },
	{ 55, 120, 13, 70, 38, 222 },
	{ 17, 99, 23, 41, 5, 160 },
};
#define N_TURNS DP_ARRAY_SIZE(turns)

/* The outputs of n turns of session on a daemon with no shared tier and no
 * fault: what every faulted run must give. Session k's turn t is
 * turns[(t + k) % N_TURNS]. */
static void reference(int k, size_t n, uint32_t out[][GEN])
{
	static struct daemon_proc r;
	fault_track(&r);
	daemon_start(&r, NULL);
	for (size_t t = 0; t < n; t++) {
		struct fault_turn o;
		fault_turn_run(&r, "ref", turns[(t + k) % N_TURNS], 6, GEN, t + 1, &o);
		cr_assert(fault_acked(&o), "reference turn %zu: %d %s", t, o.fin, o.msg);
		cr_assert_eq(o.n, GEN);
		memcpy(out[t], o.out, sizeof(out[t]));
	}
	cr_assert_eq(daemon_stop(&r), 0);
	daemon_cleanup(&r);
}

/* A turn that must be served (a refusal naming a live owner or a tier
 * error is retried for up to wait_s) and must equal want. A turn that
 * differs names the refusals before it: a turn refused yet committed (its
 * manifest write landed after its wait) is in the history the retry
 * continues (at-least-once, DESIGN "Faults"). */
static void served_as(struct daemon_proc *d, const char *sid, int k, size_t t, const uint32_t *want,
		      double wait_s, int *retries)
{
	double t0 = fault_now_s();
	struct fault_turn o;
	char refused[1024] = "";
	size_t used = 0;
	for (;;) {
		fault_turn_run(d, sid, turns[(t + k) % N_TURNS], 6, GEN, 100 + t, &o);
		if (fault_acked(&o) || fault_now_s() - t0 > wait_s)
			break;
		if (retries)
			++*retries;
		if (used < sizeof(refused) - 1)
			used += (size_t)snprintf(refused + used, sizeof(refused) - used, " [%.1f s: %d %s]",
						 fault_now_s() - t0, o.fin, o.msg);
		usleep(100000);
	}
	cr_assert(fault_acked(&o), "session %s turn %zu not served: %d %s;%s", sid, t, o.fin, o.msg,
		  refused);
	cr_assert_eq(o.n, GEN);
	if (memcmp(o.out, want, GEN * sizeof(uint32_t)))
		cr_assert_fail("session %s turn %zu differs from the run without faults; refused "
			       "before:%s; this host's takeovers %.0f, restores %.0f, restore failures "
			       "%.0f, recomputes %.0f", sid, t, refused[0] ? refused : " none",
			       fault_metric(d, "dualpath_shared_takeovers_total", 10000),
			       fault_metric(d, "dualpath_shared_restores_total", 10000),
			       fault_metric(d, "dualpath_shared_restore_failures_total", 10000),
			       fault_metric(d, "dualpath_shared_recomputes_total", 10000));
}

TestSuite(shared_faults, .timeout = 240, .fini = fault_fini);

/* A host paused (SIGSTOP) past its lease with a Generate waiting in its
 * socket, while another host takes the session over and serves a turn:
 * resumed, it must refuse the waiting turn (naming the new owner), never
 * serve or acknowledge it, and the new owner's history stays intact. */
Test(shared_faults, a_host_paused_past_its_lease_with_a_turn_pending_does_not_serve_it_when_resumed)
{
	uint32_t ref[3][GEN];
	reference(0, 3, ref);
	char sid[64];
	snprintf(sid, sizeof(sid), "fp-%ld-%d", (long)time(NULL), (int)getpid());
	const char *fa[12] = { 0 }, *fb[12] = { 0 };
	fault_host_flags(fa, "host-a", LEASE);
	/* B's lease is long: it is surely live when A resumes (with B's as
	 * short as A's, a loaded machine may let it run out first, and A then
	 * takes the session back, as it may) */
	fault_host_flags(fb, "host-b", "10000");
	static struct daemon_proc a, b;
	fault_track(&a);
	fault_track(&b);
	daemon_start(&a, fa);
	daemon_start(&b, fb);
	served_as(&a, sid, 0, 0, ref[0], 0, NULL);

	int fd = client_connect(&a);
	fault_pause(a.pid);
	/* the turn waits in A's socket while A is stopped */
	send_generate(fd, 3, sid, turns[1], 6, GEN, 0, 0);
	usleep(LEASE_US + 500000);
	served_as(&b, sid, 0, 1, ref[1], 10, NULL);
	kill(a.pid, SIGCONT);
	struct fault_turn o;
	fault_collect(fd, 3, &o, 30000);
	close(fd);
	cr_assert_neq(o.fin, -1000, "A never answered its pending turn");
	cr_assert(!fault_acked(&o), "A served and acknowledged a session it lost");
	cr_assert_eq(o.fin, -DUALPATH__V1__CODE__FAILED_PRECONDITION, "%d %s", o.fin, o.msg);
	cr_assert(strstr(o.msg, "host-b"), "the refusal names the owner: %s", o.msg);
	/* B's history is the acknowledged turns, nothing of A's pending one */
	cr_assert_eq(fault_session_tokens(&b, sid), 2 * (6 + GEN));
	served_as(&b, sid, 0, 2, ref[2], 0, NULL);
	cr_assert_eq(daemon_stop(&a), 0);
	cr_assert_eq(daemon_stop(&b), 0);
	daemon_cleanup(&a);
	daemon_cleanup(&b);
}

/* Pool size 3, min_size 2: one OSD killed (SIGKILL) while turns commit
 * loses nothing. Every acknowledged turn is there when the sessions
 * continue on another host, and the OSD comes back. */
Test(shared_faults, an_osd_killed_while_turns_commit_loses_no_acknowledged_turn)
{
	enum { SESSIONS = 3, ROUNDS = 4 };
	uint32_t ref[SESSIONS][ROUNDS + 1][GEN];
	for (int k = 0; k < SESSIONS; k++)
		reference(k, ROUNDS + 1, ref[k]);
	char sid[SESSIONS][64];
	for (int k = 0; k < SESSIONS; k++)
		snprintf(sid[k], sizeof(sid[k]), "fo%d-%ld-%d", k, (long)time(NULL), (int)getpid());
	const char *fa[12] = { 0 }, *fb[12] = { 0 };
	fault_host_flags(fa, "host-a", LEASE);
	fault_host_flags(fb, "host-b", LEASE);
	static struct daemon_proc a, b;
	fault_track(&a);
	fault_track(&b);
	daemon_start(&a, fa);
	daemon_start(&b, fb);
	/* the kill lands while A writes: a child kills osd.1 after a first round */
	int retries = 0;
	for (int k = 0; k < SESSIONS; k++)
		served_as(&a, sid[k], k, 0, ref[k][0], 0, NULL);
	pid_t killer = fork();
	cr_assert_geq(killer, 0);
	if (killer == 0) {
		usleep(50000);
		_exit(fault_cluster("kill-osd", "1"));
	}
	for (int t = 1; t < ROUNDS; t++)
		for (int k = 0; k < SESSIONS; k++)
			served_as(&a, sid[k], k, t, ref[k][t], 40, &retries);
	int st;
	cr_assert_eq(waitpid(killer, &st, 0), killer);
	cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "kill-osd 1 failed");
	/* A stops; B takes every session from the manifests on the 2 OSDs left */
	cr_assert_eq(daemon_stop(&a), 0);
	/* (up to 40 s: placement groups that were still peering when their OSD
	 * died wait for the monitor's grace to mark it down) */
	for (int k = 0; k < SESSIONS; k++)
		served_as(&b, sid[k], k, ROUNDS, ref[k][ROUNDS], 40, &retries);
	cr_assert_eq(fault_cluster("start-osd", "1"), 0, "osd.1 came back");
	cr_assert_eq(daemon_stop(&b), 0);
	daemon_cleanup(&a);
	daemon_cleanup(&b);
	cr_log_info("turns retried while the OSD died: %d", retries);
}

/* The whole cluster stops answering (every daemon of it SIGSTOPped) under a
 * serving host: requests without a session are still answered, a turn on a
 * shared-tier session ends in UNAVAILABLE naming the shared tier (it cannot
 * be made durable, nor the lease held), Stats reports the tier down, and
 * once the cluster answers again the tier is up and the session is served
 * from where it stood. Nothing waits longer than a bounded op timeout. */
Test(shared_faults, a_cluster_that_stops_answering_is_reported_down_and_the_daemon_recovers)
{
	uint32_t ref[2][GEN], plain[GEN], again[3][GEN];
	reference(0, 2, ref);
	/* the turn that fails during the pause is at-least-once (DESIGN,
	 * Faults): its manifest write may time out here and still land when
	 * the cluster resumes; the next turn (the same user message, retried)
	 * then follows it. Its greedy output in that history: */
	{
		static struct daemon_proc r;
		fault_track(&r);
		daemon_start(&r, NULL);
		for (size_t t = 0; t < 3; t++) {
			struct fault_turn o;
			fault_turn_run(&r, "again", turns[t ? 1 : 0], 6, GEN, t + 1, &o);
			cr_assert(fault_acked(&o), "reference turn %zu: %d %s", t, o.fin, o.msg);
			memcpy(again[t], o.out, sizeof(again[t]));
		}
		cr_assert_eq(daemon_stop(&r), 0);
		daemon_cleanup(&r);
	}
	{
		static struct daemon_proc r;
		struct fault_turn o;
		fault_track(&r);
		daemon_start(&r, NULL);
		fault_turn_run(&r, NULL, turns[3], 6, GEN, 1, &o);
		cr_assert(fault_acked(&o));
		memcpy(plain, o.out, sizeof(plain));
		cr_assert_eq(daemon_stop(&r), 0);
		daemon_cleanup(&r);
	}
	char sid[64];
	snprintf(sid, sizeof(sid), "fd-%ld-%d", (long)time(NULL), (int)getpid());
	const char *fa[12] = { 0 };
	fault_host_flags(fa, "host-a", LEASE);
	static struct daemon_proc a;
	fault_track(&a);
	daemon_start(&a, fa);
	served_as(&a, sid, 0, 0, ref[0], 0, NULL);
	cr_assert_eq(fault_metric(&a, "dualpath_shared_tier_up", 10000), 1);

	cr_assert_eq(fault_cluster("pause", NULL), 0);
	double t0 = fault_now_s();
	struct fault_turn o;
	fault_turn_run(&a, sid, turns[1], 6, GEN, 5, &o);
	double took = fault_now_s() - t0;
	bool refused = o.fin == -DUALPATH__V1__CODE__UNAVAILABLE && strstr(o.msg, "shared tier");
	/* a request without a session is answered meanwhile */
	t0 = fault_now_s();
	struct fault_turn p;
	fault_turn_run(&a, NULL, turns[3], 6, GEN, 6, &p);
	double took_plain = fault_now_s() - t0;
	double up_down = -2;
	for (int i = 0; i < 100 && up_down != 0; i++) {
		up_down = fault_metric(&a, "dualpath_shared_tier_up", 10000);
		if (up_down != 0)
			usleep(100000);
	}
	/* a second session turn, once the tier is known down, is refused at once */
	t0 = fault_now_s();
	struct fault_turn o2;
	fault_turn_run(&a, sid, turns[1], 6, GEN, 7, &o2);
	double took2 = fault_now_s() - t0;
	cr_assert_eq(fault_cluster("resume", NULL), 0);

	cr_assert(!fault_acked(&o), "a turn was acknowledged while the tier could not hold it");
	cr_assert(refused, "the session's turn ends in UNAVAILABLE naming the shared tier: %d %s",
		  o.fin, o.msg);
	cr_assert_leq(took, 15.0, "the first refusal waited %.1f s", took);
	cr_assert(fault_acked(&p), "a request without a session was not served: %d %s", p.fin, p.msg);
	cr_assert_arr_eq(p.out, plain, sizeof(plain));
	cr_assert_leq(took_plain, 15.0, "a request without a session waited %.1f s", took_plain);
	cr_assert_eq(up_down, 0, "Stats reports the shared tier down");
	cr_assert_eq(o2.fin, -DUALPATH__V1__CODE__UNAVAILABLE, "%d %s", o2.fin, o2.msg);
	cr_assert_leq(took2, 1.0, "a turn on a tier known down waited %.1f s", took2);

	double up = -2;
	t0 = fault_now_s();
	while (up != 1 && fault_now_s() - t0 < 60) {
		up = fault_metric(&a, "dualpath_shared_tier_up", 10000);
		if (up != 1)
			usleep(200000);
	}
	cr_assert_eq(up, 1, "the shared tier is reported up again");
	/* exactly the acknowledged history, or it and the unacknowledged turn
	 * that landed late: anything else is a wrong output */
	struct fault_turn o3;
	double t3 = fault_now_s();
	do {
		fault_turn_run(&a, sid, turns[1], 6, GEN, 101, &o3);
	} while (!fault_acked(&o3) && fault_now_s() - t3 < 30 && usleep(100000) == 0);
	cr_assert(fault_acked(&o3), "session %s not served after the tier came back: %d %s", sid,
		  o3.fin, o3.msg);
	cr_assert_eq(o3.n, GEN);
	bool once = !memcmp(o3.out, ref[1], sizeof(ref[1]));
	bool twice = !memcmp(o3.out, again[2], sizeof(again[2]));
	cr_assert(once || twice, "session %s: the turn after the outage follows neither the "
		  "acknowledged history nor it with the unacknowledged turn", sid);
	if (twice && !once)
		cr_log_info("the turn refused during the outage had landed late (at-least-once)");
	cr_assert_eq(daemon_stop(&a), 0);
	daemon_cleanup(&a);
}

int main(int argc, char *argv[])
{
	return fault_main(argc, argv);
}
