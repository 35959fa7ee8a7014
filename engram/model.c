/* SPDX-License-Identifier: MIT */
/*
 * engram/model.c — the hashing config of a V4 model (model/v4.h): config.json's engram_*
 * keys plus the model's compression map, pad id and seed.
 */
#include <errno.h>

#include "base/err.h"
#include "engram/engram-internal.h"
#include "engram/engram.h"
#include "model/v4.h"

static int hash_from(const struct dp_v4_config *c, const int64_t *map, int64_t map_size,
                     int64_t compressed, int64_t pad_id, uint64_t seed,
                     struct dp_engram_hash **ret_hash, char *err, size_t err_len)
{
	/* the hash copies what it needs: the config may borrow the model's arrays */
	struct dp_engram_config ec = {
	    .n_layers = c->engram.n_layers,
	    .layer_ids = c->engram.layer_ids,
	    .max_ngram_size = c->engram.max_ngram_size,
	    .n_heads = c->engram.n_heads,
	    .vocab_size = c->engram.vocab_size,
	    .compressed_vocab_size = compressed,
	    .map_size = map_size,
	    .compression_map = (int64_t *)map,
	    .pad_id = pad_id,
	    .seed = seed,
	};
	int r = dp_engram_config_check(&ec, err, err_len);

	if (r < 0)
		return r;
	return dp_engram_hash_new(&ec, ret_hash);
}

int dp_engram_hash_from_model(const struct dp_v4_model *m, struct dp_engram_hash **ret_hash,
                              char *err, size_t err_len)
{
	struct dp_v4_engram_info in;

	if (!m || !ret_hash)
		return -EINVAL;
	int r = dp_v4_model_engram_info(m, &in);
	if (r == -ENOENT)
		dp_errf(err, err_len, "the model has no Engram layers (engram_layer_ids)");
	if (r < 0)
		return r;
	return hash_from(dp_v4_model_config(m), in.compression_map, in.map_size,
	                 in.compressed_vocab_size, in.pad_id, in.seed, ret_hash, err, err_len);
}

int dp_engram_hash_from_v4_config(const struct dp_v4_config *c, struct dp_engram_hash **ret_hash,
                                  char *err, size_t err_len)
{
	static const int64_t one_id[1] = {0};

	if (!c || !ret_hash)
		return -EINVAL;
	if (c->engram.n_layers == 0) {
		dp_errf(err, err_len, "the config has no Engram layers (engram_layer_ids)");
		return -ENOENT;
	}
	/* primes and offsets do not depend on the map: a one-entry stand-in will do */
	return hash_from(c, one_id, 1, 1, 0, 0, ret_hash, err, err_len);
}
