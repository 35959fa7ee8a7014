/* SPDX-License-Identifier: MIT */
/*
 * dualpathd with shared_tier = rados: the real daemon, the real cluster
 * (scripts/ceph-test-cluster; DP_CEPH_CONF and DP_CEPH_POOL). A cluster that
 * cannot be reached at start must not stop the daemon: it serves one-off
 * requests, refuses session turns (they could not be made durable there),
 * and says the shared tier is down. A session moved to another
 * host continues there, its state restored from the tier (not recomputed:
 * the Stats counters say which). Exits 77 (skip) without a cluster named.
 */
#include <poll.h>
#include <rados/librados.h>

#include "base/macros.h"
#include "dpclient.h"
#include "kvcache/tier.h"

/* Host ids are per test process: the tests run in parallel, and a host id
 * is one live daemon's at a time (the membership refuses a second). */
static const char *host_of(const char *host)
{
	static char ids[4][64];
	static int next;
	char *b = ids[next++ % 4];
	snprintf(b, 64, "%s-%d", host, (int)getpid());
	return b;
}

static const uint32_t prompt[] = { 5, 17, 99, 3, 41, 8, 23 };

/* A turn is generated (the daemon serves) and the shared tier gauge reads up. */
static void expect_serving(struct daemon_proc *d, double up)
{
	int fd = client_connect(d);
	uint32_t out[8];
	size_t n = 0;
	send_generate(fd, 10, "s1", prompt, DP_ARRAY_SIZE(prompt), 4, 0, 0);
	cr_assert_eq(collect(fd, 10, out, 8, &n), DUALPATH__V1__FINISH_REASON__FINISH_LENGTH);
	cr_assert_eq(n, 4);
	cr_expect_eq(metric(fd, 11, "dualpath_shared_tier_up"), up);
	close(fd);
}

TestSuite(shared_daemon, .timeout = 180);

Test(shared_daemon, an_unreachable_cluster_at_start_serves_one_offs_refuses_sessions_and_reports_it_down)
{
	struct daemon_proc d;
	char dir[96] = "/var/tmp/dp-test-sh-XXXXXX";
	cr_assert_not_null(mkdtemp(dir));
	char conf[160];
	snprintf(conf, sizeof(conf), "%s/nowhere.conf", dir);
	FILE *f = fopen(conf, "w");
	cr_assert_not_null(f);
	/* a monitor address nothing listens on */
	fprintf(f, "[global]\nmon host = [v2:127.0.0.1:1]\nauth client required = none\n");
	fclose(f);
	daemon_start_in(&d, dir,
			(const char *const[]){ "--shared-tier", "rados", "--rados-conf", conf,
					       "--rados-pool", "kv", "--host-id", "host-a",
					       "--lease-ms", "3000", NULL });
	int fd = client_connect(&d);
	uint32_t out[8];
	size_t n = 0;
	send_generate(fd, 10, NULL, prompt, DP_ARRAY_SIZE(prompt), 4, 0, 0);
	cr_assert_eq(collect(fd, 10, out, 8, &n), DUALPATH__V1__FINISH_REASON__FINISH_LENGTH,
		     "a one-off is served");
	/* a session turn acknowledged here would not be on the tier: refused
	 * (it was served, undurable, before) */
	send_generate(fd, 11, "s1", prompt, DP_ARRAY_SIZE(prompt), 4, 0, 0);
	cr_assert_eq(collect(fd, 11, out, 8, &n), -DUALPATH__V1__CODE__UNAVAILABLE);
	cr_expect_eq(metric(fd, 12, "dualpath_shared_tier_up"), 0);
	close(fd);
	cr_expect_eq(daemon_stop(&d), 0);
	daemon_cleanup(&d);
}

Test(shared_daemon, a_reachable_cluster_reports_the_shared_tier_up)
{
	struct daemon_proc d;
	daemon_start(&d, (const char *const[]){ "--shared-tier", "rados", "--rados-conf",
						getenv("DP_CEPH_CONF"), "--rados-pool",
						getenv("DP_CEPH_POOL"), "--host-id", host_of("host-a"),
						NULL });
	expect_serving(&d, 1);
	cr_expect_eq(daemon_stop(&d), 0);
	daemon_cleanup(&d);
}

