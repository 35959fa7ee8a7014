/* SPDX-License-Identifier: MIT */
/*
 * tok/regex.c — a tokenizer.json regex (Oniguruma, Ruby syntax, as
 * `tokenizers` runs it) in PCRE2 syntax with Oniguruma's Unicode classes.
 *
 * PCRE2's tables (Debian 12: Unicode 14) lack code points that Oniguruma's
 * (Unicode 16) have in \p{L} \p{M} \p{N} \p{P} \p{S}, and PCRE2's \s takes
 * U+180E; so \p{X} becomes \p{X} plus the missing ranges (unicode-fix.h,
 * generated) and \s becomes Oniguruma's list. PCRE2 still does the
 * property lookup for every code point it knows, so the classes stay fast.
 * Ruby's ^ and $ are line anchors: the pattern compiles with
 * PCRE2_MULTILINE. Constructs whose meaning differs between the engines or
 * whose classes are not checked (\d \w \b \h, other properties, POSIX
 * brackets, nested classes, (?m)) are refused by name rather than guessed.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/err.h"
#include "tok/tok-internal.h"
#include "tok/unicode-fix.h"

struct out {
	char *buf;
	size_t len, cap;
	bool nomem;
};

static void put(struct out *o, const char *s, size_t n)
{
	if (o->nomem)
		return;
	if (o->len + n + 1 > o->cap) {
		size_t cap = (o->len + n + 1) * 2;
		char *p = realloc(o->buf, cap);
		if (!p) {
			o->nomem = true;
			return;
		}
		o->buf = p;
		o->cap = cap;
	}
	memcpy(o->buf + o->len, s, n);
	o->len += n;
	o->buf[o->len] = 0;
}

static void puts_(struct out *o, const char *s)
{
	put(o, s, strlen(s));
}

static const char *category_add(char c)
{
	switch (c) {
	case 'L':
		return DP_BPE_ADD_L;
	case 'M':
		return DP_BPE_ADD_M;
	case 'N':
		return DP_BPE_ADD_N;
	case 'P':
		return DP_BPE_ADD_P;
	case 'S':
		return DP_BPE_ADD_S;
	default:
		return NULL;
	}
}

int dp_bpe_regex_translate(const char *p, size_t n, char **ret, char *err, size_t err_len)
{
	struct out o = { 0 };
	bool in_class = false;
	size_t i = 0;

#define REFUSE(...)                                   \
	do {                                          \
		dp_errf(err, err_len, __VA_ARGS__);   \
		free(o.buf);                          \
		return -EINVAL;                       \
	} while (0)

	puts_(&o, "");
	while (i < n) {
		char c = p[i];
		if (c == '\\') {
			if (i + 1 >= n)
				REFUSE("regex ends in a lone backslash");
			char e = p[i + 1];
			if (e == 'p' || e == 'P') {
				const char *close = memchr(p + i, '}', n - i);
				bool neg = e == 'P';
				size_t name = i + 3;
				if (i + 2 >= n || p[i + 2] != '{' || !close)
					REFUSE("regex: \\%c without {NAME} is not implemented", e);
				if (p[name] == '^') {
					neg = !neg;
					name++;
				}
				size_t name_len = (size_t)(close - (p + name));
				const char *add = name_len == 1 ? category_add(p[name]) : NULL;
				if (!add)
					REFUSE("regex: the class \\%c{%.*s} is not implemented (L, M, N, P, S)", e,
					       (int)(close - (p + i + 3)), p + i + 3);
				char prop[8] = { '\\', 'p', '{', p[name], '}', 0 };
				if (in_class && neg)
					REFUSE("regex: a negated property inside [...] is not implemented");
				puts_(&o, in_class ? "" : (neg ? "[^" : "["));
				puts_(&o, prop);
				puts_(&o, add);
				puts_(&o, in_class ? "" : "]");
				i = (size_t)(close - p) + 1;
				continue;
			}
			switch (e) {
			case 's':
				puts_(&o, in_class ? DP_BPE_SPACE : "[" DP_BPE_SPACE "]");
				break;
			case 'S':
				if (in_class)
					REFUSE("regex: \\S inside [...] is not implemented");
				puts_(&o, "[^" DP_BPE_SPACE "]");
				break;
			case 'v':
				puts_(&o, "\\x{0b}"); /* Oniguruma: the vertical tab */
				break;
			case 'u': {
				/* \uHHHH */
				if (i + 6 > n)
					REFUSE("regex: \\u needs four hex digits");
				char hex[16];
				snprintf(hex, sizeof(hex), "\\x{%.4s}", p + i + 2);
				for (int k = 2; k < 6; k++)
					if (!strchr("0123456789abcdefABCDEF", p[i + k]) || !p[i + k])
						REFUSE("regex: \\u needs four hex digits");
				puts_(&o, hex);
				i += 6;
				continue;
			}
			case 'r': case 'n': case 't': case 'f': case 'e': case 'a': case 'x':
			case 'A': case 'z': case 'Z': case 'G':
				put(&o, p + i, 2); /* \x's digits follow as plain text */
				break;
			default:
				if ((e >= 'a' && e <= 'z') || (e >= 'A' && e <= 'Z') || (e >= '0' && e <= '9'))
					REFUSE("regex: the escape \\%c is not implemented", e);
				put(&o, p + i, 2);
			}
			i += 2;
			continue;
		}
		if (in_class) {
			if (c == '[')
				REFUSE("regex: nested classes and POSIX brackets inside [...] are not implemented");
			if (c == '&' && i + 1 < n && p[i + 1] == '&')
				REFUSE("regex: class intersection && is not implemented");
			if (c == ']')
				in_class = false;
			put(&o, p + i, 1);
			i++;
			continue;
		}
		if (c == '[') {
			in_class = true;
			put(&o, p + i, 1);
			i++;
			if (i < n && p[i] == '^')
				put(&o, p + i++, 1);
			if (i < n && p[i] == ']') /* a leading ] is literal in both */
				put(&o, p + i++, 1);
			continue;
		}
		if (c == '(' && i + 2 < n && p[i + 1] == '?') {
			char g = p[i + 2];
			bool plain = strchr(":=!>#", g) != NULL || (g == '<' && i + 3 < n && strchr("=!", p[i + 3])) ||
			             (g == '<' && i + 3 < n && ((p[i + 3] >= 'a' && p[i + 3] <= 'z') ||
			                                         (p[i + 3] >= 'A' && p[i + 3] <= 'Z')));
			if (!plain) {
				/* inline options: only i (Ruby's m is PCRE2's s, x differs) */
				for (size_t k = i + 2; k < n && p[k] != ':' && p[k] != ')'; k++)
					if (p[k] != 'i' && p[k] != '-')
						REFUSE("regex: the inline option (?%c is not implemented (i only)", p[k]);
			}
		}
		put(&o, p + i, 1);
		i++;
	}
	if (o.nomem) {
		free(o.buf);
		return -ENOMEM;
	}
	*ret = o.buf;
	return 0;
#undef REFUSE
}
