/* SPDX-License-Identifier: MIT */
/*
 * dualpathd's settings: every number has a range, the config file is text,
 * unknown keys are refused, each with a message naming the key (and the file
 * and line, or the flag). Suite `config` calls dp_config_load itself; suite
 * `config_daemon` runs the real dualpathd and checks that it exits non-zero
 * before it ever says "serving".
 */
#include <fcntl.h>
#include <limits.h>
#include <sys/resource.h>
#include <sys/stat.h>

#include <jansson.h>

#include "base/macros.h"
#include "daemon/config.h"
#include "dpclient.h"
#include "tests/model/st-writer.h"

/* ---- dp_config_load ----------------------------------------------------------- */

struct loaded {
	struct dp_config c;
	int ret;
	char err[1024];
};

/* Load with --config /dev/null unless args name one; args NULL-terminated. */
static void load(struct loaded *l, const char *const *args)
{
	const char *argv[32] = {"dualpathd"};
	int n = 1;
	bool config = false;
	for (int i = 0; args[i]; i++)
		config |= !strncmp(args[i], "--config", 8);
	if (!config) {
		argv[n++] = "--config";
		argv[n++] = "/dev/null";
	}
	for (int i = 0; args[i] && n < 31; i++)
		argv[n++] = args[i];
	argv[n] = NULL;
	FILE *out = fopen("/dev/null", "w");
	cr_assert_not_null(out);
	l->err[0] = '\0';
	dp_config_defaults(&l->c);
	l->ret = dp_config_load(&l->c, n, (char **)argv, out, l->err, sizeof(l->err));
	fclose(out);
}

#define LOAD(l, ...) load((l), (const char *const[]){__VA_ARGS__, NULL})

/* A config file in a fresh temporary directory; bytes may hold NULs. */
struct conf_file {
	char dir[64];
	char path[96];
};

static void conf_write(struct conf_file *f, const void *bytes, size_t len)
{
	snprintf(f->dir, sizeof(f->dir), "/var/tmp/dp-test-cfg-XXXXXX");
	cr_assert_not_null(mkdtemp(f->dir));
	snprintf(f->path, sizeof(f->path), "%s/dualpathd.conf", f->dir);
	FILE *o = fopen(f->path, "wb");
	cr_assert_not_null(o);
	cr_assert_eq(fwrite(bytes, 1, len, o), len);
	fclose(o);
}

static void conf_remove(struct conf_file *f)
{
	unlink(f->path);
	rmdir(f->dir);
}

/* Load text as the config file: expect it refused with every needle (NULL
 * ends them) in the message. */
static void file_refused(const void *bytes, size_t len, const char *const *needles)
{
	struct conf_file f;
	struct loaded l;
	conf_write(&f, bytes, len);
	LOAD(&l, "--config", f.path);
	cr_expect_lt(l.ret, 0, "refused: %.*s", (int)len, (const char *)bytes);
	cr_expect(strstr(l.err, f.path), "the message names the file: %s", l.err);
	for (int i = 0; needles[i]; i++)
		cr_expect(strstr(l.err, needles[i]), "the message \"%s\" names \"%s\"", l.err,
		          needles[i]);
	conf_remove(&f);
}

#define FILE_REFUSED(text, ...)                                                                    \
	file_refused((text), sizeof(text) - 1, (const char *const[]){__VA_ARGS__, NULL})

TestSuite(config, .timeout = 60);

/* One row a numeric key: a value past each end of its range and the range
 * as the message says it. */
static const struct range_case {
	const char *flag, *key, *below, *above, *range;
} ranges[] = {
    {"--max-frame-bytes", "max_frame_bytes", "1023", "257M", "between 1K and 256M"},
    {"--max-prompt-tokens", "max_prompt_tokens", "0", "1048577", "between 1 and 1048576"},
    {"--max-new-tokens", "max_new_tokens", "0", "1048577", "between 1 and 1048576"},
    {"--max-sessions", "max_sessions", "0", "1048577", "between 1 and 1048576"},
    {"--max-sessions-per-client", "max_sessions_per_client", "0", "1048577",
     "between 1 and 1048576"},
    {"--max-requests-per-client", "max_requests_per_client", "0", "65537", "between 1 and 65536"},
    {"--max-concurrent-requests", "max_concurrent_requests", "0", "65537", "between 1 and 65536"},
    {"--max-connections", "max_connections", "0", "65537", "between 1 and 65536"},
    {"--drain-grace-ms", "drain_grace_ms", NULL, "3600001", "between 0 and 3600000"},
    {"--status-interval-ms", "status_interval_ms", "9", "3600001", "between 10 and 3600000"},
    {"--client-buffer-bytes", "client_buffer_bytes", "1023K", "65G", "between 1M and 64G"},
    {"--hello-timeout-ms", "hello_timeout_ms", "99", "3600001", "between 100 and 3600000"},
    {"--idle-timeout-ms", "idle_timeout_ms", "99", "86400001", "0 or between 100 and 86400000"},
    {"--admin-connections", "admin_connections", NULL, "65536", "between 0 and 65535"},
    {"--threads", "threads", NULL, "4097", "between 0 and 4096"},
    {"--expert-slots", "expert_slots", NULL, "65537", "between 0 and 65536"},
    {"--device-bytes", "device_bytes", "1023K", "1025T", "0 or between 1M and 1P"},
    {"--dram-bytes", "dram_bytes", "64K", "65T", "0 or between 1M and 64T"},
    {"--nvme-bytes", "nvme_bytes", "1000", "2P", "0 or between 1M and 1P"},
    {"--restore-window", "restore_window", "1000", "65G", "0 or between 1M and 64G"},
    {"--compact-every", "compact_every", NULL, "16777217", "between 0 and 16777216"},
    {"--max-units", "max_units", "0", "1048577", "between 1 and 1048576"},
    {"--lease-ms", "lease_ms", "999", "600001", "between 1000 and 600000"},
    {"--lease-idle-ms", "lease_idle_ms", NULL, "86400001", "between 0 and 86400000"},
    {"--queue-depth", "queue_depth", "0", "4097", "between 1 and 4096"},
    {"--io-read-rate", "read_rate", "1023K", "1025G", "0 or between 1M and 1T"},
    {"--io-read-burst", "read_burst", "63K", "1025M", "0 or between 64K and 1G"},
    {"--max-batch-tokens", "max_batch_tokens", "0", "65537", "between 1 and 65536"},
    {"--prefill-chunk", "prefill_chunk", "0", "65537", "between 1 and 65536"},
    {"--max-batch", "max_batch", "0", "4097", "between 1 and 4096"},
    {"--engram-cache-rows", "engram_cache_rows", NULL, "1073741825", "between 0 and 1073741824"},
    {"--max-body-bytes", "max_body_bytes", "1023", "257M", "between 1K and 256M"},
    {"--max-json-depth", "max_json_depth", "3", "1025", "between 4 and 1024"},
    {"--max-requests", "max_requests", "0", "65537", "between 1 and 65536"},
    {"--max-tools", "max_tools", NULL, "4097", "between 0 and 4096"},
    {"--keepalive-ms", "keepalive_ms", "99", "3600001", "between 100 and 3600000"},
    {"--replay-cache-bytes", "replay_cache_bytes", NULL, "1025G", "between 0 and 1T"},
};

