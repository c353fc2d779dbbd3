/*
 * conformance.h — the backend conformance suite: the checks every engine backend must pass,
 * parameterised by the backend's constructor. test_conformance_cpu.c runs them on the CPU
 * backend; the CUDA backend's test_gpu_conformance.c includes this file and runs the same
 * checks (with its own tolerances) where a device exists.
 *
 * Each check opens its own model (a seeded synthetic shape, or a real model path) and fails
 * through Criterion assertions.
 */
#ifndef RAGKV_TEST_ENGINE_CONFORMANCE_H
#define RAGKV_TEST_ENGINE_CONFORMANCE_H

#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "det_tokens.h"
#include "ragkv/engine.h"

typedef rk_status (*conf_backend_ctor)(eng_model *m, eng_backend **out);

/* A model: a synthetic shape name, or a path (contains '/'). */
static eng_model *conf_open(const char *what)
{
    eng_model *m = NULL;
    rk_status st = strchr(what, '/') ? eng_model_open(what, &m) : eng_model_synth(what, 7, &m);
    cr_assert_eq(st, RK_OK, "open %s: %s", what, rk_error_msg());
    return m;
}

/* max |a-b| / max(1e-3, max |b|) over n values: relative to the row's scale */
static double conf_rel_err(const float *a, const float *b, size_t n)
{
    double maxd = 0, maxb = 1e-3;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (!(d <= maxd))
            maxd = d; /* NaN propagates as a failure */
        if (fabs((double)b[i]) > maxb)
            maxb = fabs((double)b[i]);
    }
    return maxd / maxb;
}

/* A new sequence of cap slots on be (asserted). */
static eng_seq *conf_seq(eng_backend *be, size_t cap)
{
    eng_seq *s = NULL;
    cr_assert_eq(eng_seq_new(be, cap, &s), RK_OK, "%s", rk_error_msg());
    return s;
}

/* One-shot prefill == token-by-token decode, every position's logits. */
static void conf_prefill_equals_decode(conf_backend_ctor ctor, const char *model, double tol)
{
    eng_model *m = conf_open(model);
    const eng_model_info *mi = eng_model_get_info(m);
    eng_backend *be;
    cr_assert_eq(ctor(m, &be), RK_OK, "%s", rk_error_msg());
    size_t n = 24, V = (size_t)mi->vocab;
    int32_t tok[24];
    det_tokens(tok, n, mi->vocab, 1);
    tok[0] = mi->bos;
    float *all = malloc(n * V * sizeof(float)), *one = malloc(V * sizeof(float));
    eng_seq *a, *b;
    cr_assert_eq(eng_seq_new(be, 64, &a), RK_OK);
    cr_assert_eq(eng_seq_new(be, 64, &b), RK_OK);
    cr_assert_eq(eng_prefill(a, tok, n, NULL, ENG_LOGITS_ALL, all), RK_OK, "%s", rk_error_msg());
    for (size_t i = 0; i < n; i++) {
        cr_assert_eq(eng_decode(be, &b, &tok[i], 1, one), RK_OK, "%s", rk_error_msg());
        double e = conf_rel_err(one, all + i * V, V);
        cr_assert(e <= tol, "%s: position %zu: decode vs prefill relative error %g > %g", model, i, e, tol);
    }
    cr_assert_eq(eng_seq_len(a), n);
    cr_assert_eq(eng_seq_next_pos(b), (int32_t)n);
    free(all);
    free(one);
    eng_seq_free(a);
    eng_seq_free(b);
    eng_backend_free(be);
    eng_model_close(m);
}

/* Prefill == the layer-granular steps (embed, layer_forward per layer, logits); and the
 * fresh K/V the layer op reports == what export returns. */
/* eng_layer_kv writes exactly the K/V eng_layer_forward writes for the same rows (a sequence fed
 * layer by layer both ways, KV exported bit for bit equal, deviation 0), leaves the hidden
 * states as they were, and rejects what eng_layer_forward rejects. */
static void conf_layer_kv(conf_backend_ctor ctor, const char *model)
{
    eng_model *m = conf_open(model);
    const eng_model_info *mi = eng_model_get_info(m);
    eng_backend *be;
    cr_assert_eq(ctor(m, &be), RK_OK, "%s", rk_error_msg());
    size_t n = 24, d = (size_t)mi->dim;
    int32_t tok[24], pos[24], slots[24];
    det_tokens(tok, n, mi->vocab, 9);
    for (size_t i = 0; i < n; i++) {
        pos[i] = (int32_t)(i + 3);
        slots[i] = (int32_t)((i * 5 + 2) % n); /* 5 is coprime with 24: a permutation */
    }
    float *before = malloc(n * d * sizeof(float)), *after = malloc(n * d * sizeof(float)), dev[24];
    float *ka = malloc(eng_kv_floats(m, n) * sizeof(float)), *kb = malloc(eng_kv_floats(m, n) * sizeof(float));
    eng_seq *full, *kvo;
    eng_hidden *h;
    cr_assert_eq(eng_seq_new(be, n, &full), RK_OK);
    cr_assert_eq(eng_seq_new(be, n, &kvo), RK_OK);
    cr_assert_eq(eng_hidden_new(be, n, &h), RK_OK);
    cr_assert_eq(eng_embed(be, h, 0, tok, n), RK_OK);
    cr_assert_eq(eng_layer_kv(kvo, mi->n_layers, h, n, pos, slots), RK_ERR_RANGE);
    cr_assert_eq(eng_layer_kv(kvo, 0, h, n + 1, pos, slots), RK_ERR_RANGE);
    cr_assert_eq(eng_layer_kv(kvo, 0, h, n, pos, NULL), RK_ERR_INVALID);
    cr_assert_eq(eng_seq_len(kvo), 0, "a rejected call changes nothing");
    for (int l = 0; l < mi->n_layers; l++) {
        cr_assert_eq(eng_hidden_read(h, 0, n, before), RK_OK);
        cr_assert_eq(eng_layer_kv(kvo, l, h, n, pos, slots), RK_OK, "%s", rk_error_msg());
        cr_assert_eq(eng_hidden_read(h, 0, n, after), RK_OK);
        cr_assert(memcmp(before, after, n * d * sizeof(float)) == 0, "layer %d: eng_layer_kv changed h", l);
        cr_assert_eq(eng_layer_forward(full, l, h, n, pos, slots, NULL, NULL), RK_OK, "%s", rk_error_msg());
        cr_assert_eq(eng_kv_deviation(kvo, full, l, 0, n, true, dev), RK_OK, "%s", rk_error_msg());
        for (size_t i = 0; i < n; i++)
            cr_assert_eq(dev[i], 0.0f, "layer %d slot %zu: deviation %g", l, i, dev[i]);
    }
    cr_assert_eq(eng_seq_len(kvo), n);
    for (size_t i = 0; i < n; i++)
        cr_assert_eq(eng_seq_pos(kvo, (size_t)slots[i]), pos[i]);
    cr_assert_eq(eng_kv_export(full, 0, n, ka), RK_OK);
    cr_assert_eq(eng_kv_export(kvo, 0, n, kb), RK_OK);
    cr_assert(memcmp(ka, kb, eng_kv_floats(m, n) * sizeof(float)) == 0, "%s: K/V of eng_layer_kv differ", model);
    free(before);
    free(after);
    free(ka);
    free(kb);
    eng_hidden_free(h);
    eng_seq_free(full);
    eng_seq_free(kvo);
    eng_backend_free(be);
    eng_model_close(m);
}

