/* SPDX-License-Identifier: MIT */
/*
 * Prefix units on the shared tier (daemon/shared-units.c): real daemons over
 * the real protocol, the real cluster (scripts/ceph-test-cluster;
 * DP_CEPH_CONF and DP_CEPH_POOL). A stateless conversation served on host A
 * continues on host B from A's unit, restored from RADOS: B reports the
 * reused tokens and answers exactly as a host that reused its own unit;
 * another tenant does not hit; a unit whose segment was damaged on the tier
 * is not used (recomputed, same answer) and never offered again. Exits 77
 * (skip) without a cluster named.
 */
#include <rados/librados.h>
#include <xxhash.h>

#include "base/macros.h"
#include "dpclient.h"

#define GEN    6
#define PROMPT 64

static const char *host_of(const char *host)
{
	static char ids[4][64];
	static int next;
	char *b = ids[next++ % 4];
	snprintf(b, 64, "%s-%d", host, (int)getpid());
	return b;
}

static void start_shared(struct daemon_proc *d, const char *host)
{
	daemon_start(d, (const char *const[]){"--shared-tier", "rados", "--rados-conf",
	                                      getenv("DP_CEPH_CONF"), "--rados-pool",
	                                      getenv("DP_CEPH_POOL"), "--host-id", host,
	                                      "--lease-ms", "3000", NULL});
}

/* Units are content-addressed and the pool outlives a run: every run's
 * prompts are its own. */
static void random_prompt(uint32_t *p, size_t n, uint64_t salt)
{
	static uint64_t x;
	if (!x)
		x = (uint64_t)time(NULL) * 1000003u ^ (uint64_t)getpid() << 20;
	x ^= salt;
	for (size_t i = 0; i < n; i++) {
		x = x * 6364136223846793005ull + 1442695040888963407ull;
		p[i] = 3 + (uint32_t)((x >> 33) % 280);
	}
}

/* A one-off greedy Generate of p[0..n) with cache_salt salt (NULL: none):
 * its GEN tokens into out; returns Usage.cached_tokens. */
static uint32_t one_off(struct daemon_proc *d, uint64_t id, const uint32_t *p, size_t n,
                        const char *salt, uint32_t *out)
{
	int fd = client_connect(d);
	Dualpath__V1__Generate g = DUALPATH__V1__GENERATE__INIT;
	Dualpath__V1__TokenIds t = DUALPATH__V1__TOKEN_IDS__INIT;
	Dualpath__V1__Sampling s = DUALPATH__V1__SAMPLING__INIT;
	Dualpath__V1__Request r = DUALPATH__V1__REQUEST__INIT;
	t.n_ids = n;
	t.ids = (uint32_t *)p;
	s.ignore_eos = true;
	g.session_id = "";
	g.prompt_case = DUALPATH__V1__GENERATE__PROMPT_TOKENS;
	g.tokens = &t;
	g.max_new_tokens = GEN;
	g.sampling = &s;
	if (salt) {
		g.cache_salt.data = (uint8_t *)salt;
		g.cache_salt.len = strlen(salt);
	}
	r.request_id = id;
	r.body_case = DUALPATH__V1__REQUEST__BODY_GENERATE;
	r.generate = &g;
	cr_assert_eq(send_req(fd, &r), 0);
	size_t got = 0;
	uint32_t cached = UINT32_MAX;
	for (;;) {
		Dualpath__V1__Response *m = recv_resp(fd, 120000);
		cr_assert_not_null(m, "no reply to request %llu", (unsigned long long)id);
		cr_assert_neq(m->body_case, DUALPATH__V1__RESPONSE__BODY_ERROR, "request %llu: %s",
		              (unsigned long long)id, m->error->message);
		if (m->request_id != id ||
		    m->body_case != DUALPATH__V1__RESPONSE__BODY_TOKEN_CHUNK) {
			dp_proto_response_free(m);
			continue;
		}
		for (size_t i = 0; i < m->token_chunk->n_ids && got < GEN; i++)
			out[got++] = m->token_chunk->ids[i];
		bool fin = m->token_chunk->finish;
		if (fin && m->token_chunk->usage)
			cached = m->token_chunk->usage->cached_tokens;
		dp_proto_response_free(m);
		if (fin)
			break;
	}
	close(fd);
	cr_assert_eq(got, GEN);
	cr_assert_neq(cached, UINT32_MAX, "no usage on the final chunk");
	return cached;
}

