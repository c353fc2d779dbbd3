/* The device tier through the daemon on the real model (--device-budget-mb): a second GENERATE
 * over the same chunks is served from the tier (its metrics) and streams the same greedy
 * tokens, in every blend mode, by key and by content; r = 1 from the tier equals full prefill;
 * a deleted chunk, a revoked grant and another tenant's key are never served from it; a small
 * budget evicts, and what it evicted is read and decoded again. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ragkv/alloc.h"
#include "ragkv/client.h"
#include "svc_testlib.h"
#include "testutil.h"

static const char *model;

static void need_model(void)
{
    model = rk_test_model_path("stories260K.bin");
    if (!model)
        cr_skip_test("skipped: no real model");
}

static void chunk_tokens(int32_t *t, int n, int seed)
{
    for (int i = 0; i < n; i++)
        t[i] = 3 + (seed * 7919 + i * 104729) % 500;
}

static const int32_t query[] = {403, 407, 261, 378};

/* GENERATE (greedy) over segs; the tokens into *out, the status returned. */
static rk_status gen(ragkv_conn *c, const char *ns, const ragkv_segment *segs, uint32_t nsegs, uint8_t mode,
                     float r, uint32_t max, svct_tokens *out, ragkv_gen_stats *st)
{
    ragkv_gen_params p = {.ns = ns, .segs = segs, .nsegs = nsegs, .query = query, .nquery = 4, .blend = mode,
                          .recompute = r, .max_tokens = max};
    memset(out, 0, sizeof(*out));
    return ragkv_generate(c, &p, svct_collect_tokens, out, st);
}

/* ragkvd on the real model with a device tier of budget_mb and the tenants acme, globex and
 * corpus; *a is a connection of acme's. */
static void dev_up(svct_daemon *dd, const char *budget_mb, ragkv_conn **a)
{
    need_model();
    const char *extra[] = {"--model", model, "--device-budget-mb", budget_mb, NULL};
    svct_daemon_up(dd, "ragkvd", extra, "acme", "globex", "corpus", NULL);
    *a = svct_dial(dd->port, dd->token[0]);
}

static void dev_down(svct_daemon *dd, ragkv_conn *a)
{
    ragkv_close(a);
    svct_daemon_down(dd);
}

static long long dev(const svct_daemon *dd, const char *what)
{
    char name[64];
    snprintf(name, sizeof(name), "store_device_%s", what);
    return svct_metric(dd->hport, name);
}

static void expect_same_tokens(const svct_tokens *a, const svct_tokens *b, const char *what)
{
    cr_expect(a->n > 0 && a->n == b->n && memcmp(a->toks, b->toks, a->n * sizeof(int32_t)) == 0,
              "%s: %u vs %u tokens, or different ones", what, a->n, b->n);
}

Test(devtier, second_generate_is_served_from_the_device_tier, .timeout = 180)
{
    svct_daemon dd;
    ragkv_conn *c;
    dev_up(&dd, "8", &c);
    int32_t ch[2][30];
    uint8_t keys[64];
    for (int i = 0; i < 2; i++) {
        chunk_tokens(ch[i], 30, i + 1);
        cr_assert_eq(ragkv_put_chunk(c, ch[i], 30, keys + 32 * i, NULL, NULL), RK_OK, "%s", rk_error_msg());
    }
    cr_expect_eq(dev(&dd, "chunks"), 0, "PUT_CHUNK decodes nothing: the tier fills on use");
    ragkv_segment by_key[2] = {{.key = keys}, {.key = keys + 32}};
    ragkv_segment by_tok[2] = {{.tokens = ch[0], .ntokens = 30}, {.tokens = ch[1], .ntokens = 30}};
    svct_tokens first, again;
    ragkv_gen_stats st;
    cr_assert_eq(gen(c, NULL, by_key, 2, 3, 0.15f, 24, &first, &st), RK_OK, "%s", rk_error_msg());
    cr_expect_eq(st.chunk_hits, 2);
    cr_expect_eq(dev(&dd, "misses_total"), 2, "first use: read and decoded");
    cr_expect_eq(dev(&dd, "admits_total"), 2);
    cr_expect_eq(dev(&dd, "hits_total"), 0);
    cr_expect_eq(dev(&dd, "chunks"), 2);
    cr_expect_eq(dev(&dd, "bytes"), 2 * 30 * 1280, "two 30-token blocks of stories260K's float KV");
    cr_assert_eq(gen(c, NULL, by_key, 2, 3, 0.15f, 24, &again, &st), RK_OK, "%s", rk_error_msg());
    cr_expect_eq(dev(&dd, "hits_total"), 2, "the second GENERATE: both chunks from the device tier");
    cr_expect_eq(dev(&dd, "misses_total"), 2);
    expect_same_tokens(&first, &again, "cacheblend by key, then from the tier");
    cr_assert_eq(gen(c, NULL, by_tok, 2, 3, 0.15f, 24, &again, &st), RK_OK, "%s", rk_error_msg());
    cr_expect_eq(st.chunk_hits, 2);
    cr_expect_eq(dev(&dd, "hits_total"), 4, "found by content too");
    expect_same_tokens(&first, &again, "cacheblend by content from the tier");
    /* every mode from the tier; r = 1 equals full prefill */
    svct_tokens full, r1;
    cr_assert_eq(gen(c, NULL, by_tok, 2, 0, 0, 24, &full, &st), RK_OK, "%s", rk_error_msg());
    cr_assert_eq(gen(c, NULL, by_key, 2, 3, 1.0f, 24, &r1, &st), RK_OK, "%s", rk_error_msg());
    expect_same_tokens(&full, &r1, "cacheblend r = 1 from the tier vs full prefill");
    long long hits = dev(&dd, "hits_total");
    for (uint8_t mode = 1; mode <= 5; mode++) {
        cr_assert_eq(gen(c, NULL, by_key, 2, mode, 0.15f, 8, &again, &st), RK_OK, "mode %u: %s", mode, rk_error_msg());
        cr_expect_gt(again.n, 0, "mode %u", mode);
        cr_expect_eq(dev(&dd, "hits_total"), hits + 2, "mode %u: both chunks from the tier", mode);
        hits = dev(&dd, "hits_total");
    }
    dev_down(&dd, c);
}

