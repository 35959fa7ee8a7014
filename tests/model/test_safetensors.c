/* SPDX-License-Identifier: MIT */
/*
 * model/safetensors.h: files written here read back exactly; every malformed, truncated or
 * inconsistent file or shard set is refused with a message naming the file and the tensor, never
 * a crash.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "model/safetensors.h"
#include "st-writer.h"

static char dir[4096];
static char path[4096 + 64];

static void setup(void)
{
	cr_assert(stw_tmpdir(dir, sizeof(dir)), "mkdtemp");
	snprintf(path, sizeof(path), "%s/model.safetensors", dir);
}

static void teardown(void)
{
	stw_rm_rf(dir);
}

TestSuite(safetensors, .init = setup, .fini = teardown);

/* Open path; expect r and a message containing both needles. */
static void expect_open_fails(int want, const char *needle1, const char *needle2)
{
	struct dp_st *st = (struct dp_st *)0x1;
	char err[512] = "";
	int r = dp_st_open_file(path, &st, err, sizeof(err));

	cr_expect_eq(r, want, "open returns %d, want %d (%s)", r, want, err);
	cr_expect_eq(st, (struct dp_st *)0x1, "output untouched on failure");
	cr_expect(strstr(err, "model.safetensors"), "message names the file: %s", err);
	if (needle1)
		cr_expect(strstr(err, needle1), "message \"%s\" contains \"%s\"", err, needle1);
	if (needle2)
		cr_expect(strstr(err, needle2), "message \"%s\" contains \"%s\"", err, needle2);
}

#define T(nm, dt, nd, data_, bytes_, ...)                                                          \
	{                                                                                          \
		.name = nm, .dtype = dt, .ndim = nd, .shape = {__VA_ARGS__}, .data = data_,        \
		.bytes = bytes_                                                                    \
	}

