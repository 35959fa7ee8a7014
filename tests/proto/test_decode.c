/* SPDX-License-Identifier: MIT */
/* proto/frame.h: frame bodies to messages, and what decoding refuses. */
#include <errno.h>

#include "proto-test.h"
#include "base/macros.h"

/* Encode, cut out by a reader, decode: the message that comes out. */
static Dualpath__V1__Request *through_the_wire(const Dualpath__V1__Request *req)
{
	Dualpath__V1__Request *out = NULL;
	struct dp_frame_reader *r;
	const uint8_t *body;
	uint8_t b[1024];
	size_t len;

	cr_assert_eq(dp_frame_encode(&req->base, DP_FRAME_MAX_DEFAULT, b, sizeof(b), &len), 0);
	cr_assert_eq(dp_frame_reader_new(DP_FRAME_MAX_DEFAULT, &r), 0);
	cr_assert_eq(dp_frame_reader_feed(r, b, len), (int)len);
	cr_assert_eq(dp_frame_reader_next(r, &body, &len), 0);
	cr_assert_eq(dp_proto_request_decode(body, len, 0, &out), 0);
	dp_frame_reader_free(r);
	return out;
}

Test(decode, every_request_kind_round_trips)
{
	for (size_t i = 0; i < N_REQUEST_BODIES; i++) {
		struct req_store st;
		Dualpath__V1__Request *in = build_request(&st, request_bodies[i]), *out;

		out = through_the_wire(in);
		cr_assert_eq(out->body_case, in->body_case, "%s", dp_proto_request_name(in));
		cr_assert_eq(out->request_id, 0x1234567890ull);
		cr_assert(same_message(&in->base, &out->base), "%s", dp_proto_request_name(in));
		dp_proto_request_free(out);
	}
}

Test(decode, generate_fields_survive_the_round_trip)
{
	struct req_store st;
	Dualpath__V1__Request *out;
	Dualpath__V1__Generate *g;

	out = through_the_wire(build_request(&st, DUALPATH__V1__REQUEST__BODY_GENERATE));
	g = out->generate;
	cr_assert_str_eq(g->session_id, "agent-7.turns_v2");
	cr_assert_eq(g->prompt_case, DUALPATH__V1__GENERATE__PROMPT_TOKENS);
	cr_assert_eq(g->tokens->n_ids, 3);
	cr_assert_eq(g->tokens->ids[2], 129279);
	cr_assert_eq(g->max_new_tokens, 256);
	cr_assert(g->return_text);
	cr_assert_float_eq(g->sampling->temperature, 0.7f, 1e-7);
	cr_assert_eq(g->sampling->top_k, 40);
	cr_assert_float_eq(g->sampling->top_p, 0.95f, 1e-7);
	cr_assert_eq(g->sampling->seed, 42);
	cr_assert_eq(g->sampling->n_stop_ids, 2);
	cr_assert_eq(g->sampling->stop_ids[1], 7);
	dp_proto_request_free(out);

	/* A text prompt, UTF-8 included. */
	build_request(&st, DUALPATH__V1__REQUEST__BODY_GENERATE);
	st.gen.prompt_case = DUALPATH__V1__GENERATE__PROMPT_TEXT;
	st.gen.text = "Gr\xc3\xbc\xc3\x9f"
	              "e \xe4\xbd\xa0\xe5\xa5\xbd \xf0\x9f\x99\x82";
	out = through_the_wire(&st.req);
	cr_assert_eq(out->generate->prompt_case, DUALPATH__V1__GENERATE__PROMPT_TEXT);
	cr_assert_str_eq(out->generate->text, st.gen.text);
	dp_proto_request_free(out);
}

Test(decode, every_response_kind_round_trips)
{
	for (size_t i = 0; i < N_RESPONSE_BODIES; i++) {
		struct resp_store st;
		Dualpath__V1__Response *in = build_response(&st, response_bodies[i]), *out;
		struct dp_frame_buf fb = {0};
		int ret;

		cr_assert_eq(dp_frame_append(&fb, &in->base, DP_FRAME_MAX_DEFAULT), 0);
		ret = dp_proto_response_decode(fb.data + 4, fb.len - 4, 0, &out);
		cr_assert_eq(ret, 0, "body %d: %d", in->body_case, ret);
		cr_assert_eq(out->body_case, in->body_case);
		cr_assert(same_message(&in->base, &out->base), "body %d", in->body_case);
		dp_frame_buf_fini(&fb);
		dp_proto_response_free(out);
	}
}

