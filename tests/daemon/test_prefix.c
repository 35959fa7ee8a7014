/* SPDX-License-Identifier: MIT */
/*
 * Integration tests of prefix units on the real dualpathd: a stateless
 * client (no session_id, the whole conversation each turn) reuses the
 * state earlier turns left, as an explicit session would, with the same
 * greedy output; salts keep tenants apart; units survive a restart (from
 * NVMe) and a corrupted one is recomputed, never served.
 */
#include <fcntl.h>
#include <sys/stat.h>

#include "dpclient.h"

static struct daemon_proc d;

static void fini(void)
{
	daemon_cleanup(&d);
}

TestSuite(prefix, .fini = fini, .timeout = 300);

/* A Generate of token ids with a cache salt (NULL: none). */
static void send_salted(int fd, uint64_t id, const char *session, const uint32_t *ids, size_t n,
                        uint32_t max_new, const char *salt)
{
	Dualpath__V1__Generate g = DUALPATH__V1__GENERATE__INIT;
	Dualpath__V1__TokenIds t = DUALPATH__V1__TOKEN_IDS__INIT;
	Dualpath__V1__Sampling s = DUALPATH__V1__SAMPLING__INIT;
	Dualpath__V1__Request r = DUALPATH__V1__REQUEST__INIT;
	t.n_ids = n;
	t.ids = (uint32_t *)ids;
	s.ignore_eos = true; /* random test models emit EOS anywhere */
	g.session_id = (char *)(session ? session : "");
	g.prompt_case = DUALPATH__V1__GENERATE__PROMPT_TOKENS;
	g.tokens = &t;
	g.max_new_tokens = max_new;
	g.sampling = &s;
	if (salt) {
		g.cache_salt.data = (uint8_t *)salt;
		g.cache_salt.len = strlen(salt);
	}
	r.request_id = id;
	r.body_case = DUALPATH__V1__REQUEST__BODY_GENERATE;
	r.generate = &g;
	cr_assert_eq(send_req(fd, &r), 0);
}

/* Collect a Generate's ids; returns the final Usage's cached_tokens
 * (asserting the request ended on its length). */
static uint32_t collect_cached(int fd, uint64_t id, uint32_t *out, size_t cap, size_t *ret_n)
{
	size_t n = 0;
	for (;;) {
		Dualpath__V1__Response *r = recv_resp(fd, 60000);
		cr_assert_not_null(r, "the connection was lost");
		if (r->request_id != id) {
			dp_proto_response_free(r);
			continue;
		}
		cr_assert_eq(r->body_case, DUALPATH__V1__RESPONSE__BODY_TOKEN_CHUNK,
		             "request %llu: %s", (unsigned long long)id,
		             r->body_case == DUALPATH__V1__RESPONSE__BODY_ERROR ? r->error->message
		                                                                : "?");
		Dualpath__V1__TokenChunk *c = r->token_chunk;
		for (size_t i = 0; i < c->n_ids && n < cap; i++)
			out[n++] = c->ids[i];
		if (c->finish) {
			cr_assert_eq(c->finish, DUALPATH__V1__FINISH_REASON__FINISH_LENGTH);
			cr_assert_not_null(c->usage, "the final chunk has a Usage");
			uint32_t cached = c->usage->cached_tokens;
			dp_proto_response_free(r);
			*ret_n = n;
			return cached;
		}
		dp_proto_response_free(r);
	}
}

enum { TURNS = 6, USER = 9, REPLY = 7, MAXC = TURNS * (USER + REPLY) };

static void user_turn(int turn, uint32_t *out)
{
	for (int i = 0; i < USER; i++)
		out[i] = 97 + (uint32_t)((turn * 7 + i * 5) % 26);
}

/* An agentic conversation, stateless: each turn sends the whole history
 * (earlier user turns and replies as received) plus the new user turn.
 * Fills replies[turn][REPLY] and cached[turn]; ctx returns the history. */
static void stateless(int fd, uint64_t base, const char *salt, uint32_t replies[TURNS][REPLY],
                      uint32_t cached[TURNS])
{
	uint32_t ctx[MAXC];
	size_t len = 0, n;
	for (int t = 0; t < TURNS; t++) {
		user_turn(t, ctx + len);
		len += USER;
		send_salted(fd, base + (uint64_t)t, NULL, ctx, len, REPLY, salt);
		cached[t] = collect_cached(fd, base + (uint64_t)t, replies[t], REPLY, &n);
		cr_assert_eq(n, REPLY);
		memcpy(ctx + len, replies[t], sizeof(replies[t]));
		len += REPLY;
	}
}

