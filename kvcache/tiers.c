/* SPDX-License-Identifier: MIT */
/*
 * The host tiers: the pinned DRAM page pool, and the NVMe slot file.
 *
 * Slot file layout: a 4 KiB file header (magic "DPKVSLOT", format version,
 * slot geometry, xxh3), then slots of DP_KV_SLOT_BYTES: a 4 KiB page header
 * and the 64 KiB page. Everything is 4 KiB aligned, so O_DIRECT works where
 * the filesystem has it; where it does not (tmpfs says EINVAL) the file is
 * used buffered and dp_kv_stats reports direct_io = false.
 */
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>
#include <xxhash.h>

#include "kvcache/kvcache-internal.h"

/* ---- DRAM pool ------------------------------------------------------------------ */

int dp_kv_pool_init(struct dp_kv_pool *p, uint64_t bytes, int node)
{
	memset(p, 0, sizeof(*p));
	if (bytes < DP_KV_PAGE_BYTES)
		return 0; /* no DRAM tier */
	uint64_t n = bytes / DP_KV_PAGE_BYTES;
	if (n > UINT32_MAX)
		return -EINVAL;
	int ret = dp_topo_alloc_onnode((size_t)n * DP_KV_PAGE_BYTES, node, DP_TOPO_MEM_HUGE, &p->mem);
	if (ret < 0)
		return ret;
	/* pinned, so copies to and from the device and O_DIRECT need no bounce;
	 * without the rlimit for it the pool still works, unpinned */
	p->locked = mlock(p->mem.addr, p->mem.mapped) == 0;
	p->free_list = malloc((size_t)n * sizeof(*p->free_list));
	p->refs = calloc((size_t)n, sizeof(*p->refs));
	p->gen = calloc((size_t)n, sizeof(*p->gen));
	if (!p->free_list || !p->refs || !p->gen) {
		dp_kv_pool_fini(p);
		return -ENOMEM;
	}
	p->n_pages = (uint32_t)n;
	for (uint32_t i = 0; i < p->n_pages; i++)
		p->free_list[i] = p->n_pages - 1 - i;
	p->n_free = p->n_pages;
	return 0;
}

void dp_kv_pool_fini(struct dp_kv_pool *p)
{
	if (p->mem.addr) {
		if (p->locked)
			munlock(p->mem.addr, p->mem.mapped);
		dp_topo_free_onnode(&p->mem);
	}
	free(p->free_list);
	free(p->refs);
	free(p->gen);
	memset(p, 0, sizeof(*p));
}

int dp_kv_pool_get(struct dp_kv_pool *p)
{
	if (p->n_free == 0)
		return -ENOSPC;
	uint32_t idx = p->free_list[--p->n_free];
	p->refs[idx] = 1;
	if (++p->gen[idx] == 0) /* a tag is never 0 */
		p->gen[idx] = 1;
	return (int)idx;
}

void dp_kv_pool_hold(struct dp_kv_pool *p, uint32_t idx)
{
	assert(idx < p->n_pages && p->refs[idx] > 0 && p->refs[idx] < UINT32_MAX);
	p->refs[idx]++;
}

uint64_t dp_kv_pool_tag(const struct dp_kv_pool *p, uint32_t idx)
{
	assert(idx < p->n_pages && p->refs[idx] > 0);
	return (uint64_t)p->gen[idx] << 32 | idx;
}

int dp_kv_pool_share(struct dp_kv_pool *p, uint64_t tag)
{
	uint32_t idx = (uint32_t)tag, gen = (uint32_t)(tag >> 32);
	if (!gen || idx >= p->n_pages || !p->refs[idx] || p->gen[idx] != gen ||
	    p->refs[idx] == UINT32_MAX)
		return -ENOENT;
	p->refs[idx]++;
	return (int)idx;
}

void dp_kv_pool_put(struct dp_kv_pool *p, uint32_t idx)
{
	assert(idx < p->n_pages && p->refs[idx] > 0);
	if (--p->refs[idx] == 0)
		p->free_list[p->n_free++] = idx;
}

