/* SPDX-License-Identifier: MIT */
/*
 * daemon/server.h — dualpathd's threads and what travels between them.
 *
 *   clients --socket--> [front] --MPSC ring (struct dp_msg *)--> [compute]
 *                          ^                                        |
 *                          +------ SPSC ring (struct dp_event) ------+
 *
 * front    epoll over the listening socket, the connections and the event
 *          ring's eventfd; decodes and checks frames, answers Hello and
 *          Health itself, forwards the rest as dp_msg; turns events into
 *          Response frames (decoding token ids to text).
 * compute  owns the model, the KV cache and every session; admits requests,
 *          runs the batched forward steps, samples, journals turns.
 * main     signals (signalfd), sd_notify READY/STATUS/WATCHDOG/STOPPING.
 *
 * A dp_msg is allocated by its producer and freed by compute; an event's
 * payload (error text, stats, session lists) is allocated by compute and
 * freed by front. Tokens travel by value in the event itself: no allocation
 * per token.
 */
#ifndef DP_DAEMON_SERVER_H
#define DP_DAEMON_SERVER_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "base/clock.h"
#include "daemon/config.h"
#include "io/io.h"
#include "engram/engram.h"
#include "kvcache/kvcache.h"
#include "model/sample.h"
#include "model/tokenizer.h"
#include "model/v4.h"
#include "proto/frame.h"
#include "dp-config.h"
#include "sched/ring.h"
#include "sched/topo.h"
#include "sched/wait.h"

enum dp_msg_kind {
	DP_MSG_GENERATE,
	DP_MSG_CANCEL,
	DP_MSG_CLOSE_SESSION,
	DP_MSG_STATS,
	DP_MSG_SESSIONS,
	DP_MSG_DRAIN,
	DP_MSG_EVICT,
	DP_MSG_SHUTDOWN,
	DP_MSG_TRACE,
	DP_MSG_CONN_CLOSED, /* the front closed a connection: cancel its requests */
	DP_MSG_KIND_MAX,
};

/* Who sent it: front's connection slot and that slot's generation (a slot is
 * reused after a close; events for an old generation are dropped). conn
 * UINT32_MAX: the daemon itself (main thread). conn with DP_ORIGIN_HTTP set:
 * the HTTP front's request slot (its events go to to_http, not to_front). */
struct dp_origin {
	uint32_t conn;
	uint32_t gen;
};

#define DP_ORIGIN_HTTP 0x40000000u

/* Stop ids one Generate may carry (the protocol's limit, checked by the front). */
#define DP_STOP_IDS_MAX 16

struct dp_msg {
	enum dp_msg_kind kind;
	struct dp_origin from;
	uint32_t uid; /* the client's (SO_PEERCRED): sessions belong to it */
	bool admin;   /* root or admin_group: may act on every session */
	uint64_t request_id;
	char session[DP_KV_SESSION_ID_MAX + 1]; /* GENERATE ("" one-off), CLOSE_SESSION, EVICT */
	/* GENERATE */
	int32_t *tokens;
	uint32_t n_tokens;
	uint32_t max_new;
	struct dp_sampler_params sampling;
	int32_t stop[DP_STOP_IDS_MAX];
	uint32_t n_stop;
	bool ignore_eos;
	bool prompt_is_text; /* a text prompt that starts a context gets BOS */
	/* prefix cache tenant: with uid, which prefix units it may reuse */
	uint8_t cache_salt[DP_KV_CACHE_SALT_MAX];
	uint32_t cache_salt_len;
	/* A chat prompt (model/conv.h), rendered by the front both ways, since
	 * only compute knows whether the session has a context: tokens[0..
	 * n_tokens) as a whole conversation, tokens[n_tokens..+n_cont) as a
	 * continuation, which compute uses when the session has a context, after
	 * cont_lead unless the context already ends with it (-1: none). When the
	 * request cannot continue a context, cont_error says why (the client's
	 * INVALID_ARGUMENT message) and n_cont is 0; when it cannot start one
	 * (a session's later turn may be valid only as such), whole_error, and
	 * n_tokens is 0. */
	bool chat;
	uint32_t n_cont;
	int32_t cont_lead;
	char cont_error[416];
	char whole_error[416];
	uint64_t t_recv_ns;
	uint64_t cancel_target;	   /* CANCEL: the request to cancel */
	uint32_t trace_max_events; /* TRACE: most events (0: all) */
	bool persist;		   /* CLOSE_SESSION: park the state instead of dropping it */
	bool drop;		   /* EVICT: drop the session instead of parking it */
	bool release;		   /* EVICT: and release its lease (a hand-off) */
	bool list_units;	   /* SESSIONS: the prefix units instead of the sessions */
	uint32_t grace_ms;	   /* DRAIN, SHUTDOWN: 0 = drain_grace_ms */
};

enum dp_event_kind {
	DP_EV_TOKENS, /* ids[0..n_ids), maybe with finish */
	DP_EV_ERROR,  /* code, payload = char * message */
	DP_EV_ACK,
	DP_EV_STATS,	/* payload = struct dp_compute_stats * */
	DP_EV_SESSIONS, /* payload = struct dp_session_list * */
	DP_EV_TRACE,	/* payload = struct dp_trace_dump * */
	DP_EV_KIND_MAX,
};

