/* SPDX-License-Identifier: MIT */
/*
 * What a loaded published checkpoint keeps in the process (issue 14, "Weights stay as stored"):
 * shard pages the loader only copied (routed expert stacks, paged experts' host copy) or only
 * validated (the MTP block; paged experts' checksums) leave the process's resident set at load;
 * pages of weights used in place stay.
 *
 * Residency is read from /proc/self/pagemap (bit 63: the page is mapped in *this* process), not
 * mincore(), which reports the page cache: the released pages stay cached, by design
 * (model/safetensors.h, dp_st_release). The model's shard mappings are found in
 * /proc/self/maps; tensor offsets come from a second dp_st opened on the same files afterwards.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "model/safetensors.h"
#include "model/v4.h"

static const char *published(void)
{
	const char *root = getenv("DP_TEST_PUBLISHED");
	return root ? root : "tests/model/published";
}

#define MAPS_MAX 16

struct shard_map {
	char path[512];
	uintptr_t start, end;
};

/* The mappings of files under dir (the model's shards), before anything else maps them. */
static int shard_maps(const char *dir, struct shard_map *out, int max)
{
	char real[512], line[1024];
	int n = 0;

	cr_assert_not_null(realpath(dir, real), "%s: %s", dir, strerror(errno));
	FILE *f = fopen("/proc/self/maps", "r");
	cr_assert_not_null(f);
	while (fgets(line, sizeof(line), f) && n < max) {
		unsigned long a, b, off;
		char perm[8], path[512] = "";
		if (sscanf(line, "%lx-%lx %7s %lx %*s %*s %511s", &a, &b, perm, &off, path) != 5)
			continue;
		if (strncmp(path, real, strlen(real)) || !strstr(path, ".safetensors") || off)
			continue;
		snprintf(out[n].path, sizeof(out[n].path), "%s", path);
		out[n].start = a;
		out[n].end = b;
		n++;
	}
	fclose(f);
	return n;
}

/* Pages of [p, p + n)'s page-aligned interior mapped in this process, and how many there are. */
static void present(int pagemap, uintptr_t p, size_t n, uint64_t *ret_present, uint64_t *ret_pages)
{
	uintptr_t pg = (uintptr_t)sysconf(_SC_PAGESIZE);
	uintptr_t a = (p + pg - 1) & ~(pg - 1), e = (p + n) & ~(pg - 1);

	for (; a < e; a += pg) {
		uint64_t ent;
		cr_assert_eq(pread(pagemap, &ent, 8, (off_t)(a / pg * 8)), 8);
		*ret_present += ent >> 63;
		(*ret_pages)++;
	}
}

enum role { ROLE_EXPERT, ROLE_MTP, ROLE_OTHER };

static enum role role_of(const char *name)
{
	if (strncmp(name, "mtp.", 4) == 0)
		return ROLE_MTP;
	if (strncmp(name, "layers.", 7) == 0 && strstr(name, ".ffn.experts."))
		return ROLE_EXPERT;
	return ROLE_OTHER;
}

/* Load variant with opts; count interior pages of expert, MTP and named in-place tensors still
 * mapped in the process. */
