/* SPDX-License-Identifier: MIT */
/* Test helpers: start the real dualpathd, talk the real protocol to it. */
#ifndef DP_TESTS_DPCLIENT_H
#define DP_TESTS_DPCLIENT_H

#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "proto/frame.h"

struct daemon_proc {
	pid_t pid;
	char dir[96];
	char sock[104];
	char state[192];
	char log[192];
};

static inline const char *test_model(void)
{
	const char *m = getenv("DP_TEST_MODEL");
	return m ? m : "tests/model/parity/alt";
}

static inline int try_connect(const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%.104s", path);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		int e = -errno;
		close(fd);
		return e;
	}
	return fd;
}

/* In a forked child about to exec dualpathd: die with the test process.
 * A test that fails an assertion leaves its body before daemon_cleanup; a
 * daemon left running would hold the test's stdout and the harness would
 * wait on it until its timeout. parent: the test's pid, taken before fork. */
static inline void daemon_child_dies_with(pid_t parent)
{
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	if (getppid() != parent) /* the test died before the line above */
		_exit(127);
}

/* Start dualpathd with extra flags (NULL-terminated); waits until it serves. */
static inline void daemon_start_in(struct daemon_proc *d, const char *dir, const char *const *extra)
{
	const char *bin = getenv("DUALPATHD");
	cr_assert_not_null(bin, "DUALPATHD is not set");
	if (dir) {
		snprintf(d->dir, sizeof(d->dir), "%s", dir);
	} else {
		snprintf(d->dir, sizeof(d->dir), "/var/tmp/dp-test-d-XXXXXX");
		cr_assert_not_null(mkdtemp(d->dir));
	}
	snprintf(d->sock, sizeof(d->sock), "%.96s/sock", d->dir);
	snprintf(d->state, sizeof(d->state), "%s/state", d->dir);
	snprintf(d->log, sizeof(d->log), "%s/log", d->dir);
	pid_t self = getpid();
	d->pid = fork();
	cr_assert_geq(d->pid, 0);
	if (d->pid == 0) {
		daemon_child_dies_with(self);
		const char *argv[64] = { bin, "--config", "/dev/null", "--socket", d->sock, "--state-dir",
					 d->state, "--model", test_model(), "--log-file", d->log,
					 "--log-level", "debug", "--pin-threads", "false",
					 "--admin-group", "root", "--dram-bytes", "4M" };
		int n = 0;
		while (argv[n])
			n++;
		for (int i = 0; extra && extra[i] && n < 62; i++)
			argv[n++] = extra[i];
		argv[n] = NULL;
		execv(bin, (char *const *)argv);
		_exit(127);
	}
	for (int i = 0; i < 3000; i++) {
		int fd = try_connect(d->sock);
		if (fd >= 0) {
			close(fd);
			return;
		}
		int st;
		if (waitpid(d->pid, &st, WNOHANG) == d->pid) {
			char cmd[300];
			snprintf(cmd, sizeof(cmd), "cat %s >&2", d->log);
			(void)!system(cmd);
			cr_assert_fail("dualpathd exited during start-up (status %d)", st);
		}
		usleep(10000);
	}
	cr_assert_fail("dualpathd did not start serving on %s", d->sock);
}

static inline void daemon_start(struct daemon_proc *d, const char *const *extra)
{
	daemon_start_in(d, NULL, extra);
}

/* SIGTERM and wait; returns the exit status (or -signal). */
static inline int daemon_stop(struct daemon_proc *d)
{
	int st = 0;
	if (d->pid <= 0)
		return 0;
	kill(d->pid, SIGTERM);
	for (int i = 0; i < 6000; i++) {
		if (waitpid(d->pid, &st, WNOHANG) == d->pid) {
			d->pid = 0;
			return WIFEXITED(st) ? WEXITSTATUS(st) : -WTERMSIG(st);
		}
		usleep(10000);
	}
	kill(d->pid, SIGKILL);
	waitpid(d->pid, &st, 0);
	d->pid = 0;
	return -1000;
}

static inline void daemon_cleanup(struct daemon_proc *d)
{
	char cmd[256];
	if (getenv("DP_TEST_KEEP")) {
		fprintf(stderr, "kept %s\n", d->dir);
		return;
	}
	if (d->pid > 0) {
		kill(d->pid, SIGKILL);
		waitpid(d->pid, NULL, 0);
		d->pid = 0;
	}
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", d->dir);
	(void)!system(cmd);
}

