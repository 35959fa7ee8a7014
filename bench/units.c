/* SPDX-License-Identifier: MIT */
/*
 * bench-units: what prefix units cost in the DRAM pool and on the compute
 * thread along one stateless conversation (kvcache.h, "Prefix units"),
 * with the growing streams shared by reference (ours) beside every unit
 * owning a copy (the anchor: how units were kept before sharing).
 *
 * The conversation is played as the daemon plays a stateless client: turn
 * i forks from the longest unit (the previous turn's end), prefills its new
 * user tokens in chunks of 512, leaves a unit one token short of its prompt,
 * feeds that token, decodes a greedy reply and leaves a unit where the reply
 * ends. Every unit is left twice, at the same moment, from the same state:
 * into cache A from the request's own sequence (whose frozen pages carry
 * the tags of the units they came from: they are shared), and into cache B
 * from an untagged clone (every page copied, as before), in alternating
 * order. Only the leave calls are timed (dp_kv_stats unit_leave_ns).
 *
 * Usage: bench-units [--model DIR|builtin] [--turns N] [--turn-len N]
 *                    [--reply N] [--threads N]
 */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench/bench-util.h"
#include "gpu/gpu.h"
#include "kvcache/kvcache.h"

static struct dp_gpu *g;
static struct dp_v4_model *m;

static int feed(struct dp_v4_seq *s, const int32_t *t, uint32_t n, float *lg)
{
	for (uint32_t done = 0; done < n;) {
		uint32_t k = n - done < 512 ? n - done : 512;
		struct dp_v4_batch_item it = { s, t + done, k, false };
		int ret = dp_v4_forward(m, &it, 1, lg);
		if (ret < 0)
			return ret;
		done += k;
	}
	return 0;
}

/* An untagged copy of s: what a unit copied before its pages were shared. */
static int clone_untagged(const struct dp_v4_seq *s, struct dp_v4_seq **ret)
{
	struct dp_v4_seq *c;
	int r = dp_v4_seq_new_at(m, dp_v4_seq_pos(s), &c);
	if (r < 0)
		return r;
	size_t n = dp_v4_seq_pages(s, NULL, 0);
	struct dp_v4_page_ref *a = malloc(n * sizeof(*a)), *b = malloc(n * sizeof(*b));
	if (!a || !b || dp_v4_seq_pages(c, NULL, 0) != n)
		r = -ENOMEM;
	if (r == 0) {
		dp_v4_seq_pages(s, a, n);
		dp_v4_seq_pages(c, b, n);
	}
	for (size_t i = 0; r == 0 && i < n; i++)
		r = a[i].host ? (memcpy(b[i].page, a[i].page, DP_V4_PAGE_BYTES), 0)
			      : dp_gpu_copy(g, b[i].page, a[i].page, DP_V4_PAGE_BYTES);
	free(a);
	free(b);
	if (r < 0) {
		dp_v4_seq_free(c);
		return r;
	}
	*ret = c;
	return 0;
}

/* The clone is made first (it reads every page of s, so both are as warm
 * in the caches), and which cache goes first alternates. */
static int leave_both(struct dp_kv *ka, struct dp_kv *kb, const struct dp_kv_tenant *te,
		      const int32_t *t, struct dp_v4_seq *s, bool a_first)
{
	uint64_t n = dp_v4_seq_pos(s);
	struct dp_v4_seq *c = NULL;
	int r = clone_untagged(s, &c);
	if (r == 0 && a_first)
		r = dp_kv_unit_leave(ka, te, t, n, s);
	if (r == 0)
		r = dp_kv_unit_leave(kb, te, t, n, c);
	if (r == 0 && !a_first)
		r = dp_kv_unit_leave(ka, te, t, n, s);
	dp_v4_seq_free(c);
	return r;
}

static struct dp_kv *open_cache(char *dir, size_t len, const char *tag)
{
	char err[512] = "";
	snprintf(dir, len, "/var/tmp/dp-bench-units-%s-XXXXXX", tag);
	if (!mkdtemp(dir))
		return NULL;
	struct dp_kv_opts o = { .state_dir = dir, .dram_bytes = 1ull << 30, .numa_node = -1 };
	struct dp_kv *kv;
	if (dp_kv_open(&o, m, &kv, err, sizeof(err)) < 0) {
		fprintf(stderr, "bench-units: cache in %s: %s\n", dir, err);
		return NULL;
	}
	return kv;
}

