/* SPDX-License-Identifier: MIT */
/*
 * dualpathd — serves a DeepSeek-V4 model over a Unix socket.
 *
 * Runs in the foreground (systemd Type=notify): READY=1 once the model is
 * loaded and the socket listens, STATUS= with live figures, WATCHDOG=1 while
 * the compute thread makes progress, STOPPING=1 on SIGTERM, which drains
 * (requests still running after drain_grace_ms are cancelled), persists
 * every session and exits 0. SIGHUP reopens the log file. Exit status 2: a
 * bad setting; 1: start-up failed, or a thread gave up after start
 * (srv->fatal; READY=1 waits for the compute thread's start-up allocations).
 */
#include <errno.h>
#include <grp.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include "daemon/cluster.h"
#include "daemon/engram-io.h"
#include "daemon/experts.h"
#include "daemon/http.h"
#include "daemon/log.h"
#include "daemon/server.h"
#include "daemon/shared.h"
#include "daemon/shared-health.h"
#include "daemon/shared-units.h"
#include "model/conv.h"
#include "sched/topo.h"

/* The write end of the signal pipe: a signal handler can reach nothing else. */
static int signal_pipe = -1;

static void on_signal(int signo)
{
	int saved = errno;
	unsigned char b = (unsigned char)signo;
	ssize_t n = write(signal_pipe, &b, 1);
	(void)n;
	errno = saved;
}

static int mkdir_p(const char *path, mode_t mode)
{
	char buf[4096];
	if (snprintf(buf, sizeof(buf), "%s", path) >= (int)sizeof(buf))
		return -ENAMETOOLONG;
	for (char *p = buf + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		if (mkdir(buf, mode) < 0 && errno != EEXIST)
			return -errno;
		*p = '/';
	}
	if (mkdir(buf, mode) < 0 && errno != EEXIST)
		return -errno;
	return 0;
}

static int load_model(struct dp_server *srv, char *err, size_t err_len)
{
	struct dp_config *cfg = &srv->cfg;
	int ret = dp_v4_resolve_dir(cfg->model, srv->model_dir, sizeof(srv->model_dir));
	if (ret < 0) {
		snprintf(err, err_len, "cannot find model %.512s: %s", cfg->model,
			 ret == -ENOENT ? "no embedded model installed (set [model] model = DIR)"
					: strerror(-ret));
		return ret;
	}
	enum dp_gpu_kind kind = cfg->backend;
	struct dp_gpu_opts go = { .threads = (int)cfg->threads };
	char why[256] = "";
	if ((ret = dp_gpu_new(kind, &go, &srv->gpu, why, sizeof(why))) < 0) {
		snprintf(err, err_len, "cannot start the %s backend: %s", dp_gpu_kind_name(kind), why);
		return ret;
	}
	struct dp_v4_load_opts lo = { .experts = cfg->experts,
				      .expert_slots = cfg->expert_slots,
				      .no_lookahead = !cfg->expert_lookahead,
				      .numerics = cfg->numerics };
	if ((ret = dp_v4_model_load_opts(srv->gpu, srv->model_dir, &lo, &srv->model, why,
					 sizeof(why))) < 0) {
		snprintf(err, err_len, "cannot load model %.512s: %s", srv->model_dir, why);
		return ret;
	}
	const struct dp_v4_config *c = dp_v4_model_config(srv->model);
	if ((ret = dp_v4_tokenizer_new(srv->model_dir, c, &srv->tok, why, sizeof(why))) < 0) {
		snprintf(err, err_len, "%s", why);
		return ret;
	}
	if ((ret = dp_conv_new(srv->model_dir, srv->tok, &srv->conv, why, sizeof(why))) < 0) {
		snprintf(err, err_len, "chat format of %.512s: %s", srv->model_dir, why);
		return ret;
	}
	srv->vocab = (uint32_t)c->vocab_size;
	for (int i = 0; i < c->n_eos && srv->n_eos < DP_V4_EOS_MAX; i++)
		srv->eos[srv->n_eos++] = (int32_t)c->eos_token_ids[i];
	int32_t teos = dp_tok_special(srv->tok, DP_TOK_EOS);
	bool known = false;
	for (uint32_t i = 0; i < srv->n_eos; i++)
		known |= srv->eos[i] == teos;
	if (teos >= 0 && !known)
		srv->eos[srv->n_eos++] = teos;
	char desc[256];
	dp_v4_config_describe(c, desc, sizeof(desc));
	log_info("model %s on the %s backend: %s; %s numerics", srv->model_dir,
		 dp_gpu_kind_name(kind), desc,
		 dp_v4_numerics_name(dp_v4_model_numerics(srv->model)));
	if (lo.experts != DP_V4_EXPERTS_DEVICE) {
		struct dp_v4_expert_stats xs;
		dp_v4_model_expert_stats(srv->model, &xs);
		log_info("routed experts paged from %s: %u of %d a layer on the device (%llu MiB), "
			 "%llu MiB of host memory", dp_v4_experts_where_name(cfg->experts),
			 xs.slots, c->n_routed_experts,
			 (unsigned long long)(xs.cache_bytes >> 20),
			 (unsigned long long)(xs.host_bytes >> 20));
	}
	return 0;
}