static void conf_layers_equal_prefill(conf_backend_ctor ctor, const char *model, double tol)
{
    eng_model *m = conf_open(model);
    const eng_model_info *mi = eng_model_get_info(m);
    eng_backend *be;
    cr_assert_eq(ctor(m, &be), RK_OK, "%s", rk_error_msg());
    size_t n = 16, V = (size_t)mi->vocab, kvd = (size_t)mi->n_kv_heads * (size_t)mi->head_dim;
    int32_t tok[16], pos[16], slots[16];
    det_tokens(tok, n, mi->vocab, 2);
    for (size_t i = 0; i < n; i++) {
        pos[i] = (int32_t)i;
        slots[i] = (int32_t)i;
    }
    float *ref = malloc(n * V * sizeof(float)), *got = malloc(n * V * sizeof(float));
    float *kf = malloc(n * kvd * sizeof(float)), *vf = malloc(n * kvd * sizeof(float));
    float *kv = malloc(eng_kv_floats(m, n) * sizeof(float));
    eng_seq *a, *b;
    eng_hidden *h;
    cr_assert_eq(eng_seq_new(be, n, &a), RK_OK);
    cr_assert_eq(eng_seq_new(be, n, &b), RK_OK);
    cr_assert_eq(eng_prefill(a, tok, n, NULL, ENG_LOGITS_ALL, ref), RK_OK, "%s", rk_error_msg());
    cr_assert_eq(eng_hidden_new(be, n, &h), RK_OK);
    cr_assert_eq(eng_embed(be, h, 0, tok, n), RK_OK);
    cr_assert_eq(eng_kv_export(a, 0, n, kv), RK_OK, "%s", rk_error_msg());
    for (int l = 0; l < mi->n_layers; l++) {
        cr_assert_eq(eng_layer_forward(b, l, h, n, pos, slots, kf, vf), RK_OK, "%s", rk_error_msg());
        /* canonical layout: [layer][K|V][token][kv_head][head_dim] */
        const float *K = kv + (size_t)(2 * l) * n * kvd, *Vv = kv + (size_t)(2 * l + 1) * n * kvd;
        cr_assert(conf_rel_err(kf, K, n * kvd) <= tol, "layer %d fresh K differs from exported K", l);
        cr_assert(conf_rel_err(vf, Vv, n * kvd) <= tol, "layer %d fresh V differs from exported V", l);
    }
    cr_assert_eq(eng_logits(be, h, NULL, n, got), RK_OK);
    double e = conf_rel_err(got, ref, n * V);
    cr_assert(e <= tol, "%s: layer-granular vs prefill relative error %g", model, e);
    free(ref);
    free(got);
    free(kf);
    free(vf);
    free(kv);
    eng_hidden_free(h);
    eng_seq_free(a);
    eng_seq_free(b);
    eng_backend_free(be);
    eng_model_close(m);
}

/* Row-subset forward: with every other row's KV imported from a full prefill, recomputing a
 * subset of rows through all layers gives the full prefill's logits for those rows; and the
 * subset "all rows" (shuffled) equals full forward. */
static void conf_row_subset(conf_backend_ctor ctor, const char *model, double tol)
{
    eng_model *m = conf_open(model);
    const eng_model_info *mi = eng_model_get_info(m);
    eng_backend *be;
    cr_assert_eq(ctor(m, &be), RK_OK, "%s", rk_error_msg());
    size_t n = 20, V = (size_t)mi->vocab;
    int32_t tok[20];
    det_tokens(tok, n, mi->vocab, 3);
    float *ref = malloc(n * V * sizeof(float)), *got = malloc(n * V * sizeof(float));
    float *kv = malloc(eng_kv_floats(m, n) * sizeof(float));
    eng_seq *a;
    cr_assert_eq(eng_seq_new(be, n, &a), RK_OK);
    cr_assert_eq(eng_prefill(a, tok, n, NULL, ENG_LOGITS_ALL, ref), RK_OK, "%s", rk_error_msg());
    cr_assert_eq(eng_kv_export(a, 0, n, kv), RK_OK);
    int32_t allpos[20];
    for (size_t i = 0; i < n; i++)
        allpos[i] = (int32_t)i;

    /* subsets: a few interior rows + the last; then every row in a shuffled order */
    const size_t sub_a[] = {2, 7, 8, 13, 19};
    size_t sub_b[20];
    for (size_t i = 0; i < n; i++)
        sub_b[i] = (i * 7 + 3) % n; /* 7 is coprime with 20: a permutation */
    const size_t *subs[2] = {sub_a, sub_b};
    const size_t lens[2] = {sizeof(sub_a) / sizeof(sub_a[0]), n};
    for (int s = 0; s < 2; s++) {
        size_t k = lens[s];
        eng_seq *b;
        eng_hidden *h;
        cr_assert_eq(eng_seq_new(be, n, &b), RK_OK);
        cr_assert_eq(eng_kv_import(b, 0, n, allpos, kv), RK_OK, "%s", rk_error_msg());
        int32_t t[20], p[20], sl[20];
        for (size_t i = 0; i < k; i++) {
            t[i] = tok[subs[s][i]];
            p[i] = (int32_t)subs[s][i];
            sl[i] = (int32_t)subs[s][i];
        }
        cr_assert_eq(eng_hidden_new(be, k, &h), RK_OK);
        cr_assert_eq(eng_embed(be, h, 0, t, k), RK_OK);
        for (int l = 0; l < mi->n_layers; l++)
            cr_assert_eq(eng_layer_forward(b, l, h, k, p, sl, NULL, NULL), RK_OK, "%s", rk_error_msg());
        cr_assert_eq(eng_logits(be, h, NULL, k, got), RK_OK);
        for (size_t i = 0; i < k; i++) {
            double e = conf_rel_err(got + i * V, ref + subs[s][i] * V, V);
            cr_assert(e <= tol, "%s: subset %d row %zu (position %zu): relative error %g", model, s, i, subs[s][i], e);
        }
        eng_hidden_free(h);
        eng_seq_free(b);
    }
    free(ref);
    free(got);
    free(kv);
    eng_seq_free(a);
    eng_backend_free(be);
    eng_model_close(m);
}

/* Export at positions 0..n-1, import at shift..shift+n-1 == computing the same tokens at
 * those positions (RoPE is relative: pre-RoPE K/V and the next logits agree up to rounding);
 * importing at the original positions reproduces decode bit for bit (up to tol_exact). */
static void conf_export_import_shift(conf_backend_ctor ctor, const char *model, double tol_exact, double tol_shift)
{
    eng_model *m = conf_open(model);
    const eng_model_info *mi = eng_model_get_info(m);
    eng_backend *be;
    cr_assert_eq(ctor(m, &be), RK_OK, "%s", rk_error_msg());
    size_t n = 12, V = (size_t)mi->vocab, F = eng_kv_floats(m, n);
    int32_t tok[12], shift = 37, pos[12], next;
    det_tokens(tok, n, mi->vocab, 4);
    det_tokens(&next, 1, mi->vocab, 5);
    for (size_t i = 0; i < n; i++)
        pos[i] = shift + (int32_t)i;
    float *kv_a = malloc(F * sizeof(float)), *kv_b = malloc(F * sizeof(float)), *kv_c = malloc(F * sizeof(float));
    float *la = malloc(V * sizeof(float)), *lb = malloc(V * sizeof(float)), *lc = malloc(V * sizeof(float));
    eng_seq *a = conf_seq(be, 64), *b = conf_seq(be, 64), *c = conf_seq(be, 64), *d = conf_seq(be, 64);
    cr_assert_eq(eng_prefill(a, tok, n, NULL, ENG_LOGITS_NONE, NULL), RK_OK);
    cr_assert_eq(eng_kv_export(a, 0, n, kv_a), RK_OK);
    /* c: the same tokens computed at the shifted positions */
    cr_assert_eq(eng_prefill(c, tok, n, pos, ENG_LOGITS_NONE, NULL), RK_OK, "%s", rk_error_msg());
    cr_assert_eq(eng_seq_next_pos(c), shift + (int32_t)n);
    cr_assert_eq(eng_kv_export(c, 0, n, kv_c), RK_OK);
    double ek = conf_rel_err(kv_a, kv_c, F);
    cr_assert(ek <= tol_shift, "%s: pre-RoPE KV at shifted positions differs by %g", model, ek);
    /* b: a's KV imported at the shifted positions, round trip through export */
    cr_assert_eq(eng_kv_import(b, 0, n, pos, kv_a), RK_OK, "%s", rk_error_msg());
    cr_assert_eq(eng_kv_export(b, 0, n, kv_b), RK_OK);
    cr_assert(memcmp(kv_a, kv_b, F * sizeof(float)) == 0 || conf_rel_err(kv_b, kv_a, F) <= tol_exact,
              "export(import(kv)) != kv");
    cr_assert_eq(eng_decode(be, &b, &next, 1, lb), RK_OK);
    cr_assert_eq(eng_decode(be, &c, &next, 1, lc), RK_OK);
    double e = conf_rel_err(lb, lc, V);
    cr_assert(e <= tol_shift, "%s: imported-at-shift vs computed-at-shift logits differ by %g", model, e);
    /* d: import at the original positions == a */
    int32_t p0[12];
    for (size_t i = 0; i < n; i++)
        p0[i] = (int32_t)i;
    cr_assert_eq(eng_kv_import(d, 0, n, p0, kv_a), RK_OK);
    cr_assert_eq(eng_decode(be, &a, &next, 1, la), RK_OK);
    cr_assert_eq(eng_decode(be, &d, &next, 1, lb), RK_OK);
    e = conf_rel_err(lb, la, V);
    cr_assert(e <= tol_exact, "%s: import at the same positions differs by %g", model, e);
    free(kv_a);
    free(kv_b);
    free(kv_c);
    free(la);
    free(lb);
    free(lc);
    eng_seq_free(a);
    eng_seq_free(b);
    eng_seq_free(c);
    eng_seq_free(d);
    eng_backend_free(be);
    eng_model_close(m);
}

