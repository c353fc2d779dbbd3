/* chunk.c — stored chunk blobs and the executor's chunk work (prefill, encode, store, fetch). */
#include "chunk.h"

#include "cluster.h"

#include <string.h>

#include "ragkv/alloc.h"
#include "ragkv/blend.h"
#include "ragkv/clock.h"

static const uint8_t chunk_magic[4] = {'R', 'K', 'C', '1'};

rk_status svc_chunk_wrap(const int32_t *tokens, uint32_t n, const void *container, size_t clen, rk_buf *out)
{
    rk_buf_append(out, chunk_magic, 4);
    rk_buf_put_u32(out, n);
    for (uint32_t i = 0; i < n; i++)
        rk_buf_put_u32(out, (uint32_t)tokens[i]);
    rk_buf_append(out, container, clen);
    return out->failed ? RK_ERR_NOMEM : RK_OK;
}

rk_status svc_chunk_unwrap(const uint8_t *blob, size_t len, int32_t **tokens, uint32_t *n,
                           const uint8_t **container, size_t *clen)
{
    rk_reader r = rk_reader_make(blob, len);
    const uint8_t *m = rk_reader_take(&r, 4);
    if (!m || memcmp(m, chunk_magic, 4) != 0)
        return rk_error_set(RK_ERR_FORMAT, "stored chunk: bad magic");
    uint32_t cnt = rk_reader_u32(&r);
    if (r.short_read || cnt == 0 || (size_t)cnt * 4 > rk_reader_left(&r))
        return rk_error_set(RK_ERR_TRUNCATED, "stored chunk: token list truncated");
    const uint8_t *p = rk_reader_take(&r, (size_t)cnt * 4);
    int32_t *t = rk_malloc((size_t)cnt * 4);
    if (!t)
        return RK_ERR_NOMEM;
    for (uint32_t i = 0; i < cnt; i++)
        t[i] = (int32_t)rk_get_le32(p + 4 * (size_t)i);
    *n = cnt;
    *tokens = t;
    *container = blob + r.off;
    *clen = rk_reader_left(&r);
    return RK_OK;
}

/* A container's geometry against the model and n tokens, and no codebook. */
static rk_status check_geometry(const svc_chunk_ctx *x, const uint8_t *container, size_t clen, uint32_t n,
                                codec_info *ci)
{
    const eng_model_info *mi = eng_model_get_info(x->model);
    rk_status st = codec_inspect(container, clen, ci);
    if (st != RK_OK)
        return st;
    if (n == 0) /* (bl_container_check reads 0 as any length) */
        return rk_error_set(RK_ERR_INVALID, "a chunk of 0 tokens");
    if ((st = bl_container_check(mi, ci, n)) != RK_OK)
        return st;
    if (ci->codebook_id)
        return rk_error_set(RK_ERR_UNSUPPORTED, "containers that need a codebook are not accepted yet");
    return RK_OK;
}

rk_status svc_chunk_check(const svc_chunk_ctx *x, const uint8_t *container, size_t clen, uint32_t n,
                          float **kv_out)
{
    codec_info ci;
    rk_status st = check_geometry(x, container, clen, n, &ci);
    if (st != RK_OK)
        return st;
    size_t bytes = codec_decoded_bytes(&ci, CODEC_F32);
    float *kv = bytes ? rk_malloc(bytes) : NULL;
    if (!kv)
        return RK_ERR_NOMEM;
    codec_decode_opts o = {.pool = x->pool};
    st = codec_decode(container, clen, &o, CODEC_F32, kv, bytes);
    if (st != RK_OK || !kv_out)
        rk_free(kv);
    else
        *kv_out = kv;
    return st;
}

/* Unwrap the stored chunk b and check that its tokens are the ones key names: *t (rk_free) and
 * the container inside b. */
static rk_status unwrap_checked(const cc_key *key, const cc_record *rec, const cc_buf *b, int32_t **t, uint32_t *n,
                                const uint8_t **cont, size_t *clen)
{
    *t = NULL;
    rk_status st = svc_chunk_unwrap(b->data, b->len, t, n, cont, clen);
    if (st == RK_OK) {
        cc_key k;
        st = cc_key_compute(rec->model, rec->ns, *t, *n, &k);
        if (st == RK_OK && !cc_key_equal(&k, key))
            st = rk_error_set(RK_ERR_CORRUPT, "stored chunk: tokens do not match the key");
    }
    if (st != RK_OK) {
        rk_free(*t);
        *t = NULL;
    }
    return st;
}

rk_status svc_chunk_view(const svc_chunk_ctx *x, const cc_key *key, const cc_record *rec, const cc_buf *b,
                         int32_t **tokens, uint32_t *n, const uint8_t **container, size_t *clen)
{
    int32_t *t = NULL;
    codec_info ci;
    rk_status st = unwrap_checked(key, rec, b, &t, n, container, clen);
    if (st == RK_OK && (st = check_geometry(x, *container, *clen, *n, &ci)) != RK_OK)
        rk_free(t);
    if (st == RK_OK)
        *tokens = t;
    return st;
}

