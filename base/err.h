/* SPDX-License-Identifier: MIT */
/*
 * base/err.h — writing error messages into a caller's buffer.
 *
 * The parts return negative errno values and, where a caller wants to know
 * more, a one-line message in a (char *err, size_t err_len) buffer that the
 * edge (the daemon, v4ctl, the tools) prints. These helpers write into such a
 * buffer; every one accepts err == NULL or err_len == 0 and then does nothing,
 * and every one leaves a NUL-terminated (possibly truncated) string.
 */
#ifndef DP_BASE_ERR_H
#define DP_BASE_ERR_H

#include <stdarg.h>
#include <stddef.h>

/* Format a message into err. */
void dp_errf(char *err, size_t err_len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
void dp_verrf(char *err, size_t err_len, const char *fmt, va_list ap)
    __attribute__((format(printf, 3, 0)));

/* Put "prefix: " before the message already in err (say, the file the
 * message is about). */
void dp_err_prefix(char *err, size_t err_len, const char *prefix);

/* Append to buf at *pos, advancing *pos by what the format asked for (so
 * *pos may pass len: nothing more is written then, and the caller can tell
 * the text was cut). */
void dp_appendf(char *buf, size_t len, size_t *pos, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#endif /* DP_BASE_ERR_H */
