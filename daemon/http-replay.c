/* SPDX-License-Identifier: MIT */
/*
 * daemon/http-replay.c — the ids sampled for each recent V4 chat reply, so
 * that a stateless client sending the reply back gets its turn as sampled.
 *
 * A reply's re-render need not tokenize to the ids that were sampled (a BPE
 * tokenizer has many spellings of one text; the model picked one), and then
 * the prefix unit left at the end of the reply is never hit. Each reply that
 * ended on EOS is kept under a key made of its tenant (the prefix cache's:
 * API key + cache_salt), its mode (thinking or not) and exactly what the
 * client was sent (content, reasoning_content, every tool call's id, name
 * and arguments); a later request's assistant message with the same key has
 * its turn replaced by those ids (model/conv.h, dp_conv_prompt_splice). The
 * tool-call ids are ours and unique per reply, which is what antirez/ds4
 * keys its DSML replay by; the content is compared in full, so a client that
 * edits a reply gets its edit rendered.
 *
 * Bounded by [http] replay_cache_bytes (key + ids + bookkeeping per reply),
 * least recently used out first; linear scans over the (few thousand)
 * entries, on the HTTP thread only.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/http-front.h"

struct http_replay_entry {
	uint64_t hash, used;
	char *key;
	size_t key_len;
	int32_t *ids;
	size_t n_ids;
};

static uint64_t fnv1a(const char *p, size_t n)
{
	uint64_t h = 1469598103934665603ull;
	for (size_t i = 0; i < n; i++)
		h = (h ^ (unsigned char)p[i]) * 1099511628211ull;
	return h;
}

static size_t entry_bytes(const struct http_replay_entry *e)
{
	return sizeof(*e) + e->key_len + e->n_ids * sizeof(int32_t);
}

static int field(struct dp_http_buf *b, const char *s, size_t n)
{
	int ret = dp_http_buf_addf(b, "%zu:", n);
	return ret < 0 ? ret : dp_http_buf_add(b, s ? s : "", n);
}

int http_replay_key(struct dp_http_buf *b, int32_t key, const char *salt, enum dp_chat_mode mode,
		    const char *content, size_t content_len, const char *reasoning,
		    size_t reasoning_len, const json_t *calls)
{
	size_t i;
	json_t *c;
	b->len = b->off = 0;
	int ret = dp_http_buf_addf(b, "key %d;", key);
	if (ret >= 0)
		ret = field(b, salt, salt ? strlen(salt) : 0);
	if (ret >= 0)
		ret = dp_http_buf_addf(b, "%d;", (int)mode);
	if (ret >= 0)
		ret = field(b, content, content_len);
	if (ret >= 0)
		ret = field(b, reasoning, reasoning_len);
	json_array_foreach(calls, i, c) {
		json_t *fn = json_object_get(c, "function");
		const char *id = json_string_value(json_object_get(c, "id"));
		json_t *name = json_object_get(fn, "name"), *args = json_object_get(fn, "arguments");
		if (!id || !json_is_string(name) || !json_is_string(args))
			return -EINVAL;
		if (ret >= 0)
			ret = field(b, id, strlen(id));
		if (ret >= 0)
			ret = field(b, json_string_value(name), json_string_length(name));
		if (ret >= 0)
			ret = field(b, json_string_value(args), json_string_length(args));
	}
	return ret < 0 ? -ENOMEM : 0;
}

static struct http_replay_entry *find(struct http_replay *rp, const char *key, size_t len)
{
	uint64_t h = fnv1a(key, len);
	for (size_t i = 0; i < rp->n; i++) {
		struct http_replay_entry *e = &rp->entries[i];
		if (e->hash == h && e->key_len == len && !memcmp(e->key, key, len))
			return e;
	}
	return NULL;
}

static void drop(struct http_replay *rp, size_t i)
{
	struct http_replay_entry *e = &rp->entries[i];
	rp->bytes -= entry_bytes(e);
	free(e->key);
	free(e->ids);
	rp->entries[i] = rp->entries[--rp->n];
}

int http_replay_put(struct http_replay *rp, const char *key, size_t len, const int32_t *ids,
		    size_t n)
{
	struct http_replay_entry e = { .hash = fnv1a(key, len), .used = ++rp->clock,
				       .key_len = len, .n_ids = n };
	if (!n || entry_bytes(&e) > rp->cap)
		return -E2BIG;
	struct http_replay_entry *old = find(rp, key, len);
	if (old)
		drop(rp, (size_t)(old - rp->entries));
	while (rp->n && rp->bytes + entry_bytes(&e) > rp->cap) {
		size_t lru = 0;
		for (size_t i = 1; i < rp->n; i++)
			if (rp->entries[i].used < rp->entries[lru].used)
				lru = i;
		drop(rp, lru);
		rp->evicted++;
	}
	if (rp->n == rp->alloc) {
		size_t alloc = rp->alloc ? 2 * rp->alloc : 64;
		struct http_replay_entry *grown = realloc(rp->entries, alloc * sizeof(*grown));
		if (!grown)
			return -ENOMEM;
		rp->entries = grown;
		rp->alloc = alloc;
	}
	e.key = malloc(len);
	e.ids = malloc(n * sizeof(int32_t));
	if (!e.key || !e.ids) {
		free(e.key);
		free(e.ids);
		return -ENOMEM;
	}
	memcpy(e.key, key, len);
	memcpy(e.ids, ids, n * sizeof(int32_t));
	rp->entries[rp->n++] = e;
	rp->bytes += entry_bytes(&e);
	return 0;
}

const int32_t *http_replay_get(struct http_replay *rp, const char *key, size_t len, size_t *ret_n)
{
	struct http_replay_entry *e = find(rp, key, len);
	if (!e)
		return NULL;
	e->used = ++rp->clock;
	*ret_n = e->n_ids;
	return e->ids;
}

void http_replay_fini(struct http_replay *rp)
{
	while (rp->n)
		drop(rp, rp->n - 1);
	free(rp->entries);
	memset(rp, 0, sizeof(*rp));
}

/* Put back, in whole (rendered from q's messages), the sampled ids of each
 * assistant message we sent as it was sent. Returns how many turns were
 * replayed; a prompt whose openers do not line up one to one with its
 * assistant messages (two assistant messages in a row, markup typed into a
 * message) is left as rendered. */
