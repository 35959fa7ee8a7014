/* SPDX-License-Identifier: MIT */
/*
 * tests/tok/test_tok.c — tok/ against HF `tokenizers`: ids identical on
 * every document of the committed corpora (V4's tokenizer.json and two
 * trained variants), decode and streaming decode, the work BPE does on
 * long pieces, and the loader's refusals.
 */
#include <errno.h>
#include <jansson.h>
#include <pthread.h>

#include "tests/tok/tok-test.h"
#include "tok/tok-internal.h"

static void check_parity(const char *tokenizer, const char *parity)
{
	struct dp_bpe *b = tt_load(tokenizer);
	struct tt_file f = tt_read(parity);
	uint32_t n_docs = tt_header(&f, "DPTOKPAR");
	size_t n_ids = 0, bytes = 0, bad = 0;

	for (uint32_t i = 0; i < n_docs; i++) {
		struct tt_doc d;
		tt_next_doc(&f, &d);
		size_t cap = dp_bpe_encode_bound(b, d.len) + 1, n = 0;
		int32_t *ids = malloc(cap * sizeof(*ids));
		int r = dp_bpe_encode(b, d.text, d.len, ids, cap, &n);
		cr_assert_eq(r, 0, "%s doc %u: encode failed: %d", parity, i, r);
		size_t k = 0;
		while (k < n && k < d.n_ids && ids[k] == d.ids[k])
			k++;
		if (k != n || n != d.n_ids) {
			if (bad++ < 5)
				cr_log_error("%s doc %u (%s, %zu bytes): first difference at id %zu: ours %d, "
				             "tokenizers %d (%zu vs %zu ids)",
				             parity, i, tt_kinds[d.kind % 11], d.len, k, k < n ? ids[k] : -1,
				             k < d.n_ids ? d.ids[k] : -1, n, d.n_ids);
		}
		n_ids += d.n_ids;
		bytes += d.len;
		free(ids);
		free(d.ids);
	}
	cr_expect_eq(f.pos, f.len, "trailing bytes in %s", parity);
	cr_assert_eq(bad, 0, "%s: %zu of %u documents differ from tokenizers", parity, bad, n_docs);
	cr_log_info("%s: %u documents, %zu bytes, %zu ids: identical", parity, n_docs, bytes, n_ids);
	free(f.data);
	dp_bpe_free(b);
}

Test(tok, v4_ids_equal_tokenizers_on_every_corpus_document, .timeout = 300)
{
	check_parity("tokenizer.json", "parity-v4.bin");
}

Test(tok, trained_variant_with_digits_removed_split_prefix_space_and_token_flags_equals_tokenizers,
     .timeout = 120)
{
	check_parity("tokenizer-var1.json", "parity-var1.bin");
}

Test(tok, trained_variant_with_inverted_split_string_pattern_and_no_regex_equals_tokenizers,
     .timeout = 120)
{
	check_parity("tokenizer-var2.json", "parity-var2.bin");
}

/* One struct dp_bpe, four threads encoding at once: the tokenizer is
 * immutable after load (the piece cache is built then), so every thread
 * gets tokenizers' ids. */
struct par_arg {
	const struct dp_bpe *b;
	struct tt_doc *docs;
	uint32_t n_docs, first, step;
	size_t bad;
};

static void *par_encode(void *p)
{
	struct par_arg *a = p;
	for (int round = 0; round < 2; round++)
		for (uint32_t i = a->first; i < a->n_docs; i += a->step) {
			struct tt_doc *d = &a->docs[i];
			size_t cap = dp_bpe_encode_bound(a->b, d->len) + 1, n = 0;
			int32_t *ids = malloc(cap * sizeof(*ids));
			if (dp_bpe_encode(a->b, d->text, d->len, ids, cap, &n) != 0 || n != d->n_ids ||
			    memcmp(ids, d->ids, n * sizeof(*ids)) != 0)
				a->bad++;
			free(ids);
		}
	return NULL;
}

