/* blend/: exactness of prompt assembly on the real test models (acceptance list of issue 5):
 * CacheBlend at r = 1 equals full prefill, r = 0 equals naive, a true-prefix chunk cache equals
 * the prompt's own KV, prefix mode is exact, RoPE shifts are exact in both pair layouts. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ragkv/alloc.h"
#include "ragkv/blend.h"
#include "blend_testlib.h"
#include "testutil.h"

static eng_model *m;
static eng_backend *be;
static const eng_model_info *mi;
static char tmp[256];

static void open_model(const char *file, bool as_hf)
{
    const char *path = rk_test_model_path(file);
    if (!path)
        cr_skip_test("skipped: no real model (%s)", file);
    cr_assert_eq(eng_model_open(path, &m), RK_OK, "%s", rk_error_msg());
    if (as_hf) { /* the Hugging Face copy: rotate-half RoPE */
        cr_assert_not_null(rk_test_tmpdir(tmp, sizeof(tmp)));
        cr_assert_eq(eng_model_write_hf(m, tmp), RK_OK, "%s", rk_error_msg());
        eng_model_close(m);
        cr_assert_eq(eng_model_open(tmp, &m), RK_OK, "%s", rk_error_msg());
    }
    mi = eng_model_get_info(m);
    cr_assert_eq(eng_backend_cpu_new(m, 2, &be), RK_OK, "%s", rk_error_msg());
}

static void teardown(void)
{
    eng_backend_free(be);
    eng_model_close(m);
    be = NULL;
    m = NULL;
    if (tmp[0])
        rk_test_rmrf(tmp);
    tmp[0] = '\0';
}

TestSuite(blend, .fini = teardown, .timeout = 120);

/* Seeded "text": token ids in [3, vocab). */
static void fill_tokens(int32_t *t, size_t n, unsigned seed)
{
    srand(seed);
    for (size_t i = 0; i < n; i++)
        t[i] = 3 + rand() % (mi->vocab - 3);
}

struct fixture {
    int32_t c[3][40];  /* three chunks */
    size_t n[3];
    float *kv[3];      /* their standalone caches */
    int32_t q[6];      /* the query */
    bl_segment seg[3];
};

static void make_fixture(struct fixture *f, unsigned seed)
{
    static const size_t lens[3] = {40, 23, 31};
    for (int i = 0; i < 3; i++) {
        f->n[i] = lens[i];
        fill_tokens(f->c[i], lens[i], seed + (unsigned)i);
        f->kv[i] = malloc(eng_kv_floats(m, lens[i]) * sizeof(float));
        cr_assert_eq(bl_chunk_prefill(m, be, f->c[i], lens[i], f->kv[i]), RK_OK, "%s", rk_error_msg());
        f->seg[i] = (bl_segment){.tokens = f->c[i], .n = lens[i], .kv = f->kv[i]};
    }
    fill_tokens(f->q, 6, seed + 99);
}

static void free_fixture(struct fixture *f)
{
    for (int i = 0; i < 3; i++)
        free(f->kv[i]);
}

static bl_select g_select; /* CacheBlend's ranking in assemble() (0: deviation) */

/* Assemble into a fresh sequence; returns it (caller frees) and the last-row logits. */
static eng_seq *assemble(struct fixture *f, bl_mode mode, float ratio, float *logits, bl_stats *st)
{
    eng_seq *s;
    cr_assert_eq(eng_seq_new(be, 0, &s), RK_OK);
    bl_params p;
    bl_params_default(&p, mode);
    p.ratio = ratio;
    p.select = g_select;
    cr_assert_eq(bl_assemble(m, be, s, f->seg, 3, f->q, 6, &p, logits, st), RK_OK, "%s: %s",
                 bl_mode_name(mode), rk_error_msg());
    return s;
}



/* Greedy continuation of `steps` tokens from a sequence and its last logits. */
static void continue_greedy(eng_seq *s, float *logits, int32_t *out, int steps)
{
    for (int i = 0; i < steps; i++) {
        out[i] = eng_argmax(logits, mi->vocab);
        cr_assert_eq(eng_decode(be, &s, &out[i], 1, logits), RK_OK, "%s", rk_error_msg());
    }
}

