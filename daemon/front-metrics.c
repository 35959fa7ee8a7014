/* SPDX-License-Identifier: MIT */
/* The Stats reply: the front's own counters beside compute's snapshot. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/cluster.h"
#include "daemon/front-internal.h"
#include "daemon/shared-health.h"
#include "daemon/log.h"

static void add_metric(Dualpath__V1__Metric *m, Dualpath__V1__Metric **ptrs, size_t *n,
		       Dualpath__V1__Label *lab, size_t max, const char *name, const char *help,
		       bool counter, double v, const char *lname, const char *lvalue)
{
	if (*n >= max) {
		log_err("internal: more metrics than the reply has room for; %s left out", name);
		return;
	}
	Dualpath__V1__Metric *x = &m[*n];
	dualpath__v1__metric__init(x);
	x->name = (char *)name;
	x->help = (char *)help;
	x->type = counter ? DUALPATH__V1__METRIC_TYPE__METRIC_COUNTER : DUALPATH__V1__METRIC_TYPE__METRIC_GAUGE;
	x->value = v;
	if (lname) {
		dualpath__v1__label__init(&lab[*n]);
		lab[*n].name = (char *)lname;
		lab[*n].value = (char *)lvalue;
		x->n_labels = 1; /* labels pointer set once the arrays are final */
	}
	ptrs[*n] = x;
	(*n)++;
}

