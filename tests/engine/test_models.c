/*
 * Tests of model loading against real trained weights: the golden stories260K text, an
 * independent scalar reference forward pass (written here, straight from the llama2.c format
 * description, strictly sequential float sums as llama2.c computes them), babyllama105, the
 * converted Hugging Face folders, and the synthetic models written to disk.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "greedy.h"
#include "ragkv/engine.h"
#include "ragkv/tokenizer.h"
#include "testutil.h"

/* From ../shared/models/README.md (the model's own documentation): greedy, prompt
 * "Once upon a time" with BOS. */
static const char golden[] = "Once upon a time, there was a little girl named Lily. She loved to play outside in the "
                             "park. One day, she saw a big, red ball. She wanted to play with it, but it was too high.";

/* Greedy generation (greedy.h) on a fresh 2-thread CPU backend. */
static size_t greedy(eng_model *m, const int32_t *prompt, size_t np, size_t steps, int32_t *out)
{
    eng_backend *be;
    cr_assert_eq(eng_backend_cpu_new(m, 2, &be), RK_OK);
    size_t n = test_greedy(be, prompt, np, steps, out);
    eng_backend_free(be);
    return n;
}

static char *detok(eng_tokenizer *tk, const int32_t *t, size_t n)
{
    size_t cap = 16 * n + 1, len = 0;
    char *s = malloc(cap);
    for (size_t i = 1; i < n; i++) {
        size_t l;
        const char *p = eng_tokenizer_decode(tk, t[i - 1], t[i], &l);
        cr_assert_not_null(p);
        cr_assert_lt(len + l, cap);
        memcpy(s + len, p, l);
        len += l;
    }
    s[len] = 0;
    return s;
}

/* ---- an independent scalar reference (llama2.c arithmetic, sequential sums) ------------- */

typedef struct ref_model {
    int dim, hidden, L, H, KVH, V, seq, hs;
    float *data;
    const float *emb, *rms_att, *wq, *wk, *wv, *wo, *rms_ffn, *w1, *w2, *w3, *rms_final, *wcls;
} ref_model;

static void ref_load(ref_model *r, const char *path)
{
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f);
    int32_t h[7];
    cr_assert_eq(fread(h, 4, 7, f), 7);
    r->dim = h[0], r->hidden = h[1], r->L = h[2], r->H = h[3], r->KVH = h[4], r->V = abs(h[5]), r->seq = h[6];
    r->hs = r->dim / r->H;
    fseek(f, 0, SEEK_END);
    long sz = ftell(f) - 28;
    fseek(f, 28, SEEK_SET);
    r->data = malloc((size_t)sz);
    cr_assert_eq(fread(r->data, 1, (size_t)sz, f), (size_t)sz);
    fclose(f);
    size_t d = (size_t)r->dim, kv = (size_t)(r->KVH * r->hs), L = (size_t)r->L, F = (size_t)r->hidden;
    const float *p = r->data;
    r->emb = p, p += (size_t)r->V * d;
    r->rms_att = p, p += L * d;
    r->wq = p, p += L * d * d;
    r->wk = p, p += L * d * kv;
    r->wv = p, p += L * d * kv;
    r->wo = p, p += L * d * d;
    r->rms_ffn = p, p += L * d;
    r->w1 = p, p += L * F * d;
    r->w2 = p, p += L * d * F;
    r->w3 = p, p += L * F * d;
    r->rms_final = p, p += d;
    p += (size_t)r->seq * (size_t)r->hs;
    r->wcls = h[5] > 0 ? r->emb : p;
}

static void ref_mv(float *y, const float *x, const float *w, int n, int d)
{
    for (int i = 0; i < d; i++) {
        float v = 0.0f;
        for (int j = 0; j < n; j++)
            v += w[(size_t)i * n + j] * x[j];
        y[i] = v;
    }
}

static void ref_norm(float *o, const float *x, const float *w, int n)
{
    float ss = 0.0f;
    for (int j = 0; j < n; j++)
        ss += x[j] * x[j];
    ss = 1.0f / sqrtf(ss / n + 1e-5f);
    for (int j = 0; j < n; j++)
        o[j] = w[j] * (ss * x[j]);
}

