/* SPDX-License-Identifier: MIT */
/*
 * v4ctl health, sessions, drain, evict, close, shutdown — one request, one
 * reply each.
 */
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "v4ctl/v4ctl.h"

enum {
	OPT_JSON = DP_V4CTL_OPT_FIRST_COMMAND,
	OPT_DROP,
	OPT_RELEASE,
	OPT_GRACE,
	OPT_UNITS,
};

/* What a command's command line may hold. */
struct args {
	bool json, drop, units, release;
	uint64_t grace_ms;
	const char *id; /* the one positional argument of evict and close */
};

/*
 * Parse argv for cmd: the options in opts (beyond the common ones) and,
 * when want_id, one session id. Returns 0 or DP_V4CTL_EXIT_USAGE.
 */
static int parse(struct dp_v4ctl *ctl, const char *cmd, const char *usage,
                 const struct option *opts, bool want_id, int argc, char **argv, struct args *a)
{
	int opt;
	opterr = 0;
	while ((opt = getopt_long(argc, argv, DP_V4CTL_COMMON_SHORT, opts, NULL)) != -1) {
		int r = dp_v4ctl_common_opt(ctl, opt, optarg, usage);
		if (r < 0)
			return DP_V4CTL_EXIT_USAGE;
		if (r > 0)
			continue;
		switch (opt) {
		case OPT_JSON:
			a->json = true;
			break;
		case OPT_DROP:
			a->drop = true;
			break;
		case OPT_UNITS:
			a->units = true;
			break;
		case OPT_RELEASE:
			a->release = true;
			break;
		case OPT_GRACE:
			if (dp_v4ctl_parse_u64("--grace-ms", optarg, 0, UINT32_MAX, &a->grace_ms) <
			    0)
				return DP_V4CTL_EXIT_USAGE;
			break;
		default:
			return dp_v4ctl_usage_error(cmd, "unknown option or missing value: '%s'",
			                            argv[optind - 1]);
		}
	}
	if (want_id) {
		if (optind >= argc)
			return dp_v4ctl_usage_error(cmd, "which session? (v4ctl %s ID)", cmd);
		a->id = argv[optind++];
		if (dp_proto_session_id_check(a->id) < 0) {
			fprintf(stderr,
			        "v4ctl: '%s' is not a session id (1..%u bytes of [A-Za-z0-9._-], "
			        "not '.' or '..')\n",
			        a->id, DP_PROTO_SESSION_ID_MAX);
			return DP_V4CTL_EXIT_USAGE;
		}
	}
	if (optind < argc)
		return dp_v4ctl_usage_error(cmd, "unexpected argument '%s'", argv[optind]);
	return 0;
}

/* Connect, send req, expect want; *ret_resp on success. */
static int one_call(struct dp_v4ctl *ctl, Dualpath__V1__Request *req,
                    Dualpath__V1__Response__BodyCase want, Dualpath__V1__Response **ret_resp)
{
	struct dp_client *c;
	int ret = dp_v4ctl_open(ctl, &c);
	if (ret)
		return ret;
	ret = dp_v4ctl_call(ctl, c, req, want, ret_resp);
	dp_client_free(c);
	return ret;
}

static int finish_output(int ret)
{
	if (fflush(stdout) != 0 || ferror(stdout)) {
		perror("v4ctl: cannot write to stdout");
		return DP_V4CTL_EXIT_PROTOCOL;
	}
	return ret;
}

/* ---- health ---------------------------------------------------------------- */

static const char health_usage[] =
    "usage: v4ctl health [--json]\n"
    "\n"
    "Print the daemon's state in one line: SERVING, STARTING, DRAINING or\n"
    "STOPPING, uptime, backend, sessions and running requests. Exits 0 when\n"
    "SERVING, 5 when the daemon answers but is not, 3 when it cannot be\n"
    "reached: usable as a health probe.\n"
    "\n"
    "Options:\n"
    "  --json          one JSON object\n"
    "  --socket PATH, --timeout MS   as for every command\n";

