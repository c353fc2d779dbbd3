/*
 * cpu.c — the CPU reference backend: float32, multithreaded through rk_pool.
 *
 * Arithmetic follows llama2.c's run.c operation for operation (RMSNorm, RoPE with the same
 * float expressions, softmax with max subtraction, SiLU as x * (1 / (1 + expf(-x))), residual
 * adds) so that its checkpoints produce the same greedy tokens; the one deliberate difference
 * is the dot product, summed in 8 interleaved partial sums (vectorisable) rather than strictly
 * left to right. Every row of a batch is computed with exactly the same operations in the
 * same order as it would be alone, so prefill, token-by-token decode, batched decode and
 * row-subset forwards agree bit for bit.
 *
 * KV storage per sequence, each (n_layers, capacity, kv_dim) float32:
 *   k_raw — K before RoPE (what export returns), k_rot — K rotated at the slot's position
 *   (what attention reads), v — V. Keeping both Ks costs memory but makes export exact and
 *   attention cheap.
 */
#include <math.h>
#include <string.h>

#include "engine_impl.h"
#include "ragkv/alloc.h"
#include "ragkv/fp16.h"
#include "ragkv/thread.h"

/* Weights of one layer as float32 (borrowed from the model or from cpu_ctx.owned). */
typedef struct cpu_layer {
    const float *attn_norm; /* (d) */
    const float *wq;        /* (q, d) */
    const float *wk;        /* (kv, d) */
    const float *wv;        /* (kv, d) */
    const float *bq;        /* (q) or NULL */
    const float *bk;        /* (kv) or NULL */
    const float *bv;        /* (kv) or NULL */
    const float *wo;        /* (d, q) */
    const float *ffn_norm;  /* (d) */
    const float *w1;        /* (f, d) */
    const float *w2;        /* (d, f) */
    const float *w3;        /* (f, d) */
} cpu_layer;

typedef struct cpu_ctx {
    eng_model *m;            /* borrowed */
    const eng_model_info *mi; /* &m->info */
    rk_pool *pool;           /* owned worker threads */
    const float *tok_emb;    /* (vocab, d) */
    const float *final_norm; /* (d) */
    const float *wcls;       /* (vocab, d) */
    cpu_layer *layers;       /* (n_layers), owned */
    void **owned;            /* (n_owned) converted weight buffers */
    size_t n_owned;
} cpu_ctx;

typedef struct cpu_kv {
    float *k_raw; /* (n_layers, capacity, kv_dim) K before RoPE */
    float *k_rot; /* (n_layers, capacity, kv_dim) K after RoPE at the slot's position */
    float *v;     /* (n_layers, capacity, kv_dim) */
} cpu_kv;

/* ---- kernels --------------------------------------------------------------------------- */

/* Dot product in 8 partial sums: gcc vectorises this at -O2/-O3 without -ffast-math because
 * the association is written out. */
static inline float dot(const float *restrict a, const float *restrict b, size_t n)
{
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int k = 0; k < 8; k++)
            acc[k] += a[i + k] * b[i + k];
    float s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    for (; i < n; i++)
        s += a[i] * b[i];
    return s;
}

/* o = weight * x / rms(x), as llama2.c's rmsnorm (sequential sum of squares). */
static void rmsnorm(float *o, const float *x, const float *w, size_t n, float eps)
{
    float ss = 0.0f;
    for (size_t j = 0; j < n; j++)
        ss += x[j] * x[j];
    ss /= (float)n;
    ss += eps;
    ss = 1.0f / sqrtf(ss);
    for (size_t j = 0; j < n; j++)
        o[j] = w[j] * (ss * x[j]);
}

