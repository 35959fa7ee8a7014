/* SPDX-License-Identifier: MIT */
/*
 * Membership, rendezvous hashing and lease renewal of dualpathd on the
 * shared tier (daemon/cluster.h): real daemons on the real cluster
 * (scripts/ceph-test-cluster; DP_CEPH_CONF, DP_CEPH_POOL, DP_CEPH_DIR).
 * Host ids are unique per run (the pool outlives the test). Exits 77 (skip)
 * without a cluster named.
 */
#include <xxhash.h>

#include "base/macros.h"
#include "shared-host.h"

static char tag[48]; /* per run: host ids and session ids */

static void host_name(char *buf, size_t len, const char *which)
{
	shared_host_name(buf, len, "c", which);
}

/* Start a daemon as host `which` with lease_ms, and extra flags. */
static void start_host(struct daemon_proc *d, char *host, size_t host_len, const char *which,
		       const char *lease_ms, const char *const *extra)
{
	shared_host_start(d, host, host_len, "c", which, lease_ms, extra);
}

/* A ClusterRequest for ids[0..n). */
static Dualpath__V1__Response *cluster_req(int fd, uint64_t id, char **ids, size_t n)
{
	Dualpath__V1__ClusterRequest c = DUALPATH__V1__CLUSTER_REQUEST__INIT;
	Dualpath__V1__Request r = DUALPATH__V1__REQUEST__INIT;
	c.n_session_ids = n;
	c.session_ids = ids;
	r.request_id = id;
	r.body_case = DUALPATH__V1__REQUEST__BODY_CLUSTER;
	r.cluster = &c;
	cr_assert_eq(send_req(fd, &r), 0);
	for (;;) {
		Dualpath__V1__Response *resp = recv_resp(fd, 30000);
		cr_assert_not_null(resp, "no Cluster reply");
		if (resp->request_id != id) {
			dp_proto_response_free(resp);
			continue;
		}
		cr_assert_eq(resp->body_case, DUALPATH__V1__RESPONSE__BODY_CLUSTER, "%s",
			     resp->body_case == DUALPATH__V1__RESPONSE__BODY_ERROR ? resp->error->message
										   : "not a ClusterReply");
		return resp;
	}
}

static const Dualpath__V1__ClusterMember *member(const Dualpath__V1__ClusterReply *c, const char *host)
{
	for (size_t i = 0; i < c->n_members; i++)
		if (!strcmp(c->members[i]->host_id, host))
			return c->members[i];
	return NULL;
}

/* Whether d sees host live (with socket sock) within ms. */
static bool sees(struct daemon_proc *d, const char *host, const char *sock, bool live, int ms)
{
	int fd = client_connect(d);
	bool ok = false;
	for (int waited = 0; waited <= ms && !ok; waited += 200) {
		Dualpath__V1__Response *r = cluster_req(fd, 100 + (uint64_t)waited, NULL, 0);
		const Dualpath__V1__ClusterMember *m = member(r->cluster, host);
		ok = live ? m && m->live && (!sock || !strcmp(m->socket, sock)) : !m || !m->live;
		dp_proto_response_free(r);
		if (!ok)
			usleep(200 * 1000);
	}
	close(fd);
	return ok;
}

static void stop_all(struct daemon_proc *d, int n)
{
	for (int i = 0; i < n; i++) {
		if (d[i].pid > 0)
			cr_expect_eq(daemon_stop(&d[i]), 0, "daemon %d stops cleanly", i);
		daemon_cleanup(&d[i]);
	}
}

/* Tests run in parallel, each in its own process: the tag is that
 * process's, so host ids never meet across tests or runs. */
TestSuite(cluster, .init = shared_host_set_tag, .fini = shared_host_kill_leftovers, .timeout = 240);

