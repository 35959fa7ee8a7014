/* SPDX-License-Identifier: MIT */
/*
 * Hostile and careless clients against the real dualpathd: clients that
 * pipeline without reading, hold memory, never say Hello, exhaust the file
 * descriptors or the connection slots, or half-close. Each case is a defect
 * that was found by trying (issue 13); the daemon must keep serving others.
 */
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/stat.h>

#include "base/clock.h"
#include "base/macros.h"
#include "dpclient.h"

static struct daemon_proc d;

static void fini(void)
{
	daemon_cleanup(&d);
}

TestSuite(hostile, .fini = fini, .timeout = 300);

static const uint32_t prompt[] = { 72, 101, 108, 108, 111, 44, 32, 119, 111, 114, 108, 100 };
#define NP DP_ARRAY_SIZE(prompt)

/* Health answers within the timeout (the daemon is not stuck). */
static bool healthy(const struct daemon_proc *dp)
{
	int fd = hello_connect(dp);
	if (fd < 0)
		return false;
	Dualpath__V1__HealthRequest he = DUALPATH__V1__HEALTH_REQUEST__INIT;
	Dualpath__V1__Request r = DUALPATH__V1__REQUEST__INIT;
	r.request_id = 2;
	r.body_case = DUALPATH__V1__REQUEST__BODY_HEALTH;
	r.health = &he;
	Dualpath__V1__Response *resp = send_req(fd, &r) == 0 ? recv_resp(fd, 10000) : NULL;
	bool ok = resp && resp->body_case == DUALPATH__V1__RESPONSE__BODY_HEALTH;
	dp_proto_response_free(resp);
	close(fd);
	return ok;
}

/* Encode n copies of one request into a buffer, to pipeline them. */
static uint8_t *pipeline(Dualpath__V1__Request *r, size_t n, size_t *ret_len)
{
	size_t one = dp_frame_size(&r->base), len;
	uint8_t *buf = malloc(one * n);
	cr_assert_not_null(buf);
	for (size_t i = 0; i < n; i++)
		cr_assert_eq(dp_frame_encode(&r->base, DP_FRAME_MAX_DEFAULT, buf + i * one, one, &len), 0);
	*ret_len = one * n;
	return buf;
}

static int hello_only(const struct daemon_proc *dp)
{
	int fd = client_connect(dp);
	fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
	return fd;
}

/* Close with a reset, as a crashing client does. */
static void abort_close(int fd)
{
	struct linger l = { .l_onoff = 1, .l_linger = 0 };
	setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof(l));
	close(fd);
}