/* Run dualpathd on model with its socket, state (dir/state) and log in dir
 * (which exists), plus extra flags, expecting it to refuse to start: a
 * non-zero exit, not 127 (exec failed). Returns its log and stderr in log. */
static inline void daemon_start_refused(const char *dir, const char *model, const char *const *extra,
					char *log, size_t len)
{
	char sock[128], state[128], logf[128], errf[128];
	snprintf(sock, sizeof(sock), "%s/sock", dir);
	snprintf(state, sizeof(state), "%s/state", dir);
	snprintf(logf, sizeof(logf), "%s/log", dir);
	snprintf(errf, sizeof(errf), "%s/stderr", dir);
	pid_t self = getpid();
	pid_t pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0) {
		daemon_child_dies_with(self);
		const char *argv[32] = { getenv("DUALPATHD"), "--config", "/dev/null", "--socket", sock,
					 "--state-dir", state, "--model", model, "--log-file",
					 logf, "--pin-threads", "false" };
		int n = 13;
		for (int i = 0; extra && extra[i] && n < 30; i++)
			argv[n++] = extra[i];
		argv[n] = NULL;
		int efd = open(errf, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
		if (efd >= 0)
			dup2(efd, 2); /* errors before the log file opens (the config's) */
		execv(argv[0], (char *const *)argv);
		_exit(127);
	}
	int st;
	cr_assert_eq(waitpid(pid, &st, 0), pid);
	cr_expect(WIFEXITED(st) && WEXITSTATUS(st) != 0 && WEXITSTATUS(st) != 127,
		  "dualpathd refused to start (status %d)", st);
	size_t n = 0;
	const char *files[] = { logf, errf };
	for (int i = 0; i < 2; i++) {
		FILE *f = fopen(files[i], "r");
		if (f) {
			n += fread(log + n, 1, len - 1 - n, f);
			fclose(f);
		}
	}
	log[n] = 0;
}

/* ---- a client ---------------------------------------------------------------- */

static inline int send_req(int fd, Dualpath__V1__Request *r)
{
	return dp_frame_write_fd(fd, &r->base, DP_FRAME_MAX_DEFAULT, 5000);
}

/* Read one response (NULL on EOF/timeout/error). */
static inline Dualpath__V1__Response *recv_resp(int fd, int timeout_ms)
{
	struct dp_frame_buf b = { 0 };
	Dualpath__V1__Response *resp = NULL;
	int n = dp_frame_read_fd(fd, &b, DP_FRAME_MAX_DEFAULT, timeout_ms);
	if (n > 0 && dp_proto_response_decode(b.data, b.len, 0, &resp) < 0)
		resp = NULL;
	dp_frame_buf_fini(&b);
	return resp;
}

/* A connection that said Hello, made without Criterion's asserts (for
 * forked children, and checks that must not abort the test); -1 on failure. */
static inline int hello_connect(const struct daemon_proc *d)
{
	int fd = try_connect(d->sock);
	if (fd < 0)
		return -1;
	Dualpath__V1__Hello h = DUALPATH__V1__HELLO__INIT;
	Dualpath__V1__Request r = DUALPATH__V1__REQUEST__INIT;
	h.protocol_version = 1;
	h.client_name = "criterion";
	r.request_id = 1;
	r.body_case = DUALPATH__V1__REQUEST__BODY_HELLO;
	r.hello = &h;
	Dualpath__V1__Response *resp = send_req(fd, &r) == 0 ? recv_resp(fd, 10000) : NULL;
	bool ok = resp && resp->body_case == DUALPATH__V1__RESPONSE__BODY_HELLO;
	dp_proto_response_free(resp);
	if (!ok) {
		close(fd);
		return -1;
	}
	return fd;
}

static inline int client_connect(const struct daemon_proc *d)
{
	int fd = hello_connect(d);
	cr_assert_geq(fd, 0, "connect and Hello to %s failed", d->sock);
	return fd;
}

/* Send a Generate of token ids. */
static inline void send_generate(int fd, uint64_t id, const char *session, const uint32_t *ids,
				 size_t n, uint32_t max_new, float temperature, uint64_t seed)
{
	Dualpath__V1__Generate g = DUALPATH__V1__GENERATE__INIT;
	Dualpath__V1__TokenIds t = DUALPATH__V1__TOKEN_IDS__INIT;
	Dualpath__V1__Sampling s = DUALPATH__V1__SAMPLING__INIT;
	Dualpath__V1__Request r = DUALPATH__V1__REQUEST__INIT;
	t.n_ids = n;
	t.ids = (uint32_t *)ids;
	s.temperature = temperature;
	s.seed = seed;
	s.ignore_eos = true; /* random test models emit EOS anywhere */
	g.session_id = (char *)(session ? session : "");
	g.prompt_case = DUALPATH__V1__GENERATE__PROMPT_TOKENS;
	g.tokens = &t;
	g.max_new_tokens = max_new;
	g.sampling = &s;
	r.request_id = id;
	r.body_case = DUALPATH__V1__REQUEST__BODY_GENERATE;
	r.generate = &g;
	cr_assert_eq(send_req(fd, &r), 0);
}

