/* SPDX-License-Identifier: MIT */
/*
 * The shared tier's RADOS backend (kvcache/tier.h) against a real cluster:
 * scripts/ceph-test-cluster start, then DP_CEPH_CONF and DP_CEPH_POOL name
 * it. Exits 77 (skip) when the build has no librados or no cluster is
 * named; a named cluster that cannot be reached is a failure.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <rados/librados.h>

#include "kvcache/tier.h"

#define PAGE (64u << 10)

/* Object names unique per test process: the pool outlives us. (Set here,
 * not in main: Criterion starts each test in a process of its own before
 * main runs.) */
static const char *run_tag(void)
{
	static char tag[64];
	if (!tag[0])
		snprintf(tag, sizeof(tag), "%ld-%d", (long)time(NULL), (int)getpid());
	return tag;
}

static struct dp_kv_shared *tier_open(const char *host, uint32_t lease_ms)
{
	struct dp_kv_shared_opts o = {
		.conf = getenv("DP_CEPH_CONF"),
		.pool = getenv("DP_CEPH_POOL"),
		.host_id = host,
		.lease_ms = lease_ms,
		.timeout_ms = 20000,
	};
	struct dp_kv_shared *t = NULL;
	char err[256] = "";
	int r = dp_kv_shared_open(&o, &t, err, sizeof(err));
	cr_assert_eq(r, 0, "open: %d %s", r, err);
	return t;
}

struct done {
	int res;
	int calls;
};

static void on_done(void *arg, int res)
{
	struct done *d = arg;
	d->res = res;
	d->calls++;
}

/* Poll the tier's fd and reap until the op is done (the io loop's part). */
static int wait_done(struct dp_kv_shared *t, struct done *d)
{
	for (int i = 0; i < 600 && d->calls == 0; i++) {
		struct pollfd p = { .fd = dp_kv_shared_fd(t), .events = POLLIN };
		if (poll(&p, 1, 100) > 0)
			dp_kv_shared_reap(t, 0);
	}
	cr_assert_eq(d->calls, 1, "one completion");
	return d->res;
}

static void fill(void *buf, uint64_t seed)
{
	uint64_t *w = buf;
	for (size_t i = 0; i < PAGE / 8; i++) {
		seed = seed * 6364136223846793005ull + 1442695040888963407ull;
		w[i] = seed;
	}
}

static void seg_name(const char *what, char *name)
{
	char sess[128];
	snprintf(sess, sizeof(sess), "t-%s-%s", run_tag(), what);
	cr_assert_eq(dp_kv_shared_segment_name(sess, 1, 0, name, 256), 0);
}

static void put_group(struct dp_kv_shared *t, const char *seg, uint32_t n, char *bufs)
{
	struct dp_kv_shared_page pages[DP_KV_SHARED_GROUP_PAGES];
	for (uint32_t i = 0; i < n; i++) {
		fill(bufs + (size_t)i * PAGE, 1000 + i);
		pages[i] = (struct dp_kv_shared_page){ .tag = 7000 + i, .buf = bufs + (size_t)i * PAGE };
	}
	struct done d = { 0 };
	cr_assert_eq(dp_kv_shared_put(t, seg, pages, n, PAGE, on_done, &d), 0);
	cr_assert_eq(wait_done(t, &d), 0);
}

TestSuite(shared, .timeout = 120);

Test(shared, put_then_get_returns_every_page_of_a_group)
{
	struct dp_kv_shared *t = tier_open("host-a", 5000);
	char seg[256];
	seg_name("whole", seg);
	uint32_t n = 16; /* 1 MiB of pages + header: one segment object */
	char *src = malloc((size_t)n * PAGE), *dst = calloc(n, PAGE);
	put_group(t, seg, n, src);
	struct dp_kv_shared_page pages[16];
	uint32_t idx[16];
	for (uint32_t i = 0; i < n; i++) {
		idx[i] = i;
		pages[i] = (struct dp_kv_shared_page){ .tag = 7000 + i, .buf = dst + (size_t)i * PAGE };
	}
	struct done d = { 0 };
	cr_assert_eq(dp_kv_shared_get(t, seg, idx, pages, n, PAGE, on_done, &d), 0);
	cr_assert_eq(wait_done(t, &d), 0);
	cr_assert(!memcmp(src, dst, (size_t)n * PAGE), "pages come back bit for bit");
	cr_assert_eq(dp_kv_shared_inflight(t), 0);
	free(src);
	free(dst);
	dp_kv_shared_close(t);
}

