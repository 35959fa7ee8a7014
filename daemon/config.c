/* SPDX-License-Identifier: MIT */
#include "base/macros.h"
#include "daemon/config.h"
#include "kvcache/tier.h"
#include "model/v4.h"

#include <errno.h>
#include <ini.h>
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "dp-config.h"

enum opt_type { OPT_STR, OPT_U32, OPT_U64, OPT_BYTES, OPT_FRACTION, OPT_BOOL, OPT_ENUM };

struct opt {
	const char *section;
	const char *key;
	enum opt_type type;
	size_t offset;
	size_t size;  /* OPT_STR: buffer size */
	uint64_t min; /* OPT_U32, OPT_U64, OPT_BYTES: the allowed range, */
	uint64_t max;
	bool zero_ok; /* ... and 0 (off, no limit) below it */
	/* OPT_ENUM: the part's parse function (0 or -EINVAL) into the field,
	 * its name function back, and the names for messages */
	int (*parse)(struct dp_config *c, const char *v);
	const char *(*name)(const struct dp_config *c);
	const char *choices;
	const char *help;
	const char *flag; /* the flag's name when it is not the key's ("http" for [http] listen) */
};

/* Each enum key through its part's own parse and name functions. */
static int parse_log_level(struct dp_config *c, const char *v)
{
	int level = dp_log_level_parse(v);
	if (level < 0)
		return -EINVAL;
	c->log_level = (enum dp_log_level)level;
	return 0;
}

static const char *name_log_level(const struct dp_config *c)
{
	return dp_log_level_name(c->log_level);
}

/* "auto" probes for a GPU: once, when the load is done (a flag may still
 * name another backend) */
static int parse_backend(struct dp_config *c, const char *v)
{
	if (!strcmp(v, "auto")) {
		c->backend_auto = true;
		return 0;
	}
	if (dp_gpu_kind_parse(v, &c->backend) < 0)
		return -EINVAL;
	c->backend_auto = false;
	return 0;
}

static const char *name_backend(const struct dp_config *c)
{
	return c->backend_auto ? "auto" : dp_gpu_kind_name(c->backend);
}

static int parse_experts(struct dp_config *c, const char *v)
{
	return dp_v4_experts_where_parse(v, &c->experts);
}

static const char *name_experts(const struct dp_config *c)
{
	return dp_v4_experts_where_name(c->experts);
}

static int parse_numerics(struct dp_config *c, const char *v)
{
	return dp_v4_numerics_parse(v, &c->numerics);
}

static const char *name_numerics(const struct dp_config *c)
{
	return dp_v4_numerics_name(c->numerics);
}

static int parse_csa_entries(struct dp_config *c, const char *v)
{
	return dp_v4_csa_where_parse(v, &c->csa_entries);
}

static const char *name_csa_entries(const struct dp_config *c)
{
	return dp_v4_csa_where_name(c->csa_entries);
}

static int parse_restore(struct dp_config *c, const char *v)
{
	return dp_restore_mode_parse(v, &c->restore);
}

static const char *name_restore(const struct dp_config *c)
{
	return dp_restore_mode_name(c->restore);
}

static int parse_engram_residency(struct dp_config *c, const char *v)
{
	return dp_engram_residency_parse(v, &c->engram_residency);
}

static const char *name_engram_residency(const struct dp_config *c)
{
	return dp_engram_residency_name(c->engram_residency);
}

static int parse_shared_tier(struct dp_config *c, const char *v)
{
	return dp_kv_shared_tier_parse(v, &c->shared_tier);
}

static const char *name_shared_tier(const struct dp_config *c)
{
	return dp_kv_shared_tier_name(c->shared_tier);
}

#define OPT(sec, field, t, ...)                                                              \
	{ .section = sec, .key = #field, .type = t,                                          \
	  .offset = offsetof(struct dp_config, field),                                       \
	  .size = sizeof(((struct dp_config *)0)->field), __VA_ARGS__ }
/* a string, a boolean or a fraction in (0, 1] */
#define O(sec, field, type, h) OPT(sec, field, type, .help = h)
/* a number in [lo, hi]; OZ: or 0 */
#define ON(sec, field, type, lo, hi, h) OPT(sec, field, type, .min = lo, .max = hi, .help = h)
#define OZ(sec, field, type, lo, hi, h)                                                      \
	OPT(sec, field, type, .min = lo, .max = hi, .zero_ok = true, .help = h)
