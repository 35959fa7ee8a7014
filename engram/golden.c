/* SPDX-License-Identifier: MIT */
/*
 * engram/golden.c — compare a golden-vector file with what engram/hash.c computes.
 */
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/err.h"
#include "engram/engram-internal.h"
#include "engram/engram.h"

const char *dp_engram_check_kind_name(enum dp_engram_check_kind kind)
{
	static const char *const names[DP_ENGRAM_CHECK_KIND_MAX] = {
	    [DP_ENGRAM_CHECK_MULTIPLIER] = "multiplier",
	    [DP_ENGRAM_CHECK_TABLE_SIZE] = "table size",
	    [DP_ENGRAM_CHECK_HASH] = "hash",
	};

	if ((unsigned)kind >= DP_ENGRAM_CHECK_KIND_MAX)
		return NULL;
	return names[kind];
}

struct golden {
	const struct dp_engram_hash *h;
	struct dp_engram_check res;
	char *err;
	size_t err_len;
};

static void compare(struct golden *g, enum dp_engram_check_kind kind, int layer_id, int64_t row,
                    int64_t pos, int index, int64_t expected, int64_t got)
{
	g->res.n_checked++;
	if (expected == got)
		return;
	if (!g->res.n_mismatch++)
		g->res.first = (struct dp_engram_mismatch){
		    .kind = kind,
		    .layer_id = layer_id,
		    .row = row,
		    .position = pos,
		    .index = index,
		    .expected = expected,
		    .got = got,
		};
}

/* root[key] must be an object with exactly one member per layer, keyed by its id. */
static int layer_object(struct golden *g, const json_t *root, const char *key, const json_t **ret)
{
	const json_t *o = json_object_get(root, key);
	const char *k;
	const json_t *v;
	int n = dp_engram_hash_n_layers(g->h);

	if (!o) {
		dp_errf(g->err, g->err_len, "%s: missing", key);
		return -EINVAL;
	}
	if (!json_is_object(o)) {
		dp_errf(g->err, g->err_len, "%s: expected an object keyed by layer id, got %s", key,
		        dp_engram_json_kind(o));
		return -EINVAL;
	}
	json_object_foreach((json_t *)o, k, v)
	{
		char *end;
		long id = strtol(k, &end, 10);
		char canon[24];

		snprintf(canon, sizeof(canon), "%ld", id);
		if (!*k || *end || strcmp(canon, k) || id < 0 || id > DP_ENGRAM_LAYER_ID_MAX ||
		    dp_engram_hash_layer_slot(g->h, (int)id) < 0) {
			dp_errf(g->err, g->err_len, "%s[\"%s\"]: not one of layer_ids", key, k);
			return -EINVAL;
		}
	}
	for (int l = 0; l < n; l++) {
		char id[16];

		snprintf(id, sizeof(id), "%d", dp_engram_hash_layer_id(g->h, l));
		if (!json_object_get(o, id)) {
			dp_errf(g->err, g->err_len, "%s[\"%s\"]: missing", key, id);
			return -EINVAL;
		}
	}
	*ret = o;
	return 0;
}

/* An integer list of exactly n entries; where names it for messages. */
static int int_list(struct golden *g, const json_t *v, size_t n, const char *where)
{
	if (!json_is_array(v)) {
		dp_errf(g->err, g->err_len, "%s: expected a list, got %s", where,
		        dp_engram_json_kind(v));
		return -EINVAL;
	}
	if (json_array_size(v) != n) {
		dp_errf(g->err, g->err_len, "%s: has %zu entries, expected %zu", where,
		        json_array_size(v), n);
		return -EINVAL;
	}
	for (size_t i = 0; i < n; i++)
		if (!json_is_integer(json_array_get(v, i))) {
			dp_errf(g->err, g->err_len, "%s[%zu]: expected an integer, got %s", where,
			        i, dp_engram_json_kind(json_array_get(v, i)));
			return -EINVAL;
		}
	return 0;
}

