/* codec_testlib.h — helpers shared by the codec tests (header-only: every test_*.c is its own
 * executable). */
#ifndef RAGKV_CODEC_TESTLIB_H
#define RAGKV_CODEC_TESTLIB_H

#include <criterion/criterion.h>
#include <math.h>
#include <string.h>

#include "ragkv/alloc.h"
#include "ragkv/bytes.h"
#include "ragkv/codec.h"
#include "ragkv/hash.h"

static const codec_id all_codecs[] = {CODEC_RAW, CODEC_LZ4, CODEC_Q8, CODEC_CACHEGEN};
#define N_CODECS 4

/* Encode kv with codec/level (asserting success) into a fresh buffer. */
static inline rk_buf enc(const float *kv, codec_shape s, codec_id id, int level)
{
    codec_params p = codec_params_default(id);
    p.level = level;
    rk_buf b = RK_BUF_INIT;
    rk_status st = codec_encode(kv, &s, &p, &b);
    cr_assert_eq(st, RK_OK, "encode %s L%d: %s", codec_id_name(id), level, rk_error_msg());
    return b;
}

/* A cachegen codebook trained on the one sample kv at the default level (asserting success);
 * caller codec_codebook_frees. */
static inline codec_codebook *train_on(const float *kv, codec_shape s)
{
    codec_codebook *cb = NULL;
    const float *samples[1] = {kv};
    codec_params p = codec_params_default(CODEC_CACHEGEN);
    rk_status st = codec_codebook_train(samples, &s, 1, &p, &cb);
    cr_assert_eq(st, RK_OK, "codebook: %s", rk_error_msg());
    return cb;
}

/* Encode kv with cachegen and codebook cb (asserting success) into a fresh buffer. */
static inline rk_buf enc_cb(const float *kv, codec_shape s, const codec_codebook *cb)
{
    codec_params p = codec_params_default(CODEC_CACHEGEN);
    p.codebook = cb;
    rk_buf b = RK_BUF_INIT;
    rk_status st = codec_encode(kv, &s, &p, &b);
    cr_assert_eq(st, RK_OK, "encode with a codebook: %s", rk_error_msg());
    return b;
}

/* Decode to float32, asserting success; caller rk_frees. */
static inline float *dec(const rk_buf *b, const codec_decode_opts *o)
{
    codec_info info;
    cr_assert_eq(codec_inspect(b->data, b->len, &info), RK_OK, "%s", rk_error_msg());
    size_t n = codec_decoded_bytes(&info, CODEC_F32);
    float *out = rk_malloc(n);
    cr_assert_not_null(out);
    rk_status st = codec_decode(b->data, b->len, o, CODEC_F32, out, n);
    cr_assert_eq(st, RK_OK, "decode: %s (%s)", rk_strerror(st), rk_error_msg());
    return out;
}

static inline float *synth(codec_shape s, uint64_t seed)
{
    float *kv = rk_malloc(codec_shape_values(&s) * sizeof(float));
    cr_assert_not_null(kv);
    codec_synth_kv(&s, seed, kv);
    return kv;
}

/* qmax per level as documented in docs/codec.md: {K early, K late, V early, V late};
 * early K layers are [0, ceil(L/3)), early V layers [0, 2). */
/* Synthetic KV whose channels are coupled within each head: synth(s, seed)'s rows mixed by
 * I + amp R, R uniform in [-1, 1] drawn from mix_seed (the same for every seed: one "model"),
 * so that a learned transform has correlations to find. */
static inline float *synth_coupled(codec_shape s, uint64_t seed, uint64_t mix_seed, float amp)
{
    float *kv = synth(s, seed);
    uint32_t D = s.head_dim;
    float *A = rk_malloc((size_t)D * D * sizeof *A), *tmp = rk_malloc(D * sizeof *tmp);
    cr_assert(A && tmp);
    uint64_t r = mix_seed;
    for (uint32_t i = 0; i < D * D; i++) {
        r = r * 6364136223846793005ull + 1442695040888963407ull;
        A[i] = (i / D == i % D) + amp * ((float)(r >> 40) / 8388608.0f - 1.0f);
    }
    for (size_t row = 0; row < codec_shape_values(&s) / D; row++) {
        float *x = kv + row * D;
        for (uint32_t d = 0; d < D; d++) {
            tmp[d] = 0;
            for (uint32_t e = 0; e < D; e++)
                tmp[d] += A[d * D + e] * x[e];
        }
        memcpy(x, tmp, D * sizeof *tmp);
    }
    rk_free(A);
    rk_free(tmp);
    return kv;
}

/* synth's KV with every token's kv_heads x head_dim channels of a (layer, K|V) mixed by one
 * fixed matrix I + amp * U(-1, 1) (mix_seed): channels coupled across heads too. */
static inline float *synth_coupled_heads(codec_shape s, uint64_t seed, uint64_t mix_seed, float amp)
{
    codec_shape t = s;
    t.head_dim = s.n_kv_heads * s.head_dim; /* the same values, one "head" per token */
    t.n_kv_heads = 1;
    float *kv = synth_coupled(t, seed, mix_seed, amp);
    return kv;
}

static const int doc_qmax[5][4] = {
    {31, 15, 31, 15}, {15, 7, 15, 7}, {7, 3, 7, 3}, {3, 2, 3, 1}, {2, 1, 1, 1}};

static inline int qmax_of(int level, uint32_t L, uint32_t l, int kv)
{
    uint32_t k_early = (L + 2) / 3;
    return kv == 0 ? doc_qmax[level][l < k_early ? 0 : 1] : doc_qmax[level][l < 2 ? 2 : 3];
}

