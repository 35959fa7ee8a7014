/* SPDX-License-Identifier: MIT */
/*
 * daemon/shared.c — sessions on the shared tier (kvcache/tier.h): which host
 * serves a session, the manifests that make its turns durable beyond this
 * host, and the state pages that let another host go on without
 * recomputing.
 *
 * A session's manifest (version 2) is its owner uid, its committed token
 * history and, when it has one, its state: the position the state stands
 * at (at most the history's length: the host that restores it feeds the
 * rest), and every state page's place on the tier (segment, slot) with an
 * xxh3-128 of its bytes. Segments are immutable objects dp.g.<session>.
 * <epoch>.<n> of up to 63 pages (4 MiB with their header), written by the
 * session's owner under its epoch.
 *
 * A turn commits: after the local journal commit, the state pages that
 * differ from the last manifest's (by their xxh3-128: the sliding windows,
 * the unfinished compressor windows, the last page of each growing stream)
 * are written as new segments; the unchanged ones are named again by
 * reference. Once every segment is in, the manifest is written (fenced:
 * conditional on this host's epoch), and only then is the turn
 * acknowledged. Segments the new manifest no longer names are deleted after
 * it is in; the manifest lists them, and the writer's next segment number,
 * so that what a crash leaves is found: a host taking the session over
 * deletes the listed ones and probes the writer's numbers from the next one
 * up (segments written for a manifest that never came). A delete that fails
 * is retried with backoff (a bounded list; what falls off it, or outlives
 * its tries, is left to the next takeover's collection). What still leaks:
 * the segments of a host that crashed before its first manifest of the
 * session, and the session object itself (its lease and epoch).
 *
 * A dropped session (CloseSession without persist) that this host holds
 * gets an empty manifest (a tombstone: no history, no state, every segment
 * listed as garbage; fenced like any manifest), then its segments are
 * deleted and its lease released. A host that reads a tombstone treats the
 * session as new (its own copy, if any, is dropped).
 *
 * A host that takes a session anew reads the manifest; when its own copy
 * differs (it never had the session, or an older turn of it) it replaces
 * its copy by the manifest's history, and dp_shared_acquire restores the
 * state layer by layer from the tier (kvcache/restore-shared.c) while the
 * first step runs; a page that fails its checks, or a missing segment,
 * poisons that restore and the state is recomputed from the history, so
 * greedy output continues exactly as on the host that served before.
 *
 * Threads. Leases this host holds are renewed by the cluster thread
 * (daemon/cluster.c): a request on a session held here is admitted without
 * a round trip. Every other round trip runs on this file's worker thread,
 * never on compute: the lease take (and manifest read, and collection) of
 * a session not held yet, and a turn's commit. Compute hashes the state and
 * copies what changed (so the session may step on, or be evicted, without
 * touching what is written), hands the plan over and keeps stepping other
 * sessions; the worker puts the segments, waits, puts the manifest, waits,
 * and posts the result, which compute collects (dp_shared_poll) to send the
 * turn's final chunk or its error. The worker takes jobs in order, one at a
 * time. The session table (struct sess, a hash table) and the claims are
 * compute's; a job carries copies of what it needs. The tier handle is one
 * thread's at a time: every use here (and in the cluster thread, and the
 * restore) holds srv->tier_lock; lock order: tier_lock, then sh->mu.
 */
#include "daemon/shared.h"
#include "daemon/cluster.h"
#include "daemon/shared-health.h"
#include "daemon/shared-internal.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <xxhash.h>

#include "base/clock.h"
#include "daemon/log.h"
#include "kvcache/tier.h"

#define MANIFEST_VERSION 2
#define GC_PROBE_MAX 4096  /* segments probed past a manifest's next number */
#define DEL_RETRY_MAX 4096 /* failed deletes kept for a retry */
#define DEL_TRIES 8	   /* ... tried this often in all, 200 ms << try apart */

struct manifest_hdr {
	uint32_t version;
	uint32_t owner_uid;
	uint64_t n_tokens;
};

/* After the header (version 2): the state, then tokens[n_tokens] (int32,
 * padded to 8 bytes), segs[n_segs], garbage[n_garbage], pages[n_pages]. */
struct manifest_state {
	uint64_t pos;	   /* where the state stands (n_pages 0: no state) */
	uint64_t epoch;	   /* the writer's epoch */
	uint64_t next_seg; /* the writer's next segment number */
	uint32_t n_pages, n_segs, n_garbage, pad;
};

struct mseg { /* dp.g.<session>.<epoch>.<n> */
	uint64_t epoch, n;
};

/* struct mpage: daemon/shared-internal.h (units' manifests use it too) */

struct manifest {
	struct manifest_hdr h;
	struct manifest_state st;
	const char *tokens; /* n_tokens int32, unaligned */
	const char *segs, *garbage, *pages;
};

/* A session this host writes on the tier: what its last manifest says.
 * Compute's. */
struct sess {
	struct sess *next; /* in its hash bucket */
	uint64_t hash;
	char id[DP_KV_SESSION_ID_MAX + 1];
	uint64_t epoch;	   /* this host's, from its take */
	uint64_t next_seg; /* this host's next segment number under epoch */
	uint64_t pos;
	struct mpage *pages;
	uint32_t n_pages;
	struct mseg *segs;
	uint32_t n_segs;
	bool restore; /* taken over with a state: dp_shared_acquire restores it */
	bool stale;   /* a turn's manifest failed: the local copy may hold it; resync */
};

/* An operation's end, set by its callback on whichever thread reaps (under
 * tier_lock), read by the worker: res is written before done is released. */
struct put_wait {
	int res;
	atomic_bool done;
};

/* One session's turn: what the worker writes (copies: nothing here points
 * into the session), and what it came to. */
struct plan {
	void *tag;
	char id[DP_KV_SESSION_ID_MAX + 1];
	uint32_t owner;
	int32_t *hist; /* the history, n_tok tokens */
	uint64_t n_tok;
	bool has_e;	   /* this host knows a table of the session */
	uint64_t epoch;	   /* the writer's, and its next segment number after this plan */
	uint64_t next_seg;
	struct mseg *old_segs; /* the last table's segments */
	uint32_t n_old;
	bool state;
	uint64_t pos;
	void *data;	     /* the fresh pages' bytes, in fresh order */
	size_t n;	     /* pages in the new table */
	struct mpage *pages; /* the new table, n entries */
	struct mseg *segs;   /* its segments: reused ones, then new ones */
	uint32_t n_segs, first_new;
	struct mseg *garbage; /* the last table's segments the new one does not name */
	uint32_t n_garbage;
	uint32_t *fresh; /* pages written now (indices into pages), in order */
	uint32_t n_fresh;
	struct put_wait *puts; /* per new segment */
	struct put_wait man;
	int res;
};

/* A lease take handed to the worker, and what it found. The list is
 * compute's; the fields after `known` are the worker's until it posts. */
struct claim {
	struct claim *next;
	char id[DP_KV_SESSION_ID_MAX + 1];
	bool known, stale; /* compute had a table under known_epoch */
	uint64_t known_epoch;
	bool ready; /* posted back, collected by dp_shared_poll */
	uint64_t ready_ns;
	int ret; /* the take's */
	uint64_t epoch;
	char owner[DP_KV_SHARED_HOST_ID_MAX + 1];
	bool read;  /* the manifest was read: mret */
	int mret;   /* 0 (m parsed from buf), -ENOENT, or why not */
	char bad[256];
	void *buf;
	size_t len;
	struct manifest m;
};

enum job_kind { JOB_COMMIT, JOB_CLAIM, JOB_DROP, JOB_RELEASE };

