/* SPDX-License-Identifier: MIT */
/*
 * tests/fuzz/gen_kv_corpus.c — writes the seed corpus of fuzz_kv into a
 * directory (tests/fuzz/corpus/kv/ holds its output):
 *
 *	gen_kv_corpus tests/fuzz/corpus/kv [MODEL_DIR]
 *
 * The journals are kvcache's own: sessions with turns on the parity model,
 * a persisted snapshot, a drop, a compaction, a damaged journal and the
 * one its recovery rewrote (a lost session). The framed seeds are records
 * built with kvcache's payload writers (dp_jbuf_*), in fuzz_kv's framed
 * form (see there). Seeds with a slot file carry its real 4 KiB header.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "gpu/gpu.h"
#include "kvcache/journal.h"
#include "kvcache/kvcache.h"
#include "model/v4.h"

#define SLOT_BYTES (4096u + DP_V4_PAGE_BYTES)

static const char *out_dir;
static char state[256];
static struct dp_v4_model *model;

static void die(const char *what, const char *err)
{
	fprintf(stderr, "gen_kv_corpus: %s: %s\n", what, err);
	exit(1);
}

static void need(int ret, const char *what)
{
	if (ret < 0)
		die(what, strerror(-ret));
}

static size_t read_file(const char *name, uint8_t **ret)
{
	char path[512];
	struct stat st;
	FILE *f;
	uint8_t *p;

	snprintf(path, sizeof(path), "%s/%s", state, name);
	f = fopen(path, "rb");
	if (!f || fstat(fileno(f), &st) < 0)
		die(path, strerror(errno));
	p = malloc((size_t)st.st_size + 1);
	if (!p || fread(p, 1, (size_t)st.st_size, f) != (size_t)st.st_size)
		die(path, "cannot read");
	fclose(f);
	*ret = p;
	return (size_t)st.st_size;
}

static void write_file(const char *dir, const char *name, const void *p, size_t n)
{
	char path[512];
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	f = fopen(path, "wb");
	if (!f || fwrite(p, 1, n, f) != n || fclose(f) != 0)
		die(path, strerror(errno));
}

/* A seed: flags, [the slot file's header and its slot count], journal. */
static void seed(const char *name, uint8_t flags, bool slots, const uint8_t *j, size_t jn)
{
	uint8_t *b = malloc(4 + 4096 + jn + 1), *hdr;
	size_t n = 0;

	b[n++] = (uint8_t)(flags | (slots ? 2 : 0));
	if (slots) {
		size_t sn = read_file("slots", &hdr), k = sn > 4096 ? (sn - 4096) / SLOT_BYTES : 0;

		b[n++] = (uint8_t)(k > 255 ? 255 : k);
		b[n++] = 4096 & 0xff;
		b[n++] = 4096 >> 8;
		memcpy(b + n, hdr, 4096);
		n += 4096;
		free(hdr);
	}
	memcpy(b + n, j, jn);
	write_file(out_dir, name, b, n + jn);
	free(b);
}

static void seed_journal(const char *name, bool slots)
{
	uint8_t *j;
	size_t n = read_file(DP_JOURNAL_FILE, &j);

	seed(name, 0, slots, j, n);
	free(j);
}

/* Where the journal record at off ends (its header's length). */
static size_t rec_end(const uint8_t *j, size_t off)
{
	const uint8_t *l = j + off + 8;

	return off + 12 + (size_t)(l[0] | l[1] << 8 | l[2] << 16 | (uint32_t)l[3] << 24) + 8;
}

static struct dp_kv *kv_open(void)
{
	struct dp_kv_opts o = {.state_dir = state, .numa_node = -1};
	struct dp_kv *kv;
	char err[1024] = "";

	if (dp_kv_open(&o, model, &kv, err, sizeof(err)) < 0)
		die("dp_kv_open", err);
	return kv;
}