/* Greedy tokens from the reference: the token at every position, as greedy() above. */
static size_t ref_greedy(const ref_model *r, const int32_t *prompt, size_t np, size_t steps, int32_t *out)
{
    int d = r->dim, kvd = r->KVH * r->hs, F = r->hidden, hs = r->hs;
    float *x = calloc((size_t)d, 4), *xb = calloc((size_t)d, 4), *xb2 = calloc((size_t)d, 4), *q = calloc((size_t)d, 4);
    float *k = calloc((size_t)kvd, 4), *v = calloc((size_t)kvd, 4), *hb = calloc((size_t)F, 4),
          *hb2 = calloc((size_t)F, 4), *att = calloc(steps, 4), *logits = calloc((size_t)r->V, 4);
    float *kc = calloc((size_t)r->L * steps * kvd, 4), *vc = calloc((size_t)r->L * steps * kvd, 4);
    memcpy(out, prompt, np * sizeof(int32_t));
    size_t n = np;
    int32_t tok = prompt[0];
    for (size_t pos = 0; pos < steps; pos++) {
        memcpy(x, r->emb + (size_t)tok * d, (size_t)d * 4);
        for (int l = 0; l < r->L; l++) {
            ref_norm(xb, x, r->rms_att + (size_t)l * d, d);
            ref_mv(q, xb, r->wq + (size_t)l * d * d, d, d);
            ref_mv(k, xb, r->wk + (size_t)l * d * kvd, d, kvd);
            ref_mv(v, xb, r->wv + (size_t)l * d * kvd, d, kvd);
            for (int i = 0; i < d; i += 2) {
                float fr = 1.0f / powf(10000.0f, (float)(i % hs) / (float)hs), a = pos * fr;
                float c = cosf(a), s = sinf(a);
                float q0 = q[i], q1 = q[i + 1];
                q[i] = q0 * c - q1 * s, q[i + 1] = q0 * s + q1 * c;
                if (i < kvd) {
                    float k0 = k[i], k1 = k[i + 1];
                    k[i] = k0 * c - k1 * s, k[i + 1] = k0 * s + k1 * c;
                }
            }
            float *kl = kc + ((size_t)l * steps) * kvd, *vl = vc + ((size_t)l * steps) * kvd;
            memcpy(kl + pos * kvd, k, (size_t)kvd * 4);
            memcpy(vl + pos * kvd, v, (size_t)kvd * 4);
            for (int h = 0; h < r->H; h++) {
                int kh = h / (r->H / r->KVH);
                float mx = -INFINITY, sum = 0.0f;
                for (size_t t = 0; t <= pos; t++) {
                    float sc = 0.0f;
                    for (int i = 0; i < hs; i++)
                        sc += q[h * hs + i] * kl[t * kvd + (size_t)kh * hs + i];
                    att[t] = sc / sqrtf((float)hs);
                    mx = att[t] > mx ? att[t] : mx;
                }
                for (size_t t = 0; t <= pos; t++) {
                    att[t] = expf(att[t] - mx);
                    sum += att[t];
                }
                for (int i = 0; i < hs; i++)
                    xb[h * hs + i] = 0.0f;
                for (size_t t = 0; t <= pos; t++)
                    for (int i = 0; i < hs; i++)
                        xb[h * hs + i] += att[t] / sum * vl[t * kvd + (size_t)kh * hs + i];
            }
            ref_mv(xb2, xb, r->wo + (size_t)l * d * d, d, d);
            for (int i = 0; i < d; i++)
                x[i] += xb2[i];
            ref_norm(xb, x, r->rms_ffn + (size_t)l * d, d);
            ref_mv(hb, xb, r->w1 + (size_t)l * F * d, d, F);
            ref_mv(hb2, xb, r->w3 + (size_t)l * F * d, d, F);
            for (int i = 0; i < F; i++)
                hb[i] = hb[i] * (1.0f / (1.0f + expf(-hb[i]))) * hb2[i];
            ref_mv(xb, hb, r->w2 + (size_t)l * d * F, F, d);
            for (int i = 0; i < d; i++)
                x[i] += xb[i];
        }
        ref_norm(x, x, r->rms_final, d);
        ref_mv(logits, x, r->wcls, d, r->V);
        int32_t next;
        if (pos + 1 < np) {
            next = prompt[pos + 1];
        } else {
            next = 0;
            for (int i = 1; i < r->V; i++)
                if (logits[i] > logits[next])
                    next = i;
            if (next == 1)
                break;
            out[n++] = next;
        }
        tok = next;
    }
    free(x), free(xb), free(xb2), free(q), free(k), free(v), free(hb), free(hb2), free(att), free(logits);
    free(kc), free(vc);
    return n;
}

