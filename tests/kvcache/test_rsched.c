/* SPDX-License-Identifier: MIT */
/*
 * The read scheduler (kvcache/rsched.h): earliest deadline first across
 * streams, the byte cap and who may pass it, deadlines that move with a
 * session left out of a step, writeback's bounded delay, and admission by
 * the measured I/O rate with its bounded deferral.
 */
#include <criterion/criterion.h>
#include <errno.h>

#include "kvcache/rsched.h"

#define PAGE 1000u
#define L 4u /* layers: a step is L ticks */

static struct dp_rsched *rs;

static void setup(void)
{
	cr_assert_eq(dp_rsched_new(0, 2 * L, &rs), 0);
}

static void teardown(void)
{
	dp_rsched_free(rs);
}

TestSuite(rsched, .init = setup, .fini = teardown);

/* a session's restore: pages per layer, tag = layer * 100 + page */
static uint32_t restore(uint64_t base, uint32_t per_layer, void *ctx)
{
	uint32_t id;
	cr_assert_eq(dp_rsched_stream_open(rs, DP_RSCHED_RESTORE, base, ctx, &id), 0);
	for (uint32_t l = 0; l < L; l++)
		for (uint32_t p = 0; p < per_layer; p++)
			cr_assert_eq(dp_rsched_push(rs, id, l, PAGE, l * 100 + p), 0);
	return id;
}

Test(rsched, restores_that_begin_together_come_back_layer_by_layer_across_the_batch)
{
	int a, b, c;
	restore(0, 3, &a);
	restore(0, 3, &b);
	restore(0, 3, &c);
	/* the old order was a's whole state, then b's, then c's: here every
	 * session's layer l goes before anyone's layer l + 1 */
	uint64_t last = 0;
	for (uint32_t k = 0; k < 3 * 3 * L; k++) {
		struct dp_rsched_item it;
		cr_assert_eq(dp_rsched_pop(rs, 0, &it), 0);
		cr_expect_geq(it.deadline, last, "pop %u went back in time", k);
		cr_expect_eq(it.deadline, k / 9, "pop %u: layer %llu, not %u", k,
			     (unsigned long long)it.deadline, k / 9);
		last = it.deadline;
	}
	struct dp_rsched_item it;
	cr_expect_eq(dp_rsched_pop(rs, 0, &it), -ENOENT);
}

Test(rsched, within_a_stream_and_on_ties_the_older_stream_and_push_order_win)
{
	int a, b;
	uint32_t ia = restore(0, 2, &a);
	uint32_t ib = restore(0, 2, &b);
	struct dp_rsched_item it;
	uint32_t want[][2] = { { ia, 0 }, { ia, 1 }, { ib, 0 }, { ib, 1 }, { ia, 100 } };
	for (size_t k = 0; k < sizeof(want) / sizeof(want[0]); k++) {
		cr_assert_eq(dp_rsched_pop(rs, 0, &it), 0);
		cr_expect_eq(it.stream, want[k][0], "pop %zu", k);
		cr_expect_eq(it.tag, want[k][1], "pop %zu", k);
		cr_expect_eq(it.ctx, it.stream == ia ? (void *)&a : (void *)&b);
	}
}

Test(rsched, a_page_needed_sooner_overtakes_pages_queued_earlier)
{
	int a, b;
	restore(0, 2, &a); /* a is in this step */
	struct dp_rsched_item it;
	cr_assert_eq(dp_rsched_pop(rs, 0, &it), 0); /* a's layer 0 goes out */
	cr_assert_eq(dp_rsched_pop(rs, 0, &it), 0);
	/* b arrives needed in the next step: a's later layers still go first;
	 * c arrives for this step: its layer 1 before a's layer 2 */
	uint32_t ib = restore(L, 1, &b);
	int c;
	uint32_t ic = restore(0, 1, &c);
	cr_assert_eq(dp_rsched_pop(rs, 0, &it), 0);
	cr_expect_eq(it.stream, ic, "c's layer 0 (deadline 0) first");
	cr_expect_eq(it.deadline, 0);
	uint32_t order[6];
	for (int k = 0; k < 6; k++) {
		cr_assert_eq(dp_rsched_pop(rs, 0, &it), 0);
		order[k] = (uint32_t)it.deadline;
	}
	uint32_t want[6] = { 1, 1, 1, 2, 2, 2 };
	cr_expect_arr_eq(order, want, sizeof(want));
	while (dp_rsched_pop(rs, 0, &it) == 0)
		if (it.stream == ib)
			cr_expect_geq(it.deadline, L, "b is needed a step later");
}

