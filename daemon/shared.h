/* SPDX-License-Identifier: MIT */
/*
 * daemon/shared.h — sessions on the shared tier (daemon/shared.c says how).
 *
 * Threads: every function here is the compute thread's. The round trips
 * (lease takes, manifest reads and writes, segment puts and deletes) run on
 * the shared tier's own worker thread (started with the first use): compute
 * hands them over and collects what they came to with dp_shared_poll. Each
 * is a no-op (0) without a shared tier.
 */
#ifndef DP_DAEMON_SHARED_H
#define DP_DAEMON_SHARED_H

#include <stdbool.h>
#include <stddef.h>

#include "daemon/server.h"

/* Before serving a request on session: hold its lease. 0: ours (our copy is
 * current), 1: taken over (our copy was replaced by the manifest's history;
 * when the manifest also names a state, dp_shared_acquire restores it),
 * -EINPROGRESS: the lease is being taken by the worker (a round trip): keep
 * the request waiting while dp_shared_claim_pending says so, then call
 * again for the answer; -EBUSY: another live host serves it; other negative
 * errno: the shared tier failed, or its manifest cannot be read (a damaged
 * one, or one of another version). why[] says it, naming the owner for
 * -EBUSY. A session held here and renewed is answered at once (0). */
int dp_shared_claim(struct dp_server *srv, const char *session, char *why, size_t why_len);
/* Whether session's claim is still with the worker. */
bool dp_shared_claim_pending(struct dp_server *srv, const char *session);

/* Acquire session s (kvcache.h) when dp_shared_claim took it over with a
 * state: 1 and *ret_seq, the sequence being restored layer by layer from
 * the tier (its gate waits per layer; a page that fails poisons it, and the
 * caller recomputes as for any restore); 1 with a fresh sequence when the
 * restore could not begin (recomputed). 0: nothing to restore (the caller
 * acquires as usual); negative errno: the acquire failed. */
int dp_shared_acquire(struct dp_server *srv, struct dp_kv_session *s, struct dp_v4_seq **ret_seq);

/* After each step: sessions[0..n) are the ones still running. Their leases
 * are renewed by the cluster thread (daemon/cluster.h), never here: this
 * makes no round trip. Returns how many of them were found lost (their
 * turns will be refused at commit by the fenced manifest write). */
int dp_shared_renew(struct dp_server *srv, const char *const *sessions, size_t n);

/* Commits in flight at most (sessions), and the bytes of changed pages
 * they may hold between them: dp_shared_commit_start waits for the worker
 * (on the compute thread) while a new batch would pass either, unless
 * nothing is in flight. */
#define DP_SHARED_COMMITS_MAX 64u
#define DP_SHARED_COMMIT_BYTES_MAX (256ull << 20)

/* After dp_kv_commit: start the commit of sessions[0..n) to the shared tier
 * and return. Here, on the compute thread, each session's state pages are
 * hashed against its last manifest's and the changed ones copied, with its
 * history; the worker writes them as new segments, waits for them, then
 * writes the manifest (fenced: conditional on this host's epoch) and waits
 * for it. A session must not change until its commit is reaped (the
 * caller holds its requests back). tags[i] comes back with session i's
 * result from dp_shared_poll. 0, or -ENOMEM (nothing started). */
int dp_shared_commit_start(struct dp_server *srv, struct dp_kv_session *const *sessions,
			   void *const *tags, size_t n);

/* A finished commit: res 0, the turn is durable on the shared tier (the
 * manifest is in): acknowledge it; else why it is not (-ECANCELED or
 * -ENOLCK: another host took the session, this host was fenced). A state
 * that cannot be written costs only the state: the manifest then names
 * none, and a takeover recomputes. */
struct dp_shared_done {
	void *tag;
	int res;
};

/* Collect what the worker finished (commits, claims): up to max commits'
 * results into ret[]; returns how many. Claims finished become answers of
 * the next dp_shared_claim. Never waits. */
size_t dp_shared_poll(struct dp_server *srv, struct dp_shared_done *ret, size_t max);
/* Whether dp_shared_poll has something to collect (any thread: compute's
 * wake-up test; the worker wakes srv->compute_wake when it does). */
bool dp_shared_news(const struct dp_server *srv);

/* Session s is being dropped (CloseSession without persist, Evict with
 * drop): what this host knows of it goes, and when this host holds its
 * lease, its manifest and segments are deleted from the tier by the worker
 * (then the lease is released). Before dp_kv_session_drop. */
void dp_shared_drop(struct dp_server *srv, const char *session);

/* The counters (struct dp_shared_stats, server.h). */
void dp_shared_stats(struct dp_server *srv, struct dp_shared_stats *ret);
/* Let go of what this host keeps about its sessions on the tier: the worker
 * finishes what it was handed, then stops. Compute calls it as it ends
 * (before main stops the cluster thread, which the worker's jobs use);
 * main calls it again before the tier is closed (then a no-op). */
void dp_shared_fini(struct dp_server *srv);

#endif /* DP_DAEMON_SHARED_H */
