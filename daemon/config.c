/* SPDX-License-Identifier: MIT */
#include "daemon/config.h"
#include "model/v4.h"

#include <errno.h>
#include <ini.h>
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "dp-config.h"

enum opt_type { OPT_STR, OPT_U32, OPT_U64, OPT_BYTES, OPT_DOUBLE, OPT_BOOL };

struct opt {
	const char *section;
	const char *key;
	enum opt_type type;
	size_t offset;
	size_t size; /* OPT_STR: buffer size */
	const char *help;
};

#define O(sec, field, type, help) \
	{ sec, #field, type, offsetof(struct dp_config, field), sizeof(((struct dp_config *)0)->field), help }

static const struct opt opts[] = {
	O("daemon", socket, OPT_STR, "Unix socket path"),
	O("daemon", socket_group, OPT_STR, "group owning the socket (mode 0660)"),
	O("daemon", admin_group, OPT_STR, "group allowed Drain/EvictSession/Shutdown"),
	O("daemon", state_dir, OPT_STR, "sessions, journal and NVMe-tier files"),
	O("daemon", log_file, OPT_STR, "log to this file instead of stderr"),
	O("daemon", log_level, OPT_STR, "err, warning, notice, info or debug"),
	O("daemon", max_frame_bytes, OPT_BYTES, "largest protocol frame"),
	O("daemon", max_prompt_tokens, OPT_U32, "longest prompt of one request"),
	O("daemon", max_new_tokens, OPT_U32, "most tokens one request may generate"),
	O("daemon", max_sessions, OPT_U32, "sessions in total"),
	O("daemon", max_sessions_per_client, OPT_U32, "sessions one connection may create"),
	O("daemon", max_requests_per_client, OPT_U32, "in-flight requests per connection"),
	O("daemon", max_concurrent_requests, OPT_U32, "in-flight generations in total"),
	O("daemon", max_connections, OPT_U32, "client connections"),
	O("daemon", drain_grace_ms, OPT_U32, "on drain/SIGTERM, cancel requests still running after this"),
	O("daemon", status_interval_ms, OPT_U32, "sd_notify STATUS= update period"),
	O("daemon", client_buffer_bytes, OPT_BYTES, "responses waiting for slow readers and partly "
						   "received requests, all connections together; past it "
						   "the connection holding most is closed"),
	O("daemon", hello_timeout_ms, OPT_U32, "close a connection that has not said Hello by then"),
	O("daemon", idle_timeout_ms, OPT_U32, "close a connection with nothing in flight after this "
					      "long (0: never)"),
	O("daemon", admin_connections, OPT_U32, "of max_connections, slots kept for root and "
						"admin_group (an operator can always get in)"),
	O("model", model, OPT_STR, "model directory, or \"builtin\" (the embedded default)"),
	O("model", backend, OPT_STR, "auto, cpu or cuda"),
	O("model", threads, OPT_U32, "cpu backend threads (0: all)"),
	O("model", experts, OPT_STR, "routed experts: device (all resident), dram (a host copy) or "
				     "nvme (read from the checkpoint by the io thread), paged into "
				     "expert_slots a layer"),
	O("model", expert_slots, OPT_U32, "experts a layer keeps on the device when paged "
					  "(0: a quarter of them, at least num_experts_per_tok)"),
	O("model", expert_lookahead, OPT_BOOL, "nvme: guess a top-k layer's experts one layer early "
					       "and read them ahead"),
	O("kvcache", device_bytes, OPT_BYTES, "state pages on the device before demotion (0: no limit)"),
	O("kvcache", dram_bytes, OPT_BYTES, "pinned DRAM tier"),
	O("kvcache", nvme_bytes, OPT_BYTES, "NVMe tier (0: no limit)"),
	O("kvcache", high_watermark, OPT_DOUBLE, "demote above this fraction of a tier"),
	O("kvcache", low_watermark, OPT_DOUBLE, "... down to this fraction"),
	O("kvcache", direct_io, OPT_BOOL, "O_DIRECT on the NVMe tier's file"),
	O("kvcache", compact_every, OPT_U32, "compact the journal at the first idle moment after this many commits, at the latest after 4x (0: never)"),
	O("kvcache", csa_entries, OPT_STR, "CSA layers' compressed entries: device, or host (pinned DRAM; "
					   "each step stages on the device only what the indexer picks)"),
	O("io", queue_depth, OPT_U32, "io_uring queue depth"),
	O("io", sqpoll, OPT_BOOL, "io_uring SQPOLL (needs a core to itself)"),
	O("io", iopoll, OPT_BOOL, "io_uring IOPOLL (needs NVMe poll queues)"),
	O("sched", pin_threads, OPT_BOOL, "pin front/compute/io threads near the GPU"),
	O("sched", max_batch_tokens, OPT_U32, "tokens per forward step"),
	O("sched", prefill_chunk, OPT_U32, "prompt tokens of one request per step"),
	O("sched", max_batch, OPT_U32, "sequences per step"),
	O("sched", restore, OPT_STR, "parked state returns: dualpath (layer by layer, overlapped), "
				     "full (load, then compute) or recompute (replay the history)"),
	O("engram", engram_tables, OPT_STR, "the model's Engram tables (a .dpe file: dp-engram convert)"),
	O("engram", engram_residency, OPT_STR, "where the tables live: device, dram or nvme "
					       "(read through the io thread)"),
	O("engram", engram_cache_rows, OPT_U64, "hot-row cache entries (dram, nvme; 0: none)"),
};

#define N_OPTS (sizeof(opts) / sizeof(opts[0]))

void dp_config_defaults(struct dp_config *c)
{
	memset(c, 0, sizeof(*c));
	snprintf(c->socket, sizeof(c->socket), "/run/dualpath/dualpathd.sock");
	snprintf(c->state_dir, sizeof(c->state_dir), "/var/lib/dualpath");
	snprintf(c->admin_group, sizeof(c->admin_group), "dualpath-admin");
	snprintf(c->log_level, sizeof(c->log_level), "info");
	c->max_frame_bytes = 4u << 20;
	c->max_prompt_tokens = 65536;
	c->max_new_tokens = 4096;
	c->max_sessions = 4096;
	c->max_sessions_per_client = 256;
	c->max_requests_per_client = 64;
	c->max_concurrent_requests = 256;
	c->max_connections = 1024;
	c->drain_grace_ms = 30000;
	c->status_interval_ms = 1000;
	c->client_buffer_bytes = 256ull << 20;
	c->hello_timeout_ms = 10000;
	c->idle_timeout_ms = 900000;
	c->admin_connections = 4;
	snprintf(c->model, sizeof(c->model), "builtin");
	snprintf(c->backend, sizeof(c->backend), "auto");
	snprintf(c->experts, sizeof(c->experts), "device");
	c->expert_lookahead = true;
	c->device_bytes = 0;
	c->dram_bytes = 64ull << 20;
	c->nvme_bytes = 0;
	c->high_watermark = 0.90;
	c->low_watermark = 0.75;
	c->direct_io = true;
	c->compact_every = 1024;
	snprintf(c->csa_entries, sizeof(c->csa_entries), "device");
	c->queue_depth = 64;
	c->pin_threads = true;
	c->max_batch_tokens = 2048;
	c->prefill_chunk = 512;
	c->max_batch = 64;
	snprintf(c->restore, sizeof(c->restore), "dualpath");
	snprintf(c->engram_residency, sizeof(c->engram_residency), "dram");
	c->engram_cache_rows = 65536;
	snprintf(c->config_path, sizeof(c->config_path), "%s", DP_CONFIG_DEFAULT_PATH);
}

/* "64M", "1.5G", "4096", "2KiB" -> bytes */
static int parse_bytes(const char *v, uint64_t *ret)
{
	char *end;
	errno = 0;
	double x = strtod(v, &end);
	if (end == v || errno || x < 0 || !isfinite(x))
		return -EINVAL;
	while (*end == ' ')
		end++;
	double mul = 1;
	switch (*end) {
	case 'k': case 'K': mul = 1024.0; end++; break;
	case 'm': case 'M': mul = 1024.0 * 1024; end++; break;
	case 'g': case 'G': mul = 1024.0 * 1024 * 1024; end++; break;
	case 't': case 'T': mul = 1024.0 * 1024 * 1024 * 1024; end++; break;
	default: break;
	}
	if (mul > 1 && (!strcmp(end, "iB") || !strcmp(end, "B")))
		end += strlen(end);
	if (*end || x * mul > 1.8e19)
		return -EINVAL;
	*ret = (uint64_t)(x * mul);
	return 0;
}

static int set_opt(struct dp_config *c, const struct opt *o, const char *v, char *why, size_t len)
{
	char *p = (char *)c + o->offset, *end;
	switch (o->type) {
	case OPT_STR:
		if (strlen(v) >= o->size) {
			snprintf(why, len, "longer than %zu bytes", o->size - 1);
			return -EINVAL;
		}
		memcpy(p, v, strlen(v) + 1);
		return 0;
	case OPT_U32:
	case OPT_U64: {
		errno = 0;
		unsigned long long x = strtoull(v, &end, 0);
		if (end == v || *end || errno || v[0] == '-' ||
		    (o->type == OPT_U32 && x > UINT32_MAX)) {
			snprintf(why, len, "not a non-negative integer%s", o->type == OPT_U32 ? " below 2^32" : "");
			return -EINVAL;
		}
		if (o->type == OPT_U32)
			*(uint32_t *)p = (uint32_t)x;
		else
			*(uint64_t *)p = x;
		return 0;
	}
	case OPT_BYTES: {
		uint64_t x;
		if (parse_bytes(v, &x) < 0 || (o->size == 4 && x > UINT32_MAX)) {
			snprintf(why, len, "not a size (e.g. 4096, 64M, 2G)");
			return -EINVAL;
		}
		if (o->size == 4)
			*(uint32_t *)p = (uint32_t)x;
		else
			*(uint64_t *)p = x;
		return 0;
	}
	case OPT_DOUBLE: {
		errno = 0;
		double x = strtod(v, &end);
		if (end == v || *end || errno || !isfinite(x)) {
			snprintf(why, len, "not a number");
			return -EINVAL;
		}
		*(double *)p = x;
		return 0;
	}
	case OPT_BOOL:
		if (!strcmp(v, "1") || !strcasecmp(v, "true") || !strcasecmp(v, "yes") || !strcasecmp(v, "on"))
			*(bool *)p = true;
		else if (!strcmp(v, "0") || !strcasecmp(v, "false") || !strcasecmp(v, "no") ||
			 !strcasecmp(v, "off"))
			*(bool *)p = false;
		else {
			snprintf(why, len, "not a boolean (true/false, yes/no, on/off, 1/0)");
			return -EINVAL;
		}
		return 0;
	}
	return -EINVAL;
}

struct ini_ctx {
	struct dp_config *c;
	char *err;
	size_t err_len;
	bool failed;
};

static int on_ini(void *user, const char *section, const char *name, const char *value)
{
	struct ini_ctx *x = user;
	char why[160];
	if (x->failed)
		return 0; /* keep the first error's message */
	for (size_t i = 0; i < N_OPTS; i++) {
		if (strcmp(opts[i].key, name) != 0)
			continue;
		if (strcmp(opts[i].section, section) != 0) {
			snprintf(x->err, x->err_len, "%s: key %s belongs in section [%s], not [%s]",
				 x->c->config_path, name, opts[i].section, section);
			x->failed = true;
			return 0;
		}
		if (set_opt(x->c, &opts[i], value, why, sizeof(why)) < 0) {
			snprintf(x->err, x->err_len, "%s: [%s] %s = %s: %s", x->c->config_path, section,
				 name, value, why);
			x->failed = true;
			return 0;
		}
		return 1;
	}
	snprintf(x->err, x->err_len, "%s: unknown key %s in section [%s]", x->c->config_path, name,
		 section);
	x->failed = true;
	return 0;
}

static void usage(FILE *f)
{
	fprintf(f, "usage: dualpathd [--config FILE] [--KEY VALUE]... [--print-config] [--version]\n\n"
		   "Serves a DeepSeek-V4 model over a Unix socket. Settings come from the config\n"
		   "file (" DP_CONFIG_DEFAULT_PATH " by default) and flags; every key is a flag:\n\n");
	const char *sec = "";
	for (size_t i = 0; i < N_OPTS; i++) {
		if (strcmp(sec, opts[i].section)) {
			sec = opts[i].section;
			fprintf(f, "[%s]\n", sec);
		}
		char flag[64];
		snprintf(flag, sizeof(flag), "--%s", opts[i].key);
		for (char *p = flag; *p; p++)
			if (*p == '_')
				*p = '-';
		fprintf(f, "  %-28s %s\n", flag, opts[i].help);
	}
}

static const struct opt *find_flag(const char *name, size_t len)
{
	for (size_t i = 0; i < N_OPTS; i++) {
		const char *k = opts[i].key;
		if (strlen(k) != len)
			continue;
		bool eq = true;
		for (size_t j = 0; j < len && eq; j++)
			eq = (k[j] == '_' ? '-' : k[j]) == name[j] || k[j] == name[j];
		if (eq)
			return &opts[i];
	}
	return NULL;
}

int dp_config_load(struct dp_config *c, int argc, char **argv, FILE *out, char *err, size_t err_len)
{
	bool explicit_config = false, print = false;

	/* pass 1: --config, --help, --version */
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
			usage(out);
			return 1;
		}
		if (!strcmp(argv[i], "--version")) {
			fprintf(out, "dualpathd %s\n", DP_VERSION);
			return 1;
		}
		if (!strncmp(argv[i], "--config=", 9)) {
			snprintf(c->config_path, sizeof(c->config_path), "%s", argv[i] + 9);
			explicit_config = true;
		} else if (!strcmp(argv[i], "--config")) {
			if (i + 1 >= argc) {
				snprintf(err, err_len, "--config needs a file name");
				return -EINVAL;
			}
			snprintf(c->config_path, sizeof(c->config_path), "%s", argv[++i]);
			explicit_config = true;
		}
	}
	FILE *f = fopen(c->config_path, "r");
	if (!f && (explicit_config || errno != ENOENT)) {
		int e = errno;
		snprintf(err, err_len, "cannot read config file %s: %s", c->config_path, strerror(e));
		return -e;
	}
	if (f) {
		struct ini_ctx x = { c, err, err_len, false };
		int line = ini_parse_file(f, on_ini, &x);
		fclose(f);
		if (x.failed || line != 0) {
			if (!x.failed)
				snprintf(err, err_len, "%s:%d: not valid INI (key = value lines under [section])",
					 c->config_path, line);
			else if (line > 0) {
				char tmp[512];
				snprintf(tmp, sizeof(tmp), "%s (line %d)", err, line);
				snprintf(err, err_len, "%s", tmp);
			}
			return -EINVAL;
		}
	}
	/* pass 2: the flags */
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (!strcmp(a, "--config")) {
			i++;
			continue;
		}
		if (!strncmp(a, "--config=", 9))
			continue;
		if (!strcmp(a, "--print-config")) {
			print = true;
			continue;
		}
		if (strncmp(a, "--", 2) != 0) {
			snprintf(err, err_len, "unexpected argument %s (see --help)", a);
			return -EINVAL;
		}
		const char *name = a + 2, *eq = strchr(name, '=');
		size_t nlen = eq ? (size_t)(eq - name) : strlen(name);
		const struct opt *o = find_flag(name, nlen);
		if (!o) {
			snprintf(err, err_len, "unknown option %.*s (see --help)", (int)(nlen + 2), a);
			return -EINVAL;
		}
		const char *v = eq ? eq + 1 : NULL;
		if (!v) {
			if (o->type == OPT_BOOL && (i + 1 >= argc || !strncmp(argv[i + 1], "--", 2)))
				v = "true";
			else if (i + 1 < argc)
				v = argv[++i];
			else {
				snprintf(err, err_len, "%s needs a value", a);
				return -EINVAL;
			}
		}
		char why[160];
		if (set_opt(c, o, v, why, sizeof(why)) < 0) {
			snprintf(err, err_len, "--%.*s %s: %s", (int)nlen, name, v, why);
			return -EINVAL;
		}
	}
	/* cross-field checks */
	if (!c->socket[0] || !c->state_dir[0]) {
		snprintf(err, err_len, "socket and state_dir must be set");
		return -EINVAL;
	}
	if (c->max_frame_bytes < 1024 || c->max_frame_bytes > (256u << 20)) {
		snprintf(err, err_len, "max_frame_bytes must be between 1 KiB and 256 MiB");
		return -EINVAL;
	}
	if (!c->max_connections || c->admin_connections >= c->max_connections) {
		snprintf(err, err_len, "max_connections must be positive and above admin_connections (%u)",
			 c->admin_connections);
		return -EINVAL;
	}
	if (c->client_buffer_bytes < 2ull * c->max_frame_bytes || !c->hello_timeout_ms) {
		snprintf(err, err_len, "client_buffer_bytes must be at least 2 x max_frame_bytes (%u) and "
			 "hello_timeout_ms positive", 2 * c->max_frame_bytes);
		return -EINVAL;
	}
	if (!(c->low_watermark > 0 && c->low_watermark <= c->high_watermark && c->high_watermark <= 1)) {
		snprintf(err, err_len, "watermarks need 0 < low_watermark <= high_watermark <= 1");
		return -EINVAL;
	}
	if (!c->max_batch_tokens || !c->prefill_chunk || !c->max_batch || !c->queue_depth ||
	    !c->max_concurrent_requests || !c->max_new_tokens || !c->max_prompt_tokens) {
		snprintf(err, err_len, "max_batch_tokens, prefill_chunk, max_batch, queue_depth, "
			 "max_concurrent_requests, max_new_tokens and max_prompt_tokens must be positive");
		return -EINVAL;
	}
	if (strcmp(c->restore, "dualpath") && strcmp(c->restore, "full") && strcmp(c->restore, "recompute")) {
		snprintf(err, err_len, "restore must be dualpath, full or recompute, not %s", c->restore);
		return -EINVAL;
	}
	enum dp_v4_experts_where xw;
	if (dp_v4_experts_where_parse(c->experts, &xw) < 0) {
		snprintf(err, err_len, "experts must be device, dram or nvme, not %s", c->experts);
		return -EINVAL;
	}
	if (c->expert_slots && xw == DP_V4_EXPERTS_DEVICE) {
		snprintf(err, err_len, "expert_slots is set but experts = device: every expert is "
			 "resident (set experts = dram or nvme to page them)");
		return -EINVAL;
	}
	if (strcmp(c->csa_entries, "device") && strcmp(c->csa_entries, "host")) {
		snprintf(err, err_len, "csa_entries must be device or host, not %s", c->csa_entries);
		return -EINVAL;
	}
	if (strcmp(c->engram_residency, "device") && strcmp(c->engram_residency, "dram") &&
	    strcmp(c->engram_residency, "nvme")) {
		snprintf(err, err_len, "engram_residency must be device, dram or nvme, not %s",
			 c->engram_residency);
		return -EINVAL;
	}
	if (c->engram_cache_rows > (1ull << 30)) {
		snprintf(err, err_len, "engram_cache_rows must be at most 2^30");
		return -EINVAL;
	}
	if (strcmp(c->backend, "auto") && strcmp(c->backend, "cpu") && strcmp(c->backend, "cuda")) {
		snprintf(err, err_len, "backend must be auto, cpu or cuda, not %s", c->backend);
		return -EINVAL;
	}
	static const char *const levels[] = { "err", "warning", "notice", "info", "debug" };
	bool ok = false;
	for (size_t i = 0; i < 5; i++)
		ok |= !strcmp(c->log_level, levels[i]);
	if (!ok) {
		snprintf(err, err_len, "log_level must be err, warning, notice, info or debug, not %s",
			 c->log_level);
		return -EINVAL;
	}
	if (print) {
		dp_config_print(c, out);
		return 1;
	}
	return 0;
}

void dp_config_print(const struct dp_config *c, FILE *f)
{
	const char *sec = "";
	for (size_t i = 0; i < N_OPTS; i++) {
		const struct opt *o = &opts[i];
		const char *p = (const char *)c + o->offset;
		if (strcmp(sec, o->section)) {
			sec = o->section;
			fprintf(f, "%s[%s]\n", i ? "\n" : "", sec);
		}
		switch (o->type) {
		case OPT_STR: fprintf(f, "%s = %s\n", o->key, p); break;
		case OPT_U32: fprintf(f, "%s = %u\n", o->key, *(const uint32_t *)p); break;
		case OPT_U64: fprintf(f, "%s = %llu\n", o->key, (unsigned long long)*(const uint64_t *)p); break;
		case OPT_BYTES:
			fprintf(f, "%s = %llu\n", o->key,
				o->size == 4 ? (unsigned long long)*(const uint32_t *)p
					     : (unsigned long long)*(const uint64_t *)p);
			break;
		case OPT_DOUBLE: fprintf(f, "%s = %g\n", o->key, *(const double *)p); break;
		case OPT_BOOL: fprintf(f, "%s = %s\n", o->key, *(const bool *)p ? "true" : "false"); break;
		}
	}
}
