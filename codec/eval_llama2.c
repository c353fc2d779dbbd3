/* eval_llama2.c — a private, minimal llama2.c-format forward pass (fp32, one thread) so that
 * `ragkv codec eval --model` measures generation fidelity on the real test models before the
 * engine is linked. It is an evaluation KV source (codec_eval.h), not an inference engine:
 * the engine replaces it as the source once it lands.
 *
 * Procedure: 4 prompts of P tokens are sampled from the model itself (BOS, then temperature
 * 1, seeded: no tokenizer needed). Their pre-RoPE K and V, stacked along the token axis, are
 * the tensor the codecs compress. Fidelity of a decoded tensor: each prompt's cache is
 * replaced by its decoded version and the next N tokens (the exact run's own sample) are
 * teacher-forced; we compare next-token distributions at those N positions (KL, top-1) and
 * the greedy continuation from the prompt (length of the prefix matching the exact one). */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "codec_eval.h"
#include "ragkv/alloc.h"

#define GREEDY_TOKENS 32

struct l2model {
    int dim, hidden, n_layers, n_heads, n_kv, vocab, seq_len, hs, kv_dim;
    float *data;                        /* the whole file's floats, owned */
    const float *emb;                   /* (vocab, dim) */
    const float *rms_att, *rms_ffn;     /* (layer, dim) */
    const float *wq, *wk, *wv, *wo;     /* (layer, out, in) row-major */
    const float *w1, *w2, *w3;          /* (layer, hidden, dim), (layer, dim, hidden), ... */
    const float *rms_final, *wcls;      /* (dim), (vocab, dim) */
    /* run state */
    float *x, *xb, *xb2, *hb, *hb2, *q, *att, *logits; /* activations */
    float *kc, *vc;                     /* (layer, seq_len, kv_dim): K pre-RoPE, V */
    int np, p, n;                       /* prompts, prompt tokens, continuation tokens */
    int *tokens;                        /* (np, p + n) the sampled sequences */
    float *ref_logp;                    /* (np, n, vocab) exact log-probs */
    int *ref_greedy;                    /* (np, GREEDY_TOKENS) exact greedy continuation */
};

/* o = w * x / rms(x) (eps 1e-5). */
static void rmsnorm(float *o, const float *x, const float *w, int n)
{
    float ss = 0;
    for (int i = 0; i < n; i++)
        ss += x[i] * x[i];
    ss = 1.0f / sqrtf(ss / (float)n + 1e-5f);
    for (int i = 0; i < n; i++)
        o[i] = w[i] * (ss * x[i]);
}

static void matmul(float *o, const float *x, const float *w, int n, int d) /* o(d) = W(d,n) x */
{
    for (int i = 0; i < d; i++) {
        float s = 0;
        for (int j = 0; j < n; j++)
            s += w[(size_t)i * n + j] * x[j];
        o[i] = s;
    }
}

static void rope(float *v, int n, int hs, int pos) /* GPT-J pairs within each head */
{
    for (int i = 0; i < n; i += 2) {
        float f = 1.0f / powf(10000.0f, (float)(i % hs) / (float)hs), a = (float)pos * f;
        float c = cosf(a), s = sinf(a), v0 = v[i], v1 = v[i + 1];
        v[i] = v0 * c - v1 * s;
        v[i + 1] = v0 * s + v1 * c;
    }
}

/* One token at pos: writes its K (pre-RoPE) and V into the cache, attends over 0..pos,
 * leaves logits. */
