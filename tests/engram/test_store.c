/* SPDX-License-Identifier: MIT */
/*
 * The Engram store: rows served after a prefetch equal direct lookups (hash + pread + decode)
 * in every residency and dtype, across steps (each sequence's Engram history continues the
 * hash) and batches larger than the staging; NVMe residency gives the same rows and logits as
 * DRAM bit for bit; cache hits, inserts and evictions and NVMe block reads are accounted
 * exactly; a forward without a prefetch prefetches itself; a table of another model is
 * refused. Through a reader (dp_engram_store_set_reader) NVMe gives the same rows, each
 * slot's reads carry the layer that consumes them and are waited for when that layer asks,
 * and a failed or short read fails that layer's call only.
 *
 * The model is tests/engram/fusion/model with larger Engram tables (engram_vocab_size 5003 and
 * 7001, so rows spread over many blocks), written here with deterministic values.
 */
#include <fcntl.h>
#include <sys/stat.h>

#include "engram-test.h"
#include "base/macros.h"

struct fixture {
	char tmp[256];
	char model[300]; /* a model dir: fusion/model with larger tables */
	char table[DP_ENGRAM_DTYPE_MAX][320];
	struct et_bundle b;
	struct dp_engram_table *t[DP_ENGRAM_DTYPE_MAX];
};

static float value_at(int s, uint64_t r, uint32_t i)
{
	return dp_bf16_to_f32(
	    dp_f32_to_bf16((float)((s * 7919 + (int64_t)r * 31 + i * 17) % 2001 - 1000) / 256.0f));
}

static void write_tables(struct fixture *f, enum dp_engram_dtype dt)
{
	const struct dp_engram_hash *h = f->b.h;
	struct dp_engram_table_spec spec = {.hash = h, .dtype = dt, .head_dim = f->b.hd};
	struct dp_engram_writer *w;
	char err[512] = "";
	float row[64];

	char name[sizeof(f->table[dt])];
	snprintf(name, sizeof(name), "%s/%s.dpe", f->tmp, dp_engram_dtype_name(dt));
	memcpy(f->table[dt], name, sizeof(name));
	cr_assert_eq(dp_engram_writer_new(f->table[dt], &spec, &w, err, sizeof(err)), 0, "%s", err);
	for (int s = 0; s < dp_engram_hash_n_layers(h); s++) {
		uint64_t rows = (uint64_t)dp_engram_hash_offsets(h, s)[dp_engram_hash_n_columns(h)];
		for (uint64_t r = 0; r < rows; r++) {
			for (uint32_t i = 0; i < f->b.hd; i++)
				row[i] = value_at(s, r, i);
			cr_assert_eq(dp_engram_writer_put(w, row, 1, err, sizeof(err)), 0, "%s",
			             err);
		}
	}
	cr_assert_eq(dp_engram_writer_finish(w, err, sizeof(err)), 0, "%s", err);
	dp_engram_writer_free(w);
	cr_assert_eq(dp_engram_table_open(f->table[dt], &f->t[dt], err, sizeof(err)), 0, "%s", err);
}

static void fixture_open(struct fixture *f)
{
	char src[512], path[700], target[700];
	json_error_t jerr;

	memset(f, 0, sizeof(*f));
	et_mkdtemp(f->tmp, sizeof(f->tmp));
	et_path(src, sizeof(src), "fusion/model");
	snprintf(f->model, sizeof(f->model), "%s/model", f->tmp);
	cr_assert_eq(mkdir(f->model, 0755), 0);
	snprintf(path, sizeof(path), "%s/config.json", src);
	json_t *cfg = json_load_file(path, 0, &jerr);
	cr_assert_not_null(cfg, "%s: %s", path, jerr.text);
	json_t *vs = json_array();
	json_array_append_new(vs, json_integer(5003));
	json_array_append_new(vs, json_integer(7001));
	json_object_set_new(cfg, "engram_vocab_size", vs);
	snprintf(path, sizeof(path), "%s/config.json", f->model);
	cr_assert_eq(json_dump_file(cfg, path, 0), 0);
	json_decref(cfg);
	snprintf(path, sizeof(path), "%s/model.safetensors", f->model);
	snprintf(target, sizeof(target), "%s/model.safetensors", src);
	if (target[0] != '/') { /* relative source dir: make the link absolute */
		char cwd[256];
		cr_assert_not_null(getcwd(cwd, sizeof(cwd)));
		char abs[1000];
		snprintf(abs, sizeof(abs), "%s/%s", cwd, target);
		cr_assert_eq(symlink(abs, path), 0);
	} else {
		cr_assert_eq(symlink(target, path), 0);
	}
	et_bundle_open(&f->b, f->model);
	write_tables(f, DP_ENGRAM_DTYPE_BF16);
	write_tables(f, DP_ENGRAM_DTYPE_FP8);
}

static void fixture_close(struct fixture *f)
{
	for (int d = 0; d < DP_ENGRAM_DTYPE_MAX; d++)
		dp_engram_table_close(f->t[d]);
	et_bundle_close(&f->b);
	et_rmtree(f->tmp);
}

