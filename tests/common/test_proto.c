/* Protocol v1 framing: header layout (bytes written by hand from docs/protocol.md §1) and the
 * payload primitives. */
#include <criterion/criterion.h>
#include <string.h>

#include "ragkv/alloc.h"
#include "ragkv/proto.h"

/* HELLO request id 1, empty payload, spelled out byte by byte from the specification */
static const uint8_t hello_hdr[24] = {0x52, 0x4B, 0x01, 0x01, 0x01, 0x00, 0x00, 0x00,
                                      0x01, 0, 0, 0, 0, 0, 0, 0,
                                      0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00};

Test(proto, header_matches_the_specification)
{
    rk_proto_hdr h = {.version = 1, .type = RK_PT_REQUEST, .opcode = RK_OP_HELLO, .request_id = 1};
    uint8_t out[24];
    rk_proto_hdr_encode(&h, out);
    cr_expect(memcmp(out, hello_hdr, 24) == 0);
    rk_proto_hdr d;
    cr_assert_eq(rk_proto_hdr_decode(hello_hdr, 24, 100, &d), RK_OK);
    cr_expect_eq(d.opcode, RK_OP_HELLO);
    cr_expect_eq(d.request_id, 1);
    cr_expect_eq(d.length, 0);
}

Test(proto, header_round_trip_of_every_field)
{
    rk_proto_hdr h = {.version = 1, .type = RK_PT_STREAM, .opcode = RK_OP_GENERATE,
                      .request_id = 0x0102030405060708ull, .status = RK_ERR_QUOTA, .length = 77};
    uint8_t out[24];
    rk_proto_hdr_encode(&h, out);
    cr_expect_eq(out[8], 0x08, "request id little-endian");
    rk_proto_hdr d;
    cr_assert_eq(rk_proto_hdr_decode(out, 24, 100, &d), RK_OK);
    cr_expect_eq(d.type, RK_PT_STREAM);
    cr_expect_eq(d.request_id, h.request_id);
    cr_expect_eq(d.status, RK_ERR_QUOTA);
    cr_expect_eq(d.length, 77);
}

Test(proto, header_errors)
{
    uint8_t b[24];
    rk_proto_hdr d;
    memcpy(b, hello_hdr, 24);
    cr_expect_eq(rk_proto_hdr_decode(b, 23, 100, &d), RK_ERR_TRUNCATED);
    b[0] = 'G'; /* an HTTP client on the protocol port */
    cr_expect_eq(rk_proto_hdr_decode(b, 24, 100, &d), RK_ERR_PROTOCOL);
    memcpy(b, hello_hdr, 24);
    b[2] = 2;
    cr_expect_eq(rk_proto_hdr_decode(b, 24, 100, &d), RK_ERR_PROTOCOL, "version");
    memcpy(b, hello_hdr, 24);
    b[3] = 9;
    cr_expect_eq(rk_proto_hdr_decode(b, 24, 100, &d), RK_ERR_PROTOCOL, "type");
    memcpy(b, hello_hdr, 24);
    b[6] = 1;
    cr_expect_eq(rk_proto_hdr_decode(b, 24, 100, &d), RK_ERR_PROTOCOL, "flags");
    memcpy(b, hello_hdr, 24);
    b[23] = 0x80; /* 2 GiB payload */
    cr_expect_eq(rk_proto_hdr_decode(b, 24, 100, &d), RK_ERR_LIMIT);
    cr_expect_eq(d.length, 0x80000000u, "header filled so the peer can be told");
}

Test(proto, primitives_round_trip)
{
    rk_buf b = RK_BUF_INIT;
    const int32_t toks[] = {1, 2, 70000, 0};
    rk_buf_put_str(&b, "tenant-a");
    rk_buf_put_tokens(&b, toks, 4);
    rk_buf_put_f32(&b, 0.15f);
    rk_buf_put_str(&b, "");
    cr_assert(!b.failed);
    cr_expect_eq(b.len, 2 + 8 + 4 + 16 + 4 + 2);
    rk_reader r = rk_reader_make(b.data, b.len);
    char s[64];
    int32_t *t;
    uint32_t n;
    rk_reader_str(&r, s, sizeof(s));
    cr_expect_str_eq(s, "tenant-a");
    rk_reader_tokens(&r, 100, &t, &n);
    cr_assert_eq(n, 4);
    cr_expect(memcmp(t, toks, sizeof(toks)) == 0);
    rk_free(t);
    float f = rk_reader_f32(&r); /* Criterion's macros may evaluate arguments twice */
    cr_expect_float_eq(f, 0.15f, 0);
    rk_reader_str(&r, s, sizeof(s));
    cr_expect_str_eq(s, "");
    cr_expect(!r.short_read);
    cr_expect_eq(rk_reader_left(&r), 0);
    rk_buf_free(&b);
}

Test(proto, primitives_reject_bad_input)
{
    char s[8];
    int32_t *t;
    uint32_t n;
    /* str longer than the output */
    const uint8_t longstr[] = {10, 0, 'a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i', 'j'};
    rk_reader r = rk_reader_make(longstr, sizeof(longstr));
    rk_reader_str(&r, s, sizeof(s));
    cr_expect(r.short_read);
    /* embedded NUL */
    const uint8_t nul[] = {3, 0, 'a', 0, 'b'};
    r = rk_reader_make(nul, sizeof(nul));
    rk_reader_str(&r, s, sizeof(s));
    cr_expect(r.short_read);
    /* token count larger than the bytes present: no huge allocation, short read */
    const uint8_t lie[] = {0xff, 0xff, 0xff, 0x0f, 1, 0, 0, 0};
    r = rk_reader_make(lie, sizeof(lie));
    rk_reader_tokens(&r, 0xffffffffu, &t, &n);
    cr_expect(r.short_read);
    cr_expect_null(t);
    /* token count above the cap */
    const uint8_t two[] = {2, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0};
    r = rk_reader_make(two, sizeof(two));
    rk_reader_tokens(&r, 1, &t, &n);
    cr_expect(r.short_read);
    cr_expect_str_eq(rk_opcode_name(RK_OP_PUT_CHUNK), "PUT_CHUNK");
    cr_expect_str_eq(rk_opcode_name(0x7777), "UNKNOWN");
    cr_expect(rk_opcode_is_admin(RK_OP_SHUTDOWN) && !rk_opcode_is_admin(RK_OP_GENERATE));
}
