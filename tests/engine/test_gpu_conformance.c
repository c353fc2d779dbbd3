/* The backend conformance suite (conformance.h) on the CUDA backend. Skips where the build has
 * no CUDA, the backend is not built yet (issue 3), or no device answers. Tolerances are wider
 * than the CPU backend's: cuBLAS sums in another order (and may use TF32 if enabled). */
#include "conformance.h"
#include "greedy.h"
#include <stdio.h>

#include "ragkv/tokenizer.h"
#include "each_model.h"
#include "testutil.h"
#include "gpu_probe.h"

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

/* The suite in one storage mode (RAGKV_CUDA_MATH; Criterion runs each test in its own process,
 * so setenv does not leak into the others): fp32, the exact twin of the CPU backend, at 1e-3;
 * bf16 (bf16 weights, KV and matrix inputs, fused attention kernels) at bf16 tolerance. */
static const char *const models[] = {"test-llama", "test-llama3", "test-qwen2", "test-mistral", "test-hd64",
                                     "test-hd128"};
#define EACH_IN(mode, call)                                                 \
    do {                                                                    \
        need_cuda();                                                        \
        cr_assert_eq(setenv("RAGKV_CUDA_MATH", mode, 1), 0);                \
        EACH_MODEL_OF(models, call);                                        \
    } while (0)
#define EACH(call) EACH_IN("fp32", call)
#define EACH_BF16(call) EACH_IN("bf16", call)

#define TOL 1e-3
#define TOLB 3e-2
#define TOLM 5e-2 /* attention mass in bf16: L1 distance per row (conf_attention_mass_twin) */

Test(gpu_conformance, prefill_equals_token_by_token_decode) { EACH(conf_prefill_equals_decode(cuda_ctor, model, TOL)); }
Test(gpu_conformance, layer_steps_equal_prefill) { EACH(conf_layers_equal_prefill(cuda_ctor, model, TOL)); }
Test(gpu_conformance, layer_kv_equals_layer_forward_kv) { EACH(conf_layer_kv(cuda_ctor, model)); }
Test(gpu_conformance, row_subset_equals_full_forward) { EACH(conf_row_subset(cuda_ctor, model, TOL)); }
Test(gpu_conformance, kv_import_at_shifted_positions) { EACH(conf_export_import_shift(cuda_ctor, model, TOL, TOL)); }
Test(gpu_conformance, batched_decode_equals_alone) { EACH(conf_batched_decode(cuda_ctor, model, TOL)); }
Test(gpu_conformance, causal_rule_by_position) { EACH(conf_causal_by_position(cuda_ctor, model, TOL)); }
Test(gpu_conformance, attention_mass_by_slot_group) { EACH(conf_attention_mass(cuda_ctor, model, TOL)); }
Test(gpu_conformance, attention_mass_added_row_by_row) { EACH(conf_attention_mass_rows(cuda_ctor, model)); }
Test(gpu_conformance, attention_group_modifiers) { EACH(conf_attention_modifiers(cuda_ctor, model, TOL)); }
Test(gpu_conformance, attention_mass_equals_the_cpu)
{
    EACH(conf_attention_mass_twin(cuda_ctor, model, 4, TOL));
    EACH(conf_attention_mass_twin(cuda_ctor, model, 24, TOL));
}
Test(gpu_conformance, kv_by_layer_ranges) { EACH(conf_kv_layers(cuda_ctor, model, TOL)); }
Test(gpu_conformance, bad_calls_rejected) { EACH(conf_bad_calls(cuda_ctor, model)); }
Test(gpu_conformance, kv_block_equals_kv_import) { EACH(conf_kvblock(cuda_ctor, model, TOL)); }
Test(gpu_conformance, kv_blocks_in_one_call_equal_one_by_one) { EACH(conf_kvblocks(cuda_ctor, model)); }
Test(gpu_conformance, kv_deviation_between_sequences) { EACH(conf_kv_deviation(cuda_ctor, model, 1e-6)); }

Test(gpu_conformance_bf16, prefill_equals_token_by_token_decode)
{
    EACH_BF16(conf_prefill_equals_decode(cuda_ctor, model, TOLB));
}
Test(gpu_conformance_bf16, layer_steps_equal_prefill) { EACH_BF16(conf_layers_equal_prefill(cuda_ctor, model, TOLB)); }
Test(gpu_conformance_bf16, layer_kv_equals_layer_forward_kv) { EACH_BF16(conf_layer_kv(cuda_ctor, model)); }
Test(gpu_conformance_bf16, row_subset_equals_full_forward) { EACH_BF16(conf_row_subset(cuda_ctor, model, TOLB)); }
Test(gpu_conformance_bf16, kv_import_at_shifted_positions)
{
    EACH_BF16(conf_export_import_shift(cuda_ctor, model, TOLB, TOLB));
}
Test(gpu_conformance_bf16, batched_decode_equals_alone) { EACH_BF16(conf_batched_decode(cuda_ctor, model, TOLB)); }
Test(gpu_conformance_bf16, causal_rule_by_position) { EACH_BF16(conf_causal_by_position(cuda_ctor, model, TOLB)); }
Test(gpu_conformance_bf16, attention_mass_by_slot_group) { EACH_BF16(conf_attention_mass(cuda_ctor, model, TOLB)); }
Test(gpu_conformance_bf16, attention_mass_added_row_by_row) { EACH_BF16(conf_attention_mass_rows(cuda_ctor, model)); }
Test(gpu_conformance_bf16, attention_group_modifiers) { EACH_BF16(conf_attention_modifiers(cuda_ctor, model, TOLB)); }
/* bf16: the fused kernels with attn_scores' masses (head dims 16, 64, 128 here), the reference
 * path's elsewhere; RAGKV_ATTN_DECODE_ROWS=0 below sends the 4-row calls to flash too. */