Test(safetensors, file_written_here_reads_back_exactly)
{
	float w[6] = {1, -2, 3.5f, 0, 1e-8f, -0.0f};
	uint16_t bf[3] = {0x3f80, 0xc000, 0x7f80};                 /* 1, -2, inf */
	uint16_t hf[5] = {0x3c00, 0xc000, 0x0001, 0x7c00, 0x8000}; /* 1, -2, 2^-24, inf, -0 */
	int64_t ids[4] = {0, 5, -1, INT64_MAX};
	int32_t i32[2] = {7, -7};
	float scalar = 42;
	struct stw_tensor t[] = {
	    T("w", "F32", 2, w, sizeof(w), 2, 3),    T("b.bf16", "BF16", 1, bf, sizeof(bf), 3),
	    T("a.f16", "F16", 1, hf, sizeof(hf), 5), T("ids", "I64", 2, ids, sizeof(ids), 2, 2),
	    T("i32", "I32", 1, i32, sizeof(i32), 2), T("scalar", "F32", 0, &scalar, 4, 0),
	    T("empty", "F32", 2, NULL, 0, 0, 7),
	};
	cr_assert_eq(stw_write(path, t, 7, "{\"format\": \"pt\"}"), 0);

	struct dp_st *st;
	struct dp_st_tensor x;
	char err[256] = "", shape[64];
	float f[6];
	int64_t l[4];

	cr_assert_eq(dp_st_open_dir(dir, &st, err, sizeof(err)), 0, "%s", err);
	cr_expect_eq(dp_st_count(st), 7);
	cr_expect_eq(dp_st_file_count(st), 1);

	/* iteration in name order */
	static const char *const order[] = {"a.f16", "b.bf16", "empty", "i32",
	                                    "ids",   "scalar", "w"};
	for (size_t i = 0; i < 7; i++) {
		cr_assert_eq(dp_st_at(st, i, &x), 0);
		cr_expect_str_eq(x.name, order[i]);
		cr_expect_eq(dp_st_index(st, order[i]), (long)i);
	}
	cr_expect_eq(dp_st_at(st, 7, &x), -ERANGE);

	cr_assert_eq(dp_st_get(st, "w", &x), 0);
	cr_expect_eq(x.dtype, DP_ST_F32);
	cr_expect_eq(x.ndim, 2);
	cr_expect_eq(x.shape[0], 2);
	cr_expect_eq(x.shape[1], 3);
	cr_expect_eq(x.shape[2], 0);
	cr_expect_eq(x.numel, 6);
	cr_expect_eq(x.bytes, 24);
	cr_expect(x.aligned);
	cr_expect(strstr(x.file, "model.safetensors"));
	cr_expect_str_eq(dp_st_shape_str(&x, shape, sizeof(shape)), "[2, 3]");
	cr_assert_eq(dp_st_to_f32(&x, f, 6), 0);
	cr_expect_eq(memcmp(f, w, sizeof(w)), 0, "f32 bit-exact");
	cr_expect_eq(dp_st_to_f32(&x, f, 5), -EINVAL, "buffer too small");
	cr_expect_eq(dp_st_read_f32(&x, 4, 2, f), 0);
	cr_expect_eq(f[0], 1e-8f);
	cr_expect_eq(dp_st_read_f32(&x, 5, 2, f), -ERANGE);
	cr_expect_eq(dp_st_read_i64(&x, 0, 1, l), -EINVAL, "float tensor read as int");
	cr_expect_eq(dp_st_prefetch(&x), 0);

	cr_assert_eq(dp_st_get(st, "b.bf16", &x), 0);
	cr_expect_eq(x.dtype, DP_ST_BF16);
	cr_assert_eq(dp_st_to_f32(&x, f, 3), 0);
	cr_expect(f[0] == 1 && f[1] == -2 && isinf(f[2]) && f[2] > 0);

	cr_assert_eq(dp_st_get(st, "a.f16", &x), 0);
	cr_assert_eq(dp_st_to_f32(&x, f, 5), 0);
	cr_expect(f[0] == 1 && f[1] == -2 && f[2] == 0x1p-24f && isinf(f[3]));
	cr_expect(f[4] == 0 && signbit(f[4]), "-0 kept");

	cr_assert_eq(dp_st_get(st, "ids", &x), 0);
	cr_expect_eq(x.dtype, DP_ST_I64);
	cr_assert_eq(dp_st_read_i64(&x, 0, 4, l), 0);
	cr_expect(l[1] == 5 && l[2] == -1 && l[3] == INT64_MAX);
	cr_expect_eq(dp_st_read_f32(&x, 0, 1, f), -EINVAL, "int tensor read as float");
	cr_assert_eq(dp_st_get(st, "i32", &x), 0);
	cr_assert_eq(dp_st_read_i64(&x, 0, 2, l), 0);
	cr_expect(l[0] == 7 && l[1] == -7);

	cr_assert_eq(dp_st_get(st, "scalar", &x), 0);
	cr_expect_eq(x.ndim, 0);
	cr_expect_eq(x.numel, 1);
	cr_expect_str_eq(dp_st_shape_str(&x, shape, sizeof(shape)), "[]");
	cr_assert_eq(dp_st_get(st, "empty", &x), 0);
	cr_expect_eq(x.numel, 0);
	cr_expect_eq(x.bytes, 0);
	cr_expect_not_null(x.data);
	cr_expect_eq(dp_st_to_f32(&x, f, 0), 0);

	cr_expect_eq(dp_st_get(st, "nope", &x), -ENOENT);
	cr_expect_eq(dp_st_index(st, "nope"), -ENOENT);
	dp_st_free(st);
	dp_st_free(NULL);
}

Test(safetensors, f16_and_bf16_widen_exactly_for_every_bit_pattern)
{
	static uint16_t all[65536];
	static float f[65536];
	struct stw_tensor t[2] = {
	    T("h", "F16", 1, all, sizeof(all), 65536),
	    T("b", "BF16", 1, all, sizeof(all), 65536),
	};
	struct dp_st *st;
	struct dp_st_tensor x;

	for (int i = 0; i < 65536; i++)
		all[i] = (uint16_t)i;
	cr_assert_eq(stw_write(path, t, 2, NULL), 0);
	cr_assert_eq(dp_st_open_file(path, &st, NULL, 0), 0);
	cr_assert_eq(dp_st_get(st, "h", &x), 0);
	cr_assert_eq(dp_st_to_f32(&x, f, 65536), 0);
	for (int i = 0; i < 65536; i++) {
		/* IEEE binary16 by its definition, in double */
		int sign = i >> 15, exp = (i >> 10) & 0x1f, mant = i & 0x3ff;
		double want = exp == 0    ? ldexp(mant, -24)
		              : exp == 31 ? (mant ? NAN : INFINITY)
		                          : ldexp(1024 + mant, exp - 25);

		if (sign)
			want = -want;
		if (isnan(want))
			cr_expect(isnan(f[i]), "f16 %04x stays NaN", i);
		else
			cr_expect(f[i] == want && !!signbit(f[i]) == sign, "f16 %04x: %g vs %g", i,
			          f[i], want);
	}
	cr_assert_eq(dp_st_get(st, "b", &x), 0);
	cr_assert_eq(dp_st_to_f32(&x, f, 65536), 0);
	for (int i = 0; i < 65536; i++) {
		uint32_t bits;

		memcpy(&bits, &f[i], 4);
		cr_expect_eq(bits, (uint32_t)i << 16, "bf16 %04x", i);
	}
	dp_st_free(st);
}

