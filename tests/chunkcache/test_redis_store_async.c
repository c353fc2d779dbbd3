/* The store's event-loop variants against its synchronous calls, on a private redis-server:
 * cc_store_lookup_async answers what cc_store_lookup answers (own, granted, another tenant's,
 * absent, expired, damaged records) with the same Redis commands; cc_store_delete_async as
 * cc_store_delete; the split put (write, asynchronous commit, finish) keeps the write path's
 * rules (quota rollback deletes the blob, evictions delete the evicted blobs, a losing
 * duplicate's blob goes, usage exact); the synchronous commit rebuilds a Redis that lost its
 * data. */
#include "cc_testlib.h"

#include <event2/event.h>
#include "ragkv/redis_async.h"

typedef struct fix {
    cct_redis_proc rp;
    cc_store *s;
    struct event_base *base;
    cc_redis_async *ra;
} fix;

static void fix_up(fix *f)
{
    if (!rk_test_redis_server_path())
        cr_skip_test("skipped: redis-server not on PATH");
    memset(f, 0, sizeof(*f));
    cr_assert(cct_redis_start(&f->rp));
    cc_config cfg = cc_config_default();
    cfg.redis_host = "127.0.0.1";
    cfg.redis_port = f->rp.port;
    cfg.touch_batch = 1; /* hit counts inline: no background Redis traffic in the counts */
    cfg.gc_grace_ms = 0;
    cr_assert_eq(cc_store_open(&cfg, &f->s), RK_OK, "%s", rk_error_msg());
    f->base = event_base_new();
    cr_assert_eq(cc_redis_async_open(f->base, "127.0.0.1", f->rp.port, "rk:", NULL, &f->ra), RK_OK);
}

static void fix_down(fix *f)
{
    cc_redis_async_close(f->ra);
    event_base_free(f->base);
    cc_store_close(f->s);
    cct_redis_kill(&f->rp);
    cct_redis_fini(&f->rp);
}

/* Run the loop until *flag is set (by a callback: the event waited for). */
static void run_until(fix *f, const int *flag)
{
    while (!*flag)
        cr_assert_geq(event_base_loop(f->base, EVLOOP_ONCE), 0);
}

typedef struct lres {
    int done;
    rk_status st;
    uint8_t present[16];
} lres;

static void on_lookup(void *arg, rk_status st, const uint8_t *present, size_t n)
{
    lres *r = arg;
    r->done++;
    r->st = st;
    for (size_t i = 0; st == RK_OK && i < n && i < 16; i++)
        r->present[i] = present[i];
}

static rk_status lookup_async(fix *f, const char *tenant, const cc_key *keys, size_t n, uint8_t *present)
{
    lres r = {0};
    rk_status st = cc_store_lookup_async(f->s, f->ra, tenant, keys, n, on_lookup, &r);
    if (st != RK_OK)
        return st;
    run_until(f, &r.done);
    memcpy(present, r.present, n);
    return r.st;
}

/* Calls of one command so far (INFO commandstats of the private Redis). */
static long long calls_of(int port, const char *cmd)
{
    redisContext *c = redisConnect("127.0.0.1", port);
    cr_assert(c && !c->err);
    redisReply *rep = redisCommand(c, "INFO commandstats");
    cr_assert(rep && rep->type == REDIS_REPLY_STRING);
    char pat[64];
    snprintf(pat, sizeof(pat), "cmdstat_%s:calls=", cmd);
    const char *at = strstr(rep->str, pat);
    long long v = at ? atoll(at + strlen(pat)) : 0;
    freeReplyObject(rep);
    redisFree(c);
    return v;
}

static void flip_record(int port, const cc_key *k)
{
    char hex[CC_KEY_HEX_LEN + 1], rk[96];
    snprintf(rk, sizeof(rk), "rk:r:%s", cc_key_to_hex(k, hex));
    redisContext *c = redisConnect("127.0.0.1", port);
    cr_assert(c && !c->err);
    redisReply *rep = redisCommand(c, "HGET %s rec", rk);
    cr_assert(rep && rep->type == REDIS_REPLY_STRING);
    char *rec = malloc(rep->len);
    size_t len = rep->len;
    memcpy(rec, rep->str, len);
    freeReplyObject(rep);
    rec[len / 2] ^= 0x10;
    rep = redisCommand(c, "HSET %s rec %b", rk, rec, len);
    freeReplyObject(rep);
    free(rec);
    redisFree(c);
}

