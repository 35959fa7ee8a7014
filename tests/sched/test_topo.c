/* SPDX-License-Identifier: MIT */
/* sched/topo.h: discovery, device locality, role placement, pinning and
 * NUMA-local memory, on this machine and on synthetic topologies. */
#include <criterion/criterion.h>
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "base/macros.h"
#include "sched/topo.h"

static struct dp_topo *topo;

static void setup(void)
{
	cr_assert_eq(dp_topo_new(&topo), 0);
}

static void teardown(void)
{
	dp_topo_free(topo);
	topo = NULL;
}

/* Tests run in one process under the TSan stand-in for Criterion
 * (tests/tsan), so each undoes what it changes: the topology, the affinity
 * of the main thread, the files it made. */
static cpu_set_t saved_affinity;

static void pin_setup(void)
{
	cr_assert_eq(sched_getaffinity(0, sizeof(saved_affinity), &saved_affinity), 0);
	setup();
}

static void pin_teardown(void)
{
	teardown();
	sched_setaffinity(0, sizeof(saved_affinity), &saved_affinity);
}

static bool is_usable_cpu(int cpu, int *node)
{
	const struct dp_topo_pu *pus;
	int n = dp_topo_pus(topo, &pus);

	for (int i = 0; i < n; i++)
		if (pus[i].cpu == cpu) {
			if (node)
				*node = pus[i].node;
			return true;
		}
	return false;
}

static bool is_node(int node)
{
	struct dp_topo_node nd;

	for (int i = 0; dp_topo_node_get(topo, i, &nd) == 0; i++)
		if (nd.id == node)
			return true;
	return false;
}

/* What the device lookups answer when the kernel does not know a locality. */
static int unknown_node(void)
{
	struct dp_topo_node nd;

	cr_assert_eq(dp_topo_node_get(topo, 0, &nd), 0);
	return dp_topo_count(topo, DP_TOPO_NODE) == 1 ? nd.id : -1;
}

/* ---- discovery --------------------------------------------------------- */

Test(topo, discovers_at_least_one_node_core_and_pu, .init = setup, .fini = teardown)
{
	int pkgs = dp_topo_count(topo, DP_TOPO_PACKAGE), nodes = dp_topo_count(topo, DP_TOPO_NODE);
	int cores = dp_topo_count(topo, DP_TOPO_CORE), npu = dp_topo_count(topo, DP_TOPO_PU);
	const struct dp_topo_pu *pus;

	cr_assert(pkgs >= 1 && nodes >= 1 && cores >= 1 && npu >= 1, "%d %d %d %d", pkgs, nodes,
	          cores, npu);
	cr_expect_leq(pkgs, cores);
	cr_expect_leq(cores, npu);
	cr_assert_eq(dp_topo_pus(topo, &pus), npu);

	/* Exactly the cpus this process may run on. */
	cpu_set_t mask;
	cr_assert_eq(sched_getaffinity(0, sizeof(mask), &mask), 0);
	cr_expect_eq(npu, CPU_COUNT(&mask));
	for (int i = 0; i < npu; i++) {
		cr_expect(CPU_ISSET(pus[i].cpu, &mask), "cpu %d", pus[i].cpu);
		cr_expect(pus[i].core >= 0 && pus[i].core < cores);
		cr_expect(pus[i].package >= 0 && pus[i].package < pkgs);
		cr_expect(is_node(pus[i].node), "cpu %d on node %d", pus[i].cpu, pus[i].node);
		if (i > 0) /* ordered by core, then cpu */
			cr_expect(pus[i].core > pus[i - 1].core ||
			          (pus[i].core == pus[i - 1].core && pus[i].cpu > pus[i - 1].cpu));
	}
	cr_expect_eq(pus[npu - 1].core, cores - 1, "core ids are dense");
}

Test(topo, node_cpu_lists_and_memory_match_the_pu_table, .init = setup, .fini = teardown)
{
	int nodes = dp_topo_count(topo, DP_TOPO_NODE), total = 0, prev_id = -1;
	long phys = sysconf(_SC_PHYS_PAGES) * sysconf(_SC_PAGESIZE);

	for (int i = 0; i < nodes; i++) {
		struct dp_topo_node nd;
		int cpus[4096];
		cr_assert_eq(dp_topo_node_get(topo, i, &nd), 0);
		cr_expect_gt(nd.id, prev_id, "ascending ids");
		prev_id = nd.id;
		int n = dp_topo_node_cpus(topo, nd.id, cpus, 4096);
		cr_assert_eq(n, nd.n_cpus);
		for (int j = 0; j < n; j++) {
			int on;
			cr_expect(is_usable_cpu(cpus[j], &on) && on == nd.id, "cpu %d", cpus[j]);
			if (j > 0)
				cr_expect_gt(cpus[j], cpus[j - 1], "ascending cpus");
		}
		/* A short buffer still reports the full count. */
		cr_expect_eq(dp_topo_node_cpus(topo, nd.id, cpus, 0 < n ? 1 : 0), n);
		total += n;
		if (n > 0)
			cr_expect(nd.memory > 0 && nd.memory <= (uint64_t)phys * 11 / 10,
			          "node %d: %llu bytes", nd.id, (unsigned long long)nd.memory);
	}
	cr_expect_eq(total, dp_topo_count(topo, DP_TOPO_PU), "every cpu is on one node");
	cr_expect_eq(dp_topo_node_cpus(topo, 99999, NULL, 0), -ENOENT);
	cr_expect_eq(dp_topo_node_get(topo, nodes, &(struct dp_topo_node){0}), -EINVAL);
}

