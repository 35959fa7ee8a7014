/* SPDX-License-Identifier: MIT */
/*
 * engram/config.c — the Engram config: checks, the JSON reader, file loading.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/err.h"
#include "engram/engram-internal.h"
#include "engram/engram.h"

/* ---- checks --------------------------------------------------------------------- */

#define CHECK_RANGE(name, v, lo, hi)                                                               \
	do {                                                                                       \
		if ((int64_t)(v) < (int64_t)(lo) || (int64_t)(v) > (int64_t)(hi)) {                \
			dp_errf(err, err_len,                                                      \
			        "%s: %" PRId64 " is outside [%" PRId64 ", %" PRId64 "]", name,     \
			        (int64_t)(v), (int64_t)(lo), (int64_t)(hi));                       \
			return -EINVAL;                                                            \
		}                                                                                  \
	} while (0)

int dp_engram_config_check(const struct dp_engram_config *c, char *err, size_t err_len)
{
	if (!c) {
		dp_errf(err, err_len, "no config");
		return -EINVAL;
	}
	CHECK_RANGE("layer_ids: count", c->n_layers, 1, DP_ENGRAM_LAYERS_MAX);
	CHECK_RANGE("max_ngram_size", c->max_ngram_size, 2, DP_ENGRAM_NGRAM_MAX);
	CHECK_RANGE("n_head_per_ngram", c->n_heads, 1, DP_ENGRAM_HEADS_MAX);
	CHECK_RANGE("compressed_vocab_size", c->compressed_vocab_size, 1, INT64_MAX);
	CHECK_RANGE("compression_map: entries", c->map_size, 1, DP_ENGRAM_VOCAB_MAX);
	if (!c->layer_ids || !c->vocab_size || !c->compression_map) {
		dp_errf(err, err_len, "%s: missing",
		        !c->layer_ids    ? "layer_ids"
		        : !c->vocab_size ? "engram_vocab_size"
		                         : "compression_map");
		return -EINVAL;
	}
	for (int i = 0; i < c->n_layers; i++) {
		if (c->layer_ids[i] < 0 || c->layer_ids[i] > DP_ENGRAM_LAYER_ID_MAX) {
			dp_errf(err, err_len, "layer_ids[%d]: %d is outside [0, %d]", i,
			        c->layer_ids[i], DP_ENGRAM_LAYER_ID_MAX);
			return -EINVAL;
		}
		for (int j = 0; j < i; j++)
			if (c->layer_ids[j] == c->layer_ids[i]) {
				dp_errf(err, err_len, "layer_ids[%d]: %d repeats layer_ids[%d]", i,
				        c->layer_ids[i], j);
				return -EINVAL;
			}
	}
	for (int i = 0; i < c->max_ngram_size - 1; i++)
		if (c->vocab_size[i] < 1 || c->vocab_size[i] > DP_ENGRAM_TABLE_MAX) {
			dp_errf(err, err_len,
			        "engram_vocab_size[%d]: %" PRId64 " is outside [1, %lld]", i,
			        c->vocab_size[i], DP_ENGRAM_TABLE_MAX);
			return -EINVAL;
		}
	for (int64_t i = 0; i < c->map_size; i++)
		if (c->compression_map[i] < 0 ||
		    c->compression_map[i] >= c->compressed_vocab_size) {
			dp_errf(err, err_len,
			        "compression_map[%" PRId64 "]: %" PRId64
			        " is outside [0, compressed_vocab_size %" PRId64 ")",
			        i, c->compression_map[i], c->compressed_vocab_size);
			return -EINVAL;
		}
	if (c->pad_id < 0 || c->pad_id >= c->map_size) {
		dp_errf(err, err_len,
		        "pad_id: %" PRId64 " is outside the compression map [0, %" PRId64 ")",
		        c->pad_id, c->map_size);
		return -EINVAL;
	}
	return 0;
}

void dp_engram_config_fini(struct dp_engram_config *c)
{
	if (!c)
		return;
	free(c->layer_ids);
	free(c->vocab_size);
	free(c->compression_map);
	memset(c, 0, sizeof(*c));
}

/* ---- JSON ---------------------------------------------------------------------------- */

const char *dp_engram_json_kind(const json_t *v)
{
	switch (v ? json_typeof(v) : JSON_NULL) {
	case JSON_OBJECT:
		return "an object";
	case JSON_ARRAY:
		return "a list";
	case JSON_STRING:
		return "a string";
	case JSON_INTEGER:
		return "an integer";
	case JSON_REAL:
		return "a number with a fraction or exponent";
	case JSON_TRUE:
	case JSON_FALSE:
		return "a boolean";
	case JSON_NULL:
	default:
		return "null";
	}
}

