/* SPDX-License-Identifier: MIT */
/*
 * v4ctl trace — the daemon's recent step records as Chrome trace-event
 * JSON (the "JSON Object Format" that chrome://tracing and Perfetto read):
 *
 *	{"traceEvents":[
 *	  {"name":"process_name","ph":"M","pid":1,"args":{"name":"dualpathd"}},
 *	  {"name":"thread_name","ph":"M","pid":1,"tid":1,"args":{"name":"compute"}},
 *	  {"name":"thread_name","ph":"M","pid":1,"tid":2,"args":{"name":"io"}},
 *	  {"name":"step","ph":"X","ts":START_US,"dur":DUR_US,"pid":1,"tid":1,
 *	   "args":{"tokens":12,"batch":2}}, ...],
 *	 "displayTimeUnit":"ms"}
 *
 * Lane "compute" is tid 1, anything else tid 2 ("io"). Timestamps are
 * microseconds since the daemon started. Numeric argument values become
 * JSON numbers.
 */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "v4ctl/v4ctl.h"

static const char usage[] =
    "usage: v4ctl trace --out FILE [--max N]                    (admin)\n"
    "\n"
    "Write the daemon's recent per-step timing records (compute steps, the\n"
    "stalls inside them where compute waited for a layer's pages, holds\n"
    "where no step ran because a returning session's state would have come\n"
    "late and nothing else was ready, I/O restores) as Chrome trace-event\n"
    "JSON, for https://ui.perfetto.dev or chrome://tracing: one track per\n"
    "lane, \"compute\" and \"io\".\n"
    "\n"
    "Options:\n"
    "  --out FILE      where to write ('-': stdout)\n"
    "  --max N         the N most recent events (default 0: all the daemon keeps)\n"
    "  --socket PATH, --timeout MS   as for every command\n";

enum { OPT_OUT = DP_V4CTL_OPT_FIRST_COMMAND, OPT_MAX };

#define TID_COMPUTE 1
#define TID_IO      2

static json_t *arg_value(const char *v)
{
	char *end;
	if (v && *v) {
		errno = 0;
		long long x = strtoll(v, &end, 10);
		if (!errno && !*end)
			return json_integer(x);
		double d = strtod(v, &end);
		if (!errno && !*end)
			return json_real(d);
	}
	return json_string(v ? v : "");
}

static json_t *meta(const char *what, int tid, const char *name)
{
	json_t *e = json_pack("{s:s, s:s, s:i, s:{s:s}}", "name", what, "ph", "M", "pid", 1, "args",
	                      "name", name);
	if (e && tid)
		json_object_set_new(e, "tid", json_integer(tid));
	return e;
}

static json_t *build(const Dualpath__V1__TraceReply *t)
{
	json_t *evs = json_array();
	json_array_append_new(evs, meta("process_name", 0, "dualpathd"));
	json_array_append_new(evs, meta("thread_name", TID_COMPUTE, "compute"));
	json_array_append_new(evs, meta("thread_name", TID_IO, "io"));
	for (size_t i = 0; i < t->n_events; i++) {
		const Dualpath__V1__TraceEvent *e = t->events[i];
		json_t *args = json_object();
		for (size_t k = 0; k < e->n_args; k++)
			json_object_set_new(args, e->args[k]->name, arg_value(e->args[k]->value));
		bool compute = e->lane && !strcmp(e->lane, "compute");
		json_array_append_new(
		    evs, json_pack("{s:s, s:s, s:s, s:I, s:I, s:i, s:i, s:o}", "name",
		                   e->name && e->name[0] ? e->name : "event", "cat",
		                   e->lane ? e->lane : "", "ph", "X", "ts", (json_int_t)e->start_us,
		                   "dur", (json_int_t)e->dur_us, "pid", 1, "tid",
		                   compute ? TID_COMPUTE : TID_IO, "args", args));
	}
	return json_pack("{s:o, s:s}", "traceEvents", evs, "displayTimeUnit", "ms");
}

int dp_v4ctl_trace(struct dp_v4ctl *ctl, int argc, char **argv)
{
	static const struct option opts[] = {
	    DP_V4CTL_COMMON_OPTS,
	    {"out", required_argument, NULL, OPT_OUT},
	    {"max", required_argument, NULL, OPT_MAX},
	    {0},
	};
	const char *out = NULL;
	uint64_t max = 0;
	int opt;

	opterr = 0;
	while ((opt = getopt_long(argc, argv, DP_V4CTL_COMMON_SHORT "o:", opts, NULL)) != -1) {
		int r = dp_v4ctl_common_opt(ctl, opt, optarg, usage);
		if (r < 0)
			return DP_V4CTL_EXIT_USAGE;
		if (r > 0)
			continue;
		if (opt == OPT_OUT || opt == 'o') {
			out = optarg;
		} else if (opt == OPT_MAX) {
			if (dp_v4ctl_parse_u64("--max", optarg, 0, UINT32_MAX, &max) < 0)
				return DP_V4CTL_EXIT_USAGE;
		} else {
			return dp_v4ctl_usage_error(
			    "trace", "unknown option or missing value: '%s'", argv[optind - 1]);
		}
	}
	if (optind < argc)
		return dp_v4ctl_usage_error("trace", "unexpected argument '%s'", argv[optind]);
	if (!out || !out[0])
		return dp_v4ctl_usage_error("trace", "where to? give --out FILE ('-' for stdout)");

	struct dp_client *c;
	int ret = dp_v4ctl_open(ctl, &c);
	if (ret)
		return ret;
	Dualpath__V1__Request req = DUALPATH__V1__REQUEST__INIT;
	Dualpath__V1__TraceRequest tr = DUALPATH__V1__TRACE_REQUEST__INIT;
	Dualpath__V1__Response *r = NULL;
	tr.max_events = (uint32_t)max;
	req.body_case = DUALPATH__V1__REQUEST__BODY_TRACE;
	req.trace = &tr;
	ret = dp_v4ctl_call(ctl, c, &req, DUALPATH__V1__RESPONSE__BODY_TRACE, &r);
	dp_client_free(c);
	if (ret)
		return ret;

	json_t *root = build(r->trace);
	size_t n = r->trace->n_events;
	dp_proto_response_free(r);
	if (!root) {
		fprintf(stderr, "v4ctl: out of memory building the trace\n");
		return DP_V4CTL_EXIT_PROTOCOL;
	}
	bool to_stdout = !strcmp(out, "-");
	FILE *f = to_stdout ? stdout : fopen(out, "w");
	if (!f) {
		fprintf(stderr, "v4ctl: cannot write %s: %s\n", out, strerror(errno));
		json_decref(root);
		return DP_V4CTL_EXIT_PROTOCOL;
	}
	int bad =
	    json_dumpf(root, f, JSON_COMPACT | JSON_PRESERVE_ORDER) < 0 || fputc('\n', f) == EOF;
	bad |= to_stdout ? fflush(f) != 0 : fclose(f) != 0;
	json_decref(root);
	if (bad) {
		fprintf(stderr, "v4ctl: cannot write %s: %s\n", to_stdout ? "stdout" : out,
		        strerror(errno));
		return DP_V4CTL_EXIT_PROTOCOL;
	}
	if (!to_stdout)
		fprintf(stderr,
		        "v4ctl: wrote %zu events to %s (open it in https://ui.perfetto.dev "
		        "or chrome://tracing)\n",
		        n, out);
	return DP_V4CTL_EXIT_OK;
}
