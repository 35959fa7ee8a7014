/* SPDX-License-Identifier: MIT */
/*
 * chat/render-v4.c — a chat request rendered as encoding_dsv4.py's
 * encode_messages() renders it.
 *
 * The steps follow the Python so that a reader can hold one beside the other:
 * the request's messages are checked and normalized (content parts joined,
 * tools attached to the first system message), tool messages are merged into
 * user turns (merge_tool_messages), tool results ordered by the assistant's
 * call ids (sort_tool_results_by_call_order), earlier reasoning and developer
 * turns dropped (_drop_thinking_messages), then each message rendered
 * (render_message). Every index-dependent rule (the effort paragraph at index
 * 0, "after the last user message") is evaluated on the list as it stands
 * after the same steps, as in the Python.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat/chat-internal.h"
#include "chat/render-internal.h"

#define BOS       "<｜begin▁of▁sentence｜>"
#define EOS       "<｜end▁of▁sentence｜>"
#define USER      "<｜User｜>"
#define ASSISTANT "<｜Assistant｜>"
#define THINK     "<think>"
#define THINK_END "</think>"
#define DSML      "｜DSML｜"

/* TOOLS_TEMPLATE, formatted, up to and after {tool_schemas} */
static const char TOOLS_HEAD[] =
    "## Tools\n"
    "\n"
    "You have access to a set of tools to help answer the user's question. You can invoke tools by "
    "writing a \"<｜DSML｜tool_calls>\" block like the following:\n"
    "\n"
    "<｜DSML｜tool_calls>\n"
    "<｜DSML｜invoke name=\"$TOOL_NAME\">\n"
    "<｜DSML｜parameter name=\"$PARAMETER_NAME\" "
    "string=\"true|false\">$PARAMETER_VALUE</｜DSML｜parameter>\n"
    "...\n"
    "</｜DSML｜invoke>\n"
    "<｜DSML｜invoke name=\"$TOOL_NAME2\">\n"
    "...\n"
    "</｜DSML｜invoke>\n"
    "</｜DSML｜tool_calls>\n"
    "\n"
    "String parameters should be specified as is and set `string=\"true\"`. For all other types "
    "(numbers, booleans, arrays, objects), pass the value in JSON format and set "
    "`string=\"false\"`.\n"
    "\n"
    "If thinking_mode is enabled (triggered by <think>), you MUST output your complete reasoning "
    "inside <think>...</think> BEFORE any tool calls or final response.\n"
    "\n"
    "Otherwise, output directly after </think> with tool calls or final response.\n"
    "\n"
    "### Available Tool Schemas\n"
    "\n";
static const char TOOLS_TAIL[] = "\n"
                                 "\n"
                                 "You MUST strictly follow the above defined tool name and "
                                 "parameter schemas to invoke tool calls.\n";

/* REASONING_EFFORT_MAX */
static const char EFFORT_MAX[] =
    "Reasoning Effort: Absolute maximum with no shortcuts permitted.\n"
    "You MUST be very thorough in your thinking and comprehensively decompose the problem to "
    "resolve the root cause, rigorously stress-testing your logic against all potential paths, "
    "edge cases, and adversarial scenarios.\n"
    "Explicitly write out your entire deliberation process, documenting every intermediate step, "
    "considered alternative, and rejected hypothesis to ensure absolutely no assumption is left "
    "unchecked.\n"
    "\n";

/* ---- merge_tool_messages, sort_tool_results_by_call_order --------------- */

static int block_add(struct chat_msg *u, struct chat_block blk)
{
	if (u->n_blocks == u->cap_blocks) {
		size_t cap = u->cap_blocks ? 2 * u->cap_blocks : 4;
		struct chat_block *b = realloc(u->blocks, cap * sizeof(*b));
		if (!b)
			return -ENOMEM;
		u->blocks = b;
		u->cap_blocks = cap;
	}
	u->blocks[u->n_blocks++] = blk;
	u->has_blocks = true;
	return 0;
}

/* Tool results and user texts become blocks of user turns: a run of user and
 * tool messages is one turn, as merge_tool_messages makes it. Ownership of
 * the content moves from req to out. */
