/* SPDX-License-Identifier: MIT */
/*
 * Shared by the kvcache part's .c files only.
 *
 * Who calls whom among them (caller -> callee). Calls go down only, so the
 * graph has no cycle; scripts/check-calls checks it on the built library
 * (the test kvcache-calls, suites layers and kvcache):
 *
 *   unit.c       prefix units: lookup, fork, leave, return
 *     -> kvcache.c    the session API, dp_kv_session_add, dp_kv_lru_touch
 *     -> session.c, restore.c
 *   kvcache.c    the API: the session table, promotion, demotion,
 *                persistence, recovery
 *     -> restore.c    dp_kv_restore_begin/complete
 *     -> writeback.c  dp_kv_wb_start/progress/finalize/settle/detach,
 *                     dp_kv_commit_if_behind
 *     -> session.c, tiers.c, journal.c
 *   pump.c       dp_kv_pump
 *     -> rqueue.c     dp_kv_restore_step
 *     -> writeback.c  dp_kv_wb_progress
 *   writeback.c  demotion to NVMe without waiting, and dp_kv_commit (whose
 *                journal sync installs the recorded writebacks)
 *     -> restore.c    dp_kv_restore_complete (a restore still reading the
 *                     old slots finishes before they are freed)
 *     -> rqueue.c     dp_kv_write_*
 *     -> session.c, tiers.c, journal.c
 *   restore.c    the layer-by-layer restore: its gates
 *     -> rqueue.c     dp_kv_rq_* (rqueue-internal.h: the structures both share)
 *     -> rsched.c     its stream in the queue's scheduler
 *     -> restore-shared.c  dp_kv_srestore_* (a restore from the shared tier)
 *     -> session.c    dp_kv_seq_new_at, dp_kv_layer_ends
 *     -> tiers.c
 *   rqueue.c     the restore queue: it orders every restore's page reads,
 *                the other parts' reads and the writebacks' writes
 *     -> rsched.c     the read scheduler (pure logic; calls none of them)
 *   session.c    one session's state and journal records, shared by the three
 *                above
 *     -> tiers.c, journal.c
 *   tiers.c      the DRAM page pool and the NVMe slot file
 *     -> journal.c    dp_kv_state_openat, dp_kv_state_set_aside
 *   journal.c    the journal (journal.h); calls none of them
 *
 * Top to bottom: unit.c, kvcache.c and pump.c, writeback.c, restore.c, rqueue.c, session.c,
 * tiers.c, journal.c. A helper that two files at one level need goes down
 * into session.c, not up into kvcache.c.
 */
#ifndef DP_KVCACHE_INTERNAL_H
#define DP_KVCACHE_INTERNAL_H

#include <string.h>

#include "io/io.h"
#include "kvcache/journal.h"
#include "base/clock.h"
#include "kvcache/kvcache.h"
#include "kvcache/tier.h"
#include "sched/topo.h"

#define DP_KV_PAGE_BYTES DP_V4_PAGE_BYTES
#define DP_KV_HDR_BYTES 4096u
#define DP_KV_SLOT_BYTES (DP_KV_HDR_BYTES + DP_KV_PAGE_BYTES)
#define DP_KV_SLOT_MAGIC "DPKVPG01"
#define DP_KV_FILE_MAGIC "DPKVSLOT"
#define DP_KV_SLOTS_FILE "slots"
#define DP_KV_SLOT_GROW 64u /* slots added to the file at a time */

/* ---- DRAM tier: a fixed pool of pinned pages ------------------------------ */

struct dp_kv_pool {
	struct dp_topo_mem mem;
	uint32_t n_pages;
	uint32_t *free_list; /* stack of free page indices */
	uint32_t n_free;
	uint32_t *refs;	     /* holders per page: sessions' states (units share frozen
			      * pages), a restore, a writeback */
	uint32_t *gen;	     /* per page: bumped each time it is taken from the free list */
	bool locked; /* mlock succeeded */
};

int dp_kv_pool_init(struct dp_kv_pool *p, uint64_t bytes, int node);
void dp_kv_pool_fini(struct dp_kv_pool *p);
/* A free page index (held once), or -ENOSPC. */
int dp_kv_pool_get(struct dp_kv_pool *p);
/* One more holder of a held page (a writeback reading it while the session
 * moves on); each holder puts it once, and the last put frees it. */