int main(int argc, char **argv)
{
	const char *model = "builtin";
	uint32_t turns = 8, turn_len = 1024, reply = 16;
	int threads = 1;
	static const struct option lo[] = { { "model", 1, 0, 'm' },   { "turns", 1, 0, 'n' },
					    { "turn-len", 1, 0, 'l' }, { "reply", 1, 0, 'r' },
					    { "threads", 1, 0, 't' },  { 0, 0, 0, 0 } };
	for (int o; (o = getopt_long(argc, argv, "", lo, NULL)) != -1;) {
		switch (o) {
		case 'm': model = optarg; break;
		case 'n': turns = (uint32_t)strtoul(optarg, NULL, 10); break;
		case 'l': turn_len = (uint32_t)strtoul(optarg, NULL, 10); break;
		case 'r': reply = (uint32_t)strtoul(optarg, NULL, 10); break;
		case 't': threads = atoi(optarg); break;
		default:
			fprintf(stderr, "usage: bench-units [--model DIR|builtin] [--turns N] "
					"[--turn-len N] [--reply N] [--threads N]\n");
			return 2;
		}
	}
	if (!turns || turn_len < 2 || !reply || turns > 64 || turn_len > 65536 || reply > 4096) {
		fprintf(stderr, "bench-units: --turns 1..64, --turn-len 2..65536, --reply 1..4096\n");
		return 2;
	}
	char dir[PATH_MAX], err[512] = "";
	int ret = dp_v4_resolve_dir(model, dir, sizeof(dir));
	if (ret < 0) {
		fprintf(stderr, "bench-units: cannot find model %s: %s\n", model, strerror(-ret));
		return 1;
	}
	struct dp_gpu_opts go = { .threads = threads };
	if (dp_gpu_new(DP_GPU_CPU, &go, &g, err, sizeof(err)) < 0 ||
	    dp_v4_model_load(g, dir, &m, err, sizeof(err)) < 0) {
		fprintf(stderr, "bench-units: %s: %s\n", dir, err);
		return 1;
	}
	uint32_t V = (uint32_t)dp_v4_model_config(m)->vocab_size;
	char da[PATH_MAX], db[PATH_MAX];
	struct dp_kv *ka = open_cache(da, sizeof(da), "a"), *kb = open_cache(db, sizeof(db), "b");
	if (!ka || !kb)
		return 1;
	struct dp_kv_tenant te;
	dp_kv_tenant_make(1000, "bench", 5, &te);
	size_t cap = (size_t)turns * (turn_len + reply);
	int32_t *ctx = malloc(cap * sizeof(*ctx));
	float *lg = malloc((size_t)V * sizeof(float));
	size_t len = 0;
	printf("| turn | tokens | units | pool A (shared) KiB | pool B (copies) KiB | leave A us | "
	       "leave B us |\n| --- | --- | --- | --- | --- | --- | --- |\n");
	uint64_t la0 = 0, lb0 = 0;
	for (uint32_t i = 0; i < turns && ret == 0; i++) {
		stream_tokens(7, i, V, ctx + len, turn_len);
		len += turn_len;
		struct dp_v4_seq *s = NULL;
		struct dp_kv_session *lent = NULL;
		int got = dp_kv_unit_fork(ka, &te, ctx, len - 1, false, &s, &lent);
		if (got < 0 || lent) {
			fprintf(stderr, "bench-units: fork: %s\n", got < 0 ? strerror(-got) : "lent");
			return 1;
		}
		if (!s && (ret = dp_v4_seq_new(m, &s)) < 0)
			break;
		if ((ret = feed(s, ctx + got, (uint32_t)(len - 1 - (size_t)got), lg)) < 0 ||
		    (ret = leave_both(ka, kb, &te, ctx, s, true)) < 0 ||
		    (ret = feed(s, ctx + len - 1, 1, lg)) < 0)
			break;
		for (uint32_t k = 0; k < reply && ret == 0; k++) {
			ctx[len++] = argmax(lg, V);
			if (k + 1 < reply)
				ret = feed(s, ctx + len - 1, 1, lg);
		}
		/* the reply's last id is not fed: where an explicit session stands */
		if (ret == 0)
			ret = leave_both(ka, kb, &te, ctx, s, false);
		dp_v4_seq_free(s);
		struct dp_kv_stats a, b;
		dp_kv_stats(ka, &a);
		dp_kv_stats(kb, &b);
		printf("| %u | %zu | %llu | %llu | %llu | %.1f | %.1f |\n", i + 1, len,
		       (unsigned long long)a.units, (unsigned long long)(a.bytes[DP_KV_TIER_DRAM] >> 10),
		       (unsigned long long)(b.bytes[DP_KV_TIER_DRAM] >> 10),
		       (double)(a.unit_leave_ns - la0) / 2e3, (double)(b.unit_leave_ns - lb0) / 2e3);
		la0 = a.unit_leave_ns;
		lb0 = b.unit_leave_ns;
	}
	if (ret < 0) {
		fprintf(stderr, "bench-units: %s\n", strerror(-ret));
		return 1;
	}
	struct dp_kv_stats a, b;
	dp_kv_stats(ka, &a);
	dp_kv_stats(kb, &b);
	double ua = (double)a.units_left, ub = (double)b.units_left;
	printf("bench-units: %s, %u turns of %u tokens + %u reply, %llu units\n", dir, turns, turn_len,
	       reply, (unsigned long long)a.units_left);
	printf("RESULT unit_pool_bytes ours=%llu anchor=%llu ratio=%.3f unit=bytes\n",
	       (unsigned long long)a.bytes[DP_KV_TIER_DRAM], (unsigned long long)b.bytes[DP_KV_TIER_DRAM],
	       (double)a.bytes[DP_KV_TIER_DRAM] / (double)b.bytes[DP_KV_TIER_DRAM]);
	printf("RESULT unit_copy_bytes_per_unit ours=%.0f anchor=%.0f ratio=%.3f unit=bytes\n",
	       (double)a.unit_copy_bytes / ua, (double)b.unit_copy_bytes / ub,
	       ((double)a.unit_copy_bytes / ua) / ((double)b.unit_copy_bytes / ub));
	printf("RESULT unit_leave_us ours=%.1f anchor=%.1f ratio=%.3f unit=us\n",
	       (double)a.unit_leave_ns / ua / 1e3, (double)b.unit_leave_ns / ub / 1e3,
	       ((double)a.unit_leave_ns / ua) / ((double)b.unit_leave_ns / ub));
	dp_kv_close(ka);
	dp_kv_close(kb);
	char cmd[2 * PATH_MAX + 16];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s' '%s'", da, db);
	if (system(cmd) != 0)
		fprintf(stderr, "bench-units: could not remove %s, %s\n", da, db);
	free(ctx);
	free(lg);
	dp_v4_model_free(m);
	dp_gpu_free(g);
	return 0;
}
