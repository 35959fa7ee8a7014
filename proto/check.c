/* SPDX-License-Identifier: MIT */
/*
 * proto/check.c — the request rules the wire decides alone.
 *
 * Every rule has a name (enum dp_proto_rule), a code for the Error reply
 * and a message naming the field, the value and the limit, so the client
 * learns what to fix without reading the daemon's log.
 */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "base/err.h"
#include "proto/frame.h"

_Static_assert(DP_PROTO_VERSION == DUALPATH__V1__PROTOCOL_VERSION__PROTOCOL_VERSION_CURRENT,
               "DP_PROTO_VERSION follows dualpath.proto");

static const char *const rule_names[DP_PROTO_RULE_MAX] = {
    [DP_PROTO_RULE_NONE] = "none",
    [DP_PROTO_RULE_REQUEST_ID] = "request_id",
    [DP_PROTO_RULE_BODY] = "body",
    [DP_PROTO_RULE_VERSION_MISSING] = "version_missing",
    [DP_PROTO_RULE_VERSION] = "version",
    [DP_PROTO_RULE_CLIENT_NAME] = "client_name",
    [DP_PROTO_RULE_SESSION_ID] = "session_id",
    [DP_PROTO_RULE_SESSION_ID_MISSING] = "session_id_missing",
    [DP_PROTO_RULE_PROMPT_MISSING] = "prompt_missing",
    [DP_PROTO_RULE_PROMPT_TOKENS] = "prompt_tokens",
    [DP_PROTO_RULE_TOKEN_ID] = "token_id",
    [DP_PROTO_RULE_PROMPT_TEXT] = "prompt_text",
    [DP_PROTO_RULE_MAX_NEW_TOKENS] = "max_new_tokens",
    [DP_PROTO_RULE_TEMPERATURE] = "temperature",
    [DP_PROTO_RULE_TOP_P] = "top_p",
    [DP_PROTO_RULE_STOP_IDS] = "stop_ids",
    [DP_PROTO_RULE_STOP_ID] = "stop_id",
    [DP_PROTO_RULE_CANCEL_TARGET] = "cancel_target",
    [DP_PROTO_RULE_CACHE_SALT] = "cache_salt",
    [DP_PROTO_RULE_CLUSTER_SESSIONS] = "cluster_sessions",
};

const char *dp_proto_rule_name(enum dp_proto_rule rule)
{
	if ((unsigned)rule >= DP_PROTO_RULE_MAX)
		return NULL;
	return rule_names[rule];
}

void dp_proto_limits_init(struct dp_proto_limits *lim)
{
	if (!lim)
		return;
	*lim = (struct dp_proto_limits){
	    .vocab_size = 0,
	    .max_prompt_tokens = DP_PROTO_MAX_PROMPT_TOKENS_DEFAULT,
	    .max_text_bytes = DP_PROTO_MAX_TEXT_BYTES_DEFAULT,
	    .max_new_tokens = DP_PROTO_MAX_NEW_TOKENS_DEFAULT,
	    .max_stop_ids = DP_PROTO_MAX_STOP_IDS_DEFAULT,
	};
}

const char *dp_proto_request_name(const Dualpath__V1__Request *req)
{
	const ProtobufCFieldDescriptor *f;

	if (!req || req->body_case == DUALPATH__V1__REQUEST__BODY__NOT_SET)
		return "unset";
	f = protobuf_c_message_descriptor_get_field(&dualpath__v1__request__descriptor,
	                                            (unsigned)req->body_case);
	return f ? f->name : "unset";
}

bool dp_proto_request_admin(const Dualpath__V1__Request *req)
{
	if (!req)
		return false;
	switch (req->body_case) {
	case DUALPATH__V1__REQUEST__BODY_DRAIN:
	case DUALPATH__V1__REQUEST__BODY_EVICT_SESSION:
	case DUALPATH__V1__REQUEST__BODY_SHUTDOWN:
	case DUALPATH__V1__REQUEST__BODY_TRACE:
		return true;
	default:
		return false;
	}
}

static bool session_char(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
	       c == '.' || c == '_' || c == '-';
}