void dp_kv_pool_hold(struct dp_kv_pool *p, uint32_t idx);
void dp_kv_pool_put(struct dp_kv_pool *p, uint32_t idx);
/*
 * Sharing frozen pages (model/v4.h: dp_v4_seq_tag_page). A held page's tag
 * names it and its current filling: (generation << 32) | index, never 0. A
 * pool page's bytes are written only between dp_kv_pool_get and the first
 * time anyone else sees it, so while the tag is live (the page is still
 * held, under the same generation) it holds the bytes it was tagged for.
 * dp_kv_pool_share holds the page a live tag names and returns its index,
 * or -ENOENT (freed since, or taken again; or too many holders).
 */
uint64_t dp_kv_pool_tag(const struct dp_kv_pool *p, uint32_t idx);
int dp_kv_pool_share(struct dp_kv_pool *p, uint64_t tag);
static inline void *dp_kv_pool_page(const struct dp_kv_pool *p, uint32_t idx)
{
	return (char *)p->mem.addr + (size_t)idx * DP_KV_PAGE_BYTES;
}

/* ---- NVMe tier: the slot file ---------------------------------------------- */

/* What a slot claims to hold; checked against the snapshot on load. */
struct dp_kv_slot_id {
	const char *session;
	uint64_t position;
	uint16_t layer;
	uint8_t kind;
	uint32_t index;
};

struct dp_kv_slots {
	int fd;
	bool direct;
	uint64_t n_slots;   /* slots the file holds */
	uint64_t max_slots; /* 0: unlimited */
	uint8_t *used;	    /* bitmap, n_slots bits */
	uint32_t *refs;	    /* per slot: holders (snapshots naming it, a writeback's plan) */
	uint32_t *gen;	    /* per slot: bumped each time it is allocated */
	struct dp_kv_slot_entry *tab; /* the content index (dp_kv_slots_find) */
	uint64_t tab_cap, tab_n;
	uint64_t n_used;
	uint64_t hint;	    /* where to look for a free slot next */
	void *hdr;	    /* DP_KV_HDR_BYTES, aligned, scratch header */
	struct dp_io *io;   /* NULL: synchronous pwritev/preadv */
	struct dp_io_chan *chan;
	uint32_t io_file;
	bool reset; /* its header was damaged: set aside (reset_name), a new file made */
	char reset_name[256];
};

/* Open (creating) the slot file in the state directory dirfd (dir: its
 * name, for messages). */
int dp_kv_slots_open(struct dp_kv_slots *sl, int dirfd, const char *dir, bool direct,
		     uint64_t max_bytes, struct dp_io *io, char *err, size_t err_len);
void dp_kv_slots_close(struct dp_kv_slots *sl);
/* Reserve a free slot (growing the file), held once. -ENOSPC when full. */
int dp_kv_slots_alloc(struct dp_kv_slots *sl, uint64_t *ret_slot);
void dp_kv_slots_mark(struct dp_kv_slots *sl, uint64_t slot); /* one more holder (replay) */
void dp_kv_slots_hold(struct dp_kv_slots *sl, uint64_t slot); /* one more holder */
/* One holder fewer; the last one frees it. */
void dp_kv_slots_free(struct dp_kv_slots *sl, uint64_t slot);
/*
 * Shared slots. A snapshot page whose bytes a held slot already holds (same
 * layer, kind, index, data checksum and tenant domain) names that slot
 * instead of writing a copy: a session evicted again after a restore
 * rewrites only the pages that changed, and the prefix units a turn leaves
 * share the session's pages on NVMe as they do in DRAM. A slot's bytes
 * never change while it is held (writes go only to freshly allocated
 * slots), so the index names only slots whose bytes are durable and as
 * recorded: a snapshot's pages are indexed once its record is durable
 * (writeback.c, dp_kv_wb_finalize) or at open (the replayed snapshots). An
 * entry of a slot freed since is stale (its generation moved on) and never
 * found. Index memory: one entry per distinct page, at most half full.
 */
struct dp_kv_slot_key {
	uint64_t sum;	 /* xxh3 of the page data */
	uint64_t domain; /* who may share it: dp_kv_slot_domain */
	uint32_t index;
	uint16_t layer;
	uint8_t kind;
};
struct dp_kv_slot_entry {
	struct dp_kv_slot_key k;
	uint64_t slot;
	uint32_t gen;
	bool used;
};
/* A held slot with these bytes (0), or -ENOENT. */
int dp_kv_slots_find(struct dp_kv_slots *sl, const struct dp_kv_slot_key *k, uint64_t *ret_slot);
/* Index a held slot whose bytes are durable and k's (a failed allocation of
 * the index only loses the sharing). */
