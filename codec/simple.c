/* simple.c — the three baseline codecs: raw fp16, lz4 over byte planes, q8 (symmetric int8,
 * one fp16 scale per (layer, K|V, token, kv head)). */
#include <lz4.h>
#include <lz4hc.h>
#include <math.h>
#include <string.h>

#include "codec_impl.h"
#include "ragkv/alloc.h"

/* ---- raw --------------------------------------------------------------------------------- */

static rk_status raw_encode(const float *kv, const codec_shape *shape, const codec_params *p,
                            int level, codec_wsections *w, uint64_t *cbid)
{
    size_t n = codec_shape_values(shape);
    rk_buf *b = codec_wsections_add(w, SEC_PAYLOAD);
    if (!rk_buf_reserve(b, 2 * n))
        return rk_error_set(RK_ERR_NOMEM, "raw: %zu bytes", 2 * n);
    for (size_t i = 0; i < n; i++)
        rk_put_le16(b->data + 2 * i, rk_f32_to_f16(kv[i]));
    b->len = 2 * n;
    return RK_OK;
}

struct f16_job {
    const uint8_t *src; /* n little-endian fp16 */
    codec_dtype dtype;
    void *out;
    int bad;            /* an Inf or NaN pattern: no encoder of ours writes one */
};

/* Copy or convert fp16 values [b, e) to the output dtype; flags Inf/NaN patterns. */
static void f16_range(void *vctx, size_t b, size_t e)
{
    struct f16_job *j = vctx;
    uint16_t all = 0;
    if (j->dtype == CODEC_F16) {
        for (size_t i = b; i < e; i++) {
            uint16_t h = rk_get_le16(j->src + 2 * i);
            ((uint16_t *)j->out)[i] = h;
            all |= (uint16_t)((h & 0x7c00) == 0x7c00);
        }
    } else {
        for (size_t i = b; i < e; i++) {
            uint16_t h = rk_get_le16(j->src + 2 * i);
            codec_store(j->out, j->dtype, i, rk_f16_to_f32(h));
            all |= (uint16_t)((h & 0x7c00) == 0x7c00);
        }
    }
    if (all)
        __atomic_store_n(&j->bad, 1, __ATOMIC_RELAXED);
}

/* raw: the payload must hold every value as fp16. */
static rk_status raw_open(codec_reader *r)
{
    size_t n = codec_shape_values(&r->v.info.shape);
    const codec_rsection *pay = codec_view_section(&r->v, SEC_PAYLOAD);
    if (r->v.info.n_sections != 1 || !pay || pay->len / 2 != n || pay->len % 2)
        return rk_error_set(RK_ERR_FORMAT, "raw: payload of %zu bytes for %zu values",
                            pay ? pay->len : 0, n);
    return RK_OK;
}

/* raw: convert the layers' values in parallel. */
static rk_status raw_decode_layers(const codec_reader *r, codec_dtype dtype, uint32_t l0,
                                   uint32_t nl, void *out)
{
    size_t per = codec_layer_values(&r->v.info);
    const codec_rsection *pay = codec_view_section(&r->v, SEC_PAYLOAD);
    struct f16_job j = {pay->data + 2 * per * l0, dtype, out, 0};
    rk_pool_for(r->pool, per * nl, 1 << 16, f16_range, &j);
    if (j.bad)
        return rk_error_set(RK_ERR_FORMAT, "raw: Inf or NaN value");
    return RK_OK;
}

const struct codec_i codec_raw_i = {
    .id = CODEC_RAW, .name = "raw", .default_level = 0, .max_level = 0,
    .encode = raw_encode, .open = raw_open, .decode_layers = raw_decode_layers,
};

/* ---- lz4: per (layer, K|V) plane, fp16 low bytes then high bytes, one LZ4 block -------- */

struct lz4_enc_job {
    const float *kv;   /* canonical layout input */
    size_t plane;      /* values per (layer, K|V) */
    int level;         /* 0 LZ4 fast, 1 LZ4 HC */
    uint8_t **blocks;  /* [L*2] compressed, owned by the caller */
    int *sizes;        /* [L*2] compressed bytes */
    int failed;        /* allocation or compression failed */
};