/* Index of (layer l, K|V kv, token t, channel c) in the canonical layout. */
static inline size_t at(codec_shape s, uint32_t l, int kv, uint32_t t, uint32_t c)
{
    return (((size_t)l * 2 + kv) * s.n_tokens + t) * s.n_kv_heads * s.head_dim + c;
}

/* KV that cachegen at this level returns bit for bit (and raw and lz4 too: the values are
 * fp16-exact): multiples of the power-of-two step 0.25 within +-qmax steps, with every
 * channel (channel scales) and every head row (token scales) of each (layer, K|V) reaching
 * +qmax, so the scale is exactly 0.25. Deterministic in seed; caller rk_frees. */
static inline float *exact_kv(codec_shape s, int level, uint64_t seed)
{
    uint32_t C = s.n_kv_heads * s.head_dim;
    float *kv = rk_malloc(codec_shape_values(&s) * sizeof(float));
    cr_assert_not_null(kv);
    uint64_t r = seed;
    for (uint32_t l = 0; l < s.n_layers; l++)
        for (int k = 0; k < 2; k++) {
            int qm = qmax_of(level, s.n_layers, l, k);
            for (uint32_t t = 0; t < s.n_tokens; t++)
                for (uint32_t c = 0; c < C; c++) {
                    r = r * 6364136223846793005ull + 1442695040888963407ull;
                    int q = (int)((r >> 33) % (uint64_t)(2 * qm + 1)) - qm;
                    if (t == 0 || c % s.head_dim == 0)
                        q = qm;
                    kv[at(s, l, k, t, c)] = 0.25f * (float)q;
                }
        }
    return kv;
}

/* Recompute the section and header checksums of a container (docs/format.md 2.1, 2.2), so
 * that damage behind them reaches the decoders. */
static inline void reseal(uint8_t *p)
{
    size_t nsec = p[27];
    for (size_t i = 0; i < nsec; i++) {
        uint8_t *e = p + 48 + 32 * i;
        rk_put_le64(e + 24, rk_xxh3_64(p + rk_get_le64(e + 8), (size_t)rk_get_le64(e + 16)));
    }
    uint8_t tmp[40 + 16 * 32];
    memcpy(tmp, p, 40);
    memcpy(tmp + 40, p + 48, 32 * nsec);
    rk_put_le64(p + 40, rk_xxh3_64(tmp, 40 + 32 * nsec));
}

/* The section of this type: its bytes in the container. */
static inline uint8_t *section(uint8_t *p, uint32_t type, size_t *len)
{
    for (size_t i = 0; i < p[27]; i++) {
        uint8_t *e = p + 48 + 32 * i;
        if (rk_get_le32(e) == type) {
            *len = (size_t)rk_get_le64(e + 16);
            return p + rk_get_le64(e + 8);
        }
    }
    cr_assert_fail("no section %u", type);
    return NULL;
}

/* Damage one cachegen stream of container c in place and reseal it (so the decoder, not the
 * checksum, must notice): a stream with a right neighbour chosen by the LCG *r, then by kind —
 * 0: its initial state becomes the it-th of eight out-of-range or edge values; 1: one of its
 * bytes flips; 2: one byte moves to the neighbour (it odd) or back; 3: it becomes shorter
 * than a state (it % 4 bytes). */
static inline void damage_stream(uint8_t *c, int kind, int it, uint64_t *r)
{
    size_t plen, ilen;
    uint8_t *pay = section(c, 5, &plen), *idx = section(c, 4, &ilen);
    size_t ns = ilen / 4;
    *r = *r * 6364136223846793005ull + 1442695040888963407ull;
    size_t k = (size_t)(*r >> 33) % (ns - 1), at = 0;
    for (size_t i = 0; i < k; i++)
        at += rk_get_le32(idx + 4 * i);
    uint32_t len = rk_get_le32(idx + 4 * k), next = rk_get_le32(idx + 4 * k + 4);
    static const uint32_t states[8] = {0, 1, 0x7fffff, 0x80000000u, 0xffffffffu, 0x800000,
                                       0x7fffffff, 0x12345};
    if (kind == 0)
        rk_put_le32(pay + at, states[it % 8]);
    else if (kind == 1)
        pay[at + (*r >> 20) % len] ^= (uint8_t)(1 + (*r >> 12) % 255);
    else if (kind == 2) {
        int d = it % 2 ? 1 : -1;
        rk_put_le32(idx + 4 * k, len + (uint32_t)d);
        rk_put_le32(idx + 4 * k + 4, next - (uint32_t)d);
    } else {
        rk_put_le32(idx + 4 * k, (uint32_t)it % 4);
        rk_put_le32(idx + 4 * k + 4, next + len - (uint32_t)it % 4);
    }
    reseal(c);
}

/* Move the last byte of entry k of the INDEX section (lz4 blocks, cachegen streams) to entry
 * k + 1: entry k's decoder runs out of bytes, k + 1's reads garbage; the payload still adds
 * up. */
static inline void move_last_byte(rk_buf *b, size_t k)
{
    size_t ilen;
    uint8_t *idx = section(b->data, 4, &ilen);
    cr_assert_lt(4 * (k + 1), ilen);
    rk_put_le32(idx + 4 * k, rk_get_le32(idx + 4 * k) - 1);
    rk_put_le32(idx + 4 * k + 4, rk_get_le32(idx + 4 * k + 4) + 1);
}

#endif
