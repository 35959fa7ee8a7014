/* SPDX-License-Identifier: MIT */
/*
 * HTTP request bodies: JSON in, a checked struct dp_http_request out. Each
 * refusal names the field (`param`) as OpenAI's API does. Fields clients
 * commonly send and that change nothing here (user, metadata, store...) are
 * accepted and ignored; fields whose meaning this server cannot honour
 * (n > 1, logprobs, json_schema) are refused rather than silently dropped.
 */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/http-parse.h"

int dp_http_error_set(struct dp_http_error *e, unsigned status, const char *type, const char *code,
		      const char *param, const char *fmt, ...)
{
	va_list ap;
	e->status = status;
	e->type = type;
	e->code = code;
	snprintf(e->param, sizeof(e->param), "%s", param ? param : "");
	va_start(ap, fmt);
	vsnprintf(e->message, sizeof(e->message), fmt, ap);
	va_end(ap);
	return -EINVAL;
}

#define BAD(param, ...) dp_http_error_set(err, 400, "invalid_request_error", NULL, param, __VA_ARGS__)

unsigned dp_http_json_depth(const char *body, size_t len, unsigned max)
{
	unsigned depth = 0, deepest = 0;
	bool in_str = false;
	for (size_t i = 0; i < len; i++) {
		char ch = body[i];
		if (in_str) {
			if (ch == '\\')
				i++;
			else if (ch == '"')
				in_str = false;
		} else if (ch == '"') {
			in_str = true;
		} else if (ch == '[' || ch == '{') {
			if (++depth > deepest && (deepest = depth) > max)
				return deepest;
		} else if ((ch == ']' || ch == '}') && depth) {
			depth--;
		}
	}
	return deepest;
}

/* ---- typed getters: absent is fine, a wrong type is a 400 naming the field ---- */

static int get_bool(json_t *o, const char *key, bool *out, struct dp_http_error *err)
{
	json_t *v = json_object_get(o, key);
	if (!v || json_is_null(v))
		return 0;
	if (!json_is_boolean(v))
		return BAD(key, "%s must be a boolean", key);
	*out = json_is_true(v);
	return 0;
}

static int get_number(json_t *o, const char *key, double lo, double hi, double *out,
		      struct dp_http_error *err)
{
	json_t *v = json_object_get(o, key);
	if (!v || json_is_null(v))
		return 0;
	if (!json_is_number(v))
		return BAD(key, "%s must be a number", key);
	double x = json_number_value(v);
	if (!isfinite(x) || x < lo || x > hi)
		return BAD(key, "%s must be between %g and %g (got %g)", key, lo, hi, x);
	*out = x;
	return 1;
}

static int get_int(json_t *o, const char *key, json_int_t lo, json_int_t hi, json_int_t *out,
		   struct dp_http_error *err)
{
	json_t *v = json_object_get(o, key);
	if (!v || json_is_null(v))
		return 0;
	if (!json_is_integer(v))
		return BAD(key, "%s must be an integer", key);
	json_int_t x = json_integer_value(v);
	if (x < lo || x > hi)
		return BAD(key, "%s must be between %lld and %lld (got %lld)", key, (long long)lo,
			   (long long)hi, (long long)x);
	*out = x;
	return 1;
}

/* A string read as a C string (a name, an id, a key) must hold no NUL: the
 * body may carry \u0000 in text (the model may have written one, and a
 * client sends its reply back), but not where it would cut a name short. */
static bool nul_free(json_t *v)
{
	return !json_is_string(v) || strlen(json_string_value(v)) == json_string_length(v);
}

static int get_string(json_t *o, const char *key, const char **out, struct dp_http_error *err)
{
	json_t *v = json_object_get(o, key);
	if (!v || json_is_null(v))
		return 0;
	if (!json_is_string(v))
		return BAD(key, "%s must be a string", key);
	if (!nul_free(v))
		return BAD(key, "%s must not hold a NUL character", key);
	*out = json_string_value(v);
	return 1;
}

