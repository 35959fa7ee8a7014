/* SPDX-License-Identifier: MIT */
/*
 * bench/io — the io engine (io/io.h) beside fio --ioengine=io_uring on
 * the same file, block size, depth and O_DIRECT, measured in the same run.
 *
 * For each case (block size x random/sequential x depth) it runs ours, then
 * fio, `reps` times interleaved, so a machine busy with other work slows
 * both alike, and reports the median of each. Ours is the engine as the
 * daemon runs it: an io thread (dp_io_start) fed by one requester thread
 * through a channel, registered buffers from the arena, registered file,
 * O_DIRECT, the requester keeping `depth` reads in flight (refilling as the
 * completion counter moves). fio runs its best io_uring setup: fixedbufs,
 * registerfiles, direct=1, the same depth.
 *
 * CPU% is CPU time over wall time, 100 = one core: for ours the whole
 * process (requester + io thread, getrusage), for fio its job (usr + sys).
 *
 * The file (default /var/tmp/dualpath-bench-io.dat, 2 GiB) is created once
 * with O_DIRECT writes of random data and kept for later runs (--remove
 * deletes it at the end). With O_DIRECT the page cache plays no part, so the
 * file need not outgrow memory.
 *
 *   bench-io [--quick] [--file PATH] [--size MiB] [--time SEC] [--reps N]
 *            [--depths 1,4,32,128] [--no-fio] [--inline] [--cpu N] [--remove]
 *            [--spin-us N] [--no-huge] [--ahead N] [--batch N]
 *
 * Ends with RESULT lines (see README "Benchmarks"); the goal for 64 KiB
 * random reads at depth 32 is ours >= 0.9 x fio.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <jansson.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "base/clock.h"
#include "io/io.h"

extern char **environ;

#define MAX_DEPTH 128u
#define MAX_BS    65536u
#define MAX_REPS  9

struct opts {
	const char *file;
	uint64_t size;
	double secs;
	int reps;
	int head_reps;
	uint32_t depths[8];
	int n_depths;
	bool fio;
	bool inline_mode;
	bool remove;
	bool quick;
	int cpu;
	int spin_us; /* -1: the engine's default */
	bool no_huge;
	int ahead; /* requests the requester keeps queued, in multiples of depth */
	int batch; /* refill after this many completions; 0: depth / 2 */
};

struct bcase {
	uint32_t bs;
	bool rand;
	uint32_t depth;
	bool headline;
};

struct res {
	double gbps, iops, cpu;
	bool ok;
};

