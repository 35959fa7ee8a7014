/* SPDX-License-Identifier: MIT */
/*
 * DeepSeek's reference numerics (dp_v4_load_opts.numerics REFERENCE, model/v4.h) on the
 * published-format fixtures, against the NumPy port scripts/quant/make_reference.py (golden
 * data tests/model/published/<variant>/ref_*):
 *
 * 1. the rounding functions on edge cases (ties to even, subnormals, the clamp at 448 / 6,
 *    the amax floors, zeros and -0, short last blocks, the Hadamard rotation);
 * 2. chosen matmul inputs of the fixture quantize to the port's e4m3 codes and e8m0 scales bit
 *    for bit, and the act-quantized products (FP8 attention and shared-expert weights, FP4 or
 *    FP8 routed experts, the indexer's wq_b) give the port's fp32 outputs bit for bit;
 * 3. the window KV, compressed KV and index keys the forward leaves in the sequence's state
 *    are the port's values bit for bit (one call and chunked);
 * 4. logits within 1e-4 of max |logit|, one call and chunked; the numerics is the default for
 *    these checkpoints (quantization_config) and refuses to be combined with dequantize.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/dtype.h"
#include "gpu/gpu.h"
#include "model/v4-internal.h"
#include "tests/model/parity-data.h"

static const char *published(void)
{
	const char *root = getenv("DP_TEST_PUBLISHED");
	return root ? root : "tests/model/published";
}

/* ---- 1. rounding ------------------------------------------------------------------------ */

Test(rounding, e4m3_rounds_to_nearest_ties_to_even)
{
	cr_expect_eq(dp_gpu_e4m3_of(1.0f), 0x38);
	cr_expect_eq(dp_gpu_e4m3_of(1.0625f), 0x38, "tie 1 | 1.125 -> even mantissa 0");
	cr_expect_eq(dp_gpu_e4m3_of(1.1875f), 0x3a, "tie 1.125 | 1.25 -> even mantissa 2");
	cr_expect_eq(dp_gpu_e4m3_of(1.07f), 0x39, "above the tie -> up");
	cr_expect_eq(dp_gpu_e4m3_of(15.5f), 0x58, "tie 15 | 16 carries into the exponent");
	cr_expect_eq(dp_gpu_e4m3_of(-2.5f), 0xc2);
}

Test(rounding, e4m3_subnormals_and_zeros)
{
	cr_expect_eq(dp_gpu_e4m3_of(0x1p-9f), 0x01, "smallest subnormal");
	cr_expect_eq(dp_gpu_e4m3_of(0x1p-10f), 0x00, "half of it: tie to 0");
	cr_expect_eq(dp_gpu_e4m3_of(3 * 0x1p-10f), 0x02, "tie 1 | 2 subnormal steps -> 2");
	cr_expect_eq(dp_gpu_e4m3_of(7.5f * 0x1p-9f), 0x08, "rounds up into the smallest normal");
	cr_expect_eq(dp_gpu_e4m3_of(0x1p-6f), 0x08);
	cr_expect_eq(dp_gpu_e4m3_of(0.0f), 0x00);
	cr_expect_eq(dp_gpu_e4m3_of(-0.0f), 0x80, "-0 keeps its sign");
	cr_expect_eq(dp_gpu_e4m3_of(-0x1p-11f), 0x80, "a negative value rounding to zero is -0");
}

Test(rounding, e4m3_clamps_at_448)
{
	cr_expect_eq(dp_gpu_e4m3_of(448.0f), 0x7e);
	cr_expect_eq(dp_gpu_e4m3_of(464.0f), 0x7e, "the tie with 480 (NaN code) clamps first");
	cr_expect_eq(dp_gpu_e4m3_of(1e30f), 0x7e);
	cr_expect_eq(dp_gpu_e4m3_of(-1e30f), 0xfe);
	cr_expect_eq(dp_gpu_e4m3_of(440.0f), 0x7e, "tie 432 | 448 -> 448 (mantissa 6)");
}

Test(rounding, e2m1_rounds_to_nearest_ties_to_even_and_clamps_at_6)
{
	static const struct { float x; uint8_t code; } c[] = {
		{ 0.0f, 0 }, { 0.25f, 0 }, { 0.26f, 1 }, { 0.75f, 2 }, { 1.25f, 2 }, { 1.75f, 4 },
		{ 2.5f, 4 }, { 3.5f, 6 }, { 5.0f, 6 }, { 5.5f, 7 }, { 6.0f, 7 }, { 7.0f, 7 },
		{ 100.0f, 7 }, { -0.3f, 9 }, { -6.0f, 15 }, { -0.0f, 8 },
	};
	for (size_t i = 0; i < sizeof(c) / sizeof(c[0]); i++)
		cr_expect_eq(dp_gpu_e2m1_of(c[i].x), c[i].code, "%g -> %u, not %u", c[i].x, c[i].code,
			     dp_gpu_e2m1_of(c[i].x));
}