/* ids from a JSON array of integers in [0, vocab) */
static int get_ids(json_t *a, const char *param, int32_t vocab, int32_t **ret, size_t *ret_n,
		   struct dp_http_error *err)
{
	size_t n = json_array_size(a);
	int32_t *ids = malloc((n ? n : 1) * sizeof(*ids));
	if (!ids)
		return dp_http_error_set(err, 500, "server_error", NULL, NULL, "out of memory");
	for (size_t i = 0; i < n; i++) {
		json_t *v = json_array_get(a, i);
		if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) >= vocab) {
			free(ids);
			return BAD(param, "%s[%zu] must be a token id in [0, %d)", param, i, vocab);
		}
		ids[i] = (int32_t)json_integer_value(v);
	}
	*ret = ids;
	*ret_n = n;
	return 0;
}

/* ---- the sampling and length fields shared by chat and completions ----------- */

static int parse_common(json_t *o, const struct dp_http_limits *lim, struct dp_http_request *r,
			struct dp_http_error *err)
{
	int ret;
	double x;
	json_int_t k;

	if ((ret = get_string(o, "model", &r->model, err)) < 0 ||
	    (ret = get_bool(o, "stream", &r->stream, err)) < 0 ||
	    (ret = get_bool(o, "ignore_eos", &r->ignore_eos, err)) < 0 ||
	    (ret = get_bool(o, "return_token_ids", &r->return_token_ids, err)) < 0)
		return ret;
	json_t *so = json_object_get(o, "stream_options");
	if (so && !json_is_null(so)) {
		if (!json_is_object(so))
			return BAD("stream_options", "stream_options must be an object");
		if ((ret = get_bool(so, "include_usage", &r->include_usage, err)) < 0)
			return BAD("stream_options.include_usage", "include_usage must be a boolean");
	}
	/* max_completion_tokens wins over the deprecated max_tokens */
	const char *mk = json_object_get(o, "max_completion_tokens") &&
					 !json_is_null(json_object_get(o, "max_completion_tokens"))
				 ? "max_completion_tokens" : "max_tokens";
	if ((ret = get_int(o, mk, 1, lim->max_new_tokens, &k, err)) < 0) {
		err->code = json_is_integer(json_object_get(o, mk)) ? "max_tokens_exceeded" : NULL;
		return ret;
	}
	if (ret)
		r->max_tokens = (uint32_t)k;

	r->sampling.temperature = 1.0f;
	r->sampling.top_p = 1.0f;
	if ((ret = get_number(o, "temperature", 0, 2, &x, err)) < 0)
		return ret;
	if (ret)
		r->sampling.temperature = (float)x;
	if ((ret = get_number(o, "top_p", 0, 1, &x, err)) < 0)
		return ret;
	if (ret && (float)x <= 0) /* 1e-300 is above 0, but not as the sampler's float */
		return BAD("top_p", "top_p must be above 0 (1: off)");
	if (ret)
		r->sampling.top_p = (float)x;
	/* vLLM's -1 and 0 both mean off */
	if ((ret = get_int(o, "top_k", -1, INT32_MAX, &k, err)) < 0)
		return ret;
	if (ret)
		r->sampling.top_k = k < 0 ? 0 : (int)k;
	if ((ret = get_number(o, "min_p", 0, 1, &x, err)) < 0)
		return ret;
	if (ret && x > 0)
		return BAD("min_p", "min_p is not supported by this server's sampler (use top_p or "
				    "top_k; 0 is accepted)");
	if ((ret = get_int(o, "seed", INT64_MIN, INT64_MAX, &k, err)) < 0)
		return ret;
	if (ret) {
		r->sampling.seed = (uint64_t)k;
		r->has_seed = true;
	}
	if ((ret = get_int(o, "n", 1, 1, &k, err)) < 0)
		return BAD("n", "n must be 1: this server returns one choice per request");
	if ((ret = get_int(o, "best_of", 1, 1, &k, err)) < 0)
		return BAD("best_of", "best_of must be 1");
	json_t *lp = json_object_get(o, "logprobs");
	if (lp && !json_is_null(lp) && !json_is_false(lp) &&
	    !(json_is_integer(lp) && json_integer_value(lp) == 0))
		return BAD("logprobs", "logprobs are not supported by this server");
	json_t *tlp = json_object_get(o, "top_logprobs");
	if (tlp && !json_is_null(tlp) && !(json_is_integer(tlp) && json_integer_value(tlp) == 0))
		return BAD("top_logprobs", "top_logprobs are not supported by this server");
	if (json_is_true(json_object_get(o, "echo")))
		return BAD("echo", "echo is not supported by this server");
	json_t *sfx = json_object_get(o, "suffix");
	if (sfx && !json_is_null(sfx))
		return BAD("suffix", "suffix (fill in the middle) is not supported by this server");