Test(cluster, three_daemons_see_each_other_live_with_their_addresses)
{
	struct daemon_proc d[3];
	char h[3][64];
	const char *which[3] = { "a", "b", "c" };
	for (int i = 0; i < 3; i++)
		start_host(&d[i], h[i], sizeof(h[i]), which[i], "3000", NULL);
	for (int i = 0; i < 3; i++)
		for (int j = 0; j < 3; j++)
			cr_assert(sees(&d[i], h[j], d[j].sock, true, 3000), "%s sees %s live at %s", h[i],
				  h[j], d[j].sock);
	/* and v4ctl cluster prints them */
	char cmd[512], out[8192] = "";
	snprintf(cmd, sizeof(cmd), "%s --socket %s cluster", getenv("V4CTL"), d[0].sock);
	FILE *p = popen(cmd, "r");
	cr_assert_not_null(p);
	size_t n = fread(out, 1, sizeof(out) - 1, p);
	out[n] = 0;
	cr_assert_eq(pclose(p), 0, "v4ctl cluster: %s", out);
	for (int j = 0; j < 3; j++) {
		char line[256];
		snprintf(line, sizeof(line), "%s", h[j]);
		const char *at = strstr(out, line);
		cr_assert_not_null(at, "%s listed:\n%s", h[j], out);
		const char *eol = strchr(at, '\n');
		cr_assert(eol && strstr(at, d[j].sock) && strstr(at, d[j].sock) < eol &&
			  strstr(at, " yes ") && strstr(at, " yes ") < eol, "%s live at %s:\n%s", h[j],
			  d[j].sock, out);
	}
	stop_all(d, 3);
}

Test(cluster, a_killed_member_drops_out_once_its_heartbeat_expires_and_a_stopped_one_at_once)
{
	struct daemon_proc d[3];
	char h[3][64];
	const char *which[3] = { "a", "b", "c" };
	for (int i = 0; i < 3; i++)
		start_host(&d[i], h[i], sizeof(h[i]), which[i], "1500", NULL);
	cr_assert(sees(&d[0], h[2], NULL, true, 3000));
	cr_assert(sees(&d[0], h[1], NULL, true, 3000));
	kill(d[2].pid, SIGKILL);
	waitpid(d[2].pid, NULL, 0);
	d[2].pid = 0;
	/* live right after (its beat is fresh), not live past its ttl + a period */
	cr_assert(sees(&d[0], h[2], NULL, false, 1500 + 500 + 1500), "%s dropped out", h[2]);
	cr_assert(sees(&d[1], h[2], NULL, false, 1000), "every member sees it so");
	/* a stopped member leaves: gone from the list at once */
	cr_assert_eq(daemon_stop(&d[1]), 0);
	int fd = client_connect(&d[0]);
	/* the next member list re-read (every third of 1500 ms; a loaded or
	 * sanitized build may be late by a few periods), not its ttl */
	bool gone = false;
	for (int i = 0; i < 30 && !gone; i++) {
		usleep(100 * 1000);
		Dualpath__V1__Response *r = cluster_req(fd, 5 + (uint64_t)i, NULL, 0);
		gone = !member(r->cluster, h[1]);
		dp_proto_response_free(r);
	}
	cr_expect(gone, "%s left the list", h[1]);
	close(fd);
	stop_all(d, 3);
}

/* An entry of a member dead for long (its beat at the epoch) is removed by
 * a live member; one that is merely not live stays (shown as such). */
Test(cluster, a_long_dead_members_entry_is_forgotten_and_a_recently_dead_one_kept)
{
	char old_host[64], recent_host[64], file[128], cmd[1024];
	host_name(old_host, sizeof(old_host), "ancient");
	host_name(recent_host, sizeof(recent_host), "recent");
	snprintf(file, sizeof(file), "/tmp/dp-test-member-%s", tag);
	struct {
		const char *host;
		unsigned long long beat;
	} e[2] = { { old_host, 1000 }, { recent_host, 0 } };
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	e[1].beat = (unsigned long long)ts.tv_sec * 1000 - 5000; /* 5 s ago: not live, not long dead */
	for (int i = 0; i < 2; i++) {
		FILE *f = fopen(file, "w");
		cr_assert_not_null(f);
		fprintf(f, "dpm1 %llu %llu 1000\n/nowhere/sock\n\n", e[i].beat, e[i].beat);
		fclose(f);
		snprintf(cmd, sizeof(cmd), "rados -c '%s' -p '%s' setomapval dp.members '%s' --input-file '%s'",
			 getenv("DP_CEPH_CONF"), getenv("DP_CEPH_POOL"), e[i].host, file);
		cr_assert_eq(system(cmd), 0, "%s", cmd);
	}
	unlink(file);
	struct daemon_proc a;
	char ha[64];
	start_host(&a, ha, sizeof(ha), "a", "1500", NULL);
	int fd = client_connect(&a);
	bool gone = false, kept = false;
	for (int i = 0; i < 20 && !gone; i++) {
		usleep(200 * 1000);
		Dualpath__V1__Response *r = cluster_req(fd, 10 + (uint64_t)i, NULL, 0);
		const Dualpath__V1__ClusterMember *m = member(r->cluster, recent_host);
		gone = !member(r->cluster, old_host);
		kept = m && !m->live && !strcmp(m->socket, "/nowhere/sock");
		dp_proto_response_free(r);
	}
	close(fd);
	cr_assert(gone, "%s, dead since 1970, forgotten", old_host);
	cr_assert(kept, "%s, dead 5 s, listed as not live", recent_host);
	snprintf(cmd, sizeof(cmd), "rados -c '%s' -p '%s' rmomapkey dp.members '%s'",
		 getenv("DP_CEPH_CONF"), getenv("DP_CEPH_POOL"), recent_host);
	(void)!system(cmd);
	stop_all(&a, 1);
}

