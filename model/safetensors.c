/* SPDX-License-Identifier: MIT */
/*
 * model/safetensors.c — map safetensors files, validate their headers, look tensors up.
 *
 * Layout of a struct dp_st: the mapped files, and one flat array of entries (all files) sorted
 * by name, so lookup is a binary search and a name in two shards shows up as two neighbours.
 */
#include "model/safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/dtype.h"
#include "base/err.h"
#include "base/macros.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors data is little-endian; this loader assumes a little-endian host"
#endif

struct st_file {
	char *path;       /* as opened: dir/name */
	const char *base; /* the name within path (what an index refers to) */
	void *map;
	size_t size;     /* bytes mapped: the whole file */
	size_t data_off; /* 8 + header length */
	size_t data_len; /* size - data_off */
};

struct st_entry {
	char *name;
	size_t file;
	enum dp_st_dtype dtype;
	int ndim;
	int64_t shape[DP_ST_NDIM_MAX];
	uint64_t numel;
	size_t begin; /* within the data section */
	size_t bytes;
};

struct dp_st {
	struct st_file *files;
	size_t n_files;
	struct st_entry *entries;
	size_t n, cap;
};

struct errbuf {
	char *buf;
	size_t len;
};

__attribute__((format(printf, 3, 4))) static int fail(struct errbuf *e, int r, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	dp_verrf(e->buf, e->len, fmt, ap);
	va_end(ap);
	return r;
}

/* ---- dtypes ------------------------------------------------------------- */

static const struct {
	const char *name;
	size_t size;
} dtypes[DP_ST_DTYPE_MAX] = {
    [DP_ST_F32] = {"F32", 4}, [DP_ST_BF16] = {"BF16", 2}, [DP_ST_F16] = {"F16", 2},
    [DP_ST_I64] = {"I64", 8}, [DP_ST_I32] = {"I32", 4}, [DP_ST_F8_E4M3] = {"F8_E4M3", 1},
    [DP_ST_F8_E8M0] = {"F8_E8M0", 1}, [DP_ST_I8] = {"I8", 1},
};

/* Dtypes of the format we recognise but do not read. */
static const char *const other_dtypes[] = {
    "F64", "F8_E5M2", "U8", "I16", "U16", "U32", "U64", "BOOL", "F4", "F6_E2M3", "F6_E3M2", "C64",
};

const char *dp_st_dtype_name(enum dp_st_dtype dtype)
{
	return (unsigned)dtype < DP_ST_DTYPE_MAX ? dtypes[dtype].name : NULL;
}

size_t dp_st_dtype_size(enum dp_st_dtype dtype)
{
	return (unsigned)dtype < DP_ST_DTYPE_MAX ? dtypes[dtype].size : 0;
}

/* Map a dtype string to ours, or fail with the reason. */
static int parse_dtype(const char *s, const char *file, const char *tensor, enum dp_st_dtype *out,
                       struct errbuf *e)
{
	for (int i = 0; i < DP_ST_DTYPE_MAX; i++)
		if (strcmp(s, dtypes[i].name) == 0) {
			*out = (enum dp_st_dtype)i;
			return 0;
		}
	for (size_t i = 0; i < DP_ARRAY_SIZE(other_dtypes); i++)
		if (strcmp(s, other_dtypes[i]) == 0)
			return fail(e, -ENOTSUP,
			            "%s: tensor '%s': dtype %s is not supported (F32, "
			            "BF16, F16; I64/I32 for index tables; F8_E4M3, F8_E8M0, "
			            "I8 for quantized weights)",
			            file, tensor, s);
	return fail(e, -EINVAL, "%s: tensor '%s': unknown dtype \"%.20s\"", file, tensor, s);
}

/* ---- one file ----------------------------------------------------------- */