Test(store_async, lookup_answers_and_costs_what_the_sync_lookup_does, .timeout = 60)
{
    fix f;
    fix_up(&f);
    cct_make_tenant(f.s, "a", 0, 0, CC_QUOTA_REJECT);
    cct_make_tenant(f.s, "b", 0, 0, CC_QUOTA_REJECT);
    cct_make_tenant(f.s, "corpus", 0, 0, CC_QUOTA_REJECT);
    cr_assert_eq(cc_store_grant(f.s, "corpus", "a"), RK_OK);
    cc_key k[6];
    cr_assert_eq(cct_put(f.s, "a", 1, 100, 1, &k[0]), RK_OK);
    cr_assert_eq(cct_put(f.s, "b", 2, 100, 1, &k[1]), RK_OK);
    cr_assert_eq(cct_put(f.s, "corpus", 3, 100, 1, &k[2]), RK_OK);
    int32_t none = 999;
    cc_key_compute("m", "a", &none, 1, &k[3]); /* nobody has it */
    int32_t toks[8] = {140, 141, 142, 143, 144, 145, 146, 147};
    uint8_t blob[64] = {1};
    cc_put_args ea = {.model = "m", .tokens = toks, .ntokens = 8, .blob = blob, .blob_len = 64, .cost = 1, .ttl_ms = 1};
    cr_assert_eq(cc_store_put(f.s, "a", &ea, &k[4]), RK_OK);
    uint64_t until = rk_wall_ms() + 2;
    while (rk_wall_ms() <= until) { /* the TTL is wall-clock time: wait for the clock itself */
    }
    cr_assert_eq(cct_put(f.s, "a", 5, 100, 1, &k[5]), RK_OK);
    flip_record(f.rp.port, &k[5]);

    const char *as[] = {"a", "b"};
    for (int t = 0; t < 2; t++) {
        uint8_t ps[6], pa[6];
        cc_stats s0, s1, s2;
        cc_store_stats(f.s, &s0);
        long long h0 = calls_of(f.rp.port, "hmget"), g0 = calls_of(f.rp.port, "sismember");
        cr_assert_eq(cc_store_lookup(f.s, as[t], k, 6, ps), RK_OK, "%s", rk_error_msg());
        long long h1 = calls_of(f.rp.port, "hmget"), g1 = calls_of(f.rp.port, "sismember");
        cc_store_stats(f.s, &s1);
        cr_assert_eq(lookup_async(&f, as[t], k, 6, pa), RK_OK, "%s", rk_error_msg());
        long long h2 = calls_of(f.rp.port, "hmget"), g2 = calls_of(f.rp.port, "sismember");
        cc_store_stats(f.s, &s2);
        for (int i = 0; i < 6; i++)
            cr_expect_eq(pa[i], ps[i], "tenant %s, key %d: async %d, sync %d", as[t], i, pa[i], ps[i]);
        cr_expect_eq(h2 - h1, h1 - h0, "the same record reads (%lld vs %lld)", h2 - h1, h1 - h0);
        cr_expect_eq(g2 - g1, g1 - g0, "the same grant checks (%lld vs %lld)", g2 - g1, g1 - g0);
        cr_expect_eq(s2.corrupt - s1.corrupt, s1.corrupt - s0.corrupt, "the damaged record counted alike");
        cr_expect_eq(s1.corrupt - s0.corrupt, 1, "one damaged record (%llu)", (unsigned long long)(s1.corrupt - s0.corrupt));
    }
    uint8_t p[6];
    memset(p, 0xff, sizeof p); /* neither answer: a lookup that leaves a key out fails below */
    cr_assert_eq(lookup_async(&f, "a", k, 6, p), RK_OK);
    cr_expect(p[0] == 1 && p[1] == 0 && p[2] == 1 && p[3] == 0 && p[4] == 0 && p[5] == 0,
              "own, not b's, granted corpus, absent, expired, damaged: %d%d%d%d%d%d", p[0], p[1], p[2], p[3], p[4], p[5]);
    cr_assert_eq(lookup_async(&f, "b", k, 6, p), RK_OK);
    cr_expect(p[0] == 0 && p[1] == 1 && p[2] == 0, "b sees only its own");
    cr_assert_eq(cc_store_revoke(f.s, "corpus", "a"), RK_OK);
    cr_assert_eq(lookup_async(&f, "a", &k[2], 1, p), RK_OK);
    cr_expect_eq(p[0], 0, "a revoked grant is seen at once");
    cr_expect_eq(cc_store_lookup_async(f.s, f.ra, "a", k, 0, on_lookup, NULL), RK_ERR_INVALID);
    cr_expect_eq(cc_store_lookup_async(f.s, f.ra, "", k, 1, on_lookup, NULL), RK_ERR_INVALID);
    fix_down(&f);
}

