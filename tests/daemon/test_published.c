/* SPDX-License-Identifier: MIT */
/*
 * The real dualpathd serving a checkpoint in the published DeepSeek-V4 format
 * (tests/model/published/instruct: FP8 attention, FP4 routed experts), its
 * weights kept as stored and its experts paged from the checkpoint's files
 * (--experts nvme) through a cache of num_experts_per_tok slots, so nearly
 * every step pages FP4 bytes in: a greedy multi-turn session must give the
 * tokens of one long prompt, as on the resident fp32 models of test_daemon.
 * --backend cpu: on a GPU machine auto would pick cuda, which refuses FP8/FP4
 * checkpoints (model/v4.h, dp_v4_load_opts.dequantize).
 */
#include "base/macros.h"
#include "dpclient.h"

static struct daemon_proc d;

static void fini(void)
{
	daemon_cleanup(&d);
}

TestSuite(published, .fini = fini, .timeout = 300);

static const uint32_t prompt[] = { 72, 101, 108, 108, 111, 44, 32, 119, 111, 114, 108, 100 };
#define NP DP_ARRAY_SIZE(prompt)

static const char *const paged[] = { "--backend", "cpu", "--experts", "nvme", "--expert-slots", "2",
				     NULL };

Test(published, a_multi_turn_session_on_nvme_paged_fp4_experts_matches_one_long_prompt)
{
	daemon_start(&d, paged);
	int fd = client_connect(&d);
	uint32_t t1[64], t2[64], whole[64];
	size_t n1, n2, nw;
	/* turn 1: prompt, 10 tokens; turn 2: more prompt, 10 tokens */
	send_generate(fd, 10, "mt", prompt, 6, 10, 0, 0);
	cr_assert_eq(collect(fd, 10, t1, 64, &n1), DUALPATH__V1__FINISH_REASON__FINISH_LENGTH);
	send_generate(fd, 11, "mt", prompt + 6, NP - 6, 10, 0, 0);
	cr_assert_eq(collect(fd, 11, t2, 64, &n2), DUALPATH__V1__FINISH_REASON__FINISH_LENGTH);
	/* the same context as one prompt in a one-off request */
	uint32_t all[128];
	size_t na = 0;
	for (size_t i = 0; i < 6; i++)
		all[na++] = prompt[i];
	for (size_t i = 0; i < n1; i++)
		all[na++] = t1[i];
	for (size_t i = 6; i < NP; i++)
		all[na++] = prompt[i];
	send_generate(fd, 12, NULL, all, na, 10, 0, 0);
	cr_assert_eq(collect(fd, 12, whole, 64, &nw), DUALPATH__V1__FINISH_REASON__FINISH_LENGTH);
	cr_assert_eq(nw, n2);
	cr_expect_arr_eq(t2, whole, n2 * sizeof(uint32_t), "turn 2 differs from the one-prompt run");
	close(fd);
	cr_expect_eq(daemon_stop(&d), 0, "SIGTERM: drained and exited 0");
}
