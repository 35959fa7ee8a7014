/* SPDX-License-Identifier: MIT */
/*
 * tests/v4ctl/harness.h — a real dualpathd per test, and v4ctl runs with
 * their exit status and output.
 *
 * Paths come from the environment (tests/v4ctl/meson.build sets them):
 *   DUALPATHD      the built daemon
 *   V4CTL          the built v4ctl
 *   DP_TEST_MODEL  a small model directory (tests/model/parity/alt)
 *   DP_TEST_SLOW_MODEL  a model slow enough to interrupt (model/embedded);
 *                  tests that need it skip without it
 */
#ifndef DP_TESTS_V4CTL_HARNESS_H
#define DP_TESTS_V4CTL_HARNESS_H

#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <grp.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "base/clock.h"

struct daemon {
	pid_t pid;
	char dir[256];
	char sock[300];
	char log[300];
};

static inline const char *env_path(const char *name)
{
	const char *v = getenv(name);
	cr_assert(v && v[0], "%s is not set (run the tests through meson test)", name);
	return v;
}

static inline char *slurp(const char *path)
{
	FILE *f = fopen(path, "r");
	if (!f)
		return strdup("");
	char *buf = NULL;
	size_t len = 0;
	FILE *m = open_memstream(&buf, &len);
	int ch;
	while ((ch = fgetc(f)) != EOF)
		fputc(ch, m);
	fclose(m);
	fclose(f);
	return buf;
}

static inline bool sock_accepts(const char *path)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	if (strlen(path) >= sizeof(sa.sun_path))
		return false;
	memcpy(sa.sun_path, path, strlen(path) + 1);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return false;
	bool ok = connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0;
	close(fd);
	return ok;
}

/*
 * Start dualpathd on a fresh temporary directory (socket, state) with the
 * given model and extra flags (NULL-terminated), and wait until its socket
 * accepts connections.
 */
