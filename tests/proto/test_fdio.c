/* SPDX-License-Identifier: MIT */
/* proto/frame.h: blocking one-frame reads and writes over sockets and pipes. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "proto-test.h"
#include "base/clock.h"

static int sv[2] = {-1, -1};

static void setup(void)
{
	cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
}

static void teardown(void)
{
	if (sv[0] >= 0)
		close(sv[0]);
	if (sv[1] >= 0)
		close(sv[1]);
	sv[0] = sv[1] = -1;
}

TestSuite(fdio, .init = setup, .fini = teardown);

Test(fdio, every_request_kind_crosses_a_socket)
{
	struct dp_frame_buf fb = {0};

	for (size_t i = 0; i < N_REQUEST_BODIES; i++) {
		struct req_store st;
		Dualpath__V1__Request *in = build_request(&st, request_bodies[i]), *out;
		int n;

		cr_assert_eq(dp_frame_write_fd(sv[0], &in->base, DP_FRAME_MAX_DEFAULT, 1000), 0);
		n = dp_frame_read_fd(sv[1], &fb, DP_FRAME_MAX_DEFAULT, 1000);
		cr_assert_eq(n, (int)dp_frame_size(&in->base) - 4);
		cr_assert_eq(fb.len, (size_t)n);
		cr_assert_eq(dp_proto_request_decode(fb.data, fb.len, 0, &out), 0);
		cr_assert(same_message(&in->base, &out->base));
		dp_proto_request_free(out);
	}
	dp_frame_buf_fini(&fb);
}

Test(fdio, read_takes_exactly_one_frame_at_a_time)
{
	struct dp_frame_buf out = {0}, in = {0};
	struct resp_store st;

	for (size_t i = 0; i < N_RESPONSE_BODIES; i++)
		cr_assert_eq(dp_frame_append(&out, &build_response(&st, response_bodies[i])->base,
		                             DP_FRAME_MAX_DEFAULT),
		             0);
	/* All frames in one write; each read must stop at its frame's end. */
	cr_assert_eq(dp_frame_write_all(sv[0], out.data, out.len, 1000), 0);
	for (size_t i = 0; i < N_RESPONSE_BODIES; i++) {
		Dualpath__V1__Response *resp;

		cr_assert_gt(dp_frame_read_fd(sv[1], &in, DP_FRAME_MAX_DEFAULT, 1000), 0);
		cr_assert_eq(dp_proto_response_decode(in.data, in.len, 0, &resp), 0);
		cr_assert_eq(resp->body_case, response_bodies[i]);
		dp_proto_response_free(resp);
	}
	dp_frame_buf_fini(&in);
	dp_frame_buf_fini(&out);
}

struct writer {
	int fd;
	const ProtobufCMessage *msg;
	int ret;
};

static void *write_one(void *arg)
{
	struct writer *w = arg;

	w->ret = dp_frame_write_fd(w->fd, w->msg, DP_FRAME_MAX_DEFAULT, 10000);
	return NULL;
}

Test(fdio, big_frame_crosses_through_partial_writes_and_reads)
{
	size_t n_ids = 300000;
	uint32_t *ids = malloc(n_ids * sizeof(*ids));
	Dualpath__V1__TokenChunk chunk = DUALPATH__V1__TOKEN_CHUNK__INIT;
	Dualpath__V1__Response resp = DUALPATH__V1__RESPONSE__INIT;
	Dualpath__V1__Response *out;
	struct dp_frame_buf fb = {0};
	int small = 4096, fl;
	struct writer w;
	pthread_t t;

	cr_assert_not_null(ids);
	for (size_t i = 0; i < n_ids; i++)
		ids[i] = (uint32_t)(i * 2654435761u) >> 12;
	chunk.n_ids = n_ids;
	chunk.ids = ids;
	resp.request_id = 1;
	resp.body_case = DUALPATH__V1__RESPONSE__BODY_TOKEN_CHUNK;
	resp.token_chunk = &chunk;
	cr_assert_gt(dp_frame_size(&resp.base), 128 * (size_t)small);
	/* Small socket buffers and a non-blocking writer: the ~900 KB frame
	 * goes through hundreds of partial writes, EAGAINs and short reads. */
	cr_assert_eq(setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &small, sizeof(small)), 0);
	cr_assert_eq(setsockopt(sv[1], SOL_SOCKET, SO_RCVBUF, &small, sizeof(small)), 0);
	fl = fcntl(sv[0], F_GETFL);
	cr_assert_eq(fcntl(sv[0], F_SETFL, fl | O_NONBLOCK), 0);

	w = (struct writer){.fd = sv[0], .msg = &resp.base};
	cr_assert_eq(pthread_create(&t, NULL, write_one, &w), 0);
	cr_assert_eq(dp_frame_read_fd(sv[1], &fb, DP_FRAME_MAX_DEFAULT, 10000),
	             (int)dp_frame_size(&resp.base) - 4);
	cr_assert_eq(pthread_join(t, NULL), 0);
	cr_assert_eq(w.ret, 0);
	cr_assert_eq(dp_proto_response_decode(fb.data, fb.len, 0, &out), 0);
	cr_assert(same_message(&resp.base, &out->base));
	dp_proto_response_free(out);
	dp_frame_buf_fini(&fb);
	free(ids);
}

