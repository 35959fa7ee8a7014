/* SPDX-License-Identifier: MIT */
/*
 * Integration tests: the real dualpathd on a temporary socket and state
 * directory, driven over the real protocol.
 */
#include <fcntl.h>
#include <grp.h>
#include <pthread.h>
#include <sys/stat.h>

#include "base/macros.h"
#include "dpclient.h"

static struct daemon_proc d;

static void fini(void)
{
	daemon_cleanup(&d);
}

TestSuite(daemon, .fini = fini, .timeout = 300);

static const uint32_t prompt[] = { 72, 101, 108, 108, 111, 44, 32, 119, 111, 114, 108, 100 };
#define NP DP_ARRAY_SIZE(prompt)

Test(daemon, hello_health_and_a_one_off_generate)
{
	daemon_start(&d, NULL);
	int fd = client_connect(&d);
	Dualpath__V1__Response *r = simple(fd, 2, DUALPATH__V1__REQUEST__BODY_HEALTH);
	cr_assert_not_null(r);
	cr_assert_eq(r->body_case, DUALPATH__V1__RESPONSE__BODY_HEALTH);
	cr_expect_eq(r->health->status, DUALPATH__V1__HEALTH_REPLY__STATUS__SERVING);
	dp_proto_response_free(r);
	uint32_t out[64];
	size_t n;
	send_generate(fd, 3, NULL, prompt, NP, 16, 0, 0);
	cr_expect_eq(collect(fd, 3, out, 64, &n), DUALPATH__V1__FINISH_REASON__FINISH_LENGTH);
	cr_expect_eq(n, 16);
	close(fd);
	cr_expect_eq(daemon_stop(&d), 0, "SIGTERM: drained and exited 0");
}

Test(daemon, a_multi_turn_session_matches_one_long_prompt_under_greedy_sampling)
{
	daemon_start(&d, NULL);
	int fd = client_connect(&d);
	expect_turns_equal_one_prompt(fd, "mt", prompt, NP, 6);
	close(fd);
}

struct worker_arg {
	struct daemon_proc *d;
	int idx;
	const char *prefix;
	uint32_t got[3][8]; /* each turn's tokens */
	int ok;
};

/* Three greedy turns of one session; each prompt differs per client. */
static void *worker(void *p)
{
	struct worker_arg *w = p;
	int fd = client_connect(w->d);
	char sess[32];
	snprintf(sess, sizeof(sess), "%s-%d", w->prefix, w->idx);
	uint32_t out[64];
	size_t n;
	for (int turn = 0; turn < 3; turn++) {
		send_generate(fd, 100 + turn, sess, prompt + (w->idx + turn) % 8, 4, 8, 0, 0);
		if (collect(fd, 100 + turn, out, 64, &n) == DUALPATH__V1__FINISH_REASON__FINISH_LENGTH &&
		    n == 8) {
			memcpy(w->got[turn], out, sizeof(w->got[turn]));
			w->ok++;
		}
	}
	close(fd);
	return NULL;
}

Test(daemon, many_concurrent_sessions_are_served)
{
	/* Each concurrent session's tokens must be those of the same turns run
	 * alone (greedy): batching with others changes nothing. */
	daemon_start(&d, NULL);
	enum { N = 8 };
	pthread_t th[N];
	struct worker_arg solo[N], a[N];
	for (int i = 0; i < N; i++) {
		solo[i] = (struct worker_arg){ .d = &d, .idx = i, .prefix = "solo" };
		worker(&solo[i]);
		cr_assert_eq(solo[i].ok, 3, "solo client %d: %d of 3 turns completed", i, solo[i].ok);
	}
	for (int i = 0; i < N; i++) {
		a[i] = (struct worker_arg){ .d = &d, .idx = i, .prefix = "conc" };
		pthread_create(&th[i], NULL, worker, &a[i]);
	}
	for (int i = 0; i < N; i++) {
		pthread_join(th[i], NULL);
		cr_expect_eq(a[i].ok, 3, "client %d: %d of 3 turns completed", i, a[i].ok);
		cr_expect_arr_eq(a[i].got, solo[i].got, sizeof(a[i].got),
				 "client %d: its tokens differ from its solo run", i);
	}
	int fd = client_connect(&d);
	Dualpath__V1__Response *r = simple(fd, 2, DUALPATH__V1__REQUEST__BODY_LIST_SESSIONS);
	cr_assert_not_null(r);
	cr_expect_eq(r->sessions->n_sessions, 2 * N);
	dp_proto_response_free(r);
	close(fd);
}

Test(daemon, cancel_ends_a_generation_early)
{
	daemon_start(&d, NULL);
	int fd = client_connect(&d);
	send_generate(fd, 7, "c", prompt, NP, 4000, 0, 0);
	/* wait for the first token, then cancel */
	Dualpath__V1__Response *r = recv_resp(fd, 30000);
	cr_assert_not_null(r);
	dp_proto_response_free(r);
	Dualpath__V1__Cancel c = DUALPATH__V1__CANCEL__INIT;
	Dualpath__V1__Request req = DUALPATH__V1__REQUEST__INIT;
	c.target_request_id = 7;
	req.request_id = 8;
	req.body_case = DUALPATH__V1__REQUEST__BODY_CANCEL;
	req.cancel = &c;
	cr_assert_eq(send_req(fd, &req), 0);
	uint32_t out[4096];
	size_t n;
	cr_expect_eq(collect(fd, 7, out, 4096, &n), DUALPATH__V1__FINISH_REASON__FINISH_CANCELLED);
	cr_expect_lt(n, 4000);
	close(fd);
}