/* NVMe-paged experts: read by the io thread (without one, by the compute
 * thread itself). */
static int open_experts(struct dp_server *srv, char *err, size_t err_len)
{
	if (!dp_v4_model_expert_file_count(srv->model))
		return 0;
	if (!srv->io) {
		log_warning("experts = nvme without io_uring: the compute thread reads the experts "
			    "itself (synchronous pread)");
		return 0;
	}
	char why[768] = "";
	int ret = dp_expert_io_new(srv->io, srv->kv, srv->model, &srv->xio, why, sizeof(why));
	if (ret < 0)
		snprintf(err, err_len, "paged experts: %s", why);
	return ret;
}

/* The io thread: an io_uring engine (io/io.h) for the NVMe tier. */
static int start_io(struct dp_server *srv, char *err, size_t err_len)
{
	struct dp_config *cfg = &srv->cfg;
	struct dp_io_config ic;
	dp_io_config_init(&ic);
	_Static_assert(DP_CONFIG_QUEUE_DEPTH_MAX <= DP_IO_DEPTH_MAX,
		       "queue_depth is checked at load");
	ic.queue_depth = cfg->queue_depth;
	ic.node = srv->placement.node;
	ic.flags = (cfg->sqpoll ? DP_IO_SQPOLL : 0) | (cfg->iopoll ? DP_IO_IOPOLL : 0);
	_Static_assert(DP_CONFIG_READ_RATE_MAX <= DP_IO_READ_RATE_MAX, "read_rate is checked at load");
	ic.read_rate = cfg->read_rate;
	_Static_assert(DP_CONFIG_READ_BURST_MAX <= DP_IO_LEN_MAX, "read_burst is checked at load");
	if (cfg->read_burst)
		ic.read_burst = (uint32_t)cfg->read_burst;
	int ret = dp_io_new(&ic, &srv->io);
	if (ret < 0) {
		/* io_uring disabled by sysctl, or too old a kernel: the KV cache
		 * still works with synchronous file I/O */
		log_warning("io_uring unavailable (%s): the NVMe tier uses synchronous I/O%s", strerror(-ret),
			    cfg->read_rate ? ", its reads not paced (read_rate needs the io thread)" : "");
		srv->io = NULL;
		return 0;
	}
	int cpu = srv->cfg.pin_threads && srv->placement.desc[0] ? srv->placement.cpu[DP_TOPO_ROLE_IO] : -1;
	if ((ret = dp_io_start(srv->io, cpu)) < 0) {
		snprintf(err, err_len, "cannot start the io thread: %s", strerror(-ret));
		return ret;
	}
	char d[512];
	dp_io_describe(srv->io, d, sizeof(d));
	log_info("io thread: %s", d);
	return 0;
}