Test(gpu_conformance_bf16, attention_mass_equals_the_cpu)
{
    EACH_BF16(conf_attention_mass_twin(cuda_ctor, model, 4, TOLM));
    EACH_BF16(conf_attention_mass_twin(cuda_ctor, model, 24, TOLM));
}
Test(gpu_conformance_bf16, attention_mass_equals_the_cpu_flash_few_rows)
{
    cr_assert_eq(setenv("RAGKV_ATTN_DECODE_ROWS", "0", 1), 0);
    EACH_BF16(conf_attention_mass_twin(cuda_ctor, model, 4, TOLM));
}
Test(gpu_conformance_bf16, attention_mass_reference_path_equals_the_cpu)
{
    cr_assert_eq(setenv("RAGKV_ATTN_MASS", "reference", 1), 0);
    EACH_BF16(conf_attention_mass_twin(cuda_ctor, model, 24, TOLM));
}
Test(gpu_conformance_bf16, kv_by_layer_ranges) { EACH_BF16(conf_kv_layers(cuda_ctor, model, TOLB)); }
Test(gpu_conformance_bf16, bad_calls_rejected) { EACH_BF16(conf_bad_calls(cuda_ctor, model)); }
Test(gpu_conformance_bf16, kv_block_equals_kv_import) { EACH_BF16(conf_kvblock(cuda_ctor, model, TOLB)); }
Test(gpu_conformance_bf16, kv_blocks_in_one_call_equal_one_by_one) { EACH_BF16(conf_kvblocks(cuda_ctor, model)); }
Test(gpu_conformance_bf16, kv_deviation_between_sequences) { EACH_BF16(conf_kv_deviation(cuda_ctor, model, 1e-6)); }

/* bf16 at lengths that cross many flash tiles (64 rows x 64 keys) and decode splits (256
 * keys): a prefill of n tokens at positions shifted by 37 (every row's logits), then 24
 * decode steps of the same tokens, against the CPU backend on the same bf16 weights; and a
 * batch of three sequences of different lengths decoding together against each alone. */
static void bf16_long_vs_cpu(const char *shape, size_t n)
{
    need_cuda();
    cr_assert_eq(setenv("RAGKV_CUDA_MATH", "bf16", 1), 0);
    eng_model *m;
    cr_assert_eq(eng_model_synth(shape, 3, &m), RK_OK);
    const eng_model_info *mi = eng_model_get_info(m);
    size_t V = (size_t)mi->vocab;
    enum { STEPS = 24 };
    int32_t *toks = malloc((n + STEPS) * sizeof(int32_t)), *pos = malloc(n * sizeof(int32_t));
    float *lc = malloc(n * V * sizeof(float)), *lg = malloc(n * V * sizeof(float));
    cr_assert(toks && pos && lc && lg);
    det_tokens(toks, n + STEPS, mi->vocab, 11);
    for (size_t i = 0; i < n; i++)
        pos[i] = (int32_t)(i + 37);
    eng_backend *cpu, *gpu;
    cr_assert_eq(eng_backend_cpu_new(m, 2, &cpu), RK_OK);
    cr_assert_eq(cuda_ctor(m, &gpu), RK_OK, "%s", rk_error_msg());
    cr_assert_str_eq(eng_backend_cuda_mode(gpu), "bf16");
    eng_seq *sc, *sg;
    cr_assert_eq(eng_seq_new(cpu, n + STEPS, &sc), RK_OK);
    cr_assert_eq(eng_seq_new(gpu, n + STEPS, &sg), RK_OK);
    cr_assert_eq(eng_prefill(sc, toks, n, pos, ENG_LOGITS_ALL, lc), RK_OK);
    cr_assert_eq(eng_prefill(sg, toks, n, pos, ENG_LOGITS_ALL, lg), RK_OK, "%s", rk_error_msg());
    double worst = 0;
    for (size_t i = 0; i < n; i++) {
        double e = conf_rel_err(lg + i * V, lc + i * V, V);
        cr_assert(e <= TOLB, "%s: prefill row %zu (position %d): relative error %g", shape, i, pos[i], e);
        worst = e > worst ? e : worst;
    }
    for (int k = 0; k < STEPS; k++) {
        cr_assert_eq(eng_decode(cpu, &sc, &toks[n + k], 1, lc), RK_OK);
        cr_assert_eq(eng_decode(gpu, &sg, &toks[n + k], 1, lg), RK_OK, "%s", rk_error_msg());
        double e = conf_rel_err(lg, lc, V);
        cr_assert(e <= TOLB, "%s: decode step %d: relative error %g", shape, k, e);
        worst = e > worst ? e : worst;
    }
    fprintf(stderr, "%s bf16, %zu tokens: largest relative logit error against the CPU %.3g\n", shape, n, worst);
    eng_seq_free(sc);
    eng_seq_free(sg);

    /* batch of three: lengths n, n/2, n/3 + 1; each step's logits equal the same step alone */
    size_t lens[3] = {n, n / 2, n / 3 + 1};
    eng_seq *b[3], *a[3];
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(eng_seq_new(gpu, n + STEPS, &b[i]), RK_OK);
        cr_assert_eq(eng_seq_new(gpu, n + STEPS, &a[i]), RK_OK);
        cr_assert_eq(eng_prefill(b[i], toks + i, lens[i], NULL, ENG_LOGITS_NONE, NULL), RK_OK);
        cr_assert_eq(eng_prefill(a[i], toks + i, lens[i], NULL, ENG_LOGITS_NONE, NULL), RK_OK);
    }
    float *lb = malloc(3 * V * sizeof(float));
    cr_assert(lb);
    for (int k = 0; k < 8; k++) {
        int32_t t3[3] = {toks[k], toks[k + 1], toks[k + 2]};
        cr_assert_eq(eng_decode(gpu, b, t3, 3, lb), RK_OK, "%s", rk_error_msg());
        for (int i = 0; i < 3; i++) {
            cr_assert_eq(eng_decode(gpu, &a[i], &t3[i], 1, lg), RK_OK);
            double e = conf_rel_err(lb + i * V, lg, V);
            cr_assert(e <= 1e-2, "%s: step %d sequence %d: batched vs alone %g", shape, k, i, e);
        }
    }
    for (int i = 0; i < 3; i++) {
        eng_seq_free(a[i]);
        eng_seq_free(b[i]);
    }
    free(lb);
    eng_backend_free(gpu);
    eng_backend_free(cpu);
    eng_model_close(m);
    free(toks);
    free(pos);
    free(lc);
    free(lg);
}

