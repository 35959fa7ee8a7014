/* SPDX-License-Identifier: MIT */
/*
 * A minimal, in-process stand-in for Criterion's API, used only in the
 * ThreadSanitizer build.
 *
 * Why: Criterion runs each test in a BoxFort sandbox whose shared arena is
 * mmap'ed at random addresses in 0x2000'0000'0000..0x7f00'0000'0000, which
 * ThreadSanitizer reserves for its shadow memory; under TSan every Criterion
 * binary aborts with "Could not initialize inheritable arena" (upstream
 * Snaipe/Criterion#274). This header lets the very same test sources run
 * under TSan: tests register themselves, run one after another in this
 * process, and the runner (runner.c) prints a Criterion-style synthesis.
 *
 * It covers the subset our TSan suites use: Test() with .init/.fini,
 * cr_assert / cr_expect and their _eq, _neq, _lt, _leq, _gt, _geq, _null,
 * _not_null, _arr_eq forms, cr_assert_fail, cr_skip_test and cr_log_info.
 * A failed cr_assert on a thread other than the test's aborts the process,
 * as a crash would in Criterion.
 */
#ifndef DP_TESTS_TSAN_CRITERION_H
#define DP_TESTS_TSAN_CRITERION_H

#include <math.h>
#include <stdbool.h>
#include <stddef.h>
#include <string.h>

struct dpt_test {
	const char *suite;
	const char *name;
	void (*fn)(void);
	void (*init)(void);
	void (*fini)(void);
	double timeout;
	bool disabled;
	struct dpt_test *next;
};

void dpt_register(struct dpt_test *t);
/* kind: 0 expect (continue), 1 assert (leave the test), 2 skip */
void dpt_report(int kind, const char *file, int line, const char *expr, const char *fmt, ...)
	__attribute__((format(printf, 5, 6)));

#define Test(S, N, ...)                                                             \
	static void dpt_fn_##S##_##N(void);                                          \
	static struct dpt_test dpt_desc_##S##_##N = {                               \
		.suite = #S, .name = #N, .fn = dpt_fn_##S##_##N, __VA_ARGS__         \
	};                                                                           \
	__attribute__((constructor)) static void dpt_reg_##S##_##N(void)            \
	{                                                                            \
		dpt_register(&dpt_desc_##S##_##N);                                   \
	}                                                                            \
	static void dpt_fn_##S##_##N(void)

/* The message is optional: " " "fmt" concatenates, " " alone is blank. */
#define dpt_check(kind, cond, expr, ...)                                                 \
	do {                                                                             \
		if (!(cond))                                                             \
			dpt_report(kind, __FILE__, __LINE__, expr, " " __VA_ARGS__);      \
	} while (0)

#define cr_expect(cond, ...) dpt_check(0, (cond), #cond, __VA_ARGS__)
#define cr_assert(cond, ...) dpt_check(1, (cond), #cond, __VA_ARGS__)
#define cr_assert_fail(...) dpt_report(1, __FILE__, __LINE__, "failure", " " __VA_ARGS__)
#define cr_skip_test(...) dpt_report(2, __FILE__, __LINE__, "skipped", " " __VA_ARGS__)
#define cr_log_info(...) dpt_report(3, __FILE__, __LINE__, "info", " " __VA_ARGS__)

#define dpt_cmp(kind, a, op, b, ...) dpt_check(kind, (a)op(b), #a " " #op " " #b, __VA_ARGS__)
#define cr_expect_eq(a, b, ...) dpt_cmp(0, a, ==, b, __VA_ARGS__)
#define cr_assert_eq(a, b, ...) dpt_cmp(1, a, ==, b, __VA_ARGS__)
#define cr_expect_neq(a, b, ...) dpt_cmp(0, a, !=, b, __VA_ARGS__)
#define cr_assert_neq(a, b, ...) dpt_cmp(1, a, !=, b, __VA_ARGS__)
#define cr_expect_lt(a, b, ...) dpt_cmp(0, a, <, b, __VA_ARGS__)
#define cr_assert_lt(a, b, ...) dpt_cmp(1, a, <, b, __VA_ARGS__)
#define cr_expect_leq(a, b, ...) dpt_cmp(0, a, <=, b, __VA_ARGS__)
#define cr_assert_leq(a, b, ...) dpt_cmp(1, a, <=, b, __VA_ARGS__)
#define cr_expect_gt(a, b, ...) dpt_cmp(0, a, >, b, __VA_ARGS__)
#define cr_assert_gt(a, b, ...) dpt_cmp(1, a, >, b, __VA_ARGS__)
#define cr_expect_geq(a, b, ...) dpt_cmp(0, a, >=, b, __VA_ARGS__)
#define cr_assert_geq(a, b, ...) dpt_cmp(1, a, >=, b, __VA_ARGS__)
#define cr_expect_null(p, ...) dpt_check(0, (p) == NULL, #p " == NULL", __VA_ARGS__)
#define cr_assert_null(p, ...) dpt_check(1, (p) == NULL, #p " == NULL", __VA_ARGS__)
#define cr_expect_not_null(p, ...) dpt_check(0, (p) != NULL, #p " != NULL", __VA_ARGS__)
#define cr_assert_not_null(p, ...) dpt_check(1, (p) != NULL, #p " != NULL", __VA_ARGS__)
#define cr_expect_arr_eq(a, b, n, ...) dpt_check(0, memcmp((a), (b), (n)) == 0, #a " == " #b, __VA_ARGS__)
#define cr_assert_arr_eq(a, b, n, ...) dpt_check(1, memcmp((a), (b), (n)) == 0, #a " == " #b, __VA_ARGS__)
#define cr_expect_str_eq(a, b, ...) dpt_check(0, strcmp((a), (b)) == 0, #a " == " #b, __VA_ARGS__)
#define cr_assert_str_eq(a, b, ...) dpt_check(1, strcmp((a), (b)) == 0, #a " == " #b, __VA_ARGS__)
#define cr_expect_float_eq(a, b, eps, ...) \
	dpt_check(0, fabs((double)(a) - (double)(b)) <= (eps), #a " == " #b, __VA_ARGS__)
#define cr_assert_float_eq(a, b, eps, ...) \
	dpt_check(1, fabs((double)(a) - (double)(b)) <= (eps), #a " == " #b, __VA_ARGS__)

#endif /* DP_TESTS_TSAN_CRITERION_H */
