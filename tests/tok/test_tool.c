/* SPDX-License-Identifier: MIT */
/*
 * tests/tok/test_tool.c — dp-tokenize on a model directory that holds only
 * tokenizer.json, tokenizer_config.json and config.json: stdin's text to
 * the ids tokenizers gives (the first documents of each kind of the
 * corpus), and --decode back; what it refuses.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <jansson.h>

#include "tests/tok/tok-test.h"

static char dir[] = "/tmp/dp-tokenize-XXXXXX";

static void make_model_dir(void)
{
	char path[4096], src[4096];
	cr_assert(mkdtemp(dir));
	snprintf(src, sizeof(src), "%s/tokenizer.json", getenv("DP_TOK_DATA"));
	snprintf(path, sizeof(path), "%s/tokenizer.json", dir);
	cr_assert_eq(symlink(src, path), 0);
	snprintf(path, sizeof(path), "%s/config.json", dir);
	FILE *f = fopen(path, "w");
	fputs("{\"model_type\": \"deepseek_v4\", \"vocab_size\": 129280}\n", f);
	fclose(f);
	snprintf(path, sizeof(path), "%s/tokenizer_config.json", dir);
	f = fopen(path, "w");
	fputs("{\"tokenizer_class\": \"PreTrainedTokenizerFast\"}\n", f);
	fclose(f);
}

static void remove_model_dir(void)
{
	char cmd[4200];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	(void)!system(cmd);
}

/* Run the tool with args and input; its stdout (malloc'd) and status. */
static char *run(const char *args, const void *in, size_t in_len, size_t *out_len, int *status)
{
	char inpath[4200], outpath[4200], cmd[12000];
	snprintf(inpath, sizeof(inpath), "%s/in", dir);
	snprintf(outpath, sizeof(outpath), "%s/out", dir);
	FILE *f = fopen(inpath, "wb");
	cr_assert(f);
	fwrite(in, 1, in_len, f);
	fclose(f);
	snprintf(cmd, sizeof(cmd), "'%s' %s < '%s' > '%s' 2>/dev/null", getenv("DP_TOKENIZE_TOOL"), args,
	         inpath, outpath);
	int st = system(cmd);
	*status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
	struct tt_file o = tt_read_path(outpath);
	*out_len = o.len;
	o.data[o.len] = 0;
	return (char *)o.data;
}

Test(tok, dp_tokenize_prints_tokenizers_ids_and_decodes_them_back, .init = make_model_dir,
     .fini = remove_model_dir, .timeout = 300)
{
	struct tt_file f = tt_read("parity-v4.bin");
	uint32_t n_docs = tt_header(&f, "DPTOKPAR");
	char args[4200];
	uint32_t seen = 0;

	for (uint32_t i = 0; i < n_docs; i++) {
		struct tt_doc d;
		tt_next_doc(&f, &d);
		if ((seen & (1u << d.kind)) || d.len > 20000) { /* the first of each kind */
			free(d.ids);
			continue;
		}
		seen |= 1u << d.kind;
		/* what it should print */
		size_t cap = 12 * d.n_ids + 2, pos = 0;
		char *want = malloc(cap);
		for (size_t k = 0; k < d.n_ids; k++)
			pos += (size_t)snprintf(want + pos, cap - pos, k ? ",%d" : "%d", d.ids[k]);
		want[pos++] = '\n';
		want[pos] = 0;
		size_t len;
		int st;
		snprintf(args, sizeof(args), "--model '%s'", dir);
		char *out = run(args, d.text, d.len, &len, &st);
		cr_assert_eq(st, 0, "doc %u: exit %d", i, st);
		cr_assert_str_eq(out, want, "doc %u (%s): ids differ", i, tt_kinds[d.kind % 11]);
		/* and back: the text, ill-formed UTF-8 as U+FFFD */
		snprintf(args, sizeof(args), "--model '%s' --decode", dir);
		char *text = run(args, out, len, &len, &st);
		uint8_t *fixed = malloc(3 * d.len + 1);
		size_t fixed_len = dp_bpe_utf8_lossy(d.text, d.len, fixed);
		cr_assert_eq(st, 0);
		cr_assert(len == fixed_len && memcmp(text, fixed, len) == 0, "doc %u: decode differs", i);
		free(fixed);
		free(text);
		free(out);
		free(want);
		free(d.ids);
	}
	cr_assert_eq(seen, (1u << 11) - 1, "a kind of document is missing");
	free(f.data);
}

