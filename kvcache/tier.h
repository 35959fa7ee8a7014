/* SPDX-License-Identifier: MIT */
/*
 * kvcache/tier.h — the shared KV tier: state pages and session manifests in
 * a store every host reaches (Ceph RADOS), and which host owns a session.
 *
 * What lives there, per session id S (object names in the pool):
 *
 *   dp.s.S             the session object: its lease (a RADOS exclusive
 *                      lock named "dp.owner" with a duration; the holder's
 *                      host id is the lock's description), its owner epoch
 *                      (xattr "dp.epoch", a decimal number) and its
 *                      manifest (the object's data: what the caller writes,
 *                      framed with a length and an xxh3, so a torn or
 *                      foreign manifest reads as -EBADMSG, never as data).
 *   dp.g.S.E.N         immutable segment objects of page groups (E: the
 *                      writer's epoch, N: the writer's counter): a 4 KiB
 *                      header (magic, version, page count and size, each
 *                      page's tag and xxh3, the header's own xxh3) and up
 *                      to DP_KV_SHARED_GROUP_PAGES pages after it (1-4 MiB
 *                      with 64 KiB pages). Pages are read back by sub-range:
 *                      one read op fetches the header and the pages asked
 *                      for, and every page is checked against its xxh3.
 *
 * Durability: a segment is written whole (write_full) and is never changed;
 * it counts only once a manifest written after its completion names it. So
 * a turn is durable on the shared tier when its manifest put completes.
 *
 * Ownership and fencing. One host serves a session at a time: it holds the
 * session object's lock (dp_kv_shared_lease_take), renewed before it expires
 * (dp_kv_shared_lease_renew; the io thread's job). A take while another live
 * host holds it gives -EBUSY and that host's id. When the holder's lease
 * expired (it died, or paused past it), a take succeeds and bumps the owner
 * epoch with a compare-and-swap on the xattr. Every manifest write is one
 * RADOS write op that asserts (cmpxattr) the writer's epoch: a host that
 * lost its lease — even one that does not know it yet, paused by SIGSTOP or
 * cut off — cannot write the manifest again (-ECANCELED, and the lease is
 * marked lost). Its segments may still land but no manifest names them.
 *
 * Asynchrony: page-group puts and gets and manifest puts are librados aio.
 * librados finishes them on its own threads; they are queued, and
 * dp_kv_shared_fd() becomes readable (an eventfd). The thread that polls it
 * (the io thread's loop) calls dp_kv_shared_reap(), which runs each finished
 * operation's callback on that thread. Nothing here blocks the caller except
 * dp_kv_shared_open, the lease calls and dp_kv_shared_manifest_get (bounded by
 * the op timeout): call those off the compute path.
 *
 * Threads: one thread at a time per struct dp_kv_shared (submit and reap from
 * the same thread, or hand it over with a lock).
 */
#ifndef DP_KVCACHE_TIER_H
#define DP_KVCACHE_TIER_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum dp_kv_shared_tier {
	DP_KV_SHARED_NONE,
	DP_KV_SHARED_RADOS,
	DP_KV_SHARED_MAX,
};
const char *dp_kv_shared_tier_name(enum dp_kv_shared_tier t); /* "none", "rados" */
int dp_kv_shared_tier_parse(const char *name, enum dp_kv_shared_tier *ret);

/* Whether this build has the RADOS backend (librados found at build time). */
bool dp_kv_shared_rados_available(void);

#define DP_KV_SHARED_GROUP_PAGES 64	 /* pages of one segment, at most */
#define DP_KV_SHARED_HEADER_BYTES 4096	 /* a segment's header */
#define DP_KV_SHARED_SEGMENT_MAX (4u << 20) /* header + pages, at most */
#define DP_KV_SHARED_HOST_ID_MAX 64
#define DP_KV_SHARED_MANIFEST_MAX (64u << 20)

struct dp_kv_shared_opts {
	const char *conf;    /* ceph.conf path; NULL: librados's default search */
	const char *pool;    /* required */
	const char *client;  /* client name without "client."; NULL: "admin" */
	const char *host_id; /* this host; [A-Za-z0-9._-], 1..DP_KV_SHARED_HOST_ID_MAX */
	uint32_t lease_ms;   /* lease duration (0: 10000); renew well before */
	uint32_t timeout_ms; /* connect and op timeout (0: 10000) */
};

struct dp_kv_shared;

/* Connect: -ENOTCONN/-ETIMEDOUT (a message naming the conf and pool) when
 * the cluster cannot be reached, -ENOENT for a missing pool, -EINVAL for bad
 * options, -EOPNOTSUPP when built without librados. */