/* Collect a Generate's tokens until its final chunk. Returns the finish
 * reason, or -code for an Error, or -1000 for a lost connection. */
static inline int collect(int fd, uint64_t id, uint32_t *out, size_t cap, size_t *ret_n)
{
	size_t n = 0;
	int result = -1000;
	for (;;) {
		Dualpath__V1__Response *r = recv_resp(fd, 60000);
		if (!r)
			break;
		if (r->request_id != id) {
			dp_proto_response_free(r);
			continue;
		}
		if (r->body_case == DUALPATH__V1__RESPONSE__BODY_ERROR) {
			/* an Error ends its request */
			result = -(int)r->error->code;
			dp_proto_response_free(r);
			break;
		}
		if (r->body_case == DUALPATH__V1__RESPONSE__BODY_TOKEN_CHUNK) {
			for (size_t i = 0; i < r->token_chunk->n_ids && n < cap; i++)
				out[n++] = r->token_chunk->ids[i];
			int fin = r->token_chunk->finish;
			dp_proto_response_free(r);
			if (fin) {
				if (result == -1000)
					result = fin;
				break;
			}
			continue;
		}
		dp_proto_response_free(r);
	}
	if (ret_n)
		*ret_n = n;
	return result;
}

/* A simple request with an empty body kind; returns the response. */
static inline Dualpath__V1__Response *simple(int fd, uint64_t id, Dualpath__V1__Request__BodyCase kind)
{
	Dualpath__V1__Request r = DUALPATH__V1__REQUEST__INIT;
	Dualpath__V1__StatsRequest st = DUALPATH__V1__STATS_REQUEST__INIT;
	Dualpath__V1__HealthRequest he = DUALPATH__V1__HEALTH_REQUEST__INIT;
	Dualpath__V1__ListSessionsRequest ls = DUALPATH__V1__LIST_SESSIONS_REQUEST__INIT;
	Dualpath__V1__Shutdown sh = DUALPATH__V1__SHUTDOWN__INIT;
	Dualpath__V1__Drain dr = DUALPATH__V1__DRAIN__INIT;
	r.request_id = id;
	r.body_case = kind;
	switch (kind) {
	case DUALPATH__V1__REQUEST__BODY_STATS: r.stats = &st; break;
	case DUALPATH__V1__REQUEST__BODY_HEALTH: r.health = &he; break;
	case DUALPATH__V1__REQUEST__BODY_LIST_SESSIONS: r.list_sessions = &ls; break;
	case DUALPATH__V1__REQUEST__BODY_SHUTDOWN: r.shutdown = &sh; break;
	case DUALPATH__V1__REQUEST__BODY_DRAIN: r.drain = &dr; break;
	default: break;
	}
	cr_assert_eq(send_req(fd, &r), 0);
	for (;;) {
		Dualpath__V1__Response *resp = recv_resp(fd, 30000);
		if (!resp || resp->request_id == id)
			return resp;
		dp_proto_response_free(resp);
	}
}

/* The next response to request id, the others dropped (NULL: none in 60 s). */
static inline Dualpath__V1__Response *reply_to(int fd, uint64_t id)
{
	for (;;) {
		Dualpath__V1__Response *r = recv_resp(fd, 60000);
		if (!r || r->request_id == id)
			return r;
		dp_proto_response_free(r);
	}
}

/* EvictSession for session; its answer is the caller's to read. */
static inline void send_evict(int fd, uint64_t id, const char *session)
{
	Dualpath__V1__EvictSession e = DUALPATH__V1__EVICT_SESSION__INIT;
	Dualpath__V1__Request req = DUALPATH__V1__REQUEST__INIT;
	e.session_id = (char *)session;
	req.request_id = id;
	req.body_case = DUALPATH__V1__REQUEST__BODY_EVICT_SESSION;
	req.evict_session = &e;
	cr_assert_eq(send_req(fd, &req), 0);
}

