/* SPDX-License-Identifier: MIT */
#include "daemon/log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

/* The log is process-wide by nature (stderr is); its settings live here. */
static _Atomic int log_level = DP_LOG_INFO;
static char log_path[4096];

static const char *const level_names[] = { "err", "warning", "notice", "info", "debug" };

int dp_log_level_parse(const char *name)
{
	for (int i = 0; name && i < 5; i++)
		if (!strcmp(name, level_names[i]))
			return DP_LOG_ERR + i;
	return -1;
}

const char *dp_log_level_name(int level)
{
	if (level < DP_LOG_ERR || level > DP_LOG_DEBUG)
		return NULL;
	return level_names[level - DP_LOG_ERR];
}

void dp_log_set_level(int level)
{
	atomic_store(&log_level, level);
}

int dp_log_reopen(void)
{
	if (!log_path[0])
		return 0;
	int fd = open(log_path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
	if (fd < 0)
		return -errno;
	if (dup2(fd, STDERR_FILENO) < 0) {
		int e = -errno;
		close(fd);
		return e;
	}
	close(fd);
	return 0;
}

int dp_log_open(const char *path)
{
	snprintf(log_path, sizeof(log_path), "%s", path ? path : "");
	return dp_log_reopen();
}

void dp_log(int level, const char *fmt, ...)
{
	char line[2048];
	va_list ap;

	if (level > atomic_load(&log_level))
		return;
	int n = snprintf(line, sizeof(line), "<%d>", level);
	va_start(ap, fmt);
	n += vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
	va_end(ap);
	if (n > (int)sizeof(line) - 2)
		n = (int)sizeof(line) - 2;
	line[n++] = '\n';
	ssize_t w = write(STDERR_FILENO, line, (size_t)n);
	(void)w;
}