static void pages_after_load(const char *variant, const struct dp_v4_load_opts *o,
			     const char *in_place, uint64_t ret_present[3], uint64_t ret_pages[3],
			     uint64_t *ret_in_place)
{
	char dir[600], err[512] = "";
	struct dp_gpu *g;
	struct dp_v4_model *m;
	struct shard_map maps[MAPS_MAX];
	struct dp_st *st;

	snprintf(dir, sizeof(dir), "%s/%s", published(), variant);
	cr_assert_eq(dp_gpu_new(DP_GPU_CPU, NULL, &g, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(dp_v4_model_load_opts(g, dir, o, &m, err, sizeof(err)), 0, "%s", err);
	int n_maps = shard_maps(dir, maps, MAPS_MAX);
	cr_assert_geq(n_maps, 2, "the model's two shard mappings are not in /proc/self/maps");
	cr_assert_eq(dp_st_open_dir(dir, &st, err, sizeof(err)), 0, "%s", err);
	int pagemap = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	cr_assert_geq(pagemap, 0, "/proc/self/pagemap: %s", strerror(errno));

	*ret_in_place = 0;
	for (size_t i = 0; i < dp_st_count(st); i++) {
		struct dp_st_tensor t;
		cr_assert_eq(dp_st_at(st, i, &t), 0);
		const struct shard_map *mp = NULL;
		for (int k = 0; k < n_maps; k++) {
			const char *base = strrchr(maps[k].path, '/');
			const char *tb = strrchr(t.file, '/');
			if (base && strcmp(base, tb ? tb : t.file) == 0)
				mp = &maps[k];
		}
		cr_assert_not_null(mp, "no model mapping of %s", t.file);
		cr_assert_leq(t.offset + t.bytes, mp->end - mp->start);
		uintptr_t p = mp->start + (uintptr_t)t.offset;
		enum role r = role_of(t.name);
		if (strcmp(t.name, in_place) == 0) {
			uint64_t pages = 0;
			present(pagemap, p, t.bytes, ret_in_place, &pages);
			cr_assert_gt(pages, 0, "%s has no page of its own", in_place);
		}
		if (r != ROLE_OTHER)
			present(pagemap, p, t.bytes, &ret_present[r], &ret_pages[r]);
	}
	close(pagemap);
	dp_st_free(st);
	dp_v4_model_free(m);
	dp_gpu_free(g);
}

static void copied_pages_leave_rss(const char *variant, const struct dp_v4_load_opts *o)
{
	uint64_t pr[3] = { 0 }, pages[3] = { 0 }, in_place = 0;

	/* an FP8 matrix wrapped in place: its pages were read at load (the NaN-code scan) and
	 * stay; this is what shows the pagemap check can see a resident page */
	pages_after_load(variant, o, "layers.0.attn.wq_b.weight", pr, pages, &in_place);
	cr_log_info("%s, experts %s: expert pages mapped %llu of %llu, MTP %llu of %llu, "
		    "in-place weight %llu", variant, dp_v4_experts_where_name(o->experts),
		    (unsigned long long)pr[ROLE_EXPERT], (unsigned long long)pages[ROLE_EXPERT],
		    (unsigned long long)pr[ROLE_MTP], (unsigned long long)pages[ROLE_MTP],
		    (unsigned long long)in_place);
	cr_assert_gt(pages[ROLE_EXPERT], 0, "the fixture's experts have no page of their own");
	cr_assert_gt(pages[ROLE_MTP], 0, "the fixture's MTP block has no page of its own");
	cr_expect_gt(in_place, 0, "layers.0.attn.wq_b.weight (used in place) is not resident");
	cr_expect_eq(pr[ROLE_EXPERT], 0, "%s: %llu of %llu routed-expert pages (copied) still mapped",
		     variant, (unsigned long long)pr[ROLE_EXPERT],
		     (unsigned long long)pages[ROLE_EXPERT]);
	cr_expect_eq(pr[ROLE_MTP], 0, "%s: %llu of %llu MTP pages (only validated) still mapped",
		     variant, (unsigned long long)pr[ROLE_MTP], (unsigned long long)pages[ROLE_MTP]);
}

Test(load_rss, resident_expert_stacks_leave_the_shard_pages_they_were_copied_from)
{
	struct dp_v4_load_opts o = { .experts = DP_V4_EXPERTS_DEVICE };
	copied_pages_leave_rss("instruct", &o);
}

Test(load_rss, base_checkpoint_resident_experts_leave_their_shard_pages)
{
	struct dp_v4_load_opts o = { .experts = DP_V4_EXPERTS_DEVICE };
	copied_pages_leave_rss("base", &o);
}

Test(load_rss, dram_paged_experts_leave_the_shard_pages_of_their_host_copy)
{
	struct dp_v4_load_opts o = { .experts = DP_V4_EXPERTS_DRAM, .expert_slots = 2 };
	copied_pages_leave_rss("instruct", &o);
}

Test(load_rss, nvme_paged_experts_leave_the_pages_their_checksums_read)
{
	struct dp_v4_load_opts o = { .experts = DP_V4_EXPERTS_NVME, .expert_slots = 2 };
	copied_pages_leave_rss("instruct", &o);
}