Test(rsched, the_cap_holds_back_what_compute_needs_later)
{
	cr_assert_eq(dp_rsched_set_cap(rs, 3 * PAGE), 0);
	int a;
	restore(0, 2, &a);
	struct dp_rsched_item it;
	for (int k = 0; k < 3; k++)
		cr_assert_eq(dp_rsched_pop(rs, 0, &it), 0);
	cr_expect_eq(dp_rsched_inflight(rs), 3 * PAGE);
	cr_expect_eq(dp_rsched_pop(rs, 0, &it), -EAGAIN, "a fourth page would pass the cap");
	cr_expect_eq(dp_rsched_stream_queued(rs, 0), 2 * L - 3, "nothing was taken");
	dp_rsched_done(rs, DP_RSCHED_RESTORE, PAGE); /* a completion: room for one */
	cr_expect_eq(dp_rsched_pop(rs, 0, &it), 0);
	cr_expect_eq(dp_rsched_pop(rs, 0, &it), -EAGAIN);
	cr_expect_eq(dp_rsched_inflight(rs), 3 * PAGE);
}

Test(rsched, a_gate_waiting_for_its_layer_takes_it_past_the_cap)
{
	cr_assert_eq(dp_rsched_set_cap(rs, 2 * PAGE), 0);
	int a;
	restore(0, 3, &a);
	struct dp_rsched_item it;
	cr_assert_eq(dp_rsched_pop(rs, 0, &it), 0);
	cr_assert_eq(dp_rsched_pop(rs, 0, &it), 0);
	/* compute stands at layer 0 and needs its third page: it goes */
	cr_expect_eq(dp_rsched_pop(rs, 0, &it), 0);
	cr_expect_eq(it.deadline, 0);
	/* layer 1 is not needed yet: the cap holds */
	cr_expect_eq(dp_rsched_pop(rs, 0, &it), -EAGAIN);
	cr_expect_eq(dp_rsched_pop(rs, 1, &it), 0, "the gate of layer 1 takes it");
}

Test(rsched, with_nothing_in_flight_a_read_bigger_than_the_cap_still_goes)
{
	cr_assert_eq(dp_rsched_set_cap(rs, PAGE / 2), 0);
	int a;
	restore(L, 1, &a);
	struct dp_rsched_item it;
	cr_expect_eq(dp_rsched_pop(rs, 0, &it), 0, "else nothing would ever move");
	cr_expect_eq(dp_rsched_pop(rs, 0, &it), -EAGAIN);
}

Test(rsched, a_session_left_out_of_a_step_moves_its_deadlines_to_the_next)
{
	int a, b;
	uint32_t ia = restore(0, 1, &a);
	uint32_t ib = restore(0, 1, &b);
	cr_assert_eq(dp_rsched_stream_rebase(rs, ia, L), 0); /* a waits a step */
	struct dp_rsched_item it;
	for (uint32_t l = 0; l < L; l++) {
		cr_assert_eq(dp_rsched_pop(rs, 0, &it), 0);
		cr_expect_eq(it.stream, ib, "b, which runs now, has all of its layers first");
	}
	cr_assert_eq(dp_rsched_pop(rs, 0, &it), 0);
	cr_expect_eq(it.stream, ia);
	cr_expect_eq(it.deadline, L);
}

