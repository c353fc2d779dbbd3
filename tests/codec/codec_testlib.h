/* codec_testlib.h — helpers shared by the codec tests (header-only: every test_*.c is its own
 * executable). */
#ifndef RAGKV_CODEC_TESTLIB_H
#define RAGKV_CODEC_TESTLIB_H

#include <criterion/criterion.h>
#include <math.h>
#include <string.h>

#include "ragkv/alloc.h"
#include "ragkv/codec.h"

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

#endif
