/* SPDX-License-Identifier: MIT */
/*
 * POST /v1/messages (Anthropic's Messages API, as Claude Code speaks it),
 * request side: the body becomes the OpenAI chat request the rest of the
 * front checks and model/conv.h renders, so the two APIs share one path.
 *
 *   system (string or text blocks)      -> a system message
 *   user text / tool_result blocks      -> user content / tool messages
 *   assistant text / thinking / tool_use -> content / reasoning_content /
 *                                           tool_calls (input as JSON text)
 *   tools {name, description, input_schema} -> function tools
 *   tool_choice auto/none/any/tool      -> auto/none/required/named
 *   thinking {type: enabled}            -> thinking on; absent: off (the
 *                                           Messages API's default)
 *   max_tokens (required), stop_sequences, temperature, top_p, top_k, stream
 *
 * Refusals name the field in the Messages API's terms.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/http-parse.h"

#define BAD(param, ...) dp_http_error_set(err, 400, "invalid_request_error", NULL, param, __VA_ARGS__)

/* text blocks (or a string) joined; NULL and a 400 for anything else */
static json_t *text_of(const json_t *c, const char *param, struct dp_http_error *err)
{
	if (json_is_string(c))
		return json_incref((json_t *)c);
	if (!json_is_array(c)) {
		BAD(param, "%s must be a string or an array of text blocks", param);
		return NULL;
	}
	json_t *out = json_string("");
	for (size_t i = 0; out && i < json_array_size(c); i++) {
		const json_t *b = json_array_get(c, i);
		const char *type = json_string_value(json_object_get(b, "type"));
		const json_t *t = json_object_get(b, "text");
		if (!type || strcmp(type, "text") || !json_is_string(t)) {
			json_decref(out);
			BAD(param, "%s[%zu] must be {\"type\": \"text\", \"text\": ...}", param, i);
			return NULL;
		}
		size_t a = json_string_length(out), n = json_string_length(t);
		char *joined = malloc(a + n + 1);
		if (!joined) {
			json_decref(out);
			dp_http_error_set(err, 500, "api_error", NULL, NULL, "out of memory");
			return NULL;
		}
		memcpy(joined, json_string_value(out), a);
		memcpy(joined + a, json_string_value(t), n);
		json_string_setn_nocheck(out, joined, a + n);
		free(joined);
	}
	return out;
}

static int user_message(json_t *msgs, const json_t *content, size_t i, struct dp_http_error *err)
{
	char param[64];
	snprintf(param, sizeof(param), "messages[%zu].content", i);
	if (json_is_string(content))
		return json_array_append_new(msgs, json_pack("{s:s, s:O}", "role", "user", "content",
							     content)) ? -ENOMEM : 0;
	if (!json_is_array(content))
		return BAD(param, "%s must be a string or an array of content blocks", param);
	json_t *text = json_array();
	for (size_t j = 0; j < json_array_size(content); j++) {
		const json_t *b = json_array_get(content, j);
		const char *type = json_string_value(json_object_get(b, "type"));
		if (type && !strcmp(type, "text") && json_is_string(json_object_get(b, "text"))) {
			json_array_append_new(text, json_pack("{s:s, s:O}", "type", "text", "text",
							      json_object_get(b, "text")));
		} else if (type && !strcmp(type, "tool_result")) {
			const char *id = json_string_value(json_object_get(b, "tool_use_id"));
			const json_t *c = json_object_get(b, "content");
			char p2[96];
			snprintf(p2, sizeof(p2), "%s[%zu].content", param, j);
			json_t *t = c ? text_of(c, p2, err) : json_string("");
			if (!id || !t) {
				json_decref(t);
				json_decref(text);
				return id ? -EINVAL
					  : BAD(param, "%s[%zu].tool_use_id must be a string", param, j);
			}
			json_array_append_new(msgs, json_pack("{s:s, s:s, s:o}", "role", "tool",
							      "tool_call_id", id, "content", t));
		} else {
			json_decref(text);
			return BAD(param, "%s[%zu]: block type %.40s is not supported (text, tool_result)",
				   param, j, type ? type : "(none)");
		}
	}
	int ret = json_array_size(text) ? json_array_append_new(msgs, json_pack("{s:s, s:o}", "role",
										"user", "content", text))
					: (json_decref(text), 0);
	return ret ? -ENOMEM : 0;
}