Test(rounding, act_quant_scales_are_powers_of_two_at_or_above_amax_over_448)
{
	float x[128] = { 0 };
	uint8_t codes[128], s[1];

	x[5] = 448.0f; /* 448 * fp32(1/448) is exactly 1: scale 2^0 */
	x[6] = -1.0f;
	cr_assert_eq(dp_gpu_act_quant(x, 128, 128, codes, s), 0);
	cr_expect_eq(s[0], 127);
	cr_expect_eq(codes[5], 0x7e);
	cr_expect_eq(codes[6], 0xb8);
	x[5] = nextafterf(448.0f, 1e9f); /* just above: scale 2, the value 224.x -> 224 */
	cr_assert_eq(dp_gpu_act_quant(x, 128, 128, codes, s), 0);
	cr_expect_eq(s[0], 128);
	cr_expect_eq(codes[5], 0x76, "448.00003 / 2 rounds to 224");
	cr_expect_eq(codes[6], 0xb0, "-0.5");
}

Test(rounding, act_quant_floors_amax_at_1e_4_and_keeps_zeros)
{
	float x[200] = { 0 };
	uint8_t codes[200], s[2];

	x[130] = -0.0f;
	x[131] = 1e-9f;
	cr_assert_eq(dp_gpu_act_quant(x, 200, 128, codes, s), 0);
	cr_expect_eq(s[0], 127 - 22, "1e-4 * fp32(1/448) = 2.23e-7 -> 2^-22");
	cr_expect_eq(s[1], 127 - 22, "a short last block (72 values) is floored alike");
	cr_expect_eq(codes[0], 0);
	cr_expect_eq(codes[130], 0x80);
	cr_expect_eq(codes[131], dp_gpu_e4m3_of(1e-9f / 0x1p-22f));
}

Test(rounding, fp4_quant_floors_amax_at_6_times_2_to_the_minus_126)
{
	float x[64] = { 0 };
	uint8_t codes[64], s[2];

	for (int i = 32; i < 64; i++)
		x[i] = (float)(i - 48) * 0.25f; /* amax 4: 4 * fp32(1/6) -> scale 1 */
	cr_assert_eq(dp_gpu_fp4_quant(x, 64, 32, codes, s), 0);
	cr_expect_eq(s[0], 1, "all zeros: scale 2^-126");
	cr_expect_eq(s[1], 127);
	cr_expect_eq(codes[32], 0xe, "-4 at scale 1: code 14");
	cr_expect_eq(codes[32 + 16 + 5], dp_gpu_e2m1_of(1.25f), "1.25 -> 1 (tie to even)");
}

Test(rounding, hadamard_is_the_normalized_sylvester_transform)
{
	float a[4] = { 1, 0, 0, 0 }, b[4] = { 1, 1, 1, 1 }, c[8] = { 0, 1, 0, 0, 0, 0, 0, 0 };
	cr_assert_eq(dp_gpu_hadamard(a, 4), 0);
	cr_assert_eq(dp_gpu_hadamard(b, 4), 0);
	cr_assert_eq(dp_gpu_hadamard(c, 8), 0);
	for (int i = 0; i < 4; i++) {
		cr_expect_float_eq(a[i], 0.5f, 0);
		cr_expect_float_eq(b[i], i == 0 ? 2.0f : 0.0f, 0);
	}
	float r = 1.0f / sqrtf(8.0f);
	for (int i = 0; i < 8; i++) /* row 1 of H8: + - + - ... */
		cr_expect_float_eq(c[i], i % 2 ? -r : r, 1e-7f);
	cr_expect_eq(dp_gpu_hadamard(a, 3), -EINVAL, "not a power of two");
}

/* ---- golden data ------------------------------------------------------------------------- */

struct golden {
	json_t *meta;
	uint8_t *act, *kv;
	size_t act_len, kv_len;
};

static uint8_t *read_all(const char *path, size_t *ret_len)
{
	FILE *f = fopen(path, "rb");
	cr_assert_not_null(f, "cannot open %s (run scripts/quant/make_reference.py)", path);
	fseek(f, 0, SEEK_END);
	long n = ftell(f);
	fseek(f, 0, SEEK_SET);
	uint8_t *p = malloc(n > 0 ? (size_t)n : 1);
	cr_assert_not_null(p);
	cr_assert_eq(fread(p, 1, (size_t)n, f), (size_t)n, "%s is short", path);
	fclose(f);
	*ret_len = (size_t)n;
	return p;
}

static void golden_open(struct golden *gd, const char *variant)
{
	char path[700];
	json_error_t jerr;

	snprintf(path, sizeof(path), "%s/%s/ref_meta.json", published(), variant);
	gd->meta = json_load_file(path, 0, &jerr);
	cr_assert_not_null(gd->meta, "%s: %s", path, jerr.text);
	snprintf(path, sizeof(path), "%s/%s/ref_act.bin", published(), variant);
	gd->act = read_all(path, &gd->act_len);
	snprintf(path, sizeof(path), "%s/%s/ref_kv.bin", published(), variant);
	gd->kv = read_all(path, &gd->kv_len);
}

static void golden_close(struct golden *gd)
{
	json_decref(gd->meta);
	free(gd->act);
	free(gd->kv);
}

