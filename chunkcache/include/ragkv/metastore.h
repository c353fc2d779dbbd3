/*
 * ragkv/metastore.h — the metadata store interface (records, tenants, quotas, grants) and
 * its two backends.
 *
 * The metadata store is the authority on which chunks exist, who owns them and how much
 * each tenant uses. Its one essential operation is `insert`: check the namespace's quota
 * and insert the record, atomically, evicting the namespace's own lowest-value chunks first
 * when its policy says so. Backends:
 *
 * - Redis (cc_metastore_redis_open): hiredis, one connection guarded by a mutex, timeouts,
 *   reconnect with exponential backoff, the atomic operations as Lua scripts run by EVALSHA
 *   (falling back to EVAL after a script-cache flush or restart), batch reads pipelined,
 *   reply sizes bounded. Keys are listed in docs/storage.md.
 * - embedded (cc_metastore_embedded_open): in-process tables mirrored into a blob store's
 *   CC_SPACE_META (RocksDB in production: one write batch per mutation, under a mutex), or
 *   memory only when given no blob store.
 *
 * Both pass tests/chunkcache/test_conformance.c.
 *
 * A metadata store also knows whether it is *intact*: whether its contents are what ragkv
 * last wrote. A Redis that restarted without persistence comes back empty; the backend sees
 * its marker key gone, reports !intact, and cc_store rebuilds the metadata from a scan of
 * the blob store, then calls mark_intact.
 *
 *     cc_metastore ms;
 *     cc_metastore_redis_open("127.0.0.1", 6379, "rk:", NULL, &ms);
 *     cc_tenant_cfg t = {.max_bytes = 1 << 30, .max_chunks = 10000, .policy = CC_QUOTA_EVICT};
 *     strcpy(t.name, "acme");
 *     cc_metastore_tenant_put(&ms, &t);
 *     cc_evlist ev = {0};
 *     rk_status st = cc_metastore_insert(&ms, &rec, 0, &ev);   // RK_ERR_QUOTA, RK_ERR_EXISTS
 *     ... delete the blobs of ev.items[0..ev.n) ...;  cc_evlist_free(&ev);
 *     cc_metastore_close(&ms);
 */
#ifndef RAGKV_METASTORE_H
#define RAGKV_METASTORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ragkv/blobstore.h"
#include "ragkv/record.h"
#include "ragkv/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* What admission does when a tenant's quota would be exceeded. */
typedef enum cc_quota_policy {
    CC_QUOTA_REJECT = 0, /* the put fails with RK_ERR_QUOTA */
    CC_QUOTA_EVICT = 1,  /* the tenant's own lowest-value unpinned chunks are evicted first */
} cc_quota_policy;

/* A tenant (or shared namespace: both are accounts that own chunks). */
typedef struct cc_tenant_cfg {
    char name[CC_NAME_MAX + 1]; /* tenant id / namespace */
    uint64_t max_bytes;         /* quota on blob bytes; 0 = unlimited */
    uint64_t max_chunks;        /* quota on chunk count; 0 = unlimited */
    cc_quota_policy policy;     /* over-quota behaviour */
} cc_tenant_cfg;

/* A tenant's configuration and exact usage. */
typedef struct cc_tenant_info {
    cc_tenant_cfg cfg;      /* as last set */
    uint64_t bytes;         /* blob bytes of its chunks */
    uint64_t chunks;        /* number of its chunks */
    uint64_t pinned_bytes;  /* of which pinned */
    uint64_t pinned_chunks; /* of which pinned */
    double clock;           /* GDSF clock: priority of the last chunk evicted */
} cc_tenant_info;

/* A chunk removed by an operation: the caller deletes its blob and drops it from caches. */
typedef struct cc_evicted {
    cc_key key;    /* chunk key */
    uint64_t csum; /* blob checksum (part of the blob store key) */
    uint64_t size; /* blob bytes */
} cc_evicted;

/* A growable list of cc_evicted (zero-initialise; cc_evlist_free). */
typedef struct cc_evlist {
    cc_evicted *items; /* (n) entries, owned */
    size_t n;          /* used */
    size_t cap;        /* allocated */
} cc_evlist;

rk_status cc_evlist_push(cc_evlist *l, const cc_key *key, uint64_t csum, uint64_t size);
void cc_evlist_free(cc_evlist *l);

/* A read to count: hits += n, last access = now_ms. */
typedef struct cc_touch {
    cc_key key;      /* chunk */
    uint32_t n;      /* hits to add */
    uint64_t now_ms; /* wall-clock time of the latest of them */
} cc_touch;

/* insert flags */
#define CC_INSERT_FORCE 1u /* skip the quota check (rebuild restores what was admitted) */