Test(cluster, a_second_daemon_with_a_live_host_id_is_refused_naming_it_and_its_address)
{
	struct daemon_proc a;
	char h[64];
	start_host(&a, h, sizeof(h), "dup", "3000", NULL);
	char dir[96] = "/var/tmp/dp-test-dup-XXXXXX";
	cr_assert_not_null(mkdtemp(dir));
	char log[16384];
	daemon_start_refused(dir, test_model(),
			     (const char *const[]){ "--shared-tier", "rados", "--rados-conf",
						    getenv("DP_CEPH_CONF"), "--rados-pool",
						    getenv("DP_CEPH_POOL"), "--host-id", h,
						    "--lease-ms", "3000", NULL },
			     log, sizeof(log));
	cr_assert(strstr(log, h), "names the host id: %s", log);
	cr_assert(strstr(log, a.sock), "names the live one's address %s: %s", a.sock, log);
	cr_assert(strstr(log, "already on the shared tier"), "%s", log);
	/* and the first one still serves and is still the member */
	cr_assert(sees(&a, h, a.sock, true, 1000));
	char cmd[160];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	(void)!system(cmd);
	stop_all(&a, 1);
}

Test(cluster, every_member_names_the_same_rendezvous_host_and_it_is_the_documented_hash)
{
	struct daemon_proc d[3];
	char h[3][64];
	const char *which[3] = { "a", "b", "c" };
	for (int i = 0; i < 3; i++)
		start_host(&d[i], h[i], sizeof(h[i]), which[i], "3000", NULL);
	for (int i = 0; i < 3; i++)
		for (int j = 0; j < 3; j++)
			cr_assert(sees(&d[i], h[j], NULL, true, 3000));
	enum { N = 24 };
	char idbuf[N][64], *ids[N];
	for (int s = 0; s < N; s++) {
		snprintf(idbuf[s], sizeof(idbuf[s]), "hrw-%s-%d", tag, s);
		ids[s] = idbuf[s];
	}
	int hit[3] = { 0 };
	char first[N][64];
	for (int i = 0; i < 3; i++) {
		int fd = client_connect(&d[i]);
		Dualpath__V1__Response *r = cluster_req(fd, 7, ids, N);
		const Dualpath__V1__ClusterReply *c = r->cluster;
		cr_assert_eq(c->n_sessions, N);
		for (int s = 0; s < N; s++) {
			/* the live member with the highest XXH3(host \0 session):
			 * the three, and any other live one the pool has (tests run
			 * one at a time; members of earlier runs are not live) */
			const char *best = NULL;
			uint64_t bs = 0;
			for (size_t j = 0; j < c->n_members; j++) {
				if (!c->members[j]->live)
					continue;
				char buf[256];
				const char *host = c->members[j]->host_id;
				size_t hl = strlen(host), sl = strlen(ids[s]);
				memcpy(buf, host, hl + 1);
				memcpy(buf + hl + 1, ids[s], sl);
				uint64_t sc = XXH3_64bits(buf, hl + 1 + sl);
				if (!best || sc > bs || (sc == bs && strcmp(host, best) < 0)) {
					best = host;
					bs = sc;
				}
			}
			const Dualpath__V1__SessionPlacement *p = c->sessions[s];
			cr_assert_not_null(best);
			cr_assert_str_eq(p->session_id, ids[s]);
			cr_assert_str_eq(p->rendezvous, best, "%s from %s", ids[s], h[i]);
			cr_assert_str_eq(p->owner, "", "nobody holds %s", ids[s]);
			cr_assert_str_eq(p->error, "");
			if (i == 0)
				snprintf(first[s], sizeof(first[s]), "%s", p->rendezvous);
			else
				cr_assert_str_eq(p->rendezvous, first[s], "%s: %s and %s agree", ids[s],
						 h[0], h[i]);
			for (int j = 0; j < 3; j++)
				hit[j] += i == 0 && !strcmp(best, h[j]);
		}
		dp_proto_response_free(r);
		close(fd);
	}
	for (int j = 0; j < 3; j++)
		cr_expect_gt(hit[j], 0, "%s is the rendezvous host of some of %d sessions", h[j], N);
	stop_all(d, 3);
}

