/*
 * ragkv/bytes.h — little-endian encoding helpers and a growable byte buffer, for every
 * on-disk and on-wire format (containers, protocol frames, records).
 *
 *     rk_buf b = RK_BUF_INIT;
 *     rk_buf_put_u32(&b, magic);  rk_buf_append(&b, payload, n);
 *     if (b.failed) ... out of memory ...;
 *     ... use b.data, b.len ...;  rk_buf_free(&b);
 *
 * The buffer remembers an allocation failure (b.failed) so that a run of appends needs one
 * check at the end; after a failure further appends do nothing.
 */
#ifndef RAGKV_BYTES_H
#define RAGKV_BYTES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#ifdef __cplusplus
extern "C" {
#endif

static inline void rk_put_le16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); }
static inline void rk_put_le32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}
static inline void rk_put_le64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}
static inline uint16_t rk_get_le16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }
static inline uint32_t rk_get_le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static inline uint64_t rk_get_le64(const uint8_t *p)
{
    return (uint64_t)rk_get_le32(p) | (uint64_t)rk_get_le32(p + 4) << 32;
}

typedef struct rk_buf {
    uint8_t *data; /* (cap) bytes, owned; len of them used */
    size_t len;
    size_t cap;
    bool failed;   /* an append ran out of memory; contents are incomplete */
} rk_buf;

#define RK_BUF_INIT {NULL, 0, 0, false}

/* Make room for n more bytes; false (and failed set) when memory runs out. */
bool rk_buf_reserve(rk_buf *b, size_t n);
void rk_buf_append(rk_buf *b, const void *data, size_t n);
void rk_buf_put_u8(rk_buf *b, uint8_t v);
void rk_buf_put_u16(rk_buf *b, uint16_t v);
void rk_buf_put_u32(rk_buf *b, uint32_t v);
void rk_buf_put_u64(rk_buf *b, uint64_t v);
/* Hand the bytes to the caller (free with rk_free) and reset b. */
uint8_t *rk_buf_steal(rk_buf *b, size_t *len);
void rk_buf_free(rk_buf *b);

/* A bounds-checked reader over borrowed bytes. Reads past the end set `short_read` and
 * return zeros, so a parser checks once after a group of reads. */
typedef struct rk_reader {
    const uint8_t *p;   /* borrowed; must outlive the reader */
    size_t len;
    size_t off;
    bool short_read;
} rk_reader;

static inline rk_reader rk_reader_make(const void *p, size_t len)
{
    rk_reader r = {(const uint8_t *)p, len, 0, false};
    return r;
}
static inline size_t rk_reader_left(const rk_reader *r) { return r->len - r->off; }
/* Borrow n bytes and advance; NULL (short_read set) when fewer remain. */
const uint8_t *rk_reader_take(rk_reader *r, size_t n);
uint8_t rk_reader_u8(rk_reader *r);
uint16_t rk_reader_u16(rk_reader *r);
uint32_t rk_reader_u32(rk_reader *r);
uint64_t rk_reader_u64(rk_reader *r);

#ifdef __cplusplus
}
#endif
#endif
