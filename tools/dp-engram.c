/* SPDX-License-Identifier: MIT */
/*
 * dp-engram — Engram hashing from the command line.
 *
 *   dp-engram check-hash FILE.json
 *       Compare a golden-vector file (the format of tests/engram/golden/README.md) with what
 *       engram/ computes: multipliers, table sizes and every hash. Exit 0 when all match,
 *       1 on a mismatch (the first one is printed: layer, position, column, expected, got),
 *       2 when the file cannot be read or is malformed.
 *
 *   dp-engram hash --config FILE.json --tokens 1,2,3 [--global]
 *       Print each layer's multipliers and table sizes, then the row ids of every position of
 *       the token sequence (raw ids): local to each head's table, or with --global offset into
 *       the layer's flat table. The config is any file with the config keys (a golden file
 *       will do).
 *
 *   dp-engram convert [--config CONFIG.json] [--dtype bf16|fp8] IN.safetensors|DIR OUT.dpe
 *       Write the Engram tables of a checkpoint into a table file (engram/engram.h "table
 *       files"): per Engram layer L the tensor model.layers.L.engram.multi_head_embedding.
 *       embedding.weight (or without "model."), [rows, engram_head_dim]. CONFIG is the
 *       model's config.json (default: the one beside IN); it fixes layers and table sizes.
 *
 *   dp-engram make-random --config CONFIG.json [--dtype bf16|fp8] [--seed N] [--std X] OUT.dpe
 *       Tables of random values (uniform with standard deviation X, default 0.5) for the
 *       model config's Engram geometry, e.g. large ones for benchmarks.
 *
 *   dp-engram info FILE.dpe       the header, checked
 *   dp-engram verify FILE.dpe     also read every row and compare the data checksum
 *
 * Exit status: 0 on success, 1 when verify finds corrupt rows, 2 on any other error.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sys/stat.h>
#include <time.h>

#include "base/clock.h"
#include "engram/engram.h"
#include "model/config.h"
#include "model/safetensors.h"

#define EXIT_MISMATCH 1
#define EXIT_BAD      2

static void usage(FILE *f)
{
	fprintf(f, "usage: dp-engram check-hash FILE.json\n"
	           "       dp-engram hash --config FILE.json --tokens ID,ID,... [--global]\n"
	           "       dp-engram convert [--config CONFIG.json] [--dtype bf16|fp8] "
	           "IN.safetensors|DIR OUT.dpe\n"
	           "       dp-engram make-random --config CONFIG.json [--dtype bf16|fp8] "
	           "[--seed N] [--std X] OUT.dpe\n"
	           "       dp-engram info FILE.dpe\n"
	           "       dp-engram verify FILE.dpe\n");
}

static int cmd_check_hash(int argc, char **argv)
{
	struct dp_engram_check res;
	char err[512] = "";
	int r;

	if (argc != 2) {
		usage(stderr);
		return EXIT_BAD;
	}
	r = dp_engram_golden_check_file(argv[1], &res, err, sizeof(err));
	if (r < 0) {
		fprintf(stderr, "dp-engram: %s\n", *err ? err : strerror(-r));
		return EXIT_BAD;
	}
	if (res.n_mismatch) {
		const struct dp_engram_mismatch *m = &res.first;

		printf("%s: MISMATCH (%" PRId64 " of %" PRId64
		       " values differ); first: %s, layer %d",
		       argv[1], res.n_mismatch, res.n_checked, dp_engram_check_kind_name(m->kind),
		       m->layer_id);
		if (m->kind == DP_ENGRAM_CHECK_MULTIPLIER)
			printf(", index %d", m->index);
		else if (m->kind == DP_ENGRAM_CHECK_HASH)
			printf(", input row %" PRId64 ", position %" PRId64 ", column %d", m->row,
			       m->position, m->index);
		else
			printf(", column %d", m->index);
		printf(": expected %" PRId64 ", got %" PRId64 "\n", m->expected, m->got);
		return EXIT_MISMATCH;
	}
	printf("%s: ok (%" PRId64 " values: multipliers, table sizes and hashes match)\n", argv[1],
	       res.n_checked);
	return 0;
}

/* "1,2,-3" -> ids; returns the count or -1 (message printed). */
static long parse_tokens(const char *s, int64_t **ret)
{
	size_t n = 1, i = 0;
	int64_t *ids;
	const char *p = s;

	for (const char *q = s; *q; q++)
		n += *q == ',';
	ids = malloc(n * sizeof(*ids));
	if (!ids) {
		fprintf(stderr, "dp-engram: out of memory\n");
		return -1;
	}
	while (i < n) {
		char *end;
		long long v;

		errno = 0;
		v = strtoll(p, &end, 10);
		if (end == p || errno || (*end && *end != ',')) {
			fprintf(stderr,
			        "dp-engram: --tokens: \"%s\" is not a comma-separated list of "
			        "integers\n",
			        s);
			free(ids);
			return -1;
		}
		ids[i++] = v;
		p = end + 1;
	}
	*ret = ids;
	return (long)n;
}

