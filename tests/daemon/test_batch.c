/* SPDX-License-Identifier: MIT */
/* dp_batch_form: which requests feed how many tokens in one step. */
#include <criterion/criterion.h>

#include "daemon/batch.h"

static struct dp_batch_limits lim(uint32_t tokens, uint32_t chunk, uint32_t seqs)
{
	return (struct dp_batch_limits){ .max_batch_tokens = tokens, .prefill_chunk = chunk,
					 .max_seqs = seqs };
}

Test(batch, a_long_prompt_feeds_prefill_chunk_tokens_a_step)
{
	struct dp_batch_cand c[] = { { .at = 0, .len = 1000 } };
	struct dp_batch_limits l = lim(2048, 512, 8);
	struct dp_batch_pick p[8];
	cr_assert_eq(dp_batch_form(c, 1, &l, p), 1);
	cr_expect_eq(p[0].cand, 0);
	cr_expect_eq(p[0].feed, 512);
	c[0].at = 512;
	cr_assert_eq(dp_batch_form(c, 1, &l, p), 1);
	cr_expect_eq(p[0].feed, 488, "the rest of the prompt");
}

Test(batch, the_step_never_exceeds_max_batch_tokens)
{
	/* decode, prompt of 100, decode, prompt of 300, decode, in that order:
	 * 1 + 100 + 1, the second prompt's chunk cut to the 98 left, and the
	 * last decode waits for the next step */
	struct dp_batch_cand c[] = {
		{ .at = 10, .len = 11 }, { .at = 0, .len = 100 }, { .at = 5, .len = 6 },
		{ .at = 0, .len = 300 }, { .at = 7, .len = 8 },
	};
	struct dp_batch_limits l = lim(200, 128, 8);
	struct dp_batch_pick p[8];
	uint32_t k = dp_batch_form(c, 5, &l, p);
	uint32_t total = 0;
	for (uint32_t i = 0; i < k; i++)
		total += p[i].feed;
	cr_expect_eq(total, 200);
	cr_assert_eq(k, 4);
	cr_expect_eq(p[1].feed, 100);
	cr_expect_eq(p[3].cand, 3);
	cr_expect_eq(p[3].feed, 98, "the second prompt gets what is left");
	/* a budget of 101: 1 + 100 fill the step */
	l = lim(101, 128, 8);
	k = dp_batch_form(c, 5, &l, p);
	cr_assert_eq(k, 2);
	cr_expect_eq(p[0].cand, 0);
	cr_expect_eq(p[1].cand, 1);
}

Test(batch, at_most_max_seqs_requests_take_part)
{
	struct dp_batch_cand c[6];
	for (int i = 0; i < 6; i++)
		c[i] = (struct dp_batch_cand){ .at = 3, .len = 4 };
	struct dp_batch_limits l = lim(2048, 512, 4);
	struct dp_batch_pick p[4];
	cr_expect_eq(dp_batch_form(c, 6, &l, p), 4);
}

Test(batch, requests_with_nothing_to_feed_are_left_out)
{
	struct dp_batch_cand c[] = { { .at = 4, .len = 4 }, { .at = 0, .len = 2 } };
	struct dp_batch_limits l = lim(16, 16, 4);
	struct dp_batch_pick p[4];
	cr_assert_eq(dp_batch_form(c, 2, &l, p), 1);
	cr_expect_eq(p[0].cand, 1);
	cr_expect_eq(p[0].feed, 2);
}

Test(batch, loading_sessions_go_last_and_wait_only_when_others_run)
{
	struct dp_batch_cand c[] = {
		{ .at = 0, .len = 8, .loading = true, .io_ready = true },
		{ .at = 3, .len = 4 },
		{ .at = 0, .len = 8, .loading = true, .io_ready = false },
	};
	struct dp_batch_limits l = lim(64, 64, 8);
	struct dp_batch_pick p[8];
	uint32_t k = dp_batch_form(c, 3, &l, p);
	cr_assert_eq(k, 2, "the one whose reads would not finish in time sits this step out");
	cr_expect_eq(p[0].cand, 1, "the request with its state in place goes first");
	cr_expect_eq(p[1].cand, 0);
	/* alone, a loading session runs at once: an idle step gains nothing */
	k = dp_batch_form(c + 2, 1, &l, p);
	cr_assert_eq(k, 1);
	cr_expect_eq(p[0].feed, 8);
}

Test(batch, zero_limits_pick_nothing)
{
	struct dp_batch_cand c[] = { { .at = 0, .len = 8 } };
	struct dp_batch_pick p[1];
	struct dp_batch_limits l = lim(0, 16, 1);
	cr_expect_eq(dp_batch_form(c, 1, &l, p), 0);
	l = lim(16, 0, 1);
	cr_expect_eq(dp_batch_form(c, 1, &l, p), 0);
	l = lim(16, 16, 0);
	cr_expect_eq(dp_batch_form(c, 1, &l, p), 0);
	l = lim(16, 16, 1);
	cr_expect_eq(dp_batch_form(NULL, 1, &l, p), 0);
}
