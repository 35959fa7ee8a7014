/* SPDX-License-Identifier: MIT */
/* proto/frame.h: the request rules, each with its code and message. */
#include <errno.h>
#include <math.h>
#include <stdio.h>

#include "proto-test.h"
#include "base/macros.h"

static struct dp_proto_limits lim;

static void setup(void)
{
	dp_proto_limits_init(&lim);
	lim.vocab_size = 129280;
}

TestSuite(check, .init = setup);

/* Check req; expect rule (NONE: valid) and, when broken, a message that
 * contains `needle`. */
static void expect(const Dualpath__V1__Request *req, enum dp_proto_rule rule, const char *needle)
{
	struct dp_proto_fault f = {.rule = DP_PROTO_RULE_MAX, .code = 12345};
	char msg[256] = "untouched";
	int ret = dp_proto_request_check(req, &lim, &f, msg, sizeof(msg));

	if (rule == DP_PROTO_RULE_NONE) {
		cr_assert_eq(ret, 0, "unexpected %s: %s", dp_proto_rule_name(f.rule), msg);
		cr_assert_eq(f.rule, DP_PROTO_RULE_MAX, "fault untouched when valid");
		cr_assert_str_eq(msg, "untouched");
		return;
	}
	cr_assert_eq(ret, -EBADMSG, "want %s, got valid", dp_proto_rule_name(rule));
	cr_assert_eq(f.rule, rule, "want %s, got %s (%s)", dp_proto_rule_name(rule),
	             dp_proto_rule_name(f.rule), msg);
	cr_assert_eq(f.code, rule == DP_PROTO_RULE_VERSION ? DUALPATH__V1__CODE__FAILED_PRECONDITION
	                                                   : DUALPATH__V1__CODE__INVALID_ARGUMENT);
	cr_assert(strstr(msg, needle), "message \"%s\" lacks \"%s\"", msg, needle);
}

Test(check, every_request_kind_as_built_is_valid)
{
	for (size_t i = 0; i < N_REQUEST_BODIES; i++) {
		struct req_store st;

		expect(build_request(&st, request_bodies[i]), DP_PROTO_RULE_NONE, NULL);
	}
}

Test(check, request_id_zero_is_rejected)
{
	struct req_store st;

	build_request(&st, DUALPATH__V1__REQUEST__BODY_HEALTH);
	st.req.request_id = 0;
	expect(&st.req, DP_PROTO_RULE_REQUEST_ID, "request_id");
}

Test(check, request_without_body_is_rejected)
{
	Dualpath__V1__Request req = DUALPATH__V1__REQUEST__INIT;

	req.request_id = 3;
	expect(&req, DP_PROTO_RULE_BODY, "body");
	/* A body case without its message (hand-made structs) counts as none. */
	req.body_case = DUALPATH__V1__REQUEST__BODY_GENERATE;
	expect(&req, DP_PROTO_RULE_BODY, "body");
	req.body_case = DUALPATH__V1__REQUEST__BODY_STATS;
	expect(&req, DP_PROTO_RULE_BODY, "body");
}

Test(check, unknown_body_from_the_wire_is_rejected_as_unknown)
{
	Dualpath__V1__Request *req;
	char msg[128];
	struct dp_proto_fault f;

	/* request_id 9, field 40 (a later version's request kind) */
	cr_assert_eq(dp_proto_request_decode("\x08\x09\xc2\x02\x00", 5, 0, &req), 0);
	cr_assert_eq(dp_proto_request_check(req, &lim, &f, msg, sizeof(msg)), -EBADMSG);
	cr_assert_eq(f.rule, DP_PROTO_RULE_BODY);
	cr_assert(strstr(msg, "unknown"), "%s", msg);
	dp_proto_request_free(req);
}

