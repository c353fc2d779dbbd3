/*
 * sample_decode.h — checks of eng_decode_sample (decode + each row's token chosen by its own
 * sampler) shared by the CPU suite (test_sample_decode.c, where the API is literally eng_decode
 * then eng_sample and everything must match exactly) and the CUDA suite (test_gpu_sample.c,
 * where tokens are chosen on the device). Parameterised by the backend constructor, as
 * conformance.h.
 */
#ifndef RAGKV_TEST_ENGINE_SAMPLE_DECODE_H
#define RAGKV_TEST_ENGINE_SAMPLE_DECODE_H

#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "det_tokens.h"
#include "ragkv/engine.h"

typedef rk_status (*sd_backend_ctor)(eng_model *m, eng_backend **out);

/* A model: a synthetic shape name, or a path (contains '/'). */
static inline eng_model *sd_open(const char *what)
{
    eng_model *m = NULL;
    rk_status st = strchr(what, '/') ? eng_model_open(what, &m) : eng_model_synth(what, 7, &m);
    cr_assert_eq(st, RK_OK, "open %s: %s", what, rk_error_msg());
    return m;
}

static inline eng_seq *sd_seq(eng_backend *be, size_t cap)
{
    eng_seq *s = NULL;
    cr_assert_eq(eng_seq_new(be, cap, &s), RK_OK, "%s", rk_error_msg());
    return s;
}

/* The sequences of a run and their samplers: greedy, plain temperature, top-k, top-p, both,
 * and a greedy one whose (ignored) top-k/top-p are set. */
#define SD_SEQS 6
static const struct {
    float t;
    int k;
    float p;
} sd_settings[SD_SEQS] = {{0.0f, 0, 1.0f}, {1.0f, 0, 1.0f}, {0.8f, 40, 1.0f},
                          {1.1f, 0, 0.9f}, {0.7f, 20, 0.8f}, {0.0f, 5, 0.5f}};

/* Which sequences decode at a step, in which order: a batch that changes every step (members
 * leave and come back, the order rotates). Returns the count; idx gets the sequence numbers. */
static inline size_t sd_batch(int step, size_t *idx)
{
    size_t n = 0;
    for (size_t j = 0; j < SD_SEQS; j++) {
        size_t i = (j + (size_t)step) % SD_SEQS;
        if ((step + (int)i) % 4 != 3)
            idx[n++] = i;
    }
    return n;
}

/* Start SD_SEQS sequences on be with distinct prompts; first[i] = the argmax of each prompt's
 * last logits (a deterministic first token). */
static inline void sd_start(eng_backend *be, size_t cap, eng_seq **seqs, int32_t *first)
{
    const eng_model_info *mi = eng_model_get_info(eng_backend_model(be));
    float *lg = malloc((size_t)mi->vocab * sizeof(float));
    cr_assert_not_null(lg);
    for (size_t i = 0; i < SD_SEQS; i++) {
        int32_t tok[8];
        det_tokens(tok, 8, mi->vocab, 100 + (uint32_t)i);
        tok[0] = mi->bos;
        seqs[i] = sd_seq(be, cap);
        cr_assert_eq(eng_prefill(seqs[i], tok, 3 + i % 5, NULL, ENG_LOGITS_LAST, lg), RK_OK, "%s", rk_error_msg());
        first[i] = eng_argmax(lg, mi->vocab);
    }
    free(lg);
}

typedef struct sd_counts {
    size_t greedy, greedy_same; /* greedy rows, and those where the API's token == eng_sample's */
    size_t stoch, stoch_same;   /* the same for stochastic rows */
} sd_counts;

/* Decode `steps` steps with eng_decode_sample, logits returned; at every row compare its token
 * with eng_sample on those very logits by a twin sampler (same seed) that draws from its own
 * stream, and check the two streams stay in step. The API's token is fed next. */