struct job {
	struct job *next;
	enum job_kind kind;
	struct plan *plans; /* JOB_COMMIT: n of them */
	size_t n;
	size_t bytes;	     /* their fresh pages' */
	struct claim *claim; /* JOB_CLAIM */
	char id[DP_KV_SESSION_ID_MAX + 1]; /* JOB_DROP, JOB_RELEASE */
	uint32_t owner;
	uint64_t epoch, next_seg; /* JOB_DROP: the tombstone's */
	struct mseg *segs;	  /* ... and every segment it names as garbage */
	uint32_t n_segs;
};

/* A delete the worker waits for no more; kept for a retry if it fails. */
struct del {
	struct del *next;
	struct dp_shared *sh;
	char name[256];
	uint32_t tries;
	uint64_t due_ns;
};

struct dp_shared {
	struct dp_server *srv;
	/* compute's */
	struct sess **bucket;
	size_t n_bucket, n_sess;
	struct claim *claims;
	uint32_t n_commit_jobs; /* handed over, not yet collected */

	pthread_t thread;
	bool started;
	pthread_mutex_t mu; /* everything below */
	pthread_cond_t cond;	  /* the worker waits for jobs; compute for room */
	bool stop;
	struct job *todo, **todo_tail;
	struct job *done, **done_tail;
	atomic_uint n_done; /* jobs in done (compute's wake-up test) */
	uint32_t busy_plans; /* commits handed over whose copies the worker still holds */
	size_t busy_bytes;
	struct del *retry; /* failed deletes, soonest first not kept: scanned */
	uint32_t n_retry;
	uint32_t n_dels; /* deletes out (callbacks pending) */
	struct dp_shared_stats st;
};

static void tlock(struct dp_server *srv)
{
	pthread_mutex_lock(&srv->tier_lock);
}

static void tunlock(struct dp_server *srv)
{
	pthread_mutex_unlock(&srv->tier_lock);
}

static void *worker_main(void *arg);

/* The state, and its worker, made at the first use (compute). */
static struct dp_shared *shared_of(struct dp_server *srv)
{
	if (srv->shared)
		return srv->shared;
	struct dp_shared *sh = calloc(1, sizeof(*sh));
	if (!sh)
		return NULL;
	sh->srv = srv;
	sh->n_bucket = 64;
	sh->bucket = calloc(sh->n_bucket, sizeof(*sh->bucket));
	sh->todo_tail = &sh->todo;
	sh->done_tail = &sh->done;
	pthread_mutex_init(&sh->mu, NULL);
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&sh->cond, &ca);
	pthread_condattr_destroy(&ca);
	if (!sh->bucket || pthread_create(&sh->thread, NULL, worker_main, sh) != 0) {
		pthread_cond_destroy(&sh->cond);
		pthread_mutex_destroy(&sh->mu);
		free(sh->bucket);
		free(sh);
		return NULL;
	}
	sh->started = true;
	srv->shared = sh;
	return sh;
}

/* ---- the session table (compute) ----------------------------------------- */

static uint64_t id_hash(const char *id)
{
	return XXH3_64bits(id, strlen(id));
}

static struct sess *sess_find(struct dp_server *srv, const char *id)
{
	struct dp_shared *sh = srv->shared;
	if (!sh)
		return NULL;
	uint64_t h = id_hash(id);
	for (struct sess *e = sh->bucket[h & (sh->n_bucket - 1)]; e; e = e->next)
		if (e->hash == h && !strcmp(e->id, id))
			return e;
	return NULL;
}

static void sess_clear(struct sess *e)
{
	free(e->pages);
	free(e->segs);
	e->pages = NULL;
	e->segs = NULL;
	e->n_pages = e->n_segs = 0;
	e->pos = 0;
	e->restore = false;
}

/* Twice the buckets once there are twice as many entries (no shrink). */
static void table_grow(struct dp_shared *sh)
{
	size_t nb = sh->n_bucket * 2;
	struct sess **b = calloc(nb, sizeof(*b));
	if (!b)
		return; /* longer chains, still correct */
	for (size_t i = 0; i < sh->n_bucket; i++)
		for (struct sess *e = sh->bucket[i], *next; e; e = next) {
			next = e->next;
			e->next = b[e->hash & (nb - 1)];
			b[e->hash & (nb - 1)] = e;
		}
	free(sh->bucket);
	sh->bucket = b;
	sh->n_bucket = nb;
}

static struct sess *sess_get(struct dp_server *srv, const char *id)
{
	struct sess *e = sess_find(srv, id);
	struct dp_shared *sh = shared_of(srv);
	if (e || !sh)
		return e;
	if (!(e = calloc(1, sizeof(*e))))
		return NULL;
	snprintf(e->id, sizeof(e->id), "%s", id);
	e->hash = id_hash(e->id);
	if (sh->n_sess >= 2 * sh->n_bucket)
		table_grow(sh);
	struct sess **b = &sh->bucket[e->hash & (sh->n_bucket - 1)];
	e->next = *b;
	*b = e;
	sh->n_sess++;
	return e;
}

static void sess_forget(struct dp_server *srv, const char *id)
{
	struct dp_shared *sh = srv->shared;
	if (!sh)
		return;
	uint64_t h = id_hash(id);
	for (struct sess **pp = &sh->bucket[h & (sh->n_bucket - 1)]; *pp; pp = &(*pp)->next)
		if ((*pp)->hash == h && !strcmp((*pp)->id, id)) {
			struct sess *e = *pp;
			*pp = e->next;
			sess_clear(e);
			free(e);
			sh->n_sess--;
			return;
		}
}

void dp_shared_stats(struct dp_server *srv, struct dp_shared_stats *ret)
{
	memset(ret, 0, sizeof(*ret));
	struct dp_shared *sh = srv->shared;
	if (sh) {
		pthread_mutex_lock(&sh->mu);
		*ret = sh->st;
		pthread_mutex_unlock(&sh->mu);
	}
	struct dp_kv_shared_restore_stats rs;
	dp_kv_shared_restore_stats(srv->kv, &rs);
	ret->restores = rs.completed;
	ret->restore_bytes = rs.bytes;
	ret->restore_ns = rs.ns;
	ret->restore_failures = rs.failed;
	ret->recomputes += rs.failed;
}

#define STAT_ADD(sh, field, v)                  \
	do {                                    \
		pthread_mutex_lock(&(sh)->mu);  \
		(sh)->st.field += (v);          \
		pthread_mutex_unlock(&(sh)->mu); \
	} while (0)

/* ---- waiting for the tier (worker) ------------------------------------------- */

static void on_put(void *arg, int res)
{
	struct put_wait *w = arg;
	w->res = res;
	atomic_store_explicit(&w->done, true, memory_order_release);
}

static void put_set(struct put_wait *w, int res)
{
	w->res = res;
	atomic_store_explicit(&w->done, true, memory_order_release);
}

static bool put_done(struct put_wait *w)
{
	return atomic_load_explicit(&w->done, memory_order_acquire);
}

static void reap(struct dp_server *srv)
{
	tlock(srv);
	dp_kv_shared_reap(srv->tier, 0);
	tunlock(srv);
}

static unsigned inflight(struct dp_server *srv)
{
	tlock(srv);
	unsigned n = dp_kv_shared_inflight(srv->tier);
	tunlock(srv);
	return n;
}

/* Wait for w[0..n) until the deadline; then, if any is still out, for every
 * operation in flight (their callbacks name w: librados's op timeout bounds
 * this). Those not done by the deadline read -ETIMEDOUT. */
