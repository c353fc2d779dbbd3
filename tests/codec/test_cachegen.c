/* test_cachegen.c — cachegen specifics: bit-exact symbol round trip through quantizer and
 * rANS, dequantization error bounds (scale modes, delta coding), levels, codebooks. */
#include "codec_testlib.h"
#include "ragkv/bytes.h"
#include "ragkv/hash.h"

/* Decoding exact_kv() must return the input bit for bit; this checks every symbol through
 * the rANS coder and back. */
static void exact_symbols_in(codec_shape s, int level, int kmode, int group, uint64_t seed)
{
    float *kv = exact_kv(s, level, seed);
    codec_params p = codec_params_default(CODEC_CACHEGEN);
    p.level = level;
    p.k_scale_mode = kmode;
    p.v_scale_mode = kmode;
    p.group = group;
    rk_buf b = RK_BUF_INIT;
    cr_assert_eq(codec_encode(kv, &s, &p, &b), RK_OK, "%s", rk_error_msg());
    float *out = dec(&b, NULL);
    cr_assert_eq(memcmp(out, kv, codec_shape_values(&s) * 4), 0,
                 "level %d mode %d group %d: not bit-exact", level, kmode, group);
    rk_free(out);
    rk_free(kv);
    rk_buf_free(&b);
}

static void exact_symbols(int level, int kmode, int group, uint64_t seed)
{
    exact_symbols_in((codec_shape){4, 300, 2, 8}, level, kmode, group, seed);
}

Test(cachegen, bit_exact_symbol_roundtrip)
{
    for (int level = 0; level <= 4; level++) {
        exact_symbols(level, CODEC_SCALE_CHANNEL, -1, 1 + (uint64_t)level);
        exact_symbols(level, CODEC_SCALE_TOKEN, 3, 7 + (uint64_t)level);
    }
    exact_symbols(1, CODEC_SCALE_CHANNEL, 1, 99);
    exact_symbols(1, CODEC_SCALE_TOKEN, 16, 98);
    /* 9 heads x 16 = 144 channels = 18 groups of 8: the AVX2 decoder takes groups 0-15 of each
     * block in twos of eight, the scalar one the last two; 300 tokens: a partial block */
    for (int level = 0; level <= 4; level++)
        exact_symbols_in((codec_shape){3, 300, 9, 16}, level, CODEC_SCALE_CHANNEL, -1, 50 + (uint64_t)level);
}

/* Decode with the AVX2 decoder and with the scalar one (RAGKV_CODEC_SIMD=0) into dtype: the
 * same status and, when they succeed, the same bytes. Returns the status. */
static rk_status decode_both(const uint8_t *data, size_t len, const codec_decode_opts *o,
                             codec_dtype dt, const char *what)
{
    codec_info info;
    cr_assert_eq(codec_inspect(data, len, &info), RK_OK, "%s: %s", what, rk_error_msg());
    size_t n = codec_decoded_bytes(&info, dt);
    unsigned char *x = rk_malloc(n), *y = rk_malloc(n);
    cr_assert(x && y);
    cr_assert_eq(unsetenv("RAGKV_CODEC_SIMD"), 0);
    rk_status a = codec_decode(data, len, o, dt, x, n);
    cr_assert_eq(setenv("RAGKV_CODEC_SIMD", "0", 1), 0);
    rk_status b = codec_decode(data, len, o, dt, y, n);
    unsetenv("RAGKV_CODEC_SIMD");
    cr_assert_eq(a, b, "%s dtype %d: AVX2 decoder %s, scalar %s", what, (int)dt, rk_strerror(a),
                 rk_strerror(b));
    if (a == RK_OK)
        cr_assert_eq(memcmp(x, y, n), 0, "%s dtype %d: AVX2 and scalar decoders differ", what, (int)dt);
    rk_free(x);
    rk_free(y);
    return a;
}

/* Encode kv at level (with cb when set) and check the two decoders agree in every dtype. */
static void simd_equals_scalar(const float *kv, codec_shape s, int level, codec_codebook *cb,
                               const char *what)
{
    const codec_dtype dts[3] = {CODEC_F32, CODEC_F16, CODEC_BF16};
    codec_params p = codec_params_default(CODEC_CACHEGEN);
    p.level = level;
    p.codebook = cb;
    rk_buf b = RK_BUF_INIT;
    cr_assert_eq(codec_encode(kv, &s, &p, &b), RK_OK, "%s", rk_error_msg());
    codec_decode_opts o = {.codebook = cb};
    for (int d = 0; d < 3; d++)
        cr_assert_eq(decode_both(b.data, b.len, &o, dts[d], what), RK_OK, "%s: %s", what,
                     rk_error_msg());
    rk_buf_free(&b);
}

/* The AVX2 eight-stream decoder and the scalar decoder give the same bytes: every level,
 * f32/f16/bf16 output, per-chunk tables and a codebook, Llama-like head width; 512 channels
 * run all eight chains, and mostly-zero KV gives models with one dominant symbol (frequency
 * 65536 minus one for each other symbol). */
Test(cachegen, simd_decoder_equals_scalar)
{
    if (!__builtin_cpu_supports("avx2"))
        cr_skip_test("skipped: this CPU has no AVX2, only the scalar decoder runs");
    const codec_shape shapes[2] = {{4, 260, 4, 64}, {2, 300, 4, 128}};
    for (int si = 0; si < 2; si++) {
        codec_shape s = shapes[si];
        float *kv = synth(s, 4242 + (uint64_t)si);
        codec_codebook *cb = NULL;
        const float *samples[1] = {kv};
        codec_params cp = codec_params_default(CODEC_CACHEGEN);
        cp.level = 1;
        cr_assert_eq(codec_codebook_train(samples, &s, 1, &cp, &cb), RK_OK, "%s", rk_error_msg());
        for (int level = 0; level <= 4; level++)
            simd_equals_scalar(kv, s, level, NULL, "tables");
        simd_equals_scalar(kv, s, 1, cb, "codebook");
        size_t n = codec_shape_values(&s);
        for (size_t i = 0; i < n; i++) /* a few spikes: every other value quantizes to 0 */
            if (i % 997 && i % (s.head_dim + 1))
                kv[i] = 0.0f;
        for (int level = 0; level <= 4; level += 2)
            simd_equals_scalar(kv, s, level, NULL, "mostly zero, tables");
        simd_equals_scalar(kv, s, 1, cb, "mostly zero, codebook");
        codec_codebook_free(cb);
        rk_free(kv);
    }
}

/* Damaged entropy-coded streams (behind valid checksums): the AVX2 and scalar decoders agree
 * on the status and, where a damaged stream still decodes, on the values. Damage: initial
 * states outside [2^23, 2^31), flipped bytes, bytes moved between neighbouring streams,
 * streams shorter than their 4-byte state. */
