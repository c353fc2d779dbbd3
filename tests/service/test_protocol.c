/* Protocol v1 against the real daemon: handshake, the auth gate, pipelining, malformed and
 * oversized frames, slow senders, and the connection limit. */
#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "ragkv/alloc.h"
#include "ragkv/client.h"
#include "ragkv/proto.h"
#include "svc_testlib.h"
#include "testutil.h"

static char tmp[256];
static rk_test_proc daemon;
static int port, hport;

static void start_with(const char *const *extra)
{
    cr_assert(rk_test_daemon_start(tmp, extra, &daemon, &port, &hport), "ragkvd did not start");
}

static void setup(void)
{
    cr_assert_not_null(rk_test_tmpdir(tmp, sizeof(tmp)));
    static const char *const extra[] = {"--frame-timeout", "1", "--max-connections", "4", NULL};
    start_with(extra);
}

static void teardown(void)
{
    cr_expect_eq(rk_test_stop(&daemon, SIGTERM, 10000), 0, "ragkvd exits 0 on SIGTERM");
    rk_test_rmrf(tmp);
}

TestSuite(protocol, .init = setup, .fini = teardown, .timeout = 60);

static ragkv_conn *dial(void)
{
    ragkv_conn *c;
    cr_assert_eq(ragkv_connect("127.0.0.1", port, 5000, &c), RK_OK, "%s", rk_error_msg());
    return c;
}

Test(protocol, hello_ping_and_auth_gate)
{
    ragkv_conn *c = dial();
    ragkv_server_info info;
    cr_assert_eq(ragkv_hello(c, &info), RK_OK, "%s", rk_error_msg());
    cr_expect_eq(info.version, 1);
    cr_expect(strncmp(info.server, "ragkvd ", 7) == 0, "%s", info.server);
    cr_expect_eq(info.max_frame, 64u << 20);
    cr_expect_eq(ragkv_ping(c), RK_OK);
    /* a well-formed data request before AUTH is refused, and the connection stays usable */
    rk_buf b = RK_BUF_INIT;
    const int32_t toks[] = {1, 2, 3};
    rk_buf_put_str(&b, "");
    rk_buf_put_tokens(&b, toks, 3);
    cr_expect_eq(ragkv_call(c, RK_OP_PUT_CHUNK, b.data, (uint32_t)b.len, NULL, NULL), RK_ERR_AUTH);
    cr_expect(strstr(rk_error_msg(), "AUTH"), "%s", rk_error_msg());
    cr_expect_eq(ragkv_call(c, RK_OP_TENANT_LIST, NULL, 0, NULL, NULL), RK_ERR_AUTH, "admin too");
    cr_expect_eq(ragkv_ping(c), RK_OK);
    rk_buf_free(&b);
    ragkv_close(c);
}

Test(protocol, bad_payload_answers_and_keeps_the_connection)
{
    ragkv_conn *c = dial();
    const uint8_t junk[] = {1, 0, 1, 0, 0, 0, 0xEE}; /* HELLO + a trailing byte */
    cr_expect_eq(ragkv_call(c, RK_OP_HELLO, junk, sizeof(junk), NULL, NULL), RK_ERR_INVALID);
    cr_expect_eq(ragkv_call(c, 0x7777, NULL, 0, NULL, NULL), RK_ERR_UNSUPPORTED, "unknown opcode");
    cr_expect_eq(ragkv_ping(c), RK_OK);
    ragkv_close(c);
}

