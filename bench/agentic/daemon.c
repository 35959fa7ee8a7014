/* SPDX-License-Identifier: MIT */
/*
 * One dualpathd for one mode: started in a fresh work directory (socket,
 * state/, log), its Stats read at the end, its trace events gathered while
 * it runs, stopped with SIGTERM.
 */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "agentic.h"
#include "base/macros.h"
#include "v4ctl/client.h"

#define MAX_ARGS 64

int ag_daemon_start(struct ag_daemon *d, const char *bin, const char *parent,
                    const char *const *args, char *err, size_t err_len)
{
	memset(d, 0, sizeof(*d));
	snprintf(d->dir, sizeof(d->dir), "%s/dp-agentic.XXXXXX", parent);
	if (!mkdtemp(d->dir)) {
		int e = errno;
		snprintf(err, err_len, "mkdtemp in %s: %s", parent, strerror(e));
		d->dir[0] = '\0';
		return -e;
	}
	snprintf(d->sock, sizeof(d->sock), "%s/sock", d->dir);
	snprintf(d->state, sizeof(d->state), "%s/state", d->dir);
	snprintf(d->log, sizeof(d->log), "%s/log", d->dir);
	if (mkdir(d->state, 0700) < 0) {
		int e = errno;
		snprintf(err, err_len, "mkdir %s: %s", d->state, strerror(e));
		return -e;
	}
	const char *argv[MAX_ARGS + 8];
	int n = 0;
	argv[n++] = bin;
	argv[n++] = "--config";
	argv[n++] = "/dev/null";
	argv[n++] = "--socket";
	argv[n++] = d->sock;
	argv[n++] = "--state-dir";
	argv[n++] = d->state;
	for (int i = 0; args[i]; i++) {
		if (i >= MAX_ARGS) {
			snprintf(err, err_len, "more than %d daemon arguments", MAX_ARGS);
			return -E2BIG;
		}
		argv[n++] = args[i];
	}
	argv[n] = NULL;
	d->pid = fork();
	if (d->pid < 0) {
		int e = errno;
		snprintf(err, err_len, "fork: %s", strerror(e));
		d->pid = 0;
		return -e;
	}
	if (d->pid == 0) {
		int fd = open(d->log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
		if (fd >= 0) {
			dup2(fd, STDOUT_FILENO);
			dup2(fd, STDERR_FILENO);
		}
		execv(bin, (char *const *)argv);
		_exit(127);
	}
	for (int i = 0; i < 12000; i++) { /* 120 s: a big model loads slowly */
		struct dp_client *c;
		if (dp_client_connect(d->sock, 1000, &c) == 0) {
			int r = dp_client_hello(c, "agentic-driver");
			dp_client_free(c);
			if (r == 0)
				return 0;
		}
		if (waitpid(d->pid, NULL, WNOHANG) == d->pid) {
			d->pid = 0;
			snprintf(err, err_len, "%s exited before serving; its log is %s", bin,
			         d->log);
			return -ECHILD;
		}
		usleep(10000);
	}
	snprintf(err, err_len, "%s did not serve within 120 s (log: %s)", bin, d->log);
	return -ETIMEDOUT;
}

double ag_proc_cpu_s(pid_t pid)
{
	char path[64], buf[1024];
	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	FILE *f = fopen(path, "r");
	if (!f)
		return NAN;
	size_t n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = '\0';
	/* after "(comm)": state is field 3; utime and stime are 14 and 15 */
	char *p = strrchr(buf, ')');
	unsigned long long ut, st;
	if (!p ||
	    sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
		return NAN;
	return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

void ag_daemon_stop(struct ag_daemon *d)
{
	if (d->pid <= 0)
		return;
	kill(d->pid, SIGTERM);
	for (int i = 0; i < 12000; i++) {
		if (waitpid(d->pid, NULL, WNOHANG) == d->pid) {
			d->pid = 0;
			return;
		}
		usleep(10000);
	}
	kill(d->pid, SIGKILL);
	waitpid(d->pid, NULL, 0);
	d->pid = 0;
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	remove(path);
	return 0;
}

void ag_daemon_cleanup(struct ag_daemon *d)
{
	if (d->dir[0])
		nftw(d->dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
	d->dir[0] = '\0';
}

/* ---- stats ------------------------------------------------------------------ */

static int call(const char *sock, Dualpath__V1__Request *req, Dualpath__V1__Response__BodyCase want,
                Dualpath__V1__Response **ret, char *err, size_t err_len)
{
	struct dp_client *c;
	int r = dp_client_connect(sock, 60000, &c);
	if (r == 0)
		r = dp_client_hello(c, "agentic-driver");
	if (r == 0)
		r = dp_client_call(c, req, ret);
	if (r < 0) {
		snprintf(err, err_len, "%s request to %s: %s", dp_proto_request_name(req), sock,
		         strerror(-r));
		dp_client_free(c);
		return r;
	}
	if ((*ret)->body_case != want) {
		const char *msg = "";
		Dualpath__V1__Code code = dp_client_last_error(c, &msg);
		snprintf(err, err_len, "%s request: the daemon answered %s: %s",
		         dp_proto_request_name(req), dp_client_code_name(code), msg);
		dp_proto_response_free(*ret);
		dp_client_free(c);
		return -EREMOTEIO;
	}
	dp_client_free(c);
	return 0;
}

int ag_daemon_stats(const char *sock, struct ag_stats *ret, char *err, size_t err_len)
{
	Dualpath__V1__Request req = DUALPATH__V1__REQUEST__INIT;
	Dualpath__V1__StatsRequest sr = DUALPATH__V1__STATS_REQUEST__INIT;
	Dualpath__V1__Response *r;
	req.body_case = DUALPATH__V1__REQUEST__BODY_STATS;
	req.stats = &sr;
	int rc = call(sock, &req, DUALPATH__V1__RESPONSE__BODY_STATS, &r, err, err_len);
	if (rc < 0)
		return rc;
	static const struct {
		const char *name, *label;
		size_t off;
	} map[] = {
#define M(n, l, f) {n, l, offsetof(struct ag_stats, f)}
	    M("dualpath_step_seconds_total", NULL, step_s),
	    M("dualpath_compute_seconds_total", NULL, compute_s),
	    M("dualpath_stall_seconds_total", NULL, stall_s),
	    M("dualpath_restore_hold_seconds_total", NULL, hold_s),
	    M("dualpath_restore_holds_total", NULL, holds),
	    M("dualpath_restore_joins_forced_total", NULL, joins_forced),
	    M("dualpath_kv_restores_total", NULL, restores),
	    M("dualpath_kv_restore_seconds_total", NULL, restore_s),
	    M("dualpath_tokens_total", "prefill", tokens_prefill),
	    M("dualpath_tokens_total", "decode", tokens_decode),
	    M("dualpath_kv_promotions_total", NULL, promotions),
	    M("dualpath_kv_demotions_total", NULL, demotions),
	    M("dualpath_kv_pages_read_total", NULL, pages_read),
	    M("dualpath_kv_pages_written_total", NULL, pages_written),
	    M("dualpath_kv_pages_shared_total", NULL, pages_shared),
	    M("dualpath_kv_recomputed_tokens_total", NULL, recomputed_tokens),
	    M("dualpath_kv_corrupt_pages_total", NULL, corrupt_pages),
	    M("dualpath_io_read_bytes_total", NULL, io_read_bytes),
	    M("dualpath_io_written_bytes_total", NULL, io_written_bytes),
	    M("dualpath_io_reads_total", NULL, io_reads),
	    M("dualpath_kv_direct_io", NULL, direct_io),
	    M("dualpath_steps_total", NULL, steps),
#undef M
	};
	memset(ret, 0, sizeof(*ret));
	for (size_t i = 0; i < r->stats->n_metrics; i++) {
		const Dualpath__V1__Metric *m = r->stats->metrics[i];
		for (size_t k = 0; k < DP_ARRAY_SIZE(map); k++) {
			if (strcmp(m->name, map[k].name))
				continue;
			if (map[k].label &&
			    (m->n_labels < 1 || strcmp(m->labels[0]->value, map[k].label)))
				continue;
			*(double *)((char *)ret + map[k].off) = m->value;
		}
	}
	dp_proto_response_free(r);
	return 0;
}

int ag_daemon_trace_mark(const char *sock, uint64_t *ret_end_us, char *err, size_t err_len)
{
	Dualpath__V1__Request req = DUALPATH__V1__REQUEST__INIT;
	Dualpath__V1__TraceRequest tr = DUALPATH__V1__TRACE_REQUEST__INIT;
	Dualpath__V1__Response *r;
	tr.max_events = 1;
	req.body_case = DUALPATH__V1__REQUEST__BODY_TRACE;
	req.trace = &tr;
	int rc = call(sock, &req, DUALPATH__V1__RESPONSE__BODY_TRACE, &r, err, err_len);
	if (rc < 0)
		return rc;
	*ret_end_us =
	    r->trace->n_events ? r->trace->events[0]->start_us + r->trace->events[0]->dur_us : 0;
	dp_proto_response_free(r);
	return 0;
}

/* ---- trace events ------------------------------------------------------------ */

static bool ev_same(const struct ag_ev *a, const Dualpath__V1__TraceEvent *b)
{
	return a->start_us == b->start_us && a->dur_us == b->dur_us &&
	       !strncmp(a->name, b->name, sizeof(a->name) - 1);
}

static void ev_from(struct ag_ev *e, const Dualpath__V1__TraceEvent *t)
{
	memset(e, 0, sizeof(*e));
	snprintf(e->name, sizeof(e->name), "%s", t->name ? t->name : "");
	e->io_lane = t->lane && strcmp(t->lane, "compute");
	e->start_us = t->start_us;
	e->dur_us = t->dur_us;
	if (t->n_args > 0)
		e->arg0 = (uint32_t)strtoul(t->args[0]->value, NULL, 10);
	if (t->n_args > 1)
		snprintf(e->arg1, sizeof(e->arg1), "%s", t->args[1]->value);
	static const char *const kib[] = AG_EV_KIB_NAMES;
	for (size_t i = 2; i < t->n_args; i++)
		for (size_t k = 0; k < sizeof(kib) / sizeof(kib[0]); k++)
			if (t->args[i]->name && !strcmp(t->args[i]->name, kib[k])) {
				e->kib[k] = (uint32_t)strtoul(t->args[i]->value, NULL, 10);
				e->has_kib = true;
			}
}

/*
 * One poll: the daemon's retained events, oldest first. The new ones are
 * those after the last event we already hold; if that one is not among
 * them, the ring has turned over since the last poll (a gap). Asks for a
 * tail of `want` events, doubling it until the overlap shows.
 */
static int poll_once(struct ag_monitor *m, struct dp_client *c)
{
	uint32_t want = 512;
	for (;;) {
		Dualpath__V1__Request req = DUALPATH__V1__REQUEST__INIT;
		Dualpath__V1__TraceRequest tr = DUALPATH__V1__TRACE_REQUEST__INIT;
		Dualpath__V1__Response *r;
		tr.max_events = want;
		req.body_case = DUALPATH__V1__REQUEST__BODY_TRACE;
		req.trace = &tr;
		int ret = dp_client_call(c, &req, &r);
		if (ret < 0)
			return ret;
		if (r->body_case != DUALPATH__V1__RESPONSE__BODY_TRACE) {
			const char *msg = "";
			dp_client_last_error(c, &msg);
			snprintf(m->what, sizeof(m->what), "Trace: %s", msg);
			dp_proto_response_free(r);
			return -EREMOTEIO;
		}
		const Dualpath__V1__TraceReply *t = r->trace;
		size_t from = 0;
		bool found = m->n == 0;
		if (m->n) {
			for (size_t i = t->n_events; i-- > 0;)
				if (ev_same(&m->ev[m->n - 1], t->events[i])) {
					from = i + 1;
					found = true;
					break;
				}
		}
		if (!found && t->n_events >= want && want < 4096) {
			dp_proto_response_free(r);
			want *= 2;
			continue;
		}
		if (!found)
			m->gaps++;
		if (m->n + t->n_events > m->cap) {
			size_t cap = m->cap ? m->cap : 8192;
			while (cap < m->n + t->n_events)
				cap *= 2;
			struct ag_ev *p = realloc(m->ev, cap * sizeof(*p));
			if (!p) {
				dp_proto_response_free(r);
				return -ENOMEM;
			}
			m->ev = p;
			m->cap = cap;
		}
		for (size_t i = from; i < t->n_events; i++)
			ev_from(&m->ev[m->n++], t->events[i]);
		m->polls++;
		dp_proto_response_free(r);
		return 0;
	}
}

static void *monitor_main(void *arg)
{
	struct ag_monitor *m = arg;
	struct dp_client *c = NULL;
	int ret = dp_client_connect(m->sock, 60000, &c);
	if (ret == 0)
		ret = dp_client_hello(c, "agentic-driver/monitor");
	while (ret == 0) {
		bool last = __atomic_load_n(&m->stop, __ATOMIC_ACQUIRE);
		if ((ret = poll_once(m, c)) < 0 || last)
			break;
		for (unsigned waited = 0;
		     waited < m->interval_ms && !__atomic_load_n(&m->stop, __ATOMIC_ACQUIRE);
		     waited += 10)
			usleep(10000);
	}
	if (ret < 0 && !m->what[0])
		snprintf(m->what, sizeof(m->what), "trace poll: %s", strerror(-ret));
	m->err = ret;
	dp_client_free(c);
	return NULL;
}

int ag_monitor_start(struct ag_monitor *m)
{
	pthread_t *t = malloc(sizeof(*t));
	if (!t)
		return -ENOMEM;
	__atomic_store_n(&m->stop, false, __ATOMIC_RELAXED);
	int r = pthread_create(t, NULL, monitor_main, m);
	if (r) {
		free(t);
		return -r;
	}
	m->thread = t;
	return 0;
}

void ag_monitor_stop(struct ag_monitor *m)
{
	if (!m->thread)
		return;
	__atomic_store_n(&m->stop, true, __ATOMIC_RELEASE);
	pthread_join(*(pthread_t *)m->thread, NULL);
	free(m->thread);
	m->thread = NULL;
}

void ag_monitor_fini(struct ag_monitor *m)
{
	ag_monitor_stop(m);
	free(m->ev);
	m->ev = NULL;
	m->n = m->cap = 0;
}
