/* SPDX-License-Identifier: MIT */
/* Finding model directories (the embedded default) and their tokenizer. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dp-config.h"
#include "base/macros.h"
#include "model/tokenizer.h"
#include "model/v4.h"

static bool has_config(const char *dir)
{
	char path[4096];
	snprintf(path, sizeof(path), "%s/config.json", dir);
	return access(path, R_OK) == 0;
}

int dp_v4_resolve_dir(const char *name, char *buf, size_t len)
{
	if (!buf || !len)
		return -EINVAL;
	if (name && strcmp(name, "builtin") != 0) {
		if ((size_t)snprintf(buf, len, "%s", name) >= len)
			return -ENAMETOOLONG;
		return 0;
	}
	/* the embedded model: where `meson install` put it, else the source tree */
	const char *env = getenv("DUALPATH_BUILTIN_MODEL");
	const char *candidates[] = { env, DP_EMBEDDED_MODEL_INSTALLED, DP_EMBEDDED_MODEL_SOURCE };
	for (size_t i = 0; i < DP_ARRAY_SIZE(candidates); i++) {
		if (candidates[i] && has_config(candidates[i])) {
			if ((size_t)snprintf(buf, len, "%s", candidates[i]) >= len)
				return -ENAMETOOLONG;
			return 0;
		}
	}
	return -ENOENT;
}

int dp_v4_tokenizer_new(const char *dir, const struct dp_v4_config *c, struct dp_tok **ret_tok,
			char *err, size_t err_len)
{
	char path[4096];

	if (!dir || !c || !ret_tok)
		return -EINVAL;
	snprintf(path, sizeof(path), "%s/tokenizer.json", dir);
	if (access(path, F_OK) == 0)
		return dp_tok_new_bpe(dir, c->vocab_size, ret_tok, err, err_len);
	if (c->vocab_size < 256 || c->vocab_size - 256 > DP_TOK_BYTES_SPECIALS_MAX) {
		if (err && err_len)
			snprintf(err, err_len, "%s: a byte-level model needs 256 <= vocab_size <= %d, "
				 "config.json has %d", dir, 256 + DP_TOK_BYTES_SPECIALS_MAX, c->vocab_size);
		return -EINVAL;
	}
	return dp_tok_new_bytes(c->vocab_size - 256, ret_tok);
}