	json_t *stop = json_object_get(o, "stop");
	if (stop && !json_is_null(stop)) {
		json_t *one = json_is_string(stop) ? stop : NULL;
		size_t n = one ? 1 : json_array_size(stop);
		if (!one && !json_is_array(stop))
			return BAD("stop", "stop must be a string or an array of strings");
		if (n > DP_HTTP_STOP_STRINGS_MAX)
			return BAD("stop", "stop has %zu strings; at most %d", n, DP_HTTP_STOP_STRINGS_MAX);
		for (size_t i = 0; i < n; i++) {
			json_t *s = one ? one : json_array_get(stop, i);
			if (!json_is_string(s))
				return BAD("stop", "stop[%zu] must be a string", i);
			size_t len = json_string_length(s);
			if (len == 0 || len > DP_HTTP_STOP_STRING_BYTES)
				return BAD("stop", "stop[%zu] must be 1 to %d bytes", i,
					   DP_HTTP_STOP_STRING_BYTES);
			if (strlen(json_string_value(s)) != len)
				return BAD("stop", "stop[%zu] holds a NUL character", i);
			r->stop[r->n_stop++] = json_string_value(s);
		}
	}
	json_t *sti = json_object_get(o, "stop_token_ids");
	if (sti && !json_is_null(sti)) {
		if (!json_is_array(sti))
			return BAD("stop_token_ids", "stop_token_ids must be an array of token ids");
		if (json_array_size(sti) > DP_HTTP_STOP_IDS_MAX)
			return BAD("stop_token_ids", "stop_token_ids has %zu ids; at most %d",
				   json_array_size(sti), DP_HTTP_STOP_IDS_MAX);
		int32_t *ids = NULL;
		size_t n = 0;
		if ((ret = get_ids(sti, "stop_token_ids", lim->vocab, &ids, &n, err)) < 0)
			return ret;
		memcpy(r->stop_ids, ids, n * sizeof(*ids));
		r->n_stop_ids = (uint32_t)n;
		free(ids);
	}
	const char *s = NULL;
	if ((ret = get_string(o, "session_id", &s, err)) < 0 ||
	    (ret = get_string(o, "cache_salt", &r->cache_salt, err)) < 0)
		return ret;
	if (r->cache_salt && strlen(r->cache_salt) > DP_HTTP_CACHE_SALT_MAX)
		return BAD("cache_salt", "cache_salt is %zu bytes; at most %d", strlen(r->cache_salt),
			   DP_HTTP_CACHE_SALT_MAX);
	/* the session store's rule (kvcache.h): [A-Za-z0-9._-], not "." or ".." */
	bool ok = !s || (*s && strlen(s) <= 64 && strcmp(s, ".") && strcmp(s, ".."));
	for (const char *p = s; ok && p && *p; p++)
		ok = (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
		     *p == '.' || *p == '_' || *p == '-';
	if (!ok)
		return BAD("session_id", "session_id must be 1 to 64 of A-Z a-z 0-9 . _ - (not . or ..)");
	r->session_id = s;
	return 0;
}

/* ---- chat ------------------------------------------------------------------- */

static bool known_role(const char *r)
{
	static const char *const roles[] = { "system", "developer", "user", "assistant", "tool" };
	for (size_t i = 0; i < sizeof(roles) / sizeof(roles[0]); i++)
		if (!strcmp(r, roles[i]))
			return true;
	return false;
}

/* content: a string, null (assistant with tool calls), or text parts */
static int check_content(json_t *c, size_t i, const char *role, struct dp_http_error *err)
{
	char param[64];
	snprintf(param, sizeof(param), "messages[%zu].content", i);
	if (!c || json_is_null(c)) {
		if (strcmp(role, "assistant"))
			return BAD(param, "%s: a %s message needs content", param, role);
		return 0;
	}
	if (json_is_string(c))
		return 0;
	if (!json_is_array(c))
		return BAD(param, "%s must be a string or an array of content parts", param);
	for (size_t j = 0; j < json_array_size(c); j++) {
		json_t *p = json_array_get(c, j);
		const char *type = json_string_value(json_object_get(p, "type"));
		if (!json_is_object(p) || !type)
			return BAD(param, "%s[%zu] must be an object with a type", param, j);
		if (strcmp(type, "text"))
			return BAD(param, "%s[%zu]: content of type %.40s is not supported (text only)",
				   param, j, type);
		if (!json_is_string(json_object_get(p, "text")))
			return BAD(param, "%s[%zu].text must be a string", param, j);
	}
	return 0;
}

static int check_messages(json_t *msgs, struct dp_http_error *err)
{
	if (!msgs)
		return BAD("messages", "messages is required");
	if (!json_is_array(msgs) || json_array_size(msgs) == 0)
		return BAD("messages", "messages must be a non-empty array");
	for (size_t i = 0; i < json_array_size(msgs); i++) {
		json_t *m = json_array_get(msgs, i);
		char param[64];
		snprintf(param, sizeof(param), "messages[%zu]", i);
		if (!json_is_object(m))
			return BAD(param, "%s must be an object", param);
		json_t *role = json_object_get(m, "role");
		snprintf(param, sizeof(param), "messages[%zu].role", i);
		if (!json_is_string(role) || !nul_free(role))
			return BAD(param, "%s must be a string without NUL", param);
		if (!known_role(json_string_value(role)))
			return BAD(param, "%s: unknown role '%.40s' (system, developer, user, "
					  "assistant or tool)", param, json_string_value(role));
		const char *r = json_string_value(role);
		int ret = check_content(json_object_get(m, "content"), i, r, err);
		if (ret < 0)
			return ret;
		json_t *rc = json_object_get(m, "reasoning_content");
		if (!rc)
			rc = json_object_get(m, "reasoning");
		snprintf(param, sizeof(param), "messages[%zu].reasoning_content", i);
		if (rc && !json_is_null(rc) && !json_is_string(rc))
			return BAD(param, "%s must be a string", param);
		json_t *tc = json_object_get(m, "tool_calls");
		snprintf(param, sizeof(param), "messages[%zu].tool_calls", i);
		if (tc && !json_is_null(tc)) {
			if (strcmp(r, "assistant"))
				return BAD(param, "%s: only assistant messages carry tool calls", param);
			if (!json_is_array(tc))
				return BAD(param, "%s must be an array", param);
			for (size_t j = 0; j < json_array_size(tc); j++) {
				json_t *call = json_array_get(tc, j);
				json_t *fn = json_object_get(call, "function");
				if (!json_is_object(call) || !json_is_object(fn) ||
				    !json_is_string(json_object_get(fn, "name")) ||
				    !nul_free(json_object_get(fn, "name")) ||
				    !nul_free(json_object_get(call, "id")) ||
				    !json_is_string(json_object_get(fn, "arguments")))
					return BAD(param, "%s[%zu] must be {\"id\", \"type\": \"function\", "
							  "\"function\": {\"name\", \"arguments\" (a string)}}",
						   param, j);
			}
		}
		if (!strcmp(r, "tool")) {
			json_t *id = json_object_get(m, "tool_call_id");
			snprintf(param, sizeof(param), "messages[%zu].tool_call_id", i);
			if (id && (!json_is_string(id) || !nul_free(id)))
				return BAD(param, "%s must be a string without NUL", param);
		}
	}
	return 0;
}

static int check_tools(json_t *o, const struct dp_http_limits *lim, struct dp_http_request *r,
		       struct dp_http_error *err)
{
	json_t *tools = json_object_get(o, "tools");
	if (tools && !json_is_null(tools)) {
		if (!json_is_array(tools))
			return BAD("tools", "tools must be an array");
		if (json_array_size(tools) > lim->max_tools)
			return BAD("tools", "tools has %zu entries; this server takes at most %u "
					    "([http] max_tools)", json_array_size(tools), lim->max_tools);
		for (size_t i = 0; i < json_array_size(tools); i++) {
			json_t *t = json_array_get(tools, i);
			json_t *fn = json_object_get(t, "function");
			char param[64];
			snprintf(param, sizeof(param), "tools[%zu]", i);
			const char *type = json_string_value(json_object_get(t, "type"));
			if (!json_is_object(t) || !type || strcmp(type, "function") ||
			    !nul_free(json_object_get(t, "type")))
				return BAD(param, "%s must be {\"type\": \"function\", \"function\": {...}}",
					   param);
			if (!json_is_object(fn) || !json_is_string(json_object_get(fn, "name")) ||
			    !json_string_length(json_object_get(fn, "name")) ||
			    !nul_free(json_object_get(fn, "name")))
				return BAD(param, "%s.function.name must be a non-empty string without NUL",
					   param);
			json_t *params = json_object_get(fn, "parameters");
			if (params && !json_is_null(params) && !json_is_object(params))
				return BAD(param, "%s.function.parameters must be a JSON Schema object", param);
		}
		r->tools = json_array_size(tools) ? tools : NULL;
	}
	json_t *tc = json_object_get(o, "tool_choice");
	if (!tc || json_is_null(tc))
		return 0;
	if (json_is_string(tc)) {
		const char *s = json_string_value(tc);
		if (!nul_free(tc) ||
		    (strcmp(s, "none") && strcmp(s, "auto") && strcmp(s, "required")))
			return BAD("tool_choice", "tool_choice must be none, auto, required or "
						  "{\"type\": \"function\", \"function\": {\"name\"}}");
		if (!strcmp(s, "required") && !r->tools)
			return BAD("tool_choice", "tool_choice is required but no tools are given");
		r->tool_choice = tc;
		return 0;
	}
	const char *name = json_string_value(json_object_get(json_object_get(tc, "function"), "name"));
	if (!json_is_object(tc) || !name ||
	    !nul_free(json_object_get(json_object_get(tc, "function"), "name")))
		return BAD("tool_choice", "tool_choice must be none, auto, required or "
					  "{\"type\": \"function\", \"function\": {\"name\"}}");
	for (size_t i = 0; i < json_array_size(r->tools); i++) {
		json_t *fn = json_object_get(json_array_get(r->tools, i), "function");
		if (!strcmp(json_string_value(json_object_get(fn, "name")), name)) {
			r->tool_choice = tc;
			return 0;
		}
	}
	return BAD("tool_choice", "tool_choice names function '%.60s', which is not among the tools",
		   name);
}

static int parse_chat(json_t *o, const struct dp_http_limits *lim, struct dp_http_request *r,
		      struct dp_http_error *err)
{
	int ret;
	json_t *msgs = json_object_get(o, "messages");
	if ((ret = check_messages(msgs, err)) < 0)
		return ret;
	r->messages = msgs;
	/* the thinking controls (thinking, chat_template_kwargs, think,
	 * reasoning_effort) are the renderer's to read: model/conv.h */
	if ((ret = check_tools(o, lim, r, err)) < 0)
		return ret;
	json_t *rf = json_object_get(o, "response_format");
	if (rf && !json_is_null(rf)) {
		const char *type = json_string_value(json_object_get(rf, "type"));
		if (!json_is_object(rf) || !type || !nul_free(json_object_get(rf, "type")))
			return BAD("response_format", "response_format must be {\"type\": ...}");
		if (!strcmp(type, "json_object"))
			r->json_object = true;
		else if (strcmp(type, "text"))
			return BAD("response_format", "response_format type %.40s is not supported "
						      "(text or json_object)", type);
	}
	return 0;
}

/* ---- completions, tokenize, detokenize --------------------------------------- */

static int parse_prompt(json_t *o, const struct dp_http_limits *lim, struct dp_http_request *r,
			struct dp_http_error *err)
{
	json_t *p = json_object_get(o, "prompt");
	if (json_is_array(p) && json_array_size(p) == 1 && json_is_string(json_array_get(p, 0)))
		p = json_array_get(p, 0); /* ["text"]: one prompt, as the SDK may send it */
	if (json_is_string(p)) {
		r->prompt = json_string_value(p);
		r->prompt_len = json_string_length(p);
		if (!r->prompt_len && r->api == DP_HTTP_COMPLETIONS)
			return BAD("prompt", "prompt must not be empty");
		return 0;
	}
	if (json_is_array(p) && json_array_size(p) && json_is_integer(json_array_get(p, 0)))
		return get_ids(p, "prompt", lim->vocab, &r->ids, &r->n_ids, err);
	if (!p)
		return BAD("prompt", "prompt is required");
	return BAD("prompt", "prompt must be a string or an array of token ids (one prompt per request)");
}

int dp_http_request_parse(enum dp_http_api api, const char *body, size_t len,
			  const struct dp_http_limits *lim, struct dp_http_request *req,
			  struct dp_http_error *err)
{
	struct dp_http_request r = { .api = api };
	int ret;

