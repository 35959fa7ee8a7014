/* SPDX-License-Identifier: MIT */
/*
 * chat/request.c — an OpenAI-style chat request checked and normalized:
 * the thinking controls resolved, content parts joined, tool results
 * matched to their calls, request tools and response_format attached to the
 * first system message. The conventions are docs/DESIGN.md's "Chat format";
 * scripts/chat/gen-chat-parity.py applies the same ones in Python before
 * handing a conversation to encoding_dsv4.py.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat/render-internal.h"

int chat_bad(struct dp_chat_error *err, int rc, const char *param, const char *fmt, ...)
{
	if (err) {
		snprintf(err->param, sizeof(err->param), "%s", param);
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(err->message, sizeof(err->message), fmt, ap);
		va_end(ap);
	}
	return rc;
}

struct chat_msg *chat_req_push(struct chat_req *req)
{
	if (req->n == req->cap) {
		size_t cap = req->cap ? 2 * req->cap : 8;
		struct chat_msg *m = realloc(req->msgs, cap * sizeof(*m));
		if (!m)
			return NULL;
		req->msgs = m;
		req->cap = cap;
	}
	struct chat_msg *m = &req->msgs[req->n++];
	*m = (struct chat_msg){0};
	return m;
}

void chat_req_fini(struct chat_req *req)
{
	for (size_t i = 0; i < req->n; i++) {
		struct chat_msg *m = &req->msgs[i];
		free(m->content);
		for (size_t k = 0; k < m->n_blocks; k++)
			free(m->blocks[k].text);
		free(m->blocks);
	}
	free(req->msgs);
	*req = (struct chat_req){0};
}

static const char *const ROLES[CHAT_ROLE_MAX] = {
    [CHAT_SYSTEM] = "system",       [CHAT_USER] = "user", [CHAT_ASSISTANT] = "assistant",
    [CHAT_DEVELOPER] = "developer", [CHAT_TOOL] = "tool",
};

/* ---- thinking controls -------------------------------------------------- */

/* A bool control that may be absent or null; -EINVAL if of another type. */
static int opt_bool(const json_t *obj, const char *key, const char *param, int *val,
                    struct dp_chat_error *err)
{
	const json_t *v = obj ? json_object_get(obj, key) : NULL;
	if (!v || json_is_null(v))
		return 0;
	if (!json_is_boolean(v))
		return chat_bad(err, -EINVAL, param, "must be true or false");
	*val = json_is_true(v);
	return 1;
}

/* reasoning_effort as SERVING.md maps it: none -> chat mode; minimal/low ->
 * no paragraph; medium/high/xhigh -> high; max -> max. */
static int effort_parse(const char *s, const char *param, struct chat_req *req, bool *chat,
                        struct dp_chat_error *err)
{
	if (!strcmp(s, "none")) {
		*chat = true;
		req->effort = DP_CHAT_EFFORT_NONE;
	} else if (!strcmp(s, "minimal") || !strcmp(s, "low")) {
		req->effort = DP_CHAT_EFFORT_NONE;
	} else if (!strcmp(s, "medium") || !strcmp(s, "high") || !strcmp(s, "xhigh")) {
		req->effort = DP_CHAT_EFFORT_HIGH;
	} else if (!strcmp(s, "max")) {
		req->effort = DP_CHAT_EFFORT_MAXIMUM;
	} else {
		return chat_bad(err, -EINVAL, param,
		                "unknown reasoning effort '%.40s' (none, minimal, low, medium, "
		                "high, xhigh or max)",
		                s);
	}
	return 0;
}

