/* SPDX-License-Identifier: MIT */
/*
 * kvcache/pump.c — dp_kv_pump: hand the io thread, once per step, what the
 * KV cache's asynchronous work could not submit yet (a channel's window was
 * full): the writebacks' slot writes and the restores' page reads.
 *
 * It lives apart so that restore.c and writeback.c do not call each other
 * both ways. Calls between the part's files (caller -> callee):
 *
 *   pump.c      -> writeback.c  dp_kv_wb_progress
 *               -> restore.c    dp_kv_restore_pump
 *   kvcache.c   -> writeback.c  dp_kv_wb_start/progress/finalize/settle/detach
 *               -> restore.c    dp_kv_restore_begin/complete
 *   writeback.c -> restore.c    dp_kv_restore_complete (a restore still reading
 *                               the old slots finishes before they are freed)
 *   restore.c   -> (neither writeback.c nor pump.c)
 *   all         -> tiers.c, journal.c, io/io.h
 *
 * restore.c and writeback.c still use kvcache.c's session helpers (declared
 * in kvcache-internal.h under "kvcache.c, for restore.c and writeback.c"),
 * so kvcache.c and those two still call each other; moving the helpers into
 * a file below all three would make the order strict.
 */
#include "kvcache/kvcache-internal.h"

void dp_kv_pump(struct dp_kv *kv)
{
	dp_kv_wb_progress(kv);
	for (size_t i = 0; i < kv->n; i++)
		if (kv->list[i]->restore)
			dp_kv_restore_pump(kv->list[i]->restore);
}
