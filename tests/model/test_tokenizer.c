/* SPDX-License-Identifier: MIT */
/* Behaviour of model/tokenizer.h's interface and its byte-level tokenizer. */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "model/tokenizer.h"

#define FFFD DP_TOK_UTF8_REPLACEMENT

static struct dp_tok *bytes_tok(void)
{
	struct dp_tok *t = NULL;

	cr_assert_eq(dp_tok_new_bytes(3, &t), 0);
	cr_assert_not_null(t);
	return t;
}

/* Feed ids one at a time through a stream; return the concatenated output. */
static size_t stream_all(const struct dp_tok *t, unsigned flags, const int32_t *ids, size_t n,
                         char *out)
{
	struct dp_tok_stream s;
	char buf[64];
	size_t len = 0, k;

	cr_assert_leq(dp_tok_stream_bound(t), sizeof(buf));
	cr_assert_eq(dp_tok_stream_init(&s, flags), 0);
	for (size_t i = 0; i < n; i++) {
		cr_assert_eq(dp_tok_stream_next(t, &s, ids[i], buf, dp_tok_stream_bound(t), &k), 0);
		memcpy(out + len, buf, k);
		len += k;
	}
	cr_assert_eq(dp_tok_stream_flush(&s, buf, sizeof(buf), &k), 0);
	memcpy(out + len, buf, k);
	return len + k;
}

static size_t stream_bytes(const struct dp_tok *t, const char *in, size_t n, char *out)
{
	int32_t ids[256];
	size_t m;

	cr_assert_leq(n, 256);
	cr_assert_eq(dp_tok_encode(t, in, n, 0, ids, 256, &m), 0);
	return stream_all(t, DP_TOK_STREAM_UTF8, ids, m, out);
}

/* ---- construction and queries ------------------------------------------- */

Test(tokenizer, bytes_vocab_is_256_plus_specials_with_bos_eos_pad_in_order)
{
	struct dp_tok *t = bytes_tok();

	cr_expect_eq(dp_tok_kind(t), DP_TOK_BYTES);
	cr_expect_eq(dp_tok_vocab_size(t), 259);
	cr_expect_eq(dp_tok_special(t, DP_TOK_BOS), 256);
	cr_expect_eq(dp_tok_special(t, DP_TOK_EOS), 257);
	cr_expect_eq(dp_tok_special(t, DP_TOK_PAD), 258);
	cr_expect_eq(DP_TOK_BYTES_BOS, 256);
	cr_expect_eq(DP_TOK_BYTES_EOS, 257);
	cr_expect_eq(DP_TOK_BYTES_PAD, 258);
	cr_expect_eq(dp_tok_special(t, DP_TOK_SPECIAL_MAX), -EINVAL);
	cr_expect_eq(dp_tok_piece_max(t), 1);
	dp_tok_free(t);
}

Test(tokenizer, is_special_is_true_only_for_ids_after_the_bytes)
{
	struct dp_tok *t = bytes_tok();

	for (int32_t id = 0; id < 256; id++)
		cr_expect_not(dp_tok_is_special(t, id), "byte %d", id);
	cr_expect(dp_tok_is_special(t, 256));
	cr_expect(dp_tok_is_special(t, 257));
	cr_expect(dp_tok_is_special(t, 258));
	cr_expect_not(dp_tok_is_special(t, 259), "outside the vocabulary");
	cr_expect_not(dp_tok_is_special(t, -1));
	cr_expect_not(dp_tok_is_special(NULL, 256));
	dp_tok_free(t);
}