/* Flat rows of slot for the items' tokens ([T][C]), from each sequence's history. */
static void flat_rows(const struct dp_engram_hash *h, int slot,
                      const struct dp_v4_batch_item *items, uint32_t n_items, int64_t *out)
{
	int C = dp_engram_hash_n_columns(h), L = dp_engram_hash_n_layers(h);
	const int64_t *off = dp_engram_hash_offsets(h, slot);
	size_t o = 0;

	for (uint32_t i = 0; i < n_items; i++) {
		int32_t hist[DP_V4_ENGRAM_HISTORY_MAX];
		int64_t h64[DP_V4_ENGRAM_HISTORY_MAX], tok[256];
		int k = dp_v4_seq_engram_history(items[i].seq, hist, DP_V4_ENGRAM_HISTORY_MAX);
		uint32_t n = items[i].n_tokens;
		struct dp_engram_state st;
		cr_assert_geq(k, 0);
		for (int j = 0; j < k; j++)
			h64[j] = hist[j];
		for (uint32_t t = 0; t < n; t++)
			tok[t] = items[i].tokens[t];
		int64_t *rows = malloc((size_t)L * n * C * sizeof(*rows));
		cr_assert_eq(dp_engram_state_init(h, &st), 0);
		cr_assert_eq(dp_engram_state_feed(h, &st, h64, (size_t)k), 0);
		cr_assert_eq(dp_engram_hash_sequence(h, &st, tok, n, rows), 0);
		for (size_t j = 0; j < (size_t)n * C; j++)
			out[o + j] = off[j % C] + rows[(size_t)slot * n * C + j];
		o += (size_t)n * C;
		free(rows);
	}
}

static uint32_t tokens_of(const struct dp_v4_batch_item *items, uint32_t n_items)
{
	uint32_t T = 0;
	for (uint32_t i = 0; i < n_items; i++)
		T += items[i].n_tokens;
	return T;
}

/* The rows a provider must return, the slow way: hash, pread, decode. */
static void direct_rows(struct fixture *f, const struct dp_engram_table *t, int slot,
                        const struct dp_v4_batch_item *items, uint32_t n_items, float *out)
{
	uint32_t T = tokens_of(items, n_items), C = (uint32_t)dp_engram_hash_n_columns(f->b.h);
	int64_t *flat = malloc((size_t)T * C * sizeof(*flat));
	flat_rows(f->b.h, slot, items, n_items, flat);
	cr_assert_eq(dp_engram_table_read_rows(t, slot, flat, (size_t)T * C, out), 0);
	free(flat);
}

/*
 * Two sequences through a prefill step (11 and 23 tokens: more than the store's 16-token
 * staging) and five decode steps (1 and 2 tokens). Every step: prefetch, check each layer's
 * rows against direct lookups, run the forward. Logits of all steps go to *ret_logits.
 */
static void run_steps(struct fixture *f, enum dp_engram_dtype dt, float **ret_logits, size_t *ret_n)
{
	static const uint32_t sizes[6][2] = {{11, 23}, {1, 2}, {1, 2}, {1, 2}, {1, 2}, {1, 2}};
	struct dp_v4_seq *sa, *sb;
	int32_t toks[2][64];
	uint32_t pos[2] = {0, 0}, V = f->b.V;
	uint64_t x = 77;
	uint32_t C = (uint32_t)dp_engram_hash_n_columns(f->b.h), F = C * f->b.hd;

	for (int s = 0; s < 2; s++)
		for (int i = 0; i < 64; i++) {
			x ^= x << 13, x ^= x >> 7, x ^= x << 17;
			toks[s][i] = (int32_t)(x % V);
		}
	toks[1][3] = toks[1][9] = toks[0][2]; /* repeated n-grams share rows */
	toks[1][4] = toks[1][10] = toks[0][3];
	cr_assert_eq(dp_v4_seq_new(f->b.m, &sa), 0);
	cr_assert_eq(dp_v4_seq_new(f->b.m, &sb), 0);
	float *logits = malloc(6 * 2 * 2 * V * sizeof(float)),
	      *expect = malloc(64 * F * sizeof(float));
	size_t nl = 0;
	for (int step = 0; step < 6; step++) {
		struct dp_v4_batch_item it[2] = {
		    {.seq = sa, .tokens = toks[0] + pos[0], .n_tokens = sizes[step][0]},
		    {.seq = sb, .tokens = toks[1] + pos[1], .n_tokens = sizes[step][1]},
		};
		uint32_t T = tokens_of(it, 2);
		cr_assert_eq(dp_engram_prefetch(f->b.s, it, 2), 0);
		for (int slot = dp_engram_hash_n_layers(f->b.h) - 1; slot >= 0; slot--) {
			const float *rows;
			/* layers out of order too: each waits for its own reads */
			int r = dp_engram_store_rows(f->b.s, dp_engram_hash_layer_id(f->b.h, slot),
			                             it, 2, &rows);
			cr_assert_eq(r, 0, "step %d slot %d: %s", step, slot, strerror(-r));
			direct_rows(f, f->t[dt], slot, it, 2, expect);
			cr_assert_eq(memcmp(rows, expect, (size_t)T * F * sizeof(float)), 0,
			             "step %d slot %d: rows differ from direct lookups", step,
			             slot);
		}
		cr_assert_eq(dp_v4_forward(f->b.m, it, 2, logits + nl * V), 0);
		nl += 2;
		pos[0] += sizes[step][0];
		pos[1] += sizes[step][1];
	}
	struct dp_engram_store_stats st;
	dp_engram_store_get_stats(f->b.s, &st);
	cr_expect_eq(st.sync_prefetches, 0, "every forward found its step prefetched");
	cr_expect_eq(st.steps, 6);
	dp_v4_seq_free(sa);
	dp_v4_seq_free(sb);
	free(expect);
	*ret_logits = logits;
	*ret_n = nl * V;
}