static int cmd_hash(int argc, char **argv)
{
	static const struct option opts[] = {
	    {"config", required_argument, NULL, 'c'},
	    {"tokens", required_argument, NULL, 't'},
	    {"global", no_argument, NULL, 'g'},
	    {"help", no_argument, NULL, 'h'},
	    {0},
	};
	const char *config = NULL, *tokens = NULL;
	struct dp_engram_config c;
	struct dp_engram_hash *h = NULL;
	int64_t *ids = NULL, *rows = NULL;
	char err[512] = "";
	bool global = false;
	int opt, r, ret = EXIT_BAD, ncols, nl;
	long n;

	optind = 1;
	while ((opt = getopt_long(argc, argv, "c:t:gh", opts, NULL)) != -1) {
		switch (opt) {
		case 'c':
			config = optarg;
			break;
		case 't':
			tokens = optarg;
			break;
		case 'g':
			global = true;
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return EXIT_BAD;
		}
	}
	if (!config || !tokens || optind != argc) {
		usage(stderr);
		return EXIT_BAD;
	}
	r = dp_engram_config_load(config, &c, err, sizeof(err));
	if (r < 0) {
		fprintf(stderr, "dp-engram: %s\n", *err ? err : strerror(-r));
		return EXIT_BAD;
	}
	r = dp_engram_hash_new(&c, &h);
	dp_engram_config_fini(&c);
	if (r < 0) {
		fprintf(stderr, "dp-engram: %s: %s\n", config, strerror(-r));
		return EXIT_BAD;
	}
	n = parse_tokens(tokens, &ids);
	if (n < 0)
		goto out;
	nl = dp_engram_hash_n_layers(h);
	ncols = dp_engram_hash_n_columns(h);
	rows = malloc((size_t)nl * (size_t)n * (size_t)ncols * sizeof(*rows));
	if (!rows) {
		fprintf(stderr, "dp-engram: out of memory\n");
		goto out;
	}
	r = dp_engram_hash_sequence(h, NULL, ids, (size_t)n, rows);
	if (r < 0) {
		fprintf(stderr,
		        "dp-engram: --tokens: %s (the compression map has %" PRId64 " entries)\n",
		        r == -ERANGE ? "an id is outside the compression map" : strerror(-r),
		        dp_engram_hash_map_size(h));
		goto out;
	}
	for (int l = 0; l < nl; l++) {
		const int64_t *m = dp_engram_hash_multipliers(h, l);
		const int64_t *sz = dp_engram_hash_table_sizes(h, l);
		const int64_t *off = dp_engram_hash_offsets(h, l);

		printf("layer %d\n  multipliers:", dp_engram_hash_layer_id(h, l));
		for (int k = 0; k < dp_engram_hash_max_ngram(h); k++)
			printf(" %" PRId64, m[k]);
		printf("\n  table sizes:");
		for (int col = 0; col < ncols; col++)
			printf(" %" PRId64, sz[col]);
		printf("\n  rows (%s):\n", global ? "global" : "local to each head");
		for (long t = 0; t < n; t++) {
			const int64_t *row =
			    rows + ((size_t)l * (size_t)n + (size_t)t) * (size_t)ncols;

			printf("    t=%ld id=%" PRId64 ":", t, ids[t]);
			for (int col = 0; col < ncols; col++)
				printf(" %" PRId64, row[col] + (global ? off[col] : 0));
			printf("\n");
		}
	}
	ret = 0;
out:
	free(rows);
	free(ids);
	dp_engram_hash_free(h);
	return ret;
}

/* ---- table files ------------------------------------------------------------- */

