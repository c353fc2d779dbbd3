/*
 * ragkv/svc_request.h — decoding protocol v1 request payloads (docs/protocol.md §4, §5) into
 * one flat, validated struct. Standalone and allocation-light so it can be fuzzed whole.
 *
 *     svc_request rq;
 *     rk_status st = svc_request_decode(&hdr, payload, hdr.length, &lim, &rq);
 *     if (st != RK_OK) reply_error(hdr.request_id, st, rk_error_msg());
 *     else handle(&rq);
 *     svc_request_free(&rq);   // also after a failed decode
 *
 * Ownership: arrays (tokens, keys, segments' tokens) are owned by the request and released by
 * svc_request_free. `blob` (PUT_KV's container) points INTO the payload: it is valid only as long
 * as the caller keeps the payload bytes.
 */
#ifndef RAGKV_SVC_REQUEST_H
#define RAGKV_SVC_REQUEST_H

#include <stdbool.h>
#include <stdint.h>

#include "ragkv/proto.h"
#include "ragkv/status.h"

#ifdef __cplusplus
extern "C" {
#endif

#define SVC_NAME_MAX 256 /* tenant, namespace, client names: at most 255 bytes */

/* Caps a receiver applies on top of the frame-size limit. */
typedef struct svc_request_limits {
    uint32_t max_tokens;   /* per token list (chunk, query) */
    uint32_t max_segments; /* per GENERATE / PREFILL_KV */
    uint32_t max_keys;     /* per LOOKUP */
} svc_request_limits;

void svc_request_limits_default(svc_request_limits *lim); /* 1<<20 tokens, 1024 segs, 65536 keys */

typedef enum svc_seg_kind { SVC_SEG_KEY = 0, SVC_SEG_TOKENS = 1 } svc_seg_kind;

/* One prompt segment of GENERATE / PREFILL_KV: a cached chunk by key, or literal tokens
 * (which ragkv caches as a chunk when it prefills them). */
typedef struct svc_segment {
    uint8_t kind;                       /* svc_seg_kind */
    uint8_t key[RK_PROTO_KEY_SIZE];     /* SVC_SEG_KEY */
    int32_t *tokens;                    /* SVC_SEG_TOKENS: (ntokens), owned */
    uint32_t ntokens;
} svc_segment;

typedef enum svc_blend_mode {
    SVC_BLEND_FULL = 0,
    SVC_BLEND_PREFIX = 1,
    SVC_BLEND_NAIVE = 2,
    SVC_BLEND_CACHEBLEND = 3,
    SVC_BLEND_CACHECRAFT = 4,
    SVC_BLEND_APE = 5,
} svc_blend_mode;

typedef struct svc_request {
    uint16_t opcode;
    uint64_t id;
    /* HELLO */
    uint16_t min_version, max_version;
    char client[SVC_NAME_MAX];
    /* AUTH */
    char token[SVC_NAME_MAX];
    /* chunk operations; "" = the authenticated tenant's own namespace */
    char ns[SVC_NAME_MAX];
    /* admin operations */
    char tenant[SVC_NAME_MAX];
    uint64_t quota_bytes, quota_chunks; /* 0 = unlimited */
    uint8_t quota_policy;               /* 0 reject (QUOTA_EXCEEDED), 1 evict own lowest-value */
    uint64_t evict_bytes;
    /* PUT_CHUNK, PUT_KV, GET_KV by tokens: the chunk's tokens (ntokens), owned */
    int32_t *tokens;
    uint32_t ntokens;
    /* GET_KV, DELETE, INSPECT */
    uint8_t by_tokens;                  /* GET_KV: 0 by key, 1 by tokens */
    uint8_t key[RK_PROTO_KEY_SIZE];
    uint8_t codec, level;               /* GET_KV: 0xFF = as stored */
    /* PUT_KV: the KV container, borrowed from the payload */
    const uint8_t *blob;
    uint32_t blob_len;
    /* LOOKUP: nkeys keys of 32 bytes, owned */
    uint8_t *keys;
    uint32_t nkeys;
    /* GENERATE, PREFILL_KV */
    svc_segment *segments;              /* (nsegments), owned */
    uint32_t nsegments;
    int32_t *query;                     /* (nquery), owned */
    uint32_t nquery;
    uint8_t blend;                      /* svc_blend_mode */
    float recompute;                    /* 0..1; CacheBlend ratio / Cache-Craft scale */
    uint32_t max_tokens;                /* GENERATE: tokens to generate */
    float temperature, top_p;           /* temperature 0 = greedy */
    uint32_t top_k;                     /* 0 = off */
    uint64_t seed;
    uint8_t stream;                     /* GENERATE: 1 = stream tokens as they come */
    /* PEER_GET, PEER_PUT: tenant (in `tenant`) and key (in `key`); PEER_PUT's stored blob in
     * `blob`, and: */
    uint16_t peer_codec, peer_level;    /* the blob's codec id and level */
    float peer_cost;                    /* recompute cost (>= 0) */
} svc_request;

/* Decode and validate the payload of a REQUEST frame. On failure the error detail names the
 * field; RK_ERR_INVALID for bad values or malformed payloads, RK_ERR_UNSUPPORTED for an
 * unknown opcode, RK_ERR_LIMIT when a cap is exceeded. rq is always safe to free. */
rk_status svc_request_decode(const rk_proto_hdr *h, const uint8_t *payload, uint32_t len,
                             const svc_request_limits *lim, svc_request *rq);

/* Release what the request owns. Idempotent; leaves rq zeroed. */
void svc_request_free(svc_request *rq);

#ifdef __cplusplus
}
#endif
#endif