Test(check, hello_needs_the_current_version_and_a_sane_name)
{
	struct req_store st;
	char name[DP_PROTO_CLIENT_NAME_MAX + 2];

	build_request(&st, DUALPATH__V1__REQUEST__BODY_HELLO);
	st.hello.protocol_version = 0;
	expect(&st.req, DP_PROTO_RULE_VERSION_MISSING, "protocol_version");
	st.hello.protocol_version = 2;
	expect(&st.req, DP_PROTO_RULE_VERSION, "2 is not supported");
	st.hello.protocol_version = DP_PROTO_VERSION;
	st.hello.client_name = "";
	expect(&st.req, DP_PROTO_RULE_NONE, NULL);
	memset(name, 'n', sizeof(name));
	name[DP_PROTO_CLIENT_NAME_MAX] = '\0';
	st.hello.client_name = name;
	expect(&st.req, DP_PROTO_RULE_NONE, NULL);
	name[DP_PROTO_CLIENT_NAME_MAX] = 'n';
	name[DP_PROTO_CLIENT_NAME_MAX + 1] = '\0';
	expect(&st.req, DP_PROTO_RULE_CLIENT_NAME, "129 bytes");
	st.hello.client_name = "evil\nINFO: forged log line";
	expect(&st.req, DP_PROTO_RULE_CLIENT_NAME, "0x0a");
	st.hello.client_name = "del\x7f";
	expect(&st.req, DP_PROTO_RULE_CLIENT_NAME, "0x7f");
	st.hello.client_name = "csi\xc2\x9b[31m";
	expect(&st.req, DP_PROTO_RULE_CLIENT_NAME, "U+009B");
	st.hello.client_name = "nbsp\xc2\xa0ok";
	expect(&st.req, DP_PROTO_RULE_NONE, NULL);
	st.hello.client_name = "caf\xc3\xa9/1.0";
	expect(&st.req, DP_PROTO_RULE_NONE, NULL);
}

Test(check, session_id_syntax)
{
	static const char *const good[] = {
	    "a", "A-Z_a.z-0.9", "...", ".hidden", "-dash", "_", "a..b",
	};
	static const char *const bad[] = {
	    ".",     "..",          "a/b",          "/abs", "../up", "a b",   "a\\b",
	    "tab\t", "caf\xc3\xa9", "\xe2\x80\x8b", "a:b",  "semi;", "star*", "nl\n",
	};
	char longest[DP_PROTO_SESSION_ID_MAX + 2];

	for (size_t i = 0; i < DP_ARRAY_SIZE(good); i++)
		cr_assert_eq(dp_proto_session_id_check(good[i]), 0, "%s", good[i]);
	for (size_t i = 0; i < DP_ARRAY_SIZE(bad); i++)
		cr_assert_eq(dp_proto_session_id_check(bad[i]), -EINVAL, "%s", bad[i]);
	cr_assert_eq(dp_proto_session_id_check(""), -EINVAL);
	cr_assert_eq(dp_proto_session_id_check(NULL), -EINVAL);
	memset(longest, 'x', sizeof(longest));
	longest[DP_PROTO_SESSION_ID_MAX] = '\0';
	cr_assert_eq(dp_proto_session_id_check(longest), 0, "128 bytes is the most");
	longest[DP_PROTO_SESSION_ID_MAX] = 'x';
	longest[DP_PROTO_SESSION_ID_MAX + 1] = '\0';
	cr_assert_eq(dp_proto_session_id_check(longest), -ENAMETOOLONG, "129 bytes");
}