/* Rotate n_heads heads of head_dim in vec by position pos. */
static void rope(float *vec, int n_heads, int hd, int32_t pos, const float *inv_freq, eng_rope_layout layout)
{
    int half = hd / 2;
    for (int i = 0; i < half; i++) {
        float val = (float)pos * inv_freq[i];
        float fcr = cosf(val), fci = sinf(val);
        for (int h = 0; h < n_heads; h++) {
            float *p = vec + (size_t)h * (size_t)hd;
            int a = layout == ENG_ROPE_INTERLEAVED ? 2 * i : i;
            int b = layout == ENG_ROPE_INTERLEAVED ? 2 * i + 1 : i + half;
            float v0 = p[a], v1 = p[b];
            p[a] = v0 * fcr - v1 * fci;
            p[b] = v0 * fci + v1 * fcr;
        }
    }
}

typedef struct matmul_job {
    float *y;          /* (n, out) */
    const float *x;    /* (n, in) */
    const float *w;    /* (out, in) */
    size_t n, in, out; /* tokens, input width, output width */
} matmul_job;

/* Output rows [o0, o1) for every token, in blocks of ~64 KB of weight rows that stay in
 * cache while every token passes over them (without blocking, each token would stream the
 * whole matrix from memory). The block size changes no result: each y is one dot(). */
static void matmul_range(void *arg, size_t o0, size_t o1)
{
    const matmul_job *j = arg;
    size_t block = (64u << 10) / (j->in * sizeof(float));
    if (block == 0)
        block = 1;
    for (size_t ob = o0; ob < o1; ob += block) {
        size_t oe = ob + block < o1 ? ob + block : o1;
        for (size_t t = 0; t < j->n; t++) {
            const float *x = j->x + t * j->in;
            float *y = j->y + t * j->out;
            for (size_t o = ob; o < oe; o++)
                y[o] = dot(j->w + o * j->in, x, j->in);
        }
    }
}

/* y (n, out) = x (n, in) W^T for W (out, in) row-major. */
static void matmul(cpu_ctx *c, float *y, const float *x, const float *w, size_t n, size_t in, size_t out)
{
    matmul_job j = {y, x, w, n, in, out};
    size_t work = n * in * out;
    if (work < (1u << 16) || rk_pool_size(c->pool) <= 1) {
        matmul_range(&j, 0, out);
        return;
    }
    /* pieces of ~64K multiply-adds, at least 4 rows */
    size_t grain = (1u << 16) / (n * in);
    if (grain < 4)
        grain = 4;
    rk_pool_for(c->pool, out, grain, matmul_range, &j);
}

/* ---- weights --------------------------------------------------------------------------- */

typedef struct conv_job {
    float *dst;          /* widened float32 elements */
    const uint16_t *src; /* f16 or bf16 elements */
    eng_dtype dt;        /* which of the two */
} conv_job;

static void conv_range(void *arg, size_t b, size_t e)
{
    const conv_job *j = arg;
    for (size_t i = b; i < e; i++)
        j->dst[i] = j->dt == ENG_DTYPE_F16 ? rk_f16_to_f32(j->src[i]) : rk_bf16_to_f32(j->src[i]);
}

/* A float32 view of t: in place when it is f32, else a converted copy owned by c. */
static rk_status f32_view(cpu_ctx *c, const eng_tensor *t, const float **out)
{
    *out = NULL;
    if (!t->data)
        return RK_OK;
    if (t->dtype == ENG_DTYPE_F32) {
        *out = t->data;
        return RK_OK;
    }
    size_t n = t->rows * t->cols;
    float *dst = rk_aligned_alloc(RK_ALIGN, n * sizeof(float) + 1);
    void **o = dst ? rk_realloc(c->owned, (c->n_owned + 1) * sizeof(void *)) : NULL;
    if (!o) {
        rk_aligned_free(dst);
        return rk_error_set(RK_ERR_NOMEM, "cpu backend: out of memory converting weights to float32");
    }
    c->owned = o;
    c->owned[c->n_owned++] = dst;
    conv_job j = {dst, t->data, t->dtype};
    rk_pool_for(c->pool, n, 1u << 16, conv_range, &j);
    *out = dst;
    return RK_OK;
}

