/* bytes.c — growable buffer and bounds-checked reader. */
#include "ragkv/bytes.h"

#include "ragkv/alloc.h"

bool rk_buf_reserve(rk_buf *b, size_t n)
{
    if (b->failed)
        return false;
    size_t need;
    if (!rk_add_size(b->len, n, &need)) {
        b->failed = true;
        return false;
    }
    if (need <= b->cap)
        return true;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < need) {
        if (!rk_mul_size(cap, 2, &cap)) {
            cap = need;
            break;
        }
    }
    uint8_t *d = rk_realloc(b->data, cap);
    if (!d) {
        b->failed = true;
        return false;
    }
    b->data = d;
    b->cap = cap;
    return true;
}

void rk_buf_append(rk_buf *b, const void *data, size_t n)
{
    if (n == 0 || !rk_buf_reserve(b, n))
        return;
    memcpy(b->data + b->len, data, n);
    b->len += n;
}

void rk_buf_put_u8(rk_buf *b, uint8_t v) { rk_buf_append(b, &v, 1); }

void rk_buf_put_u16(rk_buf *b, uint16_t v)
{
    uint8_t t[2];
    rk_put_le16(t, v);
    rk_buf_append(b, t, 2);
}

void rk_buf_put_u32(rk_buf *b, uint32_t v)
{
    uint8_t t[4];
    rk_put_le32(t, v);
    rk_buf_append(b, t, 4);
}

void rk_buf_put_u64(rk_buf *b, uint64_t v)
{
    uint8_t t[8];
    rk_put_le64(t, v);
    rk_buf_append(b, t, 8);
}

uint8_t *rk_buf_steal(rk_buf *b, size_t *len)
{
    uint8_t *d = b->data;
    if (len)
        *len = b->len;
    b->data = NULL;
    b->len = b->cap = 0;
    b->failed = false;
    return d;
}

void rk_buf_free(rk_buf *b)
{
    rk_free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
    b->failed = false;
}

const uint8_t *rk_reader_take(rk_reader *r, size_t n)
{
    if (r->short_read || n > r->len - r->off) {
        r->short_read = true;
        return NULL;
    }
    const uint8_t *p = r->p + r->off;
    r->off += n;
    return p;
}

uint8_t rk_reader_u8(rk_reader *r)
{
    const uint8_t *p = rk_reader_take(r, 1);
    return p ? p[0] : 0;
}

uint16_t rk_reader_u16(rk_reader *r)
{
    const uint8_t *p = rk_reader_take(r, 2);
    return p ? rk_get_le16(p) : 0;
}

uint32_t rk_reader_u32(rk_reader *r)
{
    const uint8_t *p = rk_reader_take(r, 4);
    return p ? rk_get_le32(p) : 0;
}

uint64_t rk_reader_u64(rk_reader *r)
{
    const uint8_t *p = rk_reader_take(r, 8);
    return p ? rk_get_le64(p) : 0;
}
