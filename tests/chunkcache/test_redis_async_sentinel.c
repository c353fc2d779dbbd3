/* test_redis_async_sentinel.c — the asynchronous metadata client following Redis Sentinel
 * (ragkv/redis_async.h, opts->sentinels), against real Sentinels (redis-server --sentinel):
 * the primary they name is found and used, a dead, a silent and a non-Sentinel entry of the
 * list are passed over; a Sentinel naming a replica gets nothing read or written there (ROLE
 * refused, retried, resolved again), and once it names the primary the same client goes on; a
 * failover (primary killed, replica promoted, the Sentinel naming it) is followed with the
 * data intact. The Sentinels answer from their configuration: no test waits for a Sentinel
 * to decide anything. */
#include "cc_testlib.h"

#include <stdarg.h>

#include <event2/event.h>

#include "ragkv/redis_async.h"

/* One operation driven to completion on a loop (its callback is the event waited for). */
typedef struct waiter {
    struct event_base *base;
    int calls;
    rk_status st;     /* the operation's status */
    rk_status st0;    /* get: the first key's status */
    char msg[256];    /* rk_error_msg() in the callback when st != RK_OK */
} waiter;

static void w_done(waiter *w, rk_status st)
{
    w->calls++;
    w->st = st;
    snprintf(w->msg, sizeof(w->msg), "%s", st == RK_OK ? "" : rk_error_msg());
}

static void on_ins(void *arg, rk_status st, const cc_evlist *ev)
{
    (void)ev;
    w_done(arg, st);
}

static void on_get(void *arg, rk_status st, const cc_record *recs, const rk_status *sts, size_t n)
{
    (void)recs;
    waiter *w = arg;
    w->st0 = st == RK_OK && n > 0 ? sts[0] : st;
    w_done(w, st);
}

static void w_wait(waiter *w)
{
    while (w->calls == 0)
        cr_assert_geq(event_base_loop(w->base, EVLOOP_ONCE), 0);
    cr_assert_eq(w->calls, 1, "one callback per operation");
}

static rk_status a_insert(cc_redis_async *ra, waiter *w, const cc_record *r)
{
    w->calls = 0;
    cr_assert_eq(cc_redis_async_insert(ra, r, 0, on_ins, w), RK_OK, "%s", rk_error_msg());
    w_wait(w);
    return w->st;
}

/* Look up one key: the batch's status; w->st0 is the key's (RK_OK: found). */
static rk_status a_get(cc_redis_async *ra, waiter *w, const cc_key *k)
{
    w->calls = 0;
    cr_assert_eq(cc_redis_async_get(ra, k, 1, on_get, w), RK_OK, "%s", rk_error_msg());
    w_wait(w);
    return w->st;
}

/* Skip without the harness's Redis or a redis-server to start Sentinels with. */
static void need_redis(char *host, size_t n, int *port)
{
    if (!cct_redis(host, n, port))
        cr_skip_test("skipped: RAGKV_TEST_REDIS not set (run through scripts/test.sh)");
    if (!rk_test_redis_server_path())
        cr_skip_test("skipped: redis-server not on PATH (Sentinels are redis-server --sentinel)");
}

/* A command on a synchronous connection to 127.0.0.1:port (asserting an answer that is not an
 * error); the reply is the caller's (freeReplyObject). */
static redisReply *cmd(int port, const char *fmt, ...)
{
    redisContext *c = redisConnect("127.0.0.1", port);
    cr_assert(c && !c->err, "connect to %d", port);
    va_list ap;
    va_start(ap, fmt);
    redisReply *rep = redisvCommand(c, fmt, ap);
    va_end(ap);
    cr_assert(rep && rep->type != REDIS_REPLY_ERROR, "%s on %d: %s", fmt, port, rep ? rep->str : c->errstr);
    redisFree(c);
    return rep;
}

/* The Sentinel on sport names the master `name` at 127.0.0.1:port from now on (what a
 * failover ends with, without the wait for one). */
