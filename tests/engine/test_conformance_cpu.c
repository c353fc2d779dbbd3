/* The backend conformance suite (conformance.h) on the CPU backend, over the synthetic test
 * shapes of every architecture (f32, f16, bf16 weights; GQA; Qwen2 biases; llama3 RoPE
 * scaling) and the real stories260K model when present. */
#include "conformance.h"
#include "each_model.h"
#include "testutil.h"

static rk_status cpu_ctor(eng_model *m, eng_backend **out)
{
    return eng_backend_cpu_new(m, 2, out);
}

static const char *const synth_models[] = {"test-llama", "test-llama3", "test-qwen2", "test-mistral", "demo"};

/* Run check on every synthetic shape, then on the real model if present. */
#define EACH_MODEL(call) EACH_MODEL_OF(synth_models, call)

/* The CPU backend computes every row with the same operations in the same order whatever
 * the batch, so these are exact in practice; the bound is the 1e-5 relative. */
#define TOL 1e-5

Test(cpu_conformance, prefill_equals_token_by_token_decode)
{
    EACH_MODEL(conf_prefill_equals_decode(cpu_ctor, model, TOL));
}

Test(cpu_conformance, layer_steps_equal_prefill)
{
    EACH_MODEL(conf_layers_equal_prefill(cpu_ctor, model, TOL));
}

Test(cpu_conformance, layer_kv_equals_layer_forward_kv)
{
    EACH_MODEL(conf_layer_kv(cpu_ctor, model));
}

Test(cpu_conformance, row_subset_equals_full_forward)
{
    EACH_MODEL(conf_row_subset(cpu_ctor, model, TOL));
}

Test(cpu_conformance, kv_import_at_shifted_positions)
{
    /* shifted: the same function of relative positions, different cos/sin rounding (measured
     * ~3e-7 relative on every model here) */
    EACH_MODEL(conf_export_import_shift(cpu_ctor, model, TOL, TOL));
}

Test(cpu_conformance, batched_decode_equals_alone)
{
    EACH_MODEL(conf_batched_decode(cpu_ctor, model, TOL));
}

Test(cpu_conformance, causal_rule_by_position)
{
    EACH_MODEL(conf_causal_by_position(cpu_ctor, model, TOL));
}

Test(cpu_conformance, attention_mass_by_slot_group)
{
    EACH_MODEL(conf_attention_mass(cpu_ctor, model, TOL));
}

/* conf_attention_mass_twin compares with a one-thread CPU backend: here, the two-thread one
 * (rows split over the threads) against it, a few rows and more than a tile's. */
Test(cpu_conformance, attention_mass_equals_one_thread)
{
    EACH_MODEL(conf_attention_mass_twin(cpu_ctor, model, 4, TOL));
    EACH_MODEL(conf_attention_mass_twin(cpu_ctor, model, 24, TOL));
}

Test(cpu_conformance, attention_mass_added_row_by_row)
{
    EACH_MODEL(conf_attention_mass_rows(cpu_ctor, model));
}

Test(cpu_conformance, attention_group_modifiers)
{
    EACH_MODEL(conf_attention_modifiers(cpu_ctor, model, TOL));
}

Test(cpu_conformance, kv_by_layer_ranges)
{
    EACH_MODEL(conf_kv_layers(cpu_ctor, model, TOL));
}

Test(cpu_conformance, kv_deviation_between_sequences)
{
    EACH_MODEL(conf_kv_deviation(cpu_ctor, model, 1e-6));
}

Test(cpu_conformance, bad_calls_rejected)
{
    EACH_MODEL(conf_bad_calls(cpu_ctor, model));
}

Test(cpu_conformance, single_thread_equals_multithread)
{
    /* the thread count must not change a single bit */
    eng_model *m = conf_open("test-mistral");
    eng_backend *b1, *b4;
    cr_assert_eq(eng_backend_cpu_new(m, 1, &b1), RK_OK);
    cr_assert_eq(eng_backend_cpu_new(m, 4, &b4), RK_OK);
    size_t n = 16, V = (size_t)eng_model_get_info(m)->vocab;
    int32_t tok[16];
    det_tokens(tok, n, (int)V, 9);
    float *l1 = malloc(n * V * sizeof(float)), *l4 = malloc(n * V * sizeof(float));
    eng_seq *s1, *s4;
    cr_assert_eq(eng_seq_new(b1, 0, &s1), RK_OK);
    cr_assert_eq(eng_seq_new(b4, 0, &s4), RK_OK);
    cr_assert_eq(eng_prefill(s1, tok, n, NULL, ENG_LOGITS_ALL, l1), RK_OK);
    cr_assert_eq(eng_prefill(s4, tok, n, NULL, ENG_LOGITS_ALL, l4), RK_OK);
    cr_expect(memcmp(l1, l4, n * V * sizeof(float)) == 0);
    free(l1);
    free(l4);
    eng_seq_free(s1);
    eng_seq_free(s4);
    eng_backend_free(b1);
    eng_backend_free(b4);
    eng_model_close(m);
}

Test(cpu_conformance, kv_blocks_in_one_call_equal_one_by_one)
{
    EACH_MODEL(conf_kvblocks(cpu_ctor, model));
}

Test(cpu_conformance, kv_block_equals_kv_import)
{
    /* the CPU backend keeps blocks through the generic host copy: bit for bit */
    EACH_MODEL(conf_kvblock(cpu_ctor, model, 0));
}

Test(cpu_conformance, kv_block_holds_a_float_copy)
{
    /* bytes accounting of the generic path: exactly the canonical float32 KV */
    eng_model *m = conf_open("test-qwen2");
    eng_backend *be;
    cr_assert_eq(cpu_ctor(m, &be), RK_OK);
    size_t F = eng_kv_floats(m, 7);
    float *kv = calloc(F, sizeof(float));
    eng_kvblock *b;
    cr_assert_eq(eng_kvblock_new(be, 7, kv, &b), RK_OK, "%s", rk_error_msg());
    cr_expect_eq(eng_kvblock_bytes(b), F * sizeof(float));
    cr_expect_eq(eng_kvblock_tokens(b), 7);
    eng_kvblock_free(b);
    free(kv);
    eng_backend_free(be);
    eng_model_close(m);
}
