/* Device sampling: eng_decode_sample on the CUDA backend, whose tokens are chosen by kernels
 * next to the logits. Skips where the build has no CUDA or no device answers.
 *
 * Two kinds of checks:
 *   - kernel checks on logits the test chooses (ties, NaN, infinities, vocab sizes that are no
 *     multiple of the block, 256 rows of 256K): white-box, through eng_cuda_sample_rows
 *     (engine_impl.h), the same kernel eng_decode_sample launches;
 *   - the API on models (synthetic shapes, the real stories260K / babyllama105, a 152K-vocab
 *     synthetic Qwen2) against eng_sample on the very logits the device computed.
 * Greedy must match the host exactly. Stochastic rows use the host's uniform and rules but sum
 * in another order (a tree for the softmax denominator, exact 2^-52 fixed point for the
 * cumulative masses, where the host adds floats one by one), so a token may differ where the
 * uniform, or top_p, falls within rounding of a cumulative mass: every disagreeing pick is
 * checked against the exact distribution computed in double (pick_distance), the device's
 * within 1e-5 of the walk's mass and the host's within its float-summation bound. */
#include <math.h>
#include <stdio.h>

#include "../../engine/engine_impl.h"
#include "sample_decode.h"
#include "testutil.h"
#include "gpu_probe.h"

static rk_status cuda_ctor(eng_model *m, eng_backend **out)
{
    /* eng_decode_sample on the device whatever the batch (calls of fewer than 3 rows take the
     * host path by default), unless a test chose otherwise */
    if (setenv("RAGKV_DEVICE_SAMPLE", "1", 0) != 0)
        return rk_error_set(RK_ERR_INTERNAL, "setenv failed");
    return eng_backend_cuda_new(m, 0, out);
}

/* A CUDA backend on a tiny model, or the test skips. *m to close after the backend. */
static eng_backend *gpu(eng_model **m)
{
    cr_assert_eq(eng_model_synth("test-llama", 1, m), RK_OK);
    eng_backend *be = NULL;
    rk_status st = cuda_ctor(*m, &be);
    if (st == RK_ERR_UNSUPPORTED || st == RK_ERR_NOT_IMPLEMENTED || st == RK_ERR_DEVICE || st == RK_ERR_UNAVAILABLE) {
        eng_model_close(*m);
        cr_skip_test("skipped: no CUDA device or backend (%s: %s)", rk_status_name(st), rk_error_msg());
    }
    cr_assert_eq(st, RK_OK, "%s", rk_error_msg());
    return be;
}

static void need_cuda(void)
{
    eng_model *m;
    eng_backend *be = gpu(&m);
    eng_backend_free(be);
    eng_model_close(m);
}

/* xorshift64* */
static uint64_t rng_next(uint64_t *x)
{
    *x ^= *x >> 12;
    *x ^= *x << 25;
    *x ^= *x >> 27;
    return *x * 2685821657736338717ull;
}
static float rng_uniform(uint64_t *x) { return (float)(rng_next(x) >> 40) / 16777216.0f; }
/* roughly normal (sum of 4 uniforms), scaled */
static float rng_logit(uint64_t *x, float scale)
{
    return scale * (rng_uniform(x) + rng_uniform(x) + rng_uniform(x) + rng_uniform(x) - 2.0f);
}

/* The uniform eng_sample's first draw gives for a fresh sampler of this seed. */
static float first_uniform(uint64_t seed)
{
    eng_sampler s;
    eng_sampler_init(&s, 1.0f, 0, 1.0f, seed);
    return eng_sampler_uniform(&s);
}

/* The walk's order for rows with top_k or top_p: best first, lower id on ties. */
struct rank_ent {
    double q;
    int id;
};
static int rank_cmp(const void *a, const void *b)
{
    const struct rank_ent *x = a, *y = b;
    if (x->q != y->q)
        return x->q > y->q ? -1 : 1;
    return x->id < y->id ? -1 : x->id > y->id;
}

/* The distribution eng_sample defines, in double: softmax(l/T), best first, cut to top_k and
 * to the shortest prefix reaching top_p, renormalised. q gets it (0 outside); returns the kept
 * count. *margin: distance of the nucleus's mass from top_p at its boundary (a test whose
 * boundary sits within rounding of top_p would test rounding, not sampling). */
