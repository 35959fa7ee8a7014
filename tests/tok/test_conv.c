/* SPDX-License-Identifier: MIT */
/*
 * tests/tok/test_conv.c — model/conv.h on V4's real tokenizer.json: every
 * committed chat rendering (tests/chat/data/render.json, from
 * encoding_dsv4.py) gives the token ids `tokenizers` gave for it; later turns
 * of a session render as encoding_dsv4's context continuation; generated ids
 * stream back as the reasoning, content and tool calls encoding_dsv4's
 * parser reads from the same text (tests/chat/data/parse.json); the BPE
 * tokenizer's load refuses a model too small for its ids.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <criterion/criterion.h>
#include <jansson.h>

#include "model/conv.h"
#include "model/tokenizer.h"
#include "tests/chat/chat-run.h"
#include "tok/tok.h"

static char dir[] = "/tmp/dp-conv-XXXXXX";
static struct dp_tok *tok;
static struct dp_conv *conv;

static void write_file(const char *name, const char *text)
{
	char path[4200];
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	FILE *f = fopen(path, "w");
	cr_assert(f);
	fputs(text, f);
	fclose(f);
}

static void setup(void)
{
	char path[4200], src[4200], err[512] = "";
	cr_assert(mkdtemp(dir));
	snprintf(src, sizeof(src), "%s/tokenizer.json", getenv("DP_TOK_DATA"));
	snprintf(path, sizeof(path), "%s/tokenizer.json", dir);
	cr_assert_eq(symlink(src, path), 0);
	write_file("config.json", "{\"model_type\": \"deepseek_v4\", \"vocab_size\": 129280}\n");
	write_file("tokenizer_config.json",
	           "{\"bos_token\": {\"content\": \"<｜begin▁of▁sentence｜>\"}, "
	           "\"eos_token\": \"<｜end▁of▁sentence｜>\"}\n");
	int rc = dp_tok_new_bpe(dir, 129280, &tok, err, sizeof(err));
	cr_assert_eq(rc, 0, "%s", err);
	rc = dp_conv_new(dir, tok, &conv, err, sizeof(err));
	cr_assert_eq(rc, 0, "%s", err);
}

static void teardown(void)
{
	char cmd[4300];
	dp_conv_free(conv);
	dp_tok_free(tok);
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	(void)!system(cmd);
}

static json_t *chat_data(const char *file)
{
	char path[4096];
	json_error_t e;
	snprintf(path, sizeof(path), "%s/%s", getenv("DP_TEST_CHAT_DATA"), file);
	json_t *j = json_load_file(path, JSON_ALLOW_NUL, &e);
	cr_assert(j, "%s: %s", path, e.text);
	return j;
}

TestSuite(conv, .init = setup, .fini = teardown, .timeout = 120);

Test(conv, v4_tokenizer_has_bos_0_eos_1_and_the_models_vocab)
{
	cr_assert_eq(dp_tok_kind(tok), DP_TOK_BPE);
	cr_assert_eq(dp_tok_special(tok, DP_TOK_BOS), 0);
	cr_assert_eq(dp_tok_special(tok, DP_TOK_EOS), 1);
	cr_assert_eq(dp_tok_vocab_size(tok), 129280);
	cr_assert(dp_tok_is_special(tok, 1));
	cr_assert_not(dp_tok_is_special(tok, 300));
	cr_assert_eq(dp_conv_format(conv), DP_CHAT_FORMAT_V4);
}

Test(conv, bpe_load_refuses_a_model_vocab_smaller_than_the_tokenizers_ids)
{
	struct dp_tok *t = NULL;
	char err[512] = "";
	cr_assert_eq(dp_tok_new_bpe(dir, 1000, &t, err, sizeof(err)), -EINVAL);
	cr_assert_null(t);
	cr_assert(strstr(err, "vocab_size 1000"), "%s", err);
}

Test(conv, every_parity_rendering_tokenizes_to_tokenizers_ids)
{
	json_t *cases = chat_data("render.json");
	size_t n = json_array_size(cases), same = 0;
	cr_assert_geq(n, 50);
	for (size_t i = 0; i < n; i++) {
		json_t *c = json_array_get(cases, i);
		const char *name = json_string_value(json_object_get(c, "name"));
		json_t *want = json_object_get(c, "ids");
		struct dp_conv_prompt p;
		struct dp_chat_error err;
		int rc = dp_conv_render(conv, json_object_get(c, "request"), DP_CONV_WANT_TEXT, &p,
		                        &err);
		if (rc) {
			cr_log_error("%s: refused (%d) %s: %s", name, rc, err.param, err.message);
			continue;
		}
		bool ok = p.n_ids == json_array_size(want) &&
		          p.len == json_string_length(json_object_get(c, "prompt"));
		for (size_t k = 0; ok && k < p.n_ids; k++)
			ok = p.ids[k] == json_integer_value(json_array_get(want, k));
		if (ok)
			same++;
		else
			cr_log_error("%s: %zu ids, tokenizers gave %zu", name, p.n_ids,
			             json_array_size(want));
		dp_conv_prompt_fini(&p);
	}
	json_decref(cases);
	cr_expect_eq(same, n, "%zu of %zu renderings give tokenizers' ids", same, n);
}

static void render(const char *json, unsigned flags, struct dp_conv_prompt *p)
{
	struct dp_chat_error err;
	int rc = dp_conv_render_text(conv, json, strlen(json), flags | DP_CONV_WANT_TEXT, p, &err);
	cr_assert_eq(rc, 0, "%s: %s", err.param, err.message);
}

Test(conv, a_later_turn_has_no_bos_or_effort_paragraph_and_follows_eos)
{
	/* encode_messages(new, context=old): the new user turn alone; the
	 * context ends with the reply's EOS */
	struct dp_conv_prompt first, later;
	render("{\"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}], "
	       "\"reasoning_effort\": \"max\"}",
	       0, &first);
	render("{\"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}], "
	       "\"reasoning_effort\": \"max\"}",
	       DP_CONV_CONTINUE, &later);
	cr_assert_eq(first.ids[0], 0);
	cr_assert_eq(dp_conv_continue_lead(conv), 1, "EOS ends the context");
	cr_assert_str_eq(later.text, "<｜User｜>Hi<｜Assistant｜><think>");
	cr_assert_gt(first.n_ids, later.n_ids + 20, "the paragraph is gone");
	/* the tail of the first turn is the later turn */
	cr_assert_arr_eq(first.ids + first.n_ids - later.n_ids, later.ids,
	                 later.n_ids * sizeof(int32_t));
	cr_assert_eq(later.mode, DP_CHAT_MODE_THINKING);
	dp_conv_prompt_fini(&first);
	dp_conv_prompt_fini(&later);
}

