/* SPDX-License-Identifier: MIT */
/*
 * The shared tier's round trips are off the compute thread: while a turn's
 * commit (segment and manifest writes) or a session's lease take waits on a
 * cluster that does not answer (paused), the daemon keeps stepping every
 * other stream; the waiting turn is answered once its write lands (never
 * before), and a request behind a committing turn of its session waits for
 * it instead of being refused. Real dualpathd, real cluster.
 */
#include <poll.h>

#include "test_faults.h"

#define GEN 6
#define LEASE "6000" /* longer than the pause: the writes land after it */
#define PAUSE_S 3.0
#define ONE_OFF_MAX 500000u

static const uint32_t prompt_a[] = { 11, 42, 7, 200, 12, 5 };
static const uint32_t prompt_b[] = { 64, 3, 250, 31, 9, 1 };
static const uint32_t prompt_o[] = { 90, 14, 6, 181, 27, 4 };

/* Greedy outputs of turns p[0..n) of one session on a daemon without a
 * shared tier: what the paused-cluster runs must give. */
static void reference(const uint32_t *const *p, size_t n, uint32_t out[][GEN])
{
	static struct daemon_proc r;
	fault_track(&r);
	daemon_start(&r, NULL);
	for (size_t t = 0; t < n; t++) {
		struct fault_turn o;
		fault_turn_run(&r, "ref", p[t], 6, GEN, t + 1, &o);
		cr_assert(fault_acked(&o), "reference turn %zu: %d %s", t, o.fin, o.msg);
		cr_assert_eq(o.n, GEN);
		memcpy(out[t], o.out, sizeof(out[t]));
	}
	cr_assert_eq(daemon_stop(&r), 0);
	daemon_cleanup(&r);
}

/* What a watched turn and the one-off beside it did, on the client's clock. */
struct watch {
	double t_sent, t_first, t_last, t_end, t_resume;
	double o_rate;	     /* the one-off's tokens/s before the pause */
	size_t o_tokens;     /* the one-off's, in all */
	size_t o_wait_take;  /* ... from 0.5 s after the turn was sent to its first token */
	size_t o_wait_commit; /* ... from 0.5 s after its last token to its end */
	struct fault_turn turn, next; /* the turn; the one sent right behind it */
	int closed;		      /* the CloseSession sent right behind it: 0 acked */
};

/* What is sent on the turn's session as soon as its last token came (its
 * commit then waits on the paused cluster). */
enum follow { FOLLOW_NONE, FOLLOW_TURN, FOLLOW_CLOSE };

static void send_close(int fd, uint64_t id, const char *session)
{
	Dualpath__V1__CloseSession cs = DUALPATH__V1__CLOSE_SESSION__INIT;
	Dualpath__V1__Request r = DUALPATH__V1__REQUEST__INIT;
	cs.session_id = (char *)session;
	cs.persist = true;
	r.request_id = id;
	r.body_case = DUALPATH__V1__REQUEST__BODY_CLOSE_SESSION;
	r.close_session = &cs;
	cr_assert_eq(send_req(fd, &r), 0);
}

static int recv_close(int fd)
{
	Dualpath__V1__Response *resp = recv_resp(fd, 30000);
	int res = !resp ? -1000
		  : resp->body_case == DUALPATH__V1__RESPONSE__BODY_ACK ? 0
		  : resp->body_case == DUALPATH__V1__RESPONSE__BODY_ERROR ? -(int)resp->error->code
									    : -1001;
	dp_proto_response_free(resp);
	return res;
}

/* One response on fd into the one-off's counts (true while it streams).
 * The counts skip the first 0.5 s of each wait: tokens already on their
 * way to this client when it began are not evidence of compute stepping. */
static bool one_off_read(int fd, struct watch *w)
{
	Dualpath__V1__Response *r = recv_resp(fd, 5000);
	if (!r)
		return false;
	bool more = r->body_case == DUALPATH__V1__RESPONSE__BODY_TOKEN_CHUNK && !r->token_chunk->finish;
	if (r->body_case == DUALPATH__V1__RESPONSE__BODY_TOKEN_CHUNK) {
		size_t n = r->token_chunk->n_ids;
		double now = fault_now_s();
		w->o_tokens += n;
		if (w->t_sent && !w->t_first && now > w->t_sent + 0.5)
			w->o_wait_take += n;
		if (w->t_last && w->turn.fin == -1000 && now > w->t_last + 0.5)
			w->o_wait_commit += n;
	}
	dp_proto_response_free(r);
	return more;
}

/* Stream a one-off on host d, pause the cluster, send the turn (session,
 * prompt) and read both until the turn ends; the cluster is resumed
 * PAUSE_S after the pause. follow (with next, the follow-up turn's prompt)
 * is sent as soon as the turn's last token came. */