Test(check, generate_session_id_may_be_empty_but_not_malformed)
{
	struct req_store st;
	char longest[DP_PROTO_SESSION_ID_MAX + 2];

	build_request(&st, DUALPATH__V1__REQUEST__BODY_GENERATE);
	st.gen.session_id = "";
	expect(&st.req, DP_PROTO_RULE_NONE, NULL);
	st.gen.session_id = "a/b";
	expect(&st.req, DP_PROTO_RULE_SESSION_ID, "\"a/b\"");
	st.gen.session_id = "..";
	expect(&st.req, DP_PROTO_RULE_SESSION_ID, "generate.session_id");
	st.gen.session_id = ".";
	expect(&st.req, DP_PROTO_RULE_SESSION_ID, "generate.session_id");
	st.gen.session_id = "\xf0\x9f\x99\x82"; /* shown escaped, not raw */
	expect(&st.req, DP_PROTO_RULE_SESSION_ID, "\\xf0\\x9f");
	memset(longest, 'x', sizeof(longest));
	longest[DP_PROTO_SESSION_ID_MAX + 1] = '\0';
	st.gen.session_id = longest;
	expect(&st.req, DP_PROTO_RULE_SESSION_ID, "129 bytes, at most 128");
}

Test(check, session_id_with_nul_never_reaches_the_rules)
{
	/* request{id 1, generate{session_id "a\0b", text "x"}}: protobuf-c
	 * would hand over "a"; decoding refuses instead. */
	static const uint8_t b[] = {0x08, 0x01, 0x5a, 0x08, 0x0a, 0x03,
	                            'a',  0x00, 'b',  0x1a, 0x01, 'x'};
	Dualpath__V1__Request *req = NULL;

	cr_assert_eq(dp_proto_request_decode(b, sizeof(b), 0, &req), -EILSEQ);
	cr_assert_null(req);
}

Test(check, close_and_evict_need_a_valid_session_id)
{
	struct req_store st;

	build_request(&st, DUALPATH__V1__REQUEST__BODY_CLOSE_SESSION);
	st.close.session_id = "";
	expect(&st.req, DP_PROTO_RULE_SESSION_ID_MISSING, "close_session.session_id: required");
	st.close.session_id = "../etc";
	expect(&st.req, DP_PROTO_RULE_SESSION_ID, "close_session.session_id");
	build_request(&st, DUALPATH__V1__REQUEST__BODY_EVICT_SESSION);
	st.evict.session_id = "";
	expect(&st.req, DP_PROTO_RULE_SESSION_ID_MISSING, "evict_session.session_id");
	st.evict.session_id = "x/y";
	expect(&st.req, DP_PROTO_RULE_SESSION_ID, "evict_session.session_id");
}

Test(check, generate_needs_a_prompt)
{
	struct req_store st;

	build_request(&st, DUALPATH__V1__REQUEST__BODY_GENERATE);
	st.gen.prompt_case = DUALPATH__V1__GENERATE__PROMPT__NOT_SET;
	st.gen.tokens = NULL;
	expect(&st.req, DP_PROTO_RULE_PROMPT_MISSING, "no prompt");
	/* Even when it only ingests (max_new_tokens 0). */
	st.gen.max_new_tokens = 0;
	expect(&st.req, DP_PROTO_RULE_PROMPT_MISSING, "no prompt");
	build_request(&st, DUALPATH__V1__REQUEST__BODY_GENERATE);
	st.toks.n_ids = 0;
	expect(&st.req, DP_PROTO_RULE_PROMPT_MISSING, "generate.tokens: empty");
	st.gen.prompt_case = DUALPATH__V1__GENERATE__PROMPT_TEXT;
	st.gen.text = "";
	expect(&st.req, DP_PROTO_RULE_PROMPT_MISSING, "generate.text: empty");
	st.gen.text = "hello";
	st.gen.max_new_tokens = 0;
	expect(&st.req, DP_PROTO_RULE_NONE, NULL);
	st.gen.prompt_case = DUALPATH__V1__GENERATE__PROMPT_CHAT;
	st.gen.chat = "";
	expect(&st.req, DP_PROTO_RULE_PROMPT_MISSING, "generate.chat: empty");
	st.gen.chat = "{\"messages\": []}"; /* its content is the daemon's to judge */
	expect(&st.req, DP_PROTO_RULE_NONE, NULL);
}