/* A model config's Engram hash, for table geometry. */
static int load_geometry(const char *config, struct dp_v4_config *c, struct dp_engram_hash **h)
{
	char err[512] = "";
	int r = dp_v4_config_load(config, c, err, sizeof(err));

	if (r < 0) {
		fprintf(stderr, "dp-engram: %s\n", *err ? err : strerror(-r));
		return r;
	}
	r = dp_engram_hash_from_v4_config(c, h, err, sizeof(err));
	if (r < 0) {
		fprintf(stderr, "dp-engram: %s: %s\n", config, *err ? err : strerror(-r));
		dp_v4_config_fini(c);
	}
	return r;
}

/* Options shared by convert and make-random. */
struct table_opts {
	const char *config;
	enum dp_engram_dtype dtype;
	uint64_t seed;
	double std;
};

static int parse_table_opts(int argc, char **argv, struct table_opts *o, int *ret_first)
{
	static const struct option opts[] = {
	    {"config", required_argument, NULL, 'c'}, {"dtype", required_argument, NULL, 'd'},
	    {"seed", required_argument, NULL, 's'},   {"std", required_argument, NULL, 'x'},
	    {"help", no_argument, NULL, 'h'},         {0},
	};
	int opt;
	char *end;

	optind = 1;
	while ((opt = getopt_long(argc, argv, "c:d:s:x:h", opts, NULL)) != -1) {
		switch (opt) {
		case 'c':
			o->config = optarg;
			break;
		case 'd':
			if (dp_engram_dtype_parse(optarg, &o->dtype) < 0) {
				fprintf(stderr, "dp-engram: --dtype must be bf16 or fp8, not %s\n",
				        optarg);
				return -EINVAL;
			}
			break;
		case 's':
			errno = 0;
			o->seed = strtoull(optarg, &end, 10);
			if (errno || *end || end == optarg) {
				fprintf(stderr, "dp-engram: --seed: not a number: %s\n", optarg);
				return -EINVAL;
			}
			break;
		case 'x':
			o->std = strtod(optarg, &end);
			if (*end || end == optarg || !(o->std > 0 && o->std < 1e6)) {
				fprintf(stderr, "dp-engram: --std: not a positive number: %s\n",
				        optarg);
				return -EINVAL;
			}
			break;
		case 'h':
			usage(stdout);
			return 1;
		default:
			usage(stderr);
			return -EINVAL;
		}
	}
	*ret_first = optind;
	return 0;
}

static int open_writer(const char *out, const struct dp_engram_hash *h,
                       const struct dp_v4_config *c, enum dp_engram_dtype dtype,
                       struct dp_engram_writer **w)
{
	struct dp_engram_table_spec spec = {
	    .hash = h, .dtype = dtype, .head_dim = (uint32_t)c->engram.head_dim};
	char err[512] = "";
	int r = dp_engram_writer_new(out, &spec, w, err, sizeof(err));

	if (r < 0)
		fprintf(stderr, "dp-engram: %s\n", *err ? err : strerror(-r));
	return r;
}

static int finish_writer(struct dp_engram_writer *w, const char *out, double t0)
{
	char err[512] = "";
	uint64_t total;
	int r = dp_engram_writer_finish(w, err, sizeof(err));

	if (r < 0) {
		fprintf(stderr, "dp-engram: %s\n", *err ? err : strerror(-r));
		return r;
	}
	dp_engram_writer_rows(w, &total);
	printf("%s: %" PRIu64 " rows written in %.1f s\n", out, total, dp_clock_s() - t0);
	return 0;
}

