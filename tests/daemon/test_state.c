/* SPDX-License-Identifier: MIT */
/*
 * Integration tests of the daemon's state directory: the real dualpathd
 * refusing a state directory it cannot trust, and coming back from a
 * damaged journal or slot file with every session it can recover.
 */
#include <fcntl.h>
#include <sys/stat.h>

#include "dpclient.h"

static struct daemon_proc d;

static void fini(void)
{
	daemon_cleanup(&d);
}

TestSuite(state, .fini = fini, .timeout = 300);

/* Run dualpathd on the state directory dir/state (made beforehand by the
 * caller) expecting it to refuse to start; returns what it logged. */
static void start_refused(const char *dir, char *log, size_t len)
{
	daemon_start_refused(dir, test_model(), NULL, log, len);
}

Test(state, a_state_directory_writable_by_others_stops_the_daemon_with_a_clear_error)
{
	snprintf(d.dir, sizeof(d.dir), "/var/tmp/dp-test-s-XXXXXX");
	cr_assert_not_null(mkdtemp(d.dir));
	char state[160], log[8192];
	snprintf(state, sizeof(state), "%s/state", d.dir);
	cr_assert_eq(mkdir(state, 0700), 0);
	cr_assert_eq(chmod(state, 0777), 0);
	start_refused(d.dir, log, sizeof(log));
	cr_expect(strstr(log, state) && strstr(log, "mode 0777"),
		  "the error names the directory and its mode: %s", log);
	char journal[200];
	snprintf(journal, sizeof(journal), "%s/journal", state);
	cr_expect_neq(access(journal, F_OK), 0, "nothing was written there");
}

/* ---- a damaged journal or slot file ------------------------------------------ */

enum { NS = 12, P1 = 4, N1 = 6, P2 = 3, N2 = 5 };

static void prompt_of(int s, int turn, uint32_t *out, size_t n)
{
	for (size_t i = 0; i < n; i++)
		out[i] = 97 + (uint32_t)((s * 5 + turn * 11 + (int)i * 3) % 26);
}

static void sess_name(int s, char *out, size_t len)
{
	snprintf(out, len, "st%02d", s);
}

/* NS sessions, one turn each; then a clean stop (persist, compact). */
static void first_turns(uint32_t out[NS][N1])
{
	daemon_start(&d, NULL);
	int fd = client_connect(&d);
	for (int s = 0; s < NS; s++) {
		uint32_t p[P1];
		char name[16];
		size_t n;
		prompt_of(s, 0, p, P1);
		sess_name(s, name, sizeof(name));
		send_generate(fd, 10 + (uint64_t)s, name, p, P1, N1, 0, 0);
		cr_assert_eq(collect(fd, 10 + (uint64_t)s, out[s], N1, &n),
			     DUALPATH__V1__FINISH_REASON__FINISH_LENGTH, "%s", name);
		cr_assert_eq(n, N1);
	}
	close(fd);
	cr_assert_eq(daemon_stop(&d), 0);
}

/* The second turn of session s continues its first exactly: the same
 * tokens as the whole context in one one-off request. */
static void expect_continues(int fd, uint64_t *id, int s, const uint32_t first[N1])
{
	uint32_t p1[P1], p2[P2], all[P1 + N1 + P2], t[N2], ref[N2];
	char name[16];
	size_t nt, nr, na = 0;
	prompt_of(s, 0, p1, P1);
	prompt_of(s, 1, p2, P2);
	sess_name(s, name, sizeof(name));
	send_generate(fd, *id, name, p2, P2, N2, 0, 0);
	cr_assert_eq(collect(fd, (*id)++, t, N2, &nt), DUALPATH__V1__FINISH_REASON__FINISH_LENGTH,
		     "%s continues", name);
	for (int i = 0; i < P1; i++)
		all[na++] = p1[i];
	for (int i = 0; i < N1; i++)
		all[na++] = first[i];
	for (int i = 0; i < P2; i++)
		all[na++] = p2[i];
	send_generate(fd, *id, NULL, all, na, N2, 0, 0);
	cr_assert_eq(collect(fd, (*id)++, ref, N2, &nr), DUALPATH__V1__FINISH_REASON__FINISH_LENGTH);
	cr_expect_arr_eq(t, ref, N2 * sizeof(uint32_t), "%s lost context across the restart", name);
}

static char *read_text(const char *path)
{
	static char buf[1 << 16];
	FILE *f = fopen(path, "r");
	cr_assert_not_null(f, "%s", path);
	size_t n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = '\0';
	return buf;
}

/* XOR one byte of a state file. */
static void flip_byte(const char *path, long off)
{
	int fd = open(path, O_RDWR);
	cr_assert_geq(fd, 0, "%s", path);
	uint8_t c;
	cr_assert_eq(pread(fd, &c, 1, off), 1);
	c ^= 0x5a;
	cr_assert_eq(pwrite(fd, &c, 1, off), 1);
	close(fd);
}

/* Where the journal's record of type `type` for session `key` starts
 * (kvcache/journal.h: u32 magic, u16 type, u16 key check, u32 length,
 * payload beginning with the key as u16 length + bytes, u64 checksum). */
