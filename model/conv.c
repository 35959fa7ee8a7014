/* SPDX-License-Identifier: MIT */
/* A conversation with a model (model/conv.h): chat/ joined to the tokenizer. */
#include "model/conv.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/tokenizer.h"

/* encoding_dsv4's bos_token: a V4 rendering starts with it. */
#define V4_BOS "<｜begin▁of▁sentence｜>"

struct dp_conv {
	enum dp_chat_format format;
	const struct dp_tok *tok;
	/* V4: the reasoning-effort "max" paragraph, which encoding_dsv4 puts
	 * after BOS before the first message only (a continuation drops it).
	 * Learnt from the renderer itself at creation, so the two never
	 * disagree. */
	char *effort_para;
	size_t effort_para_len;
	/* V4: the ids of the markup that frames an assistant turn's generated
	 * part (-1 where the tokenizer holds it as more than one id). */
	int32_t id_assistant, id_think, id_think_end;
};

struct dp_conv_stream {
	const struct dp_conv *conv;
	struct dp_chat_parser *parser;
	struct dp_tok_stream ts;
	char *buf; /* dp_tok_stream_bound bytes, the decode of one id */
	size_t cap;
	char *join_r, *join_c; /* finish's joined delta */
	bool finished;
};

/* ---- creation ------------------------------------------------------------ */

static int learn_effort_para(struct dp_conv *cv)
{
	static const char with[] = "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], "
	                           "\"reasoning_effort\": \"max\"}";
	static const char without[] = "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}]}";
	struct dp_chat_prompt a = {0}, b = {0};
	const size_t bos = strlen(V4_BOS);
	int ret;

	if ((ret = dp_chat_render_text(DP_CHAT_FORMAT_V4, with, strlen(with), &a, NULL)) < 0)
		return ret;
	if ((ret = dp_chat_render_text(DP_CHAT_FORMAT_V4, without, strlen(without), &b, NULL)) <
	    0) {
		dp_chat_prompt_fini(&a);
		return ret;
	}
	/* a = BOS + paragraph + rest, b = BOS + rest */
	ret = -EINVAL;
	if (a.len > b.len && b.len >= bos && !memcmp(a.text, V4_BOS, bos) &&
	    !memcmp(b.text, V4_BOS, bos) &&
	    !memcmp(a.text + (a.len - b.len) + bos, b.text + bos, b.len - bos)) {
		cv->effort_para_len = a.len - b.len;
		cv->effort_para = malloc(cv->effort_para_len);
		ret = cv->effort_para ? 0 : -ENOMEM;
		if (cv->effort_para)
			memcpy(cv->effort_para, a.text + bos, cv->effort_para_len);
	}
	dp_chat_prompt_fini(&a);
	dp_chat_prompt_fini(&b);
	return ret;
}

/* The one id text tokenizes to, or -1. */
static int32_t markup_id(const struct dp_tok *tok, const char *text)
{
	size_t cap = dp_tok_encode_bound(tok, strlen(text), 0), n = 0;
	int32_t *ids = cap ? malloc(cap * sizeof(int32_t)) : NULL, id = -1;
	if (ids && dp_tok_encode(tok, text, strlen(text), 0, ids, cap, &n) == 0 && n == 1)
		id = ids[0];
	free(ids);
	return id;
}

int dp_conv_new_format(enum dp_chat_format format, const struct dp_tok *tok,
                       struct dp_conv **ret_conv)
{
	struct dp_conv *cv;
	int ret;

	if (!tok || !ret_conv || format < 0 || format >= DP_CHAT_FORMAT_MAX)
		return -EINVAL;
	cv = calloc(1, sizeof(*cv));
	if (!cv)
		return -ENOMEM;
	cv->format = format;
	cv->tok = tok;
	cv->id_assistant = cv->id_think = cv->id_think_end = -1;
	if (format == DP_CHAT_FORMAT_V4) {
		cv->id_assistant = markup_id(tok, "<｜Assistant｜>");
		cv->id_think = markup_id(tok, "<think>");
		cv->id_think_end = markup_id(tok, "</think>");
	}
	if (format == DP_CHAT_FORMAT_V4 && (ret = learn_effort_para(cv)) < 0) {
		dp_conv_free(cv);
		return ret;
	}
	*ret_conv = cv;
	return 0;
}

