/* Redis faults under a running ragkvd (its own redis-server, killed and restarted): prompts
 * that bring their tokens are still answered while Redis is down, operations that need the
 * metadata fail fast instead of hanging, health checks keep answering, and once Redis is back
 * (empty: its data lost) the metadata is rebuilt from RocksDB and the cached chunks serve again.
 * CLIENT PAUSE, maxmemory and failover under load: test_redis_load.c. */
#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ragkv/alloc.h"
#include "ragkv/client.h"
#include "ragkv/clock.h"
#include "svc_testlib.h"
#include "testutil.h"

/* redis-server on port, no persistence; skips the test without one. */
static void redis_start(rk_test_proc *p, int port, const char *dir)
{
    if (!rk_test_redis_server_path())
        cr_skip_test("skipped: no redis-server");
    cr_assert(rk_test_redis_server(p, port, dir, 0), "redis-server did not become ready");
}

Test(redis_faults, redis_down_and_back_without_its_data, .timeout = 120)
{
    const char *model = rk_test_model_path("stories260K.bin");
    if (!model)
        cr_skip_test("skipped: no real model");
    char tmp[256], redis[64], adm[256], tok[256];
    cr_assert_not_null(rk_test_tmpdir(tmp, sizeof(tmp)));
    int rport = rk_test_free_port();
    rk_test_proc r, d;
    redis_start(&r, rport, tmp);
    snprintf(redis, sizeof(redis), "127.0.0.1:%d", rport);
    const char *extra[] = {"--model", model, "--redis", redis, NULL};
    int port, hport;
    cr_assert(rk_test_daemon_start(tmp, extra, &d, &port, &hport));
    cr_assert(rk_test_admin_token(tmp, adm, sizeof(adm)), "no admin token in %s/var", tmp);
    ragkv_conn *a, *t;
    a = svct_dial(port, adm);
    cr_assert_eq(ragkv_admin_tenant_create(a, "acme", 0, 0, 0, tok, sizeof(tok)), RK_OK, "%s", rk_error_msg());
    ragkv_close(a);
    t = svct_dial(port, tok);
    int32_t ch[32];
    for (int i = 0; i < 32; i++)
        ch[i] = 20 + i * 11;
    uint8_t key[32];
    cr_assert_eq(ragkv_put_chunk(t, ch, 32, key, NULL, NULL), RK_OK, "%s", rk_error_msg());

    /* Redis dies */
    cr_expect_eq(rk_test_stop(&r, SIGKILL, 10000), 128 + SIGKILL);
    const int32_t q[] = {403, 407};
    ragkv_segment seg = {.tokens = ch, .ntokens = 32};
    ragkv_gen_params p = {.segs = &seg, .nsegs = 1, .query = q, .nquery = 2, .blend = 3, .recompute = 0.15f, .max_tokens = 4};
    ragkv_gen_stats gs;
    cr_expect_eq(ragkv_generate(t, &p, NULL, NULL, &gs), RK_OK, "answered without the store: %s", rk_error_msg());
    uint64_t t0 = rk_now_ns();
    uint8_t present = 0;
    rk_status st = ragkv_lookup(t, key, 1, &present);
    double ms = (double)(rk_now_ns() - t0) / 1e6;
    cr_expect_neq(st, RK_OK, "LOOKUP needs the metadata");
    cr_expect_lt(ms, 20000, "and fails within the Redis timeouts (%.0f ms)", ms);
    int code;
    char *body;
    cr_assert_eq(ragkv_http_get("127.0.0.1", hport, "/healthz", 5000, &code, &body), RK_OK);
    cr_expect_eq(code, 200, "health checks keep answering");
    rk_free(body);

    /* Redis is back, empty: the metadata is rebuilt from RocksDB */
    redis_start(&r, rport, tmp);
    st = RK_ERR_UNAVAILABLE;
    for (int i = 0; i < 200 && st != RK_OK; i++) { /* the store reconnects and rebuilds by itself */
        st = ragkv_lookup(t, key, 1, &present);
        if (st != RK_OK) {
            struct timespec ts = {0, 50000000};
            nanosleep(&ts, NULL);
        }
    }
    cr_assert_eq(st, RK_OK, "recovered: %s", rk_error_msg());
    cr_expect_eq(present, 1, "the chunk is known again after the rebuild");
    seg = (ragkv_segment){.key = key};
    cr_expect_eq(ragkv_generate(t, &p, NULL, NULL, &gs), RK_OK, "%s", rk_error_msg());
    cr_expect_eq(gs.chunk_hits, 1);
    ragkv_close(t);
    cr_expect_eq(rk_test_stop(&d, SIGTERM, 20000), 0);
    cr_expect_eq(rk_test_stop(&r, SIGTERM, 10000), 0);
    rk_test_rmrf(tmp);
}

