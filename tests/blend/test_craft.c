/* blend/: Cache-Craft and APE on the real stories260K model (issue 5): Cache-Craft with CFO 1
 * equals full prefill and with alpha 0 equals naive; a chunk reused in exactly the context its
 * variant was captured in gets CFO 0 and is exact; the metadata format round-trips and rejects
 * malformed bytes; APE with T = S = 1 and one chunk equals naive; APE prompts and decoding
 * stay finite; a larger recompute budget brings the KV closer to full prefill; one prefill
 * captures every chunk's variant exactly as bl_variant_capture does per chunk. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ragkv/blend.h"
#include "blend_testlib.h"
#include "testutil.h"

static eng_model *m;
static eng_backend *be;
static const eng_model_info *mi;

static void open_model(void)
{
    if (!blt_open_stories(&m, &be))
        cr_skip_test("skipped: no real model (stories260K.bin)");
    mi = eng_model_get_info(m);
}

static void teardown(void)
{
    eng_backend_free(be);
    eng_model_close(m);
    be = NULL;
    m = NULL;
}

TestSuite(craft, .fini = teardown, .timeout = 120);

#define NQ 6
static const size_t lens[3] = {40, 23, 31};
static const uint64_t ids[3] = {0x1111, 0x2222, 0x3333};

struct fixture {
    int32_t c[3][40];        /* three chunks */
    int32_t q[NQ];           /* the query */
    bl_segment seg[3];       /* their segments (kv: standalone caches) */
    float *kv[3];            /* standalone caches (bl_chunk_prefill) */
    float *vkv[3];           /* variant KV */
    bl_craft_meta meta[3];   /* variant metadata */
    bl_variant var[3];
    bl_craft_segment cs[3];  /* one variant each; prev_ids = the chunks before it in the prompt */
};

static void fill_tokens(int32_t *t, size_t n, unsigned seed)
{
    srand(seed);
    for (size_t i = 0; i < n; i++)
        t[i] = 3 + rand() % (mi->vocab - 3);
}

/* Chunks, query, standalone caches; variants captured standalone (in_context false) or in
 * exactly the prompt's context (chunk i after chunks 0..i-1). */
static void make_fixture(struct fixture *f, unsigned seed, bool in_context)
{
    memset(f, 0, sizeof(*f));
    for (int i = 0; i < 3; i++) {
        fill_tokens(f->c[i], lens[i], seed + (unsigned)i);
        f->kv[i] = malloc(eng_kv_floats(m, lens[i]) * sizeof(float));
        f->vkv[i] = malloc(eng_kv_floats(m, lens[i]) * sizeof(float));
        cr_assert_eq(bl_chunk_prefill(m, be, f->c[i], lens[i], f->kv[i]), RK_OK, "%s", rk_error_msg());
        f->seg[i] = (bl_segment){.tokens = f->c[i], .n = lens[i], .kv = f->kv[i]};
    }
    for (int i = 0; i < 3; i++) {
        if (in_context)
            cr_assert_eq(bl_variant_capture(m, be, f->seg, (size_t)i + 1, ids, f->vkv[i], &f->meta[i]), RK_OK, "%s",
                         rk_error_msg());
        else
            cr_assert_eq(bl_variant_capture(m, be, &f->seg[i], 1, NULL, f->vkv[i], &f->meta[i]), RK_OK, "%s",
                         rk_error_msg());
        f->var[i] = (bl_variant){f->vkv[i], &f->meta[i]};
        f->cs[i] = (bl_craft_segment){.variants = &f->var[i], .n_variants = 1, .prev_ids = ids, .n_prev = (size_t)i};
    }
    fill_tokens(f->q, NQ, seed + 99);
}

static void free_fixture(struct fixture *f)
{
    for (int i = 0; i < 3; i++) {
        free(f->kv[i]);
        free(f->vkv[i]);
        bl_craft_meta_clear(&f->meta[i]);
    }
}

