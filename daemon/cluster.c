/* SPDX-License-Identifier: MIT */
/*
 * daemon/cluster.c — membership, rendezvous hashing and lease renewal off
 * the compute thread (daemon/cluster.h says who calls what).
 *
 * One thread, one period: every third of lease_ms it (1) beats this host's
 * membership, (2) re-reads the member list, (3) renews each lease this host
 * holds, or releases it when its session has been idle for lease_idle_ms.
 * Between periods it also re-reads the member list whenever another member
 * notifies a join or a leave (RADOS watch/notify on the list's object:
 * kvcache/tier.h, dp_kv_shared_members_watch); this host notifies its own
 * join and leave. The librados thread that delivers a notify only sets a
 * flag and wakes this thread. Each
 * tier call is made under srv->tier_lock (the tier handle is single-
 * threaded) and the lock is dropped between calls, so compute's own tier
 * calls (the claim of a new session, the manifest writes at a turn's end)
 * wait for at most one round trip of this thread, never for a whole round.
 */
#include "daemon/cluster.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define XXH_STATIC_LINKING_ONLY /* XXH3_state_t on the stack */
#include <xxhash.h>

#include "base/clock.h"
#include "daemon/log.h"
#include "daemon/server.h"

struct held {
	char id[DP_CLUSTER_ID_MAX];
	uint64_t touch_ns; /* compute last named it (hold, touch, active) */
	uint64_t gen;	   /* the active set it was last in */
	uint64_t fresh_ns; /* its lease was last taken or renewed (the call began) */
	bool lost;	   /* a renewal found it taken by another host */
	bool releasing;	   /* the thread is letting it go: compute must take it anew */
};

struct dp_cluster {
	struct dp_server *srv;
	pthread_t thread;
	bool started;
	struct dp_kv_shared_member self;
	uint64_t period_ns, idle_ns;

	pthread_mutex_t mu; /* everything below */
	pthread_cond_t cond;
	bool stop;
	struct held *held;
	size_t n_held, cap_held;
	uint64_t gen; /* compute's active sets, counted */
	struct dp_kv_shared_member *members;
	size_t n_members;
	struct dp_cluster_stats st;
	bool reread;  /* a member notified a change: re-read the list now */
	bool rewatch; /* the watch was lost: watch again, then re-read */

	struct dp_kv_shared_watch *watch; /* the thread's (and start/stop's); NULL: none */
};

/* ---- rendezvous ----------------------------------------------------------------- */

uint64_t dp_cluster_hrw_score(const char *host, const char *session)
{
	size_t hl = strlen(host), sl = strlen(session);
	XXH3_state_t st;
	XXH3_64bits_reset(&st);
	XXH3_64bits_update(&st, host, hl);
	XXH3_64bits_update(&st, "", 1);
	XXH3_64bits_update(&st, session, sl);
	return XXH3_64bits_digest(&st);
}

int dp_cluster_rendezvous(const struct dp_kv_shared_member *m, const bool *live, size_t n,
			  const char *session)
{
	if (!session || (!m && n))
		return -EINVAL;
	int best = -ENOENT;
	uint64_t best_score = 0;
	for (size_t i = 0; i < n; i++) {
		if (live && !live[i])
			continue;
		uint64_t s = dp_cluster_hrw_score(m[i].host, session);
		if (best < 0 || s > best_score ||
		    (s == best_score && strcmp(m[i].host, m[best].host) < 0)) {
			best = (int)i;
			best_score = s;
		}
	}
	return best;
}

uint64_t dp_cluster_now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

bool dp_cluster_member_live(const struct dp_kv_shared_member *m, uint64_t now_ms)
{
	/* a beat stamped a little ahead of our clock is live (skew) */
	return m->beat_ms >= now_ms || now_ms - m->beat_ms <= m->ttl_ms;
}

/* ---- the lease table (compute and the thread) -------------------------------------- */