	memset(req, 0, sizeof(*req));
	if (!body || !lim || !err || (unsigned)api >= DP_HTTP_API_MAX)
		return -EINVAL;
	if (len > lim->max_body)
		return dp_http_error_set(err, 413, "invalid_request_error", NULL, NULL,
					 "the request body is %zu bytes, beyond this server's limit of %zu "
					 "([http] max_body_bytes)", len, lim->max_body);
	unsigned depth = dp_http_json_depth(body, len, lim->max_depth);
	if (depth > lim->max_depth)
		return BAD(NULL, "the request's JSON nests deeper than %u levels ([http] max_json_depth)",
			   lim->max_depth);
	json_error_t je;
	/* NUL in text (\u0000) for the OpenAI APIs, whose fields are checked
	 * for it where read as C strings; the Messages API's conversion reads
	 * its strings as C strings, so it gets none */
	r.root = json_loadb(body, len,
			    JSON_REJECT_DUPLICATES | (api == DP_HTTP_MESSAGES ? 0 : JSON_ALLOW_NUL),
			    &je);
	if (!r.root)
		return BAD(NULL, "the body is not valid JSON: %s (line %d, column %d)", je.text, je.line,
			   je.column);
	if (!json_is_object(r.root)) {
		json_decref(r.root);
		return BAD(NULL, "the body must be a JSON object");
	}
	if (api == DP_HTTP_MESSAGES) { /* from here on it is the chat it means */
		json_t *chat = NULL;
		ret = dp_http_messages_to_chat(r.root, &chat, err);
		json_decref(r.root);
		r.root = chat;
		if (ret < 0)
			return ret;
	}
	switch (api) {
	case DP_HTTP_MESSAGES:
	case DP_HTTP_CHAT:
		ret = parse_common(r.root, lim, &r, err);
		if (!ret)
			ret = parse_chat(r.root, lim, &r, err);
		break;
	case DP_HTTP_COMPLETIONS:
		ret = parse_common(r.root, lim, &r, err);
		if (!ret)
			ret = parse_prompt(r.root, lim, &r, err);
		break;
	case DP_HTTP_TOKENIZE:
		r.add_special = true;
		ret = get_bool(r.root, "add_special_tokens", &r.add_special, err);
		if (!ret && json_object_get(r.root, "messages")) {
			ret = check_messages(json_object_get(r.root, "messages"), err);
			r.messages = json_object_get(r.root, "messages");
			if (!ret)
				ret = check_tools(r.root, lim, &r, err);
		} else if (!ret) {
			ret = parse_prompt(r.root, lim, &r, err);
			if (!ret && r.ids)
				ret = BAD("prompt", "prompt must be text to tokenize");
		}
		break;
	case DP_HTTP_DETOKENIZE: {
		json_t *t = json_object_get(r.root, "tokens");
		if (!json_is_array(t))
			ret = BAD("tokens", "tokens must be an array of token ids");
		else
			ret = get_ids(t, "tokens", lim->vocab, &r.ids, &r.n_ids, err);
		break;
	}
	default:
		ret = -EINVAL;
	}
	if (ret < 0) {
		dp_http_request_fini(&r);
		return ret;
	}
	*req = r;
	return 0;
}

void dp_http_request_fini(struct dp_http_request *req)
{
	if (!req)
		return;
	json_decref(req->root);
	free(req->ids);
	memset(req, 0, sizeof(*req));
}
