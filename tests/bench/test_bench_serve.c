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
 * arguments plus extra (NULL-terminated), stop the daemon. files NULL: --json, and bufs[0] gets
 * the result; else --json-dir, and bufs[i] gets the file named files[i] (NULL-terminated). */
static void serve_run_files(const char *const *extra, const char *const *files, char (*bufs)[4096])
{
    const char *model = rk_test_model_path("stories260K.bin");
    if (!model)
        cr_skip_test("skipped: no real model");
    char tmp[256], tf[512], js[512], ps[16], hps[16], bin[1024];
    cr_assert_not_null(rk_test_tmpdir(tmp, sizeof(tmp)));
    rk_test_proc d, b;
    int port, hport;
    const char *dextra[] = {"--model", model, NULL};
    cr_assert(rk_test_daemon_start(tmp, dextra, &d, &port, &hport));
    snprintf(tf, sizeof(tf), "%s/var/admin.token", tmp);
    snprintf(js, sizeof(js), "%s/serve.json", tmp);
    snprintf(ps, sizeof(ps), "%d", port);
    snprintf(hps, sizeof(hps), "%d", hport);
    rk_test_bin("ragkv", bin, sizeof(bin));
    char *argv[64] = {bin, "bench", "serve", "--port", ps, "--token-file", tf, "--corpus", "8", "--chunk-len", "48",
                      "--k", "3", "--shared", "--http-port", hps, files ? "--json-dir" : "--json", files ? tmp : js};
    int n = 0;
    while (argv[n])
        n++;
    for (int i = 0; extra[i] && n < 63; i++)
        argv[n++] = (char *)extra[i];
    argv[n] = NULL;
    cr_assert(rk_test_spawn(argv, &b));
    cr_assert_eq(rk_test_wait(&b, 100000), 0, "bench serve exits 0");
    for (int i = 0; files ? files[i] != NULL : i < 1; i++) {
        char path[600];
        if (files)
            snprintf(path, sizeof(path), "%s/%s", tmp, files[i]);
        FILE *f = fopen(files ? path : js, "r");
        cr_assert_not_null(f, "%s", files ? path : js);
        size_t got = fread(bufs[i], 1, sizeof(bufs[i]) - 1, f);
        bufs[i][got] = '\0';
        fclose(f);
    }
    cr_expect_eq(rk_test_stop(&d, SIGTERM, 20000), 0);
    rk_test_rmrf(tmp);
}

/* GPU time per request comes from the daemon's executor busy time: positive, and one thread's
 * busy time over the run cannot exceed the run's wall time (10% and 50 ms of slack for the
 * iteration that straddles its start). */
static void expect_gpu_time(const char *js, int requests)
{
    double g = json_num(js, "gpu_ms_per_request"), wall_ms = json_num(js, "wall_s") * 1000.0;
    cr_expect_gt(g, 0.0, "gpu_ms_per_request %g", g);
    cr_expect_leq(g * requests, wall_ms * 1.1 + 50.0, "%g ms x %d requests in a run of %g ms", g, requests, wall_ms);
}

static void serve_run(const char *const *extra, char *buf, size_t cap)
{
    char one[1][4096];
    serve_run_files(extra, NULL, one);
    snprintf(buf, cap, "%s", one[0]);
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
    expect_gpu_time(buf, 24);
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

/* Lists: two modes by two rates (closed loop, then 20/s) in one run over one corpus cached
 * once, one JSON file per pair; each pair has its own seed and its mode's recompute. */
Test(bench_serve, mode_and_rate_lists_share_one_corpus, .timeout = 120)
{
    static char bufs[4][4096];
    const char *extra[] = {"--requests", "12", "--conns", "3", "--max-tokens", "3", "--mode", "full,cacheblend",
                           "--rate", "0,20", "--seed", "9", NULL};
    const char *files[] = {"full-0.json", "full-20.json", "cacheblend-0.json", "cacheblend-20.json", NULL};
    serve_run_files(extra, files, bufs);
    double load = json_num(bufs[0], "corpus_load_s");
    for (int i = 0; i < 4; i++) {
        cr_expect_eq(json_num(bufs[i], "errors"), 0, "%s", files[i]);
        cr_expect_eq(json_num(bufs[i], "seed"), 9 + i, "%s: pair %d runs with seed 9 + %d", files[i], i, i);
        cr_expect_float_eq(json_num(bufs[i], "rate"), i % 2 ? 20.0 : 0.0, 1e-9, "%s", files[i]);
        cr_expect_float_eq(json_num(bufs[i], "corpus_load_s"), load, 1e-9, "%s: the corpus was cached once", files[i]);
        cr_expect_float_eq(json_num(bufs[i], "hit_rate"), 1.0, 1e-9, "%s", files[i]);
        expect_gpu_time(bufs[i], 12);
        double rf = json_num(bufs[i], "recompute_fraction");
        if (i < 2)
            cr_expect_float_eq(rf, 1.0, 1e-9, "%s: full recomputes everything", files[i]);
        else
            cr_expect(rf > 0.05 && rf < 0.5, "%s: cacheblend recomputes a minority: %g", files[i], rf);
    }
    cr_expect_eq(strstr(bufs[1], "\"mode\": \"full\"") != NULL, 1);
    cr_expect_eq(strstr(bufs[3], "\"mode\": \"cacheblend\"") != NULL, 1);
}

/* Bad lists are refused before anything is sent. */
Test(bench_serve, bad_lists_refused)
{
    char bin[1024];
    rk_test_bin("ragkv", bin, sizeof(bin));
    const char *bad[][2] = {{"--mode", "full,bogus"}, {"--mode", "full,full"}, {"--rate", "2,x"}, {"--rate", "-1"}};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char *argv[] = {bin, "bench", "serve", "--port", "1", (char *)bad[i][0], (char *)bad[i][1], NULL};
        rk_test_proc p;
        cr_assert(rk_test_spawn(argv, &p));
        cr_expect_eq(rk_test_wait(&p, 20000), 2, "%s %s exits 2", bad[i][0], bad[i][1]);
    }
    char *argv[] = {bin, "bench", "serve", "--port", "1", "--mode", "full,cacheblend", "--json", "x.json", NULL};
    rk_test_proc p;
    cr_assert(rk_test_spawn(argv, &p));
    cr_expect_eq(rk_test_wait(&p, 20000), 2, "--json with two modes exits 2");
}
