/*
 * svc_testlib.h — helpers for the tests that drive a real ragkvd through the C client
 * (white-box by nature: not API). Header-only, like tests/chunkcache/cc_testlib.h, because
 * testutil does not link the client library.
 *
 *     svct_daemon dd;
 *     svct_daemon_up(&dd, "ragkvd", extra, "acme", "globex", NULL);   // tokens in dd.token[i]
 *     ragkv_conn *c = svct_dial(dd.port, dd.token[0]);
 *     ...
 *     svct_daemon_down(&dd);
 */
#ifndef RAGKV_SVC_TESTLIB_H
#define RAGKV_SVC_TESTLIB_H

#include <criterion/criterion.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ragkv/alloc.h"
#include "ragkv/client.h"
#include "ragkv/clock.h"
#include "ragkv/hash.h"
#include "testutil.h"

#define SVCT_MAX_TENANTS 4

/* A daemon in its own temporary directory, with tenants created through the admin credential. */
typedef struct svct_daemon {
    char tmp[256];                      /* its directory (data in tmp/var) */
    char adm[256];                      /* the admin credential */
    char name[SVCT_MAX_TENANTS][64];    /* tenants created, in order */
    char token[SVCT_MAX_TENANTS][256];  /* their tokens */
    int ntenants;
    rk_test_proc proc;
    int port, hport;                    /* protocol and HTTP ports */
} svct_daemon;

/* Connect to 127.0.0.1:port and, when token is not NULL, authenticate (asserting both). */
static inline ragkv_conn *svct_dial(int port, const char *token)
{
    ragkv_conn *c;
    cr_assert_eq(ragkv_connect("127.0.0.1", port, 30000, &c), RK_OK, "%s", rk_error_msg());
    if (token)
        cr_assert_eq(ragkv_auth(c, token, NULL, 0), RK_OK, "%s", rk_error_msg());
    return c;
}

/* (Re)start binary `bin` ("ragkvd", "ragkvd-crashpoints") on dd's directory with extra flags. */
static inline void svct_daemon_start(svct_daemon *dd, const char *bin, const char *const *extra)
{
    cr_assert(rk_test_daemon_start_bin(bin, dd->tmp, extra, &dd->proc, &dd->port, &dd->hport), "%s did not start", bin);
}

/* A fresh directory, the daemon started in it, then each tenant named in the NULL-terminated
 * list created (no quota, reject policy). */
static inline void svct_daemon_up(svct_daemon *dd, const char *bin, const char *const *extra, ...)
{
    memset(dd, 0, sizeof(*dd));
    cr_assert_not_null(rk_test_tmpdir(dd->tmp, sizeof(dd->tmp)));
    svct_daemon_start(dd, bin, extra);
    cr_assert(rk_test_admin_token(dd->tmp, dd->adm, sizeof(dd->adm)), "no admin token in %s/var", dd->tmp);
    ragkv_conn *a = svct_dial(dd->port, dd->adm);
    va_list ap;
    va_start(ap, extra);
    for (const char *t; (t = va_arg(ap, const char *)) && dd->ntenants < SVCT_MAX_TENANTS; dd->ntenants++) {
        snprintf(dd->name[dd->ntenants], sizeof(dd->name[0]), "%s", t);
        cr_assert_eq(ragkv_admin_tenant_create(a, t, 0, 0, 0, dd->token[dd->ntenants], sizeof(dd->token[0])), RK_OK,
                     "tenant %s: %s", t, rk_error_msg());
    }
    va_end(ap);
    ragkv_close(a);
}

/* SIGTERM (expecting a clean exit 0), then remove the directory. */
static inline void svct_daemon_down(svct_daemon *dd)
{
    int st = rk_test_stop(&dd->proc, SIGTERM, 30000);
    cr_expect_eq(st, 0, "ragkvd exits 0 on SIGTERM (status %d)", st);
    rk_test_rmrf(dd->tmp);
}

/* The server closes c: any frames it still sends are read, then the receive sees EOF. */
static inline void svct_expect_closed(ragkv_conn *c)
{
    rk_proto_hdr h;
    uint8_t *p;
    rk_status st;
    while ((st = ragkv_recv_frame(c, &h, &p)) == RK_OK)
        rk_free(p);
    cr_expect_eq(st, RK_ERR_UNAVAILABLE, "connection closed by the server, got %s", rk_status_name(st));
}

/* GET_KV of key on c (asserting success): xxh3 of the container, to compare bytes later. */
static inline uint64_t svct_kv_sum(ragkv_conn *c, const uint8_t key[32])
{
    uint8_t *cont;
    uint32_t len;
    cr_assert_eq(ragkv_get_kv(c, key, NULL, 0, &cont, &len), RK_OK, "%s", rk_error_msg());
    uint64_t sum = rk_xxh3_64(cont, len);
    rk_free(cont);
    return sum;
}

/* The tokens a GENERATE streamed: pass svct_collect_tokens and a zeroed svct_tokens to
 * ragkv_generate. */
