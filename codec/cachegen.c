/* cachegen.c — the cachegen codec: layer-banded symmetric quantization (scales per token or
 * per channel, optional delta coding against anchor tokens) and rANS entropy coding with
 * probability models per (layer, K|V, channel group), cut into independent streams of at
 * most 256 tokens x one channel group. docs/codec.md explains the choices and measures them. */
#include <math.h>
#include <string.h>

#include "codec_impl.h"
#include "ragkv/alloc.h"
#include "ragkv/hash.h"

#define CG_DEFAULT_LEVEL 1
#define CG_MAX_LEVEL 4
#define CG_QMAX_MAX 31 /* the largest alphabet, 63 symbols, fits CODEC_MAX_SYMBOLS */

/* qmax per level: {K early, K late, V early, V late}. Early K layers are the first third,
 * early V layers the first two (CacheGen's bands). Symbols per value: 2 * qmax + 1. */
static const uint8_t level_qmax[CG_MAX_LEVEL + 1][4] = {
    {31, 15, 31, 15}, /* 0: best */
    {15, 7, 15, 7},   /* 1: default, CacheGen's bins (32 early, 16 late) */
    {7, 3, 7, 3},     /* 2 */
    {3, 2, 3, 1},     /* 3 */
    {2, 1, 1, 1},     /* 4: smallest */
};

void cg_params_for_level(int level, uint32_t n_layers, const codec_params *user,
                         uint32_t head_dim, cg_params *p)
{
    memset(p, 0, sizeof *p);
    if (level < 0 || level > CG_MAX_LEVEL)
        level = CG_DEFAULT_LEVEL;
    uint32_t k_early = (n_layers + 2) / 3, v_early = 2;
    for (uint32_t l = 0; l < n_layers && l < CG_MAX_LAYERS; l++) {
        p->qmax[2 * l] = level_qmax[level][l < k_early ? 0 : 1];
        p->qmax[2 * l + 1] = level_qmax[level][l < v_early ? 2 : 3];
    }
    p->k_scale_mode = user && user->k_scale_mode >= 0 ? (uint8_t)user->k_scale_mode
                                                      : CODEC_SCALE_CHANNEL;
    p->v_scale_mode = user && user->v_scale_mode >= 0 ? (uint8_t)user->v_scale_mode
                                                      : CODEC_SCALE_CHANNEL;
    p->anchor_interval = user && user->anchor_interval >= 0 ? (uint16_t)user->anchor_interval : 0;
    p->stream_tokens = 256;
    p->group = user && user->group > 0 ? (uint16_t)user->group : 8;
    p->model_group = user && user->model_group > 0 ? (uint16_t)user->model_group
                                                   : (uint16_t)(head_dim > 65535 ? 65535 : head_dim);
}

rk_status cg_params_parse(const uint8_t *d, size_t len, uint32_t n_layers, cg_params *p)
{
    memset(p, 0, sizeof *p);
    if (n_layers > CG_MAX_LAYERS || len != CG_PARAMS_FIXED + 2 * (size_t)n_layers)
        return rk_error_set(RK_ERR_FORMAT, "cachegen: parameter section of %zu bytes for %u "
                            "layers", len, n_layers);
    p->k_scale_mode = d[0];
    p->v_scale_mode = d[1];
    p->tables = d[2];
    p->anchor_interval = rk_get_le16(d + 4);
    p->stream_tokens = rk_get_le16(d + 6);
    p->group = rk_get_le16(d + 8);
    p->model_group = rk_get_le16(d + 10);
    p->transform = d[3];
    if (p->k_scale_mode > 1 || p->v_scale_mode > 1 || p->tables > 1 || p->transform > 2)
        return rk_error_set(RK_ERR_FORMAT, "cachegen: bad mode byte");
    if (p->transform && (p->tables != 1 || p->k_scale_mode != CODEC_SCALE_CHANNEL ||
                         p->v_scale_mode != CODEC_SCALE_CHANNEL || p->anchor_interval))
        return rk_error_set(RK_ERR_FORMAT, "cachegen: transform without a codebook, or with "
                            "token scales or delta coding");
    if (!p->stream_tokens || p->stream_tokens > 256 || !p->group || !p->model_group ||
        p->anchor_interval > p->stream_tokens)
        return rk_error_set(RK_ERR_FORMAT, "cachegen: bad stream parameters");
    for (uint32_t i = 0; i < 2 * n_layers; i++) {
        p->qmax[i] = d[CG_PARAMS_FIXED + i];
        if (p->qmax[i] < 1 || 2 * p->qmax[i] + 1 > CODEC_MAX_SYMBOLS)
            return rk_error_set(RK_ERR_FORMAT, "cachegen: qmax %u", p->qmax[i]);
    }
    return RK_OK;
}

void cg_params_write(const cg_params *p, uint32_t n_layers, rk_buf *out)
{
    uint8_t f[CG_PARAMS_FIXED] = {p->k_scale_mode, p->v_scale_mode, p->tables, p->transform};
    rk_put_le16(f + 4, p->anchor_interval);
    rk_put_le16(f + 6, p->stream_tokens);
    rk_put_le16(f + 8, p->group);
    rk_put_le16(f + 10, p->model_group);
    rk_buf_append(out, f, sizeof f);
    rk_buf_append(out, p->qmax, 2 * (size_t)n_layers);
}

rk_status cg_layout_make(const codec_shape *s, const cg_params *p, cg_layout *lay)
{
    memset(lay, 0, sizeof *lay);
    lay->L = s->n_layers;
    lay->T = s->n_tokens;
    lay->H = s->n_kv_heads;
    lay->D = s->head_dim;
    if ((uint64_t)lay->H * lay->D > (1u << 20) || lay->L > CG_MAX_LAYERS)
        return rk_error_set(RK_ERR_LIMIT, "cachegen: %u layers x %u channels", lay->L,
                            lay->H * lay->D);
    lay->C = lay->H * lay->D;
    lay->n_tblocks = (lay->T + p->stream_tokens - 1) / p->stream_tokens;
    lay->n_groups = (lay->C + p->group - 1) / p->group;
    lay->n_streams = (size_t)lay->L * 2 * lay->n_tblocks * lay->n_groups;
    lay->n_mgroups = (lay->C + p->model_group - 1) / p->model_group;
    lay->models_per_lkv = lay->n_mgroups * (p->anchor_interval ? 2 : 1);
    lay->n_models = (size_t)lay->L * 2 * lay->models_per_lkv;
    for (int kv = 0; kv < 2; kv++) {
        int mode = kv ? p->v_scale_mode : p->k_scale_mode;
        lay->scale_block[kv] = mode == CODEC_SCALE_TOKEN
                                   ? (size_t)lay->T * lay->H
                                   : (size_t)lay->C * (p->anchor_interval ? 2 : 1);
    }
    lay->n_scales = (size_t)lay->L * (lay->scale_block[0] + lay->scale_block[1]);
    return RK_OK;
}

size_t cg_scale_index(const cg_layout *lay, const cg_params *p, uint32_t l, uint32_t kv,
                      uint32_t t, uint32_t c, int residual)
{
    size_t base = (size_t)l * (lay->scale_block[0] + lay->scale_block[1]) +
                  (kv ? lay->scale_block[0] : 0);
    int mode = kv ? p->v_scale_mode : p->k_scale_mode;
    if (mode == CODEC_SCALE_TOKEN)
        return base + (size_t)t * lay->H + c / lay->D;
    return base + (size_t)(residual ? lay->C : 0) + c;
}

/* ---- quantization ---------------------------------------------------------------------- */

/* A scale as stored (fp16), from the largest magnitude it must cover and the step wanted
 * (0: none; a step too small to cover absmax with qmax levels is widened). */
static uint16_t scale_of(float absmax, int qmax, float step)
{
    float s = absmax / (float)qmax;
    if (step > s)
        s = step;
    if (s > 65504.0f)
        s = 65504.0f;
    return rk_f32_to_f16(s);
}

/* Symmetric quantization of v with step s, clamped to [-qmax, qmax] (0 for a zero step). */
static int quant(float v, float s, int qmax)
{
    if (!(s > 0.0f))
        return 0;
    float q = rintf(v / s);
    if (q > (float)qmax)
        q = (float)qmax;
    if (q < -(float)qmax)
        q = -(float)qmax;
    return (int)q;
}

struct quant_job {
    const float *kv;     /* [L][2][T][C] input */
    const cg_params *p;
    const cg_layout *lay;
    const float *step;   /* [L][2][C] wanted step per channel (channel mode), or NULL */
    uint8_t *sym;        /* [L][2][T][C] symbols out */
    uint16_t *scales;    /* [n_scales] fp16 out */
    int failed;          /* an allocation failed */
};

/* Quantize one (layer, K|V) plane: anchors (or every token without delta coding) first,
 * then residual tokens against their anchors' reconstruction. */
static void quant_lkv(void *vctx, size_t b, size_t e)
{
    struct quant_job *j = vctx;
    const cg_layout *lay = j->lay;
    const cg_params *p = j->p;
    uint32_t T = lay->T, C = lay->C, D = lay->D;
    float *recon = p->anchor_interval ? rk_malloc(sizeof(float) * (size_t)T * C) : NULL;
    float *cmax = rk_malloc(sizeof(float) * C);
    if ((p->anchor_interval && !recon) || !cmax) {
        __atomic_store_n(&j->failed, 1, __ATOMIC_RELAXED);
        goto done;
    }
    for (size_t lkv = b; lkv < e; lkv++) {
        uint32_t l = (uint32_t)(lkv / 2), kv = (uint32_t)(lkv % 2);
        int qmax = p->qmax[lkv];
        int mode = kv ? p->v_scale_mode : p->k_scale_mode;
        const float *x = j->kv + lkv * (size_t)T * C;
        uint8_t *sym = j->sym + lkv * (size_t)T * C;
        for (int pass = 0; pass < 2; pass++) { /* 0: anchors, 1: residuals */
            if (pass == 1 && !p->anchor_interval)
                break;
            if (mode == CODEC_SCALE_CHANNEL) {
                memset(cmax, 0, sizeof(float) * C);
                for (uint32_t t = 0; t < T; t++) {
                    uint32_t a = t;
                    if (cg_is_residual(p, t, &a) != pass)
                        continue;
                    for (uint32_t c = 0; c < C; c++) {
                        float v = x[(size_t)t * C + c];
                        if (pass)
                            v -= recon[(size_t)a * C + c];
                        if (fabsf(v) > cmax[c])
                            cmax[c] = fabsf(v);
                    }
                }
                const float *step = j->step && !pass ? j->step + lkv * C : NULL;
                for (uint32_t c = 0; c < C; c++)
                    j->scales[cg_scale_index(lay, p, l, kv, 0, c, pass)] =
                        scale_of(cmax[c], qmax, step ? step[c] : 0.0f);
            }
            for (uint32_t t = 0; t < T; t++) {
                uint32_t a = t;
                if (cg_is_residual(p, t, &a) != pass)
                    continue;
                const float *row = x + (size_t)t * C;
                if (mode == CODEC_SCALE_TOKEN)
                    for (uint32_t h = 0; h < lay->H; h++) {
                        float m = 0;
                        for (uint32_t d = 0; d < D; d++) {
                            float v = row[h * D + d];
                            if (pass)
                                v -= recon[(size_t)a * C + h * D + d];
                            if (fabsf(v) > m)
                                m = fabsf(v);
                        }
                        j->scales[cg_scale_index(lay, p, l, kv, t, h * D, pass)] = scale_of(m, qmax, 0.0f);
                    }
                for (uint32_t c = 0; c < C; c++) {
                    float s = rk_f16_to_f32(j->scales[cg_scale_index(lay, p, l, kv, t, c, pass)]);
                    float v = row[c];
                    if (pass)
                        v -= recon[(size_t)a * C + c];
                    int q = quant(v, s, qmax);
                    sym[(size_t)t * C + c] = (uint8_t)(q + qmax);
                    if (recon && !pass) /* the decoder's reconstruction, op for op */
                        recon[(size_t)t * C + c] = (float)q * s;
                }
            }
        }
    }
done:
    rk_free(recon);
    rk_free(cmax);
}

/* Quantize kv into symbols [L][2][T][C] and fp16 scales [n_scales]; step ([L][2][C], NULL:
 * none) sets the channel scales' steps where they cover the channel's range. */
static rk_status cg_quantize(const float *kv, const cg_params *p, const cg_layout *lay,
                             const float *step, rk_pool *pool, uint8_t *sym, uint16_t *scales)
{
    struct quant_job j = {kv, p, lay, step, sym, scales, 0};
    rk_pool_for(pool, (size_t)lay->L * 2, 1, quant_lkv, &j);
    return j.failed ? rk_error_set(RK_ERR_NOMEM, "cachegen: quantize") : RK_OK;
}

/* ---- rate allocation by sensitivity ------------------------------------------------------ */

/* Raise absmax[L][2][C] to the largest magnitude of each channel of kv (canonical layout). */
static void channel_absmax(const float *kv, const cg_layout *lay, float *absmax)
{
    for (size_t lkv = 0; lkv < (size_t)lay->L * 2; lkv++)
        for (uint32_t t = 0; t < lay->T; t++) {
            const float *row = kv + (lkv * lay->T + t) * lay->C;
            float *m = absmax + lkv * lay->C;
            for (uint32_t c = 0; c < lay->C; c++)
                if (fabsf(row[c]) > m[c])
                    m[c] = fabsf(row[c]);
        }
}