/* Shuffle and compress planes [b, e), each into its own malloc'd block. */
static void lz4_enc_range(void *vctx, size_t b, size_t e)
{
    struct lz4_enc_job *j = vctx;
    size_t n = j->plane;
    uint8_t *sh = rk_malloc(2 * n);
    if (!sh)
        goto fail;
    for (size_t i = b; i < e; i++) {
        const float *x = j->kv + i * n;
        for (size_t k = 0; k < n; k++) {
            uint16_t h = rk_f32_to_f16(x[k]);
            sh[k] = (uint8_t)h;
            sh[n + k] = (uint8_t)(h >> 8);
        }
        int bound = LZ4_compressBound((int)(2 * n));
        j->blocks[i] = rk_malloc((size_t)bound);
        if (!j->blocks[i])
            goto fail;
        j->sizes[i] = j->level == 0
                          ? LZ4_compress_default((const char *)sh, (char *)j->blocks[i], (int)(2 * n), bound)
                          : LZ4_compress_HC((const char *)sh, (char *)j->blocks[i], (int)(2 * n), bound, 9);
        if (j->sizes[i] <= 0)
            goto fail;
    }
    rk_free(sh);
    return;
fail:
    rk_free(sh);
    __atomic_store_n(&j->failed, 1, __ATOMIC_RELAXED);
}

/* lz4: INDEX (u32 compressed size per plane) and PAYLOAD (the blocks back to back). */
static rk_status lz4_encode(const float *kv, const codec_shape *shape, const codec_params *p,
                            int level, codec_wsections *w, uint64_t *cbid)
{
    size_t nb = (size_t)shape->n_layers * 2;
    size_t plane = codec_shape_values(shape) / nb;
    if (2 * plane > LZ4_MAX_INPUT_SIZE)
        return rk_error_set(RK_ERR_LIMIT, "lz4: %zu bytes per layer plane", 2 * plane);
    rk_status st = RK_OK;
    uint8_t **blocks = rk_calloc(nb, sizeof *blocks);
    int *sizes = rk_calloc(nb, sizeof *sizes);
    if (!blocks || !sizes) {
        st = rk_error_set(RK_ERR_NOMEM, "lz4");
        goto done;
    }
    struct lz4_enc_job j = {kv, plane, level, blocks, sizes, 0};
    rk_pool_for(p->pool, nb, 1, lz4_enc_range, &j);
    if (j.failed) {
        st = rk_error_set(RK_ERR_NOMEM, "lz4: compression failed");
        goto done;
    }
    rk_buf *idx = codec_wsections_add(w, SEC_INDEX);
    rk_buf *pay = codec_wsections_add(w, SEC_PAYLOAD);
    for (size_t i = 0; i < nb; i++) {
        rk_buf_put_u32(idx, (uint32_t)sizes[i]);
        rk_buf_append(pay, blocks[i], (size_t)sizes[i]);
    }
done:
    for (size_t i = 0; blocks && i < nb; i++)
        rk_free(blocks[i]);
    rk_free(blocks);
    rk_free(sizes);
    return st;
}

struct lz4_dec_job {
    const uint8_t *payload; /* the concatenated blocks (borrowed) */
    const uint64_t *offs;   /* [blocks decoded + 1] their offsets in payload */
    size_t plane;           /* values per block */
    codec_dtype dtype;      /* output element type */
    void *out;              /* canonical layout output, from the first block decoded */
    int failed;             /* 1 malformed block, 2 out of memory, 3 Inf/NaN value */
};

/* Decompress and unshuffle blocks [b, e) of the job; any malformed block sets failed. */
static void lz4_dec_range(void *vctx, size_t b, size_t e)
{
    struct lz4_dec_job *j = vctx;
    size_t n = j->plane;
    uint8_t *sh = rk_malloc(2 * n);
    if (!sh) {
        __atomic_store_n(&j->failed, 2, __ATOMIC_RELAXED);
        return;
    }
    for (size_t i = b; i < e; i++) {
        int got = LZ4_decompress_safe((const char *)j->payload + j->offs[i], (char *)sh,
                                      (int)(j->offs[i + 1] - j->offs[i]), (int)(2 * n));
        if (got != (int)(2 * n)) {
            __atomic_store_n(&j->failed, 1, __ATOMIC_RELAXED);
            break;
        }
        for (size_t k = 0; k < n; k++) {
            uint16_t h = (uint16_t)(sh[k] | sh[n + k] << 8);
            if ((h & 0x7c00) == 0x7c00) { /* Inf or NaN: no encoder of ours writes one */
                __atomic_store_n(&j->failed, 3, __ATOMIC_RELAXED);
                break;
            }
            if (j->dtype == CODEC_F16)
                ((uint16_t *)j->out)[i * n + k] = h;
            else
                codec_store(j->out, j->dtype, i * n + k, rk_f16_to_f32(h));
        }
    }
    rk_free(sh);
}

