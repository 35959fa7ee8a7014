/* SPDX-License-Identifier: MIT */
/*
 * model/conv.h — a conversation with a model: chat requests in as prompt
 * ids, generated ids out as reasoning, content and tool calls.
 *
 * The one door through which the fronts (the socket front, the HTTP front)
 * and the tools reach chat rendering, tokenizing and output parsing, so
 * that none of them picks a chat format or a decode rule of its own. It
 * joins chat/chat.h (formats, the renderer, the parser) to the model's
 * tokenizer (model/tokenizer.h):
 *
 *   format   config.json's model_type "deepseek_v4" with a tokenizer.json
 *            speaks DeepSeek-V4's encoding_dsv4 (DP_CHAT_FORMAT_V4); anything
 *            else, the embedded model (deepseek_v4 but byte-level: V4's
 *            markup tokens do not exist for it) included, plain "Role: text"
 *            turns. docs/DESIGN.md, "Chat format".
 *   render   request -> prompt text -> ids. V4's text starts with the BOS
 *            token's text and holds role tokens, which the tokenizer matches
 *            as added tokens; the plain format's ids get the tokenizer's BOS
 *            prepended (if it has one).
 *   continue DP_CONV_CONTINUE renders the request's messages as what follows
 *            a context already in the model (a session's earlier turns),
 *            encoding_dsv4's encode_messages(context=...): no BOS, no
 *            reasoning-effort paragraph (it belongs before the first message
 *            only). In V4 the context must end with EOS, as a rendered
 *            assistant turn does: a reply that ended on EOS has it (the
 *            sampled id is part of the context); for one cut short the
 *            caller puts dp_conv_continue_lead() first. Plain: the text
 *            begins "\n\n" after the reply.
 *            `tools` and `response_format` belong to the conversation's first
 *            system message, so a continuation offering them is refused
 *            (-EINVAL naming the field), as are tool messages (their calls
 *            are in the context, which the renderer does not have).
 *   stream   generated ids -> decoded text (special tokens' text included,
 *            so the parser sees "</think>" and DSML) -> dp_chat_parser ->
 *            deltas. EOS is fed as its text, so in V4 it ends the output
 *            (delta.ended); the caller calls dp_conv_stream_finish once when
 *            the generation is over, however it ended.
 *
 * Threads: a struct dp_conv is immutable once made (any thread may render
 * with it); a struct dp_conv_stream belongs to one generation. Nothing here
 * logs. Errors are negative errno values; ret_* untouched on failure.
 */
#ifndef DP_MODEL_CONV_H
#define DP_MODEL_CONV_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "chat/chat.h"

#ifdef __cplusplus
extern "C" {
#endif

struct dp_tok;
struct dp_conv;
struct dp_conv_stream;

/* The conversation of model directory dir (its config.json picks the
 * format) speaking through tok, which is borrowed and must outlive it.
 * Returns 0, -EINVAL (bad arguments; config.json unreadable: err says
 * which file) or -ENOMEM. */
int dp_conv_new(const char *dir, const struct dp_tok *tok, struct dp_conv **ret_conv, char *err,
                size_t err_len);
/* The same with the format given (tools, tests). */
int dp_conv_new_format(enum dp_chat_format format, const struct dp_tok *tok,
                       struct dp_conv **ret_conv);
/* Accepts NULL. */
void dp_conv_free(struct dp_conv *conv);
enum dp_chat_format dp_conv_format(const struct dp_conv *conv);
/* The id a continuation's context must end with (V4: EOS), or -1 when the
 * format needs none (plain). */
int32_t dp_conv_continue_lead(const struct dp_conv *conv);

enum dp_conv_render_flags {
	DP_CONV_CONTINUE = 1u << 0,  /* after a context (see above) */
	DP_CONV_WANT_TEXT = 1u << 1, /* keep the rendered text in the prompt */
	DP_CONV_RENDER_FLAGS_MAX = 1u << 2,
};

struct dp_conv_prompt {
	int32_t *ids; /* owned */
	size_t n_ids;
	char *text; /* owned; NULL unless DP_CONV_WANT_TEXT (then NUL-terminated) */
	size_t len;
	enum dp_chat_mode mode; /* how the output starts: what dp_conv_stream_new takes */
	enum dp_chat_effort effort;
	bool has_tools;
};

/* Render request (an OpenAI-style chat request object: messages, tools,
 * thinking controls, reasoning_effort, ...) and tokenize it. -EINVAL or
 * -ENOTSUP with *err naming the field (chat/chat.h), -ENOMEM. */
int dp_conv_render(const struct dp_conv *conv, const json_t *request, unsigned flags,
                   struct dp_conv_prompt *ret, struct dp_chat_error *err);
/* The same from the request's JSON text. */
int dp_conv_render_text(const struct dp_conv *conv, const char *json, size_t len, unsigned flags,
                        struct dp_conv_prompt *ret, struct dp_chat_error *err);
/*
 * Replay (V4): a stateless client sends an earlier reply back as it received
 * it, and its re-render need not tokenize to the ids that were sampled (a
 * tokenizer has many spellings of one text; the model's was one of them).
 * The caller that kept those ids puts them back: the turn-th assistant turn
 * of the prompt (counting its <｜Assistant｜> openers from 0; the prompt's
 * final opener is no turn) has its generated part — the ids after the opener
 * <think> (mode THINKING) or </think> (CHAT) up to and including EOS —
 * replaced by ids, which must end on EOS. The text in p is not changed.
 * Returns 0; -ENOENT when p has no such turn or its opener is not mode's
 * (thinking mode rendered the turn without its reasoning: the context
 * differs from the one sampled by design); -ENOTSUP for the plain format;
 * -EINVAL; -ENOMEM.
 */
int dp_conv_prompt_splice(const struct dp_conv *conv, struct dp_conv_prompt *p, size_t turn,
                          enum dp_chat_mode mode, const int32_t *ids, size_t n);
/* How many <｜Assistant｜> openers p holds (V4; 0 otherwise). */
size_t dp_conv_prompt_turns(const struct dp_conv *conv, const struct dp_conv_prompt *p);
/* Accepts a zeroed prompt. */
void dp_conv_prompt_fini(struct dp_conv_prompt *prompt);

/* An output stream for one generation: mode from the prompt; tool-call ids
 * are id_prefix + index (NULL: "call_"). Returns 0, -EINVAL, -ENOMEM. */
int dp_conv_stream_new(const struct dp_conv *conv, enum dp_chat_mode mode, const char *id_prefix,
                       struct dp_conv_stream **ret_stream);
/* Accepts NULL. */
void dp_conv_stream_free(struct dp_conv_stream *s);
/* Feed one generated id; *out says what is now certain (chat/chat.h: its
 * pointers stay valid until the next call on s). Returns 0, -EINVAL (an id
 * outside the vocabulary; a call after finish), -ENOMEM. */
int dp_conv_stream_feed(struct dp_conv_stream *s, int32_t id, struct dp_chat_delta *out);
/* The generation is over (EOS, length limit, stop, cancel): what was held
 * back. Once per stream; later feeds and finishes are -EINVAL. */
int dp_conv_stream_finish(struct dp_conv_stream *s, struct dp_chat_delta *out);

#ifdef __cplusplus
}
#endif
#endif /* DP_MODEL_CONV_H */