/* The step constant k of the weighted allocation: steps k / sqrt(weight) whose product equals
 * that of the level's own steps absmax / p->qmax (the level's rate at high resolution). */
static double weighted_k(const float *absmax, const float *weights, const cg_layout *lay,
                         const cg_params *p, float step_scale)
{
    size_t n = (size_t)lay->L * 2 * lay->C, used = 0;
    float wmax = 0;
    for (size_t i = 0; i < n; i++)
        if (weights[i] > wmax)
            wmax = weights[i];
    double lsum = 0;
    for (size_t i = 0; i < n; i++) {
        if (!(absmax[i] > 0))
            continue;
        /* a weight of 0 still gets a finite step: at most 10^4 times the most sensitive's */
        double w = weights[i] > wmax * 1e-8f ? weights[i] : wmax * 1e-8;
        lsum += log(absmax[i] / p->qmax[i / lay->C]) + 0.5 * log(w);
        used++;
    }
    return used ? exp(lsum / (double)used) * (step_scale > 0 ? step_scale : 1.0) : 0;
}

/* step = k / sqrt(weight) (weights NULL: all 1), and in p->qmax the alphabet each (layer,
 * K|V) needs for its steps to cover absmax (1..31). */
static void steps_from_k(double k, const float *absmax, const float *weights, float wmax,
                         const cg_layout *lay, cg_params *p, float *step)
{
    for (size_t lkv = 0; lkv < (size_t)lay->L * 2; lkv++) {
        int need = 1;
        for (uint32_t c = 0; c < lay->C; c++) {
            size_t i = lkv * lay->C + c;
            double w = !weights ? 1.0 : weights[i] > wmax * 1e-8f ? weights[i] : wmax * 1e-8;
            double d = k / sqrt(w);
            step[i] = d < 65504.0 ? (float)d : 65504.0f;
            if (absmax[i] > 0 && step[i] > 0) {
                double q = ceil(absmax[i] / step[i]);
                if (q > need)
                    need = q < CG_QMAX_MAX ? (int)q : CG_QMAX_MAX;
            }
        }
        p->qmax[lkv] = (uint8_t)need;
    }
}

/* The weighted allocation (docs/codec.md, "Rate allocation"): with entropy-coded uniform
 * quantization a channel of step d costs about log2(range / d) bits and adds weight * d^2 / 12
 * to the next-token KL, so the least KL for a bit budget has d proportional to
 * 1/sqrt(weight). The budget is the level's: the product of the steps (the sum of their
 * logs) equals that of the level's own steps absmax / qmax, times step_scale (0: 1) to the
 * power of their count (codec_params.step_scale). p->qmax holds the level's
 * alphabets on entry and, on return, the alphabet each (layer, K|V) needs for its steps
 * (1..31). absmax and weights are [L][2][C]; step out likewise. */
static void weighted_steps(const float *absmax, const float *weights, const cg_layout *lay,
                           cg_params *p, float step_scale, float *step)
{
    double k = weighted_k(absmax, weights, lay, p, step_scale);
    size_t n = (size_t)lay->L * 2 * lay->C;
    float wmax = 0;
    for (size_t i = 0; i < n; i++)
        if (weights[i] > wmax)
            wmax = weights[i];
    steps_from_k(k, absmax, weights, wmax, lay, p, step);
}

/* codec_params.step_scale: 0 (the level's rate) or within [1/64, 64], and only with weights. */
static rk_status step_scale_check(const codec_params *up)
{
    float s = up->step_scale;
    if (s == 0.0f)
        return RK_OK;
    if (!(s >= 1.0f / 64 && s <= 64.0f))
        return rk_error_set(RK_ERR_INVALID, "cachegen: step scale %g (1/64..64, 0: the level's)",
                            (double)s);
    if (!up->weights)
        return rk_error_set(RK_ERR_INVALID, "cachegen: a step scale needs weights (it scales "
                            "the weighted allocation's steps)");
    return RK_OK;
}

/* Weights usable for the allocation: the options it needs, finite and >= 0. */
static rk_status weights_check(const float *w, const cg_params *p, size_t n)
{
    if (p->k_scale_mode != CODEC_SCALE_CHANNEL || p->v_scale_mode != CODEC_SCALE_CHANNEL ||
        p->anchor_interval)
        return rk_error_set(RK_ERR_INVALID, "cachegen: weights need channel scales and no "
                            "delta coding");
    float wmax = 0;
    for (size_t i = 0; i < n; i++) {
        if (!(w[i] >= 0.0f && w[i] <= 3.4e38f))
            return rk_error_set(RK_ERR_INVALID, "cachegen: weight %zu is %g", i, (double)w[i]);
        wmax = w[i] > wmax ? w[i] : wmax;
    }
    return wmax > 0 ? RK_OK : rk_error_set(RK_ERR_INVALID, "cachegen: every weight is 0");
}

/* ---- transform coding (docs/codec.md, "Transform coding") -------------------------------- */

/* Eigenvectors of the symmetric n x n matrix a (destroyed; cyclic Jacobi rotations) into the
 * columns of v, by decreasing eigenvalue, each signed so that its largest component is
 * positive (a deterministic basis for the same data). */
static void sym_eigen(double *a, int n, double *v)
{
    double ev[64];
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++)
            v[i * n + j] = i == j;
    for (int sweep = 0; sweep < 64; sweep++) {
        double off = 0, diag = 0;
        for (int i = 0; i < n; i++) {
            diag += a[i * n + i] * a[i * n + i];
            for (int j = i + 1; j < n; j++)
                off += a[i * n + j] * a[i * n + j];
        }
        if (off <= 1e-24 * diag || off == 0)
            break;
        for (int p = 0; p < n; p++)
            for (int q = p + 1; q < n; q++) {
                if (a[p * n + q] == 0)
                    continue;
                double th = (a[q * n + q] - a[p * n + p]) / (2 * a[p * n + q]);
                double t = (th >= 0 ? 1 : -1) / (fabs(th) + sqrt(th * th + 1));
                double c = 1 / sqrt(t * t + 1), s = t * c;
                for (int k = 0; k < n; k++) {
                    double akp = a[k * n + p], akq = a[k * n + q];
                    a[k * n + p] = c * akp - s * akq;
                    a[k * n + q] = s * akp + c * akq;
                }
                for (int k = 0; k < n; k++) {
                    double apk = a[p * n + k], aqk = a[q * n + k];
                    a[p * n + k] = c * apk - s * aqk;
                    a[q * n + k] = s * apk + c * aqk;
                }
                for (int k = 0; k < n; k++) {
                    double vkp = v[k * n + p], vkq = v[k * n + q];
                    v[k * n + p] = c * vkp - s * vkq;
                    v[k * n + q] = s * vkp + c * vkq;
                }
            }
    }
    for (int i = 0; i < n; i++)
        ev[i] = a[i * n + i];
    for (int i = 0; i < n; i++) {
        int b = i;
        for (int j = i + 1; j < n; j++)
            if (ev[j] > ev[b])
                b = j;
        double t = ev[i];
        ev[i] = ev[b];
        ev[b] = t;
        int big = 0;
        for (int k = 0; k < n; k++) {
            t = v[k * n + i];
            v[k * n + i] = v[k * n + b];
            v[k * n + b] = t;
            if (fabs(v[k * n + i]) > fabs(v[big * n + i]))
                big = k;
        }
        if (v[big * n + i] < 0)
            for (int k = 0; k < n; k++)
                v[k * n + i] = -v[k * n + i];
    }
}

/* Eight floats, one IEEE operation per lane (GCC vector extension: SSE pairs on baseline
 * x86-64; with -ffp-contract=off no fused multiply-add). */
typedef float cg_v8 __attribute__((vector_size(32)));

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
__attribute__((target_clones("avx2", "default"))) /* 8 lanes per instruction where there is AVX2 */
#endif
void cg_transform_row(const cg_transform *tf, uint32_t C, size_t lkv, const float *y, float *x)
{
    uint32_t B = tf->B;
    const float *mean = tf->mean + lkv * C;
    float acc[64];
    for (uint32_t c0 = 0; c0 < C; c0 += B) {
        /* the sums of every channel of the block side by side; each channel's own sum keeps
         * the documented order */
        const float *mt = tf->dect + (lkv * C + c0) * B;
        if (B % 8 == 0) {
            for (uint32_t cb = 0; cb < B; cb += 8) {
                cg_v8 a = {0}, m, mu;
                for (uint32_t i = 0; i < B; i++) {
                    memcpy(&m, mt + i * B + cb, sizeof m);
                    a = a + m * y[c0 + i];
                }
                memcpy(&mu, mean + c0 + cb, sizeof mu);
                a = a + mu;
                memcpy(x + c0 + cb, &a, sizeof a);
            }
            continue;
        }
        for (uint32_t c = 0; c < B; c++)
            acc[c] = 0.0f;
        for (uint32_t i = 0; i < B; i++) {
            float yi = y[c0 + i];
            for (uint32_t c = 0; c < B; c++)
                acc[c] = acc[c] + mt[i * B + c] * yi;
        }
        for (uint32_t c = 0; c < B; c++)
            x[c0 + c] = acc[c] + mean[c0 + c];
    }
}

void cg_predict_row(const cg_transform *tf, uint32_t C, uint32_t l, const float *v, float *x)
{
    uint32_t B = tf->B;
    for (uint32_t c0 = 0; c0 < C; c0 += B) {
        const float *m = tf->pred + ((size_t)l * C + c0) * B;
        for (uint32_t j = 0; j < B; j++) {
            float acc = 0.0f;
            for (uint32_t i = 0; i < B; i++)
                acc = acc + m[j * B + i] * v[c0 + i];
            x[c0 + j] = x[c0 + j] + acc;
        }
    }
}

/* Fill tf->dect from tf->dec (nc = L * 2 * C channels). */
static void tf_transpose(cg_transform *tf, size_t nc)
{
    uint32_t B = tf->B;
    for (size_t b = 0; b < nc / B; b++)
        for (uint32_t c = 0; c < B; c++)
            for (uint32_t i = 0; i < B; i++)
                tf->dect[(b * B + i) * B + c] = tf->dec[(b * B + c) * B + i];
}

/* y = enc (x - mean) for every row of kv (canonical layout of lay); y likewise. */
static void tf_forward(const cg_transform *tf, const cg_layout *lay, const float *kv, float *y)
{
    uint32_t B = tf->B, C = lay->C;
    for (size_t lkv = 0; lkv < (size_t)lay->L * 2; lkv++)
        for (uint32_t t = 0; t < lay->T; t++) {
            const float *x = kv + (lkv * lay->T + t) * C;
            float *o = y + (lkv * lay->T + t) * C;
            const float *mean = tf->mean + lkv * C;
            for (uint32_t c0 = 0; c0 < C; c0 += B) {
                const float *m = tf->enc + (lkv * C + c0) * B;
                for (uint32_t i = 0; i < B; i++) {
                    double acc = 0;
                    for (uint32_t c = 0; c < B; c++)
                        acc += (double)m[i * B + c] * ((double)x[c0 + c] - mean[c0 + c]);
                    o[c0 + i] = (float)acc;
                }
            }
        }
}

/* Token range of sample s for the basis choice: part 0 all tokens, 1 the first half, 2 the
 * second half. */
static void tf_part(const codec_shape *sh, int part, uint32_t *t0, uint32_t *t1)
{
    *t0 = part == 2 ? sh->n_tokens / 2 : 0;
    *t1 = part == 1 ? sh->n_tokens / 2 : sh->n_tokens;
}

/* Covariance (B x B) of the weighted vectors z = sw (x - mu) of block c0 of plane lkv over
 * the tokens of part (tf_part). */
static void tf_block_cov(const float *const *samples, const codec_shape *shapes, size_t n,
                         uint32_t C, size_t lkv, uint32_t c0, uint32_t B, const double *sw,
                         const double *mu, int part, double *cov)
{
    memset(cov, 0, sizeof(double) * B * B);
    for (size_t s = 0; s < n; s++) {
        uint32_t t0, t1;
        tf_part(&shapes[s], part, &t0, &t1);
        for (uint32_t t = t0; t < t1; t++) {
            const float *x = samples[s] + (lkv * shapes[s].n_tokens + t) * C + c0;
            double z[64];
            for (uint32_t c = 0; c < B; c++)
                z[c] = (x[c] - mu[c]) * sw[c];
            for (uint32_t i = 0; i < B; i++)
                for (uint32_t j = 0; j < B; j++)
                    cov[i * B + j] += z[i] * z[j];
        }
    }
}

/* Empirical entropy in bits of the second halves of the samples' block c0 of plane lkv in
 * basis u (columns; in the weighted domain z = sw (x - mu)), every coefficient quantized with
 * step k (clamped to 31 levels each side, as the alphabets are), one histogram per
 * coefficient. */
