/* SPDX-License-Identifier: MIT */
/*
 * How disturbed a run was, on a machine shared with other work: the CPU
 * time the whole machine spent (/proc/stat: user, nice, system, irq,
 * softirq, steal) less what this driver and its children (the daemons, the
 * I/O probe, v4ctl) spent (getrusage), over the run's wall time: the CPUs
 * other processes took, steal (the hypervisor's) shown apart. And a fixed
 * piece of arithmetic on every CPU at once (the probe), timed: it takes
 * longer the more the CPUs are shared. And the most direct: how long the
 * daemon's own threads, runnable, waited for a CPU (the scheduler's
 * /proc/PID/task/TID/schedstat), against how long they ran.
 */
#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "agentic.h"

static double tv_s(struct timeval t)
{
	return (double)t.tv_sec + (double)t.tv_usec / 1e6;
}

int ag_cpu_snap(struct ag_cpu_snap *ret)
{
	FILE *f = fopen("/proc/stat", "r");
	if (!f)
		return -errno;
	unsigned long long us, ni, sy, id, io, irq, sirq, st;
	int n = fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &us, &ni, &sy, &id, &io,
	               &irq, &sirq, &st);
	fclose(f);
	if (n != 8)
		return -EPROTO;
	struct rusage self, kids;
	getrusage(RUSAGE_SELF, &self);
	getrusage(RUSAGE_CHILDREN, &kids);
	double hz = (double)sysconf(_SC_CLK_TCK);
	ret->busy_s = (double)(us + ni + sy + irq + sirq + st) / hz;
	ret->steal_s = (double)st / hz;
	ret->ours_s =
	    tv_s(self.ru_utime) + tv_s(self.ru_stime) + tv_s(kids.ru_utime) + tv_s(kids.ru_stime);
	ret->t_ns = dp_clock_ns();
	return 0;
}

void ag_cpu_since(const struct ag_cpu_snap *a, const struct ag_cpu_snap *b, double *ret_others,
                  double *ret_steal)
{
	double wall = (double)(b->t_ns - a->t_ns) / 1e9;
	double others = (b->busy_s - a->busy_s) - (b->ours_s - a->ours_s);
	/* ticks and rusage round differently: a few ms either way */
	if (others < 0)
		others = 0;
	*ret_others = wall > 0 ? others / wall : 0;
	*ret_steal = wall > 0 ? (b->steal_s - a->steal_s) / wall : 0;
}

int ag_proc_sched(pid_t pid, double *ret_run_s, double *ret_wait_s)
{
	char path[64];
	snprintf(path, sizeof(path), "/proc/%d/task", (int)pid);
	DIR *d = opendir(path);
	if (!d)
		return -errno;
	unsigned long long run = 0, wait = 0;
	int n = 0;
	for (struct dirent *e; (e = readdir(d));) {
		if (e->d_name[0] == '.')
			continue;
		char f[300];
		snprintf(f, sizeof(f), "/proc/%d/task/%s/schedstat", (int)pid, e->d_name);
		FILE *fp = fopen(f, "r");
		unsigned long long r, w;
		if (fp && fscanf(fp, "%llu %llu", &r, &w) == 2) {
			run += r;
			wait += w;
			n++;
		}
		if (fp)
			fclose(fp);
	}
	closedir(d);
	if (!n)
		return -ENOENT; /* no schedstat (a kernel without CONFIG_SCHED_INFO) */
	*ret_run_s = (double)run / 1e9;
	*ret_wait_s = (double)wait / 1e9;
	return 0;
}

/* ---- the probe ------------------------------------------------------------ */

#define PROBE_FLOATS 8192 /* 32 KiB a thread: in L1/L2, so memory does not enter */
#define PROBE_PASSES 1600 /* ~10 ms on an idle 3 GHz core */

static void *probe_main(void *arg)
{
	float *acc = arg;
	float a[PROBE_FLOATS];
	for (int i = 0; i < PROBE_FLOATS; i++)
		a[i] = 1.0f + (float)(i % 7) * 1e-4f;
	float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
	for (int p = 0; p < PROBE_PASSES; p++) {
		for (int i = 0; i < PROBE_FLOATS; i += 4) {
			s0 = s0 * 0.999f + a[i];
			s1 = s1 * 0.999f + a[i + 1];
			s2 = s2 * 0.999f + a[i + 2];
			s3 = s3 * 0.999f + a[i + 3];
		}
		a[p % PROBE_FLOATS] = s0 * 1e-3f; /* keeps the passes from folding */
	}
	*acc = s0 + s1 + s2 + s3;
	return NULL;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

double ag_probe_ms(void)
{
	enum { REPS = 3, MAX_THREADS = 64 };
	long nc = sysconf(_SC_NPROCESSORS_ONLN);
	unsigned n = nc < 1 ? 1 : nc > MAX_THREADS ? MAX_THREADS : (unsigned)nc;
	pthread_t th[MAX_THREADS];
	float acc[MAX_THREADS];
	double t[REPS];
	for (int r = 0; r < REPS; r++) {
		uint64_t t0 = dp_clock_ns();
		unsigned started = 0;
		for (; started < n; started++)
			if (pthread_create(&th[started], NULL, probe_main, &acc[started]))
				break;
		for (unsigned i = 0; i < started; i++)
			pthread_join(th[i], NULL);
		t[r] = (double)(dp_clock_ns() - t0) / 1e6;
	}
	qsort(t, REPS, sizeof(*t), cmp_double);
	return t[REPS / 2];
}
