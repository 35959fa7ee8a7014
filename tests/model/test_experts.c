/* SPDX-License-Identifier: MIT */
/*
 * Routed experts paged in (model/v4.h, dp_v4_model_load_opts): a layer keeps
 * only expert_slots of its experts in backend memory; the rest come from a
 * host copy (dram) or from the checkpoint files (nvme) when picked. The
 * logits must equal those of resident experts bit for bit, with as few slots
 * as a token needs (so a prefill step runs each layer in several passes) and
 * with more, in one call, in chunks and one token per call, and batched;
 * hash-routed layers are read ahead; a failing reader is an error, never
 * wrong logits; bad slot counts are refused.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/macros.h"
#include "model/safetensors.h"
#include "model/v4-internal.h"

#define N_TOK 200u

struct fx {
	struct dp_gpu *g;
	struct dp_v4_model *m;
	int32_t tokens[N_TOK];
	uint32_t V, E, k;
	char dir[512];
};

static void fx_open_opts(struct fx *f, const char *name, const struct dp_v4_load_opts *o)
{
	char err[512] = "";
	const char *root = getenv("DP_TEST_PARITY");
	snprintf(f->dir, sizeof(f->dir), "%s/%s", root ? root : "tests/model/parity", name);
	cr_assert_eq(dp_gpu_new(DP_GPU_CPU, NULL, &f->g, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(dp_v4_model_load_opts(f->g, f->dir, o, &f->m, err, sizeof(err)), 0, "%s: %s",
		     f->dir, err);
	const struct dp_v4_config *c = dp_v4_model_config(f->m);
	f->V = (uint32_t)c->vocab_size;
	f->E = (uint32_t)c->n_routed_experts;
	f->k = (uint32_t)c->num_experts_per_tok;
	uint64_t x = 0x9e3779b97f4a7c15ull;
	for (uint32_t i = 0; i < N_TOK; i++) {
		x = x * 6364136223846793005ull + 1442695040888963407ull;
		f->tokens[i] = (int32_t)((x >> 33) % f->V);
	}
}

static void fx_open(struct fx *f, const char *name, enum dp_v4_experts_where where,
		    uint32_t slots)
{
	struct dp_v4_load_opts o = { .experts = where, .expert_slots = slots };
	fx_open_opts(f, name, &o);
}

static void fx_close(struct fx *f)
{
	dp_v4_model_free(f->m);
	dp_gpu_free(f->g);
}

static float *logits(struct fx *f, const uint32_t *chunks, uint32_t n_chunks)
{
	float *out = malloc((size_t)N_TOK * f->V * sizeof(float));
	cr_assert_not_null(out);
	int r = dp_v4_logits(f->m, f->tokens, N_TOK, chunks, n_chunks, out);
	cr_assert_eq(r, 0, "forward: %s", strerror(-r));
	return out;
}

static void check_config(const char *name)
{
	uint32_t chunks[] = { 37, 1, 64, 60, 1, 1, 36 }, ones[N_TOK], threes[N_TOK / 3 + 1];
	for (uint32_t i = 0; i < N_TOK; i++)
		ones[i] = 1;
	/* steps of a few tokens: more experts than slots, and lookahead
	 * guesses pending in every slot for experts later in the step */
	uint32_t n3 = 0;
	for (uint32_t left = N_TOK; left; left -= threes[n3++])
		threes[n3] = left < 3 ? left : 3;
	struct {
		const uint32_t *chunks;
		uint32_t n;
		const char *what;
	} modes[] = {{NULL, 0, "one call"},
	             {chunks, DP_ARRAY_SIZE(chunks), "chunks"},
	             {ones, N_TOK, "token by token"},
	             {threes, n3, "three tokens a call"}};
	struct fx ref;
	fx_open(&ref, name, DP_V4_EXPERTS_DEVICE, 0);
	enum { N_MODES = DP_ARRAY_SIZE(modes) };
	float *want[N_MODES];
	for (int i = 0; i < N_MODES; i++)
		want[i] = logits(&ref, modes[i].chunks, modes[i].n);
	uint32_t k = ref.k, E = ref.E;
	fx_close(&ref);

	uint32_t slot_counts[] = { k, E / 2 > k ? E / 2 : k + 1 };
	for (int where = DP_V4_EXPERTS_DRAM; where <= DP_V4_EXPERTS_NVME; where++)
		for (int sc = 0; sc < 2; sc++) {
			struct fx f;
			fx_open(&f, name, (enum dp_v4_experts_where)where, slot_counts[sc]);
			for (int i = 0; i < N_MODES; i++) {
				float *got = logits(&f, modes[i].chunks, modes[i].n);
				for (uint32_t t = 0; t < N_TOK; t++)
					cr_expect(!memcmp(got + (size_t)t * f.V, want[i] + (size_t)t * f.V,
							  f.V * sizeof(float)),
						  "%s, %s, %u slots, %s: position %u differs", name,
						  dp_v4_experts_where_name((enum dp_v4_experts_where)where),
						  slot_counts[sc], modes[i].what, t);
				free(got);
			}
			struct dp_v4_expert_stats st;
			dp_v4_model_expert_stats(f.m, &st);
			cr_expect_eq(st.slots, slot_counts[sc]);
			cr_expect_gt(st.misses + st.prefetched, 0);
			cr_expect_eq(st.uses, st.hits + st.misses + st.prefetched,
				     "every use is a hit, a miss or read ahead");
			fx_close(&f);
		}
	for (int i = 0; i < N_MODES; i++)
		free(want[i]);
}