void dp_kv_slots_index(struct dp_kv_slots *sl, uint64_t slot, const struct dp_kv_slot_key *k);
/* Forget k's entry if it names slot (its page failed its checks). */
void dp_kv_slots_unindex(struct dp_kv_slots *sl, uint64_t slot, const struct dp_kv_slot_key *k);
/* Write n pages (4 KiB-aligned host memory) with their headers into the
 * given (allocated) slots and make them durable (fdatasync); sums[] are the
 * pages' data checksums (the caller's, dp_kv_snap_plan). Through the io engine when there is one: every
 * write in flight at once, then one barrier sync. */
int dp_kv_slots_write_many(struct dp_kv_slots *sl, const uint64_t *slots,
			   const struct dp_kv_slot_id *ids, void *const *pages, size_t n,
			   const uint64_t *sums);
/* The same writes as requests for an io channel of the caller's (the slots
 * must be allocated): hdrs from dp_kv_slots_headers_alloc(n), reqs room for
 * 2n + 1 (each page's header and data, then a barrier fdatasync). Only with
 * an io engine (-EINVAL without). hdrs and pages must stay until the
 * requests are done. */
void *dp_kv_slots_headers_alloc(size_t n);
int dp_kv_slots_write_reqs(struct dp_kv_slots *sl, const uint64_t *slots,
			   const struct dp_kv_slot_id *ids, void *const *pages, size_t n,
			   const uint64_t *sums, uint8_t *hdrs, struct dp_io_req *reqs);
/* Check one page read from a slot: its header (hdr, DP_KV_HDR_BYTES) must be
 * whole (its own checksum) and say id's layer, kind and index, this format
 * and sum, and its data must hash to sum. 0 or -EBADMSG. The header's
 * session and position name the snapshot that wrote the slot, which for a
 * shared slot is another (or an earlier) one: not compared. A page's zero
 * tail (whole 4 KiB blocks of zeros at its end) is not written; the header
 * says how long it is, and the check zeroes it in page (read whole, it holds
 * whatever the slot held before) before hashing, so page_hash, the read
 * buffer's, is used only for a page without one. Returns the zero tail's
 * bytes (>= 0: the page checks) or -EBADMSG. */
/* The same with the page's XXH3 already computed (*page_hash; NULL: computes it). */
int dp_kv_slot_check_hashed(const struct dp_kv_slot_id *id, uint64_t sum, const void *hdr,
			    void *page, const uint64_t *page_hash);
int dp_kv_slot_check(const struct dp_kv_slot_id *id, uint64_t sum, const void *hdr, void *page);

/* Read n pages and check each header against ids[i] and data against
 * sums[i]. Returns 0 if all check, -EBADMSG if any fails (torn, corrupt,
 * foreign, other version; *ret_bad counts them), or an I/O error. */
int dp_kv_slots_read_many(struct dp_kv_slots *sl, const uint64_t *slots,
			  const struct dp_kv_slot_id *ids, const uint64_t *sums, void *const *pages,
			  size_t n, size_t *ret_bad);

/* ---- sessions --------------------------------------------------------------- */

/* One page of a persisted snapshot. */
struct dp_kv_snap_page {
	uint16_t layer;
	uint8_t kind;
	uint32_t index;
	uint64_t slot;
	uint64_t sum; /* xxh3 of the page data */
};

struct dp_kv_session {
	char id[DP_KV_SESSION_ID_MAX + 1];
	int32_t *hist;
	uint64_t len, cap;
	uint64_t committed; /* history tokens durable in the journal */
	uint32_t owner;	    /* uid, or DP_KV_OWNER_NONE (kvcache.h) */
	bool lost;	    /* journal damage took part of its history: it has none (kvcache.h) */
	bool lost_now;	    /* ... found by this open's replay (counted in settle) */

	enum dp_kv_tier tier;
	uint64_t state_pos; /* position the state stands at (tier != NONE) */
	struct dp_v4_seq *seq; /* DEVICE */
	/* DRAM: one pool page per state page, in dp_v4_seq_pages order */
	struct dp_v4_page_ref *dram_refs;
	uint32_t *dram_pages;
	size_t n_dram;

