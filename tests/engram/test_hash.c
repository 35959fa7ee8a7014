/* SPDX-License-Identifier: MIT */
/*
 * engram/engram.h: row ids bit-exact with DeepSeek's demo on the golden vectors (through the
 * library and through `dp-engram check-hash`), corrupted vectors caught and named, the
 * incremental path equal to the whole-sequence one, and malformed files refused clearly.
 *
 * golden/ is a copy of /work/shared/golden/engram (made by the reference demo);
 * fixtures/hash_negative_ids.json (gen_fixtures.py) adds negative raw ids down to INT64_MIN,
 * where numpy's int64 products wrap and its % meets negative values.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "base/macros.h"
#include "engram/engram.h"

extern char **environ;

static const char *test_dir(void)
{
	const char *d = getenv("DP_TEST_ENGRAM");

	return d && *d ? d : "tests/engram";
}

static const char *path_of(const char *rel)
{
	static char buf[4][4096];
	static int i;

	i = (i + 1) % 4;
	snprintf(buf[i], sizeof(buf[i]), "%s/%s", test_dir(), rel);
	return buf[i];
}

static const char *tool(void)
{
	const char *t = getenv("DP_ENGRAM_TOOL");

	if (!t || !*t || access(t, X_OK) < 0)
		cr_skip_test("DP_ENGRAM_TOOL not set (run through meson test)");
	return t;
}

/* Run the tool with args; its stdout and stderr together into out. Returns the exit status. */
static int run_tool(const char *const *args, char *out, size_t out_len)
{
	char tmpl[] = "/tmp/dp-engram-out-XXXXXX";
	const char *argv[16];
	posix_spawn_file_actions_t fa;
	int fd = mkstemp(tmpl), status, n = 0;
	pid_t pid;
	ssize_t got;

	cr_assert(fd >= 0);
	argv[n++] = tool();
	for (; *args; args++)
		argv[n++] = *args;
	argv[n] = NULL;
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_adddup2(&fa, fd, 1);
	posix_spawn_file_actions_adddup2(&fa, fd, 2);
	cr_assert_eq(posix_spawn(&pid, argv[0], &fa, NULL, (char *const *)argv, environ), 0);
	posix_spawn_file_actions_destroy(&fa);
	cr_assert_eq(waitpid(pid, &status, 0), pid);
	got = pread(fd, out, out_len - 1, 0);
	out[got > 0 ? got : 0] = '\0';
	close(fd);
	unlink(tmpl);
	cr_assert(WIFEXITED(status), "tool exited normally: %s", out);
	return WEXITSTATUS(status);
}

/* Write root to a temporary file; returns its path (static buffer). */
static const char *write_temp(const json_t *root)
{
	static char tmpl[64];
	int fd;

	snprintf(tmpl, sizeof(tmpl), "/tmp/dp-engram-golden-XXXXXX");
	fd = mkstemp(tmpl);
	cr_assert(fd >= 0);
	cr_assert_eq(json_dumpfd(root, fd, JSON_COMPACT), 0);
	close(fd);
	return tmpl;
}

static const char *write_text(const char *text)
{
	static char tmpl[64];
	int fd;

	snprintf(tmpl, sizeof(tmpl), "/tmp/dp-engram-text-XXXXXX");
	fd = mkstemp(tmpl);
	cr_assert(fd >= 0);
	cr_assert_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
	close(fd);
	return tmpl;
}

static json_t *load_json(const char *path)
{
	json_error_t je;
	json_t *root = json_load_file(path, 0, &je);

	cr_assert(root, "%s: %s", path, je.text);
	return root;
}

static struct dp_engram_hash *hash_of(const char *path)
{
	struct dp_engram_config c;
	struct dp_engram_hash *h = NULL;
	char err[512] = "";

