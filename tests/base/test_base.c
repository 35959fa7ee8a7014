/* SPDX-License-Identifier: MIT */
/*
 * base/clock.h, base/err.h, base/macros.h: the clock moves forward and its units agree; the
 * message helpers accept no buffer, cut instead of overflowing and keep the cause when a
 * prefix does not fit; DP_ARRAY_SIZE counts elements.
 */
#include <criterion/criterion.h>
#include <string.h>
#include <time.h>

#include "base/clock.h"
#include "base/err.h"
#include "base/macros.h"

Test(clock, is_monotonic_and_its_units_agree)
{
	uint64_t ns0 = dp_clock_ns(), ms0 = dp_clock_ms();
	double s0 = dp_clock_s();
	struct timespec d = {0, 20 * 1000000};
	nanosleep(&d, NULL);
	uint64_t ns1 = dp_clock_ns(), ms1 = dp_clock_ms();
	double s1 = dp_clock_s();
	cr_expect_geq(ns1 - ns0, 20000000u, "slept 20 ms: %llu ns",
	              (unsigned long long)(ns1 - ns0));
	cr_expect_geq(ms1 - ms0, 19u);
	cr_expect_geq(s1 - s0, 0.019);
	/* the same clock: ns / 1e6 and ms differ by rounding only */
	uint64_t ns = dp_clock_ns(), ms = dp_clock_ms();
	cr_expect_leq(ns / 1000000u, ms);
	cr_expect_leq(ms - ns / 1000000u, 1000u, "ms %llu, ns %llu", (unsigned long long)ms,
	              (unsigned long long)ns);
}

Test(err, errf_writes_cuts_and_accepts_no_buffer)
{
	char err[8] = "xxxxxxx";
	dp_errf(NULL, 16, "%s", "nowhere"); /* no buffer: nothing happens */
	dp_errf(err, 0, "%s", "nowhere");
	cr_expect_str_eq(err, "xxxxxxx", "a zero length writes nothing");
	dp_errf(err, sizeof(err), "bad %d", 42);
	cr_expect_str_eq(err, "bad 42");
	dp_errf(err, sizeof(err), "%s", "far too long");
	cr_expect_str_eq(err, "far too", "cut, NUL-terminated");
}

Test(err, prefix_goes_before_the_message_and_the_result_is_cut_to_fit)
{
	char err[28];
	dp_errf(err, sizeof(err), "dtype 7 is unknown");
	dp_err_prefix(err, sizeof(err), "a.dpe");
	cr_expect_str_eq(err, "a.dpe: dtype 7 is unknown");
	dp_err_prefix(err, sizeof(err), "dir");
	cr_expect_str_eq(err, "dir: a.dpe: dtype 7 is unkn", "cut at the buffer's end");
	cr_expect_eq(strlen(err), sizeof(err) - 1);

	char small[8] = "cause";
	dp_err_prefix(small, sizeof(small), "a-very-long-path");
	cr_expect_str_eq(small, "a-very-", "a prefix that fills the buffer is cut too");
	dp_err_prefix(NULL, 8, "x"); /* no buffer: nothing happens */
	char empty[8] = "";
	dp_err_prefix(empty, sizeof(empty), "p");
	cr_expect_str_eq(empty, "p: ");
}

Test(err, appendf_advances_past_the_end_so_a_cut_shows)
{
	char buf[10];
	size_t pos = 0;
	dp_appendf(buf, sizeof(buf), &pos, "%s", "abc");
	dp_appendf(buf, sizeof(buf), &pos, "%d", 1234);
	cr_expect_str_eq(buf, "abc1234");
	cr_expect_eq(pos, 7);
	dp_appendf(buf, sizeof(buf), &pos, "%s", "wxyz");
	cr_expect_str_eq(buf, "abc1234wx", "cut, NUL-terminated");
	cr_expect_eq(pos, 11, "pos counts what was asked for: past len means cut");
	dp_appendf(buf, sizeof(buf), &pos, "%s", "more");
	cr_expect_eq(pos, 11, "nothing more once past the end");
}

Test(macros, array_size_counts_elements)
{
	static const struct {
		int a;
		char b[3];
	} rows[5];
	int ints[7];
	char chars[3][11];
	cr_expect_eq(DP_ARRAY_SIZE(rows), 5);
	cr_expect_eq(DP_ARRAY_SIZE(ints), 7);
	cr_expect_eq(DP_ARRAY_SIZE(chars), 3);
	cr_expect_eq(DP_ARRAY_SIZE(chars[0]), 11);
	(void)rows;
	(void)ints;
	(void)chars;
}
