/* SPDX-License-Identifier: MIT */
/*
 * tests/fuzz/fuzz_kv.c — libFuzzer target for what dp_kv_open reads from a
 * state directory: the journal (kvcache/journal.c: records, checksums, key
 * checks, resynchronisation past damage, repair, the torn tail) and its
 * payloads (kvcache.c: history, snapshot, drop and reset records, their
 * extension fields, lost sessions), and the NVMe slot file's header
 * (tiers.c). The cache is opened for real, on the tiny parity model
 * (tests/model/parity/alt, loaded once; $DP_FUZZ_MODEL overrides it), in
 * a private 0700 directory of ours under /dev/shm (or $TMPDIR).
 *
 * Input: a flags byte, then
 *   bit 1: the slot file: u8 k, u16 length L, L bytes (its header is the
 *          first 4096), then extended to hold at least k slots (sparse);
 *          else there is no slot file;
 *   the journal, the rest of the input:
 *   bit 0 clear: as it is (seeds: journals kvcache wrote, so mutations
 *          reach the damage paths);
 *   bit 0 set: records, each [u8 ctl][u16 length][payload]; the harness
 *          frames the payload as a record with a checksum that holds, so
 *          mutations reach the payload parsers:
 *            ctl bits 0-2: the record's type (0 and 5..7 are not types);
 *            bit 3: with the key check and the key's second copy, as
 *                   dp_journal_append writes (if the payload starts with a
 *                   key); else an old-format record (check 0, no copy);
 *            bit 4: one byte follows the payload: flip a bit of the record
 *                   there (damage);
 *            bit 5: write only the first half of the record and stop (a
 *                   torn tail).
 *
 * Checked, aborting on any difference:
 *   - the open succeeds, or fails with -EBADMSG (a record that checks but
 *     does not parse) or -EPROTO (a slot file of another version) and a
 *     message;
 *   - opened: every session has a valid id, is on NVME (a snapshot) or
 *     NONE, a lost one has no history and no state; the histories hold no
 *     more tokens than the journal has room for (every token came from it);
 *     the slot file is not grown (replay claims slots, it writes none);
 *   - the sessions survive: closing and opening again finds the same ones
 *     (id, history, owner, lost, tier) and no damage (the first open cut
 *     the torn tail and rewrote a damaged journal); so does a compaction
 *     (dp_kv_compact) and another open, which finds no session newly lost
 *     either.
 * ASan/UBSan (and LeakSanitizer) watch everything.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>
#include <sanitizer/common_interface_defs.h>
#include <xxhash.h>

#include "gpu/gpu.h"
#include "kvcache/journal.h"
#include "kvcache/kvcache.h"
#include "model/v4.h"

static struct dp_gpu *gpu;
static struct dp_v4_model *model;
static char dir[256];
static int state_fd = -1;

/* Empty and remove the state directory, ignoring errors: at exit, and
 * before a crash report (fail(), the sanitizers' death callback), so that
 * no run leaves files in /dev/shm. */
static void dir_drop(void)
{
	int fd = state_fd;
	DIR *d;
	struct dirent *e;

	if (fd < 0)
		return;
	state_fd = -1;
	d = fdopendir(fd);
	if (d) {
		rewinddir(d);
		while ((e = readdir(d)))
			unlinkat(fd, e->d_name, 0);
		closedir(d);
	} else {
		close(fd);
	}
	rmdir(dir);
}

static _Noreturn void fail(void)
{
	dir_drop();
	abort();
}

#define CHECK(cond)                                                                                \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);   \
			fail();                                                                    \
		}                                                                                  \
	} while (0)

/* kvcache.h: a slot is a 4 KiB header and a page; the file starts with a
 * 4 KiB header of its own. */
#define SLOT_BYTES     (4096u + DP_V4_PAGE_BYTES)
#define FILE_HDR_BYTES 4096u
/* A buggy open growing the slot file stops here (EFBIG), not at a full
 * /dev/shm; the check on the file's size reports it. */
#define FSIZE_LIMIT (256ull << 20)

/* ---- journal records, as journal.c frames them (journal.h) --------------- */

struct buf {
	uint8_t *p;
	size_t len, cap;
};

static void buf_put(struct buf *b, const void *p, size_t n)
{
	if (n == 0)
		return;
	if (b->len + n > b->cap) {
		b->cap = (b->len + n) * 2;
		b->p = realloc(b->p, b->cap);
		CHECK(b->p);
	}
	memcpy(b->p + b->len, p, n);
	b->len += n;
}