/* ---- slot file ---------------------------------------------------------------- */

struct file_header {
	char magic[8];
	uint32_t version;
	uint32_t header_bytes;
	uint32_t page_bytes;
	uint32_t reserved;
	uint64_t sum; /* xxh3 of the fields above */
};

struct page_header {
	char magic[8];
	uint32_t version;
	uint32_t page_bytes;
	char session[DP_KV_SESSION_ID_MAX + 8];
	uint64_t position;
	uint32_t layer;
	uint32_t kind;
	uint32_t index;
	uint32_t zero_tail; /* bytes at the page's end that are zero and were not
			     * written: whole 4 KiB blocks, never the whole page
			     * (0 in files of builds before it) */
	uint64_t data_sum;  /* xxh3 of the whole page, the zero tail included */
	uint64_t sum; /* xxh3 of the fields above */
};

_Static_assert(sizeof(struct page_header) <= DP_KV_HDR_BYTES, "page header fits its block");

static off_t slot_offset(uint64_t slot)
{
	return (off_t)(DP_KV_HDR_BYTES + slot * (uint64_t)DP_KV_SLOT_BYTES);
}

static int pwrite_full(int fd, const struct iovec *iov, int n, off_t off)
{
	size_t total = 0;
	for (int i = 0; i < n; i++)
		total += iov[i].iov_len;
	for (size_t done = 0; done < total;) {
		ssize_t w = pwritev(fd, iov, n, off);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (w == 0)
			return -EIO;
		if ((size_t)w == total)
			break;
		return -EIO; /* short O_DIRECT write: treat as an error */
	}
	return 0;
}

static int pread_full(int fd, const struct iovec *iov, int n, off_t off)
{
	size_t total = 0;
	for (int i = 0; i < n; i++)
		total += iov[i].iov_len;
	for (;;) {
		ssize_t r = preadv(fd, iov, n, off);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		return (size_t)r == total ? 0 : -EBADMSG; /* short: torn or truncated */
	}
}

static int file_header_check_or_write(struct dp_kv_slots *sl, const char *path, char *err,
				      size_t err_len)
{
	struct stat st;
	if (fstat(sl->fd, &st) < 0)
		return -errno;
	struct file_header *fh = sl->hdr;
	struct iovec iov = { sl->hdr, DP_KV_HDR_BYTES };
	if (st.st_size == 0) {
		memset(sl->hdr, 0, DP_KV_HDR_BYTES);
		memcpy(fh->magic, DP_KV_FILE_MAGIC, 8);
		fh->version = DP_KV_FORMAT_VERSION;
		fh->header_bytes = DP_KV_HDR_BYTES;
		fh->page_bytes = DP_KV_PAGE_BYTES;
		fh->sum = XXH3_64bits(fh, offsetof(struct file_header, sum));
		int ret = pwrite_full(sl->fd, &iov, 1, 0);
		if (ret == 0 && fsync(sl->fd) < 0)
			ret = -errno;
		if (ret < 0 && err && err_len)
			snprintf(err, err_len, "cannot write %s: %s", path, strerror(-ret));
		return ret;
	}
	int ret = pread_full(sl->fd, &iov, 1, 0);
	if (ret < 0 || memcmp(fh->magic, DP_KV_FILE_MAGIC, 8) != 0 ||
	    fh->sum != XXH3_64bits(fh, offsetof(struct file_header, sum))) {
		if (err && err_len)
			snprintf(err, err_len, "%s is not a dualpath slot file (bad header); move it away",
				 path);
		return -EBADMSG;
	}
	if (fh->version != DP_KV_FORMAT_VERSION || fh->header_bytes != DP_KV_HDR_BYTES ||
	    fh->page_bytes != DP_KV_PAGE_BYTES) {
		if (err && err_len)
			snprintf(err, err_len, "%s has format version %u (pages %u bytes); this build "
				 "reads version %u with %u-byte pages: move the state directory away "
				 "or use a matching build", path, fh->version, fh->page_bytes,
				 DP_KV_FORMAT_VERSION, DP_KV_PAGE_BYTES);
		return -EPROTO;
	}
	uint64_t body = (uint64_t)st.st_size > DP_KV_HDR_BYTES ? (uint64_t)st.st_size - DP_KV_HDR_BYTES : 0;
	sl->n_slots = body / DP_KV_SLOT_BYTES;
	return 0;
}