static int add_entry(struct dp_st *st, struct st_entry *en)
{
	if (st->n == st->cap) {
		size_t cap = st->cap ? 2 * st->cap : 64;
		struct st_entry *p = realloc(st->entries, cap * sizeof(*p));

		if (!p)
			return -ENOMEM;
		st->entries = p;
		st->cap = cap;
	}
	st->entries[st->n++] = *en;
	return 0;
}

/* An integer >= 0 from a JSON value, or -1. */
static long long nonneg(const json_t *v)
{
	if (!json_is_integer(v) || json_integer_value(v) < 0)
		return -1;
	return json_integer_value(v);
}

/* Parse one header entry (name -> object) into *en. */
static int parse_entry(const struct st_file *f, const char *name, const json_t *o,
                       struct st_entry *en, struct errbuf *e)
{
	const char *path = f->path;
	int r;

	memset(en, 0, sizeof(*en));
	if (!json_is_object(o))
		return fail(e, -EINVAL, "%s: tensor '%s': header entry is not an object", path,
		            name);
	json_t *dt = json_object_get(o, "dtype");
	json_t *shape = json_object_get(o, "shape");
	json_t *offs = json_object_get(o, "data_offsets");
	if (!json_is_string(dt))
		return fail(e, -EINVAL, "%s: tensor '%s': \"dtype\" missing or not a string", path,
		            name);
	if ((r = parse_dtype(json_string_value(dt), path, name, &en->dtype, e)))
		return r;
	if (!json_is_array(shape))
		return fail(e, -EINVAL, "%s: tensor '%s': \"shape\" missing or not a list", path,
		            name);
	if (json_array_size(shape) > DP_ST_NDIM_MAX)
		return fail(e, -EINVAL, "%s: tensor '%s': %zu dimensions, at most %d supported",
		            path, name, json_array_size(shape), DP_ST_NDIM_MAX);
	en->ndim = (int)json_array_size(shape);
	en->numel = 1;
	for (int i = 0; i < en->ndim; i++) {
		long long d = nonneg(json_array_get(shape, (size_t)i));

		if (d < 0)
			return fail(e, -EINVAL, "%s: tensor '%s': shape[%d] is not an integer >= 0",
			            path, name, i);
		en->shape[i] = d;
		if (__builtin_mul_overflow(en->numel, (uint64_t)d, &en->numel))
			return fail(e, -EINVAL, "%s: tensor '%s': shape overflows 64 bits", path,
			            name);
	}
	uint64_t want;
	if (__builtin_mul_overflow(en->numel, (uint64_t)dtypes[en->dtype].size, &want))
		return fail(e, -EINVAL, "%s: tensor '%s': byte size overflows 64 bits", path, name);

	if (!json_is_array(offs) || json_array_size(offs) != 2)
		return fail(e, -EINVAL,
		            "%s: tensor '%s': \"data_offsets\" is not a list [begin, end]", path,
		            name);
	long long b = nonneg(json_array_get(offs, 0)), end = nonneg(json_array_get(offs, 1));
	if (b < 0 || end < 0)
		return fail(e, -EINVAL, "%s: tensor '%s': data_offsets are not integers >= 0", path,
		            name);
	if (b > end)
		return fail(e, -EINVAL,
		            "%s: tensor '%s': data_offsets [%lld, %lld] end before they begin",
		            path, name, b, end);
	if ((unsigned long long)end > f->data_len)
		return fail(e, -EINVAL,
		            "%s: tensor '%s': data_offsets [%lld, %lld] run past the "
		            "data section (%zu bytes; file truncated?)",
		            path, name, b, end, f->data_len);
	if ((uint64_t)(end - b) != want)
		return fail(e, -EINVAL,
		            "%s: tensor '%s': %lld bytes of data, but shape and dtype %s need %llu",
		            path, name, end - b, dtypes[en->dtype].name, (unsigned long long)want);
	en->begin = (size_t)b;
	en->bytes = (size_t)want;
	return 0;
}

