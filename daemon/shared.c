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
 * it is in (best effort); the manifest lists them, and the writer's next
 * segment number, so that what a crash leaves is found: a host taking the
 * session over deletes the listed ones and probes the writer's numbers
 * from the next one up (segments written for a manifest that never came).
 * What still leaks: the deletes that failed (not retried) and the segments
 * of a host that crashed before its first manifest of the session.
 *
 * A host that takes a session anew reads the manifest; when its own copy
 * differs (it never had the session, or an older turn of it) it replaces
 * its copy by the manifest's history, and dp_shared_acquire restores the
 * state layer by layer from the tier (kvcache/restore-shared.c) while the
 * first step runs; a page that fails its checks, or a missing segment,
 * poisons that restore and the state is recomputed from the history, so
 * greedy output continues exactly as on the host that served before.
 *
 * Leases this host holds are renewed by the cluster thread (daemon/
 * cluster.c): a request on a session held here is admitted without a round
 * trip. The lease take of a session not held yet and the segment and
 * manifest waits of a finished turn are still synchronous on the compute
 * thread. The tier handle is one thread's at a time: every use here (and in
 * the cluster thread) holds srv->tier_lock.
 */
#include "daemon/shared.h"
#include "daemon/cluster.h"
#include "daemon/shared-health.h"
#include "daemon/shared-internal.h"

#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "base/clock.h"
#include "daemon/log.h"
#include "kvcache/tier.h"

#define MANIFEST_VERSION 2
#define GC_PROBE_MAX 4096 /* segments probed past a manifest's next number */

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