int dp_proto_session_id_check(const char *id)
{
	size_t n;

	if (!id || !id[0])
		return -EINVAL;
	n = strnlen(id, DP_PROTO_SESSION_ID_MAX + 1);
	if (n > DP_PROTO_SESSION_ID_MAX)
		return -ENAMETOOLONG;
	for (size_t i = 0; i < n; i++)
		if (!session_char(id[i]))
			return -EINVAL;
	if (!strcmp(id, ".") || !strcmp(id, ".."))
		return -EINVAL;
	return 0;
}

/* ---- the checks ------------------------------------------------------- */

struct verdict {
	struct dp_proto_fault *fault;
	char *msg;
	size_t len;
};

/* Record a broken rule; returns -EBADMSG for the caller to pass on. */
__attribute__((format(printf, 3, 4))) static int fail(struct verdict *v, enum dp_proto_rule rule,
                                                      const char *fmt, ...)
{
	va_list ap;

	if (v->fault) {
		v->fault->rule = rule;
		v->fault->code = rule == DP_PROTO_RULE_VERSION
		                     ? DUALPATH__V1__CODE__FAILED_PRECONDITION
		                     : DUALPATH__V1__CODE__INVALID_ARGUMENT;
	}
	va_start(ap, fmt);
	dp_verrf(v->msg, v->len, fmt, ap);
	va_end(ap);
	return -EBADMSG;
}

/* A session id for the message: printable ASCII as is, other bytes as
 * \xNN, cut at 32 bytes — the client's bytes must not corrupt a log line. */
static const char *show(const char *s, char *buf, size_t len)
{
	size_t o = 0;

	for (size_t i = 0; s[i] && o + 5 < len; i++) {
		unsigned char c = (unsigned char)s[i];

		if (i == 32) {
			snprintf(buf + o, len - o, "...");
			return buf;
		}
		if (c >= 0x20 && c < 0x7f && c != '"' && c != '\\')
			buf[o++] = (char)c;
		else
			o += (size_t)snprintf(buf + o, len - o, "\\x%02x", c);
	}
	buf[o] = '\0';
	return buf;
}

static int check_session_id(struct verdict *v, const char *where, const char *id, bool required)
{
	char shown[160];
	int ret;

	if (!id || !id[0]) {
		if (!required)
			return 0;
		return fail(v, DP_PROTO_RULE_SESSION_ID_MISSING, "%s.session_id: required", where);
	}
	ret = dp_proto_session_id_check(id);
	if (ret == -ENAMETOOLONG)
		return fail(v, DP_PROTO_RULE_SESSION_ID, "%s.session_id: %zu bytes, at most %u",
		            where, strlen(id), DP_PROTO_SESSION_ID_MAX);
	if (ret < 0)
		return fail(v, DP_PROTO_RULE_SESSION_ID,
		            "%s.session_id: \"%s\" is not 1..%u bytes of [A-Za-z0-9._-] "
		            "other than \".\" and \"..\"",
		            where, show(id, shown, sizeof(shown)), DP_PROTO_SESSION_ID_MAX);
	return 0;
}

static int check_hello(struct verdict *v, const Dualpath__V1__Hello *h)
{
	const char *name = h->client_name ? h->client_name : "";
	size_t n;

	if (h->protocol_version == 0)
		return fail(v, DP_PROTO_RULE_VERSION_MISSING,
		            "hello.protocol_version: missing (this server speaks %u)",
		            DP_PROTO_VERSION);
	if (h->protocol_version != DP_PROTO_VERSION)
		return fail(v, DP_PROTO_RULE_VERSION,
		            "hello.protocol_version: %u is not supported (this server speaks %u)",
		            h->protocol_version, DP_PROTO_VERSION);
	n = strlen(name);
	if (n > DP_PROTO_CLIENT_NAME_MAX)
		return fail(v, DP_PROTO_RULE_CLIENT_NAME,
		            "hello.client_name: %zu bytes, at most %u", n,
		            DP_PROTO_CLIENT_NAME_MAX);
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)name[i];

		/* C0, DEL, and C1 (U+0080..U+009F, UTF-8 c2 80..c2 9f), which
		 * terminals may act on when the name is logged. */
		if (c < 0x20 || c == 0x7f)
			return fail(v, DP_PROTO_RULE_CLIENT_NAME,
			            "hello.client_name: control character 0x%02x at byte %zu", c,
			            i);
		if (c == 0xc2 && i + 1 < n && (unsigned char)name[i + 1] < 0xa0)
			return fail(v, DP_PROTO_RULE_CLIENT_NAME,
			            "hello.client_name: control character U+%04X at byte %zu",
			            (unsigned char)name[i + 1], i);
	}
	return 0;
}

