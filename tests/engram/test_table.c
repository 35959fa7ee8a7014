/* SPDX-License-Identifier: MIT */
/*
 * Row encodings (bf16, fp8 e4m3 with a scale per 32 values) and table files: round trips,
 * error bounds, the layout's invariants, corruption detection, the writer's refusals, and the
 * dp-engram convert / make-random / info / verify commands.
 */
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>

#define XXH_STATIC_LINKING_ONLY
#include <xxhash.h>

#include "engram-test.h"

/* ---- encodings (the scalar conversions are tested in tests/base/test_dtype.c) ---------- */

static void random_row(float *v, uint32_t n, uint64_t *x)
{
	for (uint32_t i = 0; i < n; i++) {
		*x ^= *x << 13, *x ^= *x >> 7, *x ^= *x << 17;
		float u = (float)(int64_t)(*x >> 11) * 0x1p-53f - 0.5f;
		/* magnitudes from 1e-6 to 1e3 across groups */
		v[i] = u * powf(10.0f, (float)((i / 32) % 10) - 6.0f);
	}
}

Test(table, fp8_rows_stay_within_the_error_bound)
{
	enum { HD = 80 }; /* three groups, the last one partial */
	float src[HD], dst[HD];
	unsigned char enc[1024];
	uint64_t x = 12345;

	cr_assert_eq(dp_engram_row_bytes(DP_ENGRAM_DTYPE_FP8, HD), 3 * 4 + 80);
	cr_assert_eq(dp_engram_row_bytes(DP_ENGRAM_DTYPE_FP8, 30), 4 + 32, "padded to 4 bytes");
	cr_assert_eq(dp_engram_row_bytes(DP_ENGRAM_DTYPE_BF16, 3), 8);
	for (int it = 0; it < 2000; it++) {
		random_row(src, HD, &x);
		if (it == 7)
			memset(src + 32, 0, 32 * sizeof(float)); /* a group of zeros */
		cr_assert_eq(dp_engram_row_encode(DP_ENGRAM_DTYPE_FP8, HD, src, enc), 0);
		cr_assert_eq(dp_engram_row_decode(DP_ENGRAM_DTYPE_FP8, HD, enc, dst), 0);
		for (int g = 0; g < 3; g++) {
			float amax = 0, scale;
			memcpy(&scale, enc + 4 * g, 4);
			for (int i = g * 32; i < HD && i < g * 32 + 32; i++)
				amax = fmaxf(amax, fabsf(src[i]));
			cr_assert_eq(scale, amax / 448.0f);
			for (int i = g * 32; i < HD && i < g * 32 + 32; i++) {
				double err = fabs((double)dst[i] - src[i]);
				double bound =
				    fmax(0x1p-4 * fabs(src[i]), 0x1p-10 * scale) * (1 + 1e-6);
				cr_assert_leq(err, bound, "row %d value %d: %a -> %a (scale %a)",
				              it, i, src[i], dst[i], scale);
			}
		}
		if (it == 7)
			for (int i = 32; i < 64; i++)
				cr_assert_eq(dst[i], 0.0f);
		cr_assert_eq(dp_engram_row_encode(DP_ENGRAM_DTYPE_BF16, HD, src, enc), 0);
		cr_assert_eq(dp_engram_row_decode(DP_ENGRAM_DTYPE_BF16, HD, enc, dst), 0);
		for (int i = 0; i < HD; i++)
			cr_assert_leq(fabs((double)dst[i] - src[i]), 0x1p-8 * fabs(src[i]));
	}
	src[5] = NAN;
	cr_expect_eq(dp_engram_row_encode(DP_ENGRAM_DTYPE_FP8, HD, src, enc), -EDOM);
	src[5] = INFINITY;
	cr_expect_eq(dp_engram_row_encode(DP_ENGRAM_DTYPE_BF16, HD, src, enc), -EDOM);
	cr_expect_eq(dp_engram_row_encode(DP_ENGRAM_DTYPE_MAX, HD, src, enc), -EINVAL);
	cr_expect_eq(dp_engram_row_bytes(DP_ENGRAM_DTYPE_BF16, 0), 0);
}