static void forward(struct l2model *m, int tok, int pos)
{
    int dim = m->dim, hs = m->hs, kvd = m->kv_dim, grp = m->n_heads / m->n_kv;
    float kr[1024];
    memcpy(m->x, m->emb + (size_t)tok * dim, sizeof(float) * dim);
    for (int l = 0; l < m->n_layers; l++) {
        size_t lo = (size_t)l * m->seq_len * kvd;
        rmsnorm(m->xb, m->x, m->rms_att + (size_t)l * dim, dim);
        matmul(m->q, m->xb, m->wq + (size_t)l * dim * dim, dim, dim);
        matmul(m->kc + lo + (size_t)pos * kvd, m->xb, m->wk + (size_t)l * dim * kvd, dim, kvd);
        matmul(m->vc + lo + (size_t)pos * kvd, m->xb, m->wv + (size_t)l * dim * kvd, dim, kvd);
        rope(m->q, dim, hs, pos);
        for (int h = 0; h < m->n_heads; h++) {
            const float *qh = m->q + h * hs;
            float *att = m->att, mx = -1e30f, sum = 0;
            for (int t = 0; t <= pos; t++) {
                memcpy(kr, m->kc + lo + (size_t)t * kvd + (h / grp) * hs, sizeof(float) * hs);
                rope(kr, hs, hs, t);
                float s = 0;
                for (int i = 0; i < hs; i++)
                    s += qh[i] * kr[i];
                att[t] = s / sqrtf((float)hs);
                mx = att[t] > mx ? att[t] : mx;
            }
            for (int t = 0; t <= pos; t++) {
                att[t] = expf(att[t] - mx);
                sum += att[t];
            }
            float *o = m->xb + h * hs;
            memset(o, 0, sizeof(float) * hs);
            for (int t = 0; t <= pos; t++) {
                const float *v = m->vc + lo + (size_t)t * kvd + (h / grp) * hs;
                for (int i = 0; i < hs; i++)
                    o[i] += att[t] / sum * v[i];
            }
        }
        matmul(m->xb2, m->xb, m->wo + (size_t)l * dim * dim, dim, dim);
        for (int i = 0; i < dim; i++)
            m->x[i] += m->xb2[i];
        rmsnorm(m->xb, m->x, m->rms_ffn + (size_t)l * dim, dim);
        matmul(m->hb, m->xb, m->w1 + (size_t)l * dim * m->hidden, dim, m->hidden);
        matmul(m->hb2, m->xb, m->w3 + (size_t)l * dim * m->hidden, dim, m->hidden);
        for (int i = 0; i < m->hidden; i++)
            m->hb[i] = m->hb[i] / (1.0f + expf(-m->hb[i])) * m->hb2[i];
        matmul(m->xb2, m->hb, m->w2 + (size_t)l * dim * m->hidden, m->hidden, dim);
        for (int i = 0; i < dim; i++)
            m->x[i] += m->xb2[i];
    }
    rmsnorm(m->xb, m->x, m->rms_final, dim);
    matmul(m->logits, m->xb, m->wcls, dim, m->vocab);
}

/* o = log softmax(x). */
static void log_softmax(float *o, const float *x, int n)
{
    float mx = x[0], s = 0;
    for (int i = 1; i < n; i++)
        mx = x[i] > mx ? x[i] : mx;
    for (int i = 0; i < n; i++)
        s += expf(x[i] - mx);
    float ls = logf(s) + mx;
    for (int i = 0; i < n; i++)
        o[i] = x[i] - ls;
}

/* Index of the largest of n values (the first on ties). */
static int argmax(const float *x, int n)
{
    int b = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[b])
            b = i;
    return b;
}

/* Put prompt k's tokens' KV (from kv: [L][2][np*p][kv_dim], stacked) into the cache. */
static void load_prompt_kv(struct l2model *m, const float *kv, int k)
{
    size_t T = (size_t)m->np * m->p;
    for (int l = 0; l < m->n_layers; l++)
        for (int t = 0; t < m->p; t++) {
            size_t src = ((size_t)l * 2 * T + (size_t)k * m->p + t) * m->kv_dim;
            size_t dst = ((size_t)l * m->seq_len + t) * m->kv_dim;
            memcpy(m->kc + dst, kv + src, sizeof(float) * m->kv_dim);
            memcpy(m->vc + dst, kv + src + T * m->kv_dim, sizeof(float) * m->kv_dim);
        }
}

/* codec_kv_source.fidelity: KL, top-1 and greedy match of decoded prompt KV against the exact
 * run. */
static rk_status l2_fidelity(void *ctx, const float *decoded, codec_fidelity *out)
{
    struct l2model *m = ctx;
    float *lp = rk_malloc(sizeof(float) * m->vocab);
    if (!lp)
        return rk_error_set(RK_ERR_NOMEM, "fidelity");
    double kl = 0, agree = 0, match = 0;
    for (int k = 0; k < m->np; k++) {
        const int *seq = m->tokens + (size_t)k * (m->p + m->n);
        load_prompt_kv(m, decoded, k);
        for (int i = 0; i < m->n; i++) {
            forward(m, seq[m->p + i], m->p + i);
            log_softmax(lp, m->logits, m->vocab);
            const float *ref = m->ref_logp + ((size_t)k * m->n + i) * m->vocab;
            double d = 0;
            for (int v = 0; v < m->vocab; v++)
                d += exp(ref[v]) * (ref[v] - lp[v]);
            kl += d;
            agree += argmax(ref, m->vocab) == argmax(lp, m->vocab);
        }
        load_prompt_kv(m, decoded, k);
        int tok = seq[m->p], len = 0, live = 1;
        for (int g = 0; g < GREEDY_TOKENS; g++) {
            forward(m, tok, m->p + g);
            tok = argmax(m->logits, m->vocab);
            if (live && tok == m->ref_greedy[k * GREEDY_TOKENS + g])
                len++;
            else
                live = 0;
        }
        match += len;
    }
    rk_free(lp);
    out->kl = kl / (m->np * m->n);
    out->top1 = agree / (m->np * m->n);
    out->greedy_match = match / m->np;
    return RK_OK;
}

