/* SPDX-License-Identifier: MIT */
/*
 * The renderer's checks on requests, Python's JSON forms, and the plain
 * format.
 */
#include <errno.h>
#include <string.h>

#include <criterion/criterion.h>

#include "chat/chat.h"

static int render(enum dp_chat_format f, const char *json, struct dp_chat_prompt *p,
                  struct dp_chat_error *err)
{
	return dp_chat_render_text(f, json, strlen(json), p, err);
}

static void refused(const char *json, int rc, const char *param)
{
	struct dp_chat_prompt p = {0};
	struct dp_chat_error err;
	cr_expect_eq(render(DP_CHAT_FORMAT_V4, json, &p, &err), rc, "%s", json);
	cr_expect_str_eq(err.param, param, "%s: %s", json, err.message);
	cr_expect_gt(strlen(err.message), 0);
	cr_expect_null(p.text);
}

Test(chat_render, bad_requests_are_refused_naming_the_field)
{
	refused("[]", -EINVAL, "");
	refused("{\"messages\": [}", -EINVAL, "");
	refused("{}", -EINVAL, "messages");
	refused("{\"messages\": []}", -EINVAL, "messages");
	refused("{\"messages\": [1]}", -EINVAL, "messages[0]");
	refused("{\"messages\": [{\"content\": \"x\"}]}", -EINVAL, "messages[0].role");
	refused("{\"messages\": [{\"role\": \"wizard\", \"content\": \"x\"}]}", -EINVAL,
	        "messages[0].role");
	refused("{\"messages\": [{\"role\": \"user\", \"content\": 5}]}", -EINVAL,
	        "messages[0].content");
	refused("{\"messages\": [{\"role\": \"user\", \"content\": [{\"type\": \"image_url\"}]}]}",
	        -ENOTSUP, "messages[0].content[0]");
	refused("{\"messages\": [{\"role\": \"user\", \"content\": [{\"type\": \"text\"}]}]}",
	        -EINVAL, "messages[0].content[0]");
	refused("{\"messages\": [{\"role\": \"developer\", \"content\": \"\"}]}", -EINVAL,
	        "messages[0].content");
	refused("{\"messages\": [{\"role\": \"user\", \"content\": \"q\"}, {\"role\": \"tool\", "
	        "\"tool_call_id\": \"c1\", \"content\": \"r\"}]}",
	        -EINVAL, "messages[1].tool_call_id");
	refused(
	    "{\"messages\": [{\"role\": \"user\", \"content\": \"q\"}, {\"role\": \"assistant\", "
	    "\"tool_calls\": [{\"id\": \"c1\", \"function\": {\"name\": \"f\", \"arguments\": "
	    "\"{}\"}}]}, {\"role\": \"tool\", \"tool_call_id\": \"c2\", \"content\": \"r\"}]}",
	    -EINVAL, "messages[2].tool_call_id");
	refused(
	    "{\"messages\": [{\"role\": \"user\", \"content\": \"q\"}, {\"role\": \"assistant\", "
	    "\"tool_calls\": [{\"id\": \"c1\", \"function\": {\"name\": \"f\", \"arguments\": "
	    "\"{}\"}}]}, {\"role\": \"tool\", \"tool_call_id\": \"c1\"}]}",
	    -EINVAL, "messages[2].content");
	refused("{\"messages\": [{\"role\": \"assistant\", \"tool_calls\": [{\"function\": "
	        "{\"name\": \"f\", \"arguments\": {}}}]}]}",
	        -EINVAL, "messages[0].tool_calls[0].function.arguments");
	refused("{\"messages\": [{\"role\": \"assistant\", \"tool_calls\": [{\"function\": "
	        "{\"arguments\": \"{}\"}}]}]}",
	        -EINVAL, "messages[0].tool_calls[0].function.name");
	refused("{\"messages\": [{\"role\": \"assistant\", \"tool_calls\": [{\"function\": "
	        "{\"name\": \"f\", \"arguments\": \"[1, 2]\"}}]}]}",
	        -EINVAL, "messages[0].tool_calls[0].function.arguments");
	refused("{\"messages\": [{\"role\": \"assistant\", \"reasoning_content\": 3}]}", -EINVAL,
	        "messages[0].reasoning_content");
	refused("{\"messages\": [{\"role\": \"user\", \"content\": \"q\"}], \"tools\": {}}",
	        -EINVAL, "tools");
	refused("{\"messages\": [{\"role\": \"user\", \"content\": \"q\"}], \"tools\": [{\"type\": "
	        "\"function\", \"function\": {}}]}",
	        -EINVAL, "tools[0]");
	refused(
	    "{\"messages\": [{\"role\": \"user\", \"content\": \"q\"}], \"response_format\": 1}",
	    -EINVAL, "response_format");
	refused("{\"messages\": [{\"role\": \"user\", \"content\": \"q\"}], \"reasoning_effort\": "
	        "\"extreme\"}",
	        -EINVAL, "reasoning_effort");
	refused(
	    "{\"messages\": [{\"role\": \"user\", \"content\": \"q\"}], \"thinking\": {\"type\": "
	    "\"maybe\"}}",
	    -EINVAL, "thinking.type");
	refused(
	    "{\"messages\": [{\"role\": \"user\", \"content\": \"q\"}], \"chat_template_kwargs\": "
	    "{\"thinking\": \"yes\"}}",
	    -EINVAL, "chat_template_kwargs.thinking");
	refused("{\"messages\": [{\"role\": \"user\", \"content\": \"q\"}], "
	        "\"chat_template_kwargs\": 1}",
	        -EINVAL, "chat_template_kwargs");
}

