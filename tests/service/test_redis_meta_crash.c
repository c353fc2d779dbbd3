/* The write path's crash points (ragkvd-crashpoints) hit by PUT_KV on the workers' asynchronous
 * metadata path. */
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

/* The write path's crash points, hit by PUT_KV on the loop's path (blob on the pool, commit on
 * the loop, acknowledgement from the commit's completion): after a restart each leaves the
 * state docs/storage.md promises, and a retry stores nothing twice. */
Test(redis_meta_crash, crash_points_of_the_loops_put_kv, .timeout = 180)
{
    static const struct {
        const char *point;
        bool committed;
    } cases[] = {{"put_blob_written", false}, {"put_meta_committed", true}, {"put_before_ack", true}};
    enum { NC = 3 };
    svct_hflags hf;
    const char *const *extra = svct_harness_flags(&hf, "rkmc");
    svct_daemon dd;
    svct_daemon_up(&dd, "ragkvd-crashpoints", extra, "acme", "ref", NULL);
    ragkv_conn *ref = svct_dial(dd.port, dd.token[1]);
    int32_t t[NC][24];
    uint8_t *cont[NC];
    uint32_t len[NC];
    for (int i = 0; i < NC; i++) {
        svct_chunk_toks(t[i], 24, 50 + i);
        svct_container_of(ref, t[i], 24, &cont[i], &len[i]);
    }
    ragkv_close(ref);
    cr_assert_eq(rk_test_stop(&dd.proc, SIGTERM, 20000), 0);
    for (int i = 0; i < NC; i++) {
        char sel[64];
        snprintf(sel, sizeof(sel), "%s:1", cases[i].point);
        setenv("RAGKV_CRASHPOINT", sel, 1);
        svct_daemon_start(&dd, "ragkvd-crashpoints", extra);
        unsetenv("RAGKV_CRASHPOINT");
        ragkv_conn *a = svct_dial(dd.port, dd.token[0]);
        uint8_t k[32];
        cr_expect_neq(ragkv_put_kv(a, t[i], 24, cont[i], len[i], k, NULL), RK_OK, "%s: never acknowledged", sel);
        ragkv_close(a);
        cr_assert_eq(rk_test_wait(&dd.proc, 20000), 128 + SIGKILL, "%s: ragkvd died at the crash point", sel);
    }
    svct_daemon_start(&dd, "ragkvd-crashpoints", extra);
    ragkv_conn *a = svct_dial(dd.port, dd.token[0]);
    long long ins = svct_meta_metric(dd.hport, "ops", "insert");
    for (int i = 0; i < NC; i++) {
        uint8_t k[32], present = 9;
        int created = -1;
        cr_assert_eq(ragkv_put_kv(a, t[i], 24, cont[i], len[i], k, &created), RK_OK, "%s", rk_error_msg());
        cr_expect_eq(created, cases[i].committed ? 0 : 1, "%s: the retry %s", cases[i].point,
                     cases[i].committed ? "finds it committed" : "stores it");
        cr_assert_eq(ragkv_lookup(a, k, 1, &present), RK_OK);
        cr_expect_eq(present, 1);
        cr_expect_eq(svct_kv_sum(a, k), rk_xxh3_64(cont[i], len[i]), "%s: byte-identical", cases[i].point);
        rk_free(cont[i]);
    }
    cr_expect_eq(svct_meta_metric(dd.hport, "ops", "insert"), ins + 1, "the one retry that wrote went through the loop");
    ragkv_close(a);
    ragkv_conn *adm = svct_dial(dd.port, dd.adm);
    uint64_t chunks = 0;
    cr_assert_eq(ragkv_admin_quota_get(adm, "acme", NULL, NULL, NULL, NULL, &chunks), RK_OK);
    cr_expect_eq(chunks, NC, "usage exact after the crashes");
    ragkv_close(adm);
    svct_daemon_down(&dd);
}
