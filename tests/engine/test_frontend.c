/*
 * The engine front end (engine.c) around a backend: hidden-block I/O and gather, and the
 * composed decode used when a backend leaves the optional `decode` entry NULL. White-box (it
 * includes the private engine_impl.h to switch that entry off), as the style guide allows.
 */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "../../engine/engine_impl.h"

Test(frontend, hidden_write_read_gather)
{
    eng_model *m;
    cr_assert_eq(eng_model_synth("test-llama", 3, &m), RK_OK);
    eng_backend *be;
    cr_assert_eq(eng_backend_cpu_new(m, 1, &be), RK_OK);
    size_t d = (size_t)eng_model_get_info(m)->dim;
    eng_hidden *h, *g;
    cr_assert_eq(eng_hidden_new(be, 5, &h), RK_OK);
    cr_assert_eq(eng_hidden_new(be, 3, &g), RK_OK);
    cr_expect_eq(eng_hidden_rows(h), 5);
    float *src = malloc(5 * d * sizeof(float)), *dst = malloc(5 * d * sizeof(float));
    for (size_t i = 0; i < 5 * d; i++)
        src[i] = (float)i * 0.5f;
    cr_assert_eq(eng_hidden_write(h, 0, 5, src), RK_OK);
    cr_assert_eq(eng_hidden_read(h, 1, 3, dst), RK_OK);
    cr_expect(memcmp(dst, src + d, 3 * d * sizeof(float)) == 0);
    size_t idx[3] = {4, 0, 2};
    cr_assert_eq(eng_hidden_gather(g, h, idx, 3), RK_OK);
    cr_assert_eq(eng_hidden_read(g, 0, 3, dst), RK_OK);
    for (int i = 0; i < 3; i++)
        cr_expect(memcmp(dst + (size_t)i * d, src + idx[i] * d, d * sizeof(float)) == 0, "row %d", i);
    size_t badidx[1] = {5};
    cr_expect_eq(eng_hidden_gather(g, h, badidx, 1), RK_ERR_RANGE);
    cr_expect_eq(eng_hidden_gather(h, h, idx, 1), RK_ERR_INVALID);
    cr_expect_eq(eng_hidden_write(h, 4, 2, src), RK_ERR_RANGE);
    cr_expect_eq(eng_hidden_read(h, 6, 0, dst), RK_ERR_RANGE);
    int32_t tok[2] = {5, 9};
    cr_assert_eq(eng_embed(be, h, 3, tok, 2), RK_OK);
    cr_assert_eq(eng_hidden_read(h, 3, 2, dst), RK_OK);
    cr_assert_eq(eng_hidden_read(h, 0, 1, src), RK_OK);
    cr_expect(memcmp(src, dst, d * sizeof(float)) != 0, "embedding written");
    cr_expect_eq(eng_embed(be, h, 4, tok, 2), RK_ERR_RANGE);
    free(src);
    free(dst);
    eng_hidden_free(h);
    eng_hidden_free(g);
    eng_backend_free(be);
    eng_model_close(m);
}

/* eng_layer_kv on a backend without its own (engine.c's reference: the whole layer on a copy
 * of the rows) writes the K/V the backend's own writes, bit for bit, and leaves h alone. */
