/* SPDX-License-Identifier: MIT */
/*
 * The real dualpathd serving a published-format V4 checkpoint that speaks
 * V4's real tokenizer.json (129,280 ids: tests/daemon/make_vocab_model.py
 * grows tests/model/published/instruct at build time, random new rows):
 * chat Generates over the protocol (rendered by the daemon, output parsed
 * into ChatDelta), bad chat requests refused naming the field, and
 * `v4ctl chat` driving a two-turn session over the socket.
 */
#include <stdbool.h>

#include "dpclient.h"

static struct daemon_proc d;

static void fini(void)
{
	daemon_cleanup(&d);
}

TestSuite(chat, .fini = fini, .timeout = 600);

static const char *const cpu[] = {"--backend", "cpu", NULL};

static void send_chat(int fd, uint64_t id, const char *session, const char *json, uint32_t max_new)
{
	Dualpath__V1__Generate g = DUALPATH__V1__GENERATE__INIT;
	Dualpath__V1__Request r = DUALPATH__V1__REQUEST__INIT;
	g.session_id = (char *)(session ? session : "");
	g.prompt_case = DUALPATH__V1__GENERATE__PROMPT_CHAT;
	g.chat = (char *)json;
	g.max_new_tokens = max_new;
	g.return_text = true;
	r.request_id = id;
	r.body_case = DUALPATH__V1__REQUEST__BODY_GENERATE;
	r.generate = &g;
	cr_assert_eq(send_req(fd, &r), 0);
}

struct chat_result {
	char text[8192], reasoning[8192], content[8192];
	unsigned flags;
	int finish; /* or -code for an Error */
	char error[512];
	uint64_t position;
	uint32_t prompt_tokens, cached_tokens, chunks, chunks_with_chat;
};

static void cat(char *dst, const char *s)
{
	if (s)
		strncat(dst, s, 8191 - strlen(dst));
}

static void collect_chat(int fd, uint64_t id, struct chat_result *res)
{
	memset(res, 0, sizeof(*res));
	res->finish = -1000;
	for (;;) {
		Dualpath__V1__Response *r = recv_resp(fd, 120000);
		cr_assert_not_null(r, "the connection was lost");
		if (r->request_id != id) {
			dp_proto_response_free(r);
			continue;
		}
		if (r->body_case == DUALPATH__V1__RESPONSE__BODY_ERROR) {
			res->finish = -(int)r->error->code;
			snprintf(res->error, sizeof(res->error), "%s", r->error->message);
			dp_proto_response_free(r);
			return;
		}
		cr_assert_eq(r->body_case, DUALPATH__V1__RESPONSE__BODY_TOKEN_CHUNK);
		const Dualpath__V1__TokenChunk *tc = r->token_chunk;
		res->chunks++;
		size_t have = strlen(res->text);
		if (tc->text.len && have + tc->text.len < sizeof(res->text)) {
			memcpy(res->text + have, tc->text.data, tc->text.len);
			res->text[have + tc->text.len] = '\0';
		}
		if (tc->chat) {
			res->chunks_with_chat++;
			cat(res->reasoning, tc->chat->reasoning);
			cat(res->content, tc->chat->content);
			res->flags = tc->chat->flags;
		}
		res->position = tc->position;
		if (tc->finish) {
			res->finish = tc->finish;
			if (tc->usage) {
				res->prompt_tokens = tc->usage->prompt_tokens;
				res->cached_tokens = tc->usage->cached_tokens;
			}
			dp_proto_response_free(r);
			return;
		}
		dp_proto_response_free(r);
	}
}

#define HI "{\"messages\": [{\"role\": \"user\", \"content\": \"Hello there\"}]}"

Test(chat, a_chat_generate_streams_parsed_reasoning_and_a_session_turn_continues_the_context)
{
	struct chat_result a, b;

	daemon_start(&d, cpu);
	int fd = client_connect(&d);
	send_chat(fd, 2, "s1", HI, 8);
	collect_chat(fd, 2, &a);
	cr_assert_eq(a.finish, DUALPATH__V1__FINISH_REASON__FINISH_LENGTH, "%s", a.error);
	cr_assert_eq(a.chunks, a.chunks_with_chat, "every chunk of a chat prompt has its delta");
	/* <｜begin▁of▁sentence｜><｜User｜>Hello there<｜Assistant｜><think> */
	cr_assert_eq(a.prompt_tokens, 6);
	cr_assert_eq(a.position, 6 + 8);
	/* thinking mode, cut short: all of it is reasoning, none content */
	cr_assert_str_eq(a.content, "");
	cr_assert_gt(strlen(a.reasoning), 0);
	cr_assert(a.flags & 4, "output that ends inside reasoning is flagged UNTERMINATED");

	/* the second turn: only the new message, rendered after the context
	 * (the reply was cut, so the daemon closes it with EOS first) */
	send_chat(fd, 3, "s1",
	          "{\"messages\": [{\"role\": \"user\", \"content\": \"And again\"}], "
	          "\"thinking\": {\"type\": \"disabled\"}}",
	          8);
	collect_chat(fd, 3, &b);
	cr_assert_eq(b.finish, DUALPATH__V1__FINISH_REASON__FINISH_LENGTH, "%s", b.error);
	/* <｜User｜>And again<｜Assistant｜></think>: 5, no BOS */
	cr_assert_eq(b.prompt_tokens, 5);
	cr_assert_eq(b.cached_tokens, a.position - 1, "the first turn's state is reused");
	cr_assert_eq(b.position, a.position + 1 + 5 + 8, "EOS, the turn, the reply");
	/* chat mode: content, no reasoning */
	cr_assert_str_eq(b.reasoning, "");
	cr_assert_gt(strlen(b.content), 0);
	close(fd);
	cr_expect_eq(daemon_stop(&d), 0);
}