/* Numbers Python reads and jansson cannot hold (integers past 64 bits, NaN,
 * Infinity) render exactly (tests/chat's parity set); what is still beyond
 * jansson is refused rather than rendered differently: lone surrogates, and
 * text that holds the stand-ins' marker where stand-ins are needed. */
Test(chat_render, arguments_beyond_what_jansson_holds_are_refused_not_altered)
{
	const char *fmt =
	    "{\"messages\": [{\"role\": \"assistant\", \"tool_calls\": [{\"function\": "
	    "{\"name\": \"f\", \"arguments\": \"{\\\"a\\\": %s}\"}}]}]}";
	const char *vals[] = {"\\\"\\\\ud800\\\"", "[18446744073709551616, \\\"\\\\ud800\\\"]",
	                      "[\\\"dp-number:1\\\", NaN]"};
	for (size_t i = 0; i < sizeof(vals) / sizeof(vals[0]); i++) {
		char json[512];
		snprintf(json, sizeof(json), fmt, vals[i]);
		refused(json, -ENOTSUP, "messages[0].tool_calls[0].function.arguments");
	}
}

Test(chat_render, int64_extremes_render_exactly)
{
	const char *json = "{\"messages\": [{\"role\": \"user\", \"content\": \"q\"}, {\"role\": "
	                   "\"assistant\", \"tool_calls\": [{\"function\": {\"name\": \"f\", "
	                   "\"arguments\": \"{\\\"a\\\": 9223372036854775807, \\\"b\\\": "
	                   "-9223372036854775808}\"}}]}]}";
	struct dp_chat_prompt p;
	cr_assert_eq(render(DP_CHAT_FORMAT_V4, json, &p, NULL), 0);
	cr_expect(strstr(p.text, "string=\"false\">9223372036854775807<"));
	cr_expect(strstr(p.text, "string=\"false\">-9223372036854775808<"));
	dp_chat_prompt_fini(&p);
}

