/* Blending on the CUDA backend (label gpu): the exactness properties of test_blend.c hold there
 * too (CacheBlend at r = 1 equals full, r = 0 equals naive), and the CUDA results match the CPU
 * backend's within float tolerances. Skips without a CUDA build or device. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../codec/codec_testlib.h"
#include "blend_testlib.h"
#include "ragkv/blend.h"
#include "testutil.h"
#include "../engine/gpu_probe.h"

static eng_model *m;
static eng_backend *gpu, *cpu;
static const eng_model_info *mi;

static void open_all(void)
{
    const char *path = rk_test_model_path("stories260K.bin");
    if (!path)
        cr_skip_test("skipped: no real model");
    cr_assert_eq(eng_model_open(path, &m), RK_OK);
    mi = eng_model_get_info(m);
    rk_status st = eng_backend_cuda_new(m, 0, &gpu);
    if (st != RK_OK) {
        eng_model_close(m);
        m = NULL;
        cr_skip_test("skipped: no CUDA backend or device (%s)", rk_error_msg());
    }
    cr_assert_eq(eng_backend_cpu_new(m, 2, &cpu), RK_OK);
}

static void close_all(void)
{
    eng_backend_free(gpu);
    eng_backend_free(cpu);
    eng_model_close(m);
    gpu = cpu = NULL;
    m = NULL;
}

/* A second CUDA backend on the model, keeping bf16 KV (blocks the codec's GPU decoder fills). */
static eng_backend *bf16_backend(void)
{
    eng_backend *bf = NULL;
    setenv("RAGKV_CUDA_MATH", "bf16", 1);
    rk_status st = eng_backend_cuda_new(m, 0, &bf);
    unsetenv("RAGKV_CUDA_MATH");
    cr_assert_eq(st, RK_OK, "%s", rk_error_msg());
    return bf;
}

TestSuite(gpu_blend, .fini = close_all, .timeout = 120);

static void tokens(int32_t *t, size_t n, unsigned seed)
{
    srand(seed);
    for (size_t i = 0; i < n; i++)
        t[i] = 3 + rand() % (mi->vocab - 3);
}

static bl_select g_select; /* CacheBlend's ranking in assemble() (0: deviation) */

/* Free the three chunk caches assemble() made. */
static void free_kvs(float **kvs)
{
    for (int i = 0; i < 3; i++)
        free(kvs[i]);
}

/* Assemble on backend be with chunk caches computed on the same backend (kvs: free_kvs). */
static eng_seq *assemble(eng_backend *be, int32_t (*ch)[30], const int32_t *q, bl_mode mode, float r, float *logits,
                         float **kvs)
{
    bl_segment segs[3];
    for (int i = 0; i < 3; i++) {
        kvs[i] = malloc(eng_kv_floats(m, 30) * sizeof(float));
        cr_assert_eq(bl_chunk_prefill(m, be, ch[i], 30, kvs[i]), RK_OK, "%s", rk_error_msg());
        segs[i] = (bl_segment){.tokens = ch[i], .n = 30, .kv = kvs[i]};
    }
    eng_seq *s;
    cr_assert_eq(eng_seq_new(be, 0, &s), RK_OK);
    bl_params p;
    bl_params_default(&p, mode);
    p.ratio = r;
    p.select = g_select;
    cr_assert_eq(bl_assemble(m, be, s, segs, 3, q, 5, &p, logits, NULL), RK_OK, "%s", rk_error_msg());
    return s;
}

/* CacheBlend ranked by the query's attention (the attention mass of the query's rows over every
 * slot: the reference attention path on the device), at the check layer or over every later
 * layer of a naive pass (lookahead), chooses and computes the same on the GPU as on the CPU,
 * r = 1 stays full, and the bf16 backend runs it too. */