Test(protocol, pipelined_requests_answered_in_order)
{
    ragkv_conn *c = dial();
    /* 200 PINGs in one write */
    rk_buf b = RK_BUF_INIT;
    for (uint64_t id = 1; id <= 200; id++) {
        rk_proto_hdr h = {.version = 1, .type = RK_PT_REQUEST, .opcode = RK_OP_PING, .request_id = id * 7};
        cr_assert(rk_buf_reserve(&b, RK_PROTO_HDR_SIZE));
        rk_proto_hdr_encode(&h, b.data + b.len);
        b.len += RK_PROTO_HDR_SIZE;
    }
    cr_assert_eq(ragkv_send_raw(c, b.data, b.len), RK_OK);
    rk_buf_free(&b);
    for (uint64_t id = 1; id <= 200; id++) {
        rk_proto_hdr h;
        uint8_t *p;
        cr_assert_eq(ragkv_recv_frame(c, &h, &p), RK_OK, "response %lu", (unsigned long)id);
        cr_expect_eq(h.request_id, id * 7);
        cr_expect_eq(h.type, RK_PT_RESPONSE);
        cr_expect_eq(h.status, RK_OK);
        rk_free(p);
    }
    ragkv_close(c);
}

Test(protocol, garbage_gets_an_error_then_close)
{
    ragkv_conn *c = dial();
    const char http[] = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    cr_assert_eq(ragkv_send_raw(c, http, sizeof(http) - 1), RK_OK);
    rk_proto_hdr h;
    uint8_t *p;
    cr_assert_eq(ragkv_recv_frame(c, &h, &p), RK_OK);
    cr_expect_eq(h.status, RK_ERR_PROTOCOL);
    rk_free(p);
    svct_expect_closed(c);
    ragkv_close(c);
}

Test(protocol, oversized_frame_before_auth_is_refused)
{
    ragkv_conn *c = dial();
    rk_proto_hdr h = {.version = 1, .type = RK_PT_REQUEST, .opcode = RK_OP_PUT_CHUNK,
                      .request_id = 5, .length = 1u << 20};
    uint8_t hdr[RK_PROTO_HDR_SIZE];
    rk_proto_hdr_encode(&h, hdr);
    cr_assert_eq(ragkv_send_raw(c, hdr, sizeof(hdr)), RK_OK);
    uint8_t *p;
    cr_assert_eq(ragkv_recv_frame(c, &h, &p), RK_OK);
    cr_expect_eq(h.status, RK_ERR_LIMIT);
    cr_expect_eq(h.request_id, 5, "the error names the request");
    rk_free(p);
    svct_expect_closed(c);
    ragkv_close(c);
}

Test(protocol, slow_sender_is_dropped_while_others_are_served)
{
    ragkv_conn *slow = dial();
    const uint8_t part[10] = {0x52, 0x4B, 1, 1, 3, 0};
    cr_assert_eq(ragkv_send_raw(slow, part, sizeof(part)), RK_OK);
    ragkv_conn *fresh = dial();
    cr_expect_eq(ragkv_ping(fresh), RK_OK, "a fresh client is served meanwhile");
    /* frame-timeout is 1 s: the server closes the slow connection (the recv deadline is 5 s) */
    svct_expect_closed(slow);
    cr_expect_eq(ragkv_ping(fresh), RK_OK);
    ragkv_close(slow);
    ragkv_close(fresh);
}

Test(protocol, connection_limit_refuses_at_once)
{
    ragkv_conn *c[4];
    for (int i = 0; i < 4; i++) {
        c[i] = dial();
        cr_assert_eq(ragkv_ping(c[i]), RK_OK, "connection %d", i);
    }
    ragkv_conn *extra = dial(); /* the kernel accepts; ragkvd closes it at once */
    svct_expect_closed(extra);
    ragkv_close(extra);
    ragkv_close(c[0]);
    /* once a slot frees up, new connections are served again */
    ragkv_conn *again = NULL;
    for (int tries = 0; tries < 500; tries++) {
        again = dial();
        if (ragkv_ping(again) == RK_OK)
            break;
        ragkv_close(again); /* the close of c[0] may not have been processed yet */
        again = NULL;
    }
    cr_expect_not_null(again);
    ragkv_close(again);
    for (int i = 1; i < 4; i++)
        ragkv_close(c[i]);
}

/* The admin credential from the daemon's data dir. */
static void admin_token(char *out, size_t len)
{
    cr_assert(rk_test_admin_token(tmp, out, len), "no admin token in %s/var", tmp);
}