Test(check, prompt_limits)
{
	struct req_store st;
	uint32_t *ids = calloc(1001, sizeof(*ids));
	char *text = malloc(502);

	cr_assert_not_null(ids);
	cr_assert_not_null(text);
	build_request(&st, DUALPATH__V1__REQUEST__BODY_GENERATE);
	lim.max_prompt_tokens = 1000;
	st.toks.ids = ids;
	st.toks.n_ids = 1000;
	expect(&st.req, DP_PROTO_RULE_NONE, NULL);
	st.toks.n_ids = 1001;
	expect(&st.req, DP_PROTO_RULE_PROMPT_TOKENS, "1001 ids, at most 1000");

	st.toks.n_ids = 10;
	ids[9] = 129280;
	expect(&st.req, DP_PROTO_RULE_TOKEN_ID,
	       "ids[9]: 129280 is not below the vocabulary size 129280");
	ids[9] = 129279;
	expect(&st.req, DP_PROTO_RULE_NONE, NULL);
	lim.vocab_size = 0; /* unknown: not checked */
	ids[9] = UINT32_MAX;
	expect(&st.req, DP_PROTO_RULE_NONE, NULL);

	lim.max_text_bytes = 500;
	memset(text, 'a', 501);
	text[500] = '\0';
	st.gen.prompt_case = DUALPATH__V1__GENERATE__PROMPT_TEXT;
	st.gen.text = text;
	expect(&st.req, DP_PROTO_RULE_NONE, NULL);
	text[500] = 'a';
	text[501] = '\0';
	expect(&st.req, DP_PROTO_RULE_PROMPT_TEXT, "501 bytes, at most 500");
	/* a chat prompt's JSON has the text limit */
	st.gen.prompt_case = DUALPATH__V1__GENERATE__PROMPT_CHAT;
	st.gen.chat = text;
	expect(&st.req, DP_PROTO_RULE_PROMPT_TEXT, "generate.chat: 501 bytes, at most 500");
	text[500] = '\0';
	expect(&st.req, DP_PROTO_RULE_NONE, NULL);
	free(ids);
	free(text);
}

Test(check, max_new_tokens_limit)
{
	struct req_store st;

	build_request(&st, DUALPATH__V1__REQUEST__BODY_GENERATE);
	st.gen.max_new_tokens = lim.max_new_tokens;
	expect(&st.req, DP_PROTO_RULE_NONE, NULL);
	st.gen.max_new_tokens = lim.max_new_tokens + 1;
	expect(&st.req, DP_PROTO_RULE_MAX_NEW_TOKENS, "generate.max_new_tokens");
}

Test(check, sampling_ranges)
{
	static const float bad_temperature[] = {-1.0f, -1e-30f, NAN, INFINITY, -INFINITY};
	static const float good_temperature[] = {0.0f, -0.0f, 1e-30f, 1.0f, 100.0f};
	static const float bad_top_p[] = {-0.01f, 1.0001f, NAN, INFINITY, -INFINITY};
	static const float good_top_p[] = {0.0f, 1.0f, 0.5f};
	struct req_store st;

	build_request(&st, DUALPATH__V1__REQUEST__BODY_GENERATE);
	for (size_t i = 0; i < 5; i++) {
		st.samp.temperature = bad_temperature[i];
		expect(&st.req, DP_PROTO_RULE_TEMPERATURE, "generate.sampling.temperature");
		st.samp.temperature = good_temperature[i];
		expect(&st.req, DP_PROTO_RULE_NONE, NULL);
	}
	for (size_t i = 0; i < 5; i++) {
		st.samp.top_p = bad_top_p[i];
		expect(&st.req, DP_PROTO_RULE_TOP_P, "generate.sampling.top_p");
	}
	for (size_t i = 0; i < 3; i++) {
		st.samp.top_p = good_top_p[i];
		expect(&st.req, DP_PROTO_RULE_NONE, NULL);
	}
	st.samp.top_p = 1.5f;
	expect(&st.req, DP_PROTO_RULE_TOP_P, "1.5 is not in [0, 1]");
	st.samp.top_p = 1;
	st.samp.top_k = UINT32_MAX; /* any top_k and seed */
	st.samp.seed = UINT64_MAX;
	expect(&st.req, DP_PROTO_RULE_NONE, NULL);
	st.gen.sampling = NULL; /* no sampling: greedy defaults */
	expect(&st.req, DP_PROTO_RULE_NONE, NULL);
}

