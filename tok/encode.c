/* SPDX-License-Identifier: MIT */
/*
 * tok/encode.c — text to ids, in the order `tokenizers` does it:
 *
 *   1. ill-formed UTF-8 becomes U+FFFD (tok/tok.h says why);
 *   2. added tokens with normalized=false are cut out of the text, then
 *      those with normalized=true out of what is left (leftmost longest,
 *      lstrip / rstrip / single_word as AddedVocabulary::find_matches);
 *   3. each remaining piece goes through the pre-tokenizer steps, each step
 *      splitting every piece of the one before (a regex sees one piece as
 *      its whole subject, so a look-ahead stops at the piece's end);
 *   4. ByteLevel (optional prefix space, optional GPT-2 split), then BPE.
 *
 * BPE merges by rank with a binary heap over the symbol list, as
 * Word::merge_all in `tokenizers` (lowest rank first, leftmost first among
 * equal ranks): a piece of n bytes costs at most 3n pushes and n - 1 merges,
 * O(n log n), so a megabyte of one letter is one long piece and still
 * fast. Pieces that are a vocab token reachable by merges (nearly all
 * pieces of real text) are answered by the piece cache built at load.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "tok/tok-internal.h"

struct enc {
	const struct dp_bpe *b;
	int32_t *ids;
	size_t cap, n;
	pcre2_match_data *md;
	pcre2_match_context *mc;
	pcre2_jit_stack *js;
	struct dp_bpe_scratch sc;
	uint8_t *tmp; /* a piece with the prefix space */
	size_t tmp_cap;
	struct dp_bpe_counts *counts;
};

static const struct dp_bpe_merge_slot *merge_find(const struct dp_bpe *b, int32_t left, int32_t right)
{
	uint64_t pair = ((uint64_t)(uint32_t)left << 32 | (uint32_t)right) + 1;
	for (uint64_t h = (pair * 0x9e3779b97f4a7c15ull) >> 20 & b->merge_mask;; h = (h + 1) & b->merge_mask) {
		const struct dp_bpe_merge_slot *m = &b->merges[h];
		if (m->pair == pair)
			return m;
		if (m->pair == 0)
			return NULL;
	}
}

static void heap_push(uint64_t *heap, size_t *n, uint64_t key)
{
	size_t i = (*n)++;
	while (i > 0) {
		size_t p = (i - 1) / 2;
		if (heap[p] <= key)
			break;
		heap[i] = heap[p];
		i = p;
	}
	heap[i] = key;
}

static uint64_t heap_pop(uint64_t *heap, size_t *n)
{
	uint64_t top = heap[0], last = heap[--(*n)];
	size_t i = 0, m = *n;
	for (;;) {
		size_t c = 2 * i + 1;
		if (c >= m)
			break;
		if (c + 1 < m && heap[c + 1] < heap[c])
			c++;
		if (last <= heap[c])
			break;
		heap[i] = heap[c];
		i = c;
	}
	if (m)
		heap[i] = last;
	return top;
}

static int scratch_reserve(struct dp_bpe_scratch *sc, size_t n)
{
	if (n <= sc->cap)
		return 0;
	size_t cap = sc->cap ? sc->cap : 256;
	while (cap < n)
		cap *= 2;
	struct dp_bpe_sym *s = realloc(sc->syms, cap * sizeof(*s));
	if (!s)
		return -ENOMEM;
	sc->syms = s;
	uint64_t *h = realloc(sc->heap, 3 * cap * sizeof(*h));
	if (!h)
		return -ENOMEM;
	sc->heap = h;
	sc->cap = cap;
	return 0;
}

static void push_pair(const struct dp_bpe *b, struct dp_bpe_scratch *sc, size_t *nh, int32_t pos,
                      struct dp_bpe_counts *counts)
{
	struct dp_bpe_sym *y = sc->syms;
	const struct dp_bpe_merge_slot *m = merge_find(b, y[pos].id, y[y[pos].next].id);
	if (m) {
		heap_push(sc->heap, nh, (uint64_t)m->rank << 32 | (uint32_t)pos);
		counts->heap_pushes++;
	}
}