Test(tok, threads_sharing_one_tokenizer_each_get_tokenizers_ids, .timeout = 300)
{
	struct dp_bpe *b = tt_load("tokenizer.json");
	struct tt_file f = tt_read("parity-v4.bin");
	uint32_t n_docs = tt_header(&f, "DPTOKPAR");
	struct tt_doc *docs = calloc(n_docs, sizeof(*docs));
	for (uint32_t i = 0; i < n_docs; i++)
		tt_next_doc(&f, &docs[i]);
	pthread_t t[4];
	struct par_arg a[4];
	for (uint32_t k = 0; k < 4; k++) {
		/* each thread a different slice, so they run different code paths
		 * at the same moment */
		a[k] = (struct par_arg){ .b = b, .docs = docs, .n_docs = n_docs, .first = k, .step = 4 };
		cr_assert_eq(pthread_create(&t[k], NULL, par_encode, &a[k]), 0);
	}
	for (uint32_t k = 0; k < 4; k++) {
		pthread_join(t[k], NULL);
		cr_expect_eq(a[k].bad, 0, "thread %u: %zu documents differ", k, a[k].bad);
	}
	for (uint32_t i = 0; i < n_docs; i++)
		free(docs[i].ids);
	free(docs);
	free(f.data);
	dp_bpe_free(b);
}

/* decode(encode(x)) == x for well-formed x; ill-formed x comes back with
 * U+FFFD for each maximal ill-formed subpart (what was encoded). And a
 * stream fed the ids one by one emits, in all, what decode gives. */
Test(tok, decode_of_encode_is_the_text_and_the_stream_emits_the_same_bytes, .timeout = 300)
{
	struct dp_bpe *b = tt_load("tokenizer.json");
	struct tt_file f = tt_read("parity-v4.bin");
	uint32_t n_docs = tt_header(&f, "DPTOKPAR");
	size_t sb = dp_bpe_stream_bound(b);
	char *chunk = malloc(sb);

	for (uint32_t i = 0; i < n_docs; i++) {
		struct tt_doc d;
		tt_next_doc(&f, &d);
		uint8_t *want = malloc(3 * d.len + 1);
		size_t want_len = dp_bpe_utf8_lossy(d.text, d.len, want);
		for (unsigned flags = 0; flags < DP_BPE_FLAGS_MAX; flags++) {
			size_t cap = dp_bpe_decode_bound(b, d.n_ids, flags) + 1, len = 0;
			char *out = malloc(cap);
			cr_assert_eq(dp_bpe_decode(b, d.ids, d.n_ids, flags, out, cap, &len), 0);
			if (!(flags & DP_BPE_SKIP_SPECIAL)) {
				cr_assert_eq(len, want_len, "doc %u (%s) flags %u: decode is %zu bytes, text %zu",
				             i, tt_kinds[d.kind % 11], flags, len, want_len);
				cr_assert(memcmp(out, want, len) == 0, "doc %u: decode differs from the text", i);
			}
			struct dp_bpe_stream s;
			cr_assert_eq(dp_bpe_stream_init(&s, flags), 0);
			size_t at = 0, k;
			for (size_t j = 0; j < d.n_ids; j++) {
				cr_assert_eq(dp_bpe_stream_next(b, &s, d.ids[j], chunk, sb, &k), 0);
				cr_assert(at + k <= len && memcmp(out + at, chunk, k) == 0,
				          "doc %u flags %u: stream differs at id %zu", i, flags, j);
				if (flags & DP_BPE_LOSSY)
					cr_assert(dp_bpe_utf8_valid((uint8_t *)chunk, k),
					          "doc %u: a lossy stream chunk is not UTF-8", i);
				at += k;
			}
			cr_assert_eq(dp_bpe_stream_finish(&s, chunk, sb, &k), 0);
			cr_assert(at + k == len && memcmp(out + at, chunk, k) == 0, "doc %u: stream end differs", i);
			free(out);
		}
		free(want);
		free(d.ids);
	}
	free(chunk);
	free(f.data);
	dp_bpe_free(b);
}

Test(tok, lossy_decode_equals_tokenizers_decode_of_random_ids_with_and_without_specials)
{
	struct dp_bpe *b = tt_load("tokenizer.json");
	struct tt_file f = tt_read("decode-v4.bin");
	uint32_t n = tt_header(&f, "DPTOKDEC");

	for (uint32_t i = 0; i < n; i++) {
		uint32_t skip = tt_u32(&f), n_ids = tt_u32(&f);
		int32_t ids[64];
		cr_assert(n_ids <= 64);
		memcpy(ids, tt_bytes(&f, 4 * n_ids), 4 * n_ids);
		uint32_t want_len = tt_u32(&f);
		const uint8_t *want = tt_bytes(&f, want_len);
		unsigned flags = DP_BPE_LOSSY | (skip ? DP_BPE_SKIP_SPECIAL : 0);
		size_t cap = dp_bpe_decode_bound(b, n_ids, flags), len;
		char *out = malloc(cap + 1);
		cr_assert_eq(dp_bpe_decode(b, ids, n_ids, flags, out, cap, &len), 0);
		cr_assert(len == want_len && memcmp(out, want, len) == 0,
		          "case %u (skip %u, %u ids from %d): decode differs from tokenizers", i, skip, n_ids, ids[0]);
		free(out);
	}
	free(f.data);
	dp_bpe_free(b);
}

