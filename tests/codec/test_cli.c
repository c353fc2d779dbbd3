/* test_cli.c — `ragkv codec` end to end: encode, inspect, decode, train-codebook, errors. */
#include <stdio.h>
#include <sys/wait.h>

#include "codec_testlib.h"
#include "testutil.h"

static char bin[1024], dir[1024];

static void setup(void)
{
    cr_assert_not_null(rk_test_bin("ragkv", bin, sizeof bin));
    cr_assert_not_null(rk_test_tmpdir(dir, sizeof dir));
}

static void teardown(void) { rk_test_rmrf(dir); }

static int run(const char *args)
{
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "cd '%s' && '%s' codec %s > out.txt 2> err.txt", dir, bin, args);
    int st = system(cmd);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static char *path(const char *name)
{
    static char p[4][2048];
    static int k;
    k = (k + 1) % 4;
    snprintf(p[k], sizeof p[k], "%s/%s", dir, name);
    return p[k];
}

TestSuite(cli, .init = setup, .fini = teardown);

Test(cli, encode_decode_roundtrip)
{
    codec_shape s = {2, 50, 2, 8};
    float *kv = synth(s, 3);
    size_t n = codec_shape_values(&s);
    cr_assert_eq(codec_f32_file_write(path("in.f32"), kv, n), RK_OK);
    const char *codecs[] = {"raw", "lz4", "q8", "cachegen"};
    for (int c = 0; c < 4; c++) {
        char args[512];
        snprintf(args, sizeof args, "encode --codec %s --shape 2,50,2,8 in.f32 out.rkv", codecs[c]);
        cr_assert_eq(run(args), 0, "%s", args);
        cr_assert_eq(run("inspect out.rkv"), 0);
        cr_assert_eq(run("decode out.rkv dec.f32"), 0);
        float *out;
        cr_assert_eq(codec_f32_file_read(path("dec.f32"), &s, &out), RK_OK);
        /* the CLI's output equals the library's */
        codec_params p = codec_params_default(c == 0 ? CODEC_RAW : c == 1 ? CODEC_LZ4 : c == 2 ? CODEC_Q8 : CODEC_CACHEGEN);
        rk_buf b = RK_BUF_INIT;
        cr_assert_eq(codec_encode(kv, &s, &p, &b), RK_OK);
        float *ref = dec(&b, NULL);
        cr_assert_eq(memcmp(out, ref, n * 4), 0, "%s", codecs[c]);
        rk_free(out);
        rk_free(ref);
        rk_buf_free(&b);
    }
    rk_free(kv);
}

