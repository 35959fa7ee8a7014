/* SPDX-License-Identifier: MIT */
/* CPU/NUMA topology, device locality, thread placement and pinning, NUMA-local
 * memory. The contract is in topo.h. */
#include "sched/topo.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <hwloc.h>
#include <limits.h>
#include <numaif.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "base/err.h"

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23 /* Linux 5.14 */
#endif

#define HUGE_2M ((size_t)2 << 20)
/* The kernel's MAX_NUMNODES is at most 1 << CONFIG_NODES_SHIFT(10). */
#define MAX_NODES 1024
/* Far beyond any NR_CPUS; keeps a typo from asking for a huge cpu set. */
#define MAX_CPU   65536
#define LONG_BITS (8 * sizeof(unsigned long))

struct dp_topo {
	hwloc_topology_t hw;
	struct dp_topo_pu *pus;     /* by core, then cpu (hwloc's order) */
	struct dp_topo_pu *by_cpu;  /* the same, sorted by cpu */
	struct dp_topo_node *nodes; /* ascending id */
	uint64_t *dist;             /* n_nodes^2 NUMA distances, 0: unknown */
	int count[DP_TOPO_LEVEL_MAX];
	char *sysfs; /* real path of the sysfs root */
};

/* ---- discovery --------------------------------------------------------- */

static int cmp_pu_cpu(const void *a, const void *b)
{
	const struct dp_topo_pu *x = a, *y = b;
	return (x->cpu > y->cpu) - (x->cpu < y->cpu);
}

static int cmp_node_id(const void *a, const void *b)
{
	const struct dp_topo_node *x = a, *y = b;
	return (x->id > y->id) - (x->id < y->id);
}

static int node_index(const struct dp_topo *t, int node)
{
	for (int i = 0; i < t->count[DP_TOPO_NODE]; i++)
		if (t->nodes[i].id == node)
			return i;
	return -1;
}

/* Fill the PU table from hwloc's cores (or PUs, where hwloc finds no cores),
 * keeping the cpus in `usable`. */
static int load_pus(struct dp_topo *t, hwloc_const_bitmap_t usable)
{
	hwloc_topology_t hw = t->hw;
	int max = hwloc_get_nbobjs_by_type(hw, HWLOC_OBJ_PU);
	hwloc_obj_type_t unit =
	    hwloc_get_type_depth(hw, HWLOC_OBJ_CORE) >= 0 ? HWLOC_OBJ_CORE : HWLOC_OBJ_PU;
	int n = 0, cores = 0, packages = 0;
	unsigned last_pkg = UINT_MAX;

	if (max <= 0)
		return -EIO;
	t->pus = calloc(max, sizeof(*t->pus));
	t->by_cpu = calloc(max, sizeof(*t->by_cpu));
	if (!t->pus || !t->by_cpu)
		return -ENOMEM;
	for (hwloc_obj_t c = NULL; (c = hwloc_get_next_obj_by_type(hw, unit, c));) {
		int before = n;

		for (hwloc_obj_t pu = NULL; (pu = hwloc_get_next_obj_inside_cpuset_by_type(
		                                 hw, c->cpuset, HWLOC_OBJ_PU, pu));) {
			if (!hwloc_bitmap_isset(usable, pu->os_index) || n == max)
				continue;
			/* Cores come in tree order, so a package's cores are
			 * contiguous: count packages as they change. */
			hwloc_obj_t pkg = hwloc_get_ancestor_obj_by_type(hw, HWLOC_OBJ_PACKAGE, pu);
			unsigned pkg_idx = pkg ? pkg->logical_index : 0;
			if (pkg_idx != last_pkg) {
				last_pkg = pkg_idx;
				packages++;
			}
			t->pus[n++] = (struct dp_topo_pu){
			    .cpu = (int)pu->os_index,
			    .core = cores,
			    .package = packages - 1,
			    .node = hwloc_bitmap_first(pu->nodeset),
			};
		}
		if (n > before)
			cores++;
	}
	if (n == 0)
		return -EIO;
	memcpy(t->by_cpu, t->pus, n * sizeof(*t->pus));
	qsort(t->by_cpu, n, sizeof(*t->by_cpu), cmp_pu_cpu);
	t->count[DP_TOPO_PU] = n;
	t->count[DP_TOPO_CORE] = cores;
	t->count[DP_TOPO_PACKAGE] = packages;
	return 0;
}