Test(cachegen, simd_and_scalar_agree_on_damaged_streams)
{
    if (!__builtin_cpu_supports("avx2"))
        cr_skip_test("skipped: this CPU has no AVX2, only the scalar decoder runs");
    codec_shape s = {2, 300, 4, 128};
    float *kv = synth(s, 77);
    codec_codebook *cb = NULL;
    const float *samples[1] = {kv};
    codec_params cp = codec_params_default(CODEC_CACHEGEN);
    cr_assert_eq(codec_codebook_train(samples, &s, 1, &cp, &cb), RK_OK, "%s", rk_error_msg());
    codec_decode_opts o = {.codebook = cb};
    uint64_t r = 99;
    int failed = 0, tries = 0;
    for (int withcb = 0; withcb < 2; withcb++) {
        codec_params p = codec_params_default(CODEC_CACHEGEN);
        p.codebook = withcb ? cb : NULL;
        rk_buf b = RK_BUF_INIT;
        cr_assert_eq(codec_encode(kv, &s, &p, &b), RK_OK, "%s", rk_error_msg());
        uint8_t *c = rk_malloc(b.len);
        cr_assert_not_null(c);
        for (int kind = 0; kind < 4; kind++)
            for (int it = 0; it < 8; it++) {
                memcpy(c, b.data, b.len);
                damage_stream(c, kind, it, &r);
                tries++;
                failed += decode_both(c, b.len, &o, CODEC_F16, withcb ? "codebook" : "tables") != RK_OK;
            }
        rk_free(c);
        rk_buf_free(&b);
    }
    cr_assert_gt(failed, tries / 2, "only %d of %d damaged containers were rejected", failed, tries);
    codec_codebook_free(cb);
    rk_free(kv);
}

/* |x - decoded| <= step / 2 (+ the fp16 rounding of the step), where the step is
 * max|target| / qmax over the scale's group: per (token, head) row or per channel, and the
 * target is x or, for delta-coded tokens, x minus the decoded anchor. */
static void check_bounds(int level, int kmode, int vmode, int anchor)
{
    codec_shape s = {3, 70, 2, 8};
    uint32_t C = s.n_kv_heads * s.head_dim, D = s.head_dim;
    float *kv = synth(s, 21 + (uint64_t)level);
    codec_params p = codec_params_default(CODEC_CACHEGEN);
    p.level = level;
    p.k_scale_mode = kmode;
    p.v_scale_mode = vmode;
    p.anchor_interval = anchor;
    rk_buf b = RK_BUF_INIT;
    cr_assert_eq(codec_encode(kv, &s, &p, &b), RK_OK, "%s", rk_error_msg());
    float *out = dec(&b, NULL);
    float *target = rk_malloc(sizeof(float) * s.n_tokens * C);
    for (uint32_t l = 0; l < s.n_layers; l++)
        for (int k = 0; k < 2; k++) {
            int qm = qmax_of(level, s.n_layers, l, k), mode = k ? vmode : kmode;
            for (uint32_t t = 0; t < s.n_tokens; t++) {
                uint32_t a = anchor ? t / anchor * anchor : t; /* one 256-token block here */
                for (uint32_t c = 0; c < C; c++)
                    target[t * C + c] = kv[at(s, l, k, t, c)] -
                                        (a != t ? out[at(s, l, k, a, c)] : 0.0f);
            }
            for (uint32_t t = 0; t < s.n_tokens; t++) {
                int res = anchor && t % anchor;
                for (uint32_t c = 0; c < C; c++) {
                    float m = 0;
                    if (mode == CODEC_SCALE_TOKEN)
                        for (uint32_t d = 0; d < D; d++)
                            m = fmaxf(m, fabsf(target[t * C + c / D * D + d]));
                    else
                        for (uint32_t u = 0; u < s.n_tokens; u++)
                            if ((anchor && u % anchor) == res)
                                m = fmaxf(m, fabsf(target[u * C + c]));
                    float err = fabsf(out[at(s, l, k, t, c)] - kv[at(s, l, k, t, c)]);
                    float bound = m / (float)qm * 0.5f * 1.02f + 1e-6f;
                    cr_assert(err <= bound, "L%d kmode %d anchor %d: layer %u %c token %u "
                              "channel %u: error %g > %g", level, kmode, anchor, l, k ? 'V' : 'K',
                              t, c, (double)err, (double)bound);
                }
            }
        }
    rk_free(target);
    rk_free(out);
    rk_free(kv);
    rk_buf_free(&b);
}

Test(cachegen, error_bounds_channel_and_token_scales)
{
    for (int level = 0; level <= 4; level++) {
        check_bounds(level, CODEC_SCALE_CHANNEL, CODEC_SCALE_TOKEN, 0);
        check_bounds(level, CODEC_SCALE_TOKEN, CODEC_SCALE_CHANNEL, 0);
    }
}

Test(cachegen, error_bounds_delta_coding)
{
    check_bounds(1, CODEC_SCALE_CHANNEL, CODEC_SCALE_TOKEN, 10);
    check_bounds(0, CODEC_SCALE_TOKEN, CODEC_SCALE_TOKEN, 4);
    check_bounds(2, CODEC_SCALE_CHANNEL, CODEC_SCALE_CHANNEL, 1); /* every token an anchor */
}

Test(cachegen, delta_across_stream_blocks)
{
    /* 600 tokens: three 256-token blocks, anchors restart at each block */
    codec_shape s = {1, 600, 1, 8};
    float *kv = synth(s, 31);
    codec_params p = codec_params_default(CODEC_CACHEGEN);
    p.anchor_interval = 10;
    rk_buf b = RK_BUF_INIT;
    cr_assert_eq(codec_encode(kv, &s, &p, &b), RK_OK);
    float *out = dec(&b, NULL);
    double e = 0, x = 0;
    for (size_t i = 0; i < codec_shape_values(&s); i++) {
        e += (out[i] - kv[i]) * (double)(out[i] - kv[i]);
        x += kv[i] * (double)kv[i];
    }
    cr_assert(sqrt(e / x) < 0.2, "relative L2 %g", sqrt(e / x));
    rk_free(out);
    rk_free(kv);
    rk_buf_free(&b);
}

Test(cachegen, levels_trade_size_for_error)
{
    codec_shape s = {6, 128, 2, 32};
    float *kv = synth(s, 41);
    size_t prev_len = SIZE_MAX;
    double prev_err = 0;
    for (int level = 0; level <= 4; level++) {
        rk_buf b = enc(kv, s, CODEC_CACHEGEN, level);
        float *out = dec(&b, NULL);
        double e = 0;
        for (size_t i = 0; i < codec_shape_values(&s); i++)
            e += (out[i] - kv[i]) * (double)(out[i] - kv[i]);
        cr_assert_lt(b.len, prev_len, "level %d not smaller", level);
        cr_assert_gt(e, prev_err, "level %d not coarser", level);
        prev_len = b.len;
        prev_err = e;
        rk_free(out);
        rk_buf_free(&b);
    }
    /* default level: well under q8's size on realistic KV, even with per-chunk tables */
    rk_buf q8 = enc(kv, s, CODEC_Q8, 0), cg = enc(kv, s, CODEC_CACHEGEN, -1);
    cr_assert_lt(cg.len * 3, q8.len * 2);
    rk_buf_free(&q8);
    rk_buf_free(&cg);
    rk_free(kv);
}