Test(shared_daemon, without_a_shared_tier_no_shared_metric_is_reported)
{
	struct daemon_proc d;
	daemon_start(&d, NULL);
	expect_serving(&d, -1);
	cr_expect_eq(daemon_stop(&d), 0);
	daemon_cleanup(&d);
}

/* ---- failover ---------------------------------------------------------------- */

static const uint32_t turn1[] = { 11, 42, 7, 200, 12, 5, 77, 19, 8 };
static const uint32_t turn2[] = { 64, 3, 250, 31, 9 };
#define GEN 6

static char sid[64]; /* unique per run: the pool outlives the test */

static void shared_flags(const char **argv, const char *host)
{
	const char *const f[] = { "--shared-tier", "rados", "--rados-conf", getenv("DP_CEPH_CONF"),
				  "--rados-pool", getenv("DP_CEPH_POOL"), "--host-id", host_of(host),
				  "--lease-ms", "3000", NULL };
	for (int i = 0; i < 11; i++)
		argv[i] = f[i];
}

static int turn(struct daemon_proc *d, const char *session, const uint32_t *p, size_t n,
		uint32_t *out, uint64_t id)
{
	int fd = client_connect(d);
	size_t got = 0;
	send_generate(fd, id, session, p, n, GEN, 0, 0);
	int fin = collect(fd, id, out, GEN, &got);
	close(fd);
	if (fin == DUALPATH__V1__FINISH_REASON__FINISH_LENGTH)
		cr_assert_eq(got, GEN);
	return fin;
}

/* The Error a Generate on session gets, its message in msg. */
static int refusal(struct daemon_proc *d, const char *session, char *msg, size_t len, uint64_t id)
{
	int fd = client_connect(d);
	send_generate(fd, id, session, turn2, DP_ARRAY_SIZE(turn2), GEN, 0, 0);
	int code = 0;
	for (;;) {
		Dualpath__V1__Response *r = recv_resp(fd, 60000);
		cr_assert_not_null(r, "no reply");
		if (r->request_id == id && r->body_case == DUALPATH__V1__RESPONSE__BODY_ERROR) {
			code = (int)r->error->code;
			snprintf(msg, len, "%s", r->error->message);
			dp_proto_response_free(r);
			break;
		}
		bool fin = r->request_id == id && r->body_case == DUALPATH__V1__RESPONSE__BODY_TOKEN_CHUNK &&
			   r->token_chunk->finish;
		dp_proto_response_free(r);
		cr_assert(!fin, "served, not refused");
	}
	close(fd);
	return code;
}

/* The two turns on one daemon that never moves: what every move must give. */
static void reference(uint32_t *o1, uint32_t *o2)
{
	struct daemon_proc r;
	daemon_start(&r, NULL);
	cr_assert_eq(turn(&r, "ref", turn1, DP_ARRAY_SIZE(turn1), o1, 1),
		     DUALPATH__V1__FINISH_REASON__FINISH_LENGTH);
	cr_assert_eq(turn(&r, "ref", turn2, DP_ARRAY_SIZE(turn2), o2, 2),
		     DUALPATH__V1__FINISH_REASON__FINISH_LENGTH);
	cr_assert_eq(daemon_stop(&r), 0);
	daemon_cleanup(&r);
}