Test(rsched, writeback_never_starves_behind_a_stream_of_restores)
{
	uint32_t wb;
	cr_assert_eq(dp_rsched_stream_open(rs, DP_RSCHED_WRITEBACK, 0, NULL, &wb), 0);
	cr_assert_eq(dp_rsched_push(rs, wb, 0, PAGE, 7), 0); /* due at tick 2L */
	cr_expect_eq(dp_rsched_stream_rebase(rs, wb, 5), -EINVAL, "its deadline is absolute");
	/* a new session's restore arrives every step, forever */
	int ctx;
	struct dp_rsched_item it;
	bool went = false;
	uint64_t late = 0;
	for (uint64_t step = 0; step < 20 && !went; step++) {
		dp_rsched_advance(rs, step * L);
		restore(step * L, 2, &ctx);
		for (uint32_t k = 0; k < 2 * L && !went; k++) {
			cr_assert_eq(dp_rsched_pop(rs, 0, &it), 0);
			if (it.tag == 7 && it.ctx == NULL) {
				went = true;
				late = step;
			} else {
				cr_expect_leq(it.deadline, 2 * L,
					      "a read needed after the writeback's deadline went first");
			}
		}
	}
	cr_expect(went, "the writeback never went");
	cr_expect_leq(late, 2, "within its delay (2 steps), it went at step %llu",
		      (unsigned long long)late);
}

Test(rsched, writeback_under_its_class_cap_lets_reads_needed_sooner_go_first)
{
	/* a writeback of 10 pages, due at 2L, and its class capped at two
	 * pages in flight: two go, the rest wait for them (not for the
	 * reads), and a restore that begins meanwhile goes at once: at most
	 * the cap of writeback bytes is ever ahead of it */
	cr_assert_eq(dp_rsched_set_class_cap(rs, DP_RSCHED_WRITEBACK, 2 * PAGE), 0);
	uint32_t wb;
	cr_assert_eq(dp_rsched_stream_open(rs, DP_RSCHED_WRITEBACK, 0, NULL, &wb), 0);
	for (uint64_t k = 0; k < 10; k++)
		cr_assert_eq(dp_rsched_push(rs, wb, 0, PAGE, k), 0);
	cr_expect_eq(dp_rsched_queued_class(rs, DP_RSCHED_WRITEBACK), 10 * PAGE);
	struct dp_rsched_item it;
	for (int k = 0; k < 2; k++) {
		cr_assert_eq(dp_rsched_pop(rs, 0, &it), 0);
		cr_expect_eq(it.klass, DP_RSCHED_WRITEBACK);
	}
	cr_expect_eq(dp_rsched_pop(rs, 0, &it), -EAGAIN, "a third page passes the class cap");
	cr_expect_eq(dp_rsched_peek(rs, 0, &it), -EAGAIN);
	int a;
	restore(L, 1, &a); /* needed from the next step on, before the writeback */
	for (uint32_t l = 0; l < L; l++) {
		cr_assert_eq(dp_rsched_pop(rs, 0, &it), 0);
		cr_expect_eq(it.klass, DP_RSCHED_RESTORE, "pop %u", l);
	}
	cr_expect_eq(dp_rsched_inflight_class(rs, DP_RSCHED_WRITEBACK), 2 * PAGE);
	cr_expect_eq(dp_rsched_inflight_class(rs, DP_RSCHED_RESTORE), L * PAGE);
	cr_expect_eq(dp_rsched_inflight(rs), (2 + L) * PAGE);
	cr_expect_eq(dp_rsched_queued_class(rs, DP_RSCHED_WRITEBACK), 8 * PAGE);
	/* a write done: room for one more, not two */
	dp_rsched_done(rs, DP_RSCHED_WRITEBACK, PAGE);
	cr_assert_eq(dp_rsched_pop(rs, 0, &it), 0);
	cr_expect_eq(it.klass, DP_RSCHED_WRITEBACK);
	cr_expect_eq(dp_rsched_pop(rs, 0, &it), -EAGAIN);
	/* due: it goes past its cap (bounded delay) */
	for (int k = 0; k < 7; k++) {
		cr_assert_eq(dp_rsched_pop(rs, 2 * L, &it), 0);
		cr_expect_eq(it.tag, (uint64_t)k + 3);
	}
	cr_expect_eq(dp_rsched_pop(rs, 2 * L, &it), -ENOENT);
	cr_expect_eq(dp_rsched_queued_class(rs, DP_RSCHED_WRITEBACK), 0);
}

