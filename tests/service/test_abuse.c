/* Protocol abuse against the real daemon (docs/protocol.md §6), beyond test_protocol.c:
 * overflowing and oversized lengths after AUTH, lengths inside payloads that lie, negative
 * token ids, unknown opcodes, garbage glued to a valid frame, and slowloris (many connections
 * trickling bytes: all dropped at the frame timeout while a fresh client is served, counted in
 * /metrics, no connection slot leaked). The daemon answers each with an error, never crashes. */
#include <criterion/criterion.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "ragkv/alloc.h"
#include "ragkv/bytes.h"
#include "ragkv/client.h"
#include "ragkv/clock.h"
#include "ragkv/proto.h"
#include "svc_testlib.h"
#include "testutil.h"

#define MAXCONN 48
static svct_daemon dd;
static const char *tok; /* acme's token */

static void setup(void)
{
    static const char *const extra[] = {"--frame-timeout", "1", "--max-connections", "48", NULL};
    svct_daemon_up(&dd, "ragkvd", extra, "acme", NULL);
    tok = dd.token[0];
}

static void teardown(void)
{
    svct_daemon_down(&dd); /* it survived the abuse and exits 0 */
}

TestSuite(abuse, .init = setup, .fini = teardown, .timeout = 60);

static ragkv_conn *dial(bool auth)
{
    return svct_dial(dd.port, auth ? tok : NULL);
}

/* Send a raw header (+ payload) and return the status of the answer (or the receive error). */
static rk_status raw_request(ragkv_conn *c, uint16_t op, uint32_t len_field, const void *payload, size_t n)
{
    rk_proto_hdr h = {.version = 1, .type = RK_PT_REQUEST, .opcode = op, .request_id = 9, .length = len_field};
    uint8_t hdr[RK_PROTO_HDR_SIZE];
    rk_proto_hdr_encode(&h, hdr);
    cr_assert_eq(ragkv_send_raw(c, hdr, sizeof(hdr)), RK_OK);
    if (n)
        cr_assert_eq(ragkv_send_raw(c, payload, n), RK_OK);
    uint8_t *p;
    rk_status st = ragkv_recv_frame(c, &h, &p);
    if (st != RK_OK)
        return st;
    rk_free(p);
    cr_expect_eq(h.request_id, 9, "the error names the request");
    return h.status;
}

Test(abuse, overflowing_lengths_in_the_header)
{
    /* after AUTH the cap is max-frame-mb (64 MiB): 0xFFFFFFFF and cap+1 are refused, then close */
    const uint32_t lens[] = {0xFFFFFFFFu, 0x80000000u, 64u * 1024 * 1024 + 1};
    for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
        ragkv_conn *c = dial(true);
        cr_expect_eq(raw_request(c, RK_OP_PUT_CHUNK, lens[i], NULL, 0), RK_ERR_LIMIT, "length %#x", lens[i]);
        svct_expect_closed(c);
        ragkv_close(c);
    }
    ragkv_conn *c = dial(false); /* before AUTH: 4 KiB + 1 */
    cr_expect_eq(raw_request(c, RK_OP_AUTH, 4097, NULL, 0), RK_ERR_LIMIT);
    svct_expect_closed(c);
    ragkv_close(c);
}

Test(abuse, lying_lengths_inside_payloads_keep_the_connection)
{
    ragkv_conn *c = dial(true);
    rk_buf b = RK_BUF_INIT;
    /* a str whose length runs past the payload */
    rk_buf_put_u16(&b, 60000);
    rk_buf_append(&b, "ab", 2);
    cr_expect_eq(raw_request(c, RK_OP_PUT_CHUNK, (uint32_t)b.len, b.data, b.len), RK_ERR_INVALID);
    /* a token count of 2^32-1 and of 2^31 (negative as i32) with 8 bytes of tokens */
    const uint32_t counts[] = {0xFFFFFFFFu, 0x80000000u, 0x40000001u};
    for (size_t i = 0; i < sizeof(counts) / sizeof(counts[0]); i++) {
        b.len = 0;
        rk_buf_put_str(&b, "");
        rk_buf_put_u32(&b, counts[i]);
        rk_buf_put_u32(&b, 1);
        rk_buf_put_u32(&b, 2);
        rk_status st = raw_request(c, RK_OP_PUT_CHUNK, (uint32_t)b.len, b.data, b.len);
        cr_expect(st == RK_ERR_INVALID || st == RK_ERR_LIMIT, "count %#x: %s", counts[i], rk_status_name(st));
    }
    /* negative token ids */
    b.len = 0;
    rk_buf_put_str(&b, "");
    const int32_t neg[] = {5, -1, 7};
    rk_buf_put_tokens(&b, neg, 3);
    rk_status st = raw_request(c, RK_OP_PUT_CHUNK, (uint32_t)b.len, b.data, b.len);
    cr_expect(st == RK_ERR_INVALID || st == RK_ERR_RANGE, "negative token: %s", rk_status_name(st));
    /* LOOKUP: 2^31 keys announced, one sent */
    b.len = 0;
    rk_buf_put_str(&b, "");
    rk_buf_put_u32(&b, 0x80000000u);
    for (int i = 0; i < 32; i++)
        rk_buf_put_u8(&b, (uint8_t)i);
    st = raw_request(c, RK_OP_LOOKUP, (uint32_t)b.len, b.data, b.len);
    cr_expect(st == RK_ERR_INVALID || st == RK_ERR_LIMIT, "LOOKUP count: %s", rk_status_name(st));
    /* an unknown opcode, authenticated and not */
    cr_expect_eq(raw_request(c, 0x7777, 0, NULL, 0), RK_ERR_UNSUPPORTED);
    cr_expect_eq(raw_request(c, 0xFFFF, 3, "abc", 3), RK_ERR_UNSUPPORTED);
    cr_expect_eq(ragkv_ping(c), RK_OK, "the connection survived every bad payload");
    rk_buf_free(&b);
    ragkv_close(c);
    c = dial(false);
    st = raw_request(c, 0x7777, 0, NULL, 0);
    cr_expect(st == RK_ERR_UNSUPPORTED || st == RK_ERR_AUTH, "before AUTH: %s", rk_status_name(st));
    cr_expect_eq(ragkv_ping(c), RK_OK);
    ragkv_close(c);
}

