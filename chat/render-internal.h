/* SPDX-License-Identifier: MIT */
/*
 * chat/render-internal.h — a chat request checked and normalized
 * (request.c), ready for a format's renderer (render-v4.c, render-plain.c).
 */
#ifndef DP_CHAT_RENDER_INTERNAL_H
#define DP_CHAT_RENDER_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>

#include "chat/chat.h"
#include "chat/chat-internal.h"

enum chat_role {
	CHAT_SYSTEM,
	CHAT_USER,
	CHAT_ASSISTANT,
	CHAT_DEVELOPER,
	CHAT_TOOL,
	CHAT_ROLE_MAX,
};

/* A piece of a merged user turn: its text, or a tool's result. */
struct chat_block {
	bool tool;
	char *text; /* owned */
	size_t len;
	const char *tool_id; /* the request's tool_call_id (tool blocks) */
};

struct chat_msg {
	enum chat_role role;
	size_t src;    /* index in the request's messages, for error paths */
	char *content; /* content parts joined; owned; NULL when null or absent */
	size_t content_len;
	const char *reasoning; /* assistant: reasoning_content (or reasoning); NULL if none */
	size_t reasoning_len;
	const json_t *tool_calls;      /* assistant: a non-empty array, checked; or NULL */
	const char *tool_call_id;      /* tool */
	const json_t *tools;           /* attached request tools (an array), or NULL */
	const json_t *response_format; /* attached, or NULL */
	struct chat_block *blocks;     /* user turns after merging */
	size_t n_blocks, cap_blocks;
	bool has_blocks;
};

struct chat_req {
	struct chat_msg *msgs;
	size_t n, cap;
	enum dp_chat_mode mode;
	enum dp_chat_effort effort;
	bool drop_thinking;
	bool has_tools;
};

/* The ids of one assistant turn's tool calls, sorted for lookup: a request
 * may carry thousands of calls and results, and matching each result by a
 * scan would be quadratic. */
struct chat_ids {
	struct chat_id {
		const char *id;
		size_t at; /* the call's index; the last one when ids repeat */
	} * v;
	size_t n;
};

/* Index calls (an array of tool calls, or NULL); ids that are absent or empty
 * are left out, as the Python's dict leaves them. Returns 0 or -ENOMEM. */
int chat_ids_build(const json_t *calls, struct chat_ids *ids);
/* The call index of id, or -1. */
long chat_ids_find(const struct chat_ids *ids, const char *id);
void chat_ids_fini(struct chat_ids *ids);

/* Fill err and return rc. */
int chat_bad(struct dp_chat_error *err, int rc, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

int chat_req_parse(const json_t *request, struct chat_req *req, struct dp_chat_error *err);
void chat_req_fini(struct chat_req *req);
/* Room for one more message (zeroed), or NULL on ENOMEM. */
struct chat_msg *chat_req_push(struct chat_req *req);

int chat_render_v4(struct chat_req *req, struct chat_buf *out, struct dp_chat_error *err);
int chat_render_plain(struct chat_req *req, struct chat_buf *out, struct dp_chat_error *err);

#endif /* DP_CHAT_RENDER_INTERNAL_H */
