/* Non-blocking record lookups on a libevent loop: answers match the synchronous backend;
 * a stalled Redis times out instead of blocking the loop; a dead one fails the batch and a
 * restarted one is reconnected to. The write side (insert, remove) is checked step by step
 * against the synchronous backend on the same redis-server. */
#include "cc_testlib.h"

#include <event2/event.h>
#include <pthread.h>
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

/* A private redis-server (skips without one) and a synchronous metadata store on it. */
static void start_private(cct_redis_proc *rp, cc_metastore *ms)
{
    if (!rk_test_redis_server_path())
        cr_skip_test("skipped: redis-server not on PATH");
    cr_assert(cct_redis_start(rp));
    cr_assert_eq(cc_metastore_redis_open("127.0.0.1", rp->port, "rk:", NULL, ms), RK_OK);
}

Test(redis_async, lookups_timeouts_and_reconnects)
{
    cct_redis_proc rp = {0};
    cc_metastore ms;
    start_private(&rp, &ms);
    cc_tenant_cfg t = {.name = "t"};
    cr_assert_eq(cc_metastore_tenant_put(&ms, &t), RK_OK);
    cc_record r0 = cct_rec("t", 0, 100, 1, false), r1 = cct_rec("t", 1, 101, 1, false), r2 = cct_rec("t", 2, 102, 1, false);
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
    cr_expect(cc_key_equal(&res.recs[2].key, &r2.key) && res.recs[2].size == 102 && res.recs[2].csum == 1002);
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

/* ---- the write side: insert and remove, against the synchronous backend ------------------- */

/* One operation driven to completion on a loop (the tests' way of waiting: the callback is
 * the event). */
typedef struct waiter {
    struct event_base *base;
    int calls;
    rk_status st;
    cc_evlist ev;    /* insert: evicted (copied) */
    cc_record rec;   /* remove: the removed record (copied) */
    char msg[256];
} waiter;

static void w_reset(waiter *w)
{
    cc_evlist_free(&w->ev);
    cc_record_clear(&w->rec);
    struct event_base *b = w->base;
    memset(w, 0, sizeof(*w));
    w->base = b;
    cc_record_init(&w->rec);
}

static void on_ins(void *arg, rk_status st, const cc_evlist *ev)
{
    waiter *w = arg;
    w->calls++;
    w->st = st;
    snprintf(w->msg, sizeof(w->msg), "%s", st == RK_OK ? "" : rk_error_msg());
    for (size_t i = 0; i < ev->n; i++)
        cc_evlist_push(&w->ev, &ev->items[i].key, ev->items[i].csum, ev->items[i].size);
}

static void on_rem(void *arg, rk_status st, const cc_record *removed)
{
    waiter *w = arg;
    w->calls++;
    w->st = st;
    snprintf(w->msg, sizeof(w->msg), "%s", st == RK_OK ? "" : rk_error_msg());
    if (st == RK_OK)
        cc_record_copy(&w->rec, removed);
}

static void w_wait(waiter *w)
{
    while (w->calls == 0)
        cr_assert_geq(event_base_loop(w->base, EVLOOP_ONCE), 0);
    cr_assert_eq(w->calls, 1, "one callback per operation");
}

/* A metadata backend under test: the synchronous one, or the asynchronous one on a loop. */
typedef struct be {
    cc_metastore *ms;     /* sync (setup for both) */
    cc_redis_async *ra;   /* async, or NULL */
    waiter w;
} be;

static rk_status be_insert(be *b, const cc_record *r, unsigned flags, cc_evlist *ev)
{
    if (!b->ra)
        return cc_metastore_insert(b->ms, r, flags, ev);
    w_reset(&b->w);
    cr_assert_eq(cc_redis_async_insert(b->ra, r, flags, on_ins, &b->w), RK_OK, "%s", rk_error_msg());
    cr_expect_eq(b->w.calls, 0, "the callback never runs inside the call");
    w_wait(&b->w);
    for (size_t i = 0; ev && i < b->w.ev.n; i++)
        cc_evlist_push(ev, &b->w.ev.items[i].key, b->w.ev.items[i].csum, b->w.ev.items[i].size);
    return b->w.st;
}

static rk_status be_remove(be *b, const cc_key *k, uint64_t csum, cc_record *removed)
{
    if (!b->ra)
        return cc_metastore_remove(b->ms, k, csum, removed);
    w_reset(&b->w);
    cr_assert_eq(cc_redis_async_remove(b->ra, k, csum, on_rem, &b->w), RK_OK, "%s", rk_error_msg());
    w_wait(&b->w);
    if (removed && b->w.st == RK_OK)
        cc_record_copy(removed, &b->w.rec);
    return b->w.st;
}

static void need_redis(char *host, size_t n, int *port)
{
    if (!cct_redis(host, n, port))
        cr_skip_test("skipped: RAGKV_TEST_REDIS not set (run through scripts/test.sh)");
}

/* A synchronous metadata store on the harness's Redis under a fresh prefix (skips without
 * one); host, port and prefix are filled in. */
static void open_fresh(char *host, int *port, char *prefix, const cc_redis_opts *o, cc_metastore *ms)
{
    need_redis(host, 128, port);
    cct_prefix(prefix, 64);
    cr_assert_eq(cc_metastore_redis_open(host, *port, prefix, o, ms), RK_OK, "%s", rk_error_msg());
}

/* Both backends run the same steps on the same redis-server (a key prefix each); every status,
 * every evicted list and the final accounting must be equal. */
Test(redis_async, insert_and_remove_conform_to_the_sync_backend, .timeout = 60)
{
    char host[128];
    int port;
    need_redis(host, sizeof(host), &port);
    struct event_base *base = event_base_new();
    be b[2];
    cc_metastore ms[2];
    char prefix[2][64];
    for (int k = 0; k < 2; k++) {
        cct_prefix(prefix[k], sizeof(prefix[k]));
        cr_assert_eq(cc_metastore_redis_open(host, port, prefix[k], NULL, &ms[k]), RK_OK, "%s", rk_error_msg());
        cr_assert_eq(cc_metastore_mark_intact(&ms[k]), RK_OK);
        memset(&b[k], 0, sizeof(b[k]));
        b[k].ms = &ms[k];
        b[k].w.base = base;
        cc_record_init(&b[k].w.rec);
        cct_ms_tenant(&ms[k], "a", 1000, 3, CC_QUOTA_REJECT);
        cct_ms_tenant(&ms[k], "b", 0, 0, CC_QUOTA_REJECT);
        cct_ms_tenant(&ms[k], "c", 0, 5, CC_QUOTA_EVICT);
    }
    cr_assert_eq(cc_redis_async_open(base, host, port, prefix[1], NULL, &b[1].ra), RK_OK);

    cc_record r1 = cct_rec("a", 1, 400, 10, false), r2 = cct_rec("a", 2, 400, 10, false), r3 = cct_rec("a", 3, 400, 10, false);
    cc_record ghost = cct_rec("ghost", 1, 1, 1, false), p1 = cct_rec("a", 10, 900, 1, true), r4 = cct_rec("a", 4, 200, 1000, false);
    rk_status want[] = {RK_OK, RK_ERR_EXISTS, RK_OK, RK_ERR_QUOTA, RK_ERR_NOT_FOUND};
    const cc_record *seq[] = {&r1, &r1, &r2, &r3, &ghost};
    for (int k = 0; k < 2; k++)
        for (size_t i = 0; i < 5; i++)
            cr_expect_eq(be_insert(&b[k], seq[i], 0, NULL), want[i], "%s backend, step %zu: %s", k ? "async" : "sync", i,
                         rk_error_msg());
    cr_expect_str_eq(b[1].w.msg, "insert: no tenant/namespace 'ghost'", "the same message");

    /* evict policy: r1 is touched, so r2 goes first; then a pinned chunk evicts both */
    cc_evlist ev[2] = {{0}, {0}};
    for (int k = 0; k < 2; k++) {
        cr_assert_eq(cc_metastore_tenant_put(&ms[k], &(cc_tenant_cfg){.name = "a", .max_bytes = 1000, .max_chunks = 3,
                                                                      .policy = CC_QUOTA_EVICT}), RK_OK);
        cc_touch t = {.key = r1.key, .n = 5, .now_ms = 1700000001000ull};
        cr_assert_eq(cc_metastore_touch(&ms[k], &t, 1), RK_OK);
        cr_assert_eq(be_insert(&b[k], &r3, 0, &ev[k]), RK_OK, "%s", rk_error_msg());
        cr_assert_eq(ev[k].n, 1);
        cr_expect(cc_key_equal(&ev[k].items[0].key, &r2.key) && ev[k].items[0].csum == r2.csum &&
                  ev[k].items[0].size == 400);
        cc_evlist_free(&ev[k]);
        cr_assert_eq(be_insert(&b[k], &p1, 0, &ev[k]), RK_OK);
        cr_expect_eq(ev[k].n, 2, "both unpinned chunks make room");
        cr_expect_eq(be_insert(&b[k], &r4, 0, NULL), RK_ERR_QUOTA, "pins leave no room");
        cr_expect_eq(be_insert(&b[k], &r4, CC_INSERT_FORCE, NULL), RK_OK, "force skips the quota");
    }
    cr_assert_eq(ev[0].n, ev[1].n);
    for (size_t i = 0; i < ev[0].n; i++)
        cr_expect(cc_key_equal(&ev[0].items[i].key, &ev[1].items[i].key) && ev[0].items[i].csum == ev[1].items[i].csum &&
                      ev[0].items[i].size == ev[1].items[i].size,
                  "evicted %zu equal", i);
    cc_evlist_free(&ev[0]);
    cc_evlist_free(&ev[1]);

    /* remove: only with the expected checksum; the record comes back */
    for (int k = 0; k < 2; k++) {
        cc_record rem;
        cc_record_init(&rem);
        cr_expect_eq(be_remove(&b[k], &r4.key, 99, NULL), RK_ERR_NOT_FOUND);
        cr_expect_eq(be_remove(&b[k], &r4.key, r4.csum, &rem), RK_OK);
        cr_expect(cc_key_equal(&rem.key, &r4.key) && rem.size == 200 && rem.csum == r4.csum, "removed record");
        cc_record_clear(&rem);
        cr_expect_eq(be_remove(&b[k], &r4.key, 0, NULL), RK_ERR_NOT_FOUND);
    }

    /* a longer run under the evict policy (5 chunks), costs varied: identical evicted lists */
    for (int i = 0; i < 24; i++) {
        cc_record r = cct_rec("c", 100 + i, 50 + (uint64_t)(i % 7) * 10, (double)((i * 7) % 11) + 0.5, i % 9 == 0);
        for (int k = 0; k < 2; k++) {
            cc_evlist_free(&ev[k]);
            cr_expect_eq(be_insert(&b[k], &r, 0, &ev[k]), RK_OK, "%s", rk_error_msg());
        }
        cr_assert_eq(ev[0].n, ev[1].n, "step %d: %zu vs %zu evicted", i, ev[0].n, ev[1].n);
        for (size_t j = 0; j < ev[0].n; j++)
            cr_expect(cc_key_equal(&ev[0].items[j].key, &ev[1].items[j].key), "step %d, evicted %zu", i, j);
    }
    cc_evlist_free(&ev[0]);
    cc_evlist_free(&ev[1]);

    /* the accounting both leave behind */
    const char *names[] = {"a", "b", "c"};
    for (int i = 0; i < 3; i++) {
        cc_tenant_info t0, t1;
        cr_assert_eq(cc_metastore_tenant_get(&ms[0], names[i], &t0), RK_OK);
        cr_assert_eq(cc_metastore_tenant_get(&ms[1], names[i], &t1), RK_OK);
        cr_expect(t0.bytes == t1.bytes && t0.chunks == t1.chunks && t0.pinned_bytes == t1.pinned_bytes &&
                      t0.pinned_chunks == t1.pinned_chunks && t0.clock == t1.clock,
                  "tenant %s: %llu/%llu vs %llu/%llu", names[i], (unsigned long long)t0.bytes,
                  (unsigned long long)t0.chunks, (unsigned long long)t1.bytes, (unsigned long long)t1.chunks);
    }
    cc_tenant_info tc;
    cr_assert_eq(cc_metastore_tenant_get(&ms[1], "c", &tc), RK_OK);
    cr_expect_eq(tc.chunks, 5, "the quota held");
    cc_redis_async_close(b[1].ra);
    for (int k = 0; k < 2; k++) {
        w_reset(&b[k].w);
        cc_metastore_clear(&ms[k]);
        cc_metastore_close(&ms[k]);
    }
    event_base_free(base);
}

/* Many writers of one tenant at once, each with its own loop and connection (and one
 * synchronous writer beside them): the quota is never exceeded. */
typedef struct racer {
    char host[128], prefix[64];
    int port, id, n;
    const char *ns;
    bool sync;
    int ok, quota, other;
    cc_evlist ev;   /* everything this writer's inserts evicted */
} racer;

typedef struct race_op {
    racer *r;
    int *left;
    struct event_base *base;
} race_op;

static void on_race(void *arg, rk_status st, const cc_evlist *ev)
{
    race_op *o = arg;
    if (st == RK_OK)
        o->r->ok++;
    else if (st == RK_ERR_QUOTA)
        o->r->quota++;
    else
        o->r->other++;
    for (size_t i = 0; st == RK_OK && i < ev->n; i++)
        cc_evlist_push(&o->r->ev, &ev->items[i].key, ev->items[i].csum, ev->items[i].size);
    if (--*o->left == 0)
        event_base_loopbreak(o->base);
}

static void *race_main(void *arg)
{
    racer *r = arg;
    if (r->sync) {
        cc_metastore ms;
        if (cc_metastore_redis_open(r->host, r->port, r->prefix, NULL, &ms) != RK_OK)
            return NULL;
        for (int i = 0; i < r->n; i++) {
            cc_record rec = cct_rec(r->ns, r->id * 1000 + i, 10, 1 + i % 3, false);
            rk_status st = cc_metastore_insert(&ms, &rec, 0, &r->ev);
            st == RK_OK ? r->ok++ : st == RK_ERR_QUOTA ? r->quota++ : r->other++;
        }
        cc_metastore_close(&ms);
        return NULL;
    }
    struct event_base *base = event_base_new();
    cc_redis_async *ra;
    if (cc_redis_async_open(base, r->host, r->port, r->prefix, NULL, &ra) != RK_OK)
        return NULL;
    int left = r->n;
    race_op ops[64];
    for (int i = 0; i < r->n; i++) { /* all in flight together */
        ops[i] = (race_op){r, &left, base};
        cc_record rec = cct_rec(r->ns, r->id * 1000 + i, 10, 1 + i % 3, false);
        if (cc_redis_async_insert(ra, &rec, 0, on_race, &ops[i]) != RK_OK) {
            r->other++;
            left--;
        }
    }
    while (left > 0 && event_base_dispatch(base) == 0) {
    }
    cc_redis_async_close(ra);
    event_base_free(base);
    return NULL;
}

static void t_race(cc_quota_policy pol)
{
    char host[128], prefix[64];
    int port;
    cc_metastore ms;
    open_fresh(host, &port, prefix, NULL, &ms);
    cr_assert_eq(cc_metastore_mark_intact(&ms), RK_OK);
    cct_ms_tenant(&ms, "q", 0, 23, pol);
    enum { W = 5, N = 16 };
    racer rs[W];
    pthread_t th[W];
    for (int i = 0; i < W; i++) {
        rs[i] = (racer){.port = port, .id = i, .n = N, .ns = "q", .sync = i == W - 1};
        snprintf(rs[i].host, sizeof(rs[i].host), "%s", host);
        snprintf(rs[i].prefix, sizeof(rs[i].prefix), "%s", prefix);
        cr_assert_eq(pthread_create(&th[i], NULL, race_main, &rs[i]), 0);
    }
    int ok = 0, quota = 0, other = 0;
    size_t evicted = 0;
    for (int i = 0; i < W; i++) {
        pthread_join(th[i], NULL);
        ok += rs[i].ok;
        quota += rs[i].quota;
        other += rs[i].other;
        evicted += rs[i].ev.n;
    }
    cr_expect_eq(other, 0, "no failures");
    cc_tenant_info ti;
    cr_assert_eq(cc_metastore_tenant_get(&ms, "q", &ti), RK_OK);
    cr_expect_eq(ti.chunks, 23, "usage exactly at the quota: %llu", (unsigned long long)ti.chunks);
    cr_expect_eq(ti.bytes, 230);
    if (pol == CC_QUOTA_REJECT) {
        cr_expect_eq(ok, 23, "exactly the quota admitted (%d)", ok);
        cr_expect_eq(quota, W * N - 23);
    } else {
        cr_expect_eq(ok, W * N, "all admitted");
        cr_expect_eq(evicted, (size_t)(W * N - 23), "every eviction reported once");
        /* the evicted are exactly the ones gone */
        size_t present = 0;
        for (int w = 0; w < W; w++)
            for (int i = 0; i < N; i++) {
                cc_record rec = cct_rec("q", w * 1000 + i, 10, 1, false), got;
                rk_status gs;
                cr_assert_eq(cc_metastore_get(&ms, &rec.key, 1, &got, &gs), RK_OK);
                cc_record_clear(&got);
                bool gone = false;
                for (int v = 0; v < W; v++)
                    for (size_t j = 0; j < rs[v].ev.n; j++)
                        gone = gone || cc_key_equal(&rs[v].ev.items[j].key, &rec.key);
                cr_expect_eq(gs == RK_OK, !gone, "writer %d chunk %d: present iff not evicted", w, i);
                present += gs == RK_OK;
            }
        cr_expect_eq(present, 23);
    }
    for (int i = 0; i < W; i++)
        cc_evlist_free(&rs[i].ev);
    cc_metastore_clear(&ms);
    cc_metastore_close(&ms);
}

Test(redis_async, quota_race_reject, .timeout = 60) { t_race(CC_QUOTA_REJECT); }
Test(redis_async, quota_race_evict, .timeout = 60) { t_race(CC_QUOTA_EVICT); }

/* NOSCRIPT (script cache flushed) falls back to EVAL; array replies over the limit are refused
 * like the synchronous backend refuses them. */
Test(redis_async, noscript_falls_back_to_eval_and_reply_limits_hold, .timeout = 60)
{
    char host[128], prefix[64];
    int port;
    cc_metastore ms;
    open_fresh(host, &port, prefix, NULL, &ms);
    cct_ms_tenant(&ms, "x", 0, 1, CC_QUOTA_EVICT);
    struct event_base *base = event_base_new();
    be b = {.ms = &ms, .w = {.base = base}};
    cc_record_init(&b.w.rec);
    cr_assert_eq(cc_redis_async_open(base, host, port, prefix, NULL, &b.ra), RK_OK);
    cc_record r1 = cct_rec("x", 1, 10, 1, false), r2 = cct_rec("x", 2, 10, 1, false), r3 = cct_rec("x", 3, 10, 1, false);
    cr_assert_eq(be_insert(&b, &r1, 0, NULL), RK_OK, "%s", rk_error_msg()); /* connected: digests loaded */
    redisContext *c = redisConnect(host, port);
    cr_assert(c && !c->err);
    redisReply *rep = redisCommand(c, "SCRIPT FLUSH");
    cr_assert(rep && rep->type == REDIS_REPLY_STATUS);
    freeReplyObject(rep);
    cc_evlist ev = {0};
    cr_expect_eq(be_insert(&b, &r2, 0, &ev), RK_OK, "insert after SCRIPT FLUSH: %s", rk_error_msg());
    cr_expect_eq(ev.n, 1, "r1 evicted");
    cc_evlist_free(&ev);
    rep = redisCommand(c, "SCRIPT FLUSH");
    freeReplyObject(rep);
    cr_expect_eq(be_remove(&b, &r2.key, 0, NULL), RK_OK, "remove after SCRIPT FLUSH: %s", rk_error_msg());
    redisFree(c);
    cc_redis_async_close(b.ra);

    /* max_reply_elements 2: an insert that evicts (4 elements) is refused, as with sync */
    cc_redis_opts o = cc_redis_opts_default();
    o.max_reply_elements = 2;
    cc_metastore ms2;
    cr_assert_eq(cc_metastore_redis_open(host, port, prefix, &o, &ms2), RK_OK);
    cr_assert_eq(cc_redis_async_open(base, host, port, prefix, &o, &b.ra), RK_OK);
    cr_assert_eq(be_insert(&b, &r1, 0, NULL), RK_OK);
    cr_expect_eq(be_insert(&b, &r2, 0, NULL), RK_ERR_META, "the reply listing r1 is too long");
    cr_expect_eq(cc_metastore_insert(&ms2, &r3, 0, NULL), RK_ERR_META, "the sync backend agrees");
    cc_redis_async_close(b.ra);
    w_reset(&b.w);
    cc_metastore_clear(&ms);
    cc_metastore_close(&ms);
    cc_metastore_close(&ms2);
    event_base_free(base);
}

/* A stalled Redis: an insert times out after command_timeout_ms per attempt (retries included)
 * instead of blocking the loop; a dead one fails with UNAVAILABLE; a restarted one is
 * reconnected to, also by an operation that was retrying while it was down; a Redis that came
 * back without ragkv's marker after a connection had seen it is refused until the marker is
 * set again (the store's rebuild). */
Test(redis_async, stalls_restarts_and_lost_data, .timeout = 120)
{
    cct_redis_proc rp = {0};
    cc_metastore ms;
    start_private(&rp, &ms);
    cr_assert_eq(cc_metastore_mark_intact(&ms), RK_OK);
    cct_ms_tenant(&ms, "t", 0, 0, CC_QUOTA_REJECT);
    struct event_base *base = event_base_new();
    be b = {.ms = &ms, .w = {.base = base}};
    cc_record_init(&b.w.rec);
    cc_redis_opts o = cc_redis_opts_default();
    o.command_timeout_ms = 300;
    o.retries = 0;
    cr_assert_eq(cc_redis_async_open(base, "127.0.0.1", rp.port, "rk:", &o, &b.ra), RK_OK);
    cc_record r[6];
    for (int i = 0; i < 6; i++)
        r[i] = cct_rec("t", i, 10, 1, false);
    cr_assert_eq(be_insert(&b, &r[0], 0, NULL), RK_OK, "%s", rk_error_msg());

    /* stalled, no retries: one command timeout */
    kill(rp.p.pid, SIGSTOP);
    uint64_t t0 = rk_now_ns();
    cr_expect_eq(be_insert(&b, &r[1], 0, NULL), RK_ERR_TIMEOUT);
    double ms1 = (rk_now_ns() - t0) / 1e6;
    cr_expect(ms1 >= 290 && ms1 < 1500, "timed out after %.0f ms", ms1);
    cc_redis_async_close(b.ra);
    /* two retries: three attempts of 300 ms and two backoffs (20, 40 ms); none gets a
     * connection ready (the stalled server never answers its checks) */
    o.retries = 2;
    cr_assert_eq(cc_redis_async_open(base, "127.0.0.1", rp.port, "rk:", &o, &b.ra), RK_OK);
    t0 = rk_now_ns();
    cr_expect_eq(be_insert(&b, &r[2], 0, NULL), RK_ERR_TIMEOUT);
    double ms3 = (rk_now_ns() - t0) / 1e6;
    cr_expect(ms3 >= 900 && ms3 < 3000, "three attempts took %.0f ms", ms3);
    kill(rp.p.pid, SIGCONT);
    cr_expect_eq(be_insert(&b, &r[3], 0, NULL), RK_OK, "answered again: %s", rk_error_msg());

    /* dead: UNAVAILABLE after the retries; restarted (empty, but no connection of this client
     * had seen... it had: the marker was there) */
    cct_redis_kill(&rp);
    cr_expect_eq(be_insert(&b, &r[4], 0, NULL), RK_ERR_UNAVAILABLE);
    cr_expect_eq(cc_redis_async_losses(b.ra), 0, "down is not lost");
    rp.p.pid = 0;
    cr_assert(cct_redis_start(&rp));
    t0 = rk_now_ns();
    cr_expect_eq(be_insert(&b, &r[4], 0, NULL), RK_ERR_UNAVAILABLE, "the data is gone: refused, not answered");
    cr_expect_eq(cc_redis_async_losses(b.ra), 1, "and counted as a loss");
    cr_expect(strstr(b.w.msg, "lost ragkv's metadata") != NULL, "says why: %s", b.w.msg);
    cr_expect_lt((rk_now_ns() - t0) / 1e6, 1000.0, "at once, without retries");
    /* the rebuild (here by hand): marker and tenant back; the next operation goes through */
    cc_metastore_close(&ms);
    cr_assert_eq(cc_metastore_redis_open("127.0.0.1", rp.port, "rk:", NULL, &ms), RK_OK);
    cct_ms_tenant(&ms, "t", 0, 0, CC_QUOTA_REJECT);
    cr_assert_eq(cc_metastore_mark_intact(&ms), RK_OK);
    cr_expect_eq(be_insert(&b, &r[4], 0, NULL), RK_OK, "after the rebuild: %s", rk_error_msg());
    cc_redis_async_close(b.ra);

    /* an operation retrying while Redis restarts completes on the new server */
    o.retries = 30;
    o.backoff_ms = 10;
    cr_assert_eq(cc_redis_async_open(base, "127.0.0.1", rp.port, "rk:", &o, &b.ra), RK_OK);
    cr_assert_eq(be_insert(&b, &r[5], 0, NULL), RK_OK, "%s", rk_error_msg());
    cct_redis_kill(&rp);
    w_reset(&b.w);
    cc_key k5 = r[5].key;
    cr_assert_eq(cc_redis_async_remove(b.ra, &k5, 0, on_rem, &b.w), RK_OK);
    rp.p.pid = 0;
    cr_assert(cct_redis_start(&rp)); /* while the remove retries (its first attempt fails) */
    cc_metastore_close(&ms);
    cr_assert_eq(cc_metastore_redis_open("127.0.0.1", rp.port, "rk:", NULL, &ms), RK_OK);
    cr_assert_eq(cc_metastore_mark_intact(&ms), RK_OK);
    w_wait(&b.w);
    cr_expect_eq(b.w.st, RK_ERR_NOT_FOUND, "answered by the restarted server (empty): %s", rk_error_msg());
    cc_redis_async_close(b.ra);
    w_reset(&b.w);
    cc_metastore_close(&ms);
    event_base_free(base);
    cct_redis_kill(&rp);
    cct_redis_fini(&rp);
}