static void sentinel_point(int sport, const char *name, int port)
{
    freeReplyObject(cmd(sport, "SENTINEL REMOVE %s", name));
    freeReplyObject(cmd(sport, "SENTINEL MONITOR %s 127.0.0.1 %d 1", name, port));
    freeReplyObject(cmd(sport, "SENTINEL SET %s down-after-milliseconds 60000", name));
}

/* Return once the replica of the Redis on port has everything written there so far: a write
 * of our own, then WAIT on the same connection (WAIT counts from the caller's last write). */
static void replica_caught_up(int port)
{
    redisContext *c = redisConnect("127.0.0.1", port);
    cr_assert(c && !c->err);
    redisReply *rep = redisCommand(c, "SET test:caught-up 1");
    cr_assert(rep && rep->type == REDIS_REPLY_STATUS);
    freeReplyObject(rep);
    rep = redisCommand(c, "WAIT 1 10000");
    cr_assert(rep && rep->type == REDIS_REPLY_INTEGER && rep->integer == 1, "the replica acknowledged");
    freeReplyObject(rep);
    redisFree(c);
}

/* How many times Redis on port ran command `name` (INFO commandstats). */
static long long calls_of(int port, const char *name)
{
    redisReply *rep = cmd(port, "INFO commandstats");
    char pat[64];
    snprintf(pat, sizeof(pat), "cmdstat_%s:calls=", name);
    const char *at = strstr(rep->str, pat);
    long long n = at ? atoll(at + strlen(pat)) : 0;
    freeReplyObject(rep);
    return n;
}

Test(redis_async_sentinel, finds_the_primary_past_dead_silent_and_wrong_entries, .timeout = 60)
{
    char host[128], prefix[64];
    int port;
    need_redis(host, sizeof(host), &port);
    cct_prefix(prefix, sizeof(prefix));
    cc_metastore ms;
    cr_assert_eq(cc_metastore_redis_open(host, port, prefix, NULL, &ms), RK_OK, "%s", rk_error_msg());
    cr_assert_eq(cc_metastore_mark_intact(&ms), RK_OK);
    cct_ms_tenant(&ms, "t", 0, 0, CC_QUOTA_REJECT);
    char tmp[256];
    cr_assert_not_null(rk_test_tmpdir(tmp, sizeof(tmp)));
    int sp1 = cct_free_port(), sp2 = cct_free_port(), dead = cct_free_port();
    rk_test_proc s1, s2;
    cr_assert(rk_test_sentinel(&s1, sp1, tmp, "rkt", host, port), "sentinel 1 did not start");
    cr_assert(rk_test_sentinel(&s2, sp2, tmp, "rkt", host, port), "sentinel 2 did not start");

    struct event_base *base = event_base_new();
    waiter w = {.base = base};
    cc_redis_opts o = cc_redis_opts_default();
    o.sentinel_master = "rkt";
    o.backoff_ms = 1;
    cc_redis_async *ra;
    o.sentinels = "127.0.0.1:1,nohost";
    cr_expect_eq(cc_redis_async_open(base, NULL, 0, prefix, &o, &ra), RK_ERR_INVALID, "a malformed list");

    /* a dead port, then a plain Redis (it refuses SENTINEL), then the Sentinel */
    char list[300];
    snprintf(list, sizeof(list), "127.0.0.1:%d,%s:%d,127.0.0.1:%d", dead, host, port, sp1);
    o.sentinels = list;
    cr_assert_eq(cc_redis_async_open(base, NULL, 0, prefix, &o, &ra), RK_OK, "%s", rk_error_msg());
    o.sentinels = NULL; /* copied at open */
    cc_record r1 = cct_rec("t", 1, 100, 1, false), r2 = cct_rec("t", 2, 100, 1, false);
    cr_expect_eq(a_insert(ra, &w, &r1), RK_OK, "%s", w.msg);
    cr_expect_eq(a_get(ra, &w, &r1.key), RK_OK, "%s", w.msg);
    cr_expect_eq(w.st0, RK_OK, "the insert is read back");
    cc_record got;
    rk_status gs;
    cr_assert_eq(cc_metastore_get(&ms, &r1.key, 1, &got, &gs), RK_OK);
    cr_expect_eq(gs, RK_OK, "written to the primary the Sentinel named (the harness's Redis)");
    cc_record_clear(&got);
    cr_expect_eq(cc_redis_async_losses(ra), 0);
    cc_redis_async_close(ra);

    /* a silent Sentinel (stopped: it accepts, never answers) first: its connect_timeout_ms
     * passes, longer than the operation's deadline, and the next Sentinel answers; the
     * operation's retry waits for that same resolution */
    kill(s1.pid, SIGSTOP);
    snprintf(list, sizeof(list), "127.0.0.1:%d,127.0.0.1:%d", sp1, sp2);
    o.sentinels = list;
    o.connect_timeout_ms = 400;
    o.command_timeout_ms = 250;
    o.retries = 3;
    cr_assert_eq(cc_redis_async_open(base, NULL, 0, prefix, &o, &ra), RK_OK, "%s", rk_error_msg());
    cr_expect_eq(a_insert(ra, &w, &r2), RK_OK, "past the silent Sentinel: %s", w.msg);
    cc_redis_async_close(ra);

    /* no Sentinel knows the name, or none is up: UNAVAILABLE after the retries, saying why */
    kill(s1.pid, SIGCONT);
    o.sentinel_master = "nosuch";
    o.connect_timeout_ms = 2000;
    o.command_timeout_ms = 2000;
    o.retries = 1;
    cr_assert_eq(cc_redis_async_open(base, NULL, 0, prefix, &o, &ra), RK_OK);
    cr_expect_eq(a_get(ra, &w, &r1.key), RK_ERR_UNAVAILABLE);
    cr_expect(strstr(w.msg, "no Sentinel of") && strstr(w.msg, "nosuch"), "says why: %s", w.msg);
    cc_redis_async_close(ra);
    snprintf(list, sizeof(list), "127.0.0.1:%d", dead);
    o.sentinel_master = "rkt";
    cr_assert_eq(cc_redis_async_open(base, NULL, 0, prefix, &o, &ra), RK_OK);
    cr_expect_eq(a_insert(ra, &w, &r2), RK_ERR_UNAVAILABLE, "no Sentinel up");
    cc_redis_async_close(ra);

    event_base_free(base);
    rk_test_stop(&s1, SIGTERM, 10000);
    rk_test_stop(&s2, SIGTERM, 10000);
    rk_test_rmrf(tmp);
    cc_metastore_clear(&ms);
    cc_metastore_close(&ms);
}

