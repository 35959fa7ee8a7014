/* SPDX-License-Identifier: MIT */
/*
 * kvcache/pump.c — dp_kv_pump: hand the io thread, once per step, what the
 * KV cache's asynchronous work has waiting: the writebacks' slot writes that
 * come first in the restore queue's order (never a read: admission has not
 * decided yet), and finished writebacks to the journal; and begin the step
 * for the restore queue (rqueue.c): deadlines of restores left out of the
 * last step move up, and the pages the step needs first go out.
 *
 * It lives apart so that rqueue.c and writeback.c do not call each other
 * both ways; the part's whole call graph is drawn at the top of
 * kvcache-internal.h.
 */
#include "kvcache/kvcache-internal.h"

void dp_kv_pump(struct dp_kv *kv)
{
	dp_kv_wb_progress(kv);
	dp_kv_restore_step(kv);
}
