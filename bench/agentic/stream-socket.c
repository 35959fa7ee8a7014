/* SPDX-License-Identifier: MIT */
/*
 * agentic-stream-socket — the Unix-socket side of the HTTP streaming
 * comparison (tests/http/bench_http.py runs it beside its HTTP streams on
 * the same daemon): C concurrent Generate streams, one connection and
 * thread each, every stream the same prompt ids and --tokens tokens
 * (ignore_eos, temperature 0.8, seed 1), as the HTTP side asks.
 *
 *	agentic-stream-socket --socket PATH --streams C --tokens N --prompt ID,ID,...
 *
 * Prints one line: streams=C tokens=T wall_s=S tok_s=R ttft_p50_ms=X ttft_p99_ms=Y
 * (TTFT: the Generate's write to the first chunk with ids; tok_s: ids
 * received by all streams over the wall time). Exit status 1 on any error.
 */
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "v4ctl/client.h"

struct stream {
	pthread_t th;
	const char *sock;
	uint32_t *ids;
	size_t n_ids;
	uint32_t tokens;
	double ttft;
	uint64_t got;
	int ret;
};

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void *stream_main(void *arg)
{
	struct stream *s = arg;
	struct dp_client *c = NULL;
	Dualpath__V1__Request req = DUALPATH__V1__REQUEST__INIT;
	Dualpath__V1__Generate g = DUALPATH__V1__GENERATE__INIT;
	Dualpath__V1__TokenIds tk = DUALPATH__V1__TOKEN_IDS__INIT;
	Dualpath__V1__Sampling sp = DUALPATH__V1__SAMPLING__INIT;
	s->ret = dp_client_connect(s->sock, 60000, &c);
	if (s->ret == 0)
		s->ret = dp_client_hello(c, "agentic-stream-socket");
	if (s->ret < 0)
		goto out;
	tk.n_ids = s->n_ids;
	tk.ids = s->ids;
	sp.temperature = 0.8f;
	sp.seed = 1;
	sp.ignore_eos = true;
	g.session_id = "";
	g.prompt_case = DUALPATH__V1__GENERATE__PROMPT_TOKENS;
	g.tokens = &tk;
	g.max_new_tokens = s->tokens;
	g.sampling = &sp;
	req.body_case = DUALPATH__V1__REQUEST__BODY_GENERATE;
	req.generate = &g;
	double t0 = now_s();
	if ((s->ret = dp_client_send(c, &req)) < 0)
		goto out;
	for (;;) {
		Dualpath__V1__Response *r;
		if ((s->ret = dp_client_recv_id(c, req.request_id, 600000, &r)) < 0)
			goto out;
		if (r->body_case != DUALPATH__V1__RESPONSE__BODY_TOKEN_CHUNK) {
			dp_proto_response_free(r);
			s->ret = -EPROTO;
			goto out;
		}
		const Dualpath__V1__TokenChunk *k = r->token_chunk;
		if (k->n_ids && !s->got)
			s->ttft = now_s() - t0;
		s->got += k->n_ids;
		bool done = k->finish != DUALPATH__V1__FINISH_REASON__FINISH_NONE;
		dp_proto_response_free(r);
		if (done)
			break;
	}
out:
	dp_client_free(c);
	return NULL;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
	const char *sock = NULL, *prompt = NULL;
	unsigned streams = 1, tokens = 128;
	static const struct option opts[] = {
		{ "socket", required_argument, NULL, 's' },
		{ "streams", required_argument, NULL, 'c' },
		{ "tokens", required_argument, NULL, 'n' },
		{ "prompt", required_argument, NULL, 'p' },
		{ 0 },
	};
	int o;
	while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (o) {
		case 's': sock = optarg; break;
		case 'c': streams = (unsigned)strtoul(optarg, NULL, 10); break;
		case 'n': tokens = (unsigned)strtoul(optarg, NULL, 10); break;
		case 'p': prompt = optarg; break;
		default: return 2;
		}
	}
	if (!sock || !prompt || !streams || streams > 4096 || !tokens) {
		fprintf(stderr, "usage: %s --socket PATH --streams 1..4096 --tokens N --prompt ID,...\n",
			argv[0]);
		return 2;
	}
	uint32_t ids[4096];
	size_t n = 0;
	for (const char *p = prompt; *p && n < 4096;) {
		char *end;
		unsigned long v = strtoul(p, &end, 10);
		if (end == p || (*end && *end != ',')) {
			fprintf(stderr, "--prompt: '%s' is not a list of ids\n", prompt);
			return 2;
		}
		ids[n++] = (uint32_t)v;
		p = *end ? end + 1 : end;
	}
	struct stream *s = calloc(streams, sizeof(*s));
	double *ttft = calloc(streams, sizeof(*ttft));
	if (!s || !ttft)
		return 1;
	double t0 = now_s();
	for (unsigned i = 0; i < streams; i++) {
		s[i] = (struct stream){ .sock = sock, .ids = ids, .n_ids = n, .tokens = tokens };
		if (pthread_create(&s[i].th, NULL, stream_main, &s[i])) {
			fprintf(stderr, "thread %u: cannot start\n", i);
			return 1;
		}
	}
	uint64_t got = 0;
	int bad = 0;
	for (unsigned i = 0; i < streams; i++) {
		pthread_join(s[i].th, NULL);
		if (s[i].ret < 0) {
			fprintf(stderr, "stream %u: %s\n", i, strerror(-s[i].ret));
			bad = 1;
		}
		got += s[i].got;
		ttft[i] = s[i].ttft;
	}
	double wall = now_s() - t0;
	qsort(ttft, streams, sizeof(*ttft), cmp_double);
	printf("streams=%u tokens=%llu wall_s=%.3f tok_s=%.0f ttft_p50_ms=%.1f ttft_p99_ms=%.1f\n",
	       streams, (unsigned long long)got, wall, (double)got / wall, 1000 * ttft[streams / 2],
	       1000 * ttft[(size_t)(0.99 * (streams - 1))]);
	free(s);
	free(ttft);
	return bad;
}
