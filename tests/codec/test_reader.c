/* test_reader.c — codec_reader, decoding by layer ranges, for every codec: each layer alone and
 * every range, in shuffled order, equal the same layers of codec_decode bit for bit in every
 * output dtype (with and without a pool, AVX2 and scalar cachegen decoders), and the input
 * itself where the codec is lossless on it; refused ranges and buffers write nothing; damage is
 * refused by codec_reader_open with codec_decode's status, or, behind resealed checksums, by
 * the ranges that hold it. */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>

#include "codec_testlib.h"
#include "ragkv/fp16.h"

static const codec_dtype all_dtypes[3] = {CODEC_F32, CODEC_F16, CODEC_BF16};

#define GUARD 64 /* bytes after every range's output that must stay untouched */

static size_t esize(codec_dtype dt) { return dt == CODEC_F32 ? 4 : 2; }

static uint64_t lcg(uint64_t *r)
{
    *r = *r * 6364136223846793005ull + 1442695040888963407ull;
    return *r >> 33;
}

/* Every range [l0, l0 + n) of an L-layer tensor, the single layers first, each group in a
 * random order: pairs (l0, n) into v (L * (L + 1) / 2 of them). Returns the count. */
static int ranges(int L, uint64_t seed, int (*v)[2])
{
    int m = 0;
    for (int n = 1; n <= L; n++)
        for (int l0 = 0; l0 + n <= L; l0++, m++) {
            v[m][0] = l0;
            v[m][1] = n;
        }
    uint64_t r = seed;
    for (int lo = 0, hi = L; lo < m; lo = hi, hi = m) /* singles, then the rest */
        for (int i = hi - 1; i > lo; i--) {
            int k = lo + (int)(lcg(&r) % (uint64_t)(i - lo + 1));
            int t0 = v[i][0], t1 = v[i][1];
            v[i][0] = v[k][0], v[i][1] = v[k][1];
            v[k][0] = t0, v[k][1] = t1;
        }
    return m;
}

/* Layers [l0, l0 + n) through r into a buffer with GUARD bytes after them, which must stay
 * as they were; the caller rk_frees the buffer. */
static uint8_t *decode_range(codec_reader *r, codec_dtype dt, int l0, int n, size_t layer_bytes,
                             const char *what)
{
    size_t need = layer_bytes * (size_t)n;
    uint8_t *buf = rk_malloc(need + GUARD);
    cr_assert_not_null(buf);
    memset(buf, 0xa5, need + GUARD);
    rk_status st = codec_reader_decode_layers(r, dt, l0, n, buf, need + GUARD);
    cr_assert_eq(st, RK_OK, "%s dtype %d layers [%d, +%d): %s (%s)", what, (int)dt, l0, n,
                 rk_strerror(st), rk_error_msg());
    for (size_t i = need; i < need + GUARD; i++)
        cr_assert_eq(buf[i], 0xa5, "%s dtype %d layers [%d, +%d): byte %zu past the output "
                     "written", what, (int)dt, l0, n, i - need);
    return buf;
}

/* The container b decoded whole by codec_decode (options full) is the reference; a reader
 * opened with options ro must give every layer alone and every range, in shuffled order, bit
 * for bit, in every dtype, and its single layers put side by side must be the whole. */