static eng_seq *assemble_p(struct fixture *f, const bl_segment *segs, size_t nseg, const bl_params *p,
                           float *logits, bl_stats *st)
{
    eng_seq *s;
    cr_assert_eq(eng_seq_new(be, 0, &s), RK_OK);
    cr_assert_eq(bl_assemble(m, be, s, segs, nseg, f->q, NQ, p, logits, st), RK_OK, "%s: %s", bl_mode_name(p->mode),
                 rk_error_msg());
    return s;
}

static eng_seq *assemble(struct fixture *f, bl_mode mode, float alpha, float *logits, bl_stats *st)
{
    bl_params p;
    bl_params_default(&p, mode);
    p.alpha = alpha;
    p.craft = f->cs;
    return assemble_p(f, f->seg, 3, &p, logits, st);
}



#define NPROMPT (1 + 40 + 23 + 31 + NQ)

Test(craft, standalone_variant_equals_chunk_prefill_and_alpha_large_equals_full)
{
    open_model();
    struct fixture f;
    make_fixture(&f, 7, false);
    for (int i = 0; i < 3; i++) { /* a standalone variant is a standalone cache */
        cr_expect_leq(max_rel(f.kv[i], f.vkv[i], eng_kv_floats(m, lens[i])), 1e-6);
        cr_expect_eq(f.meta[i].n_prev, 0);
        cr_expect_eq(f.meta[i].n_tokens, lens[i]);
        cr_expect_eq(f.meta[i].n_layers, (uint32_t)mi->n_layers);
        cr_expect_eq(f.meta[i].inter[0], 0.0f, "nothing preceded it");
        cr_expect_gt(f.meta[i].intra[0], 0.0f);
    }
    /* standalone variants: CCI 0.5, nothing of today's context seen, so CFO = alpha / 2 for the
     * chunks that something precedes now, and 0 for the first (it is a true prefix) */
    double want[3] = {0, 1, 1};
    for (int i = 0; i < 3; i++) {
        size_t v = 9;
        double cfo = -1;
        cr_assert_eq(bl_segment_pick_variant(m, &f.seg[i], &f.cs[i], 2.0, &v, &cfo), RK_OK, "%s", rk_error_msg());
        cr_expect_eq(v, 0);
        cr_expect(fabs(cfo - want[i]) < 1e-12, "chunk %d: CFO %g", i, cfo);
    }
    float *lf = malloc(mi->vocab * sizeof(float)), *lc = malloc(mi->vocab * sizeof(float));
    bl_stats sf, sc;
    eng_seq *full = assemble(&f, BL_FULL, 0, lf, &sf);
    eng_seq *craft = assemble(&f, BL_CACHECRAFT, 2.0f, lc, &sc);
    cr_expect_eq(sc.prompt_tokens, NPROMPT);
    cr_expect_eq(sc.reused_tokens, 94);
    cr_expect_eq(sc.recomputed, 1 + 23 + 31 + NQ, "BOS, chunks 2 and 3, the query");
    cr_expect_leq(max_rel(lf, lc, mi->vocab), 1e-5, "logits");
    float *kf = export_all_kv(m, full, NPROMPT), *kc = export_all_kv(m, craft, NPROMPT);
    cr_expect_leq(max_rel(kf, kc, eng_kv_floats(m, NPROMPT)), 1e-5, "the whole KV cache");
    free(kf);
    free(kc);
    free(lf);
    free(lc);
    eng_seq_free(full);
    eng_seq_free(craft);
    free_fixture(&f);
}

Test(craft, alpha0_equals_naive)
{
    open_model();
    struct fixture f;
    make_fixture(&f, 11, false);
    float *ln = malloc(mi->vocab * sizeof(float)), *lc = malloc(mi->vocab * sizeof(float));
    bl_stats sn, sc;
    eng_seq *naive = assemble(&f, BL_NAIVE, 0, ln, &sn);
    eng_seq *craft = assemble(&f, BL_CACHECRAFT, 0.0f, lc, &sc);
    cr_expect_eq(sc.recomputed, 1 + NQ);
    cr_expect_leq(max_rel(ln, lc, mi->vocab), 1e-5);
    float *kn = export_all_kv(m, naive, NPROMPT), *kc = export_all_kv(m, craft, NPROMPT);
    cr_expect_leq(max_rel(kn, kc, eng_kv_floats(m, NPROMPT)), 1e-5);
    free(kn);
    free(kc);
    free(ln);
    free(lc);
    eng_seq_free(naive);
    eng_seq_free(craft);
    free_fixture(&f);
}

