/* SPDX-License-Identifier: MIT */
/*
 * The output parser's behaviour beyond the parity set: what it holds back,
 * what it flags, what it never leaks.
 */
#include <errno.h>
#include <string.h>

#include <criterion/criterion.h>

#include "chat/chat.h"
#include "chat-run.h"

#define EOS "<｜end▁of▁sentence｜>"

Test(chat_parse, a_chunk_ending_in_a_think_end_prefix_is_held_back)
{
	struct dp_chat_parser *p;
	struct dp_chat_delta d;
	cr_assert_eq(dp_chat_parser_new(DP_CHAT_FORMAT_V4, DP_CHAT_MODE_THINKING, NULL, &p), 0);
	cr_assert_eq(dp_chat_parser_feed(p, "abc</thi", 8, &d), 0);
	cr_expect_eq(d.reasoning_len, 3);
	cr_expect_eq(memcmp(d.reasoning, "abc", 3), 0);
	cr_assert_eq(dp_chat_parser_feed(p, "nk>Hi", 5, &d), 0);
	cr_expect_eq(d.reasoning_len, 0);
	cr_expect_eq(d.content_len, 2);
	cr_expect_eq(memcmp(d.content, "Hi", 2), 0);
	dp_chat_parser_free(p);
}

Test(chat_parse, a_chunk_ending_in_a_dsml_opener_prefix_is_held_back)
{
	struct dp_chat_parser *p;
	struct dp_chat_delta d;
	cr_assert_eq(dp_chat_parser_new(DP_CHAT_FORMAT_V4, DP_CHAT_MODE_CHAT, NULL, &p), 0);
	const char *a = "Sure.\n\n<｜DS";
	cr_assert_eq(dp_chat_parser_feed(p, a, strlen(a), &d), 0);
	cr_expect_eq(d.content_len, 5, "only \"Sure.\" is certain");
	/* Not an opener after all: the held text comes out as content. */
	cr_assert_eq(dp_chat_parser_feed(p, "X", 1, &d), 0);
	cr_expect_eq(d.content_len, strlen("\n\n<｜DSX"));
	dp_chat_parser_free(p);
}

Test(chat_parse, a_split_utf8_sequence_is_never_given_out_in_halves)
{
	const char *t = "é🚀";
	struct run_result r = run_bytes(DP_CHAT_FORMAT_V4, DP_CHAT_MODE_CHAT, t, strlen(t));
	cr_expect_str_eq(r.content, t);
	run_fini(&r);
	struct dp_chat_parser *p;
	struct dp_chat_delta d;
	cr_assert_eq(dp_chat_parser_new(DP_CHAT_FORMAT_V4, DP_CHAT_MODE_CHAT, NULL, &p), 0);
	cr_assert_eq(dp_chat_parser_feed(p, "a\xf0\x9f", 3, &d), 0);
	cr_expect_eq(d.content_len, 1);
	cr_assert_eq(dp_chat_parser_feed(p, "\x9a\x80", 2, &d), 0);
	cr_expect_eq(d.content_len, 4);
	dp_chat_parser_free(p);
}

Test(chat_parse, tool_calls_get_ids_from_the_prefix_in_order)
{
	const char *t =
	    "\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"a\">\n</｜DSML｜invoke>\n"
	    "<｜DSML｜invoke name=\"b\">\n<｜DSML｜parameter name=\"x\" string=\"false\">"
	    "[1, 2]</｜DSML｜parameter>\n</｜DSML｜invoke>\n</｜DSML｜tool_calls>" EOS;
	struct dp_chat_parser *p;
	struct dp_chat_delta d;
	cr_assert_eq(dp_chat_parser_new(DP_CHAT_FORMAT_V4, DP_CHAT_MODE_CHAT, "req7_", &p), 0);
	cr_assert_eq(dp_chat_parser_feed(p, t, strlen(t), &d), 0);
	cr_assert_eq(d.n_calls, 2);
	cr_expect_str_eq(d.calls[0].id, "req7_0");
	cr_expect_str_eq(d.calls[0].name, "a");
	cr_expect_str_eq(d.calls[0].arguments, "{}");
	cr_expect_str_eq(d.calls[1].id, "req7_1");
	cr_expect_str_eq(d.calls[1].arguments, "{\"x\": [1, 2]}");
	cr_expect(d.ended);
	cr_expect_eq(d.flags, 0);
	cr_expect_eq(d.content_len, 0);
	dp_chat_parser_free(p);
}