static int merge(struct chat_req *req, struct chat_req *out)
{
	for (size_t i = 0; i < req->n; i++) {
		struct chat_msg *m = &req->msgs[i];
		if (m->role != CHAT_USER && m->role != CHAT_TOOL) {
			struct chat_msg *d = chat_req_push(out);
			if (!d)
				return -ENOMEM;
			*d = *m;
			m->content = NULL;
			continue;
		}
		struct chat_block blk = {
		    .tool = m->role == CHAT_TOOL,
		    .text = m->content,
		    .len = m->content_len,
		    .tool_id = m->tool_call_id,
		};
		if (!blk.text && !(blk.text = strdup("")))
			return -ENOMEM;
		m->content = NULL;
		struct chat_msg *u = out->n ? &out->msgs[out->n - 1] : NULL;
		if (!u || u->role != CHAT_USER || !u->has_blocks) {
			if (!(u = chat_req_push(out))) {
				free(blk.text);
				return -ENOMEM;
			}
			u->role = CHAT_USER;
			u->src = m->src;
		}
		if (block_add(u, blk) < 0) {
			free(blk.text);
			return -ENOMEM;
		}
	}
	return 0;
}

struct keyed {
	long key; /* the call's index; 0 for an id the calls lack, as .get(id, 0) */
	size_t pos;
	struct chat_block blk;
};

static int keyed_cmp(const void *a, const void *b)
{
	const struct keyed *x = a, *y = b;
	if (x->key != y->key)
		return (x->key > y->key) - (x->key < y->key);
	return (x->pos > y->pos) - (x->pos < y->pos); /* stable, as sorted() is */
}

/* sort_tool_results_by_call_order: in each user turn, the tool results take
 * the order of the latest assistant's calls; text blocks keep their places. */
static int sort_results(struct chat_req *req)
{
	struct chat_ids ids = {0};
	struct keyed *tmp = NULL;
	int rc = 0;
	for (size_t i = 0; i < req->n && rc == 0; i++) {
		struct chat_msg *m = &req->msgs[i];
		if (m->role == CHAT_ASSISTANT && m->tool_calls) {
			rc = chat_ids_build(m->tool_calls, &ids);
			continue;
		}
		if (m->role != CHAT_USER || !ids.n)
			continue;
		size_t n = 0;
		struct keyed *t = realloc(tmp, m->n_blocks * sizeof(*t));
		if (!t) {
			rc = -ENOMEM;
			break;
		}
		tmp = t;
		for (size_t k = 0; k < m->n_blocks; k++) {
			if (!m->blocks[k].tool)
				continue;
			long at = chat_ids_find(&ids, m->blocks[k].tool_id);
			tmp[n] = (struct keyed){at < 0 ? 0 : at, n, m->blocks[k]};
			n++;
		}
		if (n < 2)
			continue;
		qsort(tmp, n, sizeof(*tmp), keyed_cmp);
		for (size_t k = 0, j = 0; k < m->n_blocks; k++)
			if (m->blocks[k].tool)
				m->blocks[k] = tmp[j++].blk;
	}
	free(tmp);
	chat_ids_fini(&ids);
	return rc;
}

static long last_user_index(const struct chat_req *req)
{
	for (size_t i = req->n; i-- > 0;)
		if (req->msgs[i].role == CHAT_USER || req->msgs[i].role == CHAT_DEVELOPER)
			return (long)i;
	return -1;
}

/* _drop_thinking_messages: before the last user turn, assistant turns lose
 * their reasoning and developer turns go. */
static void drop_thinking(struct chat_req *req)
{
	long last = last_user_index(req);
	size_t n = 0;
	for (size_t i = 0; i < req->n; i++) {
		struct chat_msg *m = &req->msgs[i];
		if (m->role == CHAT_DEVELOPER && (long)i < last) {
			free(m->content);
			continue;
		}
		if (m->role == CHAT_ASSISTANT && (long)i < last)
			m->reasoning = NULL;
		req->msgs[n++] = *m;
	}
	req->n = n;
}

