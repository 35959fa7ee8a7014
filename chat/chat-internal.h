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

/* Python reads numbers jansson cannot hold: integers past 64 bits, NaN,
 * Infinity, reals that overflow to infinity. To keep them exact, such a
 * literal is given to jansson as a stand-in string: CHAT_STAND_IN followed by
 * the text json.dumps writes for Python's value. chat_py_json_stand_ins
 * rewrites JSON text so (1: done into out; 0: not JSON to Python; -1: the text
 * holds the marker itself); chat_py_dumps_stand_ins writes stand-ins back as
 * their literals; chat_py_stand_in says whether a value is one. */
#define CHAT_STAND_IN_MARK "dp-number:"
#define CHAT_STAND_IN      "\0" CHAT_STAND_IN_MARK
int chat_py_json_stand_ins(const char *s, size_t n, struct chat_buf *out);
void chat_py_dumps_stand_ins(struct chat_buf *b, const json_t *v);
bool chat_py_stand_in(const json_t *v, const char **lit, size_t *len);

#endif /* DP_CHAT_INTERNAL_H */