Test(craft, exact_stored_context_gets_cfo0_and_is_exact)
{
    open_model();
    struct fixture f;
    make_fixture(&f, 23, true);
    for (int i = 0; i < 3; i++) {
        const bl_craft_meta *md = &f.meta[i];
        cr_expect_eq(md->n_prev, (uint32_t)i);
        for (uint32_t l = 0; l < md->n_layers; l++) {
            if (i > 0)
                cr_expect_gt(md->inter[l], 0.0f, "chunk %d layer %u attends to its predecessors", i, l);
            else
                cr_expect_eq(md->inter[l], 0.0f);
            /* masses are probabilities summed over the chunk's rows (BOS takes the rest) */
            cr_expect_leq(md->inter[l] + md->intra[l], (float)md->n_tokens * 1.0001f);
        }
        size_t v = 9;
        double cfo = -1;
        cr_assert_eq(bl_segment_pick_variant(m, &f.seg[i], &f.cs[i], 100.0, &v, &cfo), RK_OK);
        cr_expect_eq(cfo, 0.0, "chunk %d reused in its stored context", i);
    }
    /* a second variant of chunk 3 captured after chunks 2, 1 (reversed): full overlap, wrong
     * order, so a positive CFO; offered together, the exact variant (CFO 0) wins */
    float *rkv = malloc(eng_kv_floats(m, 31) * sizeof(float));
    bl_craft_meta rmeta;
    bl_segment rev[3] = {f.seg[1], f.seg[0], f.seg[2]};
    uint64_t rev_ids[2] = {ids[1], ids[0]};
    cr_assert_eq(bl_variant_capture(m, be, rev, 3, rev_ids, rkv, &rmeta), RK_OK, "%s", rk_error_msg());
    double c_rev = bl_variant_cfo(&rmeta, 31, ids, 2, 1.0);
    cr_expect_gt(c_rev, 0.0, "reordered predecessors cost recomputation");
    bl_variant both[2] = {{rkv, &rmeta}, f.var[2]};
    bl_craft_segment cs2 = f.cs[2];
    cs2.variants = both;
    cs2.n_variants = 2;
    size_t v = 9;
    double cfo = -1;
    cr_assert_eq(bl_segment_pick_variant(m, &f.seg[2], &cs2, 1.0, &v, &cfo), RK_OK);
    cr_expect_eq(v, 1, "the lowest-CFO variant");
    cr_expect_eq(cfo, 0.0);
    /* the prompt made of exact variants recomputes only BOS and the query, and equals full */
    f.cs[2] = cs2;
    float *lf = malloc(mi->vocab * sizeof(float)), *lc = malloc(mi->vocab * sizeof(float));
    bl_stats sc;
    eng_seq *full = assemble(&f, BL_FULL, 0, lf, NULL);
    eng_seq *craft = assemble(&f, BL_CACHECRAFT, 100.0f, lc, &sc);
    cr_expect_eq(sc.recomputed, 1 + NQ);
    cr_expect_leq(max_rel(lf, lc, mi->vocab), 1e-5);
    float *kf = export_all_kv(m, full, NPROMPT), *kc = export_all_kv(m, craft, NPROMPT);
    cr_expect_leq(max_rel(kf, kc, eng_kv_floats(m, NPROMPT)), 1e-5);
    free(kf);
    free(kc);
    free(lf);
    free(lc);
    eng_seq_free(full);
    eng_seq_free(craft);
    free(rkv);
    bl_craft_meta_clear(&rmeta);
    free_fixture(&f);
}