/* ---- files ---------------------------------------------------------------------------- */

/* A small hashing config: 2 layers, orders 2..3, 2 heads: 4 columns. */
static struct dp_engram_hash *small_hash(int64_t v2, int64_t v3)
{
	char json[512];
	struct dp_engram_config c;
	struct dp_engram_hash *h;
	char err[256] = "";

	snprintf(json, sizeof(json),
	         "{\"compression_map\": [0, 1, 2, 3, 1, 0], \"compressed_vocab_size\": 4, "
	         "\"engram_vocab_size\": [%lld, %lld], \"max_ngram_size\": 3, "
	         "\"n_head_per_ngram\": 2, \"layer_ids\": [1, 4], \"pad_id\": 0, \"seed\": 0}",
	         (long long)v2, (long long)v3);
	cr_assert_eq(dp_engram_config_parse(json, strlen(json), &c, err, sizeof(err)), 0, "%s",
	             err);
	cr_assert_eq(dp_engram_hash_new(&c, &h), 0);
	dp_engram_config_fini(&c);
	return h;
}

/* Value i of flat row r of slot s: bf16-exact, distinct per place. */
static float value_at(int s, uint64_t r, uint32_t i)
{
	return dp_bf16_to_f32(
	    dp_f32_to_bf16((float)((s * 7919 + (int64_t)r * 31 + i * 17) % 2001 - 1000) / 64.0f));
}

static uint64_t total_rows(const struct dp_engram_hash *h, int s)
{
	return (uint64_t)dp_engram_hash_offsets(h, s)[dp_engram_hash_n_columns(h)];
}

static void write_table(const char *path, const struct dp_engram_hash *h, enum dp_engram_dtype dt,
                        uint32_t hd)
{
	struct dp_engram_table_spec spec = {.hash = h, .dtype = dt, .head_dim = hd};
	struct dp_engram_writer *w;
	char err[512] = "";

	cr_assert_eq(dp_engram_writer_new(path, &spec, &w, err, sizeof(err)), 0, "%s", err);
	float *buf = malloc(37 * hd * sizeof(float));
	for (int s = 0; s < dp_engram_hash_n_layers(h); s++) {
		uint64_t rows = total_rows(h, s);
		for (uint64_t r0 = 0; r0 < rows; r0 += 37) { /* odd chunks: rows cross blocks */
			uint64_t k = rows - r0 < 37 ? rows - r0 : 37;
			for (uint64_t r = 0; r < k; r++)
				for (uint32_t i = 0; i < hd; i++)
					buf[r * hd + i] = value_at(s, r0 + r, i);
			cr_assert_eq(dp_engram_writer_put(w, buf, k, err, sizeof(err)), 0, "%s",
			             err);
		}
	}
	free(buf);
	cr_assert_eq(dp_engram_writer_finish(w, err, sizeof(err)), 0, "%s", err);
	dp_engram_writer_free(w);
}