Test(conv, a_later_turn_refuses_tools_response_format_and_tool_results_naming_the_field)
{
	static const struct {
		const char *json, *param;
	} bad[] = {
	    {"{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"tools\": [{\"type\": "
	     "\"function\", \"function\": {\"name\": \"f\"}}]}",
	     "tools"},
	    {"{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"response_format\": "
	     "{\"type\": \"json_object\"}}",
	     "response_format"},
	    {"{\"messages\": [{\"role\": \"tool\", \"tool_call_id\": \"a\", \"content\": \"x\"}]}",
	     "messages[0].role"},
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct dp_conv_prompt p = {0};
		struct dp_chat_error err;
		int rc = dp_conv_render_text(conv, bad[i].json, strlen(bad[i].json),
		                             DP_CONV_CONTINUE, &p, &err);
		cr_assert_eq(rc, -EINVAL, "case %zu", i);
		cr_assert_str_eq(err.param, bad[i].param);
		cr_assert_null(p.ids);
	}
	struct dp_conv_prompt p = {0};
	struct dp_chat_error err;
	cr_assert_eq(dp_conv_render_text(conv, "{\"messages\": 3}", 15, 0, &p, &err), -EINVAL);
	cr_assert_str_eq(err.param, "messages");
	cr_assert_eq(dp_conv_render_text(conv, "{", 1, 0, &p, &err), -EINVAL);
	cr_assert(strstr(err.message, "JSON"), "%s", err.message);
}

/* Encode text, feed its ids one at a time (EOS as an id), finish. */
static struct run_result stream_ids(enum dp_chat_mode mode, const char *text, size_t len)
{
	struct run_result r = {0};
	size_t cap = dp_tok_encode_bound(tok, len, 0), n;
	int32_t *ids = malloc(cap * sizeof(*ids));
	struct dp_conv_stream *s;
	struct dp_chat_delta d;