	cr_assert_eq(dp_engram_config_load(path, &c, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(dp_engram_hash_new(&c, &h), 0);
	dp_engram_config_fini(&c);
	return h;
}

static const char *const golden_files[] = {
    "golden/hash_demo_small.json",
    "golden/hash_v41_like.json",
    "fixtures/hash_negative_ids.json",
};

/* ---- golden vectors ---------------------------------------------------------------- */

Test(golden, library_matches_every_golden_file_exactly)
{
	for (size_t i = 0; i < DP_ARRAY_SIZE(golden_files); i++) {
		const char *p = path_of(golden_files[i]);
		json_t *root = load_json(p);
		struct dp_engram_check res;
		char err[512] = "";
		int64_t B, T, L, N, K, want;

		B = (int64_t)json_array_size(json_object_get(root, "input_ids"));
		T = (int64_t)json_array_size(json_array_get(json_object_get(root, "input_ids"), 0));
		L = (int64_t)json_array_size(json_object_get(root, "layer_ids"));
		N = json_integer_value(json_object_get(root, "max_ngram_size"));
		K = json_integer_value(json_object_get(root, "n_head_per_ngram"));
		want = L * (N + (N - 1) * K + B * T * (N - 1) * K);
		cr_assert_eq(dp_engram_golden_check_file(p, &res, err, sizeof(err)), 0, "%s", err);
		cr_expect_eq(res.n_mismatch, 0,
		             "%s: %" PRId64 " mismatches, first %s layer %d "
		             "row %" PRId64 " pos %" PRId64 " col %d: %" PRId64 " vs %" PRId64,
		             p, res.n_mismatch, dp_engram_check_kind_name(res.first.kind),
		             res.first.layer_id, res.first.row, res.first.position, res.first.index,
		             res.first.expected, res.first.got);
		cr_expect_eq(res.n_checked, want, "%s: every value compared", p);
		json_decref(root);
	}
}

Test(golden, demo_small_multipliers_and_primes_are_the_published_ones)
{
	struct dp_engram_hash *h = hash_of(path_of("golden/hash_demo_small.json"));
	static const int64_t m1[] = {19983230687933245, 1262086846943745, 9377146972286747};
	static const int64_t p3[] = {1051, 1061, 1063, 1069, 1087, 1091, 1093, 1097};
	int s1 = dp_engram_hash_layer_slot(h, 1), s3 = dp_engram_hash_layer_slot(h, 3);

	cr_assert(s1 == 0 && s3 == 1);
	cr_expect_eq(dp_engram_hash_layer_slot(h, 2), -ENOENT);
	cr_expect_arr_eq(dp_engram_hash_multipliers(h, s1), m1, sizeof(m1));
	cr_expect_arr_eq(dp_engram_hash_table_sizes(h, s3), p3, sizeof(p3));
	cr_expect_eq(dp_engram_hash_offsets(h, s3)[8],
	             1051 + 1061 + 1063 + 1069 + 1087 + 1091 + 1093 + 1097);
	cr_expect_eq(dp_engram_hash_pad_id(h), 178, "pad id 2 is mapped through the map");
	dp_engram_hash_free(h);
}

Test(golden, check_hash_tool_exits_0_on_every_golden_file)
{
	char out[4096];

	for (size_t i = 0; i < DP_ARRAY_SIZE(golden_files); i++) {
		const char *args[] = {"check-hash", path_of(golden_files[i]), NULL};

		cr_expect_eq(run_tool(args, out, sizeof(out)), 0, "%s: %s", golden_files[i], out);
		cr_expect(strstr(out, "ok"), "%s", out);
	}
}

Test(golden, corrupted_hash_is_caught_and_named)
{
	json_t *root = load_json(path_of("golden/hash_v41_like.json"));
	json_t *cell = json_array_get(
	    json_array_get(
	        json_array_get(json_object_get(json_object_get(root, "hashes"), "14"), 1), 7),
	    19);
	int64_t orig = json_integer_value(cell);
	struct dp_engram_check res;
	char err[512] = "", out[4096], want[128];
	const char *p;

	json_integer_set(cell, orig + 1);
	p = write_temp(root);
	cr_assert_eq(dp_engram_golden_check_file(p, &res, err, sizeof(err)), 0, "%s", err);
	cr_expect_eq(res.n_mismatch, 1);
	cr_expect_eq(res.first.kind, DP_ENGRAM_CHECK_HASH);
	cr_expect_eq(res.first.layer_id, 14);
	cr_expect_eq(res.first.row, 1);
	cr_expect_eq(res.first.position, 7);
	cr_expect_eq(res.first.index, 19);
	cr_expect_eq(res.first.expected, orig + 1);
	cr_expect_eq(res.first.got, orig);

	const char *args[] = {"check-hash", p, NULL};
	cr_expect_eq(run_tool(args, out, sizeof(out)), 1, "%s", out);
	snprintf(want, sizeof(want), "expected %" PRId64 ", got %" PRId64, orig + 1, orig);
	cr_expect(strstr(out, "hash, layer 14") && strstr(out, "position 7") &&
	              strstr(out, "column 19") && strstr(out, want),
	          "names the mismatch: %s", out);
	unlink(p);
	json_decref(root);
}

Test(golden, corrupted_multiplier_is_caught_and_named)
{
	json_t *root = load_json(path_of("golden/hash_demo_small.json"));
	json_t *cell =
	    json_array_get(json_object_get(json_object_get(root, "multipliers"), "3"), 2);
	int64_t orig = json_integer_value(cell);
	struct dp_engram_check res;
	char err[512] = "", out[4096], want[128];
	const char *p;

	json_integer_set(cell, orig + 2);
	p = write_temp(root);
	cr_assert_eq(dp_engram_golden_check_file(p, &res, err, sizeof(err)), 0, "%s", err);
	cr_expect_eq(res.n_mismatch, 1, "only the multiplier differs: hashes use ours");
	cr_expect_eq(res.first.kind, DP_ENGRAM_CHECK_MULTIPLIER);
	cr_expect_eq(res.first.layer_id, 3);
	cr_expect_eq(res.first.index, 2);

	const char *args[] = {"check-hash", p, NULL};
	cr_expect_eq(run_tool(args, out, sizeof(out)), 1, "%s", out);
	snprintf(want, sizeof(want), "expected %" PRId64 ", got %" PRId64, orig + 2, orig);
	cr_expect(strstr(out, "multiplier, layer 3, index 2") && strstr(out, want),
	          "names the mismatch: %s", out);
	unlink(p);
	json_decref(root);
}

Test(golden, corrupted_table_size_is_caught_and_named)
{
	json_t *root = load_json(path_of("golden/hash_demo_small.json"));
	json_t *cell =
	    json_array_get(json_object_get(json_object_get(root, "head_table_sizes"), "1"), 5);
	char out[4096];
	const char *p;

	cr_assert_eq(json_integer_value(cell), 1033);
	json_integer_set(cell, 1035);
	p = write_temp(root);
	const char *args[] = {"check-hash", p, NULL};
	cr_expect_eq(run_tool(args, out, sizeof(out)), 1, "%s", out);
	cr_expect(strstr(out, "table size, layer 1, column 5: expected 1035, got 1033"), "%s", out);
	unlink(p);
	json_decref(root);
}

/* ---- incremental == whole sequence --------------------------------------------------- */

static void random_tokens(int64_t *ids, size_t n, int64_t map_size, unsigned seed)
{
	static const int64_t specials[] = {-1, -100, INT64_MIN, -(INT64_C(1) << 40)};

	srand(seed);
	for (size_t i = 0; i < n; i++)
		ids[i] = rand() % 11 == 0 ? specials[rand() % 4] : rand() % map_size;
}

Test(incremental, step_and_chunked_calls_equal_the_whole_sequence)
{
	enum { T = 97 };
	for (size_t f = 0; f < DP_ARRAY_SIZE(golden_files); f++) {
		struct dp_engram_hash *h = hash_of(path_of(golden_files[f]));
		int L = dp_engram_hash_n_layers(h), C = dp_engram_hash_n_columns(h);
		size_t per = (size_t)L * C;
		int64_t ids[T], *whole = calloc(per * T, sizeof(int64_t));
		int64_t *step = calloc(per, sizeof(int64_t)),
		        *chunk = calloc(per * T, sizeof(int64_t));
		struct dp_engram_state st, st2;

		cr_assert(whole && step && chunk);
		random_tokens(ids, T, dp_engram_hash_map_size(h), (unsigned)f + 1);
		cr_assert_eq(dp_engram_hash_sequence(h, NULL, ids, T, whole), 0);

		/* one token at a time */
		cr_assert_eq(dp_engram_state_init(h, &st), 0);
		for (size_t t = 0; t < T; t++) {
			cr_assert_eq(dp_engram_hash_step(h, &st, ids[t], step), 0);
			for (int l = 0; l < L; l++)
				cr_expect_arr_eq(
				    step + (size_t)l * C, whole + ((size_t)l * T + t) * C,
				    C * sizeof(int64_t), "%s: step t=%zu layer slot %d",
				    golden_files[f], t, l);
		}

		/* chunks of varying size, state carried */
		cr_assert_eq(dp_engram_state_init(h, &st2), 0);
		for (size_t t = 0, k = 1; t < T; t += k, k = k % 7 + 1) {
			size_t len = t + k <= T ? k : T - t;

			cr_assert_eq(dp_engram_hash_sequence(h, &st2, ids + t, len, chunk), 0);
			for (int l = 0; l < L; l++)
				cr_expect_arr_eq(chunk + (size_t)l * len * C,
				                 whole + ((size_t)l * T + t) * C,
				                 len * C * sizeof(int64_t), "%s: chunk at %zu",
				                 golden_files[f], t);
		}
		cr_expect_arr_eq(st.hist, st2.hist, sizeof(st.hist), "same history either way");

		/* a prefix fed without rows, then the suffix */
		cr_assert_eq(dp_engram_state_init(h, &st2), 0);
		cr_assert_eq(dp_engram_state_feed(h, &st2, ids, 40), 0);
		cr_assert_eq(dp_engram_hash_sequence(h, &st2, ids + 40, T - 40, chunk), 0);
		for (int l = 0; l < L; l++)
			cr_expect_arr_eq(chunk + (size_t)l * (T - 40) * C,
			                 whole + ((size_t)l * T + 40) * C,
			                 (T - 40) * C * sizeof(int64_t), "%s: resumed after feed",
			                 golden_files[f]);
		free(whole);
		free(step);
		free(chunk);
		dp_engram_hash_free(h);
	}
}

Test(incremental, state_holds_the_last_n_minus_1_compressed_ids)
{
	struct dp_engram_hash *h = hash_of(path_of("golden/hash_v41_like.json")); /* N = 4 */
	struct dp_engram_state st;
	int64_t ids[] = {5, 17, 1999, -3}, c;

	cr_assert_eq(dp_engram_state_init(h, &st), 0);
	for (int k = 0; k < 3; k++)
		cr_expect_eq(st.hist[k], dp_engram_hash_pad_id(h), "fresh history is the pad");
	cr_assert_eq(dp_engram_state_feed(h, &st, ids, 4), 0);
	cr_expect_eq(st.hist[0], -3, "negative ids pass through unmapped");
	cr_assert_eq(dp_engram_hash_compress(h, 1999, &c), 0);
	cr_expect_eq(st.hist[1], c);
	cr_assert_eq(dp_engram_hash_compress(h, 17, &c), 0);
	cr_expect_eq(st.hist[2], c);
	dp_engram_hash_free(h);
}

Test(incremental, out_of_map_id_is_refused_without_touching_rows_or_state)
{
	struct dp_engram_hash *h = hash_of(path_of("golden/hash_demo_small.json"));
	struct dp_engram_state st, before;
	int64_t ids[] = {1, 2, 500}, rows[2 * 3 * 8], c = 77;

	cr_assert_eq(dp_engram_state_init(h, &st), 0);
	cr_assert_eq(dp_engram_state_feed(h, &st, ids, 2), 0);
	before = st;
	memset(rows, 0x5a, sizeof(rows));
	cr_expect_eq(dp_engram_hash_sequence(h, &st, ids, 3, rows), -ERANGE);
	cr_expect_eq(dp_engram_hash_step(h, &st, 500, rows), -ERANGE);
	cr_expect_eq(dp_engram_state_feed(h, &st, ids, 3), -ERANGE);
	cr_expect_eq(dp_engram_hash_compress(h, 500, &c), -ERANGE);
	cr_expect_eq(c, 77);
	cr_expect_arr_eq(&st, &before, sizeof(st));
	for (size_t i = 0; i < sizeof(rows); i++)
		if (((unsigned char *)rows)[i] != 0x5a) {
			cr_expect_fail("rows written on failure");
			break;
		}
	cr_expect_eq(dp_engram_hash_sequence(NULL, NULL, ids, 1, rows), -EINVAL);
	cr_expect_eq(dp_engram_hash_step(h, NULL, 1, rows), -EINVAL);
	cr_expect_eq(dp_engram_hash_sequence(h, NULL, ids, 0, NULL), 0, "nothing to do");
	dp_engram_hash_free(h);
}

Test(incremental, hash_tool_prints_the_library_rows)
{
	struct dp_engram_hash *h = hash_of(path_of("golden/hash_demo_small.json"));
	int64_t ids[] = {267, 116, 218}, rows[2 * 3 * 8];
	const char *args[] = {"hash",     "--config",    path_of("golden/hash_demo_small.json"),
	                      "--tokens", "267,116,218", NULL};
	char out[8192], line[256];
	int n = 0;

	cr_assert_eq(dp_engram_hash_sequence(h, NULL, ids, 3, rows), 0);
	cr_expect_eq(run_tool(args, out, sizeof(out)), 0, "%s", out);
	n = snprintf(line, sizeof(line), "t=2 id=218:");
	for (int c = 0; c < 8; c++)
		n += snprintf(line + n, sizeof(line) - (size_t)n, " %" PRId64, rows[2 * 8 + c]);
	cr_expect(strstr(out, line), "\"%s\" in:\n%s", line, out);
	cr_expect(strstr(out, "multipliers: 19983230687933245 1262086846943745 9377146972286747"),
	          "%s", out);
	dp_engram_hash_free(h);
}

/* ---- malformed files ---------------------------------------------------------------- */

/* Apply an edit to a copy of the small golden file; expect -EINVAL naming needle. */
static void expect_malformed(void (*edit)(json_t *), const char *needle)
{
	json_t *root = load_json(path_of("golden/hash_demo_small.json"));
	struct dp_engram_check res;
	char err[512] = "", out[4096];
	const char *p;

	edit(root);
	p = write_temp(root);
	memset(&res, 0x5a, sizeof(res));
	cr_expect_eq(dp_engram_golden_check_file(p, &res, err, sizeof(err)), -EINVAL,
	             "refused (%s)", needle);
	cr_expect(strstr(err, needle) && strstr(err, p), "message \"%s\" names \"%s\" and the path",
	          err, needle);
	cr_expect_eq(res.n_checked, 0x5a5a5a5a5a5a5a5a, "ret untouched on failure");
	const char *args[] = {"check-hash", p, NULL};
	cr_expect_eq(run_tool(args, out, sizeof(out)), 2, "tool exit 2 for %s: %s", needle, out);
	cr_expect(strstr(out, needle), "tool says \"%s\": %s", needle, out);
	unlink(p);
	json_decref(root);
}

static void drop_seed(json_t *r)
{
	json_object_del(r, "seed");
}
static void real_heads(json_t *r)
{
	json_object_set_new(r, "n_head_per_ngram", json_real(4.0));
}
static void map_too_big(json_t *r)
{
	json_array_set_new(json_object_get(r, "compression_map"), 12, json_integer(380));
}
static void repeat_layer(json_t *r)
{
	json_array_append_new(json_object_get(r, "layer_ids"), json_integer(1));
}
static void short_vocab(json_t *r)
{
	json_array_remove(json_object_get(r, "engram_vocab_size"), 1);
}
static void drop_hash_layer(json_t *r)
{
	json_object_del(json_object_get(r, "hashes"), "3");
}
static void short_hash_row(json_t *r)
{
	json_array_remove(
	    json_array_get(json_array_get(json_object_get(json_object_get(r, "hashes"), "1"), 0),
	                   4),
	    7);
}
static void string_hash(json_t *r)
{
	json_array_set_new(
	    json_array_get(json_array_get(json_object_get(json_object_get(r, "hashes"), "1"), 1),
	                   2),
	    0, json_string("12"));
}
static void id_outside_map(json_t *r)
{
	json_array_set_new(json_array_get(json_object_get(r, "input_ids"), 1), 3,
	                   json_integer(500));
}
static void wrong_vocab_size(json_t *r)
{
	json_object_set_new(r, "vocab_size", json_integer(499));
}
static void extra_layer_key(json_t *r)
{
	json_object_set_new(json_object_get(r, "multipliers"), "01", json_array());
}
static void ragged_inputs(json_t *r)
{
	json_array_remove(json_array_get(json_object_get(r, "input_ids"), 1), 0);
}
static void pad_outside_map(json_t *r)
{
	json_object_set_new(r, "pad_id", json_integer(500));
}

Test(malformed, golden_files_with_bad_fields_are_refused_naming_the_field)
{
	expect_malformed(drop_seed, "seed: missing");
	expect_malformed(real_heads, "n_head_per_ngram: expected an integer");
	expect_malformed(map_too_big, "compression_map[12]: 380 is outside");
	expect_malformed(repeat_layer, "layer_ids[2]: 1 repeats layer_ids[0]");
	expect_malformed(short_vocab, "engram_vocab_size: has 1 entries, expected 2");
	expect_malformed(drop_hash_layer, "hashes[\"3\"]: missing");
	expect_malformed(short_hash_row, "hashes[\"1\"][0][4]: has 7 entries, expected 8");
	expect_malformed(string_hash, "hashes[\"1\"][1][2][0]: expected an integer, got a string");
	expect_malformed(id_outside_map, "input_ids[1][3]: 500 is outside the compression map");
	expect_malformed(wrong_vocab_size, "vocab_size: 499 is outside [500, 500]");
	expect_malformed(extra_layer_key, "multipliers[\"01\"]: not one of layer_ids");
	expect_malformed(ragged_inputs, "input_ids[1]: has 23 entries, expected 24");
	expect_malformed(pad_outside_map, "pad_id: 500 is outside the compression map");
}

Test(malformed, bad_json_and_missing_files_give_clear_errors)
{
	struct dp_engram_config c;
	struct dp_engram_check res;
	char err[512] = "", out[4096];
	const char *p;

	p = write_text("{\"max_ngram_size\": 3,\n \"seed\": }");
	cr_expect_eq(dp_engram_golden_check_file(p, &res, err, sizeof(err)), -EINVAL);
	cr_expect(strstr(err, "invalid JSON at line 2"), "%s", err);
	const char *a1[] = {"check-hash", p, NULL};
	cr_expect_eq(run_tool(a1, out, sizeof(out)), 2);
	cr_expect(strstr(out, "invalid JSON at line 2"), "%s", out);
	unlink(p);

	p = write_text("[1, 2]");
	cr_expect_eq(dp_engram_config_load(p, &c, err, sizeof(err)), -EINVAL);
	cr_expect(strstr(err, "the top level is a list"), "%s", err);
	unlink(p);

	p = write_text("{\"a\": 1, \"a\": 2}");
	cr_expect_eq(dp_engram_config_load(p, &c, err, sizeof(err)), -EINVAL);
	cr_expect(strstr(err, "duplicate"), "%s", err);
	unlink(p);

	cr_expect_eq(dp_engram_golden_check_file("/nonexistent/x.json", &res, err, sizeof(err)),
	             -ENOENT);
	cr_expect(strstr(err, "/nonexistent/x.json: No such file"), "%s", err);
	const char *a2[] = {"check-hash", "/nonexistent/x.json", NULL};
	cr_expect_eq(run_tool(a2, out, sizeof(out)), 2);
	cr_expect(strstr(out, "No such file"), "%s", out);

	cr_expect_eq(dp_engram_config_load(test_dir(), &c, err, sizeof(err)), -EISDIR);

	const char *a3[] = {"check-hash", NULL};
	cr_expect_eq(run_tool(a3, out, sizeof(out)), 2);
	cr_expect(strstr(out, "usage"), "%s", out);
	const char *a4[] = {"hash",     "--config", path_of("golden/hash_demo_small.json"),
	                    "--tokens", "1,x",      NULL};
	cr_expect_eq(run_tool(a4, out, sizeof(out)), 2);
	cr_expect(strstr(out, "--tokens"), "%s", out);
	const char *a5[] = {"hash",     "--config", path_of("golden/hash_demo_small.json"),
	                    "--tokens", "1,500",    NULL};
	cr_expect_eq(run_tool(a5, out, sizeof(out)), 2);
	cr_expect(strstr(out, "outside the compression map"), "%s", out);
}

Test(malformed, config_parse_leaves_ret_untouched_and_new_refuses_bad_configs)
{
	struct dp_engram_config c;
	struct dp_engram_hash *h = (struct dp_engram_hash *)0x1;
	const char *json = "{\"max_ngram_size\": 3, \"n_head_per_ngram\": 2, "
	                   "\"compressed_vocab_size\": 4, \"seed\": 0, \"pad_id\": 1, "
	                   "\"layer_ids\": [1], \"engram_vocab_size\": [10, 10], "
	                   "\"compression_map\": [0, 1, 2, 3]}";
	char err[512] = "";
	const unsigned char *p;

	memset(&c, 0x5a, sizeof(c));
	p = (const unsigned char *)&c;
	cr_expect_eq(dp_engram_config_parse("{\"max_ngram_size\": 1}", 21, &c, err, sizeof(err)),
	             -EINVAL);
	cr_expect(strstr(err, "max_ngram_size: 1 is outside [2, 16]"), "%s", err);
	for (size_t i = 0; i < sizeof(c); i++)
		if (p[i] != 0x5a) {
			cr_expect_fail("config touched on failure");
			break;
		}

	cr_assert_eq(dp_engram_config_parse(json, strlen(json), &c, err, sizeof(err)), 0, "%s",
	             err);
	c.layer_ids[0] = -1;
	cr_expect_eq(dp_engram_config_check(&c, err, sizeof(err)), -EINVAL);
	cr_expect(strstr(err, "layer_ids[0]: -1"), "%s", err);
	cr_expect_eq(dp_engram_hash_new(&c, &h), -EINVAL);
	cr_expect_eq(h, (struct dp_engram_hash *)0x1, "ret untouched");
	c.layer_ids[0] = 1;
	c.vocab_size[1] = 0;
	cr_expect_eq(dp_engram_hash_new(&c, &h), -EINVAL);
	c.vocab_size[1] = 10;
	cr_assert_eq(dp_engram_hash_new(&c, &h), 0);
	cr_expect_eq(dp_engram_hash_n_columns(h), 4);
	dp_engram_hash_free(h);
	dp_engram_config_fini(&c);
	dp_engram_config_fini(&c); /* idempotent */
	dp_engram_config_fini(NULL);
	dp_engram_hash_free(NULL);
}
