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
}
