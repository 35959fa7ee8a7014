/* SPDX-License-Identifier: MIT */
/*
 * tests/proto/proto-test.h — message builders and wire helpers shared by the
 * proto suites.
 */
#ifndef DP_TESTS_PROTO_TEST_H
#define DP_TESTS_PROTO_TEST_H

#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "base/macros.h"
#include "proto/frame.h"

/* ---- a request of each kind -------------------------------------------- */

struct req_store {
	Dualpath__V1__Request req;
	Dualpath__V1__Hello hello;
	Dualpath__V1__Generate gen;
	Dualpath__V1__Sampling samp;
	Dualpath__V1__TokenIds toks;
	uint32_t ids[3];
	uint32_t stop[2];
	Dualpath__V1__Cancel cancel;
	Dualpath__V1__CloseSession close;
	Dualpath__V1__StatsRequest stats;
	Dualpath__V1__HealthRequest health;
	Dualpath__V1__ListSessionsRequest list;
	Dualpath__V1__Drain drain;
	Dualpath__V1__EvictSession evict;
	Dualpath__V1__Shutdown shutdown;
	Dualpath__V1__TraceRequest trace;
};

static const Dualpath__V1__Request__BodyCase request_bodies[] = {
    DUALPATH__V1__REQUEST__BODY_HELLO,         DUALPATH__V1__REQUEST__BODY_GENERATE,
    DUALPATH__V1__REQUEST__BODY_CANCEL,        DUALPATH__V1__REQUEST__BODY_CLOSE_SESSION,
    DUALPATH__V1__REQUEST__BODY_STATS,         DUALPATH__V1__REQUEST__BODY_HEALTH,
    DUALPATH__V1__REQUEST__BODY_LIST_SESSIONS, DUALPATH__V1__REQUEST__BODY_DRAIN,
    DUALPATH__V1__REQUEST__BODY_EVICT_SESSION, DUALPATH__V1__REQUEST__BODY_SHUTDOWN,
    DUALPATH__V1__REQUEST__BODY_TRACE,
};
#define N_REQUEST_BODIES DP_ARRAY_SIZE(request_bodies)

/* A valid request with the given body and non-default values in every
 * field; Generate gets a token prompt and full sampling. */
static inline Dualpath__V1__Request *build_request(struct req_store *s,
                                                   Dualpath__V1__Request__BodyCase body)
{
	memset(s, 0, sizeof(*s));
	dualpath__v1__request__init(&s->req);
	s->req.request_id = 0x1234567890ull;
	s->req.body_case = body;
	switch (body) {
	case DUALPATH__V1__REQUEST__BODY_HELLO:
		dualpath__v1__hello__init(&s->hello);
		s->hello.protocol_version = DP_PROTO_VERSION;
		s->hello.client_name = "v4ctl/0.1";
		s->req.hello = &s->hello;
		break;
	case DUALPATH__V1__REQUEST__BODY_GENERATE:
		dualpath__v1__generate__init(&s->gen);
		dualpath__v1__sampling__init(&s->samp);
		dualpath__v1__token_ids__init(&s->toks);
		s->ids[0] = 1;
		s->ids[1] = 300;
		s->ids[2] = 129279;
		s->toks.n_ids = 3;
		s->toks.ids = s->ids;
		s->stop[0] = 2;
		s->stop[1] = 7;
		s->samp.temperature = 0.7f;
		s->samp.top_k = 40;
		s->samp.top_p = 0.95f;
		s->samp.seed = 42;
		s->samp.n_stop_ids = 2;
		s->samp.stop_ids = s->stop;
		s->gen.session_id = "agent-7.turns_v2";
		s->gen.prompt_case = DUALPATH__V1__GENERATE__PROMPT_TOKENS;
		s->gen.tokens = &s->toks;
		s->gen.max_new_tokens = 256;
		s->gen.sampling = &s->samp;
		s->gen.return_text = true;
		s->req.generate = &s->gen;
		break;
	case DUALPATH__V1__REQUEST__BODY_CANCEL:
		dualpath__v1__cancel__init(&s->cancel);
		s->cancel.target_request_id = 99;
		s->req.cancel = &s->cancel;
		break;
	case DUALPATH__V1__REQUEST__BODY_CLOSE_SESSION:
		dualpath__v1__close_session__init(&s->close);
		s->close.session_id = "s1";
		s->close.persist = true;
		s->req.close_session = &s->close;
		break;
	case DUALPATH__V1__REQUEST__BODY_STATS:
		dualpath__v1__stats_request__init(&s->stats);
		s->req.stats = &s->stats;
		break;
	case DUALPATH__V1__REQUEST__BODY_HEALTH:
		dualpath__v1__health_request__init(&s->health);
		s->req.health = &s->health;
		break;
	case DUALPATH__V1__REQUEST__BODY_LIST_SESSIONS:
		dualpath__v1__list_sessions_request__init(&s->list);
		s->req.list_sessions = &s->list;
		break;
	case DUALPATH__V1__REQUEST__BODY_DRAIN:
		dualpath__v1__drain__init(&s->drain);
		s->drain.grace_ms = 5000;
		s->req.drain = &s->drain;
		break;
	case DUALPATH__V1__REQUEST__BODY_EVICT_SESSION:
		dualpath__v1__evict_session__init(&s->evict);
		s->evict.session_id = "s2";
		s->evict.drop = true;
		s->req.evict_session = &s->evict;
		break;
	case DUALPATH__V1__REQUEST__BODY_SHUTDOWN:
		dualpath__v1__shutdown__init(&s->shutdown);
		s->req.shutdown = &s->shutdown;
		break;
	case DUALPATH__V1__REQUEST__BODY_TRACE:
		dualpath__v1__trace_request__init(&s->trace);
		s->trace.max_events = 100;
		s->req.trace = &s->trace;
		break;
	default:
		break;
	}
	return &s->req;
}

