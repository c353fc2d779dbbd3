/* test_container.c — the conformance suite every codec passes: round trips on edge-case
 * shapes and rows, rejected inputs, and corrupted, truncated or padded containers. */
#include "codec_testlib.h"

#include "ragkv/fp16.h"

/* Worst relative error (of the tensor's max magnitude) each codec may show at its
 * default level on synthetic KV; raw/lz4 are fp16 (2^-11 relative). */
static double tolerance(codec_id id)
{
    return id == CODEC_RAW || id == CODEC_LZ4 ? 1e-3 : id == CODEC_Q8 ? 0.01 : 0.2;
}

static void roundtrip_shape(codec_shape s, uint64_t seed)
{
    float *kv = synth(s, seed);
    size_t n = codec_shape_values(&s);
    float amax = 0;
    for (size_t i = 0; i < n; i++)
        amax = fmaxf(amax, fabsf(kv[i]));
    for (int c = 0; c < N_CODECS; c++) {
        rk_buf b = enc(kv, s, all_codecs[c], -1);
        codec_info info;
        cr_assert_eq(codec_inspect(b.data, b.len, &info), RK_OK);
        cr_assert_eq(info.codec, all_codecs[c]);
        cr_assert(info.shape.n_layers == s.n_layers && info.shape.n_tokens == s.n_tokens &&
                  info.shape.n_kv_heads == s.n_kv_heads && info.shape.head_dim == s.head_dim);
        cr_assert_eq(info.total_bytes, b.len);
        cr_assert_eq(info.payload_bytes + info.table_bytes + info.overhead_bytes, b.len);
        float *out = dec(&b, NULL);
        double worst = 0;
        for (size_t i = 0; i < n; i++)
            worst = fmax(worst, fabs((double)out[i] - kv[i]));
        cr_assert(worst <= tolerance(all_codecs[c]) * amax, "%s shape %u,%u,%u,%u: error %g of %g",
                  codec_id_name(all_codecs[c]), s.n_layers, s.n_tokens, s.n_kv_heads, s.head_dim,
                  worst, (double)amax);
        rk_free(out);
        rk_buf_free(&b);
    }
    rk_free(kv);
}

Test(container, roundtrip_one_token) { roundtrip_shape((codec_shape){3, 1, 2, 8}, 1); }
Test(container, roundtrip_256_tokens) { roundtrip_shape((codec_shape){2, 256, 2, 16}, 2); }
Test(container, roundtrip_257_tokens_odd_dims) { roundtrip_shape((codec_shape){1, 257, 3, 5}, 3); }
Test(container, roundtrip_one_layer_one_head) { roundtrip_shape((codec_shape){1, 40, 1, 1}, 4); }

Test(container, constant_and_zero_rows)
{
    codec_shape s = {2, 20, 2, 8};
    size_t n = codec_shape_values(&s);
    float *kv = rk_calloc(n, sizeof(float));
    /* layer 0 all zero; layer 1: constant 3.25 rows on even tokens, zeros on odd */
    for (size_t i = n / 2; i < n; i++)
        kv[i] = ((i / 16) % 2) ? 0.0f : 3.25f;
    for (int c = 0; c < N_CODECS; c++) {
        for (int lv = 0; lv <= 4; lv++) {
            int maxl;
            codec_levels(all_codecs[c], NULL, &maxl);
            if (lv > maxl)
                break;
            rk_buf b = enc(kv, s, all_codecs[c], lv);
            float *out = dec(&b, NULL);
            /* zeros stay exactly zero; a constant row's max lands within the fp16
             * rounding of its scale (2^-11 relative, times at most 2 for rounding) */
            for (size_t i = 0; i < n; i++)
                cr_assert(kv[i] == 0 ? out[i] == 0 : fabsf(out[i] - kv[i]) <= kv[i] / 1024,
                          "%s L%d: value %zu is %g, want %g", codec_id_name(all_codecs[c]), lv,
                          i, (double)out[i], (double)kv[i]);
            rk_free(out);
            rk_buf_free(&b);
        }
    }
    rk_free(kv);
}

