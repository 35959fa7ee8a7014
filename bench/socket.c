/* SPDX-License-Identifier: MIT */
/*
 * bench-socket — round-trip latency and throughput of dualpathd's socket:
 * Health requests (answered by the front thread alone: framing, protobuf
 * decode and encode, one write per response) from C concurrent clients,
 * each a thread with its own connection in a closed loop (send one,
 * wait for its reply, repeat).
 *
 *	bench-socket --daemon BUILD/daemon/dualpathd --model DIR [OPTIONS]
 *	bench-socket --socket PATH [OPTIONS]        (a daemon already running)
 *
 * Options:
 *	--clients 1,8,64   client counts, one run each
 *	--requests N       requests per run, split among the clients (100000)
 *	--warmup N         requests per client before timing (200)
 *	--client raw|lib|loop
 *	                   raw (default): a thread per client, one write(2) of
 *	                   an encoded frame and dp_frame_reader reads per
 *	                   request; lib: a thread per client using the v4ctl
 *	                   client library's dp_client_call (poll + write, poll +
 *	                   exact-length reads), to show its own overhead; loop:
 *	                   one thread drives every connection from an epoll
 *	                   loop, as redis-benchmark does (fewer client threads
 *	                   competing with the daemon for the CPUs)
 *
 * Prints one line per run, for bench/socket-vs-redis to read:
 *	ours clients=C requests=N seconds=S rps=R p50_us=X p99_us=Y
 * With --daemon it starts its own dualpathd on a temporary socket and state
 * directory and stops it at the end.
 */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "base/clock.h"
#include "v4ctl/client.h"

#define MAX_RUNS 16

struct opts {
	const char *daemon, *model, *socket;
	unsigned clients[MAX_RUNS];
	int n_runs;
	unsigned long requests, warmup;
	enum { CLIENT_RAW, CLIENT_LIB, CLIENT_LOOP } client;
};

struct worker {
	const struct opts *o;
	const char *sock;
	unsigned long n;  /* timed requests */
	uint64_t *lat_ns; /* n latencies */
	pthread_barrier_t *go;
	uint64_t t_end;
	int err; /* -errno on failure */
	char what[128];
};

/* ---- one client ------------------------------------------------------------ */

/* The raw path: a pre-encoded Health frame, one write per request; replies
 * cut by a dp_frame_reader and decoded (and checked) like any client must. */
struct raw {
	int fd;
	uint8_t frame[64];
	size_t frame_len;
	uint64_t id;
	struct dp_frame_reader *rd;
};

static int raw_encode(struct raw *r)
{
	Dualpath__V1__Request req = DUALPATH__V1__REQUEST__INIT;
	Dualpath__V1__HealthRequest h = DUALPATH__V1__HEALTH_REQUEST__INIT;
	req.request_id = ++r->id;
	req.body_case = DUALPATH__V1__REQUEST__BODY_HEALTH;
	req.health = &h;
	return dp_frame_encode(&req.base, DP_FRAME_MAX_DEFAULT, r->frame, sizeof(r->frame),
	                       &r->frame_len);
}

static int raw_health(struct raw *r)
{
	int ret = raw_encode(r); /* a fresh request id each time */
	if (ret < 0)
		return ret;
	ssize_t n = send(r->fd, r->frame, r->frame_len, MSG_NOSIGNAL);
	if (n < 0)
		return -errno;
	if ((size_t)n != r->frame_len)
		return -EIO; /* a few dozen bytes into an empty socket buffer */
	for (;;) {
		const uint8_t *body;
		size_t len;
		ret = dp_frame_reader_next(r->rd, &body, &len);
		if (ret == 0) {
			Dualpath__V1__Response *resp;
			ret = dp_proto_response_decode(body, len, 0, &resp);
			if (ret < 0)
				return ret;
			bool ok = resp->request_id == r->id &&
			          resp->body_case == DUALPATH__V1__RESPONSE__BODY_HEALTH;
			dp_proto_response_free(resp);
			return ok ? 0 : -EPROTO;
		}
		if (ret != -EAGAIN)
			return ret;
		ret = dp_frame_reader_read_fd(r->rd, r->fd); /* blocking socket */
		if (ret == 0)
			return -ECONNRESET;
		if (ret < 0)
			return ret;
	}
}