static void buf_put_le(struct buf *b, uint64_t v, int n)
{
	uint8_t p[8];

	for (int i = 0; i < n; i++)
		p[i] = (uint8_t)(v >> (8 * i));
	buf_put(b, p, (size_t)n);
}

/* journal.c's key_check; init_self_test() catches a difference. */
static uint16_t key_check(uint16_t type, const uint8_t *key, uint32_t len)
{
	uint64_t h = XXH3_64bits_withSeed(key, len, 0x4b4559000000ull | type);
	uint16_t c = (uint16_t)(h ^ (h >> 16) ^ (h >> 32) ^ (h >> 48));

	return c ? c : 1;
}

/* A record of type with payload p, and (keyed) the key check and copy. */
static void frame_record(struct buf *b, uint16_t type, const uint8_t *p, uint32_t n, bool keyed)
{
	uint32_t klen = n >= 2 ? (uint32_t)(p[0] | p[1] << 8) : 0;
	struct buf body = {0};

	keyed = keyed && klen >= 1 && klen <= DP_JOURNAL_KEY_MAX && 2 + klen <= n;
	buf_put(&body, p, n);
	if (keyed) {
		buf_put(&body, p + 2, klen);
		buf_put_le(&body, klen, 2);
		buf_put_le(&body, DP_JOURNAL_KEY_MAGIC, 4);
	}
	buf_put_le(b, DP_JOURNAL_MAGIC, 4);
	buf_put_le(b, type, 2);
	buf_put_le(b, keyed ? key_check(type, p + 2, klen) : 0, 2);
	buf_put_le(b, body.len, 4);
	buf_put(b, body.p, body.len);
	buf_put_le(b, XXH3_64bits_withSeed(body.p, body.len, (uint64_t)type << 32 | body.len), 8);
	free(body.p);
}

/* The framed form of the input (bit 0): records from [ctl][len][payload]. */
static void frame_input(struct buf *out, const uint8_t *d, size_t n)
{
	size_t i = 0;

	while (i + 3 <= n) {
		uint8_t ctl = d[i];
		size_t len = (size_t)(d[i + 1] | d[i + 2] << 8), start = out->len;

		i += 3;
		if (len > n - i)
			len = n - i;
		frame_record(out, ctl & 7, d + i, (uint32_t)len, ctl & 0x08);
		i += len;
		if ((ctl & 0x10) && i < n) {
			uint8_t x = d[i++];
			size_t rec = out->len - start;

			out->p[start + x % rec] ^= (uint8_t)(1u << (x >> 5));
		}
		if (ctl & 0x20) {
			out->len = start + (out->len - start) / 2;
			break;
		}
	}
}

/* ---- the state directory --------------------------------------------------- */

static void dir_clear(void)
{
	int fd = dup(state_fd);
	DIR *d;
	struct dirent *e;

	CHECK(fd >= 0);
	d = fdopendir(fd);
	CHECK(d);
	rewinddir(d);
	while ((e = readdir(d)))
		if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
			CHECK(unlinkat(state_fd, e->d_name, 0) == 0);
	closedir(d);
}

static void file_write(const char *name, const void *p, size_t n, uint64_t size)
{
	int fd = openat(state_fd, name, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);

	CHECK(fd >= 0);
	CHECK(n == 0 || write(fd, p, n) == (ssize_t)n);
	if (size > n)
		CHECK(ftruncate(fd, (off_t)size) == 0);
	close(fd);
}

static uint64_t file_size(const char *name)
{
	struct stat st;

	return fstatat(state_fd, name, &st, 0) == 0 ? (uint64_t)st.st_size : 0;
}

/* A record through dp_journal_append and through frame_record(): the same
 * bytes, or the harness no longer writes what journal.c reads. */
static void init_self_test(void)
{
	static const uint8_t p[] = {10,  0,   's', 'e', 'l', 'f', '-', 't',
	                            'e', 's', 't', '0', 1,   2,   3};
	struct dp_journal *j;
	struct buf want = {0};
	uint8_t got[256];
	char err[512] = "";
	ssize_t n;
	int fd;

	CHECK(dp_journal_open(state_fd, dir, NULL, &j, err, sizeof(err)) == 0);
	CHECK(dp_journal_append(j, DP_JREC_HISTORY, p, sizeof(p)) == 0);
	dp_journal_close(j);
	fd = openat(state_fd, DP_JOURNAL_FILE, O_RDONLY | O_CLOEXEC);
	CHECK(fd >= 0);
	n = read(fd, got, sizeof(got));
	close(fd);
	frame_record(&want, DP_JREC_HISTORY, p, sizeof(p), true);
	if (n != (ssize_t)want.len || memcmp(got, want.p, want.len) != 0) {
		fprintf(stderr, "fuzz_kv: frame_record() no longer writes what dp_journal_append "
		                "does (kvcache/journal.c changed): update it\n");
		fail();
	}
	free(want.p);
	dir_clear();
}

