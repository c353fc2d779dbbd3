/* Integration tests: the real ragkvd binary on free loopback ports. */
#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "ragkv/alloc.h"
#include "ragkv/client.h"
#include "testutil.h"

static char tmp[256];
static void setup(void) { cr_assert_not_null(rk_test_tmpdir(tmp, sizeof(tmp))); }
static void teardown(void) { rk_test_rmrf(tmp); }
TestSuite(daemon, .init = setup, .fini = teardown, .timeout = 60);

/* Start ragkvd with port 0 for both listeners and wait for its ready line. */
static void start(rk_test_proc *p, int *port, int *http_port, const char *extra)
{
    char bin[1024], dd[512];
    rk_test_bin("ragkvd", bin, sizeof(bin));
    snprintf(dd, sizeof(dd), "%s/var", tmp);
    char *argv[] = {bin, "--port", "0", "--http-port", "0", "--data-dir", dd, "--workers", "2",
                    (char *)extra, NULL};
    cr_assert(rk_test_spawn(argv, p));
    char line[256];
    cr_assert(rk_test_read_line(p, line, sizeof(line), 20000), "ragkvd printed no ready line");
    char host[64];
    cr_assert_eq(sscanf(line, "ragkvd ready: protocol %63[^:]:%d http %*[^:]:%d", host, port, http_port), 3,
                 "ready line: %s", line);
    cr_assert_gt(*port, 0);
    cr_assert_gt(*http_port, 0);
}

Test(daemon, healthz_metrics_and_clean_sigterm)
{
    rk_test_proc p;
    int port, hport, code;
    char *body;
    start(&p, &port, &hport, NULL);
    cr_assert_eq(ragkv_http_get("127.0.0.1", hport, "/healthz", 5000, &code, &body), RK_OK, "%s", rk_error_msg());
    cr_expect_eq(code, 200);
    cr_expect_str_eq(body, "OK\n");
    rk_free(body);
    cr_assert_eq(ragkv_http_get("127.0.0.1", hport, "/metrics", 5000, &code, &body), RK_OK);
    cr_expect_eq(code, 200);
    cr_expect(strstr(body, "# TYPE ragkv_uptime_seconds gauge"), "%s", body);
    cr_expect(strstr(body, "ragkv_build_info{version="), "%s", body);
    cr_expect(strstr(body, "ragkv_http_requests_total"), "%s", body);
    rk_free(body);
    cr_assert_eq(ragkv_http_get("127.0.0.1", hport, "/nope", 5000, &code, &body), RK_OK);
    cr_expect_eq(code, 404);
    rk_free(body);
    cr_expect_eq(rk_test_stop(&p, SIGTERM, 10000), 0, "SIGTERM exits 0");
}

Test(daemon, sigint_is_clean_too)
{
    rk_test_proc p;
    int port, hport;
    start(&p, &port, &hport, NULL);
    cr_expect_eq(rk_test_stop(&p, SIGINT, 10000), 0);
}

Test(daemon, second_daemon_on_same_data_dir_is_refused)
{
    rk_test_proc a, b;
    int port, hport;
    start(&a, &port, &hport, NULL);
    char bin[1024], dd[512];
    rk_test_bin("ragkvd", bin, sizeof(bin));
    snprintf(dd, sizeof(dd), "%s/var", tmp);
    char *argv[] = {bin, "--port", "0", "--http-port", "0", "--data-dir", dd, NULL};
    cr_assert(rk_test_spawn(argv, &b));
    cr_expect_eq(rk_test_wait(&b, 10000), 1, "the second daemon fails with status 1");
    cr_expect_eq(rk_test_stop(&a, SIGTERM, 10000), 0);
}

Test(daemon, bad_flags_and_help)
{
    char bin[1024];
    rk_test_bin("ragkvd", bin, sizeof(bin));
    rk_test_proc p;
    char *bad[] = {bin, "--port", "notaport", NULL};
    cr_assert(rk_test_spawn(bad, &p));
    cr_expect_eq(rk_test_wait(&p, 10000), 2, "usage errors exit 2");
    char *help[] = {bin, "--help", NULL};
    cr_assert(rk_test_spawn(help, &p));
    char line[256];
    cr_expect(rk_test_read_line(&p, line, sizeof(line), 10000) && strstr(line, "usage:"), "%s", line);
    cr_expect_eq(rk_test_wait(&p, 10000), 0);
    char *ver[] = {bin, "--version", NULL};
    cr_assert(rk_test_spawn(ver, &p));
    cr_expect(rk_test_read_line(&p, line, sizeof(line), 10000) && strncmp(line, "ragkvd ", 7) == 0);
    cr_expect_eq(rk_test_wait(&p, 10000), 0);
}

Test(daemon, missing_model_is_a_clear_error)
{
    char bin[1024], dd[512];
    rk_test_bin("ragkvd", bin, sizeof(bin));
    snprintf(dd, sizeof(dd), "%s/var", tmp);
    rk_test_proc p;
    char *argv[] = {bin, "--port", "0", "--http-port", "0", "--data-dir", dd, "--model", "/nonexistent/m.bin", NULL};
    cr_assert(rk_test_spawn(argv, &p));
    cr_expect_eq(rk_test_wait(&p, 10000), 1);
}