#define N_RANGES DP_ARRAY_SIZE(ranges)

/* the case: 100000000 sequences a step allocated their logits after
 * "serving" and the daemon exited 0 */
Test(config, every_numeric_key_refuses_a_value_outside_its_range_naming_key_value_and_range)
{
	struct loaded l;
	LOAD(&l, "--max-batch", "100000000");
	cr_expect_eq(l.ret, -EINVAL);
	cr_expect(strstr(l.err, "max_batch") && strstr(l.err, "100000000") &&
	              strstr(l.err, "between 1 and 4096"),
	          "%s", l.err);
	for (size_t i = 0; i < N_RANGES; i++) {
		const struct range_case *r = &ranges[i];
		const char *bad[] = {r->below, r->above};
		for (int k = 0; k < 2; k++) {
			if (!bad[k])
				continue;
			load(&l, (const char *const[]){r->flag, bad[k], NULL});
			cr_expect_eq(l.ret, -EINVAL, "%s %s accepted", r->flag, bad[k]);
			cr_expect(strstr(l.err, r->flag) && strstr(l.err, r->key) &&
			              strstr(l.err, bad[k]) && strstr(l.err, r->range),
			          "%s %s: \"%s\" names the flag, key, value and %s", r->flag,
			          bad[k], l.err, r->range);
		}
	}
}

Test(config, a_value_out_of_range_in_the_file_is_refused_with_file_line_and_key)
{
	FILE_REFUSED("[daemon]\nmax_connections = 0\n", ":2:", "max_connections = 0",
	             "between 1 and 65536");
	FILE_REFUSED("# a comment\n[sched]\n\nmax_batch = 100000000\n", ":4:", "max_batch",
	             "100000000", "between 1 and 4096");
	FILE_REFUSED("[kvcache]\nnvme_bytes = 4K\n", ":2:", "nvme_bytes", "4K",
	             "0 or between 1M and 1P");
}

/* ranges the table above does not know of are keys without a test */
Test(config, every_numeric_key_in_help_has_a_range_tested_here)
{
	char *text = NULL;
	size_t len = 0;
	FILE *out = open_memstream(&text, &len);
	struct dp_config c;
	char err[256];
	dp_config_defaults(&c);
	const char *argv[] = {"dualpathd", "--help", NULL};
	cr_assert_eq(dp_config_load(&c, 2, (char **)argv, out, err, sizeof(err)), 1);
	fclose(out);
	int seen = 0;
	for (char *save, *line = strtok_r(text, "\n", &save); line;
	     line = strtok_r(NULL, "\n", &save)) {
		char flag[64];
		if (sscanf(line, " %63s", flag) != 1 || strncmp(flag, "--", 2) ||
		    !strchr(line, '['))
			continue;
		if (!strcmp(flag, "--high-watermark") || !strcmp(flag, "--low-watermark"))
			continue; /* fractions: their own test */
		bool known = false;
		for (size_t i = 0; i < N_RANGES && !known; i++)
			known = !strcmp(ranges[i].flag, flag);
		cr_expect(known, "%s has a range but no case here: %s", flag, line);
		seen++;
	}
	cr_expect_eq(seen, (int)N_RANGES, "every case is a key with a range in --help");
	free(text);
}