/* A batch whose members join and leave between steps == each sequence decoded alone. */
static void conf_batched_decode(conf_backend_ctor ctor, const char *model, double tol)
{
    eng_model *m = conf_open(model);
    const eng_model_info *mi = eng_model_get_info(m);
    eng_backend *be;
    cr_assert_eq(ctor(m, &be), RK_OK, "%s", rk_error_msg());
    enum { NS = 3, STEPS = 8 };
    size_t V = (size_t)mi->vocab;
    const size_t plen[NS] = {5, 9, 3};
    eng_seq *bat[NS], *solo[NS];
    int32_t steps_tok[NS][STEPS];
    float *lb = malloc(NS * V * sizeof(float)), *ls = malloc(V * sizeof(float));
    for (int i = 0; i < NS; i++) {
        int32_t p[16];
        det_tokens(p, plen[i], mi->vocab, 10 + (uint32_t)i);
        det_tokens(steps_tok[i], STEPS, mi->vocab, 20 + (uint32_t)i);
        cr_assert_eq(eng_seq_new(be, 32, &bat[i]), RK_OK);
        cr_assert_eq(eng_seq_new(be, 32, &solo[i]), RK_OK);
        cr_assert_eq(eng_prefill(bat[i], p, plen[i], NULL, ENG_LOGITS_NONE, NULL), RK_OK);
        cr_assert_eq(eng_prefill(solo[i], p, plen[i], NULL, ENG_LOGITS_NONE, NULL), RK_OK);
    }
    int done[NS] = {0, 0, 0};
    for (int step = 0; step < STEPS + 2; step++) {
        /* membership: seq 0 every step; seq 1 joins at step 2; seq 2 skips odd steps */
        eng_seq *batch[NS];
        int32_t toks[NS];
        int who[NS], k = 0;
        for (int i = 0; i < NS; i++) {
            bool in = i == 0 || (i == 1 && step >= 2) || (i == 2 && step % 2 == 0);
            if (!in || done[i] >= STEPS)
                continue;
            batch[k] = bat[i];
            toks[k] = steps_tok[i][done[i]];
            who[k++] = i;
        }
        if (k == 0)
            continue;
        cr_assert_eq(eng_decode(be, batch, toks, (size_t)k, lb), RK_OK, "%s", rk_error_msg());
        for (int j = 0; j < k; j++) {
            int i = who[j];
            cr_assert_eq(eng_decode(be, &solo[i], &toks[j], 1, ls), RK_OK);
            double e = conf_rel_err(lb + (size_t)j * V, ls, V);
            cr_assert(e <= tol, "%s: step %d seq %d: batched vs alone differ by %g", model, step, i, e);
            done[i]++;
        }
    }
    for (int i = 0; i < NS; i++) {
        eng_seq_free(bat[i]);
        eng_seq_free(solo[i]);
    }
    free(lb);
    free(ls);
    eng_backend_free(be);
    eng_model_close(m);
}

/* The causal rule is by position, not by slot: tokens stored in reversed slot order, plus an
 * empty slot and a slot holding a far-future position, give the same logits. */
static void conf_causal_by_position(conf_backend_ctor ctor, const char *model, double tol)
{
    eng_model *m = conf_open(model);
    const eng_model_info *mi = eng_model_get_info(m);
    eng_backend *be;
    cr_assert_eq(ctor(m, &be), RK_OK, "%s", rk_error_msg());
    size_t n = 10, V = (size_t)mi->vocab;
    int32_t tok[10];
    det_tokens(tok, n, mi->vocab, 6);
    float *ref = malloc(n * V * sizeof(float)), *got = malloc(n * V * sizeof(float));
    eng_seq *a, *b;
    cr_assert_eq(eng_seq_new(be, 32, &a), RK_OK);
    cr_assert_eq(eng_seq_new(be, 32, &b), RK_OK);
    cr_assert_eq(eng_prefill(a, tok, n, NULL, ENG_LOGITS_ALL, ref), RK_OK);
    /* b: an extra token at position 50 in slot 0 (visible to no row), slot 1 left empty,
     * then token i at position i in slot 2 + (n-1-i) */
    int32_t far = 3, farpos = 50, farslot = 0;
    eng_hidden *h1, *h;
    cr_assert_eq(eng_hidden_new(be, 1, &h1), RK_OK);
    cr_assert_eq(eng_embed(be, h1, 0, &far, 1), RK_OK);
    for (int l = 0; l < mi->n_layers; l++)
        cr_assert_eq(eng_layer_forward(b, l, h1, 1, &farpos, &farslot, NULL, NULL), RK_OK);
    int32_t pos[10], sl[10];
    for (size_t i = 0; i < n; i++) {
        pos[i] = (int32_t)i;
        sl[i] = (int32_t)(2 + n - 1 - i);
    }
    cr_assert_eq(eng_hidden_new(be, n, &h), RK_OK);
    cr_assert_eq(eng_embed(be, h, 0, tok, n), RK_OK);
    for (int l = 0; l < mi->n_layers; l++)
        cr_assert_eq(eng_layer_forward(b, l, h, n, pos, sl, NULL, NULL), RK_OK, "%s", rk_error_msg());
    cr_assert_eq(eng_logits(be, h, NULL, n, got), RK_OK);
    cr_assert_eq(eng_seq_len(b), n + 2);
    cr_assert_eq(eng_seq_pos(b, 1), -1, "slot 1 stays empty");
    cr_assert_eq(eng_seq_pos(b, 0), farpos);
    double e = conf_rel_err(got, ref, n * V);
    cr_assert(e <= tol, "%s: reversed slots vs in-order differ by %g", model, e);
    eng_hidden_free(h1);
    eng_hidden_free(h);
    eng_seq_free(a);
    eng_seq_free(b);
    eng_backend_free(be);
    eng_model_close(m);
}

/* Bad calls are rejected with errors, never crash, and leave the sequence usable. */
static void conf_bad_calls(conf_backend_ctor ctor, const char *model)
{
    eng_model *m = conf_open(model);
    const eng_model_info *mi = eng_model_get_info(m);
    eng_backend *be;
    cr_assert_eq(ctor(m, &be), RK_OK, "%s", rk_error_msg());
    eng_seq *s;
    eng_hidden *h;
    cr_assert_eq(eng_seq_new(be, 4, &s), RK_OK);
    cr_assert_eq(eng_hidden_new(be, 2, &h), RK_OK);
    float *lg = malloc((size_t)mi->vocab * 4 * sizeof(float));
    int32_t bad = mi->vocab, ok[5] = {1, 5, 6, 7, 8};
    cr_expect_eq(eng_prefill(s, &bad, 1, NULL, ENG_LOGITS_LAST, lg), RK_ERR_RANGE);
    cr_expect_eq(eng_decode(be, &s, &bad, 1, lg), RK_ERR_RANGE);
    cr_expect_eq(eng_prefill(s, ok, 5, NULL, ENG_LOGITS_LAST, lg), RK_ERR_LIMIT, "5 tokens into 4 slots");
    int32_t p2[2] = {0, 1}, dup[2] = {1, 1}, far[2] = {0, 9};
    cr_expect_eq(eng_embed(be, h, 0, ok, 2), RK_OK);
    cr_expect_eq(eng_layer_forward(s, 0, h, 2, p2, dup, NULL, NULL), RK_ERR_INVALID, "duplicate slot");
    cr_expect_eq(eng_layer_forward(s, 0, h, 2, p2, far, NULL, NULL), RK_ERR_RANGE, "slot past capacity");
    int32_t negpos[2] = {-1, 0}, bigpos[2] = {0, mi->max_seq};
    cr_expect_eq(eng_layer_forward(s, 0, h, 2, negpos, p2, NULL, NULL), RK_ERR_RANGE);
    cr_expect_eq(eng_layer_forward(s, 0, h, 2, bigpos, p2, NULL, NULL), RK_ERR_RANGE);
    cr_expect_eq(eng_layer_forward(s, mi->n_layers, h, 2, p2, p2, NULL, NULL), RK_ERR_RANGE);
    cr_expect_eq(eng_layer_forward(s, 0, h, 3, p2, p2, NULL, NULL), RK_ERR_RANGE, "more rows than the block");
    cr_expect_eq(eng_seq_len(s), 0, "rejected calls leave the sequence alone");
    float kvbuf[4];
    cr_expect_eq(eng_kv_export(s, 0, 1, kvbuf), RK_ERR_RANGE, "export past the length");
    eng_seq *pair[2] = {s, s};
    int32_t two[2] = {5, 6};
    cr_expect_eq(eng_decode(be, pair, two, 2, lg), RK_ERR_INVALID, "same sequence twice");
    /* still usable */
    cr_expect_eq(eng_prefill(s, ok, 4, NULL, ENG_LOGITS_LAST, lg), RK_OK, "%s", rk_error_msg());
    cr_expect_eq(eng_decode(be, &s, &two[0], 1, lg), RK_ERR_LIMIT, "full sequence");
    cr_expect_eq(eng_seq_truncate(s, 2), RK_OK);
    cr_expect_eq(eng_seq_next_pos(s), 2);
    cr_expect_eq(eng_decode(be, &s, &two[0], 1, lg), RK_OK);
    free(lg);
    eng_hidden_free(h);
    eng_seq_free(s);
    eng_backend_free(be);
    eng_model_close(m);
}