Test(safetensors, truncated_file_is_refused)
{
	float w[8] = {0};
	struct stw_tensor t[] = {T("w", "F32", 1, w, sizeof(w), 8)};
	FILE *f;
	long size;

	cr_assert_eq(stw_write(path, t, 1, NULL), 0);
	f = fopen(path, "rb+");
	fseek(f, 0, SEEK_END);
	size = ftell(f);
	fclose(f);
	cr_assert_eq(truncate(path, size - 4), 0);
	expect_open_fails(-EINVAL, "'w'", "run past the data section");

	cr_assert_eq(truncate(path, 5), 0);
	expect_open_fails(-EINVAL, "too short", NULL);
	cr_assert_eq(truncate(path, 0), 0);
	expect_open_fails(-EINVAL, "0 bytes", NULL);
}

Test(safetensors, header_length_beyond_the_file_is_refused)
{
	const char *h = "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}";
	float w = 1;

	cr_assert_eq(stw_write_raw(path, h, (long long)strlen(h) + 100, &w, 4), 0);
	expect_open_fails(-EINVAL, "header length", "past the end");
	cr_assert_eq(stw_write_raw(path, h, 1LL << 40, &w, 4), 0);
	expect_open_fails(-EINVAL, "header length", "limit");
	/* a non-safetensors file: its first 8 bytes read as a huge length */
	static const char zip[] = "PK\x03\x04 garbage zip file";

	cr_assert_eq(stw_write_bytes(path, zip, sizeof(zip) - 1), 0);
	expect_open_fails(-EINVAL, "header length", NULL);
}

Test(safetensors, corrupt_header_json_is_refused)
{
	cr_assert_eq(stw_write_raw(path, "{\"w\": {\"dtype\": \"F32\",", -1, NULL, 0), 0);
	expect_open_fails(-EINVAL, "not valid JSON", NULL);
	cr_assert_eq(stw_write_raw(path, "[1, 2, 3]", -1, NULL, 0), 0);
	expect_open_fails(-EINVAL, "not a JSON object", NULL);
	cr_assert_eq(stw_write_raw(path, "{\"w\": 3}", -1, NULL, 0), 0);
	expect_open_fails(-EINVAL, "'w'", "not an object");
	cr_assert_eq(stw_write_raw(path, "{\"w\": {\"shape\": [1], \"data_offsets\": [0, 4]}}", -1,
	                           "abcd", 4),
	             0);
	expect_open_fails(-EINVAL, "'w'", "dtype");
	cr_assert_eq(stw_write_raw(path, "{\"w\": {\"dtype\": \"F32\", \"data_offsets\": [0, 4]}}",
	                           -1, "abcd", 4),
	             0);
	expect_open_fails(-EINVAL, "'w'", "shape");
	cr_assert_eq(stw_write_raw(path,
	                           "{\"w\": {\"dtype\": \"F32\", \"shape\": [-1], "
	                           "\"data_offsets\": [0, 4]}}",
	                           -1, "abcd", 4),
	             0);
	expect_open_fails(-EINVAL, "'w'", "shape[0]");
	cr_assert_eq(stw_write_raw(path,
	                           "{\"w\": {\"dtype\": \"F32\", \"shape\": [1,1,1,1,1,1,1,1,1], "
	                           "\"data_offsets\": [0, 4]}}",
	                           -1, "abcd", 4),
	             0);
	expect_open_fails(-EINVAL, "'w'", "9 dimensions");
	cr_assert_eq(stw_write_raw(path,
	                           "{\"w\": {\"dtype\": \"F32\", \"shape\": [1], "
	                           "\"data_offsets\": [0]}}",
	                           -1, "abcd", 4),
	             0);
	expect_open_fails(-EINVAL, "'w'", "data_offsets");
	cr_assert_eq(stw_write_raw(path,
	                           "{\"w\": {\"dtype\": \"F32\", \"shape\": [1], "
	                           "\"data_offsets\": [0, 4]}, \"w\": {\"dtype\": \"F32\", "
	                           "\"shape\": [1], \"data_offsets\": [0, 4]}}",
	                           -1, "abcd", 4),
	             0);
	expect_open_fails(-EINVAL, "duplicate", NULL);
	cr_assert_eq(stw_write_raw(path, "{\"__metadata__\": 5}", -1, NULL, 0), 0);
	expect_open_fails(-EINVAL, "__metadata__", NULL);
}