/*
 * A reader that reads only when a ticket is waited for (a pread then): rows gathered before
 * their wait, or a buffer reused before the previous step's reads were waited for, come out
 * wrong. It records each read's layer and whether it was waited; a read of fail_layer fails
 * (-EIO), one of short_layer comes back a byte short.
 */
struct lazy_read {
	uint64_t offset;
	uint32_t len, layer;
	void *dst;
	bool waited;
};

struct lazy_reader {
	int fd;
	uint32_t file;
	struct lazy_read *r;
	size_t n, cap, waits;
	int fail_layer, short_layer;
};

static int lazy_read(void *ctx, uint32_t file, uint64_t offset, uint32_t len, void *dst,
                     uint32_t layer, uint64_t *ret_ticket)
{
	struct lazy_reader *z = ctx;
	if (z->n == 0 && z->waits == 0)
		z->file = file;
	cr_assert_eq(file, z->file, "one table file, one handle");
	if (z->n == z->cap) {
		z->cap = z->cap ? 2 * z->cap : 64;
		z->r = realloc(z->r, z->cap * sizeof(*z->r));
		cr_assert_not_null(z->r);
	}
	z->r[z->n] = (struct lazy_read){.offset = offset, .len = len, .layer = layer, .dst = dst};
	*ret_ticket = z->n++;
	return 0;
}

static int lazy_wait(void *ctx, uint64_t ticket, uint32_t len)
{
	struct lazy_reader *z = ctx;
	cr_assert_lt(ticket, z->n, "a ticket the reader never gave");
	struct lazy_read *r = &z->r[ticket];
	cr_assert_eq(len, r->len, "the wait names the read's length");
	cr_assert(!r->waited, "ticket %llu waited for twice", (unsigned long long)ticket);
	r->waited = true;
	z->waits++;
	if ((int)r->layer == z->fail_layer)
		return -EIO;
	ssize_t got = pread(z->fd, r->dst, r->len, (off_t)r->offset);
	cr_assert_eq(got, (ssize_t)r->len);
	return (int)r->len - ((int)r->layer == z->short_layer);
}

static void lazy_open(struct lazy_reader *z, struct dp_engram_store *s, const char *table)
{
	*z = (struct lazy_reader){.fail_layer = -1, .short_layer = -1};
	z->fd = open(table, O_RDONLY | O_CLOEXEC);
	cr_assert_geq(z->fd, 0);
	struct dp_engram_reader rd = {.read = lazy_read, .wait = lazy_wait, .ctx = z};
	cr_assert_eq(dp_engram_store_set_reader(s, &rd), 0);
}

static void lazy_close(struct lazy_reader *z)
{
	cr_expect_eq(z->waits, z->n, "every read was waited for, once");
	close(z->fd);
	free(z->r);
}

struct store_run {
	enum dp_engram_residency res;
	unsigned flags;
	uint64_t cache;
	bool reader; /* through a lazy reader */
};

/* The same steps through a store of each run, for both table dtypes: every run's logits
 * must equal the first run's, bit for bit (run_steps checks the rows against direct
 * lookups on the way). */
static void runs_agree(struct fixture *f, const struct store_run *runs, size_t n_runs)
{
	for (int dt = 0; dt < DP_ENGRAM_DTYPE_MAX; dt++) {
		float *ref = NULL;
		size_t n_ref = 0;
		for (size_t i = 0; i < n_runs; i++) {
			float *logits;
			size_t n;
			struct lazy_reader z;
			cr_assert(et_bundle_store(&f->b, f->table[dt], runs[i].res, runs[i].cache,
			                          runs[i].flags),
			          "%s store", dp_engram_residency_name(runs[i].res));
			if (runs[i].reader)
				lazy_open(&z, f->b.s, f->table[dt]);
			run_steps(f, (enum dp_engram_dtype)dt, &logits, &n);
			et_bundle_close_store(&f->b);
			if (runs[i].reader) {
				cr_expect_gt(z.n, 0, "the reader read");
				lazy_close(&z);
			}
			if (!ref) {
				ref = logits, n_ref = n;
				continue;
			}
			cr_expect_eq(
			    memcmp(logits, ref, n * sizeof(float)), 0,
			    "%s (flags %u, cache %llu) logits differ from %s's (%s tables)",
			    dp_engram_residency_name(runs[i].res), runs[i].flags,
			    (unsigned long long)runs[i].cache,
			    dp_engram_residency_name(runs[0].res), dp_engram_dtype_name(dt));
			cr_assert_eq(n, n_ref);
			free(logits);
		}
		free(ref);
	}
}

