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

#endif