static uint32_t sum(const uint32_t *v, int n)
{
	uint32_t s = 0;
	for (int i = 0; i < n; i++)
		s += v[i];
	return s;
}

Test(prefix, a_stateless_conversation_reuses_all_but_the_new_turn_with_the_explicit_sessions_output)
{
	daemon_start(&d, NULL);
	int fd = client_connect(&d);
	/* the explicit session: each turn sends only its new user turn */
	uint32_t sess_replies[TURNS][REPLY], sess_cached[TURNS];
	for (int t = 0; t < TURNS; t++) {
		uint32_t u[USER];
		size_t n;
		user_turn(t, u);
		send_salted(fd, 100 + (uint64_t)t, "conv", u, USER, REPLY, "explicit");
		sess_cached[t] = collect_cached(fd, 100 + (uint64_t)t, sess_replies[t], REPLY, &n);
	}
	/* the same conversation statelessly, under its own salt (so it hits
	 * only its own units, not the session's) */
	uint32_t sl_replies[TURNS][REPLY], sl_cached[TURNS];
	stateless(fd, 200, "stateless", sl_replies, sl_cached);
	for (int t = 0; t < TURNS; t++)
		cr_expect_eq(memcmp(sl_replies[t], sess_replies[t], sizeof(sl_replies[t])), 0,
		             "turn %d: the stateless reply is the session's", t);
	cr_expect_eq(sl_cached[0], 0, "nothing cached for a new tenant's first turn");
	uint32_t want = sum(sess_cached, TURNS), got = sum(sl_cached, TURNS);
	cr_expect_gt(want, 0);
	cr_expect_geq((double)got, 0.95 * want, "stateless reused %u tokens, the session %u", got,
	              want);
	for (int t = 1; t < TURNS; t++) /* everything but the new turn (and the reply's last id) */
		cr_expect_eq(sl_cached[t], (uint32_t)(t * (USER + REPLY) - 1), "turn %d: %u cached",
		             t, sl_cached[t]);

	/* a cold recompute: the last turn's whole history, as a tenant with no units */
	uint32_t ctx[MAXC], cold[REPLY];
	size_t len = 0, n;
	for (int t = 0; t < TURNS; t++) {
		user_turn(t, ctx + len);
		len += USER;
		if (t < TURNS - 1) {
			memcpy(ctx + len, sess_replies[t], sizeof(sess_replies[t]));
			len += REPLY;
		}
	}
	send_salted(fd, 300, NULL, ctx, len, REPLY, "cold");
	cr_expect_eq(collect_cached(fd, 300, cold, REPLY, &n), 0);
	cr_expect_eq(memcmp(cold, sess_replies[TURNS - 1], sizeof(cold)), 0,
	             "the cold recompute's reply is the session's");

	/* the session's own units: a stateless client of its tenant replaying
	 * the conversation hits them (its last turn's prompt left one just
	 * before its last id) */
	uint32_t r[REPLY], hit;
	send_salted(fd, 301, NULL, ctx, len, REPLY, "explicit");
	hit = collect_cached(fd, 301, r, REPLY, &n);
	cr_expect_eq(hit, (uint32_t)len - 1, "the session's last prompt is a unit: %u cached", hit);
	cr_expect_eq(memcmp(r, cold, sizeof(r)), 0);
	/* a new explicit session holding the whole conversation starts from
	 * the stateless client's unit */
	send_salted(fd, 304, "conv2", ctx, len, REPLY, "stateless");
	hit = collect_cached(fd, 304, r, REPLY, &n);
	cr_expect_eq(hit, (uint32_t)len - 1, "a new session seeded from a unit: %u cached", hit);
	cr_expect_eq(memcmp(r, cold, sizeof(r)), 0);
	cr_expect_gt(metric(fd, 302, "dualpath_prefix_hits_total"), 0);
	cr_expect_gt(metric(fd, 303, "dualpath_prefix_cached_tokens_total"), 0);
	close(fd);
	cr_assert_eq(daemon_stop(&d), 0);
}