static void cpu_free(void *ctx)
{
    cpu_ctx *c = ctx;
    if (!c)
        return;
    for (size_t i = 0; i < c->n_owned; i++)
        rk_aligned_free(c->owned[i]);
    rk_free(c->owned);
    rk_free(c->layers);
    rk_pool_free(c->pool);
    rk_free(c);
}

/* ---- sequences and hidden blocks ---------------------------------------------------- */

static rk_status cpu_seq_init(void *ctx, eng_seq *s)
{
    cpu_ctx *c = ctx;
    size_t kvd = (size_t)c->mi->n_kv_heads * (size_t)c->mi->head_dim, n;
    if (!rk_mul_size((size_t)c->mi->n_layers, s->capacity, &n) || !rk_mul_size(n, kvd * sizeof(float), &n))
        return rk_error_set(RK_ERR_LIMIT, "cpu backend: KV cache of %zu slots too large", s->capacity);
    cpu_kv *kv = rk_calloc(1, sizeof(*kv));
    if (!kv)
        return rk_error_set(RK_ERR_NOMEM, "cpu backend: out of memory");
    kv->k_raw = rk_aligned_alloc(RK_ALIGN, n);
    kv->k_rot = rk_aligned_alloc(RK_ALIGN, n);
    kv->v = rk_aligned_alloc(RK_ALIGN, n);
    if (!kv->k_raw || !kv->k_rot || !kv->v) {
        rk_aligned_free(kv->k_raw);
        rk_aligned_free(kv->k_rot);
        rk_aligned_free(kv->v);
        rk_free(kv);
        return rk_error_set(RK_ERR_NOMEM, "cpu backend: out of memory for a KV cache of %zu slots", s->capacity);
    }
    s->ctx = kv;
    return RK_OK;
}

static void cpu_seq_release(void *ctx, eng_seq *s)
{
    cpu_kv *kv = s->ctx;
    if (!kv)
        return;
    rk_aligned_free(kv->k_raw);
    rk_aligned_free(kv->k_rot);
    rk_aligned_free(kv->v);
    rk_free(kv);
    s->ctx = NULL;
}

static rk_status cpu_hidden_init(void *ctx, eng_hidden *h)
{
    cpu_ctx *c = ctx;
    size_t n;
    if (!rk_mul_size(h->rows, (size_t)c->mi->dim * sizeof(float), &n))
        return rk_error_set(RK_ERR_LIMIT, "cpu backend: hidden block too large");
    h->ctx = rk_aligned_alloc(RK_ALIGN, n + 1);
    return h->ctx ? RK_OK : rk_error_set(RK_ERR_NOMEM, "cpu backend: out of memory");
}

static void cpu_hidden_release(void *ctx, eng_hidden *h)
{
    rk_aligned_free(h->ctx);
    h->ctx = NULL;
}

static rk_status cpu_hidden_write(void *ctx, eng_hidden *h, size_t row0, size_t n, const float *src)
{
    cpu_ctx *c = ctx;
    size_t d = (size_t)c->mi->dim;
    memcpy((float *)h->ctx + row0 * d, src, n * d * sizeof(float));
    return RK_OK;
}

static rk_status cpu_hidden_read(void *ctx, const eng_hidden *h, size_t row0, size_t n, float *dst)
{
    cpu_ctx *c = ctx;
    size_t d = (size_t)c->mi->dim;
    memcpy(dst, (const float *)h->ctx + row0 * d, n * d * sizeof(float));
    return RK_OK;
}

static rk_status cpu_hidden_gather(void *ctx, eng_hidden *dst, const eng_hidden *src, const size_t *idx, size_t n)
{
    cpu_ctx *c = ctx;
    size_t d = (size_t)c->mi->dim;
    for (size_t i = 0; i < n; i++)
        memcpy((float *)dst->ctx + i * d, (const float *)src->ctx + idx[i] * d, d * sizeof(float));
    return RK_OK;
}

