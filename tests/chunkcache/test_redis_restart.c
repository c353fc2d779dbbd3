/* Redis restarts under a running store: with its data lost (SIGKILL, no persistence) the
 * store notices on its next command, rebuilds the metadata from the RocksDB blob store and
 * carries on with exact usage; while Redis is down calls fail with RK_ERR_UNAVAILABLE, not a
 * hang or a crash. Also a ragkvd restart (store close/reopen) against a live Redis. */
#include "cc_testlib.h"

static cc_store *open_on(const char *dir, int port, const char *prefix)
{
    cc_config cfg = cc_config_default();
    cfg.data_dir = dir;
    cfg.redis_host = "127.0.0.1";
    cfg.redis_port = port;
    cfg.redis_prefix = prefix;
    cfg.redis.retries = 2;
    cfg.redis.backoff_ms = 5;
    cfg.redis.command_timeout_ms = 1000;
    cfg.touch_batch = 1;
    cc_store *s = NULL;
    cr_assert_eq(cc_store_open(&cfg, &s), RK_OK, "%s", rk_error_msg());
    return s;
}

Test(redis_restart, data_loss_is_rebuilt_from_rocksdb)
{
    cct_redis_proc r = {0};
    if (!cct_redis_server_path())
        cr_skip_test("skipped: redis-server not on PATH");
    cr_assert(cct_redis_start(&r), "redis-server did not start");
    char dir[256];
    cr_assert_not_null(rk_test_tmpdir(dir, sizeof(dir)));
    cc_store *s = open_on(dir, r.port, "rk:");
    cct_make_tenant(s, "t", 100000, 10, CC_QUOTA_REJECT);
    cct_make_tenant(s, "u", 0, 0, CC_QUOTA_REJECT);
    cr_assert_eq(cc_store_grant(s, "t", "u"), RK_OK);
    cc_key k[5];
    for (int i = 0; i < 5; i++)
        cr_assert_eq(cct_put(s, "t", (uint64_t)i, 2000, 1, &k[i]), RK_OK);

    /* ragkvd restart: close and reopen with Redis intact: nothing to rebuild */
    cc_store_close(s);
    s = open_on(dir, r.port, "rk:");
    cc_stats st;
    cc_store_stats(s, &st);
    cr_expect_eq(st.rebuilds, 0);
    cc_tenant_info ti;
    cr_assert_eq(cc_store_tenant_usage(s, "t", &ti), RK_OK);
    cr_expect(ti.chunks == 5 && ti.bytes == 10000);

    /* Redis dies: calls fail cleanly */
    cct_redis_kill(&r);
    cc_store_drop_ram(s);
    cc_buf *b;
    rk_status rc = cc_store_get(s, "t", &k[0], &b, NULL);
    cr_expect_eq(rc, RK_ERR_UNAVAILABLE, "get with Redis down: %s", rk_strerror(rc));
    rc = cct_put(s, "t", 50, 100, 1, NULL);
    cr_expect_eq(rc, RK_ERR_UNAVAILABLE, "put with Redis down: %s", rk_strerror(rc));

    /* Redis comes back empty on the same port: the next call rebuilds and succeeds */
    r.p.pid = 0;
    cr_assert(cct_redis_start(&r), "redis-server did not restart");
    cct_expect_blob(s, "t", &k[1], 1, 2000);
    cc_store_stats(s, &st);
    cr_expect_eq(st.rebuilds, 1);
    cr_assert_eq(cc_store_tenant_usage(s, "t", &ti), RK_OK);
    cr_expect(ti.chunks == 5 && ti.bytes == 10000, "usage after rebuild: %llu chunks", (unsigned long long)ti.chunks);
    cr_expect(ti.cfg.max_chunks == 10, "quota restored");
    cct_expect_blob(s, "u", &k[2], 2, 2000); /* grant restored */
    /* quota still enforced exactly after the rebuild */
    for (int i = 5; i < 10; i++)
        cr_expect_eq(cct_put(s, "t", (uint64_t)i, 2000, 1, NULL), RK_OK);
    cr_expect_eq(cct_put(s, "t", 10, 2000, 1, NULL), RK_ERR_QUOTA);
    cc_store_close(s);
    cct_redis_kill(&r);
    cct_redis_fini(&r);
    rk_test_rmrf(dir);
}

Test(redis_restart, unreachable_or_stalled_redis_fails_fast)
{
    if (!cct_redis_server_path())
        cr_skip_test("skipped: redis-server not on PATH");
    /* nobody listens: open fails with UNAVAILABLE */
    cc_config cfg = cc_config_default();
    cfg.redis_host = "127.0.0.1";
    cfg.redis_port = cct_free_port();
    cfg.redis.connect_timeout_ms = 200;
    cc_store *s = NULL;
    cr_expect_eq(cc_store_open(&cfg, &s), RK_ERR_UNAVAILABLE);

    /* a stalled Redis (SIGSTOP): commands time out instead of hanging; SIGCONT recovers */
    cct_redis_proc r = {0};
    cr_assert(cct_redis_start(&r));
    cfg.redis_port = r.port;
    cfg.redis.command_timeout_ms = 200;
    cfg.redis.connect_timeout_ms = 200;
    cfg.redis.retries = 1;
    cfg.redis.backoff_ms = 1;
    cfg.touch_batch = 1;
    cfg.ram_budget_bytes = 0;
    cr_assert_eq(cc_store_open(&cfg, &s), RK_OK, "%s", rk_error_msg());
    cct_make_tenant(s, "t", 0, 0, CC_QUOTA_REJECT);
    cc_key k;
    cr_assert_eq(cct_put(s, "t", 1, 1000, 1, &k), RK_OK);
    kill(r.p.pid, SIGSTOP);
    uint64_t t0 = rk_now_ns();
    cc_buf *b;
    rk_status rc = cc_store_get(s, "t", &k, &b, NULL);
    double secs = (rk_now_ns() - t0) / 1e9;
    cr_expect(rc == RK_ERR_UNAVAILABLE || rc == RK_ERR_TIMEOUT, "stalled: %s", rk_strerror(rc));
    cr_expect(secs < 5, "bounded by the timeouts (%.1f s)", secs);
    kill(r.p.pid, SIGCONT);
    cct_expect_blob(s, "t", &k, 1, 1000);
    cc_store_close(s);
    cct_redis_kill(&r);
    cct_redis_fini(&r);
}