static const uint32_t prompt[] = { 11, 42, 7, 200, 12, 5, 77, 19, 8 };

/* The Error a Generate on session gets (0 when it was served). */
static int generate_result(struct daemon_proc *d, const char *session, char *msg, size_t len,
			   uint64_t id)
{
	int fd = client_connect(d);
	send_generate(fd, id, session, prompt, DP_ARRAY_SIZE(prompt), 4, 0, 0);
	int code = 0;
	msg[0] = 0;
	for (;;) {
		Dualpath__V1__Response *r = recv_resp(fd, 60000);
		cr_assert_not_null(r, "no reply");
		if (r->request_id == id && r->body_case == DUALPATH__V1__RESPONSE__BODY_ERROR) {
			code = (int)r->error->code;
			snprintf(msg, len, "%s", r->error->message);
			dp_proto_response_free(r);
			break;
		}
		bool fin = r->request_id == id &&
			   r->body_case == DUALPATH__V1__RESPONSE__BODY_TOKEN_CHUNK && r->token_chunk->finish;
		dp_proto_response_free(r);
		if (fin)
			break;
	}
	close(fd);
	return code;
}

Test(cluster, a_session_held_elsewhere_is_refused_naming_its_host_and_address_and_a_free_one_is_served_here)
{
	struct daemon_proc a, b;
	char ha[64], hb[64];
	start_host(&a, ha, sizeof(ha), "a", "3000", NULL);
	start_host(&b, hb, sizeof(hb), "b", "3000",
		   (const char *const[]){ "--advertise", "10.1.2.3:8000", NULL });
	cr_assert(sees(&a, hb, NULL, true, 3000));
	cr_assert(sees(&b, ha, NULL, true, 3000));
	/* a free session whose rendezvous host is B, asked of A: served by A
	 * (ownership is the lease; hashing is advice) */
	char sid[64] = "", *ids[1];
	int fd = client_connect(&a);
	for (int s = 0; s < 64 && !sid[0]; s++) {
		char id[64];
		snprintf(id, sizeof(id), "own-%s-%d", tag, s);
		ids[0] = id;
		Dualpath__V1__Response *r = cluster_req(fd, 10 + (uint64_t)s, ids, 1);
		if (!strcmp(r->cluster->sessions[0]->rendezvous, hb))
			snprintf(sid, sizeof(sid), "%s", id);
		dp_proto_response_free(r);
	}
	cr_assert(sid[0], "some session hashes to B");
	char msg[512];
	cr_assert_eq(generate_result(&a, sid, msg, sizeof(msg), 20), 0, "served by A: %s", msg);
	/* A holds it now: owner A, lease listed, v4ctl sessions' HOST column */
	ids[0] = sid;
	Dualpath__V1__Response *r = cluster_req(fd, 21, ids, 1);
	cr_assert_str_eq(r->cluster->sessions[0]->owner, ha);
	cr_assert_str_eq(r->cluster->sessions[0]->rendezvous, hb);
	bool listed = false;
	for (size_t i = 0; i < r->cluster->n_leases; i++)
		listed |= !strcmp(r->cluster->leases[i], sid);
	cr_assert(listed, "A lists its lease on %s", sid);
	dp_proto_response_free(r);
	close(fd);
	char cmd[512], out[4096] = "";
	snprintf(cmd, sizeof(cmd), "%s --socket %s sessions", getenv("V4CTL"), a.sock);
	FILE *p = popen(cmd, "r");
	cr_assert_not_null(p);
	size_t n = fread(out, 1, sizeof(out) - 1, p);
	out[n] = 0;
	cr_assert_eq(pclose(p), 0);
	const char *row = strstr(out, sid);
	cr_assert(row && strstr(out, "HOST") && strstr(row, ha), "v4ctl sessions shows %s on %s:\n%s",
		  sid, ha, out);
	/* B is refused, told A's host id and address */
	cr_assert_eq(generate_result(&b, sid, msg, sizeof(msg), 22),
		     DUALPATH__V1__CODE__FAILED_PRECONDITION, "%s", msg);
	cr_assert(strstr(msg, ha) && strstr(msg, a.sock), "names %s and %s: %s", ha, a.sock, msg);
	/* B is listed with the HTTP address it advertises */
	ids[0] = sid;
	fd = client_connect(&a);
	r = cluster_req(fd, 23, NULL, 0);
	const Dualpath__V1__ClusterMember *mb = member(r->cluster, hb);
	cr_assert(mb && !strcmp(mb->http, "10.1.2.3:8000"), "B's member entry has its advertised address");
	dp_proto_response_free(r);
	close(fd);
	stop_all((struct daemon_proc[]){ a, b }, 2);
}

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* The OSDs of the test cluster (their pid files), stopped or continued. */
static int osds_signal(int sig)
{
	const char *dir = getenv("DP_CEPH_DIR");
	int n = 0;
	for (int i = 0; i < 16; i++) {
		char path[256];
		snprintf(path, sizeof(path), "%s/run/osd.%d.pid", dir, i);
		FILE *f = fopen(path, "r");
		if (!f)
			continue;
		int pid = 0;
		if (fscanf(f, "%d", &pid) == 1 && pid > 0 && kill(pid, sig) == 0)
			n++;
		fclose(f);
	}
	return n;
}

