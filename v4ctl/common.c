/* SPDX-License-Identifier: MIT */
/*
 * v4ctl/common.c — option parsing and the messages for what goes wrong
 * (connecting, daemon errors, I/O), shared by the commands.
 */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dp-config.h"
#include "v4ctl/v4ctl.h"

int dp_v4ctl_usage_error(const char *cmd, const char *fmt, ...)
{
	va_list ap;
	fputs("v4ctl: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, "\nTry 'v4ctl %s%s--help'.\n", cmd ? cmd : "", cmd ? " " : "");
	return DP_V4CTL_EXIT_USAGE;
}

int dp_v4ctl_parse_u64(const char *opt, const char *arg, uint64_t min, uint64_t max, uint64_t *ret)
{
	char *end;
	errno = 0;
	if (!arg || !*arg || *arg == '-' || *arg == '+')
		goto bad;
	unsigned long long v = strtoull(arg, &end, 10);
	if (errno || *end || v < min || v > max)
		goto bad;
	*ret = v;
	return 0;
bad:
	fprintf(stderr, "v4ctl: %s: '%s' is not a whole number in %" PRIu64 "..%" PRIu64 "\n", opt,
	        arg ? arg : "", min, max);
	return -EINVAL;
}

int dp_v4ctl_parse_float(const char *opt, const char *arg, float min, float max, float *ret)
{
	char *end;
	errno = 0;
	if (!arg || !*arg)
		goto bad;
	float v = strtof(arg, &end);
	if (errno || *end || !isfinite(v) || v < min || v > max)
		goto bad;
	*ret = v;
	return 0;
bad:
	fprintf(stderr, "v4ctl: %s: '%s' is not a number in [%g, %g]\n", opt, arg ? arg : "",
	        (double)min, (double)max);
	return -EINVAL;
}

int dp_v4ctl_sampling_opt(struct dp_v4ctl_sampling *s, int opt, const char *arg)
{
	int ret;
	switch (opt) {
	case DP_V4CTL_OPT_TEMPERATURE:
		ret = dp_v4ctl_parse_float("--temperature", arg, 0, 1e6f, &s->temperature);
		break;
	case DP_V4CTL_OPT_TOP_K:
		ret = dp_v4ctl_parse_u64("--top-k", arg, 0, UINT32_MAX, &s->top_k);
		break;
	case DP_V4CTL_OPT_TOP_P:
		ret = dp_v4ctl_parse_float("--top-p", arg, 0, 1, &s->top_p);
		break;
	case DP_V4CTL_OPT_SEED:
		ret = dp_v4ctl_parse_u64("--seed", arg, 0, UINT64_MAX, &s->seed);
		break;
	default:
		return 0;
	}
	if (ret < 0)
		return -1;
	s->any = true;
	return 1;
}

Dualpath__V1__Sampling *dp_v4ctl_sampling_fill(const struct dp_v4ctl_sampling *s,
                                               Dualpath__V1__Sampling *ret)
{
	if (!s->any)
		return NULL;
	ret->temperature = s->temperature;
	ret->top_k = (uint32_t)s->top_k;
	ret->top_p = s->top_p;
	ret->seed = s->seed;
	return ret;
}

int dp_v4ctl_parse_ids(const char *opt, const char *arg, uint32_t max, uint32_t **ret_ids,
                       size_t *ret_n)
{
	size_t n = 0, cap = 16;
	uint32_t *ids = malloc(cap * sizeof(*ids));
	const char *p = arg;

	if (!ids)
		return -ENOMEM;
	while (p && *p) {
		char tok[32];
		size_t len = strcspn(p, ", ");
		if (len == 0) {
			p++;
			continue;
		}
		if (len >= sizeof(tok))
			len = sizeof(tok) - 1;
		memcpy(tok, p, len);
		tok[len] = '\0';
		uint64_t v;
		if (dp_v4ctl_parse_u64(opt, tok, 0, UINT32_MAX, &v) < 0) {
			free(ids);
			return -EINVAL;
		}
		if (n == max) {
			fprintf(stderr, "v4ctl: %s: more than %u ids\n", opt, max);
			free(ids);
			return -EINVAL;
		}
		if (n == cap) {
			uint32_t *t = realloc(ids, 2 * cap * sizeof(*ids));
			if (!t) {
				free(ids);
				return -ENOMEM;
			}
			ids = t;
			cap *= 2;
		}
		ids[n++] = (uint32_t)v;
		p += strcspn(p, ", ");
	}
	if (n == 0) {
		fprintf(stderr, "v4ctl: %s: no ids in '%s' (expected e.g. 1,2,3)\n", opt,
		        arg ? arg : "");
		free(ids);
		return -EINVAL;
	}
	*ret_ids = ids;
	*ret_n = n;
	return 0;
}

int dp_v4ctl_common_opt(struct dp_v4ctl *ctl, int opt, const char *arg, const char *usage)
{
	uint64_t v;
	switch (opt) {
	case DP_V4CTL_OPT_SOCKET:
		if (!arg[0]) {
			fprintf(stderr, "v4ctl: --socket: empty path\n");
			return -1;
		}
		ctl->socket = arg;
		return 1;
	case DP_V4CTL_OPT_TIMEOUT:
		if (dp_v4ctl_parse_u64("--timeout", arg, 0, INT32_MAX, &v) < 0)
			return -1;
		ctl->timeout_ms = v ? (int)v : -1;
		ctl->timeout_set = true;
		return 1;
	case 'h':
		fputs(usage, stdout);
		exit(DP_V4CTL_EXIT_OK);
	default:
		return 0;
	}
}

int dp_v4ctl_open(const struct dp_v4ctl *ctl, struct dp_client **ret_client)
{
	struct dp_client *c = NULL;
	const char *path = ctl->socket;
	int ret = dp_client_connect(path, ctl->timeout_ms, &c);

	if (ret < 0) {
		fprintf(stderr, "v4ctl: cannot connect to %s: %s\n", path, strerror(-ret));
		switch (ret) {
		case -ENOENT:
		case -ECONNREFUSED:
		case -ENOTDIR:
			fprintf(
			    stderr,
			    "v4ctl: is dualpathd running? (systemctl status dualpathd.socket "
			    "dualpathd.service) For another socket use --socket PATH or %s=PATH.\n",
			    DP_CLIENT_SOCKET_ENV);
			break;
		case -EACCES:
		case -EPERM:
			fprintf(
			    stderr,
			    "v4ctl: the socket is mode 0660 for its group (dualpath): join it "
			    "(sudo usermod -aG dualpath $USER, then log in again) or use sudo.\n");
			break;
		case -ETIMEDOUT:
			fprintf(
			    stderr,
			    "v4ctl: dualpathd is not accepting connections (its queue is full); "
			    "retry, or raise --timeout.\n");
			break;
		case -ENAMETOOLONG:
			fprintf(stderr,
			        "v4ctl: a Unix socket path must be shorter than 108 bytes.\n");
			break;
		default:
			break;
		}
		return DP_V4CTL_EXIT_CONNECT;
	}
	ret = dp_client_hello(c, "v4ctl/" DP_VERSION);
	if (ret == -EREMOTEIO) {
		const char *msg;
		Dualpath__V1__Error e = DUALPATH__V1__ERROR__INIT;
		e.code = dp_client_last_error(c, &msg);
		e.message = (char *)msg;
		ret = dp_v4ctl_print_error(&e, "hello");
		dp_client_free(c);
		return ret;
	}
	if (ret < 0) {
		ret = dp_v4ctl_print_io_error(ctl, c, ret, "saying hello");
		dp_client_free(c);
		return ret;
	}
	*ret_client = c;
	return DP_V4CTL_EXIT_OK;
}

int dp_v4ctl_print_error(const Dualpath__V1__Error *e, const char *what)
{
	const char *msg = e->message && e->message[0] ? e->message : "(no message)";
	(void)what;
	fprintf(stderr, "v4ctl: %s: %s\n", dp_client_code_name(e->code), msg);
	switch (e->code) {
	case DUALPATH__V1__CODE__PERMISSION_DENIED:
		fprintf(
		    stderr,
		    "v4ctl: hint: this is an admin request: run it with sudo, or join the "
		    "daemon's admin group (default dualpath-admin: sudo usermod -aG dualpath-admin "
		    "$USER, then log in again).\n");
		break;
	case DUALPATH__V1__CODE__UNAVAILABLE:
		fprintf(stderr, "v4ctl: hint: dualpathd is draining, stopping or overloaded; retry "
		                "later ('v4ctl health' shows its state).\n");
		break;
	case DUALPATH__V1__CODE__NOT_FOUND:
		fprintf(stderr, "v4ctl: hint: 'v4ctl sessions' lists the sessions.\n");
		break;
	case DUALPATH__V1__CODE__FAILED_PRECONDITION:
		if (!strcmp(what, "hello"))
			fprintf(stderr,
			        "v4ctl: hint: v4ctl %s speaks protocol %u; update v4ctl or "
			        "dualpathd so they match.\n",
			        DP_VERSION, DP_PROTO_VERSION);
		break;
	default:
		break;
	}
	return DP_V4CTL_EXIT_DAEMON_ERROR;
}

int dp_v4ctl_print_io_error(const struct dp_v4ctl *ctl, struct dp_client *c, int ret,
                            const char *what)
{
	const char *path = c ? dp_client_path(c) : ctl->socket;
	switch (ret) {
	case -ETIMEDOUT:
		fprintf(stderr,
		        "v4ctl: no reply from dualpathd on %s within %d ms while %s "
		        "(--timeout MS waits longer; 0: no limit)\n",
		        path, ctl->timeout_ms, what);
		break;
	case -ECONNRESET:
	case -EPIPE:
	case -ENOTCONN:
		fprintf(stderr,
		        "v4ctl: dualpathd closed the connection on %s while %s "
		        "(did it stop? journalctl -u dualpathd says why)\n",
		        path, what);
		break;
	default:
		fprintf(stderr, "v4ctl: protocol error on %s while %s: %s\n", path, what,
		        strerror(-ret));
		break;
	}
	return DP_V4CTL_EXIT_PROTOCOL;
}

int dp_v4ctl_call(const struct dp_v4ctl *ctl, struct dp_client *c, Dualpath__V1__Request *req,
                  Dualpath__V1__Response__BodyCase want, Dualpath__V1__Response **ret_resp)
{
	Dualpath__V1__Response *r;
	char what[64];
	snprintf(what, sizeof(what), "waiting for the %s reply", dp_proto_request_name(req));
	int ret = dp_client_call(c, req, &r);
	if (ret < 0)
		return dp_v4ctl_print_io_error(ctl, c, ret, what);
	if (r->body_case == DUALPATH__V1__RESPONSE__BODY_ERROR) {
		ret = dp_v4ctl_print_error(r->error, dp_proto_request_name(req));
		dp_proto_response_free(r);
		return ret;
	}
	if (r->body_case != want) {
		fprintf(stderr,
		        "v4ctl: protocol error: dualpathd answered %s with an unexpected "
		        "message (response body %d, expected %d)\n",
		        dp_proto_request_name(req), (int)r->body_case, (int)want);
		dp_proto_response_free(r);
		return DP_V4CTL_EXIT_PROTOCOL;
	}
	*ret_resp = r;
	return DP_V4CTL_EXIT_OK;
}

const char *dp_v4ctl_fmt_bytes(uint64_t bytes, char *buf, size_t len)
{
	static const char *const units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
	double v = (double)bytes;
	int u = 0;
	while (v >= 1024 && u < 5) {
		v /= 1024;
		u++;
	}
	if (u == 0)
		snprintf(buf, len, "%" PRIu64 " B", bytes);
	else
		snprintf(buf, len, "%.1f %s", v, units[u]);
	return buf;
}

const char *dp_v4ctl_fmt_ms(uint64_t ms, char *buf, size_t len)
{
	uint64_t s = ms / 1000;
	if (ms < 1000)
		snprintf(buf, len, "%" PRIu64 "ms", ms);
	else if (s < 60)
		snprintf(buf, len, "%.1fs", (double)ms / 1000);
	else if (s < 3600)
		snprintf(buf, len, "%" PRIu64 "m%02" PRIu64 "s", s / 60, s % 60);
	else if (s < 86400)
		snprintf(buf, len, "%" PRIu64 "h%02" PRIu64 "m", s / 3600, s / 60 % 60);
	else
		snprintf(buf, len, "%" PRIu64 "d%02" PRIu64 "h", s / 86400, s / 3600 % 24);
	return buf;
}
