/* SPDX-License-Identifier: MIT */
/*
 * tests/engram/engram-test.h — helpers shared by the Engram table, store and fusion suites:
 * paths of the golden data, scratch directories, table files made from a checkpoint's table
 * tensors, and a model + store bundle. Test-only (static, header-only).
 */
#ifndef DP_TESTS_ENGRAM_TEST_H
#define DP_TESTS_ENGRAM_TEST_H

#include <criterion/criterion.h>
#include <errno.h>
#include <ftw.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/dtype.h"
#include "engram/engram.h"
#include "gpu/gpu.h"
#include "io/io.h"
#include "model/safetensors.h"
#include "model/v4.h"

/* tests/engram in the source tree. */
static inline const char *et_src(void)
{
	const char *d = getenv("DP_TEST_ENGRAM");
	return d ? d : "tests/engram";
}

static inline char *et_path(char *buf, size_t len, const char *rel)
{
	snprintf(buf, len, "%s/%s", et_src(), rel);
	return buf;
}

/* A scratch directory on a disk (not tmpfs, so O_DIRECT works): $DP_TEST_TMPDIR, /var/tmp. */
static inline void et_mkdtemp(char *buf, size_t len)
{
	const char *base = getenv("DP_TEST_TMPDIR");
	snprintf(buf, len, "%s/dp-engram-test-XXXXXX", base ? base : "/var/tmp");
	cr_assert_not_null(mkdtemp(buf), "mkdtemp %s: %s", buf, strerror(errno));
}

static int et_rm_one(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
	(void)sb;
	(void)flag;
	(void)ftw;
	return remove(p);
}