static struct held *held_find(struct dp_cluster *cl, const char *session)
{
	for (size_t i = 0; i < cl->n_held; i++)
		if (!strcmp(cl->held[i].id, session))
			return &cl->held[i];
	return NULL;
}

static void held_remove(struct dp_cluster *cl, struct held *h)
{
	*h = cl->held[--cl->n_held];
}

void dp_cluster_hold(struct dp_cluster *cl, const char *session)
{
	if (!cl || !session || strlen(session) >= DP_CLUSTER_ID_MAX)
		return;
	pthread_mutex_lock(&cl->mu);
	struct held *h = held_find(cl, session);
	if (!h && cl->n_held == cl->cap_held) {
		size_t cap = cl->cap_held ? 2 * cl->cap_held : 64;
		struct held *nh = realloc(cl->held, cap * sizeof(*nh));
		if (nh) {
			cl->held = nh;
			cl->cap_held = cap;
		}
	}
	if (!h && cl->n_held < cl->cap_held) {
		h = &cl->held[cl->n_held++];
		snprintf(h->id, sizeof(h->id), "%s", session);
	}
	if (h) { /* without memory the lease is not renewed here: its turn may be fenced */
		h->touch_ns = dp_clock_ns();
		h->fresh_ns = h->touch_ns;
		h->gen = cl->gen;
		h->lost = false;
		h->releasing = false;
	}
	pthread_mutex_unlock(&cl->mu);
}

void dp_cluster_drop(struct dp_cluster *cl, const char *session)
{
	if (!cl || !session)
		return;
	pthread_mutex_lock(&cl->mu);
	struct held *h = held_find(cl, session);
	if (h)
		held_remove(cl, h);
	pthread_mutex_unlock(&cl->mu);
}

int dp_cluster_release(struct dp_cluster *cl, const char *session)
{
	if (!cl || !session)
		return -ENOENT;
	struct dp_server *srv = cl->srv;
	/* Lock order as in renew(): tier_lock, then mu. Under tier_lock the
	 * thread is between two tier calls: a renewal it picked before the
	 * entry goes finds no lease (-ENOLCK) and no entry to mark. */
	pthread_mutex_lock(&srv->tier_lock);
	pthread_mutex_lock(&cl->mu);
	struct held *h = held_find(cl, session);
	bool ours = h && !h->lost;
	if (h)
		held_remove(cl, h);
	pthread_mutex_unlock(&cl->mu);
	int ret = ours ? dp_kv_shared_lease_release(srv->tier, session) : -ENOENT;
	pthread_mutex_unlock(&srv->tier_lock);
	if (ours) {
		pthread_mutex_lock(&cl->mu);
		cl->st.handoffs++;
		pthread_mutex_unlock(&cl->mu);
	}
	/* -ENOLCK from the tier: it was lost meanwhile; not ours either way */
	return ret == -ENOLCK ? -ENOENT : ret;
}

int dp_cluster_touch(struct dp_cluster *cl, const char *session)
{
	if (!cl || !session)
		return -ENOENT;
	pthread_mutex_lock(&cl->mu);
	struct held *h = held_find(cl, session);
	int ret = !h ? -ENOENT : h->lost || h->releasing ? -ENOLCK : 0;
	/* Known held only while a renewal is recent: a host paused past its
	 * lease (SIGSTOP, a stall) must ask the tier before it serves. */
	if (ret == 0 && dp_clock_ns() - h->fresh_ns > cl->period_ns * 2)
		ret = -ESTALE;
	if (ret == 0) {
		h->touch_ns = dp_clock_ns();
		h->gen = cl->gen;
	}
	pthread_mutex_unlock(&cl->mu);
	return ret;
}

void dp_cluster_active(struct dp_cluster *cl, const char *const *sessions, size_t n)
{
	if (!cl)
		return;
	uint64_t now = dp_clock_ns();
	pthread_mutex_lock(&cl->mu);
	cl->gen++;
	for (size_t i = 0; i < n; i++) {
		struct held *h = held_find(cl, sessions[i]);
		if (h) {
			h->touch_ns = now;
			h->gen = cl->gen;
		}
	}
	pthread_mutex_unlock(&cl->mu);
}

