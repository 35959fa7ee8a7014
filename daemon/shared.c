/* SPDX-License-Identifier: MIT */
/*
 * daemon/shared.c — sessions on the shared tier (kvcache/tier.h): which host
 * serves a session, and the manifests that make its turns durable beyond
 * this host.
 *
 * A session's manifest is its owner uid and its committed token history.
 * The daemon writes it after the local journal commit and before the turn's
 * final chunk (the acknowledgement); a host that takes a session over reads
 * it and, when its own copy differs (it never had the session, or it has an
 * older turn of it), replaces its copy with the manifest's history: the
 * state is recomputed from the history on the next acquire, so greedy
 * output continues exactly as on the host that served before.
 *
 * What this does not do yet: state pages are not written to the shared tier
 * (a taken-over session is recomputed, not restored layer by layer from
 * RADOS), and the lease calls and the manifest wait are synchronous on the
 * compute thread (one round trip per admitted request, one per finished
 * turn, one per active session every third of a lease), not handed to the
 * io thread.
 */
#include "daemon/shared.h"

#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>

#include "base/clock.h"
#include "daemon/cluster.h"
#include "kvcache/tier.h"

/* The tier handle is shared with the cluster thread (daemon/cluster.h):
 * every call on it holds srv->tier_lock. */
#define TIER(srv, call)                                   \
	({                                                \
		pthread_mutex_lock(&(srv)->tier_lock);    \
		__typeof__(call) r_ = (call);             \
		pthread_mutex_unlock(&(srv)->tier_lock);  \
		r_;                                       \
	})

#define MANIFEST_VERSION 1

struct manifest_hdr {
	uint32_t version;
	uint32_t owner_uid;
	uint64_t n_tokens;
};

int dp_shared_claim(struct dp_server *srv, const char *session, char *why, size_t why_len)
{
	struct dp_kv_shared *t = srv->tier;
	if (!t || !session[0])
		return 0;
	/* held and renewed by the cluster thread: ours, no round trip */
	if (dp_cluster_touch(srv->cluster, session) == 0)
		return 0;
	uint64_t epoch;
	char owner[DP_KV_SHARED_HOST_ID_MAX + 1] = "";
	int ret = TIER(srv, dp_kv_shared_lease_take(t, session, &epoch, owner, sizeof(owner)));
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
	if (ret == 0)
		return 0; /* ours already: our copy is the newest */
	/* Newly ours: the manifest is the truth, if there is one. */
	void *buf = NULL;
	size_t len = 0;
	ret = TIER(srv, dp_kv_shared_manifest_get(t, session, &buf, &len));
	if (ret == -ENOENT)
		return 0;
	struct manifest_hdr h;
	if (ret == 0 && len >= sizeof(h)) {
		memcpy(&h, buf, sizeof(h));
		if (h.version != MANIFEST_VERSION || h.n_tokens > (len - sizeof(h)) / sizeof(int32_t) ||
		    sizeof(h) + h.n_tokens * sizeof(int32_t) != len)
			ret = -EBADMSG;
	} else if (ret == 0) {
		ret = -EBADMSG;
	}
	if (ret < 0) {
		free(buf);
		TIER(srv, dp_kv_shared_lease_release(t, session));
		snprintf(why, why_len, "session %s: its manifest on the shared tier cannot be read: %s",
			 session, strerror(-ret));
		return ret;
	}
	const int32_t *tokens = (const int32_t *)((const char *)buf + sizeof(h));
	struct dp_kv_session *s = NULL;
	if (dp_kv_session_find(srv->kv, session, &s) == 0 && dp_kv_session_len(s) == h.n_tokens &&
	    !memcmp(dp_kv_session_history(s), tokens, h.n_tokens * sizeof(int32_t))) {
		free(buf);
		return 0; /* our copy is the manifest's */
	}
	/* Ours is missing or stale: replace it by the manifest's history. */
	if (s && (ret = dp_kv_session_drop(srv->kv, s)) < 0)
		goto fail;
	if ((ret = dp_kv_session_create_owned(srv->kv, session, h.owner_uid, &s)) < 0)
		goto fail;
	for (uint64_t off = 0; off < h.n_tokens;) {
		uint32_t n = h.n_tokens - off > (1u << 20) ? 1u << 20 : (uint32_t)(h.n_tokens - off);
		if ((ret = dp_kv_session_append(srv->kv, s, tokens + off, n)) < 0)
			goto fail;
		off += n;
	}
	if ((ret = dp_kv_commit(srv->kv)) < 0)
		goto fail;
	free(buf);
	return 1;
fail:
	free(buf);
	TIER(srv, dp_kv_shared_lease_release(t, session));
	snprintf(why, why_len, "session %s: cannot take it over from the shared tier: %s", session,
		 strerror(-ret));
	return ret;
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

int dp_shared_commit(struct dp_server *srv, struct dp_kv_session *const *sessions, size_t n,
		     int *ret_res)
{
	struct dp_kv_shared *t = srv->tier;
	if (!t || n == 0)
		return 0;
	struct put_wait *w = calloc(n, sizeof(*w));
	if (!w)
		return -ENOMEM;
	for (size_t i = 0; i < n; i++) {
		struct dp_kv_session *s = sessions[i];
		uint64_t len = dp_kv_session_len(s);
		size_t bytes = sizeof(struct manifest_hdr) + len * sizeof(int32_t);
		char *buf = malloc(bytes);
		if (!buf) {
			w[i] = (struct put_wait){ .res = -ENOMEM, .done = true };
			continue;
		}
		struct manifest_hdr h = { .version = MANIFEST_VERSION,
					  .owner_uid = dp_kv_session_owner(s),
					  .n_tokens = len };
		memcpy(buf, &h, sizeof(h));
		memcpy(buf + sizeof(h), dp_kv_session_history(s), len * sizeof(int32_t));
		int ret = TIER(srv, dp_kv_shared_manifest_put(t, dp_kv_session_id(s), buf, bytes, on_put,
							       &w[i]));
		free(buf); /* the tier copied it */
		if (ret < 0)
			w[i] = (struct put_wait){ .res = ret, .done = true };
	}
	/* The turns are acknowledged only once their manifests are in: wait. */
	uint64_t deadline = dp_clock_ns() + (uint64_t)srv->cfg.lease_ms * 1000000ull;
	for (;;) {
		size_t left = 0;
		for (size_t i = 0; i < n; i++)
			left += !w[i].done;
		if (!left || dp_clock_ns() > deadline)
			break;
		struct pollfd p = { .fd = dp_kv_shared_fd(t), .events = POLLIN };
		if (poll(&p, 1, 50) > 0)
			TIER(srv, dp_kv_shared_reap(t, 0));
	}
	int bad = 0;
	for (size_t i = 0; i < n; i++) {
		ret_res[i] = w[i].done ? w[i].res : -ETIMEDOUT;
		bad += ret_res[i] < 0;
	}
	if (bad && TIER(srv, dp_kv_shared_inflight(t))) {
		/* timed out: the callbacks still name w; wait them out so they
		 * cannot write freed memory (librados's op timeout bounds it) */
		while (TIER(srv, dp_kv_shared_inflight(t))) {
			struct pollfd p = { .fd = dp_kv_shared_fd(t), .events = POLLIN };
			if (poll(&p, 1, 100) > 0)
				TIER(srv, dp_kv_shared_reap(t, 0));
		}
	}
	free(w);
	return bad;
}