/* lz4: the index must give every (layer, K|V) block a size, together the payload's; the
 * reader keeps their offsets ([L*2 + 1] uint64_t, owned). */
static rk_status lz4_open(codec_reader *r)
{
    const codec_view *v = &r->v;
    size_t nb = (size_t)v->info.shape.n_layers * 2;
    size_t plane = codec_shape_values(&v->info.shape) / nb;
    const codec_rsection *idx = codec_view_section(v, SEC_INDEX);
    const codec_rsection *pay = codec_view_section(v, SEC_PAYLOAD);
    if (v->info.n_sections != 2 || !idx || !pay || idx->len != 4 * nb)
        return rk_error_set(RK_ERR_FORMAT, "lz4: bad sections");
    if (2 * plane > LZ4_MAX_INPUT_SIZE)
        return rk_error_set(RK_ERR_FORMAT, "lz4: plane of %zu bytes", 2 * plane);
    uint64_t *offs = rk_malloc((nb + 1) * sizeof *offs);
    if (!offs)
        return rk_error_set(RK_ERR_NOMEM, "lz4");
    uint64_t off = 0;
    for (size_t i = 0; i < nb; i++) {
        offs[i] = off;
        uint32_t sz = rk_get_le32(idx->data + 4 * i);
        if (sz > (uint32_t)LZ4_MAX_INPUT_SIZE)
            off = UINT64_MAX / 2;
        off += sz;
    }
    offs[nb] = off;
    if (off != pay->len) {
        rk_free(offs);
        return rk_error_set(RK_ERR_FORMAT, "lz4: blocks total %llu bytes, payload %zu",
                            (unsigned long long)off, pay->len);
    }
    r->ctx = offs;
    return RK_OK;
}

/* lz4: decompress the layers' blocks in parallel, on the CPU (the CUDA path too). */
static rk_status lz4_decode_layers(const codec_reader *r, codec_dtype dtype, uint32_t l0,
                                   uint32_t nl, void *out)
{
    const uint64_t *offs = r->ctx;
    const codec_rsection *pay = codec_view_section(&r->v, SEC_PAYLOAD);
    struct lz4_dec_job j = {pay->data, offs + 2 * (size_t)l0, codec_layer_values(&r->v.info) / 2,
                            dtype, out, 0};
    rk_pool_for(r->pool, 2 * (size_t)nl, 1, lz4_dec_range, &j);
    if (j.failed == 2)
        return rk_error_set(RK_ERR_NOMEM, "lz4");
    if (j.failed == 3)
        return rk_error_set(RK_ERR_FORMAT, "lz4: Inf or NaN value");
    if (j.failed)
        return rk_error_set(RK_ERR_CORRUPT, "lz4: malformed block");
    return RK_OK;
}

const struct codec_i codec_lz4_i = {
    .id = CODEC_LZ4, .name = "lz4", .default_level = 0, .max_level = 1,
    .encode = lz4_encode, .open = lz4_open, .decode_layers = lz4_decode_layers,
    .close = rk_free,
};

/* ---- q8 ---------------------------------------------------------------------------------- */

struct q8_job {
    const float *kv;   /* [rows][D] */
    uint32_t D;        /* head_dim: values per row */
    uint8_t *scales;   /* [rows] fp16 LE */
    int8_t *q;         /* [rows][D] */
};

/* Quantize rows [b, e) of head_dim values: fp16 scale = max|x| / 127, int8 q. */
static void q8_enc_range(void *vctx, size_t b, size_t e)
{
    struct q8_job *j = vctx;
    for (size_t r = b; r < e; r++) {
        const float *x = j->kv + r * j->D;
        float m = 0;
        for (uint32_t d = 0; d < j->D; d++)
            if (fabsf(x[d]) > m)
                m = fabsf(x[d]);
        uint16_t h = rk_f32_to_f16(m / 127.0f);
        float s = rk_f16_to_f32(h);
        rk_put_le16(j->scales + 2 * r, h);
        for (uint32_t d = 0; d < j->D; d++) {
            float q = s > 0 ? rintf(x[d] / s) : 0.0f;
            q = q > 127 ? 127 : q < -127 ? -127 : q;
            j->q[r * j->D + d] = (int8_t)q;
        }
    }
}