typedef struct dres {
    int done;
    rk_status st;
    cc_evlist ev;
} dres;

static void on_delete(void *arg, rk_status st, const cc_evlist *removed)
{
    dres *r = arg;
    r->done++;
    r->st = st;
    for (size_t i = 0; i < removed->n; i++)
        cc_evlist_push(&r->ev, &removed->items[i].key, removed->items[i].csum, removed->items[i].size);
}

/* The async delete's metadata half, then its blob half (cc_store_apply_removed). */
static rk_status delete_async(fix *f, const char *tenant, const cc_key *k)
{
    dres r = {0};
    rk_status st = cc_store_delete_async(f->s, f->ra, tenant, k, on_delete, &r);
    if (st != RK_OK)
        return st;
    run_until(f, &r.done);
    if (r.st == RK_OK) {
        cr_expect_eq(r.ev.n, 1);
        cc_store_apply_removed(f->s, &r.ev);
    } else {
        cr_expect_eq(r.ev.n, 0);
    }
    cc_evlist_free(&r.ev);
    return r.st;
}

static int count_cb(void *arg, const uint8_t *key, size_t klen, const uint8_t *val, size_t vlen)
{
    (void)key;
    (void)klen;
    (void)val;
    (void)vlen;
    (*(size_t *)arg)++;
    return 0;
}

/* Chunk blobs in the blob store. */
static size_t blobs(cc_store *s)
{
    size_t n = 0;
    cr_assert_eq(cc_blobstore_scan(cc_store_blobstore(s), CC_SPACE_CHUNKS, count_cb, &n), RK_OK);
    return n;
}

Test(store_async, delete_as_the_sync_delete, .timeout = 60)
{
    fix f;
    fix_up(&f);
    cct_make_tenant(f.s, "a", 0, 0, CC_QUOTA_REJECT);
    cct_make_tenant(f.s, "b", 0, 0, CC_QUOTA_REJECT);
    cc_key ka, kb, kx;
    cr_assert_eq(cct_put(f.s, "a", 1, 500, 1, &ka), RK_OK);
    cr_assert_eq(cct_put(f.s, "b", 2, 500, 1, &kb), RK_OK);
    int32_t none = 7;
    cc_key_compute("m", "a", &none, 1, &kx);
    cr_expect_eq(delete_async(&f, "a", &kb), RK_ERR_NOT_FOUND, "another tenant's chunk is not found");
    cr_expect_eq(cc_store_delete(f.s, "a", &kb), RK_ERR_NOT_FOUND, "(sync agrees)");
    cr_expect_eq(delete_async(&f, "a", &kx), RK_ERR_NOT_FOUND, "nor an absent one");
    cr_expect_eq(blobs(f.s), 2);
    cr_assert_eq(delete_async(&f, "a", &ka), RK_OK, "%s", rk_error_msg());
    cr_expect_eq(blobs(f.s), 1, "the blob is gone");
    cc_buf *b;
    cr_expect_eq(cc_store_get(f.s, "a", &ka, &b, NULL), RK_ERR_NOT_FOUND, "and the RAM tier forgot it");
    cc_tenant_info ti;
    cr_assert_eq(cc_store_tenant_usage(f.s, "a", &ti), RK_OK);
    cr_expect(ti.bytes == 0 && ti.chunks == 0, "usage exact");
    cc_stats st;
    cc_store_stats(f.s, &st);
    cr_expect_eq(st.disk_bytes, 500, "disk accounting: b's chunk only");
    cr_expect_eq(delete_async(&f, "a", &ka), RK_ERR_NOT_FOUND, "twice: not found");
    cr_expect_eq(delete_async(&f, "b", &kb), RK_OK);
    fix_down(&f);
}

typedef struct cres {
    int done;
    cc_put_txn *t;
} cres;

static void on_commit(void *arg, cc_put_txn *t)
{
    cres *r = arg;
    r->done++;
    r->t = t;
}

/* One split put: write, asynchronous commit, finish (as the daemon does it). blocking (may be
 * NULL) gets whether the finish had blob deletes to do. */
