/*
 * cc_testlib.h — helpers shared by the chunkcache tests (static functions; each test file
 * is its own executable). Backend fixtures for the conformance suite, a private
 * redis-server for restart tests, blob generators.
 */
#ifndef RAGKV_CC_TESTLIB_H
#define RAGKV_CC_TESTLIB_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <criterion/criterion.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <hiredis/hiredis.h>

#include "ragkv/bytes.h"
#include "ragkv/chunkcache.h"
#include "ragkv/clock.h"
#include "ragkv/hash.h"
#include "testutil.h"

/* A Redis key prefix no other test process uses. */
static inline void cct_prefix(char *buf, size_t n)
{
    static unsigned seq;
    snprintf(buf, n, "t%d.%u.%llx:", (int)getpid(), __atomic_add_fetch(&seq, 1, __ATOMIC_RELAXED),
             (unsigned long long)(rk_now_ns() & 0xffffff));
}

/* Deterministic pseudo-random bytes. */
static inline void cct_fill(uint8_t *p, size_t n, uint64_t seed)
{
    uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        p[i] = (uint8_t)x;
    }
}

/* Metadata backend kinds of the conformance suite. */
typedef enum { CCT_EMB_MEM, CCT_EMB_ROCKS, CCT_REDIS } cct_ms_kind;
/* Blob backend kinds. */
typedef enum { CCT_BS_MEM, CCT_BS_ROCKS } cct_bs_kind;

typedef struct cct_env {
    char dir[256];     /* temp dir (RocksDB) or "" */
    char prefix[64];   /* Redis key prefix */
    char host[128];
    int port;
    cct_bs_kind bk;
    cct_ms_kind mk;
} cct_env;

/* Redis of the harness; false (test should skip) when not configured. */
static inline bool cct_redis(char *host, size_t n, int *port)
{
    return rk_test_redis(host, n, port);
}

static inline void cct_skip_if_unavailable(cct_ms_kind mk)
{
    char h[128];
    int p;
    if (mk == CCT_REDIS && !cct_redis(h, sizeof(h), &p))
        cr_skip_test("skipped: RAGKV_TEST_REDIS not set (run through scripts/test.sh)");
}

static inline void cct_env_init(cct_env *e, cct_bs_kind bk, cct_ms_kind mk)
{
    memset(e, 0, sizeof(*e));
    e->bk = bk;
    e->mk = mk;
    if (bk == CCT_BS_ROCKS || mk == CCT_EMB_ROCKS)
        cr_assert_not_null(rk_test_tmpdir(e->dir, sizeof(e->dir)));
    if (mk == CCT_REDIS) {
        cr_assert(cct_redis(e->host, sizeof(e->host), &e->port));
        cct_prefix(e->prefix, sizeof(e->prefix));
    }
}

static inline void cct_env_fini(cct_env *e)
{
    if (e->dir[0])
        rk_test_rmrf(e->dir);
}

static inline void cct_open_bs(cct_env *e, cc_blobstore *bs)
{
    rk_status st = e->bk == CCT_BS_ROCKS ? cc_blobstore_rocksdb_open(e->dir, NULL, bs) : cc_blobstore_mem_open(bs);
    cr_assert_eq(st, RK_OK, "open blob store: %s", rk_error_msg());
}

/* A metadata store; for CCT_EMB_ROCKS, bs must be a RocksDB blob store. */
static inline void cct_open_ms(cct_env *e, cc_blobstore *bs, cc_metastore *ms)
{
    rk_status st;
    switch (e->mk) {
    case CCT_EMB_MEM:
        st = cc_metastore_embedded_open(NULL, ms);
        break;
    case CCT_EMB_ROCKS:
        st = cc_metastore_embedded_open(bs, ms);
        break;
    default:
        st = cc_metastore_redis_open(e->host, e->port, e->prefix, NULL, ms);
    }
    cr_assert_eq(st, RK_OK, "open metadata store: %s", rk_error_msg());
}

/* A whole store over the env's backends (RocksDB metadata shares the blob store's db). */
static inline cc_store *cct_open_store(cct_env *e, const cc_config *cfg_in)
{
    cc_config cfg = cfg_in ? *cfg_in : cc_config_default();
    cfg.gc_grace_ms = cfg_in ? cfg_in->gc_grace_ms : 0;
    cfg.data_dir = e->bk == CCT_BS_ROCKS ? e->dir : NULL;
    cfg.redis_host = e->mk == CCT_REDIS ? e->host : NULL;
    cfg.redis_port = e->port;
    cfg.redis_prefix = e->prefix;
    cc_store *s = NULL;
    if (e->mk == CCT_EMB_MEM && e->bk == CCT_BS_ROCKS) {
        cc_blobstore bs;
        cc_metastore ms;
        cct_open_bs(e, &bs);
        cr_assert_eq(cc_metastore_embedded_open(NULL, &ms), RK_OK);
        cr_assert_eq(cc_store_open_with(&cfg, bs, ms, &s), RK_OK, "%s", rk_error_msg());
    } else {
        cr_assert_eq(cc_store_open(&cfg, &s), RK_OK, "open store: %s", rk_error_msg());
    }
    return s;
}

/* ---- a private redis-server ----------------------------------------------------------- */

typedef struct cct_redis_proc {
    rk_test_proc p;
    int port;
    char dir[256];
} cct_redis_proc;

static inline int cct_free_port(void)
{
    return rk_test_free_port();
}

/* Start redis-server on r->port (0: pick one), no persistence; returns when it accepts
 * connections (its "Ready to accept connections" line, then a PING). */