/* Release the model and its run state; NULL is a no-op. */
static void l2_free(struct l2model *m)
{
    if (!m)
        return;
    rk_free(m->data);
    rk_free(m->x);
    rk_free(m->kc);
    rk_free(m->vc);
    rk_free(m->tokens);
    rk_free(m->ref_logp);
    rk_free(m->ref_greedy);
    rk_free(m);
}

/* codec_kv_source.free_ctx. */
static void l2_free_ctx(void *ctx) { l2_free(ctx); }

/* Sample np sequences of p + n tokens (BOS, then temperature 1, seeded) into tokens and stack
 * the prompts' KV (positions 0..p-1) into kv [L][2][np*p][kv_dim]. With record, also keep
 * the exact next-token log-probs and greedy continuations the fidelity score compares to. */
static void sample_kv(struct l2model *m, uint64_t seed, int *tokens, float *kv, int record)
{
    uint64_t rng = seed * 0x9e3779b97f4a7c15ull + 0x1234567ull;
    size_t T = (size_t)m->np * m->p;
    for (int k = 0; k < m->np; k++) {
        int *seq = tokens + (size_t)k * (m->p + m->n);
        seq[0] = 1; /* BOS */
        for (int i = 0; i + 1 < m->p + m->n; i++) {
            forward(m, seq[i], i);
            if (record && i >= m->p)
                log_softmax(m->ref_logp + ((size_t)k * m->n + (i - m->p)) * m->vocab,
                            m->logits, m->vocab);
            float mx = m->logits[0], s = 0;
            for (int v = 1; v < m->vocab; v++)
                mx = m->logits[v] > mx ? m->logits[v] : mx;
            for (int v = 0; v < m->vocab; v++)
                s += expf(m->logits[v] - mx);
            rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
            float u = (float)((rng >> 40) * (1.0 / 16777216.0)) * s, c = 0;
            int pick = m->vocab - 1;
            for (int v = 0; v < m->vocab; v++) {
                c += expf(m->logits[v] - mx);
                if (c >= u) {
                    pick = v;
                    break;
                }
            }
            seq[i + 1] = pick;
        }
        if (record) {
            forward(m, seq[m->p + m->n - 1], m->p + m->n - 1);
            log_softmax(m->ref_logp + ((size_t)k * m->n + (m->n - 1)) * m->vocab, m->logits,
                        m->vocab);
        }
        for (int l = 0; l < m->n_layers; l++)
            for (int t = 0; t < m->p; t++) {
                size_t dst = ((size_t)l * 2 * T + (size_t)k * m->p + t) * m->kv_dim;
                size_t src = ((size_t)l * m->seq_len + t) * m->kv_dim;
                memcpy(kv + dst, m->kc + src, sizeof(float) * m->kv_dim);
                memcpy(kv + dst + T * m->kv_dim, m->vc + src, sizeof(float) * m->kv_dim);
            }
        if (!record)
            continue;
        int tok = seq[m->p]; /* the exact greedy continuation from the prompt */
        for (int g = 0; g < GREEDY_TOKENS; g++) {
            forward(m, tok, m->p + g);
            tok = argmax(m->logits, m->vocab);
            m->ref_greedy[k * GREEDY_TOKENS + g] = tok;
        }
    }
}

/* Codebook training data: KV of other prompts of the same model (seeds unlike the
 * evaluated prompts'). */
static float *l2_train_chunk(codec_kv_source *src, int i)
{
    struct l2model *m = src->ctx;
    float *kv = rk_malloc(codec_shape_values(&src->shape) * sizeof(float));
    int *tok = rk_malloc(sizeof(int) * (size_t)m->np * (m->p + m->n));
    if (kv && tok)
        sample_kv(m, src->model_seed * 7919 + 1000 + (uint64_t)i, tok, kv, 0);
    rk_free(tok);
    return kv;
}