static int load_nodes(struct dp_topo *t)
{
	hwloc_topology_t hw = t->hw;
	int n = hwloc_get_nbobjs_by_type(hw, HWLOC_OBJ_NUMANODE);

	if (n <= 0)
		return -EIO;
	t->nodes = calloc(n, sizeof(*t->nodes));
	t->dist = calloc((size_t)n * n, sizeof(*t->dist));
	if (!t->nodes || !t->dist)
		return -ENOMEM;
	for (int i = 0; i < n; i++) {
		hwloc_obj_t o = hwloc_get_obj_by_type(hw, HWLOC_OBJ_NUMANODE, i);
		t->nodes[i].id = (int)o->os_index;
		t->nodes[i].memory = o->attr->numanode.local_memory;
		for (int j = 0; j < t->count[DP_TOPO_PU]; j++)
			t->nodes[i].n_cpus += t->pus[j].node == t->nodes[i].id;
	}
	qsort(t->nodes, n, sizeof(*t->nodes), cmp_node_id);
	t->count[DP_TOPO_NODE] = n;

	/* Copy the kernel's distance matrix now: hwloc loaded it already, and
	 * libnuma's numa_distance() fills a global table lazily, which would
	 * make dp_topo_place racy. */
	unsigned nr = 1;
	struct hwloc_distances_s *d = NULL;
	if (hwloc_distances_get_by_type(hw, HWLOC_OBJ_NUMANODE, &nr, &d,
	                                HWLOC_DISTANCES_KIND_MEANS_LATENCY, 0) == 0 &&
	    nr == 1) {
		for (unsigned a = 0; a < d->nbobjs; a++)
			for (unsigned b = 0; b < d->nbobjs; b++) {
				int i = node_index(t, (int)d->objs[a]->os_index);
				int j = node_index(t, (int)d->objs[b]->os_index);
				if (i >= 0 && j >= 0)
					t->dist[(size_t)i * n + j] = d->values[a * d->nbobjs + b];
			}
		hwloc_distances_release(hw, d);
	}
	return 0;
}

static int topo_load(struct dp_topo *t)
{
	int r;

	t->sysfs = strdup("/sys");
	if (!t->sysfs)
		return -ENOMEM;
	/* hwloc's default filters leave I/O objects out: device locality comes
	 * from sysfs instead (see topo.h), so loading stays cheap. Without
	 * HWLOC_TOPOLOGY_FLAG_INCLUDE_DISALLOWED hwloc drops what the cgroup
	 * forbids. */
	if (hwloc_topology_init(&t->hw) < 0) {
		t->hw = NULL;
		return -ENOMEM;
	}
	if (hwloc_topology_load(t->hw) < 0)
		return -EIO;

	/* Also honour the affinity we were started with (CPUAffinity=, taskset). */
	hwloc_bitmap_t usable = hwloc_bitmap_dup(hwloc_topology_get_allowed_cpuset(t->hw));
	hwloc_bitmap_t bound = hwloc_bitmap_alloc();
	if (!usable || !bound) {
		r = -ENOMEM;
	} else {
		if (hwloc_get_cpubind(t->hw, bound, HWLOC_CPUBIND_THREAD) == 0 &&
		    hwloc_bitmap_intersects(usable, bound))
			hwloc_bitmap_and(usable, usable, bound);
		r = load_pus(t, usable);
	}
	hwloc_bitmap_free(usable);
	hwloc_bitmap_free(bound);
	return r < 0 ? r : load_nodes(t);
}