/* a key named apart from its field (the [http] keys: fields http_*) */
#define OK(sec, key_, field, t, ...)                                                         \
	{ .section = sec, .key = key_, .type = t, .offset = offsetof(struct dp_config, field), \
	  .size = sizeof(((struct dp_config *)0)->field), __VA_ARGS__ }
/* one of a part's enum values, by name */
#define OE(sec, field, names, h)                                                             \
	OPT(sec, field, OPT_ENUM, .parse = parse_##field, .name = name_##field,              \
	    .choices = names, .help = h)

#define KiB (1ull << 10)
#define MiB (1ull << 20)
#define GiB (1ull << 30)
#define TiB (1ull << 40)
#define PiB (1ull << 50)

/*
 * The ranges are what an inference host can mean: a value outside one is a
 * typo or a unit slip (--max-batch 100000000 allocated max_batch x vocab
 * logits and died after "serving"), refused at load with the key named.
 * max_frame_bytes: a frame must hold a Hello, and the protocol's own limit
 * (DP_FRAME_MAX_LIMIT) is far above what one request needs. Byte budgets
 * below one state page (64 KiB; an NVMe slot is a page and its header)
 * would count as no tier or no limit, so a nonzero budget is at least 1 MiB.
 * queue_depth: up to DP_IO_DEPTH_MAX (main.c asserts it). read_rate: below
 * 1 MiB/s a 64 KiB page would take 64 ms; up to DP_IO_READ_RATE_MAX (main.c
 * asserts it). read_burst: at least a state page, at most one request's
 * length (DP_IO_LEN_MAX).
 */