int dp_kv_slots_open(struct dp_kv_slots *sl, int dirfd, const char *dir, bool direct,
		     uint64_t max_bytes, struct dp_io *io, char *err, size_t err_len)
{
	char path[4200];
	int ret;

	memset(sl, 0, sizeof(*sl));
	sl->fd = -1;
	sl->max_slots = max_bytes / DP_KV_SLOT_BYTES;
	snprintf(path, sizeof(path), "%s/%s", dir, DP_KV_SLOTS_FILE);
	if (posix_memalign(&sl->hdr, 4096, DP_KV_HDR_BYTES))
		return -ENOMEM;
	for (int attempt = 0;; attempt++) {
		if (direct) {
			sl->fd = dp_kv_state_openat(dirfd, dir, DP_KV_SLOTS_FILE,
						    O_RDWR | O_CREAT | O_DIRECT, err, err_len);
			if (sl->fd >= 0)
				sl->direct = true;
			else if (sl->fd != -EINVAL)
				goto fail;
			else if (err && err_len)
				err[0] = '\0';
			/* EINVAL: the filesystem has no O_DIRECT (tmpfs): buffered below */
		}
		if (sl->fd < 0)
			sl->fd = dp_kv_state_openat(dirfd, dir, DP_KV_SLOTS_FILE, O_RDWR | O_CREAT, err,
						    err_len);
		if (sl->fd < 0)
			goto fail;
		ret = file_header_check_or_write(sl, path, err, err_len);
		if (ret == -EBADMSG && attempt == 0) {
			/* A damaged header (not another version's: that one is
			 * refused) loses the pages, not the sessions: their
			 * histories rebuild the state. Keep the file, start a new
			 * one; the caller forgets the snapshots (sl->reset). */
			close(sl->fd);
			sl->fd = -1;
			sl->direct = false;
			ret = dp_kv_state_set_aside(dirfd, DP_KV_SLOTS_FILE, NULL, 0, sl->reset_name,
						    sizeof(sl->reset_name));
			if (ret < 0) {
				if (err && err_len)
					snprintf(err, err_len, "%s has a damaged header and cannot be set "
						 "aside: %s; move it away", path, strerror(-ret));
				dp_kv_slots_close(sl);
				return ret;
			}
			sl->reset = true;
			if (err && err_len)
				err[0] = '\0';
			continue;
		}
		if (ret < 0) {
			dp_kv_slots_close(sl);
			return ret;
		}
		break;
	}
	sl->used = calloc((sl->n_slots + 7) / 8 + 1, 1);
	sl->refs = calloc(sl->n_slots ? sl->n_slots : 1, sizeof(*sl->refs));
	sl->gen = calloc(sl->n_slots ? sl->n_slots : 1, sizeof(*sl->gen));
	if (!sl->used || !sl->refs || !sl->gen) {
		dp_kv_slots_close(sl);
		return -ENOMEM;
	}
	if (io) {
		ret = dp_io_file_add(io, sl->fd, &sl->io_file);
		if (ret == 0 && (ret = dp_io_chan_new(io, 0, &sl->chan)) < 0)
			dp_io_file_remove(io, sl->io_file);
		if (ret < 0) {
			if (err && err_len)
				snprintf(err, err_len, "cannot hand %s to the io engine: %s", path,
					 strerror(-ret));
			dp_kv_slots_close(sl);
			return ret;
		}
		/* only now: closing a file never added must not remove file 0 */
		sl->io = io;
	}
	return 0;
fail:
	ret = sl->fd; /* dp_kv_state_openat wrote the message */
	sl->fd = -1;
	dp_kv_slots_close(sl);
	return ret;
}

