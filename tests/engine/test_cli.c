/* The `ragkv generate` and `ragkv model` commands, run as a child process. */
#include <criterion/criterion.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ragkv/engine.h"
#include "testutil.h"

static char tmp[512];

static void setup(void)
{
    cr_assert_not_null(rk_test_tmpdir(tmp, sizeof(tmp)));
}

static void teardown(void)
{
    rk_test_rmrf(tmp);
}

TestSuite(cli, .init = setup, .fini = teardown, .timeout = 60);

/* Run ragkv with args (NULL-terminated); stdout (first `cap` bytes) into out. Exit status. */
static int run(char *out, size_t cap, const char *arg0, ...)
{
    static char bin[4096];
    char *argv[32];
    int n = 0;
    argv[n++] = (char *)rk_test_bin("ragkv", bin, sizeof(bin));
    va_list ap;
    va_start(ap, arg0);
    for (const char *a = arg0; a && n < 31; a = va_arg(ap, const char *))
        argv[n++] = (char *)a;
    va_end(ap);
    argv[n] = NULL;
    rk_test_proc p;
    cr_assert(rk_test_spawn(argv, &p), "spawn %s", argv[0]);
    size_t len = 0;
    char line[8192];
    out[0] = 0;
    while (rk_test_read_line(&p, line, sizeof(line), 30000)) {
        size_t l = strlen(line);
        if (len + l + 2 < cap) {
            memcpy(out + len, line, l);
            len += l;
            out[len++] = '\n';
            out[len] = 0;
        }
    }
    return rk_test_wait(&p, 30000);
}

static int read_ids(const char *path, int32_t *ids, int cap)
{
    FILE *f = fopen(path, "r");
    cr_assert_not_null(f, "%s", path);
    int n = 0, v;
    while (n < cap && fscanf(f, "%d", &v) == 1)
        ids[n++] = v;
    fclose(f);
    return n;
}

static const char golden[] = "Once upon a time, there was a little girl named Lily. She loved to play outside in the "
                             "park. One day, she saw a big, red ball. She wanted to play with it, but it was too high.";

Test(cli, generate_golden_tokens_and_logits_files)
{
    const char *model = rk_test_model_path("stories260K.bin");
    if (!model)
        cr_skip_test("skipped: no real model (stories260K.bin)");
    char mp[4400], tp[4400], tok_out[600], log_out[600], out[65536];
    snprintf(mp, sizeof(mp), "%s", model);
    snprintf(tp, sizeof(tp), "%s", rk_test_model_path("tok512.bin"));
    snprintf(tok_out, sizeof(tok_out), "%s/tokens.txt", tmp);
    snprintf(log_out, sizeof(log_out), "%s/logits.bin", tmp);
    int rc = run(out, sizeof(out), "generate", "--model", mp, "--tokenizer", tp, "--prompt", "Once upon a time",
                 "--steps", "256", "--tokens-out", tok_out, "--logits-out", log_out, "--threads", "2", NULL);
    cr_assert_eq(rc, 0);
    cr_expect(strncmp(out, golden, strlen(golden)) == 0, "printed:\n%s", out);
    static int32_t ids[1000];
    int n = read_ids(tok_out, ids, 1000);
    cr_expect_eq(ids[0], 1, "BOS first");
    cr_expect_leq(n, 257, "at most steps + 1 tokens");
    /* the logits file: one row per sampled token from the last prompt position on, and
     * each row's argmax is the token that follows (greedy) */
    FILE *f = fopen(log_out, "rb");
    cr_assert_not_null(f);
    fseek(f, 0, SEEK_END);
    long bytes = ftell(f);
    fseek(f, 0, SEEK_SET);
    cr_assert_eq(bytes % (512 * 4), 0);
    int rows = (int)(bytes / (512 * 4));
    int n_prompt = 5; /* BOS + 4 pieces of "Once upon a time" */
    cr_expect(rows == n - n_prompt || rows == n - n_prompt + 1, "%d rows for %d tokens", rows, n);
    float row[512];
    for (int r = 0; r < rows; r++) {
        cr_assert_eq(fread(row, 4, 512, f), 512);
        int32_t want = n_prompt + r < n ? ids[n_prompt + r] : 1; /* past the end: the stop token (BOS) */
        cr_expect_eq(eng_argmax(row, 512), want, "row %d", r);
    }
    fclose(f);

    /* --tokens-in with the same ids (prompt only) continues identically */
    char tin[600], tok_out2[600];
    snprintf(tin, sizeof(tin), "%s/in.txt", tmp);
    snprintf(tok_out2, sizeof(tok_out2), "%s/tokens2.txt", tmp);
    FILE *fi = fopen(tin, "w");
    for (int i = 0; i < n_prompt; i++)
        fprintf(fi, "%d\n", ids[i]);
    fclose(fi);
    rc = run(out, sizeof(out), "generate", "--model", mp, "--tokenizer", tp, "--tokens-in", tin, "--steps", "256",
             "--tokens-out", tok_out2, NULL);
    cr_assert_eq(rc, 0);
    static int32_t ids2[1000];
    int n2 = read_ids(tok_out2, ids2, 1000);
    cr_expect_eq(n2, n);
    cr_expect(memcmp(ids, ids2, (size_t)n * 4) == 0);

    /* --steps counts positions, prompt included: 8 steps = 5 prompt + 3 more processed,
     * the token at every position 0..8 listed */
    rc = run(out, sizeof(out), "generate", "--model", mp, "--tokenizer", tp, "--prompt", "Once upon a time",
             "--steps", "8", "--tokens-out", tok_out2, NULL);
    cr_assert_eq(rc, 0);
    n2 = read_ids(tok_out2, ids2, 1000);
    cr_expect_eq(n2, 9);
    cr_expect(memcmp(ids, ids2, 9 * 4) == 0, "a shorter run is a prefix");
}