Test(daemon, a_client_that_disconnects_mid_stream_does_not_disturb_others)
{
	daemon_start(&d, NULL);
	int a = client_connect(&d), b = client_connect(&d);
	send_generate(a, 5, "gone", prompt, NP, 4000, 0, 0);
	Dualpath__V1__Response *r = recv_resp(a, 30000);
	cr_assert_not_null(r);
	dp_proto_response_free(r);
	close(a); /* mid-stream */
	uint32_t out[64];
	size_t n;
	send_generate(b, 6, "stays", prompt, NP, 12, 0, 0);
	cr_expect_eq(collect(b, 6, out, 64, &n), DUALPATH__V1__FINISH_REASON__FINISH_LENGTH);
	cr_expect_eq(n, 12);
	/* the session of the vanished client is idle again */
	send_generate(b, 9, "gone", prompt, 3, 2, 0, 0);
	cr_expect_eq(collect(b, 9, out, 64, &n), DUALPATH__V1__FINISH_REASON__FINISH_LENGTH);
	close(b);
}

static void raw_write(int fd, const void *p, size_t n)
{
	cr_assert_eq(dp_frame_write_all(fd, p, n, 5000), 0);
}

static bool closed_by_peer(int fd)
{
	Dualpath__V1__Response *r;
	/* drain answers until EOF */
	for (int i = 0; i < 16; i++) {
		r = recv_resp(fd, 10000);
		if (!r)
			return true;
		dp_proto_response_free(r);
	}
	return false;
}

Test(daemon, bad_frames_close_that_connection_only)
{
	daemon_start(&d, NULL);
	int good = client_connect(&d);

	/* garbage protobuf */
	int fd = client_connect(&d);
	uint8_t junk[] = { 5, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff };
	raw_write(fd, junk, sizeof(junk));
	cr_expect(closed_by_peer(fd), "garbage closes the connection");
	close(fd);

	/* an oversized frame: the header alone is enough */
	fd = client_connect(&d);
	uint8_t big[] = { 0xff, 0xff, 0xff, 0x7f };
	raw_write(fd, big, sizeof(big));
	cr_expect(closed_by_peer(fd), "a frame over max_frame_bytes closes the connection");
	close(fd);

	/* a zero-length frame */
	fd = client_connect(&d);
	uint8_t zero[] = { 0, 0, 0, 0 };
	raw_write(fd, zero, sizeof(zero));
	cr_expect(closed_by_peer(fd));
	close(fd);

	/* an unknown request body (field 99): valid protobuf, unknown kind */
	fd = client_connect(&d);
	/* request_id 5, then field 99 as an empty length-delimited value */
	uint8_t unk[] = { 5, 0, 0, 0, 0x08, 0x05, 0x9a, 0x06, 0x00 };
	raw_write(fd, unk, sizeof(unk));
	Dualpath__V1__Response *r = recv_resp(fd, 10000);
	cr_assert_not_null(r, "an unknown request gets an answer");
	cr_expect_eq(r->body_case, DUALPATH__V1__RESPONSE__BODY_ERROR);
	dp_proto_response_free(r);
	close(fd);

	/* no Hello first */
	fd = try_connect(d.sock);
	Dualpath__V1__Request req = DUALPATH__V1__REQUEST__INIT;
	Dualpath__V1__HealthRequest h = DUALPATH__V1__HEALTH_REQUEST__INIT;
	req.request_id = 4;
	req.body_case = DUALPATH__V1__REQUEST__BODY_HEALTH;
	req.health = &h;
	cr_assert_eq(send_req(fd, &req), 0);
	r = recv_resp(fd, 10000);
	cr_assert_not_null(r);
	cr_expect_eq(r->body_case, DUALPATH__V1__RESPONSE__BODY_ERROR);
	cr_expect_eq(r->error->code, DUALPATH__V1__CODE__FAILED_PRECONDITION);
	dp_proto_response_free(r);
	close(fd);

	/* invalid token ids: an error, the connection stays */
	fd = client_connect(&d);
	uint32_t bad[] = { 1, 2, 999999 };
	send_generate(fd, 20, NULL, bad, 3, 4, 0, 0);
	uint32_t out[16];
	size_t n;
	cr_expect_eq(collect(fd, 20, out, 16, &n), -DUALPATH__V1__CODE__INVALID_ARGUMENT);
	send_generate(fd, 21, NULL, prompt, 4, 3, 0, 0);
	cr_expect_eq(collect(fd, 21, out, 16, &n), DUALPATH__V1__FINISH_REASON__FINISH_LENGTH);
	close(fd);

	/* and the first client was served throughout */
	send_generate(good, 30, "good", prompt, NP, 5, 0, 0);
	cr_expect_eq(collect(good, 30, out, 16, &n), DUALPATH__V1__FINISH_REASON__FINISH_LENGTH);
	close(good);
}