Test(tokenizer, fewer_specials_leave_roles_unfilled_and_more_are_reserved)
{
	struct dp_tok *t = NULL;

	cr_assert_eq(dp_tok_new_bytes(0, &t), 0);
	cr_expect_eq(dp_tok_vocab_size(t), 256);
	cr_expect_eq(dp_tok_special(t, DP_TOK_BOS), -ENOENT);
	cr_expect_eq(dp_tok_special(t, DP_TOK_PAD), -ENOENT);
	int32_t ids[4];
	size_t n = 77;
	cr_expect_eq(dp_tok_encode(t, "a", 1, DP_TOK_ADD_BOS, ids, 4, &n), -ENOENT);
	cr_expect_eq(n, 77, "output untouched on failure");
	dp_tok_free(t);

	cr_assert_eq(dp_tok_new_bytes(1, &t), 0);
	cr_expect_eq(dp_tok_special(t, DP_TOK_BOS), 256);
	cr_expect_eq(dp_tok_special(t, DP_TOK_EOS), -ENOENT);
	dp_tok_free(t);

	cr_assert_eq(dp_tok_new_bytes(8, &t), 0);
	cr_expect_eq(dp_tok_vocab_size(t), 264);
	cr_expect(dp_tok_is_special(t, 263));
	cr_expect_eq(dp_tok_special(t, DP_TOK_PAD), 258);
	dp_tok_free(t);
}

Test(tokenizer, new_rejects_bad_arguments_and_leaves_output_untouched)
{
	struct dp_tok *t = (struct dp_tok *)0x1;

	cr_expect_eq(dp_tok_new_bytes(-1, &t), -EINVAL);
	cr_expect_eq(dp_tok_new_bytes(DP_TOK_BYTES_SPECIALS_MAX + 1, &t), -EINVAL);
	cr_expect_eq(t, (struct dp_tok *)0x1);
	cr_expect_eq(dp_tok_new_bytes(3, NULL), -EINVAL);
}

/* A failed new leaves NULL behind, and cleanup paths free it. */
Test(tokenizer, free_accepts_null_and_a_tokenizer_made_after_works)
{
	int32_t ids[4];
	size_t n = 0;

	dp_tok_free(NULL);
	struct dp_tok *t = bytes_tok();
	cr_assert_eq(dp_tok_encode(t, "hi", 2, 0, ids, 4, &n), 0);
	cr_expect_eq(n, 2);
	cr_expect(ids[0] == 'h' && ids[1] == 'i');
	dp_tok_free(t);
}

/* ---- encode / decode ------------------------------------------------------ */

Test(tokenizer, every_byte_value_round_trips_including_nul_and_0xff)
{
	struct dp_tok *t = bytes_tok();
	unsigned char text[512];
	int32_t ids[512];
	char back[512];
	size_t n, len;

	for (int i = 0; i < 512; i++)
		text[i] = (unsigned char)(i < 256 ? i : 255 - (i - 256));
	cr_assert_eq(dp_tok_encode(t, text, sizeof(text), 0, ids, 512, &n), 0);
	cr_expect_eq(n, 512);
	for (int i = 0; i < 512; i++)
		cr_expect_eq(ids[i], text[i], "id %d", i);
	cr_expect_eq(ids[0], 0);
	cr_expect_eq(ids[255], 255);
	cr_assert_eq(dp_tok_decode(t, ids, n, back, sizeof(back), &len), 0);
	cr_expect_eq(len, 512);
	cr_expect_arr_eq(back, text, 512);
	dp_tok_free(t);
}

Test(tokenizer, random_bytes_round_trip)
{
	struct dp_tok *t = bytes_tok();
	unsigned char text[4096];
	int32_t ids[4096];
	char back[4096];
	uint64_t x = 0x1234;
	size_t n, len;

	for (size_t i = 0; i < sizeof(text); i++) {
		x = x * 6364136223846793005ull + 1442695040888963407ull;
		text[i] = (unsigned char)(x >> 56);
	}
	cr_assert_eq(dp_tok_encode(t, text, sizeof(text), 0, ids, 4096, &n), 0);
	cr_assert_eq(dp_tok_decode(t, ids, n, back, sizeof(back), &len), 0);
	cr_expect_eq(len, sizeof(text));
	cr_expect_arr_eq(back, text, sizeof(text));
	dp_tok_free(t);
}