Test(safetensors, offsets_outside_the_data_are_refused)
{
	cr_assert_eq(stw_write_raw(path,
	                           "{\"w\": {\"dtype\": \"F32\", \"shape\": [2], "
	                           "\"data_offsets\": [4, 12]}}",
	                           -1, "abcdefgh", 8),
	             0);
	expect_open_fails(-EINVAL, "'w'", "[4, 12]");
	cr_assert_eq(stw_write_raw(path,
	                           "{\"w\": {\"dtype\": \"F32\", \"shape\": [0], "
	                           "\"data_offsets\": [8, 4]}}",
	                           -1, "abcdefgh", 8),
	             0);
	expect_open_fails(-EINVAL, "'w'", "end before they begin");
	cr_assert_eq(stw_write_raw(path,
	                           "{\"w\": {\"dtype\": \"F32\", \"shape\": [1], "
	                           "\"data_offsets\": [-4, 0]}}",
	                           -1, "abcdefgh", 8),
	             0);
	expect_open_fails(-EINVAL, "'w'", "integers >= 0");
}

Test(safetensors, size_not_matching_shape_is_refused)
{
	cr_assert_eq(stw_write_raw(path,
	                           "{\"w\": {\"dtype\": \"BF16\", \"shape\": [2, 3], "
	                           "\"data_offsets\": [0, 8]}}",
	                           -1, "abcdefgh", 8),
	             0);
	expect_open_fails(-EINVAL, "'w'", "need 12");
	cr_assert_eq(stw_write_raw(path,
	                           "{\"w\": {\"dtype\": \"F32\", \"shape\": [4294967296, "
	                           "4294967296], \"data_offsets\": [0, 8]}}",
	                           -1, "abcdefgh", 8),
	             0);
	expect_open_fails(-EINVAL, "'w'", "overflows");
	cr_assert_eq(stw_write_raw(path,
	                           "{\"w\": {\"dtype\": \"I64\", \"shape\": [4611686018427387904]"
	                           ", \"data_offsets\": [0, 8]}}",
	                           -1, "abcdefgh", 8),
	             0);
	expect_open_fails(-EINVAL, "'w'", "overflows");
}

Test(safetensors, overlapping_tensors_are_refused)
{
	cr_assert_eq(stw_write_raw(path,
	                           "{\"a\": {\"dtype\": \"F32\", \"shape\": [2], "
	                           "\"data_offsets\": [0, 8]}, \"b\": {\"dtype\": \"F32\", "
	                           "\"shape\": [1], \"data_offsets\": [4, 8]}}",
	                           -1, "abcdefgh", 8),
	             0);
	expect_open_fails(-EINVAL, "'a' and 'b' overlap", NULL);
}