static inline void sd_agree(sd_backend_ctor ctor, const char *model, int steps, sd_counts *cnt)
{
    eng_model *m = sd_open(model);
    const eng_model_info *mi = eng_model_get_info(m);
    eng_backend *be;
    cr_assert_eq(ctor(m, &be), RK_OK, "%s", rk_error_msg());
    size_t V = (size_t)mi->vocab, cap = (size_t)steps + 16;
    if (cap > (size_t)mi->max_seq)
        cap = (size_t)mi->max_seq;
    eng_seq *seqs[SD_SEQS];
    int32_t next[SD_SEQS];
    eng_sampler sm[SD_SEQS], twin[SD_SEQS];
    sd_start(be, cap, seqs, next);
    for (size_t i = 0; i < SD_SEQS; i++) {
        eng_sampler_init(&sm[i], sd_settings[i].t, sd_settings[i].k, sd_settings[i].p, 1000 + i);
        eng_sampler_init(&twin[i], sd_settings[i].t, sd_settings[i].k, sd_settings[i].p, 1000 + i);
    }
    float *lg = malloc(SD_SEQS * V * sizeof(float));
    cr_assert_not_null(lg);
    for (int step = 0; step < steps; step++) {
        size_t idx[SD_SEQS], n = sd_batch(step, idx);
        eng_seq *bs[SD_SEQS];
        eng_sampler *bsm[SD_SEQS];
        int32_t bt[SD_SEQS], out[SD_SEQS];
        bool room = true;
        for (size_t j = 0; j < n; j++) {
            bs[j] = seqs[idx[j]];
            bt[j] = next[idx[j]];
            bsm[j] = &sm[idx[j]];
            room &= eng_seq_len(bs[j]) < eng_seq_capacity(bs[j]);
        }
        if (!room)
            break;
        cr_assert_eq(eng_decode_sample(be, bs, bt, n, bsm, out, lg), RK_OK, "step %d: %s", step, rk_error_msg());
        for (size_t j = 0; j < n; j++) {
            size_t i = idx[j];
            int32_t h = eng_sample(&twin[i], lg + j * V, mi->vocab);
            cr_assert(out[j] >= 0 && out[j] < mi->vocab, "step %d row %zu: token %d", step, j, out[j]);
            cr_assert_eq(sm[i].state, twin[i].state, "step %d: sampler %zu out of step with eng_sample's", step, i);
            if (sd_settings[i].t == 0.0f) {
                cnt->greedy++;
                cnt->greedy_same += h == out[j];
            } else {
                cnt->stoch++;
                cnt->stoch_same += h == out[j];
            }
            next[i] = out[j];
        }
    }
    free(lg);
    for (size_t i = 0; i < SD_SEQS; i++) {
        eng_sampler_free(&sm[i]);
        eng_sampler_free(&twin[i]);
        eng_seq_free(seqs[i]);
    }
    eng_backend_free(be);
    eng_model_close(m);
}

/* Three sets of the same sequences and seeds, decoded in the same changing batches: A by
 * eng_decode_sample (logits back when with_logits), B by eng_decode + eng_sample per row, C
 * switching between the two every step. Every token and every sampler state must agree.
 * Exact where the API is the host path (CPU); on a device, call it with greedy_only. */
