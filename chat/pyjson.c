/* SPDX-License-Identifier: MIT */
/*
 * chat/pyjson.c — Python's json.dumps and json.loads' grammar, as far as
 * encoding_dsv4.py's renderings depend on them.
 *
 * jansson holds the values (it parses the request), but its dump differs from
 * Python's: 0.1 comes out as 0.10000000000000001, separators differ, "/" is
 * escaped. The prompt must match byte for byte, so the dump is ours.
 */
#include <assert.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat/chat-internal.h"

void chat_buf_add(struct chat_buf *b, const char *s, size_t n)
{
	if (b->oom)
		return;
	if (b->len + n + 1 > b->cap) {
		size_t cap = b->cap ? b->cap : 256;
		while (cap < b->len + n + 1)
			cap *= 2;
		char *p = realloc(b->p, cap);
		if (!p) {
			b->oom = true;
			return;
		}
		b->p = p;
		b->cap = cap;
	}
	if (n)
		memcpy(b->p + b->len, s, n);
	b->len += n;
	b->p[b->len] = '\0';
}

void chat_buf_adds(struct chat_buf *b, const char *s)
{
	chat_buf_add(b, s, strlen(s));
}

void chat_buf_fini(struct chat_buf *b)
{
	free(b->p);
	*b = (struct chat_buf){0};
}

size_t chat_py_float_repr(double x, char *out)
{
	/* repr() is the shortest decimal that reads back as x: try 1..17
	 * significant digits (printf rounds correctly, as Python's dtoa does). */
	char e[40];
	for (int prec = 1; prec <= 17; prec++) {
		snprintf(e, sizeof(e), "%.*e", prec - 1, x);
		if (strtod(e, NULL) == x)
			break;
	}
	/* e is [-]d[.ddd]e(+|-)xx */
	const char *p = e;
	bool neg = *p == '-';
	if (neg)
		p++;
	char digits[24];
	size_t nd = 0;
	for (; *p && *p != 'e'; p++)
		if (*p != '.')
			digits[nd++] = *p;
	int exp10 = atoi(p + 1);
	while (nd > 1 && digits[nd - 1] == '0')
		nd--;
	int decpt = exp10 + 1; /* x = 0.d1d2... * 10^decpt */
	size_t n = 0;
	if (neg)
		out[n++] = '-';
	if (decpt > -4 && decpt <= 16) {
		if (decpt <= 0) {
			out[n++] = '0';
			out[n++] = '.';
			for (int i = 0; i < -decpt; i++)
				out[n++] = '0';
			memcpy(out + n, digits, nd);
			n += nd;
		} else if ((size_t)decpt >= nd) {
			memcpy(out + n, digits, nd);
			n += nd;
			for (size_t i = nd; i < (size_t)decpt; i++)
				out[n++] = '0';
			out[n++] = '.';
			out[n++] = '0';
		} else {
			memcpy(out + n, digits, (size_t)decpt);
			n += (size_t)decpt;
			out[n++] = '.';
			memcpy(out + n, digits + decpt, nd - (size_t)decpt);
			n += nd - (size_t)decpt;
		}
	} else {
		out[n++] = digits[0];
		if (nd > 1) {
			out[n++] = '.';
			memcpy(out + n, digits + 1, nd - 1);
			n += nd - 1;
		}
		n += (size_t)sprintf(out + n, "e%c%02d", decpt - 1 < 0 ? '-' : '+', abs(decpt - 1));
	}
	out[n] = '\0';
	return n;
}

void chat_py_dumps_string(struct chat_buf *b, const char *s, size_t n)
{
	static const char hex[] = "0123456789abcdef";
	chat_buf_add(b, "\"", 1);
	size_t run = 0; /* bytes copied as they are, written in one go */
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		const char *esc = NULL;
		char u[7];
		switch (c) {
		case '"':
			esc = "\\\"";
			break;
		case '\\':
			esc = "\\\\";
			break;
		case '\n':
			esc = "\\n";
			break;
		case '\r':
			esc = "\\r";
			break;
		case '\t':
			esc = "\\t";
			break;
		case '\b':
			esc = "\\b";
			break;
		case '\f':
			esc = "\\f";
			break;
		default:
			if (c < 0x20) {
				memcpy(u, "\\u00", 4);
				u[4] = hex[c >> 4];
				u[5] = hex[c & 15];
				u[6] = '\0';
				esc = u;
			}
		}
		if (!esc)
			continue;
		chat_buf_add(b, s + run, i - run);
		chat_buf_adds(b, esc);
		run = i + 1;
	}
	chat_buf_add(b, s + run, n - run);
	chat_buf_add(b, "\"", 1);
}