static const struct opt opts[] = {
	O("daemon", socket, OPT_STR, "Unix socket path"),
	O("daemon", socket_group, OPT_STR, "group owning the socket (mode 0660)"),
	O("daemon", admin_group, OPT_STR, "group allowed Drain/EvictSession/Shutdown"),
	O("daemon", state_dir, OPT_STR, "sessions, journal and NVMe-tier files"),
	O("daemon", log_file, OPT_STR, "log to this file instead of stderr"),
	OE("daemon", log_level, "err, warning, notice, info or debug",
	   "err, warning, notice, info or debug"),
	ON("daemon", max_frame_bytes, OPT_BYTES, KiB, 256 * MiB, "largest protocol frame"),
	ON("daemon", max_prompt_tokens, OPT_U32, 1, 1u << 20, "longest prompt of one request"),
	ON("daemon", max_new_tokens, OPT_U32, 1, 1u << 20, "most tokens one request may generate"),
	ON("daemon", max_sessions, OPT_U32, 1, 1u << 20, "sessions in total"),
	ON("daemon", max_sessions_per_client, OPT_U32, 1, 1u << 20,
	   "sessions one connection may create"),
	ON("daemon", max_requests_per_client, OPT_U32, 1, 65536,
	   "in-flight requests per connection"),
	ON("daemon", max_concurrent_requests, OPT_U32, 1, 65536, "in-flight generations in total"),
	ON("daemon", max_connections, OPT_U32, 1, 65536, "client connections"),
	ON("daemon", drain_grace_ms, OPT_U32, 0, 3600000,
	   "on drain/SIGTERM, cancel requests still running after this"),
	ON("daemon", status_interval_ms, OPT_U32, 10, 3600000, "sd_notify STATUS= update period"),
	ON("daemon", client_buffer_bytes, OPT_BYTES, MiB, 64 * GiB,
	   "responses waiting for slow readers and partly received requests, all connections "
	   "together; past it the connection holding most is closed"),
	ON("daemon", hello_timeout_ms, OPT_U32, 100, 3600000,
	   "close a connection that has not said Hello by then"),
	OZ("daemon", idle_timeout_ms, OPT_U32, 100, 86400000,
	   "close a connection with nothing in flight after this long (0: never)"),
	ON("daemon", admin_connections, OPT_U32, 0, 65535,
	   "of max_connections, slots kept for root and admin_group (an operator can always get in)"),
	O("model", model, OPT_STR, "model directory, or \"builtin\" (the embedded default)"),
	OE("model", backend, "auto, cpu or cuda", "auto, cpu or cuda"),
	ON("model", threads, OPT_U32, 0, 4096, "cpu backend threads (0: all)"),
	OE("model", experts, "device, dram or nvme",
	   "routed experts: device (all resident), dram (a host copy) or "
	   "nvme (read from the checkpoint by the io thread), paged into "
	   "expert_slots a layer"),
	ON("model", expert_slots, OPT_U32, 0, 65536,
	   "experts a layer keeps on the device when paged "
	   "(0: a quarter of them, at least num_experts_per_tok)"),
	O("model", expert_lookahead, OPT_BOOL, "nvme: guess a top-k layer's experts one layer early "
					       "and read them ahead"),
	OE("model", numerics, "transformers, reference or auto",
	   "transformers (FP8/FP4 weights dequantized exactly, fp32 activations), reference "
	   "(DeepSeek's graph: e4m3 activations before FP8/FP4 products, e4m3 KV, e2m1 indexer) "
	   "or auto (reference for a checkpoint with quantization_config)"),
	OZ("kvcache", device_bytes, OPT_BYTES, MiB, PiB,
	   "state pages on the device before demotion (0: no limit)"),
	OZ("kvcache", dram_bytes, OPT_BYTES, MiB, 64 * TiB, "pinned DRAM tier (0: none)"),
	OZ("kvcache", nvme_bytes, OPT_BYTES, MiB, PiB, "NVMe tier (0: no limit)"),
	O("kvcache", high_watermark, OPT_FRACTION, "demote above this fraction of a tier"),
	O("kvcache", low_watermark, OPT_FRACTION,
	  "... down to this fraction (below high_watermark)"),
	O("kvcache", direct_io, OPT_BOOL, "O_DIRECT on the NVMe tier's file"),
	ON("kvcache", max_units, OPT_U32, 1, 1u << 20,
	   "prefix units kept for stateless clients (least recently used dropped beyond)"),
	ON("kvcache", compact_every, OPT_U32, 0, 1u << 24,
	   "compact the journal at the first idle moment after this many commits, at the latest "
	   "after 4x (0: never)"),
	OE("kvcache", csa_entries, "device or host",
	   "CSA layers' compressed entries: device, or host (pinned DRAM; "
	   "each step stages on the device only what the indexer picks)"),
	OE("kvcache", shared_tier, "none or rados",
	   "a KV tier shared by hosts: none, or rados (Ceph; sessions move between hosts)"),
	O("kvcache", rados_conf, OPT_STR, "ceph.conf of the shared tier's cluster (empty: default)"),
	O("kvcache", rados_pool, OPT_STR, "RADOS pool of the shared tier"),
	O("kvcache", rados_client, OPT_STR, "RADOS client name without client. (empty: admin)"),
	O("kvcache", host_id, OPT_STR, "this host in session leases (empty: the hostname)"),
	ON("kvcache", lease_ms, OPT_U32, 1000, 600000,
	   "session lease on the shared tier; renewed at a third of it"),
	ON("kvcache", lease_idle_ms, OPT_U32, 0, 86400000,
	   "let a session's lease go after it idles this long (0: keep it while up)"),
	OK("kvcache", "advertise", advertise, OPT_STR,
	   .help = "the HTTP address routers reach this host at, as the shared tier's member "
		   "list shows it (empty: the http listen address)"),
	ON("io", queue_depth, OPT_U32, 1, DP_CONFIG_QUEUE_DEPTH_MAX, "io_uring queue depth"),
	O("io", sqpoll, OPT_BOOL, "io_uring SQPOLL (needs a core to itself)"),
	O("io", iopoll, OPT_BOOL, "io_uring IOPOLL (needs NVMe poll queues)"),
	OK("io", "read_rate", read_rate, OPT_BYTES, .min = MiB, .max = DP_CONFIG_READ_RATE_MAX,
	   .zero_ok = true, .flag = "io-read-rate",
	   .help = "bytes a second the io thread's reads may start at, all together, every read "
		   "paced (a shared disk's other tenants keep the rest; 0: no limit)"),
	OK("io", "read_burst", read_burst, OPT_BYTES, .min = 64 * KiB, .max = DP_CONFIG_READ_BURST_MAX,
	   .zero_ok = true, .flag = "io-read-burst",
	   .help = "bytes of reads that may start at once after a pause under read_rate "
		   "(0: 256 KiB)"),
	O("sched", pin_threads, OPT_BOOL, "pin front/compute/io threads near the GPU"),
	ON("sched", max_batch_tokens, OPT_U32, 1, 65536, "tokens per forward step"),
	ON("sched", prefill_chunk, OPT_U32, 1, 65536, "prompt tokens of one request per step"),
	ON("sched", max_batch, OPT_U32, 1, 4096, "sequences per step"),
	OE("sched", restore, "dualpath, full or recompute",
	   "parked state returns: dualpath (layer by layer, overlapped), "
	   "full (load, then compute) or recompute (replay the history)"),
	OZ("sched", restore_window, OPT_BYTES, MiB, 64 * GiB,
	   "restore reads in flight at most, earliest-needed first (0: a few layers of compute "
	   "at the measured read rate)"),
	O("engram", engram_tables, OPT_STR, "the model's Engram tables (a .dpe file: dp-engram convert)"),
	OE("engram", engram_residency, "device, dram or nvme",
	   "where the tables live: device, dram or nvme (read through the io thread)"),
	ON("engram", engram_cache_rows, OPT_U64, 0, 1u << 30,
	   "hot-row cache entries (dram, nvme; 0: none)"),
	OK("http", "listen", http_listen, OPT_STR, .flag = "http",
	   .help = "serve the OpenAI-compatible HTTP API at HOST:PORT (127.0.0.1:8000; an IPv6 "
		   "address in brackets) or unix:/path (empty: off)"),
	OK("http", "api_key_file", http_api_key_file, OPT_STR,
	   .help = "bearer keys, one a line (owner root or the daemon's user, not readable by "
		   "others); \"\": no key asked"),
	OK("http", "max_body_bytes", http_max_body_bytes, OPT_BYTES, .min = KiB, .max = 256 * MiB,
	   .help = "largest HTTP request body"),
	OK("http", "max_json_depth", http_max_json_depth, OPT_U32, .min = 4, .max = 1024,
	   .help = "deepest nesting of a request's JSON"),
	OK("http", "max_requests", http_max_requests, OPT_U32, .min = 1, .max = 65536,
	   .help = "HTTP requests in flight; more get 429"),
	OK("http", "max_tools", http_max_tools, OPT_U32, .min = 0, .max = 4096,
	   .help = "tools one chat request may declare"),
	OK("http", "replay_cache_bytes", http_replay_cache_bytes, OPT_BYTES, .min = 0,
	   .max = 1ull << 40, .help = "the ids sampled for recent chat replies, replayed when a "
				      "client sends a reply back (0: off)"),
	OK("http", "keepalive_ms", http_keepalive_ms, OPT_U32, .min = 100, .max = 3600000,
	   .help = "an SSE comment line after this long without a token (proxies time out idle "
		   "streams)"),
};

