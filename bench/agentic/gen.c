/* SPDX-License-Identifier: MIT */
/*
 * agentic-gen — write an agentic trace (format: bench/agentic/trace.h) for
 * agentic-driver to play against dualpathd.
 *
 *	agentic-gen [--out FILE] [--scale S] [--sessions N] [--turns T]
 *	            [--first N] [--append A] [--gen G] [--idle-ms I]
 *	            [--arrival-ms M] [--max-context C] [--id-range R] [--seed S]
 *
 * Each session is an agent: turn 0 brings the task (--first tokens), every
 * later turn appends a tool result or user message (--append tokens on
 * average, uniform within +-25%) to the whole context so far, after an idle
 * gap (the tool call: exponential, mean --idle-ms, at most 5x), and
 * generates --gen tokens (+-25%). So a turn prefills a few hundred new
 * tokens on top of a long context it reuses.
 *
 * The defaults are the DualPath paper's trace (arXiv 2602.21548): 157 turns
 * a session, an average context of ~32.7K tokens, ~98.7% of each turn's
 * context reused from the session's state. Those figures hold together for
 * contexts that grow linearly: reuse ~ 1 - 2/turns = 98.7% at 157 turns, and
 * the mean context ~ turns/2 x growth per turn. With 157 turns and a mean
 * context of 32.7K the context grows ~416 tokens a turn, so the defaults
 * append 400 prompt tokens and generate 16 (the paper's "~429 appended"
 * cannot also hold exactly: it would push the last turns past the 64K
 * positions of the embedded model). Contexts end near 64K; --max-context
 * caps them (a turn that would not fit shrinks, or the session ends there).
 * The realised figures are printed and written as comments in the file.
 *
 * --scale S shrinks a trace for the 2-core cpu smoke run: the turns
 * (at least 2), the first prompt, the idle gaps and the arrivals are
 * multiplied by S; the per-turn append and gen stay, so each turn keeps the
 * paper's shape (a few hundred new tokens on a long reused context) while
 * contexts shrink by S with the number of turns: --scale 0.1 gives 16
 * turns and contexts of ~3K tokens on average, ~6K at the end.
 *
 * Token ids are not written: the driver derives them from --seed (see
 * trace.h). --id-range 256 keeps them byte tokens.
 */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "trace.h"

struct gen_opts {
	const char *out;
	double scale;
	uint32_t sessions, turns, first, append, gen, id_range;
	double idle_ms, arrival_ms; /* arrival < 0: = idle */
	uint64_t max_context, seed;
};

/* Uniform in [0, 1). */
static double unit(uint64_t *st)
{
	return (double)(ag_splitmix64(st) >> 11) * 0x1.0p-53;
}

/* mean +- 25%, at least 1 */
static uint32_t jitter(uint64_t *st, uint32_t mean)
{
	double v = (double)mean * (0.75 + 0.5 * unit(st));
	return v < 1 ? 1 : (uint32_t)lround(v);
}

static uint32_t idle_draw(uint64_t *st, double mean_ms)
{
	if (mean_ms <= 0)
		return 0;
	double v = -mean_ms * log1p(-unit(st));
	if (v > 5 * mean_ms)
		v = 5 * mean_ms;
	return (uint32_t)lround(v);
}

struct realised {
	uint64_t turns, prompt, generated, cached, max_final, capped;
	double idle_ms;
};

static int generate(const struct gen_opts *o, FILE *f, struct realised *rs)
{
	uint32_t turns = (uint32_t)lround(o->turns * o->scale);
	uint32_t first = (uint32_t)lround(o->first * o->scale);
	double idle = o->idle_ms * o->scale;
	double arrival = (o->arrival_ms < 0 ? o->idle_ms : o->arrival_ms) * o->scale;
	if (turns < 2)
		turns = 2;
	if (first < 1)
		first = 1;
	memset(rs, 0, sizeof(*rs));
	for (uint32_t s = 0; s < o->sessions; s++) {
		uint64_t st = o->seed * 0x2545f4914f6cdd1dull + s + 1;
		uint64_t ctx = 0; /* tokens in the session's context */
		for (uint32_t t = 0; t < turns; t++) {
			uint32_t append = t ? jitter(&st, o->append) : first;
			uint32_t gen = jitter(&st, o->gen);
			uint32_t gap =
			    t ? idle_draw(&st, idle) : (uint32_t)lround(unit(&st) * arrival);
			/* the daemon's limit: context + prompt + new tokens + 1 */
			if (ctx + append + gen + 1 > o->max_context) {
				rs->capped++;
				if (ctx + gen + 2 > o->max_context)
					break; /* not even one prompt token fits: it ends */
				append = (uint32_t)(o->max_context - ctx - gen - 1);
			}
			if (fprintf(f, "%u %u %u %u %u\n", s, t, gap, append, gen) < 0)
				return -EIO;
			rs->turns++;
			rs->prompt += append;
			rs->generated += gen;
			rs->cached += ctx;
			rs->idle_ms += t ? gap : 0;
			ctx += append + gen;
		}
		if (ctx > rs->max_final)
			rs->max_final = ctx;
	}
	return 0;
}

