/* Per-tenant limits: token-bucket request rate and concurrent jobs (white-box for the table,
 * then through the daemon). */
#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "../../service/limits.h"
#include "ragkv/client.h"
#include "ragkv/clock.h"
#include "testutil.h"

#define S 1000000000ull

Test(limits, token_bucket_refills_at_the_rate)
{
    svc_limits *l = svc_limits_new(2.0, 4.0, 0);
    cr_assert_not_null(l);
    uint64_t t = 10 * S;
    for (int i = 0; i < 4; i++)
        cr_expect(svc_limits_request(l, "a", t), "burst of 4, request %d", i);
    cr_expect(!svc_limits_request(l, "a", t), "bucket empty");
    cr_expect(svc_limits_request(l, "b", t), "other tenants have their own bucket");
    cr_expect(!svc_limits_request(l, "a", t + S / 4), "0.5 tokens after 250 ms");
    cr_expect(svc_limits_request(l, "a", t + S / 2 + S / 100), "one token after ~500 ms");
    cr_expect(!svc_limits_request(l, "a", t + S / 2 + S / 50));
    /* a long idle time refills to the burst, not beyond */
    uint64_t later = t + 100 * S;
    for (int i = 0; i < 4; i++)
        cr_expect(svc_limits_request(l, "a", later));
    cr_expect(!svc_limits_request(l, "a", later));
    svc_limits_free(l);
    l = svc_limits_new(0, 0, 0);
    for (int i = 0; i < 1000; i++)
        cr_assert(svc_limits_request(l, "a", t), "rate 0: unlimited");
    svc_limits_free(l);
}

Test(limits, concurrent_jobs_per_tenant)
{
    svc_limits *l = svc_limits_new(0, 0, 2);
    cr_expect(svc_limits_job_begin(l, "a"));
    cr_expect(svc_limits_job_begin(l, "a"));
    cr_expect(!svc_limits_job_begin(l, "a"), "third job refused");
    cr_expect(svc_limits_job_begin(l, "b"));
    cr_expect_eq(svc_limits_jobs(l, "a"), 2);
    svc_limits_job_end(l, "a");
    cr_expect(svc_limits_job_begin(l, "a"), "a slot freed");
    svc_limits_job_end(l, "a");
    svc_limits_job_end(l, "a");
    svc_limits_job_end(l, "a"); /* never below zero */
    cr_expect_eq(svc_limits_jobs(l, "a"), 0);
    svc_limits_free(l);
}

Test(limits, daemon_rate_limits_a_tenant_not_its_neighbour, .timeout = 60)
{
    char tmp[256], adm[256], ta[256], tb[256];
    cr_assert_not_null(rk_test_tmpdir(tmp, sizeof(tmp)));
    rk_test_proc d;
    int port, hport;
    const char *extra[] = {"--tenant-rate", "1", "--tenant-burst", "3", NULL};
    cr_assert(rk_test_daemon_start(tmp, extra, &d, &port, &hport));
    cr_assert(rk_test_admin_token(tmp, adm, sizeof(adm)), "no admin token in %s/var", tmp);
    ragkv_conn *a, *t1, *t2;
    cr_assert_eq(ragkv_connect("127.0.0.1", port, 5000, &a), RK_OK);
    cr_assert_eq(ragkv_auth(a, adm, NULL, 0), RK_OK);
    cr_assert_eq(ragkv_admin_tenant_create(a, "acme", 0, 0, 0, ta, sizeof(ta)), RK_OK);
    cr_assert_eq(ragkv_admin_tenant_create(a, "globex", 0, 0, 0, tb, sizeof(tb)), RK_OK);
    cr_assert_eq(ragkv_connect("127.0.0.1", port, 5000, &t1), RK_OK);
    cr_assert_eq(ragkv_connect("127.0.0.1", port, 5000, &t2), RK_OK);
    cr_assert_eq(ragkv_auth(t1, ta, NULL, 0), RK_OK);
    cr_assert_eq(ragkv_auth(t2, tb, NULL, 0), RK_OK);
    int ok = 0;
    rk_status st = RK_OK;
    uint64_t t0 = rk_now_ns();
    for (int i = 0; i < 10 && st == RK_OK; i++)
        if ((st = ragkv_call(t1, RK_OP_STATS, NULL, 0, NULL, NULL)) == RK_OK)
            ok++;
    double secs = (double)(rk_now_ns() - t0) / 1e9; /* one token per second refills meanwhile */
    cr_expect_eq(st, RK_ERR_BUSY, "acme is limited");
    cr_expect_geq(ok, 3, "the burst passes");
    cr_expect_leq(ok, 3 + (int)secs + 1, "then about one per second (%d in %.2f s)", ok, secs);
    cr_expect_eq(ragkv_call(t2, RK_OP_STATS, NULL, 0, NULL, NULL), RK_OK, "globex is not");
    cr_expect_eq(ragkv_ping(t1), RK_OK, "PING is never limited");
    ragkv_close(t1);
    ragkv_close(t2);
    ragkv_close(a);
    cr_expect_eq(rk_test_stop(&d, SIGTERM, 10000), 0);
    rk_test_rmrf(tmp);
}

Test(limits, sighup_reloads_the_limits, .timeout = 60)
{
    char tmp[256], conf[512], adm[256], ta[256], line[256];
    cr_assert_not_null(rk_test_tmpdir(tmp, sizeof(tmp)));
    snprintf(conf, sizeof(conf), "%s/ragkvd.conf", tmp);
    FILE *f = fopen(conf, "w");
    fputs("tenant-rate = 0\n", f);
    fclose(f);
    rk_test_proc d;
    int port, hport;
    const char *extra[] = {"--config", conf, NULL};
    cr_assert(rk_test_daemon_start(tmp, extra, &d, &port, &hport));
    cr_assert(rk_test_admin_token(tmp, adm, sizeof(adm)), "no admin token in %s/var", tmp);
    ragkv_conn *a, *t;
    cr_assert_eq(ragkv_connect("127.0.0.1", port, 5000, &a), RK_OK);
    cr_assert_eq(ragkv_auth(a, adm, NULL, 0), RK_OK);
    cr_assert_eq(ragkv_admin_tenant_create(a, "acme", 0, 0, 0, ta, sizeof(ta)), RK_OK);
    cr_assert_eq(ragkv_connect("127.0.0.1", port, 5000, &t), RK_OK);
    cr_assert_eq(ragkv_auth(t, ta, NULL, 0), RK_OK);
    for (int i = 0; i < 20; i++)
        cr_assert_eq(ragkv_call(t, RK_OP_STATS, NULL, 0, NULL, NULL), RK_OK, "unlimited");
    f = fopen(conf, "w");
    fputs("tenant-rate = 1\ntenant-burst = 2\n", f);
    fclose(f);
    kill(d.pid, SIGHUP);
    cr_assert(rk_test_read_line(&d, line, sizeof(line), 10000));
    cr_expect_str_eq(line, "ragkvd reloaded");
    int ok = 0;
    uint64_t t0 = rk_now_ns();
    while (ok < 10 && ragkv_call(t, RK_OP_STATS, NULL, 0, NULL, NULL) == RK_OK)
        ok++;
    double secs = (double)(rk_now_ns() - t0) / 1e9;
    cr_expect_geq(ok, 2, "a full bucket of 2 after the reload");
    cr_expect_leq(ok, 2 + (int)secs + 1, "then limited (%d in %.2f s)", ok, secs);
    ragkv_close(t);
    ragkv_close(a);
    cr_expect_eq(rk_test_stop(&d, SIGTERM, 10000), 0);
    rk_test_rmrf(tmp);
}
