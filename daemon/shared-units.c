/* SPDX-License-Identifier: MIT */
/*
 * daemon/shared-units.c — prefix units (kvcache.h, "Prefix units") on the
 * shared tier, so that a stateless client's conversation reuses its cached
 * state on whichever host its next request lands.
 *
 * What is written. A unit is content-addressed: its name is its tenant tag
 * (128 bits: uid and cache_salt), a 64-bit chain key over its token ids
 * (one xxh3 step per token, seeded by the tenant) and its token count,
 *   dp.u.<tenant hex>.<key hex>.<n hex>            its manifest
 *   dp.ug.<tenant hex>.<key hex>.<n hex>.<host>.<k> its segments
 * The segments are the session state's segment format (kvcache/tier.h:
 * dp_kv_shared_put, a header checking each page's tag and xxh3); the
 * manifest (framed and checksummed, kvcache/tier-units.h) holds the tenant
 * tag, the chain key, the writer, the token ids and one record per page
 * (daemon/shared-internal.h, as a session's manifest: which page, which
 * segment and slot, an xxh3-128). The manifest is created exclusively after
 * its segments are in: the first host wins, a second finds it (before
 * writing anything: a stat; or, racing, at its create) and deletes its own
 * segments, which carry its host id so that two writers never overwrite
 * each other's. Units are immutable and never deleted (not yet: no eviction
 * on the tier).
 *
 * When. The compute thread, having left a unit (dp_kv_unit_leave), calls
 * dp_shared_units_publish: unless the index knows it already or the queue is
 * full (then dropped, counted), it copies the state to host memory and
 * queues it; the units thread (its own tier connection) writes it. The
 * compute thread never waits for the tier.
 *
 * Lookup. Every host keeps an in-memory index of the units on the tier: a
 * published unit's name is added to the omap of one object, dp.units, under
 * a key that starts with the time; the units thread lists what is new every
 * POLL_MS (from a little before the newest time it saw, so a clock skew of
 * up to SKEW_MS loses nothing) and reads each new unit's manifest into the
 * index (bounded: INDEX_BYTES_MAX; past it, counted, not indexed). The
 * compute thread's lookup for a one-off (dp_shared_units_fork) hashes the
 * prompt's prefixes and probes the index from the longest down to just past
 * the longest local unit, under a mutex and without a round trip; a unit is
 * used only if its tenant and every token id match. It is then adopted
 * (dp_kv_unit_adopt_shared) and restored layer by layer from the segments
 * with the gate API of kvcache/restore-shared.c, on the main tier handle
 * (srv->tier under tier_lock, as a session's takeover). A page that fails
 * its checks poisons the restore: the request recomputes its prompt, the
 * unit is marked bad here and never offered again. A unit is visible to
 * other hosts within about POLL_MS of its publication.
 */
#include "daemon/shared-units.h"

#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <xxhash.h>

#include "base/clock.h"
#include "daemon/log.h"
#include "daemon/shared-health.h"
#include "daemon/shared-internal.h"
#include "kvcache/tier-units.h"
#include "kvcache/tier.h"

#define UNIT_VERSION    1
#define INDEX_OBJECT    "dp.units"
#define POLL_MS         250
#define SKEW_MS         30000        /* index keys re-read behind the newest seen */
#define QUEUE_JOBS      8            /* states waiting to be written, at most */
#define QUEUE_BYTES     (256u << 20) /* ... and their bytes */
#define INDEX_BYTES_MAX (64u << 20)  /* the index's tokens and page records */
#define INDEX_BUCKETS   4096u        /* power of two */
#define LIST_BATCH      256          /* index keys per read */
#define ID_MAX          80           /* <32 hex>.<16 hex>.<16 hex> */

/* The manifest of a unit: this header, tokens[n_tokens] (int32, padded to
 * 8 bytes), pages[n_pages] (struct mpage). */
struct uman_hdr {
	uint32_t version;
	uint32_t n_segs;
	uint64_t tenant[2];
	uint64_t key;
	uint64_t n_tokens; /* the state stands there */
	uint32_t n_pages, pad;
	char host[DP_KV_SHARED_HOST_ID_MAX + 8]; /* the writer, NUL-terminated */
};