size_t http_replay_splice(struct dp_http *h, const struct hreq *r, struct dp_conv_prompt *whole)
{
	json_t *msgs = json_object_get(r->req.root, "messages"), *m;
	size_t i, n_asst = 0, done = 0;
	const char *last = NULL;
	if (!h->replay.cap || dp_conv_format(h->srv->conv) != DP_CHAT_FORMAT_V4)
		return 0;
	json_array_foreach(msgs, i, m) {
		last = json_string_value(json_object_get(m, "role"));
		n_asst += last && !strcmp(last, "assistant");
	}
	if (!n_asst || dp_conv_prompt_turns(h->srv->conv, whole) !=
			       n_asst + !(last && !strcmp(last, "assistant")))
		return 0;
	size_t turn = 0;
	json_array_foreach(msgs, i, m) {
		const char *role = json_string_value(json_object_get(m, "role"));
		if (!role || strcmp(role, "assistant"))
			continue;
		json_t *content = json_object_get(m, "content");
		json_t *reasoning = json_object_get(m, "reasoning_content");
		json_t *calls = json_object_get(m, "tool_calls");
		size_t n;
		const int32_t *ids;
		if ((json_is_string(content) || json_is_null(content) || !content) &&
		    (json_is_string(reasoning) || json_is_null(reasoning) || !reasoning) &&
		    (json_is_array(calls) || json_is_null(calls) || !calls) &&
		    http_replay_key(&h->scratch_key, r->key, r->req.cache_salt, whole->mode,
				    json_string_value(content), json_string_length(content),
				    json_string_value(reasoning), json_string_length(reasoning),
				    calls) == 0 &&
		    (ids = http_replay_get(&h->replay, h->scratch_key.p, h->scratch_key.len, &n)) &&
		    dp_conv_prompt_splice(h->srv->conv, whole, turn, whole->mode, ids, n) == 0)
			done++;
		turn++;
	}
	h->replay.turns_replayed += done;
	return done;
}