static int cmd_convert(int argc, char **argv)
{
	struct table_opts o = {.dtype = DP_ENGRAM_DTYPE_BF16};
	char cfgbuf[4096], err[512] = "";
	struct dp_v4_config c = {0};
	struct dp_engram_hash *h = NULL;
	struct dp_engram_writer *w = NULL;
	struct dp_st *st = NULL;
	float *buf = NULL;
	int first, r, ret = EXIT_BAD;
	struct stat sb;

	r = parse_table_opts(argc, argv, &o, &first);
	if (r)
		return r > 0 ? 0 : EXIT_BAD;
	if (argc - first != 2) {
		usage(stderr);
		return EXIT_BAD;
	}
	const char *in = argv[first], *out = argv[first + 1];
	bool dir = stat(in, &sb) == 0 && S_ISDIR(sb.st_mode);
	if (!o.config) {
		const char *slash = strrchr(in, '/');
		if (dir)
			snprintf(cfgbuf, sizeof(cfgbuf), "%s/config.json", in);
		else
			snprintf(cfgbuf, sizeof(cfgbuf), "%.*sconfig.json",
			         slash ? (int)(slash - in + 1) : 0, in);
		o.config = cfgbuf;
	}
	if (load_geometry(o.config, &c, &h) < 0)
		return EXIT_BAD;
	r = dir ? dp_st_open_dir(in, &st, err, sizeof(err))
	        : dp_st_open_file(in, &st, err, sizeof(err));
	if (r < 0) {
		fprintf(stderr, "dp-engram: %s\n", *err ? err : strerror(-r));
		goto out;
	}
	if (open_writer(out, h, &c, o.dtype, &w) < 0)
		goto out;
	double t0 = dp_clock_s();
	uint32_t hd = (uint32_t)c.engram.head_dim;
	const uint64_t chunk = 16384;
	buf = malloc(chunk * hd * sizeof(float));
	if (!buf) {
		fprintf(stderr, "dp-engram: out of memory\n");
		goto out;
	}
	for (int slot = 0; slot < dp_engram_hash_n_layers(h); slot++) {
		int layer = dp_engram_hash_layer_id(h, slot);
		uint64_t rows =
		    (uint64_t)dp_engram_hash_offsets(h, slot)[dp_engram_hash_n_columns(h)];
		struct dp_st_tensor t;
		char name[2][160];

		snprintf(name[0], sizeof(name[0]),
		         "model.layers.%d.engram.multi_head_embedding.embedding.weight", layer);
		snprintf(name[1], sizeof(name[1]),
		         "layers.%d.engram.multi_head_embedding.embedding.weight", layer);
		r = dp_st_get(st, name[0], &t);
		if (r < 0)
			r = dp_st_get(st, name[1], &t);
		if (r < 0) {
			fprintf(stderr,
			        "dp-engram: %s: no table for Engram layer %d (looked for '%s' "
			        "and '%s')\n",
			        in, layer, name[0], name[1]);
			goto out;
		}
		if (t.ndim != 2 || (uint64_t)t.shape[0] != rows || (uint64_t)t.shape[1] != hd) {
			char shp[128];
			fprintf(
			    stderr,
			    "dp-engram: %s: tensor '%s' has shape %s; the config's hashing "
			    "needs [%" PRIu64 ", %u] (the layer's table sizes add up to %" PRIu64
			    ", engram_head_dim %u)\n",
			    in, t.name, dp_st_shape_str(&t, shp, sizeof(shp)), rows, hd, rows, hd);
			goto out;
		}
		for (uint64_t done = 0; done < rows; done += chunk) {
			uint64_t k = rows - done < chunk ? rows - done : chunk;
			r = dp_st_read_f32(&t, done * hd, k * hd, buf);
			if (r < 0) {
				fprintf(stderr, "dp-engram: %s: reading '%s' failed: %s\n", in,
				        t.name, strerror(-r));
				goto out;
			}
			r = dp_engram_writer_put(w, buf, k, err, sizeof(err));
			if (r < 0) {
				fprintf(stderr, "dp-engram: %s\n", *err ? err : strerror(-r));
				goto out;
			}
		}
	}
	if (finish_writer(w, out, t0) == 0)
		ret = 0;
out:
	free(buf);
	dp_engram_writer_free(w);
	dp_st_free(st);
	dp_engram_hash_free(h);
	dp_v4_config_fini(&c);
	return ret;
}

/* xorshift64*: uniform floats in [-1, 1) */
static inline float next_uniform(uint64_t *x)
{
	*x ^= *x >> 12;
	*x ^= *x << 25;
	*x ^= *x >> 27;
	uint64_t v = *x * 0x2545f4914f6cdd1dull;
	return (float)((int64_t)v >> 40) * 0x1p-23f;
}

