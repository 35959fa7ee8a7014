/* SPDX-License-Identifier: MIT */
/*
 * engram/hash.c — multipliers, prime table sizes and the row ids of engram.h.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "engram/engram-internal.h"
#include "engram/engram.h"

struct dp_engram_hash {
	int n_layers;
	int max_ngram; /* N */
	int n_heads;   /* K */
	int n_cols;    /* (N - 1) * K */
	int *layer_ids;
	int64_t *mult;    /* [n_layers][N] */
	int64_t *sizes;   /* [n_layers][n_cols] */
	int64_t *offsets; /* [n_layers][n_cols + 1] */
	int64_t map_size;
	int64_t *map;
	int64_t pad; /* compressed */
};

/* ---- multipliers ----------------------------------------------------------- */

/* default_rng(seed + 10007 * layer).integers(0, half_bound, N, int64) * 2 + 1 */
static void layer_multipliers(uint64_t seed, int layer_id, int64_t compressed_vocab, int n,
                              int64_t *out)
{
	struct dp_engram_pcg64 g;
	uint32_t entropy[4];
	size_t n_entropy;
	int64_t half_bound = INT64_MAX / compressed_vocab / 2;

	if (half_bound < 1)
		half_bound = 1;
	/* the Python int seed + PRIME_1 * layer_id: below 2^65, no wrap */
	n_entropy = dp_engram_np_entropy_words(
	    (dp_engram_u128)seed + (dp_engram_u128)DP_ENGRAM_LAYER_SEED_STEP * (unsigned)layer_id,
	    entropy);
	dp_engram_pcg64_seed(&g, entropy, n_entropy);
	dp_engram_np_integers_i64(&g, 0, half_bound, (size_t)n, out);
	for (int k = 0; k < n; k++)
		out[k] = out[k] * 2 + 1; /* r < half_bound <= INT64_MAX / 2: no overflow */
}

/* ---- table sizes ----------------------------------------------------------- */

/*
 * The primes taken so far, with each one's successor prime once known, so that skipping a run
 * of taken primes (every layer restarts its search at vocab_size - 1) costs a lookup per prime
 * instead of a primality search. Open addressing, key 0 = empty.
 */
struct prime_set {
	size_t mask;
	uint64_t *key;
	uint64_t *next; /* the smallest prime > key, 0 when not yet known */
};

static size_t prime_set_slot(const struct prime_set *s, uint64_t p)
{
	size_t i = (size_t)((p * 0x9e3779b97f4a7c15ull) >> 20) & s->mask;

	while (s->key[i] && s->key[i] != p)
		i = (i + 1) & s->mask;
	return i;
}

/* The smallest prime > start not in s; added to s. */
static uint64_t take_prime(struct prime_set *s, uint64_t start)
{
	uint64_t p = dp_engram_next_prime(start);
	size_t i;

	for (;;) {
		i = prime_set_slot(s, p);
		if (!s->key[i])
			break;
		if (!s->next[i])
			s->next[i] = dp_engram_next_prime(p);
		p = s->next[i];
	}
	s->key[i] = p;
	s->next[i] = 0;
	return p;
}

static int table_sizes(struct dp_engram_hash *h, const int64_t *vocab_size)
{
	struct prime_set s;
	size_t total = (size_t)h->n_layers * (size_t)h->n_cols;
	size_t cap = 16;

	while (cap < 2 * total)
		cap <<= 1;
	s.mask = cap - 1;
	s.key = calloc(cap, sizeof(*s.key));
	s.next = calloc(cap, sizeof(*s.next));
	if (!s.key || !s.next) {
		free(s.key);
		free(s.next);
		return -ENOMEM;
	}
	for (int l = 0; l < h->n_layers; l++) {
		int64_t *sz = h->sizes + (size_t)l * (size_t)h->n_cols;
		int64_t *off = h->offsets + (size_t)l * (size_t)(h->n_cols + 1);

		for (int n = 2; n <= h->max_ngram; n++) {
			/* vocab_size >= 1 so start >= 0; primes stay far below 2^63 */
			uint64_t start = (uint64_t)vocab_size[n - 2] - 1;

			for (int head = 0; head < h->n_heads; head++) {
				uint64_t p = take_prime(&s, start);

				sz[dp_engram_column(h->n_heads, n, head)] = (int64_t)p;
				start = p;
			}
		}
		off[0] = 0;
		for (int c = 0; c < h->n_cols; c++)
			off[c + 1] = off[c] + sz[c];
	}
	free(s.key);
	free(s.next);
	return 0;
}

/* ---- new / free / accessors -------------------------------------------------- */

void dp_engram_hash_free(struct dp_engram_hash *h)
{
	if (!h)
		return;
	free(h->layer_ids);
	free(h->mult);
	free(h->sizes);
	free(h->offsets);
	free(h->map);
	free(h);
}

