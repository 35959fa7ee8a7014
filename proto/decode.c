/* SPDX-License-Identifier: MIT */
/*
 * proto/decode.c — frame body -> protobuf-c message.
 *
 * Two things protobuf-c does not do for us:
 *   - it neither checks that proto3 strings are UTF-8 nor keeps their
 *     length: "a\0b" arrives as the C string "a". A walk over the wire
 *     bytes, guided by the message descriptors, checks every string field
 *     (in nested messages too) before unpacking;
 *   - it allocates as much as the input asks for. A counting allocator
 *     refuses to go past a budget (bytes allocated in total, frees not
 *     credited, which also bounds the copying that merging repeated
 *     occurrences of a message field does).
 */
#include <errno.h>
#include <stdlib.h>

#include "proto/frame.h"

/* Nesting the walk accepts: dualpath.v1 is at most four messages deep. */
#define DP_PROTO_DEPTH_MAX 32u

/* ---- the walk over the wire format ------------------------------------ */

/* Parse a varint of at most 10 bytes; returns its length, 0 if malformed. */
static size_t varint(const uint8_t *p, size_t len, uint64_t *ret)
{
	uint64_t v = 0;

	for (size_t i = 0; i < len && i < 10; i++) {
		v |= (uint64_t)(p[i] & 0x7f) << (7 * i);
		if (!(p[i] & 0x80)) {
			*ret = v;
			return i + 1;
		}
	}
	return 0;
}

/* Well-formed UTF-8 (no overlong forms, surrogates or code points past
 * U+10FFFF) without NUL bytes. */
static bool utf8_ok(const uint8_t *s, size_t len)
{
	size_t i = 0;

	while (i < len) {
		uint8_t c = s[i];
		size_t n;
		uint32_t cp;

		if (c == 0)
			return false;
		if (c < 0x80) {
			i++;
			continue;
		}
		if (c >= 0xc2 && c <= 0xdf) {
			n = 1;
			cp = c & 0x1f;
		} else if (c >= 0xe0 && c <= 0xef) {
			n = 2;
			cp = c & 0x0f;
		} else if (c >= 0xf0 && c <= 0xf4) {
			n = 3;
			cp = c & 0x07;
		} else {
			return false; /* continuation byte, 0xc0/0xc1, 0xf5.. */
		}
		if (len - i - 1 < n)
			return false;
		for (size_t k = 1; k <= n; k++) {
			if ((s[i + k] & 0xc0) != 0x80)
				return false;
			cp = (cp << 6) | (s[i + k] & 0x3f);
		}
		if ((n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000) || cp > 0x10ffff ||
		    (cp >= 0xd800 && cp <= 0xdfff))
			return false;
		i += n + 1;
	}
	return true;
}

/* Check the string fields of one encoded message of type desc. */
static int walk(const ProtobufCMessageDescriptor *desc, const uint8_t *p, size_t len,
                unsigned depth)
{
	if (depth > DP_PROTO_DEPTH_MAX)
		return -EBADMSG;
	while (len > 0) {
		const ProtobufCFieldDescriptor *f;
		uint64_t tag, v;
		size_t n = varint(p, len, &tag);
		int ret;

		if (n == 0 || tag >> 3 == 0 || tag >> 3 > 0x1fffffff)
			return -EBADMSG;
		p += n;
		len -= n;
		switch (tag & 7) {
		case 0: /* varint */
			n = varint(p, len, &v);
			if (n == 0)
				return -EBADMSG;
			break;
		case 1: /* 64-bit */
			n = 8;
			break;
		case 5: /* 32-bit */
			n = 4;
			break;
		case 2: /* length-delimited */
			n = varint(p, len, &v);
			if (n == 0 || v > len - n)
				return -EBADMSG;
			p += n;
			len -= n;
			n = (size_t)v;
			f = protobuf_c_message_descriptor_get_field(desc, (unsigned)(tag >> 3));
			if (f && f->type == PROTOBUF_C_TYPE_STRING && !utf8_ok(p, n))
				return -EILSEQ;
			if (f && f->type == PROTOBUF_C_TYPE_MESSAGE) {
				ret = walk(f->descriptor, p, n, depth + 1);
				if (ret < 0)
					return ret;
			}
			break;
		default: /* groups (3, 4) and 6, 7: not in proto3 */
			return -EBADMSG;
		}
		if (n > len)
			return -EBADMSG;
		p += n;
		len -= n;
	}
	return 0;
}

/* ---- the counting allocator ------------------------------------------- */

struct budget {
	size_t left;
	bool over; /* a request was refused for the budget */
	bool oom;  /* malloc returned NULL */
};

static void *budget_alloc(void *data, size_t size)
{
	struct budget *b = data;
	void *p;

	if (size > b->left) {
		b->over = true;
		return NULL;
	}
	p = malloc(size);
	if (!p)
		b->oom = true;
	else
		b->left -= size;
	return p;
}

static void budget_free(void *data, void *ptr)
{
	(void)data;
	free(ptr);
}

static int decode(const ProtobufCMessageDescriptor *desc, const void *data, size_t len,
                  size_t mem_limit, ProtobufCMessage **ret_msg)
{
	struct budget b = {.left = mem_limit ? mem_limit : DP_PROTO_MEM_DEFAULT(len)};
	ProtobufCAllocator a = {.alloc = budget_alloc, .free = budget_free, .allocator_data = &b};
	static const uint8_t empty[1];
	ProtobufCMessage *msg;
	int ret;

	if (!ret_msg || (!data && len > 0))
		return -EINVAL;
	if (!data)
		data = empty;
	ret = walk(desc, data, len, 0);
	if (ret < 0)
		return ret;
	msg = protobuf_c_message_unpack(desc, &a, len, data);
	if (!msg) {
		if (b.over)
			return -EMSGSIZE;
		return b.oom ? -ENOMEM : -EBADMSG;
	}
	*ret_msg = msg;
	return 0;
}

int dp_proto_request_decode(const void *data, size_t len, size_t mem_limit,
                            Dualpath__V1__Request **ret_req)
{
	ProtobufCMessage *msg;
	int ret;

	if (!ret_req)
		return -EINVAL;
	ret = decode(&dualpath__v1__request__descriptor, data, len, mem_limit, &msg);
	if (ret < 0)
		return ret;
	*ret_req = (Dualpath__V1__Request *)msg;
	return 0;
}

void dp_proto_request_free(Dualpath__V1__Request *req)
{
	/* Our allocator's memory is plain malloc memory: the default
	 * allocator frees it. */
	if (req)
		protobuf_c_message_free_unpacked(&req->base, NULL);
}

int dp_proto_response_decode(const void *data, size_t len, size_t mem_limit,
                             Dualpath__V1__Response **ret_resp)
{
	ProtobufCMessage *msg;
	int ret;

	if (!ret_resp)
		return -EINVAL;
	ret = decode(&dualpath__v1__response__descriptor, data, len, mem_limit, &msg);
	if (ret < 0)
		return ret;
	*ret_resp = (Dualpath__V1__Response *)msg;
	return 0;
}

void dp_proto_response_free(Dualpath__V1__Response *resp)
{
	if (resp)
		protobuf_c_message_free_unpacked(&resp->base, NULL);
}
