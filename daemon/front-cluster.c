/* SPDX-License-Identifier: MIT */
/*
 * ClusterRequest (proto/dualpath.proto): the members as the cluster thread
 * last read them, the leases this host holds, and where the sessions asked
 * about are — answered on the front thread. Members, leases and rendezvous
 * hosts cost no round trip (daemon/cluster.h's snapshot); each owner asked
 * about is one RADOS read under srv->tier_lock, bounded by the tier's op
 * timeout (the front waits for it: at most 64 per request, admins only).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/cluster.h"
#include "daemon/front-internal.h"

void front_on_cluster(struct front *f, uint32_t slot, const Dualpath__V1__Request *req)
{
	struct dp_server *srv = f->srv;
	const Dualpath__V1__ClusterRequest *q = req->cluster;
	bool admin = f->conns[slot].admin;
	struct dp_kv_shared_member *m = NULL;
	size_t n = 0;
	char(*leases)[DP_CLUSTER_ID_MAX] = NULL;
	size_t n_leases = 0;
	size_t n_sess = q->n_session_ids;

	if (srv->cluster && (dp_cluster_members(srv->cluster, &m, &n) < 0 ||
			     (admin && dp_cluster_leases(srv->cluster, &leases, &n_leases) < 0))) {
		front_reply_error(f, slot, req->request_id, DUALPATH__V1__CODE__RESOURCE_EXHAUSTED,
				  "out of memory");
		free(m);
		return;
	}
	Dualpath__V1__ClusterMember *rows = calloc(n ? n : 1, sizeof(*rows));
	Dualpath__V1__ClusterMember **rowp = calloc(n ? n : 1, sizeof(*rowp));
	bool *live = calloc(n ? n : 1, sizeof(*live));
	char **leasep = calloc(n_leases ? n_leases : 1, sizeof(*leasep));
	Dualpath__V1__SessionPlacement *pl = calloc(n_sess ? n_sess : 1, sizeof(*pl));
	Dualpath__V1__SessionPlacement **plp = calloc(n_sess ? n_sess : 1, sizeof(*plp));
	char(*owners)[DP_KV_SHARED_HOST_ID_MAX + 1] = calloc(n_sess ? n_sess : 1, sizeof(*owners));
	char(*errs)[96] = calloc(n_sess ? n_sess : 1, sizeof(*errs));
	if (!rows || !rowp || !live || !leasep || !pl || !plp || !owners || !errs) {
		front_reply_error(f, slot, req->request_id, DUALPATH__V1__CODE__RESOURCE_EXHAUSTED,
				  "out of memory");
		goto out;
	}
	uint64_t now = dp_cluster_now_ms();
	for (size_t i = 0; i < n; i++) {
		dualpath__v1__cluster_member__init(&rows[i]);
		rows[i].host_id = m[i].host;
		rows[i].socket = m[i].socket;
		rows[i].http = m[i].http;
		rows[i].heartbeat_age_ms = now > m[i].beat_ms ? now - m[i].beat_ms : 0;
		rows[i].live = live[i] = dp_cluster_member_live(&m[i], now);
		rows[i].ttl_ms = m[i].ttl_ms;
		rows[i].started_unix_ms = m[i].start_ms;
		rowp[i] = &rows[i];
	}
	for (size_t i = 0; i < n_leases; i++)
		leasep[i] = leases[i];
	for (size_t i = 0; i < n_sess; i++) {
		const char *id = q->session_ids[i];
		dualpath__v1__session_placement__init(&pl[i]);
		pl[i].session_id = (char *)id;
		int r = dp_cluster_rendezvous(m, live, n, id);
		pl[i].rendezvous = r >= 0 ? m[r].host : "";
		pl[i].owner = owners[i];
		pl[i].error = errs[i];
		if (!srv->tier) {
			snprintf(errs[i], sizeof(errs[i]), "the shared tier is down");
		} else if (admin) {
			pthread_mutex_lock(&srv->tier_lock);
			int ret = dp_kv_shared_lease_owner(srv->tier, id, owners[i], sizeof(owners[i]), NULL);
			pthread_mutex_unlock(&srv->tier_lock);
			if (ret < 0)
				snprintf(errs[i], sizeof(errs[i]), "cannot read its lease: %s", strerror(-ret));
		} else {
			snprintf(errs[i], sizeof(errs[i]), "owners are for root and group %.48s only",
				 srv->cfg.admin_group);
		}
		plp[i] = &pl[i];
	}
	Dualpath__V1__ClusterReply c = DUALPATH__V1__CLUSTER_REPLY__INIT;
	c.host_id = srv->host_id;
	c.shared_tier_up = srv->tier != NULL;
	c.n_members = n;
	c.members = rowp;
	c.n_leases = n_leases;
	c.leases = leasep;
	c.n_sessions = n_sess;
	c.sessions = plp;
	Dualpath__V1__Response r = DUALPATH__V1__RESPONSE__INIT;
	r.request_id = req->request_id;
	r.body_case = DUALPATH__V1__RESPONSE__BODY_CLUSTER;
	r.cluster = &c;
	front_reply(f, slot, &r);
out:
	free(m);
	free(leases);
	free(rows);
	free(rowp);
	free(live);
	free(leasep);
	free(pl);
	free(plp);
	free(owners);
	free(errs);
}