/* A unit on the tier, as the index knows it. Entries are never freed while
 * the thread runs (the compute thread reads tokens and pages outside the
 * lock); only bad changes, under the lock. */
struct uent {
	struct uent *next; /* in its bucket */
	struct dp_kv_tenant tenant;
	uint64_t key, n;
	bool bad;        /* a page failed, or its manifest did: never offered */
	int32_t *tokens; /* n */
	struct mpage *pages;
	uint32_t n_pages, n_segs;
	char host[DP_KV_SHARED_HOST_ID_MAX + 1];
	char id[ID_MAX];
};

struct job {
	struct job *next;
	struct dp_kv_tenant tenant;
	uint64_t key, n;
	int32_t *tokens;
	struct dp_v4_page_ref *refs;
	void *data;
	size_t n_pages;
};

struct dp_shared_units {
	pthread_t thread;
	pthread_mutex_t lock; /* everything below but opts and host_id */
	pthread_cond_t cond;
	bool stop;
	struct job *head, **tail;
	uint32_t n_jobs;
	uint64_t queued_bytes;
	struct job *writing; /* the job the thread works on (its key counts as pending) */
	struct uent **buckets;
	atomic_uint_fast64_t n_entries;
	uint64_t index_bytes;
	struct dp_shared_units_stats
	    st; /* indexed is n_entries; found, restored, corrupt: compute */
	struct dp_kv_shared_opts opts;
	char host_id[DP_KV_SHARED_HOST_ID_MAX + 1];
	char after[DP_KV_SHARED_INDEX_KEY_MAX]; /* the units thread's place in the index */
	uint64_t newest_ms;
	uint64_t found;                                    /* compute thread only */
	char keys[LIST_BATCH][DP_KV_SHARED_INDEX_KEY_MAX]; /* poll_index's (units thread) */
};

/* ---- names and keys ---------------------------------------------------------- */

static uint64_t key_seed(const struct dp_kv_tenant *t)
{
	return XXH3_64bits(t->tag, sizeof(t->tag));
}

static uint64_t key_step(uint64_t key, int32_t token)
{
	return XXH3_64bits_withSeed(&token, sizeof(token), key);
}

static uint64_t key_of(const struct dp_kv_tenant *t, const int32_t *tokens, uint64_t n)
{
	uint64_t k = key_seed(t);
	for (uint64_t i = 0; i < n; i++)
		k = key_step(k, tokens[i]);
	return k;
}

static void unit_id(const struct dp_kv_tenant *t, uint64_t key, uint64_t n, char id[ID_MAX])
{
	snprintf(id, ID_MAX, "%016" PRIx64 "%016" PRIx64 ".%016" PRIx64 ".%" PRIx64, t->tag[0],
	         t->tag[1], key, n);
}

static int id_parse(const char *id, struct dp_kv_tenant *t, uint64_t *key, uint64_t *n)
{
	char a[17] = "", b[17] = "";
	int used = 0;
	if (strlen(id) >= ID_MAX ||
	    sscanf(id, "%16[0-9a-f]%16[0-9a-f].%" SCNx64 ".%" SCNx64 "%n", a, b, key, n, &used) !=
	        4 ||
	    used != (int)strlen(id) || strlen(a) != 16 || strlen(b) != 16)
		return -EBADMSG;
	t->tag[0] = strtoull(a, NULL, 16);
	t->tag[1] = strtoull(b, NULL, 16);
	return 0;
}

static void manifest_name(const char *id, char *name, size_t len)
{
	snprintf(name, len, "dp.u.%s", id);
}

static void segment_name(const char *id, const char *host, uint32_t k, char *name, size_t len)
{
	snprintf(name, len, "dp.ug.%s.%s.%u", id, host, k);
}

static bool same_tenant(const struct dp_kv_tenant *a, const struct dp_kv_tenant *b)
{
	return a->tag[0] == b->tag[0] && a->tag[1] == b->tag[1];
}

