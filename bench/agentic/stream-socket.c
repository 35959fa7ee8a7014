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
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "stream.h"
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
	double t0 = stream_now_s();
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
			s->ttft = stream_now_s() - t0;
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

int main(int argc, char **argv)
{
	static struct stream_opts o;
	int r = stream_opts_parse(&o, argc, argv, "socket", "PATH");
	if (r)
		return r;
	struct stream *s = calloc(o.streams, sizeof(*s));
	double *ttft = calloc(o.streams, sizeof(*ttft));
	if (!s || !ttft)
		return 1;
	double t0 = stream_now_s();
	for (unsigned i = 0; i < o.streams; i++) {
		s[i] = (struct stream){ .sock = o.addr, .ids = o.ids, .n_ids = o.n_ids,
					.tokens = o.tokens };
		if (pthread_create(&s[i].th, NULL, stream_main, &s[i])) {
			fprintf(stderr, "thread %u: cannot start\n", i);
			return 1;
		}
	}
	uint64_t got = 0;
	int bad = 0;
	for (unsigned i = 0; i < o.streams; i++) {
		pthread_join(s[i].th, NULL);
		if (s[i].ret < 0) {
			fprintf(stderr, "stream %u: %s\n", i, strerror(-s[i].ret));
			bad = 1;
		}
		got += s[i].got;
		ttft[i] = s[i].ttft;
	}
	stream_print(o.streams, got, stream_now_s() - t0, ttft);
	free(s);
	free(ttft);
	return bad;
}