static rk_status resolver(void *ctx, uint64_t id, const codec_codebook **out)
{
    const codec_codebook *cb = ctx;
    if (codec_codebook_id(cb) != id)
        return RK_ERR_NOT_FOUND;
    *out = cb;
    return RK_OK;
}

Test(cachegen, codebook_train_serialise_use)
{
    codec_shape s = {3, 64, 2, 16};
    float *tr[3];
    codec_shape sh[3];
    for (int i = 0; i < 3; i++) {
        sh[i] = s;
        tr[i] = synth(s, (5ull << 32) | (uint64_t)(100 + i)); /* chunks of one model */
    }
    codec_params p = codec_params_default(CODEC_CACHEGEN);
    p.level = 2;
    codec_codebook *cb, *cb2;
    cr_assert_eq(codec_codebook_train((const float *const *)tr, sh, 3, &p, &cb), RK_OK, "%s",
                 rk_error_msg());
    cr_assert_eq(codec_codebook_level(cb), 2);
    cr_assert_neq(codec_codebook_id(cb), 0);
    rk_buf ser = RK_BUF_INIT;
    cr_assert_eq(codec_codebook_serialize(cb, &ser), RK_OK);
    cr_assert_eq(codec_codebook_parse(ser.data, ser.len, &cb2), RK_OK, "%s", rk_error_msg());
    cr_assert_eq(codec_codebook_id(cb2), codec_codebook_id(cb));

    float *kv = synth(s, (5ull << 32) | 7);
    p.codebook = cb2;
    rk_buf withcb = RK_BUF_INIT;
    cr_assert_eq(codec_encode(kv, &s, &p, &withcb), RK_OK, "%s", rk_error_msg());
    rk_buf tables = enc(kv, s, CODEC_CACHEGEN, 2);
    codec_info info;
    cr_assert_eq(codec_inspect(withcb.data, withcb.len, &info), RK_OK);
    cr_assert_eq(info.codebook_id, codec_codebook_id(cb));
    cr_assert_eq(info.table_bytes, 0);
    cr_assert_lt(withcb.len, tables.len, "a codebook container carries no tables");

    size_t n = codec_shape_values(&s);
    float *out = rk_malloc(n * 4);
    cr_assert_eq(codec_decode(withcb.data, withcb.len, NULL, CODEC_F32, out, n * 4),
                 RK_ERR_NOT_FOUND);
    codec_decode_opts o = {.resolve = resolver, .resolve_ctx = cb};
    float *a = dec(&withcb, &o), *b = dec(&tables, NULL);
    /* same quantizer, different entropy-coder tables: identical values */
    cr_assert_eq(memcmp(a, b, n * 4), 0);

    /* wrong geometry */
    codec_shape other = {3, 64, 2, 8};
    float *kv2 = synth(other, 1);
    rk_buf x = RK_BUF_INIT;
    cr_assert_eq(codec_encode(kv2, &other, &p, &x), RK_ERR_INVALID);
    /* a damaged codebook */
    codec_codebook_free(cb2);
    ser.data[ser.len / 2] ^= 1;
    cr_assert_eq(codec_codebook_parse(ser.data, ser.len, &cb2), RK_ERR_CORRUPT);
    cr_assert_null(cb2);
    cr_assert_eq(codec_codebook_parse(ser.data, 10, &cb2), RK_ERR_TRUNCATED);

    codec_codebook_free(NULL);
    codec_codebook_free(cb);
    for (int i = 0; i < 3; i++)
        rk_free(tr[i]);
    rk_free(kv);
    rk_free(kv2);
    rk_free(out);
    rk_free(a);
    rk_free(b);
    rk_buf_free(&ser);
    rk_buf_free(&withcb);
    rk_buf_free(&tables);
    rk_buf_free(&x);
}

/* Squared error of channel c (all layers, K and V, all tokens) and of every other channel. */
static void channel_errors(const float *kv, const float *out, codec_shape s, uint32_t c,
                           double *in_c, double *others)
{
    uint32_t C = s.n_kv_heads * s.head_dim;
    *in_c = *others = 0;
    for (size_t i = 0; i < codec_shape_values(&s); i++) {
        double d = (double)out[i] - kv[i];
        *(i % C == c ? in_c : others) += d * d;
    }
}

/* The weighted rate allocation (docs/codec.md): a channel weighted 10^4 times the others gets
 * a finer step and far less error, and the weighted error falls, for about the level's size; equal
 * weights code every channel of a plane with one step; the AVX2 and scalar decoders agree on
 * its containers (alphabets up to 63 symbols); bad weights are refused. */