/* ---- the index (under lock) ------------------------------------------------- */

static struct uent *index_find(struct dp_shared_units *u, const struct dp_kv_tenant *t,
                               uint64_t key, uint64_t n)
{
	for (struct uent *e = u->buckets[key & (INDEX_BUCKETS - 1)]; e; e = e->next)
		if (e->key == key && e->n == n && same_tenant(&e->tenant, t))
			return e;
	return NULL;
}

static bool pending(struct dp_shared_units *u, const struct dp_kv_tenant *t, uint64_t key,
                    uint64_t n)
{
	if (u->writing && u->writing->key == key && u->writing->n == n &&
	    same_tenant(&u->writing->tenant, t))
		return true;
	for (struct job *j = u->head; j; j = j->next)
		if (j->key == key && j->n == n && same_tenant(&j->tenant, t))
			return true;
	return false;
}

/* e (whole) joins the index; false when the cap is reached (e is not
 * taken). A bad entry holds no tokens or pages and always fits. */
static bool index_add(struct dp_shared_units *u, struct uent *e)
{
	uint64_t bytes =
	    (e->tokens ? e->n * sizeof(int32_t) : 0) + (uint64_t)e->n_pages * sizeof(struct mpage);
	if (index_find(u, &e->tenant, e->key, e->n))
		return false;
	if (u->index_bytes + bytes > INDEX_BYTES_MAX) {
		u->st.index_full++;
		return false;
	}
	u->index_bytes += bytes;
	struct uent **b = &u->buckets[e->key & (INDEX_BUCKETS - 1)];
	e->next = *b;
	*b = e;
	if (!e->bad)
		atomic_fetch_add(&u->n_entries, 1);
	return true;
}

static void uent_free(struct uent *e)
{
	if (!e)
		return;
	free(e->tokens);
	free(e->pages);
	free(e);
}

/* ---- manifests ------------------------------------------------------------------ */

static size_t pad8(size_t n)
{
	return (n + 7) & ~(size_t)7;
}

/* A manifest read from the tier, checked against the name it was found
 * under: its counts and length, its tenant and key, the chain key of its
 * token ids (so the ids are the name's), every page's segment and slot. */
static int manifest_parse(const char *id, const void *buf, size_t len, struct uent **ret)
{
	struct dp_kv_tenant t;
	uint64_t key, n;
	struct uman_hdr h;
	if (id_parse(id, &t, &key, &n) < 0 || len < sizeof(h))
		return -EBADMSG;
	memcpy(&h, buf, sizeof(h));
	uint32_t per = dp_kv_shared_group_pages(DP_V4_PAGE_BYTES);
	if (h.version != UNIT_VERSION || h.n_tokens != n || h.key != key ||
	    h.tenant[0] != t.tag[0] || h.tenant[1] != t.tag[1] || n == 0 || n > INT32_MAX ||
	    h.n_pages > (1u << 24) || h.n_segs != (h.n_pages + per - 1) / per ||
	    memchr(h.host, 0, sizeof(h.host)) == NULL ||
	    strlen(h.host) > DP_KV_SHARED_HOST_ID_MAX || !h.host[0])
		return -EBADMSG;
	size_t want =
	    sizeof(h) + pad8(n * sizeof(int32_t)) + (size_t)h.n_pages * sizeof(struct mpage);
	if (len != want)
		return -EBADMSG;
	struct uent *e = calloc(1, sizeof(*e));
	if (!e)
		return -ENOMEM;
	e->tokens = malloc(n * sizeof(int32_t));
	e->pages = malloc((h.n_pages ? h.n_pages : 1) * sizeof(struct mpage));
	if (!e->tokens || !e->pages) {
		uent_free(e);
		return -ENOMEM;
	}
	const char *p = buf;
	memcpy(e->tokens, p + sizeof(h), n * sizeof(int32_t));
	memcpy(e->pages, p + sizeof(h) + pad8(n * sizeof(int32_t)),
	       (size_t)h.n_pages * sizeof(struct mpage));
	int bad = key_of(&t, e->tokens, n) != key;
	for (uint32_t i = 0; i < h.n_pages && !bad; i++)
		bad = e->pages[i].seg >= h.n_segs || e->pages[i].slot >= per;
	if (bad) {
		uent_free(e);
		return -EBADMSG;
	}
	e->tenant = t;
	e->key = key;
	e->n = n;
	e->n_pages = h.n_pages;
	e->n_segs = h.n_segs;
	snprintf(e->host, sizeof(e->host), "%s", h.host);
	snprintf(e->id, sizeof(e->id), "%s", id);
	*ret = e;
	return 0;
}

