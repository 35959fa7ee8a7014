/* SPDX-License-Identifier: MIT */
/*
 * A slower disk for the NVMe tier, honestly: the kernel's block throttle on
 * reads from the disk that holds the work directory, for this driver and
 * every process it starts (the daemons, the I/O probe). A cgroup of its own
 * is made under the driver's, the driver moves into it (its children are
 * born there) and out again at the end. cgroup v2's io.max where the io
 * controller is on the unified hierarchy, else cgroup v1's blkio
 * (blkio.throttle.read_bps_device). Needs root (or a delegated cgroup);
 * every failure says which file refused what.
 *
 * Only reads that reach the disk are throttled: O_DIRECT restores and
 * probes; page-cache hits (the model's weights) and writes are not.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "agentic.h"

static int write_file(const char *path, const char *text)
{
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	ssize_t n = write(fd, text, strlen(text));
	int e = n < 0 ? errno : 0;
	close(fd);
	return n < 0 ? -e : 0;
}

/* This process's cgroup in the v2 hierarchy (the "0::" line of
 * /proc/self/cgroup) or in v1's blkio; "" for the root. */
static int own_cgroup(bool v2, char *ret, size_t len)
{
	FILE *f = fopen("/proc/self/cgroup", "r");
	if (!f)
		return -errno;
	char line[1024];
	int r = -ENOENT;
	while (fgets(line, sizeof(line), f)) {
		line[strcspn(line, "\n")] = '\0';
		char *c1 = strchr(line, ':'), *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
		if (!c2)
			continue;
		*c1 = *c2 = '\0';
		bool match = v2 ? !strcmp(line, "0") && c1[1] == '\0' : false;
		if (!v2)
			for (char *s, *t = strtok_r(c1 + 1, ",", &s); t;
			     t = strtok_r(NULL, ",", &s))
				match |= !strcmp(t, "blkio");
		if (match) {
			snprintf(ret, len, "%s", strcmp(c2 + 1, "/") ? c2 + 1 : "");
			r = 0;
			break;
		}
	}
	fclose(f);
	return r;
}

/* The whole disk under path (the throttle takes disks, not partitions). */
static int disk_of(const char *path, unsigned *maj, unsigned *min, char *err, size_t err_len)
{
	struct stat st;
	if (stat(path, &st) < 0) {
		int e = errno;
		snprintf(err, err_len, "stat %s: %s", path, strerror(e));
		return -e;
	}
	*maj = major(st.st_dev);
	*min = minor(st.st_dev);
	char sys[96], real[PATH_MAX];
	snprintf(sys, sizeof(sys), "/sys/dev/block/%u:%u", *maj, *min);
	if (!realpath(sys, real)) {
		snprintf(err, err_len,
		         "%s is on device %u:%u, not a block device (tmpfs or overlay?): "
		         "no disk to throttle",
		         path, *maj, *min);
		return -ENODEV;
	}
	char part[PATH_MAX + 16];
	snprintf(part, sizeof(part), "%s/partition", real);
	if (access(part, F_OK) == 0) {
		char dev[PATH_MAX + 16];
		*strrchr(real, '/') = '\0';
		snprintf(dev, sizeof(dev), "%s/dev", real);
		FILE *f = fopen(dev, "r");
		int n = f ? fscanf(f, "%u:%u", maj, min) : 0;
		if (f)
			fclose(f);
		if (n != 2) {
			snprintf(err, err_len, "cannot read the disk of partition %s (%s)", sys,
			         dev);
			return -ENODEV;
		}
	}
	return 0;
}