int dp_kv_shared_open(const struct dp_kv_shared_opts *opts, struct dp_kv_shared **ret, char *err,
		    size_t err_len);
/* Waits for operations in flight (their callbacks are not run), then
 * disconnects. Leases held are released. NULL is fine. */
void dp_kv_shared_close(struct dp_kv_shared *t);
const char *dp_kv_shared_host_id(const struct dp_kv_shared *t);

/* Completion delivery: the fd is readable while finished operations wait;
 * reap runs up to max of their callbacks (0: all) and returns how many. */
int dp_kv_shared_fd(const struct dp_kv_shared *t);
int dp_kv_shared_reap(struct dp_kv_shared *t, unsigned max);
/* Operations submitted and not yet reaped. */
unsigned dp_kv_shared_inflight(const struct dp_kv_shared *t);

/* A finished operation: res is 0 (or bytes for manifest gets) or a negative
 * errno: -EBADMSG a page or header failed its checks, -ENOENT no such
 * object, -ECANCELED fenced (the lease is lost), -ETIMEDOUT. */
typedef void (*dp_kv_shared_cb)(void *arg, int res);

struct dp_kv_shared_page {
	uint64_t tag;	/* the caller's name for the page (layer, stream, index) */
	void *buf;	/* page_bytes; read into on get, copied from on put */
};

/* Segment object names: dp.g.<session>.<epoch>.<n>; name must hold 256. */
int dp_kv_shared_segment_name(const char *session, uint64_t epoch, uint64_t n, char *name,
			    size_t name_len);

/* Write a page group as one immutable segment. The pages are copied before
 * this returns (the caller may reuse them at once). n: 1..GROUP_PAGES,
 * header + n * page_bytes <= SEGMENT_MAX. */
int dp_kv_shared_put(struct dp_kv_shared *t, const char *segment, const struct dp_kv_shared_page *pages,
		   uint32_t n, size_t page_bytes, dp_kv_shared_cb cb, void *arg);
/* Read pages idx[0..n) of a segment into pages[i].buf (sub-range reads of
 * one op) and check them: each must have the tag pages[i].tag asked for and
 * its checksum. The buffers belong to the tier until the callback. */
int dp_kv_shared_get(struct dp_kv_shared *t, const char *segment, const uint32_t *idx,
		   const struct dp_kv_shared_page *pages, uint32_t n, size_t page_bytes,
		   dp_kv_shared_cb cb, void *arg);
/* Remove a segment (-ENOENT in the callback if it was not there). */
int dp_kv_shared_delete(struct dp_kv_shared *t, const char *segment, dp_kv_shared_cb cb, void *arg);

/*
 * Leases. take: 1 and *ret_epoch (the epoch this host writes under, one
 * above the last holder's) when the session was free or its lease expired
 * (this host takes it: whatever it held of the session before may be
 * stale; read the manifest), 0 when this host held it already (the lease is
 * renewed, the epoch unchanged); -EBUSY with the owner's
 * host id in owner[] while another live host holds it. renew: extends a
 * lease this host holds (-ENOLCK if it was lost: a take by another host
 * after expiry). release: gives it up (the epoch stays; the next owner
 * bumps it). Synchronous.
 */
int dp_kv_shared_lease_take(struct dp_kv_shared *t, const char *session, uint64_t *ret_epoch,
			  char *owner, size_t owner_len);
int dp_kv_shared_lease_renew(struct dp_kv_shared *t, const char *session);
/* Whether this host believes it holds the session (no cluster round trip). */
bool dp_kv_shared_lease_held(struct dp_kv_shared *t, const char *session);
int dp_kv_shared_lease_release(struct dp_kv_shared *t, const char *session);
/* The session's holder ("" when none or expired) and epoch. */
int dp_kv_shared_lease_owner(struct dp_kv_shared *t, const char *session, char *owner,
			   size_t owner_len, uint64_t *ret_epoch);

/* Write the session's manifest (len <= MANIFEST_MAX; copied), conditional on
 * this host's epoch from its last take: -ECANCELED in the callback when
 * another host took the session since (fenced). -ENOLCK at once if this
 * host holds no lease on the session. */
int dp_kv_shared_manifest_put(struct dp_kv_shared *t, const char *session, const void *data,
			    size_t len, dp_kv_shared_cb cb, void *arg);
/* Read it (synchronous): *ret (malloc'd, the caller frees) and *ret_len;
 * -ENOENT none, -EBADMSG damaged. */