/* Decode through CUDA graphs (the default) equals decode without them (RAGKV_CUDA_GRAPH=0, read
 * per call), step by step, while the batch changes size every few steps (new captures or
 * graph updates) and the sequences cross decode-attention splits; and the graph path is the
 * one taken. Both ways run the same kernels; only cuBLAS's choice of algorithm may differ. */
static void graphs_equal_eager(const char *mode)
{
    need_cuda();
    cr_assert_eq(setenv("RAGKV_CUDA_MATH", mode, 1), 0);
    eng_model *m;
    cr_assert_eq(eng_model_synth("test-hd128", 5, &m), RK_OK);
    size_t V = (size_t)eng_model_get_info(m)->vocab;
    enum { STEPS = 80 };
    const size_t lens[2] = {200, 90};
    int32_t toks[400];
    det_tokens(toks, 400, eng_model_get_info(m)->vocab, 3);
    eng_backend *gpu;
    cr_assert_eq(cuda_ctor(m, &gpu), RK_OK, "%s", rk_error_msg());
    eng_seq *g[2], *e[2];
    for (int i = 0; i < 2; i++) {
        cr_assert_eq(eng_seq_new(gpu, lens[i] + STEPS, &g[i]), RK_OK);
        cr_assert_eq(eng_seq_new(gpu, lens[i] + STEPS, &e[i]), RK_OK);
        cr_assert_eq(eng_prefill(g[i], toks + 50 * i, lens[i], NULL, ENG_LOGITS_NONE, NULL), RK_OK);
        cr_assert_eq(eng_prefill(e[i], toks + 50 * i, lens[i], NULL, ENG_LOGITS_NONE, NULL), RK_OK);
    }
    float *lg = malloc(2 * V * sizeof(float)), *le = malloc(2 * V * sizeof(float));
    cr_assert(lg && le);
    double worst = 0;
    for (int k = 0; k < STEPS; k++) {
        size_t batch = k % 3 == 2 ? 1 : 2;
        int32_t t[2] = {toks[300 + k], toks[310 + k]};
        cr_assert_eq(setenv("RAGKV_CUDA_GRAPH", "1", 1), 0);
        cr_assert_eq(eng_decode(gpu, g, t, batch, lg), RK_OK, "%s", rk_error_msg());
        cr_assert_eq(eng_backend_cuda_graphs(gpu, NULL, NULL), 1, "step %d did not decode through a graph", k);
        cr_assert_eq(setenv("RAGKV_CUDA_GRAPH", "0", 1), 0);
        cr_assert_eq(eng_decode(gpu, e, t, batch, le), RK_OK, "%s", rk_error_msg());
        cr_assert_eq(eng_backend_cuda_graphs(gpu, NULL, NULL), 0);
        for (size_t i = 0; i < batch; i++) {
            double err = conf_rel_err(lg + i * V, le + i * V, V);
            cr_assert(err <= 1e-4, "%s: step %d row %zu: graph vs eager relative error %g", mode, k, i, err);
            worst = err > worst ? err : worst;
        }
    }
    uint64_t captures = 0, replays = 0;
    eng_backend_cuda_graphs(gpu, &captures, &replays);
    fprintf(stderr, "%s: %d steps, %llu captures, %llu replays, graph vs eager at most %.3g\n", mode, STEPS,
            (unsigned long long)captures, (unsigned long long)replays, worst);
    cr_assert_geq(captures, 2); /* batch sizes 1 and 2 */
    cr_assert_eq(replays, STEPS);
    for (int i = 0; i < 2; i++) {
        eng_seq_free(g[i]);
        eng_seq_free(e[i]);
    }
    free(lg);
    free(le);
    eng_backend_free(gpu);
    eng_model_close(m);
    unsetenv("RAGKV_CUDA_GRAPH");
}

/* Paged KV: a sequence holds the blocks of its length whatever its capacity, takes one more as
 * decoding crosses a block's end, gives them back when released, and the next sequence reuses
 * them (the pool does not grow). Logits after the crossing equal the CPU's (the suite above
 * checks the values at every length; this, the bookkeeping). */