/* Array `name` of section `sec` ("act", "kv"); NULL when absent. rows x cols (1-d: 1 x n). */
static const void *golden_get(const struct golden *gd, const char *sec, const char *name,
			      const char *dtype, uint32_t *ret_rows, uint32_t *ret_cols)
{
	json_t *a = json_object_get(json_object_get(gd->meta, sec), name);
	if (!a)
		return NULL;
	cr_assert_str_eq(json_string_value(json_object_get(a, "dtype")), dtype, "%s", name);
	json_t *sh = json_object_get(a, "shape");
	uint32_t r = (uint32_t)json_integer_value(json_array_get(sh, 0));
	uint32_t c = json_array_size(sh) > 1 ? (uint32_t)json_integer_value(json_array_get(sh, 1)) : r;
	if (json_array_size(sh) == 1)
		r = 1;
	size_t off = (size_t)json_integer_value(json_object_get(a, "offset"));
	size_t esz = strcmp(dtype, "u8") == 0 ? 1 : 4;
	const uint8_t *base = strcmp(sec, "act") == 0 ? gd->act : gd->kv;
	size_t len = strcmp(sec, "act") == 0 ? gd->act_len : gd->kv_len;
	cr_assert_leq(off + (size_t)r * c * esz, len, "%s lies past the end of the file", name);
	*ret_rows = r;
	*ret_cols = c;
	return base + off;
}

/* The port's first position whose forward takes a rounding decision fp32 and float64 may take
 * apart (ref_meta.json "ambiguous_from"; the number of tokens when none). */
static uint32_t ambiguous_from(const struct golden *gd)
{
	json_t *v = json_object_get(gd->meta, "ambiguous_from");
	cr_assert(json_is_integer(v), "ref_meta.json: no ambiguous_from");
	return (uint32_t)json_integer_value(v);
}

/* The first position whose logits differ from ref by more than 1e-4 of that position's
 * max |logit| (n when none); the worst relative error before it in *ret_worst. */
static uint32_t first_divergence(const float *out, const float *ref, uint32_t n, uint32_t V,
				 double *ret_worst)
{
	double worst = 0;
	for (uint32_t t = 0; t < n; t++) {
		double maxref = 0, maxdiff = 0;
		for (uint32_t v = 0; v < V; v++) {
			maxref = fmax(maxref, fabs(ref[(size_t)t * V + v]));
			maxdiff = fmax(maxdiff, fabs((double)out[(size_t)t * V + v] - ref[(size_t)t * V + v]));
		}
		if (maxdiff > 1e-4 * maxref) {
			*ret_worst = worst;
			return t;
		}
		worst = fmax(worst, maxdiff / maxref);
	}
	*ret_worst = worst;
	return n;
}

static struct dp_v4_model *load(const char *variant, enum dp_v4_numerics n, struct dp_gpu **ret_g)
{
	char dir[600], err[512] = "";
	struct dp_v4_load_opts o = { .numerics = n };
	struct dp_v4_model *m;

	snprintf(dir, sizeof(dir), "%s/%s", published(), variant);
	cr_assert_eq(dp_gpu_new(DP_GPU_CPU, &(struct dp_gpu_opts){ 0 }, ret_g, err, sizeof(err)), 0,
		     "%s", err);
	cr_assert_eq(dp_v4_model_load_opts(*ret_g, dir, &o, &m, err, sizeof(err)), 0, "%s: %s", dir,
		     err);
	return m;
}

/* ---- 2. quantized activations and products ------------------------------------------------ */