static int cmp_begin(const void *a, const void *b)
{
	const struct st_entry *x = *(const struct st_entry *const *)a;
	const struct st_entry *y = *(const struct st_entry *const *)b;

	return x->begin < y->begin ? -1 : x->begin > y->begin;
}

/* No two non-empty tensors of one file may share bytes. */
static int check_overlaps(struct dp_st *st, size_t first, const char *path, struct errbuf *e)
{
	size_t n = st->n - first, m = 0;
	const struct st_entry **v = calloc(n ? n : 1, sizeof(*v));

	if (!v)
		return -ENOMEM;
	for (size_t i = first; i < st->n; i++)
		if (st->entries[i].bytes)
			v[m++] = &st->entries[i];
	qsort(v, m, sizeof(*v), cmp_begin);
	for (size_t i = 1; i < m; i++)
		if (v[i]->begin < v[i - 1]->begin + v[i - 1]->bytes) {
			int r = fail(e, -EINVAL,
			             "%s: tensors '%s' and '%s' overlap in the data section", path,
			             v[i - 1]->name, v[i]->name);
			free(v);
			return r;
		}
	free(v);
	return 0;
}

static int parse_header(struct dp_st *st, size_t fi, struct errbuf *e)
{
	const struct st_file *f = &st->files[fi];
	size_t first = st->n;
	json_error_t jerr;
	const char *key;
	json_t *root, *v;
	int r = 0;

	root = json_loadb((const char *)f->map + 8, f->data_off - 8, JSON_REJECT_DUPLICATES, &jerr);
	if (!root)
		return fail(e, -EINVAL, "%s: header is not valid JSON (line %d, column %d): %s",
		            f->path, jerr.line, jerr.column, jerr.text);
	if (!json_is_object(root)) {
		json_decref(root);
		return fail(e, -EINVAL, "%s: header is not a JSON object", f->path);
	}
	json_object_foreach(root, key, v)
	{
		struct st_entry en;

		if (strcmp(key, "__metadata__") == 0) {
			if (!json_is_object(v)) {
				r = fail(e, -EINVAL, "%s: __metadata__ is not an object", f->path);
				break;
			}
			continue;
		}
		if ((r = parse_entry(f, key, v, &en, e)))
			break;
		en.file = fi;
		en.name = strdup(key);
		if (!en.name || (r = add_entry(st, &en))) {
			free(en.name);
			r = fail(e, -ENOMEM, "%s: out of memory", f->path);
			break;
		}
	}
	json_decref(root);
	if (!r)
		r = check_overlaps(st, first, f->path, e);
	return r;
}

/* Map the file at path (taking ownership of path) and read its header. */
static int add_file(struct dp_st *st, char *path, size_t base_off, struct errbuf *e)
{
	struct st_file *f;
	struct stat sb;
	uint64_t hlen;
	int fd, r;

	f = realloc(st->files, (st->n_files + 1) * sizeof(*f));
	if (!f) {
		free(path);
		return fail(e, -ENOMEM, "out of memory");
	}
	st->files = f;
	f = &st->files[st->n_files++];
	memset(f, 0, sizeof(*f));
	f->path = path;
	f->base = path + base_off;

	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		r = -errno;
		return fail(e, r, "%s: %s", path, strerror(-r));
	}
	if (fstat(fd, &sb) < 0) {
		r = -errno;
		close(fd);
		return fail(e, r, "%s: %s", path, strerror(-r));
	}
	if (!S_ISREG(sb.st_mode)) {
		close(fd);
		return fail(e, -EINVAL, "%s: not a regular file", path);
	}
	if (sb.st_size < 8) {
		close(fd);
		return fail(e, -EINVAL,
		            "%s: %lld bytes, too short for a safetensors file (8-byte "
		            "header length, header, data)",
		            path, (long long)sb.st_size);
	}
	if ((unsigned long long)sb.st_size > SIZE_MAX) {
		close(fd);
		return fail(e, -EFBIG, "%s: too large to map", path);
	}
	void *map = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
	r = -errno;
	close(fd);
	if (map == MAP_FAILED)
		return fail(e, r, "%s: mmap: %s", path, strerror(-r));
	f->map = map;
	f->size = (size_t)sb.st_size;
	(void)madvise(map, f->size, MADV_DONTDUMP);

	memcpy(&hlen, map, 8);
	if (hlen > DP_ST_HEADER_MAX)
		return fail(e, -EINVAL,
		            "%s: header length %llu exceeds the %u-byte limit (not a "
		            "safetensors file?)",
		            path, (unsigned long long)hlen, DP_ST_HEADER_MAX);
	if (hlen > f->size - 8)
		return fail(e, -EINVAL,
		            "%s: header length %llu runs past the end of the file (%zu "
		            "bytes; truncated?)",
		            path, (unsigned long long)hlen, f->size);
	f->data_off = 8 + (size_t)hlen;
	f->data_len = f->size - f->data_off;
	return parse_header(st, st->n_files - 1, e);
}

