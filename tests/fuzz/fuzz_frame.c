/* SPDX-License-Identifier: MIT */
/*
 * tests/fuzz/fuzz_frame.c — libFuzzer target for the daemon's input path:
 * the frame reader, protobuf decoding and the request rules.
 *
 * Input: a 6-byte prelude, then the byte stream a client would send.
 *   [0]    max_frame: 16 small limits (1..61) or 64 KiB, so both the size
 *          check and real frames get exercised;
 *   [1..4] seed of the generator that cuts the stream into pieces (1 byte
 *          to 4 KiB) and picks feed() or space()+commit() for each;
 *   [5]    decoding budget and limits: bit 0-3 a small mem_limit (else the
 *          default), bits 4-7 the request limits.
 *
 * Checked, aborting on any difference:
 *   - the reader yields exactly the frames, and then the error, of a
 *     one-pass reference splitter over the whole stream, never holds more
 *     than max_frame + 4 bytes, and always makes progress;
 *   - a decoded request or response re-encodes, decodes again, and
 *     re-encodes to the same bytes (and an empty message refuses to
 *     encode); a re-decoded request gets the same verdict from the rules,
 *     message included.
 * ASan/UBSan (and LeakSanitizer) watch everything, protobuf-c's own unpack
 * code included.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto/frame.h"

#define CHECK(cond)                                                                                \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);   \
			abort();                                                                   \
		}                                                                                  \
	} while (0)

struct rng {
	uint32_t s;
};

static uint32_t rng_next(struct rng *r)
{
	/* xorshift32 */
	r->s ^= r->s << 13;
	r->s ^= r->s >> 17;
	r->s ^= r->s << 5;
	return r->s;
}

struct ctx {
	uint32_t max;
	size_t mem_limit;
	struct dp_proto_limits lim;
	/* The reference split of the whole stream. */
	const uint8_t *stream;
	size_t len;
	size_t ref_off; /* start of the next reference frame's header */
	int ref_err;    /* what the reference says after its last frame */
};

/* The next frame per the reference: 0 with body/len, -EAGAIN at the end of
 * the complete frames, or the framing error. */
static int ref_next(struct ctx *c, const uint8_t **body, size_t *len)
{
	const uint8_t *p = c->stream + c->ref_off;
	size_t left = c->len - c->ref_off;
	uint32_t n;

	if (left < 4)
		return -EAGAIN;
	n = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
	if (n == 0)
		return -EPROTO;
	if (n > c->max)
		return -EMSGSIZE;
	if (left - 4 < n)
		return -EAGAIN;
	*body = p + 4;
	*len = n;
	c->ref_off += 4 + (size_t)n;
	return 0;
}

/* Re-encode msg, decode that, re-encode again: the two encodings agree. */
static void reencode_request(const Dualpath__V1__Request *req, const struct ctx *c)
{
	struct dp_frame_buf a = {0}, b = {0};
	struct dp_proto_fault f1 = {0}, f2 = {0};
	char m1[160] = "", m2[160] = "";
	Dualpath__V1__Request *again;
	int r1, r2, ret;

	r1 = dp_proto_request_check(req, &c->lim, &f1, m1, sizeof(m1));
	CHECK(r1 == 0 || r1 == -EBADMSG);
	CHECK(r1 == 0 || (f1.rule > DP_PROTO_RULE_NONE && f1.rule < DP_PROTO_RULE_MAX));
	CHECK(r1 == 0 || m1[0] != '\0');
	(void)dp_proto_request_name(req);
	(void)dp_proto_request_admin(req);

	ret = dp_frame_append(&a, &req->base, DP_FRAME_MAX_LIMIT);
	if (protobuf_c_message_get_packed_size(&req->base) == 0) {
		CHECK(ret == -EINVAL); /* would be a zero-length frame */
		return;
	}
	CHECK(ret == 0);
	ret = dp_proto_request_decode(a.data + 4, a.len - 4, 0, &again);
	CHECK(ret == 0);
	CHECK(again->request_id == req->request_id);
	CHECK(again->body_case == req->body_case);
	r2 = dp_proto_request_check(again, &c->lim, &f2, m2, sizeof(m2));
	CHECK(r1 == r2);
	CHECK(f1.rule == f2.rule && f1.code == f2.code);
	CHECK(strcmp(m1, m2) == 0);
	CHECK(dp_frame_append(&b, &again->base, DP_FRAME_MAX_LIMIT) == 0);
	CHECK(a.len == b.len && memcmp(a.data, b.data, a.len) == 0);
	dp_proto_request_free(again);
	dp_frame_buf_fini(&a);
	dp_frame_buf_fini(&b);
}

static void reencode_response(const Dualpath__V1__Response *resp)
{
	struct dp_frame_buf a = {0}, b = {0};
	Dualpath__V1__Response *again;
	int ret;

	ret = dp_frame_append(&a, &resp->base, DP_FRAME_MAX_LIMIT);
	if (protobuf_c_message_get_packed_size(&resp->base) == 0) {
		CHECK(ret == -EINVAL);
		return;
	}
	CHECK(ret == 0);
	CHECK(dp_proto_response_decode(a.data + 4, a.len - 4, 0, &again) == 0);
	CHECK(dp_frame_append(&b, &again->base, DP_FRAME_MAX_LIMIT) == 0);
	CHECK(a.len == b.len && memcmp(a.data, b.data, a.len) == 0);
	dp_proto_response_free(again);
	dp_frame_buf_fini(&a);
	dp_frame_buf_fini(&b);
}