/* Merge s[0..n) in sc->syms; the result is the list from symbol 0. */
static int merge_word(const struct dp_bpe *b, struct dp_bpe_scratch *sc, const uint8_t *s, size_t n,
                      struct dp_bpe_counts *counts)
{
	size_t nh = 0;
	int r = scratch_reserve(sc, n);
	if (r < 0)
		return r;
	if (n > INT32_MAX)
		return -E2BIG;
	struct dp_bpe_sym *y = sc->syms;
	for (size_t i = 0; i < n; i++) {
		y[i].id = b->byte_id[s[i]];
		y[i].prev = (int32_t)i - 1;
		y[i].next = i + 1 < n ? (int32_t)i + 1 : -1;
	}
	for (size_t i = 0; i + 1 < n; i++)
		push_pair(b, sc, &nh, (int32_t)i, counts);
	while (nh) {
		uint64_t top = heap_pop(sc->heap, &nh);
		counts->heap_pops++;
		int32_t pos = (int32_t)(uint32_t)top;
		uint32_t rank = (uint32_t)(top >> 32);
		int32_t nx = y[pos].next;
		if (y[pos].id < 0 || nx < 0)
			continue;
		/* the pair may have changed since it was pushed: take the
		 * merge only if it is still the one with this rank */
		const struct dp_bpe_merge_slot *m = merge_find(b, y[pos].id, y[nx].id);
		if (!m || m->rank != rank)
			continue;
		counts->merges++;
		y[pos].id = m->id;
		y[pos].next = y[nx].next;
		if (y[nx].next >= 0)
			y[y[nx].next].prev = pos;
		y[nx].id = -1;
		if (y[pos].prev >= 0)
			push_pair(b, sc, &nh, y[pos].prev, counts);
		if (y[pos].next >= 0)
			push_pair(b, sc, &nh, pos, counts);
	}
	return 0;
}

void dp_bpe_scratch_fini(struct dp_bpe_scratch *sc)
{
	free(sc->syms);
	free(sc->heap);
	memset(sc, 0, sizeof(*sc));
}

int dp_bpe_merge_bytes(const struct dp_bpe *b, struct dp_bpe_scratch *sc, const uint8_t *s, size_t len,
                       int32_t *ids, struct dp_bpe_counts *counts)
{
	struct dp_bpe_counts dummy = { 0 };
	int n = 0;

	if (len == 0)
		return 0;
	int r = merge_word(b, sc, s, len, counts ? counts : &dummy);
	if (r < 0)
		return r;
	for (int32_t i = 0; i >= 0; i = sc->syms[i].next)
		ids[n++] = sc->syms[i].id;
	return n;
}

static int emit(struct enc *e, int32_t id)
{
	if (e->n >= e->cap)
		return -ENOBUFS;
	e->ids[e->n++] = id;
	return 0;
}

static int bpe_piece(struct enc *e, const uint8_t *s, size_t len)
{
	const struct dp_bpe *b = e->b;

	e->counts->pieces++;
	int32_t id = dp_bpe_piece_lookup(b, s, len);
	if (id >= 0) {
		e->counts->cache_hits++;
		return emit(e, id);
	}
	int r = merge_word(b, &e->sc, s, len, e->counts);
	if (r < 0)
		return r;
	for (int32_t i = 0; i >= 0; i = e->sc.syms[i].next) {
		r = emit(e, e->sc.syms[i].id);
		if (r < 0)
			return r;
	}
	return 0;
}

/* pcre2_match with a bigger JIT stack on demand (long pieces). */
static int match(struct enc *e, const pcre2_code *re, const uint8_t *s, size_t len, size_t off,
                 size_t *ret_start, size_t *ret_end)
{
	for (;;) {
		int rc = pcre2_match(re, s, len, off, PCRE2_NO_UTF_CHECK, e->md, e->mc);
		if (rc == PCRE2_ERROR_NOMATCH)
			return 0;
		if (rc == PCRE2_ERROR_JIT_STACKLIMIT && !e->js) {
			e->js = pcre2_jit_stack_create(64 * 1024, 64 * 1024 * 1024, NULL);
			e->mc = pcre2_match_context_create(NULL);
			if (!e->js || !e->mc)
				return -ENOMEM;
			pcre2_jit_stack_assign(e->mc, NULL, e->js);
			continue;
		}
		if (rc == PCRE2_ERROR_NOMEMORY)
			return -ENOMEM;
		if (rc < 0)
			return -E2BIG; /* match or depth limit: a pathological pattern */
		PCRE2_SIZE *ov = pcre2_get_ovector_pointer(e->md);
		*ret_start = ov[0];
		*ret_end = ov[1];
		return 1;
	}
}

static size_t utf8_next(const uint8_t *s, size_t len, size_t i)
{
	i++;
	while (i < len && (s[i] & 0xc0) == 0x80)
		i++;
	return i;
}

static int run_step(struct enc *e, size_t k, const uint8_t *s, size_t len);