_Static_assert(MiB >= DP_V4_PAGE_BYTES + 4096, "a nonzero tier budget holds a page and a slot");

#define N_OPTS DP_ARRAY_SIZE(opts)

static const char *const restore_names[DP_RESTORE_MODE_MAX] = { "dualpath", "full", "recompute" };

const char *dp_restore_mode_name(enum dp_restore_mode m)
{
	return (unsigned)m < DP_RESTORE_MODE_MAX ? restore_names[m] : NULL;
}

int dp_restore_mode_parse(const char *name, enum dp_restore_mode *ret)
{
	for (int i = 0; name && ret && i < DP_RESTORE_MODE_MAX; i++)
		if (!strcmp(name, restore_names[i])) {
			*ret = (enum dp_restore_mode)i;
			return 0;
		}
	return -EINVAL;
}

void dp_config_defaults(struct dp_config *c)
{
	memset(c, 0, sizeof(*c));
	snprintf(c->socket, sizeof(c->socket), "/run/dualpath/dualpathd.sock");
	snprintf(c->state_dir, sizeof(c->state_dir), "/var/lib/dualpath");
	snprintf(c->admin_group, sizeof(c->admin_group), "dualpath-admin");
	c->log_level = DP_LOG_INFO;
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
	c->backend_auto = true;
	c->experts = DP_V4_EXPERTS_DEVICE;
	c->expert_lookahead = true;
	c->device_bytes = 0;
	c->dram_bytes = 64ull << 20;
	c->nvme_bytes = 0;
	c->high_watermark = 0.90;
	c->low_watermark = 0.75;
	c->direct_io = true;
	c->compact_every = 1024;
	c->max_units = 4096;
	c->csa_entries = DP_V4_CSA_DEVICE;
	c->shared_tier = DP_KV_SHARED_NONE;
	c->lease_ms = 10000;
	c->lease_idle_ms = 60000;
	c->numerics = DP_V4_NUMERICS_AUTO;
	c->queue_depth = 64;
	c->pin_threads = true;
	c->max_batch_tokens = 2048;
	c->prefill_chunk = 512;
	c->max_batch = 64;
	c->restore = DP_RESTORE_DUALPATH;
	c->engram_residency = DP_ENGRAM_RES_DRAM;
	c->engram_cache_rows = 65536;
	c->http_max_body_bytes = 4ull << 20;
	c->http_max_json_depth = 64;
	c->http_max_requests = 256;
	c->http_max_tools = 128;
	c->http_replay_cache_bytes = 64ull << 20;
	c->http_keepalive_ms = 15000;
	snprintf(c->config_path, sizeof(c->config_path), "%s", DP_CONFIG_DEFAULT_PATH);
}