static int assistant_message(json_t *msgs, const json_t *content, size_t i,
			     struct dp_http_error *err)
{
	char param[64];
	snprintf(param, sizeof(param), "messages[%zu].content", i);
	if (json_is_string(content))
		return json_array_append_new(msgs, json_pack("{s:s, s:O}", "role", "assistant",
							     "content", content)) ? -ENOMEM : 0;
	if (!json_is_array(content))
		return BAD(param, "%s must be a string or an array of content blocks", param);
	json_t *m = json_pack("{s:s, s:s}", "role", "assistant", "content", "");
	json_t *calls = json_array();
	for (size_t j = 0; m && calls && j < json_array_size(content); j++) {
		const json_t *b = json_array_get(content, j);
		const char *type = json_string_value(json_object_get(b, "type"));
		const char *key = NULL, *field = NULL;
		if (type && !strcmp(type, "text"))
			key = "content", field = "text";
		else if (type && !strcmp(type, "thinking"))
			key = "reasoning_content", field = "thinking";
		if (key) {
			const json_t *t = json_object_get(b, field);
			if (!json_is_string(t)) {
				json_decref(m);
				json_decref(calls);
				return BAD(param, "%s[%zu].%s must be a string", param, j, field);
			}
			const json_t *had = json_object_get(m, key);
			json_t *joined = json_pack("s+", had ? json_string_value(had) : "",
						   json_string_value(t));
			json_object_set_new(m, key, joined);
		} else if (type && !strcmp(type, "tool_use")) {
			const char *id = json_string_value(json_object_get(b, "id"));
			const char *name = json_string_value(json_object_get(b, "name"));
			const json_t *input = json_object_get(b, "input");
			char *args = json_is_object(input) ? json_dumps(input, JSON_COMPACT) : NULL;
			if (!id || !name || !args) {
				free(args);
				json_decref(m);
				json_decref(calls);
				return BAD(param, "%s[%zu] must be {\"type\": \"tool_use\", \"id\", \"name\", "
						  "\"input\": {...}}", param, j);
			}
			json_array_append_new(calls, json_pack("{s:s, s:s, s:{s:s, s:s}}", "id", id, "type",
							       "function", "function", "name", name,
							       "arguments", args));
			free(args);
		} else {
			json_decref(m);
			json_decref(calls);
			return BAD(param, "%s[%zu]: block type %.40s is not supported (text, thinking, "
					  "tool_use)", param, j, type ? type : "(none)");
		}
	}
	if (!m || !calls) {
		json_decref(m);
		json_decref(calls);
		return -ENOMEM;
	}
	if (json_array_size(calls)) {
		json_object_set_new(m, "tool_calls", calls);
		if (!json_string_length(json_object_get(m, "content")))
			json_object_set_new(m, "content", json_null());
	} else {
		json_decref(calls);
	}
	return json_array_append_new(msgs, m) ? -ENOMEM : 0;
}