Test(container, nonfinite_and_out_of_range_rejected)
{
    codec_shape s = {1, 4, 1, 4};
    float kv[32] = {0};
    const float bad[] = {NAN, INFINITY, -INFINITY, 70000.0f, -65520.0f};
    for (int c = 0; c < N_CODECS; c++)
        for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
            kv[17] = bad[k];
            codec_params p = codec_params_default(all_codecs[c]);
            rk_buf b = RK_BUF_INIT;
            cr_assert_eq(codec_encode(kv, &s, &p, &b), RK_ERR_RANGE, "%s accepted %g",
                         codec_id_name(all_codecs[c]), (double)bad[k]);
            cr_assert_eq(b.len, 0);
            rk_buf_free(&b);
        }
    kv[17] = 65504.0f; /* the largest fp16 is fine */
    rk_buf b = enc(kv, s, CODEC_RAW, 0);
    float *out = dec(&b, NULL);
    cr_assert_eq(out[17], 65504.0f);
    rk_free(out);
    rk_buf_free(&b);
}

Test(container, bad_arguments)
{
    codec_shape s = {1, 4, 1, 4}, zero = {1, 0, 1, 4};
    float kv[32] = {0};
    codec_params p = codec_params_default(CODEC_Q8);
    rk_buf b = RK_BUF_INIT;
    cr_assert_eq(codec_encode(kv, &zero, &p, &b), RK_ERR_INVALID);
    p.level = 5;
    cr_assert_eq(codec_encode(kv, &s, &p, &b), RK_ERR_RANGE);
    p = codec_params_default((codec_id)99);
    cr_assert_eq(codec_encode(kv, &s, &p, &b), RK_ERR_INVALID);
    codec_id id;
    cr_assert_eq(codec_id_parse("cachegen", &id), RK_OK);
    cr_assert_eq(id, CODEC_CACHEGEN);
    cr_assert_eq(codec_id_parse("zstd", &id), RK_ERR_NOT_FOUND);
    b = enc(kv, s, CODEC_RAW, 0);
    uint8_t small[8];
    cr_assert_eq(codec_decode(b.data, b.len, NULL, CODEC_F32, small, sizeof small), RK_ERR_INVALID);
    rk_buf_free(&b);
}

Test(container, output_dtypes_agree)
{
    codec_shape s = {2, 33, 2, 8};
    float *kv = synth(s, 9);
    size_t n = codec_shape_values(&s);
    uint16_t *h = rk_malloc(2 * n), *bf = rk_malloc(2 * n);
    for (int c = 0; c < N_CODECS; c++) {
        rk_buf b = enc(kv, s, all_codecs[c], -1);
        float *f = dec(&b, NULL);
        cr_assert_eq(codec_decode(b.data, b.len, NULL, CODEC_F16, h, 2 * n), RK_OK);
        cr_assert_eq(codec_decode(b.data, b.len, NULL, CODEC_BF16, bf, 2 * n), RK_OK);
        for (size_t i = 0; i < n; i++) {
            cr_assert_eq(h[i], rk_f32_to_f16(f[i]), "%s f16 at %zu", codec_id_name(all_codecs[c]), i);
            cr_assert_eq(bf[i], rk_f32_to_bf16(f[i]), "%s bf16 at %zu", codec_id_name(all_codecs[c]), i);
        }
        rk_free(f);
        rk_buf_free(&b);
    }
    rk_free(h);
    rk_free(bf);
    rk_free(kv);
}

Test(container, parallel_decode_matches_serial)
{
    codec_shape s = {4, 300, 2, 16};
    float *kv = synth(s, 11);
    rk_pool *pool;
    cr_assert_eq(rk_pool_create(3, &pool), RK_OK);
    for (int c = 0; c < N_CODECS; c++) {
        codec_params p = codec_params_default(all_codecs[c]);
        p.pool = pool;
        rk_buf bp = RK_BUF_INIT;
        cr_assert_eq(codec_encode(kv, &s, &p, &bp), RK_OK);
        rk_buf bs = enc(kv, s, all_codecs[c], -1);
        cr_assert_eq(bp.len, bs.len, "%s: pooled encode differs", codec_id_name(all_codecs[c]));
        cr_assert_eq(memcmp(bp.data, bs.data, bs.len), 0);
        codec_decode_opts o = {.pool = pool};
        float *a = dec(&bs, &o), *b = dec(&bs, NULL);
        cr_assert_eq(memcmp(a, b, codec_shape_values(&s) * 4), 0);
        rk_free(a);
        rk_free(b);
        rk_buf_free(&bp);
        rk_buf_free(&bs);
    }
    rk_pool_free(pool);
    rk_free(kv);
}