Test(config, every_numeric_key_accepts_the_ends_of_its_range)
{
	struct loaded l;
	static const char *const ok[][2] = {
	    {"--max-frame-bytes", "1K"},
	    {"--client-buffer-bytes", "64G"},
	    {"--hello-timeout-ms", "100"},
	    {"--idle-timeout-ms", "0"},
	    {"--idle-timeout-ms", "86400000"},
	    {"--max-batch", "1"},
	    {"--max-batch", "4096"},
	    {"--max-connections", "65536"},
	    {"--drain-grace-ms", "0"},
	    {"--device-bytes", "0"},
	    {"--device-bytes", "1M"},
	    {"--device-bytes", "1P"},
	    {"--dram-bytes", "0"},
	    {"--dram-bytes", "64T"},
	    {"--nvme-bytes", "1048576"},
	    {"--status-interval-ms", "10"},
	    {"--compact-every", "0"},
	    {"--queue-depth", "4096"},
	    {"--io-read-rate", "0"},
	    {"--io-read-rate", "1M"},
	    {"--io-read-rate", "1T"},
	    {"--engram-cache-rows", "1073741824"},
	    {"--max-prompt-tokens", "1048576"},
	};
	for (size_t i = 0; i < DP_ARRAY_SIZE(ok); i++) {
		load(&l, (const char *const[]){ok[i][0], ok[i][1], NULL});
		cr_expect_eq(l.ret, 0, "%s %s: %s", ok[i][0], ok[i][1], l.err);
	}
	LOAD(&l, "--max-frame-bytes", "256M", "--client-buffer-bytes", "512M");
	cr_expect_eq(l.ret, 0, "%s", l.err);
	LOAD(&l, "--max-batch", "4096", "--dram-bytes", "1.5G");
	cr_assert_eq(l.ret, 0, "%s", l.err);
	cr_expect_eq(l.c.max_batch, 4096);
	cr_expect_eq(l.c.dram_bytes, 3ull << 29);
}

Test(config, settings_that_depend_on_each_other_are_checked_together)
{
	struct loaded l;
	LOAD(&l, "--max-connections", "4", "--admin-connections", "4");
	cr_expect_eq(l.ret, -EINVAL);
	cr_expect(strstr(l.err, "max_connections (4) must be above admin_connections (4)"), "%s",
	          l.err);
	LOAD(&l, "--max-frame-bytes", "64M", "--client-buffer-bytes", "100M");
	cr_expect_eq(l.ret, -EINVAL);
	cr_expect(strstr(l.err, "client_buffer_bytes (104857600) must be at least 2 x "
	                        "max_frame_bytes (134217728)"),
	          "%s", l.err);
	LOAD(&l, "--max-connections", "5", "--admin-connections", "4", "--idle-timeout-ms", "0");
	cr_expect_eq(l.ret, 0, "%s", l.err);
}

Test(config, a_fraction_of_a_byte_is_not_a_size)
{
	struct loaded l;
	LOAD(&l, "--dram-bytes", "0.5");
	cr_expect_eq(l.ret, -EINVAL, "0.5 bytes is not 0 (no DRAM tier)");
	cr_expect(strstr(l.err, "--dram-bytes 0.5"), "%s", l.err);
}

Test(config, watermarks_are_fractions_with_low_below_high)
{
	struct loaded l;
	static const char *const bad[][2] = {
	    {"--high-watermark", "0"},  {"--high-watermark", "1.01"}, {"--low-watermark", "-0.1"},
	    {"--low-watermark", "nan"}, {"--high-watermark", "inf"},
	};
	for (size_t i = 0; i < DP_ARRAY_SIZE(bad); i++) {
		load(&l, (const char *const[]){bad[i][0], bad[i][1], NULL});
		cr_expect_eq(l.ret, -EINVAL, "%s %s accepted", bad[i][0], bad[i][1]);
		cr_expect(strstr(l.err, bad[i][0] + 2) || strstr(l.err, "watermark"), "%s", l.err);
	}
	LOAD(&l, "--low-watermark", "0.9", "--high-watermark", "0.9");
	cr_expect_eq(l.ret, -EINVAL, "low == high");
	cr_expect(strstr(l.err, "low_watermark (0.9) must be below high_watermark (0.9)"), "%s",
	          l.err);
	LOAD(&l, "--low-watermark", "0.95");
	cr_expect_eq(l.ret, -EINVAL, "low above the default high");
	LOAD(&l, "--low-watermark", "0.5", "--high-watermark", "1");
	cr_expect_eq(l.ret, 0, "%s", l.err);
}

Test(config, a_config_file_that_is_not_text_is_refused_with_file_and_line)
{
	FILE_REFUSED("\0\0\1\2garbage\0\n", ":1:", "NUL byte");
	FILE_REFUSED("[daemon]\nlog_level = info\n\0\n", ":3:", "NUL byte");
	FILE_REFUSED("[daemon]\nlog_file = /var/log/\xff\xfe\n", ":2:", "not UTF-8");
	/* overlong '/', a UTF-16 surrogate, past U+10FFFF, a cut sequence */
	FILE_REFUSED("[daemon]\nlog_file = \xc0\xaf\n", ":2:", "not UTF-8");
	FILE_REFUSED("[daemon]\n\nlog_file = \xed\xa0\x80\n", ":3:", "not UTF-8");
	FILE_REFUSED("[daemon]\nlog_file = \xf4\x90\x80\x80\n", ":2:", "not UTF-8");
	FILE_REFUSED("[daemon]\nlog_file = \xe2\x82", ":2:", "not UTF-8");
	FILE_REFUSED("[daemon]\nlog_level = info\x1b[0m\n", ":2:", "control character 0x1b");
	/* what a stray binary looks like: no newline for a while, bytes of every kind */
	unsigned char bin[4096];
	uint32_t x = 12345;
	for (size_t i = 0; i < sizeof(bin); i++) {
		x = x * 1103515245u + 12345u;
		bin[i] = (unsigned char)(x >> 16);
	}
	file_refused(bin, sizeof(bin), (const char *const[]){":1:", NULL});
}

Test(config, a_file_of_utf8_text_with_a_bom_and_crlf_lines_is_read)
{
	static const char text[] = "\xef\xbb\xbf# caf\xc3\xa9 \xf0\x9f\x98\x80\r\n[daemon]\r\n"
	                           "log_level = debug\r\n\t# an indented comment\r\n  \r\n"
	                           "max_connections=7\r\n";
	struct conf_file f;
	struct loaded l;
	conf_write(&f, text, sizeof(text) - 1);
	LOAD(&l, "--config", f.path);
	cr_expect_eq(l.ret, 0, "%s", l.err);
	conf_remove(&f);
}

