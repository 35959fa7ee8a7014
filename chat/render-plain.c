/* SPDX-License-Identifier: MIT */
/*
 * chat/render-plain.c — a chat request for a model without a chat format (the
 * embedded one): each turn is "Role: text", turns are separated by a blank
 * line, and the prompt ends with "Assistant:" for the model to go on from.
 * Reasoning is not shown; tool calls are lines "[call NAME ARGUMENTS]" under
 * the assistant's text, tool results "Tool (ID): text"; offered tools and a
 * response_format follow the first system turn as JSON.
 */
#include <errno.h>

#include "chat/render-internal.h"

static const char *const LABEL[CHAT_ROLE_MAX] = {
    [CHAT_SYSTEM] = "System",       [CHAT_USER] = "User", [CHAT_ASSISTANT] = "Assistant",
    [CHAT_DEVELOPER] = "Developer", [CHAT_TOOL] = "Tool",
};

int chat_render_plain(struct chat_req *req, struct chat_buf *b, struct dp_chat_error *err)
{
	(void)err;
	for (size_t i = 0; i < req->n; i++) {
		const struct chat_msg *m = &req->msgs[i];
		chat_buf_adds(b, LABEL[m->role]);
		if (m->role == CHAT_TOOL) {
			chat_buf_adds(b, " (");
			chat_buf_adds(b, m->tool_call_id);
			chat_buf_adds(b, ")");
		}
		chat_buf_adds(b, ":");
		if (m->content_len) {
			chat_buf_adds(b, " ");
			chat_buf_add(b, m->content, m->content_len);
		}
		for (size_t k = 0; m->tool_calls && k < json_array_size(m->tool_calls); k++) {
			const json_t *fn =
			    json_object_get(json_array_get(m->tool_calls, k), "function");
			const json_t *name = json_object_get(fn, "name");
			const json_t *args = json_object_get(fn, "arguments");
			chat_buf_adds(b, "\n[call ");
			chat_buf_add(b, json_string_value(name), json_string_length(name));
			chat_buf_adds(b, " ");
			chat_buf_add(b, json_string_value(args), json_string_length(args));
			chat_buf_adds(b, "]");
		}
		if (m->tools) {
			chat_buf_adds(b, "\n\nTools:");
			for (size_t k = 0; k < json_array_size(m->tools); k++) {
				chat_buf_adds(b, "\n");
				chat_py_dumps(
				    b, json_object_get(json_array_get(m->tools, k), "function"));
			}
		}
		if (m->response_format) {
			chat_buf_adds(b, "\n\nResponse format: ");
			chat_py_dumps(b, m->response_format);
		}
		chat_buf_adds(b, "\n\n");
	}
	chat_buf_adds(b, "Assistant:");
	return b->oom ? -ENOMEM : 0;
}