static void selection_agrees_with_the_cpu(bl_select sel)
{
    open_all();
    int32_t ch[3][30], q[5];
    for (int i = 0; i < 3; i++)
        tokens(ch[i], 30, 300 + (unsigned)i);
    tokens(q, 5, 400);
    const size_t V = (size_t)mi->vocab;
    float *lc = malloc(V * sizeof(float)), *lg = malloc(V * sizeof(float)), *lf = malloc(V * sizeof(float)),
          *l1 = malloc(V * sizeof(float));
    float *k1[3], *k2[3], *k3[3], *k4[3], *k5[3];
    g_select = sel;
    eng_seq *c = assemble(cpu, ch, q, BL_CACHEBLEND, 0.15f, lc, k1);
    eng_seq *g = assemble(gpu, ch, q, BL_CACHEBLEND, 0.15f, lg, k2);
    cr_expect_leq(max_rel(lc, lg, V), 1e-3, "the same selection and logits on CPU and GPU");
    eng_seq *f = assemble(gpu, ch, q, BL_FULL, 0, lf, k3);
    eng_seq *r1 = assemble(gpu, ch, q, BL_CACHEBLEND, 1.0f, l1, k4);
    cr_expect_leq(max_rel(lf, l1, V), 1e-3, "r = 1 equals full");
    eng_backend *bf = bf16_backend();
    eng_seq *b = assemble(bf, ch, q, BL_CACHEBLEND, 0.15f, lg, k5);
    g_select = BL_SELECT_DEVIATION;
    size_t finite = 0;
    for (size_t i = 0; i < V; i++)
        finite += isfinite(lg[i]) != 0;
    cr_expect_eq(finite, V, "bf16: finite logits");
    eng_seq_free(c);
    eng_seq_free(g);
    eng_seq_free(f);
    eng_seq_free(r1);
    eng_seq_free(b);
    eng_backend_free(bf);
    free_kvs(k1);
    free_kvs(k2);
    free_kvs(k3);
    free_kvs(k4);
    free_kvs(k5);
    free(lc);
    free(lg);
    free(lf);
    free(l1);
}

Test(gpu_blend, attention_selection_agrees_with_the_cpu) { selection_agrees_with_the_cpu(BL_SELECT_ATTENTION); }

Test(gpu_blend, lookahead_selection_agrees_with_the_cpu) { selection_agrees_with_the_cpu(BL_SELECT_LOOKAHEAD); }

Test(gpu_blend, exactness_and_agreement_with_the_cpu)
{
    open_all();
    int32_t ch[3][30], q[5];
    for (int i = 0; i < 3; i++)
        tokens(ch[i], 30, 100 + (unsigned)i);
    tokens(q, 5, 200);
    size_t n = 1 + 90 + 5, V = (size_t)mi->vocab;
    float *lf = malloc(V * sizeof(float)), *lb = malloc(V * sizeof(float)), *ln = malloc(V * sizeof(float)),
          *lc = malloc(V * sizeof(float));
    float *k1[3], *k2[3], *k3[3], *k4[3], *k5[3], *k6[3];
    eng_seq *full = assemble(gpu, ch, q, BL_FULL, 0, lf, k1);
    eng_seq *r1 = assemble(gpu, ch, q, BL_CACHEBLEND, 1.0f, lb, k2);
    eng_seq *naive = assemble(gpu, ch, q, BL_NAIVE, 0, ln, k3);
    eng_seq *cpu_cb = assemble(cpu, ch, q, BL_CACHEBLEND, 0.15f, lc, k4);
    cr_expect_leq(max_rel(lf, lb, V), 1e-3, "CacheBlend r = 1 equals full on the GPU");
    float *kf = export_all_kv(m, full, n), *kb = export_all_kv(m, r1, n);
    cr_expect_leq(max_rel(kf, kb, eng_kv_floats(m, n)), 1e-3);
    /* r = 0 equals naive; and the GPU's CacheBlend r = 0.15 matches the CPU's */
    eng_seq *r0 = assemble(gpu, ch, q, BL_CACHEBLEND, 0.0f, lb, k5);
    cr_expect_leq(max_rel(ln, lb, V), 1e-3, "r = 0 equals naive");
    eng_seq *gpu_cb = assemble(gpu, ch, q, BL_CACHEBLEND, 0.15f, lb, k6);
    cr_expect_leq(max_rel(lc, lb, V), 1e-3, "the same CacheBlend on CPU and GPU");
    free(kf);
    free(kb);
    free(lf);
    free(lb);
    free(ln);
    free(lc);
    free_kvs(k1);
    free_kvs(k2);
    free_kvs(k3);
    free_kvs(k4);
    free_kvs(k5);
    free_kvs(k6);
    eng_seq_free(full);
    eng_seq_free(r1);
    eng_seq_free(naive);
    eng_seq_free(cpu_cb);
    eng_seq_free(r0);
    eng_seq_free(gpu_cb);
}

