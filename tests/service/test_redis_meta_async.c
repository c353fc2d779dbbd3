/* ragkvd answering LOOKUP, DELETE and PUT_KV's metadata calls on its workers' event loops
 * (redis-async, on by default with `redis`): the answers are the synchronous path's (own and
 * other tenants' chunks, duplicates, quotas with both policies), the async path is the one
 * taken (/metrics counters), a client that leaves while its write is in flight neither crashes
 * nor leaks anything (its write still commits), Redis killed under a write in flight gives
 * the error the synchronous path gives, then the rebuild serves everything acknowledged, and
 * the write path's crash points leave what they leave on the synchronous path. */
#include <criterion/criterion.h>
#include <hiredis/hiredis.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ragkv/alloc.h"
#include "ragkv/bytes.h"
#include "ragkv/client.h"
#include "ragkv/clock.h"
#include "ragkv/proto.h"
#include "svc_testlib.h"
#include "testutil.h"

static const char *need_model(void)
{
    const char *model = rk_test_model_path("stories260K.bin");
    if (!model)
        cr_skip_test("skipped: no real model");
    return model;
}

/* A counter of the async path ("ops", "errors", "fallbacks") for op. */
static long long meta_metric(int hport, const char *what, const char *op)
{
    char name[96];
    snprintf(name, sizeof(name), "meta_async_%s_total{op=\"%s\"}", what, op);
    return svct_metric(hport, name);
}

/* Chunk tokens from a seed. */
static void toks_of(int32_t *t, int n, int seed)
{
    for (int i = 0; i < n; i++)
        t[i] = (seed * 37 + i * 11) % 500 + 3;
}

/* A valid container for tokens t (a chunk prefilled by tenant c, read back). */
static void container_of(ragkv_conn *c, const int32_t *t, int n, uint8_t **cont, uint32_t *len)
{
    uint8_t key[32];
    cr_assert_eq(ragkv_put_chunk(c, t, (uint32_t)n, key, NULL, NULL), RK_OK, "%s", rk_error_msg());
    cr_assert_eq(ragkv_get_kv(c, key, NULL, 0, cont, len), RK_OK, "%s", rk_error_msg());
}

/* Two chunks' tokens (seeds seed, seed + 1, 24 tokens each) and valid containers for them. */
static void two_chunks(ragkv_conn *c, int seed, int32_t *t1, int32_t *t2, uint8_t **c1, uint32_t *l1, uint8_t **c2,
                       uint32_t *l2)
{
    toks_of(t1, 24, seed);
    toks_of(t2, 24, seed + 1);
    container_of(c, t1, 24, c1, l1);
    container_of(c, t2, 24, c2, l2);
}

/* Flags for a daemon on the model with its metadata in the harness's Redis under a prefix of
 * its own (tag + pid); skips without either. The strings live in the caller's buffers. */
typedef struct hflags {
    char redis[160], prefix[64];
    const char *argv[7];
} hflags;

static const char *const *harness_flags(hflags *f, const char *tag)
{
    const char *model = need_model();
    char host[128];
    int rport;
    if (!rk_test_redis(host, sizeof(host), &rport))
        cr_skip_test("skipped: RAGKV_TEST_REDIS not set (run through scripts/test.sh)");
    snprintf(f->redis, sizeof(f->redis), "%s:%d", host, rport);
    snprintf(f->prefix, sizeof(f->prefix), "%s%d:", tag, (int)getpid());
    const char *argv[7] = {"--model", model, "--redis", f->redis, "--redis-prefix", f->prefix, NULL};
    memcpy(f->argv, argv, sizeof(argv));
    return f->argv;
}

