/* codec_source.c — the engine as a KV source for the codec's evaluation (ragkv/bench.h). */
#include <math.h>
#include <string.h>

#include "ragkv/alloc.h"
#include "ragkv/bench.h"
#include "ragkv/blend_math.h"
#include "ragkv/engine.h"

#define NPROMPT 4
#define GREEDY 32

struct msrc {
    eng_model *m;
    eng_backend *be;
    int p, n;              /* prompt tokens, teacher-forced tokens */
    int vocab;
    size_t kvd;            /* n_kv_heads * head_dim */
    int32_t *seqs;         /* (NPROMPT, p + n) the sampled sequences */
    float *ref_logits;     /* (NPROMPT, n, vocab) exact logits at the forced positions */
    int32_t *ref_greedy;   /* (NPROMPT, GREEDY) exact greedy continuations */
    float *logits;         /* (vocab) scratch */
    int32_t *pos;          /* (p) 0..p-1: where a prompt's KV is imported */
    int forced_only;       /* fidelity: the teacher-forced pass only (no greedy runs) */
    char *path;            /* the model file, for held-out prompts */
};

static void msrc_free(void *ctx)
{
    struct msrc *s = ctx;
    if (!s)
        return;
    rk_free(s->seqs);
    rk_free(s->ref_logits);
    rk_free(s->ref_greedy);
    rk_free(s->logits);
    rk_free(s->pos);
    rk_free(s->path);
    eng_backend_free(s->be);
    eng_model_close(s->m);
    rk_free(s);
}

/* Copy prompt k's KV ([L][2][p][kvd]) into or out of the stacked tensor ([L][2][NPROMPT*p][kvd]). */
static void stack_copy(const struct msrc *s, float *stacked, float *one, int k, int to_stacked)
{
    const eng_model_info *mi = eng_model_get_info(s->m);
    size_t T = (size_t)NPROMPT * s->p, row = s->kvd * sizeof(float);
    for (int l = 0; l < mi->n_layers; l++)
        for (int kv = 0; kv < 2; kv++) {
            float *st = stacked + (((size_t)l * 2 + kv) * T + (size_t)k * s->p) * s->kvd;
            float *on = one + (((size_t)l * 2 + kv) * s->p) * s->kvd;
            if (to_stacked)
                memcpy(st, on, row * s->p);
            else
                memcpy(on, st, row * s->p);
        }
}

/* Sample NPROMPT sequences and stack their prompts' KV into kv; with record, keep the exact
 * logits and greedy continuations too. */
static rk_status sample(struct msrc *s, uint64_t seed, float *kv, int record)
{
    const eng_model_info *mi = eng_model_get_info(s->m);
    float *one = rk_malloc(eng_kv_floats(s->m, (size_t)s->p) * sizeof(float));
    if (!one)
        return RK_ERR_NOMEM;
    rk_status st = RK_OK;
    for (int k = 0; k < NPROMPT && st == RK_OK; k++) {
        int32_t *seq = s->seqs + (size_t)k * (s->p + s->n);
        eng_seq *q = NULL;
        eng_sampler sm;
        eng_sampler_init(&sm, 1.0f, 0, 1.0f, seed * 1000003ull + (uint64_t)k);
        seq[0] = mi->bos;
        st = eng_seq_new(s->be, (size_t)(s->p + s->n + GREEDY + 1), &q);
        for (int i = 0; st == RK_OK && i + 1 < s->p + s->n; i++) {
            st = eng_decode(s->be, &q, &seq[i], 1, s->logits);
            if (st != RK_OK)
                break;
            if (record && i >= s->p)
                memcpy(s->ref_logits + ((size_t)k * s->n + (i - s->p)) * s->vocab, s->logits, sizeof(float) * s->vocab);
            seq[i + 1] = eng_sample(&sm, s->logits, s->vocab);
        }
        if (st == RK_OK)
            st = eng_kv_export(q, 0, (size_t)s->p, one);
        if (st == RK_OK) {
            stack_copy(s, kv, one, k, 1);
            if (record) { /* the last forced position, then the exact greedy run from the prompt */
                int last = s->p + s->n - 1;
                st = eng_decode(s->be, &q, &seq[last], 1, s->logits);
                if (st == RK_OK)
                    memcpy(s->ref_logits + ((size_t)k * s->n + (s->n - 1)) * s->vocab, s->logits,
                           sizeof(float) * s->vocab);
                eng_seq_free(q);
                q = NULL;
                if (st == RK_OK)
                    st = eng_seq_new(s->be, (size_t)(s->p + GREEDY + 1), &q);
                if (st == RK_OK)
                    st = eng_kv_import(q, 0, (size_t)s->p, s->pos, one);
                int32_t tok = seq[s->p];
                for (int g = 0; st == RK_OK && g < GREEDY; g++) {
                    st = eng_decode(s->be, &q, &tok, 1, s->logits);
                    tok = (int32_t)bl_argmax(s->logits, (size_t)s->vocab);
                    s->ref_greedy[k * GREEDY + g] = tok;
                }
            }
        }
        eng_sampler_free(&sm);
        eng_seq_free(q);
    }
    rk_free(one);
    return st;
}