Test(redis_async_sentinel, never_uses_a_replica_and_follows_a_failover, .timeout = 90)
{
    char hh[128];
    int hp;
    need_redis(hh, sizeof(hh), &hp);
    /* a private primary P and its replica R, which would take writes (so only the client's
     * ROLE check keeps them away) */
    cct_redis_proc P = {0}, R = {0};
    cr_assert(cct_redis_start(&P));
    freeReplyObject(cmd(P.port, "CONFIG SET repl-diskless-sync-delay 0")); /* sync the replica at once */
    R.port = cct_free_port();
    cr_assert_not_null(rk_test_tmpdir(R.dir, sizeof(R.dir)));
    cr_assert(rk_test_redis_server(&R.p, R.port, R.dir, P.port), "replica did not start");
    freeReplyObject(cmd(R.port, "CONFIG SET replica-read-only no"));
    cc_metastore ms;
    cr_assert_eq(cc_metastore_redis_open("127.0.0.1", P.port, "rk:", NULL, &ms), RK_OK, "%s", rk_error_msg());
    cr_assert_eq(cc_metastore_mark_intact(&ms), RK_OK);
    cct_ms_tenant(&ms, "t", 0, 0, CC_QUOTA_REJECT);
    cc_record r0 = cct_rec("t", 0, 10, 1, false), r1 = cct_rec("t", 1, 10, 1, false), r2 = cct_rec("t", 2, 10, 1, false);
    cr_assert_eq(cc_metastore_insert(&ms, &r0, 0, NULL), RK_OK);
    replica_caught_up(P.port);
    freeReplyObject(cmd(R.port, "CONFIG RESETSTAT")); /* count from here: nothing writes to P meanwhile */

    /* the Sentinel names the replica (a stale answer) */
    char tmp[256];
    cr_assert_not_null(rk_test_tmpdir(tmp, sizeof(tmp)));
    int sp = cct_free_port();
    rk_test_proc s;
    cr_assert(rk_test_sentinel(&s, sp, tmp, "rkf", "127.0.0.1", R.port), "sentinel did not start");
    struct event_base *base = event_base_new();
    waiter w = {.base = base};
    cc_redis_opts o = cc_redis_opts_default();
    char list[64];
    snprintf(list, sizeof(list), "127.0.0.1:%d", sp);
    o.sentinels = list;
    o.sentinel_master = "rkf";
    o.retries = 2;
    o.backoff_ms = 5;
    cc_redis_async *ra;
    cr_assert_eq(cc_redis_async_open(base, NULL, 0, "rk:", &o, &ra), RK_OK, "%s", rk_error_msg());
    cr_expect_eq(a_insert(ra, &w, &r1), RK_ERR_UNAVAILABLE, "refused: %s", w.msg);
    cr_expect(strstr(w.msg, "not a primary") != NULL, "says why: %s", w.msg);
    cr_expect_eq(a_get(ra, &w, &r0.key), RK_ERR_UNAVAILABLE, "not even read there");
    cr_expect_geq(calls_of(R.port, "role"), 3, "every attempt asked the replica's ROLE");
    const char *ops[] = {"evalsha", "eval", "hmget", "sismember", "hset", "set", "del"};
    for (size_t i = 0; i < sizeof(ops) / sizeof(ops[0]); i++)
        cr_expect_eq(calls_of(R.port, ops[i]), 0, "no %s sent to the replica", ops[i]);
    char hex[CC_KEY_HEX_LEN + 1];
    redisReply *rep = cmd(R.port, "EXISTS rk:r:%s", cc_key_to_hex(&r1.key, hex));
    cr_expect_eq(rep->integer, 0, "the replica holds no r1");
    freeReplyObject(rep);

    /* the Sentinel names the primary: the same client resolves again and writes there */
    sentinel_point(sp, "rkf", P.port);
    cr_expect_eq(a_insert(ra, &w, &r1), RK_OK, "%s", w.msg);
    cc_record got;
    rk_status gs;
    cr_assert_eq(cc_metastore_get(&ms, &r1.key, 1, &got, &gs), RK_OK);
    cr_expect_eq(gs, RK_OK, "on the primary");
    cc_record_clear(&got);

    /* failover: the replica has everything, the primary dies, the replica is promoted and
     * the Sentinel names it; the client's connection drops and it follows */
    replica_caught_up(P.port);
    cc_metastore_close(&ms);
    cct_redis_kill(&P);
    freeReplyObject(cmd(R.port, "REPLICAOF NO ONE"));
    sentinel_point(sp, "rkf", R.port);
    cr_expect_eq(a_get(ra, &w, &r1.key), RK_OK, "%s", w.msg);
    cr_expect_eq(w.st0, RK_OK, "r1, written before the failover, read from the promoted replica");
    cr_expect_eq(a_insert(ra, &w, &r2), RK_OK, "%s", w.msg);
    cr_expect_eq(cc_redis_async_losses(ra), 0, "the promoted replica has ragkv's marker: nothing lost");
    cr_assert_eq(cc_metastore_redis_open("127.0.0.1", R.port, "rk:", NULL, &ms), RK_OK, "%s", rk_error_msg());
    cr_assert_eq(cc_metastore_get(&ms, &r2.key, 1, &got, &gs), RK_OK);
    cr_expect_eq(gs, RK_OK, "r2 on the new primary");
    cc_record_clear(&got);
    cc_metastore_close(&ms);

    cc_redis_async_close(ra);
    event_base_free(base);
    rk_test_stop(&s, SIGTERM, 10000);
    rk_test_rmrf(tmp);
    cct_redis_kill(&R);
    cct_redis_fini(&R);
    cct_redis_fini(&P);
}
