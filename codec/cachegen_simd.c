/* cachegen_simd.c — the cachegen entropy decoder, eight streams at once with AVX2.
 *
 * The scalar decoder (cachegen.c, decode_lanes) runs four rANS state chains in lockstep and
 * spends ~35 instructions per value. Here eight streams of one (layer, K|V, token block) —
 * eight neighbouring 8-channel groups, 64 consecutive channels — advance together, one value
 * of each per step, in the lanes of 256-bit vectors; up to eight such chains run interleaved.
 * Gathers are the cost on every CPU measured (one 8-lane gather takes ~15 cycles on the Zen 5
 * VM of docs/codec.md), so a step makes as few as it can, from the decode-only models
 * (rans_dmodel): one for the bucket, which gives the symbol directly unless its bucket holds a
 * second boundary (then a rarely taken loop that steps up or down); one for cum[s] and
 * cum[s+1] together;
 * and every second step one for the next four bytes of each stream, from which the
 * renormalisation (0, 1 or 2 bytes a step) shifts without branching. Values come out as
 * (q - qmax) * scale in float32, or, for a transform codebook's coefficients, recon[s] * scale
 * (one more gather: the model's row of 64 reconstruction points, s <= 63 as below), exactly
 * the scalar arithmetic; an 8x8 transpose turns the
 * eight lanes' values into one row of 64 channels for codec_store_row.
 *
 * A transform container decoded in one pass (j->tf, cachegen.c's cg_decode_layers) goes
 * through the inverse transform inside this decoder, while the batch's values are in L1:
 * - with AVX-512 (F and VL; j->tf_tiles): the decoder keeps only the symbols, 16 tokens at a
 *   time, and tf_tile_avx512 does the rest with tokens in the lanes of 512-bit vectors — the
 *   reconstruction points by permutes from the channel's row of 64 held in registers (the
 *   gather, one L2 line per value with 512 channels in flight, was the largest cost), the
 *   transform 16 tokens per instruction, 16x16 transposes back to rows;
 * - with AVX2 only: the gathered coefficient rows, four tokens at a time, through
 *   cg_transform_rows_avx2.
 * Both keep cg_transform's operations and order per value, so the bits are the reference's.
 *
 * Gathers never read outside their object, whatever the input: a bucket read (4 bytes at
 * bucket + 2*(slot >> 9)) ends at most 2 bytes into cum; a cum read (4 bytes at cum + 2*s)
 * has s <= nsym - 1 <= 63 (the bucket entries are built so, a step up stops at cum[nsym],
 * which reads back as 2^16 > slot, and a step down at cum[0] = 0 <= slot), so it ends inside
 * cum[66]; a stream read takes the 4 bytes
 * at min(off, end - 4), inside the stream since a stream has at least 4 bytes (near its end
 * the word is shifted so that byte off is on top, zeros below), and a lane that needs more
 * bytes than remain marks the block malformed.
 * Streams whose initial state lies outside [2^23, 2^31) (never from our encoder) go to the
 * scalar decoder, so that no step ever needs more than two bytes. */
#include "codec_impl.h"

#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

bool cg_simd8_ok(const struct cg_dec_job *j)
{
    static int cpu = -1; /* benign race: every thread computes the same answer */
    if (cpu < 0)
        cpu = __builtin_cpu_supports("avx2") ? 1 : 0;
    const char *e = getenv("RAGKV_CODEC_SIMD"); /* read per call: tests compare both paths */
    int avail = cpu && !(e && !strcmp(e, "0"));
    const cg_params *p = j->p;
    /* a transform codebook's containers need its reconstruction points in the job */
    return avail && p->group == 8 && !p->anchor_interval && (!p->transform || j->recon) &&
           p->k_scale_mode == CODEC_SCALE_CHANNEL &&
           p->v_scale_mode == CODEC_SCALE_CHANNEL && j->payload_len < 0x7fff0000u &&
           j->lay->n_models * sizeof(rans_dmodel) < 0x7fff0000u &&
           j->lay->n_models * CODEC_MAX_SYMBOLS * sizeof(float) < 0x7fff0000u;
}