static void ranges_match_full(const rk_buf *b, const codec_decode_opts *full,
                              const codec_decode_opts *ro, const char *what)
{
    codec_info info;
    cr_assert_eq(codec_inspect(b->data, b->len, &info), RK_OK, "%s", rk_error_msg());
    int L = (int)info.shape.n_layers;
    int(*rg)[2] = rk_malloc(sizeof *rg * (size_t)(L * (L + 1) / 2));
    cr_assert_not_null(rg);
    for (int d = 0; d < 3; d++) {
        codec_dtype dt = all_dtypes[d];
        size_t nbytes = codec_decoded_bytes(&info, dt), lb = nbytes / (size_t)L;
        uint8_t *ref = rk_malloc(nbytes), *cat = rk_malloc(nbytes);
        cr_assert(ref && cat);
        rk_status st = codec_decode(b->data, b->len, full, dt, ref, nbytes);
        cr_assert_eq(st, RK_OK, "%s: %s", what, rk_error_msg());
        codec_reader *r = NULL;
        cr_assert_eq(codec_reader_open(b->data, b->len, ro, &r), RK_OK, "%s: %s", what,
                     rk_error_msg());
        cr_assert_not_null(r);
        int m = ranges(L, 17 + (uint64_t)d, rg);
        for (int i = 0; i < m; i++) {
            int l0 = rg[i][0], n = rg[i][1];
            uint8_t *out = decode_range(r, dt, l0, n, lb, what);
            cr_assert_eq(memcmp(out, ref + (size_t)l0 * lb, (size_t)n * lb), 0,
                         "%s dtype %d: layers [%d, +%d) differ from codec_decode's", what,
                         (int)dt, l0, n);
            if (n == 1) /* the singles come first: cat is complete after L of them */
                memcpy(cat + (size_t)l0 * lb, out, lb);
            if (i == L - 1)
                cr_assert_eq(memcmp(cat, ref, nbytes), 0, "%s dtype %d: single layers side by "
                             "side differ from codec_decode's whole", what, (int)dt);
            rk_free(out);
        }
        codec_reader_close(r);
        rk_free(ref);
        rk_free(cat);
    }
    rk_free(rg);
}

/* Encode kv with p and check ranges_match_full. */
static void check_config(const float *kv, codec_shape s, const codec_params *p, const char *what)
{
    rk_buf b = RK_BUF_INIT;
    cr_assert_eq(codec_encode(kv, &s, p, &b), RK_OK, "%s: %s", what, rk_error_msg());
    ranges_match_full(&b, NULL, NULL, what);
    rk_buf_free(&b);
}

/* Shapes for every codec: 144 channels = 18 groups of 8 (cachegen's AVX2 decoder takes groups
 * 0-15 of a block, the scalar one the last two) and 300 tokens (a partial 256-token block);
 * 512 channels (all eight AVX2 chains); odd sizes; a single layer. */
static const codec_shape shapes[4] = {{5, 300, 9, 16}, {3, 260, 4, 128}, {4, 33, 3, 5},
                                      {1, 7, 2, 8}};

/* Every level of codec id on synthetic KV of every shape. */
static void codec_levels_match(codec_id id)
{
    int maxl;
    cr_assert_eq(codec_levels(id, NULL, &maxl), RK_OK);
    for (int si = 0; si < 4; si++) {
        float *kv = synth(shapes[si], 900 + (uint64_t)si);
        for (int level = 0; level <= maxl; level++) {
            if (id == CODEC_CACHEGEN && (level == 2 || level == 3)) /* a few levels: 0, 1, 4 */
                continue;
            char what[64];
            snprintf(what, sizeof what, "%s L%d shape %d", codec_id_name(id), level, si);
            codec_params p = codec_params_default(id);
            p.level = level;
            check_config(kv, shapes[si], &p, what);
        }
        rk_free(kv);
    }
}

Test(reader, raw_ranges_match_full_decode) { codec_levels_match(CODEC_RAW); }
Test(reader, lz4_ranges_match_full_decode) { codec_levels_match(CODEC_LZ4); }
Test(reader, q8_ranges_match_full_decode) { codec_levels_match(CODEC_Q8); }
Test(reader, cachegen_ranges_match_full_decode) { codec_levels_match(CODEC_CACHEGEN); }

/* cachegen's other decoder paths: token scales and delta coding (the scalar decoder's other
 * specialisations), groups of 3 and 16 (single lanes, no AVX2) and 100 (wider than the
 * interleaved decoder: the reference loop), and a codebook (its own decode-only models). */