static rk_status put_split(fix *f, const char *tenant, uint64_t seed, size_t len, bool *blocking, cc_key *key)
{
    int32_t toks[8];
    for (int i = 0; i < 8; i++)
        toks[i] = (int32_t)(seed * 8 + i);
    uint8_t *blob = malloc(len);
    cct_fill(blob, len, seed);
    cc_put_args a = {.model = "m", .tokens = toks, .ntokens = 8, .blob = blob, .blob_len = len, .cost = 1};
    cc_put_txn *t;
    rk_status st = cc_store_put_write(f->s, tenant, &a, &t);
    free(blob);
    if (st != RK_OK)
        return st;
    cr_expect_eq(cc_put_txn_status(t), RK_ERR_CANCELLED, "no outcome before the commit");
    cres r = {0};
    cr_assert_eq(cc_store_put_commit_async(f->s, f->ra, t, on_commit, &r), RK_OK, "%s", rk_error_msg());
    run_until(f, &r.done);
    cr_assert_eq(r.t, t);
    if (blocking)
        *blocking = cc_put_txn_blocking(t);
    return cc_store_put_finish(f->s, t, key);
}

Test(store_async, split_put_keeps_the_write_path_rules, .timeout = 60)
{
    fix f;
    fix_up(&f);
    cct_make_tenant(f.s, "q", 0, 2, CC_QUOTA_REJECT);
    cct_make_tenant(f.s, "e", 0, 2, CC_QUOTA_EVICT);
    bool blocking;
    cc_key k1, k2, k3;
    cr_assert_eq(put_split(&f, "q", 1, 300, &blocking, &k1), RK_OK, "%s", rk_error_msg());
    cr_expect(!blocking, "a plain commit finishes in memory");
    cct_expect_blob(f.s, "q", &k1, 1, 300);
    cr_assert_eq(put_split(&f, "q", 2, 300, NULL, &k2), RK_OK);
    cr_expect_eq(put_split(&f, "q", 3, 300, &blocking, &k3), RK_ERR_QUOTA);
    cr_expect(blocking, "a refused commit deletes its blob");
    cr_expect_eq(blobs(f.s), 2, "the refused chunk's blob is gone");
    cc_stats st;
    cc_store_stats(f.s, &st);
    cr_expect_eq(st.quota_rejects, 1);
    cr_expect_eq(put_split(&f, "q", 1, 300, &blocking, NULL), RK_OK, "the same chunk again");
    cr_expect(!blocking, "a duplicate with the same bytes keeps its blob");
    cr_expect_eq(blobs(f.s), 2);
    cct_expect_blob(f.s, "q", &k1, 1, 300);

    /* evict policy: the third chunk evicts one, whose blob goes */
    cr_assert_eq(put_split(&f, "e", 11, 200, NULL, NULL), RK_OK);
    cr_assert_eq(put_split(&f, "e", 12, 200, NULL, NULL), RK_OK);
    cr_assert_eq(put_split(&f, "e", 13, 200, &blocking, &k3), RK_OK);
    cr_expect(blocking, "evicted blobs to delete");
    cr_expect_eq(blobs(f.s), 4, "q's two and e's two");
    cc_tenant_info ti;
    cr_assert_eq(cc_store_tenant_usage(f.s, "e", &ti), RK_OK);
    cr_expect(ti.chunks == 2 && ti.bytes == 400, "usage exact: %llu chunks", (unsigned long long)ti.chunks);
    cc_store_stats(f.s, &st);
    cr_expect_eq(st.evicted_quota, 1);
    cr_expect_eq(st.disk_bytes, 1000);

    /* two writers of one chunk with different bytes: the loser's blob goes, the winner's stays */
    int32_t toks[8] = {90, 91, 92, 93, 94, 95, 96, 97};
    uint8_t b1[100], b2[100];
    cct_fill(b1, 100, 1);
    cct_fill(b2, 100, 2);
    cc_put_args a1 = {.model = "m", .tokens = toks, .ntokens = 8, .blob = b1, .blob_len = 100, .cost = 1};
    cc_put_args a2 = a1;
    a2.blob = b2;
    cct_make_tenant(f.s, "d", 0, 0, CC_QUOTA_REJECT);
    cc_put_txn *t1, *t2;
    cr_assert_eq(cc_store_put_write(f.s, "d", &a1, &t1), RK_OK);
    cr_assert_eq(cc_store_put_write(f.s, "d", &a2, &t2), RK_OK);
    cr_expect_eq(blobs(f.s), 6, "both written");
    cres r1 = {0}, r2 = {0};
    cr_assert_eq(cc_store_put_commit_async(f.s, f.ra, t1, on_commit, &r1), RK_OK);
    cr_assert_eq(cc_store_put_commit_async(f.s, f.ra, t2, on_commit, &r2), RK_OK);
    run_until(&f, &r1.done);
    run_until(&f, &r2.done);
    cr_expect_eq(cc_put_txn_status(t1), RK_OK);
    cr_expect_eq(cc_put_txn_status(t2), RK_ERR_EXISTS);
    cr_expect(cc_put_txn_blocking(t2), "the loser's blob is to delete");
    cc_key kd;
    cr_expect_eq(cc_store_put_finish(f.s, t1, &kd), RK_OK);
    cr_expect_eq(cc_store_put_finish(f.s, t2, NULL), RK_OK, "a duplicate put succeeds");
    cr_expect_eq(blobs(f.s), 5, "one version left");
    cc_store_drop_ram(f.s);
    cc_buf *got;
    cr_assert_eq(cc_store_get(f.s, "d", &kd, &got, NULL), RK_OK, "served from disk: %s", rk_error_msg());
    cr_expect(got->len == 100 && memcmp(got->data, b1, 100) == 0, "the first writer's bytes");
    cc_buf_release(got);

    /* the synchronous commit does the same */
    cc_put_txn *t;
    int32_t t4[8] = {70, 71, 72, 73, 74, 75, 76, 77};
    cc_put_args a4 = {.model = "m", .tokens = t4, .ntokens = 8, .blob = b2, .blob_len = 100, .cost = 1};
    cr_assert_eq(cc_store_put_write(f.s, "q", &a4, &t), RK_OK);
    cc_store_put_commit(f.s, t);
    cr_expect_eq(cc_put_txn_status(t), RK_ERR_QUOTA);
    cr_expect_eq(cc_store_put_finish(f.s, t, NULL), RK_ERR_QUOTA);
    cr_expect_eq(blobs(f.s), 5);
    fix_down(&f);
}