static void check_r1_equals_full(void)
{
    struct fixture f;
    make_fixture(&f, 7);
    size_t n = 1 + 40 + 23 + 31 + 6;
    float *lf = malloc(mi->vocab * sizeof(float)), *lb = malloc(mi->vocab * sizeof(float));
    bl_stats sf, sb;
    eng_seq *full = assemble(&f, BL_FULL, 0, lf, &sf);
    eng_seq *blend = assemble(&f, BL_CACHEBLEND, 1.0f, lb, &sb);
    cr_expect_eq(sf.prompt_tokens, n);
    cr_expect_eq(sb.recomputed, n, "r = 1 recomputes every token");
    cr_expect_leq(max_rel(lf, lb, mi->vocab), 1e-5, "logits");
    float *kf = export_all_kv(m, full, n), *kb = export_all_kv(m, blend, n);
    cr_expect_leq(max_rel(kf, kb, eng_kv_floats(m, n)), 1e-5, "the whole KV cache");
    int32_t tf[24], tb[24];
    continue_greedy(full, lf, tf, 24);
    continue_greedy(blend, lb, tb, 24);
    cr_expect(memcmp(tf, tb, sizeof(tf)) == 0, "same greedy continuation");
    free(kf);
    free(kb);
    free(lf);
    free(lb);
    eng_seq_free(full);
    eng_seq_free(blend);
    free_fixture(&f);
}

Test(blend, cacheblend_r1_equals_full)
{
    open_model("stories260K.bin", false);
    check_r1_equals_full();
}

Test(blend, cacheblend_r1_equals_full_rotate_half)
{
    open_model("stories260K.bin", true);
    check_r1_equals_full();
}

static void check_r0_equals_naive(void)
{
    struct fixture f;
    make_fixture(&f, 11);
    size_t n = 1 + 40 + 23 + 31 + 6;
    float *ln = malloc(mi->vocab * sizeof(float)), *lb = malloc(mi->vocab * sizeof(float));
    bl_stats sn, sb;
    eng_seq *naive = assemble(&f, BL_NAIVE, 0, ln, &sn);
    eng_seq *blend = assemble(&f, BL_CACHEBLEND, 0.0f, lb, &sb);
    cr_expect_eq(sn.recomputed, 7, "BOS + query");
    cr_expect_eq(sb.recomputed, 7);
    cr_expect_eq(sn.reused_tokens, 94);
    cr_expect_leq(max_rel(ln, lb, mi->vocab), 1e-5);
    float *kn = export_all_kv(m, naive, n), *kb = export_all_kv(m, blend, n);
    cr_expect_leq(max_rel(kn, kb, eng_kv_floats(m, n)), 1e-5);
    free(kn);
    free(kb);
    free(ln);
    free(lb);
    eng_seq_free(naive);
    eng_seq_free(blend);
    free_fixture(&f);
}

Test(blend, cacheblend_r0_equals_naive)
{
    open_model("stories260K.bin", false);
    check_r0_equals_naive();
}

/* check() on stories260K with CacheBlend ranking by sel. */
static void with_selection(bl_select sel, void (*check)(void))
{
    g_select = sel;
    open_model("stories260K.bin", false);
    check();
    g_select = BL_SELECT_DEVIATION;
}

/* Cacheblend at r = 0.15 on f with the ranking a, then b (stats of each; the mode's selection
 * back to the deviation after): two rankings choose other tokens, so their caches differ. */
static void two_selections(struct fixture *f, size_t n, bl_select a, bl_select b, bl_stats *sa, bl_stats *sb)
{
    float *lg = malloc(mi->vocab * sizeof(float));
    g_select = a;
    eng_seq *sqa = assemble(f, BL_CACHEBLEND, 0.15f, lg, sa);
    g_select = b;
    eng_seq *sqb = assemble(f, BL_CACHEBLEND, 0.15f, lg, sb);
    g_select = BL_SELECT_DEVIATION;
    float *ka = export_all_kv(m, sqa, n), *kb = export_all_kv(m, sqb, n);
    cr_expect_gt(max_rel(ka, kb, eng_kv_floats(m, n)), 1e-3, "%s and %s: another selection, another cache",
                 bl_select_name(a), bl_select_name(b));
    free(ka);
    free(kb);
    free(lg);
    eng_seq_free(sqa);
    eng_seq_free(sqb);
}

/* name parses to sel, and sel's name is name */
static void expect_select_name(const char *name, bl_select sel)
{
    bl_select x = BL_SELECT_DEVIATION;
    cr_expect_eq(bl_select_parse(name, &x), RK_OK);
    cr_expect_eq(x, sel);
    cr_expect_str_eq(bl_select_name(x), name);
}

