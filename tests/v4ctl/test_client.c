/* SPDX-License-Identifier: MIT */
/*
 * The client library (v4ctl/client.h) against a real dualpathd: Hello,
 * request ids, multiplexing, errors.
 */
#include "harness.h"
#include "v4ctl/client.h"

static struct daemon d;
static struct dp_client *c;

static void start(void)
{
	daemon_start(&d);
	cr_assert_eq(dp_client_connect(d.sock, 10000, &c), 0);
}

static void stop(void)
{
	dp_client_free(c);
	c = NULL;
	daemon_stop(&d);
}

TestSuite(client, .init = start, .fini = stop, .timeout = 120);

static void hello(void)
{
	int ret = dp_client_hello(c, "test_client");
	cr_assert_eq(ret, 0, "hello: %s", strerror(-ret));
}

static void build_generate(Dualpath__V1__Request *req, Dualpath__V1__Generate *g,
                           Dualpath__V1__TokenIds *t, uint32_t *ids, size_t n, uint32_t max_new)
{
	dualpath__v1__request__init(req);
	dualpath__v1__generate__init(g);
	dualpath__v1__token_ids__init(t);
	t->ids = ids;
	t->n_ids = n;
	g->prompt_case = DUALPATH__V1__GENERATE__PROMPT_TOKENS;
	g->tokens = t;
	g->max_new_tokens = max_new;
	req->body_case = DUALPATH__V1__REQUEST__BODY_GENERATE;
	req->generate = g;
}

Test(client, hello_reports_the_server)
{
	cr_assert_null(dp_client_server(c));
	hello();
	const Dualpath__V1__HelloReply *h = dp_client_server(c);
	cr_assert_not_null(h);
	cr_assert_eq(h->protocol_version, DP_PROTO_VERSION);
	cr_assert_eq(h->vocab_size, 300, "tests/model/parity/alt has vocab 300");
	cr_assert_gt(h->max_frame_bytes, 0);
	cr_assert_str_eq(h->backend, "cpu");
}

Test(client, request_before_hello_is_refused)
{
	Dualpath__V1__Request req = DUALPATH__V1__REQUEST__INIT;
	Dualpath__V1__HealthRequest hr = DUALPATH__V1__HEALTH_REQUEST__INIT;
	Dualpath__V1__Response *r;
	req.body_case = DUALPATH__V1__REQUEST__BODY_HEALTH;
	req.health = &hr;
	cr_assert_eq(dp_client_call(c, &req, &r), 0);
	cr_assert_eq(r->body_case, DUALPATH__V1__RESPONSE__BODY_ERROR);
	const char *msg;
	cr_assert_eq(dp_client_last_error(c, &msg), DUALPATH__V1__CODE__FAILED_PRECONDITION);
	cr_assert(strstr(msg, "Hello"), "%s", msg);
	cr_assert_str_eq(dp_client_code_name(DUALPATH__V1__CODE__FAILED_PRECONDITION),
	                 "FAILED_PRECONDITION");
	dp_proto_response_free(r);
}

Test(client, request_ids_are_fresh_and_nonzero)
{
	uint64_t a = dp_client_next_id(c), b = dp_client_next_id(c);
	cr_assert(a != 0 && b != 0 && a != b);
	hello();
	Dualpath__V1__Request req = DUALPATH__V1__REQUEST__INIT;
	Dualpath__V1__HealthRequest hr = DUALPATH__V1__HEALTH_REQUEST__INIT;
	Dualpath__V1__Response *r;
	req.body_case = DUALPATH__V1__REQUEST__BODY_HEALTH;
	req.health = &hr;
	cr_assert_eq(dp_client_call(c, &req, &r), 0);
	cr_assert_neq(req.request_id, 0, "call assigns an id");
	cr_assert_eq(r->request_id, req.request_id);
	cr_assert_eq(r->body_case, DUALPATH__V1__RESPONSE__BODY_HEALTH);
	dp_proto_response_free(r);
}

/* One connection: a Generate streaming while a Health is answered; the
 * Generate's chunks that arrive during the Health wait are kept, in order. */