static int expected(const float *l, int V, float T, int k, float p, double *q, double *margin)
{
    double mx = -INFINITY, sum = 0;
    for (int i = 0; i < V; i++)
        mx = fmax(mx, (double)l[i] / T);
    for (int i = 0; i < V; i++)
        sum += exp((double)l[i] / T - mx);
    struct rank_ent *ord = malloc((size_t)V * sizeof(*ord));
    cr_assert_not_null(ord);
    for (int i = 0; i < V; i++) {
        q[i] = exp((double)l[i] / T - mx) / sum;
        ord[i] = (struct rank_ent){q[i], i};
    }
    qsort(ord, (size_t)V, sizeof(*ord), rank_cmp);
    int keep = k > 0 && k < V ? k : V;
    double mass = 0;
    *margin = 1;
    for (int i = 0; i < keep; i++) {
        mass += ord[i].q;
        if (p < 1.0f) {
            double d = fabs(mass - (double)p);
            if (d < *margin)
                *margin = d;
            if (mass >= p) {
                keep = i + 1;
                break;
            }
        }
    }
    double kept = 0;
    for (int i = 0; i < keep; i++)
        kept += ord[i].q;
    memset(q, 0, (size_t)V * sizeof(double));
    for (int i = 0; i < keep; i++)
        q[ord[i].id] = ord[i].q / kept;
    free(ord);
    return keep;
}

/* How far token tok is from being the pick of uniform r under that distribution: rows with
 * top_k or top_p walk the kept ids best first (lower id on ties), plain rows walk the ids in
 * id order. tok covers [lo, hi) of the walk's cumulative mass; the distance is 0 when r lies
 * there, else how far r is from that interval (a token outside the kept set sits at 1). Host
 * and device compute the probabilities and their sums in float and in different orders, so on
 * flat rows of a large vocabulary their picks can be neighbours in the walk: a distance of
 * about 1e-5 is rounding, a wrong sampler is off by far more. */
static double pick_distance(const float *l, int V, float T, int k, float p, float r, int tok)
{
    double *q = malloc((size_t)V * sizeof(double)), margin, lo = 0;
    cr_assert_not_null(q);
    expected(l, V, T, k, p, q, &margin);
    if (k <= 0 && !(p < 1.0f)) { /* id order, everything kept */
        for (int i = 0; i < tok; i++)
            lo += q[i];
    } else if (q[tok] > 0) {
        for (int j = 0; j < V; j++)
            if (q[j] > q[tok] || (q[j] == q[tok] && j < tok))
                lo += q[j];
    } else {
        lo = 1.0;
    }
    double hi = lo + q[tok], x = (double)r;
    free(q);
    return x >= lo && x < hi ? 0.0 : x < lo ? lo - x : x - hi;
}
/* The device's pick: its probabilities are floats within a few ulps of q, their cumulative
 * sums exact (fixed point) and its softmax denominator a tree sum (relative error about
 * log2(V) 2^-24), so r lies within about 1e-6 of its interval; 1e-5 of the walk's mass. */
#define PICK_TOL_DEVICE 1e-5
/* The host's pick (eng_sample, the reference the device is compared with, not the code under
 * test): it adds V floats one at a time, whose rounding is bounded by V 2^-24 of the mass
 * (the recursive-summation bound; on the H100 run of 2026-12-07 a 128K-token row's host pick
 * was 1.0e-4 off). */
static double pick_tol_host(int V) { return fmax(PICK_TOL_DEVICE, (double)V * 0x1p-24); }

static const int vocabs[] = {1, 2, 31, 1000, 1023, 1024, 1025, 4097, 32000, 128256, 262144};
#define N_VOCABS (sizeof(vocabs) / sizeof(vocabs[0]))

