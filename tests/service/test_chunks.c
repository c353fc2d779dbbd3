/* The chunk cache through the daemon on the real model: PUT_CHUNK, LOOKUP, GENERATE from
 * cached chunks (by key and by content), GET_KV / PUT_KV, quotas, tenant isolation down to
 * the response bytes, and persistence across a restart. */
#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ragkv/alloc.h"
#include "ragkv/client.h"
#include "ragkv/codec.h"
#include "svc_testlib.h"
#include "testutil.h"

static char tmp[256], tok_a[256], tok_b[256], tok_q[256], adm[256];
static rk_test_proc daemon;
static int port, hport;
static const char *model;

static const char *blend_select = "deviation"; /* the daemon's blend-select */

static void start(void)
{
    const char *extra[] = {"--model", model, "--blend-select", blend_select, NULL};
    cr_assert(rk_test_daemon_start(tmp, extra, &daemon, &port, &hport), "ragkvd did not start");
}

static ragkv_conn *dial(const char *token)
{
    ragkv_conn *c;
    cr_assert_eq(ragkv_connect("127.0.0.1", port, 30000, &c), RK_OK);
    if (token)
        cr_assert_eq(ragkv_auth(c, token, NULL, 0), RK_OK, "%s", rk_error_msg());
    return c;
}

static void setup(void)
{
    model = rk_test_model_path("stories260K.bin");
    if (!model)
        return;
    cr_assert_not_null(rk_test_tmpdir(tmp, sizeof(tmp)));
    start();
    cr_assert(rk_test_admin_token(tmp, adm, sizeof(adm)), "no admin token in %s/var", tmp);
    ragkv_conn *a = dial(adm);
    cr_assert_eq(ragkv_admin_tenant_create(a, "acme", 0, 0, 0, tok_a, sizeof(tok_a)), RK_OK);
    cr_assert_eq(ragkv_admin_tenant_create(a, "globex", 0, 0, 0, tok_b, sizeof(tok_b)), RK_OK);
    cr_assert_eq(ragkv_admin_tenant_create(a, "tiny", 0, 1, 0, tok_q, sizeof(tok_q)), RK_OK, "quota: 1 chunk, reject");
    ragkv_close(a);
}

static void teardown(void)
{
    if (!model)
        return;
    cr_expect_eq(rk_test_stop(&daemon, SIGTERM, 20000), 0, "clean exit");
    rk_test_rmrf(tmp);
}

TestSuite(chunks, .init = setup, .fini = teardown, .timeout = 120);

static void chunk_tokens(int32_t *t, int n, int seed)
{
    for (int i = 0; i < n; i++)
        t[i] = 3 + (seed * 7919 + i * 104729) % 500;
}

static const int32_t query[] = {403, 407, 261, 378};