/* Write as much of buf as the socket takes without blocking. */
static void push(int fd, const uint8_t *buf, size_t len, size_t *at)
{
	while (*at < len) {
		ssize_t n = send(fd, buf + *at, len - *at, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (n <= 0)
			return;
		*at += (size_t)n;
	}
	*at = 0; /* all of it went: start over */
}

/* Open n connections that say Hello, then, for ms, pipeline copies of req
 * on all of them without ever reading. */
static void flood(Dualpath__V1__Request *req, size_t copies, int *fds, int n, int ms)
{
	size_t len, *at = calloc((size_t)n, sizeof(*at));
	cr_assert_not_null(at);
	uint8_t *buf = pipeline(req, copies, &len);
	for (int i = 0; i < n; i++)
		fds[i] = hello_only(&d);
	uint64_t end = dp_clock_ms() + (uint64_t)ms;
	while (dp_clock_ms() < end)
		for (int i = 0; i < n; i++)
			push(fds[i], buf, len, &at[i]);
	free(buf);
	free(at);
}

Test(hostile, pipelining_clients_that_never_read_cannot_deadlock_the_daemon)
{
	/* Hundreds of connections pipeline Cancels (each answered by compute
	 * with an Ack) and never read. Before the fix, the front spun in
	 * conn_close() on the full request ring while compute spun on the full
	 * event ring that only the front drains: health never answered and
	 * SIGTERM was ignored. */
	daemon_start(&d, NULL);
	enum { N = 200 };
	int fds[N];
	Dualpath__V1__Cancel c = DUALPATH__V1__CANCEL__INIT;
	Dualpath__V1__Request req = DUALPATH__V1__REQUEST__INIT;
	c.target_request_id = 12345;
	req.request_id = 9;
	req.body_case = DUALPATH__V1__REQUEST__BODY_CANCEL;
	req.cancel = &c;
	flood(&req, 4096, fds, N, 3000);
	for (int i = 0; i < N; i++)
		abort_close(fds[i]);

	cr_assert(healthy(&d), "health answers after the flood");
	/* while compute still works through the flood's backlog, a request
	 * may be refused as overloaded (UNAVAILABLE): a client retries */
	int fd = client_connect(&d);
	uint32_t out[16];
	size_t n = 0;
	int res = -DUALPATH__V1__CODE__UNAVAILABLE;
	for (int i = 0; i < 300 && res == -DUALPATH__V1__CODE__UNAVAILABLE; i++) {
		if (i)
			usleep(100000);
		send_generate(fd, 3 + (uint64_t)i, "after-flood", prompt, NP, 8, 0, 0);
		res = collect(fd, 3 + (uint64_t)i, out, 16, &n);
	}
	cr_expect_eq(res, DUALPATH__V1__FINISH_REASON__FINISH_LENGTH, "a session after the flood: %d", res);
	cr_expect_eq(n, 8);
	close(fd);
	cr_expect_eq(daemon_stop(&d), 0, "SIGTERM drains and exits 0 after the flood");
}

Test(hostile, clients_that_do_not_read_are_held_to_one_memory_budget)
{
	/* 400 non-reading connections once held 4.9 GB (only each one was
	 * capped, at 16 MiB). With client_buffer_bytes, all of them together
	 * stay within the budget; the ones holding most are closed. */
	const char *extra[] = { "--client-buffer-bytes", "8M", NULL };
	daemon_start(&d, extra);
	enum { N = 48 };
	int fds[N];
	Dualpath__V1__StatsRequest st = DUALPATH__V1__STATS_REQUEST__INIT;
	Dualpath__V1__Request req = DUALPATH__V1__REQUEST__INIT;
	req.request_id = 5;
	req.body_case = DUALPATH__V1__REQUEST__BODY_STATS;
	req.stats = &st;
	flood(&req, 512, fds, N, 3000);
	/* a partial frame that announces 3 MiB and sends 2 of them, on each
	 * of a few connections: input held counts too */
	int partial[4];
	for (int i = 0; i < 4; i++) {
		partial[i] = hello_only(&d);
		uint8_t head[4] = { 0, 0, 0x30, 0 };
		size_t sent = 0;
		cr_assert_eq(send(partial[i], head, 4, MSG_NOSIGNAL), 4);
		static uint8_t junk[1 << 16];
		uint64_t until = dp_clock_ms() + 1000;
		while (sent < (2u << 20) && dp_clock_ms() < until) {
			ssize_t k = send(partial[i], junk, sizeof(junk), MSG_NOSIGNAL | MSG_DONTWAIT);
			if (k > 0)
				sent += (size_t)k;
			else
				usleep(1000);
		}
	}
	cr_assert(healthy(&d), "health answers while clients hold memory");
	int fd = client_connect(&d);
	double peak = metric(fd, 2, "dualpath_client_buffer_peak_bytes");
	double closes = metric(fd, 3, "dualpath_slow_client_closes_total");
	/* the budget, plus at most one frame arriving over it */
	cr_expect(peak >= 0 && peak <= (8 << 20) + (4 << 20) + (1 << 20),
		  "peak of memory held by clients: %.0f bytes, budget 8 MiB", peak);
	cr_expect_gt(closes, 0, "the connections holding most were closed");
	uint32_t out[16];
	size_t n;
	send_generate(fd, 4, NULL, prompt, NP, 4, 0, 0);
	cr_expect_eq(collect(fd, 4, out, 16, &n), DUALPATH__V1__FINISH_REASON__FINISH_LENGTH);
	close(fd);
	for (int i = 0; i < N; i++)
		close(fds[i]);
	for (int i = 0; i < 4; i++)
		close(partial[i]);
	cr_expect_eq(daemon_stop(&d), 0);
}

Test(hostile, a_connection_that_never_says_hello_is_closed_after_hello_timeout_ms)
{
	const char *extra[] = { "--hello-timeout-ms", "300", NULL };
	daemon_start(&d, extra);
	int fd = try_connect(d.sock);
	cr_assert_geq(fd, 0);
	struct pollfd p = { .fd = fd, .events = POLLIN };
	uint64_t t0 = dp_clock_ms();
	cr_assert_eq(poll(&p, 1, 5000), 1, "the daemon closes the silent connection");
	char b;
	cr_expect_eq(read(fd, &b, 1), 0, "end of file");
	cr_expect_geq(dp_clock_ms() - t0, 250);
	close(fd);
	fd = client_connect(&d);
	cr_expect_eq(metric(fd, 2, "dualpath_hello_timeouts_total"), 1);
	close(fd);
}

Test(hostile, an_idle_connection_is_closed_after_idle_timeout_ms_but_a_busy_one_is_not)
{
	const char *extra[] = { "--idle-timeout-ms", "300", "--max-new-tokens", "8000", NULL };
	daemon_start(&d, extra);
	int idle = client_connect(&d);
	int busy = client_connect(&d);
	/* a generation that outlasts the idle timeout several times, read
	 * slowly: the client sends nothing meanwhile */
	enum { MAXN = 6000 };
	uint64_t t0 = dp_clock_ms();
	send_generate(busy, 7, NULL, prompt, NP, MAXN, 0, 0);
	struct pollfd p = { .fd = idle, .events = POLLIN };
	cr_assert_eq(poll(&p, 1, 5000), 1);
	char b;
	cr_expect_eq(read(idle, &b, 1), 0, "the idle connection was closed");
	uint32_t *out = malloc(MAXN * sizeof(*out));
	size_t n;
	cr_expect_eq(collect(busy, 7, out, MAXN, &n), DUALPATH__V1__FINISH_REASON__FINISH_LENGTH,
		     "the busy connection kept its stream");
	cr_expect_eq(n, MAXN);
	cr_expect_gt(dp_clock_ms() - t0, 600, "the stream outlasted the idle timeout (%llu ms)",
		     (unsigned long long)(dp_clock_ms() - t0));
	free(out);
	close(idle);
	close(busy);
}

Test(hostile, a_half_closed_connection_still_gets_its_answer)
{
	/* Generate, then shutdown(SHUT_WR): the daemon used to close without
	 * answering. It finishes the stream, then closes. */
	daemon_start(&d, NULL);
	int fd = client_connect(&d);
	send_generate(fd, 4, "half", prompt, NP, 24, 0, 0);
	cr_assert_eq(shutdown(fd, SHUT_WR), 0);
	uint32_t out[64];
	size_t n;
	cr_expect_eq(collect(fd, 4, out, 64, &n), DUALPATH__V1__FINISH_REASON__FINISH_LENGTH);
	cr_expect_eq(n, 24);
	char b;
	struct pollfd p = { .fd = fd, .events = POLLIN };
	cr_expect_eq(poll(&p, 1, 5000), 1);
	cr_expect_eq(read(fd, &b, 1), 0, "then the daemon closes");
	close(fd);
	/* a Stats asked for before the half-close is answered too */
	fd = client_connect(&d);
	Dualpath__V1__StatsRequest st = DUALPATH__V1__STATS_REQUEST__INIT;
	Dualpath__V1__Request req = DUALPATH__V1__REQUEST__INIT;
	req.request_id = 6;
	req.body_case = DUALPATH__V1__REQUEST__BODY_STATS;
	req.stats = &st;
	cr_assert_eq(send_req(fd, &req), 0);
	cr_assert_eq(shutdown(fd, SHUT_WR), 0);
	Dualpath__V1__Response *r = recv_resp(fd, 10000);
	cr_assert_not_null(r, "Stats answered after the half-close");
	cr_expect_eq(r->body_case, DUALPATH__V1__RESPONSE__BODY_STATS);
	dp_proto_response_free(r);
	close(fd);
}

static long cpu_ticks(pid_t pid)
{
	char path[64], buf[1024];
	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	FILE *f = fopen(path, "r");
	cr_assert_not_null(f);
	size_t n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = '\0';
	/* fields 14 and 15 (utime, stime), after the ")" of the name */
	char *p = strrchr(buf, ')');
	long ut = 0, stt = 0;
	cr_assert_eq(sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %ld %ld", &ut, &stt), 2);
	return ut + stt;
}

static long file_size(const char *path)
{
	struct stat st;
	return stat(path, &st) == 0 ? (long)st.st_size : -1;
}

Test(hostile, out_of_file_descriptors_the_daemon_backs_off_instead_of_spinning)
{
	/* With fewer descriptors than connections, accept() failed with
	 * EMFILE and the front spun at 100% CPU logging ~15 MB/s. */
	daemon_start(&d, NULL);
	/* leave the daemon a few descriptors above what it has open now */
	char dir[64];
	snprintf(dir, sizeof(dir), "/proc/%d/fd", (int)d.pid);
	int open_now = 0;
	char cmd[128];
	snprintf(cmd, sizeof(cmd), "ls %s | wc -l", dir);
	FILE *p = popen(cmd, "r");
	cr_assert_not_null(p);
	cr_assert_eq(fscanf(p, "%d", &open_now), 1);
	pclose(p);
	struct rlimit old, rl;
	cr_assert_eq(prlimit(d.pid, RLIMIT_NOFILE, NULL, &old), 0);
	rl = (struct rlimit){ .rlim_cur = (rlim_t)open_now + 4, .rlim_max = old.rlim_max };
	cr_assert_eq(prlimit(d.pid, RLIMIT_NOFILE, &rl, NULL), 0, "prlimit: %s", strerror(errno));
	enum { N = 24 };
	int fds[N];
	for (int i = 0; i < N; i++)
		fds[i] = try_connect(d.sock); /* the backlog takes them; accept fails */
	usleep(300000);
	long log0 = file_size(d.log), cpu0 = cpu_ticks(d.pid);
	sleep(2);
	long log1 = file_size(d.log), cpu1 = cpu_ticks(d.pid);
	long hz = sysconf(_SC_CLK_TCK);
	cr_expect_lt(cpu1 - cpu0, hz / 2, "daemon CPU over 2 s out of descriptors: %ld ticks (%ld/s)",
		     cpu1 - cpu0, hz);
	cr_expect_lt(log1 - log0, 4096, "log growth over 2 s: %ld bytes", log1 - log0);
	for (int i = 0; i < N; i++)
		if (fds[i] >= 0)
			close(fds[i]);
	cr_assert_eq(prlimit(d.pid, RLIMIT_NOFILE, &old, NULL), 0, "prlimit: %s", strerror(errno));
	usleep(300000);
	cr_expect(healthy(&d), "accepting again once descriptors are free");
	int fd = client_connect(&d);
	cr_expect_gt(metric(fd, 2, "dualpath_accept_errors_total"), 0);
	close(fd);
}

Test(hostile, a_low_file_limit_at_start_clamps_max_connections_and_says_so)
{
	/* ulimit -n below max_connections: the daemon raises its soft limit
	 * to the hard one, and where that is short serves fewer connections
	 * and says so, instead of accepting into EMFILE. */
	const char *bin = getenv("DUALPATHD");
	cr_assert_not_null(bin);
	snprintf(d.dir, sizeof(d.dir), "/var/tmp/dp-test-h-XXXXXX");
	cr_assert_not_null(mkdtemp(d.dir));
	snprintf(d.sock, sizeof(d.sock), "%.96s/sock", d.dir);
	snprintf(d.state, sizeof(d.state), "%s/state", d.dir);
	snprintf(d.log, sizeof(d.log), "%s/log", d.dir);
	pid_t self = getpid();
	d.pid = fork();
	if (d.pid == 0) {
		daemon_child_dies_with(self);
		struct rlimit rl = { .rlim_cur = 400, .rlim_max = 400 };
		setrlimit(RLIMIT_NOFILE, &rl);
		execl(bin, bin, "--config", "/dev/null", "--socket", d.sock, "--state-dir", d.state,
		      "--model", test_model(), "--log-file", d.log, "--pin-threads", "false",
		      "--max-connections", "1024", (char *)NULL);
		_exit(127);
	}
	int fd = -1;
	for (int i = 0; i < 3000 && fd < 0; i++) {
		fd = try_connect(d.sock);
		if (fd < 0)
			usleep(10000);
	}
	cr_assert_geq(fd, 0, "the daemon serves under a low file limit");
	close(fd);
	char cmd[512];
	snprintf(cmd, sizeof(cmd), "grep -q 'max_connections 1024 needs .* serving 144 connections' %s",
		 d.log);
	cr_expect_eq(system(cmd), 0, "the clamp is logged with its numbers");
	cr_expect(healthy(&d));
}

Test(hostile, an_operator_can_connect_when_clients_hold_every_other_slot)
{
	if (geteuid() != 0)
		cr_skip_test("needs root to act as an unprivileged client");
	const char *extra[] = { "--max-connections", "8", "--admin-connections", "2", NULL };
	daemon_start(&d, extra);
	chmod(d.dir, 0755);
	chmod(d.sock, 0666);
	int pipefd[2];
	cr_assert_eq(pipe(pipefd), 0);
	pid_t pid = fork();
	if (pid == 0) {
		close(pipefd[0]);
		if (setgroups(0, NULL) < 0 || setgid(65534) < 0 || setuid(65534) < 0)
			_exit(10);
		int held = 0; /* the connections stay open until the child is killed */
		for (int i = 0; i < 16; i++)
			if (hello_connect(&d) >= 0)
				held++;
		(void)!write(pipefd[1], &held, sizeof(held));
		pause(); /* hold them until killed */
		_exit(0);
	}
	close(pipefd[1]);
	int held = -1;
	cr_assert_eq(read(pipefd[0], &held, sizeof(held)), (ssize_t)sizeof(held));
	close(pipefd[0]);
	cr_expect_eq(held, 6, "an unprivileged user gets max_connections - admin_connections slots");
	int fd = client_connect(&d); /* root */
	Dualpath__V1__Response *r = simple(fd, 2, DUALPATH__V1__REQUEST__BODY_STATS);
	cr_expect(r && r->body_case == DUALPATH__V1__RESPONSE__BODY_STATS, "root is served");
	dp_proto_response_free(r);
	close(fd);
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
}

/* ---- sessions belong to their uid ----------------------------------------------- */

/* Run fn as an unprivileged uid in a child; returns its exit status. */
static int as_user(uid_t uid, int (*fn)(const struct daemon_proc *))
{
	pid_t pid = fork();
	if (pid == 0) {
		if (setgroups(0, NULL) < 0 || setgid(uid) < 0 || setuid(uid) < 0)
			_exit(100);
		_exit(fn(&d));
	}
	int st;
	waitpid(pid, &st, 0);
	return WIFEXITED(st) ? WEXITSTATUS(st) : 200;
}


/* Generate on a session; returns the finish reason or -code. */
static int child_generate(int fd, uint64_t id, const char *session, uint32_t n)
{
	Dualpath__V1__Generate g = DUALPATH__V1__GENERATE__INIT;
	Dualpath__V1__TokenIds t = DUALPATH__V1__TOKEN_IDS__INIT;
	Dualpath__V1__Sampling sp = DUALPATH__V1__SAMPLING__INIT;
	Dualpath__V1__Request r = DUALPATH__V1__REQUEST__INIT;
	sp.ignore_eos = true; /* random test models emit EOS anywhere */
	g.sampling = &sp;
	t.n_ids = NP;
	t.ids = (uint32_t *)prompt;
	g.session_id = (char *)session;
	g.prompt_case = DUALPATH__V1__GENERATE__PROMPT_TOKENS;
	g.tokens = &t;
	g.max_new_tokens = n;
	r.request_id = id;
	r.body_case = DUALPATH__V1__REQUEST__BODY_GENERATE;
	r.generate = &g;
	if (send_req(fd, &r) < 0)
		return -1000;
	for (;;) {
		Dualpath__V1__Response *resp = recv_resp(fd, 30000);
		if (!resp)
			return -1000;
		int res = 0;
		if (resp->body_case == DUALPATH__V1__RESPONSE__BODY_ERROR)
			res = -(int)resp->error->code;
		else if (resp->body_case == DUALPATH__V1__RESPONSE__BODY_TOKEN_CHUNK)
			res = resp->token_chunk->finish;
		dp_proto_response_free(resp);
		if (res)
			return res;
	}
}

/* How many sessions the caller is shown, and whether `id` is among them. */
static int child_list(int fd, const char *id, bool *ret_seen)
{
	Dualpath__V1__ListSessionsRequest ls = DUALPATH__V1__LIST_SESSIONS_REQUEST__INIT;
	Dualpath__V1__Request r = DUALPATH__V1__REQUEST__INIT;
	r.request_id = 77;
	r.body_case = DUALPATH__V1__REQUEST__BODY_LIST_SESSIONS;
	r.list_sessions = &ls;
	if (send_req(fd, &r) < 0)
		return -1;
	Dualpath__V1__Response *resp = recv_resp(fd, 10000);
	if (!resp || resp->body_case != DUALPATH__V1__RESPONSE__BODY_SESSIONS) {
		dp_proto_response_free(resp);
		return -1;
	}
	int n = (int)resp->sessions->n_sessions;
	*ret_seen = false;
	for (int i = 0; i < n; i++)
		*ret_seen |= !strcmp(resp->sessions->sessions[i]->session_id, id);
	dp_proto_response_free(resp);
	return n;
}

static int user_a_creates(const struct daemon_proc *dp)
{
	int fd = hello_connect(dp);
	bool seen;
	if (fd < 0)
		return 1;
	if (child_generate(fd, 2, "a-sess", 4) != DUALPATH__V1__FINISH_REASON__FINISH_LENGTH)
		return 2;
	if (child_list(fd, "a-sess", &seen) != 1 || !seen)
		return 3;
	return 0;
}

static int user_b_is_kept_out(const struct daemon_proc *dp)
{
	int fd = hello_connect(dp);
	bool seen = true;
	if (fd < 0)
		return 1;
	if (child_list(fd, "a-sess", &seen) != 0 || seen)
		return 2; /* listed */
	if (child_generate(fd, 3, "a-sess", 2) != -DUALPATH__V1__CODE__NOT_FOUND)
		return 3; /* continued */
	if (close_session(fd, 4, "a-sess", false) != -DUALPATH__V1__CODE__NOT_FOUND)
		return 4; /* deleted */
	/* its own sessions work */
	if (child_generate(fd, 5, "b-sess", 2) != DUALPATH__V1__FINISH_REASON__FINISH_LENGTH)
		return 5;
	if (close_session(fd, 6, "b-sess", false) != 0)
		return 6;
	return 0;
}

static int user_a_continues(const struct daemon_proc *dp)
{
	int fd = hello_connect(dp);
	if (fd < 0)
		return 1;
	return child_generate(fd, 7, "a-sess", 3) == DUALPATH__V1__FINISH_REASON__FINISH_LENGTH ? 0 : 2;
}

Test(hostile, sessions_belong_to_the_uid_that_created_them)
{
	/* Any socket user could list, continue or delete another uid's
	 * session. Now they belong to their creator (SO_PEERCRED); others get
	 * NOT_FOUND, the admin group sees and may act on all, and ownership
	 * survives a restart. */
	if (geteuid() != 0)
		cr_skip_test("needs root to act as two unprivileged users");
	daemon_start(&d, NULL);
	chmod(d.dir, 0755);
	chmod(d.sock, 0666);
	int st = as_user(60001, user_a_creates);
	cr_assert_eq(st, 0, "user A creates and sees its session (step %d failed)", st);
	cr_expect_eq(as_user(60002, user_b_is_kept_out), 0,
		     "user B cannot list, continue or close A's session (step %d failed)",
		     as_user(60002, user_b_is_kept_out));
	cr_expect_eq(as_user(60001, user_a_continues), 0, "user A continues its session");

	/* ownership is journaled: the same after a restart */
	cr_assert_eq(daemon_stop(&d), 0);
	char dir[sizeof(d.dir)];
	snprintf(dir, sizeof(dir), "%s", d.dir);
	daemon_start_in(&d, dir, NULL);
	chmod(d.sock, 0666);
	cr_expect_eq(as_user(60002, user_b_is_kept_out), 0, "after a restart too");
	cr_expect_eq(as_user(60001, user_a_continues), 0);

	/* root (admin) sees it with its owner, and may close it */
	int fd = client_connect(&d);
	Dualpath__V1__Response *r = simple(fd, 2, DUALPATH__V1__REQUEST__BODY_LIST_SESSIONS);
	cr_assert_not_null(r);
	bool found = false;
	for (size_t i = 0; i < r->sessions->n_sessions; i++)
		if (!strcmp(r->sessions->sessions[i]->session_id, "a-sess")) {
			found = true;
			cr_expect_eq(r->sessions->sessions[i]->owner_uid, 60001);
		}
	cr_expect(found, "the admin lists every user's sessions");
	dp_proto_response_free(r);
	cr_expect_eq(close_session(fd, 3, "a-sess", false), 0, "the admin may close it");
	close(fd);
}