int ag_throttle_open(struct ag_throttle *t, const char *path, char *err, size_t err_len)
{
	char own[400], ctl[600];
	memset(t, 0, sizeof(*t));
	int r = disk_of(path, &t->maj, &t->min, err, err_len);
	if (r < 0)
		return r;
	/* v2 where the io controller lives there */
	FILE *f = fopen("/sys/fs/cgroup/cgroup.controllers", "r");
	char ctls[512] = "";
	if (f) {
		if (!fgets(ctls, sizeof(ctls), f))
			ctls[0] = '\0';
		fclose(f);
	}
	t->v2 = strstr(ctls, "io") != NULL;
	const char *root = t->v2 ? "/sys/fs/cgroup" : "/sys/fs/cgroup/blkio";
	if (!t->v2 && access("/sys/fs/cgroup/blkio/blkio.throttle.read_bps_device", F_OK) < 0) {
		snprintf(err, err_len,
		         "no block throttle: neither cgroup v2's io controller "
		         "(/sys/fs/cgroup/cgroup.controllers) nor cgroup v1's blkio "
		         "(/sys/fs/cgroup/blkio) is mounted");
		return -ENOTSUP;
	}
	if ((r = own_cgroup(t->v2, own, sizeof(own))) < 0) {
		snprintf(err, err_len, "cannot find this process's %s cgroup in /proc/self/cgroup",
		         t->v2 ? "v2" : "blkio");
		return r;
	}
	snprintf(t->parent, sizeof(t->parent), "%s%s", root, own);
	if (t->v2) {
		snprintf(ctl, sizeof(ctl), "%s/cgroup.subtree_control", t->parent);
		if ((r = write_file(ctl, "+io")) < 0) {
			snprintf(err, err_len, "enable the io controller in %s: %s", ctl,
			         strerror(-r));
			return r;
		}
	}
	snprintf(t->dir, sizeof(t->dir), "%s/dp-agentic-%d", t->parent, (int)getpid());
	if (mkdir(t->dir, 0755) < 0 && errno != EEXIST) {
		int e = errno;
		snprintf(err, err_len, "mkdir %s: %s", t->dir, strerror(e));
		t->dir[0] = '\0';
		return -e;
	}
	char pid[24];
	snprintf(pid, sizeof(pid), "%d", (int)getpid());
	snprintf(ctl, sizeof(ctl), "%s/cgroup.procs", t->dir);
	if ((r = write_file(ctl, pid)) < 0) {
		snprintf(err, err_len, "move this process into %s: %s", ctl, strerror(-r));
		rmdir(t->dir);
		t->dir[0] = '\0';
		return r;
	}
	t->moved = true;
	return 0;
}

int ag_throttle_set(struct ag_throttle *t, uint64_t read_bps, char *err, size_t err_len)
{
	char ctl[600], rule[96];
	if (!t->moved)
		return -EINVAL;
	if (t->v2) {
		snprintf(ctl, sizeof(ctl), "%s/io.max", t->dir);
		if (read_bps)
			snprintf(rule, sizeof(rule), "%u:%u rbps=%llu", t->maj, t->min,
			         (unsigned long long)read_bps);
		else
			snprintf(rule, sizeof(rule), "%u:%u rbps=max", t->maj, t->min);
	} else {
		snprintf(ctl, sizeof(ctl), "%s/blkio.throttle.read_bps_device", t->dir);
		snprintf(rule, sizeof(rule), "%u:%u %llu", t->maj, t->min,
		         (unsigned long long)read_bps);
	}
	int r = write_file(ctl, rule);
	if (r < 0)
		snprintf(err, err_len, "write '%s' to %s: %s", rule, ctl, strerror(-r));
	else
		t->read_bps = read_bps;
	return r;
}

void ag_throttle_close(struct ag_throttle *t)
{
	if (t->moved) {
		char ctl[600], pid[24];
		snprintf(ctl, sizeof(ctl), "%s/cgroup.procs", t->parent);
		snprintf(pid, sizeof(pid), "%d", (int)getpid());
		write_file(ctl, pid);
		t->moved = false;
	}
	if (t->dir[0])
		rmdir(t->dir); /* fails while a child still runs in it: left behind */
	t->dir[0] = '\0';
}