static void handle(const struct ctx *c, const uint8_t *body, size_t len)
{
	Dualpath__V1__Request *req;
	Dualpath__V1__Response *resp;
	int ret;

	ret = dp_proto_request_decode(body, len, c->mem_limit, &req);
	CHECK(ret == 0 || ret == -EBADMSG || ret == -EILSEQ || ret == -EMSGSIZE);
	CHECK(ret != -EMSGSIZE || c->mem_limit != 0);
	if (ret == 0) {
		reencode_request(req, c);
		dp_proto_request_free(req);
	}
	ret = dp_proto_response_decode(body, len, c->mem_limit, &resp);
	CHECK(ret == 0 || ret == -EBADMSG || ret == -EILSEQ || ret == -EMSGSIZE);
	CHECK(ret != -EMSGSIZE || c->mem_limit != 0);
	if (ret == 0) {
		reencode_response(resp);
		dp_proto_response_free(resp);
	}
}

/* Pull every frame the reader has and compare with the reference; returns
 * the reader's final answer (-EAGAIN or the framing error) and counts the
 * frames in *pulled. */
static int drain(struct dp_frame_reader *r, struct ctx *c, size_t *pulled)
{
	for (;;) {
		const uint8_t *body, *rbody = NULL;
		size_t len, rlen = 0;
		int ret = dp_frame_reader_next(r, &body, &len);

		if (ret != 0)
			return ret;
		CHECK(ref_next(c, &rbody, &rlen) == 0);
		CHECK(len == rlen && memcmp(body, rbody, len) == 0);
		handle(c, body, len);
		(*pulled)++;
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct dp_frame_reader *r;
	struct ctx c = {0};
	struct rng g;
	size_t off;
	int err = 0, ret;

	if (size < 6)
		return 0;
	c.max = data[0] < 16 ? 1u + data[0] * 4u : 65536u;
	g.s = ((uint32_t)data[1] | (uint32_t)data[2] << 8 | (uint32_t)data[3] << 16 |
	       (uint32_t)data[4] << 24) |
	      1u;
	c.mem_limit = (data[5] & 0x0f) ? (size_t)(data[5] & 0x0f) * 97 : 0;
	dp_proto_limits_init(&c.lim);
	if (data[5] & 0x10)
		c.lim.vocab_size = 1000;
	if (data[5] & 0x20) {
		c.lim.max_prompt_tokens = 4;
		c.lim.max_text_bytes = 8;
	}
	if (data[5] & 0x40)
		c.lim.max_new_tokens = 16;
	if (data[5] & 0x80)
		c.lim.max_stop_ids = 1;
	c.stream = data + 6;
	c.len = size - 6;

	CHECK(dp_frame_reader_new(c.max, &r) == 0);
	off = 0;
	while (off < c.len && !err) {
		uint32_t x = rng_next(&g);
		size_t piece = x & 0x100 ? 1 + (x >> 20) % 4096 : 1 + (x >> 20) % 9;
		size_t taken, pulled = 0;

		if (piece > c.len - off)
			piece = c.len - off;
		if (x & 1) {
			ret = dp_frame_reader_feed(r, c.stream + off, piece);
			if (ret < 0) {
				err = ret;
				break;
			}
			taken = (size_t)ret;
		} else {
			void *dst;
			size_t room;

			ret = dp_frame_reader_space(r, &dst, &room);
			if (ret == -ENOBUFS) {
				taken = 0;
			} else if (ret < 0) {
				err = ret;
				break;
			} else {
				CHECK(room >= 1);
				taken = piece < room ? piece : room;
				memcpy(dst, c.stream + off, taken);
				ret = dp_frame_reader_commit(r, taken);
				if (ret < 0)
					err = ret;
			}
		}
		off += taken;
		CHECK(dp_frame_reader_capacity(r) <= (size_t)c.max + 4);
		ret = drain(r, &c, &pulled);
		if (ret != -EAGAIN)
			err = ret;
		else
			CHECK(taken > 0 || pulled > 0); /* no room means a frame was ready */
	}
	if (!err) {
		size_t pulled = 0;

		ret = drain(r, &c, &pulled);
		if (ret != -EAGAIN)
			err = ret;
	}
	/* The reference has handed out the same frames; it agrees on the end. */
	{
		const uint8_t *rb;
		size_t rl;
		int want = ref_next(&c, &rb, &rl);

		CHECK(want != 0);
		if (err) {
			CHECK(err == want);
		} else {
			CHECK(want == -EAGAIN);
			CHECK(dp_frame_reader_pending(r) == c.len - c.ref_off);
		}
	}
	dp_frame_reader_free(r);
	return 0;
}
