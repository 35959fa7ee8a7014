/* SPDX-License-Identifier: MIT */
/*
 * tok/tok-internal.h — the inside of struct dp_bpe, shared by load.c,
 * encode.c, decode.c and utf8.c, and by tests/tok (merge counts).
 */
#ifndef DP_TOK_TOK_INTERNAL_H
#define DP_TOK_TOK_INTERNAL_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <stddef.h>
#include <stdint.h>

#include "tok/tok.h"

#define DP_BPE_UTF8_REPLACEMENT "\xef\xbf\xbd"

enum dp_bpe_step_kind {
	DP_BPE_STEP_SPLIT,     /* a regex split (Split, Digits) */
	DP_BPE_STEP_BYTELEVEL, /* the last step: ByteLevel, then the model */
	DP_BPE_STEP_KIND_MAX,
};

enum dp_bpe_behavior {
	DP_BPE_ISOLATED, /* matches and the text between are pieces */
	DP_BPE_REMOVED,  /* only the text between matches is kept */
	DP_BPE_BEHAVIOR_MAX,
};

struct dp_bpe_step {
	enum dp_bpe_step_kind kind;
	enum dp_bpe_behavior behavior;
	bool invert;           /* Split: the matches are the text between */
	bool add_prefix_space; /* ByteLevel */
	pcre2_code *re;        /* Split; ByteLevel with use_regex (else NULL) */
};

/* A byte trie of added tokens (one per matching pass). */
struct dp_bpe_trie_node {
	uint32_t first_edge; /* into edges[], sorted by byte */
	uint16_t n_edges;
	int32_t token; /* index into added[], or -1 */
};
struct dp_bpe_trie_edge {
	uint8_t byte;
	uint32_t node;
};
struct dp_bpe_trie {
	struct dp_bpe_trie_node *nodes;
	struct dp_bpe_trie_edge *edges;
	size_t n_nodes;
	bool first[256]; /* bytes that can start a token */
	bool any;
};

struct dp_bpe_added {
	int32_t id;
	uint32_t len;
	const uint8_t *bytes; /* into the blob */
	bool special, lstrip, rstrip, single_word, normalized;
};

/* Open-addressing tables (power-of-two sizes, linear probing). */
struct dp_bpe_merge_slot {
	uint64_t pair; /* (left id << 32 | right id) + 1; 0 = empty */
	uint32_t rank;
	int32_t id; /* what the pair merges into */
};

struct dp_bpe {
	int32_t n_ids;
	/* per id: the bytes decoding emits, in blob; len < 0 = no such id */
	uint32_t *dec_off;
	int32_t *dec_len;
	uint8_t *is_special; /* per id */
	/* per id, when the token is an ordinary vocab token whose characters
	 * all map to bytes: its byte form (else -1); encode's byte strings */
	int32_t *byte_len;
	uint8_t *blob;
	size_t blob_len, blob_cap;
	size_t piece_max; /* longest decode piece */

	int32_t byte_id[256]; /* the token of each single byte */
	struct dp_bpe_merge_slot *merges;
	uint64_t merge_mask;
	/* the piece cache: byte string -> id for every vocab token whose byte
	 * form BPE-merges into itself (found once at load), so the common
	 * piece is one hash probe; 0 = empty, else id + 1 */
	int32_t *pieces;
	uint64_t piece_mask;
	bool ignore_merges;

	/* content -> id for dp_bpe_token_id and the merges: vocab strings, as
	 * in the file; str_ids holds id + 1 (0 = empty) */
	char **vocab_str; /* per id, NULL if none */
	int32_t *str_ids;
	uint64_t str_mask;

	struct dp_bpe_added *added;
	size_t n_added;
	struct dp_bpe_trie trie[2]; /* [0] normalized=false, [1] normalized=true */
	pcre2_code *word_re;        /* single_word's word characters, if needed */

	struct dp_bpe_step *steps;
	size_t n_steps;
	bool any_prefix_space;
};

/* encode.c: counts of one encode call, for tests that bound the work. */
struct dp_bpe_counts {
	uint64_t pieces;      /* pre-tokenized pieces */
	uint64_t cache_hits;  /* pieces answered by the piece cache */
	uint64_t heap_pushes; /* merge candidates pushed */
	uint64_t heap_pops;
	uint64_t merges; /* merges applied */
};
int dp_bpe_encode_counted(const struct dp_bpe *b, const void *text, size_t len, int32_t *ids,
                          size_t cap, size_t *ret_n, struct dp_bpe_counts *counts);

/* BPE's work space: the symbol list and the heap, grown as needed. */
struct dp_bpe_sym {
	int32_t id; /* -1: merged into its left neighbour */
	int32_t prev, next;
};
struct dp_bpe_scratch {
	struct dp_bpe_sym *syms;
	uint64_t *heap; /* rank << 32 | position: the min is the next merge */
	size_t cap;     /* symbols; the heap has 3 * cap */
};
void dp_bpe_scratch_fini(struct dp_bpe_scratch *sc);

/* BPE of one byte string (no cache) into ids[] (room for len ids); returns
 * the count or -ENOMEM. encode.c; load.c builds the cache with it. */
int dp_bpe_merge_bytes(const struct dp_bpe *b, struct dp_bpe_scratch *sc, const uint8_t *s, size_t len,
                       int32_t *ids, struct dp_bpe_counts *counts);

uint64_t dp_bpe_hash(const uint8_t *s, size_t len);
/* The piece cache lookup: id or -1. */
int32_t dp_bpe_piece_lookup(const struct dp_bpe *b, const uint8_t *s, size_t len);

/* regex.c: pattern (Oniguruma syntax, as in tokenizer.json) into PCRE2
 * syntax with Oniguruma's Unicode classes, malloc'd in *ret (compile it
 * with PCRE2_UTF | PCRE2_UCP | PCRE2_MULTILINE); -EINVAL and a message in
 * err for what is not implemented. */
int dp_bpe_regex_translate(const char *pattern, size_t len, char **ret, char *err, size_t err_len);

/* utf8.c. The length of the well-formed character at s[0..n) (1..4), or
 * 0 if s[0..n) is a proper prefix of one (n too short to tell), or -k for an
 * ill-formed maximal subpart of k bytes (one U+FFFD). n >= 1. */
int dp_bpe_utf8_char(const uint8_t *s, size_t n);
/* True if s[0..n) is well-formed UTF-8. */
bool dp_bpe_utf8_valid(const uint8_t *s, size_t n);

#endif /* DP_TOK_TOK_INTERNAL_H */