Test(shared, get_reads_a_sub_range_of_pages_out_of_order)
{
	struct dp_kv_shared *t = tier_open("host-a", 5000);
	char seg[256];
	seg_name("sub", seg);
	char *src = malloc(8 * (size_t)PAGE), *dst = calloc(2, PAGE);
	put_group(t, seg, 8, src);
	uint32_t idx[2] = { 5, 2 };
	struct dp_kv_shared_page pages[2] = { { .tag = 7005, .buf = dst },
					    { .tag = 7002, .buf = dst + PAGE } };
	struct done d = { 0 };
	cr_assert_eq(dp_kv_shared_get(t, seg, idx, pages, 2, PAGE, on_done, &d), 0);
	cr_assert_eq(wait_done(t, &d), 0);
	cr_assert(!memcmp(dst, src + 5 * (size_t)PAGE, PAGE));
	cr_assert(!memcmp(dst + PAGE, src + 2 * (size_t)PAGE, PAGE));
	free(src);
	free(dst);
	dp_kv_shared_close(t);
}

Test(shared, a_corrupted_page_is_refused_not_served)
{
	struct dp_kv_shared *t = tier_open("host-a", 5000);
	char seg[256];
	seg_name("corrupt", seg);
	char *src = malloc(4 * (size_t)PAGE), *dst = calloc(1, PAGE);
	put_group(t, seg, 4, src);
	/* Flip one byte of page 3 behind the tier's back. */
	rados_t cl;
	rados_ioctx_t io;
	cr_assert_eq(rados_create(&cl, "admin"), 0);
	cr_assert_eq(rados_conf_read_file(cl, getenv("DP_CEPH_CONF")), 0);
	cr_assert_eq(rados_connect(cl), 0);
	cr_assert_eq(rados_ioctx_create(cl, getenv("DP_CEPH_POOL"), &io), 0);
	char b = (char)(src[3 * (size_t)PAGE + 100] ^ 0x40);
	cr_assert_eq(rados_write(io, seg, &b, 1, DP_KV_SHARED_HEADER_BYTES + 3 * (uint64_t)PAGE + 100),
		     0);
	uint32_t idx = 3;
	struct dp_kv_shared_page pg = { .tag = 7003, .buf = dst };
	struct done d = { 0 };
	cr_assert_eq(dp_kv_shared_get(t, seg, &idx, &pg, 1, PAGE, on_done, &d), 0);
	cr_assert_eq(wait_done(t, &d), -EBADMSG);
	/* A page of the same segment that was not touched still reads. */
	idx = 1;
	pg.tag = 7001;
	d = (struct done){ 0 };
	cr_assert_eq(dp_kv_shared_get(t, seg, &idx, &pg, 1, PAGE, on_done, &d), 0);
	cr_assert_eq(wait_done(t, &d), 0);
	/* Asking for a page under the wrong tag is refused too. */
	pg.tag = 9999;
	d = (struct done){ 0 };
	cr_assert_eq(dp_kv_shared_get(t, seg, &idx, &pg, 1, PAGE, on_done, &d), 0);
	cr_assert_eq(wait_done(t, &d), -EBADMSG);
	struct dp_kv_shared_stats st;
	dp_kv_shared_stats(t, &st);
	cr_assert_eq(st.bad_pages, 2);
	rados_ioctx_destroy(io);
	rados_shutdown(cl);
	free(src);
	free(dst);
	dp_kv_shared_close(t);
}

Test(shared, delete_removes_a_segment)
{
	struct dp_kv_shared *t = tier_open("host-a", 5000);
	char seg[256];
	seg_name("del", seg);
	char *src = malloc(PAGE), *dst = calloc(1, PAGE);
	put_group(t, seg, 1, src);
	struct done d = { 0 };
	cr_assert_eq(dp_kv_shared_delete(t, seg, on_done, &d), 0);
	cr_assert_eq(wait_done(t, &d), 0);
	uint32_t idx = 0;
	struct dp_kv_shared_page pg = { .tag = 7000, .buf = dst };
	d = (struct done){ 0 };
	cr_assert_eq(dp_kv_shared_get(t, seg, &idx, &pg, 1, PAGE, on_done, &d), 0);
	cr_assert_eq(wait_done(t, &d), -ENOENT);
	d = (struct done){ 0 };
	cr_assert_eq(dp_kv_shared_delete(t, seg, on_done, &d), 0);
	cr_assert_eq(wait_done(t, &d), -ENOENT);
	free(src);
	free(dst);
	dp_kv_shared_close(t);
}