Test(craft, metadata_round_trip_and_malformed_input)
{
    open_model();
    struct fixture f;
    make_fixture(&f, 5, true);
    const bl_craft_meta *md = &f.meta[2];
    rk_buf b = RK_BUF_INIT;
    cr_assert_eq(bl_craft_encode(md, &b), RK_OK, "%s", rk_error_msg());
    cr_expect_eq(b.len, 24 + 2 * 8 + (size_t)mi->n_layers * 8 + 31 * 4);
    cr_expect(memcmp(b.data, "RKCF", 4) == 0);
    bl_craft_meta d;
    cr_assert_eq(bl_craft_decode(b.data, b.len, &d), RK_OK, "%s", rk_error_msg());
    cr_expect_eq(d.n_tokens, 31);
    cr_expect_eq(d.n_prev, 2);
    cr_expect_eq(d.prev_tokens, 63);
    cr_expect(memcmp(d.prev_ids, ids, 2 * sizeof(uint64_t)) == 0);
    cr_expect(memcmp(d.inter, md->inter, md->n_layers * sizeof(float)) == 0);
    cr_expect(memcmp(d.intra, md->intra, md->n_layers * sizeof(float)) == 0);
    cr_expect(memcmp(d.token_inter, md->token_inter, 31 * sizeof(float)) == 0);
    cr_expect_eq(bl_variant_cfo(&d, 31, ids, 1, 1.0), bl_variant_cfo(md, 31, ids, 1, 1.0));
    bl_craft_meta_clear(&d);
    cr_expect_null(d.inter);
    bl_craft_meta_clear(NULL);

    uint8_t *bad = malloc(b.len + 1);
    for (size_t n = 0; n < b.len; n++) /* every truncation */
        cr_expect_neq(bl_craft_decode(b.data, n, &d), RK_OK, "%zu of %zu bytes accepted", n, b.len);
    memcpy(bad, b.data, b.len);
    bad[b.len] = 0;
    cr_expect_eq(bl_craft_decode(bad, b.len + 1, &d), RK_ERR_FORMAT, "trailing byte");
    bad[0] ^= 1;
    cr_expect_eq(bl_craft_decode(bad, b.len, &d), RK_ERR_FORMAT, "magic");
    bad[0] ^= 1;
    bad[4] = 2;
    cr_expect_eq(bl_craft_decode(bad, b.len, &d), RK_ERR_UNSUPPORTED, "version");
    bad[4] = 1;
    rk_put_le32(bad + 8, 0xffffffffu);
    cr_expect_eq(bl_craft_decode(bad, b.len, &d), RK_ERR_FORMAT, "huge token count, nothing allocated");
    memcpy(bad, b.data, b.len);
    rk_put_le32(bad + b.len - 4, 0x7fc00000u); /* NaN score */
    cr_expect_eq(bl_craft_decode(bad, b.len, &d), RK_ERR_FORMAT, "NaN");
    rk_put_le32(bad + b.len - 4, 0xbf800000u); /* -1 */
    cr_expect_eq(bl_craft_decode(bad, b.len, &d), RK_ERR_FORMAT, "negative mass");
    cr_expect_null(d.token_inter, "zeroed on error");
    free(bad);
    rk_buf_free(&b);

    /* metadata of another shape is refused, not read out of bounds */
    bl_variant wrong = {f.vkv[1], &f.meta[2]};
    bl_craft_segment cs = {.variants = &wrong, .n_variants = 1};
    size_t v;
    double cfo;
    cr_expect_eq(bl_segment_pick_variant(m, &f.seg[1], &cs, 1.0, &v, &cfo), RK_ERR_INVALID);
    bl_params p;
    bl_params_default(&p, BL_CACHECRAFT);
    bl_craft_segment css[3] = {f.cs[0], cs, f.cs[2]};
    p.craft = css;
    float *l = malloc(mi->vocab * sizeof(float));
    eng_seq *s;
    cr_assert_eq(eng_seq_new(be, 0, &s), RK_OK);
    cr_expect_eq(bl_assemble(m, be, s, f.seg, 3, f.q, NQ, &p, l, NULL), RK_ERR_INVALID);
    p.craft = f.cs;
    p.alpha = -1;
    cr_expect_eq(bl_assemble(m, be, s, f.seg, 3, f.q, NQ, &p, l, NULL), RK_ERR_INVALID, "negative alpha");
    bl_params_default(&p, BL_APE);
    p.ape_t = 0;
    cr_expect_eq(bl_assemble(m, be, s, f.seg, 3, f.q, NQ, &p, l, NULL), RK_ERR_INVALID, "T = 0");
    p.ape_t = 0.9f;
    cr_expect_eq(bl_assemble(m, be, s, f.seg, 3, NULL, 0, &p, l, NULL), RK_ERR_INVALID, "APE without a query");
    cr_expect_eq(eng_seq_len(s), 0, "nothing written on a refused call");
    eng_seq_free(s);
    free(l);
    free_fixture(&f);
}