static rk_status msrc_fidelity(void *ctx, const float *decoded, codec_fidelity *out)
{
    struct msrc *s = ctx;
    float *one = rk_malloc(eng_kv_floats(s->m, (size_t)s->p) * sizeof(float));
    if (!one)
        return RK_ERR_NOMEM;
    double kl = 0, agree = 0, match = 0;
    rk_status st = RK_OK;
    for (int k = 0; k < NPROMPT && st == RK_OK; k++) {
        const int32_t *seq = s->seqs + (size_t)k * (s->p + s->n);
        stack_copy(s, (float *)decoded, one, k, 0);
        for (int pass = 0; pass < (s->forced_only ? 1 : 2) && st == RK_OK; pass++) {
            eng_seq *q = NULL;
            st = eng_seq_new(s->be, (size_t)(s->p + s->n + GREEDY + 1), &q);
            if (st == RK_OK)
                st = eng_kv_import(q, 0, (size_t)s->p, s->pos, one);
            if (pass == 0) { /* teacher-forced: the exact run's own tokens */
                for (int i = 0; st == RK_OK && i < s->n; i++) {
                    st = eng_decode(s->be, &q, &seq[s->p + i], 1, s->logits);
                    const float *ref = s->ref_logits + ((size_t)k * s->n + i) * s->vocab;
                    kl += bl_kl_divergence(ref, s->logits, (size_t)s->vocab);
                    agree += bl_argmax(ref, (size_t)s->vocab) == bl_argmax(s->logits, (size_t)s->vocab);
                }
            } else { /* greedy from the prompt */
                int32_t tok = seq[s->p];
                int live = 1, len = 0;
                for (int g = 0; st == RK_OK && g < GREEDY; g++) {
                    st = eng_decode(s->be, &q, &tok, 1, s->logits);
                    tok = (int32_t)bl_argmax(s->logits, (size_t)s->vocab);
                    if (live && tok == s->ref_greedy[k * GREEDY + g])
                        len++;
                    else
                        live = 0;
                }
                match += len;
            }
            eng_seq_free(q);
        }
    }
    rk_free(one);
    if (st != RK_OK)
        return st;
    out->kl = kl / (NPROMPT * s->n);
    out->top1 = agree / (NPROMPT * s->n);
    out->greedy_match = match / NPROMPT;
    return RK_OK;
}

/* Codebook training data: other prompts of the same model. */
static float *msrc_train_chunk(codec_kv_source *src, int i)
{
    struct msrc *s = src->ctx;
    float *kv = rk_malloc(codec_shape_values(&src->shape) * sizeof(float));
    int32_t *saved = rk_malloc(sizeof(int32_t) * NPROMPT * (size_t)(s->p + s->n));
    if (kv && saved) {
        memcpy(saved, s->seqs, sizeof(int32_t) * NPROMPT * (size_t)(s->p + s->n));
        if (sample(s, src->model_seed * 7919 + 1000 + (uint64_t)i, kv, 0) != RK_OK) {
            rk_free(kv);
            kv = NULL;
        }
        memcpy(s->seqs, saved, sizeof(int32_t) * NPROMPT * (size_t)(s->p + s->n)); /* keep the evaluated ones */
    }
    rk_free(saved);
    return kv;
}

/* Per-channel sensitivity on held-out prompts (another seed than the evaluated and training
 * ones): Gaussian noise of a 16th of the channel's range on every token of one channel at a
 * time, twice, next-token KL of the teacher-forced positions per unit of noise variance.
 * Costs 2 * L * 2 * C teacher-forced evaluations (minutes on the tiny models). */
