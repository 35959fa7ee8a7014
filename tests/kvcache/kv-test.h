/* SPDX-License-Identifier: MIT */
/*
 * tests/kvcache/kv-test.h — what the kvcache tests share: a state directory
 * of their own and the parity model "alt" (tiny and fast) on the cpu
 * backend, loaded by each suite's setup; feeding a sequence; token streams.
 */
#ifndef DP_TESTS_KV_TEST_H
#define DP_TESTS_KV_TEST_H

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>

#include "gpu/gpu.h"
#include "kvcache/kvcache.h"

static char dir[256];
static struct dp_gpu *gpu;
static struct dp_v4_model *model;
static uint32_t V;

/* A fresh directory /var/tmp/dp-test-NAME-XXXXXX (/tmp if /var/tmp will
 * not do) and the model. */
static inline void kv_test_setup(const char *name)
{
	char err[512] = "", path[512];
	const char *root = getenv("DP_TEST_PARITY");
	snprintf(dir, sizeof(dir), "/var/tmp/dp-test-%s-XXXXXX", name);
	if (!mkdtemp(dir)) {
		snprintf(dir, sizeof(dir), "/tmp/dp-test-%s-XXXXXX", name);
		cr_assert_not_null(mkdtemp(dir));
	}
	snprintf(path, sizeof(path), "%s/alt", root ? root : "tests/model/parity");
	cr_assert_eq(dp_gpu_new(DP_GPU_CPU, NULL, &gpu, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(dp_v4_model_load(gpu, path, &model, err, sizeof(err)), 0, "%s", err);
	V = (uint32_t)dp_v4_model_config(model)->vocab_size;
}

static inline void kv_test_teardown(void)
{
	char cmd[300];
	dp_v4_model_free(model);
	dp_gpu_free(gpu);
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	cr_expect_eq(system(cmd), 0);
}

/* Feed t[0..n) to seq in one step; logits: the last token's. */
static inline void kv_test_feed(struct dp_v4_seq *seq, const int32_t *t, uint32_t n,
                                float *logits)
{
	struct dp_v4_batch_item it = {seq, t, n, false};
	cr_assert_eq(dp_v4_forward(model, &it, 1, logits), 0);
}

/* Token i of stream salt: ids in [3, 203). */
static inline void kv_test_tokens(int32_t *t, uint32_t n, uint32_t salt)
{
	for (uint32_t i = 0; i < n; i++)
		t[i] = (int32_t)((i * 2654435761u + salt * 40503u) % 200) + 3;
}

#endif