Test(tokenizer, encode_adds_bos_and_eos_only_on_request)
{
	struct dp_tok *t = bytes_tok();
	int32_t ids[8];
	size_t n;

	cr_assert_eq(dp_tok_encode(t, "hi", 2, DP_TOK_ADD_BOS | DP_TOK_ADD_EOS, ids, 8, &n), 0);
	cr_expect_eq(n, 4);
	cr_expect_eq(ids[0], 256);
	cr_expect_eq(ids[1], 'h');
	cr_expect_eq(ids[2], 'i');
	cr_expect_eq(ids[3], 257);
	cr_expect_eq(dp_tok_encode_bound(t, 2, DP_TOK_ADD_BOS | DP_TOK_ADD_EOS), 4);
	cr_expect_eq(dp_tok_encode_bound(t, 2, 0), 2);
	cr_assert_eq(dp_tok_encode(t, NULL, 0, DP_TOK_ADD_BOS, ids, 8, &n), 0);
	cr_expect_eq(n, 1, "empty text with BOS is just BOS");
	cr_assert_eq(dp_tok_encode(t, NULL, 0, 0, ids, 0, &n), 0);
	cr_expect_eq(n, 0);
	dp_tok_free(t);
}

Test(tokenizer, text_that_looks_like_a_special_token_stays_bytes)
{
	struct dp_tok *t = bytes_tok();
	const char *s = "<s></s><pad><|endoftext|>";
	int32_t ids[64];
	size_t n;

	cr_assert_eq(dp_tok_encode(t, s, strlen(s), 0, ids, 64, &n), 0);
	cr_expect_eq(n, strlen(s));
	for (size_t i = 0; i < n; i++)
		cr_expect_not(dp_tok_is_special(t, ids[i]));
	dp_tok_free(t);
}

Test(tokenizer, encode_into_a_short_buffer_is_enobufs_and_writes_nothing)
{
	struct dp_tok *t = bytes_tok();
	int32_t ids[4] = {-7, -7, -7, -7};
	size_t n = 99;

	cr_expect_eq(dp_tok_encode(t, "abcd", 4, DP_TOK_ADD_BOS, ids, 4, &n), -ENOBUFS);
	cr_expect_eq(dp_tok_encode(t, "abcd", 4, 0, ids, 3, &n), -ENOBUFS);
	cr_expect_eq(n, 99);
	for (int i = 0; i < 4; i++)
		cr_expect_eq(ids[i], -7);
	cr_expect_eq(dp_tok_encode(t, "a", 1, DP_TOK_ENCODE_FLAGS_MAX, ids, 4, &n), -EINVAL);
	cr_expect_eq(dp_tok_encode(t, NULL, 1, 0, ids, 4, &n), -EINVAL);
	cr_expect_eq(dp_tok_encode(NULL, "a", 1, 0, ids, 4, &n), -EINVAL);
	dp_tok_free(t);
}

Test(tokenizer, specials_decode_to_nothing)
{
	struct dp_tok *t = bytes_tok();
	int32_t ids[] = {256, 'o', 258, 'k', 257};
	const char *piece;
	char buf[8];
	size_t len;

	cr_assert_eq(dp_tok_decode(t, ids, 5, buf, sizeof(buf), &len), 0);
	cr_expect_eq(len, 2);
	cr_expect_arr_eq(buf, "ok", 2);
	cr_assert_eq(dp_tok_piece(t, 257, &piece, &len), 0);
	cr_expect_eq(len, 0);
	cr_assert_eq(dp_tok_piece(t, 0xff, &piece, &len), 0);
	cr_expect_eq(len, 1);
	cr_expect_eq((unsigned char)piece[0], 0xff);
	dp_tok_free(t);
}

Test(tokenizer, invalid_ids_are_einval_and_nothing_is_written)
{
	struct dp_tok *t = bytes_tok();
	int32_t bad_hi[] = {'a', 259};
	int32_t bad_lo[] = {'a', -1};
	char buf[4] = "xyz";
	const char *piece = NULL;
	size_t len = 42;

	cr_expect_eq(dp_tok_decode(t, bad_hi, 2, buf, sizeof(buf), &len), -EINVAL);
	cr_expect_eq(dp_tok_decode(t, bad_lo, 2, buf, sizeof(buf), &len), -EINVAL);
	cr_expect_eq(dp_tok_piece(t, 259, &piece, &len), -EINVAL);
	cr_expect_eq(dp_tok_piece(t, INT32_MIN, &piece, &len), -EINVAL);
	cr_expect_eq(len, 42);
	cr_expect_null(piece);
	cr_expect_str_eq(buf, "xyz");
	dp_tok_free(t);
}

