/* SPDX-License-Identifier: MIT */
/*
 * daemon/http-front.h — the HTTP thread's state, shared by its files:
 *
 *   http.c         the thread: listening address, keys, MHD in our epoll loop
 *   http-routes.c  the routes: requests in, answers out (health, models,
 *                  tokenize, detokenize, metrics), MHD's two callbacks
 *   http-gen.c     generations: slots, compute's events -> SSE chunks or
 *                  whole bodies (completions, chat)
 *
 * Everything here runs on the HTTP thread only (dp_http_init: main thread,
 * before it starts).
 */
#ifndef DP_DAEMON_HTTP_FRONT_H
#define DP_DAEMON_HTTP_FRONT_H

#include <microhttpd.h>
#include <stdbool.h>
#include <stdint.h>

#include "daemon/http-parse.h"
#include "daemon/http.h"
#include "daemon/server.h"
#include "model/conv.h"

#define DP_HTTP_KEY_MAX 512

struct dp_conv_stream;

enum route {
	R_NONE,
	R_CHAT,
	R_COMPLETIONS,
	R_TOKENIZE,
	R_DETOKENIZE,
	R_MODELS,
	R_HEALTH,
	R_METRICS,
	R_MESSAGES, /* the Messages API: chat in, Anthropic's shapes out */
};


/* A request waiting for compute holds a slot; its origin is
 * DP_ORIGIN_HTTP | slot with the slot's generation, bumped at release, so
 * that events of a finished (or cancelled) request find no one. */
struct hslot {
	struct hreq *r;
	uint32_t gen;
};

/* http-replay.c: the ids sampled for recent V4 chat replies */
struct http_replay_entry;
struct http_replay {
	struct http_replay_entry *entries;
	size_t n, alloc;
	size_t bytes, cap; /* cap: [http] replay_cache_bytes (0: off) */
	uint64_t clock, evicted, turns_replayed;
};

struct dp_http {
	struct dp_server *srv;
	struct MHD_Daemon *d;
	int ep, listen_fd;
	bool is_unix;
	char **keys;
	size_t n_keys;
	struct hslot *slots; /* cfg.http_max_requests */
	uint32_t n_busy;
	uint64_t next_rid;
	char model_name[256];
	struct dp_http_limits lim;
	struct dp_http_buf scratch;
	struct http_replay replay;
	struct dp_http_buf scratch_key;
	/* counters for /metrics */
	uint64_t requests, refused_busy, refused_auth, client_errors, server_errors, disconnects,
		cut_slow, streams;
	struct dp_http_hist ttft, itl;
};

struct hreq {
	struct dp_http *h;
	struct MHD_Connection *conn;
	enum route route;
	bool dispatched, too_large, suspended, responded, final, cut_off;
	int32_t slot; /* -1: none */
	int32_t key; /* the API key's index (tenant of the prefix cache), or DP_HTTP_KEYS_OFF */
	uint64_t rid;
	struct dp_http_buf body;
	struct dp_http_request req;
	struct dp_tok_stream ts;
	size_t hold;		/* bytes of text held back for stop strings */
	struct dp_http_buf text; /* generated text (chat: content) not sent yet */
	struct dp_http_buf out;	 /* response bytes (SSE), or the whole body */
	/* chat: the output parser, and (not streamed) the reply being built */
	bool chat;
	struct dp_conv_stream *conv;
	struct dp_http_buf reasoning;
	json_t *calls;
	/* a V4 chat reply kept for replay: its mode, the ids sampled, the
	 * content and reasoning as sent */
	bool replay;
	enum dp_chat_mode mode;
	struct dp_http_buf sampled, said, said_reasoning;
	/* return_token_ids: the prompt's ids (sent once: the body, or the
	 * first chunk) and the generated ids no chunk has carried yet */
	struct dp_http_buf prompt_ids, new_ids;
	bool sent_prompt_ids;
	/* the Messages API's stream: the open content block's kind and index */
	const char *ant_kind;
	int ant_index;
	const char *stop_seq; /* the stop string that ended it (NULL: none) */
	unsigned status;
	const char *content_type;
	const char *finish;
	bool sent_role;
	uint32_t prompt_tokens, cached_tokens, completion_tokens;
	uint64_t t_start, t_first, t_last, t_out;
	int64_t created;
	char id[48];
	char xrid[80];
};

/* Refuse with the OpenAI envelope (returns from the calling route). */
#define REFUSE(r, status, type, code, param, ...)                                           \
	do {                                                                                 \
		struct dp_http_error e_;                                                     \
		dp_http_error_set(&e_, status, type, code, param, __VA_ARGS__);              \
		return http_queue_error(r, &e_);                                                  \
	} while (0)

/* http-replay.c */
int http_replay_key(struct dp_http_buf *b, int32_t key, const char *salt, enum dp_chat_mode mode,
		    const char *content, size_t content_len, const char *reasoning,
		    size_t reasoning_len, const json_t *calls);
int http_replay_put(struct http_replay *rp, const char *key, size_t len, const int32_t *ids,
		    size_t n);
const int32_t *http_replay_get(struct http_replay *rp, const char *key, size_t len, size_t *ret_n);
void http_replay_fini(struct http_replay *rp);
struct dp_conv_prompt;
size_t http_replay_splice(struct dp_http *h, const struct hreq *r, struct dp_conv_prompt *whole);

/* http.c */
/* Which configured API key an Authorization header carries: its index,
 * DP_HTTP_KEYS_OFF when no keys are configured, -EACCES when none matches
 * (constant time in the key's bytes and in which key matched). */
#define DP_HTTP_KEYS_OFF (-1)
int http_key_match(const struct dp_http *h, const char *authorization);
/* http-routes.c */
enum MHD_Result http_on_request(void *cls, struct MHD_Connection *c, const char *url,
				const char *method, const char *version, const char *upload,
				size_t *upload_size, void **con_cls);
void http_on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
		       enum MHD_RequestTerminationCode toe);
enum MHD_Result http_queue(struct hreq *r, unsigned status, const char *type, const char *body,
			   size_t len);
enum MHD_Result http_queue_json(struct hreq *r, unsigned status, json_t *o);
enum MHD_Result http_queue_error(struct hreq *r, const struct dp_http_error *e);
/* The error envelope for r's API (OpenAI's; Anthropic's for /v1/messages): malloc'd. */
char *http_error_text(const struct hreq *r, const struct dp_http_error *e);
void http_on_stats(struct hreq *r, struct dp_compute_stats *s);
/* http-gen.c */
void http_wake(struct hreq *r);
int http_slot_take(struct dp_http *h, struct hreq *r);
struct dp_msg *http_msg_new(struct dp_http *h, struct hreq *r, enum dp_msg_kind kind);
void http_slot_release(struct dp_http *h, struct hreq *r, bool cancel);
int http_encode(struct dp_http *h, const char *text, size_t len, bool bos, int32_t **ret,
		size_t *ret_n);
json_t *http_render_request(const struct dp_http_request *q);
enum MHD_Result http_on_completions(struct hreq *r);
enum MHD_Result http_on_chat(struct hreq *r);
void http_drain_events(struct dp_http *h);
void http_tick(struct dp_http *h, uint64_t now);
void http_stop_all(struct dp_http *h);

#endif /* DP_DAEMON_HTTP_FRONT_H */
