/* SPDX-License-Identifier: MIT */
/*
 * proto/frame.c — the frame reader and the encoder.
 *
 * The reader's buffer holds bytes [start, end) not yet returned as frames;
 * [0, start) are frames already handed out, [end, cap) is free. Bytes move
 * (compaction, growth, shrinking) only in dp_frame_reader_space(), which
 * every way of adding bytes goes through, so bodies returned by next() stay
 * put until bytes are added.
 */
#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "proto/frame.h"

struct dp_frame_reader {
	uint8_t *buf;
	size_t cap;      /* bytes allocated, <= max + DP_FRAME_HEADER */
	size_t init_cap; /* what the buffer starts and shrinks back to */
	size_t start;    /* first byte not returned by next() */
	size_t end;      /* one past the last byte received */
	uint32_t max;    /* largest body accepted */
	int err;         /* sticky: 0, -EMSGSIZE or -EPROTO */
};

static uint32_t get_le32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void put_le32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
	p[2] = (uint8_t)(v >> 16);
	p[3] = (uint8_t)(v >> 24);
}

int dp_frame_reader_new(uint32_t max_frame, struct dp_frame_reader **ret_reader)
{
	struct dp_frame_reader *r;

	if (!ret_reader || max_frame == 0 || max_frame > DP_FRAME_MAX_LIMIT)
		return -EINVAL;
	r = calloc(1, sizeof(*r));
	if (!r)
		return -ENOMEM;
	r->max = max_frame;
	r->init_cap = (size_t)max_frame + DP_FRAME_HEADER;
	if (r->init_cap > DP_FRAME_READER_INIT)
		r->init_cap = DP_FRAME_READER_INIT;
	*ret_reader = r;
	return 0;
}

void dp_frame_reader_free(struct dp_frame_reader *r)
{
	if (!r)
		return;
	free(r->buf);
	free(r);
}

/*
 * Look at the header of the frame at start, if it has arrived. Returns 0 and
 * *ret_need = the bytes that frame takes in all (DP_FRAME_HEADER while the
 * header is incomplete), or the error its length is (made sticky).
 */
static int head(struct dp_frame_reader *r, size_t *ret_need)
{
	uint32_t len;

	if (r->err)
		return r->err;
	if (r->end - r->start < DP_FRAME_HEADER) {
		*ret_need = DP_FRAME_HEADER;
		return 0;
	}
	len = get_le32(r->buf + r->start);
	if (len == 0)
		r->err = -EPROTO;
	else if (len > r->max)
		r->err = -EMSGSIZE;
	if (r->err)
		return r->err;
	*ret_need = DP_FRAME_HEADER + (size_t)len;
	return 0;
}

int dp_frame_reader_space(struct dp_frame_reader *r, void **ret_ptr, size_t *ret_len)
{
	size_t need = 0, pending, cap;
	uint8_t *p;
	int ret;

	if (!r || !ret_ptr || !ret_len)
		return -EINVAL;
	ret = head(r, &need);
	if (ret < 0)
		return ret;

	pending = r->end - r->start;
	if (pending == 0) {
		r->start = r->end = 0;
		/* Everything handed out: drop a buffer a big frame grew. */
		if (r->cap > r->init_cap) {
			free(r->buf);
			r->buf = NULL;
			r->cap = 0;
		}
	} else if (r->start > 0) {
		memmove(r->buf, r->buf + r->start, pending);
		r->start = 0;
		r->end = pending;
	}

	cap = r->cap;
	if (cap < r->init_cap)
		cap = r->init_cap;
	if (cap < need) {
		/* Double, to keep a big frame's reads few, up to the limit. */
		cap = cap * 2 < need ? need : cap * 2;
		if (cap > (size_t)r->max + DP_FRAME_HEADER)
			cap = (size_t)r->max + DP_FRAME_HEADER;
	}
	if (cap != r->cap) {
		p = realloc(r->buf, cap);
		if (!p)
			return -ENOMEM;
		r->buf = p;
		r->cap = cap;
	}
	if (r->end == r->cap)
		return -ENOBUFS; /* full of complete frames */
	*ret_ptr = r->buf + r->end;
	*ret_len = r->cap - r->end;
	return 0;
}

int dp_frame_reader_commit(struct dp_frame_reader *r, size_t n)
{
	size_t need = 0;

	if (!r || n > r->cap - r->end)
		return -EINVAL;
	if (r->err)
		return r->err;
	r->end += n;
	return head(r, &need);
}

int dp_frame_reader_feed(struct dp_frame_reader *r, const void *data, size_t len)
{
	const uint8_t *src = data;
	size_t done = 0;

	if (!r || (!data && len > 0) || len > INT32_MAX)
		return -EINVAL;
	while (done < len) {
		size_t room, n, pending;
		void *dst;
		int ret;

		ret = dp_frame_reader_space(r, &dst, &room);
		if (ret == -ENOBUFS)
			break;
		if (ret < 0)
			return ret;
		n = len - done < room ? len - done : room;
		/* Stop at the end of an incomplete header to check it before
		 * taking body bytes. */
		pending = r->end - r->start;
		if (pending < DP_FRAME_HEADER && n > DP_FRAME_HEADER - pending)
			n = DP_FRAME_HEADER - pending;
		memcpy(dst, src + done, n);
		done += n;
		ret = dp_frame_reader_commit(r, n);
		if (ret < 0)
			return ret;
	}
	return (int)done;
}

