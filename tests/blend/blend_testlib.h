/* blend_testlib.h — helpers shared by the blend tests (test-only, not API). */
#ifndef RAGKV_BLEND_TESTLIB_H
#define RAGKV_BLEND_TESTLIB_H

#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>

#include "ragkv/engine.h"
#include "testutil.h"

/* The real stories260K model on a 2-thread CPU backend; false (nothing opened) when the test
 * models are absent. */
static inline bool blt_open_stories(eng_model **m, eng_backend **be)
{
    const char *path = rk_test_model_path("stories260K.bin");
    if (!path)
        return false;
    cr_assert_eq(eng_model_open(path, m), RK_OK, "%s", rk_error_msg());
    cr_assert_eq(eng_backend_cpu_new(*m, 2, be), RK_OK, "%s", rk_error_msg());
    return true;
}

/* Largest absolute difference over the largest magnitude of a: a relative max error. */
static inline double max_rel(const float *a, const float *b, size_t n)
{
    double num = 0, den = 1e-30;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (d > num)
            num = d;
        if (fabs((double)a[i]) > den)
            den = fabs((double)a[i]);
    }
    return num / den;
}

/* The KV of slots 0..n-1 of s (caller frees with free). */
static inline float *export_all_kv(eng_model *model, eng_seq *s, size_t n)
{
    float *kv = malloc(eng_kv_floats(model, n) * sizeof(float));
    cr_assert_eq(eng_kv_export(s, 0, n, kv), RK_OK, "%s", rk_error_msg());
    return kv;
}

#endif