static int check_tables(struct golden *g, const json_t *root)
{
	const json_t *mult, *sizes;
	int n_layers = dp_engram_hash_n_layers(g->h);
	int N = dp_engram_hash_max_ngram(g->h);
	int ncols = dp_engram_hash_n_columns(g->h);
	char where[64];
	int r;

	if ((r = layer_object(g, root, "multipliers", &mult)) < 0)
		return r;
	if ((r = layer_object(g, root, "head_table_sizes", &sizes)) < 0)
		return r;
	for (int l = 0; l < n_layers; l++) {
		int id = dp_engram_hash_layer_id(g->h, l);
		char key[16];
		const json_t *v;

		snprintf(key, sizeof(key), "%d", id);
		v = json_object_get(mult, key);
		snprintf(where, sizeof(where), "multipliers[\"%d\"]", id);
		if ((r = int_list(g, v, (size_t)N, where)) < 0)
			return r;
		v = json_object_get(sizes, key);
		snprintf(where, sizeof(where), "head_table_sizes[\"%d\"]", id);
		if ((r = int_list(g, v, (size_t)ncols, where)) < 0)
			return r;
	}
	for (int l = 0; l < n_layers; l++) {
		int id = dp_engram_hash_layer_id(g->h, l);
		const int64_t *m = dp_engram_hash_multipliers(g->h, l);
		const json_t *v;
		char key[16];

		snprintf(key, sizeof(key), "%d", id);
		v = json_object_get(mult, key);
		for (int k = 0; k < N; k++)
			compare(g, DP_ENGRAM_CHECK_MULTIPLIER, id, -1, -1, k,
			        json_integer_value(json_array_get(v, (size_t)k)), m[k]);
	}
	for (int l = 0; l < n_layers; l++) {
		int id = dp_engram_hash_layer_id(g->h, l);
		const int64_t *sz = dp_engram_hash_table_sizes(g->h, l);
		const json_t *v;
		char key[16];

		snprintf(key, sizeof(key), "%d", id);
		v = json_object_get(sizes, key);
		for (int c = 0; c < ncols; c++)
			compare(g, DP_ENGRAM_CHECK_TABLE_SIZE, id, -1, -1, c,
			        json_integer_value(json_array_get(v, (size_t)c)), sz[c]);
	}
	return 0;
}

/* input_ids: a non-empty list of equally long lists of raw ids inside the map. */
static int read_inputs(struct golden *g, const json_t *root, int64_t **ret_ids, size_t *ret_b,
                       size_t *ret_t)
{
	const json_t *in = json_object_get(root, "input_ids");
	size_t B, T;
	int64_t *ids, id;

	if (!in) {
		dp_errf(g->err, g->err_len, "input_ids: missing");
		return -EINVAL;
	}
	if (!json_is_array(in) || !json_array_size(in)) {
		dp_errf(g->err, g->err_len, "input_ids: expected a non-empty list, got %s",
		        json_is_array(in) ? "an empty list" : dp_engram_json_kind(in));
		return -EINVAL;
	}
	B = json_array_size(in);
	if (!json_is_array(json_array_get(in, 0))) {
		dp_errf(g->err, g->err_len, "input_ids[0]: expected a list, got %s",
		        dp_engram_json_kind(json_array_get(in, 0)));
		return -EINVAL;
	}
	T = json_array_size(json_array_get(in, 0));
	if (T > SIZE_MAX / sizeof(*ids) / B)
		return -ENOMEM;
	ids = malloc((B * T + 1) * sizeof(*ids));
	if (!ids)
		return -ENOMEM;
	for (size_t b = 0; b < B; b++) {
		char where[48];
		const json_t *row = json_array_get(in, b);

		snprintf(where, sizeof(where), "input_ids[%zu]", b);
		if (int_list(g, row, T, where) < 0) {
			free(ids);
			return -EINVAL;
		}
		for (size_t t = 0; t < T; t++) {
			/* raw ids; any negative one passes, as in the demo */
			id = json_integer_value(json_array_get(row, t));
			if (id >= dp_engram_hash_map_size(g->h)) {
				dp_errf(g->err, g->err_len,
				        "input_ids[%zu][%zu]: %" PRId64
				        " is outside the compression map (%" PRId64 " entries)",
				        b, t, id, dp_engram_hash_map_size(g->h));
				free(ids);
				return -EINVAL;
			}
			ids[b * T + t] = id;
		}
	}
	*ret_ids = ids;
	*ret_b = B;
	*ret_t = T;
	return 0;
}