static inline void et_rmtree(const char *dir)
{
	nftw(dir, et_rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

/* Write the table tensors of the checkpoint in model_dir into out (what dp-engram convert
 * does), with the model's own Engram geometry. */
static inline void et_convert(const char *model_dir, const struct dp_engram_hash *h,
                              uint32_t head_dim, enum dp_engram_dtype dt, const char *out)
{
	struct dp_engram_table_spec spec = {.hash = h, .dtype = dt, .head_dim = head_dim};
	struct dp_engram_writer *w;
	struct dp_st *st;
	char err[512] = "";

	cr_assert_eq(dp_st_open_dir(model_dir, &st, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(dp_engram_writer_new(out, &spec, &w, err, sizeof(err)), 0, "%s", err);
	for (int s = 0; s < dp_engram_hash_n_layers(h); s++) {
		char name[160];
		struct dp_st_tensor t;
		snprintf(name, sizeof(name),
		         "model.layers.%d.engram.multi_head_embedding.embedding.weight",
		         dp_engram_hash_layer_id(h, s));
		cr_assert_eq(dp_st_get(st, name, &t), 0, "no %s", name);
		float *buf = malloc(t.numel * sizeof(float));
		cr_assert_not_null(buf);
		cr_assert_eq(dp_st_read_f32(&t, 0, t.numel, buf), 0);
		cr_assert_eq(dp_engram_writer_put(w, buf, (uint64_t)t.shape[0], err, sizeof(err)),
		             0, "%s", err);
		free(buf);
	}
	cr_assert_eq(dp_engram_writer_finish(w, err, sizeof(err)), 0, "%s", err);
	dp_engram_writer_free(w);
	dp_st_free(st);
}

/* An io engine running its own thread, or NULL when io_uring is unavailable here. */
static inline struct dp_io *et_io_new(void)
{
	struct dp_io_config cfg;
	struct dp_io *io;

	dp_io_config_init(&cfg);
	cfg.queue_depth = 64;
	cfg.max_regions = 16;
	if (dp_io_new(&cfg, &io) < 0)
		return NULL;
	if (dp_io_start(io, -1) < 0) {
		dp_io_free(io);
		return NULL;
	}
	return io;
}

static inline float *et_read_floats(const char *path, size_t n)
{
	FILE *f = fopen(path, "rb");
	cr_assert_not_null(f, "cannot open %s", path);
	float *v = malloc(n * sizeof(float));
	cr_assert_not_null(v);
	cr_assert_eq(fread(v, sizeof(float), n, f), n, "%s is short", path);
	fclose(f);
	return v;
}

/* tokens.json of a golden directory. */
static inline int32_t *et_tokens(const char *dir, uint32_t *ret_n)
{
	char path[600];
	json_error_t jerr;

	snprintf(path, sizeof(path), "%s/tokens.json", dir);
	json_t *root = json_load_file(path, 0, &jerr);
	cr_assert_not_null(root, "%s: %s", path, jerr.text);
	json_t *toks = json_object_get(root, "tokens");
	uint32_t n = (uint32_t)json_array_size(toks);
	int32_t *v = calloc(n, sizeof(*v));
	cr_assert_not_null(v);
	for (uint32_t i = 0; i < n; i++)
		v[i] = (int32_t)json_integer_value(json_array_get(toks, i));
	json_decref(root);
	*ret_n = n;
	return v;
}

/* Worst row of max|a - b| / max|b|. */
static inline double et_worst_rel(const float *a, const float *b, uint32_t rows, uint32_t V)
{
	double worst = 0;
	for (uint32_t r = 0; r < rows; r++) {
		double maxref = 0, maxdiff = 0;
		for (uint32_t v = 0; v < V; v++) {
			maxref = fmax(maxref, fabs(b[(size_t)r * V + v]));
			maxdiff = fmax(maxdiff,
			               fabs((double)a[(size_t)r * V + v] - b[(size_t)r * V + v]));
		}
		worst = fmax(worst, maxdiff / maxref);
	}
	return worst;
}

/* A golden model with an Engram store on its tables. */
struct et_bundle {
	struct dp_gpu *g;
	struct dp_v4_model *m;
	struct dp_engram_hash *h;
	struct dp_engram_store *s;
	struct dp_io *io;
	uint32_t V, hd;
};

static inline void et_bundle_open(struct et_bundle *b, const char *model_dir)
{
	char err[512] = "";

	memset(b, 0, sizeof(*b));
	cr_assert_eq(dp_gpu_new(DP_GPU_CPU, NULL, &b->g, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(dp_v4_model_load(b->g, model_dir, &b->m, err, sizeof(err)), 0, "%s: %s",
	             model_dir, err);
	b->V = (uint32_t)dp_v4_model_config(b->m)->vocab_size;
	b->hd = (uint32_t)dp_v4_model_config(b->m)->engram.head_dim;
	if (dp_v4_model_has_engram(b->m))
		cr_assert_eq(dp_engram_hash_from_model(b->m, &b->h, err, sizeof(err)), 0, "%s",
		             err);
}

/* Open a store on table (residency, cache rows) and make it the model's provider. Returns
 * false (and opens nothing) for NVMe when io_uring is unavailable. */
static inline bool et_bundle_store(struct et_bundle *b, const char *table,
                                   enum dp_engram_residency res, uint64_t cache_rows,
                                   unsigned flags)
{
	struct dp_engram_store_config cfg;
	struct dp_v4_engram_provider p;
	char err[512] = "";

	dp_engram_store_config_init(&cfg);
	cfg.residency = res;
	cfg.gpu = b->g;
	cfg.cache_rows = cache_rows;
	cfg.max_tokens = 16; /* small: prefills exercise growing */
	cfg.flags = flags;
	if (res == DP_ENGRAM_RES_NVME) {
		if (!b->io && !(b->io = et_io_new()))
			return false;
		cfg.io = b->io;
	}
	cr_assert_eq(dp_engram_store_new(b->h, b->hd, table, &cfg, &b->s, err, sizeof(err)), 0,
	             "%s", err);
	cr_assert_eq(dp_engram_store_provider(b->s, &p), 0);
	cr_assert_eq(dp_v4_model_set_engram(b->m, &p), 0);
	return true;
}

static inline void et_bundle_close_store(struct et_bundle *b)
{
	dp_v4_model_set_engram(b->m, NULL);
	dp_engram_store_free(b->s);
	b->s = NULL;
}

static inline void et_bundle_close(struct et_bundle *b)
{
	et_bundle_close_store(b);
	if (b->io) {
		dp_io_stop(b->io, DP_IO_STOP_DRAIN);
		dp_io_free(b->io);
	}
	dp_engram_hash_free(b->h);
	dp_v4_model_free(b->m);
	dp_gpu_free(b->g);
	memset(b, 0, sizeof(*b));
}

#endif /* DP_TESTS_ENGRAM_TEST_H */