static int controls_parse(const json_t *rq, struct chat_req *req, struct dp_chat_error *err)
{
	const json_t *ctk = json_object_get(rq, "chat_template_kwargs");
	if (ctk && json_is_null(ctk))
		ctk = NULL;
	if (ctk && !json_is_object(ctk))
		return chat_bad(err, -EINVAL, "chat_template_kwargs", "must be an object");

	int thinking = -1, enable = -1, drop = 1;
	int rc;
	if ((rc = opt_bool(ctk, "thinking", "chat_template_kwargs.thinking", &thinking, err)) < 0 ||
	    (rc = opt_bool(ctk, "enable_thinking", "chat_template_kwargs.enable_thinking", &enable,
	                   err)) < 0 ||
	    (rc = opt_bool(ctk, "drop_thinking", "chat_template_kwargs.drop_thinking", &drop,
	                   err)) < 0)
		return rc;
	req->drop_thinking = drop;

	/* Thinking is on unless a control turns it off. vLLM's keys first
	 * (either one true turns it on), then DeepSeek's, then Ollama's. */
	bool on = true;
	const char *think_effort = NULL;
	const json_t *th = json_object_get(rq, "thinking");
	const json_t *ol = json_object_get(rq, "think");
	if (thinking >= 0 || enable >= 0) {
		on = thinking == 1 || enable == 1;
	} else if (th && !json_is_null(th)) {
		const json_t *type = json_is_object(th) ? json_object_get(th, "type") : NULL;
		if (!json_is_string(type))
			return chat_bad(err, -EINVAL, "thinking.type",
			                "must be \"enabled\" or \"disabled\"");
		if (!strcmp(json_string_value(type), "enabled"))
			on = true;
		else if (!strcmp(json_string_value(type), "disabled"))
			on = false;
		else
			return chat_bad(err, -EINVAL, "thinking.type",
			                "must be \"enabled\" or \"disabled\", not '%.40s'",
			                json_string_value(type));
	} else if (ol && !json_is_null(ol)) {
		if (json_is_boolean(ol)) {
			on = json_is_true(ol);
		} else if (json_is_string(ol) && (!strcmp(json_string_value(ol), "high") ||
		                                  !strcmp(json_string_value(ol), "medium") ||
		                                  !strcmp(json_string_value(ol), "low"))) {
			think_effort = json_string_value(ol);
		} else {
			return chat_bad(err, -EINVAL, "think",
			                "must be true, false, \"high\", \"medium\" or \"low\"");
		}
	}

	req->effort = on ? DP_CHAT_EFFORT_HIGH : DP_CHAT_EFFORT_NONE;
	bool chat = false;
	const json_t *eff = json_object_get(rq, "reasoning_effort");
	const char *param = "reasoning_effort";
	if (!eff || json_is_null(eff)) {
		eff = ctk ? json_object_get(ctk, "reasoning_effort") : NULL;
		param = "chat_template_kwargs.reasoning_effort";
	}
	if (eff && !json_is_null(eff)) {
		if (!json_is_string(eff))
			return chat_bad(err, -EINVAL, param, "must be a string");
		if ((rc = effort_parse(json_string_value(eff), param, req, &chat, err)) < 0)
			return rc;
	} else if (think_effort) {
		if ((rc = effort_parse(think_effort, "think", req, &chat, err)) < 0)
			return rc;
	}
	req->mode = on && !chat ? DP_CHAT_MODE_THINKING : DP_CHAT_MODE_CHAT;
	return 0;
}

/* ---- messages ----------------------------------------------------------- */

/* content as one string: a string as it is, text parts joined by sep, null or
 * absent as NULL. */
static int content_text(const json_t *msg, size_t i, const char *sep, struct chat_msg *m,
                        struct dp_chat_error *err)
{
	char param[96];
	snprintf(param, sizeof(param), "messages[%zu].content", i);
	const json_t *c = json_object_get(msg, "content");
	if (!c || json_is_null(c))
		return 0;
	struct chat_buf b = {0};
	if (json_is_string(c)) {
		chat_buf_add(&b, json_string_value(c), json_string_length(c));
	} else if (json_is_array(c)) {
		chat_buf_add(&b, "", 0);
		for (size_t k = 0; k < json_array_size(c); k++) {
			const json_t *part = json_array_get(c, k);
			const json_t *type = json_object_get(part, "type");
			const json_t *text = json_object_get(part, "text");
			char pp[128];
			snprintf(pp, sizeof(pp), "%s[%zu]", param, k);
			int rc = 0;
			if (!json_is_object(part))
				rc = chat_bad(err, -EINVAL, pp, "must be a content part object");
			else if (!json_is_string(type))
				rc = chat_bad(err, -EINVAL, pp, "needs a string \"type\"");
			else if (strcmp(json_string_value(type), "text") != 0)
				rc = chat_bad(err, -ENOTSUP, pp,
				              "only text parts are supported, not '%.40s'",
				              json_string_value(type));
			else if (!json_is_string(text))
				rc = chat_bad(err, -EINVAL, pp,
				              "a text part needs a string \"text\"");
			if (rc) {
				chat_buf_fini(&b);
				return rc;
			}
			if (k)
				chat_buf_adds(&b, sep);
			chat_buf_add(&b, json_string_value(text), json_string_length(text));
		}
	} else {
		return chat_bad(err, -EINVAL, param,
		                "must be a string, an array of text parts or null");
	}
	if (b.oom) {
		chat_buf_fini(&b);
		return -ENOMEM;
	}
	m->content = b.p;
	m->content_len = b.len;
	return 0;
}