Test(config, a_line_inih_cannot_read_whole_or_parse_is_refused_with_its_line)
{
	char text[512];
	/* inih cuts a line at 198 bytes and reads the rest as a line of its own */
	int n = snprintf(text, sizeof(text), "[daemon]\nlog_file = /%0190d\n", 0);
	file_refused(text, (size_t)n, (const char *const[]){":2:", "longer than 198 bytes", NULL});
	n = snprintf(text, sizeof(text), "[daemon]\nlog_file = /%0186d\n", 0);
	struct conf_file f;
	struct loaded l;
	conf_write(&f, text, (size_t)n);
	LOAD(&l, "--config", f.path);
	cr_expect_eq(l.ret, 0, "a line of 198 bytes is read whole: %s", l.err);
	cr_expect_eq(strlen(l.c.log_file), 187);
	conf_remove(&f);

	/* inih would set socket_group to "admin_group = wheel" */
	FILE_REFUSED("[daemon]\nsocket_group = dualpath\n  admin_group = wheel\n",
	             ":3:", "indented line");
	FILE_REFUSED("[daemon]\nlog_level = info\n\t[sched]\n", ":3:", "indented line");
	FILE_REFUSED("[daemon]\nmax_connections\n", ":2:", "not valid INI");
	FILE_REFUSED("[daemon\nmax_connections = 5\n", ":1:", "not valid INI");
	/* the first bad line is named, whatever made it bad */
	FILE_REFUSED("[daemon]\nbogus = 1\njunk\n", ":2:", "unknown key bogus");
	FILE_REFUSED("[daemon]\njunk\nbogus = 1\n", ":2:", "not valid INI");
}

Test(config, unknown_keys_are_refused_naming_the_key)
{
	FILE_REFUSED("[daemon]\nmax_conections = 5\n", ":2:", "unknown key max_conections",
	             "[daemon]");
	FILE_REFUSED("[sched]\nmax_connections = 5\n", ":2:", "max_connections",
	             "belongs in section [daemon], not [sched]");
	FILE_REFUSED("max_batch = 5\n", ":1:", "max_batch", "belongs in section [sched]");
	struct loaded l;
	LOAD(&l, "--max-conections", "5");
	cr_expect_eq(l.ret, -EINVAL);
	cr_expect(strstr(l.err, "unknown option --max-conections"), "%s", l.err);
	LOAD(&l, "--max-batch");
	cr_expect_eq(l.ret, -EINVAL);
	cr_expect(strstr(l.err, "--max-batch needs a value"), "%s", l.err);
}

/* main.c and compute.c take the enums: nothing parses these strings again */
Test(config, enum_keys_are_held_as_their_parts_enums_parsed_at_load)
{
	struct loaded l;
	LOAD(&l, "--log-level", "debug", "--backend", "cpu", "--experts", "nvme", "--expert-slots",
	     "4", "--csa-entries", "host", "--restore", "recompute", "--engram-residency", "nvme");
	cr_assert_eq(l.ret, 0, "%s", l.err);
	cr_expect_eq(l.c.log_level, DP_LOG_DEBUG);
	cr_expect_eq(l.c.backend, DP_GPU_CPU);
	cr_expect(!l.c.backend_auto);
	cr_expect_eq(l.c.experts, DP_V4_EXPERTS_NVME);
	cr_expect_eq(l.c.csa_entries, DP_V4_CSA_HOST);
	cr_expect_eq(l.c.restore, DP_RESTORE_RECOMPUTE);
	cr_expect_eq(l.c.engram_residency, DP_ENGRAM_RES_NVME);

	LOAD(&l, "--restore", "full");
	cr_assert_eq(l.ret, 0, "%s", l.err);
	cr_expect_eq(l.c.log_level, DP_LOG_INFO, "defaults");
	cr_expect(l.c.backend_auto);
	cr_expect(l.c.backend == DP_GPU_CPU || l.c.backend == DP_GPU_CUDA, "auto is resolved");
	cr_expect_eq(l.c.experts, DP_V4_EXPERTS_DEVICE);
	cr_expect_eq(l.c.csa_entries, DP_V4_CSA_DEVICE);
	cr_expect_eq(l.c.restore, DP_RESTORE_FULL);
	cr_expect_eq(l.c.engram_residency, DP_ENGRAM_RES_DRAM);
}

Test(config, the_shared_tier_keys_load_and_rados_needs_a_pool_and_a_clean_host_id)
{
	struct loaded l;
	LOAD(&l, "--lease-ms", "5000");
	cr_assert_eq(l.ret, 0, "%s", l.err);
	cr_expect_eq(l.c.shared_tier, DP_KV_SHARED_NONE, "off by default");
	cr_expect_str_eq(l.c.host_id, "", "the hostname, resolved at start");
	cr_expect_eq(l.c.lease_ms, 5000);
	LOAD(&l, "--shared-tier", "rados");
	cr_expect_eq(l.ret, -EINVAL);
	if (dp_kv_shared_rados_available())
		cr_expect(strstr(l.err, "shared_tier = rados needs rados_pool"), "%s", l.err);
	else
		cr_expect(strstr(l.err, "without librados"), "%s", l.err);
	LOAD(&l, "--shared-tier", "nfs");
	cr_expect_eq(l.ret, -EINVAL);
	cr_expect(strstr(l.err, "shared_tier must be none or rados"), "%s", l.err);
	LOAD(&l, "--host-id", "a b");
	cr_expect_eq(l.ret, -EINVAL);
	cr_expect(strstr(l.err, "host_id \"a b\" must be"), "%s", l.err);
	if (dp_kv_shared_rados_available()) {
		LOAD(&l, "--shared-tier", "rados", "--rados-pool", "kv", "--rados-conf",
		     "/etc/ceph/ceph.conf", "--host-id", "node-7.rack2");
		cr_assert_eq(l.ret, 0, "%s", l.err);
		cr_expect_eq(l.c.shared_tier, DP_KV_SHARED_RADOS);
		cr_expect_str_eq(l.c.rados_pool, "kv");
		cr_expect_str_eq(l.c.host_id, "node-7.rack2");
	}
}