Test(reader, cachegen_options_ranges_match_full_decode)
{
    codec_shape s = shapes[0];
    float *kv = synth(s, 31);
    struct {
        int kmode, vmode, anchor, group;
    } opt[] = {{CODEC_SCALE_TOKEN, CODEC_SCALE_TOKEN, 0, -1}, {CODEC_SCALE_CHANNEL, CODEC_SCALE_TOKEN, 0, -1},
               {CODEC_SCALE_CHANNEL, CODEC_SCALE_CHANNEL, 10, -1}, {CODEC_SCALE_TOKEN, CODEC_SCALE_CHANNEL, 7, 3},
               {CODEC_SCALE_CHANNEL, CODEC_SCALE_CHANNEL, 0, 3}, {CODEC_SCALE_CHANNEL, CODEC_SCALE_CHANNEL, 0, 16},
               {CODEC_SCALE_CHANNEL, CODEC_SCALE_CHANNEL, 0, 100}, {CODEC_SCALE_CHANNEL, CODEC_SCALE_CHANNEL, 5, 100}};
    for (size_t i = 0; i < sizeof opt / sizeof opt[0]; i++) {
        codec_params p = codec_params_default(CODEC_CACHEGEN);
        p.k_scale_mode = opt[i].kmode;
        p.v_scale_mode = opt[i].vmode;
        p.anchor_interval = opt[i].anchor;
        p.group = opt[i].group;
        char what[96];
        snprintf(what, sizeof what, "cachegen kmode %d vmode %d anchor %d group %d",
                 opt[i].kmode, opt[i].vmode, opt[i].anchor, opt[i].group);
        check_config(kv, s, &p, what);
    }
    codec_codebook *cb = train_on(kv, s);
    codec_decode_opts o = {.codebook = cb};
    float *other = synth(s, 32); /* another chunk of the same "model" */
    rk_buf b = enc_cb(other, s, cb);
    ranges_match_full(&b, &o, &o, "cachegen codebook");
    rk_buf_free(&b);
    codec_codebook_free(cb);
    /* a transform codebook (the scalar decoder, then the inverse transform, layer by layer) */
    size_t nw = (size_t)s.n_layers * 2 * s.n_kv_heads * s.head_dim;
    float *w = rk_malloc(nw * sizeof *w);
    cr_assert_not_null(w);
    for (size_t i = 0; i < nw; i++)
        w[i] = (float)(1 + i % 5);
    codec_params tp = codec_params_default(CODEC_CACHEGEN);
    tp.weights = w;
    tp.transform_block = 16;
    const float *tr[1] = {kv};
    cr_assert_eq(codec_codebook_train(tr, &s, 1, &tp, &cb), RK_OK, "%s", rk_error_msg());
    o.codebook = cb;
    b = enc_cb(other, s, cb);
    ranges_match_full(&b, &o, &o, "cachegen transform codebook");
    rk_buf_free(&b);
    codec_codebook_free(cb);
    rk_free(w);
    rk_free(other);
    rk_free(kv);
}

/* The AVX2 decoder and the scalar one (RAGKV_CODEC_SIMD=0), whichever the reader was opened
 * under: ranges equal the whole decoded by the other. */
Test(reader, cachegen_ranges_scalar_and_avx2_agree)
{
    if (!__builtin_cpu_supports("avx2"))
        cr_skip_test("skipped: this CPU has no AVX2, only the scalar decoder runs");
    for (int si = 0; si < 2; si++) {
        float *kv = synth(shapes[si], 40 + (uint64_t)si);
        codec_params p = codec_params_default(CODEC_CACHEGEN);
        rk_buf b = RK_BUF_INIT;
        cr_assert_eq(codec_encode(kv, &shapes[si], &p, &b), RK_OK, "%s", rk_error_msg());
        codec_info info;
        cr_assert_eq(codec_inspect(b.data, b.len, &info), RK_OK);
        size_t nbytes = codec_decoded_bytes(&info, CODEC_F16), lb = nbytes / info.shape.n_layers;
        uint8_t *ref = rk_malloc(nbytes);
        for (int open_scalar = 0; open_scalar < 2; open_scalar++) {
            /* reference: the other decoder, whole */
            cr_assert_eq(open_scalar ? unsetenv("RAGKV_CODEC_SIMD") : setenv("RAGKV_CODEC_SIMD", "0", 1), 0);
            cr_assert_eq(codec_decode(b.data, b.len, NULL, CODEC_F16, ref, nbytes), RK_OK);
            codec_reader *r;
            if (open_scalar)
                setenv("RAGKV_CODEC_SIMD", "0", 1);
            cr_assert_eq(codec_reader_open(b.data, b.len, NULL, &r), RK_OK, "%s", rk_error_msg());
            for (int pass = 0; pass < 2; pass++) { /* decoding under either setting */
                if (pass)
                    setenv("RAGKV_CODEC_SIMD", "0", 1);
                else
                    unsetenv("RAGKV_CODEC_SIMD");
                for (int l = (int)info.shape.n_layers - 1; l >= 0; l--) {
                    uint8_t *out = decode_range(r, CODEC_F16, l, 1, lb, "simd/scalar");
                    cr_assert_eq(memcmp(out, ref + (size_t)l * lb, lb), 0,
                                 "opened %s, decoded %s: layer %d differs",
                                 open_scalar ? "scalar" : "avx2", pass ? "scalar" : "avx2", l);
                    rk_free(out);
                }
            }
            codec_reader_close(r);
        }
        unsetenv("RAGKV_CODEC_SIMD");
        rk_free(ref);
        rk_buf_free(&b);
        rk_free(kv);
    }
}

