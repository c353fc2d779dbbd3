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
    if (!rk_test_redis_server_path())
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
    if (!rk_test_redis_server_path())
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

/* ---- Redis killed and restarted while writers are running ------------------------------- */

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>

enum { NW = 4, PER = 30 };

typedef struct writer {
    cc_store *s;
    int id;
    cc_key keys[PER];
    rk_status st[PER];
    atomic_int *progress;
} writer;

static void *write_loop(void *arg)
{
    writer *w = arg;
    for (int i = 0; i < PER; i++) {
        w->st[i] = cct_put(w->s, "t", (uint64_t)(w->id * 1000 + i), 2000, 1, &w->keys[i]);
        atomic_fetch_add(w->progress, 1);
    }
    return NULL;
}

static int count_cb(void *arg, const uint8_t *k, size_t kl, const uint8_t *v, size_t vl)
{
    ++*(int *)arg;
    return 0;
}

Test(redis_restart, during_concurrent_writes_acknowledged_puts_survive)
{
    if (!rk_test_redis_server_path())
        cr_skip_test("skipped: redis-server not on PATH");
    cct_redis_proc r = {0};
    cr_assert(cct_redis_start(&r));
    char dir[256];
    cr_assert_not_null(rk_test_tmpdir(dir, sizeof(dir)));
    cc_store *s = open_on(dir, r.port, "rk:");
    cct_make_tenant(s, "t", 0, 0, CC_QUOTA_REJECT);
    atomic_int progress = 0;
    writer w[NW];
    pthread_t th[NW];
    for (int i = 0; i < NW; i++) {
        w[i] = (writer){.s = s, .id = i, .progress = &progress};
        pthread_create(&th[i], NULL, write_loop, &w[i]);
    }
    while (atomic_load(&progress) < NW * PER / 3)
        sched_yield(); /* waits for the writers' own progress, not for time */
    cct_redis_kill(&r);
    r.p.pid = 0;
    cr_assert(cct_redis_start(&r), "redis-server did not restart");
    for (int i = 0; i < NW; i++)
        pthread_join(th[i], NULL);

    int ok = 0;
    for (int i = 0; i < NW; i++)
        for (int j = 0; j < PER; j++) {
            cr_expect(w[i].st[j] == RK_OK || w[i].st[j] == RK_ERR_UNAVAILABLE || w[i].st[j] == RK_ERR_TIMEOUT,
                      "put %d/%d: %s", i, j,
                      rk_strerror(w[i].st[j]));
            if (w[i].st[j] == RK_OK) {
                ok++;
                cct_expect_blob(s, "t", &w[i].keys[j], (uint64_t)(w[i].id * 1000 + j), 2000);
            }
        }
    cr_expect(ok >= NW * PER / 3, "%d puts acknowledged", ok);
    uint64_t removed;
    cr_assert_eq(cc_store_gc(s, &removed), RK_OK);
    int blobs = 0;
    cr_assert_eq(cc_blobstore_scan(cc_store_blobstore(s), CC_SPACE_CHUNKS, count_cb, &blobs), RK_OK);
    cc_tenant_info ti;
    cr_assert_eq(cc_store_tenant_usage(s, "t", &ti), RK_OK);
    cr_expect(ti.chunks >= (uint64_t)ok, "every acknowledged chunk is accounted (%llu < %d)",
              (unsigned long long)ti.chunks, ok);
    cr_expect_eq(ti.chunks, (uint64_t)blobs, "usage matches the blobs on disk exactly");
    cr_expect_eq(ti.bytes, ti.chunks * 2000);
    cc_stats st;
    cc_store_stats(s, &st);
    cr_expect(st.rebuilds >= 2, "open + after the restart");
    cc_store_close(s);
    cct_redis_kill(&r);
    cct_redis_fini(&r);
    rk_test_rmrf(dir);
}