static void wait_all(struct dp_server *srv, struct put_wait *w, size_t n)
{
	uint64_t deadline = dp_clock_ns() + (uint64_t)srv->cfg.lease_ms * 1000000ull;
	for (;;) {
		size_t left = 0;
		for (size_t i = 0; i < n; i++)
			left += !put_done(&w[i]);
		if (!left || dp_clock_ns() > deadline)
			break;
		struct pollfd p = { .fd = dp_kv_shared_fd(srv->tier), .events = POLLIN };
		poll(&p, 1, 50);
		reap(srv);
	}
	bool late = false;
	for (size_t i = 0; i < n; i++)
		late |= !put_done(&w[i]);
	/* A write that lands meanwhile is durable and counts as done: reporting
	 * a manifest that is in as failed would leave its turn in the manifest
	 * unacknowledged, and the client's retry would repeat it. Another
	 * thread may reap it (the restore, under tier_lock): w is then done. */
	while (late && inflight(srv)) {
		size_t left = 0;
		for (size_t i = 0; i < n; i++)
			left += !put_done(&w[i]);
		if (!left)
			break;
		struct pollfd p = { .fd = dp_kv_shared_fd(srv->tier), .events = POLLIN };
		poll(&p, 1, 100);
		reap(srv);
	}
	for (size_t i = 0; i < n; i++)
		if (!put_done(&w[i]))
			put_set(&w[i], -ETIMEDOUT);
	for (size_t i = 0; i < n; i++)
		dp_shared_health_note(srv, w[i].res);
}

static void seg_name(const char *session, const struct mseg *g, char *name, size_t len)
{
	dp_kv_shared_segment_name(session, g->epoch, g->n, name, len);
}

/* Delete a segment and wait (takeover's collection). */
static int delete_wait(struct dp_server *srv, const char *name)
{
	struct put_wait w = { 0 };
	tlock(srv);
	int ret = dp_kv_shared_delete(srv->tier, name, on_put, &w);
	tunlock(srv);
	if (ret < 0)
		return ret;
	wait_all(srv, &w, 1);
	return w.res;
}

/* A delete's end (any reaping thread, under tier_lock): gone, or kept for
 * a retry with backoff while the list has room and it has tries left. */
static void on_delete(void *arg, int res)
{
	struct del *d = arg;
	struct dp_shared *sh = d->sh;
	pthread_mutex_lock(&sh->mu);
	sh->n_dels--;
	if (res == 0 || res == -ENOENT) {
		sh->st.segments_deleted += res == 0;
		free(d);
	} else if (++d->tries < DEL_TRIES && sh->n_retry < DEL_RETRY_MAX) {
		d->due_ns = dp_clock_ns() + (200000000ull << d->tries);
		d->next = sh->retry;
		sh->retry = d;
		sh->n_retry++;
	} else {
		free(d); /* left to the next takeover's collection */
	}
	pthread_mutex_unlock(&sh->mu);
}

/* Delete without waiting (worker): what no manifest names any more. */
static void delete_name(struct dp_shared *sh, struct del *d)
{
	struct dp_server *srv = sh->srv;
	pthread_mutex_lock(&sh->mu);
	sh->n_dels++;
	pthread_mutex_unlock(&sh->mu);
	tlock(srv);
	int ret = dp_kv_shared_delete(srv->tier, d->name, on_delete, d);
	tunlock(srv);
	if (ret < 0)
		on_delete(d, ret);
}

static void delete_later(struct dp_shared *sh, const char *session, const struct mseg *g)
{
	struct del *d = calloc(1, sizeof(*d));
	if (!d)
		return; /* left to the next takeover's collection */
	d->sh = sh;
	seg_name(session, g, d->name, sizeof(d->name));
	delete_name(sh, d);
}

/* The failed deletes whose time has come, again (worker). */
static void retry_deletes(struct dp_shared *sh)
{
	uint64_t now = dp_clock_ns();
	struct del *due = NULL;
	pthread_mutex_lock(&sh->mu);
	for (struct del **pp = &sh->retry; *pp;) {
		struct del *d = *pp;
		if (d->due_ns > now) {
			pp = &d->next;
			continue;
		}
		*pp = d->next;
		sh->n_retry--;
		d->next = due;
		due = d;
	}
	pthread_mutex_unlock(&sh->mu);
	while (due) {
		struct del *d = due;
		due = d->next;
		delete_name(sh, d);
	}
}

/* The soonest retry's time, or 0 (under sh->mu). */
static uint64_t retry_next_ns(const struct dp_shared *sh)
{
	uint64_t t = 0;
	for (const struct del *d = sh->retry; d; d = d->next)
		if (!t || d->due_ns < t)
			t = d->due_ns;
	return t;
}
/* ---- the manifest ------------------------------------------------------------ */


static size_t pad8(size_t n)
{
	return (n + 7) & ~(size_t)7;
}

static int manifest_parse(const void *buf, size_t len, struct manifest *m, char *why, size_t why_len)
{
	const char *p = buf;
	if (len < sizeof(m->h)) {
		snprintf(why, why_len, "it is %zu bytes, shorter than its header", len);
		return -EBADMSG;
	}
	memcpy(&m->h, p, sizeof(m->h));
	if (m->h.version != MANIFEST_VERSION) {
		snprintf(why, why_len, "it is manifest version %u; this dualpathd reads version %u only "
				       "(a host of another release wrote it)", m->h.version, MANIFEST_VERSION);
		return -EPROTO;
	}
	if (len < sizeof(m->h) + sizeof(m->st)) {
		snprintf(why, why_len, "it is %zu bytes, shorter than its header", len);
		return -EBADMSG;
	}
	memcpy(&m->st, p + sizeof(m->h), sizeof(m->st));
	uint64_t n_tok = m->h.n_tokens;
	if (n_tok > DP_KV_SHARED_MANIFEST_MAX / sizeof(int32_t) || m->st.n_pages > (1u << 24) ||
	    m->st.n_segs > (1u << 24) || m->st.n_garbage > (1u << 24)) {
		snprintf(why, why_len, "its counts are out of range (%llu tokens, %u pages, %u segments)",
			 (unsigned long long)n_tok, m->st.n_pages, m->st.n_segs);
		return -EBADMSG;
	}
	size_t off = sizeof(m->h) + sizeof(m->st);
	m->tokens = p + off;
	off += pad8(n_tok * sizeof(int32_t));
	m->segs = p + off;
	off += (size_t)m->st.n_segs * sizeof(struct mseg);
	m->garbage = p + off;
	off += (size_t)m->st.n_garbage * sizeof(struct mseg);
	m->pages = p + off;
	off += (size_t)m->st.n_pages * sizeof(struct mpage);
	if (off != len) {
		snprintf(why, why_len, "its length %zu does not match its counts (%zu)", len, off);
		return -EBADMSG;
	}
	if (m->st.n_pages && m->st.pos > n_tok) {
		snprintf(why, why_len, "its state stands at %llu, past its %llu tokens",
			 (unsigned long long)m->st.pos, (unsigned long long)n_tok);
		return -EBADMSG;
	}
	for (uint32_t i = 0; i < m->st.n_pages; i++) {
		struct mpage pg;
		memcpy(&pg, m->pages + (size_t)i * sizeof(pg), sizeof(pg));
		if (pg.seg >= m->st.n_segs) {
			snprintf(why, why_len, "page %u names segment %u of %u", i, pg.seg, m->st.n_segs);
			return -EBADMSG;
		}
	}
	return 0;
}

/* The manifest's state becomes what this host knows of the session. */
static int sess_load(struct sess *e, const struct manifest *m)
{
	sess_clear(e);
	if (!m->st.n_pages)
		return 0;
	e->pages = malloc((size_t)m->st.n_pages * sizeof(*e->pages));
	e->segs = malloc((size_t)(m->st.n_segs ? m->st.n_segs : 1) * sizeof(*e->segs));
	if (!e->pages || !e->segs) {
		sess_clear(e);
		return -ENOMEM;
	}
	memcpy(e->pages, m->pages, (size_t)m->st.n_pages * sizeof(*e->pages));
	memcpy(e->segs, m->segs, (size_t)m->st.n_segs * sizeof(*e->segs));
	e->n_pages = m->st.n_pages;
	e->n_segs = m->st.n_segs;
	e->pos = m->st.pos;
	return 0;
}