/* ---- render_message ------------------------------------------------------ */

static void tools_render(struct chat_buf *b, const json_t *tools)
{
	chat_buf_adds(b, TOOLS_HEAD);
	for (size_t k = 0; k < json_array_size(tools); k++) {
		if (k)
			chat_buf_add(b, "\n", 1);
		chat_py_dumps(b, json_object_get(json_array_get(tools, k), "function"));
	}
	chat_buf_adds(b, TOOLS_TAIL);
}

static void extras_render(struct chat_buf *b, const struct chat_msg *m)
{
	if (m->tools) {
		chat_buf_adds(b, "\n\n");
		tools_render(b, m->tools);
	}
	if (m->response_format) {
		chat_buf_adds(b, "\n\n## Response Format:\n\nYou MUST strictly adhere to the "
		                 "following schema to reply:\n");
		chat_py_dumps(b, m->response_format);
	}
}

/* encode_arguments_to_dsml: the arguments' JSON object as one parameter a
 * key; arguments that are not JSON become the one string parameter
 * "arguments". */
static int arguments_render(struct chat_buf *b, const json_t *fn, const char *param,
                            struct dp_chat_error *err)
{
	const json_t *a = json_object_get(fn, "arguments");
	const char *raw = json_string_value(a);
	size_t raw_len = json_string_length(a);
	json_error_t je;
	json_t *args = json_loadb(raw, raw_len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &je);
	bool stand_ins = false;
	if (!args) {
		/* Numbers Python reads and jansson cannot hold go to jansson
		 * as stand-ins (chat-internal.h); what is still beyond it (lone
		 * surrogates, nesting past 2048) is refused rather than
		 * rendered differently. */
		struct chat_buf re = {0};
		int r = chat_py_json_stand_ins(raw, raw_len, &re);
		if (re.oom) {
			chat_buf_fini(&re);
			return -ENOMEM;
		}
		if (r > 0)
			args = json_loadb(re.p, re.len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &je);
		stand_ins = args != NULL;
		chat_buf_fini(&re);
		if (r != 0 && !args)
			return chat_bad(err, -ENOTSUP, param,
			                "JSON this renderer cannot reproduce exactly (%s)",
			                r < 0 ? "it holds dualpath's number marker" : je.text);
	}
	if (!args) { /* not JSON to Python either: one string parameter */
		chat_buf_adds(b, "<" DSML "parameter name=\"arguments\" string=\"true\">");
		chat_buf_add(b, raw, raw_len);
		chat_buf_adds(b, "</" DSML "parameter>");
		return 0;
	}
	if (!json_is_object(args)) {
		json_decref(args);
		return chat_bad(err, -EINVAL, param, "must be a JSON object");
	}
	bool first = true;
	for (void *it = json_object_iter(args); it; it = json_object_iter_next(args, it)) {
		const json_t *v = json_object_iter_value(it);
		const char *lit;
		size_t lit_len;
		bool str = json_is_string(v) && !(stand_ins && chat_py_stand_in(v, &lit, &lit_len));
		if (!first)
			chat_buf_add(b, "\n", 1);
		first = false;
		chat_buf_adds(b, "<" DSML "parameter name=\"");
		chat_buf_add(b, json_object_iter_key(it), json_object_iter_key_len(it));
		chat_buf_adds(b, str ? "\" string=\"true\">" : "\" string=\"false\">");
		if (str)
			chat_buf_add(b, json_string_value(v), json_string_length(v));
		else if (stand_ins)
			chat_py_dumps_stand_ins(b, v);
		else
			chat_py_dumps(b, v);
		chat_buf_adds(b, "</" DSML "parameter>");
	}
	json_decref(args);
	return 0;
}

