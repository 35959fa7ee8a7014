/* SPDX-License-Identifier: MIT */
/*
 * v4ctl — talk to dualpathd over its Unix socket.
 *
 * SYNOPSIS
 *	v4ctl [--socket PATH] [--timeout MS] COMMAND [OPTIONS] [ARGS]
 *	v4ctl --help | --version
 *
 * COMMANDS
 *	chat [--session ID] [--no-thinking] [--effort high|max] [--system TEXT]
 *		[--persist | --keep]
 *		an interactive chat over a session: each stdin line a user turn,
 *		reasoning shown apart from the answer (v4ctl/chat.c)
 *	generate [--session ID] [--max-tokens N | -n N] [--temperature T] [--top-k K]
 *	         [--top-p P] [--seed S] [--stop ID,...] [--ids] [--verbose]
 *	         [--tokens 1,2,3 | TEXT... | -]
 *		Append a prompt (text from the arguments, from stdin with '-',
 *		or token ids) to a session (or a one-off context without
 *		--session) and stream the generated text to stdout as it
 *		arrives. --ids prints token ids instead; --verbose prints a
 *		usage line (prompt/cached/generated tokens, time to first
 *		token, total time) to stderr at the end. Ctrl-C cancels the
 *		request and waits for its last chunk; a second Ctrl-C quits.
 *	stats [--json | --prometheus]
 *		The daemon's metrics: an aligned table, JSON, or the
 *		Prometheus text exposition format (for a textfile collector
 *		or a scrape shim).
 *	sessions [--json]
 *		Sessions: id, context tokens, tier, state size, idle time,
 *		owner uid; with a shared tier, the host holding each one's lease.
 *	cluster [--session ID]... [--json]
 *		The hosts on the shared tier: host id, address, heartbeat age,
 *		live or not; the leases this daemon holds (admin); per --session,
 *		its owner (admin) and its rendezvous host.
 *	health [--json]
 *		One line; exit 0 when SERVING, 5 otherwise (for scripts and
 *		probes).
 *	drain [--grace-ms N]                   (admin)
 *		Refuse new Generate requests; running ones get N ms (0: the
 *		daemon's drain_grace_ms) before they are cancelled.
 *	evict ID [--drop] [--release]          (admin)
 *		Move a session's state to the NVMe tier, or delete it; with
 *		--release also release its lease (a hand-off to another host).
 *	close ID [--drop]
 *		End a session: persist it to disk (default) or delete it.
 *	shutdown                               (admin)
 *		Drain, persist every session, exit (as SIGTERM does).
 *	trace --out FILE [--max N]             (admin)
 *		Write the recent per-step timings as Chrome trace-event JSON
 *		(open in https://ui.perfetto.dev or chrome://tracing): lanes
 *		"compute" and "io". FILE '-' is stdout.
 *
 * GLOBAL OPTIONS (before or after the command)
 *	--socket PATH	the daemon's socket; default $DUALPATH_SOCKET, else
 *			/run/dualpath/dualpathd.sock
 *	--timeout MS	longest wait for one reply (default 30000; 0: no
 *			limit); generate waits without limit unless given
 *
 * EXIT STATUS
 *	0	success
 *	1	the daemon answered with an Error ("v4ctl: CODE: message")
 *	2	usage error
 *	3	cannot connect to the socket (is dualpathd running? permissions?)
 *	4	protocol, timeout or I/O error
 *	5	health: the daemon is up but not SERVING
 *	130	generate: cancelled with Ctrl-C
 *
 * Admin commands need root or the daemon's admin group (dualpath-admin by
 * default); everyone with access to the socket (group dualpath) may use
 * the others.
 */
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dp-config.h"
#include "base/macros.h"
#include "v4ctl/v4ctl.h"

