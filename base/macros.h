/* SPDX-License-Identifier: MIT */
/* base/macros.h — small language helpers (C, and C++ for the CUDA files). */
#ifndef DP_BASE_MACROS_H
#define DP_BASE_MACROS_H

#include <stddef.h>

/* Elements of an array. Given a pointer it would silently give a wrong count;
 * gcc and clang reject that under the build's -Wall -Werror
 * (-Wsizeof-pointer-div). */
#define DP_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

#endif /* DP_BASE_MACROS_H */