static double tf_block_bits(const float *const *samples, const codec_shape *shapes, size_t n,
                            uint32_t C, size_t lkv, uint32_t c0, uint32_t B, const double *sw,
                            const double *mu, const double *u, double k, uint32_t *hist)
{
    double bits = 0, cnt = 0;
    memset(hist, 0, sizeof(uint32_t) * B * 63);
    for (size_t s = 0; s < n; s++) {
        uint32_t t0, t1;
        tf_part(&shapes[s], 2, &t0, &t1);
        for (uint32_t t = t0; t < t1; t++) {
            const float *x = samples[s] + (lkv * shapes[s].n_tokens + t) * C + c0;
            double z[64];
            for (uint32_t c = 0; c < B; c++)
                z[c] = (x[c] - mu[c]) * sw[c];
            for (uint32_t i = 0; i < B; i++) {
                double y = 0;
                for (uint32_t c = 0; c < B; c++)
                    y += u[c * B + i] * z[c];
                double q = k > 0 ? rint(y / k) : 0;
                q = q > 31 ? 31 : q < -31 ? -31 : q;
                hist[i * 63 + (uint32_t)(q + 31)]++;
            }
            cnt++;
        }
    }
    for (uint32_t i = 0; i < B * 63; i++)
        if (hist[i])
            bits -= hist[i] * log2(hist[i] / cnt);
    return bits;
}

/* Learn tf (B set; mean, enc, dec allocated by the caller, [L][2][C] and [L][2][C/B][B][B])
 * from n samples: per (layer, K|V, block) the principal axes of the channel vectors scaled by
 * sqrt(weight), so that one step for every coefficient is the weighted allocation's optimum
 * (the weighted squared error is the squared error in that domain, which an orthogonal
 * basis keeps). A weight below 10^-6 of its plane's largest counts as that. The principal
 * axes minimise the rate of Gaussian data; channels that are independent and far from
 * Gaussian code better alone (a rotation mixes them into more Gaussian coefficients), and a
 * basis fitted to few tokens does not carry over: a block keeps the identity basis unless the
 * axes learned on the first half of every sample's tokens give the second halves, quantized
 * with step k (the weighted allocation's: the same distortion either way), a lower
 * entropy. */
static rk_status tf_learn(const float *const *samples, const codec_shape *shapes, size_t n,
                          const float *weights, const cg_layout *lay, double k, cg_transform *tf)
{
    rk_status st = RK_OK;
    uint32_t B = tf->B, C = lay->C;
    double *cov = rk_malloc(sizeof(double) * B * B), *u = rk_malloc(sizeof(double) * B * B);
    double *id = rk_calloc((size_t)B * B, sizeof(double)), sw[64], mu[64];
    uint32_t *hist = rk_malloc(sizeof(uint32_t) * B * 63);
    if (!cov || !u || !id || !hist) {
        st = rk_error_set(RK_ERR_NOMEM, "codebook transform");
        goto done;
    }
    for (uint32_t c = 0; c < B; c++)
        id[c * B + c] = 1;
    for (size_t lkv = 0; lkv < (size_t)lay->L * 2; lkv++) {
        float pmax = 0, gmax = 0;
        for (size_t i = 0; i < (size_t)lay->L * 2 * C; i++)
            gmax = weights[i] > gmax ? weights[i] : gmax;
        for (uint32_t c = 0; c < C; c++)
            pmax = weights[lkv * C + c] > pmax ? weights[lkv * C + c] : pmax;
        double floor = pmax * 1e-6 > gmax * 1e-8 ? pmax * 1e-6 : gmax * 1e-8;
        for (uint32_t c0 = 0; c0 < C; c0 += B) {
            double cnt = 0;
            for (uint32_t c = 0; c < B; c++) {
                double w = weights[lkv * C + c0 + c];
                sw[c] = sqrt(w > floor ? w : floor);
                mu[c] = 0;
            }
            for (size_t s = 0; s < n; s++)
                for (uint32_t t = 0; t < shapes[s].n_tokens; t++) {
                    const float *x = samples[s] + (lkv * shapes[s].n_tokens + t) * C + c0;
                    for (uint32_t c = 0; c < B; c++)
                        mu[c] += x[c];
                    cnt++;
                }
            for (uint32_t c = 0; c < B; c++)
                mu[c] /= cnt;
            tf_block_cov(samples, shapes, n, C, lkv, c0, B, sw, mu, 1, cov);
            sym_eigen(cov, (int)B, u);
            double bi = tf_block_bits(samples, shapes, n, C, lkv, c0, B, sw, mu, id, k, hist);
            double bu = tf_block_bits(samples, shapes, n, C, lkv, c0, B, sw, mu, u, k, hist);
            if (bi <= bu)
                memcpy(u, id, sizeof(double) * B * B);
            else { /* the axes of all the tokens */
                tf_block_cov(samples, shapes, n, C, lkv, c0, B, sw, mu, 0, cov);
                sym_eigen(cov, (int)B, u);
            }
            float *enc = tf->enc + (lkv * C + c0) * B, *dec = tf->dec + (lkv * C + c0) * B;
            for (uint32_t c = 0; c < B; c++) {
                tf->mean[lkv * C + c0 + c] = (float)mu[c];
                for (uint32_t i = 0; i < B; i++) {
                    enc[i * B + c] = (float)(u[c * B + i] * sw[c]);
                    dec[c * B + i] = (float)(u[c * B + i] / sw[c]);
                }
            }
        }
    }
    tf_transpose(tf, (size_t)lay->L * 2 * C);
done:
    rk_free(cov);
    rk_free(u);
    rk_free(id);
    rk_free(hist);
    return st;
}

static void tf_free(cg_transform *tf)
{
    if (!tf)
        return;
    rk_free(tf->mean);
    rk_free(tf->enc);
    rk_free(tf->dec);
    rk_free(tf->dect);
    rk_free(tf->recon);
    rk_free(tf->pred);
    rk_free(tf);
}

/* A transform of B-channel blocks for lay's geometry with its arrays allocated; NULL: no
 * memory. n_models models of CODEC_MAX_SYMBOLS reconstruction points. */
static cg_transform *tf_alloc(const cg_layout *lay, uint32_t B, size_t n_models)
{
    cg_transform *tf = rk_calloc(1, sizeof *tf);
    size_t nc = (size_t)lay->L * 2 * lay->C;
    if (!tf)
        return NULL;
    tf->B = B;
    tf->mean = rk_malloc(nc * sizeof(float));
    tf->enc = rk_malloc(nc * B * sizeof(float));
    tf->dec = rk_malloc(nc * B * sizeof(float));
    tf->dect = rk_malloc(nc * B * sizeof(float));
    tf->recon = rk_calloc(n_models * CODEC_MAX_SYMBOLS, sizeof(float));
    if (!tf->mean || !tf->enc || !tf->dec || !tf->dect || !tf->recon) {
        tf_free(tf);
        return NULL;
    }
    return tf;
}

/* Add the symbol counts of one quantized tensor to counts[n_models][CODEC_MAX_SYMBOLS]. */
static void cg_count(const uint8_t *sym, const cg_params *p, const cg_layout *lay,
                     uint64_t *counts)
{
    for (uint32_t l = 0; l < lay->L; l++)
        for (uint32_t kv = 0; kv < 2; kv++)
            for (uint32_t t = 0; t < lay->T; t++) {
                uint32_t a;
                int res = cg_is_residual(p, t, &a);
                const uint8_t *row = sym + (((size_t)l * 2 + kv) * lay->T + t) * lay->C;
                for (uint32_t c = 0; c < lay->C; c++)
                    counts[cg_model_index(lay, p, l, kv, c, res) * CODEC_MAX_SYMBOLS + row[c]]++;
            }
}

/* Alphabet size of model m. */
static int model_nsym(const cg_params *p, const cg_layout *lay, size_t m)
{
    return 2 * p->qmax[m / lay->models_per_lkv] + 1;
}

/* ---- streams --------------------------------------------------------------------------- */

struct stream_job {
    const uint8_t *sym;       /* [L][2][T][C] symbols */
    const cg_params *p;       /* the container's parameters */
    const cg_layout *lay;     /* sizes derived from them */
    const rans_model *models; /* [n_models] */
    rk_buf *bufs;        /* [L*2] concatenated streams per plane */
    uint32_t *lens;      /* [n_streams] */
    int failed;          /* an allocation failed */
};

/* rANS-encode every stream of (layer, K|V) planes [b, e) into bufs[plane], lengths into lens. */
static void encode_lkv(void *vctx, size_t b, size_t e)
{
    struct stream_job *j = vctx;
    const cg_layout *lay = j->lay;
    const cg_params *p = j->p;
    size_t cap = (size_t)p->stream_tokens * p->group;
    uint8_t *s = rk_malloc(cap);
    const rans_model **m = rk_malloc(cap * sizeof *m);
    if (!s || !m) {
        __atomic_store_n(&j->failed, 1, __ATOMIC_RELAXED);
        goto done;
    }
    for (size_t lkv = b; lkv < e; lkv++) {
        uint32_t l = (uint32_t)(lkv / 2), kv = (uint32_t)(lkv % 2);
        for (uint32_t tb = 0; tb < lay->n_tblocks; tb++)
            for (uint32_t g = 0; g < lay->n_groups; g++) {
                uint32_t t0 = tb * p->stream_tokens, t1 = t0 + p->stream_tokens;
                uint32_t c0 = g * p->group, c1 = c0 + p->group;
                if (t1 > lay->T)
                    t1 = lay->T;
                if (c1 > lay->C)
                    c1 = lay->C;
                size_t n = 0;
                for (uint32_t t = t0; t < t1; t++) {
                    uint32_t a;
                    int res = cg_is_residual(p, t, &a);
                    const uint8_t *row = j->sym + (lkv * lay->T + t) * lay->C;
                    for (uint32_t c = c0; c < c1; c++, n++) {
                        s[n] = row[c];
                        m[n] = &j->models[cg_model_index(lay, p, l, kv, c, res)];
                    }
                }
                size_t before = j->bufs[lkv].len;
                if (rans_encode(s, m, n, &j->bufs[lkv]) != RK_OK) {
                    __atomic_store_n(&j->failed, 1, __ATOMIC_RELAXED);
                    goto done;
                }
                j->lens[(lkv * lay->n_tblocks + tb) * lay->n_groups + g] =
                    (uint32_t)(j->bufs[lkv].len - before);
            }
    }
done:
    rk_free(s);
    rk_free(m);
}

/* Build every model from its frequencies (model index order); RK_ERR_FORMAT when one is
 * invalid. */
static rk_status models_from_freqs(const uint16_t *freqs, const cg_params *p,
                                   const cg_layout *lay, rans_model *models)
{
    const uint16_t *f = freqs;
    for (size_t i = 0; i < lay->n_models; i++) {
        int ns = model_nsym(p, lay, i);
        rk_status st = rans_model_build(f, ns, &models[i]);
        if (st != RK_OK)
            return st;
        f += ns;
    }
    return RK_OK;
}

/* Train frequencies for every model from counts; freqs sized sum of nsym. */
static size_t freqs_len(const cg_params *p, const cg_layout *lay)
{
    size_t n = 0;
    for (size_t i = 0; i < lay->n_models; i++)
        n += (size_t)model_nsym(p, lay, i);
    return n;
}

/* Normalise every model's symbol counts to 16-bit frequencies (model index order). */
static void freqs_from_counts(const uint64_t *counts, const cg_params *p, const cg_layout *lay,
                              uint16_t *freqs)
{
    uint16_t *f = freqs;
    for (size_t i = 0; i < lay->n_models; i++) {
        int ns = model_nsym(p, lay, i);
        rans_normalize(counts + i * CODEC_MAX_SYMBOLS, ns, f);
        f += ns;
    }
}

/* Where predict_residuals takes V from: the symbols and scales of a quantized tensor (the V
 * planes as a decoder reconstructs them), or, when NULL, the exact V. */
struct vrec_src {
    const cg_params *p;
    const uint8_t *sym;
    const uint16_t *scales;
};

/* K from V (tf->pred): out = kv with every K row replaced by its residual K - prediction,
 * the prediction (cg_predict_row) from the same token's V row: kv's own V, or with vs the V
 * a decoder reconstructs from vs's symbols (each coefficient its reconstruction point times
 * the channel's scale, then cg_transform_row: the decoders' operations), so that the decoder
 * adds back the prediction it can make. V rows are copied. */
static rk_status predict_residuals(const cg_transform *tf, const cg_layout *lay, const float *kv,
                                   const struct vrec_src *vs, float *out)
{
    uint32_t C = lay->C;
    size_t plane = (size_t)lay->T * C;
    float *buf = rk_malloc(3 * (size_t)C * sizeof *buf);
    if (!buf)
        return rk_error_set(RK_ERR_NOMEM, "cachegen: prediction rows");
    float *y = buf, *v = buf + C, *pr = buf + 2 * C;
    memcpy(out, kv, 2 * (size_t)lay->L * plane * sizeof *out);
    for (uint32_t l = 0; l < lay->L; l++)
        for (uint32_t t = 0; t < lay->T; t++) {
            const float *krow = kv + (2 * (size_t)l * lay->T + t) * C;
            const float *vrow = kv + ((2 * (size_t)l + 1) * lay->T + t) * C;
            if (vs) {
                const uint8_t *s = vs->sym + ((2 * (size_t)l + 1) * lay->T + t) * C;
                for (uint32_t c = 0; c < C; c++)
                    y[c] = tf->recon[cg_model_index(lay, vs->p, l, 1, c, 0) * CODEC_MAX_SYMBOLS + s[c]] *
                           rk_f16_to_f32(vs->scales[cg_scale_index(lay, vs->p, l, 1, t, c, 0)]);
                cg_transform_row(tf, C, 2 * (size_t)l + 1, y, v);
                vrow = v;
            }
            memset(pr, 0, C * sizeof *pr);
            cg_predict_row(tf, C, l, vrow, pr);
            float *o = out + (2 * (size_t)l * lay->T + t) * C;
            for (uint32_t c = 0; c < C; c++)
                o[c] = krow[c] - pr[c];
        }
    rk_free(buf);
    return RK_OK;
}