Test(safetensors, published_quantized_dtypes_open_with_their_bytes)
{
	/* the V4 release: e4m3 weight, e8m0 scale, I8 packed fp4, I64 tid2eid */
	unsigned char w8[256], s8[2] = {127, 130}, q4[8] = {0x21, 0xf8, 0, 1, 2, 3, 4, 5};
	int64_t t2e[4] = {0, 3, 1, 2};
	const struct stw_tensor t[] = {
	    T("layers.0.attn.wq_a.weight", "F8_E4M3", 2, w8, sizeof(w8), 2, 128),
	    T("layers.0.attn.wq_a.scale", "F8_E8M0", 2, s8, sizeof(s8), 1, 2),
	    T("layers.0.ffn.experts.0.w1.weight", "I8", 2, q4, sizeof(q4), 2, 4),
	    T("layers.0.ffn.gate.tid2eid", "I64", 2, t2e, sizeof(t2e), 2, 2),
	};
	struct dp_st *st;
	struct dp_st_tensor x;
	char err[512] = "";
	int64_t v[8];
	float f;

	for (int i = 0; i < 256; i++)
		w8[i] = (unsigned char)i;
	cr_assert_eq(stw_write(path, t, 4, NULL), 0);
	cr_assert_eq(dp_st_open_file(path, &st, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(dp_st_get(st, "layers.0.attn.wq_a.weight", &x), 0);
	cr_expect_eq(x.dtype, DP_ST_F8_E4M3);
	cr_expect_eq(x.bytes, 256);
	cr_expect_eq(memcmp(x.data, w8, 256), 0, "raw codes kept");
	cr_expect_str_eq(dp_st_dtype_name(x.dtype), "F8_E4M3");
	cr_expect_eq(dp_st_read_f32(&x, 0, 1, &f), -EINVAL, "e4m3 needs its scale");
	cr_assert_eq(dp_st_get(st, "layers.0.attn.wq_a.scale", &x), 0);
	cr_expect_eq(x.dtype, DP_ST_F8_E8M0);
	cr_expect_eq(((const unsigned char *)x.data)[1], 130);
	cr_expect_str_eq(dp_st_dtype_name(x.dtype), "F8_E8M0");
	cr_assert_eq(dp_st_get(st, "layers.0.ffn.experts.0.w1.weight", &x), 0);
	cr_expect_eq(x.dtype, DP_ST_I8);
	cr_expect_eq(dp_st_dtype_size(x.dtype), 1);
	cr_assert_eq(dp_st_read_i64(&x, 0, 2, v), 0);
	cr_expect(v[0] == 0x21 && v[1] == (int8_t)0xf8);
	cr_assert_eq(dp_st_get(st, "layers.0.ffn.gate.tid2eid", &x), 0);
	cr_assert_eq(dp_st_read_i64(&x, 0, 4, v), 0);
	cr_expect(v[1] == 3 && v[3] == 2);
	dp_st_free(st);
}

Test(safetensors, quantized_tensor_of_the_wrong_size_is_refused)
{
	/* e4m3 [2, 4] is 8 bytes, not 16 */
	cr_assert_eq(stw_write_raw(path,
	                           "{\"layers.0.attn.wq_a.weight\": {\"dtype\": \"F8_E4M3\", "
	                           "\"shape\": [2, 4], \"data_offsets\": [0, 16]}}",
	                           -1, "abcdefghabcdefgh", 16),
	             0);
	expect_open_fails(-EINVAL, "layers.0.attn.wq_a.weight", NULL);
}

Test(safetensors, e5m2_and_other_dtypes_are_refused_with_a_reason)
{
	cr_assert_eq(stw_write_raw(path,
	                           "{\"layers.0.attn.wq_a.weight\": {\"dtype\": \"F8_E5M2\", "
	                           "\"shape\": [2, 4], \"data_offsets\": [0, 8]}}",
	                           -1, "abcdefgh", 8),
	             0);
	expect_open_fails(-ENOTSUP, "dtype F8_E5M2 is not supported", "layers.0.attn.wq_a.weight");
	cr_assert_eq(stw_write_raw(path,
	                           "{\"d\": {\"dtype\": \"F64\", \"shape\": [1], "
	                           "\"data_offsets\": [0, 8]}}",
	                           -1, "abcdefgh", 8),
	             0);
	expect_open_fails(-ENOTSUP, "dtype F64 is not supported", "'d'");
	cr_assert_eq(stw_write_raw(path,
	                           "{\"q\": {\"dtype\": \"Q4_K\", \"shape\": [1], "
	                           "\"data_offsets\": [0, 8]}}",
	                           -1, "abcdefgh", 8),
	             0);
	expect_open_fails(-EINVAL, "unknown dtype", "Q4_K");
}

Test(safetensors, metadata_and_unaligned_data_are_accepted)
{
	/* header of 61 bytes: the data section starts at 69, so the F32 tensor is unaligned */
	const char *h =
	    "{\"__metadata__\":{\"format\":\"pt\"},\"w\":{\"dtype\":\"F32\",\"shape\":[1],"
	    "\"data_offsets\":[0,4]}}";
	float one = 1, out;
	struct dp_st *st;
	struct dp_st_tensor x;

	cr_assert_eq(stw_write_raw(path, h, -1, &one, 4), 0);
	cr_assert_eq(dp_st_open_file(path, &st, NULL, 0), 0);
	cr_assert_eq(dp_st_get(st, "w", &x), 0);
	cr_expect_eq(x.aligned, ((8 + strlen(h)) % 4) == 0);
	cr_assert_eq(dp_st_to_f32(&x, &out, 1), 0);
	cr_expect_eq(out, 1.0f);
	dp_st_free(st);
}

/* ---- directories and shards --------------------------------------------- */

static void write_shard(const char *name, const char *tensor_a, const char *tensor_b)
{
	char p[4200];
	float v[2] = {1, 2};
	struct stw_tensor t[2] = {
	    T(tensor_a, "F32", 1, &v[0], 4, 1),
	    T(tensor_b, "F32", 1, &v[1], 4, 1),
	};

	snprintf(p, sizeof(p), "%s/%s", dir, name);
	cr_assert_eq(stw_write(p, t, tensor_b ? 2 : 1, NULL), 0);
}

static const char *index_json =
    "{\"metadata\": {\"total_size\": 16}, \"weight_map\": {"
    "\"a\": \"model-00001-of-00002.safetensors\", \"b\": \"model-00001-of-00002.safetensors\","
    "\"c\": \"model-00002-of-00002.safetensors\", \"d\": \"model-00002-of-00002.safetensors\"}}";

static void expect_dir_fails(int want, const char *needle1, const char *needle2)
{
	struct dp_st *st = (struct dp_st *)0x1;
	char err[512] = "";
	int r = dp_st_open_dir(dir, &st, err, sizeof(err));

	cr_expect_eq(r, want, "open_dir returns %d, want %d (%s)", r, want, err);
	cr_expect_eq(st, (struct dp_st *)0x1, "output untouched on failure");
	if (needle1)
		cr_expect(strstr(err, needle1), "message \"%s\" contains \"%s\"", err, needle1);
	if (needle2)
		cr_expect(strstr(err, needle2), "message \"%s\" contains \"%s\"", err, needle2);
}

Test(safetensors, sharded_checkpoint_opens_as_one)
{
	struct dp_st *st;
	struct dp_st_tensor x;
	char err[512] = "";
	float f;

	write_shard("model-00001-of-00002.safetensors", "a", "b");
	write_shard("model-00002-of-00002.safetensors", "c", "d");
	cr_assert_eq(stw_write_text(dir, "model.safetensors.index.json", index_json), 0);
	cr_assert_eq(dp_st_open_dir(dir, &st, err, sizeof(err)), 0, "%s", err);
	cr_expect_eq(dp_st_count(st), 4);
	cr_expect_eq(dp_st_file_count(st), 2);
	cr_assert_eq(dp_st_get(st, "d", &x), 0);
	cr_expect(strstr(x.file, "model-00002-of-00002.safetensors"));
	cr_assert_eq(dp_st_to_f32(&x, &f, 1), 0);
	cr_expect_eq(f, 2.0f);
	dp_st_free(st);
}

Test(safetensors, single_file_wins_over_an_index)
{
	struct dp_st *st;

	write_shard("model.safetensors", "only", NULL);
	cr_assert_eq(stw_write_text(dir, "model.safetensors.index.json", "not even json"), 0);
	cr_assert_eq(dp_st_open_dir(dir, &st, NULL, 0), 0);
	cr_expect_eq(dp_st_count(st), 1);
	dp_st_free(st);
}

Test(safetensors, missing_shard_is_named)
{
	write_shard("model-00001-of-00002.safetensors", "a", "b");
	cr_assert_eq(stw_write_text(dir, "model.safetensors.index.json", index_json), 0);
	expect_dir_fails(-ENOENT, "model-00002-of-00002.safetensors", "does not exist");
}

Test(safetensors, tensor_in_two_shards_is_refused)
{
	write_shard("model-00001-of-00002.safetensors", "a", "b");
	write_shard("model-00002-of-00002.safetensors", "b", "d");
	cr_assert_eq(stw_write_text(dir, "model.safetensors.index.json", index_json), 0);
	expect_dir_fails(-EINVAL, "'b' appears in both", "model-00002-of-00002.safetensors");
}

Test(safetensors, index_and_shards_must_agree)
{
	write_shard("model-00001-of-00002.safetensors", "a", "b");
	write_shard("model-00002-of-00002.safetensors", "c", "e");
	cr_assert_eq(stw_write_text(dir, "model.safetensors.index.json", index_json), 0);
	expect_dir_fails(-EINVAL, "'d'", "has no such tensor");

	write_shard("model-00002-of-00002.safetensors", "c", "d");
	write_shard("model-00001-of-00002.safetensors", "a", "x");
	cr_assert_eq(stw_write_text(dir, "model.safetensors.index.json",
	                            "{\"weight_map\": {\"a\": \"model-00001-of-00002.safetensors\","
	                            "\"x\": \"model-00001-of-00002.safetensors\","
	                            "\"c\": \"model-00002-of-00002.safetensors\","
	                            "\"d\": \"model-00001-of-00002.safetensors\"}}"),
	             0);
	expect_dir_fails(-EINVAL, "'d'", "but model-00002-of-00002.safetensors holds it");

	cr_assert_eq(stw_write_text(dir, "model.safetensors.index.json",
	                            "{\"weight_map\": {\"a\": \"model-00001-of-00002.safetensors\","
	                            "\"c\": \"model-00002-of-00002.safetensors\","
	                            "\"d\": \"model-00002-of-00002.safetensors\"}}"),
	             0);
	expect_dir_fails(-EINVAL, "'x'", "does not list");
}

Test(safetensors, bad_index_files_are_refused)
{
	cr_assert_eq(stw_write_text(dir, "model.safetensors.index.json", "{\"weight_map\": "), 0);
	expect_dir_fails(-EINVAL, "model.safetensors.index.json", "not valid JSON");
	cr_assert_eq(stw_write_text(dir, "model.safetensors.index.json", "{\"metadata\": {}}"), 0);
	expect_dir_fails(-EINVAL, "weight_map", NULL);
	cr_assert_eq(stw_write_text(dir, "model.safetensors.index.json", "{\"weight_map\": {}}"),
	             0);
	expect_dir_fails(-EINVAL, "empty", NULL);
	cr_assert_eq(stw_write_text(dir, "model.safetensors.index.json",
	                            "{\"weight_map\": {\"a\": \"../../etc/passwd\"}}"),
	             0);
	expect_dir_fails(-EINVAL, "weight_map[\"a\"]", "plain file name");
	cr_assert_eq(
	    stw_write_text(dir, "model.safetensors.index.json", "{\"weight_map\": {\"a\": 3}}"), 0);
	expect_dir_fails(-EINVAL, "weight_map[\"a\"]", NULL);
}

Test(safetensors, missing_directory_or_files_are_enoent)
{
	struct dp_st *st;
	char err[512] = "";

	expect_dir_fails(-ENOENT, "no model.safetensors", NULL);
	cr_expect_eq(dp_st_open_dir("/nonexistent/model", &st, err, sizeof(err)), -ENOENT);
	cr_expect(strstr(err, "/nonexistent/model"), "%s", err);
	cr_expect_eq(dp_st_open_file("/nonexistent/model.safetensors", &st, err, sizeof(err)),
	             -ENOENT);
	write_shard("model.safetensors", "w", NULL);
	cr_expect_eq(dp_st_open_dir(path, &st, err, sizeof(err)), -ENOTDIR);
	cr_expect_eq(dp_st_open_file(dir, &st, err, sizeof(err)), -EINVAL, "a directory");
	cr_expect_eq(dp_st_open_dir(NULL, &st, NULL, 0), -EINVAL);
	cr_expect_eq(dp_st_open_file(path, NULL, NULL, 0), -EINVAL);
}