Test(craft, ape_t1_s1_single_chunk_equals_naive)
{
    open_model();
    struct fixture f;
    make_fixture(&f, 13, false);
    float *ln = malloc(mi->vocab * sizeof(float)), *la = malloc(mi->vocab * sizeof(float));
    bl_params p;
    bl_params_default(&p, BL_NAIVE);
    bl_stats sa;
    eng_seq *naive = assemble_p(&f, f.seg, 1, &p, ln, NULL);
    bl_params_default(&p, BL_APE);
    p.ape_t = p.ape_s = 1.0f;
    eng_seq *ape = assemble_p(&f, f.seg, 1, &p, la, &sa);
    size_t n = 1 + 40 + NQ;
    cr_expect_eq(sa.ape_ctx_end, 41);
    cr_expect_eq(sa.recomputed, 1 + NQ);
    cr_expect_leq(max_rel(ln, la, mi->vocab), 1e-5);
    float *kn = export_all_kv(m, naive, n), *ka = export_all_kv(m, ape, n);
    cr_expect_leq(max_rel(kn, ka, eng_kv_floats(m, n)), 1e-5);
    /* with T = S = 1, APE's decode step is an ordinary decode step */
    int32_t tok = eng_argmax(ln, mi->vocab);
    cr_assert_eq(eng_decode(be, &naive, &tok, 1, ln), RK_OK);
    cr_assert_eq(bl_ape_decode(be, ape, sa.ape_ctx_end, &p, tok, la), RK_OK, "%s", rk_error_msg());
    cr_expect_leq(max_rel(ln, la, mi->vocab), 1e-5);
    free(kn);
    free(ka);
    free(ln);
    free(la);
    eng_seq_free(naive);
    eng_seq_free(ape);
    free_fixture(&f);
}

static bool all_finite(const float *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i]))
            return false;
    return true;
}