/* Two sequences b and c holding the same 8 cached slots (tokens 0..7 prefilled in a third),
 * and two hidden states hb and hc of tokens 8..11 entering layer 0, for the mass tests. */
struct mass_fixture {
    eng_model *m;
    eng_backend *be;
    eng_seq *a, *b, *c;
    eng_hidden *hb, *hc;
    float *kv;
    int32_t pos[4]; /* 8..11: the rows' positions and slots */
};

static void mass_fixture_open(struct mass_fixture *f, conf_backend_ctor ctor, const char *model, uint32_t seed)
{
    f->m = conf_open(model);
    const eng_model_info *mi = eng_model_get_info(f->m);
    cr_assert_eq(ctor(f->m, &f->be), RK_OK, "%s", rk_error_msg());
    int32_t tok[12];
    det_tokens(tok, 12, mi->vocab, seed);
    f->kv = malloc(eng_kv_floats(f->m, 8) * sizeof(float));
    cr_assert_eq(eng_seq_new(f->be, 12, &f->a), RK_OK);
    cr_assert_eq(eng_seq_new(f->be, 12, &f->b), RK_OK);
    cr_assert_eq(eng_seq_new(f->be, 12, &f->c), RK_OK);
    cr_assert_eq(eng_prefill(f->a, tok, 8, NULL, ENG_LOGITS_NONE, NULL), RK_OK);
    cr_assert_eq(eng_kv_export(f->a, 0, 8, f->kv), RK_OK);
    int32_t p8[8] = {0, 1, 2, 3, 4, 5, 6, 7};
    cr_assert_eq(eng_kv_import(f->b, 0, 8, p8, f->kv), RK_OK);
    cr_assert_eq(eng_kv_import(f->c, 0, 8, p8, f->kv), RK_OK);
    for (int i = 0; i < 4; i++)
        f->pos[i] = 8 + i;
    cr_assert_eq(eng_hidden_new(f->be, 4, &f->hb), RK_OK);
    cr_assert_eq(eng_hidden_new(f->be, 4, &f->hc), RK_OK);
    cr_assert_eq(eng_embed(f->be, f->hb, 0, tok + 8, 4), RK_OK);
    cr_assert_eq(eng_embed(f->be, f->hc, 0, tok + 8, 4), RK_OK);
}

static void mass_fixture_close(struct mass_fixture *f)
{
    free(f->kv);
    eng_hidden_free(f->hb);
    eng_hidden_free(f->hc);
    eng_seq_free(f->a);
    eng_seq_free(f->b);
    eng_seq_free(f->c);
    eng_backend_free(f->be);
    eng_model_close(f->m);
}

/* Attention mass by slot group: non-negative, sums to 1 over groups covering every slot,
 * zero on slots a row cannot see, and asking for it changes no hidden state. */
static void conf_attention_mass(conf_backend_ctor ctor, const char *model, double tol)
{
    struct mass_fixture f;
    mass_fixture_open(&f, ctor, model, 8);
    const eng_model_info *mi = eng_model_get_info(f.m);
    size_t d = (size_t)mi->dim;
    const int32_t *pos = f.pos, *sl = f.pos;
    const size_t bounds3[4] = {0, 4, 8, 12}, bounds_late[2] = {9, 12};
    float mass3[4 * 3], late[4];
    eng_attn_groups am3 = {3, bounds3, NULL, NULL, mass3, false}, aml = {1, bounds_late, NULL, NULL, late, false};
    for (int l = 0; l < mi->n_layers; l++) {
        cr_assert_eq(eng_layer_forward_ex(f.b, l, f.hb, 4, pos, sl, NULL, NULL, l % 2 ? &aml : &am3), RK_OK, "%s",
                     rk_error_msg());
        cr_assert_eq(eng_layer_forward(f.c, l, f.hc, 4, pos, sl, NULL, NULL), RK_OK);
        for (int r = 0; r < 4; r++) {
            if (l % 2) {
                /* slots 9..11 hold positions 9..11: invisible to the row at 8, visible after */
                cr_expect(late[r] >= 0.0f && late[r] <= 1.0f + tol, "row %d mass %g", r, late[r]);
                if (r == 0)
                    cr_expect_eq(late[0], 0.0f, "%s: the row at position 8 sees no later slot", model);
                else
                    cr_expect_gt(late[r], 0.0f);
            } else {
                double sum = 0;
                for (int g = 0; g < 3; g++) {
                    cr_expect(mass3[r * 3 + g] >= 0.0f, "negative mass");
                    sum += mass3[r * 3 + g];
                }
                cr_expect(fabs(sum - 1.0) <= tol, "%s: layer %d row %d masses sum to %g", model, l, r, sum);
            }
        }
    }
    float *xb = malloc(4 * d * sizeof(float)), *xc = malloc(4 * d * sizeof(float));
    cr_assert_eq(eng_hidden_read(f.hb, 0, 4, xb), RK_OK);
    cr_assert_eq(eng_hidden_read(f.hc, 0, 4, xc), RK_OK);
    cr_expect(conf_rel_err(xb, xc, 4 * d) <= tol, "asking for masses changed the hidden states");
    const size_t badb[2] = {5, 3};
    eng_attn_groups bad = {1, badb, NULL, NULL, late, false};
    cr_expect_eq(eng_layer_forward_ex(f.c, 0, f.hc, 1, pos, sl, NULL, NULL, &bad), RK_ERR_RANGE);
    free(xb);
    free(xc);
    mass_fixture_close(&f);
}

/* mass_add_rows: the backend adds every row's masses to the caller's running sums, rows in
 * order, giving the very floats of adding up the (n, n_groups) masses on the host row by row
 * (two sequences in the same state, every layer, a sum that starts non-zero). */
static void conf_attention_mass_rows(conf_backend_ctor ctor, const char *model)
{
    struct mass_fixture f;
    mass_fixture_open(&f, ctor, model, 9);
    const eng_model_info *mi = eng_model_get_info(f.m);
    enum { R = 4, G = 5 };
    const size_t bounds[G + 1] = {0, 2, 5, 8, 10, 12};
    float rows[R * G], host[G], dev[G];
    for (int g = 0; g < G; g++)
        host[g] = dev[g] = 0.25f * (float)(g + 1);
    eng_attn_groups per_row = {.n_groups = G, .bounds = bounds, .mass = rows};
    eng_attn_groups added = {.n_groups = G, .bounds = bounds, .mass = dev, .mass_add_rows = true};
    for (int l = 0; l < mi->n_layers; l++) {
        cr_assert_eq(eng_layer_forward_ex(f.b, l, f.hb, R, f.pos, f.pos, NULL, NULL, &per_row), RK_OK, "%s",
                     rk_error_msg());
        cr_assert_eq(eng_layer_forward_ex(f.c, l, f.hc, R, f.pos, f.pos, NULL, NULL, &added), RK_OK, "%s",
                     rk_error_msg());
        for (int r = 0; r < R; r++)
            for (int g = 0; g < G; g++)
                host[g] += rows[r * G + g];
        for (int g = 0; g < G; g++)
            cr_expect_eq(dev[g], host[g], "%s: layer %d group %d: added %.9g, host %.9g", model, l, g, dev[g],
                         host[g]);
    }
    /* the sums moved: the last group (slots 10, 11) is seen by the rows at 10 and 11 only */
    cr_expect_gt(dev[4], 0.25f * 5);
    cr_expect_gt(dev[0], 0.25f);
    mass_fixture_close(&f);
}