/* The selection by the query's attention changes which tokens are chosen, never what r = 1
 * and r = 0 mean. */
Test(blend, attention_selection_r1_equals_full) { with_selection(BL_SELECT_ATTENTION, check_r1_equals_full); }

Test(blend, attention_selection_r0_equals_naive) { with_selection(BL_SELECT_ATTENTION, check_r0_equals_naive); }

/* At r = 0.15 both rankings recompute the same number of tokens (the query's rows run the
 * check layer once more: a little more work), choose different ones, and names parse. */
Test(blend, attention_selection_counts_and_names)
{
    open_model("stories260K.bin", false);
    struct fixture f;
    make_fixture(&f, 41);
    size_t n = 1 + 40 + 23 + 31 + 6;
    bl_stats sd, sa;
    two_selections(&f, n, BL_SELECT_DEVIATION, BL_SELECT_ATTENTION, &sd, &sa);
    cr_expect_eq(sa.recomputed, sd.recomputed);
    /* six query rows run the check layer once more: 6 token-layers over n x L */
    cr_expect_float_eq(sa.token_layers - sd.token_layers, 6.0 / ((double)n * mi->n_layers), 1e-9);
    expect_select_name("attention", BL_SELECT_ATTENTION);
    bl_select x = BL_SELECT_DEVIATION;
    cr_expect_eq(bl_select_parse("entropy", &x), RK_ERR_INVALID);
    cr_expect_eq(bl_select_parse(NULL, &x), RK_ERR_INVALID);
    bl_params dp;
    bl_params_default(&dp, BL_CACHEBLEND);
    cr_expect_eq(dp.select, BL_SELECT_ATTENTION, "the query's attention ranks by default");
    free_fixture(&f);
}

/* The lookahead selection (the query's attention over every later layer of a naive pass)
 * keeps r = 1 and r = 0 what they are. */
Test(blend, lookahead_selection_r1_equals_full) { with_selection(BL_SELECT_LOOKAHEAD, check_r1_equals_full); }

Test(blend, lookahead_selection_r0_equals_naive) { with_selection(BL_SELECT_LOOKAHEAD, check_r0_equals_naive); }

/* At r = 0.15 lookahead recomputes as many tokens as attention, with the uncached rows running
 * every layer after the check layer once more, chooses others, parses, and refuses a gradual
 * schedule (it ranks once). */
Test(blend, lookahead_selection_counts_names_and_limits)
{
    open_model("stories260K.bin", false);
    struct fixture f;
    make_fixture(&f, 41);
    size_t n = 1 + 40 + 23 + 31 + 6;
    float *lk = malloc(mi->vocab * sizeof(float));
    bl_stats sa, sk, sd;
    two_selections(&f, n, BL_SELECT_ATTENTION, BL_SELECT_LOOKAHEAD, &sa, &sk);
    eng_seq_free(assemble(&f, BL_CACHEBLEND, 0.15f, lk, &sd));
    cr_expect_eq(sk.recomputed, sa.recomputed);
    /* the uncached rows (BOS, the uncached segment, the query) run layers 1 .. L-1 again */
    size_t uncached = n - sd.reused_tokens;
    cr_expect_float_eq(sk.token_layers - sd.token_layers,
                       (double)uncached * (mi->n_layers - 1) / ((double)n * mi->n_layers), 1e-9);
    expect_select_name("lookahead", BL_SELECT_LOOKAHEAD);
    bl_params p;
    bl_params_default(&p, BL_CACHEBLEND);
    p.select = BL_SELECT_LOOKAHEAD;
    p.schedule = (bl_schedule){.first = 0.5f, .step = 0.1f, .final = 0.15f};
    eng_seq *s;
    cr_assert_eq(eng_seq_new(be, 0, &s), RK_OK);
    cr_expect_eq(bl_assemble(m, be, s, f.seg, 3, f.q, 6, &p, lk, NULL), RK_ERR_INVALID);
    cr_expect(strstr(rk_error_msg(), "gradual"), "got: %s", rk_error_msg());
    eng_seq_free(s);
    /* a prompt that ends in a chunk: the last row (cached) is the query; r = 1 is still full */
    bl_segment two[2] = {f.seg[0], f.seg[1]};
    float *lf = malloc(mi->vocab * sizeof(float));
    bl_params_default(&p, BL_FULL);
    cr_assert_eq(eng_seq_new(be, 0, &s), RK_OK);
    cr_assert_eq(bl_assemble(m, be, s, two, 2, f.q, 0, &p, lf, NULL), RK_OK, "%s", rk_error_msg());
    eng_seq_free(s);
    bl_params_default(&p, BL_CACHEBLEND);
    p.select = BL_SELECT_LOOKAHEAD;
    p.ratio = 1.0f;
    cr_assert_eq(eng_seq_new(be, 0, &s), RK_OK);
    cr_assert_eq(bl_assemble(m, be, s, two, 2, f.q, 0, &p, lk, NULL), RK_OK, "%s", rk_error_msg());
    cr_expect_leq(max_rel(lf, lk, mi->vocab), 1e-5, "ends in a chunk: r = 1 equals full");
    p.ratio = 0.15f;
    eng_seq_free(s);
    cr_assert_eq(eng_seq_new(be, 0, &s), RK_OK);
    cr_assert_eq(bl_assemble(m, be, s, two, 2, f.q, 0, &p, lk, NULL), RK_OK, "%s", rk_error_msg());
    eng_seq_free(s);
    free(lf);
    free(lk);
    free_fixture(&f);
}