Test(protocol, tenants_through_the_admin_credential)
{
    char adm[256], tok[256], who[256];
    admin_token(adm, sizeof(adm));
    ragkv_conn *a = dial();
    cr_assert_eq(ragkv_auth(a, adm, who, sizeof(who)), RK_OK, "%s", rk_error_msg());
    cr_expect_str_eq(who, "admin");
    cr_assert_eq(ragkv_admin_tenant_create(a, "acme", 1 << 20, 100, 0, tok, sizeof(tok)), RK_OK,
                 "%s", rk_error_msg());
    cr_expect_eq(ragkv_admin_tenant_create(a, "acme", 0, 0, 0, who, sizeof(who)), RK_ERR_EXISTS);
    cr_expect_eq(ragkv_admin_tenant_create(a, "no/slash", 0, 0, 0, who, sizeof(who)), RK_ERR_INVALID);
    ragkv_tenant_row *rows;
    size_t n;
    cr_assert_eq(ragkv_admin_tenant_list(a, &rows, &n), RK_OK);
    cr_expect_eq(n, 1);
    cr_expect_str_eq(rows[0].name, "acme");
    rk_free(rows);
    /* the admin credential does not do data operations */
    cr_expect_eq(ragkv_call(a, RK_OP_STATS, NULL, 0, NULL, NULL), RK_ERR_DENIED);

    /* the tenant authenticates; admin operations are denied to it */
    ragkv_conn *t = dial();
    cr_assert_eq(ragkv_auth(t, tok, who, sizeof(who)), RK_OK);
    cr_expect_str_eq(who, "acme");
    cr_expect_eq(ragkv_call(t, RK_OP_TENANT_LIST, NULL, 0, NULL, NULL), RK_ERR_DENIED);
    ragkv_close(t);

    /* rotation kills the old token for new connections */
    char tok2[256];
    cr_assert_eq(ragkv_admin_token_rotate(a, "acme", tok2, sizeof(tok2)), RK_OK);
    t = dial();
    cr_expect_eq(ragkv_auth(t, tok, who, sizeof(who)), RK_ERR_AUTH);
    cr_expect_eq(ragkv_auth(t, tok2, who, sizeof(who)), RK_OK);
    ragkv_close(t);
    cr_assert_eq(ragkv_admin_tenant_delete(a, "acme"), RK_OK);
    t = dial();
    cr_expect_eq(ragkv_auth(t, tok2, who, sizeof(who)), RK_ERR_AUTH);
    ragkv_close(t);
    ragkv_close(a);
}

Test(protocol, failed_auth_is_rate_limited)
{
    ragkv_conn *c = dial();
    rk_status st = RK_OK;
    int i = 0;
    for (; i < 20; i++) {
        st = ragkv_auth(c, "rk_not_a_token", NULL, 0);
        if (st != RK_ERR_AUTH)
            break;
    }
    cr_expect_eq(st, RK_ERR_BUSY, "after %d failures", i);
    cr_expect_eq(i, 10, "the default allows 10 failures a minute");
    /* even the right credential is refused from this address until the window passes */
    char adm[256];
    admin_token(adm, sizeof(adm));
    cr_expect_eq(ragkv_auth(c, adm, NULL, 0), RK_ERR_BUSY);
    ragkv_close(c);
}

Test(protocol, admin_shutdown_stops_the_daemon)
{
    char adm[256];
    admin_token(adm, sizeof(adm));
    ragkv_conn *a = dial();
    cr_assert_eq(ragkv_auth(a, adm, NULL, 0), RK_OK);
    char *cfg;
    cr_assert_eq(ragkv_admin_config_get(a, &cfg), RK_OK);
    cr_expect(strstr(cfg, "frame-timeout = 1\n"), "%s", cfg);
    rk_free(cfg);
    cr_assert_eq(ragkv_admin_shutdown(a), RK_OK);
    ragkv_close(a);
    cr_expect_eq(rk_test_wait(&daemon, 10000), 0, "clean exit after SHUTDOWN");
    /* teardown's SIGTERM then finds no process; restart one so teardown's check holds */
    static const char *const extra[] = {NULL};
    start_with(extra);
}