	/* newest durable snapshot (any tier keeps it: crash recovery) */
	struct dp_kv_snap_page *snap;
	size_t n_snap;
	uint64_t snap_pos;
	bool has_snap;

	struct dp_kv_restore *restore; /* a layer-by-layer restore in flight */
	struct dp_kv_srestore *srestore; /* ... from the shared tier (restore-shared.c) */
	struct dp_kv_wb *wb;	       /* an asynchronous writeback in flight */
	bool busy;
	uint64_t last_used_ns;
	struct dp_kv_session *lru_prev, *lru_next; /* idle sessions; head = most recent */
	struct dp_kv_session *hash_next;
	size_t index; /* in kv->list */

	/* a prefix unit (kvcache.h, "Prefix units"): its id is DP_KV_UNIT_MARK,
	 * the tenant tag in hex, the chain key, a counter */
	bool unit;
	struct dp_kv_tenant tenant;
	uint64_t unit_key; /* chain key over tenant and hist[0..len) */
	struct dp_kv_session *unit_next; /* in kv->units[unit_key & mask] */
	/* lent from NVMe (unit.c): the unit's own sequence is lent (lent), and
	 * requests for it meanwhile get twins: sessions outside the table,
	 * restoring the same snapshot (a copy of its page list, the same slots)
	 * into sequences of their own. The unit stays busy until the lend and
	 * every twin are back (its slots are never freed under a twin's read). */
	bool lent;
	bool twin_bad;			 /* a twin's page failed its checks: drop it then */
	uint32_t twins;			 /* twins out */
	struct dp_kv_session *twin_of;	 /* a twin: its unit */
	/* a unit from the shared tier (unit.c, dp_kv_unit_adopt_shared): outside
	 * the table, its own copy of the tokens, freed when given back */
	bool shared_unit;
	uint64_t shared_cookie; /* the caller's name for it (dp_kv_unit_take_shared_bad) */
};

struct dp_kv {
	struct dp_kv_opts opts;
	struct dp_kv_stall stalls[DP_KV_STALL_SPANS]; /* the last gate waits, a ring */
	uint32_t stall_head, n_stalls;
	char state_dir[4096];
	int dirfd; /* the state directory, checked once at open: every file is opened in it */
	struct dp_v4_model *m;
	struct dp_gpu *g;
	struct dp_journal *j;
	struct dp_kv_pool pool;
	uint32_t pool_region; /* the pool registered with the io engine */
	bool pool_registered;
	struct dp_kv_slots slots;
	struct dp_io_chan *restore_chan; /* HIGH priority: restores; slots.chan is LOW */
	struct dp_io_chan *wb_chan;	 /* LOW: asynchronous writebacks, in the restore
					  * queue's order (NULL: none) */
	struct dp_kv_rq *rq;		 /* rqueue.c: the restore queue (NULL until used) */
	uint64_t rq_window;		 /* its byte cap (0: the default) */
	struct dp_kv_wb *wb_head, *wb_tail; /* writebacks in flight, in ticket order */
	struct dp_kv_wb *wb_recorded;	    /* written and journaled, not yet synced */
	uint64_t wb_leaving[DP_KV_TIER_MAX]; /* pages of a tier its writebacks will free */
	uint64_t wb_pages;		     /* pages being written out */
	uint64_t device_pages;
	uint64_t host_state_pages; /* host-resident state pages (CSA entries in host memory) */

	struct dp_kv_session **list;
	size_t n, cap;
	struct dp_kv_session **hash;
	size_t hash_len; /* power of two */
	struct dp_kv_session *lru_head, *lru_tail;
	/* prefix units by chain key (power of two buckets) */
	struct dp_kv_session **units;
	size_t units_len, n_units;

	struct dp_kv_stats st;
	struct dp_kv_shared_restore_stats shared_st;	   /* restore-shared.c: sessions' */
	struct dp_kv_shared_restore_stats shared_unit_st; /* ... prefix units' */
	/* cookies of units from the shared tier given back bad, not yet taken
	 * (unit.c; a ring: the oldest are overwritten) */
	uint64_t shared_bad[16];
	uint32_t shared_bad_head, n_shared_bad;
};

/* session.c: prefix units' chain keys and index (kvcache.c adds and
 * removes, unit.c looks up). The key of tokens[0..n) is
 * step(...step(seed(tenant), t0)..., t(n-1)), truncated to
 * opts.unit_key_bits: one step per token, so a lookup sees every prefix. */