/* Read unit id's manifest into the index (a bad one as a bad entry, so it
 * is not read again). */
static void load(struct dp_shared_units *u, struct dp_kv_shared *t, const char *id)
{
	struct dp_kv_tenant tn;
	uint64_t key, n;
	if (id_parse(id, &tn, &key, &n) < 0)
		return; /* not a unit's name: nothing to remember it by */
	pthread_mutex_lock(&u->lock);
	bool known = index_find(u, &tn, key, n) != NULL;
	pthread_mutex_unlock(&u->lock);
	if (known)
		return;
	char name[160];
	manifest_name(id, name, sizeof(name));
	void *buf = NULL;
	size_t len = 0;
	int r = dp_kv_shared_object_get(t, name, &buf, &len);
	if (r == -ENOENT || r == -ETIMEDOUT || r == -ENOMEM)
		return; /* not there (yet), or try again at the next poll */
	struct uent *e = NULL;
	if (r == 0)
		r = manifest_parse(id, buf, len, &e);
	free(buf);
	if (r == -ENOMEM)
		return;
	if (r < 0) {
		log_warning(
		    "prefix unit %s on the shared tier: its manifest fails its checks (%s); "
		    "never used",
		    id, strerror(-r));
		if (!(e = calloc(1, sizeof(*e))))
			return;
		e->tenant = tn;
		e->key = key;
		e->n = n;
		e->bad = true;
		snprintf(e->id, sizeof(e->id), "%s", id);
	}
	pthread_mutex_lock(&u->lock);
	if (e->bad)
		u->st.bad_manifests++;
	bool taken = index_add(u, e);
	pthread_mutex_unlock(&u->lock);
	if (!taken)
		uent_free(e);
}

/* What is new in the index object since the last poll. */
static int poll_index(struct dp_shared_units *u, struct dp_kv_shared *t)
{
	char(*keys)[DP_KV_SHARED_INDEX_KEY_MAX] = u->keys;
	for (;;) {
		size_t n = 0;
		bool more = false;
		int r =
		    dp_kv_shared_index_list(t, INDEX_OBJECT, u->after, keys, LIST_BATCH, &n, &more);
		if (r < 0)
			return r;
		for (size_t i = 0; i < n; i++) {
			uint64_t ms;
			const char *id;
			if (dp_kv_shared_index_key_parse(keys[i], &ms, &id) < 0)
				continue;
			if (ms > u->newest_ms)
				u->newest_ms = ms;
			load(u, t, id);
			pthread_mutex_lock(&u->lock);
			bool stop = u->stop;
			pthread_mutex_unlock(&u->lock);
			if (stop)
				return 0;
		}
		if (n)
			snprintf(u->after, sizeof(u->after), "%s", keys[n - 1]);
		if (!more)
			break;
	}
	/* next time from a little before the newest: a host whose clock is
	 * behind adds keys that sort before it */
	uint64_t from = u->newest_ms > SKEW_MS ? u->newest_ms - SKEW_MS : 0;
	snprintf(u->after, sizeof(u->after), "%016" PRIx64, from);
	return 0;
}

/* ---- publishing (units thread) --------------------------------------------------- */

struct wait1 {
	int res;
	bool done;
};

static void on_done(void *arg, int res)
{
	struct wait1 *w = arg;
	w->res = res;
	w->done = true;
}