/* cachegen: quantize, pick tables (codebook or per chunk), entropy-code the streams, emit the
 * sections. */
static rk_status cg_encode(const float *kv, const codec_shape *shape, const codec_params *up,
                           int level, codec_wsections *w, uint64_t *codebook_id)
{
    cg_params p;
    cg_layout lay;
    rk_status st;
    uint8_t *sym = NULL;
    uint16_t *scales = NULL, *freqs = NULL;
    uint64_t *counts = NULL;
    rans_model *models = NULL;
    rk_buf *bufs = NULL;
    uint32_t *lens = NULL;
    float *absmax = NULL, *wsteps = NULL, *coef = NULL, *resid = NULL;
    const float *steps = NULL; /* [L][2][C] channel steps of a weighted allocation */
    const cg_transform *tf = NULL;
    const codec_codebook *cb = up->codebook;
    if (cb) {
        if ((st = cg_codebook_check(cb, shape)) != RK_OK)
            return st;
        p = *cg_codebook_params(cb);
        steps = cg_codebook_steps(cb);
        tf = cg_codebook_transform(cb);
        *codebook_id = codec_codebook_id(cb);
    } else {
        cg_params_for_level(level, shape->n_layers, up, shape->head_dim, &p);
        if (up->k_scale_mode > 1 || up->v_scale_mode > 1 || up->anchor_interval > 256 ||
            up->group > 1024 || up->model_group > 65535)
            return rk_error_set(RK_ERR_INVALID, "cachegen: option out of range");
        if (up->predict_k || up->transform_block)
            return rk_error_set(RK_ERR_INVALID, "cachegen: a transform and K from V are codebook "
                                "options (train a codebook with them)");
        if ((st = step_scale_check(up)) != RK_OK)
            return st;
    }
    if ((st = cg_layout_make(shape, &p, &lay)) != RK_OK)
        return st;
    if (!cb && up->weights) { /* steps from this chunk's ranges and the weights */
        size_t nw = (size_t)lay.L * 2 * lay.C;
        if ((st = weights_check(up->weights, &p, nw)) != RK_OK)
            return st;
        absmax = rk_calloc(nw, sizeof *absmax);
        wsteps = rk_malloc(nw * sizeof *wsteps);
        if (!absmax || !wsteps) {
            st = rk_error_set(RK_ERR_NOMEM, "cachegen: steps");
            goto fail;
        }
        channel_absmax(kv, &lay, absmax);
        weighted_steps(absmax, up->weights, &lay, &p, up->step_scale, wsteps);
        steps = wsteps;
    }
    size_t nval = (size_t)lay.L * 2 * lay.T * lay.C;
    sym = rk_malloc(nval);
    scales = rk_calloc(lay.n_scales ? lay.n_scales : 1, sizeof *scales);
    models = rk_malloc(lay.n_models * sizeof *models);
    bufs = rk_calloc((size_t)lay.L * 2, sizeof *bufs);
    lens = rk_malloc(lay.n_streams * sizeof *lens);
    if (!sym || !scales || !models || !bufs || !lens) {
        st = rk_error_set(RK_ERR_NOMEM, "cachegen: encode buffers");
        goto fail;
    }
    if (tf) { /* code the transform's coefficients */
        if (!(coef = rk_malloc(nval * sizeof *coef))) {
            st = rk_error_set(RK_ERR_NOMEM, "cachegen: coefficients");
            goto fail;
        }
        if (tf->pred) { /* K as residuals of the prediction from the V the decoder will have */
            if (!(resid = rk_malloc(nval * sizeof *resid))) {
                st = rk_error_set(RK_ERR_NOMEM, "cachegen: residuals");
                goto fail;
            }
            /* V's symbols first (a plane's symbols depend on that plane alone, so K as it is
               does for this pass), then K's residuals from the V they decode to */
            tf_forward(tf, &lay, kv, coef);
            if ((st = cg_quantize(coef, &p, &lay, steps, up->pool, sym, scales)) != RK_OK)
                goto fail;
            if ((st = predict_residuals(tf, &lay, kv, &(struct vrec_src){&p, sym, scales}, resid)) != RK_OK)
                goto fail;
            tf_forward(tf, &lay, resid, coef); /* V's coefficients come out the same */
        } else
            tf_forward(tf, &lay, kv, coef);
    }
    if ((st = cg_quantize(coef ? coef : kv, &p, &lay, steps, up->pool, sym, scales)) != RK_OK)
        goto fail;
    if (cb) {
        size_t nm;
        memcpy(models, cg_codebook_models(cb, &nm), lay.n_models * sizeof *models);
    } else {
        counts = rk_calloc(lay.n_models * CODEC_MAX_SYMBOLS, sizeof *counts);
        freqs = rk_malloc(freqs_len(&p, &lay) * sizeof *freqs);
        if (!counts || !freqs) {
            st = rk_error_set(RK_ERR_NOMEM, "cachegen: tables");
            goto fail;
        }
        cg_count(sym, &p, &lay, counts);
        freqs_from_counts(counts, &p, &lay, freqs);
        if ((st = models_from_freqs(freqs, &p, &lay, models)) != RK_OK)
            goto fail;
    }
    p.tables = cb ? 1 : 0;
    struct stream_job j = {sym, &p, &lay, models, bufs, lens, 0};
    rk_pool_for(up->pool, (size_t)lay.L * 2, 1, encode_lkv, &j);
    if (j.failed) {
        st = rk_error_set(RK_ERR_NOMEM, "cachegen: streams");
        goto fail;
    }
    rk_buf *b = codec_wsections_add(w, SEC_PARAMS);
    cg_params_write(&p, lay.L, b);
    b = codec_wsections_add(w, SEC_SCALES);
    for (size_t i = 0; i < lay.n_scales; i++)
        rk_buf_put_u16(b, scales[i]);
    if (!cb) {
        b = codec_wsections_add(w, SEC_TABLES);
        size_t nf = freqs_len(&p, &lay);
        for (size_t i = 0; i < nf; i++)
            rk_buf_put_u16(b, freqs[i]);
    }
    b = codec_wsections_add(w, SEC_INDEX);
    for (size_t i = 0; i < lay.n_streams; i++)
        rk_buf_put_u32(b, lens[i]);
    b = codec_wsections_add(w, SEC_PAYLOAD);
    size_t total = 0;
    for (size_t i = 0; i < (size_t)lay.L * 2; i++)
        total += bufs[i].len;
    rk_buf_reserve(b, total);
    for (size_t i = 0; i < (size_t)lay.L * 2; i++)
        rk_buf_append(b, bufs[i].data, bufs[i].len);
    st = RK_OK;
fail:
    if (bufs)
        for (size_t i = 0; i < (size_t)lay.L * 2; i++)
            rk_buf_free(&bufs[i]);
    rk_free(bufs);
    rk_free(lens);
    rk_free(sym);
    rk_free(scales);
    rk_free(counts);
    rk_free(freqs);
    rk_free(models);
    rk_free(absmax);
    rk_free(wsteps);
    rk_free(coef);
    rk_free(resid);
    return st;
}

/* ---- decoding -------------------------------------------------------------------------- */

rk_status cg_models_get(const codec_view *v, const cg_params *p, const cg_layout *lay,
                        const codec_codebook *cb, const rans_model **models, bool *owned)
{
    *models = NULL;
    *owned = false;
    const codec_rsection *tab = codec_view_section(v, SEC_TABLES);
    if (p->tables == 1) {
        if (!cb)
            return rk_error_set(RK_ERR_NOT_FOUND, "cachegen: codebook needed");
        if (tab)
            return rk_error_set(RK_ERR_FORMAT, "cachegen: codebook container with tables");
        rk_status st = cg_codebook_check(cb, &v->info.shape);
        if (st != RK_OK)
            return st;
        const cg_params *cp = cg_codebook_params(cb);
        if (memcmp(cp->qmax, p->qmax, 2 * (size_t)lay->L) || cp->k_scale_mode != p->k_scale_mode ||
            cp->v_scale_mode != p->v_scale_mode || cp->anchor_interval != p->anchor_interval ||
            cp->model_group != p->model_group || cp->transform != p->transform)
            return rk_error_set(RK_ERR_FORMAT, "cachegen: parameters differ from the codebook's");
        size_t nm;
        *models = cg_codebook_models(cb, &nm);
        if (nm != lay->n_models)
            return rk_error_set(RK_ERR_FORMAT, "cachegen: codebook has %zu models, need %zu", nm,
                                lay->n_models);
        return RK_OK;
    }
    if (v->info.codebook_id != 0)
        return rk_error_set(RK_ERR_FORMAT, "cachegen: codebook id without codebook tables");
    size_t nf = freqs_len(p, lay);
    if (!tab || tab->len != 2 * nf)
        return rk_error_set(RK_ERR_FORMAT, "cachegen: tables section of %zu bytes, need %zu",
                            tab ? tab->len : 0, 2 * nf);
    uint16_t *freqs = rk_malloc(nf * sizeof *freqs);
    rans_model *m = rk_malloc(lay->n_models * sizeof *m);
    rk_status st = RK_OK;
    if (!freqs || !m) {
        st = rk_error_set(RK_ERR_NOMEM, "cachegen: tables");
        goto fail;
    }
    for (size_t i = 0; i < nf; i++)
        freqs[i] = rk_get_le16(tab->data + 2 * i);
    if ((st = models_from_freqs(freqs, p, lay, m)) != RK_OK)
        goto fail;
    rk_free(freqs);
    *models = m;
    *owned = true;
    return RK_OK;
fail:
    rk_free(freqs);
    rk_free(m);
    return st;
}

#define dec_job cg_dec_job /* codec_impl.h */

/* Find the symbol whose interval holds slot: start at its 256-slot bucket, step up. */
static inline uint32_t find_sym(const rans_model *m, uint32_t slot)
{
    uint32_t s = m->bucket[slot >> 8];
    while (m->cum[s + 1] <= slot)
        s++;
    return s;
}

#define CG_LANE_GROUP 64 /* the interleaved decoder handles groups up to this many channels */

/* One stream being decoded by decode_lanes. */
struct lane {
    uint32_t x;                                  /* rANS state */
    const uint8_t *ptr, *end;                    /* the stream's remaining bytes */
    uint32_t c0;                                 /* first channel */
    const rans_model *mod[2][CG_LANE_GROUP];     /* [residual][channel of group] */
    float csc[2][CG_LANE_GROUP];                 /* channel mode: [residual][channel] scale */
    const float *rec[CG_LANE_GROUP];             /* transform: the model's reconstruction
                                                    points (no delta coding), else NULL */
    uint32_t head[CG_LANE_GROUP];                /* token mode: head of each channel */
    float anchor[CG_LANE_GROUP];                 /* the block's current anchor row */
};

/* Decode NL streams si.. si+NL-1 of one (layer, K|V, token block) with equal channel counts
 * in lockstep: NL independent rANS state chains give the CPU parallel work. The arithmetic
 * per value is the reference's (and cuda/'s): val = (q * scale) [+ anchor]. Returns false on
 * a malformed stream. */
static inline __attribute__((always_inline)) bool
decode_lanes(const struct dec_job *j, size_t si, const int NL, const int MODE, const int DELTA,
             struct lane *ln)
{
    float row[4 * CG_LANE_GROUP]; /* the token's values of all lanes: adjacent channels */
    const cg_params *p = j->p;
    const cg_layout *lay = j->lay;
    const cg_stream_pos sp = cg_stream_at(lay, p, si);
    const uint32_t g = sp.g, l = sp.l, kv = sp.kv, t0 = sp.t0, t1 = sp.t1;
    const size_t lkv = sp.lkv;
    int qmax = p->qmax[lkv];
    uint32_t c0 = g * p->group, nc = lay->C - c0 < p->group ? lay->C - c0 : p->group;
    const float *tsc = &j->scales[cg_scale_index(lay, p, l, kv, 0, 0, 0)]; /* token mode */
    for (int k = 0; k < NL; k++) {
        struct lane *L = &ln[k];
        L->c0 = c0 + (uint32_t)k * p->group;
        for (uint32_t i = 0; i < nc; i++) {
            for (int r = 0; r < 2; r++) {
                int rr = r && p->anchor_interval;
                L->mod[r][i] = &j->models[cg_model_index(lay, p, l, kv, L->c0 + i, rr)];
                L->csc[r][i] = j->scales[cg_scale_index(lay, p, l, kv, 0, L->c0 + i, rr)];
            }
            L->rec[i] = j->recon ? j->recon + cg_model_index(lay, p, l, kv, L->c0 + i, 0) *
                                                  CODEC_MAX_SYMBOLS
                                 : NULL;
            L->head[i] = (L->c0 + i) / lay->D;
        }
        L->ptr = j->payload + j->offs[si + (size_t)k];
        L->end = j->payload + j->offs[si + (size_t)k + 1];
        if (L->end - L->ptr < 4)
            return false;
        L->x = rk_get_le32(L->ptr);
        L->ptr += 4;
    }
    for (uint32_t t = t0; t < t1; t++) {
        uint32_t a;
        int res = cg_is_residual(p, t, &a);
        const float *trow = tsc + (size_t)t * lay->H;
        for (uint32_t i = 0; i < nc; i++)
#pragma GCC unroll 4
            for (int k = 0; k < NL; k++) {
                struct lane *L = &ln[k];
                const rans_model *m = L->mod[res][i];
                uint32_t x = L->x, slot = x & (RANS_PROB_SCALE - 1);
                uint32_t s = find_sym(m, slot);
                x = (m->cum[s + 1] - m->cum[s]) * (x >> RANS_PROB_BITS) + slot - m->cum[s];
                while (x < RANS_L) {
                    if (L->ptr == L->end)
                        return false;
                    x = (x << 8) | *L->ptr++;
                }
                L->x = x;
                float sc = MODE == CODEC_SCALE_TOKEN ? trow[L->head[i]] : L->csc[res][i];
                float q = L->rec[i] ? L->rec[i][s] : (float)((int)s - qmax);
                float val = q * sc;
                if (DELTA) {
                    if (res)
                        val = L->anchor[i] + val;
                    else
                        L->anchor[i] = val;
                }
                row[(uint32_t)k * nc + i] = val;
            }
        /* lanes are consecutive groups of equal width: one contiguous run of channels */
        codec_store_row(j->out, j->dtype, cg_out_index(j, lkv, t, c0), row, (size_t)NL * nc);
    }
    for (int k = 0; k < NL; k++) /* the encoder's initial state, and every byte used */
        if (ln[k].x != RANS_L || ln[k].ptr != ln[k].end)
            return false;
    return true;
}

