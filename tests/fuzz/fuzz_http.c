/* SPDX-License-Identifier: MIT */
/*
 * tests/fuzz/fuzz_http.c — libFuzzer target for the HTTP front's request
 * parser (daemon/http-req.c, http-anthropic.c): the first byte picks the
 * endpoint (chat, completions, tokenize, detokenize, messages), the rest is
 * the body a client sends.
 *
 * Checked, aborting on any difference:
 *   - the result is 0 or -EINVAL; a refusal has a 4xx/5xx status, a type
 *     and a message, and its error envelope is valid JSON with the four
 *     fields;
 *   - an accepted request keeps its fields in their ranges (sampling,
 *     max_tokens, stop strings and ids, token ids in the vocabulary);
 *   - parsing again gives the same verdict (no hidden state).
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/http-parse.h"

#define CHECK(cond)                                                                                \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);   \
			abort();                                                                   \
		}                                                                                  \
	} while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const struct dp_http_limits lim = {
		.max_body = 8192, .max_depth = 32, .max_tools = 8, .max_new_tokens = 1000, .vocab = 259,
	};
	if (size < 1)
		return 0;
	enum dp_http_api api = (enum dp_http_api)(data[0] % DP_HTTP_API_MAX);
	const char *body = (const char *)data + 1;
	size_t len = size - 1;
	struct dp_http_request r;
	struct dp_http_error e;
	int ret = dp_http_request_parse(api, body, len, &lim, &r, &e);
	CHECK(ret == 0 || ret == -EINVAL);
	if (ret < 0) {
		CHECK(e.status >= 400 && e.status < 600 && e.type && e.message[0]);
		char *s = dp_http_error_json(&e);
		CHECK(s);
		json_t *o = json_loads(s, 0, NULL);
		CHECK(o && json_object_size(json_object_get(o, "error")) == 4);
		json_decref(o);
		free(s);
	} else {
		CHECK(r.api == api && r.root);
		if (api == DP_HTTP_CHAT || api == DP_HTTP_COMPLETIONS || api == DP_HTTP_MESSAGES) {
			CHECK(r.sampling.temperature >= 0 && r.sampling.temperature <= 2);
			CHECK(r.sampling.top_p > 0 && r.sampling.top_p <= 1 && r.sampling.top_k >= 0);
		}
		CHECK(r.max_tokens <= lim.max_new_tokens);
		CHECK(r.n_stop <= DP_HTTP_STOP_STRINGS_MAX && r.n_stop_ids <= DP_HTTP_STOP_IDS_MAX);
		for (uint32_t i = 0; i < r.n_stop; i++)
			CHECK(strlen(r.stop[i]) >= 1 && strlen(r.stop[i]) <= DP_HTTP_STOP_STRING_BYTES);
		for (size_t i = 0; i < r.n_ids; i++)
			CHECK(r.ids[i] >= 0 && r.ids[i] < lim.vocab);
		if (api == DP_HTTP_CHAT || api == DP_HTTP_MESSAGES)
			CHECK(json_array_size(r.messages) > 0);
		if (api == DP_HTTP_COMPLETIONS)
			CHECK(r.ids ? r.n_ids > 0 : r.prompt_len > 0);
	}
	struct dp_http_request r2;
	struct dp_http_error e2;
	CHECK(dp_http_request_parse(api, body, len, &lim, &r2, &e2) == ret);
	if (ret < 0)
		CHECK(e2.status == e.status && !strcmp(e2.param, e.param));
	dp_http_request_fini(&r);
	dp_http_request_fini(&r2);
	return 0;
}