Test(rsched, a_writeback_under_both_caps_still_goes_within_its_delay_behind_restores)
{
	/* every layer needs 4 restore pages, more than the window (3): the
	 * gates take them past it, so it never has room for anything needed
	 * later; the writeback (its own cap one page) waits, but only until
	 * it is due (a rule that held it for room would hold it for ever) */
	cr_assert_eq(dp_rsched_set_cap(rs, 3 * PAGE), 0);
	cr_assert_eq(dp_rsched_set_class_cap(rs, DP_RSCHED_WRITEBACK, PAGE), 0);
	uint32_t wb;
	cr_assert_eq(dp_rsched_stream_open(rs, DP_RSCHED_WRITEBACK, 0, NULL, &wb), 0);
	int ctx;
	restore(0, 4, &ctx);
	for (uint64_t k = 0; k < 4; k++)
		cr_assert_eq(dp_rsched_push(rs, wb, 0, PAGE, 100 + k), 0); /* due at 2L */
	struct dp_rsched_item it, fl[64];
	size_t n_fl = 0;
	uint64_t wb_left = 4, last = 0;
	for (uint64_t step = 0; step < 20 && wb_left; step++) {
		dp_rsched_advance(rs, step * L);
		restore((step + 1) * L, 4, &ctx); /* the next step's, every step */
		for (uint32_t l = 0; l < L; l++) {
			uint64_t need = step * L + l;
			/* the gate of layer l */
			while (dp_rsched_pop(rs, need, &it) == 0) {
				cr_assert_lt(n_fl, 64);
				fl[n_fl++] = it;
				if (it.klass == DP_RSCHED_WRITEBACK) {
					wb_left--;
					last = need;
				}
			}
			/* the layer computed: the device is a layer behind (what
			 * the layer before needed has been read: something is
			 * always in flight), and the writes issued are written */
			size_t m = 0;
			for (size_t k = 0; k < n_fl; k++) {
				if (fl[k].deadline < need || fl[k].klass == DP_RSCHED_WRITEBACK)
					dp_rsched_done(rs, fl[k].klass, fl[k].bytes);
				else
					fl[m++] = fl[k];
			}
			n_fl = m;
		}
	}
	cr_expect_eq(wb_left, 0, "the writeback never went");
	cr_expect_eq(last, 2 * L, "all of it went when due (tick 2L), its last page at tick %llu",
		     (unsigned long long)last);
}

Test(rsched, on_equal_deadlines_a_read_compute_waits_for_beats_writeback)
{
	uint32_t wb, id;
	cr_assert_eq(dp_rsched_stream_open(rs, DP_RSCHED_WRITEBACK, 0, NULL, &wb), 0);
	cr_assert_eq(dp_rsched_push(rs, wb, 0, PAGE, 1), 0); /* due at 2L */
	int a;
	cr_assert_eq(dp_rsched_stream_open(rs, DP_RSCHED_RESTORE, 2 * L, &a, &id), 0);
	cr_assert_eq(dp_rsched_push(rs, id, 0, PAGE, 2), 0);
	struct dp_rsched_item it;
	cr_assert_eq(dp_rsched_pop(rs, 0, &it), 0);
	cr_expect_eq(it.tag, 2);
}

