/* The Hopper warpgroup product of engine/cuda/wgmma.cuh (white-box, through
 * eng_cuda_wgmma_check in engine_impl.h): the shared-memory layout of its operands, the matrix
 * descriptors, the accumulate flag over several k steps and the accumulator's layout per
 * thread, against products computed here in double. A flash kernel on wgmma will be built on
 * exactly these pieces. Skips where the build has no CUDA or no device answers. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../engine/engine_impl.h"
#include "gpu_probe.h"
#include "ragkv/fp16.h"
#include "testutil.h"

/* c = a b^T for a, b (64 x k) of seeded values in [-1, 1] (or, with ramp, a(r, i) = r + i/256
 * and b(j, i) = 1 if i == j % k else 0, so that column j of c is a's column j % k: any mix-up
 * of rows, columns or k steps shows as a wrong value, not as noise), checked against double. */
static void product_close(size_t k, bool ramp)
{
    uint16_t *a = malloc(64 * k * sizeof(uint16_t)), *b = malloc(64 * k * sizeof(uint16_t));
    float *c = malloc(64 * 64 * sizeof(float));
    cr_assert(a && b && c);
    uint64_t rng = 0x9e3779b97f4a7c15ull ^ k;
    for (size_t i = 0; i < 64 * k; i++) {
        rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
        float va = (float)((rng >> 11) % 2001) / 1000.0f - 1.0f;
        rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
        float vb = (float)((rng >> 11) % 2001) / 1000.0f - 1.0f;
        if (ramp) {
            size_t r = i / k, col = i % k;
            va = (float)(r % 8) + (float)col / 256.0f; /* exact in bf16: 8 bits of mantissa */
            vb = col == r % k ? 1.0f : 0.0f;
        }
        a[i] = rk_f32_to_bf16(va);
        b[i] = rk_f32_to_bf16(vb);
    }
    rk_status st = eng_cuda_wgmma_check(0, k, a, b, c);
    if (st == RK_ERR_UNSUPPORTED && (strstr(rk_error_msg(), "no CUDA support") || strstr(rk_error_msg(), "capability")))
        cr_skip_test("%s", rk_error_msg()); /* no CUDA here, or not a Hopper (9.0) device */
    cr_assert_eq(st, RK_OK, "%s: %s", rk_status_name(st), rk_error_msg());
    double worst = 0.0;
    for (int r = 0; r < 64; r++)
        for (int j = 0; j < 64; j++) {
            double want = 0.0, mag = 0.0;
            for (size_t i = 0; i < k; i++) {
                double p = (double)rk_bf16_to_f32(a[r * k + i]) * (double)rk_bf16_to_f32(b[j * k + i]);
                want += p;
                mag += fabs(p);
            }
            double err = fabs((double)c[r * 64 + j] - want);
            cr_assert(err <= 1e-5 * mag + 1e-6, "k %zu%s: c[%d][%d] = %.7g, want %.7g", k, ramp ? " (ramp)" : "",
                      r, j, (double)c[r * 64 + j], want);
            worst = err > worst ? err : worst;
        }
    fprintf(stderr, "wgmma 64x64x%zu%s: largest error %.3g\n", k, ramp ? " (ramp)" : "", worst);
    free(a);
    free(b);
    free(c);
}

Test(gpu_wgmma, one_k_step) { product_close(16, false); }
Test(gpu_wgmma, eight_k_steps) { product_close(128, false); }
Test(gpu_wgmma, sixteen_k_steps) { product_close(256, false); }
Test(gpu_wgmma, layout_by_ramp_one_step) { product_close(16, true); }
Test(gpu_wgmma, layout_by_ramp_many_steps) { product_close(64, true); }

Test(gpu_wgmma, bad_k_refused)
{
    uint16_t a[64 * 8] = {0}, b[64 * 8] = {0};
    float c[64 * 64];
    rk_status st = eng_cuda_wgmma_check(0, 8, a, b, c); /* checked before anything else */
    if (st == RK_ERR_UNSUPPORTED)
        cr_skip_test("no CUDA in this build");
    cr_assert_eq(st, RK_ERR_INVALID, "%s", rk_error_msg());
}

RK_TEST_MAIN_NEEDS_CUDA("engine_test_gpu_wgmma")