int dp_conv_new(const char *dir, const struct dp_tok *tok, struct dp_conv **ret_conv, char *err,
                size_t err_len)
{
	char path[4096];
	json_error_t je;
	json_t *cfg;
	const char *type;
	int ret;

	if (!dir || !tok || !ret_conv)
		return -EINVAL;
	snprintf(path, sizeof(path), "%s/config.json", dir);
	cfg = json_load_file(path, 0, &je);
	if (!cfg) {
		if (err && err_len)
			snprintf(err, err_len, "%s: %s", path, je.text);
		return -EINVAL;
	}
	type = json_string_value(json_object_get(cfg, "model_type"));
	/* V4's format is made of its tokenizer's added tokens: a deepseek_v4
	 * model with the byte tokenizer (the embedded one) has none, and speaks
	 * plain turns. */
	ret =
	    dp_conv_new_format(dp_tok_kind(tok) == DP_TOK_BPE ? dp_chat_format_for_model_type(type)
	                                                      : DP_CHAT_FORMAT_PLAIN,
	                       tok, ret_conv);
	json_decref(cfg);
	if (ret < 0 && err && err_len)
		snprintf(err, err_len, "%s", strerror(-ret));
	return ret;
}

void dp_conv_free(struct dp_conv *cv)
{
	if (!cv)
		return;
	free(cv->effort_para);
	free(cv);
}

enum dp_chat_format dp_conv_format(const struct dp_conv *cv)
{
	return cv ? cv->format : DP_CHAT_FORMAT_MAX;
}

int32_t dp_conv_continue_lead(const struct dp_conv *cv)
{
	if (!cv || cv->format != DP_CHAT_FORMAT_V4)
		return -1;
	int32_t eos = dp_tok_special(cv->tok, DP_TOK_EOS);
	return eos >= 0 ? eos : -1;
}

/* ---- rendering ----------------------------------------------------------- */

static int conv_bad(struct dp_chat_error *err, const char *param, const char *message)
{
	if (err) {
		snprintf(err->param, sizeof(err->param), "%s", param);
		snprintf(err->message, sizeof(err->message), "%s", message);
	}
	return -EINVAL;
}

/* What a continuation may not hold: what belongs to the conversation's start
 * (tools, response_format) or needs the context (tool results). */
static int continuation_check(const json_t *rq, const struct dp_chat_prompt *p,
                              struct dp_chat_error *err)
{
	const json_t *rf = json_object_get(rq, "response_format");
	const json_t *type = json_object_get(rf, "type");

	if (p->has_tools)
		return conv_bad(
		    err, "tools",
		    "a session's later turn cannot offer tools: they belong to the "
		    "conversation's first system message (send them in the first turn)");
	if (json_is_object(rf) && json_object_size(rf) &&
	    !(json_is_string(type) && !strcmp(json_string_value(type), "text")))
		return conv_bad(
		    err, "response_format",
		    "a session's later turn cannot set a response format: it belongs to "
		    "the conversation's first system message");
	return 0;
}

/* Before rendering, so that the reason is this, not the renderer's "a tool
 * result without its call". */
static int continuation_roles(const json_t *rq, struct dp_chat_error *err)
{
	const json_t *msgs = json_object_get(rq, "messages");

	for (size_t i = 0; i < json_array_size(msgs); i++) {
		const char *role =
		    json_string_value(json_object_get(json_array_get(msgs, i), "role"));
		char param[64];

		if (role && !strcmp(role, "tool")) {
			snprintf(param, sizeof(param), "messages[%zu].role", i);
			return conv_bad(
			    err, param,
			    "tool results cannot continue a session (their calls are in "
			    "the context); start a new session with the whole conversation");
		}
	}
	return 0;
}

