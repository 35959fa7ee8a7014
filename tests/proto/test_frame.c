/* SPDX-License-Identifier: MIT */
/* proto/frame.h: the incremental frame reader and the encoder. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/socket.h>
#include <unistd.h>

#include "proto-test.h"

/* Three frames of different sizes, back to back. */
struct stream {
	uint8_t b[4096];
	size_t n;
	size_t off[3], len[3]; /* body offsets and lengths */
};

static void make_stream(struct stream *s)
{
	static const Dualpath__V1__Request__BodyCase kinds[3] = {
	    DUALPATH__V1__REQUEST__BODY_HELLO,
	    DUALPATH__V1__REQUEST__BODY_GENERATE,
	    DUALPATH__V1__REQUEST__BODY_STATS,
	};
	struct req_store st;

	s->n = 0;
	for (int i = 0; i < 3; i++) {
		size_t len;

		build_request(&st, kinds[i]);
		cr_assert_eq(dp_frame_encode(&st.req.base, DP_FRAME_MAX_DEFAULT, s->b + s->n,
		                             sizeof(s->b) - s->n, &len),
		             0);
		s->off[i] = s->n + DP_FRAME_HEADER;
		s->len[i] = len - DP_FRAME_HEADER;
		s->n += len;
	}
}

/* Pull every complete frame; check each against the stream in order. */
static int pull(struct dp_frame_reader *r, const struct stream *s, int got)
{
	const uint8_t *body;
	size_t len;
	int ret;

	while ((ret = dp_frame_reader_next(r, &body, &len)) == 0) {
		cr_assert_lt(got, 3);
		cr_assert_eq(len, s->len[got], "frame %d: %zu bytes, want %zu", got, len,
		             s->len[got]);
		cr_assert_arr_eq(body, s->b + s->off[got], len);
		got++;
	}
	cr_assert_eq(ret, -EAGAIN);
	return got;
}

Test(frame_reader, new_rejects_bad_max_and_free_accepts_null)
{
	struct dp_frame_reader *r = (void *)0x1;

	cr_assert_eq(dp_frame_reader_new(0, &r), -EINVAL);
	cr_assert_eq(dp_frame_reader_new(DP_FRAME_MAX_LIMIT + 1, &r), -EINVAL);
	cr_assert_eq(dp_frame_reader_new(16, NULL), -EINVAL);
	cr_assert_eq(r, (void *)0x1, "output untouched on failure");
	dp_frame_reader_free(NULL);
	cr_assert_eq(dp_frame_reader_new(DP_FRAME_MAX_LIMIT, &r), 0);
	cr_assert_eq(dp_frame_reader_capacity(r), 0, "nothing allocated before bytes arrive");
	dp_frame_reader_free(r);
}

Test(frame_reader, several_frames_in_one_feed_come_out_in_order)
{
	struct dp_frame_reader *r;
	const uint8_t *body[3];
	size_t len[3];
	struct stream s;

	make_stream(&s);
	cr_assert_eq(dp_frame_reader_new(DP_FRAME_MAX_DEFAULT, &r), 0);
	cr_assert_eq(dp_frame_reader_feed(r, s.b, s.n), (int)s.n);
	/* All three bodies stay valid together until bytes are added. */
	for (int i = 0; i < 3; i++)
		cr_assert_eq(dp_frame_reader_next(r, &body[i], &len[i]), 0);
	for (int i = 0; i < 3; i++) {
		cr_assert_eq(len[i], s.len[i]);
		cr_assert_arr_eq(body[i], s.b + s.off[i], len[i]);
	}
	cr_assert_eq(dp_frame_reader_next(r, &body[0], &len[0]), -EAGAIN);
	cr_assert_eq(dp_frame_reader_pending(r), 0);
	dp_frame_reader_free(r);
}