static void describe(FILE *f, const char *pre, const struct gen_opts *o, const struct realised *r)
{
	double turns = (double)r->turns, per = turns / o->sessions;
	fprintf(f,
	        "%ssessions %u, turns %.0f (%.1f a session), prompt tokens %llu, generated %llu\n",
	        pre, o->sessions, turns, per, (unsigned long long)r->prompt,
	        (unsigned long long)r->generated);
	fprintf(f,
	        "%smean context at a turn's start %.0f tokens, longest final context %llu, mean "
	        "append %.0f + gen %.1f a turn\n",
	        pre, (double)r->cached / turns, (unsigned long long)r->max_final,
	        (double)r->prompt / turns, (double)r->generated / turns);
	fprintf(f,
	        "%sreuse (context already in state / context a turn needs) %.2f%%; replaying "
	        "every history (no reuse) would feed %llu tokens instead of %llu\n",
	        pre, 100.0 * (double)r->cached / (double)(r->cached + r->prompt),
	        (unsigned long long)(r->cached + r->prompt + r->generated),
	        (unsigned long long)(r->prompt + r->generated));
	fprintf(f, "%smean idle between turns %.0f ms%s\n", pre,
	        r->turns > o->sessions ? r->idle_ms / (turns - o->sessions) : 0.0,
	        r->capped ? "; some turns capped by --max-context" : "");
}

static const char usage[] =
    "usage: agentic-gen [--out FILE] [--scale S] [--sessions N] [--turns T] [--first N]\n"
    "                   [--append A] [--gen G] [--idle-ms I] [--arrival-ms M]\n"
    "                   [--max-context C] [--id-range R] [--seed S]\n"
    "Defaults: the DualPath paper's trace: --turns 157 --first 429 --append 400 --gen 16\n"
    "(mean context ~32.7K, reuse ~98.7%), --sessions 64, --idle-ms 10000, --scale 1,\n"
    "--max-context 65536, --id-range 256, --seed 1. See the header of bench/agentic/gen.c.\n";

static int parse_u32(const char *name, const char *v, uint32_t lo, uint32_t hi, uint32_t *ret)
{
	char *end;
	errno = 0;
	unsigned long long x = strtoull(v, &end, 10);
	if (errno || end == v || *end || x < lo || x > hi) {
		fprintf(stderr, "agentic-gen: %s: an integer in %u..%u, not '%s'\n", name, lo, hi,
		        v);
		return -EINVAL;
	}
	*ret = (uint32_t)x;
	return 0;
}

static int parse_num(const char *name, const char *v, double lo, double *ret)
{
	char *end;
	errno = 0;
	double x = strtod(v, &end);
	if (errno || end == v || *end || !(x >= lo)) {
		fprintf(stderr, "agentic-gen: %s: a number >= %g, not '%s'\n", name, lo, v);
		return -EINVAL;
	}
	*ret = x;
	return 0;
}