static void paged_by_length(const char *mode)
{
    need_cuda();
    cr_assert_eq(setenv("RAGKV_CUDA_MATH", mode, 1), 0);
    eng_model *m;
    cr_assert_eq(eng_model_synth("test-hd64", 5, &m), RK_OK);
    const eng_model_info *mi = eng_model_get_info(m);
    eng_backend *gpu;
    cr_assert_eq(eng_backend_cuda_new(m, 0, &gpu), RK_OK, "%s", rk_error_msg());
    size_t used = 9, total = 9;
    int B = eng_backend_cuda_kv_blocks(gpu, &used, &total);
    cr_assert(B >= 1 && (B & (B - 1)) == 0, "slots per block %d", B);
    cr_assert_eq(used, 0);
    size_t n = 2 * (size_t)B + 3; /* three blocks, the last holding 3 slots */
    cr_assert(3 * (size_t)B + 2 <= (size_t)mi->max_seq, "block of %d too large for this test's model", B);
    int32_t *toks = malloc((3 * (size_t)B + 2) * sizeof(int32_t));
    float *lg = malloc((size_t)mi->vocab * sizeof(float));
    cr_assert(toks && lg);
    det_tokens(toks, 3 * (size_t)B + 2, mi->vocab, 17);
    eng_seq *s;
    cr_assert_eq(eng_seq_new(gpu, 0, &s), RK_OK, "%s", rk_error_msg()); /* the model's whole context */
    eng_backend_cuda_kv_blocks(gpu, &used, &total);
    cr_assert_eq(used, 0, "an empty sequence of %d slots holds %zu blocks", mi->max_seq, used);
    cr_assert_eq(eng_prefill(s, toks, n, NULL, ENG_LOGITS_LAST, lg), RK_OK, "%s", rk_error_msg());
    eng_backend_cuda_kv_blocks(gpu, &used, &total);
    cr_assert_eq(used, 3, "%zu slots hold %zu blocks of %d", n, used, B);
    size_t grown = total;
    /* decode up to 3B slots (still three blocks), then one more (the fourth) */
    for (size_t t = n; t < 3 * (size_t)B + 1; t++) {
        eng_seq *one[1] = {s};
        cr_assert_eq(eng_decode(gpu, one, &toks[t], 1, lg), RK_OK, "%s", rk_error_msg());
        eng_backend_cuda_kv_blocks(gpu, &used, &total);
        cr_assert_eq(used, (t + 1 + (size_t)B - 1) / (size_t)B, "length %zu holds %zu blocks of %d", t + 1, used, B);
    }
    eng_seq_free(s);
    eng_backend_cuda_kv_blocks(gpu, &used, &total);
    cr_assert_eq(used, 0, "a released sequence left %zu blocks in use", used);
    cr_assert_eq(total, grown, "the pool shrank or grew on release");
    cr_assert_eq(eng_seq_new(gpu, 0, &s), RK_OK);
    cr_assert_eq(eng_prefill(s, toks, n, NULL, ENG_LOGITS_LAST, lg), RK_OK, "%s", rk_error_msg());
    eng_backend_cuda_kv_blocks(gpu, &used, &total);
    cr_assert_eq(used, 3);
    cr_assert_eq(total, grown, "the second sequence did not reuse the pool's blocks");
    eng_seq_free(s);
    eng_backend_free(gpu);
    eng_model_close(m);
    free(toks);
    free(lg);
}
Test(gpu_conformance, kv_paged_by_length) { paged_by_length("fp32"); }
Test(gpu_conformance_bf16, kv_paged_by_length) { paged_by_length("bf16"); }

Test(gpu_conformance, decode_graph_equals_eager) { graphs_equal_eager("fp32"); }
Test(gpu_conformance_bf16, decode_graph_equals_eager) { graphs_equal_eager("bf16"); }

Test(gpu_conformance_bf16, hd128_long_prefill_and_decode_close_to_cpu) { bf16_long_vs_cpu("test-hd128", 700); }
Test(gpu_conformance_bf16, hd64_long_prefill_and_decode_close_to_cpu) { bf16_long_vs_cpu("test-hd64", 900); }

/* The second flash-attention kernel (RAGKV_ATTN_FLASH=2: 128-row blocks, double-buffered async
 * copies, an unmasked path for tiles every row sees) under the conformance checks, with
 * every layer call of any row count on the flash path (RAGKV_ATTN_DECODE_ROWS=0: otherwise
 * calls of up to 16 rows, such as the causal-rule and slot-group checks, take the decode
 * kernel). Criterion runs every test in its own process, so the variables do not leak. The
 * third kernel is the default, which every other bf16 test runs; FLASH3 puts it under the
 * checks of few rows as well. */
#define WITH_FLASH(version, call)                                   \
    do {                                                            \
        cr_assert_eq(setenv("RAGKV_ATTN_FLASH", version, 1), 0);    \
        cr_assert_eq(setenv("RAGKV_ATTN_DECODE_ROWS", "0", 1), 0);  \
        call;                                                       \
    } while (0)
#define FLASH3(call) WITH_FLASH("3", call)
#define FLASH2(call) WITH_FLASH("2", call)
/* The first flash kernel (RAGKV_ATTN_FLASH=1) likewise on the checks of few rows (slot groups:
 * APE's temperature and log-scale; the exact causal rule by position; KV imported at shifted
 * positions) and on long prompts. */
#define FLASH1(call) WITH_FLASH("1", call)
Test(gpu_flash3_few_rows, causal_rule_by_position) { FLASH3(EACH_BF16(conf_causal_by_position(cuda_ctor, model, TOLB))); }
Test(gpu_flash3_few_rows, attention_group_modifiers) { FLASH3(EACH_BF16(conf_attention_modifiers(cuda_ctor, model, TOLB))); }
Test(gpu_flash3_few_rows, layer_steps_equal_prefill) { FLASH3(EACH_BF16(conf_layers_equal_prefill(cuda_ctor, model, TOLB))); }
Test(gpu_flash3_few_rows, row_subset_equals_full_forward) { FLASH3(EACH_BF16(conf_row_subset(cuda_ctor, model, TOLB))); }
Test(gpu_flash3_few_rows, kv_import_at_shifted_positions)
{
    FLASH3(EACH_BF16(conf_export_import_shift(cuda_ctor, model, TOLB, TOLB)));
}
/* The third kernel with a visibility table of 2 key tiles per window (RAGKV_ATTN_FLASH_WINDOW;
 * 256 by default, which prompts under 16K tokens never leave), so that these prompts rebuild
 * it several times in every block. */
#define FLASH3_WINDOW2(call)                                            \
    do {                                                                \
        cr_assert_eq(setenv("RAGKV_ATTN_FLASH_WINDOW", "2", 1), 0);     \
        FLASH3(call);                                                   \
    } while (0)
Test(gpu_flash3_window2, hd128_long_prefill_and_decode_close_to_cpu) { FLASH3_WINDOW2(bf16_long_vs_cpu("test-hd128", 700)); }
Test(gpu_flash3_window2, causal_rule_by_position) { FLASH3_WINDOW2(EACH_BF16(conf_causal_by_position(cuda_ctor, model, TOLB))); }
Test(gpu_flash3_window2, row_subset_equals_full_forward) { FLASH3_WINDOW2(EACH_BF16(conf_row_subset(cuda_ctor, model, TOLB))); }
/* Few query rows over many keys: a prompt of n tokens prefilled as a head of n - tail tokens,
 * then a call of the last `tail` rows, which see every key (the shape of a blend's query and
 * selected rows; RAGKV_ATTN_DECODE_ROWS=0 so that calls of up to 16 rows take the flash kernel
 * too). The third flash kernel splits such calls over the keys and merges the splits'
 * partial softmaxes (flash_splits in engine/cuda/attn.cu); every row's logits on both backends
 * within TOLB, each call's tail rows included. */
