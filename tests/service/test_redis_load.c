/* Redis faults under load: a running ragkvd with its own redis-server and a small concurrent
 * load of two tenants (GET_KV bytes checked, cross-tenant LOOKUPs, prompts that bring their
 * tokens):
 *  - CLIENT PAUSE and maxmemory with noeviction: requests fail fast or fall back to
 *    recompute, never return wrong or cross-tenant data, and recover within seconds; health
 *    checks keep answering;
 *  - failover to a replica (promoted with REPLICAOF NO ONE; ragkvd restarted pointing at it):
 *    every acknowledged chunk is served byte-identical and usage is exact.
 * (test_redis_faults.c: Redis killed and restarted without its data.) */
#include <criterion/criterion.h>
#include <hiredis/hiredis.h>
#include <pthread.h>
#include <stdatomic.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ragkv/alloc.h"
#include "ragkv/client.h"
#include "ragkv/clock.h"
#include "ragkv/hash.h"
#include "svc_testlib.h"
#include "testutil.h"

/* redis-server on port (a replica of replicaof_port unless 0); skips the test without one. */
static void redis_start_replica(rk_test_proc *p, int port, const char *dir, int replicaof_port)
{
    if (!rk_test_redis_server_path())
        cr_skip_test("skipped: no redis-server");
    cr_assert(rk_test_redis_server(p, port, dir, replicaof_port), "redis-server did not become ready");
}

static void redis_start(rk_test_proc *p, int port, const char *dir)
{
    redis_start_replica(p, port, dir, 0);
}

/* ---- CLIENT PAUSE, maxmemory, failover under load ----------------------------------------- */

/* One command on a fresh connection to the test's redis-server; the reply's text (status,
 * string or error, or the integer) in out. false when Redis cannot be reached. */
static bool redis_cmd(int port, char *out, size_t len, const char *fmt, ...)
{
    struct timeval tv = {5, 0};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", port, tv);
    if (!c || c->err) {
        redisFree(c);
        return false;
    }
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(c, fmt, ap);
    va_end(ap);
    bool ok = r != NULL;
    if (r && out) {
        if (r->type == REDIS_REPLY_INTEGER)
            snprintf(out, len, "%lld", r->integer);
        else
            snprintf(out, len, "%s", r->str ? r->str : "");
    }
    freeReplyObject(r);
    redisFree(c);
    return ok;
}

/* The load: acme reads its chunk by key (bytes must be the acknowledged ones) and runs a prompt
 * that brings its tokens; globex probes acme's key (must never see it). Every request is timed. */
typedef struct load {
    int port;
    const char *tok_a, *tok_b;
    const uint8_t *key;        /* acme's chunk */
    uint64_t sum;              /* xxh3 of its container as acknowledged */
    const int32_t *toks;       /* its tokens (32) */
    atomic_int stop;
    atomic_int requests;       /* answered so far */
    int errors, wrong, leaks, gen_ok, gen_err;
    double max_fail_ms;        /* longest request that ended in an error */
    double max_ms;             /* longest request */
} load;

static void *load_main(void *arg)
{
    load *l = arg;
    ragkv_conn *a = NULL, *b = NULL;
    const int32_t q[] = {403, 407};
    while (!l->stop) {
        if (!a && (ragkv_connect("127.0.0.1", l->port, 30000, &a) != RK_OK || ragkv_auth(a, l->tok_a, NULL, 0) != RK_OK)) {
            ragkv_close(a);
            a = NULL;
            continue;
        }
        if (!b && (ragkv_connect("127.0.0.1", l->port, 30000, &b) != RK_OK || ragkv_auth(b, l->tok_b, NULL, 0) != RK_OK)) {
            ragkv_close(b);
            b = NULL;
            continue;
        }
        for (int op = 0; op < 3 && !l->stop; op++) {
            uint64_t t0 = rk_now_ns();
            rk_status st;
            if (op == 0) {
                uint8_t *cont;
                uint32_t len;
                if ((st = ragkv_get_kv(a, l->key, NULL, 0, &cont, &len)) == RK_OK) {
                    if (rk_xxh3_64(cont, len) != l->sum)
                        l->wrong++;
                    rk_free(cont);
                }
            } else if (op == 1) {
                uint8_t present = 0;
                if ((st = ragkv_lookup(b, l->key, 1, &present)) == RK_OK && present)
                    l->leaks++;
            } else {
                ragkv_segment seg = {.tokens = l->toks, .ntokens = 32};
                ragkv_gen_params p = {.segs = &seg, .nsegs = 1, .query = q, .nquery = 2, .blend = 3,
                                      .recompute = 0.15f, .max_tokens = 2};
                st = ragkv_generate(a, &p, NULL, NULL, NULL);
                if (st == RK_OK)
                    l->gen_ok++;
                else
                    l->gen_err++;
            }
            double ms = (double)(rk_now_ns() - t0) / 1e6;
            l->requests++;
            if (ms > l->max_ms)
                l->max_ms = ms;
            if (st != RK_OK) {
                l->errors++;
                if (ms > l->max_fail_ms)
                    l->max_fail_ms = ms;
            }
            if (st == RK_ERR_UNAVAILABLE && op == 0 && ragkv_ping(a) != RK_OK) { /* connection lost */
                ragkv_close(a);
                a = NULL;
                break;
            }
        }
    }
    ragkv_close(a);
    ragkv_close(b);
    return NULL;
}