static int tool_calls_render(struct chat_buf *b, const struct chat_msg *m,
                             struct dp_chat_error *err)
{
	chat_buf_adds(b, "\n\n<" DSML "tool_calls>\n");
	for (size_t k = 0; k < json_array_size(m->tool_calls); k++) {
		const json_t *fn = json_object_get(json_array_get(m->tool_calls, k), "function");
		const json_t *name = json_object_get(fn, "name");
		char param[128];
		snprintf(param, sizeof(param), "messages[%zu].tool_calls[%zu].function.arguments",
		         m->src, k);
		if (k)
			chat_buf_add(b, "\n", 1);
		chat_buf_adds(b, "<" DSML "invoke name=\"");
		chat_buf_add(b, json_string_value(name), json_string_length(name));
		chat_buf_adds(b, "\">\n");
		int rc = arguments_render(b, fn, param, err);
		if (rc < 0)
			return rc;
		chat_buf_adds(b, "\n</" DSML "invoke>");
	}
	chat_buf_adds(b, "\n</" DSML "tool_calls>");
	return 0;
}

static int message_render(const struct chat_req *req, size_t i, bool drop, long last_user,
                          struct chat_buf *b, struct dp_chat_error *err)
{
	const struct chat_msg *m = &req->msgs[i];
	bool thinking = req->mode == DP_CHAT_MODE_THINKING;
	if (i == 0 && thinking && req->effort == DP_CHAT_EFFORT_MAXIMUM)
		chat_buf_adds(b, EFFORT_MAX);

	switch (m->role) {
	case CHAT_SYSTEM:
		chat_buf_add(b, m->content, m->content_len);
		extras_render(b, m);
		break;
	case CHAT_DEVELOPER:
		chat_buf_adds(b, USER);
		chat_buf_add(b, m->content, m->content_len);
		extras_render(b, m);
		break;
	case CHAT_USER:
		chat_buf_adds(b, USER);
		for (size_t k = 0; k < m->n_blocks; k++) {
			if (k)
				chat_buf_adds(b, "\n\n");
			if (m->blocks[k].tool)
				chat_buf_adds(b, "<tool_result>");
			chat_buf_add(b, m->blocks[k].text, m->blocks[k].len);
			if (m->blocks[k].tool)
				chat_buf_adds(b, "</tool_result>");
		}
		break;
	case CHAT_ASSISTANT:
		if (thinking && (!drop || (long)i > last_user)) {
			if (m->reasoning)
				chat_buf_add(b, m->reasoning, m->reasoning_len);
			chat_buf_adds(b, THINK_END);
		}
		if (m->content)
			chat_buf_add(b, m->content, m->content_len);
		if (m->tool_calls) {
			int rc = tool_calls_render(b, m, err);
			if (rc < 0)
				return rc;
		}
		chat_buf_adds(b, EOS);
		break;
	default:
		return -EINVAL; /* tool messages were merged */
	}

	/* What follows: a turn other than the assistant's needs nothing; the
	 * assistant's turn is opened after a user or developer turn. */
	if (i + 1 < req->n && req->msgs[i + 1].role != CHAT_ASSISTANT)
		return 0;
	if (m->role == CHAT_USER || m->role == CHAT_DEVELOPER) {
		chat_buf_adds(b, ASSISTANT);
		if (thinking && (!drop || (long)i >= last_user))
			chat_buf_adds(b, THINK);
		else
			chat_buf_adds(b, THINK_END);
	}
	return 0;
}

int chat_render_v4(struct chat_req *req, struct chat_buf *out, struct dp_chat_error *err)
{
	struct chat_req merged = {.mode = req->mode,
	                          .effort = req->effort,
	                          .drop_thinking = req->drop_thinking,
	                          .has_tools = req->has_tools};
	int rc = merge(req, &merged);
	if (rc < 0) {
		chat_req_fini(&merged);
		return rc;
	}
	if ((rc = sort_results(&merged)) < 0) {
		chat_req_fini(&merged);
		return rc;
	}
	/* Any tools offered keep every turn's reasoning (encode_messages). */
	bool drop = merged.drop_thinking && !merged.has_tools;
	if (merged.mode == DP_CHAT_MODE_THINKING && drop)
		drop_thinking(&merged);

	chat_buf_adds(out, BOS);
	long last_user = last_user_index(&merged);
	for (size_t i = 0; i < merged.n && rc == 0; i++)
		rc = message_render(&merged, i, drop, last_user, out, err);
	chat_req_fini(&merged);
	return rc;
}