/* 8x8 transpose of eight rows of eight floats. */
__attribute__((target("avx2"))) static inline void transpose8(__m256 r[8])
{
    __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
    __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
    __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
    __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
    __m256 s0 = _mm256_shuffle_ps(t0, t2, 0x44), s1 = _mm256_shuffle_ps(t0, t2, 0xEE);
    __m256 s2 = _mm256_shuffle_ps(t1, t3, 0x44), s3 = _mm256_shuffle_ps(t1, t3, 0xEE);
    __m256 s4 = _mm256_shuffle_ps(t4, t6, 0x44), s5 = _mm256_shuffle_ps(t4, t6, 0xEE);
    __m256 s6 = _mm256_shuffle_ps(t5, t7, 0x44), s7 = _mm256_shuffle_ps(t5, t7, 0xEE);
    r[0] = _mm256_permute2f128_ps(s0, s4, 0x20);
    r[1] = _mm256_permute2f128_ps(s1, s5, 0x20);
    r[2] = _mm256_permute2f128_ps(s2, s6, 0x20);
    r[3] = _mm256_permute2f128_ps(s3, s7, 0x20);
    r[4] = _mm256_permute2f128_ps(s0, s4, 0x31);
    r[5] = _mm256_permute2f128_ps(s1, s5, 0x31);
    r[6] = _mm256_permute2f128_ps(s2, s6, 0x31);
    r[7] = _mm256_permute2f128_ps(s3, s7, 0x31);
}

/* Channels [cb, cb + 8 NV) of one transform block (dect block mt, B x B, [i][c]; means mu)
 * for R rows: R x NV sums in flight (up to eight), each in cg_transform's order — from 0,
 * plus dect[i][c] * y[i] for i = 0..B-1, then plus the mean; separate multiply and add, as
 * cg_transform_row. */
static inline __attribute__((always_inline, target("avx2"))) void
tf_cols(const float *mt, uint32_t B, uint32_t cb, const float *mu, const float *y, size_t ys,
        float *x, size_t xs, const int R, const int NV)
{
    __m256 a[4][2]; /* in registers: the constant loops below are unrolled */
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 2
        for (int v = 0; v < NV; v++)
            a[r][v] = _mm256_setzero_ps();
    for (uint32_t i = 0; i < B; i++) {
        __m256 m[2];
#pragma GCC unroll 2
        for (int v = 0; v < NV; v++)
            m[v] = _mm256_loadu_ps(mt + (size_t)i * B + cb + 8 * (uint32_t)v);
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            __m256 yi = _mm256_broadcast_ss(y + (size_t)r * ys + i);
#pragma GCC unroll 2
            for (int v = 0; v < NV; v++)
                a[r][v] = _mm256_add_ps(a[r][v], _mm256_mul_ps(m[v], yi));
        }
    }
#pragma GCC unroll 2
    for (int v = 0; v < NV; v++) {
        __m256 m = _mm256_loadu_ps(mu + cb + 8 * (uint32_t)v);
#pragma GCC unroll 4
        for (int r = 0; r < R; r++)
            _mm256_storeu_ps(x + (size_t)r * xs + cb + 8 * (uint32_t)v, _mm256_add_ps(a[r][v], m));
    }
}

/* One block's columns for R rows, sixteen at a time while they last. */
static inline __attribute__((always_inline, target("avx2"))) void
tf_block(const float *mt, uint32_t B, const float *mu, const float *y, size_t ys, float *x,
         size_t xs, const int R)
{
    uint32_t cb = 0;
    for (; cb + 16 <= B; cb += 16)
        tf_cols(mt, B, cb, mu, y, ys, x, xs, R, 2);
    if (cb < B)
        tf_cols(mt, B, cb, mu, y, ys, x, xs, R, 1);
}

__attribute__((target("avx2"))) void cg_transform_rows_avx2(const cg_transform *tf, uint32_t C,
                                                          size_t lkv, uint32_t c0, uint32_t n,
                                                          const float *y, size_t ys, float *x,
                                                          size_t xs, uint32_t rows)
{
    uint32_t B = tf->B;
    for (uint32_t c = c0; c < c0 + n; c += B) {
        const float *mt = tf->dect + (lkv * C + c) * B, *mu = tf->mean + lkv * C + c;
        uint32_t r = 0;
        for (; r + 4 <= rows; r += 4)
            tf_block(mt, B, mu, y + r * ys + c - c0, ys, x + r * xs + c - c0, xs, 4);
        for (; r < rows; r++)
            tf_block(mt, B, mu, y + r * ys + c - c0, ys, x + r * xs + c - c0, xs, 1);
    }
}

