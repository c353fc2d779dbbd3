/* container.c — the versioned container: header, section table, per-section checksums
 * (docs/format.md is the specification; keep the two in step). */
#include <string.h>

#include "codec_impl.h"
#include "ragkv/alloc.h"
#include "ragkv/hash.h"

size_t codec_shape_values(const codec_shape *s)
{
    size_t n = 2;
    if (!rk_mul_size(n, s->n_layers, &n) || !rk_mul_size(n, s->n_tokens, &n) ||
        !rk_mul_size(n, s->n_kv_heads, &n) || !rk_mul_size(n, s->head_dim, &n))
        return 0;
    return n;
}

size_t codec_decoded_bytes(const codec_info *info, codec_dtype dtype)
{
    size_t n = codec_shape_values(&info->shape);
    size_t esz = dtype == CODEC_F32 ? 4 : 2;
    if (!rk_mul_size(n, esz, &n))
        return 0;
    return n;
}

rk_buf *codec_wsections_add(codec_wsections *w, uint32_t type)
{
    if (w->n >= CODEC_MAX_SECTIONS)
        return NULL;
    codec_wsection *s = &w->s[w->n++];
    s->type = type;
    s->buf = (rk_buf)RK_BUF_INIT;
    return &s->buf;
}

void codec_wsections_free(codec_wsections *w)
{
    for (int i = 0; i < w->n; i++)
        rk_buf_free(&w->s[i].buf);
    w->n = 0;
}

/* XXH3 over header bytes [0, 40) followed by the section table. */
static uint64_t header_sum(const uint8_t *hdr, const uint8_t *table, size_t nsec)
{
    uint8_t tmp[40 + CODEC_MAX_SECTIONS * CODEC_SECTION_BYTES];
    memcpy(tmp, hdr, 40);
    memcpy(tmp + 40, table, nsec * CODEC_SECTION_BYTES);
    return rk_xxh3_64(tmp, 40 + nsec * CODEC_SECTION_BYTES);
}

rk_status codec_container_write(const codec_shape *shape, codec_id id, int level,
                                uint64_t codebook_id, const codec_wsections *w, rk_buf *out)
{
    uint8_t hdr[CODEC_HEADER_BYTES] = {0};
    uint8_t table[CODEC_MAX_SECTIONS * CODEC_SECTION_BYTES] = {0};
    if (w->n < 1 || w->n > CODEC_MAX_SECTIONS)
        return rk_error_set(RK_ERR_INTERNAL, "container: %d sections", w->n);
    rk_put_le32(hdr + 0, CODEC_MAGIC);
    rk_put_le16(hdr + 4, CODEC_VERSION);
    rk_put_le16(hdr + 6, CODEC_HEADER_BYTES);
    rk_put_le32(hdr + 8, shape->n_layers);
    rk_put_le32(hdr + 12, shape->n_tokens);
    rk_put_le32(hdr + 16, shape->n_kv_heads);
    rk_put_le32(hdr + 20, shape->head_dim);
    hdr[24] = CODEC_F32;
    hdr[25] = (uint8_t)id;
    hdr[26] = (uint8_t)level;
    hdr[27] = (uint8_t)w->n;
    rk_put_le32(hdr + 28, 0); /* flags: none defined in version 1 */
    rk_put_le64(hdr + 32, codebook_id);
    uint64_t off = CODEC_HEADER_BYTES + (uint64_t)w->n * CODEC_SECTION_BYTES;
    for (int i = 0; i < w->n; i++) {
        uint8_t *e = table + (size_t)i * CODEC_SECTION_BYTES;
        if (w->s[i].buf.failed)
            return rk_error_set(RK_ERR_NOMEM, "container: section %d", i);
        rk_put_le32(e + 0, w->s[i].type);
        rk_put_le32(e + 4, 0);
        rk_put_le64(e + 8, off);
        rk_put_le64(e + 16, w->s[i].buf.len);
        rk_put_le64(e + 24, rk_xxh3_64(w->s[i].buf.data, w->s[i].buf.len));
        off += w->s[i].buf.len;
    }
    rk_put_le64(hdr + 40, header_sum(hdr, table, (size_t)w->n));
    size_t start = out->len;
    if (!rk_buf_reserve(out, (size_t)off))
        return rk_error_set(RK_ERR_NOMEM, "container: %llu bytes", (unsigned long long)off);
    rk_buf_append(out, hdr, sizeof hdr);
    rk_buf_append(out, table, (size_t)w->n * CODEC_SECTION_BYTES);
    for (int i = 0; i < w->n; i++)
        rk_buf_append(out, w->s[i].buf.data, w->s[i].buf.len);
    if (out->failed) {
        out->len = start;
        return rk_error_set(RK_ERR_NOMEM, "container");
    }
    return RK_OK;
}