int dp_v4ctl_health(struct dp_v4ctl *ctl, int argc, char **argv)
{
	static const struct option opts[] = {
	    DP_V4CTL_COMMON_OPTS,
	    {"json", no_argument, NULL, OPT_JSON},
	    {0},
	};
	struct args a = {0};
	int ret = parse(ctl, "health", health_usage, opts, false, argc, argv, &a);
	if (ret)
		return ret;

	Dualpath__V1__Request req = DUALPATH__V1__REQUEST__INIT;
	Dualpath__V1__HealthRequest hr = DUALPATH__V1__HEALTH_REQUEST__INIT;
	Dualpath__V1__Response *r = NULL;
	req.body_case = DUALPATH__V1__REQUEST__BODY_HEALTH;
	req.health = &hr;
	if ((ret = one_call(ctl, &req, DUALPATH__V1__RESPONSE__BODY_HEALTH, &r)))
		return ret;
	const Dualpath__V1__HealthReply *h = r->health;
	const ProtobufCEnumValue *ev = protobuf_c_enum_descriptor_get_value(
	    &dualpath__v1__health_reply__status__descriptor, (int)h->status);
	const char *status = ev ? ev->name : "UNKNOWN";
	if (a.json) {
		json_t *o = json_pack(
		    "{s:s, s:I, s:s, s:I, s:I}", "status", status, "uptime_ms",
		    (json_int_t)h->uptime_ms, "backend", h->backend ? h->backend : "", "sessions",
		    (json_int_t)h->sessions, "active_requests", (json_int_t)h->active_requests);
		json_dumpf(o, stdout, JSON_PRESERVE_ORDER | JSON_COMPACT);
		fputc('\n', stdout);
		json_decref(o);
	} else {
		char up[32];
		printf("%s: up %s, backend %s, %u session%s, %u request%s running\n", status,
		       dp_v4ctl_fmt_ms(h->uptime_ms, up, sizeof(up)), h->backend ? h->backend : "?",
		       h->sessions, h->sessions == 1 ? "" : "s", h->active_requests,
		       h->active_requests == 1 ? "" : "s");
	}
	ret = h->status == DUALPATH__V1__HEALTH_REPLY__STATUS__SERVING ? DP_V4CTL_EXIT_OK
	                                                               : DP_V4CTL_EXIT_NOT_SERVING;
	dp_proto_response_free(r);
	return finish_output(ret);
}

/* ---- sessions -------------------------------------------------------------- */

static const char sessions_usage[] =
    "usage: v4ctl sessions [--json]\n"
    "\n"
    "List the daemon's sessions: id, context tokens, the tier holding the\n"
    "state (device, dram, nvme, none), its size, idle time, and whether a\n"
    "request is running on it, and the uid it belongs to (others see only\n"
    "their own sessions; root and the admin group see all). With a shared\n"
    "tier, a HOST column names this daemon's host id for the sessions whose\n"
    "leases it holds ('-': it holds none now; v4ctl cluster --session ID\n"
    "says who does).\n"
    "\n"
    "Options:\n"
    "  --units         list the prefix units instead (root and the admin group only):\n"
    "                  the states kept for prompts that start with their tokens\n"
    "  --json          "
    "{\"sessions\":[{\"id\",\"tokens\",\"tier\",\"bytes\",\"idle_ms\",\"busy\",\"owner\",\"lost\",\"host\"}]}\n"
    "                  (owner: a uid, or null for a session from before owners;\n"
    "                  lost: its history was lost to journal damage, shown as tier lost)\n"
    "  --socket PATH, --timeout MS   as for every command\n";

