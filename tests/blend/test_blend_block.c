/* blend/ with chunk caches given as KV blocks (eng_kvblock, what the device tier holds) or as
 * codec containers (decoded a layer at a time, ahead of the layer computed): every
 * mode — full, prefix, naive, CacheBlend (flat, and gradual with V deviation at another check
 * layer), Cache-Craft (budgets from predecessors, with and without metadata variants), APE —
 * gives the same logits, statistics, sequence KV and next step with a segment given as a block
 * as with the same KV given as floats, bit for bit on the CPU backend, alone or mixed with
 * float and uncached segments. Mismatched blocks are refused. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ragkv/blend.h"
#include "ragkv/thread.h"
#include "blend_testlib.h"
#include "testutil.h"

static eng_model *m;
static eng_backend *be;
static const eng_model_info *mi;

static void setup(void)
{
    if (blt_open_stories(&m, &be)) /* else every test skips */
        mi = eng_model_get_info(m);
}

static void teardown(void)
{
    eng_backend_free(be);
    eng_model_close(m);
}

TestSuite(blend_block, .init = setup, .fini = teardown, .timeout = 120);

#define NSEG 3
static const size_t lens[NSEG] = {37, 23, 30};

struct chunks {
    int32_t tok[NSEG][40];
    float *kv[NSEG];          /* standalone caches as floats */
    eng_kvblock *blk[NSEG];   /* the same as blocks */
    int32_t q[5];
};

static void make_chunks(struct chunks *c)
{
    srand(11);
    for (int i = 0; i < NSEG; i++) {
        for (size_t t = 0; t < lens[i]; t++)
            c->tok[i][t] = 3 + rand() % (mi->vocab - 3);
        c->kv[i] = malloc(eng_kv_floats(m, lens[i]) * sizeof(float));
        cr_assert_eq(bl_chunk_prefill(m, be, c->tok[i], lens[i], c->kv[i]), RK_OK, "%s", rk_error_msg());
        cr_assert_eq(eng_kvblock_new(be, lens[i], c->kv[i], &c->blk[i]), RK_OK, "%s", rk_error_msg());
    }
    for (int i = 0; i < 5; i++)
        c->q[i] = 3 + rand() % (mi->vocab - 3);
}

static void free_chunks(struct chunks *c)
{
    for (int i = 0; i < NSEG; i++) {
        free(c->kv[i]);
        eng_kvblock_free(c->blk[i]);
    }
}

/* What an assembly produced: logits, stats, the whole sequence's KV, one decode step. */
struct result {
    float *logits, *next, *kv;
    size_t n;
    bl_stats st;
};

static void run(const struct chunks *c, const bl_segment *segs, const bl_params *p, struct result *r)
{
    size_t V = (size_t)mi->vocab;
    r->logits = malloc(V * sizeof(float));
    r->next = malloc(V * sizeof(float));
    eng_seq *s;
    cr_assert_eq(eng_seq_new(be, 0, &s), RK_OK);
    cr_assert_eq(bl_assemble(m, be, s, segs, NSEG, c->q, 5, p, r->logits, &r->st), RK_OK, "%s: %s",
                 bl_mode_name(p->mode), rk_error_msg());
    r->n = eng_seq_len(s);
    r->kv = export_all_kv(m, s, r->n);
    int32_t t = eng_argmax(r->logits, mi->vocab);
    cr_assert_eq(eng_decode(be, &s, &t, 1, r->next), RK_OK, "%s", rk_error_msg());
    eng_seq_free(s);
}

static void result_free(struct result *r)
{
    free(r->logits);
    free(r->next);
    free(r->kv);
}

static void expect_same(const struct result *a, const struct result *b, const char *what)
{
    size_t V = (size_t)mi->vocab;
    cr_expect(memcmp(a->logits, b->logits, V * sizeof(float)) == 0, "%s: logits differ (%g)", what,
              max_rel(a->logits, b->logits, V));
    cr_expect(a->st.prompt_tokens == b->st.prompt_tokens && a->st.reused_tokens == b->st.reused_tokens &&
                  a->st.recomputed == b->st.recomputed && a->st.token_layers == b->st.token_layers &&
                  a->st.ape_ctx_end == b->st.ape_ctx_end,
              "%s: stats differ (recomputed %zu vs %zu)", what, a->st.recomputed, b->st.recomputed);
    cr_assert_eq(a->n, b->n, "%s: sequence lengths", what);
    cr_expect(memcmp(a->kv, b->kv, eng_kv_floats(m, a->n) * sizeof(float)) == 0, "%s: sequence KV differs", what);
    cr_expect(memcmp(a->next, b->next, V * sizeof(float)) == 0, "%s: next step differs", what);
}

