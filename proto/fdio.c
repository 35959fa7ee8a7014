/* SPDX-License-Identifier: MIT */
/*
 * proto/fdio.c — blocking one-frame reads and writes with a deadline.
 *
 * Every transfer waits in poll(2) first, then moves what the fd accepts
 * without blocking: sockets with MSG_DONTWAIT, other fds (pipes) with plain
 * read/write, which poll's answer keeps from blocking (a pipe that polls
 * writable takes PIPE_BUF bytes at once). So a blocking fd cannot stall a
 * call past its deadline.
 */
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "base/clock.h"
#include "proto/frame.h"

/* Frames up to this size are encoded on the stack by dp_frame_write_fd. */
#define DP_FRAME_STACK_BYTES 1024u

/* Wait for `events` on fd until deadline (< 0: none). Returns 0 when the fd
 * is ready (or in error/hang-up: the next transfer reports it), -ETIMEDOUT,
 * or -errno. */
static int wait_fd(int fd, short events, int64_t deadline)
{
	for (;;) {
		struct pollfd p = {.fd = fd, .events = events};
		int64_t left = -1;
		int n;

		if (deadline >= 0) {
			left = deadline - (int64_t)dp_clock_ms();
			if (left < 0)
				left = 0;
			if (left > INT_MAX)
				left = INT_MAX;
		}
		n = poll(&p, 1, (int)left);
		if (n > 0) {
			if (p.revents & POLLNVAL)
				return -EBADF;
			return 0;
		}
		if (n == 0)
			return -ETIMEDOUT;
		if (errno != EINTR)
			return -errno;
	}
}

static int64_t deadline_of(int timeout_ms)
{
	return timeout_ms < 0 ? -1 : (int64_t)dp_clock_ms() + timeout_ms;
}

/* One non-blocking read after poll: > 0 bytes, 0 at EOF, or -errno. */
static ssize_t read_some(int fd, void *buf, size_t len)
{
	ssize_t n = recv(fd, buf, len, MSG_DONTWAIT);

	if (n < 0 && errno == ENOTSOCK)
		n = read(fd, buf, len);
	return n < 0 ? -errno : n;
}

static ssize_t write_some(int fd, const void *buf, size_t len)
{
	ssize_t n = send(fd, buf, len, MSG_DONTWAIT | MSG_NOSIGNAL);

	if (n < 0 && errno == ENOTSOCK)
		n = write(fd, buf, len < PIPE_BUF ? len : PIPE_BUF);
	return n < 0 ? -errno : n;
}

int dp_frame_write_all(int fd, const void *buf, size_t len, int timeout_ms)
{
	int64_t deadline = deadline_of(timeout_ms);
	const uint8_t *p = buf;
	ssize_t n;
	int ret;

	if (fd < 0 || (!buf && len > 0))
		return -EINVAL;
	while (len > 0) {
		ret = wait_fd(fd, POLLOUT, deadline);
		if (ret < 0)
			return ret;
		n = write_some(fd, p, len);
		if (n == -EINTR || n == -EAGAIN)
			continue;
		if (n < 0)
			return (int)n;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

int dp_frame_write_fd(int fd, const ProtobufCMessage *msg, uint32_t max_frame, int timeout_ms)
{
	uint8_t stack[DP_FRAME_STACK_BYTES];
	size_t size, len;
	uint8_t *buf = stack;
	int ret;

	if (fd < 0 || !msg)
		return -EINVAL;
	size = dp_frame_size(msg);
	if (size > sizeof(stack) && size <= (size_t)max_frame + DP_FRAME_HEADER) {
		buf = malloc(size);
		if (!buf)
			return -ENOMEM;
	}
	ret = dp_frame_encode(msg, max_frame, buf, buf == stack ? sizeof(stack) : size, &len);
	if (ret == 0)
		ret = dp_frame_write_all(fd, buf, len, timeout_ms);
	if (buf != stack)
		free(buf);
	return ret;
}

/* Read exactly len bytes into buf. Returns len, or the count read before
 * EOF (< len), or -ETIMEDOUT / -errno. */
static ssize_t read_exact(int fd, uint8_t *buf, size_t len, int64_t deadline)
{
	size_t done = 0;
	ssize_t n;
	int ret;

	while (done < len) {
		ret = wait_fd(fd, POLLIN, deadline);
		if (ret < 0)
			return ret;
		n = read_some(fd, buf + done, len - done);
		if (n == -EINTR || n == -EAGAIN)
			continue;
		if (n < 0)
			return n;
		if (n == 0)
			break;
		done += (size_t)n;
	}
	return (ssize_t)done;
}

int dp_frame_read_fd(int fd, struct dp_frame_buf *b, uint32_t max_frame, int timeout_ms)
{
	int64_t deadline = deadline_of(timeout_ms);
	uint8_t hdr[DP_FRAME_HEADER];
	uint32_t len;
	ssize_t n;
	uint8_t *p;

	if (fd < 0 || !b || max_frame == 0 || max_frame > DP_FRAME_MAX_LIMIT)
		return -EINVAL;
	b->len = 0;
	n = read_exact(fd, hdr, sizeof(hdr), deadline);
	if (n < 0)
		return (int)n;
	if (n == 0)
		return 0;
	if (n < (ssize_t)sizeof(hdr))
		return -ECONNRESET;
	len = (uint32_t)hdr[0] | (uint32_t)hdr[1] << 8 | (uint32_t)hdr[2] << 16 |
	      (uint32_t)hdr[3] << 24;
	if (len == 0)
		return -EPROTO;
	if (len > max_frame)
		return -EMSGSIZE;
	if (b->cap < len) {
		p = realloc(b->data, len);
		if (!p)
			return -ENOMEM;
		b->data = p;
		b->cap = len;
	}
	n = read_exact(fd, b->data, len, deadline);
	if (n < 0)
		return (int)n;
	if (n < (ssize_t)len)
		return -ECONNRESET;
	b->len = len;
	return (int)len;
}
