/* SPDX-License-Identifier: MIT */
/*
 * tests/shared/shared-host.h — daemons started as hosts of the test cluster
 * (scripts/ceph-test-cluster: DP_CEPH_CONF, DP_CEPH_POOL): a tag per test
 * process, so host and session ids of tests running in parallel never meet,
 * and every daemon started is killed by the suite's fini when a failed
 * assertion left it running (it would hold the test's stdout and outlive
 * the run). A suite: TestSuite(name, .init = shared_host_set_tag,
 * .fini = shared_host_kill_leftovers).
 */
#ifndef DP_TESTS_SHARED_HOST_H
#define DP_TESTS_SHARED_HOST_H

#include "dpclient.h"

static char tag[48];
static pid_t started[16];
static int n_started;

static inline void shared_host_set_tag(void)
{
	snprintf(tag, sizeof(tag), "%ld-%d", (long)time(NULL) % 100000000, (int)getpid());
}

static inline void shared_host_kill_leftovers(void)
{
	for (int i = 0; i < n_started; i++)
		if (started[i] > 0 && waitpid(started[i], NULL, WNOHANG) == 0) {
			kill(started[i], SIGKILL);
			waitpid(started[i], NULL, 0);
		}
	n_started = 0;
}

/* The host id PREFIX<tag>-WHICH. */
static inline void shared_host_name(char *buf, size_t len, const char *prefix, const char *which)
{
	snprintf(buf, len, "%s%s-%s", prefix, tag, which);
}

/* Start d as host PREFIX<tag>-WHICH (its id in host) on the test cluster,
 * with lease_ms and extra flags (NULL-terminated, or NULL). */
static inline void shared_host_start(struct daemon_proc *d, char *host, size_t len,
				     const char *prefix, const char *which, const char *lease_ms,
				     const char *const *extra)
{
	shared_host_name(host, len, prefix, which);
	const char *argv[24] = { "--shared-tier", "rados", "--rados-conf", getenv("DP_CEPH_CONF"),
				 "--rados-pool", getenv("DP_CEPH_POOL"), "--host-id", host,
				 "--lease-ms", lease_ms };
	int n = 10;
	for (int i = 0; extra && extra[i] && n < 23; i++)
		argv[n++] = extra[i];
	daemon_start(d, argv);
	if (n_started < 16)
		started[n_started++] = d->pid;
}

#endif