static void bf16_tail_vs_cpu(const char *shape, size_t n, size_t tail)
{
    need_cuda();
    cr_assert_eq(setenv("RAGKV_CUDA_MATH", "bf16", 1), 0);
    cr_assert_eq(setenv("RAGKV_ATTN_DECODE_ROWS", "0", 1), 0);
    cr_assert(tail > 0 && tail < n);
    eng_model *m;
    cr_assert_eq(eng_model_synth(shape, 5, &m), RK_OK);
    size_t V = (size_t)eng_model_get_info(m)->vocab;
    int32_t *toks = malloc(n * sizeof(int32_t)), *pos = malloc(n * sizeof(int32_t));
    float *lc = malloc(n * V * sizeof(float)), *lg = malloc(n * V * sizeof(float));
    cr_assert(toks && pos && lc && lg);
    det_tokens(toks, n, eng_model_get_info(m)->vocab, 19);
    for (size_t i = 0; i < n; i++)
        pos[i] = (int32_t)(i + 5);
    eng_backend *cpu, *gpu;
    cr_assert_eq(eng_backend_cpu_new(m, 2, &cpu), RK_OK);
    cr_assert_eq(cuda_ctor(m, &gpu), RK_OK, "%s", rk_error_msg());
    eng_seq *sc, *sg;
    cr_assert_eq(eng_seq_new(cpu, n, &sc), RK_OK);
    cr_assert_eq(eng_seq_new(gpu, n, &sg), RK_OK);
    size_t head = n - tail, at[2] = {0, head}, cnt[2] = {head, tail};
    double worst = 0;
    for (int c = 0; c < 2; c++) {
        cr_assert_eq(eng_prefill(sc, toks + at[c], cnt[c], pos + at[c], ENG_LOGITS_ALL, lc), RK_OK);
        cr_assert_eq(eng_prefill(sg, toks + at[c], cnt[c], pos + at[c], ENG_LOGITS_ALL, lg), RK_OK, "%s",
                     rk_error_msg());
        for (size_t i = 0; i < cnt[c]; i++) {
            double e = conf_rel_err(lg + i * V, lc + i * V, V);
            cr_assert(e <= TOLB, "%s: call %d row %zu (position %d): relative error %g", shape, c, i, pos[at[c] + i], e);
            worst = e > worst ? e : worst;
        }
    }
    fprintf(stderr, "%s bf16, %zu + %zu tokens: largest relative logit error against the CPU %.3g\n", shape, head,
            tail, worst);
    eng_seq_free(sc);
    eng_seq_free(sg);
    eng_backend_free(cpu);
    eng_backend_free(gpu);
    eng_model_close(m);
    free(toks);
    free(pos);
    free(lc);
    free(lg);
}
/* automatic splits (on an H100, 2 for these shapes: 11-15 key tiles, 4 per split at least) */
Test(gpu_flash3_split, hd128_few_rows_over_long_prompt) { bf16_tail_vs_cpu("test-hd128", 700, 40); }
Test(gpu_flash3_split, hd64_few_rows_over_long_prompt) { bf16_tail_vs_cpu("test-hd64", 900, 7); }
/* splits fixed (RAGKV_ATTN_FLASH_SPLIT): 5 asked, 11 tiles in 3-tile splits, the last short;
 * 64 asked: one per tile; 1: never split, the same call shape unsplit */
Test(gpu_flash3_split, hd128_five_splits)
{
    cr_assert_eq(setenv("RAGKV_ATTN_FLASH_SPLIT", "5", 1), 0);
    bf16_tail_vs_cpu("test-hd128", 700, 40);
}
Test(gpu_flash3_split, hd64_split_per_tile)
{
    cr_assert_eq(setenv("RAGKV_ATTN_FLASH_SPLIT", "64", 1), 0);
    bf16_tail_vs_cpu("test-hd64", 900, 7);
}
Test(gpu_flash3_split, hd128_never_split)
{
    cr_assert_eq(setenv("RAGKV_ATTN_FLASH_SPLIT", "1", 1), 0);
    bf16_tail_vs_cpu("test-hd128", 700, 40);
}
/* a whole prompt in one call with splits: early row blocks' later splits see nothing */
Test(gpu_flash3_split, hd128_long_prefill_five_splits)
{
    cr_assert_eq(setenv("RAGKV_ATTN_FLASH_SPLIT", "5", 1), 0);
    bf16_long_vs_cpu("test-hd128", 700);
}
/* The decode step's few-row products through cuBLAS (RAGKV_CUDA_GEMV=0) instead of the
 * backend's own k_gemv (the default for bf16 calls of up to 8 rows). */
Test(gpu_gemv_off, batched_decode_equals_alone)
{
    cr_assert_eq(setenv("RAGKV_CUDA_GEMV", "0", 1), 0);
    EACH_BF16(conf_batched_decode(cuda_ctor, model, TOLB));
}
Test(gpu_gemv_off, hd128_long_prefill_and_decode_close_to_cpu)
{
    cr_assert_eq(setenv("RAGKV_CUDA_GEMV", "0", 1), 0);
    bf16_long_vs_cpu("test-hd128", 700);
}
/* A backend variable with a value the backend does not know (in bf16 mode otherwise): making
 * the backend fails with RK_ERR_INVALID, nothing made, and the message names VAR=VALUE. */
static void env_value_refused(const char *var, const char *value)
{
    need_cuda();
    cr_assert_eq(setenv("RAGKV_CUDA_MATH", "bf16", 1), 0);
    cr_assert_eq(setenv(var, value, 1), 0);
    eng_model *m;
    cr_assert_eq(eng_model_synth("test-llama", 1, &m), RK_OK);
    eng_backend *be = NULL;
    cr_assert_eq(cuda_ctor(m, &be), RK_ERR_INVALID);
    cr_assert_null(be);
    char needle[128];
    snprintf(needle, sizeof(needle), "%s=%s", var, value);
    cr_assert(strstr(rk_error_msg(), needle) != NULL, "message: %s", rk_error_msg());
    eng_model_close(m);
}