Test(gpu_sample, greedy_is_exactly_host_argmax)
{
    eng_model *m;
    eng_backend *be = gpu(&m);
    enum { R = 9 };
    uint64_t x = 12345;
    for (size_t vi = 0; vi < N_VOCABS; vi++) {
        int V = vocabs[vi];
        float *l = malloc((size_t)R * V * sizeof(float));
        cr_assert_not_null(l);
        for (int i = 0; i < V; i++) {
            float *r = l;
            r[0 * V + i] = rng_logit(&x, 5.0f);                   /* plain */
            r[1 * V + i] = 0.25f;                                 /* all tied: id 0 */
            r[2 * V + i] = rng_logit(&x, 5.0f);                   /* a tied maximum, below */
            r[3 * V + i] = NAN;                                   /* all NaN: -1 */
            r[4 * V + i] = i % 7 == 3 ? rng_logit(&x, 1.0f) : NAN; /* mostly NaN */
            r[5 * V + i] = -INFINITY;                             /* all -inf: id 0 */
            r[6 * V + i] = rng_logit(&x, 1.0f);                   /* +inf twice, below */
            r[7 * V + i] = i % 3 ? -1.0f - (float)(i % 5) : (i % 2 ? 0.0f : -0.0f); /* +-0 tie */
            r[8 * V + i] = (float)(rng_next(&x) % 4) * 0.5f;      /* many exact ties */
        }
        if (V > 2) {
            int a = (int)(rng_next(&x) % (uint64_t)V), b = (int)(rng_next(&x) % (uint64_t)V);
            l[2 * V + a] = 100.0f, l[2 * V + b] = 100.0f;
            l[6 * V + b] = INFINITY, l[6 * V + a] = INFINITY;
        }
        eng_sample_row rows[R];
        for (int r = 0; r < R; r++)
            rows[r] = (eng_sample_row){0.0f, 0, 1.0f, 0.5f};
        int32_t out[R];
        cr_assert_eq(eng_cuda_sample_rows(be, l, V, R, rows, out), RK_OK, "%s", rk_error_msg());
        for (int r = 0; r < R; r++)
            cr_assert_eq(out[r], eng_argmax(l + (size_t)r * V, V), "vocab %d row %d: device %d, host %d", V, r, out[r],
                         eng_argmax(l + (size_t)r * V, V));
        /* stochastic settings on the all-NaN row still give -1 (the host gives -1 too) */
        for (int r = 0; r < R; r++)
            rows[r] = (eng_sample_row){0.8f, r % 2 ? 5 : 0, r % 3 ? 0.9f : 1.0f, 0.3f};
        cr_assert_eq(eng_cuda_sample_rows(be, l, V, R, rows, out), RK_OK, "%s", rk_error_msg());
        cr_assert_eq(out[3], -1, "vocab %d: all-NaN row gave %d", V, out[3]);
        if (V > 2)
            cr_assert_eq(out[6], eng_argmax(l + 6 * (size_t)V, V), "vocab %d: an infinite top is taken", V);
        for (int r = 0; r < R; r++) {
            if (eng_argmax(l + (size_t)r * V, V) < 0)
                cr_assert_eq(out[r], -1, "vocab %d row %d: all NaN gave %d", V, r, out[r]);
            else
                cr_assert(out[r] >= 0 && out[r] < V && !isnan(l[(size_t)r * V + out[r]]),
                          "vocab %d row %d: token %d", V, r, out[r]);
        }
        free(l);
    }
    eng_backend_free(be);
    eng_model_close(m);
}

Test(gpu_sample, top_k_1_and_tiny_top_p_are_greedy)
{
    eng_model *m;
    eng_backend *be = gpu(&m);
    enum { R = 16 };
    uint64_t x = 99;
    const int vs[] = {1025, 32000, 128256};
    for (size_t vi = 0; vi < 3; vi++) {
        int V = vs[vi];
        float *l = malloc((size_t)R * V * sizeof(float));
        for (size_t i = 0; i < (size_t)R * V; i++)
            l[i] = rng_logit(&x, 6.0f);
        eng_sample_row rows[R];
        for (int r = 0; r < R; r++)
            rows[r] = r % 2 ? (eng_sample_row){0.9f, 1, 1.0f, rng_uniform(&x)}
                            : (eng_sample_row){1.3f, 0, 1e-7f, rng_uniform(&x)};
        int32_t out[R];
        cr_assert_eq(eng_cuda_sample_rows(be, l, V, R, rows, out), RK_OK, "%s", rk_error_msg());
        for (int r = 0; r < R; r++)
            cr_assert_eq(out[r], eng_argmax(l + (size_t)r * V, V), "vocab %d row %d (%s)", V, r,
                         r % 2 ? "top_k 1" : "top_p 1e-7");
        free(l);
    }
    eng_backend_free(be);
    eng_model_close(m);
}

