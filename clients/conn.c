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
