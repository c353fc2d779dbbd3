/* blend/blend_math.c: selection, Cache-Craft budgets and fidelity, against values worked out
 * by hand. */
#include <criterion/criterion.h>
#include <math.h>

#include "ragkv/blend_math.h"

Test(select, count_rounds_up_and_clamps)
{
    cr_expect_eq(bl_select_count(20, 0.15f), 3);
    cr_expect_eq(bl_select_count(21, 0.15f), 4, "3.15 rounds up");
    cr_expect_eq(bl_select_count(10, 0.0f), 0);
    cr_expect_eq(bl_select_count(10, 1.0f), 10);
    cr_expect_eq(bl_select_count(10, 7.0f), 10);
    cr_expect_eq(bl_select_count(10, -1.0f), 0);
    cr_expect_eq(bl_select_count(10, NAN), 0);
    cr_expect_eq(bl_select_count(0, 0.5f), 0);
}

Test(select, top_k_ascending_with_ties_and_nan)
{
    const float s[] = {0.5f, 3.0f, NAN, 3.0f, 1.0f, -2.0f};
    uint32_t out[6];
    cr_assert_eq(bl_select_top(s, 6, 2, out), RK_OK);
    cr_expect_eq(out[0], 1);
    cr_expect_eq(out[1], 3);
    cr_assert_eq(bl_select_top(s, 6, 3, out), RK_OK);
    cr_expect(out[0] == 1 && out[1] == 3 && out[2] == 4, "%u %u %u", out[0], out[1], out[2]);
    cr_assert_eq(bl_select_top(s, 6, 6, out), RK_OK);
    for (uint32_t i = 0; i < 6; i++)
        cr_expect_eq(out[i], i, "all selected, ascending");
    const float tie[] = {1, 1, 1, 1};
    cr_assert_eq(bl_select_top(tie, 4, 2, out), RK_OK);
    cr_expect(out[0] == 0 && out[1] == 1, "ties go to the lower index");
    cr_expect_eq(bl_select_top(s, 6, 7, out), RK_ERR_INVALID);
    cr_expect_eq(bl_select_top(s, 6, 0, out), RK_OK);
}

Test(select, gradual_schedule)
{
    bl_schedule g = {0.4f, 0.5f, 0.1f};
    cr_expect_float_eq(bl_schedule_ratio(&g, 0), 0.4f, 1e-6);
    cr_expect_float_eq(bl_schedule_ratio(&g, 1), 0.2f, 1e-6);
    cr_expect_float_eq(bl_schedule_ratio(&g, 2), 0.1f, 1e-6);
    cr_expect_float_eq(bl_schedule_ratio(&g, 9), 0.1f, 1e-6, "never below the floor");
    bl_schedule f = bl_schedule_flat(0.15f);
    cr_expect_float_eq(bl_schedule_ratio(&f, 0), 0.15f, 1e-6);
    cr_expect_float_eq(bl_schedule_ratio(&f, 30), 0.15f, 1e-6);
}

Test(cachecraft, cci_by_hand)
{
    /* chunk of 4 tokens after 8 tokens, 2 layers: inter 16 and 8, intra 8 and 8.
     * a = mean(16, 8) / (4*8) = 12/32 = 0.375; b = 8 / 16 = 0.5; CCI = sigmoid(0.75) */
    const float inter[] = {16, 8}, intra[] = {8, 8};
    cr_expect_float_eq(bl_cci(inter, intra, 2, 4, 8), 1.0 / (1.0 + exp(-0.75)), 1e-12);
    cr_expect_float_eq(bl_cci(inter, intra, 2, 4, 0), 0.5, 0, "no preceding chunks");
    const float zero[] = {0, 0};
    cr_expect_float_eq(bl_cci(inter, zero, 2, 4, 8), 0.5, 0, "no intra mass");
    cr_expect_float_eq(bl_cci(zero, intra, 2, 4, 8), 0.5, 1e-12, "no inter mass: sigmoid(0)");
}