/* Backend operations; all required, all thread-safe. Strings are NUL-terminated names of at
 * most CC_NAME_MAX bytes. RK_ERR_META for backend failures, RK_ERR_UNAVAILABLE when the
 * backend cannot be reached (or came back without its data: see intact). */
struct cc_metastore_i {
    const char *name; /* "redis", "embedded" */
    /* Create a tenant or change its quota/policy; usage is kept. */
    rk_status (*tenant_put)(void *ctx, const cc_tenant_cfg *cfg);
    /* Configuration and usage; RK_ERR_NOT_FOUND. */
    rk_status (*tenant_get)(void *ctx, const char *name, cc_tenant_info *out);
    /* Remove the tenant, all its chunks (appended to removed) and all grants from or to it.
     * RK_ERR_NOT_FOUND. */
    rk_status (*tenant_del)(void *ctx, const char *name, cc_evlist *removed);
    /* Names of all tenants, sorted: *names (n of them) owned by the caller, cc_names_free. */
    rk_status (*tenant_list)(void *ctx, char ***names, size_t *n);
    /* Let tenant read namespace ns (on) or stop it (off). Both must exist (RK_ERR_NOT_FOUND). */
    rk_status (*grant)(void *ctx, const char *ns, const char *tenant, bool on);
    /* *ok = tenant may read chunks of ns (ns == tenant, or granted). */
    rk_status (*readable)(void *ctx, const char *tenant, const char *ns, bool *ok);
    /* Admit rec (its ns must be a tenant: RK_ERR_NOT_FOUND). Atomically: RK_ERR_EXISTS when the
     * key is present; else, unless CC_INSERT_FORCE, when usage + rec would pass the quota:
     * RK_ERR_QUOTA (policy reject, or pinned chunks alone leave no room), or evict the
     * namespace's lowest-priority unpinned chunks (appended to evicted) until it fits; then
     * insert with hits = 0 and account it. */
    rk_status (*insert)(void *ctx, const cc_record *rec, unsigned flags, cc_evlist *evicted);
    /* Batch read: for each i, st[i] = RK_OK and recs[i] filled (owned by the caller,
     * cc_record_clear), RK_ERR_NOT_FOUND, or RK_ERR_CORRUPT when a record exists but does
     * not decode (callers treat it as absent; the store counts it in its corrupt statistic).
     * Returns an error only when the batch failed. */
    rk_status (*get)(void *ctx, const cc_key *keys, size_t n, cc_record *recs, rk_status *st);
    /* Remove one chunk, correcting usage; *removed (may be NULL) gets its record.
     * RK_ERR_NOT_FOUND. If expect_csum is non-zero, only a record with that checksum is
     * removed (repair must not remove a newer version); otherwise RK_ERR_NOT_FOUND. */
    rk_status (*remove)(void *ctx, const cc_key *key, uint64_t expect_csum, cc_record *removed);
    /* Count reads (missing keys are skipped); updates the GDSF priority. */
    rk_status (*touch)(void *ctx, const cc_touch *t, size_t n);
    /* Evict the lowest-priority unpinned chunks of ns until at least `bytes` were freed or
     * none remain (appended to evicted). */
    rk_status (*evict)(void *ctx, const char *ns, uint64_t bytes, cc_evlist *evicted);
    /* Remove every chunk whose TTL expired at or before now_ms (appended to removed). */
    rk_status (*expire)(void *ctx, uint64_t now_ms, cc_evlist *removed);
    /* Forget everything (records, tenants, grants) before a rebuild; leaves !intact. */
    rk_status (*clear)(void *ctx);
    /* *ok = contents are what was last written (see the overview). */
    rk_status (*intact)(void *ctx, bool *ok);
    /* Declare the contents complete (after a rebuild). */
    rk_status (*mark_intact)(void *ctx);
    /* Release the backend. */
    void (*close)(void *ctx);
};

/* A metadata store: interface + backend context. */
typedef struct cc_metastore {
    const struct cc_metastore_i *iface; /* backend operations */
    void *ctx;                          /* backend state */
} cc_metastore;