static void check_round_trip(enum dp_engram_dtype dt, uint32_t hd)
{
	char tmp[256], path[300], err[512] = "";
	struct dp_engram_hash *h = small_hash(500, 700);
	struct dp_engram_table *t;
	struct dp_engram_table_info in;

	et_mkdtemp(tmp, sizeof(tmp));
	snprintf(path, sizeof(path), "%s/t.dpe", tmp);
	write_table(path, h, dt, hd);
	cr_assert_eq(dp_engram_table_open(path, &t, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(dp_engram_table_check(t, h, hd, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(dp_engram_table_verify(t, err, sizeof(err)), 0, "%s", err);
	dp_engram_table_get_info(t, &in);
	cr_expect_eq(in.dtype, dt);
	cr_expect_eq(in.n_layers, 2);
	cr_expect_eq(in.n_columns, 4);
	cr_expect_eq(in.block_bytes % DP_ENGRAM_BLOCK, 0);
	cr_expect_eq(in.header_bytes + in.data_bytes, in.file_bytes);
	float *row = malloc(hd * sizeof(float));
	for (int s = 0; s < 2; s++) {
		int id;
		uint64_t rows;
		cr_assert_eq(dp_engram_table_layer(t, s, &id, &rows, NULL), 0);
		cr_expect_eq(id, s ? 4 : 1);
		cr_expect_eq(rows, total_rows(h, s));
		for (uint64_t r = 0; r < rows; r++) {
			uint64_t off = dp_engram_table_row_offset(t, s, r);
			/* one aligned block read away: never straddling a block */
			cr_assert_leq((off - in.header_bytes) % in.block_bytes + in.row_bytes,
			              in.block_bytes);
			int64_t f = (int64_t)r;
			cr_assert_eq(dp_engram_table_read_rows(t, s, &f, 1, row), 0);
			for (uint32_t i = 0; i < hd; i++) {
				float want = value_at(s, r, i);
				if (dt == DP_ENGRAM_DTYPE_BF16)
					cr_assert_eq(row[i], want, "slot %d row %llu value %u", s,
					             (unsigned long long)r, i);
				else
					cr_assert_leq(
					    fabs((double)row[i] - want),
					    fmax(0x1p-4 * fabs(want), 0x1p-10 * 1000.0 / 64 / 448));
			}
		}
		cr_expect_eq(dp_engram_table_row_offset(t, s, rows), UINT64_MAX);
	}
	int64_t bad = (int64_t)total_rows(h, 0);
	cr_expect_eq(dp_engram_table_read_rows(t, 0, &bad, 1, row), -ERANGE);
	free(row);
	dp_engram_table_close(t);
	dp_engram_hash_free(h);
	et_rmtree(tmp);
}

Test(table, bf16_table_round_trips_exactly)
{
	check_round_trip(DP_ENGRAM_DTYPE_BF16, 24);
}

Test(table, fp8_table_round_trips_within_fp8_error)
{
	check_round_trip(DP_ENGRAM_DTYPE_FP8, 40);
}

Test(table, rows_wider_than_a_block_take_whole_blocks)
{
	check_round_trip(DP_ENGRAM_DTYPE_BF16, 2100); /* 4200 bytes: 8 KiB blocks */
}

/* ---- corruption ------------------------------------------------------------------------ */

static void patch(const char *path, off_t off, const void *bytes, size_t n)
{
	int fd = open(path, O_WRONLY);
	cr_assert_geq(fd, 0);
	cr_assert_eq(pwrite(fd, bytes, n, off), (ssize_t)n);
	close(fd);
}

/* Rewrite the header checksum so a field change passes it. */
static void reseal(const char *path)
{
	unsigned char h[DP_ENGRAM_BLOCK];
	int fd = open(path, O_RDWR);
	cr_assert_eq(pread(fd, h, sizeof(h), 0), (ssize_t)sizeof(h));
	memset(h + 72, 0, 8);
	uint64_t sum = XXH64(h, sizeof(h), 0);
	for (int i = 0; i < 8; i++)
		h[72 + i] = (unsigned char)(sum >> (8 * i));
	cr_assert_eq(pwrite(fd, h, sizeof(h), 0), (ssize_t)sizeof(h));
	close(fd);
}

static void expect_refused(const char *path, int code, const char *what)
{
	struct dp_engram_table *t = NULL;
	char err[512] = "";
	int r = dp_engram_table_open(path, &t, err, sizeof(err));
	cr_expect_eq(r, code, "expected %d, got %d (%s)", code, r, err);
	cr_expect_not_null(strstr(err, what), "message \"%s\" should say \"%s\"", err, what);
	cr_expect_not_null(strstr(err, path), "message \"%s\" should name the file", err);
	cr_expect_null(t);
	if (r == 0)
		dp_engram_table_close(t);
}

Test(table, corrupt_or_foreign_files_are_refused_with_a_clear_error)
{
	char tmp[256], path[300], copy[320], err[512] = "";
	struct dp_engram_hash *h = small_hash(300, 400);
	struct dp_engram_table *t;

	et_mkdtemp(tmp, sizeof(tmp));
	snprintf(path, sizeof(path), "%s/t.dpe", tmp);
	snprintf(copy, sizeof(copy), "%s/c.dpe", tmp);
	write_table(path, h, DP_ENGRAM_DTYPE_FP8, 32);
	char cmd[800];
#define FRESH()                                                                                    \
	do {                                                                                       \
		snprintf(cmd, sizeof(cmd), "cp %s %s", path, copy);                                \
		cr_assert_eq(system(cmd), 0);                                                      \
	} while (0)

	FRESH();
	patch(copy, 0, "DPENGRAX", 8);
	expect_refused(copy, -EINVAL, "not an Engram table");

	FRESH();
	uint32_t v2 = 2;
	patch(copy, 8, &v2, 4);
	expect_refused(copy, -ENOTSUP, "version 2");

	FRESH();
	unsigned char b = 0x5a;
	patch(copy, 200, &b, 1); /* a table size */
	expect_refused(copy, -EBADMSG, "checksum");

	FRESH();
	uint32_t rb = 99;
	patch(copy, 24, &rb, 4); /* row_bytes, checksum fixed up: the fields disagree */
	reseal(copy);
	expect_refused(copy, -EINVAL, "row_bytes");

	FRESH();
	struct stat st;
	cr_assert_eq(stat(copy, &st), 0);
	cr_assert_eq(truncate(copy, st.st_size - DP_ENGRAM_BLOCK), 0);
	expect_refused(copy, -EINVAL, "truncated");

	FRESH();
	cr_assert_eq(truncate(copy, st.st_size + 1), 0);
	expect_refused(copy, -EINVAL, "trailing bytes");

	FRESH();
	cr_assert_eq(truncate(copy, 100), 0);
	expect_refused(copy, -EINVAL, "too short");

	/* a data byte: the header is fine, verify finds it */
	FRESH();
	patch(copy, (off_t)st.st_size - 5000, &b, 1);
	cr_assert_eq(dp_engram_table_open(copy, &t, err, sizeof(err)), 0, "%s", err);
	cr_expect_eq(dp_engram_table_verify(t, err, sizeof(err)), -EBADMSG);
	cr_expect_not_null(strstr(err, "data checksum"), "%s", err);
	dp_engram_table_close(t);

	/* a good file for another model: table sizes or head_dim differ */
	struct dp_engram_hash *other = small_hash(350, 400);
	cr_assert_eq(dp_engram_table_open(path, &t, err, sizeof(err)), 0, "%s", err);
	cr_expect_eq(dp_engram_table_check(t, other, 32, err, sizeof(err)), -EINVAL);
	cr_expect_not_null(strstr(err, "table size"), "%s", err);
	cr_expect_eq(dp_engram_table_check(t, h, 64, err, sizeof(err)), -EINVAL);
	cr_expect_not_null(strstr(err, "engram_head_dim"), "%s", err);
	dp_engram_table_close(t);

	snprintf(copy, sizeof(copy), "%s/missing.dpe", tmp);
	expect_refused(copy, -ENOENT, "missing.dpe");
#undef FRESH
	dp_engram_hash_free(other);
	dp_engram_hash_free(h);
	et_rmtree(tmp);
}

Test(table, the_writer_refuses_bad_rows_and_leaves_no_partial_file)
{
	char tmp[256], path[300], tmpfile[310], err[512] = "";
	struct dp_engram_hash *h = small_hash(50, 60);
	struct dp_engram_table_spec spec = {
	    .hash = h, .dtype = DP_ENGRAM_DTYPE_BF16, .head_dim = 8};
	struct dp_engram_writer *w;
	float row[8] = {0};
	uint64_t total;

	et_mkdtemp(tmp, sizeof(tmp));
	snprintf(path, sizeof(path), "%s/t.dpe", tmp);
	snprintf(tmpfile, sizeof(tmpfile), "%s.tmp", path);
	cr_assert_eq(dp_engram_writer_new(path, &spec, &w, err, sizeof(err)), 0, "%s", err);
	dp_engram_writer_rows(w, &total);
	cr_expect_eq(total, total_rows(h, 0) + total_rows(h, 1));
	row[3] = NAN;
	cr_expect_eq(dp_engram_writer_put(w, row, 1, err, sizeof(err)), -EDOM);
	cr_expect_not_null(strstr(err, "NaN"), "%s", err);
	row[3] = 0;
	cr_expect_eq(dp_engram_writer_put(w, row, 1, err, sizeof(err)), 0);
	cr_expect_eq(dp_engram_writer_put(w, row, total, err, sizeof(err)), -E2BIG);
	cr_expect_eq(dp_engram_writer_finish(w, err, sizeof(err)), -EINVAL);
	cr_expect_not_null(strstr(err, "1 of"), "%s", err);
	cr_expect_eq(access(tmpfile, F_OK), 0, "written to path.tmp meanwhile");
	dp_engram_writer_free(w);
	cr_expect_neq(access(tmpfile, F_OK), 0, "an unfinished file is removed");
	cr_expect_neq(access(path, F_OK), 0);
	spec.head_dim = 0;
	cr_expect_eq(dp_engram_writer_new(path, &spec, &w, err, sizeof(err)), -EINVAL);
	dp_engram_hash_free(h);
	et_rmtree(tmp);
}

/* ---- the tool ---------------------------------------------------------------------------- */

static int tool(const char *args)
{
	char cmd[2048];
	const char *exe = getenv("DP_ENGRAM_TOOL");
	snprintf(cmd, sizeof(cmd), "%s %s >/dev/null 2>&1", exe ? exe : "dp-engram", args);
	int st = system(cmd);
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

Test(table, dp_engram_converts_makes_random_and_verifies_tables)
{
	char tmp[256], model[512], args[1600], out[300];

	et_mkdtemp(tmp, sizeof(tmp));
	et_path(model, sizeof(model), "fusion/model");
	snprintf(out, sizeof(out), "%s/c.dpe", tmp);
	snprintf(args, sizeof(args), "convert --dtype fp8 %s/model.safetensors %s", model, out);
	cr_expect_eq(tool(args), 0);
	snprintf(args, sizeof(args), "verify %s", out);
	cr_expect_eq(tool(args), 0);
	snprintf(args, sizeof(args), "info %s", out);
	cr_expect_eq(tool(args), 0);
	/* the same from the directory, bf16, config given */
	snprintf(args, sizeof(args), "convert --config %s/config.json %s %s/d.dpe", model, model,
	         tmp);
	cr_expect_eq(tool(args), 0);
	snprintf(args, sizeof(args), "make-random --config %s/config.json --seed 3 %s/r.dpe", model,
	         tmp);
	cr_expect_eq(tool(args), 0);
	snprintf(args, sizeof(args), "verify %s/r.dpe", tmp);
	cr_expect_eq(tool(args), 0);

	/* corrupt rows: verify says 1; a foreign file: 2; no tables in the checkpoint: 2 */
	unsigned char b = 0xa5;
	struct stat st;
	cr_assert_eq(stat(out, &st), 0);
	patch(out, st.st_size - 3, &b, 1);
	snprintf(args, sizeof(args), "verify %s", out);
	cr_expect_eq(tool(args), 1);
	snprintf(args, sizeof(args), "info %s/config.json", model);
	cr_expect_eq(tool(args), 2);
	snprintf(args, sizeof(args), "convert --config %s/config.json %s/../zero %s/z.dpe", model,
	         model, tmp);
	cr_expect_eq(tool(args), 2);
	et_rmtree(tmp);
}