static int check_sampling(struct verdict *v, const Dualpath__V1__Sampling *s,
                          const struct dp_proto_limits *lim)
{
	if (!isfinite(s->temperature) || s->temperature < 0)
		return fail(v, DP_PROTO_RULE_TEMPERATURE,
		            "generate.sampling.temperature: %g is not a finite value >= 0",
		            (double)s->temperature);
	if (!(s->top_p >= 0 && s->top_p <= 1))
		return fail(v, DP_PROTO_RULE_TOP_P, "generate.sampling.top_p: %g is not in [0, 1]",
		            (double)s->top_p);
	if (s->n_stop_ids > lim->max_stop_ids)
		return fail(v, DP_PROTO_RULE_STOP_IDS,
		            "generate.sampling.stop_ids: %zu ids, at most %u", s->n_stop_ids,
		            lim->max_stop_ids);
	if (lim->vocab_size)
		for (size_t i = 0; i < s->n_stop_ids; i++)
			if (s->stop_ids[i] >= lim->vocab_size)
				return fail(v, DP_PROTO_RULE_STOP_ID,
				            "generate.sampling.stop_ids[%zu]: %u is not below the "
				            "vocabulary size %u",
				            i, s->stop_ids[i], lim->vocab_size);
	return 0;
}

static int check_generate(struct verdict *v, const Dualpath__V1__Generate *g,
                          const struct dp_proto_limits *lim)
{
	const Dualpath__V1__TokenIds *t;
	size_t n;
	int ret;

	ret = check_session_id(v, "generate", g->session_id, false);
	if (ret < 0)
		return ret;
	if (g->cache_salt.len > DP_PROTO_CACHE_SALT_MAX)
		return fail(v, DP_PROTO_RULE_CACHE_SALT, "generate.cache_salt: %zu bytes, at most %u",
		            g->cache_salt.len, DP_PROTO_CACHE_SALT_MAX);
	switch (g->prompt_case) {
	case DUALPATH__V1__GENERATE__PROMPT_TOKENS:
		t = g->tokens;
		if (!t || t->n_ids == 0)
			return fail(v, DP_PROTO_RULE_PROMPT_MISSING,
			            "generate.tokens: empty; a prompt needs at least one token");
		if (t->n_ids > lim->max_prompt_tokens)
			return fail(v, DP_PROTO_RULE_PROMPT_TOKENS,
			            "generate.tokens: %zu ids, at most %u", t->n_ids,
			            lim->max_prompt_tokens);
		if (lim->vocab_size)
			for (size_t i = 0; i < t->n_ids; i++)
				if (t->ids[i] >= lim->vocab_size)
					return fail(v, DP_PROTO_RULE_TOKEN_ID,
					            "generate.tokens.ids[%zu]: %u is not below the "
					            "vocabulary size %u",
					            i, t->ids[i], lim->vocab_size);
		break;
	case DUALPATH__V1__GENERATE__PROMPT_TEXT:
		n = g->text ? strlen(g->text) : 0;
		if (n == 0)
			return fail(v, DP_PROTO_RULE_PROMPT_MISSING,
			            "generate.text: empty; a prompt needs at least one byte");
		if (n > lim->max_text_bytes)
			return fail(v, DP_PROTO_RULE_PROMPT_TEXT,
			            "generate.text: %zu bytes, at most %u", n, lim->max_text_bytes);
		break;
	case DUALPATH__V1__GENERATE__PROMPT_CHAT:
		/* the chat request's JSON text: its size is bounded as text's; its
		 * content is the daemon's to judge (rendering names the field) */
		n = g->chat ? strlen(g->chat) : 0;
		if (n == 0)
			return fail(v, DP_PROTO_RULE_PROMPT_MISSING,
			            "generate.chat: empty; a chat prompt is a JSON object");
		if (n > lim->max_text_bytes)
			return fail(v, DP_PROTO_RULE_PROMPT_TEXT,
			            "generate.chat: %zu bytes, at most %u", n, lim->max_text_bytes);
		break;
	default:
		return fail(v, DP_PROTO_RULE_PROMPT_MISSING,
		            "generate: no prompt; set tokens, text or chat");
	}
	if (g->max_new_tokens > lim->max_new_tokens)
		return fail(v, DP_PROTO_RULE_MAX_NEW_TOKENS,
		            "generate.max_new_tokens: %u, at most %u", g->max_new_tokens,
		            lim->max_new_tokens);
	if (g->sampling)
		return check_sampling(v, g->sampling, lim);
	return 0;
}