static inline void sd_twins(sd_backend_ctor ctor, const char *model, int steps, bool with_logits, bool greedy_only)
{
    eng_model *m = sd_open(model);
    const eng_model_info *mi = eng_model_get_info(m);
    eng_backend *be;
    cr_assert_eq(ctor(m, &be), RK_OK, "%s", rk_error_msg());
    size_t V = (size_t)mi->vocab, cap = (size_t)steps + 16;
    if (cap > (size_t)mi->max_seq)
        cap = (size_t)mi->max_seq;
    eng_seq *sa[SD_SEQS], *sb[SD_SEQS], *sc[SD_SEQS];
    int32_t na[SD_SEQS], nb[SD_SEQS], nc[SD_SEQS];
    eng_sampler ma[SD_SEQS], mb[SD_SEQS], mc[SD_SEQS];
    sd_start(be, cap, sa, na);
    sd_start(be, cap, sb, nb);
    sd_start(be, cap, sc, nc);
    for (size_t i = 0; i < SD_SEQS; i++) {
        float t = greedy_only ? 0.0f : sd_settings[i].t;
        eng_sampler_init(&ma[i], t, sd_settings[i].k, sd_settings[i].p, 7 + i);
        eng_sampler_init(&mb[i], t, sd_settings[i].k, sd_settings[i].p, 7 + i);
        eng_sampler_init(&mc[i], t, sd_settings[i].k, sd_settings[i].p, 7 + i);
    }
    float *la = malloc(SD_SEQS * V * sizeof(float)), *lb = malloc(SD_SEQS * V * sizeof(float));
    cr_assert(la && lb);
    for (int step = 0; step < steps; step++) {
        size_t idx[SD_SEQS], n = sd_batch(step, idx);
        eng_seq *ba[SD_SEQS], *bb[SD_SEQS], *bc[SD_SEQS];
        eng_sampler *pa[SD_SEQS], *pc[SD_SEQS];
        int32_t ta[SD_SEQS], tb[SD_SEQS], tc[SD_SEQS], oa[SD_SEQS], oc[SD_SEQS];
        bool room = true;
        for (size_t j = 0; j < n; j++) {
            size_t i = idx[j];
            ba[j] = sa[i], bb[j] = sb[i], bc[j] = sc[i];
            ta[j] = na[i], tb[j] = nb[i], tc[j] = nc[i];
            pa[j] = &ma[i], pc[j] = &mc[i];
            room &= eng_seq_len(sa[i]) < eng_seq_capacity(sa[i]);
        }
        if (!room)
            break;
        cr_assert_eq(eng_decode_sample(be, ba, ta, n, pa, oa, with_logits ? la : NULL), RK_OK, "%s", rk_error_msg());
        cr_assert_eq(eng_decode(be, bb, tb, n, lb), RK_OK, "%s", rk_error_msg());
        if (step % 2 == 0) {
            cr_assert_eq(eng_decode_sample(be, bc, tc, n, pc, oc, NULL), RK_OK, "%s", rk_error_msg());
        } else {
            cr_assert_eq(eng_decode(be, bc, tc, n, la), RK_OK, "%s", rk_error_msg());
            for (size_t j = 0; j < n; j++)
                oc[j] = eng_sample(&mc[idx[j]], la + j * V, mi->vocab);
        }
        for (size_t j = 0; j < n; j++) {
            size_t i = idx[j];
            int32_t ob = eng_sample(&mb[i], lb + j * V, mi->vocab);
            cr_assert_eq(oa[j], ob, "step %d, sequence %zu: eng_decode_sample %d, eng_decode + eng_sample %d", step, i,
                         oa[j], ob);
            cr_assert_eq(oc[j], ob, "step %d, sequence %zu: switching paths %d, eng_sample %d", step, i, oc[j], ob);
            cr_assert_eq(ma[i].state, mb[i].state, "step %d: sampler %zu streams differ", step, i);
            cr_assert_eq(mc[i].state, mb[i].state, "step %d: sampler %zu streams differ (switching)", step, i);
            na[i] = oa[j], nb[i] = ob, nc[i] = oc[j];
        }
    }
    free(la);
    free(lb);
    for (size_t i = 0; i < SD_SEQS; i++) {
        eng_sampler_free(&ma[i]);
        eng_sampler_free(&mb[i]);
        eng_sampler_free(&mc[i]);
        eng_seq_free(sa[i]);
        eng_seq_free(sb[i]);
        eng_seq_free(sc[i]);
    }
    eng_backend_free(be);
    eng_model_close(m);
}

/* A rejected call changes nothing: no sequence grows, no stream moves. */
#define SD_REJECT(call, code, what)                                                                        \
    do {                                                                                                   \
        rk_status st_ = (call);                                                                            \
        cr_assert_eq(st_, code, "%s: got %s (%s)", what, rk_status_name(st_), rk_error_msg());             \
        cr_assert(strstr(rk_error_msg(), "eng_decode_sample") != NULL, "%s: message '%s'", what,           \
                  rk_error_msg());                                                                         \
        cr_assert_eq(eng_seq_len(s[0]), len0, "%s: a sequence grew", what);                                \
        cr_assert_eq(eng_seq_len(s[1]), len1, "%s: a sequence grew", what);                                \
        cr_assert_eq(sm[0].state, st0, "%s: a stream moved", what);                                        \
        cr_assert_eq(sm[1].state, st1, "%s: a stream moved", what);                                        \
    } while (0)

