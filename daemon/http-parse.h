/* SPDX-License-Identifier: MIT */
/*
 * daemon/http-parse.h — the HTTP front's parts that need no daemon, the
 * door by which unit tests and the fuzz target reach them without a server:
 *
 *   http-req.c  a request body (JSON) -> struct dp_http_request, every field
 *               checked; a refusal fills struct dp_http_error (status, the
 *               OpenAI error type, the offending `param`, a message)
 *   http-anthropic.c  POST /v1/messages bodies -> the chat request they mean
 *   http-sse.c  what goes out: the error envelope, SSE events, the
 *               latency histograms in Prometheus text
 *
 * http.c (the thread: libmicrohttpd, routes, compute's events) uses both.
 * Nothing here logs, keeps global state or touches a socket.
 */
#ifndef DP_DAEMON_HTTP_PARSE_H
#define DP_DAEMON_HTTP_PARSE_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "model/sample.h"

enum dp_http_api {
	DP_HTTP_CHAT,	     /* POST /v1/chat/completions */
	DP_HTTP_COMPLETIONS, /* POST /v1/completions */
	DP_HTTP_TOKENIZE,    /* POST /tokenize */
	DP_HTTP_DETOKENIZE,  /* POST /detokenize */
	DP_HTTP_MESSAGES,    /* POST /v1/messages (Anthropic): parsed as the chat it converts to */
	DP_HTTP_API_MAX,
};

/* A refusal: the HTTP status and the OpenAI error envelope's fields. */
struct dp_http_error {
	unsigned status;  /* 400, 401, 404, 405, 413, 429, 500, 503 ... */
	const char *type; /* "invalid_request_error", "authentication_error", ... */
	const char *code; /* NULL, or "context_length_exceeded", ... */
	char param[64];	  /* "" or the request field at fault ("messages[2].role") */
	char message[320];
};

/* Fill e; returns -EINVAL (so a parser can `return http_fail(...)`). */
int dp_http_error_set(struct dp_http_error *e, unsigned status, const char *type, const char *code,
		      const char *param, const char *fmt, ...) __attribute__((format(printf, 6, 7)));

struct dp_http_limits {
	size_t max_body;	 /* bytes */
	unsigned max_depth;	 /* JSON nesting */
	unsigned max_tools;
	uint32_t max_new_tokens; /* max_tokens above it: 400 */
	int32_t vocab;		 /* ids outside [0, vocab): 400 */
};

#define DP_HTTP_STOP_STRINGS_MAX 8
/* cache_salt's bytes: the tenant key the front builds from it ("key N;"
 * + the salt) must fit DP_KV_CACHE_SALT_MAX (256) */
#define DP_HTTP_CACHE_SALT_MAX 200
#define DP_HTTP_STOP_STRING_BYTES 256
#define DP_HTTP_STOP_IDS_MAX 16 /* = DP_STOP_IDS_MAX (server.h) */

/*
 * One request, checked. Strings and JSON values point into root (owned:
 * dp_http_request_fini frees it); ids is malloc'd. Only the fields of its
 * api are set.
 */
struct dp_http_request {
	enum dp_http_api api;
	json_t *root;
	const char *model; /* NULL: the served one */
	bool stream, include_usage;
	uint32_t max_tokens; /* 0: not given */
	struct dp_sampler_params sampling;
	bool has_seed;
	const char *stop[DP_HTTP_STOP_STRINGS_MAX];
	uint32_t n_stop;
	int32_t stop_ids[DP_HTTP_STOP_IDS_MAX];
	uint32_t n_stop_ids;
	bool ignore_eos;
	/* vLLM's extension: the choice carries the ids generated (token_ids,
	 * each SSE chunk those since the last) and the prompt's ids
	 * (prompt_token_ids), so a stateless client can send back exactly the
	 * ids it got */
	bool return_token_ids;
	/* completions, tokenize: a text prompt, or ids */
	const char *prompt;
	size_t prompt_len;
	int32_t *ids;
	size_t n_ids;
	bool add_special; /* tokenize: BOS as a text prompt gets */
	/* chat (and tokenize with messages): checked here, rendered by
	 * model/conv.h, which also reads the thinking controls */
	json_t *messages, *tools, *tool_choice;
	bool json_object; /* response_format {"type": "json_object"}: the renderer puts it in the prompt */
	const char *session_id, *cache_salt;
};

/*
 * The nesting depth of a JSON text (brackets outside strings), stopping at
 * max + 1: a body nested deeper than the cap is refused before it is
 * parsed, so the parser's recursion is bounded by the cap.
 */
unsigned dp_http_json_depth(const char *body, size_t len, unsigned max);

/*
 * Parse and check a request body for api. 0 and *req filled (fini it), or
 * -EINVAL with *err filled (400 with param, 413 for the body size) and
 * *req left empty (fini is still safe).
 */
int dp_http_request_parse(enum dp_http_api api, const char *body, size_t len,
			  const struct dp_http_limits *lim, struct dp_http_request *req,
			  struct dp_http_error *err);
void dp_http_request_fini(struct dp_http_request *req);

/* http-anthropic.c: a Messages API request -> the OpenAI chat request it
 * means (new reference in *ret_chat), or -EINVAL / -ENOMEM with *err. */
int dp_http_messages_to_chat(const json_t *messages_request, json_t **ret_chat,
			     struct dp_http_error *err);

/* ---- http-sse.c -------------------------------------------------------------- */

/* An append-only byte buffer; off: bytes already handed out. */
struct dp_http_buf {
	char *p;
	size_t len, off, cap;
};
int dp_http_buf_add(struct dp_http_buf *b, const void *data, size_t n);
int dp_http_buf_addf(struct dp_http_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Drop what was handed out (keeps the rest at the front). */
void dp_http_buf_compact(struct dp_http_buf *b);
void dp_http_buf_fini(struct dp_http_buf *b);

/* {"error":{"message","type","param","code"}}: malloc'd JSON text, NULL without memory. */
char *dp_http_error_json(const struct dp_http_error *e);
/* An SSE event `data: <json>\n\n` for obj (not stolen). -ENOMEM. */
int dp_http_sse_event(struct dp_http_buf *b, const json_t *obj);
/* `data: [DONE]\n\n` */
int dp_http_sse_done(struct dp_http_buf *b);
/* `: ping\n\n`, a comment clients ignore and proxies count as traffic */
int dp_http_sse_ping(struct dp_http_buf *b);

/*
 * A latency histogram with fixed bounds (seconds), as Prometheus wants:
 * cumulative buckets, +Inf, _sum, _count.
 */
#define DP_HTTP_HIST_BUCKETS 14
struct dp_http_hist {
	uint64_t n[DP_HTTP_HIST_BUCKETS + 1]; /* per bucket (not cumulative); last: +Inf */
	uint64_t count;
	double sum;
};
extern const double dp_http_hist_bounds[DP_HTTP_HIST_BUCKETS];
void dp_http_hist_add(struct dp_http_hist *h, double seconds);
int dp_http_hist_render(struct dp_http_buf *b, const char *name, const char *help,
			const struct dp_http_hist *h);

#endif /* DP_DAEMON_HTTP_PARSE_H */
