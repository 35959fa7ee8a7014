/* SPDX-License-Identifier: MIT */
/*
 * v4ctl generate — stream a generation to stdout.
 *
 * The socket and a signalfd (SIGINT, SIGTERM) are polled together: the
 * first signal sends Cancel for the request and keeps printing until the
 * final chunk (FINISH_CANCELLED) arrives; a second one quits at once (the
 * daemon cancels a closed connection's requests itself).
 */
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <time.h>
#include <unistd.h>

#include "v4ctl/v4ctl.h"

static const char usage[] =
    "usage: v4ctl generate [OPTIONS] [--tokens 1,2,3 | TEXT... | -]\n"
    "\n"
    "Append a prompt to a session (or a one-off context) and stream the\n"
    "generated text to stdout. The prompt is TEXT (the arguments joined by\n"
    "spaces), stdin with '-', or token ids with --tokens.\n"
    "\n"
    "Options:\n"
    "  --session ID        continue or create session ID ([A-Za-z0-9._-], up to 128);\n"
    "                      without it the context is dropped at the end\n"
    "  --max-tokens N, -n N\n"
    "                      generate at most N tokens (default 128; 0: only ingest)\n"
    DP_V4CTL_SAMPLING_USAGE
    "  --stop ID,...       stop after generating one of these ids (at most 16)\n"
    "  --tokens ID,...     the prompt as token ids\n"
    "  --ids               print generated token ids instead of text\n"
    "  --verbose, -v       print a usage line to stderr at the end\n"
    "  --socket PATH, --timeout MS   as for every command (generate waits\n"
    "                      without limit for each chunk unless --timeout is given)\n"
    "\n"
    "Ctrl-C cancels the request (the daemon stops after the current step) and\n"
    "exits 130 once its last chunk has arrived; Ctrl-C again quits at once.\n";

enum {
	OPT_SESSION = DP_V4CTL_OPT_FIRST_COMMAND,
	OPT_STOP,
	OPT_TOKENS,
	OPT_IDS,
};

#define STOP_IDS_MAX       16u
#define MAX_TOKENS_DEFAULT 128u

struct gen {
	const char *session;
	uint64_t max_tokens;
	struct dp_v4ctl_sampling smp;
	uint32_t *stop, *tokens;
	size_t n_stop, n_tokens;
	bool ids, verbose;
	char *text;
};

/* Strict UTF-8 (no overlongs, surrogates or code points past U+10FFFF),
 * as the daemon checks every protobuf string. */
static bool valid_utf8(const unsigned char *s, size_t len)
{
	for (size_t i = 0; i < len;) {
		unsigned char c = s[i];
		size_t n;
		uint32_t cp;
		if (c < 0x80) {
			i++;
			continue;
		} else if (c >= 0xc2 && c <= 0xdf) {
			n = 1, cp = c & 0x1f;
		} else if (c >= 0xe0 && c <= 0xef) {
			n = 2, cp = c & 0x0f;
		} else if (c >= 0xf0 && c <= 0xf4) {
			n = 3, cp = c & 0x07;
		} else {
			return false;
		}
		if (n >= len - i)
			return false; /* cut short */
		for (size_t k = 1; k <= n; k++) {
			if ((s[i + k] & 0xc0) != 0x80)
				return false;
			cp = (cp << 6) | (s[i + k] & 0x3f);
		}
		if ((n == 2 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) ||
		    (n == 3 && (cp < 0x10000 || cp > 0x10ffff)))
			return false;
		i += n + 1;
	}
	return true;
}

static char *read_all(FILE *f, size_t *ret_len)
{
	size_t len = 0, cap = 4096;
	char *buf = malloc(cap);
	while (buf) {
		size_t n = fread(buf + len, 1, cap - len - 1, f);
		len += n;
		if (n == 0)
			break;
		if (cap - len - 1 == 0) {
			char *t = realloc(buf, 2 * cap);
			if (!t) {
				free(buf);
				return NULL;
			}
			buf = t;
			cap *= 2;
		}
	}
	if (buf)
		buf[len] = '\0';
	if (buf && ferror(f)) {
		free(buf);
		return NULL;
	}
	*ret_len = len;
	return buf;
}