Test(cachecraft, overlap_order_and_cfo)
{
    const uint64_t stored[] = {10, 20, 30, 40};
    const uint64_t same[] = {10, 20, 30, 40};
    const uint64_t half[] = {99, 20, 40};
    const uint64_t rev[] = {40, 30, 20, 10};
    const uint64_t swap1[] = {20, 10, 30, 40};
    cr_expect_float_eq(bl_prefix_overlap(stored, 4, same, 4), 1.0, 0);
    cr_expect_float_eq(bl_prefix_overlap(stored, 4, half, 3), 2.0 / 3.0, 1e-12, "99 is new");
    cr_expect_float_eq(bl_prefix_overlap(stored, 0, half, 3), 0.0, 0, "a standalone cache saw nothing");
    cr_expect_float_eq(bl_prefix_overlap(stored, 4, half, 0), 1.0, 0, "nothing precedes it now");
    cr_expect_float_eq(bl_order_penalty(stored, 4, same, 4), 0.0, 0);
    cr_expect_float_eq(bl_order_penalty(stored, 4, rev, 4), 1.0, 0, "fully reversed");
    cr_expect_float_eq(bl_order_penalty(stored, 4, swap1, 4), 1.0 / 6.0, 1e-12, "one of six pairs");
    cr_expect_float_eq(bl_order_penalty(stored, 4, half, 3), 0.0, 0, "20 before 40 still");
    /* same context: beta' = 1, nothing to fix; a new context: beta' = 0, alpha*CCI */
    cr_expect_float_eq(bl_cfo(2.0, 0.6, 1.0, 0.0), 0.0, 0);
    cr_expect_float_eq(bl_cfo(0.5, 0.6, 0.0, 0.0), 0.3, 1e-12);
    cr_expect_float_eq(bl_cfo(0.5, 0.6, 1.0, 1.0), 0.3, 1e-12, "same chunks, reversed order");
    cr_expect_float_eq(bl_cfo(5.0, 0.9, 0.0, 0.0), 1.0, 0, "clamped");
}

Test(fidelity, kl_argmax_prefix_l2)
{
    const float a[] = {1, 2, 3}, b[] = {1, 2, 3}, shifted[] = {11, 12, 13};
    cr_expect_float_eq(bl_kl_divergence(a, b, 3), 0.0, 1e-15);
    cr_expect_float_eq(bl_kl_divergence(a, shifted, 3), 0.0, 1e-12, "softmax is shift-invariant");
    /* p = (0.5, 0.5) vs q = softmax(0, ln 3) = (0.25, 0.75): KL = 0.5 ln 2 + 0.5 ln(2/3) */
    const float p[] = {0, 0}, q[] = {0, (float)log(3.0)};
    cr_expect_float_eq(bl_kl_divergence(p, q, 2), 0.5 * log(2.0) + 0.5 * log(2.0 / 3.0), 1e-7);
    const float big[] = {1000, 0}, big2[] = {0, 1000};
    cr_expect(isfinite(bl_kl_divergence(big, big2, 2)), "stable for large logits");
    cr_expect_float_eq(bl_kl_divergence(big, big2, 2), 1000.0, 1e-6);
    const float m[] = {0.1f, 5, 5, -1};
    cr_expect_eq(bl_argmax(m, 4), 1);
    const int32_t s1[] = {1, 2, 3, 4}, s2[] = {1, 2, 9, 4};
    cr_expect_eq(bl_matched_prefix(s1, s2, 4), 2);
    cr_expect_eq(bl_matched_prefix(s1, s1, 4), 4);
    const float r[] = {3, 4}, x[] = {3, 5};
    cr_expect_float_eq(bl_rel_l2(r, x, 2), 0.2, 1e-12);
    const float z[] = {0, 0};
    cr_expect_float_eq(bl_rel_l2(z, z, 2), 0.0, 0);
    cr_expect(isinf(bl_rel_l2(z, x, 2)));
}