int main(int argc, char **argv)
{
	static const struct option lo[] = {
	    {"out", required_argument, NULL, 'o'},
	    {"scale", required_argument, NULL, 'S'},
	    {"sessions", required_argument, NULL, 's'},
	    {"turns", required_argument, NULL, 't'},
	    {"first", required_argument, NULL, 'f'},
	    {"append", required_argument, NULL, 'a'},
	    {"gen", required_argument, NULL, 'g'},
	    {"idle-ms", required_argument, NULL, 'i'},
	    {"arrival-ms", required_argument, NULL, 'A'},
	    {"max-context", required_argument, NULL, 'c'},
	    {"id-range", required_argument, NULL, 'r'},
	    {"seed", required_argument, NULL, 'e'},
	    {"help", no_argument, NULL, 'h'},
	    {0},
	};
	struct gen_opts o = {.scale = 1,
	                     .sessions = 64,
	                     .turns = 157,
	                     .first = 429,
	                     .append = 400,
	                     .gen = 16,
	                     .id_range = 256,
	                     .idle_ms = 10000,
	                     .arrival_ms = -1,
	                     .max_context = 65536,
	                     .seed = 1};
	uint32_t u;
	int opt, r = 0;

	while ((opt = getopt_long(argc, argv, "o:h", lo, NULL)) != -1) {
		switch (opt) {
		case 'o':
			o.out = optarg;
			break;
		case 'S':
			r = parse_num("--scale", optarg, 1e-6, &o.scale);
			break;
		case 's':
			r = parse_u32("--sessions", optarg, 1, 1000000, &o.sessions);
			break;
		case 't':
			r = parse_u32("--turns", optarg, 1, 1000000, &o.turns);
			break;
		case 'f':
			r = parse_u32("--first", optarg, 1, 1u << 24, &o.first);
			break;
		case 'a':
			r = parse_u32("--append", optarg, 1, 1u << 24, &o.append);
			break;
		case 'g':
			r = parse_u32("--gen", optarg, 1, 1u << 20, &o.gen);
			break;
		case 'i':
			r = parse_num("--idle-ms", optarg, 0, &o.idle_ms);
			break;
		case 'A':
			r = parse_num("--arrival-ms", optarg, 0, &o.arrival_ms);
			break;
		case 'c':
			r = parse_u32("--max-context", optarg, 4, UINT32_MAX, &u);
			o.max_context = u;
			break;
		case 'r':
			r = parse_u32("--id-range", optarg, 2, 1u << 24, &o.id_range);
			break;
		case 'e':
			r = parse_u32("--seed", optarg, 0, UINT32_MAX, &u);
			o.seed = u;
			break;
		case 'h':
			fputs(usage, stdout);
			return 0;
		default:
			fputs(usage, stderr);
			return 2;
		}
		if (r < 0)
			return 2;
	}
	if (optind < argc) {
		fprintf(stderr, "agentic-gen: unexpected argument '%s'\n%s", argv[optind], usage);
		return 2;
	}

	/* the turns go to a temporary file first: the header comes before them
	 * and carries the realised figures */
	FILE *body = tmpfile();
	if (!body) {
		fprintf(stderr, "agentic-gen: tmpfile: %s\n", strerror(errno));
		return 1;
	}
	struct realised rs;
	if (generate(&o, body, &rs) < 0 || fflush(body) != 0) {
		fprintf(stderr, "agentic-gen: writing the turns: %s\n", strerror(errno));
		return 1;
	}
	FILE *f = o.out && strcmp(o.out, "-") ? fopen(o.out, "w") : stdout;
	if (!f) {
		fprintf(stderr, "agentic-gen: cannot write %s: %s\n", o.out, strerror(errno));
		return 1;
	}
	fprintf(
	    f, "# agentic trace written by agentic-gen (bench/agentic/gen.c; format in trace.h)\n");
	fprintf(
	    f,
	    "# --scale %g --sessions %u --turns %u --first %u --append %u --gen %u --idle-ms %g "
	    "--arrival-ms %g --max-context %llu --id-range %u --seed %llu\n",
	    o.scale, o.sessions, o.turns, o.first, o.append, o.gen, o.idle_ms,
	    o.arrival_ms < 0 ? o.idle_ms : o.arrival_ms, (unsigned long long)o.max_context,
	    o.id_range, (unsigned long long)o.seed);
	describe(f, "# ", &o, &rs);
	fprintf(f, "# SESSION TURN IDLE_MS APPEND GEN\n");
	fprintf(f, AG_TRACE_MAGIC " %d seed=%llu sessions=%u id_range=%u\n", AG_TRACE_VERSION,
	        (unsigned long long)o.seed, o.sessions, o.id_range);
	rewind(body);
	char buf[1 << 16];
	size_t n;
	while ((n = fread(buf, 1, sizeof(buf), body)) > 0)
		if (fwrite(buf, 1, n, f) != n)
			break;
	fclose(body);
	int bad = ferror(f) || (f == stdout ? fflush(f) : fclose(f)) != 0;
	if (bad) {
		fprintf(stderr, "agentic-gen: cannot write %s: %s\n", o.out ? o.out : "stdout",
		        strerror(errno));
		return 1;
	}
	describe(stderr, "agentic-gen: ", &o, &rs);
	return 0;
}