Test(store, prefetched_rows_equal_direct_lookups_and_device_equals_dram_bit_for_bit)
{
	static const struct store_run runs[] = {
	    {DP_ENGRAM_RES_DRAM, 0, 4096, false},
	    {DP_ENGRAM_RES_DRAM, 0, 0, false},
	    {DP_ENGRAM_RES_DEVICE, 0, 0, false},
	};
	struct fixture f;

	fixture_open(&f);
	runs_agree(&f, runs, DP_ARRAY_SIZE(runs));
	fixture_close(&f);
}

/* NVMe residency against DRAM. Without io_uring this is a skip: it used to be part of the
 * test above, which then passed with the NVMe runs left out. */
Test(store, nvme_equals_dram_bit_for_bit)
{
	static const struct store_run runs[] = {
	    {DP_ENGRAM_RES_DRAM, 0, 4096, false}, /* the reference */
	    {DP_ENGRAM_RES_NVME, 0, 4096, false},
	    {DP_ENGRAM_RES_NVME, 0, 0, false},
	    {DP_ENGRAM_RES_NVME, DP_ENGRAM_STORE_BUFFERED, 64, false},
	    {DP_ENGRAM_RES_NVME, 0, 4096, true},
	    {DP_ENGRAM_RES_NVME, 0, 0, true},
	    {DP_ENGRAM_RES_NVME, DP_ENGRAM_STORE_BUFFERED, 64, true},
	};
	struct fixture f;

	fixture_open(&f);
	if (!et_bundle_store(&f.b, f.table[DP_ENGRAM_DTYPE_BF16], DP_ENGRAM_RES_NVME, 0, 0)) {
		fixture_close(&f);
		cr_skip_test("io_uring is not available here: NVMe residency not tested");
	}
	et_bundle_close_store(&f.b);
	runs_agree(&f, runs, DP_ARRAY_SIZE(runs));
	fixture_close(&f);
}

/* Distinct values among v[0..n), in first-seen order, into out; returns the count. */
static size_t distinct(const uint64_t *v, size_t n, uint64_t *out)
{
	size_t k = 0;
	for (size_t i = 0; i < n; i++) {
		bool seen = false;
		for (size_t j = 0; j < k && !seen; j++)
			seen = out[j] == v[i];
		if (!seen)
			out[k++] = v[i];
	}
	return k;
}

/* The cache keys of a step's requests, slot by slot (the order rows are gathered in). */
static size_t step_keys(struct fixture *f, const struct dp_v4_batch_item *it, uint64_t *keys)
{
	uint32_t T = tokens_of(it, 1), C = (uint32_t)dp_engram_hash_n_columns(f->b.h);
	int64_t flat[256];
	size_t k = 0;
	for (int s = 0; s < dp_engram_hash_n_layers(f->b.h); s++) {
		flat_rows(f->b.h, s, it, 1, flat);
		for (size_t j = 0; j < (size_t)T * C; j++)
			keys[k++] = (uint64_t)flat[j] << 8 | (uint64_t)s;
	}
	return k;
}

static void serve_all(struct fixture *f, const struct dp_v4_batch_item *it)
{
	const float *rows;
	cr_assert_eq(dp_engram_prefetch(f->b.s, it, 1), 0);
	for (int s = 0; s < dp_engram_hash_n_layers(f->b.h); s++)
		cr_assert_eq(
		    dp_engram_store_rows(f->b.s, dp_engram_hash_layer_id(f->b.h, s), it, 1, &rows),
		    0);
}

