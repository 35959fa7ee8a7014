/* SPDX-License-Identifier: MIT */
/*
 * An Engram model's tables on NVMe, read through the KV cache's read
 * scheduler (daemon/engram-io.c; issue 18): the real dualpathd over the real
 * protocol. Sessions parked on NVMe and returning together (their restore
 * pages and the step's Engram rows in one deadline queue) give exactly the
 * tokens of a run whose sessions and tables stay resident (with the routed
 * experts paged from NVMe too: three kinds of read in one queue); a table file
 * that stops giving its rows fails the steps that need them, with an error
 * that says so, and the daemon serves again once it is whole.
 */
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>

#include "dpclient.h"

static struct daemon_proc d;

static void fini(void)
{
	daemon_cleanup(&d);
}

TestSuite(engram_io, .fini = fini, .timeout = 300);

static const char *engram_model(void)
{
	const char *m = getenv("DP_TEST_ENGRAM_MODEL");
	cr_assert_not_null(m, "DP_TEST_ENGRAM_MODEL is not set");
	return m;
}

/* dp-engram convert: the model's tables as a .dpe file in a new directory. */
static void convert_tables(char *dir, char *out, size_t len)
{
	const char *tool = getenv("DP_ENGRAM_TOOL");
	cr_assert_not_null(tool, "DP_ENGRAM_TOOL is not set");
	cr_assert_not_null(mkdtemp(dir));
	snprintf(out, len, "%s/tables.dpe", dir);
	char cmd[1024];
	snprintf(cmd, sizeof(cmd), "'%s' convert '%s' '%s' >/dev/null", tool, engram_model(), out);
	cr_assert_eq(system(cmd), 0, "%s", cmd);
}

static void rmtree(const char *dir)
{
	char cmd[200];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	(void)!system(cmd);
}

/* experts: "nvme" pages the routed experts from the checkpoint (their reads
 * join the same queue), else NULL */
static void start(const char *tables, const char *residency, const char *cache_rows,
		  const char *experts)
{
	const char *extra[] = { "--engram-tables", tables, "--engram-residency", residency,
				"--engram-cache-rows", cache_rows, "--restore", "dualpath",
				experts ? "--experts" : NULL, experts, "--expert-slots", "2", NULL };
	setenv("DP_TEST_MODEL", engram_model(), 1);
	daemon_start(&d, extra);
	unsetenv("DP_TEST_MODEL");
}

static bool log_has(const char *needle)
{
	FILE *f = fopen(d.log, "r");
	cr_assert_not_null(f, "%s", d.log);
	char line[2048];
	bool found = false;
	while (!found && fgets(line, sizeof(line), f))
		found = strstr(line, needle) != NULL;
	fclose(f);
	return found;
}

enum { NS = 4, TURNS = 3, GEN = 6, FIRST = 160, NEXT = 5 };

static uint32_t tok_of(int s, int i)
{
	return (uint32_t)(1 + (i * 37 + s * 101 + (i / 5) * 13) % 250);
}

/*
 * NS sessions, TURNS turns each: a long first prompt, then short ones. The
 * turns of all sessions are sent together (one batch); with park, every
 * session is evicted to NVMe after each turn, so every later turn restores
 * NS sessions at once while the step's Engram rows are read.
 */