static rk_status cpu_embed(void *ctx, eng_hidden *h, size_t row0, const int32_t *tokens, size_t n)
{
    cpu_ctx *c = ctx;
    size_t d = (size_t)c->mi->dim;
    for (size_t i = 0; i < n; i++)
        memcpy((float *)h->ctx + (row0 + i) * d, c->tok_emb + (size_t)tokens[i] * d, d * sizeof(float));
    return RK_OK;
}

/* ---- the layer ------------------------------------------------------------------------- */

typedef struct attn_job {
    const cpu_ctx *c;     /* the backend */
    eng_seq *const *seqs; /* (n) the sequence of each row */
    int layer;            /* which layer's cache */
    const float *q;       /* (n, q_dim) rotated queries */
    const int32_t *pos;   /* (n) */
    float *out;           /* (n, q_dim) */
    const eng_attn_groups *ag; /* optional slot groups */
    const int32_t *grp;   /* (seq len) group of each slot, -1 for none; NULL without ag */
    float *mass_h;        /* (n, n_heads, n_groups) per-head masses when ag->mass */
    bool failed;          /* a worker ran out of memory */
} attn_job;

/* Attention for (row, head) pairs [b, e): exact causal rule by position. */
static void attn_range(void *arg, size_t b, size_t e)
{
    attn_job *j = arg;
    const eng_model_info *mi = j->c->mi;
    size_t H = (size_t)mi->n_heads, hd = (size_t)mi->head_dim, kvd = (size_t)mi->n_kv_heads * hd;
    size_t group = (size_t)(mi->n_heads / mi->n_kv_heads);
    float scale = sqrtf((float)hd);
    size_t cap_scores = 0;
    float *scores = NULL;
    for (size_t rh = b; rh < e; rh++) {
        size_t r = rh / H, h = rh % H;
        const eng_seq *s = j->seqs[r];
        const cpu_kv *kv = s->ctx;
        size_t len = s->len;
        if (len > cap_scores) {
            rk_free(scores);
            cap_scores = len;
            scores = rk_malloc(cap_scores * sizeof(float));
            if (!scores) {
                j->failed = true;
                return;
            }
        }
        const float *q = j->q + r * H * hd + h * hd;
        size_t base = (size_t)j->layer * s->capacity * kvd + (h / group) * hd;
        const float *kr = kv->k_rot + base, *vv = kv->v + base;
        int32_t p = j->pos[r];
        float maxv = -INFINITY;
        for (size_t t = 0; t < len; t++) {
            if (s->pos[t] > p) {
                scores[t] = -INFINITY; /* invisible (later position or empty slot) */
                continue;
            }
            float sc = dot(q, kr + t * kvd, hd) / scale;
            if (j->grp && j->grp[t] >= 0) {
                if (j->ag->temperature)
                    sc /= j->ag->temperature[j->grp[t]];
                if (j->ag->log_scale)
                    sc += j->ag->log_scale[j->grp[t]];
            }
            scores[t] = sc;
            if (sc > maxv)
                maxv = sc;
        }
        float sum = 0.0f;
        for (size_t t = 0; t < len; t++) {
            if (s->pos[t] > p)
                continue;
            scores[t] = maxv == -INFINITY ? 0.0f : expf(scores[t] - maxv); /* all hidden: no weight */
            sum += scores[t];
        }
        float *o = j->out + r * H * hd + h * hd;
        memset(o, 0, hd * sizeof(float));
        for (size_t t = 0; t < len && sum > 0.0f; t++) {
            if (s->pos[t] > p)
                continue;
            float a = scores[t] / sum;
            const float *v = vv + t * kvd;
            for (size_t i = 0; i < hd; i++)
                o[i] += a * v[i];
        }
        if (j->mass_h) {
            float *mh = j->mass_h + rh * j->ag->n_groups;
            for (size_t g = 0; g < j->ag->n_groups; g++) {
                float m = 0.0f;
                size_t end = j->ag->bounds[g + 1] < len ? j->ag->bounds[g + 1] : len;
                for (size_t t = j->ag->bounds[g]; t < end && sum > 0.0f; t++)
                    if (s->pos[t] <= p)
                        m += scores[t] / sum;
                mh[g] = m;
            }
        }
    }
    rk_free(scores);
}