static void check_against_reference(const char *model, const char *tokfile, size_t steps)
{
    const char *path = rk_test_model_path(model);
    if (!path)
        cr_skip_test("skipped: no real model (%s)", model);
    char mp[4400], tp[4400];
    snprintf(mp, sizeof(mp), "%s", path);
    snprintf(tp, sizeof(tp), "%s", rk_test_model_path(tokfile));
    eng_model *m;
    eng_tokenizer *tk;
    cr_assert_eq(eng_model_open(mp, &m), RK_OK, "%s", rk_error_msg());
    cr_assert_eq(eng_tokenizer_open(tp, eng_model_get_info(m)->vocab, &tk), RK_OK, "%s", rk_error_msg());
    int32_t prompt[64], *a = malloc((steps + 1) * 4), *b = malloc((steps + 1) * 4);
    size_t np;
    cr_assert_eq(eng_tokenizer_encode(tk, "Once upon a time", true, prompt, 64, &np), RK_OK);
    size_t na = greedy(m, prompt, np, steps, a);
    ref_model r;
    ref_load(&r, mp);
    size_t nb = ref_greedy(&r, prompt, np, steps, b);
    cr_assert_eq(na, nb, "%s: engine made %zu tokens, the reference %zu", model, na, nb);
    for (size_t i = 0; i < na; i++)
        cr_assert_eq(a[i], b[i], "%s: token %zu: engine %d, reference %d", model, i, a[i], b[i]);
    free(r.data);
    free(a);
    free(b);
    eng_tokenizer_free(tk);
    eng_model_close(m);
}

Test(models, stories260k_golden_text)
{
    const char *path = rk_test_model_path("stories260K.bin");
    if (!path)
        cr_skip_test("skipped: no real model (stories260K.bin)");
    eng_model *m;
    eng_tokenizer *tk;
    cr_assert_eq(eng_model_open(path, &m), RK_OK, "%s", rk_error_msg());
    cr_assert_eq(eng_tokenizer_open(rk_test_model_path("tok512.bin"), 512, &tk), RK_OK, "%s", rk_error_msg());
    const eng_model_info *mi = eng_model_get_info(m);
    cr_expect_eq(mi->dim, 64);
    cr_expect_eq(mi->hidden, 172);
    cr_expect_eq(mi->n_layers, 5);
    cr_expect_eq(mi->n_heads, 8);
    cr_expect_eq(mi->n_kv_heads, 4);
    cr_expect_eq(mi->head_dim, 8);
    cr_expect_eq(mi->vocab, 512);
    cr_expect_eq(mi->max_seq, 512);
    cr_expect(mi->tied_embeddings);
    cr_expect_eq(mi->rope, ENG_ROPE_INTERLEAVED);
    cr_expect_eq(mi->format, ENG_FORMAT_LLAMA2C);
    cr_expect(strncmp(mi->id, "stories260K-", 12) == 0, "id %s", mi->id);
    int32_t prompt[32], out[257];
    size_t np;
    cr_assert_eq(eng_tokenizer_encode(tk, "Once upon a time", true, prompt, 32, &np), RK_OK);
    cr_assert_eq(prompt[0], 1, "BOS first");
    size_t n = greedy(m, prompt, np, 256, out);
    char *text = detok(tk, out, n);
    cr_expect(strncmp(text, golden, strlen(golden)) == 0, "generated:\n%s\nexpected to start with:\n%s", text, golden);
    free(text);
    eng_tokenizer_free(tk);
    eng_model_close(m);
}

Test(models, stories260k_matches_scalar_reference_256_steps)
{
    check_against_reference("stories260K.bin", "tok512.bin", 256);
}

Test(models, babyllama105_matches_scalar_reference)
{
    check_against_reference("babyllama105.bin", "tok105.bin", 256);
}

Test(models, babyllama105_runs)
{
    const char *path = rk_test_model_path("babyllama105.bin");
    if (!path)
        cr_skip_test("skipped: no real model (babyllama105.bin)");
    eng_model *m;
    cr_assert_eq(eng_model_open(path, &m), RK_OK, "%s", rk_error_msg());
    const eng_model_info *mi = eng_model_get_info(m);
    cr_expect_eq(mi->dim, 128);
    cr_expect_eq(mi->vocab, 105);
    cr_expect_eq(mi->max_seq, 256);
    eng_tokenizer *tk;
    cr_assert_eq(eng_tokenizer_open(rk_test_model_path("tok105.bin"), 105, &tk), RK_OK, "%s", rk_error_msg());
    int32_t prompt[64], out[257];
    size_t np;
    cr_assert_eq(eng_tokenizer_encode(tk, "Once upon a time", true, prompt, 64, &np), RK_OK, "%s", rk_error_msg());
    size_t n = greedy(m, prompt, np, 256, out);
    cr_expect_gt(n, np + 50, "generated only %zu tokens", n - np);
    char *text = detok(tk, out, n);
    /* character-level TinyStories: the continuation is lower-case English with spaces */
    size_t letters = 0, len = strlen(text);
    for (size_t i = 0; i < len; i++)
        letters += (text[i] >= 'a' && text[i] <= 'z') || text[i] == ' ';
    cr_expect_gt(letters, len * 7 / 10, "not text: %s", text);
    free(text);
    eng_tokenizer_free(tk);
    eng_model_close(m);
}