Test(chunks, put_lookup_and_generate_from_cache)
{
    if (!model)
        cr_skip_test("skipped: no real model");
    ragkv_conn *c = dial(tok_a);
    int32_t ch[2][30];
    uint8_t keys[64];
    for (int i = 0; i < 2; i++) {
        chunk_tokens(ch[i], 30, i + 1);
        int created = -1;
        uint64_t bytes = 0;
        cr_assert_eq(ragkv_put_chunk(c, ch[i], 30, keys + 32 * i, &created, &bytes), RK_OK, "%s", rk_error_msg());
        cr_expect_eq(created, 1);
        cr_expect_gt(bytes, 30 * 4, "tokens + container");
    }
    int created = -1;
    uint8_t k2[32];
    cr_assert_eq(ragkv_put_chunk(c, ch[0], 30, k2, &created, NULL), RK_OK);
    cr_expect_eq(created, 0, "already cached");
    cr_expect(memcmp(k2, keys, 32) == 0, "content-addressed: the same key");
    uint8_t present[2];
    cr_assert_eq(ragkv_lookup(c, keys, 2, present), RK_OK);
    cr_expect(present[0] && present[1]);

    /* cacheblend at r = 1 from cached chunks (by key) = full prefill of the same prompt */
    ragkv_segment by_key[2] = {{.key = keys}, {.key = keys + 32}};
    ragkv_segment by_tok[2] = {{.tokens = ch[0], .ntokens = 30}, {.tokens = ch[1], .ntokens = 30}};
    ragkv_gen_params full = {.segs = by_tok, .nsegs = 2, .query = query, .nquery = 4, .blend = 0, .max_tokens = 24};
    ragkv_gen_params r1 = {.segs = by_key, .nsegs = 2, .query = query, .nquery = 4, .blend = 3, .recompute = 1.0f, .max_tokens = 24};
    svct_tokens cf = {0}, cb = {0};
    ragkv_gen_stats sf, sb;
    cr_assert_eq(ragkv_generate(c, &full, svct_collect_tokens, &cf, &sf), RK_OK, "%s", rk_error_msg());
    cr_assert_eq(ragkv_generate(c, &r1, svct_collect_tokens, &cb, &sb), RK_OK, "%s", rk_error_msg());
    cr_expect_eq(sb.chunk_hits, 2);
    cr_expect_eq(sb.prompt_tokens, 1 + 60 + 4);
    cr_expect_eq(cf.n, cb.n);
    cr_expect(memcmp(cf.toks, cb.toks, cf.n * sizeof(int32_t)) == 0, "r = 1 from the cache equals full");
    /* literal segments are found by content; naive recomputes only BOS and the query */
    ragkv_gen_params nv = {.segs = by_tok, .nsegs = 2, .query = query, .nquery = 4, .blend = 2, .max_tokens = 8};
    svct_tokens cn = {0};
    cr_assert_eq(ragkv_generate(c, &nv, svct_collect_tokens, &cn, &sb), RK_OK);
    cr_expect_eq(sb.chunk_hits, 2);
    cr_expect_eq(sb.chunk_misses, 0);
    cr_expect_eq(sb.recomputed, 5);
    /* Cache-Craft with a budget of every token equals full; APE runs (no recompute) */
    ragkv_gen_params cc = {.segs = by_key, .nsegs = 2, .query = query, .nquery = 4, .blend = 4, .recompute = 1.0f, .max_tokens = 24};
    svct_tokens ccr = {0};
    cr_assert_eq(ragkv_generate(c, &cc, svct_collect_tokens, &ccr, &sb), RK_OK, "%s", rk_error_msg());
    cr_expect(ccr.n == cf.n && memcmp(ccr.toks, cf.toks, cf.n * sizeof(int32_t)) == 0,
              "cachecraft at alpha 2 (standalone variants: CFO 1) equals full");
    /* ... and, at the pair's second prompt (craft-capture-min-uses 2), leaves the second
     * chunk's variant after the first to be captured (service/craft.h): one more chunk entry of
     * the tenant once the capture is done */
    svct_tokens ccr2 = {0};
    cr_assert_eq(ragkv_generate(c, &cc, svct_collect_tokens, &ccr2, &sb), RK_OK, "%s", rk_error_msg());
    cr_expect(ccr2.n == cf.n && memcmp(ccr2.toks, cf.toks, cf.n * sizeof(int32_t)) == 0, "again equal to full");
    for (uint64_t end = rk_now_ns() + 60000000000ull; svct_metric(hport, "craft_captures_total") < 1 && rk_now_ns() < end;)
        cr_assert_eq(ragkv_ping(c), RK_OK); /* a round trip, not a sleep */
    cr_assert_eq(svct_metric(hport, "craft_variants_captured_total"), 1, "the variant captured");
    ragkv_gen_params ape = {.segs = by_key, .nsegs = 2, .query = query, .nquery = 4, .blend = 5, .max_tokens = 8};
    svct_tokens ca = {0};
    cr_assert_eq(ragkv_generate(c, &ape, svct_collect_tokens, &ca, &sb), RK_OK, "%s", rk_error_msg());
    cr_expect_eq(sb.recomputed, 5, "APE computes BOS and the query only");
    cr_expect_gt(ca.n, 0);
    /* an uncached literal segment is a miss, computed in context */
    int32_t fresh[20];
    chunk_tokens(fresh, 20, 9);
    ragkv_segment mix[2] = {{.key = keys}, {.tokens = fresh, .ntokens = 20}};
    ragkv_gen_params mx = {.segs = mix, .nsegs = 2, .query = query, .nquery = 4, .blend = 3, .recompute = 0.15f, .max_tokens = 8};
    svct_tokens cm = {0};
    cr_assert_eq(ragkv_generate(c, &mx, svct_collect_tokens, &cm, &sb), RK_OK);
    cr_expect_eq(sb.chunk_hits, 1);
    cr_expect_eq(sb.chunk_misses, 1);
    /* ... and cached by the time the answer arrived: the next prompt hits it */
    uint8_t kfresh[32];
    int fresh_created = -1;
    cr_assert_eq(ragkv_put_chunk(c, fresh, 20, kfresh, &fresh_created, NULL), RK_OK);
    cr_expect_eq(fresh_created, 0, "a miss is cached when the request ends");
    cr_assert_eq(ragkv_generate(c, &mx, svct_collect_tokens, &cm, &sb), RK_OK);
    cr_expect_eq(sb.chunk_hits, 2);
    cr_expect_eq(sb.chunk_misses, 0);
    /* the metrics show the work: TTFT histogram, hits, the tenant's usage */
    int code;
    char *body;
    cr_assert_eq(ragkv_http_get("127.0.0.1", hport, "/metrics", 5000, &code, &body), RK_OK);
    cr_expect(strstr(body, "# TYPE ragkv_ttft_ms histogram"), "%s", body);
    cr_expect(strstr(body, "ragkv_ttft_ms_bucket{le=\"+Inf\"} "), "%s", body);
    cr_expect(strstr(body, "ragkv_tenant_chunks{tenant=\"acme\"} 4\n"), "two put, one cached on a miss, one variant: %s",
              body);
    char *hits = strstr(body, "\nragkv_chunk_hits_total ");
    cr_assert_not_null(hits);
    cr_expect_geq(atoll(hits + strlen("\nragkv_chunk_hits_total ")), 7, "2 + 2 + 1 + 2 hits");
    rk_free(body);
    /* the admin inspects a record */
    ragkv_conn *ad = dial(adm);
    char *js;
    cr_assert_eq(ragkv_admin_inspect(ad, "acme", keys, &js), RK_OK, "%s", rk_error_msg());
    cr_expect(strstr(js, "\"namespace\": \"acme\"") && strstr(js, "\"tokens\": 30") && strstr(js, "\"codec\": \"cachegen\""), "%s", js);
    rk_free(js);
    cr_expect_eq(ragkv_admin_inspect(ad, "globex", keys, &js), RK_ERR_NOT_FOUND, "not globex's");
    ragkv_tenant_stats ts;
    cr_assert_eq(ragkv_admin_tenant_stats(ad, "acme", &ts), RK_OK, "%s", rk_error_msg());
    cr_expect_eq(ts.chunks, 4, "two put, one cached on a miss, one Cache-Craft variant");
    cr_expect_geq(ts.generations, 7, "full, r=1, naive, mixed twice, cachecraft, ape");
    cr_expect_geq(ts.hits, 11);
    cr_expect_eq(ts.misses, 1, "the fresh literal segment, once");
    cr_expect_gt(ts.requests, ts.generations);
    cr_expect_gt(ts.ttft_p99_ms, 0.0f);
    cr_expect_geq(ts.ttft_p99_ms, ts.ttft_p50_ms);
    cr_assert_eq(ragkv_admin_tenant_stats(ad, "globex", &ts), RK_OK);
    cr_expect_eq(ts.generations, 0, "nothing of acme's is counted for globex");
    ragkv_close(ad);
    /* delete: gone */
    cr_assert_eq(ragkv_delete(c, keys + 32), RK_OK);
    cr_assert_eq(ragkv_lookup(c, keys, 2, present), RK_OK);
    cr_expect(present[0] && !present[1]);
    ragkv_close(c);
}

