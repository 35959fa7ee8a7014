/* SPDX-License-Identifier: MIT */
/*
 * base/clock.h — the monotonic clock (CLOCK_MONOTONIC), for durations,
 * deadlines and timestamps within one boot. Never jumps with the wall clock.
 * Any thread; no allocation, no lock (a vDSO call).
 */
#ifndef DP_BASE_CLOCK_H
#define DP_BASE_CLOCK_H

#include <stdint.h>
#include <time.h>

/* Nanoseconds since an arbitrary point (boot). */
static inline uint64_t dp_clock_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Milliseconds since the same point. */
static inline uint64_t dp_clock_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* Seconds since the same point, as a double (for rates and reports). */
static inline double dp_clock_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

#endif /* DP_BASE_CLOCK_H */