Test(prefix, salts_keep_tenants_apart)
{
	daemon_start(&d, NULL);
	int fd = client_connect(&d);
	uint32_t p[40], out[4];
	size_t n;
	for (int i = 0; i < 40; i++)
		p[i] = 97 + (uint32_t)(i * 3 % 26);
	send_salted(fd, 1, NULL, p, 30, 4, "tenant-a");
	cr_expect_eq(collect_cached(fd, 1, out, 4, &n), 0);
	send_salted(fd, 2, NULL, p, 40, 4, "tenant-a");
	cr_expect_eq(collect_cached(fd, 2, out, 4, &n), 29, "a's prompt end (less its last id)");
	send_salted(fd, 3, NULL, p, 40, 4, "tenant-b");
	cr_expect_eq(collect_cached(fd, 3, out, 4, &n), 0, "b does not see a's units");
	send_salted(fd, 4, NULL, p, 40, 4, NULL);
	cr_expect_eq(collect_cached(fd, 4, out, 4, &n), 0, "nor does the unsalted tenant");
	close(fd);
	cr_assert_eq(daemon_stop(&d), 0);
}

/* One stateless turn 0, a restart (its units go to NVMe), then turn 1. */
static void restart_between_turns(bool corrupt, uint32_t *ret_cached, uint32_t reply[REPLY],
                                  uint32_t cold[REPLY])
{
	daemon_start(&d, NULL);
	int fd = client_connect(&d);
	uint32_t ctx[2 * (USER + REPLY)];
	size_t n;
	user_turn(0, ctx);
	send_salted(fd, 1, NULL, ctx, USER, REPLY, "r");
	collect_cached(fd, 1, ctx + USER, REPLY, &n);
	size_t len = USER + REPLY;
	close(fd);
	cr_assert_eq(daemon_stop(&d), 0, "a clean stop persists the units");
	if (corrupt) {
		/* one byte of every slot's page data (after the file's 4 KiB
		 * header, each slot: a 4 KiB header, then its 64 KiB page; a
		 * byte near the page's start, which every page writes: a zero
		 * tail at its end is not written, and reads back as zeros) */
		char slots[220];
		snprintf(slots, sizeof(slots), "%s/slots", d.state);
		int sfd = open(slots, O_RDWR);
		cr_assert_geq(sfd, 0, "%s", slots);
		struct stat st;
		cr_assert_eq(fstat(sfd, &st), 0);
		int flipped = 0;
		for (off_t off = 4096 + 4096 + 100; off < st.st_size; off += 4096 + 65536) {
			uint8_t c;
			cr_assert_eq(pread(sfd, &c, 1, off), 1);
			c ^= 0x5a;
			cr_assert_eq(pwrite(sfd, &c, 1, off), 1);
			flipped++;
		}
		close(sfd);
		cr_assert_gt(flipped, 0);
	}
	char dir[96];
	snprintf(dir, sizeof(dir), "%s", d.dir);
	daemon_start_in(&d, dir, NULL);
	fd = client_connect(&d);
	send_salted(fd, 2, NULL, ctx, len, REPLY, "r");
	*ret_cached = collect_cached(fd, 2, reply, REPLY, &n);
	send_salted(fd, 3, NULL, ctx, len, REPLY, "cold-r");
	cr_expect_eq(collect_cached(fd, 3, cold, REPLY, &n), 0);
	if (corrupt)
		cr_expect_gt(metric(fd, 4, "dualpath_prefix_units_corrupt_total"), 0);
	else
		cr_expect_gt(metric(fd, 4, "dualpath_kv_restores_total") +
		                 metric(fd, 5, "dualpath_kv_loads_total"),
		             0, "the unit came back from NVMe");
	close(fd);
	cr_assert_eq(daemon_stop(&d), 0);
}

Test(prefix, units_survive_a_restart_and_come_back_from_nvme)
{
	uint32_t cached, reply[REPLY], cold[REPLY];
	restart_between_turns(false, &cached, reply, cold);
	cr_expect_eq(cached, USER + REPLY - 1, "turn 0's end came back: %u cached", cached);
	cr_expect_eq(memcmp(reply, cold, sizeof(reply)), 0, "and gives the recompute's reply");
}

Test(prefix, a_corrupted_unit_is_recomputed_never_served)
{
	uint32_t cached, reply[REPLY], cold[REPLY];
	restart_between_turns(true, &cached, reply, cold);
	cr_expect_eq(cached, 0, "no damaged state served: %u cached", cached);
	cr_expect_eq(memcmp(reply, cold, sizeof(reply)), 0, "the reply is the recompute's");
}