/* The attention mass against the CPU backend's on the same cached slots and rows, through
 * every layer: a group per slot (CacheBlend's lookahead) on even layers, three groups with a
 * temperature and a log-scale on odd ones (Cache-Craft, APE), mass_add_rows on the last. The
 * rows go through each backend's own layers, so the bound is the storage's: per row, the L1
 * distance of the two distributions over the groups (a wrong score or a wrong slot moves
 * whole probabilities: masses here are 1/60 and up). Slots a row cannot see have exactly 0 in
 * both. rows: a few take the decode kernel, more than 16 the flash kernel. */
static void conf_attention_mass_twin(conf_backend_ctor ctor, const char *model, size_t rows, double tol)
{
    enum { P = 40, RMAX = 32 };
    cr_assert(rows > 0 && rows <= RMAX);
    eng_model *m = conf_open(model);
    const eng_model_info *mi = eng_model_get_info(m);
    eng_backend *bd, *bc;
    cr_assert_eq(ctor(m, &bd), RK_OK, "%s", rk_error_msg());
    cr_assert_eq(eng_backend_cpu_new(m, 1, &bc), RK_OK, "%s", rk_error_msg());
    const size_t len = P + rows, d = (size_t)mi->dim;
    int32_t tok[P + RMAX], pos[RMAX], p40[P];
    det_tokens(tok, len, mi->vocab, 21);
    for (int i = 0; i < P; i++)
        p40[i] = i;
    for (size_t i = 0; i < rows; i++)
        pos[i] = (int32_t)(P + i);
    float *kv = malloc(eng_kv_floats(m, P) * sizeof(float));
    eng_seq *a = conf_seq(bc, P), *sd = conf_seq(bd, len), *sc = conf_seq(bc, len);
    cr_assert_eq(eng_prefill(a, tok, P, NULL, ENG_LOGITS_NONE, NULL), RK_OK);
    cr_assert_eq(eng_kv_export(a, 0, P, kv), RK_OK);
    cr_assert_eq(eng_kv_import(sd, 0, P, p40, kv), RK_OK, "%s", rk_error_msg());
    cr_assert_eq(eng_kv_import(sc, 0, P, p40, kv), RK_OK);
    eng_hidden *hd, *hc;
    cr_assert_eq(eng_hidden_new(bd, rows, &hd), RK_OK);
    cr_assert_eq(eng_hidden_new(bc, rows, &hc), RK_OK);
    cr_assert_eq(eng_embed(bd, hd, 0, tok + P, rows), RK_OK);
    cr_assert_eq(eng_embed(bc, hc, 0, tok + P, rows), RK_OK);
    size_t slot_bounds[P + RMAX + 1];
    for (size_t g = 0; g <= len; g++)
        slot_bounds[g] = g;
    const size_t b3[4] = {0, 13, P, len};
    const float temp3[3] = {1.0f, 0.7f, 1.3f}, ls3[3] = {0.0f, -0.5f, 0.25f};
    float *md = malloc(rows * len * sizeof(float)), *mc = malloc(rows * len * sizeof(float));
    for (int l = 0; l < mi->n_layers; l++) {
        bool per_slot = l % 2 == 0, added = l == mi->n_layers - 1;
        size_t G = per_slot ? len : 3, nr = added ? 1 : rows;
        eng_attn_groups gd = {G, per_slot ? slot_bounds : b3, per_slot ? NULL : temp3, per_slot ? NULL : ls3, md, added};
        eng_attn_groups gc = gd;
        gc.mass = mc;
        if (added) { /* the same non-zero start in both */
            for (size_t g = 0; g < G; g++)
                md[g] = mc[g] = 0.5f;
        }
        cr_assert_eq(eng_layer_forward_ex(sd, l, hd, rows, pos, pos, NULL, NULL, &gd), RK_OK, "%s: %s", model,
                     rk_error_msg());
        cr_assert_eq(eng_layer_forward_ex(sc, l, hc, rows, pos, pos, NULL, NULL, &gc), RK_OK, "%s", rk_error_msg());
        for (size_t r = 0; r < nr; r++) {
            double l1 = 0, sum = 0;
            for (size_t g = 0; g < G; g++) {
                double x = md[r * G + g], y = mc[r * G + g];
                l1 += fabs(x - y);
                sum += y;
                if (per_slot && !added && g > (size_t)pos[r])
                    cr_expect(x == 0.0f && y == 0.0f, "%s layer %d row %zu: slot %zu is after the row: %g / %g", model,
                              l, r, g, x, y);
            }
            cr_expect(l1 <= tol * (added ? (double)rows : 1.0), "%s layer %d row %zu (%zu rows): masses %.3g apart (L1)",
                      model, l, r, rows, l1);
            cr_expect(sum > 0.5, "%s layer %d: the CPU's masses are empty", model, l);
        }
    }
    float *xd = malloc(rows * d * sizeof(float)), *xc = malloc(rows * d * sizeof(float));
    cr_assert_eq(eng_hidden_read(hd, 0, rows, xd), RK_OK);
    cr_assert_eq(eng_hidden_read(hc, 0, rows, xc), RK_OK);
    cr_expect(conf_rel_err(xd, xc, rows * d) <= tol, "%s: hidden states after the layers differ", model);
    free(xd);
    free(xc);
    free(md);
    free(mc);
    free(kv);
    eng_hidden_free(hd);
    eng_hidden_free(hc);
    eng_seq_free(a);
    eng_seq_free(sd);
    eng_seq_free(sc);
    eng_backend_free(bd);
    eng_backend_free(bc);
    eng_model_close(m);
}

/* Score modifiers on slot groups: temperature 1 and log-scale 0 change nothing; log-scale
 * -inf on a group equals a sequence without those slots; another temperature changes the
 * result. */