static inline bool cct_redis_start(cct_redis_proc *r)
{
    if (!r->port)
        r->port = cct_free_port();
    if (!r->dir[0] && !rk_test_tmpdir(r->dir, sizeof(r->dir)))
        return false;
    if (!rk_test_redis_server(&r->p, r->port, r->dir, 0))
        return false;
    redisContext *c = redisConnect("127.0.0.1", r->port);
    bool ok = c && !c->err;
    redisReply *rep = ok ? redisCommand(c, "PING") : NULL;
    ok = rep && rep->type == REDIS_REPLY_STATUS;
    if (rep)
        freeReplyObject(rep);
    if (c)
        redisFree(c);
    return ok;
}

/* SIGKILL: the data (in memory only) is lost, as in a crash. */
static inline void cct_redis_kill(cct_redis_proc *r)
{
    rk_test_stop(&r->p, SIGKILL, 5000);
    close(r->p.out_fd);
}

static inline void cct_redis_fini(cct_redis_proc *r)
{
    if (r->dir[0])
        rk_test_rmrf(r->dir);
}

/* Put a chunk of `len` random bytes (seeded) with tokens {seed, seed+1, ...}. */
static inline rk_status cct_put(cc_store *s, const char *tenant, uint64_t seed, size_t len, double cost,
                                cc_key *key)
{
    int32_t toks[8];
    for (int i = 0; i < 8; i++)
        toks[i] = (int32_t)(seed * 8 + i);
    uint8_t *blob = malloc(len ? len : 1);
    cct_fill(blob, len, seed);
    cc_put_args a = {.model = "m", .tokens = toks, .ntokens = 8, .blob = blob, .blob_len = len, .cost = cost};
    rk_status st = cc_store_put(s, tenant, &a, key);
    free(blob);
    return st;
}

/* get must return exactly the bytes cct_put stored for seed. */
static inline void cct_expect_blob(cc_store *s, const char *tenant, const cc_key *key, uint64_t seed, size_t len)
{
    cc_buf *b = NULL;
    rk_status st = cc_store_get(s, tenant, key, &b, NULL);
    cr_assert_eq(st, RK_OK, "get: %s (%s)", rk_strerror(st), rk_error_msg());
    cr_assert_eq(b->len, len);
    uint8_t *want = malloc(len ? len : 1);
    cct_fill(want, len, seed);
    cr_expect(memcmp(b->data, want, len) == 0, "blob bytes differ");
    free(want);
    cc_buf_release(b);
}

/* The blob store key of the chunk cct_put stored with seed and len under k. */
static inline void cct_bkey(uint8_t out[40], const cc_key *k, uint64_t seed, size_t len)
{
    uint8_t *blob = malloc(len ? len : 1);
    cct_fill(blob, len, seed);
    memcpy(out, k->b, 32);
    rk_put_le64(out + 32, rk_xxh3_64(blob, len));
    free(blob);
}

/* Damage that chunk's stored value on disk: byte value[len - from_end] ^= mask. */
static inline void cct_corrupt(cc_store *s, const cc_key *k, uint64_t seed, size_t len, size_t from_end, uint8_t mask)
{
    cc_blobstore *bs = cc_store_blobstore(s);
    uint8_t bk[40];
    cct_bkey(bk, k, seed, len);
    cc_buf *v;
    cr_assert_eq(cc_blobstore_get(bs, CC_SPACE_CHUNKS, bk, 40, &v), RK_OK);
    uint8_t *copy = malloc(v->len);
    memcpy(copy, v->data, v->len);
    copy[v->len - from_end] ^= mask;
    cc_iov part = {copy, v->len};
    cr_assert_eq(cc_blobstore_put(bs, CC_SPACE_CHUNKS, bk, 40, &part, 1), RK_OK);
    cc_buf_release(v);
    free(copy);
}

static inline void cct_make_tenant(cc_store *s, const char *name, uint64_t max_bytes, uint64_t max_chunks,
                                   cc_quota_policy pol)
{
    cc_quota q = {max_bytes, max_chunks, pol};
    cr_assert_eq(cc_store_tenant_create(s, name, &q), RK_OK, "tenant %s: %s", name, rk_error_msg());
}

/* A metadata record of namespace ns for chunk i (token id i): size, cost, pinned as given, checksum
 * 1000 + i (for the metadata store tests; no blob behind it). */
static inline cc_record cct_rec(const char *ns, int i, uint64_t size, double cost, bool pinned)
{
    cc_record r;
    cc_record_init(&r);
    int32_t tok = i;
    cc_key_compute("m", ns, &tok, 1, &r.key);
    snprintf(r.ns, sizeof(r.ns), "%s", ns);
    strcpy(r.model, "m");
    r.ntokens = 1;
    r.size = size;
    r.csum = 1000 + (uint64_t)i;
    r.created_ms = rk_wall_ms();
    r.cost = cost;
    r.flags = pinned ? CC_RECORD_FLAG_PINNED : 0;
    return r;
}

/* Create or update tenant name directly in a metadata store. */
static inline void cct_ms_tenant(cc_metastore *ms, const char *name, uint64_t mb, uint64_t mc, cc_quota_policy pol)
{
    cc_tenant_cfg t = {.max_bytes = mb, .max_chunks = mc, .policy = pol};
    snprintf(t.name, sizeof(t.name), "%s", name);
    cr_assert_eq(cc_metastore_tenant_put(ms, &t), RK_OK, "%s", rk_error_msg());
}

#endif