Test(cachegen, weighted_allocation)
{
    codec_shape s = {3, 256, 4, 64};
    uint32_t C = s.n_kv_heads * s.head_dim, hot = 5;
    size_t nw = (size_t)s.n_layers * 2 * C;
    float *kv = synth(s, (9ull << 32) | 3), *w = rk_malloc(nw * sizeof(float));
    cr_assert_not_null(w);
    for (size_t i = 0; i < nw; i++)
        w[i] = i % C == hot ? 1e4f : 1.0f;
    rk_buf plain = enc(kv, s, CODEC_CACHEGEN, 2), wtd = RK_BUF_INIT;
    codec_params p = codec_params_default(CODEC_CACHEGEN);
    p.level = 2;
    p.weights = w;
    cr_assert_eq(codec_encode(kv, &s, &p, &wtd), RK_OK, "%s", rk_error_msg());
    float *a = dec(&plain, NULL), *b = dec(&wtd, NULL);
    double ha, oa, hb, ob;
    channel_errors(kv, a, s, hot, &ha, &oa);
    channel_errors(kv, b, s, hot, &hb, &ob);
    /* the alphabet (at most 63 symbols) bounds the gain: 1/31 of the range at best */
    cr_assert_lt(hb * 20, ha, "hot channel: %g, unweighted %g", hb, ha);
    /* the objective, weighted squared error, falls (the other channels' error may fall too:
     * equal weights even out the outlier channels' coarse steps) */
    cr_assert_lt(1e4 * hb + ob, 1e4 * ha + oa);
    cr_assert(wtd.len < plain.len * 1.25 && wtd.len > plain.len * 0.75, "%zu vs %zu bytes",
              wtd.len, plain.len);
    if (__builtin_cpu_supports("avx2"))
        for (int d = 0; d < 3; d++)
            cr_assert_eq(decode_both(wtd.data, wtd.len, NULL, (codec_dtype)d, "weighted"), RK_OK);

    /* equal weights: one step per (layer, K|V) for every channel whose range it covers, so
     * each decoded value is a multiple of one of few steps; check channel pairs of a plane
     * whose decoded values share a non-zero magnitude ratio of an integer */
    for (size_t i = 0; i < nw; i++)
        w[i] = 1.0f;
    rk_buf eq = RK_BUF_INIT;
    cr_assert_eq(codec_encode(kv, &s, &p, &eq), RK_OK, "%s", rk_error_msg());
    float *e = dec(&eq, NULL);
    for (uint32_t lkv = 0; lkv < 2 * s.n_layers; lkv++) {
        float step = 0; /* the smallest non-zero magnitude of the plane is one step */
        for (size_t i = 0; i < (size_t)s.n_tokens * C; i++) {
            float v = fabsf(e[lkv * s.n_tokens * C + i]);
            if (v > 0 && (step == 0 || v < step))
                step = v;
        }
        size_t on_grid = 0, nz = 0;
        for (size_t i = 0; i < (size_t)s.n_tokens * C; i++) {
            float v = fabsf(e[lkv * s.n_tokens * C + i]) / step;
            nz += v > 0;
            on_grid += v > 0 && fabsf(v - rintf(v)) < 1e-3f;
        }
        cr_assert_gt(on_grid, nz * 9 / 10, "plane %u: %zu of %zu values on one grid", lkv,
                     on_grid, nz);
    }

    /* refused: a negative or NaN weight, all zero, token scales */
    w[7] = -1.0f;
    rk_buf x = RK_BUF_INIT;
    cr_assert_eq(codec_encode(kv, &s, &p, &x), RK_ERR_INVALID);
    w[7] = NAN;
    cr_assert_eq(codec_encode(kv, &s, &p, &x), RK_ERR_INVALID);
    memset(w, 0, nw * sizeof(float));
    cr_assert_eq(codec_encode(kv, &s, &p, &x), RK_ERR_INVALID);
    w[0] = 1.0f;
    p.k_scale_mode = CODEC_SCALE_TOKEN;
    cr_assert_eq(codec_encode(kv, &s, &p, &x), RK_ERR_INVALID);
    cr_assert_eq(x.len, 0);
    rk_free(kv);
    rk_free(w);
    rk_free(a);
    rk_free(b);
    rk_free(e);
    rk_buf_free(&plain);
    rk_buf_free(&wtd);
    rk_buf_free(&eq);
}

/* A codebook trained with weights stores its steps (format version 2) and round-trips; the
 * encoder uses them (the same container from the original and the parsed codebook); one
 * trained without keeps version 1; a step that is not a finite non-negative number is a
 * format error even under a valid checksum. */
Test(cachegen, weighted_codebook)
{
    codec_shape s = {2, 128, 2, 16};
    uint32_t C = s.n_kv_heads * s.head_dim;
    size_t nw = (size_t)s.n_layers * 2 * C;
    float *tr[2], *w = rk_malloc(nw * sizeof(float));
    codec_shape sh[2] = {s, s};
    for (int i = 0; i < 2; i++)
        tr[i] = synth(s, (6ull << 32) | (uint64_t)(10 + i));
    for (size_t i = 0; i < nw; i++)
        w[i] = (float)(1 + i % 7);
    codec_params p = codec_params_default(CODEC_CACHEGEN);
    p.level = 1;
    codec_codebook *plain, *cb, *cb2;
    cr_assert_eq(codec_codebook_train((const float *const *)tr, sh, 2, &p, &plain), RK_OK);
    p.weights = w;
    cr_assert_eq(codec_codebook_train((const float *const *)tr, sh, 2, &p, &cb), RK_OK, "%s",
                 rk_error_msg());
    cr_assert_neq(codec_codebook_id(cb), codec_codebook_id(plain));
    rk_buf sp = RK_BUF_INIT, sw = RK_BUF_INIT;
    cr_assert_eq(codec_codebook_serialize(plain, &sp), RK_OK);
    cr_assert_eq(codec_codebook_serialize(cb, &sw), RK_OK);
    cr_assert_eq(rk_get_le16(sp.data + 4), 1);
    cr_assert_eq(rk_get_le16(sw.data + 4), 2);
    cr_assert_eq(codec_codebook_parse(sw.data, sw.len, &cb2), RK_OK, "%s", rk_error_msg());
    cr_assert_eq(codec_codebook_id(cb2), codec_codebook_id(cb));

    float *kv = synth(s, (6ull << 32) | 99);
    rk_buf a = RK_BUF_INIT, b = RK_BUF_INIT;
    codec_params e = codec_params_default(CODEC_CACHEGEN);
    e.codebook = cb;
    cr_assert_eq(codec_encode(kv, &s, &e, &a), RK_OK, "%s", rk_error_msg());
    e.codebook = cb2;
    cr_assert_eq(codec_encode(kv, &s, &e, &b), RK_OK);
    cr_assert_eq(a.len, b.len);
    cr_assert_eq(memcmp(a.data, b.data, a.len), 0);
    codec_decode_opts o = {.codebook = cb2};
    float *out = dec(&a, &o);
    double err = 0, x2 = 0;
    for (size_t i = 0; i < codec_shape_values(&s); i++) {
        err += (out[i] - kv[i]) * (double)(out[i] - kv[i]);
        x2 += kv[i] * (double)kv[i];
    }
    cr_assert_lt(sqrt(err / x2), 0.3, "relative L2 %g", sqrt(err / x2));

    /* the steps are the last 4 * nw bytes before the checksum; make one NaN and reseal */
    codec_codebook *bad = NULL;
    size_t at_step = sw.len - 8 - 4 * nw;
    cr_assert_eq(rk_get_le32(sw.data + at_step - 4), nw);
    rk_put_le32(sw.data + at_step, 0x7fc00000u);
    rk_put_le64(sw.data + sw.len - 8, rk_xxh3_64(sw.data, sw.len - 8));
    cr_assert_eq(codec_codebook_parse(sw.data, sw.len, &bad), RK_ERR_FORMAT);
    cr_assert_null(bad);
    /* a version-1 codebook carrying steps: its length no longer fits */
    rk_put_le16(sw.data + 4, 1);
    rk_put_le64(sw.data + sw.len - 8, rk_xxh3_64(sw.data, sw.len - 8));
    cr_assert_eq(codec_codebook_parse(sw.data, sw.len, &bad), RK_ERR_FORMAT);

    codec_codebook_free(plain);
    codec_codebook_free(cb);
    codec_codebook_free(cb2);
    for (int i = 0; i < 2; i++)
        rk_free(tr[i]);
    rk_free(w);
    rk_free(kv);
    rk_free(out);
    rk_buf_free(&sp);
    rk_buf_free(&sw);
    rk_buf_free(&a);
    rk_buf_free(&b);
}