/* Decode streams [b, e), four at a time where four consecutive ones share a token block
 * and width. Groups wider than CG_LANE_GROUP use the reference loop below. */
static void decode_streams_generic(struct dec_job *j, size_t b, size_t e);

static void decode_streams(void *vctx, size_t b, size_t e);

/* A one-pass transform job's batch of 8 * ch streams from si that the AVX2 decoder handed
 * back (an initial state it does not take): the scalar decoder writes their coefficients
 * (f32) into a scratch plane, then the inverse transform of those channels goes to j->out.
 * Only damaged or foreign containers come here. */
static void decode_tf_batch_scalar(struct dec_job *j, size_t si, int ch)
{
    const cg_layout *lay = j->lay;
    const cg_stream_pos sp = cg_stream_at(lay, j->p, si);
    uint32_t c0 = sp.g * 8, n = 64 * (uint32_t)ch;
    /* [t1][C] coefficients of plane sp.lkv: no larger than the output's two planes */
    float *y = rk_malloc((size_t)sp.t1 * lay->C * sizeof *y), *x = rk_malloc(n * sizeof *x);
    if (!y || !x) {
        __atomic_store_n(&j->failed, 2, __ATOMIC_RELAXED);
        goto done;
    }
    struct dec_job sj = *j;
    sj.tf = NULL;
    sj.dmodels = NULL; /* the scalar decoder */
    sj.dtype = CODEC_F32;
    sj.out = y;
    sj.lkv0 = sp.lkv;
    sj.failed = 0;
    size_t s0 = sp.lkv * lay->n_tblocks * lay->n_groups;
    decode_streams(&sj, si - s0, si - s0 + 8 * (size_t)ch);
    if (sj.failed) {
        __atomic_store_n(&j->failed, sj.failed, __ATOMIC_RELAXED);
        goto done;
    }
    for (uint32_t t = sp.t0; t < sp.t1; t++) {
        cg_transform_rows_avx2(j->tf, lay->C, sp.lkv, c0, n, y + (size_t)t * lay->C + c0, 0, x, 0, 1);
        codec_store_row(j->out, j->dtype, cg_out_index(j, sp.lkv, t, c0), x, n);
    }
done:
    rk_free(y);
    rk_free(x);
}

/* rk_pool_for body: decode streams [b, e), counted from plane j->lkv0's first, into j->out;
 * any malformed stream sets j->failed. */
static void decode_streams(void *vctx, size_t b, size_t e)
{
    struct dec_job *j = vctx;
    const cg_layout *lay = j->lay;
    size_t s0 = j->lkv0 * lay->n_tblocks * lay->n_groups;
    b += s0;
    e += s0;
    if (j->p->group > CG_LANE_GROUP) {
        decode_streams_generic(j, b, e);
        return;
    }
    struct lane ln[4];
    size_t si = b;
    bool simd8 = j->tf || (j->dmodels && cg_simd8_ok(j)); /* one pass: chosen for AVX2 */
    size_t scalar_end = si; /* streams before this one go to the scalar decoder */
    while (si < e) {
        uint32_t g = (uint32_t)(si % lay->n_groups);
        /* 8, 16, 32 or 64 full 8-channel groups of one block: the AVX2 decoder (one pass:
           every batch qualifies, see cg_decode_layers) */
        int ch = CG_SIMD_MAX_CHAINS;
        while (simd8 && ch && (si + 8 * (size_t)ch > e || ((size_t)g + 8 * (size_t)ch) * 8 > lay->C))
            ch /= 2;
        if (simd8 && ch && si >= scalar_end) {
            int r = cg_decode_avx2(j, si, ch);
            if (!r) {
                __atomic_store_n(&j->failed, 1, __ATOMIC_RELAXED);
                return;
            }
            if (r < 0 && j->tf)
                decode_tf_batch_scalar(j, si, ch);
            if (r > 0 || j->tf) {
                si += 8 * (size_t)ch;
                continue;
            }
            scalar_end = si + 8 * (size_t)ch;
        }
        /* four full-width groups of the same block: g..g+3 all before the last group */
        int mode = cg_stream_at(lay, j->p, si).kv ? j->p->v_scale_mode : j->p->k_scale_mode;
        int delta = j->p->anchor_interval != 0;
        int four = si + 4 <= e && g + 4 < lay->n_groups;
        bool ok;
        /* constant arguments: each combination compiles to its own straight-line loop */
#define CG_LANES(nl, md, dl) decode_lanes(j, si, nl, md, dl, ln)
        if (four)
            ok = mode == CODEC_SCALE_TOKEN ? (delta ? CG_LANES(4, 0, 1) : CG_LANES(4, 0, 0))
                                           : (delta ? CG_LANES(4, 1, 1) : CG_LANES(4, 1, 0));
        else
            ok = mode == CODEC_SCALE_TOKEN ? (delta ? CG_LANES(1, 0, 1) : CG_LANES(1, 0, 0))
                                           : (delta ? CG_LANES(1, 1, 1) : CG_LANES(1, 1, 0));
#undef CG_LANES
        si += four ? 4 : 1;
        if (!ok) {
            __atomic_store_n(&j->failed, 1, __ATOMIC_RELAXED);
            return;
        }
    }
}

/* The reference decoder, one stream at a time, any group width. */
static void decode_streams_generic(struct dec_job *j, size_t b, size_t e)
{
    const cg_params *p = j->p;
    const cg_layout *lay = j->lay;
    float anchor[1024], row[1024];
    for (size_t si = b; si < e; si++) {
        const cg_stream_pos sp = cg_stream_at(lay, p, si);
        const uint32_t l = sp.l, kv = sp.kv, t0 = sp.t0, t1 = sp.t1;
        const size_t lkv = sp.lkv;
        int qmax = p->qmax[lkv];
        uint32_t c0 = sp.g * p->group, c1 = c0 + p->group;
        if (c1 > lay->C)
            c1 = lay->C;
        const uint8_t *ptr = j->payload + j->offs[si], *end = j->payload + j->offs[si + 1];
        if (end - ptr < 4)
            goto bad;
        uint32_t x = rk_get_le32(ptr);
        ptr += 4;
        for (uint32_t t = t0; t < t1; t++) {
            uint32_t a;
            int res = cg_is_residual(p, t, &a);
            for (uint32_t c = c0; c < c1; c++) {
                size_t mi = cg_model_index(lay, p, l, kv, c, res);
                const rans_model *m = &j->models[mi];
                uint32_t slot = x & (RANS_PROB_SCALE - 1);
                uint32_t s = find_sym(m, slot);
                x = (m->cum[s + 1] - m->cum[s]) * (x >> RANS_PROB_BITS) + slot - m->cum[s];
                while (x < RANS_L) {
                    if (ptr == end)
                        goto bad;
                    x = (x << 8) | *ptr++;
                }
                float q = j->recon ? j->recon[mi * CODEC_MAX_SYMBOLS + s] : (float)((int)s - qmax);
                float val = q * j->scales[cg_scale_index(lay, p, l, kv, t, c, res)];
                if (res)
                    val = anchor[c - c0] + val;
                else
                    anchor[c - c0] = val;
                row[c - c0] = val;
            }
            codec_store_row(j->out, j->dtype, cg_out_index(j, lkv, t, c0), row, c1 - c0);
        }
        if (x != RANS_L || ptr != end)
            goto bad;
        continue;
    bad:
        __atomic_store_n(&j->failed, 1, __ATOMIC_RELAXED);
        return;
    }
}

rk_status cg_prepare(const codec_view *v, const codec_codebook *cb, cg_prepared *pr)
{
    memset(pr, 0, sizeof *pr);
    rk_status st;
    const codec_rsection *par = codec_view_section(v, SEC_PARAMS);
    const codec_rsection *sca = codec_view_section(v, SEC_SCALES);
    const codec_rsection *idx = codec_view_section(v, SEC_INDEX);
    const codec_rsection *pay = codec_view_section(v, SEC_PAYLOAD);
    if (!par || !sca || !idx || !pay)
        return rk_error_set(RK_ERR_FORMAT, "cachegen: missing section");
    if ((st = cg_params_parse(par->data, par->len, v->info.shape.n_layers, &pr->p)) != RK_OK)
        return st;
    if ((st = cg_layout_make(&v->info.shape, &pr->p, &pr->lay)) != RK_OK)
        return st;
    if ((pr->p.tables == 1) != (v->info.codebook_id != 0))
        return rk_error_set(RK_ERR_FORMAT, "cachegen: table source and codebook id disagree");
    if (pr->lay.C > 1024 * 1024 || pr->p.group > 1024)
        return rk_error_set(RK_ERR_UNSUPPORTED, "cachegen: stream group %u", pr->p.group);
    if (sca->len != 2 * pr->lay.n_scales)
        return rk_error_set(RK_ERR_FORMAT, "cachegen: scales section of %zu bytes, need %zu",
                            sca->len, 2 * pr->lay.n_scales);
    if (idx->len / 4 != pr->lay.n_streams || idx->len % 4)
        return rk_error_set(RK_ERR_FORMAT, "cachegen: index of %zu bytes for %zu streams",
                            idx->len, pr->lay.n_streams);
    pr->scales = rk_malloc((pr->lay.n_scales + 1) * sizeof(float));
    pr->offs = rk_malloc((pr->lay.n_streams + 1) * sizeof(uint64_t));
    if (!pr->scales || !pr->offs) {
        st = rk_error_set(RK_ERR_NOMEM, "cachegen: decode buffers");
        goto fail;
    }
    for (size_t i = 0; i < pr->lay.n_scales; i++) {
        float s = rk_f16_to_f32(rk_get_le16(sca->data + 2 * i));
        if (!(s >= 0.0f && s <= 65504.0f)) { /* NaN, Inf, negative: not from our encoder */
            st = rk_error_set(RK_ERR_FORMAT, "cachegen: scale %zu is %g", i, (double)s);
            goto fail;
        }
        pr->scales[i] = s;
    }
    uint64_t off = 0;
    for (size_t i = 0; i < pr->lay.n_streams; i++) {
        pr->offs[i] = off;
        off += rk_get_le32(idx->data + 4 * i);
    }
    pr->offs[pr->lay.n_streams] = off;
    if (off != pay->len) {
        st = rk_error_set(RK_ERR_FORMAT, "cachegen: streams total %llu bytes, payload %zu",
                          (unsigned long long)off, pay->len);
        goto fail;
    }
    pr->payload = pay->data;
    pr->payload_len = pay->len;
    if ((st = cg_models_get(v, &pr->p, &pr->lay, cb, &pr->models, &pr->models_owned)) != RK_OK)
        goto fail;
    if (pr->p.transform && !(pr->tf = cg_codebook_transform(cb))) { /* the flags agreed */
        st = rk_error_set(RK_ERR_FORMAT, "cachegen: transform container, codebook without one");
        goto fail;
    }
    return RK_OK;
fail:
    cg_prepared_free(pr);
    return st;
}

void cg_prepared_free(cg_prepared *pr)
{
    rk_free(pr->scales);
    rk_free(pr->offs);
    if (pr->models_owned)
        rk_free((void *)pr->models);
    memset(pr, 0, sizeof *pr);
}

/* Whether a transform container decodes in one pass (cg_decode_layers): the AVX2 decoder
 * takes every stream (8-channel streams in whole batches of 64 channels; j's dmodels set and
 * cg_simd8_ok) and blocks of 8, 16, 32 or 64 channels never straddle a batch. */
static bool tf_one_pass(const struct dec_job *j, const cg_transform *tf)
{
    return !tf->pred && j->dmodels && cg_simd8_ok(j) && j->lay->C % 64 == 0 && tf->B % 8 == 0 &&
           64 % tf->B == 0; /* K from V: the two passes (a K row needs its token's V row) */
}

/* What a cachegen reader keeps (codec_reader.ctx). */
struct cg_reader {
    cg_prepared pr;             /* params, layout, float scales, stream offsets, models */
    const rans_dmodel *dmodels; /* [n_models] decode-only models for the AVX2 decoder, or
                                   NULL: the scalar decoder only */
    rans_dmodel *dm_owned;      /* per-chunk tables' decode-only models (a codebook holds its
                                   own), owned; NULL otherwise */
    float *coef;                /* transform containers decoded in two passes: [2][T][C] one
                                   layer's coefficients (a reader decodes one range at a
                                   time), owned; else NULL */
};