/* With a pool in the reader's options: the same bytes as codec_decode without one. */
Test(reader, pool_gives_identical_ranges)
{
    rk_pool *pool;
    cr_assert_eq(rk_pool_create(3, &pool), RK_OK);
    codec_decode_opts po = {.pool = pool};
    for (int c = 0; c < N_CODECS; c++)
        for (int si = 0; si < 2; si++) {
            float *kv = synth(shapes[si], 60 + (uint64_t)si);
            rk_buf b = enc(kv, shapes[si], all_codecs[c], -1);
            char what[64];
            snprintf(what, sizeof what, "%s shape %d with a pool", codec_id_name(all_codecs[c]), si);
            ranges_match_full(&b, NULL, &po, what);
            rk_buf_free(&b);
            rk_free(kv);
        }
    rk_pool_free(pool);
}

/* An oracle outside the code under test: on KV the codec reproduces exactly (fp16 values for
 * raw and lz4, exact_kv for cachegen at every level) each layer range is the input's slice,
 * and its fp16/bf16 conversion. */
Test(reader, lossless_input_ranges_equal_input)
{
    codec_shape s = shapes[0];
    uint32_t L = s.n_layers;
    size_t n = codec_shape_values(&s), per = n / L;
    for (int level = 0; level <= 4; level++) {
        float *kv = exact_kv(s, level, 70 + (uint64_t)level);
        const codec_id ids[3] = {CODEC_CACHEGEN, CODEC_RAW, CODEC_LZ4};
        for (int c = 0; c < (level == 0 ? 3 : 1); c++) {
            rk_buf b = enc(kv, s, ids[c], ids[c] == CODEC_CACHEGEN ? level : 0);
            codec_reader *r;
            cr_assert_eq(codec_reader_open(b.data, b.len, NULL, &r), RK_OK, "%s", rk_error_msg());
            for (int d = 0; d < 3; d++) {
                codec_dtype dt = all_dtypes[d];
                for (uint32_t k = 0; k < L; k++) {
                    uint32_t l = (k * 3 + 1) % L; /* L = 5: 1, 4, 2, 0, 3 */
                    uint8_t *out = decode_range(r, dt, (int)l, 1, per * esize(dt), "lossless");
                    for (size_t i = 0; i < per; i++) {
                        float x = kv[l * per + i];
                        if (dt == CODEC_F32)
                            cr_assert_eq(((float *)out)[i], x, "%s L%d layer %u value %zu",
                                         codec_id_name(ids[c]), level, l, i);
                        else
                            cr_assert_eq(((uint16_t *)out)[i],
                                         dt == CODEC_F16 ? rk_f32_to_f16(x) : rk_f32_to_bf16(x),
                                         "%s L%d dtype %d layer %u value %zu",
                                         codec_id_name(ids[c]), level, (int)dt, l, i);
                    }
                    rk_free(out);
                }
            }
            codec_reader_close(r);
            rk_buf_free(&b);
        }
        rk_free(kv);
    }
}

/* Empty, negative, out-of-range and overflowing ranges, short buffers, a NULL buffer and a
 * bad dtype: RK_ERR_INVALID, and not one byte of the buffer written. */