uint64_t dp_kv_unit_seed(const struct dp_kv *kv, const struct dp_kv_tenant *t);
uint64_t dp_kv_unit_step(const struct dp_kv *kv, uint64_t key, int32_t token);
/* Parse a unit id's tenant tag; false if id is not a unit id. */
bool dp_kv_unit_id_parse(const char *id, struct dp_kv_tenant *ret);
int dp_kv_unit_index_add(struct dp_kv *kv, struct dp_kv_session *s);
void dp_kv_unit_index_del(struct dp_kv *kv, struct dp_kv_session *s);
/* A fresh device sequence at pos for s filled from host pages (refs order);
 * -EBADMSG when the page lists disagree. */
int dp_kv_seq_from_host(struct dp_kv *kv, const struct dp_kv_session *s, uint64_t pos,
			const struct dp_v4_page_ref *refs, void *const *pages, size_t n,
			struct dp_v4_seq **ret_seq);

/* A fresh device sequence for s (DRAM tier) at its state_pos, from its pool
 * pages; the sequence's frozen pages are tagged with the pool pages they
 * came from, so that a copy of it made later (a unit left, a demotion)
 * shares them. */
int dp_kv_seq_from_pool(struct dp_kv *kv, const struct dp_kv_session *s,
			struct dp_v4_seq **ret_seq);
/* dst is a copy of the sequence whose pages src lists (the same list): its
 * frozen pages get the same tags, so that copies made of dst share the pool
 * pages the original's copies hold. */
void dp_kv_seq_copy_tags(struct dp_v4_seq *dst, const struct dp_v4_page_ref *src, size_t n);
/*
 * Copy seq's state into the DRAM pool: *ret_refs (page pointers cleared)
 * and *ret_idx, one pool page per state page in dp_v4_seq_pages order,
 * each held once for the caller. A frozen page whose tag names a live pool
 * page is not copied: that page is held again (shared); every other page
 * is copied into a new pool page, and a frozen one is tagged with it. So a
 * conversation's copies hold its growing streams once, plus each copy's
 * small state (window, compressor buffers) and tail pages. -ENOSPC (nothing
 * held) when the pool lacks room for the pages to copy. *ret_copied: the
 * bytes copied (NULL: not wanted).
 */
int dp_kv_state_to_pool(struct dp_kv *kv, struct dp_v4_seq *seq, struct dp_v4_page_ref **ret_refs,
			uint32_t **ret_idx, size_t *ret_n, uint64_t *ret_copied);

/* kvcache.c, for unit.c (above it): a session under an id that need not be
 * a client's (a unit's), and the LRU's most recent end. */
int dp_kv_session_add(struct dp_kv *kv, const char *id, struct dp_kv_session **ret);
void dp_kv_lru_touch(struct dp_kv *kv, struct dp_kv_session *s);

/* session.c: one session's state, for kvcache.c, restore.c and writeback.c */
/* Let go of s's snapshot (its slots are freed) or of its DRAM copy (its pool
 * pages are put). */
void dp_kv_snap_release(struct dp_kv *kv, struct dp_kv_session *s);
/* Who may share s's slots (kvcache-internal.h, "Shared slots"): a unit's
 * tenant; a client's session, its owner's tenant without a salt (so a
 * session and the units its turns leave share, as in DRAM). */
uint64_t dp_kv_slot_domain(const struct dp_kv_session *s);
/* The pages a snapshot plan writes: arrays of room for all its pages, the
 * caller's; the plan fills the first n (slot, checksum, what the header says,
 * the page) in refs order. */
struct dp_kv_snap_writes {
	struct dp_kv_slot_id *ids;
	uint64_t *slots, *sums;
	void **pages;
	size_t n;
};
/* Plan a snapshot of s's pages at pos (refs order, host memory): each
 * page's checksum, and its slot: one already holding these bytes (held once
 * more) or a fresh one, whose page goes to w (the pages to write). On
 * failure nothing stays held. */
int dp_kv_snap_plan(struct dp_kv *kv, const struct dp_kv_session *s, uint64_t pos,
		    const struct dp_v4_page_ref *refs, void *const *pages, size_t n,
		    struct dp_kv_snap_page *sp, struct dp_kv_snap_writes *w);
