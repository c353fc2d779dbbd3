/* The engine-backed KV source behind `ragkv codec eval --model` (bench/codec_source.c), on the
 * real stories260K model. The exact KV must score perfectly and q8 nearly so; otherwise the
 * fidelity numbers in docs/codec.md would mean nothing. */
#include <criterion/criterion.h>
#include <string.h>

#include "ragkv/alloc.h"
#include "ragkv/bench.h"
#include "ragkv/codec.h"
#include "testutil.h"

Test(eval, model_source_scores_exact_and_q8_kv, .timeout = 120)
{
    const char *path = rk_test_model_path("stories260K.bin");
    if (!path)
        cr_skip_test("skipped: no real model (stories260K.bin)");
    codec_kv_source src;
    codec_eval_set_model_source(bench_codec_model_source);
    cr_assert_eq(codec_kv_source_model(path, 1, &src), RK_OK, "%s", rk_error_msg());
    cr_assert_eq(src.shape.n_layers, 5);
    cr_assert_eq(src.shape.n_kv_heads, 4);
    cr_assert_eq(src.shape.head_dim, 8);
    codec_fidelity f;
    cr_assert_eq(src.fidelity(src.ctx, src.kv, &f), RK_OK);
    cr_assert(f.kl < 1e-9 && f.top1 == 1.0 && f.greedy_match == 32.0,
              "exact KV: KL %g top1 %g greedy %g", f.kl, f.top1, f.greedy_match);
    rk_buf b = RK_BUF_INIT;
    codec_params p = codec_params_default(CODEC_Q8);
    cr_assert_eq(codec_encode(src.kv, &src.shape, &p, &b), RK_OK);
    size_t nbytes = codec_shape_values(&src.shape) * sizeof(float);
    float *dq = rk_malloc(nbytes);
    cr_assert_eq(codec_decode(b.data, b.len, NULL, CODEC_F32, dq, nbytes), RK_OK);
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
