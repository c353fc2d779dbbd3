/*
 * ragkv/blobstore.h — the blob store interface (where chunk bytes live) and its backends.
 *
 * A blob store maps byte-string keys to byte-string values in a few separate key spaces
 * (CC_SPACE_*). It knows nothing about chunks, tenants or metadata: chunkcache/ frames its
 * values (see record.h) and decides what to keep. Two backends pass one conformance suite
 * (tests/chunkcache/test_conformance.c):
 *
 * - RocksDB (cc_blobstore_rocksdb_open): one column family per space, values of at least
 *   `min_blob_size` bytes go to RocksDB's integrated blob files (BlobDB), WAL always on,
 *   `sync` makes every put durable before it returns, an LRU block cache, and reads through
 *   rocksdb_get_pinned so a value reaches the caller without a copy.
 * - in-memory (cc_blobstore_mem_open): hash maps, for tests and tools.
 *
 * Values come back as refcounted cc_buf, so the RAM tier can hand the same bytes to many
 * readers without copying:
 *
 *     cc_blobstore bs;
 *     cc_blobstore_opts o = cc_blobstore_opts_default();
 *     if (cc_blobstore_rocksdb_open("/var/lib/ragkv/blobs", &o, &bs) != RK_OK) ...;
 *     const cc_iov parts[2] = {{hdr, hdr_len}, {blob, blob_len}};
 *     cc_blobstore_put(&bs, CC_SPACE_CHUNKS, key, 40, parts, 2);
 *     cc_buf *v;
 *     if (cc_blobstore_get(&bs, CC_SPACE_CHUNKS, key, 40, &v) == RK_OK) { use(v->data, v->len); cc_buf_release(v); }
 *     cc_blobstore_close(&bs);
 */
#ifndef RAGKV_BLOBSTORE_H
#define RAGKV_BLOBSTORE_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ragkv/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- refcounted byte buffer ------------------------------------------------------------ */

/* Read-only bytes shared by reference count. The creator holds one reference; every holder
 * calls cc_buf_release once; the last release runs `destroy`. Thread-safe. */
typedef struct cc_buf {
    const uint8_t *data;  /* the bytes (len of them); valid while a reference is held */
    size_t len;           /* number of bytes at data */
    atomic_int refs;      /* holders; the buffer is freed when it drops to 0 */
    void (*destroy)(struct cc_buf *b); /* frees the buffer and what backs it */
    void *owner;          /* what backs data (malloc block, RocksDB pinned slice, parent cc_buf) */
} cc_buf;

/* A buffer holding a copy of n bytes (refs = 1). NULL when out of memory. */
cc_buf *cc_buf_copy(const void *data, size_t n);

/* A buffer holding a copy of n bytes in page-locked host memory (rk_gpu_host_alloc: a CUDA
 * device copies out of it by DMA, asynchronously). NULL when there is no such memory (no
 * device, no CUDA in the build, the driver refuses; rk_error_msg() says) or out of memory. */
cc_buf *cc_buf_copy_locked(const void *data, size_t n);

/* A buffer that owns `data` (allocated with rk_malloc) and frees it at the end. */
cc_buf *cc_buf_wrap(void *data, size_t n);

/* A view of [off, off+n) of parent that holds a reference on parent (no copy). NULL when
 * out of memory or out of range. */
cc_buf *cc_buf_slice(cc_buf *parent, size_t off, size_t n);

/* Take another reference. Returns b. */
cc_buf *cc_buf_ref(cc_buf *b);

/* Drop a reference; NULL is a no-op. */
void cc_buf_release(cc_buf *b);

/* ---- the interface ---------------------------------------------------------------------- */

typedef enum cc_space {
    CC_SPACE_CHUNKS = 0, /* framed chunk records + blobs, key = chunk key || blob checksum */
    CC_SPACE_CONFIG = 1, /* tenant configuration and grants (survives metadata loss) */
    CC_SPACE_META = 2,   /* the embedded metadata store's own tables */
    CC_SPACE_COUNT = 3,
} cc_space;

/* One piece of a value written in parts (gathered without a copy where the backend can). */
typedef struct cc_iov {
    const void *base; /* bytes of this part */
    size_t len;       /* their number */
} cc_iov;

/* Called once per entry by scan; return non-zero to stop early. key/val are borrowed for the
 * duration of the call. */
typedef int (*cc_scan_fn)(void *arg, const uint8_t *key, size_t klen, const uint8_t *val,
                          size_t vlen);