Test(daemon, limits_are_answered_with_clear_errors)
{
	const char *extra[] = { "--max-new-tokens", "8", "--max-prompt-tokens", "10",
				"--max-sessions", "2", NULL };
	daemon_start(&d, extra);
	int fd = client_connect(&d);
	uint32_t out[64];
	size_t n;
	send_generate(fd, 1000, NULL, prompt, 4, 9, 0, 0);
	cr_expect_eq(collect(fd, 1000, out, 64, &n), -DUALPATH__V1__CODE__INVALID_ARGUMENT, "max_new_tokens");
	send_generate(fd, 1001, NULL, prompt, 11, 2, 0, 0);
	cr_expect_eq(collect(fd, 1001, out, 64, &n), -DUALPATH__V1__CODE__INVALID_ARGUMENT, "prompt length");
	send_generate(fd, 1002, "s1", prompt, 2, 1, 0, 0);
	cr_expect_eq(collect(fd, 1002, out, 64, &n), DUALPATH__V1__FINISH_REASON__FINISH_LENGTH);
	send_generate(fd, 1003, "s2", prompt, 2, 1, 0, 0);
	cr_expect_eq(collect(fd, 1003, out, 64, &n), DUALPATH__V1__FINISH_REASON__FINISH_LENGTH);
	send_generate(fd, 1004, "s3", prompt, 2, 1, 0, 0);
	cr_expect_eq(collect(fd, 1004, out, 64, &n), -DUALPATH__V1__CODE__RESOURCE_EXHAUSTED, "max_sessions");
	send_generate(fd, 1005, "../etc", prompt, 2, 1, 0, 0);
	cr_expect_eq(collect(fd, 1005, out, 64, &n), -DUALPATH__V1__CODE__INVALID_ARGUMENT, "session id");
	close(fd);
}

Test(daemon, sessions_survive_a_restart)
{
	daemon_start(&d, NULL);
	int fd = client_connect(&d);
	uint32_t t1[64], t2[64], ref[64];
	size_t n1, n2, nr;
	send_generate(fd, 1, "keep", prompt, 8, 12, 0, 0);
	cr_assert_eq(collect(fd, 1, t1, 64, &n1), DUALPATH__V1__FINISH_REASON__FINISH_LENGTH);
	close(fd);
	cr_assert_eq(daemon_stop(&d), 0);

	char dir[96];
	snprintf(dir, sizeof(dir), "%s", d.dir);
	daemon_start_in(&d, dir, NULL);
	fd = client_connect(&d);
	Dualpath__V1__Response *r = simple(fd, 2, DUALPATH__V1__REQUEST__BODY_LIST_SESSIONS);
	cr_assert_not_null(r);
	cr_assert_eq(r->sessions->n_sessions, 1);
	cr_expect_str_eq(r->sessions->sessions[0]->session_id, "keep");
	cr_expect_eq(r->sessions->sessions[0]->tokens, 8 + 12);
	cr_expect_str_eq(r->sessions->sessions[0]->tier, "nvme", "persisted at shutdown");
	dp_proto_response_free(r);
	/* the next turn continues the context exactly */
	send_generate(fd, 3, "keep", prompt + 8, 4, 6, 0, 0);
	cr_assert_eq(collect(fd, 3, t2, 64, &n2), DUALPATH__V1__FINISH_REASON__FINISH_LENGTH);
	uint32_t all[64];
	size_t na = 0;
	for (size_t i = 0; i < 8; i++)
		all[na++] = prompt[i];
	for (size_t i = 0; i < n1; i++)
		all[na++] = t1[i];
	for (size_t i = 8; i < 12; i++)
		all[na++] = prompt[i];
	send_generate(fd, 4, NULL, all, na, 6, 0, 0);
	cr_assert_eq(collect(fd, 4, ref, 64, &nr), DUALPATH__V1__FINISH_REASON__FINISH_LENGTH);
	cr_expect_arr_eq(t2, ref, n2 * sizeof(uint32_t));
	close(fd);
}

Test(daemon, sigterm_drains_running_requests_then_exits_0)
{
	const char *extra[] = { "--drain-grace-ms", "20000", NULL };
	daemon_start(&d, extra);
	int fd = client_connect(&d);
	send_generate(fd, 1, "drain", prompt, NP, 60, 0, 0);
	Dualpath__V1__Response *r = recv_resp(fd, 30000);
	cr_assert_not_null(r);
	dp_proto_response_free(r);
	kill(d.pid, SIGTERM);
	uint32_t out[128];
	size_t n;
	cr_expect_eq(collect(fd, 1, out, 128, &n), DUALPATH__V1__FINISH_REASON__FINISH_LENGTH,
		     "a running request finishes within the grace period");
	int st;
	waitpid(d.pid, &st, 0);
	d.pid = 0;
	cr_expect(WIFEXITED(st) && WEXITSTATUS(st) == 0, "exit status %d", st);
	close(fd);
}

