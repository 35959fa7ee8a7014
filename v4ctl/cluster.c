/* SPDX-License-Identifier: MIT */
/*
 * v4ctl cluster — the hosts on the shared tier (ClusterRequest): members,
 * their addresses and heartbeat ages, the leases this daemon holds, and for
 * --session ids, each one's owner and rendezvous host.
 */
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "v4ctl/v4ctl.h"

enum {
	OPT_JSON = DP_V4CTL_OPT_FIRST_COMMAND,
	OPT_SESSION,
};

static const char cluster_usage[] =
    "usage: v4ctl cluster [--session ID]... [--json]\n"
    "\n"
    "The hosts serving from the same shared tier (shared_tier = rados): each\n"
    "member's host id, its socket and HTTP addresses, its heartbeat age and\n"
    "whether it is live (a heartbeat within its ttl, lease_ms); then the\n"
    "sessions whose leases this daemon holds (root and the admin group only).\n"
    "\n"
    "Options:\n"
    "  --session ID    also print the session's owner (the host holding its\n"
    "                  lease; root and the admin group only) and its\n"
    "                  rendezvous host (the live member it hashes to: where a\n"
    "                  router sends a session nobody holds); up to 64\n"
    "  --json          {\"host\",\"shared_tier_up\",\"members\":[{\"host\",\"socket\",\"http\",\n"
    "                  \"heartbeat_age_ms\",\"live\",\"ttl_ms\",\"started_unix_ms\"}],\"leases\":[ID],\n"
    "                  \"sessions\":[{\"id\",\"owner\",\"rendezvous\",\"error\"}]}\n"
    "  --socket PATH, --timeout MS   as for every command\n";