/* At takeover: delete what the last writer meant to delete, and what it
 * wrote past its last manifest (a crash between its segments and its
 * manifest). Best effort; the worker's. */
static void collect(struct dp_shared *sh, const char *session, const struct manifest *m)
{
	struct dp_server *srv = sh->srv;
	char name[256];
	for (uint32_t i = 0; i < m->st.n_garbage; i++) {
		struct mseg g;
		memcpy(&g, m->garbage + (size_t)i * sizeof(g), sizeof(g));
		seg_name(session, &g, name, sizeof(name));
		if (delete_wait(srv, name) == 0)
			STAT_ADD(sh, segments_collected, 1);
	}
	if (!m->st.epoch)
		return;
	for (uint64_t k = 0; k < GC_PROBE_MAX; k++) {
		struct mseg g = { m->st.epoch, m->st.next_seg + k };
		seg_name(session, &g, name, sizeof(name));
		if (delete_wait(srv, name) < 0)
			break; /* -ENOENT: the writer got no further */
		STAT_ADD(sh, segments_collected, 1);
	}
}

/* ---- the worker's jobs ----------------------------------------------------------- */

/* Give session's lease up (worker): not renewed any more, then released. */
static void release_now(struct dp_server *srv, const char *session)
{
	dp_cluster_drop(srv->cluster, session);
	tlock(srv);
	dp_kv_shared_lease_release(srv->tier, session);
	tunlock(srv);
}

/* Take the lease; unless compute's table is current under the same epoch,
 * read the manifest and collect what its last writer left. */
static void job_claim(struct dp_shared *sh, struct claim *c)
{
	struct dp_server *srv = sh->srv;
	tlock(srv);
	c->ret = dp_kv_shared_lease_take(srv->tier, c->id, &c->epoch, c->owner, sizeof(c->owner));
	tunlock(srv);
	dp_shared_health_note(srv, c->ret);
	if (c->ret < 0)
		return;
	dp_cluster_hold(srv->cluster, c->id); /* renewed from now on by the cluster thread */
	if (c->ret == 0 && c->known && c->known_epoch == c->epoch && !c->stale)
		return; /* ours already: our copy is the newest */
	c->read = true;
	tlock(srv);
	c->mret = dp_kv_shared_manifest_get(srv->tier, c->id, &c->buf, &c->len);
	tunlock(srv);
	if (c->mret == -ENOENT)
		return;
	if (c->mret == 0)
		c->mret = manifest_parse(c->buf, c->len, &c->m, c->bad, sizeof(c->bad));
	if (c->mret < 0) {
		release_now(srv, c->id);
		return;
	}
	collect(sh, c->id, &c->m);
}

/* Submit the new segments' puts. */
static int plan_put(struct dp_server *srv, struct plan *p)
{
	uint32_t n_new = p->n_segs - p->first_new;
	uint32_t per = dp_kv_shared_group_pages(DP_V4_PAGE_BYTES);
	p->puts = calloc(n_new ? n_new : 1, sizeof(*p->puts));
	struct dp_kv_shared_page *pg = malloc(per * sizeof(*pg));
	if (!p->puts || !pg) {
		free(pg);
		return -ENOMEM;
	}
	int ret = 0;
	for (uint32_t g = 0; g < n_new; g++) {
		uint32_t first = g * per, cnt = p->n_fresh - first < per ? p->n_fresh - first : per;
		for (uint32_t k = 0; k < cnt; k++) {
			uint32_t i = p->fresh[first + k];
			pg[k].tag = dp_kv_shared_page_tag(p->pages[i].layer, p->pages[i].kind,
							  p->pages[i].index);
			pg[k].buf = (char *)p->data + (size_t)(first + k) * DP_V4_PAGE_BYTES;
		}
		char name[256];
		seg_name(p->id, &p->segs[p->first_new + g], name, sizeof(name));
		tlock(srv);
		int r = dp_kv_shared_put(srv->tier, name, pg, cnt, DP_V4_PAGE_BYTES, on_put, &p->puts[g]);
		tunlock(srv);
		if (r < 0) {
			put_set(&p->puts[g], r);
			ret = r;
		}
	}
	free(pg);
	return ret;
}

/* A manifest: owner, history, the state (n_pages 0: none), garbage. */
static int manifest_put(struct dp_server *srv, const char *id, const struct manifest_hdr *h,
			const struct manifest_state *st, const int32_t *tokens, const struct mseg *segs,
			const struct mseg *garbage, const struct mpage *pages, struct put_wait *w)
{
	size_t bytes = sizeof(*h) + sizeof(*st) + pad8(h->n_tokens * sizeof(int32_t)) +
		       (size_t)st->n_segs * sizeof(struct mseg) +
		       (size_t)st->n_garbage * sizeof(struct mseg) +
		       (size_t)st->n_pages * sizeof(struct mpage);
	char *buf = calloc(1, bytes);
	if (!buf)
		return -ENOMEM;
	size_t off = 0;
	memcpy(buf + off, h, sizeof(*h));
	off += sizeof(*h);
	memcpy(buf + off, st, sizeof(*st));
	off += sizeof(*st);
	if (h->n_tokens)
		memcpy(buf + off, tokens, h->n_tokens * sizeof(int32_t));
	off += pad8(h->n_tokens * sizeof(int32_t));
	if (st->n_segs)
		memcpy(buf + off, segs, (size_t)st->n_segs * sizeof(struct mseg));
	off += (size_t)st->n_segs * sizeof(struct mseg);
	if (st->n_garbage)
		memcpy(buf + off, garbage, (size_t)st->n_garbage * sizeof(struct mseg));
	off += (size_t)st->n_garbage * sizeof(struct mseg);
	if (st->n_pages)
		memcpy(buf + off, pages, (size_t)st->n_pages * sizeof(struct mpage));
	tlock(srv);
	int ret = dp_kv_shared_manifest_put(srv->tier, id, buf, bytes, on_put, w);
	tunlock(srv);
	free(buf); /* the tier copied it */
	return ret;
}

/* The manifest: history, then (when p->state) the new table. */
static int plan_manifest(struct dp_server *srv, struct plan *p)
{
	struct manifest_hdr h = { .version = MANIFEST_VERSION, .owner_uid = p->owner,
				  .n_tokens = p->n_tok };
	struct manifest_state st = { .pos = p->state ? p->pos : 0,
				     .epoch = p->has_e ? p->epoch : 0,
				     .next_seg = p->has_e ? p->next_seg : 0,
				     .n_pages = p->state ? (uint32_t)p->n : 0,
				     .n_segs = p->state ? p->n_segs : 0, .n_garbage = p->n_garbage };
	return manifest_put(srv, p->id, &h, &st, p->hist, p->segs, p->garbage, p->pages, &p->man);
}

/* The state is not written after all: the manifest names none, and every
 * segment of the last table and of this plan goes (the garbage). */
static void plan_drop_state(struct plan *p)
{
	struct mseg *g = realloc(p->garbage, ((size_t)p->n_segs + p->n_old + 1) * sizeof(*g));
	p->state = false;
	if (!g) {
		p->n_garbage = 0; /* left to the next takeover's collection */
		return;
	}
	p->garbage = g;
	p->n_garbage = 0;
	for (uint32_t k = 0; k < p->n_old; k++)
		g[p->n_garbage++] = p->old_segs[k];
	for (uint32_t k = p->first_new; k < p->n_segs; k++)
		g[p->n_garbage++] = p->segs[k];
}

