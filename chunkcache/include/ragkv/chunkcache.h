/*
 * ragkv/chunkcache.h — the chunk store: tiers, tenants, quotas, eviction, repair.
 *
 * A cc_store keeps compressed chunk KV caches (opaque blobs to this module) for many
 * tenants. Data lives in tiers:
 *
 *   device   decoded KV where the engine computes (engine KV blocks), a byte budget,
 *            referenced objects, GDSF eviction: a cc_devtier (ragkv/devtier.h) that the
 *            caller fills (the daemon's executor) and the store keeps valid — given one in
 *            cc_config.device, the store drops a chunk's entry whenever the chunk is deleted,
 *            evicted, expired, repaired, or its tenant deleted, and clears it at a rebuild.
 *   RAM      compressed blobs in host memory, ram_budget_bytes, refcounted (a get from this
 *            tier is a reference, not a copy), Greedy-Dual-Size-Frequency eviction.
 *   disk     the blob store (RocksDB; or in-memory for tests), disk_budget_bytes.
 *
 * Metadata (which chunks exist, owners, usage, quotas, grants) lives in the metadata store
 * (Redis, or embedded in the RocksDB database). Writes go blob -> metadata commit (atomic
 * quota check + insert) -> return; see docs/storage.md for the crash-consistency argument.
 *
 * Tenants: every call names the calling tenant (from the authenticated connection, never
 * from a request body). A tenant writes only its own namespace (ns == tenant); it reads its
 * own namespace and the shared namespaces granted to it. Shared corpora are namespaces with
 * their own account and quota, populated by calling put with tenant = the corpus name. A chunk
 * a tenant may not read is reported exactly like a missing one (RK_ERR_NOT_FOUND, same path).
 *
 *     cc_config cfg = cc_config_default();
 *     cfg.data_dir = "/var/lib/ragkv";  cfg.redis_host = "127.0.0.1";  cfg.redis_port = 6379;
 *     cc_store *st;
 *     if (cc_store_open(&cfg, &st) != RK_OK) die(rk_error_msg());
 *     cc_quota q = {.max_bytes = 10ull << 30, .max_chunks = 100000, .policy = CC_QUOTA_EVICT};
 *     cc_store_tenant_create(st, "acme", &q);
 *     cc_put_args a = {.model = "llama-3-8b", .tokens = toks, .ntokens = n,
 *                      .blob = kv, .blob_len = kv_len, .cost = prefill_ms};
 *     cc_key key;
 *     rk_status rc = cc_store_put(st, "acme", &a, &key);   // RK_ERR_QUOTA when over quota
 *     cc_buf *b;
 *     if (cc_store_get(st, "acme", &key, &b, NULL) == RK_OK) { decode(b->data, b->len); cc_buf_release(b); }
 *     cc_store_close(st);
 *
 * Thread safety: every function may be called from many threads at once, except the event-loop
 * variants at the end (…_async), which run on the thread of the cc_redis_async they are given.
 */
#ifndef RAGKV_CHUNKCACHE_H
#define RAGKV_CHUNKCACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ragkv/blobstore.h"
#include "ragkv/chunk_key.h"
#include "ragkv/devtier.h"
#include "ragkv/metastore.h"
#include "ragkv/record.h"
#include "ragkv/redis_async.h"
#include "ragkv/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct cc_store cc_store;

/* A tenant's quota and over-quota policy (0 = unlimited). */
typedef struct cc_quota {
    uint64_t max_bytes;     /* blob bytes */
    uint64_t max_chunks;    /* chunk count */
    cc_quota_policy policy; /* CC_QUOTA_REJECT or CC_QUOTA_EVICT (evict own chunks) */
} cc_quota;

typedef struct cc_config {
    const char *data_dir;         /* RocksDB directory; NULL = in-memory blob store */
    const char *redis_host;       /* NULL = embedded metadata (in the RocksDB database) */
    int redis_port;               /* Redis TCP port */
    const char *redis_prefix;     /* key prefix in Redis (default "rk:") */
    cc_redis_opts redis;          /* timeouts, retries, reply limits */
    cc_blobstore_opts rocks;      /* RocksDB tuning (sync, caches, blob files) */
    uint64_t ram_budget_bytes;    /* RAM tier budget (default 256 MiB; 0 disables the tier) */
    uint64_t disk_budget_bytes;   /* disk tier budget over all tenants (0 = unlimited) */
    cc_devtier *device;           /* device tier the store keeps valid (borrowed: outlives the
                                     store; NULL = none); its budget is its own */
    uint64_t gc_grace_ms;         /* orphan blobs younger than this survive gc (default 60000:
                                     a put may be between its blob and metadata writes) */
    uint32_t touch_batch;         /* reads buffered before a background thread sends their hit
                                     counts to metadata (default 64; 1 = each read, inline) */
    bool ram_on_put;              /* admit new chunks to the RAM tier (default true) */
    bool ram_page_locked;         /* keep the RAM tier's blobs in page-locked host memory, so
                                     that a CUDA loader's uploads from them are DMA, not staged
                                     (default false; ragkvd's ram-page-locked, whose
                                     default auto turns it on with a cuda backend).
                                     Without a device the blobs stay where they are */
} cc_config;