static rk_status msrc_sensitivity(codec_kv_source *src, float *w)
{
    struct msrc *s = src->ctx;
    codec_kv_source ho;
    rk_status st = bench_codec_model_source(s->path, src->model_seed * 7919 + 5000, &ho);
    if (st != RK_OK)
        return st;
    struct msrc *h = ho.ctx;
    h->forced_only = 1;
    const codec_shape *sh = &ho.shape;
    size_t T = sh->n_tokens, C = (size_t)sh->n_kv_heads * sh->head_dim;
    size_t n = codec_shape_values(sh);
    float *x = rk_malloc(n * sizeof(float));
    uint64_t r = 0x9e3779b97f4a7c15ull; /* xorshift64 */
    if (!x)
        st = RK_ERR_NOMEM;
    for (size_t lkv = 0; st == RK_OK && lkv < 2 * (size_t)sh->n_layers; lkv++)
        for (size_t c = 0; st == RK_OK && c < C; c++) {
            const float *col = ho.kv + lkv * T * C + c;
            float m = 0;
            for (size_t t = 0; t < T; t++)
                m = fabsf(col[t * C]) > m ? fabsf(col[t * C]) : m;
            double sig = m / 16.0, kl = 0;
            for (int rep = 0; rep < 2 && st == RK_OK; rep++) {
                memcpy(x, ho.kv, n * sizeof(float));
                for (size_t t = 0; t < T; t++) { /* Box-Muller on two xorshift draws */
                    double u[2];
                    for (int k = 0; k < 2; k++) {
                        r ^= r << 13, r ^= r >> 7, r ^= r << 17;
                        u[k] = ((double)(r >> 11) + 0.5) / 9007199254740992.0;
                    }
                    x[lkv * T * C + t * C + c] += (float)(sig * sqrt(-2 * log(u[0])) * cos(6.283185307179586 * u[1]));
                }
                codec_fidelity f;
                st = msrc_fidelity(h, x, &f);
                kl += f.kl;
            }
            w[lkv * C + c] = sig > 0 ? (float)(kl / 2 / (sig * sig)) : 0.0f;
        }
    rk_free(x);
    codec_kv_source_free(&ho);
    return st;
}

rk_status bench_codec_model_source(const char *model_path, uint64_t seed, codec_kv_source *out)
{
    memset(out, 0, sizeof(*out));
    struct msrc *s = rk_calloc(1, sizeof(*s));
    if (!s)
        return RK_ERR_NOMEM;
    rk_status st = eng_model_open(model_path, &s->m);
    if (st == RK_OK)
        st = eng_backend_cpu_new(s->m, 0, &s->be);
    if (st != RK_OK) {
        msrc_free(s);
        return st;
    }
    const eng_model_info *mi = eng_model_get_info(s->m);
    /* prompts of 256 tokens (one stream block) when they fit, else half the context */
    s->p = mi->max_seq >= 512 ? 256 : mi->max_seq / 2;
    s->n = mi->max_seq - s->p - GREEDY < 96 ? mi->max_seq - s->p - GREEDY : 96;
    s->vocab = mi->vocab;
    s->kvd = (size_t)mi->n_kv_heads * (size_t)mi->head_dim;
    if (s->n < 1) {
        msrc_free(s);
        return rk_error_set(RK_ERR_UNSUPPORTED, "%s: context of %d too short for the evaluation", model_path, mi->max_seq);
    }
    out->shape = (codec_shape){(uint32_t)mi->n_layers, (uint32_t)(NPROMPT * s->p), (uint32_t)mi->n_kv_heads,
                               (uint32_t)mi->head_dim};
    s->seqs = rk_malloc(sizeof(int32_t) * NPROMPT * (size_t)(s->p + s->n));
    s->ref_logits = rk_malloc(sizeof(float) * NPROMPT * (size_t)s->n * (size_t)s->vocab);
    s->ref_greedy = rk_malloc(sizeof(int32_t) * NPROMPT * GREEDY);
    s->logits = rk_malloc(sizeof(float) * (size_t)s->vocab);
    s->path = rk_malloc(strlen(model_path) + 1);
    if (s->path)
        memcpy(s->path, model_path, strlen(model_path) + 1);
    s->pos = rk_malloc(sizeof(int32_t) * (size_t)s->p);
    for (int i = 0; s->pos && i < s->p; i++)
        s->pos[i] = i;
    out->kv = rk_malloc(codec_shape_values(&out->shape) * sizeof(float));
    st = s->seqs && s->ref_logits && s->ref_greedy && s->logits && s->pos && s->path && out->kv ? sample(s, seed, out->kv, 1) : RK_ERR_NOMEM;
    if (st != RK_OK) {
        rk_free(out->kv);
        out->kv = NULL;
        msrc_free(s);
        return st;
    }
    out->name = model_path;
    out->model_seed = seed;
    out->fidelity = msrc_fidelity;
    out->ctx = s;
    out->free_ctx = msrc_free;
    out->train_chunk = msrc_train_chunk;
    out->sensitivity = msrc_sensitivity;
    return RK_OK;
}