/* ---- transform coding (docs/codec.md, "Transform coding") ----------------------------------
 * White-box in part: the error bound reads the codebook's transform, steps and alphabets
 * through codec/codec_impl.h. */

#include "../../codec/codec_impl.h"
#include "ragkv/fp16.h"

/* Synthetic KV whose channels are coupled within each head: synth's rows mixed by one fixed
 * matrix (I + 0.8 R, R uniform in [-1, 1], the same for every seed: one "model"), so that
 * a learned transform has correlations to find. */
static float *coupled_kv(codec_shape s, uint64_t seed)
{
    cr_assert_leq(s.head_dim, 16);
    return synth_coupled(s, seed, 12345, 0.8f);
}

static double weighted_sq_error(const float *a, const float *b, const float *w, codec_shape s)
{
    uint32_t C = s.n_kv_heads * s.head_dim;
    double e = 0;
    for (size_t i = 0; i < codec_shape_values(&s); i++) {
        size_t lkv = i / ((size_t)s.n_tokens * C);
        double d = (double)a[i] - b[i];
        e += w[lkv * C + i % C] * d * d;
    }
    return e;
}

/* A serialised codebook with the u32 at `at` set to v and the version set to `version`,
 * resealed (so the parser's checks, not the checksum, decide): refused as a format error. */
struct cb_damage {
    size_t at;
    uint32_t v;
    unsigned version;
};

static void expect_damage_refused(const rk_buf *ser, const struct cb_damage *bad, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        rk_buf c = RK_BUF_INIT;
        rk_buf_append(&c, ser->data, ser->len);
        rk_put_le32(c.data + bad[i].at, bad[i].v);
        rk_put_le16(c.data + 4, (uint16_t)bad[i].version);
        rk_put_le64(c.data + c.len - 8, rk_xxh3_64(c.data, c.len - 8));
        codec_codebook *x = NULL;
        cr_expect_eq(codec_codebook_parse(c.data, c.len, &x), RK_ERR_FORMAT, "case %zu: %s", i, rk_error_msg());
        cr_expect_null(x);
        codec_codebook_free(x);
        rk_buf_free(&c);
    }
}

/* Two training tensors from gen (seeds seed0, seed0 + 1) and weights 1 + i % 7 for s. */
static float *train_pair(codec_shape s, float *(*gen)(codec_shape, uint64_t), uint64_t seed0, float *tr[2])
{
    size_t nw = (size_t)s.n_layers * 2 * s.n_kv_heads * s.head_dim;
    float *w = rk_malloc(nw * sizeof(float));
    cr_assert_not_null(w);
    for (int i = 0; i < 2; i++)
        tr[i] = gen(s, seed0 + (uint64_t)i);
    for (size_t i = 0; i < nw; i++)
        w[i] = (float)(1 + i % 7);
    return w;
}

/* A transform codebook (format version 3) on coupled channels: fewer bytes and less weighted
 * error than the weighted allocation alone at the same level; it round-trips through
 * serialisation (same id, the same containers); f16 output is the f32 output rounded; the
 * AVX2 decoder (with reconstruction points; 128 channels) and the scalar decoder agree; and
 * every coefficient's error is within its
 * step (the bin's width: the reconstruction point and the value share the bin). */
Test(cachegen, transform_codebook)
{
    codec_shape s = {3, 256, 2, 16};
    uint32_t C = s.n_kv_heads * s.head_dim, B = 16;
    size_t n = codec_shape_values(&s);
    float *tr[2], *w = train_pair(s, coupled_kv, (6ull << 32) | 10, tr);
    codec_shape sh[2] = {s, s};
    codec_params p = codec_params_default(CODEC_CACHEGEN);
    p.level = 1;
    p.weights = w;
    codec_codebook *wcb, *tcb, *tcb2;
    cr_assert_eq(codec_codebook_train((const float *const *)tr, sh, 2, &p, &wcb), RK_OK);
    p.transform_block = (int)B;
    cr_assert_eq(codec_codebook_train((const float *const *)tr, sh, 2, &p, &tcb), RK_OK, "%s",
                 rk_error_msg());
    float *kv = coupled_kv(s, (6ull << 32) | 99);
    rk_buf a = enc_cb(kv, s, wcb), b = enc_cb(kv, s, tcb);
    codec_decode_opts wo = {.codebook = wcb}, to = {.codebook = tcb};
    float *da = dec(&a, &wo), *db = dec(&b, &to);
    double ea = weighted_sq_error(kv, da, w, s), eb = weighted_sq_error(kv, db, w, s);
    cr_assert_lt(b.len, a.len * 0.85, "transform %zu bytes, weighted %zu", b.len, a.len);
    cr_assert_lt(eb, ea, "weighted squared error: transform %g, weighted %g", eb, ea);

    rk_buf ser = RK_BUF_INIT, b2 = RK_BUF_INIT;
    cr_assert_eq(codec_codebook_serialize(tcb, &ser), RK_OK);
    cr_assert_eq(rk_get_le16(ser.data + 4), 3);
    cr_assert_eq(codec_codebook_parse(ser.data, ser.len, &tcb2), RK_OK, "%s", rk_error_msg());
    cr_assert_eq(codec_codebook_id(tcb2), codec_codebook_id(tcb));
    codec_params e = codec_params_default(CODEC_CACHEGEN);
    e.codebook = tcb2;
    cr_assert_eq(codec_encode(kv, &s, &e, &b2), RK_OK, "%s", rk_error_msg());
    cr_assert(b2.len == b.len && !memcmp(b2.data, b.data, b.len), "parsed codebook codes differently");

    uint16_t *h = rk_malloc(n * 2);
    cr_assert_eq(codec_decode(b.data, b.len, &to, CODEC_F16, h, n * 2), RK_OK);
    for (size_t i = 0; i < n; i++)
        cr_assert_eq(h[i], rk_f32_to_f16(db[i]), "value %zu: f16 %04x, f32 %g", i, h[i], (double)db[i]);
    if (__builtin_cpu_supports("avx2"))
        for (int d = 0; d < 3; d++)
            cr_assert_eq(decode_both(b.data, b.len, &to, (codec_dtype)d, "transform"), RK_OK);
    cr_assert_eq(codec_decode(b.data, b.len, NULL, CODEC_F16, h, n * 2), RK_ERR_NOT_FOUND);
    if (__builtin_cpu_supports("avx2")) { /* 128 channels: the AVX2 decoder's chains take them */
        codec_shape wide = {2, 300, 8, 16};
        size_t nww = (size_t)wide.n_layers * 2 * 8 * 16;
        float *ww = rk_malloc(nww * sizeof(float)), *wk = coupled_kv(wide, 7), *wk2 = coupled_kv(wide, 8);
        for (size_t i = 0; i < nww; i++)
            ww[i] = (float)(1 + i % 11);
        codec_params wp = codec_params_default(CODEC_CACHEGEN);
        wp.weights = ww;
        wp.transform_block = 16;
        codec_codebook *wcb2;
        const float *wtr[1] = {wk};
        cr_assert_eq(codec_codebook_train(wtr, &wide, 1, &wp, &wcb2), RK_OK, "%s", rk_error_msg());
        rk_buf wb = enc_cb(wk2, wide, wcb2);
        codec_decode_opts wo2 = {.codebook = wcb2};
        for (int d = 0; d < 3; d++)
            cr_assert_eq(decode_both(wb.data, wb.len, &wo2, (codec_dtype)d, "transform, wide"), RK_OK);
        rk_buf_free(&wb);
        codec_codebook_free(wcb2);
        rk_free(ww);
        rk_free(wk);
        rk_free(wk2);
    }

    /* the bound, per coefficient: |enc (decoded - x)| <= its scale, the fp16 of
     * max(step, chunk's coefficient range / qmax) (+ the fp16 rounding and float error) */
    const cg_transform *tf = cg_codebook_transform(tcb);
    const float *steps = cg_codebook_steps(tcb);
    const cg_params *cp = cg_codebook_params(tcb);
    cr_assert(tf && steps && tf->B == B);
    double *y = rk_malloc(n * sizeof(double)), *yd = rk_malloc(n * sizeof(double));
    cr_assert(y && yd);
    for (size_t row = 0; row < n / B; row++) {
        size_t lkv = row * B / ((size_t)s.n_tokens * C), c0 = row * B % C;
        const float *m = tf->enc + (lkv * C + c0) * B, *mu = tf->mean + lkv * C + c0;
        for (uint32_t i = 0; i < B; i++) {
            double u = 0, v = 0;
            for (uint32_t c = 0; c < B; c++) {
                u += (double)m[i * B + c] * ((double)kv[row * B + c] - mu[c]);
                v += (double)m[i * B + c] * ((double)db[row * B + c] - mu[c]);
            }
            y[row * B + i] = u;
            yd[row * B + i] = v;
        }
    }
    for (size_t lkv = 0; lkv < 2 * (size_t)s.n_layers; lkv++)
        for (uint32_t c = 0; c < C; c++) {
            double cmax = 0, worst = 0;
            for (uint32_t t = 0; t < s.n_tokens; t++)
                cmax = fmax(cmax, fabs(y[(lkv * s.n_tokens + t) * C + c]));
            double sc = fmax(cmax / cp->qmax[lkv], steps[lkv * C + c]);
            for (uint32_t t = 0; t < s.n_tokens; t++) {
                size_t i = (lkv * s.n_tokens + t) * C + c;
                worst = fmax(worst, fabs(yd[i] - y[i]));
            }
            cr_assert_leq(worst, sc * (1 + 32.0 / 1024) + 1e-3 * (1 + cmax),
                          "plane %zu coefficient %u: error %g, scale %g", lkv, c, worst, sc);
        }

    codec_codebook_free(wcb);
    codec_codebook_free(tcb);
    codec_codebook_free(tcb2);
    for (int i = 0; i < 2; i++)
        rk_free(tr[i]);
    rk_free(w);
    rk_free(kv);
    rk_free(da);
    rk_free(db);
    rk_free(h);
    rk_free(y);
    rk_free(yd);
    rk_buf_free(&a);
    rk_buf_free(&b);
    rk_buf_free(&b2);
    rk_buf_free(&ser);
}