/* Redis restarted without its data under a pending put: the asynchronous commit refuses
 * (nothing written into the empty Redis); the synchronous commit rebuilds the metadata from
 * the blob store, then admits the chunk with its quota checked; usage is exact. */
Test(store_async, lost_redis_data_is_rebuilt_by_the_sync_commit, .timeout = 60)
{
    fix f;
    fix_up(&f);
    cct_make_tenant(f.s, "q", 0, 3, CC_QUOTA_REJECT);
    cc_key k1;
    cr_assert_eq(put_split(&f, "q", 1, 100, NULL, &k1), RK_OK, "%s", rk_error_msg());
    cc_stats st;
    cc_store_stats(f.s, &st);
    uint64_t rebuilds = st.rebuilds; /* the one at open, of the fresh Redis */
    cct_redis_kill(&f.rp);
    f.rp.p.pid = 0;
    cr_assert(cct_redis_start(&f.rp));
    int32_t toks[8] = {5, 6, 7, 8, 9, 10, 11, 12};
    uint8_t b[100];
    cct_fill(b, 100, 3);
    cc_put_args a = {.model = "m", .tokens = toks, .ntokens = 8, .blob = b, .blob_len = 100, .cost = 1};
    cc_put_txn *t;
    cr_assert_eq(cc_store_put_write(f.s, "q", &a, &t), RK_OK, "%s", rk_error_msg());
    cres r = {0};
    cr_assert_eq(cc_store_put_commit_async(f.s, f.ra, t, on_commit, &r), RK_OK);
    run_until(&f, &r.done);
    cr_expect_eq(cc_put_txn_status(t), RK_ERR_UNAVAILABLE, "the empty Redis is not written to");
    cc_store_put_commit(f.s, t);
    cr_expect_eq(cc_put_txn_status(t), RK_OK, "after the rebuild: %s", rk_error_msg());
    cc_key k2;
    cr_expect_eq(cc_store_put_finish(f.s, t, &k2), RK_OK);
    cc_store_stats(f.s, &st);
    cr_expect_eq(st.rebuilds, rebuilds + 1);
    uint8_t p[2];
    cc_key ks[2] = {k1, k2};
    cr_assert_eq(lookup_async(&f, "q", ks, 2, p), RK_OK, "the async path answers again: %s", rk_error_msg());
    cr_expect(p[0] && p[1], "the old chunk (rebuilt) and the new one");
    cc_tenant_info ti;
    cr_assert_eq(cc_store_tenant_usage(f.s, "q", &ti), RK_OK);
    cr_expect(ti.chunks == 2 && ti.bytes == 200, "usage exact: %llu", (unsigned long long)ti.chunks);
    cr_expect_eq(blobs(f.s), 2);
    fix_down(&f);
}