rk_status svc_chunk_open(const svc_chunk_ctx *x, const cc_key *key, const cc_record *rec, const cc_buf *b,
                         int32_t **tokens, uint32_t *n, float **kv, eng_backend *be, eng_kvblock **blk)
{
    const uint8_t *cont = NULL;
    size_t clen = 0;
    int32_t *t = NULL;
    if (blk)
        *blk = NULL;
    rk_status st = unwrap_checked(key, rec, b, &t, n, &cont, &clen);
    if (st == RK_OK && kv) {
        st = svc_chunk_check(x, cont, clen, *n, kv);
    } else if (st == RK_OK && blk) {
        codec_info ci;
        codec_decode_opts o = {.pool = x->pool};
        if ((st = check_geometry(x, cont, clen, *n, &ci)) == RK_OK)
            st = bl_kvblock_decode(be, cont, clen, &o, blk);
    }
    if (st != RK_OK) {
        rk_free(t);
        return st;
    }
    *tokens = t;
    return RK_OK;
}

/* svc_chunk_fetch (kv) and svc_chunk_fetch_block (be, blk): at most one of kv and blk. */
static rk_status fetch(const svc_chunk_ctx *x, const char *tenant, const cc_key *key, int32_t **tokens, uint32_t *n,
                       float **kv, eng_backend *be, eng_kvblock **blk, cc_record *rec_out)
{
    cc_buf *b = NULL;
    cc_record rec;
    cc_record_init(&rec);
    rk_status st = svc_cluster_get(x->cluster, x->store, tenant, key, &b, &rec);
    if (st != RK_OK)
        return st;
    st = svc_chunk_open(x, key, &rec, b, tokens, n, kv, be, blk);
    cc_buf_release(b);
    if (st == RK_OK && rec_out)
        *rec_out = rec; /* the caller's now */
    else
        cc_record_clear(&rec);
    return st;
}

rk_status svc_chunk_fetch(const svc_chunk_ctx *x, const char *tenant, const cc_key *key, int32_t **tokens,
                          uint32_t *n, float **kv, cc_record *rec)
{
    return fetch(x, tenant, key, tokens, n, kv, NULL, NULL, rec);
}

rk_status svc_chunk_fetch_block(const svc_chunk_ctx *x, eng_backend *be, const char *tenant, const cc_key *key,
                                int32_t **tokens, uint32_t *n, eng_kvblock **blk, cc_record *rec)
{
    return fetch(x, tenant, key, tokens, n, NULL, be, blk, rec);
}

rk_status svc_chunk_encode(const svc_chunk_ctx *x, const int32_t *tokens, uint32_t n, rk_buf *container,
                           double *prefill_ms)
{
    uint64_t t0 = rk_now_ns();
    float *kv = rk_malloc(eng_kv_floats(x->model, n) * sizeof(float));
    if (!kv)
        return rk_error_set(RK_ERR_NOMEM, "chunk KV");
    rk_status st = bl_chunk_prefill(x->model, x->backend, tokens, n, kv);
    *prefill_ms = (double)(rk_now_ns() - t0) / 1e6;
    if (st == RK_OK)
        st = svc_kv_encode(x, kv, n, x->codec, x->level, container);
    rk_free(kv);
    return st;
}

rk_status svc_kv_encode(const svc_chunk_ctx *x, const float *kv, uint32_t n, codec_id codec, int level, rk_buf *out)
{
    const eng_model_info *mi = eng_model_get_info(x->model);
    codec_shape shape = {(uint32_t)mi->n_layers, n, (uint32_t)mi->n_kv_heads, (uint32_t)mi->head_dim};
    codec_params p = codec_params_default(codec);
    p.level = level;
    p.pool = x->pool;
    return codec_encode(kv, &shape, &p, out);
}

rk_status svc_chunk_args(const svc_chunk_ctx *x, const int32_t *tokens, uint32_t n, const rk_buf *container,
                         double cost, rk_buf *blob, cc_put_args *a)
{
    codec_info ci;
    rk_status st = svc_chunk_wrap(tokens, n, container->data, container->len, blob);
    if (st == RK_OK && (st = codec_inspect(container->data, container->len, &ci)) == RK_OK)
        *a = (cc_put_args){.model = eng_model_get_info(x->model)->id, .tokens = tokens, .ntokens = n,
                           .codec = (uint16_t)ci.codec, .level = (uint16_t)ci.level, .blob = blob->data,
                           .blob_len = blob->len, .cost = cost};
    return st;
}

rk_status svc_chunk_put(const svc_chunk_ctx *x, const char *tenant, const int32_t *tokens, uint32_t n,
                        cc_key *key, int *created, uint64_t *stored_bytes)
{
    const eng_model_info *mi = eng_model_get_info(x->model);
    rk_status st = cc_key_compute(mi->id, tenant, tokens, n, key);
    if (st != RK_OK)
        return st;
    uint8_t present = 0;
    if ((st = cc_store_lookup(x->store, tenant, key, 1, &present)) != RK_OK)
        return st;
    *created = 0;
    *stored_bytes = 0;
    if (present)
        return RK_OK;
    rk_buf cont = RK_BUF_INIT, blob = RK_BUF_INIT;
    double ms = 0;
    cc_put_args a;
    st = svc_chunk_encode(x, tokens, n, &cont, &ms);
    if (st == RK_OK)
        st = svc_chunk_args(x, tokens, n, &cont, ms, &blob, &a);
    if (st == RK_OK)
        st = svc_cluster_put(x->cluster, x->store, tenant, &a, key);
    if (st == RK_OK) {
        *created = 1;
        *stored_bytes = blob.len;
    }
    rk_buf_free(&cont);
    rk_buf_free(&blob);
    return st;
}
