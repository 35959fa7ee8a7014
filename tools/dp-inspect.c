/* SPDX-License-Identifier: MIT */
/*
 * dp-inspect MODEL — what a V4 checkpoint holds and what loading it costs, without running it.
 *
 * Prints the tensors by dtype and by role (attention, compressor, indexer, router, shared and
 * routed experts, mHC, norms, embed/head, scales, MTP), the bytes on disk, the bytes the cpu
 * backend holds after a load (weights kept as stored: owned plus mapped in place), the
 * layer schedule (sliding / CSA / HCA, hash or top-k MoE, the format of its routed experts) and
 * whether an MTP block is present. Validation is the loader's (model/weights.h): a checkpoint
 * it refuses is reported with its message and exit status 1.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gpu/gpu.h"
#include "model/config.h"
#include "model/quant.h"
#include "model/safetensors.h"
#include "model/v4.h"
#include "model/weights.h"

enum role {
	ROLE_EMBED_HEAD,
	ROLE_ATTN,
	ROLE_COMPRESSOR,
	ROLE_INDEXER,
	ROLE_ROUTER,
	ROLE_SHARED,
	ROLE_EXPERTS,
	ROLE_MHC,
	ROLE_NORM,
	ROLE_SCALE,
	ROLE_MTP,
	ROLE_OTHER,
	ROLE_MAX,
};

static const char *const role_name[ROLE_MAX] = {
    "embed/head", "attention", "compressor", "indexer", "router",     "shared expert",
    "routed experts", "mHC", "norms", "scales", "MTP block", "other",
};

static enum role role_of(const char *n)
{
	if (!strncmp(n, "mtp.", 4) || !strncmp(n, "model.mtp.", 10))
		return ROLE_MTP;
	size_t len = strlen(n);
	if ((len > 6 && !strcmp(n + len - 6, ".scale") && !strstr(n, "hc_")) ||
	    strstr(n, "weight_scale_inv"))
		return ROLE_SCALE;
	if (strstr(n, "indexer"))
		return ROLE_INDEXER;
	if (strstr(n, "compressor"))
		return ROLE_COMPRESSOR;
	if (strstr(n, "experts.") && !strstr(n, "shared"))
		return ROLE_EXPERTS;
	if (strstr(n, "shared_experts"))
		return ROLE_SHARED;
	if (strstr(n, "gate.") || strstr(n, "mlp.gate"))
		return ROLE_ROUTER;
	if (strstr(n, "hc_") || strstr(n, "_hc."))
		return ROLE_MHC;
	if (strstr(n, "norm"))
		return ROLE_NORM;
	if (strstr(n, "attn") || strstr(n, "sinks"))
		return ROLE_ATTN;
	if (strstr(n, "embed") || strstr(n, "head"))
		return ROLE_EMBED_HEAD;
	return ROLE_OTHER;
}

static void human(uint64_t b, char *buf, size_t len)
{
	if (b >= (1ull << 30))
		snprintf(buf, len, "%.2f GiB", (double)b / (1ull << 30));
	else if (b >= (1ull << 20))
		snprintf(buf, len, "%.2f MiB", (double)b / (1ull << 20));
	else if (b >= (1ull << 10))
		snprintf(buf, len, "%.1f KiB", (double)b / (1ull << 10));
	else
		snprintf(buf, len, "%llu B", (unsigned long long)b);
}

static const char *expert_format(const struct dp_v4_weights *w, int l)
{
	struct dp_st_tensor t;

	if (dp_v4_weights_expert(w, l, 0, DP_V4_EXPERT_GATE, &t) < 0)
		return "?";
	switch (dp_quant_format_of(t.dtype)) {
	case DP_QUANT_FP8:
		return "fp8";
	case DP_QUANT_FP4:
		return "fp4";
	default:
		return dp_st_dtype_name(t.dtype);
	}
}

int main(int argc, char **argv)
{
	struct dp_v4_config c;
	struct dp_st *st = NULL;
	struct dp_v4_weights *w = NULL;
	struct dp_v4_weights_stats ws;
	char path[4096], err[1024] = "", a[32], b[32];
	uint64_t by_dtype[DP_ST_DTYPE_MAX][2] = {{0}}, by_role[ROLE_MAX][2] = {{0}}, disk = 0;
	bool no_load = false;
	const char *dir = NULL;
	int r;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--no-load"))
			no_load = true;
		else if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help") || dir)
			dir = NULL, i = argc;
		else
			dir = argv[i];
	}
	if (!dir) {
		fprintf(stderr, "usage: dp-inspect [--no-load] MODEL_DIR\n"
		                "  prints tensors by dtype and role, bytes on disk and resident after a "
		                "cpu load (--no-load: skip the load),\n  the layer schedule and the MTP "
		                "block\n");
		return 2;
	}
	snprintf(path, sizeof(path), "%s/config.json", dir);
	if ((r = dp_v4_config_load(path, &c, err, sizeof(err))) < 0) {
		fprintf(stderr, "dp-inspect: %s\n", err);
		return 1;
	}
	if ((r = dp_st_open_dir(dir, &st, err, sizeof(err))) < 0 ||
	    (r = dp_v4_weights_new(&c, st, 0, &w, err, sizeof(err))) < 0) {
		fprintf(stderr, "dp-inspect: %s: %s\n", dir, err);
		dp_st_free(st);
		dp_v4_config_fini(&c);
		return 1;
	}
	dp_v4_weights_stats(w, &ws);
	for (size_t i = 0; i < dp_st_count(st); i++) {
		struct dp_st_tensor t;

		dp_st_at(st, i, &t);
		by_dtype[t.dtype][0]++;
		by_dtype[t.dtype][1] += t.bytes;
		by_role[role_of(t.name)][0]++;
		by_role[role_of(t.name)][1] += t.bytes;
		disk += t.bytes;
	}

	printf("model %s: %zu tensors in %zu file%s\n", dir, dp_st_count(st), dp_st_file_count(st),
	       dp_st_file_count(st) == 1 ? "" : "s");
	printf("\nby dtype:\n");
	for (int d = 0; d < DP_ST_DTYPE_MAX; d++)
		if (by_dtype[d][0]) {
			human(by_dtype[d][1], a, sizeof(a));
			printf("  %-8s %6llu tensors %12s\n", dp_st_dtype_name(d),
			       (unsigned long long)by_dtype[d][0], a);
		}
	printf("\nby role:\n");
	for (int k = 0; k < ROLE_MAX; k++)
		if (by_role[k][0]) {
			human(by_role[k][1], a, sizeof(a));
			printf("  %-15s %6llu tensors %12s\n", role_name[k],
			       (unsigned long long)by_role[k][0], a);
		}

	printf("\nlayers (%d):\n", c.num_hidden_layers);
	for (int l = 0; l < c.num_hidden_layers; l++) {
		int rate = dp_v4_compress_rate(&c, l);

		printf("  %3d  %-8s", l,
		       c.layer_types[l] == DP_V4_LAYER_SLIDING ? "sliding"
		       : c.layer_types[l] == DP_V4_LAYER_CSA   ? "CSA"
		                                               : "HCA");
		if (rate)
			printf(" m=%-4d", rate);
		else
			printf("       ");
		printf(" %-9s experts %s\n",
		       c.mlp_layer_types[l] == DP_V4_MLP_HASH_MOE ? "hash MoE" : "top-k MoE",
		       expert_format(w, l));
	}
	printf("\nMTP: %s", ws.has_mtp ? "present" : "absent");
	if (ws.has_mtp) {
		human(ws.bytes_mtp, a, sizeof(a));
		printf(" (%zu tensors, %s; validated, not loaded)", ws.n_mtp, a);
	}
	printf("\n");

	human(disk, a, sizeof(a));
	human(ws.bytes_used, b, sizeof(b));
	printf("\nbytes on disk: %s (%llu); read by the forward: %s (%llu)\n", a,
	       (unsigned long long)disk, b, (unsigned long long)ws.bytes_used);
	dp_v4_weights_free(w);
	dp_st_free(st);
	dp_v4_config_fini(&c);
	if (no_load)
		return 0;

	struct dp_gpu *g;
	struct dp_v4_model *m;
	struct dp_gpu_mem_stats ms;
	if ((r = dp_gpu_new(DP_GPU_CPU, NULL, &g, err, sizeof(err))) < 0) {
		fprintf(stderr, "dp-inspect: cpu backend: %s\n", err);
		return 1;
	}
	if ((r = dp_v4_model_load(g, dir, &m, err, sizeof(err))) < 0) {
		fprintf(stderr, "dp-inspect: %s: %s\n", dir, err);
		dp_gpu_free(g);
		return 1;
	}
	struct dp_v4_weight_stats kw;
	dp_gpu_mem_stats(g, &ms);
	dp_v4_model_weight_stats(m, &kw);
	human(ms.bytes[DP_GPU_MEM_WEIGHTS] + kw.mapped_bytes, a, sizeof(a));
	printf("bytes resident after a cpu load: %s (%llu: %llu owned by the backend, %llu of the "
	       "mapped checkpoint used in place; %u weights kept as stored, %u dequantized)\n",
	       a, (unsigned long long)(ms.bytes[DP_GPU_MEM_WEIGHTS] + kw.mapped_bytes),
	       (unsigned long long)ms.bytes[DP_GPU_MEM_WEIGHTS], (unsigned long long)kw.mapped_bytes,
	       kw.kept, kw.dequantized);
	dp_v4_model_free(m);
	dp_gpu_free(g);
	return 0;
}
