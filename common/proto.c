/* proto.c — protocol v1 frame header and payload primitives. */
#include "ragkv/proto.h"

#include <string.h>

#include "ragkv/alloc.h"

void rk_proto_hdr_encode(const rk_proto_hdr *h, uint8_t out[RK_PROTO_HDR_SIZE])
{
    rk_put_le16(out, RK_PROTO_MAGIC);
    out[2] = h->version;
    out[3] = h->type;
    rk_put_le16(out + 4, h->opcode);
    rk_put_le16(out + 6, h->flags);
    rk_put_le64(out + 8, h->request_id);
    rk_put_le32(out + 16, (uint32_t)h->status);
    rk_put_le32(out + 20, h->length);
}

rk_status rk_proto_hdr_decode(const uint8_t *buf, size_t len, uint32_t max_payload, rk_proto_hdr *h)
{
    if (len < RK_PROTO_HDR_SIZE)
        return RK_ERR_TRUNCATED;
    if (rk_get_le16(buf) != RK_PROTO_MAGIC)
        return rk_error_set(RK_ERR_PROTOCOL, "bad magic 0x%04x", rk_get_le16(buf));
    h->version = buf[2];
    h->type = buf[3];
    h->opcode = rk_get_le16(buf + 4);
    h->flags = rk_get_le16(buf + 6);
    h->request_id = rk_get_le64(buf + 8);
    h->status = (int32_t)rk_get_le32(buf + 16);
    h->length = rk_get_le32(buf + 20);
    if (h->version != RK_PROTO_VERSION)
        return rk_error_set(RK_ERR_PROTOCOL, "unsupported protocol version %u", h->version);
    if (h->type < RK_PT_REQUEST || h->type > RK_PT_STREAM)
        return rk_error_set(RK_ERR_PROTOCOL, "bad frame type %u", h->type);
    if (h->flags != 0)
        return rk_error_set(RK_ERR_PROTOCOL, "reserved flags 0x%04x set", h->flags);
    if (h->length > max_payload)
        return rk_error_set(RK_ERR_LIMIT, "frame payload of %u bytes exceeds the limit of %u",
                            h->length, max_payload);
    return RK_OK;
}

const char *rk_opcode_name(uint16_t op)
{
    switch (op) {
    case RK_OP_HELLO: return "HELLO";
    case RK_OP_AUTH: return "AUTH";
    case RK_OP_PING: return "PING";
    case RK_OP_PUT_CHUNK: return "PUT_CHUNK";
    case RK_OP_PUT_KV: return "PUT_KV";
    case RK_OP_GET_KV: return "GET_KV";
    case RK_OP_LOOKUP: return "LOOKUP";
    case RK_OP_DELETE: return "DELETE";
    case RK_OP_STATS: return "STATS";
    case RK_OP_GENERATE: return "GENERATE";
    case RK_OP_PREFILL_KV: return "PREFILL_KV";
    case RK_OP_TENANT_CREATE: return "TENANT_CREATE";
    case RK_OP_TENANT_DELETE: return "TENANT_DELETE";
    case RK_OP_TENANT_LIST: return "TENANT_LIST";
    case RK_OP_TOKEN_ROTATE: return "TOKEN_ROTATE";
    case RK_OP_QUOTA_SET: return "QUOTA_SET";
    case RK_OP_QUOTA_GET: return "QUOTA_GET";
    case RK_OP_NS_GRANT: return "NS_GRANT";
    case RK_OP_NS_REVOKE: return "NS_REVOKE";
    case RK_OP_EVICT: return "EVICT";
    case RK_OP_FLUSH: return "FLUSH";
    case RK_OP_INSPECT: return "INSPECT";
    case RK_OP_CONFIG_GET: return "CONFIG_GET";
    case RK_OP_SHUTDOWN: return "SHUTDOWN";
    case RK_OP_TENANT_STATS: return "TENANT_STATS";
    case RK_OP_CLUSTER_NODES: return "CLUSTER_NODES";
    case RK_OP_PEER_GET: return "PEER_GET";
    case RK_OP_PEER_PUT: return "PEER_PUT";
    default: return "UNKNOWN";
    }
}

void rk_buf_put_str(rk_buf *b, const char *s)
{
    size_t n = s ? strlen(s) : 0;
    if (n > RK_PROTO_MAX_STR) {
        b->failed = true;
        return;
    }
    rk_buf_put_u16(b, (uint16_t)n);
    rk_buf_append(b, s, n);
}

void rk_buf_put_tokens(rk_buf *b, const int32_t *tokens, uint32_t n)
{
    rk_buf_put_u32(b, n);
    if (!rk_buf_reserve(b, (size_t)n * 4))
        return;
    for (uint32_t i = 0; i < n; i++)
        rk_put_le32(b->data + b->len + 4 * (size_t)i, (uint32_t)tokens[i]);
    b->len += (size_t)n * 4;
}

void rk_buf_put_f32(rk_buf *b, float v)
{
    uint32_t u;
    memcpy(&u, &v, 4);
    rk_buf_put_u32(b, u);
}

float rk_reader_f32(rk_reader *r)
{
    uint32_t u = rk_reader_u32(r);
    float v;
    memcpy(&v, &u, 4);
    return v;
}

void rk_reader_str(rk_reader *r, char *out, size_t outlen)
{
    out[0] = '\0';
    uint16_t n = rk_reader_u16(r);
    if (r->short_read)
        return;
    if (n > RK_PROTO_MAX_STR || (size_t)n >= outlen) {
        r->short_read = true;
        return;
    }
    const uint8_t *p = rk_reader_take(r, n);
    if (!p)
        return;
    if (memchr(p, 0, n)) {
        r->short_read = true;
        return;
    }
    memcpy(out, p, n);
    out[n] = '\0';
}

void rk_reader_tokens(rk_reader *r, uint32_t max_tokens, int32_t **out, uint32_t *n)
{
    *out = NULL;
    *n = 0;
    uint32_t cnt = rk_reader_u32(r);
    if (r->short_read)
        return;
    if (cnt > max_tokens || (size_t)cnt * 4 > rk_reader_left(r)) {
        r->short_read = true;
        return;
    }
    if (cnt == 0)
        return;
    const uint8_t *p = rk_reader_take(r, (size_t)cnt * 4);
    int32_t *t = rk_malloc((size_t)cnt * 4);
    if (!t) {
        r->short_read = true;
        return;
    }
    for (uint32_t i = 0; i < cnt; i++)
        t[i] = (int32_t)rk_get_le32(p + 4 * (size_t)i);
    *out = t;
    *n = cnt;
}