/* q8: SCALES (fp16 per row) and PAYLOAD (int8 per value). */
static rk_status q8_encode(const float *kv, const codec_shape *shape, const codec_params *p,
                           int level, codec_wsections *w, uint64_t *cbid)
{
    size_t n = codec_shape_values(shape), rows = n / shape->head_dim;
    rk_buf *sc = codec_wsections_add(w, SEC_SCALES);
    rk_buf *pay = codec_wsections_add(w, SEC_PAYLOAD);
    if (!rk_buf_reserve(sc, 2 * rows) || !rk_buf_reserve(pay, n))
        return rk_error_set(RK_ERR_NOMEM, "q8: %zu bytes", n);
    struct q8_job j = {kv, shape->head_dim, sc->data, (int8_t *)pay->data};
    rk_pool_for(p->pool, rows, 256, q8_enc_range, &j);
    sc->len = 2 * rows;
    pay->len = n;
    return RK_OK;
}

struct q8_dec_job {
    const uint8_t *scales;  /* [rows] fp16 LE, from the first row decoded */
    const int8_t *q;        /* [rows][D], likewise */
    uint32_t D;             /* head_dim: values per row */
    codec_dtype dtype;      /* output element type */
    void *out;              /* canonical layout output, likewise */
    int bad; /* a scale was not a finite non-negative number */
};

/* Dequantize rows [b, e) of the job; a non-finite or negative scale sets bad. */
static void q8_dec_range(void *vctx, size_t b, size_t e)
{
    struct q8_dec_job *j = vctx;
    for (size_t r = b; r < e; r++) {
        float s = rk_f16_to_f32(rk_get_le16(j->scales + 2 * r));
        if (!(s >= 0.0f && s <= 65504.0f)) {
            __atomic_store_n(&j->bad, 1, __ATOMIC_RELAXED);
            return;
        }
        float row[256];
        for (uint32_t d0 = 0; d0 < j->D; d0 += 256) {
            uint32_t m = j->D - d0 < 256 ? j->D - d0 : 256;
            for (uint32_t d = 0; d < m; d++)
                row[d] = (float)j->q[r * j->D + d0 + d] * s;
            codec_store_row(j->out, j->dtype, r * j->D + d0, row, m);
        }
    }
}

/* q8: section sizes must fit the geometry (scales are checked as they are used). */
static rk_status q8_open(codec_reader *r)
{
    const codec_view *v = &r->v;
    size_t n = codec_shape_values(&v->info.shape), rows = n / v->info.shape.head_dim;
    const codec_rsection *sc = codec_view_section(v, SEC_SCALES);
    const codec_rsection *pay = codec_view_section(v, SEC_PAYLOAD);
    if (v->info.n_sections != 2 || !sc || !pay || sc->len / 2 != rows || sc->len % 2 ||
        pay->len != n)
        return rk_error_set(RK_ERR_FORMAT, "q8: sections do not fit the geometry");
    return RK_OK;
}

/* q8: dequantize the layers' rows in parallel. */
static rk_status q8_decode_layers(const codec_reader *r, codec_dtype dtype, uint32_t l0,
                                  uint32_t nl, void *out)
{
    uint32_t D = r->v.info.shape.head_dim;
    size_t rows = codec_layer_values(&r->v.info) / D, r0 = rows * l0;
    const codec_rsection *sc = codec_view_section(&r->v, SEC_SCALES);
    const codec_rsection *pay = codec_view_section(&r->v, SEC_PAYLOAD);
    struct q8_dec_job j = {sc->data + 2 * r0, (const int8_t *)pay->data + r0 * D, D, dtype,
                           out, 0};
    rk_pool_for(r->pool, rows * nl, 256, q8_dec_range, &j);
    if (j.bad)
        return rk_error_set(RK_ERR_FORMAT, "q8: invalid scale");
    return RK_OK;
}

const struct codec_i codec_q8_i = {
    .id = CODEC_Q8, .name = "q8", .default_level = 0, .max_level = 0,
    .encode = q8_encode, .open = q8_open, .decode_layers = q8_decode_layers,
};