/* Poll until acme's LOOKUP of key answers present (the store recovered); milliseconds taken,
 * or -1 after timeout_ms. */
static double wait_recovered(int port, const char *tok, const uint8_t *key, int timeout_ms)
{
    uint64_t t0 = rk_now_ns();
    ragkv_conn *c = NULL;
    while ((rk_now_ns() - t0) / 1000000 < (uint64_t)timeout_ms) {
        if (!c && (ragkv_connect("127.0.0.1", port, 5000, &c) != RK_OK || ragkv_auth(c, tok, NULL, 0) != RK_OK)) {
            ragkv_close(c);
            c = NULL;
        }
        uint8_t present = 0;
        if (c && ragkv_lookup(c, key, 1, &present) == RK_OK && present) {
            ragkv_close(c);
            return (double)(rk_now_ns() - t0) / 1e6;
        }
        struct timespec ts = {0, 20000000};
        nanosleep(&ts, NULL); /* polling interval */
    }
    ragkv_close(c);
    return -1;
}

/* A daemon on a fresh Redis with tenants acme and globex and one chunk of acme's. */
typedef struct fixture {
    char tmp[256], adm[256], ta[256], tb[256], redis[64];
    int rport, port, hport;
    rk_test_proc r, d;
    int32_t toks[32];
    uint8_t key[32];
    uint64_t sum;
} fixture;

static void fixture_start_daemon(fixture *f, const char *model, int redis_port)
{
    snprintf(f->redis, sizeof(f->redis), "127.0.0.1:%d", redis_port);
    const char *extra[] = {"--model", model, "--redis", f->redis, NULL};
    cr_assert(rk_test_daemon_start(f->tmp, extra, &f->d, &f->port, &f->hport));
}

static void fixture_up(fixture *f, const char *model)
{
    cr_assert_not_null(rk_test_tmpdir(f->tmp, sizeof(f->tmp)));
    f->rport = rk_test_free_port();
    redis_start(&f->r, f->rport, f->tmp);
    fixture_start_daemon(f, model, f->rport);
    cr_assert(rk_test_admin_token(f->tmp, f->adm, sizeof(f->adm)));
    ragkv_conn *a;
    a = svct_dial(f->port, f->adm);
    cr_assert_eq(ragkv_admin_tenant_create(a, "acme", 0, 0, 0, f->ta, sizeof(f->ta)), RK_OK, "%s", rk_error_msg());
    cr_assert_eq(ragkv_admin_tenant_create(a, "globex", 0, 0, 0, f->tb, sizeof(f->tb)), RK_OK, "%s", rk_error_msg());
    ragkv_close(a);
    a = svct_dial(f->port, f->ta);
    for (int i = 0; i < 32; i++)
        f->toks[i] = 30 + i * 13;
    cr_assert_eq(ragkv_put_chunk(a, f->toks, 32, f->key, NULL, NULL), RK_OK, "%s", rk_error_msg());
    f->sum = svct_kv_sum(a, f->key);
    ragkv_close(a);
}

/* Wait (polling, bounded) until the load has had n more requests answered. */
static void load_wait(load *l, int n)
{
    int target = atomic_load(&l->requests) + n;
    uint64_t t0 = rk_now_ns();
    while (atomic_load(&l->requests) < target && rk_now_ns() - t0 < 30000000000ull) {
        struct timespec ts = {0, 10000000};
        nanosleep(&ts, NULL);
    }
}

static void load_start(load *l, fixture *f, pthread_t *th)
{
    *l = (load){.port = f->port, .tok_a = f->ta, .tok_b = f->tb, .key = f->key, .sum = f->sum, .toks = f->toks};
    cr_assert_eq(pthread_create(th, NULL, load_main, l), 0);
    load_wait(l, 20); /* running before the fault */
}

