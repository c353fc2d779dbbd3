/* conn.c — libragkv's synchronous protocol connection. */
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "ragkv/alloc.h"
#include "ragkv/clock.h"
#include "ragkv/client.h"
#include "net.h"

struct ragkv_conn {
    int fd;             /* connected socket, non-blocking */
    int timeout_ms;     /* per-call deadline */
    uint64_t next_id;   /* request ids for ragkv_call */
};

rk_status ragkv_connect(const char *host, int port, int timeout_ms, ragkv_conn **out)
{
    int fd;
    rk_status st = rk_net_connect(host, port, rk_now_ns() + (uint64_t)timeout_ms * 1000000ull, &fd);
    if (st != RK_OK)
        return st;
    ragkv_conn *c = rk_calloc(1, sizeof(*c));
    if (!c) {
        close(fd);
        return RK_ERR_NOMEM;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    c->fd = fd;
    c->timeout_ms = timeout_ms;
    c->next_id = 1;
    *out = c;
    return RK_OK;
}

void ragkv_close(ragkv_conn *c)
{
    if (!c)
        return;
    close(c->fd);
    rk_free(c);
}

rk_status ragkv_send_raw(ragkv_conn *c, const void *bytes, size_t len)
{
    return rk_net_send_all(c->fd, bytes, len, rk_now_ns() + (uint64_t)c->timeout_ms * 1000000ull);
}

rk_status ragkv_send_frame(ragkv_conn *c, uint16_t opcode, uint64_t request_id, const void *payload,
                           uint32_t len)
{
    rk_proto_hdr h = {.version = RK_PROTO_VERSION, .type = RK_PT_REQUEST, .opcode = opcode,
                      .request_id = request_id, .length = len};
    uint8_t hdr[RK_PROTO_HDR_SIZE];
    rk_proto_hdr_encode(&h, hdr);
    rk_status st = ragkv_send_raw(c, hdr, sizeof(hdr));
    if (st == RK_OK && len)
        st = ragkv_send_raw(c, payload, len);
    return st;
}

rk_status ragkv_recv_frame(ragkv_conn *c, rk_proto_hdr *h, uint8_t **payload)
{
    uint64_t deadline = rk_now_ns() + (uint64_t)c->timeout_ms * 1000000ull;
    uint8_t hdr[RK_PROTO_HDR_SIZE];
    *payload = NULL;
    rk_status st = rk_net_recv_all(c->fd, hdr, sizeof(hdr), deadline);
    if (st != RK_OK)
        return st;
    if ((st = rk_proto_hdr_decode(hdr, sizeof(hdr), 1u << 30, h)) != RK_OK)
        return st;
    if (h->length == 0)
        return RK_OK;
    uint8_t *p = rk_malloc(h->length);
    if (!p)
        return RK_ERR_NOMEM;
    if ((st = rk_net_recv_all(c->fd, p, h->length, deadline)) != RK_OK) {
        rk_free(p);
        return st;
    }
    *payload = p;
    return RK_OK;
}

rk_status ragkv_call(ragkv_conn *c, uint16_t opcode, const void *req, uint32_t req_len,
                     uint8_t **payload, uint32_t *len)
{
    uint64_t id = c->next_id++;
    rk_status st = ragkv_send_frame(c, opcode, id, req, req_len);
    if (st != RK_OK)
        return st;
    for (;;) {
        rk_proto_hdr h;
        uint8_t *p;
        if ((st = ragkv_recv_frame(c, &h, &p)) != RK_OK)
            return st;
        if (h.request_id != id || h.type == RK_PT_STREAM) {
            rk_free(p); /* another request's frame, or a stream item this call ignores */
            continue;
        }
        if (h.status != RK_OK) {
            rk_reader r = rk_reader_make(p, h.length);
            char msg[RK_PROTO_MAX_STR + 1];
            rk_reader_str(&r, msg, sizeof(msg));
            rk_free(p);
            return rk_error_set((rk_status)h.status, "%s", msg);
        }
        if (payload) {
            *payload = p;
            *len = h.length;
        } else {
            rk_free(p);
        }
        return RK_OK;
    }
}

rk_status ragkv_hello(ragkv_conn *c, ragkv_server_info *info)
{
    rk_buf b = RK_BUF_INIT;
    rk_buf_put_u16(&b, RK_PROTO_VERSION);
    rk_buf_put_u16(&b, RK_PROTO_VERSION);
    rk_buf_put_str(&b, "libragkv");
    if (b.failed)
        return RK_ERR_NOMEM;
    uint8_t *p;
    uint32_t n;
    rk_status st = ragkv_call(c, RK_OP_HELLO, b.data, (uint32_t)b.len, &p, &n);
    rk_buf_free(&b);
    if (st != RK_OK)
        return st;
    rk_reader r = rk_reader_make(p, n);
    memset(info, 0, sizeof(*info));
    info->version = rk_reader_u16(&r);
    info->max_frame = rk_reader_u32(&r);
    rk_reader_str(&r, info->server, sizeof(info->server));
    rk_reader_str(&r, info->model, sizeof(info->model));
    info->vocab = rk_reader_u32(&r);
    info->max_context = rk_reader_u32(&r);
    rk_free(p);
    return r.short_read ? rk_error_set(RK_ERR_PROTOCOL, "HELLO response truncated") : RK_OK;
}

rk_status ragkv_ping(ragkv_conn *c)
{
    return ragkv_call(c, RK_OP_PING, NULL, 0, NULL, NULL);
}

/* A call whose request is one `str` and whose response is one `str` (or empty). */
static rk_status call_str(ragkv_conn *c, uint16_t op, const char *arg, char *out, size_t outlen)
{
    rk_buf b = RK_BUF_INIT;
    rk_buf_put_str(&b, arg);
    if (b.failed) {
        rk_buf_free(&b);
        return rk_error_set(RK_ERR_INVALID, "argument longer than %d bytes", RK_PROTO_MAX_STR);
    }
    uint8_t *p = NULL;
    uint32_t n = 0;
    rk_status st = ragkv_call(c, op, b.data, (uint32_t)b.len, &p, &n);
    rk_buf_free(&b);
    if (st == RK_OK && out) {
        rk_reader r = rk_reader_make(p, n);
        rk_reader_str(&r, out, outlen);
        if (r.short_read)
            st = rk_error_set(RK_ERR_PROTOCOL, "%s response malformed", rk_opcode_name(op));
    }
    rk_free(p);
    return st;
}

rk_status ragkv_auth(ragkv_conn *c, const char *token, char *tenant, size_t tenant_len)
{
    char tmp[256];
    return call_str(c, RK_OP_AUTH, token, tenant ? tenant : tmp, tenant ? tenant_len : sizeof(tmp));
}

rk_status ragkv_admin_tenant_create(ragkv_conn *c, const char *tenant, uint64_t quota_bytes,
                                    uint64_t quota_chunks, int evict_policy, char *token_out,
                                    size_t token_len)
{
    rk_buf b = RK_BUF_INIT;
    rk_buf_put_str(&b, tenant);
    rk_buf_put_u64(&b, quota_bytes);
    rk_buf_put_u64(&b, quota_chunks);
    rk_buf_put_u8(&b, evict_policy ? 1 : 0);
    if (b.failed) {
        rk_buf_free(&b);
        return rk_error_set(RK_ERR_INVALID, "tenant name too long");
    }
    uint8_t *p = NULL;
    uint32_t n = 0;
    rk_status st = ragkv_call(c, RK_OP_TENANT_CREATE, b.data, (uint32_t)b.len, &p, &n);
    rk_buf_free(&b);
    if (st == RK_OK) {
        rk_reader r = rk_reader_make(p, n);
        rk_reader_str(&r, token_out, token_len);
        if (r.short_read)
            st = rk_error_set(RK_ERR_PROTOCOL, "TENANT_CREATE response malformed");
    }
    rk_free(p);
    return st;
}

rk_status ragkv_admin_tenant_delete(ragkv_conn *c, const char *tenant)
{
    return call_str(c, RK_OP_TENANT_DELETE, tenant, NULL, 0);
}

rk_status ragkv_admin_token_rotate(ragkv_conn *c, const char *tenant, char *token_out, size_t token_len)
{
    return call_str(c, RK_OP_TOKEN_ROTATE, tenant, token_out, token_len);
}

rk_status ragkv_admin_tenant_list(ragkv_conn *c, ragkv_tenant_row **rows, size_t *n)
{
    uint8_t *p = NULL;
    uint32_t len = 0;
    rk_status st = ragkv_call(c, RK_OP_TENANT_LIST, NULL, 0, &p, &len);
    if (st != RK_OK)
        return st;
    rk_reader r = rk_reader_make(p, len);
    uint32_t cnt = rk_reader_u32(&r);
    /* each row is at least 34 bytes: a count the payload cannot hold is malformed */
    ragkv_tenant_row *v = NULL;
    if (!r.short_read && (size_t)cnt * 34 <= rk_reader_left(&r))
        v = rk_calloc(cnt ? cnt : 1, sizeof(*v));
    if (!v) {
        rk_free(p);
        return rk_error_set(RK_ERR_PROTOCOL, "TENANT_LIST response malformed");
    }
    for (uint32_t i = 0; i < cnt; i++) {
        rk_reader_str(&r, v[i].name, sizeof(v[i].name));
        v[i].bytes = rk_reader_u64(&r);
        v[i].chunks = rk_reader_u64(&r);
        v[i].quota_bytes = rk_reader_u64(&r);
        v[i].quota_chunks = rk_reader_u64(&r);
    }
    rk_free(p);
    if (r.short_read) {
        rk_free(v);
        return rk_error_set(RK_ERR_PROTOCOL, "TENANT_LIST response malformed");
    }
    *rows = v;
    *n = cnt;
    return RK_OK;
}

rk_status ragkv_admin_config_get(ragkv_conn *c, char **text)
{
    char *buf = rk_malloc(RK_PROTO_MAX_STR + 1);
    if (!buf)
        return RK_ERR_NOMEM;
    uint8_t *p = NULL;
    uint32_t n = 0;
    rk_status st = ragkv_call(c, RK_OP_CONFIG_GET, NULL, 0, &p, &n);
    if (st == RK_OK) {
        rk_reader r = rk_reader_make(p, n);
        rk_reader_str(&r, buf, RK_PROTO_MAX_STR + 1);
        if (r.short_read)
            st = rk_error_set(RK_ERR_PROTOCOL, "CONFIG_GET response malformed");
    }
    rk_free(p);
    if (st != RK_OK) {
        rk_free(buf);
        return st;
    }
    *text = buf;
    return RK_OK;
}

rk_status ragkv_admin_shutdown(ragkv_conn *c)
{
    return ragkv_call(c, RK_OP_SHUTDOWN, NULL, 0, NULL, NULL);
}

rk_status ragkv_generate(ragkv_conn *c, const ragkv_gen_params *p, ragkv_token_cb cb, void *ctx,
                         ragkv_gen_stats *stats)
{
    rk_buf b = RK_BUF_INIT;
    rk_buf_put_str(&b, p->ns ? p->ns : "");
    rk_buf_put_u32(&b, p->nsegs);
    for (uint32_t i = 0; i < p->nsegs; i++) {
        if (p->segs[i].key) {
            rk_buf_put_u8(&b, 0);
            rk_buf_append(&b, p->segs[i].key, RK_PROTO_KEY_SIZE);
        } else {
            rk_buf_put_u8(&b, 1);
            rk_buf_put_tokens(&b, p->segs[i].tokens, p->segs[i].ntokens);
        }
    }
    rk_buf_put_tokens(&b, p->query, p->nquery);
    rk_buf_put_u8(&b, p->blend);
    rk_buf_put_f32(&b, p->recompute);
    rk_buf_put_u32(&b, p->max_tokens);
    rk_buf_put_f32(&b, p->temperature);
    rk_buf_put_f32(&b, p->top_p > 0 ? p->top_p : 1.0f);
    rk_buf_put_u32(&b, p->top_k);
    rk_buf_put_u64(&b, p->seed);
    rk_buf_put_u8(&b, cb ? 1 : 0);
    if (b.failed) {
        rk_buf_free(&b);
        return RK_ERR_NOMEM;
    }
    uint64_t id = c->next_id++;
    rk_status st = ragkv_send_frame(c, RK_OP_GENERATE, id, b.data, (uint32_t)b.len);
    rk_buf_free(&b);
    uint32_t generated = 0;
    while (st == RK_OK) {
        rk_proto_hdr h;
        uint8_t *pl;
        if ((st = ragkv_recv_frame(c, &h, &pl)) != RK_OK)
            break;
        if (h.request_id != id) {
            rk_free(pl);
            continue;
        }
        rk_reader r = rk_reader_make(pl, h.length);
        if (h.status != RK_OK) {
            char msg[RK_PROTO_MAX_STR + 1];
            rk_reader_str(&r, msg, sizeof(msg));
            rk_free(pl);
            return rk_error_set((rk_status)h.status, "%s", msg);
        }
        int32_t *toks;
        uint32_t n;
        rk_reader_tokens(&r, 1u << 24, &toks, &n);
        generated += n;
        int stop = (n && cb) ? cb(ctx, toks, n) : 0;
        rk_free(toks);
        if (h.type == RK_PT_STREAM) {
            rk_free(pl);
            if (r.short_read)
                return rk_error_set(RK_ERR_PROTOCOL, "malformed stream frame");
            if (stop)
                return rk_error_set(RK_ERR_CANCELLED, "stopped by the callback");
            continue;
        }
        ragkv_gen_stats s = {0};
        s.generated = generated;
        s.prompt_tokens = rk_reader_u32(&r);
        s.recomputed = rk_reader_u32(&r);
        s.chunk_hits = rk_reader_u32(&r);
        s.chunk_misses = rk_reader_u32(&r);
        s.ttft_ms = rk_reader_f32(&r);
        s.total_ms = rk_reader_f32(&r);
        s.finish = rk_reader_u8(&r);
        rk_free(pl);
        if (r.short_read)
            return rk_error_set(RK_ERR_PROTOCOL, "malformed GENERATE response");
        if (stats)
            *stats = s;
        return RK_OK;
    }
    return st;
}

/* A call with a prepared request; on success the response reader is handed to parse. */
static rk_status call_buf(ragkv_conn *c, uint16_t op, rk_buf *req, uint8_t **resp, uint32_t *n)
{
    if (req->failed) {
        rk_buf_free(req);
        return rk_error_set(RK_ERR_NOMEM, "request too large");
    }
    rk_status st = ragkv_call(c, op, req->data, (uint32_t)req->len, resp, n);
    rk_buf_free(req);
    return st;
}

/* Parse the reply of PUT_CHUNK (key, created, u32 ntokens, u64 bytes) or PUT_KV (key,
 * created, u64 bytes); frees p. */
static rk_status parse_put_reply(uint16_t op, uint8_t *p, uint32_t len, uint8_t key_out[32], int *created,
                                 uint64_t *stored_bytes)
{
    rk_reader r = rk_reader_make(p, len);
    const uint8_t *k = rk_reader_take(&r, 32);
    uint8_t cr = rk_reader_u8(&r);
    if (op == RK_OP_PUT_CHUNK)
        rk_reader_u32(&r);
    uint64_t bytes = rk_reader_u64(&r);
    if (!r.short_read) {
        memcpy(key_out, k, 32);
        if (created)
            *created = cr;
        if (stored_bytes)
            *stored_bytes = bytes;
    }
    rk_free(p);
    return r.short_read ? rk_error_set(RK_ERR_PROTOCOL, "%s response malformed", rk_opcode_name(op)) : RK_OK;
}

rk_status ragkv_put_chunk(ragkv_conn *c, const int32_t *tokens, uint32_t n, uint8_t key_out[32],
                          int *created, uint64_t *stored_bytes)
{
    rk_buf b = RK_BUF_INIT;
    rk_buf_put_str(&b, "");
    rk_buf_put_tokens(&b, tokens, n);
    uint8_t *p;
    uint32_t len;
    rk_status st = call_buf(c, RK_OP_PUT_CHUNK, &b, &p, &len);
    return st != RK_OK ? st : parse_put_reply(RK_OP_PUT_CHUNK, p, len, key_out, created, stored_bytes);
}

rk_status ragkv_put_kv(ragkv_conn *c, const int32_t *tokens, uint32_t n, const void *container,
                       uint32_t len, uint8_t key_out[32], int *created)
{
    rk_buf b = RK_BUF_INIT;
    rk_buf_put_str(&b, "");
    rk_buf_put_tokens(&b, tokens, n);
    rk_buf_put_u32(&b, len);
    rk_buf_append(&b, container, len);
    uint8_t *p;
    uint32_t rl;
    rk_status st = call_buf(c, RK_OP_PUT_KV, &b, &p, &rl);
    return st != RK_OK ? st : parse_put_reply(RK_OP_PUT_KV, p, rl, key_out, created, NULL);
}

rk_status ragkv_get_kv(ragkv_conn *c, const uint8_t key[32], const int32_t *tokens, uint32_t n,
                       uint8_t **container, uint32_t *len)
{
    rk_buf b = RK_BUF_INIT;
    rk_buf_put_str(&b, "");
    rk_buf_put_u8(&b, tokens ? 1 : 0);
    if (tokens)
        rk_buf_put_tokens(&b, tokens, n);
    else
        rk_buf_append(&b, key, 32);
    rk_buf_put_u8(&b, 0xFF);
    rk_buf_put_u8(&b, 0xFF);
    uint8_t *p;
    uint32_t rl;
    rk_status st = call_buf(c, RK_OP_GET_KV, &b, &p, &rl);
    if (st != RK_OK)
        return st;
    rk_reader r = rk_reader_make(p, rl);
    uint32_t cl = rk_reader_u32(&r);
    const uint8_t *cd = rk_reader_take(&r, cl);
    uint8_t *out = cd ? rk_malloc(cl ? cl : 1) : NULL;
    if (out) {
        memcpy(out, cd, cl);
        *container = out;
        *len = cl;
    }
    rk_free(p);
    return out ? RK_OK : rk_error_set(RK_ERR_PROTOCOL, "GET_KV response malformed");
}

rk_status ragkv_lookup(ragkv_conn *c, const uint8_t *keys, uint32_t n, uint8_t *present)
{
    rk_buf b = RK_BUF_INIT;
    rk_buf_put_str(&b, "");
    rk_buf_put_u32(&b, n);
    rk_buf_append(&b, keys, (size_t)n * 32);
    uint8_t *p;
    uint32_t rl;
    rk_status st = call_buf(c, RK_OP_LOOKUP, &b, &p, &rl);
    if (st != RK_OK)
        return st;
    rk_reader r = rk_reader_make(p, rl);
    uint32_t m = rk_reader_u32(&r);
    const uint8_t *v = rk_reader_take(&r, m);
    if (v && m == n)
        memcpy(present, v, n);
    rk_free(p);
    return v && m == n ? RK_OK : rk_error_set(RK_ERR_PROTOCOL, "LOOKUP response malformed");
}

rk_status ragkv_delete(ragkv_conn *c, const uint8_t key[32])
{
    rk_buf b = RK_BUF_INIT;
    rk_buf_put_str(&b, "");
    rk_buf_append(&b, key, 32);
    return call_buf(c, RK_OP_DELETE, &b, NULL, NULL);
}

rk_status ragkv_admin_quota_set(ragkv_conn *c, const char *tenant, uint64_t quota_bytes,
                                uint64_t quota_chunks, int evict_policy)
{
    rk_buf b = RK_BUF_INIT;
    rk_buf_put_str(&b, tenant);
    rk_buf_put_u64(&b, quota_bytes);
    rk_buf_put_u64(&b, quota_chunks);
    rk_buf_put_u8(&b, evict_policy ? 1 : 0);
    return call_buf(c, RK_OP_QUOTA_SET, &b, NULL, NULL);
}

rk_status ragkv_admin_quota_get(ragkv_conn *c, const char *tenant, uint64_t *quota_bytes,
                                uint64_t *quota_chunks, int *evict_policy, uint64_t *bytes,
                                uint64_t *chunks)
{
    rk_buf b = RK_BUF_INIT;
    rk_buf_put_str(&b, tenant);
    uint8_t *p;
    uint32_t n;
    rk_status st = call_buf(c, RK_OP_QUOTA_GET, &b, &p, &n);
    if (st != RK_OK)
        return st;
    rk_reader r = rk_reader_make(p, n);
    uint64_t qb = rk_reader_u64(&r), qc = rk_reader_u64(&r);
    int pol = rk_reader_u8(&r);
    uint64_t ub = rk_reader_u64(&r), uc = rk_reader_u64(&r);
    rk_free(p);
    if (r.short_read)
        return rk_error_set(RK_ERR_PROTOCOL, "QUOTA_GET response malformed");
    if (quota_bytes)
        *quota_bytes = qb;
    if (quota_chunks)
        *quota_chunks = qc;
    if (evict_policy)
        *evict_policy = pol;
    if (bytes)
        *bytes = ub;
    if (chunks)
        *chunks = uc;
    return RK_OK;
}

rk_status ragkv_admin_grant(ragkv_conn *c, const char *ns, const char *tenant, int grant)
{
    rk_buf b = RK_BUF_INIT;
    rk_buf_put_str(&b, ns);
    rk_buf_put_str(&b, tenant);
    return call_buf(c, grant ? RK_OP_NS_GRANT : RK_OP_NS_REVOKE, &b, NULL, NULL);
}

rk_status ragkv_admin_inspect(ragkv_conn *c, const char *ns, const uint8_t key[32], char **json)
{
    rk_buf b = RK_BUF_INIT;
    rk_buf_put_str(&b, ns);
    rk_buf_append(&b, key, 32);
    uint8_t *p;
    uint32_t n;
    rk_status st = call_buf(c, RK_OP_INSPECT, &b, &p, &n);
    if (st != RK_OK)
        return st;
    char *out = rk_malloc(RK_PROTO_MAX_STR + 1);
    rk_reader r = rk_reader_make(p, n);
    if (out)
        rk_reader_str(&r, out, RK_PROTO_MAX_STR + 1);
    rk_free(p);
    if (!out || r.short_read) {
        rk_free(out);
        return rk_error_set(RK_ERR_PROTOCOL, "INSPECT response malformed");
    }
    *json = out;
    return RK_OK;
}

/* EVICT / FLUSH: empty tenant (and 0 bytes); u64 back. */
static rk_status admin_count(ragkv_conn *c, uint16_t op, uint64_t *removed)
{
    rk_buf b = RK_BUF_INIT;
    rk_buf_put_str(&b, "");
    if (op == RK_OP_EVICT)
        rk_buf_put_u64(&b, 0);
    uint8_t *p;
    uint32_t n;
    rk_status st = call_buf(c, op, &b, &p, &n);
    if (st != RK_OK)
        return st;
    rk_reader r = rk_reader_make(p, n);
    uint64_t v = rk_reader_u64(&r);
    rk_free(p);
    if (r.short_read)
        return rk_error_set(RK_ERR_PROTOCOL, "%s response malformed", rk_opcode_name(op));
    if (removed)
        *removed = v;
    return RK_OK;
}

rk_status ragkv_admin_evict(ragkv_conn *c, uint64_t *removed) { return admin_count(c, RK_OP_EVICT, removed); }
rk_status ragkv_admin_flush(ragkv_conn *c, uint64_t *removed) { return admin_count(c, RK_OP_FLUSH, removed); }

rk_status ragkv_admin_tenant_stats(ragkv_conn *c, const char *tenant, ragkv_tenant_stats *out)
{
    rk_buf b = RK_BUF_INIT;
    rk_buf_put_str(&b, tenant);
    uint8_t *p;
    uint32_t n;
    rk_status st = call_buf(c, RK_OP_TENANT_STATS, &b, &p, &n);
    if (st != RK_OK)
        return st;
    rk_reader r = rk_reader_make(p, n);
    out->bytes = rk_reader_u64(&r);
    out->chunks = rk_reader_u64(&r);
    out->requests = rk_reader_u64(&r);
    out->generations = rk_reader_u64(&r);
    out->hits = rk_reader_u64(&r);
    out->misses = rk_reader_u64(&r);
    out->ttft_p50_ms = rk_reader_f32(&r);
    out->ttft_p99_ms = rk_reader_f32(&r);
    rk_free(p);
    return r.short_read ? rk_error_set(RK_ERR_PROTOCOL, "TENANT_STATS response malformed") : RK_OK;
}