/* A megabyte of one letter is one piece; of spaces too; of digits, pieces
 * of three. The heap algorithm's work is linear in the bytes (pushes <= 3n,
 * merges < n): counted, not timed, so the test fails if BPE ever turns
 * quadratic and never because the machine is busy. */
Test(tok, one_megabyte_runs_take_work_linear_in_their_length, .timeout = 120)
{
	struct dp_bpe *b = tt_load("tokenizer.json");
	const size_t n = 1 << 20;
	const char fill[] = { 'a', ' ', '7', '\n', 'x' };
	char *text = malloc(n);
	size_t cap = dp_bpe_encode_bound(b, n), got;
	int32_t *ids = malloc(cap * sizeof(*ids));

	for (size_t i = 0; i < sizeof(fill); i++) {
		struct dp_bpe_counts c = { 0 };
		memset(text, fill[i], n);
		if (fill[i] == 'x') /* "xy" repeated: two symbols alternate */
			for (size_t j = 1; j < n; j += 2)
				text[j] = 'y';
		cr_assert_eq(dp_bpe_encode_counted(b, text, n, ids, cap, &got, &c), 0);
		cr_assert(got > 0 && got < n);
		cr_assert_leq(c.heap_pushes, 3 * (uint64_t)n, "fill %d: %llu pushes", fill[i],
		              (unsigned long long)c.heap_pushes);
		cr_assert_leq(c.heap_pops, c.heap_pushes);
		cr_assert_lt(c.merges, (uint64_t)n);
		/* every merge turns two symbols into one: with no piece from the
		 * cache, the bytes are the ids plus the merges */
		if (c.cache_hits == 0)
			cr_assert_eq(c.merges + got, (uint64_t)n);
		cr_log_info("fill 0x%02x: %zu ids, %llu pieces, %llu pushes, %llu merges", fill[i], got,
		            (unsigned long long)c.pieces, (unsigned long long)c.heap_pushes,
		            (unsigned long long)c.merges);
	}
	free(text);
	free(ids);
	dp_bpe_free(b);
}

/* ---- a small tokenizer.json built here, for the loader's checks ---------- */

static json_t *small_json(void)
{
	json_t *root = json_object(), *vocab = json_object(), *model = json_object();
	/* GPT-2's byte map, as load.c inverts it */
	int n = 0;
	for (int c = 0; c < 256; c++) {
		bool printable = (c >= '!' && c <= '~') || (c >= 0xa1 && c <= 0xac) || c >= 0xae;
		int cp = printable ? c : 256 + n++;
		char u[4] = { 0 };
		if (cp < 0x80) {
			u[0] = (char)cp;
		} else {
			u[0] = (char)(0xc0 | cp >> 6);
			u[1] = (char)(0x80 | (cp & 0x3f));
		}
		json_object_set_new(vocab, u, json_integer(c));
	}
	json_object_set_new(vocab, "ab", json_integer(256));
	json_object_set_new(vocab, "abc", json_integer(257));
	json_object_set_new(model, "type", json_string("BPE"));
	json_object_set_new(model, "vocab", vocab);
	json_t *merges = json_array();
	json_array_append_new(merges, json_string("a b"));
	json_array_append_new(merges, json_pack("[ss]", "ab", "c"));
	json_object_set_new(model, "merges", merges);
	json_object_set_new(root, "model", model);
	json_object_set_new(root, "normalizer", json_null());
	json_object_set_new(root, "pre_tokenizer",
	                    json_pack("{s:s, s:b, s:b}", "type", "ByteLevel", "add_prefix_space", 0, "use_regex", 1));
	json_object_set_new(root, "decoder", json_pack("{s:s}", "type", "ByteLevel"));
	json_object_set_new(root, "added_tokens",
	                    json_pack("[{s:i, s:s, s:b, s:b}]", "id", 258, "content", "<eos>", "special", 1,
	                              "normalized", 0));
	return root;
}

static int load_json(json_t *root, struct dp_bpe **b, char *err, size_t len)
{
	char *s = json_dumps(root, JSON_ENCODE_ANY);
	int r = dp_bpe_load_buf(s, strlen(s), b, err, len);
	free(s);
	json_decref(root);
	return r;
}