Test(blend, true_prefix_chunk_is_exact_and_prefix_mode_equals_full)
{
    open_model("stories260K.bin", false);
    struct fixture f;
    make_fixture(&f, 23);
    size_t n = 1 + 40 + 23 + 31 + 6;
    float *lf = malloc(mi->vocab * sizeof(float)), *lp = malloc(mi->vocab * sizeof(float));
    eng_seq *full = assemble(&f, BL_FULL, 0, lf, NULL);
    /* the first chunk's standalone cache is the prompt's own KV of those tokens: zero deviation */
    float *kf = malloc(eng_kv_floats(m, 40) * sizeof(float));
    cr_assert_eq(eng_kv_export(full, 1, 40, kf), RK_OK);
    cr_expect_leq(max_rel(kf, f.kv[0], eng_kv_floats(m, 40)), 1e-6);
    /* hence prefix mode (reusing it) equals full */
    bl_stats sp;
    eng_seq *pre = assemble(&f, BL_PREFIX, 0, lp, &sp);
    cr_expect_eq(sp.reused_tokens, 40);
    cr_expect_eq(sp.recomputed, n - 40);
    cr_expect_leq(max_rel(lf, lp, mi->vocab), 1e-5);
    /* while the second chunk's standalone cache differs from its in-context KV beyond layer 0 */
    float *k2 = malloc(eng_kv_floats(m, 23) * sizeof(float));
    cr_assert_eq(eng_kv_export(full, 41, 23, k2), RK_OK);
    cr_expect_gt(max_rel(k2, f.kv[1], eng_kv_floats(m, 23)), 1e-3);
    free(k2);
    free(kf);
    free(lf);
    free(lp);
    eng_seq_free(full);
    eng_seq_free(pre);
    free_fixture(&f);
}

Test(blend, selection_and_errors)
{
    open_model("stories260K.bin", false);
    struct fixture f;
    make_fixture(&f, 31);
    float *l = malloc(mi->vocab * sizeof(float));
    bl_stats st;
    eng_seq *s = assemble(&f, BL_CACHEBLEND, 0.15f, l, &st);
    /* 15% of 94 reused tokens (15) + BOS + 6 query tokens */
    cr_expect_eq(st.recomputed, 15 + 7);
    cr_expect_gt(st.token_layers, 0.0);
    cr_expect_lt(st.token_layers, 1.0);
    bl_params p;
    bl_params_default(&p, BL_CACHEBLEND);
    cr_expect_eq(bl_assemble(m, be, s, f.seg, 3, f.q, 6, &p, l, NULL), RK_ERR_INVALID, "non-empty sequence");
    eng_seq_free(s);
    cr_assert_eq(eng_seq_new(be, 50, &s), RK_OK);
    cr_expect_eq(bl_assemble(m, be, s, f.seg, 3, f.q, 6, &p, l, NULL), RK_ERR_RANGE, "too small");
    p.ratio = 1.5f;
    cr_expect_eq(bl_assemble(m, be, s, f.seg, 3, f.q, 6, &p, l, NULL), RK_ERR_INVALID);
    p.ratio = 0.15f;
    p.select = (bl_select)7;
    cr_expect_eq(bl_assemble(m, be, s, f.seg, 3, f.q, 6, &p, l, NULL), RK_ERR_INVALID, "unknown selection");
    eng_seq_free(s);
    free(l);
    free_fixture(&f);
}