/* The parameter sets checked: every mode, with settings that exercise its cached-row reads. */
static int param_sets(bl_params *ps, const bl_craft_segment *craft) /* ps: room for 10 */
{
    int n = 0;
    bl_params_default(&ps[n++], BL_FULL);
    bl_params_default(&ps[n++], BL_PREFIX);
    bl_params_default(&ps[n++], BL_NAIVE);
    bl_params_default(&ps[n++], BL_CACHEBLEND);
    bl_params_default(&ps[n], BL_CACHEBLEND); /* gradual: deviations measured at layers 2, 3, 4 */
    ps[n].check_layer = 2;
    ps[n].deviation_v = true;
    ps[n++].schedule = (bl_schedule){.first = 0.6f, .step = 0.5f, .final = 0.1f};
    bl_params_default(&ps[n], BL_CACHEBLEND); /* gradual from every row: the check layer's
                                                 partial layer runs every row, then shrinks by
                                                 its cached rows */
    ps[n++].schedule = (bl_schedule){.first = 1.0f, .step = 0.5f, .final = 0.1f};
    bl_params_default(&ps[n], BL_CACHEBLEND); /* ranked by deviation alone (the default: by the
                                                 query's attention at the check layer too) */
    ps[n++].select = BL_SELECT_DEVIATION;
    bl_params_default(&ps[n], BL_CACHEBLEND); /* ranked by a naive pass's attention over every
                                                 later layer: containers imported whole first */
    ps[n++].select = BL_SELECT_LOOKAHEAD;
    bl_params_default(&ps[n], BL_CACHECRAFT);
    ps[n++].craft = craft;
    bl_params_default(&ps[n++], BL_APE);
    return n;
}

Test(blend_block, every_mode_same_with_blocks_as_with_floats)
{
    if (!m)
        cr_skip_test("skipped: no real model");
    struct chunks c;
    make_chunks(&c);
    /* Cache-Craft: the chunks follow one another now (CFO > 0 for the later ones); the second
     * also has a captured variant with metadata (floats), which it then uses */
    uint64_t ids[NSEG] = {101, 102, 103};
    float *var_kv = malloc(eng_kv_floats(m, lens[1]) * sizeof(float));
    bl_craft_meta md;
    bl_segment ctx[2] = {{.tokens = c.tok[0], .n = lens[0]}, {.tokens = c.tok[1], .n = lens[1]}};
    cr_assert_eq(bl_variant_capture(m, be, ctx, 2, ids, var_kv, &md), RK_OK, "%s", rk_error_msg());
    bl_variant var = {var_kv, &md};
    bl_craft_segment craft[NSEG] = {{0}, {.prev_ids = ids, .n_prev = 1}, {.prev_ids = ids, .n_prev = 2}};
    bl_craft_segment craft_var[NSEG] = {{0}, {.variants = &var, .n_variants = 1, .prev_ids = ids, .n_prev = 1},
                                        {.prev_ids = ids, .n_prev = 2}};
    bl_params ps[10], pv;
    int np = param_sets(ps, craft);
    bl_params_default(&pv, BL_CACHECRAFT);
    pv.craft = craft_var;

    bl_segment fl[NSEG], bk[NSEG], mixed_f[NSEG], mixed_b[NSEG];
    for (int i = 0; i < NSEG; i++) {
        fl[i] = (bl_segment){.tokens = c.tok[i], .n = lens[i], .kv = c.kv[i]};
        bk[i] = (bl_segment){.tokens = c.tok[i], .n = lens[i], .block = c.blk[i]};
    }
    /* mixed: a block first, floats second, the third uncached */
    mixed_f[0] = fl[0], mixed_f[1] = fl[1], mixed_b[0] = bk[0], mixed_b[1] = fl[1];
    mixed_f[2] = mixed_b[2] = (bl_segment){.tokens = c.tok[2], .n = lens[2]};
    for (int k = 0; k <= np; k++) {
        const bl_params *p = k < np ? &ps[k] : &pv;
        char what[64];
        snprintf(what, sizeof(what), "%s%s", bl_mode_name(p->mode), k == np ? " with a variant" : "");
        struct result a, b;
        run(&c, fl, p, &a);
        run(&c, bk, p, &b);
        expect_same(&a, &b, what);
        if (p->mode != BL_FULL)
            cr_expect_gt(a.st.reused_tokens, 0, "%s reused something", what);
        result_free(&a);
        result_free(&b);
        run(&c, mixed_f, p, &a);
        run(&c, mixed_b, p, &b);
        expect_same(&a, &b, what);
        result_free(&a);
        result_free(&b);
    }
    bl_craft_meta_clear(&md);
    free(var_kv);
    free_chunks(&c);
}

