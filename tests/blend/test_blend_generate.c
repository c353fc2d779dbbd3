/* `ragkv generate` with a blended prompt (--chunk/--query/--blend): full equals the plain tool
 * on the same tokens, CacheBlend at r = 1 equals full, naive recomputes only BOS and the query,
 * and the closing `blend:` line reports it. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

static char tmp[256];

static void write_ids(const char *name, const int *v, int n)
{
    char p[512];
    snprintf(p, sizeof(p), "%s/%s", tmp, name);
    FILE *f = fopen(p, "w");
    for (int i = 0; i < n; i++)
        fprintf(f, "%d\n", v[i]);
    fclose(f);
}

/* Run ragkv generate with extra args; return the tokens-out contents and the blend line. */
static void run(const char *model, const char *out, char *const *extra, char *blend_line, size_t len)
{
    char bin[1024], op[512], c1[512], c2[512], q[512];
    rk_test_bin("ragkv", bin, sizeof(bin));
    snprintf(op, sizeof(op), "%s/%s", tmp, out);
    snprintf(c1, sizeof(c1), "%s/c1", tmp);
    snprintf(c2, sizeof(c2), "%s/c2", tmp);
    snprintf(q, sizeof(q), "%s/q", tmp);
    char *argv[32] = {bin, "generate", "--model", (char *)model, "--steps", "48", "--tokens-out", op};
    int n = 8;
    for (int i = 0; extra[i]; i++)
        argv[n++] = !strcmp(extra[i], "C1") ? c1 : !strcmp(extra[i], "C2") ? c2 : !strcmp(extra[i], "Q") ? q : extra[i];
    argv[n] = NULL;
    rk_test_proc p;
    cr_assert(rk_test_spawn(argv, &p));
    char line[200];
    blend_line[0] = '\0';
    while (rk_test_read_line(&p, line, sizeof(line), 60000))
        if (!strncmp(line, "blend:", 6))
            snprintf(blend_line, len, "%s", line);
    cr_assert_eq(rk_test_wait(&p, 60000), 0, "ragkv generate exits 0");
}

static char *slurp(const char *name)
{
    char p[512];
    snprintf(p, sizeof(p), "%s/%s", tmp, name);
    FILE *f = fopen(p, "r");
    cr_assert_not_null(f);
    static char bufs[4][8192];
    static int k;
    char *b = bufs[k++ % 4];
    size_t n = fread(b, 1, 8191, f);
    b[n] = '\0';
    fclose(f);
    return b;
}

Test(blend_generate, chunk_prompts_through_the_tool, .timeout = 120)
{
    const char *model = rk_test_model_path("stories260K.bin");
    if (!model)
        cr_skip_test("skipped: no real model");
    cr_assert_not_null(rk_test_tmpdir(tmp, sizeof(tmp)));
    const int c1[] = {11, 45, 67, 300, 301, 302, 303, 304}, c2[] = {90, 91, 92, 93, 94, 95};
    const int q[] = {403, 407, 261, 378};
    write_ids("c1", c1, 8);
    write_ids("c2", c2, 6);
    write_ids("q", q, 4);
    int plain[19] = {1};
    memcpy(plain + 1, c1, sizeof(c1));
    memcpy(plain + 9, c2, sizeof(c2));
    memcpy(plain + 15, q, sizeof(q));
    write_ids("plain", plain, 19);
    char bl[256], pin[512];
    snprintf(pin, sizeof(pin), "%s/plain", tmp);
    char *plain_args[] = {"--tokens-in", pin, NULL};
    run(model, "o-plain", plain_args, bl, sizeof(bl));
    cr_expect_str_eq(bl, "", "no blend line for a plain prompt");
    char *full[] = {"--chunk", "C1", "--chunk", "C2", "--query", "Q", "--blend", "full", NULL};
    run(model, "o-full", full, bl, sizeof(bl));
    cr_expect(strncmp(bl, "blend: recomputed=1.0000 ttft_ms=", 33) == 0, "%s", bl);
    char *cb[] = {"--chunk", "C1", "--chunk", "C2", "--query", "Q", "--blend", "cacheblend", "--recompute", "1", NULL};
    run(model, "o-cb", cb, bl, sizeof(bl));
    char *nv[] = {"--chunk", "C1", "--chunk", "C2", "--query", "Q", "--blend", "naive", NULL};
    char nl[256];
    run(model, "o-naive", nv, nl, sizeof(nl));
    /* --select before --blend still holds (the ranking does not change what r = 1 means) */
    char *ca[] = {"--select", "attention", "--chunk", "C1", "--chunk", "C2", "--query", "Q", "--blend", "cacheblend",
                  "--recompute", "1", NULL};
    run(model, "o-cba", ca, bl, sizeof(bl));
    char *tp = slurp("o-plain"), *tf = slurp("o-full"), *tc = slurp("o-cb"), *ta = slurp("o-cba");
    cr_expect_str_eq(tf, tp, "assembled full = plain prefill of the same tokens");
    cr_expect_str_eq(tc, tf, "CacheBlend at r = 1 = full");
    cr_expect_str_eq(ta, tf, "CacheBlend by the query's attention at r = 1 = full");
    /* an unknown ranking is a usage error */
    char bin[1024], c1p[512];
    rk_test_bin("ragkv", bin, sizeof(bin));
    snprintf(c1p, sizeof(c1p), "%s/c1", tmp);
    char *bad[] = {bin, "generate", "--model", (char *)model, "--chunk", c1p, "--select", "entropy", NULL};
    rk_test_proc bp;
    cr_assert(rk_test_spawn(bad, &bp));
    char line[200];
    while (rk_test_read_line(&bp, line, sizeof(line), 60000))
        ;
    cr_expect_eq(rk_test_wait(&bp, 60000), 2, "--select entropy is refused");
    double frac = -1;
    cr_assert_eq(sscanf(nl, "blend: recomputed=%lf", &frac), 1, "%s", nl);
    cr_expect_float_eq(frac, 5.0 / 19.0, 1e-3, "naive computes BOS and the query only");
    rk_test_rmrf(tmp);
}