#define DP_EVENT_IDS 8

/* compute -> front, by value (one ring slot). */
struct dp_event {
	uint32_t kind;
	uint32_t n_ids;
	struct dp_origin to;
	uint64_t request_id;
	uint64_t position;	       /* session position after these ids */
	int32_t ids[DP_EVENT_IDS];
	uint32_t finish;	       /* Dualpath__V1__FinishReason */
	uint32_t code;		       /* DP_EV_ERROR: Dualpath__V1__Code */
	void *payload;
	/* usage, on the final chunk */
	uint32_t prompt_tokens, cached_tokens, generated_tokens;
	uint32_t pad;
	uint64_t ttft_us, total_us;
};

_Static_assert(sizeof(struct dp_event) % 8 == 0 && sizeof(struct dp_event) <= DP_RING_ESIZE_MAX,
	       "an event is one ring slot");

/* Sessions' state on the shared tier (daemon/shared.c; compute's thread). */
struct dp_shared_stats {
	uint64_t takeovers;	      /* sessions taken over from another host's manifest */
	uint64_t restores;	      /* ... whose state came back from the tier, every page checked */
	uint64_t restore_bytes;	      /* and the page bytes it brought */
	uint64_t restore_ns;	      /* their total duration */
	uint64_t restore_failures;    /* restores a failed get poisoned (recomputed) */
	uint64_t recomputes;	      /* takeovers whose state was recomputed from the history */
	uint64_t state_commits;	      /* turns whose state went to the tier with their manifest */
	uint64_t pages_written;	      /* state pages written (new or changed) */
	uint64_t pages_reused;	      /* ... named again without a write (unchanged) */
	uint64_t state_ns;	      /* commit-path time writing state (copy, hash, segment puts) */
	uint64_t segments_deleted;    /* segments no manifest names any more, deleted */
	uint64_t segments_collected;  /* ... left by a crash, found and deleted at takeover */
};

/* Prefix units on the shared tier (daemon/shared-units.c). */
struct dp_shared_units_stats {
	uint64_t published;	/* units this host wrote to the tier (exclusive create won) */
	uint64_t existed;	/* ... found there already (another host's): skipped */
	uint64_t dropped;	/* ... not queued: the publish queue was full */
	uint64_t errors;	/* ... whose writes failed (nothing named them) */
	uint64_t publish_ns;	/* compute-thread time copying states to publish */
	uint64_t indexed;	/* units in this host's index of the tier (a gauge) */
	uint64_t index_full;	/* ... not indexed: the index's memory cap was reached */
	uint64_t bad_manifests; /* manifests that failed their checks (never used) */
	uint64_t found;		/* one-offs that started from a unit of the tier */
	uint64_t restored;	/* ... whose every page came back and checked */
	uint64_t corrupt;	/* ... whose pages failed their checks (recomputed) */
};

/* compute's figures, snapshot on request */
struct dp_compute_stats {
	uint64_t steps, step_ns_total, tokens_prefill, tokens_decode, tokens_replayed;
	uint64_t compute_ns; /* step time spent computing */
	uint64_t stall_ns;   /* step time waiting for restored pages */
	uint64_t hold_ns;    /* time no step ran because a restore was held back
			      * until its layers would come in time */
	uint64_t holds;	     /* such holds */
	uint64_t joins_forced; /* restoring sessions that joined a step once left
				* out past their bound (no starvation), in time or not */
	uint64_t requests_started, requests_finished, requests_cancelled, requests_failed;
	uint64_t events_dropped; /* events to the front lost (no memory for the outbox) */
	uint32_t outbox_peak;	 /* most events waiting for room in the ring to the front */
	uint32_t active, waiting, sessions;
	uint64_t last_step_tokens;
	double tok_s; /* tokens per second of recent steps (moving average) */
	struct dp_kv_stats kv;
	struct dp_shared_stats shared; /* the shared tier's state pages (daemon/shared.h) */
	struct dp_shared_units_stats units; /* prefix units on it (daemon/shared-units.h) */
	struct dp_io_stats io;
	char io_mode[64];
	bool engram; /* the model has Engram layers: engram_store is valid */
	struct dp_engram_store_stats engram_store;
	struct dp_v4_expert_stats experts; /* where == DEVICE: not paged */
	bool csa_host; /* CSA entries in host memory: csa is valid */
	struct dp_v4_csa_stats csa;
	struct dp_gpu_mem_stats mem;
	char backend[16];
	bool draining;
};

struct dp_session_list {
	uint32_t n;
	struct dp_session_row {
		char id[DP_KV_SESSION_ID_MAX + 1];
		uint64_t tokens, bytes, idle_ms;
		enum dp_kv_tier tier;
		bool busy;
		int64_t owner; /* uid, or -1: none (a session from before owners) */
		bool lost;     /* its history was lost to journal damage */
	} rows[];
};