Test(craft, ape_prompt_and_decode_stay_finite)
{
    open_model();
    struct fixture f;
    make_fixture(&f, 17, false);
    bl_segment segs[3] = {f.seg[0], f.seg[1], {.tokens = f.c[2], .n = 31}}; /* one uncached chunk */
    bl_params p;
    bl_params_default(&p, BL_APE);
    cr_expect_eq(p.ape_t, 0.9f);
    cr_expect_eq(p.ape_s, 0.9f);
    float *l = malloc(mi->vocab * sizeof(float)), *l2 = malloc(mi->vocab * sizeof(float));
    bl_stats st;
    eng_seq *s = assemble_p(&f, segs, 3, &p, l, &st);
    cr_expect_eq(st.prompt_tokens, NPROMPT);
    cr_expect_eq(st.ape_ctx_end, 1 + 40 + 23 + 31);
    cr_expect_eq(st.reused_tokens, 63);
    cr_expect_eq(eng_seq_len(s), NPROMPT, "one slot per token");
    cr_expect_eq(eng_seq_pos(s, 1), 1, "every chunk starts right after BOS");
    cr_expect_eq(eng_seq_pos(s, 41), 1);
    cr_expect_eq(eng_seq_pos(s, 64), 1);
    cr_expect_eq(eng_seq_pos(s, 95), 41, "the query follows the longest chunk");
    cr_expect_eq(eng_seq_next_pos(s), 40 + NQ + 1);
    cr_expect(all_finite(l, mi->vocab));
    /* T and S really change the result */
    bl_params p1 = p;
    p1.ape_t = p1.ape_s = 1.0f;
    eng_seq *s1 = assemble_p(&f, segs, 3, &p1, l2, NULL);
    cr_expect_gt(max_rel(l, l2, mi->vocab), 1e-4);
    eng_seq_free(s1);
    /* decode: APE's own step and the plain engine step both run and stay finite */
    eng_seq *s2 = assemble_p(&f, segs, 3, &p, l2, NULL);
    for (int i = 0; i < 8; i++) {
        int32_t t = eng_argmax(l, mi->vocab);
        cr_assert_eq(bl_ape_decode(be, s, st.ape_ctx_end, &p, t, l), RK_OK, "%s", rk_error_msg());
        cr_assert(all_finite(l, mi->vocab));
        int32_t t2 = eng_argmax(l2, mi->vocab);
        cr_assert_eq(eng_decode(be, &s2, &t2, 1, l2), RK_OK, "%s", rk_error_msg());
        cr_assert(all_finite(l2, mi->vocab));
    }
    cr_expect_eq(eng_seq_next_pos(s), 40 + NQ + 1 + 8);
    cr_expect_eq(eng_seq_len(s), NPROMPT + 8);
    cr_expect_eq(bl_ape_decode(be, s, 0, &p, 5, l), RK_ERR_INVALID, "context end 0");
    cr_expect_eq(eng_seq_len(s), NPROMPT + 8);
    eng_seq_free(s);
    eng_seq_free(s2);
    free(l);
    free(l2);
    free_fixture(&f);
}

Test(craft, larger_budget_is_closer_to_full)
{
    open_model();
    struct fixture f;
    make_fixture(&f, 29, false);
    float *lf = malloc(mi->vocab * sizeof(float)), *l = malloc(mi->vocab * sizeof(float));
    eng_seq *full = assemble(&f, BL_FULL, 0, lf, NULL);
    float *kf = export_all_kv(m, full, NPROMPT);
    double dev[3], kl[3];
    const float alphas[3] = {0.0f, 1.0f, 2.0f};
    for (int i = 0; i < 3; i++) {
        bl_stats st;
        eng_seq *s = assemble(&f, BL_CACHECRAFT, alphas[i], l, &st);
        float *k = export_all_kv(m, s, NPROMPT);
        dev[i] = bl_rel_l2(kf, k, eng_kv_floats(m, NPROMPT));
        kl[i] = bl_kl_divergence(lf, l, mi->vocab);
        free(k);
        eng_seq_free(s);
    }
    cr_expect_gt(dev[0], 1e-3, "naive differs from full");
    cr_expect_lt(dev[1], dev[0], "half the chunk tokens recomputed: closer (%g vs %g)", dev[1], dev[0]);
    cr_expect_lt(dev[2], 1e-5, "all recomputed: exact");
    cr_expect_lt(kl[2], 1e-6);
    /* APE keeps the chunks' standalone KV, at other positions: finite and not absurd */
    bl_params p;
    bl_params_default(&p, BL_APE);
    eng_seq *s = assemble_p(&f, f.seg, 3, &p, l, NULL);
    double kla = bl_kl_divergence(lf, l, mi->vocab);
    cr_expect(isfinite(kla) && kla < 5.0, "APE KL %g", kla);
    eng_seq_free(s);
    free(kf);
    free(lf);
    free(l);
    eng_seq_free(full);
    free_fixture(&f);
}

/* One prefill captures every chunk's variant: each equal to bl_variant_capture's in the same
 * context (KV and metadata), a chunk not asked for is left alone (zeroed metadata), and the
 * prefill may stop early (only the first two asked); bad arguments are refused. */
