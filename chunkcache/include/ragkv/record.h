/*
 * ragkv/record.h — the chunk record: what ragkv knows about one cached chunk, and its
 * self-checking binary encoding.
 *
 * The same encoding is the header of every chunk value in the blob store (record, then the
 * blob bytes), the `rec` field of the Redis hash, and the embedded metadata's value, so the
 * metadata can always be rebuilt from a scan of the blob store alone.
 *
 *   "RKR1" | u32 body_len | body | u64 xxh3(body)        (all little-endian)
 *   body:  key[32] | u8 ns_len ns | u8 model_len model | u32 ntokens | u16 codec | u16 level
 *          | u64 blob_size | u64 blob_xxh3 | u64 created_ms | u64 expires_ms | u8 flags
 *          | u64 cost (IEEE-754 bits) | u32 craft_len craft | u32 variants_len variants
 *
 * Hits and last access are counters kept by the metadata store, not part of the encoding.
 *
 *     cc_record r;  cc_record_init(&r);  ... fill ...
 *     rk_buf b = RK_BUF_INIT;  cc_record_encode(&r, &b);
 *     cc_record back;  size_t used;
 *     if (cc_record_decode(b.data, b.len, &back, &used) == RK_OK) { ...; cc_record_clear(&back); }
 */
#ifndef RAGKV_RECORD_H
#define RAGKV_RECORD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ragkv/bytes.h"
#include "ragkv/chunk_key.h"
#include "ragkv/status.h"

#ifdef __cplusplus
extern "C" {
#endif

#define CC_NAME_MAX 255            /* longest namespace / model id / tenant name, bytes */
#define CC_OPAQUE_MAX (1u << 24)   /* longest Cache-Craft metadata or variants field */
#define CC_RECORD_FLAG_PINNED 1u   /* never evicted */

typedef struct cc_record {
    cc_key key;                   /* chunk identity (BLAKE2b of model, ns, tokens) */
    char ns[CC_NAME_MAX + 1];     /* owning namespace: a tenant or a shared corpus */
    char model[CC_NAME_MAX + 1];  /* model id the KV belongs to */
    uint32_t ntokens;             /* tokens in the chunk */
    uint16_t codec;               /* codec id of the blob (codec/ owns the numbering) */
    uint16_t level;               /* codec quality level */
    uint64_t size;                /* blob bytes (compressed size) */
    uint64_t csum;                /* rk_xxh3_64 of the blob bytes; verified on every read */
    uint64_t created_ms;          /* wall clock at admission */
    uint64_t expires_ms;          /* wall-clock expiry; 0 = no TTL */
    uint32_t flags;               /* CC_RECORD_FLAG_* */
    double cost;                  /* recompute cost the chunk saves per hit (caller's unit) */
    uint8_t *craft;               /* Cache-Craft metadata, opaque (craft_len bytes, owned) */
    uint32_t craft_len;           /* bytes at craft */
    uint8_t *variants;            /* Cache-Craft variants, opaque (variants_len bytes, owned) */
    uint32_t variants_len;        /* bytes at variants */
    uint64_t hits;                /* reads served (metadata store counter; not encoded) */
    uint64_t last_access_ms;      /* wall clock of the last read (not encoded) */
} cc_record;

/* Zero the record. */
void cc_record_init(cc_record *r);

/* Free craft/variants and zero the record. NULL is a no-op. */
void cc_record_clear(cc_record *r);

/* Deep copy (dst must be cleared or fresh). RK_ERR_NOMEM. */
rk_status cc_record_copy(cc_record *dst, const cc_record *src);

/* Append the encoding to b. RK_ERR_INVALID on empty/over-long names or oversized opaque
 * fields; RK_ERR_NOMEM when b failed. */
rk_status cc_record_encode(const cc_record *r, rk_buf *b);

/* Parse an encoding at the start of p[0..n); *used = bytes consumed (what follows is the
 * blob, in a chunk value). RK_ERR_TRUNCATED, RK_ERR_FORMAT, RK_ERR_CORRUPT (checksum) on bad
 * input, never a crash. On success out owns its opaque fields (cc_record_clear). */
rk_status cc_record_decode(const uint8_t *p, size_t n, cc_record *out, size_t *used);

/* The priority Greedy-Dual-Size-Frequency gives a chunk: clock + hits * cost / size.
 * Higher is more valuable; eviction removes the lowest first. */
double cc_gdsf_priority(double clock, uint64_t hits, double cost, uint64_t size);

#ifdef __cplusplus
}
#endif
#endif