Test(experts, mixed_config_paged_from_dram_or_nvme_gives_the_resident_logits_bit_for_bit)
{
	check_config("mixed");
}

Test(experts, alt_config_paged_from_dram_or_nvme_gives_the_resident_logits_bit_for_bit)
{
	check_config("alt");
}

/* With k slots a prefill step's picks cover far more experts than fit: the
 * layer runs in passes of ascending expert ranges. */
Test(experts, a_step_picking_more_experts_than_slots_runs_its_layers_in_passes)
{
	struct fx f;
	fx_open(&f, "mixed", DP_V4_EXPERTS_DRAM, 2);
	struct dp_v4_seq *s;
	cr_assert_eq(dp_v4_seq_new(f.m, &s), 0);
	float *out = malloc((size_t)f.V * sizeof(float));
	struct dp_v4_batch_item it = { s, f.tokens, N_TOK, false };
	cr_assert_eq(dp_v4_forward(f.m, &it, 1, out), 0);
	struct dp_v4_expert_stats st;
	dp_v4_model_expert_stats(f.m, &st);
	uint32_t L = (uint32_t)dp_v4_model_config(f.m)->num_hidden_layers;
	/* 200 random tokens pick every expert of every layer */
	cr_expect_eq(st.uses, (uint64_t)L * f.E);
	cr_expect_geq(st.passes, (uint64_t)L * ((f.E + 1) / 2), "%llu passes",
		      (unsigned long long)st.passes);
	free(out);
	dp_v4_seq_free(s);
	fx_close(&f);
}

/* Hash layers: their experts depend on the tokens only, so a step reads
 * them ahead; a repeated token then finds everything resident. (Lookahead
 * off: the top-k layers' experts are read when picked.) */
Test(experts, hash_layers_experts_are_read_ahead_and_a_repeated_token_hits)
{
	struct fx f;
	struct dp_v4_load_opts o = { .experts = DP_V4_EXPERTS_NVME, .expert_slots = 4,
				     .no_lookahead = true };
	fx_open_opts(&f, "mixed", &o);
	struct dp_v4_seq *s;
	cr_assert_eq(dp_v4_seq_new(f.m, &s), 0);
	float *out = malloc((size_t)f.V * sizeof(float));
	struct dp_v4_batch_item it = { s, f.tokens, 1, false };
	cr_assert_eq(dp_v4_forward(f.m, &it, 1, out), 0);
	struct dp_v4_expert_stats a, b;
	dp_v4_model_expert_stats(f.m, &a);
	cr_expect_eq(a.prefetched, 2 * f.k, "the two hash layers' k experts, read ahead");
	cr_expect_eq(a.misses, 2 * f.k, "the two top-k layers' experts, read when picked");
	for (int i = 0; i < 3; i++) {
		struct dp_v4_batch_item one = { s, f.tokens, 1, false };
		cr_assert_eq(dp_v4_forward(f.m, &one, 1, out), 0);
	}
	dp_v4_model_expert_stats(f.m, &b);
	cr_expect_eq(b.prefetched, a.prefetched, "the hash layers' experts stayed");
	cr_expect_geq(b.hits - a.hits, 3 * 2 * f.k, "the hash layers hit every time");
	free(out);
	dp_v4_seq_free(s);
	fx_close(&f);
}

/* A reader of our own: counts reads and can be told to fail. */
struct reader {
	struct fx *f;
	int fd[4];
	int reads, fail_after; /* -1: never */
};