Test(daemon, admin_requests_need_root_or_the_admin_group)
{
	daemon_start(&d, NULL);
	chmod(d.dir, 0755);
	chmod(d.sock, 0666); /* let the unprivileged child connect at all */
	if (geteuid() != 0)
		cr_skip_test("needs root to switch to an unprivileged uid");
	pid_t pid = fork();
	if (pid == 0) {
		if (setgroups(0, NULL) < 0 || setgid(65534) < 0 || setuid(65534) < 0)
			_exit(10);
		int fd = try_connect(d.sock);
		if (fd < 0)
			_exit(11);
		Dualpath__V1__Hello h = DUALPATH__V1__HELLO__INIT;
		Dualpath__V1__Request r = DUALPATH__V1__REQUEST__INIT;
		h.protocol_version = 1;
		r.request_id = 1;
		r.body_case = DUALPATH__V1__REQUEST__BODY_HELLO;
		r.hello = &h;
		if (send_req(fd, &r) < 0)
			_exit(12);
		Dualpath__V1__Response *resp = recv_resp(fd, 10000);
		if (!resp)
			_exit(13);
		dp_proto_response_free(resp);
		Dualpath__V1__Shutdown sh = DUALPATH__V1__SHUTDOWN__INIT;
		r.request_id = 2;
		r.body_case = DUALPATH__V1__REQUEST__BODY_SHUTDOWN;
		r.shutdown = &sh;
		send_req(fd, &r);
		resp = recv_resp(fd, 10000);
		if (!resp || resp->body_case != DUALPATH__V1__RESPONSE__BODY_ERROR ||
		    resp->error->code != DUALPATH__V1__CODE__PERMISSION_DENIED)
			_exit(14);
		_exit(0);
	}
	int st;
	waitpid(pid, &st, 0);
	cr_expect(WIFEXITED(st) && WEXITSTATUS(st) == 0, "unprivileged client: status %d", WEXITSTATUS(st));
	/* root may */
	int fd = client_connect(&d);
	Dualpath__V1__Response *r = simple(fd, 3, DUALPATH__V1__REQUEST__BODY_STATS);
	cr_assert_not_null(r);
	cr_expect_eq(r->body_case, DUALPATH__V1__RESPONSE__BODY_STATS);
	dp_proto_response_free(r);
	r = simple(fd, 4, DUALPATH__V1__REQUEST__BODY_SHUTDOWN);
	cr_assert_not_null(r);
	cr_expect_eq(r->body_case, DUALPATH__V1__RESPONSE__BODY_ACK);
	dp_proto_response_free(r);
	waitpid(d.pid, &st, 0);
	d.pid = 0;
	cr_expect(WIFEXITED(st) && WEXITSTATUS(st) == 0, "Shutdown exits 0");
	close(fd);
}

Test(daemon, the_socket_is_created_0660)
{
	daemon_start(&d, NULL);
	struct stat st;
	cr_assert_eq(stat(d.sock, &st), 0);
	cr_expect_eq(st.st_mode & 0777, 0660);
}

/* Three turns, the session parked on NVMe between them; returns the tokens. */
static size_t parked_turns(const char *mode, uint32_t *out, size_t cap)
{
	const char *extra[] = { "--restore", mode, NULL };
	daemon_start(&d, extra);
	int fd = client_connect(&d);
	size_t total = 0;
	for (int t = 0; t < 3; t++) {
		size_t n;
		send_generate(fd, 10 + t, "parked", prompt + 3 * t, 3, 15, 0, 0);
		cr_assert_eq(collect(fd, 10 + t, out + total, cap - total, &n),
			     DUALPATH__V1__FINISH_REASON__FINISH_LENGTH, "%s, turn %d", mode, t);
		total += n;
		evict_session(fd, 100 + t, "parked");
	}
	/* each mode's signature: recompute reads nothing back, full loads
	 * whole states, dualpath restores layer by layer */
	double read = metric(fd, 200, "dualpath_kv_pages_read_total");
	double loads = metric(fd, 201, "dualpath_kv_loads_total");
	double restores = metric(fd, 202, "dualpath_kv_restores_total");
	if (strcmp(mode, "recompute") == 0) {
		cr_expect_eq(read, 0, "recompute read %g pages back", read);
		cr_expect_eq(loads + restores, 0);
	} else if (strcmp(mode, "full") == 0) {
		cr_expect_eq(loads, 2, "two turns found their state parked");
		cr_expect_eq(restores, 0);
	} else {
		cr_expect_eq(restores, 2, "two turns found their state parked");
		cr_expect_eq(loads, 0);
	}
	close(fd);
	cr_assert_eq(daemon_stop(&d), 0);
	daemon_cleanup(&d);
	return total;
}

/* [io] read_rate shows in the metrics: reads held back by it, and their
 * wait; none without a rate. The state parked between two turns is read
 * back through the paced engine. */