static int lib_health(struct dp_client *c)
{
	Dualpath__V1__Request req = DUALPATH__V1__REQUEST__INIT;
	Dualpath__V1__HealthRequest h = DUALPATH__V1__HEALTH_REQUEST__INIT;
	Dualpath__V1__Response *resp;
	req.body_case = DUALPATH__V1__REQUEST__BODY_HEALTH;
	req.health = &h;
	int ret = dp_client_call(c, &req, &resp);
	if (ret < 0)
		return ret;
	ret = resp->body_case == DUALPATH__V1__RESPONSE__BODY_HEALTH ? 0 : -EPROTO;
	dp_proto_response_free(resp);
	return ret;
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	struct dp_client *c = NULL;
	struct raw raw = {.fd = -1};
	int ret;

	if ((ret = dp_client_connect(w->sock, 10000, &c)) < 0) {
		snprintf(w->what, sizeof(w->what), "connect %s", w->sock);
		goto fail;
	}
	if ((ret = dp_client_hello(c, "bench-socket")) < 0) {
		snprintf(w->what, sizeof(w->what), "hello");
		goto fail;
	}
	raw.fd = dp_client_fd(c);
	raw.id = 1000;
	if ((ret = dp_frame_reader_new(64u << 10, &raw.rd)) < 0) {
		snprintf(w->what, sizeof(w->what), "frame reader");
		goto fail;
	}
	for (unsigned long i = 0; i < w->o->warmup; i++) {
		if ((ret = w->o->client == CLIENT_LIB ? lib_health(c) : raw_health(&raw)) < 0) {
			snprintf(w->what, sizeof(w->what), "warm-up health");
			goto fail;
		}
	}
	pthread_barrier_wait(w->go);
	for (unsigned long i = 0; i < w->n; i++) {
		uint64_t t0 = dp_clock_ns();
		if ((ret = w->o->client == CLIENT_LIB ? lib_health(c) : raw_health(&raw)) < 0) {
			snprintf(w->what, sizeof(w->what), "health %lu", i);
			w->t_end = dp_clock_ns();
			goto out;
		}
		w->lat_ns[i] = dp_clock_ns() - t0;
	}
	w->t_end = dp_clock_ns();
	goto out;
fail:
	pthread_barrier_wait(w->go);
	w->t_end = dp_clock_ns();
out:
	w->err = ret < 0 ? ret : 0;
	dp_frame_reader_free(raw.rd);
	dp_client_free(c);
	return NULL;
}

/* ---- the event-loop client (--client loop) ------------------------------------ */

struct conn {
	struct dp_client *c;
	struct raw raw;
	uint64_t t0;
};

/*
 * One thread, `clients` connections, each with one Health in flight: send,
 * and on each reply record its latency and send the next, until `total`
 * replies have been timed (after `warmup` per connection). Returns 0 or
 * -errno; *ret_secs is the timed span.
 */