Test(devtier, deleted_revoked_and_foreign_chunks_are_never_served, .timeout = 180)
{
    svct_daemon dd;
    ragkv_conn *a;
    dev_up(&dd, "8", &a);
    ragkv_conn *b = svct_dial(dd.port, dd.token[1]);
    ragkv_conn *corp = svct_dial(dd.port, dd.token[2]), *adm = svct_dial(dd.port, dd.adm);
    int32_t mine[30], shared[30];
    uint8_t kmine[32], kshared[32];
    chunk_tokens(mine, 30, 5);
    chunk_tokens(shared, 30, 6);
    cr_assert_eq(ragkv_put_chunk(a, mine, 30, kmine, NULL, NULL), RK_OK, "%s", rk_error_msg());
    cr_assert_eq(ragkv_put_chunk(corp, shared, 30, kshared, NULL, NULL), RK_OK, "%s", rk_error_msg());
    cr_assert_eq(ragkv_admin_grant(adm, "corpus", "acme", 1), RK_OK, "%s", rk_error_msg());
    ragkv_segment sm = {.key = kmine}, ss = {.tokens = shared, .ntokens = 30}, sk = {.key = kshared};
    svct_tokens out;
    ragkv_gen_stats st;
    for (int i = 0; i < 2; i++) { /* into the tier, then from it */
        cr_assert_eq(gen(a, NULL, &sm, 1, 3, 0.15f, 4, &out, &st), RK_OK, "%s", rk_error_msg());
        cr_assert_eq(gen(a, "corpus", &ss, 1, 3, 0.15f, 4, &out, &st), RK_OK, "%s", rk_error_msg());
        cr_expect_eq(st.chunk_hits, 1, "the granted shared chunk, by content");
    }
    cr_expect_eq(dev(&dd, "hits_total"), 2);
    cr_expect_eq(dev(&dd, "chunks"), 2);

    /* another tenant: acme's key and corpus's key are not globex's, tier or not */
    cr_expect_eq(gen(b, NULL, &sm, 1, 3, 0.15f, 4, &out, &st), RK_ERR_NOT_FOUND);
    cr_expect_eq(gen(b, "acme", &sm, 1, 3, 0.15f, 4, &out, &st), RK_ERR_NOT_FOUND);
    cr_expect_eq(gen(b, NULL, &sk, 1, 3, 0.15f, 4, &out, &st), RK_ERR_NOT_FOUND);
    cr_assert_eq(gen(b, "corpus", &ss, 1, 3, 0.15f, 4, &out, &st), RK_OK, "%s", rk_error_msg());
    cr_expect(st.chunk_hits == 0 && st.chunk_misses == 1, "not granted: computed, never served");
    cr_expect_eq(dev(&dd, "hits_total"), 2, "nothing was served from the tier to globex");

    /* revoke: the chunk still exists (and stays in the tier) but acme may not read it now */
    cr_assert_eq(ragkv_admin_grant(adm, "corpus", "acme", 0), RK_OK, "%s", rk_error_msg());
    cr_assert_eq(gen(a, "corpus", &ss, 1, 3, 0.15f, 4, &out, &st), RK_OK, "%s", rk_error_msg());
    cr_expect(st.chunk_hits == 0 && st.chunk_misses == 1, "a revoked grant: a miss");
    cr_expect_eq(gen(a, NULL, &sk, 1, 3, 0.15f, 4, &out, &st), RK_ERR_NOT_FOUND, "by key: no such chunk");
    cr_expect_eq(dev(&dd, "hits_total"), 2, "the revoked chunk was not served from the tier");
    cr_assert_eq(ragkv_admin_grant(adm, "corpus", "acme", 1), RK_OK);
    cr_assert_eq(gen(a, "corpus", &ss, 1, 3, 0.15f, 4, &out, &st), RK_OK);
    cr_expect_eq(dev(&dd, "hits_total"), 3, "granted again: from the tier again");

    /* delete: the entry goes with the chunk; the next request misses */
    long long drops = dev(&dd, "drops_total");
    cr_assert_eq(ragkv_delete(a, kmine), RK_OK, "%s", rk_error_msg());
    cr_expect_eq(dev(&dd, "drops_total"), drops + 1, "the delete dropped the device entry");
    cr_expect_eq(dev(&dd, "chunks"), 1);
    cr_expect_eq(gen(a, NULL, &sm, 1, 3, 0.15f, 4, &out, &st), RK_ERR_NOT_FOUND, "a deleted chunk by key");
    ragkv_segment lit = {.tokens = mine, .ntokens = 30};
    cr_assert_eq(gen(a, NULL, &lit, 1, 3, 0.15f, 4, &out, &st), RK_OK, "%s", rk_error_msg());
    cr_expect(st.chunk_hits == 0 && st.chunk_misses == 1, "a deleted chunk by content: a miss");
    cr_expect_eq(dev(&dd, "hits_total"), 3);
    /* ... which cached it again: the next request reads and decodes it, then the tier has it */
    cr_assert_eq(gen(a, NULL, &lit, 1, 3, 0.15f, 4, &out, &st), RK_OK);
    cr_expect_eq(st.chunk_hits, 1);
    cr_assert_eq(gen(a, NULL, &lit, 1, 3, 0.15f, 4, &out, &st), RK_OK);
    cr_expect_eq(dev(&dd, "hits_total"), 4);

    /* tenant deletion drops its chunks from the tier too */
    drops = dev(&dd, "drops_total");
    cr_assert_eq(ragkv_admin_tenant_delete(adm, "corpus"), RK_OK, "%s", rk_error_msg());
    cr_expect_eq(dev(&dd, "drops_total"), drops + 1);
    ragkv_close(b);
    ragkv_close(corp);
    ragkv_close(adm);
    dev_down(&dd, a);
}