static int opt_string(const json_t *msg, const char *key, size_t i, const char **s, size_t *len,
                      struct dp_chat_error *err)
{
	const json_t *v = json_object_get(msg, key);
	if (!v || json_is_null(v))
		return 0;
	if (!json_is_string(v)) {
		char param[96];
		snprintf(param, sizeof(param), "messages[%zu].%s", i, key);
		return chat_bad(err, -EINVAL, param, "must be a string or null");
	}
	*s = json_string_value(v);
	*len = json_string_length(v);
	return 1;
}

static int tool_calls_check(const json_t *msg, size_t i, struct chat_msg *m,
                            struct dp_chat_error *err)
{
	char param[128];
	const json_t *tcs = json_object_get(msg, "tool_calls");
	if (!tcs || json_is_null(tcs))
		return 0;
	snprintf(param, sizeof(param), "messages[%zu].tool_calls", i);
	if (!json_is_array(tcs))
		return chat_bad(err, -EINVAL, param, "must be an array");
	for (size_t k = 0; k < json_array_size(tcs); k++) {
		const json_t *tc = json_array_get(tcs, k);
		const json_t *fn = json_object_get(tc, "function");
		const json_t *id = json_object_get(tc, "id");
		const json_t *type = json_object_get(tc, "type");
		snprintf(param, sizeof(param), "messages[%zu].tool_calls[%zu]", i, k);
		if (!json_is_object(tc))
			return chat_bad(err, -EINVAL, param, "must be an object");
		size_t at = strlen(param);
		if (id && !json_is_null(id) && !json_is_string(id)) {
			snprintf(param + at, sizeof(param) - at, ".id");
			return chat_bad(err, -EINVAL, param, "must be a string");
		}
		if (type && !json_is_null(type) &&
		    (!json_is_string(type) || strcmp(json_string_value(type), "function") != 0)) {
			snprintf(param + at, sizeof(param) - at, ".type");
			return chat_bad(err, -EINVAL, param, "must be \"function\"");
		}
		if (!json_is_object(fn)) {
			snprintf(param + at, sizeof(param) - at, ".function");
			return chat_bad(err, -EINVAL, param, "must be an object");
		}
		if (!json_is_string(json_object_get(fn, "name"))) {
			snprintf(param + at, sizeof(param) - at, ".function.name");
			return chat_bad(err, -EINVAL, param, "must be a string");
		}
		if (!json_is_string(json_object_get(fn, "arguments"))) {
			snprintf(param + at, sizeof(param) - at, ".function.arguments");
			return chat_bad(err, -EINVAL, param, "must be a string (JSON text)");
		}
	}
	if (json_array_size(tcs))
		m->tool_calls = tcs;
	return 0;
}

static int id_cmp(const void *a, const void *b)
{
	const struct chat_id *x = a, *y = b;
	int c = strcmp(x->id, y->id);
	return c ? c : (x->at > y->at) - (x->at < y->at);
}

int chat_ids_build(const json_t *calls, struct chat_ids *ids)
{
	chat_ids_fini(ids);
	size_t n = json_array_size(calls);
	if (!n)
		return 0;
	if (!(ids->v = malloc(n * sizeof(ids->v[0]))))
		return -ENOMEM;
	for (size_t k = 0; k < n; k++) {
		const json_t *v = json_object_get(json_array_get(calls, k), "id");
		if (json_is_string(v) && json_string_length(v))
			ids->v[ids->n++] = (struct chat_id){json_string_value(v), k};
	}
	qsort(ids->v, ids->n, sizeof(ids->v[0]), id_cmp);
	/* keep the last of each id: a dict built in order keeps the last */
	size_t w = 0;
	for (size_t r = 0; r < ids->n; r++) {
		if (w && !strcmp(ids->v[w - 1].id, ids->v[r].id))
			w--;
		ids->v[w++] = ids->v[r];
	}
	ids->n = w;
	return 0;
}