int dp_engram_hash_new(const struct dp_engram_config *c, struct dp_engram_hash **ret_hash)
{
	struct dp_engram_hash *h;
	size_t L;
	int r;

	if (!c || !ret_hash || dp_engram_config_check(c, NULL, 0) < 0)
		return -EINVAL;
	h = calloc(1, sizeof(*h));
	if (!h)
		return -ENOMEM;
	h->n_layers = c->n_layers;
	h->max_ngram = c->max_ngram_size;
	h->n_heads = c->n_heads;
	h->n_cols = DP_ENGRAM_COLUMNS(c->max_ngram_size, c->n_heads);
	h->map_size = c->map_size;
	L = (size_t)c->n_layers;
	h->layer_ids = malloc(L * sizeof(*h->layer_ids));
	h->mult = malloc(L * (size_t)h->max_ngram * sizeof(*h->mult));
	h->sizes = malloc(L * (size_t)h->n_cols * sizeof(*h->sizes));
	h->offsets = malloc(L * (size_t)(h->n_cols + 1) * sizeof(*h->offsets));
	h->map = malloc((size_t)c->map_size * sizeof(*h->map));
	if (!h->layer_ids || !h->mult || !h->sizes || !h->offsets || !h->map) {
		dp_engram_hash_free(h);
		return -ENOMEM;
	}
	memcpy(h->layer_ids, c->layer_ids, L * sizeof(*h->layer_ids));
	memcpy(h->map, c->compression_map, (size_t)c->map_size * sizeof(*h->map));
	h->pad = c->compression_map[c->pad_id];
	for (size_t l = 0; l < L; l++)
		layer_multipliers(c->seed, c->layer_ids[l], c->compressed_vocab_size, h->max_ngram,
		                  h->mult + l * (size_t)h->max_ngram);
	r = table_sizes(h, c->vocab_size);
	if (r < 0) {
		dp_engram_hash_free(h);
		return r;
	}
	*ret_hash = h;
	return 0;
}

int dp_engram_hash_n_layers(const struct dp_engram_hash *h)
{
	return h ? h->n_layers : -EINVAL;
}

int dp_engram_hash_max_ngram(const struct dp_engram_hash *h)
{
	return h ? h->max_ngram : -EINVAL;
}

int dp_engram_hash_n_heads(const struct dp_engram_hash *h)
{
	return h ? h->n_heads : -EINVAL;
}

int dp_engram_hash_n_columns(const struct dp_engram_hash *h)
{
	return h ? h->n_cols : -EINVAL;
}

int64_t dp_engram_hash_map_size(const struct dp_engram_hash *h)
{
	return h ? h->map_size : -EINVAL;
}

int64_t dp_engram_hash_pad_id(const struct dp_engram_hash *h)
{
	return h ? h->pad : -EINVAL;
}

int dp_engram_hash_layer_id(const struct dp_engram_hash *h, int slot)
{
	if (!h || slot < 0 || slot >= h->n_layers)
		return -EINVAL;
	return h->layer_ids[slot];
}

int dp_engram_hash_layer_slot(const struct dp_engram_hash *h, int layer_id)
{
	if (!h)
		return -EINVAL;
	for (int l = 0; l < h->n_layers; l++)
		if (h->layer_ids[l] == layer_id)
			return l;
	return -ENOENT;
}

const int64_t *dp_engram_hash_multipliers(const struct dp_engram_hash *h, int slot)
{
	if (!h || slot < 0 || slot >= h->n_layers)
		return NULL;
	return h->mult + (size_t)slot * (size_t)h->max_ngram;
}

const int64_t *dp_engram_hash_table_sizes(const struct dp_engram_hash *h, int slot)
{
	if (!h || slot < 0 || slot >= h->n_layers)
		return NULL;
	return h->sizes + (size_t)slot * (size_t)h->n_cols;
}

const int64_t *dp_engram_hash_offsets(const struct dp_engram_hash *h, int slot)
{
	if (!h || slot < 0 || slot >= h->n_layers)
		return NULL;
	return h->offsets + (size_t)slot * (size_t)(h->n_cols + 1);
}

/* The demo's _compress: ids >= 0 through the map, negative ids unchanged. The caller has
 * checked raw < map_size. */
static inline int64_t compress(const struct dp_engram_hash *h, int64_t raw)
{
	return raw >= 0 ? h->map[raw] : raw;
}

int dp_engram_hash_compress(const struct dp_engram_hash *h, int64_t raw_id, int64_t *ret_id)
{
	if (!h || !ret_id)
		return -EINVAL;
	if (raw_id >= h->map_size)
		return -ERANGE;
	*ret_id = compress(h, raw_id);
	return 0;
}

/* ---- rows ---------------------------------------------------------------------- */

