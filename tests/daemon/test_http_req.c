/* SPDX-License-Identifier: MIT */
/*
 * The HTTP front's pure parts (daemon/http-parse.h): request bodies
 * parsed and checked (each refusal a status and the field at fault), the
 * error envelope, SSE framing and the latency histograms' Prometheus text.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <string.h>

#include "daemon/http-front.h"
#include "daemon/http-parse.h"

static const struct dp_http_limits lim = {
	.max_body = 4096, .max_depth = 8, .max_tools = 2, .max_new_tokens = 100, .vocab = 300,
};

static int parse(enum dp_http_api api, const char *body, struct dp_http_request *r,
		 struct dp_http_error *e)
{
	return dp_http_request_parse(api, body, strlen(body), &lim, r, e);
}

/* the request is refused with status and param */
static void refused(enum dp_http_api api, const char *body, unsigned status, const char *param)
{
	struct dp_http_request r;
	struct dp_http_error e;
	cr_assert_eq(parse(api, body, &r, &e), -EINVAL, "accepted: %s", body);
	cr_expect_eq(e.status, status, "%s: status %u (%s)", body, e.status, e.message);
	cr_expect_str_eq(e.param, param, "%s: param '%s' (%s)", body, e.param, e.message);
	cr_expect_gt(strlen(e.message), 10);
	dp_http_request_fini(&r);
}

Test(http_req, completions_fields_are_read_with_their_defaults)
{
	struct dp_http_request r;
	struct dp_http_error e;
	cr_assert_eq(parse(DP_HTTP_COMPLETIONS, "{\"prompt\": \"hi\", \"stream\": true, "
			   "\"stream_options\": {\"include_usage\": true}, \"max_tokens\": 7, \"top_k\": 5, "
			   "\"seed\": 42, \"stop\": [\"a\", \"bc\"], \"stop_token_ids\": [1, 2]}", &r, &e), 0,
		     "%s", e.message);
	cr_expect(r.stream && r.include_usage);
	cr_expect_eq(r.max_tokens, 7);
	cr_expect_eq(r.sampling.top_k, 5);
	cr_expect_float_eq(r.sampling.temperature, 1.0f, 1e-6);
	cr_expect_float_eq(r.sampling.top_p, 1.0f, 1e-6);
	cr_expect(r.has_seed && r.sampling.seed == 42);
	cr_expect_eq(r.n_stop, 2);
	cr_expect_str_eq(r.stop[1], "bc");
	cr_expect_eq(r.n_stop_ids, 2);
	cr_expect_eq(r.stop_ids[1], 2);
	cr_expect_eq(r.prompt_len, 2);
	dp_http_request_fini(&r);
}

Test(http_req, max_completion_tokens_wins_over_max_tokens)
{
	struct dp_http_request r;
	struct dp_http_error e;
	cr_assert_eq(parse(DP_HTTP_COMPLETIONS, "{\"prompt\": \"x\", \"max_tokens\": 9, "
			   "\"max_completion_tokens\": 3}", &r, &e), 0);
	cr_expect_eq(r.max_tokens, 3);
	dp_http_request_fini(&r);
}

Test(http_req, a_token_prompt_is_checked_against_the_vocabulary)
{
	struct dp_http_request r;
	struct dp_http_error e;
	cr_assert_eq(parse(DP_HTTP_COMPLETIONS, "{\"prompt\": [1, 2, 299]}", &r, &e), 0);
	cr_expect_eq(r.n_ids, 3);
	cr_expect_eq(r.ids[2], 299);
	dp_http_request_fini(&r);
	refused(DP_HTTP_COMPLETIONS, "{\"prompt\": [1, 300]}", 400, "prompt");
}