bool dp_cluster_holds(struct dp_cluster *cl, const char *session)
{
	if (!cl || !session)
		return false;
	pthread_mutex_lock(&cl->mu);
	struct held *h = held_find(cl, session);
	bool ret = h && !h->lost;
	pthread_mutex_unlock(&cl->mu);
	return ret;
}

int dp_cluster_leases(struct dp_cluster *cl, char (**ret)[DP_CLUSTER_ID_MAX], size_t *ret_n)
{
	if (!cl || !ret || !ret_n)
		return -EINVAL;
	pthread_mutex_lock(&cl->mu);
	char(*v)[DP_CLUSTER_ID_MAX] = calloc(cl->n_held ? cl->n_held : 1, sizeof(*v));
	size_t n = 0;
	for (size_t i = 0; v && i < cl->n_held; i++)
		if (!cl->held[i].lost)
			memcpy(v[n++], cl->held[i].id, DP_CLUSTER_ID_MAX);
	pthread_mutex_unlock(&cl->mu);
	if (!v)
		return -ENOMEM;
	*ret = v;
	*ret_n = n;
	return 0;
}

int dp_cluster_members(struct dp_cluster *cl, struct dp_kv_shared_member **ret, size_t *ret_n)
{
	if (!cl || !ret || !ret_n)
		return -EINVAL;
	pthread_mutex_lock(&cl->mu);
	size_t n = cl->n_members;
	struct dp_kv_shared_member *v = malloc((n ? n : 1) * sizeof(*v));
	if (v && n)
		memcpy(v, cl->members, n * sizeof(*v));
	pthread_mutex_unlock(&cl->mu);
	if (!v)
		return -ENOMEM;
	*ret = v;
	*ret_n = n;
	return 0;
}

static void describe_member(const struct dp_kv_shared_member *m, char *buf, size_t len)
{
	int n = snprintf(buf, len, "%s (", m->host);
	if (n < 0 || (size_t)n >= len)
		return;
	if (m->socket[0])
		n += snprintf(buf + n, len - (size_t)n, "socket %s", m->socket);
	if ((size_t)n < len && m->http[0])
		n += snprintf(buf + n, len - (size_t)n, "%shttp %s", m->socket[0] ? ", " : "",
			      m->http);
	if ((size_t)n < len)
		snprintf(buf + n, len - (size_t)n, "%s)", m->socket[0] || m->http[0] ? "" : "no address");
}

void dp_cluster_describe(struct dp_cluster *cl, const char *host, char *buf, size_t len)
{
	if (!buf || len == 0)
		return;
	snprintf(buf, len, "%s", host ? host : "?");
	if (!cl || !host)
		return;
	pthread_mutex_lock(&cl->mu);
	for (size_t i = 0; i < cl->n_members; i++)
		if (!strcmp(cl->members[i].host, host)) {
			describe_member(&cl->members[i], buf, len);
			break;
		}
	pthread_mutex_unlock(&cl->mu);
}

void dp_cluster_stats(struct dp_cluster *cl, struct dp_cluster_stats *ret)
{
	if (!cl || !ret)
		return;
	uint64_t now = dp_cluster_now_ms();
	pthread_mutex_lock(&cl->mu);
	*ret = cl->st;
	ret->members_live = 0;
	for (size_t i = 0; i < cl->n_members; i++)
		ret->members_live += dp_cluster_member_live(&cl->members[i], now);
	ret->leases_held = 0;
	for (size_t i = 0; i < cl->n_held; i++)
		ret->leases_held += !cl->held[i].lost;
	pthread_mutex_unlock(&cl->mu);
}

/* ---- the thread ------------------------------------------------------------------- */

