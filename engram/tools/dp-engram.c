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
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engram/engram.h"

#define EXIT_MISMATCH 1
#define EXIT_BAD      2

static void usage(FILE *f)
{
	fprintf(f, "usage: dp-engram check-hash FILE.json\n"
	           "       dp-engram hash --config FILE.json --tokens ID,ID,... [--global]\n");
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
	if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
		usage(stdout);
		return 0;
	}
	fprintf(stderr, "dp-engram: unknown command \"%s\"\n", argv[1]);
	usage(stderr);
	return EXIT_BAD;
}