Test(gpu_blend, kv_blocks_equal_floats_on_the_gpu)
{
    /* chunk caches as KV blocks on the CUDA backend (the device tier's form) give what their
     * floats give, in every mode that reuses them (within the fp32 tolerance: a native block
     * may keep the KV in the backend's own format) */
    open_all();
    int32_t ch[3][30], q[5];
    for (int i = 0; i < 3; i++)
        tokens(ch[i], 30, 300 + (unsigned)i);
    tokens(q, 5, 400);
    size_t V = (size_t)mi->vocab;
    float *lf = malloc(V * sizeof(float)), *lb = malloc(V * sizeof(float)), *kv[3];
    eng_kvblock *blk[3];
    bl_segment fl[3], bk[3];
    for (int i = 0; i < 3; i++) {
        kv[i] = malloc(eng_kv_floats(m, 30) * sizeof(float));
        cr_assert_eq(bl_chunk_prefill(m, gpu, ch[i], 30, kv[i]), RK_OK, "%s", rk_error_msg());
        cr_assert_eq(eng_kvblock_new(gpu, 30, kv[i], &blk[i]), RK_OK, "%s", rk_error_msg());
        fl[i] = (bl_segment){.tokens = ch[i], .n = 30, .kv = kv[i]};
        bk[i] = (bl_segment){.tokens = ch[i], .n = 30, .block = blk[i]};
    }
    static const bl_mode modes[] = {BL_PREFIX, BL_NAIVE, BL_CACHEBLEND, BL_CACHECRAFT, BL_APE};
    for (size_t k = 0; k < sizeof(modes) / sizeof(modes[0]); k++) {
        bl_params p;
        bl_params_default(&p, modes[k]);
        eng_seq *a, *b;
        cr_assert_eq(eng_seq_new(gpu, 0, &a), RK_OK);
        cr_assert_eq(eng_seq_new(gpu, 0, &b), RK_OK);
        cr_assert_eq(bl_assemble(m, gpu, a, fl, 3, q, 5, &p, lf, NULL), RK_OK, "%s", rk_error_msg());
        cr_assert_eq(bl_assemble(m, gpu, b, bk, 3, q, 5, &p, lb, NULL), RK_OK, "%s", rk_error_msg());
        cr_expect_leq(max_rel(lf, lb, V), 1e-3, "%s: blocks vs floats", bl_mode_name(modes[k]));
        eng_seq_free(a);
        eng_seq_free(b);
    }
    for (int i = 0; i < 3; i++) {
        eng_kvblock_free(blk[i]);
        free(kv[i]);
    }
    free(lf);
    free(lb);
}

/* bl_kvblock_decode on the CUDA backend in bf16 mode: the codec's GPU decoder writes the
 * container straight into the block's device memory, and the block holds exactly what a block
 * made from the CPU decoder's floats holds (both round the same float32 values to bf16). */