static void beat(struct dp_cluster *cl)
{
	struct dp_server *srv = cl->srv;
	pthread_mutex_lock(&srv->tier_lock);
	int ret = dp_kv_shared_member_beat(srv->tier, &cl->self);
	pthread_mutex_unlock(&srv->tier_lock);
	pthread_mutex_lock(&cl->mu);
	cl->st.beats++;
	cl->st.beat_errors += ret < 0;
	pthread_mutex_unlock(&cl->mu);
	if (ret == -ENOLCK)
		log_err("cluster: host id %s was taken by another process while this one did not "
			"beat (paused past %u ms?); two daemons now share the host id",
			cl->self.host, cl->self.ttl_ms);
	else if (ret < 0)
		log_warning("cluster: heartbeat failed: %s", strerror(-ret));
}

/* Re-read the member list (every period, and when a member notifies). */
static void members_read(struct dp_cluster *cl)
{
	struct dp_server *srv = cl->srv;
	struct dp_kv_shared_member *m = NULL;
	size_t n = 0;
	pthread_mutex_lock(&srv->tier_lock);
	int ret = dp_kv_shared_members(srv->tier, &m, &n);
	pthread_mutex_unlock(&srv->tier_lock);
	if (ret < 0) {
		log_warning("cluster: cannot read the member list: %s", strerror(-ret));
		return;
	}
	/* Entries of members dead for 10 ttls (a minute at least) go: a host
	 * id that comes back writes its entry again. Any member may do it. */
	uint64_t now = dp_cluster_now_ms();
	for (size_t i = 0; i < n;) {
		uint64_t dead_ms = 10ull * m[i].ttl_ms > 60000 ? 10ull * m[i].ttl_ms : 60000;
		if (strcmp(m[i].host, cl->self.host) && now > m[i].beat_ms &&
		    now - m[i].beat_ms > dead_ms) {
			pthread_mutex_lock(&srv->tier_lock);
			ret = dp_kv_shared_member_forget(srv->tier, m[i].host);
			pthread_mutex_unlock(&srv->tier_lock);
			if (ret == 0) {
				log_debug("cluster: member %s dead for %llu ms: its entry is removed",
					  m[i].host, (unsigned long long)(now - m[i].beat_ms));
				m[i] = m[--n];
				continue;
			}
		}
		i++;
	}
	pthread_mutex_lock(&cl->mu);
	free(cl->members);
	cl->members = m;
	cl->n_members = n;
	pthread_mutex_unlock(&cl->mu);
}

enum lease_act { ACT_RENEW, ACT_RELEASE };
struct work {
	char id[DP_CLUSTER_ID_MAX];
	enum lease_act act;
};