static int parse(struct dp_v4ctl *ctl, struct gen *g, int argc, char **argv)
{
	static const struct option opts[] = {
	    DP_V4CTL_COMMON_OPTS,
	    {"session", required_argument, NULL, OPT_SESSION},
	    {"max-tokens", required_argument, NULL, 'n'},
	    DP_V4CTL_SAMPLING_OPTS,
	    {"stop", required_argument, NULL, OPT_STOP},
	    {"tokens", required_argument, NULL, OPT_TOKENS},
	    {"ids", no_argument, NULL, OPT_IDS},
	    {"verbose", no_argument, NULL, 'v'},
	    {0},
	};
	int opt;

	g->max_tokens = MAX_TOKENS_DEFAULT;
	opterr = 0;
	while ((opt = getopt_long(argc, argv, DP_V4CTL_COMMON_SHORT "n:v", opts, NULL)) != -1) {
		int r = dp_v4ctl_common_opt(ctl, opt, optarg, usage);
		if (r < 0)
			return -1;
		if (r > 0 || (r = dp_v4ctl_sampling_opt(&g->smp, opt, optarg)) > 0)
			continue;
		if (r < 0)
			return -1;
		switch (opt) {
		case OPT_SESSION:
			if (dp_proto_session_id_check(optarg) < 0) {
				fprintf(
				    stderr,
				    "v4ctl: --session: '%s' is not a session id (1..%u bytes of "
				    "[A-Za-z0-9._-], not '.' or '..')\n",
				    optarg, DP_PROTO_SESSION_ID_MAX);
				return -1;
			}
			g->session = optarg;
			break;
		case 'n': /* -n as dp-generate takes it */
			if (dp_v4ctl_parse_u64("--max-tokens (-n)", optarg, 0, UINT32_MAX,
			                       &g->max_tokens) < 0)
				return -1;
			break;
		case OPT_STOP:
			free(g->stop);
			g->stop = NULL;
			if (dp_v4ctl_parse_ids("--stop", optarg, STOP_IDS_MAX, &g->stop,
			                       &g->n_stop) < 0)
				return -1;
			g->smp.any = true;
			break;
		case OPT_TOKENS:
			free(g->tokens);
			g->tokens = NULL;
			if (dp_v4ctl_parse_ids("--tokens", optarg, UINT32_MAX, &g->tokens,
			                       &g->n_tokens) < 0)
				return -1;
			break;
		case OPT_IDS:
			g->ids = true;
			break;
		case 'v':
			g->verbose = true;
			break;
		default:
			dp_v4ctl_usage_error("generate", "unknown option or missing value: '%s'",
			                     argv[optind - 1]);
			return -1;
		}
	}
	if (g->tokens && optind < argc) {
		dp_v4ctl_usage_error("generate",
		                     "give the prompt as --tokens or as TEXT, not both");
		return -1;
	}
	if (!g->tokens && optind >= argc) {
		dp_v4ctl_usage_error("generate",
		                     "no prompt: give TEXT, '-' for stdin, or --tokens ID,...");
		return -1;
	}
	if (g->tokens)
		return 0;
	if (optind == argc - 1 && !strcmp(argv[optind], "-")) {
		size_t len = 0;
		g->text = read_all(stdin, &len);
		if (!g->text) {
			fprintf(stderr, "v4ctl: cannot read the prompt from stdin: %s\n",
			        strerror(errno));
			return -1;
		}
		if (strlen(g->text) != len) {
			dp_v4ctl_usage_error("generate",
			                     "the prompt on stdin holds a NUL byte; a text "
			                     "prompt is UTF-8 text (give token ids with --tokens)");
			return -1;
		}
	} else {
		size_t len = 1;
		for (int i = optind; i < argc; i++)
			len += strlen(argv[i]) + 1;
		g->text = malloc(len);
		if (!g->text)
			return -1;
		g->text[0] = '\0';
		for (int i = optind; i < argc; i++) {
			if (i > optind)
				strcat(g->text, " ");
			strcat(g->text, argv[i]);
		}
	}
	if (!g->text[0]) {
		dp_v4ctl_usage_error("generate", "the prompt is empty");
		return -1;
	}
	if (!valid_utf8((const unsigned char *)g->text, strlen(g->text))) {
		dp_v4ctl_usage_error("generate",
		                     "the prompt is not valid UTF-8, which the protocol "
		                     "requires of text (give token ids with --tokens)");
		return -1;
	}
	return 0;
}

