/* GENERATE through the daemon on the real model: equal to `ragkv generate` on the same prompt,
 * streamed or not; concurrent generations (continuous batching) equal sequential ones; bad
 * prompts get clear errors; a client that disconnects mid-generation does no harm. */
#include <criterion/criterion.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ragkv/alloc.h"
#include "ragkv/client.h"
#include "svc_testlib.h"
#include "testutil.h"

static char tmp[256], token[256];
static rk_test_proc daemon;
static int port, hport;
static const char *model;

static void setup(void)
{
    model = rk_test_model_path("stories260K.bin");
    if (!model)
        return;
    cr_assert_not_null(rk_test_tmpdir(tmp, sizeof(tmp)));
    const char *extra[] = {"--model", model, "--max-batch", "8", NULL};
    cr_assert(rk_test_daemon_start(tmp, extra, &daemon, &port, &hport), "ragkvd did not start");
    /* a tenant, through the admin credential */
    char adm[256];
    cr_assert(rk_test_admin_token(tmp, adm, sizeof(adm)), "no admin token in %s/var", tmp);
    ragkv_conn *a;
    cr_assert_eq(ragkv_connect("127.0.0.1", port, 10000, &a), RK_OK);
    cr_assert_eq(ragkv_auth(a, adm, NULL, 0), RK_OK);
    cr_assert_eq(ragkv_admin_tenant_create(a, "acme", 0, 0, 0, token, sizeof(token)), RK_OK);
    ragkv_close(a);
}

static void teardown(void)
{
    if (!model)
        return;
    cr_expect_eq(rk_test_stop(&daemon, SIGTERM, 20000), 0, "clean exit");
    rk_test_rmrf(tmp);
}

TestSuite(generate, .init = setup, .fini = teardown, .timeout = 120);

static ragkv_conn *tenant_conn(void)
{
    ragkv_conn *c;
    cr_assert_eq(ragkv_connect("127.0.0.1", port, 30000, &c), RK_OK);
    cr_assert_eq(ragkv_auth(c, token, NULL, 0), RK_OK, "%s", rk_error_msg());
    return c;
}

/* `ragkv generate` on BOS + prompt for prompt+max positions: the generated tokens. */
static int reference(const int32_t *prompt, int np, int max, int32_t *out)
{
    char in[512], outp[512], steps[16], bin[1024];
    snprintf(in, sizeof(in), "%s/in.txt", tmp);
    snprintf(outp, sizeof(outp), "%s/out.txt", tmp);
    FILE *f = fopen(in, "w");
    fprintf(f, "1\n");
    for (int i = 0; i < np; i++)
        fprintf(f, "%d\n", prompt[i]);
    fclose(f);
    snprintf(steps, sizeof(steps), "%d", np + 1 + max);
    rk_test_bin("ragkv", bin, sizeof(bin));
    char *argv[] = {bin, "generate", "--model", (char *)model, "--tokens-in", in, "--steps", steps,
                    "--tokens-out", outp, NULL};
    rk_test_proc p;
    cr_assert(rk_test_spawn(argv, &p));
    cr_assert_eq(rk_test_wait(&p, 60000), 0, "ragkv generate");
    f = fopen(outp, "r");
    cr_assert_not_null(f);
    int v, i = 0, n = 0;
    while (fscanf(f, "%d", &v) == 1) {
        if (i++ > np) /* skip BOS and the prompt */
            out[n++] = v;
    }
    fclose(f);
    return n;
}

static const int32_t once[] = {403, 407, 261, 378}; /* "Once upon a time" in tok512 */

Test(generate, equals_ragkv_generate_streamed_and_not)
{
    if (!model)
        cr_skip_test("skipped: no real model");
    int32_t ref[64];
    int nref = reference(once, 4, 40, ref);
    cr_assert_gt(nref, 10);
    ragkv_conn *c = tenant_conn();
    ragkv_gen_params p = {.query = once, .nquery = 4, .blend = 0, .max_tokens = 40};
    svct_tokens cl = {0};
    ragkv_gen_stats st;
    cr_assert_eq(ragkv_generate(c, &p, svct_collect_tokens, &cl, &st), RK_OK, "%s", rk_error_msg());
    cr_expect_eq((int)cl.n, nref < 40 ? nref : 40);
    cr_expect(memcmp(cl.toks, ref, cl.n * sizeof(int32_t)) == 0, "streamed tokens equal ragkv generate");
    cr_expect_gt(cl.calls, 1, "tokens arrived in several stream frames");
    cr_expect_eq(st.prompt_tokens, 5);
    cr_expect_gt(st.ttft_ms, 0.0f);
    /* the same prompt as a literal segment, no streaming, in every mode (no chunk is cached:
     * all of them are a full prefill) */
    for (uint8_t mode = 0; mode <= 3; mode++) {
        ragkv_segment seg = {.tokens = once, .ntokens = 4};
        ragkv_gen_params q = {.segs = &seg, .nsegs = 1, .blend = mode, .recompute = 0.15f, .max_tokens = 40};
        svct_tokens c2 = {0};
        cr_assert_eq(ragkv_generate(c, &q, NULL, NULL, &st), RK_OK, "%s", rk_error_msg());
        (void)c2;
        cr_expect_eq(st.generated, cl.n, "mode %u", mode);
    }
    ragkv_close(c);
}

