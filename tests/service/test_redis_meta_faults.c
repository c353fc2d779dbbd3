/* The workers' asynchronous metadata path under faults: a client that leaves while its PUT_KV's
 * insert waits in a paused Redis neither crashes ragkvd nor leaks anything (the write still
 * commits), Redis killed under a write in flight gives the synchronous path's error fast, and
 * once Redis is back without its data the rebuild (through the synchronous store) serves every
 * acknowledged chunk with exact usage. */
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
#include "ragkv/hash.h"
#include "ragkv/proto.h"
#include "svc_testlib.h"
#include "testutil.h"

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
    while (svct_meta_metric(hport, "ops", "lookup") < lookups || svct_metric(hport, "meta_async_inflight") != n) {
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

Test(redis_meta_faults, client_gone_and_redis_killed_mid_write, .timeout = 180)
{
    const char *model = svct_need_model();
    char tmp[256], redis[64];
    int rport;
    rk_test_proc r;
    svct_private_redis(tmp, &r, &rport, redis);
    const char *extra[] = {"--model", model, "--redis", redis, NULL};
    svct_daemon dd;
    svct_daemon_up(&dd, "ragkvd", extra, "acme", NULL);
    ragkv_conn *a = svct_dial(dd.port, dd.token[0]);
    int32_t t1[24], t2[24], t3[24];
    uint8_t *c1, *c2;
    uint32_t l1, l2;
    svct_two_chunks(a, 11, t1, t2, &c1, &l1, &c2, &l2);
    svct_chunk_toks(t3, 24, 13);
    ragkv_conn *adm = svct_dial(dd.port, dd.adm);
    cr_assert_eq(ragkv_admin_tenant_create(adm, "bob", 0, 0, 0, dd.token[1], sizeof(dd.token[1])), RK_OK);

    /* a client sends PUT_KV and leaves while the insert waits in a paused Redis */
    cr_assert(redis_cmd(rport, "CLIENT PAUSE 60000 WRITE"));
    ragkv_conn *gone = svct_dial(dd.port, dd.token[1]);
    long long lk = svct_meta_metric(dd.hport, "ops", "lookup");
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
    lk = svct_meta_metric(dd.hport, "ops", "lookup");
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
    cr_expect_gt(svct_meta_metric(dd.hport, "errors", "insert"), 0, "counted as a failed insert");
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
    cr_expect_gt(svct_meta_metric(dd.hport, "fallbacks", "lookup"), 0, "through the synchronous store's rebuild");
    uint8_t kb2[32];
    cr_assert_eq(ragkv_lookup(bob, kb, 1, &present), RK_OK);
    cr_expect_eq(ragkv_put_kv(bob, t2, 24, c2, l2, kb2, &created), RK_OK, "the failed write again: %s", rk_error_msg());
    cr_expect_eq(created, 1, "it had not been stored");
    cr_assert_eq(ragkv_admin_quota_get(adm, "bob", NULL, NULL, NULL, NULL, &chunks), RK_OK);
    cr_expect_eq(chunks, 2, "usage exact after the rebuild");
    uint8_t *c3;
    uint32_t l3;
    svct_container_of(a, t3, 24, &c3, &l3); /* (PUT_CHUNK commits on the loop too) */
    long long ins = svct_meta_metric(dd.hport, "ops", "insert");
    cr_expect_eq(ragkv_put_kv(bob, t3, 24, c3, l3, kb2, &created), RK_OK);
    cr_expect_eq(svct_meta_metric(dd.hport, "ops", "insert"), ins + 1, "the loop's path serves again");
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