/* The Hugging Face folder written from a .bin generates the same tokens (and near-equal logits). */
static void check_converted(const char *model, const char *tokfile)
{
    const char *path = rk_test_model_path(model);
    if (!path)
        cr_skip_test("skipped: no real model (%s)", model);
    char mp[4400], dir[512];
    snprintf(mp, sizeof(mp), "%s", path);
    cr_assert_not_null(rk_test_tmpdir(dir, sizeof(dir)));
    eng_model *a, *b;
    cr_assert_eq(eng_model_open(mp, &a), RK_OK, "%s", rk_error_msg());
    cr_assert_eq(eng_model_write_hf(a, dir), RK_OK, "%s", rk_error_msg());
    cr_assert_eq(eng_model_open(dir, &b), RK_OK, "%s", rk_error_msg());
    const eng_model_info *ia = eng_model_get_info(a), *ib = eng_model_get_info(b);
    cr_expect_eq(ib->format, ENG_FORMAT_HF);
    cr_expect_eq(ib->rope, ENG_ROPE_HALF);
    cr_expect_eq(ib->dim, ia->dim);
    cr_expect_eq(ib->n_kv_heads, ia->n_kv_heads);
    cr_expect_eq(ib->vocab, ia->vocab);
    cr_expect_eq(ib->tied_embeddings, ia->tied_embeddings);
    cr_expect_float_eq(ib->norm_eps, ia->norm_eps, 0);
    eng_tokenizer *tk;
    cr_assert_eq(eng_tokenizer_open(rk_test_model_path(tokfile), ia->vocab, &tk), RK_OK);
    int32_t prompt[64], ta[257], tb[257];
    size_t np;
    cr_assert_eq(eng_tokenizer_encode(tk, "Once upon a time", true, prompt, 64, &np), RK_OK);
    size_t na = greedy(a, prompt, np, 256, ta), nb = greedy(b, prompt, np, 256, tb);
    cr_assert_eq(na, nb, "%s: .bin made %zu tokens, HF folder %zu", model, na, nb);
    for (size_t i = 0; i < na; i++)
        cr_assert_eq(ta[i], tb[i], "%s: token %zu differs", model, i);
    eng_tokenizer_free(tk);
    eng_model_close(a);
    eng_model_close(b);
    rk_test_rmrf(dir);
}

Test(models, converted_stories260k_generates_same_tokens)
{
    check_converted("stories260K.bin", "tok512.bin");
}

Test(models, converted_babyllama105_generates_same_tokens)
{
    check_converted("babyllama105.bin", "tok105.bin");
}

/* A synthetic model written to a folder and read back computes what the in-memory one does,
 * for every dtype and architecture feature (bf16 llama3 scaling, f16 Qwen2 biases). */