int dp_v4ctl_cluster(struct dp_v4ctl *ctl, int argc, char **argv)
{
	static const struct option opts[] = {
	    DP_V4CTL_COMMON_OPTS,
	    {"json", no_argument, NULL, OPT_JSON},
	    {"session", required_argument, NULL, OPT_SESSION},
	    {0},
	};
	char *ids[DP_PROTO_CLUSTER_SESSIONS_MAX];
	size_t n_ids = 0;
	bool json = false;
	int opt;
	opterr = 0;
	while ((opt = getopt_long(argc, argv, DP_V4CTL_COMMON_SHORT, opts, NULL)) != -1) {
		int r = dp_v4ctl_common_opt(ctl, opt, optarg, cluster_usage);
		if (r < 0)
			return DP_V4CTL_EXIT_USAGE;
		if (r > 0)
			continue;
		if (opt == OPT_JSON) {
			json = true;
		} else if (opt == OPT_SESSION) {
			if (dp_proto_session_id_check(optarg) < 0) {
				fprintf(stderr,
				        "v4ctl: --session '%s' is not a session id (1..%u bytes of "
				        "[A-Za-z0-9._-], not '.' or '..')\n",
				        optarg, DP_PROTO_SESSION_ID_MAX);
				return DP_V4CTL_EXIT_USAGE;
			}
			if (n_ids == DP_PROTO_CLUSTER_SESSIONS_MAX)
				return dp_v4ctl_usage_error("cluster", "at most %u --session ids",
				                            DP_PROTO_CLUSTER_SESSIONS_MAX);
			ids[n_ids++] = optarg;
		} else {
			return dp_v4ctl_usage_error("cluster", "unknown option or missing value: '%s'",
			                            argv[optind - 1]);
		}
	}
	if (optind < argc)
		return dp_v4ctl_usage_error("cluster", "unexpected argument '%s'", argv[optind]);

	Dualpath__V1__Request req = DUALPATH__V1__REQUEST__INIT;
	Dualpath__V1__ClusterRequest cr = DUALPATH__V1__CLUSTER_REQUEST__INIT;
	cr.n_session_ids = n_ids;
	cr.session_ids = ids;
	req.body_case = DUALPATH__V1__REQUEST__BODY_CLUSTER;
	req.cluster = &cr;
	struct dp_client *c;
	Dualpath__V1__Response *r = NULL;
	int ret = dp_v4ctl_open(ctl, &c);
	if (ret)
		return ret;
	ret = dp_v4ctl_call(ctl, c, &req, DUALPATH__V1__RESPONSE__BODY_CLUSTER, &r);
	dp_client_free(c);
	if (ret)
		return ret;
	const Dualpath__V1__ClusterReply *cl = r->cluster;
	if (json) {
		json_t *mem = json_array(), *leases = json_array(), *sess = json_array();
		for (size_t i = 0; i < cl->n_members; i++) {
			const Dualpath__V1__ClusterMember *m = cl->members[i];
			json_array_append_new(
			    mem, json_pack("{s:s, s:s, s:s, s:I, s:b, s:I, s:I}", "host", m->host_id,
			                   "socket", m->socket, "http", m->http, "heartbeat_age_ms",
			                   (json_int_t)m->heartbeat_age_ms, "live", m->live, "ttl_ms",
			                   (json_int_t)m->ttl_ms, "started_unix_ms",
			                   (json_int_t)m->started_unix_ms));
		}
		for (size_t i = 0; i < cl->n_leases; i++)
			json_array_append_new(leases, json_string(cl->leases[i]));
		for (size_t i = 0; i < cl->n_sessions; i++) {
			const Dualpath__V1__SessionPlacement *p = cl->sessions[i];
			json_array_append_new(sess, json_pack("{s:s, s:s, s:s, s:s}", "id", p->session_id,
			                                      "owner", p->owner, "rendezvous",
			                                      p->rendezvous, "error", p->error));
		}
		json_t *o = json_pack("{s:s, s:b, s:o, s:o, s:o}", "host", cl->host_id,
		                      "shared_tier_up", cl->shared_tier_up, "members", mem, "leases",
		                      leases, "sessions", sess);
		json_dumpf(o, stdout, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
		fputc('\n', stdout);
		json_decref(o);
	} else {
		if (!cl->shared_tier_up)
			printf("this daemon (%s) has no shared tier up: no members\n",
			       cl->host_id[0] ? cl->host_id : "no host id");
		int wid = 4;
		for (size_t i = 0; i < cl->n_members; i++)
			if ((int)strlen(cl->members[i]->host_id) > wid)
				wid = (int)strlen(cl->members[i]->host_id);
		if (cl->n_members)
			printf("%-*s  %-4s  %9s  %s\n", wid, "HOST", "LIVE", "HEARTBEAT", "ADDRESS");
		for (size_t i = 0; i < cl->n_members; i++) {
			const Dualpath__V1__ClusterMember *m = cl->members[i];
			char age[32];
			printf("%-*s  %-4s  %9s  %s%s%s%s%s\n", wid, m->host_id, m->live ? "yes" : "no",
			       dp_v4ctl_fmt_ms(m->heartbeat_age_ms, age, sizeof(age)),
			       m->socket[0] ? "unix:" : "", m->socket,
			       m->socket[0] && m->http[0] ? " " : "", m->http[0] ? "http:" : "", m->http);
		}
		if (cl->shared_tier_up) {
			printf("leases held by %s: %zu\n", cl->host_id, cl->n_leases);
			for (size_t i = 0; i < cl->n_leases; i++)
				printf("  %s\n", cl->leases[i]);
		}
		for (size_t i = 0; i < cl->n_sessions; i++) {
			const Dualpath__V1__SessionPlacement *p = cl->sessions[i];
			printf("session %s: owner %s, rendezvous host %s%s%s\n", p->session_id,
			       p->error[0] ? "?" : p->owner[0] ? p->owner : "none",
			       p->rendezvous[0] ? p->rendezvous : "none (no live member)",
			       p->error[0] ? "; owner unknown: " : "", p->error);
		}
	}
	dp_proto_response_free(r);
	if (fflush(stdout) != 0 || ferror(stdout)) {
		perror("v4ctl: cannot write to stdout");
		return DP_V4CTL_EXIT_PROTOCOL;
	}
	return DP_V4CTL_EXIT_OK;
}
