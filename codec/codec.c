/* codec.c — the public entry points: codec registry, input checks, encode and decode
 * dispatch through struct codec_i (codec_decode is a reader that decodes every layer), raw
 * tensor files, synthetic KV. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "codec_impl.h"
#include "ragkv/alloc.h"

static const struct codec_i *const codecs[] = {&codec_raw_i, &codec_lz4_i, &codec_q8_i,
                                               &codec_cachegen_i};
#define NCODECS (sizeof(codecs) / sizeof(codecs[0]))

const struct codec_i *codec_lookup(codec_id id)
{
    for (size_t i = 0; i < NCODECS; i++)
        if (codecs[i]->id == id)
            return codecs[i];
    return NULL;
}

rk_status codec_id_parse(const char *name, codec_id *out)
{
    for (size_t i = 0; name && i < NCODECS; i++)
        if (!strcmp(codecs[i]->name, name)) {
            *out = codecs[i]->id;
            return RK_OK;
        }
    return rk_error_set(RK_ERR_NOT_FOUND, "unknown codec '%s' (raw, lz4, q8, cachegen)",
                        name ? name : "(null)");
}

const char *codec_id_name(codec_id id)
{
    const struct codec_i *c = codec_lookup(id);
    return c ? c->name : "unknown";
}

rk_status codec_levels(codec_id id, int *default_level, int *max_level)
{
    const struct codec_i *c = codec_lookup(id);
    if (!c)
        return rk_error_set(RK_ERR_NOT_FOUND, "codec id %d", (int)id);
    if (default_level)
        *default_level = c->default_level;
    if (max_level)
        *max_level = c->max_level;
    return RK_OK;
}

codec_params codec_params_default(codec_id codec)
{
    codec_params p = {.codec = codec, .level = -1, .codebook = NULL, .k_scale_mode = -1,
                      .v_scale_mode = -1, .anchor_interval = -1, .group = -1,
                      .model_group = -1, .weights = NULL, .transform_block = 0,
                      .step_scale = 0.0f, .predict_k = 0, .pool = NULL};
    return p;
}

int codec_transform_block_default(const codec_shape *s)
{
    uint64_t C = (uint64_t)s->n_kv_heads * s->head_dim;
    if (C > 0 && C <= 64)
        return (int)C;
    return s->head_dim <= 64 ? (int)s->head_dim : 16;
}

/* Input check shared by every codec: finite values within the fp16 range. */
struct check_ctx {
    const float *kv;
    size_t bad; /* first offending index + 1, 0 when none (racy writes of any bad index) */
};

/* rk_pool_for body: record an index of a non-finite or out-of-fp16-range value in [b, e). */
static void check_range(void *vctx, size_t b, size_t e)
{
    struct check_ctx *c = vctx;
    for (size_t i = b; i < e; i++) {
        float x = c->kv[i];
        if (!(fabsf(x) <= 65504.0f)) { /* NaN fails too */
            __atomic_store_n(&c->bad, i + 1, __ATOMIC_RELAXED);
            return;
        }
    }
}