int dp_v4ctl_sessions(struct dp_v4ctl *ctl, int argc, char **argv)
{
	static const struct option opts[] = {
	    DP_V4CTL_COMMON_OPTS,
	    {"json", no_argument, NULL, OPT_JSON},
	    {"units", no_argument, NULL, OPT_UNITS},
	    {0},
	};
	struct args a = {0};
	int ret = parse(ctl, "sessions", sessions_usage, opts, false, argc, argv, &a);
	if (ret)
		return ret;

	Dualpath__V1__Request req = DUALPATH__V1__REQUEST__INIT;
	Dualpath__V1__ListSessionsRequest lr = DUALPATH__V1__LIST_SESSIONS_REQUEST__INIT;
	Dualpath__V1__Response *r = NULL;
	req.body_case = DUALPATH__V1__REQUEST__BODY_LIST_SESSIONS;
	req.list_sessions = &lr;
	lr.units = a.units;
	if ((ret = one_call(ctl, &req, DUALPATH__V1__RESPONSE__BODY_SESSIONS, &r)))
		return ret;
	const Dualpath__V1__SessionList *l = r->sessions;
	if (a.json) {
		json_t *arr = json_array();
		for (size_t i = 0; i < l->n_sessions; i++) {
			const Dualpath__V1__SessionInfo *s = l->sessions[i];
			json_array_append_new(
			    arr, json_pack("{s:s, s:I, s:s, s:I, s:I, s:b, s:o, s:b, s:s}", "id", s->session_id,
			                   "tokens", (json_int_t)s->tokens, "tier",
			                   s->tier ? s->tier : "", "bytes", (json_int_t)s->bytes,
			                   "idle_ms", (json_int_t)s->idle_ms, "busy", s->busy, "owner",
			                   s->owner_uid < 0 ? json_null() : json_integer(s->owner_uid),
			                   "lost", s->lost, "host", s->host ? s->host : ""));
		}
		json_t *o = json_pack("{s:o}", "sessions", arr);
		json_dumpf(o, stdout, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
		fputc('\n', stdout);
		json_decref(o);
	} else if (l->n_sessions == 0) {
		printf(a.units ? "no prefix units\n" : "no sessions\n");
	} else {
		int wid = 2;
		bool hosts = false; /* a shared tier: the HOST column */
		for (size_t i = 0; i < l->n_sessions; i++) {
			if ((int)strlen(l->sessions[i]->session_id) > wid)
				wid = (int)strlen(l->sessions[i]->session_id);
			hosts |= l->sessions[i]->host && l->sessions[i]->host[0];
		}
		int ow = hosts ? 5 : 0; /* the OWNER column padded only when HOST follows */
		printf("%-*s  %10s  %-6s  %10s  %8s  %-4s  %-*s%s\n", wid, "ID", "TOKENS", "TIER",
		       "STATE", "IDLE", "BUSY", ow, "OWNER", hosts ? "  HOST" : "");
		for (size_t i = 0; i < l->n_sessions; i++) {
			const Dualpath__V1__SessionInfo *s = l->sessions[i];
			char b[32], t[32], o[24] = "-";
			if (s->owner_uid >= 0)
				snprintf(o, sizeof(o), "%" PRId64, s->owner_uid);
			printf("%-*s  %10" PRIu64 "  %-6s  %10s  %8s  %-4s  %-*s%s%s\n", wid, s->session_id,
			       s->tokens, s->lost ? "lost" : s->tier ? s->tier : "?",
			       dp_v4ctl_fmt_bytes(s->bytes, b, sizeof(b)),
			       dp_v4ctl_fmt_ms(s->idle_ms, t, sizeof(t)), s->busy ? "yes" : "no", ow, o,
			       hosts ? "  " : "", hosts ? (s->host && s->host[0] ? s->host : "-") : "");
		}
	}
	dp_proto_response_free(r);
	return finish_output(DP_V4CTL_EXIT_OK);
}

/* ---- drain, evict, close, shutdown: an Ack each ------------------------------ */

static int ack_call(struct dp_v4ctl *ctl, Dualpath__V1__Request *req)
{
	Dualpath__V1__Response *r = NULL;
	int ret = one_call(ctl, req, DUALPATH__V1__RESPONSE__BODY_ACK, &r);
	dp_proto_response_free(r);
	return ret;
}

static const char drain_usage[] =
    "usage: v4ctl drain [--grace-ms N]                          (admin)\n"
    "\n"
    "Stop admitting Generate requests (they get UNAVAILABLE); requests\n"
    "already running finish, or are cancelled after the grace period. The\n"
    "daemon keeps answering the other requests; health says DRAINING.\n"
    "\n"
    "Options:\n"
    "  --grace-ms N    cancel what still runs after N ms (default 0: the\n"
    "                  daemon's drain_grace_ms)\n"
    "  --socket PATH, --timeout MS   as for every command\n";

int dp_v4ctl_drain(struct dp_v4ctl *ctl, int argc, char **argv)
{
	static const struct option opts[] = {
	    DP_V4CTL_COMMON_OPTS,
	    {"grace-ms", required_argument, NULL, OPT_GRACE},
	    {0},
	};
	struct args a = {0};
	int ret = parse(ctl, "drain", drain_usage, opts, false, argc, argv, &a);
	if (ret)
		return ret;
	Dualpath__V1__Request req = DUALPATH__V1__REQUEST__INIT;
	Dualpath__V1__Drain d = DUALPATH__V1__DRAIN__INIT;
	d.grace_ms = (uint32_t)a.grace_ms;
	req.body_case = DUALPATH__V1__REQUEST__BODY_DRAIN;
	req.drain = &d;
	if ((ret = ack_call(ctl, &req)))
		return ret;
	if (a.grace_ms)
		printf(
		    "dualpathd is draining: new requests are refused, running ones are cancelled "
		    "after %" PRIu64 " ms\n",
		    a.grace_ms);
	else
		printf(
		    "dualpathd is draining: new requests are refused, running ones are cancelled "
		    "after its drain_grace_ms\n");
	return finish_output(DP_V4CTL_EXIT_OK);
}

static const char evict_usage[] =
    "usage: v4ctl evict ID [--drop] [--release]                 (admin)\n"
    "\n"
    "Move session ID's state out of memory to the NVMe tier (its next turn\n"
    "restores it), or with --drop delete the session.\n"
    "\n"
    "Options:\n"
    "  --drop          delete the session instead\n"
    "  --release       hand it off (needs a shared tier): also release this\n"
    "                  host's lease at once, so that another host takes the\n"
    "                  session from the shared tier without waiting out the\n"
    "                  lease; answered once every acknowledged turn is\n"
    "                  durable there and the lease is released\n"
    "  --socket PATH, --timeout MS   as for every command\n";

int dp_v4ctl_evict(struct dp_v4ctl *ctl, int argc, char **argv)
{
	static const struct option opts[] = {
	    DP_V4CTL_COMMON_OPTS,
	    {"drop", no_argument, NULL, OPT_DROP},
	    {"release", no_argument, NULL, OPT_RELEASE},
	    {0},
	};
	struct args a = {0};
	int ret = parse(ctl, "evict", evict_usage, opts, true, argc, argv, &a);
	if (ret)
		return ret;
	Dualpath__V1__Request req = DUALPATH__V1__REQUEST__INIT;
	Dualpath__V1__EvictSession e = DUALPATH__V1__EVICT_SESSION__INIT;
	e.session_id = (char *)a.id;
	e.drop = a.drop;
	e.release = a.release;
	req.body_case = DUALPATH__V1__REQUEST__BODY_EVICT_SESSION;
	req.evict_session = &e;
	if ((ret = ack_call(ctl, &req)))
		return ret;
	printf(a.drop ? "session %s dropped%s\n" : "session %s evicted to the NVMe tier%s\n", a.id,
	       a.release ? "; its lease is released: any host may take it from the shared tier"
	                 : "");
	return finish_output(DP_V4CTL_EXIT_OK);
}

static const char close_usage[] =
    "usage: v4ctl close ID [--drop]\n"
    "\n"
    "End session ID: its state is persisted to disk and leaves memory (a\n"
    "later generate --session ID continues it), or with --drop deleted.\n"
    "\n"
    "Options:\n"
    "  --drop          delete the session's state instead of persisting it\n"
    "  --socket PATH, --timeout MS   as for every command\n";

int dp_v4ctl_close(struct dp_v4ctl *ctl, int argc, char **argv)
{
	static const struct option opts[] = {
	    DP_V4CTL_COMMON_OPTS,
	    {"drop", no_argument, NULL, OPT_DROP},
	    {0},
	};
	struct args a = {0};
	int ret = parse(ctl, "close", close_usage, opts, true, argc, argv, &a);
	if (ret)
		return ret;
	Dualpath__V1__Request req = DUALPATH__V1__REQUEST__INIT;
	Dualpath__V1__CloseSession cs = DUALPATH__V1__CLOSE_SESSION__INIT;
	cs.session_id = (char *)a.id;
	cs.persist = !a.drop;
	req.body_case = DUALPATH__V1__REQUEST__BODY_CLOSE_SESSION;
	req.close_session = &cs;
	if ((ret = ack_call(ctl, &req)))
		return ret;
	printf(a.drop ? "session %s closed and deleted\n" : "session %s closed and persisted\n",
	       a.id);
	return finish_output(DP_V4CTL_EXIT_OK);
}

static const char shutdown_usage[] =
    "usage: v4ctl shutdown                                      (admin)\n"
    "\n"
    "Drain (as 'v4ctl drain'), persist every session and exit 0, as SIGTERM\n"
    "does. Under systemd with Restart=on-failure the daemon stays down;\n"
    "prefer 'systemctl stop dualpathd' there.\n"
    "\n"
    "Options:\n"
    "  --socket PATH, --timeout MS   as for every command\n";

int dp_v4ctl_shutdown(struct dp_v4ctl *ctl, int argc, char **argv)
{
	static const struct option opts[] = {
	    DP_V4CTL_COMMON_OPTS,
	    {0},
	};
	struct args a = {0};
	int ret = parse(ctl, "shutdown", shutdown_usage, opts, false, argc, argv, &a);
	if (ret)
		return ret;
	Dualpath__V1__Request req = DUALPATH__V1__REQUEST__INIT;
	Dualpath__V1__Shutdown s = DUALPATH__V1__SHUTDOWN__INIT;
	req.body_case = DUALPATH__V1__REQUEST__BODY_SHUTDOWN;
	req.shutdown = &s;
	if ((ret = ack_call(ctl, &req)))
		return ret;
	printf("dualpathd is shutting down: draining, then persisting sessions\n");
	return finish_output(DP_V4CTL_EXIT_OK);
}