Test(rsched, a_closed_stream_drops_its_queue_and_keeps_its_reads_counted)
{
	int a;
	uint32_t ia = restore(0, 2, &a);
	struct dp_rsched_item it;
	cr_assert_eq(dp_rsched_pop(rs, 0, &it), 0);
	cr_expect_eq(dp_rsched_stream_close(rs, ia), 2 * (int)L - 1);
	cr_expect_eq(dp_rsched_pop(rs, 0, &it), -ENOENT);
	cr_expect_eq(dp_rsched_inflight(rs), PAGE, "the read in flight still lands");
	dp_rsched_done(rs, DP_RSCHED_RESTORE, PAGE);
	cr_expect_eq(dp_rsched_inflight(rs), 0);
	cr_expect_eq(dp_rsched_stream_close(rs, ia), -EINVAL);
}

Test(rsched, a_stream_refuses_a_read_needed_before_its_last_one)
{
	uint32_t id;
	cr_assert_eq(dp_rsched_stream_open(rs, DP_RSCHED_RESTORE, 0, NULL, &id), 0);
	cr_assert_eq(dp_rsched_push(rs, id, 2, PAGE, 0), 0);
	cr_expect_eq(dp_rsched_push(rs, id, 1, PAGE, 1), -EINVAL);
	cr_expect_eq(dp_rsched_push(rs, id, 2, 0, 1), -EINVAL, "zero bytes");
	cr_expect_eq(dp_rsched_push(rs, id + 1, 2, PAGE, 1), -EINVAL, "no such stream");
}

Test(rsched, a_long_stream_keeps_its_order_across_growth)
{
	uint32_t id;
	cr_assert_eq(dp_rsched_stream_open(rs, DP_RSCHED_RESTORE, 0, NULL, &id), 0);
	struct dp_rsched_item it;
	uint64_t next = 0;
	for (uint64_t k = 0; k < 1000; k++) {
		cr_assert_eq(dp_rsched_push(rs, id, k, PAGE, k), 0);
		if (k % 3 == 0) { /* pops between pushes slide the queue */
			cr_assert_eq(dp_rsched_pop(rs, UINT64_MAX, &it), 0);
			cr_expect_eq(it.tag, next++);
		}
	}
	while (dp_rsched_pop(rs, UINT64_MAX, &it) == 0)
		cr_expect_eq(it.tag, next++);
	cr_expect_eq(next, 1000);
}

Test(rsched, expert_reads_and_restore_pages_go_by_the_layer_that_needs_them)
{
	/* a session restoring in this step (3 pages a layer) and the step's
	 * expert reads: layer 1's misses, then layer 3's read-ahead (their
	 * ticks are absolute). Neither kind waits behind the other's later
	 * layers: restore pages of layers 0, 1, layer 1's experts, restore
	 * layers 2, 3, layer 3's experts (on a tie the restore, then FIFO) */
	int a;
	restore(0, 3, &a);
	uint32_t x;
	cr_assert_eq(dp_rsched_stream_open(rs, DP_RSCHED_EXPERT, 0, NULL, &x), 0);
	cr_assert_eq(dp_rsched_push(rs, x, 1, PAGE, 1001), 0);
	cr_assert_eq(dp_rsched_push(rs, x, 3, PAGE, 1003), 0);
	cr_expect_eq(dp_rsched_push(rs, x, 2, PAGE, 1002), -EINVAL, "a stream never goes back");
	cr_expect_eq(dp_rsched_stream_rebase(rs, x, L), -EINVAL, "its deadlines are absolute");
	uint64_t want[] = { 0, 1, 2, 100, 101, 102, 1001, 200, 201, 202, 300, 301, 302, 1003 };
	struct dp_rsched_item it;
	for (size_t k = 0; k < sizeof(want) / sizeof(want[0]); k++) {
		cr_assert_eq(dp_rsched_pop(rs, 0, &it), 0);
		cr_expect_eq(it.tag, want[k], "pop %zu: %llu, not %llu", k,
			     (unsigned long long)it.tag, (unsigned long long)want[k]);
	}
	/* a restore left out to the next step goes after this step's experts */
	int b;
	uint32_t ib = restore(0, 1, &b);
	cr_assert_eq(dp_rsched_stream_rebase(rs, ib, L), 0);
	cr_assert_eq(dp_rsched_push(rs, x, L - 1, PAGE, 1009), 0);
	cr_assert_eq(dp_rsched_pop(rs, 0, &it), 0);
	cr_expect_eq(it.tag, 1009);
	cr_assert_eq(dp_rsched_pop(rs, 0, &it), 0);
	cr_expect_eq(it.stream, ib);
}