int dp_engram_state_init(const struct dp_engram_hash *h, struct dp_engram_state *st)
{
	if (!h || !st)
		return -EINVAL;
	for (int k = 0; k < DP_ENGRAM_NGRAM_MAX - 1; k++)
		st->hist[k] = h->pad;
	return 0;
}

static int check_tokens(const struct dp_engram_hash *h, const int64_t *tokens, size_t n)
{
	for (size_t t = 0; t < n; t++)
		if (tokens[t] >= h->map_size)
			return -ERANGE;
	return 0;
}

/* The int64 numpy holds for the 64-bit pattern v (two's complement, without relying on the
 * implementation-defined conversion). */
static inline int64_t as_int64(uint64_t v)
{
	return v <= (uint64_t)INT64_MAX ? (int64_t)v : -(int64_t)~v - 1;
}

/* Rows of one position: win[k] = tok[k] (compressed, k < N); out[slot * stride + c]. */
static void hash_position(const struct dp_engram_hash *h, const int64_t *win, int64_t *out,
                          size_t stride)
{
	for (int l = 0; l < h->n_layers; l++) {
		const int64_t *m = h->mult + (size_t)l * (size_t)h->max_ngram;
		const int64_t *sz = h->sizes + (size_t)l * (size_t)h->n_cols;
		int64_t *o = out + (size_t)l * stride;
		/* numpy's int64 multiply and XOR wrap: do them on the unsigned bit pattern */
		uint64_t mix = (uint64_t)win[0] * (uint64_t)m[0];

		for (int n = 2; n <= h->max_ngram; n++) {
			int64_t v;
			int c0 = dp_engram_column(h->n_heads, n, 0);

			mix ^= (uint64_t)win[n - 1] * (uint64_t)m[n - 1];
			v = as_int64(mix);
			for (int head = 0; head < h->n_heads; head++) {
				int64_t p = sz[c0 + head];
				int64_t r = v % p;

				/* numpy's %: the remainder has the divisor's sign */
				o[c0 + head] = r < 0 ? r + p : r;
			}
		}
	}
}

/* The window before the first new token: win[j] = x'[t-1-j] (j < N - 1), from st or the pad;
 * each window_push then makes win[k] = x'[t-k] for the new position t. */
static void window_load(const struct dp_engram_hash *h, const struct dp_engram_state *st,
                        int64_t *win)
{
	for (int j = 0; j < h->max_ngram - 1; j++)
		win[j] = st ? st->hist[j] : h->pad;
}

static inline void window_push(const struct dp_engram_hash *h, int64_t *win, int64_t id)
{
	for (int k = h->max_ngram - 1; k > 0; k--)
		win[k] = win[k - 1];
	win[0] = id;
}

static void window_store(const struct dp_engram_hash *h, const int64_t *win,
                         struct dp_engram_state *st)
{
	/* after the last token, win[0] is x'[t] = the next position's hist[0] */
	for (int k = 0; k < h->max_ngram - 1; k++)
		st->hist[k] = win[k];
}

int dp_engram_state_feed(const struct dp_engram_hash *h, struct dp_engram_state *st,
                         const int64_t *tokens, size_t n)
{
	int r;

	if (!h || !st || (n && !tokens))
		return -EINVAL;
	r = check_tokens(h, tokens, n);
	if (r < 0)
		return r;
	for (size_t t = 0; t < n; t++) {
		for (int k = h->max_ngram - 2; k > 0; k--)
			st->hist[k] = st->hist[k - 1];
		st->hist[0] = compress(h, tokens[t]);
	}
	return 0;
}

int dp_engram_hash_sequence(const struct dp_engram_hash *h, struct dp_engram_state *st,
                            const int64_t *tokens, size_t n, int64_t *rows)
{
	int64_t win[DP_ENGRAM_NGRAM_MAX];
	size_t stride;
	int r;

	if (!h || (n && (!tokens || !rows)))
		return -EINVAL;
	/* rows holds n_layers * n * n_cols entries: refuse a count whose size wraps */
	if (n > SIZE_MAX / sizeof(int64_t) / (size_t)h->n_layers / (size_t)h->n_cols)
		return -EINVAL;
	r = check_tokens(h, tokens, n);
	if (r < 0)
		return r;
	if (!n)
		return 0;
	stride = n * (size_t)h->n_cols;
	window_load(h, st, win);
	for (size_t t = 0; t < n; t++) {
		window_push(h, win, compress(h, tokens[t]));
		hash_position(h, win, rows + t * (size_t)h->n_cols, stride);
	}
	if (st)
		window_store(h, win, st);
	return 0;
}

int dp_engram_hash_step(const struct dp_engram_hash *h, struct dp_engram_state *st, int64_t token,
                        int64_t *rows)
{
	if (!st)
		return -EINVAL;
	return dp_engram_hash_sequence(h, st, &token, 1, rows);
}