static void run_sessions(bool park, uint32_t out[NS][TURNS][GEN])
{
	int fd = client_connect(&d);
	for (int t = 0; t < TURNS; t++) {
		uint32_t p[NS][FIRST];
		for (int s = 0; s < NS; s++) {
			char name[16];
			snprintf(name, sizeof(name), "eg%d", s);
			size_t n = t ? NEXT : FIRST;
			for (size_t i = 0; i < n; i++)
				p[s][i] = tok_of(s, (int)i + t * 1000);
			send_generate(fd, 100 + (uint64_t)t * NS + s, name, p[s], n, GEN, 0, 0);
		}
		/* the answers interleave: sort the chunks by request */
		size_t got[NS] = { 0 };
		for (int left = NS; left > 0;) {
			Dualpath__V1__Response *r = recv_resp(fd, 60000);
			cr_assert_not_null(r, "turn %d: an answer is missing", t);
			uint64_t s = r->request_id - 100 - (uint64_t)t * NS;
			cr_assert_lt(s, NS, "an answer to request %llu", (unsigned long long)r->request_id);
			cr_assert_eq(r->body_case, DUALPATH__V1__RESPONSE__BODY_TOKEN_CHUNK,
				     "session %d turn %d: %s", (int)s, t,
				     r->body_case == DUALPATH__V1__RESPONSE__BODY_ERROR
					     ? r->error->message : "not tokens");
			for (size_t i = 0; i < r->token_chunk->n_ids && got[s] < GEN; i++)
				out[s][t][got[s]++] = r->token_chunk->ids[i];
			if (r->token_chunk->finish) {
				cr_assert_eq(r->token_chunk->finish,
					     DUALPATH__V1__FINISH_REASON__FINISH_LENGTH);
				cr_assert_eq(got[s], GEN, "session %d turn %d", (int)s, t);
				left--;
			}
			dp_proto_response_free(r);
		}
		if (park)
			for (int s = 0; s < NS; s++) {
				char name[16];
				snprintf(name, sizeof(name), "eg%d", s);
				evict_session(fd, 500 + (uint64_t)t * NS + s, name);
			}
	}
	close(fd);
}

Test(engram_io, sessions_restored_from_nvme_with_engram_on_nvme_give_the_resident_tokens)
{
	char dir[] = "/var/tmp/dp-test-e-XXXXXX", tables[128];
	convert_tables(dir, tables, sizeof(tables));
	static uint32_t resident[NS][TURNS][GEN], parked[NS][TURNS][GEN];

	start(tables, "dram", "65536", NULL);
	run_sessions(false, resident);
	cr_assert_eq(daemon_stop(&d), 0);
	daemon_cleanup(&d);

	/* no hot-row cache: every step's rows come from the file; then with
	 * the routed experts paged from NVMe too (three kinds of read in one
	 * queue) */
	static const char *const experts[] = { NULL, "nvme" };
	for (int x = 0; x < 2; x++) {
		start(tables, "nvme", "0", experts[x]);
		cr_expect(log_has("rows read in the KV cache's deadline order"),
			  "the store reads through the KV cache's queue");
		if (experts[x])
			cr_expect(log_has("routed experts paged from nvme"), "experts paged");
		run_sessions(true, parked);
		int fd = client_connect(&d);
		double restores = metric(fd, 2, "dualpath_kv_restores_total");
		double rows_read = metric(fd, 3, "dualpath_engram_read_bytes_total");
		double sync = metric(fd, 4, "dualpath_engram_sync_prefetches_total");
		close(fd);
		cr_expect_geq(restores, NS * (TURNS - 1), "every later turn was restored from NVMe");
		cr_expect_gt(rows_read, 0, "the rows came from the file");
		cr_expect_eq(sync, 0, "every step's rows were queued before its forward");
		for (int s = 0; s < NS; s++)
			for (int t = 0; t < TURNS; t++)
				cr_expect_arr_eq(parked[s][t], resident[s][t], sizeof(parked[s][t]),
						 "experts %s: session %d turn %d differs from the "
						 "resident run", experts[x] ? experts[x] : "resident",
						 s, t);
		cr_assert_eq(daemon_stop(&d), 0, "SIGTERM: the queued reads waited out, exit 0");
		daemon_cleanup(&d);
	}
	rmtree(dir);
}

/* A one-off greedy request; returns the finish reason (or -code) and the
 * error's message, if any, in why. */