Test(topo, describe_names_the_counts, .init = setup, .fini = teardown)
{
	char buf[512], want[64], tiny[8];

	cr_assert_eq(dp_topo_describe(topo, buf, sizeof(buf)), 0);
	int cores = dp_topo_count(topo, DP_TOPO_CORE);
	snprintf(want, sizeof(want), "%d core%s", cores, cores == 1 ? "" : "s");
	cr_expect(strstr(buf, want), "\"%s\" in \"%s\"", want, buf);
	cr_expect(strstr(buf, "node "), "%s", buf);
	cr_log_info("topology: %s", buf);
	cr_assert_eq(dp_topo_describe(topo, tiny, sizeof(tiny)), 0);
	cr_expect_eq(strlen(tiny), sizeof(tiny) - 1, "truncated, terminated");
}

Test(topo, bad_arguments_are_einval, .init = setup, .fini = teardown)
{
	const struct dp_topo_pu *pus;
	cr_expect_eq(dp_topo_new(NULL), -EINVAL);
	cr_expect_eq(dp_topo_count(topo, DP_TOPO_LEVEL_MAX), -EINVAL);
	cr_expect_eq(dp_topo_count(NULL, DP_TOPO_PU), -EINVAL);
	cr_expect_eq(dp_topo_pus(NULL, &pus), -EINVAL);
	cr_expect_eq(dp_topo_set_sysfs_root(topo, "/nonexistent/sysfs"), -EINVAL);
	cr_expect_null(dp_topo_role_name(DP_TOPO_ROLE_MAX));
	cr_expect_null(dp_topo_pages_name(DP_TOPO_PAGES_MAX));
}

Test(topo, free_accepts_null_and_free_onnode_unmaps_and_zeroes, .init = setup, .fini = teardown)
{
	struct dp_topo_mem m, zero = {0};

	dp_topo_free(NULL);
	cr_expect_gt(dp_topo_count(topo, DP_TOPO_PU), 0, "the fixture's topology still answers");
	dp_topo_free_onnode(NULL);
	dp_topo_free_onnode(&zero);
	cr_expect(zero.addr == NULL && zero.size == 0 && zero.mapped == 0,
	          "a zeroed struct stays zeroed");

	cr_assert_eq(dp_topo_alloc_onnode(100, -1, 0, &m), 0);
	memset(m.addr, 0xab, m.size);
	void *addr = m.addr;
	dp_topo_free_onnode(&m);
	cr_expect(m.addr == NULL && m.size == 0 && m.mapped == 0, "zeroed after the unmap");
	int node = 12345;
	cr_expect_eq(dp_topo_mem_node(addr, &node), -EFAULT, "the page is unmapped");
	dp_topo_free_onnode(&m); /* freeing it again is harmless: it is zeroed */
}

/* ---- device locality: this machine ------------------------------------- */

Test(topo, unknown_pci_bus_id_reports_enoent, .init = setup, .fini = teardown)
{
	int node = 12345;
	/* Domain ffff does not exist outside VMD-style setups. */
	cr_expect_eq(dp_topo_pci_node(topo, "ffff:ff:1f.7", &node), -ENOENT);
	cr_expect_eq(node, 12345, "untouched on failure");
}

Test(topo, bad_bus_id_string_is_einval, .init = setup, .fini = teardown)
{
	static const char *const bad[] = {
	    "",
	    "0000",
	    "3b:00",
	    "3b.00.0",
	    "0000:3b:00:0",
	    "0000:3b:00.8",
	    "0000:3b:20.0",
	    "0000:100:00.0",
	    "123456789:00:00.0",
	    "0000:3b:00.0 ",
	    " 3b:00.0",
	    "0x3b:00.0",
	    "0000:3g:00.0",
	    "0000:3b:00.00",
	    "0:0:0:0.0",
	    "3b:00.",
	};
	int node = 12345;
	for (size_t i = 0; i < DP_ARRAY_SIZE(bad); i++)
		cr_expect_eq(dp_topo_pci_node(topo, bad[i], &node), -EINVAL, "\"%s\"", bad[i]);
	cr_expect_eq(dp_topo_pci_node(topo, NULL, &node), -EINVAL);
	cr_expect_eq(dp_topo_pci_node(topo, "0000:00:00.0", NULL), -EINVAL);
	cr_expect_eq(node, 12345, "untouched on failure");
}