/* Long turns fill pages of the growing streams (the test model's CSA
 * entries: 1024 a page, one per 3 tokens), so the units of the stateless
 * conversation share them (kvcache.h, "Prefix units"): the replies are
 * still the explicit session's, and the daemon reports the bytes held by
 * reference. */
enum { LTURNS = 5, LUSER = 900, LREPLY = 6, LMAXC = LTURNS * (LUSER + LREPLY) };

static void long_user_turn(int turn, uint32_t *out)
{
	for (int i = 0; i < LUSER; i++)
		out[i] = 97 + (uint32_t)((turn * 11 + i * 7 + i / 13) % 26);
}

Test(prefix, long_stateless_turns_share_full_pages_and_keep_the_sessions_output)
{
	/* room in DRAM for the units (a unit kept on the device owns a copy) */
	const char *const extra[] = {"--dram-bytes", "64M", NULL};
	daemon_start(&d, extra);
	int fd = client_connect(&d);
	uint32_t sess[LTURNS][LREPLY], sl[LTURNS][LREPLY];
	size_t n;
	for (int t = 0; t < LTURNS; t++) {
		uint32_t u[LUSER];
		long_user_turn(t, u);
		send_salted(fd, 100 + (uint64_t)t, "long", u, LUSER, LREPLY, "explicit");
		collect_cached(fd, 100 + (uint64_t)t, sess[t], LREPLY, &n);
		cr_assert_eq(n, LREPLY);
	}
	double shared0 = metric(fd, 150, "dualpath_prefix_unit_shared_bytes_total");
	cr_assert_geq(shared0, 0, "the metric is exported");
	uint32_t *ctx = malloc(LMAXC * sizeof(*ctx));
	size_t len = 0;
	for (int t = 0; t < LTURNS; t++) {
		long_user_turn(t, ctx + len);
		len += LUSER;
		send_salted(fd, 200 + (uint64_t)t, NULL, ctx, len, LREPLY, "stateless");
		uint32_t cached = collect_cached(fd, 200 + (uint64_t)t, sl[t], LREPLY, &n);
		cr_expect_eq(cached, t ? (uint32_t)(len - LUSER - 1) : 0, "turn %d: %u cached", t,
		             cached);
		cr_expect_eq(memcmp(sl[t], sess[t], sizeof(sl[t])), 0,
		             "turn %d: the stateless reply is the session's", t);
		memcpy(ctx + len, sl[t], sizeof(sl[t]));
		len += LREPLY;
	}
	double shared = metric(fd, 300, "dualpath_prefix_unit_shared_bytes_total");
	double copied = metric(fd, 301, "dualpath_prefix_unit_copy_bytes_total");
	cr_expect_gt(shared, shared0, "the stateless units shared full pages (%.0f bytes)",
	             shared - shared0);
	cr_log_info("units: copied %.0f, shared %.0f bytes", copied, shared - shared0);
	cr_expect_gt(copied, 0);
	cr_expect_gt(metric(fd, 302, "dualpath_prefix_unit_leave_seconds_total"), 0);
	free(ctx);
	close(fd);
	cr_assert_eq(daemon_stop(&d), 0);
}

/* Two requests at once for a unit that came back on NVMe: the first
 * borrows the unit, the second restores the same snapshot as a twin; both
 * start from the whole unit (not a shorter one) and reply alike.
 *
 * The prompt is the first turn whole (the unit where that turn ended, and
 * its last sampled id): one token past the unit, so the first request's
 * prefill leaves no longer unit. With a longer prompt the daemon's admission
 * would decide the answer: the two Generates are separate writes, and when
 * the second reaches the compute thread only after the first's prefill step
 * it rightly starts from the unit that prefill left one token short of the
 * prompt (more cached, not fewer). That order is the daemon's to choose; a
 * unit lent, lent again as a twin, or back on its snapshot must each give
 * the whole unit here. */
