/* test_eval.c — codec_eval_many, the form of docs/codec.md's tables over several seeds: its
 * means are those of separate codec_eval_run calls on the same sources, its JSON holds them,
 * and a source that cannot be made stops it with that source's error. */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "codec_testlib.h"
#include "ragkv/codec_eval.h"

#define ROWS "L1 chunk-tables" /* and q8, which codec_eval_run always keeps */

struct synth_ctx {
    codec_shape s;
    uint64_t seed0;
    int fail_at; /* source index that fails, -1: none */
};

static rk_status make_synth(void *ctx, int i, codec_kv_source *out)
{
    struct synth_ctx *c = ctx;
    if (i == c->fail_at)
        return rk_error_set(RK_ERR_IO, "source %d unavailable", i);
    return codec_kv_source_synthetic(&c->s, c->seed0 + (uint64_t)i, out);
}

/* The value after `key` in a JSON text's line that holds `label`. */
static double json_field(const char *text, const char *label, const char *key)
{
    const char *l = strstr(text, label);
    cr_assert_not_null(l, "no row %s", label);
    const char *k = strstr(l, key);
    cr_assert_not_null(k, "no %s in row %s", key, label);
    double v = 0;
    cr_assert_eq(sscanf(k + strlen(key), "%lf", &v), 1);
    return v;
}

Test(eval, means_over_sources_equal_the_separate_runs)
{
    struct synth_ctx c = {{2, 64, 2, 8}, 5, -1};
    enum { N = 3 };
    codec_eval_row rows[N][8];
    int got[N];
    FILE *sink = fopen("/dev/null", "w");
    cr_assert_not_null(sink);
    for (int k = 0; k < N; k++) {
        codec_kv_source src;
        cr_assert_eq(make_synth(&c, k, &src), RK_OK);
        codec_eval_opts o = {.threads = 1, .rows = ROWS, .rows_out = rows[k], .max_rows = 8, .n_rows = &got[k]};
        cr_assert_eq(codec_eval_run(&src, &o, sink), RK_OK, "%s", rk_error_msg());
        codec_kv_source_free(&src);
        cr_assert_eq(got[k], 2, "rows: q8 and " ROWS);
        cr_assert_str_eq(rows[k][0].label, "q8");
        cr_assert(rows[k][1].ratio_q8 > 1.0, "the cachegen row is smaller than q8");
    }
    /* the three sources differ, so the means are not any one of them */
    cr_assert(rows[0][1].bytes != rows[1][1].bytes || rows[1][1].bytes != rows[2][1].bytes);
    char json[] = "/tmp/ragkv-eval-XXXXXX";
    int fd = mkstemp(json);
    cr_assert(fd >= 0);
    close(fd);
    codec_eval_opts o = {.threads = 1, .rows = ROWS, .json_path = json};
    cr_assert_eq(codec_eval_many(make_synth, &c, N, &o, sink), RK_OK, "%s", rk_error_msg());
    fclose(sink);
    FILE *f = fopen(json, "r");
    cr_assert_not_null(f);
    char text[4096] = {0};
    size_t n = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    unlink(json);
    cr_assert(n > 0);
    cr_assert(strstr(text, "\"sources\":3"), "%s", text);
    double q8 = 0, cg = 0, l2 = 0;
    for (int k = 0; k < N; k++) {
        q8 += rows[k][0].bits / N;
        cg += rows[k][1].bits / N;
        l2 += rows[k][1].rel_l2 / N;
    }
    double bits = json_field(text, "\"cachegen L1 chunk-tables\"", "\"bits_per_value\":");
    cr_expect(fabs(bits - cg) < 1e-4, "mean bits %g, separate runs %g", bits, cg);
    cr_expect(fabs(json_field(text, "\"q8\"", "\"bits_per_value\":") - q8) < 1e-4);
    cr_expect(fabs(json_field(text, "\"cachegen L1 chunk-tables\"", "\"ratio_q8\":") - q8 / cg) < 1e-3,
              "x q8 is q8's mean bits over the row's");
    cr_expect(fabs(json_field(text, "\"cachegen L1 chunk-tables\"", "\"rel_l2\":") - l2) < 1e-5);
    cr_expect(!strstr(text, "\"kl\""), "synthetic sources have no fidelity to average");
}

Test(eval, a_source_that_cannot_be_made_stops_the_runs)
{
    struct synth_ctx c = {{2, 32, 2, 8}, 9, 1};
    FILE *sink = fopen("/dev/null", "w");
    cr_assert_not_null(sink);
    codec_eval_opts o = {.threads = 1, .rows = ROWS};
    cr_expect_eq(codec_eval_many(make_synth, &c, 3, &o, sink), RK_ERR_IO);
    cr_expect_eq(codec_eval_many(make_synth, &c, 0, &o, sink), RK_ERR_INVALID);
    fclose(sink);
}

/* codec_weights_combine: the geometric mean of the measurements, over the positive ones (0
 * where a channel is constant on every set), and a bad measurement refused. */
Test(eval, weights_combined_by_geometric_mean)
{
    const float a[4] = {1.0f, 4.0f, 0.0f, 0.0f}, b[4] = {4.0f, 1.0f, 9.0f, 0.0f}, c[4] = {16.0f, 16.0f, 0.0f, 0.0f};
    const float *w[3] = {a, b, c};
    float out[4] = {-1, -1, -1, -1};
    cr_assert_eq(codec_weights_combine(w, 3, 4, out), RK_OK, "%s", rk_error_msg());
    cr_expect_float_eq(out[0], 4.0f, 1e-5f); /* (1 * 4 * 16)^(1/3) */
    cr_expect_float_eq(out[1], 4.0f, 1e-5f);
    cr_expect_float_eq(out[2], 9.0f, 1e-5f, "the one set where the channel varies");
    cr_expect_eq(out[3], 0.0f);
    cr_assert_eq(codec_weights_combine(w, 1, 4, out), RK_OK);
    cr_expect(out[0] == 1.0f && out[1] == 4.0f && out[2] == 0.0f, "one measurement is itself");
    const float bad[4] = {1.0f, -2.0f, 1.0f, 1.0f}, inf[4] = {1.0f, INFINITY, 1.0f, 1.0f};
    const float *wb[2] = {a, bad}, *wi[2] = {inf, a};
    float keep[4] = {7, 7, 7, 7};
    cr_expect_eq(codec_weights_combine(wb, 2, 4, keep), RK_ERR_INVALID);
    cr_expect_eq(codec_weights_combine(wi, 2, 4, keep), RK_ERR_INVALID);
    cr_expect(keep[0] == 7 && keep[3] == 7, "out unchanged on a refusal");
    cr_expect_eq(codec_weights_combine(w, 0, 4, keep), RK_ERR_INVALID);
}