Test(blend_block, mismatched_blocks_are_refused)
{
    if (!m)
        cr_skip_test("skipped: no real model");
    struct chunks c;
    make_chunks(&c);
    eng_backend *other;
    cr_assert_eq(eng_backend_cpu_new(m, 1, &other), RK_OK);
    eng_kvblock *elsewhere;
    cr_assert_eq(eng_kvblock_new(other, lens[0], c.kv[0], &elsewhere), RK_OK);
    float *logits = malloc((size_t)mi->vocab * sizeof(float));
    bl_params p;
    bl_params_default(&p, BL_CACHEBLEND);
    bl_segment segs[NSEG];
    for (int i = 0; i < NSEG; i++)
        segs[i] = (bl_segment){.tokens = c.tok[i], .n = lens[i], .block = c.blk[i]};
    eng_seq *s;
    cr_assert_eq(eng_seq_new(be, 0, &s), RK_OK);
    segs[1].kv = c.kv[1]; /* both floats and a block */
    cr_expect_eq(bl_assemble(m, be, s, segs, NSEG, c.q, 5, &p, logits, NULL), RK_ERR_INVALID);
    segs[1].kv = NULL;
    segs[1].block = c.blk[2]; /* a block of another chunk length */
    cr_expect_eq(bl_assemble(m, be, s, segs, NSEG, c.q, 5, &p, logits, NULL), RK_ERR_INVALID);
    segs[1].block = c.blk[1];
    segs[0].block = elsewhere; /* a block of another backend */
    cr_expect_eq(bl_assemble(m, be, s, segs, NSEG, c.q, 5, &p, logits, NULL), RK_ERR_INVALID);
    cr_expect_eq(eng_seq_len(s), 0, "nothing was assembled");
    segs[0].block = c.blk[0];
    cr_expect_eq(bl_assemble(m, be, s, segs, NSEG, c.q, 5, &p, logits, NULL), RK_OK, "%s", rk_error_msg());
    eng_seq_free(s);
    free(logits);
    eng_kvblock_free(elsewhere);
    eng_backend_free(other);
    free_chunks(&c);
}

/* bl_stats.phase_ms splits the assembly's wall time: the phases add up to it, and each mode
 * spends time only in the phases it has (CacheBlend probes and selects; naive does not). */
Test(blend_block, phase_times_add_up_to_the_assembly)
{
    struct chunks c;
    make_chunks(&c);
    bl_segment segs[NSEG];
    for (int i = 0; i < NSEG; i++)
        segs[i] = (bl_segment){.tokens = c.tok[i], .n = lens[i], .block = c.blk[i]};
    bl_params ps[10];
    int np = param_sets(ps, NULL);
    for (int k = 0; k < np; k++) {
        if (ps[k].mode == BL_CACHECRAFT)
            continue; /* needs its craft segments; same code path as naive */
        struct result r;
        run(&c, segs, &ps[k], &r);
        double sum = 0;
        for (int ph = 0; ph < BL_PHASES; ph++) {
            cr_expect(r.st.phase_ms[ph] >= 0, "%s: phase %s negative", bl_mode_name(ps[k].mode),
                      bl_phase_name((bl_phase)ph));
            sum += r.st.phase_ms[ph];
        }
        cr_expect(sum <= r.st.ms * 1.0001 + 1e-3 && sum >= r.st.ms * 0.5, "%s: phases %.3f ms of %.3f ms",
                  bl_mode_name(ps[k].mode), sum, r.st.ms);
        bool blend = ps[k].mode == BL_CACHEBLEND;
        cr_expect((r.st.phase_ms[BL_PHASE_PROBE] > 0) == blend && (r.st.phase_ms[BL_PHASE_PARTIAL] > 0) == blend,
                  "%s: probe %.3f partial %.3f", bl_mode_name(ps[k].mode), r.st.phase_ms[BL_PHASE_PROBE],
                  r.st.phase_ms[BL_PHASE_PARTIAL]);
        cr_expect(r.st.phase_ms[BL_PHASE_FULL] > 0, "%s: no full-row layers", bl_mode_name(ps[k].mode));
        bool imports = ps[k].mode != BL_FULL && ps[k].mode != BL_APE;
        cr_expect((r.st.phase_ms[BL_PHASE_IMPORT] > 0) == imports, "%s: import %.3f", bl_mode_name(ps[k].mode),
                  r.st.phase_ms[BL_PHASE_IMPORT]);
        result_free(&r);
    }
    cr_expect_str_eq(bl_phase_name(BL_PHASE_SELECT), "select");
    cr_expect_str_eq(bl_phase_name(BL_PHASES), "?");
    free_chunks(&c);
}

