/* SPDX-License-Identifier: MIT */
/*
 * engram/cache.c — the store's hot-row cache: decoded rows keyed by (layer slot, flat row),
 * CLOCK replacement, an open-addressing index (linear probing, backward-shift deletion).
 * Entries used in the current step (epoch) are never evicted, so a row the prefetch found
 * in the cache is still there when the layer's rows are gathered.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "engram/engram-internal.h"

#define EMPTY_KEY UINT64_MAX

static uint64_t mix(uint64_t x)
{
	x ^= x >> 30;
	x *= 0xbf58476d1ce4e5b9ull;
	x ^= x >> 27;
	x *= 0x94d049bb133111ebull;
	return x ^ (x >> 31);
}

int dp_engram_cache_init(struct dp_engram_cache *c, uint32_t cap, uint32_t dim)
{
	memset(c, 0, sizeof(*c));
	if (cap == 0)
		return 0;
	if (dim == 0 || cap > (1u << 30))
		return -EINVAL;
	uint64_t slots = 2;
	while (slots < 2 * (uint64_t)cap)
		slots *= 2;
	c->cap = cap;
	c->dim = dim;
	c->mask = (uint32_t)(slots - 1);
	c->data = malloc((size_t)cap * dim * sizeof(float));
	c->key = malloc((size_t)cap * sizeof(*c->key));
	c->epoch = calloc(cap, sizeof(*c->epoch));
	c->ref = calloc(cap, 1);
	c->index = calloc(slots, sizeof(*c->index));
	if (!c->data || !c->key || !c->epoch || !c->ref || !c->index) {
		dp_engram_cache_fini(c);
		return -ENOMEM;
	}
	for (uint32_t i = 0; i < cap; i++)
		c->key[i] = EMPTY_KEY;
	return 0;
}

void dp_engram_cache_fini(struct dp_engram_cache *c)
{
	free(c->data);
	free(c->key);
	free(c->epoch);
	free(c->ref);
	free(c->index);
	memset(c, 0, sizeof(*c));
}

int64_t dp_engram_cache_lookup(struct dp_engram_cache *c, uint64_t key, uint64_t epoch)
{
	if (!c->cap)
		return -1;
	for (uint32_t i = (uint32_t)mix(key) & c->mask; c->index[i]; i = (i + 1) & c->mask) {
		uint32_t e = c->index[i] - 1;
		if (c->key[e] == key) {
			c->ref[e] = 1;
			c->epoch[e] = epoch;
			return e;
		}
	}
	return -1;
}

/* Drop entry e's key from the index. */
static void unindex(struct dp_engram_cache *c, uint32_t e)
{
	uint32_t i = (uint32_t)mix(c->key[e]) & c->mask;

	while (c->index[i] != e + 1)
		i = (i + 1) & c->mask;
	c->index[i] = 0;
	for (uint32_t j = (i + 1) & c->mask; c->index[j]; j = (j + 1) & c->mask) {
		uint32_t home = (uint32_t)mix(c->key[c->index[j] - 1]) & c->mask;
		/* an entry may move back to i unless its home lies cyclically in (i, j] */
		bool stays = i <= j ? (home > i && home <= j) : (home > i || home <= j);
		if (!stays) {
			c->index[i] = c->index[j];
			c->index[j] = 0;
			i = j;
		}
	}
}

int64_t dp_engram_cache_insert(struct dp_engram_cache *c, uint64_t key, const float *row,
                               uint64_t epoch, bool *ret_evicted)
{
	uint32_t e;

	*ret_evicted = false;
	if (!c->cap || key == EMPTY_KEY)
		return -ENOSPC;
	if (dp_engram_cache_lookup(c, key, epoch) >= 0)
		return -EEXIST;
	if (c->used < c->cap) {
		e = c->used++;
	} else {
		/* CLOCK: a used entry gets a second chance; this step's are pinned */
		uint64_t steps = 0;
		for (;; steps++) {
			if (steps >= 2 * (uint64_t)c->cap)
				return -ENOSPC;
			e = c->hand;
			c->hand = c->hand + 1 == c->cap ? 0 : c->hand + 1;
			if (c->epoch[e] == epoch)
				continue;
			if (c->ref[e]) {
				c->ref[e] = 0;
				continue;
			}
			break;
		}
		unindex(c, e);
		*ret_evicted = true;
	}
	c->key[e] = key;
	c->ref[e] = 0; /* a second use earns the second chance */
	c->epoch[e] = epoch;
	memcpy(c->data + (size_t)e * c->dim, row, (size_t)c->dim * sizeof(float));
	uint32_t i = (uint32_t)mix(key) & c->mask;
	while (c->index[i])
		i = (i + 1) & c->mask;
	c->index[i] = e + 1;
	return e;
}