/* Layer `layer` over n rows x (n, d) in place; row i belongs to seqs[i] at pos[i], slot
 * slots[i] (already recorded in seqs[i]->pos). */
/* kv_only: stop once the rows' K and V are stored (eng_layer_kv; x is not changed) */
static rk_status cpu_layer_rows(cpu_ctx *c, eng_seq *const *seqs, int layer, float *x, size_t n, const int32_t *pos,
                                const int32_t *slots, float *k_fresh, float *v_fresh, const eng_attn_groups *ag,
                                bool kv_only)
{
    const eng_model_info *mi = c->mi;
    const cpu_layer *w = &c->layers[layer];
    size_t d = (size_t)mi->dim, hd = (size_t)mi->head_dim, qd = (size_t)mi->n_heads * hd,
           kvd = (size_t)mi->n_kv_heads * hd, f = (size_t)mi->hidden;
    /* scratch: xb (n,d), q (n,qd), k (n,kvd), v (n,kvd), att (n,qd), hb (n,f), hb2 (n,f) */
    size_t per_row = d + qd + 2 * kvd + qd + 2 * f, total;
    if (!rk_mul_size(per_row, n, &total) || !rk_mul_size(total, sizeof(float), &total))
        return rk_error_set(RK_ERR_LIMIT, "cpu backend: batch too large");
    float *buf = rk_aligned_alloc(RK_ALIGN, total);
    if (!buf)
        return rk_error_set(RK_ERR_NOMEM, "cpu backend: out of memory for %zu rows", n);
    float *xb = buf, *q = xb + n * d, *k = q + n * qd, *v = k + n * kvd, *att = v + n * kvd, *hb = att + n * qd,
          *hb2 = hb + n * f;

    for (size_t i = 0; i < n; i++)
        rmsnorm(xb + i * d, x + i * d, w->attn_norm, d, mi->norm_eps);
    matmul(c, q, xb, w->wq, n, d, qd);
    matmul(c, k, xb, w->wk, n, d, kvd);
    matmul(c, v, xb, w->wv, n, d, kvd);
    if (w->bq)
        for (size_t i = 0; i < n; i++) {
            for (size_t j = 0; j < qd; j++)
                q[i * qd + j] += w->bq[j];
            for (size_t j = 0; j < kvd; j++) {
                k[i * kvd + j] += w->bk[j];
                v[i * kvd + j] += w->bv[j];
            }
        }
    if (k_fresh)
        memcpy(k_fresh, k, n * kvd * sizeof(float));
    if (v_fresh)
        memcpy(v_fresh, v, n * kvd * sizeof(float));
    /* store K (both forms) and V, rotate the queries */
    for (size_t i = 0; i < n; i++) {
        cpu_kv *kv = seqs[i]->ctx;
        size_t off = ((size_t)layer * seqs[i]->capacity + (size_t)slots[i]) * kvd;
        memcpy(kv->k_raw + off, k + i * kvd, kvd * sizeof(float));
        memcpy(kv->v + off, v + i * kvd, kvd * sizeof(float));
        rope(k + i * kvd, mi->n_kv_heads, mi->head_dim, pos[i], c->m->inv_freq, mi->rope);
        memcpy(kv->k_rot + off, k + i * kvd, kvd * sizeof(float));
        rope(q + i * qd, mi->n_heads, mi->head_dim, pos[i], c->m->inv_freq, mi->rope);
    }
    if (kv_only) {
        rk_aligned_free(buf);
        return RK_OK;
    }
    /* attention over each row's whole sequence */
    size_t pairs = n * (size_t)mi->n_heads;
    float *mass_h = NULL;
    int32_t *grp = NULL;
    if (ag) {
        /* slot -> group, for the score modifiers (groups apply to a single sequence) */
        size_t len = seqs[0]->len;
        grp = rk_malloc((len ? len : 1) * sizeof(int32_t));
        if (grp) {
            for (size_t t = 0; t < len; t++)
                grp[t] = -1;
            for (size_t g = 0; g < ag->n_groups; g++)
                for (size_t t = ag->bounds[g]; t < ag->bounds[g + 1] && t < len; t++)
                    grp[t] = (int32_t)g;
        }
        if (ag->mass)
            mass_h = rk_malloc(pairs * ag->n_groups * sizeof(float));
        if (!grp || (ag->mass && !mass_h)) {
            rk_free(grp);
            rk_free(mass_h);
            rk_aligned_free(buf);
            return rk_error_set(RK_ERR_NOMEM, "cpu backend: out of memory for attention groups");
        }
    }
    attn_job aj = {c, seqs, layer, q, pos, att, ag, grp, mass_h, false};
    if (pairs == 1 || rk_pool_size(c->pool) <= 1)
        attn_range(&aj, 0, pairs);
    else
        rk_pool_for(c->pool, pairs, 1, attn_range, &aj);
    rk_free(grp);
    if (aj.failed) {
        rk_free(mass_h);
        rk_aligned_free(buf);
        return rk_error_set(RK_ERR_NOMEM, "cpu backend: out of memory in attention");
    }
    if (mass_h) {
        /* average over heads, in head order (deterministic whatever the thread split) */
        size_t H = (size_t)mi->n_heads, G = ag->n_groups;
        for (size_t r = 0; r < n; r++)
            for (size_t g = 0; g < G; g++) {
                float m = 0.0f;
                for (size_t h = 0; h < H; h++)
                    m += mass_h[(r * H + h) * G + g];
                if (ag->mass_add_rows)
                    ag->mass[g] += m / (float)H;
                else
                    ag->mass[r * G + g] = m / (float)H;
            }
        rk_free(mass_h);
    }
    matmul(c, xb, att, w->wo, n, qd, d);
    for (size_t i = 0; i < n * d; i++)
        x[i] += xb[i];
    /* SwiGLU FFN */
    for (size_t i = 0; i < n; i++)
        rmsnorm(xb + i * d, x + i * d, w->ffn_norm, d, mi->norm_eps);
    matmul(c, hb, xb, w->w1, n, d, f);
    matmul(c, hb2, xb, w->w3, n, d, f);
    for (size_t i = 0; i < n * f; i++) {
        float val = hb[i];
        val *= (1.0f / (1.0f + expf(-val)));
        val *= hb2[i];
        hb[i] = val;
    }
    matmul(c, xb, hb, w->w2, n, f, d);
    for (size_t i = 0; i < n * d; i++)
        x[i] += xb[i];
    rk_aligned_free(buf);
    return RK_OK;
}