/* The first PCI function in sysfs, or skip. */
static void first_pci_device(char *out, size_t len)
{
	char best[NAME_MAX + 1] = "";
	DIR *d = opendir("/sys/bus/pci/devices");
	struct dirent *e;

	if (!d)
		cr_skip_test("no /sys/bus/pci on this machine");
	while ((e = readdir(d)))
		if (e->d_name[0] != '.' && (!best[0] || strcmp(e->d_name, best) < 0))
			snprintf(best, sizeof(best), "%s", e->d_name);
	closedir(d);
	if (!best[0])
		cr_skip_test("no PCI devices visible (container or non-PCI machine)");
	snprintf(out, len, "%s", best);
}

Test(topo, pci_device_node_matches_sysfs_in_every_bus_id_form, .init = setup, .fini = teardown)
{
	char id[NAME_MAX + 1], path[PATH_MAX], upper[NAME_MAX + 1], wide[NAME_MAX + 8];
	int node = 12345, kernel;

	first_pci_device(id, sizeof(id));
	cr_assert_eq(dp_topo_pci_node(topo, id, &node), 0, "%s", id);
	snprintf(path, sizeof(path), "/sys/bus/pci/devices/%s/numa_node", id);
	FILE *f = fopen(path, "r");
	cr_assert(f && fscanf(f, "%d", &kernel) == 1);
	fclose(f);
	cr_expect_eq(node, kernel >= 0 ? kernel : unknown_node(), "%s: kernel says %d, got %d", id,
	             kernel, node);

	/* CUDA's upper case and NVML's 8-digit domain name the same device. */
	for (size_t i = 0; i <= strlen(id); i++)
		upper[i] = (char)toupper((unsigned char)id[i]);
	snprintf(wide, sizeof(wide), "0000%s", upper);
	int n2 = -7, n3 = -7, n4 = -7;
	cr_expect_eq(dp_topo_pci_node(topo, upper, &n2), 0, "%s", upper);
	cr_expect_eq(dp_topo_pci_node(topo, wide, &n3), 0, "%s", wide);
	cr_expect(n2 == node && n3 == node);
	if (!strncmp(id, "0000:", 5)) {
		cr_expect_eq(dp_topo_pci_node(topo, id + 5, &n4), 0, "%s without domain", id);
		cr_expect_eq(n4, node);
	}
}

/* The disk under a file. Whether its file system has one is the kernel's to say (a
 * /sys/dev/block entry for st_dev): with one the call must resolve it; without (tmpfs,
 * overlayfs) there is nothing here to check, and -ENOENT for such files is
 * files_without_a_block_device_and_missing_names_are_enoent's subject. */
Test(topo, block_device_of_a_file_resolves_to_its_disk, .init = setup, .fini = teardown)
{
	char file[] = "/var/tmp/dp_topo_XXXXXX", disk[64] = "", sys[PATH_MAX];
	int fd = mkstemp(file), node = 12345;
	struct stat st;

	cr_assert_geq(fd, 0);
	cr_assert_eq(fstat(fd, &st), 0);
	close(fd);
	snprintf(sys, sizeof(sys), "/sys/dev/block/%u:%u", major(st.st_dev), minor(st.st_dev));
	if (access(sys, F_OK) != 0) {
		unlink(file);
		cr_skip_test("/var/tmp has no block device here (%s is missing)", sys);
	}
	int r = dp_topo_block_node(topo, file, &node, disk, sizeof(disk));
	unlink(file);
	cr_assert_eq(r, 0, "%s exists, yet: %s", sys, strerror(-r));
	cr_expect(node == -1 || is_node(node), "node %d", node);
	cr_expect_neq(disk[0], '\0');
	snprintf(sys, sizeof(sys), "/sys/class/block/%s", disk);
	cr_expect_eq(access(sys, F_OK), 0, "disk %s exists", disk);
	cr_log_info("/var/tmp is on %s, node %d", disk, node);

	/* The disk by name, and by device node, lead to the same place. */
	int by_name = -7, by_dev = -7;
	char dev[80];
	cr_expect_eq(dp_topo_block_node(topo, disk, &by_name, NULL, 0), 0);
	cr_expect_eq(by_name, node);
	snprintf(dev, sizeof(dev), "/dev/%s", disk);
	if (stat(dev, &st) == 0 && S_ISBLK(st.st_mode)) {
		cr_expect_eq(dp_topo_block_node(topo, dev, &by_dev, NULL, 0), 0);
		cr_expect_eq(by_dev, node);
	}
}

Test(topo, files_without_a_block_device_and_missing_names_are_enoent, .init = setup,
     .fini = teardown)
{
	int node = 12345;
	cr_expect_eq(dp_topo_block_node(topo, "/proc/self/status", &node, NULL, 0), -ENOENT,
	             "procfs");
	cr_expect_eq(dp_topo_block_node(topo, "/nonexistent/file", &node, NULL, 0), -ENOENT);
	cr_expect_eq(dp_topo_block_node(topo, "nosuchdisk9", &node, NULL, 0), -ENOENT);
	cr_expect_eq(dp_topo_block_node(topo, "", &node, NULL, 0), -EINVAL);
	cr_expect_eq(dp_topo_block_node(topo, "..", &node, NULL, 0), -EINVAL);
	cr_expect_eq(dp_topo_block_node(topo, NULL, &node, NULL, 0), -EINVAL);
	cr_expect_eq(node, 12345, "untouched on failure");
}