static double stat_of(struct daemon_proc *d, const char *name)
{
	int fd = client_connect(d);
	double v = metric(fd, 900, name);
	close(fd);
	return v;
}

/* Wait until d's metric reaches at least v (20 s at most). */
static void wait_metric(struct daemon_proc *d, const char *name, double v)
{
	for (int i = 0; i < 200 && stat_of(d, name) < v; i++)
		usleep(100000);
	cr_assert_geq(stat_of(d, name), v, "%s stayed below %.0f", name, v);
}

/* B's index has taken in whatever the pool held from earlier runs. */
static double index_settled(struct daemon_proc *d)
{
	double last = -1, now = stat_of(d, "dualpath_shared_units_indexed");
	for (int i = 0; i < 100 && now != last; i++) {
		usleep(700000);
		last = now;
		now = stat_of(d, "dualpath_shared_units_indexed");
	}
	return now;
}

/* The chat continued statelessly: p ++ reply ++ a new turn. */
static size_t continued(const uint32_t *p, const uint32_t *reply, uint32_t *out, uint64_t salt)
{
	memcpy(out, p, PROMPT * sizeof(*p));
	memcpy(out + PROMPT, reply, GEN * sizeof(*reply));
	random_prompt(out + PROMPT + GEN, 9, salt);
	return PROMPT + GEN + 9;
}

TestSuite(shared_units, .timeout = 300);

Test(shared_units, a_unit_left_on_one_host_serves_the_same_prefix_on_another)
{
	struct daemon_proc a, b, ref;
	start_shared(&a, host_of("ua"));
	start_shared(&b, host_of("ub"));
	daemon_start(&ref, NULL); /* no shared tier: reuses only its own units */
	double base = index_settled(&b);

	uint32_t p[PROMPT], ra[GEN], rr[GEN];
	random_prompt(p, PROMPT, 1);
	cr_assert_eq(one_off(&a, 1, p, PROMPT, NULL, ra), 0);
	cr_assert_eq(one_off(&ref, 1, p, PROMPT, NULL, rr), 0);
	cr_assert_arr_eq(ra, rr, sizeof(ra), "the same prompt, the same greedy reply");
	/* the prompt's unit and the reply's: written by A, indexed by B */
	wait_metric(&a, "dualpath_shared_units_published_total", 2);
	wait_metric(&b, "dualpath_shared_units_indexed", base + 2);

	uint32_t q[PROMPT + GEN + 9], ob[GEN], oref[GEN];
	size_t nq = continued(p, ra, q, 2);
	uint32_t cached_b = one_off(&b, 2, q, nq, NULL, ob);
	uint32_t cached_ref = one_off(&ref, 2, q, nq, NULL, oref);
	/* the unit where A's reply ended: its last id not fed yet */
	cr_expect_eq(cached_b, PROMPT + GEN - 1, "B reused %u tokens", cached_b);
	cr_expect_eq(cached_ref, PROMPT + GEN - 1);
	cr_expect_arr_eq(ob, oref, sizeof(ob), "B from A's unit answers as a host from its own");
	cr_expect_eq(stat_of(&b, "dualpath_shared_units_found_total"), 1);
	cr_expect_eq(stat_of(&b, "dualpath_shared_units_restored_total"), 1);
	cr_expect_eq(stat_of(&b, "dualpath_shared_units_corrupt_total"), 0);
	cr_expect_geq(stat_of(&b, "dualpath_prefix_hits_total"), 1);
	/* a unit is not a session taken over: those counters stay apart */
	cr_expect_eq(stat_of(&b, "dualpath_shared_restores_total"), 0);

	/* another tenant (another cache_salt) on B reuses nothing */
	uint32_t os[GEN], ofresh[GEN];
	cr_expect_eq(one_off(&b, 3, q, nq, "someone-else", os), 0,
	             "another cache_salt reuses nothing");
	cr_expect_eq(stat_of(&b, "dualpath_shared_units_found_total"), 1);
	struct daemon_proc fresh;
	daemon_start(&fresh, NULL);
	cr_assert_eq(one_off(&fresh, 1, q, nq, NULL, ofresh), 0);
	cr_expect_arr_eq(os, ofresh, sizeof(os), "computed whole, as a fresh host does");

	cr_expect_eq(daemon_stop(&fresh), 0);
	daemon_cleanup(&fresh);
	cr_expect_eq(daemon_stop(&ref), 0);
	daemon_cleanup(&ref);
	cr_expect_eq(daemon_stop(&b), 0);
	daemon_cleanup(&b);
	cr_expect_eq(daemon_stop(&a), 0);
	daemon_cleanup(&a);
}