static void failover(bool kill9)
{
	uint32_t r1[GEN], r2[GEN], o1[GEN], o2[GEN];
	reference(r1, r2);
	snprintf(sid, sizeof(sid), "mv-%s-%ld-%d", kill9 ? "k" : "s", (long)time(NULL), (int)getpid());

	const char *fa[12] = { 0 }, *fb[12] = { 0 };
	shared_flags(fa, "host-a");
	shared_flags(fb, "host-b");
	struct daemon_proc a, b;
	daemon_start(&a, fa);
	cr_assert_eq(turn(&a, sid, turn1, DP_ARRAY_SIZE(turn1), o1, 1),
		     DUALPATH__V1__FINISH_REASON__FINISH_LENGTH);
	cr_assert_arr_eq(o1, r1, sizeof(o1), "turn 1 on A as on a host that never moved");

	daemon_start(&b, fb);
	char msg[512] = "";
	if (kill9) {
		kill(a.pid, SIGKILL);
		waitpid(a.pid, NULL, 0);
		a.pid = 0;
		/* A's lease is still live: B refuses, naming A */
		cr_assert_eq(refusal(&b, sid, msg, sizeof(msg), 5), DUALPATH__V1__CODE__FAILED_PRECONDITION);
		cr_assert(strstr(msg, "host-a"), "the owner is named: %s", msg);
		usleep(3500 * 1000); /* past the lease */
	} else {
		cr_assert_eq(daemon_stop(&a), 0); /* a clean stop lets the lease go */
	}
	cr_assert_eq(turn(&b, sid, turn2, DP_ARRAY_SIZE(turn2), o2, 2),
		     DUALPATH__V1__FINISH_REASON__FINISH_LENGTH);
	cr_assert_arr_eq(o2, r2, sizeof(o2), "turn 2 on B continues turn 1 of A exactly");
	/* ... from A's state on the tier, not recomputed from the history */
	int fd = client_connect(&b);
	cr_expect_eq(metric(fd, 30, "dualpath_shared_takeovers_total"), 1);
	cr_expect_eq(metric(fd, 31, "dualpath_shared_restores_total"), 1, "B restored the state");
	cr_expect_gt(metric(fd, 32, "dualpath_shared_restore_bytes_total"), 0);
	cr_expect_eq(metric(fd, 33, "dualpath_shared_recomputes_total"), 0, "B did not recompute");
	cr_expect_eq(metric(fd, 34, "dualpath_shared_restore_failures_total"), 0);
	/* and B's turn went to the tier with its state (every page of this small
	 * model's short context changes per turn: none is named again) */
	cr_expect_gt(metric(fd, 35, "dualpath_shared_state_pages_written_total"), 0);
	cr_expect_eq(metric(fd, 36, "dualpath_shared_state_commits_total"), 1);
	close(fd);

	/* A restarted (same state dir, its journal has turn 1) keeps off B's session */
	char adir[96];
	snprintf(adir, sizeof(adir), "%s", a.dir);
	struct daemon_proc a2;
	daemon_start_in(&a2, adir, fa);
	cr_assert_eq(refusal(&a2, sid, msg, sizeof(msg), 7), DUALPATH__V1__CODE__FAILED_PRECONDITION);
	cr_assert(strstr(msg, "host-b"), "the owner is named: %s", msg);
	cr_assert_eq(daemon_stop(&a2), 0);
	cr_assert_eq(daemon_stop(&b), 0);
	daemon_cleanup(&a2);
	daemon_cleanup(&b);
}

Test(shared_daemon, a_session_continues_on_another_host_after_its_host_stops)
{
	failover(false);
}

Test(shared_daemon, a_session_continues_on_another_host_after_its_host_is_killed_past_its_lease)
{
	failover(true);
}

/* A host paused (SIGSTOP) mid-turn past its lease, while another host takes
 * the session over, must not acknowledge that turn when it resumes: its
 * manifest write is fenced, the client gets an Error, and the new host's
 * turn stands. */
