/* Tests of ragkvd's configuration: file, flags, precedence, clear errors; and metrics text. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "ragkv/alloc.h"
#include "ragkv/service.h"
#include "testutil.h"

static char tmp[256];
static char path[512];

static void write_conf(const char *text)
{
    snprintf(path, sizeof(path), "%s/ragkvd.conf", tmp);
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    fputs(text, f);
    fclose(f);
}

static void setup(void) { cr_assert_not_null(rk_test_tmpdir(tmp, sizeof(tmp))); }
static void teardown(void) { rk_test_rmrf(tmp); }

TestSuite(config, .init = setup, .fini = teardown);

Test(config, defaults)
{
    svc_config c;
    svc_config_defaults(&c);
    cr_expect_str_eq(c.bind, "127.0.0.1");
    cr_expect_eq(c.port, SVC_DEFAULT_PORT);
    cr_expect_eq(c.http_port, SVC_DEFAULT_HTTP_PORT);
    cr_expect_str_eq(c.data_dir, "./var");
}

Test(config, file_then_flags_override)
{
    write_conf("# comment\n\nport = 9000\nhttp-port=9001  # trailing comment\n"
               "data-dir = \"/tmp/x y\"\nlog-level = warn\ndevice = 1\ncompute-threads = 4\n");
    char *argv[] = {"ragkvd", "--config", path, "--port", "9100", "--workers=3", NULL};
    svc_config c;
    char err[256] = "";
    svc_config_defaults(&c);
    cr_assert_eq(svc_config_parse_args(&c, 6, argv, err, sizeof(err)), RK_OK, "%s", err);
    cr_expect_eq(c.port, 9100, "flag beats file");
    cr_expect_eq(c.http_port, 9001);
    cr_expect_eq(c.workers, 3);
    cr_expect_str_eq(c.data_dir, "/tmp/x y");
    cr_expect_str_eq(c.log_level, "warn");
    cr_expect_eq(c.device, 1, "the GPU ordinal is its own option");
    cr_expect_eq(c.compute_threads, 4);
    cr_expect_str_eq(c.config_file, path);
}

Test(config, errors_name_the_problem)
{
    svc_config c;
    char err[512];
    svc_config_defaults(&c);
    write_conf("port = 70000\n");
    cr_expect_neq(svc_config_load_file(&c, path, err, sizeof(err)), RK_OK);
    cr_expect(strstr(err, ":1:") && strstr(err, "port"), "got: %s", err);
    write_conf("\n\nbogus = 1\n");
    cr_expect_eq(svc_config_load_file(&c, path, err, sizeof(err)), RK_ERR_FORMAT);
    cr_expect(strstr(err, ":3:") && strstr(err, "bogus"), "got: %s", err);
    write_conf("port 7\n");
    cr_expect_eq(svc_config_load_file(&c, path, err, sizeof(err)), RK_ERR_FORMAT);
    char *a1[] = {"ragkvd", "--port", "x", NULL};
    cr_expect_eq(svc_config_parse_args(&c, 3, a1, err, sizeof(err)), RK_ERR_INVALID);
    cr_expect(strstr(err, "not an integer"), "got: %s", err);
    char *a2[] = {"ragkvd", "--nope", NULL};
    cr_expect_eq(svc_config_parse_args(&c, 2, a2, err, sizeof(err)), RK_ERR_INVALID);
    char *a3[] = {"ragkvd", "--log-level", "loud", NULL};
    cr_expect_eq(svc_config_parse_args(&c, 3, a3, err, sizeof(err)), RK_ERR_INVALID);
    char *a5[] = {"ragkvd", "--layer-loading", "sometimes", NULL};
    cr_expect_eq(svc_config_parse_args(&c, 3, a5, err, sizeof(err)), RK_ERR_INVALID);
    cr_expect(strstr(err, "auto, on or off"), "got: %s", err);
    char *a6[] = {"ragkvd", "--layer-loading", "off", NULL};
    cr_expect_eq(svc_config_parse_args(&c, 3, a6, err, sizeof(err)), RK_OK, "%s", err);
    cr_expect_str_eq(c.layer_loading, "off");
    cr_expect_str_eq(c.ram_page_locked, "auto", "the default");
    char *a7[] = {"ragkvd", "--ram-page-locked", "yes", NULL};
    cr_expect_eq(svc_config_parse_args(&c, 3, a7, err, sizeof(err)), RK_ERR_INVALID);
    cr_expect(strstr(err, "ram-page-locked: 'yes' is not auto, on or off"), "got: %s", err);
    char *a8[] = {"ragkvd", "--ram-page-locked", "off", NULL};
    cr_expect_eq(svc_config_parse_args(&c, 3, a8, err, sizeof(err)), RK_OK, "%s", err);
    cr_expect_str_eq(c.ram_page_locked, "off");
    cr_expect_str_eq(c.blend_select, "attention", "the default");
    char *a9[] = {"ragkvd", "--blend-select", "entropy", NULL};
    cr_expect_eq(svc_config_parse_args(&c, 3, a9, err, sizeof(err)), RK_ERR_INVALID);
    cr_expect(strstr(err, "blend-select: 'entropy' is not attention, deviation or lookahead"), "got: %s", err);
    char *a10[] = {"ragkvd", "--blend-select", "deviation", NULL};
    cr_expect_eq(svc_config_parse_args(&c, 3, a10, err, sizeof(err)), RK_OK, "%s", err);
    cr_expect_str_eq(c.blend_select, "deviation");
    char *a11[] = {"ragkvd", "--blend-select", "lookahead", NULL};
    cr_expect_eq(svc_config_parse_args(&c, 3, a11, err, sizeof(err)), RK_OK, "%s", err);
    cr_expect_str_eq(c.blend_select, "lookahead");
    char *a4[] = {"ragkvd", "--config", "/nonexistent/ragkvd.conf", NULL};
    cr_expect_eq(svc_config_parse_args(&c, 3, a4, err, sizeof(err)), RK_ERR_IO);
    cr_expect(strstr(err, "/nonexistent/ragkvd.conf"), "got: %s", err);
}

Test(metrics, prometheus_text)
{
    svc_metric *a = svc_metric_get(SVC_COUNTER, "test_requests_total", "op=\"get\"", "requests");
    svc_metric *b = svc_metric_get(SVC_COUNTER, "test_requests_total", "op=\"put\"", "requests");
    svc_metric *g = svc_metric_get(SVC_GAUGE, "test_bytes", "", "bytes held");
    cr_expect_eq(svc_metric_get(SVC_COUNTER, "test_requests_total", "op=\"get\"", "x"), a, "same series");
    svc_metric_add(a, 3);
    svc_metric_add(b, 1);
    svc_metric_set(g, 42);
    size_t len;
    char *t = svc_metrics_render(&len);
    cr_assert_not_null(t);
    cr_expect_eq(strlen(t), len);
    cr_expect(strstr(t, "# TYPE ragkv_test_requests_total counter\n"), "%s", t);
    cr_expect(strstr(t, "ragkv_test_requests_total{op=\"get\"} 3\n"), "%s", t);
    cr_expect(strstr(t, "ragkv_test_requests_total{op=\"put\"} 1\n"), "%s", t);
    cr_expect(strstr(t, "# TYPE ragkv_test_bytes gauge\nragkv_test_bytes 42\n"), "%s", t);
    /* one HELP/TYPE block per name */
    char *first = strstr(t, "# HELP ragkv_test_requests_total");
    cr_expect(first && !strstr(first + 1, "# HELP ragkv_test_requests_total"));
    rk_free(t);
}

