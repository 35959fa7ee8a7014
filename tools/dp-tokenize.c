/* SPDX-License-Identifier: MIT */
/*
 * dp-tokenize --model DIR [--decode [--skip-special] [--lossy]]
 *
 * Without --decode: reads text (bytes; ill-formed UTF-8 becomes U+FFFD as
 * tok/tok.h says) on stdin and prints its ids, comma-separated, on one
 * line. With --decode: reads ids (separated by commas and/or white space)
 * and writes the bytes they decode to. DIR needs only tokenizer.json (a
 * model directory's tokenizer_config.json and config.json may sit beside
 * it; no weights are read).
 *
 * --chat reads an OpenAI-style chat request (JSON: messages, tools, thinking
 * controls, reasoning_effort) and prints the ids of the prompt it renders
 * to (model/conv.h: V4's encoding_dsv4 when config.json's model_type is
 * deepseek_v4, plain turns otherwise); --text prints the rendered text
 * instead. --continue renders the messages as a session's later turn.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "model/conv.h"
#include "model/tokenizer.h"
#include "tok/tok.h"

static void usage(FILE *f)
{
	fprintf(f, "usage: dp-tokenize --model DIR [--decode [--skip-special] [--lossy]]\n"
	           "       dp-tokenize --model DIR --chat [--text] [--continue]\n"
	           "  reads text on stdin and prints ids, comma-separated, on one line;\n"
	           "  --decode reads ids and prints the text they stand for;\n"
	           "  --chat reads a chat request (JSON) and prints its prompt's ids\n"
	           "  (--text: the prompt's text; --continue: as a session's later turn)\n");
}

static char *read_all(FILE *f, size_t *ret_len)
{
	size_t cap = 1 << 16, len = 0;
	char *buf = malloc(cap);

	while (buf) {
		size_t k = fread(buf + len, 1, cap - len, f);
		len += k;
		if (k == 0)
			break;
		if (len == cap) {
			char *p = realloc(buf, cap * 2);
			if (!p) {
				free(buf);
				return NULL;
			}
			buf = p;
			cap *= 2;
		}
	}
	if (buf && ferror(f)) {
		free(buf);
		return NULL;
	}
	*ret_len = len;
	return buf;
}

static int encode(const struct dp_bpe *b, const char *text, size_t len)
{
	size_t cap = dp_bpe_encode_bound(b, len), n;
	int32_t *ids = malloc((cap ? cap : 1) * sizeof(*ids));
	if (!ids) {
		fprintf(stderr, "dp-tokenize: out of memory\n");
		return 1;
	}
	int r = dp_bpe_encode(b, text, len, ids, cap, &n);
	if (r < 0) {
		fprintf(stderr, "dp-tokenize: encoding failed: %s\n", strerror(-r));
		free(ids);
		return 1;
	}
	for (size_t i = 0; i < n; i++)
		printf(i ? ",%d" : "%d", ids[i]);
	printf("\n");
	free(ids);
	return 0;
}

static int decode(const struct dp_bpe *b, char *text, unsigned flags)
{
	size_t n = 0, cap = 1024;
	int32_t *ids = malloc(cap * sizeof(*ids));
	char *p = text;

	while (ids) {
		p += strspn(p, ", \t\r\n");
		if (!*p)
			break;
		char *end;
		errno = 0;
		long v = strtol(p, &end, 10);
		if (end == p || errno || v < 0 || v >= dp_bpe_n_ids(b) || !strchr(", \t\r\n", *end)) {
			fprintf(stderr, "dp-tokenize: id %zu (\"%.20s\") is not an id below %d\n", n + 1, p,
			        dp_bpe_n_ids(b));
			free(ids);
			return 1;
		}
		if (n == cap) {
			int32_t *q = realloc(ids, 2 * cap * sizeof(*ids));
			if (!q)
				break;
			ids = q;
			cap *= 2;
		}
		ids[n++] = (int32_t)v;
		p = end;
	}
	size_t blen = dp_bpe_decode_bound(b, n, flags), len;
	char *buf = ids ? malloc(blen ? blen : 1) : NULL;
	if (!buf) {
		fprintf(stderr, "dp-tokenize: out of memory\n");
		free(ids);
		return 1;
	}
	int r = dp_bpe_decode(b, ids, n, flags, buf, blen, &len);
	if (r < 0)
		fprintf(stderr, "dp-tokenize: decoding failed: %s%s\n", strerror(-r),
		        r == -EINVAL ? " (an id the tokenizer does not define)" : "");
	else
		fwrite(buf, 1, len, stdout);
	free(buf);
	free(ids);
	return r < 0;
}

/* config.json's vocab_size, or 0 (then the tokenizer's own count). */
static int32_t model_vocab(const char *dir)
{
	char path[4200];
	snprintf(path, sizeof(path), "%s/config.json", dir);
	json_t *cfg = json_load_file(path, 0, NULL);
	json_t *v = json_object_get(cfg, "vocab_size");
	int32_t n = json_is_integer(v) && json_integer_value(v) > 0 &&
	                    json_integer_value(v) <= INT32_MAX
	                ? (int32_t)json_integer_value(v)
	                : 0;
	json_decref(cfg);
	return n;
}