static void conf_attention_modifiers(conf_backend_ctor ctor, const char *model, double tol)
{
    eng_model *m = conf_open(model);
    const eng_model_info *mi = eng_model_get_info(m);
    eng_backend *be;
    cr_assert_eq(ctor(m, &be), RK_OK, "%s", rk_error_msg());
    size_t d = (size_t)mi->dim;
    int32_t tok[10], junk[4];
    det_tokens(tok, 10, mi->vocab, 12);
    det_tokens(junk, 4, mi->vocab, 13);
    float *kv = malloc(eng_kv_floats(m, 8) * sizeof(float)), *kvj = malloc(eng_kv_floats(m, 4) * sizeof(float));
    eng_seq *a, *j, *b, *c, *e, *f;
    cr_assert_eq(eng_seq_new(be, 16, &a), RK_OK);
    cr_assert_eq(eng_seq_new(be, 16, &j), RK_OK);
    cr_assert_eq(eng_prefill(a, tok, 8, NULL, ENG_LOGITS_NONE, NULL), RK_OK);
    cr_assert_eq(eng_prefill(j, junk, 4, NULL, ENG_LOGITS_NONE, NULL), RK_OK);
    cr_assert_eq(eng_kv_export(a, 0, 8, kv), RK_OK);
    cr_assert_eq(eng_kv_export(j, 0, 4, kvj), RK_OK);
    int32_t p8[8] = {0, 1, 2, 3, 4, 5, 6, 7}, p4[4] = {0, 1, 2, 3};
    eng_seq *all[4];
    for (int i = 0; i < 4; i++) {
        cr_assert_eq(eng_seq_new(be, 16, &all[i]), RK_OK);
        cr_assert_eq(eng_kv_import(all[i], 0, 8, p8, kv), RK_OK);
    }
    b = all[0]; /* + junk in slots 8..11, hidden by log-scale -inf */
    c = all[1]; /* without junk */
    e = all[2]; /* + junk, temperature 1 and log-scale 0: like plain attention over all */
    f = all[3]; /* + junk, plain */
    cr_assert_eq(eng_kv_import(b, 8, 4, p4, kvj), RK_OK);
    cr_assert_eq(eng_kv_import(e, 8, 4, p4, kvj), RK_OK);
    cr_assert_eq(eng_kv_import(f, 8, 4, p4, kvj), RK_OK);
    int32_t qpos[2] = {8, 9}, slots_far[2] = {12, 13}, slots_near[2] = {8, 9};
    eng_hidden *h[4];
    for (int i = 0; i < 4; i++) {
        cr_assert_eq(eng_hidden_new(be, 2, &h[i]), RK_OK);
        cr_assert_eq(eng_embed(be, h[i], 0, tok + 8, 2), RK_OK);
    }
    const size_t bj[2] = {8, 12}, ball[3] = {0, 8, 12};
    const float ninf[1] = {-INFINITY}, one[2] = {1.0f, 1.0f}, zero[2] = {0.0f, 0.0f};
    eng_attn_groups hide = {1, bj, NULL, ninf, NULL, false}, ident = {2, ball, one, zero, NULL, false};
    for (int l = 0; l < mi->n_layers; l++) {
        cr_assert_eq(eng_layer_forward_ex(b, l, h[0], 2, qpos, slots_far, NULL, NULL, &hide), RK_OK, "%s",
                     rk_error_msg());
        cr_assert_eq(eng_layer_forward(c, l, h[1], 2, qpos, slots_near, NULL, NULL), RK_OK);
        cr_assert_eq(eng_layer_forward_ex(e, l, h[2], 2, qpos, slots_far, NULL, NULL, &ident), RK_OK);
        cr_assert_eq(eng_layer_forward(f, l, h[3], 2, qpos, slots_far, NULL, NULL), RK_OK);
    }
    float *x[4];
    for (int i = 0; i < 4; i++) {
        x[i] = malloc(2 * d * sizeof(float));
        cr_assert_eq(eng_hidden_read(h[i], 0, 2, x[i]), RK_OK);
    }
    cr_expect(conf_rel_err(x[0], x[1], 2 * d) <= tol, "%s: hidden group != absent slots", model);
    cr_expect(conf_rel_err(x[2], x[3], 2 * d) <= tol, "%s: identity modifiers changed the result", model);
    cr_expect(conf_rel_err(x[3], x[1], 2 * d) > 1e-3, "%s: the junk slots should matter when visible", model);
    /* a temperature on the junk group changes the result */
    eng_seq *g;
    eng_hidden *hg;
    cr_assert_eq(eng_seq_new(be, 16, &g), RK_OK);
    cr_assert_eq(eng_kv_import(g, 0, 8, p8, kv), RK_OK);
    cr_assert_eq(eng_kv_import(g, 8, 4, p4, kvj), RK_OK);
    cr_assert_eq(eng_hidden_new(be, 2, &hg), RK_OK);
    cr_assert_eq(eng_embed(be, hg, 0, tok + 8, 2), RK_OK);
    const float temp[1] = {0.5f};
    eng_attn_groups hot = {1, bj, temp, NULL, NULL, false};
    for (int l = 0; l < mi->n_layers; l++)
        cr_assert_eq(eng_layer_forward_ex(g, l, hg, 2, qpos, slots_far, NULL, NULL, &hot), RK_OK);
    float *xg = malloc(2 * d * sizeof(float));
    cr_assert_eq(eng_hidden_read(hg, 0, 2, xg), RK_OK);
    cr_expect(conf_rel_err(xg, x[3], 2 * d) > 1e-4, "%s: temperature had no effect", model);
    const float badt[1] = {0.0f}, badl[1] = {INFINITY};
    eng_attn_groups bt = {1, bj, badt, NULL, NULL, false}, bl = {1, bj, NULL, badl, NULL, false};
    cr_expect_eq(eng_layer_forward_ex(g, 0, hg, 1, qpos, slots_far, NULL, NULL, &bt), RK_ERR_INVALID);
    cr_expect_eq(eng_layer_forward_ex(g, 0, hg, 1, qpos, slots_far, NULL, NULL, &bl), RK_ERR_INVALID);
    for (int i = 0; i < 4; i++) {
        free(x[i]);
        eng_hidden_free(h[i]);
        eng_seq_free(all[i]);
    }
    free(xg);
    free(kv);
    free(kvj);
    eng_hidden_free(hg);
    eng_seq_free(g);
    eng_seq_free(a);
    eng_seq_free(j);
    eng_backend_free(be);
    eng_model_close(m);
}

/* Layer-range export/import: a layer range is the matching slice of the full block, and
 * importing layer by layer equals importing all layers at once. */
static void conf_kv_layers(conf_backend_ctor ctor, const char *model, double tol)
{
    eng_model *m = conf_open(model);
    const eng_model_info *mi = eng_model_get_info(m);
    eng_backend *be;
    cr_assert_eq(ctor(m, &be), RK_OK, "%s", rk_error_msg());
    size_t n = 6, V = (size_t)mi->vocab, F = eng_kv_floats(m, n), per = F / (size_t)mi->n_layers;
    int32_t tok[6], pos[6], next = 4;
    det_tokens(tok, n, mi->vocab, 14);
    for (size_t i = 0; i < n; i++)
        pos[i] = 3 + (int32_t)i;
    float *full = malloc(F * sizeof(float)), *part = malloc(F * sizeof(float));
    float *la = malloc(V * sizeof(float)), *lb = malloc(V * sizeof(float));
    eng_seq *a, *b, *c;
    cr_assert_eq(eng_seq_new(be, 16, &a), RK_OK);
    cr_assert_eq(eng_seq_new(be, 16, &b), RK_OK);
    cr_assert_eq(eng_seq_new(be, 16, &c), RK_OK);
    cr_assert_eq(eng_prefill(a, tok, n, NULL, ENG_LOGITS_NONE, NULL), RK_OK);
    cr_assert_eq(eng_kv_export(a, 0, n, full), RK_OK);
    int mid = mi->n_layers / 2, cnt = mi->n_layers - mid;
    cr_assert_eq(eng_kv_export_layers(a, mid, cnt, 0, n, part), RK_OK, "%s", rk_error_msg());
    cr_expect(conf_rel_err(part, full + (size_t)mid * per, (size_t)cnt * per) <= tol, "layer slice differs");
    cr_assert_eq(eng_kv_import(b, 0, n, pos, full), RK_OK);
    for (int l = mi->n_layers - 1; l >= 0; l--) /* any order */
        cr_assert_eq(eng_kv_import_layers(c, l, 1, 0, n, pos, full + (size_t)l * per), RK_OK, "%s", rk_error_msg());
    cr_assert_eq(eng_decode(be, &b, &next, 1, la), RK_OK);
    cr_assert_eq(eng_decode(be, &c, &next, 1, lb), RK_OK);
    cr_expect(conf_rel_err(lb, la, V) <= tol, "%s: layer-by-layer import differs", model);
    cr_expect_eq(eng_kv_export_layers(a, mi->n_layers, 1, 0, n, part), RK_ERR_RANGE);
    cr_expect_eq(eng_kv_import_layers(c, -1, 1, 0, n, pos, full), RK_ERR_RANGE);
    free(full);
    free(part);
    free(la);
    free(lb);
    eng_seq_free(a);
    eng_seq_free(b);
    eng_seq_free(c);
    eng_backend_free(be);
    eng_model_close(m);
}

/* KV blocks: a block made from exported KV and imported (at shifted slots and positions) gives
 * the sequence eng_kv_import of the same floats gives: positions, exported KV, next logits
 * (bit for bit when tol is 0); one block serves several sequences; eng_kvblock_read returns
 * the floats, whole or by layer range; bad calls are refused and change nothing. */
/* eng_kv_deviation: per slot, the squared distance of two sequences' pre-RoPE K (and V) at
 * one layer, against the same computed from their exports; bad calls refused. */