Test(client, multiplexes_health_during_generate)
{
	hello();
	Dualpath__V1__Request gen;
	Dualpath__V1__Generate g;
	Dualpath__V1__TokenIds t;
	uint32_t ids[] = {72, 101, 108, 108, 111};
	build_generate(&gen, &g, &t, ids, 5, 64);
	cr_assert_eq(dp_client_send(c, &gen), 0);

	Dualpath__V1__Request h = DUALPATH__V1__REQUEST__INIT;
	Dualpath__V1__HealthRequest hr = DUALPATH__V1__HEALTH_REQUEST__INIT;
	Dualpath__V1__Response *r;
	h.body_case = DUALPATH__V1__REQUEST__BODY_HEALTH;
	h.health = &hr;
	cr_assert_eq(dp_client_call(c, &h, &r), 0);
	cr_assert_eq(r->request_id, h.request_id);
	cr_assert_eq(r->body_case, DUALPATH__V1__RESPONSE__BODY_HEALTH);
	dp_proto_response_free(r);

	uint64_t last_pos = 0;
	uint32_t tokens = 0;
	for (;;) {
		cr_assert_eq(dp_client_recv_id(c, gen.request_id, 10000, &r), 0);
		cr_assert_eq(r->request_id, gen.request_id);
		cr_assert_eq(r->body_case, DUALPATH__V1__RESPONSE__BODY_TOKEN_CHUNK);
		tokens += (uint32_t)r->token_chunk->n_ids;
		if (r->token_chunk->n_ids) {
			cr_assert_gt(r->token_chunk->position, last_pos, "chunks in order");
			last_pos = r->token_chunk->position;
		}
		bool done = r->token_chunk->finish != DUALPATH__V1__FINISH_REASON__FINISH_NONE;
		if (done) {
			cr_assert_not_null(r->token_chunk->usage);
			cr_assert_eq(r->token_chunk->usage->generated_tokens, tokens);
		}
		dp_proto_response_free(r);
		if (done)
			break;
	}
	cr_assert_gt(tokens, 0);
	cr_assert_not(dp_client_has_pending(c));
}

Test(client, recv_times_out_and_stays_usable)
{
	hello();
	Dualpath__V1__Response *r;
	cr_assert_eq(dp_client_recv(c, 50, &r), -ETIMEDOUT);
	Dualpath__V1__Request req = DUALPATH__V1__REQUEST__INIT;
	Dualpath__V1__HealthRequest hr = DUALPATH__V1__HEALTH_REQUEST__INIT;
	req.body_case = DUALPATH__V1__REQUEST__BODY_HEALTH;
	req.health = &hr;
	cr_assert_eq(dp_client_call(c, &req, &r), 0);
	cr_assert_eq(r->body_case, DUALPATH__V1__RESPONSE__BODY_HEALTH);
	dp_proto_response_free(r);
}

Test(client, connect_errors_are_negative_errno)
{
	struct dp_client *x = NULL;
	cr_assert_eq(dp_client_connect("/nonexistent/dp/sock", 1000, &x), -ENOENT);
	cr_assert_null(x);
	char longp[200];
	memset(longp, 'a', sizeof(longp) - 1);
	longp[0] = '/';
	longp[sizeof(longp) - 1] = '\0';
	cr_assert_eq(dp_client_connect(longp, 1000, &x), -ENAMETOOLONG);
	cr_assert_eq(dp_client_connect(NULL, 1000, &x), -EINVAL);
	dp_client_free(NULL);
}

/*
 * A Generate that compute refuses with an Error (here: draining) ends with
 * that Error; the front must free the connection's request slot, or after
 * max_requests_per_client (64) refusals every Generate on the connection
 * would get RESOURCE_EXHAUSTED "64 requests in flight".
 */
Test(client, refused_generates_do_not_leak_request_slots)
{
	hello();
	/* drain from a second connection (admin: the tests run as root) */
	struct dp_client *admin;
	cr_assert_eq(dp_client_connect(d.sock, 10000, &admin), 0);
	cr_assert_eq(dp_client_hello(admin, "test_client-admin"), 0);
	Dualpath__V1__Request dr = DUALPATH__V1__REQUEST__INIT;
	Dualpath__V1__Drain dm = DUALPATH__V1__DRAIN__INIT;
	Dualpath__V1__Response *r;
	dr.body_case = DUALPATH__V1__REQUEST__BODY_DRAIN;
	dr.drain = &dm;
	cr_assert_eq(dp_client_call(admin, &dr, &r), 0);
	cr_assert_eq(r->body_case, DUALPATH__V1__RESPONSE__BODY_ACK);
	dp_proto_response_free(r);
	dp_client_free(admin);

	uint32_t ids[] = {65};
	for (int i = 0; i < 100; i++) {
		Dualpath__V1__Request gen;
		Dualpath__V1__Generate g;
		Dualpath__V1__TokenIds t;
		build_generate(&gen, &g, &t, ids, 1, 1);
		cr_assert_eq(dp_client_call(c, &gen, &r), 0);
		cr_assert_eq(r->body_case, DUALPATH__V1__RESPONSE__BODY_ERROR);
		cr_assert_eq(r->error->code, DUALPATH__V1__CODE__UNAVAILABLE, "refusal %d: %s %s",
		             i, dp_client_code_name(r->error->code), r->error->message);
		dp_proto_response_free(r);
	}
}
