/* SPDX-License-Identifier: MIT */
/*
 * daemon/shared-health.h — whether the shared tier answers now, not only
 * whether it was reached at start (daemon/shared-health.c says how).
 */
#ifndef DP_DAEMON_SHARED_HEALTH_H
#define DP_DAEMON_SHARED_HEALTH_H

#include <stdbool.h>
#include <stddef.h>

#include "daemon/server.h"

/* Start the probe (srv->tier open, before the threads that read it start);
 * srv->health is left NULL when there is no tier. Main thread. */
int dp_shared_health_start(struct dp_server *srv);
/* Stop it (after those threads stopped); NULL-safe. Main thread. */
void dp_shared_health_stop(struct dp_server *srv);

/* The tier answers (any thread): reached at start, and its last probe or
 * operation answered. */
bool dp_shared_health_up(const struct dp_server *srv);

/* An operation of the compute thread on the tier ended in res: a timeout or
 * a lost connection marks the tier down at once (the probe marks it up). */
void dp_shared_health_note(struct dp_server *srv, int res);

/* Before a request on a shared-tier session: 0 while the tier is up;
 * -EHOSTDOWN while it is down, why[] saying so (the session cannot be
 * leased nor its turns made durable: it is not served meanwhile). */
int dp_shared_health_check(struct dp_server *srv, const char *session, char *why, size_t why_len);

#endif /* DP_DAEMON_SHARED_HEALTH_H */