/* cpu_layer_rows with every row in sequence s */
static rk_status layer_of_seq(cpu_ctx *c, eng_seq *s, int layer, float *x, size_t n, const int32_t *pos,
                              const int32_t *slots, float *k_fresh, float *v_fresh, const eng_attn_groups *ag,
                              bool kv_only)
{
    eng_seq **seqs = rk_malloc(n * sizeof(eng_seq *));
    if (!seqs)
        return rk_error_set(RK_ERR_NOMEM, "cpu backend: out of memory");
    for (size_t i = 0; i < n; i++)
        seqs[i] = s;
    rk_status st = cpu_layer_rows(c, seqs, layer, x, n, pos, slots, k_fresh, v_fresh, ag, kv_only);
    rk_free(seqs);
    return st;
}

static rk_status cpu_layer_forward(void *ctx, eng_seq *s, int layer, eng_hidden *h, size_t n, const int32_t *pos,
                                   const int32_t *slots, float *k_fresh, float *v_fresh, const eng_attn_groups *ag)
{
    return layer_of_seq(ctx, s, layer, h->ctx, n, pos, slots, k_fresh, v_fresh, ag, false);
}

static rk_status cpu_layer_kv(void *ctx, eng_seq *s, int layer, const eng_hidden *h, size_t n, const int32_t *pos,
                              const int32_t *slots)
{
    return layer_of_seq(ctx, s, layer, h->ctx, n, pos, slots, NULL, NULL, NULL, true);
}

