/* Non-blocking record lookups on a libevent loop: answers match the synchronous backend;
 * a stalled Redis times out instead of blocking the loop; a dead one fails the batch and a
 * restarted one is reconnected to. */
#include "cc_testlib.h"

#include <event2/event.h>
#include "ragkv/redis_async.h"

typedef struct result {
    struct event_base *base;
    int calls;
    rk_status st;
    size_t n;
    rk_status sts[8];
    cc_record recs[8];
} result;

static void on_done(void *arg, rk_status st, const cc_record *recs, const rk_status *sts, size_t n)
{
    result *r = arg;
    r->calls++;
    r->st = st;
    r->n = n;
    for (size_t i = 0; i < n && i < 8; i++) {
        r->sts[i] = sts[i];
        cc_record_init(&r->recs[i]);
        if (st == RK_OK && sts[i] == RK_OK)
            cc_record_copy(&r->recs[i], &recs[i]);
    }
    event_base_loopbreak(r->base);
}

/* Run the loop until the callback (the callback breaks the loop). */
static void wait_cb(result *r)
{
    struct event_base *b = r->base;
    while (r->calls == 0)
        cr_assert_eq(event_base_dispatch(b), 0);
}

static void clear_result(result *r)
{
    for (size_t i = 0; i < r->n && i < 8; i++)
        cc_record_clear(&r->recs[i]);
    struct event_base *b = r->base;
    memset(r, 0, sizeof(*r));
    r->base = b;
}

static cc_record mk(const char *ns, int i)
{
    cc_record rec;
    cc_record_init(&rec);
    int32_t t = i;
    cc_key_compute("m", ns, &t, 1, &rec.key);
    snprintf(rec.ns, sizeof(rec.ns), "%s", ns);
    strcpy(rec.model, "m");
    rec.size = 100 + (uint64_t)i;
    rec.csum = 42 + (uint64_t)i;
    rec.cost = 1;
    return rec;
}

Test(redis_async, lookups_timeouts_and_reconnects)
{
    if (!rk_test_redis_server_path())
        cr_skip_test("skipped: redis-server not on PATH");
    cct_redis_proc rp = {0};
    cr_assert(cct_redis_start(&rp));
    cc_metastore ms;
    cr_assert_eq(cc_metastore_redis_open("127.0.0.1", rp.port, "rk:", NULL, &ms), RK_OK);
    cc_tenant_cfg t = {.name = "t"};
    cr_assert_eq(cc_metastore_tenant_put(&ms, &t), RK_OK);
    cc_record r0 = mk("t", 0), r1 = mk("t", 1), r2 = mk("t", 2);
    cr_assert_eq(cc_metastore_insert(&ms, &r0, 0, NULL), RK_OK);
    cr_assert_eq(cc_metastore_insert(&ms, &r2, 0, NULL), RK_OK);
    cc_metastore_close(&ms);

    result res = {.base = event_base_new()};
    cr_assert_not_null(res.base);
    cc_redis_opts o = cc_redis_opts_default();
    o.command_timeout_ms = 300;
    o.backoff_ms = 1;
    cc_redis_async *ra;
    cr_assert_eq(cc_redis_async_open(res.base, "127.0.0.1", rp.port, "rk:", &o, &ra), RK_OK);

    /* a batch: present, absent, present */
    cc_key keys[3] = {r0.key, r1.key, r2.key};
    cr_assert_eq(cc_redis_async_get(ra, keys, 3, on_done, &res), RK_OK);
    cr_expect_eq(res.calls, 0, "the callback never runs inside the call");
    wait_cb(&res);
    cr_assert_eq(res.st, RK_OK);
    cr_assert_eq(res.n, 3);
    cr_expect(res.sts[0] == RK_OK && res.sts[1] == RK_ERR_NOT_FOUND && res.sts[2] == RK_OK);
    cr_expect(cc_key_equal(&res.recs[2].key, &r2.key) && res.recs[2].size == 102 && res.recs[2].csum == 44);
    cr_expect_str_eq(res.recs[0].ns, "t");
    clear_result(&res);
    cr_expect_eq(cc_redis_async_get(ra, keys, 0, on_done, &res), RK_ERR_INVALID);

    /* stalled: the loop gets RK_ERR_TIMEOUT after command_timeout_ms */
    kill(rp.p.pid, SIGSTOP);
    uint64_t t0 = rk_now_ns();
    cr_assert_eq(cc_redis_async_get(ra, keys, 2, on_done, &res), RK_OK);
    wait_cb(&res);
    double waited = (rk_now_ns() - t0) / 1e6;
    cr_expect_eq(res.st, RK_ERR_TIMEOUT);
    cr_expect(waited >= 250 && waited < 3000, "timed out after %.0f ms", waited);
    clear_result(&res);
    kill(rp.p.pid, SIGCONT);

    /* the next call reconnects */
    cr_assert_eq(cc_redis_async_get(ra, keys, 1, on_done, &res), RK_OK, "%s", rk_error_msg());
    wait_cb(&res);
    cr_expect_eq(res.st, RK_OK);
    cr_expect_eq(res.sts[0], RK_OK);
    clear_result(&res);

    /* dead: UNAVAILABLE (from the call or from the callback), never a hang */
    cct_redis_kill(&rp);
    rk_status rc = cc_redis_async_get(ra, keys, 1, on_done, &res);
    if (rc == RK_OK) {
        wait_cb(&res);
        cr_expect_eq(res.st, RK_ERR_UNAVAILABLE);
    } else {
        cr_expect_eq(rc, RK_ERR_UNAVAILABLE);
    }
    clear_result(&res);

    /* close with a batch in flight: it completes with CANCELLED */
    rp.p.pid = 0;
    cr_assert(cct_redis_start(&rp));
    rc = RK_ERR_UNAVAILABLE;
    for (int i = 0; i < 100 && rc != RK_OK; i++) {
        rc = cc_redis_async_get(ra, keys, 1, on_done, &res);
        if (rc != RK_OK) /* inside the backoff after the failed connect: let the loop run */
            event_base_loop(res.base, EVLOOP_NONBLOCK);
    }
    cr_assert_eq(rc, RK_OK);
    cc_redis_async_close(ra);
    cr_expect_eq(res.calls, 1);
    cr_expect_eq(res.st, RK_ERR_CANCELLED);
    clear_result(&res);
    event_base_free(res.base);
    cct_redis_kill(&rp);
    cct_redis_fini(&rp);
}
