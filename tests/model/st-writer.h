/* SPDX-License-Identifier: MIT */
/*
 * tests/model/st-writer.h — write small safetensors files and model directories for the model/
 * tests, in temporary directories. Test-only helpers (static, header-only).
 */
#ifndef DP_TESTS_MODEL_ST_WRITER_H
#define DP_TESTS_MODEL_ST_WRITER_H

#include <errno.h>
#include <ftw.h>
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct stw_tensor {
	const char *name;
	const char *dtype; /* "F32", "BF16", ... as written in the header */
	int ndim;
	int64_t shape[8];
	const void *data; /* NULL: zeros */
	size_t bytes;     /* bytes of data written for it */
};

/* Write raw bytes to path. Returns 0 or -errno. */
static inline int stw_write_bytes(const char *path, const void *p, size_t n)
{
	FILE *f = fopen(path, "wb");
	int r = 0;

	if (!f)
		return -errno;
	if (n && fwrite(p, 1, n, f) != n)
		r = -EIO;
	if (fclose(f))
		r = -EIO;
	return r;
}

/* A file with the given header text (length field = its length, unless hlen_override >= 0) and
 * data section. */
static inline int stw_write_raw(const char *path, const char *header, long long hlen_override,
                                const void *data, size_t data_len)
{
	size_t h = strlen(header);
	uint64_t n = hlen_override >= 0 ? (uint64_t)hlen_override : h;
	unsigned char *buf = malloc(8 + h + data_len + 1);
	int r;

	if (!buf)
		return -ENOMEM;
	memcpy(buf, &n, 8);
	memcpy(buf + 8, header, h);
	if (data_len)
		memcpy(buf + 8 + h, data, data_len);
	r = stw_write_bytes(path, buf, 8 + h + data_len);
	free(buf);
	return r;
}

/* A well-formed file: tensors laid out back to back in the given order, header padded with
 * spaces to a multiple of 8 (as the reference writer does). metadata: extra "__metadata__"
 * object text or NULL. */
static inline int stw_write(const char *path, const struct stw_tensor *t, size_t n,
                            const char *metadata)
{
	json_t *root = json_object();
	size_t off = 0, total = 0;
	int r;

	if (metadata)
		json_object_set_new(root, "__metadata__", json_loads(metadata, 0, NULL));
	for (size_t i = 0; i < n; i++) {
		json_t *e = json_object(), *shape = json_array();

		for (int d = 0; d < t[i].ndim; d++)
			json_array_append_new(shape, json_integer(t[i].shape[d]));
		json_object_set_new(e, "dtype", json_string(t[i].dtype));
		json_object_set_new(e, "shape", shape);
		json_object_set_new(
		    e, "data_offsets",
		    json_pack("[II]", (json_int_t)off, (json_int_t)(off + t[i].bytes)));
		json_object_set_new(root, t[i].name, e);
		off += t[i].bytes;
	}
	total = off;
	char *text = json_dumps(root, JSON_COMPACT);
	json_decref(root);
	if (!text)
		return -ENOMEM;
	size_t h = strlen(text), padded = (h + 7) & ~(size_t)7;
	char *header = malloc(padded + 1);
	unsigned char *data = calloc(1, total ? total : 1);
	if (!header || !data) {
		free(text);
		free(header);
		free(data);
		return -ENOMEM;
	}
	memcpy(header, text, h);
	memset(header + h, ' ', padded - h);
	header[padded] = '\0';
	free(text);
	off = 0;
	for (size_t i = 0; i < n; i++) {
		if (t[i].data && t[i].bytes)
			memcpy(data + off, t[i].data, t[i].bytes);
		off += t[i].bytes;
	}
	r = stw_write_raw(path, header, -1, data, total);
	free(header);
	free(data);
	return r;
}

/* Write text to dir/name. */
static inline int stw_write_text(const char *dir, const char *name, const char *text)
{
	char path[8192];

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	return stw_write_bytes(path, text, strlen(text));
}

/* A fresh temporary directory (mkdtemp); path is written to buf. */
static inline const char *stw_tmpdir(char *buf, size_t len)
{
	const char *base = getenv("TMPDIR");

	snprintf(buf, len, "%s/dp_model_XXXXXX", base && *base ? base : "/tmp");
	return mkdtemp(buf);
}

static inline int stw_rm_one(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
	(void)sb;
	(void)flag;
	(void)ftw;
	return remove(p);
}

/* Remove a directory tree made by a test. */
static inline void stw_rm_rf(const char *dir)
{
	nftw(dir, stw_rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

#endif /* DP_TESTS_MODEL_ST_WRITER_H */