Test(frame_reader, frames_split_at_every_byte_boundary)
{
	struct stream s;

	make_stream(&s);
	/* Every single split point... */
	for (size_t k = 0; k <= s.n; k++) {
		struct dp_frame_reader *r;
		int got;

		cr_assert_eq(dp_frame_reader_new(DP_FRAME_MAX_DEFAULT, &r), 0);
		cr_assert_eq(dp_frame_reader_feed(r, s.b, k), (int)k);
		got = pull(r, &s, 0);
		cr_assert_eq(dp_frame_reader_feed(r, s.b + k, s.n - k), (int)(s.n - k));
		got = pull(r, &s, got);
		cr_assert_eq(got, 3, "split at %zu", k);
		cr_assert_eq(dp_frame_reader_pending(r), 0);
		dp_frame_reader_free(r);
	}
	/* ...every pair of split points... */
	for (size_t a = 0; a <= s.n; a += 3)
		for (size_t b = a; b <= s.n; b += 5) {
			struct dp_frame_reader *r;
			int got;

			cr_assert_eq(dp_frame_reader_new(DP_FRAME_MAX_DEFAULT, &r), 0);
			cr_assert_eq(dp_frame_reader_feed(r, s.b, a), (int)a);
			got = pull(r, &s, 0);
			cr_assert_eq(dp_frame_reader_feed(r, s.b + a, b - a), (int)(b - a));
			got = pull(r, &s, got);
			cr_assert_eq(dp_frame_reader_feed(r, s.b + b, s.n - b), (int)(s.n - b));
			cr_assert_eq(pull(r, &s, got), 3, "splits at %zu, %zu", a, b);
			dp_frame_reader_free(r);
		}
	/* ...and one byte at a time. */
	struct dp_frame_reader *r;
	int got = 0;

	cr_assert_eq(dp_frame_reader_new(DP_FRAME_MAX_DEFAULT, &r), 0);
	for (size_t i = 0; i < s.n; i++) {
		cr_assert_eq(dp_frame_reader_feed(r, s.b + i, 1), 1);
		got = pull(r, &s, got);
	}
	cr_assert_eq(got, 3);
	dp_frame_reader_free(r);
}

Test(frame_reader, oversized_length_is_rejected_from_the_header_alone)
{
	struct dp_frame_reader *r;
	const uint8_t *body;
	uint8_t hdr[4];
	size_t len;

	cr_assert_eq(dp_frame_reader_new(100, &r), 0);
	put_header(hdr, 101);
	/* Three header bytes: nothing to say yet. */
	cr_assert_eq(dp_frame_reader_feed(r, hdr, 3), 3);
	cr_assert_eq(dp_frame_reader_next(r, &body, &len), -EAGAIN);
	/* The fourth completes it: rejected with no body byte sent. */
	cr_assert_eq(dp_frame_reader_feed(r, hdr + 3, 1), -EMSGSIZE);
	cr_assert_eq(dp_frame_reader_next(r, &body, &len), -EMSGSIZE);
	cr_assert_leq(dp_frame_reader_capacity(r), 104);
	dp_frame_reader_free(r);
}

Test(frame_reader, oversized_length_with_body_bytes_takes_none_of_them)
{
	struct dp_frame_reader *r;
	uint8_t b[64] = {0};

	cr_assert_eq(dp_frame_reader_new(1u << 20, &r), 0);
	put_header(b, (1u << 20) + 1);
	cr_assert_eq(dp_frame_reader_feed(r, b, sizeof(b)), -EMSGSIZE);
	cr_assert_eq(dp_frame_reader_pending(r), 4, "stopped at the end of the header");
	cr_assert_leq(dp_frame_reader_capacity(r), DP_FRAME_READER_INIT);
	dp_frame_reader_free(r);
}

Test(frame_reader, oversized_length_after_good_frames_fails_when_reached)
{
	struct dp_frame_reader *r;
	const uint8_t *body;
	uint8_t b[16];
	size_t len;

	put_header(b, 2);
	b[4] = 0x08;
	b[5] = 0x01;
	put_header(b + 6, 0xffffffffu);
	cr_assert_eq(dp_frame_reader_new(64, &r), 0);
	cr_assert_eq(dp_frame_reader_feed(r, b, 10), 10);
	cr_assert_eq(dp_frame_reader_next(r, &body, &len), 0);
	cr_assert_eq(len, 2);
	cr_assert_eq(dp_frame_reader_next(r, &body, &len), -EMSGSIZE);
	dp_frame_reader_free(r);
}

Test(frame_reader, length_equal_to_max_is_accepted)
{
	struct dp_frame_reader *r;
	const uint8_t *body;
	uint8_t b[4 + 300];
	size_t len;

	memset(b, 0xab, sizeof(b));
	put_header(b, 300);
	cr_assert_eq(dp_frame_reader_new(300, &r), 0);
	cr_assert_eq(dp_frame_reader_feed(r, b, sizeof(b)), (int)sizeof(b));
	cr_assert_eq(dp_frame_reader_next(r, &body, &len), 0);
	cr_assert_eq(len, 300);
	cr_assert_eq(body[299], 0xab);
	cr_assert_eq(dp_frame_reader_capacity(r), 304, "init capacity is max + 4 when smaller");
	dp_frame_reader_free(r);
}

