/* SPDX-License-Identifier: MIT */
/*
 * proto/frame.h — the dualpath.v1 wire: frames, messages, request rules.
 *
 * On the Unix socket between clients and dualpathd every message travels as
 * a frame: a 4-byte little-endian length L, then L bytes of protobuf
 * (proto/dualpath.proto, package dualpath.v1; the C types come from
 * protoc-c in proto/dualpath.pb-c.h, included below). Clients send Request
 * frames, the daemon answers with Response frames.
 *
 * Frame rules (both directions):
 *   - 1 <= L <= max_frame, where max_frame is the receiver's limit
 *     (1..DP_FRAME_MAX_LIMIT; the daemon announces its own in
 *     HelloReply.max_frame_bytes). A larger L is -EMSGSIZE, decided from the
 *     4-byte header alone, before any of the body is waited for or any room
 *     is made for it.
 *   - L == 0 is -EPROTO. An empty protobuf message would be all defaults:
 *     a Request without request_id and body, a Response without body, never
 *     valid. Rejecting it in the framing keeps "empty" from meaning anything
 *     (keep-alive, padding) that a later version would have to honour.
 *   Either error means the stream has lost its framing; the connection is
 *   closed (DESIGN.md: a bad frame closes only that connection).
 *
 * The four layers, each usable alone:
 *
 *   1. struct dp_frame_reader  incremental frame decoder for non-blocking
 *                              sockets (the daemon's front thread).
 *   2. dp_frame_encode/append  message -> frame bytes.
 *   3. dp_proto_*_decode       frame body -> protobuf-c message, with a memory
 *                              budget, rejecting strings that are not UTF-8.
 *      dp_proto_request_check  the request rules that do not need the daemon's
 *                              state: ids, session id syntax, prompt and
 *                              sampling ranges, limits; a gRPC-style code and
 *                              a message for the client's Error reply.
 *   4. dp_frame_read_fd/_write_fd  blocking one-frame I/O with a timeout,
 *                              for clients (v4ctl) and tests.
 *
 * Threads: nothing here has global state. A reader, a struct dp_frame_buf or
 * a decoded message belongs to one thread at a time; the functions without
 * one of them are thread-safe.
 */
#ifndef DP_PROTO_FRAME_H
#define DP_PROTO_FRAME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "proto/dualpath.pb-c.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Bytes of the length prefix. */
#define DP_FRAME_HEADER 4u
/* Largest max_frame any call accepts (1 GiB: lengths, counts and int return
 * values stay far from overflow). */
#define DP_FRAME_MAX_LIMIT (1u << 30)
/* A sensible max_frame: a 10^6-token prompt as packed ids is about 3 MB. */
#define DP_FRAME_MAX_DEFAULT (4u << 20)

/* The protocol version this code speaks (ProtocolVersion.CURRENT). */
#define DP_PROTO_VERSION 1u

/* ======================================================================== */
/* 1. Incremental frame reader                                              */
/* ======================================================================== */

/*
 * Buffers the bytes of one connection and cuts them into frames. Bytes come
 * in one of three ways:
 *
 *   dp_frame_reader_read_fd()   one read(2) from a (non-blocking) fd;
 *   dp_frame_reader_space() + dp_frame_reader_commit()
 *                               the caller reads (recv, io_uring...) into the
 *                               reader's buffer itself;
 *   dp_frame_reader_feed()      copy bytes in.
 *
 * and complete frames come out, one per dp_frame_reader_next() call, until it
 * says -EAGAIN (need more bytes). The usual loop, on EPOLLIN:
 *
 *	for (;;) {
 *		n = dp_frame_reader_read_fd(r, fd);     // > 0, 0 (EOF), < 0
 *		...
 *		while ((ret = dp_frame_reader_next(r, &body, &len)) == 0)
 *			handle(body, len);
 *		if (ret != -EAGAIN)
 *			close the connection;             // -EMSGSIZE, -EPROTO
 *	}
 *
 * Memory: the buffer starts at DP_FRAME_READER_INIT bytes (or max_frame + 4
 * if smaller) and grows only for the frame at the front, once its header has
 * arrived and its length is accepted, never beyond max_frame + 4 bytes; once
 * every buffered byte has been returned it shrinks back to its initial size.
 * A length is checked as soon as its header is at the front (by the call
 * that completes it, or by next() when the frames before it are pulled), so
 * a rejected length is never waited for. A frame body returned by next()
 * points into the buffer and stays valid (as do earlier ones) until the next
 * read_fd / space / feed / free call, which may move the bytes.
 *
 * Errors are sticky: after -EMSGSIZE or -EPROTO every call returns the same
 * error, so a caller cannot resynchronise on garbage by accident.
 */
#define DP_FRAME_READER_INIT 4096u