/* ---- device locality: a synthetic sysfs -------------------------------- */

static char fake[32];

static void put(const char *rel, const char *text)
{
	char p[PATH_MAX];
	snprintf(p, sizeof(p), "%s/%s", fake, rel);
	/* mkdir -p of the parent */
	for (char *s = p + strlen(fake) + 1; (s = strchr(s, '/')); s++) {
		*s = '\0';
		mkdir(p, 0755);
		*s = '/';
	}
	if (text) {
		FILE *f = fopen(p, "w");
		cr_assert(f, "%s", p);
		fputs(text, f);
		fclose(f);
	} else {
		mkdir(p, 0755);
	}
}

static void link_to(const char *rel, const char *target)
{
	char p[PATH_MAX];
	put(rel, NULL);
	snprintf(p, sizeof(p), "%s/%s", fake, rel);
	rmdir(p);
	cr_assert_eq(symlink(target, p), 0, "%s", p);
}

static int rm_one(const char *p, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st, (void)flag, (void)ftw;
	return remove(p);
}

/* A two-socket layout: a GPU and an NVMe drive on node 1 behind the second
 * root port, the drive's namespace as a multipath head with a partition, a
 * dm volume on that partition, a device whose firmware gave no locality,
 * and a loop device. */
static void fake_setup(void)
{
	setup();
	snprintf(fake, sizeof(fake), "/tmp/dp_topo_sysfs_XXXXXX");
	cr_assert(mkdtemp(fake));
	put("devices/pci0000:00/0000:00:06.0/numa_node", "-1\n");
	put("devices/pci0000:3a/0000:3a:00.0/0000:3b:00.0/numa_node", "1\n");
	put("devices/pci0000:3a/0000:3a:00.0/0000:3c:00.0/numa_node", "1\n");
	put("devices/pci0000:3a/0000:3a:00.0/0000:3c:00.0/nvme/nvme0/nvme0c0n1/dev", "259:0\n");
	put("devices/virtual/nvme-subsystem/nvme-subsys0/nvme0n1/dev", "259:1\n");
	link_to("devices/virtual/nvme-subsystem/nvme-subsys0/nvme0n1/multipath/nvme0c0n1",
	        "../../../../../pci0000:3a/0000:3a:00.0/0000:3c:00.0/nvme/nvme0/nvme0c0n1");
	put("devices/virtual/nvme-subsystem/nvme-subsys0/nvme0n1/nvme0n1p2/partition", "2\n");
	put("devices/virtual/block/dm-0/dev", "253:0\n");
	link_to("devices/virtual/block/dm-0/slaves/nvme0n1p2",
	        "../../../nvme-subsystem/nvme-subsys0/nvme0n1/nvme0n1p2");
	put("devices/virtual/block/loop0/dev", "7:0\n");
	link_to("class/block/nvme0n1", "../../devices/virtual/nvme-subsystem/nvme-subsys0/nvme0n1");
	link_to("class/block/nvme0n1p2",
	        "../../devices/virtual/nvme-subsystem/nvme-subsys0/nvme0n1/nvme0n1p2");
	link_to("class/block/dm-0", "../../devices/virtual/block/dm-0");
	link_to("class/block/loop0", "../../devices/virtual/block/loop0");
	link_to("bus/pci/devices/0000:3b:00.0",
	        "../../../devices/pci0000:3a/0000:3a:00.0/0000:3b:00.0");
	link_to("bus/pci/devices/0000:3c:00.0",
	        "../../../devices/pci0000:3a/0000:3a:00.0/0000:3c:00.0");
	link_to("bus/pci/devices/0000:00:06.0", "../../../devices/pci0000:00/0000:00:06.0");
	cr_assert_eq(dp_topo_set_sysfs_root(topo, fake), 0);
}

static void fake_teardown(void)
{
	nftw(fake, rm_one, 16, FTW_DEPTH | FTW_PHYS);
	teardown();
}

Test(topo, gpu_bus_id_finds_its_node_in_any_spelling, .init = fake_setup, .fini = fake_teardown)
{
	static const char *const ids[] = {"0000:3b:00.0", "00000000:3B:00.0", "3b:00.0", "3B:00.0"};
	for (size_t i = 0; i < DP_ARRAY_SIZE(ids); i++) {
		int node = -7;
		cr_expect_eq(dp_topo_pci_node(topo, ids[i], &node), 0, "%s", ids[i]);
		cr_expect_eq(node, 1, "%s", ids[i]);
	}
	int node = -7;
	cr_expect_eq(dp_topo_pci_node(topo, "0000:00:06.0", &node), 0);
	cr_expect_eq(node, unknown_node(), "numa_node -1: unknown unless there is one node");
	cr_expect_eq(dp_topo_pci_node(topo, "0000:00:07.0", &node), -ENOENT);
}