int LLVMFuzzerInitialize(int *argc, char ***argv);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	const char *path = getenv("DP_FUZZ_MODEL"), *tmp = getenv("TMPDIR");
	struct rlimit rl = {FSIZE_LIMIT, FSIZE_LIMIT};
	char err[512] = "";

	(void)argc, (void)argv;
	CHECK(dp_gpu_new(DP_GPU_CPU, NULL, &gpu, err, sizeof(err)) == 0);
	if (dp_v4_model_load(gpu, path ? path : DP_FUZZ_MODEL, &model, err, sizeof(err)) < 0) {
		fprintf(stderr, "fuzz_kv: %s\n", err);
		fail();
	}
	snprintf(dir, sizeof(dir), "/dev/shm/dp-fuzz-kv-XXXXXX");
	if (!mkdtemp(dir)) {
		snprintf(dir, sizeof(dir), "%s/dp-fuzz-kv-XXXXXX", tmp ? tmp : "/tmp");
		CHECK(mkdtemp(dir)); /* 0700, ours: kvcache trusts it */
	}
	state_fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	CHECK(state_fd >= 0);
	atexit(dir_drop);
	__sanitizer_set_death_callback(dir_drop);
	CHECK(setrlimit(RLIMIT_FSIZE, &rl) == 0);
	signal(SIGXFSZ, SIG_IGN);
	init_self_test();
	return 0;
}

/* ---- the cache --------------------------------------------------------------- */

struct session {
	char id[DP_KV_SESSION_ID_MAX + 1];
	uint64_t len;
	int32_t *hist;
	uint32_t owner;
	bool lost;
	enum dp_kv_tier tier;
};

struct state {
	struct session *s;
	size_t n;
};

static int kv_open(struct dp_kv **kv, char *err, size_t err_len)
{
	struct dp_kv_opts o = {.state_dir = dir, .numa_node = -1};

	err[0] = '\0';
	return dp_kv_open(&o, model, kv, err, err_len);
}

/* The sessions of kv, checked one by one. */
static void capture(struct dp_kv *kv, struct state *st, uint64_t token_room)
{
	struct dp_kv_stats stats;
	uint64_t tokens = 0, lost = 0;

	st->n = dp_kv_session_count(kv);
	st->s = calloc(st->n ? st->n : 1, sizeof(*st->s));
	CHECK(st->s);
	for (size_t i = 0; i < st->n; i++) {
		struct dp_kv_session *s, *found;
		struct session *c = &st->s[i];

		CHECK(dp_kv_session_at(kv, i, &s) == 0);
		snprintf(c->id, sizeof(c->id), "%s", dp_kv_session_id(s));
		CHECK(dp_kv_session_id_valid(c->id));
		CHECK(dp_kv_session_find(kv, c->id, &found) == 0 && found == s);
		c->len = dp_kv_session_len(s);
		c->owner = dp_kv_session_owner(s);
		c->lost = dp_kv_session_lost(kv, c->id);
		c->tier = dp_kv_session_tier(s);
		CHECK(c->tier == DP_KV_TIER_NVME || c->tier == DP_KV_TIER_NONE);
		CHECK(!c->lost || (c->len == 0 && c->tier == DP_KV_TIER_NONE));
		CHECK(!dp_kv_session_busy(s));
		tokens += c->len;
		lost += c->lost;
		/* every token came from the journal: 4 bytes each */
		if (tokens > token_room) {
			fprintf(stderr,
			        "session %s: %llu tokens from a journal with room for %llu\n",
			        c->id, (unsigned long long)c->len, (unsigned long long)token_room);
			fail();
		}
		c->hist = malloc(c->len ? c->len * sizeof(int32_t) : 1);
		CHECK(c->hist);
		if (c->len)
			memcpy(c->hist, dp_kv_session_history(s), c->len * sizeof(int32_t));
	}
	CHECK(dp_kv_session_at(kv, st->n, &(struct dp_kv_session *){NULL}) == -ENOENT);
	dp_kv_stats(kv, &stats);
	CHECK(stats.sessions[DP_KV_TIER_NVME] + stats.sessions[DP_KV_TIER_NONE] == st->n);
	CHECK(stats.lost_sessions == lost);
	CHECK(stats.journal_sessions_lost <= lost);
}