Test(config, a_bad_enum_value_is_refused_naming_the_key_and_its_values)
{
	static const char *const bad[][3] = {
	    {"--log-level", "verbose", "log_level must be err, warning, notice, info or debug"},
	    {"--backend", "rocm", "backend must be auto, cpu or cuda"},
	    {"--experts", "gpu", "experts must be device, dram or nvme"},
	    {"--csa-entries", "dram", "csa_entries must be device or host"},
	    {"--restore", "lazy", "restore must be dualpath, full or recompute"},
	    {"--engram-residency", "disk", "engram_residency must be device, dram or nvme"},
	    {"--restore", "", "restore must be"},
	    {"--restore", "Full", "restore must be"},
	};
	struct loaded l;
	for (size_t i = 0; i < DP_ARRAY_SIZE(bad); i++) {
		load(&l, (const char *const[]){bad[i][0], bad[i][1], NULL});
		cr_expect_eq(l.ret, -EINVAL, "%s %s accepted", bad[i][0], bad[i][1]);
		cr_expect(strstr(l.err, bad[i][0]) && strstr(l.err, bad[i][2]), "%s %s: %s",
		          bad[i][0], bad[i][1], l.err);
	}
	FILE_REFUSED("[sched]\nrestore = dualpath\n\n[kvcache]\ncsa_entries = nvme\n",
	             ":5:", "[kvcache] csa_entries = nvme", "csa_entries must be device or host");
	LOAD(&l, "--expert-slots", "4");
	cr_expect_eq(l.ret, -EINVAL);
	cr_expect(strstr(l.err, "expert_slots is set but experts = device"), "%s", l.err);
}

/* Print a's settings as --print-config does and load that text as the
 * config file: it loads, as the same settings. */
static void expect_print_reads_back(struct loaded *a)
{
	struct loaded b;
	char *text = NULL;
	size_t len = 0;
	FILE *out = open_memstream(&text, &len);
	dp_config_print(&a->c, out);
	fclose(out);
	struct conf_file f;
	conf_write(&f, text, len);
	LOAD(&b, "--config", f.path);
	cr_expect_eq(b.ret, 0, "%s\n--- printed:\n%s", b.err, text);
	snprintf(a->c.config_path, sizeof(a->c.config_path), "%s", f.path);
	cr_expect_eq(memcmp(&a->c, &b.c, sizeof(a->c)), 0,
	             "the printed settings load as themselves:\n%s", text);
	free(text);
	conf_remove(&f);
}

Test(config, print_config_reads_back_as_the_same_settings)
{
	struct loaded a;
	LOAD(&a, "--max-batch", "7", "--dram-bytes", "3M", "--low-watermark", "0.5", "--experts",
	     "nvme", "--expert-slots", "4", "--restore", "full", "--csa-entries", "host",
	     "--engram-residency", "nvme", "--log-level", "debug", "--backend", "cpu");
	cr_assert_eq(a.ret, 0, "%s", a.err);
	expect_print_reads_back(&a);
}

/* found by tests/fuzz/fuzz_config: fractions were printed with %g, six
 * digits, so 0.1234567 read back as 0.123457, and low 0.1234561 below high
 * 0.1234569 as equal watermarks, refused */
Test(config, print_config_writes_fractions_that_read_back_exactly)
{
	struct loaded a;
	LOAD(&a, "--high-watermark", "0.1234569", "--low-watermark", "0.1234561");
	cr_assert_eq(a.ret, 0, "%s", a.err);
	expect_print_reads_back(&a);
	LOAD(&a, "--high-watermark", "0.30000000000000004", "--low-watermark", "1e-300");
	cr_assert_eq(a.ret, 0, "%s", a.err);
	expect_print_reads_back(&a);
	/* and a fraction that needs no more digits gets none */
	LOAD(&a, "--low-watermark", "0.7");
	cr_assert_eq(a.ret, 0, "%s", a.err);
	char *text = NULL;
	size_t len = 0;
	FILE *out = open_memstream(&text, &len);
	dp_config_print(&a.c, out);
	fclose(out);
	cr_expect(strstr(text, "\nhigh_watermark = 0.9\nlow_watermark = 0.7\n"), "%s", text);
	free(text);
}

/* found with tests/fuzz/fuzz_config's round trip: a value that filled its
 * line as key=value (198 bytes, inih's most) was printed as key = value,
 * two bytes over, and the printed file was refused */
Test(config, print_config_keeps_a_value_that_filled_its_line_within_a_line)
{
	char text[512];
	int n = snprintf(text, sizeof(text), "[daemon]\nlog_file=/%0188d\n", 0);
	struct conf_file f;
	struct loaded a;
	conf_write(&f, text, (size_t)n);
	LOAD(&a, "--config", f.path);
	cr_assert_eq(a.ret, 0, "a line of 198 bytes is read whole: %s", a.err);
	cr_assert_eq(strlen(a.c.log_file), 189);
	conf_remove(&f);
	expect_print_reads_back(&a);
}