Test(topo, block_devices_resolve_through_partitions_multipath_and_dm, .init = fake_setup,
     .fini = fake_teardown)
{
	static const char *const names[] = {"nvme0n1", "nvme0n1p2", "dm-0"};
	for (size_t i = 0; i < DP_ARRAY_SIZE(names); i++) {
		char disk[16] = "";
		int node = -7;
		cr_expect_eq(dp_topo_block_node(topo, names[i], &node, disk, sizeof(disk)), 0, "%s",
		             names[i]);
		cr_expect_eq(node, 1, "%s", names[i]);
		cr_expect(!strcmp(disk, "nvme0n1"), "%s: got %s, want the namespace", names[i],
		          disk);
	}
	char disk[4];
	int node = -7;
	cr_expect_eq(dp_topo_block_node(topo, "loop0", &node, disk, sizeof(disk)), 0);
	cr_expect_eq(node, unknown_node(), "a virtual device has no locality");
	cr_expect(!strcmp(disk, "loo"), "name truncated to the buffer: %s", disk);
}

/* ---- placement --------------------------------------------------------- */

static bool same_core(const struct dp_topo_pu *pus, size_t n, int a, int b)
{
	int ca = -1, cb = -2;
	for (size_t i = 0; i < n; i++) {
		if (pus[i].cpu == a)
			ca = pus[i].core;
		if (pus[i].cpu == b)
			cb = pus[i].core;
	}
	return ca == cb;
}

/* Field by field: struct copies need not carry padding bytes. */
static bool same_placement(const struct dp_topo_placement *a, const struct dp_topo_placement *b)
{
	return !memcmp(a->cpu, b->cpu, sizeof(a->cpu)) && a->node == b->node &&
	       a->shared_core == b->shared_core && a->shared_pu == b->shared_pu &&
	       !strcmp(a->desc, b->desc);
}

#define PLACE(pus, node, p) cr_assert_eq(dp_topo_place_on(pus, DP_ARRAY_SIZE(pus), node, p), 0)
#define C DP_TOPO_ROLE_COMPUTE
#define I DP_TOPO_ROLE_IO
#define F DP_TOPO_ROLE_FRONT

Test(topo, role_choice_falls_back_to_shared_cores_on_small_machines, .init = setup,
     .fini = teardown)
{
	struct dp_topo_placement p;

	/* This VM: 2 cores, no SMT. compute avoids cpu 0's core; io and
	 * front share the other. */
	const struct dp_topo_pu two[] = {{0, 0, 0, 0}, {1, 1, 0, 0}};
	PLACE(two, 0, &p);
	cr_expect(p.cpu[C] == 1 && p.cpu[I] == 0 && p.cpu[F] == 0, "%s", p.desc);
	cr_expect(p.shared_core && p.shared_pu && p.node == 0);
	cr_expect(strstr(p.desc, "io+front share a cpu"), "%s", p.desc);

	/* One core, one PU: everything there. */
	const struct dp_topo_pu one[] = {{0, 0, 0, 0}};
	PLACE(one, 0, &p);
	cr_expect(p.cpu[C] == 0 && p.cpu[I] == 0 && p.cpu[F] == 0, "%s", p.desc);
	cr_expect(p.shared_core && p.shared_pu);

	/* One core, two hyperthreads: compute on one, io and front on the other. */
	const struct dp_topo_pu smt[] = {{0, 0, 0, 0}, {1, 0, 0, 0}};
	PLACE(smt, 0, &p);
	cr_expect(p.cpu[C] == 0 && p.cpu[I] == 1 && p.cpu[F] == 1, "%s", p.desc);

	/* Two cores with two hyperthreads each (siblings 0/2 and 1/3):
	 * compute keeps core 1 to itself, io and front split core 0. */
	const struct dp_topo_pu two_smt[] = {
	    {0, 0, 0, 0}, {2, 0, 0, 0}, {1, 1, 0, 0}, {3, 1, 0, 0}};
	PLACE(two_smt, 0, &p);
	cr_expect(p.cpu[C] == 1 && p.cpu[I] == 0 && p.cpu[F] == 2, "%s", p.desc);
	cr_expect(p.shared_core && !p.shared_pu, "%s", p.desc);
	cr_expect(strstr(p.desc, "io+front share a core"), "%s", p.desc);
}