Test(frame_reader, zero_length_frame_is_a_protocol_error)
{
	struct dp_frame_reader *r;
	const uint8_t *body;
	uint8_t b[4] = {0};
	size_t len;
	void *p;

	cr_assert_eq(dp_frame_reader_new(64, &r), 0);
	cr_assert_eq(dp_frame_reader_feed(r, b, 4), -EPROTO);
	cr_assert_eq(dp_frame_reader_next(r, &body, &len), -EPROTO);
	/* Sticky: nothing brings the stream back. */
	cr_assert_eq(dp_frame_reader_feed(r, "\x02\0\0\0\x08\x01", 6), -EPROTO);
	cr_assert_eq(dp_frame_reader_space(r, &p, &len), -EPROTO);
	cr_assert_eq(dp_frame_reader_commit(r, 0), -EPROTO);
	dp_frame_reader_free(r);
}

Test(frame_reader, buffer_grows_for_a_big_frame_and_shrinks_after)
{
	uint32_t max = 1u << 20;
	struct dp_frame_reader *r;
	const uint8_t *body;
	size_t len, n = 4 + max;
	uint8_t *b = malloc(n);

	cr_assert_not_null(b);
	for (size_t i = 0; i < n; i++)
		b[i] = (uint8_t)(i * 7);
	put_header(b, max);
	cr_assert_eq(dp_frame_reader_new(max, &r), 0);
	for (size_t off = 0; off < n;) {
		size_t k = n - off < 1000 ? n - off : 1000;

		cr_assert_eq(dp_frame_reader_feed(r, b + off, k), (int)k);
		cr_assert_leq(dp_frame_reader_capacity(r), (size_t)max + 4);
		off += k;
	}
	cr_assert_eq(dp_frame_reader_capacity(r), (size_t)max + 4);
	cr_assert_eq(dp_frame_reader_next(r, &body, &len), 0);
	cr_assert_eq(len, max);
	cr_assert_arr_eq(body, b + 4, max);
	/* The next feed finds the buffer drained and returns to the start size. */
	cr_assert_eq(dp_frame_reader_feed(r, "\x02\0", 2), 2);
	cr_assert_eq(dp_frame_reader_capacity(r), DP_FRAME_READER_INIT);
	dp_frame_reader_free(r);
	free(b);
}

Test(frame_reader, full_of_complete_frames_asks_to_pull_first)
{
	struct dp_frame_reader *r;
	const uint8_t *body;
	uint8_t b[4 + 8];
	size_t len;
	void *p;
	int got = 0;

	memset(b, 0x11, sizeof(b));
	put_header(b, 8);
	cr_assert_eq(dp_frame_reader_new(8, &r), 0); /* capacity 12: one frame */
	cr_assert_eq(dp_frame_reader_feed(r, b, sizeof(b)), 12);
	cr_assert_eq(dp_frame_reader_feed(r, b, sizeof(b)), 0, "no room until pulled");
	cr_assert_eq(dp_frame_reader_space(r, &p, &len), -ENOBUFS);
	while (dp_frame_reader_next(r, &body, &len) == 0)
		got++;
	cr_assert_eq(got, 1);
	cr_assert_eq(dp_frame_reader_feed(r, b, sizeof(b)), 12);
	cr_assert_eq(dp_frame_reader_next(r, &body, &len), 0);
	dp_frame_reader_free(r);
}

Test(frame_reader, space_and_commit_let_the_caller_read_in)
{
	struct dp_frame_reader *r;
	const uint8_t *body;
	struct stream s;
	size_t off = 0, len;
	int got = 0;

	make_stream(&s);
	cr_assert_eq(dp_frame_reader_new(DP_FRAME_MAX_DEFAULT, &r), 0);
	while (off < s.n) {
		size_t room, k;
		void *p;

		cr_assert_eq(dp_frame_reader_space(r, &p, &room), 0);
		cr_assert_geq(room, 1);
		k = s.n - off < 7 ? s.n - off : 7;
		k = k < room ? k : room;
		memcpy(p, s.b + off, k);
		cr_assert_eq(dp_frame_reader_commit(r, k), 0);
		off += k;
		got = pull(r, &s, got);
	}
	cr_assert_eq(got, 3);
	cr_assert_eq(dp_frame_reader_space(r, (void **)&body, &len), 0);
	cr_assert_eq(dp_frame_reader_commit(r, len + 1), -EINVAL, "more than the space");
	dp_frame_reader_free(r);
}