/* ---- staggered admission by the measured I/O rate ------------------------ */

/* 1 byte/ns; 100 ns of compute per token and layer; L layers */
static struct dp_rsched_join_in jin(uint32_t settled_tokens)
{
	return (struct dp_rsched_join_in){ .io_bytes_per_ns = 1.0, .token_layer_ns = 100,
					   .slack_ns = 100, .layers = L,
					   .settled_tokens = settled_tokens, .max_defer = 3 };
}

/* a parked session coming back whole: 1000 bytes a layer, 2 tokens */
static struct dp_rsched_joiner back(void)
{
	return (struct dp_rsched_joiner){ .bytes_left = 1000 * L, .layers_left = L, .tokens = 2 };
}

Test(rsched, sessions_that_return_together_with_nothing_else_running_join_one_at_a_time)
{
	/* every session of the batch restores at once: the old rule let them
	 * all in, and the step waited for every first layer before computing
	 * anything. The first goes (waiting helps no one); the others' layer
	 * 0 would arrive after compute reached it: they read meanwhile and
	 * join a step later */
	struct dp_rsched_joiner j[3] = { back(), back(), back() };
	struct dp_rsched_join_in in = jin(0);
	bool join[3];
	cr_assert_eq(dp_rsched_join(&in, j, 3, join), 1);
	cr_expect(join[0]);
	cr_expect_not(join[1]);
	cr_expect_not(join[2]);
	/* a step later their states are in but for the last layer, which
	 * arrives long before compute gets there: both join */
	j[1] = (struct dp_rsched_joiner){ .bytes_left = 1000, .layers_left = 1, .tokens = 2 };
	j[2] = j[1];
	in.settled_tokens = 2; /* the first one's work, ahead in each layer */
	cr_assert_eq(dp_rsched_join(&in, j + 1, 2, join), 2);
}

Test(rsched, with_lone_waits_a_session_returning_alone_waits_until_its_layers_come_in_time)
{
	/* alone, 2 tokens: its layer l is needed at 200 l and arrives at
	 * 1000 (l + 1): it would stall every layer. Held back, not joined */
	struct dp_rsched_joiner j[2] = { back(), back() };
	struct dp_rsched_join_in in = jin(0);
	in.lone_waits = true;
	bool join[2];
	cr_assert_eq(dp_rsched_join(&in, j, 1, join), 0);
	cr_expect_not(join[0], "it would wait in the step for every layer");
	/* with its last layer still to come, needed at 200 (L - 1): in time
	 * once no more than ~200 (L - 1) + slack ns of reading is left */
	j[0] = (struct dp_rsched_joiner){ .bytes_left = 500, .layers_left = 1, .tokens = 2 };
	cr_expect_eq(dp_rsched_join(&in, j, 1, join), 1);
	cr_expect(join[0]);
	/* one in time behind one held joins alone: nothing else runs */
	j[0] = back();
	j[1] = (struct dp_rsched_joiner){ .bytes_left = 500, .layers_left = 1, .tokens = 2 };
	cr_expect_eq(dp_rsched_join(&in, j, 2, join), 1);
	cr_expect_not(join[0]);
	cr_expect(join[1]);
	/* its bound passed (the caller says so with deferred = max_defer):
	 * it joins however late */
	j[1] = back();
	j[0].deferred = in.max_defer;
	cr_expect_eq(dp_rsched_join(&in, j, 2, join), 1);
	cr_expect(join[0]);
	cr_expect_not(join[1]);
	/* without lone_waits the first joins regardless (waiting helps no
	 * step that runs) */
	j[0].deferred = 0;
	in.lone_waits = false;
	cr_expect_eq(dp_rsched_join(&in, j, 1, join), 1);
}