void dp_metrics_fill(struct dp_server *srv, const struct front *f, const struct dp_compute_stats *s,
		     struct dp_metric_set *ms)
{
	enum { MAXM = DP_METRICS_MAX }; /* room for every metric below (add_metric checks) */
	Dualpath__V1__Metric *m = ms->m;
	Dualpath__V1__Metric **ptrs = ms->ptrs;
	Dualpath__V1__Label *lab = ms->lab;
	Dualpath__V1__Label **labp = ms->labp;
	size_t n = 0;
	static const char *const tiers[] = { "device", "dram", "nvme", "none" };
	static const char *const classes[] = { "weights", "state", "scratch" };

#define G(name, help, v) add_metric(m, ptrs, &n, lab, MAXM, name, help, false, (double)(v), NULL, NULL)
#define C(name, help, v) add_metric(m, ptrs, &n, lab, MAXM, name, help, true, (double)(v), NULL, NULL)
#define GL(name, help, v, ln, lv) add_metric(m, ptrs, &n, lab, MAXM, name, help, false, (double)(v), ln, lv)
#define CL(name, help, v, ln, lv) add_metric(m, ptrs, &n, lab, MAXM, name, help, true, (double)(v), ln, lv)
	G("dualpath_uptime_seconds", "seconds since start", (dp_clock_ns() - srv->start_ns) / 1e9);
	GL("dualpath_backend_info", "compute backend", 1, "backend", s->backend);
	G("dualpath_draining", "1 while draining", s->draining);
	if (srv->shared_configured)
		G("dualpath_shared_tier_up", "1 when the shared tier (shared_tier) was reached; 0: "
		  "down, serving from local tiers", dp_shared_health_up(srv));
	if (srv->shared_configured) {
		const struct dp_shared_stats *sh = &s->shared;
		C("dualpath_shared_takeovers_total", "sessions taken over from another host's manifest",
		  sh->takeovers);
		C("dualpath_shared_restores_total", "taken-over states restored from the shared tier, "
		  "layer by layer, every page checked", sh->restores);
		C("dualpath_shared_restore_bytes_total", "state bytes those restores brought",
		  sh->restore_bytes);
		C("dualpath_shared_restore_seconds_total", "their total duration", sh->restore_ns / 1e9);
		C("dualpath_shared_restore_failures_total", "restores a failed page or segment poisoned "
		  "(recomputed)", sh->restore_failures);
		C("dualpath_shared_recomputes_total", "taken-over states recomputed from the history",
		  sh->recomputes);
		C("dualpath_shared_state_commits_total", "turns whose state went to the shared tier",
		  sh->state_commits);
		C("dualpath_shared_state_pages_written_total", "state pages written (new or changed)",
		  sh->pages_written);
		C("dualpath_shared_state_pages_reused_total", "state pages named again, unchanged",
		  sh->pages_reused);
		C("dualpath_shared_state_write_seconds_total", "commit-path time writing state pages",
		  sh->state_ns / 1e9);
		C("dualpath_shared_segments_deleted_total", "segments no manifest names, deleted",
		  sh->segments_deleted);
		C("dualpath_shared_segments_collected_total", "segments a crash left, deleted at takeover",
		  sh->segments_collected);
	}
	if (srv->cluster) { /* daemon/cluster.h */
		struct dp_cluster_stats cs;
		dp_cluster_stats(srv->cluster, &cs);
		G("dualpath_cluster_members_live", "members of the shared tier with a live heartbeat",
		  cs.members_live);
		G("dualpath_shared_leases_held", "sessions whose leases this host holds", cs.leases_held);
		C("dualpath_shared_leases_lost_total", "leases found taken by another host at renewal",
		  cs.leases_lost);
		C("dualpath_shared_leases_released_total", "leases of idle sessions let go",
		  cs.leases_released);
		C("dualpath_shared_handoffs_total",
		  "leases released at once on request (EvictSession release: a hand-off)", cs.handoffs);
		C("dualpath_shared_lease_renewals_total", "lease renewals (cluster thread)", cs.renewals);
		C("dualpath_cluster_heartbeat_errors_total", "membership heartbeats that failed",
		  cs.beat_errors);
		C("dualpath_cluster_member_notifies_total",
		  "member-list notifies received (joins and leaves, watch/notify): the list re-read at once",
		  cs.notifies);
	}
	if (f) { /* the socket front's own counters (its thread only) */
		G("dualpath_connections", "open client connections", f->n_open);
		C("dualpath_connections_total", "connections accepted", f->accepted);
		C("dualpath_frames_in_total", "request frames received", f->frames_in);
		C("dualpath_frames_out_total", "response frames sent", f->frames_out);
		C("dualpath_bad_frames_total", "connections closed for a bad frame", f->bad_frames);
		C("dualpath_permission_denied_total", "admin requests refused", f->denied);
		C("dualpath_slow_client_closes_total", "connections closed for not reading", f->slow_closes);
		C("dualpath_connections_refused_total", "connections refused (max_connections)", f->rejected);
		C("dualpath_accept_errors_total", "accept() failures (out of file descriptors...), each "
		  "pausing accept for 100 ms", f->accept_errors);
		C("dualpath_hello_timeouts_total", "connections closed for no Hello in hello_timeout_ms",
		  f->hello_timeouts);
		C("dualpath_idle_closes_total", "connections closed after idle_timeout_ms", f->idle_closes);
		C("dualpath_requests_overloaded_total", "requests refused: compute's queue was full",
		  f->overloaded);
		G("dualpath_client_buffer_bytes", "memory connections hold (responses unread, requests "
		  "partly received)", f->held);
		G("dualpath_client_buffer_peak_bytes", "... its high-water mark", f->held_peak);
	}
	G("dualpath_events_outbox_peak", "most events compute held while the front was behind",
	  s->outbox_peak);
	C("dualpath_events_dropped_total", "events to the front lost for want of memory",
	  s->events_dropped);
	G("dualpath_requests_active", "requests being computed", s->active);
	G("dualpath_requests_waiting", "requests waiting for admission", s->waiting);
	C("dualpath_requests_started_total", "requests admitted", s->requests_started);
	C("dualpath_requests_finished_total", "requests that ended normally", s->requests_finished);
	C("dualpath_requests_cancelled_total", "requests cancelled", s->requests_cancelled);
	C("dualpath_requests_failed_total", "requests that failed", s->requests_failed);
	C("dualpath_steps_total", "forward steps", s->steps);
	C("dualpath_step_seconds_total", "time in forward steps", s->step_ns_total / 1e9);
	C("dualpath_compute_seconds_total", "step time spent computing", s->compute_ns / 1e9);
	C("dualpath_stall_seconds_total", "step time the compute path waited for restored pages",
	  s->stall_ns / 1e9);
	C("dualpath_restore_hold_seconds_total",
	  "time no step ran because a returning session's state was held back until it "
	  "would arrive in time (nothing else to run)",
	  s->hold_ns / 1e9);
	C("dualpath_restore_holds_total", "such holds", s->holds);
	C("dualpath_restore_joins_forced_total",
	  "restoring sessions that joined a step once left out past their bound, in time or not",
	  s->joins_forced);
	C("dualpath_kv_restores_total", "layer-by-layer restores completed", s->kv.restores);
	C("dualpath_kv_restore_seconds_total", "their total duration", s->kv.restore_ns / 1e9);
	C("dualpath_kv_restore_io_seconds_total", "time restore reads were in flight",
	  s->kv.restore_io_ns / 1e9);
	C("dualpath_kv_restore_io_bytes_total", "bytes restore reads moved", s->kv.restore_io_bytes);
	C("dualpath_kv_loads_total", "whole-state loads the compute thread waited for (restore=full)",
	  s->kv.loads);
	C("dualpath_kv_load_seconds_total", "their total duration", s->kv.load_ns / 1e9);
	CL("dualpath_tokens_total", "tokens through the model", s->tokens_prefill, "phase", "prefill");
	CL("dualpath_tokens_total", "tokens through the model", s->tokens_decode, "phase", "decode");
	G("dualpath_tokens_per_second", "recent forward throughput", s->tok_s);
	G("dualpath_sessions", "sessions", s->sessions);
	for (int t = 0; t < DP_KV_TIER_MAX; t++) {
		GL("dualpath_kv_sessions", "sessions by state tier", s->kv.sessions[t], "tier", tiers[t]);
		if (t == DP_KV_TIER_NONE)
			continue;
		GL("dualpath_kv_bytes", "state bytes by tier", s->kv.bytes[t], "tier", tiers[t]);
		GL("dualpath_kv_budget_bytes", "tier budget (0: none)", s->kv.budget[t], "tier", tiers[t]);
	}
	G("dualpath_prefix_units", "prefix units kept (counted in dualpath_kv_sessions too)",
	  s->kv.units);
	C("dualpath_prefix_hits_total", "stateless requests that started from a prefix unit",
	  s->kv.prefix_hits);
	C("dualpath_prefix_misses_total", "stateless requests no prefix unit matched",
	  s->kv.prefix_misses);
	C("dualpath_prefix_cached_tokens_total", "prompt tokens prefix units spared",
	  s->kv.prefix_cached_tokens);
	C("dualpath_prefix_units_left_total", "prefix units made (prompt ends, reply ends)",
	  s->kv.units_left);
	C("dualpath_prefix_units_dropped_total", "prefix units dropped (LRU past max_units, no state)",
	  s->kv.units_dropped);
	C("dualpath_prefix_units_corrupt_total", "prefix units dropped: a page failed its checks",
	  s->kv.units_corrupt);
	C("dualpath_prefix_unit_copy_bytes_total", "state bytes copied into prefix units",
	  s->kv.unit_copy_bytes);
	C("dualpath_prefix_unit_shared_bytes_total",
	  "state bytes prefix units hold by reference (pages an earlier unit holds)",
	  s->kv.unit_shared_bytes);
	C("dualpath_prefix_unit_leave_seconds_total", "compute-thread time spent leaving prefix units",
	  s->kv.unit_leave_ns / 1e9);
	C("dualpath_kv_promotions_total", "state promotions", s->kv.promotions);
	C("dualpath_kv_demotions_total", "state demotions", s->kv.demotions);
	C("dualpath_kv_drops_total", "sessions dropped", s->kv.drops);
	C("dualpath_kv_pages_written_total", "pages written to NVMe", s->kv.pages_written);
	C("dualpath_kv_pages_shared_total",
	  "snapshot pages that named an NVMe slot already holding their bytes instead of a write",
	  s->kv.pages_shared);
	C("dualpath_kv_pages_read_total", "pages read from NVMe", s->kv.pages_read);
	C("dualpath_kv_writebacks_total", "demotions to NVMe written behind the compute path",
	  s->kv.writebacks);
	C("dualpath_kv_writeback_errors_total", "writebacks that failed (the state stayed)",
	  s->kv.writeback_errors);
	G("dualpath_kv_writeback_pages", "pages being written out now", s->kv.writeback_pages);
	C("dualpath_kv_corrupt_pages_total", "pages that failed their checks (recomputed)", s->kv.corrupt_pages);
	C("dualpath_kv_recomputed_tokens_total", "history tokens replayed into state", s->kv.recomputed_tokens);
	C("dualpath_journal_commits_total", "journal fsyncs of finished turns", s->kv.commits);
	C("dualpath_journal_damaged_records_total", "damaged journal records skipped at start",
	  s->kv.journal_damaged_records);
	C("dualpath_journal_damaged_bytes_total", "their bytes", s->kv.journal_damaged_bytes);
	C("dualpath_journal_repaired_records_total", "records damaged in a header field only, replayed",
	  s->kv.journal_repaired_records);
	C("dualpath_journal_sessions_lost_total", "sessions whose history journal damage lost",
	  s->kv.journal_sessions_lost);
	G("dualpath_kv_lost_sessions", "lost sessions not yet closed (Generate gets DATA_LOSS)",
	  s->kv.lost_sessions);
	C("dualpath_kv_slot_file_resets_total", "slot files set aside for a damaged header",
	  s->kv.slot_file_resets);
	G("dualpath_journal_bytes", "journal size", s->kv.journal_bytes);
	C("dualpath_journal_compactions_total", "journal rewrites down to the live sessions", s->kv.compactions);
	G("dualpath_kv_direct_io", "1 if the NVMe tier uses O_DIRECT", s->kv.direct_io);
	GL("dualpath_io_info", "how the NVMe tier does I/O", 1, "mode", s->io_mode);
	if (s->engram) {
		const struct dp_engram_store_stats *e = &s->engram_store;
		C("dualpath_engram_rows_total", "Engram row lookups served", e->rows);
		C("dualpath_engram_cache_hits_total", "... found in the hot-row cache", e->cache_hits);
		C("dualpath_engram_cache_misses_total", "... not found there", e->cache_misses);
		C("dualpath_engram_sync_prefetches_total", "steps whose rows were not prefetched",
		  e->sync_prefetches);
		C("dualpath_engram_read_bytes_total", "bytes the Engram reads moved (nvme)",
		  e->bytes_read);
		C("dualpath_engram_wait_seconds_total", "time Engram layers waited for their rows",
		  e->wait_ns / 1e9);
		G("dualpath_engram_table_bytes", "Engram table bytes held in memory", e->table_bytes);
	}
	if (s->experts.where != DP_V4_EXPERTS_DEVICE) {
		const struct dp_v4_expert_stats *x = &s->experts;
		GL("dualpath_experts_info", "where routed experts are paged from", 1, "from",
		   dp_v4_experts_where_name(x->where));
		G("dualpath_experts_slots", "experts a layer keeps on the device", x->slots);
		G("dualpath_experts_cache_bytes", "backend memory of the expert slots", x->cache_bytes);
		C("dualpath_experts_uses_total", "(layer, expert) pairs steps used", x->uses);
		C("dualpath_experts_hits_total", "... already on the device", x->hits);
		C("dualpath_experts_misses_total", "... brought in when the layer needed them",
		  x->misses);
		C("dualpath_experts_read_ahead_total", "... read ahead (hash layers; lookahead)",
		  x->prefetched);
		C("dualpath_experts_read_ahead_unused_total", "lookahead guesses the router did not make",
		  x->ahead_unused);
		C("dualpath_experts_passes_total", "moe calls (more than one a layer when picks > slots)",
		  x->passes);
		C("dualpath_experts_in_bytes_total", "checkpoint bytes brought in", x->bytes_in);
		C("dualpath_experts_corrupt_total",
		  "expert reads that differed from the checkpoint at load (step failed)", x->corrupt);
		C("dualpath_experts_wait_seconds_total", "time layers waited for expert reads",
		  x->wait_ns / 1e9);
	}
	if (s->csa_host) {
		const struct dp_v4_csa_stats *a = &s->csa;
		C("dualpath_csa_entries_selected_total",
		  "CSA entries the indexer picked (distinct per sequence, layer and step)", a->selected);
		C("dualpath_csa_entries_staged_hits_total", "... already staged on the device", a->hits);
		C("dualpath_csa_entries_fetched_total", "... fetched from host memory after the indexer",
		  a->fetched);
		C("dualpath_csa_entries_fetched_bytes_total", "host-to-device bytes of those", a->bytes);
		C("dualpath_csa_entries_evicted_total", "staged entries dropped (not picked recently)",
		  a->evicted);
		C("dualpath_csa_gather_seconds_total", "time layers spent staging picked entries",
		  a->gather_ns / 1e9);
		G("dualpath_csa_host_bytes", "host memory holding CSA entries", s->kv.host_state_bytes);
	}
	C("dualpath_io_reads_total", "io engine reads finished", s->io.reads);
	C("dualpath_io_writes_total", "io engine writes finished", s->io.writes);
	C("dualpath_io_syncs_total", "io engine syncs finished", s->io.syncs);
	C("dualpath_io_read_bytes_total", "bytes read by the io engine", s->io.bytes_read);
	C("dualpath_io_written_bytes_total", "bytes written by the io engine", s->io.bytes_written);
	C("dualpath_io_errors_total", "io engine requests that failed", s->io.errors);
	C("dualpath_io_retries_total", "short or EAGAIN transfers resubmitted", s->io.retries);
	G("dualpath_io_inflight", "requests in the kernel now", s->io.inflight);
	C("dualpath_io_busy_seconds_total", "io thread time awake", s->io.busy_ns / 1e9);
	C("dualpath_io_read_waits_total", "reads held back by [io] read_rate", s->io.read_waits);
	C("dualpath_io_read_wait_seconds_total", "time reads waited for [io] read_rate",
	  s->io.read_wait_ns / 1e9);
	for (int k = 0; k < DP_GPU_MEM_CLASS_MAX; k++)
		GL("dualpath_backend_bytes", "backend memory by class", s->mem.bytes[k], "class", classes[k]);
	G("dualpath_backend_peak_bytes", "backend memory high-water mark", s->mem.peak_bytes);
	if (srv->shared_configured) { /* prefix units on the shared tier (daemon/shared-units.h) */
		const struct dp_shared_units_stats *su = &s->units;
		C("dualpath_shared_units_published_total", "prefix units this host wrote to the shared tier",
		  su->published);
		C("dualpath_shared_units_existed_total", "... found there already (another host's): skipped",
		  su->existed);
		C("dualpath_shared_units_dropped_total", "... not published: the publish queue was full",
		  su->dropped);
		C("dualpath_shared_units_errors_total", "... whose writes failed", su->errors);
		C("dualpath_shared_units_publish_seconds_total",
		  "compute-thread time copying unit states to publish", su->publish_ns / 1e9);
		G("dualpath_shared_units_indexed", "units of the shared tier this host's index knows",
		  su->indexed);
		C("dualpath_shared_units_index_full_total", "units not indexed: the index's memory cap",
		  su->index_full);
		C("dualpath_shared_units_bad_manifests_total", "unit manifests failing their checks (unused)",
		  su->bad_manifests);
		C("dualpath_shared_units_found_total", "requests that started from a unit of the shared tier",
		  su->found);
		C("dualpath_shared_units_restored_total", "... whose every page came back and checked",
		  su->restored);
		C("dualpath_shared_units_corrupt_total",
		  "... whose pages failed their checks (the prompt recomputed; the unit never used again)",
		  su->corrupt);
	}
#undef G
#undef C
#undef GL
#undef CL
	/* labels: one per labelled metric */
	for (size_t i = 0; i < n; i++)
		if (m[i].n_labels) {
			labp[i] = &lab[i];
			m[i].labels = &labp[i];
		}
	ms->n = n;
}

void front_send_stats(struct front *f, uint32_t slot, uint64_t id, const struct dp_compute_stats *s)
{
	struct dp_metric_set *ms = malloc(sizeof(*ms));
	if (!ms) {
		front_reply_error(f, slot, id, DUALPATH__V1__CODE__RESOURCE_EXHAUSTED, "out of memory");
		return;
	}
	dp_metrics_fill(f->srv, f, s, ms);
	Dualpath__V1__StatsReply sr = DUALPATH__V1__STATS_REPLY__INIT;
	Dualpath__V1__Response r = DUALPATH__V1__RESPONSE__INIT;
	sr.n_metrics = ms->n;
	sr.metrics = ms->ptrs;
	r.request_id = id;
	r.body_case = DUALPATH__V1__RESPONSE__BODY_STATS;
	r.stats = &sr;
	front_reply(f, slot, &r);
	free(ms);
}