/* Reap t until w[0..n) are done (the tier's op timeout bounds each). */
static void wait_all(struct dp_kv_shared *t, struct wait1 *w, size_t n)
{
	for (;;) {
		size_t left = 0;
		for (size_t i = 0; i < n; i++)
			left += !w[i].done;
		if (!left)
			return;
		struct pollfd p = {.fd = dp_kv_shared_fd(t), .events = POLLIN};
		poll(&p, 1, 50);
		dp_kv_shared_reap(t, 0);
	}
}

static void delete_segments(struct dp_kv_shared *t, const char *id, const char *host, uint32_t n)
{
	struct wait1 *w = calloc(n ? n : 1, sizeof(*w));
	if (!w)
		return;
	for (uint32_t k = 0; k < n; k++) {
		char name[256];
		segment_name(id, host, k, name, sizeof(name));
		if (dp_kv_shared_delete(t, name, on_done, &w[k]) < 0)
			w[k].done = true;
	}
	wait_all(t, w, n);
	free(w);
}

/* Write job j's unit: its segments, then its manifest (exclusive), then its
 * index key. */
static void publish(struct dp_shared_units *u, struct dp_kv_shared *t, struct job *j)
{
	char id[ID_MAX], name[256];
	unit_id(&j->tenant, j->key, j->n, id);
	manifest_name(id, name, sizeof(name));
	int r = dp_kv_shared_object_exists(t, name);
	if (r == 1) { /* another host's (or ours, before a restart) */
		pthread_mutex_lock(&u->lock);
		u->st.existed++;
		pthread_mutex_unlock(&u->lock);
		load(u, t, id);
		return;
	}
	uint32_t per = dp_kv_shared_group_pages(DP_V4_PAGE_BYTES);
	uint32_t n_segs = (uint32_t)((j->n_pages + per - 1) / per);
	size_t tok_bytes = pad8(j->n * sizeof(int32_t));
	size_t len = sizeof(struct uman_hdr) + tok_bytes + j->n_pages * sizeof(struct mpage);
	char *man = calloc(1, len);
	struct wait1 *w = calloc(n_segs ? n_segs : 1, sizeof(*w));
	struct dp_kv_shared_page *pg = malloc(per * sizeof(*pg));
	if (r < 0 || !man || !w || !pg)
		goto fail;
	struct uman_hdr h = {.version = UNIT_VERSION,
	                     .n_segs = n_segs,
	                     .tenant = {j->tenant.tag[0], j->tenant.tag[1]},
	                     .key = j->key,
	                     .n_tokens = j->n,
	                     .n_pages = (uint32_t)j->n_pages};
	snprintf(h.host, sizeof(h.host), "%s", u->host_id);
	memcpy(man, &h, sizeof(h));
	memcpy(man + sizeof(h), j->tokens, j->n * sizeof(int32_t));
	struct mpage *recs = (struct mpage *)(man + sizeof(h) + tok_bytes);
	for (size_t i = 0; i < j->n_pages; i++) {
		const char *data = (const char *)j->data + i * DP_V4_PAGE_BYTES;
		struct mpage m = dp_shared_mpage(&j->refs[i], data);
		m.seg = (uint32_t)(i / per);
		m.slot = (uint32_t)(i % per);
		memcpy(&recs[i], &m, sizeof(m));
	}
	uint32_t submitted = 0;
	for (uint32_t g = 0; g < n_segs; g++) {
		uint32_t first = g * per;
		uint32_t cnt = j->n_pages - first < per ? (uint32_t)(j->n_pages - first) : per;
		for (uint32_t k = 0; k < cnt; k++) {
			const struct dp_v4_page_ref *ref = &j->refs[first + k];
			pg[k].tag = dp_kv_shared_page_tag(ref->layer, ref->kind, ref->index);
			pg[k].buf = (char *)j->data + (size_t)(first + k) * DP_V4_PAGE_BYTES;
		}
		char seg[256];
		segment_name(id, u->host_id, g, seg, sizeof(seg));
		if ((r = dp_kv_shared_put(t, seg, pg, cnt, DP_V4_PAGE_BYTES, on_done, &w[g])) < 0)
			break;
		submitted++;
	}
	wait_all(t, w, submitted);
	for (uint32_t g = 0; g < submitted && r == 0; g++)
		r = w[g].res;
	if (r == 0 && submitted == n_segs) {
		r = dp_kv_shared_object_create(t, name, man, len);
		if (r == 0) {
			struct uent *e = NULL;
			int ir = dp_kv_shared_index_add(t, INDEX_OBJECT, id);
			pthread_mutex_lock(&u->lock);
			u->st.published++;
			if (ir < 0)
				u->st.errors++; /* written, not listed: others will not find it */
			pthread_mutex_unlock(&u->lock);
			if (manifest_parse(id, man, len, &e) == 0) {
				pthread_mutex_lock(&u->lock);
				bool taken = index_add(u, e);
				pthread_mutex_unlock(&u->lock);
				if (!taken)
					uent_free(e);
			}
			goto out;
		}
	}
	if (submitted)
		delete_segments(t, id, u->host_id, submitted);
	if (r == -EEXIST) { /* another host won the race */
		pthread_mutex_lock(&u->lock);
		u->st.existed++;
		pthread_mutex_unlock(&u->lock);
		load(u, t, id);
		goto out;
	}
fail:
	pthread_mutex_lock(&u->lock);
	u->st.errors++;
	pthread_mutex_unlock(&u->lock);
out:
	free(man);
	free(w);
	free(pg);
}