/* Refused: training a transform without weights, with a block that does not divide head_dim
 * or exceeds 64, or with token scales; a version-3 codebook with a non-finite or too large
 * matrix entry, a reconstruction point more than a step from its grid point, a zero block,
 * or relabelled version 2 (each resealed, so the parser's checks and not the checksum
 * refuse it). */
Test(cachegen, transform_codebook_refused)
{
    codec_shape s = {2, 64, 2, 16};
    uint32_t C = s.n_kv_heads * s.head_dim, B = 8;
    size_t nw = (size_t)s.n_layers * 2 * C, nc = nw;
    float *kv = coupled_kv(s, 5), *w = rk_malloc(nw * sizeof(float));
    for (size_t i = 0; i < nw; i++)
        w[i] = 1.0f + (float)(i % 3);
    const float *tr[1] = {kv};
    codec_params p = codec_params_default(CODEC_CACHEGEN);
    codec_codebook *cb = NULL;
    p.transform_block = 8;
    cr_assert_eq(codec_codebook_train(tr, &s, 1, &p, &cb), RK_ERR_INVALID); /* no weights */
    p.weights = w;
    int bad_b[] = {5, 24, 64, 128, -2}; /* 2 x 16 = 32 channels: B must divide 32 */
    for (int i = 0; i < 5; i++) {
        p.transform_block = bad_b[i];
        cr_assert_eq(codec_codebook_train(tr, &s, 1, &p, &cb), RK_ERR_INVALID, "block %d", bad_b[i]);
    }
    p.transform_block = (int)B;
    p.k_scale_mode = CODEC_SCALE_TOKEN;
    cr_assert_eq(codec_codebook_train(tr, &s, 1, &p, &cb), RK_ERR_INVALID);
    cr_assert_null(cb);
    p.k_scale_mode = -1;
    cr_assert_eq(codec_codebook_train(tr, &s, 1, &p, &cb), RK_OK, "%s", rk_error_msg());
    rk_buf ser = RK_BUF_INIT;
    cr_assert_eq(codec_codebook_serialize(cb, &ser), RK_OK);
    size_t nr = 0; /* reconstruction points: one per symbol of every (plane, channel) model */
    for (size_t lkv = 0; lkv < 2 * (size_t)s.n_layers; lkv++)
        nr += (size_t)C * (2 * cg_codebook_params(cb)->qmax[lkv] + 1);
    size_t at_b = ser.len - 8 - 4 * (1 + nc + 2 * nc * B + nr);
    size_t at_dec = at_b + 4 + 4 * (nc + nc * B), at_rec = at_b + 4 + 4 * (nc + 2 * nc * B);
    cr_assert_eq(rk_get_le32(ser.data + at_b), B);
    const struct cb_damage bad[] = {{at_dec + 4 * 3, 0x7fc00000u, 3}, /* NaN in the decoding matrix */
                                    {at_dec, 0x4c000000u, 3},         /* 2^25 */
                                    {at_rec + 4 * 2, 0x40a00000u, 3}, /* 5.0: symbol 2 of a model */
                                    {at_b, 0, 3},                     /* block 0 */
                                    {at_b, B, 2},                     /* version 2 with a transform */
                                    {at_b, B, 4}};                    /* version 4 without a prediction */
    expect_damage_refused(&ser, bad, sizeof bad / sizeof bad[0]);
    codec_codebook_free(cb);
    rk_buf_free(&ser);
    rk_free(kv);
    rk_free(w);
}