int dp_engram_json_parse(const char *text, size_t len, json_t **ret_root, char *err, size_t err_len)
{
	json_error_t je;
	json_t *root;

	if (!text && len)
		return -EINVAL;
	root = json_loadb(text ? text : "", len, JSON_REJECT_DUPLICATES, &je);
	if (!root) {
		if (json_error_code(&je) == json_error_out_of_memory)
			return -ENOMEM;
		dp_errf(err, err_len, "invalid JSON at line %d, column %d: %s", je.line, je.column,
		        je.text);
		return -EINVAL;
	}
	if (!json_is_object(root)) {
		dp_errf(err, err_len, "the top level is %s, not an object",
		        dp_engram_json_kind(root));
		json_decref(root);
		return -EINVAL;
	}
	*ret_root = root;
	return 0;
}

/* An integer member in [lo, hi]. */
static int get_int(const json_t *root, const char *key, int64_t lo, int64_t hi, int64_t *ret,
                   char *err, size_t err_len)
{
	const json_t *v = json_object_get(root, key);
	int64_t x;

	if (!v) {
		dp_errf(err, err_len, "%s: missing", key);
		return -EINVAL;
	}
	if (!json_is_integer(v)) {
		dp_errf(err, err_len, "%s: expected an integer, got %s", key,
		        dp_engram_json_kind(v));
		return -EINVAL;
	}
	x = json_integer_value(v);
	if (x < lo || x > hi) {
		dp_errf(err, err_len, "%s: %" PRId64 " is outside [%" PRId64 ", %" PRId64 "]", key,
		        x, lo, hi);
		return -EINVAL;
	}
	*ret = x;
	return 0;
}

/* A list member of integers in [lo, hi], with max_n entries at most (want >= 0: exactly). */
static int get_int_list(const json_t *root, const char *key, int64_t want, int64_t max_n,
                        int64_t lo, int64_t hi, int64_t **ret, int64_t *ret_n, char *err,
                        size_t err_len)
{
	const json_t *v = json_object_get(root, key);
	int64_t n, *out;

	if (!v) {
		dp_errf(err, err_len, "%s: missing", key);
		return -EINVAL;
	}
	if (!json_is_array(v)) {
		dp_errf(err, err_len, "%s: expected a list, got %s", key, dp_engram_json_kind(v));
		return -EINVAL;
	}
	n = (int64_t)json_array_size(v);
	if (want >= 0 && n != want) {
		dp_errf(err, err_len, "%s: has %" PRId64 " entries, expected %" PRId64, key, n,
		        want);
		return -EINVAL;
	}
	if (n < 1 || n > max_n) {
		dp_errf(err, err_len, "%s: has %" PRId64 " entries, expected 1 to %" PRId64, key, n,
		        max_n);
		return -EINVAL;
	}
	out = malloc((size_t)n * sizeof(*out));
	if (!out)
		return -ENOMEM;
	for (int64_t i = 0; i < n; i++) {
		const json_t *e = json_array_get(v, (size_t)i);

		if (!json_is_integer(e)) {
			dp_errf(err, err_len, "%s[%" PRId64 "]: expected an integer, got %s", key,
			        i, dp_engram_json_kind(e));
			free(out);
			return -EINVAL;
		}
		out[i] = json_integer_value(e);
		if (out[i] < lo || out[i] > hi) {
			dp_errf(err, err_len,
			        "%s[%" PRId64 "]: %" PRId64 " is outside [%" PRId64 ", %" PRId64
			        "]",
			        key, i, out[i], lo, hi);
			free(out);
			return -EINVAL;
		}
	}
	*ret = out;
	*ret_n = n;
	return 0;
}

