/* SPDX-License-Identifier: MIT */
/*
 * v4ctl against a real dualpathd: each test starts its own daemon on a
 * temporary socket and state directory (tests/v4ctl/harness.h), runs the
 * built v4ctl and checks its exit status and output.
 */
#include <jansson.h>
#include <math.h>
#include <regex.h>

#include "harness.h"

static struct daemon d;

static void start(void)
{
	daemon_start(&d);
}

static void stop(void)
{
	daemon_stop(&d);
}

/* v4ctl: a daemon per test; v4ctl_cli: no daemon; v4ctl_special: the
 * test brings a daemon of its own. */
TestSuite(v4ctl, .init = start, .fini = stop, .timeout = 120);
TestSuite(v4ctl_cli, .timeout = 60);
TestSuite(v4ctl_special, .timeout = 120);

static json_t *parse_json(const char *text)
{
	json_error_t e;
	json_t *j = json_loads(text, 0, &e);
	cr_assert(j, "not JSON (line %d: %s):\n%s", e.line, e.text, text);
	return j;
}

/* ---- health, usage, connection errors --------------------------------------- */

Test(v4ctl, health_exits_0_when_serving)
{
	struct run r;
	V4CTL(&r, &d, "health");
	cr_assert_eq(r.status, 0, "exit %d, stderr: %s", r.status, r.err);
	cr_assert(!strncmp(r.out, "SERVING:", 8), "health printed: %s", r.out);
	cr_assert(strchr(r.out, '\n') == r.out + strlen(r.out) - 1, "health is one line: %s",
	          r.out);
	run_free(&r);
}

Test(v4ctl, health_json_is_one_object)
{
	struct run r;
	V4CTL(&r, &d, "health", "--json");
	cr_assert_eq(r.status, 0, "stderr: %s", r.err);
	json_t *j = parse_json(r.out);
	cr_assert_str_eq(json_string_value(json_object_get(j, "status")), "SERVING");
	cr_assert(json_is_integer(json_object_get(j, "uptime_ms")));
	json_decref(j);
	run_free(&r);
}

Test(v4ctl_cli, unknown_subcommand_exits_2)
{
	struct run r;
	run_v4ctl_opts(&r, NULL, (const char *const[]){"frobnicate", NULL});
	cr_assert_eq(r.status, 2, "exit %d", r.status);
	cr_assert(strstr(r.err, "unknown command 'frobnicate'"), "stderr: %s", r.err);
	cr_assert(strstr(r.err, "--help"), "points at --help: %s", r.err);
	run_free(&r);
}

Test(v4ctl, bad_option_value_exits_2)
{
	struct run r;
	V4CTL(&r, &d, "generate", "--max-tokens", "lots", "hello");
	cr_assert_eq(r.status, 2, "exit %d", r.status);
	cr_assert(strstr(r.err, "--max-tokens"), "names the option: %s", r.err);
	run_free(&r);
}

Test(v4ctl_cli, chat_and_generate_take_the_same_sampling_options)
{
	/* one parser for both: a bad value is named the same way, before any
	 * connection (the socket does not exist) */
	static const char *const cmds[] = {"generate", "chat"};
	for (size_t i = 0; i < 2; i++) {
		struct run r;
		run_v4ctl_opts(&r, NULL, (const char *const[]){cmds[i], "--socket", "/nonexistent/x",
		                                             "--top-p", "1.5", "hi", NULL});
		cr_assert_eq(r.status, 2, "%s: exit %d", cmds[i], r.status);
		cr_assert(strstr(r.err, "--top-p: '1.5' is not a number in [0, 1]"), "%s: %s", cmds[i],
		          r.err);
		run_free(&r);
	}
}

Test(v4ctl_cli, unreachable_socket_exits_3)
{
	struct run r;
	run_v4ctl_opts(
	    &r, NULL,
	    (const char *const[]){"--socket", "/nonexistent/dualpath/sock", "health", NULL});
	cr_assert_eq(r.status, 3, "exit %d, stderr: %s", r.status, r.err);
	cr_assert(strstr(r.err, "/nonexistent/dualpath/sock"), "names the socket: %s", r.err);
	cr_assert(strstr(r.err, "is dualpathd running?"), "hints: %s", r.err);
	run_free(&r);
}