static int open_state(struct dp_server *srv, char *err, size_t err_len)
{
	struct dp_config *cfg = &srv->cfg;
	int ret = mkdir_p(cfg->state_dir, 0750);
	if (ret < 0) {
		snprintf(err, err_len, "cannot create state directory %.512s: %s", cfg->state_dir, strerror(-ret));
		return ret;
	}
	if ((ret = start_io(srv, err, err_len)) < 0)
		return ret;
	/* before the KV cache opens: it supplies the host pages */
	if (cfg->csa_entries == DP_V4_CSA_HOST) {
		dp_v4_model_set_csa_host(srv->model, true, NULL);
		const struct dp_v4_config *mc = dp_v4_model_config(srv->model);
		log_info("CSA entries in host memory (%d CSA layers; index_topk %d staged per query)",
			 mc->n_layers_of[DP_V4_LAYER_CSA], mc->index_topk);
	}
	struct dp_kv_opts ko = {
		.state_dir = cfg->state_dir,
		.device_bytes = cfg->device_bytes,
		.dram_bytes = cfg->dram_bytes,
		.nvme_bytes = cfg->nvme_bytes,
		.high_watermark = cfg->high_watermark,
		.low_watermark = cfg->low_watermark,
		.numa_node = srv->placement.node,
		.direct_io = cfg->direct_io,
		.io = srv->io,
		.max_units = cfg->max_units,
	};
	char why[512] = "";
	if ((ret = dp_kv_open(&ko, srv->model, &srv->kv, why, sizeof(why))) < 0) {
		snprintf(err, err_len, "cannot open the KV cache in %.400s: %.500s", cfg->state_dir, why);
		return ret;
	}
	struct dp_kv_stats st;
	dp_kv_stats(srv->kv, &st);
	log_info("state %s: %zu sessions recovered (%llu with a persisted state), NVMe tier %s",
		 cfg->state_dir, dp_kv_session_count(srv->kv), (unsigned long long)st.sessions[DP_KV_TIER_NVME],
		 st.direct_io ? "with O_DIRECT" : "buffered (no O_DIRECT here)");
	struct dp_kv_recovery rec;
	dp_kv_recovery(srv->kv, &rec);
	if (st.journal_damaged_records || st.journal_repaired_records)
		log_err("state %s: the journal was damaged: %llu records (%llu bytes) lost, %llu repaired; "
			"%llu sessions lost their history; the damaged journal is kept as %s",
			cfg->state_dir, (unsigned long long)st.journal_damaged_records,
			(unsigned long long)st.journal_damaged_bytes,
			(unsigned long long)st.journal_repaired_records,
			(unsigned long long)st.journal_sessions_lost,
			rec.journal_copy[0] ? rec.journal_copy : "(copy failed)");
	for (size_t i = 0, n = dp_kv_session_count(srv->kv); i < n && st.lost_sessions; i++) {
		struct dp_kv_session *s;
		if (dp_kv_session_at(srv->kv, i, &s) == 0 && dp_kv_session_lost(srv->kv, dp_kv_session_id(s)))
			log_warning("session %s is lost (journal damage): its Generate requests get "
				    "DATA_LOSS until it is closed", dp_kv_session_id(s));
	}
	if (st.slot_file_resets)
		log_err("state %s: the slot file's header was damaged; kept as %s, a new one made: the "
			"sessions' states are recomputed from their histories", cfg->state_dir,
			rec.slots_copy);
	return 0;
}

/* The shared tier (kvcache/tier.h). A cluster that cannot be reached is not
 * fatal: the daemon serves requests without a session (dp_shared_claim
 * refuses session turns), logs why, and reports the shared tier down
 * (dualpath_shared_tier_up 0 in Stats). */