/* Products of many rows (prefill) with the three choices of gemm_lt.h: cublasGemmEx alone
 * (RAGKV_CUDA_GEMM_TUNE=0, the default every other bf16 test runs), cuBLASLt's first
 * heuristic (2), timed (1). 700 and 900 rows tune the q/k/v, o (+x), gate/up (bf16 out) and down
 * (+x) shapes; the o and down products accumulate into the hidden state, so a tuning run that
 * touched it would show in the logits. */
Test(gpu_gemm_tune, off_hd128_long_prefill_and_decode_close_to_cpu)
{
    cr_assert_eq(setenv("RAGKV_CUDA_GEMM_TUNE", "0", 1), 0);
    bf16_long_vs_cpu("test-hd128", 700);
}
Test(gpu_gemm_tune, first_heuristic_hd64_long_prefill_and_decode_close_to_cpu)
{
    cr_assert_eq(setenv("RAGKV_CUDA_GEMM_TUNE", "2", 1), 0);
    bf16_long_vs_cpu("test-hd64", 900);
}
Test(gpu_gemm_tune, timed_with_log_hd64_long_prefill_and_decode_close_to_cpu)
{
    cr_assert_eq(setenv("RAGKV_CUDA_GEMM_TUNE", "1", 1), 0);
    cr_assert_eq(setenv("RAGKV_CUDA_GEMM_TUNE_LOG", "1", 1), 0);
    bf16_long_vs_cpu("test-hd64", 900);
}
Test(gpu_gemm_tune, unknown_value_refused) { env_value_refused("RAGKV_CUDA_GEMM_TUNE", "yes"); }
Test(gpu_flash1_few_rows, causal_rule_by_position) { FLASH1(EACH_BF16(conf_causal_by_position(cuda_ctor, model, TOLB))); }
Test(gpu_flash1_few_rows, attention_group_modifiers) { FLASH1(EACH_BF16(conf_attention_modifiers(cuda_ctor, model, TOLB))); }
Test(gpu_flash1_few_rows, layer_steps_equal_prefill) { FLASH1(EACH_BF16(conf_layers_equal_prefill(cuda_ctor, model, TOLB))); }
Test(gpu_flash1_few_rows, kv_import_at_shifted_positions)
{
    FLASH1(EACH_BF16(conf_export_import_shift(cuda_ctor, model, TOLB, TOLB)));
}
Test(gpu_flash1, hd128_long_prefill_and_decode_close_to_cpu) { FLASH1(bf16_long_vs_cpu("test-hd128", 700)); }
Test(gpu_flash1, hd64_long_prefill_and_decode_close_to_cpu) { FLASH1(bf16_long_vs_cpu("test-hd64", 900)); }
Test(gpu_flash1, prefill_equals_token_by_token_decode)
{
    FLASH1(EACH_BF16(conf_prefill_equals_decode(cuda_ctor, model, TOLB)));
}
Test(gpu_flash1, row_subset_equals_full_forward) { FLASH1(EACH_BF16(conf_row_subset(cuda_ctor, model, TOLB))); }
Test(gpu_flash2, hd128_long_prefill_and_decode_close_to_cpu) { FLASH2(bf16_long_vs_cpu("test-hd128", 700)); }
Test(gpu_flash2, hd64_long_prefill_and_decode_close_to_cpu) { FLASH2(bf16_long_vs_cpu("test-hd64", 900)); }
Test(gpu_flash2, prefill_equals_token_by_token_decode)
{
    FLASH2(EACH_BF16(conf_prefill_equals_decode(cuda_ctor, model, TOLB)));
}
Test(gpu_flash2, layer_steps_equal_prefill) { FLASH2(EACH_BF16(conf_layers_equal_prefill(cuda_ctor, model, TOLB))); }
Test(gpu_flash2, row_subset_equals_full_forward) { FLASH2(EACH_BF16(conf_row_subset(cuda_ctor, model, TOLB))); }
Test(gpu_flash2, causal_rule_by_position) { FLASH2(EACH_BF16(conf_causal_by_position(cuda_ctor, model, TOLB))); }
Test(gpu_flash2, attention_group_modifiers) { FLASH2(EACH_BF16(conf_attention_modifiers(cuda_ctor, model, TOLB))); }
/* The first decode kernel (one warp per key), which serves the shapes the vectorised one cannot
 * (more than 8 query heads per KV head, odd head dims): forced on every shape. */
Test(gpu_decode_scalar, hd128_long_prefill_and_decode_close_to_cpu)
{
    cr_assert_eq(setenv("RAGKV_ATTN_DECODE", "scalar", 1), 0);
    bf16_long_vs_cpu("test-hd128", 700);
}
Test(gpu_decode_scalar, batched_decode_equals_alone)
{
    cr_assert_eq(setenv("RAGKV_ATTN_DECODE", "scalar", 1), 0);
    EACH_BF16(conf_batched_decode(cuda_ctor, model, TOLB));
}
Test(gpu_flash2, kv_import_at_shifted_positions)
{
    FLASH2(EACH_BF16(conf_export_import_shift(cuda_ctor, model, TOLB, TOLB)));
}
/* The vectorised decode kernel (the default; RAGKV_ATTN_DECODE=vec names it) under a few checks
 * with the variable set, as a guard that the name keeps selecting it. */
