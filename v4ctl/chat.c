/* SPDX-License-Identifier: MIT */
/*
 * v4ctl chat — an interactive multi-turn chat over one session.
 *
 * Each line read from stdin is a user turn, sent as a chat Generate
 * (dualpath.proto, Generate.chat): the first turn carries the system
 * message (--system) and the user's, later turns only the new user message,
 * which the daemon renders as a continuation of the session's context. The
 * reply streams as the daemon parses it (TokenChunk.chat): reasoning apart
 * from the answer — dimmed on a terminal, each line prefixed "thinking> "
 * otherwise — tool calls as "[tool call NAME ARGS]" lines. At end of input
 * the session is closed: dropped, or with --persist kept on disk; --keep
 * leaves it open.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "v4ctl/v4ctl.h"

static const char usage[] =
    "usage: v4ctl chat [OPTIONS]\n"
    "\n"
    "Chat with the model over a session: each line of stdin is a user turn;\n"
    "the answer streams to stdout, the model's reasoning apart from it (dimmed\n"
    "on a terminal, lines prefixed 'thinking> ' otherwise).\n"
    "\n"
    "Options:\n"
    "  --session ID        the session (default: a new one, chat-PID-TIME); an\n"
    "                      existing session's context is continued\n"
    "  --no-thinking       chat mode: answer without reasoning\n"
    "  --effort high|max   reasoning effort (max adds DeepSeek's paragraph)\n"
    "  --system TEXT       a system message before the first turn\n"
    "  --max-tokens N, -n N   at most N tokens per reply (default 1024)\n"
    DP_V4CTL_SAMPLING_USAGE
    "  --persist           at the end, close the session to disk (default: drop it)\n"
    "  --keep              at the end, leave the session open\n"
    "  --socket PATH, --timeout MS   as for every command\n";

enum {
	OPT_SESSION = DP_V4CTL_OPT_FIRST_COMMAND,
	OPT_NO_THINKING,
	OPT_EFFORT,
	OPT_SYSTEM,
	OPT_PERSIST,
	OPT_KEEP,
};

struct chat {
	char session[DP_PROTO_SESSION_ID_MAX + 1];
	bool no_thinking, persist, keep;
	const char *effort, *system;
	uint64_t max_tokens;
	struct dp_v4ctl_sampling smp;
	/* output state */
	bool tty, in_reasoning, line_start, said_anything;
};

static int parse(struct dp_v4ctl *ctl, struct chat *ch, int argc, char **argv)
{
	static const struct option opts[] = {
	    DP_V4CTL_COMMON_OPTS,
	    {"session", required_argument, NULL, OPT_SESSION},
	    {"no-thinking", no_argument, NULL, OPT_NO_THINKING},
	    {"effort", required_argument, NULL, OPT_EFFORT},
	    {"system", required_argument, NULL, OPT_SYSTEM},
	    {"max-tokens", required_argument, NULL, 'n'},
	    DP_V4CTL_SAMPLING_OPTS,
	    {"persist", no_argument, NULL, OPT_PERSIST},
	    {"keep", no_argument, NULL, OPT_KEEP},
	    {0},
	};
	int opt;

	ch->max_tokens = 1024;
	opterr = 0;
	while ((opt = getopt_long(argc, argv, DP_V4CTL_COMMON_SHORT "n:", opts, NULL)) != -1) {
		int r = dp_v4ctl_common_opt(ctl, opt, optarg, usage);
		if (r < 0)
			return -1;
		if (r > 0 || (r = dp_v4ctl_sampling_opt(&ch->smp, opt, optarg)) > 0)
			continue;
		if (r < 0)
			return -1;
		switch (opt) {
		case OPT_SESSION:
			if (dp_proto_session_id_check(optarg) < 0) {
				dp_v4ctl_usage_error(
				    "chat",
				    "--session: '%s' is not a session id (1..%u bytes "
				    "of [A-Za-z0-9._-], not '.' or '..')",
				    optarg, DP_PROTO_SESSION_ID_MAX);
				return -1;
			}
			snprintf(ch->session, sizeof(ch->session), "%s", optarg);
			break;
		case OPT_NO_THINKING:
			ch->no_thinking = true;
			break;
		case OPT_EFFORT:
			if (strcmp(optarg, "high") && strcmp(optarg, "max")) {
				dp_v4ctl_usage_error("chat", "--effort: '%s' is not high or max",
				                     optarg);
				return -1;
			}
			ch->effort = optarg;
			break;
		case OPT_SYSTEM:
			ch->system = optarg;
			break;
		case 'n':
			if (dp_v4ctl_parse_u64("--max-tokens (-n)", optarg, 1, UINT32_MAX,
			                       &ch->max_tokens) < 0)
				return -1;
			break;
		case OPT_PERSIST:
			ch->persist = true;
			break;
		case OPT_KEEP:
			ch->keep = true;
			break;
		default:
			dp_v4ctl_usage_error("chat", "unknown option or missing value: '%s'",
			                     argv[optind - 1]);
			return -1;
		}
	}
	if (optind < argc) {
		dp_v4ctl_usage_error("chat", "unexpected argument '%s' (turns are read from stdin)",
		                     argv[optind]);
		return -1;
	}
	if (ch->persist && ch->keep) {
		dp_v4ctl_usage_error("chat", "--persist and --keep exclude each other");
		return -1;
	}
	if (!ch->session[0])
		snprintf(ch->session, sizeof(ch->session), "chat-%ld-%lld", (long)getpid(),
		         (long long)time(NULL));
	return 0;
}