void dp_kv_slots_close(struct dp_kv_slots *sl)
{
	if (sl->io) {
		dp_io_chan_free(sl->chan);
		dp_io_file_remove(sl->io, sl->io_file);
	}
	if (sl->fd >= 0)
		close(sl->fd);
	free(sl->used);
	free(sl->refs);
	free(sl->gen);
	free(sl->tab);
	free(sl->hdr);
	memset(sl, 0, sizeof(*sl));
	sl->fd = -1;
}

static bool bit(const uint8_t *b, uint64_t i)
{
	return b[i / 8] & (1u << (i % 8));
}

static int grow(struct dp_kv_slots *sl)
{
	uint64_t n = sl->n_slots + DP_KV_SLOT_GROW;
	if (sl->max_slots && n > sl->max_slots)
		n = sl->max_slots;
	if (n <= sl->n_slots)
		return -ENOSPC;
	/* reserve the blocks now: a full disk shows here, not mid-write */
	int r = posix_fallocate(sl->fd, slot_offset(sl->n_slots), slot_offset(n) - slot_offset(sl->n_slots));
	if (r == EOPNOTSUPP || r == EINVAL)
		r = ftruncate(sl->fd, slot_offset(n)) < 0 ? errno : 0;
	if (r)
		return -r;
	/* bits past n_slots were never set, so only the new bytes need zeroing */
	size_t old_bytes = (sl->n_slots + 7) / 8 + 1, new_bytes = (n + 7) / 8 + 1;
	uint8_t *u = realloc(sl->used, new_bytes);
	if (!u)
		return -ENOMEM;
	memset(u + old_bytes, 0, new_bytes - old_bytes);
	sl->used = u;
	uint32_t *refs = realloc(sl->refs, n * sizeof(*refs));
	if (!refs)
		return -ENOMEM;
	sl->refs = refs;
	uint32_t *gen = realloc(sl->gen, n * sizeof(*gen));
	if (!gen)
		return -ENOMEM;
	sl->gen = gen;
	memset(refs + sl->n_slots, 0, (n - sl->n_slots) * sizeof(*refs));
	memset(gen + sl->n_slots, 0, (n - sl->n_slots) * sizeof(*gen));
	sl->n_slots = n;
	return 0;
}

int dp_kv_slots_alloc(struct dp_kv_slots *sl, uint64_t *ret_slot)
{
	if (sl->n_used == sl->n_slots) {
		int r = grow(sl);
		if (r < 0)
			return r;
	}
	for (uint64_t k = 0; k < sl->n_slots; k++) {
		uint64_t i = (sl->hint + k) % sl->n_slots;
		if (!bit(sl->used, i)) {
			sl->used[i / 8] |= (uint8_t)(1u << (i % 8));
			sl->refs[i] = 1;
			sl->gen[i]++;
			sl->n_used++;
			sl->hint = i + 1;
			*ret_slot = i;
			return 0;
		}
	}
	return -ENOSPC;
}

void dp_kv_slots_mark(struct dp_kv_slots *sl, uint64_t slot)
{
	while (slot >= sl->n_slots)
		if (grow(sl) < 0)
			return;
	if (!bit(sl->used, slot)) {
		sl->used[slot / 8] |= (uint8_t)(1u << (slot % 8));
		sl->gen[slot]++;
		sl->n_used++;
	}
	sl->refs[slot]++;
}

void dp_kv_slots_hold(struct dp_kv_slots *sl, uint64_t slot)
{
	assert(slot < sl->n_slots && sl->refs[slot] > 0 && sl->refs[slot] < UINT32_MAX);
	sl->refs[slot]++;
}

void dp_kv_slots_free(struct dp_kv_slots *sl, uint64_t slot)
{
	if (slot < sl->n_slots && bit(sl->used, slot) && --sl->refs[slot] == 0) {
		sl->used[slot / 8] &= (uint8_t)~(1u << (slot % 8));
		sl->n_used--;
	}
}

