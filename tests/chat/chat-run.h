/* SPDX-License-Identifier: MIT */
/*
 * tests/chat/chat-run.h — runs the output parser over a text cut into given
 * pieces and gathers everything it reported into one result.
 */
#ifndef DP_TESTS_CHAT_RUN_H
#define DP_TESTS_CHAT_RUN_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <criterion/criterion.h>

#include "chat/chat.h"

struct run_result {
	char *reasoning, *content; /* NUL-terminated */
	size_t reasoning_len, content_len;
	char *calls; /* "id name arguments\n" per call */
	size_t calls_len;
	unsigned flags;
	int ended;
};

static inline void run_add(char **s, size_t *len, const char *p, size_t n)
{
	*s = realloc(*s, *len + n + 1);
	cr_assert(*s);
	memcpy(*s + *len, p, n);
	*len += n;
	(*s)[*len] = '\0';
}

static inline void run_take(struct run_result *r, const struct dp_chat_delta *d)
{
	run_add(&r->reasoning, &r->reasoning_len, d->reasoning, d->reasoning_len);
	run_add(&r->content, &r->content_len, d->content, d->content_len);
	for (size_t i = 0; i < d->n_calls; i++) {
		const struct dp_chat_tool_call *c = &d->calls[i];
		run_add(&r->calls, &r->calls_len, c->id, strlen(c->id));
		run_add(&r->calls, &r->calls_len, " ", 1);
		run_add(&r->calls, &r->calls_len, c->name, strlen(c->name));
		run_add(&r->calls, &r->calls_len, " ", 1);
		run_add(&r->calls, &r->calls_len, c->arguments, strlen(c->arguments));
		run_add(&r->calls, &r->calls_len, "\n", 1);
	}
	r->flags = d->flags;
	r->ended = d->ended;
}

/* Feed text cut at the given offsets (ascending, each < n), then finish. */
static inline struct run_result run_cuts(enum dp_chat_format f, enum dp_chat_mode mode,
                                         const char *text, size_t n, const size_t *cuts,
                                         size_t n_cuts)
{
	struct run_result r = {0};
	run_add(&r.reasoning, &r.reasoning_len, "", 0);
	run_add(&r.content, &r.content_len, "", 0);
	run_add(&r.calls, &r.calls_len, "", 0);
	struct dp_chat_parser *p;
	cr_assert_eq(dp_chat_parser_new(f, mode, "call_", &p), 0);
	struct dp_chat_delta d;
	size_t at = 0;
	for (size_t i = 0; i <= n_cuts; i++) {
		size_t end = i < n_cuts ? cuts[i] : n;
		cr_assert_eq(dp_chat_parser_feed(p, text + at, end - at, &d), 0);
		run_take(&r, &d);
		at = end;
	}
	cr_assert_eq(dp_chat_parser_finish(p, &d), 0);
	run_take(&r, &d);
	dp_chat_parser_free(p);
	return r;
}

static inline struct run_result run_whole(enum dp_chat_format f, enum dp_chat_mode mode,
                                          const char *text, size_t n)
{
	return run_cuts(f, mode, text, n, NULL, 0);
}

static inline struct run_result run_bytes(enum dp_chat_format f, enum dp_chat_mode mode,
                                          const char *text, size_t n)
{
	size_t *cuts = malloc((n ? n : 1) * sizeof(*cuts));
	for (size_t i = 1; i < n; i++)
		cuts[i - 1] = i;
	struct run_result r = run_cuts(f, mode, text, n, cuts, n ? n - 1 : 0);
	free(cuts);
	return r;
}

static inline void run_fini(struct run_result *r)
{
	free(r->reasoning);
	free(r->content);
	free(r->calls);
}

static inline int run_equal(const struct run_result *a, const struct run_result *b)
{
	return a->reasoning_len == b->reasoning_len && a->content_len == b->content_len &&
	       a->calls_len == b->calls_len && a->flags == b->flags &&
	       !memcmp(a->reasoning, b->reasoning, a->reasoning_len) &&
	       !memcmp(a->content, b->content, a->content_len) &&
	       !memcmp(a->calls, b->calls, a->calls_len);
}

#endif /* DP_TESTS_CHAT_RUN_H */
