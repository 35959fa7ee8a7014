/* SPDX-License-Identifier: MIT */
/*
 * tests/fuzz/fuzz_chat.c — libFuzzer target for the chat renderer: the input
 * is a chat request's JSON text (what an HTTP client sends), rendered in both
 * formats by dp_chat_render_text (chat/request.c, render-v4.c,
 * render-plain.c, pyjson.c).
 *
 * Checked, aborting on any difference:
 *   - the result is 0 or -EINVAL / -ENOTSUP (never another code: no
 *     allocation fails here), and a refusal says what is wrong;
 *   - a V4 rendering starts with BOS and is NUL-terminated at its length;
 *   - rendering again gives the same bytes (no state, no uninitialized
 *     reads that ASan/MSan would not see);
 *   - both formats agree on whether the request is valid (they share the
 *     checks), except that only V4 renders tool-call arguments and so can
 *     refuse them.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat/chat.h"

#define CHECK(cond)                                                                                \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);   \
			abort();                                                                   \
		}                                                                                  \
	} while (0)

#define BOS "<｜begin▁of▁sentence｜>"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *json = (const char *)data;
	struct dp_chat_prompt a = {0}, b = {0}, plain = {0};
	struct dp_chat_error err;
	int rc = dp_chat_render_text(DP_CHAT_FORMAT_V4, json, size, &a, &err);
	CHECK(rc == 0 || rc == -EINVAL || rc == -ENOTSUP);
	if (rc == 0) {
		CHECK(a.len >= strlen(BOS) && !memcmp(a.text, BOS, strlen(BOS)));
		CHECK(a.text[a.len] == '\0');
		CHECK(dp_chat_render_text(DP_CHAT_FORMAT_V4, json, size, &b, NULL) == 0);
		CHECK(a.len == b.len && !memcmp(a.text, b.text, a.len));
		CHECK(a.mode == b.mode && a.effort == b.effort && a.has_tools == b.has_tools);
	} else {
		CHECK(err.message[0] != '\0');
		CHECK(a.text == NULL);
	}
	int rp = dp_chat_render_text(DP_CHAT_FORMAT_PLAIN, json, size, &plain, &err);
	CHECK(rp == 0 || rp == -EINVAL || rp == -ENOTSUP);
	CHECK(rc != 0 || rp == 0);
	if (rp == 0)
		CHECK(plain.text[plain.len] == '\0');
	dp_chat_prompt_fini(&a);
	dp_chat_prompt_fini(&b);
	dp_chat_prompt_fini(&plain);
	return 0;
}
