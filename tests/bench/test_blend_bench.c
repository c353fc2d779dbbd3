/* `ragkv bench blend` (bench/blend_bench.c) on the real stories260K model: every mode runs from
 * compressed caches (decoded to floats or into KV blocks), float caches and KV blocks, and the
 * JSON reports what each mode must recompute — full: the whole prompt; naive: BOS and the
 * query only; cacheblend r: those plus ceil(r x reused). */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ragkv/bench.h"
#include "testutil.h"

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    cr_assert(f, "%s missing", path);
    static char buf[1 << 16];
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = 0;
    return buf;
}

/* The "recomputed" of the run with chunks c and mode md in the JSON text; -1 when absent. */
static long recomputed(const char *js, int c, const char *md)
{
    char key[96];
    snprintf(key, sizeof(key), "{\"chunks\": %d, \"prompt_tokens\": %d, \"mode\": \"%s\"", c, 1 + c * 32 + 8, md);
    const char *p = strstr(js, key);
    if (!p)
        return -1;
    p = strstr(p, "\"recomputed\": ");
    return p ? strtol(p + 14, NULL, 10) : -1;
}

static const char *const cache_flag[] = {NULL, "--f32", "--device", "--to-block", "--pipelined"};
static const char *const cache_name[] = {"host-compressed", "host-f32", "device", "host-compressed-to-block",
                                         "host-compressed-pipelined-cpu"};

static void run_bench(const char *model, int cache, const char *json)
{
    char *argv[] = {"blend", "--model", (char *)model, "--chunks", "2,3", "--chunk-tokens", "32", "--query", "8",
                    "--iters", "1", "--threads", "2", "--modes", "full,naive,cacheblend,ape", "--json",
                    (char *)json, (char *)cache_flag[cache], NULL};
    int argc = cache ? 18 : 17;
    cr_assert_eq(bench_blend_main(argc, argv), 0);
}

Test(blend_bench, modes_recompute_what_they_must, .timeout = 120)
{
    const char *model = rk_test_model_path("stories260K.bin");
    if (!model)
        cr_skip_test("skipped: no real model (stories260K.bin)");
    char json[] = "/tmp/rk_blend_bench_XXXXXX";
    int fd = mkstemp(json);
    cr_assert(fd >= 0);
    for (int cache = 0; cache < 5; cache++) {
        run_bench(model, cache, json);
        const char *js = slurp(json);
        char want[64];
        snprintf(want, sizeof(want), "\"cache\": \"%s\"", cache_name[cache]);
        cr_assert(strstr(js, want), "%s", js);
        for (int c = 2; c <= 3; c++) {
            cr_assert_eq(recomputed(js, c, "full"), 1 + c * 32 + 8, "%s", js);
            cr_assert_eq(recomputed(js, c, "naive"), 1 + 8, "%s", js);
            cr_assert_eq(recomputed(js, c, "ape"), 1 + 8, "%s", js);
            long want = 1 + 8 + (long)((c * 32 * 15 + 99) / 100); /* ceil(0.15 x reused) */
            cr_assert_eq(recomputed(js, c, "cacheblend"), want, "%s", js);
        }
    }
    unlink(json);
    close(fd);
}

Test(blend_bench, bad_options_are_refused)
{
    char *a1[] = {"blend", "--modes", "fastest", NULL};
    cr_assert_eq(bench_blend_main(3, a1), 2);
    char *a2[] = {"blend", "--chunks", "0", NULL};
    cr_assert_eq(bench_blend_main(3, a2), 2);
    char *a3[] = {"blend", "--ratio", "1.5", NULL};
    cr_assert_eq(bench_blend_main(3, a3), 2);
    char *a4[] = {"blend", "--iters", "3x", NULL};
    cr_assert_eq(bench_blend_main(3, a4), 2);
    char *a5[] = {"blend", "--query", NULL};
    cr_assert_eq(bench_blend_main(2, a5), 2);
    char *a6[] = {"blend", "--f32", "--device", NULL};
    cr_assert_eq(bench_blend_main(3, a6), 2);
    char *a7[] = {"blend", "--to-block", "--device", NULL};
    cr_assert_eq(bench_blend_main(3, a7), 2);
    char *a8[] = {"blend", "--pipelined", "--to-block", NULL};
    cr_assert_eq(bench_blend_main(3, a8), 2);
}
