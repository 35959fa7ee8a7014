/* SPDX-License-Identifier: MIT */
/*
 * The front thread: one epoll loop over the listening socket, the client
 * connections and the eventfd of the ring of events from compute
 * (front-internal.h lists the files of its parts).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "daemon/front-internal.h"
#include "daemon/log.h"

void *dp_front_main(void *arg)
{
	struct dp_server *srv = arg;
	struct front f = { .srv = srv };
	struct epoll_event evs[64];

	f.conns = calloc(srv->cfg.max_connections, sizeof(*f.conns));
	f.ep = epoll_create1(EPOLL_CLOEXEC);
	if (!f.conns || f.ep < 0) {
		log_err("front thread: cannot start (%s)", strerror(errno));
		free(f.conns);
		if (f.ep >= 0)
			close(f.ep);
		atomic_store(&srv->fatal, -ENOMEM); /* main drains and exits 1 */
		return NULL;
	}
	dp_proto_limits_init(&f.lim);
	f.lim.vocab_size = srv->vocab;
	f.lim.max_prompt_tokens = srv->cfg.max_prompt_tokens;
	f.lim.max_new_tokens = srv->cfg.max_new_tokens;
	f.lim.max_text_bytes = srv->cfg.max_frame_bytes;
	f.lim.max_stop_ids = DP_STOP_IDS_MAX;
	struct epoll_event ev = { .events = EPOLLIN, .data.u64 = TAG_LISTEN };
	epoll_ctl(f.ep, EPOLL_CTL_ADD, srv->listen_fd, &ev);
	ev.data.u64 = TAG_EVENTS;
	epoll_ctl(f.ep, EPOLL_CTL_ADD, dp_waiter_fd(&srv->front_wake), &ev);

	bool listening = true;
	while (!atomic_load(&srv->stop)) {
		/* stop taking connections once the daemon stops */
		if (listening && atomic_load(&srv->state) == DP_STATE_STOPPING) {
			epoll_ctl(f.ep, EPOLL_CTL_DEL, srv->listen_fd, NULL);
			listening = false;
		}
		dp_waiter_prepare(&srv->front_wake);
		int timeout = !dp_spsc_empty(srv->to_front) ? 0 : f.n_closes || f.accept_paused ? 10 : 100;
		int n = epoll_wait(f.ep, evs, 64, timeout);
		dp_waiter_consume(&srv->front_wake);
		front_drain_events(&f);
		front_send_closes(&f);
		uint64_t now = dp_clock_ns();
		front_resume_accept(&f, now);
		front_sweep(&f, now);
		for (int i = 0; i < n; i++) {
			uint64_t tag = evs[i].data.u64 & 0xff;
			uint32_t slot = (uint32_t)(evs[i].data.u64 >> 8);
			if (tag == TAG_LISTEN) {
				if (!f.accept_paused)
					front_on_accept(&f);
			} else if (tag == TAG_CONN && f.conns[slot].open) {
				if (evs[i].events & EPOLLIN)
					front_on_readable(&f, slot);
				if (f.conns[slot].open && (evs[i].events & EPOLLOUT))
					front_conn_flush(&f, slot);
				if (f.conns[slot].open && (evs[i].events & (EPOLLHUP | EPOLLERR)))
					front_conn_close(&f, slot);
				else if (f.conns[slot].open && !f.conns[slot].rd_eof &&
					 (evs[i].events & EPOLLRDHUP) && !(evs[i].events & EPOLLIN))
					front_on_readable(&f, slot); /* reads the end of file */
			}
		}
		front_drain_events(&f);
	}
	/* last words: what compute sent before stopping, then close */
	front_drain_events(&f);
	for (uint32_t i = 0; i < srv->cfg.max_connections; i++)
		if (f.conns[i].open) {
			front_conn_flush(&f, i);
			if (f.conns[i].open) {
				epoll_ctl(f.ep, EPOLL_CTL_DEL, f.conns[i].fd, NULL);
				close(f.conns[i].fd);
				dp_frame_reader_free(f.conns[i].rd);
				dp_frame_buf_fini(&f.conns[i].out);
				free(f.conns[i].reqs);
			}
		}
	for (uint32_t i = 0; i < f.n_closes; i++)
		free(f.closes[i]);
	free(f.closes);
	close(f.ep);
	free(f.conns);
	free(f.textbuf);
	return NULL;
}