Test(devtier, a_small_budget_evicts, .timeout = 180)
{
    svct_daemon dd;
    ragkv_conn *c;
    dev_up(&dd, "1", &c); /* 1 MiB holds four 200-token blocks of stories260K (256000 bytes each), not five */
    enum { N = 6, T = 200 };
    static int32_t ch[N][T];
    uint8_t keys[N][32];
    for (int i = 0; i < N; i++) {
        chunk_tokens(ch[i], T, 20 + i);
        cr_assert_eq(ragkv_put_chunk(c, ch[i], T, keys[i], NULL, NULL), RK_OK, "%s", rk_error_msg());
    }
    svct_tokens out;
    ragkv_gen_stats st;
    for (int i = 0; i < N; i++) {
        ragkv_segment s = {.key = keys[i]};
        cr_assert_eq(gen(c, NULL, &s, 1, 2, 0, 2, &out, &st), RK_OK, "%d: %s", i, rk_error_msg());
    }
    cr_expect_eq(dev(&dd, "admits_total"), N);
    cr_expect_geq(dev(&dd, "evictions_total"), 2, "six blocks through a tier that holds four");
    cr_expect_leq(dev(&dd, "bytes"), 1 << 20);
    cr_expect_leq(dev(&dd, "chunks"), 4);
    /* asking for all six again: the evicted ones are read and decoded again */
    long long misses = dev(&dd, "misses_total");
    for (int i = 0; i < N; i++) {
        ragkv_segment s = {.key = keys[i]};
        cr_assert_eq(gen(c, NULL, &s, 1, 2, 0, 2, &out, &st), RK_OK, "%d: %s", i, rk_error_msg());
    }
    cr_expect_geq(dev(&dd, "misses_total"), misses + 2, "what was evicted missed");
    cr_expect_leq(dev(&dd, "bytes"), 1 << 20);
    dev_down(&dd, c);
}

Test(devtier, off_by_default)
{
    need_model();
    svct_daemon dd;
    const char *extra[] = {"--model", model, NULL};
    svct_daemon_up(&dd, "ragkvd", extra, "acme", NULL);
    cr_expect_eq(dev(&dd, "hits_total"), -1, "no device tier, no device series");
    svct_daemon_down(&dd);
}