/* One raw request/response exchange, returned byte for byte. */
static size_t exchange(ragkv_conn *c, uint16_t op, const rk_buf *req, uint8_t *out, size_t cap)
{
    cr_assert_eq(ragkv_send_frame(c, op, 77, req->data, (uint32_t)req->len), RK_OK);
    rk_proto_hdr h;
    uint8_t *p;
    cr_assert_eq(ragkv_recv_frame(c, &h, &p), RK_OK);
    cr_assert_leq(RK_PROTO_HDR_SIZE + h.length, cap);
    rk_proto_hdr_encode(&h, out);
    memcpy(out + RK_PROTO_HDR_SIZE, p, h.length);
    rk_free(p);
    return RK_PROTO_HDR_SIZE + h.length;
}

Test(chunks, another_tenants_chunk_is_indistinguishable_from_a_missing_one)
{
    if (!model)
        cr_skip_test("skipped: no real model");
    ragkv_conn *a = dial(tok_a), *b = dial(tok_b);
    int32_t ch[25];
    chunk_tokens(ch, 25, 5);
    uint8_t key[32], nokey[32];
    cr_assert_eq(ragkv_put_chunk(a, ch, 25, key, NULL, NULL), RK_OK);
    memcpy(nokey, key, 32);
    nokey[0] ^= 0xff; /* a key nobody has */
    /* the same tokens are a different chunk for globex: its own key, not acme's */
    uint8_t kb[32];
    int created;
    cr_assert_eq(ragkv_put_chunk(b, ch, 25, kb, &created, NULL), RK_OK);
    cr_expect_eq(created, 1, "identical tokens in another tenant are another chunk");
    cr_expect(memcmp(kb, key, 32) != 0);
    cr_assert_eq(ragkv_delete(b, kb), RK_OK);
    /* GET_KV and LOOKUP of acme's key from globex: byte-identical to a key that never existed */
    uint8_t r1[512], r2[512];
    for (int op = 0; op < 2; op++) {
        rk_buf q1 = RK_BUF_INIT, q2 = RK_BUF_INIT;
        rk_buf_put_str(&q1, "");
        rk_buf_put_str(&q2, "");
        if (op == 0) {
            rk_buf_put_u8(&q1, 0);
            rk_buf_append(&q1, key, 32);
            rk_buf_put_u8(&q2, 0);
            rk_buf_append(&q2, nokey, 32);
            for (int i = 0; i < 2; i++) {
                rk_buf_put_u8(&q1, 0xFF);
                rk_buf_put_u8(&q2, 0xFF);
            }
        } else {
            rk_buf_put_u32(&q1, 1);
            rk_buf_append(&q1, key, 32);
            rk_buf_put_u32(&q2, 1);
            rk_buf_append(&q2, nokey, 32);
        }
        uint16_t opc = op == 0 ? RK_OP_GET_KV : RK_OP_LOOKUP;
        size_t n1 = exchange(b, opc, &q1, r1, sizeof(r1));
        size_t n2 = exchange(b, opc, &q2, r2, sizeof(r2));
        cr_expect_eq(n1, n2, "%s", rk_opcode_name(opc));
        cr_expect(memcmp(r1, r2, n1) == 0, "%s: identical bytes", rk_opcode_name(opc));
        rk_buf_free(&q1);
        rk_buf_free(&q2);
    }
    ragkv_segment seg = {.key = key};
    ragkv_gen_params p = {.segs = &seg, .nsegs = 1, .query = query, .nquery = 4, .max_tokens = 4};
    cr_expect_eq(ragkv_generate(b, &p, NULL, NULL, NULL), RK_ERR_NOT_FOUND);
    cr_expect_eq(ragkv_generate(a, &p, NULL, NULL, NULL), RK_OK, "%s", rk_error_msg());
    ragkv_close(a);
    ragkv_close(b);
}