Test(rsched, reads_issued_ahead_of_a_joiner_delay_it_and_every_joiner_after_it)
{
	/* alone, its last layer (500 bytes) is needed at 600 ns: in time on
	 * its own bytes, 1000 ns late behind 1100 bytes of others' reads
	 * already issued (a session held or left out) */
	struct dp_rsched_joiner j[2] = {
		{ .bytes_left = 500, .layers_left = 1, .tokens = 2 },
		{ .bytes_left = 500, .layers_left = 1, .tokens = 2 },
	};
	struct dp_rsched_join_in in = jin(0);
	in.lone_waits = true;
	bool join[2], one[1] = { true };
	cr_expect_float_eq(dp_rsched_join_wait_ns(&in, j, 1, one), -100, 1e-6);
	j[0].bytes_ahead = 1100;
	cr_expect_float_eq(dp_rsched_join_wait_ns(&in, j, 1, one), 1000, 1e-6);
	cr_expect_eq(dp_rsched_join(&in, j, 1, join), 0);
	/* two joiners, 600 bytes issued ahead of the second: its last layer
	 * comes after them and both last layers (1600 ns), needed after 3
	 * layers of 4 tokens and the first's 2 tokens (1400 ns): 200 late */
	j[0].bytes_ahead = 0;
	j[1].bytes_ahead = 600;
	bool both[2] = { true, true };
	cr_expect_float_eq(dp_rsched_join_wait_ns(&in, j, 2, both), 200, 1e-6);
	/* issued ahead of the first, they delay the second too */
	j[0].bytes_ahead = 600;
	j[1].bytes_ahead = 0;
	cr_expect_float_eq(dp_rsched_join_wait_ns(&in, j, 2, both), 200, 1e-6);
}

Test(rsched, a_joiners_bytes_by_layer_put_a_big_early_layer_where_it_is_read)
{
	/* 3000 bytes left of layers 1-3, 2800 of them in layer 1 (a big
	 * compressed layer after a small sliding-window one), 2 tokens */
	uint64_t lb[L] = { 0, 2800, 100, 100 };
	struct dp_rsched_joiner j = { .bytes_left = 3000, .layers_left = 3, .tokens = 2 };
	struct dp_rsched_join_in in = jin(0);
	in.lone_waits = true;
	bool one[1] = { true };
	/* alone: layer l needed at 200 l. Even: layer 1 at 1000 (800 late),
	 * layer 2 at 2000 (1600 late), layer 3 at 3000 (2400 late) */
	cr_expect_float_eq(dp_rsched_join_wait_ns(&in, &j, 1, one), 2400, 1e-6);
	/* by layer: 2800 at layer 1 (2600 late), 2900 at 2, 3000 at 3 */
	j.layer_bytes = lb;
	cr_expect_float_eq(dp_rsched_join_wait_ns(&in, &j, 1, one), 2600, 1e-6);
	/* behind 10 settled tokens a layer, layer l is needed at 100 (12 l +
	 * 10): spread evenly it would be in time everywhere (layer 1 at 1000
	 * against 2200), by layer its layer 1 comes 600 ns late */
	in = jin(10);
	j.layer_bytes = NULL;
	cr_expect_float_eq(dp_rsched_join_wait_ns(&in, &j, 1, one), -1200, 1e-6);
	j.layer_bytes = lb;
	cr_expect_float_eq(dp_rsched_join_wait_ns(&in, &j, 1, one), 600, 1e-6);
	bool join[1];
	cr_expect_eq(dp_rsched_join(&in, &j, 1, join), 0, "its big layer 1 would stall the step");
}