/* One committed turn of n tokens. */
static void turn(struct dp_kv *kv, struct dp_kv_session *s, uint32_t n, uint32_t salt)
{
	uint32_t vocab = (uint32_t)dp_v4_model_config(model)->vocab_size;
	uint64_t have, len = dp_kv_session_len(s);
	float *lg = malloc((size_t)vocab * sizeof(float));
	int32_t t[16];
	struct dp_v4_seq *seq;

	need(dp_kv_session_acquire(kv, s, &seq), "acquire");
	have = dp_v4_seq_pos(seq);
	if (have < len) {
		struct dp_v4_batch_item it = {seq, dp_kv_session_history(s) + have,
		                              (uint32_t)(len - have), false};
		need(dp_v4_forward(model, &it, 1, lg), "forward");
	}
	for (uint32_t i = 0; i < n; i++)
		t[i] = (int32_t)(((uint32_t)len + i) * 2654435761u % 251 + salt) % 256;
	struct dp_v4_batch_item it = {seq, t, n, false};
	need(dp_v4_forward(model, &it, 1, lg), "forward");
	need(dp_kv_session_append(kv, s, t, n), "append");
	dp_kv_session_release(kv, s);
	need(dp_kv_commit(kv), "commit");
	free(lg);
}

/* ---- framed seeds ------------------------------------------------------------- */

struct framed {
	uint8_t b[8192];
	size_t n;
};

/* One record, [ctl][u16 length][payload]; ctl: type | 0x08 keyed | ... */
static void rec(struct framed *f, uint8_t ctl, struct dp_jbuf *p)
{
	if (p->error || f->n + 3 + p->len > sizeof(f->b))
		die("framed seed", "too big");
	f->b[f->n++] = ctl;
	f->b[f->n++] = (uint8_t)p->len;
	f->b[f->n++] = (uint8_t)(p->len >> 8);
	memcpy(f->b + f->n, p->data, p->len);
	f->n += p->len;
	dp_jbuf_fini(p);
}

static void history(struct framed *f, uint8_t keyed, const char *id, uint64_t new_len, uint32_t n,
                    uint32_t owner, bool lost, uint8_t type)
{
	struct dp_jbuf b = {0};

	dp_jbuf_put_str(&b, id);
	dp_jbuf_put_u64(&b, new_len);
	dp_jbuf_put_u32(&b, n);
	for (uint32_t i = 0; i < n; i++)
		dp_jbuf_put_u32(&b, (i * 37 + 11) % 256);
	if (owner != DP_KV_OWNER_NONE) { /* JEXT_OWNER */
		dp_jbuf_put_u16(&b, 1);
		dp_jbuf_put_u16(&b, 4);
		dp_jbuf_put_u32(&b, owner);
	}
	if (lost) { /* JEXT_LOST */
		dp_jbuf_put_u16(&b, 2);
		dp_jbuf_put_u16(&b, 0);
	}
	rec(f, type | keyed, &b);
}

static void snapshot(struct framed *f, uint8_t keyed, const char *id, uint64_t pos, uint32_t n)
{
	struct dp_jbuf b = {0};

	dp_jbuf_put_str(&b, id);
	dp_jbuf_put_u64(&b, pos);
	dp_jbuf_put_u32(&b, n);
	for (uint32_t i = 0; i < n; i++) {
		dp_jbuf_put_u16(&b, (uint16_t)i); /* layer */
		dp_jbuf_put_u8(&b, 0);            /* kind */
		dp_jbuf_put_u32(&b, 0);           /* index */
		dp_jbuf_put_u64(&b, i);           /* slot */
		dp_jbuf_put_u64(&b, 0x1234 + i);  /* sum */
	}
	rec(f, DP_JREC_SNAPSHOT | keyed, &b);
}

static void drop(struct framed *f, uint8_t keyed, const char *id)
{
	struct dp_jbuf b = {0};

	dp_jbuf_put_str(&b, id);
	rec(f, DP_JREC_DROP | keyed, &b);
}

/* Every record kind and extension, keyed (0x08) or in the old format (0). */
static void framed_all(struct framed *f, uint8_t keyed)
{
	struct dp_jbuf b = {0};

	history(f, keyed, "s1", 3, 3, 1000, false, DP_JREC_HISTORY);
	history(f, keyed, "s1", 5, 2, DP_KV_OWNER_NONE, false, DP_JREC_HISTORY);
	snapshot(f, keyed, "s1", 5, 2);
	history(f, keyed, "s2", 2, 2, DP_KV_OWNER_NONE, false, DP_JREC_HISTORY);
	drop(f, keyed, "s2");
	history(f, keyed, "s2", 1, 1, 7, false, DP_JREC_HISTORY); /* made again */
	history(f, keyed, "s3", 0, 0, 1000, true, DP_JREC_RESET); /* lost */
	history(f, keyed, "s4", 4, 4, 1000, false, DP_JREC_RESET);
	/* an extension field of a later format, skipped */
	dp_jbuf_put_str(&b, "s5");
	dp_jbuf_put_u64(&b, 1);
	dp_jbuf_put_u32(&b, 1);
	dp_jbuf_put_u32(&b, 42);
	dp_jbuf_put_u16(&b, 99);
	dp_jbuf_put_u16(&b, 3);
	dp_jbuf_put_u8(&b, 1);
	dp_jbuf_put_u8(&b, 2);
	dp_jbuf_put_u8(&b, 3);
	rec(f, DP_JREC_HISTORY | keyed, &b);
	history(f, keyed, "s6", 9, 2, DP_KV_OWNER_NONE, false, DP_JREC_HISTORY); /* a gap */
}