Test(chunks, get_kv_put_kv_quota_and_restart)
{
    if (!model)
        cr_skip_test("skipped: no real model");
    ragkv_conn *a = dial(tok_a), *b = dial(tok_b), *q = dial(tok_q);
    int32_t ch[40];
    chunk_tokens(ch, 40, 11);
    uint8_t key[32], kb[32];
    cr_assert_eq(ragkv_put_chunk(a, ch, 40, key, NULL, NULL), RK_OK);
    uint8_t *cont;
    uint32_t clen;
    cr_assert_eq(ragkv_get_kv(a, key, NULL, 0, &cont, &clen), RK_OK, "%s", rk_error_msg());
    codec_info ci;
    cr_assert_eq(codec_inspect(cont, clen, &ci), RK_OK, "a valid container");
    cr_expect_eq(ci.shape.n_tokens, 40);
    cr_expect_eq(ci.shape.n_layers, 5);
    uint8_t *cont2;
    uint32_t clen2;
    cr_assert_eq(ragkv_get_kv(a, NULL, ch, 40, &cont2, &clen2), RK_OK, "by tokens");
    cr_expect(clen2 == clen && memcmp(cont, cont2, clen) == 0);
    rk_free(cont2);
    /* transcoded on request: q8 at its default level; an unknown codec is refused */
    rk_buf tq = RK_BUF_INIT;
    rk_buf_put_str(&tq, "");
    rk_buf_put_u8(&tq, 0);
    rk_buf_append(&tq, key, 32);
    rk_buf_put_u8(&tq, CODEC_Q8);
    rk_buf_put_u8(&tq, 0xFF);
    uint8_t *tr;
    uint32_t trl;
    cr_assert_eq(ragkv_call(a, RK_OP_GET_KV, tq.data, (uint32_t)tq.len, &tr, &trl), RK_OK, "%s", rk_error_msg());
    codec_info qi;
    cr_assert_eq(codec_inspect(tr + 4, trl - 4, &qi), RK_OK);
    cr_expect_eq(qi.codec, CODEC_Q8);
    cr_expect_eq(qi.shape.n_tokens, 40);
    rk_free(tr);
    tq.data[tq.len - 2] = 99;
    cr_expect_eq(ragkv_call(a, RK_OP_GET_KV, tq.data, (uint32_t)tq.len, NULL, NULL), RK_ERR_UNSUPPORTED);
    rk_buf_free(&tq);
    /* globex stores acme's container as an external engine would */
    int created;
    cr_assert_eq(ragkv_put_kv(b, ch, 40, cont, clen, kb, &created), RK_OK, "%s", rk_error_msg());
    cr_expect_eq(created, 1);
    cr_expect_eq(ragkv_put_kv(b, ch, 39, cont, clen, kb, &created), RK_ERR_INVALID, "token count mismatch");
    cont[clen / 2] ^= 0x55;
    cr_expect_neq(ragkv_put_kv(b, query, 4, cont, clen, kb, &created), RK_OK, "corrupt container");
    rk_free(cont);
    /* quota: one chunk, reject policy */
    uint8_t kq[32];
    cr_assert_eq(ragkv_put_chunk(q, ch, 40, kq, NULL, NULL), RK_OK, "%s", rk_error_msg());
    int32_t ch2[10];
    chunk_tokens(ch2, 10, 12);
    cr_expect_eq(ragkv_put_chunk(q, ch2, 10, kq, NULL, NULL), RK_ERR_QUOTA);
    ragkv_close(a);
    ragkv_close(b);
    ragkv_close(q);
    /* restart: acknowledged chunks are still there */
    cr_assert_eq(rk_test_stop(&daemon, SIGTERM, 20000), 0);
    start();
    a = dial(tok_a);
    uint8_t present = 0;
    cr_assert_eq(ragkv_lookup(a, key, 1, &present), RK_OK, "%s", rk_error_msg());
    cr_expect_eq(present, 1, "durable across restarts");
    ragkv_close(a);
}