/* ---- the content index (kvcache-internal.h, "Shared slots") ------------------
 * Open addressing, linear probing, at most half full; deletion shifts the
 * run back (no tombstones). An entry is live while its slot is held under
 * the generation it was indexed with. */

static uint64_t key_hash(const struct dp_kv_slot_key *k)
{
	uint64_t h = k->sum ^ (k->domain * 0x9E3779B97F4A7C15ull) ^
		     ((((uint64_t)k->layer << 40) | ((uint64_t)k->kind << 32) | k->index) *
		      0xC2B2AE3D27D4EB4Full);
	h ^= h >> 29;
	h *= 0xBF58476D1CE4E5B9ull;
	return h ^ (h >> 32);
}

static bool key_eq(const struct dp_kv_slot_key *a, const struct dp_kv_slot_key *b)
{
	return a->sum == b->sum && a->domain == b->domain && a->index == b->index &&
	       a->layer == b->layer && a->kind == b->kind;
}

static bool entry_live(const struct dp_kv_slots *sl, const struct dp_kv_slot_entry *e)
{
	return e->slot < sl->n_slots && sl->refs[e->slot] > 0 && sl->gen[e->slot] == e->gen;
}

/* The position of k's entry, or of the free cell where it would go. */
static uint64_t tab_probe(const struct dp_kv_slots *sl, const struct dp_kv_slot_key *k)
{
	uint64_t mask = sl->tab_cap - 1, i = key_hash(k) & mask;
	while (sl->tab[i].used && !key_eq(&sl->tab[i].k, k))
		i = (i + 1) & mask;
	return i;
}

static void tab_delete(struct dp_kv_slots *sl, uint64_t i)
{
	uint64_t mask = sl->tab_cap - 1;
	for (uint64_t j = (i + 1) & mask; sl->tab[j].used; j = (j + 1) & mask) {
		uint64_t h = key_hash(&sl->tab[j].k) & mask;
		/* j's entry may fill the hole at i unless its home lies in (i, j] */
		bool stays = i <= j ? (h > i && h <= j) : (h > i || h <= j);
		if (!stays) {
			sl->tab[i] = sl->tab[j];
			i = j;
		}
	}
	sl->tab[i].used = false;
	sl->tab_n--;
}

/* Room for one more entry: stale ones dropped first, then twice the cells. */
static int tab_room(struct dp_kv_slots *sl)
{
	if (sl->tab_cap && (sl->tab_n + 1) * 2 <= sl->tab_cap)
		return 0;
	for (uint64_t i = 0; i < sl->tab_cap;)
		if (sl->tab[i].used && !entry_live(sl, &sl->tab[i]))
			tab_delete(sl, i); /* what moved into i is looked at next */
		else
			i++;
	if (sl->tab_cap && (sl->tab_n + 1) * 2 <= sl->tab_cap)
		return 0;
	uint64_t cap = sl->tab_cap ? 2 * sl->tab_cap : 1024;
	struct dp_kv_slot_entry *old = sl->tab, *t = calloc(cap, sizeof(*t));
	if (!t)
		return -ENOMEM;
	uint64_t old_cap = sl->tab_cap;
	sl->tab = t;
	sl->tab_cap = cap;
	for (uint64_t i = 0; i < old_cap; i++)
		if (old[i].used)
			sl->tab[tab_probe(sl, &old[i].k)] = old[i];
	free(old);
	return 0;
}

int dp_kv_slots_find(struct dp_kv_slots *sl, const struct dp_kv_slot_key *k, uint64_t *ret_slot)
{
	if (!sl->tab_n)
		return -ENOENT;
	uint64_t i = tab_probe(sl, k);
	if (!sl->tab[i].used)
		return -ENOENT;
	if (!entry_live(sl, &sl->tab[i])) {
		tab_delete(sl, i);
		return -ENOENT;
	}
	if (sl->refs[sl->tab[i].slot] == UINT32_MAX)
		return -ENOENT; /* as many holders as it can count */
	*ret_slot = sl->tab[i].slot;
	return 0;
}