static void act_products_match(const char *variant)
{
	struct golden gd;
	struct dp_gpu *g;
	struct dp_v4_model *m = load(variant, DP_V4_NUMERICS_AUTO, &g);
	const struct dp_gpu_ops *ops = dp_gpu_ops(g);
	struct {
		const char *name;
		const struct dp_gpu_weight *w;
		uint32_t index;
	} cases[] = {
		{ "l0.wq_a", &m->layers[0].q_a, 0 },
		{ "l0.wkv", &m->layers[0].kv, 0 },
		{ "l0.shared.w1", &m->layers[0].sh_gate_up, 0 },
		{ "l0.expert0.gate_up", &m->layers[0].gate_up, 0 },
		{ "l1.idx_wq_b", &m->layers[1].idx_q_b, 0 },
	};
	int checked = 0;

	cr_assert_eq(dp_v4_model_numerics(m), DP_V4_NUMERICS_REFERENCE,
		     "a checkpoint with quantization_config defaults to the reference numerics");
	golden_open(&gd, variant);
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char key[96];
		uint32_t M, K, r2, c2, r3, c3, Mo, N;
		snprintf(key, sizeof(key), "%s.x", cases[i].name);
		const float *x = golden_get(&gd, "act", key, "f32", &M, &K);
		snprintf(key, sizeof(key), "%s.codes", cases[i].name);
		const uint8_t *codes = golden_get(&gd, "act", key, "u8", &r2, &c2);
		snprintf(key, sizeof(key), "%s.scales", cases[i].name);
		const uint8_t *scales = golden_get(&gd, "act", key, "u8", &r3, &c3);
		snprintf(key, sizeof(key), "%s.y", cases[i].name);
		const float *y = golden_get(&gd, "act", key, "f32", &Mo, &N);
		cr_assert(x && codes && scales && y, "%s: golden arrays missing", cases[i].name);
		const struct dp_gpu_weight *w = cases[i].w;
		cr_assert(w->act_quant, "%s: weight not marked for act quantization", cases[i].name);
		cr_assert_eq(K, w->cols, "%s", cases[i].name);
		/* the codes and scales */
		uint8_t *cc = malloc((size_t)M * K), *cs = malloc((size_t)M * c3);
		cr_assert(cc && cs);
		for (uint32_t r = 0; r < M; r++)
			cr_assert_eq(dp_gpu_act_quant(x + (size_t)r * K, K, DP_GPU_ACT_BLOCK,
						      cc + (size_t)r * K, cs + (size_t)r * c3), 0);
		size_t bad = 0;
		for (size_t k = 0; k < (size_t)M * K; k++)
			bad += cc[k] != codes[k];
		cr_expect_eq(bad, 0, "%s: %zu of %zu e4m3 codes differ from the port", cases[i].name,
			     bad, (size_t)M * K);
		cr_expect(memcmp(cs, scales, (size_t)M * c3) == 0, "%s: scales differ", cases[i].name);
		/* the product, through the op */
		float *out = malloc((size_t)M * w->rows * sizeof(float));
		cr_assert_not_null(out);
		cr_assert_eq(ops->matmul(g, x, 0, w, cases[i].index, out, 0, M, false), 0);
		bad = 0;
		for (uint32_t r = 0; r < M; r++)
			for (uint32_t c = 0; c < N; c++)
				bad += memcmp(&out[(size_t)r * w->rows + c], &y[(size_t)r * N + c], 4) != 0;
		cr_expect_eq(bad, 0, "%s: %zu of %zu product outputs differ from the port's bits",
			     cases[i].name, bad, (size_t)M * N);
		free(out);
		free(cc);
		free(cs);
		checked++;
	}
	cr_expect_eq(checked, 5);
	golden_close(&gd);
	dp_v4_model_free(m);
	dp_gpu_free(g);
}

Test(reference, fp4_checkpoint_quantizes_activations_and_multiplies_as_the_port_bit_for_bit)
{
	act_products_match("instruct");
}

Test(reference, base_checkpoint_quantizes_activations_and_multiplies_as_the_port_bit_for_bit)
{
	act_products_match("base");
}

/* ---- 3. KV bytes --------------------------------------------------------------------------- */

/* Entries of a state stream against the port's: the first `exact` dims (the rounded ones) bit
 * for bit, the rest (RoPE dims, fp32 on both sides, not rounded) within 1e-5 of the entry's
 * largest value. Returns the entries that differ. */
static size_t stream_diff(struct dp_gpu *g, const struct dp_v4_stream *st, const float *ref,
			  const int32_t *entry_of, uint32_t n, uint32_t dim, uint32_t exact)
{
	float *row = malloc(dim * sizeof(float));
	size_t bad = 0;
	cr_assert_not_null(row);
	cr_assert_eq(st->dim, dim);
	for (uint32_t i = 0; i < n; i++) {
		uint32_t e = entry_of ? (uint32_t)entry_of[i] : i;
		const float *r = ref + (size_t)i * dim;
		cr_assert_eq(dp_v4_stream_read(g, st, e, row, 1), 0);
		bool differs = memcmp(row, r, exact * sizeof(float)) != 0;
		float mx = 0;
		for (uint32_t k = 0; k < dim; k++)
			mx = fmaxf(mx, fabsf(r[k]));
		for (uint32_t k = exact; k < dim; k++)
			differs |= fabsf(row[k] - r[k]) > 1e-5f * mx;
		bad += differs;
	}
	free(row);
	return bad;
}