typedef struct svct_tokens {
    int32_t toks[512]; /* the first 512 tokens */
    uint32_t n;        /* tokens kept */
    int calls;         /* callback calls (stream frames) */
} svct_tokens;

static inline int svct_collect_tokens(void *ctx, const int32_t *t, uint32_t n)
{
    svct_tokens *cl = ctx;
    for (uint32_t i = 0; i < n && cl->n < 512; i++)
        cl->toks[cl->n++] = t[i];
    cl->calls++;
    return 0;
}

/* A counter or gauge from the daemon's /metrics ("ragkv_<name> <value>" line); -1 if absent. */
static inline long long svct_metric(int hport, const char *name)
{
    int code;
    char *body;
    if (ragkv_http_get("127.0.0.1", hport, "/metrics", 5000, &code, &body) != RK_OK)
        return -1;
    char pat[128];
    snprintf(pat, sizeof(pat), "\nragkv_%s ", name);
    const char *at = strstr(body, pat);
    long long v = at ? atoll(at + strlen(pat)) : -1;
    rk_free(body);
    return v;
}

/* A redis-server of the test's own (to pause, stop, kill and restart) on a free loopback port,
 * with its data in a new temporary directory tmp (256 bytes); *rport its port and redis (64
 * bytes) "127.0.0.1:PORT". Skips the test without redis-server. */
static inline void svct_private_redis(char *tmp, rk_test_proc *r, int *rport, char *redis)
{
    if (!rk_test_redis_server_path())
        cr_skip_test("skipped: no redis-server");
    cr_assert_not_null(rk_test_tmpdir(tmp, 256));
    *rport = rk_test_free_port();
    cr_assert(rk_test_redis_server(r, *rport, tmp, 0));
    snprintf(redis, 64, "127.0.0.1:%d", *rport);
}

/* ---- the workers' asynchronous metadata path (test_redis_meta_*.c) ---------------------- */

/* The real model's path; skips the test without it. */
static inline const char *svct_need_model(void)
{
    const char *model = rk_test_model_path("stories260K.bin");
    if (!model)
        cr_skip_test("skipped: no real model");
    return model;
}

/* A counter of the workers' asynchronous metadata path: meta_async_<what>_total{op="<op>"}
 * (what: ops, errors, fallbacks); -1 if absent. */
static inline long long svct_meta_metric(int hport, const char *what, const char *op)
{
    char name[96];
    snprintf(name, sizeof(name), "meta_async_%s_total{op=\"%s\"}", what, op);
    return svct_metric(hport, name);
}

/* n chunk tokens from a seed (all inside stories260K's vocabulary). */
static inline void svct_chunk_toks(int32_t *t, int n, int seed)
{
    for (int i = 0; i < n; i++)
        t[i] = (seed * 37 + i * 11) % 500 + 3;
}

/* A valid KV container for tokens t: the chunk prefilled by tenant c (PUT_CHUNK), read back
 * (GET_KV). *cont is the caller's (rk_free). */
static inline void svct_container_of(ragkv_conn *c, const int32_t *t, int n, uint8_t **cont, uint32_t *len)
{
    uint8_t key[32];
    cr_assert_eq(ragkv_put_chunk(c, t, (uint32_t)n, key, NULL, NULL), RK_OK, "%s", rk_error_msg());
    cr_assert_eq(ragkv_get_kv(c, key, NULL, 0, cont, len), RK_OK, "%s", rk_error_msg());
}

/* Two chunks' tokens (seeds seed, seed + 1, 24 tokens each) and valid containers for them. */
static inline void svct_two_chunks(ragkv_conn *c, int seed, int32_t *t1, int32_t *t2, uint8_t **c1, uint32_t *l1, uint8_t **c2,
                                   uint32_t *l2)
{
    svct_chunk_toks(t1, 24, seed);
    svct_chunk_toks(t2, 24, seed + 1);
    svct_container_of(c, t1, 24, c1, l1);
    svct_container_of(c, t2, 24, c2, l2);
}

/* Flags for a daemon on the real model with its metadata in the harness's Redis under a prefix
 * of its own (tag + a clock reading); skips without either. The strings live in *f. */
typedef struct svct_hflags {
    char redis[160], prefix[64];
    const char *argv[7];
} svct_hflags;

static inline const char *const *svct_harness_flags(svct_hflags *f, const char *tag)
{
    const char *model = svct_need_model();
    char host[128];
    int rport;
    if (!rk_test_redis(host, sizeof(host), &rport))
        cr_skip_test("skipped: RAGKV_TEST_REDIS not set (run through scripts/test.sh)");
    snprintf(f->redis, sizeof(f->redis), "%s:%d", host, rport);
    snprintf(f->prefix, sizeof(f->prefix), "%s%llx:", tag, (unsigned long long)(rk_now_ns() & 0xffffffffffull));
    const char *argv[7] = {"--model", model, "--redis", f->redis, "--redis-prefix", f->prefix, NULL};
    memcpy(f->argv, argv, sizeof(argv));
    return f->argv;
}

#endif