Test(metrics, histogram_buckets_and_quantiles)
{
    svc_histogram *h = svc_histogram_get("test_latency_ms", "latency");
    cr_assert_not_null(h);
    cr_expect_eq(svc_histogram_get("test_latency_ms", "x"), h, "same histogram");
    for (int i = 0; i < 90; i++)
        svc_histogram_observe(h, 3.0); /* bucket le=5 */
    for (int i = 0; i < 10; i++)
        svc_histogram_observe(h, 700.0); /* bucket le=1000 */
    cr_expect_float_eq(svc_histogram_quantile(h, 0.5), 5.0, 0);
    cr_expect_float_eq(svc_histogram_quantile(h, 0.95), 1000.0, 0);
    size_t len;
    char *t = svc_metrics_render(&len);
    cr_expect(strstr(t, "# TYPE ragkv_test_latency_ms histogram\n"), "%s", t);
    cr_expect(strstr(t, "ragkv_test_latency_ms_bucket{le=\"2\"} 0\n"), "%s", t);
    cr_expect(strstr(t, "ragkv_test_latency_ms_bucket{le=\"5\"} 90\n"), "cumulative: %s", t);
    cr_expect(strstr(t, "ragkv_test_latency_ms_bucket{le=\"1000\"} 100\n"), "%s", t);
    cr_expect(strstr(t, "ragkv_test_latency_ms_bucket{le=\"+Inf\"} 100\n"), "%s", t);
    cr_expect(strstr(t, "ragkv_test_latency_ms_sum 7270.000\nragkv_test_latency_ms_count 100\n"), "%s", t);
    rk_free(t);
}

Test(config, the_shipped_example_parses)
{
    svc_config c;
    char err[512] = "";
    char path[1024];
    snprintf(path, sizeof(path), "%s/deploy/ragkvd.conf.example", RAGKV_SOURCE_DIR);
    svc_config_defaults(&c);
    cr_assert_eq(svc_config_load_file(&c, path, err, sizeof(err)), RK_OK, "%s", err);
    cr_expect_eq(c.port, 7470);
    cr_expect_eq(c.tenant_max_jobs, 64);
}