/* The tenant tag and chain key as dualpathd makes them (kvcache/unit.c,
 * daemon/shared-units.c): the object names follow. */
static void unit_segment(uint32_t uid, const uint32_t *tokens, uint64_t n, const char *host,
                         char *name, size_t len)
{
	uint8_t buf[4];
	for (int i = 0; i < 4; i++)
		buf[i] = (uint8_t)(uid >> (8 * i));
	XXH128_hash_t h = XXH3_128bits(buf, 4);
	uint64_t tag[2] = {h.high64, h.low64};
	uint64_t key = XXH3_64bits(tag, sizeof(tag));
	for (uint64_t i = 0; i < n; i++) {
		int32_t t = (int32_t)tokens[i];
		key = XXH3_64bits_withSeed(&t, sizeof(t), key);
	}
	snprintf(name, len, "dp.ug.%016llx%016llx.%016llx.%llx.%s.0", (unsigned long long)tag[0],
	         (unsigned long long)tag[1], (unsigned long long)key, (unsigned long long)n, host);
}

static void corrupt_object(const char *name)
{
	rados_t cl;
	rados_ioctx_t io;
	cr_assert_eq(rados_create(&cl, NULL), 0);
	cr_assert_eq(rados_conf_read_file(cl, getenv("DP_CEPH_CONF")), 0);
	cr_assert_eq(rados_connect(cl), 0);
	cr_assert_eq(rados_ioctx_create(cl, getenv("DP_CEPH_POOL"), &io), 0);
	uint64_t size;
	time_t mtime;
	cr_assert_eq(rados_stat(io, name, &size, &mtime), 0, "segment %s is on the tier", name);
	cr_assert_gt(size, 4096 + 200);
	char byte;
	cr_assert_eq(rados_read(io, name, &byte, 1, 4096 + 100), 1);
	byte ^= 0x5a; /* one byte of the first page */
	cr_assert_eq(rados_write(io, name, &byte, 1, 4096 + 100), 0);
	rados_ioctx_destroy(io);
	rados_shutdown(cl);
}

Test(shared_units, a_unit_damaged_on_the_tier_is_not_used_and_the_answer_is_still_right)
{
	struct daemon_proc a, b, fresh;
	const char *ha = host_of("uca");
	start_shared(&a, ha);
	start_shared(&b, host_of("ucb"));
	daemon_start(&fresh, NULL);
	double base = index_settled(&b);

	uint32_t p[PROMPT], ra[GEN];
	random_prompt(p, PROMPT, 3);
	cr_assert_eq(one_off(&a, 1, p, PROMPT, NULL, ra), 0);
	wait_metric(&a, "dualpath_shared_units_published_total", 2);
	wait_metric(&b, "dualpath_shared_units_indexed", base + 2);

	uint32_t q[PROMPT + GEN + 9], ob[GEN], of[GEN];
	size_t nq = continued(p, ra, q, 4);
	/* the unit B would take: where A's reply ended */
	char seg[512];
	unit_segment(getuid(), q, PROMPT + GEN - 1, ha, seg, sizeof(seg));
	corrupt_object(seg);

	uint32_t cached = one_off(&b, 2, q, nq, NULL, ob);
	cr_expect_eq(cached, 0, "a damaged unit spares nothing (%u)", cached);
	cr_assert_eq(one_off(&fresh, 1, q, nq, NULL, of), 0);
	cr_expect_arr_eq(ob, of, sizeof(ob), "recomputed: the answer of a fresh host");
	cr_expect_eq(stat_of(&b, "dualpath_shared_units_corrupt_total"), 1);
	cr_expect_eq(stat_of(&b, "dualpath_shared_units_restored_total"), 0);
	cr_expect_eq(stat_of(&b, "dualpath_shared_recomputes_total"), 0, "no session recomputed");
	cr_expect_eq(stat_of(&b, "dualpath_shared_restore_failures_total"), 0);
	double found = stat_of(&b, "dualpath_shared_units_found_total");

	/* never offered again: a prompt that shares A's reply but not B's new
	 * turn is served from A's shorter unit (the prompt's), not the damaged one */
	uint32_t q2[PROMPT + GEN + 9], o2[GEN];
	memcpy(q2, q, sizeof(q2));
	q2[PROMPT + GEN + 2] ^= 1;
	cr_expect_eq(one_off(&b, 3, q2, nq, NULL, o2), PROMPT - 1);
	cr_expect_eq(stat_of(&b, "dualpath_shared_units_found_total"), found + 1);
	cr_expect_eq(stat_of(&b, "dualpath_shared_units_corrupt_total"), 1);
	cr_expect_eq(stat_of(&b, "dualpath_shared_units_restored_total"), 1);

	cr_expect_eq(daemon_stop(&fresh), 0);
	daemon_cleanup(&fresh);
	cr_expect_eq(daemon_stop(&b), 0);
	daemon_cleanup(&b);
	cr_expect_eq(daemon_stop(&a), 0);
	daemon_cleanup(&a);
}