Test(topo, role_choice_gives_each_role_its_own_core_near_the_node, .init = setup, .fini = teardown)
{
	/* 2 nodes x 4 cores x 2 threads; Linux numbering: siblings +8. */
	struct dp_topo_pu big[16];
	struct dp_topo_placement p, again;
	for (int i = 0; i < 16; i++)
		big[i] = (struct dp_topo_pu){
		    .cpu = i, .core = i % 8, .package = (i % 8) / 4, .node = (i % 8) / 4};

	PLACE(big, 1, &p);
	cr_expect(p.cpu[C] == 4 && p.cpu[I] == 5 && p.cpu[F] == 6, "%s", p.desc);
	cr_expect(!p.shared_core && !p.shared_pu && p.node == 1, "%s", p.desc);
	cr_expect(strstr(p.desc, "a core each"), "%s", p.desc);

	PLACE(big, 0, &p);
	cr_expect(p.cpu[C] == 1 && p.cpu[I] == 2 && p.cpu[F] == 3, "cpu 0's core goes last: %s",
	          p.desc);
	for (int a = 0; a < DP_TOPO_ROLE_MAX; a++)
		for (int b = a + 1; b < DP_TOPO_ROLE_MAX; b++)
			cr_expect(!same_core(big, 16, p.cpu[a], p.cpu[b]));

	/* Deterministic whatever the input order. */
	for (int i = 0; i < 8; i++) {
		struct dp_topo_pu tmp = big[i];
		big[i] = big[15 - i];
		big[15 - i] = tmp;
	}
	PLACE(big, 0, &again);
	cr_expect(same_placement(&p, &again), "%s vs %s", p.desc, again.desc);
}

Test(topo, role_choice_for_an_unknown_or_cpuless_node_uses_the_lowest_node, .init = setup,
     .fini = teardown)
{
	const struct dp_topo_pu pus[] = {{0, 0, 0, 2}, {1, 1, 0, 2}, {2, 2, 1, 3}, {3, 3, 1, 3}};
	struct dp_topo_placement p;

	PLACE(pus, -1, &p);
	cr_expect_eq(p.node, 2, "%s", p.desc);
	PLACE(pus, 7, &p);
	cr_expect_eq(p.node, 2);
	cr_expect(strstr(p.desc, "node 7 has no usable cpus"), "%s", p.desc);

	/* No node information at all. */
	const struct dp_topo_pu flat[] = {{0, 0, 0, -1}, {1, 1, 0, -1}, {2, 2, 0, -1}};
	PLACE(flat, 0, &p);
	cr_expect(p.node == -1 && !p.shared_core && p.cpu[C] == 1, "%s", p.desc);
}

Test(topo, role_choice_rejects_bad_input_and_leaves_the_result_alone, .init = setup,
     .fini = teardown)
{
	struct dp_topo_placement p, before;
	const struct dp_topo_pu neg[] = {{-1, 0, 0, 0}};

	memset(&p, 0x5a, sizeof(p));
	before = p;
	cr_expect_eq(dp_topo_place_on(NULL, 1, 0, &p), -EINVAL);
	cr_expect_eq(dp_topo_place_on(neg, 0, 0, &p), -EINVAL);
	cr_expect_eq(dp_topo_place_on(neg, 1, 0, &p), -EINVAL);
	cr_expect_eq(dp_topo_place_on(neg, 1, 0, NULL), -EINVAL);
	cr_expect_eq(dp_topo_place(NULL, 0, &p), -EINVAL);
	cr_expect_eq(memcmp(&p, &before, sizeof(p)), 0);
}

Test(topo, role_choice_on_this_machine_uses_usable_cpus_of_the_node, .init = setup,
     .fini = teardown)
{
	struct dp_topo_placement p, again;
	const struct dp_topo_pu *pus;
	int n = dp_topo_pus(topo, &pus), node = pus[0].node;

	cr_assert_eq(dp_topo_place(topo, node, &p), 0);
	cr_log_info("placement: %s", p.desc);
	cr_expect_eq(p.node, node);
	for (int r = 0; r < DP_TOPO_ROLE_MAX; r++) {
		int on = -7;
		cr_expect(is_usable_cpu(p.cpu[r], &on) && on == node, "%s on cpu %d",
		          dp_topo_role_name(r), p.cpu[r]);
	}
	int cores_on_node = 0;
	for (int i = 0; i < n; i++)
		cores_on_node += pus[i].node == node && (i == 0 || pus[i].core != pus[i - 1].core);
	cr_expect_eq(p.shared_core, cores_on_node < 3, "%d cores: %s", cores_on_node, p.desc);
	cr_assert_eq(dp_topo_place(topo, node, &again), 0);
	cr_expect(same_placement(&p, &again), "deterministic");

	/* Unknown and cpu-less nodes fall back to a real one. */
	cr_assert_eq(dp_topo_place(topo, -1, &again), 0);
	cr_expect(is_node(again.node));
	cr_assert_eq(dp_topo_place(topo, 1000, &again), 0);
	cr_expect(is_node(again.node) && strstr(again.desc, "node 1000 has no usable cpus"), "%s",
	          again.desc);
}

/* ---- pinning ----------------------------------------------------------- */

Test(topo, pinning_takes_effect, .init = pin_setup, .fini = pin_teardown)
{
	const struct dp_topo_pu *pus;
	int n = dp_topo_pus(topo, &pus);

	for (int i = 0; i < n; i++) {
		cpu_set_t got;
		cr_assert_eq(dp_topo_pin_self(pus[i].cpu), 0, "cpu %d", pus[i].cpu);
		cr_assert_eq(sched_getaffinity(0, sizeof(got), &got), 0);
		cr_expect(CPU_COUNT(&got) == 1 && CPU_ISSET(pus[i].cpu, &got), "cpu %d",
		          pus[i].cpu);
		cr_expect_eq(sched_getcpu(), pus[i].cpu, "running there already");
	}
}