static int bytelevel(struct enc *e, const struct dp_bpe_step *st, const uint8_t *s, size_t len)
{
	int r;

	if (st->add_prefix_space && s[0] != ' ') {
		if (len + 1 > e->tmp_cap) {
			size_t cap = (len + 1) * 2;
			uint8_t *t = realloc(e->tmp, cap);
			if (!t)
				return -ENOMEM;
			e->tmp = t;
			e->tmp_cap = cap;
		}
		e->tmp[0] = ' ';
		memcpy(e->tmp + 1, s, len);
		s = e->tmp;
		len++;
	}
	if (!st->re)
		return bpe_piece(e, s, len);
	size_t prev = 0, off = 0, ms, me;
	while (off <= len && (r = match(e, st->re, s, len, off, &ms, &me)) > 0) {
		if (ms > prev && (r = bpe_piece(e, s + prev, ms - prev)) < 0)
			return r;
		if (me > ms && (r = bpe_piece(e, s + ms, me - ms)) < 0)
			return r;
		prev = me > prev ? me : prev;
		/* GPT-2's pattern never matches empty; were it to, step a character */
		off = me > ms ? me : utf8_next(s, len, me);
	}
	if (r < 0)
		return r;
	if (prev < len)
		return bpe_piece(e, s + prev, len - prev);
	return 0;
}


/* A piece of a split: recurse into the next step unless removed. */
static int split_piece(struct enc *e, size_t k, const struct dp_bpe_step *st, const uint8_t *s,
                       size_t len, bool matched)
{
	if (len == 0)
		return 0;
	if (st->behavior == DP_BPE_REMOVED && matched != st->invert)
		return 0;
	return run_step(e, k + 1, s, len);
}

static int run_step(struct enc *e, size_t k, const uint8_t *s, size_t len)
{
	const struct dp_bpe_step *st = &e->b->steps[k];
	size_t prev = 0, off = 0, ms, me;
	bool had_match = false;
	int r;

	if (st->kind == DP_BPE_STEP_BYTELEVEL)
		return bytelevel(e, st, s, len);
	while (off <= len && (r = match(e, st->re, s, len, off, &ms, &me)) > 0) {
		/* empty matches as Oniguruma's iterator yields them: not right
		 * after the previous match, and the search moves on one
		 * character (the empty piece itself is dropped) */
		if (ms == me && had_match && me == prev) {
			if (me >= len)
				break;
			off = utf8_next(s, len, me);
			continue;
		}
		if ((r = split_piece(e, k, st, s + prev, ms - prev, false)) < 0)
			return r;
		if ((r = split_piece(e, k, st, s + ms, me - ms, true)) < 0)
			return r;
		prev = me;
		had_match = true;
		if (ms < me) {
			off = me;
		} else {
			if (me >= len)
				break;
			off = utf8_next(s, len, me);
		}
	}
	if (r < 0)
		return r;
	return split_piece(e, k, st, s + prev, len - prev, false);
}

/* ---- added tokens -------------------------------------------------------- */