long chat_ids_find(const struct chat_ids *ids, const char *id)
{
	size_t lo = 0, hi = ids->n;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		int c = strcmp(ids->v[mid].id, id);
		if (c == 0)
			return (long)ids->v[mid].at;
		if (c < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return -1;
}

void chat_ids_fini(struct chat_ids *ids)
{
	free(ids->v);
	*ids = (struct chat_ids){0};
}

static int message_parse(const json_t *msg, size_t i, struct chat_ids *last_calls,
                         struct chat_req *req, struct dp_chat_error *err)
{
	char param[96];
	snprintf(param, sizeof(param), "messages[%zu]", i);
	if (!json_is_object(msg))
		return chat_bad(err, -EINVAL, param, "must be an object");
	snprintf(param, sizeof(param), "messages[%zu].role", i);
	const json_t *role = json_object_get(msg, "role");
	if (!json_is_string(role))
		return chat_bad(err, -EINVAL, param, "must be a string");
	enum chat_role r = CHAT_ROLE_MAX;
	for (int k = 0; k < CHAT_ROLE_MAX; k++)
		if (!strcmp(json_string_value(role), ROLES[k]))
			r = (enum chat_role)k;
	if (r == CHAT_ROLE_MAX)
		return chat_bad(err, -EINVAL, param,
		                "unknown role '%.40s' (system, user, assistant, tool or developer)",
		                json_string_value(role));

	struct chat_msg *m = chat_req_push(req);
	if (!m)
		return -ENOMEM;
	m->role = r;
	m->src = i;
	int rc = content_text(msg, i, r == CHAT_TOOL ? "\n\n" : "\n", m, err);
	if (rc < 0)
		return rc;
	snprintf(param, sizeof(param), "messages[%zu].content", i);
	switch (r) {
	case CHAT_DEVELOPER:
		if (!m->content_len)
			return chat_bad(err, -EINVAL, param, "a developer message needs content");
		break;
	case CHAT_ASSISTANT:
		rc = opt_string(msg, "reasoning_content", i, &m->reasoning, &m->reasoning_len, err);
		if (rc == 0)
			rc = opt_string(msg, "reasoning", i, &m->reasoning, &m->reasoning_len, err);
		if (rc < 0)
			return rc;
		if ((rc = tool_calls_check(msg, i, m, err)) < 0)
			return rc;
		if (m->tool_calls && (rc = chat_ids_build(m->tool_calls, last_calls)) < 0)
			return rc;
		break;
	case CHAT_TOOL: {
		if (!m->content)
			return chat_bad(err, -EINVAL, param, "a tool message needs content");
		size_t len;
		snprintf(param, sizeof(param), "messages[%zu].tool_call_id", i);
		if (opt_string(msg, "tool_call_id", i, &m->tool_call_id, &len, err) <= 0)
			return chat_bad(err, -EINVAL, param, "must be a string");
		if (chat_ids_find(last_calls, m->tool_call_id) < 0)
			return chat_bad(err, -EINVAL, param,
			                "no earlier assistant tool call has the id '%.60s'",
			                m->tool_call_id);
		break;
	}
	default:
		break;
	}
	return 0;
}

static int tools_parse(const json_t *rq, const json_t **tools, const json_t **rf,
                       struct dp_chat_error *err)
{
	const json_t *t = json_object_get(rq, "tools");
	if (t && !json_is_null(t)) {
		if (!json_is_array(t))
			return chat_bad(err, -EINVAL, "tools", "must be an array");
		for (size_t k = 0; k < json_array_size(t); k++) {
			const json_t *tool = json_array_get(t, k);
			const json_t *type = json_object_get(tool, "type");
			const json_t *fn = json_object_get(tool, "function");
			char param[64];
			snprintf(param, sizeof(param), "tools[%zu]", k);
			if (!json_is_object(tool))
				return chat_bad(err, -EINVAL, param, "must be an object");
			if (type && !json_is_null(type) &&
			    (!json_is_string(type) ||
			     strcmp(json_string_value(type), "function") != 0))
				return chat_bad(err, -EINVAL, param,
				                "only \"function\" tools exist");
			if (!json_is_object(fn) || !json_is_string(json_object_get(fn, "name")))
				return chat_bad(
				    err, -EINVAL, param,
				    "needs a \"function\" object with a string \"name\"");
		}
		if (json_array_size(t))
			*tools = t;
	}
	const json_t *r = json_object_get(rq, "response_format");
	if (r && !json_is_null(r)) {
		if (!json_is_object(r))
			return chat_bad(err, -EINVAL, "response_format", "must be an object");
		const json_t *type = json_object_get(r, "type");
		if (type && !json_is_string(type))
			return chat_bad(err, -EINVAL, "response_format.type", "must be a string");
		/* {"type": "text"} asks for nothing; {} is nothing to show. */
		if (json_object_size(r) && !(type && !strcmp(json_string_value(type), "text")))
			*rf = r;
	}
	return 0;
}

int chat_req_parse(const json_t *rq, struct chat_req *req, struct dp_chat_error *err)
{
	*req = (struct chat_req){0};
	if (!json_is_object(rq))
		return chat_bad(err, -EINVAL, "", "the request must be a JSON object");
	int rc = controls_parse(rq, req, err);
	const json_t *tools = NULL, *rf = NULL;
	if (rc == 0)
		rc = tools_parse(rq, &tools, &rf, err);
	if (rc < 0)
		return rc;
	const json_t *msgs = json_object_get(rq, "messages");
	if (!json_is_array(msgs))
		return chat_bad(err, -EINVAL, "messages", "must be an array");
	if (!json_array_size(msgs))
		return chat_bad(err, -EINVAL, "messages", "must not be empty");

	struct chat_ids last_calls = {0};
	for (size_t i = 0; i < json_array_size(msgs); i++) {
		rc = message_parse(json_array_get(msgs, i), i, &last_calls, req, err);
		if (rc < 0) {
			chat_ids_fini(&last_calls);
			chat_req_fini(req);
			return rc;
		}
	}
	chat_ids_fini(&last_calls);

	req->has_tools = tools != NULL;
	if (tools || rf) {
		size_t s = 0;
		while (s < req->n && req->msgs[s].role != CHAT_SYSTEM)
			s++;
		if (s == req->n) {
			if (!chat_req_push(req)) {
				chat_req_fini(req);
				return -ENOMEM;
			}
			memmove(&req->msgs[1], &req->msgs[0], (req->n - 1) * sizeof(req->msgs[0]));
			req->msgs[0] = (struct chat_msg){.role = CHAT_SYSTEM, .src = 0};
			s = 0;
		}
		req->msgs[s].tools = tools;
		req->msgs[s].response_format = rf;
	}
	return 0;
}

enum dp_chat_format dp_chat_format_for_model_type(const char *model_type)
{
	return model_type && !strcmp(model_type, "deepseek_v4") ? DP_CHAT_FORMAT_V4
	                                                        : DP_CHAT_FORMAT_PLAIN;
}

int dp_chat_render(enum dp_chat_format format, const json_t *request, struct dp_chat_prompt *ret,
                   struct dp_chat_error *err)
{
	if (err)
		*err = (struct dp_chat_error){0};
	if (!request || !ret || format < 0 || format >= DP_CHAT_FORMAT_MAX)
		return -EINVAL;
	struct chat_req req;
	int rc = chat_req_parse(request, &req, err);
	if (rc < 0)
		return rc;
	struct chat_buf out = {0};
	chat_buf_add(&out, "", 0);
	rc = format == DP_CHAT_FORMAT_V4 ? chat_render_v4(&req, &out, err)
	                                 : chat_render_plain(&req, &out, err);
	if (rc == 0 && out.oom)
		rc = -ENOMEM;
	if (rc == 0) {
		*ret = (struct dp_chat_prompt){
		    .text = out.p,
		    .len = out.len,
		    .mode = format == DP_CHAT_FORMAT_V4 ? req.mode : DP_CHAT_MODE_CHAT,
		    .effort = req.effort,
		    .has_tools = req.has_tools,
		};
	} else {
		chat_buf_fini(&out);
	}
	chat_req_fini(&req);
	return rc;
}

int dp_chat_render_text(enum dp_chat_format format, const char *json, size_t len,
                        struct dp_chat_prompt *ret, struct dp_chat_error *err)
{
	if (err)
		*err = (struct dp_chat_error){0};
	if (!json || !ret)
		return -EINVAL;
	json_error_t je;
	json_t *rq = json_loadb(json, len, JSON_ALLOW_NUL, &je);
	if (!rq)
		return chat_bad(err, -EINVAL, "", "bad JSON at line %d column %d: %s", je.line,
		                je.column, je.text);
	int rc = dp_chat_render(format, rq, ret, err);
	json_decref(rq);
	return rc;
}

void dp_chat_prompt_fini(struct dp_chat_prompt *prompt)
{
	if (!prompt)
		return;
	free(prompt->text);
	*prompt = (struct dp_chat_prompt){0};
}
