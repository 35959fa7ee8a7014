/* SPDX-License-Identifier: MIT */
/*
 * sched/topo.h — where dualpathd's threads and buffers go.
 *
 * A struct dp_topo is a snapshot of the machine taken by dp_topo_new(): the
 * packages, NUMA nodes, physical cores and their PUs (hardware threads),
 * discovered with hwloc. It answers four questions:
 *
 *   - which NUMA node is a device near?  dp_topo_pci_node() for a GPU by PCI
 *     bus id, dp_topo_block_node() for a disk by name or for the disk under
 *     a file. Both read the kernel's `numa_node` attribute in sysfs (the
 *     value hwloc itself reads), so dp_topo_new() can skip hwloc's walk over
 *     every PCI device, and 32-bit PCI domains (Intel VMD) work, which the
 *     Debian hwloc 2.x build cannot represent;
 *   - which cores should front, compute and io run on?  dp_topo_place();
 *   - pin a thread there: dp_topo_pin_thread(), dp_topo_pin_self();
 *   - give me memory on that node: dp_topo_alloc_onnode().
 *
 * Identifiers are the kernel's: a "cpu" is an OS cpu number (what
 * sched_setaffinity, taskset and /proc/cpuinfo use), a "node" an OS NUMA node
 * number (what mbind and numactl use). Node -1 means "unknown": every call
 * that takes a node accepts it and falls back sensibly (no binding, or the
 * lowest node with usable cpus), so callers can pass a lookup's answer on
 * without special-casing it.
 *
 * What counts as usable: cpus (and so cores, packages) are those the process
 * may run on when dp_topo_new() runs — its cgroup cpuset and the calling
 * thread's affinity mask (systemd CPUAffinity=, taskset) — so an
 * administrator's restriction is honoured. Nodes are those whose memory the
 * cgroup allows, with or without usable cpus.
 *
 * Threads: a dp_topo is read-only after dp_topo_new(); every const call may
 * run from any thread concurrently. dp_topo_set_sysfs_root() and
 * dp_topo_free() need no concurrent users. The functions without a dp_topo
 * argument are thread-safe.
 */
#ifndef DP_SCHED_TOPO_H
#define DP_SCHED_TOPO_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

struct dp_topo;

/* ---- discovery --------------------------------------------------------- */

/* Discover the machine. Returns 0, -ENOMEM, or -EIO when hwloc fails. */
int dp_topo_new(struct dp_topo **ret_topo);
void dp_topo_free(struct dp_topo *t);

/* Look devices up under `root` instead of "/sys": for tests, and for
 * containers that mount the host's sysfs elsewhere. Returns 0 or -EINVAL /
 * -ENOMEM. */
int dp_topo_set_sysfs_root(struct dp_topo *t, const char *root);

enum dp_topo_level {
	DP_TOPO_PACKAGE, /* sockets with a usable cpu */
	DP_TOPO_NODE,    /* NUMA nodes whose memory we may use */
	DP_TOPO_CORE,    /* physical cores with a usable cpu */
	DP_TOPO_PU,      /* usable cpus (hardware threads) */
	DP_TOPO_LEVEL_MAX,
};

/* How many objects of `level` there are (at least 1 each), or -EINVAL. */
int dp_topo_count(const struct dp_topo *t, enum dp_topo_level level);

/* One usable cpu. dp_topo_pus() lists them ordered by core, then cpu. */
struct dp_topo_pu {
	int cpu;     /* OS cpu number */
	int core;    /* physical core, 0..count(CORE)-1, machine-wide */
	int package; /* package, 0..count(PACKAGE)-1 */
	int node;    /* lowest NUMA node local to this cpu, -1: unknown */
};

/* The usable cpus: sets *ret_pus to an array owned by t (valid until
 * dp_topo_free) and returns its length, or -EINVAL. */
int dp_topo_pus(const struct dp_topo *t, const struct dp_topo_pu **ret_pus);

