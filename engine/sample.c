/* sample.c — greedy, temperature, top-k and top-p sampling with a seeded PCG32 stream. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine_impl.h"
#include "ragkv/alloc.h"

/* PCG32 (O'Neill): 64-bit LCG state, xorshift-rotate output. */
static uint32_t pcg32(eng_sampler *s)
{
    uint64_t old = s->state;
    s->state = old * 6364136223846793005ull + s->inc;
    uint32_t xs = (uint32_t)(((old >> 18) ^ old) >> 27);
    uint32_t rot = (uint32_t)(old >> 59);
    return (xs >> rot) | (xs << ((32 - rot) & 31));
}

void eng_sampler_init(eng_sampler *s, float temperature, int top_k, float top_p, uint64_t seed)
{
    memset(s, 0, sizeof(*s));
    s->temperature = temperature > 0.0f ? temperature : 0.0f;
    s->top_k = top_k > 0 ? top_k : 0;
    s->top_p = top_p > 0.0f ? top_p : 1.0f;
    s->inc = (seed << 1) | 1u;
    s->state = 0;
    pcg32(s);
    s->state += seed ^ 0x853c49e6748fea9bull;
    pcg32(s);
}

void eng_sampler_free(eng_sampler *s)
{
    rk_free(s->scratch);
    rk_free(s->order);
    s->scratch = NULL;
    s->order = NULL;
    s->cap = 0;
}

float eng_sampler_uniform(eng_sampler *s)
{
    return (float)(pcg32(s) >> 8) / 16777216.0f;
}

int32_t eng_argmax(const float *logits, int vocab)
{
    int32_t best = -1;
    for (int i = 0; i < vocab; i++)
        if (!isnan(logits[i]) && (best < 0 || logits[i] > logits[best]))
            best = i;
    return best;
}

/* Candidate order: more probable first, lower id first on ties (a total order, so the
 * result never depends on the sorting algorithm). */
static inline bool better(const float *p, int a, int b)
{
    return p[a] > p[b] || (p[a] == p[b] && a < b);
}

/* Heap whose root is the worst kept candidate. */
static void sift_down(int *h, size_t n, size_t i, const float *p)
{
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, w = i;
        if (l < n && better(p, h[w], h[l]))
            w = l;
        if (r < n && better(p, h[w], h[r]))
            w = r;
        if (w == i)
            return;
        int t = h[i];
        h[i] = h[w];
        h[w] = t;
        i = w;
    }
}

/* Keep the best k of the m ids in ids[] and sort them best first; returns how many. Heap
 * selection: O(m log k), instead of sorting a 150K-entry vocabulary every token. */
static size_t select_best(int *ids, size_t m, size_t k, const float *p)
{
    if (k > m)
        k = m;
    for (size_t i = k / 2; i-- > 0;)
        sift_down(ids, k, i, p);
    for (size_t i = k; i < m; i++)
        if (better(p, ids[i], ids[0])) {
            ids[0] = ids[i];
            sift_down(ids, k, 0, p);
        }
    /* pop the worst to the end repeatedly: best first */
    for (size_t n = k; n > 1; n--) {
        int t = ids[0];
        ids[0] = ids[n - 1];
        ids[n - 1] = t;
        sift_down(ids, n - 1, 0, p);
    }
    return k;
}

bool eng_sampler_reserve(eng_sampler *s, int vocab)
{
    if (vocab <= 0 || (size_t)vocab <= s->cap)
        return true;
    float *p = rk_realloc(s->scratch, (size_t)vocab * sizeof(float));
    if (p)
        s->scratch = p;
    int *o = rk_realloc(s->order, (size_t)vocab * sizeof(int));
    if (o)
        s->order = o;
    if (!p || !o)
        return false;
    s->cap = (size_t)vocab;
    return true;
}

int32_t eng_sample(eng_sampler *s, const float *logits, int vocab)
{
    if (vocab <= 0)
        return -1;
    int32_t top = eng_argmax(logits, vocab);
    if (top < 0 || s->temperature == 0.0f)
        return top;
    if (!eng_sampler_reserve(s, vocab))
        return -1;
    float *prob = s->scratch;
    /* softmax of logits / temperature, as llama2.c (max subtracted, float sums) */
    float maxv = logits[top] / s->temperature;
    float sum = 0.0f;
    for (int i = 0; i < vocab; i++) {
        float x = isnan(logits[i]) ? -INFINITY : logits[i] / s->temperature;
        prob[i] = expf(x - maxv);
        sum += prob[i];
    }
    for (int i = 0; i < vocab; i++)
        prob[i] /= sum;
    int n = vocab;
    float r = eng_sampler_uniform(s);
    if (s->top_k == 0 && s->top_p >= 1.0f) {
        float cdf = 0.0f;
        for (int i = 0; i < vocab; i++) {
            cdf += prob[i];
            if (r < cdf)
                return i;
        }
        return vocab - 1; /* rounding */
    }
    /* candidates: with top-p, a token below (1 - top_p) / (vocab - 1) cannot be in the
     * nucleus (all such tokens together hold less than 1 - top_p), so skip it (llama2.c's
     * cut-off); keep the top-k of the rest, sorted */
    size_t m = 0;
    float cutoff = s->top_p < 1.0f && vocab > 1 ? (1.0f - s->top_p) / (float)(vocab - 1) : 0.0f;
    for (int i = 0; i < vocab; i++)
        if (prob[i] >= cutoff)
            s->order[m++] = i;
    if (m == 0) /* rounding: fall back to everything */
        for (int i = 0; i < vocab; i++)
            s->order[m++] = i;
    n = (int)select_best(s->order, m, s->top_k > 0 ? (size_t)s->top_k : m, prob);
    float mass = 0.0f;
    int keep = n;
    for (int i = 0; i < n; i++) {
        mass += prob[s->order[i]];
        if (s->top_p < 1.0f && mass >= s->top_p) {
            keep = i + 1;
            break;
        }
    }
    if (keep != n) {
        mass = 0.0f;
        for (int i = 0; i < keep; i++)
            mass += prob[s->order[i]];
    }
    float target = r * mass, cdf = 0.0f;
    for (int i = 0; i < keep; i++) {
        cdf += prob[s->order[i]];
        if (target < cdf)
            return s->order[i];
    }
    return s->order[keep - 1];
}
