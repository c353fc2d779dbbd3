/* sample.c — greedy, temperature, top-k and top-p sampling with a seeded PCG32 stream. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ragkv/alloc.h"
#include "ragkv/engine.h"

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

/* Sort candidates by probability, descending; ties by id so the order is total. */
static const float *sort_probs;
static int cmp_prob(const void *a, const void *b)
{
    int x = *(const int *)a, y = *(const int *)b;
    float px = sort_probs[x], py = sort_probs[y];
    if (px != py)
        return px > py ? -1 : 1;
    return (x > y) - (x < y);
}

/* qsort has no context argument; keep the sort itself single-threaded per process. */
#include <pthread.h>
static pthread_mutex_t sort_lock = PTHREAD_MUTEX_INITIALIZER;

int32_t eng_sample(eng_sampler *s, const float *logits, int vocab)
{
    if (vocab <= 0)
        return -1;
    int32_t top = eng_argmax(logits, vocab);
    if (top < 0 || s->temperature == 0.0f)
        return top;
    if ((size_t)vocab > s->cap) {
        float *p = rk_realloc(s->scratch, (size_t)vocab * sizeof(float));
        if (p)
            s->scratch = p;
        int *o = rk_realloc(s->order, (size_t)vocab * sizeof(int));
        if (o)
            s->order = o;
        if (!p || !o)
            return -1;
        s->cap = (size_t)vocab;
    }
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
    for (int i = 0; i < vocab; i++)
        s->order[i] = i;
    pthread_mutex_lock(&sort_lock);
    sort_probs = prob;
    qsort(s->order, (size_t)vocab, sizeof(int), cmp_prob);
    pthread_mutex_unlock(&sort_lock);
    if (s->top_k > 0 && s->top_k < n)
        n = s->top_k;
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
