/* SPDX-License-Identifier: MIT */
/*
 * tests/fuzz/gen_frame_corpus.c — writes the seed corpus of fuzz_frame into
 * a directory (tests/fuzz/corpus/frame/ holds its output):
 *
 *	gen_frame_corpus tests/fuzz/corpus/frame
 *
 * Each seed is fuzz_frame's 6-byte prelude and a stream of frames: every
 * request kind, every response kind, and the framing and string errors.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/macros.h"
#include "proto/frame.h"

static int write_seed(const char *dir, const char *name, uint8_t max_sel, uint8_t flags,
                      const uint8_t *b, size_t n)
{
	uint8_t prelude[6] = {max_sel, 0x5e, 0xed, 0x12, 0x34, flags};
	char path[4096];
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	f = fopen(path, "wb");
	if (!f || fwrite(prelude, 1, sizeof(prelude), f) != sizeof(prelude) ||
	    fwrite(b, 1, n, f) != n || fclose(f) != 0) {
		fprintf(stderr, "gen_frame_corpus: %s: %s\n", path, strerror(errno));
		return -1;
	}
	return 0;
}

static void add(struct dp_frame_buf *fb, const ProtobufCMessage *m)
{
	if (dp_frame_append(fb, m, DP_FRAME_MAX_DEFAULT) != 0) {
		fprintf(stderr, "gen_frame_corpus: cannot encode a seed\n");
		exit(1);
	}
}

/* A request with request_id id and the body `body` set to member `sub`. */
static Dualpath__V1__Request req(uint64_t id, Dualpath__V1__Request__BodyCase body, void *sub)
{
	Dualpath__V1__Request r = DUALPATH__V1__REQUEST__INIT;

	r.request_id = id;
	r.body_case = body;
	r.hello = sub; /* every member shares the union's one pointer */
	return r;
}

static Dualpath__V1__Response resp(uint64_t id, Dualpath__V1__Response__BodyCase body, void *sub)
{
	Dualpath__V1__Response r = DUALPATH__V1__RESPONSE__INIT;

	r.request_id = id;
	r.body_case = body;
	r.hello = sub;
	return r;
}

