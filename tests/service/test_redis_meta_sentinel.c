/* ragkvd with its metadata found through Redis Sentinel (`redis-sentinels`, no `redis`):
 * LOOKUP, DELETE and PUT_KV's metadata calls still run on the workers' event loops (the
 * /metrics counters of the async path move, none fails), with a dead Sentinel first in the
 * list. The client's Sentinel handling itself is tested in
 * tests/chunkcache/test_redis_async_sentinel.c. (One test per file: see
 * tests/service/CMakeLists.txt.) */
#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "ragkv/alloc.h"
#include "ragkv/client.h"
#include "ragkv/clock.h"
#include "ragkv/hash.h"
#include "svc_testlib.h"
#include "testutil.h"

Test(redis_meta_sentinel, the_loop_path_through_sentinels, .timeout = 120)
{
    const char *model = svct_need_model();
    char host[128];
    int rport;
    if (!rk_test_redis(host, sizeof(host), &rport))
        cr_skip_test("skipped: RAGKV_TEST_REDIS not set (run through scripts/test.sh)");
    if (!rk_test_redis_server_path())
        cr_skip_test("skipped: redis-server not on PATH (Sentinels are redis-server --sentinel)");
    char sdir[256];
    cr_assert_not_null(rk_test_tmpdir(sdir, sizeof(sdir)));
    int sp = rk_test_free_port();
    rk_test_proc s;
    cr_assert(rk_test_sentinel(&s, sp, sdir, "rkms", host, rport), "sentinel did not start");
    char list[128], prefix[64];
    snprintf(list, sizeof(list), "127.0.0.1:%d,127.0.0.1:%d", rk_test_free_port(), sp); /* first one dead */
    snprintf(prefix, sizeof(prefix), "rkms%llx:", (unsigned long long)(rk_now_ns() & 0xffffffffffull));
    const char *extra[] = {"--model", model, "--redis-sentinels", list, "--redis-master", "rkms",
                           "--redis-prefix", prefix, NULL};
    svct_daemon dd;
    svct_daemon_up(&dd, "ragkvd", extra, "acme", "globex", NULL);
    ragkv_conn *a = svct_dial(dd.port, dd.token[0]), *b = svct_dial(dd.port, dd.token[1]);
    int32_t t[24];
    uint8_t *c;
    uint32_t l;
    svct_chunk_toks(t, 24, 1);
    svct_container_of(a, t, 24, &c, &l); /* acme's, through PUT_CHUNK (the executor's path) */
    long long lk0 = svct_meta_metric(dd.hport, "ops", "lookup"), in0 = svct_meta_metric(dd.hport, "ops", "insert"),
              de0 = svct_meta_metric(dd.hport, "ops", "delete");
    cr_assert_geq(lk0, 0, "the async path's counters are exported");

    /* PUT_KV: the chunk is new to globex; lookup and insert on the loop */
    uint8_t k[32];
    int created = -1;
    cr_assert_eq(ragkv_put_kv(b, t, 24, c, l, k, &created), RK_OK, "%s", rk_error_msg());
    cr_expect_eq(created, 1);
    cr_expect_eq(svct_meta_metric(dd.hport, "ops", "lookup"), lk0 + 1, "PUT_KV looked up on the loop");
    cr_expect_eq(svct_meta_metric(dd.hport, "ops", "insert"), in0 + 1, "and committed on the loop");
    cr_expect_eq(svct_kv_sum(b, k), rk_xxh3_64(c, l), "the container stored is the one sent");

    /* LOOKUP and DELETE on the loop */
    uint8_t present[1];
    cr_assert_eq(ragkv_lookup(b, k, 1, present), RK_OK, "%s", rk_error_msg());
    cr_expect_eq(present[0], 1);
    cr_expect_eq(ragkv_delete(b, k), RK_OK, "%s", rk_error_msg());
    cr_assert_eq(ragkv_lookup(b, k, 1, present), RK_OK);
    cr_expect_eq(present[0], 0, "deleted");
    cr_expect_eq(svct_meta_metric(dd.hport, "ops", "lookup"), lk0 + 4, "PUT_KV, GET_KV and two LOOKUPs");
    cr_expect_eq(svct_meta_metric(dd.hport, "ops", "delete"), de0 + 1);
    const char *ops[] = {"lookup", "insert", "delete"};
    for (int i = 0; i < 3; i++)
        cr_expect_eq(svct_meta_metric(dd.hport, "errors", ops[i]), 0, "no %s failed", ops[i]);

    ragkv_close(a);
    ragkv_close(b);
    rk_free(c);
    svct_daemon_down(&dd);
    rk_test_stop(&s, SIGTERM, 10000);
    rk_test_rmrf(sdir);
}