/* "64M", "1.5G", "4096", "2KiB" -> bytes (suffixes K M G T P, powers of 1024) */
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
	case 'p': case 'P': mul = 1024.0 * 1024 * 1024 * 1024 * 1024; end++; break;
	default: break;
	}
	if (mul > 1 && (!strcmp(end, "iB") || !strcmp(end, "B")))
		end += strlen(end);
	/* a fraction of a byte ("0.5" meant as 0.5G) is a slip, not 0 */
	if (*end || x * mul > 1.8e19 || x * mul != floor(x * mul))
		return -EINVAL;
	*ret = (uint64_t)(x * mul);
	return 0;
}

/* A bound as an operator writes it: 1M, 64T, 4096. */
static void fmt_bound(const struct opt *o, uint64_t v, char *buf, size_t len)
{
	static const char suffix[] = "KMGTP";
	int k = -1;
	while (o->type == OPT_BYTES && v && v % 1024 == 0 && k < 4) {
		v /= 1024;
		k++;
	}
	if (k >= 0)
		snprintf(buf, len, "%llu%c", (unsigned long long)v, suffix[k]);
	else
		snprintf(buf, len, "%llu", (unsigned long long)v);
}

/* The fewest digits (at least %g's six) that read back as exactly x: a
 * printed config loads as the same settings, and low_watermark 0.1234561
 * below high_watermark 0.1234569 does not print as two equal values. */
static void fmt_fraction(double x, char *buf, size_t len)
{
	for (int digits = 6; digits < 17; digits++) {
		snprintf(buf, len, "%.*g", digits, x);
		if (strtod(buf, NULL) == x)
			return;
	}
	snprintf(buf, len, "%.17g", x);
}

/* "between 1 and 4096", "0 or between 1M and 1P"; short: "1..4096", "0, 1M..1P" */
static void fmt_range(const struct opt *o, bool short_form, char *buf, size_t len)
{
	char lo[32], hi[32];
	fmt_bound(o, o->min, lo, sizeof(lo));
	fmt_bound(o, o->max, hi, sizeof(hi));
	if (short_form)
		snprintf(buf, len, "%s%s..%s", o->zero_ok ? "0, " : "", lo, hi);
	else
		snprintf(buf, len, "%sbetween %s and %s", o->zero_ok ? "0 or " : "", lo, hi);
}

static int check_range(const struct opt *o, uint64_t x, char *why, size_t len)
{
	if ((x == 0 && o->zero_ok) || (x >= o->min && x <= o->max))
		return 0;
	char range[96];
	fmt_range(o, false, range, sizeof(range));
	snprintf(why, len, "%s must be %s", o->key, range);
	return -ERANGE;
}