/* The idx-th NUMA node (0 <= idx < count(NODE), ascending by id). */
struct dp_topo_node {
	int id;          /* OS node number */
	uint64_t memory; /* local memory in bytes, 0 if unknown */
	int n_cpus;      /* usable cpus local to it; 0 for memory-only nodes */
};
int dp_topo_node_get(const struct dp_topo *t, int idx, struct dp_topo_node *ret_node);

/* Write up to `max` usable cpus of node `node` (ascending) to cpus and return
 * how many there are (which may exceed max). -ENOENT: no such node. */
int dp_topo_node_cpus(const struct dp_topo *t, int node, int *cpus, size_t max);

/* One line for a log, e.g. "1 package, 1 node, 2 cores, 2 cpus; node 0:
 * cpus 0-1, 11.7 GiB". Truncated to len like snprintf. Returns 0 or -EINVAL. */
int dp_topo_describe(const struct dp_topo *t, char *buf, size_t len);

/* ---- device locality --------------------------------------------------- */

/* NUMA node of the PCI device `bus_id`: "0000:3b:00.0", "00000000:3B:00.0"
 * (CUDA/NVML) or "3b:00.0" (domain 0); hex digits in either case.
 * *ret_node is the node, or -1 when the kernel does not know the device's
 * locality on a multi-node machine (on a one-node machine, every device is
 * local to that node). Returns 0, -EINVAL for a malformed id, -ENOENT when
 * no such device exists. */
int dp_topo_pci_node(const struct dp_topo *t, const char *bus_id, int *ret_node);

/* NUMA node of a block device, given as a name under /sys/class/block
 * ("nvme0n1", "vda", "nvme0n1p2") or as a path: a device node ("/dev/vda")
 * or any other file, meaning the device holding its file system (st_dev).
 * Partitions resolve to their disk; NVMe multipath heads, dm and md devices
 * to their first underlying path/member. *ret_node as for dp_topo_pci_node;
 * ret_disk (optional, NULL ok) receives the disk's name, truncated to
 * disk_len. Returns 0, -EINVAL, -ENOENT when the name or path does not
 * exist or the file system has no block device (tmpfs, overlayfs, NFS,
 * btrfs subvolumes), or another error from stat(2) (-EACCES...). */
int dp_topo_block_node(const struct dp_topo *t, const char *dev, int *ret_node, char *ret_disk,
                       size_t disk_len);

/* ---- thread placement -------------------------------------------------- */

enum dp_topo_role {
	DP_TOPO_ROLE_FRONT,   /* socket I/O: mostly asleep in epoll */
	DP_TOPO_ROLE_COMPUTE, /* issues kernels every step: the busiest */
	DP_TOPO_ROLE_IO,      /* io_uring submission and copies */
	DP_TOPO_ROLE_MAX,
};

const char *dp_topo_role_name(enum dp_topo_role role); /* "front"...; NULL if out of range */

#define DP_TOPO_DESC_LEN 192

/*
 * Where the three threads go. The rule, on the usable cpus of the chosen
 * node (cores ordered by index, except that the core holding cpu 0 comes
 * last, since the kernel's housekeeping and many interrupts land there):
 *
 *   compute gets the first PU of the first core; when the node has two or
 *   more cores, nothing else goes on that core. io and front take the next
 *   PUs of the other cores, one PU per core before any core's second PU
 *   (so with three or more cores all three roles have cores of their own);
 *   when PUs run out, io reuses compute's PU and front reuses io's.
 *
 * The node: the one asked for. For -1, the lowest node with usable cpus;
 * for a node without usable cpus (memory-only, outside our cpuset, unknown),
 * the nearest one that has some (dp_topo_place: by the kernel's NUMA
 * distance, ties to the lowest id; dp_topo_place_on: the lowest), and desc
 * says so. Deterministic for a given topology.
 */