	run_add(&r.reasoning, &r.reasoning_len, "", 0);
	run_add(&r.content, &r.content_len, "", 0);
	run_add(&r.calls, &r.calls_len, "", 0);
	cr_assert_eq(dp_tok_encode(tok, text, len, 0, ids, cap, &n), 0);
	cr_assert_eq(dp_conv_stream_new(conv, mode, NULL, &s), 0);
	for (size_t i = 0; i < n; i++) {
		cr_assert_eq(dp_conv_stream_feed(s, ids[i], &d), 0);
		run_take(&r, &d);
	}
	cr_assert_eq(dp_conv_stream_finish(s, &d), 0);
	run_take(&r, &d);
	cr_assert_eq(dp_conv_stream_feed(s, 5, &d), -EINVAL, "a feed after finish");
	dp_conv_stream_free(s);
	free(ids);
	return r;
}

Test(conv, generated_ids_stream_back_as_encoding_dsv4_parses_their_text)
{
	json_t *cases = chat_data("parse.json");
	size_t n = 0, same = 0;
	for (size_t i = 0; i < json_array_size(cases); i++) {
		json_t *c = json_array_get(cases, i);
		json_t *x = json_object_get(c, "expect");
		json_t *text = json_object_get(c, "text");
		if (json_is_true(json_object_get(x, "error")))
			continue; /* the reference raises: tests/chat covers our flags */
		n++;
		enum dp_chat_mode mode =
		    !strcmp(json_string_value(json_object_get(c, "mode")), "thinking")
		        ? DP_CHAT_MODE_THINKING
		        : DP_CHAT_MODE_CHAT;
		struct run_result r =
		    stream_ids(mode, json_string_value(text), json_string_length(text));
		json_t *calls = json_object_get(x, "tool_calls");
		json_t *wr = json_object_get(x, "reasoning"), *wc = json_object_get(x, "content");
		bool ok = r.reasoning_len == json_string_length(wr) &&
		          !memcmp(r.reasoning, json_string_value(wr), r.reasoning_len) &&
		          r.content_len == json_string_length(wc) &&
		          !memcmp(r.content, json_string_value(wc), r.content_len);
		char *want = NULL;
		size_t want_len = 0;
		run_add(&want, &want_len, "", 0);
		for (size_t k = 0; k < json_array_size(calls); k++) {
			json_t *call = json_array_get(calls, k);
			json_t *name = json_object_get(call, "name"),
			       *args = json_object_get(call, "arguments");
			char id[32];
			snprintf(id, sizeof(id), "call_%zu ", k);
			run_add(&want, &want_len, id, strlen(id));
			run_add(&want, &want_len, json_string_value(name),
			        json_string_length(name));
			run_add(&want, &want_len, " ", 1);
			run_add(&want, &want_len, json_string_value(args),
			        json_string_length(args));
			run_add(&want, &want_len, "\n", 1);
		}
		ok = ok && want_len == r.calls_len && !memcmp(want, r.calls, want_len);
		free(want);
		if (ok)
			same++;
		else
			cr_log_error("%s: reasoning/content/calls differ: content \"%.60s\"",
			             json_string_value(json_object_get(c, "name")), r.content);
		free(r.reasoning);
		free(r.content);
		free(r.calls);
	}
	json_decref(cases);
	cr_assert_gt(n, 20);
	cr_expect_eq(same, n, "%zu of %zu completions stream back as the reference parses them",
	             same, n);
}

Test(conv, eos_id_ends_the_output_and_special_tokens_reach_the_parser_as_markup)
{
	/* </think> and the end of sentence are added tokens marked special:
	 * the stream gives the parser their text */
	const char text[] = "</think>ok<｜end▁of▁sentence｜>";
	struct run_result r = stream_ids(DP_CHAT_MODE_THINKING, text, strlen(text));
	cr_assert_str_eq(r.content, "ok");
	cr_assert_str_eq(r.reasoning, "");
	cr_assert(r.ended);
	free(r.reasoning);
	free(r.content);
	free(r.calls);
}

/* The BPE kind's decode and stream decode are tok/'s: random id runs (byte
 * tokens cut inside characters, specials among them) give dp_bpe_decode's
 * text, specials left out (or, with DP_TOK_STREAM_SPECIALS, shown), with
 * ill-formed UTF-8 as U+FFFD (DP_BPE_LOSSY). */