struct dribbler {
	int fd;
	const uint8_t *b;
	size_t n;
};

/* Writes a byte at a time, so the reader sees every partial read. */
static void *dribble(void *arg)
{
	struct dribbler *d = arg;

	for (size_t i = 0; i < d->n; i++) {
		if (write(d->fd, d->b + i, 1) != 1)
			break;
		if (i % 8 == 0)
			usleep(100);
	}
	return NULL;
}

Test(fdio, read_assembles_a_frame_from_byte_sized_pieces)
{
	struct dp_frame_buf out = {0}, in = {0};
	struct req_store st;
	struct dribbler d;
	pthread_t t;

	cr_assert_eq(
	    dp_frame_append(&out, &build_request(&st, DUALPATH__V1__REQUEST__BODY_GENERATE)->base,
	                    DP_FRAME_MAX_DEFAULT),
	    0);
	cr_assert_eq(dp_frame_append(&out,
	                             &build_request(&st, DUALPATH__V1__REQUEST__BODY_HELLO)->base,
	                             DP_FRAME_MAX_DEFAULT),
	             0);
	d = (struct dribbler){.fd = sv[0], .b = out.data, .n = out.len};
	cr_assert_eq(pthread_create(&t, NULL, dribble, &d), 0);
	cr_assert_gt(dp_frame_read_fd(sv[1], &in, DP_FRAME_MAX_DEFAULT, 5000), 0);
	cr_assert_eq(
	    in.len + 4,
	    dp_frame_size(&build_request(&st, DUALPATH__V1__REQUEST__BODY_GENERATE)->base));
	cr_assert_gt(dp_frame_read_fd(sv[1], &in, DP_FRAME_MAX_DEFAULT, 5000), 0);
	cr_assert_eq(in.len + 4,
	             dp_frame_size(&build_request(&st, DUALPATH__V1__REQUEST__BODY_HELLO)->base));
	cr_assert_eq(pthread_join(t, NULL), 0);
	dp_frame_buf_fini(&in);
	dp_frame_buf_fini(&out);
}

Test(fdio, read_times_out_when_nothing_comes)
{
	struct dp_frame_buf fb = {0};
	int64_t t0 = (int64_t)dp_clock_ms(), dt;

	cr_assert_eq(dp_frame_read_fd(sv[1], &fb, 64, 100), -ETIMEDOUT);
	dt = (int64_t)dp_clock_ms() - t0;
	cr_assert_geq(dt, 95);
	cr_assert_lt(dt, 2000);
	/* The deadline covers the whole frame, not each read. */
	cr_assert_eq(write(sv[0], "\x10\0\0\0\x08", 5), 5);
	t0 = (int64_t)dp_clock_ms();
	cr_assert_eq(dp_frame_read_fd(sv[1], &fb, 64, 100), -ETIMEDOUT);
	cr_assert_lt((int64_t)dp_clock_ms() - t0, 2000);
	cr_assert_eq(fb.len, 0);
	dp_frame_buf_fini(&fb);
}

Test(fdio, write_times_out_when_the_peer_does_not_read)
{
	static uint8_t junk[65536];
	int64_t t0;
	int ret;

	/* Fill the socket until a write cannot finish. */
	t0 = (int64_t)dp_clock_ms();
	do
		ret = dp_frame_write_all(sv[0], junk, sizeof(junk), 100);
	while (ret == 0 && (int64_t)dp_clock_ms() - t0 < 5000);
	cr_assert_eq(ret, -ETIMEDOUT);
}