/* Random rows under every kind of setting: device vs eng_sample with the same uniform. */
Test(gpu_sample, stochastic_rows_agree_with_host)
{
    eng_model *m;
    eng_backend *be = gpu(&m);
    static const struct {
        float t;
        int k;
        float p;
    } set[] = {{1.0f, 0, 1.0f}, {0.7f, 40, 1.0f}, {1.0f, 0, 0.9f}, {0.8f, 20, 0.8f},
               {1.5f, 1000, 0.95f}, {0.5f, 0, 0.5f}, {2.0f, 0, 0.99f}, {1.0f, 3, 1.0f}};
    enum { NSET = sizeof(set) / sizeof(set[0]), PER = 12 };
    const int vs[] = {1000, 1025, 32000, 128256};
    uint64_t x = 4242;
    size_t total = 0, same = 0;
    for (size_t vi = 0; vi < 4; vi++) {
        int V = vs[vi];
        size_t R = NSET * PER;
        float *l = malloc(R * (size_t)V * sizeof(float));
        eng_sample_row *rows = malloc(R * sizeof(*rows));
        int32_t *out = malloc(R * sizeof(int32_t));
        cr_assert(l && rows && out);
        for (size_t r = 0; r < R; r++) {
            float scale = 2.0f + (float)(r % 5) * 2.0f; /* flat to peaked */
            for (int i = 0; i < V; i++)
                l[r * V + i] = rng_logit(&x, scale);
            rows[r] = (eng_sample_row){set[r % NSET].t, set[r % NSET].k, set[r % NSET].p, first_uniform(1 + r + 1000 * vi)};
        }
        cr_assert_eq(eng_cuda_sample_rows(be, l, V, R, rows, out), RK_OK, "%s", rk_error_msg());
        for (size_t r = 0; r < R; r++) {
            eng_sampler s;
            eng_sampler_init(&s, rows[r].temperature, rows[r].top_k, rows[r].top_p, 1 + r + 1000 * vi);
            int32_t h = eng_sample(&s, l + r * V, V);
            eng_sampler_free(&s);
            cr_assert(out[r] >= 0 && out[r] < V);
            total++;
            same += h == out[r];
            if (h != out[r]) {
                const float *lr = l + r * V;
                const eng_sample_row *sr = &rows[r];
                double dd = pick_distance(lr, V, sr->temperature, sr->top_k, sr->top_p, sr->r, out[r]);
                double dh = pick_distance(lr, V, sr->temperature, sr->top_k, sr->top_p, sr->r, h);
                fprintf(stderr, "gpu_sample: vocab %d row %zu (T %g k %d p %g): device %d host %d, off the exact "
                        "pick by %.2g and %.2g of the mass\n", V, r, (double)sr->temperature, sr->top_k,
                        (double)sr->top_p, out[r], h, dd, dh);
                cr_assert_leq(dd, PICK_TOL_DEVICE, "vocab %d row %zu: the device's pick is off by %g", V, r, dd);
                cr_assert_leq(dh, pick_tol_host(V), "vocab %d row %zu: the host's pick is off by %g", V, r, dh);
            }
        }
        free(l);
        free(rows);
        free(out);
    }
    fprintf(stderr, "gpu_sample: random rows: %zu of %zu agree with eng_sample (the rest within rounding)\n", same,
            total);
    eng_backend_free(be);
    eng_model_close(m);
}

