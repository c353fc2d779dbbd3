/* fuzz_container.c — the container decoder, the layer-range reader and the codebook parser
 * on arbitrary bytes.
 *
 * Input: one control byte, then the data. Control bit 0: "reseal" — recompute the section
 * and header checksums from the documented layout (docs/format.md) before decoding, so that
 * mutations reach the parsers behind the checksums instead of stopping at them. Bit 1: parse
 * the data as a codebook instead (with bit 0, its trailing checksum recomputed first).
 * Containers decode with three small codebooks (trained once on fixed synthetic KV, shape 2
 * layers x 2 heads x 4: the level's, and weighted ones with a transform of 4-channel blocks,
 * of 8-channel blocks across both heads, and of those with K predicted from V)
 * available through a resolver, into every output dtype; then a codec_reader decodes one layer
 * range, its first layer chosen by control bits 2-4 and its length by bits 5-7 (each modulo
 * what the container has). Nothing may crash, a decode that succeeds must produce finite
 * values, codec_reader_open must fail exactly as codec_decode does when it fails, and where
 * codec_decode succeeds the range must too, with the same bytes. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ragkv/bytes.h"
#include "ragkv/codec.h"
#include "ragkv/hash.h"

#define MAX_VALUES (1u << 16)

static void reseal(uint8_t *p, size_t len)
{
    if (len < 48)
        return;
    size_t nsec = p[27];
    if (nsec < 1 || nsec > 16 || len < 48 + 32 * nsec)
        return;
    for (size_t i = 0; i < nsec; i++) {
        uint8_t *e = p + 48 + 32 * i;
        uint64_t off = rk_get_le64(e + 8), n = rk_get_le64(e + 16);
        if (off <= len && n <= len - off)
            rk_put_le64(e + 24, rk_xxh3_64(p + off, (size_t)n));
    }
    uint8_t tmp[40 + 16 * 32];
    memcpy(tmp, p, 40);
    memcpy(tmp + 40, p + 48, 32 * nsec);
    rk_put_le64(p + 40, rk_xxh3_64(tmp, 40 + 32 * nsec));
}

/* The fuzzing codebooks: 0 the level's, 1 and 2 weighted with a transform (format version 3)
 * of one head's 4 channels and of both heads' 8, 3 the latter with K predicted from V
 * (version 4). */
#define FUZZ_CODEBOOKS 4
static codec_codebook *fuzz_codebook(int which)
{
    static codec_codebook *cb[FUZZ_CODEBOOKS];
    if (!cb[which]) {
        codec_shape s = {2, 16, 2, 4};
        static float kv[2 * 2 * 16 * 2 * 4], w[2 * 2 * 2 * 4];
        codec_synth_kv(&s, 42, kv);
        codec_params p = codec_params_default(CODEC_CACHEGEN);
        if (which) {
            for (size_t i = 0; i < sizeof w / sizeof w[0]; i++)
                w[i] = (float)(1 + i % 3);
            p.weights = w;
            p.transform_block = which == 1 ? 4 : 8;
            p.predict_k = which == 3;
        }
        const float *samples[1] = {kv};
        codec_codebook_train(samples, &s, 1, &p, &cb[which]);
    }
    return cb[which];
}

static rk_status fuzz_resolve(void *ctx, uint64_t id, const codec_codebook **out)
{
    (void)ctx;
    for (int i = 0; i < FUZZ_CODEBOOKS; i++)
        if (fuzz_codebook(i) && codec_codebook_id(fuzz_codebook(i)) == id) {
            *out = fuzz_codebook(i);
            return RK_OK;
        }
    return RK_ERR_NOT_FOUND;
}

/* Open a reader on the container and decode the layer range ctl picks; full is
 * codec_decode's status and, when RK_OK, whole its f32 output. Aborts on any disagreement. */
static void decode_range(const uint8_t *buf, size_t len, const codec_decode_opts *o,
                         const codec_info *info, uint8_t ctl, rk_status full, const float *whole)
{
    codec_reader *r = NULL;
    rk_status st = codec_reader_open(buf, len, o, &r);
    if (st != RK_OK) {
        if (st != full || r)
            abort(); /* open refuses what codec_decode refuses, before decoding */
        return;
    }
    uint32_t L = info->shape.n_layers; /* <= MAX_VALUES: fits an int */
    uint32_t l0 = (ctl >> 2 & 7) % L, nl = 1 + (uint32_t)(ctl >> 5) % (L - l0);
    size_t per = codec_shape_values(&info->shape) / L;
    float *part = malloc(per * nl * sizeof(float));
    if (part) {
        st = codec_reader_decode_layers(r, CODEC_F32, (int)l0, (int)nl, part,
                                        per * nl * sizeof(float));
        if (full == RK_OK && (st != RK_OK || memcmp(part, whole + per * l0, per * nl * 4)))
            abort(); /* a range of a good container is the same layers of the whole */
        if (st == RK_OK)
            for (size_t i = 0; i < per * nl; i++)
                if (isnan(part[i]))
                    abort();
        free(part);
    }
    codec_reader_close(r);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    uint8_t ctl = data[0];
    size_t len = size - 1;
    uint8_t *buf = malloc(len ? len : 1);
    if (!buf)
        return 0;
    memcpy(buf, data + 1, len);
    if (ctl & 2) {
        codec_codebook *cb = NULL;
        if ((ctl & 1) && len >= 8)
            rk_put_le64(buf + len - 8, rk_xxh3_64(buf, len - 8));
        if (codec_codebook_parse(buf, len, &cb) == 0)
            (void)codec_codebook_id(cb);
        codec_codebook_free(cb);
        free(buf);
        return 0;
    }
    if (ctl & 1)
        reseal(buf, len);
    codec_info info;
    if (codec_inspect(buf, len, &info) == RK_OK &&
        codec_shape_values(&info.shape) <= MAX_VALUES) {
        size_t n = codec_shape_values(&info.shape);
        float *out = malloc(n * sizeof(float));
        codec_decode_opts o = {.resolve = fuzz_resolve, .max_values = MAX_VALUES};
        if (out) {
            rk_status full = RK_OK;
            for (int dt = CODEC_BF16; dt >= CODEC_F32; dt--) { /* f32 last: out keeps it */
                full = codec_decode(buf, len, &o, (codec_dtype)dt, out, n * 4);
                if (full == RK_OK && dt == CODEC_F32)
                    for (size_t i = 0; i < n; i++)
                        if (isnan(out[i]))
                            abort(); /* a successful decode never yields NaN */
            }
            decode_range(buf, len, &o, &info, ctl, full, out);
            free(out);
        }
    }
    free(buf);
    return 0;
}