static void renew(struct dp_cluster *cl)
{
	struct dp_server *srv = cl->srv;
	uint64_t now = dp_clock_ns();
	bool compute_idle = atomic_load_explicit(&srv->n_active, memory_order_relaxed) == 0;
	pthread_mutex_lock(&cl->mu);
	struct work *w = calloc(cl->n_held ? cl->n_held : 1, sizeof(*w));
	size_t n = 0;
	for (size_t i = 0; w && i < cl->n_held;) {
		struct held *h = &cl->held[i];
		/* idle: in no active set since compute last named it, and that
		 * is lease_idle_ms ago (a step of any length keeps the sessions
		 * it runs: they are in the latest set until a later one) */
		bool unused = h->gen < cl->gen || compute_idle;
		bool idle = cl->idle_ns && now - h->touch_ns > cl->idle_ns && unused;
		if (h->lost && unused && now - h->touch_ns > cl->period_ns * 3) {
			held_remove(cl, h); /* compute no longer asks about it */
			continue;
		}
		if (!h->lost && !h->releasing) {
			snprintf(w[n].id, sizeof(w[n].id), "%s", h->id);
			w[n].act = idle ? ACT_RELEASE : ACT_RENEW;
			h->releasing = idle;
			n++;
		}
		i++;
	}
	pthread_mutex_unlock(&cl->mu);
	for (size_t i = 0; i < n; i++) {
		pthread_mutex_lock(&srv->tier_lock);
		if (w[i].act == ACT_RELEASE) {
			/* compute may have taken it again meanwhile (a claim that
			 * found it releasing goes to the tier, under tier_lock):
			 * then it is in use, renew it instead. Lock order: tier_lock,
			 * then mu; nothing takes them the other way round. */
			pthread_mutex_lock(&cl->mu);
			struct held *h = held_find(cl, w[i].id);
			if (!h || !h->releasing)
				w[i].act = ACT_RENEW;
			pthread_mutex_unlock(&cl->mu);
		}
		uint64_t began = dp_clock_ns();
		int ret = w[i].act == ACT_RELEASE ? dp_kv_shared_lease_release(srv->tier, w[i].id)
						  : dp_kv_shared_lease_renew(srv->tier, w[i].id);
		pthread_mutex_unlock(&srv->tier_lock);
		pthread_mutex_lock(&cl->mu);
		struct held *h = held_find(cl, w[i].id);
		if (w[i].act == ACT_RELEASE) {
			cl->st.leases_released++;
			if (h && h->releasing) /* not taken again by compute meanwhile */
				held_remove(cl, h);
		} else {
			cl->st.renewals++;
			if (ret == 0 && h && began > h->fresh_ns)
				h->fresh_ns = began;
			if (ret == -ENOLCK && h) {
				h->lost = true;
				cl->st.leases_lost++;
			}
		}
		pthread_mutex_unlock(&cl->mu);
		if (w[i].act == ACT_RELEASE)
			log_debug("cluster: session %s idle for %llu ms: its lease is released", w[i].id,
				  (unsigned long long)(cl->idle_ns / 1000000));
		else if (ret == -ENOLCK)
			log_warning("cluster: session %s: lease lost (another host took it); its "
				    "running turn will not be acknowledged", w[i].id);
		else if (ret < 0)
			log_warning("cluster: session %s: lease renewal failed: %s", w[i].id,
				    strerror(-ret));
	}
	free(w);
}

/* librados's thread: a member notified a change (err 0), or the watch was
 * lost (err < 0). Only a flag and a wake-up: the tier is not ours here. */
static void on_members_changed(void *arg, int err)
{
	struct dp_cluster *cl = arg;
	pthread_mutex_lock(&cl->mu);
	cl->reread = true;
	cl->rewatch |= err < 0;
	cl->st.notifies += err == 0;
	pthread_cond_signal(&cl->cond);
	pthread_mutex_unlock(&cl->mu);
}

/* A notify (or a lost watch) between two periods: re-read the list now. */
static void on_reread(struct dp_cluster *cl, bool rewatch)
{
	struct dp_server *srv = cl->srv;
	if (rewatch) {
		pthread_mutex_lock(&srv->tier_lock);
		int ret = dp_kv_shared_members_rewatch(srv->tier, cl->watch);
		pthread_mutex_unlock(&srv->tier_lock);
		if (ret < 0) {
			log_warning("cluster: the member list's watch was lost and cannot be renewed "
				    "(%s); changes are seen at the periodic re-read", strerror(-ret));
			pthread_mutex_lock(&cl->mu);
			cl->rewatch = true; /* again at the next period */
			pthread_mutex_unlock(&cl->mu);
		}
	}
	members_read(cl);
}

static void notify_members(struct dp_cluster *cl, const char *what)
{
	struct dp_server *srv = cl->srv;
	if (!cl->watch)
		return;
	pthread_mutex_lock(&srv->tier_lock);
	int ret = dp_kv_shared_members_notify(srv->tier, cl->watch);
	pthread_mutex_unlock(&srv->tier_lock);
	if (ret < 0)
		log_debug("cluster: no notify of this host's %s (%s); the others see it at their "
			  "periodic re-read", what, strerror(-ret));
}