static void cg_close(void *ctx)
{
    struct cg_reader *cr = ctx;
    if (!cr)
        return;
    cg_prepared_free(&cr->pr);
    rk_free(cr->dm_owned);
    rk_free(cr->coef);
    rk_free(cr);
}

/* cachegen: validate everything but the streams (cg_prepare) and, when the AVX2 decoder
 * qualifies, have its decode-only models ready: once per reader, not per layer range. */
static rk_status cg_open(codec_reader *r)
{
    struct cg_reader *cr = rk_calloc(1, sizeof *cr);
    if (!cr)
        return rk_error_set(RK_ERR_NOMEM, "cachegen: reader");
    rk_status st = cg_prepare(&r->v, r->cb, &cr->pr);
    if (st != RK_OK) {
        rk_free(cr);
        return st;
    }
    const cg_prepared *pr = &cr->pr;
    struct dec_job probe = {.p = &pr->p, .lay = &pr->lay, .payload_len = pr->payload_len,
                            .recon = pr->tf ? pr->tf->recon : NULL};
    if (cg_simd8_ok(&probe)) {
        if (pr->p.tables == 1)
            cr->dmodels = cg_codebook_dmodels(r->cb);
        else if ((cr->dm_owned = rk_malloc(pr->lay.n_models * sizeof *cr->dm_owned)) != NULL) {
            for (size_t i = 0; i < pr->lay.n_models; i++)
                rans_dmodel_build(&pr->models[i], &cr->dm_owned[i]);
            cr->dmodels = cr->dm_owned;
        } /* else: the scalar decoder, which needs no more memory */
    }
    probe.dmodels = cr->dmodels;
    if (pr->tf && !tf_one_pass(&probe, pr->tf) &&
        !(cr->coef = rk_malloc(2 * (size_t)pr->lay.T * pr->lay.C * sizeof(float)))) {
        cg_close(cr);
        return rk_error_set(RK_ERR_NOMEM, "cachegen: coefficients");
    }
    r->ctx = cr;
    return RK_OK;
}

/* rk_pool_for body of a transform container: planes [b, e) of j->lkv0's layer from their
 * decoded coefficients (j->in) to channels in the output's dtype. */
struct tf_job {
    const cg_transform *tf;
    const cg_layout *lay;
    const float *in;   /* [2][T][C] coefficients of one layer */
    void *out;         /* canonical layout output, from plane lkv0 on */
    codec_dtype dtype;
    size_t lkv0, lkv_out0; /* the layer's first plane; the output's first plane */
    int failed;
};

static void tf_rows(void *vctx, size_t b, size_t e)
{
    struct tf_job *j = vctx;
    uint32_t C = j->lay->C;
    float *row = rk_malloc(2 * (size_t)C * sizeof *row), *vrow = row + C;
    if (!row) {
        __atomic_store_n(&j->failed, 1, __ATOMIC_RELAXED);
        return;
    }
    for (size_t r = b; r < e; r++) { /* r = kv * T + t */
        size_t kv = r / j->lay->T, t = r % j->lay->T;
        cg_transform_row(j->tf, C, j->lkv0 + kv, j->in + r * C, row);
        if (j->tf->pred && kv == 0) { /* K from V: the token's V row, computed again */
            cg_transform_row(j->tf, C, j->lkv0 + 1, j->in + (j->lay->T + t) * C, vrow);
            cg_predict_row(j->tf, C, (uint32_t)(j->lkv0 / 2), vrow, row);
        }
        codec_store_row(j->out, j->dtype,
                        ((j->lkv0 + kv - j->lkv_out0) * j->lay->T + t) * C, row, C);
    }
    rk_free(row);
}

/* rk_pool_for body of a one-pass transform job: batches [b, e) of 8 streams, so that every
 * piece starts and ends on a 64-channel boundary (whole transform blocks). */
static void decode_stream_batches(void *vctx, size_t b, size_t e)
{
    decode_streams(vctx, 8 * b, 8 * e);
}

/* cachegen on the CPU: the layers' streams (consecutive in the payload), in parallel. A
 * transform container, where the AVX2 decoder takes every stream (8-channel streams,
 * 64-channel multiples) and blocks of 8, 16, 32 or 64 channels, decodes in one pass: each
 * token row's coefficients go through the inverse transform as soon as they are decoded.
 * Otherwise (the reference, and the scalar decoder's way) one layer at a time: its
 * coefficients (f32, with the codebook's reconstruction points), then the inverse transform
 * row by row (cg_transform_row). The two give the same bits. */
static rk_status cg_decode_layers(const codec_reader *r, codec_dtype dtype, uint32_t l0,
                                  uint32_t nl, void *out)
{
    const struct cg_reader *cr = r->ctx;
    const cg_prepared *pr = &cr->pr;
    struct dec_job j = {.p = &pr->p, .lay = &pr->lay, .models = pr->models,
                        .dmodels = cr->dmodels, .scales = pr->scales, .payload = pr->payload,
                        .offs = pr->offs, .payload_len = pr->payload_len, .dtype = dtype,
                        .out = out, .lkv0 = 2 * (size_t)l0, .failed = 0};
    size_t streams = 2 * (size_t)nl * pr->lay.n_tblocks * pr->lay.n_groups;
    if (!pr->tf) {
        rk_pool_for(r->pool, streams, 8 * CG_SIMD_MAX_CHAINS, decode_streams, &j); /* whole AVX2 batches */
        if (j.failed)
            return rk_error_set(RK_ERR_CORRUPT, "cachegen: malformed entropy-coded stream");
        return RK_OK;
    }
    j.recon = pr->tf->recon;
    if (tf_one_pass(&j, pr->tf)) {
        j.tf = pr->tf;
        j.tf_tiles = cg_avx512_ok();
        rk_pool_for(r->pool, streams / 8, CG_SIMD_MAX_CHAINS, decode_stream_batches, &j);
        if (j.failed == 2)
            return rk_error_set(RK_ERR_NOMEM, "cachegen: transform rows");
        if (j.failed)
            return rk_error_set(RK_ERR_CORRUPT, "cachegen: malformed entropy-coded stream");
        return RK_OK;
    }
    /* the reader's buffer, or this call's where the reader expected one pass (the AVX2
       decoder was turned off since: RAGKV_CODEC_SIMD=0) */
    float *coef = cr->coef ? cr->coef : rk_malloc(2 * (size_t)pr->lay.T * pr->lay.C * sizeof(float));
    if (!coef)
        return rk_error_set(RK_ERR_NOMEM, "cachegen: coefficients");
    j.dtype = CODEC_F32;
    j.out = coef;
    struct tf_job tj = {.tf = pr->tf, .lay = &pr->lay, .in = coef, .out = out, .dtype = dtype,
                        .lkv_out0 = 2 * (size_t)l0};
    for (uint32_t l = l0; l < l0 + nl && !j.failed && !tj.failed; l++) {
        j.lkv0 = tj.lkv0 = 2 * (size_t)l;
        rk_pool_for(r->pool, streams / nl, 8 * CG_SIMD_MAX_CHAINS, decode_streams, &j);
        if (!j.failed)
            rk_pool_for(r->pool, 2 * (size_t)pr->lay.T, 64, tf_rows, &tj);
    }
    if (coef != cr->coef)
        rk_free(coef);
    if (j.failed)
        return rk_error_set(RK_ERR_CORRUPT, "cachegen: malformed entropy-coded stream");
    if (tj.failed)
        return rk_error_set(RK_ERR_NOMEM, "cachegen: transform rows");
    return RK_OK;
}

/* ---- codebooks ------------------------------------------------------------------------- */

#define CB_MAGIC 0x42434b52u /* "RKCB" */
#define CB_VERSION 1         /* probability tables only */
#define CB_VERSION_STEPS 2   /* and the channel steps of a weighted allocation */
#define CB_VERSION_TRANSFORM 3 /* and a learned transform with reconstruction points */
#define CB_VERSION_PREDICT 4   /* and K predicted from V (params.transform 2) */
#define CB_MAT_MAX 16777216.0f /* |matrix entry| bound (2^24): every decoded value stays finite */

struct codec_codebook {
    uint64_t id;          /* XXH3-64 of the serialised body (never 0) */
    int level;            /* quality level trained for */
    uint32_t L, H, D;     /* geometry (tokens free) */
    cg_params p;          /* quantizer and model layout; tables = 1 */
    cg_layout lay;        /* of a 1-token tensor: models count */
    uint16_t *freqs;      /* [freqs_len] every model's frequencies, in model order */
    float *steps;         /* [L][2][C] channel steps (weighted allocation), or NULL */
    cg_transform *tf;     /* transform coding (p.transform), or NULL */
    rans_model *models;   /* [lay.n_models] */
    rans_dmodel *dmodels; /* [lay.n_models] the same, decode-only (AVX2 decoder) */
};

const cg_params *cg_codebook_params(const codec_codebook *cb) { return &cb->p; }
const float *cg_codebook_steps(const codec_codebook *cb) { return cb->steps; }
const cg_transform *cg_codebook_transform(const codec_codebook *cb) { return cb ? cb->tf : NULL; }

const rans_model *cg_codebook_models(const codec_codebook *cb, size_t *n_models)
{
    *n_models = cb->lay.n_models;
    return cb->models;
}

const rans_dmodel *cg_codebook_dmodels(const codec_codebook *cb) { return cb->dmodels; }

rk_status cg_codebook_check(const codec_codebook *cb, const codec_shape *s)
{
    if (s->n_layers != cb->L || s->n_kv_heads != cb->H || s->head_dim != cb->D)
        return rk_error_set(RK_ERR_INVALID, "codebook is for %u layers x %u heads x %u, "
                            "tensor is %u x %u x %u", cb->L, cb->H, cb->D, s->n_layers,
                            s->n_kv_heads, s->head_dim);
    return RK_OK;
}

uint64_t codec_codebook_id(const codec_codebook *cb) { return cb->id; }
int codec_codebook_level(const codec_codebook *cb) { return cb->level; }

void codec_codebook_free(codec_codebook *cb)
{
    if (!cb)
        return;
    rk_free(cb->freqs);
    rk_free(cb->steps);
    tf_free(cb->tf);
    rk_free(cb->models);
    rk_free(cb->dmodels);
    rk_free(cb);
}

/* Serialise a codebook without its trailing checksum (docs/format.md section 5). */
static void cb_body(const codec_codebook *cb, rk_buf *out)
{
    rk_buf_put_u32(out, CB_MAGIC);
    rk_buf_put_u16(out, cb->tf && cb->tf->pred ? CB_VERSION_PREDICT
                        : cb->tf               ? CB_VERSION_TRANSFORM
                        : cb->steps            ? CB_VERSION_STEPS
                                               : CB_VERSION);
    rk_buf_put_u8(out, (uint8_t)cb->level);
    rk_buf_put_u8(out, 0);
    rk_buf_put_u32(out, cb->L);
    rk_buf_put_u32(out, cb->H);
    rk_buf_put_u32(out, cb->D);
    rk_buf_put_u32(out, (uint32_t)(CG_PARAMS_FIXED + 2 * cb->L));
    cg_params_write(&cb->p, cb->L, out);
    rk_buf_put_u32(out, (uint32_t)cb->lay.n_models);
    size_t nf = freqs_len(&cb->p, &cb->lay);
    for (size_t i = 0; i < nf; i++)
        rk_buf_put_u16(out, cb->freqs[i]);
    if (cb->steps) {
        size_t ns = (size_t)cb->L * 2 * cb->H * cb->D;
        rk_buf_put_u32(out, (uint32_t)ns);
        for (size_t i = 0; i < ns; i++) {
            uint32_t u;
            memcpy(&u, &cb->steps[i], 4);
            rk_buf_put_u32(out, u);
        }
    }
    if (cb->tf) { /* B, then mean [L][2][C], enc and dec [L][2][C/B][B][B], recon per model */
        size_t nc = (size_t)cb->L * 2 * cb->lay.C;
        rk_buf_put_u32(out, cb->tf->B);
        const float *arr[3] = {cb->tf->mean, cb->tf->enc, cb->tf->dec};
        for (int a = 0; a < 3; a++)
            for (size_t i = 0; i < (a ? nc * cb->tf->B : nc); i++) {
                uint32_t u;
                memcpy(&u, &arr[a][i], 4);
                rk_buf_put_u32(out, u);
            }
        for (size_t m = 0; m < cb->lay.n_models; m++)
            for (int s = 0; s < model_nsym(&cb->p, &cb->lay, m); s++) {
                uint32_t u;
                memcpy(&u, &cb->tf->recon[m * CODEC_MAX_SYMBOLS + (size_t)s], 4);
                rk_buf_put_u32(out, u);
            }
        for (size_t i = 0; cb->tf->pred && i < (size_t)cb->L * cb->lay.C * cb->tf->B; i++) {
            uint32_t u; /* version 4: pred [L][C/B][B][B] */
            memcpy(&u, &cb->tf->pred[i], 4);
            rk_buf_put_u32(out, u);
        }
    }
}

/* Bytes of a transform section for a codebook's params and layout (with the prediction
 * matrices of version 4 when pred). */