static void open_shared(struct dp_server *srv)
{
	struct dp_config *cfg = &srv->cfg;
	pthread_mutex_init(&srv->tier_lock, NULL);
	if (cfg->shared_tier == DP_KV_SHARED_NONE)
		return;
	srv->shared_configured = true;
	if (cfg->host_id[0]) {
		snprintf(srv->host_id, sizeof(srv->host_id), "%.63s", cfg->host_id); /* checked at load */
	} else if (gethostname(srv->host_id, sizeof(srv->host_id) - 1) < 0 || !srv->host_id[0]) {
		log_warning("shared tier down: no host_id set and no hostname; serving from local tiers");
		return;
	}
	struct dp_kv_shared_opts o = {
		.conf = cfg->rados_conf,
		.pool = cfg->rados_pool,
		.client = cfg->rados_client,
		.host_id = srv->host_id,
		.lease_ms = cfg->lease_ms,
		/* no call waits longer than a lease (the compute thread makes them) */
		.timeout_ms = cfg->lease_ms > 2000 ? cfg->lease_ms : 2000,
	};
	char why[512] = "";
	int ret = dp_kv_shared_open(&o, &srv->tier, why, sizeof(why));
	if (ret < 0) {
		log_warning("shared tier down (%s); serving from local tiers", why);
		srv->tier = NULL;
		return;
	}
	log_info("shared tier: rados pool %s, host %s, lease %u ms", cfg->rados_pool, srv->host_id,
		 cfg->lease_ms);
	if ((ret = dp_shared_health_start(srv)) < 0)
		log_warning("shared tier: no health probe (%s); it is reported up until a call fails",
			    strerror(-ret));
}

/* An Engram model's tables: a store on the compute thread, its NVMe reads
 * in the KV cache's read queue (engram-io.h): each Engram layer's rows due
 * at that layer's tick of the step, ordered with the restore pages and the
 * expert reads by when compute needs them; writeback stays last (LOW). */
static int open_engram(struct dp_server *srv, char *err, size_t err_len)
{
	struct dp_config *cfg = &srv->cfg;
	if (!dp_v4_model_has_engram(srv->model)) {
		if (cfg->engram_tables[0])
			log_warning("engram_tables is set but model %s has no Engram layers: ignored",
				    srv->model_dir);
		return 0;
	}
	if (!cfg->engram_tables[0]) {
		snprintf(err, err_len, "model %.512s has Engram layers: set [engram] engram_tables to its "
			 "tables (dp-engram convert writes them)", srv->model_dir);
		return -EINVAL;
	}
	struct dp_engram_store_config ec;
	dp_engram_store_config_init(&ec);
	ec.residency = cfg->engram_residency;
	ec.gpu = srv->gpu;
	ec.node = srv->placement.node;
	ec.cache_rows = cfg->engram_cache_rows;
	if (ec.residency == DP_ENGRAM_RES_NVME) {
		if (!srv->io) {
			snprintf(err, err_len, "engram_residency nvme needs the io thread, and io_uring is "
				 "unavailable here (use dram)");
			return -ENOTSUP;
		}
		ec.io = srv->io;
	}
	char why[512] = "";
	int ret = dp_engram_hash_from_model(srv->model, &srv->engram_hash, why, sizeof(why));
	if (ret == 0)
		ret = dp_engram_store_new(srv->engram_hash,
					  (uint32_t)dp_v4_model_config(srv->model)->engram.head_dim,
					  cfg->engram_tables, &ec, &srv->engram, why, sizeof(why));
	if (ret < 0) {
		snprintf(err, err_len, "Engram tables %.400s: %.500s", cfg->engram_tables,
			 why[0] ? why : strerror(-ret));
		return ret;
	}
	if (ec.residency == DP_ENGRAM_RES_NVME && srv->kv &&
	    (ret = dp_engram_io_new(srv->kv, srv->engram, cfg->engram_tables, &srv->eio)) < 0) {
		snprintf(err, err_len, "Engram tables %.400s: cannot read them through the KV "
			 "cache's queue: %s", cfg->engram_tables, strerror(-ret));
		return ret;
	}
	struct dp_v4_engram_provider p;
	dp_engram_store_provider(srv->engram, &p);
	dp_v4_model_set_engram(srv->model, &p);
	struct dp_engram_store_stats st;
	dp_engram_store_get_stats(srv->engram, &st);
	log_info("Engram tables %s: %s residency, %llu MiB in memory, cache of %llu rows%s",
		 cfg->engram_tables, dp_engram_residency_name(cfg->engram_residency),
		 (unsigned long long)(st.table_bytes >> 20), (unsigned long long)cfg->engram_cache_rows,
		 srv->eio ? "; rows read in the KV cache's deadline order" : "");
	return 0;
}