/* Stop the load once it has had `after` more requests answered (it also runs on after the
 * fault), and check what it saw. */
static void load_stop(load *l, pthread_t th, const char *what, int after)
{
    load_wait(l, after);
    l->stop = 1;
    pthread_join(th, NULL);
    cr_log_info("%s: %d requests under load, %d errors (longest failing %.0f ms, longest %.0f ms), prompts %d ok / %d failed",
                what, atomic_load(&l->requests), l->errors, l->max_fail_ms, l->max_ms, l->gen_ok, l->gen_err);
    cr_expect_eq(l->wrong, 0, "%s: never wrong bytes", what);
    cr_expect_eq(l->leaks, 0, "%s: never another tenant's chunk", what);
    cr_expect_lt(l->max_fail_ms, 10000, "%s: failures are fast (%.0f ms)", what, l->max_fail_ms);
    cr_expect_geq(atomic_load(&l->requests), 20 + after, "%s: the load ran", what);
}

static bool healthz(int hport)
{
    int code = 0;
    char *body = NULL;
    rk_status st = ragkv_http_get("127.0.0.1", hport, "/healthz", 3000, &code, &body);
    rk_free(body);
    return st == RK_OK && code == 200;
}

Test(redis_load, client_pause_and_maxmemory_under_load, .timeout = 180)
{
    const char *model = rk_test_model_path("stories260K.bin");
    if (!model)
        cr_skip_test("skipped: no real model");
    fixture f;
    fixture_up(&f, model);
    load l;
    pthread_t th;
    char rep[256];

    /* CLIENT PAUSE: Redis stops answering for 4 s */
    load_start(&l, &f, &th);
    cr_assert(redis_cmd(f.rport, rep, sizeof(rep), "CLIENT PAUSE 4000 ALL"));
    cr_expect_str_eq(rep, "OK");
    uint64_t t0 = rk_now_ns();
    cr_expect(healthz(f.hport), "health checks answer while Redis is paused");
    double rec = wait_recovered(f.port, f.ta, f.key, 30000);
    double since = (double)(rk_now_ns() - t0) / 1e6;
    cr_expect_geq(rec, 0, "recovered after CLIENT PAUSE");
    cr_log_info("CLIENT PAUSE 4000: lookups answered again %.0f ms after the pause began", since);
    cr_expect_lt(since, 4000 + 5000, "within seconds of the pause's end (%.0f ms)", since);
    load_stop(&l, th, "CLIENT PAUSE", 20);

    /* maxmemory with noeviction: Redis refuses writes, reads go on */
    cr_assert(redis_cmd(f.rport, rep, sizeof(rep), "CONFIG SET maxmemory-policy noeviction"));
    cr_assert(redis_cmd(f.rport, rep, sizeof(rep), "CONFIG SET maxmemory 1"));
    load_start(&l, &f, &th);
    ragkv_conn *a;
    a = svct_dial(f.port, f.ta);
    int32_t t2[32];
    for (int i = 0; i < 32; i++)
        t2[i] = 41 + i * 7;
    uint8_t k2[32];
    t0 = rk_now_ns();
    rk_status st = ragkv_put_chunk(a, t2, 32, k2, NULL, NULL);
    double put_ms = (double)(rk_now_ns() - t0) / 1e6;
    cr_expect_neq(st, RK_OK, "a write while Redis is out of memory is refused");
    cr_log_info("maxmemory noeviction: PUT_CHUNK answered %s in %.0f ms (%s)", rk_status_name(st), put_ms, rk_error_msg());
    cr_expect_lt(put_ms, 10000);
    uint8_t present = 9;
    cr_expect_eq(ragkv_lookup(a, k2, 1, &present), RK_OK, "reads go on: %s", rk_error_msg());
    cr_expect_eq(present, 0, "the refused chunk is not there");
    cr_expect(healthz(f.hport));
    load_stop(&l, th, "maxmemory noeviction", 20);
    cr_assert(redis_cmd(f.rport, rep, sizeof(rep), "CONFIG SET maxmemory 0"));
    st = RK_ERR_UNAVAILABLE;
    t0 = rk_now_ns();
    while (st != RK_OK && rk_now_ns() - t0 < 20000000000ull) /* a retry once memory is back */
        st = ragkv_put_chunk(a, t2, 32, k2, NULL, NULL);
    cr_expect_eq(st, RK_OK, "writes work again: %s", rk_error_msg());
    ragkv_close(a);
    a = svct_dial(f.port, f.adm);
    uint64_t chunks = 0;
    cr_assert_eq(ragkv_admin_quota_get(a, "acme", NULL, NULL, NULL, NULL, &chunks), RK_OK);
    cr_expect_geq(chunks, 2, "usage: the first chunk, the retried one, and the load's prompt chunk");
    cr_expect_leq(chunks, 3);
    ragkv_close(a);
    cr_expect_eq(rk_test_stop(&f.d, SIGTERM, 20000), 0);
    cr_expect_eq(rk_test_stop(&f.r, SIGTERM, 10000), 0);
    rk_test_rmrf(f.tmp);
}