Test(v4ctl_cli, socket_comes_from_environment)
{
	struct run r;
	setenv("DUALPATH_SOCKET", "/nonexistent/from-env/sock", 1);
	run_v4ctl_opts(&r, NULL, (const char *const[]){"health", NULL});
	cr_assert_eq(r.status, 3);
	cr_assert(strstr(r.err, "/nonexistent/from-env/sock"), "stderr: %s", r.err);
	run_free(&r);
}

Test(v4ctl_cli, help_documents_exit_codes)
{
	struct run r;
	run_v4ctl_opts(&r, NULL, (const char *const[]){"--help", NULL});
	cr_assert_eq(r.status, 0);
	for (const char *want = "0\0"
	                        "1\0"
	                        "2\0"
	                        "3\0"
	                        "4\0";
	     *want; want += strlen(want) + 1) {
		char line[16];
		snprintf(line, sizeof(line), "\n  %s ", want);
		cr_assert(strstr(r.out, line), "--help lacks exit code %s:\n%s", want, r.out);
	}
	run_free(&r);
}

/* ---- generate --------------------------------------------------------------- */

Test(v4ctl, generate_prints_text)
{
	struct run r;
	V4CTL(&r, &d, "generate", "--max-tokens", "8", "--verbose", "Hello", "world");
	cr_assert_eq(r.status, 0, "exit %d, stderr: %s", r.status, r.err);
	cr_assert(strlen(r.out) > 0, "no text on stdout; stderr: %s", r.err);
	/* the usage line: 11 bytes of text + BOS is not counted as prompt */
	cr_assert(strstr(r.err, "prompt 11 tokens"), "usage line: %s", r.err);
	cr_assert(strstr(r.err, "TTFT"), "usage line: %s", r.err);
	run_free(&r);
}

Test(v4ctl, generate_reads_prompt_from_stdin)
{
	struct run r;
	run_v4ctl_opts(&r, &(struct run_opts){.in = "from stdin"},
	               (const char *const[]){"--socket", d.sock, "generate", "--max-tokens", "4",
	                                     "-v", "-", NULL});
	cr_assert_eq(r.status, 0, "stderr: %s", r.err);
	cr_assert(strstr(r.err, "prompt 10 tokens"), "stdin was the prompt: %s", r.err);
	run_free(&r);
}

Test(v4ctl, generate_ids_prints_token_ids)
{
	struct run r;
	V4CTL(&r, &d, "generate", "--ids", "--max-tokens", "5", "--tokens", "72,105");
	cr_assert_eq(r.status, 0, "stderr: %s", r.err);
	/* up to 5 ids (EOS may end it sooner), space separated, one line */
	int n = 0;
	char *save, *copy = strdup(r.out);
	for (char *t = strtok_r(copy, " \n", &save); t; t = strtok_r(NULL, " \n", &save), n++) {
		char *end;
		long v = strtol(t, &end, 10);
		cr_assert(!*end && v >= 0 && v < 300, "not a token id: '%s' in '%s'", t, r.out);
	}
	cr_assert(n >= 1 && n <= 5, "%d ids: %s", n, r.out);
	free(copy);
	run_free(&r);
}