/* Backend operations. Every slot is required; all are safe to call from many threads. */
struct cc_blobstore_i {
    const char *name; /* "rocksdb", "mem" */
    /* Store the concatenation of parts[0..nparts) under key (replacing any value). Durable
     * per the backend's sync option when it returns RK_OK. RK_ERR_STORE on backend failure. */
    rk_status (*put)(void *ctx, cc_space sp, const void *key, size_t klen, const cc_iov *parts,
                     size_t nparts);
    /* The value of key as a new reference (*out, caller releases); RK_ERR_NOT_FOUND. */
    rk_status (*get)(void *ctx, cc_space sp, const void *key, size_t klen, cc_buf **out);
    /* Remove key; removing a missing key is RK_OK. */
    rk_status (*del)(void *ctx, cc_space sp, const void *key, size_t klen);
    /* Atomically apply puts and deletes (vals[i] == NULL means delete keys[i]). */
    rk_status (*write_batch)(void *ctx, cc_space sp, size_t n, const cc_iov *keys,
                             const cc_iov *vals);
    /* Visit every entry of the space in key order (a consistent snapshot for RocksDB). */
    rk_status (*scan)(void *ctx, cc_space sp, cc_scan_fn fn, void *arg);
    /* Bytes held by the space's live values (exact for mem, estimated for RocksDB). */
    rk_status (*usage)(void *ctx, cc_space sp, uint64_t *bytes);
    /* Release everything. */
    void (*close)(void *ctx);
};

/* A blob store: interface + backend context. Owned by whoever opened it. */
typedef struct cc_blobstore {
    const struct cc_blobstore_i *iface; /* backend operations */
    void *ctx;                          /* backend state, passed to every operation */
} cc_blobstore;

static inline rk_status cc_blobstore_put(cc_blobstore *b, cc_space sp, const void *k, size_t kl,
                                         const cc_iov *parts, size_t n)
{
    return b->iface->put(b->ctx, sp, k, kl, parts, n);
}
static inline rk_status cc_blobstore_get(cc_blobstore *b, cc_space sp, const void *k, size_t kl,
                                         cc_buf **out)
{
    return b->iface->get(b->ctx, sp, k, kl, out);
}
static inline rk_status cc_blobstore_del(cc_blobstore *b, cc_space sp, const void *k, size_t kl)
{
    return b->iface->del(b->ctx, sp, k, kl);
}
static inline rk_status cc_blobstore_write_batch(cc_blobstore *b, cc_space sp, size_t n,
                                                 const cc_iov *keys, const cc_iov *vals)
{
    return b->iface->write_batch(b->ctx, sp, n, keys, vals);
}
static inline rk_status cc_blobstore_scan(cc_blobstore *b, cc_space sp, cc_scan_fn fn, void *arg)
{
    return b->iface->scan(b->ctx, sp, fn, arg);
}
static inline rk_status cc_blobstore_usage(cc_blobstore *b, cc_space sp, uint64_t *bytes)
{
    return b->iface->usage(b->ctx, sp, bytes);
}
/* Close the backend; a zeroed cc_blobstore (iface NULL) is a no-op. */
static inline void cc_blobstore_close(cc_blobstore *b)
{
    if (b && b->iface)
        b->iface->close(b->ctx);
    if (b) {
        b->iface = NULL;
        b->ctx = NULL;
    }
}

/* ---- backends --------------------------------------------------------------------------- */

/* RocksDB tuning. */
typedef struct cc_blobstore_opts {
    bool sync;                /* fsync the WAL on every write (default false: WAL, no fsync) */
    uint64_t block_cache_bytes; /* LRU block cache (default 64 MiB) */
    uint64_t blob_cache_bytes;  /* LRU cache for BlobDB values (default 0: none; the RAM tier caches) */
    uint64_t min_blob_size;   /* values this large go to blob files (default 4 KiB) */
    uint64_t blob_file_size;  /* target blob file size (default 256 MiB) */
    uint64_t write_buffer_bytes; /* memtable size (default 64 MiB) */
} cc_blobstore_opts;

cc_blobstore_opts cc_blobstore_opts_default(void);

/* Open (creating if needed) a RocksDB database in dir. opts NULL: defaults. *out is owned by
 * the caller (cc_blobstore_close). RK_ERR_STORE with RocksDB's message as detail (e.g. the
 * directory is locked by another process). */
rk_status cc_blobstore_rocksdb_open(const char *dir, const cc_blobstore_opts *opts,
                                    cc_blobstore *out);

/* An empty in-memory store. *out owned by the caller (cc_blobstore_close). */
rk_status cc_blobstore_mem_open(cc_blobstore *out);

#ifdef __cplusplus
}
#endif
#endif
