/* Request payload decoding (docs/protocol.md §4-5): valid requests decode to the fields that
 * were encoded; malformed ones fail with a status and a message naming the problem. */
#include <criterion/criterion.h>
#include <string.h>

#include "ragkv/alloc.h"
#include "ragkv/svc_request.h"

static svc_request_limits lim;
static void setup(void) { svc_request_limits_default(&lim); }
TestSuite(request, .init = setup);

static rk_status decode(uint16_t op, rk_buf *b, svc_request *rq)
{
    rk_proto_hdr h = {.version = 1, .type = RK_PT_REQUEST, .opcode = op, .request_id = 9,
                      .length = (uint32_t)b->len};
    return svc_request_decode(&h, b->data, (uint32_t)b->len, &lim, rq);
}

Test(request, hello_and_auth)
{
    rk_buf b = RK_BUF_INIT;
    svc_request rq;
    rk_buf_put_u16(&b, 1);
    rk_buf_put_u16(&b, 1);
    rk_buf_put_str(&b, "pytest");
    cr_assert_eq(decode(RK_OP_HELLO, &b, &rq), RK_OK, "%s", rk_error_msg());
    cr_expect_eq(rq.id, 9);
    cr_expect_str_eq(rq.client, "pytest");
    svc_request_free(&rq);
    b.len = 0;
    rk_buf_put_u16(&b, 2);
    rk_buf_put_u16(&b, 1);
    rk_buf_put_str(&b, "x");
    cr_expect_eq(decode(RK_OP_HELLO, &b, &rq), RK_ERR_INVALID, "empty version range");
    svc_request_free(&rq);
    b.len = 0;
    rk_buf_put_str(&b, "tok_abc");
    cr_assert_eq(decode(RK_OP_AUTH, &b, &rq), RK_OK);
    cr_expect_str_eq(rq.token, "tok_abc");
    svc_request_free(&rq);
    rk_buf_free(&b);
}

Test(request, put_chunk_and_trailing_garbage)
{
    rk_buf b = RK_BUF_INIT;
    svc_request rq;
    const int32_t toks[] = {5, 6, 7};
    rk_buf_put_str(&b, "");
    rk_buf_put_tokens(&b, toks, 3);
    cr_assert_eq(decode(RK_OP_PUT_CHUNK, &b, &rq), RK_OK);
    cr_expect_eq(rq.ntokens, 3);
    cr_expect_eq(rq.tokens[2], 7);
    svc_request_free(&rq);
    rk_buf_put_u8(&b, 0);
    cr_expect_eq(decode(RK_OP_PUT_CHUNK, &b, &rq), RK_ERR_INVALID);
    cr_expect(strstr(rk_error_msg(), "unexpected bytes"), "%s", rk_error_msg());
    svc_request_free(&rq);
    b.len = 0;
    rk_buf_put_str(&b, "");
    const int32_t neg[] = {1, -4};
    rk_buf_put_tokens(&b, neg, 2);
    cr_expect_eq(decode(RK_OP_PUT_CHUNK, &b, &rq), RK_ERR_INVALID, "negative token id");
    svc_request_free(&rq);
    b.len = 0;
    rk_buf_put_str(&b, "");
    rk_buf_put_tokens(&b, NULL, 0);
    cr_expect_eq(decode(RK_OP_PUT_CHUNK, &b, &rq), RK_ERR_INVALID, "empty chunk");
    svc_request_free(&rq);
    rk_buf_free(&b);
}

Test(request, generate_full_round_trip)
{
    rk_buf b = RK_BUF_INIT;
    svc_request rq;
    uint8_t key[32];
    memset(key, 0xab, 32);
    const int32_t seg[] = {10, 11}, q[] = {20, 21, 22};
    rk_buf_put_str(&b, "corpus");
    rk_buf_put_u32(&b, 2);
    rk_buf_put_u8(&b, SVC_SEG_KEY);
    rk_buf_append(&b, key, 32);
    rk_buf_put_u8(&b, SVC_SEG_TOKENS);
    rk_buf_put_tokens(&b, seg, 2);
    rk_buf_put_tokens(&b, q, 3);
    rk_buf_put_u8(&b, SVC_BLEND_CACHEBLEND);
    rk_buf_put_f32(&b, 0.15f);
    rk_buf_put_u32(&b, 64);   /* max tokens */
    rk_buf_put_f32(&b, 0.0f); /* greedy */
    rk_buf_put_f32(&b, 0.9f);
    rk_buf_put_u32(&b, 40);
    rk_buf_put_u64(&b, 1234);
    rk_buf_put_u8(&b, 1);
    cr_assert_eq(decode(RK_OP_GENERATE, &b, &rq), RK_OK, "%s", rk_error_msg());
    cr_expect_str_eq(rq.ns, "corpus");
    cr_assert_eq(rq.nsegments, 2);
    cr_expect(memcmp(rq.segments[0].key, key, 32) == 0);
    cr_expect_eq(rq.segments[1].ntokens, 2);
    cr_expect_eq(rq.segments[1].tokens[1], 11);
    cr_expect_eq(rq.nquery, 3);
    cr_expect_eq(rq.blend, SVC_BLEND_CACHEBLEND);
    cr_expect_float_eq(rq.recompute, 0.15f, 0);
    cr_expect_eq(rq.max_tokens, 64);
    cr_expect_eq(rq.top_k, 40);
    cr_expect_eq(rq.seed, 1234);
    cr_expect_eq(rq.stream, 1);
    svc_request_free(&rq);
    svc_request_free(&rq); /* idempotent */
    /* every truncation of a valid GENERATE fails cleanly */
    for (size_t cut = 0; cut < b.len; cut++) {
        rk_proto_hdr h = {.version = 1, .type = RK_PT_REQUEST, .opcode = RK_OP_GENERATE, .length = (uint32_t)cut};
        cr_expect_neq(svc_request_decode(&h, b.data, (uint32_t)cut, &lim, &rq), RK_OK, "cut at %zu", cut);
        svc_request_free(&rq);
    }
    rk_buf_free(&b);
}