static bool object_exists(const char *name)
{
	rados_t cl;
	rados_ioctx_t io;
	cr_assert_eq(rados_create(&cl, NULL), 0);
	cr_assert_eq(rados_conf_read_file(cl, getenv("DP_CEPH_CONF")), 0);
	cr_assert_eq(rados_connect(cl), 0);
	cr_assert_eq(rados_ioctx_create(cl, getenv("DP_CEPH_POOL"), &io), 0);
	uint64_t size;
	time_t mtime;
	int r = rados_stat(io, name, &size, &mtime);
	rados_ioctx_destroy(io);
	rados_shutdown(cl);
	cr_assert(r == 0 || r == -ENOENT, "stat %s: %s", name, strerror(-r));
	return r == 0;
}

/* Send a one-off without waiting for it (collected by collect_one). */
static int send_one(struct daemon_proc *d, uint64_t id, const uint32_t *p, size_t n)
{
	int fd = client_connect(d);
	send_generate(fd, id, NULL, p, n, GEN, 0, 0);
	return fd;
}

Test(shared_units, the_same_unit_made_on_two_hosts_at_once_is_written_once)
{
	struct daemon_proc a, b;
	const char *ha = host_of("uwa"), *hb = host_of("uwb");
	start_shared(&a, ha);
	start_shared(&b, hb);
	index_settled(&a);
	index_settled(&b);

	/* both compute the same prompt: neither can find the other's unit yet */
	uint32_t p[PROMPT], oa[GEN], ob[GEN];
	random_prompt(p, PROMPT, 5);
	int fa = send_one(&a, 1, p, PROMPT), fb = send_one(&b, 1, p, PROMPT);
	size_t na = 0, nb = 0;
	cr_assert_eq(collect(fa, 1, oa, GEN, &na), DUALPATH__V1__FINISH_REASON__FINISH_LENGTH);
	cr_assert_eq(collect(fb, 1, ob, GEN, &nb), DUALPATH__V1__FINISH_REASON__FINISH_LENGTH);
	close(fa);
	close(fb);
	cr_assert_arr_eq(oa, ob, sizeof(oa));
	/* two units (the prompt's, the reply's), each written by one host: the
	 * other found it there (or in its index) and wrote nothing that stays */
	const char *pub = "dualpath_shared_units_published_total";
	for (int i = 0; i < 200 && stat_of(&a, pub) + stat_of(&b, pub) < 2; i++)
		usleep(100000);
	usleep(1500000); /* a late loser would show now */
	cr_expect_eq(stat_of(&a, pub) + stat_of(&b, pub), 2);
	cr_expect_eq(stat_of(&a, "dualpath_shared_units_errors_total") +
	                 stat_of(&b, "dualpath_shared_units_errors_total"),
	             0);
	double existed = stat_of(&a, "dualpath_shared_units_existed_total") +
	                 stat_of(&b, "dualpath_shared_units_existed_total");
	cr_log_info("units found on the tier by the host that did not write them: %.0f", existed);
	cr_expect_leq(existed, 2);
	char sa[512], sb[512];
	unit_segment(getuid(), p, PROMPT - 1, ha, sa, sizeof(sa));
	unit_segment(getuid(), p, PROMPT - 1, hb, sb, sizeof(sb));
	cr_expect(object_exists(sa) != object_exists(sb), "one writer's segments stay: %s and %s",
	          sa, sb);

	cr_expect_eq(daemon_stop(&b), 0);
	daemon_cleanup(&b);
	cr_expect_eq(daemon_stop(&a), 0);
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
	/* one test at a time: each waits for its own units in the index */
	criterion_options.jobs = 1;
	int result = 0;
	if (criterion_handle_args(argc, argv, true))
		result = !criterion_run_all_tests(tests);
	criterion_finalize(tests);
	return result;
}