#define CC_MS_CALL(ms, op, ...) ((ms)->iface->op((ms)->ctx, __VA_ARGS__))
static inline rk_status cc_metastore_tenant_put(cc_metastore *m, const cc_tenant_cfg *c) { return CC_MS_CALL(m, tenant_put, c); }
static inline rk_status cc_metastore_tenant_get(cc_metastore *m, const char *n, cc_tenant_info *o) { return CC_MS_CALL(m, tenant_get, n, o); }
static inline rk_status cc_metastore_tenant_del(cc_metastore *m, const char *n, cc_evlist *r) { return CC_MS_CALL(m, tenant_del, n, r); }
static inline rk_status cc_metastore_tenant_list(cc_metastore *m, char ***names, size_t *n) { return CC_MS_CALL(m, tenant_list, names, n); }
static inline rk_status cc_metastore_grant(cc_metastore *m, const char *ns, const char *t, bool on) { return CC_MS_CALL(m, grant, ns, t, on); }
static inline rk_status cc_metastore_readable(cc_metastore *m, const char *t, const char *ns, bool *ok) { return CC_MS_CALL(m, readable, t, ns, ok); }
static inline rk_status cc_metastore_insert(cc_metastore *m, const cc_record *r, unsigned f, cc_evlist *ev) { return CC_MS_CALL(m, insert, r, f, ev); }
static inline rk_status cc_metastore_get(cc_metastore *m, const cc_key *k, size_t n, cc_record *r, rk_status *st) { return CC_MS_CALL(m, get, k, n, r, st); }
static inline rk_status cc_metastore_remove(cc_metastore *m, const cc_key *k, uint64_t csum, cc_record *r) { return CC_MS_CALL(m, remove, k, csum, r); }
static inline rk_status cc_metastore_touch(cc_metastore *m, const cc_touch *t, size_t n) { return CC_MS_CALL(m, touch, t, n); }
static inline rk_status cc_metastore_evict(cc_metastore *m, const char *ns, uint64_t b, cc_evlist *ev) { return CC_MS_CALL(m, evict, ns, b, ev); }
static inline rk_status cc_metastore_expire(cc_metastore *m, uint64_t now, cc_evlist *ev) { return CC_MS_CALL(m, expire, now, ev); }
static inline rk_status cc_metastore_clear(cc_metastore *m) { return m->iface->clear(m->ctx); }
static inline rk_status cc_metastore_intact(cc_metastore *m, bool *ok) { return CC_MS_CALL(m, intact, ok); }
static inline rk_status cc_metastore_mark_intact(cc_metastore *m) { return m->iface->mark_intact(m->ctx); }
/* Close; a zeroed cc_metastore is a no-op. */
static inline void cc_metastore_close(cc_metastore *m)
{
    if (m && m->iface)
        m->iface->close(m->ctx);
    if (m) {
        m->iface = NULL;
        m->ctx = NULL;
    }
}

/* Free a name list from tenant_list. NULL is a no-op. */
void cc_names_free(char **names, size_t n);

/* Redis connection settings. */
typedef struct cc_redis_opts {
    int connect_timeout_ms;   /* connect deadline (default 2000) */
    int command_timeout_ms;   /* per-command deadline (default 2000) */
    int retries;              /* reconnect attempts per failed command (default 5) */
    int backoff_ms;           /* first reconnect delay, doubled per attempt (default 20, max 1000) */
    size_t max_reply_elements; /* largest array reply accepted (default 1<<20); hiredis 0.14 has no
                                  reader limit, so it is checked after parsing */
    size_t reader_maxbuf;     /* hiredis reader idle buffer cap (default 16 KiB) */
    const char *sentinels;    /* "host:port,..." of Redis Sentinels, or NULL (default): when set,
                                 every (re)connect asks them for the primary of sentinel_master
                                 (ragkv/redis_sentinel.h) and the host/port given to open are
                                 ignored; copied at open */
    const char *sentinel_master; /* the master name the Sentinels monitor (default "ragkv") */
    int wait_replicas;        /* after each chunk insert, WAIT for this many replicas to have
                                 it (0, the default: no wait) so a failover cannot lose an
                                 acknowledged chunk's metadata */
    int wait_timeout_ms;      /* bound on that WAIT (default 1000); on timeout the insert
                                 still succeeds and the shortfall is logged */
} cc_redis_opts;

cc_redis_opts cc_redis_opts_default(void);

/* Connect to Redis at host:port; every key starts with prefix (e.g. "rk:"; lets many stores
 * share one Redis). opts NULL: defaults. *out owned by the caller. RK_ERR_UNAVAILABLE when
 * Redis cannot be reached. */
rk_status cc_metastore_redis_open(const char *host, int port, const char *prefix,
                                  const cc_redis_opts *opts, cc_metastore *out);

/* Embedded metadata over bs's CC_SPACE_META (bs NULL: memory only, starts !intact and
 * empty). The backend behind bs is borrowed (the handle is copied) and must outlive the
 * metastore. Loads the tables at open. */
rk_status cc_metastore_embedded_open(cc_blobstore *bs, cc_metastore *out);

#ifdef __cplusplus
}
#endif
#endif