struct pinned {
	pthread_barrier_t pinned;
	int cpu;
	cpu_set_t mask;
};

static void *report_cpu(void *arg)
{
	struct pinned *pn = arg;
	pthread_barrier_wait(&pn->pinned);
	sched_getaffinity(0, sizeof(pn->mask), &pn->mask);
	pn->cpu = sched_getcpu();
	return NULL;
}

Test(topo, pinning_another_thread_takes_effect, .init = pin_setup, .fini = pin_teardown)
{
	const struct dp_topo_pu *pus;
	int n = dp_topo_pus(topo, &pus), target = pus[n - 1].cpu;
	struct pinned pn = {.cpu = -1};
	pthread_t th;

	pthread_barrier_init(&pn.pinned, NULL, 2);
	cr_assert_eq(pthread_create(&th, NULL, report_cpu, &pn), 0);
	int r = dp_topo_pin_thread(th, &target, 1);
	pthread_barrier_wait(&pn.pinned);
	pthread_join(th, NULL);
	pthread_barrier_destroy(&pn.pinned);
	cr_assert_eq(r, 0);
	cr_expect(CPU_COUNT(&pn.mask) == 1 && CPU_ISSET(target, &pn.mask));
	cr_expect_eq(pn.cpu, target);
}

Test(topo, pinning_to_a_node_allows_exactly_its_cpus, .init = pin_setup, .fini = pin_teardown)
{
	const struct dp_topo_pu *pus;
	int cpus[4096];
	cpu_set_t got;

	cr_assert_gt(dp_topo_pus(topo, &pus), 0);
	int n = dp_topo_node_cpus(topo, pus[0].node, cpus, 4096);
	cr_assert_gt(n, 0);
	cr_assert_eq(dp_topo_pin_thread(pthread_self(), cpus, n), 0);
	cr_assert_eq(sched_getaffinity(0, sizeof(got), &got), 0);
	cr_expect_eq(CPU_COUNT(&got), n);
	for (int i = 0; i < n; i++)
		cr_expect(CPU_ISSET(cpus[i], &got));
}

Test(topo, pinning_to_a_nonexistent_cpu_fails_and_changes_nothing, .init = pin_setup,
     .fini = pin_teardown)
{
	cpu_set_t before, after;
	int absent = (int)sysconf(_SC_NPROCESSORS_CONF) + 64;

	cr_assert_eq(sched_getaffinity(0, sizeof(before), &before), 0);
	cr_expect_eq(dp_topo_pin_self(-1), -EINVAL);
	cr_expect_eq(dp_topo_pin_self(absent), -EINVAL, "cpu %d", absent);
	cr_expect_eq(dp_topo_pin_self(1 << 20), -EINVAL);
	cr_expect_eq(dp_topo_pin_thread(pthread_self(), NULL, 1), -EINVAL);
	cr_assert_eq(sched_getaffinity(0, sizeof(after), &after), 0);
	cr_expect(CPU_EQUAL(&before, &after));
}

/* ---- NUMA-local memory ------------------------------------------------- */

static void expect_on_node(const struct dp_topo_mem *m, int node)
{
	long page = sysconf(_SC_PAGESIZE);
	size_t offs[] = {0, m->size / 2, m->size - 1};
	for (size_t i = 0; i < 3; i++) {
		int got = -7;
		cr_expect_eq(dp_topo_mem_node((char *)m->addr + offs[i], &got), 0);
		cr_expect_eq(got, node, "offset %zu", offs[i]);
	}
	cr_expect_eq((uintptr_t)m->addr % (uintptr_t)page, 0, "page aligned");
	cr_expect_geq(m->mapped, m->size);
}

Test(topo, alloc_onnode_places_pages_on_the_asked_node, .init = setup, .fini = teardown)
{
	struct dp_topo_node nd;
	int tried = 0;

	for (int i = 0; dp_topo_node_get(topo, i, &nd) == 0; i++) {
		struct dp_topo_mem m;
		if (nd.memory < (64u << 20))
			continue;
		cr_assert_eq(dp_topo_alloc_onnode((8u << 20) + 123, nd.id, 0, &m), 0, "node %d",
		             nd.id);
		cr_expect(m.node == nd.id && m.pages == DP_TOPO_PAGES_SMALL);
		unsigned char *b = m.addr;
		cr_expect(b[0] == 0 && b[m.size - 1] == 0, "zeroed");
		memset(b, 0xa5, m.size);
		expect_on_node(&m, nd.id);
		dp_topo_free_onnode(&m);
		cr_expect(m.addr == NULL && m.mapped == 0, "struct cleared");
		tried++;
	}
	cr_expect_gt(tried, 0, "some node has memory");
}

Test(topo, alloc_without_a_node_is_unbound_but_placed, .init = setup, .fini = teardown)
{
	struct dp_topo_mem m;
	int got = -7;

	cr_assert_eq(dp_topo_alloc_onnode(100, -1, 0, &m), 0);
	cr_expect_eq(m.node, -1);
	cr_expect_eq(m.mapped, (size_t)sysconf(_SC_PAGESIZE));
	cr_expect_eq(dp_topo_mem_node(m.addr, &got), 0, "populated at once");
	cr_expect(is_node(got), "node %d", got);
	dp_topo_free_onnode(&m);
}