static size_t tf_section_len(const codec_codebook *cb, uint32_t B, bool pred)
{
    size_t nc = (size_t)cb->L * 2 * cb->lay.C, nr = 0;
    for (size_t m = 0; m < cb->lay.n_models; m++)
        nr += (size_t)model_nsym(&cb->p, &cb->lay, m);
    return 4 + 4 * (nc + 2 * nc * B + nr + (pred ? nc / 2 * B : 0));
}

/* Read and check the transform section (after the steps) of a version-3 or -4 codebook. */
static rk_status tf_parse(rk_reader *r, codec_codebook *cb, bool pred)
{
    uint32_t B = rk_reader_u32(r);
    if (r->short_read || !B || B > 64 || (cb->H * cb->D) % B)
        return rk_error_set(RK_ERR_FORMAT, "codebook: transform block %u for %u x %u channels", B, cb->H,
                            cb->D);
    if (rk_reader_left(r) != tf_section_len(cb, B, pred) - 4)
        return rk_error_set(RK_ERR_FORMAT, "codebook: transform section of %zu bytes",
                            rk_reader_left(r));
    if (!(cb->tf = tf_alloc(&cb->lay, B, cb->lay.n_models)))
        return rk_error_set(RK_ERR_NOMEM, "codebook");
    size_t nc = (size_t)cb->L * 2 * cb->lay.C;
    float *arr[3] = {cb->tf->mean, cb->tf->enc, cb->tf->dec};
    for (int a = 0; a < 3; a++)
        for (size_t i = 0; i < (a ? nc * B : nc); i++) {
            uint32_t u = rk_reader_u32(r);
            memcpy(&arr[a][i], &u, 4);
            float lim = a ? CB_MAT_MAX : 65504.0f;
            if (!(fabsf(arr[a][i]) <= lim))
                return rk_error_set(RK_ERR_FORMAT, "codebook: transform value %zu of array %d "
                                    "is %g", i, a, (double)arr[a][i]);
        }
    for (size_t m = 0; m < cb->lay.n_models; m++) {
        int ns = model_nsym(&cb->p, &cb->lay, m), qmax = (ns - 1) / 2;
        for (int s = 0; s < ns; s++) {
            uint32_t u = rk_reader_u32(r);
            float *v = &cb->tf->recon[m * CODEC_MAX_SYMBOLS + (size_t)s];
            memcpy(v, &u, 4);
            /* within a step of its grid point (the encoder's are within half a step) */
            if (!(fabsf(*v - (float)(s - qmax)) <= 1.0f))
                return rk_error_set(RK_ERR_FORMAT, "codebook: reconstruction point %d of model "
                                    "%zu is %g", s, m, (double)*v);
        }
    }
    if (pred) {
        size_t np = nc / 2 * B;
        if (!(cb->tf->pred = rk_malloc(np * sizeof(float))))
            return rk_error_set(RK_ERR_NOMEM, "codebook");
        for (size_t i = 0; i < np; i++) {
            uint32_t u = rk_reader_u32(r);
            memcpy(&cb->tf->pred[i], &u, 4);
            if (!(fabsf(cb->tf->pred[i]) <= CB_MAT_MAX))
                return rk_error_set(RK_ERR_FORMAT, "codebook: prediction value %zu is %g", i,
                                    (double)cb->tf->pred[i]);
        }
    }
    tf_transpose(cb->tf, nc);
    return RK_OK;
}

/* The id of a codebook: the XXH3-64 of its serialised body, never 0. */
static rk_status cb_set_id(codec_codebook *cb)
{
    rk_buf b = RK_BUF_INIT;
    cb_body(cb, &b);
    if (b.failed) {
        rk_buf_free(&b);
        return rk_error_set(RK_ERR_NOMEM, "codebook");
    }
    cb->id = rk_xxh3_64(b.data, b.len);
    if (!cb->id)
        cb->id = 1;
    rk_buf_free(&b);
    return RK_OK;
}

/* Build models and the id of a codebook whose freqs, params and geometry are set. */
static rk_status cb_finish(codec_codebook *cb)
{
    cb->models = rk_malloc(cb->lay.n_models * sizeof *cb->models);
    cb->dmodels = rk_malloc(cb->lay.n_models * sizeof *cb->dmodels);
    if (!cb->models || !cb->dmodels)
        return rk_error_set(RK_ERR_NOMEM, "codebook models");
    rk_status st = models_from_freqs(cb->freqs, &cb->p, &cb->lay, cb->models);
    if (st != RK_OK)
        return st;
    for (size_t i = 0; i < cb->lay.n_models; i++)
        rans_dmodel_build(&cb->models[i], &cb->dmodels[i]);
    return cb_set_id(cb);
}

rk_status codec_codebook_serialize(const codec_codebook *cb, rk_buf *out)
{
    size_t start = out->len;
    cb_body(cb, out);
    rk_buf_put_u64(out, rk_xxh3_64(out->data + start, out->len - start));
    if (out->failed) {
        out->len = start;
        return rk_error_set(RK_ERR_NOMEM, "codebook serialise");
    }
    return RK_OK;
}

rk_status codec_codebook_parse(const void *data, size_t len, codec_codebook **out)
{
    *out = NULL;
    const uint8_t *d = data;
    rk_status st;
    if (!data || len < 32)
        return rk_error_set(RK_ERR_TRUNCATED, "codebook: %zu bytes", len);
    if (rk_get_le32(d) != CB_MAGIC)
        return rk_error_set(RK_ERR_FORMAT, "codebook: bad magic");
    unsigned version = rk_get_le16(d + 4);
    if (version != CB_VERSION && version != CB_VERSION_STEPS && version != CB_VERSION_TRANSFORM &&
        version != CB_VERSION_PREDICT)
        return rk_error_set(RK_ERR_UNSUPPORTED, "codebook: version %u", version);
    if (rk_xxh3_64(d, len - 8) != rk_get_le64(d + len - 8))
        return rk_error_set(RK_ERR_CORRUPT, "codebook: checksum mismatch");
    codec_codebook *cb = rk_calloc(1, sizeof *cb);
    if (!cb)
        return rk_error_set(RK_ERR_NOMEM, "codebook");
    rk_reader r = rk_reader_make(d + 8, len - 16);
    cb->level = d[6];
    cb->L = rk_reader_u32(&r);
    cb->H = rk_reader_u32(&r);
    cb->D = rk_reader_u32(&r);
    uint32_t plen = rk_reader_u32(&r);
    const uint8_t *pd = rk_reader_take(&r, plen);
    if (r.short_read || !pd || d[7] != 0 || cb->level > CG_MAX_LEVEL || !cb->L || !cb->H || !cb->D) {
        st = rk_error_set(RK_ERR_FORMAT, "codebook: bad header");
        goto fail;
    }
    if ((st = cg_params_parse(pd, plen, cb->L, &cb->p)) != RK_OK)
        goto fail;
    codec_shape s1 = {cb->L, 1, cb->H, cb->D};
    if (cb->p.transform != (version == CB_VERSION_TRANSFORM ? 1 : version == CB_VERSION_PREDICT ? 2 : 0) ||
        (cb->p.transform && cb->p.model_group != 1)) {
        st = rk_error_set(RK_ERR_FORMAT, "codebook: version %u with transform flag %u", version,
                          cb->p.transform);
        goto fail;
    }
    if (cb->p.tables != 1) {
        st = rk_error_set(RK_ERR_FORMAT, "codebook: table source %u", cb->p.tables);
        goto fail;
    }
    if ((st = cg_layout_make(&s1, &cb->p, &cb->lay)) != RK_OK)
        goto fail;
    uint32_t nm = rk_reader_u32(&r);
    size_t nf = freqs_len(&cb->p, &cb->lay);
    size_t ns = version >= CB_VERSION_STEPS ? (size_t)cb->L * 2 * cb->lay.C : 0;
    size_t left = rk_reader_left(&r), need = 2 * nf + (ns ? 4 + 4 * ns : 0);
    if (r.short_read || nm != cb->lay.n_models ||
        (version >= CB_VERSION_TRANSFORM ? left < need + 4 : left != need)) {
        st = rk_error_set(RK_ERR_FORMAT, "codebook: %u models / %zu bytes do not fit the "
                          "geometry", nm, rk_reader_left(&r));
        goto fail;
    }
    cb->freqs = rk_malloc(nf * sizeof *cb->freqs);
    if (!cb->freqs) {
        st = rk_error_set(RK_ERR_NOMEM, "codebook");
        goto fail;
    }
    for (size_t i = 0; i < nf; i++)
        cb->freqs[i] = rk_reader_u16(&r);
    if (ns) {
        if (rk_reader_u32(&r) != ns || cb->p.k_scale_mode != CODEC_SCALE_CHANNEL ||
            cb->p.v_scale_mode != CODEC_SCALE_CHANNEL || cb->p.anchor_interval) {
            st = rk_error_set(RK_ERR_FORMAT, "codebook: step count or modes");
            goto fail;
        }
        if (!(cb->steps = rk_malloc(ns * sizeof *cb->steps))) {
            st = rk_error_set(RK_ERR_NOMEM, "codebook");
            goto fail;
        }
        for (size_t i = 0; i < ns; i++) {
            uint32_t u = rk_reader_u32(&r);
            memcpy(&cb->steps[i], &u, 4);
            if (!(cb->steps[i] >= 0.0f && cb->steps[i] <= 65504.0f)) {
                st = rk_error_set(RK_ERR_FORMAT, "codebook: step %zu is %g", i,
                                  (double)cb->steps[i]);
                goto fail;
            }
        }
    }
    if (version >= CB_VERSION_TRANSFORM && (st = tf_parse(&r, cb, version == CB_VERSION_PREDICT)) != RK_OK)
        goto fail;
    if ((st = cb_finish(cb)) != RK_OK)
        goto fail;
    *out = cb;
    return RK_OK;
fail:
    codec_codebook_free(cb);
    return st;
}

/* Solve (A + ridge * trace(A) / n * I) X = Bm for X in place of Bm (A n x n symmetric,
 * destroyed; Bm n x m), Gaussian elimination with partial pivoting. */
static void ridge_solve(double *A, double *Bm, int n, int m, double ridge)
{
    double tr = 0;
    for (int i = 0; i < n; i++)
        tr += A[i * n + i];
    for (int i = 0; i < n; i++)
        A[i * n + i] += ridge * tr / n + 1e-30;
    for (int i = 0; i < n; i++) {
        int pv = i;
        for (int r = i + 1; r < n; r++)
            if (fabs(A[r * n + i]) > fabs(A[pv * n + i]))
                pv = r;
        for (int k = 0; pv != i && k < n; k++) {
            double t = A[i * n + k];
            A[i * n + k] = A[pv * n + k];
            A[pv * n + k] = t;
        }
        for (int k = 0; pv != i && k < m; k++) {
            double t = Bm[i * m + k];
            Bm[i * m + k] = Bm[pv * m + k];
            Bm[pv * m + k] = t;
        }
        double d = A[i * n + i];
        if (d == 0)
            continue; /* a zero column: its coefficients stay 0 below */
        for (int r = 0; r < n; r++) {
            if (r == i || A[r * n + i] == 0)
                continue;
            double f = A[r * n + i] / d;
            for (int k = i; k < n; k++)
                A[r * n + k] -= f * A[i * n + k];
            for (int k = 0; k < m; k++)
                Bm[r * m + k] -= f * Bm[i * m + k];
        }
    }
    for (int i = 0; i < n; i++)
        for (int k = 0; k < m; k++)
            Bm[i * m + k] = A[i * n + i] != 0 ? Bm[i * m + k] / A[i * n + i] : 0.0;
}

#define PRED_RIDGE 1e-3 /* of the mean variance: the closed loop amplifies ill-conditioned fits */

/* K from V: per (layer, block of B channels) the least-squares (ridge) prediction of the K
 * block from the same token's V block over every sample's tokens, into pred [L][C/B][B][B]
 * (row j: K channel c0 + j). */
static rk_status pred_fit(const float *const *samples, const codec_shape *shapes, size_t n,
                          const cg_layout *lay1, uint32_t B, float *pred)
{
    uint32_t C = lay1->C;
    double *A = rk_malloc((size_t)B * B * sizeof *A), *Bm = rk_malloc((size_t)B * B * sizeof *Bm);
    double *mx = rk_malloc(2 * (size_t)B * sizeof *mx), *my = mx + B;
    if (!A || !Bm || !mx) {
        rk_free(A);
        rk_free(Bm);
        rk_free(mx);
        return rk_error_set(RK_ERR_NOMEM, "codebook prediction");
    }
    for (uint32_t l = 0; l < lay1->L; l++)
        for (uint32_t c0 = 0; c0 < C; c0 += B) {
            double cnt = 0;
            memset(mx, 0, 2 * (size_t)B * sizeof *mx);
            memset(A, 0, (size_t)B * B * sizeof *A);
            memset(Bm, 0, (size_t)B * B * sizeof *Bm);
            for (int pass = 0; pass < 2; pass++) { /* means, then the centred products */
                for (size_t s = 0; s < n; s++) {
                    size_t T = shapes[s].n_tokens;
                    const float *K = samples[s] + 2 * (size_t)l * T * C, *V = K + T * C;
                    for (size_t t = 0; t < T; t++) {
                        const float *k = K + t * C + c0, *v = V + t * C + c0;
                        for (uint32_t i = 0; i < B && !pass; i++) {
                            mx[i] += v[i];
                            my[i] += k[i];
                        }
                        for (uint32_t i = 0; i < B && pass; i++) {
                            double a = v[i] - mx[i];
                            for (uint32_t j = 0; j < B; j++) {
                                A[i * B + j] += a * (v[j] - mx[j]);
                                Bm[i * B + j] += a * (k[j] - my[j]);
                            }
                        }
                    }
                    cnt += pass ? 0 : (double)T;
                }
                for (uint32_t i = 0; i < 2 * B && !pass; i++)
                    mx[i] /= cnt;
            }
            ridge_solve(A, Bm, (int)B, (int)B, PRED_RIDGE); /* Bm[i][j]: K j from V i */
            float *m = pred + ((size_t)l * C + c0) * B;
            for (uint32_t j = 0; j < B; j++)
                for (uint32_t i = 0; i < B; i++) {
                    double x = Bm[i * B + j];
                    m[j * B + i] = (float)(x > CB_MAT_MAX ? CB_MAT_MAX : x < -CB_MAT_MAX ? -CB_MAT_MAX : x);
                }
        }
    rk_free(A);
    rk_free(Bm);
    rk_free(mx);
    return RK_OK;
}

