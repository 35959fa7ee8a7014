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
	expect_turns_equal_one_prompt(fd, "mt", prompt, NP, 6);
	close(fd);
	cr_expect_eq(daemon_stop(&d), 0, "SIGTERM: drained and exited 0");
}