int dp_frame_reader_read_fd(struct dp_frame_reader *r, int fd)
{
	size_t room;
	ssize_t n;
	void *dst;
	int ret;

	if (!r || fd < 0)
		return -EINVAL;
	ret = dp_frame_reader_space(r, &dst, &room);
	if (ret < 0)
		return ret;
	do
		n = read(fd, dst, room);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return errno == EWOULDBLOCK ? -EAGAIN : -errno;
	if (n == 0)
		return 0;
	ret = dp_frame_reader_commit(r, (size_t)n);
	return ret < 0 ? ret : (int)n;
}

int dp_frame_reader_next(struct dp_frame_reader *r, const uint8_t **ret_body, size_t *ret_len)
{
	size_t need = 0;
	int ret;

	if (!r || !ret_body || !ret_len)
		return -EINVAL;
	ret = head(r, &need);
	if (ret < 0)
		return ret;
	if (r->end - r->start < need) /* also while the header is incomplete */
		return -EAGAIN;
	*ret_body = r->buf + r->start + DP_FRAME_HEADER;
	*ret_len = need - DP_FRAME_HEADER;
	r->start += need;
	return 0;
}

size_t dp_frame_reader_pending(const struct dp_frame_reader *r)
{
	return r ? r->end - r->start : 0;
}

size_t dp_frame_reader_capacity(const struct dp_frame_reader *r)
{
	return r ? r->cap : 0;
}

/* ---- encoding --------------------------------------------------------- */

void dp_frame_buf_init(struct dp_frame_buf *b)
{
	if (b)
		*b = (struct dp_frame_buf){0};
}

void dp_frame_buf_fini(struct dp_frame_buf *b)
{
	if (!b)
		return;
	free(b->data);
	*b = (struct dp_frame_buf){0};
}

void dp_frame_buf_consume(struct dp_frame_buf *b, size_t n)
{
	if (!b)
		return;
	if (n >= b->len) {
		b->len = 0;
		return;
	}
	memmove(b->data, b->data + n, b->len - n);
	b->len -= n;
}

size_t dp_frame_size(const ProtobufCMessage *msg)
{
	if (!msg)
		return 0;
	return DP_FRAME_HEADER + protobuf_c_message_get_packed_size(msg);
}

/* The body size of msg's frame, or the reason it cannot be framed. */
static int frame_body_size(const ProtobufCMessage *msg, uint32_t max_frame, size_t *ret_size)
{
	size_t n;

	if (!msg || max_frame == 0 || max_frame > DP_FRAME_MAX_LIMIT ||
	    !protobuf_c_message_check(msg))
		return -EINVAL;
	n = protobuf_c_message_get_packed_size(msg);
	if (n == 0)
		return -EINVAL;
	if (n > max_frame)
		return -EMSGSIZE;
	*ret_size = n;
	return 0;
}

static void frame_write(const ProtobufCMessage *msg, size_t body, uint8_t *out)
{
	size_t packed;

	put_le32(out, (uint32_t)body);
	packed = protobuf_c_message_pack(msg, out + DP_FRAME_HEADER);
	/* get_packed_size and pack walk the same struct. */
	assert(packed == body);
	(void)packed;
}

int dp_frame_encode(const ProtobufCMessage *msg, uint32_t max_frame, void *buf, size_t len,
                    size_t *ret_len)
{
	size_t body;
	int ret;

	if (!buf || !ret_len)
		return -EINVAL;
	ret = frame_body_size(msg, max_frame, &body);
	if (ret < 0)
		return ret;
	if (len < DP_FRAME_HEADER + body)
		return -ENOBUFS;
	frame_write(msg, body, buf);
	*ret_len = DP_FRAME_HEADER + body;
	return 0;
}

int dp_frame_append(struct dp_frame_buf *b, const ProtobufCMessage *msg, uint32_t max_frame)
{
	size_t body, need, cap;
	uint8_t *p;
	int ret;

	if (!b)
		return -EINVAL;
	ret = frame_body_size(msg, max_frame, &body);
	if (ret < 0)
		return ret;
	need = b->len + DP_FRAME_HEADER + body;
	if (need < b->len)
		return -ENOMEM;
	if (need > b->cap) {
		cap = b->cap ? b->cap : 256;
		while (cap < need)
			cap = cap * 2 < cap ? need : cap * 2;
		p = realloc(b->data, cap);
		if (!p)
			return -ENOMEM;
		b->data = p;
		b->cap = cap;
	}
	frame_write(msg, body, b->data + b->len);
	b->len = need;
	return 0;
}
