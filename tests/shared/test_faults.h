/* SPDX-License-Identifier: MIT */
/*
 * Helpers of the shared tier's fault tests and failover campaign: hosts on
 * the test cluster, turns whose every outcome (acknowledged, refused, lost)
 * is reported rather than asserted, and the cluster's faults through
 * scripts/ceph-test-cluster (DP_CEPH_SCRIPT, on the cluster of DP_CEPH_CONF).
 */
#ifndef DP_TESTS_SHARED_FAULTS_H
#define DP_TESTS_SHARED_FAULTS_H

#include <dirent.h>
#include <libgen.h>

#include "base/macros.h"
#include "dpclient.h"

#define FAULT_GEN_MAX 64

/* Daemons a test started: killed after it, whatever became of it (a failed
 * assertion must not leave a host holding the test runner's pipes), and
 * the cluster resumed (a test that paused it may have failed meanwhile). */
static struct daemon_proc *fault_started[8];

static inline void fault_track(struct daemon_proc *d)
{
	for (size_t i = 0; i < DP_ARRAY_SIZE(fault_started); i++)
		if (!fault_started[i] || fault_started[i] == d) {
			fault_started[i] = d;
			return;
		}
}

static int fault_cluster(const char *verb, const char *arg);

static inline void fault_fini(void)
{
	for (size_t i = 0; i < DP_ARRAY_SIZE(fault_started); i++) {
		struct daemon_proc *d = fault_started[i];
		if (d && d->pid > 0) {
			kill(d->pid, SIGCONT);
			kill(d->pid, SIGKILL);
			waitpid(d->pid, NULL, 0);
			d->pid = 0;
			daemon_cleanup(d);
		}
		fault_started[i] = NULL;
	}
	fault_cluster("resume", NULL);
	fault_cluster("start-osd", "1 2>/dev/null"); /* if a test left it dead */
}

/* The shared-tier flags of a host: argv[0..11), NULL after. */
static inline void fault_host_flags(const char **argv, const char *host, const char *lease_ms)
{
	const char *const f[] = { "--shared-tier", "rados", "--rados-conf", getenv("DP_CEPH_CONF"),
				  "--rados-pool", getenv("DP_CEPH_POOL"), "--host-id", host,
				  "--lease-ms", lease_ms, NULL };
	for (int i = 0; i < 11; i++)
		argv[i] = f[i];
}

/* What a turn came to: fin > 0 a finish reason (acknowledged), -code an
 * Error (msg holds its message), -1000 the connection was lost or timed
 * out (no answer). */
struct fault_turn {
	int fin;
	char msg[512];
	size_t n;
	uint32_t out[FAULT_GEN_MAX];
};

/* Read the replies to request id on fd until it ends. */
static inline void fault_collect(int fd, uint64_t id, struct fault_turn *t, int timeout_ms)
{
	t->fin = -1000;
	t->n = 0;
	t->msg[0] = 0;
	for (;;) {
		Dualpath__V1__Response *r = recv_resp(fd, timeout_ms);
		if (!r)
			return;
		if (r->request_id != id) {
			dp_proto_response_free(r);
			continue;
		}
		if (r->body_case == DUALPATH__V1__RESPONSE__BODY_ERROR) {
			t->fin = -(int)r->error->code;
			snprintf(t->msg, sizeof(t->msg), "%s", r->error->message);
			dp_proto_response_free(r);
			return;
		}
		if (r->body_case == DUALPATH__V1__RESPONSE__BODY_TOKEN_CHUNK) {
			for (size_t i = 0; i < r->token_chunk->n_ids && t->n < FAULT_GEN_MAX; i++)
				t->out[t->n++] = r->token_chunk->ids[i];
			int fin = r->token_chunk->finish;
			dp_proto_response_free(r);
			if (fin) {
				t->fin = fin;
				return;
			}
			continue;
		}
		dp_proto_response_free(r);
	}
}

/* One greedy turn of gen tokens on session (NULL: none), without asserts. */
static inline void fault_turn_run(const struct daemon_proc *d, const char *session,
				  const uint32_t *p, size_t n, uint32_t gen, uint64_t id,
				  struct fault_turn *t)
{
	int fd = hello_connect(d);
	if (fd < 0) {
		t->fin = -1000;
		t->n = 0;
		snprintf(t->msg, sizeof(t->msg), "cannot connect to %s", d->sock);
		return;
	}
	send_generate(fd, id, session, p, n, gen, 0, 0);
	fault_collect(fd, id, t, 60000);
	close(fd);
}

static inline bool fault_acked(const struct fault_turn *t)
{
	return t->fin == DUALPATH__V1__FINISH_REASON__FINISH_LENGTH;
}