static int one_off(int fd, uint64_t id, const uint32_t *p, size_t n, uint32_t *out, char *why,
		   size_t why_len)
{
	send_generate(fd, id, NULL, p, n, GEN, 0, 0);
	why[0] = 0;
	size_t got = 0;
	for (;;) {
		Dualpath__V1__Response *r = recv_resp(fd, 60000);
		cr_assert_not_null(r, "request %llu: no answer", (unsigned long long)id);
		if (r->request_id != id) {
			dp_proto_response_free(r);
			continue;
		}
		if (r->body_case == DUALPATH__V1__RESPONSE__BODY_ERROR) {
			int code = -(int)r->error->code;
			snprintf(why, why_len, "%s", r->error->message ? r->error->message : "");
			dp_proto_response_free(r);
			return code;
		}
		if (r->body_case == DUALPATH__V1__RESPONSE__BODY_TOKEN_CHUNK) {
			for (size_t i = 0; i < r->token_chunk->n_ids && got < GEN; i++)
				out[got++] = r->token_chunk->ids[i];
			int fin = r->token_chunk->finish;
			dp_proto_response_free(r);
			if (fin)
				return fin;
			continue;
		}
		dp_proto_response_free(r);
	}
}

Test(engram_io, a_table_file_that_stops_giving_rows_fails_the_step_and_the_daemon_serves_on)
{
	char dir[] = "/var/tmp/dp-test-e-XXXXXX", tables[128], why[512];
	convert_tables(dir, tables, sizeof(tables));
	/* the file's bytes, to put back; its header's length (u32 at 12) */
	int tfd = open(tables, O_RDWR | O_CLOEXEC);
	cr_assert_geq(tfd, 0);
	struct stat st;
	cr_assert_eq(fstat(tfd, &st), 0);
	char *bytes = malloc((size_t)st.st_size);
	cr_assert_eq(pread(tfd, bytes, (size_t)st.st_size, 0), st.st_size);
	uint32_t header;
	memcpy(&header, bytes + 12, sizeof(header));
	cr_assert(header > 0 && header < st.st_size);

	start(tables, "nvme", "0", NULL);
	int fd = client_connect(&d);
	uint32_t a[40], b[40], ref_a[GEN], ref_b[GEN], got[GEN];
	for (int i = 0; i < 40; i++) {
		a[i] = tok_of(7, i);
		b[i] = tok_of(9, i);
	}
	cr_assert_eq(one_off(fd, 10, a, 40, ref_a, why, sizeof(why)),
		     DUALPATH__V1__FINISH_REASON__FINISH_LENGTH, "%s", why);

	/* the rows are gone from under the daemon: every read comes back short */
	cr_assert_eq(ftruncate(tfd, header), 0);
	int r = one_off(fd, 11, b, 40, got, why, sizeof(why));
	cr_expect_eq(r, -DUALPATH__V1__CODE__INTERNAL, "the step fails (%d: %s)", r, why);
	cr_expect_not_null(strstr(why, strerror(EIO)), "the error says why: %s", why);
	cr_expect(log_has("Engram tables"), "the log names the table file");
	cr_expect(log_has("a row read failed"), "... and what failed");
	Dualpath__V1__Response *h = simple(fd, 12, DUALPATH__V1__REQUEST__BODY_HEALTH);
	cr_assert_not_null(h, "the daemon still answers");
	cr_expect_eq(h->health->status, DUALPATH__V1__HEALTH_REPLY__STATUS__SERVING);
	dp_proto_response_free(h);

	/* whole again: served, the same tokens as before the damage */
	cr_assert_eq(pwrite(tfd, bytes, (size_t)st.st_size, 0), st.st_size);
	cr_assert_eq(one_off(fd, 13, b, 40, ref_b, why, sizeof(why)),
		     DUALPATH__V1__FINISH_REASON__FINISH_LENGTH, "%s", why);
	cr_assert_eq(one_off(fd, 14, a, 40, got, why, sizeof(why)),
		     DUALPATH__V1__FINISH_REASON__FINISH_LENGTH, "%s", why);
	cr_expect_arr_eq(got, ref_a, sizeof(got), "the same tokens as before the damage");
	close(fd);
	close(tfd);
	free(bytes);
	cr_assert_eq(daemon_stop(&d), 0);
	daemon_cleanup(&d);
	rmtree(dir);
}