struct dp_frame_reader;

/* max_frame: largest body accepted, 1..DP_FRAME_MAX_LIMIT. Allocates nothing
 * but the reader itself until bytes arrive. Returns 0, -EINVAL or -ENOMEM. */
int dp_frame_reader_new(uint32_t max_frame, struct dp_frame_reader **ret_reader);
void dp_frame_reader_free(struct dp_frame_reader *r);

/*
 * Where the next bytes may go: *ret_ptr and *ret_len (>= 1) describe free
 * space at the end of the buffered bytes, grown (within the limit) for the
 * frame being received. Call dp_frame_reader_commit() with how many bytes
 * were written there. Returns 0; -ENOBUFS when the buffer is full of
 * complete frames (pull them with next() first); -ENOMEM; or the sticky
 * error.
 */
int dp_frame_reader_space(struct dp_frame_reader *r, void **ret_ptr, size_t *ret_len);

/* Account for n bytes written into the space from dp_frame_reader_space()
 * (n <= its length). Returns 0, -EINVAL (n too large), or the error the new
 * bytes reveal in the header of the frame being received (-EMSGSIZE,
 * -EPROTO), which is sticky from then on. */
int dp_frame_reader_commit(struct dp_frame_reader *r, size_t n);

/*
 * Copy up to len (<= INT32_MAX) bytes in; returns how many were taken (0..len: fewer when
 * the buffer is full of complete frames — pull them and feed the rest), or
 * a negative error as dp_frame_reader_space/commit. Copying pauses at the
 * end of the header of the frame at the front to check its length, so a
 * rejected first frame fails here with none of its body taken.
 */
int dp_frame_reader_feed(struct dp_frame_reader *r, const void *data, size_t len);

/*
 * One read(2) from fd into the buffer (retried on EINTR). Returns the byte
 * count (> 0); 0 at end of file (see dp_frame_reader_pending() for a frame
 * cut short); -EAGAIN when a non-blocking fd has nothing; -ENOBUFS as
 * dp_frame_reader_space(); the sticky error; or -errno from read(2).
 */
int dp_frame_reader_read_fd(struct dp_frame_reader *r, int fd);

/*
 * The next complete frame: *ret_body points at its L body bytes (after the
 * header) and *ret_len = L. Returns 0; -EAGAIN when the frame is not
 * complete yet; -EMSGSIZE (L > max_frame) or -EPROTO (L == 0), sticky.
 */
int dp_frame_reader_next(struct dp_frame_reader *r, const uint8_t **ret_body, size_t *ret_len);

/* Bytes received and not yet returned by next(): nonzero at end of file
 * means the peer stopped inside a frame. */
size_t dp_frame_reader_pending(const struct dp_frame_reader *r);

/* Bytes currently allocated for the buffer (for stats and tests). */
size_t dp_frame_reader_capacity(const struct dp_frame_reader *r);

/* ======================================================================== */
/* 2. Encoding                                                              */
/* ======================================================================== */

/*
 * A growable byte buffer frames are appended to (e.g. a connection's output
 * queue: append responses, write(2) data[0..len), consume what was
 * written). The caller owns it: init before use, fini after; a zeroed struct
 * is initialized. It bounds nothing itself: callers that queue bound len.
 */
struct dp_frame_buf {
	uint8_t *data; /* len bytes of frames; NULL while cap == 0 */
	size_t len;
	size_t cap;
};

void dp_frame_buf_init(struct dp_frame_buf *b);
/* Frees the memory and re-initializes; accepts NULL. */
void dp_frame_buf_fini(struct dp_frame_buf *b);
/* Drop the first n bytes (n >= len empties it, keeping the memory). */
void dp_frame_buf_consume(struct dp_frame_buf *b, size_t n);

/* The frame size of msg: header plus packed size. */
size_t dp_frame_size(const ProtobufCMessage *msg);

/*
 * Frame msg (any protobuf-c message; normally &response->base or
 * &request->base) into buf[0..len); *ret_len = bytes written. Returns 0;
 * -EINVAL for bad arguments, a message that fails protobuf_c_message_check()
 * (e.g. a repeated field with a NULL element), or one that packs to nothing
 * (a zero-length frame, see above); -EMSGSIZE when the body exceeds
 * max_frame (1..DP_FRAME_MAX_LIMIT); -ENOBUFS when len is too small
 * (dp_frame_size() says how much is needed).
 */
int dp_frame_encode(const ProtobufCMessage *msg, uint32_t max_frame, void *buf, size_t len,
                    size_t *ret_len);

/* Append msg's frame to b, growing it. Errors as dp_frame_encode (never
 * -ENOBUFS), or -ENOMEM; b is unchanged on failure. */
int dp_frame_append(struct dp_frame_buf *b, const ProtobufCMessage *msg, uint32_t max_frame);