static void job_free(struct job *j)
{
	if (!j)
		return;
	free(j->tokens);
	free(j->refs);
	free(j->data);
	free(j);
}

static void *units_main(void *arg)
{
	struct dp_shared_units *u = arg;
	struct dp_kv_shared *t = NULL;
	uint64_t next_poll = 0, next_open = 0;
	pthread_mutex_lock(&u->lock);
	while (!u->stop) {
		struct job *j = u->head;
		uint64_t now = dp_clock_ns();
		if (!t && now >= next_open) {
			pthread_mutex_unlock(&u->lock);
			char why[256];
			if (dp_kv_shared_open(&u->opts, &t, why, sizeof(why)) < 0)
				t = NULL;
			next_open = dp_clock_ns() + 1000000000ull;
			pthread_mutex_lock(&u->lock);
			continue;
		}
		if (t && j) {
			u->head = j->next;
			if (!u->head)
				u->tail = &u->head;
			u->n_jobs--;
			u->queued_bytes -= j->n_pages * DP_V4_PAGE_BYTES;
			u->writing = j;
			pthread_mutex_unlock(&u->lock);
			publish(u, t, j);
			pthread_mutex_lock(&u->lock);
			u->writing = NULL;
			job_free(j);
			continue;
		}
		if (t && now >= next_poll) {
			pthread_mutex_unlock(&u->lock);
			poll_index(u, t);
			next_poll = dp_clock_ns() + POLL_MS * 1000000ull;
			pthread_mutex_lock(&u->lock);
			continue;
		}
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_nsec += POLL_MS / 5 * 1000000L;
		ts.tv_sec += ts.tv_nsec / 1000000000L;
		ts.tv_nsec %= 1000000000L;
		pthread_cond_timedwait(&u->cond, &u->lock, &ts);
	}
	pthread_mutex_unlock(&u->lock);
	dp_kv_shared_close(t);
	return NULL;
}

/* ---- the API ---------------------------------------------------------------- */