Test(gpu_sample, frequencies_follow_the_restricted_softmax)
{
    eng_model *m;
    eng_backend *be = gpu(&m);
    enum { N = 40000 };
    static const struct {
        int V;
        float t;
        int k;
        float p;
    } cases[] = {{64, 1.0f, 0, 1.0f}, {64, 0.7f, 10, 1.0f}, {64, 1.3f, 0, 0.8f}, {64, 1.0f, 20, 0.9f},
                 {1500, 1.0f, 50, 1.0f}, {1500, 0.9f, 0, 0.7f}};
    for (size_t ci = 0; ci < sizeof(cases) / sizeof(cases[0]); ci++) {
        int V = cases[ci].V;
        float *row = malloc((size_t)V * sizeof(float));
        for (int i = 0; i < V; i++) /* a fixed, uneven row */
            row[i] = 2.5f * sinf(1.7f * (float)i) + 0.002f * (float)(i % 97);
        double *q = malloc((size_t)V * sizeof(double)), margin;
        int kept = expected(row, V, cases[ci].t, cases[ci].k, cases[ci].p, q, &margin);
        cr_assert_gt(margin, 1e-4, "case %zu: the nucleus boundary is within %g of top_p", ci, margin);
        float *l = malloc((size_t)N * V * sizeof(float));
        eng_sample_row *rows = malloc(N * sizeof(*rows));
        int32_t *out = malloc(N * sizeof(int32_t));
        for (int n = 0; n < N; n++) {
            memcpy(l + (size_t)n * V, row, (size_t)V * sizeof(float));
            rows[n] = (eng_sample_row){cases[ci].t, cases[ci].k, cases[ci].p, first_uniform(77 + (uint64_t)n)};
        }
        cr_assert_eq(eng_cuda_sample_rows(be, l, V, N, rows, out), RK_OK, "%s", rk_error_msg());
        long *cnt = calloc((size_t)V, sizeof(long));
        for (int n = 0; n < N; n++) {
            cr_assert(out[n] >= 0 && out[n] < V);
            cnt[out[n]]++;
        }
        double chi2 = 0;
        for (int i = 0; i < V; i++) {
            if (q[i] == 0) {
                cr_assert_eq(cnt[i], 0, "case %zu: token %d is outside the kept set but drawn %ld times", ci, i, cnt[i]);
                continue;
            }
            double e = N * q[i];
            chi2 += ((double)cnt[i] - e) * ((double)cnt[i] - e) / e;
        }
        /* kept - 1 degrees of freedom; mean dof, sd sqrt(2 dof): 6 sd is p < 1e-6 or so */
        double dof = kept - 1, bound = dof + 6.0 * sqrt(2.0 * (dof > 1 ? dof : 1)) + 6.0;
        fprintf(stderr, "gpu_sample: case %zu (V %d T %g k %d p %g): %d kept, chi2 %.1f (bound %.1f)\n", ci, V,
                (double)cases[ci].t, cases[ci].k, (double)cases[ci].p, kept, chi2, bound);
        cr_assert_lt(chi2, bound, "case %zu: chi2 %.1f over %d kept tokens", ci, chi2, kept);
        free(cnt);
        free(row);
        free(q);
        free(l);
        free(rows);
        free(out);
    }
    eng_backend_free(be);
    eng_model_close(m);
}

Test(gpu_sample, batch_256_of_vocab_256k)
{
    eng_model *m;
    eng_backend *be = gpu(&m);
    enum { R = 256, V = 262144 };
    float *l = malloc((size_t)R * V * sizeof(float));
    eng_sample_row rows[R];
    int32_t out[R];
    cr_assert_not_null(l);
    uint64_t x = 7;
    for (size_t i = 0; i < (size_t)R * V; i++)
        l[i] = rng_logit(&x, 8.0f);
    for (int r = 0; r < R; r++)
        rows[r] = r % 4 == 0 ? (eng_sample_row){0.0f, 0, 1.0f, 0.0f}
                             : (eng_sample_row){0.5f + 0.01f * (float)r, r % 3 ? 50 : 0, r % 2 ? 0.9f : 1.0f,
                                                first_uniform(500 + (uint64_t)r)};
    cr_assert_eq(eng_cuda_sample_rows(be, l, V, R, rows, out), RK_OK, "%s", rk_error_msg());
    size_t same = 0, stoch = 0;
    for (int r = 0; r < R; r++) {
        if (rows[r].temperature == 0.0f) {
            cr_assert_eq(out[r], eng_argmax(l + (size_t)r * V, V), "row %d", r);
            continue;
        }
        eng_sampler s;
        eng_sampler_init(&s, rows[r].temperature, rows[r].top_k, rows[r].top_p, 500 + (uint64_t)r);
        stoch++;
        int32_t h = eng_sample(&s, l + (size_t)r * V, V);
        eng_sampler_free(&s);
        if (h == out[r]) {
            same++;
            continue;
        }
        const eng_sample_row *sr = &rows[r];
        double dd = pick_distance(l + (size_t)r * V, V, sr->temperature, sr->top_k, sr->top_p, sr->r, out[r]);
        double dh = pick_distance(l + (size_t)r * V, V, sr->temperature, sr->top_k, sr->top_p, sr->r, h);
        cr_assert_leq(dd, PICK_TOL_DEVICE, "row %d: the device's pick (%d) is off by %g", r, out[r], dd);
        cr_assert_leq(dh, pick_tol_host(V), "row %d: the host's pick (%d) is off by %g", r, h, dh);
    }
    fprintf(stderr, "gpu_sample: vocab %d: %zu of %zu stochastic rows agree with eng_sample (the rest within "
            "rounding)\n", V, same, stoch);
    free(l);
    eng_backend_free(be);
    eng_model_close(m);
}

/* ---- the API on models ------------------------------------------------------------------- */