static void refused(json_t *root, const char *what)
{
	struct dp_bpe *b = NULL;
	char err[256] = "";
	cr_assert_eq(load_json(root, &b, err, sizeof(err)), -EINVAL, "not refused: %s", what);
	cr_assert_null(b);
	cr_assert(strstr(err, what), "the message \"%s\" does not name \"%s\"", err, what);
}

Test(tok, small_tokenizer_merges_by_rank_and_decodes_its_special_token)
{
	struct dp_bpe *b = NULL;
	char err[256] = "";
	cr_assert_eq(load_json(small_json(), &b, err, sizeof(err)), 0, "%s", err);
	int32_t ids[16];
	size_t n;
	cr_assert_eq(dp_bpe_encode(b, "abcab<eos>", 10, ids, 16, &n), 0);
	cr_assert_eq(n, 3);
	cr_assert_eq(ids[0], 257);
	cr_assert_eq(ids[1], 256);
	cr_assert_eq(ids[2], 258);
	cr_assert_eq(dp_bpe_n_ids(b), 259);
	cr_assert(dp_bpe_is_special(b, 258));
	cr_assert_eq(dp_bpe_token_id(b, "<eos>"), 258);
	cr_assert_eq(dp_bpe_token_id(b, "abc"), 257);
	cr_assert_eq(dp_bpe_token_id(b, "nope"), -ENOENT);
	char out[64];
	size_t len;
	cr_assert_eq(dp_bpe_decode(b, ids, 3, 0, out, sizeof(out), &len), 0);
	cr_assert(len == 10 && memcmp(out, "abcab<eos>", 10) == 0);
	cr_assert_eq(dp_bpe_decode(b, ids, 3, DP_BPE_SKIP_SPECIAL, out, sizeof(out), &len), 0);
	cr_assert(len == 5 && memcmp(out, "abcab", 5) == 0);
	/* short buffers and bad ids are refused, outputs untouched */
	cr_assert_eq(dp_bpe_encode(b, "abcab<eos>", 10, ids, 2, &n), -ENOBUFS);
	cr_assert_eq(dp_bpe_decode(b, ids, 3, 0, out, 4, &len), -ENOBUFS);
	int32_t badid[] = { 1, 259 };
	len = 12345;
	cr_assert_eq(dp_bpe_decode(b, badid, 2, 0, out, sizeof(out), &len), -EINVAL);
	cr_assert_eq(len, 12345);
	cr_assert_eq(dp_bpe_decode(b, ids, 1, DP_BPE_FLAGS_MAX, out, sizeof(out), &len), -EINVAL);
	struct dp_bpe_stream s;
	cr_assert_eq(dp_bpe_stream_init(&s, 0), 0);
	cr_assert_eq(dp_bpe_stream_next(b, &s, -1, out, sizeof(out), &len), -EINVAL);
	dp_bpe_free(b);
}

Test(tok, stream_holds_back_a_split_character_until_it_completes)
{
	struct dp_bpe *b = NULL;
	char err[256] = "", out[64];
	size_t len;
	cr_assert_eq(load_json(small_json(), &b, err, sizeof(err)), 0, "%s", err);
	/* "é" = c3 a9 as two byte tokens, then "€" = e2 82 ac, then e2 alone */
	int32_t ids[] = { 0xc3, 0xa9, 0xe2, 0x82, 0xac, 0xe2 };
	const size_t want[] = { 0, 2, 0, 0, 3, 0 };
	for (unsigned flags = 0; flags <= DP_BPE_LOSSY; flags += DP_BPE_LOSSY) {
		struct dp_bpe_stream s;
		dp_bpe_stream_init(&s, flags);
		for (size_t i = 0; i < 6; i++) {
			cr_assert_eq(dp_bpe_stream_next(b, &s, ids[i], out, sizeof(out), &len), 0);
			cr_assert_eq(len, want[i], "id %zu: %zu bytes", i, len);
		}
		/* an ASCII byte ends the pending e2 as ill-formed */
		cr_assert_eq(dp_bpe_stream_next(b, &s, 'x', out, sizeof(out), &len), 0);
		if (flags)
			cr_assert(len == 4 && memcmp(out, "\xef\xbf\xbdx", 4) == 0);
		else
			cr_assert(len == 2 && memcmp(out, "\xe2x", 2) == 0);
		cr_assert_eq(dp_bpe_stream_next(b, &s, 0xf0, out, sizeof(out), &len), 0);
		cr_assert_eq(len, 0);
		cr_assert_eq(dp_bpe_stream_finish(&s, out, sizeof(out), &len), 0);
		cr_assert_eq(len, flags ? 3u : 1u);
	}
	dp_bpe_free(b);
}