int dp_topo_new(struct dp_topo **ret_topo)
{
	if (!ret_topo)
		return -EINVAL;
	struct dp_topo *t = calloc(1, sizeof(*t));
	if (!t)
		return -ENOMEM;
	int r = topo_load(t);
	if (r < 0) {
		dp_topo_free(t);
		return r;
	}
	*ret_topo = t;
	return 0;
}

void dp_topo_free(struct dp_topo *t)
{
	if (!t)
		return;
	if (t->hw)
		hwloc_topology_destroy(t->hw);
	free(t->pus);
	free(t->by_cpu);
	free(t->nodes);
	free(t->dist);
	free(t->sysfs);
	free(t);
}

int dp_topo_set_sysfs_root(struct dp_topo *t, const char *root)
{
	char *real;

	if (!t || !root)
		return -EINVAL;
	real = realpath(root, NULL);
	if (!real)
		return errno == ENOMEM ? -ENOMEM : -EINVAL;
	free(t->sysfs);
	t->sysfs = real;
	return 0;
}

int dp_topo_count(const struct dp_topo *t, enum dp_topo_level level)
{
	if (!t || (unsigned)level >= DP_TOPO_LEVEL_MAX)
		return -EINVAL;
	return t->count[level];
}

int dp_topo_pus(const struct dp_topo *t, const struct dp_topo_pu **ret_pus)
{
	if (!t || !ret_pus)
		return -EINVAL;
	*ret_pus = t->pus;
	return t->count[DP_TOPO_PU];
}

int dp_topo_node_get(const struct dp_topo *t, int idx, struct dp_topo_node *ret_node)
{
	if (!t || !ret_node || idx < 0 || idx >= t->count[DP_TOPO_NODE])
		return -EINVAL;
	*ret_node = t->nodes[idx];
	return 0;
}

int dp_topo_node_cpus(const struct dp_topo *t, int node, int *cpus, size_t max)
{
	int n = 0;

	if (!t || (max && !cpus))
		return -EINVAL;
	if (node_index(t, node) < 0)
		return -ENOENT;
	for (int i = 0; i < t->count[DP_TOPO_PU]; i++) {
		if (t->by_cpu[i].node != node)
			continue;
		if ((size_t)n < max)
			cpus[n] = t->by_cpu[i].cpu;
		n++;
	}
	return n;
}

#define PLURAL(n) ((n) == 1 ? "" : "s")

int dp_topo_describe(const struct dp_topo *t, char *buf, size_t len)
{
	size_t pos = 0;

	if (!t || !buf || !len)
		return -EINVAL;
	buf[0] = '\0';
	for (int l = 0; l < DP_TOPO_LEVEL_MAX; l++) {
		static const char *const what[] = {"package", "node", "core", "cpu"};
		dp_appendf(buf, len, &pos, "%s%d %s%s", l ? ", " : "", t->count[l], what[l],
		           PLURAL(t->count[l]));
	}
	for (int i = 0; i < t->count[DP_TOPO_NODE]; i++) {
		int id = t->nodes[i].id, first = -1, prev = -2;
		const char *sep = "";

		dp_appendf(buf, len, &pos, "; node %d: cpus ", id);
		/* by_cpu is sorted: print runs as ranges, "0-3,8-11". */
		for (int j = 0; j <= t->count[DP_TOPO_PU]; j++) {
			bool end = j == t->count[DP_TOPO_PU];
			if (!end && t->by_cpu[j].node != id)
				continue;
			int cpu = end ? -1 : t->by_cpu[j].cpu;
			if (!end && cpu == prev + 1) {
				prev = cpu;
				continue;
			}
			if (first >= 0 && first == prev)
				dp_appendf(buf, len, &pos, "%s%d", sep, first);
			else if (first >= 0)
				dp_appendf(buf, len, &pos, "%s%d-%d", sep, first, prev);
			sep = first >= 0 ? "," : sep;
			first = prev = cpu;
		}
		if (!t->nodes[i].n_cpus)
			dp_appendf(buf, len, &pos, "none");
		dp_appendf(buf, len, &pos, ", %.1f GiB",
		           t->nodes[i].memory / (1024.0 * 1024 * 1024));
	}
	return 0;
}

