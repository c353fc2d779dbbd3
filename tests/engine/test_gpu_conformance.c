/* The backend conformance suite (conformance.h) on the CUDA backend. Skips where the build has
 * no CUDA, the backend is not built yet (issue 3), or no device answers. Tolerances are wider
 * than the CPU backend's: cuBLAS sums in another order (and may use TF32 if enabled). */
#include "conformance.h"
#include "greedy.h"
#include <stdio.h>

#include "ragkv/tokenizer.h"
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
Test(gpu_conformance, kv_by_layer_ranges) { EACH(conf_kv_layers(cuda_ctor, model, TOL)); }
Test(gpu_conformance, bad_calls_rejected) { EACH(conf_bad_calls(cuda_ctor, model)); }

/* The real trained models: the CUDA backend's greedy tokens equal the CPU reference's over 200
 * positions (the CPU's are checked against the golden text and an independent scalar forward
 * pass in test_models.c). */
static void greedy_matches_cpu(const char *file, const char *tokfile)
{
    /* rk_test_model_path returns a static buffer: copy each path before the next call */
    const char *p = rk_test_model_path(file);
    char *path = p ? strdup(p) : NULL;
    p = rk_test_model_path(tokfile);
    char *tpath = p ? strdup(p) : NULL;
    if (!path || !tpath)
        cr_skip_test("skipped: no real model (%s, %s)", file, tokfile);
    need_cuda();
    eng_model *m;
    cr_assert_eq(eng_model_open(path, &m), RK_OK, "%s", rk_error_msg());
    const eng_model_info *mi = eng_model_get_info(m);
    eng_tokenizer *tk;
    cr_assert_eq(eng_tokenizer_open(tpath, mi->vocab, &tk), RK_OK, "%s", rk_error_msg());
    int32_t prompt[32];
    size_t np;
    cr_assert_eq(eng_tokenizer_encode(tk, "Once upon a time", true, prompt, 32, &np), RK_OK);
    eng_tokenizer_free(tk);
    free(path);
    free(tpath);
    enum { STEPS = 200 };
    int32_t a[STEPS + 1], b[STEPS + 1];
    eng_backend *cpu, *gpu;
    cr_assert_eq(eng_backend_cpu_new(m, 2, &cpu), RK_OK);
    cr_assert_eq(cuda_ctor(m, &gpu), RK_OK, "%s", rk_error_msg());
    size_t na = test_greedy(cpu, prompt, np, STEPS, a);
    size_t nb = test_greedy(gpu, prompt, np, STEPS, b);
    cr_expect_gt(na, np + 20, "the CPU generated only %zu tokens", na - np);
    cr_assert_eq(na, nb, "cpu %zu tokens, cuda %zu", na, nb);
    for (size_t i = 0; i < na; i++)
        cr_assert_eq(a[i], b[i], "%s: first difference at position %zu: cpu %d, cuda %d", file, i, a[i], b[i]);
    eng_backend_free(gpu);
    eng_backend_free(cpu);
    eng_model_close(m);
}

Test(gpu_models, stories260k_greedy_equals_cpu)
{
    greedy_matches_cpu("stories260K.bin", "tok512.bin");
}

Test(gpu_models, babyllama105_greedy_equals_cpu)
{
    greedy_matches_cpu("babyllama105.bin", "tok105.bin");
}

/* RAGKV_CUDA_MATH: tf32 and bf16 tensor-core matrix products. Every row of logits of a 64-token
 * prefill of a real model stays within the given relative error of the CPU reference (fp32
 * passes the suite above at 1e-3), and an unknown mode is refused with a clear error. Criterion
 * runs each test in its own process, so setenv does not leak into the others. */
static void math_mode_close_to_cpu(const char *mode, double tol)
{
    const char *p = rk_test_model_path("stories260K.bin");
    if (!p)
        cr_skip_test("skipped: no real model (stories260K.bin)");
    need_cuda();
    cr_assert_eq(setenv("RAGKV_CUDA_MATH", mode, 1), 0);
    eng_model *m;
    cr_assert_eq(eng_model_open(p, &m), RK_OK, "%s", rk_error_msg());
    const eng_model_info *mi = eng_model_get_info(m);
    enum { N = 64 };
    int32_t toks[N];
    for (int i = 0; i < N; i++)
        toks[i] = i == 0 ? 1 : (int32_t)((i * 37 + 11) % mi->vocab);
    size_t V = (size_t)mi->vocab;
    float *a = malloc(N * V * sizeof(float)), *b = malloc(N * V * sizeof(float));
    cr_assert(a && b);
    eng_backend *be[2];
    cr_assert_eq(eng_backend_cpu_new(m, 2, &be[0]), RK_OK);
    cr_assert_eq(cuda_ctor(m, &be[1]), RK_OK, "%s", rk_error_msg());
    for (int k = 0; k < 2; k++) {
        eng_seq *s;
        cr_assert_eq(eng_seq_new(be[k], N, &s), RK_OK);
        cr_assert_eq(eng_prefill(s, toks, N, NULL, ENG_LOGITS_ALL, k ? b : a), RK_OK, "%s", rk_error_msg());
        eng_seq_free(s);
        eng_backend_free(be[k]);
    }
    double worst = 0;
    for (size_t i = 0; i < N; i++) {
        double e = conf_rel_err(b + i * V, a + i * V, V);
        worst = e > worst ? e : worst;
    }
    fprintf(stderr, "RAGKV_CUDA_MATH=%s: largest relative logit error against the CPU %.3g\n", mode, worst);
    cr_assert(worst <= tol, "RAGKV_CUDA_MATH=%s: relative error %g > %g", mode, worst, tol);
    free(a);
    free(b);
    eng_model_close(m);
}

Test(gpu_math, tf32_close_to_cpu) { math_mode_close_to_cpu("tf32", 1e-2); }
Test(gpu_math, bf16_close_to_cpu) { math_mode_close_to_cpu("bf16", 2e-2); }

Test(gpu_math, unknown_mode_refused)
{
    need_cuda();
    cr_assert_eq(setenv("RAGKV_CUDA_MATH", "fp8", 1), 0);
    eng_model *m;
    cr_assert_eq(eng_model_synth("test-llama", 1, &m), RK_OK);
    eng_backend *be = NULL;
    cr_assert_eq(cuda_ctor(m, &be), RK_ERR_INVALID);
    cr_assert_null(be);
    cr_assert(strstr(rk_error_msg(), "RAGKV_CUDA_MATH=fp8") != NULL, "message: %s", rk_error_msg());
    eng_model_close(m);
}