static rk_status logits_rows(cpu_ctx *c, const float *x, const size_t *rows, size_t n, float *logits)
{
    size_t d = (size_t)c->mi->dim;
    float *xn = rk_aligned_alloc(RK_ALIGN, n * d * sizeof(float) + 1);
    if (!xn)
        return rk_error_set(RK_ERR_NOMEM, "cpu backend: out of memory");
    for (size_t i = 0; i < n; i++)
        rmsnorm(xn + i * d, x + (rows ? rows[i] : i) * d, c->final_norm, d, c->mi->norm_eps);
    matmul(c, logits, xn, c->wcls, n, d, (size_t)c->mi->vocab);
    rk_aligned_free(xn);
    return RK_OK;
}

static rk_status cpu_logits(void *ctx, const eng_hidden *h, const size_t *rows, size_t n, float *logits)
{
    return logits_rows(ctx, h->ctx, rows, n, logits);
}

static rk_status cpu_kv_export(void *ctx, const eng_seq *s, int layer0, int n_layers, size_t slot0, size_t n,
                               float *out)
{
    cpu_ctx *c = ctx;
    const cpu_kv *kv = s->ctx;
    size_t kvd = (size_t)c->mi->n_kv_heads * (size_t)c->mi->head_dim;
    for (size_t i = 0; i < (size_t)n_layers; i++) {
        size_t src = (((size_t)layer0 + i) * s->capacity + slot0) * kvd;
        memcpy(out + (2 * i) * n * kvd, kv->k_raw + src, n * kvd * sizeof(float));
        memcpy(out + (2 * i + 1) * n * kvd, kv->v + src, n * kvd * sizeof(float));
    }
    return RK_OK;
}

static rk_status cpu_kv_import(void *ctx, eng_seq *s, int layer0, int n_layers, size_t slot0, size_t n,
                               const int32_t *pos, const float *kv_in)
{
    cpu_ctx *c = ctx;
    cpu_kv *kv = s->ctx;
    const eng_model_info *mi = c->mi;
    size_t kvd = (size_t)mi->n_kv_heads * (size_t)mi->head_dim;
    for (size_t i = 0; i < (size_t)n_layers; i++) {
        size_t l = (size_t)layer0 + i;
        size_t dst = (l * s->capacity + slot0) * kvd;
        memcpy(kv->k_raw + dst, kv_in + (2 * i) * n * kvd, n * kvd * sizeof(float));
        memcpy(kv->k_rot + dst, kv_in + (2 * i) * n * kvd, n * kvd * sizeof(float));
        memcpy(kv->v + dst, kv_in + (2 * i + 1) * n * kvd, n * kvd * sizeof(float));
        for (size_t t = 0; t < n; t++)
            rope(kv->k_rot + dst + t * kvd, mi->n_kv_heads, mi->head_dim, pos[t], c->m->inv_freq, mi->rope);
    }
    return RK_OK;
}