/* bl_kvblock_decode: a container decoded into a block holds exactly what the codec decodes,
 * and the blend with it equals the blend with those floats; a container of another geometry
 * and a damaged one are refused without a block. */
Test(blend_block, container_decoded_into_a_block)
{
    struct chunks c;
    make_chunks(&c);
    codec_shape shape = {(uint32_t)mi->n_layers, (uint32_t)lens[0], (uint32_t)mi->n_kv_heads, (uint32_t)mi->head_dim};
    codec_params cp = codec_params_default(CODEC_CACHEGEN);
    rk_buf cont = RK_BUF_INIT;
    cr_assert_eq(codec_encode(c.kv[0], &shape, &cp, &cont), RK_OK, "%s", rk_error_msg());
    size_t nf = eng_kv_floats(m, lens[0]);
    float *want = malloc(nf * sizeof(float)), *got = malloc(nf * sizeof(float));
    cr_assert_eq(codec_decode(cont.data, cont.len, NULL, CODEC_F32, want, nf * sizeof(float)), RK_OK);
    eng_kvblock *b = NULL;
    cr_assert_eq(bl_kvblock_decode(be, cont.data, cont.len, NULL, &b), RK_OK, "%s", rk_error_msg());
    cr_assert_eq(eng_kvblock_tokens(b), lens[0]);
    cr_assert_eq(eng_kvblock_read(b, 0, mi->n_layers, got), RK_OK);
    cr_expect(memcmp(want, got, nf * sizeof(float)) == 0, "the block differs from the decoded floats");
    /* blending with it equals blending with the decoded floats */
    bl_segment a[NSEG], f[NSEG];
    for (int i = 0; i < NSEG; i++) {
        a[i] = (bl_segment){.tokens = c.tok[i], .n = lens[i], .block = i ? c.blk[i] : b};
        f[i] = (bl_segment){.tokens = c.tok[i], .n = lens[i], .kv = i ? c.kv[i] : want};
    }
    bl_params p;
    bl_params_default(&p, BL_CACHEBLEND);
    struct result ra, rf;
    run(&c, a, &p, &ra);
    run(&c, f, &p, &rf);
    expect_same(&ra, &rf, "cacheblend, decoded block");
    result_free(&ra);
    result_free(&rf);
    eng_kvblock_free(b);
    /* another geometry: one layer too few */
    codec_shape bad = shape;
    bad.n_layers--;
    rk_buf other = RK_BUF_INIT;
    cr_assert_eq(codec_encode(c.kv[0], &bad, &cp, &other), RK_OK);
    b = (eng_kvblock *)&b; /* must come back NULL */
    cr_expect_eq(bl_kvblock_decode(be, other.data, other.len, NULL, &b), RK_ERR_INVALID);
    cr_expect_null(b);
    /* a damaged container */
    ((uint8_t *)cont.data)[cont.len / 2] ^= 0x5a;
    b = (eng_kvblock *)&b;
    cr_expect_neq(bl_kvblock_decode(be, cont.data, cont.len, NULL, &b), RK_OK);
    cr_expect_null(b);
    cr_expect_eq(bl_kvblock_decode(be, NULL, 0, NULL, &b), RK_ERR_INVALID);
    rk_buf_free(&cont);
    rk_buf_free(&other);
    free(want);
    free(got);
    free_chunks(&c);
}

/* The chunks (make_chunks), containers of their KV (cachegen, the default level) and the floats
 * those decode to. Skips the test without the real model. */
struct conts {
    rk_buf c[NSEG];
    float *dec[NSEG];
};