Test(prefix, two_requests_at_once_for_a_unit_on_nvme_both_start_from_it)
{
	daemon_start(&d, NULL);
	int fd = client_connect(&d);
	uint32_t ctx[USER + REPLY];
	size_t n;
	user_turn(0, ctx);
	send_salted(fd, 1, NULL, ctx, USER, REPLY, "r2");
	collect_cached(fd, 1, ctx + USER, REPLY, &n);
	size_t len = USER + REPLY;
	close(fd);
	cr_assert_eq(daemon_stop(&d), 0, "a clean stop persists the units");
	char dir[96];
	snprintf(dir, sizeof(dir), "%s", d.dir);
	daemon_start_in(&d, dir, NULL);
	fd = client_connect(&d);
	send_salted(fd, 2, NULL, ctx, len, REPLY, "r2");
	send_salted(fd, 3, NULL, ctx, len, REPLY, "r2");
	uint32_t out[2][REPLY], cached[2] = {0, 0};
	size_t got[2] = {0, 0};
	for (int done = 0; done < 2;) {
		Dualpath__V1__Response *r = recv_resp(fd, 60000);
		cr_assert_not_null(r, "the connection was lost");
		cr_assert_eq(r->body_case, DUALPATH__V1__RESPONSE__BODY_TOKEN_CHUNK);
		cr_assert(r->request_id == 2 || r->request_id == 3);
		int k = (int)r->request_id - 2;
		Dualpath__V1__TokenChunk *c = r->token_chunk;
		for (size_t i = 0; i < c->n_ids && got[k] < REPLY; i++)
			out[k][got[k]++] = c->ids[i];
		if (c->finish) {
			cr_assert_not_null(c->usage);
			cached[k] = c->usage->cached_tokens;
			done++;
		}
		dp_proto_response_free(r);
	}
	cr_expect_eq(cached[0], USER + REPLY - 1, "the first: %u cached", cached[0]);
	cr_expect_eq(cached[1], USER + REPLY - 1, "the second too: %u cached", cached[1]);
	cr_expect_eq(got[0], REPLY);
	cr_expect_eq(memcmp(out[0], out[1], sizeof(out[0])), 0, "the same reply");
	close(fd);
	cr_assert_eq(daemon_stop(&d), 0);
}

/* The other order of the two requests above, forced: the second is sent
 * only once the first's first id came, i.e. after its prefill stopped one
 * token short of the prompt and left a unit there, while the first still
 * holds the unit it borrowed from NVMe. The second starts from that longer
 * unit and replies as the first does. */
Test(prefix, a_request_after_a_lenders_prefill_starts_from_the_unit_that_prefill_left)
{
	daemon_start(&d, NULL);
	int fd = client_connect(&d);
	uint32_t ctx[2 * USER + REPLY];
	size_t n;
	user_turn(0, ctx);
	send_salted(fd, 1, NULL, ctx, USER, REPLY, "r3");
	collect_cached(fd, 1, ctx + USER, REPLY, &n);
	user_turn(1, ctx + USER + REPLY);
	size_t len = 2 * USER + REPLY;
	close(fd);
	cr_assert_eq(daemon_stop(&d), 0, "a clean stop persists the units");
	char dir[96];
	snprintf(dir, sizeof(dir), "%s", d.dir);
	daemon_start_in(&d, dir, NULL);
	fd = client_connect(&d);
	send_salted(fd, 2, NULL, ctx, len, REPLY, "r3");
	uint32_t out[2][REPLY], cached[2] = {0, 0};
	size_t got[2] = {0, 0};
	bool sent = false;
	for (int done = 0; done < 2;) {
		Dualpath__V1__Response *r = recv_resp(fd, 60000);
		cr_assert_not_null(r, "the connection was lost");
		cr_assert_eq(r->body_case, DUALPATH__V1__RESPONSE__BODY_TOKEN_CHUNK);
		cr_assert(r->request_id == 2 || r->request_id == 3);
		int k = (int)r->request_id - 2;
		Dualpath__V1__TokenChunk *c = r->token_chunk;
		for (size_t i = 0; i < c->n_ids && got[k] < REPLY; i++)
			out[k][got[k]++] = c->ids[i];
		if (c->finish) {
			cr_assert_not_null(c->usage);
			cached[k] = c->usage->cached_tokens;
			done++;
		}
		dp_proto_response_free(r);
		if (!sent && got[0]) {
			send_salted(fd, 3, NULL, ctx, len, REPLY, "r3");
			sent = true;
		}
	}
	cr_expect_eq(cached[0], USER + REPLY - 1, "the first from the unit on NVMe: %u cached",
	             cached[0]);
	cr_expect_eq(cached[1], len - 1, "the second from the unit its prefill left: %u cached",
	             cached[1]);
	cr_expect_eq(got[0], REPLY);
	cr_expect_eq(got[1], REPLY);
	cr_expect_eq(memcmp(out[0], out[1], sizeof(out[0])), 0, "the same reply");
	close(fd);
	cr_assert_eq(daemon_stop(&d), 0);
}