static int rd_read(void *ctx, uint32_t file, uint64_t offset, uint32_t len, void *dst, uint32_t layer,
		   bool urgent, uint64_t *ret_ticket)
{
	struct reader *r = ctx;
	(void)layer, (void)urgent;
	cr_assert_lt(file, 4);
	cr_assert_eq(offset % 4096, 0, "windows are 4 KiB-aligned");
	cr_assert_eq(len % 4096, 0);
	if (r->fail_after >= 0 && r->reads >= r->fail_after) {
		*ret_ticket = 0; /* nothing arrived */
		return 0;
	}
	r->reads++;
	ssize_t n = pread(r->fd[file], dst, len, (off_t)offset);
	*ret_ticket = n < 0 ? 0 : (uint64_t)n;
	return 0;
}

static int rd_wait(void *ctx, uint64_t ticket, uint32_t need)
{
	(void)ctx;
	return ticket >= need ? 0 : -EIO;
}

Test(experts, a_failing_expert_reader_fails_the_forward_and_the_next_one_is_right)
{
	struct fx f, ref;
	fx_open(&ref, "mixed", DP_V4_EXPERTS_DEVICE, 0);
	float *want = logits(&ref, NULL, 0);
	fx_close(&ref);

	fx_open(&f, "mixed", DP_V4_EXPERTS_NVME, 3);
	uint32_t nf = dp_v4_model_expert_file_count(f.m);
	cr_assert(nf >= 1 && nf <= 4);
	struct reader r = { .f = &f, .fail_after = 10 };
	for (uint32_t i = 0; i < nf; i++) {
		r.fd[i] = open(dp_v4_model_expert_file(f.m, i), O_RDONLY);
		cr_assert_geq(r.fd[i], 0);
	}
	struct dp_v4_expert_io io = { .read = rd_read, .wait = rd_wait, .ctx = &r };
	cr_assert_eq(dp_v4_model_set_expert_io(f.m, &io), 0);
	float *out = malloc((size_t)N_TOK * f.V * sizeof(float));
	cr_expect_eq(dp_v4_logits(f.m, f.tokens, N_TOK, NULL, 0, out), -EIO);
	/* the reader recovers: the slots whose reads failed were emptied */
	r.fail_after = -1;
	r.reads = 0;
	cr_assert_eq(dp_v4_logits(f.m, f.tokens, N_TOK, NULL, 0, out), 0);
	cr_expect_gt(r.reads, 0, "our reader did the reads");
	cr_expect(!memcmp(out, want, (size_t)N_TOK * f.V * sizeof(float)));
	cr_assert_eq(dp_v4_model_set_expert_io(f.m, NULL), 0);
	for (uint32_t i = 0; i < nf; i++)
		close(r.fd[i]);
	free(out);
	free(want);
	fx_close(&f);
}

Test(experts, slot_counts_outside_k_to_E_are_refused_with_a_message)
{
	char dir[512], err[512];
	const char *root = getenv("DP_TEST_PARITY");
	snprintf(dir, sizeof(dir), "%s/mixed", root ? root : "tests/model/parity");
	struct dp_gpu *g;
	cr_assert_eq(dp_gpu_new(DP_GPU_CPU, NULL, &g, err, sizeof(err)), 0);
	struct dp_v4_model *m = NULL;
	uint32_t bad[] = { 1, 9 }; /* mixed: E 8, k 2 */
	for (int i = 0; i < 2; i++) {
		struct dp_v4_load_opts o = { .experts = DP_V4_EXPERTS_DRAM, .expert_slots = bad[i] };
		err[0] = 0;
		cr_expect_eq(dp_v4_model_load_opts(g, dir, &o, &m, err, sizeof(err)), -EINVAL);
		cr_expect(strstr(err, "expert_slots") != NULL, "message: %s", err);
	}
	/* 0: the default, max(k, E / 4) */
	struct dp_v4_load_opts o = { .experts = DP_V4_EXPERTS_NVME };
	cr_assert_eq(dp_v4_model_load_opts(g, dir, &o, &m, err, sizeof(err)), 0, "%s", err);
	struct dp_v4_expert_stats st;
	dp_v4_model_expert_stats(m, &st);
	cr_expect_eq(st.slots, 2);
	cr_expect_eq(st.where, DP_V4_EXPERTS_NVME);
	/* a resident model has no expert reader to set */
	struct dp_v4_model *res;
	cr_assert_eq(dp_v4_model_load(g, dir, &res, err, sizeof(err)), 0);
	struct dp_v4_expert_io io = { .read = rd_read, .wait = rd_wait, .ctx = NULL };
	cr_expect_eq(dp_v4_model_set_expert_io(res, &io), -EINVAL);
	cr_expect_eq(dp_v4_model_expert_file_count(res), 0);
	dp_v4_model_free(res);
	dp_v4_model_free(m);
	dp_gpu_free(g);
}