static void kv_matches(const char *variant, bool chunked)
{
	struct golden gd;
	struct parity p = { 0 };
	struct dp_gpu *g;
	struct dp_v4_model *m = load(variant, DP_V4_NUMERICS_REFERENCE, &g);
	const struct dp_v4_config *c = dp_v4_model_config(m);
	struct dp_v4_seq *seq;

	setenv("DP_TEST_PARITY", published(), 1);
	parity_open(&p, variant, (uint32_t)c->vocab_size);
	golden_open(&gd, variant);
	cr_assert_eq(dp_v4_seq_new(m, &seq), 0);
	float *logits = malloc((size_t)p.n * c->vocab_size * sizeof(float));
	cr_assert_not_null(logits);
	uint32_t n_calls = chunked ? p.n_chunks : 1;
	for (uint32_t i = 0, at = 0; i < n_calls; i++) {
		uint32_t len = chunked ? p.chunks[i] : p.n;
		struct dp_v4_batch_item it = { .seq = seq, .tokens = p.tokens + at, .n_tokens = len,
					       .all_logits = true };
		cr_assert_eq(dp_v4_forward(m, &it, 1, logits + (size_t)at * c->vocab_size), 0);
		at += len;
	}
	/* the state is compared up to where the forwards part (see logits_match) */
	char path[700];
	snprintf(path, sizeof(path), "%s/%s/%s", published(), variant,
		 chunked ? "ref_logits_chunked.bin" : "ref_logits_full.bin");
	float *ref = parity_read_floats(path, (size_t)p.n * c->vocab_size);
	double worst;
	uint32_t upto = first_divergence(logits, ref, p.n, (uint32_t)c->vocab_size, &worst);
	free(ref);
	cr_assert(upto == p.n || upto >= ambiguous_from(&gd),
		  "%s: logits part from the port's at position %u, before its first ambiguous "
		  "rounding (%u)", variant, upto, ambiguous_from(&gd));
	int arrays = 0;
	/* floor: the entries of positions before the port's first ambiguous
	 * rounding, which every build must match (where the forwards part
	 * after it depends on the machine's summation order: 84 of the base
	 * variant's 24-token prompts here on one CPU, past 104 on another) */
	uint32_t compared = 0, floor = 0, amb = ambiguous_from(&gd);
	uint32_t W = (uint32_t)c->sliding_window;
	for (int l = 0; l < c->num_hidden_layers; l++) {
		const struct dp_v4_layer_state *ls = &seq->layers[l];
		char key[64];
		uint32_t r, cols, pr, pc;
		snprintf(key, sizeof(key), "l%d.window", l);
		const float *win = golden_get(&gd, "kv", key, "f32", &r, &cols);
		snprintf(key, sizeof(key), "l%d.window.pos", l);
		const int32_t *pos = golden_get(&gd, "kv", key, "i32", &pr, &pc);
		cr_assert(win && pos, "layer %d: no window in the golden data", l);
		int32_t *ent = malloc(pc * sizeof(int32_t));
		cr_assert_not_null(ent);
		uint32_t nw = 0; /* entries of positions before the divergence (pos ascending) */
		for (uint32_t i = 0; i < pc; i++) {
			if ((uint32_t)pos[i] < upto)
				ent[nw++] = (int32_t)((uint32_t)pos[i] % W);
			floor += (uint32_t)pos[i] < amb;
		}
		uint32_t nope = cols - (uint32_t)c->rope_dim;
		size_t bad = stream_diff(g, &ls->s[DP_V4_S_WINDOW], win, ent, nw, cols, nope);
		cr_expect_eq(bad, 0, "%s layer %d: %zu of %u window entries differ", variant, l, bad, nw);
		compared += nw;
		free(ent);
		arrays++;
		/* compressed entry w closes at position (w + 1) * rate - 1 */
		uint32_t rate = (uint32_t)dp_v4_compress_rate(c, l);
		uint32_t ne = rate ? upto / rate : 0, ne_amb = rate ? amb / rate : 0;
		snprintf(key, sizeof(key), "l%d.comp", l);
		const float *comp = golden_get(&gd, "kv", key, "f32", &r, &cols);
		if (comp) {
			cr_assert_eq(ls->s[DP_V4_S_COMP].n, r, "layer %d: compressed entries", l);
			uint32_t k = ne < r ? ne : r;
			floor += ne_amb < r ? ne_amb : r;
			bad = stream_diff(g, &ls->s[DP_V4_S_COMP], comp, NULL, k, cols, nope);
			cr_expect_eq(bad, 0, "%s layer %d: %zu of %u compressed entries differ", variant,
				     l, bad, k);
			compared += k;
			arrays++;
		}
		snprintf(key, sizeof(key), "l%d.index", l);
		const float *idx = golden_get(&gd, "kv", key, "f32", &r, &cols);
		if (idx) {
			cr_assert_eq(ls->s[DP_V4_S_IDX].n, r, "layer %d: index keys", l);
			uint32_t k = ne < r ? ne : r;
			floor += ne_amb < r ? ne_amb : r;
			bad = stream_diff(g, &ls->s[DP_V4_S_IDX], idx, NULL, k, cols, cols);
			cr_expect_eq(bad, 0, "%s layer %d: %zu of %u index keys differ", variant, l, bad,
				     k);
			compared += k;
			arrays++;
		}
	}
	cr_expect_geq(arrays, 5, "window, compressed and index streams all compared");
	cr_expect_geq(floor, 10, "%s: the port's unambiguous prefix holds only %u state entries",
		      variant, floor);
	cr_expect_geq(compared, floor,
		      "%s: only %u state entries before the divergence at %u (%u before position %u)",
		      variant, compared, upto, floor, amb);
	cr_log_info("%s %s: %u state entries bit for bit (the forwards agree up to position %u of %u)",
		    variant, chunked ? "chunked" : "one call", compared, upto, p.n);
	/* the golden values are what their codes and scales say */
	uint32_t r, cols, sr, sc;
	const float *comp = golden_get(&gd, "kv", "l1.comp", "f32", &r, &cols);
	const uint8_t *codes = golden_get(&gd, "kv", "l1.comp.codes", "u8", &sr, &sc);
	const uint8_t *scales = golden_get(&gd, "kv", "l1.comp.scales", "u8", &sr, &sc);
	cr_assert(comp && codes && scales);
	uint32_t nope = cols - (uint32_t)c->rope_dim;
	for (uint32_t i = 0; i < r; i++)
		for (uint32_t k = 0; k < nope; k++) {
			float v = dp_e4m3_to_f32(codes[(size_t)i * nope + k]) *
				  ldexpf(1.0f, scales[(size_t)i * sc + k / DP_GPU_KV_BLOCK] - 127);
			cr_assert(memcmp(&v, &comp[(size_t)i * cols + k], 4) == 0,
				  "entry %u dim %u: the value is not its e4m3 code times its scale", i, k);
		}
	free(logits);
	dp_v4_seq_free(seq);
	golden_close(&gd);
	parity_close(&p);
	dp_v4_model_free(m);
	dp_gpu_free(g);
}