Test(conv, bpe_kind_stream_decode_equals_tok_decode)
{
	char path[4200], err[256];
	struct dp_bpe *b;
	snprintf(path, sizeof(path), "%s/tokenizer.json", dir);
	cr_assert_eq(dp_bpe_load(path, &b, err, sizeof(err)), 0, "%s", err);
	uint64_t s = 88172645463325252ull;
	for (int round = 0; round < 200; round++) {
		int32_t ids[64];
		size_t n = 1 + round % 64;
		for (size_t i = 0; i < n; i++) {
			s ^= s << 13, s ^= s >> 7, s ^= s << 17;
			/* bias to the byte tokens and the added ones at the top */
			ids[i] = (int32_t)(s % 4 == 0   ? s % 256
			                   : s % 4 == 1 ? 128790 + s % 30
			                                : s % 128000);
		}
		for (int specials = 0; specials < 2; specials++) {
			unsigned bflags = DP_BPE_LOSSY | (specials ? 0 : DP_BPE_SKIP_SPECIAL);
			size_t cap = dp_bpe_decode_bound(b, n, bflags), len, got = 0, k;
			char *want = malloc(cap + 1),
			     *have = malloc(3 * (n + 1) * dp_tok_stream_bound(tok));
			cr_assert_eq(dp_bpe_decode(b, ids, n, bflags, want, cap, &len), 0);
			struct dp_tok_stream ts;
			dp_tok_stream_init(&ts, DP_TOK_STREAM_UTF8 |
			                            (specials ? DP_TOK_STREAM_SPECIALS : 0));
			for (size_t i = 0; i < n; i++) {
				cr_assert_eq(dp_tok_stream_next(tok, &ts, ids[i], have + got,
				                                dp_tok_stream_bound(tok), &k),
				             0);
				got += k;
			}
			cr_assert_eq(
			    dp_tok_stream_flush(&ts, have + got, dp_tok_stream_bound(tok), &k), 0);
			got += k;
			cr_assert(got == len && !memcmp(have, want, len), "round %d specials %d",
			          round, specials);
			free(want);
			free(have);
		}
	}
	dp_bpe_free(b);
}

/* Sampled ids for text that are not the tokenizer's spelling of it: one
 * encode per UTF-8 character (byte-level BPE then never merges across
 * characters), EOS last. */
static size_t spell_per_char(const char *text, int32_t *ids, size_t cap)
{
	size_t n = 0;
	for (const char *p = text; *p;) {
		size_t len = 1, got = 0;
		while ((p[len] & 0xc0) == 0x80)
			len++;
		cr_assert_eq(dp_tok_encode(tok, p, len, 0, ids + n, cap - n, &got), 0);
		n += got;
		p += len;
	}
	ids[n++] = dp_conv_continue_lead(conv);
	return n;
}