static void place_threads(struct dp_server *srv)
{
	struct dp_topo *topo;
	srv->placement.node = -1;
	if (dp_topo_new(&topo) < 0)
		return;
	int node = -1;
	struct dp_gpu_device_info gi;
	if (dp_gpu_kind_of(srv->gpu) == DP_GPU_CUDA && dp_gpu_probe(&gi, 1, NULL, 0) > 0)
		dp_topo_pci_node(topo, gi.pci_bus_id, &node);
	if (dp_topo_place(topo, node, &srv->placement) == 0)
		log_info("threads: %s%s", srv->placement.desc, srv->cfg.pin_threads ? "" : " (not pinned)");
	char d[256];
	if (dp_topo_describe(topo, d, sizeof(d)) == 0)
		log_debug("topology: %s", d);
	dp_topo_free(topo);
}

static void pin(struct dp_server *srv, pthread_t t, enum dp_topo_role role)
{
	if (!srv->cfg.pin_threads || !srv->placement.desc[0])
		return; /* no placement: the topology was not readable */
	int cpu = srv->placement.cpu[role];
	int ret = dp_topo_pin_thread(t, &cpu, 1);
	if (ret < 0)
		log_warning("cannot pin the %s thread to cpu %d: %s", dp_topo_role_name(role), cpu,
			    strerror(-ret));
}

static void notify_status(struct dp_server *srv)
{
	static const char *const names[] = { "starting", "serving", "draining", "stopping" };
	sd_notifyf(0, "STATUS=%s: %u sessions, %u requests running, %llu tokens generated",
		   names[atomic_load(&srv->state)], atomic_load(&srv->n_sessions),
		   atomic_load(&srv->n_active), (unsigned long long)atomic_load(&srv->tokens_out));
}

/*
 * Each connection is a file descriptor: make room for max_connections of
 * them beside the daemon's own files (model shards, state files, io_uring,
 * eventfds), raising the soft RLIMIT_NOFILE up to the hard one; where even
 * that is short, serve fewer connections and say so (LimitNOFILE= in the
 * unit raises it).
 */
#define DP_OWN_FDS 256u

static int size_connections(struct dp_config *cfg, char *err, size_t err_len)
{
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
		return 0;
	rlim_t need = (rlim_t)cfg->max_connections + DP_OWN_FDS;
	if (rl.rlim_cur < need && rl.rlim_cur < rl.rlim_max) {
		struct rlimit want = { .rlim_cur = need < rl.rlim_max ? need : rl.rlim_max,
				       .rlim_max = rl.rlim_max };
		if (setrlimit(RLIMIT_NOFILE, &want) == 0)
			rl.rlim_cur = want.rlim_cur;
	}
	if (rl.rlim_cur >= need)
		return 0;
	if (rl.rlim_cur < DP_OWN_FDS + 1 + cfg->admin_connections) {
		snprintf(err, err_len, "RLIMIT_NOFILE is %llu: too few file descriptors for the daemon's "
			 "own files and any connection (raise LimitNOFILE= or ulimit -n to at least %u)",
			 (unsigned long long)rl.rlim_cur, DP_OWN_FDS + 1 + cfg->admin_connections + 64);
		return -EMFILE;
	}
	uint32_t fit = (uint32_t)(rl.rlim_cur - DP_OWN_FDS);
	log_warning("max_connections %u needs %llu file descriptors and RLIMIT_NOFILE allows %llu: "
		    "serving %u connections (raise LimitNOFILE= or ulimit -n)", cfg->max_connections,
		    (unsigned long long)need, (unsigned long long)rl.rlim_cur, fit);
	cfg->max_connections = fit;
	return 0;
}

/* A Shutdown from the daemon itself (SIGTERM, a thread that gave up): drain,
 * persist every session, stop. NULL: out of memory. */
static struct dp_msg *shutdown_request(void)
{
	struct dp_msg *m = calloc(1, sizeof(*m));
	if (m) {
		m->kind = DP_MSG_SHUTDOWN;
		m->from = (struct dp_origin){ UINT32_MAX, 0 };
	}
	return m;
}