/*
 * Compute never waits for RADOS while a turn runs: with every OSD paused
 * (the cluster answers nothing) for 2.5 s of a 5 s lease, tokens keep
 * streaming — a renewal on the compute thread every third of the lease
 * (1.67 s) would fall in the pause and stall them until the OSDs come
 * back, at least 0.83 s (checked: the old synchronous renewal fails this).
 * The cluster thread's renewals catch up after, so the turn keeps its
 * session and is acknowledged.
 */
Test(cluster, tokens_keep_coming_while_the_osds_are_paused_and_the_turn_keeps_its_lease)
{
	if (!getenv("DP_CEPH_DIR"))
		cr_skip_test("DP_CEPH_DIR is not set: cannot pause the OSDs");
	struct daemon_proc a;
	char ha[64], sid[64];
	snprintf(sid, sizeof(sid), "pause-%s", tag);
	const char *em = getenv("DP_TEST_EMBEDDED_MODEL");
	cr_assert_not_null(em, "DP_TEST_EMBEDDED_MODEL is not set");
	start_host(&a, ha, sizeof(ha), "p", "5000", (const char *const[]){ "--model", em, NULL });
	char msg[512];
	cr_assert_eq(generate_result(&a, sid, msg, sizeof(msg), 1), 0, "%s", msg);
	int fd = client_connect(&a);
	send_generate(fd, 3, sid, prompt, 3, 4000, 0, 0);
	Dualpath__V1__Response *r = recv_resp(fd, 60000);
	cr_assert(r && r->body_case == DUALPATH__V1__RESPONSE__BODY_TOKEN_CHUNK, "A is generating");
	bool fin = r->token_chunk->finish;
	dp_proto_response_free(r);
	cr_assert_not(fin);
	/* a step or two more, so the pause starts mid-turn */
	for (int i = 0; i < 2 && !fin; i++) {
		r = recv_resp(fd, 60000);
		cr_assert_not_null(r);
		fin = r->body_case == DUALPATH__V1__RESPONSE__BODY_TOKEN_CHUNK && r->token_chunk->finish;
		dp_proto_response_free(r);
	}
	cr_assert_gt(osds_signal(SIGSTOP), 0, "OSDs paused");
	double t0 = now_s(), last = t0, gap = 0;
	int during = 0;
	while (!fin) {
		double left = 2.5 - (now_s() - t0);
		if (left <= 0)
			break;
		r = recv_resp(fd, (int)(left * 1000) + 1);
		if (!r)
			break; /* nothing more until the pause ended: a stall */
		bool err = r->body_case == DUALPATH__V1__RESPONSE__BODY_ERROR;
		fin = err || (r->body_case == DUALPATH__V1__RESPONSE__BODY_TOKEN_CHUNK &&
			      r->token_chunk->finish);
		dp_proto_response_free(r);
		if (fin)
			break; /* its commit waits for the OSDs: not a stall of compute */
		double t = now_s();
		gap = t - last > gap ? t - last : gap;
		last = t;
		during++;
	}
	double paused = now_s() - t0;
	if (!fin && paused - (last - t0) > gap)
		gap = paused - (last - t0); /* since the last chunk, to the pause's end */
	osds_signal(SIGCONT);
	cr_log_info("OSDs paused %.2f s: %d chunks meanwhile, longest gap %.3f s", paused, during, gap);
	cr_assert_gt(during, 3, "tokens kept coming while the OSDs were paused (%d in %.2f s)", during,
		     paused);
	cr_assert_lt(gap, 0.6, "no stall of compute: the longest gap was %.2f s of %.2f s paused", gap,
		     paused);
	/* the rest of the turn, acknowledged: its lease was kept */
	int code = 0;
	while (!fin) {
		r = recv_resp(fd, 60000);
		cr_assert_not_null(r, "the turn ends");
		if (r->body_case == DUALPATH__V1__RESPONSE__BODY_ERROR) {
			code = (int)r->error->code;
			snprintf(msg, sizeof(msg), "%s", r->error->message);
		}
		fin = r->body_case == DUALPATH__V1__RESPONSE__BODY_ERROR ||
		      (r->body_case == DUALPATH__V1__RESPONSE__BODY_TOKEN_CHUNK && r->token_chunk->finish);
		dp_proto_response_free(r);
	}
	cr_assert_eq(code, 0, "the turn was acknowledged: %s", msg);
	cr_assert_eq(metric(fd, 50, "dualpath_shared_leases_lost_total"), 0);
	cr_assert_gt(metric(fd, 51, "dualpath_shared_lease_renewals_total"), 0);
	close(fd);
	stop_all(&a, 1);
}