Test(chat, bad_chat_requests_are_invalid_argument_naming_the_field)
{
	static const struct {
		const char *session, *json, *want;
	} bad[] = {
	    {NULL, "{\"messages\": [", "generate.chat: bad JSON"},
	    {NULL, "{\"messages\": [{\"role\": \"robot\", \"content\": \"x\"}]}",
	     "generate.chat: messages[0].role"},
	    {NULL, "{\"messages\": [{\"role\": \"user\", \"content\": 3}]}",
	     "generate.chat: messages[0].content"},
	    {NULL,
	     "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"reasoning_effort\": 7}",
	     "generate.chat: reasoning_effort"},
	    /* on a session with a context, a later turn cannot offer tools */
	    {"s2",
	     "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"tools\": [{\"type\": "
	     "\"function\", \"function\": {\"name\": \"f\"}}]}",
	     "generate.chat: tools"},
	    {"s2",
	     "{\"messages\": [{\"role\": \"tool\", \"tool_call_id\": \"a\", \"content\": \"x\"}]}",
	     "generate.chat: messages[0].role"},
	};
	struct chat_result r;

	daemon_start(&d, cpu);
	int fd = client_connect(&d);
	send_chat(fd, 2, "s2", HI, 1); /* s2 gets a context */
	collect_chat(fd, 2, &r);
	cr_assert_eq(r.finish, DUALPATH__V1__FINISH_REASON__FINISH_LENGTH, "%s", r.error);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		send_chat(fd, 10 + i, bad[i].session, bad[i].json, 4);
		collect_chat(fd, 10 + i, &r);
		cr_assert_eq(r.finish, -DUALPATH__V1__CODE__INVALID_ARGUMENT, "case %zu: finish %d",
		             i, r.finish);
		cr_assert(strncmp(r.error, bad[i].want, strlen(bad[i].want)) == 0,
		          "case %zu: \"%s\" does not start with \"%s\"", i, r.error, bad[i].want);
	}
	/* the tools a first turn may offer */
	send_chat(
	    fd, 30, NULL,
	    "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"tools\": [{\"type\": "
	    "\"function\", \"function\": {\"name\": \"f\"}}]}",
	    1);
	collect_chat(fd, 30, &r);
	cr_assert_eq(r.finish, DUALPATH__V1__FINISH_REASON__FINISH_LENGTH, "%s", r.error);
	close(fd);
	cr_expect_eq(daemon_stop(&d), 0);
}