/* The request for one turn: the system message on the first only. */
static char *turn_json(const struct chat *ch, const char *text, bool first)
{
	json_t *rq = json_object(), *msgs = json_array();

	if (first && ch->system)
		json_array_append_new(
		    msgs, json_pack("{s:s, s:s}", "role", "system", "content", ch->system));
	json_array_append_new(msgs, json_pack("{s:s, s:s}", "role", "user", "content", text));
	json_object_set_new(rq, "messages", msgs);
	if (ch->no_thinking)
		json_object_set_new(rq, "thinking", json_pack("{s:s}", "type", "disabled"));
	if (ch->effort)
		json_object_set_new(rq, "reasoning_effort", json_string(ch->effort));
	char *s = json_dumps(rq, JSON_COMPACT);
	json_decref(rq);
	return s;
}

/* Reasoning: dimmed on a terminal, prefixed lines otherwise. */
static void put_reasoning(struct chat *ch, const char *s)
{
	if (!*s)
		return;
	if (!ch->in_reasoning) {
		ch->in_reasoning = true;
		if (ch->tty)
			fputs("\033[2m", stdout);
	}
	for (; *s; s++) {
		if (!ch->tty && ch->line_start)
			fputs("thinking> ", stdout);
		fputc(*s, stdout);
		ch->line_start = *s == '\n';
	}
	ch->said_anything = true;
}

static void end_reasoning(struct chat *ch)
{
	if (!ch->in_reasoning)
		return;
	ch->in_reasoning = false;
	if (ch->tty)
		fputs("\033[22m", stdout);
	if (!ch->line_start)
		fputc('\n', stdout);
	fputc('\n', stdout); /* a blank line between reasoning and answer */
	ch->line_start = true;
}

static void put_content(struct chat *ch, const char *s)
{
	if (!*s)
		return;
	end_reasoning(ch);
	fputs(s, stdout);
	ch->line_start = s[strlen(s) - 1] == '\n';
	ch->said_anything = true;
}

static void show(struct chat *ch, const Dualpath__V1__ChatDelta *d)
{
	put_reasoning(ch, d->reasoning ? d->reasoning : "");
	put_content(ch, d->content ? d->content : "");
	for (size_t i = 0; i < d->n_tool_calls; i++) {
		end_reasoning(ch);
		if (!ch->line_start)
			fputc('\n', stdout);
		printf("[tool call %s %s]\n", d->tool_calls[i]->name, d->tool_calls[i]->arguments);
		ch->line_start = true;
	}
}

