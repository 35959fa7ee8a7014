/* SPDX-License-Identifier: MIT */
/*
 * What a session leaves on the shared tier: a session closed without
 * persist on the host that holds it has its segments deleted and an empty
 * manifest (a tombstone) written, so another host then starts it as new.
 * Real dualpathd processes, real cluster; objects counted with `rados ls`.
 */
#include "test_faults.h"

#define GEN 6

static const uint32_t prompt_a[] = { 11, 42, 7, 200, 12, 5 };
static const uint32_t prompt_b[] = { 64, 3, 250, 31, 9, 1 };

/* Objects of the pool whose names start with prefix (-1: rados failed). */
static int tier_objects(const char *prefix)
{
	char cmd[1200];
	snprintf(cmd, sizeof(cmd), "rados -c '%s' -p '%s' ls 2>/dev/null", getenv("DP_CEPH_CONF"),
		 getenv("DP_CEPH_POOL"));
	FILE *f = popen(cmd, "r");
	if (!f)
		return -1;
	int n = 0;
	char line[512];
	while (fgets(line, sizeof(line), f))
		n += !strncmp(line, prefix, strlen(prefix));
	return pclose(f) == 0 ? n : -1;
}

TestSuite(shared_tier_gc, .timeout = 240, .fini = fault_fini);

Test(shared_tier_gc, a_session_closed_without_persist_leaves_no_segments_and_starts_anew_elsewhere)
{
	uint32_t fresh[GEN];
	{ /* the session's first turn, on a daemon that never saw it */
		static struct daemon_proc r;
		fault_track(&r);
		daemon_start(&r, NULL);
		struct fault_turn o;
		fault_turn_run(&r, "ref", prompt_b, 6, GEN, 1, &o);
		cr_assert(fault_acked(&o), "reference: %d %s", o.fin, o.msg);
		memcpy(fresh, o.out, sizeof(fresh));
		cr_assert_eq(daemon_stop(&r), 0);
		daemon_cleanup(&r);
	}
	char sid[64], segs[96];
	snprintf(sid, sizeof(sid), "gc-%ld-%d", (long)time(NULL), (int)getpid());
	snprintf(segs, sizeof(segs), "dp.g.%s.", sid);
	const char *fa[12] = { 0 }, *fb[12] = { 0 };
	fault_host_flags(fa, "host-a", "1500");
	fault_host_flags(fb, "host-b", "1500");
	static struct daemon_proc a, b;
	fault_track(&a);
	fault_track(&b);
	daemon_start(&a, fa);
	daemon_start(&b, fb);
	struct fault_turn o;
	fault_turn_run(&a, sid, prompt_a, 6, GEN, 1, &o);
	cr_assert(fault_acked(&o), "turn 1: %d %s", o.fin, o.msg);
	fault_turn_run(&a, sid, prompt_b, 6, GEN, 2, &o);
	cr_assert(fault_acked(&o), "turn 2: %d %s", o.fin, o.msg);
	int before = tier_objects(segs);
	cr_assert_gt(before, 0, "session %s has no segments on the tier after two turns (%d)", sid,
		     before);

	int fd = client_connect(&a);
	cr_assert_eq(close_session(fd, 3, sid, false), 0, "CloseSession without persist");
	close(fd);
	int left = before;
	for (int i = 0; i < 100 && left != 0; i++) {
		usleep(100000);
		left = tier_objects(segs);
	}
	cr_assert_eq(left, 0, "%d of session %s's %d segments are still on the tier", left, sid, before);
	cr_assert_eq(fault_session_tokens(&a, sid), -1, "A still lists the dropped session");

	/* B takes it (A let its lease go): a new session, not A's history */
	struct fault_turn ob;
	double t0 = fault_now_s();
	do
		fault_turn_run(&b, sid, prompt_b, 6, GEN, 4, &ob);
	while (!fault_acked(&ob) && fault_now_s() - t0 < 10 && usleep(100000) == 0);
	cr_assert(fault_acked(&ob), "B: %d %s", ob.fin, ob.msg);
	cr_assert_arr_eq(ob.out, fresh, sizeof(fresh), "B did not start the dropped session anew");
	cr_assert_eq(fault_session_tokens(&b, sid), 6 + GEN);
	cr_assert_eq(daemon_stop(&a), 0);
	cr_assert_eq(daemon_stop(&b), 0);
	daemon_cleanup(&a);
	daemon_cleanup(&b);
}

int main(int argc, char *argv[])
{
	return fault_main(argc, argv);
}
