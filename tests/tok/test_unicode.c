/* SPDX-License-Identifier: MIT */
/*
 * tests/tok/test_unicode.c — PCRE2 (tok/'s regex engine), given each class as
 * tok/regex.c rewrites it and with the options tok/load.c compiles with, puts exactly the code points in each character
 * class of the byte-level pre-tokenizers that Oniguruma and Rust put there
 * in `tokenizers`: tests/tok/data/unicode-classes.txt, enumerated over every
 * Unicode scalar value by gen_unicode.py. A Debian PCRE2 with other Unicode
 * tables than the `tokenizers` wheel fails here, by class and code point.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tok/tok-internal.h"
#include "tok/unicode-fix.h"

#define N_CP 0x110000

static size_t put_utf8(uint8_t *o, uint32_t c)
{
	if (c < 0x80) {
		o[0] = (uint8_t)c;
		return 1;
	}
	if (c < 0x800) {
		o[0] = (uint8_t)(0xc0 | c >> 6);
		o[1] = (uint8_t)(0x80 | (c & 0x3f));
		return 2;
	}
	if (c < 0x10000) {
		o[0] = (uint8_t)(0xe0 | c >> 12);
		o[1] = (uint8_t)(0x80 | (c >> 6 & 0x3f));
		o[2] = (uint8_t)(0x80 | (c & 0x3f));
		return 3;
	}
	o[0] = (uint8_t)(0xf0 | c >> 18);
	o[1] = (uint8_t)(0x80 | (c >> 12 & 0x3f));
	o[2] = (uint8_t)(0x80 | (c >> 6 & 0x3f));
	o[3] = (uint8_t)(0x80 | (c & 0x3f));
	return 4;
}

Test(tok, pcre2_classes_equal_oniguruma_and_rust_on_every_code_point, .timeout = 300)
{
	const char *path = getenv("DP_TOK_CLASSES");
	cr_assert(path, "DP_TOK_CLASSES is not set (meson test sets it)");
	FILE *f = fopen(path, "r");
	cr_assert(f, "cannot open %s", path);

	/* every scalar value, in order, and where each starts */
	uint8_t *text = malloc(4 * N_CP);
	uint32_t *at = calloc(4 * N_CP + 1, sizeof(*at)); /* byte offset -> code point + 1 */
	size_t len = 0;
	for (uint32_t c = 0; c < N_CP; c++) {
		if (c >= 0xd800 && c <= 0xdfff)
			continue;
		at[len] = c + 1;
		len += put_utf8(text + len, c);
	}
	uint8_t *want = malloc(N_CP), *got = malloc(N_CP);
	char *line = NULL;
	size_t cap = 0;
	int n_classes = 0;
	pcre2_match_data *md = pcre2_match_data_create(1, NULL);

	while (getline(&line, &cap, f) > 0) {
		if (line[0] == '#')
			continue;
		char *name = strtok(line, "\t"), *pat = strtok(NULL, "\t"), *ranges = strtok(NULL, "\t\n");
		cr_assert(name && pat && ranges, "malformed line in %s", path);
		memset(want, 0, N_CP);
		memset(got, 0, N_CP);
		for (char *r = strtok(ranges, ","); r; r = strtok(NULL, ",")) {
			unsigned lo, hi;
			cr_assert_eq(sscanf(r, "%x-%x", &lo, &hi), 2);
			for (unsigned c = lo; c <= hi && c < N_CP; c++)
				want[c] = 1;
		}
		int code;
		PCRE2_SIZE off;
		char *tr = NULL, err[200] = "";
		if (strcmp(name, "digits") == 0) /* the Digits pre-tokenizer's class */
			tr = strdup(DP_BPE_DIGITS_CLASS);
		else
			cr_assert_eq(dp_bpe_regex_translate(pat, strlen(pat), &tr, err, sizeof(err)), 0,
			             "class %s: %s", name, err);
		pcre2_code *re = pcre2_compile((PCRE2_SPTR)tr, PCRE2_ZERO_TERMINATED,
		                               PCRE2_UTF | PCRE2_UCP | PCRE2_MULTILINE, &code, &off, NULL);
		free(tr);
		cr_assert(re, "class %s: pattern does not compile", name);
		pcre2_jit_compile(re, PCRE2_JIT_COMPLETE);
		size_t pos = 0;
		while (pcre2_match(re, text, len, pos, PCRE2_NO_UTF_CHECK, md, NULL) > 0) {
			PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
			cr_assert(at[ov[0]] && ov[1] > ov[0], "class %s: a match is not one character", name);
			got[at[ov[0]] - 1] = 1;
			pos = ov[1];
		}
		pcre2_code_free(re);
		int bad = 0;
		for (uint32_t c = 0; c < N_CP; c++)
			if (want[c] != got[c] && bad++ < 8)
				cr_log_error("class %s (%s): U+%04X is %s in PCRE2, %s in tokenizers", name, pat, c,
				             got[c] ? "in" : "out", want[c] ? "in" : "out");
		cr_expect_eq(bad, 0, "class %s: %d code points differ", name, bad);
		n_classes++;
	}
	cr_assert_geq(n_classes, 14, "only %d classes in %s", n_classes, path);
	pcre2_match_data_free(md);
	free(line);
	free(want);
	free(got);
	free(at);
	free(text);
	fclose(f);
}