/* Run scripts/ceph-test-cluster VERB [ARG] on the test cluster; its status. */
static int fault_cluster(const char *verb, const char *arg)
{
	const char *script = getenv("DP_CEPH_SCRIPT");
	const char *conf = getenv("DP_CEPH_CONF");
	cr_assert_not_null(script, "DP_CEPH_SCRIPT is not set");
	char dir[512];
	snprintf(dir, sizeof(dir), "%s", conf);
	char cmd[1200];
	snprintf(cmd, sizeof(cmd), "'%s' %s %s '%s' >&2", script, verb, arg ? arg : "", dirname(dir));
	int st = system(cmd);
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* Stats of a host without asserts: the metric's value, -1 absent, -2 no reply. */
static inline double fault_metric(const struct daemon_proc *d, const char *name, int timeout_ms)
{
	int fd = hello_connect(d);
	if (fd < 0)
		return -2;
	Dualpath__V1__Request r = DUALPATH__V1__REQUEST__INIT;
	Dualpath__V1__StatsRequest st = DUALPATH__V1__STATS_REQUEST__INIT;
	r.request_id = 77;
	r.body_case = DUALPATH__V1__REQUEST__BODY_STATS;
	r.stats = &st;
	double v = -2;
	if (send_req(fd, &r) == 0) {
		Dualpath__V1__Response *resp = recv_resp(fd, timeout_ms);
		if (resp && resp->body_case == DUALPATH__V1__RESPONSE__BODY_STATS) {
			v = -1;
			for (size_t i = 0; i < resp->stats->n_metrics; i++)
				if (strcmp(resp->stats->metrics[i]->name, name) == 0)
					v = resp->stats->metrics[i]->value;
		}
		dp_proto_response_free(resp);
	}
	close(fd);
	return v;
}

/* A session's context length on a host (ListSessions): -1 not there. */
static inline int64_t fault_session_tokens(const struct daemon_proc *d, const char *session)
{
	int fd = hello_connect(d);
	if (fd < 0)
		return -2;
	Dualpath__V1__Request r = DUALPATH__V1__REQUEST__INIT;
	Dualpath__V1__ListSessionsRequest ls = DUALPATH__V1__LIST_SESSIONS_REQUEST__INIT;
	r.request_id = 78;
	r.body_case = DUALPATH__V1__REQUEST__BODY_LIST_SESSIONS;
	r.list_sessions = &ls;
	int64_t v = -2;
	if (send_req(fd, &r) == 0) {
		Dualpath__V1__Response *resp = recv_resp(fd, 30000);
		if (resp && resp->body_case == DUALPATH__V1__RESPONSE__BODY_SESSIONS) {
			v = -1;
			for (size_t i = 0; i < resp->sessions->n_sessions; i++)
				if (strcmp(resp->sessions->sessions[i]->session_id, session) == 0)
					v = (int64_t)resp->sessions->sessions[i]->tokens;
		}
		dp_proto_response_free(resp);
	}
	close(fd);
	return v;
}

/* SIGSTOP pid and wait until every thread of it is stopped: kill() only
 * queues the stop, and a thread running meanwhile may still take a request
 * that is sent right after. */
static inline void fault_pause(pid_t pid)
{
	kill(pid, SIGSTOP);
	char path[64];
	snprintf(path, sizeof(path), "/proc/%d/task", (int)pid);
	for (int tries = 0; tries < 500; tries++) {
		DIR *dir = opendir(path);
		cr_assert_not_null(dir, "%s", path);
		bool all = true;
		struct dirent *e;
		while ((e = readdir(dir))) {
			if (e->d_name[0] == '.')
				continue;
			char stat[320], buf[512];
			snprintf(stat, sizeof(stat), "%.64s/%.32s/stat", path, e->d_name);
			FILE *f = fopen(stat, "r");
			if (!f)
				continue;
			size_t n = fread(buf, 1, sizeof(buf) - 1, f);
			fclose(f);
			buf[n] = 0;
			const char *rp = strrchr(buf, ')'); /* "pid (comm) S ..." */
			if (rp && rp[1] == ' ' && rp[2] != 'T' && rp[2] != 't')
				all = false;
		}
		closedir(dir);
		if (all)
			return;
		usleep(10000);
	}
	cr_assert_fail("pid %d did not stop", (int)pid);
}

static inline double fault_now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* main() of these tests: a skip (77) without a cluster named. */
static inline int fault_main(int argc, char *argv[])
{
	if (!getenv("DP_CEPH_CONF") || !getenv("DP_CEPH_POOL")) {
		printf("SKIP: no cluster named (scripts/ceph-test-cluster start; export "
		       "DP_CEPH_CONF and DP_CEPH_POOL)\n");
		return 77;
	}
	struct criterion_test_set *tests = criterion_initialize();
	criterion_options.jobs = 1; /* one at a time: they share the cluster, and fault it */
	int result = 0;
	if (criterion_handle_args(argc, argv, true))
		result = !criterion_run_all_tests(tests);
	criterion_finalize(tests);
	return result;
}

#endif /* DP_TESTS_SHARED_FAULTS_H */