static const char usage[] =
    "usage: v4ctl [--socket PATH] [--timeout MS] COMMAND [OPTIONS] [ARGS]\n"
    "\n"
    "Talk to dualpathd over its Unix socket.\n"
    "\n"
    "Commands:\n"
    "  generate [OPTIONS] [TEXT...|-]  stream generated text (see 'v4ctl generate --help')\n"
    "  chat [OPTIONS]  multi-turn chat over a session, turns from stdin (see 'v4ctl chat --help')\n"
    "  stats [--json|--prometheus]     metrics: table, JSON or Prometheus text format\n"
    "  sessions [--json]               list sessions\n"
    "  health [--json]                 one line; exit 0 when SERVING, 5 otherwise\n"
    "  drain [--grace-ms N]            stop admitting requests (admin)\n"
    "  evict ID [--drop] [--release]   move a session to NVMe, or delete it; --release\n"
    "                                  hands it off to any host (shared tier) (admin)\n"
    "  close ID [--drop]               end a session: persist it (default) or delete it\n"
    "  shutdown                        drain, persist sessions, exit (admin)\n"
    "  trace --out FILE [--max N]      Chrome/Perfetto trace of recent steps (admin)\n"
    "  cluster [--session ID]... [--json]  shared-tier members, leases held, where\n"
    "                                  sessions are (owner, rendezvous host)\n"
    "\n"
    "Global options (before or after the command):\n"
    "  --socket PATH   daemon socket (default $" DP_CLIENT_SOCKET_ENV ", else\n"
    "                  " DP_CLIENT_SOCKET_DEFAULT ")\n"
    "  --timeout MS    longest wait for one reply (default 30000; 0: no limit;\n"
    "                  generate waits without limit unless given)\n"
    "  --help          this text ('v4ctl COMMAND --help' for a command's)\n"
    "  --version       print the version\n"
    "\n"
    "Exit status:\n"
    "  0    success\n"
    "  1    the daemon answered with an Error (printed as 'v4ctl: CODE: message')\n"
    "  2    usage error\n"
    "  3    cannot connect to the socket (is dualpathd running? socket permissions?)\n"
    "  4    protocol, timeout or I/O error\n"
    "  5    health: the daemon is up but not SERVING\n"
    "  130  generate: cancelled with Ctrl-C\n"
    "\n"
    "Admin commands need root or the daemon's admin group (default dualpath-admin).\n";

static const struct {
	const char *name;
	int (*run)(struct dp_v4ctl *ctl, int argc, char **argv);
} commands[] = {
    {"generate", dp_v4ctl_generate}, {"chat", dp_v4ctl_chat},
    {"stats", dp_v4ctl_stats},
    {"sessions", dp_v4ctl_sessions}, {"health", dp_v4ctl_health},
    {"drain", dp_v4ctl_drain},       {"evict", dp_v4ctl_evict},
    {"close", dp_v4ctl_close},       {"shutdown", dp_v4ctl_shutdown},
    {"trace", dp_v4ctl_trace},       {"cluster", dp_v4ctl_cluster},
};

int main(int argc, char **argv)
{
	static const struct option opts[] = {
	    DP_V4CTL_COMMON_OPTS,
	    {"version", no_argument, NULL, 'V'},
	    {0},
	};
	struct dp_v4ctl ctl = {
	    .socket = dp_client_default_socket(),
	    .timeout_ms = DP_CLIENT_TIMEOUT_DEFAULT,
	};
	int opt;

	/* a closed stdout is an error we report, not a signal that kills */
	signal(SIGPIPE, SIG_IGN);
	opterr = 0;
	/* '+': stop at the command; its own parser takes the rest */
	while ((opt = getopt_long(argc, argv, "+" DP_V4CTL_COMMON_SHORT, opts, NULL)) != -1) {
		int r = dp_v4ctl_common_opt(&ctl, opt, optarg, usage);
		if (r < 0)
			return DP_V4CTL_EXIT_USAGE;
		if (r > 0)
			continue;
		if (opt == 'V') {
			printf("v4ctl %s (protocol dualpath.v%u)\n", DP_VERSION, DP_PROTO_VERSION);
			return DP_V4CTL_EXIT_OK;
		}
		if (optopt)
			return dp_v4ctl_usage_error(NULL, "unknown option '-%c'", optopt);
		return dp_v4ctl_usage_error(NULL, "unknown option or missing value: '%s'",
		                            argv[optind - 1]);
	}
	if (optind >= argc)
		return dp_v4ctl_usage_error(NULL, "no command given");
	const char *name = argv[optind];
	for (size_t i = 0; i < DP_ARRAY_SIZE(commands); i++) {
		if (strcmp(name, commands[i].name))
			continue;
		/* the command parses argv[optind..] with a fresh getopt */
		int sub_argc = argc - optind;
		char **sub_argv = argv + optind;
		optind = 0; /* 0: glibc reinitializes its scanner */
		return commands[i].run(&ctl, sub_argc, sub_argv);
	}
	return dp_v4ctl_usage_error(NULL, "unknown command '%s'", name);
}