Test(gpu_decode_vec, hd128_long_prefill_and_decode_close_to_cpu)
{
    cr_assert_eq(setenv("RAGKV_ATTN_DECODE", "vec", 1), 0);
    bf16_long_vs_cpu("test-hd128", 700);
}
Test(gpu_decode_vec, batched_decode_equals_alone)
{
    cr_assert_eq(setenv("RAGKV_ATTN_DECODE", "vec", 1), 0);
    EACH_BF16(conf_batched_decode(cuda_ctor, model, TOLB));
}
Test(gpu_decode_vec, attention_group_modifiers)
{
    cr_assert_eq(setenv("RAGKV_ATTN_DECODE", "vec", 1), 0);
    EACH_BF16(conf_attention_modifiers(cuda_ctor, model, TOLB));
}
/* The shared-memory decode kernel (RAGKV_ATTN_DECODE=smem) with its split fixed
 * (RAGKV_ATTN_SPLIT): 32 keys (many splits, a short last one) and 256 (more than the default
 * 48 KiB of shared memory per block, which attn_prepare opts into); sequences of different
 * lengths in one batch leave splits with no keys; slot groups. */
#define WITH_SMEM(split, call)                                          \
    do {                                                                \
        cr_assert_eq(setenv("RAGKV_ATTN_DECODE", "smem", 1), 0);        \
        cr_assert_eq(setenv("RAGKV_ATTN_SPLIT", split, 1), 0);          \
        call;                                                           \
    } while (0)
Test(gpu_decode_smem, split32_long_prefill_and_decode_close_to_cpu) { WITH_SMEM("32", bf16_long_vs_cpu("test-hd128", 700)); }
Test(gpu_decode_smem, split256_long_prefill_and_decode_close_to_cpu) { WITH_SMEM("256", bf16_long_vs_cpu("test-hd128", 700)); }
Test(gpu_decode_smem, split32_batched_decode_equals_alone)
{
    WITH_SMEM("32", EACH_BF16(conf_batched_decode(cuda_ctor, model, TOLB)));
}
Test(gpu_decode_smem, split64_attention_group_modifiers)
{
    WITH_SMEM("64", EACH_BF16(conf_attention_modifiers(cuda_ctor, model, TOLB)));
}
/* The conformance checks every flash-kernel variant runs (with every layer call on the
 * flash path, RAGKV_ATTN_DECODE_ROWS=0), in Criterion suite `suite` under RAGKV_ATTN_FLASH=v. */
#define FLASH_CONFORMANCE(suite, v)                                                                           \
    Test(suite, prefill_equals_token_by_token_decode)                                                         \
    {                                                                                                         \
        WITH_FLASH(v, EACH_BF16(conf_prefill_equals_decode(cuda_ctor, model, TOLB)));                         \
    }                                                                                                         \
    Test(suite, row_subset_equals_full_forward) { WITH_FLASH(v, EACH_BF16(conf_row_subset(cuda_ctor, model, TOLB))); } \
    Test(suite, causal_rule_by_position)                                                                      \
    {                                                                                                         \
        WITH_FLASH(v, EACH_BF16(conf_causal_by_position(cuda_ctor, model, TOLB)));                            \
    }                                                                                                         \
    Test(suite, attention_group_modifiers)                                                                    \
    {                                                                                                         \
        WITH_FLASH(v, EACH_BF16(conf_attention_modifiers(cuda_ctor, model, TOLB)));                           \
    }                                                                                                         \
    Test(suite, kv_import_at_shifted_positions)                                                               \
    {                                                                                                         \
        WITH_FLASH(v, EACH_BF16(conf_export_import_shift(cuda_ctor, model, TOLB, TOLB)));                     \
    }

/* A flash variant (RAGKV_ATTN_FLASH=v, suite `suite`) on `shape` (700 tokens) with a
 * visibility-table window of 2 tiles over a whole prompt, and with 5 key splits under 40 rows. */
#define FLASH_WINDOW_AND_SPLITS(suite, v, shape)                                                              \
    Test(suite, window2_long_prefill)                                                                         \
    {                                                                                                         \
        cr_assert_eq(setenv("RAGKV_ATTN_FLASH_WINDOW", "2", 1), 0);                                           \
        WITH_FLASH(v, bf16_long_vs_cpu(shape, 700));                                                          \
    }                                                                                                         \
    Test(suite, five_splits_few_rows)                                                                         \
    {                                                                                                         \
        cr_assert_eq(setenv("RAGKV_ATTN_FLASH_SPLIT", "5", 1), 0);                                            \
        WITH_FLASH(v, bf16_tail_vs_cpu(shape, 700, 40));                                                      \
    }

/* The third flash kernel with one block barrier per key tile (RAGKV_ATTN_FLASH=4): the whole
 * prompt, few rows, small visibility-table windows and key splits. */
#define FLASH4(call) WITH_FLASH("4", call)
FLASH_CONFORMANCE(gpu_flash4, "4")
Test(gpu_flash4, hd128_long_prefill_and_decode_close_to_cpu) { FLASH4(bf16_long_vs_cpu("test-hd128", 700)); }
Test(gpu_flash4, hd64_long_prefill_and_decode_close_to_cpu) { FLASH4(bf16_long_vs_cpu("test-hd64", 900)); }
FLASH_WINDOW_AND_SPLITS(gpu_flash4, "4", "test-hd128")
/* The third flash kernel with a KV head's query heads packed into one block
 * (RAGKV_ATTN_FLASH=5): G = 2 (test-hd64, test-hd128: 64 positions per block), 4 (test-llama3
 * at head dim 16, test-hd128-g4: 32), 8 (test-hd64-g8: 16); test-qwen2's 7 heads per KV head
 * cannot be packed and take the unpacked kernel. The whole prompt, few rows, key splits,
 * small visibility-table windows. */