int main(int argc, char **argv)
{
	struct dp_kv_session *a, *b, *c;
	struct framed f = {0};
	struct dp_gpu *gpu;
	struct dp_kv *kv;
	char err[1024] = "";
	uint8_t *j;
	size_t n, off;

	if (argc < 2 || argc > 3) {
		fprintf(stderr, "usage: gen_kv_corpus OUT_DIR [MODEL_DIR]\n");
		return 2;
	}
	out_dir = argv[1];
	if (dp_gpu_new(DP_GPU_CPU, NULL, &gpu, err, sizeof(err)) < 0 ||
	    dp_v4_model_load(gpu, argc > 2 ? argv[2] : DP_FUZZ_MODEL, &model, err, sizeof(err)) < 0)
		die("model", err);
	snprintf(state, sizeof(state), "/var/tmp/dp-gen-kv-XXXXXX");
	if (!mkdtemp(state))
		die(state, strerror(errno));

	kv = kv_open();
	need(dp_kv_session_create_owned(kv, "alpha", 1000, &a), "create");
	need(dp_kv_session_create(kv, "beta", &b), "create");
	turn(kv, a, 5, 1);
	turn(kv, b, 3, 2);
	turn(kv, a, 2, 3);
	seed_journal("history", false);
	need(dp_kv_session_persist(kv, a), "persist");
	seed_journal("snapshot", true);
	need(dp_kv_session_create(kv, "gamma", &c), "create");
	turn(kv, c, 1, 4);
	need(dp_kv_session_drop(kv, c), "drop");
	turn(kv, b, 2, 5);
	seed_journal("drop", true);
	need(dp_kv_compact(kv), "compact");
	seed_journal("compacted", true);
	dp_kv_close(kv);

	/* the compacted journal: alpha's reset, its snapshot, beta's reset;
	 * a token of beta's damaged, and (another seed) a torn tail */
	n = read_file(DP_JOURNAL_FILE, &j);
	off = rec_end(j, rec_end(j, 0));
	if (off + 12 + 9 >= n)
		die("damaged", "the compacted journal is not as expected");
	j[off + 12 + 9] ^= 0x40;
	seed("damaged", 0, true, j, n);
	seed("torn", 0, true, j, n - 5);
	write_file(state, DP_JOURNAL_FILE, j, n);
	free(j);
	kv = kv_open(); /* beta is lost; the journal is rewritten */
	if (!dp_kv_session_lost(kv, "beta"))
		die("damaged", "beta is not lost");
	dp_kv_close(kv);
	seed_journal("lost", true);

	framed_all(&f, 0x08);
	seed("framed", 1, false, f.b, f.n);
	f.n = 0;
	framed_all(&f, 0);
	seed("framed-old", 1, false, f.b, f.n);
	f.n = 0;
	history(&f, 0x08, "p", 4, 4, DP_KV_OWNER_NONE, false, DP_JREC_HISTORY);
	snapshot(&f, 0x08, "p", 4, 3);
	seed("framed-slots", 1, true, f.b, f.n);
	f.n = 0;
	history(&f, 0x08 | 0x10, "d", 2, 2, DP_KV_OWNER_NONE, false, DP_JREC_HISTORY);
	f.b[f.n++] = 0x77; /* the bit to flip */
	history(&f, 0x08, "d", 3, 1, DP_KV_OWNER_NONE, false, DP_JREC_HISTORY);
	history(&f, 0x08 | 0x20, "e", 1, 1, DP_KV_OWNER_NONE, false, DP_JREC_HISTORY); /* torn */
	seed("framed-damage", 1, false, f.b, f.n);

	dp_v4_model_free(model);
	dp_gpu_free(gpu);
	snprintf(err, sizeof(err), "rm -rf '%s'", state);
	return system(err) == 0 ? 0 : 1;
}