Test(http_req, bad_input_is_refused_naming_the_field)
{
	refused(DP_HTTP_COMPLETIONS, "{\"prompt\": \"x\", \"temperature\": \"hot\"}", 400, "temperature");
	refused(DP_HTTP_COMPLETIONS, "{\"prompt\": \"x\", \"temperature\": 3}", 400, "temperature");
	refused(DP_HTTP_COMPLETIONS, "{\"prompt\": \"x\", \"top_p\": 0}", 400, "top_p");
	refused(DP_HTTP_COMPLETIONS, "{\"prompt\": \"x\", \"top_p\": 1e-300}", 400, "top_p");
	refused(DP_HTTP_COMPLETIONS, "{\"prompt\": \"x\", \"max_tokens\": 101}", 400, "max_tokens");
	refused(DP_HTTP_COMPLETIONS, "{\"prompt\": \"x\", \"max_tokens\": 0}", 400, "max_tokens");
	refused(DP_HTTP_COMPLETIONS, "{\"prompt\": \"x\", \"n\": 2}", 400, "n");
	refused(DP_HTTP_COMPLETIONS, "{\"prompt\": \"x\", \"logprobs\": 3}", 400, "logprobs");
	refused(DP_HTTP_COMPLETIONS, "{\"prompt\": \"x\", \"min_p\": 0.1}", 400, "min_p");
	refused(DP_HTTP_COMPLETIONS, "{\"prompt\": \"x\", \"stream\": 1}", 400, "stream");
	refused(DP_HTTP_COMPLETIONS, "{\"prompt\": \"x\", \"stop\": [\"\"]}", 400, "stop");
	refused(DP_HTTP_COMPLETIONS, "{\"prompt\": \"x\", \"stop\": [1]}", 400, "stop");
	refused(DP_HTTP_COMPLETIONS, "{\"prompt\": \"x\", \"session_id\": \"a/b\"}", 400, "session_id");
	refused(DP_HTTP_COMPLETIONS, "{\"prompt\": {}}", 400, "prompt");
	refused(DP_HTTP_COMPLETIONS, "{}", 400, "prompt");
	refused(DP_HTTP_DETOKENIZE, "{\"tokens\": \"abc\"}", 400, "tokens");
}

