/* SPDX-License-Identifier: MIT */
/*
 * The command line, clock and result line of agentic-stream-socket and
 * agentic-stream-http (stream.h).
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "stream.h"

int stream_opts_parse(struct stream_opts *o, int argc, char **argv, const char *addr_opt,
                      const char *addr_what)
{
	const char *prompt = NULL;
	const struct option opts[] = {
	    {addr_opt, required_argument, NULL, 'a'},
	    {"streams", required_argument, NULL, 'c'},
	    {"tokens", required_argument, NULL, 'n'},
	    {"prompt", required_argument, NULL, 'p'},
	    {0},
	};
	int c;
	*o = (struct stream_opts){.streams = 1, .tokens = 128};
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case 'a':
			o->addr = optarg;
			break;
		case 'c':
			o->streams = (unsigned)strtoul(optarg, NULL, 10);
			break;
		case 'n':
			o->tokens = (unsigned)strtoul(optarg, NULL, 10);
			break;
		case 'p':
			prompt = optarg;
			break;
		default:
			return 2;
		}
	}
	if (!o->addr || !prompt || !o->streams || o->streams > 4096 || !o->tokens) {
		fprintf(stderr, "usage: %s --%s %s --streams 1..4096 --tokens N --prompt ID,...\n",
		        argv[0], addr_opt, addr_what);
		return 2;
	}
	for (const char *p = prompt; *p;) {
		char *end;
		unsigned long v = strtoul(p, &end, 10);
		if (end == p || (*end && *end != ',') || v > UINT32_MAX) {
			fprintf(stderr, "--prompt: '%s' is not a list of ids\n", prompt);
			return 2;
		}
		if (o->n_ids == STREAM_MAX_IDS) {
			fprintf(stderr, "--prompt: more than %d ids\n", STREAM_MAX_IDS);
			return 2;
		}
		o->ids[o->n_ids++] = (uint32_t)v;
		p = *end ? end + 1 : end;
	}
	return 0;
}

double stream_now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

void stream_print(unsigned streams, uint64_t got, double wall_s, double *ttft)
{
	qsort(ttft, streams, sizeof(*ttft), cmp_double);
	printf("streams=%u tokens=%llu wall_s=%.3f tok_s=%.0f ttft_p50_ms=%.1f ttft_p99_ms=%.1f\n",
	       streams, (unsigned long long)got, wall_s, (double)got / wall_s,
	       1000 * ttft[streams / 2], 1000 * ttft[(size_t)(0.99 * (streams - 1))]);
}
