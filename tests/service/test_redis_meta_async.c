/* ragkvd answering LOOKUP, DELETE and PUT_KV's metadata calls on its workers' event loops
 * (redis-async, on by default with `redis`): the answers are the synchronous path's (own and
 * other tenants' chunks, duplicates, quotas with both policies), the async path is the one
 * taken (/metrics counters), and redis-async 0 keeps the pool's path. (One test per file: see
 * tests/service/CMakeLists.txt.) Faults: test_redis_meta_faults.c; crash points:
 * test_redis_meta_crash.c. */
#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ragkv/alloc.h"
#include "ragkv/client.h"
#include "ragkv/clock.h"
#include "ragkv/hash.h"
#include "svc_testlib.h"
#include "testutil.h"

Test(redis_meta_async, lookup_put_kv_delete_on_the_loop, .timeout = 120)
{
    svct_hflags hf;
    const char *const *extra = svct_harness_flags(&hf, "rkma");
    svct_daemon dd;
    svct_daemon_up(&dd, "ragkvd", extra, "acme", "globex", NULL);
    ragkv_conn *a = svct_dial(dd.port, dd.token[0]), *b = svct_dial(dd.port, dd.token[1]);
    int32_t t1[24], t2[24];
    uint8_t *c1, *c2;
    uint32_t l1, l2;
    svct_two_chunks(a, 1, t1, t2, &c1, &l1, &c2, &l2);
    long long lk0 = svct_meta_metric(dd.hport, "ops", "lookup"), in0 = svct_meta_metric(dd.hport, "ops", "insert"),
              de0 = svct_meta_metric(dd.hport, "ops", "delete");
    cr_assert_geq(lk0, 0, "the async path's counters are exported");

    /* PUT_KV: lookup, then the quota-checked insert, both on the loop */
    uint8_t kb[32], ka[32];
    int created = -1;
    cr_assert_eq(ragkv_put_kv(b, t1, 24, c1, l1, kb, &created), RK_OK, "%s", rk_error_msg());
    cr_expect_eq(created, 1);
    cr_expect_eq(svct_meta_metric(dd.hport, "ops", "lookup"), lk0 + 1, "PUT_KV looked up on the loop");
    cr_expect_eq(svct_meta_metric(dd.hport, "ops", "insert"), in0 + 1, "and committed on the loop");
    cr_assert_eq(ragkv_put_kv(b, t1, 24, c1, l1, kb, &created), RK_OK);
    cr_expect_eq(created, 0, "a second PUT_KV of the chunk stores nothing");
    cr_expect_eq(svct_meta_metric(dd.hport, "ops", "insert"), in0 + 1, "no commit for it");
    cr_expect_eq(svct_kv_sum(b, kb), rk_xxh3_64(c1, l1), "the container stored is the one sent");

    /* LOOKUP: own, another tenant's, absent — as the synchronous lookup answers */
    cr_assert_eq(ragkv_put_kv(a, t1, 24, c1, l1, ka, NULL), RK_OK);
    uint8_t keys[3 * 32], present[3];
    memcpy(keys, kb, 32);
    memcpy(keys + 32, ka, 32);
    memset(keys + 64, 0x5a, 32);
    long long lk1 = svct_meta_metric(dd.hport, "ops", "lookup");
    cr_assert_eq(ragkv_lookup(b, keys, 3, present), RK_OK, "%s", rk_error_msg());
    cr_expect(present[0] == 1 && present[1] == 0 && present[2] == 0, "globex: %d%d%d", present[0], present[1], present[2]);
    cr_assert_eq(ragkv_lookup(a, keys, 3, present), RK_OK);
    cr_expect(present[0] == 0 && present[1] == 1 && present[2] == 0, "acme: %d%d%d", present[0], present[1], present[2]);
    cr_expect_eq(svct_meta_metric(dd.hport, "ops", "lookup"), lk1 + 2, "both LOOKUPs on the loop");

    /* DELETE: only one's own */
    cr_expect_eq(ragkv_delete(a, kb), RK_ERR_NOT_FOUND, "acme cannot delete globex's chunk");
    cr_expect_eq(ragkv_delete(b, kb), RK_OK, "%s", rk_error_msg());
    cr_expect_eq(ragkv_delete(b, kb), RK_ERR_NOT_FOUND, "gone");
    cr_expect_eq(svct_meta_metric(dd.hport, "ops", "delete"), de0 + 3);
    cr_assert_eq(ragkv_lookup(b, kb, 1, present), RK_OK);
    cr_expect_eq(present[0], 0);
    cr_assert_eq(ragkv_lookup(a, ka, 1, present), RK_OK);
    cr_expect_eq(present[0], 1, "acme's chunk of the same tokens is untouched");

    /* quotas: one chunk, reject, then evict */
    ragkv_conn *adm = svct_dial(dd.port, dd.adm);
    cr_assert_eq(ragkv_admin_quota_set(adm, "globex", 0, 1, 0), RK_OK, "%s", rk_error_msg());
    cr_assert_eq(ragkv_put_kv(b, t1, 24, c1, l1, kb, &created), RK_OK);
    uint8_t kb2[32];
    cr_expect_eq(ragkv_put_kv(b, t2, 24, c2, l2, kb2, &created), RK_ERR_QUOTA, "over quota: %s", rk_error_msg());
    uint64_t chunks = 9;
    cr_assert_eq(ragkv_admin_quota_get(adm, "globex", NULL, NULL, NULL, NULL, &chunks), RK_OK);
    cr_expect_eq(chunks, 1, "usage untouched by the refused put");
    cr_assert_eq(ragkv_admin_quota_set(adm, "globex", 0, 1, 1), RK_OK);
    cr_expect_eq(ragkv_put_kv(b, t2, 24, c2, l2, kb2, &created), RK_OK, "evict policy: %s", rk_error_msg());
    cr_expect_eq(created, 1);
    memcpy(keys, kb, 32);
    memcpy(keys + 32, kb2, 32);
    cr_assert_eq(ragkv_lookup(b, keys, 2, present), RK_OK);
    cr_expect(present[0] == 0 && present[1] == 1, "the older chunk was evicted: %d%d", present[0], present[1]);
    cr_assert_eq(ragkv_admin_quota_get(adm, "globex", NULL, NULL, NULL, NULL, &chunks), RK_OK);
    cr_expect_eq(chunks, 1);
    cr_expect_eq(svct_kv_sum(b, kb2), rk_xxh3_64(c2, l2));
    const char *ops[] = {"lookup", "insert", "delete"};
    for (int i = 0; i < 3; i++) {
        cr_expect_eq(svct_meta_metric(dd.hport, "errors", ops[i]), 0, "no %s failed", ops[i]);
        cr_expect_eq(svct_meta_metric(dd.hport, "fallbacks", ops[i]), 0, "nothing fell back (%s)", ops[i]);
    }
    cr_expect_gt(svct_metric(dd.hport, "meta_async_ms_count"), 0, "latencies observed");
    cr_assert_eq(ragkv_admin_tenant_delete(adm, "globex"), RK_OK);
    ragkv_close(adm);
    ragkv_close(a);
    ragkv_close(b);
    rk_free(c1);
    rk_free(c2);
    svct_daemon_down(&dd);

    /* redis-async 0: the same answers from the pool, the loop's counters untouched */
    strcat(hf.prefix, "s:");
    const char *sync_extra[] = {"--model", extra[1], "--redis", hf.redis, "--redis-prefix", hf.prefix, "--redis-async", "0", NULL};
    svct_daemon_up(&dd, "ragkvd", sync_extra, "acme", NULL);
    a = svct_dial(dd.port, dd.token[0]);
    uint8_t k[32];
    cr_assert_eq(ragkv_put_chunk(a, t1, 24, k, NULL, NULL), RK_OK);
    cr_assert_eq(ragkv_lookup(a, k, 1, present), RK_OK);
    cr_expect_eq(present[0], 1);
    cr_expect_eq(ragkv_delete(a, k), RK_OK);
    cr_expect_eq(svct_meta_metric(dd.hport, "ops", "lookup"), 0);
    cr_expect_eq(svct_meta_metric(dd.hport, "ops", "delete"), 0);
    ragkv_close(a);
    svct_daemon_down(&dd);
}