static int loop_run(const struct opts *o, const char *sock, unsigned clients, unsigned long total,
                    uint64_t *lat, double *ret_secs)
{
	struct conn *cs = calloc(clients, sizeof(*cs));
	int ep = epoll_create1(EPOLL_CLOEXEC), ret = 0;
	unsigned long done = 0, warm = 0, warm_total = o->warmup * clients, sent_timed = 0;
	uint64_t t_start = 0;

	if (!cs || ep < 0) {
		free(cs);
		return -ENOMEM;
	}
	for (unsigned i = 0; i < clients && ret == 0; i++) {
		struct conn *k = &cs[i];
		k->raw.fd = -1;
		if ((ret = dp_client_connect(sock, 10000, &k->c)) < 0 ||
		    (ret = dp_client_hello(k->c, "bench-socket")) < 0 ||
		    (ret = dp_frame_reader_new(64u << 10, &k->raw.rd)) < 0)
			break;
		k->raw.fd = dp_client_fd(k->c);
		struct epoll_event ev = {.events = EPOLLIN, .data.u32 = i};
		if (epoll_ctl(ep, EPOLL_CTL_ADD, k->raw.fd, &ev) < 0)
			ret = -errno;
	}
	/* every connection starts with one request in flight */
	for (unsigned i = 0; i < clients && ret == 0; i++) {
		struct conn *k = &cs[i];
		if ((ret = raw_encode(&k->raw)) < 0)
			break;
		k->t0 = dp_clock_ns();
		if (send(k->raw.fd, k->raw.frame, k->raw.frame_len, MSG_NOSIGNAL) !=
		    (ssize_t)k->raw.frame_len)
			ret = -EIO;
	}
	if (warm_total == 0)
		t_start = dp_clock_ns();
	while (ret == 0 && done < total) {
		struct epoll_event evs[256];
		int n = epoll_wait(ep, evs, 256, 10000);
		if (n <= 0) {
			ret = n == 0 ? -ETIMEDOUT : -errno;
			break;
		}
		for (int e = 0; e < n && ret == 0; e++) {
			struct conn *k = &cs[evs[e].data.u32];
			int r = dp_frame_reader_read_fd(k->raw.rd, k->raw.fd);
			if (r == 0)
				ret = -ECONNRESET;
			else if (r < 0 && r != -EAGAIN)
				ret = r;
			const uint8_t *body;
			size_t len;
			while (ret == 0 && dp_frame_reader_next(k->raw.rd, &body, &len) == 0) {
				uint64_t t1 = dp_clock_ns();
				Dualpath__V1__Response *resp;
				if ((ret = dp_proto_response_decode(body, len, 0, &resp)) < 0)
					break;
				if (resp->request_id != k->raw.id ||
				    resp->body_case != DUALPATH__V1__RESPONSE__BODY_HEALTH)
					ret = -EPROTO;
				dp_proto_response_free(resp);
				if (warm < warm_total) {
					/* timing starts with the next replies */
					if (++warm == warm_total)
						t_start = dp_clock_ns();
				} else if (done < total) {
					lat[done++] = t1 - k->t0;
				}
				/* next request on this connection, unless enough are out */
				if (warm < warm_total || sent_timed < total) {
					if (warm >= warm_total)
						sent_timed++;
					if ((ret = raw_encode(&k->raw)) < 0)
						break;
					k->t0 = dp_clock_ns();
					if (send(k->raw.fd, k->raw.frame, k->raw.frame_len,
					         MSG_NOSIGNAL) != (ssize_t)k->raw.frame_len)
						ret = -EIO;
				}
			}
		}
	}
	*ret_secs = (double)(dp_clock_ns() - t_start) / 1e9;
	for (unsigned i = 0; i < clients; i++) {
		dp_frame_reader_free(cs[i].raw.rd);
		dp_client_free(cs[i].c);
	}
	close(ep);
	free(cs);
	return ret;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

static void report(unsigned clients, uint64_t *lat, size_t n, double secs)
{
	qsort(lat, n, sizeof(*lat), cmp_u64);
	printf("ours clients=%u requests=%zu seconds=%.3f rps=%.0f p50_us=%.2f p99_us=%.2f\n",
	       clients, n, secs, (double)n / secs, (double)lat[n / 2] / 1e3,
	       (double)lat[n * 99 / 100] / 1e3);
	fflush(stdout);
}

/* One run with `clients` clients; prints its line. */
static int run(const struct opts *o, const char *sock, unsigned clients)
{
	unsigned long per = o->requests / clients ? o->requests / clients : 1;
	struct worker *w = calloc(clients, sizeof(*w));
	uint64_t *lat = malloc((size_t)clients * per * sizeof(*lat));
	pthread_t *t = calloc(clients, sizeof(*t));
	pthread_barrier_t go;
	int ret = 0;

	if (!w || !lat || !t) {
		fprintf(stderr, "bench-socket: out of memory\n");
		free(w);
		free(lat);
		free(t);
		return -ENOMEM;
	}
	if (o->client == CLIENT_LOOP) {
		size_t n = (size_t)clients * per;
		double secs = 0;
		ret = loop_run(o, sock, clients, n, lat, &secs);
		if (ret < 0)
			fprintf(stderr, "bench-socket: event-loop client: %s\n", strerror(-ret));
		else
			report(clients, lat, n, secs);
		free(w);
		free(lat);
		free(t);
		return ret;
	}
	pthread_barrier_init(&go, NULL, clients + 1);
	for (unsigned i = 0; i < clients; i++) {
		w[i] = (struct worker){
		    .o = o, .sock = sock, .n = per, .lat_ns = lat + (size_t)i * per, .go = &go};
		pthread_create(&t[i], NULL, worker_main, &w[i]);
	}
	pthread_barrier_wait(&go);
	uint64_t t0 = dp_clock_ns(), t_end = t0;
	for (unsigned i = 0; i < clients; i++) {
		pthread_join(t[i], NULL);
		if (w[i].t_end > t_end)
			t_end = w[i].t_end;
		if (w[i].err && !ret) {
			fprintf(stderr, "bench-socket: client %u: %s: %s\n", i, w[i].what,
			        strerror(-w[i].err));
			ret = w[i].err;
		}
	}
	pthread_barrier_destroy(&go);
	if (ret == 0)
		report(clients, lat, (size_t)clients * per, (double)(t_end - t0) / 1e9);
	free(w);
	free(lat);
	free(t);
	return ret;
}

/* ---- our own daemon ---------------------------------------------------------- */

struct daemon {
	pid_t pid;
	char dir[256], sock[300], log[300];
};

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	remove(path);
	return 0;
}