/* found by tests/fuzz/fuzz_config: a value right after its '=' may start
 * with ';' (inih reads "key =;x" as ";x": a comment needs a space before
 * it), and --print-config's "key = ;x" was a key with an empty value and a
 * comment */
Test(config, print_config_keeps_a_value_that_starts_with_a_semicolon)
{
	static const char text[] = "[daemon]\nlog_file =;/var/log/x\nstate_dir=;a\n";
	struct conf_file f;
	struct loaded a;
	conf_write(&f, text, sizeof(text) - 1);
	LOAD(&a, "--config", f.path);
	cr_assert_eq(a.ret, 0, "%s", a.err);
	cr_assert_str_eq(a.c.log_file, ";/var/log/x");
	cr_assert_str_eq(a.c.state_dir, ";a");
	conf_remove(&f);
	expect_print_reads_back(&a);
}

/* ---- the real dualpathd ---------------------------------------------------------- */

struct outcome {
	int status;               /* exit status, or 128 + signal */
	bool served;              /* it said "serving on" (then it was stopped) */
	unsigned long vm_peak_kb; /* served: its VmPeak then */
	char out[16384];          /* stdout and stderr */
};

static void read_text(const char *path, char *buf, size_t len)
{
	size_t n = 0;
	FILE *f = fopen(path, "r");
	if (f) {
		n = fread(buf, 1, len - 1, f);
		fclose(f);
	}
	buf[n] = '\0';
}

static unsigned long vm_peak_kb(pid_t pid)
{
	char path[64], text[4096];
	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	read_text(path, text, sizeof(text));
	const char *p = strstr(text, "VmPeak:");
	return p ? strtoul(p + 7, NULL, 10) : 0;
}

/*
 * Run dualpathd on model with config (text, or NULL: /dev/null) and extra
 * flags; stdout and stderr, without --log-file, are what an operator sees.
 * as_limit: RLIMIT_AS for the daemon (0: none). If it says "serving on", it
 * is stopped with SIGTERM.
 */
static void run_daemon(const char *model, const void *config, size_t config_len,
                       const char *const *extra, rlim_t as_limit, struct outcome *o)
{
	char dir[] = "/var/tmp/dp-test-c-XXXXXX";
	cr_assert_not_null(mkdtemp(dir));
	char sock[128], state[128], conf[128], outf[128];
	snprintf(sock, sizeof(sock), "%s/sock", dir);
	snprintf(state, sizeof(state), "%s/state", dir);
	snprintf(conf, sizeof(conf), "%s/dualpathd.conf", dir);
	snprintf(outf, sizeof(outf), "%s/out", dir);
	if (config) {
		FILE *f = fopen(conf, "wb");
		cr_assert_not_null(f);
		cr_assert_eq(fwrite(config, 1, config_len, f), config_len);
		fclose(f);
	}
	pid_t pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0) {
		const char *argv[48] = {getenv("DUALPATHD"),
		                        "--config",
		                        config ? conf : "/dev/null",
		                        "--socket",
		                        sock,
		                        "--state-dir",
		                        state,
		                        "--model",
		                        model,
		                        "--pin-threads",
		                        "false",
		                        "--dram-bytes",
		                        "4M"};
		int n = 13;
		for (int i = 0; extra && extra[i] && n < 46; i++)
			argv[n++] = extra[i];
		argv[n] = NULL;
		int fd = open(outf, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
		if (fd < 0 || dup2(fd, 1) < 0 || dup2(fd, 2) < 0)
			_exit(126);
		if (as_limit) {
			struct rlimit rl = {as_limit, as_limit};
			if (setrlimit(RLIMIT_AS, &rl) < 0)
				_exit(125);
		}
		execv(argv[0], (char *const *)argv);
		_exit(127);
	}
	int st = 0;
	o->served = false;
	o->vm_peak_kb = 0;
	for (int i = 0;; i++) {
		if (waitpid(pid, &st, WNOHANG) == pid)
			break;
		read_text(outf, o->out, sizeof(o->out));
		o->served = strstr(o->out, "serving on") != NULL;
		if (o->served || i == 6000) {
			if (o->served) {
				usleep(300000); /* the compute thread's start-up allocations */
				o->vm_peak_kb = vm_peak_kb(pid);
			}
			kill(pid, SIGTERM);
			waitpid(pid, &st, 0);
			break;
		}
		usleep(10000);
	}
	o->status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
	read_text(outf, o->out, sizeof(o->out));
	char cmd[160];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	(void)!system(cmd);
}

/* It stopped before serving, non-zero, with a message naming each needle. */
static void expect_refused_to_start(const struct outcome *o, int status, const char *const *needles)
{
	cr_expect(!o->served, "it served:\n%s", o->out);
	cr_expect(!strstr(o->out, "serving"), "it never says serving:\n%s", o->out);
	cr_expect_neq(o->status, 0, "exit status 0:\n%s", o->out);
	if (status)
		cr_expect_eq(o->status, status, "exit status %d, not %d:\n%s", o->status, status,
		             o->out);
	for (int i = 0; needles[i]; i++)
		cr_expect(strstr(o->out, needles[i]), "the message names \"%s\":\n%s", needles[i],
		          o->out);
}

#define REFUSED(o, status, ...)                                                                    \
	expect_refused_to_start((o), (status), (const char *const[]){__VA_ARGS__, NULL})

TestSuite(config_daemon, .timeout = 300);

Test(config_daemon, max_batch_out_of_range_exits_2_before_serving)
{
	struct outcome o;
	run_daemon(test_model(), NULL, 0, (const char *const[]){"--max-batch", "100000000", NULL},
	           0, &o);
	REFUSED(&o, 2, "--max-batch 100000000", "max_batch", "between 1 and 4096");
	run_daemon(test_model(), NULL, 0, (const char *const[]){"--max-connections", "0", NULL}, 0,
	           &o);
	REFUSED(&o, 2, "max_connections", "between 1 and 65536");
}