Test(reader, bad_ranges_and_buffers_refused)
{
    codec_shape s = {4, 20, 2, 8};
    float *kv = synth(s, 80);
    for (int c = 0; c < N_CODECS; c++) {
        rk_buf b = enc(kv, s, all_codecs[c], -1);
        codec_reader *r;
        cr_assert_eq(codec_reader_open(b.data, b.len, NULL, &r), RK_OK);
        const codec_info *in = codec_reader_info(r);
        size_t lb = codec_decoded_bytes(in, CODEC_F16) / in->shape.n_layers, cap = 8 * lb + GUARD;
        uint8_t *buf = rk_malloc(cap);
        const struct {
            int l0, n;
            size_t bytes;
        } bad[] = {
            {0, 0, cap},          {2, 0, cap},        {0, -1, cap},      {-1, 1, cap},
            {-1, 2, cap},         {4, 1, cap},        {3, 2, cap},       {0, 5, cap},
            {INT_MIN, 1, cap},    {1, INT_MAX, cap},  {INT_MAX, 1, cap}, {INT_MAX, INT_MAX, cap},
            {0, 1, lb - 1},       {1, 3, 3 * lb - 1}, {0, 4, 4 * lb - 2}, {3, 1, 0},
        };
        for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
            memset(buf, 0x5a, cap);
            rk_error_clear();
            rk_status st = codec_reader_decode_layers(r, CODEC_F16, bad[i].l0, bad[i].n, buf,
                                                      bad[i].bytes);
            cr_assert_eq(st, RK_ERR_INVALID, "%s: layers [%d, +%d) into %zu bytes gave %s",
                         codec_id_name(all_codecs[c]), bad[i].l0, bad[i].n, bad[i].bytes,
                         rk_status_name(st));
            cr_assert(strstr(rk_error_msg(), "codec_reader_decode_layers"), "message: %s",
                      rk_error_msg());
            for (size_t k = 0; k < cap; k++)
                cr_assert_eq(buf[k], 0x5a, "%s: refused call %zu wrote byte %zu",
                             codec_id_name(all_codecs[c]), i, k);
        }
        cr_assert_eq(codec_reader_decode_layers(r, CODEC_F16, 0, 1, NULL, lb), RK_ERR_INVALID);
        cr_assert_eq(codec_reader_decode_layers(r, (codec_dtype)7, 0, 1, buf, cap), RK_ERR_INVALID);
        cr_assert_eq(codec_reader_decode_layers(NULL, CODEC_F16, 0, 1, buf, cap), RK_ERR_INVALID);
        /* the exact size is enough, f32 needs twice f16's */
        cr_assert_eq(codec_reader_decode_layers(r, CODEC_F16, 1, 3, buf, 3 * lb), RK_OK);
        cr_assert_eq(codec_reader_decode_layers(r, CODEC_F32, 1, 3, buf, 3 * lb), RK_ERR_INVALID);
        cr_assert_eq(codec_reader_decode_layers(r, CODEC_F32, 1, 3, buf, 6 * lb), RK_OK);
        rk_free(buf);
        codec_reader_close(r);
        rk_buf_free(&b);
    }
    codec_reader_close(NULL);
    codec_reader *r = (codec_reader *)kv; /* anything but NULL: a failed open clears it */
    cr_assert_eq(codec_reader_open(NULL, 0, NULL, &r), RK_ERR_TRUNCATED);
    cr_assert_null(r);
    cr_assert_eq(codec_reader_open(kv, 8, NULL, NULL), RK_ERR_INVALID);
    rk_free(kv);
}

/* codec_reader_open's status for data, which must equal codec_decode's (and leave NULL). */
static rk_status open_like_decode(const uint8_t *data, size_t len, const codec_decode_opts *o,
                                  void *out, size_t out_bytes, const char *what)
{
    rk_status want = codec_decode(data, len, o, CODEC_F32, out, out_bytes);
    codec_reader *r = (codec_reader *)out; /* anything but NULL */
    rk_status st = codec_reader_open(data, len, o, &r);
    cr_assert_eq(st, want, "%s: codec_reader_open %s, codec_decode %s", what,
                 rk_status_name(st), rk_status_name(want));
    if (st == RK_OK)
        codec_reader_close(r);
    else
        cr_assert_null(r, "%s: *out set on failure", what);
    return st;
}