/* ---- device locality --------------------------------------------------- */

static int read_int(const char *path, int *ret)
{
	FILE *f = fopen(path, "re");
	int v, ok;

	if (!f)
		return -errno;
	ok = fscanf(f, "%d", &v) == 1;
	fclose(f);
	if (!ok)
		return -EIO;
	*ret = v;
	return 0;
}

static bool is_file(const char *dir, const char *name)
{
	char p[PATH_MAX];
	struct stat st;

	return snprintf(p, sizeof(p), "%s/%s", dir, name) < (int)sizeof(p) && stat(p, &st) == 0;
}

/* A locality the kernel does not know: on a one-node machine it is still
 * certain. */
static int unknown_node(const struct dp_topo *t)
{
	return t->count[DP_TOPO_NODE] == 1 ? t->nodes[0].id : -1;
}

/* The numa_node of the sysfs device at `dir` or of its nearest ancestor that
 * has one (a block device's is its PCI function's). `dir` is clobbered. */
static int sysdir_node(const struct dp_topo *t, char *dir)
{
	size_t root = strlen(t->sysfs);
	char p[PATH_MAX];
	int node = -1;

	while (strlen(dir) > root) {
		if (snprintf(p, sizeof(p), "%s/numa_node", dir) < (int)sizeof(p) &&
		    read_int(p, &node) == 0)
			return node >= 0 ? node : unknown_node(t);
		*strrchr(dir, '/') = '\0';
	}
	return unknown_node(t);
}

static const char *hex_field(const char *s, int max_digits, unsigned long *ret)
{
	unsigned long v = 0;
	int n;

	for (n = 0; isxdigit((unsigned char)s[n]); n++) {
		if (n == max_digits)
			return NULL;
		v = v * 16 + (unsigned long)(isdigit((unsigned char)s[n])
		                                 ? s[n] - '0'
		                                 : tolower((unsigned char)s[n]) - 'a' + 10);
	}
	if (n == 0)
		return NULL;
	*ret = v;
	return s + n;
}

int dp_topo_pci_node(const struct dp_topo *t, const char *bus_id, int *ret_node)
{
	unsigned long f[3], fn;
	const char *p = bus_id;
	char path[PATH_MAX], *dir;
	int n = 0;

	if (!t || !bus_id || !ret_node)
		return -EINVAL;
	/* [domain:]bus:dev.fn */
	for (;;) {
		if (!(p = hex_field(p, 8, &f[n++])))
			return -EINVAL;
		if (*p == ':' && n < 3)
			p++;
		else if (*p == '.' && n >= 2)
			break;
		else
			return -EINVAL;
	}
	if (!(p = hex_field(p + 1, 1, &fn)) || *p)
		return -EINVAL;
	unsigned long dom = n == 3 ? f[0] : 0, bus = f[n - 2], dev = f[n - 1];
	if (dom > 0xffffffffUL || bus > 0xff || dev > 0x1f || fn > 7)
		return -EINVAL;

	snprintf(path, sizeof(path), "%s/bus/pci/devices/%04lx:%02lx:%02lx.%lx", t->sysfs, dom, bus,
	         dev, fn);
	dir = realpath(path, NULL);
	if (!dir)
		return errno == ENOMEM ? -ENOMEM : -ENOENT;
	*ret_node = sysdir_node(t, dir);
	free(dir);
	return 0;
}

/* The real path of `dir`/`sub`/<first entry by name>, for "multipath" (NVMe
 * paths under a multipath head) and "slaves" (dm, md members). Sorting makes
 * the choice independent of readdir order. */