/* A batch of turns: every put out, then every manifest, then the deletes. */
static void job_commit(struct dp_shared *sh, struct job *j)
{
	struct dp_server *srv = sh->srv;
	struct plan *p = j->plans;
	size_t n = j->n;
	/* 1. the state pages that changed, as new segments: written first */
	uint64_t t0 = dp_clock_ns();
	size_t n_puts = 0;
	for (size_t i = 0; i < n; i++) {
		if (!p[i].state)
			continue;
		if (plan_put(srv, &p[i]) < 0)
			plan_drop_state(&p[i]); /* none now: the last one's segments go */
		n_puts += p[i].n_segs - p[i].first_new;
	}
	/* every put is out: wait on each plan's in turn (each reap takes all) */
	for (size_t i = 0; n_puts && i < n; i++)
		if (p[i].puts)
			wait_all(srv, p[i].puts, p[i].n_segs - p[i].first_new);
	struct dp_shared_stats add = { 0 };
	for (size_t i = 0; i < n; i++) {
		if (!p[i].state)
			continue;
		for (uint32_t g = 0; g < p[i].n_segs - p[i].first_new; g++)
			if (p[i].puts[g].res < 0) {
				plan_drop_state(&p[i]);
				break;
			}
		if (p[i].state) {
			add.state_commits++;
			add.pages_written += p[i].n_fresh;
			add.pages_reused += p[i].n - p[i].n_fresh;
		}
	}
	add.state_ns = dp_clock_ns() - t0;
	/* 2. the manifests, naming them: the turn is acknowledged once in */
	for (size_t i = 0; i < n; i++) {
		int ret = plan_manifest(srv, &p[i]);
		if (ret < 0)
			put_set(&p[i].man, ret);
	}
	for (size_t i = 0; i < n; i++)
		wait_all(srv, &p[i].man, 1);
	/* 3. what no manifest names any more goes */
	for (size_t i = 0; i < n; i++) {
		struct plan *q = &p[i];
		q->res = q->man.res;
		if (q->res < 0) {
			/* not named: this turn's segments go */
			for (uint32_t k = q->first_new; k < q->n_segs; k++)
				delete_later(sh, q->id, &q->segs[k]);
			/* a fenced host forgets (compute drops its table); else the
			 * turn is in this host's journal, perhaps not in the
			 * manifest: the lease goes, and the next claim reads the
			 * manifest and replaces the copy by its history */
			if (q->res != -ECANCELED && q->res != -ENOLCK)
				release_now(srv, q->id);
		} else {
			for (uint32_t k = 0; k < q->n_garbage; k++)
				delete_later(sh, q->id, &q->garbage[k]);
		}
		/* the copies go now: memory in flight is what is being written */
		free(q->data);
		free(q->hist);
		free(q->fresh);
		free(q->puts);
		free(q->garbage);
		free(q->old_segs);
		q->data = q->hist = NULL;
		q->fresh = NULL;
		q->puts = NULL;
		q->garbage = q->old_segs = NULL;
	}
	pthread_mutex_lock(&sh->mu);
	sh->st.state_commits += add.state_commits;
	sh->st.pages_written += add.pages_written;
	sh->st.pages_reused += add.pages_reused;
	sh->st.state_ns += add.state_ns;
	sh->busy_plans -= (uint32_t)n;
	sh->busy_bytes -= j->bytes;
	pthread_cond_broadcast(&sh->cond); /* compute may wait for room */
	pthread_mutex_unlock(&sh->mu);
}

/* A dropped session: the tombstone (fenced), then its segments, then the
 * lease. A tombstone that fails leaves the manifest as it was (the session
 * lives on there; its segments stay named). */
static void job_drop(struct dp_shared *sh, struct job *j)
{
	struct dp_server *srv = sh->srv;
	struct manifest_hdr h = { .version = MANIFEST_VERSION, .owner_uid = j->owner, .n_tokens = 0 };
	struct manifest_state st = { .epoch = j->epoch, .next_seg = j->next_seg,
				     .n_garbage = j->n_segs };
	struct put_wait w = { 0 };
	int ret = manifest_put(srv, j->id, &h, &st, NULL, NULL, j->segs, NULL, &w);
	if (ret < 0)
		put_set(&w, ret);
	wait_all(srv, &w, 1);
	if (w.res == 0)
		for (uint32_t k = 0; k < j->n_segs; k++)
			delete_later(sh, j->id, &j->segs[k]);
	else
		log_warning("session %s: dropped here, but its manifest on the shared tier could "
			    "not be emptied (%s): another host may still take it over",
			    j->id, strerror(-w.res));
	if (w.res != -ECANCELED)
		release_now(srv, j->id);
}

static void job_free(struct job *j)
{
	if (!j)
		return;
	for (size_t i = 0; i < j->n; i++) {
		struct plan *q = &j->plans[i];
		free(q->data);
		free(q->hist);
		free(q->fresh);
		free(q->puts);
		free(q->garbage);
		free(q->old_segs);
		free(q->pages);
		free(q->segs);
	}
	free(j->plans);
	free(j->segs);
	free(j);
}

static void *worker_main(void *arg)
{
	struct dp_shared *sh = arg;
	struct dp_server *srv = sh->srv;
	pthread_mutex_lock(&sh->mu);
	for (;;) {
		if (!sh->todo) {
			if (sh->stop)
				break;
			/* idle: sleep until a job comes or a retry is due */
			uint64_t due = retry_next_ns(sh);
			uint64_t now = dp_clock_ns();
			if (due && due <= now) {
				pthread_mutex_unlock(&sh->mu);
				retry_deletes(sh);
				reap(srv); /* their ends, if nobody else reaps */
				pthread_mutex_lock(&sh->mu);
				continue;
			}
			/* deletes out: come back soon to reap them */
			uint64_t wait = sh->n_dels ? 50000000ull : due ? due - now : 1000000000ull;
			struct timespec ts;
			clock_gettime(CLOCK_MONOTONIC, &ts);
			uint64_t t = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec + wait;
			ts.tv_sec = (time_t)(t / 1000000000ull);
			ts.tv_nsec = (long)(t % 1000000000ull);
			pthread_cond_timedwait(&sh->cond, &sh->mu, &ts);
			if (sh->n_dels) {
				pthread_mutex_unlock(&sh->mu);
				reap(srv);
				pthread_mutex_lock(&sh->mu);
			}
			continue;
		}
		struct job *j = sh->todo;
		sh->todo = j->next;
		if (!sh->todo)
			sh->todo_tail = &sh->todo;
		pthread_mutex_unlock(&sh->mu);
		switch (j->kind) {
		case JOB_COMMIT:
			job_commit(sh, j);
			break;
		case JOB_CLAIM:
			job_claim(sh, j->claim);
			break;
		case JOB_DROP:
			job_drop(sh, j);
			break;
		case JOB_RELEASE:
			release_now(srv, j->id);
			break;
		}
		reap(srv); /* the deletes it started, as far as they are done */
		pthread_mutex_lock(&sh->mu);
		if (j->kind == JOB_COMMIT || j->kind == JOB_CLAIM) {
			j->next = NULL;
			*sh->done_tail = j;
			sh->done_tail = &j->next;
			atomic_fetch_add_explicit(&sh->n_done, 1, memory_order_release);
			pthread_mutex_unlock(&sh->mu);
			dp_waiter_wake(&srv->compute_wake);
			pthread_mutex_lock(&sh->mu);
		} else {
			job_free(j);
		}
	}
	pthread_mutex_unlock(&sh->mu);
	return NULL;
}

/* Hand j to the worker (compute). */
static void job_push(struct dp_shared *sh, struct job *j)
{
	pthread_mutex_lock(&sh->mu);
	j->next = NULL;
	*sh->todo_tail = j;
	sh->todo_tail = &j->next;
	pthread_cond_broadcast(&sh->cond);
	pthread_mutex_unlock(&sh->mu);
}

/* Release session's lease off this thread (compute): not renewed from now. */
static void release(struct dp_server *srv, const char *session)
{
	dp_cluster_drop(srv->cluster, session);
	struct dp_shared *sh = shared_of(srv);
	struct job *j = sh ? calloc(1, sizeof(*j)) : NULL;
	if (!j)
		return; /* it expires by itself within lease_ms */
	j->kind = JOB_RELEASE;
	snprintf(j->id, sizeof(j->id), "%s", session);
	job_push(sh, j);
}
/* ---- claim (compute) ------------------------------------------------------------ */