Test(store, cache_hits_inserts_and_evictions_are_accounted_exactly)
{
	struct fixture f;
	struct dp_engram_store_stats st;
	struct dp_v4_seq *s1, *s2;
	int32_t tok[12] = {5, 9, 5, 9, 5, 9, 14, 3, 3, 3, 40, 5}; /* repeats: shared rows */
	uint64_t keys[256], uniq[256], uniq2[256];

	fixture_open(&f);
	cr_assert_eq(dp_v4_seq_new(f.b.m, &s1), 0);
	cr_assert_eq(dp_v4_seq_new(f.b.m, &s2), 0);
	struct dp_v4_batch_item a = {.seq = s1, .tokens = tok, .n_tokens = 12};
	struct dp_v4_batch_item b = {.seq = s2, .tokens = tok, .n_tokens = 12};
	size_t n = step_keys(&f, &a, keys), nu = distinct(keys, n, uniq);
	cr_assert_lt(nu, n, "the tokens repeat n-grams");

	/* a cache that holds everything: first pass all misses, second all hits */
	et_bundle_store(&f.b, f.table[DP_ENGRAM_DTYPE_BF16], DP_ENGRAM_RES_DRAM, 1024, 0);
	serve_all(&f, &a);
	dp_engram_store_get_stats(f.b.s, &st);
	cr_expect_eq(st.rows, n);
	cr_expect_eq(st.cache_hits, 0);
	cr_expect_eq(st.cache_misses, n);
	cr_expect_eq(st.cache_inserts, nu, "one insert per distinct row");
	cr_expect_eq(st.cache_evictions, 0);
	dp_engram_store_reset_stats(f.b.s);
	serve_all(&f, &b); /* another sequence at position 0 with the same tokens */
	dp_engram_store_get_stats(f.b.s, &st);
	cr_expect_eq(st.cache_hits, n);
	cr_expect_eq(st.cache_misses, 0);
	cr_expect_eq(st.cache_inserts, 0);
	et_bundle_close_store(&f.b);

	/* 8 entries: the first step keeps its first 8 distinct rows (all pinned during the step),
	 * the second hits exactly those and evicts the ones it does not use */
	const uint32_t cap = 8;
	et_bundle_store(&f.b, f.table[DP_ENGRAM_DTYPE_BF16], DP_ENGRAM_RES_DRAM, cap, 0);
	serve_all(&f, &a);
	dp_engram_store_get_stats(f.b.s, &st);
	cr_expect_eq(st.cache_inserts, cap);
	cr_expect_eq(st.cache_evictions, 0);
	dp_engram_store_reset_stats(f.b.s);

	int32_t tok2[12] = {5, 9, 5, 77, 78, 79, 80, 81, 82, 83, 84, 85};
	struct dp_v4_batch_item c = {.seq = s2, .tokens = tok2, .n_tokens = 12};
	uint64_t keys2[256];
	size_t n2 = step_keys(&f, &c, keys2), hits = 0;
	bool used[8] = {false};
	for (size_t i = 0; i < n2; i++)
		for (uint32_t j = 0; j < cap; j++)
			if (keys2[i] == uniq[j]) {
				hits++;
				used[j] = true;
			}
	uint64_t missed[256];
	size_t nm = 0;
	for (size_t i = 0; i < n2; i++) {
		bool cached = false;
		for (uint32_t j = 0; j < cap; j++)
			cached |= keys2[i] == uniq[j];
		if (!cached)
			missed[nm++] = keys2[i];
	}
	size_t nmu = distinct(missed, nm, uniq2), unused = 0;
	for (uint32_t j = 0; j < cap; j++)
		unused += !used[j];
	serve_all(&f, &c);
	dp_engram_store_get_stats(f.b.s, &st);
	cr_expect_gt(hits, 0);
	cr_expect_eq(st.cache_hits, hits);
	cr_expect_eq(st.cache_misses, n2 - hits);
	size_t ev = nmu < unused ? nmu : unused;
	cr_expect_eq(st.cache_evictions, ev, "evict the %zu entries this step does not use",
	             unused);
	cr_expect_eq(st.cache_inserts, ev);
	et_bundle_close_store(&f.b);

	dp_v4_seq_free(s1);
	dp_v4_seq_free(s2);
	fixture_close(&f);
}

Test(store, nvme_reads_one_block_per_distinct_block_and_merges_neighbours)
{
	struct fixture f;
	struct dp_engram_store_stats st;
	struct dp_engram_table_info in;
	struct dp_v4_seq *s;
	int32_t tok[40];
	uint64_t blocks[1024], uniq[1024];

	fixture_open(&f);
	if (!et_bundle_store(&f.b, f.table[DP_ENGRAM_DTYPE_BF16], DP_ENGRAM_RES_NVME, 0, 0)) {
		fixture_close(&f);
		cr_skip_test("io_uring is not available here");
	}
	dp_engram_table_get_info(f.t[DP_ENGRAM_DTYPE_BF16], &in);
	for (int i = 0; i < 40; i++)
		tok[i] = (i * 7) % 20;
	cr_assert_eq(dp_v4_seq_new(f.b.m, &s), 0);
	struct dp_v4_batch_item it = {.seq = s, .tokens = tok, .n_tokens = 40};
	uint32_t C = (uint32_t)dp_engram_hash_n_columns(f.b.h);
	size_t n = 0;
	for (int sl = 0; sl < dp_engram_hash_n_layers(f.b.h); sl++) {
		int64_t flat[40 * 8];
		flat_rows(f.b.h, sl, &it, 1, flat);
		for (size_t j = 0; j < 40 * C; j++)
			blocks[n++] = (dp_engram_table_row_offset(f.t[DP_ENGRAM_DTYPE_BF16], sl,
			                                          (uint64_t)flat[j]) /
			               in.block_bytes);
	}
	size_t nb = distinct(blocks, n, uniq);
	serve_all(&f, &it);
	dp_engram_store_get_stats(f.b.s, &st);
	cr_expect_eq(st.blocks_read, nb, "one read block per distinct block");
	cr_expect_eq(st.blocks_shared, n - nb);
	cr_expect_leq(st.reads, nb);
	cr_expect_eq(st.bytes_read, nb * in.block_bytes);
	/* merged reads: count runs of adjacent blocks (within one layer's region) */
	size_t runs = 0;
	for (size_t i = 0; i < nb; i++) {
		bool prev = false;
		for (size_t j = 0; j < nb && !prev; j++)
			prev = uniq[j] + 1 == uniq[i];
		runs += !prev;
	}
	cr_expect_leq(st.reads, nb);
	cr_expect_geq(st.reads, runs);
	dp_v4_seq_free(s);
	fixture_close(&f);
}