static inline void daemon_start_with(struct daemon *d, const char *model, const char *const *extra)
{
	memset(d, 0, sizeof(*d));
	snprintf(d->dir, sizeof(d->dir), "%s/dp-v4ctl-test.XXXXXX",
	         getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
	cr_assert(mkdtemp(d->dir), "mkdtemp: %s", strerror(errno));
	chmod(d->dir, 0755); /* reachable for the tests that drop privileges */
	snprintf(d->sock, sizeof(d->sock), "%s/sock", d->dir);
	snprintf(d->log, sizeof(d->log), "%s/log", d->dir);
	char state[300];
	snprintf(state, sizeof(state), "%s/state", d->dir);

	const char *argv[64] = {
	    env_path("DUALPATHD"),
	    "--config",
	    "/dev/null",
	    "--socket",
	    d->sock,
	    "--state-dir",
	    state,
	    "--model",
	    model,
	    "--pin-threads",
	    "false",
	    "--threads",
	    "1",
	    "--log-level",
	    "info",
	};
	int n = 15;
	for (int i = 0; extra && extra[i] && n < 62; i++)
		argv[n++] = extra[i];
	argv[n] = NULL;

	pid_t self = getpid();
	d->pid = fork();
	cr_assert(d->pid >= 0);
	if (d->pid == 0) {
		/* die with the test: one that fails an assertion leaves before its
		 * cleanup, and a daemon left running holds the harness's output */
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (getppid() != self)
			_exit(127);
		int fd = open(d->log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
		if (fd >= 0) {
			dup2(fd, STDOUT_FILENO);
			dup2(fd, STDERR_FILENO);
		}
		execv(argv[0], (char *const *)argv);
		_exit(127);
	}
	uint64_t deadline = dp_clock_ms() + 30000;
	while (!sock_accepts(d->sock)) {
		int st;
		if (waitpid(d->pid, &st, WNOHANG) == d->pid) {
			d->pid = 0;
			cr_assert_fail("dualpathd exited before serving (status %d); its log:\n%s",
			               st, slurp(d->log));
		}
		cr_assert(dp_clock_ms() < deadline,
		          "dualpathd did not accept on %s within 30 s; log:\n%s", d->sock,
		          slurp(d->log));
		usleep(10000);
	}
}

static inline void daemon_start(struct daemon *d)
{
	daemon_start_with(d, env_path("DP_TEST_MODEL"), NULL);
}

static inline int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	remove(path);
	return 0;
}

/* SIGTERM (drain + persist), SIGKILL after 20 s; then remove the directory.
 * Returns the daemon's exit status (-1 if it had to be killed). */
static inline int daemon_stop(struct daemon *d)
{
	int status = -1;
	if (d->pid > 0) {
		kill(d->pid, SIGTERM);
		uint64_t deadline = dp_clock_ms() + 20000;
		for (;;) {
			int st;
			if (waitpid(d->pid, &st, WNOHANG) == d->pid) {
				status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
				break;
			}
			if (dp_clock_ms() > deadline) {
				kill(d->pid, SIGKILL);
				waitpid(d->pid, NULL, 0);
				break;
			}
			usleep(10000);
		}
		d->pid = 0;
	}
	if (d->dir[0])
		nftw(d->dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
	return status;
}

/* ---- running v4ctl ---------------------------------------------------------- */

struct run {
	int status; /* exit status; 128 + signal if killed */
	char *out, *err;
};

static inline void run_free(struct run *r)
{
	free(r->out);
	free(r->err);
}

/* How to run: stdin text (NULL: /dev/null), a credential drop, a signal to
 * send once stdout has min_out bytes. */
struct run_opts {
	const char *in;
	bool drop_to_nobody;
	gid_t group; /* with drop_to_nobody: the one supplementary group (0: none) */
	int signal_after_output;
	size_t min_out;
};

static inline void run_v4ctl_opts(struct run *r, const struct run_opts *o, const char *const *args)
{
	const char *argv[64] = {env_path("V4CTL")};
	int n = 1;
	for (int i = 0; args[i] && n < 63; i++)
		argv[n++] = args[i];
	argv[n] = NULL;

	int pin[2], pout[2], perr[2];
	cr_assert(pipe2(pin, O_CLOEXEC) == 0 && pipe2(pout, O_CLOEXEC) == 0 &&
	          pipe2(perr, O_CLOEXEC) == 0);
	pid_t pid = fork();
	cr_assert(pid >= 0);
	if (pid == 0) {
		dup2(pin[0], STDIN_FILENO);
		dup2(pout[1], STDOUT_FILENO);
		dup2(perr[1], STDERR_FILENO);
		/* a test runner may ignore SIGINT; v4ctl should see it */
		signal(SIGINT, SIG_DFL);
		if (o && o->drop_to_nobody) {
			gid_t g = o->group;
			if (setgroups(g ? 1 : 0, &g) < 0 || setgid(65534) < 0 || setuid(65534) < 0)
				_exit(126);
		}
		execv(argv[0], (char *const *)argv);
		_exit(127);
	}
	close(pin[0]);
	close(pout[1]);
	close(perr[1]);
	if (o && o->in)
		(void)!write(pin[1], o->in, strlen(o->in));
	close(pin[1]);

	char *bufs[2] = {NULL, NULL};
	size_t lens[2] = {0, 0};
	FILE *ms[2] = {open_memstream(&bufs[0], &lens[0]), open_memstream(&bufs[1], &lens[1])};
	struct pollfd p[2] = {{.fd = pout[0], .events = POLLIN}, {.fd = perr[0], .events = POLLIN}};
	int open_fds = 2;
	bool signalled = false;
	uint64_t deadline = dp_clock_ms() + 60000;
	while (open_fds > 0) {
		int k = poll(p, 2, 1000);
		cr_assert(dp_clock_ms() < deadline, "v4ctl %s ran for over 60 s", args[0]);
		if (k <= 0)
			continue;
		for (int i = 0; i < 2; i++) {
			if (p[i].fd < 0 || !(p[i].revents & (POLLIN | POLLHUP | POLLERR)))
				continue;
			char buf[4096];
			ssize_t got = read(p[i].fd, buf, sizeof(buf));
			if (got <= 0) {
				close(p[i].fd);
				p[i].fd = -1;
				open_fds--;
				continue;
			}
			fwrite(buf, 1, (size_t)got, ms[i]);
			fflush(ms[i]);
		}
		if (o && o->signal_after_output && !signalled && lens[0] >= o->min_out) {
			kill(pid, o->signal_after_output);
			signalled = true;
		}
	}
	fclose(ms[0]);
	fclose(ms[1]);
	int st;
	waitpid(pid, &st, 0);
	r->status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
	r->out = bufs[0];
	r->err = bufs[1];
}

/* v4ctl --socket SOCK ARGS... */
static inline void run_v4ctl(struct run *r, const struct daemon *d, const char *const *args)
{
	const char *argv[64] = {"--socket", d->sock};
	int n = 2;
	for (int i = 0; args[i] && n < 63; i++)
		argv[n++] = args[i];
	argv[n] = NULL;
	run_v4ctl_opts(r, NULL, argv);
}

#define V4CTL(r, d, ...) run_v4ctl((r), (d), (const char *const[]){__VA_ARGS__, NULL})

#endif /* DP_TESTS_V4CTL_HARNESS_H */
