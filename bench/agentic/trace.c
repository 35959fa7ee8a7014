/* SPDX-License-Identifier: MIT */
/*
 * The agentic trace file: reading it, and the token ids of each turn
 * (format in trace.h).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "trace.h"

uint64_t ag_splitmix64(uint64_t *state)
{
	uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

void ag_turn_tokens(const struct ag_trace *t, uint32_t s, uint32_t turn, uint32_t *ids, uint32_t n)
{
	uint64_t st = t->seed ^ ((uint64_t)s << 32 | turn);
	st = ag_splitmix64(&st); /* decorrelate neighbouring (s, turn) */
	for (uint32_t i = 0; i < n; i++)
		ids[i] = (uint32_t)(ag_splitmix64(&st) >> 32) % t->id_range;
}

void ag_trace_free(struct ag_trace *t)
{
	if (!t)
		return;
	for (uint32_t s = 0; t->sessions && s < t->n_sessions; s++)
		free(t->sessions[s].turns);
	free(t->sessions);
	free(t);
}

static int bad(char *err, size_t err_len, const char *path, unsigned line, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static int bad(char *err, size_t err_len, const char *path, unsigned line, const char *fmt, ...)
{
	char what[160];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(what, sizeof(what), fmt, ap);
	va_end(ap);
	snprintf(err, err_len, "%s:%u: %s", path, line, what);
	return -EBADMSG;
}

/* Grow session s's turn array to hold turn index `turn`. */
static int reserve_turn(struct ag_session *ss, uint32_t turn, uint32_t *cap)
{
	if (turn < *cap)
		return 0;
	uint32_t n = *cap ? *cap : 64;
	while (n <= turn)
		n *= 2;
	struct ag_turn *p = realloc(ss->turns, (size_t)n * sizeof(*p));
	if (!p)
		return -ENOMEM;
	memset(p + *cap, 0, (size_t)(n - *cap) * sizeof(*p));
	ss->turns = p;
	*cap = n;
	return 0;
}

int ag_trace_load(const char *path, struct ag_trace **ret_trace, char *err, size_t err_len)
{
	FILE *f = fopen(path, "r");
	if (!f) {
		int e = errno;
		snprintf(err, err_len, "cannot open %s: %s", path, strerror(e));
		return -e;
	}
	struct ag_trace *t = calloc(1, sizeof(*t));
	uint32_t *cap = NULL;
	uint8_t **seen = NULL;
	uint32_t n_seen = 0; /* entries of seen */
	char buf[512];
	unsigned line = 0;
	int ret = -ENOMEM;
	bool header = false;

	if (!t)
		goto out;
	while (fgets(buf, sizeof(buf), f)) {
		line++;
		char *p = buf + strspn(buf, " \t");
		if (*p == '#' || *p == '\n' || *p == '\0')
			continue;
		if (!header) {
			unsigned ver;
			unsigned long long seed;
			unsigned sessions, range;
			if (sscanf(p, AG_TRACE_MAGIC " %u seed=%llu sessions=%u id_range=%u", &ver,
			           &seed, &sessions, &range) != 4) {
				ret =
				    bad(err, err_len, path, line,
				        "expected '" AG_TRACE_MAGIC
				        " 1 seed=S sessions=N id_range=R' (not an agentic trace?)");
				goto out;
			}
			if (ver != AG_TRACE_VERSION) {
				ret =
				    bad(err, err_len, path, line,
				        "format version %u, this reads %d", ver, AG_TRACE_VERSION);
				goto out;
			}
			if (sessions == 0 || sessions > 1000000 || range < 2) {
				ret = bad(err, err_len, path, line,
				          "sessions must be 1..1000000 and id_range >= 2");
				goto out;
			}
			t->seed = seed;
			t->n_sessions = sessions;
			t->id_range = range;
			t->sessions = calloc(sessions, sizeof(*t->sessions));
			cap = calloc(sessions, sizeof(*cap));
			seen = calloc(sessions, sizeof(*seen));
			if (!t->sessions || !cap || !seen)
				goto out;
			n_seen = sessions;
			header = true;
			continue;
		}
		unsigned s, turn, idle, append, gen;
		char extra;
		if (sscanf(p, "%u %u %u %u %u %c", &s, &turn, &idle, &append, &gen, &extra) != 5) {
			ret = bad(err, err_len, path, line,
			          "expected 'SESSION TURN IDLE_MS APPEND GEN'");
			goto out;
		}
		if (s >= t->n_sessions || turn > 10000000 || append == 0 || gen == 0) {
			ret = bad(err, err_len, path, line,
			          "session beyond sessions=%u, or a zero APPEND or GEN",
			          t->n_sessions);
			goto out;
		}
		struct ag_session *ss = &t->sessions[s];
		uint32_t old = cap[s];
		if (reserve_turn(ss, turn, &cap[s]) < 0)
			goto out;
		if (cap[s] != old) {
			uint8_t *sn = realloc(seen[s], cap[s]);
			if (!sn)
				goto out;
			memset(sn + old, 0, cap[s] - old);
			seen[s] = sn;
		}
		if (seen[s][turn]) {
			ret = bad(err, err_len, path, line, "session %u turn %u given twice", s,
			          turn);
			goto out;
		}
		seen[s][turn] = 1;
		ss->turns[turn] = (struct ag_turn){.idle_ms = idle, .append = append, .gen = gen};
		if (turn + 1 > ss->n_turns)
			ss->n_turns = turn + 1;
	}
	if (ferror(f)) {
		ret = -EIO;
		snprintf(err, err_len, "cannot read %s", path);
		goto out;
	}
	if (!header) {
		ret = bad(err, err_len, path, line, "no '" AG_TRACE_MAGIC "' header line");
		goto out;
	}
	for (uint32_t s = 0; s < t->n_sessions; s++) {
		if (t->sessions[s].n_turns == 0) {
			ret = bad(err, err_len, path, line, "session %u has no turns", s);
			goto out;
		}
		for (uint32_t k = 0; k < t->sessions[s].n_turns; k++)
			if (!seen[s][k]) {
				ret =
				    bad(err, err_len, path, line, "session %u lacks turn %u", s, k);
				goto out;
			}
	}
	ret = 0;
	*ret_trace = t;
	t = NULL;
out:
	if (ret == -ENOMEM)
		snprintf(err, err_len, "out of memory reading %s", path);
	for (uint32_t s = 0; s < n_seen; s++)
		free(seen[s]);
	free(seen);
	free(cap);
	ag_trace_free(t);
	fclose(f);
	return ret;
}