int dp_kv_shared_manifest_get(struct dp_kv_shared *t, const char *session, void **ret,
			    size_t *ret_len);

/*
 * Membership: which hosts are on the tier, and how clients reach them.
 * Each member holds the lock "dp.member" of object dp.m.<host> (exclusive,
 * with a duration of ttl_ms: a second process with the same host id cannot
 * take it while the first is alive) and keeps an entry, key <host>, in the
 * omap of object dp.members (one read lists everyone). beat renews both;
 * a reader judges an entry live when its beat is younger than its ttl
 * (wall clocks: hosts are assumed NTP-synced well within a ttl). Entries of
 * dead members stay until that host id joins again, or until another member
 * forgets them (daemon/cluster.c: once dead for 10 ttls, a minute at least).
 * Synchronous (one or two round trips each, bounded by the op timeout).
 */
#define DP_KV_SHARED_ADDR_MAX 128
struct dp_kv_shared_member {
	char host[DP_KV_SHARED_HOST_ID_MAX + 1];
	char socket[DP_KV_SHARED_ADDR_MAX]; /* its Unix socket path ("" none) */
	char http[DP_KV_SHARED_ADDR_MAX];   /* its HTTP listen address ("" none) */
	uint64_t start_ms;		    /* CLOCK_REALTIME, ms */
	uint64_t beat_ms;		    /* its last heartbeat, CLOCK_REALTIME ms */
	uint32_t ttl_ms;		    /* live while now - beat_ms <= ttl_ms */
};
/* Join as self (its host must be this tier's host id; beat_ms is set here).
 * -EBUSY: another live process holds the host id; *ret_other (may be NULL)
 * is its entry (host only when it has none). */
int dp_kv_shared_member_join(struct dp_kv_shared *t, const struct dp_kv_shared_member *self,
			     struct dp_kv_shared_member *ret_other);
/* Renew the membership lock and write the heartbeat. -ENOLCK: the lock was
 * lost (this process paused past its ttl and another took the host id). */
int dp_kv_shared_member_beat(struct dp_kv_shared *t, const struct dp_kv_shared_member *self);
/* Leave: drop the entry and the lock. */
int dp_kv_shared_member_leave(struct dp_kv_shared *t);
/* Remove another member's entry (one long dead: its host id rejoins by
 * writing it again). 0 also when there was none. */
int dp_kv_shared_member_forget(struct dp_kv_shared *t, const char *host);
/* Every entry, live or not: *ret (malloc'd, the caller frees), *ret_n.
 * Entries that do not parse are skipped. */
int dp_kv_shared_members(struct dp_kv_shared *t, struct dp_kv_shared_member **ret, size_t *ret_n);

/*
 * Watching the member list (RADOS watch/notify on dp.members), so that a
 * change is seen at once rather than at the next periodic re-read: a member
 * that joins or leaves notifies, and every watcher's cb(arg, 0) runs. cb
 * runs on a librados thread: it may only note the change and wake the
 * thread that re-reads the list (no tier call from there). cb(arg, err < 0)
 * says the watch was lost (the OSD restarted, the connection timed out):
 * notifies may have been missed; re-read, and dp_kv_shared_members_rewatch.
 * Liveness is still judged by heartbeat age: a member that dies notifies
 * nobody. Synchronous except the notify; same thread rules as the rest
 * (cb excepted).
 */
struct dp_kv_shared_watch;
typedef void (*dp_kv_shared_watch_cb)(void *arg, int err);
int dp_kv_shared_members_watch(struct dp_kv_shared *t, dp_kv_shared_watch_cb cb, void *arg,
			       struct dp_kv_shared_watch **ret);
/* Drop a lost watch and watch again (cb and arg kept). */
int dp_kv_shared_members_rewatch(struct dp_kv_shared *t, struct dp_kv_shared_watch *w);
/* Tell every watcher the list changed. Not waited for: a notify completes
 * once every watcher acked or after DP_KV_SHARED_NOTIFY_MS (a watcher that
 * died keeps its watch for a while and never acks); finished ones are
 * reaped at the next notify and at unwatch. -EAGAIN when too many are still
 * out (the watchers catch up at their periodic re-read). */
#define DP_KV_SHARED_NOTIFY_MS 1000 /* librados counts whole seconds; 0 would be its default */
int dp_kv_shared_members_notify(struct dp_kv_shared *t, struct dp_kv_shared_watch *w);
/* Stop watching and wait for the notifies still out (at most
 * DP_KV_SHARED_NOTIFY_MS); no cb runs once it returns. NULL is fine. */
