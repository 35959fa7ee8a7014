/* SPDX-License-Identifier: MIT */
/*
 * bench/agentic/trace.h — the agentic trace file that agentic-gen writes and
 * agentic-driver plays.
 *
 * A text file, one record a line; blank lines and lines starting with '#'
 * are comments (agentic-gen writes the parameters and the realised figures
 * there). The first other line is the header:
 *
 *	agentic-trace 1 seed=SEED sessions=N id_range=R
 *
 * then one line per turn, in any order:
 *
 *	SESSION TURN IDLE_MS APPEND GEN
 *
 *   SESSION  0 .. N-1
 *   TURN     0 .. (that session's turns - 1); every turn of a session present
 *   IDLE_MS  time the session is idle before this turn (the agent's tool
 *            call, or for turn 0 the session's arrival after the start), ms
 *   APPEND   prompt tokens this turn appends to the session's context (> 0)
 *   GEN      tokens the turn generates (> 0; generated with ignore_eos, so
 *            exactly GEN)
 *
 * The token ids are not in the file: the APPEND ids of turn t of session s
 * are ag_turn_tokens(trace, s, t), drawn from [0, R) by splitmix64 seeded
 * from (SEED, s, t), so a trace of millions of tokens stays a few KiB and
 * every player derives the same ids. R = 256 keeps them byte tokens (no
 * BOS/EOS/special ids) on a byte-level vocabulary.
 *
 * Not thread-safe by itself; a loaded trace is read-only and may be shared.
 */
#ifndef DP_BENCH_AGENTIC_TRACE_H
#define DP_BENCH_AGENTIC_TRACE_H

#include <stddef.h>
#include <stdint.h>

#define AG_TRACE_MAGIC   "agentic-trace"
#define AG_TRACE_VERSION 1

struct ag_turn {
	uint32_t idle_ms;
	uint32_t append;
	uint32_t gen;
};

struct ag_session {
	uint32_t n_turns;
	struct ag_turn *turns; /* n_turns */
};

struct ag_trace {
	uint64_t seed;
	uint32_t id_range;
	uint32_t n_sessions;
	struct ag_session *sessions; /* n_sessions */
};

/* One step of splitmix64 (Steele, Lea, Flood 2014) on *state. */
uint64_t ag_splitmix64(uint64_t *state);

/*
 * Read a trace file. Returns 0 and *ret_trace (ag_trace_free), or -errno:
 * -ENOENT/-EACCES... from fopen, -EBADMSG for a malformed file (err says
 * which line and why), -ENOMEM.
 */
int ag_trace_load(const char *path, struct ag_trace **ret_trace, char *err, size_t err_len);
/* Accepts NULL. */
void ag_trace_free(struct ag_trace *t);

/* The n = turn.append prompt ids of turn `turn` of session `s` into ids. */
void ag_turn_tokens(const struct ag_trace *t, uint32_t s, uint32_t turn, uint32_t *ids, uint32_t n);

#endif /* DP_BENCH_AGENTIC_TRACE_H */