rk_status codec_encode(const float *kv, const codec_shape *shape, const codec_params *p,
                       rk_buf *out)
{
    if (!kv || !shape || !p || !out)
        return rk_error_set(RK_ERR_INVALID, "codec_encode: NULL argument");
    const struct codec_i *c = codec_lookup(p->codec);
    if (!c)
        return rk_error_set(RK_ERR_INVALID, "codec_encode: unknown codec id %d", (int)p->codec);
    size_t n = codec_shape_values(shape);
    if (!shape->n_layers || !shape->n_tokens || !shape->n_kv_heads || !shape->head_dim || !n)
        return rk_error_set(RK_ERR_INVALID, "codec_encode: bad shape %u,%u,%u,%u",
                            shape->n_layers, shape->n_tokens, shape->n_kv_heads,
                            shape->head_dim);
    if (shape->n_layers > CG_MAX_LAYERS || n > ((size_t)1 << 40))
        return rk_error_set(RK_ERR_LIMIT, "codec_encode: shape too large");
    int level = p->level < 0 ? c->default_level : p->level;
    if (p->codebook && p->codec == CODEC_CACHEGEN)
        level = codec_codebook_level(p->codebook);
    if (level > c->max_level)
        return rk_error_set(RK_ERR_RANGE, "codec_encode: %s has levels 0..%d, not %d", c->name,
                            c->max_level, level);
    struct check_ctx ck = {kv, 0};
    rk_pool_for(p->pool, n, 1 << 16, check_range, &ck);
    if (ck.bad) {
        size_t i = ck.bad - 1;
        return rk_error_set(RK_ERR_RANGE, "codec_encode: value %g at index %zu is not finite "
                            "or outside the fp16 range", (double)kv[i], i);
    }
    codec_wsections w = {.n = 0};
    uint64_t cbid = 0;
    rk_status st = c->encode(kv, shape, p, level, &w, &cbid);
    if (st == RK_OK)
        st = codec_container_write(shape, c->id, level, cbid, &w, out);
    codec_wsections_free(&w);
    return st;
}

rk_status codec_resolve_codebook(const codec_view *v, const codec_decode_opts *opts,
                                 const codec_codebook **out)
{
    *out = NULL;
    uint64_t id = v->info.codebook_id;
    if (!id)
        return RK_OK;
    if (opts && opts->codebook && codec_codebook_id(opts->codebook) == id) {
        *out = opts->codebook;
        return RK_OK;
    }
    if (opts && opts->resolve) {
        const codec_codebook *cb = NULL;
        rk_status st = opts->resolve(opts->resolve_ctx, id, &cb);
        if (st == RK_OK && cb && codec_codebook_id(cb) == id) {
            *out = cb;
            return RK_OK;
        }
        if (st != RK_OK && st != RK_ERR_NOT_FOUND)
            return st;
    }
    return rk_error_set(RK_ERR_NOT_FOUND, "container needs codebook %016llx",
                        (unsigned long long)id);
}

/* Parse, verify and open a container into r (caller's storage); on failure r holds nothing
 * to release. */
static rk_status reader_init(codec_reader *r, const void *data, size_t len,
                             const codec_decode_opts *opts)
{
    memset(r, 0, sizeof *r);
    rk_status st = codec_view_parse(data, len, true, &r->v);
    if (st != RK_OK)
        return st;
    size_t n = codec_shape_values(&r->v.info.shape);
    size_t maxv = opts && opts->max_values ? opts->max_values : ((size_t)1 << 32);
    if (n > maxv)
        return rk_error_set(RK_ERR_LIMIT, "codec: container of %zu values exceeds the limit %zu",
                            n, maxv);
    if ((st = codec_resolve_codebook(&r->v, opts, &r->cb)) != RK_OK)
        return st;
    r->iface = codec_lookup(r->v.info.codec); /* known: codec_view_parse checked */
    r->pool = opts ? opts->pool : NULL;
    return r->iface->open(r);
}

/* Release what reader_init built (r's storage stays the caller's). */
static void reader_fini(codec_reader *r)
{
    if (r->iface && r->iface->close)
        r->iface->close(r->ctx);
    r->ctx = NULL;
}

/* Check the arguments of a decode of layers [l0, l0 + nl) (who names the public function in
 * messages) and run the codec's. */
static rk_status reader_decode(const codec_reader *r, const char *who, codec_dtype dtype,
                               int64_t l0, int64_t nl, void *out, size_t out_bytes)
{
    uint32_t L = r->v.info.shape.n_layers;
    if (dtype != CODEC_F32 && dtype != CODEC_F16 && dtype != CODEC_BF16)
        return rk_error_set(RK_ERR_INVALID, "%s: dtype %d", who, (int)dtype);
    if (l0 < 0 || nl < 1 || l0 >= L || nl > L - l0)
        return rk_error_set(RK_ERR_INVALID, "%s: layers [%lld, %lld + %lld) of a %u-layer "
                            "container", who, (long long)l0, (long long)l0, (long long)nl, L);
    /* a whole number of layers: no overflow, codec_decoded_bytes is exact (<= 2^50) */
    size_t need = codec_decoded_bytes(&r->v.info, dtype) / L * (size_t)nl;
    if (!out || out_bytes < need)
        return rk_error_set(RK_ERR_INVALID, "%s: output holds %zu bytes, needs %zu", who,
                            out_bytes, need);
    return r->iface->decode_layers(r, dtype, (uint32_t)l0, (uint32_t)nl, out);
}