/* dp-generate takes -n for the tokens to generate; v4ctl took only --max-tokens */
Test(v4ctl, generate_n_is_short_for_max_tokens)
{
	struct run a, b;
	V4CTL(&a, &d, "generate", "--ids", "-n", "6", "--tokens", "72,105");
	V4CTL(&b, &d, "generate", "--ids", "--max-tokens", "6", "--tokens", "72,105");
	cr_assert_eq(a.status, 0, "exit %d, stderr: %s", a.status, a.err);
	cr_assert_eq(b.status, 0, "stderr: %s", b.err);
	cr_assert_str_eq(a.out, b.out, "-n 6 and --max-tokens 6 generate the same");
	int n = 0;
	for (const char *p = a.out; *p; p++)
		n += *p == ' ' || *p == '\n';
	cr_assert(n >= 1 && n <= 6, "%d ids: %s", n, a.out);
	run_free(&a);
	run_free(&b);
	V4CTL(&a, &d, "generate", "-n", "lots", "hello");
	cr_assert_eq(a.status, 2, "exit %d", a.status);
	cr_assert(strstr(a.err, "-n"), "names the option: %s", a.err);
	run_free(&a);
	run_v4ctl_opts(&a, NULL, (const char *const[]){"generate", "--help", NULL});
	cr_assert_eq(a.status, 0);
	cr_assert(strstr(a.out, "--max-tokens N, -n N"), "help shows -n: %s", a.out);
	run_free(&a);
}

Test(v4ctl, generate_same_seed_same_text)
{
	struct run a, b;
	V4CTL(&a, &d, "generate", "--ids", "--max-tokens", "12", "--temperature", "0.8", "--top-k",
	      "40", "--top-p", "0.9", "--seed", "7", "abc");
	V4CTL(&b, &d, "generate", "--ids", "--max-tokens", "12", "--temperature", "0.8", "--top-k",
	      "40", "--top-p", "0.9", "--seed", "7", "abc");
	cr_assert_eq(a.status, 0, "stderr: %s", a.err);
	cr_assert_str_eq(a.out, b.out);
	run_free(&a);
	run_free(&b);
}

Test(v4ctl, generate_rejected_token_exits_1_with_code)
{
	struct run r;
	V4CTL(&r, &d, "generate", "--tokens", "1,99999");
	cr_assert_eq(r.status, 1, "exit %d, stderr: %s", r.status, r.err);
	cr_assert(!strncmp(r.err, "v4ctl: INVALID_ARGUMENT: ", 25), "stderr: %s", r.err);
	run_free(&r);
}

/* ---- stats ---------------------------------------------------------------- */

#define NAME  "[a-zA-Z_:][a-zA-Z0-9_:]*"
#define LABEL "[a-zA-Z_][a-zA-Z0-9_]*=\"([^\"\\\\\n]|\\\\[\\\\\"n])*\""