/* Transform blocks across heads: where channels are coupled across heads (one mixing of the
 * token's 4 x 16 channels), a block of all 64 codes in fewer bytes than blocks of one head, at
 * no more weighted error; both decode on the AVX2 decoder as on the scalar one; and
 * codec_transform_block_default picks such blocks for small tokens only. */
Test(cachegen, transform_blocks_across_heads)
{
    codec_shape s = {2, 256, 4, 16};
    uint32_t C = s.n_kv_heads * s.head_dim;
    size_t nw = (size_t)s.n_layers * 2 * C;
    const float amp = 3.0f / sqrtf((float)C); /* strong enough that 64 x 64 axes pay for their estimate */
    float *tr[2], *w = rk_malloc(nw * sizeof(float));
    codec_shape sh[2] = {s, s};
    for (int i = 0; i < 2; i++)
        tr[i] = synth_coupled_heads(s, (13ull << 32) | (uint64_t)(20 + i), 4242, amp);
    for (size_t i = 0; i < nw; i++)
        w[i] = (float)(1 + i % 5);
    float *kv = synth_coupled_heads(s, (13ull << 32) | 99, 4242, amp);
    codec_params p = codec_params_default(CODEC_CACHEGEN);
    p.level = 1;
    p.weights = w;
    size_t bytes[2];
    double err[2];
    const uint32_t blocks[2] = {16, 64};
    for (int k = 0; k < 2; k++) {
        codec_codebook *cb;
        p.transform_block = (int)blocks[k];
        cr_assert_eq(codec_codebook_train((const float *const *)tr, sh, 2, &p, &cb), RK_OK, "%s", rk_error_msg());
        rk_buf b = enc_cb(kv, s, cb);
        codec_decode_opts o = {.codebook = cb};
        float *d = dec(&b, &o);
        bytes[k] = b.len;
        err[k] = weighted_sq_error(kv, d, w, s);
        if (__builtin_cpu_supports("avx2"))
            for (int t = 0; t < 3; t++)
                cr_assert_eq(decode_both(b.data, b.len, &o, (codec_dtype)t, "blocks across heads"), RK_OK);
        rk_free(d);
        rk_buf_free(&b);
        codec_codebook_free(cb);
    }
    cr_expect_lt(bytes[1], bytes[0] * 0.95, "block of 64: %zu bytes, of 16: %zu", bytes[1], bytes[0]);
    cr_expect_leq(err[1], err[0] * 1.05, "weighted squared error: block of 64 %g, of 16 %g", err[1], err[0]);
    const struct {
        codec_shape s;
        int B;
    } def[] = {{{5, 1, 4, 8}, 32}, {{5, 1, 4, 16}, 64}, {{2, 1, 2, 64}, 64}, {{32, 1, 8, 128}, 16}, {{2, 1, 1, 128}, 16}};
    for (size_t i = 0; i < sizeof def / sizeof def[0]; i++)
        cr_expect_eq(codec_transform_block_default(&def[i].s), def[i].B, "%u x %u: %d", def[i].s.n_kv_heads,
                     def[i].s.head_dim, codec_transform_block_default(&def[i].s));
    for (int i = 0; i < 2; i++)
        rk_free(tr[i]);
    rk_free(kv);
    rk_free(w);
}

/* synth's KV with every K channel leaning on a V channel of its block (K = 0.1 K + V of
 * the neighbouring channel): what a prediction of K from V has to find. */
static float *k_from_v_kv(codec_shape s, uint64_t seed)
{
    float *kv = synth(s, seed);
    size_t C = (size_t)s.n_kv_heads * s.head_dim, T = s.n_tokens;
    for (size_t l = 0; l < s.n_layers; l++)
        for (size_t t = 0; t < T; t++) {
            float *k = kv + (2 * l * T + t) * C;
            const float *v = kv + ((2 * l + 1) * T + t) * C;
            for (size_t c = 0; c < C; c++)
                k[c] = 0.1f * k[c] + v[c ^ 1];
        }
    return kv;
}

/* K predicted from V (codec_params.predict_k; params.transform 2, codebook version 4): on KV
 * whose K leans on V it codes in fewer bytes at less weighted error than the transform alone;
 * the codebook round-trips (same id, same containers) and its damaged prediction section is
 * refused; every decoder mode and the layer-range reader give the same bits; without a
 * transform the option is refused. */