static void watch_turn(struct daemon_proc *d, const char *session, const uint32_t *prompt,
		       enum follow follow, const uint32_t *next, struct watch *w)
{
	memset(w, 0, sizeof(*w));
	w->turn.fin = w->next.fin = w->closed = -1000;
	int fo = client_connect(d), fs = client_connect(d), fn = client_connect(d);
	send_generate(fo, 9, NULL, prompt_o, 6, ONE_OFF_MAX, 0, 0);
	/* it streams: measure its rate for a moment */
	double t0 = fault_now_s();
	while (fault_now_s() - t0 < 0.5)
		cr_assert(one_off_read(fo, w), "the one-off stopped before the test began");
	w->o_rate = (double)w->o_tokens / (fault_now_s() - t0);
	cr_assert_eq(fault_cluster("pause", NULL), 0);
	double t_pause = fault_now_s();
	send_generate(fs, 10, session, prompt, 6, GEN, 0, 0);
	w->t_sent = fault_now_s();
	bool o_live = true;
	while (w->turn.fin == -1000 && fault_now_s() - t_pause < 60) {
		if (!w->t_resume && fault_now_s() - t_pause > PAUSE_S) {
			cr_assert_eq(fault_cluster("resume", NULL), 0);
			w->t_resume = fault_now_s();
		}
		struct pollfd p[2] = { { .fd = fs, .events = POLLIN }, { .fd = fo, .events = POLLIN } };
		if (poll(p, o_live ? 2 : 1, 50) <= 0)
			continue;
		if (o_live && (p[1].revents & (POLLIN | POLLHUP)))
			o_live = one_off_read(fo, w);
		if (!(p[0].revents & (POLLIN | POLLHUP)))
			continue;
		Dualpath__V1__Response *r = recv_resp(fs, 5000);
		cr_assert_not_null(r, "the connection of session %s's turn was lost", session);
		if (r->body_case == DUALPATH__V1__RESPONSE__BODY_ERROR) {
			w->turn.fin = -(int)r->error->code;
			snprintf(w->turn.msg, sizeof(w->turn.msg), "%s", r->error->message);
		} else if (r->body_case == DUALPATH__V1__RESPONSE__BODY_TOKEN_CHUNK) {
			for (size_t i = 0; i < r->token_chunk->n_ids && w->turn.n < FAULT_GEN_MAX; i++)
				w->turn.out[w->turn.n++] = r->token_chunk->ids[i];
			if (w->turn.n && !w->t_first)
				w->t_first = fault_now_s();
			if (w->turn.n == GEN && !w->t_last) {
				w->t_last = fault_now_s();
				if (follow == FOLLOW_TURN)
					send_generate(fn, 11, session, next, 6, GEN, 0, 0);
				else if (follow == FOLLOW_CLOSE)
					send_close(fn, 11, session);
			}
			if (r->token_chunk->finish)
				w->turn.fin = (int)r->token_chunk->finish;
		}
		dp_proto_response_free(r);
	}
	w->t_end = fault_now_s();
	if (!w->t_resume) {
		cr_assert_eq(fault_cluster("resume", NULL), 0);
		w->t_resume = fault_now_s();
	}
	close(fo); /* cancels the one-off */
	if (follow == FOLLOW_TURN && w->t_last)
		fault_collect(fn, 11, &w->next, 30000);
	else if (follow == FOLLOW_CLOSE && w->t_last)
		w->closed = recv_close(fn);
	close(fs);
	close(fn);
	cr_log_info("one-off at %.0f tokens/s before the pause; session %s: sent %.2f s, first token "
		    "%.2f s, last %.2f s, end %.2f s after the pause (resumed at %.2f s); one-off "
		    "tokens while its lease was taken: %zu, while its commit waited: %zu",
		    w->o_rate, session, w->t_sent - t_pause, w->t_first ? w->t_first - t_pause : -1,
		    w->t_last ? w->t_last - t_pause : -1, w->t_end - t_pause, w->t_resume - t_pause,
		    w->o_wait_take, w->o_wait_commit);
}

TestSuite(shared_offcompute, .timeout = 240, .fini = fault_fini);

/* Session s's second turn ends while the cluster is paused: its manifest
 * cannot be written until the cluster resumes. Meanwhile a one-off keeps
 * getting tokens (compute steps on; before, it waited in the commit), the
 * turn is acknowledged only after the resume (when its manifest is in), and
 * the turn sent right behind it on the same session waits and is served. */