/* ---- a response of each kind ------------------------------------------- */

struct resp_store {
	Dualpath__V1__Response resp;
	Dualpath__V1__HelloReply hello;
	uint32_t eos[2];
	Dualpath__V1__TokenChunk chunk;
	uint32_t ids[2];
	Dualpath__V1__Usage usage;
	Dualpath__V1__Error error;
	Dualpath__V1__Ack ack;
	Dualpath__V1__StatsReply stats;
	Dualpath__V1__Metric metric[2], *metrics[2];
	Dualpath__V1__Label label[2], *labels[2];
	Dualpath__V1__HealthReply health;
	Dualpath__V1__SessionList sessions;
	Dualpath__V1__SessionInfo info, *infos[1];
	Dualpath__V1__TraceReply trace;
	Dualpath__V1__TraceEvent event, *events[1];
};

static const Dualpath__V1__Response__BodyCase response_bodies[] = {
    DUALPATH__V1__RESPONSE__BODY_HELLO,    DUALPATH__V1__RESPONSE__BODY_TOKEN_CHUNK,
    DUALPATH__V1__RESPONSE__BODY_ERROR,    DUALPATH__V1__RESPONSE__BODY_ACK,
    DUALPATH__V1__RESPONSE__BODY_STATS,    DUALPATH__V1__RESPONSE__BODY_HEALTH,
    DUALPATH__V1__RESPONSE__BODY_SESSIONS, DUALPATH__V1__RESPONSE__BODY_TRACE,
};
#define N_RESPONSE_BODIES DP_ARRAY_SIZE(response_bodies)