Test(cli, model_info_convert_synth)
{
    const char *model = rk_test_model_path("stories260K.bin");
    if (!model)
        cr_skip_test("skipped: no real model (stories260K.bin)");
    char mp[4400], tp[4400], dir[600], out[65536], t1[600], t2[600];
    snprintf(mp, sizeof(mp), "%s", model);
    snprintf(tp, sizeof(tp), "%s", rk_test_model_path("tok512.bin"));
    cr_assert_eq(run(out, sizeof(out), "model", "info", mp, NULL), 0);
    cr_expect(strstr(out, "kv_heads:    4") != NULL, "%s", out);
    cr_expect(strstr(out, "format:      llama2.c") != NULL, "%s", out);
    snprintf(dir, sizeof(dir), "%s/hf", tmp);
    cr_assert_eq(run(out, sizeof(out), "model", "convert", mp, dir, "--tokenizer", tp, NULL), 0);
    cr_assert_eq(run(out, sizeof(out), "model", "info", dir, NULL), 0);
    cr_expect(strstr(out, "rotate-half") != NULL, "%s", out);
    snprintf(t1, sizeof(t1), "%s/t1.txt", tmp);
    snprintf(t2, sizeof(t2), "%s/t2.txt", tmp);
    cr_assert_eq(run(out, sizeof(out), "generate", "--model", mp, "--tokenizer", tp, "--prompt", "Lily", "--steps",
                     "100", "--tokens-out", t1, NULL), 0);
    /* the folder's own tokenizer.bin is found without --tokenizer */
    cr_assert_eq(run(out, sizeof(out), "generate", "--model", dir, "--prompt", "Lily", "--steps", "100",
                     "--tokens-out", t2, NULL), 0);
    static int32_t a[200], b[200];
    int na = read_ids(t1, a, 200), nb = read_ids(t2, b, 200);
    cr_expect_eq(na, nb);
    cr_expect(memcmp(a, b, (size_t)na * 4) == 0, "converted folder generates other tokens");

    snprintf(dir, sizeof(dir), "%s/demo", tmp);
    cr_assert_eq(run(out, sizeof(out), "model", "synth", "--shape", "demo", "--seed", "1", "--out", dir, NULL), 0);
    cr_assert_eq(run(out, sizeof(out), "generate", "--model", dir, "--prompt", "hello", "--steps", "20",
                     "--temperature", "0.9", "--top-p", "0.9", "--seed", "4", "--tokens-out", t1, NULL), 0);
    cr_assert_eq(run(out, sizeof(out), "generate", "--model", dir, "--prompt", "hello", "--steps", "20",
                     "--temperature", "0.9", "--top-p", "0.9", "--seed", "4", "--tokens-out", t2, NULL), 0);
    na = read_ids(t1, a, 200);
    nb = read_ids(t2, b, 200);
    cr_expect(na == nb && memcmp(a, b, (size_t)na * 4) == 0, "seeded sampling is reproducible");
    cr_assert_eq(run(out, sizeof(out), "model", "synth", "--list", NULL), 0);
    cr_expect(strstr(out, "llama3-8b\n") && strstr(out, "qwen2-7b\n") && strstr(out, "mistral-7b\n"), "%s", out);
}

Test(cli, bad_arguments)
{
    char out[4096], p[600];
    cr_expect_eq(run(out, sizeof(out), "generate", NULL), 2);
    cr_expect_eq(run(out, sizeof(out), "generate", "--model", "x", "--steps", "zero", "--prompt", "a", NULL), 2);
    cr_expect_eq(run(out, sizeof(out), "generate", "--model", "x", "--steps", "5", "--bogus", "1", NULL), 2);
    snprintf(p, sizeof(p), "%s/missing.bin", tmp);
    cr_expect_eq(run(out, sizeof(out), "generate", "--model", p, "--steps", "5", "--prompt", "a", NULL), 1);
    cr_expect_eq(run(out, sizeof(out), "model", "info", p, NULL), 1);
    cr_expect_eq(run(out, sizeof(out), "model", "synth", "--shape", "nope", "--seed", "1", "--out", p, NULL), 2);
    cr_expect_eq(run(out, sizeof(out), "model", "frobnicate", NULL), 2);
    snprintf(p, sizeof(p), "%s/demo", tmp);
    cr_assert_eq(run(out, sizeof(out), "model", "synth", "--shape", "demo", "--seed", "1", "--out", p, NULL), 0);
    char tin[600];
    snprintf(tin, sizeof(tin), "%s/bad.txt", tmp);
    FILE *f = fopen(tin, "w");
    fprintf(f, "1\n99999\n");
    fclose(f);
    cr_expect_eq(run(out, sizeof(out), "generate", "--model", p, "--tokens-in", tin, "--steps", "5", NULL), 1,
                 "a token id outside the vocabulary");
    f = fopen(tin, "w");
    fprintf(f, "1\nabc\n");
    fclose(f);
    cr_expect_eq(run(out, sizeof(out), "generate", "--model", p, "--tokens-in", tin, "--steps", "5", NULL), 2);
    cr_expect_eq(run(out, sizeof(out), "generate", "--model", p, "--prompt", "x", "--steps", "5", "--backend", "tpu",
                     NULL), 1);
}