int dp_http_messages_to_chat(const json_t *a, json_t **ret_chat, struct dp_http_error *err)
{
	int ret = 0;
	json_t *o = json_object();
	json_t *msgs = json_array();
	if (!o || !msgs || json_object_set_new(o, "messages", msgs)) {
		json_decref(o);
		return dp_http_error_set(err, 500, "api_error", NULL, NULL, "out of memory");
	}
	static const char *const copied[] = { "model", "stream", "temperature", "top_p", "top_k" };
	for (size_t i = 0; i < sizeof(copied) / sizeof(copied[0]); i++)
		if (json_object_get(a, copied[i]))
			json_object_set(o, copied[i], json_object_get(a, copied[i]));
	const json_t *mt = json_object_get(a, "max_tokens");
	if (!mt)
		ret = BAD("max_tokens", "max_tokens is required");
	else
		json_object_set(o, "max_tokens", (json_t *)mt);
	const json_t *ss = json_object_get(a, "stop_sequences");
	if (!ret && ss)
		json_object_set(o, "stop", (json_t *)ss);
	const json_t *sys = json_object_get(a, "system");
	if (!ret && sys && !json_is_null(sys)) {
		json_t *t = text_of(sys, "system", err);
		if (!t)
			ret = -EINVAL;
		else
			json_array_append_new(msgs, json_pack("{s:s, s:o}", "role", "system", "content", t));
	}
	const json_t *am = json_object_get(a, "messages");
	if (!ret && (!json_is_array(am) || !json_array_size(am)))
		ret = BAD("messages", "messages must be a non-empty array");
	for (size_t i = 0; !ret && i < json_array_size(am); i++) {
		const json_t *m = json_array_get(am, i);
		const char *role = json_string_value(json_object_get(m, "role"));
		char param[64];
		snprintf(param, sizeof(param), "messages[%zu].role", i);
		if (role && !strcmp(role, "user"))
			ret = user_message(msgs, json_object_get(m, "content"), i, err);
		else if (role && !strcmp(role, "assistant"))
			ret = assistant_message(msgs, json_object_get(m, "content"), i, err);
		else
			ret = BAD(param, "%s must be user or assistant", param);
	}
	const json_t *tools = json_object_get(a, "tools");
	if (!ret && tools && !json_is_null(tools)) {
		json_t *ft = json_array();
		if (!json_is_array(tools))
			ret = BAD("tools", "tools must be an array");
		for (size_t i = 0; !ret && i < json_array_size(tools); i++) {
			const json_t *t = json_array_get(tools, i);
			const json_t *name = json_object_get(t, "name");
			const json_t *schema = json_object_get(t, "input_schema");
			char param[64];
			snprintf(param, sizeof(param), "tools[%zu]", i);
			if (!json_is_string(name) || (schema && !json_is_object(schema))) {
				ret = BAD(param, "%s must be {\"name\", \"description\", \"input_schema\": {...}}",
					  param);
				break;
			}
			json_t *fn = json_pack("{s:O}", "name", name);
			if (json_object_get(t, "description"))
				json_object_set(fn, "description", json_object_get(t, "description"));
			if (schema)
				json_object_set(fn, "parameters", (json_t *)schema);
			json_array_append_new(ft, json_pack("{s:s, s:o}", "type", "function", "function", fn));
		}
		json_object_set_new(o, "tools", ft);
	}
	const json_t *tc = json_object_get(a, "tool_choice");
	if (!ret && tc && !json_is_null(tc)) {
		const char *type = json_string_value(json_object_get(tc, "type"));
		const char *name = json_string_value(json_object_get(tc, "name"));
		if (type && !strcmp(type, "auto"))
			json_object_set_new(o, "tool_choice", json_string("auto"));
		else if (type && !strcmp(type, "none"))
			json_object_set_new(o, "tool_choice", json_string("none"));
		else if (type && !strcmp(type, "any"))
			json_object_set_new(o, "tool_choice", json_string("required"));
		else if (type && !strcmp(type, "tool") && name)
			json_object_set_new(o, "tool_choice", json_pack("{s:s, s:{s:s}}", "type", "function",
									"function", "name", name));
		else
			ret = BAD("tool_choice", "tool_choice must be {\"type\": auto, any, none or tool "
						 "(with name)}");
	}
	const json_t *th = json_object_get(a, "thinking");
	const char *tt = json_string_value(json_object_get(th, "type"));
	if (!ret && th && (!tt || (strcmp(tt, "enabled") && strcmp(tt, "disabled"))))
		ret = BAD("thinking", "thinking must be {\"type\": \"enabled\" or \"disabled\"}");
	if (!ret)
		json_object_set_new(o, "thinking", json_pack("{s:s}", "type",
							     tt && !strcmp(tt, "enabled") ? "enabled"
											 : "disabled"));
	if (ret < 0) {
		json_decref(o);
		if (ret == -ENOMEM)
			return dp_http_error_set(err, 500, "api_error", NULL, NULL, "out of memory");
		return ret;
	}
	*ret_chat = o;
	return 0;
}