Test(tokenizer, decode_into_a_short_buffer_is_enobufs)
{
	struct dp_tok *t = bytes_tok();
	int32_t ids[] = {'a', 256, 'b', 'c'};
	char buf[4] = "xyz";
	size_t len = 42;

	cr_expect_eq(dp_tok_decode_bound(t, 4), 4);
	cr_expect_eq(dp_tok_decode(t, ids, 4, buf, 2, &len), -ENOBUFS);
	cr_expect_eq(len, 42);
	cr_expect_str_eq(buf, "xyz");
	cr_expect_eq(dp_tok_decode(t, ids, 4, buf, 3, &len), 0, "the special needs no room");
	cr_expect_eq(len, 3);
	dp_tok_free(t);
}

/* ---- streaming decode ------------------------------------------------------ */

Test(tokenizer, raw_stream_emits_each_byte_as_it_comes)
{
	struct dp_tok *t = bytes_tok();
	struct dp_tok_stream s;
	char buf[16];
	size_t len;

	cr_assert_eq(dp_tok_stream_init(&s, 0), 0);
	cr_assert_eq(dp_tok_stream_next(t, &s, 0xe2, buf, sizeof(buf), &len), 0);
	cr_expect_eq(len, 1, "no UTF-8 hold-back without the flag");
	cr_expect_eq((unsigned char)buf[0], 0xe2);
	cr_assert_eq(dp_tok_stream_next(t, &s, 0, buf, sizeof(buf), &len), 0);
	cr_expect_eq(len, 1);
	cr_expect_eq(buf[0], '\0');
	cr_assert_eq(dp_tok_stream_next(t, &s, 257, buf, sizeof(buf), &len), 0);
	cr_expect_eq(len, 0, "specials emit nothing");
	cr_assert_eq(dp_tok_stream_flush(&s, buf, sizeof(buf), &len), 0);
	cr_expect_eq(len, 0);
	dp_tok_free(t);
}

Test(tokenizer, stream_of_random_ids_matches_whole_decode)
{
	struct dp_tok *t = bytes_tok();
	int32_t ids[2000];
	char a[2000], b[2000];
	uint64_t x = 99;
	size_t la, lb;

	for (size_t i = 0; i < 2000; i++) {
		x = x * 6364136223846793005ull + 1442695040888963407ull;
		ids[i] = (int32_t)((x >> 33) % 259);
	}
	cr_assert_eq(dp_tok_decode(t, ids, 2000, a, sizeof(a), &la), 0);
	lb = stream_all(t, 0, ids, 2000, b);
	cr_expect_eq(la, lb);
	cr_expect_arr_eq(a, b, la);
	dp_tok_free(t);
}

Test(tokenizer, utf8_stream_holds_back_a_split_character_until_it_completes)
{
	struct dp_tok *t = bytes_tok();
	struct dp_tok_stream s;
	const unsigned char euro[] = {0xe2, 0x82, 0xac};
	char buf[16];
	size_t len;

	cr_assert_eq(dp_tok_stream_init(&s, DP_TOK_STREAM_UTF8), 0);
	cr_assert_eq(dp_tok_stream_next(t, &s, euro[0], buf, sizeof(buf), &len), 0);
	cr_expect_eq(len, 0);
	cr_assert_eq(dp_tok_stream_next(t, &s, 256, buf, sizeof(buf), &len), 0);
	cr_expect_eq(len, 0, "a special inside a character neither emits nor breaks it");
	cr_assert_eq(dp_tok_stream_next(t, &s, euro[1], buf, sizeof(buf), &len), 0);
	cr_expect_eq(len, 0);
	cr_assert_eq(dp_tok_stream_next(t, &s, euro[2], buf, sizeof(buf), &len), 0);
	cr_expect_eq(len, 3);
	cr_expect_arr_eq(buf, euro, 3);
	dp_tok_free(t);
}

Test(tokenizer, utf8_stream_passes_valid_text_through_unchanged)
{
	struct dp_tok *t = bytes_tok();
	const char *s =
	    "plain ASCII, caf\xc3\xa9, \xe2\x82\xac, \xf0\x9f\x98\x80, \xf4\x8f\xbf\xbf, "
	    "\xed\x9f\xbf \xee\x80\x80";
	char out[128];
	size_t n = stream_bytes(t, s, strlen(s), out);

	cr_expect_eq(n, strlen(s));
	cr_expect_arr_eq(out, s, n);
	dp_tok_free(t);
}