Test(chat_parse, a_non_json_value_marked_not_string_becomes_a_string_and_is_flagged)
{
	const char *t =
	    "\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"sh\">\n<｜DSML｜parameter "
	    "name=\"cmd\" string=\"false\">ls -l | wc</｜DSML｜parameter>\n</｜DSML｜invoke>\n"
	    "</｜DSML｜tool_calls>" EOS;
	struct run_result r = run_whole(DP_CHAT_FORMAT_V4, DP_CHAT_MODE_CHAT, t, strlen(t));
	cr_expect_str_eq(r.calls, "call_0 sh {\"cmd\": \"ls -l | wc\"}\n");
	cr_expect_eq(r.flags, DP_CHAT_PARSE_BAD_VALUE);
	run_fini(&r);
}

Test(chat_parse, a_malformed_block_comes_out_as_content_with_the_flag)
{
	const char *t = "ok\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke>\n</｜DSML｜invoke>\n"
	                "</｜DSML｜tool_calls>" EOS;
	struct run_result r = run_bytes(DP_CHAT_FORMAT_V4, DP_CHAT_MODE_CHAT, t, strlen(t));
	cr_expect(r.flags & DP_CHAT_PARSE_MALFORMED);
	cr_expect_eq(r.calls_len, 0);
	/* all of it is content, up to the end of sentence */
	cr_expect_eq(r.content_len, strlen(t) - strlen(EOS));
	cr_expect_eq(memcmp(r.content, t, r.content_len), 0);
	run_fini(&r);
}

Test(chat_parse, an_unclosed_block_at_the_end_is_content_with_the_flag)
{
	const char *t = "\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"f\">\n";
	struct run_result r = run_whole(DP_CHAT_FORMAT_V4, DP_CHAT_MODE_CHAT, t, strlen(t));
	cr_expect(r.flags & DP_CHAT_PARSE_MALFORMED);
	cr_expect_str_eq(r.content, t);
	run_fini(&r);
}

Test(chat_parse, output_cut_off_inside_reasoning_is_flagged_unterminated)
{
	struct run_result r = run_whole(DP_CHAT_FORMAT_V4, DP_CHAT_MODE_THINKING, "hmm</th", 7);
	cr_expect_str_eq(r.reasoning, "hmm</th");
	cr_expect_eq(r.flags, DP_CHAT_PARSE_UNTERMINATED);
	run_fini(&r);
}

Test(chat_parse, plain_format_gives_everything_as_content)
{
	const char *t = "a</think>b<｜DSML｜tool_calls>";
	struct run_result r = run_bytes(DP_CHAT_FORMAT_PLAIN, DP_CHAT_MODE_THINKING, t, strlen(t));
	cr_expect_str_eq(r.content, t);
	cr_expect_eq(r.reasoning_len, 0);
	cr_expect_eq(r.flags, 0);
	run_fini(&r);
}

Test(chat_parse, calls_after_finish_and_bad_arguments_are_refused)
{
	struct dp_chat_parser *p;
	struct dp_chat_delta d;
	cr_expect_eq(dp_chat_parser_new(DP_CHAT_FORMAT_MAX, DP_CHAT_MODE_CHAT, NULL, &p), -EINVAL);
	cr_assert_eq(dp_chat_parser_new(DP_CHAT_FORMAT_V4, DP_CHAT_MODE_CHAT, NULL, &p), 0);
	cr_expect_eq(dp_chat_parser_feed(p, NULL, 1, &d), -EINVAL);
	cr_assert_eq(dp_chat_parser_finish(p, &d), 0);
	cr_expect_eq(dp_chat_parser_feed(p, "x", 1, &d), -EINVAL);
	dp_chat_parser_free(p);
	dp_chat_parser_free(NULL);
}

/* A space after the end of sentence that the feed cuts in two (U+2029 is
 * three bytes) is a space, as it is when the text comes whole: not stray
 * (fuzz_chat_parse found the flags differing). */
Test(chat_parse, a_space_cut_by_the_feed_after_the_end_is_not_stray)
{
	const char *t = "Let me think.\n\nOK.</think>The answer is 42." EOS "\xe2\x80\xa9";
	struct run_result whole = run_whole(DP_CHAT_FORMAT_V4, DP_CHAT_MODE_THINKING, t, strlen(t));
	struct run_result bytes = run_bytes(DP_CHAT_FORMAT_V4, DP_CHAT_MODE_THINKING, t, strlen(t));
	cr_expect_eq(whole.flags, 0);
	cr_expect_eq(bytes.flags, whole.flags);
	run_fini(&whole);
	run_fini(&bytes);
	/* and one that is cut and not a space is stray either way */
	const char *u = "OK.</think>Fine." EOS "\xe2\x82\xac";
	whole = run_whole(DP_CHAT_FORMAT_V4, DP_CHAT_MODE_THINKING, u, strlen(u));
	bytes = run_bytes(DP_CHAT_FORMAT_V4, DP_CHAT_MODE_THINKING, u, strlen(u));
	cr_expect_eq(whole.flags, DP_CHAT_PARSE_STRAY);
	cr_expect_eq(bytes.flags, whole.flags);
	run_fini(&whole);
	run_fini(&bytes);
}