static inline Dualpath__V1__Response *build_response(struct resp_store *s,
                                                     Dualpath__V1__Response__BodyCase body)
{
	memset(s, 0, sizeof(*s));
	dualpath__v1__response__init(&s->resp);
	s->resp.request_id = 77;
	s->resp.body_case = body;
	for (int i = 0; i < 2; i++) {
		dualpath__v1__label__init(&s->label[i]);
		s->label[i].name = i ? "layer" : "lane";
		s->label[i].value = i ? "3" : "io";
		s->labels[i] = &s->label[i];
	}
	switch (body) {
	case DUALPATH__V1__RESPONSE__BODY_HELLO:
		dualpath__v1__hello_reply__init(&s->hello);
		s->hello.protocol_version = DP_PROTO_VERSION;
		s->hello.server_version = "0.1.0";
		s->hello.model = "builtin";
		s->hello.vocab_size = 129280;
		s->hello.max_frame_bytes = DP_FRAME_MAX_DEFAULT;
		s->eos[0] = 1;
		s->eos[1] = 128001;
		s->hello.n_eos_ids = 2;
		s->hello.eos_ids = s->eos;
		s->hello.backend = "cuda";
		s->resp.hello = &s->hello;
		break;
	case DUALPATH__V1__RESPONSE__BODY_TOKEN_CHUNK:
		dualpath__v1__token_chunk__init(&s->chunk);
		dualpath__v1__usage__init(&s->usage);
		s->ids[0] = 5;
		s->ids[1] = 100000;
		s->chunk.n_ids = 2;
		s->chunk.ids = s->ids;
		s->chunk.text.data = (uint8_t *)"h\xc3\xa9l\0lo"; /* héllo with a NUL inside */
		s->chunk.text.len = 7;
		s->chunk.finish = DUALPATH__V1__FINISH_REASON__FINISH_LENGTH;
		s->chunk.position = 1u << 20;
		s->usage.prompt_tokens = 10;
		s->usage.cached_tokens = 9000;
		s->usage.generated_tokens = 2;
		s->usage.time_to_first_token_us = 1234;
		s->usage.total_time_us = 99999;
		s->chunk.usage = &s->usage;
		s->resp.token_chunk = &s->chunk;
		break;
	case DUALPATH__V1__RESPONSE__BODY_ERROR:
		dualpath__v1__error__init(&s->error);
		s->error.code = DUALPATH__V1__CODE__RESOURCE_EXHAUSTED;
		s->error.message = "no room";
		s->resp.error = &s->error;
		break;
	case DUALPATH__V1__RESPONSE__BODY_ACK:
		dualpath__v1__ack__init(&s->ack);
		s->resp.ack = &s->ack;
		break;
	case DUALPATH__V1__RESPONSE__BODY_STATS:
		dualpath__v1__stats_reply__init(&s->stats);
		for (int i = 0; i < 2; i++) {
			dualpath__v1__metric__init(&s->metric[i]);
			s->metric[i].name = i ? "dualpath_sessions" : "dualpath_tokens_total";
			s->metric[i].help = "help text";
			s->metric[i].type = i ? DUALPATH__V1__METRIC_TYPE__METRIC_GAUGE
			                      : DUALPATH__V1__METRIC_TYPE__METRIC_COUNTER;
			s->metric[i].value = i ? 3.5 : 1e12;
			s->metrics[i] = &s->metric[i];
		}
		s->metric[0].n_labels = 2;
		s->metric[0].labels = s->labels;
		s->stats.n_metrics = 2;
		s->stats.metrics = s->metrics;
		s->resp.stats = &s->stats;
		break;
	case DUALPATH__V1__RESPONSE__BODY_HEALTH:
		dualpath__v1__health_reply__init(&s->health);
		s->health.status = DUALPATH__V1__HEALTH_REPLY__STATUS__SERVING;
		s->health.uptime_ms = 1000;
		s->health.backend = "cpu";
		s->health.sessions = 4;
		s->health.active_requests = 2;
		s->resp.health = &s->health;
		break;
	case DUALPATH__V1__RESPONSE__BODY_SESSIONS:
		dualpath__v1__session_list__init(&s->sessions);
		dualpath__v1__session_info__init(&s->info);
		s->info.session_id = "s1";
		s->info.tokens = 100000;
		s->info.tier = "nvme";
		s->info.bytes = 1ull << 33;
		s->info.idle_ms = 60000;
		s->info.busy = true;
		s->infos[0] = &s->info;
		s->sessions.n_sessions = 1;
		s->sessions.sessions = s->infos;
		s->resp.sessions = &s->sessions;
		break;
	case DUALPATH__V1__RESPONSE__BODY_TRACE:
		dualpath__v1__trace_reply__init(&s->trace);
		dualpath__v1__trace_event__init(&s->event);
		s->event.name = "restore";
		s->event.lane = "io";
		s->event.start_us = 10;
		s->event.dur_us = 20;
		s->event.n_args = 2;
		s->event.args = s->labels;
		s->events[0] = &s->event;
		s->trace.n_events = 1;
		s->trace.events = s->events;
		s->resp.trace = &s->trace;
		break;
	default:
		break;
	}
	return &s->resp;
}

/* ---- packing and comparing ------------------------------------------- */

/* The packed bytes of msg, malloc'd; *ret_len their count. */
static inline uint8_t *packed(const ProtobufCMessage *msg, size_t *ret_len)
{
	size_t n = protobuf_c_message_get_packed_size(msg);
	uint8_t *p = malloc(n ? n : 1);

	cr_assert_not_null(p);
	cr_assert_eq(protobuf_c_message_pack(msg, p), n);
	*ret_len = n;
	return p;
}

/* Equal messages pack to equal bytes (protobuf-c packs fields in order). */
static inline bool same_message(const ProtobufCMessage *a, const ProtobufCMessage *b)
{
	size_t na, nb;
	uint8_t *pa = packed(a, &na), *pb = packed(b, &nb);
	bool same = na == nb && memcmp(pa, pb, na) == 0;

	free(pa);
	free(pb);
	return same;
}

/* ---- hand-made wire bytes ---------------------------------------------- */

struct wire {
	uint8_t b[8192];
	size_t n;
};

static inline void w_byte(struct wire *w, uint8_t v)
{
	cr_assert_lt(w->n, sizeof(w->b));
	w->b[w->n++] = v;
}

static inline void w_varint(struct wire *w, uint64_t v)
{
	while (v >= 0x80) {
		w_byte(w, (uint8_t)(v | 0x80));
		v >>= 7;
	}
	w_byte(w, (uint8_t)v);
}

static inline void w_tag(struct wire *w, uint32_t field, unsigned type)
{
	w_varint(w, (uint64_t)field << 3 | type);
}

static inline void w_bytes(struct wire *w, uint32_t field, const void *data, size_t len)
{
	w_tag(w, field, 2);
	w_varint(w, len);
	cr_assert_leq(w->n + len, sizeof(w->b));
	memcpy(w->b + w->n, data, len);
	w->n += len;
}

/* Field `field` holding the message in `sub`. */
static inline void w_sub(struct wire *w, uint32_t field, const struct wire *sub)
{
	w_bytes(w, field, sub->b, sub->n);
}

/* A frame header for body length len. */
static inline void put_header(uint8_t *p, uint32_t len)
{
	p[0] = (uint8_t)len;
	p[1] = (uint8_t)(len >> 8);
	p[2] = (uint8_t)(len >> 16);
	p[3] = (uint8_t)(len >> 24);
}

#endif /* DP_TESTS_PROTO_TEST_H */