static char *first_entry(const char *dir, const char *sub)
{
	char p[PATH_MAX], best[NAME_MAX + 1] = "";
	struct dirent *e;
	DIR *d;

	if (snprintf(p, sizeof(p), "%s/%s", dir, sub) >= (int)sizeof(p) || !(d = opendir(p)))
		return NULL;
	while ((e = readdir(d)))
		if (e->d_name[0] != '.' && (!best[0] || strcmp(e->d_name, best) < 0))
			snprintf(best, sizeof(best), "%s", e->d_name);
	closedir(d);
	if (!best[0] || snprintf(p, sizeof(p), "%s/%s/%s", dir, sub, best) >= (int)sizeof(p))
		return NULL;
	return realpath(p, NULL);
}

int dp_topo_block_node(const struct dp_topo *t, const char *dev, int *ret_node, char *ret_disk,
                       size_t disk_len)
{
	char path[PATH_MAX], name[NAME_MAX + 1], *dir, *next;

	if (!t || !dev || !*dev || !ret_node || (!ret_disk && disk_len))
		return -EINVAL;
	if (strchr(dev, '/')) {
		struct stat st;
		if (stat(dev, &st) < 0)
			return -errno;
		/* A device node names itself; any other file names the device
		 * its file system lives on. */
		dev_t d = S_ISBLK(st.st_mode) ? st.st_rdev : st.st_dev;
		snprintf(path, sizeof(path), "%s/dev/block/%u:%u", t->sysfs, major(d), minor(d));
	} else {
		if (!strcmp(dev, ".") || !strcmp(dev, ".."))
			return -EINVAL;
		if (snprintf(path, sizeof(path), "%s/class/block/%s", t->sysfs, dev) >=
		    (int)sizeof(path))
			return -EINVAL;
	}
	dir = realpath(path, NULL);
	if (!dir)
		return errno == ENOMEM ? -ENOMEM : -ENOENT;
	snprintf(name, sizeof(name), "%s", strrchr(dir, '/') + 1);

	/* Down to hardware: partition -> disk, dm/md -> first member,
	 * multipath head -> first path. The bound stops a cycle. */
	for (int hop = 0; hop < 16; hop++) {
		if (is_file(dir, "partition")) {
			*strrchr(dir, '/') = '\0';
		} else if ((next = first_entry(dir, "slaves"))) {
			free(dir);
			dir = next;
		} else if ((next = first_entry(dir, "multipath"))) {
			/* keep the head's name ("nvme0n1", not "nvme0c0n1") */
			free(dir);
			dir = next;
			continue;
		} else {
			break;
		}
		snprintf(name, sizeof(name), "%s", strrchr(dir, '/') + 1);
	}
	*ret_node = sysdir_node(t, dir);
	free(dir);
	if (ret_disk && disk_len)
		snprintf(ret_disk, disk_len, "%s", name);
	return 0;
}

/* ---- thread placement -------------------------------------------------- */

const char *dp_topo_role_name(enum dp_topo_role role)
{
	static const char *const names[DP_TOPO_ROLE_MAX] = {
	    [DP_TOPO_ROLE_FRONT] = "front",
	    [DP_TOPO_ROLE_COMPUTE] = "compute",
	    [DP_TOPO_ROLE_IO] = "io",
	};
	return (unsigned)role < DP_TOPO_ROLE_MAX ? names[role] : NULL;
}

struct cand {
	int rank;      /* 0 for a core's first PU, 1 for its second... */
	int cpu0_core; /* 1 on the core that holds cpu 0: it sorts last */
	int core, cpu;
};

/* First PUs of every core in core order, then the second PUs... */
static int cmp_cand(const void *a, const void *b)
{
	const struct cand *x = a, *y = b;
	const int kx[] = {x->rank, x->cpu0_core, x->core, x->cpu};
	const int ky[] = {y->rank, y->cpu0_core, y->core, y->cpu};

	for (int i = 0; i < 4; i++)
		if (kx[i] != ky[i])
			return kx[i] < ky[i] ? -1 : 1;
	return 0;
}

/* Place on `node`; `asked` is what the caller asked for, for the description. */
static int place(const struct dp_topo_pu *pus, size_t n_pus, int node, int asked,
                 struct dp_topo_placement *ret)
{
	struct dp_topo_placement p = {.node = -1};
	int lowest = INT_MAX, zero_core = INT_MIN, n = 0, cores = 0;
	bool have = false;