cc_config cc_config_default(void);

/* Open the store: the blob store (RocksDB in data_dir, or memory), the metadata store
 * (Redis, or embedded), and a rebuild of the metadata from a blob store scan when the
 * metadata store is not intact (a fresh or wiped Redis). *out owned by the caller
 * (cc_store_close). RK_ERR_STORE / RK_ERR_UNAVAILABLE / RK_ERR_INVALID. */
rk_status cc_store_open(const cc_config *cfg, cc_store **out);

/* Same with backends the caller opened (the conformance suite uses this). The store takes
 * ownership of bs and ms (also on failure) and closes ms first, then bs (so an embedded
 * metadata store may borrow bs). cfg->data_dir and cfg->redis_* are ignored. */
rk_status cc_store_open_with(const cc_config *cfg, cc_blobstore bs, cc_metastore ms, cc_store **out);

/* Flush buffered hit counts and close everything. NULL is a no-op. Buffers returned by
 * cc_store_get stay valid until released, even after close, EXCEPT those from a RocksDB
 * blob store: release them before closing. */
void cc_store_close(cc_store *s);

/* What to store. */
typedef struct cc_put_args {
    const char *ns;          /* namespace; NULL = the tenant's own (any other is RK_ERR_DENIED) */
    const char *model;       /* model id (part of the key) */
    const int32_t *tokens;   /* (ntokens) token ids of the chunk (part of the key) */
    size_t ntokens;
    uint16_t codec, level;   /* codec id and level of the blob */
    const void *blob;        /* (blob_len) the encoded KV container; copied */
    size_t blob_len;
    double cost;             /* recompute cost one hit saves (e.g. prefill ms); >= 0 */
    uint64_t ttl_ms;         /* 0 = no expiry */
    bool pinned;             /* never evicted (still counts against the quota) */
    const void *craft;       /* Cache-Craft metadata, opaque (may be NULL) */
    size_t craft_len;
    const void *variants;    /* Cache-Craft variants, opaque (may be NULL) */
    size_t variants_len;
} cc_put_args;

/* Store a chunk for tenant; *key (may be NULL) gets its key. Putting a chunk that is already
 * stored is RK_OK (the first writer's blob stays). RK_ERR_QUOTA when the tenant's quota
 * rejects it, RK_ERR_NOT_FOUND when the tenant does not exist, RK_ERR_DENIED for another
 * namespace, RK_ERR_INVALID for bad arguments. Durable (per rocks.sync) when it returns. */
rk_status cc_store_put(cc_store *s, const char *tenant, const cc_put_args *a, cc_key *key);

/* The blob of key as tenant sees it: *blob is a new reference (cc_buf_release), zero-copy
 * from the RAM tier; rec (may be NULL) gets the record (cc_record_clear). RK_ERR_NOT_FOUND
 * for a chunk that is missing, expired, corrupt (then repaired), or not readable by tenant. */
rk_status cc_store_get(cc_store *s, const char *tenant, const cc_key *key, cc_buf **blob, cc_record *rec);

/* Metadata-only batch lookup: present[i] = 1 when get(keys[i]) would find it (pipelined). */
rk_status cc_store_lookup(cc_store *s, const char *tenant, const cc_key *keys, size_t n, uint8_t *present);

/* Delete one of tenant's own chunks. RK_ERR_NOT_FOUND otherwise. */
rk_status cc_store_delete(cc_store *s, const char *tenant, const cc_key *key);