/* Flip one bit at every byte position of a small container of each codec: never accepted. */
Test(container, every_corrupted_byte_rejected)
{
    codec_shape s = {2, 5, 2, 4};
    float *kv = synth(s, 5);
    size_t n = codec_shape_values(&s);
    float *out = rk_malloc(n * 4);
    for (int c = 0; c < N_CODECS; c++) {
        rk_buf b = enc(kv, s, all_codecs[c], -1);
        for (size_t i = 0; i < b.len; i++)
            for (int bit = 0; bit < 8; bit += 3) {
                b.data[i] ^= (uint8_t)(1 << bit);
                rk_status st = codec_decode(b.data, b.len, NULL, CODEC_F32, out, n * 4);
                cr_assert(st == RK_ERR_CORRUPT || st == RK_ERR_FORMAT ||
                              st == RK_ERR_UNSUPPORTED || st == RK_ERR_TRUNCATED,
                          "%s: flipped bit %d of byte %zu gave %s", codec_id_name(all_codecs[c]),
                          bit, i, rk_status_name(st));
                b.data[i] ^= (uint8_t)(1 << bit);
            }
        rk_buf_free(&b);
    }
    rk_free(out);
    rk_free(kv);
}

Test(container, every_truncation_and_padding_rejected)
{
    codec_shape s = {2, 5, 2, 4};
    float *kv = synth(s, 6);
    size_t n = codec_shape_values(&s);
    float *out = rk_malloc(n * 4);
    for (int c = 0; c < N_CODECS; c++) {
        rk_buf b = enc(kv, s, all_codecs[c], -1);
        for (size_t len = 0; len < b.len; len++) {
            rk_status st = codec_decode(b.data, len, NULL, CODEC_F32, out, n * 4);
            cr_assert(st == RK_ERR_TRUNCATED || st == RK_ERR_FORMAT, "%s cut at %zu: %s",
                      codec_id_name(all_codecs[c]), len, rk_status_name(st));
            if (len >= 8) { /* the header is readable from 8 bytes on: inspect agrees */
                codec_info info;
                cr_assert_neq(codec_inspect(b.data, len, &info), RK_OK);
            }
        }
        rk_buf_put_u8(&b, 0);
        cr_assert_eq(codec_decode(b.data, b.len, NULL, CODEC_F32, out, n * 4), RK_ERR_FORMAT);
        rk_buf_free(&b);
    }
    rk_free(out);
    rk_free(kv);
}

Test(container, version_and_magic)
{
    codec_shape s = {1, 2, 1, 4};
    float kv[16] = {1, 2, 3};
    rk_buf b = enc(kv, s, CODEC_RAW, 0);
    float out[16];
    b.data[4] = 2; /* a future version */
    cr_assert_eq(codec_decode(b.data, b.len, NULL, CODEC_F32, out, sizeof out), RK_ERR_UNSUPPORTED);
    b.data[4] = 1;
    b.data[0] = 'X';
    cr_assert_eq(codec_decode(b.data, b.len, NULL, CODEC_F32, out, sizeof out), RK_ERR_FORMAT);
    rk_buf_free(&b);
}

Test(container, limit_on_claimed_size)
{
    codec_shape s = {2, 64, 2, 8};
    float *kv = synth(s, 8);
    rk_buf b = enc(kv, s, CODEC_CACHEGEN, 1);
    size_t n = codec_shape_values(&s);
    float *out = rk_malloc(n * 4);
    codec_decode_opts o = {.max_values = n - 1};
    cr_assert_eq(codec_decode(b.data, b.len, &o, CODEC_F32, out, n * 4), RK_ERR_LIMIT);
    o.max_values = n;
    cr_assert_eq(codec_decode(b.data, b.len, &o, CODEC_F32, out, n * 4), RK_OK);
    rk_free(out);
    rk_free(kv);
    rk_buf_free(&b);
}