	if (!pus || !n_pus || n_pus > INT_MAX || !ret)
		return -EINVAL;
	for (size_t i = 0; i < n_pus; i++) {
		if (pus[i].cpu < 0)
			return -EINVAL;
		have |= node >= 0 && pus[i].node == node;
		if (pus[i].node >= 0 && pus[i].node < lowest)
			lowest = pus[i].node;
		if (pus[i].cpu == 0)
			zero_core = pus[i].core;
	}
	int use = have ? node : lowest == INT_MAX ? -1 : lowest;

	struct cand *c = calloc(n_pus, sizeof(*c));
	if (!c)
		return -ENOMEM;
	for (size_t i = 0; i < n_pus; i++)
		if (use < 0 ? pus[i].node < 0 : pus[i].node == use)
			c[n++] =
			    (struct cand){0, pus[i].core == zero_core, pus[i].core, pus[i].cpu};
	/* A PU's rank among its core's PUs (quadratic, but over one node's PUs). */
	for (int i = 0; i < n; i++) {
		for (int j = 0; j < n; j++)
			c[i].rank += c[j].core == c[i].core && c[j].cpu < c[i].cpu;
		cores += c[i].rank == 0;
	}
	qsort(c, n, sizeof(*c), cmp_cand);

	/* compute: c[0]. io, front: the next PUs off compute's core, unless
	 * there is only that core. Out of PUs: io reuses compute's, front io's. */
	struct cand *role[DP_TOPO_ROLE_MAX] = {NULL, &c[0], NULL};
	int next = 1;
	for (int r = 0; r < 2; r++) {
		enum dp_topo_role want = r == 0 ? DP_TOPO_ROLE_IO : DP_TOPO_ROLE_FRONT;
		while (next < n && cores > 1 && c[next].core == c[0].core)
			next++;
		role[want] = next < n ? &c[next++]
		             : r == 0 ? role[DP_TOPO_ROLE_COMPUTE]
		                      : role[DP_TOPO_ROLE_IO];
	}

	size_t pos = 0;
	p.node = use;
	for (int r = 0; r < DP_TOPO_ROLE_MAX; r++)
		p.cpu[r] = role[r]->cpu;
	if (asked >= 0 && use != asked)
		dp_appendf(p.desc, sizeof(p.desc), &pos, "node %d has no usable cpus; ", asked);
	dp_appendf(p.desc, sizeof(p.desc), &pos,
	           "node %d: compute=cpu%d io=cpu%d front=cpu%d (%d core%s, %d cpu%s", use,
	           p.cpu[DP_TOPO_ROLE_COMPUTE], p.cpu[DP_TOPO_ROLE_IO], p.cpu[DP_TOPO_ROLE_FRONT],
	           cores, PLURAL(cores), n, PLURAL(n));
	static const enum dp_topo_role pairs[3][2] = {
	    {DP_TOPO_ROLE_COMPUTE, DP_TOPO_ROLE_IO},
	    {DP_TOPO_ROLE_COMPUTE, DP_TOPO_ROLE_FRONT},
	    {DP_TOPO_ROLE_IO, DP_TOPO_ROLE_FRONT},
	};
	for (int i = 0; i < 3; i++) {
		const struct cand *a = role[pairs[i][0]], *b = role[pairs[i][1]];
		if (a->core != b->core)
			continue;
		dp_appendf(p.desc, sizeof(p.desc), &pos, "%s %s+%s share %s",
		           p.shared_core ? "," : ":", dp_topo_role_name(pairs[i][0]),
		           dp_topo_role_name(pairs[i][1]), a == b ? "a cpu" : "a core");
		p.shared_core = true;
		p.shared_pu |= a == b;
	}
	dp_appendf(p.desc, sizeof(p.desc), &pos, p.shared_core ? ")" : ": a core each)");
	free(c);
	*ret = p;
	return 0;
}