static int check_cluster(struct verdict *v, const Dualpath__V1__ClusterRequest *c)
{
	if (c->n_session_ids > DP_PROTO_CLUSTER_SESSIONS_MAX)
		return fail(v, DP_PROTO_RULE_CLUSTER_SESSIONS, "cluster.session_ids: %zu ids, at most %u",
		            c->n_session_ids, DP_PROTO_CLUSTER_SESSIONS_MAX);
	for (size_t i = 0; i < c->n_session_ids; i++) {
		int ret = check_session_id(v, "cluster", c->session_ids[i], true);
		if (ret < 0)
			return ret;
	}
	return 0;
}

int dp_proto_request_check(const Dualpath__V1__Request *req, const struct dp_proto_limits *lim,
                           struct dp_proto_fault *ret_fault, char *msg, size_t len)
{
	struct verdict v = {.fault = ret_fault, .msg = msg, .len = len};

	if (!req || !lim)
		return -EINVAL;
	if (req->request_id == 0)
		return fail(&v, DP_PROTO_RULE_REQUEST_ID, "request_id: missing (0 is not an id)");

	/* A oneof member is NULL only in hand-made structs; treat it as unset. */
	switch (req->body_case) {
	case DUALPATH__V1__REQUEST__BODY_HELLO:
		if (req->hello)
			return check_hello(&v, req->hello);
		break;
	case DUALPATH__V1__REQUEST__BODY_GENERATE:
		if (req->generate)
			return check_generate(&v, req->generate, lim);
		break;
	case DUALPATH__V1__REQUEST__BODY_CANCEL:
		if (!req->cancel)
			break;
		if (req->cancel->target_request_id == 0)
			return fail(&v, DP_PROTO_RULE_CANCEL_TARGET,
			            "cancel.target_request_id: missing (0 is not an id)");
		return 0;
	case DUALPATH__V1__REQUEST__BODY_CLOSE_SESSION:
		if (req->close_session)
			return check_session_id(&v, "close_session", req->close_session->session_id,
			                        true);
		break;
	case DUALPATH__V1__REQUEST__BODY_EVICT_SESSION:
		if (req->evict_session)
			return check_session_id(&v, "evict_session", req->evict_session->session_id,
			                        true);
		break;
	case DUALPATH__V1__REQUEST__BODY_STATS:
		if (req->stats)
			return 0;
		break;
	case DUALPATH__V1__REQUEST__BODY_HEALTH:
		if (req->health)
			return 0;
		break;
	case DUALPATH__V1__REQUEST__BODY_LIST_SESSIONS:
		if (req->list_sessions)
			return 0;
		break;
	case DUALPATH__V1__REQUEST__BODY_CLUSTER:
		if (req->cluster)
			return check_cluster(&v, req->cluster);
		break;
	case DUALPATH__V1__REQUEST__BODY_DRAIN:
		if (req->drain)
			return 0;
		break;
	case DUALPATH__V1__REQUEST__BODY_SHUTDOWN:
		if (req->shutdown)
			return 0;
		break;
	case DUALPATH__V1__REQUEST__BODY_TRACE:
		if (req->trace)
			return 0;
		break;
	default:
		break;
	}
	return fail(&v, DP_PROTO_RULE_BODY,
	            "body: missing, or a request this server does not know%s",
	            req->base.n_unknown_fields ? " (it carries fields unknown to it)" : "");
}
