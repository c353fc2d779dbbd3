/* test_eval.c — white-box: the evaluation harness behind `ragkv codec eval` (codec_eval.h,
 * private to codec/), on the real stories260K model. The exact KV must score perfectly and
 * q8 nearly so; otherwise the fidelity numbers in docs/codec.md would mean nothing. */
#include "codec_testlib.h"
#include "testutil.h"

#include "../../codec/codec_eval.h"

Test(eval, llama2_source_scores_exact_and_q8_kv)
{
    const char *path = rk_test_model_path("stories260K.bin");
    if (!path)
        cr_skip_test("skipped: no real model (stories260K.bin)");
    codec_kv_source src;
    cr_assert_eq(codec_kv_source_llama2(path, 1, &src), RK_OK, "%s", rk_error_msg());
    cr_assert_eq(src.shape.n_layers, 5);
    cr_assert_eq(src.shape.n_kv_heads, 4);
    cr_assert_eq(src.shape.head_dim, 8);
    codec_fidelity f;
    cr_assert_eq(src.fidelity(src.ctx, src.kv, &f), RK_OK);
    cr_assert(f.kl < 1e-9 && f.top1 == 1.0 && f.greedy_match == 32.0,
              "exact KV: KL %g top1 %g greedy %g", f.kl, f.top1, f.greedy_match);
    rk_buf b = enc(src.kv, src.shape, CODEC_Q8, 0);
    float *dq = dec(&b, NULL);
    cr_assert_eq(src.fidelity(src.ctx, dq, &f), RK_OK);
    cr_assert(f.kl > 0 && f.kl < 1e-3 && f.top1 >= 0.98, "q8: KL %g top1 %g", f.kl, f.top1);
    /* zeroed KV must be visibly worse: the score is sensitive to the cache */
    memset(dq, 0, codec_shape_values(&src.shape) * sizeof(float));
    cr_assert_eq(src.fidelity(src.ctx, dq, &f), RK_OK);
    cr_assert(f.top1 < 0.9 && f.kl > 0.01, "zero KV: KL %g top1 %g", f.kl, f.top1);
    rk_free(dq);
    rk_buf_free(&b);
    codec_kv_source_free(&src);
}
