/* blend_math.c — selection, Cache-Craft budgets and fidelity measures. */
#include "ragkv/blend_math.h"

#include <math.h>
#include <stdlib.h>

#include "ragkv/alloc.h"

size_t bl_select_count(size_t n, float ratio)
{
    if (!(ratio > 0.0f))
        return 0; /* also NaN */
    if (ratio >= 1.0f)
        return n;
    /* the float 0.15f is 0.15000000596: 0.15f * 20 must still select 3, not 4 */
    double x = (double)ratio * (double)n;
    double k = ceil(x - 1e-6 * x);
    return k > (double)n ? n : (size_t)k;
}

struct ranked {
    float score;
    uint32_t idx;
};

/* Larger score first; NaN last; lower index first on ties. */
static int cmp_rank(const void *pa, const void *pb)
{
    const struct ranked *a = pa, *b = pb;
    int an = isnan(a->score), bn = isnan(b->score);
    if (an != bn)
        return an - bn;
    if (!an && a->score != b->score)
        return a->score > b->score ? -1 : 1;
    return (a->idx > b->idx) - (a->idx < b->idx);
}

static int cmp_u32(const void *pa, const void *pb)
{
    uint32_t a = *(const uint32_t *)pa, b = *(const uint32_t *)pb;
    return (a > b) - (a < b);
}

rk_status bl_select_top(const float *score, size_t n, size_t k, uint32_t *out)
{
    if (k > n)
        return rk_error_set(RK_ERR_INVALID, "select %zu of %zu", k, n);
    if (k == 0)
        return RK_OK;
    if (n > UINT32_MAX)
        return rk_error_set(RK_ERR_LIMIT, "too many tokens to rank");
    struct ranked *r = rk_malloc(n * sizeof(*r));
    if (!r)
        return RK_ERR_NOMEM;
    for (size_t i = 0; i < n; i++) {
        r[i].score = score[i];
        r[i].idx = (uint32_t)i;
    }
    qsort(r, n, sizeof(*r), cmp_rank);
    for (size_t i = 0; i < k; i++)
        out[i] = r[i].idx;
    rk_free(r);
    qsort(out, k, sizeof(uint32_t), cmp_u32);
    return RK_OK;
}

float bl_schedule_ratio(const bl_schedule *s, int layers_after)
{
    double r = s->first;
    for (int i = 0; i < layers_after && r > s->final; i++)
        r *= s->step;
    return (float)(r < s->final ? s->final : r);
}

bl_schedule bl_schedule_flat(float r)
{
    bl_schedule s = {r, 1.0f, r};
    return s;
}

double bl_cci(const float *inter, const float *intra, int nlayers, size_t chunk_tokens,
              size_t prev_tokens)
{
    if (nlayers <= 0 || chunk_tokens == 0 || prev_tokens == 0)
        return 0.5;
    double a = 0, b = 0;
    for (int l = 0; l < nlayers; l++) {
        a += inter[l];
        b += intra[l];
    }
    a /= (double)nlayers * (double)chunk_tokens * (double)prev_tokens;
    b /= (double)nlayers * (double)chunk_tokens * (double)chunk_tokens;
    if (!(b > 0))
        return 0.5;
    return 1.0 / (1.0 + exp(-a / b));
}

static long find_id(const uint64_t *v, size_t n, uint64_t id)
{
    for (size_t i = 0; i < n; i++)
        if (v[i] == id)
            return (long)i;
    return -1;
}

double bl_prefix_overlap(const uint64_t *stored, size_t ns, const uint64_t *current, size_t nc)
{
    if (nc == 0)
        return 1.0;
    size_t common = 0;
    for (size_t i = 0; i < nc; i++)
        common += find_id(stored, ns, current[i]) >= 0;
    return (double)common / (double)nc;
}

double bl_order_penalty(const uint64_t *stored, size_t ns, const uint64_t *current, size_t nc)
{
    /* positions in `current` of the stored chunks that are still there, in stored order */
    long *pos = rk_malloc((ns ? ns : 1) * sizeof(long));
    if (!pos)
        return 1.0; /* no memory: assume the worst order, which only costs recomputation */
    size_t m = 0;
    for (size_t i = 0; i < ns; i++) {
        long p = find_id(current, nc, stored[i]);
        if (p >= 0)
            pos[m++] = p;
    }
    double gamma = 0;
    if (m >= 2) {
        size_t discordant = 0;
        for (size_t i = 0; i < m; i++)
            for (size_t j = i + 1; j < m; j++)
                discordant += pos[i] > pos[j];
        gamma = (double)discordant / ((double)m * (double)(m - 1) / 2.0);
    }
    rk_free(pos);
    return gamma;
}

double bl_cfo(double alpha, double cci, double beta, double gamma)
{
    double v = alpha * cci * (1.0 - beta * (1.0 - gamma));
    if (!(v > 0))
        return 0;
    return v > 1 ? 1 : v;
}

/* log(sum(exp(x))) in double, shifted by the maximum. */
static double logsumexp(const float *x, size_t n, double *max_out)
{
    double m = -INFINITY;
    for (size_t i = 0; i < n; i++)
        if (x[i] > m)
            m = x[i];
    double s = 0;
    for (size_t i = 0; i < n; i++)
        s += exp((double)x[i] - m);
    *max_out = m;
    return m + log(s);
}

double bl_kl_divergence(const float *ref, const float *x, size_t n)
{
    if (n == 0)
        return 0;
    double mr, mx;
    double lr = logsumexp(ref, n, &mr), lx = logsumexp(x, n, &mx);
    double kl = 0;
    for (size_t i = 0; i < n; i++) {
        double lp = (double)ref[i] - lr, lq = (double)x[i] - lx;
        double p = exp(lp);
        if (p > 0)
            kl += p * (lp - lq);
    }
    return kl < 0 ? 0 : kl; /* rounding can leave -1e-17 */
}

size_t bl_argmax(const float *x, size_t n)
{
    size_t best = 0;
    for (size_t i = 1; i < n; i++)
        if (x[i] > x[best])
            best = i;
    return best;
}

size_t bl_matched_prefix(const int32_t *a, const int32_t *b, size_t n)
{
    size_t i = 0;
    while (i < n && a[i] == b[i])
        i++;
    return i;
}

double bl_rel_l2(const float *ref, const float *x, size_t n)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)x[i] - (double)ref[i];
        num += d * d;
        den += (double)ref[i] * (double)ref[i];
    }
    if (den == 0)
        return num == 0 ? 0 : INFINITY;
    return sqrt(num / den);
}