/* blend-select = attention or lookahead: cacheblend prompts still answer, r = 1 still equals
 * full, and a partial recompute keeps the ratio's count (the query's attention changes which
 * tokens, not how many) but, on this prompt at r = 0.5, not the continuation the deviation's
 * ranking gives on the same store: the daemon passes the option on. */
static void cacheblend_ranked_by(const char *select)
{
    if (!model)
        cr_skip_test("skipped: no real model");
    ragkv_conn *c = dial(tok_a);
    int32_t ch[3][30];
    ragkv_segment segs[3];
    for (int i = 0; i < 3; i++) {
        chunk_tokens(ch[i], 30, i + 11);
        uint8_t key[32];
        cr_assert_eq(ragkv_put_chunk(c, ch[i], 30, key, NULL, NULL), RK_OK, "%s", rk_error_msg());
        segs[i] = (ragkv_segment){.tokens = ch[i], .ntokens = 30};
    }
    ragkv_gen_params full = {.segs = segs, .nsegs = 3, .query = query, .nquery = 4, .blend = 0, .max_tokens = 16};
    ragkv_gen_params r1 = full, part = full;
    r1.blend = part.blend = 3;
    r1.recompute = 1.0f;
    part.recompute = 0.5f;
    svct_tokens tf = {0}, t1 = {0}, tp = {0}, td = {0};
    ragkv_gen_stats sf, s1, sp;
    /* the same prompt on this daemon (deviation, the default), then on one ranking by attention
     * over the same store */
    cr_assert_eq(ragkv_generate(c, &part, svct_collect_tokens, &td, &sp), RK_OK, "%s", rk_error_msg());
    ragkv_close(c);
    cr_assert_eq(rk_test_stop(&daemon, SIGTERM, 20000), 0);
    blend_select = select;
    start();
    blend_select = "deviation";
    c = dial(tok_a);
    cr_assert_eq(ragkv_generate(c, &full, svct_collect_tokens, &tf, &sf), RK_OK, "%s", rk_error_msg());
    cr_assert_eq(ragkv_generate(c, &r1, svct_collect_tokens, &t1, &s1), RK_OK, "%s", rk_error_msg());
    cr_expect(tf.n == t1.n && memcmp(tf.toks, t1.toks, tf.n * sizeof(int32_t)) == 0, "r = 1 equals full");
    cr_assert_eq(ragkv_generate(c, &part, svct_collect_tokens, &tp, &sp), RK_OK, "%s", rk_error_msg());
    cr_expect_eq(sp.chunk_hits, 3);
    cr_expect_eq(tp.n, 16);
    cr_expect_eq(sp.recomputed, 1 + 45 + 4, "BOS, half of the 90 reused tokens, the query");
    cr_expect(td.n != tp.n || memcmp(td.toks, tp.toks, td.n * sizeof(int32_t)) != 0,
              "%s: another ranking, another continuation (this prompt's, measured)", select);
    ragkv_close(c);
}

Test(chunks, cacheblend_ranked_by_the_querys_attention) { cacheblend_ranked_by("attention"); }

Test(chunks, cacheblend_ranked_by_lookahead) { cacheblend_ranked_by("lookahead"); }