Test(chat_render, plain_format_renders_role_turns_and_ends_with_the_assistant)
{
	const char *json =
	    "{\"messages\": [{\"role\": \"system\", \"content\": \"Be brief.\"}, {\"role\": "
	    "\"user\", \"content\": \"Hi\"}, {\"role\": \"assistant\", \"content\": \"Hello\", "
	    "\"reasoning_content\": \"hidden\", \"tool_calls\": [{\"id\": \"c1\", \"function\": "
	    "{\"name\": \"f\", \"arguments\": \"{}\"}}]}, {\"role\": \"tool\", \"tool_call_id\": "
	    "\"c1\", \"content\": \"42\"}]}";
	struct dp_chat_prompt p;
	cr_assert_eq(render(DP_CHAT_FORMAT_PLAIN, json, &p, NULL), 0);
	cr_expect_str_eq(p.text,
	                 "System: Be brief.\n\nUser: Hi\n\nAssistant: Hello\n[call f {}]\n\n"
	                 "Tool (c1): 42\n\nAssistant:");
	cr_expect_eq(p.mode, DP_CHAT_MODE_CHAT);
	dp_chat_prompt_fini(&p);
}

Test(chat_render, model_type_selects_the_format)
{
	cr_expect_eq(dp_chat_format_for_model_type("deepseek_v4"), DP_CHAT_FORMAT_V4);
	cr_expect_eq(dp_chat_format_for_model_type("dualpath_tiny"), DP_CHAT_FORMAT_PLAIN);
	cr_expect_eq(dp_chat_format_for_model_type(NULL), DP_CHAT_FORMAT_PLAIN);
}

Test(chat_render, controls_report_mode_and_effort)
{
	struct dp_chat_prompt p;
	cr_assert_eq(render(DP_CHAT_FORMAT_V4,
	                    "{\"messages\": [{\"role\": \"user\", \"content\": \"q\"}], "
	                    "\"reasoning_effort\": \"max\"}",
	                    &p, NULL),
	             0);
	cr_expect_eq(p.mode, DP_CHAT_MODE_THINKING);
	cr_expect_eq(p.effort, DP_CHAT_EFFORT_MAXIMUM);
	cr_expect(!p.has_tools);
	dp_chat_prompt_fini(&p);
	cr_assert_eq(render(DP_CHAT_FORMAT_V4,
	                    "{\"messages\": [{\"role\": \"user\", \"content\": \"q\"}], "
	                    "\"thinking\": {\"type\": \"disabled\"}}",
	                    &p, NULL),
	             0);
	cr_expect_eq(p.mode, DP_CHAT_MODE_CHAT);
	cr_expect_eq(p.len, strlen(p.text));
	cr_expect(strstr(p.text, "<｜Assistant｜></think>"));
	dp_chat_prompt_fini(&p);
}

/* Matching results to calls by scanning was quadratic in their number (and
 * the ordering cubic); a body of thousands of calls must not stall the
 * front. */
Test(chat_render, thousands_of_tool_results_are_ordered_without_quadratic_work)
{
	enum { N = 5000 };
	json_t *calls = json_array(), *msgs = json_array();
	json_array_append_new(msgs, json_pack("{s:s, s:s}", "role", "user", "content", "go"));
	for (int i = 0; i < N; i++) {
		char id[16];
		snprintf(id, sizeof(id), "c%d", i);
		json_array_append_new(calls, json_pack("{s:s, s:{s:s, s:s}}", "id", id, "function",
		                                       "name", "f", "arguments", "{}"));
	}
	json_array_append_new(msgs,
	                      json_pack("{s:s, s:o}", "role", "assistant", "tool_calls", calls));
	for (int i = N - 1; i >= 0; i--) {
		char id[16], r[16];
		snprintf(id, sizeof(id), "c%d", i);
		snprintf(r, sizeof(r), "r%d", i);
		json_array_append_new(msgs, json_pack("{s:s, s:s, s:s}", "role", "tool",
		                                      "tool_call_id", id, "content", r));
	}
	json_t *req = json_pack("{s:o}", "messages", msgs);
	struct dp_chat_prompt p;
	struct dp_chat_error err;
	cr_assert_eq(dp_chat_render(DP_CHAT_FORMAT_V4, req, &p, &err), 0, "%s: %s", err.param,
	             err.message);
	const char *first = strstr(p.text, "<tool_result>");
	cr_assert(first);
	cr_expect_eq(strncmp(first, "<tool_result>r0</tool_result>\n\n<tool_result>r1<", 46), 0);
	dp_chat_prompt_fini(&p);
	json_decref(req);
}