Test(gpu_blend, container_decoded_on_the_gpu_into_a_block)
{
    open_all();
    eng_backend *bf = bf16_backend();
    int32_t t[48];
    tokens(t, 48, 7);
    size_t nf = eng_kv_floats(m, 48);
    float *kv = malloc(nf * sizeof(float)), *dec = malloc(nf * sizeof(float));
    float *a = malloc(nf * sizeof(float)), *b = malloc(nf * sizeof(float));
    cr_assert_eq(bl_chunk_prefill(m, cpu, t, 48, kv), RK_OK);
    codec_shape shape = {(uint32_t)mi->n_layers, 48, (uint32_t)mi->n_kv_heads, (uint32_t)mi->head_dim};
    codec_params cp = codec_params_default(CODEC_CACHEGEN);
    rk_buf cont = RK_BUF_INIT;
    cr_assert_eq(codec_encode(kv, &shape, &cp, &cont), RK_OK);
    cr_assert_eq(codec_decode(cont.data, cont.len, NULL, CODEC_F32, dec, nf * sizeof(float)), RK_OK);
    eng_kvblock *on_gpu = NULL, *from_floats = NULL;
    cr_assert_eq(bl_kvblock_decode(bf, cont.data, cont.len, NULL, &on_gpu), RK_OK, "%s", rk_error_msg());
    cr_assert_eq(eng_kvblock_new(bf, 48, dec, &from_floats), RK_OK);
    cr_assert_eq(eng_kvblock_read(on_gpu, 0, mi->n_layers, a), RK_OK);
    cr_assert_eq(eng_kvblock_read(from_floats, 0, mi->n_layers, b), RK_OK);
    cr_expect(memcmp(a, b, nf * sizeof(float)) == 0, "GPU-decoded block differs from the CPU-decoded one");
    eng_kvblock_free(on_gpu);
    eng_kvblock_free(from_floats);
    eng_backend_free(bf);
    rk_buf_free(&cont);
    free(kv);
    free(dec);
    free(a);
    free(b);
}

/* Layer-pipelined loading on the GPU: container segments on the bf16 CUDA backend are decoded
 * by the codec's CUDA reader straight into KV blocks, each layer imported after the engine's
 * stream waited for it. The result is bit for bit that of the same containers decoded whole
 * into blocks first (bl_kvblock_decode): same bf16 values, same import kernel. A malformed
 * stream behind valid checksums fails the assembly. */