static void conf_kv_deviation(conf_backend_ctor ctor, const char *model, double tol)
{
    eng_model *m = conf_open(model);
    const eng_model_info *mi = eng_model_get_info(m);
    eng_backend *be, *other;
    cr_assert_eq(ctor(m, &be), RK_OK, "%s", rk_error_msg());
    cr_assert_eq(ctor(m, &other), RK_OK, "%s", rk_error_msg());
    size_t n = 24, w = (size_t)mi->n_kv_heads * (size_t)mi->head_dim;
    int32_t ta[24], tb[24];
    det_tokens(ta, n, mi->vocab, 31);
    memcpy(tb, ta, sizeof(ta));
    det_tokens(tb + 8, 4, mi->vocab, 32); /* rows 8..11 differ, and every row after them through attention */
    eng_seq *a = conf_seq(be, n), *b = conf_seq(be, n), *far = conf_seq(other, n);
    cr_assert_eq(eng_prefill(a, ta, n, NULL, ENG_LOGITS_NONE, NULL), RK_OK);
    cr_assert_eq(eng_prefill(b, tb, n, NULL, ENG_LOGITS_NONE, NULL), RK_OK);
    float *xa = malloc(2 * n * w * sizeof(float)), *xb = malloc(2 * n * w * sizeof(float));
    float got[24];
    int layer = mi->n_layers / 2;
    cr_assert_eq(eng_kv_export_layers(a, layer, 1, 0, n, xa), RK_OK);
    cr_assert_eq(eng_kv_export_layers(b, layer, 1, 0, n, xb), RK_OK);
    for (int with_v = 0; with_v < 2; with_v++) {
        size_t slot0 = 2, cnt = n - 2;
        cr_assert_eq(eng_kv_deviation(a, b, layer, slot0, cnt, with_v, got), RK_OK, "%s", rk_error_msg());
        for (size_t i = 0; i < cnt; i++) {
            double want = 0;
            for (int kv = 0; kv <= with_v; kv++)
                for (size_t j = 0; j < w; j++) {
                    double d = (double)xa[((size_t)kv * n + slot0 + i) * w + j] - (double)xb[((size_t)kv * n + slot0 + i) * w + j];
                    want += d * d;
                }
            if (slot0 + i < 8) /* before the changed tokens: the same K and V */
                cr_expect(got[i] == 0.0f, "%s: slot %zu: %g, want 0", model, slot0 + i, (double)got[i]);
            else
                cr_expect(fabs((double)got[i] - want) <= tol * want + 1e-12, "%s: slot %zu (v %d): %g, want %g", model,
                          slot0 + i, with_v, (double)got[i], want);
        }
        cr_expect(got[8 - slot0] > 0.0f, "%s: a changed token deviates", model);
    }
    cr_expect_eq(eng_kv_deviation(a, far, layer, 0, n, false, got), RK_ERR_INVALID, "another backend");
    cr_expect_eq(eng_kv_deviation(a, b, mi->n_layers, 0, n, false, got), RK_ERR_RANGE);
    cr_expect_eq(eng_kv_deviation(a, b, layer, 1, n, false, got), RK_ERR_RANGE, "past the length");
    cr_expect_eq(eng_kv_deviation(a, b, layer, 0, n, false, NULL), RK_ERR_INVALID);
    free(xa);
    free(xb);
    eng_seq_free(a);
    eng_seq_free(b);
    eng_seq_free(far);
    eng_backend_free(be);
    eng_backend_free(other);
    eng_model_close(m);
}

/* eng_kv_import_blocks_layers: three blocks of different lengths at spread slots and shifted
 * positions in one call (all layers; then layer 0 and the rest in two calls) leave a sequence
 * bit for bit equal to one import per block; bad calls are rejected before anything changes. */
static void conf_kvblocks(conf_backend_ctor ctor, const char *model)
{
    eng_model *m = conf_open(model);
    const eng_model_info *mi = eng_model_get_info(m);
    eng_backend *be, *other;
    cr_assert_eq(ctor(m, &be), RK_OK, "%s", rk_error_msg());
    cr_assert_eq(ctor(m, &other), RK_OK, "%s", rk_error_msg());
    enum { NB = 3 };
    const size_t len[NB] = {7, 12, 5}, slot0[NB] = {20, 2, 40};
    int32_t tok[12], posv[NB][12];
    const int32_t *pos[NB];
    eng_kvblock *blk[NB], *far;
    eng_seq *src = conf_seq(be, 16), *a = conf_seq(be, 64), *b = conf_seq(be, 64), *c = conf_seq(be, 64);
    float *kv = malloc(eng_kv_floats(m, 12) * sizeof(float));
    for (int i = 0; i < NB; i++) {
        det_tokens(tok, len[i], mi->vocab, 40 + i);
        cr_assert_eq(eng_seq_truncate(src, 0), RK_OK);
        cr_assert_eq(eng_prefill(src, tok, len[i], NULL, ENG_LOGITS_NONE, NULL), RK_OK);
        cr_assert_eq(eng_kv_export(src, 0, len[i], kv), RK_OK);
        cr_assert_eq(eng_kvblock_new(be, len[i], kv, &blk[i]), RK_OK, "%s", rk_error_msg());
        for (size_t t = 0; t < len[i]; t++)
            posv[i][t] = (int32_t)(30 * i + 2 * t + 1); /* distinct, not in slot order */
        pos[i] = posv[i];
    }
    cr_assert_eq(eng_kvblock_new(other, len[2], kv, &far), RK_OK);
    const eng_kvblock *bl[NB] = {blk[0], blk[1], blk[2]}, *bad[NB] = {blk[0], far, blk[2]};
    cr_expect_eq(eng_kv_import_blocks_layers(a, NB, slot0, pos, bad, 0, mi->n_layers), RK_ERR_INVALID);
    cr_expect_eq(eng_kv_import_blocks_layers(a, NB, slot0, pos, bl, 0, mi->n_layers + 1), RK_ERR_RANGE);
    cr_expect_eq(eng_kv_import_blocks_layers(a, NB, slot0, NULL, bl, 0, 1), RK_ERR_INVALID);
    cr_expect_eq(eng_seq_len(a), 0, "rejected calls change nothing");
    cr_expect_eq(eng_kv_import_blocks_layers(a, 0, NULL, NULL, NULL, 0, 1), RK_OK);

    cr_assert_eq(eng_kv_import_blocks_layers(a, NB, slot0, pos, bl, 0, mi->n_layers), RK_OK, "%s", rk_error_msg());
    for (int i = NB - 1; i >= 0; i--)
        cr_assert_eq(eng_kv_import_block(b, slot0[i], pos[i], blk[i]), RK_OK);
    cr_assert_eq(eng_kv_import_blocks_layers(c, NB, slot0, pos, bl, 0, 1), RK_OK);
    if (mi->n_layers > 1)
        cr_assert_eq(eng_kv_import_blocks_layers(c, NB, slot0, pos, bl, 1, mi->n_layers - 1), RK_OK);
    cr_expect_eq(eng_seq_len(a), eng_seq_len(b));
    cr_expect_eq(eng_seq_len(c), eng_seq_len(b));
    float *ka = malloc(eng_kv_floats(m, 12) * sizeof(float)), *kb = malloc(eng_kv_floats(m, 12) * sizeof(float));
    for (int i = 0; i < NB; i++) {
        for (size_t t = 0; t < len[i]; t++) {
            cr_expect_eq(eng_seq_pos(a, slot0[i] + t), pos[i][t]);
            cr_expect_eq(eng_seq_pos(c, slot0[i] + t), pos[i][t]);
        }
        size_t F = eng_kv_floats(m, len[i]);
        cr_assert_eq(eng_kv_export(b, slot0[i], len[i], kb), RK_OK);
        cr_assert_eq(eng_kv_export(a, slot0[i], len[i], ka), RK_OK);
        cr_expect(memcmp(ka, kb, F * sizeof(float)) == 0, "%s: block %d differs (one call)", model, i);
        cr_assert_eq(eng_kv_export(c, slot0[i], len[i], ka), RK_OK);
        cr_expect(memcmp(ka, kb, F * sizeof(float)) == 0, "%s: block %d differs (by layers)", model, i);
    }
    /* and the next token sees the same cache (rotated K included) */
    int32_t next = 5;
    size_t V = (size_t)mi->vocab;
    float *la = malloc(V * sizeof(float)), *lb = malloc(V * sizeof(float));
    cr_assert_eq(eng_decode(be, &a, &next, 1, la), RK_OK, "%s", rk_error_msg());
    cr_assert_eq(eng_decode(be, &b, &next, 1, lb), RK_OK, "%s", rk_error_msg());
    cr_expect(memcmp(la, lb, V * sizeof(float)) == 0, "%s: logits after the blocks differ", model);
    free(la);
    free(lb);
    free(ka);
    free(kb);
    free(kv);
    for (int i = 0; i < NB; i++)
        eng_kvblock_free(blk[i]);
    eng_kvblock_free(far);
    eng_seq_free(src);
    eng_seq_free(a);
    eng_seq_free(b);
    eng_seq_free(c);
    eng_backend_free(be);
    eng_backend_free(other);
    eng_model_close(m);
}