struct dp_topo_placement {
	int cpu[DP_TOPO_ROLE_MAX];   /* OS cpu per role */
	int node;                    /* node the cpus are on; -1: unknown */
	bool shared_core;            /* some roles share a physical core */
	bool shared_pu;              /* some roles share a PU */
	char desc[DP_TOPO_DESC_LEN]; /* e.g. "node 0: compute=cpu1 io=cpu0 front=cpu0 (...)" */
};

/* Place the roles near `node` on this machine. Returns 0 or -EINVAL. */
int dp_topo_place(const struct dp_topo *t, int node, struct dp_topo_placement *ret);

/* The same rule on an explicit list of cpus (any order; core ids need not be
 * dense), e.g. a synthetic topology. Returns 0, -EINVAL (no cpus, a cpu < 0),
 * or -ENOMEM. */
int dp_topo_place_on(const struct dp_topo_pu *pus, size_t n_pus, int node,
                     struct dp_topo_placement *ret);

/* ---- pinning ----------------------------------------------------------- */

/* Restrict `thread` to the given cpus (n_cpus >= 1; e.g. one PU, or a node's
 * cpu list). Returns 0, -EINVAL (bad cpu numbers, or none of them usable),
 * -ESRCH, -ENOMEM, or another error from pthread_setaffinity_np. */
int dp_topo_pin_thread(pthread_t thread, const int *cpus, size_t n_cpus);

/* Pin the calling thread to one cpu; it runs there when this returns. */
int dp_topo_pin_self(int cpu);

/* ---- NUMA-local memory ------------------------------------------------- */

enum dp_topo_pages {
	DP_TOPO_PAGES_SMALL,   /* base pages */
	DP_TOPO_PAGES_HUGETLB, /* 2 MiB pages from the hugetlbfs pool */
	DP_TOPO_PAGES_THP,     /* transparent huge pages requested (madvise);
	                        * the kernel may still use base pages */
	DP_TOPO_PAGES_MAX,
};

const char *dp_topo_pages_name(enum dp_topo_pages pages); /* "small", "hugetlb", "thp" */

enum dp_topo_mem_flags {
	DP_TOPO_MEM_HUGE = 1u << 0, /* try hugetlb pages, then THP, then small */
	DP_TOPO_MEM_FLAGS_MAX = 1u << 1,
};

/* A mapping from dp_topo_alloc_onnode; the caller owns it and releases it
 * with dp_topo_free_onnode. */
struct dp_topo_mem {
	void *addr;               /* page-aligned; 2 MiB-aligned unless pages is SMALL */
	size_t size;              /* bytes asked for */
	size_t mapped;            /* bytes mapped: size rounded up to the page size */
	int node;                 /* node the pages are bound to; -1: not bound */
	enum dp_topo_pages pages; /* what backs it */
};

/*
 * Map `size` bytes of zeroed, private, read-write memory whose pages are bound
 * (MPOL_BIND) to `node`, or left to the default policy when node is -1, and
 * fault them all in now, so the placement is settled and the hot path takes
 * no page faults. flags: enum dp_topo_mem_flags. Hugetlb pages are used only
 * if the pool has enough on the node; a shortfall falls back to THP, never to
 * SIGBUS later. Returns 0, -EINVAL (size 0, unknown node or flags), or
 * -ENOMEM (also when the node has too little free memory).
 */
int dp_topo_alloc_onnode(size_t size, int node, unsigned flags, struct dp_topo_mem *ret_mem);

/* Unmap and zero *m. Accepts NULL and a zeroed struct. */
void dp_topo_free_onnode(struct dp_topo_mem *m);

/* The node that holds the page at addr right now (move_pages(2) query; does
 * not fault it in). Returns 0, -ENOENT when the page is not present yet
 * (never touched), -EFAULT when addr is not mapped, or -EINVAL. On kernels
 * without NUMA support everything is on node 0. */
int dp_topo_mem_node(const void *addr, int *ret_node);

#ifdef __cplusplus
}
#endif

#endif /* DP_SCHED_TOPO_H */