Test(store, a_forward_without_prefetch_prefetches_itself)
{
	struct fixture f;
	struct dp_engram_store_stats st;
	struct dp_v4_seq *s1, *s2;
	int32_t tok[6] = {1, 2, 3, 4, 5, 6};

	fixture_open(&f);
	et_bundle_store(&f.b, f.table[DP_ENGRAM_DTYPE_FP8], DP_ENGRAM_RES_DRAM, 64, 0);
	float *l1 = malloc(6 * f.b.V * sizeof(float)), *l2 = malloc(6 * f.b.V * sizeof(float));
	cr_assert_eq(dp_v4_seq_new(f.b.m, &s1), 0);
	cr_assert_eq(dp_v4_seq_new(f.b.m, &s2), 0);
	struct dp_v4_batch_item a = {.seq = s1, .tokens = tok, .n_tokens = 6, .all_logits = true};
	struct dp_v4_batch_item b = {.seq = s2, .tokens = tok, .n_tokens = 6, .all_logits = true};
	cr_assert_eq(dp_v4_forward(f.b.m, &a, 1, l1), 0);
	cr_assert_eq(dp_engram_prefetch(f.b.s, &b, 1), 0);
	cr_assert_eq(dp_v4_forward(f.b.m, &b, 1, l2), 0);
	dp_engram_store_get_stats(f.b.s, &st);
	cr_expect_eq(st.sync_prefetches, 1);
	cr_expect_eq(st.steps, 2);
	cr_expect_eq(memcmp(l1, l2, 6 * f.b.V * sizeof(float)), 0);
	/* a prefetch for other items than the forward's is not used */
	struct dp_v4_batch_item c = {.seq = s1, .tokens = tok, .n_tokens = 2};
	struct dp_v4_batch_item d = {.seq = s2, .tokens = tok + 1, .n_tokens = 1};
	cr_assert_eq(dp_engram_prefetch(f.b.s, &c, 1), 0);
	cr_assert_eq(dp_v4_forward(f.b.m, &d, 1, l2), 0);
	dp_engram_store_get_stats(f.b.s, &st);
	cr_expect_eq(st.sync_prefetches, 2);
	dp_v4_seq_free(s1);
	dp_v4_seq_free(s2);
	free(l1), free(l2);
	fixture_close(&f);
}

Test(store, a_table_of_another_model_or_a_bad_config_is_refused)
{
	struct fixture f;
	struct dp_engram_store_config cfg;
	struct dp_engram_store *s = NULL;
	char mdir[512], tmp[300], err[512] = "";

	fixture_open(&f);
	/* the golden model's own tables have other sizes than this fixture's model */
	struct et_bundle gb;
	et_path(mdir, sizeof(mdir), "fusion/model");
	et_bundle_open(&gb, mdir);
	snprintf(tmp, sizeof(tmp), "%s/golden.dpe", f.tmp);
	et_convert(mdir, gb.h, gb.hd, DP_ENGRAM_DTYPE_BF16, tmp);
	et_bundle_close(&gb);
	dp_engram_store_config_init(&cfg);
	cfg.gpu = f.b.g;
	cr_expect_eq(dp_engram_store_new(f.b.h, f.b.hd, tmp, &cfg, &s, err, sizeof(err)), -EINVAL);
	cr_expect_not_null(strstr(err, "table size"), "%s", err);
	cr_expect_null(s);
	cr_expect_eq(dp_engram_store_new(f.b.h, f.b.hd + 1, f.table[0], &cfg, &s, err, sizeof(err)),
	             -EINVAL);
	cfg.residency = DP_ENGRAM_RES_NVME; /* no io engine */
	cr_expect_eq(dp_engram_store_new(f.b.h, f.b.hd, f.table[0], &cfg, &s, err, sizeof(err)),
	             -EINVAL);
	cr_expect_not_null(strstr(err, "io engine"), "%s", err);
	cfg.residency = DP_ENGRAM_RES_DRAM;
	cfg.gpu = NULL;
	cr_expect_eq(dp_engram_store_new(f.b.h, f.b.hd, f.table[0], &cfg, &s, err, sizeof(err)),
	             -EINVAL);
	fixture_close(&f);
}