struct conc {
    int32_t prompt[3];
    uint64_t seed;
    ragkv_conn *conn;
    svct_tokens got;
    rk_status st;
};

static void *conc_run(void *arg)
{
    struct conc *x = arg;
    ragkv_gen_params p = {.query = x->prompt, .nquery = 3, .max_tokens = 30, .temperature = 0.8f,
                          .top_p = 0.9f, .seed = x->seed};
    x->st = ragkv_generate(x->conn, &p, svct_collect_tokens, &x->got, NULL);
    return NULL;
}

Test(generate, concurrent_generations_equal_sequential)
{
    if (!model)
        cr_skip_test("skipped: no real model");
    enum { N = 6 };
    struct conc cs[N];
    pthread_t th[N];
    /* N clients at once: the executor admits them together and decodes them in shared steps */
    for (int i = 0; i < N; i++) {
        cs[i] = (struct conc){.prompt = {403, 407 + i, 261}, .seed = 100 + (uint64_t)i};
        cs[i].conn = tenant_conn();
    }
    for (int i = 0; i < N; i++)
        cr_assert_eq(pthread_create(&th[i], NULL, conc_run, &cs[i]), 0);
    for (int i = 0; i < N; i++)
        pthread_join(th[i], NULL);
    /* they were decoded together: more tokens than decode steps */
    int code;
    char *body;
    cr_assert_eq(ragkv_http_get("127.0.0.1", hport, "/metrics", 5000, &code, &body), RK_OK);
    long long steps = -1, toks = -1;
    char *ps = strstr(body, "\nragkv_decode_steps_total "), *pt = strstr(body, "\nragkv_decode_tokens_total ");
    cr_assert(ps && pt, "%s", body);
    sscanf(ps, "\nragkv_decode_steps_total %lld", &steps);
    sscanf(pt, "\nragkv_decode_tokens_total %lld", &toks);
    rk_free(body);
    cr_expect_gt(toks, steps, "batched decode: %lld tokens in %lld steps", toks, steps);
    /* each again, alone: identical tokens (seeded sampling does not depend on the batch) */
    for (int i = 0; i < N; i++) {
        cr_assert_eq(cs[i].st, RK_OK, "request %d: %s", i, rk_status_name(cs[i].st));
        struct conc alone = cs[i];
        alone.got.n = 0;
        conc_run(&alone);
        cr_assert_eq(alone.st, RK_OK);
        cr_expect_gt(alone.got.n, 0);
        cr_expect_eq(alone.got.n, cs[i].got.n, "request %d", i);
        cr_expect(memcmp(alone.got.toks, cs[i].got.toks, alone.got.n * sizeof(int32_t)) == 0, "request %d", i);
        ragkv_close(cs[i].conn);
    }
}

static int stop_at_once(void *ctx, const int32_t *t, uint32_t n)
{
    (void)ctx;
    (void)t;
    (void)n;
    return 1;
}

Test(generate, bad_prompts_and_disconnects)
{
    if (!model)
        cr_skip_test("skipped: no real model");
    ragkv_conn *c = tenant_conn();
    const int32_t big[] = {1, 600};
    ragkv_gen_params p = {.query = big, .nquery = 2, .max_tokens = 4};
    cr_expect_eq(ragkv_generate(c, &p, NULL, NULL, NULL), RK_ERR_RANGE, "token beyond the vocabulary");
    uint8_t key[32] = {1};
    ragkv_segment seg = {.key = key};
    ragkv_gen_params pk = {.segs = &seg, .nsegs = 1, .query = once, .nquery = 4, .max_tokens = 4};
    cr_expect_eq(ragkv_generate(c, &pk, NULL, NULL, NULL), RK_ERR_NOT_FOUND, "unknown chunk key");
    int32_t *longp = calloc(600, sizeof(int32_t));
    for (int i = 0; i < 600; i++)
        longp[i] = 300;
    ragkv_gen_params pl = {.query = longp, .nquery = 600, .max_tokens = 4};
    cr_expect_eq(ragkv_generate(c, &pl, NULL, NULL, NULL), RK_ERR_RANGE, "beyond the context");
    free(longp);

    ragkv_close(c);
    /* a client that goes away mid-generation: stop reading after the first stream frame */
    c = tenant_conn();
    ragkv_gen_params plong = {.query = once, .nquery = 4, .max_tokens = 400, .temperature = 1.0f, .seed = 3};
    cr_expect_eq(ragkv_generate(c, &plong, stop_at_once, NULL, NULL), RK_ERR_CANCELLED);
    ragkv_close(c);
    /* the daemon still serves */
    c = tenant_conn();
    cr_expect_eq(ragkv_ping(c), RK_OK);
    ragkv_close(c);
}