/* ======================================================================== */
/* 3. Decoding and request rules                                            */
/* ======================================================================== */

/*
 * Unpack a frame body. On success *ret_* is a message the caller owns and
 * frees with the matching *_free (NULL ok). Unknown fields (a newer peer's)
 * are kept in base.unknown_fields, so they survive re-encoding, and
 * otherwise ignored; an unknown oneof member leaves body_case NOT_SET.
 *
 * mem_limit bounds the bytes protobuf-c may allocate while unpacking, in
 * total (its scratch included, frees not credited); over it is -EMSGSIZE.
 * 0 means DP_PROTO_MEM_DEFAULT(len), which admits every encoding of these
 * messages: for this schema protobuf-c allocates linearly, about 25 times
 * the input for the least compact prompt (unpacked token ids) and at most
 * about 75 times for frames made of empty sub-messages, repeated or
 * duplicated. The budget is a backstop against allocation the input does
 * not pay for; a caller that wants a tighter bound passes one.
 *
 * Returns 0; -EINVAL (ret NULL, data NULL with len > 0); -EBADMSG when the
 * bytes are not a valid protobuf encoding of the message; -EILSEQ when a
 * string field is not UTF-8 or holds a NUL byte (protobuf-c hands strings
 * to C as NUL-terminated, so "a\0b" would silently become "a");
 * -EMSGSIZE when unpacking would exceed mem_limit; -ENOMEM.
 */
#define DP_PROTO_MEM_DEFAULT(len) (96 * (size_t)(len) + 65536)

int dp_proto_request_decode(const void *data, size_t len, size_t mem_limit,
                            Dualpath__V1__Request **ret_req);
void dp_proto_request_free(Dualpath__V1__Request *req);

int dp_proto_response_decode(const void *data, size_t len, size_t mem_limit,
                             Dualpath__V1__Response **ret_resp);
void dp_proto_response_free(Dualpath__V1__Response *resp);

/* The request body's field name ("hello", "generate"...), "unset" without a
 * known body; never NULL. */
const char *dp_proto_request_name(const Dualpath__V1__Request *req);

/* Admin-only requests (Drain, EvictSession, Shutdown, Trace): the daemon
 * allows them to root and its admin group. false for NULL. */
bool dp_proto_request_admin(const Dualpath__V1__Request *req);

/*
 * Session ids become file names: 1..DP_PROTO_SESSION_ID_MAX bytes of
 * [A-Za-z0-9._-], neither "." nor "..". Returns 0, -EINVAL (NULL, empty,
 * another byte, "." or "..") or -ENAMETOOLONG.
 */
#define DP_PROTO_SESSION_ID_MAX 128u
/* Session ids one ClusterRequest may ask about. */
#define DP_PROTO_CLUSTER_SESSIONS_MAX 64u
int dp_proto_session_id_check(const char *id);

/* Hello.client_name: at most this many bytes, no control characters. */
#define DP_PROTO_CLIENT_NAME_MAX 128u
/* Generate.cache_salt: at most this many bytes (kvcache.h: DP_KV_CACHE_SALT_MAX). */
#define DP_PROTO_CACHE_SALT_MAX 256u

/* The daemon's limits on a request, inclusive maxima. */
struct dp_proto_limits {
	uint32_t vocab_size;        /* token and stop ids must be below it; 0: unchecked */
	uint32_t max_prompt_tokens; /* Generate.tokens.ids */
	uint32_t max_text_bytes;    /* Generate.text, Generate.chat */
	uint32_t max_new_tokens;    /* Generate.max_new_tokens */
	uint32_t max_stop_ids;      /* Generate.sampling.stop_ids */
};

/* The defaults below, vocab_size 0. */
#define DP_PROTO_MAX_PROMPT_TOKENS_DEFAULT (1u << 20)
#define DP_PROTO_MAX_TEXT_BYTES_DEFAULT    (DP_FRAME_MAX_DEFAULT - 64)
#define DP_PROTO_MAX_NEW_TOKENS_DEFAULT    (1u << 16)
#define DP_PROTO_MAX_STOP_IDS_DEFAULT      64u
void dp_proto_limits_init(struct dp_proto_limits *lim);

