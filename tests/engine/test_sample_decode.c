/* eng_decode_sample on the CPU backend: the host path (eng_decode, then eng_sample per row), so
 * every token and every sampler stream must equal the two calls' exactly, over many steps of a
 * batch that changes, with and without the logits returned, and with a sequence switching
 * between the API and the two calls. The same checks run on CUDA in test_gpu_sample.c. */
#include "sample_decode.h"
#include "each_model.h"
#include "testutil.h"

static rk_status cpu_ctor(eng_model *m, eng_backend **out)
{
    return eng_backend_cpu_new(m, 2, out);
}

static const char *const synth_models[] = {"test-llama", "test-llama3", "test-qwen2", "test-mistral"};

#define EACH_MODEL(call) EACH_MODEL_OF(synth_models, call)

Test(sample_decode, equals_decode_then_sample_with_logits) { EACH_MODEL(sd_twins(cpu_ctor, model, 40, true, false)); }

Test(sample_decode, equals_decode_then_sample_without_logits)
{
    EACH_MODEL(sd_twins(cpu_ctor, model, 40, false, false));
}

Test(sample_decode, every_row_agrees_with_eng_sample)
{
    sd_counts c = {0};
    EACH_MODEL(sd_agree(cpu_ctor, model, 48, &c));
    cr_assert_gt(c.greedy, 0);
    cr_assert_gt(c.stoch, 100);
    cr_assert_eq(c.greedy_same, c.greedy, "greedy: %zu of %zu", c.greedy_same, c.greedy);
    cr_assert_eq(c.stoch_same, c.stoch, "stochastic: %zu of %zu", c.stoch_same, c.stoch);
}

Test(sample_decode, host_path_forced_by_env_is_the_same)
{
    /* RAGKV_DEVICE_SAMPLE=0 only matters where a backend samples on a device: here the
     * results are those of the two calls either way */
    cr_assert_eq(setenv("RAGKV_DEVICE_SAMPLE", "0", 1), 0);
    sd_twins(cpu_ctor, "test-llama", 24, false, false);
}

Test(sample_decode, bad_arguments_rejected) { EACH_MODEL(sd_bad_args(cpu_ctor, model)); }