Test(store, stores_can_share_one_in_memory_copy_of_a_table)
{
	struct fixture f;
	struct dp_engram_store_config cfg;
	struct dp_engram_store *owner, *sharer, *bad = NULL;
	struct dp_engram_store_stats st;
	struct dp_v4_seq *s;
	int32_t tok[9] = {4, 8, 15, 16, 23, 42, 4, 8, 15};
	char err[512] = "";

	fixture_open(&f);
	dp_engram_store_config_init(&cfg);
	cfg.gpu = f.b.g;
	cfg.residency = DP_ENGRAM_RES_DRAM;
	cr_assert_eq(dp_engram_store_new(f.b.h, f.b.hd, f.table[0], &cfg, &owner, err, sizeof(err)),
	             0, "%s", err);
	cfg.residency = DP_ENGRAM_RES_DEVICE;
	cfg.share = owner;
	cr_assert_eq(
	    dp_engram_store_new(f.b.h, f.b.hd, f.table[0], &cfg, &sharer, err, sizeof(err)), 0,
	    "%s", err);
	dp_engram_store_get_stats(sharer, &st);
	cr_expect_eq(st.table_bytes, 0, "the sharer holds no copy of its own");
	/* a copy of another file cannot be shared */
	cfg.residency = DP_ENGRAM_RES_DRAM;
	cr_expect_eq(dp_engram_store_new(f.b.h, f.b.hd, f.table[1], &cfg, &bad, err, sizeof(err)),
	             -EINVAL);
	cr_expect_null(bad);

	cr_assert_eq(dp_v4_seq_new(f.b.m, &s), 0);
	struct dp_v4_batch_item it = {.seq = s, .tokens = tok, .n_tokens = 9};
	size_t bytes = 9 * (size_t)dp_engram_hash_n_columns(f.b.h) * f.b.hd * sizeof(float);
	float *a = malloc(bytes);
	for (int sl = 0; sl < dp_engram_hash_n_layers(f.b.h); sl++) {
		const float *ra, *rb;
		int layer = dp_engram_hash_layer_id(f.b.h, sl);
		cr_assert_eq(dp_engram_store_rows(owner, layer, &it, 1, &ra), 0);
		memcpy(a, ra, bytes);
		cr_assert_eq(dp_engram_store_rows(sharer, layer, &it, 1, &rb), 0);
		cr_expect_eq(memcmp(a, rb, bytes), 0, "slot %d", sl);
	}
	free(a);
	dp_v4_seq_free(s);
	dp_engram_store_free(sharer);
	dp_engram_store_free(owner);
	fixture_close(&f);
}

/* Open an NVMe store on the bf16 table with a lazy reader; false without io_uring. */
static bool reader_store(struct fixture *f, struct lazy_reader *z)
{
	if (!et_bundle_store(&f->b, f->table[DP_ENGRAM_DTYPE_BF16], DP_ENGRAM_RES_NVME, 0, 0))
		return false;
	lazy_open(z, f->b.s, f->table[DP_ENGRAM_DTYPE_BF16]);
	return true;
}

/* The slot whose table region holds file offset off (-1: none). */
static int slot_of_offset(struct fixture *f, uint64_t off)
{
	struct dp_engram_table_info in;
	dp_engram_table_get_info(f->t[DP_ENGRAM_DTYPE_BF16], &in);
	int found = -1;
	for (int sl = 0; sl < dp_engram_hash_n_layers(f->b.h); sl++) {
		uint64_t start, end = in.file_bytes;
		dp_engram_table_layer(f->t[DP_ENGRAM_DTYPE_BF16], sl, NULL, NULL, &start);
		for (int o = 0; o < dp_engram_hash_n_layers(f->b.h); o++) {
			uint64_t x;
			dp_engram_table_layer(f->t[DP_ENGRAM_DTYPE_BF16], o, NULL, NULL, &x);
			if (x > start && x < end)
				end = x;
		}
		if (off >= start && off < end)
			found = sl;
	}
	return found;
}