/* The cpu moe op on a paged stack: a pick of an expert that is not resident
 * is refused, not computed from whatever the slot holds. */
Test(experts, the_cpu_moe_op_refuses_a_pick_of_an_expert_that_is_not_resident)
{
	struct dp_gpu *g;
	char err[256];
	cr_assert_eq(dp_gpu_new(DP_GPU_CPU, NULL, &g, err, sizeof(err)), 0);
	const struct dp_gpu_ops *ops = dp_gpu_ops(g);
	struct dp_gpu_weight gu, dn;
	cr_assert_eq(dp_gpu_weight_alloc(g, 2, 8, 4, &gu), 0);
	cr_assert_eq(dp_gpu_weight_alloc(g, 2, 4, 4, &dn), 0);
	int32_t slot_of[4] = { -1, 1, 0, -1 }; /* experts 1 and 2 resident */
	struct dp_gpu_weight pgu = gu, pdn = dn;
	pgu.count = pdn.count = 4;
	pgu.stored = pdn.stored = 2;
	pgu.slot_of = pdn.slot_of = slot_of;
	float x[4] = { 1, 2, 3, 4 }, w[2] = { 0.5f, 0.5f }, y[4] = { 0 };
	int32_t ok[2] = { 1, 2 }, absent[2] = { 1, 3 }, skipped[2] = { -1, 2 };
	cr_expect_eq(ops->moe(g, x, ok, w, 1, 2, &pgu, &pdn, 7.0f, y), 0);
	cr_expect_eq(ops->moe(g, x, skipped, w, 1, 2, &pgu, &pdn, 7.0f, y), 0);
	cr_expect_eq(ops->moe(g, x, absent, w, 1, 2, &pgu, &pdn, 7.0f, y), -EINVAL);
	cr_expect_eq(ops->matmul(g, x, 0, &pgu, 1, y, 0, 1, false), -EINVAL,
		     "only the moe op takes a paged stack");
	dp_gpu_weight_free(g, &gu);
	dp_gpu_weight_free(g, &dn);
	dp_gpu_free(g);
}

/* 40 tokens decoded one by one; the expert counters after. */
static void decode_40(const struct dp_v4_load_opts *o, struct dp_v4_expert_stats *st)
{
	struct fx f;
	fx_open_opts(&f, "mixed", o); /* hash, hash, moe, moe */
	struct dp_v4_seq *s;
	cr_assert_eq(dp_v4_seq_new(f.m, &s), 0);
	float *out = malloc((size_t)f.V * sizeof(float));
	for (uint32_t t = 0; t < 40; t++) {
		struct dp_v4_batch_item one = { s, f.tokens + t, 1, false };
		cr_assert_eq(dp_v4_forward(f.m, &one, 1, out), 0);
	}
	dp_v4_model_expert_stats(f.m, st);
	cr_expect_eq(st->uses, 40u * 4 * f.k, "one token picks k distinct experts a layer");
	cr_expect_eq(st->uses, st->hits + st->misses + st->prefetched);
	free(out);
	dp_v4_seq_free(s);
	fx_close(&f);
}

/* Lookahead routing: a top-k layer's experts are guessed from the layer
 * before's MoE input and read ahead, so fewer are read when the layer
 * already waits; guesses the router did not make are counted apart, and the
 * logits stay those of resident experts (check_config covers nvme with
 * lookahead, the default). */