/* Parse v into the field o names; on failure why says what is wrong (the
 * caller names the file and line, or the flag) and nothing is stored. */
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
		if (check_range(o, x, why, len) < 0)
			return -EINVAL;
		if (o->type == OPT_U32)
			*(uint32_t *)p = (uint32_t)x;
		else
			*(uint64_t *)p = x;
		return 0;
	}
	case OPT_BYTES: {
		uint64_t x;
		if (parse_bytes(v, &x) < 0) {
			snprintf(why, len, "not a size (e.g. 4096, 64M, 2G)");
			return -EINVAL;
		}
		if (check_range(o, x, why, len) < 0)
			return -EINVAL;
		if (o->size == 4)
			*(uint32_t *)p = (uint32_t)x;
		else
			*(uint64_t *)p = x;
		return 0;
	}
	case OPT_FRACTION: {
		errno = 0;
		double x = strtod(v, &end);
		if (end == v || *end || errno || !isfinite(x)) {
			snprintf(why, len, "not a number");
			return -EINVAL;
		}
		if (!(x > 0 && x <= 1)) {
			snprintf(why, len, "%s must be a fraction above 0 and at most 1", o->key);
			return -EINVAL;
		}
		*(double *)p = x;
		return 0;
	}
	case OPT_ENUM:
		if (o->parse(c, v) < 0) {
			snprintf(why, len, "%s must be %s", o->key, o->choices);
			return -EINVAL;
		}
		return 0;
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
	char msg[1024]; /* the first error, without the file and line */
	bool failed;
};

static int on_ini(void *user, const char *section, const char *name, const char *value)
{
	struct ini_ctx *x = user;
	char why[160];
	if (x->failed)
		return 0; /* keep the first error's message */
	x->failed = true;
	for (size_t i = 0; i < N_OPTS; i++) {
		if (strcmp(opts[i].key, name) != 0)
			continue;
		if (strcmp(opts[i].section, section) != 0) {
			snprintf(x->msg, sizeof(x->msg), "key %s belongs in section [%s], not [%s]",
				 name, opts[i].section, section);
			return 0;
		}
		if (set_opt(x->c, &opts[i], value, why, sizeof(why)) < 0) {
			snprintf(x->msg, sizeof(x->msg), "[%s] %s = %.200s: %s", section, name,
				 value, why);
			return 0;
		}
		x->failed = false;
		return 1;
	}
	snprintf(x->msg, sizeof(x->msg), "unknown key %.100s in section [%.100s]", name, section);
	return 0;
}

static int on_ini_syntax(void *user, const char *section, const char *name, const char *value)
{
	(void)user, (void)section, (void)name, (void)value;
	return 1;
}

#define CONFIG_FILE_MAX (1u << 20)

/*
 * A config file is text: UTF-8 without NUL bytes or control characters
 * other than tab and CR, in lines inih reads whole (a longer one it would
 * cut, and read the rest as a line of its own) and as we mean them (no
 * indented keys: continuation lines to inih). Returns 0, or -EINVAL with
 * *ret_line the first line that is not.
 */
