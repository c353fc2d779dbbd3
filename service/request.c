/* request.c — protocol v1 request payload decoding (docs/protocol.md §4-5). */
#include "ragkv/svc_request.h"

#include <math.h>
#include <string.h>

#include "ragkv/alloc.h"

void svc_request_limits_default(svc_request_limits *lim)
{
    lim->max_tokens = 1u << 20;
    lim->max_segments = 1024;
    lim->max_keys = 65536;
}

void svc_request_free(svc_request *rq)
{
    rk_free(rq->tokens);
    rk_free(rq->keys);
    rk_free(rq->query);
    for (uint32_t i = 0; rq->segments && i < rq->nsegments; i++)
        rk_free(rq->segments[i].tokens);
    rk_free(rq->segments);
    memset(rq, 0, sizeof(*rq));
}

/* Read a token list; distinguish "too many" (a limit) from a malformed payload. */
static rk_status read_tokens(rk_reader *r, const svc_request_limits *lim, const char *what,
                             int32_t **out, uint32_t *n)
{
    if (rk_reader_left(r) >= 4) {
        uint32_t cnt = rk_get_le32(r->p + r->off);
        if (cnt > lim->max_tokens)
            return rk_error_set(RK_ERR_LIMIT, "%s: %u tokens exceed the limit of %u", what, cnt,
                                lim->max_tokens);
    }
    rk_reader_tokens(r, lim->max_tokens, out, n);
    if (r->short_read)
        return rk_error_set(RK_ERR_INVALID, "%s: token list truncated", what);
    for (uint32_t i = 0; i < *n; i++)
        if ((*out)[i] < 0)
            return rk_error_set(RK_ERR_INVALID, "%s: token %u is negative (%d)", what, i, (*out)[i]);
    return RK_OK;
}

static rk_status read_name(rk_reader *r, char *out, const char *what)
{
    rk_reader_str(r, out, SVC_NAME_MAX);
    if (r->short_read)
        return rk_error_set(RK_ERR_INVALID, "%s: missing, longer than %d bytes, or holds a NUL",
                            what, SVC_NAME_MAX - 1);
    return RK_OK;
}

static rk_status read_key(rk_reader *r, uint8_t *key, const char *what)
{
    const uint8_t *p = rk_reader_take(r, RK_PROTO_KEY_SIZE);
    if (!p)
        return rk_error_set(RK_ERR_INVALID, "%s: key truncated", what);
    memcpy(key, p, RK_PROTO_KEY_SIZE);
    return RK_OK;
}

static rk_status decode_prompt(rk_reader *r, const svc_request_limits *lim, svc_request *rq)
{
    rk_status st;
    if ((st = read_name(r, rq->ns, "namespace")) != RK_OK)
        return st;
    uint32_t nseg = rk_reader_u32(r);
    if (r->short_read)
        return rk_error_set(RK_ERR_INVALID, "segment count truncated");
    if (nseg > lim->max_segments)
        return rk_error_set(RK_ERR_LIMIT, "%u segments exceed the limit of %u", nseg, lim->max_segments);
    /* each segment is at least 1 + 4 bytes: a count beyond what the payload can hold is a lie */
    if ((size_t)nseg * 5 > rk_reader_left(r))
        return rk_error_set(RK_ERR_INVALID, "%u segments cannot fit in the payload", nseg);
    if (nseg && !(rq->segments = rk_calloc(nseg, sizeof(svc_segment))))
        return RK_ERR_NOMEM;
    for (uint32_t i = 0; i < nseg; i++) {
        svc_segment *s = &rq->segments[i];
        rq->nsegments = i + 1;
        s->kind = rk_reader_u8(r);
        if (s->kind == SVC_SEG_KEY) {
            if ((st = read_key(r, s->key, "segment")) != RK_OK)
                return st;
        } else if (s->kind == SVC_SEG_TOKENS) {
            if ((st = read_tokens(r, lim, "segment", &s->tokens, &s->ntokens)) != RK_OK)
                return st;
            if (s->ntokens == 0)
                return rk_error_set(RK_ERR_INVALID, "segment %u: empty token list", i);
        } else {
            return rk_error_set(RK_ERR_INVALID, "segment %u: kind %u is neither 0 (key) nor 1 (tokens)", i, s->kind);
        }
    }
    if ((st = read_tokens(r, lim, "query", &rq->query, &rq->nquery)) != RK_OK)
        return st;
    if (rq->nsegments == 0 && rq->nquery == 0)
        return rk_error_set(RK_ERR_INVALID, "empty prompt: no segments and no query");
    rq->blend = rk_reader_u8(r);
    rq->recompute = rk_reader_f32(r);
    if (r->short_read)
        return rk_error_set(RK_ERR_INVALID, "blend parameters truncated");
    if (rq->blend > SVC_BLEND_APE)
        return rk_error_set(RK_ERR_INVALID, "blend mode %u unknown", rq->blend);
    if (!(rq->recompute >= 0.0f && rq->recompute <= 1.0f))
        return rk_error_set(RK_ERR_INVALID, "recompute ratio %g not in [0, 1]", (double)rq->recompute);
    return RK_OK;
}