/* One turn: send it, stream the reply. Returns an exit code. */
static int turn(struct dp_v4ctl *ctl, struct dp_client *c, struct chat *ch, const char *text,
                bool first)
{
	Dualpath__V1__Request req = DUALPATH__V1__REQUEST__INIT;
	Dualpath__V1__Generate gen = DUALPATH__V1__GENERATE__INIT;
	Dualpath__V1__Sampling smp = DUALPATH__V1__SAMPLING__INIT;
	int timeout = ctl->timeout_set ? ctl->timeout_ms : -1;
	char *json = turn_json(ch, text, first);
	int ret;

	if (!json) {
		fprintf(stderr, "v4ctl: out of memory\n");
		return DP_V4CTL_EXIT_PROTOCOL;
	}
	gen.session_id = ch->session;
	gen.prompt_case = DUALPATH__V1__GENERATE__PROMPT_CHAT;
	gen.chat = json;
	gen.max_new_tokens = (uint32_t)ch->max_tokens;
	gen.sampling = dp_v4ctl_sampling_fill(&ch->smp, &smp);
	req.body_case = DUALPATH__V1__REQUEST__BODY_GENERATE;
	req.generate = &gen;
	ret = dp_client_send(c, &req);
	free(json);
	if (ret < 0)
		return dp_v4ctl_print_io_error(ctl, c, ret, "sending the turn");
	ch->in_reasoning = false;
	ch->line_start = true;
	ch->said_anything = false;
	for (;;) {
		Dualpath__V1__Response *r;
		ret = dp_client_recv_id(c, req.request_id, timeout, &r);
		if (ret < 0)
			return dp_v4ctl_print_io_error(ctl, c, ret, "waiting for the reply");
		if (r->body_case == DUALPATH__V1__RESPONSE__BODY_ERROR) {
			ret = dp_v4ctl_print_error(r->error, "chat");
			dp_proto_response_free(r);
			return ret;
		}
		if (r->body_case != DUALPATH__V1__RESPONSE__BODY_TOKEN_CHUNK) {
			fprintf(stderr,
			        "v4ctl: protocol error: unexpected reply to chat (body %d)\n",
			        (int)r->body_case);
			dp_proto_response_free(r);
			return DP_V4CTL_EXIT_PROTOCOL;
		}
		const Dualpath__V1__TokenChunk *tc = r->token_chunk;
		if (tc->chat)
			show(ch, tc->chat);
		fflush(stdout);
		if (tc->finish == DUALPATH__V1__FINISH_REASON__FINISH_NONE) {
			dp_proto_response_free(r);
			continue;
		}
		end_reasoning(ch);
		if (!ch->line_start)
			fputc('\n', stdout);
		if (tc->chat && tc->chat->malformed)
			fprintf(stderr, "v4ctl: the reply held a tool call that did not parse "
			                "(shown as text)\n");
		if (tc->usage)
			fprintf(
			    stderr,
			    "v4ctl: prompt %u tokens (%u cached), generated %u, position %" PRIu64
			    "\n",
			    tc->usage->prompt_tokens, tc->usage->cached_tokens,
			    tc->usage->generated_tokens, tc->position);
		Dualpath__V1__FinishReason fin = tc->finish;
		dp_proto_response_free(r);
		fflush(stdout);
		if (fin == DUALPATH__V1__FINISH_REASON__FINISH_CANCELLED) {
			fprintf(stderr, "v4ctl: the daemon cancelled the reply\n");
			return DP_V4CTL_EXIT_DAEMON_ERROR;
		}
		return DP_V4CTL_EXIT_OK;
	}
}

static int close_session(struct dp_v4ctl *ctl, struct dp_client *c, const struct chat *ch)
{
	Dualpath__V1__Request req = DUALPATH__V1__REQUEST__INIT;
	Dualpath__V1__CloseSession cs = DUALPATH__V1__CLOSE_SESSION__INIT;
	Dualpath__V1__Response *r;

	cs.session_id = (char *)ch->session;
	cs.persist = ch->persist;
	req.body_case = DUALPATH__V1__REQUEST__BODY_CLOSE_SESSION;
	req.close_session = &cs;
	int ret = dp_v4ctl_call(ctl, c, &req, DUALPATH__V1__RESPONSE__BODY_ACK, &r);
	if (ret == DP_V4CTL_EXIT_OK)
		dp_proto_response_free(r);
	return ret;
}

int dp_v4ctl_chat(struct dp_v4ctl *ctl, int argc, char **argv)
{
	struct chat ch = {0};
	struct dp_client *c = NULL;
	char *line = NULL;
	size_t cap = 0;
	ssize_t n;
	bool first = true;
	int ret;

	if (parse(ctl, &ch, argc, argv) < 0)
		return DP_V4CTL_EXIT_USAGE;
	ch.tty = isatty(STDOUT_FILENO);
	if ((ret = dp_v4ctl_open(ctl, &c)) != DP_V4CTL_EXIT_OK)
		return ret;
	while ((n = getline(&line, &cap, stdin)) >= 0) {
		while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
			line[--n] = '\0';
		if (n == 0)
			continue;
		if ((ret = turn(ctl, c, &ch, line, first)) != DP_V4CTL_EXIT_OK)
			break;
		first = false;
	}
	free(line);
	if (!first && !ch.keep) {
		int r = close_session(ctl, c, &ch);
		if (ret == DP_V4CTL_EXIT_OK)
			ret = r;
	} else if (!first) {
		fprintf(stderr, "v4ctl: session %s left open\n", ch.session);
	}
	dp_client_free(c);
	return ret;
}
