/* SPDX-License-Identifier: MIT */
/*
 * kvcache/kvcache.h — sessions and their paged, tiered, crash-safe state.
 *
 * A session is a token history plus, optionally, the model state those
 * tokens produced: the pages of a struct dp_v4_seq (model/v4.h). The state
 * lives in one tier at a time:
 *
 *   DEVICE  the compute backend's memory: a live dp_v4_seq the forward runs on;
 *   DRAM    pinned, NUMA-local host pages (a fixed pool, registered with the
 *           io engine so NVMe reads land in them directly);
 *   NVME    slots of a file in the state directory, each a 4 KiB header
 *           (magic, format version, session, layer, stream, page index,
 *           position, xxh3 of the data) and the 64 KiB page;
 *   NONE    no state: it is recomputed from the token history on next use.
 *
 * Demotion goes DEVICE -> DRAM -> NVME, least recently used first, when a
 * tier is above its high watermark, until it is below the low one; idle
 * sessions only. Promotion happens on dp_kv_session_acquire().
 *
 * Nothing is lost: the token history is the truth. Every completed turn's
 * tokens are journaled (kvcache/journal.h) and fsync'd by dp_kv_commit();
 * state pages are an optimisation. After a crash, a session comes back at
 * its last committed turn; its state is restored from its newest persisted
 * snapshot if every page checks (header and checksum) and the tokens after
 * the snapshot are replayed, else recomputed from the history. A torn,
 * corrupt, missing or foreign-version page is never served.
 *
 * A page is never freed or overwritten while a copy from or to it is in
 * flight: every copy here completes (its io ticket is reached) before the
 * source is released; NVMe slots of the newest durable snapshot are never
 * reused until a newer snapshot (or the drop) is durable.
 *
 * Threads: all calls from one thread (the daemon's compute thread); file I/O
 * goes through the io engine when one is given.
 */
#ifndef DP_KVCACHE_KVCACHE_H
#define DP_KVCACHE_KVCACHE_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "io/io.h"
#include "kvcache/rsched.h"
#include "model/v4.h"