int dp_shared_units_start(struct dp_server *srv)
{
	if (!srv)
		return -EINVAL;
	if (!srv->tier)
		return 0;
	struct dp_shared_units *u = calloc(1, sizeof(*u));
	if (!u)
		return -ENOMEM;
	u->buckets = calloc(INDEX_BUCKETS, sizeof(*u->buckets));
	if (!u->buckets) {
		free(u);
		return -ENOMEM;
	}
	snprintf(u->host_id, sizeof(u->host_id), "%s", srv->host_id);
	u->opts = (struct dp_kv_shared_opts){
	    .conf = srv->cfg.rados_conf,
	    .pool = srv->cfg.rados_pool,
	    .client = srv->cfg.rados_client,
	    .host_id = u->host_id,
	    .lease_ms = srv->cfg.lease_ms,
	    .timeout_ms = srv->cfg.lease_ms > 2000 ? srv->cfg.lease_ms : 2000,
	};
	u->tail = &u->head;
	atomic_init(&u->n_entries, 0);
	pthread_mutex_init(&u->lock, NULL);
	pthread_cond_init(&u->cond, NULL);
	int ret = -pthread_create(&u->thread, NULL, units_main, u);
	if (ret < 0) {
		pthread_cond_destroy(&u->cond);
		pthread_mutex_destroy(&u->lock);
		free(u->buckets);
		free(u);
		return ret;
	}
	srv->units = u;
	return 0;
}

void dp_shared_units_stop(struct dp_server *srv)
{
	struct dp_shared_units *u = srv ? srv->units : NULL;
	if (!u)
		return;
	pthread_mutex_lock(&u->lock);
	u->stop = true;
	pthread_cond_signal(&u->cond);
	pthread_mutex_unlock(&u->lock);
	pthread_join(u->thread, NULL);
	while (u->head) {
		struct job *j = u->head;
		u->head = j->next;
		job_free(j);
	}
	for (uint32_t b = 0; b < INDEX_BUCKETS; b++)
		while (u->buckets[b]) {
			struct uent *e = u->buckets[b];
			u->buckets[b] = e->next;
			uent_free(e);
		}
	free(u->buckets);
	pthread_cond_destroy(&u->cond);
	pthread_mutex_destroy(&u->lock);
	free(u);
	srv->units = NULL;
}

void dp_shared_units_publish(struct dp_server *srv, const struct dp_kv_tenant *t,
                             const int32_t *tokens, uint64_t n, struct dp_v4_seq *seq)
{
	struct dp_shared_units *u = srv->units;
	if (!u || !t || !tokens || !n || !seq || !dp_shared_health_up(srv))
		return;
	uint64_t t0 = dp_clock_ns();
	uint64_t key = key_of(t, tokens, n);
	size_t n_pages = dp_v4_seq_pages(seq, NULL, 0);
	pthread_mutex_lock(&u->lock);
	bool skip = index_find(u, t, key, n) || pending(u, t, key, n);
	bool full = !skip && (u->n_jobs >= QUEUE_JOBS ||
	                      u->queued_bytes + n_pages * DP_V4_PAGE_BYTES > QUEUE_BYTES);
	if (full)
		u->st.dropped++;
	pthread_mutex_unlock(&u->lock);
	if (skip || full)
		return;
	struct job *j = calloc(1, sizeof(*j));
	if (!j || !(j->tokens = malloc(n * sizeof(int32_t))) ||
	    dp_kv_seq_state_copy(srv->kv, seq, &j->refs, &j->data, &j->n_pages) < 0) {
		job_free(j);
		pthread_mutex_lock(&u->lock);
		u->st.errors++;
		pthread_mutex_unlock(&u->lock);
		return;
	}
	memcpy(j->tokens, tokens, n * sizeof(int32_t));
	j->tenant = *t;
	j->key = key;
	j->n = n;
	pthread_mutex_lock(&u->lock);
	*u->tail = j;
	u->tail = &j->next;
	u->n_jobs++;
	u->queued_bytes += j->n_pages * DP_V4_PAGE_BYTES;
	u->st.publish_ns += dp_clock_ns() - t0;
	pthread_cond_signal(&u->cond);
	pthread_mutex_unlock(&u->lock);
}