static rk_status codebook_train(const float *const *samples, const codec_shape *shapes, size_t n,
                                const codec_params *p, codec_codebook **out);

/* K from V (p->predict_k): the prediction fitted on the samples, a transform codebook trained
 * on the samples with K replaced by its residuals from the exact V, the prediction attached
 * (params.transform 2, version 4). */
static rk_status codebook_train_predict(const float *const *samples, const codec_shape *shapes, size_t n,
                                        const codec_params *p, codec_codebook **out)
{
    if (p->transform_block <= 0)
        return rk_error_set(RK_ERR_INVALID, "codebook train: K from V needs a transform (transform_block)");
    codec_params q = *p;
    q.predict_k = 0;
    /* the plain codebook first: it checks the arguments and shapes, and gives the layout */
    codec_codebook *cb = NULL;
    rk_status st = codebook_train(samples, shapes, n, &q, &cb);
    if (st != RK_OK)
        return st;
    float **res = rk_calloc(n, sizeof *res);
    float *pred = rk_malloc((size_t)cb->L * cb->lay.C * cb->tf->B * sizeof *pred);
    if (!res || !pred)
        st = rk_error_set(RK_ERR_NOMEM, "codebook prediction");
    if (st == RK_OK)
        st = pred_fit(samples, shapes, n, &cb->lay, cb->tf->B, pred);
    cg_transform tmp = *cb->tf;
    tmp.pred = pred;
    for (size_t i = 0; i < n && st == RK_OK; i++) {
        cg_layout lay;
        cg_layout_make(&shapes[i], &cb->p, &lay); /* succeeded in training */
        if (!(res[i] = rk_malloc(codec_shape_values(&shapes[i]) * sizeof(float))))
            st = rk_error_set(RK_ERR_NOMEM, "codebook prediction");
        else
            st = predict_residuals(&tmp, &lay, samples[i], NULL, res[i]);
    }
    codec_codebook_free(cb);
    cb = NULL;
    if (st == RK_OK)
        st = codebook_train((const float *const *)res, shapes, n, &q, &cb);
    for (size_t i = 0; res && i < n; i++)
        rk_free(res[i]);
    rk_free(res);
    if (st == RK_OK) {
        cb->tf->pred = pred;
        pred = NULL;
        cb->p.transform = 2;
        st = cb_set_id(cb);
    }
    rk_free(pred);
    if (st != RK_OK) {
        codec_codebook_free(cb);
        return st;
    }
    *out = cb;
    return RK_OK;
}

rk_status codec_codebook_train(const float *const *samples, const codec_shape *shapes,
                               size_t n, const codec_params *p, codec_codebook **out)
{
    if (out)
        *out = NULL;
    if (!samples || !shapes || !n || !p || !out)
        return rk_error_set(RK_ERR_INVALID, "codebook train: bad arguments");
    if (p->predict_k)
        return codebook_train_predict(samples, shapes, n, p, out);
    return codebook_train(samples, shapes, n, p, out);
}

static rk_status codebook_train(const float *const *samples, const codec_shape *shapes, size_t n,
                                const codec_params *p, codec_codebook **out)
{
    *out = NULL;
    if (!samples || !shapes || !n || !p || p->codec != CODEC_CACHEGEN || p->codebook)
        return rk_error_set(RK_ERR_INVALID, "codebook train: bad arguments");
    int level = p->level < 0 ? CG_DEFAULT_LEVEL : p->level;
    if (level > CG_MAX_LEVEL)
        return rk_error_set(RK_ERR_RANGE, "codebook train: level %d (0..%d)", level, CG_MAX_LEVEL);
    codec_codebook *cb = rk_calloc(1, sizeof *cb);
    uint64_t *counts = NULL;
    double *rsum = NULL;   /* [n_models][CODEC_MAX_SYMBOLS] transform: sums of coefficients / step */
    float **coefs = NULL;  /* [n] transform: the samples' coefficients */
    uint8_t *sym = NULL;
    uint16_t *scales = NULL;
    rk_status st;
    if (!cb)
        return rk_error_set(RK_ERR_NOMEM, "codebook");
    cb->level = level;
    cb->L = shapes[0].n_layers;
    cb->H = shapes[0].n_kv_heads;
    cb->D = shapes[0].head_dim;
    if (!cb->L || !cb->H || !cb->D || cb->L > CG_MAX_LAYERS) {
        st = rk_error_set(RK_ERR_INVALID, "codebook train: bad shape");
        goto fail;
    }
    codec_params up = *p;
    if (up.model_group < 0)
        up.model_group = 1; /* a codebook is paid once: one model per channel */
    cg_params_for_level(level, cb->L, &up, cb->D, &cb->p);
    cb->p.tables = 1;
    codec_shape s1 = {cb->L, 1, cb->H, cb->D};
    if ((st = cg_layout_make(&s1, &cb->p, &cb->lay)) != RK_OK)
        goto fail;
    for (size_t i = 0; i < n; i++) {
        cg_layout lay;
        if ((st = cg_codebook_check(cb, &shapes[i])) != RK_OK || !shapes[i].n_tokens)
            goto fail;
        if ((st = cg_layout_make(&shapes[i], &cb->p, &lay)) != RK_OK)
            goto fail;
        size_t nval = (size_t)lay.L * 2 * lay.T * lay.C;
        for (size_t k = 0; k < nval; k++)
            if (!(fabsf(samples[i][k]) <= 65504.0f)) {
                st = rk_error_set(RK_ERR_RANGE, "codebook train: sample %zu value %zu", i, k);
                goto fail;
            }
    }
    if ((st = step_scale_check(p)) != RK_OK)
        goto fail;
    uint32_t B = p->transform_block > 0 ? (uint32_t)p->transform_block : 0;
    if (p->transform_block < 0 ||
        (B && (!p->weights || B > 64 || (cb->H * cb->D) % B || cb->p.model_group != 1))) {
        st = rk_error_set(RK_ERR_INVALID, "codebook train: transform block %d needs weights, "
                          "divides kv_heads x head_dim (%u x %u), at most 64, one model per channel",
                          p->transform_block, cb->H, cb->D);
        goto fail;
    }
    if (B && !(coefs = rk_calloc(n, sizeof *coefs))) {
        st = rk_error_set(RK_ERR_NOMEM, "codebook train");
        goto fail;
    }
    if (p->weights) { /* the weighted allocation, from the ranges of all samples */
        size_t nw = (size_t)cb->L * 2 * cb->lay.C;
        if ((st = weights_check(p->weights, &cb->p, nw)) != RK_OK)
            goto fail;
        float *absmax = rk_calloc(nw, sizeof *absmax);
        cb->steps = rk_malloc(nw * sizeof *cb->steps);
        if (!absmax || !cb->steps) {
            rk_free(absmax);
            st = rk_error_set(RK_ERR_NOMEM, "codebook steps");
            goto fail;
        }
        for (size_t i = 0; i < n; i++) {
            cg_layout lay;
            cg_layout_make(&shapes[i], &cb->p, &lay); /* succeeded above */
            channel_absmax(samples[i], &lay, absmax);
        }
        if (!B)
            weighted_steps(absmax, p->weights, &cb->lay, &cb->p, p->step_scale, cb->steps);
        else { /* one step, the allocation's k, for every coefficient of the weighted domain */
            double k = weighted_k(absmax, p->weights, &cb->lay, &cb->p, p->step_scale);
            if (!(cb->tf = tf_alloc(&cb->lay, B, cb->lay.n_models))) {
                rk_free(absmax);
                st = rk_error_set(RK_ERR_NOMEM, "codebook transform");
                goto fail;
            }
            st = tf_learn(samples, shapes, n, p->weights, &cb->lay, k, cb->tf);
            memset(absmax, 0, nw * sizeof *absmax);
            for (size_t i = 0; i < n && st == RK_OK; i++) {
                cg_layout lay;
                cg_layout_make(&shapes[i], &cb->p, &lay);
                if (!(coefs[i] = rk_malloc((size_t)lay.L * 2 * lay.T * lay.C * sizeof(float))))
                    st = rk_error_set(RK_ERR_NOMEM, "codebook transform");
                else {
                    tf_forward(cb->tf, &lay, samples[i], coefs[i]);
                    channel_absmax(coefs[i], &lay, absmax);
                }
            }
            steps_from_k(k, absmax, NULL, 0, &cb->lay, &cb->p, cb->steps);
            cb->p.transform = 1;
        }
        rk_free(absmax);
        if (st != RK_OK)
            goto fail;
        if ((st = cg_layout_make(&s1, &cb->p, &cb->lay)) != RK_OK) /* alphabets changed */
            goto fail;
    }
    counts = rk_calloc(cb->lay.n_models * CODEC_MAX_SYMBOLS, sizeof *counts);
    if (B)
        rsum = rk_calloc(cb->lay.n_models * CODEC_MAX_SYMBOLS, sizeof *rsum);
    if (!counts || (B && !rsum)) {
        st = rk_error_set(RK_ERR_NOMEM, "codebook counts");
        goto fail;
    }
    for (size_t i = 0; i < n; i++) {
        cg_layout lay;
        if ((st = cg_layout_make(&shapes[i], &cb->p, &lay)) != RK_OK)
            goto fail;
        size_t nval = (size_t)lay.L * 2 * lay.T * lay.C;
        const float *in = B ? coefs[i] : samples[i];
        sym = rk_malloc(nval);
        scales = rk_malloc((lay.n_scales + 1) * sizeof *scales);
        if (!sym || !scales) {
            st = rk_error_set(RK_ERR_NOMEM, "codebook train");
            goto fail;
        }
        if ((st = cg_quantize(in, &cb->p, &lay, cb->steps, p->pool, sym, scales)) != RK_OK)
            goto fail;
        cg_count(sym, &cb->p, &lay, counts);
        for (size_t k = 0; B && k < nval; k++) { /* each symbol's mean value, in steps */
            uint32_t c = (uint32_t)(k % lay.C), lkv = (uint32_t)(k / lay.C / lay.T);
            float sc = rk_f16_to_f32(scales[cg_scale_index(&lay, &cb->p, lkv / 2, lkv % 2, 0, c, 0)]);
            if (sc > 0)
                rsum[cg_model_index(&lay, &cb->p, lkv / 2, lkv % 2, c, 0) * CODEC_MAX_SYMBOLS + sym[k]] +=
                    (double)in[k] / sc;
        }
        rk_free(sym);
        rk_free(scales);
        sym = NULL;
        scales = NULL;
    }
    for (size_t m = 0; B && m < cb->lay.n_models; m++) { /* reconstruction points */
        int ns = model_nsym(&cb->p, &cb->lay, m), qmax = (ns - 1) / 2;
        for (int sy = 0; sy < ns; sy++) {
            size_t i = m * CODEC_MAX_SYMBOLS + (size_t)sy;
            /* counts hold the symbols seen, rsum their sum: the bin's conditional mean, kept
             * inside the bin (rounding of the fp16 scale can put an extreme value past it) */
            double r = counts[i] ? rsum[i] / (double)counts[i] : (double)(sy - qmax);
            r = r < sy - qmax - 0.5 ? sy - qmax - 0.5 : r > sy - qmax + 0.5 ? sy - qmax + 0.5 : r;
            cb->tf->recon[i] = (float)r;
        }
    }
    cb->freqs = rk_malloc(freqs_len(&cb->p, &cb->lay) * sizeof *cb->freqs);
    if (!cb->freqs) {
        st = rk_error_set(RK_ERR_NOMEM, "codebook");
        goto fail;
    }
    freqs_from_counts(counts, &cb->p, &cb->lay, cb->freqs);
    if ((st = cb_finish(cb)) != RK_OK)
        goto fail;
    st = RK_OK;
fail:
    for (size_t i = 0; coefs && i < n; i++)
        rk_free(coefs[i]);
    rk_free(coefs);
    rk_free(rsum);
    rk_free(counts);
    if (st == RK_OK) {
        *out = cb;
        return RK_OK;
    }
    rk_free(sym);
    rk_free(scales);
    codec_codebook_free(cb);
    return st;
}

const struct codec_i codec_cachegen_i = {
    .id = CODEC_CACHEGEN,
    .name = "cachegen",
    .default_level = CG_DEFAULT_LEVEL,
    .max_level = CG_MAX_LEVEL,
    .encode = cg_encode,
    .open = cg_open,
    .decode_layers = cg_decode_layers,
    .close = cg_close,
};