static void agree_on(const char *model, int steps, sd_counts *c)
{
    sd_agree(cuda_ctor, model, steps, c);
}

/* Every model of the suite in the current storage mode (RAGKV_CUDA_MATH). */
static void agree_all(int steps)
{
    sd_counts c = {0};
    const char *synth[] = {"test-llama", "test-qwen2", "test-mistral", "demo"};
    for (size_t i = 0; i < 4; i++)
        agree_on(synth[i], steps, &c);
    const char *real[] = {"stories260K.bin", "babyllama105.bin"};
    for (size_t i = 0; i < 2; i++) {
        const char *p = rk_test_model_path(real[i]);
        if (p)
            agree_on(p, steps, &c);
        else
            fprintf(stderr, "gpu_sample: skipped %s: no real model\n", real[i]);
    }
    fprintf(stderr, "gpu_sample: greedy %zu of %zu, stochastic %zu of %zu agree with eng_sample\n", c.greedy_same,
            c.greedy, c.stoch_same, c.stoch);
    cr_assert_gt(c.greedy, 0);
    cr_assert_eq(c.greedy_same, c.greedy, "greedy: %zu of %zu rows equal eng_argmax", c.greedy_same, c.greedy);
    cr_assert_geq(c.stoch_same * 100, c.stoch * 99, "stochastic: %zu of %zu", c.stoch_same, c.stoch);
}

Test(gpu_sample, decode_tokens_agree_with_host_fp32)
{
    need_cuda();
    cr_assert_eq(setenv("RAGKV_CUDA_MATH", "fp32", 1), 0);
    agree_all(120);
}

Test(gpu_sample, decode_tokens_agree_with_host_fp32_without_graphs)
{
    need_cuda();
    cr_assert_eq(setenv("RAGKV_CUDA_MATH", "fp32", 1), 0);
    cr_assert_eq(setenv("RAGKV_CUDA_GRAPH", "0", 1), 0);
    agree_all(60);
}

Test(gpu_sample, decode_tokens_agree_with_host_bf16)
{
    need_cuda();
    cr_assert_eq(setenv("RAGKV_CUDA_MATH", "bf16", 1), 0);
    agree_all(60);
}

Test(gpu_sample, large_vocab_model)
{
    need_cuda();
    cr_assert_eq(setenv("RAGKV_CUDA_MATH", "bf16", 1), 0);
    sd_counts c = {0};
    agree_on("qwen2-0.5b", 24, &c); /* 151936 ids, random weights: flat rows, wide nuclei */
    fprintf(stderr, "gpu_sample: qwen2-0.5b: greedy %zu of %zu, stochastic %zu of %zu\n", c.greedy_same, c.greedy,
            c.stoch_same, c.stoch);
    cr_assert_eq(c.greedy_same, c.greedy);
    cr_assert_geq(c.stoch_same * 100, c.stoch * 99, "stochastic: %zu of %zu", c.stoch_same, c.stoch);
}

/* Greedy: the API's tokens equal eng_decode + eng_sample on twin sequences, also when the
 * path switches every step and when the logits are not returned (exact). */
Test(gpu_sample, greedy_twins_exact)
{
    need_cuda();
    cr_assert_eq(setenv("RAGKV_CUDA_MATH", "fp32", 1), 0);
    sd_twins(cuda_ctor, "test-llama", 40, false, true);
    sd_twins(cuda_ctor, "test-llama", 40, true, true);
    const char *p = rk_test_model_path("stories260K.bin");
    if (p)
        sd_twins(cuda_ctor, p, 60, false, true);
}

/* RAGKV_DEVICE_SAMPLE=0: the host path on the CUDA backend, exact for every sampler. */
Test(gpu_sample, host_path_by_env_is_exact)
{
    need_cuda();
    cr_assert_eq(setenv("RAGKV_CUDA_MATH", "fp32", 1), 0);
    cr_assert_eq(setenv("RAGKV_DEVICE_SAMPLE", "0", 1), 0);
    sd_twins(cuda_ctor, "test-llama", 30, false, false);
    sd_twins(cuda_ctor, "test-llama", 30, true, false);
}

Test(gpu_sample, bad_arguments_rejected)
{
    need_cuda();
    sd_bad_args(cuda_ctor, "test-llama");
}

/* Without a CUDA device the whole file skips at once. */
RK_TEST_MAIN_NEEDS_CUDA("engine_test_gpu_sample")