static void state_free(struct state *st)
{
	for (size_t i = 0; i < st->n; i++)
		free(st->s[i].hist);
	free(st->s);
}

/* Another open of the same directory: the same sessions, no damage. Not
 * yet compacted: compact it before closing. */
static void reopen_same(const struct state *want, const char *what, bool compacted)
{
	struct dp_kv_stats stats;
	struct dp_kv *kv;
	struct state got;
	char err[1024];
	int ret = kv_open(&kv, err, sizeof(err));

	if (ret != 0) {
		fprintf(stderr, "%s: the open fails (%d): %s\n", what, ret, err);
		fail();
	}
	dp_kv_stats(kv, &stats);
	/* a loss found by a gap alone (no damaged record) is found again
	 * until a compaction writes the session down as lost */
	if (stats.journal_damaged_records || stats.journal_repaired_records ||
	    (compacted && stats.journal_sessions_lost) || stats.slot_file_resets) {
		fprintf(stderr,
		        "%s: damage again: %llu damaged, %llu repaired, %llu lost, %llu "
		        "slot file resets\n",
		        what, (unsigned long long)stats.journal_damaged_records,
		        (unsigned long long)stats.journal_repaired_records,
		        (unsigned long long)stats.journal_sessions_lost,
		        (unsigned long long)stats.slot_file_resets);
		fail();
	}
	capture(kv, &got, UINT64_MAX);
	CHECK(got.n == want->n);
	for (size_t i = 0; i < want->n; i++) {
		const struct session *w = &want->s[i];
		struct dp_kv_session *s;

		if (dp_kv_session_find(kv, w->id, &s) != 0) {
			fprintf(stderr, "%s: session %s is gone\n", what, w->id);
			fail();
		}
		if (dp_kv_session_len(s) != w->len ||
		    (w->len && memcmp(dp_kv_session_history(s), w->hist, w->len * 4) != 0) ||
		    dp_kv_session_owner(s) != w->owner ||
		    dp_kv_session_lost(kv, w->id) != w->lost || dp_kv_session_tier(s) != w->tier) {
			fprintf(stderr,
			        "%s: session %s changed: len %llu -> %llu, owner %u -> %u, "
			        "lost %d -> %d, tier %s -> %s\n",
			        what, w->id, (unsigned long long)w->len,
			        (unsigned long long)dp_kv_session_len(s), w->owner,
			        dp_kv_session_owner(s), w->lost, dp_kv_session_lost(kv, w->id),
			        dp_kv_tier_name(w->tier), dp_kv_tier_name(dp_kv_session_tier(s)));
			fail();
		}
	}
	state_free(&got);
	if (!compacted)
		CHECK(dp_kv_compact(kv) == 0);
	dp_kv_close(kv);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct buf journal = {0};
	struct state first;
	struct dp_kv *kv;
	char err[1024];
	uint64_t slots_before = 0;
	size_t i = 1;
	int ret;

	if (size < 1)
		return 0;
	dir_clear();
	if (data[0] & 2) {
		size_t k, len;

		if (size < 4)
			return 0;
		k = data[1];
		len = (size_t)(data[2] | data[3] << 8);
		i = 4;
		if (len > size - i)
			len = size - i;
		file_write("slots", data + i, len, FILE_HDR_BYTES + (uint64_t)k * SLOT_BYTES);
		slots_before = file_size("slots");
		i += len;
	}
	if (data[0] & 1)
		frame_input(&journal, data + i, size - i);
	else if (size > i)
		buf_put(&journal, data + i, size - i);
	file_write(DP_JOURNAL_FILE, journal.p, journal.len, 0);

	ret = kv_open(&kv, err, sizeof(err));
	if (ret < 0) {
		if ((ret != -EBADMSG && ret != -EPROTO) || !err[0]) {
			fprintf(stderr, "the open fails with %d (%s): %s\n", ret, strerror(-ret),
			        err);
			fail();
		}
		free(journal.p);
		return 0;
	}
	CHECK(ret == 0);
	capture(kv, &first, journal.len / 4);
	dp_kv_close(kv);
	/* replay claims the snapshots' slots; it writes none (a new file gets
	 * its header) */
	if (file_size("slots") > (slots_before > FILE_HDR_BYTES ? slots_before : FILE_HDR_BYTES)) {
		fprintf(stderr, "the open grew the slot file from %llu to %llu bytes\n",
		        (unsigned long long)slots_before, (unsigned long long)file_size("slots"));
		fail();
	}
	reopen_same(&first, "reopened", false);
	reopen_same(&first, "reopened after a compaction", true);
	state_free(&first);
	free(journal.p);
	return 0;
}