Test(shared_daemon, a_host_paused_past_its_lease_mid_turn_is_fenced_when_it_resumes)
{
	uint32_t r1[GEN], r2[GEN], o1[GEN], o2[GEN];
	reference(r1, r2);
	snprintf(sid, sizeof(sid), "mv-p-%ld-%d", (long)time(NULL), (int)getpid());
	const char *fa[12] = { 0 }, *fb[12] = { 0 };
	shared_flags(fa, "host-a");
	shared_flags(fb, "host-b");
	struct daemon_proc a, b;
	daemon_start(&a, fa);
	daemon_start(&b, fb);
	cr_assert_eq(turn(&a, sid, turn1, DP_ARRAY_SIZE(turn1), o1, 1),
		     DUALPATH__V1__FINISH_REASON__FINISH_LENGTH);
	cr_assert_arr_eq(o1, r1, sizeof(o1));
	/* a long turn on A: pause A once its first tokens arrive */
	int fa_fd = client_connect(&a);
	send_generate(fa_fd, 3, sid, turn2, DP_ARRAY_SIZE(turn2), 4000, 0, 0);
	Dualpath__V1__Response *r = recv_resp(fa_fd, 60000);
	cr_assert(r && r->body_case == DUALPATH__V1__RESPONSE__BODY_TOKEN_CHUNK &&
		  !r->token_chunk->finish, "A is generating");
	kill(a.pid, SIGSTOP);
	dp_proto_response_free(r);
	usleep(3500 * 1000); /* past A's lease */
	cr_assert_eq(turn(&b, sid, turn2, DP_ARRAY_SIZE(turn2), o2, 2),
		     DUALPATH__V1__FINISH_REASON__FINISH_LENGTH);
	cr_assert_arr_eq(o2, r2, sizeof(o2), "B continues from the last acknowledged turn");
	kill(a.pid, SIGCONT);
	int code = 0;
	char msg[512] = "";
	for (;;) {
		r = recv_resp(fa_fd, 60000);
		cr_assert_not_null(r, "A's turn ends");
		if (r->body_case == DUALPATH__V1__RESPONSE__BODY_ERROR) {
			code = (int)r->error->code;
			snprintf(msg, sizeof(msg), "%s", r->error->message);
			dp_proto_response_free(r);
			break;
		}
		bool fin = r->body_case == DUALPATH__V1__RESPONSE__BODY_TOKEN_CHUNK &&
			   r->token_chunk->finish;
		dp_proto_response_free(r);
		cr_assert(!fin, "A acknowledged a turn after losing the session");
	}
	close(fa_fd);
	cr_assert_eq(code, DUALPATH__V1__CODE__UNAVAILABLE, "%s", msg);
	cr_assert(strstr(msg, "another host took the session over"), "%s", msg);
	/* and A is refused the session while B serves it, naming B (B holds
	 * its lease while a turn runs: A's resumed turn may have outlasted the
	 * lease B took for turn 2 on a slow build, leaving the session free) */
	int fb_fd = client_connect(&b);
	send_generate(fb_fd, 8, sid, turn1, DP_ARRAY_SIZE(turn1), 4000, 0, 0);
	r = recv_resp(fb_fd, 60000);
	cr_assert(r && r->body_case == DUALPATH__V1__RESPONSE__BODY_TOKEN_CHUNK, "B is generating");
	dp_proto_response_free(r);
	cr_assert_eq(refusal(&a, sid, msg, sizeof(msg), 9), DUALPATH__V1__CODE__FAILED_PRECONDITION);
	cr_assert(strstr(msg, "host-b"), "%s", msg);
	close(fb_fd); /* cancels B's turn */
	/* A's cluster thread found the lease taken at its first renewal after
	 * the pause, and counted it */
	int mfd = client_connect(&a);
	double lost = 0;
	for (int i = 0; i < 30 && (lost = metric(mfd, 10 + (uint64_t)i,
						  "dualpath_shared_leases_lost_total")) < 1; i++)
		usleep(100 * 1000);
	close(mfd);
	cr_assert_eq(lost, 1, "the lost lease is counted once");
	cr_assert_eq(daemon_stop(&a), 0);
	cr_assert_eq(daemon_stop(&b), 0);
	daemon_cleanup(&a);
	daemon_cleanup(&b);
}

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* The serving host renews its lease while a turn runs: a turn longer than
 * lease_ms keeps its session (another host is refused meanwhile) and is
 * acknowledged. */