Test(tok, encode_turns_ill_formed_utf8_into_replacement_characters)
{
	struct dp_bpe *b = tt_load("tokenizer.json");
	int32_t a[32], c[32];
	size_t na, nc;
	/* c0 80 is two maximal subparts; e2 82 then 'x' is one */
	cr_assert_eq(dp_bpe_encode(b, "\xc0\x80z\xe2\x82x", 6, a, 32, &na), 0);
	const char *fixed = "\xef\xbf\xbd\xef\xbf\xbdz\xef\xbf\xbdx";
	cr_assert_eq(dp_bpe_encode(b, fixed, strlen(fixed), c, 32, &nc), 0);
	cr_assert(na == nc && memcmp(a, c, na * sizeof(*a)) == 0);
	dp_bpe_free(b);
}

Test(tok, loader_refuses_what_it_does_not_implement_and_names_it)
{
	json_t *j;

	refused(json_string("x"), "not JSON");
	refused(json_array(), "not a JSON object");
	j = small_json();
	json_object_set_new(j, "normalizer", json_pack("{s:s}", "type", "NFC"));
	refused(j, "normalizer: NFC");
	j = small_json();
	json_object_set_new(j, "pre_tokenizer", json_pack("{s:s}", "type", "Metaspace"));
	refused(j, "Metaspace is not implemented");
	j = small_json();
	json_object_set_new(j, "pre_tokenizer",
	                    json_pack("{s:s, s:[{s:s, s:{s:s}, s:s}, {s:s}]}", "type", "Sequence", "pretokenizers",
	                              "type", "Split", "pattern", "Regex", "a+", "behavior", "Contiguous",
	                              "type", "ByteLevel"));
	refused(j, "Split behavior Contiguous is not implemented");
	j = small_json();
	json_object_set_new(j, "pre_tokenizer",
	                    json_pack("{s:s, s:[{s:s}, {s:s, s:{s:s}, s:s}]}", "type", "Sequence", "pretokenizers",
	                              "type", "ByteLevel", "type", "Split", "pattern", "Regex", "a",
	                              "behavior", "Isolated"));
	refused(j, "steps after ByteLevel");
	j = small_json();
	json_object_set_new(j, "pre_tokenizer",
	                    json_pack("{s:s, s:[{s:s, s:{s:s}, s:s}, {s:s}]}", "type", "Sequence", "pretokenizers",
	                              "type", "Split", "pattern", "Regex", "(", "behavior", "Isolated",
	                              "type", "ByteLevel"));
	refused(j, "regex does not compile");
	j = small_json();
	json_object_set_new(j, "decoder", json_pack("{s:s}", "type", "WordPiece"));
	refused(j, "decoder: WordPiece");
	j = small_json();
	json_object_set_new(j, "post_processor", json_pack("{s:s}", "type", "BertProcessing"));
	refused(j, "post_processor: BertProcessing");
	j = small_json();
	json_object_set_new(json_object_get(j, "model"), "type", json_string("Unigram"));
	refused(j, "model: type Unigram");
	j = small_json();
	json_object_set_new(json_object_get(j, "model"), "byte_fallback", json_true());
	refused(j, "byte_fallback");
	j = small_json();
	json_array_append_new(json_object_get(json_object_get(j, "model"), "merges"), json_string("q zz"));
	refused(j, "\"zz\" is not in model.vocab");
	j = small_json();
	json_object_del(json_object_get(json_object_get(j, "model"), "vocab"), "A");
	json_object_del(j, "added_tokens");
	refused(j, "no token for the byte 0x41");
	j = small_json();
	json_object_set_new(json_array_get(json_object_get(j, "added_tokens"), 0), "id", json_integer(300));
	refused(j, "tokenizers gives \"<eos>\" id 258");
	j = small_json();
	json_object_set_new(j, "truncation", json_pack("{s:i}", "max_length", 5));
	refused(j, "truncation");
}

Test(tok, arguments_are_checked)
{
	struct dp_bpe *b = NULL;
	size_t n = 7;
	int32_t id;
	cr_assert_eq(dp_bpe_load_buf(NULL, 3, &b, NULL, 0), -EINVAL);
	cr_assert_eq(dp_bpe_load("/nonexistent/tokenizer.json", &b, NULL, 0), -ENOENT);
	cr_assert_eq(dp_bpe_encode(NULL, "a", 1, &id, 1, &n), -EINVAL);
	cr_assert_eq(n, 7);
	cr_assert_eq(dp_bpe_n_ids(NULL), -EINVAL);
	dp_bpe_free(NULL);
}
