/* SPDX-License-Identifier: MIT */
/*
 * tests/tok/tok-test.h — reading the committed parity files (written by
 * tests/tok/gen_parity.py, decompressed by meson into DP_TOK_DATA).
 */
#ifndef DP_TESTS_TOK_TEST_H
#define DP_TESTS_TOK_TEST_H

#include <criterion/criterion.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tok/tok.h"

struct tt_file {
	uint8_t *data;
	size_t len, pos;
};

static inline struct tt_file tt_read_path(const char *path)
{
	struct tt_file f = { 0 };
	FILE *fp = fopen(path, "rb");
	cr_assert(fp, "cannot open %s", path);
	fseek(fp, 0, SEEK_END);
	f.len = (size_t)ftell(fp);
	fseek(fp, 0, SEEK_SET);
	f.data = malloc(f.len + 1);
	cr_assert(f.data && fread(f.data, 1, f.len, fp) == f.len, "cannot read %s", path);
	fclose(fp);
	return f;
}

static inline struct tt_file tt_read(const char *name)
{
	const char *dir = getenv("DP_TOK_DATA");
	char path[4096];

	cr_assert(dir, "DP_TOK_DATA is not set (meson test sets it)");
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	return tt_read_path(path);
}

static inline uint32_t tt_u32(struct tt_file *f)
{
	uint32_t v;
	cr_assert(f->pos + 4 <= f->len, "parity file truncated");
	memcpy(&v, f->data + f->pos, 4);
	f->pos += 4;
	return v;
}

static inline const uint8_t *tt_bytes(struct tt_file *f, size_t n)
{
	cr_assert(f->pos + n <= f->len, "parity file truncated");
	const uint8_t *p = f->data + f->pos;
	f->pos += n;
	return p;
}

static inline uint32_t tt_header(struct tt_file *f, const char magic[8])
{
	cr_assert(f->len >= 16 && memcmp(f->data, magic, 8) == 0, "not a %.8s file", magic);
	f->pos = 8;
	cr_assert_eq(tt_u32(f), 1, "version");
	return tt_u32(f);
}

static inline struct dp_bpe *tt_load(const char *name)
{
	const char *dir = getenv("DP_TOK_DATA");
	char path[4096], err[256] = "";
	struct dp_bpe *b = NULL;

	cr_assert(dir, "DP_TOK_DATA is not set (meson test sets it)");
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	int r = dp_bpe_load(path, &b, err, sizeof(err));
	cr_assert_eq(r, 0, "loading %s: %d %s", path, r, err);
	return b;
}

/* One document of a parity file. */
struct tt_doc {
	uint32_t kind;
	const uint8_t *text;
	size_t len;
	int32_t *ids; /* owned by the caller after tt_next_doc */
	size_t n_ids;
};

static inline void tt_next_doc(struct tt_file *f, struct tt_doc *d)
{
	d->kind = tt_u32(f);
	d->len = tt_u32(f);
	d->text = tt_bytes(f, d->len);
	d->n_ids = tt_u32(f);
	d->ids = malloc((d->n_ids + 1) * sizeof(*d->ids));
	const uint8_t *p = tt_bytes(f, 4 * d->n_ids);
	memcpy(d->ids, p, 4 * d->n_ids);
}

static const char *const tt_kinds[] = { "prose", "code", "i18n", "digits", "space", "marks",
	                                "emoji", "added", "invalid", "soup", "long" };

#endif /* DP_TESTS_TOK_TEST_H */