void dp_kv_slots_index(struct dp_kv_slots *sl, uint64_t slot, const struct dp_kv_slot_key *k)
{
	if (slot >= sl->n_slots || !sl->refs[slot] || tab_room(sl) < 0)
		return;
	uint64_t i = tab_probe(sl, k);
	if (sl->tab[i].used && entry_live(sl, &sl->tab[i]))
		return; /* another slot with the same bytes: it stays the one shared */
	if (!sl->tab[i].used)
		sl->tab_n++;
	sl->tab[i] = (struct dp_kv_slot_entry){ .k = *k, .slot = slot, .gen = sl->gen[slot],
						.used = true };
}

void dp_kv_slots_unindex(struct dp_kv_slots *sl, uint64_t slot, const struct dp_kv_slot_key *k)
{
	if (!sl->tab_n)
		return;
	uint64_t i = tab_probe(sl, k);
	if (sl->tab[i].used && sl->tab[i].slot == slot)
		tab_delete(sl, i);
}

/* The zero bytes at the page's end, in whole 4 KiB blocks (O_DIRECT's
 * unit), all but the first block at most: a compressor buffer or a growing
 * stream's last page holds a few rows of its 64 KiB, and only those are
 * written (the sum still covers the whole page). */
static uint32_t zero_tail_of(const void *page)
{
	const unsigned char *p = page;
	uint32_t end = DP_KV_PAGE_BYTES;
	while (end > 4096) {
		const uint64_t *w = (const uint64_t *)(const void *)(p + end - 4096);
		uint64_t any = 0;
		for (size_t i = 0; i < 4096 / sizeof(*w); i++)
			any |= w[i];
		if (any)
			break;
		end -= 4096;
	}
	return DP_KV_PAGE_BYTES - end;
}

static void fill_header(struct page_header *h, const struct dp_kv_slot_id *id, uint64_t data_sum,
			uint32_t zero_tail)
{
	memset(h, 0, sizeof(*h));
	memcpy(h->magic, DP_KV_SLOT_MAGIC, 8);
	h->version = DP_KV_FORMAT_VERSION;
	h->page_bytes = DP_KV_PAGE_BYTES;
	snprintf(h->session, sizeof(h->session), "%s", id->session);
	h->position = id->position;
	h->layer = id->layer;
	h->kind = id->kind;
	h->index = id->index;
	h->zero_tail = zero_tail;
	h->data_sum = data_sum;
	h->sum = XXH3_64bits(h, offsetof(struct page_header, sum));
}

/* Per batch: the headers of its slots, 4 KiB each. */
static void *headers_alloc(size_t n)
{
	void *h = NULL;
	if (posix_memalign(&h, 4096, (n ? n : 1) * DP_KV_HDR_BYTES))
		return NULL;
	memset(h, 0, (n ? n : 1) * DP_KV_HDR_BYTES);
	return h;
}

/* Run reqs through the engine, at most half a channel's window at a time so
 * every result is read before it could be recycled; 0 or the first error. */
static int io_run(struct dp_kv_slots *sl, const struct dp_io_req *reqs, size_t n)
{
	size_t step = dp_io_chan_depth(sl->chan) / 2;
	int err = 0;
	for (size_t done = 0; done < n;) {
		size_t k = n - done < step ? n - done : step, queued = 0;
		uint64_t first = 0, t;
		while (queued < k) {
			int r = dp_io_submit(sl->chan, reqs + done + queued, (uint32_t)(k - queued), &t);
			if (r == -EAGAIN) {
				dp_io_wait(sl->chan, dp_io_completed(sl->chan), -1);
				continue;
			}
			if (r < 0)
				return r;
			if (queued == 0)
				first = t;
			queued += (size_t)r;
		}
		int r = dp_io_wait(sl->chan, first + k - 1, -1);
		if (r < 0)
			return r;
		for (size_t i = 0; i < k; i++) {
			int32_t res;
			if (dp_io_result(sl->chan, first + i, &res) < 0 || res < 0) {
				if (!err)
					err = res < 0 ? res : -EIO;
			} else if (reqs[done + i].op <= DP_IO_OP_WRITE && (uint32_t)res != reqs[done + i].len) {
				/* short: a read past the end is a torn or truncated file */
				if (!err)
					err = reqs[done + i].op == DP_IO_OP_READ ? -EBADMSG : -EIO;
			}
		}
		done += k;
	}
	return err;
}