/* Every flipped bit and every truncation of a small container of each codec, a claimed size
 * over the limit, a missing codebook: refused by codec_reader_open, with codec_decode's
 * status. */
Test(reader, damaged_containers_refused_at_open)
{
    codec_shape s = {2, 5, 2, 4};
    float *kv = synth(s, 5);
    size_t n = codec_shape_values(&s);
    float *out = rk_malloc(n * 4);
    char what[64];
    for (int c = 0; c < N_CODECS; c++) {
        rk_buf b = enc(kv, s, all_codecs[c], -1);
        for (size_t i = 0; i < b.len; i++)
            for (int bit = 0; bit < 8; bit += 3) {
                b.data[i] ^= (uint8_t)(1 << bit);
                snprintf(what, sizeof what, "%s bit %d of byte %zu", codec_id_name(all_codecs[c]), bit, i);
                cr_assert_neq(open_like_decode(b.data, b.len, NULL, out, n * 4, what), RK_OK, "%s", what);
                b.data[i] ^= (uint8_t)(1 << bit);
            }
        for (size_t len = 0; len < b.len; len++) {
            snprintf(what, sizeof what, "%s cut at %zu", codec_id_name(all_codecs[c]), len);
            cr_assert_neq(open_like_decode(b.data, len, NULL, out, n * 4, what), RK_OK, "%s", what);
        }
        codec_decode_opts o = {.max_values = n - 1};
        cr_assert_eq(open_like_decode(b.data, b.len, &o, out, n * 4, "limit"), RK_ERR_LIMIT);
        rk_buf_free(&b);
    }
    codec_codebook *cb = train_on(kv, s);
    rk_buf b = enc_cb(kv, s, cb);
    cr_assert_eq(open_like_decode(b.data, b.len, NULL, out, n * 4, "no codebook"), RK_ERR_NOT_FOUND);
    rk_buf_free(&b);
    codec_codebook_free(cb);
    rk_free(out);
    rk_free(kv);
}

/* Damage behind valid checksums (a buggy or hostile writer) that only decoding finds, in layer
 * bad_layer of b (intact: ref, its codec_decode in f32): resealed, the reader opens, ranges
 * without that layer decode to ref's values and every range holding it is refused with
 * codec_decode's status. */
static void damage_found_by_its_layers(rk_buf *b, const uint8_t *ref, uint32_t bad_layer,
                                       const char *what)
{
    codec_info info;
    reseal(b->data);
    cr_assert_eq(codec_inspect(b->data, b->len, &info), RK_OK);
    int L = (int)info.shape.n_layers;
    size_t nbytes = codec_decoded_bytes(&info, CODEC_F32), lb = nbytes / (size_t)L;
    uint8_t *buf = rk_malloc(nbytes);
    rk_status want = codec_decode(b->data, b->len, NULL, CODEC_F32, buf, nbytes);
    cr_assert_neq(want, RK_OK, "%s: codec_decode accepted the damage", what);
    codec_reader *r;
    cr_assert_eq(codec_reader_open(b->data, b->len, NULL, &r), RK_OK, "%s: %s", what, rk_error_msg());
    int(*rg)[2] = rk_malloc(sizeof *rg * (size_t)(L * (L + 1) / 2));
    int m = ranges(L, 5, rg);
    for (int i = 0; i < m; i++) {
        int l0 = rg[i][0], n = rg[i][1];
        rk_status st = codec_reader_decode_layers(r, CODEC_F32, l0, n, buf, (size_t)n * lb);
        if ((uint32_t)l0 <= bad_layer && bad_layer < (uint32_t)(l0 + n))
            cr_assert_eq(st, want, "%s: layers [%d, +%d) hold the damage: %s, want %s", what,
                         l0, n, rk_status_name(st), rk_status_name(want));
        else {
            cr_assert_eq(st, RK_OK, "%s: layers [%d, +%d): %s", what, l0, n, rk_error_msg());
            cr_assert_eq(memcmp(buf, ref + (size_t)l0 * lb, (size_t)n * lb), 0,
                         "%s: layers [%d, +%d) differ from the intact container's", what, l0, n);
        }
    }
    rk_free(rg);
    codec_reader_close(r);
    rk_free(buf);
}

