/* SPDX-License-Identifier: MIT */
/*
 * What the HTTP front writes: byte buffers, the OpenAI error envelope,
 * server-sent events (`data: <json>` and a blank line; `data: [DONE]` last;
 * `: ping` comments between), and latency histograms as Prometheus text.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/http-parse.h"

int dp_http_buf_add(struct dp_http_buf *b, const void *data, size_t n)
{
	if (b->len + n + 1 > b->cap) {
		size_t cap = b->cap ? b->cap : 256;
		while (cap < b->len + n + 1)
			cap *= 2;
		char *p = realloc(b->p, cap);
		if (!p)
			return -ENOMEM;
		b->p = p;
		b->cap = cap;
	}
	if (n)
		memcpy(b->p + b->len, data, n);
	b->len += n;
	b->p[b->len] = '\0';
	return 0;
}

int dp_http_buf_addf(struct dp_http_buf *b, const char *fmt, ...)
{
	char small[512];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(small, sizeof(small), fmt, ap);
	va_end(ap);
	if (n < 0)
		return -EINVAL;
	if ((size_t)n < sizeof(small))
		return dp_http_buf_add(b, small, (size_t)n);
	char *big = malloc((size_t)n + 1);
	if (!big)
		return -ENOMEM;
	va_start(ap, fmt);
	vsnprintf(big, (size_t)n + 1, fmt, ap);
	va_end(ap);
	int ret = dp_http_buf_add(b, big, (size_t)n);
	free(big);
	return ret;
}

void dp_http_buf_compact(struct dp_http_buf *b)
{
	if (!b->off)
		return;
	memmove(b->p, b->p + b->off, b->len - b->off);
	b->len -= b->off;
	b->off = 0;
	if (b->p)
		b->p[b->len] = '\0';
}

void dp_http_buf_fini(struct dp_http_buf *b)
{
	free(b->p);
	memset(b, 0, sizeof(*b));
}

/* The length of the well-formed UTF-8 sequence at p (RFC 3629: no overlong
 * forms, no surrogates, nothing past U+10FFFF), 0 if there is none. */
static size_t utf8_seq(const unsigned char *p)
{
	unsigned c = p[0];
	if (c < 0x80)
		return 1;
	size_t n = c >= 0xc2 && c <= 0xdf ? 2 : c >= 0xe0 && c <= 0xef ? 3 : c >= 0xf0 && c <= 0xf4 ? 4 : 0;
	for (size_t i = 1; i < n; i++)
		if ((p[i] & 0xc0) != 0x80)
			return 0;
	if ((c == 0xe0 && p[1] < 0xa0) || (c == 0xed && p[1] > 0x9f) || (c == 0xf0 && p[1] < 0x90) ||
	    (c == 0xf4 && p[1] > 0x8f))
		return 0;
	return n;
}

/* A message or parameter name may quote the client's bytes (a JSON parser's
 * message, a key): what is not UTF-8 becomes '?', so the envelope is JSON. */
static json_t *utf8_string(const char *s)
{
	size_t len = strlen(s);
	char *t = malloc(len + 1);
	if (!t)
		return NULL;
	size_t o = 0;
	for (size_t i = 0; i < len;) {
		size_t n = utf8_seq((const unsigned char *)s + i);
		if (n) {
			memcpy(t + o, s + i, n);
			o += n;
			i += n;
		} else {
			t[o++] = '?';
			i++;
		}
	}
	t[o] = '\0';
	json_t *j = json_string(t);
	free(t);
	return j;
}

char *dp_http_error_json(const struct dp_http_error *e)
{
	json_t *o = json_pack("{s:{s:o, s:s, s:o, s:o}}", "error", "message", utf8_string(e->message),
			      "type", e->type ? e->type : "invalid_request_error", "param",
			      e->param[0] ? utf8_string(e->param) : json_null(), "code",
			      e->code ? json_string(e->code) : json_null());
	if (!o)
		return NULL;
	char *s = json_dumps(o, JSON_COMPACT);
	json_decref(o);
	return s;
}

int dp_http_sse_event(struct dp_http_buf *b, const json_t *obj)
{
	/* compact JSON has no newline, so one data: line holds it */
	char *s = json_dumps(obj, JSON_COMPACT);
	if (!s)
		return -ENOMEM;
	int ret = dp_http_buf_addf(b, "data: %s\n\n", s);
	free(s);
	return ret;
}

int dp_http_sse_done(struct dp_http_buf *b)
{
	return dp_http_buf_add(b, "data: [DONE]\n\n", 14);
}

int dp_http_sse_ping(struct dp_http_buf *b)
{
	return dp_http_buf_add(b, ": ping\n\n", 8);
}

/* 1 ms .. 60 s: TTFT spans a cached turn to a long prefill, inter-token
 * latency a fast decode step to a stalled restore */
const double dp_http_hist_bounds[DP_HTTP_HIST_BUCKETS] = {
	0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 60,
};

void dp_http_hist_add(struct dp_http_hist *h, double seconds)
{
	size_t i = 0;
	while (i < DP_HTTP_HIST_BUCKETS && seconds > dp_http_hist_bounds[i])
		i++;
	h->n[i]++;
	h->count++;
	h->sum += seconds;
}

int dp_http_hist_render(struct dp_http_buf *b, const char *name, const char *help,
			const struct dp_http_hist *h)
{
	int ret = dp_http_buf_addf(b, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
	uint64_t cum = 0;
	for (size_t i = 0; !ret && i < DP_HTTP_HIST_BUCKETS; i++) {
		cum += h->n[i];
		ret = dp_http_buf_addf(b, "%s_bucket{le=\"%g\"} %llu\n", name, dp_http_hist_bounds[i],
				       (unsigned long long)cum);
	}
	if (!ret)
		ret = dp_http_buf_addf(b, "%s_bucket{le=\"+Inf\"} %llu\n%s_sum %.9g\n%s_count %llu\n",
				       name, (unsigned long long)h->count, name, h->sum, name,
				       (unsigned long long)h->count);
	return ret;
}