static void *cluster_main(void *arg)
{
	struct dp_cluster *cl = arg;
	pthread_mutex_lock(&cl->mu);
	while (!cl->stop) {
		struct timespec ts;
		clock_gettime(CLOCK_MONOTONIC, &ts);
		uint64_t t = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec + cl->period_ns;
		ts.tv_sec = (time_t)(t / 1000000000ull);
		ts.tv_nsec = (long)(t % 1000000000ull);
		/* the period's deadline stays put across the notifies it meets */
		for (;;) {
			int w = 0;
			while (!cl->stop && !cl->reread &&
			       (w = pthread_cond_timedwait(&cl->cond, &cl->mu, &ts)) != ETIMEDOUT)
				;
			if (cl->stop || w == ETIMEDOUT)
				break;
			bool rewatch = cl->rewatch && cl->watch;
			cl->reread = false;
			cl->rewatch = false;
			pthread_mutex_unlock(&cl->mu);
			on_reread(cl, rewatch);
			pthread_mutex_lock(&cl->mu);
		}
		if (cl->stop)
			break;
		bool rewatch = cl->rewatch && cl->watch;
		cl->reread = false;
		cl->rewatch = false;
		pthread_mutex_unlock(&cl->mu);
		renew(cl); /* leases first: a slow member read must not make them late */
		beat(cl);
		if (rewatch)
			on_reread(cl, true);
		else
			members_read(cl);
		pthread_mutex_lock(&cl->mu);
	}
	pthread_mutex_unlock(&cl->mu);
	return NULL;
}