Test(reader, damage_behind_checksums_found_by_its_layers)
{
    codec_shape s = shapes[0];
    uint32_t L = s.n_layers;
    size_t per = codec_shape_values(&s) / L, len;
    float *kv = synth(s, 90);
    for (int c = 0; c < N_CODECS; c++)
        for (uint32_t bad = 0; bad < L; bad += 2) { /* the first, a middle and the last layer */
            for (int g = 0; g < (all_codecs[c] == CODEC_CACHEGEN ? 2 : 1); g++) {
                codec_params p = codec_params_default(all_codecs[c]);
                p.group = g ? 3 : -1; /* cachegen: the AVX2 decoder's groups of 8, scalar 3 */
                rk_buf b = RK_BUF_INIT;
                cr_assert_eq(codec_encode(kv, &s, &p, &b), RK_OK);
                uint8_t *ref = (uint8_t *)dec(&b, NULL);
                uint8_t *pay = section(b.data, 5, &len);
                if (all_codecs[c] == CODEC_RAW) /* an Inf */
                    rk_put_le16(pay + 2 * (bad * per + per / 2), 0x7c00);
                else if (all_codecs[c] == CODEC_Q8) { /* a negative scale */
                    size_t slen;
                    uint8_t *sc = section(b.data, 2, &slen);
                    rk_put_le16(sc + slen / L * bad + 2, 0xbc00);
                } else if (all_codecs[c] == CODEC_LZ4) /* V's block gives K's a byte */
                    move_last_byte(&b, 2 * bad);
                else { /* a stream in the middle of the layer */
                    size_t ilen;
                    section(b.data, 4, &ilen);
                    size_t spl = ilen / 4 / L;
                    move_last_byte(&b, bad * spl + spl / 2 - 1);
                }
                char what[64];
                snprintf(what, sizeof what, "%s group %d, layer %u damaged",
                         codec_id_name(all_codecs[c]), p.group, bad);
                damage_found_by_its_layers(&b, ref, bad, what);
                rk_free(ref);
                rk_buf_free(&b);
            }
        }
    rk_free(kv);
}

/* A codebook comes from the resolver once, when the reader opens; the reader's info is the
 * container's. */
static int resolved;
static rk_status resolve_count(void *ctx, uint64_t id, const codec_codebook **out)
{
    const codec_codebook *cb = ctx;
    resolved++;
    if (codec_codebook_id(cb) != id)
        return RK_ERR_NOT_FOUND;
    *out = cb;
    return RK_OK;
}

Test(reader, codebook_resolved_once_and_info)
{
    codec_shape s = {3, 40, 2, 8};
    float *kv = synth(s, 95);
    codec_codebook *cb = train_on(kv, s);
    rk_buf b = enc_cb(kv, s, cb);
    codec_decode_opts o = {.resolve = resolve_count, .resolve_ctx = cb};
    codec_reader *r;
    cr_assert_eq(codec_reader_open(b.data, b.len, &o, &r), RK_OK, "%s", rk_error_msg());
    cr_assert_eq(resolved, 1);
    codec_info want;
    cr_assert_eq(codec_inspect(b.data, b.len, &want), RK_OK);
    const codec_info *in = codec_reader_info(r);
    cr_assert(in->shape.n_layers == 3 && in->shape.n_tokens == 40 && in->shape.n_kv_heads == 2 &&
              in->shape.head_dim == 8);
    cr_assert(in->codec == CODEC_CACHEGEN && in->level == want.level &&
              in->codebook_id == codec_codebook_id(cb) && in->total_bytes == b.len &&
              in->payload_bytes == want.payload_bytes && in->overhead_bytes == want.overhead_bytes &&
              in->table_bytes == 0 && in->n_sections == want.n_sections);
    size_t lb = codec_decoded_bytes(in, CODEC_BF16) / 3;
    for (int l = 2; l >= 0; l--) {
        uint8_t *out = decode_range(r, CODEC_BF16, l, 1, lb, "codebook");
        rk_free(out);
    }
    cr_assert_eq(resolved, 1, "the resolver was asked again while decoding");
    codec_reader_close(r);
    rk_buf_free(&b);
    codec_codebook_free(cb);
    rk_free(kv);
}