static void read_wait_metrics(const char *rate, double *ret_waits, double *ret_s, double *ret_reads)
{
	const char *with[] = { "--io-read-rate", rate, NULL }, *without[] = { NULL };
	daemon_start(&d, rate ? with : without);
	int fd = client_connect(&d);
	uint32_t out[64];
	size_t total = 0;
	for (int t = 0; t < 2; t++) {
		size_t n;
		send_generate(fd, 10 + t, "paced", prompt + 3 * t, 3, 15, 0, 0);
		cr_assert_eq(collect(fd, 10 + t, out + total, 64 - total, &n),
			     DUALPATH__V1__FINISH_REASON__FINISH_LENGTH, "turn %d", t);
		total += n;
		evict_session(fd, 100 + t, "paced");
	}
	*ret_waits = metric(fd, 200, "dualpath_io_read_waits_total");
	*ret_s = metric(fd, 201, "dualpath_io_read_wait_seconds_total");
	*ret_reads = metric(fd, 202, "dualpath_io_reads_total");
	close(fd);
	cr_assert_eq(daemon_stop(&d), 0);
	daemon_cleanup(&d);
}

Test(daemon, reads_held_back_by_the_read_rate_are_counted_in_the_metrics)
{
	double waits, secs, reads;
	read_wait_metrics(NULL, &waits, &secs, &reads);
	cr_expect_eq(waits, 0, "no rate: %g reads waited", waits);
	cr_expect_eq(secs, 0);
	if (reads <= 0)
		cr_skip_test("the NVMe tier reads without the io engine here (no io_uring)");
	read_wait_metrics("1M", &waits, &secs, &reads);
	cr_expect_gt(waits, 0, "reads paced to 1 MB/s: none waited");
	cr_expect_gt(secs, 0);
}

Test(daemon, the_overlapped_restore_returns_exactly_the_tokens_of_load_then_compute)
{
	uint32_t full[64], dual[64], rec[64];
	size_t nf = parked_turns("full", full, 64);
	size_t nd = parked_turns("dualpath", dual, 64);
	size_t nr = parked_turns("recompute", rec, 64);
	cr_assert_eq(nf, 45);
	cr_assert_eq(nd, nf);
	cr_assert_eq(nr, nf);
	cr_expect_arr_eq(dual, full, nf * sizeof(uint32_t), "dualpath differs from load-then-compute");
	cr_expect_arr_eq(rec, full, nf * sizeof(uint32_t), "recompute differs from load-then-compute");
}

Test(daemon, the_journal_is_compacted_when_idle_and_a_kill_after_it_loses_no_turn)
{
	static const char *const extra[] = { "--compact-every", "2", NULL };
	daemon_start(&d, extra);
	int fd = client_connect(&d);
	uint32_t out[3][4][16];
	size_t n[3][4];
	char name[3][8];
	uint64_t id = 1;
	/* three sessions, four turns each: twelve commits, several compactions */
	for (int turn = 0; turn < 4; turn++)
		for (int s = 0; s < 3; s++) {
			snprintf(name[s], sizeof(name[s]), "c%d", s);
			send_generate(fd, id, name[s], prompt + s + turn, 3, 5, 0, 0);
			cr_assert_eq(collect(fd, id, out[s][turn], 16, &n[s][turn]),
				     DUALPATH__V1__FINISH_REASON__FINISH_LENGTH);
			id++;
		}
	double compactions = 0;
	for (int i = 0; i < 200 && compactions < 1; i++) {
		compactions = metric(fd, id++, "dualpath_journal_compactions_total");
		if (compactions < 1)
			usleep(10000);
	}
	cr_expect_geq(compactions, 1, "the idle daemon compacted its journal");
	close(fd);
	/* no shutdown persist: everything must come back from the journal */
	kill(d.pid, SIGKILL);
	waitpid(d.pid, NULL, 0);
	d.pid = 0;

	char dir[96];
	snprintf(dir, sizeof(dir), "%s", d.dir);
	daemon_start_in(&d, dir, extra);
	fd = client_connect(&d);
	Dualpath__V1__Response *r = simple(fd, id++, DUALPATH__V1__REQUEST__BODY_LIST_SESSIONS);
	cr_assert_not_null(r);
	cr_assert_eq(r->sessions->n_sessions, 3);
	for (size_t i = 0; i < 3; i++)
		cr_expect_eq(r->sessions->sessions[i]->tokens, 4 * (3 + 5), "session %s",
			     r->sessions->sessions[i]->session_id);
	dp_proto_response_free(r);
	/* and each continues exactly as one long prompt would */
	for (int s = 0; s < 3; s++) {
		uint32_t all[64], t[16], ref[16];
		size_t na = 0, nt, nr;
		for (int turn = 0; turn < 4; turn++) {
			for (int i = 0; i < 3; i++)
				all[na++] = prompt[s + turn + i];
			for (size_t i = 0; i < n[s][turn]; i++)
				all[na++] = out[s][turn][i];
		}
		send_generate(fd, id, name[s], prompt, 2, 4, 0, 0);
		cr_assert_eq(collect(fd, id++, t, 16, &nt), DUALPATH__V1__FINISH_REASON__FINISH_LENGTH);
		all[na++] = prompt[0];
		all[na++] = prompt[1];
		send_generate(fd, id, NULL, all, na, 4, 0, 0);
		cr_assert_eq(collect(fd, id++, ref, 16, &nr), DUALPATH__V1__FINISH_REASON__FINISH_LENGTH);
		cr_expect_arr_eq(t, ref, nt * sizeof(uint32_t), "session c%d", s);
	}
	close(fd);
}

/* ---- an Engram model ---------------------------------------------------------- */