Test(shared, a_group_larger_than_a_segment_is_refused)
{
	struct dp_kv_shared *t = tier_open("host-a", 5000);
	char *src = calloc(64, PAGE);
	struct dp_kv_shared_page pages[64];
	for (int i = 0; i < 64; i++)
		pages[i] = (struct dp_kv_shared_page){ .tag = (uint64_t)i, .buf = src + (size_t)i * PAGE };
	cr_assert_eq(dp_kv_shared_put(t, "x", pages, 64, PAGE, on_done, NULL), -EINVAL);
	cr_assert_eq(dp_kv_shared_put(t, "x", pages, 0, PAGE, on_done, NULL), -EINVAL);
	free(src);
	dp_kv_shared_close(t);
}

static void sess_name(const char *what, char *s, size_t len)
{
	snprintf(s, len, "t-%s-%s", run_tag(), what);
}

Test(shared, manifest_round_trips_under_a_lease)
{
	struct dp_kv_shared *t = tier_open("host-a", 5000);
	char s[128];
	sess_name("man", s, sizeof(s));
	void *got;
	size_t len;
	cr_assert_eq(dp_kv_shared_manifest_put(t, s, "x", 1, on_done, NULL), -ENOLCK,
		     "no write without the lease");
	uint64_t epoch = 0;
	char owner[64];
	cr_assert_eq(dp_kv_shared_lease_take(t, s, &epoch, owner, sizeof(owner)), 1, "taken");
	cr_assert_eq(epoch, 1);
	cr_assert_eq(dp_kv_shared_lease_take(t, s, &epoch, owner, sizeof(owner)), 0, "held");
	cr_assert_eq(epoch, 1);
	cr_assert_eq(dp_kv_shared_manifest_get(t, s, &got, &len), -ENOENT);
	int32_t hist[1000];
	for (int i = 0; i < 1000; i++)
		hist[i] = i * 7;
	struct done d = { 0 };
	cr_assert_eq(dp_kv_shared_manifest_put(t, s, hist, sizeof(hist), on_done, &d), 0);
	cr_assert_eq(wait_done(t, &d), 0);
	cr_assert_eq(dp_kv_shared_manifest_get(t, s, &got, &len), 0);
	cr_assert_eq(len, sizeof(hist));
	cr_assert(!memcmp(got, hist, len));
	free(got);
	cr_assert_eq(dp_kv_shared_lease_release(t, s), 0);
	dp_kv_shared_close(t);
}

Test(shared, a_session_held_by_a_live_host_is_refused_naming_it)
{
	struct dp_kv_shared *a = tier_open("host-a", 30000), *b = tier_open("host-b", 30000);
	char s[128], owner[64] = "";
	sess_name("busy", s, sizeof(s));
	uint64_t ea, eb = 0;
	cr_assert_eq(dp_kv_shared_lease_take(a, s, &ea, owner, sizeof(owner)), 1);
	cr_assert_eq(dp_kv_shared_lease_take(b, s, &eb, owner, sizeof(owner)), -EBUSY);
	cr_assert_str_eq(owner, "host-a");
	cr_assert_eq(eb, 0, "no epoch on failure");
	/* Released: B takes it, under a newer epoch. */
	cr_assert_eq(dp_kv_shared_lease_release(a, s), 0);
	cr_assert_eq(dp_kv_shared_lease_take(b, s, &eb, owner, sizeof(owner)), 1);
	cr_assert_gt(eb, ea);
	uint64_t e;
	cr_assert_eq(dp_kv_shared_lease_owner(a, s, owner, sizeof(owner), &e), 0);
	cr_assert_str_eq(owner, "host-b");
	cr_assert_eq(e, eb);
	dp_kv_shared_close(a);
	dp_kv_shared_close(b);
}

static void sleep_ms(unsigned ms)
{
	struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L };
	nanosleep(&ts, NULL);
}

