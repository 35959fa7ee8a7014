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
 * current), 1: taken over (our copy was replaced by the manifest's history),
 * -EBUSY: another live host serves it; other negative errno: the shared
 * tier failed. why[] says it, naming the owner for -EBUSY. */
int dp_shared_claim(struct dp_server *srv, const char *session, char *why, size_t why_len);

/* After each step: sessions[0..n) are the ones still running. Their leases
 * are renewed by the cluster thread (daemon/cluster.h), never here: this
 * makes no round trip. Returns how many of them were found lost (their
 * turns will be refused at commit by the fenced manifest write). */
int dp_shared_renew(struct dp_server *srv, const char *const *sessions, size_t n);

/* After dp_kv_commit: write the manifests of sessions[0..n) and wait for
 * them; ret_res[i] is 0 or why session i's turn is not durable on the
 * shared tier (-ECANCELED: another host took it: this host was fenced).
 * Returns how many failed. */
int dp_shared_commit(struct dp_server *srv, struct dp_kv_session *const *sessions, size_t n,
		     int *ret_res);

#endif /* DP_DAEMON_SHARED_H */