rk_status codec_decode(const void *data, size_t len, const codec_decode_opts *opts,
                       codec_dtype dtype, void *out, size_t out_bytes)
{
    codec_reader r;
    rk_status st = reader_init(&r, data, len, opts);
    if (st == RK_OK)
        st = reader_decode(&r, "codec_decode", dtype, 0, r.v.info.shape.n_layers, out, out_bytes);
    reader_fini(&r);
    return st;
}

rk_status codec_reader_open(const void *data, size_t len, const codec_decode_opts *opts,
                            codec_reader **out)
{
    if (!out)
        return rk_error_set(RK_ERR_INVALID, "codec_reader_open: NULL out");
    *out = NULL;
    codec_reader *r = rk_malloc(sizeof *r);
    if (!r)
        return rk_error_set(RK_ERR_NOMEM, "codec_reader_open");
    rk_status st = reader_init(r, data, len, opts);
    if (st != RK_OK) {
        reader_fini(r);
        rk_free(r);
        return st;
    }
    *out = r;
    return RK_OK;
}

const codec_info *codec_reader_info(const codec_reader *r) { return &r->v.info; }

rk_status codec_reader_decode_layers(codec_reader *r, codec_dtype dtype, int layer0,
                                     int n_layers, void *out, size_t out_bytes)
{
    if (!r)
        return rk_error_set(RK_ERR_INVALID, "codec_reader_decode_layers: NULL reader");
    return reader_decode(r, "codec_reader_decode_layers", dtype, layer0, n_layers, out,
                         out_bytes);
}

void codec_reader_close(codec_reader *r)
{
    if (!r)
        return;
    reader_fini(r);
    rk_free(r);
}

rk_status codec_f32_file_read(const char *path, const codec_shape *shape, float **out)
{
    *out = NULL;
    size_t n = codec_shape_values(shape), bytes;
    if (!n || !rk_mul_size(n, 4, &bytes))
        return rk_error_set(RK_ERR_INVALID, "%s: bad shape", path);
    FILE *f = fopen(path, "rb");
    if (!f)
        return rk_error_set(RK_ERR_IO, "%s: %s", path, strerror(errno));
    float *v = rk_malloc(bytes);
    rk_status st = RK_OK;
    if (!v) {
        st = rk_error_set(RK_ERR_NOMEM, "%s: %zu bytes", path, bytes);
        goto fail;
    }
    if (fseek(f, 0, SEEK_END) != 0) {
        st = rk_error_set(RK_ERR_IO, "%s: %s", path, strerror(errno));
        goto fail;
    }
    long size = ftell(f);
    if (size < 0 || (size_t)size != bytes) {
        st = rk_error_set(RK_ERR_FORMAT, "%s: %ld bytes, shape needs %zu", path, size, bytes);
        goto fail;
    }
    rewind(f);
    uint8_t *raw = (uint8_t *)v;
    if (fread(raw, 1, bytes, f) != bytes) {
        st = rk_error_set(RK_ERR_IO, "%s: short read", path);
        goto fail;
    }
    for (size_t i = 0; i < n; i++) { /* little-endian on disk, whatever the host */
        uint32_t u = rk_get_le32(raw + 4 * i);
        memcpy(&v[i], &u, 4);
    }
    fclose(f);
    *out = v;
    return RK_OK;
fail:
    fclose(f);
    rk_free(v);
    return st;
}