/* Whether the AVX-512 stage of one-pass transform decoding may run: AVX-512F and VL, and
 * RAGKV_CODEC_SIMD is not "avx2" (tests compare the two). */
bool cg_avx512_ok(void)
{
    static int cpu = -1; /* benign race, as in cg_simd8_ok */
    if (cpu < 0)
        cpu = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") ? 1 : 0;
    const char *e = getenv("RAGKV_CODEC_SIMD");
    return cpu && !(e && !strcmp(e, "avx2"));
}

#define CG_TILE 16 /* tokens of a one-pass transform batch in the AVX-512 stage */

/* 16x16 transpose of sixteen rows of sixteen floats. */
__attribute__((target("avx512f"))) static inline void transpose16(__m512 r[16])
{
    __m512 t[16], u[16];
#pragma GCC unroll 8
    for (int k = 0; k < 8; k++) {
        t[2 * k] = _mm512_unpacklo_ps(r[2 * k], r[2 * k + 1]);
        t[2 * k + 1] = _mm512_unpackhi_ps(r[2 * k], r[2 * k + 1]);
    }
#pragma GCC unroll 4
    for (int k = 0; k < 4; k++) {
        __m512d a = _mm512_castps_pd(t[4 * k]), b = _mm512_castps_pd(t[4 * k + 1]);
        __m512d c = _mm512_castps_pd(t[4 * k + 2]), d = _mm512_castps_pd(t[4 * k + 3]);
        u[4 * k + 0] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
        u[4 * k + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
        u[4 * k + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
        u[4 * k + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
    }
    /* u[4k + j], 128-bit lane L: column 4L + j of rows 4k .. 4k + 3 */
#pragma GCC unroll 4
    for (int j = 0; j < 4; j++) {
        t[j] = _mm512_shuffle_f32x4(u[j], u[4 + j], 0x88);
        t[4 + j] = _mm512_shuffle_f32x4(u[j], u[4 + j], 0xdd);
        t[8 + j] = _mm512_shuffle_f32x4(u[8 + j], u[12 + j], 0x88);
        t[12 + j] = _mm512_shuffle_f32x4(u[8 + j], u[12 + j], 0xdd);
    }
#pragma GCC unroll 4
    for (int j = 0; j < 4; j++) {
        r[j] = _mm512_shuffle_f32x4(t[j], t[8 + j], 0x88);
        r[8 + j] = _mm512_shuffle_f32x4(t[j], t[8 + j], 0xdd);
        r[4 + j] = _mm512_shuffle_f32x4(t[4 + j], t[12 + j], 0x88);
        r[12 + j] = _mm512_shuffle_f32x4(t[4 + j], t[12 + j], 0xdd);
    }
}

/* Store 16 floats at element `at` of out in dtype: codec_store_row's bits (F16C's round to
 * nearest even; bf16 as rk_f32_to_bf16, quiet NaNs included). */
__attribute__((target("avx2,avx512f,avx512vl"))) static inline void store16(void *out, codec_dtype dtype,
                                                                         size_t at, __m512 v)
{
    if (dtype == CODEC_F32)
        _mm512_storeu_ps((float *)out + at, v);
    else if (dtype == CODEC_F16)
        _mm256_storeu_si256((__m256i *)((uint16_t *)out + at), _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
    else {
        __m512i x = _mm512_castps_si512(v);
        __m512i r = _mm512_add_epi32(_mm512_add_epi32(x, _mm512_set1_epi32(0x7fff)),
                                     _mm512_and_si512(_mm512_srli_epi32(x, 16), _mm512_set1_epi32(1)));
        __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(x, _mm512_set1_epi32(0x7fffffff)),
                                                _mm512_set1_epi32(0x7f800000));
        r = _mm512_mask_mov_epi32(r, nan, _mm512_or_si512(x, _mm512_set1_epi32(0x400000)));
        _mm256_storeu_si256((__m256i *)((uint16_t *)out + at), _mm512_cvtepi32_epi16(_mm512_srli_epi32(r, 16)));
    }
}

/* The AVX-512 stage of a one-pass transform batch (cg_dec_job.tf_tiles), CG_TILE tokens
 * [ta, ta + nt) of chains 0..nch-1 at once, tokens in the lanes of 512-bit vectors:
 * - the symbols (sym[token][chain][i][lane k]: channel c0 + 64 chain + 8k + i) turn into
 *   one vector of 16 tokens per channel (8x8 transposes);
 * - the reconstruction points come from the channel's row of 64 by two-table permutes (the
 *   row is in registers, so no gather and no cache line per value), times the scale: the
 *   scalar decoder's recon[s] * scale;
 * - the inverse transform of each block (cg_transform's order: from 0, plus dect[i][c] *
 *   y[i] for i = 0..B-1, then plus the mean; separate multiply and add) for 16 tokens per
 *   instruction;
 * - 16x16 transposes back to rows, stored in dtype.
 * rbase and scf give each channel's reconstruction row and scale (channel order c - c0);
 * wide[chain] bit 8k + i: that channel's alphabet has more than 32 symbols. */
__attribute__((target("avx2,avx512f,avx512vl"), noinline)) static void
tf_tile_avx512(const struct cg_dec_job *j, const int32_t (*sym)[CG_SIMD_MAX_CHAINS][8][8],
               int nch, uint32_t nt, size_t lkv, uint32_t c0, uint32_t ta,
               const float *const *rbase, const float *scf, const uint64_t *wide)
{
    const cg_transform *tf = j->tf;
    const uint32_t C = j->lay->C, B = tf->B, W = 64 * (uint32_t)nch;
    /* [token][c - c0] the rows in dtype (es bytes a value) */
    uint8_t xr[CG_TILE][4 * 64 * CG_SIMD_MAX_CHAINS] __attribute__((aligned(64)));
    const size_t es = j->dtype == CODEC_F32 ? 4 : 2;
    float yt[64][CG_TILE] __attribute__((aligned(64))), xt[64][CG_TILE] __attribute__((aligned(64)));
    const __m512i lo = _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27);
    const __m512i hi = _mm512_setr_epi32(4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31);
    const __m512i bit5 = _mm512_set1_epi32(32);
    for (int h = 0; h < nch; h++) {
        for (int i = 0; i < 8; i++) {
            /* rows t and t + 8 (8 lanes each) in one vector; transposed per 256-bit half as
               transpose8 does, the permutes then put column k's 16 tokens in order */
            __m512 z[8];
#pragma GCC unroll 8
            for (int t = 0; t < 8; t++)
                z[t] = _mm512_castpd_ps(_mm512_insertf64x4(
                    _mm512_castpd256_pd512(_mm256_loadu_pd((const double *)sym[t][h][i])),
                    _mm256_loadu_pd((const double *)sym[t + 8][h][i]), 1));
            __m512 a[8], b[8];
#pragma GCC unroll 4
            for (int q = 0; q < 8; q += 2) {
                a[q] = _mm512_unpacklo_ps(z[q], z[q + 1]);
                a[q + 1] = _mm512_unpackhi_ps(z[q], z[q + 1]);
            }
#pragma GCC unroll 2
            for (int q = 0; q < 8; q += 4) {
                b[q] = _mm512_shuffle_ps(a[q], a[q + 2], 0x44);
                b[q + 1] = _mm512_shuffle_ps(a[q], a[q + 2], 0xEE);
                b[q + 2] = _mm512_shuffle_ps(a[q + 1], a[q + 3], 0x44);
                b[q + 3] = _mm512_shuffle_ps(a[q + 1], a[q + 3], 0xEE);
            }
#pragma GCC unroll 8
            for (int k = 0; k < 8; k++) {
                __m512i idx = _mm512_castps_si512(_mm512_permutex2var_ps(b[k % 4], k < 4 ? lo : hi, b[k % 4 + 4]));
                uint32_t cc = 8 * (uint32_t)k + (uint32_t)i; /* channel c0 + 64h + cc */
                const float *r = rbase[64 * h + cc];
                __m512 y = _mm512_permutex2var_ps(_mm512_loadu_ps(r), idx, _mm512_loadu_ps(r + 16));
                if (wide[h] >> cc & 1) {
                    __m512 y2 = _mm512_permutex2var_ps(_mm512_loadu_ps(r + 32), idx, _mm512_loadu_ps(r + 48));
                    y = _mm512_mask_mov_ps(y, _mm512_test_epi32_mask(idx, bit5), y2);
                }
                _mm512_store_ps(yt[cc], _mm512_mul_ps(y, _mm512_set1_ps(scf[64 * h + cc])));
            }
        }
        /* the chain's blocks (B divides 64), eight output channels in flight */
        for (uint32_t ob = 0; ob < 64; ob += B) {
            size_t cabs = lkv * C + c0 + 64 * (uint32_t)h + ob;
            const float *mt = tf->dect + cabs * B, *mu = tf->mean + cabs;
            for (uint32_t c = 0; c < B; c += 8) {
                __m512 acc[8];
#pragma GCC unroll 8
                for (int q = 0; q < 8; q++)
                    acc[q] = _mm512_setzero_ps();
                const float *mc = mt + c; /* column c of row i at mc[i B] */
                for (uint32_t i = 0; i < B; i++, mc += B) {
                    __m512 y = _mm512_load_ps(yt[ob + i]);
#pragma GCC unroll 8
                    for (int q = 0; q < 8; q++)
                        acc[q] = _mm512_add_ps(acc[q], _mm512_mul_ps(_mm512_set1_ps(mc[q]), y));
                }
#pragma GCC unroll 8
                for (int q = 0; q < 8; q++)
                    _mm512_store_ps(xt[ob + c + (uint32_t)q], _mm512_add_ps(acc[q], _mm512_set1_ps(mu[c + (uint32_t)q])));
            }
        }
        /* channels x tokens -> token rows */
        for (int g = 0; g < 4; g++) {
            __m512 r[16];
#pragma GCC unroll 16
            for (int q = 0; q < 16; q++)
                r[q] = _mm512_load_ps(xt[16 * g + q]);
            transpose16(r);
#pragma GCC unroll 16
            for (int t = 0; t < CG_TILE; t++) /* rows from nt on are not copied below */
                store16(xr[t], j->dtype, 64 * (size_t)h + 16 * (size_t)g, r[t]);
        }
    }
    for (uint32_t t = 0; t < nt; t++)
        memcpy((char *)j->out + cg_out_index(j, lkv, ta + t, c0) * es, xr[t], W * es);
}

/* The decoder for NCH chains of 8 lanes (a constant after inlining: one straight-line body per
 * chain count). */
static inline __attribute__((always_inline, target("avx2"))) int decode_chains(const struct cg_dec_job *j,
                                                                             size_t si, const int NCH)
{
    const cg_params *p = j->p;
    const cg_layout *lay = j->lay;
    const cg_stream_pos sp = cg_stream_at(lay, p, si);
    const uint32_t l = sp.l, kv = sp.kv, t0 = sp.t0, t1 = sp.t1;
    const size_t lkv = sp.lkv;
    uint32_t c0 = sp.g * 8; /* chain h, lane k holds channels c0 + 64h + 8k .. + 7 */
    const char *mbase = (const char *)j->dmodels;
    const int *pbase = (const int *)(const void *)j->payload;
    /* per chain and channel-of-group i: each lane's model (byte offset) and scale */
    __m256i moff[CG_SIMD_MAX_CHAINS][8];
    __m256i roff[CG_SIMD_MAX_CHAINS][8]; /* transform: byte offset of the model's reconstruction points */
    __m256 scale[CG_SIMD_MAX_CHAINS][8];
    const float *recon = j->recon;
    /* one pass (j->tf): with the AVX-512 stage each step's symbols go to a tile of CG_TILE
       tokens (tf_tile_avx512); without, coefficient rows of four tokens go through
       cg_transform_rows_avx2 */
    const int tiles = j->tf && j->tf_tiles;
    union {
        int32_t sym[CG_TILE][CG_SIMD_MAX_CHAINS][8][8]; /* [token][chain][i][lane] symbol */
        struct {
            float y[4][64 * CG_SIMD_MAX_CHAINS]; /* [token][c - c0] coefficients */
            float x[4][64 * CG_SIMD_MAX_CHAINS]; /* [token][c - c0] channels */
        } rows;
    } tb __attribute__((aligned(64)));
    const float *rbase[64 * CG_SIMD_MAX_CHAINS]; /* tiles: [c - c0] the model's reconstruction
                                                    points */
    float scf[64 * CG_SIMD_MAX_CHAINS];          /* tiles: [c - c0] the channel's scale */
    uint64_t wide[CG_SIMD_MAX_CHAINS] = {0};     /* tiles: bit c - c0 - 64 chain: an alphabet
                                                    of more than 32 symbols */
    __m256i x[CG_SIMD_MAX_CHAINS], off[CG_SIMD_MAX_CHAINS], end[CG_SIMD_MAX_CHAINS];
    __m256i ahead[CG_SIMD_MAX_CHAINS] = {0}; /* the stream's bytes from off on, first in the top byte */
    for (int h = 0; h < NCH; h++) {
        for (int i = 0; i < 8; i++) {
            int mo[8], ro[8];
            float sc[8];
            for (int k = 0; k < 8; k++) {
                uint32_t c = c0 + 64 * (uint32_t)h + 8 * (uint32_t)k + (uint32_t)i;
                mo[k] = (int)(cg_model_index(lay, p, l, kv, c, 0) * sizeof(rans_dmodel));
                ro[k] = (int)(cg_model_index(lay, p, l, kv, c, 0) * CODEC_MAX_SYMBOLS * sizeof(float));
                sc[k] = j->scales[cg_scale_index(lay, p, l, kv, 0, c, 0)];
            }
            if (tiles) /* the AVX-512 stage's per-channel inputs */
                for (int k = 0; k < 8; k++) {
                    uint32_t cc = 64 * (uint32_t)h + 8 * (uint32_t)k + (uint32_t)i;
                    size_t m = cg_model_index(lay, p, l, kv, c0 + cc, 0);
                    rbase[cc] = recon + m * CODEC_MAX_SYMBOLS;
                    scf[cc] = sc[k];
                    wide[h] |= (uint64_t)(j->models[m].nsym > 32) << (cc % 64);
                }
            moff[h][i] = _mm256_loadu_si256((const __m256i *)mo);
            roff[h][i] = _mm256_loadu_si256((const __m256i *)ro);
            scale[h][i] = _mm256_loadu_ps(sc);
        }
        int xs[8], os[8], es[8];
        for (int k = 0; k < 8; k++) {
            size_t st = si + 8 * (size_t)h + (size_t)k;
            uint64_t b = j->offs[st], e = j->offs[st + 1];
            if (e - b < 4)
                return 0;
            uint32_t x0 = rk_get_le32(j->payload + b);
            if (x0 < RANS_L || x0 >= RANS_L << 8)
                return -1;
            xs[k] = (int)x0;
            os[k] = (int)b + 4;
            es[k] = (int)e;
        }
        x[h] = _mm256_loadu_si256((const __m256i *)xs);
        off[h] = _mm256_loadu_si256((const __m256i *)os);
        end[h] = _mm256_loadu_si256((const __m256i *)es);
    }
    const __m256i lo16 = _mm256_set1_epi32(0xffff), one = _mm256_set1_epi32(1);
    const __m256i bmask = _mm256_set1_epi32((1 << RANS_DBUCKET_BITS) - 1);
    const __m256i cumoff = _mm256_set1_epi32((int)offsetof(rans_dmodel, cum));
    const __m256i four = _mm256_set1_epi32(4), n32 = _mm256_set1_epi32(32);
    const __m256i bswap = _mm256_setr_epi8(3, 2, 1, 0, 7, 6, 5, 4, 11, 10, 9, 8, 15, 14, 13, 12,
                                           3, 2, 1, 0, 7, 6, 5, 4, 11, 10, 9, 8, 15, 14, 13, 12);
    const __m256i rl = _mm256_set1_epi32((int)RANS_L), rl8 = _mm256_set1_epi32((int)RANS_L >> 8);
    const __m256i qmax = _mm256_set1_epi32(p->qmax[lkv]);
    __m256i bad = _mm256_setzero_si256();
    float row[64 * CG_SIMD_MAX_CHAINS];
    const uint32_t W = 64 * (uint32_t)NCH;
    for (uint32_t t = t0; t < t1; t++) {
        __m256 v[CG_SIMD_MAX_CHAINS][8];
        for (int i = 0; i < 8; i++) {
            /* every second step: the next four bytes of each stream (two steps take at most
               four), top-aligned; the word is the stream's last when fewer remain */
            if (!(i & 1))
                for (int h = 0; h < NCH; h++) {
                    __m256i a = _mm256_min_epi32(off[h], _mm256_sub_epi32(end[h], four));
                    __m256i word = _mm256_shuffle_epi8(_mm256_i32gather_epi32(pbase, a, 1), bswap);
                    ahead[h] = _mm256_sllv_epi32(word, _mm256_slli_epi32(_mm256_sub_epi32(off[h], a), 3));
                }
            /* the chains are independent: interleaved, their gathers' latencies overlap */
            __m256i slot[CG_SIMD_MAX_CHAINS], s[CG_SIMD_MAX_CHAINS], w[CG_SIMD_MAX_CHAINS];
            for (int h = 0; h < NCH; h++) {
                slot[h] = _mm256_and_si256(x[h], lo16);
                /* the bucket's u16 entry e (the low half of the word starting there); the
                   symbol is (e + slot % 1024) / 1024 or, rarely, above it */
                __m256i bidx = _mm256_add_epi32(moff[h][i], _mm256_slli_epi32(_mm256_srli_epi32(slot[h], RANS_DBUCKET_BITS), 1));
                __m256i e = _mm256_and_si256(_mm256_i32gather_epi32((const int *)mbase, bidx, 1), lo16);
                s[h] = _mm256_srli_epi32(_mm256_add_epi32(e, _mm256_and_si256(slot[h], bmask)), RANS_DBUCKET_BITS);
                /* cum[s] | cum[s + 1] << 16 in one read */
                w[h] = _mm256_i32gather_epi32((const int *)mbase, _mm256_add_epi32(_mm256_add_epi32(moff[h][i], cumoff),
                                                                               _mm256_slli_epi32(s[h], 1)), 1);
            }
            for (int h = 0; h < NCH; h++) {
                __m256i lo = _mm256_and_si256(w[h], lo16);
                __m256i hi = _mm256_add_epi32(_mm256_and_si256(_mm256_sub_epi32(_mm256_srli_epi32(w[h], 16), one), lo16), one);
                __m256i up = _mm256_cmpgt_epi32(_mm256_add_epi32(slot[h], one), hi); /* cum[s+1] <= slot */
                __m256i down = _mm256_cmpgt_epi32(lo, slot[h]);                       /* cum[s] > slot */
                __m256i move = _mm256_or_si256(up, down);
                while (!_mm256_testz_si256(move, move)) { /* a second boundary in the bucket */
                    s[h] = _mm256_add_epi32(_mm256_sub_epi32(s[h], up), down);
                    __m256i nw = _mm256_mask_i32gather_epi32(w[h], (const int *)mbase,
                                                             _mm256_add_epi32(_mm256_add_epi32(moff[h][i], cumoff),
                                                                              _mm256_slli_epi32(s[h], 1)), move, 1);
                    w[h] = nw;
                    lo = _mm256_and_si256(w[h], lo16);
                    hi = _mm256_add_epi32(_mm256_and_si256(_mm256_sub_epi32(_mm256_srli_epi32(w[h], 16), one), lo16), one);
                    up = _mm256_cmpgt_epi32(_mm256_add_epi32(slot[h], one), hi);
                    down = _mm256_cmpgt_epi32(lo, slot[h]);
                    move = _mm256_or_si256(up, down);
                }
                x[h] = _mm256_add_epi32(_mm256_mullo_epi32(_mm256_sub_epi32(hi, lo), _mm256_srli_epi32(x[h], 16)),
                                        _mm256_sub_epi32(slot[h], lo));
                if (tiles) /* the symbol; recon[s] * scale in the AVX-512 stage */
                    _mm256_storeu_si256((__m256i *)tb.sym[(t - t0) % CG_TILE][h][i], s[h]);
                else if (recon) /* the scalar decoder's recon[s] * scale */
                    v[h][i] = _mm256_mul_ps(_mm256_i32gather_ps(recon, _mm256_add_epi32(roff[h][i], _mm256_slli_epi32(s[h], 2)), 1),
                                            scale[h][i]);
                else
                    v[h][i] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(s[h], qmax)), scale[h][i]);
                /* renormalise: n = 0, 1 or 2 bytes (x >= 2^7 after a step from [2^23, 2^31)),
                   shifted in from the top of the look-ahead */
                __m256i need = _mm256_cmpgt_epi32(rl, x[h]);
                __m256i n = _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_add_epi32(need, _mm256_cmpgt_epi32(rl8, x[h])));
                __m256i nend = _mm256_add_epi32(off[h], n);
                __m256i have = _mm256_cmpgt_epi32(_mm256_add_epi32(end[h], one), nend); /* off + n <= end */
                bad = _mm256_or_si256(bad, _mm256_andnot_si256(have, need));
                __m256i nb = _mm256_slli_epi32(n, 3);
                x[h] = _mm256_or_si256(_mm256_sllv_epi32(x[h], nb), _mm256_srlv_epi32(ahead[h], _mm256_sub_epi32(n32, nb)));
                ahead[h] = _mm256_sllv_epi32(ahead[h], nb);
                off[h] = nend;
            }
        }
        if (tiles) {
            uint32_t tt = (t - t0) % CG_TILE;
            if (tt == CG_TILE - 1 || t + 1 == t1) {
                if (tt < CG_TILE - 1) /* a short tile: symbol 0 in the unused tokens */
                    memset(tb.sym[tt + 1], 0, (CG_TILE - 1 - tt) * sizeof tb.sym[0]);
                tf_tile_avx512(j, (const int32_t (*)[CG_SIMD_MAX_CHAINS][8][8])tb.sym, NCH,
                               tt + 1, lkv, c0, t - tt, rbase, scf, wide);
            }
            continue;
        }
        /* v[h][i] lane k = channel c0 + 64h + 8k + i: transpose to lane-major rows */
        float *dst = j->tf ? tb.rows.y[(t - t0) % 4] : row;
        for (int h = 0; h < NCH; h++) {
            transpose8(v[h]);
            for (int k = 0; k < 8; k++)
                _mm256_storeu_ps(dst + 64 * h + 8 * k, v[h][k]);
        }
        if (!j->tf)
            codec_store_row(j->out, j->dtype, cg_out_index(j, lkv, t, c0), row, W);
        else if ((t - t0) % 4 == 3 || t + 1 == t1) {
            uint32_t nr = (t - t0) % 4 + 1, ta = t + 1 - nr;
            cg_transform_rows_avx2(j->tf, lay->C, lkv, c0, W, tb.rows.y[0], 64 * CG_SIMD_MAX_CHAINS,
                                   tb.rows.x[0], 64 * CG_SIMD_MAX_CHAINS, nr);
            for (uint32_t r = 0; r < nr; r++)
                codec_store_row(j->out, j->dtype, cg_out_index(j, lkv, ta + r, c0), tb.rows.x[r], W);
        }
    }
    /* the encoder's initial state, every byte used, no lane ran dry */
    int ok = _mm256_testz_si256(bad, bad);
    for (int h = 0; h < NCH; h++) {
        __m256i done = _mm256_and_si256(_mm256_cmpeq_epi32(x[h], rl), _mm256_cmpeq_epi32(off[h], end[h]));
        ok &= _mm256_movemask_epi8(done) == -1;
    }
    return ok;
}

__attribute__((target("avx2"))) int cg_decode_avx2(const struct cg_dec_job *j, size_t si, int chains)
{
    switch (chains) {
    case 8: return decode_chains(j, si, 8);
    case 4: return decode_chains(j, si, 4);
    case 2: return decode_chains(j, si, 2);
    default: return decode_chains(j, si, 1);
    }
}

#else

bool cg_simd8_ok(const struct cg_dec_job *j)
{
    (void)j;
    return false;
}

int cg_decode_avx2(const struct cg_dec_job *j, size_t si, int chains)
{
    (void)j;
    (void)si;
    (void)chains;
    return false;
}

void cg_transform_rows_avx2(const struct cg_transform *tf, uint32_t C, size_t lkv, uint32_t c0,
                            uint32_t n, const float *y, size_t ys, float *x, size_t xs,
                            uint32_t rows)
{
    (void)tf, (void)C, (void)lkv, (void)c0, (void)n, (void)y, (void)ys, (void)x, (void)xs;
    (void)rows;
}

bool cg_avx512_ok(void) { return false; }

#endif