/* The text to tokenize: the rendering, cut for a continuation. */
static int conv_text(const struct dp_conv *cv, const struct dp_chat_prompt *p, unsigned flags,
                     const char **text, size_t *len)
{
	*text = p->text;
	*len = p->len;
	if (!(flags & DP_CONV_CONTINUE) || cv->format != DP_CHAT_FORMAT_V4)
		return 0;
	if (*len < strlen(V4_BOS) || memcmp(*text, V4_BOS, strlen(V4_BOS)))
		return -EINVAL; /* the renderer always starts with BOS */
	*text += strlen(V4_BOS);
	*len -= strlen(V4_BOS);
	if (p->effort == DP_CHAT_EFFORT_MAXIMUM && p->mode == DP_CHAT_MODE_THINKING &&
	    *len >= cv->effort_para_len && !memcmp(*text, cv->effort_para, cv->effort_para_len)) {
		*text += cv->effort_para_len;
		*len -= cv->effort_para_len;
	}
	return 0;
}

static int conv_encode(const struct dp_conv *cv, const struct dp_chat_prompt *p, unsigned flags,
                       struct dp_conv_prompt *out)
{
	const char *text;
	size_t len, cap, n = 0, body;
	unsigned tflags = 0;
	int ret;

	if ((ret = conv_text(cv, p, flags, &text, &len)) < 0)
		return ret;
	if (cv->format == DP_CHAT_FORMAT_PLAIN && !(flags & DP_CONV_CONTINUE) &&
	    dp_tok_special(cv->tok, DP_TOK_BOS) >= 0)
		tflags |= DP_TOK_ADD_BOS;
	cap = dp_tok_encode_bound(cv->tok, len + 2, tflags);
	if (!cap || cap > SIZE_MAX / sizeof(int32_t) - 1)
		return -ENOMEM;
	out->ids = malloc((cap + 1) * sizeof(int32_t));
	if (!out->ids)
		return -ENOMEM;
	if (cv->format == DP_CHAT_FORMAT_PLAIN && (flags & DP_CONV_CONTINUE)) {
		/* the turn separator after the reply already in the context */
		if ((ret = dp_tok_encode(cv->tok, "\n\n", 2, 0, out->ids, cap, &body)) < 0)
			goto fail;
		n += body;
	}
	if ((ret = dp_tok_encode(cv->tok, text, len, tflags, out->ids + n, cap + 1 - n, &body)) < 0)
		goto fail;
	n += body;
	out->n_ids = n;
	if (flags & DP_CONV_WANT_TEXT) {
		size_t pre =
		    cv->format == DP_CHAT_FORMAT_PLAIN && (flags & DP_CONV_CONTINUE) ? 2 : 0;

		out->text = malloc(pre + len + 1);
		if (!out->text) {
			ret = -ENOMEM;
			goto fail;
		}
		memcpy(out->text, "\n\n", pre);
		memcpy(out->text + pre, text, len);
		out->text[pre + len] = 0;
		out->len = pre + len;
	}
	out->mode = p->mode;
	out->effort = p->effort;
	out->has_tools = p->has_tools;
	return 0;
fail:
	free(out->ids);
	out->ids = NULL;
	return ret;
}

int dp_conv_render(const struct dp_conv *cv, const json_t *request, unsigned flags,
                   struct dp_conv_prompt *ret, struct dp_chat_error *err)
{
	struct dp_chat_prompt p = {0};
	struct dp_conv_prompt out = {0};
	int rc;

	if (err)
		*err = (struct dp_chat_error){0};
	if (!cv || !request || !ret || flags >= DP_CONV_RENDER_FLAGS_MAX)
		return -EINVAL;
	if ((flags & DP_CONV_CONTINUE) && (rc = continuation_roles(request, err)) < 0)
		return rc;
	if ((rc = dp_chat_render(cv->format, request, &p, err)) < 0)
		return rc;
	if ((flags & DP_CONV_CONTINUE) && (rc = continuation_check(request, &p, err)) < 0)
		goto out;
	if ((rc = conv_encode(cv, &p, flags, &out)) < 0) {
		if (rc == -ENOMEM)
			conv_bad(err, "", "out of memory rendering the request");
		else
			conv_bad(err, "", "the model's tokenizer cannot encode this rendering");
		goto out;
	}
	*ret = out;
out:
	dp_chat_prompt_fini(&p);
	return rc;
}

