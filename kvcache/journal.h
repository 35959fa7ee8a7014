/* SPDX-License-Identifier: MIT */
/*
 * kvcache/journal.h — the session metadata journal (internal to kvcache).
 *
 * An append-only file of checksummed records: what each session's token
 * history is, where its persisted state pages are, which sessions were
 * dropped. A record is durable once dp_journal_sync() returns after it.
 * Compaction writes the live state into a new file and renames it over the
 * old one, so a crash at any moment leaves either the old or the new journal.
 *
 * Record layout (little-endian):
 *   u32 magic "DPJ1" | u16 type | u16 key check | u32 payload length |
 *   payload | u64 xxh3 of the payload, seeded with (type << 32 | length)
 * Every payload begins with the record's key, the session id it is about
 * (u16 length + bytes), and, in records written with a key check (nonzero),
 * ends with a second copy of it: key bytes | u16 length | u32 "DPJK". The
 * key check is a 16-bit hash of type and key. Records from before the key
 * check (check 0, no copy) replay as they are; builds from before it read
 * the new records too (they ignore trailing payload bytes). The replay
 * callback sees the payload without the copy.
 *
 * Replay. Records are replayed in file order. A crash can only tear the
 * tail: a last record shorter than its header says (or a header cut short,
 * or zeros) is cut off the file, counted in truncated_bytes and not
 * reported as damage. Anything else that fails its checksum is damage, and
 * replay does not stop there: it resynchronises at the next offset holding
 * the magic and a whole record whose checksum holds (or whose header and key
 * check do: a damaged record that can still be named), and goes on. What
 * lies between is one damaged span, reported to the damage callback with
 * the best account of whose it was:
 *   - its key and type, verified by the key check against either key copy
 *     (so damage to the body, the length or one copy still names the
 *     session), or by the two copies agreeing (damage to the check itself);
 *   - else the bytes where its key would be, unverified ("salvaged"): an
 *     old record, or damage that hit both copies or the type;
 *   - else nothing: the caller finds the loss by the position gap of the
 *     session's next record (a HISTORY record that does not continue its
 *     session's history) or not at all, if the damaged record was a
 *     session's last and neither key copy survived.
 * A span that is one record damaged only in its type or length field (the
 * checksum holds for the length the span implies and some type) is
 * replayed and counted as repaired, not as damage. The damaged file is
 * copied aside first, as journal.damaged-<unix time>[-n] in the directory;
 * the caller should rewrite the journal (dp_journal_compact) so that the
 * damage is not met again.
 *
 * Threads: one thread at a time.
 */
#ifndef DP_KVCACHE_JOURNAL_H
#define DP_KVCACHE_JOURNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define DP_JOURNAL_MAGIC 0x314a5044u /* "DPJ1" */
#define DP_JOURNAL_KEY_MAGIC 0x4b4a5044u /* "DPJK", after the key copy */
#define DP_JOURNAL_RECORD_MAX (256u << 20)
#define DP_JOURNAL_KEY_MAX 255u
#define DP_JOURNAL_FILE "journal"

enum dp_journal_type {
	DP_JREC_HISTORY = 1,  /* session, position, tokens appended (a completed turn) */
	DP_JREC_SNAPSHOT = 2, /* session, position, page -> slot map of persisted state */
	DP_JREC_DROP = 3,     /* session deleted */
	DP_JREC_RESET = 4,    /* session, full history (compaction: replaces earlier) */
	DP_JREC_TYPE_MAX,
};

struct dp_journal;

/* A damaged span met during replay (see above). */
struct dp_journal_damage {
	uint64_t offset; /* where it starts: a record boundary */
	uint64_t bytes;	 /* up to the next good record, or the end of the file */
	enum dp_journal_type type; /* of its (first) record; 0: not known */
	bool key_verified;	   /* key (and type, if known) verified; else salvaged */
	char key[DP_JOURNAL_KEY_MAX + 1]; /* "" if none could be read */
};

struct dp_journal_replay {
	/* each valid record, in file order (payload without the key copy) */
	int (*record)(void *ctx, enum dp_journal_type type, const uint8_t *payload, uint32_t len);
	/* each damaged span, in file order among the records (may be NULL) */
	int (*damage)(void *ctx, const struct dp_journal_damage *d);
	void *ctx;
	/* A callback's negative errno stops the replay and fails the open. */
};

struct dp_journal_stats {
	uint64_t records_replayed;
	uint64_t bytes;		/* file size after open / appends */
	uint64_t truncated_bytes; /* torn tail cut at open */
	uint64_t damaged_records; /* damaged spans skipped at open (their content is lost) */
	uint64_t damaged_bytes;	  /* and their bytes */
	uint64_t repaired_records; /* damaged in a header field only: replayed all the same */
	uint64_t syncs;
	uint64_t compactions;
};

/* Open (creating) the journal in the directory dirfd (dir: its name, for
 * messages; the journal keeps a duplicate of dirfd) and replay it through
 * cb (may be NULL). Returns 0, or a negative errno with a message
 * (unwritable directory, a journal that is a symbolic link or not ours, a
 * callback's error). */
int dp_journal_open(int dirfd, const char *dir, const struct dp_journal_replay *cb,
		    struct dp_journal **ret, char *err, size_t err_len);
/* The name (in the directory) of the copy of the damaged journal this
 * open kept, or NULL if it found no damage. */
const char *dp_journal_damaged_copy(const struct dp_journal *j);
void dp_journal_close(struct dp_journal *j);

/* Append one record (buffered in the kernel; not yet durable). The payload
 * must begin with its key (dp_jbuf_put_str; 1..DP_JOURNAL_KEY_MAX bytes):
 * -EINVAL otherwise. */
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
/* Keep a damaged state file for inspection: copy it (from data, size bytes)
 * or, when data is NULL, rename it, to name.damaged-<unix time>[-n] in
 * dirfd; the new name goes to out. 0 or a negative errno. */
int dp_kv_state_set_aside(int dirfd, const char *name, const void *data, uint64_t size, char *out,
			  size_t out_len);

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