static long free_hugepages(int node)
{
	char p[128];
	long v = 0;
	snprintf(p, sizeof(p),
	         "/sys/devices/system/node/node%d/hugepages/hugepages-2048kB/free_hugepages", node);
	FILE *f = fopen(p, "r");
	if (f && fscanf(f, "%ld", &v) != 1)
		v = 0;
	if (f)
		fclose(f);
	return v;
}

Test(topo, huge_alloc_reports_what_backs_it, .init = setup, .fini = teardown)
{
	const struct dp_topo_pu *pus;
	struct dp_topo_mem m;
	size_t two_m = 2u << 20;

	cr_assert_gt(dp_topo_pus(topo, &pus), 0);
	int node = pus[0].node;
	cr_assert_eq(dp_topo_alloc_onnode(3u << 20, node, DP_TOPO_MEM_HUGE, &m), 0);
	cr_log_info("huge request on node %d got %s pages", node, dp_topo_pages_name(m.pages));
	if (free_hugepages(node) >= 2)
		cr_expect_eq(m.pages, DP_TOPO_PAGES_HUGETLB, "the pool had pages");
	else
		cr_expect_neq(m.pages, DP_TOPO_PAGES_HUGETLB, "the pool was empty");
	if (m.pages != DP_TOPO_PAGES_SMALL) {
		cr_expect_eq((uintptr_t)m.addr % two_m, 0, "2 MiB aligned");
		cr_expect_eq(m.mapped, 2 * two_m);
	}
	memset(m.addr, 1, m.size);
	expect_on_node(&m, node);
	dp_topo_free_onnode(&m);
}

Test(topo, hugetlb_is_used_when_the_pool_has_pages, .init = setup, .fini = teardown)
{
	const struct dp_topo_pu *pus;
	struct dp_topo_mem m;

	cr_assert_gt(dp_topo_pus(topo, &pus), 0);
	if (free_hugepages(pus[0].node) < 1)
		cr_skip_test("no free 2 MiB hugetlb pages on node %d (vm.nr_hugepages is 0)",
		             pus[0].node);
	cr_assert_eq(dp_topo_alloc_onnode(1u << 20, pus[0].node, DP_TOPO_MEM_HUGE, &m), 0);
	cr_expect_eq(m.pages, DP_TOPO_PAGES_HUGETLB);
	expect_on_node(&m, pus[0].node);
	dp_topo_free_onnode(&m);
}

Test(topo, alloc_rejects_bad_arguments_and_leaves_the_result_alone, .init = setup, .fini = teardown)
{
	struct dp_topo_mem m = {.addr = (void *)0x1234, .size = 77};
	int max_id = 0;
	struct dp_topo_node nd;

	for (int i = 0; dp_topo_node_get(topo, i, &nd) == 0; i++)
		max_id = nd.id;
	cr_expect_eq(dp_topo_alloc_onnode(0, 0, 0, &m), -EINVAL);
	cr_expect_eq(dp_topo_alloc_onnode(4096, -2, 0, &m), -EINVAL);
	cr_expect_eq(dp_topo_alloc_onnode(4096, 1024, 0, &m), -EINVAL);
	cr_expect_eq(dp_topo_alloc_onnode(4096, max_id + 1, 0, &m), -EINVAL,
	             "node %d does not exist", max_id + 1);
	cr_expect_eq(dp_topo_alloc_onnode(4096, max_id + 1, DP_TOPO_MEM_HUGE, &m), -EINVAL);
	cr_expect_eq(dp_topo_alloc_onnode(4096, 0, DP_TOPO_MEM_FLAGS_MAX, &m), -EINVAL);
	cr_expect_eq(dp_topo_alloc_onnode(4096, 0, 0, NULL), -EINVAL);
	cr_expect_eq(dp_topo_alloc_onnode(SIZE_MAX - 100, 0, 0, &m), -ENOMEM);
	cr_expect(m.addr == (void *)0x1234 && m.size == 77);
}

Test(topo, mem_node_tells_untouched_and_unmapped_pages_apart, .init = setup, .fini = teardown)
{
	long page = sysconf(_SC_PAGESIZE);
	int node = 12345;
	char *p = mmap(NULL, 2 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	cr_assert_neq(p, MAP_FAILED);
	cr_expect_eq(dp_topo_mem_node(p, &node), -ENOENT, "never touched");
	p[page] = 1;
	cr_expect_eq(dp_topo_mem_node(p + page, &node), 0);
	cr_expect(is_node(node));
	munmap(p, 2 * page);
	node = 12345;
	cr_expect_eq(dp_topo_mem_node(p, &node), -EFAULT, "unmapped");
	cr_expect_eq(node, 12345);
	cr_expect_eq(dp_topo_mem_node(NULL, &node), -EINVAL);
}
