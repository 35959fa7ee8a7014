/* SPDX-License-Identifier: MIT */
/*
 * daemon/shared-health.c — is the shared tier answering?
 *
 * The tier is reached at start (daemon/main.c); afterwards the cluster may
 * stop answering (monitor and OSDs down, a partition) and come back. Each of
 * the compute thread's lease and manifest calls waits up to the op timeout
 * for an answer, so without this a dead cluster would cost every session
 * request that timeout on the compute thread, and Stats would go on saying
 * the tier is up.
 *
 * A probe thread with its own RADOS connection (the tier allows one thread
 * per handle) asks the cluster a cheap question — who holds the lease of an
 * object no session uses — every PROBE_MS, bounded by the op timeout the
 * compute thread's calls have (max(lease_ms, 2 s): a busy 2-core machine
 * must not read as a dead cluster). An answer marks the tier up; none, or a
 * timeout of the compute thread's own calls (dp_shared_health_note), marks
 * it down. Each change is logged, with why. While it is down a request
 * on a shared-tier session gets UNAVAILABLE at once, naming the tier (the
 * session can be neither leased, so fenced against another host, nor made
 * durable, so it is not served from the local copy either); requests
 * without a session are served as ever. librados reconnects by itself, so
 * when the probe is answered again the main handle is used again.
 *
 * Not covered: a tier that could not be reached at start stays down until
 * the daemon restarts (srv->tier is NULL; main.c owns opening it).
 */
#include "daemon/shared-health.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/clock.h"
#include "daemon/log.h"
#include "kvcache/tier.h"

#define PROBE_MS 500
#define PROBE_OBJECT "dp-health-probe" /* a session id no client can lease:
					    * the probe only lists its lockers */

struct dp_shared_health {
	pthread_t thread;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	bool stop;			/* under lock */
	atomic_bool up;
	atomic_uint_fast64_t down_since_ns; /* 0 while up */
	struct dp_kv_shared_opts opts;
	char host_id[DP_KV_SHARED_HOST_ID_MAX + 1];
};

static void mark(struct dp_shared_health *h, bool up)
{
	if (up) {
		atomic_store(&h->down_since_ns, 0);
	} else {
		uint_fast64_t zero = 0;
		atomic_compare_exchange_strong(&h->down_since_ns, &zero, dp_clock_ns());
	}
	atomic_store(&h->up, up);
}

static void *probe_main(void *arg)
{
	struct dp_shared_health *h = arg;
	struct dp_kv_shared *t = NULL;
	char why[256] = "";
	pthread_mutex_lock(&h->lock);
	while (!h->stop) {
		pthread_mutex_unlock(&h->lock);
		int ret = t ? 0 : dp_kv_shared_open(&h->opts, &t, why, sizeof(why));
		if (ret == 0) {
			char owner[DP_KV_SHARED_HOST_ID_MAX + 1];
			ret = dp_kv_shared_lease_owner(t, PROBE_OBJECT, owner, sizeof(owner), NULL);
		}
		bool was = atomic_load(&h->up);
		mark(h, ret == 0);
		if (was && ret < 0)
			log_warning("shared tier down: %s; sessions on it get UNAVAILABLE until it "
				    "answers", t ? strerror(-ret) : why);
		else if (!was && ret == 0)
			log_notice("shared tier up again: sessions on it are served");
		pthread_mutex_lock(&h->lock);
		if (h->stop)
			break;
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_nsec += PROBE_MS * 1000000L;
		ts.tv_sec += ts.tv_nsec / 1000000000L;
		ts.tv_nsec %= 1000000000L;
		pthread_cond_timedwait(&h->cond, &h->lock, &ts);
	}
	pthread_mutex_unlock(&h->lock);
	dp_kv_shared_close(t);
	return NULL;
}

int dp_shared_health_start(struct dp_server *srv)
{
	if (!srv)
		return -EINVAL;
	if (!srv->tier)
		return 0;
	struct dp_shared_health *h = calloc(1, sizeof(*h));
	if (!h)
		return -ENOMEM;
	/* its own client name in lock listings: <host id>.probe, cut to fit */
	snprintf(h->host_id, sizeof(h->host_id), "%.*s.probe", DP_KV_SHARED_HOST_ID_MAX - 6,
		 srv->host_id);
	h->opts = (struct dp_kv_shared_opts){
		.conf = srv->cfg.rados_conf,
		.pool = srv->cfg.rados_pool,
		.client = srv->cfg.rados_client,
		.host_id = h->host_id,
		.lease_ms = srv->cfg.lease_ms,
		.timeout_ms = srv->cfg.lease_ms > 2000 ? srv->cfg.lease_ms : 2000,
	};
	atomic_init(&h->up, true);
	atomic_init(&h->down_since_ns, 0);
	pthread_mutex_init(&h->lock, NULL);
	pthread_cond_init(&h->cond, NULL);
	int ret = -pthread_create(&h->thread, NULL, probe_main, h);
	if (ret < 0) {
		pthread_cond_destroy(&h->cond);
		pthread_mutex_destroy(&h->lock);
		free(h);
		return ret;
	}
	srv->health = h;
	return 0;
}

void dp_shared_health_stop(struct dp_server *srv)
{
	struct dp_shared_health *h = srv ? srv->health : NULL;
	if (!h)
		return;
	pthread_mutex_lock(&h->lock);
	h->stop = true;
	pthread_cond_signal(&h->cond);
	pthread_mutex_unlock(&h->lock);
	pthread_join(h->thread, NULL);
	pthread_cond_destroy(&h->cond);
	pthread_mutex_destroy(&h->lock);
	free(h);
	srv->health = NULL;
}

bool dp_shared_health_up(const struct dp_server *srv)
{
	return srv->tier && (!srv->health || atomic_load(&srv->health->up));
}

void dp_shared_health_note(struct dp_server *srv, int res)
{
	if (srv->health && atomic_load(&srv->health->up) &&
	    (res == -ETIMEDOUT || res == -ENOTCONN || res == -ESHUTDOWN || res == -ECONNREFUSED)) {
		mark(srv->health, false);
		log_warning("shared tier down: a call on it failed (%s); sessions on it get "
			    "UNAVAILABLE until it answers", strerror(-res));
	}
}

int dp_shared_health_check(struct dp_server *srv, const char *session, char *why, size_t why_len)
{
	if (dp_shared_health_up(srv) || !srv->tier)
		return 0;
	uint64_t since = atomic_load(&srv->health->down_since_ns);
	uint64_t now = dp_clock_ns();
	snprintf(why, why_len, "session %s: the shared tier (rados pool %s) is down (no answer for "
		 "%.1f s): sessions on it are not served until it answers again", session,
		 srv->cfg.rados_pool, since && now > since ? (double)(now - since) / 1e9 : 0.0);
	return -EHOSTDOWN;
}