Test(conv, replay_puts_the_sampled_ids_of_a_tool_call_turn_in_place_of_its_rerender)
{
	/* The turn's generated part as encoding_dsv4 renders it: content, the
	 * DSML of the call (json.dumps spacing), EOS. */
	static const char req[] =
	    "{\"messages\": [{\"role\": \"user\", \"content\": \"Weather in Paris?\"},"
	    " {\"role\": \"assistant\", \"content\": \"Let me look.\", \"tool_calls\": [{\"id\": "
	    "\"call_1_0\", \"type\": \"function\", \"function\": {\"name\": \"weather\", "
	    "\"arguments\": \"{\\\"city\\\": \\\"Paris\\\", \\\"days\\\": 2}\"}}]},"
	    " {\"role\": \"tool\", \"tool_call_id\": \"call_1_0\", \"content\": \"sunny\"}],"
	    " \"thinking\": {\"type\": \"disabled\"}}";
	struct dp_conv_prompt p;
	render(req, 0, &p);
	cr_assert_eq(dp_conv_prompt_turns(conv, &p), 2, "the reply's opener and the prompt's");
	const char *open = strstr(p.text, "<｜Assistant｜></think>");
	cr_assert(open);
	const char *start = open + strlen("<｜Assistant｜></think>");
	const char *end = strstr(start, "<｜end▁of▁sentence｜>");
	cr_assert(end && strstr(start, "DSML"), "%s", p.text);
	char turn[1024];
	cr_assert_lt((size_t)(end - start), sizeof(turn));
	memcpy(turn, start, (size_t)(end - start));
	turn[end - start] = 0;
	int32_t sampled[1024];
	size_t n = spell_per_char(turn, sampled, 1024);

	/* the prompt before the turn and after it stay as rendered; the turn
	 * is the ids sampled */
	static int32_t want[8192];
	size_t k = 0, got = 0;
	cr_assert_eq(dp_tok_encode(tok, p.text, (size_t)(start - p.text), 0, want, 8192, &got), 0);
	k += got;
	memcpy(want + k, sampled, n * sizeof(int32_t));
	k += n;
	const char *rest = end + strlen("<｜end▁of▁sentence｜>");
	cr_assert_eq(dp_tok_encode(tok, rest, strlen(rest), 0, want + k, 8192 - k, &got), 0);
	k += got;
	struct dp_conv_prompt q;
	render(req, 0, &q);
	cr_assert_eq(dp_conv_prompt_splice(conv, &q, 0, DP_CHAT_MODE_CHAT, sampled, n), 0);
	cr_assert_gt(q.n_ids, p.n_ids, "spelt per character: more ids than the rerender");
	cr_assert_eq(q.n_ids, k);
	cr_assert_arr_eq(q.ids, want, k * sizeof(int32_t));

	/* what is not a sampled turn is refused, the prompt untouched */
	cr_assert_eq(dp_conv_prompt_splice(conv, &q, 1, DP_CHAT_MODE_CHAT, sampled, n), -ENOENT,
	             "the prompt's own opener is no turn");
	cr_assert_eq(dp_conv_prompt_splice(conv, &q, 0, DP_CHAT_MODE_THINKING, sampled, n), -ENOENT,
	             "sampled after <think>, rendered after </think>");
	cr_assert_eq(dp_conv_prompt_splice(conv, &q, 0, DP_CHAT_MODE_CHAT, sampled, n - 1), -EINVAL,
	             "a turn ends on EOS");
	cr_assert_eq(q.n_ids, k);
	dp_conv_prompt_fini(&p);
	dp_conv_prompt_fini(&q);
}

Test(conv, replay_refuses_a_thinking_turn_whose_reasoning_the_format_dropped)
{
	/* encoding_dsv4 drops the reasoning of turns before the last user
	 * message: the turn is rendered after </think>, not as it was sampled
	 * (after <think>), and cannot be put back */
	static const char req[] =
	    "{\"messages\": [{\"role\": \"user\", \"content\": \"A?\"},"
	    " {\"role\": \"assistant\", \"content\": \"B.\", \"reasoning_content\": \"hm\"},"
	    " {\"role\": \"user\", \"content\": \"C?\"}], \"reasoning_effort\": \"high\"}";
	struct dp_conv_prompt p;
	render(req, 0, &p);
	cr_assert_eq(p.mode, DP_CHAT_MODE_THINKING);
	cr_assert(strstr(p.text, "<｜Assistant｜></think>B.") && !strstr(p.text, "hm"), "%s", p.text);
	int32_t sampled[64];
	size_t n = spell_per_char("hm</think>B.", sampled, 64);
	size_t before = p.n_ids;
	cr_assert_eq(dp_conv_prompt_splice(conv, &p, 0, DP_CHAT_MODE_THINKING, sampled, n), -ENOENT);
	cr_assert_eq(p.n_ids, before);
	dp_conv_prompt_fini(&p);

	/* the last user message's later turns (a tool loop) keep it: put back */
	static const char loop[] =
	    "{\"messages\": [{\"role\": \"user\", \"content\": \"A?\"},"
	    " {\"role\": \"assistant\", \"content\": \"B.\", \"reasoning_content\": \"hm\"}],"
	    " \"reasoning_effort\": \"high\"}";
	render(loop, 0, &p);
	cr_assert(strstr(p.text, "<｜Assistant｜><think>hm</think>B."), "%s", p.text);
	cr_assert_eq(dp_conv_prompt_turns(conv, &p), 1);
	cr_assert_eq(dp_conv_prompt_splice(conv, &p, 0, DP_CHAT_MODE_THINKING, sampled, n), 0);
	cr_assert_arr_eq(p.ids + p.n_ids - n, sampled, n * sizeof(int32_t));
	dp_conv_prompt_fini(&p);
}