Test(frame_reader, read_fd_reads_a_nonblocking_socket)
{
	struct dp_frame_reader *r;
	struct stream s;
	int sv[2], got = 0;

	make_stream(&s);
	cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
	cr_assert_eq(dp_frame_reader_new(DP_FRAME_MAX_DEFAULT, &r), 0);
	cr_assert_eq(dp_frame_reader_read_fd(r, sv[0]), -EAGAIN);
	/* Half of it, then the rest. */
	cr_assert_eq(write(sv[1], s.b, s.n / 2), (ssize_t)(s.n / 2));
	cr_assert_eq(dp_frame_reader_read_fd(r, sv[0]), (int)(s.n / 2));
	got = pull(r, &s, got);
	cr_assert_eq(write(sv[1], s.b + s.n / 2, s.n - s.n / 2), (ssize_t)(s.n - s.n / 2));
	cr_assert_gt(dp_frame_reader_read_fd(r, sv[0]), 0);
	got = pull(r, &s, got);
	cr_assert_eq(got, 3);
	/* A truncated frame, then EOF: pending says so. */
	cr_assert_eq(write(sv[1], s.b, 6), 6);
	close(sv[1]);
	cr_assert_eq(dp_frame_reader_read_fd(r, sv[0]), 6);
	cr_assert_eq(dp_frame_reader_read_fd(r, sv[0]), 0);
	cr_assert_eq(dp_frame_reader_pending(r), 6);
	cr_assert_eq(dp_frame_reader_read_fd(r, -1), -EINVAL);
	close(sv[0]);
	dp_frame_reader_free(r);
}

Test(frame_reader, read_fd_rejects_an_oversized_header_from_the_socket)
{
	struct dp_frame_reader *r;
	uint8_t hdr[4];
	int sv[2];

	cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
	cr_assert_eq(dp_frame_reader_new(1024, &r), 0);
	put_header(hdr, 1u << 30);
	cr_assert_eq(write(sv[1], hdr, 4), 4);
	cr_assert_eq(dp_frame_reader_read_fd(r, sv[0]), -EMSGSIZE);
	cr_assert_leq(dp_frame_reader_capacity(r), 1028);
	close(sv[0]);
	close(sv[1]);
	dp_frame_reader_free(r);
}

/* ---- encoder ------------------------------------------------------------ */

Test(frame_encode, writes_a_little_endian_length_then_the_message)
{
	struct req_store st;
	uint8_t b[256];
	size_t len, plen;
	uint8_t *p;

	build_request(&st, DUALPATH__V1__REQUEST__BODY_GENERATE);
	cr_assert_eq(dp_frame_encode(&st.req.base, DP_FRAME_MAX_DEFAULT, b, sizeof(b), &len), 0);
	p = packed(&st.req.base, &plen);
	cr_assert_eq(len, plen + 4);
	cr_assert_eq(dp_frame_size(&st.req.base), len);
	cr_assert_eq(b[0] | b[1] << 8 | b[2] << 16 | (uint32_t)b[3] << 24, plen);
	cr_assert_arr_eq(b + 4, p, plen);
	free(p);
}

Test(frame_encode, checks_buffer_size_max_and_empty_messages)
{
	Dualpath__V1__Request empty = DUALPATH__V1__REQUEST__INIT;
	struct req_store st;
	uint8_t b[256];
	size_t len = 12345, need;

	build_request(&st, DUALPATH__V1__REQUEST__BODY_GENERATE);
	need = dp_frame_size(&st.req.base);
	cr_assert_eq(dp_frame_encode(&st.req.base, DP_FRAME_MAX_DEFAULT, b, need - 1, &len),
	             -ENOBUFS);
	cr_assert_eq(dp_frame_encode(&st.req.base, (uint32_t)need - 5, b, sizeof(b), &len),
	             -EMSGSIZE);
	cr_assert_eq(dp_frame_encode(&st.req.base, (uint32_t)need - 4, b, sizeof(b), &len), 0);
	cr_assert_eq(len, need);
	len = 12345;
	cr_assert_eq(dp_frame_encode(&empty.base, 64, b, sizeof(b), &len), -EINVAL,
	             "a message that packs to nothing would be a zero-length frame");
	cr_assert_eq(dp_frame_encode(&st.req.base, 0, b, sizeof(b), &len), -EINVAL);
	cr_assert_eq(dp_frame_encode(NULL, 64, b, sizeof(b), &len), -EINVAL);
	cr_assert_eq(len, 12345, "output untouched on failure");
}