Test(v4ctl, stats_prometheus_parses)
{
	struct run r;
	V4CTL(&r, &d, "generate", "--max-tokens", "3", "hi");
	run_free(&r);
	V4CTL(&r, &d, "stats", "--prometheus");
	cr_assert_eq(r.status, 0, "stderr: %s", r.err);

	regex_t sample, help, type;
	cr_assert(regcomp(&sample, "^(" NAME ")(\\{" LABEL "(," LABEL ")*\\})? ([^ ]+)$",
	                  REG_EXTENDED) == 0);
	cr_assert(regcomp(&help, "^# HELP (" NAME ") .*$", REG_EXTENDED) == 0);
	cr_assert(regcomp(&type, "^# TYPE (" NAME ") (counter|gauge|untyped|summary|histogram)$",
	                  REG_EXTENDED) == 0);

	char typed[128][128]; /* names seen in # TYPE, to catch a name typed twice */
	int n_typed = 0, n_samples = 0;
	char current[128] = "";
	char *save, *copy = strdup(r.out);
	for (char *line = strtok_r(copy, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		regmatch_t m[8];
		if (line[0] == '#') {
			if (!strncmp(line, "# HELP ", 7)) {
				cr_assert(regexec(&help, line, 0, NULL, 0) == 0,
				          "bad HELP line: %s", line);
			} else {
				cr_assert(regexec(&type, line, 2, m, 0) == 0,
				          "bad comment line: %s", line);
				snprintf(current, sizeof(current), "%.*s",
				         (int)(m[1].rm_eo - m[1].rm_so), line + m[1].rm_so);
				for (int i = 0; i < n_typed; i++)
					cr_assert_str_neq(typed[i], current,
					                  "%s has two TYPE lines", current);
				cr_assert(n_typed < 128);
				snprintf(typed[n_typed++], sizeof(typed[0]), "%s", current);
			}
			continue;
		}
		cr_assert(regexec(&sample, line, 8, m, 0) == 0, "not 'name{labels} value': %s",
		          line);
		char name[128], *end;
		snprintf(name, sizeof(name), "%.*s", (int)(m[1].rm_eo - m[1].rm_so),
		         line + m[1].rm_so);
		cr_assert_str_eq(name, current, "sample %s is not under its own TYPE line", line);
		const char *value = strrchr(line, ' ') + 1;
		double v = strtod(value, &end);
		cr_assert(!*end || !strcmp(value, "NaN") || !strcmp(value, "+Inf") ||
		              !strcmp(value, "-Inf"),
		          "bad value in %s", line);
		(void)v;
		n_samples++;
	}
	cr_assert_gt(n_samples, 10);
	cr_assert(strstr(r.out, "dualpath_tokens_total{phase=\"prefill\"} "), "%s", r.out);
	free(copy);
	regfree(&sample);
	regfree(&help);
	regfree(&type);
	run_free(&r);
}

Test(v4ctl, stats_json_and_table)
{
	struct run r;
	V4CTL(&r, &d, "stats", "--json");
	cr_assert_eq(r.status, 0, "stderr: %s", r.err);
	json_t *j = parse_json(r.out);
	json_t *metrics = json_object_get(j, "metrics");
	cr_assert(json_is_array(metrics) && json_array_size(metrics) > 10);
	json_t *first = json_array_get(metrics, 0);
	cr_assert(json_is_string(json_object_get(first, "name")));
	cr_assert(json_is_number(json_object_get(first, "value")));
	cr_assert(json_is_object(json_object_get(first, "labels")));
	json_decref(j);
	run_free(&r);

	V4CTL(&r, &d, "stats");
	cr_assert_eq(r.status, 0);
	cr_assert(!strncmp(r.out, "METRIC ", 7), "table header: %s", r.out);
	cr_assert(strstr(r.out, "dualpath_uptime_seconds "), "%s", r.out);
	run_free(&r);

	V4CTL(&r, &d, "stats", "--json", "--prometheus");
	cr_assert_eq(r.status, 2);
	run_free(&r);
}

/* ---- sessions -------------------------------------------------------------- */

static json_t *find_session(json_t *list, const char *id)
{
	size_t i;
	json_t *s;
	json_array_foreach(
	    json_object_get(list, "sessions"), i,
	    s) if (!strcmp(json_string_value(json_object_get(s, "id")), id)) return s;
	return NULL;
}

Test(v4ctl, sessions_json_lists_a_generated_session)
{
	struct run r;
	V4CTL(&r, &d, "generate", "--session", "chat-1", "--max-tokens", "4", "hello");
	cr_assert_eq(r.status, 0, "stderr: %s", r.err);
	run_free(&r);
	V4CTL(&r, &d, "sessions", "--json");
	cr_assert_eq(r.status, 0, "stderr: %s", r.err);
	json_t *j = parse_json(r.out);
	json_t *s = find_session(j, "chat-1");
	cr_assert(s, "chat-1 not listed: %s", r.out);
	/* BOS + 5 prompt bytes + up to 4 generated */
	json_int_t tokens = json_integer_value(json_object_get(s, "tokens"));
	cr_assert(tokens >= 7 && tokens <= 10, "tokens %lld", (long long)tokens);
	cr_assert(json_is_string(json_object_get(s, "tier")));
	cr_assert(json_is_false(json_object_get(s, "busy")));
	json_decref(j);
	run_free(&r);

	V4CTL(&r, &d, "sessions");
	cr_assert_eq(r.status, 0);
	cr_assert(strstr(r.out, "chat-1"), "%s", r.out);
	run_free(&r);
}

Test(v4ctl, close_persists_and_drop_deletes)
{
	struct run r;
	V4CTL(&r, &d, "generate", "--session", "s2", "--max-tokens", "2", "x");
	run_free(&r);
	V4CTL(&r, &d, "close", "s2");
	cr_assert_eq(r.status, 0, "stderr: %s", r.err);
	run_free(&r);
	V4CTL(&r, &d, "sessions", "--json");
	json_t *j = parse_json(r.out);
	json_t *s = find_session(j, "s2");
	cr_assert(s, "a persisted session stays listed: %s", r.out);
	cr_assert_str_eq(json_string_value(json_object_get(s, "tier")), "nvme");
	json_decref(j);
	run_free(&r);

	V4CTL(&r, &d, "close", "s2", "--drop");
	cr_assert_eq(r.status, 0, "stderr: %s", r.err);
	run_free(&r);
	V4CTL(&r, &d, "sessions", "--json");
	j = parse_json(r.out);
	cr_assert_null(find_session(j, "s2"), "dropped yet listed: %s", r.out);
	json_decref(j);
	run_free(&r);
}

Test(v4ctl, evict_unknown_session_exits_1_not_found)
{
	struct run r;
	V4CTL(&r, &d, "evict", "no-such-session");
	cr_assert_eq(r.status, 1, "exit %d, stderr: %s", r.status, r.err);
	cr_assert(!strncmp(r.err, "v4ctl: NOT_FOUND: ", 18), "stderr: %s", r.err);
	run_free(&r);
}

/* ---- admin -------------------------------------------------------------------- */

Test(v4ctl, trace_writes_chrome_trace_json)
{
	struct run r;
	V4CTL(&r, &d, "generate", "--max-tokens", "6", "trace me");
	run_free(&r);
	char out[400];
	snprintf(out, sizeof(out), "%s/trace.json", d.dir);
	V4CTL(&r, &d, "trace", "--out", out);
	cr_assert_eq(r.status, 0, "exit %d, stderr: %s", r.status, r.err);
	run_free(&r);

	char *text = slurp(out);
	json_t *j = parse_json(text);
	json_t *evs = json_object_get(j, "traceEvents");
	cr_assert(json_is_array(evs), "no traceEvents: %s", text);
	size_t i;
	json_t *e;
	int steps = 0, thread_names = 0;
	json_array_foreach(evs, i, e)
	{
		const char *ph = json_string_value(json_object_get(e, "ph"));
		cr_assert(ph, "event without ph");
		cr_assert_eq(json_integer_value(json_object_get(e, "pid")), 1);
		if (!strcmp(ph, "M")) {
			if (!strcmp(json_string_value(json_object_get(e, "name")), "thread_name"))
				thread_names++;
			continue;
		}
		cr_assert_str_eq(ph, "X");
		cr_assert(json_is_integer(json_object_get(e, "ts")) &&
		          json_is_integer(json_object_get(e, "dur")));
		json_int_t tid = json_integer_value(json_object_get(e, "tid"));
		cr_assert(tid == 1 || tid == 2);
		if (!strcmp(json_string_value(json_object_get(e, "name")), "step")) {
			cr_assert_eq(tid, 1, "steps are on the compute lane");
			steps++;
		}
	}
	cr_assert_eq(thread_names, 2, "compute and io lanes are named");
	cr_assert_geq(steps, 6, "one step per generated token at least: %d", steps);
	json_decref(j);
	free(text);
}

Test(v4ctl, drain_refuses_generate_and_health_exits_5)
{
	struct run r;
	V4CTL(&r, &d, "drain", "--grace-ms", "1000");
	cr_assert_eq(r.status, 0, "stderr: %s", r.err);
	run_free(&r);
	V4CTL(&r, &d, "health");
	cr_assert_eq(r.status, 5, "exit %d: %s", r.status, r.out);
	cr_assert(!strncmp(r.out, "DRAINING", 8), "%s", r.out);
	run_free(&r);
	V4CTL(&r, &d, "generate", "--max-tokens", "2", "hi");
	cr_assert_eq(r.status, 1, "exit %d", r.status);
	cr_assert(strstr(r.err, "UNAVAILABLE"), "stderr: %s", r.err);
	run_free(&r);
}

Test(v4ctl, shutdown_stops_the_daemon)
{
	struct run r;
	V4CTL(&r, &d, "shutdown");
	cr_assert_eq(r.status, 0, "stderr: %s", r.err);
	run_free(&r);
	int st = 0;
	uint64_t deadline = dp_clock_ms() + 20000;
	while (waitpid(d.pid, &st, WNOHANG) != d.pid) {
		cr_assert(dp_clock_ms() < deadline, "dualpathd still runs 20 s after shutdown");
		usleep(10000);
	}
	d.pid = 0;
	cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "status %d", st);
}

