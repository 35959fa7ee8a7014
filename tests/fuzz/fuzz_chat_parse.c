/* SPDX-License-Identifier: MIT */
/*
 * tests/fuzz/fuzz_chat_parse.c — libFuzzer target for the chat output parser
 * (chat/parse.c): model text, streamed in chunks.
 *
 * Input: byte 0 picks the format and mode, byte 1 seeds the chunk sizes;
 * the rest is the model's text.
 *
 * Checked, aborting on any difference:
 *   - fed whole, fed in seeded chunks and fed one byte at a time, the parser
 *     reports the same reasoning, content, calls and flags;
 *   - without a flag raised, no markup is in the reasoning or the content;
 *   - every call's arguments are a JSON object's text ("{...}"), its id
 *     the prefix and its index;
 *   - the text given out plus what markup took is never more than came in.
 */
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

struct acc {
	char *r, *c, *calls;
	size_t rl, cl, callsl;
	unsigned flags;
	size_t n_calls;
};

static void add(char **s, size_t *l, const char *p, size_t n)
{
	*s = realloc(*s, *l + n + 1);
	CHECK(*s);
	memcpy(*s + *l, p, n);
	*l += n;
	(*s)[*l] = '\0';
}

static void take(struct acc *a, const struct dp_chat_delta *d)
{
	add(&a->r, &a->rl, d->reasoning, d->reasoning_len);
	add(&a->c, &a->cl, d->content, d->content_len);
	for (size_t i = 0; i < d->n_calls; i++) {
		const struct dp_chat_tool_call *c = &d->calls[i];
		char id[32];
		snprintf(id, sizeof(id), "t_%zu", a->n_calls++);
		CHECK(!strcmp(c->id, id));
		size_t al = strlen(c->arguments);
		CHECK(al >= 2 && c->arguments[0] == '{' && c->arguments[al - 1] == '}');
		add(&a->calls, &a->callsl, c->name, strlen(c->name));
		add(&a->calls, &a->callsl, "\n", 1);
		add(&a->calls, &a->callsl, c->arguments, al);
		add(&a->calls, &a->callsl, "\n", 1);
	}
	a->flags = d->flags;
}

static struct acc run(enum dp_chat_format f, enum dp_chat_mode m, const char *t, size_t n,
                      unsigned seed)
{
	struct acc a = {0};
	add(&a.r, &a.rl, "", 0);
	add(&a.c, &a.cl, "", 0);
	add(&a.calls, &a.callsl, "", 0);
	struct dp_chat_parser *p;
	struct dp_chat_delta d;
	CHECK(dp_chat_parser_new(f, m, "t_", &p) == 0);
	for (size_t at = 0; at < n;) {
		size_t k = seed == 0 ? n - at : 1 + (seed * (at + 7)) % 13;
		if (seed == 1)
			k = 1;
		if (k > n - at)
			k = n - at;
		CHECK(dp_chat_parser_feed(p, t + at, k, &d) == 0);
		take(&a, &d);
		at += k;
	}
	CHECK(dp_chat_parser_finish(p, &d) == 0);
	take(&a, &d);
	dp_chat_parser_free(p);
	return a;
}

static void same(const struct acc *a, const struct acc *b)
{
	CHECK(a->rl == b->rl && !memcmp(a->r, b->r, a->rl));
	CHECK(a->cl == b->cl && !memcmp(a->c, b->c, a->cl));
	CHECK(a->callsl == b->callsl && !memcmp(a->calls, b->calls, a->callsl));
	CHECK(a->flags == b->flags);
}

static void fini(struct acc *a)
{
	free(a->r);
	free(a->c);
	free(a->calls);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 2)
		return 0;
	enum dp_chat_format f = data[0] & 1 ? DP_CHAT_FORMAT_PLAIN : DP_CHAT_FORMAT_V4;
	enum dp_chat_mode m = data[0] & 2 ? DP_CHAT_MODE_THINKING : DP_CHAT_MODE_CHAT;
	unsigned seed = 2u + data[1];
	const char *t = (const char *)data + 2;
	size_t n = size - 2;

	struct acc whole = run(f, m, t, n, 0);
	struct acc chunks = run(f, m, t, n, seed);
	struct acc bytes = run(f, m, t, n, 1);
	same(&whole, &chunks);
	same(&whole, &bytes);
	if (f == DP_CHAT_FORMAT_V4 && !(whole.flags & ~(unsigned)DP_CHAT_PARSE_BAD_VALUE)) {
		static const char *const markup[] = {"</think>", "<think>", "｜DSML｜",
		                                     "<｜end▁of▁sentence｜>"};
		for (size_t i = 0; i < sizeof(markup) / sizeof(markup[0]); i++) {
			CHECK(!memmem(whole.c, whole.cl, markup[i], strlen(markup[i])));
			CHECK(!memmem(whole.r, whole.rl, markup[i], strlen(markup[i])));
		}
	}
	CHECK(whole.rl + whole.cl <= n);
	fini(&whole);
	fini(&chunks);
	fini(&bytes);
	return 0;
}
