/* SPDX-License-Identifier: MIT */
/*
 * engram/table.c — the .dpe table file: layout, writer and validating reader (engram.h
 * "table files").
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define XXH_STATIC_LINKING_ONLY /* XXH64_state_t on the stack */
#include <xxhash.h>

#include "base/err.h"
#include "base/macros.h"
#include "engram/engram-internal.h"
#include "engram/engram.h"

#define OFF_MAGIC        0
#define OFF_VERSION      8
#define OFF_HEADER_BYTES 12
#define OFF_DTYPE        16
#define OFF_HEAD_DIM     20
#define OFF_ROW_BYTES    24
#define OFF_BLOCK_BYTES  28
#define OFF_RPB          32
#define OFF_N_LAYERS     36
#define OFF_MAX_NGRAM    40
#define OFF_N_HEADS      44
#define OFF_N_COLUMNS    48
#define OFF_SCALE_GROUP  52
#define OFF_DATA_BYTES   56
#define OFF_DATA_XXH     64
#define OFF_HEADER_XXH   72
#define OFF_LAYERS       96
#define LAYER_ENTRY      32
/* Largest header read: 256 layers x 960 columns of sizes is under 2 MiB. */
#define HEADER_MAX (64u << 20)

static void put32(unsigned char *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (unsigned char)(v >> (8 * i));
}

static void put64(unsigned char *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (unsigned char)(v >> (8 * i));
}