/* EvictSession for session, answered by an Ack. */
static inline void evict_session(int fd, uint64_t id, const char *session)
{
	send_evict(fd, id, session);
	Dualpath__V1__Response *r = reply_to(fd, id);
	cr_assert_not_null(r, "no answer to evicting %s", session);
	cr_assert_eq(r->body_case, DUALPATH__V1__RESPONSE__BODY_ACK, "evict %s", session);
	dp_proto_response_free(r);
}

/* The daemon's trace (a Trace response; the caller frees it). */
static inline Dualpath__V1__Response *trace_of(int fd, uint64_t id)
{
	Dualpath__V1__TraceRequest tq = DUALPATH__V1__TRACE_REQUEST__INIT;
	Dualpath__V1__Request req = DUALPATH__V1__REQUEST__INIT;
	req.request_id = id;
	req.body_case = DUALPATH__V1__REQUEST__BODY_TRACE;
	req.trace = &tq;
	cr_assert_eq(send_req(fd, &req), 0);
	Dualpath__V1__Response *r = reply_to(fd, id);
	cr_assert_not_null(r);
	cr_assert_eq(r->body_case, DUALPATH__V1__RESPONSE__BODY_TRACE);
	return r;
}

/* A metric's value from a Stats reply (-1: absent). */
static inline double metric(int fd, uint64_t id, const char *name)
{
	Dualpath__V1__Response *r = simple(fd, id, DUALPATH__V1__REQUEST__BODY_STATS);
	cr_assert_not_null(r, "no Stats reply");
	cr_assert_eq(r->body_case, DUALPATH__V1__RESPONSE__BODY_STATS);
	double v = -1;
	for (size_t i = 0; i < r->stats->n_metrics; i++)
		if (strcmp(r->stats->metrics[i]->name, name) == 0)
			v = r->stats->metrics[i]->value;
	dp_proto_response_free(r);
	return v;
}

/* CloseSession without asserts: 0 for an Ack, -code for an Error, -1000
 * for a lost connection. */
static inline int close_session(int fd, uint64_t id, const char *session, bool persist)
{
	Dualpath__V1__CloseSession cs = DUALPATH__V1__CLOSE_SESSION__INIT;
	Dualpath__V1__Request r = DUALPATH__V1__REQUEST__INIT;
	cs.session_id = (char *)session;
	cs.persist = persist;
	r.request_id = id;
	r.body_case = DUALPATH__V1__REQUEST__BODY_CLOSE_SESSION;
	r.close_session = &cs;
	if (send_req(fd, &r) < 0)
		return -1000;
	Dualpath__V1__Response *resp = recv_resp(fd, 30000);
	int res = !resp ? -1000
		  : resp->body_case == DUALPATH__V1__RESPONSE__BODY_ACK ? 0
		  : resp->body_case == DUALPATH__V1__RESPONSE__BODY_ERROR ? -(int)resp->error->code
									    : -1001;
	dp_proto_response_free(resp);
	return res;
}

/* Two greedy turns of session `sess` (the prompt split at `split`, 10
 * tokens each) must give turn 2 the tokens of a one-off request holding the
 * same context as one prompt: a session's state equals its history. */
static inline void expect_turns_equal_one_prompt(int fd, const char *sess, const uint32_t *prompt,
						 size_t np, size_t split)
{
	uint32_t t1[64], t2[64], whole[64], all[128];
	size_t n1, n2, nw, na = 0;
	cr_assert(split < np && np + 10 <= 128);
	send_generate(fd, 10, sess, prompt, split, 10, 0, 0);
	cr_assert_eq(collect(fd, 10, t1, 64, &n1), DUALPATH__V1__FINISH_REASON__FINISH_LENGTH);
	send_generate(fd, 11, sess, prompt + split, np - split, 10, 0, 0);
	cr_assert_eq(collect(fd, 11, t2, 64, &n2), DUALPATH__V1__FINISH_REASON__FINISH_LENGTH);
	for (size_t i = 0; i < split; i++)
		all[na++] = prompt[i];
	for (size_t i = 0; i < n1; i++)
		all[na++] = t1[i];
	for (size_t i = split; i < np; i++)
		all[na++] = prompt[i];
	send_generate(fd, 12, NULL, all, na, 10, 0, 0);
	cr_assert_eq(collect(fd, 12, whole, 64, &nw), DUALPATH__V1__FINISH_REASON__FINISH_LENGTH);
	cr_assert_eq(nw, n2);
	cr_expect_arr_eq(t2, whole, n2 * sizeof(uint32_t), "turn 2 differs from the one-prompt run");
}

#endif