static struct claim *claim_find(struct dp_shared *sh, const char *id)
{
	for (struct claim *c = sh ? sh->claims : NULL; c; c = c->next)
		if (!strcmp(c->id, id))
			return c;
	return NULL;
}

static void claim_free(struct dp_shared *sh, struct claim *c)
{
	for (struct claim **pp = &sh->claims; *pp; pp = &(*pp)->next)
		if (*pp == c) {
			*pp = c->next;
			break;
		}
	free(c->buf);
	free(c);
}

bool dp_shared_claim_pending(struct dp_server *srv, const char *session)
{
	struct claim *c = srv->tier && session[0] ? claim_find(srv->shared, session) : NULL;
	return c && !c->ready;
}

/* What the worker's take found becomes this host's view of the session. */
static int claim_finish(struct dp_server *srv, struct claim *c, char *why, size_t why_len)
{
	const char *session = c->id;
	int ret = c->ret;
	if (ret == -EBUSY) {
		char where[3 * DP_KV_SHARED_ADDR_MAX];
		dp_cluster_describe(srv->cluster, c->owner[0] ? c->owner : "?", where, sizeof(where));
		snprintf(why, why_len, "session %s is served by host %s: its lease is live; send it "
				       "there", session, where);
		return -EBUSY;
	}
	if (ret < 0) {
		snprintf(why, why_len, "session %s: the shared tier did not answer the lease: %s",
			 session, strerror(-ret));
		return ret;
	}
	if (c->read && c->mret < 0 && c->mret != -ENOENT) { /* the worker released it */
		sess_forget(srv, session);
		snprintf(why, why_len, "session %s: its manifest on the shared tier cannot be read: %s",
			 session, c->bad[0] ? c->bad : strerror(-c->mret));
		return c->mret;
	}
	uint64_t epoch = c->epoch;
	struct sess *e = sess_get(srv, session);
	if (!e) {
		release(srv, session);
		snprintf(why, why_len, "session %s: out of memory", session);
		return -ENOMEM;
	}
	if (!c->read && e->epoch == epoch && !e->stale)
		return 0; /* ours already: our copy is the newest */
	/* Newly ours (or ours with a copy that may hold a turn its manifest
	 * missed): the manifest is the truth, if there is one. Segments are
	 * named under the epoch from 0; under the same epoch the counter goes
	 * on (the names the manifest uses are never written again). */
	bool stale = e->stale;
	e->stale = false;
	if (e->epoch != epoch) {
		e->epoch = epoch;
		e->next_seg = 0;
	}
	sess_clear(e);
	/* a tombstone (the session was dropped) reads as no manifest, but
	 * whatever copy this host kept is not the session's any more */
	bool tomb = c->mret == 0 && c->m.h.n_tokens == 0 && !c->m.st.n_pages;
	if (!c->read || c->mret == -ENOENT || tomb) {
		/* no turn of it was ever made durable (or it was dropped): a copy
		 * left by a failed turn is not the session's */
		struct dp_kv_session *s = NULL;
		if (tomb && c->m.st.epoch == epoch && e->next_seg < c->m.st.next_seg)
			e->next_seg = c->m.st.next_seg;
		if ((stale || tomb) && dp_kv_session_find(srv->kv, session, &s) == 0 &&
		    (ret = dp_kv_session_drop(srv->kv, s)) < 0) {
			release(srv, session);
			snprintf(why, why_len, "session %s: cannot drop its unacknowledged copy: %s",
				 session, strerror(-ret));
			return ret;
		}
		return 0;
	}
	const struct manifest *m = &c->m;
	if ((ret = sess_load(e, m)) < 0)
		goto fail;
	if (m->st.epoch == epoch && e->next_seg < m->st.next_seg)
		e->next_seg = m->st.next_seg;
	STAT_ADD(srv->shared, takeovers, 1);
	uint64_t n_tok = m->h.n_tokens;
	struct dp_kv_session *s = NULL;
	if (dp_kv_session_find(srv->kv, session, &s) == 0 && dp_kv_session_len(s) == n_tok &&
	    !memcmp(dp_kv_session_history(s), m->tokens, n_tok * sizeof(int32_t)))
		return 0; /* our copy is the manifest's: our state serves */
	/* Ours is missing or stale: replace it by the manifest's history. */
	if (s && (ret = dp_kv_session_drop(srv->kv, s)) < 0)
		goto fail;
	if ((ret = dp_kv_session_create_owned(srv->kv, session, m->h.owner_uid, &s)) < 0)
		goto fail;
	int32_t chunk[1024];
	for (uint64_t off = 0; off < n_tok;) {
		uint32_t n = n_tok - off > 1024 ? 1024 : (uint32_t)(n_tok - off);
		memcpy(chunk, m->tokens + off * sizeof(int32_t), n * sizeof(int32_t));
		if ((ret = dp_kv_session_append(srv->kv, s, chunk, n)) < 0)
			goto fail;
		off += n;
	}
	if ((ret = dp_kv_commit(srv->kv)) < 0)
		goto fail;
	if (e->n_pages)
		e->restore = true;
	else
		STAT_ADD(srv->shared, recomputes, 1);
	return 1;
fail:
	sess_forget(srv, session);
	release(srv, session);
	snprintf(why, why_len, "session %s: cannot take it over from the shared tier: %s", session,
		 strerror(-ret));
	return ret;
}

int dp_shared_claim(struct dp_server *srv, const char *session, char *why, size_t why_len)
{
	if (!session[0])
		return 0;
	if (!srv->tier) {
		if (!srv->shared_configured)
			return 0;
		/* configured but not reached at start: a turn served here would
		 * be acknowledged without being durable on the tier (and a session
		 * another host holds would diverge), so as when the tier goes
		 * down later, sessions wait; one-off requests are served */
		snprintf(why, why_len, "session %s: the shared tier (rados pool %s) could not be reached "
			 "when dualpathd started (see its log): sessions are not served until a restart "
			 "reaches it; requests without a session are", session, srv->cfg.rados_pool);
		return -EHOSTDOWN;
	}
	struct dp_shared *sh = shared_of(srv);
	if (!sh) {
		snprintf(why, why_len, "session %s: out of memory", session);
		return -ENOMEM;
	}
	/* a tier known down: refuse at once, not after an op timeout */
	int ret = dp_shared_health_check(srv, session, why, why_len);
	if (ret < 0)
		return ret;
	struct claim *c = claim_find(sh, session);
	if (c && !c->ready) {
		snprintf(why, why_len, "session %s: its lease is being taken", session);
		return -EINPROGRESS;
	}
	/* held and renewed by the cluster thread: ours, no round trip */
	struct sess *held = sess_find(srv, session);
	if (!c && held && !held->stale && dp_cluster_touch(srv->cluster, session) == 0)
		return 0;
	/* A take answered: the answer of this request (it waited for it), if
	 * it is recent; one that waited unclaimed (its request was cancelled)
	 * longer than a lease, or whose lease was lost since, is asked again. */
	if (c) {
		uint64_t age = dp_clock_ns() - c->ready_ns;
		bool took = c->ret >= 0 && (!c->read || c->mret == 0 || c->mret == -ENOENT);
		int t = took ? dp_cluster_touch(srv->cluster, session) : 0;
		if (age <= (uint64_t)srv->cfg.lease_ms * 1000000ull && t != -ENOLCK && t != -ENOENT) {
			ret = claim_finish(srv, c, why, why_len);
			claim_free(sh, c);
			return ret;
		}
		claim_free(sh, c);
	}
	/* the round trip goes to the worker; the request waits for it */
	c = calloc(1, sizeof(*c));
	struct job *j = calloc(1, sizeof(*j));
	if (!c || !j) {
		free(c);
		free(j);
		snprintf(why, why_len, "session %s: out of memory", session);
		return -ENOMEM;
	}
	snprintf(c->id, sizeof(c->id), "%s", session);
	if (held) {
		c->known = true;
		c->known_epoch = held->epoch;
		c->stale = held->stale;
	}
	c->next = sh->claims;
	sh->claims = c;
	j->kind = JOB_CLAIM;
	j->claim = c;
	job_push(sh, j);
	snprintf(why, why_len, "session %s: its lease is being taken", session);
	return -EINPROGRESS;
}

