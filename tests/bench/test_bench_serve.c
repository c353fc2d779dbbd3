/* `ragkv bench serve` against a real daemon: it runs clean and its numbers are consistent
 * (every chunk is served from the cache, CacheBlend recomputes a minority of the prompt). */
#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

static double json_num(const char *js, const char *key)
{
    char pat[64];
    snprintf(pat, sizeof(pat), "\"%s\": ", key);
    const char *p = strstr(js, pat);
    cr_assert_not_null(p, "%s missing in %s", key, js);
    return atof(p + strlen(pat));
}

/* Start a daemon on the real model, run `ragkv bench serve` against it with the common
 * arguments plus extra (NULL-terminated), stop the daemon; buf gets the JSON result. */
static void serve_run(const char *const *extra, char *buf, size_t cap)
{
    const char *model = rk_test_model_path("stories260K.bin");
    if (!model)
        cr_skip_test("skipped: no real model");
    char tmp[256], tf[512], js[512], ps[16], bin[1024];
    cr_assert_not_null(rk_test_tmpdir(tmp, sizeof(tmp)));
    rk_test_proc d, b;
    int port, hport;
    const char *dextra[] = {"--model", model, NULL};
    cr_assert(rk_test_daemon_start(tmp, dextra, &d, &port, &hport));
    snprintf(tf, sizeof(tf), "%s/var/admin.token", tmp);
    snprintf(js, sizeof(js), "%s/serve.json", tmp);
    snprintf(ps, sizeof(ps), "%d", port);
    rk_test_bin("ragkv", bin, sizeof(bin));
    char *argv[64] = {bin, "bench", "serve", "--port", ps, "--token-file", tf, "--corpus", "8", "--chunk-len", "48",
                      "--k", "3", "--shared", "--json", js};
    int n = 0;
    while (argv[n])
        n++;
    for (int i = 0; extra[i] && n < 63; i++)
        argv[n++] = (char *)extra[i];
    argv[n] = NULL;
    cr_assert(rk_test_spawn(argv, &b));
    cr_assert_eq(rk_test_wait(&b, 100000), 0, "bench serve exits 0");
    FILE *f = fopen(js, "r");
    cr_assert_not_null(f);
    size_t got = fread(buf, 1, cap - 1, f);
    buf[got] = '\0';
    fclose(f);
    cr_expect_eq(rk_test_stop(&d, SIGTERM, 20000), 0);
    rk_test_rmrf(tmp);
}

Test(bench_serve, runs_against_a_daemon, .timeout = 120)
{
    char buf[4096];
    const char *extra[] = {"--requests", "24", "--conns", "3", "--max-tokens", "6", NULL};
    serve_run(extra, buf, sizeof(buf));
    cr_expect_eq(json_num(buf, "errors"), 0);
    cr_expect_gt(json_num(buf, "req_per_s"), 0);
    cr_expect_float_eq(json_num(buf, "hit_rate"), 1.0, 1e-9, "every chunk comes from the cache");
    double rf = json_num(buf, "recompute_fraction");
    cr_expect(rf > 0.05 && rf < 0.5, "cacheblend recomputes a minority: %g", rf);
    cr_expect_leq(json_num(buf, "ttft_ms_p50"), json_num(buf, "ttft_ms_p99"));
}

/* Open loop: 30 requests arriving as a Poisson process of 20/s (Cache-Craft blending). The run
 * cannot end before the last arrival, latencies count from arrivals, nothing fails. */
Test(bench_serve, open_loop_poisson_arrivals, .timeout = 120)
{
    char buf[4096];
    const char *extra[] = {"--requests", "30", "--conns", "4", "--max-tokens", "4", "--mode", "cachecraft",
                           "--rate", "20", "--seed", "5", NULL};
    serve_run(extra, buf, sizeof(buf));
    cr_expect_eq(json_num(buf, "errors"), 0);
    cr_expect_float_eq(json_num(buf, "rate"), 20.0, 1e-9);
    double last = json_num(buf, "last_arrival_s"), wall = json_num(buf, "wall_s");
    cr_expect(last > 0.3 && last < 6.0, "30 arrivals at 20/s span %g s", last);
    cr_expect_geq(wall, last, "the run ended (%g s) before the last arrival (%g s)", wall, last);
    cr_expect_float_eq(json_num(buf, "hit_rate"), 1.0, 1e-9);
    cr_expect_leq(json_num(buf, "ttft_ms_p50"), json_num(buf, "ttft_ms_p99"));
}