Test(decode, response_fields_survive_the_round_trip)
{
	struct resp_store st;
	Dualpath__V1__Response *out;
	struct dp_frame_buf fb = {0};

	cr_assert_eq(dp_frame_append(&fb,
	                             &build_response(&st, DUALPATH__V1__RESPONSE__BODY_STATS)->base,
	                             DP_FRAME_MAX_DEFAULT),
	             0);
	cr_assert_eq(dp_proto_response_decode(fb.data + 4, fb.len - 4, 0, &out), 0);
	cr_assert_eq(out->stats->n_metrics, 2);
	cr_assert_str_eq(out->stats->metrics[0]->name, "dualpath_tokens_total");
	cr_assert_eq(out->stats->metrics[0]->value, 1e12);
	cr_assert_eq(out->stats->metrics[0]->n_labels, 2);
	cr_assert_str_eq(out->stats->metrics[0]->labels[1]->value, "3");
	dp_proto_response_free(out);
	dp_frame_buf_fini(&fb);
}

Test(decode, a_token_chunk_text_holding_a_nul_arrives_whole)
{
	/* a token may decode to the byte 0: the text is bytes, not a C string */
	struct resp_store st;
	Dualpath__V1__Response *out;
	struct dp_frame_buf fb = {0};

	cr_assert_eq(dp_frame_append(&fb,
	                             &build_response(&st, DUALPATH__V1__RESPONSE__BODY_TOKEN_CHUNK)->base,
	                             DP_FRAME_MAX_DEFAULT),
	             0);
	cr_assert_eq(dp_proto_response_decode(fb.data + 4, fb.len - 4, 0, &out), 0);
	cr_assert_eq(out->token_chunk->text.len, 7);
	cr_assert_eq(memcmp(out->token_chunk->text.data, "h\xc3\xa9l\0lo", 7), 0);
	dp_proto_response_free(out);
	dp_frame_buf_fini(&fb);
}

Test(decode, empty_body_decodes_to_defaults)
{
	Dualpath__V1__Request *req;

	cr_assert_eq(dp_proto_request_decode(NULL, 0, 0, &req), 0);
	cr_assert_eq(req->request_id, 0);
	cr_assert_eq(req->body_case, DUALPATH__V1__REQUEST__BODY__NOT_SET);
	cr_assert_str_eq(dp_proto_request_name(req), "unset");
	dp_proto_request_free(req);
	dp_proto_request_free(NULL);
	dp_proto_response_free(NULL);
}

Test(decode, malformed_protobuf_is_ebadmsg)
{
	static const struct {
		const char *what;
		uint8_t b[16];
		size_t n;
	} bad[] = {
	    {"truncated varint", {0x08, 0x80}, 2},
	    {"varint of 11 bytes",
	     {0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01},
	     12},
	    {"length past the end", {0x5a, 0x05, 0x08, 0x01}, 4},
	    {"length past the end inside", {0x5a, 0x02, 0x12, 0x05}, 4},
	    {"truncated tag", {0x80}, 1},
	    {"field number 0", {0x00, 0x01}, 2},
	    {"start group", {0x0b}, 1},
	    {"end group", {0x0c}, 1},
	    {"wire type 6", {0x0e, 0x00}, 2},
	    {"wire type 7", {0x0f, 0x00}, 2},
	    {"fixed64 cut short", {0x09, 0x01, 0x02}, 3},
	    {"fixed32 cut short", {0x0d, 0x01}, 2},
	    {"request_id as a string", {0x0a, 0x01, 0x41}, 3},
	    {"generate as a varint", {0x58, 0x01}, 2},
	    {"session_id as fixed32", {0x5a, 0x05, 0x0d, 1, 2, 3, 4}, 7},
	    {"garbage submessage", {0x5a, 0x02, 0xff, 0xff}, 4},
	};
	Dualpath__V1__Request *req = (void *)0x1;

	for (size_t i = 0; i < DP_ARRAY_SIZE(bad); i++) {
		int ret = dp_proto_request_decode(bad[i].b, bad[i].n, 0, &req);

		cr_assert_eq(ret, -EBADMSG, "%s: %d", bad[i].what, ret);
		cr_assert_eq(req, (void *)0x1, "output untouched on failure");
	}
	cr_assert_eq(dp_proto_request_decode(NULL, 1, 0, &req), -EINVAL);
	cr_assert_eq(dp_proto_request_decode("", 0, 0, NULL), -EINVAL);
}