static rk_status cpu_decode(void *ctx, eng_seq *const *seqs, const int32_t *tokens, const int32_t *pos,
                            const int32_t *slots, size_t n, float *logits)
{
    cpu_ctx *c = ctx;
    size_t d = (size_t)c->mi->dim;
    float *x = rk_aligned_alloc(RK_ALIGN, n * d * sizeof(float) + 1);
    if (!x)
        return rk_error_set(RK_ERR_NOMEM, "cpu backend: out of memory");
    for (size_t i = 0; i < n; i++)
        memcpy(x + i * d, c->tok_emb + (size_t)tokens[i] * d, d * sizeof(float));
    rk_status st = RK_OK;
    for (int l = 0; l < c->mi->n_layers && st == RK_OK; l++)
        st = cpu_layer_rows(c, seqs, l, x, n, pos, slots, NULL, NULL, NULL, false);
    if (st == RK_OK)
        st = logits_rows(c, x, NULL, n, logits);
    rk_aligned_free(x);
    return st;
}

static const struct eng_backend_i cpu_iface = {
    .name = "cpu",
    .free = cpu_free,
    .seq_init = cpu_seq_init,
    .seq_release = cpu_seq_release,
    .hidden_init = cpu_hidden_init,
    .hidden_release = cpu_hidden_release,
    .hidden_write = cpu_hidden_write,
    .hidden_read = cpu_hidden_read,
    .hidden_gather = cpu_hidden_gather,
    .embed = cpu_embed,
    .layer_forward = cpu_layer_forward,
    .logits = cpu_logits,
    .kv_export = cpu_kv_export,
    .kv_import = cpu_kv_import,
    .decode = cpu_decode,
    .layer_kv = cpu_layer_kv,
};

rk_status eng_backend_cpu_new(eng_model *m, int nthreads, eng_backend **out)
{
    *out = NULL;
    if (!m)
        return rk_error_set(RK_ERR_INVALID, "cpu backend: no model");
    rk_status st;
    eng_backend *be = NULL;
    cpu_ctx *c = rk_calloc(1, sizeof(*c));
    if (!c)
        return rk_error_set(RK_ERR_NOMEM, "cpu backend: out of memory");
    c->m = m;
    c->mi = &m->info;
    if ((st = rk_pool_create(nthreads, &c->pool)) != RK_OK)
        goto fail;
    c->layers = rk_calloc((size_t)m->info.n_layers, sizeof(cpu_layer));
    be = rk_calloc(1, sizeof(*be));
    if (!c->layers || !be) {
        st = rk_error_set(RK_ERR_NOMEM, "cpu backend: out of memory");
        goto fail;
    }
    if ((st = f32_view(c, &m->tok_emb, &c->tok_emb)) || (st = f32_view(c, &m->final_norm, &c->final_norm)))
        goto fail;
    if (m->wcls.data == m->tok_emb.data)
        c->wcls = c->tok_emb;
    else if ((st = f32_view(c, &m->wcls, &c->wcls)))
        goto fail;
    for (int l = 0; l < m->info.n_layers; l++) {
        const eng_layer_weights *w = &m->layers[l];
        cpu_layer *o = &c->layers[l];
        if ((st = f32_view(c, &w->attn_norm, &o->attn_norm)) || (st = f32_view(c, &w->wq, &o->wq)) ||
            (st = f32_view(c, &w->wk, &o->wk)) || (st = f32_view(c, &w->wv, &o->wv)) ||
            (st = f32_view(c, &w->bq, &o->bq)) || (st = f32_view(c, &w->bk, &o->bk)) ||
            (st = f32_view(c, &w->bv, &o->bv)) || (st = f32_view(c, &w->wo, &o->wo)) ||
            (st = f32_view(c, &w->ffn_norm, &o->ffn_norm)) || (st = f32_view(c, &w->w1, &o->w1)) ||
            (st = f32_view(c, &w->w2, &o->w2)) || (st = f32_view(c, &w->w3, &o->w3)))
            goto fail;
    }
    be->iface = &cpu_iface;
    be->ctx = c;
    be->model = m;
    *out = be;
    return RK_OK;
fail:
    rk_free(be);
    cpu_free(c);
    return st;
}
