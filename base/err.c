/* SPDX-License-Identifier: MIT */
/* base/err.c — see err.h. */
#include <stdio.h>
#include <string.h>

#include "base/err.h"

void dp_verrf(char *err, size_t err_len, const char *fmt, va_list ap)
{
	if (!err || !err_len)
		return;
	vsnprintf(err, err_len, fmt, ap);
}

void dp_errf(char *err, size_t err_len, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	dp_verrf(err, err_len, fmt, ap);
	va_end(ap);
}

void dp_err_prefix(char *err, size_t err_len, const char *prefix)
{
	if (!err || !err_len)
		return;
	size_t n = strnlen(err, err_len - 1); /* the message, cut to fit */
	size_t p = strlen(prefix) + 2;        /* "prefix: " */
	if (p >= err_len) {
		snprintf(err, err_len, "%s: ", prefix);
		return;
	}
	size_t keep = n < err_len - 1 - p ? n : err_len - 1 - p;
	memmove(err + p, err, keep); /* the message moves right, in place */
	err[p + keep] = '\0';
	memcpy(err, prefix, p - 2);
	err[p - 2] = ':';
	err[p - 1] = ' ';
}

void dp_appendf(char *buf, size_t len, size_t *pos, const char *fmt, ...)
{
	va_list ap;

	if (*pos >= len)
		return;
	va_start(ap, fmt);
	int n = vsnprintf(buf + *pos, len - *pos, fmt, ap);
	va_end(ap);
	if (n > 0)
		*pos += (size_t)n;
}