Test(reference, fp4_checkpoint_kv_and_index_keys_are_the_ports_bit_for_bit_in_one_call)
{
	kv_matches("instruct", false);
}

Test(reference, fp4_checkpoint_kv_and_index_keys_are_the_ports_bit_for_bit_chunked)
{
	kv_matches("instruct", true);
}

Test(reference, base_checkpoint_kv_and_index_keys_are_the_ports_bit_for_bit)
{
	kv_matches("base", false);
}

/* ---- 4. logits ----------------------------------------------------------------------------- */

/* Logits within 1e-4 of each position's max |logit|, at every position, or up to a position
 * at or after the port's first ambiguous rounding (a tie that fp32 and float64 may break
 * apart, after which the two forwards legitimately part: the state differs from then on). */
static double logits_diff(struct dp_v4_model *m, struct parity *p, const uint32_t *chunks,
			  uint32_t n_chunks, const float *ref, uint32_t amb, const char *what)
{
	float *out = malloc((size_t)p->n * p->V * sizeof(float));
	double worst;
	cr_assert_not_null(out);
	cr_assert_eq(dp_v4_logits(m, p->tokens, p->n, chunks, n_chunks, out), 0, "%s", what);
	uint32_t upto = first_divergence(out, ref, p->n, p->V, &worst);
	free(out);
	cr_expect(upto == p->n || upto >= amb,
		  "%s: position %u differs by more than 1e-4 of max |logit|, before the port's first "
		  "ambiguous rounding at %u", what, upto, amb);
	cr_expect_geq(upto, p->n / 2, "%s: the forwards agree on fewer than half the positions (%u)",
		      what, upto);
	cr_log_info("%s: positions 0..%u within 1e-4 (worst %.2e), of %u; first ambiguous rounding "
		    "at %u", what, upto, worst, p->n, amb);
	return worst;
}

static void logits_match(const char *variant)
{
	char path[700];
	struct parity p = { 0 };
	struct dp_gpu *g;
	struct dp_v4_model *m = load(variant, DP_V4_NUMERICS_AUTO, &g);

	setenv("DP_TEST_PARITY", published(), 1);
	parity_open(&p, variant, (uint32_t)dp_v4_model_config(m)->vocab_size);
	size_t n = (size_t)p.n * p.V;
	snprintf(path, sizeof(path), "%s/ref_logits_full.bin", p.dir);
	float *full = parity_read_floats(path, n);
	snprintf(path, sizeof(path), "%s/ref_logits_chunked.bin", p.dir);
	float *chunked = parity_read_floats(path, n);
	struct golden gd;
	golden_open(&gd, variant);
	uint32_t amb = ambiguous_from(&gd);
	golden_close(&gd);
	double e1 = logits_diff(m, &p, NULL, 0, full, amb, "one call");
	double e2 = logits_diff(m, &p, p.chunks, p.n_chunks, chunked, amb, "chunked");
	cr_log_info("%s reference numerics: worst relative error one call %.2e, chunked %.2e", variant,
		    e1, e2);
	/* and the numerics is not the transformers one: those logits differ */
	double dt = 0, mx = 0;
	float *out = malloc(n * sizeof(float));
	cr_assert_not_null(out);
	cr_assert_eq(dp_v4_logits(m, p.tokens, p.n, NULL, 0, out), 0);
	for (size_t i = 0; i < n; i++) {
		dt = fmax(dt, fabs((double)out[i] - p.ref_full[i]));
		mx = fmax(mx, fabs(p.ref_full[i]));
	}
	cr_expect_gt(dt, 1e-3 * mx, "%s: reference logits should differ from transformers'", variant);
	free(out);
	free(full);
	free(chunked);
	parity_close(&p);
	dp_v4_model_free(m);
	dp_gpu_free(g);
}

Test(reference, fp4_checkpoint_logits_match_the_port_in_one_call_and_chunked)
{
	logits_match("instruct");
}

Test(reference, base_checkpoint_logits_match_the_port_in_one_call_and_chunked)
{
	logits_match("base");
}