Test(check, stop_ids_limits)
{
	struct req_store st;
	uint32_t stop[65] = {0};

	build_request(&st, DUALPATH__V1__REQUEST__BODY_GENERATE);
	st.samp.stop_ids = stop;
	st.samp.n_stop_ids = 64;
	expect(&st.req, DP_PROTO_RULE_NONE, NULL);
	st.samp.n_stop_ids = 65;
	expect(&st.req, DP_PROTO_RULE_STOP_IDS, "65 ids, at most 64");
	st.samp.n_stop_ids = 3;
	stop[2] = 200000;
	expect(&st.req, DP_PROTO_RULE_STOP_ID, "stop_ids[2]: 200000");
}

Test(check, cancel_needs_a_target)
{
	struct req_store st;

	build_request(&st, DUALPATH__V1__REQUEST__BODY_CANCEL);
	st.cancel.target_request_id = 0;
	expect(&st.req, DP_PROTO_RULE_CANCEL_TARGET, "cancel.target_request_id");
}

Test(check, every_rule_has_a_distinct_name)
{
	for (int a = 0; a < DP_PROTO_RULE_MAX; a++) {
		cr_assert_not_null(dp_proto_rule_name(a));
		for (int b = 0; b < a; b++)
			cr_assert_str_neq(dp_proto_rule_name(a), dp_proto_rule_name(b));
	}
	cr_assert_null(dp_proto_rule_name(DP_PROTO_RULE_MAX));
	cr_assert_null(dp_proto_rule_name(-1));
}

Test(check, message_is_truncated_and_optional)
{
	struct req_store st;
	struct dp_proto_fault f;
	char small[8];

	build_request(&st, DUALPATH__V1__REQUEST__BODY_CANCEL);
	st.cancel.target_request_id = 0;
	cr_assert_eq(dp_proto_request_check(&st.req, &lim, &f, small, sizeof(small)), -EBADMSG);
	cr_assert_eq(strlen(small), sizeof(small) - 1);
	cr_assert_eq(dp_proto_request_check(&st.req, &lim, NULL, NULL, 0), -EBADMSG);
	cr_assert_eq(dp_proto_request_check(&st.req, &lim, &f, small, 0), -EBADMSG);
	cr_assert_eq(dp_proto_request_check(NULL, &lim, &f, small, sizeof(small)), -EINVAL);
	cr_assert_eq(dp_proto_request_check(&st.req, NULL, &f, small, sizeof(small)), -EINVAL);
}

Test(check, limits_init_sets_the_documented_defaults)
{
	struct dp_proto_limits l;

	memset(&l, 0xff, sizeof(l));
	dp_proto_limits_init(&l);
	cr_assert_eq(l.vocab_size, 0);
	cr_assert_eq(l.max_prompt_tokens, DP_PROTO_MAX_PROMPT_TOKENS_DEFAULT);
	cr_assert_eq(l.max_text_bytes, DP_PROTO_MAX_TEXT_BYTES_DEFAULT);
	cr_assert_eq(l.max_new_tokens, DP_PROTO_MAX_NEW_TOKENS_DEFAULT);
	cr_assert_eq(l.max_stop_ids, DP_PROTO_MAX_STOP_IDS_DEFAULT);
	dp_proto_limits_init(NULL);
}