void dp_kv_shared_members_unwatch(struct dp_kv_shared_watch *w);

struct dp_kv_shared_stats {
	uint64_t puts, put_bytes, gets, get_bytes, deletes, manifests;
	uint64_t errors;	/* operations that finished with an error */
	uint64_t bad_pages;	/* pages or headers that failed their checks */
	uint64_t fenced;	/* manifest writes refused: lease lost */
	uint64_t leases;	/* sessions this host holds now */
};
void dp_kv_shared_stats(const struct dp_kv_shared *t, struct dp_kv_shared_stats *ret);

/*
 * A session's state on the tier (kvcache/restore-shared.c; in the kvcache
 * library, for the daemon, which holds the tier handle). The state of a
 * session at one position is every page of its sequence (model/v4.h,
 * dp_v4_seq_pages order: the sliding windows, the compressors' unfinished
 * windows and overlaps, the growing compressed entries and index keys) and
 * that position: the Engram hashing history is rebuilt from the session's
 * token history. A page is stored in a segment under its tag
 * (dp_kv_shared_page_tag) and found again by (segment, slot).
 */
struct dp_kv;
struct dp_kv_session;
struct dp_v4_seq;
struct dp_v4_page_ref;

/* A page's tag: layer, stream kind and index in one word. */
static inline uint64_t dp_kv_shared_page_tag(uint16_t layer, uint8_t kind, uint32_t index)
{
	return (uint64_t)layer << 40 | (uint64_t)kind << 32 | index;
}

/* Pages of 64 KiB that one segment holds: the header and the pages fit
 * DP_KV_SHARED_SEGMENT_MAX. */
uint32_t dp_kv_shared_group_pages(size_t page_bytes);

/* Where one state page is on the tier. */
struct dp_kv_shared_loc {
	uint16_t layer;
	uint8_t kind;
	uint32_t index;
	uint32_t segment; /* into the caller's table of segment names */
	uint32_t slot;	  /* the page's place in that segment */
};

/* The state of busy session s as it stands (DEVICE tier), copied to host
 * memory: *ret_pos, the page list (refs: layer, kind, index) and the data
 * (n pages of DP_V4_PAGE_BYTES in *ret_data, 4 KiB aligned). The caller
 * frees both. -ENODATA when s has no state on the device, or one still
 * being restored. */
int dp_kv_session_state_copy(struct dp_kv *kv, struct dp_kv_session *s, uint64_t *ret_pos,
			     struct dp_v4_page_ref **ret_refs, void **ret_data, size_t *ret_n);

/*
 * The DualPath restore from the tier. s is busy on the device (just
 * acquired; its sequence is replaced): it gets a sequence at pos whose
 * pages come from the tier layer by layer. Every get is submitted here, in
 * layer order (one get per segment per layer, for the pages of that layer
 * in it); the sequence's gate for layer l waits, polling and reaping t
 * (under lock, when not NULL: the tier is one thread's at a time), only for
 * layer l's gets, then copies the pages in. A get that fails (a missing
 * object, a page or header failing its checksum: -EBADMSG, -ENOENT) fails
 * the gate: the sequence is poisoned and the caller recomputes it from the
 * history (dp_kv_session_forget_state, acquire again). The page list must
 * be exactly the sequence's at pos (-EBADMSG otherwise, nothing changed).
 * Segment names are copied.
 */
int dp_kv_session_restore_shared(struct dp_kv *kv, struct dp_kv_session *s, struct dp_kv_shared *t,
				 pthread_mutex_t *lock, uint64_t pos, const char *const *segments,
				 size_t n_segments, const struct dp_kv_shared_loc *locs, size_t n,
				 struct dp_v4_seq **ret_seq);

struct dp_kv_shared_restore_stats {
	uint64_t started;   /* restores from the tier begun */
	uint64_t completed; /* ... whose every layer came and checked */
	uint64_t failed;    /* ... that failed a get (poisoned: recomputed) */
	uint64_t bytes;	    /* page bytes they brought in */
	uint64_t ns;	    /* completed ones' total duration */
	uint64_t stall_ns;  /* time gates waited for the tier */
};
/* Sessions' restores from the tier (prefix units' are not counted here). */
void dp_kv_shared_restore_stats(const struct dp_kv *kv, struct dp_kv_shared_restore_stats *ret);

#ifdef __cplusplus
}
#endif
#endif /* DP_KVCACHE_TIER_H */