int dp_engram_config_from_json(const json_t *root, struct dp_engram_config *ret, char *err,
                               size_t err_len)
{
	struct dp_engram_config c = {0};
	int64_t v, n_layers, *layers = NULL;
	int r;

	if ((r = get_int(root, "max_ngram_size", 2, DP_ENGRAM_NGRAM_MAX, &v, err, err_len)) < 0)
		return r;
	c.max_ngram_size = (int)v;
	if ((r = get_int(root, "n_head_per_ngram", 1, DP_ENGRAM_HEADS_MAX, &v, err, err_len)) < 0)
		return r;
	c.n_heads = (int)v;
	if ((r = get_int(root, "compressed_vocab_size", 1, INT64_MAX, &c.compressed_vocab_size, err,
	                 err_len)) < 0)
		return r;
	if ((r = get_int(root, "seed", 0, INT64_MAX, &v, err, err_len)) < 0)
		return r;
	c.seed = (uint64_t)v;
	if ((r = get_int(root, "pad_id", 0, INT64_MAX, &c.pad_id, err, err_len)) < 0)
		return r;

	r = get_int_list(root, "layer_ids", -1, DP_ENGRAM_LAYERS_MAX, 0, DP_ENGRAM_LAYER_ID_MAX,
	                 &layers, &n_layers, err, err_len);
	if (r < 0)
		goto fail;
	c.n_layers = (int)n_layers;
	c.layer_ids = malloc((size_t)n_layers * sizeof(*c.layer_ids));
	if (!c.layer_ids) {
		r = -ENOMEM;
		goto fail;
	}
	for (int64_t i = 0; i < n_layers; i++)
		c.layer_ids[i] = (int)layers[i];

	r = get_int_list(root, "engram_vocab_size", c.max_ngram_size - 1, DP_ENGRAM_NGRAM_MAX, 1,
	                 DP_ENGRAM_TABLE_MAX, &c.vocab_size, &v, err, err_len);
	if (r < 0)
		goto fail;
	r = get_int_list(root, "compression_map", -1, DP_ENGRAM_VOCAB_MAX, 0,
	                 c.compressed_vocab_size - 1, &c.compression_map, &c.map_size, err,
	                 err_len);
	if (r < 0)
		goto fail;
	if (json_object_get(root, "vocab_size")) {
		if ((r = get_int(root, "vocab_size", c.map_size, c.map_size, &v, err, err_len)) < 0)
			goto fail;
	}
	r = dp_engram_config_check(&c, err, err_len);
	if (r < 0)
		goto fail;
	free(layers);
	*ret = c;
	return 0;
fail:
	free(layers);
	dp_engram_config_fini(&c);
	return r;
}

int dp_engram_config_parse(const char *json_text, size_t len, struct dp_engram_config *ret,
                           char *err, size_t err_len)
{
	json_t *root;
	int r;

	if (!ret || (!json_text && len))
		return -EINVAL;
	r = dp_engram_json_parse(json_text, len, &root, err, err_len);
	if (r < 0)
		return r;
	r = dp_engram_config_from_json(root, ret, err, err_len);
	json_decref(root);
	return r;
}

/* ---- files ----------------------------------------------------------------------------- */

int dp_engram_read_file(const char *path, char **ret_buf, size_t *ret_len, char *err,
                        size_t err_len)
{
	struct stat stbuf;
	size_t len = 0, cap;
	char *buf;
	int fd, r;

	if (!path || !ret_buf || !ret_len)
		return -EINVAL;
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		r = -errno;
		dp_errf(err, err_len, "%s: %s", path, strerror(-r));
		return r;
	}
	if (fstat(fd, &stbuf) < 0) {
		r = -errno;
		goto fail_fd;
	}
	if (S_ISDIR(stbuf.st_mode)) {
		r = -EISDIR;
		goto fail_fd;
	}
	if (stbuf.st_size > DP_ENGRAM_FILE_MAX) {
		r = -EFBIG;
		dp_errf(err, err_len, "%s: larger than %lld bytes", path, DP_ENGRAM_FILE_MAX);
		close(fd);
		return r;
	}
	cap = stbuf.st_size > 0 ? (size_t)stbuf.st_size + 1 : 4096;
	buf = malloc(cap);
	if (!buf) {
		close(fd);
		return -ENOMEM;
	}
	for (;;) {
		ssize_t got;

		if (len + 1 >= cap) {
			char *nb;

			if (cap > (size_t)DP_ENGRAM_FILE_MAX) {
				free(buf);
				close(fd);
				dp_errf(err, err_len, "%s: larger than %lld bytes", path,
				        DP_ENGRAM_FILE_MAX);
				return -EFBIG;
			}
			nb = realloc(buf, cap * 2);
			if (!nb) {
				free(buf);
				close(fd);
				return -ENOMEM;
			}
			buf = nb;
			cap *= 2;
		}
		got = read(fd, buf + len, cap - 1 - len);
		if (got < 0) {
			if (errno == EINTR)
				continue;
			r = -errno;
			free(buf);
			goto fail_fd;
		}
		if (got == 0)
			break;
		len += (size_t)got;
	}
	close(fd);
	buf[len] = '\0';
	*ret_buf = buf;
	*ret_len = len;
	return 0;
fail_fd:
	close(fd);
	dp_errf(err, err_len, "%s: %s", path, strerror(-r));
	return r;
}

int dp_engram_config_load(const char *path, struct dp_engram_config *ret, char *err, size_t err_len)
{
	char *buf;
	size_t len;
	int r;

	if (!path || !ret)
		return -EINVAL;
	r = dp_engram_read_file(path, &buf, &len, err, err_len);
	if (r < 0)
		return r;
	r = dp_engram_config_parse(buf, len, ret, err, err_len);
	free(buf);
	if (r == -EINVAL)
		dp_err_prefix(err, err_len, path);
	return r;
}