static void make_conts(struct chunks *c, struct conts *o)
{
    if (!m)
        cr_skip_test("skipped: no real model");
    make_chunks(c);
    codec_params cp = codec_params_default(CODEC_CACHEGEN);
    for (int i = 0; i < NSEG; i++) {
        codec_shape shape = {(uint32_t)mi->n_layers, (uint32_t)lens[i], (uint32_t)mi->n_kv_heads,
                             (uint32_t)mi->head_dim};
        o->c[i] = (rk_buf)RK_BUF_INIT;
        cr_assert_eq(codec_encode(c->kv[i], &shape, &cp, &o->c[i]), RK_OK, "%s", rk_error_msg());
        size_t nf = eng_kv_floats(m, lens[i]);
        o->dec[i] = malloc(nf * sizeof(float));
        cr_assert_eq(codec_decode(o->c[i].data, o->c[i].len, NULL, CODEC_F32, o->dec[i], nf * sizeof(float)), RK_OK);
    }
}

static void free_conts(struct conts *o)
{
    for (int i = 0; i < NSEG; i++) {
        rk_buf_free(&o->c[i]);
        free(o->dec[i]);
    }
}

/* Every mode gives, bit for bit, the same result with container segments as with the floats
 * they decode to: alone, mixed with a block, floats and an uncached segment, and with the
 * decoding spread over a pool. CacheBlend's gradual schedule reads cached rows at layers 2, 3
 * and 4, each while the loader may be decoding the next. */
Test(blend_block, every_mode_same_with_containers_as_with_floats)
{
    struct chunks c;
    struct conts o;
    make_conts(&c, &o);
    uint64_t ids[NSEG] = {101, 102, 103};
    bl_craft_segment craft[NSEG] = {{0}, {.prev_ids = ids, .n_prev = 1}, {.prev_ids = ids, .n_prev = 2}};
    bl_params ps[10];
    int np = param_sets(ps, craft);
    rk_pool *pool = NULL;
    cr_assert_eq(rk_pool_create(2, &pool), RK_OK);
    codec_decode_opts pooled = {.pool = pool};
    bl_segment fl[NSEG], ct[NSEG], mixed_f[NSEG], mixed_c[NSEG];
    for (int i = 0; i < NSEG; i++) {
        fl[i] = (bl_segment){.tokens = c.tok[i], .n = lens[i], .kv = o.dec[i]};
        ct[i] = (bl_segment){.tokens = c.tok[i], .n = lens[i], .container = o.c[i].data, .container_len = o.c[i].len};
    }
    /* mixed: a container, then a block, then an uncached segment; the reference has the
     * container's decoded floats and the block's floats */
    mixed_c[0] = ct[0], mixed_f[0] = fl[0];
    mixed_c[1] = (bl_segment){.tokens = c.tok[1], .n = lens[1], .block = c.blk[1]};
    mixed_f[1] = (bl_segment){.tokens = c.tok[1], .n = lens[1], .kv = c.kv[1]};
    mixed_c[2] = mixed_f[2] = (bl_segment){.tokens = c.tok[2], .n = lens[2]};
    for (int k = 0; k < np; k++) {
        bl_params p = ps[k];
        for (int withpool = 0; withpool < 2; withpool++) {
            p.decode = withpool ? &pooled : NULL;
            char what[64];
            snprintf(what, sizeof(what), "%s%s", bl_mode_name(p.mode), withpool ? ", pooled decode" : "");
            struct result a, b;
            run(&c, fl, &p, &a);
            run(&c, ct, &p, &b);
            expect_same(&a, &b, what);
            cr_expect(b.st.load_wait_ms >= 0 && b.st.load_wait_ms <= b.st.ms, "%s: waited %g of %g ms", what,
                      b.st.load_wait_ms, b.st.ms);
            /* the loader's own times: only where it ran (every mode but full, prefix and APE,
             * which decode a container whole), its thread's opens and layers inside the call */
            bool loads = p.mode != BL_FULL && p.mode != BL_PREFIX && p.mode != BL_APE;
            cr_expect(a.st.load_setup_ms == 0 && a.st.load_open_ms == 0 && a.st.load_enqueue_ms == 0 &&
                          a.st.load_free_ms == 0, "%s: no containers, no loader", what);
            cr_expect(loads ? b.st.load_open_ms > 0 && b.st.load_enqueue_ms > 0 && b.st.load_free_ms > 0
                            : b.st.load_open_ms == 0 && b.st.load_enqueue_ms == 0,
                      "%s: loader opens %g, layers %g, release %g ms", what, b.st.load_open_ms, b.st.load_enqueue_ms,
                      b.st.load_free_ms);
            cr_expect(b.st.load_setup_ms + b.st.load_open_ms + b.st.load_enqueue_ms <= b.st.ms + 1e-3,
                      "%s: the loader's times lie inside the call's %g ms", what, b.st.ms);
            result_free(&a);
            result_free(&b);
            run(&c, mixed_f, &p, &a);
            run(&c, mixed_c, &p, &b);
            expect_same(&a, &b, what);
            result_free(&a);
            result_free(&b);
        }
    }
    rk_pool_free(pool);
    free_conts(&o);
    free_chunks(&c);
}