Test(store, a_readers_reads_carry_the_layer_that_consumes_them_and_each_layer_waits_for_its_own)
{
	struct fixture f;
	struct lazy_reader z;
	struct dp_v4_seq *s;
	int32_t tok[20];

	fixture_open(&f);
	if (!reader_store(&f, &z)) {
		fixture_close(&f);
		cr_skip_test("io_uring is not available here");
	}
	for (int i = 0; i < 20; i++)
		tok[i] = (i * 11 + 3) % 50;
	cr_assert_eq(dp_v4_seq_new(f.b.m, &s), 0);
	struct dp_v4_batch_item it = {.seq = s, .tokens = tok, .n_tokens = 20};
	cr_assert_eq(dp_engram_prefetch(f.b.s, &it, 1), 0);
	cr_assert_gt(z.n, 0);
	/* every read is of the slot whose layer it names, in ascending layer order */
	int L = dp_engram_hash_n_layers(f.b.h), lo = INT32_MAX, hi = -1;
	size_t per_layer[8] = {0};
	cr_assert_leq(L, 8);
	for (size_t i = 0; i < z.n; i++) {
		int sl = slot_of_offset(&f, z.r[i].offset);
		cr_assert_geq(sl, 0, "read %zu is of no slot's rows", i);
		cr_expect_eq((int)z.r[i].layer, dp_engram_hash_layer_id(f.b.h, sl),
		             "read %zu of slot %d says layer %u", i, sl, z.r[i].layer);
		cr_expect(i == 0 || z.r[i].layer >= z.r[i - 1].layer, "reads in layer order");
		per_layer[sl]++;
		lo = (int)z.r[i].layer < lo ? (int)z.r[i].layer : lo;
		hi = (int)z.r[i].layer > hi ? (int)z.r[i].layer : hi;
	}
	for (int sl = 0; sl < L; sl++)
		cr_expect_gt(per_layer[sl], 0, "slot %d has reads", sl);
	cr_assert_lt(lo, hi, "two Engram layers");
	cr_expect_eq(z.waits, 0, "nothing waited for at the prefetch");
	/* the first layer's call waits for its reads only; its rows are the file's */
	size_t bytes = 20 * (size_t)dp_engram_hash_n_columns(f.b.h) * f.b.hd * sizeof(float);
	float *want = malloc(bytes);
	const float *rows;
	for (int pass = 0; pass < 2; pass++) {
		int layer = pass ? hi : lo;
		int sl = dp_engram_hash_layer_slot(f.b.h, layer);
		cr_assert_eq(dp_engram_store_rows(f.b.s, layer, &it, 1, &rows), 0);
		for (size_t i = 0; i < z.n; i++)
			cr_expect_eq(z.r[i].waited, (int)z.r[i].layer <= layer,
			             "after layer %d's call: read %zu of layer %u %s", layer, i,
			             z.r[i].layer, z.r[i].waited ? "waited" : "not waited");
		direct_rows(&f, f.t[DP_ENGRAM_DTYPE_BF16], sl, &it, 1, want);
		cr_expect_eq(memcmp(rows, want, bytes), 0, "layer %d's rows", layer);
	}
	free(want);
	et_bundle_close_store(&f.b);
	lazy_close(&z);
	dp_v4_seq_free(s);
	fixture_close(&f);
}

Test(store, a_failed_or_short_read_through_a_reader_fails_its_layer_only)
{
	struct fixture f;
	struct lazy_reader z;
	struct dp_v4_seq *s;
	int32_t tok[24];

	fixture_open(&f);
	if (!reader_store(&f, &z)) {
		fixture_close(&f);
		cr_skip_test("io_uring is not available here");
	}
	for (int i = 0; i < 24; i++)
		tok[i] = (i * 13 + 5) % 60;
	cr_assert_eq(dp_v4_seq_new(f.b.m, &s), 0);
	int lo = dp_engram_hash_layer_id(f.b.h, 0), hi = dp_engram_hash_layer_id(f.b.h, 1);
	size_t bytes = 8 * (size_t)dp_engram_hash_n_columns(f.b.h) * f.b.hd * sizeof(float);
	float *want = malloc(bytes), *logits = malloc(f.b.V * sizeof(float));
	const float *rows;
	for (int step = 0; step < 3; step++) {
		/* a failed read of the high layer, a short one of the low layer, then none */
		z.fail_layer = step == 0 ? hi : -1;
		z.short_layer = step == 1 ? lo : -1;
		struct dp_v4_batch_item it = {.seq = s, .tokens = tok + 8 * step, .n_tokens = 8};
		cr_assert_eq(dp_engram_prefetch(f.b.s, &it, 1), 0);
		for (int sl = 0; sl < 2; sl++) {
			int layer = dp_engram_hash_layer_id(f.b.h, sl);
			int r = dp_engram_store_rows(f.b.s, layer, &it, 1, &rows);
			if (layer == z.fail_layer || layer == z.short_layer) {
				cr_expect_eq(r, -EIO, "step %d layer %d: %d", step, layer, r);
				continue;
			}
			cr_assert_eq(r, 0, "step %d layer %d: %s", step, layer, strerror(-r));
			direct_rows(&f, f.t[DP_ENGRAM_DTYPE_BF16], sl, &it, 1, want);
			cr_expect_eq(memcmp(rows, want, bytes), 0, "step %d layer %d's rows", step,
			             layer);
		}
		/* the forward asks the same rows: it fails with the read's error, or runs */
		int r = dp_v4_forward(f.b.m, &it, 1, logits);
		if (step < 2)
			cr_expect_eq(r, -EIO, "step %d: the forward fails", step);
		else
			cr_expect_eq(r, 0, "the step after is served");
		if (r < 0) { /* its state no longer matches: start the sequence again */
			dp_v4_seq_free(s);
			cr_assert_eq(dp_v4_seq_new(f.b.m, &s), 0);
		}
	}
	free(want);
	free(logits);
	et_bundle_close_store(&f.b);
	lazy_close(&z);
	dp_v4_seq_free(s);
	fixture_close(&f);
}
