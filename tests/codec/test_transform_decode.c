/* test_transform_decode.c — CPU decoding of transform containers (docs/codec.md, "Transform
 * coding"). The reference is the scalar decoder's two passes (RAGKV_CODEC_SIMD=0: the
 * coefficients with the codebook's reconstruction points, then cg_transform_row row by row);
 * the one-pass decoders must give its bits: AVX2 rows (RAGKV_CODEC_SIMD=avx2) and, where the
 * CPU has AVX-512, the 16-token tiles (the default). Every dtype, 1, 7, 256 and 300 tokens
 * (a partial tile, a partial second stream block), blocks of the whole head, smaller ones
 * and ones across heads, 32 to 512 channels, K predicted from V (one to eight AVX2 chains), a shape that stays on two passes,
 * codec_decode, a thread pool and layer ranges; damaged streams get the same status.
 * White-box in part: the alphabets and the matrices are read through codec/codec_impl.h to
 * check that the cases exercise what they are meant to. */
#include "codec_testlib.h"
#include <stdio.h>

#include "ragkv/thread.h"

#include "../../codec/codec_impl.h"

/* What RAGKV_CODEC_SIMD selects: the reference, the AVX2 one pass, the default. */
static const char *const modes[3] = {"0", "avx2", NULL};
static const char *const mode_name[3] = {"reference", "AVX2 one pass", "default"};

static int have_avx2(void) { return __builtin_cpu_supports("avx2"); }

/* Synthetic KV whose channels are coupled within each head (synth's rows times I + A, A
 * uniform in [-0.8, 0.8] / sqrt(D), fixed), so that a learned transform is not the identity. */
static float *coupled(codec_shape s, uint64_t seed)
{
    return synth_coupled(s, seed, 777, 0.8f / sqrtf((float)s.head_dim));
}

/* A transform codebook of B-channel blocks for s (any token count), trained on 128 tokens:
 * coupled channels and varied weights, or (equal) synth's KV with equal weights, whose
 * outlier channels fill 63-symbol alphabets. */
static codec_codebook *train_tf(codec_shape s, uint32_t B, int equal, int level, int predict_k)
{
    s.n_tokens = 128;
    size_t nw = (size_t)s.n_layers * 2 * s.n_kv_heads * s.head_dim;
    float *w = rk_malloc(nw * sizeof *w), *tr = equal ? synth(s, 4001) : coupled(s, 4001);
    cr_assert(w);
    for (size_t i = 0; i < nw; i++)
        w[i] = equal ? 1.0f : (float)(1 + i % 7);
    codec_params p = codec_params_default(CODEC_CACHEGEN);
    p.level = level;
    p.weights = w;
    p.transform_block = (int)B;
    p.predict_k = predict_k;
    codec_codebook *cb = NULL;
    const float *samples[1] = {tr};
    cr_assert_eq(codec_codebook_train(samples, &s, 1, &p, &cb), RK_OK, "%s", rk_error_msg());
    rk_free(w);
    rk_free(tr);
    return cb;
}

/* Decode data into dtype with decoder mode m (and pool when set): a fresh buffer, or NULL
 * with *st set when decoding fails. */
static void *decode_mode(const rk_buf *b, const codec_codebook *cb, rk_pool *pool, int m,
                         codec_dtype dt, size_t *n, rk_status *st)
{
    codec_info info;
    cr_assert_eq(codec_inspect(b->data, b->len, &info), RK_OK);
    *n = codec_decoded_bytes(&info, dt);
    void *out = rk_malloc(*n);
    cr_assert_not_null(out);
    if (modes[m])
        cr_assert_eq(setenv("RAGKV_CODEC_SIMD", modes[m], 1), 0);
    else
        cr_assert_eq(unsetenv("RAGKV_CODEC_SIMD"), 0);
    codec_decode_opts o = {.codebook = cb, .pool = pool};
    *st = codec_decode(b->data, b->len, &o, dt, out, *n);
    unsetenv("RAGKV_CODEC_SIMD");
    if (*st != RK_OK) {
        rk_free(out);
        return NULL;
    }
    return out;
}

/* Every mode, with and without a pool, and the default mode layer by layer, against the
 * reference in every dtype. */