Test(redis_meta_async, lookup_put_kv_delete_on_the_loop, .timeout = 120)
{
    hflags hf;
    const char *const *extra = harness_flags(&hf, "rkma");
    svct_daemon dd;
    svct_daemon_up(&dd, "ragkvd", extra, "acme", "globex", NULL);
    ragkv_conn *a = svct_dial(dd.port, dd.token[0]), *b = svct_dial(dd.port, dd.token[1]);
    int32_t t1[24], t2[24];
    uint8_t *c1, *c2;
    uint32_t l1, l2;
    two_chunks(a, 1, t1, t2, &c1, &l1, &c2, &l2);
    long long lk0 = meta_metric(dd.hport, "ops", "lookup"), in0 = meta_metric(dd.hport, "ops", "insert"),
              de0 = meta_metric(dd.hport, "ops", "delete");
    cr_assert_geq(lk0, 0, "the async path's counters are exported");

    /* PUT_KV: lookup, then the quota-checked insert, both on the loop */
    uint8_t kb[32], ka[32];
    int created = -1;
    cr_assert_eq(ragkv_put_kv(b, t1, 24, c1, l1, kb, &created), RK_OK, "%s", rk_error_msg());
    cr_expect_eq(created, 1);
    cr_expect_eq(meta_metric(dd.hport, "ops", "lookup"), lk0 + 1, "PUT_KV looked up on the loop");
    cr_expect_eq(meta_metric(dd.hport, "ops", "insert"), in0 + 1, "and committed on the loop");
    cr_assert_eq(ragkv_put_kv(b, t1, 24, c1, l1, kb, &created), RK_OK);
    cr_expect_eq(created, 0, "a second PUT_KV of the chunk stores nothing");
    cr_expect_eq(meta_metric(dd.hport, "ops", "insert"), in0 + 1, "no commit for it");
    cr_expect_eq(svct_kv_sum(b, kb), rk_xxh3_64(c1, l1), "the container stored is the one sent");

    /* LOOKUP: own, another tenant's, absent — as the synchronous lookup answers */
    cr_assert_eq(ragkv_put_kv(a, t1, 24, c1, l1, ka, NULL), RK_OK);
    uint8_t keys[3 * 32], present[3];
    memcpy(keys, kb, 32);
    memcpy(keys + 32, ka, 32);
    memset(keys + 64, 0x5a, 32);
    long long lk1 = meta_metric(dd.hport, "ops", "lookup");
    cr_assert_eq(ragkv_lookup(b, keys, 3, present), RK_OK, "%s", rk_error_msg());
    cr_expect(present[0] == 1 && present[1] == 0 && present[2] == 0, "globex: %d%d%d", present[0], present[1], present[2]);
    cr_assert_eq(ragkv_lookup(a, keys, 3, present), RK_OK);
    cr_expect(present[0] == 0 && present[1] == 1 && present[2] == 0, "acme: %d%d%d", present[0], present[1], present[2]);
    cr_expect_eq(meta_metric(dd.hport, "ops", "lookup"), lk1 + 2, "both LOOKUPs on the loop");

    /* DELETE: only one's own */
    cr_expect_eq(ragkv_delete(a, kb), RK_ERR_NOT_FOUND, "acme cannot delete globex's chunk");
    cr_expect_eq(ragkv_delete(b, kb), RK_OK, "%s", rk_error_msg());
    cr_expect_eq(ragkv_delete(b, kb), RK_ERR_NOT_FOUND, "gone");
    cr_expect_eq(meta_metric(dd.hport, "ops", "delete"), de0 + 3);
    cr_assert_eq(ragkv_lookup(b, kb, 1, present), RK_OK);
    cr_expect_eq(present[0], 0);
    cr_assert_eq(ragkv_lookup(a, ka, 1, present), RK_OK);
    cr_expect_eq(present[0], 1, "acme's chunk of the same tokens is untouched");

    /* quotas: one chunk, reject, then evict */
    ragkv_conn *adm = svct_dial(dd.port, dd.adm);
    cr_assert_eq(ragkv_admin_quota_set(adm, "globex", 0, 1, 0), RK_OK, "%s", rk_error_msg());
    cr_assert_eq(ragkv_put_kv(b, t1, 24, c1, l1, kb, &created), RK_OK);
    uint8_t kb2[32];
    cr_expect_eq(ragkv_put_kv(b, t2, 24, c2, l2, kb2, &created), RK_ERR_QUOTA, "over quota: %s", rk_error_msg());
    uint64_t chunks = 9;
    cr_assert_eq(ragkv_admin_quota_get(adm, "globex", NULL, NULL, NULL, NULL, &chunks), RK_OK);
    cr_expect_eq(chunks, 1, "usage untouched by the refused put");
    cr_assert_eq(ragkv_admin_quota_set(adm, "globex", 0, 1, 1), RK_OK);
    cr_expect_eq(ragkv_put_kv(b, t2, 24, c2, l2, kb2, &created), RK_OK, "evict policy: %s", rk_error_msg());
    cr_expect_eq(created, 1);
    memcpy(keys, kb, 32);
    memcpy(keys + 32, kb2, 32);
    cr_assert_eq(ragkv_lookup(b, keys, 2, present), RK_OK);
    cr_expect(present[0] == 0 && present[1] == 1, "the older chunk was evicted: %d%d", present[0], present[1]);
    cr_assert_eq(ragkv_admin_quota_get(adm, "globex", NULL, NULL, NULL, NULL, &chunks), RK_OK);
    cr_expect_eq(chunks, 1);
    cr_expect_eq(svct_kv_sum(b, kb2), rk_xxh3_64(c2, l2));
    const char *ops[] = {"lookup", "insert", "delete"};
    for (int i = 0; i < 3; i++) {
        cr_expect_eq(meta_metric(dd.hport, "errors", ops[i]), 0, "no %s failed", ops[i]);
        cr_expect_eq(meta_metric(dd.hport, "fallbacks", ops[i]), 0, "nothing fell back (%s)", ops[i]);
    }
    cr_expect_gt(svct_metric(dd.hport, "meta_async_ms_count"), 0, "latencies observed");
    cr_assert_eq(ragkv_admin_tenant_delete(adm, "globex"), RK_OK);
    ragkv_close(adm);
    ragkv_close(a);
    ragkv_close(b);
    rk_free(c1);
    rk_free(c2);
    svct_daemon_down(&dd);

    /* redis-async 0: the same answers from the pool, the loop's counters untouched */
    strcat(hf.prefix, "s:");
    const char *sync_extra[] = {"--model", extra[1], "--redis", hf.redis, "--redis-prefix", hf.prefix, "--redis-async", "0", NULL};
    svct_daemon_up(&dd, "ragkvd", sync_extra, "acme", NULL);
    a = svct_dial(dd.port, dd.token[0]);
    uint8_t k[32];
    cr_assert_eq(ragkv_put_chunk(a, t1, 24, k, NULL, NULL), RK_OK);
    cr_assert_eq(ragkv_lookup(a, k, 1, present), RK_OK);
    cr_expect_eq(present[0], 1);
    cr_expect_eq(ragkv_delete(a, k), RK_OK);
    cr_expect_eq(meta_metric(dd.hport, "ops", "lookup"), 0);
    cr_expect_eq(meta_metric(dd.hport, "ops", "delete"), 0);
    ragkv_close(a);
    svct_daemon_down(&dd);
}

