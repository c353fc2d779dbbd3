/* Sampling: greedy, temperature, top-k, top-p, and determinism of the seeded stream. */
#include <criterion/criterion.h>
#include <math.h>
#include <string.h>

#include "ragkv/engine.h"

static const float logits[8] = {1.0f, 3.0f, 2.5f, -1.0f, 3.0f, 0.0f, 2.9f, -5.0f};

Test(sampling, greedy_and_argmax)
{
    cr_expect_eq(eng_argmax(logits, 8), 1, "ties go to the lowest id");
    float withnan[3] = {NAN, 1.0f, 0.5f};
    cr_expect_eq(eng_argmax(withnan, 3), 1);
    float allnan[2] = {NAN, NAN};
    cr_expect_eq(eng_argmax(allnan, 2), -1);
    eng_sampler s;
    eng_sampler_init(&s, 0.0f, 0, 1.0f, 1);
    for (int i = 0; i < 10; i++)
        cr_expect_eq(eng_sample(&s, logits, 8), 1);
    eng_sampler_free(&s);
}

static void draw(float temp, int k, float p, uint64_t seed, int32_t *out, int n)
{
    eng_sampler s;
    eng_sampler_init(&s, temp, k, p, seed);
    for (int i = 0; i < n; i++)
        out[i] = eng_sample(&s, logits, 8);
    eng_sampler_free(&s);
}

Test(sampling, seeded_determinism)
{
    int32_t a[200], b[200], c[200];
    draw(1.0f, 0, 1.0f, 42, a, 200);
    draw(1.0f, 0, 1.0f, 42, b, 200);
    draw(1.0f, 0, 1.0f, 43, c, 200);
    cr_expect(memcmp(a, b, sizeof(a)) == 0, "same seed, same tokens");
    cr_expect(memcmp(a, c, sizeof(a)) != 0, "different seed, different tokens");
    draw(0.8f, 3, 0.9f, 7, a, 200);
    draw(0.8f, 3, 0.9f, 7, b, 200);
    cr_expect(memcmp(a, b, sizeof(a)) == 0);
    /* the stream itself is PCG32: pinned first values for seed 42 would change only with
     * the algorithm; check its range and spread instead of a magic number */
    eng_sampler s;
    eng_sampler_init(&s, 1.0f, 0, 1.0f, 42);
    double sum = 0;
    for (int i = 0; i < 10000; i++) {
        float u = eng_sampler_uniform(&s);
        cr_assert(u >= 0.0f && u < 1.0f);
        sum += u;
    }
    cr_expect(fabs(sum / 10000 - 0.5) < 0.02, "mean %g", sum / 10000);
    eng_sampler_free(&s);
}

Test(sampling, temperature_frequencies_follow_softmax)
{
    enum { N = 20000 };
    static int32_t t[N];
    draw(1.0f, 0, 1.0f, 3, t, N);
    double z = 0, p[8];
    for (int i = 0; i < 8; i++)
        z += exp(logits[i]);
    int count[8] = {0};
    for (int i = 0; i < N; i++) {
        cr_assert(t[i] >= 0 && t[i] < 8);
        count[t[i]]++;
    }
    for (int i = 0; i < 8; i++) {
        p[i] = exp(logits[i]) / z;
        double f = (double)count[i] / N, sd = sqrt(p[i] * (1 - p[i]) / N);
        cr_expect(fabs(f - p[i]) < 5 * sd + 1e-4, "token %d: frequency %g, softmax %g", i, f, p[i]);
    }
}

Test(sampling, top_k_and_top_p_restrict_candidates)
{
    enum { N = 3000 };
    static int32_t t[N];
    draw(1.0f, 2, 1.0f, 5, t, N);
    int seen[8] = {0};
    for (int i = 0; i < N; i++)
        seen[t[i]]++;
    cr_expect(seen[1] > 0 && seen[4] > 0, "the top two (ids 1 and 4, tied) are drawn");
    for (int i = 0; i < 8; i++)
        if (i != 1 && i != 4)
            cr_expect_eq(seen[i], 0, "top-k 2 drew token %d", i);
    /* top-p 0.5: ids 1 and 4 carry ~0.27 each, so they make the nucleus */
    draw(1.0f, 0, 0.5f, 5, t, N);
    memset(seen, 0, sizeof(seen));
    for (int i = 0; i < N; i++)
        seen[t[i]]++;
    for (int i = 0; i < 8; i++)
        if (i != 1 && i != 4)
            cr_expect_eq(seen[i], 0, "top-p 0.5 drew token %d", i);
    /* top-k 1 is greedy */
    draw(2.0f, 1, 1.0f, 5, t, 100);
    for (int i = 0; i < 100; i++)
        cr_expect_eq(t[i], 1);
    /* a tiny top-p is greedy too */
    draw(1.0f, 0, 0.01f, 5, t, 100);
    for (int i = 0; i < 100; i++)
        cr_expect_eq(t[i], 1);
}
