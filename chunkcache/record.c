/* record.c — chunk record encoding (see ragkv/record.h). */
#include "ragkv/record.h"

#include <stdbool.h>
#include <string.h>

#include "ragkv/alloc.h"
#include "ragkv/hash.h"

static const uint8_t rec_magic[4] = {'R', 'K', 'R', '1'};

void cc_record_init(cc_record *r)
{
    memset(r, 0, sizeof(*r));
}

void cc_record_clear(cc_record *r)
{
    if (!r)
        return;
    rk_free(r->craft);
    rk_free(r->variants);
    memset(r, 0, sizeof(*r));
}

static rk_status dup_bytes(uint8_t **dst, const uint8_t *src, uint32_t n)
{
    *dst = NULL;
    if (!n)
        return RK_OK;
    if (!(*dst = rk_malloc(n)))
        return rk_error_set(RK_ERR_NOMEM, "record: %u opaque bytes", n);
    memcpy(*dst, src, n);
    return RK_OK;
}

rk_status cc_record_copy(cc_record *dst, const cc_record *src)
{
    *dst = *src;
    dst->craft = dst->variants = NULL;
    if (dup_bytes(&dst->craft, src->craft, src->craft_len) != RK_OK ||
        dup_bytes(&dst->variants, src->variants, src->variants_len) != RK_OK) {
        cc_record_clear(dst);
        return RK_ERR_NOMEM;
    }
    return RK_OK;
}

static rk_status check_name(const char *what, const char *s)
{
    size_t n = strnlen(s, CC_NAME_MAX + 1);
    if (n == 0 || n > CC_NAME_MAX)
        return rk_error_set(RK_ERR_INVALID, "record: %s is empty or longer than %d bytes", what,
                            CC_NAME_MAX);
    return RK_OK;
}

rk_status cc_record_encode(const cc_record *r, rk_buf *b)
{
    rk_status s;
    if ((s = check_name("namespace", r->ns)) != RK_OK || (s = check_name("model id", r->model)) != RK_OK)
        return s;
    if (r->craft_len > CC_OPAQUE_MAX || r->variants_len > CC_OPAQUE_MAX ||
        (r->craft_len && !r->craft) || (r->variants_len && !r->variants))
        return rk_error_set(RK_ERR_INVALID, "record: bad Cache-Craft fields");
    size_t start = b->len;
    rk_buf_append(b, rec_magic, 4);
    rk_buf_put_u32(b, 0); /* body length, patched below */
    size_t body = b->len;
    rk_buf_append(b, r->key.b, CC_KEY_BYTES);
    size_t nl = strlen(r->ns), ml = strlen(r->model);
    rk_buf_put_u8(b, (uint8_t)nl);
    rk_buf_append(b, r->ns, nl);
    rk_buf_put_u8(b, (uint8_t)ml);
    rk_buf_append(b, r->model, ml);
    rk_buf_put_u32(b, r->ntokens);
    rk_buf_put_u16(b, r->codec);
    rk_buf_put_u16(b, r->level);
    rk_buf_put_u64(b, r->size);
    rk_buf_put_u64(b, r->csum);
    rk_buf_put_u64(b, r->created_ms);
    rk_buf_put_u64(b, r->expires_ms);
    rk_buf_put_u8(b, (uint8_t)r->flags);
    uint64_t cbits;
    memcpy(&cbits, &r->cost, 8);
    rk_buf_put_u64(b, cbits);
    rk_buf_put_u32(b, r->craft_len);
    rk_buf_append(b, r->craft, r->craft_len);
    rk_buf_put_u32(b, r->variants_len);
    rk_buf_append(b, r->variants, r->variants_len);
    if (b->failed)
        return rk_error_set(RK_ERR_NOMEM, "record: encode");
    size_t blen = b->len - body;
    rk_put_le32(b->data + start + 4, (uint32_t)blen);
    rk_buf_put_u64(b, rk_xxh3_64(b->data + body, blen));
    return b->failed ? rk_error_set(RK_ERR_NOMEM, "record: encode") : RK_OK;
}

/* A name is 1..CC_NAME_MAX bytes with no NUL inside: one with a NUL would decode into a shorter
 * C string than its bytes and so re-encode differently (returns false; `out` is then ""). */
static bool read_name(rk_reader *rd, char *out)
{
    uint8_t n = rk_reader_u8(rd);
    const uint8_t *p = rk_reader_take(rd, n);
    out[0] = 0;
    if (!p || memchr(p, 0, n))
        return false;
    memcpy(out, p, n);
    out[n] = 0;
    return true;
}

rk_status cc_record_decode(const uint8_t *p, size_t n, cc_record *out, size_t *used)
{
    cc_record_init(out);
    if (n < 8)
        return rk_error_set(RK_ERR_TRUNCATED, "record: %zu bytes, shorter than its header", n);
    if (memcmp(p, rec_magic, 4) != 0)
        return rk_error_set(RK_ERR_FORMAT, "record: bad magic");
    uint32_t blen = rk_get_le32(p + 4);
    if ((uint64_t)blen + 16 > n)
        return rk_error_set(RK_ERR_TRUNCATED, "record: body of %u bytes past the end", blen);
    if (rk_xxh3_64(p + 8, blen) != rk_get_le64(p + 8 + blen))
        return rk_error_set(RK_ERR_CORRUPT, "record: header checksum mismatch");
    rk_reader rd = rk_reader_make(p + 8, blen);
    const uint8_t *k = rk_reader_take(&rd, CC_KEY_BYTES);
    if (k)
        memcpy(out->key.b, k, CC_KEY_BYTES);
    bool names_ok = read_name(&rd, out->ns);
    names_ok = read_name(&rd, out->model) && names_ok;
    out->ntokens = rk_reader_u32(&rd);
    out->codec = rk_reader_u16(&rd);
    out->level = rk_reader_u16(&rd);
    out->size = rk_reader_u64(&rd);
    out->csum = rk_reader_u64(&rd);
    out->created_ms = rk_reader_u64(&rd);
    out->expires_ms = rk_reader_u64(&rd);
    out->flags = rk_reader_u8(&rd);
    uint64_t cbits = rk_reader_u64(&rd);
    memcpy(&out->cost, &cbits, 8);
    uint32_t cl = rk_reader_u32(&rd);
    const uint8_t *cp = cl <= CC_OPAQUE_MAX ? rk_reader_take(&rd, cl) : NULL;
    uint32_t vl = cp || !cl ? rk_reader_u32(&rd) : 0;
    const uint8_t *vp = vl <= CC_OPAQUE_MAX ? rk_reader_take(&rd, vl) : NULL;
    if (rd.short_read || (cl && !cp) || (vl && !vp) || rk_reader_left(&rd) != 0) {
        cc_record_init(out);
        return rk_error_set(RK_ERR_FORMAT, "record: body fields do not match its length");
    }
    if (!names_ok || !out->ns[0] || !out->model[0] || !(out->cost == out->cost)) {
        cc_record_init(out);
        return rk_error_set(RK_ERR_FORMAT, "record: empty name, NUL byte in a name, or NaN cost");
    }
    if (dup_bytes(&out->craft, cp, cl) != RK_OK || dup_bytes(&out->variants, vp, vl) != RK_OK) {
        cc_record_clear(out);
        return RK_ERR_NOMEM;
    }
    out->craft_len = cl;
    out->variants_len = vl;
    *used = 16 + (size_t)blen;
    return RK_OK;
}

double cc_gdsf_priority(double clock, uint64_t hits, double cost, uint64_t size)
{
    if (cost < 0)
        cost = 0;
    return clock + (double)hits * cost / (double)(size ? size : 1);
}