/* One command on a fresh connection to a Redis; false when it cannot be reached. */
static bool redis_cmd(int port, const char *cmd)
{
    redisContext *c = redisConnect("127.0.0.1", port);
    if (!c || c->err) {
        redisFree(c);
        return false;
    }
    redisReply *r = redisCommand(c, cmd);
    bool ok = r && r->type != REDIS_REPLY_ERROR;
    freeReplyObject(r);
    redisFree(c);
    return ok;
}

/* Poll /metrics until the async path has n operations in flight, after at least `lookups`
 * lookups ended (with n = 1 and one more lookup than before a PUT_KV: its insert has started,
 * so it is parked in Redis' paused queue). */
static void wait_inflight(int hport, long long n, long long lookups)
{
    uint64_t t0 = rk_now_ns();
    while (meta_metric(hport, "ops", "lookup") < lookups || svct_metric(hport, "meta_async_inflight") != n) {
        cr_assert_lt(rk_now_ns() - t0, 20000000000ull, "%lld operations in flight never seen", n);
        struct timespec ts = {0, 5000000};
        nanosleep(&ts, NULL); /* polling interval */
    }
}

/* Send PUT_KV (tokens t, container c) on conn without reading the answer. */
static void send_put_kv(ragkv_conn *conn, uint64_t id, const int32_t *t, uint32_t n, const uint8_t *c, uint32_t len)
{
    rk_buf b = RK_BUF_INIT;
    rk_buf_put_str(&b, "");
    rk_buf_put_tokens(&b, t, n);
    rk_buf_put_u32(&b, len);
    rk_buf_append(&b, c, len);
    cr_assert_eq(ragkv_send_frame(conn, RK_OP_PUT_KV, id, b.data, (uint32_t)b.len), RK_OK);
    rk_buf_free(&b);
}