static long journal_record(const char *path, uint16_t type, const char *key)
{
	FILE *f = fopen(path, "rb");
	cr_assert_not_null(f);
	uint8_t h[16];
	long off = 0;
	while (fseek(f, off, SEEK_SET) == 0 && fread(h, 1, 16, f) == 16) {
		uint16_t t, klen;
		uint32_t len;
		char k[256] = "";
		memcpy(&t, h + 4, 2);
		memcpy(&len, h + 8, 4);
		memcpy(&klen, h + 12, 2);
		memcpy(k, h + 14, 2);
		if (klen < sizeof(k) && fseek(f, off + 14, SEEK_SET) == 0 && fread(k, 1, klen, f) == klen)
			k[klen] = '\0';
		if (t == type && !strcmp(k, key)) {
			fclose(f);
			return off;
		}
		off += 12 + (long)len + 8;
	}
	fclose(f);
	cr_assert_fail("no record %u of %s in %s", type, key, path);
	return -1;
}

static bool has_file_starting(const char *dir, const char *prefix)
{
	char cmd[400];
	snprintf(cmd, sizeof(cmd), "ls '%s' | grep -q '^%s'", dir, prefix);
	return system(cmd) == 0;
}

Test(state, a_flipped_journal_byte_loses_one_session_with_data_loss_and_the_rest_continue)
{
	uint32_t first[NS][N1];
	first_turns(first);
	/* the stop compacted the journal: one RESET record per session; a
	 * token of the middle session's */
	char journal[200], lost[16];
	snprintf(journal, sizeof(journal), "%s/journal", d.state);
	sess_name(NS / 2, lost, sizeof(lost));
	long off = journal_record(journal, 4 /* RESET */, lost);
	flip_byte(journal, off + 12 + 2 + (long)strlen(lost) + 8 + 4 + 2);

	char dir[96];
	snprintf(dir, sizeof(dir), "%s", d.dir);
	daemon_start_in(&d, dir, NULL);
	int fd = client_connect(&d);
	uint64_t id = 100;
	cr_expect_eq(metric(fd, id++, "dualpath_journal_damaged_records_total"), 1);
	cr_expect_eq(metric(fd, id++, "dualpath_journal_sessions_lost_total"), 1);
	cr_expect_eq(metric(fd, id++, "dualpath_kv_lost_sessions"), 1);
	const char *log = read_text(d.log);
	cr_expect(strstr(log, "journal was damaged") && strstr(log, "journal.damaged-"),
		  "the damage and the kept copy are logged");
	char line[128];
	snprintf(line, sizeof(line), "session %s is lost", lost);
	cr_expect(strstr(log, line), "the lost session is named in the log");
	cr_expect(has_file_starting(d.state, "journal.damaged-"), "the damaged journal is kept");
	/* ListSessions marks it */
	Dualpath__V1__Response *r = simple(fd, id++, DUALPATH__V1__REQUEST__BODY_LIST_SESSIONS);
	cr_assert_not_null(r);
	int marked = 0;
	for (size_t i = 0; i < r->sessions->n_sessions; i++)
		if (r->sessions->sessions[i]->lost) {
			marked++;
			cr_expect_str_eq(r->sessions->sessions[i]->session_id, lost);
		}
	cr_expect_eq(marked, 1, "one session listed as lost");
	dp_proto_response_free(r);

	for (int s = 0; s < NS; s++)
		if (s != NS / 2)
			expect_continues(fd, &id, s, first[s]);
	/* the lost one is an error, not a silently empty context */
	uint32_t p[P2], out[N2];
	size_t n;
	prompt_of(NS / 2, 1, p, P2);
	send_generate(fd, id, lost, p, P2, N2, 0, 0);
	cr_expect_eq(collect(fd, id++, out, N2, &n), -DUALPATH__V1__CODE__DATA_LOSS);
	/* and closing it lets the client start over */
	cr_expect_eq(close_session(fd, id++, lost, false), 0, "close %s", lost);
	send_generate(fd, id, lost, p, P2, N2, 0, 0);
	cr_expect_eq(collect(fd, id++, out, N2, &n), DUALPATH__V1__FINISH_REASON__FINISH_LENGTH);
	cr_expect_eq(metric(fd, id++, "dualpath_kv_lost_sessions"), 0);
	close(fd);
}

Test(state, a_damaged_slot_file_header_does_not_stop_the_daemon_and_sessions_continue)
{
	uint32_t first[NS][N1];
	first_turns(first);
	char slots[200];
	snprintf(slots, sizeof(slots), "%s/slots", d.state);
	flip_byte(slots, 2); /* the file header's magic */

	char dir[96];
	snprintf(dir, sizeof(dir), "%s", d.dir);
	daemon_start_in(&d, dir, NULL);
	int fd = client_connect(&d);
	uint64_t id = 100;
	cr_expect_eq(metric(fd, id++, "dualpath_kv_slot_file_resets_total"), 1);
	cr_expect_eq(metric(fd, id++, "dualpath_kv_lost_sessions"), 0);
	cr_expect(strstr(read_text(d.log), "slot file's header was damaged"), "logged");
	cr_expect(has_file_starting(d.state, "slots.damaged-"), "the damaged slot file is kept");
	for (int s = 0; s < NS; s++)
		expect_continues(fd, &id, s, first[s]);
	close(fd);
}