static const char *engram_model(void)
{
	const char *m = getenv("DP_TEST_ENGRAM_MODEL");
	cr_assert_not_null(m, "DP_TEST_ENGRAM_MODEL is not set");
	return m;
}

/* dp-engram convert: the model's tables as a .dpe file in dir. */
static void convert_tables(const char *dir, char *out, size_t len)
{
	const char *tool = getenv("DP_ENGRAM_TOOL");
	cr_assert_not_null(tool, "DP_ENGRAM_TOOL is not set");
	snprintf(out, len, "%s/tables.dpe", dir);
	char cmd[1024];
	snprintf(cmd, sizeof(cmd), "'%s' convert '%s' '%s' >/dev/null", tool, engram_model(), out);
	cr_assert_eq(system(cmd), 0, "%s", cmd);
}

static const uint32_t bytes[] = { 'T', 'h', 'e', ' ', 'q', 'u', 'i', 'c', 'k', ' ', 'b', 'r',
				  'o', 'w', 'n', ' ', 'f', 'o', 'x' };
#define NB DP_ARRAY_SIZE(bytes)

/* Three turns of one session on the Engram model, parked on NVMe between
 * them, then the same context as one prompt: returns every turn's tokens
 * and checks the last turn equals the one-prompt run. */
static size_t engram_turns(const char *residency, const char *restore, uint32_t *out, size_t cap)
{
	char tdir[] = "/var/tmp/dp-test-e-XXXXXX", tables[128];
	cr_assert_not_null(mkdtemp(tdir));
	convert_tables(tdir, tables, sizeof(tables));
	setenv("DP_TEST_MODEL", engram_model(), 1);
	const char *extra[] = { "--engram-tables", tables, "--engram-residency", residency,
				"--engram-cache-rows", "16", "--restore", restore, NULL };
	daemon_start(&d, extra);
	unsetenv("DP_TEST_MODEL");
	int fd = client_connect(&d);
	uint32_t all[128];
	size_t total = 0, na = 0, last = 0;
	for (int t = 0; t < 3; t++) {
		size_t n;
		send_generate(fd, 10 + t, "eg", bytes + 6 * t, 6, 8, 0, 0);
		cr_assert_neq(collect(fd, 10 + t, out + total, cap - total, &n),
			      DUALPATH__V1__FINISH_REASON__FINISH_ERROR, "%s, turn %d", residency, t);
		for (int i = 0; i < 6; i++)
			all[na++] = bytes[6 * t + i];
		if (t < 2)
			for (size_t i = 0; i < n; i++)
				all[na++] = out[total + i];
		last = total;
		total += n;
		if (t < 2)
			evict_session(fd, 100 + t, "eg");
	}
	uint32_t ref[16];
	size_t nr;
	send_generate(fd, 20, NULL, all, na, 8, 0, 0);
	cr_assert_neq(collect(fd, 20, ref, 16, &nr), DUALPATH__V1__FINISH_REASON__FINISH_ERROR);
	cr_assert_eq(nr, total - last, "%s: turn 3 and the one-prompt run differ in length", residency);
	cr_expect_arr_eq(out + last, ref, nr * sizeof(uint32_t),
			 "%s/%s: turn 3 differs from the one-prompt run", residency, restore);
	double rows = metric(fd, 200, "dualpath_engram_rows_total");
	double sync = metric(fd, 201, "dualpath_engram_sync_prefetches_total");
	double bytes_read = metric(fd, 202, "dualpath_engram_read_bytes_total");
	cr_expect_gt(rows, 0, "the Engram layers looked rows up");
	cr_expect_eq(sync, 0, "every step's rows were prefetched before its forward");
	if (strcmp(residency, "nvme") == 0)
		cr_expect_gt(bytes_read, 0, "nvme residency read rows from the file");
	else
		cr_expect_eq(bytes_read, 0, "%s residency read nothing", residency);
	close(fd);
	cr_assert_eq(daemon_stop(&d), 0);
	daemon_cleanup(&d);
	char cmd[160];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tdir);
	(void)!system(cmd);
	return total;
}

Test(daemon, an_engram_model_serves_the_same_tokens_with_its_tables_on_device_in_dram_or_on_nvme)
{
	uint32_t dram[64], nvme[64], dev[64], rec[64];
	size_t nd = engram_turns("dram", "dualpath", dram, 64);
	size_t nn = engram_turns("nvme", "dualpath", nvme, 64);
	size_t nv = engram_turns("device", "full", dev, 64);
	size_t nr = engram_turns("nvme", "recompute", rec, 64);
	cr_assert_gt(nd, 0);
	cr_assert_eq(nn, nd);
	cr_assert_eq(nv, nd);
	cr_assert_eq(nr, nd);
	cr_expect_arr_eq(nvme, dram, nd * sizeof(uint32_t), "nvme residency differs from dram");
	cr_expect_arr_eq(dev, dram, nd * sizeof(uint32_t), "device residency differs from dram");
	cr_expect_arr_eq(rec, dram, nd * sizeof(uint32_t), "replaying the history differs");
}