void *dp_kv_slots_headers_alloc(size_t n)
{
	return headers_alloc(n);
}

int dp_kv_slots_write_reqs(struct dp_kv_slots *sl, const uint64_t *slots,
			   const struct dp_kv_slot_id *ids, void *const *pages, size_t n,
			   const uint64_t *sums, uint8_t *hdrs, struct dp_io_req *reqs)
{
	if (!sl->io)
		return -EINVAL;
	for (size_t i = 0; i < n; i++)
		if (slots[i] >= sl->n_slots || !bit(sl->used, slots[i]))
			return -EINVAL;
	for (size_t i = 0; i < n; i++) {
		uint32_t tail = zero_tail_of(pages[i]);
		fill_header((struct page_header *)(hdrs + i * DP_KV_HDR_BYTES), &ids[i], sums[i], tail);
		uint64_t off = (uint64_t)slot_offset(slots[i]);
		reqs[2 * i] = (struct dp_io_req){ .op = DP_IO_OP_WRITE, .file = sl->io_file,
						  .offset = off, .addr = hdrs + i * DP_KV_HDR_BYTES,
						  .len = DP_KV_HDR_BYTES };
		reqs[2 * i + 1] = (struct dp_io_req){ .op = DP_IO_OP_WRITE, .file = sl->io_file,
						      .offset = off + DP_KV_HDR_BYTES,
						      .addr = pages[i], .len = DP_KV_PAGE_BYTES - tail };
	}
	/* durable once every write before it is: a barrier sync */
	reqs[2 * n] = (struct dp_io_req){ .op = DP_IO_OP_FDATASYNC, .flags = DP_IO_F_BARRIER,
					  .file = sl->io_file };
	return 0;
}

int dp_kv_slots_write_many(struct dp_kv_slots *sl, const uint64_t *slots,
			   const struct dp_kv_slot_id *ids, void *const *pages, size_t n,
			   const uint64_t *sums)
{
	for (size_t i = 0; i < n; i++)
		if (slots[i] >= sl->n_slots || !bit(sl->used, slots[i]))
			return -EINVAL;
	uint8_t *hdrs = headers_alloc(n);
	struct dp_io_req *reqs = sl->io ? calloc(2 * n + 1, sizeof(*reqs)) : NULL;
	int ret = 0;
	if (!hdrs || (sl->io && !reqs)) {
		free(hdrs);
		free(reqs);
		return -ENOMEM;
	}
	if (!sl->io) {
		for (size_t i = 0; i < n && ret == 0; i++) {
			uint32_t tail = zero_tail_of(pages[i]);
			fill_header((struct page_header *)(hdrs + i * DP_KV_HDR_BYTES), &ids[i], sums[i],
				    tail);
			struct iovec iov[2] = { { hdrs + i * DP_KV_HDR_BYTES, DP_KV_HDR_BYTES },
						{ pages[i], DP_KV_PAGE_BYTES - tail } };
			ret = pwrite_full(sl->fd, iov, 2, slot_offset(slots[i]));
		}
		if (ret == 0 && fdatasync(sl->fd) < 0)
			ret = -errno;
	} else if ((ret = dp_kv_slots_write_reqs(sl, slots, ids, pages, n, sums, hdrs, reqs)) == 0) {
		ret = io_run(sl, reqs, 2 * n + 1);
	}
	free(hdrs);
	free(reqs);
	return ret;
}