static int check_hashes(struct golden *g, const json_t *root)
{
	const json_t *hashes;
	int n_layers = dp_engram_hash_n_layers(g->h);
	int ncols = dp_engram_hash_n_columns(g->h);
	int64_t *ids = NULL, *rows = NULL;
	size_t B = 0, T = 0;
	int r;

	if ((r = layer_object(g, root, "hashes", &hashes)) < 0)
		return r;
	if ((r = read_inputs(g, root, &ids, &B, &T)) < 0)
		return r;
	/* shapes first, so a malformed file fails before any comparison counts */
	for (int l = 0; l < n_layers; l++) {
		int id = dp_engram_hash_layer_id(g->h, l);
		char key[16], where[96];
		const json_t *hl;

		snprintf(key, sizeof(key), "%d", id);
		hl = json_object_get(hashes, key);
		if (!json_is_array(hl) || json_array_size(hl) != B) {
			dp_errf(g->err, g->err_len,
			        "hashes[\"%d\"]: expected a list of %zu rows (as input_ids), "
			        "got %s",
			        id, B,
			        json_is_array(hl) ? "another count" : dp_engram_json_kind(hl));
			r = -EINVAL;
			goto out;
		}
		for (size_t b = 0; b < B; b++) {
			const json_t *hb = json_array_get(hl, b);

			if (!json_is_array(hb) || json_array_size(hb) != T) {
				dp_errf(g->err, g->err_len,
				        "hashes[\"%d\"][%zu]: expected a list of %zu positions "
				        "(as input_ids[%zu]), got %s",
				        id, b, T, b,
				        json_is_array(hb) ? "another count"
				                          : dp_engram_json_kind(hb));
				r = -EINVAL;
				goto out;
			}
			for (size_t t = 0; t < T; t++) {
				snprintf(where, sizeof(where), "hashes[\"%d\"][%zu][%zu]", id, b,
				         t);
				if ((r = int_list(g, json_array_get(hb, t), (size_t)ncols, where)) <
				    0)
					goto out;
			}
		}
	}
	rows = malloc(((size_t)n_layers * T * (size_t)ncols + 1) * sizeof(*rows));
	if (!rows) {
		r = -ENOMEM;
		goto out;
	}
	for (size_t b = 0; b < B; b++) {
		r = dp_engram_hash_sequence(g->h, NULL, ids + b * T, T, rows);
		if (r < 0)
			goto out;
		for (int l = 0; l < n_layers; l++) {
			int id = dp_engram_hash_layer_id(g->h, l);
			char key[16];
			const json_t *hb;

			snprintf(key, sizeof(key), "%d", id);
			hb = json_array_get(json_object_get(hashes, key), b);
			for (size_t t = 0; t < T; t++) {
				const json_t *ht = json_array_get(hb, t);
				const int64_t *got = rows + ((size_t)l * T + t) * (size_t)ncols;

				for (int c = 0; c < ncols; c++)
					compare(g, DP_ENGRAM_CHECK_HASH, id, (int64_t)b, (int64_t)t,
					        c,
					        json_integer_value(json_array_get(ht, (size_t)c)),
					        got[c]);
			}
		}
	}
	r = 0;
out:
	free(ids);
	free(rows);
	return r;
}

int dp_engram_golden_check(const char *json_text, size_t len, struct dp_engram_check *ret,
                           char *err, size_t err_len)
{
	struct dp_engram_config c;
	struct dp_engram_hash *h = NULL;
	struct golden g = {.err = err, .err_len = err_len};
	json_t *root;
	int r;

	if (!ret || (!json_text && len))
		return -EINVAL;
	r = dp_engram_json_parse(json_text, len, &root, err, err_len);
	if (r < 0)
		return r;
	r = dp_engram_config_from_json(root, &c, err, err_len);
	if (r < 0)
		goto out_json;
	r = dp_engram_hash_new(&c, &h);
	dp_engram_config_fini(&c);
	if (r < 0)
		goto out_json;
	g.h = h;
	r = check_tables(&g, root);
	if (r == 0)
		r = check_hashes(&g, root);
	if (r == 0)
		*ret = g.res;
	dp_engram_hash_free(h);
out_json:
	json_decref(root);
	return r;
}

int dp_engram_golden_check_file(const char *path, struct dp_engram_check *ret, char *err,
                                size_t err_len)
{
	char *buf;
	size_t len;
	int r;

	if (!path || !ret)
		return -EINVAL;
	r = dp_engram_read_file(path, &buf, &len, err, err_len);
	if (r < 0)
		return r;
	r = dp_engram_golden_check(buf, len, ret, err, err_len);
	free(buf);
	if (r == -EINVAL)
		dp_err_prefix(err, err_len, path);
	return r;
}