Test(shared_offcompute, a_turn_committing_on_a_paused_cluster_does_not_stop_other_streams)
{
	const uint32_t *p[3] = { prompt_a, prompt_b, prompt_o };
	uint32_t ref[3][GEN];
	reference(p, 3, ref);
	char sid[64];
	snprintf(sid, sizeof(sid), "oc-%ld-%d", (long)time(NULL), (int)getpid());
	const char *fa[14] = { 0 };
	fault_host_flags(fa, "host-a", LEASE);
	fa[10] = "--max-new-tokens"; /* the one-off streams all along */
	fa[11] = "500000";
	static struct daemon_proc a;
	fault_track(&a);
	daemon_start(&a, fa);
	struct fault_turn o;
	fault_turn_run(&a, sid, prompt_a, 6, GEN, 1, &o);
	cr_assert(fault_acked(&o), "first turn: %d %s", o.fin, o.msg);
	cr_assert_arr_eq(o.out, ref[0], sizeof(ref[0]));

	struct watch w;
	watch_turn(&a, sid, prompt_b, FOLLOW_TURN, prompt_o, &w);
	cr_assert(fault_acked(&w.turn), "the turn was not acknowledged: %d %s", w.turn.fin, w.turn.msg);
	cr_assert_arr_eq(w.turn.out, ref[1], sizeof(ref[1]), "the turn differs from the reference");
	cr_assert_gt(w.t_end, w.t_resume, "the turn was acknowledged while the cluster was paused "
		     "(before its manifest could be written)");
	cr_assert_gt(w.t_last, 0);
	cr_assert_lt(w.t_last, w.t_resume - 1.0, "the turn's tokens came only after the resume: "
		     "the pause did not land before its commit");
	cr_assert_geq(w.o_wait_commit, 10, "the one-off got %zu tokens while the turn's commit "
		      "waited %.1f s (compute stopped in the commit)", w.o_wait_commit,
		      w.t_end - w.t_last - 0.5);
	/* the turn sent while the last one committed waited for it, then was served */
	cr_assert(fault_acked(&w.next), "the turn behind the committing one: %d %s", w.next.fin,
		  w.next.msg);
	cr_assert_arr_eq(w.next.out, ref[2], sizeof(ref[2]));
	cr_assert_eq(daemon_stop(&a), 0);
	daemon_cleanup(&a);
}

/* A session new to the host while the cluster is paused: its lease take
 * waits for the cluster. Meanwhile a one-off keeps getting tokens (before,
 * compute waited in the take), and once the cluster answers the session is
 * taken and served. */
Test(shared_offcompute, a_lease_take_on_a_paused_cluster_does_not_stop_other_streams)
{
	const uint32_t *p[1] = { prompt_a };
	uint32_t ref[1][GEN];
	reference(p, 1, ref);
	char sid[64];
	snprintf(sid, sizeof(sid), "ol-%ld-%d", (long)time(NULL), (int)getpid());
	const char *fa[14] = { 0 };
	fault_host_flags(fa, "host-a", LEASE);
	fa[10] = "--max-new-tokens"; /* the one-off streams all along */
	fa[11] = "500000";
	static struct daemon_proc a;
	fault_track(&a);
	daemon_start(&a, fa);
	struct watch w;
	watch_turn(&a, sid, prompt_a, FOLLOW_NONE, NULL, &w);
	cr_assert(fault_acked(&w.turn), "the turn was not served: %d %s", w.turn.fin, w.turn.msg);
	cr_assert_arr_eq(w.turn.out, ref[0], sizeof(ref[0]));
	cr_assert_gt(w.t_first, w.t_resume, "the session was served before the cluster answered");
	cr_assert_geq(w.o_wait_take, 10, "the one-off got %zu tokens while the lease take waited "
		      "%.1f s (compute stopped in the take)", w.o_wait_take, w.t_first - w.t_sent - 0.5);
	cr_assert_eq(daemon_stop(&a), 0);
	daemon_cleanup(&a);
}

/* A CloseSession (persist) sent while the session's turn commits waits for
 * the commit, then parks the session: acknowledged, not refused as busy. */
Test(shared_offcompute, a_close_sent_while_the_turn_commits_waits_for_it)
{
	const uint32_t *p[2] = { prompt_a, prompt_b };
	uint32_t ref[2][GEN];
	reference(p, 2, ref);
	char sid[64];
	snprintf(sid, sizeof(sid), "ow-%ld-%d", (long)time(NULL), (int)getpid());
	const char *fa[14] = { 0 };
	fault_host_flags(fa, "host-a", LEASE);
	fa[10] = "--max-new-tokens";
	fa[11] = "500000";
	static struct daemon_proc a;
	fault_track(&a);
	daemon_start(&a, fa);
	struct fault_turn o;
	fault_turn_run(&a, sid, prompt_a, 6, GEN, 1, &o);
	cr_assert(fault_acked(&o), "first turn: %d %s", o.fin, o.msg);
	struct watch w;
	watch_turn(&a, sid, prompt_b, FOLLOW_CLOSE, NULL, &w);
	cr_assert(fault_acked(&w.turn), "the turn: %d %s", w.turn.fin, w.turn.msg);
	cr_assert_arr_eq(w.turn.out, ref[1], sizeof(ref[1]));
	cr_assert_eq(w.closed, 0, "the CloseSession sent while the turn committed: %d", w.closed);
	/* parked with both turns: the next one continues them */
	cr_assert_eq(fault_session_tokens(&a, sid), 2 * (6 + GEN));
	cr_assert_eq(daemon_stop(&a), 0);
	daemon_cleanup(&a);
}

int main(int argc, char *argv[])
{
	return fault_main(argc, argv);
}