Test(protocol, quotas_lookup_delete_and_grants)
{
    char adm[256], tok[256];
    admin_token(adm, sizeof(adm));
    ragkv_conn *a = dial();
    cr_assert_eq(ragkv_auth(a, adm, NULL, 0), RK_OK);
    cr_assert_eq(ragkv_admin_tenant_create(a, "acme", 1 << 20, 50, 1, tok, sizeof(tok)), RK_OK, "%s", rk_error_msg());
    /* QUOTA_GET reflects the creation, QUOTA_SET changes it */
    rk_buf b = RK_BUF_INIT;
    rk_buf_put_str(&b, "acme");
    uint8_t *p;
    uint32_t n;
    cr_assert_eq(ragkv_call(a, RK_OP_QUOTA_GET, b.data, (uint32_t)b.len, &p, &n), RK_OK, "%s", rk_error_msg());
    rk_reader r = rk_reader_make(p, n);
    cr_expect_eq(rk_reader_u64(&r), 1u << 20);
    cr_expect_eq(rk_reader_u64(&r), 50);
    cr_expect_eq(rk_reader_u8(&r), 1, "evict policy");
    cr_expect_eq(rk_reader_u64(&r), 0, "no bytes yet");
    rk_free(p);
    rk_buf_put_u64(&b, 4096);
    rk_buf_put_u64(&b, 7);
    rk_buf_put_u8(&b, 0);
    cr_assert_eq(ragkv_call(a, RK_OP_QUOTA_SET, b.data, (uint32_t)b.len, NULL, NULL), RK_OK, "%s", rk_error_msg());
    b.len = 0;
    rk_buf_put_str(&b, "acme");
    cr_assert_eq(ragkv_call(a, RK_OP_QUOTA_GET, b.data, (uint32_t)b.len, &p, &n), RK_OK);
    r = rk_reader_make(p, n);
    cr_expect_eq(rk_reader_u64(&r), 4096);
    cr_expect_eq(rk_reader_u64(&r), 7);
    rk_free(p);
    /* grants need both sides to exist */
    b.len = 0;
    rk_buf_put_str(&b, "no-such-corpus");
    rk_buf_put_str(&b, "acme");
    cr_expect_eq(ragkv_call(a, RK_OP_NS_GRANT, b.data, (uint32_t)b.len, NULL, NULL), RK_ERR_NOT_FOUND);
    ragkv_close(a);

    /* the tenant: an empty store */
    ragkv_conn *t = dial();
    cr_assert_eq(ragkv_auth(t, tok, NULL, 0), RK_OK);
    b.len = 0;
    rk_buf_put_str(&b, "");
    rk_buf_put_u32(&b, 2);
    for (int i = 0; i < 64; i++)
        rk_buf_put_u8(&b, (uint8_t)i);
    cr_assert_eq(ragkv_call(t, RK_OP_LOOKUP, b.data, (uint32_t)b.len, &p, &n), RK_OK, "%s", rk_error_msg());
    cr_expect_eq(n, 4 + 2);
    cr_expect(p[4] == 0 && p[5] == 0, "absent");
    rk_free(p);
    b.len = 0;
    rk_buf_put_str(&b, "");
    for (int i = 0; i < 32; i++)
        rk_buf_put_u8(&b, 7);
    cr_expect_eq(ragkv_call(t, RK_OP_DELETE, b.data, (uint32_t)b.len, NULL, NULL), RK_ERR_NOT_FOUND);
    cr_assert_eq(ragkv_call(t, RK_OP_STATS, NULL, 0, &p, &n), RK_OK);
    cr_expect_eq(n, 48);
    r = rk_reader_make(p, n);
    cr_expect_eq(rk_reader_u64(&r), 0, "no chunks");
    rk_free(p);
    rk_buf_free(&b);
    ragkv_close(t);
}