Test(config_daemon, a_binary_config_file_exits_2_naming_file_and_line)
{
	static const char bin[] = "\x7f"
	                          "ELF\x02\x01\x01\0\0\0\0\0\0\0\0\0\x03\0>\0\x01\0\0\0";
	struct outcome o;
	run_daemon(test_model(), bin, sizeof(bin) - 1, NULL, 0, &o);
	REFUSED(&o, 2, "dualpathd.conf:1:", "not a text file");
}

Test(config_daemon, max_connections_0_in_the_config_file_exits_2_naming_file_line_and_key)
{
	static const char text[] = "[daemon]\nmax_connections = 0\n";
	struct outcome o;
	run_daemon(test_model(), text, sizeof(text) - 1, NULL, 0, &o);
	REFUSED(&o, 2, "dualpathd.conf:2:", "max_connections = 0", "between 1 and 65536");
}

/* The daemon on text (and args) served; its log is in o->out. The io
 * engine's settings need its thread: without io_uring the test is skipped. */
static void run_served_with_io(const char *text, const char *const *args, struct outcome *o)
{
	run_daemon(test_model(), text, text ? strlen(text) : 0, args, 0, o);
	cr_assert(o->served, "%s", o->out);
	if (strstr(o->out, "io_uring unavailable"))
		cr_skip_test("no io thread here: %s", o->out);
}

/* [io] read_rate (or --io-read-rate) is the io engine's read rate: the io
 * thread's description in the log says what it paces reads to. */
Test(config_daemon, the_read_rate_from_the_file_or_the_flag_paces_the_io_thread)
{
	static const char text[] = "[io]\nread_rate = 8M\n";
	struct outcome o;
	run_served_with_io(text, NULL, &o);
	cr_expect(strstr(o.out, "reads paced to 8.4 MB/s"), "8 MiB/s from the file:\n%s", o.out);
	run_served_with_io(text, (const char *const[]){"--io-read-rate", "16M", NULL}, &o);
	cr_expect(strstr(o.out, "reads paced to 16.8 MB/s"), "the flag over the file:\n%s", o.out);
	run_served_with_io(NULL, NULL, &o);
	cr_expect(!strstr(o.out, "reads paced"), "no limit by default:\n%s", o.out);
	static const char bad[] = "[io]\nread_rate = 4K\n";
	run_daemon(test_model(), bad, sizeof(bad) - 1, NULL, 0, &o);
	REFUSED(&o, 2, "dualpathd.conf:2:", "read_rate", "0 or between 1M and 1T");
}

/* [io] read_burst (or --io-read-burst) is the bucket's size: the io thread's
 * description names it beside the rate. */
Test(config_daemon, the_read_burst_from_the_file_or_the_flag_sizes_the_io_threads_bucket)
{
	static const char text[] = "[io]\nread_rate = 8M\nread_burst = 1M\n";
	struct outcome o;
	run_served_with_io(text, NULL, &o);
	cr_expect(strstr(o.out, "reads paced to 8.4 MB/s (burst 1024 KiB)"), "1 MiB from the file:\n%s",
		  o.out);
	run_served_with_io(text, (const char *const[]){"--io-read-burst", "128K", NULL}, &o);
	cr_expect(strstr(o.out, "(burst 128 KiB)"), "the flag over the file:\n%s", o.out);
	run_served_with_io("[io]\nread_rate = 8M\n", NULL, &o);
	cr_expect(strstr(o.out, "(burst 256 KiB)"), "the engine's default:\n%s", o.out);
}

Test(config_daemon, an_unknown_key_exits_2_naming_it)
{
	static const char text[] = "[sched]\nmax_batch = 8\nmax_bacth = 8\n";
	struct outcome o;
	run_daemon(test_model(), text, sizeof(text) - 1, NULL, 0, &o);
	REFUSED(&o, 2, "dualpathd.conf:3:", "unknown key max_bacth");
	run_daemon(test_model(), NULL, 0, (const char *const[]){"--max-bacth", "8", NULL}, 0, &o);
	REFUSED(&o, 2, "unknown option --max-bacth");
}

/* A copy of the test model (its weights linked) whose config.json is
 * edited by `edit`: a sed expression. Returns the directory. */
static void model_variant(char *dir, size_t len, const char *edit)
{
	snprintf(dir, len, "/var/tmp/dp-test-m-XXXXXX");
	cr_assert_not_null(mkdtemp(dir));
	char src[PATH_MAX], cmd[8192];
	cr_assert_not_null(realpath(test_model(), src));
	int n = snprintf(cmd, sizeof(cmd),
	                 "sed -e '%.512s' '%.1024s/config.json' > '%.64s/config.json' && "
	                 "ln -s '%.1024s/model.safetensors' '%.64s/model.safetensors'",
	                 edit, src, dir, src, dir);
	cr_assert(n > 0 && (size_t)n < sizeof(cmd) && strlen(src) < 1024);
	cr_assert_eq(system(cmd), 0, "%s", cmd);
}

Test(config_daemon, an_eos_token_id_beyond_the_vocabulary_stops_the_daemon_naming_it)
{
	char dir[64], cmd[128];
	/* the test model: vocab_size 300 */
	model_variant(dir, sizeof(dir), "s/\"eos_token_id\": 1,/\"eos_token_id\": [1, 300],/");
	struct outcome o;
	run_daemon(dir, NULL, 0, NULL, 0, &o);
	REFUSED(&o, 0, "eos_token_id[1]", "300", "vocab_size");
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	(void)!system(cmd);
}