int main(int argc, char **argv)
{
	struct dp_frame_buf fb = {0};
	const char *dir;
	int bad = 0;

	if (argc != 2) {
		fprintf(stderr, "usage: %s DIR\n", argv[0]);
		return 2;
	}
	dir = argv[1];

	/* hello, then a token Generate with sampling */
	Dualpath__V1__Hello hello = DUALPATH__V1__HELLO__INIT;
	hello.protocol_version = DP_PROTO_VERSION;
	hello.client_name = "v4ctl/0.1";
	Dualpath__V1__Request r = req(1, DUALPATH__V1__REQUEST__BODY_HELLO, &hello);
	add(&fb, &r.base);
	bad |= write_seed(dir, "hello", 0xff, 0x10, fb.data, fb.len);

	uint32_t ids[] = {1, 17, 999, 129279}, stop[] = {2, 3};
	Dualpath__V1__TokenIds toks = DUALPATH__V1__TOKEN_IDS__INIT;
	toks.n_ids = 4;
	toks.ids = ids;
	Dualpath__V1__Sampling samp = DUALPATH__V1__SAMPLING__INIT;
	samp.temperature = 0.8f;
	samp.top_k = 50;
	samp.top_p = 0.9f;
	samp.seed = 7;
	samp.n_stop_ids = 2;
	samp.stop_ids = stop;
	Dualpath__V1__Generate gen = DUALPATH__V1__GENERATE__INIT;
	gen.session_id = "agent-1";
	gen.prompt_case = DUALPATH__V1__GENERATE__PROMPT_TOKENS;
	gen.tokens = &toks;
	gen.max_new_tokens = 32;
	gen.sampling = &samp;
	gen.return_text = true;
	r = req(2, DUALPATH__V1__REQUEST__BODY_GENERATE, &gen);
	add(&fb, &r.base);
	bad |= write_seed(dir, "hello-generate", 0xff, 0x10, fb.data, fb.len);

	/* a text Generate alone, tight limits */
	fb.len = 0;
	gen.prompt_case = DUALPATH__V1__GENERATE__PROMPT_TEXT;
	gen.text = "Hello, w\xc3\xb6rld \xe2\x9c\x93";
	gen.session_id = "";
	r = req(3, DUALPATH__V1__REQUEST__BODY_GENERATE, &gen);
	add(&fb, &r.base);
	bad |= write_seed(dir, "generate-text", 0xff, 0xf0, fb.data, fb.len);

	/* a chat Generate on a session, tight limits and default ones */
	fb.len = 0;
	gen.prompt_case = DUALPATH__V1__GENERATE__PROMPT_CHAT;
	gen.chat = "{\"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}]}";
	gen.session_id = "chat-1";
	r = req(4, DUALPATH__V1__REQUEST__BODY_GENERATE, &gen);
	add(&fb, &r.base);
	bad |= write_seed(dir, "generate-chat", 0xff, 0xf0, fb.data, fb.len);
	bad |= write_seed(dir, "generate-chat-roomy", 0xff, 0x00, fb.data, fb.len);

	/* the other request kinds */
	fb.len = 0;
	Dualpath__V1__Cancel cancel = DUALPATH__V1__CANCEL__INIT;
	cancel.target_request_id = 2;
	Dualpath__V1__CloseSession close = DUALPATH__V1__CLOSE_SESSION__INIT;
	close.session_id = "agent-1";
	close.persist = true;
	Dualpath__V1__EvictSession evict = DUALPATH__V1__EVICT_SESSION__INIT;
	evict.session_id = "old.session";
	evict.drop = true;
	Dualpath__V1__Drain drain = DUALPATH__V1__DRAIN__INIT;
	drain.grace_ms = 1000;
	Dualpath__V1__TraceRequest trace = DUALPATH__V1__TRACE_REQUEST__INIT;
	trace.max_events = 10;
	Dualpath__V1__StatsRequest stats = DUALPATH__V1__STATS_REQUEST__INIT;
	Dualpath__V1__HealthRequest health = DUALPATH__V1__HEALTH_REQUEST__INIT;
	Dualpath__V1__ListSessionsRequest list = DUALPATH__V1__LIST_SESSIONS_REQUEST__INIT;
	Dualpath__V1__Shutdown shut = DUALPATH__V1__SHUTDOWN__INIT;
	struct {
		Dualpath__V1__Request__BodyCase body;
		void *sub;
	} kinds[] = {
	    {DUALPATH__V1__REQUEST__BODY_CANCEL, &cancel},
	    {DUALPATH__V1__REQUEST__BODY_CLOSE_SESSION, &close},
	    {DUALPATH__V1__REQUEST__BODY_STATS, &stats},
	    {DUALPATH__V1__REQUEST__BODY_HEALTH, &health},
	    {DUALPATH__V1__REQUEST__BODY_LIST_SESSIONS, &list},
	    {DUALPATH__V1__REQUEST__BODY_DRAIN, &drain},
	    {DUALPATH__V1__REQUEST__BODY_EVICT_SESSION, &evict},
	    {DUALPATH__V1__REQUEST__BODY_SHUTDOWN, &shut},
	    {DUALPATH__V1__REQUEST__BODY_TRACE, &trace},
	};
	for (size_t i = 0; i < DP_ARRAY_SIZE(kinds); i++) {
		r = req(10 + i, kinds[i].body, kinds[i].sub);
		add(&fb, &r.base);
	}
	bad |= write_seed(dir, "requests", 0xff, 0x00, fb.data, fb.len);

	/* responses */
	fb.len = 0;
	uint32_t eos[] = {1};
	Dualpath__V1__HelloReply hr = DUALPATH__V1__HELLO_REPLY__INIT;
	hr.protocol_version = 1;
	hr.server_version = "0.1.0";
	hr.model = "builtin";
	hr.vocab_size = 129280;
	hr.max_frame_bytes = DP_FRAME_MAX_DEFAULT;
	hr.n_eos_ids = 1;
	hr.eos_ids = eos;
	hr.backend = "cpu";
	Dualpath__V1__Usage usage = DUALPATH__V1__USAGE__INIT;
	usage.prompt_tokens = 4;
	usage.generated_tokens = 2;
	Dualpath__V1__TokenChunk chunk = DUALPATH__V1__TOKEN_CHUNK__INIT;
	chunk.n_ids = 2;
	chunk.ids = ids;
	chunk.text.data = (uint8_t *)"hi";
	chunk.text.len = 2;
	chunk.finish = DUALPATH__V1__FINISH_REASON__FINISH_EOS;
	chunk.position = 6;
	chunk.usage = &usage;
	Dualpath__V1__ToolCall call = DUALPATH__V1__TOOL_CALL__INIT, *calls[] = {&call};
	call.id = "call_0";
	call.name = "get_weather";
	call.arguments = "{\"city\": \"Paris\"}";
	Dualpath__V1__ChatDelta delta = DUALPATH__V1__CHAT_DELTA__INIT;
	delta.reasoning = "think";
	delta.content = "ok";
	delta.n_tool_calls = 1;
	delta.tool_calls = calls;
	delta.flags = 2;
	delta.ended = true;
	chunk.chat = &delta;
	Dualpath__V1__Error error = DUALPATH__V1__ERROR__INIT;
	error.code = DUALPATH__V1__CODE__INVALID_ARGUMENT;
	error.message = "generate.sampling.top_p: 2 is not in [0, 1]";
	Dualpath__V1__Label label = DUALPATH__V1__LABEL__INIT, *labels[] = {&label};
	label.name = "lane";
	label.value = "io";
	Dualpath__V1__Metric metric = DUALPATH__V1__METRIC__INIT, *metrics[] = {&metric};
	metric.name = "dualpath_steps_total";
	metric.type = DUALPATH__V1__METRIC_TYPE__METRIC_COUNTER;
	metric.value = 12;
	metric.n_labels = 1;
	metric.labels = labels;
	Dualpath__V1__StatsReply sr = DUALPATH__V1__STATS_REPLY__INIT;
	sr.n_metrics = 1;
	sr.metrics = metrics;
	Dualpath__V1__SessionInfo si = DUALPATH__V1__SESSION_INFO__INIT, *sis[] = {&si};
	si.session_id = "agent-1";
	si.tokens = 6;
	si.tier = "dram";
	Dualpath__V1__SessionList sl = DUALPATH__V1__SESSION_LIST__INIT;
	sl.n_sessions = 1;
	sl.sessions = sis;
	Dualpath__V1__TraceEvent ev = DUALPATH__V1__TRACE_EVENT__INIT, *evs[] = {&ev};
	ev.name = "step";
	ev.lane = "compute";
	ev.dur_us = 100;
	ev.n_args = 1;
	ev.args = labels;
	Dualpath__V1__TraceReply tr = DUALPATH__V1__TRACE_REPLY__INIT;
	tr.n_events = 1;
	tr.events = evs;
	Dualpath__V1__HealthReply hh = DUALPATH__V1__HEALTH_REPLY__INIT;
	hh.status = DUALPATH__V1__HEALTH_REPLY__STATUS__SERVING;
	hh.uptime_ms = 5;
	Dualpath__V1__Ack ack = DUALPATH__V1__ACK__INIT;
	struct {
		Dualpath__V1__Response__BodyCase body;
		void *sub;
	} rkinds[] = {
	    {DUALPATH__V1__RESPONSE__BODY_HELLO, &hr},
	    {DUALPATH__V1__RESPONSE__BODY_TOKEN_CHUNK, &chunk},
	    {DUALPATH__V1__RESPONSE__BODY_ERROR, &error},
	    {DUALPATH__V1__RESPONSE__BODY_ACK, &ack},
	    {DUALPATH__V1__RESPONSE__BODY_STATS, &sr},
	    {DUALPATH__V1__RESPONSE__BODY_HEALTH, &hh},
	    {DUALPATH__V1__RESPONSE__BODY_SESSIONS, &sl},
	    {DUALPATH__V1__RESPONSE__BODY_TRACE, &tr},
	};
	for (size_t i = 0; i < DP_ARRAY_SIZE(rkinds); i++) {
		Dualpath__V1__Response rs = resp(1 + i, rkinds[i].body, rkinds[i].sub);

		add(&fb, &rs.base);
	}
	bad |= write_seed(dir, "responses", 0xff, 0x00, fb.data, fb.len);

	/* the shared tier's Cluster request and reply */
	fb.len = 0;
	char *cids[] = {"agent-1", "agent-2"};
	Dualpath__V1__ClusterRequest creq = DUALPATH__V1__CLUSTER_REQUEST__INIT;
	creq.n_session_ids = 2;
	creq.session_ids = cids;
	r = req(30, DUALPATH__V1__REQUEST__BODY_CLUSTER, &creq);
	add(&fb, &r.base);
	Dualpath__V1__ClusterMember cm = DUALPATH__V1__CLUSTER_MEMBER__INIT, *cms[] = {&cm};
	cm.host_id = "host-a";
	cm.socket = "/run/dualpath/dualpathd.sock";
	cm.http = "127.0.0.1:8080";
	cm.heartbeat_age_ms = 1200;
	cm.live = true;
	cm.ttl_ms = 10000;
	Dualpath__V1__SessionPlacement sp = DUALPATH__V1__SESSION_PLACEMENT__INIT, *sps[] = {&sp};
	sp.session_id = "agent-1";
	sp.owner = "host-a";
	sp.rendezvous = "host-a";
	char *leases[] = {"agent-1"};
	Dualpath__V1__ClusterReply crep = DUALPATH__V1__CLUSTER_REPLY__INIT;
	crep.host_id = "host-a";
	crep.shared_tier_up = true;
	crep.n_members = 1;
	crep.members = cms;
	crep.n_leases = 1;
	crep.leases = leases;
	crep.n_sessions = 1;
	crep.sessions = sps;
	Dualpath__V1__Response crs = resp(30, DUALPATH__V1__RESPONSE__BODY_CLUSTER, &crep);
	add(&fb, &crs.base);
	bad |= write_seed(dir, "cluster", 0xff, 0x00, fb.data, fb.len);

	/* limits: a 129-byte session id, a long client name, a stop id past
	 * the vocabulary (the seed's flags set vocab_size 1000) */
	fb.len = 0;
	char longid[130], longname[140];
	memset(longid, 'i', 129);
	longid[129] = '\0';
	memset(longname, 'n', 139);
	longname[139] = '\0';
	close.session_id = longid;
	r = req(40, DUALPATH__V1__REQUEST__BODY_CLOSE_SESSION, &close);
	add(&fb, &r.base);
	hello.client_name = longname;
	r = req(41, DUALPATH__V1__REQUEST__BODY_HELLO, &hello);
	add(&fb, &r.base);
	stop[1] = 5000;
	gen.prompt_case = DUALPATH__V1__GENERATE__PROMPT_TOKENS;
	gen.tokens = &toks;
	toks.n_ids = 3; /* ids below 1000 */
	r = req(42, DUALPATH__V1__REQUEST__BODY_GENERATE, &gen);
	add(&fb, &r.base);
	bad |= write_seed(dir, "limits", 0xff, 0x10, fb.data, fb.len);

	/* framing errors: a length over a small max, and a zero length */
	static const uint8_t big[] = {0x40, 0, 0, 0, 0x08, 0x01};
	bad |= write_seed(dir, "oversized", 0x03, 0x00, big, sizeof(big));
	static const uint8_t zero[] = {0x02, 0, 0, 0, 0x08, 0x01, 0, 0, 0, 0};
	bad |= write_seed(dir, "zero-length", 0xff, 0x00, zero, sizeof(zero));

	/* unknown fields at two levels; a string with a NUL; bad UTF-8 */
	static const uint8_t unknown[] = {0x0d, 0,    0,    0,   0x08, 0x05, 0x10, 0x2c, 0x5a,
	                                  0x07, 0x1a, 0x01, 'x', 0x7a, 0x02, 0x08, 0x01};
	bad |= write_seed(dir, "unknown-fields", 0xff, 0x00, unknown, sizeof(unknown));
	static const uint8_t nul[] = {0x0c, 0,    0,   0,    0x08, 0x01, 0x5a, 0x08,
	                              0x0a, 0x03, 'a', 0x00, 'b',  0x1a, 0x01, 'x'};
	bad |= write_seed(dir, "session-nul", 0xff, 0x00, nul, sizeof(nul));
	static const uint8_t utf8[] = {0x08, 0,    0,    0,    0x08, 0x01,
	                               0x5a, 0x04, 0x1a, 0x02, 0xc0, 0xaf};
	bad |= write_seed(dir, "bad-utf8", 0xff, 0x00, utf8, sizeof(utf8));

	dp_frame_buf_fini(&fb);
	return bad ? 1 : 0;
}