Test(redis_load, failover_to_a_replica, .timeout = 180)
{
    const char *model = rk_test_model_path("stories260K.bin");
    if (!model)
        cr_skip_test("skipped: no real model");
    fixture f;
    fixture_up(&f, model);
    /* a replica, in sync */
    char rdir[512], rep[256];
    snprintf(rdir, sizeof(rdir), "%s/replica", f.tmp);
    cr_assert_eq(mkdir(rdir, 0700), 0);
    int rport2 = rk_test_free_port();
    rk_test_proc r2;
    redis_start_replica(&r2, rport2, rdir, f.rport);
    load l;
    pthread_t th;
    load_start(&l, &f, &th);
    ragkv_conn *a;
    a = svct_dial(f.port, f.ta);
    enum { N = 6 };
    uint8_t keys[N][32];
    uint64_t sums[N];
    for (int i = 0; i < N; i++) {
        int32_t t[24];
        for (int j = 0; j < 24; j++)
            t[j] = 60 + i * 31 + j * 3;
        cr_assert_eq(ragkv_put_chunk(a, t, 24, keys[i], NULL, NULL), RK_OK, "%s", rk_error_msg());
        sums[i] = svct_kv_sum(a, keys[i]);
    }
    ragkv_close(a);
    /* the acknowledged writes reached the replica (WAIT: the replication event, no sleeping) */
    cr_assert(redis_cmd(f.rport, rep, sizeof(rep), "WAIT 1 10000"));
    cr_expect_str_eq(rep, "1", "one replica acknowledged");
    /* the primary dies; requests keep failing fast or falling back */
    cr_expect_eq(rk_test_stop(&f.r, SIGKILL, 10000), 128 + SIGKILL);
    uint64_t t0 = rk_now_ns();
    cr_expect(healthz(f.hport), "health checks answer while the primary is gone");
    /* promote the replica and point ragkvd at it (no Sentinel in this test: a restart) */
    cr_assert(redis_cmd(rport2, rep, sizeof(rep), "REPLICAOF NO ONE"));
    cr_expect_str_eq(rep, "OK");
    load_stop(&l, th, "primary killed", 4); /* metadata calls now take ~2 s each */
    double down = (double)(rk_now_ns() - t0) / 1e6;
    cr_expect_eq(rk_test_stop(&f.d, SIGTERM, 20000), 0);
    t0 = rk_now_ns();
    fixture_start_daemon(&f, model, rport2);
    double rec = wait_recovered(f.port, f.ta, f.key, 30000);
    double since = (double)(rk_now_ns() - t0) / 1e6;
    cr_expect_geq(rec, 0, "serving from the promoted replica");
    cr_log_info("failover: load ran %.0f ms against the dead primary; ragkvd restarted on the promoted replica "
                "served the chunk %.0f ms after its start", down, since);
    load_start(&l, &f, &th);
    a = svct_dial(f.port, f.ta);
    for (int i = 0; i < N; i++) {
        cr_expect_eq(svct_kv_sum(a, keys[i]), sums[i], "chunk %d byte-identical", i);
    }
    ragkv_close(a);
    load_stop(&l, th, "after failover", 20);
    a = svct_dial(f.port, f.adm);
    uint64_t chunks = 0;
    cr_assert_eq(ragkv_admin_quota_get(a, "acme", NULL, NULL, NULL, NULL, &chunks), RK_OK);
    cr_expect_geq(chunks, N + 1, "usage after failover counts every chunk (%llu)", (unsigned long long)chunks);
    cr_expect_leq(chunks, N + 2, "and only those (plus the load's prompt chunk)");
    ragkv_close(a);
    cr_expect_eq(rk_test_stop(&f.d, SIGTERM, 20000), 0);
    cr_expect_eq(rk_test_stop(&r2, SIGTERM, 10000), 0);
    rk_test_rmrf(f.tmp);
}
