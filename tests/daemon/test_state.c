/* SPDX-License-Identifier: MIT */
/*
 * Integration tests of the daemon's state directory: the real dualpathd
 * refusing a state directory it cannot trust, and coming back from a
 * damaged journal or slot file with every session it can recover.
 */
#include <fcntl.h>
#include <sys/stat.h>

#include "dpclient.h"

static struct daemon_proc d;

static void fini(void)
{
	daemon_cleanup(&d);
}

TestSuite(state, .fini = fini, .timeout = 300);

/* Run dualpathd on the state directory dir/state (made beforehand by the
 * caller) expecting it to refuse to start; returns what it logged. */
static void start_refused(const char *dir, char *log, size_t len)
{
	char sock[128], state[128], logf[128], errf[128];
	snprintf(sock, sizeof(sock), "%s/sock", dir);
	snprintf(state, sizeof(state), "%s/state", dir);
	snprintf(logf, sizeof(logf), "%s/log", dir);
	snprintf(errf, sizeof(errf), "%s/stderr", dir);
	pid_t pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0) {
		const char *argv[] = { getenv("DUALPATHD"), "--config", "/dev/null", "--socket", sock,
				       "--state-dir", state, "--model", test_model(), "--log-file", logf,
				       "--pin-threads", "false", NULL };
		int efd = open(errf, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
		if (efd >= 0)
			dup2(efd, 2);
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

Test(state, a_state_directory_writable_by_others_stops_the_daemon_with_a_clear_error)
{
	snprintf(d.dir, sizeof(d.dir), "/var/tmp/dp-test-s-XXXXXX");
	cr_assert_not_null(mkdtemp(d.dir));
	char state[160], log[8192];
	snprintf(state, sizeof(state), "%s/state", d.dir);
	cr_assert_eq(mkdir(state, 0700), 0);
	cr_assert_eq(chmod(state, 0777), 0);
	start_refused(d.dir, log, sizeof(log));
	cr_expect(strstr(log, state) && strstr(log, "mode 0777"),
		  "the error names the directory and its mode: %s", log);
	char journal[200];
	snprintf(journal, sizeof(journal), "%s/journal", state);
	cr_expect_neq(access(journal, F_OK), 0, "nothing was written there");
}