/* The test model with its vocabulary grown to `vocab` (the rows of each
 * vocabulary-sized tensor repeated): large logits on a small model. */
static void big_vocab_model(char *dir, size_t len, int vocab)
{
	char src[PATH_MAX], path[PATH_MAX + 32];
	cr_assert_not_null(realpath(test_model(), src));
	snprintf(dir, len, "/var/tmp/dp-test-v-XXXXXX");
	cr_assert_not_null(mkdtemp(dir));

	snprintf(path, sizeof(path), "%s/config.json", src);
	json_t *config = json_load_file(path, 0, NULL);
	cr_assert_not_null(config);
	json_int_t old = json_integer_value(json_object_get(config, "vocab_size"));
	cr_assert_gt(old, 0);
	json_object_set_new(config, "vocab_size", json_integer(vocab));
	snprintf(path, sizeof(path), "%s/config.json", dir);
	cr_assert_eq(json_dump_file(config, path, JSON_INDENT(2)), 0);
	json_decref(config);

	snprintf(path, sizeof(path), "%s/model.safetensors", src);
	FILE *f = fopen(path, "rb");
	cr_assert_not_null(f);
	fseek(f, 0, SEEK_END);
	size_t n = (size_t)ftell(f);
	rewind(f);
	unsigned char *file = malloc(n);
	cr_assert(file && fread(file, 1, n, f) == n);
	fclose(f);
	uint64_t hlen;
	memcpy(&hlen, file, 8);
	json_t *header = json_loadb((const char *)file + 8, hlen, 0, NULL);
	cr_assert_not_null(header);
	const unsigned char *data = file + 8 + hlen;
	size_t nt = 0;
	struct stw_tensor *t = calloc(json_object_size(header), sizeof(*t));
	void **grown = calloc(json_object_size(header), sizeof(void *));
	cr_assert(t && grown);
	const char *name;
	json_t *e;
	json_object_foreach(header, name, e)
	{
		if (!strcmp(name, "__metadata__"))
			continue;
		struct stw_tensor *x = &t[nt];
		json_t *shape = json_object_get(e, "shape"),
		       *at = json_object_get(e, "data_offsets");
		x->name = name;
		x->dtype = json_string_value(json_object_get(e, "dtype"));
		x->ndim = (int)json_array_size(shape);
		for (int d = 0; d < x->ndim; d++)
			x->shape[d] = json_integer_value(json_array_get(shape, (size_t)d));
		size_t b = (size_t)json_integer_value(json_array_get(at, 0));
		x->bytes = (size_t)json_integer_value(json_array_get(at, 1)) - b;
		x->data = data + b;
		if (x->ndim >= 1 && x->shape[0] == old) {
			size_t row = x->bytes / (size_t)old;
			unsigned char *g = malloc(row * (size_t)vocab);
			cr_assert_not_null(g);
			for (size_t r = 0; r < (size_t)vocab; r++)
				memcpy(g + r * row, data + b + (r % (size_t)old) * row, row);
			x->shape[0] = vocab;
			x->data = grown[nt] = g;
			x->bytes = row * (size_t)vocab;
		}
		nt++;
	}
	snprintf(path, sizeof(path), "%s/model.safetensors", dir);
	cr_assert_eq(stw_write(path, t, nt, NULL), 0);
	for (size_t i = 0; i < nt; i++)
		free(grown[i]);
	free(grown);
	free(t);
	json_decref(header);
	free(file);
}

#if defined(__SANITIZE_ADDRESS__)
#define ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define ASAN 1
#endif
#endif

/* The compute thread allocates max_batch x vocab logits as it starts; when
 * that failed, the daemon had said "serving" and exited 0. */
Test(config_daemon, a_compute_thread_that_cannot_allocate_at_start_exits_non_zero_before_serving)
{
#ifdef ASAN
	cr_skip_test("RLIMIT_AS cannot bound a process under AddressSanitizer (its shadow memory)");
#endif
	char dir[64], cmd[128];
	big_vocab_model(dir, sizeof(dir), 65536);
	struct outcome o;
	run_daemon(dir, NULL, 0, (const char *const[]){"--max-batch", "1", NULL}, 0, &o);
	cr_assert(o.served && o.vm_peak_kb, "the big-vocabulary model serves:\n%s", o.out);
	/* max_batch 4096: 1 GiB of logits; the room left is half that */
	rlim_t limit = (rlim_t)o.vm_peak_kb * 1024 + (512u << 20);
	run_daemon(dir, NULL, 0, (const char *const[]){"--max-batch", "4096", NULL}, limit, &o);
	REFUSED(&o, 1, "compute thread", "out of memory");
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	(void)!system(cmd);
}

Test(config, numerics_is_a_model_key_auto_by_default_and_refuses_other_names)
{
	struct loaded l;
	LOAD(&l, "--numerics", "reference");
	cr_assert_eq(l.ret, 0, "%s", l.err);
	cr_expect_eq(l.c.numerics, DP_V4_NUMERICS_REFERENCE);
	LOAD(&l, "--restore", "full");
	cr_assert_eq(l.ret, 0, "%s", l.err);
	cr_expect_eq(l.c.numerics, DP_V4_NUMERICS_AUTO, "default: auto (by the checkpoint)");
	LOAD(&l, "--numerics", "fp8");
	cr_expect_eq(l.ret, -EINVAL);
	cr_expect(strstr(l.err, "numerics must be transformers, reference or auto"), "%s", l.err);
	FILE_REFUSED("[model]\nnumerics = bf16\n", ":2:", "[model] numerics = bf16",
	             "numerics must be transformers, reference or auto");
}