/*
 * The write path in steps, for callers that commit the metadata elsewhere (an event loop,
 * through cc_store_put_commit_async) while the blob write runs on a pool thread. The order
 * and the rules are cc_store_put's, which is built on the same pieces:
 *
 *     cc_put_txn *t;
 *     cc_store_put_write(s, tenant, &a, &t);     // pool thread: key, disk budget, the blob
 *     cc_store_put_commit_async(s, ra, t, done, ctx);   // loop: quota-checked insert
 *     ... done(ctx, t):
 *     if (cc_put_txn_blocking(t)) hand to a pool thread;   // blob deletes to do
 *     rk_status st = cc_store_put_finish(s, t, &key);      // then acknowledge
 *
 * Between the write and the commit the blob is an orphan (gc removes it if the process dies
 * there); finish deletes it again when the commit refused it (quota, no tenant, failure),
 * deletes the blobs of the chunks the commit evicted, admits the chunk to the RAM tier and
 * accounts it. A t must always be finished (that frees it).
 */
typedef struct cc_put_txn cc_put_txn;

/* Steps 1-3 of cc_store_put: check, key, room under the disk budget, the blob written.
 * Blocking (RocksDB, and metadata calls when a disk budget is set). On RK_OK *t is the pending
 * put (owned by the caller until cc_store_put_finish). Errors as cc_store_put's. */
rk_status cc_store_put_write(cc_store *s, const char *tenant, const cc_put_args *a, cc_put_txn **t);

/* The record the commit inserts (borrowed from t). */
const cc_record *cc_put_txn_record(const cc_put_txn *t);

/* The commit's outcome: RK_OK, RK_ERR_EXISTS (another writer was first), or its failure
 * (RK_ERR_QUOTA, RK_ERR_NOT_FOUND, RK_ERR_UNAVAILABLE, ...); RK_ERR_CANCELLED before one. */
rk_status cc_put_txn_status(const cc_put_txn *t);

/* Whether cc_store_put_finish has blocking work to do for this outcome (blob deletes: a
 * refused or failed commit, evicted chunks, a losing duplicate); when false it only touches
 * memory and may run on an event loop. */
bool cc_put_txn_blocking(const cc_put_txn *t);

/* Step 4 through the store's own metadata store, blocking, with cc_store_put's recovery: a
 * Redis that lost its data is rebuilt and the commit tried once more (the blob is deleted
 * before the rebuild and written again after, so a rebuild never admits it unchecked). */
void cc_store_put_commit(cc_store *s, cc_put_txn *t);

/* Step 4 through ra (the same INSERT script; see ragkv/redis_async.h) on ra's loop thread;
 * cb(arg, t) runs once on that thread with the outcome in t (for RK_ERR_EXISTS the stored
 * version's checksum is read too). An error returned here means cb will not run. */
typedef void (*cc_commit_done)(void *arg, cc_put_txn *t);
rk_status cc_store_put_commit_async(cc_store *s, cc_redis_async *ra, cc_put_txn *t, cc_commit_done cb, void *arg);

/* Steps 5-6: act on the commit's outcome (see above), free t, return the put's status as
 * cc_store_put would (RK_OK for a duplicate); *key (may be NULL) gets the key. */
rk_status cc_store_put_finish(cc_store *s, cc_put_txn *t, cc_key *key);

/* Event-loop variants of lookup and delete, over ra (on its thread), with exactly the checks
 * of cc_store_lookup / cc_store_delete: the same records, the same grant checks (one per key
 * that is not the tenant's own, a grant check on a key nobody has so that "absent" and
 * "another tenant's" cost the same round trips), expiry, damaged records counted. */
typedef void (*cc_lookup_done)(void *arg, rk_status st, const uint8_t *present, size_t n);
rk_status cc_store_lookup_async(cc_store *s, cc_redis_async *ra, const char *tenant, const cc_key *keys, size_t n,
                                cc_lookup_done cb, void *arg);

/* cc_store_lookup_async that keeps the records: cb gets present[i] as lookup's, and recs[i]
 * (borrowed for the call) the record of each present key (zeroed for the others) — what
 * cc_store_read then reads without asking the metadata again. */
typedef void (*cc_resolve_done)(void *arg, rk_status st, const cc_record *recs, const uint8_t *present, size_t n);
rk_status cc_store_resolve_async(cc_store *s, cc_redis_async *ra, const char *tenant, const cc_key *keys, size_t n,
                                 cc_resolve_done cb, void *arg);

/* The blob of a chunk resolved a moment ago (rec from cc_store_resolve_async, which checked
 * that the tenant may read it): the RAM tier when it holds that version, else the blob store,
 * checksum verified. RK_ERR_NOT_FOUND (a miss, repaired through the metadata store) when the
 * blob is missing or corrupt. Blocking (RocksDB); *blob a new reference (cc_buf_release). */
