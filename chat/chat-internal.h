/* SPDX-License-Identifier: MIT */
/*
 * chat/chat-internal.h — what chat's files share: a growing byte buffer and
 * Python's json module as encoding_dsv4.py uses it.
 */
#ifndef DP_CHAT_INTERNAL_H
#define DP_CHAT_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>

/* A byte buffer that remembers a failed allocation instead of reporting each
 * one: append freely, check .oom once at the end. */
struct chat_buf {
	char *p;
	size_t len, cap;
	bool oom;
};

void chat_buf_add(struct chat_buf *b, const char *s, size_t n);
void chat_buf_adds(struct chat_buf *b, const char *s);
void chat_buf_fini(struct chat_buf *b);

/* json.dumps(value, ensure_ascii=False) for a value json.loads made: ", " and
 * ": " separators, keys in their order, floats as repr(), NaN never (jansson
 * cannot hold it). */
void chat_py_dumps(struct chat_buf *b, const json_t *v);
/* json.dumps of one str. */
void chat_py_dumps_string(struct chat_buf *b, const char *s, size_t n);
/* repr(x) for a finite double, into out (at least 32 bytes); returns its length. */
size_t chat_py_float_repr(double x, char *out);

/* Would Python's json.loads accept these bytes (as UTF-8 text)? Its grammar:
 * NaN, Infinity, -Infinity and integers of any size allowed, strict strings,
 * whitespace " \t\n\r" around. Nesting deeper than CHAT_JSON_DEPTH is
 * answered no (Python would stop at its recursion limit near 1000). */
#define CHAT_JSON_DEPTH 512
bool chat_py_json_valid(const char *s, size_t n);

#endif /* DP_CHAT_INTERNAL_H */