Test(decode, unknown_fields_are_kept_and_ignored)
{
	struct wire w = {0}, gen = {0};
	Dualpath__V1__Request *req;
	uint8_t *p;
	size_t n;

	/* A newer client: request_id 5, an unknown varint (field 2), an
	 * unknown string (9), a Generate carrying an unknown fixed64 (15)
	 * and an unknown submessage (99) beside its text. */
	w_tag(&w, 1, 0);
	w_varint(&w, 5);
	w_tag(&w, 2, 0);
	w_varint(&w, 300);
	w_bytes(&w, 9, "new-field", 9);
	w_bytes(&gen, 3, "hi", 2);
	w_tag(&gen, 15, 1);
	for (int i = 0; i < 8; i++)
		w_byte(&gen, (uint8_t)i);
	w_bytes(&gen, 99, "\x08\x01", 2);
	w_sub(&w, 11, &gen);
	cr_assert_eq(dp_proto_request_decode(w.b, w.n, 0, &req), 0);
	cr_assert_eq(req->request_id, 5);
	cr_assert_eq(req->base.n_unknown_fields, 2);
	cr_assert_eq(req->body_case, DUALPATH__V1__REQUEST__BODY_GENERATE);
	cr_assert_str_eq(req->generate->text, "hi");
	cr_assert_eq(req->generate->base.n_unknown_fields, 2);
	/* Re-encoding keeps them (forwarding proxies lose nothing). */
	p = packed(&req->base, &n);
	cr_assert_eq(n, w.n);
	dp_proto_request_free(req);
	free(p);
}

Test(decode, an_unknown_body_leaves_the_body_unset)
{
	struct wire w = {0};
	Dualpath__V1__Request *req;

	w_tag(&w, 1, 0);
	w_varint(&w, 5);
	w_bytes(&w, 40, "", 0); /* a request kind from a later version */
	cr_assert_eq(dp_proto_request_decode(w.b, w.n, 0, &req), 0);
	cr_assert_eq(req->body_case, DUALPATH__V1__REQUEST__BODY__NOT_SET);
	cr_assert_eq(req->base.n_unknown_fields, 1);
	dp_proto_request_free(req);
}

Test(decode, last_oneof_member_wins)
{
	struct wire w = {0}, hello = {0};
	Dualpath__V1__Request *req;

	w_tag(&w, 1, 0);
	w_varint(&w, 5);
	w_bytes(&w, 11, "\x1a\x01x", 3); /* generate{text:"x"} */
	w_tag(&hello, 1, 0);
	w_varint(&hello, 1);
	w_sub(&w, 10, &hello);
	cr_assert_eq(dp_proto_request_decode(w.b, w.n, 0, &req), 0);
	cr_assert_eq(req->body_case, DUALPATH__V1__REQUEST__BODY_HELLO);
	cr_assert_eq(req->hello->protocol_version, 1);
	dp_proto_request_free(req);
}

/* request{id 1, generate{session_id: s}} */
static int decode_session_id(const void *s, size_t n)
{
	struct wire w = {0}, gen = {0};
	Dualpath__V1__Request *req;
	int ret;

	w_tag(&w, 1, 0);
	w_varint(&w, 1);
	w_bytes(&gen, 1, s, n);
	w_sub(&w, 11, &gen);
	ret = dp_proto_request_decode(w.b, w.n, 0, &req);
	if (ret == 0)
		dp_proto_request_free(req);
	return ret;
}

Test(decode, strings_with_nul_or_bad_utf8_are_eilseq)
{
	static const struct {
		const char *what, *s;
		size_t n;
	} bad[] = {
	    {"embedded NUL", "a\0b", 3},
	    {"NUL alone", "\0", 1},
	    {"lone continuation", "\x80", 1},
	    {"truncated 2-byte", "\xc3", 1},
	    {"overlong /", "\xc0\xaf", 2},
	    {"overlong 3-byte", "\xe0\x80\xaf", 3},
	    {"surrogate", "\xed\xa0\x80", 3},
	    {"past U+10FFFF", "\xf4\x90\x80\x80", 4},
	    {"0xff", "ab\xff", 3},
	};

	for (size_t i = 0; i < DP_ARRAY_SIZE(bad); i++)
		cr_assert_eq(decode_session_id(bad[i].s, bad[i].n), -EILSEQ, "%s", bad[i].what);
	/* Valid UTF-8 decodes (the rules reject it as a session id later). */
	cr_assert_eq(decode_session_id("\xc3\xa9", 2), 0);
	cr_assert_eq(decode_session_id("\xf4\x8f\xbf\xbf", 4), 0);
	cr_assert_eq(decode_session_id("\xef\xbf\xbf", 3), 0);
}

Test(decode, strings_in_responses_are_checked_too)
{
	struct wire w = {0}, stats = {0}, metric = {0}, label = {0};
	Dualpath__V1__Response *resp;

	w_bytes(&label, 2, "v\0", 2);
	w_bytes(&metric, 1, "m", 1);
	w_sub(&metric, 5, &label);
	w_sub(&stats, 1, &metric);
	w_tag(&w, 1, 0);
	w_varint(&w, 3);
	w_sub(&w, 14, &stats);
	cr_assert_eq(dp_proto_response_decode(w.b, w.n, 0, &resp), -EILSEQ);
}