static int cmp_name(const void *a, const void *b)
{
	return strcmp(((const struct st_entry *)a)->name, ((const struct st_entry *)b)->name);
}

/* Sort all entries by name; a name twice is an error naming both files. */
static int sort_and_dedup(struct dp_st *st, struct errbuf *e)
{
	qsort(st->entries, st->n, sizeof(*st->entries), cmp_name);
	for (size_t i = 1; i < st->n; i++)
		if (strcmp(st->entries[i].name, st->entries[i - 1].name) == 0)
			return fail(e, -EINVAL, "tensor '%s' appears in both %s and %s",
			            st->entries[i].name, st->files[st->entries[i - 1].file].path,
			            st->files[st->entries[i].file].path);
	return 0;
}

void dp_st_free(struct dp_st *st)
{
	if (!st)
		return;
	for (size_t i = 0; i < st->n_files; i++) {
		if (st->files[i].map)
			munmap(st->files[i].map, st->files[i].size);
		free(st->files[i].path);
	}
	for (size_t i = 0; i < st->n; i++)
		free(st->entries[i].name);
	free(st->files);
	free(st->entries);
	free(st);
}

int dp_st_open_file(const char *path, struct dp_st **ret, char *err, size_t err_len)
{
	struct errbuf e = {err, err_len};
	struct dp_st *st;
	char *p;
	int r;

	if (!path || !ret)
		return fail(&e, -EINVAL, "dp_st_open_file: NULL argument");
	st = calloc(1, sizeof(*st));
	p = strdup(path);
	if (!st || !p) {
		free(st);
		free(p);
		return fail(&e, -ENOMEM, "out of memory");
	}
	const char *slash = strrchr(p, '/');
	r = add_file(st, p, slash ? (size_t)(slash + 1 - p) : 0, &e);
	if (!r)
		r = sort_and_dedup(st, &e);
	if (r) {
		dp_st_free(st);
		return r;
	}
	*ret = st;
	return 0;
}

/* ---- sharded checkpoints ------------------------------------------------ */

static char *join(const char *dir, const char *name)
{
	size_t a = strlen(dir), b = strlen(name);
	char *p = malloc(a + b + 2);

	if (p) {
		memcpy(p, dir, a);
		p[a] = '/';
		memcpy(p + a + 1, name, b + 1);
	}
	return p;
}

static int read_small_file(const char *path, size_t max, char **ret, size_t *ret_len,
                           struct errbuf *e)
{
	struct stat sb;
	size_t got = 0;
	char *buf;
	int fd, r;

	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		r = -errno;
		return fail(e, r, "%s: %s", path, strerror(-r));
	}
	if (fstat(fd, &sb) < 0 || !S_ISREG(sb.st_mode) || (unsigned long long)sb.st_size > max) {
		close(fd);
		return fail(e, -EINVAL, "%s: not a regular file of at most %zu bytes", path, max);
	}
	buf = malloc((size_t)sb.st_size + 1);
	if (!buf) {
		close(fd);
		return fail(e, -ENOMEM, "%s: out of memory", path);
	}
	while (got < (size_t)sb.st_size) {
		ssize_t n = read(fd, buf + got, (size_t)sb.st_size - got);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		got += (size_t)n;
	}
	close(fd);
	*ret = buf;
	*ret_len = got;
	return 0;
}

