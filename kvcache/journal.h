/* SPDX-License-Identifier: MIT */
/*
 * kvcache/journal.h — the session metadata journal (internal to kvcache).
 *
 * An append-only file of checksummed records: what each session's token
 * history is, where its persisted state pages are, which sessions were
 * dropped. A record is durable once dp_journal_sync() returns after it; on
 * open, records are replayed in order up to the first torn or corrupt one,
 * and the file is cut there (a crash can only tear the tail). Compaction
 * writes the live state into a new file and renames it over the old one, so
 * a crash at any moment leaves either the old or the new journal.
 *
 * Record layout (little-endian):
 *   u32 magic "DPJ1" | u16 type | u16 zero | u32 payload length | payload |
 *   u64 xxh3 of the payload, seeded with (type << 32 | length)
 *
 * Threads: one thread at a time.
 */
#ifndef DP_KVCACHE_JOURNAL_H
#define DP_KVCACHE_JOURNAL_H

#include <stddef.h>
#include <stdint.h>

#define DP_JOURNAL_MAGIC 0x314a5044u /* "DPJ1" */
#define DP_JOURNAL_RECORD_MAX (256u << 20)
#define DP_JOURNAL_FILE "journal"

enum dp_journal_type {
	DP_JREC_HISTORY = 1,  /* session, position, tokens appended (a completed turn) */
	DP_JREC_SNAPSHOT = 2, /* session, position, page -> slot map of persisted state */
	DP_JREC_DROP = 3,     /* session deleted */
	DP_JREC_RESET = 4,    /* session, full history (compaction: replaces earlier) */
	DP_JREC_TYPE_MAX,
};

struct dp_journal;

/* Called for each valid record during open, in file order. Returning a
 * negative errno stops the replay and fails the open. */
typedef int (*dp_journal_replay_fn)(void *ctx, enum dp_journal_type type, const uint8_t *payload,
				    uint32_t len);

struct dp_journal_stats {
	uint64_t records_replayed;
	uint64_t bytes;		/* file size after open / appends */
	uint64_t truncated_bytes; /* torn tail cut at open */
	uint64_t syncs;
	uint64_t compactions;
};

/* Open (creating) the journal in the directory dirfd (dir: its name, for
 * messages; the journal keeps a duplicate of dirfd) and replay it. Returns
 * 0, or a negative errno with a message (unwritable directory, a journal
 * that is a symbolic link or not ours, a replay callback's error). */
int dp_journal_open(int dirfd, const char *dir, dp_journal_replay_fn replay, void *ctx,
		    struct dp_journal **ret, char *err, size_t err_len);
void dp_journal_close(struct dp_journal *j);

/* Append one record (buffered in the kernel; not yet durable). */
int dp_journal_append(struct dp_journal *j, enum dp_journal_type type, const void *payload,
		      uint32_t len);
/* Make every appended record durable (fdatasync). */
int dp_journal_sync(struct dp_journal *j);

/* Replace the journal with the records `emit` writes through
 * dp_journal_append() (called with a journal on the new file); atomic. */
int dp_journal_compact(struct dp_journal *j, int (*emit)(void *ctx, struct dp_journal *nj),
		       void *ctx);

void dp_journal_stats(const struct dp_journal *j, struct dp_journal_stats *ret);

/*
 * Open a file of the state directory dirfd (dir names it in messages)
 * without following a symbolic link (O_NOFOLLOW: a `journal` link planted
 * in the directory is refused, not written through), and only if it is a
 * regular file owned by this process's effective uid with one link (not a
 * hard link to a file elsewhere). flags as for openat(2); O_CLOEXEC is
 * added, new files are 0600. Returns the fd or a negative errno, with a
 * message naming the file.
 */
int dp_kv_state_openat(int dirfd, const char *dir, const char *name, int flags, char *err,
		       size_t err_len);

/* ---- payload building and parsing ------------------------------------------- */

struct dp_jbuf {
	uint8_t *data;
	uint32_t len, cap;
	int error; /* sticky: -ENOMEM or -E2BIG */
};

void dp_jbuf_put_u8(struct dp_jbuf *b, uint8_t v);
void dp_jbuf_put_u16(struct dp_jbuf *b, uint16_t v);
void dp_jbuf_put_u32(struct dp_jbuf *b, uint32_t v);
void dp_jbuf_put_u64(struct dp_jbuf *b, uint64_t v);
void dp_jbuf_put_str(struct dp_jbuf *b, const char *s); /* u16 length + bytes */
void dp_jbuf_fini(struct dp_jbuf *b);

struct dp_jreader {
	const uint8_t *p;
	uint32_t left;
	int error; /* sticky -EBADMSG when reading past the end */
};

uint8_t dp_jread_u8(struct dp_jreader *r);
uint16_t dp_jread_u16(struct dp_jreader *r);
uint32_t dp_jread_u32(struct dp_jreader *r);
uint64_t dp_jread_u64(struct dp_jreader *r);
/* Copies a u16-length string into buf (NUL-terminated); -EBADMSG if longer. */
int dp_jread_str(struct dp_jreader *r, char *buf, size_t len);

#endif /* DP_KVCACHE_JOURNAL_H */