Test(redis_meta_async, client_gone_and_redis_killed_mid_write, .timeout = 180)
{
    const char *model = need_model();
    if (!rk_test_redis_server_path())
        cr_skip_test("skipped: no redis-server");
    char tmp[256], redis[64];
    cr_assert_not_null(rk_test_tmpdir(tmp, sizeof(tmp)));
    int rport = rk_test_free_port();
    rk_test_proc r;
    cr_assert(rk_test_redis_server(&r, rport, tmp, 0));
    snprintf(redis, sizeof(redis), "127.0.0.1:%d", rport);
    const char *extra[] = {"--model", model, "--redis", redis, NULL};
    svct_daemon dd;
    svct_daemon_up(&dd, "ragkvd", extra, "acme", NULL);
    ragkv_conn *a = svct_dial(dd.port, dd.token[0]);
    int32_t t1[24], t2[24], t3[24];
    uint8_t *c1, *c2;
    uint32_t l1, l2;
    two_chunks(a, 11, t1, t2, &c1, &l1, &c2, &l2);
    toks_of(t3, 24, 13);
    ragkv_conn *adm = svct_dial(dd.port, dd.adm);
    cr_assert_eq(ragkv_admin_tenant_create(adm, "bob", 0, 0, 0, dd.token[1], sizeof(dd.token[1])), RK_OK);

    /* a client sends PUT_KV and leaves while the insert waits in a paused Redis */
    cr_assert(redis_cmd(rport, "CLIENT PAUSE 60000 WRITE"));
    ragkv_conn *gone = svct_dial(dd.port, dd.token[1]);
    long long lk = meta_metric(dd.hport, "ops", "lookup");
    send_put_kv(gone, 7, t1, 24, c1, l1);
    wait_inflight(dd.hport, 1, lk + 1); /* its lookup done, its insert parked */
    ragkv_close(gone);
    cr_assert(redis_cmd(rport, "CLIENT UNPAUSE"));
    wait_inflight(dd.hport, 0, lk + 1);
    ragkv_conn *bob = svct_dial(dd.port, dd.token[1]);
    cr_expect_eq(ragkv_ping(bob), RK_OK, "ragkvd is fine");
    uint8_t kb[32];
    int created = -1;
    cr_assert_eq(ragkv_put_kv(bob, t1, 24, c1, l1, kb, &created), RK_OK, "%s", rk_error_msg());
    cr_expect_eq(created, 0, "the departed client's write was committed all the same");
    cr_expect_eq(svct_kv_sum(bob, kb), rk_xxh3_64(c1, l1));
    uint64_t chunks = 0;
    cr_assert_eq(ragkv_admin_quota_get(adm, "bob", NULL, NULL, NULL, NULL, &chunks), RK_OK);
    cr_expect_eq(chunks, 1);

    /* Redis killed while a write waits in it: the client gets the synchronous path's error */
    cr_assert(redis_cmd(rport, "CLIENT PAUSE 60000 WRITE"));
    lk = meta_metric(dd.hport, "ops", "lookup");
    send_put_kv(bob, 8, t2, 24, c2, l2);
    wait_inflight(dd.hport, 1, lk + 1);
    cr_expect_eq(rk_test_stop(&r, SIGKILL, 10000), 128 + SIGKILL);
    uint64_t t0 = rk_now_ns();
    rk_proto_hdr h;
    uint8_t *p = NULL;
    cr_assert_eq(ragkv_recv_frame(bob, &h, &p), RK_OK);
    rk_free(p);
    double ms = (double)(rk_now_ns() - t0) / 1e6;
    cr_expect_eq(h.request_id, 8);
    cr_expect_eq(h.status, RK_ERR_UNAVAILABLE, "Redis gone: %s", rk_status_name((rk_status)h.status));
    cr_expect_lt(ms, 10000, "and fast (%.0f ms)", ms);
    cr_log_info("PUT_KV with Redis killed under its insert: %s in %.0f ms", rk_status_name((rk_status)h.status), ms);
    cr_expect_gt(meta_metric(dd.hport, "errors", "insert"), 0, "counted as a failed insert");
    /* a LOOKUP while it is down fails as well, within the Redis timeouts */
    uint8_t present = 9;
    t0 = rk_now_ns();
    cr_expect_neq(ragkv_lookup(bob, kb, 1, &present), RK_OK);
    cr_expect_lt((double)(rk_now_ns() - t0) / 1e6, 20000.0);

    /* Redis back, empty: the loop refuses it until the rebuild, which the fallback triggers */
    cr_assert(rk_test_redis_server(&r, rport, tmp, 0));
    rk_status st = RK_ERR_UNAVAILABLE;
    for (int i = 0; i < 200 && st != RK_OK; i++) { /* the store reconnects and rebuilds by itself */
        st = ragkv_lookup(bob, kb, 1, &present);
        if (st != RK_OK) {
            struct timespec ts = {0, 50000000};
            nanosleep(&ts, NULL);
        }
    }
    cr_assert_eq(st, RK_OK, "recovered: %s", rk_error_msg());
    cr_expect_eq(present, 1, "the acknowledged chunk is back (rebuilt from RocksDB)");
    cr_expect_gt(meta_metric(dd.hport, "fallbacks", "lookup"), 0, "through the synchronous store's rebuild");
    uint8_t kb2[32];
    cr_assert_eq(ragkv_lookup(bob, kb, 1, &present), RK_OK);
    cr_expect_eq(ragkv_put_kv(bob, t2, 24, c2, l2, kb2, &created), RK_OK, "the failed write again: %s", rk_error_msg());
    cr_expect_eq(created, 1, "it had not been stored");
    cr_assert_eq(ragkv_admin_quota_get(adm, "bob", NULL, NULL, NULL, NULL, &chunks), RK_OK);
    cr_expect_eq(chunks, 2, "usage exact after the rebuild");
    long long ins = meta_metric(dd.hport, "ops", "insert");
    uint8_t *c3;
    uint32_t l3;
    container_of(a, t3, 24, &c3, &l3);
    cr_expect_eq(ragkv_put_kv(bob, t3, 24, c3, l3, kb2, &created), RK_OK);
    cr_expect_eq(meta_metric(dd.hport, "ops", "insert"), ins + 1, "the loop's path serves again");
    rk_free(c1);
    rk_free(c2);
    rk_free(c3);
    ragkv_close(bob);
    ragkv_close(adm);
    ragkv_close(a);
    svct_daemon_down(&dd);
    cr_expect_eq(rk_test_stop(&r, SIGTERM, 10000), 0);
    rk_test_rmrf(tmp);
}