Test(frame_encode, refuses_a_message_protobuf_c_could_not_pack)
{
	Dualpath__V1__StatsReply stats = DUALPATH__V1__STATS_REPLY__INIT;
	Dualpath__V1__Metric *metrics[1] = {NULL};
	struct dp_frame_buf fb;
	uint8_t b[64];
	size_t len;

	stats.n_metrics = 1;
	stats.metrics = metrics;
	dp_frame_buf_init(&fb);
	cr_assert_eq(dp_frame_encode(&stats.base, 64, b, sizeof(b), &len), -EINVAL);
	cr_assert_eq(dp_frame_append(&fb, &stats.base, 64), -EINVAL);
	cr_assert_eq(fb.len, 0);
	dp_frame_buf_fini(&fb);
}

Test(frame_encode, append_queues_frames_a_reader_cuts_apart)
{
	struct dp_frame_reader *r;
	struct dp_frame_buf fb;
	struct resp_store st;
	const uint8_t *body;
	size_t len;

	dp_frame_buf_init(&fb);
	for (size_t i = 0; i < N_RESPONSE_BODIES; i++)
		for (int k = 0; k < 20; k++) /* past the first allocation */
			cr_assert_eq(dp_frame_append(&fb,
			                             &build_response(&st, response_bodies[i])->base,
			                             DP_FRAME_MAX_DEFAULT),
			             0);
	cr_assert_gt(fb.len, DP_FRAME_READER_INIT, "more than the reader holds at once");
	cr_assert_eq(dp_frame_reader_new(DP_FRAME_MAX_DEFAULT, &r), 0);
	/* Feed what fits, pull what is complete, until all is through. */
	size_t off = 0, got = 0;

	while (off < fb.len || got < 20 * N_RESPONSE_BODIES) {
		int n = dp_frame_reader_feed(r, fb.data + off, fb.len - off);

		cr_assert_geq(n, 0);
		off += (size_t)n;
		while (dp_frame_reader_next(r, &body, &len) == 0) {
			Dualpath__V1__Response *resp;
			size_t i = got / 20;

			cr_assert_lt(i, N_RESPONSE_BODIES);
			cr_assert_eq(dp_proto_response_decode(body, len, 0, &resp), 0);
			cr_assert(same_message(&resp->base,
			                       &build_response(&st, response_bodies[i])->base));
			dp_proto_response_free(resp);
			got++;
		}
		cr_assert_leq(dp_frame_reader_capacity(r), DP_FRAME_READER_INIT);
	}
	cr_assert_eq(dp_frame_reader_next(r, &body, &len), -EAGAIN);
	dp_frame_reader_free(r);

	/* consume drops written bytes from the front. */
	len = fb.len;
	dp_frame_buf_consume(&fb, 10);
	cr_assert_eq(fb.len, len - 10);
	dp_frame_buf_consume(&fb, SIZE_MAX);
	cr_assert_eq(fb.len, 0);
	dp_frame_buf_fini(&fb);
	dp_frame_buf_fini(&fb);
	dp_frame_buf_fini(NULL);
	cr_assert_null(fb.data);
}

Test(frame_encode, append_checks_max_and_leaves_the_buffer_alone)
{
	struct dp_frame_buf fb = {0};
	struct req_store st;

	build_request(&st, DUALPATH__V1__REQUEST__BODY_HELLO);
	cr_assert_eq(dp_frame_append(&fb, &st.req.base, 64), 0);
	cr_assert_eq(dp_frame_append(&fb, &st.req.base, 4), -EMSGSIZE);
	cr_assert_eq(fb.len, dp_frame_size(&st.req.base));
	cr_assert_eq(dp_frame_append(NULL, &st.req.base, 64), -EINVAL);
	dp_frame_buf_fini(&fb);
}