Test(reference, paged_experts_give_the_resident_reference_logits)
{
	char dir[600], err[512] = "";
	struct parity p = { 0 };
	struct dp_gpu *g;
	struct dp_v4_model *m = load("instruct", DP_V4_NUMERICS_REFERENCE, &g), *pm;
	const struct dp_v4_config *c = dp_v4_model_config(m);
	struct dp_v4_load_opts o = { .numerics = DP_V4_NUMERICS_REFERENCE,
				     .experts = DP_V4_EXPERTS_DRAM,
				     .expert_slots = (uint32_t)c->num_experts_per_tok };

	setenv("DP_TEST_PARITY", published(), 1);
	parity_open(&p, "instruct", (uint32_t)c->vocab_size);
	snprintf(dir, sizeof(dir), "%s/instruct", published());
	cr_assert_eq(dp_v4_model_load_opts(g, dir, &o, &pm, err, sizeof(err)), 0, "%s", err);
	size_t n = (size_t)p.n * p.V;
	float *a = malloc(n * sizeof(float)), *b = malloc(n * sizeof(float));
	cr_assert(a && b);
	cr_assert_eq(dp_v4_logits(m, p.tokens, p.n, p.chunks, p.n_chunks, a), 0);
	cr_assert_eq(dp_v4_logits(pm, p.tokens, p.n, p.chunks, p.n_chunks, b), 0);
	cr_expect(memcmp(a, b, n * sizeof(float)) == 0, "paged experts change the logits");
	free(a);
	free(b);
	parity_close(&p);
	dp_v4_model_free(pm);
	dp_v4_model_free(m);
	dp_gpu_free(g);
}

Test(reference, transformers_numerics_is_chosen_explicitly_and_reference_refuses_dequantize)
{
	char dir[600], err[512] = "";
	struct dp_gpu *g;
	struct dp_v4_model *m = load("instruct", DP_V4_NUMERICS_TRANSFORMERS, &g);
	struct dp_v4_load_opts o = { .numerics = DP_V4_NUMERICS_REFERENCE, .dequantize = true };

	cr_expect_eq(dp_v4_model_numerics(m), DP_V4_NUMERICS_TRANSFORMERS);
	cr_expect_not(m->layers[0].q_a.act_quant, "transformers: no act quantization");
	dp_v4_model_free(m);
	snprintf(dir, sizeof(dir), "%s/instruct", published());
	m = NULL;
	cr_expect_eq(dp_v4_model_load_opts(g, dir, &o, &m, err, sizeof(err)), -EINVAL);
	cr_expect_null(m);
	cr_expect(strstr(err, "numerics reference") && strstr(err, "dequantiz"), "message: %s", err);
	o.numerics = DP_V4_NUMERICS_AUTO; /* dequantize: auto falls back to transformers */
	cr_assert_eq(dp_v4_model_load_opts(g, dir, &o, &m, err, sizeof(err)), 0, "%s", err);
	cr_expect_eq(dp_v4_model_numerics(m), DP_V4_NUMERICS_TRANSFORMERS);
	dp_v4_model_free(m);
	dp_gpu_free(g);
}

Test(reference, numerics_names_parse_and_print)
{
	enum dp_v4_numerics n;
	cr_expect_eq(dp_v4_numerics_parse("reference", &n), 0);
	cr_expect_eq(n, DP_V4_NUMERICS_REFERENCE);
	cr_expect_eq(dp_v4_numerics_parse("transformers", &n), 0);
	cr_expect_eq(n, DP_V4_NUMERICS_TRANSFORMERS);
	cr_expect_eq(dp_v4_numerics_parse("auto", &n), 0);
	cr_expect_eq(dp_v4_numerics_parse("fp8", &n), -EINVAL);
	cr_expect_str_eq(dp_v4_numerics_name(DP_V4_NUMERICS_REFERENCE), "reference");
	cr_expect_null(dp_v4_numerics_name(DP_V4_NUMERICS_MAX));
}

/* ---- 5. every kernel path gives the portable path's bits ----------------------------------- */

static uint64_t path_seed = 7;