Test(tok, dp_tokenize_refuses_bad_ids_missing_models_and_bad_chat_requests, .init = make_model_dir,
     .fini = remove_model_dir)
{
	char args[4200];
	size_t len;
	int st;

	snprintf(args, sizeof(args), "--model '%s' --decode", dir);
	free(run(args, "1, 2, 999999", 12, &len, &st));
	cr_assert_eq(st, 1);
	free(run(args, "12x", 3, &len, &st));
	cr_assert_eq(st, 1);
	free(run(args, "128803,6366", 11, &len, &st));
	cr_assert_eq(st, 0);
	free(run("--model /nonexistent", "a", 1, &len, &st));
	cr_assert_eq(st, 1);
	snprintf(args, sizeof(args), "--model '%s' --chat", dir);
	free(run(args, "{}", 2, &len, &st));
	cr_assert_eq(st, 1, "a request without messages");
	free(run(args, "{\"messages\": [{\"role\": \"robot\"}]}", 33, &len, &st));
	cr_assert_eq(st, 1, "an unknown role");
	snprintf(args, sizeof(args), "--model '%s' --text", dir);
	free(run(args, "{}", 2, &len, &st));
	cr_assert_eq(st, 2, "--text without --chat");
	free(run("", "a", 1, &len, &st));
	cr_assert_eq(st, 2);
}

/* --chat prints the ids of the prompt encoding_dsv4 renders (as tokenizers
 * tokenizes it), --text the prompt itself: the committed parity cases. */
Test(tok, dp_tokenize_chat_prints_the_rendered_prompts_ids_and_text, .init = make_model_dir,
     .fini = remove_model_dir, .timeout = 300)
{
	char path[4096], args[4200];
	json_error_t e;
	snprintf(path, sizeof(path), "%s/render.json", getenv("DP_TEST_CHAT_DATA"));
	json_t *cases = json_load_file(path, JSON_ALLOW_NUL, &e);
	cr_assert(cases, "%s: %s", path, e.text);
	for (size_t i = 0; i < json_array_size(cases); i += 12) { /* a spread of 11 */
		json_t *c = json_array_get(cases, i);
		char *req = json_dumps(json_object_get(c, "request"), JSON_COMPACT);
		json_t *ids = json_object_get(c, "ids"), *prompt = json_object_get(c, "prompt");
		size_t cap = 12 * json_array_size(ids) + 2, pos = 0, len;
		char *want = malloc(cap);
		int st;
		for (size_t k = 0; k < json_array_size(ids); k++)
			pos += (size_t)snprintf(want + pos, cap - pos, k ? ",%lld" : "%lld",
			                        (long long)json_integer_value(json_array_get(ids, k)));
		snprintf(want + pos, cap - pos, "\n");
		snprintf(args, sizeof(args), "--model '%s' --chat", dir);
		char *out = run(args, req, strlen(req), &len, &st);
		cr_assert_eq(st, 0, "case %zu", i);
		cr_assert_str_eq(out, want, "case %zu: ids differ", i);
		free(out);
		snprintf(args, sizeof(args), "--model '%s' --chat --text", dir);
		out = run(args, req, strlen(req), &len, &st);
		cr_assert_eq(st, 0);
		cr_assert(len == json_string_length(prompt) &&
		              !memcmp(out, json_string_value(prompt), len),
		          "case %zu: text differs", i);
		free(out);
		free(want);
		free(req);
	}
	json_decref(cases);
}