Test(daemon, admin_cli_health)
{
    rk_test_proc d, a;
    int port, hport;
    start(&d, &port, &hport, NULL);
    char bin[1024], hp[16], line[256];
    rk_test_bin("ragkv-admin", bin, sizeof(bin));
    snprintf(hp, sizeof(hp), "%d", hport);
    char *argv[] = {bin, "--http-port", hp, "health", NULL};
    cr_assert(rk_test_spawn(argv, &a));
    cr_expect(rk_test_read_line(&a, line, sizeof(line), 10000));
    cr_expect_str_eq(line, "OK");
    cr_expect_eq(rk_test_wait(&a, 10000), 0);
    cr_expect_eq(rk_test_stop(&d, SIGTERM, 10000), 0);
    /* with the daemon gone the CLI fails with status 3 (unreachable), not a hang */
    cr_assert(rk_test_spawn(argv, &a));
    cr_expect_eq(rk_test_wait(&a, 10000), 3);
}

Test(daemon, admin_cli_tenants)
{
    rk_test_proc d, a;
    int port, hport;
    start(&d, &port, &hport, NULL);
    char bin[1024], ps[16], tf[512], line[512];
    rk_test_bin("ragkv-admin", bin, sizeof(bin));
    snprintf(ps, sizeof(ps), "%d", port);
    snprintf(tf, sizeof(tf), "%s/var/admin.token", tmp);
    char *create[] = {bin, "--port", ps, "--token-file", tf, "--json", "tenant", "create", "acme", NULL};
    cr_assert(rk_test_spawn(create, &a));
    cr_assert(rk_test_read_line(&a, line, sizeof(line), 10000));
    cr_expect(strstr(line, "{\"tenant\": \"acme\", \"token\": \"rk_"), "%s", line);
    cr_expect_eq(rk_test_wait(&a, 10000), 0);
    cr_assert(rk_test_spawn(create, &a));
    cr_expect_eq(rk_test_wait(&a, 10000), 1, "a refused operation exits 1");
    char *list[] = {bin, "--port", ps, "--token-file", tf, "tenant", "list", NULL};
    cr_assert(rk_test_spawn(list, &a));
    cr_assert(rk_test_read_line(&a, line, sizeof(line), 10000));
    cr_expect(strncmp(line, "TENANT", 6) == 0, "%s", line);
    cr_assert(rk_test_read_line(&a, line, sizeof(line), 10000));
    cr_expect(strncmp(line, "acme ", 5) == 0, "%s", line);
    cr_expect_eq(rk_test_wait(&a, 10000), 0);
    char *qset[] = {bin, "--port", ps, "--token-file", tf, "quota", "set", "acme", "--quota-bytes", "5000",
                    "--quota-chunks", "9", "--evict", NULL};
    cr_assert(rk_test_spawn(qset, &a));
    cr_expect_eq(rk_test_wait(&a, 10000), 0);
    char *qget[] = {bin, "--port", ps, "--token-file", tf, "--json", "quota", "get", "acme", NULL};
    cr_assert(rk_test_spawn(qget, &a));
    cr_assert(rk_test_read_line(&a, line, sizeof(line), 10000));
    cr_expect_str_eq(line, "{\"quota_bytes\": 5000, \"quota_chunks\": 9, \"policy\": \"evict\", \"bytes\": 0, \"chunks\": 0}");
    cr_expect_eq(rk_test_wait(&a, 10000), 0);
    char *grant[] = {bin, "--port", ps, "--token-file", tf, "grant", "no-such-corpus", "acme", NULL};
    cr_assert(rk_test_spawn(grant, &a));
    cr_expect_eq(rk_test_wait(&a, 10000), 1, "granting a namespace that does not exist fails");
    char *evict[] = {bin, "--port", ps, "--token-file", tf, "evict", NULL};
    cr_assert(rk_test_spawn(evict, &a));
    cr_assert(rk_test_read_line(&a, line, sizeof(line), 10000));
    cr_expect_str_eq(line, "0 chunks evicted");
    cr_expect_eq(rk_test_wait(&a, 10000), 0);
    char *flush[] = {bin, "--port", ps, "--token-file", tf, "flush", NULL};
    cr_assert(rk_test_spawn(flush, &a));
    cr_expect_eq(rk_test_wait(&a, 10000), 0);
    char *badkey[] = {bin, "--port", ps, "--token-file", tf, "inspect", "acme", "xyz", NULL};
    cr_assert(rk_test_spawn(badkey, &a));
    cr_expect_eq(rk_test_wait(&a, 10000), 2);
    char *usage[] = {bin, "tenant", "create", NULL};
    cr_assert(rk_test_spawn(usage, &a));
    cr_expect_eq(rk_test_wait(&a, 10000), 2, "usage errors exit 2");
    char *badtok[] = {bin, "--port", ps, "--token-file", "/nonexistent", "tenant", "list", NULL};
    cr_assert(rk_test_spawn(badtok, &a));
    cr_expect_eq(rk_test_wait(&a, 10000), 3, "no credential exits 3");
    cr_expect_eq(rk_test_stop(&d, SIGTERM, 10000), 0);
}