static int run(struct dp_server *srv)
{
	char err[1024] = "";
	int ret;
	pthread_t http;
	bool http_running = false; /* the HTTP front's thread, started before the load */

	srv->start_ns = dp_clock_ns();
	atomic_store(&srv->state, DP_STATE_STARTING);
	if ((ret = size_connections(&srv->cfg, err, sizeof(err))) < 0)
		goto fail;
	sd_notify(0, "STATUS=loading the model");
	/* The HTTP front starts before the load, so that /health answers 503
	 * {"status": "loading"} (and /metrics its own counters) while a big
	 * model loads, instead of a socket nobody listens on; every other route
	 * is 503 with Retry-After until the state is SERVING, which is stored
	 * after the model, tokenizer and renderer are (the HTTP thread reads
	 * them only after reading that state). Its ring exists before compute
	 * starts (compute reads srv->to_http once, at its start). */
	if (srv->cfg.http_listen[0]) {
		if ((ret = dp_spsc_new(16384, sizeof(struct dp_event), &srv->to_http)) < 0 ||
		    (ret = dp_waiter_init(&srv->http_wake, DP_WAITER_EVENTFD, 0)) < 0 ||
		    (ret = dp_http_init(srv, err, sizeof(err))) < 0 ||
		    (ret = -pthread_create(&http, NULL, dp_http_main, srv)) < 0) {
			if (!err[0])
				snprintf(err, sizeof(err), "cannot set up the HTTP front: %s",
					 strerror(-ret));
			goto fail;
		}
		http_running = true;
	}
	if ((ret = load_model(srv, err, sizeof(err))) < 0)
		goto fail;
	place_threads(srv);
	if (http_running)
		pin(srv, http, DP_TOPO_ROLE_FRONT);
	if ((ret = open_state(srv, err, sizeof(err))) < 0)
		goto fail;
	open_shared(srv);
	/* membership: a second daemon with this host id must not start */
	if (srv->tier && (ret = dp_cluster_start(srv, err, sizeof(err))) < 0) {
		if (ret == -EBUSY)
			goto fail;
		log_warning("shared tier down (%s); serving from local tiers", err);
		err[0] = 0;
		dp_kv_shared_close(srv->tier);
		srv->tier = NULL;
	}
	/* prefix units shared with the other members (a no-op without a tier) */
	if ((ret = dp_shared_units_start(srv)) < 0)
		log_warning("shared tier: prefix units are not shared (%s)", strerror(-ret));
	if ((ret = open_engram(srv, err, sizeof(err))) < 0)
		goto fail;
	if ((ret = open_experts(srv, err, sizeof(err))) < 0)
		goto fail;
	if (srv->cfg.admin_group[0]) {
		struct group *g = getgrnam(srv->cfg.admin_group);
		if (g) {
			srv->admin_gid = g->gr_gid;
			srv->have_admin_gid = true;
		} else {
			log_notice("admin group %s does not exist: only root may Drain, Evict, Shutdown",
				   srv->cfg.admin_group);
		}
	}
	if ((ret = dp_ring_new(4096, sizeof(void *), DP_RING_SC, &srv->to_compute)) < 0 ||
	    (ret = dp_spsc_new(16384, sizeof(struct dp_event), &srv->to_front)) < 0 ||
	    (ret = dp_waiter_init(&srv->compute_wake, DP_WAITER_FUTEX, 0)) < 0 ||
	    (ret = dp_waiter_init(&srv->front_wake, DP_WAITER_EVENTFD, 0)) < 0) {
		snprintf(err, sizeof(err), "cannot set up the thread rings: %s", strerror(-ret));
		goto fail;
	}
	if ((ret = dp_front_init(srv, err, sizeof(err))) < 0)
		goto fail;

	/* Signals: a handler that writes the signal number to a pipe the loop
	 * below polls. (A signalfd would need every thread to block them, and
	 * libraries such as OpenBLAS start threads before main runs.) */
	int pfd[2];
	if (pipe2(pfd, O_CLOEXEC | O_NONBLOCK) < 0) {
		ret = -errno;
		snprintf(err, sizeof(err), "pipe: %s", strerror(errno));
		goto fail;
	}
	signal_pipe = pfd[1];
	srv->main_wake_fd = pfd[1];
	struct sigaction sa = { .sa_handler = on_signal, .sa_flags = SA_RESTART };
	sigemptyset(&sa.sa_mask);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGHUP, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);
	int sfd = pfd[0];

	pthread_t compute, front;
	pthread_create(&compute, NULL, dp_compute_main, srv);
	pin(srv, compute, DP_TOPO_ROLE_COMPUTE);
	/* the compute thread's start-up allocations (max_batch x vocab logits)
	 * are made before its first beat: serving is said after them, or not;
	 * and before the front answers a Health (it says SERVING from then) */
	while (!atomic_load(&srv->compute_beat) && !atomic_load(&srv->compute_done))
		usleep(1000);
	bool up = !atomic_load(&srv->fatal);
	if (up)
		atomic_store(&srv->state, DP_STATE_SERVING);
	pthread_create(&front, NULL, dp_front_main, srv);
	pin(srv, front, DP_TOPO_ROLE_FRONT);
	if (up) {
		log_info("serving on %s%s", srv->cfg.socket,
			 srv->socket_activated ? " (socket activation)" : "");
		sd_notify(0, "READY=1");
		notify_status(srv);
	}

	uint64_t wd_usec = 0;
	bool watchdog = sd_watchdog_enabled(0, &wd_usec) > 0;
	int tick_ms = (int)srv->cfg.status_interval_ms;
	if (watchdog && wd_usec / 2000 < (uint64_t)tick_ms)
		tick_ms = (int)(wd_usec / 2000);
	if (tick_ms < 10)
		tick_ms = 10;
	uint64_t last_beat = atomic_load(&srv->compute_beat);
	bool stopping = false;
	struct dp_msg *shutdown_msg = NULL; /* waiting for room in compute's queue */
	while (!atomic_load(&srv->compute_done)) {
		struct pollfd p = { .fd = sfd, .events = POLLIN };
		if (shutdown_msg && dp_server_send(srv, shutdown_msg) == 0)
			shutdown_msg = NULL;
		int n = poll(&p, 1, shutdown_msg ? 10 : tick_ms);
		if (n > 0) {
			unsigned char signo;
			while (read(sfd, &signo, 1) == 1) {
				if (signo == SIGHUP) {
					int r = dp_log_reopen();
					log_info("SIGHUP: log reopened%s", r < 0 ? " (failed)" : "");
				} else if ((signo == SIGTERM || signo == SIGINT) && !stopping) {
					stopping = true;
					log_notice("%s: draining, then persisting sessions",
						   signo == SIGTERM ? "SIGTERM" : "SIGINT");
					sd_notify(0, "STOPPING=1");
					/* sent at the top of the loop; a full queue
					 * is retried there, never waited for here */
					shutdown_msg = shutdown_request();
					if (!shutdown_msg) {
						log_err("SIGTERM: out of memory for the drain request; "
							"send the signal again");
						stopping = false;
					}
				}
			}
		}
		/* a thread that gave up (it logged why): stop as on SIGTERM,
		 * then exit non-zero (without memory, tried again next tick) */
		if (atomic_load(&srv->fatal) && !stopping && (shutdown_msg = shutdown_request())) {
			stopping = true;
			log_err("a thread failed: draining, then persisting sessions");
			sd_notify(0, "STOPPING=1");
		}
		uint64_t beat = atomic_load(&srv->compute_beat);
		if (watchdog && beat != last_beat)
			sd_notify(0, "WATCHDOG=1");
		last_beat = beat;
		notify_status(srv);
	}
	free(shutdown_msg);
	atomic_store(&srv->state, DP_STATE_STOPPING);
	sd_notify(0, "STOPPING=1");
	atomic_store(&srv->stop, true);
	pthread_join(compute, NULL);
	pthread_join(front, NULL);
	if (http_running) {
		pthread_join(http, NULL);
		http_running = false;
	}
	/* what reached compute after it stopped listening (a Stats, a closed
	 * connection's notice) is not answered any more: free it */
	struct dp_msg *late;
	while (dp_ring_dequeue(srv->to_compute, &late) == 0) {
		free(late->tokens);
		free(late);
	}
	struct dp_event ev;
	while (dp_spsc_dequeue(srv->to_front, &ev) == 0)
		free(ev.payload);
	while (srv->to_http && dp_spsc_dequeue(srv->to_http, &ev) == 0)
		free(ev.payload);
	close(sfd);
	close(pfd[1]);
	if (!(ret = atomic_load(&srv->fatal))) {
		log_notice("stopped");
		return 0;
	}
	snprintf(err, sizeof(err), "stopped after a thread failed: %s", strerror(-ret));