/* Let go of a plan's (or a snapshot's) slots. */
void dp_kv_snap_unplan(struct dp_kv *kv, const struct dp_kv_snap_page *sp, size_t n);
/* s's snapshot is durable: its slots may be shared from now on. */
void dp_kv_snap_index(struct dp_kv *kv, const struct dp_kv_session *s);
/* Page i of s's snapshot failed its checks: no later snapshot shares it. */
void dp_kv_snap_page_bad(struct dp_kv *kv, const struct dp_kv_session *s, size_t i);
void dp_kv_dram_release(struct dp_kv *kv, struct dp_kv_session *s);
/* s (DEVICE or DRAM tier) has a snapshot that holds its state: let go of the
 * device sequence or the DRAM copy; s is on the NVMe tier, at snap_pos. */
void dp_kv_state_drop_to_snap(struct dp_kv *kv, struct dp_kv_session *s);
/* s's state pages (DRAM or DEVICE tier) in host memory: the refs, and where
 * each page's data is (a DRAM page itself, or in *ret_bounce, a download of
 * the device pages; NULL for DRAM). The caller frees the three arrays. */
int dp_kv_state_to_host(struct dp_kv *kv, struct dp_kv_session *s, struct dp_v4_page_ref **ret_refs,
			void ***ret_pages, void **ret_bounce, size_t *ret_n);
/* A fresh device sequence at pos for session s, with its Engram hashing
 * history (the last tokens before pos, from s's token history) where the
 * model has Engram layers. */
int dp_kv_seq_new_at(struct dp_kv *kv, const struct dp_kv_session *s, uint64_t pos,
		     struct dp_v4_seq **ret_seq);

/* layer_end[l]: one past the last of refs[0..n) (in layer order) on layer
 * l or below; a layer without pages ends where the one before it does. */
void dp_kv_layer_ends(const struct dp_v4_page_ref *refs, size_t n, uint32_t *layer_end,
		      uint32_t n_layers);

/* Append a snapshot record to j (and fdatasync it if sync). */
int dp_kv_journal_snapshot(struct dp_journal *j, const struct dp_kv_session *s, uint64_t pos,
			   const struct dp_kv_snap_page *pages, size_t n, bool sync);
/*
 * Optional trailing fields of HISTORY and RESET records, after the tokens:
 * u16 tag | u16 length | value. Builds that predate a tag skip it (builds
 * from before these fields stop reading at the last token), so a journal
 * stays readable both ways.
 */
enum dp_kv_jext {
	DP_KV_JEXT_OWNER = 1, /* u32 uid of the session's owner (absent: none) */
	DP_KV_JEXT_LOST = 2,  /* RESET: the session's history was lost (no tokens follow) */
	DP_KV_JEXT_MAX,
};
/* A field's tag and length; its value follows. */
void dp_kv_jbuf_put_ext(struct dp_jbuf *b, uint16_t tag, uint16_t len);
/* s's owner field, if it has an owner. On every history record, not only
 * the first: a damaged one does not take the owner with it. */
void dp_kv_jbuf_put_owner(struct dp_jbuf *b, const struct dp_kv_session *s);

/*
 * writeback.c: demotion to NVMe without waiting. dp_kv_wb_start copies what
 * it needs (DRAM pages: one more hold each; device pages: downloaded) and
 * queues the slot writes, then an fdatasync, in the restore queue
 * (dp_kv_write_queue); the session stays where it is and may be used
 * meanwhile. dp_kv_wb_progress (from dp_kv_pump, pump.c) moves them on and,
 * once a writeback's data is durable, appends its snapshot record to the
 * journal; the next journal sync (a commit, or dp_kv_flush) makes it
 * durable, and dp_kv_wb_finalize then installs the snapshot (the old one's
 * slots are freed only now) and, if the session is still idle at that
 * position, moves it to the NVMe tier.
 */
struct dp_kv_wb;
int dp_kv_wb_start(struct dp_kv *kv, struct dp_kv_session *s);
void dp_kv_wb_progress(struct dp_kv *kv);
void dp_kv_wb_finalize(struct dp_kv *kv); /* after a successful journal sync */
/* Wait for every writeback, sync the journal, finalize. */
int dp_kv_wb_settle(struct dp_kv *kv);
/* An explicit eviction waits on s's writeback: its writes are due at once. */
void dp_kv_wb_expedite(struct dp_kv *kv, struct dp_kv_session *s);
void dp_kv_wb_detach(struct dp_kv *kv, struct dp_kv_session *s); /* s goes away */
/* dp_kv_commit (kvcache.h, defined in writeback.c) when s's durable history
 * stops short of pos: a snapshot at pos must never be ahead of it. */