Test(frontend, layer_kv_reference_equals_backend_layer_kv)
{
    eng_model *m;
    cr_assert_eq(eng_model_synth("test-qwen2", 4, &m), RK_OK);
    const eng_model_info *mi = eng_model_get_info(m);
    eng_backend *a, *b;
    cr_assert_eq(eng_backend_cpu_new(m, 1, &a), RK_OK);
    cr_assert_eq(eng_backend_cpu_new(m, 1, &b), RK_OK);
    struct eng_backend_i no_kv = *b->iface;
    no_kv.layer_kv = NULL;
    b->iface = &no_kv;
    enum { N = 6 };
    size_t d = (size_t)mi->dim;
    int32_t tok[N] = {3, 9, 4, 1, 7, 2}, pos[N] = {0, 1, 2, 5, 6, 7}, slots[N] = {1, 0, 2, 5, 3, 4};
    float *xa = malloc(N * d * sizeof(float)), *xb = malloc(N * d * sizeof(float));
    float *ka = malloc(eng_kv_floats(m, N) * sizeof(float)), *kb = malloc(eng_kv_floats(m, N) * sizeof(float));
    eng_seq *sa, *sb;
    eng_hidden *ha, *hb;
    cr_assert_eq(eng_seq_new(a, N, &sa), RK_OK);
    cr_assert_eq(eng_seq_new(b, N, &sb), RK_OK);
    cr_assert_eq(eng_hidden_new(a, N, &ha), RK_OK);
    cr_assert_eq(eng_hidden_new(b, N, &hb), RK_OK);
    cr_assert_eq(eng_embed(a, ha, 0, tok, N), RK_OK);
    cr_assert_eq(eng_embed(b, hb, 0, tok, N), RK_OK);
    for (int l = 0; l < mi->n_layers; l++) {
        cr_assert_eq(eng_layer_kv(sa, l, ha, N, pos, slots), RK_OK);
        cr_assert_eq(eng_layer_kv(sb, l, hb, N, pos, slots), RK_OK, "%s", rk_error_msg());
        cr_assert_eq(eng_hidden_read(ha, 0, N, xa), RK_OK);
        cr_assert_eq(eng_hidden_read(hb, 0, N, xb), RK_OK);
        cr_assert(memcmp(xa, xb, N * d * sizeof(float)) == 0, "layer %d: h changed", l);
    }
    cr_assert_eq(eng_kv_export(sa, 0, N, ka), RK_OK);
    cr_assert_eq(eng_kv_export(sb, 0, N, kb), RK_OK);
    cr_assert(memcmp(ka, kb, eng_kv_floats(m, N) * sizeof(float)) == 0);
    free(xa);
    free(xb);
    free(ka);
    free(kb);
    eng_hidden_free(ha);
    eng_hidden_free(hb);
    eng_seq_free(sa);
    eng_seq_free(sb);
    eng_backend_free(a);
    eng_backend_free(b);
    eng_model_close(m);
}

Test(frontend, composed_decode_equals_backend_decode)
{
    eng_model *m;
    cr_assert_eq(eng_model_synth("test-qwen2", 3, &m), RK_OK);
    eng_backend *a, *b;
    cr_assert_eq(eng_backend_cpu_new(m, 1, &a), RK_OK);
    cr_assert_eq(eng_backend_cpu_new(m, 1, &b), RK_OK);
    struct eng_backend_i no_decode = *b->iface;
    no_decode.decode = NULL;
    b->iface = &no_decode;
    size_t V = (size_t)eng_model_get_info(m)->vocab;
    eng_seq *sa[2], *sb[2];
    int32_t p0[3] = {1, 4, 5}, p1[2] = {1, 8};
    for (int i = 0; i < 2; i++) {
        cr_assert_eq(eng_seq_new(a, 16, &sa[i]), RK_OK);
        cr_assert_eq(eng_seq_new(b, 16, &sb[i]), RK_OK);
        cr_assert_eq(eng_prefill(sa[i], i ? p1 : p0, i ? 2 : 3, NULL, ENG_LOGITS_NONE, NULL), RK_OK);
        cr_assert_eq(eng_prefill(sb[i], i ? p1 : p0, i ? 2 : 3, NULL, ENG_LOGITS_NONE, NULL), RK_OK);
    }
    float *la = malloc(2 * V * sizeof(float)), *lb = malloc(2 * V * sizeof(float));
    for (int step = 0; step < 4; step++) {
        int32_t t[2] = {10 + step, 20 + step};
        cr_assert_eq(eng_decode(a, sa, t, 2, la), RK_OK);
        cr_assert_eq(eng_decode(b, sb, t, 2, lb), RK_OK, "%s", rk_error_msg());
        cr_expect(memcmp(la, lb, 2 * V * sizeof(float)) == 0, "step %d", step);
    }
    cr_expect_eq(eng_seq_len(sb[0]), 7);
    cr_expect_eq(eng_seq_next_pos(sb[1]), 6);
    free(la);
    free(lb);
    for (int i = 0; i < 2; i++) {
        eng_seq_free(sa[i]);
        eng_seq_free(sb[i]);
    }
    eng_backend_free(a);
    eng_backend_free(b);
    eng_model_close(m);
}