Test(shared, an_expired_lease_is_taken_over_and_the_old_owner_is_fenced)
{
	struct dp_kv_shared *a = tier_open("host-a", 2000), *b = tier_open("host-b", 2000);
	char s[128], owner[64] = "";
	sess_name("fence", s, sizeof(s));
	uint64_t ea, eb;
	cr_assert_eq(dp_kv_shared_lease_take(a, s, &ea, owner, sizeof(owner)), 1);
	struct done d = { 0 };
	cr_assert_eq(dp_kv_shared_manifest_put(a, s, "turn-1", 6, on_done, &d), 0);
	cr_assert_eq(wait_done(a, &d), 0);
	/* A renews while alive: B is still refused. */
	sleep_ms(1200);
	cr_assert_eq(dp_kv_shared_lease_renew(a, s), 0);
	sleep_ms(1200);
	cr_assert_eq(dp_kv_shared_lease_take(b, s, &eb, owner, sizeof(owner)), -EBUSY);
	/* A stops renewing (paused, partitioned): past its lease B takes over. */
	sleep_ms(2500);
	cr_assert_eq(dp_kv_shared_lease_take(b, s, &eb, owner, sizeof(owner)), 1);
	cr_assert_gt(eb, ea);
	void *got;
	size_t len;
	cr_assert_eq(dp_kv_shared_manifest_get(b, s, &got, &len), 0, "A's acknowledged turn is there");
	cr_assert_eq(len, 6);
	cr_assert(!memcmp(got, "turn-1", 6));
	free(got);
	d = (struct done){ 0 };
	cr_assert_eq(dp_kv_shared_manifest_put(b, s, "turn-2", 6, on_done, &d), 0);
	cr_assert_eq(wait_done(b, &d), 0);
	/* A wakes up still believing it owns the session: its write is refused. */
	d = (struct done){ 0 };
	cr_assert_eq(dp_kv_shared_manifest_put(a, s, "stale", 5, on_done, &d), 0);
	cr_assert_eq(wait_done(a, &d), -ECANCELED);
	struct dp_kv_shared_stats st;
	dp_kv_shared_stats(a, &st);
	cr_assert_eq(st.fenced, 1);
	cr_assert_eq(dp_kv_shared_lease_renew(a, s), -ENOLCK, "A learns it lost the lease");
	cr_assert(!dp_kv_shared_lease_held(a, s));
	cr_assert_eq(dp_kv_shared_manifest_get(b, s, &got, &len), 0);
	cr_assert(len == 6 && !memcmp(got, "turn-2", 6), "B's manifest stands");
	free(got);
	dp_kv_shared_close(a);
	dp_kv_shared_close(b);
}

Test(shared, a_host_whose_lease_lapsed_takes_the_session_back_only_as_a_new_holder)
{
	struct dp_kv_shared *a = tier_open("host-a", 1500), *b = tier_open("host-b", 1500);
	char s[128], owner[64] = "";
	sess_name("lapse", s, sizeof(s));
	uint64_t ea, eb, ea2;
	cr_assert_eq(dp_kv_shared_lease_take(a, s, &ea, owner, sizeof(owner)), 1);
	sleep_ms(2000);
	cr_assert_eq(dp_kv_shared_lease_take(b, s, &eb, owner, sizeof(owner)), 1);
	cr_assert_eq(dp_kv_shared_lease_release(b, s), 0);
	cr_assert(dp_kv_shared_lease_held(a, s), "A has not noticed");
	/* A's take succeeds, but as a new holder (1): B was there meanwhile,
	 * so what A holds of the session may be stale. */
	cr_assert_eq(dp_kv_shared_lease_take(a, s, &ea2, owner, sizeof(owner)), 1);
	cr_assert_gt(ea2, eb);
	cr_assert_gt(eb, ea);
	cr_assert_eq(dp_kv_shared_lease_renew(a, s), 0);
	struct done d = { 0 };
	cr_assert_eq(dp_kv_shared_manifest_put(b, s, "late", 4, on_done, &d), -ENOLCK,
		     "B let go: it may not write");
	dp_kv_shared_close(a);
	dp_kv_shared_close(b);
}

Test(shared, an_unreachable_cluster_fails_open_with_a_message)
{
	char path[] = "/tmp/dp-ceph-none.XXXXXX";
	int fd = mkstemp(path);
	cr_assert_geq(fd, 0);
	/* A monitor address nothing listens on. */
	dprintf(fd, "[global]\nmon host = [v2:127.0.0.1:1]\nauth client required = none\n");
	close(fd);
	struct dp_kv_shared_opts o = { .conf = path, .pool = "kv", .host_id = "h", .timeout_ms = 2000 };
	struct dp_kv_shared *t = NULL;
	char err[256] = "";
	int r = dp_kv_shared_open(&o, &t, err, sizeof(err));
	unlink(path);
	cr_assert_lt(r, 0);
	cr_assert_null(t);
	cr_assert(strstr(err, path), "the message names the conf: %s", err);
}

Test(shared, bad_options_are_refused_with_the_key_named)
{
	struct dp_kv_shared *t = NULL;
	char err[256] = "";
	struct dp_kv_shared_opts o = { .pool = "kv", .host_id = "bad host" };
	cr_assert_eq(dp_kv_shared_open(&o, &t, err, sizeof(err)), -EINVAL);
	cr_assert(strstr(err, "host_id"), "%s", err);
	o = (struct dp_kv_shared_opts){ .host_id = "h" };
	cr_assert_eq(dp_kv_shared_open(&o, &t, err, sizeof(err)), -EINVAL);
	cr_assert(strstr(err, "rados_pool"), "%s", err);
}

int main(int argc, char *argv[])
{
	if (!dp_kv_shared_rados_available()) {
		printf("SKIP: built without librados\n");
		return 77;
	}
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
