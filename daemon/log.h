/* SPDX-License-Identifier: MIT */
/*
 * daemon/log.h — dualpathd's log: one line per event on stderr with an
 * sd-daemon priority prefix ("<3>" ... "<7>"), which journald turns into
 * priorities; or to a log file (reopened on SIGHUP, for logrotate).
 * Thread-safe: each line is one write(2).
 */
#ifndef DP_DAEMON_LOG_H
#define DP_DAEMON_LOG_H

#include <stdarg.h>

enum dp_log_level {
	DP_LOG_ERR = 3,
	DP_LOG_WARNING = 4,
	DP_LOG_NOTICE = 5,
	DP_LOG_INFO = 6,
	DP_LOG_DEBUG = 7,
};

/* Name -> level ("err", "warning", "notice", "info", "debug"); -1 if unknown. */
int dp_log_level_parse(const char *name);
/* Level -> name; NULL if not a level. */
const char *dp_log_level_name(int level);
void dp_log_set_level(int level);
/* Log to path instead of stderr ("" or NULL: stderr). Returns 0 or -errno. */
int dp_log_open(const char *path);
/* Reopen the log file (SIGHUP). */
int dp_log_reopen(void);

void dp_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_err(...) dp_log(DP_LOG_ERR, __VA_ARGS__)
#define log_warning(...) dp_log(DP_LOG_WARNING, __VA_ARGS__)
#define log_notice(...) dp_log(DP_LOG_NOTICE, __VA_ARGS__)
#define log_info(...) dp_log(DP_LOG_INFO, __VA_ARGS__)
#define log_debug(...) dp_log(DP_LOG_DEBUG, __VA_ARGS__)

#endif /* DP_DAEMON_LOG_H */