rk_status codec_f32_file_write(const char *path, const float *v, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return rk_error_set(RK_ERR_IO, "%s: %s", path, strerror(errno));
    uint8_t buf[4096];
    size_t i = 0;
    while (i < n) {
        size_t k = 0;
        for (; k < sizeof buf / 4 && i < n; k++, i++) {
            uint32_t u;
            memcpy(&u, &v[i], 4);
            rk_put_le32(buf + 4 * k, u);
        }
        if (fwrite(buf, 4, k, f) != k) {
            fclose(f);
            return rk_error_set(RK_ERR_IO, "%s: write failed", path);
        }
    }
    if (fclose(f) != 0)
        return rk_error_set(RK_ERR_IO, "%s: %s", path, strerror(errno));
    return RK_OK;
}

/* splitmix64: small, seeded, identical on every platform. */
static uint64_t sm64(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Uniform in [0, 1) from the top 24 bits. */
static float unif(uint64_t *s) { return (float)((sm64(s) >> 40) * (1.0 / 16777216.0)); }

/* Standard normal (Box-Muller). */
static float gauss(uint64_t *s)
{
    float u1 = unif(s), u2 = unif(s);
    if (u1 < 1e-7f)
        u1 = 1e-7f;
    return sqrtf(-2.0f * logf(u1)) * cosf(6.2831853f * u2);
}

void codec_synth_kv(const codec_shape *shape, uint64_t seed, float *out)
{
    uint32_t L = shape->n_layers, T = shape->n_tokens, H = shape->n_kv_heads,
             D = shape->head_dim, C = H * D;
    /* Channel statistics come from the upper 32 bits (the "model"), token noise from all
     * 64: seeds that share the upper half behave like chunks of one model. */
    uint64_t sm = (seed >> 32) * 0x2545f4914f6cdd1dull + 7, s = seed * 0x9e3779b97f4a7c15ull + 1;
    float *mean = rk_malloc(sizeof(float) * C), *sd = rk_malloc(sizeof(float) * C);
    float *state = rk_malloc(sizeof(float) * C);
    if (!mean || !sd || !state) { /* tiny allocations; fall back to zeros */
        memset(out, 0, codec_shape_values(shape) * sizeof(float));
        goto done;
    }
    for (uint32_t l = 0; l < L; l++)
        for (uint32_t kv = 0; kv < 2; kv++) {
            /* Layer-dependent magnitude; K has outlier channels, V is milder. */
            float base = kv == 0 ? 1.0f + 0.05f * (float)l : 0.3f + 0.02f * (float)l;
            for (uint32_t c = 0; c < C; c++) {
                sd[c] = base * (0.5f + unif(&sm));
                mean[c] = kv == 0 ? 0.5f * base * gauss(&sm) : 0.1f * base * gauss(&sm);
            }
            if (kv == 0) /* 2-4 outlier channels per head, 10-50x */
                for (uint32_t h = 0; h < H; h++) {
                    uint32_t no = 2 + (uint32_t)(sm64(&sm) % 3);
                    for (uint32_t o = 0; o < no; o++) {
                        uint32_t c = h * D + (uint32_t)(sm64(&sm) % D);
                        float f = 10.0f + 40.0f * unif(&sm);
                        sd[c] = base * f * 0.25f;
                        mean[c] = base * f * (unif(&sm) < 0.5f ? -1.0f : 1.0f);
                    }
                }
            /* AR(1) over tokens: x_t = rho x_{t-1} + sqrt(1 - rho^2) e_t (unit variance). */
            float rho = kv == 0 ? 0.9f : 0.7f, innov = sqrtf(1.0f - rho * rho);
            for (uint32_t c = 0; c < C; c++)
                state[c] = gauss(&s);
            for (uint32_t t = 0; t < T; t++) {
                float *row = out + (((size_t)l * 2 + kv) * T + t) * C;
                for (uint32_t c = 0; c < C; c++) {
                    if (t > 0)
                        state[c] = rho * state[c] + innov * gauss(&s);
                    row[c] = mean[c] + sd[c] * state[c];
                }
            }
        }
done:
    rk_free(mean);
    rk_free(sd);
    rk_free(state);
}