Test(rsched, a_loading_session_joins_when_the_compute_ahead_of_it_covers_its_first_layers)
{
	/* 10 tokens ahead in each layer: its layer 0 is needed at 1000 ns and
	 * arrives at 1000; layer l arrives at 1000 (l + 1) and is needed at
	 * 100 (12 l + 10) */
	struct dp_rsched_joiner j[2] = { back(), back() };
	struct dp_rsched_join_in in = jin(10);
	bool join[2];
	bool one[1] = { true };
	cr_expect_float_eq(dp_rsched_join_wait_ns(&in, j, 1, one), 0, 1e-6);
	/* the second's layer l comes after both layers l - 1 and the first's
	 * layer l (layer-major): at 2000 l + 2000, needed at 100 (14 l + 12),
	 * 2600 ns late at layer 3 */
	cr_assert_eq(dp_rsched_join(&in, j, 2, join), 1);
	cr_expect(join[0]);
	cr_expect_not(join[1], "it would stall the step");
	bool both[2] = { true, true };
	cr_expect_float_eq(dp_rsched_join_wait_ns(&in, j, 2, both), 2600, 1e-6);
	/* with 30 tokens ahead, both are covered */
	in.settled_tokens = 30;
	cr_expect_eq(dp_rsched_join(&in, j, 2, join), 2);
}

Test(rsched, a_deferred_session_joins_after_max_defer_steps_however_slow_its_io)
{
	struct dp_rsched_joiner j[2] = { back(), back() };
	j[1].bytes_left = 1u << 30;
	struct dp_rsched_join_in in = jin(4);
	in.io_bytes_per_ns = 1e-3;
	bool join[2];
	uint32_t steps = 0;
	for (;;) {
		cr_assert_geq(dp_rsched_join(&in, j, 2, join), 0);
		if (join[1])
			break;
		j[1].deferred++;
		steps++;
		cr_assert_leq(steps, 100, "starved");
	}
	cr_expect_eq(steps, 3, "left out max_defer steps, then in");
}

Test(rsched, before_the_rate_or_the_compute_is_measured_all_join)
{
	struct dp_rsched_joiner j[3] = { back(), back(), back() };
	struct dp_rsched_join_in in = jin(0);
	bool join[3];
	in.io_bytes_per_ns = 0;
	cr_expect_eq(dp_rsched_join(&in, j, 3, join), 3, "no rate to predict with");
	in = jin(0);
	in.token_layer_ns = 0;
	cr_expect_eq(dp_rsched_join(&in, j, 3, join), 3, "no compute to predict with");
	/* with lone_waits and nothing else running, none joins: nothing to
	 * predict with, the caller holds the step until a state is all in
	 * (one at its bound joins) */
	in = jin(0);
	in.io_bytes_per_ns = 0;
	in.lone_waits = true;
	cr_expect_eq(dp_rsched_join(&in, j, 3, join), 0, "a lone return unmeasured waits whole");
	j[1].deferred = in.max_defer;
	cr_expect_eq(dp_rsched_join(&in, j, 3, join), 1);
	cr_expect(join[1]);
	j[1].deferred = 0;
	in.settled_tokens = 4;
	cr_expect_eq(dp_rsched_join(&in, j, 3, join), 3, "others run: all join, as before");
	in.layers = 0;
	cr_expect_eq(dp_rsched_join(&in, j, 3, join), -EINVAL);
	in = jin(0);
	cr_expect_eq(dp_rsched_join(&in, NULL, 3, join), -EINVAL);
	cr_expect_eq(dp_rsched_join(&in, NULL, 0, NULL), 0, "nothing to decide");
}