int dp_kv_commit_if_behind(struct dp_kv *kv, const struct dp_kv_session *s, uint64_t pos);

/* restore.c: begin a layer-by-layer restore of a DRAM or NVME session into
 * a new sequence with a gate; complete one (wait for every layer; on a
 * failure free it and return -EBADMSG). */
struct dp_kv_restore;
int dp_kv_restore_begin(struct dp_kv *kv, struct dp_kv_session *s, struct dp_v4_seq **ret_seq);
int dp_kv_restore_complete(struct dp_kv *kv, struct dp_kv_session *s);
/* A step begins: restores left out of the last step move their deadlines
 * to this one, and the restore queue tops the io thread up (its gates top
 * it up too). dp_kv_pump (pump.c) calls it once per step. Free the queue
 * at close. Both rqueue.c. */
struct dp_kv_rq;
void dp_kv_restore_step(struct dp_kv *kv);
void dp_kv_restore_queue_free(struct dp_kv *kv);
/*
 * rqueue.c: a writeback's slot writes (writeback.c) go through the restore
 * queue too, as DP_RSCHED_WRITEBACK items: issued in deadline order with
 * the reads, onto the LOW writeback channel (kv->wb_chan), its sync (a
 * barrier) right behind the last of them. The job is the caller's and must stay
 * until finished; its results are read as they finish (err: the first
 * error; a failed write skips the sync). dp_kv_write_queue queues it (0,
 * -EINVAL, -ENOTSUP without both channels, -ENOMEM); dp_kv_write_pump hands
 * the io thread writes while they come first in the queue's order (never a
 * read: at a step's start admission has not decided yet); dp_kv_write_wait
 * waits until it is finished.
 */
struct dp_kv_wjob {
	const struct dp_io_req *reqs; /* 2 per page, header then data (dp_kv_slots_write_reqs) */
	const struct dp_io_req *sync; /* behind them, DP_IO_F_BARRIER (NULL: none) */
	size_t n;		      /* pages */
	size_t issued;		      /* pages handed to the io thread */
	size_t left;		      /* pages not finished (written, failed or dropped) */
	int err;
	uint32_t stream;
	bool queued;	/* its stream is open */
	bool sync_sent; /* behind its last write */
	bool due_now;	/* someone waits: due at once (dp_kv_write_expedite) */
	bool finished;	/* every page and the sync done, or given up */
};
int dp_kv_write_queue(struct dp_kv *kv, struct dp_kv_wjob *j);
void dp_kv_write_pump(struct dp_kv *kv);
/* A client waits for j (an explicit eviction): its writes are due at once,
 * ahead of reads needed later, past the writeback class's caps. */
void dp_kv_write_expedite(struct dp_kv *kv, struct dp_kv_wjob *j);
void dp_kv_write_wait(struct dp_kv *kv, struct dp_kv_wjob *j);

/* restore-shared.c: a restore from the shared tier (kvcache/tier.h).
 * complete: every layer in, or on a failure wait out the tier's reads, free
 * it and return -EBADMSG (as dp_kv_restore_complete, which calls it). */
struct dp_kv_srestore;
int dp_kv_srestore_complete(struct dp_kv *kv, struct dp_kv_session *s);
void dp_kv_srestore_info(const struct dp_kv_srestore *r, struct dp_kv_restore_info *ret);

/* Copy one state page between host memory and the page a ref names: backend
 * memory, or host memory for host-resident pages (CSA entries in host
 * memory, model/v4.h), which cross no bus. */
static inline int dp_kv_page_in(struct dp_kv *kv, const struct dp_v4_page_ref *ref, const void *src)
{
	if (ref->host) {
		memcpy(ref->page, src, DP_KV_PAGE_BYTES);
		return 0;
	}
	return dp_gpu_upload(kv->g, ref->page, src, DP_KV_PAGE_BYTES);
}

static inline int dp_kv_page_out(struct dp_kv *kv, void *dst, const struct dp_v4_page_ref *ref)
{
	if (ref->host) {
		memcpy(dst, ref->page, DP_KV_PAGE_BYTES);
		return 0;
	}
	return dp_gpu_download(kv->g, dst, ref->page, DP_KV_PAGE_BYTES);
}

#endif /* DP_KVCACHE_INTERNAL_H */