Test(fdio, eof_at_a_boundary_is_zero_and_inside_a_frame_is_econnreset)
{
	struct dp_frame_buf fb = {0};
	struct req_store st;
	uint8_t b[256];
	size_t len;

	cr_assert_eq(dp_frame_encode(&build_request(&st, DUALPATH__V1__REQUEST__BODY_HELLO)->base,
	                             64, b, sizeof(b), &len),
	             0);
	cr_assert_eq(write(sv[0], b, len), (ssize_t)len);
	cr_assert_eq(write(sv[0], b, 2), 2); /* half a header */
	close(sv[0]);
	sv[0] = -1;
	cr_assert_eq(dp_frame_read_fd(sv[1], &fb, 64, 1000), (int)len - 4);
	cr_assert_eq(dp_frame_read_fd(sv[1], &fb, 64, 1000), -ECONNRESET);
	cr_assert_eq(dp_frame_read_fd(sv[1], &fb, 64, 1000), 0, "then a clean EOF");
	dp_frame_buf_fini(&fb);
}

Test(fdio, eof_inside_a_body_is_econnreset)
{
	struct dp_frame_buf fb = {0};

	cr_assert_eq(write(sv[0], "\x05\0\0\0\x08\x01", 6), 6);
	close(sv[0]);
	sv[0] = -1;
	cr_assert_eq(dp_frame_read_fd(sv[1], &fb, 64, 1000), -ECONNRESET);
	cr_assert_eq(fb.len, 0);
	dp_frame_buf_fini(&fb);
}

Test(fdio, read_rejects_bad_lengths_before_the_body)
{
	struct dp_frame_buf fb = {0};

	/* Only the header is sent: an answer without waiting for a body. */
	cr_assert_eq(write(sv[0], "\x41\0\0\0", 4), 4);
	cr_assert_eq(dp_frame_read_fd(sv[1], &fb, 64, 5000), -EMSGSIZE);
	cr_assert_null(fb.data, "nothing allocated for a refused length");
	cr_assert_eq(write(sv[0], "\0\0\0\0", 4), 4);
	cr_assert_eq(dp_frame_read_fd(sv[1], &fb, 64, 5000), -EPROTO);
	cr_assert_eq(dp_frame_read_fd(sv[1], &fb, 0, 5000), -EINVAL);
	cr_assert_eq(dp_frame_read_fd(-1, &fb, 64, 5000), -EINVAL);
	dp_frame_buf_fini(&fb);
}

Test(fdio, write_to_a_closed_peer_is_epipe_not_sigpipe)
{
	struct req_store st;

	close(sv[1]);
	sv[1] = -1;
	/* SIGPIPE would kill the test; MSG_NOSIGNAL must prevent it. */
	cr_assert_eq(
	    dp_frame_write_fd(sv[0], &build_request(&st, DUALPATH__V1__REQUEST__BODY_HEALTH)->base,
	                      64, 1000),
	    -EPIPE);
}

Test(fdio, write_refuses_what_it_cannot_frame)
{
	Dualpath__V1__Request empty = DUALPATH__V1__REQUEST__INIT;
	struct req_store st;

	cr_assert_eq(dp_frame_write_fd(sv[0], &empty.base, 64, 1000), -EINVAL);
	cr_assert_eq(dp_frame_write_fd(sv[0],
	                               &build_request(&st, DUALPATH__V1__REQUEST__BODY_HELLO)->base,
	                               4, 1000),
	             -EMSGSIZE);
	cr_assert_eq(dp_frame_write_fd(-1, &st.req.base, 64, 1000), -EINVAL);
	cr_assert_eq(dp_frame_write_all(sv[0], NULL, 1, 1000), -EINVAL);
	cr_assert_eq(dp_frame_write_all(sv[0], NULL, 0, 1000), 0);
}

Test(fdio, frames_cross_a_pipe_too)
{
	struct dp_frame_buf fb = {0};
	struct resp_store st;
	Dualpath__V1__Response *out;
	int p[2];

	cr_assert_eq(pipe(p), 0);
	cr_assert_eq(
	    dp_frame_write_fd(p[1], &build_response(&st, DUALPATH__V1__RESPONSE__BODY_STATS)->base,
	                      DP_FRAME_MAX_DEFAULT, 1000),
	    0);
	cr_assert_gt(dp_frame_read_fd(p[0], &fb, DP_FRAME_MAX_DEFAULT, 1000), 0);
	cr_assert_eq(dp_proto_response_decode(fb.data, fb.len, 0, &out), 0);
	cr_assert(same_message(&out->base, &st.resp.base));
	dp_proto_response_free(out);
	/* A full pipe times out too, even a blocking one. */
	static uint8_t junk[4096];
	int ret, n = 0;

	do
		ret = dp_frame_write_all(p[1], junk, sizeof(junk), 50);
	while (ret == 0 && ++n < 1000);
	cr_assert_eq(ret, -ETIMEDOUT);
	close(p[0]);
	close(p[1]);
	dp_frame_buf_fini(&fb);
}