Test(craft, capture_all_equals_capture_per_chunk)
{
    open_model();
    struct fixture f;
    make_fixture(&f, 91, true); /* f.vkv / f.meta: bl_variant_capture in the prompt's context */
    for (int mask = 0; mask < 3; mask++) {
        /* mask 0: all three; 1: chunks 0 and 2; 2: chunks 0 and 1 (the prefill stops after 1) */
        float *kv[3];
        bl_craft_meta md[3];
        for (int i = 0; i < 3; i++) {
            bool want = mask == 0 || (mask == 1 && i != 1) || (mask == 2 && i != 2);
            kv[i] = want ? malloc(eng_kv_floats(m, lens[i]) * sizeof(float)) : NULL;
        }
        cr_assert_eq(bl_variant_capture_all(m, be, f.seg, 3, ids, kv, md), RK_OK, "%s", rk_error_msg());
        for (int i = 0; i < 3; i++) {
            if (!kv[i]) {
                cr_expect_eq(md[i].n_tokens, 0u, "chunk %d not asked: no metadata", i);
                cr_expect_null(md[i].inter);
                continue;
            }
            size_t nf = eng_kv_floats(m, lens[i]);
            double maxd = 0;
            for (size_t k = 0; k < nf; k++)
                maxd = fmax(maxd, fabs((double)kv[i][k] - f.vkv[i][k]));
            cr_expect_lt(maxd, 1e-6, "mask %d chunk %d: KV equals bl_variant_capture's (max diff %g)", mask, i, maxd);
            cr_expect_eq(md[i].n_tokens, f.meta[i].n_tokens);
            cr_expect_eq(md[i].n_layers, f.meta[i].n_layers);
            cr_expect_eq(md[i].n_prev, f.meta[i].n_prev);
            cr_expect_eq(md[i].prev_tokens, f.meta[i].prev_tokens);
            for (uint32_t j = 0; j < md[i].n_prev; j++)
                cr_expect_eq(md[i].prev_ids[j], f.meta[i].prev_ids[j]);
            for (uint32_t l = 0; l < md[i].n_layers; l++) {
                cr_expect(fabsf(md[i].inter[l] - f.meta[i].inter[l]) <= 1e-5f * (1 + f.meta[i].inter[l]),
                          "chunk %d layer %u inter %g vs %g", i, l, (double)md[i].inter[l], (double)f.meta[i].inter[l]);
                cr_expect(fabsf(md[i].intra[l] - f.meta[i].intra[l]) <= 1e-5f * (1 + f.meta[i].intra[l]));
            }
            for (uint32_t t = 0; t < md[i].n_tokens; t++)
                cr_expect(fabsf(md[i].token_inter[t] - f.meta[i].token_inter[t]) <= 1e-6f);
            /* and it encodes (what the daemon stores) */
            rk_buf b = RK_BUF_INIT;
            cr_expect_eq(bl_craft_encode(&md[i], &b), RK_OK);
            rk_buf_free(&b);
            bl_craft_meta_clear(&md[i]);
            free(kv[i]);
        }
    }
    /* nothing asked: nothing computed, RK_OK; bad arguments */
    float *none[3] = {NULL, NULL, NULL};
    bl_craft_meta md[3];
    cr_expect_eq(bl_variant_capture_all(m, be, f.seg, 3, ids, none, md), RK_OK);
    cr_expect_eq(bl_variant_capture_all(m, be, f.seg, 3, NULL, none, md), RK_ERR_INVALID, "ids needed with 3 segments");
    cr_expect_eq(bl_variant_capture_all(m, be, NULL, 3, ids, none, md), RK_ERR_INVALID);
    bl_segment empty[2] = {f.seg[0], {.tokens = f.c[1], .n = 0}};
    float *one[2] = {NULL, f.vkv[1]};
    cr_expect_eq(bl_variant_capture_all(m, be, empty, 2, ids, one, md), RK_ERR_INVALID, "an empty segment");
    free_fixture(&f);
}

/* The capture in steps (bl_capture_start / _step), with other work on the backend between the
 * steps (a prefill of another sequence, as a daemon's requests would run), gives bit for bit
 * what bl_variant_capture_all gives, in one step per layer; a step after the end changes
 * nothing; a capture freed half-way leaves nothing behind; nothing asked: no capture. */