static rk_status decode_body(rk_reader *r, const svc_request_limits *lim, svc_request *rq)
{
    rk_status st = RK_OK;
    switch (rq->opcode) {
    case RK_OP_HELLO:
        rq->min_version = rk_reader_u16(r);
        rq->max_version = rk_reader_u16(r);
        if ((st = read_name(r, rq->client, "client name")) != RK_OK)
            return st;
        if (rq->min_version > rq->max_version)
            return rk_error_set(RK_ERR_INVALID, "version range %u..%u is empty", rq->min_version, rq->max_version);
        return RK_OK;
    case RK_OP_AUTH:
        return read_name(r, rq->token, "token");
    case RK_OP_PING:
    case RK_OP_CLUSTER_NODES:
    case RK_OP_STATS:
    case RK_OP_TENANT_LIST:
    case RK_OP_CONFIG_GET:
    case RK_OP_SHUTDOWN:
        return RK_OK;
    case RK_OP_PUT_CHUNK:
        if ((st = read_name(r, rq->ns, "namespace")) != RK_OK)
            return st;
        if ((st = read_tokens(r, lim, "chunk", &rq->tokens, &rq->ntokens)) != RK_OK)
            return st;
        return rq->ntokens ? RK_OK : rk_error_set(RK_ERR_INVALID, "chunk: empty token list");
    case RK_OP_PUT_KV:
        if ((st = read_name(r, rq->ns, "namespace")) != RK_OK)
            return st;
        if ((st = read_tokens(r, lim, "chunk", &rq->tokens, &rq->ntokens)) != RK_OK)
            return st;
        if (rq->ntokens == 0)
            return rk_error_set(RK_ERR_INVALID, "chunk: empty token list");
        rq->blob_len = rk_reader_u32(r);
        rq->blob = rk_reader_take(r, rq->blob_len);
        if (!rq->blob || rq->blob_len == 0)
            return rk_error_set(RK_ERR_INVALID, "container: missing or truncated");
        return RK_OK;
    case RK_OP_GET_KV:
        if ((st = read_name(r, rq->ns, "namespace")) != RK_OK)
            return st;
        rq->by_tokens = rk_reader_u8(r);
        if (rq->by_tokens == 0)
            st = read_key(r, rq->key, "chunk");
        else if (rq->by_tokens == 1)
            st = read_tokens(r, lim, "chunk", &rq->tokens, &rq->ntokens);
        else
            return rk_error_set(RK_ERR_INVALID, "GET_KV: 'by' must be 0 (key) or 1 (tokens)");
        if (st != RK_OK)
            return st;
        rq->codec = rk_reader_u8(r);
        rq->level = rk_reader_u8(r);
        return r->short_read ? rk_error_set(RK_ERR_INVALID, "GET_KV: codec/level truncated") : RK_OK;
    case RK_OP_LOOKUP: {
        if ((st = read_name(r, rq->ns, "namespace")) != RK_OK)
            return st;
        uint32_t n = rk_reader_u32(r);
        if (r->short_read)
            return rk_error_set(RK_ERR_INVALID, "LOOKUP: count truncated");
        if (n > lim->max_keys)
            return rk_error_set(RK_ERR_LIMIT, "LOOKUP: %u keys exceed the limit of %u", n, lim->max_keys);
        const uint8_t *p = rk_reader_take(r, (size_t)n * RK_PROTO_KEY_SIZE);
        if (!p)
            return rk_error_set(RK_ERR_INVALID, "LOOKUP: keys truncated");
        if (n && !(rq->keys = rk_malloc((size_t)n * RK_PROTO_KEY_SIZE)))
            return RK_ERR_NOMEM;
        if (n)
            memcpy(rq->keys, p, (size_t)n * RK_PROTO_KEY_SIZE);
        rq->nkeys = n;
        return RK_OK;
    }
    case RK_OP_DELETE:
    case RK_OP_INSPECT:
        if ((st = read_name(r, rq->ns, "namespace")) != RK_OK)
            return st;
        return read_key(r, rq->key, "chunk");
    case RK_OP_GENERATE:
        if ((st = decode_prompt(r, lim, rq)) != RK_OK)
            return st;
        rq->max_tokens = rk_reader_u32(r);
        rq->temperature = rk_reader_f32(r);
        rq->top_p = rk_reader_f32(r);
        rq->top_k = rk_reader_u32(r);
        rq->seed = rk_reader_u64(r);
        rq->stream = rk_reader_u8(r);
        if (r->short_read)
            return rk_error_set(RK_ERR_INVALID, "GENERATE: sampling parameters truncated");
        if (!(rq->temperature >= 0.0f && rq->temperature <= 100.0f))
            return rk_error_set(RK_ERR_INVALID, "temperature %g not in [0, 100]", (double)rq->temperature);
        if (!(rq->top_p > 0.0f && rq->top_p <= 1.0f))
            return rk_error_set(RK_ERR_INVALID, "top_p %g not in (0, 1]", (double)rq->top_p);
        if (rq->stream > 1)
            return rk_error_set(RK_ERR_INVALID, "stream must be 0 or 1");
        return RK_OK;
    case RK_OP_PREFILL_KV:
        if ((st = decode_prompt(r, lim, rq)) != RK_OK)
            return st;
        rq->codec = rk_reader_u8(r);
        rq->level = rk_reader_u8(r);
        return r->short_read ? rk_error_set(RK_ERR_INVALID, "PREFILL_KV: codec/level truncated") : RK_OK;
    case RK_OP_TENANT_CREATE:
    case RK_OP_QUOTA_SET:
        if ((st = read_name(r, rq->tenant, "tenant")) != RK_OK)
            return st;
        rq->quota_bytes = rk_reader_u64(r);
        rq->quota_chunks = rk_reader_u64(r);
        rq->quota_policy = rk_reader_u8(r);
        if (r->short_read)
            return rk_error_set(RK_ERR_INVALID, "quota fields truncated");
        return rq->quota_policy <= 1 ? RK_OK
                                     : rk_error_set(RK_ERR_INVALID, "quota policy %u is neither 0 (reject) nor 1 (evict)", rq->quota_policy);
    case RK_OP_TENANT_DELETE:
    case RK_OP_TOKEN_ROTATE:
    case RK_OP_QUOTA_GET:
    case RK_OP_FLUSH:
    case RK_OP_TENANT_STATS:
        return read_name(r, rq->tenant, "tenant");
    case RK_OP_NS_GRANT:
    case RK_OP_NS_REVOKE:
        if ((st = read_name(r, rq->ns, "namespace")) != RK_OK)
            return st;
        return read_name(r, rq->tenant, "tenant");
    case RK_OP_EVICT:
        if ((st = read_name(r, rq->tenant, "tenant")) != RK_OK)
            return st;
        rq->evict_bytes = rk_reader_u64(r);
        return r->short_read ? rk_error_set(RK_ERR_INVALID, "EVICT: byte count truncated") : RK_OK;
    case RK_OP_PEER_GET:
        if ((st = read_name(r, rq->tenant, "tenant")) != RK_OK)
            return st;
        return read_key(r, rq->key, "chunk");
    case RK_OP_PEER_PUT:
        if ((st = read_name(r, rq->tenant, "tenant")) != RK_OK || (st = read_key(r, rq->key, "chunk")) != RK_OK)
            return st;
        rq->peer_codec = rk_reader_u16(r);
        rq->peer_level = rk_reader_u16(r);
        rq->peer_cost = rk_reader_f32(r);
        rq->blob_len = rk_reader_u32(r);
        rq->blob = rk_reader_take(r, rq->blob_len);
        if (r->short_read || !rq->blob || rq->blob_len == 0)
            return rk_error_set(RK_ERR_INVALID, "PEER_PUT: fields or blob truncated");
        if (!(rq->peer_cost >= 0.0f && rq->peer_cost < 1e30f))
            return rk_error_set(RK_ERR_INVALID, "PEER_PUT: cost %g invalid", (double)rq->peer_cost);
        return RK_OK;
    default:
        return rk_error_set(RK_ERR_UNSUPPORTED, "unknown opcode 0x%04x", rq->opcode);
    }
}

rk_status svc_request_decode(const rk_proto_hdr *h, const uint8_t *payload, uint32_t len,
                             const svc_request_limits *lim, svc_request *rq)
{
    memset(rq, 0, sizeof(*rq));
    rq->opcode = h->opcode;
    rq->id = h->request_id;
    rq->codec = rq->level = 0xFF;
    rq->top_p = 1.0f;
    if (h->type != RK_PT_REQUEST)
        return rk_error_set(RK_ERR_PROTOCOL, "frame type %u is not a request", h->type);
    if (h->status != 0)
        return rk_error_set(RK_ERR_INVALID, "requests carry status 0");
    rk_reader r = rk_reader_make(payload, len);
    rk_status st = decode_body(&r, lim, rq);
    if (st != RK_OK)
        return st;
    if (rk_reader_left(&r) != 0)
        return rk_error_set(RK_ERR_INVALID, "%s: %zu unexpected bytes after the payload",
                            rk_opcode_name(rq->opcode), rk_reader_left(&r));
    return RK_OK;
}
