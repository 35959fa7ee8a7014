/* SPDX-License-Identifier: MIT */
/*
 * daemon/shared.h — sessions on the shared tier (daemon/shared.c says how).
 * Compute thread only; each is a no-op (0) without a shared tier.
 */
#ifndef DP_DAEMON_SHARED_H
#define DP_DAEMON_SHARED_H

#include <stddef.h>

#include "daemon/server.h"

/* Before serving a request on session: hold its lease. 0: ours (our copy is
 * current), 1: taken over (our copy was replaced by the manifest's history;
 * when the manifest also names a state, dp_shared_acquire restores it),
 * -EBUSY: another live host serves it; other negative errno: the shared
 * tier failed, or its manifest cannot be read (a damaged one, or one of
 * another version). why[] says it, naming the owner for -EBUSY. */
int dp_shared_claim(struct dp_server *srv, const char *session, char *why, size_t why_len);

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

/* After dp_kv_commit: write the state pages of sessions[0..n) that changed
 * since their last manifest as new segments, wait for them, then write the
 * manifests and wait for them; ret_res[i] is 0 or why session i's turn is
 * not durable on the shared tier (-ECANCELED: another host took it: this
 * host was fenced). A state that cannot be written costs only the state:
 * the manifest then names none, and a takeover recomputes. Returns how many
 * failed. */
int dp_shared_commit(struct dp_server *srv, struct dp_kv_session *const *sessions, size_t n,
		     int *ret_res);

/* The counters (struct dp_shared_stats, server.h). */
void dp_shared_stats(struct dp_server *srv, struct dp_shared_stats *ret);
/* Let go of what this host keeps about its sessions on the tier (before the
 * tier is closed). */
void dp_shared_fini(struct dp_server *srv);

#endif /* DP_DAEMON_SHARED_H */