Test(shared_daemon, a_turn_longer_than_its_lease_keeps_the_session_and_is_acknowledged)
{
	snprintf(sid, sizeof(sid), "long-%ld-%d", (long)time(NULL), (int)getpid());
	const char *fa[14] = { 0 }, *fb[14] = { 0 };
	shared_flags(fa, "host-a");
	shared_flags(fb, "host-b");
	fa[9] = fb[9] = "1000"; /* --lease-ms */
	/* the embedded model: its turns are slow enough to outlast a lease */
	const char *em = getenv("DP_TEST_EMBEDDED_MODEL");
	cr_assert_not_null(em, "DP_TEST_EMBEDDED_MODEL is not set");
	fa[10] = fb[10] = "--model";
	fa[11] = fb[11] = em;
	struct daemon_proc a, b;
	daemon_start(&a, fa);
	daemon_start(&b, fb);
	int fd = client_connect(&a);
	send_generate(fd, 3, sid, turn2, DP_ARRAY_SIZE(turn2), 4000, 0, 0);
	Dualpath__V1__Response *r = recv_resp(fd, 60000);
	cr_assert(r && r->body_case == DUALPATH__V1__RESPONSE__BODY_TOKEN_CHUNK, "A is generating");
	bool fin = r->token_chunk->finish;
	dp_proto_response_free(r);
	double t0 = now_s();
	char msg[512] = "";
	int refused = 0;
	/* ask B every 300 ms while A's turn runs */
	while (!fin) {
		if (now_s() - t0 > 0.3 * (refused + 1)) {
			cr_assert_eq(refusal(&b, sid, msg, sizeof(msg), 20 + refused),
				     DUALPATH__V1__CODE__FAILED_PRECONDITION);
			cr_assert(strstr(msg, "host-a"), "%s", msg);
			refused++;
		}
		r = recv_resp(fd, 60000);
		cr_assert_not_null(r, "A's turn ends");
		cr_assert_neq(r->body_case, DUALPATH__V1__RESPONSE__BODY_ERROR, "A's turn failed: %s",
			      r->error ? r->error->message : "");
		fin = r->body_case == DUALPATH__V1__RESPONSE__BODY_TOKEN_CHUNK && r->token_chunk->finish;
		dp_proto_response_free(r);
	}
	double took = now_s() - t0;
	close(fd);
	cr_assert_eq(daemon_stop(&a), 0);
	cr_assert_eq(daemon_stop(&b), 0);
	daemon_cleanup(&a);
	daemon_cleanup(&b);
	if (took < 2.0)
		cr_skip_test("the turn took %.2f s, not past its 1 s lease twice on this machine "
			     "(nothing shown)", took);
	cr_assert_geq(refused, 6, "B was refused throughout (%d times in %.2f s)", refused, took);
}

/* A long context of the embedded model: its growing streams fill pages that
 * later turns leave unchanged. The second turn names them again instead of
 * writing them, so its manifest mixes segments of both turns; the host that
 * takes the session over restores that mixture exactly. */