/* A damaged container, one of another geometry or of another length fails the assembly with
 * the codec's or an RK_ERR_INVALID error (no hang: the loader's failure reaches the engine
 * thread), whether it is the first segment or a later one; a segment with two kinds of KV is
 * refused before anything runs. */
Test(blend_block, bad_containers_fail_the_assembly)
{
    struct chunks c;
    struct conts o;
    make_conts(&c, &o);
    rk_buf damaged = RK_BUF_INIT, short_one = RK_BUF_INIT;
    rk_buf_append(&damaged, o.c[1].data, o.c[1].len);
    ((uint8_t *)damaged.data)[damaged.len / 2] ^= 0x5a;
    codec_params cp = codec_params_default(CODEC_CACHEGEN);
    codec_shape shape = {(uint32_t)mi->n_layers, (uint32_t)lens[1] - 1, (uint32_t)mi->n_kv_heads, (uint32_t)mi->head_dim};
    cr_assert_eq(codec_encode(c.kv[1], &shape, &cp, &short_one), RK_OK); /* the first n - 1 tokens' layout differs,
                                                                            but only its length matters here */
    static const bl_mode modes[] = {BL_NAIVE, BL_CACHEBLEND, BL_CACHECRAFT, BL_PREFIX, BL_APE};
    float *logits = malloc((size_t)mi->vocab * sizeof(float));
    for (int bad = 0; bad < 2; bad++) {
        for (size_t k = 0; k < sizeof(modes) / sizeof(modes[0]); k++) {
            for (int at = 0; at < 2; at++) {
                bl_segment segs[NSEG];
                for (int i = 0; i < NSEG; i++)
                    segs[i] = (bl_segment){.tokens = c.tok[i], .n = lens[i], .container = o.c[i].data,
                                           .container_len = o.c[i].len};
                const rk_buf *b = bad ? &short_one : &damaged;
                segs[at] = (bl_segment){.tokens = c.tok[at], .n = lens[at], .container = b->data, .container_len = b->len};
                if (bad) /* the short container stands for a segment of its own length + 1 */
                    segs[at].n = lens[1];
                bl_params p;
                bl_params_default(&p, modes[k]);
                eng_seq *s;
                cr_assert_eq(eng_seq_new(be, 0, &s), RK_OK);
                rk_status st = bl_assemble(m, be, s, segs, NSEG, c.q, 5, &p, logits, NULL);
                if (modes[k] == BL_PREFIX && at == 1)
                    cr_expect_eq(st, RK_OK, "prefix reads only the first segment's cache");
                else if (bad)
                    cr_expect_eq(st, RK_ERR_INVALID, "%s, segment %d of another length: %s", bl_mode_name(modes[k]),
                                 at, rk_status_name(st));
                else
                    cr_expect_neq(st, RK_OK, "%s, damaged segment %d", bl_mode_name(modes[k]), at);
                eng_seq_free(s);
            }
        }
    }
    bl_segment two[NSEG];
    for (int i = 0; i < NSEG; i++)
        two[i] = (bl_segment){.tokens = c.tok[i], .n = lens[i], .kv = c.kv[i]};
    two[2].container = o.c[2].data;
    two[2].container_len = o.c[2].len;
    bl_params p;
    bl_params_default(&p, BL_CACHEBLEND);
    eng_seq *s;
    cr_assert_eq(eng_seq_new(be, 0, &s), RK_OK);
    cr_expect_eq(bl_assemble(m, be, s, two, NSEG, c.q, 5, &p, logits, NULL), RK_ERR_INVALID);
    cr_expect_eq(eng_seq_len(s), 0);
    eng_seq_free(s);
    free(logits);
    rk_buf_free(&damaged);
    rk_buf_free(&short_one);
    free_conts(&o);
    free_chunks(&c);
}