Test(http_req, bad_json_and_deep_nesting_and_big_bodies_are_refused)
{
	refused(DP_HTTP_COMPLETIONS, "{\"prompt\": ", 400, "");
	refused(DP_HTTP_COMPLETIONS, "[1]", 400, "");
	refused(DP_HTTP_COMPLETIONS, "{\"prompt\": \"x\", \"prompt\": \"y\"}", 400, "");
	refused(DP_HTTP_COMPLETIONS, "{\"a\":[[[[[[[[[[1]]]]]]]]]]}", 400, "");
	char big[5000];
	memset(big, ' ', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	big[0] = '{';
	big[sizeof(big) - 2] = '}';
	refused(DP_HTTP_COMPLETIONS, big, 413, "");
}

Test(http_req, json_depth_ignores_brackets_inside_strings)
{
	const char *s = "{\"a\": \"[[[[{{{{\\\"[[[[\", \"b\": [1]}";
	cr_expect_eq(dp_http_json_depth(s, strlen(s), 64), 2);
	cr_expect_eq(dp_http_json_depth("[[[[[", 5, 3), 4); /* stops past the cap */
}

Test(http_req, chat_messages_roles_and_content_are_checked)
{
	struct dp_http_request r;
	struct dp_http_error e;
	cr_assert_eq(parse(DP_HTTP_CHAT, "{\"messages\": [{\"role\": \"system\", \"content\": \"s\"}, "
			   "{\"role\": \"user\", \"content\": [{\"type\": \"text\", \"text\": \"hi\"}]}, "
			   "{\"role\": \"assistant\", \"content\": null, \"reasoning_content\": \"r\", "
			   "\"tool_calls\": [{\"id\": \"c1\", \"type\": \"function\", \"function\": "
			   "{\"name\": \"f\", \"arguments\": \"{}\"}}]}, {\"role\": \"tool\", "
			   "\"tool_call_id\": \"c1\", \"content\": \"42\"}]}", &r, &e), 0, "%s", e.message);
	cr_expect_eq(json_array_size(r.messages), 4);
	dp_http_request_fini(&r);
	refused(DP_HTTP_CHAT, "{\"messages\": []}", 400, "messages");
	refused(DP_HTTP_CHAT, "{\"messages\": [{\"role\": \"bob\", \"content\": \"x\"}]}", 400,
		"messages[0].role");
	refused(DP_HTTP_CHAT, "{\"messages\": [{\"role\": \"user\", \"content\": 5}]}", 400,
		"messages[0].content");
	refused(DP_HTTP_CHAT, "{\"messages\": [{\"role\": \"user\"}]}", 400, "messages[0].content");
	refused(DP_HTTP_CHAT, "{\"messages\": [{\"role\": \"user\", \"content\": [{\"type\": "
		"\"image_url\"}]}]}", 400, "messages[0].content");
	refused(DP_HTTP_CHAT, "{\"messages\": [{\"role\": \"user\", \"content\": \"x\", "
		"\"tool_calls\": []}]}", 400, "messages[0].tool_calls");
}

Test(http_req, tools_are_capped_and_tool_choice_must_name_one)
{
	const char *msgs = "\"messages\": [{\"role\": \"user\", \"content\": \"x\"}]";
	char body[1024];
	struct dp_http_request r;
	struct dp_http_error e;
	snprintf(body, sizeof(body), "{%s, \"tools\": [{\"type\": \"function\", \"function\": "
		 "{\"name\": \"f\", \"parameters\": {}}}], \"tool_choice\": {\"type\": \"function\", "
		 "\"function\": {\"name\": \"f\"}}}", msgs);
	cr_assert_eq(parse(DP_HTTP_CHAT, body, &r, &e), 0, "%s", e.message);
	cr_expect_not_null(r.tools);
	cr_expect_not_null(r.tool_choice);
	dp_http_request_fini(&r);
	snprintf(body, sizeof(body), "{%s, \"tools\": [{\"type\": \"function\", \"function\": "
		 "{\"name\": \"f\"}}], \"tool_choice\": {\"type\": \"function\", \"function\": "
		 "{\"name\": \"g\"}}}", msgs);
	refused(DP_HTTP_CHAT, body, 400, "tool_choice");
	snprintf(body, sizeof(body), "{%s, \"tools\": [{\"type\": \"function\", \"function\": {\"name\":"
		 " \"a\"}}, {\"type\": \"function\", \"function\": {\"name\": \"b\"}}, {\"type\": "
		 "\"function\", \"function\": {\"name\": \"c\"}}]}", msgs);
	refused(DP_HTTP_CHAT, body, 400, "tools");
	snprintf(body, sizeof(body), "{%s, \"tool_choice\": \"required\"}", msgs);
	refused(DP_HTTP_CHAT, body, 400, "tool_choice");
	snprintf(body, sizeof(body), "{%s, \"response_format\": {\"type\": \"json_schema\"}}", msgs);
	refused(DP_HTTP_CHAT, body, 400, "response_format");
}

Test(http_req, a_messages_api_request_becomes_the_chat_it_means)
{
	struct dp_http_request r;
	struct dp_http_error e;
	cr_assert_eq(parse(DP_HTTP_MESSAGES, "{\"max_tokens\": 9, \"system\": [{\"type\": \"text\", "
			   "\"text\": \"be \"}, {\"type\": \"text\", \"text\": \"kind\"}], \"stop_sequences\": "
			   "[\"END\"], \"messages\": [{\"role\": \"user\", \"content\": \"hi\"}, {\"role\": "
			   "\"assistant\", \"content\": [{\"type\": \"thinking\", \"thinking\": \"hm\"}, "
			   "{\"type\": \"tool_use\", \"id\": \"t1\", \"name\": \"f\", \"input\": {\"a\": 1}}]}, "
			   "{\"role\": \"user\", \"content\": [{\"type\": \"tool_result\", \"tool_use_id\": "
			   "\"t1\", \"content\": \"42\"}, {\"type\": \"text\", \"text\": \"and?\"}]}], "
			   "\"tools\": [{\"name\": \"f\", \"input_schema\": {\"type\": \"object\"}}], "
			   "\"tool_choice\": {\"type\": \"auto\"}}", &r, &e), 0, "%s", e.message);
	cr_expect_eq(r.max_tokens, 9);
	cr_expect_str_eq(r.stop[0], "END");
	json_t *m = r.messages;
	cr_assert_eq(json_array_size(m), 5); /* system, user, assistant, tool, user */
	cr_expect_str_eq(json_string_value(json_object_get(json_array_get(m, 0), "content")), "be kind");
	json_t *a = json_array_get(m, 2);
	cr_expect_str_eq(json_string_value(json_object_get(a, "reasoning_content")), "hm");
	json_t *fn = json_object_get(json_array_get(json_object_get(a, "tool_calls"), 0), "function");
	cr_expect_str_eq(json_string_value(json_object_get(fn, "arguments")), "{\"a\":1}");
	cr_expect_str_eq(json_string_value(json_object_get(json_array_get(m, 3), "role")), "tool");
	cr_expect_str_eq(json_string_value(json_object_get(json_array_get(m, 3), "tool_call_id")), "t1");
	cr_expect_str_eq(json_string_value(json_object_get(json_object_get(r.root, "thinking"), "type")),
			 "disabled", "the Messages API thinks only when asked");
	cr_expect_not_null(r.tools);
	dp_http_request_fini(&r);
	refused(DP_HTTP_MESSAGES, "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}]}", 400,
		"max_tokens");
	refused(DP_HTTP_MESSAGES, "{\"max_tokens\": 1, \"messages\": [{\"role\": \"user\", \"content\": "
		"[{\"type\": \"image\"}]}]}", 400, "messages[0].content");
	refused(DP_HTTP_MESSAGES, "{\"max_tokens\": 1, \"messages\": [{\"role\": \"user\", \"content\": "
		"\"x\"}], \"tool_choice\": {\"type\": \"maybe\"}}", 400, "tool_choice");
}

Test(http_sse, the_error_envelope_has_all_four_fields)
{
	struct dp_http_error e;
	dp_http_error_set(&e, 400, "invalid_request_error", NULL, "messages[0].role", "bad %s", "role");
	char *s = dp_http_error_json(&e);
	json_t *o = json_loads(s, 0, NULL);
	cr_assert_not_null(o);
	json_t *err = json_object_get(o, "error");
	cr_expect_str_eq(json_string_value(json_object_get(err, "message")), "bad role");
	cr_expect_str_eq(json_string_value(json_object_get(err, "type")), "invalid_request_error");
	cr_expect_str_eq(json_string_value(json_object_get(err, "param")), "messages[0].role");
	cr_expect(json_is_null(json_object_get(err, "code")));
	json_decref(o);
	free(s);
}

Test(http_sse, events_are_one_data_line_and_a_blank_line)
{
	struct dp_http_buf b = { 0 };
	json_t *o = json_pack("{s:s}", "text", "a\nb");
	cr_assert_eq(dp_http_sse_event(&b, o), 0);
	cr_assert_eq(dp_http_sse_ping(&b), 0);
	cr_assert_eq(dp_http_sse_done(&b), 0);
	cr_expect_str_eq(b.p, "data: {\"text\":\"a\\nb\"}\n\n: ping\n\ndata: [DONE]\n\n");
	b.off = 6;
	dp_http_buf_compact(&b);
	cr_expect_eq(strncmp(b.p, "{\"text\"", 7), 0);
	json_decref(o);
	dp_http_buf_fini(&b);
}

Test(http_sse, histograms_render_cumulative_buckets)
{
	struct dp_http_hist h = { 0 };
	dp_http_hist_add(&h, 0.0005);
	dp_http_hist_add(&h, 0.003);
	dp_http_hist_add(&h, 100);
	struct dp_http_buf b = { 0 };
	cr_assert_eq(dp_http_hist_render(&b, "x_seconds", "help", &h), 0);
	cr_expect_not_null(strstr(b.p, "# TYPE x_seconds histogram\n"));
	cr_expect_not_null(strstr(b.p, "x_seconds_bucket{le=\"0.001\"} 1\n"));
	cr_expect_not_null(strstr(b.p, "x_seconds_bucket{le=\"0.005\"} 2\n"));
	cr_expect_not_null(strstr(b.p, "x_seconds_bucket{le=\"60\"} 2\n"));
	cr_expect_not_null(strstr(b.p, "x_seconds_bucket{le=\"+Inf\"} 3\n"));
	cr_expect_not_null(strstr(b.p, "x_seconds_count 3\n"));
	dp_http_buf_fini(&b);
}

Test(http_req, nul_is_text_in_content_but_refused_in_names_and_ids)
{
	/* a reply the model wrote with a NUL comes back in a later request */
	struct dp_http_request r;
	struct dp_http_error e;
	cr_assert_eq(parse(DP_HTTP_CHAT, "{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}, "
			   "{\"role\": \"assistant\", \"content\": \"x\\u0000y\"}, "
			   "{\"role\": \"user\", \"content\": \"b\"}]}", &r, &e), 0, "%s", e.message);
	cr_expect_eq(json_string_length(json_object_get(json_array_get(r.messages, 1), "content")),
		     3);
	dp_http_request_fini(&r);
	refused(DP_HTTP_CHAT, "{\"model\": \"m\\u0000x\", \"messages\": [{\"role\": \"user\", "
		"\"content\": \"a\"}]}", 400, "model");
	refused(DP_HTTP_CHAT, "{\"cache_salt\": \"s\\u0000\", \"messages\": [{\"role\": \"user\", "
		"\"content\": \"a\"}]}", 400, "cache_salt");
	refused(DP_HTTP_CHAT, "{\"messages\": [{\"role\": \"user\\u0000x\", \"content\": \"a\"}]}",
		400, "messages[0].role");
	refused(DP_HTTP_CHAT, "{\"messages\": [{\"role\": \"assistant\", \"content\": null, "
		"\"tool_calls\": [{\"id\": \"c\\u00001\", \"type\": \"function\", \"function\": "
		"{\"name\": \"f\", \"arguments\": \"{}\"}}]}]}", 400, "messages[0].tool_calls");
	refused(DP_HTTP_CHAT, "{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}], "
		"\"tool_choice\": \"auto\\u0000\"}", 400, "tool_choice");
	/* the Messages API's conversion reads C strings: no NUL at all */
	refused(DP_HTTP_MESSAGES, "{\"model\": \"m\", \"max_tokens\": 4, \"messages\": "
		"[{\"role\": \"user\", \"content\": \"a\\u0000\"}]}", 400, "");
}

/* daemon/http-replay.c: the ids sampled per reply, under exactly what the
 * client was sent */
static size_t key_of(struct dp_http_buf *b, int32_t api_key, const char *salt, const char *content,
		     const char *reasoning, json_t *calls)
{
	cr_assert_eq(http_replay_key(b, api_key, salt, DP_CHAT_MODE_CHAT, content,
				     content ? strlen(content) : 0, reasoning,
				     reasoning ? strlen(reasoning) : 0, calls),
		     0);
	return b->len;
}

Test(http_replay, a_reply_is_found_only_under_what_was_sent_and_by_its_tenant)
{
	struct http_replay rp = { .cap = 1u << 20 };
	struct dp_http_buf k = { 0 };
	const int32_t ids[] = { 5, 6, 7, 1 };
	json_t *calls = json_pack("[{s:s, s:{s:s, s:s}}]", "id", "call_1_0", "function", "name", "f",
				  "arguments", "{\"a\": 1}");
	key_of(&k, -1, "s", "hi", NULL, calls);
	cr_assert_eq(http_replay_put(&rp, k.p, k.len, ids, 4), 0);
	size_t n = 0;
	const int32_t *got = http_replay_get(&rp, k.p, k.len, &n);
	cr_assert(got && n == 4 && !memcmp(got, ids, sizeof(ids)));
	/* content null and "" are one; anything else differing is another reply */
	key_of(&k, -1, "s", "hi", "", calls);
	cr_expect(http_replay_get(&rp, k.p, k.len, &n), "no reasoning is empty reasoning");
	key_of(&k, -1, "s", "hi!", NULL, calls);
	cr_expect_null(http_replay_get(&rp, k.p, k.len, &n), "edited content");
	key_of(&k, -1, "t", "hi", NULL, calls);
	cr_expect_null(http_replay_get(&rp, k.p, k.len, &n), "another cache_salt");
	key_of(&k, 0, "s", "hi", NULL, calls);
	cr_expect_null(http_replay_get(&rp, k.p, k.len, &n), "another API key");
	json_object_set_new(json_array_get(calls, 0), "id", json_string("call_2_0"));
	key_of(&k, -1, "s", "hi", NULL, calls);
	cr_expect_null(http_replay_get(&rp, k.p, k.len, &n), "another tool-call id");
	/* a NUL inside the content is part of it: "a\0b" is not "a" */
	cr_assert_eq(http_replay_key(&k, -1, "s", DP_CHAT_MODE_CHAT, "a\0b", 3, NULL, 0, NULL), 0);
	cr_assert_eq(http_replay_put(&rp, k.p, k.len, ids, 4), 0);
	key_of(&k, -1, "s", "a", NULL, NULL);
	cr_expect_null(http_replay_get(&rp, k.p, k.len, &n));
	json_decref(calls);
	dp_http_buf_fini(&k);
	http_replay_fini(&rp);
}

Test(http_replay, the_least_recently_used_reply_goes_first_within_the_byte_cap)
{
	struct http_replay rp = { 0 };
	struct dp_http_buf k = { 0 };
	int32_t ids[64] = { 0 };
	char text[8];
	size_t n;
	key_of(&k, -1, NULL, "r0", NULL, NULL);
	size_t one = k.len + sizeof(ids) + 64; /* an entry's bytes, bookkeeping bounded by 64 */
	rp.cap = 3 * one;
	for (int i = 0; i < 3; i++) {
		snprintf(text, sizeof(text), "r%d", i);
		key_of(&k, -1, NULL, text, NULL, NULL);
		cr_assert_eq(http_replay_put(&rp, k.p, k.len, ids, 64), 0);
	}
	key_of(&k, -1, NULL, "r0", NULL, NULL);
	cr_assert(http_replay_get(&rp, k.p, k.len, &n), "r0 used: r1 is now the oldest");
	key_of(&k, -1, NULL, "r3", NULL, NULL);
	cr_assert_eq(http_replay_put(&rp, k.p, k.len, ids, 64), 0);
	cr_assert_leq(rp.bytes, rp.cap);
	key_of(&k, -1, NULL, "r1", NULL, NULL);
	cr_expect_null(http_replay_get(&rp, k.p, k.len, &n), "the least recently used went");
	key_of(&k, -1, NULL, "r0", NULL, NULL);
	cr_expect(http_replay_get(&rp, k.p, k.len, &n));
	cr_expect_geq(rp.evicted, 1);
	/* one larger than the whole cap is not kept */
	static int32_t big[1024];
	cr_expect_eq(http_replay_put(&rp, k.p, k.len, big, 1024), -E2BIG);
	dp_http_buf_fini(&k);
	http_replay_fini(&rp);
}

/* The refusal of a body that is not UTF-8 quotes the parser's message, which
 * may carry the bad bytes: the error envelope must still be JSON (fuzz_http
 * found dp_http_error_json returning NULL: no answer but a 500). */
Test(http_req, an_error_quoting_bytes_that_are_not_utf8_is_still_a_json_envelope)
{
	static const char body[] = "{\"prom\\\xdc\xbb\xbb\xbb\xbb\\\\uer\\\\\\L\\2\\%\\\\}";
	struct dp_http_request r;
	struct dp_http_error e;
	cr_assert_eq(parse(DP_HTTP_COMPLETIONS, body, &r, &e), -EINVAL);
	struct dp_http_error bad = e;
	snprintf(bad.message, sizeof(bad.message), "bytes \xdc\xbb and \xff\xfe, a cut \xe2\x82");
	snprintf(bad.param, sizeof(bad.param), "p\xc0\xaf");
	const struct dp_http_error *all[] = { &e, &bad };
	for (int i = 0; i < 2; i++) {
		char *s = dp_http_error_json(all[i]);
		cr_assert_not_null(s, "no envelope for: %s", all[i]->message);
		json_t *o = json_loads(s, 0, NULL);
		cr_assert_not_null(o, "not JSON: %s", s);
		cr_assert_eq(json_object_size(json_object_get(o, "error")), 4);
		json_decref(o);
		free(s);
	}
}
