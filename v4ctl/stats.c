/* SPDX-License-Identifier: MIT */
/*
 * v4ctl stats — the daemon's metrics as a table, JSON, or the Prometheus
 * text exposition format (version 0.0.4):
 *
 *	# HELP dualpath_tokens_total tokens through the model
 *	# TYPE dualpath_tokens_total counter
 *	dualpath_tokens_total{phase="prefill"} 1234
 *	dualpath_tokens_total{phase="decode"} 56
 *
 * Samples of one name are grouped under one HELP/TYPE pair, in the order
 * the names first appear; HELP text escapes '\' and newline, label values
 * also '"'.
 */
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "v4ctl/v4ctl.h"

static const char usage[] =
    "usage: v4ctl stats [--json | --prometheus]\n"
    "\n"
    "Print the daemon's metrics: an aligned table (default), JSON\n"
    "({\"metrics\":[{\"name\",\"help\",\"type\",\"value\",\"labels\":{}}]}), or the\n"
    "Prometheus text exposition format.\n"
    "\n"
    "Options:\n"
    "  --json          JSON\n"
    "  --prometheus    Prometheus text format (# HELP / # TYPE, name{label=\"v\"} value)\n"
    "  --socket PATH, --timeout MS   as for every command\n";

enum { OPT_JSON = DP_V4CTL_OPT_FIRST_COMMAND, OPT_PROM };
enum fmt { FMT_TABLE, FMT_JSON, FMT_PROM };

static const char *type_name(Dualpath__V1__MetricType t)
{
	switch (t) {
	case DUALPATH__V1__METRIC_TYPE__METRIC_COUNTER:
		return "counter";
	case DUALPATH__V1__METRIC_TYPE__METRIC_GAUGE:
		return "gauge";
	default:
		return "untyped";
	}
}

/* A Prometheus sample value: Go's ParseFloat syntax. */
static void fmt_value(double v, bool exact, char *buf, size_t len)
{
	if (isnan(v))
		snprintf(buf, len, "NaN");
	else if (isinf(v))
		snprintf(buf, len, v > 0 ? "+Inf" : "-Inf");
	else if (v == floor(v) && fabs(v) < 1e15)
		snprintf(buf, len, "%.0f", v);
	else
		snprintf(buf, len, exact ? "%.17g" : "%.6g", v);
}

static void put_escaped(FILE *f, const char *s, bool quote)
{
	for (; s && *s; s++) {
		if (*s == '\\')
			fputs("\\\\", f);
		else if (*s == '\n')
			fputs("\\n", f);
		else if (quote && *s == '"')
			fputs("\\\"", f);
		else
			fputc(*s, f);
	}
}

/* name{a="x",b="y"} into f (Prometheus escaping) */
static void put_series(FILE *f, const Dualpath__V1__Metric *m)
{
	fputs(m->name, f);
	if (!m->n_labels)
		return;
	fputc('{', f);
	for (size_t i = 0; i < m->n_labels; i++) {
		fprintf(f, "%s%s=\"", i ? "," : "", m->labels[i]->name);
		put_escaped(f, m->labels[i]->value, true);
		fputc('"', f);
	}
	fputc('}', f);
}

static void print_prometheus(const Dualpath__V1__StatsReply *s)
{
	bool *done = calloc(s->n_metrics ? s->n_metrics : 1, sizeof(*done));
	for (size_t i = 0; i < s->n_metrics; i++) {
		if (done && done[i])
			continue;
		const Dualpath__V1__Metric *m = s->metrics[i];
		fprintf(stdout, "# HELP %s ", m->name);
		put_escaped(stdout, m->help, false);
		fprintf(stdout, "\n# TYPE %s %s\n", m->name, type_name(m->type));
		/* every sample of this name, wherever the daemon listed it */
		for (size_t j = i; j < s->n_metrics; j++) {
			const Dualpath__V1__Metric *x = s->metrics[j];
			if (strcmp(x->name, m->name))
				continue;
			if (!done && j != i)
				continue; /* out of memory: no grouping, no duplicates */
			if (done)
				done[j] = true;
			char v[64];
			fmt_value(x->value, true, v, sizeof(v));
			put_series(stdout, x);
			fprintf(stdout, " %s\n", v);
		}
	}
	free(done);
}