Test(decode, a_memory_budget_refuses_expensive_inputs)
{
	struct wire w = {0};
	Dualpath__V1__Request *req = NULL;

	/* 1000 empty Generate bodies: 2 bytes each, each one allocated (and
	 * merged into the last). */
	w_tag(&w, 1, 0);
	w_varint(&w, 1);
	for (int i = 0; i < 1000; i++)
		w_bytes(&w, 11, "", 0);
	cr_assert_eq(dp_proto_request_decode(w.b, w.n, 4096, &req), -EMSGSIZE);
	cr_assert_null(req);
	cr_assert_eq(dp_proto_request_decode(w.b, w.n, 0, &req), 0, "within the default");
	dp_proto_request_free(req);
}

static size_t put_varint(uint8_t *p, uint64_t v)
{
	size_t n = 0;

	while (v >= 0x80) {
		p[n++] = (uint8_t)(v | 0x80);
		v >>= 7;
	}
	p[n++] = (uint8_t)v;
	return n;
}

Test(decode, default_budget_admits_unpacked_token_ids)
{
	/* The least compact legal encoding of a prompt: every id a field of
	 * its own (not packed), 2 bytes each, which protobuf-c scans member by
	 * member: request{id 1, generate{tokens{ids 1, ids 1, ...}}}. */
	size_t n_ids = 500000, tlen = n_ids * 2, off = 0;
	uint8_t *b = malloc(tlen + 32);
	Dualpath__V1__Request *req;

	cr_assert_not_null(b);
	b[off++] = 0x08;
	b[off++] = 0x01;
	b[off++] = 0x5a; /* generate */
	off += put_varint(b + off, 1 + (tlen < 128 ? 1 : tlen < 16384 ? 2 : 3) + tlen);
	b[off++] = 0x12; /* tokens */
	off += put_varint(b + off, tlen);
	for (size_t i = 0; i < n_ids; i++) {
		b[off++] = 0x08;
		b[off++] = 0x01;
	}
	cr_assert_eq(dp_proto_request_decode(b, off, 0, &req), 0);
	cr_assert_eq(req->generate->tokens->n_ids, n_ids);
	dp_proto_request_free(req);
	free(b);
}

Test(decode, default_budget_admits_the_costliest_encodings)
{
	/* Frames of empty sub-messages cost protobuf-c the most per byte:
	 * a struct each, plus scan slabs that double (65521 members is just
	 * past a doubling). */
	size_t m = 65521, n = 0, o = 0;
	uint8_t *a = malloc(m * 2 + 16), *b = malloc(m * 2 + 16);
	Dualpath__V1__Response *resp;
	Dualpath__V1__Request *req;

	cr_assert_not_null(a);
	cr_assert_not_null(b);
	for (size_t i = 0; i < m; i++) {
		a[n++] = 0x0a; /* StatsReply.metrics, empty */
		a[n++] = 0x00;
	}
	b[o++] = 0x72; /* Response.stats */
	o += put_varint(b + o, n);
	memcpy(b + o, a, n);
	o += n;
	cr_assert_eq(dp_proto_response_decode(b, o, 0, &resp), 0);
	cr_assert_eq(resp->stats->n_metrics, m);
	dp_proto_response_free(resp);
	cr_assert_eq(dp_proto_response_decode(b, o, o * 64, &resp), -EMSGSIZE,
	             "costs more than 64 bytes per byte");

	for (size_t i = 0; i < m; i++)
		a[2 * i] = 0x5a; /* Request.generate, empty, over and over */
	cr_assert_eq(dp_proto_request_decode(a, n, 0, &req), 0);
	dp_proto_request_free(req);
	free(a);
	free(b);
}

Test(decode, request_names_and_admin_kinds)
{
	for (size_t i = 0; i < N_REQUEST_BODIES; i++) {
		struct req_store st;
		Dualpath__V1__Request *req = build_request(&st, request_bodies[i]);
		bool admin = request_bodies[i] == DUALPATH__V1__REQUEST__BODY_DRAIN ||
		             request_bodies[i] == DUALPATH__V1__REQUEST__BODY_EVICT_SESSION ||
		             request_bodies[i] == DUALPATH__V1__REQUEST__BODY_SHUTDOWN ||
		             request_bodies[i] == DUALPATH__V1__REQUEST__BODY_TRACE;

		cr_assert_eq(dp_proto_request_admin(req), admin, "%s", dp_proto_request_name(req));
	}

	struct req_store st;

	build_request(&st, DUALPATH__V1__REQUEST__BODY_CLOSE_SESSION);
	cr_assert_str_eq(dp_proto_request_name(&st.req), "close_session");
	cr_assert_not(dp_proto_request_admin(NULL));
	cr_assert_str_eq(dp_proto_request_name(NULL), "unset");
}