int dp_shared_acquire(struct dp_server *srv, struct dp_kv_session *s, struct dp_v4_seq **ret_seq)
{
	if (!srv->tier)
		return 0;
	struct sess *e = sess_find(srv, dp_kv_session_id(s));
	if (!e || !e->restore)
		return 0;
	e->restore = false;
	struct dp_v4_seq *seq;
	int ret = dp_kv_session_acquire(srv->kv, s, &seq);
	if (ret < 0)
		return ret;
	char(*names)[256] = calloc(e->n_segs ? e->n_segs : 1, sizeof(*names));
	const char **np = calloc(e->n_segs ? e->n_segs : 1, sizeof(*np));
	struct dp_kv_shared_loc *locs = calloc(e->n_pages ? e->n_pages : 1, sizeof(*locs));
	ret = -ENOMEM;
	if (names && np && locs) {
		for (uint32_t i = 0; i < e->n_segs; i++) {
			seg_name(e->id, &e->segs[i], names[i], sizeof(names[i]));
			np[i] = names[i];
		}
		for (uint32_t i = 0; i < e->n_pages; i++)
			locs[i] = (struct dp_kv_shared_loc){ e->pages[i].layer, e->pages[i].kind,
							     e->pages[i].index, e->pages[i].seg,
							     e->pages[i].slot };
		ret = dp_kv_session_restore_shared(srv->kv, s, srv->tier, &srv->tier_lock, e->pos, np,
						   e->n_segs, locs, e->n_pages, &seq);
	}
	free(names);
	free(np);
	free(locs);
	if (ret < 0) {
		/* recomputed from the history: seq is the fresh one acquired */
		log_warning("session %s: its state on the shared tier cannot be restored (%s); "
			    "recomputing it from its history", e->id, strerror(-ret));
		STAT_ADD(srv->shared, recomputes, 1);
	}
	*ret_seq = seq;
	return 1;
}

int dp_shared_renew(struct dp_server *srv, const char *const *sessions, size_t n)
{
	if (!srv->tier)
		return 0;
	/* the cluster thread renews; compute only says what is in use */
	dp_cluster_active(srv->cluster, sessions, n);
	int lost = 0;
	for (size_t i = 0; i < n; i++)
		lost += dp_cluster_touch(srv->cluster, sessions[i]) == -ENOLCK;
	return lost;
}

/* ---- commit (compute's part) ----------------------------------------------------- */

static int key_cmp(const struct mpage *a, const struct dp_v4_page_ref *b)
{
	if (a->layer != b->layer)
		return a->layer < b->layer ? -1 : 1;
	if (a->kind != b->kind)
		return a->kind < b->kind ? -1 : 1;
	if (a->index != b->index)
		return a->index < b->index ? -1 : 1;
	return 0;
}

/* Which pages are new or changed (written in new segments, their bytes
 * kept) and which the last manifest's segments still hold (named again). */
static int plan_state(struct dp_server *srv, struct dp_kv_session *s, struct sess *e,
		      struct plan *p)
{
	struct dp_v4_page_ref *refs = NULL;
	int ret = dp_kv_session_state_copy(srv->kv, s, &p->pos, &refs, &p->data, &p->n);
	if (ret < 0)
		return ret;
	uint32_t per = dp_kv_shared_group_pages(DP_V4_PAGE_BYTES);
	uint32_t *map = malloc((e->n_segs ? e->n_segs : 1) * sizeof(*map));
	p->pages = calloc(p->n ? p->n : 1, sizeof(*p->pages));
	p->fresh = malloc((p->n ? p->n : 1) * sizeof(*p->fresh));
	p->segs = malloc((e->n_segs + p->n / per + 1) * sizeof(*p->segs));
	p->garbage = malloc((e->n_segs ? e->n_segs : 1) * sizeof(*p->garbage));
	if (!map || !p->pages || !p->fresh || !p->segs || !p->garbage) {
		free(map);
		free(refs);
		return -ENOMEM;
	}
	for (uint32_t k = 0; k < e->n_segs; k++)
		map[k] = UINT32_MAX;
	size_t j = 0; /* both lists are in dp_v4_seq_pages order (layer, kind, index) */
	for (size_t i = 0; i < p->n; i++) {
		struct mpage *pg = &p->pages[i];
		char *bytes = (char *)p->data + i * DP_V4_PAGE_BYTES;
		*pg = dp_shared_mpage(&refs[i], bytes);
		while (j < e->n_pages && key_cmp(&e->pages[j], &refs[i]) < 0)
			j++;
		if (j < e->n_pages && key_cmp(&e->pages[j], &refs[i]) == 0 &&
		    e->pages[j].sum[0] == pg->sum[0] && e->pages[j].sum[1] == pg->sum[1]) {
			uint32_t old = e->pages[j].seg;
			if (map[old] == UINT32_MAX) {
				map[old] = p->n_segs;
				p->segs[p->n_segs++] = e->segs[old];
			}
			pg->seg = map[old];
			pg->slot = e->pages[j].slot;
		} else {
			/* kept: the fresh pages' bytes, packed in fresh order */
			if (p->n_fresh != i)
				memcpy((char *)p->data + (size_t)p->n_fresh * DP_V4_PAGE_BYTES, bytes,
				       DP_V4_PAGE_BYTES);
			p->fresh[p->n_fresh++] = (uint32_t)i;
		}
	}
	free(refs);
	/* only what is written is held while the worker writes it (a put
	 * copies its pages: the shrunk buffer need not stay aligned) */
	if (p->n_fresh < p->n) {
		void *d = realloc(p->data, (p->n_fresh ? p->n_fresh : 1) * (size_t)DP_V4_PAGE_BYTES);
		if (d)
			p->data = d;
	}
	p->first_new = p->n_segs;
	for (uint32_t k = 0; k < p->n_fresh; k++) {
		if (k % per == 0)
			p->segs[p->n_segs++] = (struct mseg){ e->epoch, e->next_seg++ };
		p->pages[p->fresh[k]].seg = p->n_segs - 1;
		p->pages[p->fresh[k]].slot = k % per;
	}
	for (uint32_t k = 0; k < e->n_segs; k++)
		if (map[k] == UINT32_MAX)
			p->garbage[p->n_garbage++] = e->segs[k];
	free(map);
	p->state = true;
	return 0;
}

/* The plan of session s's turn: copies of all the worker writes. */
static int plan_make(struct dp_server *srv, struct dp_kv_session *s, void *tag, struct plan *p)
{
	const char *id = dp_kv_session_id(s);
	p->tag = tag;
	snprintf(p->id, sizeof(p->id), "%s", id);
	p->owner = dp_kv_session_owner(s);
	p->n_tok = dp_kv_session_len(s);
	p->hist = malloc((p->n_tok ? p->n_tok : 1) * sizeof(int32_t));
	if (!p->hist)
		return -ENOMEM;
	if (p->n_tok)
		memcpy(p->hist, dp_kv_session_history(s), p->n_tok * sizeof(int32_t));
	struct sess *e = sess_find(srv, id);
	if (!e)
		return 0; /* no state this host knows of: the manifest names none */
	p->has_e = true;
	p->old_segs = malloc((e->n_segs ? e->n_segs : 1) * sizeof(*p->old_segs));
	if (!p->old_segs)
		return -ENOMEM;
	if (e->n_segs) /* e->segs is NULL without any */
		memcpy(p->old_segs, e->segs, (size_t)e->n_segs * sizeof(*p->old_segs));
	p->n_old = e->n_segs;
	if (plan_state(srv, s, e, p) < 0) {
		/* none now: the last one's segments go */
		free(p->data);
		free(p->pages);
		free(p->fresh);
		free(p->segs);
		p->data = NULL;
		p->pages = NULL;
		p->fresh = NULL;
		p->segs = NULL;
		p->n = p->n_segs = p->first_new = p->n_fresh = p->n_garbage = 0;
		plan_drop_state(p);
	}
	p->epoch = e->epoch;
	p->next_seg = e->next_seg;
	return 0;
}