struct dp_trace_ev {
	char name[16];
	uint8_t lane; /* 0 compute, 1 io */
	uint64_t start_us, dur_us;
	uint32_t tokens, batch;
	/* stall, io: KiB issued to the io thread and not done, by class
	 * (kvcache/rsched.h: restore, engram, expert, writeback) */
	bool has_io;
	uint32_t io_kib[DP_RSCHED_CLASS_MAX];
};

struct dp_trace_dump {
	uint32_t n;
	struct dp_trace_ev ev[];
};

enum dp_daemon_state {
	DP_STATE_STARTING,
	DP_STATE_SERVING,
	DP_STATE_DRAINING,
	DP_STATE_STOPPING,
};

struct dp_expert_io;
struct dp_cluster;
struct dp_http;
struct dp_conv;
struct dp_server {
	struct dp_config cfg;
	char model_dir[4096];
	struct dp_gpu *gpu;
	struct dp_v4_model *model;
	struct dp_tok *tok;
	struct dp_conv *conv; /* chat prompts in, parsed output out (model/conv.h) */
	struct dp_kv *kv;
	struct dp_io *io; /* the io thread's engine (NVMe tier I/O) */
	struct dp_engram_hash *engram_hash; /* Engram models: the n-gram hashing */
	struct dp_engram_store *engram;	    /* ... and the tables' rows (compute thread) */
	struct dp_expert_io *xio;	    /* experts = nvme: the io thread's expert reads */
	struct dp_engram_io *eio;	    /* engram nvme: its reads in the KV cache's queue */
	struct dp_kv_shared *tier;	    /* shared_tier = rados, when reached at start */
	struct dp_shared *shared;	    /* sessions' state on the tier (daemon/shared.c) */
	struct dp_shared_health *health;    /* whether it answers now (daemon/shared-health.h) */
	struct dp_shared_units *units;	    /* prefix units on it (daemon/shared-units.h) */
	bool shared_configured;		    /* shared_tier != none; set before threads start */
	/* The tier handle is single-threaded (kvcache/tier.h): every
	 * dp_kv_shared_* call on srv->tier, from compute, front or the cluster
	 * thread, is made holding tier_lock (inited by open_shared). */
	pthread_mutex_t tier_lock;
	struct dp_cluster *cluster; /* membership and lease renewal (daemon/cluster.h) */
	char host_id[64];		    /* this host in leases (cfg, or the hostname) */
	int32_t eos[DP_V4_EOS_MAX + 1];
	uint32_t n_eos;
	uint32_t vocab;

	/* front -> compute */
	struct dp_ring *to_compute;
	struct dp_waiter compute_wake;
	/* compute -> front */
	struct dp_spsc *to_front;
	struct dp_waiter front_wake; /* eventfd, in front's epoll set */
	/* compute -> HTTP front (NULL without one): its own SPSC ring, since
	 * compute is the one producer of each ring and each has one reader */
	struct dp_spsc *to_http;
	struct dp_waiter http_wake; /* eventfd, in the HTTP thread's epoll set */
	struct dp_http *http;	    /* the HTTP front (daemon/http.h) */

	int listen_fd;
	bool socket_activated;
	gid_t admin_gid;
	bool have_admin_gid;

	_Atomic int state;		/* enum dp_daemon_state */
	_Atomic uint64_t compute_beat;	/* compute loop iterations (watchdog) */
	_Atomic bool stop;		/* threads exit */
	_Atomic bool compute_done;	/* compute drained, persisted and exited */
	_Atomic int fatal;		/* a thread gave up after start (-errno): exit 1 */
	int main_wake_fd;		/* write a 0 byte here to wake the main loop */
	_Atomic uint32_t n_active, n_sessions;
	_Atomic uint64_t tokens_out;
	uint64_t start_ns;
	struct dp_topo_placement placement;
};

/* Every metric of a Stats reply (front-metrics.c, the one producer: the
 * socket's Stats, v4ctl stats and HTTP /metrics show the same list). */
#define DP_METRICS_MAX 192
struct dp_metric_set {
	Dualpath__V1__Metric m[DP_METRICS_MAX];
	Dualpath__V1__Metric *ptrs[DP_METRICS_MAX];
	Dualpath__V1__Label lab[DP_METRICS_MAX];
	Dualpath__V1__Label *labp[DP_METRICS_MAX];
	size_t n; /* strings point at s, srv and static text: use before they change */
};
struct front;
/* From compute's snapshot s and, when f is not NULL, the socket front's
 * counters (then on the front thread only). */
void dp_metrics_fill(struct dp_server *srv, const struct front *f, const struct dp_compute_stats *s,
		     struct dp_metric_set *ms);

/* front.c */
int dp_front_init(struct dp_server *srv, char *err, size_t err_len);
void *dp_front_main(void *arg);
/* compute.c */
void *dp_compute_main(void *arg);
/* Hand a message to compute (any thread). -EAGAIN when the ring is full. */
int dp_server_send(struct dp_server *srv, struct dp_msg *m);


#endif /* DP_DAEMON_SERVER_H */
