/* The backend conformance suite (conformance.h) on the CUDA backend. Skips where the build has
 * no CUDA, the backend is not built yet (issue 3), or no device answers. Tolerances are wider
 * than the CPU backend's: cuBLAS sums in another order (and may use TF32 if enabled). */
#include "conformance.h"
#include "testutil.h"

static rk_status cuda_ctor(eng_model *m, eng_backend **out)
{
    return eng_backend_cuda_new(m, 0, out);
}

static void need_cuda(void)
{
    eng_model *m;
    cr_assert_eq(eng_model_synth("test-llama", 1, &m), RK_OK);
    eng_backend *be;
    rk_status st = cuda_ctor(m, &be);
    eng_model_close(m);
    if (st == RK_ERR_UNSUPPORTED || st == RK_ERR_NOT_IMPLEMENTED || st == RK_ERR_DEVICE ||
        st == RK_ERR_UNAVAILABLE)
        cr_skip_test("skipped: no CUDA device or backend (%s: %s)", rk_status_name(st), rk_error_msg());
    cr_assert_eq(st, RK_OK, "%s", rk_error_msg());
    eng_backend_free(be);
}

static const char *const models[] = {"test-llama", "test-llama3", "test-qwen2", "test-mistral"};
#define EACH(call)                                                          \
    do {                                                                    \
        need_cuda();                                                        \
        for (size_t i_ = 0; i_ < sizeof(models) / sizeof(models[0]); i_++) { \
            const char *model = models[i_];                                 \
            call;                                                           \
        }                                                                   \
        const char *real_ = rk_test_model_path("stories260K.bin");          \
        if (real_) {                                                        \
            const char *model = real_;                                      \
            call;                                                           \
        }                                                                   \
    } while (0)

#define TOL 1e-3

Test(gpu_conformance, prefill_equals_token_by_token_decode) { EACH(conf_prefill_equals_decode(cuda_ctor, model, TOL)); }
Test(gpu_conformance, layer_steps_equal_prefill) { EACH(conf_layers_equal_prefill(cuda_ctor, model, TOL)); }
Test(gpu_conformance, row_subset_equals_full_forward) { EACH(conf_row_subset(cuda_ctor, model, TOL)); }
Test(gpu_conformance, kv_import_at_shifted_positions) { EACH(conf_export_import_shift(cuda_ctor, model, TOL, TOL)); }
Test(gpu_conformance, batched_decode_equals_alone) { EACH(conf_batched_decode(cuda_ctor, model, TOL)); }
Test(gpu_conformance, causal_rule_by_position) { EACH(conf_causal_by_position(cuda_ctor, model, TOL)); }
Test(gpu_conformance, attention_mass_by_slot_group) { EACH(conf_attention_mass(cuda_ctor, model, TOL)); }
Test(gpu_conformance, attention_group_modifiers) { EACH(conf_attention_modifiers(cuda_ctor, model, TOL)); }
Test(gpu_conformance, bad_calls_rejected) { EACH(conf_bad_calls(cuda_ctor, model)); }