static double rusage_s(void)
{
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
	       (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

static uint64_t xorshift(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

/* ---- the file ---------------------------------------------------------- */

static int ensure_file(const struct opts *o)
{
	struct stat st;

	if (stat(o->file, &st) == 0 && S_ISREG(st.st_mode) && (uint64_t)st.st_size >= o->size)
		return 0;
	fprintf(stderr, "bench-io: creating %s (%llu MiB, O_DIRECT, once)\n", o->file,
	        (unsigned long long)(o->size >> 20));
	int fd = open(o->file, O_CREAT | O_WRONLY | O_DIRECT | O_CLOEXEC, 0600);
	if (fd < 0)
		fd = open(o->file, O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
	if (fd < 0) {
		fprintf(stderr, "bench-io: %s: %s\n", o->file, strerror(errno));
		return -1;
	}
	size_t chunk = 1 << 20;
	uint64_t *buf = aligned_alloc(4096, chunk), rng = 0x2545f4914f6cdd1dull;
	if (!buf) {
		close(fd);
		return -1;
	}
	for (uint64_t off = 0; off < o->size; off += chunk) {
		for (size_t i = 0; i < chunk / 8; i++)
			buf[i] = xorshift(&rng);
		if (pwrite(fd, buf, chunk, (off_t)off) != (ssize_t)chunk) {
			fprintf(stderr, "bench-io: writing %s: %s\n", o->file, strerror(errno));
			free(buf);
			close(fd);
			return -1;
		}
	}
	free(buf);
	fsync(fd);
	close(fd);
	return 0;
}

/* ---- ours -------------------------------------------------------------- */

/* One engine per depth: queue_depth = depth, and the requester keeps
 * window = ahead x depth requests queued, so the kernel always has `depth`
 * even though the counter moves only in ticket order. */
struct ours {
	struct dp_io *io;
	struct dp_io_chan *chan;
	uint32_t file;
	uint32_t depth, window;
	bool inline_mode;
	bool open;
};

static int ours_open(const struct opts *o, uint32_t depth, bool inline_mode, struct ours *ret)
{
	struct dp_io_config cfg;
	struct ours b = {
	    .inline_mode = inline_mode, .depth = depth, .window = depth * (uint32_t)o->ahead};
	int r;

	dp_io_config_init(&cfg);
	cfg.queue_depth = depth; /* in the kernel at most: fio's iodepth */
	cfg.n_bufs = b.window;
	cfg.buf_size = MAX_BS;
	if (o->spin_us >= 0)
		cfg.spin_us = (uint32_t)o->spin_us;
	if (o->no_huge)
		cfg.flags |= DP_IO_NO_HUGE;
	r = dp_io_new(&cfg, &b.io);
	if (r < 0)
		return r;
	r = dp_io_file_open(b.io, o->file, O_RDONLY, 0, 0, &b.file);
	if (r == 0 && !inline_mode)
		r = dp_io_start(b.io, o->cpu);
	if (r == 0 && inline_mode) /* this thread owns the ring; dp_io_wait drives it */
		r = dp_io_poll(b.io, 0);
	if (r == 0)
		r = dp_io_chan_new(b.io, b.window, &b.chan);
	if (r < 0) {
		dp_io_free(b.io);
		return r;
	}
	*ret = b;
	return 0;
}

static void ours_close(struct ours *b)
{
	if (!b->open)
		return;
	dp_io_chan_free(b->chan);
	dp_io_stop(b->io, DP_IO_STOP_DRAIN);
	dp_io_free(b->io);
}

static int run_ours(struct ours *b, const struct opts *o, const struct bcase *k, struct res *out)
{
	struct dp_io_chan *c = b->chan;
	struct dp_io_req reqs[4 * MAX_DEPTH];
	uint64_t blocks = o->size / k->bs, seq = 0,
	         rng = 0x9e3779b97f4a7c15ull ^ (uint64_t)dp_clock_s();
	uint64_t base = dp_io_chan_next(c), issued = base, retired = base, errors = 0;
	bool stopping = false;

	double c0 = rusage_s(), t0 = dp_clock_s(), t_end = t0 + o->secs;
	for (;;) {
		if (!stopping && issued - retired < b->window) {
			uint32_t n = b->window - (uint32_t)(issued - retired);
			for (uint32_t i = 0; i < n; i++) {
				uint64_t blk = k->rand ? xorshift(&rng) % blocks : seq++ % blocks;
				reqs[i] = (struct dp_io_req){
				    .op = DP_IO_OP_READ,
				    .file = b->file,
				    .offset = blk * k->bs,
				    /* ticket t reuses ticket t-window's buffer,
				     * which has finished: at most window are out */
				    .addr = dp_io_buf(b->io, (uint32_t)((issued + i) % b->window)),
				    .len = k->bs,
				};
			}
			int r = dp_io_submit(c, reqs, n, &(uint64_t){0});
			if (r < 0) {
				fprintf(stderr, "bench-io: submit: %s\n", strerror(-r));
				return r;
			}
			issued += (uint64_t)r;
		}
		if (retired == issued)
			break;
		/* Refill once per `batch` completions (in ticket order), not
		 * per completion: fewer wake-ups, and with ahead x depth queued
		 * the kernel keeps depth meanwhile. */
		uint32_t batch = o->batch > 0 ? (uint32_t)o->batch : b->depth / 2;
		uint64_t target = retired + (batch ? batch : 1) - 1;
		if (stopping || target >= issued)
			target = stopping ? retired : issued - 1;
		dp_io_wait(c, target, -1);
		uint64_t done = dp_io_completed(c);
		for (; retired < done; retired++) {
			int32_t res;
			if (dp_io_result(c, retired, &res) < 0 || res != (int32_t)k->bs)
				errors++;
		}
		if (!stopping && dp_clock_s() >= t_end)
			stopping = true;
	}
	double wall = dp_clock_s() - t0, cpu = rusage_s() - c0;
	if (errors) {
		fprintf(stderr, "bench-io: %llu reads failed or came back short\n",
		        (unsigned long long)errors);
		return -EIO;
	}
	uint64_t ops = retired - base;
	out->iops = (double)ops / wall;
	out->gbps = (double)ops * k->bs / wall / 1e9;
	out->cpu = 100.0 * cpu / wall;
	out->ok = true;
	return 0;
}

/* ---- fio --------------------------------------------------------------- */

static int run_fio(const struct opts *o, const struct bcase *k, struct res *out)
{
	char a_file[600], a_size[64], a_bs[32], a_depth[32], a_rt[32];
	char *argv[] = {
	    "fio",
	    "--name=dp-io",
	    a_file,
	    a_size,
	    "--ioengine=io_uring",
	    "--direct=1",
	    k->rand ? "--rw=randread" : "--rw=read",
	    a_bs,
	    a_depth,
	    a_rt,
	    "--time_based",
	    "--fixedbufs=1",
	    "--registerfiles=1",
	    "--randrepeat=0",
	    "--norandommap",
	    "--allow_file_create=0",
	    "--output-format=json",
	    NULL,
	};
	posix_spawn_file_actions_t fa;
	int p[2], status;
	pid_t pid;

	snprintf(a_file, sizeof(a_file), "--filename=%s", o->file);
	snprintf(a_size, sizeof(a_size), "--size=%llu", (unsigned long long)o->size);
	snprintf(a_bs, sizeof(a_bs), "--bs=%u", k->bs);
	snprintf(a_depth, sizeof(a_depth), "--iodepth=%u", k->depth);
	snprintf(a_rt, sizeof(a_rt), "--runtime=%ldms", (long)(o->secs * 1000));
	if (pipe2(p, O_CLOEXEC) < 0)
		return -errno;
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_adddup2(&fa, p[1], 1);
	int r = posix_spawnp(&pid, "fio", &fa, NULL, argv, environ);
	posix_spawn_file_actions_destroy(&fa);
	close(p[1]);
	if (r) {
		close(p[0]);
		return -r;
	}
	size_t len = 0, cap = 1 << 16;
	char *buf = malloc(cap);
	ssize_t n;
	while (buf && (n = read(p[0], buf + len, cap - len)) > 0) {
		len += (size_t)n;
		if (len == cap) {
			char *nb = realloc(buf, cap *= 2);
			if (!nb) {
				free(buf);
				buf = NULL;
			}
			buf = nb;
		}
	}
	close(p[0]);
	waitpid(pid, &status, 0);
	if (!buf)
		return -ENOMEM;
	r = -EIO;
	char *start = memchr(buf, '{', len); /* fio may print notes first */
	json_error_t err;
	json_t *root = start ? json_loadb(start, len - (size_t)(start - buf), 0, &err) : NULL;
	json_t *job = root ? json_array_get(json_object_get(root, "jobs"), 0) : NULL;
	json_t *rd = job ? json_object_get(job, "read") : NULL;
	if (rd && WIFEXITED(status) && WEXITSTATUS(status) == 0) {
		out->gbps = json_number_value(json_object_get(rd, "bw_bytes")) / 1e9;
		out->iops = json_number_value(json_object_get(rd, "iops"));
		out->cpu = json_number_value(json_object_get(job, "usr_cpu")) +
		           json_number_value(json_object_get(job, "sys_cpu"));
		out->ok = out->iops > 0;
		r = out->ok ? 0 : -EIO;
	}
	if (r < 0)
		fprintf(stderr, "bench-io: fio failed (status %d)\n", status);
	json_decref(root);
	free(buf);
	return r;
}

/* ---- driver ------------------------------------------------------------ */

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

static struct res median(struct res *r, int n)
{
	double g[MAX_REPS], i[MAX_REPS], c[MAX_REPS];
	struct res m = {0};
	int k = 0;

	for (int j = 0; j < n; j++) {
		if (!r[j].ok)
			continue;
		g[k] = r[j].gbps;
		i[k] = r[j].iops;
		c[k] = r[j].cpu;
		k++;
	}
	if (!k)
		return m;
	qsort(g, (size_t)k, sizeof(double), cmp_double);
	qsort(i, (size_t)k, sizeof(double), cmp_double);
	qsort(c, (size_t)k, sizeof(double), cmp_double);
	m.gbps = k % 2 ? g[k / 2] : (g[k / 2 - 1] + g[k / 2]) / 2;
	m.iops = k % 2 ? i[k / 2] : (i[k / 2 - 1] + i[k / 2]) / 2;
	m.cpu = k % 2 ? c[k / 2] : (c[k / 2 - 1] + c[k / 2]) / 2;
	m.ok = true;
	return m;
}

static void usage(void)
{
	fprintf(stderr,
	        "usage: bench-io [--quick] [--file PATH] [--size MiB] [--time SEC] [--reps N]\n"
	        "                [--depths 1,4,32,128] [--no-fio] [--inline] [--cpu N] [--remove]\n"
	        "                [--spin-us N] [--no-huge] [--ahead N] [--batch N]\n");
}

static int parse(int argc, char **argv, struct opts *o)
{
	static const struct option lo[] = {
	    {"quick", no_argument, NULL, 'q'},         {"file", required_argument, NULL, 'f'},
	    {"size", required_argument, NULL, 's'},    {"time", required_argument, NULL, 't'},
	    {"reps", required_argument, NULL, 'r'},    {"depths", required_argument, NULL, 'd'},
	    {"no-fio", no_argument, NULL, 'n'},        {"inline", no_argument, NULL, 'i'},
	    {"cpu", required_argument, NULL, 'c'},     {"remove", no_argument, NULL, 'x'},
	    {"spin-us", required_argument, NULL, 'p'}, {"no-huge", no_argument, NULL, 'g'},
	    {"ahead", required_argument, NULL, 'a'},   {"batch", required_argument, NULL, 'b'},
	    {"help", no_argument, NULL, 'h'},          {NULL, 0, NULL, 0},
	};
	const uint32_t dflt[] = {1, 4, 32, 128};
	bool depths_set = false, size_set = false, time_set = false, reps_set = false;
	int ch;

	*o = (struct opts){.file = "/var/tmp/dualpath-bench-io.dat",
	                   .size = 2ull << 30,
	                   .secs = 1.0,
	                   .reps = 2,
	                   .head_reps = 4,
	                   .fio = true,
	                   .cpu = -1,
	                   .spin_us = -1,
	                   .ahead = 4};
	while ((ch = getopt_long(argc, argv, "", lo, NULL)) != -1) {
		switch (ch) {
		case 'q':
			o->quick = true;
			break;
		case 'f':
			o->file = optarg;
			break;
		case 's':
			o->size = strtoull(optarg, NULL, 10) << 20;
			size_set = true;
			break;
		case 't':
			o->secs = strtod(optarg, NULL);
			time_set = true;
			break;
		case 'r':
			o->reps = atoi(optarg);
			o->head_reps = o->reps;
			reps_set = true;
			break;
		case 'd': {
			char *s = optarg, *e;
			o->n_depths = 0;
			while (*s && o->n_depths < 8) {
				unsigned long v = strtoul(s, &e, 10);
				if (e == s || v < 1 || v > MAX_DEPTH)
					return -1;
				o->depths[o->n_depths++] = (uint32_t)v;
				s = *e == ',' ? e + 1 : e;
			}
			depths_set = true;
			break;
		}
		case 'n':
			o->fio = false;
			break;
		case 'i':
			o->inline_mode = true;
			break;
		case 'c':
			o->cpu = atoi(optarg);
			break;
		case 'x':
			o->remove = true;
			break;
		case 'p':
			o->spin_us = atoi(optarg);
			break;
		case 'g':
			o->no_huge = true;
			break;
		case 'a':
			o->ahead = atoi(optarg);
			break;
		case 'b':
			o->batch = atoi(optarg);
			break;
		default:
			return -1;
		}
	}
	if (o->quick) {
		if (!size_set)
			o->size = 256ull << 20;
		if (!time_set)
			o->secs = 0.25;
		if (!reps_set)
			o->reps = o->head_reps = 1;
		if (!depths_set) {
			o->depths[0] = 1;
			o->depths[1] = 32;
			o->n_depths = 2;
			depths_set = true;
		}
	}
	if (!depths_set) {
		memcpy(o->depths, dflt, sizeof(dflt));
		o->n_depths = 4;
	}
	if (o->reps < 1 || o->reps > MAX_REPS || o->secs <= 0 || o->size < (1ull << 20) ||
	    o->ahead < 1 || o->ahead > 4)
		return -1;
	if (o->head_reps > MAX_REPS)
		o->head_reps = MAX_REPS;
	return 0;
}

static void result_line(const char *name, double ours, double anchor, const char *unit,
                        const char *better)
{
	printf("RESULT %s ours=%.4g anchor=%.4g ratio=%.3f unit=%s better=%s\n", name, ours, anchor,
	       anchor > 0 ? ours / anchor : 0.0, unit, better);
}

/* The engine for depth index d (opened on first use). */
static struct ours *engine_for(const struct opts *o, struct ours *engines, int d, bool inline_mode)
{
	struct ours *b = &engines[d];

	if (!b->open) {
		int r = ours_open(o, o->depths[d], inline_mode, b);
		if (r < 0) {
			fprintf(stderr, "bench-io: engine on %s: %s\n", o->file, strerror(-r));
			return NULL;
		}
		b->open = true;
	}
	return b;
}

int main(int argc, char **argv)
{
	struct opts o;
	struct ours eng[8] = {0}, eng_inl[8] = {0};
	struct bcase cases[64];
	int case_d[64];
	struct res ours[64], fio[64], inl[64];
	char desc[1024];
	int nc = 0;

	if (parse(argc, argv, &o) < 0) {
		usage();
		return 2;
	}
	if (ensure_file(&o) < 0)
		return 1;
	struct ours *b0 = engine_for(&o, eng, 0, false);
	if (!b0)
		return 1;
	dp_io_describe(b0->io, desc, sizeof(desc));
	printf("engine: %s\n", desc);
	struct dp_io_file_info fi;
	dp_io_file_info(b0->io, b0->file, &fi);
	printf("file: %s, %llu MiB, %s\n", o.file, (unsigned long long)(o.size >> 20),
	       fi.direct ? "O_DIRECT"
	                 : "buffered (no O_DIRECT here: figures include the page cache)");
	printf("depth = requests in the kernel (engine queue_depth, fio iodepth); our requester\n"
	       "keeps %d x depth queued. Each run %.2f s; ours and fio interleaved, median of %d\n"
	       "(%d for headlines). CPU%%: 100 = one core (ours: whole process; fio: its job).\n\n",
	       o.ahead, o.secs, o.reps, o.head_reps);

	const uint32_t sizes[2] = {65536, 4096};
	for (int s = 0; s < 2; s++)
		for (int rnd = 1; rnd >= 0; rnd--)
			for (int d = 0; d < o.n_depths; d++) {
				case_d[nc] = d;
				cases[nc++] = (struct bcase){.bs = sizes[s],
				                             .rand = rnd,
				                             .depth = o.depths[d],
				                             .headline = rnd && o.depths[d] == 32};
			}

	printf("%-5s %-5s %5s | %9s %9s %6s |", "bs", "rw", "depth", "ours GB/s", "IOPS", "CPU%");
	if (o.inline_mode)
		printf(" %9s %9s %6s |", "inl GB/s", "IOPS", "CPU%");
	if (o.fio)
		printf(" %9s %9s %6s | %6s", "fio GB/s", "IOPS", "CPU%", "ratio");
	printf("\n");
	for (int i = 0; i < nc; i++) {
		struct res ro[MAX_REPS] = {0}, rf[MAX_REPS] = {0}, ri[MAX_REPS] = {0};
		int reps = cases[i].headline ? o.head_reps : o.reps;
		struct ours *b = engine_for(&o, eng, case_d[i], false);
		struct ours *bi = o.inline_mode ? engine_for(&o, eng_inl, case_d[i], true) : NULL;
		if (!b || (o.inline_mode && !bi))
			return 1;
		for (int rep = 0; rep < reps; rep++) {
			if (run_ours(b, &o, &cases[i], &ro[rep]) < 0)
				return 1;
			if (bi && run_ours(bi, &o, &cases[i], &ri[rep]) < 0)
				return 1;
			if (o.fio && run_fio(&o, &cases[i], &rf[rep]) < 0) {
				fprintf(stderr, "bench-io: fio unavailable: anchor left out\n");
				o.fio = false;
			}
		}
		ours[i] = median(ro, reps);
		fio[i] = median(rf, reps);
		inl[i] = median(ri, reps);
		printf("%-5s %-5s %5u | %9.3f %9.0f %6.1f |", cases[i].bs == 4096 ? "4k" : "64k",
		       cases[i].rand ? "rand" : "seq", cases[i].depth, ours[i].gbps, ours[i].iops,
		       ours[i].cpu);
		if (o.inline_mode)
			printf(" %9.3f %9.0f %6.1f |", inl[i].gbps, inl[i].iops, inl[i].cpu);
		if (o.fio && fio[i].ok)
			printf(" %9.3f %9.0f %6.1f | %6.3f", fio[i].gbps, fio[i].iops, fio[i].cpu,
			       ours[i].gbps / fio[i].gbps);
		printf("\n");
		fflush(stdout);
	}

	printf("\n");
	for (int d = 0; d < o.n_depths; d++) {
		struct dp_io_stats st;
		if (!eng[d].open)
			continue;
		dp_io_get_stats(eng[d].io, &st);
		printf(
		    "engine depth %3u: %llu reads, %.1f SQEs per io_uring_enter, at most %u in the "
		    "kernel, io thread %.2f us cpu per read\n",
		    o.depths[d], (unsigned long long)st.reads,
		    st.submits ? (double)st.sqes / (double)st.submits : 0.0, st.inflight_max,
		    st.reads ? (double)st.cpu_ns / 1e3 / (double)st.reads : 0.0);
	}
	if (o.fio) {
		for (int i = 0; i < nc; i++) {
			if (!cases[i].headline || !fio[i].ok)
				continue;
			char name[64];
			const char *pat = cases[i].rand ? "randread" : "read";
			if (cases[i].bs == 65536) {
				snprintf(name, sizeof(name), "io-%s-64k-qd%u-throughput", pat,
				         cases[i].depth);
				result_line(name, ours[i].gbps, fio[i].gbps, "GB/s", "higher");
			} else {
				snprintf(name, sizeof(name), "io-%s-4k-qd%u-iops", pat,
				         cases[i].depth);
				result_line(name, ours[i].iops, fio[i].iops, "IOPS", "higher");
				snprintf(name, sizeof(name), "io-%s-4k-qd%u-cpu", pat,
				         cases[i].depth);
				result_line(name, ours[i].cpu, fio[i].cpu, "%cpu", "lower");
			}
		}
	}
	for (int d = 0; d < o.n_depths; d++) {
		ours_close(&eng[d]);
		ours_close(&eng_inl[d]);
	}
	if (o.remove)
		unlink(o.file);
	return 0;
}