Test(models, synth_in_memory_equals_written_folder)
{
    const char *shapes[] = {"test-llama", "test-llama3", "test-qwen2", "test-mistral", "demo"};
    for (size_t i = 0; i < sizeof(shapes) / sizeof(shapes[0]); i++) {
        char dir[512];
        cr_assert_not_null(rk_test_tmpdir(dir, sizeof(dir)));
        cr_assert_eq(eng_model_synth_write(shapes[i], 11, dir), RK_OK, "%s", rk_error_msg());
        eng_model *a, *b;
        cr_assert_eq(eng_model_synth(shapes[i], 11, &a), RK_OK);
        cr_assert_eq(eng_model_open(dir, &b), RK_OK, "%s: %s", shapes[i], rk_error_msg());
        const eng_model_info *ia = eng_model_get_info(a), *ib = eng_model_get_info(b);
        cr_expect_eq(ia->dtype, ib->dtype);
        cr_expect_eq(ia->qkv_bias, ib->qkv_bias);
        cr_expect_eq(ia->rope_llama3, ib->rope_llama3);
        cr_expect_str_eq(ia->arch, ib->arch);
        cr_expect_eq(ia->n_params, ib->n_params);
        eng_backend *ba, *bb;
        eng_seq *sa, *sb;
        cr_assert_eq(eng_backend_cpu_new(a, 1, &ba), RK_OK);
        cr_assert_eq(eng_backend_cpu_new(b, 1, &bb), RK_OK);
        cr_assert_eq(eng_seq_new(ba, 0, &sa), RK_OK);
        cr_assert_eq(eng_seq_new(bb, 0, &sb), RK_OK);
        int32_t tok[6] = {1, 20, 30, 40, 50, 60};
        size_t V = (size_t)ia->vocab;
        float *la = malloc(6 * V * 4), *lb = malloc(6 * V * 4);
        cr_assert_eq(eng_prefill(sa, tok, 6, NULL, ENG_LOGITS_ALL, la), RK_OK);
        cr_assert_eq(eng_prefill(sb, tok, 6, NULL, ENG_LOGITS_ALL, lb), RK_OK);
        cr_expect(memcmp(la, lb, 6 * V * 4) == 0, "%s: logits differ", shapes[i]);
        bool finite = true;
        for (size_t j = 0; j < 6 * V; j++)
            finite &= isfinite(la[j]);
        cr_expect(finite, "%s: non-finite logits", shapes[i]);
        /* a different seed gives different weights */
        eng_model *c;
        cr_assert_eq(eng_model_synth(shapes[i], 12, &c), RK_OK);
        eng_backend *bc;
        eng_seq *sc;
        cr_assert_eq(eng_backend_cpu_new(c, 1, &bc), RK_OK);
        cr_assert_eq(eng_seq_new(bc, 0, &sc), RK_OK);
        cr_assert_eq(eng_prefill(sc, tok, 6, NULL, ENG_LOGITS_ALL, lb), RK_OK);
        cr_expect(memcmp(la, lb, 6 * V * 4) != 0, "%s: seeds 11 and 12 gave the same model", shapes[i]);
        free(la);
        free(lb);
        eng_seq_free(sa);
        eng_seq_free(sb);
        eng_seq_free(sc);
        eng_backend_free(ba);
        eng_backend_free(bb);
        eng_backend_free(bc);
        eng_model_close(a);
        eng_model_close(b);
        eng_model_close(c);
        rk_test_rmrf(dir);
    }
}

Test(models, synth_shapes_listed_and_unknown_rejected)
{
    const char *want[] = {"demo", "llama3-8b", "qwen2-7b", "mistral-7b"};
    for (size_t i = 0; i < 4; i++) {
        bool found = false;
        for (const char *const *n = eng_synth_shape_names(); *n; n++)
            found |= !strcmp(*n, want[i]);
        cr_expect(found, "shape %s missing", want[i]);
    }
    eng_model *m;
    cr_expect_eq(eng_model_synth("no-such-shape", 1, &m), RK_ERR_NOT_FOUND);
    cr_expect_null(m);
}

Test(models, model_ids_are_stable_and_distinct)
{
    const char *p = rk_test_model_path("stories260K.bin");
    if (!p)
        cr_skip_test("skipped: no real model (stories260K.bin)");
    char a_path[4400];
    snprintf(a_path, sizeof(a_path), "%s", p);
    eng_model *a, *b, *c;
    cr_assert_eq(eng_model_open(a_path, &a), RK_OK);
    cr_assert_eq(eng_model_open(a_path, &b), RK_OK);
    cr_assert_eq(eng_model_open(rk_test_model_path("babyllama105.bin"), &c), RK_OK);
    cr_expect_str_eq(eng_model_get_info(a)->id, eng_model_get_info(b)->id);
    cr_expect_str_neq(eng_model_get_info(a)->id, eng_model_get_info(c)->id);
    eng_model_close(a);
    eng_model_close(b);
    eng_model_close(c);
}

/* "synth:SHAPE[:SEED]" opens the seeded synthetic weights (what benchmarks give ragkvd). */
Test(models, synth_path_opens_seeded_weights)
{
    eng_model *a, *b, *c;
    cr_assert_eq(eng_model_open("synth:test-llama:7", &a), RK_OK, "%s", rk_error_msg());
    cr_assert_eq(eng_model_synth("test-llama", 7, &b), RK_OK);
    cr_assert_eq(eng_model_open("synth:test-llama", &c), RK_OK); /* seed 1 */
    cr_assert_str_eq(eng_model_get_info(a)->id, eng_model_get_info(b)->id);
    cr_assert_str_neq(eng_model_get_info(a)->id, eng_model_get_info(c)->id);
    eng_model_close(a);
    eng_model_close(b);
    eng_model_close(c);
    const char *bad[] = {"synth:", "synth:no-such-shape", "synth:test-llama:x", "synth:test-llama:"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        eng_model *m = (eng_model *)1;
        cr_assert_neq(eng_model_open(bad[i], &m), RK_OK, "%s was accepted", bad[i]);
        cr_assert_null(m, "%s: *out not cleared", bad[i]);
    }
}