int dp_conv_render_text(const struct dp_conv *cv, const char *json, size_t len, unsigned flags,
                        struct dp_conv_prompt *ret, struct dp_chat_error *err)
{
	json_error_t je;
	json_t *rq;
	int rc;

	if (err)
		*err = (struct dp_chat_error){0};
	if (!cv || !json || !ret)
		return -EINVAL;
	rq = json_loadb(json, len, JSON_ALLOW_NUL, &je);
	if (!rq) {
		char msg[256];

		snprintf(msg, sizeof(msg), "bad JSON at line %d column %d: %s", je.line, je.column,
		         je.text);
		return conv_bad(err, "", msg);
	}
	rc = dp_conv_render(cv, rq, flags, ret, err);
	json_decref(rq);
	return rc;
}

void dp_conv_prompt_fini(struct dp_conv_prompt *prompt)
{
	if (!prompt)
		return;
	free(prompt->ids);
	free(prompt->text);
	*prompt = (struct dp_conv_prompt){0};
}

/* ---- the output stream --------------------------------------------------- */

int dp_conv_stream_new(const struct dp_conv *cv, enum dp_chat_mode mode, const char *id_prefix,
                       struct dp_conv_stream **ret_stream)
{
	struct dp_conv_stream *s;
	int ret;

	if (!cv || !ret_stream || mode < 0 || mode >= DP_CHAT_MODE_MAX)
		return -EINVAL;
	s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	s->conv = cv;
	/* Specials as their text: the parser must see </think>, DSML and the
	 * end of sentence, which V4's tokenizer holds as added tokens. */
	dp_tok_stream_init(&s->ts, DP_TOK_STREAM_UTF8 | DP_TOK_STREAM_SPECIALS);
	s->cap = dp_tok_stream_bound(cv->tok);
	s->buf = malloc(s->cap ? s->cap : 1);
	if (!s->buf) {
		free(s);
		return -ENOMEM;
	}
	if ((ret = dp_chat_parser_new(cv->format, mode, id_prefix, &s->parser)) < 0) {
		dp_conv_stream_free(s);
		return ret;
	}
	*ret_stream = s;
	return 0;
}

void dp_conv_stream_free(struct dp_conv_stream *s)
{
	if (!s)
		return;
	dp_chat_parser_free(s->parser);
	free(s->buf);
	free(s->join_r);
	free(s->join_c);
	free(s);
}

int dp_conv_stream_feed(struct dp_conv_stream *s, int32_t id, struct dp_chat_delta *out)
{
	size_t len = 0, more = 0;
	int ret;

	if (!s || !out || s->finished)
		return -EINVAL;
	if (id == dp_tok_special(s->conv->tok, DP_TOK_EOS)) {
		/* what the stream held back ends here, before the EOS text */
		if ((ret = dp_tok_stream_flush(&s->ts, s->buf, s->cap, &len)) < 0)
			return ret;
	}
	if ((ret = dp_tok_stream_next(s->conv->tok, &s->ts, id, s->buf + len, s->cap - len,
	                              &more)) < 0)
		return ret;
	return dp_chat_parser_feed(s->parser, s->buf, len + more, out);
}

/* a + b into *dst (realloc'd, owned by the stream) */
static int join(char **dst, const char *a, size_t al, const char *b, size_t bl)
{
	char *p = realloc(*dst, al + bl + 1);

	if (!p)
		return -ENOMEM;
	memcpy(p, a, al);
	memcpy(p + al, b, bl);
	p[al + bl] = 0;
	*dst = p;
	return 0;
}