/* A session this host writes on the tier: what its last manifest says. */
struct sess {
	struct sess *next;
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

struct dp_shared {
	struct sess *list;
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

static struct dp_shared *shared_of(struct dp_server *srv)
{
	if (!srv->shared)
		srv->shared = calloc(1, sizeof(*srv->shared));
	return srv->shared;
}

static struct sess *sess_find(struct dp_server *srv, const char *id)
{
	struct dp_shared *sh = srv->shared;
	for (struct sess *e = sh ? sh->list : NULL; e; e = e->next)
		if (!strcmp(e->id, id))
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

static struct sess *sess_get(struct dp_server *srv, const char *id)
{
	struct sess *e = sess_find(srv, id);
	struct dp_shared *sh = shared_of(srv);
	if (e || !sh)
		return e;
	if (!(e = calloc(1, sizeof(*e))))
		return NULL;
	snprintf(e->id, sizeof(e->id), "%s", id);
	e->next = sh->list;
	sh->list = e;
	return e;
}

static void sess_forget(struct dp_server *srv, const char *id)
{
	struct dp_shared *sh = srv->shared;
	for (struct sess **pp = sh ? &sh->list : NULL; pp && *pp; pp = &(*pp)->next)
		if (!strcmp((*pp)->id, id)) {
			struct sess *e = *pp;
			*pp = e->next;
			sess_clear(e);
			free(e);
			return;
		}
}

void dp_shared_fini(struct dp_server *srv)
{
	struct dp_shared *sh = srv->shared;
	if (!sh)
		return;
	while (sh->list) {
		struct sess *e = sh->list;
		sh->list = e->next;
		sess_clear(e);
		free(e);
	}
	free(sh);
	srv->shared = NULL;
}

void dp_shared_stats(struct dp_server *srv, struct dp_shared_stats *ret)
{
	memset(ret, 0, sizeof(*ret));
	if (srv->shared)
		*ret = srv->shared->st;
	struct dp_kv_shared_restore_stats rs;
	dp_kv_shared_restore_stats(srv->kv, &rs);
	ret->restores = rs.completed;
	ret->restore_bytes = rs.bytes;
	ret->restore_ns = rs.ns;
	ret->restore_failures = rs.failed;
	ret->recomputes += rs.failed;
}

/* ---- waiting for the tier ------------------------------------------------ */

struct put_wait {
	int res;
	bool done;
};

static void on_put(void *arg, int res)
{
	struct put_wait *w = arg;
	w->res = res;
	w->done = true;
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
			left += !w[i].done;
		if (!left || dp_clock_ns() > deadline)
			break;
		struct pollfd p = { .fd = dp_kv_shared_fd(srv->tier), .events = POLLIN };
		poll(&p, 1, 50);
		reap(srv);
	}
	bool late = false;
	for (size_t i = 0; i < n; i++)
		late |= !w[i].done;
	/* A write that lands meanwhile is durable and counts as done: reporting
	 * a manifest that is in as failed would leave its turn in the manifest
	 * unacknowledged, and the client's retry would repeat it. */
	while (late && inflight(srv)) {
		struct pollfd p = { .fd = dp_kv_shared_fd(srv->tier), .events = POLLIN };
		poll(&p, 1, 100);
		reap(srv);
	}
	for (size_t i = 0; i < n; i++)
		if (!w[i].done)
			w[i] = (struct put_wait){ .res = -ETIMEDOUT, .done = true };
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

/* Delete without waiting: what no manifest names any more. */
static void delete_later(struct dp_server *srv, const char *session, const struct mseg *g)
{
	char name[256];
	seg_name(session, g, name, sizeof(name));
	tlock(srv);
	if (dp_kv_shared_delete(srv->tier, name, NULL, NULL) == 0)
		srv->shared->st.segments_deleted++;
	tunlock(srv);
}

/* ---- the manifest ------------------------------------------------------------ */

struct manifest {
	struct manifest_hdr h;
	struct manifest_state st;
	const char *tokens; /* n_tokens int32, unaligned */
	const char *segs, *garbage, *pages;
};

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
 * manifest). Best effort. */
static void collect(struct dp_server *srv, const char *session, const struct manifest *m)
{
	char name[256];
	for (uint32_t i = 0; i < m->st.n_garbage; i++) {
		struct mseg g;
		memcpy(&g, m->garbage + (size_t)i * sizeof(g), sizeof(g));
		seg_name(session, &g, name, sizeof(name));
		if (delete_wait(srv, name) == 0)
			srv->shared->st.segments_collected++;
	}
	if (!m->st.epoch)
		return;
	for (uint64_t k = 0; k < GC_PROBE_MAX; k++) {
		struct mseg g = { m->st.epoch, m->st.next_seg + k };
		seg_name(session, &g, name, sizeof(name));
		if (delete_wait(srv, name) < 0)
			break; /* -ENOENT: the writer got no further */
		srv->shared->st.segments_collected++;
	}
}

/* ---- claim ------------------------------------------------------------------- */

static void release(struct dp_server *srv, const char *session)
{
	dp_cluster_drop(srv->cluster, session); /* not renewed any more */
	tlock(srv);
	dp_kv_shared_lease_release(srv->tier, session);
	tunlock(srv);
}

int dp_shared_claim(struct dp_server *srv, const char *session, char *why, size_t why_len)
{
	struct dp_kv_shared *t = srv->tier;
	if (!t || !session[0])
		return 0;
	if (!shared_of(srv)) {
		snprintf(why, why_len, "session %s: out of memory", session);
		return -ENOMEM;
	}
	uint64_t epoch;
	char owner[DP_KV_SHARED_HOST_ID_MAX + 1] = "";
	/* a tier known down: refuse at once, not after an op timeout */
	int ret = dp_shared_health_check(srv, session, why, why_len);
	if (ret < 0)
		return ret;
	/* held and renewed by the cluster thread: ours, no round trip */
	struct sess *held = sess_find(srv, session);
	if (held && !held->stale && dp_cluster_touch(srv->cluster, session) == 0)
		return 0;
	tlock(srv);
	ret = dp_kv_shared_lease_take(t, session, &epoch, owner, sizeof(owner));
	tunlock(srv);
	dp_shared_health_note(srv, ret);
	if (ret == -EBUSY) {
		char where[3 * DP_KV_SHARED_ADDR_MAX];
		dp_cluster_describe(srv->cluster, owner[0] ? owner : "?", where, sizeof(where));
		snprintf(why, why_len, "session %s is served by host %s: its lease is live; send it "
				       "there", session, where);
		return -EBUSY;
	}
	if (ret < 0) {
		snprintf(why, why_len, "session %s: the shared tier did not answer the lease: %s",
			 session, strerror(-ret));
		return ret;
	}
	dp_cluster_hold(srv->cluster, session); /* renewed from now on by the cluster thread */
	struct sess *e = sess_get(srv, session);
	if (!e) {
		release(srv, session);
		snprintf(why, why_len, "session %s: out of memory", session);
		return -ENOMEM;
	}
	if (ret == 0 && e->epoch == epoch && !e->stale)
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
	void *buf = NULL;
	size_t len = 0;
	tlock(srv);
	ret = dp_kv_shared_manifest_get(t, session, &buf, &len);
	tunlock(srv);
	if (ret == -ENOENT) {
		/* no turn of it was ever made durable: a copy left by a failed
		 * one is not the session's */
		struct dp_kv_session *s = NULL;
		if (stale && dp_kv_session_find(srv->kv, session, &s) == 0 &&
		    (ret = dp_kv_session_drop(srv->kv, s)) < 0) {
			release(srv, session);
			snprintf(why, why_len, "session %s: cannot drop its unacknowledged copy: %s",
				 session, strerror(-ret));
			return ret;
		}
		return 0;
	}
	struct manifest m;
	char bad[256] = "";
	if (ret == 0)
		ret = manifest_parse(buf, len, &m, bad, sizeof(bad));
	if (ret < 0) {
		free(buf);
		sess_forget(srv, session);
		release(srv, session);
		snprintf(why, why_len, "session %s: its manifest on the shared tier cannot be read: %s",
			 session, bad[0] ? bad : strerror(-ret));
		return ret;
	}
	collect(srv, session, &m);
	if ((ret = sess_load(e, &m)) < 0)
		goto fail;
	if (m.st.epoch == epoch && e->next_seg < m.st.next_seg)
		e->next_seg = m.st.next_seg;
	srv->shared->st.takeovers++;
	uint64_t n_tok = m.h.n_tokens;
	struct dp_kv_session *s = NULL;
	if (dp_kv_session_find(srv->kv, session, &s) == 0 && dp_kv_session_len(s) == n_tok &&
	    !memcmp(dp_kv_session_history(s), m.tokens, n_tok * sizeof(int32_t))) {
		free(buf);
		return 0; /* our copy is the manifest's: our state serves */
	}
	/* Ours is missing or stale: replace it by the manifest's history. */
	if (s && (ret = dp_kv_session_drop(srv->kv, s)) < 0)
		goto fail;
	if ((ret = dp_kv_session_create_owned(srv->kv, session, m.h.owner_uid, &s)) < 0)
		goto fail;
	int32_t chunk[1024];
	for (uint64_t off = 0; off < n_tok;) {
		uint32_t n = n_tok - off > 1024 ? 1024 : (uint32_t)(n_tok - off);
		memcpy(chunk, m.tokens + off * sizeof(int32_t), n * sizeof(int32_t));
		if ((ret = dp_kv_session_append(srv->kv, s, chunk, n)) < 0)
			goto fail;
		off += n;
	}
	if ((ret = dp_kv_commit(srv->kv)) < 0)
		goto fail;
	free(buf);
	if (e->n_pages)
		e->restore = true;
	else
		srv->shared->st.recomputes++;
	return 1;
fail:
	free(buf);
	sess_forget(srv, session);
	release(srv, session);
	snprintf(why, why_len, "session %s: cannot take it over from the shared tier: %s", session,
		 strerror(-ret));
	return ret;
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
		srv->shared->st.recomputes++;
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

/* ---- commit ------------------------------------------------------------------ */

/* One session's turn: its new state table, the segments it writes, the
 * manifest. */
struct plan {
	struct dp_kv_session *s;
	struct sess *e;
	bool state;
	uint64_t pos;
	struct dp_v4_page_ref *refs;
	void *data;
	size_t n;
	struct mpage *pages; /* the new table, n entries */
	struct mseg *segs;   /* its segments: reused ones, then new ones */
	uint32_t n_segs, first_new;
	struct mseg *garbage; /* the last table's segments the new one does not name */
	uint32_t n_garbage;
	uint32_t *fresh; /* pages written now (indices into pages), in order */
	uint32_t n_fresh;
	struct put_wait *puts; /* per new segment */
	struct put_wait man;
};

static void plan_free(struct plan *p)
{
	free(p->refs);
	free(p->data);
	free(p->pages);
	free(p->segs);
	free(p->garbage);
	free(p->fresh);
	free(p->puts);
}

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

/* Which pages are new or changed (written in new segments) and which the
 * last manifest's segments still hold (named again). */
static int plan_state(struct dp_server *srv, struct plan *p)
{
	struct sess *e = p->e;
	int ret = dp_kv_session_state_copy(srv->kv, p->s, &p->pos, &p->refs, &p->data, &p->n);
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
		return -ENOMEM;
	}
	for (uint32_t k = 0; k < e->n_segs; k++)
		map[k] = UINT32_MAX;
	size_t j = 0; /* both lists are in dp_v4_seq_pages order (layer, kind, index) */
	for (size_t i = 0; i < p->n; i++) {
		struct mpage *pg = &p->pages[i];
		*pg = dp_shared_mpage(&p->refs[i], (char *)p->data + i * DP_V4_PAGE_BYTES);
		while (j < e->n_pages && key_cmp(&e->pages[j], &p->refs[i]) < 0)
			j++;
		if (j < e->n_pages && key_cmp(&e->pages[j], &p->refs[i]) == 0 &&
		    e->pages[j].sum[0] == pg->sum[0] && e->pages[j].sum[1] == pg->sum[1]) {
			uint32_t old = e->pages[j].seg;
			if (map[old] == UINT32_MAX) {
				map[old] = p->n_segs;
				p->segs[p->n_segs++] = e->segs[old];
			}
			pg->seg = map[old];
			pg->slot = e->pages[j].slot;
		} else {
			p->fresh[p->n_fresh++] = (uint32_t)i;
		}
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
			pg[k].buf = (char *)p->data + (size_t)i * DP_V4_PAGE_BYTES;
		}
		char name[256];
		seg_name(dp_kv_session_id(p->s), &p->segs[p->first_new + g], name, sizeof(name));
		tlock(srv);
		int r = dp_kv_shared_put(srv->tier, name, pg, cnt, DP_V4_PAGE_BYTES, on_put, &p->puts[g]);
		tunlock(srv);
		if (r < 0) {
			p->puts[g] = (struct put_wait){ .res = r, .done = true };
			ret = r;
		}
	}
	free(pg);
	return ret;
}

/* The manifest: history, then (when p->state) the new table. */
static int plan_manifest(struct dp_server *srv, struct plan *p)
{
	struct dp_kv_session *s = p->s;
	uint64_t len = dp_kv_session_len(s);
	uint32_t n_pages = p->state ? (uint32_t)p->n : 0, n_segs = p->state ? p->n_segs : 0;
	size_t bytes = sizeof(struct manifest_hdr) + sizeof(struct manifest_state) +
		       pad8(len * sizeof(int32_t)) + (size_t)n_segs * sizeof(struct mseg) +
		       (size_t)p->n_garbage * sizeof(struct mseg) + (size_t)n_pages * sizeof(struct mpage);
	char *buf = calloc(1, bytes);
	if (!buf)
		return -ENOMEM;
	struct manifest_hdr h = { .version = MANIFEST_VERSION, .owner_uid = dp_kv_session_owner(s),
				  .n_tokens = len };
	struct manifest_state st = { .pos = p->state ? p->pos : 0,
				     .epoch = p->e ? p->e->epoch : 0,
				     .next_seg = p->e ? p->e->next_seg : 0,
				     .n_pages = n_pages, .n_segs = n_segs, .n_garbage = p->n_garbage };
	size_t off = 0;
	memcpy(buf + off, &h, sizeof(h));
	off += sizeof(h);
	memcpy(buf + off, &st, sizeof(st));
	off += sizeof(st);
	memcpy(buf + off, dp_kv_session_history(s), len * sizeof(int32_t));
	off += pad8(len * sizeof(int32_t));
	if (n_segs)
		memcpy(buf + off, p->segs, (size_t)n_segs * sizeof(struct mseg));
	off += (size_t)n_segs * sizeof(struct mseg);
	if (p->n_garbage)
		memcpy(buf + off, p->garbage, (size_t)p->n_garbage * sizeof(struct mseg));
	off += (size_t)p->n_garbage * sizeof(struct mseg);
	if (n_pages)
		memcpy(buf + off, p->pages, (size_t)n_pages * sizeof(struct mpage));
	tlock(srv);
	int ret = dp_kv_shared_manifest_put(srv->tier, dp_kv_session_id(s), buf, bytes, on_put, &p->man);
	tunlock(srv);
	free(buf); /* the tier copied it */
	return ret;
}

/* The state is not written after all: the manifest names none, and every
 * segment of the last table and of this plan goes (the garbage). */
static void plan_drop_state(struct plan *p)
{
	struct sess *e = p->e;
	struct mseg *g = realloc(p->garbage, ((size_t)p->n_segs + e->n_segs + 1) * sizeof(*g));
	p->state = false;
	if (!g) {
		p->n_garbage = 0; /* leaked: found by a listing by prefix */
		return;
	}
	p->garbage = g;
	p->n_garbage = 0;
	for (uint32_t k = 0; k < e->n_segs; k++)
		g[p->n_garbage++] = e->segs[k];
	for (uint32_t k = p->first_new; k < p->n_segs; k++)
		g[p->n_garbage++] = p->segs[k];
}

int dp_shared_commit(struct dp_server *srv, struct dp_kv_session *const *sessions, size_t n,
		     int *ret_res)
{
	if (!srv->tier || n == 0)
		return 0;
	struct dp_shared *sh = shared_of(srv);
	struct plan *p = calloc(n, sizeof(*p));
	if (!p || !sh) {
		free(p);
		for (size_t i = 0; i < n; i++)
			ret_res[i] = -ENOMEM;
		return (int)n;
	}
	/* 1. the state pages that changed, as new segments: written first */
	uint64_t t0 = dp_clock_ns();
	size_t n_puts = 0;
	for (size_t i = 0; i < n; i++) {
		p[i].s = sessions[i];
		p[i].e = sess_find(srv, dp_kv_session_id(sessions[i]));
		if (!p[i].e)
			continue; /* no state this host knows of: the manifest names none */
		if (plan_state(srv, &p[i]) < 0) {
			plan_drop_state(&p[i]); /* none now: the last one's segments go */
			continue;
		}
		if (plan_put(srv, &p[i]) < 0 && p[i].e)
			plan_drop_state(&p[i]);
		n_puts += p[i].n_segs - p[i].first_new;
	}
	/* every put is out: wait on each plan's in turn (each reap takes all) */
	for (size_t i = 0; n_puts && i < n; i++)
		if (p[i].puts)
			wait_all(srv, p[i].puts, p[i].n_segs - p[i].first_new);
	for (size_t i = 0; i < n; i++) {
		if (!p[i].state)
			continue;
		for (uint32_t g = 0; g < p[i].n_segs - p[i].first_new; g++)
			if (p[i].puts[g].res < 0) {
				plan_drop_state(&p[i]);
				break;
			}
		if (p[i].state) {
			sh->st.state_commits++;
			sh->st.pages_written += p[i].n_fresh;
			sh->st.pages_reused += p[i].n - p[i].n_fresh;
		}
	}
	sh->st.state_ns += dp_clock_ns() - t0;
	/* 2. the manifests, naming them: the turn is acknowledged once in */
	for (size_t i = 0; i < n; i++) {
		int ret = plan_manifest(srv, &p[i]);
		if (ret < 0)
			p[i].man = (struct put_wait){ .res = ret, .done = true };
	}
	int bad = 0;
	for (size_t i = 0; i < n; i++)
		wait_all(srv, &p[i].man, 1);
	/* 3. what no manifest names any more goes (best effort) */
	for (size_t i = 0; i < n; i++) {
		struct plan *q = &p[i];
		const char *id = dp_kv_session_id(q->s);
		ret_res[i] = q->man.res;
		if (q->man.res < 0) {
			bad++;
			/* not named: this turn's segments go; a fenced host forgets */
			for (uint32_t k = q->first_new; k < q->n_segs; k++)
				delete_later(srv, id, &q->segs[k]);
			if (q->man.res == -ECANCELED || q->man.res == -ENOLCK)
				sess_forget(srv, id);
			else { /* in this host's journal, perhaps not in the manifest:
				* the next claim reads the manifest and replaces this
				* copy by its history (a retried turn then follows the
				* acknowledged ones, not this one); the lease goes too */
				if (q->e)
					q->e->stale = true;
				release(srv, id);
			}
		} else if (q->e) {
			for (uint32_t k = 0; k < q->n_garbage; k++)
				delete_later(srv, id, &q->garbage[k]);
			struct sess *e = q->e;
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
		plan_free(q);
	}
	free(p);
	return bad;
}