static int check_text(const unsigned char *b, size_t n, int *ret_line, char *why, size_t len)
{
	int line = 1;
	size_t line_len = 0;
	for (size_t i = 0; i < n; i++) {
		unsigned c = b[i];
		if (c == '\n') {
			line++;
			line_len = 0;
			continue;
		}
		*ret_line = line;
		/* inih reads an indented line as more of the previous key's value
		 * ("  admin_group = wheel" would set the key above to that text) */
		if (line_len == 0 && (c == ' ' || c == '\t')) {
			size_t j = i;
			while (j < n && (b[j] == ' ' || b[j] == '\t'))
				j++;
			if (j < n && b[j] != '\n' && b[j] != '\r' && b[j] != '#' && b[j] != ';') {
				snprintf(why, len, "an indented line (inih would read it as "
					 "more of the value above): remove the indentation");
				return -EINVAL;
			}
		}
		if (++line_len > INI_MAX_LINE - 2) {
			snprintf(why, len, "line longer than %d bytes", INI_MAX_LINE - 2);
			return -EINVAL;
		}
		if (c == 0) {
			snprintf(why, len, "a NUL byte: not a text file");
			return -EINVAL;
		}
		if ((c < 0x20 && c != '\t' && c != '\r') || c == 0x7f) {
			snprintf(why, len, "control character 0x%02x: not a text file", c);
			return -EINVAL;
		}
		if (c < 0x80)
			continue;
		/* UTF-8: the lead byte says how many continuation bytes follow;
		 * the bounds on the second byte refuse overlong forms, UTF-16
		 * surrogates and code points past U+10FFFF */
		unsigned more, lo = 0x80, hi = 0xbf;
		if (c >= 0xc2 && c <= 0xdf)
			more = 1;
		else if (c >= 0xe0 && c <= 0xef) {
			more = 2;
			lo = c == 0xe0 ? 0xa0 : 0x80;
			hi = c == 0xed ? 0x9f : 0xbf;
		} else if (c >= 0xf0 && c <= 0xf4) {
			more = 3;
			lo = c == 0xf0 ? 0x90 : 0x80;
			hi = c == 0xf4 ? 0x8f : 0xbf;
		} else
			more = 0;
		bool ok = more > 0 && i + more < n;
		for (unsigned k = 1; ok && k <= more; k++) {
			unsigned d = b[i + k];
			ok = k == 1 ? d >= lo && d <= hi : d >= 0x80 && d <= 0xbf;
		}
		if (!ok) {
			snprintf(why, len, "not UTF-8 text (byte 0x%02x)", c);
			return -EINVAL;
		}
		i += more;
		line_len += more;
	}
	return 0;
}

/* Read and apply the config file f (named c->config_path). */
static int load_file(struct dp_config *c, FILE *f, char *err, size_t err_len)
{
	const char *path = c->config_path;
	char *text = malloc(CONFIG_FILE_MAX + 1);
	if (!text) {
		snprintf(err, err_len, "cannot read config file %s: %s", path, strerror(ENOMEM));
		return -ENOMEM;
	}
	size_t n = fread(text, 1, CONFIG_FILE_MAX + 1, f);
	int ret = 0, line = 0;
	char why[160];
	if (ferror(f)) {
		ret = errno ? -errno : -EIO;
		snprintf(err, err_len, "cannot read config file %s: %s", path, strerror(-ret));
	} else if (n > CONFIG_FILE_MAX) {
		ret = -EFBIG;
		snprintf(err, err_len, "%s: larger than %u KiB: not a config file", path,
			 CONFIG_FILE_MAX >> 10);
	} else if (check_text((const unsigned char *)text, n, &line, why, sizeof(why)) < 0) {
		ret = -EINVAL;
		snprintf(err, err_len, "%s:%d: %s", path, line, why);
	}
	if (ret < 0) {
		free(text);
		return ret;
	}
	text[n] = '\0';
	/* inih reports the first bad line, a line it cannot parse or one our
	 * handler refused: a pass that refuses nothing finds the former, so
	 * the message is the one of the first bad line */
	int syntax = ini_parse_string(text, on_ini_syntax, NULL);
	struct ini_ctx x = { .c = c };
	line = ini_parse_string(text, on_ini, &x);
	if (line && line == syntax) {
		snprintf(err, err_len,
			 "%s:%d: not valid INI (key = value lines under [section] headers)", path,
			 line);
		ret = -EINVAL;
	} else if (x.failed) {
		snprintf(err, err_len, "%s:%d: %s", path, line, x.msg);
		ret = -EINVAL;
	}
	free(text);
	return ret;
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
		snprintf(flag, sizeof(flag), "--%s", opts[i].flag ? opts[i].flag : opts[i].key);
		for (char *p = flag; *p; p++)
			if (*p == '_')
				*p = '-';
		char range[64] = "";
		if (opts[i].type == OPT_FRACTION)
			snprintf(range, sizeof(range), "0 < x <= 1");
		else if (opts[i].max)
			fmt_range(&opts[i], true, range, sizeof(range));
		fprintf(f, "  %-28s %s%s%s%s\n", flag, opts[i].help, range[0] ? " [" : "", range,
			range[0] ? "]" : "");
	}
}