int dp_conv_stream_finish(struct dp_conv_stream *s, struct dp_chat_delta *out)
{
	struct dp_chat_delta d1 = {0}, d2;
	char *r1 = NULL, *c1 = NULL;
	size_t len = 0;
	int ret;

	if (!s || !out || s->finished)
		return -EINVAL;
	s->finished = true;
	if ((ret = dp_tok_stream_flush(&s->ts, s->buf, s->cap, &len)) < 0)
		return ret;
	/* An incomplete character at the end comes out as U+FFFD; the parser
	 * reports that feed and its finish apart, so join the two (the feed
	 * completes no tool call: a U+FFFD closes no DSML block). */
	if (len) {
		if ((ret = dp_chat_parser_feed(s->parser, s->buf, len, &d1)) < 0)
			return ret;
		if (join(&r1, d1.reasoning, d1.reasoning_len, "", 0) < 0 ||
		    join(&c1, d1.content, d1.content_len, "", 0) < 0) {
			ret = -ENOMEM;
			goto out;
		}
	}
	if ((ret = dp_chat_parser_finish(s->parser, &d2)) < 0)
		goto out;
	if (len) {
		if (join(&s->join_r, r1, d1.reasoning_len, d2.reasoning, d2.reasoning_len) < 0 ||
		    join(&s->join_c, c1, d1.content_len, d2.content, d2.content_len) < 0) {
			ret = -ENOMEM;
			goto out;
		}
		d2.reasoning = s->join_r;
		d2.reasoning_len += d1.reasoning_len;
		d2.content = s->join_c;
		d2.content_len += d1.content_len;
	}
	*out = d2;
out:
	free(r1);
	free(c1);
	return ret;
}

/* The generated part of the turn-th assistant turn of p: the ids after the
 * opener that follows its <｜Assistant｜> up to and including EOS. */
static int turn_span(const struct dp_conv *cv, const struct dp_conv_prompt *p, size_t turn,
                     size_t *ret_start, size_t *ret_end, int32_t *ret_opener)
{
	int32_t eos = dp_tok_special(cv->tok, DP_TOK_EOS);
	size_t seen = 0, i;
	for (i = 0; i < p->n_ids; i++)
		if (p->ids[i] == cv->id_assistant && seen++ == turn)
			break;
	if (i + 1 >= p->n_ids)
		return -ENOENT;
	size_t start = i + 2, end = start;
	while (end < p->n_ids && p->ids[end] != eos)
		end++;
	if (end == p->n_ids)
		return -ENOENT; /* the prompt's own opener: no turn follows */
	*ret_start = start;
	*ret_end = end + 1;
	*ret_opener = p->ids[i + 1];
	return 0;
}

size_t dp_conv_prompt_turns(const struct dp_conv *cv, const struct dp_conv_prompt *p)
{
	size_t n = 0;
	if (!cv || !p || cv->format != DP_CHAT_FORMAT_V4 || cv->id_assistant < 0)
		return 0;
	for (size_t i = 0; i < p->n_ids; i++)
		n += p->ids[i] == cv->id_assistant;
	return n;
}

int dp_conv_prompt_splice(const struct dp_conv *cv, struct dp_conv_prompt *p, size_t turn,
                          enum dp_chat_mode mode, const int32_t *ids, size_t n)
{
	size_t start, end;
	int32_t opener, eos;
	int ret;

	if (!cv || !p || (n && !ids) || mode < 0 || mode >= DP_CHAT_MODE_MAX)
		return -EINVAL;
	if (cv->format != DP_CHAT_FORMAT_V4 || cv->id_assistant < 0 || cv->id_think < 0 ||
	    cv->id_think_end < 0)
		return -ENOTSUP;
	eos = dp_tok_special(cv->tok, DP_TOK_EOS);
	if (!n || ids[n - 1] != eos)
		return -EINVAL; /* a reply that did not end on EOS is no turn */
	if ((ret = turn_span(cv, p, turn, &start, &end, &opener)) < 0)
		return ret;
	if (opener != (mode == DP_CHAT_MODE_THINKING ? cv->id_think : cv->id_think_end))
		return -ENOENT; /* rendered without its reasoning (or in the other mode) */
	size_t len = p->n_ids - (end - start) + n;
	if (n > end - start) {
		int32_t *grown = realloc(p->ids, (len + 1) * sizeof(int32_t));
		if (!grown)
			return -ENOMEM;
		p->ids = grown;
	}
	memmove(p->ids + start + n, p->ids + end, (p->n_ids - end) * sizeof(int32_t));
	memcpy(p->ids + start, ids, n * sizeof(int32_t));
	p->n_ids = len;
	return 0;
}