#define FLASH5(call) WITH_FLASH("5", call)
FLASH_CONFORMANCE(gpu_flash5, "5")
Test(gpu_flash5, hd128_long_prefill_and_decode_close_to_cpu) { FLASH5(bf16_long_vs_cpu("test-hd128", 700)); }
Test(gpu_flash5, hd64_long_prefill_and_decode_close_to_cpu) { FLASH5(bf16_long_vs_cpu("test-hd64", 900)); }
Test(gpu_flash5, g4_hd128_long_prefill_and_decode_close_to_cpu) { FLASH5(bf16_long_vs_cpu("test-hd128-g4", 700)); }
Test(gpu_flash5, g8_hd64_long_prefill_and_decode_close_to_cpu) { FLASH5(bf16_long_vs_cpu("test-hd64-g8", 900)); }
FLASH_WINDOW_AND_SPLITS(gpu_flash5, "5", "test-hd128-g4")
Test(gpu_flash5, g8_automatic_splits_few_rows) { FLASH5(bf16_tail_vs_cpu("test-hd64-g8", 900, 7)); }
/* The flash kernels' running maximum moved on every new maximum (RAGKV_ATTN_LAZY=0, as before
 * the lazy rescale) and after a lag of only 1 (log2 units: rows both keep and move their
 * maximum within one prompt); the default lag of 8 runs in every other bf16 test. */
#define WITH_LAZY(v, call)                                          \
    do {                                                            \
        cr_assert_eq(setenv("RAGKV_ATTN_LAZY", v, 1), 0);           \
        call;                                                       \
    } while (0)
Test(gpu_flash_lazy, off_long_prefill_close_to_cpu) { WITH_LAZY("0", bf16_long_vs_cpu("test-hd128", 700)); }
Test(gpu_flash_lazy, lag1_long_prefill_close_to_cpu) { WITH_LAZY("1", bf16_long_vs_cpu("test-hd128", 700)); }
Test(gpu_flash_lazy, lag1_few_rows_split_over_keys) { WITH_LAZY("1", bf16_tail_vs_cpu("test-hd128", 700, 40)); }
Test(gpu_flash_lazy, lag1_row_subset_equals_full_forward)
{
    WITH_LAZY("1", FLASH3(EACH_BF16(conf_row_subset(cuda_ctor, model, TOLB))));
}
Test(gpu_flash_lazy, lag1_causal_rule_by_position)
{
    WITH_LAZY("1", FLASH3(EACH_BF16(conf_causal_by_position(cuda_ctor, model, TOLB))));
}

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
    cr_assert_eq(setenv("RAGKV_CUDA_MATH", "fp32", 1), 0);
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
Test(gpu_math, bf16_close_to_cpu) { math_mode_close_to_cpu("bf16", TOLB); }

Test(gpu_math, unknown_mode_refused) { env_value_refused("RAGKV_CUDA_MATH", "fp8"); }

/* Without a CUDA device the whole file skips at once. */
RK_TEST_MAIN_NEEDS_CUDA("engine_test_gpu_conformance")

/* RAGKV_CUDA_KVBLOCK_CACHE_MB: released chunk KV blocks' memory serves the next block of the
 * same size. A block made in memory that held another block reads back its own KV (the same as
 * a block in fresh memory), and the block conformance checks pass with the cache on. */
static void kvblock_cache_reuse(const char *model)
{
    eng_model *m = conf_open(model);
    const eng_model_info *mi = eng_model_get_info(m);
    eng_backend *be;
    cr_assert_eq(cuda_ctor(m, &be), RK_OK, "%s", rk_error_msg());
    enum { N = 12 };
    size_t F = eng_kv_floats(m, N);
    float *kv[2], *got = malloc(F * sizeof(float)), *want = malloc(F * sizeof(float));
    eng_seq *src = conf_seq(be, 16);
    int32_t tok[N];
    for (int i = 0; i < 2; i++) {
        kv[i] = malloc(F * sizeof(float));
        det_tokens(tok, N, mi->vocab, 70 + i);
        cr_assert_eq(eng_seq_truncate(src, 0), RK_OK);
        cr_assert_eq(eng_prefill(src, tok, N, NULL, ENG_LOGITS_NONE, NULL), RK_OK);
        cr_assert_eq(eng_kv_export(src, 0, N, kv[i]), RK_OK);
    }
    eng_kvblock *a, *b, *fresh;
    cr_assert_eq(eng_kvblock_new(be, N, kv[0], &a), RK_OK, "%s", rk_error_msg());
    cr_assert_eq(eng_kvblock_read(a, 0, mi->n_layers, got), RK_OK);
    eng_kvblock_free(a);                                      /* its memory is kept ... */
    cr_assert_eq(eng_kvblock_new(be, N, kv[1], &b), RK_OK); /* ... and taken here */
    cr_assert_eq(eng_kvblock_new(be, N, kv[1], &fresh), RK_OK); /* new memory: b still holds the kept one */
    cr_assert_eq(eng_kvblock_read(b, 0, mi->n_layers, got), RK_OK);
    cr_assert_eq(eng_kvblock_read(fresh, 0, mi->n_layers, want), RK_OK);
    cr_expect(memcmp(got, want, F * sizeof(float)) == 0, "%s: a block in reused memory reads back its own KV",
              model);
    cr_expect(memcmp(kv[0], kv[1], F * sizeof(float)) != 0, "the two blocks' KV differ");
    eng_kvblock_free(b);
    eng_kvblock_free(fresh);
    eng_seq_free(src);
    free(kv[0]);
    free(kv[1]);
    free(got);
    free(want);
    eng_backend_free(be);
    eng_model_close(m);
}
#define KVBLOCK_CACHE(call)                                                      \
    do {                                                                         \
        cr_assert_eq(setenv("RAGKV_CUDA_KVBLOCK_CACHE_MB", "64", 1), 0);         \
        call;                                                                    \
    } while (0)
Test(gpu_kvblock_cache, reused_memory_holds_the_new_block) { KVBLOCK_CACHE(EACH_BF16(kvblock_cache_reuse(model))); }
Test(gpu_kvblock_cache, kv_blocks_in_one_call_equal_one_by_one)
{
    KVBLOCK_CACHE(EACH_BF16(conf_kvblocks(cuda_ctor, model)));
}
Test(gpu_kvblock_cache, kv_block_equals_kv_import) { KVBLOCK_CACHE(EACH_BF16(conf_kvblock(cuda_ctor, model, TOLB))); }
Test(gpu_kvblock_cache, unknown_value_refused) { env_value_refused("RAGKV_CUDA_KVBLOCK_CACHE_MB", "-1"); }