int dp_topo_place_on(const struct dp_topo_pu *pus, size_t n_pus, int node,
                     struct dp_topo_placement *ret)
{
	return place(pus, n_pus, node, node, ret);
}

int dp_topo_place(const struct dp_topo *t, int node, struct dp_topo_placement *ret)
{
	int use = node, i = -1;

	if (!t || !ret)
		return -EINVAL;
	/* A node without usable cpus (memory-only, outside our cpuset, or
	 * unknown): take the nearest one that has some, lowest id on a tie. */
	if (node >= 0 && ((i = node_index(t, node)) < 0 || !t->nodes[i].n_cpus)) {
		uint64_t best = UINT64_MAX;
		int nn = t->count[DP_TOPO_NODE];
		use = -1;
		for (int j = 0; j < nn; j++) {
			uint64_t d = i >= 0 && t->dist[(size_t)i * nn + j]
			                 ? t->dist[(size_t)i * nn + j]
			                 : UINT64_MAX - 1;
			if (t->nodes[j].n_cpus && d < best) {
				best = d;
				use = t->nodes[j].id;
			}
		}
	}
	return place(t->pus, t->count[DP_TOPO_PU], use, node, ret);
}

/* ---- pinning ----------------------------------------------------------- */

int dp_topo_pin_thread(pthread_t thread, const int *cpus, size_t n_cpus)
{
	int max = -1;

	if (!cpus || !n_cpus)
		return -EINVAL;
	for (size_t i = 0; i < n_cpus; i++) {
		if (cpus[i] < 0 || cpus[i] >= MAX_CPU)
			return -EINVAL;
		if (cpus[i] > max)
			max = cpus[i];
	}
	/* A dynamic set: cpu_set_t stops at CPU_SETSIZE (1024). */
	cpu_set_t *set = CPU_ALLOC(max + 1);
	size_t size = CPU_ALLOC_SIZE(max + 1);
	if (!set)
		return -ENOMEM;
	CPU_ZERO_S(size, set);
	for (size_t i = 0; i < n_cpus; i++)
		CPU_SET_S(cpus[i], size, set);
	int r = pthread_setaffinity_np(thread, size, set);
	CPU_FREE(set);
	return -r;
}

int dp_topo_pin_self(int cpu)
{
	/* sched_setaffinity migrates the caller before it returns. */
	return dp_topo_pin_thread(pthread_self(), &cpu, 1);
}

/* ---- NUMA-local memory ------------------------------------------------- */

const char *dp_topo_pages_name(enum dp_topo_pages pages)
{
	static const char *const names[DP_TOPO_PAGES_MAX] = {"small", "hugetlb", "thp"};
	return (unsigned)pages < DP_TOPO_PAGES_MAX ? names[pages] : NULL;
}

static bool thp_enabled(void)
{
	char buf[128] = "";
	FILE *f = fopen("/sys/kernel/mm/transparent_hugepage/enabled", "re");

	if (!f)
		return false;
	bool ok = fgets(buf, sizeof(buf), f) && !strstr(buf, "[never]");
	fclose(f);
	return ok;
}

/* Bind [p, p+len) to node and fault every page in. */
static int bind_and_populate(void *p, size_t len, int node, bool hugetlb)
{
	if (node >= 0) {
		unsigned long mask[MAX_NODES / LONG_BITS] = {0};
		mask[node / LONG_BITS] = 1UL << (node % LONG_BITS);
		/* maxnode counts one past the last bit, as libnuma passes it */
		if (mbind(p, len, MPOL_BIND, mask, MAX_NODES + 1, 0) < 0 &&
		    !(errno == ENOSYS && node == 0))
			return -errno;
	}
	/* MADV_POPULATE_WRITE reports a hugetlb shortage on the node as an
	 * error now, where touching the pages would raise SIGBUS. */
	if (madvise(p, len, MADV_POPULATE_WRITE) == 0)
		return 0;
	if (errno != EINVAL || hugetlb)
		return -ENOMEM;
	/* Kernels before 5.14: touch each page. */
	long page = sysconf(_SC_PAGESIZE);
	for (size_t off = 0; off < len; off += (size_t)page)
		((volatile char *)p)[off] = 0;
	return 0;
}