static inline void sd_bad_args(sd_backend_ctor ctor, const char *model)
{
    eng_model *m = sd_open(model);
    const eng_model_info *mi = eng_model_get_info(m);
    eng_backend *be;
    cr_assert_eq(ctor(m, &be), RK_OK, "%s", rk_error_msg());
    eng_seq *s[2] = {sd_seq(be, 8), sd_seq(be, 8)};
    int32_t tok[2] = {mi->bos, 5}, out[2];
    cr_assert_eq(eng_prefill(s[0], tok, 1, NULL, ENG_LOGITS_NONE, NULL), RK_OK);
    cr_assert_eq(eng_prefill(s[1], tok, 1, NULL, ENG_LOGITS_NONE, NULL), RK_OK);
    eng_sampler sm[2];
    eng_sampler_init(&sm[0], 1.0f, 0, 1.0f, 1);
    eng_sampler_init(&sm[1], 0.7f, 10, 0.9f, 2);
    eng_sampler *ps[2] = {&sm[0], &sm[1]};
    size_t len0 = eng_seq_len(s[0]), len1 = eng_seq_len(s[1]);
    uint64_t st0 = sm[0].state, st1 = sm[1].state;
    cr_assert_eq(eng_decode_sample(be, NULL, NULL, 0, NULL, NULL, NULL), RK_OK, "an empty batch is a no-op");
    SD_REJECT(eng_decode_sample(NULL, s, tok, 2, ps, out, NULL), RK_ERR_INVALID, "no backend");
    SD_REJECT(eng_decode_sample(be, s, tok, 2, NULL, out, NULL), RK_ERR_INVALID, "no samplers");
    SD_REJECT(eng_decode_sample(be, s, tok, 2, ps, NULL, NULL), RK_ERR_INVALID, "no output");
    eng_sampler *nul[2] = {&sm[0], NULL};
    SD_REJECT(eng_decode_sample(be, s, tok, 2, nul, out, NULL), RK_ERR_INVALID, "a NULL sampler");
    eng_sampler *twice[2] = {&sm[0], &sm[0]};
    SD_REJECT(eng_decode_sample(be, s, tok, 2, twice, out, NULL), RK_ERR_INVALID, "one sampler for two rows");
    eng_seq *dup[2] = {s[0], s[0]};
    SD_REJECT(eng_decode_sample(be, dup, tok, 2, ps, out, NULL), RK_ERR_INVALID, "a sequence twice");
    int32_t badtok[2] = {mi->bos, mi->vocab};
    SD_REJECT(eng_decode_sample(be, s, badtok, 2, ps, out, NULL), RK_ERR_RANGE, "a token outside the vocabulary");
    eng_sampler bad = sm[1];
    eng_sampler *pb[2] = {&sm[0], &bad};
    bad.temperature = -1.0f;
    SD_REJECT(eng_decode_sample(be, s, tok, 2, pb, out, NULL), RK_ERR_INVALID, "a negative temperature");
    bad.temperature = NAN;
    SD_REJECT(eng_decode_sample(be, s, tok, 2, pb, out, NULL), RK_ERR_INVALID, "a NaN temperature");
    bad = sm[1];
    bad.top_p = 0.0f;
    SD_REJECT(eng_decode_sample(be, s, tok, 2, pb, out, NULL), RK_ERR_INVALID, "top_p 0");
    bad = sm[1];
    bad.top_k = -3;
    SD_REJECT(eng_decode_sample(be, s, tok, 2, pb, out, NULL), RK_ERR_INVALID, "a negative top_k");
    /* a full sequence */
    eng_seq *full = sd_seq(be, 1);
    cr_assert_eq(eng_prefill(full, tok, 1, NULL, ENG_LOGITS_NONE, NULL), RK_OK);
    eng_seq *fs[2] = {s[0], full};
    SD_REJECT(eng_decode_sample(be, fs, tok, 2, ps, out, NULL), RK_ERR_LIMIT, "a full sequence");
    /* and then a good call works and moves each stochastic stream by one uniform */
    eng_sampler probe0, probe1;
    eng_sampler_init(&probe0, 1.0f, 0, 1.0f, 1);
    eng_sampler_init(&probe1, 0.7f, 10, 0.9f, 2);
    (void)eng_sampler_uniform(&probe0);
    (void)eng_sampler_uniform(&probe1);
    cr_assert_eq(eng_decode_sample(be, s, tok, 2, ps, out, NULL), RK_OK, "%s", rk_error_msg());
    cr_assert(out[0] >= 0 && out[0] < mi->vocab && out[1] >= 0 && out[1] < mi->vocab);
    cr_assert_eq(eng_seq_len(s[0]), len0 + 1);
    cr_assert_eq(sm[0].state, probe0.state);
    cr_assert_eq(sm[1].state, probe1.state);
    eng_seq_free(full);
    eng_seq_free(s[0]);
    eng_seq_free(s[1]);
    eng_sampler_free(&sm[0]);
    eng_sampler_free(&sm[1]);
    eng_backend_free(be);
    eng_model_close(m);
}

#endif