static bool plain_file_name(const char *s)
{
	return *s && !strchr(s, '/') && strcmp(s, ".") != 0 && strcmp(s, "..") != 0;
}

static int open_index(struct dp_st *st, const char *dir, const char *index_path, struct errbuf *e)
{
	json_t *root = NULL, *map, *v;
	json_error_t jerr;
	const char **shards = NULL;
	size_t n_shards = 0, len = 0, last = 0;
	const char *key;
	char *text = NULL;
	int r;

	if ((r = read_small_file(index_path, DP_ST_INDEX_MAX, &text, &len, e)))
		return r;
	root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
	free(text);
	if (!root)
		return fail(e, -EINVAL, "%s: not valid JSON (line %d, column %d): %s", index_path,
		            jerr.line, jerr.column, jerr.text);
	map = json_object_get(root, "weight_map");
	if (!json_is_object(root) || !json_is_object(map)) {
		r = fail(e, -EINVAL, "%s: no \"weight_map\" object", index_path);
		goto out;
	}
	if (json_object_size(map) == 0) {
		r = fail(e, -EINVAL, "%s: \"weight_map\" is empty", index_path);
		goto out;
	}

	/* the distinct shard names, in order of first mention */
	shards = calloc(json_object_size(map), sizeof(*shards));
	if (!shards) {
		r = fail(e, -ENOMEM, "out of memory");
		goto out;
	}
	json_object_foreach(map, key, v)
	{
		if (!json_is_string(v) || !plain_file_name(json_string_value(v))) {
			r = fail(e, -EINVAL, "%s: weight_map[\"%s\"] is not a plain file name",
			         index_path, key);
			goto out;
		}
		const char *s = json_string_value(v);
		size_t i = last < n_shards && strcmp(shards[last], s) == 0 ? last : n_shards;

		if (i == n_shards)
			for (i = 0; i < n_shards && strcmp(shards[i], s) != 0; i++)
				;
		if (i == n_shards) {
			if (n_shards == DP_ST_SHARDS_MAX) {
				r = fail(e, -EINVAL, "%s: more than %d shards", index_path,
				         DP_ST_SHARDS_MAX);
				goto out;
			}
			shards[n_shards++] = s;
		}
		last = i;
	}

	for (size_t i = 0; i < n_shards; i++) {
		char *p = join(dir, shards[i]);

		if (!p) {
			r = fail(e, -ENOMEM, "out of memory");
			goto out;
		}
		r = add_file(st, p, strlen(dir) + 1, e);
		if (r == -ENOENT)
			fail(e, r, "%s: shard %s (listed in %s) does not exist", dir, shards[i],
			     index_path);
		if (r)
			goto out;
	}
	if ((r = sort_and_dedup(st, e)))
		goto out;

	/* the index and the shards must agree both ways */
	json_object_foreach(map, key, v)
	{
		long i = dp_st_index(st, key);

		if (i < 0) {
			r = fail(e, -EINVAL, "%s: index maps '%s' to %s, which has no such tensor",
			         dir, key, json_string_value(v));
			goto out;
		}
		const char *in = st->files[st->entries[i].file].base;
		if (strcmp(in, json_string_value(v)) != 0) {
			r = fail(e, -EINVAL, "%s: index maps '%s' to %s, but %s holds it", dir, key,
			         json_string_value(v), in);
			goto out;
		}
	}
	if (st->n != json_object_size(map)) {
		for (size_t i = 0; i < st->n; i++)
			if (!json_object_get(map, st->entries[i].name)) {
				r = fail(e, -EINVAL,
				         "%s: shard %s holds '%s', which the index does not list",
				         dir, st->files[st->entries[i].file].base,
				         st->entries[i].name);
				goto out;
			}
	}
	r = 0;
out:
	free(shards);
	json_decref(root);
	return r;
}