fail:
	if (http_running) { /* a failed start: the HTTP front answered "loading" until now */
		atomic_store(&srv->stop, true);
		pthread_join(http, NULL);
	}
	log_err("%s", err);
	sd_notifyf(0, "STATUS=failed: %s\nERRNO=%d", err, -ret);
	return ret;
}

int main(int argc, char **argv)
{
	struct dp_server *srv = calloc(1, sizeof(*srv));
	char err[1024] = "";
	if (!srv)
		return 1;
	srv->listen_fd = -1;
	srv->main_wake_fd = -1;
	srv->compute_wake.efd = srv->front_wake.efd = srv->http_wake.efd = -1;
	dp_config_defaults(&srv->cfg);
	int ret = dp_config_load(&srv->cfg, argc, argv, stdout, err, sizeof(err));
	if (ret != 0) {
		if (ret < 0)
			fprintf(stderr, "<%d>dualpathd: %s\n", DP_LOG_ERR, err);
		free(srv);
		return ret < 0 ? 2 : 0; /* 1: --help, --version, --print-config */
	}
	dp_log_set_level(srv->cfg.log_level);
	if (srv->cfg.log_file[0] && (ret = dp_log_open(srv->cfg.log_file)) < 0) {
		fprintf(stderr, "<%d>dualpathd: cannot open log file %s: %s\n", DP_LOG_ERR,
			srv->cfg.log_file, strerror(-ret));
		free(srv);
		return 1;
	}
	log_info("dualpathd %s starting (config %s)", DP_VERSION, srv->cfg.config_path);
	ret = run(srv);

	if (srv->listen_fd >= 0) {
		close(srv->listen_fd);
		if (!srv->socket_activated)
			unlink(srv->cfg.socket);
	}
	/* the Engram reads in the KV cache's queue are waited for through it */
	dp_engram_io_free(srv->eio, srv->engram);
	dp_kv_close(srv->kv);
	dp_cluster_stop(srv->cluster); /* leaves the membership; after compute stopped */
	dp_shared_fini(srv);
	dp_shared_health_stop(srv);
	dp_shared_units_stop(srv);
	dp_kv_shared_close(srv->tier);
	if (srv->shared_configured)
		pthread_mutex_destroy(&srv->tier_lock);
	if (srv->model)
		dp_v4_model_set_engram(srv->model, NULL);
	dp_engram_store_free(srv->engram); /* its reads waited for: before the io thread stops */
	dp_engram_hash_free(srv->engram_hash);
	dp_expert_io_free(srv->xio, srv->model); /* before the io thread stops */
	if (srv->io) {
		dp_io_stop(srv->io, DP_IO_STOP_DRAIN);
		dp_io_free(srv->io);
	}
	dp_conv_free(srv->conv);
	dp_tok_free(srv->tok);
	dp_v4_model_free(srv->model);
	dp_gpu_free(srv->gpu);
	dp_http_free(srv);
	dp_ring_free(srv->to_compute);
	dp_spsc_free(srv->to_front);
	dp_spsc_free(srv->to_http);
	dp_waiter_fini(&srv->http_wake);
	dp_waiter_fini(&srv->compute_wake);
	dp_waiter_fini(&srv->front_wake);
	free(srv);
	return ret < 0 ? 1 : 0;
}