/* Admin requests from a user outside the admin group: PERMISSION_DENIED and
 * a hint. Needs root to run v4ctl as nobody with the socket's group. */
static struct daemon dg;

static void start_group_socket(void)
{
	if (geteuid() != 0 || !getgrnam("users"))
		return;
	daemon_start_with(&dg, env_path("DP_TEST_MODEL"),
	                  (const char *const[]){"--socket-group", "users", "--admin-group",
	                                        "nogroup-admin-x", NULL});
}

static void stop_group_socket(void)
{
	daemon_stop(&dg);
}

Test(v4ctl_special, admin_request_without_rights_exits_1_permission_denied,
     .init = start_group_socket, .fini = stop_group_socket)
{
	if (geteuid() != 0)
		cr_skip_test("needs root to run v4ctl as another user");
	struct group *g = getgrnam("users");
	if (!g || !dg.pid)
		cr_skip_test("no group 'users' here");
	struct run r;
	struct run_opts o = {.drop_to_nobody = true, .group = g->gr_gid};
	run_v4ctl_opts(&r, &o, (const char *const[]){"--socket", dg.sock, "health", NULL});
	cr_assert_eq(r.status, 0, "a group member may use health: exit %d, %s", r.status, r.err);
	run_free(&r);
	run_v4ctl_opts(&r, &o, (const char *const[]){"--socket", dg.sock, "drain", NULL});
	cr_assert_eq(r.status, 1, "exit %d, stderr: %s", r.status, r.err);
	cr_assert(!strncmp(r.err, "v4ctl: PERMISSION_DENIED: ", 26), "stderr: %s", r.err);
	cr_assert(strstr(r.err, "sudo"), "hints at sudo: %s", r.err);
	run_free(&r);
	/* without the socket's group (nobody's own is nogroup) the socket
	 * itself is closed to us */
	o.group = 0;
	run_v4ctl_opts(&r, &o, (const char *const[]){"--socket", dg.sock, "health", NULL});
	cr_assert_eq(r.status, 3, "exit %d, stderr: %s", r.status, r.err);
	cr_assert(strstr(r.err, "Permission denied") && strstr(r.err, "usermod"), "stderr: %s",
	          r.err);
	run_free(&r);
}