static int print_json(const Dualpath__V1__StatsReply *s)
{
	json_t *arr = json_array();
	for (size_t i = 0; i < s->n_metrics; i++) {
		const Dualpath__V1__Metric *m = s->metrics[i];
		json_t *labels = json_object();
		for (size_t k = 0; k < m->n_labels; k++)
			json_object_set_new(labels, m->labels[k]->name,
			                    json_string(m->labels[k]->value));
		json_t *val;
		if (!isfinite(m->value))
			val = json_null(); /* JSON has no NaN or Inf */
		else if (m->value == floor(m->value) && fabs(m->value) < 9e15)
			val = json_integer((json_int_t)m->value);
		else
			val = json_real(m->value);
		json_array_append_new(arr, json_pack("{s:s, s:s, s:s, s:o, s:o}", "name", m->name,
		                                     "help", m->help ? m->help : "", "type",
		                                     type_name(m->type), "value", val, "labels",
		                                     labels));
	}
	json_t *root = json_pack("{s:o}", "metrics", arr);
	int ret = root ? json_dumpf(root, stdout, JSON_INDENT(2) | JSON_PRESERVE_ORDER) : -1;
	fputc('\n', stdout);
	json_decref(root);
	return ret;
}

/* name{labels} as a string the caller frees (NULL: out of memory) */
static char *series(const Dualpath__V1__Metric *m)
{
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);
	if (!f)
		return NULL;
	put_series(f, m);
	if (fclose(f) != 0) {
		free(buf);
		return NULL;
	}
	return buf;
}

static void print_table(const Dualpath__V1__StatsReply *s)
{
	size_t n = s->n_metrics, wname = strlen("METRIC"), wval = strlen("VALUE");
	char **names = calloc(n ? n : 1, sizeof(*names));
	char(*vals)[64] = calloc(n ? n : 1, sizeof(*vals));

	if (!names || !vals) {
		free(names);
		free(vals);
		return;
	}
	for (size_t i = 0; i < n; i++) {
		names[i] = series(s->metrics[i]);
		fmt_value(s->metrics[i]->value, false, vals[i], sizeof(vals[i]));
		if (names[i] && strlen(names[i]) > wname)
			wname = strlen(names[i]);
		if (strlen(vals[i]) > wval)
			wval = strlen(vals[i]);
	}
	printf("%-*s  %*s  %s\n", (int)wname, "METRIC", (int)wval, "VALUE", "HELP");
	for (size_t i = 0; i < n; i++) {
		const Dualpath__V1__Metric *m = s->metrics[i];
		printf("%-*s  %*s  %s\n", (int)wname, names[i] ? names[i] : m->name, (int)wval,
		       vals[i], m->help ? m->help : "");
		free(names[i]);
	}
	free(names);
	free(vals);
}

int dp_v4ctl_stats(struct dp_v4ctl *ctl, int argc, char **argv)
{
	static const struct option opts[] = {
	    DP_V4CTL_COMMON_OPTS,
	    {"json", no_argument, NULL, OPT_JSON},
	    {"prometheus", no_argument, NULL, OPT_PROM},
	    {0},
	};
	enum fmt fmt = FMT_TABLE;
	int opt;

	opterr = 0;
	while ((opt = getopt_long(argc, argv, DP_V4CTL_COMMON_SHORT, opts, NULL)) != -1) {
		int r = dp_v4ctl_common_opt(ctl, opt, optarg, usage);
		if (r < 0)
			return DP_V4CTL_EXIT_USAGE;
		if (r > 0)
			continue;
		if (opt == OPT_JSON || opt == OPT_PROM) {
			enum fmt want = opt == OPT_JSON ? FMT_JSON : FMT_PROM;
			if (fmt != FMT_TABLE && fmt != want)
				return dp_v4ctl_usage_error(
				    "stats", "--json and --prometheus exclude each other");
			fmt = want;
			continue;
		}
		return dp_v4ctl_usage_error("stats", "unknown option or missing value: '%s'",
		                            argv[optind - 1]);
	}
	if (optind < argc)
		return dp_v4ctl_usage_error("stats", "unexpected argument '%s'", argv[optind]);

	struct dp_client *c;
	int ret = dp_v4ctl_open(ctl, &c);
	if (ret)
		return ret;
	Dualpath__V1__Request req = DUALPATH__V1__REQUEST__INIT;
	Dualpath__V1__StatsRequest sr = DUALPATH__V1__STATS_REQUEST__INIT;
	Dualpath__V1__Response *r = NULL;
	req.body_case = DUALPATH__V1__REQUEST__BODY_STATS;
	req.stats = &sr;
	ret = dp_v4ctl_call(ctl, c, &req, DUALPATH__V1__RESPONSE__BODY_STATS, &r);
	if (ret == DP_V4CTL_EXIT_OK) {
		if (fmt == FMT_PROM)
			print_prometheus(r->stats);
		else if (fmt == FMT_JSON)
			print_json(r->stats);
		else
			print_table(r->stats);
		if (fflush(stdout) != 0 || ferror(stdout))
			ret = DP_V4CTL_EXIT_PROTOCOL;
	}
	dp_proto_response_free(r);
	dp_client_free(c);
	return ret;
}
