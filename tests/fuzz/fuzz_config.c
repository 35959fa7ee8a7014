/* SPDX-License-Identifier: MIT */
/*
 * tests/fuzz/fuzz_config.c — libFuzzer target for dualpathd's config file:
 * dp_config_load (daemon/config.c: the text checks, inih, every key's
 * parser and range, the cross-field checks) reading the input as the file
 * named by --config.
 *
 * Input: the file's bytes. The file is a memfd, named to dp_config_load as
 * /proc/self/fd/N, so nothing touches a disk.
 *
 * Checked, aborting on any difference:
 *   - the load returns 0 or a negative errno, never 1 (no --help here), and
 *     a refusal comes with a message; one that names the file and a line
 *     names a line the file has;
 *   - loaded settings print (dp_config_print, as --print-config does) as a
 *     file that loads again, as the same settings (every field; strings up
 *     to their NUL), and prints the same text again;
 *   - refused with a line named, the lines before it load, or are refused
 *     at an earlier line or by a check of settings together (naming no
 *     line); cut again until they load, those settings print and load
 *     again as above. Most mutations break a file somewhere: this way what
 *     they did before that point is checked too.
 * ASan/UBSan (and LeakSanitizer) watch our code; inih is the system's
 * library, not instrumented (ASan sees what it does through libc).
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "daemon/config.h"

#define CHECK(cond)                                                                                \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);   \
			abort();                                                                   \
		}                                                                                  \
	} while (0)

struct file {
	int fd;
	char path[64];
};

static struct file in, again;
static FILE *devnull;

static void file_init(struct file *f, const char *name)
{
	f->fd = memfd_create(name, MFD_CLOEXEC);
	CHECK(f->fd >= 0);
	snprintf(f->path, sizeof(f->path), "/proc/self/fd/%d", f->fd);
}

static void file_set(struct file *f, const void *data, size_t size)
{
	CHECK(ftruncate(f->fd, 0) == 0);
	CHECK(pwrite(f->fd, data, size, 0) == (ssize_t)size);
}

int LLVMFuzzerInitialize(int *argc, char ***argv);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc, (void)argv;
	file_init(&in, "dp-fuzz-config");
	file_init(&again, "dp-fuzz-config-again");
	devnull = fopen("/dev/null", "w");
	CHECK(devnull);
	return 0;
}

static int load(struct dp_config *c, const struct file *f, char *err, size_t err_len)
{
	char *argv[] = {"dualpathd", "--config", (char *)f->path, NULL};

	dp_config_defaults(c);
	err[0] = '\0';
	return dp_config_load(c, 3, argv, devnull, err, err_len);
}

static char *print(const struct dp_config *c, size_t *len)
{
	char *text = NULL;
	FILE *f = open_memstream(&text, len);

	CHECK(f);
	dp_config_print(c, f);
	CHECK(fclose(f) == 0);
	return text;
}

/* A string field's bytes after its NUL zeroed. */
static void zero_tail(char *s, size_t size)
{
	size_t n = strnlen(s, size);

	CHECK(n < size);
	memset(s + n, 0, size - n);
}

/* The string fields compared up to their NUL: a key set twice, the second
 * time shorter, leaves bytes of the first after it. */
static void normalize(struct dp_config *c)
{
#define ZERO_TAIL(field) zero_tail(c->field, sizeof(c->field))
	ZERO_TAIL(socket);
	ZERO_TAIL(socket_group);
	ZERO_TAIL(admin_group);
	ZERO_TAIL(state_dir);
	ZERO_TAIL(log_file);
	ZERO_TAIL(model);
	ZERO_TAIL(engram_tables);
	ZERO_TAIL(config_path);
#undef ZERO_TAIL
}

/* The line a message "PATH:LINE: ..." names (checked to be one the input
 * has), or 0 if it names none. */
static long message_line(const char *err, const uint8_t *data, size_t size)
{
	size_t n = strlen(in.path), lines = 1;
	char *end;
	long line;

	if (strncmp(err, in.path, n) != 0 || err[n] != ':' || err[n + 1] < '0' || err[n + 1] > '9')
		return 0;
	line = strtol(err + n + 1, &end, 10);
	for (size_t i = 0; i < size; i++)
		lines += data[i] == '\n';
	if (!(*end == ':' && line >= 1 && (size_t)line <= lines)) {
		fprintf(stderr, "line %ld of a %zu-line file: %s\n", line, lines, err);
		abort();
	}
	return line;
}

/* Loaded settings: --print-config's text loads as the same settings. */
static void check_reload(struct dp_config *a)
{
	static struct dp_config b; /* 28 KiB: not on the stack */
	char err[1024], *text, *text2;
	size_t len, len2;
	int ret;

	text = print(a, &len);
	file_set(&again, text, len);
	ret = load(&b, &again, err, sizeof(err));
	if (ret != 0) {
		fprintf(stderr, "the printed settings do not load (%d): %s\n--- printed:\n%s", ret,
		        err, text);
		abort();
	}
	snprintf(b.config_path, sizeof(b.config_path), "%s", a->config_path);
	normalize(a);
	normalize(&b);
	text2 = print(&b, &len2);
	if (memcmp(a, &b, sizeof(b)) != 0 || len != len2 || memcmp(text, text2, len) != 0) {
		fprintf(stderr,
		        "the printed settings load as other settings\n--- printed:\n%s"
		        "--- loaded again:\n%s",
		        text, text2);
		abort();
	}
	free(text);
	free(text2);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct dp_config a;
	char err[1024];
	size_t cut = 0;
	long line;
	int ret;

	file_set(&in, data, size);
	ret = load(&a, &in, err, sizeof(err));
	CHECK(ret <= 0);
	if (ret == 0) {
		check_reload(&a);
		return 0;
	}
	/* Cut the file before the line the message names, and load what is
	 * left: it loads, or is refused at an earlier line (the text checks
	 * run before inih, so a later line's bad byte can be named before an
	 * earlier line's bad syntax), or by a check of settings together
	 * (naming no line). Most inputs are refused somewhere: this way what
	 * came before that point gets printed and loaded again too. */
	for (;;) {
		CHECK(err[0] != '\0');
		line = message_line(err, data, cut ? cut : size);
		if (line <= 1)
			return 0;
		size_t before = 0;
		for (long l = 1; l < line; before++)
			l += data[before] == '\n';
		CHECK(!cut || before < cut);
		cut = before;
		file_set(&in, data, cut);
		ret = load(&a, &in, err, sizeof(err));
		CHECK(ret <= 0);
		if (ret == 0)
			break;
	}
	check_reload(&a);
	return 0;
}