Test(experts, top_k_layers_experts_are_guessed_one_layer_early_and_read_ahead)
{
	struct fx f;
	fx_open(&f, "mixed", DP_V4_EXPERTS_NVME, 4);
	cr_expect(!dp_v4_experts_lookahead(f.m, 0) && !dp_v4_experts_lookahead(f.m, 1),
		  "hash layers are read ahead from the tokens instead");
	cr_expect(dp_v4_experts_lookahead(f.m, 2) && dp_v4_experts_lookahead(f.m, 3));
	fx_close(&f);

	struct dp_v4_load_opts on = { .experts = DP_V4_EXPERTS_NVME, .expert_slots = 4 };
	struct dp_v4_load_opts off = on;
	off.no_lookahead = true;
	struct dp_v4_expert_stats a, b;
	decode_40(&on, &a);
	decode_40(&off, &b);
	cr_log_info("lookahead: %llu uses, %llu hits, %llu misses, %llu read ahead, %llu guesses "
		    "unused; without: %llu misses, %llu read ahead", (unsigned long long)a.uses,
		    (unsigned long long)a.hits, (unsigned long long)a.misses,
		    (unsigned long long)a.prefetched, (unsigned long long)a.ahead_unused,
		    (unsigned long long)b.misses, (unsigned long long)b.prefetched);
	cr_expect_eq(b.ahead_unused, 0, "without lookahead only exact (hash) reads go ahead");
	cr_expect_lt(a.misses, b.misses, "guessed experts are not read while the layer waits");
	cr_expect_gt(a.prefetched, b.prefetched);
}

/* The NVMe tier of paged experts is the checkpoint itself: a read whose
 * bytes differ from what the file held at load (the file changed on disk)
 * fails the step instead of serving other weights; put back, it serves the
 * right logits again. */
Test(experts, an_expert_changed_on_disk_after_load_fails_the_step_not_the_logits)
{
	struct fx ref;
	fx_open(&ref, "mixed", DP_V4_EXPERTS_DEVICE, 0);
	float *want = logits(&ref, NULL, 0);
	fx_close(&ref);

	char dir[] = "/var/tmp/dp-test-x-XXXXXX", cmd[1400], file[600];
	cr_assert_not_null(mkdtemp(dir));
	const char *root = getenv("DP_TEST_PARITY");
	snprintf(cmd, sizeof(cmd), "cp '%s/mixed/config.json' '%s/mixed/model.safetensors' '%s/'",
		 root ? root : "tests/model/parity", root ? root : "tests/model/parity", dir);
	cr_assert_eq(system(cmd), 0);
	snprintf(file, sizeof(file), "%s/model.safetensors", dir);

	struct fx f;
	char err[512] = "";
	cr_assert_eq(dp_gpu_new(DP_GPU_CPU, NULL, &f.g, err, sizeof(err)), 0);
	struct dp_v4_load_opts o = { .experts = DP_V4_EXPERTS_NVME, .expert_slots = 2 };
	cr_assert_eq(dp_v4_model_load_opts(f.g, dir, &o, &f.m, err, sizeof(err)), 0, "%s", err);
	memcpy(f.tokens, ref.tokens, sizeof(f.tokens));
	f.V = ref.V;

	/* one byte of every expert of layer 2 (top-k routed), changed in place */
	struct dp_st *st;
	cr_assert_eq(dp_st_open_file(file, &st, err, sizeof(err)), 0, "%s", err);
	uint32_t E = ref.E;
	uint64_t *off = malloc(E * sizeof(uint64_t));
	unsigned char *was = malloc(E);
	int fd = open(file, O_RDWR);
	cr_assert_geq(fd, 0);
	for (uint32_t e = 0; e < E; e++) {
		char name[128];
		struct dp_st_tensor t;
		snprintf(name, sizeof(name), "model.layers.2.ffn.experts.%u.w2.weight", e);
		cr_assert_eq(dp_st_get(st, name, &t), 0, "%s", name);
		off[e] = t.offset + t.bytes / 2;
		cr_assert_eq(pread(fd, &was[e], 1, (off_t)off[e]), 1);
		unsigned char flip = (unsigned char)(was[e] ^ 0x40);
		cr_assert_eq(pwrite(fd, &flip, 1, (off_t)off[e]), 1);
	}
	dp_st_free(st);
	float *out = malloc((size_t)N_TOK * f.V * sizeof(float));
	cr_expect_eq(dp_v4_logits(f.m, f.tokens, N_TOK, NULL, 0, out), -EBADMSG);
	struct dp_v4_expert_stats xs;
	dp_v4_model_expert_stats(f.m, &xs);
	cr_expect_gt(xs.corrupt, 0);
	for (uint32_t e = 0; e < E; e++)
		cr_assert_eq(pwrite(fd, &was[e], 1, (off_t)off[e]), 1);
	close(fd);
	cr_assert_eq(dp_v4_logits(f.m, f.tokens, N_TOK, NULL, 0, out), 0);
	cr_expect(!memcmp(out, want, (size_t)N_TOK * f.V * sizeof(float)));
	fx_close(&f);
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	(void)!system(cmd);
	free(off);
	free(was);
	free(out);
	free(want);
}