static const struct opt *find_flag(const char *name, size_t len)
{
	for (size_t i = 0; i < N_OPTS; i++) {
		const char *k = opts[i].flag ? opts[i].flag : opts[i].key;
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
		int ret = load_file(c, f, err, err_len);
		fclose(f);
		if (ret < 0)
			return ret;
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
	if (c->admin_connections >= c->max_connections) {
		snprintf(err, err_len, "max_connections (%u) must be above admin_connections (%u)",
			 c->max_connections, c->admin_connections);
		return -EINVAL;
	}
	if (c->client_buffer_bytes < 2ull * c->max_frame_bytes) {
		snprintf(err, err_len,
			 "client_buffer_bytes (%llu) must be at least 2 x max_frame_bytes (%u)",
			 (unsigned long long)c->client_buffer_bytes, 2 * c->max_frame_bytes);
		return -EINVAL;
	}
	/* low == high would demote one session, then the next, at every step */
	if (!(c->low_watermark < c->high_watermark)) {
		char lo[32], hi[32];
		fmt_fraction(c->low_watermark, lo, sizeof(lo));
		fmt_fraction(c->high_watermark, hi, sizeof(hi));
		snprintf(err, err_len, "low_watermark (%s) must be below high_watermark (%s)", lo, hi);
		return -EINVAL;
	}
	if (c->expert_slots && c->experts == DP_V4_EXPERTS_DEVICE) {
		snprintf(err, err_len, "expert_slots is set but experts = device: every expert is "
			 "resident (set experts = dram or nvme to page them)");
		return -EINVAL;
	}
	if (c->shared_tier == DP_KV_SHARED_RADOS) {
		if (!dp_kv_shared_rados_available()) {
			snprintf(err, err_len, "shared_tier = rados, but this dualpathd was built "
					       "without librados");
			return -EINVAL;
		}
		if (!c->rados_pool[0]) {
			snprintf(err, err_len, "shared_tier = rados needs rados_pool");
			return -EINVAL;
		}
	}
	for (const char *h = c->host_id; *h; h++)
		if (!strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-", *h) ||
		    h - c->host_id >= DP_KV_SHARED_HOST_ID_MAX) {
			snprintf(err, err_len, "host_id \"%s\" must be 1..%d characters of "
					       "[A-Za-z0-9._-]", c->host_id, DP_KV_SHARED_HOST_ID_MAX);
			return -EINVAL;
		}
	for (const char *a = c->advertise; *a; a++)
		if ((unsigned char)*a <= ' ' || *a == 0x7f || a - c->advertise >= DP_KV_SHARED_ADDR_MAX - 1) {
			snprintf(err, err_len, "advertise \"%.160s\": at most %d printable characters "
					       "without spaces", c->advertise, DP_KV_SHARED_ADDR_MAX - 1);
			return -EINVAL;
		}
	if (print) {
		dp_config_print(c, out);
		return 1;
	}
	if (c->backend_auto)
		dp_gpu_kind_parse("auto", &c->backend); /* cuda when a GPU is usable, else cpu */
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
		case OPT_STR: {
			/* written as key=value when the spaces would change it: a
			 * value that filled its line so (check_text's most), or one
			 * that starts with ';' (after a space, inih reads a comment) */
			bool tight = p[0] == ';' || strlen(o->key) + 3 + strlen(p) > INI_MAX_LINE - 2;
			fprintf(f, "%s%s%s\n", o->key, tight ? "=" : " = ", p);
			break;
		}
		case OPT_U32: fprintf(f, "%s = %u\n", o->key, *(const uint32_t *)p); break;
		case OPT_U64: fprintf(f, "%s = %llu\n", o->key, (unsigned long long)*(const uint64_t *)p); break;
		case OPT_BYTES:
			fprintf(f, "%s = %llu\n", o->key,
				o->size == 4 ? (unsigned long long)*(const uint32_t *)p
					     : (unsigned long long)*(const uint64_t *)p);
			break;
		case OPT_FRACTION: {
			char num[32];
			fmt_fraction(*(const double *)p, num, sizeof(num));
			fprintf(f, "%s = %s\n", o->key, num);
			break;
		}
		case OPT_BOOL: fprintf(f, "%s = %s\n", o->key, *(const bool *)p ? "true" : "false"); break;
		case OPT_ENUM: fprintf(f, "%s = %s\n", o->key, o->name(c)); break;
		}
	}
}
