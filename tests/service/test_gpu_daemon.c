/* ragkvd on the CUDA backend (label gpu): chunks are cached through the GPU, and GENERATE from
 * them (CacheBlend at r = 1) produces the tokens the CPU tool produces for the same prompt,
 * the first time and again from the device tier (KV blocks on the CUDA backend).
 * Skips where the build or the machine has no CUDA. */
#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "ragkv/alloc.h"
#include "ragkv/client.h"
#include "ragkv/gpu.h"
#include "svc_testlib.h"
#include "testutil.h"

Test(gpu_daemon, generate_on_the_gpu_equals_the_cpu_tool, .timeout = 120)
{
    rk_gpu_info gi;
    if (rk_gpu_query(&gi) != RK_OK || gi.count == 0)
        cr_skip_test("skipped: no CUDA build or device");
    const char *model = rk_test_model_path("stories260K.bin");
    if (!model)
        cr_skip_test("skipped: no real model");
    char tmp[256], adm[256], tok[256], bin[1024], in[512], out[512];
    cr_assert_not_null(rk_test_tmpdir(tmp, sizeof(tmp)));
    const char *extra[] = {"--model", model, "--backend", "cuda", "--device-budget-mb", "8", NULL};
    rk_test_proc d, g;
    int port, hport;
    cr_assert(rk_test_daemon_start(tmp, extra, &d, &port, &hport), "ragkvd --backend cuda");
    cr_assert(rk_test_admin_token(tmp, adm, sizeof(adm)), "no admin token in %s/var", tmp);
    ragkv_conn *a, *t;
    cr_assert_eq(ragkv_connect("127.0.0.1", port, 30000, &a), RK_OK);
    cr_assert_eq(ragkv_auth(a, adm, NULL, 0), RK_OK);
    cr_assert_eq(ragkv_admin_tenant_create(a, "acme", 0, 0, 0, tok, sizeof(tok)), RK_OK);
    ragkv_close(a);
    cr_assert_eq(ragkv_connect("127.0.0.1", port, 30000, &t), RK_OK);
    cr_assert_eq(ragkv_auth(t, tok, NULL, 0), RK_OK);
    int32_t ch[2][24];
    uint8_t keys[64];
    for (int c = 0; c < 2; c++) {
        for (int i = 0; i < 24; i++)
            ch[c][i] = 7 + (c * 97 + i * 13) % 400;
        cr_assert_eq(ragkv_put_chunk(t, ch[c], 24, keys + 32 * c, NULL, NULL), RK_OK, "%s", rk_error_msg());
    }
    const int32_t q[] = {403, 407, 261, 378};
    ragkv_segment segs[2] = {{.key = keys}, {.key = keys + 32}};
    ragkv_gen_params p = {.segs = segs, .nsegs = 2, .query = q, .nquery = 4, .blend = 3, .recompute = 1.0f, .max_tokens = 20};
    svct_tokens got = {.n = 0};
    ragkv_gen_stats st;
    cr_assert_eq(ragkv_generate(t, &p, svct_collect_tokens, &got, &st), RK_OK, "%s", rk_error_msg());
    cr_expect_eq(st.chunk_hits, 2);
    svct_tokens again = {.n = 0};
    cr_assert_eq(ragkv_generate(t, &p, svct_collect_tokens, &again, &st), RK_OK, "%s", rk_error_msg());
    cr_expect_eq(svct_metric(hport, "store_device_hits_total"), 2, "the second GENERATE from the device tier");
    cr_expect(again.n == got.n && memcmp(again.toks, got.toks, got.n * sizeof(int32_t)) == 0,
              "the device tier gives the same tokens");
    ragkv_close(t);
    cr_expect_eq(rk_test_stop(&d, SIGTERM, 20000), 0);
    /* the CPU tool on BOS + the chunks + the query */
    snprintf(in, sizeof(in), "%s/in.txt", tmp);
    snprintf(out, sizeof(out), "%s/out.txt", tmp);
    FILE *f = fopen(in, "w");
    fprintf(f, "1\n");
    for (int c = 0; c < 2; c++)
        for (int i = 0; i < 24; i++)
            fprintf(f, "%d\n", ch[c][i]);
    for (int i = 0; i < 4; i++)
        fprintf(f, "%d\n", q[i]);
    fclose(f);
    rk_test_bin("ragkv", bin, sizeof(bin));
    char *argv[] = {bin, "generate", "--model", (char *)model, "--tokens-in", in, "--steps", "73", "--tokens-out", out,
                    "--backend", "cpu", NULL};
    cr_assert(rk_test_spawn(argv, &g));
    cr_assert_eq(rk_test_wait(&g, 60000), 0);
    f = fopen(out, "r");
    int v, i = 0, k = 0, ref[64];
    while (fscanf(f, "%d", &v) == 1)
        if (i++ >= 53 && k < 64)
            ref[k++] = v;
    fclose(f);
    cr_expect_gt(got.n, 0);
    cr_assert_geq(k, (int)got.n, "the CPU tool generated at least as many tokens");
    for (int j = 0; j < (int)got.n; j++)
        cr_expect_eq(got.toks[j], ref[j], "token %d: GPU daemon %d, CPU tool %d", j, got.toks[j], ref[j]);
    rk_test_rmrf(tmp);
}