static void print_usage_line(const Dualpath__V1__TokenChunk *tc)
{
	static const char *const finish[] = {"none", "length", "stop", "eos", "cancelled", "error"};
	const Dualpath__V1__Usage *u = tc->usage;
	uint32_t f = (uint32_t)tc->finish;
	if (!u) {
		fprintf(stderr, "v4ctl: finished (%s); no usage reported\n",
		        f < 6 ? finish[f] : "?");
		return;
	}
	double gen_s = u->total_time_us > u->time_to_first_token_us
	                   ? (double)(u->total_time_us - u->time_to_first_token_us) / 1e6
	                   : 0;
	fprintf(stderr,
	        "v4ctl: prompt %u tokens (%u cached), generated %u tokens, finish %s, "
	        "TTFT %.1f ms, total %.1f ms",
	        u->prompt_tokens, u->cached_tokens, u->generated_tokens, f < 6 ? finish[f] : "?",
	        (double)u->time_to_first_token_us / 1000, (double)u->total_time_us / 1000);
	if (u->generated_tokens > 1 && gen_s > 0)
		fprintf(stderr, ", %.1f tokens/s after the first",
		        (u->generated_tokens - 1) / gen_s);
	fprintf(stderr, ", position %" PRIu64 "\n", tc->position);
}

/* Send Cancel for target; its Ack is read and ignored with the chunks. */
static int send_cancel(struct dp_client *c, uint64_t target)
{
	Dualpath__V1__Request req = DUALPATH__V1__REQUEST__INIT;
	Dualpath__V1__Cancel x = DUALPATH__V1__CANCEL__INIT;
	x.target_request_id = target;
	req.body_case = DUALPATH__V1__REQUEST__BODY_CANCEL;
	req.cancel = &x;
	return dp_client_send(c, &req);
}

static int stream(struct dp_v4ctl *ctl, struct dp_client *c, struct gen *g, uint64_t id, int sfd)
{
	bool cancelling = false, need_space = false, newline = true;
	int timeout = ctl->timeout_set ? ctl->timeout_ms : -1;

	for (;;) {
		if (!dp_client_has_pending(c)) {
			struct pollfd p[2] = {{.fd = dp_client_fd(c), .events = POLLIN},
			                      {.fd = sfd, .events = POLLIN}};
			int n = poll(p, sfd >= 0 ? 2 : 1, timeout);
			if (n < 0 && errno == EINTR)
				continue;
			if (n == 0)
				return dp_v4ctl_print_io_error(ctl, c, -ETIMEDOUT,
				                               "waiting for tokens");
			if (sfd >= 0 && (p[1].revents & POLLIN)) {
				struct signalfd_siginfo si;
				(void)!read(sfd, &si, sizeof(si));
				if (cancelling) {
					fprintf(stderr, "\nv4ctl: quit without waiting\n");
					return DP_V4CTL_EXIT_INTERRUPTED;
				}
				cancelling = true;
				fprintf(stderr,
				        "\nv4ctl: cancelling (Ctrl-C again to quit at once)\n");
				int ret = send_cancel(c, id);
				if (ret < 0)
					return dp_v4ctl_print_io_error(ctl, c, ret,
					                               "sending Cancel");
				continue;
			}
			if (!(p[0].revents & (POLLIN | POLLHUP | POLLERR)))
				continue;
		}
		Dualpath__V1__Response *r;
		int ret = dp_client_recv(c, 0, &r);
		if (ret == -ETIMEDOUT)
			continue;
		if (ret < 0)
			return dp_v4ctl_print_io_error(ctl, c, ret, "waiting for tokens");
		if (r->request_id != id && r->request_id != 0) {
			dp_proto_response_free(r); /* the Cancel's Ack */
			continue;
		}
		if (r->body_case == DUALPATH__V1__RESPONSE__BODY_ERROR) {
			/* an Error ends the request: nothing follows it */
			if (!newline)
				fputc('\n', stdout);
			fflush(stdout);
			ret = dp_v4ctl_print_error(r->error, "generate");
			dp_proto_response_free(r);
			return ret;
		}
		if (r->body_case != DUALPATH__V1__RESPONSE__BODY_TOKEN_CHUNK) {
			fprintf(stderr,
			        "v4ctl: protocol error: unexpected reply to generate (body %d)\n",
			        (int)r->body_case);
			dp_proto_response_free(r);
			return DP_V4CTL_EXIT_PROTOCOL;
		}
		const Dualpath__V1__TokenChunk *tc = r->token_chunk;
		if (g->ids) {
			for (size_t i = 0; i < tc->n_ids; i++) {
				printf("%s%u", need_space ? " " : "", tc->ids[i]);
				need_space = true;
				newline = false;
			}
		} else if (tc->text.len) {
			fwrite(tc->text.data, 1, tc->text.len, stdout);
			newline = tc->text.data[tc->text.len - 1] == '\n';
		}
		if (fflush(stdout) != 0 || ferror(stdout)) {
			int e = errno;
			dp_proto_response_free(r);
			if (e != EPIPE)
				fprintf(stderr, "v4ctl: cannot write to stdout: %s\n", strerror(e));
			/* closing the connection cancels the request */
			return DP_V4CTL_EXIT_PROTOCOL;
		}
		if (tc->finish == DUALPATH__V1__FINISH_REASON__FINISH_NONE) {
			dp_proto_response_free(r);
			continue;
		}
		/* the final chunk */
		bool added = !newline && (g->ids || isatty(STDOUT_FILENO));
		if (added)
			fputc('\n', stdout);
		fflush(stdout);
		if (g->verbose) {
			/* piped text stays byte-exact; the usage line starts a line
			 * of its own on stderr */
			if (!newline && !added)
				fputc('\n', stderr);
			print_usage_line(tc);
		}
		Dualpath__V1__FinishReason fin = tc->finish;
		dp_proto_response_free(r);
		if (fin == DUALPATH__V1__FINISH_REASON__FINISH_CANCELLED) {
			if (cancelling)
				return DP_V4CTL_EXIT_INTERRUPTED;
			fprintf(stderr, "v4ctl: the daemon cancelled the request (draining or "
			                "shutting down?)\n");
			return DP_V4CTL_EXIT_DAEMON_ERROR;
		}
		if (fin == DUALPATH__V1__FINISH_REASON__FINISH_ERROR) {
			fprintf(stderr, "v4ctl: the request failed\n");
			return DP_V4CTL_EXIT_DAEMON_ERROR;
		}
		return DP_V4CTL_EXIT_OK;
	}
}

