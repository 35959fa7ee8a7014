/* SPDX-License-Identifier: MIT */
/*
 * Membership changes seen at once through RADOS watch/notify on the member
 * list (daemon/cluster.c, kvcache/tier-members.c): real daemons on the real
 * cluster (scripts/ceph-test-cluster; DP_CEPH_CONF, DP_CEPH_POOL). The
 * leases are 30 s, so the periodic re-read of the list comes every 10 s: a
 * host that sees a join or a leave within 3 s saw it through a notify (the
 * tests fail with the watch or the notify left out). Exits 77 (skip)
 * without a cluster named.
 */
#include "base/macros.h"
#include "shared-host.h"

#define LEASE_MS "30000" /* the periodic re-read: every 10 s */
#define SEEN_MS	 3000	 /* well within one re-read period */

TestSuite(watch, .init = shared_host_set_tag, .fini = shared_host_kill_leftovers, .timeout = 240);

static void start_host(struct daemon_proc *d, char *host, size_t len, const char *which)
{
	shared_host_start(d, host, len, "w", which, LEASE_MS, NULL);
}

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Whether `v4ctl cluster` on d lists host live (want) or not at all (!want). */
static bool cluster_lists(const struct daemon_proc *d, const char *host, bool want)
{
	char cmd[512], out[8192] = "";
	snprintf(cmd, sizeof(cmd), "%s --socket %s cluster", getenv("V4CTL"), d->sock);
	FILE *p = popen(cmd, "r");
	cr_assert_not_null(p);
	size_t n = fread(out, 1, sizeof(out) - 1, p);
	out[n] = 0;
	cr_assert_eq(pclose(p), 0, "v4ctl cluster: %s", out);
	const char *at = strstr(out, host);
	if (!want)
		return !at;
	const char *eol = at ? strchr(at, '\n') : NULL;
	const char *yes = at ? strstr(at, " yes ") : NULL;
	return at && eol && yes && yes < eol;
}

/* Seconds until cluster_lists(d, host, want) holds; -1 past SEEN_MS. */
static double seen_within(const struct daemon_proc *d, const char *host, bool want)
{
	double t0 = now_s();
	while (now_s() - t0 < SEEN_MS / 1000.0) {
		if (cluster_lists(d, host, want))
			return now_s() - t0;
		usleep(50 * 1000);
	}
	return -1;
}

Test(watch, a_joining_host_is_listed_by_another_well_within_one_reread_period)
{
	struct daemon_proc a, b;
	char ha[64], hb[64];
	start_host(&a, ha, sizeof(ha), "a");
	cr_assert(cluster_lists(&a, ha, true), "A lists itself");
	/* A re-read the list at its start; its next periodic re-read is 10 s
	 * away: B's join must reach it by notify */
	start_host(&b, hb, sizeof(hb), "b");
	double s = seen_within(&a, hb, true);
	cr_assert_geq(s, 0, "A lists B live within %d ms of B serving (re-read period 10 s)",
		      SEEN_MS);
	int fd = client_connect(&a);
	cr_expect_geq(metric(fd, 1, "dualpath_cluster_member_notifies_total"), 1);
	close(fd);
	cr_expect_eq(daemon_stop(&b), 0);
	cr_expect_eq(daemon_stop(&a), 0);
	daemon_cleanup(&a);
	daemon_cleanup(&b);
}

Test(watch, a_leaving_host_is_gone_from_anothers_list_well_within_one_reread_period)
{
	struct daemon_proc a, b;
	char ha[64], hb[64];
	start_host(&a, ha, sizeof(ha), "a");
	start_host(&b, hb, sizeof(hb), "b");
	cr_assert_geq(seen_within(&a, hb, true), 0, "A lists B");
	/* past A's last re-read, so that only a notify can tell it now */
	usleep(500 * 1000);
	cr_assert_eq(daemon_stop(&b), 0, "B stops cleanly (leaves the list)");
	double s = seen_within(&a, hb, false);
	cr_assert_geq(s, 0, "B is gone from A's list within %d ms of its leave (re-read period 10 s)",
		      SEEN_MS);
	cr_expect_eq(daemon_stop(&a), 0);
	daemon_cleanup(&a);
	daemon_cleanup(&b);
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
	criterion_options.jobs = 1; /* each reads the membership the other's daemons change */
	if (run)
		result = !criterion_run_all_tests(tests);
	criterion_finalize(tests);
	return result;
}
