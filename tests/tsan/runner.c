/* SPDX-License-Identifier: MIT */
/* Runner for the TSan stand-in of Criterion (see criterion/criterion.h). */
#include "criterion/criterion.h"

#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

static struct dpt_test *dpt_head, **dpt_tail = &dpt_head;
static pthread_t dpt_thread;
static jmp_buf dpt_jmp;
static bool dpt_failed, dpt_skipped;

void dpt_register(struct dpt_test *t)
{
	*dpt_tail = t;
	dpt_tail = &t->next;
}

void dpt_report(int kind, const char *file, int line, const char *expr, const char *fmt, ...)
{
	va_list ap;

	if (kind == 3)
		fprintf(stderr, "[----] %s:%d:", file, line);
	else
		fprintf(stderr, "[----] %s:%d: %s:", file, line, kind == 2 ? "skipped" : "assertion failed");
	if (kind != 2 && kind != 3)
		fprintf(stderr, " (%s)", expr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	if (kind == 3)
		return;
	if (kind == 2)
		dpt_skipped = true;
	else
		dpt_failed = true;
	if (kind == 0)
		return;
	if (!pthread_equal(pthread_self(), dpt_thread)) {
		fprintf(stderr, "[----] assertion failed off the test's thread: aborting\n");
		abort();
	}
	longjmp(dpt_jmp, 1);
}

static void run_one(struct dpt_test *t)
{
	dpt_failed = dpt_skipped = false;
	if (!setjmp(dpt_jmp)) {
		if (t->init)
			t->init();
		t->fn();
	}
	if (t->fini)
		t->fini();
}

int main(int argc, char **argv)
{
	const char *filter = argc > 2 && !strcmp(argv[1], "--filter") ? argv[2] : NULL;
	int tested = 0, passed = 0, failed = 0, skipped = 0;

	dpt_thread = pthread_self();
	for (struct dpt_test *t = dpt_head; t; t = t->next) {
		if (t->disabled || (filter && !strstr(t->name, filter)))
			continue;
		tested++;
		run_one(t);
		if (dpt_skipped) {
			skipped++;
			fprintf(stderr, "[SKIP] %s::%s\n", t->suite, t->name);
		} else if (dpt_failed) {
			failed++;
			fprintf(stderr, "[FAIL] %s::%s\n", t->suite, t->name);
		} else {
			passed++;
			fprintf(stderr, "[PASS] %s::%s\n", t->suite, t->name);
		}
	}
	fprintf(stderr, "[====] Synthesis (TSan runner): Tested: %d | Passing: %d | Failing: %d | Skipped: %d\n",
		tested, passed, failed, skipped);
	return failed ? 1 : 0;
}