Test(shared_daemon, unchanged_pages_are_named_again_and_a_state_of_two_turns_segments_restores_exactly)
{
	const char *em = getenv("DP_TEST_EMBEDDED_MODEL");
	cr_assert_not_null(em, "DP_TEST_EMBEDDED_MODEL is not set");
	enum { LONG = 2500 };
	static uint32_t longp[LONG];
	uint64_t x = 7;
	for (int i = 0; i < LONG; i++) {
		x = x * 6364136223846793005ull + 1442695040888963407ull;
		longp[i] = (uint32_t)((x >> 33) % 256);
	}
	uint32_t r[3][GEN], o[3][GEN];
	struct daemon_proc ref;
	daemon_start(&ref, (const char *const[]){ "--model", em, NULL });
	cr_assert_eq(turn(&ref, "ref", longp, LONG, r[0], 1), DUALPATH__V1__FINISH_REASON__FINISH_LENGTH);
	cr_assert_eq(turn(&ref, "ref", turn2, DP_ARRAY_SIZE(turn2), r[1], 2),
		     DUALPATH__V1__FINISH_REASON__FINISH_LENGTH);
	cr_assert_eq(turn(&ref, "ref", turn1, DP_ARRAY_SIZE(turn1), r[2], 3),
		     DUALPATH__V1__FINISH_REASON__FINISH_LENGTH);
	cr_assert_eq(daemon_stop(&ref), 0);
	daemon_cleanup(&ref);

	snprintf(sid, sizeof(sid), "mix-%ld-%d", (long)time(NULL), (int)getpid());
	const char *fa[14] = { 0 }, *fb[14] = { 0 };
	shared_flags(fa, "host-a");
	shared_flags(fb, "host-b");
	fa[10] = fb[10] = "--model";
	fa[11] = fb[11] = em;
	struct daemon_proc a, b;
	daemon_start(&a, fa);
	cr_assert_eq(turn(&a, sid, longp, LONG, o[0], 1), DUALPATH__V1__FINISH_REASON__FINISH_LENGTH);
	cr_assert_eq(turn(&a, sid, turn2, DP_ARRAY_SIZE(turn2), o[1], 2),
		     DUALPATH__V1__FINISH_REASON__FINISH_LENGTH);
	int fd = client_connect(&a);
	double written = metric(fd, 30, "dualpath_shared_state_pages_written_total");
	double reused = metric(fd, 31, "dualpath_shared_state_pages_reused_total");
	close(fd);
	cr_expect_gt(reused, 0, "turn 2 named turn 1's unchanged pages again");
	cr_expect_gt(written, 0);
	cr_assert_eq(daemon_stop(&a), 0);
	daemon_start(&b, fb);
	cr_assert_eq(turn(&b, sid, turn1, DP_ARRAY_SIZE(turn1), o[2], 3),
		     DUALPATH__V1__FINISH_REASON__FINISH_LENGTH);
	cr_assert_arr_eq(o, r, sizeof(o), "every turn as on a host that never moved");
	fd = client_connect(&b);
	cr_expect_eq(metric(fd, 32, "dualpath_shared_restores_total"), 1);
	cr_expect_eq(metric(fd, 33, "dualpath_shared_recomputes_total"), 0);
	close(fd);
	cr_assert_eq(daemon_stop(&b), 0);
	daemon_cleanup(&a);
	daemon_cleanup(&b);
}

/* ---- state on the tier: damage and versions ----------------------------------- */

static void tier_connect(rados_t *cl, rados_ioctx_t *io)
{
	cr_assert_eq(rados_create(cl, "admin"), 0);
	cr_assert_eq(rados_conf_read_file(*cl, getenv("DP_CEPH_CONF")), 0);
	cr_assert_eq(rados_connect(*cl), 0);
	cr_assert_eq(rados_ioctx_create(*cl, getenv("DP_CEPH_POOL"), io), 0);
}

/* Overwrite bytes of the first page of every segment of session s (what a
 * bad disk or a bad actor does); returns how many segments. */
static int corrupt_segments(const char *s)
{
	rados_t cl;
	rados_ioctx_t io;
	tier_connect(&cl, &io);
	char prefix[160];
	snprintf(prefix, sizeof(prefix), "dp.g.%s.", s);
	rados_list_ctx_t ls;
	cr_assert_eq(rados_nobjects_list_open(io, &ls), 0);
	const char *name;
	int n = 0;
	char junk[64];
	memset(junk, 0xa5, sizeof(junk));
	while (rados_nobjects_list_next(ls, &name, NULL, NULL) == 0) {
		if (strncmp(name, prefix, strlen(prefix)))
			continue;
		cr_assert_eq(rados_write(io, name, junk, sizeof(junk), DP_KV_SHARED_HEADER_BYTES + 100), 0);
		n++;
	}
	rados_nobjects_list_close(ls);
	rados_ioctx_destroy(io);
	rados_shutdown(cl);
	return n;
}

