/* SPDX-License-Identifier: MIT */
/*
 * tools/dp-inspect on the published-format fixture: it names every dtype the release uses, the
 * layer schedule with each layer's expert format, the MTP block, and the bytes on disk and
 * resident; a damaged checkpoint is exit status 1 with the loader's message.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

static int run(const char *args, char *out, size_t len)
{
	const char *tool = getenv("DP_INSPECT_TOOL");
	char cmd[2048];
	size_t got = 0, n;

	cr_assert_not_null(tool, "DP_INSPECT_TOOL is not set");
	snprintf(cmd, sizeof(cmd), "%s %s 2>&1", tool, args);
	FILE *p = popen(cmd, "r");
	cr_assert_not_null(p);
	while (got + 1 < len && (n = fread(out + got, 1, len - 1 - got, p)) > 0)
		got += n;
	out[got] = '\0';
	int st = pclose(p);
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

Test(inspect, published_fixture_layout_is_printed)
{
	static char out[16384];
	char args[1024];

	snprintf(args, sizeof(args), "%s/instruct", getenv("DP_TEST_PUBLISHED"));
	cr_assert_eq(run(args, out, sizeof(out)), 0, "%s", out);
	const char *want[] = {"219 tensors in 2 files", "F8_E4M3", "F8_E8M0", "I8", "I64", "BF16",
	                      "routed experts", "scales", "0  sliding", "hash MoE  experts fp4",
	                      "1  CSA      m=4", "2  HCA      m=128", "MTP: present",
	                      "bytes on disk:", "bytes resident after a cpu load:"};
	for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++)
		cr_expect(strstr(out, want[i]), "output lacks \"%s\":\n%s", want[i], out);
	snprintf(args, sizeof(args), "--no-load %s/base", getenv("DP_TEST_PUBLISHED"));
	cr_assert_eq(run(args, out, sizeof(out)), 0, "%s", out);
	cr_expect(strstr(out, "top-k MoE experts fp8"), "%s", out);
	cr_expect(!strstr(out, "resident"), "--no-load skips the load: %s", out);
}

Test(inspect, missing_checkpoint_is_exit_status_1_with_the_reason)
{
	static char out[4096];

	cr_expect_eq(run("/nonexistent/model", out, sizeof(out)), 1);
	cr_expect(strstr(out, "/nonexistent/model"), "%s", out);
	cr_expect_eq(run("", out, sizeof(out)), 2, "usage");
}