static int map_pages(struct dp_topo_mem *m, enum dp_topo_pages kind)
{
	size_t page = kind == DP_TOPO_PAGES_SMALL ? (size_t)sysconf(_SC_PAGESIZE) : HUGE_2M;
	/* THP needs 2 MiB-aligned ranges, which mmap does not promise: map
	 * 2 MiB more and trim. Hugetlb mappings come aligned. */
	size_t extra = kind == DP_TOPO_PAGES_THP ? HUGE_2M : 0;
	size_t mapped = (m->size + page - 1) / page * page;
	int flags = MAP_PRIVATE | MAP_ANONYMOUS;

	if (mapped < m->size || mapped + extra < mapped)
		return -ENOMEM;
	if (kind == DP_TOPO_PAGES_HUGETLB)
		flags |= MAP_HUGETLB | (21 << MAP_HUGE_SHIFT); /* 2 MiB pages */
	char *base = mmap(NULL, mapped + extra, PROT_READ | PROT_WRITE, flags, -1, 0);
	if (base == MAP_FAILED)
		return -errno;
	char *p = base;
	if (extra) {
		p = (char *)(((uintptr_t)base + HUGE_2M - 1) & ~(uintptr_t)(HUGE_2M - 1));
		if (p > base)
			munmap(base, p - base);
		if (p + mapped < base + mapped + extra)
			munmap(p + mapped, base + mapped + extra - (p + mapped));
		if (madvise(p, mapped, MADV_HUGEPAGE) < 0 || !thp_enabled())
			kind = DP_TOPO_PAGES_SMALL;
	}
	int r = bind_and_populate(p, mapped, m->node, kind == DP_TOPO_PAGES_HUGETLB);
	if (r < 0) {
		munmap(p, mapped);
		return r;
	}
	m->addr = p;
	m->mapped = mapped;
	m->pages = kind;
	return 0;
}

int dp_topo_alloc_onnode(size_t size, int node, unsigned flags, struct dp_topo_mem *ret_mem)
{
	struct dp_topo_mem m = {.size = size, .node = node};
	int r;

	if (!ret_mem || !size || node < -1 || node >= MAX_NODES || flags >= DP_TOPO_MEM_FLAGS_MAX)
		return -EINVAL;
	if (flags & DP_TOPO_MEM_HUGE) {
		/* Any hugetlb failure (no pool, pool short on this node, no
		 * kernel support) falls back; a bad node fails again below. */
		r = map_pages(&m, DP_TOPO_PAGES_HUGETLB);
		if (r < 0)
			r = map_pages(&m, DP_TOPO_PAGES_THP);
	} else {
		r = map_pages(&m, DP_TOPO_PAGES_SMALL);
	}
	if (r < 0)
		return r;
	*ret_mem = m;
	return 0;
}

void dp_topo_free_onnode(struct dp_topo_mem *m)
{
	if (!m)
		return;
	if (m->addr)
		munmap(m->addr, m->mapped);
	memset(m, 0, sizeof(*m));
}

int dp_topo_mem_node(const void *addr, int *ret_node)
{
	int status = -1;

	if (!addr || !ret_node)
		return -EINVAL;
	/* move_pages with no target nodes only reports where each page is; a
	 * page never touched reports -ENOENT instead of being faulted in (as
	 * get_mempolicy(MPOL_F_NODE|MPOL_F_ADDR) would, onto the zero page). */
	void *page = (void *)((uintptr_t)addr & ~(uintptr_t)(sysconf(_SC_PAGESIZE) - 1));
	if (move_pages(0, 1, &page, NULL, &status, 0) < 0) {
		if (errno != ENOSYS)
			return -errno;
		status = 0; /* no NUMA in this kernel: one node */
	}
	if (status < 0)
		return status;
	*ret_node = status;
	return 0;
}