Test(request, limits_and_bad_values)
{
    rk_buf b = RK_BUF_INIT;
    svc_request rq;
    /* LOOKUP with more keys than allowed */
    lim.max_keys = 2;
    rk_buf_put_str(&b, "");
    rk_buf_put_u32(&b, 3);
    for (int i = 0; i < 3 * 32; i++)
        rk_buf_put_u8(&b, (uint8_t)i);
    cr_expect_eq(decode(RK_OP_LOOKUP, &b, &rq), RK_ERR_LIMIT);
    svc_request_free(&rq);
    /* a segment count that the payload cannot hold */
    b.len = 0;
    rk_buf_put_str(&b, "");
    rk_buf_put_u32(&b, 1000);
    cr_expect_eq(decode(RK_OP_PREFILL_KV, &b, &rq), RK_ERR_INVALID);
    svc_request_free(&rq);
    /* a bad blend mode and ratio */
    b.len = 0;
    rk_buf_put_str(&b, "");
    rk_buf_put_u32(&b, 0);
    const int32_t q[] = {1};
    rk_buf_put_tokens(&b, q, 1);
    rk_buf_put_u8(&b, 9);
    rk_buf_put_f32(&b, 0.1f);
    rk_buf_put_u8(&b, 0xFF);
    rk_buf_put_u8(&b, 0xFF);
    cr_expect_eq(decode(RK_OP_PREFILL_KV, &b, &rq), RK_ERR_INVALID);
    cr_expect(strstr(rk_error_msg(), "blend mode"), "%s", rk_error_msg());
    svc_request_free(&rq);
    b.data[b.len - 7] = SVC_BLEND_NAIVE;
    cr_expect_eq(decode(RK_OP_PREFILL_KV, &b, &rq), RK_OK, "%s", rk_error_msg());
    svc_request_free(&rq);
    rk_put_le32(b.data + b.len - 6, 0x7fc00000u); /* NaN ratio */
    cr_expect_eq(decode(RK_OP_PREFILL_KV, &b, &rq), RK_ERR_INVALID);
    svc_request_free(&rq);
    /* unknown opcode; a response frame where a request belongs */
    cr_expect_eq(decode(0x7777, &b, &rq), RK_ERR_UNSUPPORTED);
    svc_request_free(&rq);
    rk_proto_hdr h = {.version = 1, .type = RK_PT_RESPONSE, .opcode = RK_OP_PING};
    cr_expect_eq(svc_request_decode(&h, NULL, 0, &lim, &rq), RK_ERR_PROTOCOL);
    svc_request_free(&rq);
    rk_buf_free(&b);
}

Test(request, admin_payloads)
{
    rk_buf b = RK_BUF_INIT;
    svc_request rq;
    rk_buf_put_str(&b, "acme");
    rk_buf_put_u64(&b, 1u << 30);
    rk_buf_put_u64(&b, 1000);
    rk_buf_put_u8(&b, 1);
    cr_assert_eq(decode(RK_OP_TENANT_CREATE, &b, &rq), RK_OK);
    cr_expect_str_eq(rq.tenant, "acme");
    cr_expect_eq(rq.quota_bytes, 1u << 30);
    cr_expect_eq(rq.quota_chunks, 1000);
    cr_expect_eq(rq.quota_policy, 1);
    svc_request_free(&rq);
    b.data[b.len - 1] = 7;
    cr_expect_eq(decode(RK_OP_QUOTA_SET, &b, &rq), RK_ERR_INVALID);
    svc_request_free(&rq);
    b.len = 0;
    rk_buf_put_str(&b, "wiki");
    rk_buf_put_str(&b, "acme");
    cr_assert_eq(decode(RK_OP_NS_GRANT, &b, &rq), RK_OK);
    cr_expect_str_eq(rq.ns, "wiki");
    cr_expect_str_eq(rq.tenant, "acme");
    svc_request_free(&rq);
    rk_buf_free(&b);
}