int dp_v4ctl_generate(struct dp_v4ctl *ctl, int argc, char **argv)
{
	struct gen g = {0};
	struct dp_client *c = NULL;
	int sfd = -1, ret;

	if (parse(ctl, &g, argc, argv) < 0) {
		ret = DP_V4CTL_EXIT_USAGE;
		goto out;
	}
	/* the signals go to the signalfd from before the request exists, so
	 * an early Ctrl-C still cancels it */
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	sigprocmask(SIG_BLOCK, &set, NULL);
	sfd = signalfd(-1, &set, SFD_CLOEXEC);
	if ((ret = dp_v4ctl_open(ctl, &c)) != DP_V4CTL_EXIT_OK)
		goto out;

	Dualpath__V1__Request req = DUALPATH__V1__REQUEST__INIT;
	Dualpath__V1__Generate gen = DUALPATH__V1__GENERATE__INIT;
	Dualpath__V1__Sampling smp = DUALPATH__V1__SAMPLING__INIT;
	Dualpath__V1__TokenIds tids = DUALPATH__V1__TOKEN_IDS__INIT;
	gen.session_id = (char *)(g.session ? g.session : "");
	if (g.tokens) {
		tids.n_ids = g.n_tokens;
		tids.ids = g.tokens;
		gen.prompt_case = DUALPATH__V1__GENERATE__PROMPT_TOKENS;
		gen.tokens = &tids;
	} else {
		gen.prompt_case = DUALPATH__V1__GENERATE__PROMPT_TEXT;
		gen.text = g.text;
	}
	gen.max_new_tokens = (uint32_t)g.max_tokens;
	gen.return_text = !g.ids;
	if ((gen.sampling = dp_v4ctl_sampling_fill(&g.smp, &smp))) {
		smp.n_stop_ids = g.n_stop;
		smp.stop_ids = g.stop;
	}
	req.body_case = DUALPATH__V1__REQUEST__BODY_GENERATE;
	req.generate = &gen;
	ret = dp_client_send(c, &req);
	if (ret == -EMSGSIZE) {
		fprintf(stderr,
		        "v4ctl: the prompt does not fit the daemon's max_frame_bytes (%u)\n",
		        dp_client_server(c)->max_frame_bytes);
		ret = DP_V4CTL_EXIT_USAGE;
		goto out;
	}
	if (ret < 0) {
		ret = dp_v4ctl_print_io_error(ctl, c, ret, "sending the request");
		goto out;
	}
	ret = stream(ctl, c, &g, req.request_id, sfd);
out:
	dp_client_free(c);
	if (sfd >= 0)
		close(sfd);
	free(g.stop);
	free(g.tokens);
	free(g.text);
	return ret;
}