Test(craft, capture_in_steps_equals_capture_all)
{
    open_model();
    struct fixture f;
    make_fixture(&f, 93, false);
    const eng_model_info *mi = eng_model_get_info(m);
    float *ka[3], *kb[3];
    bl_craft_meta ma[3], mb[3];
    for (int i = 0; i < 3; i++) {
        ka[i] = i == 1 ? NULL : malloc(eng_kv_floats(m, lens[i]) * sizeof(float));
        kb[i] = i == 1 ? NULL : malloc(eng_kv_floats(m, lens[i]) * sizeof(float));
    }
    cr_assert_eq(bl_variant_capture_all(m, be, f.seg, 3, ids, ka, ma), RK_OK, "%s", rk_error_msg());
    bl_capture *c = NULL;
    cr_assert_eq(bl_capture_start(m, be, f.seg, 3, ids, kb, mb, &c), RK_OK, "%s", rk_error_msg());
    cr_assert_not_null(c);
    eng_seq *other;
    cr_assert_eq(eng_seq_new(be, 64, &other), RK_OK);
    int steps = 0;
    for (bool done = false; !done; steps++) {
        cr_assert_eq(bl_capture_step(c, &done), RK_OK, "%s", rk_error_msg());
        cr_assert_eq(eng_seq_truncate(other, 0), RK_OK);
        cr_assert_eq(eng_prefill(other, f.c[1], lens[1], NULL, ENG_LOGITS_NONE, NULL), RK_OK);
    }
    cr_expect_eq(steps, mi->n_layers, "one step per layer");
    bool done = false;
    cr_expect_eq(bl_capture_step(c, &done), RK_OK);
    cr_expect(done, "a step after the end: still done");
    bl_capture_free(c);
    for (int i = 0; i < 3; i++) {
        if (i == 1) {
            cr_expect_eq(mb[i].n_tokens, 0u);
            continue;
        }
        cr_expect(memcmp(ka[i], kb[i], eng_kv_floats(m, lens[i]) * sizeof(float)) == 0, "chunk %d KV", i);
        cr_expect_eq(mb[i].n_prev, ma[i].n_prev);
        cr_expect(memcmp(ma[i].inter, mb[i].inter, ma[i].n_layers * sizeof(float)) == 0, "chunk %d inter", i);
        cr_expect(memcmp(ma[i].intra, mb[i].intra, ma[i].n_layers * sizeof(float)) == 0, "chunk %d intra", i);
        cr_expect(memcmp(ma[i].token_inter, mb[i].token_inter, ma[i].n_tokens * sizeof(float)) == 0, "chunk %d", i);
        bl_craft_meta_clear(&ma[i]);
        bl_craft_meta_clear(&mb[i]);
    }
    /* freed half-way (ASan: nothing leaks); the metadata it filled is the caller's to clear */
    cr_assert_eq(bl_capture_start(m, be, f.seg, 3, ids, kb, mb, &c), RK_OK);
    cr_assert_eq(bl_capture_step(c, &done), RK_OK);
    cr_expect(!done || mi->n_layers == 1);
    bl_capture_free(c);
    for (int i = 0; i < 3; i++)
        bl_craft_meta_clear(&mb[i]);
    /* nothing asked: no capture, RK_OK; bad arguments as bl_variant_capture_all's */
    float *none[3] = {NULL, NULL, NULL};
    cr_expect_eq(bl_capture_start(m, be, f.seg, 3, ids, none, mb, &c), RK_OK);
    cr_expect_null(c);
    cr_expect_eq(bl_capture_start(m, be, f.seg, 3, NULL, kb, mb, &c), RK_ERR_INVALID);
    cr_expect_null(c);
    cr_expect_eq(bl_capture_step(NULL, &done), RK_ERR_INVALID);
    eng_seq_free(other);
    for (int i = 0; i < 3; i++) {
        free(ka[i]);
        free(kb[i]);
    }
    free_fixture(&f);
}