Test(cli, codebook_flow)
{
    codec_shape s = {2, 50, 2, 8};
    float *kv = synth(s, 4);
    size_t n = codec_shape_values(&s);
    cr_assert_eq(codec_f32_file_write(path("a.f32"), kv, n), RK_OK);
    cr_assert_eq(run("train-codebook --shape 2,50,2,8 --level 1 m.cb a.f32 a.f32"), 0);
    cr_assert_eq(run("encode --codec cachegen --codebook m.cb --shape 2,50,2,8 a.f32 a.rkv"), 0);
    cr_assert_eq(run("decode a.rkv d.f32"), 1, "decoding without the codebook must fail");
    cr_assert_eq(run("decode --codebook m.cb --dtype f16 a.rkv d.f16"), 0);
    /* a weighted rate allocation: weights are a one-token tensor (2 x 2 x 16 values) */
    float w[2 * 2 * 16];
    for (int i = 0; i < 64; i++)
        w[i] = (float)(1 + i % 3);
    cr_assert_eq(codec_f32_file_write(path("w.f32"), w, 64), RK_OK);
    cr_assert_eq(run("train-codebook --shape 2,50,2,8 --weights w.f32 mw.cb a.f32"), 0);
    cr_assert_eq(run("encode --codec cachegen --codebook mw.cb --shape 2,50,2,8 a.f32 w.rkv"), 0);
    cr_assert_eq(run("decode --codebook mw.cb w.rkv dw.f32"), 0);
    cr_assert_eq(run("encode --codec cachegen --weights w.f32 --shape 2,50,2,8 a.f32 w2.rkv"), 0);
    cr_assert_eq(run("decode w2.rkv dw2.f32"), 0);
    cr_assert_eq(codec_f32_file_write(path("short.f32"), w, 8), RK_OK);
    cr_assert_eq(run("encode --codec cachegen --weights short.f32 --shape 2,50,2,8 a.f32 x.rkv"), 1);
    /* --step-scale: coarser steps, a smaller container, per chunk and through a codebook */
    cr_assert_eq(run("encode --codec cachegen --weights w.f32 --step-scale 2 --shape 2,50,2,8 a.f32 s2.rkv"), 0);
    cr_assert_eq(run("train-codebook --shape 2,50,2,8 --weights w.f32 --step-scale 2 ms.cb a.f32"), 0);
    cr_assert_eq(run("encode --codec cachegen --codebook ms.cb --shape 2,50,2,8 a.f32 s2cb.rkv"), 0);
    cr_assert_eq(run("decode --codebook ms.cb s2cb.rkv ds.f32"), 0);
    struct { const char *big, *small; } pairs[] = {{"w2.rkv", "s2.rkv"}, {"w.rkv", "s2cb.rkv"}};
    for (int i = 0; i < 2; i++) {
        FILE *a = fopen(path(pairs[i].big), "rb"), *b = fopen(path(pairs[i].small), "rb");
        cr_assert(a && b);
        fseek(a, 0, SEEK_END);
        fseek(b, 0, SEEK_END);
        cr_assert_lt(ftell(b), ftell(a), "%s is not smaller than %s", pairs[i].small, pairs[i].big);
        fclose(a);
        fclose(b);
    }
    /* refused: without weights (1), a value out of range or not a number (2) */
    cr_assert_eq(run("encode --codec cachegen --step-scale 2 --shape 2,50,2,8 a.f32 x.rkv"), 1);
    cr_assert_eq(run("encode --codec cachegen --weights w.f32 --step-scale 100 --shape 2,50,2,8 a.f32 x.rkv"), 2);
    cr_assert_eq(run("train-codebook --shape 2,50,2,8 --weights w.f32 --step-scale x m.cb a.f32"), 2);
    cr_assert_eq(run("eval --synthetic --layers 2 --heads 2 --dim 8 --tokens 16 --step-scale 2"), 1);
    /* eval --rows: q8 (the ratios' reference) and the rows asked for, nothing else */
    cr_assert_eq(run("eval --synthetic --layers 2 --heads 2 --dim 8 --tokens 16 --rows \"L2 codebook\""), 0);
    FILE *o = fopen(path("out.txt"), "r");
    cr_assert_not_null(o);
    char line[512];
    int q8 = 0, l2 = 0, other = 0;
    while (fgets(line, sizeof line, o)) {
        if (!strncmp(line, "q8 ", 3))
            q8++;
        else if (!strncmp(line, "cachegen L2 codebook", 20))
            l2++;
        else if (!strncmp(line, "cachegen", 8) || !strncmp(line, "raw", 3) || !strncmp(line, "lz4", 3))
            other++;
    }
    fclose(o);
    cr_assert(q8 == 1 && l2 == 1 && other == 0, "q8 %d, L2 codebook %d, other rows %d", q8, l2, other);
    rk_free(kv);
}

Test(cli, bad_input)
{
    cr_assert_eq(run("encode --shape 1,1,1,1 x y"), 2); /* no codec */
    cr_assert_eq(run("encode --codec zstd --shape 1,1,1,1 x y"), 2);
    cr_assert_eq(run("encode --codec raw --shape 1,x,1,1 x y"), 2);
    cr_assert_eq(run("decode missing.rkv out"), 1);
    FILE *f = fopen(path("junk.rkv"), "wb");
    fputs("definitely not a container", f);
    fclose(f);
    cr_assert_eq(run("inspect junk.rkv"), 1);
    cr_assert_eq(run("decode junk.rkv out"), 1);
    float one[8] = {0};
    cr_assert_eq(codec_f32_file_write(path("short.f32"), one, 8), RK_OK);
    cr_assert_eq(run("encode --codec raw --shape 1,2,1,4 short.f32 o.rkv"), 1); /* 16 needed */
    cr_assert_eq(run("frobnicate"), 2);
    cr_assert_eq(run("eval --seeds 2 --shape 1,2,1,4 short.f32"), 2); /* a file has no seed */
    cr_assert_eq(run("eval --synthetic --seeds 0"), 2);
}

/* eval --seeds: a table per seed, then the means (the form of docs/codec.md's tables) */
Test(cli, eval_over_seeds)
{
    cr_assert_eq(run("eval --synthetic --layers 2 --heads 2 --dim 8 --tokens 32 --seeds 2 --rows 'L1 chunk-tables' "
                     "--json means.json"),
                 0);
    FILE *f = fopen(path("out.txt"), "r");
    cr_assert_not_null(f);
    char text[8192] = {0};
    size_t n = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    cr_assert(n > 0);
    cr_assert(strstr(text, "== source 2 of 2"), "%s", text);
    cr_assert(strstr(text, "== means over 2 sources"), "%s", text);
    f = fopen(path("means.json"), "r");
    cr_assert_not_null(f, "no means.json");
    n = fread(text, 1, sizeof text - 1, f);
    text[n] = 0;
    fclose(f);
    cr_assert(strstr(text, "\"sources\":2") && strstr(text, "cachegen L1 chunk-tables"), "%s", text);
}