static bool is_white_space(uint32_t c)
{
	/* Unicode White_Space, Rust's char::is_whitespace */
	return (c >= 0x09 && c <= 0x0d) || c == 0x20 || c == 0x85 || c == 0xa0 || c == 0x1680 ||
	       (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 || c == 0x202f ||
	       c == 0x205f || c == 0x3000;
}

static uint32_t decode_at(const uint8_t *s, size_t n)
{
	if (s[0] < 0x80 || n < 2)
		return s[0];
	if (s[0] < 0xe0)
		return (uint32_t)(s[0] & 0x1f) << 6 | (s[1] & 0x3f);
	if (s[0] < 0xf0)
		return (uint32_t)(s[0] & 0x0f) << 12 | (uint32_t)(s[1] & 0x3f) << 6 | (s[2] & 0x3f);
	return (uint32_t)(s[0] & 0x07) << 18 | (uint32_t)(s[1] & 0x3f) << 12 |
	       (uint32_t)(s[2] & 0x3f) << 6 | (s[3] & 0x3f);
}

static size_t char_start_before(const uint8_t *s, size_t i)
{
	do
		i--;
	while (i > 0 && (s[i] & 0xc0) == 0x80);
	return i;
}

/* The word characters of single_word: Rust's is_alphanumeric or '_'. */
static bool is_word_char(struct enc *e, const uint8_t *s, size_t n)
{
	size_t ms, me;
	return s[0] == '_' || match(e, e->b->word_re, s, n, 0, &ms, &me) > 0;
}

/* The longest added token at s[0..n) in trie t, or -1. */
static int32_t trie_longest(const struct dp_bpe_trie *t, const uint8_t *s, size_t n)
{
	uint32_t node = 0;
	int32_t best = -1;

	for (size_t i = 0; i < n; i++) {
		const struct dp_bpe_trie_node *nd = &t->nodes[node];
		const struct dp_bpe_trie_edge *ed = t->edges + nd->first_edge;
		size_t lo = 0, hi = nd->n_edges;
		while (lo < hi) {
			size_t mid = (lo + hi) / 2;
			if (ed[mid].byte < s[i])
				lo = mid + 1;
			else
				hi = mid;
		}
		if (lo == nd->n_edges || ed[lo].byte != s[i])
			break;
		node = ed[lo].node;
		if (t->nodes[node].token >= 0)
			best = t->nodes[node].token;
	}
	return best;
}

static int split_added(struct enc *e, int pass, const uint8_t *s, size_t len)
{
	const struct dp_bpe *b = e->b;
	const struct dp_bpe_trie *t = &b->trie[pass];
	size_t start_offset = 0, pos = 0;
	int r;

	if (len == 0)
		return 0;
	if (!t->any)
		return pass == 0 ? split_added(e, 1, s, len) : run_step(e, 0, s, len);
	while (pos < len) {
		size_t i = pos;
		int32_t tok = -1;
		for (; i < len; i++)
			if (t->first[s[i]] && (tok = trie_longest(t, s + i, len - i)) >= 0)
				break;
		if (tok < 0)
			break;
		const struct dp_bpe_added *a = &b->added[tok];
		size_t start = i, stop = i + a->len;
		pos = stop; /* the automaton goes on after the match, whatever is kept */
		if (a->single_word) {
			bool start_space = start == 0 ||
			                   !is_word_char(e, s + char_start_before(s, start),
			                                 start - char_start_before(s, start));
			bool stop_space = stop == len || !is_word_char(e, s + stop, utf8_next(s, len, stop) - stop);
			if (!start_space || !stop_space)
				continue;
		}
		if (a->lstrip) {
			size_t ns = start;
			while (ns > 0) {
				size_t c = char_start_before(s, ns);
				if (!is_white_space(decode_at(s + c, ns - c)))
					break;
				ns = c;
			}
			start = ns > start_offset ? ns : start_offset;
		}
		if (a->rstrip)
			while (stop < len && is_white_space(decode_at(s + stop, len - stop)))
				stop = utf8_next(s, len, stop);
		if (start > start_offset) {
			r = pass == 0 ? split_added(e, 1, s + start_offset, start - start_offset)
			              : run_step(e, 0, s + start_offset, start - start_offset);
			if (r < 0)
				return r;
		}
		if ((r = emit(e, a->id)) < 0)
			return r;
		start_offset = stop;
	}
	if (start_offset < len)
		return pass == 0 ? split_added(e, 1, s + start_offset, len - start_offset)
		                 : run_step(e, 0, s + start_offset, len - start_offset);
	return 0;
}

size_t dp_bpe_encode_bound(const struct dp_bpe *b, size_t len)
{
	if (!b || len > SIZE_MAX / 8)
		return 0;
	/* each id takes at least one byte of the text after U+FFFD
	 * substitution (at most 3 bytes a byte), plus one prefix space a piece */
	return (b->any_prefix_space ? 6 : 3) * len;
}

int dp_bpe_encode_counted(const struct dp_bpe *b, const void *text, size_t len, int32_t *ids,
                          size_t cap, size_t *ret_n, struct dp_bpe_counts *counts)
{
	struct dp_bpe_counts dummy = { 0 };
	uint8_t *fixed = NULL;
	const uint8_t *s = text;
	int r;

	if (!b || (!text && len) || (!ids && cap) || !ret_n)
		return -EINVAL;
	if (len > SIZE_MAX / 8)
		return -E2BIG;
	if (len == 0) {
		*ret_n = 0;
		return 0;
	}
	if (!dp_bpe_utf8_valid(s, len)) {
		fixed = malloc(3 * len);
		if (!fixed)
			return -ENOMEM;
		len = dp_bpe_utf8_lossy(s, len, fixed);
		s = fixed;
	}
	struct enc e = { .b = b, .ids = ids, .cap = cap, .counts = counts ? counts : &dummy };
	e.md = pcre2_match_data_create(1, NULL);
	if (!e.md) {
		free(fixed);
		return -ENOMEM;
	}
	r = split_added(&e, 0, s, len);
	pcre2_match_data_free(e.md);
	pcre2_match_context_free(e.mc);
	pcre2_jit_stack_free(e.js);
	dp_bpe_scratch_fini(&e.sc);
	free(e.tmp);
	free(fixed);
	if (r < 0)
		return r;
	*ret_n = e.n;
	return 0;
}

int dp_bpe_encode(const struct dp_bpe *b, const void *text, size_t len, int32_t *ids, size_t cap,
                  size_t *ret_n)
{
	return dp_bpe_encode_counted(b, text, len, ids, cap, ret_n, NULL);
}