int dp_st_open_dir(const char *dir, struct dp_st **ret, char *err, size_t err_len)
{
	struct errbuf e = {err, err_len};
	struct dp_st *st;
	char *single, *index;
	struct stat sb;
	int r;

	if (!dir || !ret)
		return fail(&e, -EINVAL, "dp_st_open_dir: NULL argument");
	if (stat(dir, &sb) < 0) {
		r = -errno;
		return fail(&e, r, "%s: %s", dir, strerror(-r));
	}
	if (!S_ISDIR(sb.st_mode))
		return fail(&e, -ENOTDIR, "%s: not a directory", dir);
	st = calloc(1, sizeof(*st));
	single = join(dir, "model.safetensors");
	index = join(dir, "model.safetensors.index.json");
	if (!st || !single || !index) {
		r = fail(&e, -ENOMEM, "out of memory");
		goto fail;
	}
	if (access(single, F_OK) == 0) {
		r = add_file(st, single, strlen(dir) + 1, &e);
		single = NULL; /* owned by st now */
		if (!r)
			r = sort_and_dedup(st, &e);
	} else if (access(index, F_OK) == 0) {
		r = open_index(st, dir, index, &e);
	} else {
		r = fail(&e, -ENOENT, "%s: no model.safetensors or model.safetensors.index.json",
		         dir);
	}
	if (r)
		goto fail;
	free(single);
	free(index);
	*ret = st;
	return 0;
fail:
	free(single);
	free(index);
	dp_st_free(st);
	return r;
}

/* ---- lookup ------------------------------------------------------------- */

size_t dp_st_count(const struct dp_st *st)
{
	return st ? st->n : 0;
}

size_t dp_st_file_count(const struct dp_st *st)
{
	return st ? st->n_files : 0;
}

int dp_st_at(const struct dp_st *st, size_t idx, struct dp_st_tensor *ret)
{
	if (!st || !ret)
		return -EINVAL;
	if (idx >= st->n)
		return -ERANGE;
	const struct st_entry *en = &st->entries[idx];
	const struct st_file *f = &st->files[en->file];
	struct dp_st_tensor t = {
	    .name = en->name,
	    .file = f->path,
	    .dtype = en->dtype,
	    .ndim = en->ndim,
	    .numel = en->numel,
	    .bytes = en->bytes,
	    .data = (const char *)f->map + f->data_off + en->begin,
	    .offset = (uint64_t)f->data_off + en->begin,
	};
	memcpy(t.shape, en->shape, sizeof(t.shape));
	t.aligned = ((uintptr_t)t.data % dtypes[en->dtype].size) == 0;
	*ret = t;
	return 0;
}

long dp_st_index(const struct dp_st *st, const char *name)
{
	size_t lo = 0, hi;

	if (!st || !name)
		return -EINVAL;
	hi = st->n;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		int c = strcmp(name, st->entries[mid].name);

		if (c == 0)
			return (long)mid;
		if (c < 0)
			hi = mid;
		else
			lo = mid + 1;
	}
	return -ENOENT;
}

int dp_st_get(const struct dp_st *st, const char *name, struct dp_st_tensor *ret)
{
	long i = dp_st_index(st, name);

	if (i < 0)
		return (int)i;
	return dp_st_at(st, (size_t)i, ret);
}

const char *dp_st_shape_str(const struct dp_st_tensor *t, char *buf, size_t len)
{
	size_t used = 0;

	if (!buf || !len)
		return buf;
	buf[0] = '\0';
	if (!t)
		return buf;
	used += (size_t)snprintf(buf, len, "[");
	for (int i = 0; i < t->ndim && used < len; i++)
		used += (size_t)snprintf(buf + used, len - used, "%s%lld", i ? ", " : "",
		                         (long long)t->shape[i]);
	if (used < len)
		snprintf(buf + used, len - used, "]");
	return buf;
}