Test(abuse, garbage_after_a_valid_frame)
{
    ragkv_conn *c = dial(false);
    uint8_t buf[RK_PROTO_HDR_SIZE + 32];
    rk_proto_hdr h = {.version = 1, .type = RK_PT_REQUEST, .opcode = RK_OP_PING, .request_id = 41};
    rk_proto_hdr_encode(&h, buf);
    memset(buf + RK_PROTO_HDR_SIZE, 0xA5, 32); /* 32 bytes of junk in the same write */
    cr_assert_eq(ragkv_send_raw(c, buf, sizeof(buf)), RK_OK);
    uint8_t *p;
    cr_assert_eq(ragkv_recv_frame(c, &h, &p), RK_OK);
    cr_expect_eq(h.request_id, 41);
    cr_expect_eq(h.status, RK_OK, "the valid PING is answered");
    rk_free(p);
    cr_assert_eq(ragkv_recv_frame(c, &h, &p), RK_OK);
    cr_expect_eq(h.status, RK_ERR_PROTOCOL, "then the junk is a framing error");
    rk_free(p);
    svct_expect_closed(c);
    ragkv_close(c);
}

/* A plain TCP connection (the slowloris side needs no client library). */
static int tcp_dial(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)dd.port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    cr_assert_eq(connect(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    return fd;
}

Test(abuse, slowloris_many_trickling_connections_are_dropped)
{
    enum { NSLOW = 40 };
    long long timeouts0 = svct_metric(dd.hport, "connection_timeouts_total");
    cr_assert_geq(timeouts0, 0);
    int fds[NSLOW];
    double closed_ms[NSLOW];
    const uint8_t hdr[RK_PROTO_HDR_SIZE] = {0x52, 0x4B, 1, 1, 3, 0};
    for (int i = 0; i < NSLOW; i++) {
        fds[i] = tcp_dial();
        closed_ms[i] = -1;
    }
    /* each sends one byte of a PING header every 200 ms: 24 bytes would take 4.8 s, the frame
     * timeout is 1 s */
    uint64_t t0 = rk_now_ns();
    int open = NSLOW, sent = 0;
    bool fresh_ok = false;
    while (open > 0 && rk_now_ns() - t0 < 6000000000ull) {
        for (int i = 0; i < NSLOW; i++)
            if (closed_ms[i] < 0 && sent < RK_PROTO_HDR_SIZE)
                (void)send(fds[i], hdr + sent, 1, MSG_NOSIGNAL);
        sent++;
        if (!fresh_ok && sent == 3) { /* meanwhile a fresh client is served */
            ragkv_conn *f = dial(true);
            fresh_ok = ragkv_ping(f) == RK_OK;
            ragkv_close(f);
        }
        /* wait 200 ms, noting every connection the server closes */
        uint64_t until = rk_now_ns() + 200000000ull;
        while (open > 0 && rk_now_ns() < until) {
            struct pollfd pf[NSLOW];
            for (int i = 0; i < NSLOW; i++)
                pf[i] = (struct pollfd){.fd = closed_ms[i] < 0 ? fds[i] : -1, .events = POLLIN};
            int ms = (int)((until - rk_now_ns()) / 1000000) + 1;
            if (poll(pf, NSLOW, ms) <= 0)
                continue;
            for (int i = 0; i < NSLOW; i++) {
                char c;
                if (pf[i].fd >= 0 && pf[i].revents && recv(fds[i], &c, 1, MSG_DONTWAIT) <= 0) {
                    closed_ms[i] = (double)(rk_now_ns() - t0) / 1e6;
                    open--;
                }
            }
        }
    }
    double worst = 0;
    for (int i = 0; i < NSLOW; i++) {
        cr_expect_geq(closed_ms[i], 0, "slow connection %d dropped", i);
        cr_expect_geq(closed_ms[i], 900, "not before the frame timeout (%.0f ms)", closed_ms[i]);
        if (closed_ms[i] > worst)
            worst = closed_ms[i];
        close(fds[i]);
    }
    cr_expect_lt(worst, 3000, "all %d dropped within ~1 s of the frame timeout (last at %.0f ms)", NSLOW, worst);
    cr_expect(fresh_ok, "a fresh client was served while %d connections trickled", NSLOW);
    cr_log_info("slowloris: %d trickling connections dropped by %.0f ms (frame-timeout 1 s)", NSLOW, worst);
    cr_expect_geq(svct_metric(dd.hport, "connection_timeouts_total") - timeouts0, NSLOW, "counted in /metrics");
    /* every slot came back: MAXCONN fresh connections are all served */
    ragkv_conn *cs[MAXCONN];
    for (int i = 0; i < MAXCONN; i++) {
        cs[i] = dial(false);
        cr_expect_eq(ragkv_ping(cs[i]), RK_OK, "slot %d", i);
    }
    ragkv_conn *extra = dial(false); /* and one more is refused at once, not left hanging */
    uint64_t t1 = rk_now_ns();
    svct_expect_closed(extra);
    cr_expect_lt((rk_now_ns() - t1) / 1000000, 1000, "refused at once");
    ragkv_close(extra);
    for (int i = 0; i < MAXCONN; i++)
        ragkv_close(cs[i]);
}