static void conf_kvblock(conf_backend_ctor ctor, const char *model, double tol)
{
    eng_model *m = conf_open(model);
    const eng_model_info *mi = eng_model_get_info(m);
    eng_backend *be, *other;
    cr_assert_eq(ctor(m, &be), RK_OK, "%s", rk_error_msg());
    cr_assert_eq(ctor(m, &other), RK_OK, "%s", rk_error_msg());
    size_t n = 10, slot0 = 3, V = (size_t)mi->vocab, F = eng_kv_floats(m, n), per = F / (size_t)mi->n_layers;
    int32_t tok[10], pos[10], next;
    det_tokens(tok, n, mi->vocab, 21);
    det_tokens(&next, 1, mi->vocab, 22);
    for (size_t i = 0; i < n; i++)
        pos[i] = 5 + 2 * (int32_t)i; /* shifted and spread: RoPE at positions other than the export's */
    float *kv = malloc(F * sizeof(float)), *ka = malloc(F * sizeof(float)), *kb = malloc(F * sizeof(float));
    float *la = malloc(V * sizeof(float)), *lb = malloc(V * sizeof(float));
    eng_seq *src = conf_seq(be, 32), *a = conf_seq(be, 32), *b = conf_seq(be, 32), *c = conf_seq(be, 32);
    eng_seq *far = conf_seq(other, 32);
    cr_assert_eq(eng_prefill(src, tok, n, NULL, ENG_LOGITS_NONE, NULL), RK_OK);
    cr_assert_eq(eng_kv_export(src, 0, n, kv), RK_OK);

    eng_kvblock *blk;
    cr_assert_eq(eng_kvblock_new(be, n, kv, &blk), RK_OK, "%s", rk_error_msg());
    cr_expect_eq(eng_kvblock_tokens(blk), n);
    cr_expect_eq(eng_kvblock_backend(blk), be);
    cr_expect_geq(eng_kvblock_bytes(blk), F * 2, "at least 16 bits a value are held");
    memset(kv, 0x7f, F * sizeof(float)); /* the block is a copy: later changes to kv do not reach it */
    cr_assert_eq(eng_kv_export(src, 0, n, kv), RK_OK);

    cr_assert_eq(eng_kv_import(a, slot0, n, pos, kv), RK_OK, "%s", rk_error_msg());
    cr_assert_eq(eng_kv_import_block(b, slot0, pos, blk), RK_OK, "%s", rk_error_msg());
    cr_assert_eq(eng_kv_import_block(c, slot0, pos, blk), RK_OK, "one block, many sequences");
    cr_expect_eq(eng_seq_len(b), eng_seq_len(a));
    for (size_t i = 0; i < eng_seq_len(a); i++)
        cr_expect_eq(eng_seq_pos(b, i), eng_seq_pos(a, i), "slot %zu", i);
    cr_expect_eq(eng_seq_next_pos(b), eng_seq_next_pos(a));
    cr_assert_eq(eng_kv_export(a, slot0, n, ka), RK_OK);
    cr_assert_eq(eng_kv_export(b, slot0, n, kb), RK_OK);
    if (tol == 0)
        cr_expect(memcmp(ka, kb, F * sizeof(float)) == 0, "%s: exported KV differs", model);
    else
        cr_expect(conf_rel_err(kb, ka, F) <= tol, "%s: exported KV differs", model);
    cr_assert_eq(eng_decode(be, &a, &next, 1, la), RK_OK, "%s", rk_error_msg());
    cr_assert_eq(eng_decode(be, &b, &next, 1, lb), RK_OK, "%s", rk_error_msg());
    if (tol == 0)
        cr_expect(memcmp(la, lb, V * sizeof(float)) == 0, "%s: logits after the block differ", model);
    else
        cr_expect(conf_rel_err(lb, la, V) <= tol, "%s: logits after the block differ", model);
    cr_assert_eq(eng_decode(be, &c, &next, 1, lb), RK_OK);
    cr_expect(conf_rel_err(lb, la, V) <= tol, "%s: the block's second import differs", model);

    /* by layer ranges, last layer first: the same sequence as one import of the block */
    eng_seq *d = conf_seq(be, 32);
    for (int hi = mi->n_layers, step = 1; hi > 0; step++) {
        int lo = hi - step < 0 ? 0 : hi - step;
        cr_assert_eq(eng_kv_import_block_layers(d, slot0, pos, blk, lo, hi - lo), RK_OK, "%s", rk_error_msg());
        hi = lo;
    }
    cr_expect_eq(eng_seq_len(d), slot0 + n);
    cr_assert_eq(eng_kv_export(d, slot0, n, ka), RK_OK);
    cr_assert_eq(eng_kv_export(b, slot0, n, kb), RK_OK);
    cr_expect(memcmp(ka, kb, F * sizeof(float)) == 0, "%s: layer-range imports differ from one import", model);
    cr_expect_eq(eng_kv_import_block_layers(d, slot0, pos, blk, mi->n_layers, 1), RK_ERR_RANGE);
    cr_expect_eq(eng_kv_import_block_layers(d, slot0, pos, blk, -1, 2), RK_ERR_RANGE);
    cr_expect_eq(eng_kv_import_block_layers(d, slot0, pos, blk, 0, 0), RK_ERR_RANGE);
    eng_seq_free(d);

    /* read: every layer, then a range */
    cr_assert_eq(eng_kvblock_read(blk, 0, mi->n_layers, kb), RK_OK, "%s", rk_error_msg());
    cr_expect(tol == 0 ? memcmp(kb, kv, F * sizeof(float)) == 0 : conf_rel_err(kb, kv, F) <= tol, "read all");
    int mid = mi->n_layers / 2, cnt = mi->n_layers - mid;
    cr_assert_eq(eng_kvblock_read(blk, mid, cnt, kb), RK_OK);
    cr_expect(conf_rel_err(kb, kv + (size_t)mid * per, (size_t)cnt * per) <= tol, "read layers [%d, +%d)", mid, cnt);

    /* bad calls: clear errors, nothing changed */
    eng_kvblock *none = (eng_kvblock *)&none;
    cr_expect_eq(eng_kvblock_new(be, 0, kv, &none), RK_ERR_INVALID);
    cr_expect_null(none, "no block on failure");
    cr_expect_eq(eng_kvblock_new(be, n, NULL, &none), RK_ERR_INVALID);
    cr_expect_eq(eng_kvblock_new(NULL, n, kv, &none), RK_ERR_INVALID);
    cr_expect_eq(eng_kvblock_new(be, (size_t)mi->max_seq + 1, kv, &none), RK_ERR_RANGE);
    cr_expect_eq(eng_kvblock_read(blk, mi->n_layers, 1, kb), RK_ERR_RANGE);
    cr_expect_eq(eng_kvblock_read(blk, -1, 1, kb), RK_ERR_RANGE);
    cr_expect_eq(eng_kvblock_read(blk, 0, 1, NULL), RK_ERR_INVALID);
    cr_expect_eq(eng_kv_import_block(far, 0, pos, blk), RK_ERR_INVALID, "a block of another backend");
    cr_expect_eq(eng_seq_len(far), 0);
    eng_seq *small = conf_seq(be, n + 1);
    cr_expect_eq(eng_kv_import_block(small, 2, pos, blk), RK_ERR_RANGE, "past the capacity");
    int32_t badpos[10];
    memcpy(badpos, pos, sizeof(badpos));
    badpos[4] = -1;
    cr_expect_eq(eng_kv_import_block(small, 0, badpos, blk), RK_ERR_RANGE, "a negative position");
    badpos[4] = mi->max_seq;
    cr_expect_eq(eng_kv_import_block(small, 0, badpos, blk), RK_ERR_RANGE, "a position past the context");
    cr_expect_eq(eng_kv_import_block(small, 0, NULL, blk), RK_ERR_INVALID);
    cr_expect_eq(eng_kv_import_block(small, 0, pos, NULL), RK_ERR_INVALID);
    cr_expect_eq(eng_seq_len(small), 0, "rejected imports leave the sequence alone");
    cr_expect_eq(eng_kv_import_block(small, 1, pos, blk), RK_OK, "%s", rk_error_msg());
    cr_expect_eq(eng_seq_len(small), n + 1);
    eng_kvblock_free(NULL);

    eng_kvblock_free(blk);
    free(kv);
    free(ka);
    free(kb);
    free(la);
    free(lb);
    eng_seq_free(src);
    eng_seq_free(a);
    eng_seq_free(b);
    eng_seq_free(c);
    eng_seq_free(far);
    eng_seq_free(small);
    eng_backend_free(other);
    eng_backend_free(be);
    eng_model_close(m);
}

#endif