/* ---- Ctrl-C --------------------------------------------------------------------- */

static struct daemon ds;

static void start_slow(void)
{
	const char *m = getenv("DP_TEST_SLOW_MODEL");
	struct stat st;
	if (!m || !m[0] || stat(m, &st) < 0)
		return;
	daemon_start_with(&ds, m, NULL);
}

static void stop_slow(void)
{
	daemon_stop(&ds);
}

Test(v4ctl_special, generate_sigint_cancels_and_exits_130, .init = start_slow, .fini = stop_slow)
{
	if (!ds.pid)
		cr_skip_test("DP_TEST_SLOW_MODEL (model/embedded) is not there");
	struct run r;
	struct run_opts o = {.signal_after_output = SIGINT, .min_out = 1};
	run_v4ctl_opts(&r, &o,
	               (const char *const[]){"--socket", ds.sock, "generate", "--ids", "-v",
	                                     "--max-tokens", "4000", "Once upon a time", NULL});
	cr_assert_eq(r.status, 130, "exit %d, stderr: %s", r.status, r.err);
	cr_assert(strstr(r.err, "cancelling"), "stderr: %s", r.err);
	cr_assert(strstr(r.err, "finish cancelled"), "the final chunk arrived: %s", r.err);
	run_free(&r);
}