/* Each rule dp_proto_request_check() enforces, in the order it checks them. */
enum dp_proto_rule {
	DP_PROTO_RULE_NONE,
	DP_PROTO_RULE_REQUEST_ID,         /* request_id is 0 */
	DP_PROTO_RULE_BODY,               /* no body, or one this version does not know */
	DP_PROTO_RULE_VERSION_MISSING,    /* Hello.protocol_version is 0 */
	DP_PROTO_RULE_VERSION,            /* ... is not DP_PROTO_VERSION */
	DP_PROTO_RULE_CLIENT_NAME,        /* Hello.client_name too long or has controls */
	DP_PROTO_RULE_SESSION_ID,         /* malformed session_id */
	DP_PROTO_RULE_SESSION_ID_MISSING, /* CloseSession/EvictSession without one */
	DP_PROTO_RULE_PROMPT_MISSING,     /* Generate without tokens, text or chat */
	DP_PROTO_RULE_PROMPT_TOKENS,      /* more than max_prompt_tokens */
	DP_PROTO_RULE_TOKEN_ID,           /* a prompt id >= vocab_size */
	DP_PROTO_RULE_PROMPT_TEXT,        /* text or chat: more than max_text_bytes */
	DP_PROTO_RULE_MAX_NEW_TOKENS,     /* more than max_new_tokens */
	DP_PROTO_RULE_TEMPERATURE,        /* not finite, or < 0 */
	DP_PROTO_RULE_TOP_P,              /* not in [0, 1] */
	DP_PROTO_RULE_STOP_IDS,           /* more than max_stop_ids */
	DP_PROTO_RULE_STOP_ID,            /* a stop id >= vocab_size */
	DP_PROTO_RULE_CANCEL_TARGET,      /* Cancel.target_request_id is 0 */
	DP_PROTO_RULE_CACHE_SALT,         /* Generate.cache_salt over 256 bytes */
	DP_PROTO_RULE_CLUSTER_SESSIONS,   /* ClusterRequest: more than DP_PROTO_CLUSTER_SESSIONS_MAX ids */
	DP_PROTO_RULE_MAX,
};

/* "request_id", "session_id"...; NULL if out of range. */
const char *dp_proto_rule_name(enum dp_proto_rule rule);

/* Which rule a request broke and what to answer. */
struct dp_proto_fault {
	enum dp_proto_rule rule;
	Dualpath__V1__Code code; /* INVALID_ARGUMENT; FAILED_PRECONDITION for VERSION */
};

/*
 * Check a decoded request against the rules the wire can decide alone (the
 * daemon still checks what needs its state: sessions, admin rights, the
 * Hello-first order, Cancel targets). Generate's rules:
 *
 *   - session_id empty (one-off) or valid per dp_proto_session_id_check();
 *   - a prompt: 1..max_prompt_tokens ids, each < vocab_size, or
 *     1..max_text_bytes of text or of chat JSON (even with max_new_tokens 0:
 *     a Generate always appends something); the chat JSON itself is judged
 *     by the daemon when it renders it;
 *   - max_new_tokens <= limit; sampling, if present: temperature finite and
 *     >= 0, top_p in [0, 1], at most max_stop_ids stop ids, each < vocab_size.
 *     top_k and seed take any value.
 *
 * Returns 0 when req is valid; -EINVAL when req or lim is NULL; -EBADMSG
 * when a rule is broken: then *ret_fault (NULL ok) says which, and msg (NULL
 * or len 0 ok) receives one line for the client's Error reply, truncated to
 * len like snprintf, e.g. "generate.sampling.top_p: 1.5 is not in [0, 1]".
 */
int dp_proto_request_check(const Dualpath__V1__Request *req, const struct dp_proto_limits *lim,
                           struct dp_proto_fault *ret_fault, char *msg, size_t len);

/* ======================================================================== */
/* 4. Blocking one-frame I/O (clients, tests)                               */
/* ======================================================================== */

/*
 * timeout_ms bounds the whole call (< 0: no limit); the fd may be blocking
 * or not (the calls poll(2) before each read or write). EINTR is retried.
 * After any failure but a timeout before the first byte the stream's
 * framing is lost: close the fd.
 */

/* Write len bytes, through partial writes. Sockets are written with
 * MSG_NOSIGNAL, so a closed peer is -EPIPE, not SIGPIPE. Returns 0,
 * -ETIMEDOUT, -EINVAL, or -errno. */
int dp_frame_write_all(int fd, const void *buf, size_t len, int timeout_ms);

/* Encode msg (as dp_frame_encode, with max_frame) and write the frame. */
int dp_frame_write_fd(int fd, const ProtobufCMessage *msg, uint32_t max_frame, int timeout_ms);

/*
 * Read exactly one frame (never a byte past it) into b: on success b->data
 * holds the body and b->len its length, which is returned (> 0). Returns 0
 * when the peer closed cleanly before a frame began; -ECONNRESET when it
 * closed inside one; -EMSGSIZE, -EPROTO as the reader; -ETIMEDOUT; -EINVAL;
 * -ENOMEM; or -errno. On failure b->len is 0.
 */
int dp_frame_read_fd(int fd, struct dp_frame_buf *b, uint32_t max_frame, int timeout_ms);

#ifdef __cplusplus
}
#endif

#endif /* DP_PROTO_FRAME_H */