/* Start dualpathd on `model` expecting it to refuse; returns its log. */
static void start_fails_on(const char *model, const char *const *extra, char *log, size_t len)
{
	char dir[] = "/var/tmp/dp-test-f-XXXXXX";
	cr_assert_not_null(mkdtemp(dir));
	daemon_start_refused(dir, model, extra, log, len);
	char cmd[160];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	(void)!system(cmd);
}

static void start_fails(const char *const *extra, char *log, size_t len)
{
	start_fails_on(engram_model(), extra, log, len);
}

Test(daemon, an_engram_model_without_valid_tables_is_refused_with_a_clear_error)
{
	char log[8192];
	static const char *const none[] = { NULL };
	start_fails(none, log, sizeof(log));
	cr_expect_not_null(strstr(log, "engram_tables"), "the error names the setting: %s", log);

	/* a table file of some other model: the hash layout does not match */
	char tdir[] = "/var/tmp/dp-test-e-XXXXXX", bad[128], cmd[512];
	cr_assert_not_null(mkdtemp(tdir));
	snprintf(bad, sizeof(bad), "%s/junk.dpe", tdir);
	snprintf(cmd, sizeof(cmd), "head -c 8192 /dev/urandom > '%s'", bad);
	cr_assert_eq(system(cmd), 0);
	const char *const junk[] = { "--engram-tables", bad, NULL };
	start_fails(junk, log, sizeof(log));
	cr_expect_not_null(strstr(log, "Engram tables"), "the error names the file: %s", log);
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tdir);
	(void)!system(cmd);
}

/* A long multi-turn session (the test model's CSA layer picks 3 of up to 90
 * compressed entries per query), parked on NVMe between turns; returns its
 * tokens. In host mode, checks the staging counters (a random model's
 * choice is far less stable from step to step than a trained one's, so only
 * that some picks were found staged). */
static size_t csa_turns(const char *mode, uint32_t *out, size_t cap)
{
	const char *extra[] = { "--csa-entries", mode, NULL };
	daemon_start(&d, extra);
	int fd = client_connect(&d);
	uint32_t text[140];
	for (size_t i = 0; i < 140; i++)
		text[i] = 97 + (uint32_t)((i * 7 + i / 5) % 26);
	size_t total = 0;
	for (int t = 0; t < 4; t++) {
		size_t n;
		send_generate(fd, 10 + t, "csa", text + 20 * t, 60, 30, 0, 0);
		cr_assert_eq(collect(fd, 10 + t, out + total, cap - total, &n),
			     DUALPATH__V1__FINISH_REASON__FINISH_LENGTH, "%s, turn %d", mode, t);
		total += n;
		if (t == 1 || t == 2)
			evict_session(fd, 100 + t, "csa");
	}
	double sel = metric(fd, 200, "dualpath_csa_entries_selected_total");
	double hits = metric(fd, 201, "dualpath_csa_entries_staged_hits_total");
	double got = metric(fd, 202, "dualpath_csa_entries_fetched_total");
	double restores = metric(fd, 203, "dualpath_kv_restores_total");
	cr_expect_eq(restores, 2, "%s: two turns found their state parked", mode);
	if (strcmp(mode, "host") == 0) {
		cr_expect_gt(sel, 0);
		cr_expect_eq(sel, hits + got);
		cr_log_info("csa: %g picked, %g staged already, %g fetched", sel, hits, got);
		cr_expect_gt(hits, 0, "decode steps reuse staged entries");
		cr_expect_gt(metric(fd, 204, "dualpath_csa_host_bytes"), 0);
	} else {
		cr_expect_eq(sel, -1, "no CSA staging metrics in device mode");
	}
	close(fd);
	cr_assert_eq(daemon_stop(&d), 0);
	daemon_cleanup(&d);
	return total;
}

Test(daemon, csa_entries_in_host_memory_serve_the_tokens_of_device_mode_across_parking)
{
	uint32_t dev[160], host[160];
	size_t nd = csa_turns("device", dev, 160);
	size_t nh = csa_turns("host", host, 160);
	cr_assert_eq(nd, 120);
	cr_assert_eq(nh, nd);
	cr_expect_arr_eq(host, dev, nd * sizeof(uint32_t), "host mode's tokens differ");
}

/* Routed experts paged (--experts dram|nvme, --expert-slots): a multi-turn
 * session with its state parked on NVMe between turns, on `model`; returns
 * its tokens and checks the expert counters. */