#ifdef __cplusplus
extern "C" {
#endif

#define DP_KV_SESSION_ID_MAX 128
#define DP_KV_FORMAT_VERSION 1

enum dp_kv_tier {
	DP_KV_TIER_DEVICE,
	DP_KV_TIER_DRAM,
	DP_KV_TIER_NVME,
	DP_KV_TIER_NONE,
	DP_KV_TIER_MAX,
};

const char *dp_kv_tier_name(enum dp_kv_tier tier); /* "device", "dram", "nvme", "none" */

struct dp_io;

struct dp_kv_opts {
	const char *state_dir;	/* journal and NVMe slot file; must exist, be ours, 0700/0750 */
	uint64_t device_bytes;	/* state pages on the device before demotion; 0: no limit */
	uint64_t dram_bytes;	/* pinned DRAM tier; 0: none (demote straight to NVMe) */
	uint64_t nvme_bytes;	/* slot file limit; 0: no limit (until the disk is full) */
	double high_watermark;	/* demote above this fraction of a tier (default 0.90) */
	double low_watermark;	/* ... until below this one (default 0.75) */
	int numa_node;		/* for the DRAM tier; -1: any */
	bool direct_io;		/* O_DIRECT on the slot file (falls back if unsupported) */
	struct dp_io *io;	/* io engine for slot I/O; NULL: synchronous pread/pwrite */
	uint32_t max_units;	/* prefix units kept (LRU beyond); 0: 4096 */
	uint32_t unit_key_bits;	/* chain key bits (1..64; 0: 64): tests force collisions */
};

struct dp_kv;
struct dp_kv_session;

/* Open the cache on model m: replays the journal (every committed turn of
 * every session comes back, with its state in NVME or NONE; what journal
 * damage took is reported: see lost sessions below). A slot file whose
 * header is damaged is set aside and replaced: the sessions' states are
 * recomputed from their histories; so is a snapshot naming slots the file
 * does not hold (its pages count in corrupt_pages), and the file is not
 * grown to reach them. When anything was damaged the journal
 * is rewritten (compacted) before the open returns. Errors: bad options, an
 * unusable state directory (missing, read-only), a journal or slot file of
 * another format version — each with a message.
 *
 * The state directory must be trusted: owned by this process's effective
 * uid and writable by neither group nor others (0700 or 0750; -EPERM, with
 * a message naming the directory, its owner and mode, otherwise). Its files
 * are opened relative to the directory checked, never through a symbolic
 * link (O_NOFOLLOW), and only if they are regular files of this uid with
 * one link (-ELOOP, -EPERM otherwise): a directory someone else can write
 * to would let them point `journal` at any file the daemon can write. */
int dp_kv_open(const struct dp_kv_opts *opts, struct dp_v4_model *m, struct dp_kv **ret_kv,
	       char *err, size_t err_len);
/* Close without persisting anything beyond what is committed. */
void dp_kv_close(struct dp_kv *kv);

/* Session ids: 1..DP_KV_SESSION_ID_MAX bytes of [A-Za-z0-9._-], not "." or
 * ".." (they may become file names). */
bool dp_kv_session_id_valid(const char *id);

int dp_kv_session_find(struct dp_kv *kv, const char *id, struct dp_kv_session **ret);

/*
 * Lost sessions. The journal is read past damage (kvcache/journal.h):
 * every record that checks is replayed, and a session that a damaged
 * record belonged to is *lost* — whatever is left of its history is not
 * the context its client built, so it is not served as one. A session is
 * lost when a damaged record is named as a turn of its history (by its
 * verified key; or by the bytes where its key was, if they form a valid id:
 * erring towards reporting), when its history has a gap (a record that does
 * not continue the history before it), or when its snapshot is ahead of
 * its history. A damaged snapshot record only costs the state (recomputed
 * from the history); a damaged drop record is applied as a drop. What
 * cannot be found: a damaged last record of a session whose both key
 * copies were destroyed too — that session comes back short of that turn.
 *
 * A lost session exists (dp_kv_session_find finds it, listings show it)
 * with an empty history and no state; acquiring or appending to it fails
 * with -ENODATA, and dp_kv_session_create with -EEXIST. It stays lost,
 * through compactions and restarts, until dp_kv_session_drop (journaled):
 * then the id is free for a new session. The damage is counted in
 * dp_kv_stats (journal_*) and the damaged journal kept aside
 * (dp_kv_recovery).
 */
bool dp_kv_session_lost(struct dp_kv *kv, const char *id);

/* What dp_kv_open found damaged in the state directory and kept there for
 * inspection (file names in the state directory; "" if none). */
struct dp_kv_recovery {
	char journal_copy[256]; /* journal.damaged-<time>: the journal as it was */
	char slots_copy[256];	/* slots.damaged-<time>: a slot file with a damaged header */
};
void dp_kv_recovery(const struct dp_kv *kv, struct dp_kv_recovery *ret);
/* -EEXIST if it exists, -EINVAL for a bad id, -ENOSPC past max_sessions.
 * The session has no owner (DP_KV_OWNER_NONE). */
int dp_kv_session_create(struct dp_kv *kv, const char *id, struct dp_kv_session **ret);

/*
 * Owners. A session may belong to a uid (the client's, from SO_PEERCRED):
 * the cache records it and keeps it — journaled with the session's history
 * records, so it survives restarts and compactions, and kept by a lost
 * session — but does not enforce it; who may use a session is the
 * caller's rule. Sessions created without one, and those of journals
 * written before owners existed, have DP_KV_OWNER_NONE.
 */
#define DP_KV_OWNER_NONE UINT32_MAX
/* As dp_kv_session_create, owned by owner_uid (DP_KV_OWNER_NONE: none). */
int dp_kv_session_create_owned(struct dp_kv *kv, const char *id, uint32_t owner_uid,
			       struct dp_kv_session **ret);
uint32_t dp_kv_session_owner(const struct dp_kv_session *s); /* or DP_KV_OWNER_NONE */

const char *dp_kv_session_id(const struct dp_kv_session *s);
/* Tokens in the history (committed and appended). */
uint64_t dp_kv_session_len(const struct dp_kv_session *s);
const int32_t *dp_kv_session_history(const struct dp_kv_session *s);
enum dp_kv_tier dp_kv_session_tier(const struct dp_kv_session *s);
/* State bytes in its tier (DRAM pages shared with units count in each holder;
 * dp_kv_stats counts the pool's pages once). */
size_t dp_kv_session_bytes(const struct dp_kv_session *s);
uint64_t dp_kv_session_idle_ns(const struct dp_kv *kv, const struct dp_kv_session *s);
bool dp_kv_session_busy(const struct dp_kv_session *s);

/* Acquire with a fresh state at position 0, whatever is parked (the
 * recompute baseline: every history token is fed again). The parked copy
 * in DRAM is let go; a snapshot on NVMe stays. */
int dp_kv_session_acquire_fresh(struct dp_kv *kv, struct dp_kv_session *s,
				struct dp_v4_seq **ret_seq);

/*
 * Make the session's state resident on the device and mark it busy (not to
 * be demoted until released). *ret_seq is the state; its position may be
 * behind the history: the caller must feed history[dp_v4_seq_pos(seq) ..
 * len) through the model before new tokens (after a crash, a failed or
 * corrupt page, or a drop of the state, that is the whole history).
 */
int dp_kv_session_acquire(struct dp_kv *kv, struct dp_kv_session *s, struct dp_v4_seq **ret_seq);
/*
 * The DualPath restore: as dp_kv_session_acquire, but a DRAM or NVME state
 * comes back layer by layer while the caller already computes. *ret_seq has
 * a gate (model/v4.h) that waits, per layer, for that layer's pages and
 * checks them; if one fails its checks the gate poisons the sequence, and
 * the caller must dp_kv_session_forget_state() and acquire again (which
 * recomputes from the history). Without an io engine, an NVME state is
 * restored synchronously.
 */
int dp_kv_session_acquire_async(struct dp_kv *kv, struct dp_kv_session *s,
				struct dp_v4_seq **ret_seq);

struct dp_kv_restore_info {
	bool active;	     /* a layer-by-layer restore is in flight */
	uint32_t layers;     /* the model's layers */
	uint32_t layers_ready; /* leading layers whose pages have arrived (all:
				* nothing is to wait for, or its reads failed) */
	uint64_t bytes_left; /* still to read */
	uint64_t bytes_ahead; /* others' reads issued to the io thread and not done,
			       * before its own last one (any, while some of its
			       * own are not issued): they come first */
};
int dp_kv_session_restore_info(struct dp_kv *kv, struct dp_kv_session *s,
			       struct dp_kv_restore_info *ret);
/* The same, and with n > 0 the restore's bytes still to read layer by
 * layer into layer_bytes[0..n) (n >= the model's layers), from the same
 * walk. Returns the layers filled: 0 when none (no restore runs, it is a
 * copy or from the shared tier, or its reads failed); -EINVAL. */
int dp_kv_session_restore_layers(struct dp_kv *kv, struct dp_kv_session *s,
				 struct dp_kv_restore_info *ret, uint64_t *layer_bytes, uint32_t n);
/* Once per step, before its forward: hand the io thread what writebacks
 * could not submit yet (a full window), and begin the step for restores
 * (their page reads go out earliest-needed first, see below). Cheap. */
void dp_kv_pump(struct dp_kv *kv);
/* The restore window: NVMe restores' page reads are issued in the order
 * the forward needs them across every restoring session (layer-major: a
 * page of layer l of a session in step S at tick S * layers + l), with at
 * most `bytes` issued and not yet read, topped up at each layer's gate; a
 * gate's own layer goes past it. Size it to a few layers of compute at the
 * device's rate (0: no cap). 0 or -EINVAL. Bytes issued and not read now:
 * dp_kv_restore_inflight. */
int dp_kv_set_restore_window(struct dp_kv *kv, uint64_t bytes);
uint64_t dp_kv_restore_inflight(const struct dp_kv *kv); /* restore pages' bytes */
/* The restore queue's bytes by class (rsched.h: restore pages, Engram rows,
 * expert reads, writebacks' writes): issued to the io thread and not done;
 * queued, not issued yet. ret[DP_RSCHED_CLASS_MAX]; all 0 before any use. */
void dp_kv_io_inflight(const struct dp_kv *kv, uint64_t ret[DP_RSCHED_CLASS_MAX]);
void dp_kv_io_queued(const struct dp_kv *kv, uint64_t ret[DP_RSCHED_CLASS_MAX]);
/* Staggered admission: s's restore is left out of the step just begun
 * (dp_kv_pump), so its reads are due `steps` (>= 1) steps later; they go on
 * in that order behind the joiners' and those due sooner (no-op for a
 * restore not from NVMe). 0 or -EINVAL. Then, with every such decision made, dp_kv_restore_pump tops
 * the window up (dp_kv_pump issues only the step's first layer). */
int dp_kv_restore_defer(struct dp_kv *kv, struct dp_kv_session *s, uint32_t steps);
void dp_kv_restore_pump(struct dp_kv *kv);
/* Nothing runs while a restore is held back (the compute thread waits
 * outside a step until its layers would come in time): hand the io thread
 * every page the step just begun would need, past the window, so the device
 * is not left idle while the compute thread sleeps. */
void dp_kv_restore_pump_step(struct dp_kv *kv);
/* Other parts' reads in the same deadline order (paged experts, class
 * DP_RSCHED_EXPERT of kvcache/rsched.h): req (a read on a file of the io
 * engine the cache was opened with) is needed by layer `layer` of the step
 * dp_kv_pump began, so it goes to the io thread (on the restore channel)
 * after every restore page needed sooner and before any needed later,
 * within the restore window. dp_kv_read_wait returns once it is done, its
 * result (bytes or -errno) in *ret_res; every queued read must be waited
 * for. Compute thread only. 0, -EINVAL, -ENOTSUP (no io engine), -ENOMEM. */
int dp_kv_read_queue(struct dp_kv *kv, enum dp_rsched_class klass, uint32_t layer,
		     const struct dp_io_req *req, uint64_t *ret_id);
int dp_kv_read_wait(struct dp_kv *kv, uint64_t id, int32_t *ret_res);

/* No compute on the session for now: it becomes demotable (LRU). */
void dp_kv_session_release(struct dp_kv *kv, struct dp_kv_session *s);

/* The state no longer matches the history (a failed forward step): drop it
 * and release the session; the next acquire recomputes it from the history
 * (or its newest snapshot). */
void dp_kv_session_forget_state(struct dp_kv *kv, struct dp_kv_session *s);

/* Append tokens the model has consumed to the history (journaled at the next
 * dp_kv_commit). */
int dp_kv_session_append(struct dp_kv *kv, struct dp_kv_session *s, const int32_t *tokens,
			 uint32_t n);
/* Journal every session's appended tokens and fsync: their turns are then
 * durable. */
int dp_kv_commit(struct dp_kv *kv);

/* Move an idle session's state down to tier `to` (DRAM or NVME; NVME
 * persists it), or drop it (NONE: recomputed on next use). */
int dp_kv_session_demote(struct dp_kv *kv, struct dp_kv_session *s, enum dp_kv_tier to);
/*
 * Eviction without waiting: start moving an idle session's state to NVMe
 * (with an io engine, as an asynchronous writeback, dp_kv_balance_async;
 * without one, synchronously as dp_kv_session_demote) and say in *ret_pos
 * the position the state written stands at. dp_kv_session_evict_done then
 * says when it is durable: 1 still in flight (writes, or the journal sync
 * that installs it: dp_kv_flush), 0 the state at pos is the session's
 * durable snapshot, -EAGAIN the writeback finished with an older state than
 * pos (start again), another negative errno if it failed. A writeback
 * already in flight for s is joined. -EBUSY while the session is in use.
 */
int dp_kv_session_evict_start(struct dp_kv *kv, struct dp_kv_session *s, uint64_t *ret_pos);
int dp_kv_session_evict_done(struct dp_kv *kv, const struct dp_kv_session *s, uint64_t pos);
/* Write the state to NVMe as a durable snapshot, keeping it where it is. */
int dp_kv_session_persist(struct dp_kv *kv, struct dp_kv_session *s);
/* Delete the session: history, state, slots (durably). For a lost
 * session, this is how its client starts over. */
int dp_kv_session_drop(struct dp_kv *kv, struct dp_kv_session *s);

/* Enforce the watermarks: demote idle LRU sessions. Returns sessions moved. */
int dp_kv_balance(struct dp_kv *kv);
/* The same, but demotions to NVMe are only started (with an io engine): the
 * writes go to the io thread in the restore queue's deadline order (due a
 * few steps after their start: reads needed sooner go first, and they never
 * starve; a LOW-priority channel, little of it in the kernel at once) while
 * the caller goes on, and dp_kv_pump advances them; a finished one is journaled, and the next
 * journal sync (dp_kv_commit or dp_kv_flush) makes it the session's
 * snapshot and, if the session is still idle at that position, moves it to
 * NVMe. The session stays usable meanwhile. Returns sessions moved or
 * started. */
int dp_kv_balance_async(struct dp_kv *kv);
/* Advance writebacks and sync the journal if finished ones wait for it
 * (call when idle). */
int dp_kv_flush(struct dp_kv *kv);
/* Whether writebacks are in flight or wait for a journal sync. */
bool dp_kv_writeback_pending(const struct dp_kv *kv);
/* Rewrite the journal with only the live state. */
int dp_kv_compact(struct dp_kv *kv);

/* Iterate: idx 0.. until -ENOENT. */
int dp_kv_session_at(struct dp_kv *kv, size_t idx, struct dp_kv_session **ret);
size_t dp_kv_session_count(const struct dp_kv *kv);

struct dp_kv_stats {
	uint64_t pages[DP_KV_TIER_MAX];	 /* pages held per tier */
	uint64_t bytes[DP_KV_TIER_MAX];	 /* and their bytes */
	uint64_t budget[DP_KV_TIER_MAX]; /* limits (0: none) */
	uint64_t sessions[DP_KV_TIER_MAX];
	uint64_t promotions, demotions, drops;
	uint64_t pages_written, pages_read;
	uint64_t pages_shared;		 /* snapshot pages that named a slot already holding
					  * their bytes instead of writing it (kvcache-internal.h,
					  * "Shared slots") */
	uint64_t pages_hashed_io;	 /* of the restores' pages, checksummed by the io thread */
	uint64_t pages_zero_tail;	 /* ... and those with a zero tail, not written, which the
					  * gate zeroed and checksummed (kvcache-internal.h,
					  * dp_kv_slot_check_hashed) */
	uint64_t corrupt_pages;		 /* failed checks on load: recomputed */
	uint64_t recomputed_tokens;	 /* history replayed into state */
	uint64_t commits, journal_bytes;
	uint64_t compactions;		 /* journal rewrites */
	/* found at open (kvcache/journal.h: Replay) */
	uint64_t journal_damaged_records;  /* damaged spans of the journal skipped */
	uint64_t journal_damaged_bytes;	   /* and their bytes */
	uint64_t journal_repaired_records; /* damaged in a header field only: replayed */
	uint64_t journal_sessions_lost;	   /* sessions the damage made lost */
	uint64_t lost_sessions;		   /* lost sessions now (not yet dropped) */
	uint64_t slot_file_resets;	   /* slot files with a damaged header set aside
					    * (their sessions' states recomputed) */
	uint64_t writebacks;		 /* asynchronous demotions to NVMe started */
	uint64_t writeback_errors;	 /* ... that failed (the state stayed where it was) */
	uint64_t writeback_pages;	 /* pages being written out now */
	uint64_t restores;	   /* layer-by-layer restores completed */
	uint64_t restore_ns;	   /* their total duration */
	uint64_t restore_stall_ns; /* time gates waited for pages (compute stalled) */
	uint64_t restore_io_ns;	   /* time restore reads were in flight (io engine) */
	uint64_t restore_io_bytes; /* and the bytes they read: the rate restores get */
	uint64_t restore_first_ns; /* from an NVMe restore's first reads to its first
				    * layer in (as its first gate found it), summed */
	uint64_t restore_firsts;   /* ... over this many restores */
	uint64_t loads;		   /* whole-state promotions from DRAM or NVMe (not layered) */
	uint64_t load_ns;	   /* their total duration (the caller waited) */
	uint64_t host_state_bytes; /* live sequences' host-resident pages (CSA entries in
				    * host memory; not in the device budget) */
	uint64_t units;			 /* prefix units now */
	uint64_t units_left;		 /* units made (end of a prompt or a reply) */
	uint64_t units_dropped;		 /* ... dropped: LRU past max_units, no state left */
	uint64_t units_corrupt;		 /* ... dropped because a page failed its checks */
	uint64_t prefix_hits, prefix_misses; /* dp_kv_unit_fork found a unit, or none */
	uint64_t prefix_cached_tokens;	 /* tokens the hits did not feed again */
	uint64_t unit_copy_bytes;	 /* state bytes copied into units left */
	uint64_t unit_shared_bytes;	 /* ... and held by reference instead (frozen pages
					  * an earlier unit of the conversation holds) */
	uint64_t unit_leave_ns;		 /* time dp_kv_unit_leave took for the units made */
	uint64_t shared_units_lent;	 /* units from the shared tier lent (adopted) */
	uint64_t shared_units_restored;	 /* ... whose every page came back and checked */
	uint64_t shared_units_corrupt;	 /* ... given back bad (a page failed: recomputed) */
	bool direct_io;			 /* O_DIRECT in effect on the slot file */
};
void dp_kv_stats(const struct dp_kv *kv, struct dp_kv_stats *ret);

/*
 * Prefix units. A unit is the complete model state at one token boundary,
 * kept for whoever sends a prompt that starts with its tokens: a stateless
 * client (a Generate without a session) that re-sends its whole
 * conversation each turn finds the unit the previous turn left and feeds
 * only the new turn. V4's state cannot be cut at an arbitrary token (the
 * sliding window, the compressors' unfinished windows), so a unit is made
 * where a sequence stands (dp_kv_unit_leave): the daemon leaves one just
 * before the last token of each prompt (so that the same prompt again
 * still has a token to feed for its logits) and one where each reply ends.
 *
 * A unit is a session of its own, with an id clients cannot name (it
 * starts with DP_KV_UNIT_MARK, outside the client id alphabet): its history
 * is its tokens, journaled like a session's; its state lives in the tiers
 * under the same budgets and LRU, is written to NVMe with checksums and
 * comes back with the same restores.
 *
 * Units of one conversation share its growing streams. A full page of
 * compressed entries or index keys never changes (model/v4.h, "Frozen
 * pages"), so a unit in DRAM holds such a page by reference (the pool
 * counts holders; the last one frees it) when an earlier unit, the session
 * or the fork its sequence came from already has it in the pool, and
 * copies only the rest: the window, the compressor buffers and the
 * partly filled tail pages, which no holder ever writes once in the pool
 * (a sequence appends into its own device pages, never into a unit's). So
 * k turns cost one copy of the streams plus k small states; the DRAM
 * budget counts pool pages, a shared one once. A holder leaving DRAM (to
 * NVMe, dropped) only puts its holds: pages others hold stay in DRAM. On
 * NVMe a unit's pages that a held slot already has are shared too (kvcache-
 * internal.h, "Shared slots"), and a unit kept on the device (the pool full)
 * owns a copy.
 *
 * Units are keyed by a chain over a tenant tag and their token ids (one
 * step per token, so a lookup sees every prefix); a key match is verified
 * against the unit's tenant and every token id before it is used. The
 * tenant is a 128-bit hash of the client's uid and its cache_salt, so
 * different uids or salts never share a unit.
 */
#define DP_KV_UNIT_MARK "~u"
#define DP_KV_CACHE_SALT_MAX 256

struct dp_kv_tenant {
	uint64_t tag[2];
};
void dp_kv_tenant_make(uint32_t uid, const void *salt, size_t salt_len, struct dp_kv_tenant *ret);
bool dp_kv_session_is_unit(const struct dp_kv_session *s);
size_t dp_kv_unit_count(const struct dp_kv *kv);

/* The length of the longest unit of tenant t whose tokens are a prefix of
 * tokens[0..max) (verified id by id), its session in *ret; -ENOENT if none
 * (a unit without state, or busy, does not count). */
int dp_kv_unit_find(struct dp_kv *kv, const struct dp_kv_tenant *t, const int32_t *tokens,
		    uint64_t max, struct dp_kv_session **ret);
/*
 * Start from the longest unit that is a prefix of tokens[0..max): *ret_seq
 * is a sequence at the returned position (the unit stays for others), and
 * the caller feeds tokens from there. 0 and *ret_seq NULL when there is no
 * unit (a miss; the caller starts a fresh sequence).
 *
 * From DEVICE or DRAM the state is copied and *ret_unit is NULL: the
 * caller owns *ret_seq (dp_v4_seq_free); from DRAM its frozen pages are
 * tagged with the unit's pool pages, so units the fork leaves share them. From NVME, the unit is acquired
 * (layer by layer when layered, as dp_kv_session_acquire_async; the gate
 * and dp_kv_session_restore_info work on *ret_unit) and *ret_seq is the
 * unit's own sequence, lent: the caller gives it back with
 * dp_kv_unit_return when done (the unit goes back to its snapshot). A
 * layered fork of a unit already lent from NVMe (with an io engine) gets a
 * twin: the same snapshot restored layer by layer once more, into a
 * sequence of its own; *ret_unit is the twin (its id is the unit's) and is
 * given back the same way. The unit stays busy until its lend and its twins
 * are all back (return them before dp_kv_close). A unit whose snapshot
 * fails its checks on a synchronous load is dropped and the next shorter
 * one tried; one whose twin's or lend's gate failed is dropped when the
 * last of them is back.
 */
int dp_kv_unit_fork(struct dp_kv *kv, const struct dp_kv_tenant *t, const int32_t *tokens,
		    uint64_t max, bool layered, struct dp_v4_seq **ret_seq,
		    struct dp_kv_session **ret_unit);
/*
 * Seed session s, acquired (busy) with its state at position 0, from the
 * longest unit of tenant t that is a prefix of its history (below its last
 * token): its sequence is replaced by a copy of the unit's state (from
 * NVMe, loaded synchronously and the unit put back). Returns the unit's
 * length, 0 when none matched (s unchanged); *ret_seq is s's sequence now.
 * For a session whose state is gone (new, or NONE after a crash) while a
 * unit of its conversation survives.
 */
int dp_kv_session_seed(struct dp_kv *kv, struct dp_kv_session *s, const struct dp_kv_tenant *t,
		       struct dp_v4_seq **ret_seq);
/* Give back a unit (or a twin) lent by dp_kv_unit_fork (its sequence is
 * freed). bad: a gate poisoned the sequence (a page failed its checks): the
 * unit is dropped, never served again. */
void dp_kv_unit_return(struct dp_kv *kv, struct dp_kv_session *u, bool bad);
/*
 * Leave a unit of tenant t for tokens[0..n) with seq's state (which must
 * stand at n; its state is not changed): into DRAM when the pool has room
 * (copying only what no pool page holds yet, and tagging seq's frozen
 * pages with their pool pages so that the next unit shares them), else as
 * a device copy (the balance demotes it like any idle session). An existing unit with those tokens is only touched (LRU). Past
 * max_units the least recently used idle unit is dropped. The unit's
 * tokens are journaled by the next dp_kv_commit.
 */
int dp_kv_unit_leave(struct dp_kv *kv, const struct dp_kv_tenant *t, const int32_t *tokens,
		     uint64_t n, struct dp_v4_seq *seq);

/*
 * Prefix units on the shared tier (daemon/shared-units.c publishes and
 * finds them; kvcache/tier.h reads them). A unit another host published is
 * adopted here: a session outside the table (never indexed, never
 * journaled, its own copy of tokens[0..n)), busy on the device, whose state
 * comes back layer by layer from the tier's segments (as
 * dp_kv_session_restore_shared: locs[0..n_locs) must list exactly the
 * sequence's pages at n). Returns n and *ret_seq, *ret_unit (the lend: give
 * it back with dp_kv_unit_return, as a unit lent from NVMe); not layered,
 * every layer is read before this returns (-EBADMSG, nothing lent, when a
 * page fails). cookie is the caller's name for the unit: one given back bad
 * (a page failed its checks: the request recomputed) is reported by
 * dp_kv_unit_take_shared_bad, so the caller stops offering it.
 */
struct dp_kv_shared;
struct dp_kv_shared_loc;
int dp_kv_unit_adopt_shared(struct dp_kv *kv, const struct dp_kv_tenant *t, const int32_t *tokens,
			    uint64_t n, uint64_t cookie, struct dp_kv_shared *tier,
			    pthread_mutex_t *lock, const char *const *segments, size_t n_segments,
			    const struct dp_kv_shared_loc *locs, size_t n_locs, bool layered,
			    struct dp_v4_seq **ret_seq, struct dp_kv_session **ret_unit);
/* Cookies of adopted units given back bad since the last call (up to max,
 * oldest first; at most the last 16 are kept). */
size_t dp_kv_unit_take_shared_bad(struct dp_kv *kv, uint64_t *out, size_t max);
/* seq's state as it stands, in host memory (what a unit left from it holds):
 * *ret_refs (page list, dp_v4_seq_pages order) and *ret_data (n pages of
 * DP_V4_PAGE_BYTES, 4 KiB aligned); the caller frees both. */
int dp_kv_seq_state_copy(struct dp_kv *kv, struct dp_v4_seq *seq, struct dp_v4_page_ref **ret_refs,
			 void **ret_data, size_t *ret_n);

/* When the compute path stalled: a gate waiting for a layer's pages, from t0
 * to t1 (dp_clock_ns, base/clock.h). The cache keeps the last DP_KV_STALL_SPANS of
 * them; dp_kv_take_stalls moves up to max into out, oldest first, and
 * returns how many (spans beyond the ring were dropped: counted in
 * restore_stall_ns all the same). */
#define DP_KV_STALL_SPANS 64
struct dp_kv_stall {
	uint64_t t0, t1;
	uint32_t layer;
	uint64_t inflight; /* restore bytes issued and not read when it ended */
	uint64_t by_class[DP_RSCHED_CLASS_MAX]; /* dp_kv_io_inflight when it ended */
};
size_t dp_kv_take_stalls(struct dp_kv *kv, struct dp_kv_stall *out, size_t max);

#ifdef __cplusplus
}
#endif
#endif /* DP_KVCACHE_KVCACHE_H */
