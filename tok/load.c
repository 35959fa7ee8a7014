/* SPDX-License-Identifier: MIT */
/*
 * tok/load.c — reading tokenizer.json (jansson) into a struct dp_bpe: the
 * vocabulary and merges, the added tokens and their tries, the
 * pre-tokenizer steps (PCRE2, JIT), and the piece cache. Every component
 * is checked; a kind not implemented is refused by name (tok/tok.h lists
 * what is).
 */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/err.h"
#include "tok/tok-internal.h"
#include "tok/unicode-fix.h"

/* Ids above this are refused: a file claiming one is broken, and the
 * per-id arrays must stay small. */
#define DP_BPE_ID_MAX (1 << 24)
/* Added tokens longer than this are refused (the trie is built
 * recursively, one level a byte). */
#define DP_BPE_ADDED_LEN_MAX 1024

struct loader {
	struct dp_bpe *b;
	char *err;
	size_t err_len;
	/* GPT-2's byte map, inverted: code point -> byte, or -1 */
	int16_t char_byte[324];
};

static int fail(struct loader *l, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail(struct loader *l, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	dp_verrf(l->err, l->err_len, fmt, ap);
	va_end(ap);
	return -EINVAL;
}

/* GPT-2 bytes_to_unicode: printable Latin-1 bytes stand for themselves, the
 * other 68 take U+0100.. in byte order. */
static void byte_map_init(struct loader *l)
{
	int n = 0;

	for (int i = 0; i < 324; i++)
		l->char_byte[i] = -1;
	for (int c = 0; c < 256; c++) {
		bool printable = (c >= '!' && c <= '~') || (c >= 0xa1 && c <= 0xac) || c >= 0xae;
		if (printable)
			l->char_byte[c] = (int16_t)c;
		else
			l->char_byte[256 + n++] = (int16_t)c;
	}
}

/* The bytes a byte-level token string stands for, into out (room for len);
 * -1 if a character is outside the byte map. s is valid UTF-8 (jansson). */
static ssize_t byte_form(const struct loader *l, const char *s, size_t len, uint8_t *out)
{
	size_t i = 0, o = 0;

	while (i < len) {
		const uint8_t *p = (const uint8_t *)s + i;
		uint32_t cp;
		int k = dp_bpe_utf8_char(p, len - i);
		if (k <= 0)
			return -1;
		if (k == 1)
			cp = p[0];
		else if (k == 2)
			cp = (uint32_t)(p[0] & 0x1f) << 6 | (p[1] & 0x3f);
		else
			return -1; /* every mapped character is below U+0800 */
		if (cp >= 324 || l->char_byte[cp] < 0)
			return -1;
		out[o++] = (uint8_t)l->char_byte[cp];
		i += (size_t)k;
	}
	return (ssize_t)o;
}

uint64_t dp_bpe_hash(const uint8_t *s, size_t len)
{
	/* FNV-1a over 8-byte words then bytes, finished with a mix: the
	 * pieces are short, so a simple hash beats a call into a library */
	uint64_t h = 0xcbf29ce484222325ull ^ len;
	size_t i = 0;

	for (; i + 8 <= len; i += 8) {
		uint64_t w;
		memcpy(&w, s + i, 8);
		h = (h ^ w) * 0x100000001b3ull;
		h ^= h >> 29;
	}
	for (; i < len; i++)
		h = (h ^ s[i]) * 0x100000001b3ull;
	h ^= h >> 32;
	h *= 0xd6e8feb86659fd93ull;
	h ^= h >> 32;
	return h;
}

static int blob_add(struct dp_bpe *b, const uint8_t *s, size_t len, uint32_t *ret_off)
{
	if (b->blob_len + len > UINT32_MAX)
		return -ENOMEM;
	if (b->blob_len + len > b->blob_cap) {
		size_t cap = b->blob_cap ? b->blob_cap * 2 : 1 << 20;
		while (cap < b->blob_len + len)
			cap *= 2;
		uint8_t *p = realloc(b->blob, cap);
		if (!p)
			return -ENOMEM;
		b->blob = p;
		b->blob_cap = cap;
	}
	memcpy(b->blob + b->blob_len, s, len);
	*ret_off = (uint32_t)b->blob_len;
	b->blob_len += len;
	return 0;
}

static uint64_t table_size(size_t n)
{
	uint64_t size = 16;
	while (size < 2 * (uint64_t)n)
		size *= 2;
	return size;
}

/* ---- the vocabulary ------------------------------------------------------ */

static int32_t str_find(const struct dp_bpe *b, const char *s, size_t len)
{
	for (uint64_t h = dp_bpe_hash((const uint8_t *)s, len) & b->str_mask;; h = (h + 1) & b->str_mask) {
		int32_t v = b->str_ids[h];
		if (v == 0)
			return -1;
		const char *t = b->vocab_str[v - 1];
		if (strlen(t) == len && memcmp(t, s, len) == 0)
			return v - 1;
	}
}

static int32_t str_lookup(const struct loader *l, const char *s, size_t len)
{
	return str_find(l->b, s, len);
}

static int load_vocab(struct loader *l, json_t *vocab)
{
	struct dp_bpe *b = l->b;
	const char *key;
	json_t *val;
	int32_t max_id = -1;

	if (!json_is_object(vocab))
		return fail(l, "model.vocab: not an object");
	json_object_foreach(vocab, key, val) {
		if (!json_is_integer(val) || json_integer_value(val) < 0 ||
		    json_integer_value(val) >= DP_BPE_ID_MAX)
			return fail(l, "model.vocab[\"%.40s\"]: id not an integer in [0, %d)", key,
			            DP_BPE_ID_MAX);
		if (json_integer_value(val) > max_id)
			max_id = (int32_t)json_integer_value(val);
	}
	if (max_id < 0)
		return fail(l, "model.vocab: empty");
	b->n_ids = max_id + 1;
	b->vocab_str = calloc((size_t)b->n_ids, sizeof(*b->vocab_str));
	size_t n = json_object_size(vocab);
	b->str_mask = table_size(n) - 1;
	b->str_ids = calloc(b->str_mask + 1, sizeof(*b->str_ids));
	if (!b->vocab_str || !b->str_ids)
		return -ENOMEM;
	json_object_foreach(vocab, key, val) {
		int32_t id = (int32_t)json_integer_value(val);
		if (b->vocab_str[id])
			return fail(l, "model.vocab: id %d given to both \"%.40s\" and \"%.40s\"", id,
			            b->vocab_str[id], key);
		b->vocab_str[id] = strdup(key);
		if (!b->vocab_str[id])
			return -ENOMEM;
		size_t len = strlen(key);
		uint64_t h = dp_bpe_hash((const uint8_t *)key, len) & b->str_mask;
		while (b->str_ids[h])
			h = (h + 1) & b->str_mask;
		b->str_ids[h] = id + 1;
	}
	return 0;
}

/* ---- merges -------------------------------------------------------------- */

static int merge_insert(struct dp_bpe *b, int32_t left, int32_t right, uint32_t rank, int32_t id)
{
	uint64_t pair = ((uint64_t)(uint32_t)left << 32 | (uint32_t)right) + 1;
	uint64_t h = (pair * 0x9e3779b97f4a7c15ull) >> 20 & b->merge_mask;

	while (b->merges[h].pair && b->merges[h].pair != pair)
		h = (h + 1) & b->merge_mask;
	/* a pair listed twice: the later entry wins, as in `tokenizers` (it
	 * collects the merges into a HashMap) */
	b->merges[h].pair = pair;
	b->merges[h].rank = rank;
	b->merges[h].id = id;
	return 0;
}

static int merge_side(struct loader *l, size_t i, const char *s, size_t len, int32_t *ret_id)
{
	char buf[512];
	if (len >= sizeof(buf))
		return fail(l, "model.merges[%zu]: token longer than %zu bytes", i, sizeof(buf) - 1);
	memcpy(buf, s, len);
	buf[len] = 0;
	int32_t id = str_lookup(l, buf, len);
	if (id < 0)
		return fail(l, "model.merges[%zu]: \"%.40s\" is not in model.vocab", i, buf);
	*ret_id = id;
	return 0;
}

static int load_merges(struct loader *l, json_t *merges)
{
	struct dp_bpe *b = l->b;
	size_t i;
	json_t *m;

	if (!json_is_array(merges))
		return fail(l, "model.merges: not an array");
	b->merge_mask = table_size(json_array_size(merges)) - 1;
	b->merges = calloc(b->merge_mask + 1, sizeof(*b->merges));
	if (!b->merges)
		return -ENOMEM;
	json_array_foreach(merges, i, m) {
		const char *a, *c;
		size_t na, nc;
		if (json_is_string(m)) {
			/* "a b": byte-level tokens hold no space (U+0020 maps to Ġ) */
			const char *s = json_string_value(m);
			const char *sp = strchr(s, ' ');
			if (!sp || strchr(sp + 1, ' '))
				return fail(l, "model.merges[%zu]: \"%.40s\" is not two tokens split by one space", i, s);
			a = s;
			na = (size_t)(sp - s);
			c = sp + 1;
			nc = strlen(c);
		} else if (json_is_array(m) && json_array_size(m) == 2 &&
		           json_is_string(json_array_get(m, 0)) && json_is_string(json_array_get(m, 1))) {
			a = json_string_value(json_array_get(m, 0));
			na = json_string_length(json_array_get(m, 0));
			c = json_string_value(json_array_get(m, 1));
			nc = json_string_length(json_array_get(m, 1));
		} else {
			return fail(l, "model.merges[%zu]: neither \"a b\" nor [\"a\", \"b\"]", i);
		}
		int32_t left = 0, right = 0, id;
		int r = merge_side(l, i, a, na, &left);
		if (r < 0)
			return r;
		r = merge_side(l, i, c, nc, &right);
		if (r < 0)
			return r;
		char buf[1024];
		if (na + nc >= sizeof(buf))
			return fail(l, "model.merges[%zu]: merged token too long", i);
		memcpy(buf, a, na);
		memcpy(buf + na, c, nc);
		buf[na + nc] = 0;
		id = str_lookup(l, buf, na + nc);
		if (id < 0)
			return fail(l, "model.merges[%zu]: the merge \"%.40s\" is not in model.vocab", i, buf);
		if (i > UINT32_MAX - 1)
			return fail(l, "model.merges: too many");
		merge_insert(b, left, right, (uint32_t)i, id);
	}
	return 0;
}

/* ---- the model ----------------------------------------------------------- */

static bool null_or_empty(json_t *v)
{
	return !v || json_is_null(v) || (json_is_string(v) && json_string_length(v) == 0);
}

static int load_model(struct loader *l, json_t *model)
{
	struct dp_bpe *b = l->b;
	json_t *v;
	int r;

	if (!json_is_object(model))
		return fail(l, "model: missing or not an object");
	v = json_object_get(model, "type");
	if (v && (!json_is_string(v) || strcmp(json_string_value(v), "BPE") != 0))
		return fail(l, "model: type %.40s is not implemented (BPE only)",
		            json_is_string(v) ? json_string_value(v) : "(not a string)");
	v = json_object_get(model, "dropout");
	if (v && !json_is_null(v) && !(json_is_number(v) && json_number_value(v) == 0.0))
		return fail(l, "model.dropout: BPE dropout is not implemented");
	if (!null_or_empty(json_object_get(model, "continuing_subword_prefix")))
		return fail(l, "model.continuing_subword_prefix: not implemented");
	if (!null_or_empty(json_object_get(model, "end_of_word_suffix")))
		return fail(l, "model.end_of_word_suffix: not implemented");
	v = json_object_get(model, "byte_fallback");
	if (v && !json_is_false(v))
		return fail(l, "model.byte_fallback: not implemented");
	v = json_object_get(model, "ignore_merges");
	if (v && !json_is_boolean(v))
		return fail(l, "model.ignore_merges: not a boolean");
	b->ignore_merges = v && json_is_true(v);
	r = load_vocab(l, json_object_get(model, "vocab"));
	if (r < 0)
		return r;
	return load_merges(l, json_object_get(model, "merges"));
}

/* ---- added tokens -------------------------------------------------------- */

static bool flag(json_t *o, const char *name, bool dflt, bool *ok)
{
	json_t *v = json_object_get(o, name);
	if (!v)
		return dflt;
	if (!json_is_boolean(v))
		*ok = false;
	return json_is_true(v);
}

static int load_added(struct loader *l, json_t *arr, size_t n_vocab)
{
	struct dp_bpe *b = l->b;
	size_t i;
	json_t *t;
	int64_t max_added = -1;

	if (!arr || json_is_null(arr))
		return 0;
	if (!json_is_array(arr))
		return fail(l, "added_tokens: not an array");
	b->added = calloc(json_array_size(arr) + 1, sizeof(*b->added));
	if (!b->added)
		return -ENOMEM;
	json_array_foreach(arr, i, t) {
		struct dp_bpe_added *a = &b->added[i];
		json_t *id = json_object_get(t, "id"), *content = json_object_get(t, "content");
		bool ok = true;
		if (!json_is_object(t) || !json_is_integer(id) || !json_is_string(content))
			return fail(l, "added_tokens[%zu]: needs an integer id and a string content", i);
		size_t len = json_string_length(content);
		if (len == 0 || len > DP_BPE_ADDED_LEN_MAX)
			return fail(l, "added_tokens[%zu]: content must be 1 to %d bytes", i,
			            DP_BPE_ADDED_LEN_MAX);
		if (memchr(json_string_value(content), 0, len))
			return fail(l, "added_tokens[%zu]: content holds a NUL", i);
		a->special = flag(t, "special", false, &ok);
		a->lstrip = flag(t, "lstrip", false, &ok);
		a->rstrip = flag(t, "rstrip", false, &ok);
		a->single_word = flag(t, "single_word", false, &ok);
		a->normalized = flag(t, "normalized", !a->special, &ok);
		if (!ok)
			return fail(l, "added_tokens[%zu]: a flag is not a boolean", i);
		for (size_t j = 0; j < i; j++)
			if (b->added[j].len == len &&
			    memcmp(b->blob + (uintptr_t)b->added[j].bytes, json_string_value(content), len) == 0)
				return fail(l, "added_tokens[%zu]: content duplicates added_tokens[%zu]", i, j);
		/* `tokenizers` does not take the id from the file: a content in the
		 * vocab keeps its vocab id, any other gets the next id after the
		 * vocab and the added tokens so far. A file whose ids disagree
		 * would encode differently there, so it is refused. */
		int32_t in_vocab = str_lookup(l, json_string_value(content), len);
		int64_t expect = in_vocab >= 0 ? in_vocab
		                 : (max_added < 0 ? (int64_t)n_vocab
		                                  : (max_added > (int64_t)n_vocab - 1 ? max_added : (int64_t)n_vocab - 1) + 1);
		if (json_integer_value(id) != expect)
			return fail(l, "added_tokens[%zu]: id %lld, but tokenizers gives \"%.40s\" id %lld", i,
			            (long long)json_integer_value(id), json_string_value(content), (long long)expect);
		if (expect >= DP_BPE_ID_MAX)
			return fail(l, "added_tokens[%zu]: id above %d", i, DP_BPE_ID_MAX);
		if (expect > max_added)
			max_added = expect;
		a->id = (int32_t)expect;
		a->len = (uint32_t)len;
		/* the bytes live in the blob; pointer fixed up once it stops moving */
		uint32_t off;
		int r = blob_add(b, (const uint8_t *)json_string_value(content), len, &off);
		if (r < 0)
			return r;
		a->bytes = (const uint8_t *)(uintptr_t)off;
		b->n_added = i + 1;
	}
	if (max_added >= b->n_ids)
		b->n_ids = (int32_t)max_added + 1;
	return 0;
}

/* Build one trie from the added tokens with normalized == norm: sorted by
 * content, each node's children contiguous. */
struct trie_build {
	struct dp_bpe_trie *t;
	const struct dp_bpe_added *added;
	size_t *order; /* token indices sorted by content */
	size_t cap_nodes, cap_edges, n_edges;
};

static int trie_node(struct trie_build *tb, size_t lo, size_t hi, size_t depth, uint32_t node)
{
	struct dp_bpe_trie *t = tb->t;
	const struct dp_bpe_added *a = tb->added;

	t->nodes[node].token = -1;
	if (lo < hi && a[tb->order[lo]].len == depth) {
		t->nodes[node].token = (int32_t)tb->order[lo];
		while (lo < hi && a[tb->order[lo]].len == depth)
			lo++; /* duplicates are refused at load, so at most one */
	}
	/* count children */
	size_t n_children = 0;
	for (size_t i = lo; i < hi;) {
		uint8_t c = a[tb->order[i]].bytes[depth];
		while (i < hi && a[tb->order[i]].bytes[depth] == c)
			i++;
		n_children++;
	}
	uint32_t first = (uint32_t)tb->n_edges;
	tb->n_edges += n_children;
	t->nodes[node].first_edge = first;
	t->nodes[node].n_edges = (uint16_t)n_children;
	size_t e = first;
	for (size_t i = lo; i < hi;) {
		size_t j = i;
		uint8_t c = a[tb->order[i]].bytes[depth];
		while (j < hi && a[tb->order[j]].bytes[depth] == c)
			j++;
		uint32_t child = (uint32_t)t->n_nodes++;
		t->edges[e].byte = c;
		t->edges[e].node = child;
		e++;
		int r = trie_node(tb, i, j, depth + 1, child);
		if (r < 0)
			return r;
		i = j;
	}
	return 0;
}

static int added_cmp(const void *x, const void *y, void *arg)
{
	const struct dp_bpe_added *added = arg;
	const struct dp_bpe_added *a = &added[*(const size_t *)x], *b = &added[*(const size_t *)y];
	size_t n = a->len < b->len ? a->len : b->len;
	int c = memcmp(a->bytes, b->bytes, n);
	if (c)
		return c;
	return a->len < b->len ? -1 : a->len > b->len;
}

static int build_trie(struct dp_bpe *b, int norm)
{
	struct dp_bpe_trie *t = &b->trie[norm];
	size_t n = 0, bytes = 1;
	size_t *order = malloc((b->n_added + 1) * sizeof(*order));

	if (!order)
		return -ENOMEM;
	for (size_t i = 0; i < b->n_added; i++)
		if (b->added[i].normalized == (norm == 1)) {
			order[n++] = i;
			bytes += b->added[i].len;
			t->first[b->added[i].bytes[0]] = true;
		}
	t->any = n > 0;
	qsort_r(order, n, sizeof(*order), added_cmp, b->added);
	t->nodes = calloc(bytes, sizeof(*t->nodes));
	t->edges = calloc(bytes, sizeof(*t->edges));
	if (!t->nodes || !t->edges) {
		free(order);
		return -ENOMEM;
	}
	struct trie_build tb = { .t = t, .added = b->added, .order = order };
	t->n_nodes = 1;
	int r = trie_node(&tb, 0, n, 0, 0);
	free(order);
	return r;
}

/* ---- pre-tokenizer ------------------------------------------------------- */

static int add_step(struct loader *l, struct dp_bpe_step step)
{
	struct dp_bpe *b = l->b;
	struct dp_bpe_step *s = realloc(b->steps, (b->n_steps + 1) * sizeof(*s));
	if (!s) {
		pcre2_code_free(step.re);
		return -ENOMEM;
	}
	b->steps = s;
	b->steps[b->n_steps++] = step;
	return 0;
}

static int compile(struct loader *l, const char *where, const char *pattern, size_t len, bool literal,
                   pcre2_code **ret)
{
	int code, r;
	PCRE2_SIZE at;
	uint32_t opts = PCRE2_UTF | (literal ? PCRE2_LITERAL : PCRE2_UCP | PCRE2_MULTILINE);
	char *translated = NULL, msg_err[200] = "";

	if (!dp_bpe_utf8_valid((const uint8_t *)pattern, len))
		return fail(l, "%s: pattern is not UTF-8", where);
	if (!literal) {
		r = dp_bpe_regex_translate(pattern, len, &translated, msg_err, sizeof(msg_err));
		if (r == -EINVAL)
			return fail(l, "%s: %s", where, msg_err);
		if (r < 0)
			return r;
		pattern = translated;
		len = strlen(translated);
	}
	pcre2_code *re = pcre2_compile((PCRE2_SPTR)pattern, len, opts, &code, &at, NULL);
	free(translated);
	if (!re) {
		PCRE2_UCHAR msg[160];
		pcre2_get_error_message(code, msg, sizeof(msg));
		return fail(l, "%s: regex does not compile: %s", where, (char *)msg);
	}
	/* no JIT (some platforms, some sanitizer builds) only costs speed */
	(void)pcre2_jit_compile(re, PCRE2_JIT_COMPLETE);
	*ret = re;
	return 0;
}

/* GPT-2's pattern, which ByteLevel's use_regex applies. */
static const char gpt2_pattern[] =
	"'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

static int load_pretok(struct loader *l, json_t *p, const char *where, int depth)
{
	char sub[128];
	json_t *type = json_object_get(p, "type");
	int r;

	if (depth > 8)
		return fail(l, "%s: Sequences nested too deep", where);
	if (!json_is_object(p) || !json_is_string(type))
		return fail(l, "%s: not an object with a type", where);
	const char *t = json_string_value(type);
	if (strcmp(t, "Sequence") == 0) {
		json_t *arr = json_object_get(p, "pretokenizers"), *e;
		size_t i;
		if (!json_is_array(arr))
			return fail(l, "%s: Sequence without a pretokenizers array", where);
		json_array_foreach(arr, i, e) {
			snprintf(sub, sizeof(sub), "%.60s.pretokenizers[%zu]", where, i);
			r = load_pretok(l, e, sub, depth + 1);
			if (r < 0)
				return r;
		}
		return 0;
	}
	struct dp_bpe_step step = { 0 };
	if (strcmp(t, "Split") == 0) {
		json_t *pat = json_object_get(p, "pattern"), *beh = json_object_get(p, "behavior");
		json_t *inv = json_object_get(p, "invert");
		json_t *rx = json_object_get(pat, "Regex"), *str = json_object_get(pat, "String");
		if (!json_is_object(pat) || (!json_is_string(rx) && !json_is_string(str)))
			return fail(l, "%s: Split pattern is neither {\"Regex\": ...} nor {\"String\": ...}", where);
		if (!json_is_string(beh))
			return fail(l, "%s: Split without a behavior", where);
		if (strcmp(json_string_value(beh), "Isolated") == 0)
			step.behavior = DP_BPE_ISOLATED;
		else if (strcmp(json_string_value(beh), "Removed") == 0)
			step.behavior = DP_BPE_REMOVED;
		else
			return fail(l, "%s: Split behavior %.40s is not implemented (Isolated, Removed)", where,
			            json_string_value(beh));
		if (inv && !json_is_boolean(inv))
			return fail(l, "%s: Split invert is not a boolean", where);
		step.invert = inv && json_is_true(inv);
		json_t *s = json_is_string(rx) ? rx : str;
		r = compile(l, where, json_string_value(s), json_string_length(s), !json_is_string(rx), &step.re);
		if (r < 0)
			return r;
		step.kind = DP_BPE_STEP_SPLIT;
		return add_step(l, step);
	}
	if (strcmp(t, "Digits") == 0) {
		json_t *ind = json_object_get(p, "individual_digits");
		if (ind && !json_is_boolean(ind))
			return fail(l, "%s: Digits individual_digits is not a boolean", where);
		/* Rust's char::is_numeric (test_unicode checks the class) */
		const char *pat = ind && json_is_true(ind) ? DP_BPE_DIGITS_CLASS : DP_BPE_DIGITS_CLASS "+";
		int code;
		PCRE2_SIZE at;
		step.re = pcre2_compile((PCRE2_SPTR)pat, PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP, &code, &at,
		                        NULL);
		if (!step.re)
			return -ENOMEM;
		(void)pcre2_jit_compile(step.re, PCRE2_JIT_COMPLETE);
		step.kind = DP_BPE_STEP_SPLIT;
		step.behavior = DP_BPE_ISOLATED;
		return add_step(l, step);
	}
	if (strcmp(t, "ByteLevel") == 0) {
		json_t *aps = json_object_get(p, "add_prefix_space"), *ur = json_object_get(p, "use_regex");
		if ((aps && !json_is_boolean(aps)) || (ur && !json_is_boolean(ur)))
			return fail(l, "%s: ByteLevel flags must be booleans", where);
		step.kind = DP_BPE_STEP_BYTELEVEL;
		step.add_prefix_space = !aps || json_is_true(aps);
		if (!ur || json_is_true(ur)) {
			r = compile(l, where, gpt2_pattern, strlen(gpt2_pattern), false, &step.re);
			if (r < 0)
				return r;
		}
		return add_step(l, step);
	}
	return fail(l, "%s: pre-tokenizer %.40s is not implemented (Sequence, Split, Digits, ByteLevel)", where, t);
}

static int check_components(struct loader *l, json_t *root)
{
	json_t *v = json_object_get(root, "normalizer");
	if (v && !json_is_null(v)) {
		json_t *type = json_object_get(v, "type"), *list = json_object_get(v, "normalizers");
		if (!json_is_string(type) || strcmp(json_string_value(type), "Sequence") != 0 ||
		    !json_is_array(list) || json_array_size(list) != 0)
			return fail(l, "normalizer: %.40s is not implemented (null or an empty Sequence only)",
			            json_is_string(type) ? json_string_value(type) : "(no type)");
	}
	v = json_object_get(root, "truncation");
	if (v && !json_is_null(v))
		return fail(l, "truncation: not implemented");
	v = json_object_get(root, "padding");
	if (v && !json_is_null(v))
		return fail(l, "padding: not implemented");
	/* post-processors run only for add_special_tokens=True; dp_bpe_encode is
	 * add_special_tokens=False (callers put BOS where their format says), so
	 * the kinds that only add special tokens or trim offsets are read past */
	v = json_object_get(root, "post_processor");
	if (v && !json_is_null(v)) {
		json_t *type = json_object_get(v, "type");
		const char *t = json_is_string(type) ? json_string_value(type) : "(no type)";
		if (strcmp(t, "ByteLevel") != 0 && strcmp(t, "TemplateProcessing") != 0 &&
		    strcmp(t, "Sequence") != 0)
			return fail(l, "post_processor: %.40s is not implemented (null, ByteLevel, TemplateProcessing, "
			               "Sequence)", t);
	}
	v = json_object_get(root, "decoder");
	json_t *type = json_object_get(v, "type");
	if (!json_is_string(type) || strcmp(json_string_value(type), "ByteLevel") != 0)
		return fail(l, "decoder: %.40s is not implemented (ByteLevel)",
		            json_is_string(type) ? json_string_value(type) : "(missing)");
	return 0;
}

/* ---- per-id tables and the piece cache ------------------------------------ */

static int build_ids(struct loader *l)
{
	struct dp_bpe *b = l->b;
	size_t n = (size_t)b->n_ids;
	uint8_t buf[DP_BPE_ADDED_LEN_MAX * 4 + 1024];
	int r;

	b->dec_off = calloc(n, sizeof(*b->dec_off));
	b->dec_len = malloc(n * sizeof(*b->dec_len));
	b->byte_len = malloc(n * sizeof(*b->byte_len));
	b->is_special = calloc(n, 1);
	if (!b->dec_off || !b->dec_len || !b->byte_len || !b->is_special)
		return -ENOMEM;
	for (size_t i = 0; i < n; i++)
		b->dec_len[i] = b->byte_len[i] = -1;
	for (int i = 0; i < 256; i++)
		b->byte_id[i] = -1;
	for (size_t id = 0; id < n && id < (size_t)b->n_ids; id++) {
		const char *s = id < n ? b->vocab_str[id] : NULL;
		if (!s)
			continue;
		size_t len = strlen(s);
		if (len > sizeof(buf))
			return fail(l, "model.vocab: token of %zu bytes is too long", len);
		ssize_t k = byte_form(l, s, len, buf);
		uint32_t off;
		if (k >= 0) {
			r = blob_add(b, buf, (size_t)k, &off);
			b->byte_len[id] = (int32_t)k;
			if (k == 1)
				b->byte_id[buf[0]] = (int32_t)id;
		} else {
			r = blob_add(b, (const uint8_t *)s, len, &off);
		}
		if (r < 0)
			return r;
		b->dec_off[id] = off;
		b->dec_len[id] = k >= 0 ? (int32_t)k : (int32_t)len;
	}
	/* added tokens decode by their own content (`tokenizers` looks them up
	 * before the model), through the same byte map */
	for (size_t i = 0; i < b->n_added; i++) {
		struct dp_bpe_added *a = &b->added[i];
		const char *s = (const char *)b->blob + (uintptr_t)a->bytes;
		ssize_t k = byte_form(l, s, a->len, buf);
		uint32_t off;
		if (k >= 0)
			r = blob_add(b, buf, (size_t)k, &off);
		else
			r = blob_add(b, (const uint8_t *)b->blob + (uintptr_t)a->bytes, a->len, &off);
		if (r < 0)
			return r;
		b->dec_off[a->id] = off;
		b->dec_len[a->id] = k >= 0 ? (int32_t)k : (int32_t)a->len;
		b->is_special[a->id] = a->special;
	}
	for (size_t i = 0; i < b->n_added; i++)
		b->added[i].bytes = b->blob + (uintptr_t)b->added[i].bytes;
	for (int c = 0; c < 256; c++)
		if (b->byte_id[c] < 0)
			return fail(l, "model.vocab: no token for the byte 0x%02x (byte level needs all 256)", c);
	for (size_t id = 0; id < n; id++)
		if (b->dec_len[id] > 0 && (size_t)b->dec_len[id] > b->piece_max)
			b->piece_max = (size_t)b->dec_len[id];
	return 0;
}

int32_t dp_bpe_piece_lookup(const struct dp_bpe *b, const uint8_t *s, size_t len)
{
	for (uint64_t h = dp_bpe_hash(s, len) & b->piece_mask;; h = (h + 1) & b->piece_mask) {
		int32_t v = b->pieces[h];
		if (v == 0)
			return -1;
		int32_t id = v - 1;
		if ((size_t)b->byte_len[id] == len && memcmp(b->blob + b->dec_off[id], s, len) == 0)
			return id;
	}
}

static int build_cache(struct dp_bpe *b)
{
	size_t n = 0;
	int32_t ids[512];
	struct dp_bpe_scratch sc = { 0 };
	int r = 0;

	for (int32_t id = 0; id < b->n_ids; id++)
		n += b->byte_len[id] > 0;
	b->piece_mask = table_size(n) - 1;
	b->pieces = calloc(b->piece_mask + 1, sizeof(*b->pieces));
	if (!b->pieces)
		return -ENOMEM;
	for (int32_t id = 0; id < b->n_ids; id++) {
		int32_t len = b->byte_len[id];
		const uint8_t *s = b->blob + b->dec_off[id];
		if (len <= 0)
			continue;
		if (!b->ignore_merges) {
			if ((size_t)len > sizeof(ids) / sizeof(ids[0]))
				continue;
			int k = dp_bpe_merge_bytes(b, &sc, s, (size_t)len, ids, NULL);
			if (k < 0) {
				r = k;
				break;
			}
			if (k != 1 || ids[0] != id)
				continue; /* merges do not reach it: not a cache entry */
		}
		uint64_t h = dp_bpe_hash(s, (size_t)len) & b->piece_mask;
		while (b->pieces[h])
			h = (h + 1) & b->piece_mask;
		b->pieces[h] = id + 1;
	}
	dp_bpe_scratch_fini(&sc);
	return r;
}

/* ---- entry points -------------------------------------------------------- */

void dp_bpe_free(struct dp_bpe *b)
{
	if (!b)
		return;
	if (b->vocab_str)
		for (int32_t i = 0; i < b->n_ids; i++)
			free(b->vocab_str[i]);
	free(b->vocab_str);
	free(b->str_ids);
	free(b->dec_off);
	free(b->dec_len);
	free(b->byte_len);
	free(b->is_special);
	free(b->blob);
	free(b->merges);
	free(b->pieces);
	free(b->added);
	for (int i = 0; i < 2; i++) {
		free(b->trie[i].nodes);
		free(b->trie[i].edges);
	}
	for (size_t i = 0; i < b->n_steps; i++)
		pcre2_code_free(b->steps[i].re);
	pcre2_code_free(b->word_re);
	free(b->steps);
	free(b);
}

static int load_root(struct loader *l, json_t *root)
{
	struct dp_bpe *b = l->b;
	int r;

	if (!json_is_object(root))
		return fail(l, "not a JSON object");
	r = check_components(l, root);
	if (r < 0)
		return r;
	r = load_model(l, json_object_get(root, "model"));
	if (r < 0)
		return r;
	size_t n_vocab = json_object_size(json_object_get(root, "model") ? json_object_get(json_object_get(root, "model"), "vocab") : NULL);
	int32_t vocab_ids = b->n_ids;
	r = load_added(l, json_object_get(root, "added_tokens"), n_vocab);
	if (r < 0)
		return r;
	if (b->n_ids > vocab_ids) {
		char **p = realloc(b->vocab_str, (size_t)b->n_ids * sizeof(*p));
		if (!p)
			return -ENOMEM;
		memset(p + vocab_ids, 0, (size_t)(b->n_ids - vocab_ids) * sizeof(*p));
		b->vocab_str = p;
	}
	json_t *pre = json_object_get(root, "pre_tokenizer");
	if (!pre || json_is_null(pre))
		return fail(l, "pre_tokenizer: null is not implemented (a byte-level BPE needs ByteLevel)");
	r = load_pretok(l, pre, "pre_tokenizer", 0);
	if (r < 0)
		return r;
	for (size_t i = 0; i < b->n_steps; i++) {
		if (b->steps[i].kind == DP_BPE_STEP_BYTELEVEL && i + 1 != b->n_steps)
			return fail(l, "pre_tokenizer: steps after ByteLevel are not implemented");
		b->any_prefix_space |= b->steps[i].add_prefix_space;
	}
	if (b->n_steps == 0 || b->steps[b->n_steps - 1].kind != DP_BPE_STEP_BYTELEVEL)
		return fail(l, "pre_tokenizer: no ByteLevel step (only byte-level BPE is implemented)");
	r = build_ids(l);
	if (r < 0)
		return r;
	for (int i = 0; i < 2; i++) {
		r = build_trie(b, i);
		if (r < 0)
			return r;
	}
	for (size_t i = 0; i < b->n_added; i++)
		if (b->added[i].single_word && !b->word_re) {
			/* Rust's char::is_alphanumeric: Alphabetic or numeric;
			 * PCRE2's own tables, not checked against Rust's (the
			 * classes tok/regex.c fixes are the pre-tokenizer's) */
			static const char word[] = "[\\p{Alphabetic}\\p{N}]";
			int code;
			PCRE2_SIZE at;
			b->word_re = pcre2_compile((PCRE2_SPTR)word, PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP,
			                           &code, &at, NULL);
			if (!b->word_re)
				return -ENOMEM;
		}
	return build_cache(b);
}

int dp_bpe_load_buf(const char *json, size_t len, struct dp_bpe **ret_bpe, char *err, size_t err_len)
{
	struct loader l = { .err = err, .err_len = err_len };
	json_error_t je;

	if ((!json && len) || !ret_bpe)
		return -EINVAL;
	json_t *root = json_loadb(json ? json : "", len, JSON_REJECT_DUPLICATES, &je);
	if (!root) {
		dp_errf(err, err_len, "not JSON: %s (line %d, column %d)", je.text, je.line, je.column);
		return -EINVAL;
	}
	l.b = calloc(1, sizeof(*l.b));
	if (!l.b) {
		json_decref(root);
		return -ENOMEM;
	}
	byte_map_init(&l);
	int r = load_root(&l, root);
	json_decref(root);
	if (r < 0) {
		if (r == -ENOMEM)
			dp_errf(err, err_len, "out of memory");
		dp_bpe_free(l.b);
		return r;
	}
	*ret_bpe = l.b;
	return 0;
}

int dp_bpe_load(const char *path, struct dp_bpe **ret_bpe, char *err, size_t err_len)
{
	struct stat st;
	char *buf;
	int fd, r;

	if (!path || !ret_bpe)
		return -EINVAL;
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		r = -errno;
		dp_errf(err, err_len, "%s: %s", path, strerror(-r));
		return r;
	}
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_size > (1 << 30)) {
		close(fd);
		dp_errf(err, err_len, "%s: not a regular file under 1 GiB", path);
		return -EINVAL;
	}
	buf = malloc((size_t)st.st_size + 1);
	if (!buf) {
		close(fd);
		return -ENOMEM;
	}
	size_t got = 0;
	while (got < (size_t)st.st_size) {
		ssize_t k = read(fd, buf + got, (size_t)st.st_size - got);
		if (k <= 0) {
			r = k < 0 ? -errno : -EIO;
			close(fd);
			free(buf);
			dp_errf(err, err_len, "%s: read: %s", path, strerror(-r));
			return r;
		}
		got += (size_t)k;
	}
	close(fd);
	r = dp_bpe_load_buf(buf, got, ret_bpe, err, err_len);
	free(buf);
	if (r == -EINVAL)
		dp_err_prefix(err, err_len, path);
	return r;
}

int32_t dp_bpe_n_ids(const struct dp_bpe *b)
{
	return b ? b->n_ids : -EINVAL;
}

bool dp_bpe_is_special(const struct dp_bpe *b, int32_t id)
{
	return b && id >= 0 && id < b->n_ids && b->is_special[id];
}

int32_t dp_bpe_token_id(const struct dp_bpe *b, const char *content)
{
	if (!b || !content)
		return -EINVAL;
	size_t len = strlen(content);
	for (size_t i = 0; i < b->n_added; i++)
		if (b->added[i].len == len && memcmp(b->added[i].bytes, content, len) == 0)
			return b->added[i].id;
	int32_t id = str_find(b, content, len);
	return id >= 0 ? id : -ENOENT;
}