/* ---- conversion --------------------------------------------------------- */

static int check_range(const struct dp_st_tensor *t, uint64_t first, uint64_t count)
{
	if (first > t->numel || count > t->numel - first)
		return -ERANGE;
	return 0;
}

int dp_st_read_f32(const struct dp_st_tensor *t, uint64_t first, uint64_t count, float *out)
{
	if (!t || (!out && count) || !dp_st_dtype_is_float(t->dtype))
		return -EINVAL;
	if (check_range(t, first, count))
		return -ERANGE;
	if (!count)
		return 0;
	const unsigned char *p = (const unsigned char *)t->data + first * dtypes[t->dtype].size;
	switch (t->dtype) {
	case DP_ST_F32:
		memcpy(out, p, count * 4);
		break;
	case DP_ST_BF16:
		for (uint64_t i = 0; i < count; i++) {
			uint16_t h;

			memcpy(&h, p + 2 * i, 2);
			out[i] = dp_bf16_to_f32(h);
		}
		break;
	case DP_ST_F16:
		for (uint64_t i = 0; i < count; i++) {
			uint16_t h;

			memcpy(&h, p + 2 * i, 2);
			out[i] = dp_f16_to_f32(h);
		}
		break;
	default:
		return -EINVAL;
	}
	return 0;
}

int dp_st_to_f32(const struct dp_st_tensor *t, float *out, uint64_t n)
{
	if (!t || n < t->numel)
		return -EINVAL;
	return dp_st_read_f32(t, 0, t->numel, out);
}

int dp_st_read_i64(const struct dp_st_tensor *t, uint64_t first, uint64_t count, int64_t *out)
{
	if (!t || (!out && count) ||
	    (t->dtype != DP_ST_I64 && t->dtype != DP_ST_I32 && t->dtype != DP_ST_I8))
		return -EINVAL;
	if (check_range(t, first, count))
		return -ERANGE;
	if (!count)
		return 0;
	const unsigned char *p = (const unsigned char *)t->data + first * dtypes[t->dtype].size;
	if (t->dtype == DP_ST_I64) {
		memcpy(out, p, count * 8);
		return 0;
	}
	if (t->dtype == DP_ST_I8) {
		for (uint64_t i = 0; i < count; i++)
			out[i] = (int8_t)p[i];
		return 0;
	}
	for (uint64_t i = 0; i < count; i++) {
		int32_t v;

		memcpy(&v, p + 4 * i, 4);
		out[i] = v;
	}
	return 0;
}

int dp_st_prefetch(const struct dp_st_tensor *t)
{
	long page = sysconf(_SC_PAGESIZE);

	if (!t || page <= 0)
		return -EINVAL;
	if (!t->bytes)
		return 0;
	uintptr_t a = (uintptr_t)t->data & ~((uintptr_t)page - 1);
	uintptr_t end = (uintptr_t)t->data + t->bytes;
	if (madvise((void *)a, end - a, MADV_WILLNEED) < 0)
		return -errno;
	return 0;
}

int dp_st_release(const struct dp_st_tensor *t, uint64_t first, uint64_t len)
{
	long page = sysconf(_SC_PAGESIZE);

	if (!t || page <= 0)
		return -EINVAL;
	if (first > t->bytes || len > t->bytes - first)
		return -ERANGE;
	uintptr_t pm = (uintptr_t)page - 1;
	uintptr_t a = ((uintptr_t)t->data + first + pm) & ~pm;
	uintptr_t end = ((uintptr_t)t->data + first + len) & ~pm;
	if (end <= a)
		return 0; /* no whole page of its own */
	if (madvise((void *)a, end - a, MADV_DONTNEED) < 0)
		return -errno;
	return 0;
}