static void containers_loaded_on_the_gpu(void)
{
    open_all();
    eng_backend *bf = bf16_backend();
    int32_t ch[3][30], q[5];
    for (int i = 0; i < 3; i++)
        tokens(ch[i], 30, 300 + (unsigned)i);
    tokens(q, 5, 400);
    size_t nf = eng_kv_floats(m, 30), V = (size_t)mi->vocab, n = 1 + 90 + 5;
    rk_buf cont[3];
    eng_kvblock *blk[3];
    float *kv = malloc(nf * sizeof(float));
    codec_shape shape = {(uint32_t)mi->n_layers, 30, (uint32_t)mi->n_kv_heads, (uint32_t)mi->head_dim};
    codec_params cp = codec_params_default(CODEC_CACHEGEN);
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(bl_chunk_prefill(m, cpu, ch[i], 30, kv), RK_OK);
        cont[i] = (rk_buf)RK_BUF_INIT;
        cr_assert_eq(codec_encode(kv, &shape, &cp, &cont[i]), RK_OK);
        cr_assert_eq(bl_kvblock_decode(bf, cont[i].data, cont[i].len, NULL, &blk[i]), RK_OK, "%s", rk_error_msg());
    }
    float *la = malloc(V * sizeof(float)), *lb = malloc(V * sizeof(float));
    float *ka = malloc(eng_kv_floats(m, n) * sizeof(float)), *kb = malloc(eng_kv_floats(m, n) * sizeof(float));
    bl_mode modes[] = {BL_CACHEBLEND, BL_NAIVE, BL_CACHEBLEND}; /* the last: lookahead, which */
    for (int k = 0; k < 3; k++) {                              /* imports every layer first */
        bl_segment by_block[3], by_cont[3];
        for (int i = 0; i < 3; i++) {
            by_block[i] = (bl_segment){.tokens = ch[i], .n = 30, .block = blk[i]};
            by_cont[i] = (bl_segment){.tokens = ch[i], .n = 30, .container = cont[i].data, .container_len = cont[i].len};
        }
        bl_params p;
        bl_params_default(&p, modes[k]);
        p.ratio = 0.3f;
        if (k == 2)
            p.select = BL_SELECT_LOOKAHEAD;
        eng_seq *sa, *sb;
        cr_assert_eq(eng_seq_new(bf, n, &sa), RK_OK);
        cr_assert_eq(eng_seq_new(bf, n, &sb), RK_OK);
        cr_assert_eq(bl_assemble(m, bf, sa, by_block, 3, q, 5, &p, la, NULL), RK_OK, "%s", rk_error_msg());
        bl_stats stats;
        cr_assert_eq(bl_assemble(m, bf, sb, by_cont, 3, q, 5, &p, lb, &stats), RK_OK, "%s", rk_error_msg());
        cr_expect(memcmp(la, lb, V * sizeof(float)) == 0, "mode %d: logits differ between blocks and containers", k);
        cr_assert_eq(eng_kv_export(sa, 0, n, ka), RK_OK);
        cr_assert_eq(eng_kv_export(sb, 0, n, kb), RK_OK);
        cr_expect(memcmp(ka, kb, eng_kv_floats(m, n) * sizeof(float)) == 0,
                  "mode %d: the prompt's KV differs between blocks and containers", k);
        if (modes[k] == BL_NAIVE) /* BOS and the query */
            cr_expect_eq(stats.recomputed, 6u);
        eng_seq_free(sa);
        eng_seq_free(sb);
    }
    /* a malformed entropy-coded stream in the middle container, behind valid checksums */
    size_t ilen;
    section(cont[1].data, 4, &ilen);
    move_last_byte(&cont[1], ilen / 4 / 2);
    reseal(cont[1].data);
    bl_segment bad[3];
    for (int i = 0; i < 3; i++)
        bad[i] = (bl_segment){.tokens = ch[i], .n = 30, .container = cont[i].data, .container_len = cont[i].len};
    bl_params p;
    bl_params_default(&p, BL_CACHEBLEND);
    eng_seq *sc;
    cr_assert_eq(eng_seq_new(bf, n, &sc), RK_OK);
    cr_assert_eq(bl_assemble(m, bf, sc, bad, 3, q, 5, &p, la, NULL), RK_ERR_CORRUPT, "%s", rk_error_msg());
    eng_seq_free(sc);
    for (int i = 0; i < 3; i++) {
        eng_kvblock_free(blk[i]);
        rk_buf_free(&cont[i]);
    }
    eng_backend_free(bf);
    free(kv);
    free(la);
    free(lb);
    free(ka);
    free(kb);
}

/* The default: each container's work enqueued when it is opened (layer 0, then the rest in one
 * copy and one kernel). */
Test(gpu_blend, containers_loaded_whole_on_the_gpu) { containers_loaded_on_the_gpu(); }

/* RAGKV_BLEND_UPLOAD=layer (read once per process; Criterion runs each test in its own): a
 * copy and a kernel per layer, enqueued layer after layer over the containers. */
Test(gpu_blend, containers_loaded_layer_by_layer_on_the_gpu)
{
    cr_assert_eq(setenv("RAGKV_BLEND_UPLOAD", "layer", 1), 0);
    containers_loaded_on_the_gpu();
}

/* Without a CUDA device the whole file skips at once. */
RK_TEST_MAIN_NEEDS_CUDA("blend_test_gpu_blend")
