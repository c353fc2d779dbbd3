/* ragkvd with its chunk metadata in Redis (the harness's private redis-server, a key prefix of
 * its own): chunks are cached, shared through Redis-held metadata, and survive a restart of
 * ragkvd. */
#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ragkv/alloc.h"
#include "ragkv/client.h"
#include "testutil.h"

Test(redis_daemon, chunks_with_redis_metadata_survive_restart, .timeout = 90)
{
    char host[128];
    int rport;
    if (!rk_test_redis(host, sizeof(host), &rport))
        cr_skip_test("skipped: RAGKV_TEST_REDIS not set (run through `make test`)");
    const char *model = rk_test_model_path("stories260K.bin");
    if (!model)
        cr_skip_test("skipped: no real model");
    char tmp[256], redis[160], prefix[64], adm[256], tok[256];
    cr_assert_not_null(rk_test_tmpdir(tmp, sizeof(tmp)));
    snprintf(redis, sizeof(redis), "%s:%d", host, rport);
    snprintf(prefix, sizeof(prefix), "rkt%d:", (int)getpid());
    const char *extra[] = {"--model", model, "--redis", redis, "--redis-prefix", prefix, NULL};
    rk_test_proc d;
    int port, hport;
    cr_assert(rk_test_daemon_start(tmp, extra, &d, &port, &hport), "ragkvd with Redis did not start");
    cr_assert(rk_test_admin_token(tmp, adm, sizeof(adm)), "no admin token in %s/var", tmp);
    ragkv_conn *a, *t;
    cr_assert_eq(ragkv_connect("127.0.0.1", port, 20000, &a), RK_OK);
    cr_assert_eq(ragkv_auth(a, adm, NULL, 0), RK_OK);
    cr_assert_eq(ragkv_admin_tenant_create(a, "acme", 0, 3, 0, tok, sizeof(tok)), RK_OK, "%s", rk_error_msg());
    ragkv_close(a);
    cr_assert_eq(ragkv_connect("127.0.0.1", port, 20000, &t), RK_OK);
    cr_assert_eq(ragkv_auth(t, tok, NULL, 0), RK_OK);
    int32_t ch[24];
    for (int i = 0; i < 24; i++)
        ch[i] = 10 + i * 7;
    uint8_t key[32];
    int created;
    cr_assert_eq(ragkv_put_chunk(t, ch, 24, key, &created, NULL), RK_OK, "%s", rk_error_msg());
    cr_expect_eq(created, 1);
    const int32_t q[] = {403, 407};
    ragkv_segment seg = {.key = key};
    ragkv_gen_params p = {.segs = &seg, .nsegs = 1, .query = q, .nquery = 2, .blend = 3, .recompute = 0.15f, .max_tokens = 6};
    ragkv_gen_stats st;
    cr_assert_eq(ragkv_generate(t, &p, NULL, NULL, &st), RK_OK, "%s", rk_error_msg());
    cr_expect_eq(st.chunk_hits, 1);
    ragkv_close(t);
    /* the usage lives in Redis: visible in a fresh process */
    cr_assert_eq(rk_test_stop(&d, SIGTERM, 20000), 0);
    cr_assert(rk_test_daemon_start(tmp, extra, &d, &port, &hport));
    cr_assert_eq(ragkv_connect("127.0.0.1", port, 20000, &t), RK_OK);
    cr_assert_eq(ragkv_auth(t, tok, NULL, 0), RK_OK);
    uint8_t present = 0;
    cr_assert_eq(ragkv_lookup(t, key, 1, &present), RK_OK);
    cr_expect_eq(present, 1);
    ragkv_close(t);
    cr_assert_eq(ragkv_connect("127.0.0.1", port, 20000, &a), RK_OK);
    cr_assert_eq(ragkv_auth(a, adm, NULL, 0), RK_OK);
    uint64_t chunks = 0, qc = 0;
    cr_assert_eq(ragkv_admin_quota_get(a, "acme", NULL, &qc, NULL, NULL, &chunks), RK_OK);
    cr_expect_eq(chunks, 1);
    cr_expect_eq(qc, 3, "the quota too");
    cr_assert_eq(ragkv_admin_tenant_delete(a, "acme"), RK_OK);
    ragkv_close(a);
    cr_expect_eq(rk_test_stop(&d, SIGTERM, 20000), 0);
    rk_test_rmrf(tmp);
}