static int cmd_make_random(int argc, char **argv)
{
	struct table_opts o = {.dtype = DP_ENGRAM_DTYPE_BF16, .seed = 1, .std = 0.5};
	struct dp_v4_config c = {0};
	struct dp_engram_hash *h = NULL;
	struct dp_engram_writer *w = NULL;
	float *buf = NULL;
	char err[512] = "";
	int first, r, ret = EXIT_BAD;

	r = parse_table_opts(argc, argv, &o, &first);
	if (r)
		return r > 0 ? 0 : EXIT_BAD;
	if (argc - first != 1 || !o.config) {
		usage(stderr);
		return EXIT_BAD;
	}
	const char *out = argv[first];
	if (load_geometry(o.config, &c, &h) < 0)
		return EXIT_BAD;
	if (open_writer(out, h, &c, o.dtype, &w) < 0)
		goto out;
	double t0 = dp_clock_s();
	uint32_t hd = (uint32_t)c.engram.head_dim;
	const uint64_t chunk = 16384;
	uint64_t total, x = o.seed * 0x9e3779b97f4a7c15ull | 1;
	float a = (float)(o.std * 1.7320508075688772); /* uniform [-a, a) has std a / sqrt(3) */
	buf = malloc(chunk * hd * sizeof(float));
	if (!buf) {
		fprintf(stderr, "dp-engram: out of memory\n");
		goto out;
	}
	dp_engram_writer_rows(w, &total);
	for (uint64_t done = 0; done < total; done += chunk) {
		uint64_t k = total - done < chunk ? total - done : chunk;
		for (uint64_t i = 0; i < k * hd; i++)
			buf[i] = a * next_uniform(&x);
		r = dp_engram_writer_put(w, buf, k, err, sizeof(err));
		if (r < 0) {
			fprintf(stderr, "dp-engram: %s\n", *err ? err : strerror(-r));
			goto out;
		}
	}
	if (finish_writer(w, out, t0) == 0)
		ret = 0;
out:
	free(buf);
	dp_engram_writer_free(w);
	dp_engram_hash_free(h);
	dp_v4_config_fini(&c);
	return ret;
}

static int cmd_info(int argc, char **argv, bool verify)
{
	struct dp_engram_table *t;
	struct dp_engram_table_info in;
	char err[512] = "";

	if (argc != 2) {
		usage(stderr);
		return EXIT_BAD;
	}
	int r = dp_engram_table_open(argv[1], &t, err, sizeof(err));
	if (r < 0) {
		fprintf(stderr, "dp-engram: %s\n", *err ? err : strerror(-r));
		return EXIT_BAD;
	}
	dp_engram_table_get_info(t, &in);
	printf("%s: Engram table version %u, %s rows of %u values (%u bytes, %u per %u-byte "
	       "block)\n  %u layers, n-grams 2..%u, %u heads per order (%u columns); %" PRIu64
	       " data bytes after a %" PRIu64 "-byte header\n",
	       argv[1], in.version, dp_engram_dtype_name(in.dtype), in.head_dim, in.row_bytes,
	       in.rows_per_block, in.block_bytes, in.n_layers, in.max_ngram_size, in.n_heads,
	       in.n_columns, in.data_bytes, in.header_bytes);
	for (int i = 0; i < (int)in.n_layers; i++) {
		int id;
		uint64_t rows, off;
		const int64_t *sz = dp_engram_table_sizes(t, i);
		dp_engram_table_layer(t, i, &id, &rows, &off);
		printf("  layer %d: %" PRIu64 " rows at offset %" PRIu64 "; table sizes", id, rows,
		       off);
		for (uint32_t col = 0; col < in.n_columns; col++)
			printf(" %" PRId64, sz[col]);
		printf("\n");
	}
	r = 0;
	if (verify) {
		r = dp_engram_table_verify(t, err, sizeof(err));
		if (r < 0)
			fprintf(stderr, "dp-engram: %s\n", *err ? err : strerror(-r));
		else
			printf("%s: data checksum ok\n", argv[1]);
	}
	dp_engram_table_close(t);
	return r == -EBADMSG ? EXIT_MISMATCH : r < 0 ? EXIT_BAD : 0;
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		usage(stderr);
		return EXIT_BAD;
	}
	if (!strcmp(argv[1], "check-hash"))
		return cmd_check_hash(argc - 1, argv + 1);
	if (!strcmp(argv[1], "hash"))
		return cmd_hash(argc - 1, argv + 1);
	if (!strcmp(argv[1], "convert"))
		return cmd_convert(argc - 1, argv + 1);
	if (!strcmp(argv[1], "make-random"))
		return cmd_make_random(argc - 1, argv + 1);
	if (!strcmp(argv[1], "info"))
		return cmd_info(argc - 1, argv + 1, false);
	if (!strcmp(argv[1], "verify"))
		return cmd_info(argc - 1, argv + 1, true);
	if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
		usage(stdout);
		return 0;
	}
	fprintf(stderr, "dp-engram: unknown command \"%s\"\n", argv[1]);
	usage(stderr);
	return EXIT_BAD;
}