Test(cachegen, transform_predicts_k_from_v)
{
    codec_shape s = {3, 256, 2, 16};
    uint32_t C = s.n_kv_heads * s.head_dim;
    size_t n = codec_shape_values(&s);
    float *tr[2], *w = train_pair(s, k_from_v_kv, (14ull << 32) | 30, tr);
    codec_shape sh[2] = {s, s};
    float *kv = k_from_v_kv(s, (14ull << 32) | 77);
    codec_params p = codec_params_default(CODEC_CACHEGEN);
    p.level = 1;
    p.weights = w;
    p.predict_k = 1;
    codec_codebook *cb[2];
    cr_assert_eq(codec_codebook_train((const float *const *)tr, sh, 2, &p, &cb[0]), RK_ERR_INVALID,
                 "K from V without a transform");
    rk_buf none = RK_BUF_INIT;
    cr_assert_eq(codec_encode(kv, &s, &p, &none), RK_ERR_INVALID, "K from V is a codebook option");
    rk_buf_free(&none);
    p.transform_block = 16;
    p.predict_k = 0;
    cr_assert_eq(codec_codebook_train((const float *const *)tr, sh, 2, &p, &cb[0]), RK_OK, "%s", rk_error_msg());
    p.predict_k = 1;
    cr_assert_eq(codec_codebook_train((const float *const *)tr, sh, 2, &p, &cb[1]), RK_OK, "%s", rk_error_msg());
    rk_buf b[2];
    double err[2];
    for (int k = 0; k < 2; k++) {
        b[k] = enc_cb(kv, s, cb[k]);
        codec_decode_opts o = {.codebook = cb[k]};
        float *d = dec(&b[k], &o);
        err[k] = weighted_sq_error(kv, d, w, s);
        rk_free(d);
    }
    /* a level keeps its rate (its steps follow the ranges, which the residuals shrink): the
     * gain is in the error */
    cr_expect_lt(b[1].len, b[0].len * 1.05, "K from V %zu bytes, the transform alone %zu", b[1].len, b[0].len);
    cr_expect_lt(err[1], err[0] * 0.5, "weighted squared error: K from V %g, the transform alone %g", err[1], err[0]);

    /* the codebook: version 4, round trip, the same containers */
    rk_buf ser = RK_BUF_INIT, b2 = RK_BUF_INIT;
    cr_assert_eq(codec_codebook_serialize(cb[1], &ser), RK_OK);
    cr_assert_eq(rk_get_le16(ser.data + 4), 4);
    codec_codebook *cb2;
    cr_assert_eq(codec_codebook_parse(ser.data, ser.len, &cb2), RK_OK, "%s", rk_error_msg());
    cr_assert_eq(codec_codebook_id(cb2), codec_codebook_id(cb[1]));
    codec_params e = codec_params_default(CODEC_CACHEGEN);
    e.codebook = cb2;
    cr_assert_eq(codec_encode(kv, &s, &e, &b2), RK_OK, "%s", rk_error_msg());
    cr_assert(b2.len == b[1].len && !memcmp(b2.data, b[1].data, b2.len), "parsed codebook codes differently");
    size_t np = (size_t)s.n_layers * C * 16, at_pred = ser.len - 8 - 4 * np;
    const struct cb_damage bad[] = {{at_pred + 4 * 5, 0x7fc00000u, 4}, /* NaN in a prediction matrix */
                                    {at_pred, 0x4c000000u, 4},         /* 2^25 */
                                    {at_pred, 0, 3}};                  /* version 3 with the prediction's flag */
    expect_damage_refused(&ser, bad, sizeof bad / sizeof bad[0]);

    /* decoders: every mode, every dtype; a container of the transform codebook is refused by
     * this one (the ids differ) */
    codec_decode_opts o = {.codebook = cb[1]};
    if (__builtin_cpu_supports("avx2"))
        for (int d = 0; d < 3; d++)
            cr_assert_eq(decode_both(b[1].data, b[1].len, &o, (codec_dtype)d, "K from V"), RK_OK);
    float *whole = dec(&b[1], &o);
    codec_reader *r;
    cr_assert_eq(codec_reader_open(b[1].data, b[1].len, &o, &r), RK_OK, "%s", rk_error_msg());
    size_t per = n / s.n_layers;
    float *part = rk_malloc(per * sizeof(float));
    for (int l = (int)s.n_layers - 1; l >= 0; l--) { /* ranges in any order */
        cr_assert_eq(codec_reader_decode_layers(r, CODEC_F32, l, 1, part, per * sizeof(float)), RK_OK);
        cr_assert_eq(memcmp(part, whole + per * (size_t)l, per * sizeof(float)), 0, "layer %d alone", l);
    }
    codec_reader_close(r);
    uint16_t *h = rk_malloc(n * 2);
    codec_decode_opts wrong = {.codebook = cb[0]};
    cr_expect_neq(codec_decode(b[1].data, b[1].len, &wrong, CODEC_F16, h, n * 2), RK_OK);
    rk_free(h);
    rk_free(part);
    rk_free(whole);
    rk_buf_free(&b2);
    rk_buf_free(&ser);
    for (int k = 0; k < 2; k++) {
        rk_buf_free(&b[k]);
        codec_codebook_free(cb[k]);
        rk_free(tr[k]);
    }
    codec_codebook_free(cb2);
    rk_free(kv);
    rk_free(w);
}

/* codec_params.step_scale: every step of the weighted allocation times S, per chunk and in a
 * codebook (its stored steps exactly S times the unscaled ones, transform or not); a larger S
 * costs fewer bytes and more error; refused without weights or out of [1/64, 64]. */
Test(cachegen, step_scale)
{
    codec_shape s = {2, 128, 2, 16};
    uint32_t C = s.n_kv_heads * s.head_dim;
    size_t nw = (size_t)s.n_layers * 2 * C, n = codec_shape_values(&s);
    float *kv = synth(s, (12ull << 32) | 5), *w = rk_malloc(nw * sizeof(float));
    cr_assert_not_null(w);
    for (size_t i = 0; i < nw; i++)
        w[i] = (float)(1 + i % 7);
    codec_params p = codec_params_default(CODEC_CACHEGEN);
    p.level = 1;
    p.weights = w;
    const float scale[3] = {0.5f, 0.0f, 2.0f};
    size_t bytes[3];
    double err[3];
    for (int k = 0; k < 3; k++) {
        rk_buf b = RK_BUF_INIT;
        p.step_scale = scale[k];
        cr_assert_eq(codec_encode(kv, &s, &p, &b), RK_OK, "%s", rk_error_msg());
        float *out = dec(&b, NULL);
        err[k] = 0;
        for (size_t i = 0; i < n; i++)
            err[k] += (out[i] - kv[i]) * (double)(out[i] - kv[i]);
        bytes[k] = b.len;
        rk_free(out);
        rk_buf_free(&b);
    }
    for (int k = 0; k < 2; k++) {
        cr_assert_gt(bytes[k], bytes[k + 1], "scale %g: %zu bytes, next %zu", (double)scale[k],
                     bytes[k], bytes[k + 1]);
        cr_assert_lt(err[k], err[k + 1], "scale %g: error %g, next %g", (double)scale[k],
                     err[k], err[k + 1]);
    }
    /* doubling the steps saves about a bit per value of the payload, more than half a bit */
    cr_assert_gt(8.0 * (double)(bytes[1] - bytes[2]) / (double)n, 0.5);

    /* codebooks: the stored steps scale exactly */
    float *tr = synth(s, (12ull << 32) | 6);
    const float *trp = tr;
    for (int transform = 0; transform < 2; transform++) {
        codec_codebook *a = NULL, *b = NULL;
        p.transform_block = transform ? (int)s.head_dim : 0;
        p.step_scale = 0.0f;
        cr_assert_eq(codec_codebook_train(&trp, &s, 1, &p, &a), RK_OK, "%s", rk_error_msg());
        p.step_scale = 2.0f;
        cr_assert_eq(codec_codebook_train(&trp, &s, 1, &p, &b), RK_OK, "%s", rk_error_msg());
        const float *sa = cg_codebook_steps(a), *sb = cg_codebook_steps(b);
        cr_assert(sa && sb);
        for (size_t i = 0; i < nw; i++)
            cr_assert_eq(sb[i], 2.0f * sa[i], "transform %d step %zu: %g vs %g", transform, i,
                         (double)sb[i], (double)sa[i]);
        codec_codebook_free(a);
        codec_codebook_free(b);
    }
    p.transform_block = 0;

    /* refused: out of range, NaN, or without weights (encode and training) */
    const float bad[] = {-1.0f, 1.0f / 128, 65.0f, NAN, INFINITY};
    rk_buf x = RK_BUF_INIT;
    codec_codebook *cb = NULL;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        p.step_scale = bad[i];
        cr_assert_eq(codec_encode(kv, &s, &p, &x), RK_ERR_INVALID, "scale %g", (double)bad[i]);
        cr_assert_eq(codec_codebook_train(&trp, &s, 1, &p, &cb), RK_ERR_INVALID);
    }
    p.step_scale = 2.0f;
    p.weights = NULL;
    cr_assert_eq(codec_encode(kv, &s, &p, &x), RK_ERR_INVALID);
    cr_assert_eq(codec_codebook_train(&trp, &s, 1, &p, &cb), RK_ERR_INVALID);
    cr_assert_eq(x.len, 0);
    cr_assert_null(cb);
    rk_free(kv);
    rk_free(tr);
    rk_free(w);
}