Test(shared_daemon, a_corrupt_segment_makes_the_new_host_recompute_and_answer_the_same)
{
	uint32_t r1[GEN], r2[GEN], o1[GEN], o2[GEN];
	reference(r1, r2);
	snprintf(sid, sizeof(sid), "bad-%ld-%d", (long)time(NULL), (int)getpid());
	const char *fa[12] = { 0 }, *fb[12] = { 0 };
	shared_flags(fa, "host-a");
	shared_flags(fb, "host-b");
	struct daemon_proc a, b;
	daemon_start(&a, fa);
	cr_assert_eq(turn(&a, sid, turn1, DP_ARRAY_SIZE(turn1), o1, 1),
		     DUALPATH__V1__FINISH_REASON__FINISH_LENGTH);
	cr_assert_arr_eq(o1, r1, sizeof(o1));
	cr_assert_eq(daemon_stop(&a), 0);
	cr_assert_gt(corrupt_segments(sid), 0, "A wrote its state as segments");
	daemon_start(&b, fb);
	cr_assert_eq(turn(&b, sid, turn2, DP_ARRAY_SIZE(turn2), o2, 2),
		     DUALPATH__V1__FINISH_REASON__FINISH_LENGTH);
	cr_assert_arr_eq(o2, r2, sizeof(o2), "never served wrong: recomputed, the same answer");
	int fd = client_connect(&b);
	cr_expect_eq(metric(fd, 30, "dualpath_shared_restore_failures_total"), 1);
	cr_expect_eq(metric(fd, 31, "dualpath_shared_recomputes_total"), 1);
	cr_expect_eq(metric(fd, 32, "dualpath_shared_restores_total"), 0);
	close(fd);
	cr_assert_eq(daemon_stop(&b), 0);
	daemon_cleanup(&a);
	daemon_cleanup(&b);
}

static void on_done(void *arg, int res)
{
	*(int *)arg = res;
}

Test(shared_daemon, a_manifest_of_an_unknown_version_is_refused_naming_the_version)
{
	snprintf(sid, sizeof(sid), "ver-%ld-%d", (long)time(NULL), (int)getpid());
	/* a host of another release wrote the session's manifest */
	struct dp_kv_shared_opts o = { .conf = getenv("DP_CEPH_CONF"), .pool = getenv("DP_CEPH_POOL"),
				       .host_id = "host-future", .lease_ms = 3000 };
	struct dp_kv_shared *t;
	char err[256];
	cr_assert_eq(dp_kv_shared_open(&o, &t, err, sizeof(err)), 0, "%s", err);
	uint64_t epoch;
	cr_assert_eq(dp_kv_shared_lease_take(t, sid, &epoch, NULL, 0), 1);
	const uint32_t future[4] = { 99, 0, 0, 0 }; /* version 99, owner, no tokens */
	int res = 1;
	cr_assert_eq(dp_kv_shared_manifest_put(t, sid, future, sizeof(future), on_done, &res), 0);
	while (res == 1) {
		struct pollfd p = { .fd = dp_kv_shared_fd(t), .events = POLLIN };
		poll(&p, 1, 100);
		dp_kv_shared_reap(t, 0);
	}
	cr_assert_eq(res, 0);
	cr_assert_eq(dp_kv_shared_lease_release(t, sid), 0);
	dp_kv_shared_close(t);

	const char *fa[12] = { 0 };
	shared_flags(fa, "host-a");
	struct daemon_proc a;
	daemon_start(&a, fa);
	char msg[512] = "";
	cr_assert_eq(refusal(&a, sid, msg, sizeof(msg), 5), DUALPATH__V1__CODE__UNAVAILABLE);
	cr_assert(strstr(msg, "version 99") && strstr(msg, "version 2"), "the versions are named: %s",
		  msg);
	cr_assert_eq(daemon_stop(&a), 0);
	daemon_cleanup(&a);
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
	if (criterion_handle_args(argc, argv, true))
		result = !criterion_run_all_tests(tests);
	criterion_finalize(tests);
	return result;
}