/* The write path's crash points, hit by PUT_KV on the loop's path (blob on the pool, commit on
 * the loop, acknowledgement from the commit's completion): after a restart each leaves the
 * state docs/storage.md promises, and a retry stores nothing twice. */
Test(redis_meta_async, crash_points_of_the_loops_put_kv, .timeout = 180)
{
    static const struct {
        const char *point;
        bool committed;
    } cases[] = {{"put_blob_written", false}, {"put_meta_committed", true}, {"put_before_ack", true}};
    enum { NC = 3 };
    hflags hf;
    const char *const *extra = harness_flags(&hf, "rkmc");
    svct_daemon dd;
    svct_daemon_up(&dd, "ragkvd-crashpoints", extra, "acme", "ref", NULL);
    ragkv_conn *ref = svct_dial(dd.port, dd.token[1]);
    int32_t t[NC][24];
    uint8_t *cont[NC];
    uint32_t len[NC];
    for (int i = 0; i < NC; i++) {
        toks_of(t[i], 24, 50 + i);
        container_of(ref, t[i], 24, &cont[i], &len[i]);
    }
    ragkv_close(ref);
    cr_assert_eq(rk_test_stop(&dd.proc, SIGTERM, 20000), 0);
    for (int i = 0; i < NC; i++) {
        char sel[64];
        snprintf(sel, sizeof(sel), "%s:1", cases[i].point);
        setenv("RAGKV_CRASHPOINT", sel, 1);
        svct_daemon_start(&dd, "ragkvd-crashpoints", extra);
        unsetenv("RAGKV_CRASHPOINT");
        ragkv_conn *a = svct_dial(dd.port, dd.token[0]);
        uint8_t k[32];
        cr_expect_neq(ragkv_put_kv(a, t[i], 24, cont[i], len[i], k, NULL), RK_OK, "%s: never acknowledged", sel);
        ragkv_close(a);
        cr_assert_eq(rk_test_wait(&dd.proc, 20000), 128 + SIGKILL, "%s: ragkvd died at the crash point", sel);
    }
    svct_daemon_start(&dd, "ragkvd-crashpoints", extra);
    ragkv_conn *a = svct_dial(dd.port, dd.token[0]);
    long long ins = meta_metric(dd.hport, "ops", "insert");
    for (int i = 0; i < NC; i++) {
        uint8_t k[32], present = 9;
        int created = -1;
        cr_assert_eq(ragkv_put_kv(a, t[i], 24, cont[i], len[i], k, &created), RK_OK, "%s", rk_error_msg());
        cr_expect_eq(created, cases[i].committed ? 0 : 1, "%s: the retry %s", cases[i].point,
                     cases[i].committed ? "finds it committed" : "stores it");
        cr_assert_eq(ragkv_lookup(a, k, 1, &present), RK_OK);
        cr_expect_eq(present, 1);
        cr_expect_eq(svct_kv_sum(a, k), rk_xxh3_64(cont[i], len[i]), "%s: byte-identical", cases[i].point);
        rk_free(cont[i]);
    }
    cr_expect_eq(meta_metric(dd.hport, "ops", "insert"), ins + 1, "the one retry that wrote went through the loop");
    ragkv_close(a);
    ragkv_conn *adm = svct_dial(dd.port, dd.adm);
    uint64_t chunks = 0;
    cr_assert_eq(ragkv_admin_quota_get(adm, "acme", NULL, NULL, NULL, NULL, &chunks), RK_OK);
    cr_expect_eq(chunks, NC, "usage exact after the crashes");
    ragkv_close(adm);
    svct_daemon_down(&dd);
}