static void modes_match(const rk_buf *b, const codec_codebook *cb, rk_pool *pool,
                        const char *what)
{
    for (int d = 0; d < 3; d++) {
        codec_dtype dt = (codec_dtype)d;
        size_t n, m;
        rk_status st;
        unsigned char *ref = decode_mode(b, cb, NULL, 0, dt, &n, &st);
        cr_assert_not_null(ref, "%s: reference: %s (%s)", what, rk_strerror(st), rk_error_msg());
        for (int k = 1; k < 3; k++)
            for (int withpool = 0; withpool < 2; withpool++) {
                unsigned char *x = decode_mode(b, cb, withpool ? pool : NULL, k, dt, &m, &st);
                cr_assert_not_null(x, "%s: %s: %s", what, mode_name[k], rk_strerror(st));
                size_t i = 0;
                while (i < n && x[i] == ref[i])
                    i++;
                cr_assert_eq(i, n, "%s dtype %d %s%s: byte %zu of %zu differs from the reference",
                             what, d, mode_name[k], withpool ? " (pool)" : "", i, n);
                rk_free(x);
            }
        /* layer by layer through one reader, last layer first */
        codec_info info;
        cr_assert_eq(codec_inspect(b->data, b->len, &info), RK_OK);
        size_t lb = n / info.shape.n_layers;
        unsigned char *y = rk_malloc(n);
        cr_assert_not_null(y);
        memset(y, 0xa5, n);
        codec_decode_opts o = {.codebook = cb};
        codec_reader *r;
        cr_assert_eq(codec_reader_open(b->data, b->len, &o, &r), RK_OK, "%s", rk_error_msg());
        for (int l = (int)info.shape.n_layers - 1; l >= 0; l--)
            cr_assert_eq(codec_reader_decode_layers(r, dt, l, 1, y + (size_t)l * lb, lb), RK_OK);
        codec_reader_close(r);
        cr_assert_eq(memcmp(y, ref, n), 0, "%s dtype %d: layer by layer differs", what, d);
        rk_free(y);
        rk_free(ref);
    }
}

/* Whether any of the codebook's models has an alphabet above 32 symbols (the AVX-512
 * stage's second permute) and any at most 32. */
static void alphabets(const codec_codebook *cb, int *wide, int *narrow)
{
    size_t nm;
    const rans_model *m = cg_codebook_models(cb, &nm);
    *wide = *narrow = 0;
    for (size_t i = 0; i < nm; i++) {
        *wide |= m[i].nsym > 32;
        *narrow |= m[i].nsym <= 32;
    }
}

/* Whether some block of the codebook's transform (for shape s) is not the identity. */
static int learned_axes(const codec_codebook *cb, codec_shape s)
{
    const cg_transform *tf = cg_codebook_transform(cb);
    size_t blocks = (size_t)s.n_layers * 2 * s.n_kv_heads * s.head_dim / tf->B;
    for (size_t b = 0; b < blocks; b++)
        for (uint32_t c = 0; c < tf->B; c++)
            for (uint32_t i = 0; i < tf->B; i++)
                if (tf->dec[(b * tf->B + c) * tf->B + i] != (c == i ? 1.0f : 0.0f))
                    return 1;
    return 0;
}