static int chat(const char *dir, const char *json, size_t len, unsigned flags)
{
	char err[512] = "";
	struct dp_tok *tok = NULL;
	struct dp_conv *cv = NULL;
	struct dp_conv_prompt p = {0};
	struct dp_chat_error ce;
	int r;

	if ((r = dp_tok_new_bpe(dir, model_vocab(dir), &tok, err, sizeof(err))) < 0) {
		fprintf(stderr, "dp-tokenize: %s\n", err[0] ? err : strerror(-r));
		return 1;
	}
	if ((r = dp_conv_new(dir, tok, &cv, err, sizeof(err))) < 0) {
		fprintf(stderr, "dp-tokenize: %s\n", err[0] ? err : strerror(-r));
		dp_tok_free(tok);
		return 1;
	}
	r = dp_conv_render_text(cv, json, len, flags, &p, &ce);
	if (r < 0) {
		fprintf(stderr, "dp-tokenize: chat request: %s%s%s\n", ce.param,
		        ce.param[0] ? ": " : "", ce.message[0] ? ce.message : strerror(-r));
	} else if (flags & DP_CONV_WANT_TEXT) {
		fwrite(p.text, 1, p.len, stdout);
	} else {
		for (size_t i = 0; i < p.n_ids; i++)
			printf(i ? ",%d" : "%d", p.ids[i]);
		printf("\n");
	}
	dp_conv_prompt_fini(&p);
	dp_conv_free(cv);
	dp_tok_free(tok);
	return r < 0;
}

int main(int argc, char **argv)
{
	bool chat_mode = false;
	unsigned chat_flags = 0;
	const char *dir = NULL;
	bool dec = false;
	unsigned flags = 0;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--model") && i + 1 < argc) {
			dir = argv[++i];
		} else if (!strcmp(argv[i], "--decode")) {
			dec = true;
		} else if (!strcmp(argv[i], "--skip-special")) {
			flags |= DP_BPE_SKIP_SPECIAL;
		} else if (!strcmp(argv[i], "--lossy")) {
			flags |= DP_BPE_LOSSY;
		} else if (!strcmp(argv[i], "--chat")) {
			chat_mode = true;
		} else if (!strcmp(argv[i], "--text")) {
			chat_flags |= DP_CONV_WANT_TEXT;
		} else if (!strcmp(argv[i], "--continue")) {
			chat_flags |= DP_CONV_CONTINUE;
		} else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
			usage(stdout);
			return 0;
		} else {
			usage(stderr);
			return 2;
		}
	}
	if (!dir || (flags && !dec) || (chat_flags && !chat_mode) || (chat_mode && dec)) {
		usage(stderr);
		return 2;
	}
	if (chat_mode) {
		size_t n;
		char *json = read_all(stdin, &n);
		if (!json) {
			fprintf(stderr, "dp-tokenize: reading stdin failed\n");
			return 1;
		}
		int rc = chat(dir, json, n, chat_flags);
		free(json);
		return rc;
	}
	char path[4096], err[512] = "";
	if (snprintf(path, sizeof(path), "%s/tokenizer.json", dir) >= (int)sizeof(path)) {
		fprintf(stderr, "dp-tokenize: --model path too long\n");
		return 2;
	}
	struct dp_bpe *b;
	int r = dp_bpe_load(path, &b, err, sizeof(err));
	if (r < 0) {
		fprintf(stderr, "dp-tokenize: %s\n", err[0] ? err : strerror(-r));
		return 1;
	}
	size_t len;
	char *text = read_all(stdin, &len);
	if (!text) {
		fprintf(stderr, "dp-tokenize: reading stdin failed\n");
		dp_bpe_free(b);
		return 1;
	}
	if (dec) {
		/* ids are text: terminate it */
		char *t = realloc(text, len + 1);
		if (!t) {
			free(text);
			dp_bpe_free(b);
			return 1;
		}
		text = t;
		text[len] = 0;
		if (memchr(text, 0, len)) {
			fprintf(stderr, "dp-tokenize: --decode input holds a NUL byte\n");
			r = 1;
		} else {
			r = decode(b, text, flags);
		}
	} else {
		r = encode(b, text, len);
	}
	free(text);
	dp_bpe_free(b);
	return r;
}