rk_status codec_kv_source_llama2(const char *path, uint64_t seed, codec_kv_source *out)
{
    memset(out, 0, sizeof *out);
    struct l2model *m = rk_calloc(1, sizeof *m);
    rk_status st = RK_OK;
    FILE *f = fopen(path, "rb");
    int hdr[7];
    if (!m || !f || fread(hdr, 4, 7, f) != 7) {
        st = rk_error_set(!m ? RK_ERR_NOMEM : RK_ERR_IO, "%s: cannot read", path);
        goto fail;
    }
    m->dim = hdr[0], m->hidden = hdr[1], m->n_layers = hdr[2], m->n_heads = hdr[3];
    m->n_kv = hdr[4], m->vocab = hdr[5] < 0 ? -hdr[5] : hdr[5], m->seq_len = hdr[6];
    if (m->dim <= 0 || m->dim > 4096 || m->n_heads <= 0 || m->n_kv <= 0 || m->dim % m->n_heads ||
        m->n_heads % m->n_kv || m->n_layers <= 0 || m->n_layers > 64 || m->vocab <= 0 ||
        m->seq_len < 64 || m->hidden <= 0 || m->dim / m->n_heads > 1024) {
        st = rk_error_set(RK_ERR_FORMAT, "%s: not a llama2.c checkpoint", path);
        goto fail;
    }
    m->hs = m->dim / m->n_heads;
    m->kv_dim = m->n_kv * m->hs;
    fseek(f, 0, SEEK_END);
    long bytes = ftell(f) - 28;
    fseek(f, 28, SEEK_SET);
    size_t L = (size_t)m->n_layers, D = (size_t)m->dim, Hd = (size_t)m->hidden;
    size_t need = (size_t)m->vocab * D + L * D * 2 + L * D * D * 2 + L * D * m->kv_dim * 2 +
                  L * D * Hd * 3 + D + (size_t)m->seq_len * m->hs;
    if (hdr[5] < 0)
        need += (size_t)m->vocab * D;
    if (bytes < 0 || (size_t)bytes / 4 < need) {
        st = rk_error_set(RK_ERR_FORMAT, "%s: %ld bytes, weights need %zu", path, bytes, need * 4);
        goto fail;
    }
    m->data = rk_malloc((size_t)bytes);
    if (!m->data || fread(m->data, 1, (size_t)bytes, f) != (size_t)bytes) {
        st = rk_error_set(RK_ERR_IO, "%s: read failed", path);
        goto fail;
    }
    const float *w = m->data;
    m->emb = w, w += (size_t)m->vocab * D;
    m->rms_att = w, w += L * D;
    m->wq = w, w += L * D * D;
    m->wk = w, w += L * D * m->kv_dim;
    m->wv = w, w += L * D * m->kv_dim;
    m->wo = w, w += L * D * D;
    m->rms_ffn = w, w += L * D;
    m->w1 = w, w += L * D * Hd;
    m->w2 = w, w += L * D * Hd;
    m->w3 = w, w += L * D * Hd;
    m->rms_final = w, w += D;
    w += (size_t)m->seq_len * m->hs; /* legacy freq_cis real and imaginary halves */
    m->wcls = hdr[5] < 0 ? w : m->emb;
    /* prompts: 256 tokens (one stream block) when they fit, else half the context */
    m->p = m->seq_len >= 512 ? 256 : m->seq_len / 2;
    m->n = m->seq_len - m->p - GREEDY_TOKENS < 96 ? m->seq_len - m->p - GREEDY_TOKENS : 96;
    m->np = 4;
    size_t act = D * 4 + Hd * 2 + (size_t)m->seq_len + (size_t)m->vocab;
    m->x = rk_calloc(act, sizeof(float));
    m->kc = rk_calloc(L * m->seq_len * m->kv_dim, sizeof(float));
    m->vc = rk_calloc(L * m->seq_len * m->kv_dim, sizeof(float));
    m->tokens = rk_calloc((size_t)m->np * (m->p + m->n), sizeof(int));
    m->ref_logp = rk_calloc((size_t)m->np * m->n * m->vocab, sizeof(float));
    m->ref_greedy = rk_calloc((size_t)m->np * GREEDY_TOKENS, sizeof(int));
    out->kv = rk_calloc(L * 2 * m->np * m->p * m->kv_dim, sizeof(float));
    if (!m->x || !m->kc || !m->vc || !m->tokens || !m->ref_logp || !m->ref_greedy || !out->kv) {
        st = rk_error_set(RK_ERR_NOMEM, "eval model");
        goto fail;
    }
    m->xb = m->x + D, m->xb2 = m->xb + D, m->q = m->xb2 + D, m->hb = m->q + D;
    m->hb2 = m->hb + Hd, m->att = m->hb2 + Hd, m->logits = m->att + m->seq_len;
    sample_kv(m, seed, m->tokens, out->kv, 1);
    fclose(f);
    out->name = path;
    out->shape = (codec_shape){(uint32_t)m->n_layers, (uint32_t)(m->np * m->p), (uint32_t)m->n_kv,
                               (uint32_t)m->hs};
    out->fidelity = l2_fidelity;
    out->ctx = m;
    out->free_ctx = l2_free_ctx;
    out->train_chunk = l2_train_chunk;
    out->model_seed = seed;
    return RK_OK;
fail:
    if (f)
        fclose(f);
    rk_free(out->kv);
    out->kv = NULL;
    l2_free(m);
    return st;
}