static void daemon_stop(struct daemon *d)
{
	if (d->pid > 0) {
		kill(d->pid, SIGTERM);
		for (int i = 0; i < 2000; i++) {
			if (waitpid(d->pid, NULL, WNOHANG) == d->pid) {
				d->pid = 0;
				break;
			}
			usleep(10000);
		}
		if (d->pid > 0) {
			kill(d->pid, SIGKILL);
			waitpid(d->pid, NULL, 0);
		}
	}
	if (d->dir[0])
		nftw(d->dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

static int daemon_start(struct daemon *d, const char *bin, const char *model)
{
	const char *tmp = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
	snprintf(d->dir, sizeof(d->dir), "%s/dp-bench-socket.XXXXXX", tmp);
	if (!mkdtemp(d->dir)) {
		fprintf(stderr, "bench-socket: mkdtemp in %s: %s\n", tmp, strerror(errno));
		d->dir[0] = '\0';
		return -errno;
	}
	snprintf(d->sock, sizeof(d->sock), "%s/sock", d->dir);
	snprintf(d->log, sizeof(d->log), "%s/log", d->dir);
	char state[300];
	snprintf(state, sizeof(state), "%s/state", d->dir);
	d->pid = fork();
	if (d->pid < 0)
		return -errno;
	if (d->pid == 0) {
		int fd = open(d->log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
		if (fd >= 0) {
			dup2(fd, STDOUT_FILENO);
			dup2(fd, STDERR_FILENO);
		}
		execl(bin, bin, "--config", "/dev/null", "--socket", d->sock, "--state-dir", state,
		      "--model", model, "--log-level", "notice", "--max-connections", "1024",
		      (char *)NULL);
		_exit(127);
	}
	for (int i = 0; i < 6000; i++) {
		struct dp_client *c;
		if (dp_client_connect(d->sock, 1000, &c) == 0) {
			dp_client_free(c);
			return 0;
		}
		if (waitpid(d->pid, NULL, WNOHANG) == d->pid) {
			d->pid = 0;
			fprintf(stderr, "bench-socket: %s exited before serving; its log is %s\n",
			        bin, d->log);
			return -ECHILD;
		}
		usleep(10000);
	}
	fprintf(stderr, "bench-socket: %s did not serve within 60 s (log: %s)\n", bin, d->log);
	return -ETIMEDOUT;
}

/* ---- main ------------------------------------------------------------------------ */

static const char usage[] =
    "usage: bench-socket (--daemon DUALPATHD --model DIR | --socket PATH)\n"
    "                    [--clients 1,8,64] [--requests N] [--warmup N] [--client raw|lib|loop]\n";

int main(int argc, char **argv)
{
	static const struct option lo[] = {
	    {"daemon", required_argument, NULL, 'd'},
	    {"model", required_argument, NULL, 'm'},
	    {"socket", required_argument, NULL, 's'},
	    {"clients", required_argument, NULL, 'c'},
	    {"requests", required_argument, NULL, 'n'},
	    {"warmup", required_argument, NULL, 'w'},
	    {"client", required_argument, NULL, 'k'},
	    {"help", no_argument, NULL, 'h'},
	    {0},
	};
	struct opts o = {.clients = {1, 8, 64}, .n_runs = 3, .requests = 100000, .warmup = 200};
	struct daemon d = {0};
	int opt, ret = 0;

	while ((opt = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
		switch (opt) {
		case 'd':
			o.daemon = optarg;
			break;
		case 'm':
			o.model = optarg;
			break;
		case 's':
			o.socket = optarg;
			break;
		case 'n':
			o.requests = strtoul(optarg, NULL, 10);
			break;
		case 'w':
			o.warmup = strtoul(optarg, NULL, 10);
			break;
		case 'k':
			if (!strcmp(optarg, "raw")) {
				o.client = CLIENT_RAW;
			} else if (!strcmp(optarg, "lib")) {
				o.client = CLIENT_LIB;
			} else if (!strcmp(optarg, "loop")) {
				o.client = CLIENT_LOOP;
			} else {
				fprintf(stderr, "bench-socket: --client raw, lib or loop\n");
				return 2;
			}
			break;
		case 'c': {
			o.n_runs = 0;
			for (char *p = optarg; *p && o.n_runs < MAX_RUNS;) {
				unsigned long v = strtoul(p, &p, 10);
				if (v < 1 || v > 4096) {
					fprintf(stderr,
					        "bench-socket: --clients: counts in 1..4096\n");
					return 2;
				}
				o.clients[o.n_runs++] = (unsigned)v;
				if (*p == ',')
					p++;
			}
			break;
		}
		case 'h':
			fputs(usage, stdout);
			return 0;
		default:
			fputs(usage, stderr);
			return 2;
		}
	}
	if (!o.socket == !o.daemon || (o.daemon && !o.model) || o.requests == 0 || o.n_runs == 0) {
		fputs(usage, stderr);
		return 2;
	}
	signal(SIGPIPE, SIG_IGN);
	const char *sock = o.socket;
	if (o.daemon) {
		if ((ret = daemon_start(&d, o.daemon, o.model)) < 0)
			goto out;
		sock = d.sock;
	}
	for (int i = 0; i < o.n_runs && ret == 0; i++)
		ret = run(&o, sock, o.clients[i]);
out:
	daemon_stop(&d);
	return ret < 0 ? 1 : 0;
}