rk_status cc_store_read(cc_store *s, const cc_record *rec, cc_buf **blob);

/* The metadata half of cc_store_delete: cb gets RK_OK with the chunk removed from the metadata
 * (its blob still to delete: cc_store_apply_removed, blocking, before acknowledging), or
 * RK_ERR_NOT_FOUND / a failure. */
typedef void (*cc_delete_done)(void *arg, rk_status st, const cc_evlist *removed);
rk_status cc_store_delete_async(cc_store *s, cc_redis_async *ra, const char *tenant, const cc_key *key,
                                cc_delete_done cb, void *arg);

/* Chunks the metadata no longer has: delete their blobs, drop them from the RAM tier,
 * unaccount them. Blocking (RocksDB). */
void cc_store_apply_removed(cc_store *s, const cc_evlist *removed);

/* Tenants / shared namespaces. create: RK_ERR_EXISTS if present; delete removes its chunks
 * and grants; list: sorted names (cc_names_free). */
rk_status cc_store_tenant_create(cc_store *s, const char *name, const cc_quota *q);
rk_status cc_store_tenant_delete(cc_store *s, const char *name);
rk_status cc_store_tenant_list(cc_store *s, char ***names, size_t *n);
rk_status cc_store_tenant_usage(cc_store *s, const char *name, cc_tenant_info *out);
rk_status cc_store_quota_set(cc_store *s, const char *name, const cc_quota *q);
rk_status cc_store_quota_get(cc_store *s, const char *name, cc_quota *q);

/* Let tenant read namespace ns / stop it. RK_ERR_NOT_FOUND when either does not exist. */
rk_status cc_store_grant(cc_store *s, const char *ns, const char *tenant);
rk_status cc_store_revoke(cc_store *s, const char *ns, const char *tenant);

/* Remove expired chunks, enforce the disk budget, flush hit counts. *removed (may be NULL)
 * gets the number of chunks removed. */
rk_status cc_store_evict(cc_store *s, uint64_t *removed);

/* Push buffered hit counts to the metadata store. */
rk_status cc_store_flush(cc_store *s);

/* Drop every chunk from the RAM tier (for measurements and tests). */
void cc_store_drop_ram(cc_store *s);

/* Delete blobs no metadata points to (older than gc_grace_ms). *removed (may be NULL). */
rk_status cc_store_gc(cc_store *s, uint64_t *removed);

/* Rebuild the metadata from a scan of the blob store (tenant configuration, grants and
 * every chunk record), then mark it intact. Runs by itself when the store finds Redis
 * without its data. Blocks other calls while it runs. */
rk_status cc_store_rebuild(cc_store *s);

typedef struct cc_stats {
    uint64_t puts;            /* chunks admitted */
    uint64_t put_dups;        /* puts of chunks already present */
    uint64_t quota_rejects;   /* puts refused with RK_ERR_QUOTA */
    uint64_t gets;            /* get calls */
    uint64_t ram_hits;        /* served from the RAM tier */
    uint64_t disk_hits;       /* served from the blob store */
    uint64_t misses;          /* RK_ERR_NOT_FOUND answers */
    uint64_t corrupt;         /* blobs that failed their checksum (never served) */
    uint64_t repairs;         /* metadata removed because its blob was missing or corrupt */
    uint64_t evicted_quota;   /* chunks evicted to admit within a tenant quota */
    uint64_t evicted_disk;    /* chunks evicted for the disk budget */
    uint64_t expired;         /* chunks removed at TTL */
    uint64_t ram_evictions;   /* chunks dropped from the RAM tier */
    uint64_t rebuilds;        /* metadata rebuilds */
    uint64_t gc_removed;      /* orphan blobs removed */
    uint64_t ram_bytes;       /* bytes in the RAM tier now */
    uint64_t ram_chunks;      /* chunks in the RAM tier now */
    uint64_t disk_bytes;      /* blob bytes accounted on disk now (sum over tenants) */
    uint64_t device_bytes;    /* bytes in the device tier now (0 without one) */
} cc_stats;

void cc_store_stats(cc_store *s, cc_stats *out);

/* The backends in use (borrowed; valid until close) — for tests and tools. */
cc_blobstore *cc_store_blobstore(cc_store *s);
cc_metastore *cc_store_metastore(cc_store *s);

/* `ragkv bench store`: put/get throughput and latency through the store vs redis-server
 * SET/GET of the same blobs. Prints a table; --json FILE writes the results. Exit status. */
int cc_bench_main(int argc, char **argv);

#ifdef __cplusplus
}
#endif
#endif