static uint32_t get32(const unsigned char *p)
{
	uint32_t v = 0;
	for (int i = 3; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

static uint64_t get64(const unsigned char *p)
{
	uint64_t v = 0;
	for (int i = 7; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

/* XXH64 of the header with its own checksum field taken as 0. */
static uint64_t header_sum(const unsigned char *h, size_t bytes)
{
	static const unsigned char zero[8];
	XXH64_state_t st;

	XXH64_reset(&st, 0);
	XXH64_update(&st, h, OFF_HEADER_XXH);
	XXH64_update(&st, zero, 8);
	XXH64_update(&st, h + OFF_HEADER_XXH + 8, bytes - OFF_HEADER_XXH - 8);
	return XXH64_digest(&st);
}

/* The geometry both sides compute. */
struct layout {
	enum dp_engram_dtype dtype;
	uint32_t head_dim, row_bytes, block_bytes, rpb;
	uint32_t n_layers, max_ngram, n_heads, n_columns;
	uint64_t header_bytes, data_bytes;
	int *layer_ids;
	uint64_t *rows, *offset; /* per layer */
	int64_t *sizes;          /* [n_layers][n_columns] */
};

static void layout_fini(struct layout *l)
{
	free(l->layer_ids);
	free(l->rows);
	free(l->offset);
	free(l->sizes);
	memset(l, 0, sizeof(*l));
}

static int layout_alloc(struct layout *l)
{
	l->layer_ids = calloc(l->n_layers, sizeof(*l->layer_ids));
	l->rows = calloc(l->n_layers, sizeof(*l->rows));
	l->offset = calloc(l->n_layers, sizeof(*l->offset));
	l->sizes = calloc((size_t)l->n_layers * l->n_columns, sizeof(*l->sizes));
	return l->layer_ids && l->rows && l->offset && l->sizes ? 0 : -ENOMEM;
}

static uint64_t header_bytes_for(uint32_t n_layers, uint32_t n_columns)
{
	uint64_t used = OFF_LAYERS + (uint64_t)LAYER_ENTRY * n_layers + 8ull * n_layers * n_columns;
	return (used + DP_ENGRAM_BLOCK - 1) / DP_ENGRAM_BLOCK * DP_ENGRAM_BLOCK;
}

static uint64_t layer_data_bytes(const struct layout *l, uint64_t rows)
{
	return (rows + l->rpb - 1) / l->rpb * l->block_bytes;
}

/* Fill row and block geometry from dtype and head_dim; offsets from rows. */
static int layout_finish(struct layout *l)
{
	size_t rb = dp_engram_row_bytes(l->dtype, l->head_dim);
	if (!rb)
		return -EINVAL;
	l->row_bytes = (uint32_t)rb;
	l->block_bytes = (uint32_t)((rb + DP_ENGRAM_BLOCK - 1) / DP_ENGRAM_BLOCK * DP_ENGRAM_BLOCK);
	l->rpb = l->block_bytes / l->row_bytes;
	l->header_bytes = header_bytes_for(l->n_layers, l->n_columns);
	uint64_t off = l->header_bytes;
	for (uint32_t i = 0; i < l->n_layers; i++) {
		l->offset[i] = off;
		off += layer_data_bytes(l, l->rows[i]);
	}
	l->data_bytes = off - l->header_bytes;
	return 0;
}

static void layout_encode(const struct layout *l, uint64_t data_xxh, unsigned char *h)
{
	memset(h, 0, l->header_bytes);
	memcpy(h + OFF_MAGIC, DP_ENGRAM_TABLE_MAGIC, 8);
	put32(h + OFF_VERSION, DP_ENGRAM_TABLE_VERSION);
	put32(h + OFF_HEADER_BYTES, (uint32_t)l->header_bytes);
	put32(h + OFF_DTYPE, (uint32_t)l->dtype);
	put32(h + OFF_HEAD_DIM, l->head_dim);
	put32(h + OFF_ROW_BYTES, l->row_bytes);
	put32(h + OFF_BLOCK_BYTES, l->block_bytes);
	put32(h + OFF_RPB, l->rpb);
	put32(h + OFF_N_LAYERS, l->n_layers);
	put32(h + OFF_MAX_NGRAM, l->max_ngram);
	put32(h + OFF_N_HEADS, l->n_heads);
	put32(h + OFF_N_COLUMNS, l->n_columns);
	put32(h + OFF_SCALE_GROUP, l->dtype == DP_ENGRAM_DTYPE_FP8 ? DP_ENGRAM_FP8_GROUP : 0);
	put64(h + OFF_DATA_BYTES, l->data_bytes);
	put64(h + OFF_DATA_XXH, data_xxh);
	unsigned char *e = h + OFF_LAYERS;
	for (uint32_t i = 0; i < l->n_layers; i++, e += LAYER_ENTRY) {
		put32(e, (uint32_t)l->layer_ids[i]);
		put64(e + 8, l->rows[i]);
		put64(e + 16, l->offset[i]);
	}
	for (size_t i = 0; i < (size_t)l->n_layers * l->n_columns; i++, e += 8)
		put64(e, (uint64_t)l->sizes[i]);
	put64(h + OFF_HEADER_XXH, header_sum(h, l->header_bytes));
}

/* ---- writer ------------------------------------------------------------------ */

#define WBUF_BYTES (4u << 20)

struct dp_engram_writer {
	struct layout l;
	char *path, *tmp;
	int fd;
	unsigned char *buf; /* WBUF_BYTES, whole blocks */
	size_t buf_used;    /* bytes of complete blocks + the partial one's start */
	uint32_t slot;      /* layer being written */
	uint64_t row;       /* next row of that layer */
	uint64_t written, total;
	XXH64_state_t xxh;
	bool finished;
};

static int layout_from_hash(const struct dp_engram_table_spec *spec, struct layout *l)
{
	const struct dp_engram_hash *h = spec->hash;
	int n_layers = dp_engram_hash_n_layers(h);
	int ncols = dp_engram_hash_n_columns(h);
	int r;

	if (n_layers <= 0 || ncols <= 0)
		return -EINVAL;
	memset(l, 0, sizeof(*l));
	l->dtype = spec->dtype;
	l->head_dim = spec->head_dim;
	l->n_layers = (uint32_t)n_layers;
	l->max_ngram = (uint32_t)dp_engram_hash_max_ngram(h);
	l->n_heads = (uint32_t)dp_engram_hash_n_heads(h);
	l->n_columns = (uint32_t)ncols;
	if ((r = layout_alloc(l)) < 0)
		return r;
	for (int i = 0; i < n_layers; i++) {
		const int64_t *off = dp_engram_hash_offsets(h, i);
		const int64_t *sz = dp_engram_hash_table_sizes(h, i);
		l->layer_ids[i] = dp_engram_hash_layer_id(h, i);
		l->rows[i] = (uint64_t)off[ncols];
		memcpy(l->sizes + (size_t)i * ncols, sz, (size_t)ncols * sizeof(*sz));
	}
	return layout_finish(l);
}

int dp_engram_writer_new(const char *path, const struct dp_engram_table_spec *spec,
                         struct dp_engram_writer **ret, char *err, size_t err_len)
{
	struct dp_engram_writer *w;
	int r;

	if (!path || !spec || !spec->hash || !ret ||
	    !dp_engram_row_bytes(spec->dtype, spec->head_dim)) {
		dp_errf(err, err_len, "dp_engram_writer_new: bad argument (dtype %d, head_dim %u)",
		        spec ? (int)spec->dtype : -1, spec ? spec->head_dim : 0);
		return -EINVAL;
	}
	w = calloc(1, sizeof(*w));
	if (!w)
		return -ENOMEM;
	w->fd = -1;
	if ((r = layout_from_hash(spec, &w->l)) < 0) {
		dp_errf(err, err_len, "%s: cannot lay the tables out: %s", path, strerror(-r));
		goto fail;
	}
	w->path = strdup(path);
	w->tmp = malloc(strlen(path) + 5);
	w->buf = aligned_alloc(DP_ENGRAM_BLOCK, WBUF_BYTES);
	if (!w->path || !w->tmp || !w->buf || w->l.block_bytes > WBUF_BYTES) {
		r = -ENOMEM;
		dp_errf(err, err_len, "out of memory");
		goto fail;
	}
	sprintf(w->tmp, "%s.tmp", path);
	w->fd = open(w->tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (w->fd < 0) {
		r = -errno;
		dp_errf(err, err_len, "%s: cannot create: %s", w->tmp, strerror(errno));
		goto fail;
	}
	if (lseek(w->fd, (off_t)w->l.header_bytes, SEEK_SET) < 0) {
		r = -errno;
		dp_errf(err, err_len, "%s: seek: %s", w->tmp, strerror(errno));
		goto fail;
	}
	for (uint32_t i = 0; i < w->l.n_layers; i++)
		w->total += w->l.rows[i];
	XXH64_reset(&w->xxh, 0);
	memset(w->buf, 0, WBUF_BYTES);
	*ret = w;
	return 0;
fail:
	dp_engram_writer_free(w);
	return r;
}

static int write_all(int fd, const void *p, size_t n)
{
	while (n) {
		ssize_t k = write(fd, p, n);
		if (k < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		p = (const char *)p + k;
		n -= (size_t)k;
	}
	return 0;
}

/* Write the buffered whole blocks (bytes) and clear the buffer. */
static int flush(struct dp_engram_writer *w, size_t bytes, char *err, size_t err_len)
{
	if (!bytes)
		return 0;
	XXH64_update(&w->xxh, w->buf, bytes);
	int r = write_all(w->fd, w->buf, bytes);
	if (r < 0) {
		dp_errf(err, err_len, "%s: write: %s", w->tmp, strerror(-r));
		return r;
	}
	memset(w->buf, 0, bytes);
	w->buf_used = 0;
	return 0;
}

/* Place one encoded row; ends blocks and layers as they fill. */
static int place(struct dp_engram_writer *w, const void *row, char *err, size_t err_len)
{
	const struct layout *l = &w->l;
	uint64_t in_block = w->row % l->rpb;

	memcpy(w->buf + w->buf_used + in_block * l->row_bytes, row, l->row_bytes);
	w->row++;
	w->written++;
	bool layer_done = w->row == l->rows[w->slot];
	if (in_block + 1 == l->rpb || layer_done) {
		w->buf_used += l->block_bytes;
		if (w->buf_used + l->block_bytes > WBUF_BYTES || w->written == w->total) {
			int r = flush(w, w->buf_used, err, err_len);
			if (r < 0)
				return r;
		}
	}
	if (layer_done) {
		w->slot++;
		w->row = 0;
	}
	return 0;
}

/* The checks both puts make: arguments, and room for n more rows. */
static int check_put(const struct dp_engram_writer *w, const void *rows, uint64_t n, char *err,
                     size_t err_len)
{
	if (!w || (!rows && n) || w->finished)
		return -EINVAL;
	if (n > w->total - w->written) {
		dp_errf(err, err_len,
		        "%s: %" PRIu64 " rows given, the tables hold %" PRIu64 " and %" PRIu64
		        " are written",
		        w->path, n, w->total, w->written);
		return -E2BIG;
	}
	return 0;
}

int dp_engram_writer_put_encoded(struct dp_engram_writer *w, const void *rows, uint64_t n,
                                 char *err, size_t err_len)
{
	int r = check_put(w, rows, n, err, err_len);
	if (r < 0)
		return r;
	for (uint64_t i = 0; i < n; i++) {
		r = place(w, (const char *)rows + i * w->l.row_bytes, err, err_len);
		if (r < 0)
			return r;
	}
	return 0;
}

int dp_engram_writer_put(struct dp_engram_writer *w, const float *rows, uint64_t n, char *err,
                         size_t err_len)
{
	unsigned char enc[4 * DP_ENGRAM_HEAD_DIM_MAX + 4 * (DP_ENGRAM_HEAD_DIM_MAX / 32) + 4];
	int r = check_put(w, rows, n, err, err_len);
	if (r < 0)
		return r;
	for (uint64_t i = 0; i < n; i++) {
		r = dp_engram_row_encode(w->l.dtype, w->l.head_dim, rows + i * w->l.head_dim, enc);
		if (r == -EDOM) {
			dp_errf(err, err_len,
			        "%s: layer %d row %" PRIu64 " holds a NaN or an "
			        "infinity",
			        w->path, w->l.layer_ids[w->slot], w->row);
			return r;
		}
		if (r == 0)
			r = place(w, enc, err, err_len);
		if (r < 0)
			return r;
	}
	return 0;
}

uint64_t dp_engram_writer_rows(const struct dp_engram_writer *w, uint64_t *ret_total)
{
	if (!w)
		return 0;
	if (ret_total)
		*ret_total = w->total;
	return w->written;
}

int dp_engram_writer_finish(struct dp_engram_writer *w, char *err, size_t err_len)
{
	int r;

	if (!w || w->finished)
		return -EINVAL;
	if (w->written != w->total) {
		dp_errf(err, err_len, "%s: %" PRIu64 " of %" PRIu64 " rows written", w->path,
		        w->written, w->total);
		return -EINVAL;
	}
	unsigned char *h = calloc(1, w->l.header_bytes);
	if (!h)
		return -ENOMEM;
	layout_encode(&w->l, XXH64_digest(&w->xxh), h);
	r = 0;
	if (pwrite(w->fd, h, w->l.header_bytes, 0) != (ssize_t)w->l.header_bytes)
		r = errno ? -errno : -EIO;
	free(h);
	if (r == 0 && fsync(w->fd) < 0)
		r = -errno;
	if (r == 0 && close(w->fd) < 0)
		r = -errno;
	w->fd = -1;
	if (r == 0 && rename(w->tmp, w->path) < 0)
		r = -errno;
	if (r < 0) {
		dp_errf(err, err_len, "%s: cannot finish: %s", w->path, strerror(-r));
		return r;
	}
	w->finished = true;
	return 0;
}

void dp_engram_writer_free(struct dp_engram_writer *w)
{
	if (!w)
		return;
	if (w->fd >= 0)
		close(w->fd);
	if (!w->finished && w->tmp)
		unlink(w->tmp);
	layout_fini(&w->l);
	free(w->path);
	free(w->tmp);
	free(w->buf);
	free(w);
}

/* ---- reader ------------------------------------------------------------------ */

struct dp_engram_table {
	struct layout l;
	char *path;
	int fd;
	uint64_t file_bytes, data_xxh;
};

void dp_engram_table_close(struct dp_engram_table *t)
{
	if (!t)
		return;
	if (t->fd >= 0)
		close(t->fd);
	layout_fini(&t->l);
	free(t->path);
	free(t);
}

static int read_at(int fd, void *buf, size_t n, uint64_t off)
{
	while (n) {
		ssize_t k = pread(fd, buf, n, (off_t)off);
		if (k < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (k == 0)
			return -EIO; /* the size was checked: the file shrank */
		buf = (char *)buf + k;
		n -= (size_t)k;
		off += (uint64_t)k;
	}
	return 0;
}

/* Check a header (whole, header_bytes long) and fill t->l. */
static int parse_header(struct dp_engram_table *t, const unsigned char *h, char *err,
                        size_t err_len)
{
	struct layout *l = &t->l;
	const char *p = t->path;
	uint32_t dtype = get32(h + OFF_DTYPE);
	int r;

	l->head_dim = get32(h + OFF_HEAD_DIM);
	l->n_layers = get32(h + OFF_N_LAYERS);
	l->max_ngram = get32(h + OFF_MAX_NGRAM);
	l->n_heads = get32(h + OFF_N_HEADS);
	l->n_columns = get32(h + OFF_N_COLUMNS);
	if (dtype >= DP_ENGRAM_DTYPE_MAX) {
		dp_errf(err, err_len, "%s: dtype %u is not bf16 (0) or fp8 (1)", p, dtype);
		return -EINVAL;
	}
	l->dtype = (enum dp_engram_dtype)dtype;
	if (!dp_engram_row_bytes(l->dtype, l->head_dim)) {
		dp_errf(err, err_len, "%s: head_dim %u is not in [1, %d]", p, l->head_dim,
		        DP_ENGRAM_HEAD_DIM_MAX);
		return -EINVAL;
	}
	if (l->n_layers < 1 || l->n_layers > DP_ENGRAM_LAYERS_MAX || l->max_ngram < 2 ||
	    l->max_ngram > DP_ENGRAM_NGRAM_MAX || l->n_heads < 1 ||
	    l->n_heads > DP_ENGRAM_HEADS_MAX ||
	    l->n_columns != DP_ENGRAM_COLUMNS(l->max_ngram, l->n_heads)) {
		dp_errf(err, err_len,
		        "%s: bad geometry: %u layers, max_ngram_size %u, %u heads, "
		        "%u columns",
		        p, l->n_layers, l->max_ngram, l->n_heads, l->n_columns);
		return -EINVAL;
	}
	if (header_bytes_for(l->n_layers, l->n_columns) != get32(h + OFF_HEADER_BYTES)) {
		dp_errf(err, err_len, "%s: header_bytes %u, expected %" PRIu64 " for %u layers", p,
		        get32(h + OFF_HEADER_BYTES), header_bytes_for(l->n_layers, l->n_columns),
		        l->n_layers);
		return -EINVAL;
	}
	if ((r = layout_alloc(l)) < 0)
		return r;
	const unsigned char *e = h + OFF_LAYERS;
	for (uint32_t i = 0; i < l->n_layers; i++, e += LAYER_ENTRY) {
		l->layer_ids[i] = (int)get32(e);
		l->rows[i] = get64(e + 8);
		if (l->layer_ids[i] < 0 || l->layer_ids[i] > DP_ENGRAM_LAYER_ID_MAX) {
			dp_errf(err, err_len, "%s: layer entry %u: layer id %d out of range", p, i,
			        l->layer_ids[i]);
			return -EINVAL;
		}
	}
	for (uint32_t i = 0; i < l->n_layers; i++) {
		uint64_t sum = 0;
		for (uint32_t c = 0; c < l->n_columns; c++, e += 8) {
			uint64_t v = get64(e);
			if (v < 1 || v > (uint64_t)DP_ENGRAM_TABLE_MAX * 2) {
				dp_errf(err, err_len,
				        "%s: layer %d column %u: table size %" PRIu64
				        " out of range",
				        p, l->layer_ids[i], c, v);
				return -EINVAL;
			}
			l->sizes[(size_t)i * l->n_columns + c] = (int64_t)v;
			sum += v;
		}
		if (sum != l->rows[i]) {
			dp_errf(err, err_len,
			        "%s: layer %d: %" PRIu64 " rows, its table sizes add "
			        "up to %" PRIu64,
			        p, l->layer_ids[i], l->rows[i], sum);
			return -EINVAL;
		}
	}
	if ((r = layout_finish(l)) < 0)
		return r;
	struct {
		const char *name;
		uint64_t have, want;
	} f[] = {
	    {"row_bytes", get32(h + OFF_ROW_BYTES), l->row_bytes},
	    {"block_bytes", get32(h + OFF_BLOCK_BYTES), l->block_bytes},
	    {"rows_per_block", get32(h + OFF_RPB), l->rpb},
	    {"scale_group", get32(h + OFF_SCALE_GROUP),
	     l->dtype == DP_ENGRAM_DTYPE_FP8 ? DP_ENGRAM_FP8_GROUP : 0},
	    {"data_bytes", get64(h + OFF_DATA_BYTES), l->data_bytes},
	};
	for (size_t i = 0; i < DP_ARRAY_SIZE(f); i++)
		if (f[i].have != f[i].want) {
			dp_errf(err, err_len, "%s: %s %" PRIu64 ", expected %" PRIu64, p, f[i].name,
			        f[i].have, f[i].want);
			return -EINVAL;
		}
	e = h + OFF_LAYERS;
	for (uint32_t i = 0; i < l->n_layers; i++, e += LAYER_ENTRY)
		if (get64(e + 16) != l->offset[i]) {
			dp_errf(err, err_len, "%s: layer %d: offset %" PRIu64 ", expected %" PRIu64,
			        p, l->layer_ids[i], get64(e + 16), l->offset[i]);
			return -EINVAL;
		}
	t->data_xxh = get64(h + OFF_DATA_XXH);
	return 0;
}

int dp_engram_table_open(const char *path, struct dp_engram_table **ret, char *err, size_t err_len)
{
	unsigned char first[DP_ENGRAM_BLOCK], *h = NULL;
	struct dp_engram_table *t;
	struct stat st;
	int r;

	if (!path || !ret)
		return -EINVAL;
	t = calloc(1, sizeof(*t));
	if (!t || !(t->path = strdup(path))) {
		free(t);
		return -ENOMEM;
	}
	t->fd = open(path, O_RDONLY | O_CLOEXEC);
	if (t->fd < 0) {
		r = -errno;
		dp_errf(err, err_len, "%s: %s", path, strerror(errno));
		goto fail;
	}
	if (fstat(t->fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		r = S_ISDIR(st.st_mode) ? -EISDIR : -EINVAL;
		dp_errf(err, err_len, "%s: not a regular file", path);
		goto fail;
	}
	t->file_bytes = (uint64_t)st.st_size;
	if (t->file_bytes < DP_ENGRAM_BLOCK) {
		r = -EINVAL;
		dp_errf(err, err_len,
		        "%s: %" PRIu64 " bytes: too short for an Engram table "
		        "(truncated?)",
		        path, t->file_bytes);
		goto fail;
	}
	if ((r = read_at(t->fd, first, sizeof(first), 0)) < 0) {
		dp_errf(err, err_len, "%s: read: %s", path, strerror(-r));
		goto fail;
	}
	if (memcmp(first + OFF_MAGIC, DP_ENGRAM_TABLE_MAGIC, 8) != 0) {
		r = -EINVAL;
		dp_errf(err, err_len, "%s: not an Engram table (bad magic; expected \"%s\")", path,
		        DP_ENGRAM_TABLE_MAGIC);
		goto fail;
	}
	if (get32(first + OFF_VERSION) != DP_ENGRAM_TABLE_VERSION) {
		r = -ENOTSUP;
		dp_errf(err, err_len, "%s: table format version %u; this build reads version %d",
		        path, get32(first + OFF_VERSION), DP_ENGRAM_TABLE_VERSION);
		goto fail;
	}
	uint32_t hb = get32(first + OFF_HEADER_BYTES);
	if (hb < DP_ENGRAM_BLOCK || hb % DP_ENGRAM_BLOCK || hb > HEADER_MAX || hb > t->file_bytes) {
		r = -EINVAL;
		dp_errf(err, err_len,
		        "%s: header_bytes %u is not a multiple of %u in [%u, %u] "
		        "within the file's %" PRIu64 " bytes",
		        path, hb, DP_ENGRAM_BLOCK, DP_ENGRAM_BLOCK, HEADER_MAX, t->file_bytes);
		goto fail;
	}
	h = malloc(hb);
	if (!h) {
		r = -ENOMEM;
		goto fail;
	}
	memcpy(h, first, sizeof(first));
	if (hb > sizeof(first) &&
	    (r = read_at(t->fd, h + sizeof(first), hb - sizeof(first), sizeof(first))) < 0) {
		dp_errf(err, err_len, "%s: read: %s", path, strerror(-r));
		goto fail;
	}
	if (header_sum(h, hb) != get64(h + OFF_HEADER_XXH)) {
		r = -EBADMSG;
		dp_errf(err, err_len,
		        "%s: header checksum mismatch (stored %016" PRIx64 ", computed %016" PRIx64
		        "): the file is corrupt",
		        path, get64(h + OFF_HEADER_XXH), header_sum(h, hb));
		goto fail;
	}
	if ((r = parse_header(t, h, err, err_len)) < 0)
		goto fail;
	if (t->l.header_bytes + t->l.data_bytes != t->file_bytes) {
		r = -EINVAL;
		dp_errf(err, err_len, "%s: %" PRIu64 " bytes, but the header says %" PRIu64 " (%s)",
		        path, t->file_bytes, t->l.header_bytes + t->l.data_bytes,
		        t->file_bytes < t->l.header_bytes + t->l.data_bytes ? "truncated"
		                                                            : "trailing bytes");
		goto fail;
	}
	free(h);
	*ret = t;
	return 0;
fail:
	free(h);
	dp_engram_table_close(t);
	return r;
}

int dp_engram_table_get_info(const struct dp_engram_table *t, struct dp_engram_table_info *ret)
{
	if (!t || !ret)
		return -EINVAL;
	*ret = (struct dp_engram_table_info){
	    .version = DP_ENGRAM_TABLE_VERSION,
	    .dtype = t->l.dtype,
	    .head_dim = t->l.head_dim,
	    .row_bytes = t->l.row_bytes,
	    .block_bytes = t->l.block_bytes,
	    .rows_per_block = t->l.rpb,
	    .n_layers = t->l.n_layers,
	    .max_ngram_size = t->l.max_ngram,
	    .n_heads = t->l.n_heads,
	    .n_columns = t->l.n_columns,
	    .header_bytes = t->l.header_bytes,
	    .data_bytes = t->l.data_bytes,
	    .file_bytes = t->file_bytes,
	    .data_xxh64 = t->data_xxh,
	};
	return 0;
}

const char *dp_engram_table_path(const struct dp_engram_table *t)
{
	return t ? t->path : NULL;
}

int dp_engram_table_fd(const struct dp_engram_table *t)
{
	return t ? t->fd : -EINVAL;
}

int dp_engram_table_layer(const struct dp_engram_table *t, int slot, int *ret_layer_id,
                          uint64_t *ret_rows, uint64_t *ret_offset)
{
	if (!t || slot < 0 || (uint32_t)slot >= t->l.n_layers)
		return -EINVAL;
	if (ret_layer_id)
		*ret_layer_id = t->l.layer_ids[slot];
	if (ret_rows)
		*ret_rows = t->l.rows[slot];
	if (ret_offset)
		*ret_offset = t->l.offset[slot];
	return 0;
}

const int64_t *dp_engram_table_sizes(const struct dp_engram_table *t, int slot)
{
	if (!t || slot < 0 || (uint32_t)slot >= t->l.n_layers)
		return NULL;
	return t->l.sizes + (size_t)slot * t->l.n_columns;
}

uint64_t dp_engram_table_row_offset(const struct dp_engram_table *t, int slot, uint64_t flat)
{
	if (!t || slot < 0 || (uint32_t)slot >= t->l.n_layers || flat >= t->l.rows[slot])
		return UINT64_MAX;
	return t->l.offset[slot] + flat / t->l.rpb * t->l.block_bytes +
	       flat % t->l.rpb * t->l.row_bytes;
}

int dp_engram_table_check(const struct dp_engram_table *t, const struct dp_engram_hash *h,
                          uint32_t head_dim, char *err, size_t err_len)
{
	if (!t || !h)
		return -EINVAL;
	const struct layout *l = &t->l;
	const char *p = t->path;
	int n_layers = dp_engram_hash_n_layers(h), ncols = dp_engram_hash_n_columns(h);

	if (l->head_dim != head_dim) {
		dp_errf(err, err_len, "%s: rows of %u values; the model's engram_head_dim is %u", p,
		        l->head_dim, head_dim);
		return -EINVAL;
	}
	if ((int)l->n_layers != n_layers || (int)l->max_ngram != dp_engram_hash_max_ngram(h) ||
	    (int)l->n_heads != dp_engram_hash_n_heads(h)) {
		dp_errf(err, err_len,
		        "%s: %u layers, max_ngram_size %u, %u heads; the model "
		        "has %d, %d, %d",
		        p, l->n_layers, l->max_ngram, l->n_heads, n_layers,
		        dp_engram_hash_max_ngram(h), dp_engram_hash_n_heads(h));
		return -EINVAL;
	}
	for (int i = 0; i < n_layers; i++) {
		if (l->layer_ids[i] != dp_engram_hash_layer_id(h, i)) {
			dp_errf(err, err_len,
			        "%s: table %d is layer %d's; the model's Engram "
			        "layer %d is %d",
			        p, i, l->layer_ids[i], i, dp_engram_hash_layer_id(h, i));
			return -EINVAL;
		}
		const int64_t *sz = dp_engram_hash_table_sizes(h, i);
		for (int c = 0; c < ncols; c++)
			if (sz[c] != l->sizes[(size_t)i * ncols + c]) {
				dp_errf(err, err_len,
				        "%s: layer %d column %d: table size %" PRId64
				        "; the model's hashing uses %" PRId64 " (engram_vocab_size "
				        "differs?)",
				        p, l->layer_ids[i], c, l->sizes[(size_t)i * ncols + c],
				        sz[c]);
				return -EINVAL;
			}
	}
	return 0;
}

int dp_engram_table_read_rows(const struct dp_engram_table *t, int slot, const int64_t *flat,
                              size_t n, float *out)
{
	unsigned char buf[4 * DP_ENGRAM_HEAD_DIM_MAX + 4 * (DP_ENGRAM_HEAD_DIM_MAX / 32) + 4];

	if (!t || (!flat && n) || (!out && n))
		return -EINVAL;
	for (size_t i = 0; i < n; i++) {
		uint64_t off = flat[i] < 0 ? UINT64_MAX
		                           : dp_engram_table_row_offset(t, slot, (uint64_t)flat[i]);
		if (off == UINT64_MAX)
			return -ERANGE;
		int r = read_at(t->fd, buf, t->l.row_bytes, off);
		if (r < 0)
			return r;
		dp_engram_row_decode(t->l.dtype, t->l.head_dim, buf, out + i * t->l.head_dim);
	}
	return 0;
}

int dp_engram_table_verify(const struct dp_engram_table *t, char *err, size_t err_len)
{
	const size_t chunk = 8u << 20;
	XXH64_state_t st;

	if (!t)
		return -EINVAL;
	void *buf = malloc(chunk);
	if (!buf)
		return -ENOMEM;
	XXH64_reset(&st, 0);
	int r = 0;
	for (uint64_t done = 0; r == 0 && done < t->l.data_bytes;) {
		size_t k =
		    t->l.data_bytes - done < chunk ? (size_t)(t->l.data_bytes - done) : chunk;
		r = read_at(t->fd, buf, k, t->l.header_bytes + done);
		if (r == 0)
			XXH64_update(&st, buf, k);
		done += k;
	}
	free(buf);
	if (r < 0) {
		dp_errf(err, err_len, "%s: read: %s", t->path, strerror(-r));
		return r;
	}
	uint64_t got = XXH64_digest(&st);
	if (got != t->data_xxh) {
		dp_errf(err, err_len,
		        "%s: data checksum mismatch (header %016" PRIx64 ", data %016" PRIx64
		        "): the rows are corrupt",
		        t->path, t->data_xxh, got);
		return -EBADMSG;
	}
	return 0;
}