Test(transform_decode, one_pass_equals_reference, .timeout = 300)
{
    if (!have_avx2())
        cr_skip_test("skipped: this CPU has no AVX2, only the reference decoder runs");
    struct {
        codec_shape s; /* n_tokens set below */
        uint32_t B;
        int equal, level, predict_k;
    } cases[] = {
        {{2, 0, 2, 64}, 64, 0, 1, 0},  /* B = head_dim, 128 channels: two chains */
        {{2, 0, 4, 128}, 16, 0, 1, 0}, /* B < head_dim, 512 channels: eight chains */
        {{2, 0, 4, 128}, 32, 1, 1, 0}, /* equal weights: 63-symbol alphabets */
        {{2, 0, 8, 16}, 16, 0, 2, 0},  /* B = head_dim = 16 */
        {{2, 0, 8, 8}, 8, 1, 0, 0},    /* B = head_dim = 8, 64 channels: one chain; level 0 */
        {{2, 0, 9, 16}, 16, 0, 1, 0},  /* 144 channels: stays on two passes, same bits */
        {{2, 0, 4, 16}, 64, 0, 1, 0},  /* a block over all four heads (babyllama105's shape) */
        {{2, 0, 4, 8}, 32, 0, 1, 0},   /* the same on 32 channels (stories260K's): two passes */
        {{2, 0, 8, 16}, 32, 0, 2, 0},  /* blocks of two heads */
        {{2, 0, 4, 16}, 64, 0, 1, 1}, /* K from V: two passes in every mode, K rows from V rows */
        {{2, 0, 4, 128}, 16, 0, 1, 1},
    };
    const uint32_t tokens[4] = {1, 7, 256, 300};
    rk_pool *pool;
    cr_assert_eq(rk_pool_create(2, &pool), RK_OK);
    int saw_wide = 0, saw_narrow = 0;
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        codec_codebook *cb = train_tf(cases[k].s, cases[k].B, cases[k].equal, cases[k].level, cases[k].predict_k);
        int wide, narrow;
        alphabets(cb, &wide, &narrow);
        saw_wide |= wide;
        saw_narrow |= narrow;
        if (!cases[k].equal)
            cr_assert(learned_axes(cb, cases[k].s), "case %zu: the identity everywhere", k);
        for (int ti = 0; ti < 4; ti++) {
            codec_shape s = cases[k].s;
            s.n_tokens = tokens[ti];
            float *kv = cases[k].equal ? synth(s, 50 + k) : coupled(s, 50 + k);
            rk_buf b = enc_cb(kv, s, cb);
            char what[96];
            snprintf(what, sizeof what, "%u x %u x %u, %u tokens, B %u%s", s.n_layers,
                     s.n_kv_heads, s.head_dim, s.n_tokens, cases[k].B,
                     cases[k].equal ? ", equal weights" : "");
            modes_match(&b, cb, pool, what);
            rk_buf_free(&b);
            rk_free(kv);
        }
        codec_codebook_free(cb);
    }
    cr_assert(saw_wide && saw_narrow, "alphabets: wide %d, narrow %d", saw_wide, saw_narrow);
    rk_pool_free(pool);
}

/* Damaged streams of a one-pass container (behind valid checksums): initial states the
 * AVX2 decoder hands back to the scalar one, flipped bytes, bytes moved between streams.
 * Every mode gives the reference's status and, where a damaged container still decodes, its
 * bytes. */
Test(transform_decode, damaged_streams_as_the_reference, .timeout = 300)
{
    if (!have_avx2())
        cr_skip_test("skipped: this CPU has no AVX2, only the reference decoder runs");
    codec_shape s = {2, 300, 4, 128};
    codec_codebook *cb = train_tf(s, 16, 0, 1, 0);
    float *kv = coupled(s, 91);
    rk_buf b = enc_cb(kv, s, cb);
    uint8_t *c = rk_malloc(b.len);
    cr_assert_not_null(c);
    uint64_t r = 5;
    int failed = 0, tries = 0;
    for (int kind = 0; kind < 3; kind++)
        for (int it = 0; it < 8; it++) {
            memcpy(c, b.data, b.len);
            damage_stream(c, kind, it, &r);
            rk_buf d = {.data = c, .len = b.len};
            for (int dt = 0; dt < 3; dt += 2) {
                size_t n, m;
                rk_status st0, st;
                unsigned char *ref = decode_mode(&d, cb, NULL, 0, (codec_dtype)dt, &n, &st0);
                for (int md = 1; md < 3; md++) {
                    unsigned char *x = decode_mode(&d, cb, NULL, md, (codec_dtype)dt, &m, &st);
                    cr_assert_eq(st, st0, "damage %d.%d: %s %s, reference %s", kind, it,
                                 mode_name[md], rk_strerror(st), rk_strerror(st0));
                    if (ref)
                        cr_assert_eq(memcmp(x, ref, n), 0, "damage %d.%d: %s decodes differently",
                                     kind, it, mode_name[md]);
                    rk_free(x);
                }
                failed += dt == 0 && !ref;
                rk_free(ref);
            }
            tries++;
        }
    cr_assert_gt(failed, tries / 2, "only %d of %d damaged containers were rejected", failed, tries);
    rk_free(c);
    rk_free(kv);
    rk_buf_free(&b);
    codec_codebook_free(cb);
}