int dp_cluster_start(struct dp_server *srv, char *err, size_t err_len)
{
	if (!srv || !srv->tier)
		return -EINVAL;
	struct dp_cluster *cl = calloc(1, sizeof(*cl));
	if (!cl)
		return -ENOMEM;
	cl->srv = srv;
	uint32_t lease_ms = srv->cfg.lease_ms ? srv->cfg.lease_ms : 10000;
	cl->period_ns = (uint64_t)lease_ms * 1000000ull / 3;
	cl->idle_ns = (uint64_t)srv->cfg.lease_idle_ms * 1000000ull; /* 0: never */
	struct dp_kv_shared_member *me = &cl->self;
	snprintf(me->host, sizeof(me->host), "%s", srv->host_id);
	const char *http = srv->cfg.advertise[0] ? srv->cfg.advertise : srv->cfg.http_listen;
	if (strlen(srv->cfg.socket) >= sizeof(me->socket) || strlen(http) >= sizeof(me->http)) {
		snprintf(err, err_len, "cluster: the socket path or HTTP address is longer than %d "
				       "bytes", DP_KV_SHARED_ADDR_MAX - 1);
		free(cl);
		return -ENAMETOOLONG;
	}
	snprintf(me->socket, sizeof(me->socket), "%s", srv->cfg.socket);
	snprintf(me->http, sizeof(me->http), "%s", http);
	me->start_ms = dp_cluster_now_ms();
	me->ttl_ms = lease_ms;
	pthread_mutex_init(&cl->mu, NULL);
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&cl->cond, &ca);
	pthread_condattr_destroy(&ca);

	struct dp_kv_shared_member other = { 0 };
	/* A holder of our host id that is dead (this host restarted after a
	 * crash) frees it within a ttl; a live one keeps beating: wait out one
	 * ttl before refusing. */
	uint64_t give_up = 0;
	int ret;
	for (;;) {
		pthread_mutex_lock(&srv->tier_lock);
		ret = dp_kv_shared_member_join(srv->tier, me, &other);
		pthread_mutex_unlock(&srv->tier_lock);
		if (ret != -EBUSY || (give_up && dp_clock_ns() > give_up))
			break;
		if (!give_up) { /* the holder's ttl (its lease_ms), a minute at most */
			uint32_t ttl = other.ttl_ms ? other.ttl_ms : lease_ms;
			ttl = ttl > 60000 ? 60000 : ttl;
			give_up = dp_clock_ns() + ((uint64_t)ttl + 1000) * 1000000ull;
			log_notice("cluster: host id %s is held on the shared tier (heartbeat %llu ms "
				   "ago); waiting up to %u ms in case its holder is dead", me->host,
				   (unsigned long long)(dp_cluster_now_ms() - other.beat_ms), ttl + 1000);
		}
		usleep(250 * 1000);
	}
	if (ret == -EBUSY) {
		char who[512];
		if (other.socket[0] || other.http[0])
			describe_member(&other, who, sizeof(who));
		else
			snprintf(who, sizeof(who), "%s (its address is not known)", other.host);
		uint64_t now = dp_cluster_now_ms();
		snprintf(err, err_len, "cluster: host id %s is already on the shared tier: a live "
				       "dualpathd holds it, %s, heartbeat %llu ms ago; give this "
				       "one another host_id (--host-id), or stop that one and wait "
				       "%u ms for its membership to expire", me->host, who,
			 (unsigned long long)(other.beat_ms && now > other.beat_ms ? now - other.beat_ms : 0),
			 lease_ms);
	} else if (ret < 0) {
		snprintf(err, err_len, "cluster: cannot join the shared tier's membership as %s: %s",
			 me->host, strerror(-ret));
	}
	if (ret < 0)
		goto fail;
	/* watch the list, then tell the others we joined (a watch that
	 * cannot be set leaves the periodic re-read: a warning, not fatal) */
	pthread_mutex_lock(&srv->tier_lock);
	ret = dp_kv_shared_members_watch(srv->tier, on_members_changed, cl, &cl->watch);
	pthread_mutex_unlock(&srv->tier_lock);
	if (ret < 0) {
		log_warning("cluster: cannot watch the member list (%s); changes are seen at the "
			    "periodic re-read, every %u ms", strerror(-ret), lease_ms / 3);
		cl->watch = NULL;
	}
	notify_members(cl, "join");
	members_read(cl); /* the member list, at once (the join wrote our entry) */
	if ((ret = -pthread_create(&cl->thread, NULL, cluster_main, cl)) < 0) {
		snprintf(err, err_len, "cluster: cannot start its thread: %s", strerror(-ret));
		pthread_mutex_lock(&srv->tier_lock);
		dp_kv_shared_member_leave(srv->tier);
		pthread_mutex_unlock(&srv->tier_lock);
		notify_members(cl, "leave");
		dp_kv_shared_members_unwatch(cl->watch);
		goto fail;
	}
	cl->started = true;
	srv->cluster = cl;
	return 0;
fail:
	free(cl->members);
	pthread_cond_destroy(&cl->cond);
	pthread_mutex_destroy(&cl->mu);
	free(cl);
	return ret;
}

void dp_cluster_stop(struct dp_cluster *cl)
{
	if (!cl)
		return;
	struct dp_server *srv = cl->srv;
	if (cl->started) {
		pthread_mutex_lock(&cl->mu);
		cl->stop = true;
		pthread_cond_signal(&cl->cond);
		pthread_mutex_unlock(&cl->mu);
		pthread_join(cl->thread, NULL);
	}
	pthread_mutex_lock(&srv->tier_lock);
	int ret = dp_kv_shared_member_leave(srv->tier);
	pthread_mutex_unlock(&srv->tier_lock);
	if (ret < 0)
		log_warning("cluster: leaving the membership failed (%s); it expires in %u ms",
			    strerror(-ret), cl->self.ttl_ms);
	else
		notify_members(cl, "leave");
	/* no notify callback runs on cl after this (waits for the notify
	 * just sent: every live member's ack, DP_KV_SHARED_NOTIFY_MS at most) */
	dp_kv_shared_members_unwatch(cl->watch);
	if (srv->cluster == cl)
		srv->cluster = NULL;
	free(cl->members);
	free(cl->held);
	pthread_cond_destroy(&cl->cond);
	pthread_mutex_destroy(&cl->mu);
	free(cl);
}