static size_t expert_turns(const char *model, const char *where, const char *slots, uint32_t *out,
			   size_t cap)
{
	const char *paged[] = { "--model", model, "--experts", where, "--expert-slots", slots, NULL };
	const char *resident[] = { "--model", model, NULL };
	daemon_start(&d, strcmp(where, "device") ? paged : resident);
	int fd = client_connect(&d);
	uint32_t text[120];
	for (size_t i = 0; i < 120; i++)
		text[i] = 97 + (uint32_t)((i * 11 + i / 3) % 26);
	size_t total = 0;
	for (int t = 0; t < 3; t++) {
		size_t n;
		send_generate(fd, 10 + t, "moe", text + 40 * t, 40, 24, 0, 0);
		cr_assert_eq(collect(fd, 10 + t, out + total, cap - total, &n),
			     DUALPATH__V1__FINISH_REASON__FINISH_LENGTH, "%s, turn %d", where, t);
		total += n;
		evict_session(fd, 100 + t, "moe");
	}
	double uses = metric(fd, 200, "dualpath_experts_uses_total");
	double hits = metric(fd, 201, "dualpath_experts_hits_total");
	double misses = metric(fd, 202, "dualpath_experts_misses_total");
	double ahead = metric(fd, 203, "dualpath_experts_read_ahead_total");
	double bytes = metric(fd, 204, "dualpath_experts_in_bytes_total");
	if (strcmp(where, "device")) {
		cr_expect_gt(uses, 0, "%s", where);
		cr_expect_eq(uses, hits + misses + ahead, "%s: every use a hit, miss or read-ahead",
			     where);
		cr_expect_gt(misses, 0, "%s: %s slots cannot hold every expert", where, slots);
		cr_expect_gt(bytes, 0);
		if (!strcmp(where, "nvme"))
			cr_expect_gt(ahead, 0, "nvme: the hash layer's experts are read ahead");
		else
			cr_expect_eq(ahead, 0, "dram: nothing to read ahead");
	} else {
		cr_expect_eq(uses, -1, "no expert metrics when every expert is resident");
	}
	close(fd);
	cr_assert_eq(daemon_stop(&d), 0);
	daemon_cleanup(&d);
	return total;
}

Test(daemon, paged_experts_from_dram_or_nvme_serve_the_tokens_of_resident_experts)
{
	const char *alt = test_model(), *emb = getenv("DP_TEST_EMBEDDED_MODEL");
	cr_assert_not_null(emb, "DP_TEST_EMBEDDED_MODEL is not set");
	uint32_t dev[80], dram[80], nvme[80];
	/* alt: 6 experts top-3, fp32; 3 slots: a prefill runs each layer in passes */
	size_t nd = expert_turns(alt, "device", "0", dev, 80);
	cr_assert_eq(nd, 72);
	cr_assert_eq(expert_turns(alt, "dram", "3", dram, 80), nd);
	cr_expect_arr_eq(dram, dev, nd * sizeof(uint32_t), "alt, dram: tokens differ");
	cr_assert_eq(expert_turns(alt, "nvme", "3", nvme, 80), nd);
	cr_expect_arr_eq(nvme, dev, nd * sizeof(uint32_t), "alt, nvme: tokens differ");
	/* the embedded model: 8 experts top-2, bf16 in the checkpoint */
	nd = expert_turns(emb, "device", "0", dev, 80);
	cr_assert_eq(expert_turns(emb, "nvme", "2", nvme, 80), nd);
	cr_expect_arr_eq(nvme, dev, nd * sizeof(uint32_t), "embedded, nvme: tokens differ");
}

Test(daemon, bad_expert_settings_are_refused_with_a_clear_error)
{
	char log[8192];
	const char *where[] = { "--experts", "gpu", NULL };
	start_fails_on(test_model(), where, log, sizeof(log));
	cr_expect_not_null(strstr(log, "experts must be device, dram or nvme"), "%s", log);
	const char *few[] = { "--experts", "nvme", "--expert-slots", "2", NULL }; /* alt: k 3 */
	start_fails_on(test_model(), few, log, sizeof(log));
	cr_expect_not_null(strstr(log, "expert_slots 2"), "%s", log);
	const char *resident[] = { "--expert-slots", "4", NULL };
	start_fails_on(test_model(), resident, log, sizeof(log));
	cr_expect_not_null(strstr(log, "expert_slots is set but experts = device"), "%s", log);
}

/* A test whose assertion fails leaves before daemon_cleanup: the daemon it
 * started must not outlive it (a stray daemon holds the test's output and the
 * harness waits on it until its timeout). */
Test(daemon, a_daemon_whose_test_dies_does_not_outlive_it)
{
	int pfd[2];
	cr_assert_eq(pipe(pfd), 0);
	pid_t test = fork();
	cr_assert_geq(test, 0);
	if (test == 0) {
		struct daemon_proc dd = { 0 };
		daemon_start(&dd, NULL);
		(void)!write(pfd[1], &dd, sizeof(dd));
		_exit(1); /* as a failed assertion leaves: no cleanup */
	}
	close(pfd[1]);
	struct daemon_proc dd = { 0 };
	cr_assert_eq(read(pfd[0], &dd, sizeof(dd)), (ssize_t)sizeof(dd));
	close(pfd[0]);
	pid_t daemon = dd.pid;
	waitpid(test, NULL, 0);
	bool gone = false;
	for (int i = 0; i < 500 && !gone; i++) {
		char path[64], st = 0;
		snprintf(path, sizeof(path), "/proc/%d/stat", (int)daemon);
		FILE *f = fopen(path, "r");
		gone = !f || fscanf(f, "%*d (%*[^)]) %c", &st) != 1 || st == 'Z' || st == 'X';
		if (f)
			fclose(f);
		if (!gone)
			usleep(10000);
	}
	if (!gone)
		kill(daemon, SIGKILL);
	cr_expect(gone, "dualpathd (pid %d) outlived the test that started it", (int)daemon);
	dd.pid = 0;
	daemon_cleanup(&dd); /* its directory */
}