/* An idle session's lease is let go after lease_idle_ms (so an idle host does
 * not pin it), and a later turn takes it again and continues. */
Test(cluster, an_idle_sessions_lease_is_released_and_taken_again_by_the_next_turn)
{
	struct daemon_proc a, b;
	char ha[64], hb[64], sid[64];
	snprintf(sid, sizeof(sid), "idle-%s", tag);
	const char *const idle[] = { "--lease-idle-ms", "1500", NULL };
	start_host(&a, ha, sizeof(ha), "a", "1200", idle);
	start_host(&b, hb, sizeof(hb), "b", "1200", idle);
	char msg[512];
	cr_assert_eq(generate_result(&a, sid, msg, sizeof(msg), 1), 0, "%s", msg);
	int fd = client_connect(&a);
	cr_assert_eq(metric(fd, 2, "dualpath_shared_leases_held"), 1);
	double t0 = now_s();
	while (metric(fd, 3, "dualpath_shared_leases_held") != 0 && now_s() - t0 < 5)
		usleep(100 * 1000);
	cr_assert_eq(metric(fd, 4, "dualpath_shared_leases_held"), 0, "released after idling");
	cr_assert_geq(metric(fd, 5, "dualpath_shared_leases_released_total"), 1);
	cr_assert_eq(metric(fd, 6, "dualpath_shared_leases_lost_total"), 0);
	close(fd);
	/* free now: B takes it at once (no wait for an expiry), then A is refused */
	cr_assert_eq(generate_result(&b, sid, msg, sizeof(msg), 7), 0, "B serves it: %s", msg);
	cr_assert_eq(generate_result(&a, sid, msg, sizeof(msg), 8),
		     DUALPATH__V1__CODE__FAILED_PRECONDITION, "%s", msg);
	cr_assert(strstr(msg, hb) && strstr(msg, b.sock), "%s", msg);
	stop_all((struct daemon_proc[]){ a, b }, 2);
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
	/* one test at a time: each reads the membership, which another
	 * test's daemons would change under it */
	criterion_options.jobs = 1;
	if (run)
		result = !criterion_run_all_tests(tests);
	criterion_finalize(tests);
	return result;
}