rk_status codec_view_parse(const void *data, size_t len, bool verify, codec_view *v)
{
    const uint8_t *p = data;
    memset(v, 0, sizeof *v);
    if (!data || len < 8)
        return rk_error_set(RK_ERR_TRUNCATED, "container: %zu bytes, header needs %d", len,
                            CODEC_HEADER_BYTES);
    if (rk_get_le32(p) != CODEC_MAGIC)
        return rk_error_set(RK_ERR_FORMAT, "container: bad magic (not a ragkv KV container)");
    uint32_t version = rk_get_le16(p + 4);
    if (version != CODEC_VERSION)
        return rk_error_set(RK_ERR_UNSUPPORTED, "container: version %u (this build reads %d)",
                            version, CODEC_VERSION);
    if (rk_get_le16(p + 6) != CODEC_HEADER_BYTES)
        return rk_error_set(RK_ERR_FORMAT, "container: header size %u", rk_get_le16(p + 6));
    if (len < CODEC_HEADER_BYTES)
        return rk_error_set(RK_ERR_TRUNCATED, "container: %zu bytes, header needs %d", len,
                            CODEC_HEADER_BYTES);
    uint32_t nsec = p[27];
    if (nsec < 1 || nsec > CODEC_MAX_SECTIONS)
        return rk_error_set(RK_ERR_FORMAT, "container: %u sections", nsec);
    size_t table_end = CODEC_HEADER_BYTES + (size_t)nsec * CODEC_SECTION_BYTES;
    if (len < table_end)
        return rk_error_set(RK_ERR_TRUNCATED, "container: section table cut short");
    const uint8_t *table = p + CODEC_HEADER_BYTES;
    if (header_sum(p, table, nsec) != rk_get_le64(p + 40))
        return rk_error_set(RK_ERR_CORRUPT, "container: header checksum mismatch");
    /* From here on the header is what its writer wrote: malformed means a buggy or
     * hostile writer, not damage. */
    codec_info *in = &v->info;
    in->version = version;
    in->shape.n_layers = rk_get_le32(p + 8);
    in->shape.n_tokens = rk_get_le32(p + 12);
    in->shape.n_kv_heads = rk_get_le32(p + 16);
    in->shape.head_dim = rk_get_le32(p + 20);
    if (!in->shape.n_layers || !in->shape.n_tokens || !in->shape.n_kv_heads ||
        !in->shape.head_dim || codec_shape_values(&in->shape) == 0 ||
        codec_shape_values(&in->shape) > ((size_t)1 << 48))
        return rk_error_set(RK_ERR_FORMAT, "container: bad geometry %u,%u,%u,%u",
                            in->shape.n_layers, in->shape.n_tokens, in->shape.n_kv_heads,
                            in->shape.head_dim);
    if (p[24] > CODEC_BF16)
        return rk_error_set(RK_ERR_FORMAT, "container: source dtype %u", p[24]);
    in->src_dtype = (codec_dtype)p[24];
    in->codec = (codec_id)p[25];
    if (!codec_lookup(in->codec))
        return rk_error_set(RK_ERR_UNSUPPORTED, "container: codec id %u", p[25]);
    in->level = p[26];
    if (in->level > codec_lookup(in->codec)->max_level)
        return rk_error_set(RK_ERR_UNSUPPORTED, "container: %s level %d",
                            codec_lookup(in->codec)->name, in->level);
    if (rk_get_le32(p + 28) != 0)
        return rk_error_set(RK_ERR_UNSUPPORTED, "container: unknown flags 0x%x",
                            rk_get_le32(p + 28));
    in->codebook_id = rk_get_le64(p + 32);
    in->n_sections = nsec;
    in->total_bytes = len;
    in->overhead_bytes = table_end;
    uint64_t off = table_end;
    unsigned seen = 0;
    for (uint32_t i = 0; i < nsec; i++) {
        const uint8_t *e = table + (size_t)i * CODEC_SECTION_BYTES;
        uint32_t type = rk_get_le32(e);
        uint64_t soff = rk_get_le64(e + 8), slen = rk_get_le64(e + 16);
        if (type < SEC_PARAMS || type > SEC_PAYLOAD || (seen & (1u << type)))
            return rk_error_set(RK_ERR_FORMAT, "container: section %u has type %u", i, type);
        seen |= 1u << type;
        if (rk_get_le32(e + 4) != 0)
            return rk_error_set(RK_ERR_FORMAT, "container: section %u reserved field", i);
        if (soff != off)
            return rk_error_set(RK_ERR_FORMAT, "container: section %u at %llu, expected %llu",
                                i, (unsigned long long)soff, (unsigned long long)off);
        if (slen > len - off)
            return rk_error_set(RK_ERR_TRUNCATED, "container: section %u ends at %llu of %zu",
                                i, (unsigned long long)(off + slen), len);
        v->sec[i].type = type;
        v->sec[i].data = p + off;
        v->sec[i].len = (size_t)slen;
        if (verify && rk_xxh3_64(p + off, (size_t)slen) != rk_get_le64(e + 24))
            return rk_error_set(RK_ERR_CORRUPT, "container: section %u (type %u) checksum "
                                "mismatch", i, type);
        if (type == SEC_PAYLOAD)
            in->payload_bytes += (size_t)slen;
        else if (type == SEC_TABLES)
            in->table_bytes += (size_t)slen;
        else
            in->overhead_bytes += (size_t)slen;
        off += slen;
    }
    if (off != len)
        return rk_error_set(RK_ERR_FORMAT, "container: %llu trailing bytes",
                            (unsigned long long)(len - off));
    return RK_OK;
}

const codec_rsection *codec_view_section(const codec_view *v, uint32_t type)
{
    for (uint32_t i = 0; i < v->info.n_sections; i++)
        if (v->sec[i].type == type)
            return &v->sec[i];
    return NULL;
}

rk_status codec_inspect(const void *data, size_t len, codec_info *out)
{
    codec_view v;
    rk_status st = codec_view_parse(data, len, false, &v);
    if (st == RK_OK && out)
        *out = v.info;
    return st;
}