Test(tokenizer, utf8_stream_replaces_maximal_ill_formed_subparts_with_fffd)
{
	struct dp_tok *t = bytes_tok();
	char out[128];
	size_t n;

	/* The Unicode Standard's example (ch. 3, "U+FFFD Substitution of
	 * Maximal Subparts"): 61 F1 80 80 E1 80 C2 62 80 63 80 BF 64. */
	const char in[] = "\x61\xf1\x80\x80\xe1\x80\xc2\x62\x80\x63\x80\xbf\x64";
	const char want[] = "a" FFFD FFFD FFFD "b" FFFD "c" FFFD FFFD "d";
	n = stream_bytes(t, in, sizeof(in) - 1, out);
	cr_expect_eq(n, sizeof(want) - 1);
	cr_expect_arr_eq(out, want, sizeof(want) - 1);

	/* surrogates, overlongs and bytes that never start a character */
	const char in2[] = "\xed\xa0\x80|\xc0\xaf|\xe0\x80\xaf|\xf5|\xff|\xf4\x90";
	const char want2[] =
	    FFFD FFFD FFFD "|" FFFD FFFD "|" FFFD FFFD FFFD "|" FFFD "|" FFFD "|" FFFD FFFD;
	n = stream_bytes(t, in2, sizeof(in2) - 1, out);
	cr_expect_eq(n, sizeof(want2) - 1);
	cr_expect_arr_eq(out, want2, sizeof(want2) - 1);
	dp_tok_free(t);
}

Test(tokenizer, utf8_stream_flush_turns_a_truncated_character_into_fffd_and_resets)
{
	struct dp_tok *t = bytes_tok();
	struct dp_tok_stream s;
	char buf[16];
	size_t len;

	cr_assert_eq(dp_tok_stream_init(&s, DP_TOK_STREAM_UTF8), 0);
	cr_assert_eq(dp_tok_stream_next(t, &s, 0xf0, buf, sizeof(buf), &len), 0);
	cr_assert_eq(dp_tok_stream_next(t, &s, 0x9f, buf, sizeof(buf), &len), 0);
	cr_expect_eq(len, 0);
	cr_assert_eq(dp_tok_stream_flush(&s, buf, sizeof(buf), &len), 0);
	cr_expect_eq(len, 3);
	cr_expect_arr_eq(buf, FFFD, 3);
	cr_assert_eq(dp_tok_stream_next(t, &s, 'x', buf, sizeof(buf), &len), 0);
	cr_expect_eq(len, 1, "the stream is reusable after a flush");
	cr_expect_eq(buf[0], 'x');
	dp_tok_free(t);
}

Test(tokenizer, stream_errors_leave_the_stream_and_outputs_unchanged)
{
	struct dp_tok *t = bytes_tok();
	struct dp_tok_stream s;
	char buf[16] = "untouched";
	size_t len = 42;

	cr_assert_eq(dp_tok_stream_init(&s, DP_TOK_STREAM_UTF8), 0);
	cr_assert_eq(dp_tok_stream_next(t, &s, 0xe2, buf, sizeof(buf), &len), 0);
	len = 42;
	cr_expect_eq(dp_tok_stream_next(t, &s, 259, buf, sizeof(buf), &len), -EINVAL);
	cr_expect_eq(dp_tok_stream_next(t, &s, -5, buf, sizeof(buf), &len), -EINVAL);
	/* 'A' ends the pending character: U+FFFD + 'A' = 4 bytes */
	cr_expect_eq(dp_tok_stream_next(t, &s, 'A', buf, 3, &len), -ENOBUFS);
	cr_expect_eq(len, 42);
	cr_expect_str_eq(buf, "untouched");
	cr_assert_eq(dp_tok_stream_next(t, &s, 'A', buf, 4, &len), 0);
	cr_expect_eq(len, 4);
	cr_expect_arr_eq(buf, FFFD "A", 4);
	cr_expect_eq(dp_tok_stream_init(&s, DP_TOK_STREAM_FLAGS_MAX), -EINVAL);
	dp_tok_free(t);
}