/* Run v4ctl with stdin; stdout and stderr into files of d's directory. */
static int run_v4ctl(const char *args, const char *input, char *out, size_t out_len, char *err,
                     size_t err_len)
{
	char in_path[256], out_path[256], err_path[256], cmd[2048];
	snprintf(in_path, sizeof(in_path), "%s/in", d.dir);
	snprintf(out_path, sizeof(out_path), "%s/out", d.dir);
	snprintf(err_path, sizeof(err_path), "%s/err", d.dir);
	FILE *f = fopen(in_path, "w");
	cr_assert_not_null(f);
	fputs(input, f);
	fclose(f);
	snprintf(cmd, sizeof(cmd), "'%s' --socket '%s' %s < '%s' > '%s' 2> '%s'", getenv("V4CTL"),
	         d.sock, args, in_path, out_path, err_path);
	int st = system(cmd);
	f = fopen(out_path, "r");
	size_t n = f ? fread(out, 1, out_len - 1, f) : 0;
	out[n] = 0;
	if (f)
		fclose(f);
	f = fopen(err_path, "r");
	n = f ? fread(err, 1, err_len - 1, f) : 0;
	err[n] = 0;
	if (f)
		fclose(f);
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

Test(chat, v4ctl_chat_runs_two_turns_with_reasoning_apart_over_one_session)
{
	static char out[65536], err[8192];
	unsigned long long p1, p2, c1, c2, pr1, pr2;

	daemon_start(&d, cpu);
	int rc = run_v4ctl("chat --session vc -n 6 --keep --system 'Be brief.'",
	                   "Hello there\n\nAnd again\n", out, sizeof(out), err, sizeof(err));
	cr_assert_eq(rc, 0, "v4ctl chat: exit %d\n%s", rc, err);
	/* stdout is not a terminal: reasoning lines are prefixed, one block a
	 * turn (the blank input line is skipped) */
	size_t blocks = 0;
	bool in_block = false;
	for (const char *line = out; *line;) {
		bool thinking = !strncmp(line, "thinking> ", 10);
		blocks += thinking && !in_block;
		in_block = thinking;
		const char *nl = strchr(line, '\n');
		line = nl ? nl + 1 : line + strlen(line);
	}
	cr_assert_eq(blocks, 2, "two turns of reasoning, each its own block:\n%s", out);
	/* the usage lines: the second turn reuses the first's state */
	const char *u2;
	cr_assert_eq(sscanf(err,
	                    "v4ctl: prompt %llu tokens (%llu cached), generated 6, position %llu",
	                    &pr1, &c1, &p1),
	             3, "%s", err);
	u2 = strchr(err, '\n');
	cr_assert_not_null(u2);
	cr_assert_eq(sscanf(u2 + 1,
	                    "v4ctl: prompt %llu tokens (%llu cached), generated 6, position %llu",
	                    &pr2, &c2, &p2),
	             3, "%s", err);
	cr_assert_eq(c1, 0);
	cr_assert_eq(c2, p1 - 1, "turn 2 continues from turn 1's state");
	cr_assert_eq(p2, p1 + 1 + pr2 + 6, "the position continues");
	cr_assert(strstr(err, "session vc left open"), "%s", err);

	/* --no-thinking: the answer alone; then the session is dropped */
	rc = run_v4ctl("chat --session vc -n 4 --no-thinking", "Once more\n", out, sizeof(out), err,
	               sizeof(err));
	cr_assert_eq(rc, 0, "%s", err);
	cr_assert_null(strstr(out, "thinking> "), "%s", out);
	cr_assert_gt(strlen(out), 1);
	int fd = client_connect(&d);
	Dualpath__V1__Response *r = simple(fd, 5, DUALPATH__V1__REQUEST__BODY_LIST_SESSIONS);
	cr_assert_eq(r->body_case, DUALPATH__V1__RESPONSE__BODY_SESSIONS);
	cr_assert_eq(r->sessions->n_sessions, 0, "closed at the end of input (dropped)");
	dp_proto_response_free(r);
	close(fd);

	/* bad options are usage errors, before any connection */
	rc = run_v4ctl("chat --effort extreme", "", out, sizeof(out), err, sizeof(err));
	cr_assert_eq(rc, 2);
	cr_expect_eq(daemon_stop(&d), 0);
}

/* A model without a chat format (the embedded byte-level one) renders plain
 * turns, gets BOS from its tokenizer, and gives all output as content; a
 * session's later turn follows the reply after a blank line. */
Test(chat, the_embedded_byte_model_chats_in_plain_turns_with_content_only)
{
	struct chat_result a, b;

	setenv("DP_TEST_MODEL", getenv("DP_TEST_EMBEDDED_MODEL"), 1);
	daemon_start(&d, cpu);
	int fd = client_connect(&d);
	send_chat(fd, 2, "p1", "{\"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}]}", 6);
	collect_chat(fd, 2, &a);
	cr_assert_eq(a.finish, DUALPATH__V1__FINISH_REASON__FINISH_LENGTH, "%s", a.error);
	/* BOS + "User: Hi\n\nAssistant:" */
	cr_assert_eq(a.prompt_tokens, 1 + strlen("User: Hi\n\nAssistant:"), "%u: %s",
	             a.prompt_tokens, a.text);
	cr_assert_str_eq(a.reasoning, "");
	cr_assert_str_eq(a.content, a.text, "plain output is all content");
	send_chat(fd, 3, "p1", "{\"messages\": [{\"role\": \"user\", \"content\": \"Go on\"}]}", 6);
	collect_chat(fd, 3, &b);
	cr_assert_eq(b.finish, DUALPATH__V1__FINISH_REASON__FINISH_LENGTH, "%s", b.error);
	cr_assert_eq(b.prompt_tokens, strlen("\n\nUser: Go on\n\nAssistant:"));
	cr_assert_eq(b.cached_tokens, a.position - 1);
	cr_assert_eq(b.position, a.position + b.prompt_tokens + 6,
	             "no EOS is added in plain turns");
	close(fd);
	cr_expect_eq(daemon_stop(&d), 0);
}