static uint32_t path_rand(void)
{
	uint64_t z = (path_seed += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return (uint32_t)((z ^ (z >> 31)) >> 32);
}

/* An activation whose 128-blocks span the cases that matter: zeros (amax
 * floor), tiny values (e4m3 subnormals), ordinary ones, a wide range in one
 * block, -0. */
static float path_activation(size_t i)
{
	uint32_t blk = (uint32_t)(i / DP_GPU_ACT_BLOCK) % 5, r = path_rand();
	float u = (float)((int)(r % 2001) - 1000) / 1000;
	switch (blk) {
	case 0:
		return r % 7 ? 0.0f : -0.0f;
	case 1:
		return u * 0x1p-20f;
	case 2:
		return u;
	case 3:
		return u * ldexpf(1.0f, (int)(r >> 24) % 24 - 12);
	default:
		return u * 300.0f;
	}
}

/* The act-quantized product on `isa` and on the portable path, same inputs;
 * y starts as `y0` (accumulate) and the strides are wider than the shapes. */
static void expect_paths_agree(enum dp_gpu_isa isa, enum dp_dtype dt, enum dp_dtype sdt,
			       uint32_t rows, uint32_t cols, uint32_t M, bool acc)
{
	struct dp_gpu *gp, *gv;
	char err[256];
	struct dp_gpu_opts op = { .threads = 3, .isa = DP_GPU_ISA_PORTABLE };
	struct dp_gpu_opts ov = { .threads = 3, .isa = isa };
	cr_assert_eq(dp_gpu_new(DP_GPU_CPU, &op, &gp, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(dp_gpu_new(DP_GPU_CPU, &ov, &gv, err, sizeof(err)), 0, "%s", err);

	size_t nb = (size_t)rows * dp_dtype_bytes(dt, cols), ns = dp_gpu_weight_scales(dt, rows, cols);
	uint8_t *data = malloc(nb);
	float *sf = malloc(ns * sizeof(float));
	uint8_t *s8 = malloc(ns);
	cr_assert(data && sf && s8);
	for (size_t i = 0; i < nb; i++) {
		data[i] = (uint8_t)path_rand();
		if (dt == DP_DTYPE_E4M3 && (data[i] & 0x7f) == 0x7f)
			data[i] ^= 1;
	}
	for (size_t i = 0; i < ns; i++) {
		s8[i] = (uint8_t)(110 + path_rand() % 20);
		sf[i] = ldexpf(1.0f, (int)(path_rand() % 20) - 10); /* Base: f32 powers of two */
	}
	const void *scale = sdt == DP_DTYPE_F32 ? (const void *)sf : (const void *)s8;
	struct dp_gpu_weight wp, wv;
	cr_assert_eq(dp_gpu_weight_upload_as(gp, data, scale, dt, sdt, 1, rows, cols, &wp), 0);
	cr_assert_eq(dp_gpu_weight_upload_as(gv, data, scale, dt, sdt, 1, rows, cols, &wv), 0);
	wp.act_quant = wv.act_quant = true;

	uint32_t ldx = cols + 5, ldy = rows + 3;
	float *x = malloc((size_t)M * ldx * sizeof(float));
	float *yp = malloc((size_t)M * ldy * sizeof(float)), *yv = malloc((size_t)M * ldy * sizeof(float));
	cr_assert(x && yp && yv);
	for (size_t i = 0; i < (size_t)M * ldx; i++)
		x[i] = path_activation(i % ldx);
	for (size_t i = 0; i < (size_t)M * ldy; i++)
		yp[i] = yv[i] = (float)((int)(path_rand() % 2001) - 1000) / 100;

	cr_assert_eq(dp_gpu_ops(gp)->matmul(gp, x, ldx, &wp, 0, yp, ldy, M, acc), 0);
	cr_assert_eq(dp_gpu_ops(gv)->matmul(gv, x, ldx, &wv, 0, yv, ldy, M, acc), 0);
	size_t bad = 0, first = 0;
	for (size_t i = 0; i < (size_t)M * ldy; i++)
		if (memcmp(&yp[i], &yv[i], sizeof(float)) && !bad++)
			first = i;
	cr_expect_eq(bad, 0,
		     "%s %s %ux%u M=%u acc=%d: %zu outputs differ from the portable path's, first [%zu] %a vs %a",
		     dp_gpu_isa_name(isa), dt == DP_DTYPE_E4M3 ? "fp8" : "fp4", rows, cols, M, acc, bad,
		     first, (double)yv[first], (double)yp[first]);
	dp_gpu_weight_free(gp, &wp);
	dp_gpu_weight_free(gv, &wv);
	dp_gpu_free(gp);
	dp_gpu_free(gv);
	free(data);
	free(sf);
	free(s8);
	free(x);
	free(yp);
	free(yv);
}

static void expect_isa_agrees(enum dp_gpu_isa isa)
{
	struct dp_gpu *g;
	struct dp_gpu_opts o = { .isa = isa };
	if (dp_gpu_new(DP_GPU_CPU, &o, &g, NULL, 0) == -ENOTSUP)
		cr_skip_test("this CPU has no %s", dp_gpu_isa_name(isa));
	dp_gpu_free(g);
	static const uint32_t Ms[] = { 1, 2, 3, 8, 9, 64 };
	for (size_t m = 0; m < sizeof(Ms) / sizeof(Ms[0]); m++) {
		bool acc = m % 2;
		/* rows not a multiple of a panel, cols not a multiple of a chunk */
		expect_paths_agree(isa, DP_DTYPE_E4M3, DP_DTYPE_E8M0, 141, 384, Ms[m], acc);
		expect_paths_agree(isa, DP_DTYPE_E2M1, DP_DTYPE_E8M0, 67, 288, Ms[m], acc);
		expect_paths_agree(isa, DP_DTYPE_E4M3, DP_DTYPE_F32, 130, 512, Ms[m], !acc);
		expect_paths_agree(isa, DP_DTYPE_E2M1, DP_DTYPE_F32, 16, 96, Ms[m], !acc);
	}
	/* short shapes that take the fallbacks: fewer rows than a panel, cols off the block */
	expect_paths_agree(isa, DP_DTYPE_E4M3, DP_DTYPE_E8M0, 5, 200, 3, false);
	expect_paths_agree(isa, DP_DTYPE_E2M1, DP_DTYPE_E8M0, 3, 50, 2, true);
}

Test(reference_paths, avx512_act_products_are_the_portable_products_bit_for_bit, .timeout = 120)
{
	expect_isa_agrees(DP_GPU_ISA_AVX512);
}

Test(reference_paths, avx2_act_products_are_the_portable_products_bit_for_bit, .timeout = 120)
{
	expect_isa_agrees(DP_GPU_ISA_AVX2);
}
