/* SPDX-License-Identifier: MIT */
/*
 * daemon/cluster.h — this host among the others on the shared tier: its
 * membership (kvcache/tier.h, dp_kv_shared_member_*), which host a session
 * hashes to (rendezvous), and the leases this host holds, renewed by the
 * cluster thread so that compute never makes a round trip to keep them.
 *
 * Threads. The cluster thread (started by dp_cluster_start) beats the
 * membership and renews or releases the leases every third of lease_ms,
 * and re-reads the member list then and whenever a member notifies its
 * join or leave (RADOS watch/notify),
 * taking srv->tier_lock around each tier call (never across a sleep).
 * dp_cluster_hold / _touch / _active are compute's (a mutex-protected
 * table: no round trip); dp_cluster_members, _holds, _leases and _addr may
 * be called from any thread.
 *
 * Leases of idle sessions are let go: a lease not in compute's active set
 * for lease_idle_ms (default 60 s; 0: never) is released by the cluster
 * thread, so a host that stops
 * serving a session does not pin it (the next request anywhere takes it
 * anew; here, that is a take and a manifest read that finds our copy
 * current). A lease found lost (-ENOLCK: another host took the session
 * after ours expired) is marked; compute's next claim of the session goes
 * to the tier again, and the turn running on it meanwhile is refused at
 * its commit by the fenced manifest write.
 */
#ifndef DP_DAEMON_CLUSTER_H
#define DP_DAEMON_CLUSTER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kvcache/tier.h"

struct dp_server;
struct dp_cluster;

/* Rendezvous (highest random weight) hashing: the score of host for
 * session is XXH3-64 of host id, one 0 byte, session id; the live member
 * with the highest score is the session's rendezvous host (ties: the
 * smaller host id). Any router can compute it from the member list.
 * Returns the index into m[0..n) (only entries with live[i], when live is
 * not NULL), or -ENOENT when none. */
uint64_t dp_cluster_hrw_score(const char *host, const char *session);
int dp_cluster_rendezvous(const struct dp_kv_shared_member *m, const bool *live, size_t n,
			  const char *session);

/* A member is live when its heartbeat is no older than its ttl. */
bool dp_cluster_member_live(const struct dp_kv_shared_member *m, uint64_t now_ms);
uint64_t dp_cluster_now_ms(void); /* CLOCK_REALTIME, ms: what beats are stamped with */

/* Join the membership as srv->host_id (address: the socket path and the
 * HTTP listen address) and start the cluster thread: srv->cluster. -EBUSY
 * when another live process holds the host id (err names it and its
 * address); other negative errno: the tier failed (err says it). Needs
 * srv->tier. */
int dp_cluster_start(struct dp_server *srv, char *err, size_t err_len);
/* Stop the thread, leave the membership (leases are released when the
 * tier closes). NULL is fine. */
void dp_cluster_stop(struct dp_cluster *cl);

/* compute: session's lease was taken (or confirmed) just now. */
void dp_cluster_hold(struct dp_cluster *cl, const char *session);
/* compute: this host gives session's lease up (or lost it): stop renewing. */
void dp_cluster_drop(struct dp_cluster *cl, const char *session);
/* compute: 0 when this host holds session's lease and the cluster thread
 * renews it (the session is marked in use), -ENOLCK when it was lost or is
 * being released, -ESTALE when its last renewal is older than two renewal
 * periods (this host was paused or the tier slow: ask the tier), -ENOENT
 * when not held here. No round trip. */
int dp_cluster_touch(struct dp_cluster *cl, const char *session);
/* compute: hand session off (EvictSession with release): stop renewing it
 * and release its lease on the tier now (one round trip, under
 * srv->tier_lock), so that another host takes it without waiting out the
 * lease. 0 released; -ENOENT not held here (never taken, let go idle, or
 * lost to another host: nothing to release); other negative errno: the
 * tier failed (the lease is not renewed any more: it expires in lease_ms). */
int dp_cluster_release(struct dp_cluster *cl, const char *session);
/* compute, after each step: the sessions of the requests still running.
 * Leases of sessions absent from it for lease_idle_ms are released. */
void dp_cluster_active(struct dp_cluster *cl, const char *const *sessions, size_t n);

/* Any thread. Whether this host holds session's lease (no round trip). */
bool dp_cluster_holds(struct dp_cluster *cl, const char *session);
/* The members as last read (every heartbeat): *ret malloc'd, the caller
 * frees; *ret_n entries. */
int dp_cluster_members(struct dp_cluster *cl, struct dp_kv_shared_member **ret, size_t *ret_n);
/* The sessions whose leases this host holds (not lost): *ret malloc'd
 * array of ids, the caller frees; *ret_n of them. */
#define DP_CLUSTER_ID_MAX 256
int dp_cluster_leases(struct dp_cluster *cl, char (**ret)[DP_CLUSTER_ID_MAX], size_t *ret_n);
/* "host (socket PATH, http ADDR)" for a member known now, else just host. */
void dp_cluster_describe(struct dp_cluster *cl, const char *host, char *buf, size_t len);

struct dp_cluster_stats {
	uint64_t leases_lost;	  /* renewals that found the lease taken */
	uint64_t leases_released; /* idle leases let go */
	uint64_t handoffs;	  /* leases released on request (dp_cluster_release) */
	uint64_t renewals, beats, beat_errors;
	uint64_t notifies; /* member-list notifies received (joins, leaves; our own too) */
	uint32_t members_live, leases_held;
};
void dp_cluster_stats(struct dp_cluster *cl, struct dp_cluster_stats *ret);

#endif /* DP_DAEMON_CLUSTER_H */