int dp_kv_slot_check_hashed(const struct dp_kv_slot_id *id, uint64_t sum, const void *hdr,
			    void *page, const uint64_t *page_hash)
{
	/* a whole header of this format naming this page (layer, kind, index)
	 * with these bytes: a page of another layer or version, or a torn
	 * write that left the old header, is not this page. The writer's
	 * session and position are not compared: a shared slot was written by
	 * another snapshot (kvcache-internal.h, "Shared slots"), and the data
	 * checksum already says the bytes are the ones the snapshot recorded. */
	struct page_header got, want;
	memcpy(&got, hdr, sizeof(got));
	if (got.zero_tail % 4096 || got.zero_tail >= DP_KV_PAGE_BYTES)
		return -EBADMSG;
	fill_header(&want, id, sum, got.zero_tail);
	memcpy(want.session, got.session, sizeof(want.session));
	want.position = got.position;
	want.sum = XXH3_64bits(&want, offsetof(struct page_header, sum));
	if (memcmp(&got, &want, sizeof(want)) != 0)
		return -EBADMSG;
	if (got.zero_tail) { /* not written: whatever the slot held before is there */
		memset((char *)page + DP_KV_PAGE_BYTES - got.zero_tail, 0, got.zero_tail);
		page_hash = NULL; /* it hashed those bytes */
	}
	if ((page_hash ? *page_hash : XXH3_64bits(page, DP_KV_PAGE_BYTES)) != sum)
		return -EBADMSG;
	return (int)got.zero_tail;
}

int dp_kv_slot_check(const struct dp_kv_slot_id *id, uint64_t sum, const void *hdr, void *page)
{
	return dp_kv_slot_check_hashed(id, sum, hdr, page, NULL);
}

int dp_kv_slots_read_many(struct dp_kv_slots *sl, const uint64_t *slots,
			  const struct dp_kv_slot_id *ids, const uint64_t *sums, void *const *pages,
			  size_t n, size_t *ret_bad)
{
	uint8_t *hdrs = headers_alloc(n);
	struct dp_io_req *reqs = sl->io ? calloc(2 * n, sizeof(*reqs)) : NULL;
	size_t bad = 0;
	int ret = 0;
	if (!hdrs || (sl->io && !reqs)) {
		free(hdrs);
		free(reqs);
		return -ENOMEM;
	}
	for (size_t i = 0; i < n; i++)
		if (slots[i] >= sl->n_slots)
			ret = -EBADMSG; /* a slot past the end: the file lost its tail */
	if (ret == 0 && !sl->io) {
		for (size_t i = 0; i < n && (ret == 0 || ret == -EBADMSG); i++) {
			struct iovec iov[2] = { { hdrs + i * DP_KV_HDR_BYTES, DP_KV_HDR_BYTES },
						{ pages[i], DP_KV_PAGE_BYTES } };
			int r = pread_full(sl->fd, iov, 2, slot_offset(slots[i]));
			if (r < 0)
				ret = r;
		}
	} else if (ret == 0) {
		for (size_t i = 0; i < n; i++) {
			off_t off = slot_offset(slots[i]);
			reqs[2 * i] = (struct dp_io_req){ .op = DP_IO_OP_READ, .file = sl->io_file,
							  .offset = (uint64_t)off,
							  .addr = hdrs + i * DP_KV_HDR_BYTES,
							  .len = DP_KV_HDR_BYTES };
			reqs[2 * i + 1] = (struct dp_io_req){ .op = DP_IO_OP_READ, .file = sl->io_file,
							      .offset = (uint64_t)off + DP_KV_HDR_BYTES,
							      .addr = pages[i], .len = DP_KV_PAGE_BYTES };
		}
		ret = io_run(sl, reqs, 2 * n);
	}
	if (ret == -EBADMSG)
		bad = n; /* torn or truncated: none of it is trusted */
	for (size_t i = 0; ret == 0 && i < n; i++)
		if (dp_kv_slot_check(&ids[i], sums[i], hdrs + i * DP_KV_HDR_BYTES, pages[i]) < 0)
			bad++;
	free(hdrs);
	free(reqs);
	if (ret_bad)
		*ret_bad = bad;
	if (ret == 0 && bad)
		ret = -EBADMSG;
	return ret;
}