int dp_shared_commit_start(struct dp_server *srv, struct dp_kv_session *const *sessions,
			   void *const *tags, size_t n)
{
	if (!srv->tier || n == 0)
		return 0;
	struct dp_shared *sh = shared_of(srv);
	struct job *j = sh ? calloc(1, sizeof(*j)) : NULL;
	if (j)
		j->plans = calloc(n, sizeof(*j->plans));
	if (!j || !j->plans) {
		free(j);
		return -ENOMEM;
	}
	j->kind = JOB_COMMIT;
	j->n = n;
	for (size_t i = 0; i < n; i++) {
		struct plan *p = &j->plans[i];
		if (plan_make(srv, sessions[i], tags[i], p) < 0) {
			job_free(j);
			return -ENOMEM;
		}
		j->bytes += (size_t)p->n_fresh * DP_V4_PAGE_BYTES;
	}
	/* Bounded memory: while this batch would pass the caps, compute waits
	 * for the worker to finish earlier ones (never when none is out). */
	pthread_mutex_lock(&sh->mu);
	while (sh->busy_plans &&
	       (sh->busy_plans + n > DP_SHARED_COMMITS_MAX ||
		sh->busy_bytes + j->bytes > DP_SHARED_COMMIT_BYTES_MAX))
		pthread_cond_wait(&sh->cond, &sh->mu);
	sh->busy_plans += (uint32_t)n;
	sh->busy_bytes += j->bytes;
	pthread_mutex_unlock(&sh->mu);
	sh->n_commit_jobs++;
	job_push(sh, j);
	return 0;
}

/* A commit's end (compute): the session's table becomes the new one, or
 * the session is forgotten (fenced) or marked stale (its manifest may miss
 * the turn its journal holds). */
static void commit_finish(struct dp_server *srv, struct plan *q)
{
	struct sess *e = sess_find(srv, q->id);
	if (q->res == -ECANCELED || q->res == -ENOLCK) {
		sess_forget(srv, q->id);
		return;
	}
	if (!e)
		return;
	if (q->res < 0) {
		e->stale = true; /* the worker released the lease */
		return;
	}
	if (!q->has_e)
		return;
	sess_clear(e);
	if (q->state) {
		e->pages = q->pages;
		e->n_pages = (uint32_t)q->n;
		e->segs = q->segs;
		e->n_segs = q->n_segs;
		e->pos = q->pos;
		q->pages = NULL;
		q->segs = NULL;
	}
}

size_t dp_shared_poll(struct dp_server *srv, struct dp_shared_done *ret, size_t max)
{
	struct dp_shared *sh = srv->shared;
	if (!sh || !atomic_load_explicit(&sh->n_done, memory_order_acquire))
		return 0;
	size_t got = 0;
	pthread_mutex_lock(&sh->mu);
	for (struct job **pp = &sh->done; *pp;) {
		struct job *j = *pp;
		if (j->kind == JOB_COMMIT && got + j->n > max) {
			pp = &j->next;
			continue; /* the next call takes it */
		}
		*pp = j->next;
		if (!*pp)
			sh->done_tail = pp;
		atomic_fetch_sub_explicit(&sh->n_done, 1, memory_order_relaxed);
		pthread_mutex_unlock(&sh->mu);
		if (j->kind == JOB_CLAIM) {
			j->claim->ready = true;
			j->claim->ready_ns = dp_clock_ns();
		} else {
			for (size_t i = 0; i < j->n; i++) {
				commit_finish(srv, &j->plans[i]);
				ret[got++] = (struct dp_shared_done){ j->plans[i].tag, j->plans[i].res };
			}
			sh->n_commit_jobs--;
		}
		job_free(j);
		pthread_mutex_lock(&sh->mu);
		pp = &sh->done; /* the list may have grown meanwhile: from its head */
	}
	pthread_mutex_unlock(&sh->mu);
	return got;
}

bool dp_shared_news(const struct dp_server *srv)
{
	const struct dp_shared *sh = srv->shared;
	return sh && atomic_load_explicit(&sh->n_done, memory_order_acquire) != 0;
}

void dp_shared_drop(struct dp_server *srv, const char *session)
{
	struct dp_shared *sh = srv->shared;
	if (!srv->tier || !sh || !session[0])
		return;
	struct claim *c = claim_find(sh, session);
	if (c && c->ready)
		claim_free(sh, c); /* a pending one stays: the worker fills it */
	struct sess *e = sess_find(srv, session);
	if (!e)
		return;
	/* only the holder writes the tombstone; a session held elsewhere, or
	 * whose lease this host lost, is not this host's to delete */
	struct job *j = dp_cluster_holds(srv->cluster, session) ? calloc(1, sizeof(*j)) : NULL;
	if (j && (j->segs = malloc((e->n_segs ? e->n_segs : 1) * sizeof(*j->segs)))) {
		struct dp_kv_session *s;
		j->kind = JOB_DROP;
		snprintf(j->id, sizeof(j->id), "%s", session);
		j->owner = dp_kv_session_find(srv->kv, session, &s) == 0 ? dp_kv_session_owner(s)
									 : DP_KV_OWNER_NONE;
		j->epoch = e->epoch;
		j->next_seg = e->next_seg;
		if (e->n_segs)
			memcpy(j->segs, e->segs, (size_t)e->n_segs * sizeof(*j->segs));
		j->n_segs = e->n_segs;
		job_push(sh, j);
	} else {
		free(j);
	}
	sess_forget(srv, session);
}

void dp_shared_fini(struct dp_server *srv)
{
	struct dp_shared *sh = srv->shared;
	if (!sh)
		return;
	if (sh->started) { /* the worker ends what it was handed, then stops */
		pthread_mutex_lock(&sh->mu);
		sh->stop = true;
		pthread_cond_broadcast(&sh->cond);
		pthread_mutex_unlock(&sh->mu);
		pthread_join(sh->thread, NULL);
	}
	/* deletes still out: their callbacks run if they end now, else never
	 * (the tier's close does not run them) */
	uint64_t until = dp_clock_ns() + 2000000000ull;
	while (sh->n_dels && dp_clock_ns() < until) {
		struct pollfd p = { .fd = dp_kv_shared_fd(srv->tier), .events = POLLIN };
		poll(&p, 1, 50);
		reap(srv);
	}
	while (sh->retry) {
		struct del *d = sh->retry;
		sh->retry = d->next;
		free(d);
	}
	while (sh->done) {
		struct job *j = sh->done;
		sh->done = j->next;
		job_free(j);
	}
	while (sh->claims)
		claim_free(sh, sh->claims);
	for (size_t i = 0; i < sh->n_bucket; i++)
		while (sh->bucket[i]) {
			struct sess *e = sh->bucket[i];
			sh->bucket[i] = e->next;
			sess_clear(e);
			free(e);
		}
	free(sh->bucket);
	pthread_cond_destroy(&sh->cond);
	pthread_mutex_destroy(&sh->mu);
	free(sh);
	srv->shared = NULL;
}