bool chat_py_stand_in(const json_t *v, const char **lit, size_t *len)
{
	size_t k = sizeof(CHAT_STAND_IN) - 1;
	if (!json_is_string(v) || json_string_length(v) <= k ||
	    memcmp(json_string_value(v), CHAT_STAND_IN, k) != 0)
		return false;
	*lit = json_string_value(v) + k;
	*len = json_string_length(v) - k;
	return true;
}

static void dumps(struct chat_buf *b, const json_t *v, bool stand_ins)
{
	char num[40];
	const char *lit;
	size_t lit_len;
	switch (json_typeof(v)) {
	case JSON_OBJECT: {
		chat_buf_add(b, "{", 1);
		bool first = true;
		for (void *it = json_object_iter((json_t *)v); it;
		     it = json_object_iter_next((json_t *)v, it)) {
			if (!first)
				chat_buf_add(b, ", ", 2);
			first = false;
			chat_py_dumps_string(b, json_object_iter_key(it),
			                     json_object_iter_key_len(it));
			chat_buf_add(b, ": ", 2);
			dumps(b, json_object_iter_value(it), stand_ins);
		}
		chat_buf_add(b, "}", 1);
		break;
	}
	case JSON_ARRAY:
		chat_buf_add(b, "[", 1);
		for (size_t i = 0; i < json_array_size(v); i++) {
			if (i)
				chat_buf_add(b, ", ", 2);
			dumps(b, json_array_get(v, i), stand_ins);
		}
		chat_buf_add(b, "]", 1);
		break;
	case JSON_STRING:
		if (stand_ins && chat_py_stand_in(v, &lit, &lit_len))
			chat_buf_add(b, lit, lit_len);
		else
			chat_py_dumps_string(b, json_string_value(v), json_string_length(v));
		break;
	case JSON_INTEGER:
		chat_buf_add(b, num,
		             (size_t)snprintf(num, sizeof(num), "%" JSON_INTEGER_FORMAT,
		                              json_integer_value(v)));
		break;
	case JSON_REAL:
		chat_buf_add(b, num, chat_py_float_repr(json_real_value(v), num));
		break;
	case JSON_TRUE:
		chat_buf_adds(b, "true");
		break;
	case JSON_FALSE:
		chat_buf_adds(b, "false");
		break;
	case JSON_NULL:
		chat_buf_adds(b, "null");
		break;
	}
}

void chat_py_dumps(struct chat_buf *b, const json_t *v)
{
	dumps(b, v, false);
}

void chat_py_dumps_stand_ins(struct chat_buf *b, const json_t *v)
{
	dumps(b, v, true);
}

/* ---- json.loads' grammar ------------------------------------------------ */

struct lex {
	const char *s;
	size_t n, i;
	struct chat_buf *out; /* when rewriting: the text with stand-ins */
	size_t copied;        /* s[0..copied) is in out */
};

/* Python's value of the number or literal s[a..l->i) as json.dumps writes
 * it, when jansson cannot hold it; NULL when it can. */
static const char *beyond_jansson(struct lex *l, size_t a, size_t *len)
{
	const char *t = l->s + a;
	size_t n = l->i - a;
	*len = n;
	if (t[0] == 'N' || t[0] == 'I' || (n > 1 && t[1] == 'I'))
		return t; /* NaN, Infinity, -Infinity */
	if (!memchr(t, '.', n) && !memchr(t, 'e', n) && !memchr(t, 'E', n)) {
		bool neg = t[0] == '-';
		size_t d = n - neg;
		const char *lim = neg ? "9223372036854775808" : "9223372036854775807";
		if (d < 19 || (d == 19 && memcmp(t + neg, lim, 19) <= 0))
			return NULL;
		return t; /* an int past 64 bits: its digits are its repr */
	}
	char *tmp = strndup(t, n);
	if (!tmp) {
		l->out->oom = true;
		return NULL;
	}
	double x = strtod(tmp, NULL);
	free(tmp);
	if (!isinf(x))
		return NULL;
	const char *r = x < 0 ? "-Infinity" : "Infinity";
	*len = strlen(r);
	return r;
}

static void stand_in(struct lex *l, size_t a)
{
	size_t len;
	const char *lit = l->out ? beyond_jansson(l, a, &len) : NULL;
	if (!lit)
		return;
	chat_buf_add(l->out, l->s + l->copied, a - l->copied);
	chat_buf_adds(l->out, "\"\\u0000");
	chat_buf_adds(l->out, CHAT_STAND_IN_MARK);
	chat_buf_add(l->out, lit, len);
	chat_buf_adds(l->out, "\"");
	l->copied = l->i;
}