int dp_shared_units_fork(struct dp_server *srv, const struct dp_kv_tenant *t, const int32_t *tokens,
                         uint64_t max, bool layered, struct dp_v4_seq **ret_seq,
                         struct dp_kv_session **ret_unit)
{
	struct dp_shared_units *u = srv->units;
	if (!u || !srv->tier || !t || !tokens || !max || !ret_seq || !ret_unit)
		return 0;
	/* units given back bad since: never offered again (the cookie is the
	 * entry: entries live until the thread stops) */
	uint64_t bad[16];
	size_t n_bad = dp_kv_unit_take_shared_bad(srv->kv, bad, 16);
	if (n_bad) {
		pthread_mutex_lock(&u->lock);
		for (size_t i = 0; i < n_bad; i++) {
			struct uent *e = (struct uent *)(uintptr_t)bad[i];
			if (!e->bad) {
				e->bad = true;
				atomic_fetch_sub(&u->n_entries, 1);
			}
		}
		pthread_mutex_unlock(&u->lock);
	}
	if (!atomic_load(&u->n_entries))
		return 0;
	struct dp_kv_session *local = NULL;
	int have = dp_kv_unit_find(srv->kv, t, tokens, max, &local);
	uint64_t floor = have > 0 ? (uint64_t)have : 0;
	if (floor >= max)
		return 0;
	uint64_t *keys = malloc(max * sizeof(*keys));
	if (!keys)
		return 0;
	uint64_t k = key_seed(t);
	for (uint64_t i = 0; i < max; i++)
		keys[i] = k = key_step(k, tokens[i]);
	struct uent *e = NULL;
	pthread_mutex_lock(&u->lock);
	for (uint64_t n = max; n > floor && !e; n--) {
		struct uent *c = index_find(u, t, keys[n - 1], n);
		if (c && !c->bad && !memcmp(c->tokens, tokens, n * sizeof(int32_t)))
			e = c;
	}
	pthread_mutex_unlock(&u->lock);
	free(keys);
	if (!e)
		return 0;
	/* e's tokens and pages are not changed or freed while the thread runs */
	char(*names)[256] = calloc(e->n_segs ? e->n_segs : 1, sizeof(*names));
	const char **np = calloc(e->n_segs ? e->n_segs : 1, sizeof(*np));
	struct dp_kv_shared_loc *locs = calloc(e->n_pages ? e->n_pages : 1, sizeof(*locs));
	int ret = -ENOMEM;
	if (names && np && locs) {
		for (uint32_t i = 0; i < e->n_segs; i++) {
			segment_name(e->id, e->host, i, names[i], sizeof(names[i]));
			np[i] = names[i];
		}
		for (uint32_t i = 0; i < e->n_pages; i++)
			locs[i] = (struct dp_kv_shared_loc){e->pages[i].layer, e->pages[i].kind,
			                                    e->pages[i].index, e->pages[i].seg,
			                                    e->pages[i].slot};
		ret = dp_kv_unit_adopt_shared(srv->kv, t, e->tokens, e->n, (uint64_t)(uintptr_t)e,
		                              srv->tier, &srv->tier_lock, np, e->n_segs, locs,
		                              e->n_pages, layered, ret_seq, ret_unit);
	}
	free(names);
	free(np);
	free(locs);
	if (ret == -EBADMSG) { /* its page list is not this model's, or a page failed */
		log_warning("prefix unit %s on the shared tier cannot be restored (%s); not used",
		            e->id, strerror(-ret));
		pthread_mutex_lock(&u->lock);
		if (!e->bad) {
			e->bad = true;
			atomic_fetch_sub(&u->n_entries, 1);
		}
		pthread_mutex_unlock(&u->lock);
	}
	if (ret <= 0)
		return 0;
	u->found++;
	return ret;
}

void dp_shared_units_stats(struct dp_server *srv, struct dp_shared_units_stats *ret)
{
	memset(ret, 0, sizeof(*ret));
	struct dp_shared_units *u = srv->units;
	if (!u)
		return;
	pthread_mutex_lock(&u->lock);
	*ret = u->st;
	pthread_mutex_unlock(&u->lock);
	ret->indexed = atomic_load(&u->n_entries);
	ret->found = u->found;
	struct dp_kv_stats ks;
	dp_kv_stats(srv->kv, &ks);
	ret->restored = ks.shared_units_restored;
	ret->corrupt = ks.shared_units_corrupt;
}