static void skip_ws(struct lex *l)
{
	while (l->i < l->n && (l->s[l->i] == ' ' || l->s[l->i] == '\t' || l->s[l->i] == '\n' ||
	                       l->s[l->i] == '\r'))
		l->i++;
}

static bool lit(struct lex *l, const char *w)
{
	size_t k = strlen(w);
	if (l->n - l->i < k || memcmp(l->s + l->i, w, k) != 0)
		return false;
	l->i += k;
	return true;
}

static bool is_digit(struct lex *l)
{
	return l->i < l->n && l->s[l->i] >= '0' && l->s[l->i] <= '9';
}

static bool number(struct lex *l)
{
	if (l->i < l->n && l->s[l->i] == '-') {
		l->i++;
		if (lit(l, "Infinity"))
			return true;
	}
	if (!is_digit(l))
		return false;
	if (l->s[l->i] == '0')
		l->i++;
	else
		while (is_digit(l))
			l->i++;
	/* Python's scanner takes "1." as 1 followed by junk: a fraction
	 * needs a digit, or it is not part of the number. */
	if (l->i + 1 < l->n && l->s[l->i] == '.' && l->s[l->i + 1] >= '0' &&
	    l->s[l->i + 1] <= '9') {
		l->i++;
		while (is_digit(l))
			l->i++;
	}
	if (l->i < l->n && (l->s[l->i] == 'e' || l->s[l->i] == 'E')) {
		size_t save = l->i++;
		if (l->i < l->n && (l->s[l->i] == '+' || l->s[l->i] == '-'))
			l->i++;
		if (!is_digit(l)) {
			l->i = save; /* likewise "1e" is 1 then junk */
			return true;
		}
		while (is_digit(l))
			l->i++;
	}
	return true;
}

static bool string(struct lex *l)
{
	l->i++; /* the opening quote */
	while (l->i < l->n) {
		unsigned char c = (unsigned char)l->s[l->i++];
		if (c == '"')
			return true;
		if (c < 0x20)
			return false;
		if (c == '\\') {
			if (l->i >= l->n)
				return false;
			c = (unsigned char)l->s[l->i++];
			if (c == 'u') {
				for (int k = 0; k < 4; k++, l->i++)
					if (l->i >= l->n ||
					    !strchr("0123456789abcdefABCDEF", l->s[l->i]) ||
					    l->s[l->i] == '\0')
						return false;
			} else if (!strchr("\"\\/bfnrt", c) || c == '\0') {
				return false;
			}
		}
	}
	return false;
}

static bool value(struct lex *l, int depth)
{
	if (depth > CHAT_JSON_DEPTH || l->i >= l->n)
		return false;
	char c = l->s[l->i];
	if (c == '"')
		return string(l);
	if (c == '{' || c == '[') {
		char close = c == '{' ? '}' : ']';
		l->i++;
		skip_ws(l);
		if (l->i < l->n && l->s[l->i] == close) {
			l->i++;
			return true;
		}
		for (;;) {
			if (c == '{') {
				if (l->i >= l->n || l->s[l->i] != '"' || !string(l))
					return false;
				skip_ws(l);
				if (!lit(l, ":"))
					return false;
				skip_ws(l);
			}
			if (!value(l, depth + 1))
				return false;
			skip_ws(l);
			if (lit(l, ","))
				skip_ws(l);
			else
				return lit(l, close == '}' ? "}" : "]");
		}
	}
	if (lit(l, "true") || lit(l, "false") || lit(l, "null"))
		return true;
	size_t a = l->i;
	if (!lit(l, "NaN") && !lit(l, "Infinity") && !number(l))
		return false;
	stand_in(l, a);
	return true;
}

bool chat_py_json_valid(const char *s, size_t n)
{
	struct lex l = {s, n, 0, NULL, 0};
	skip_ws(&l);
	if (!value(&l, 0))
		return false;
	skip_ws(&l);
	return l.i == n;
}

int chat_py_json_stand_ins(const char *s, size_t n, struct chat_buf *out)
{
	if (memmem(s, n, CHAT_STAND_IN_MARK, strlen(CHAT_STAND_IN_MARK)))
		return -1;
	struct lex l = {s, n, 0, out, 0};
	skip_ws(&l);
	if (!value(&l, 0))
		return 0;
	skip_ws(&l);
	if (l.i != n)
		return 0;
	chat_buf_add(out, s + l.copied, n - l.copied);
	return 1;
}
