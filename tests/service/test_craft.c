/* Cache-Craft variants captured inside served prompts (service/craft.h), through a real ragkvd
 * on stories260K with embedded metadata:
 *  - [C1, C2] + query served with cachecraft twice: once the first request's capture is done
 *    (craft_captures_total, polled with a deadline), the second uses C2's variant
 *    (craft_variants_used_total), recomputes less, and its KV and last-row logits are closer
 *    to full prefill's than the first's;
 *  - other modes capture nothing; a quota too small for the variant skips it (counted), the
 *    request unharmed;
 *  - a variant damaged on disk falls back to the standalone cache (the request unharmed) and
 *    is captured again;
 *  - a variant captured in tenant A's namespace is never used by tenant B;
 *  - in a shared corpus the corpus keeps (and every granted tenant uses) variants made of its
 *    own chunks only: a prompt whose chunk follows the tenant's own text, or the tenant's own
 *    chunk named by key, captures nothing;
 *  - a daemon that is never idle still captures (craft-capture-max-wait-ms), and with 0 it
 *    captures only once the load stops; svc_craft_due's rule itself;
 *  - by default a pair's variant is captured at its second prompt, not its first
 *    (craft-capture-min-uses 2; the other tests capture at the first). */
#include <criterion/criterion.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ragkv/alloc.h"
#include "ragkv/blobstore.h"
#include "ragkv/bytes.h"
#include "ragkv/client.h"
#include "ragkv/codec.h"
#include "ragkv/engine.h"
#include "ragkv/proto.h"
#include "ragkv/record.h"
#include "../../service/craft.h"
#include "svc_testlib.h"
#include "testutil.h"

TestSuite(craft, .timeout = 240);

#define NC 40 /* tokens per chunk */
#define NQ 5  /* query tokens */
#define NPROMPT (1 + 2 * NC + NQ)

static const char *const *model_flags(void)
{
    /* capture at a pair's first prompt (the default waits for its second: min_uses_2 below) */
    static const char *extra[] = {"--model", NULL, "--max-batch", "4", "--craft-capture-min-uses", "1", NULL};
    extra[1] = svct_need_model();
    return extra;
}

/* The same with chunks (and PREFILL_KV's answer) stored as fp16 (chunk-codec lz4): nearly
 * lossless, for comparisons with full prefill that the default codec's loss would blur. */
static const char *const *fp16_flags(void)
{
    static const char *extra[] = {"--model", NULL, "--max-batch", "4", "--chunk-codec", "lz4",
                                  "--craft-capture-min-uses", "1", NULL};
    extra[1] = svct_need_model();
    return extra;
}

/* Two chunks and a query of a seed. */
static void prompt_of(int seed, int32_t *c1, int32_t *c2, int32_t *q)
{
    svct_chunk_toks(c1, NC, seed);
    svct_chunk_toks(c2, NC, seed + 1);
    svct_chunk_toks(q, NQ, seed + 2);
}

/* PREFILL_KV of BOS + [c1, c2] + q with blend mode `blend` (4 cachecraft; recompute 0: the
 * default alpha): the prompt's KV decoded to floats (rk_free) when kv is not NULL, and the
 * recomputed token count. Asserts success. */
static uint32_t prefill_in(ragkv_conn *c, const char *ns, const int32_t *const *segs, int nsegs, const int32_t *q,
                           uint8_t blend, float **kv);
static uint32_t prefill_keys(ragkv_conn *c, const char *ns, const int32_t *const *segs, const uint8_t *const *keys,
                             int nsegs, const int32_t *q, uint8_t blend, float **kv);

static uint32_t prefill(ragkv_conn *c, const int32_t *c1, const int32_t *c2, const int32_t *q, uint8_t blend,
                        float **kv)
{
    const int32_t *segs[2] = {c1, c2};
    return prefill_in(c, "", segs, 2, q, blend, kv);
}

/* The same in namespace ns ("": the tenant's own) with nsegs literal segments of NC tokens
 * (the prompt then has 1 + nsegs * NC + NQ tokens). */
static uint32_t prefill_in(ragkv_conn *c, const char *ns, const int32_t *const *segs, int nsegs, const int32_t *q,
                           uint8_t blend, float **kv)
{
    return prefill_keys(c, ns, segs, NULL, nsegs, q, blend, kv);
}

/* The same, segment s named by the 32-byte key keys[s] instead of its tokens where keys and
 * keys[s] are not NULL (segs[s] unused then; the chunk has NC tokens). */
static uint32_t prefill_keys(ragkv_conn *c, const char *ns, const int32_t *const *segs, const uint8_t *const *keys,
                             int nsegs, const int32_t *q, uint8_t blend, float **kv)
{
    rk_buf b = RK_BUF_INIT;
    rk_buf_put_u16(&b, (uint16_t)strlen(ns));
    rk_buf_append(&b, ns, strlen(ns));
    rk_buf_put_u32(&b, (uint32_t)nsegs);
    for (int s = 0; s < nsegs; s++) {
        if (keys && keys[s]) {
            rk_buf_put_u8(&b, 0); /* by key */
            rk_buf_append(&b, keys[s], 32);
            continue;
        }
        rk_buf_put_u8(&b, 1); /* tokens */
        rk_buf_put_u32(&b, NC);
        for (int i = 0; i < NC; i++)
            rk_buf_put_u32(&b, (uint32_t)segs[s][i]);
    }
    rk_buf_put_u32(&b, NQ);
    for (int i = 0; i < NQ; i++)
        rk_buf_put_u32(&b, (uint32_t)q[i]);
    rk_buf_put_u8(&b, blend);
    rk_buf_put_f32(&b, 0.0f);
    rk_buf_put_u8(&b, 0xFF); /* codec: the daemon's */
    rk_buf_put_u8(&b, 0xFF);
    cr_assert(!b.failed);
    uint8_t *resp;
    uint32_t len;
    rk_status st = ragkv_call(c, RK_OP_PREFILL_KV, b.data, (uint32_t)b.len, &resp, &len);
    rk_buf_free(&b);
    cr_assert_eq(st, RK_OK, "PREFILL_KV (mode %u): %s", blend, rk_error_msg());
    rk_reader r = rk_reader_make(resp, len);
    uint32_t clen = rk_reader_u32(&r);
    const uint8_t *cont = rk_reader_take(&r, clen);
    uint32_t prompt_tokens = rk_reader_u32(&r), recomputed = rk_reader_u32(&r);
    cr_assert(cont && !r.short_read, "PREFILL_KV response");
    cr_assert_eq(prompt_tokens, 1 + (uint32_t)nsegs * NC + NQ);
    if (kv) {
        codec_info ci;
        cr_assert_eq(codec_inspect(cont, clen, &ci), RK_OK);
        size_t bytes = codec_decoded_bytes(&ci, CODEC_F32);
        *kv = rk_malloc(bytes);
        cr_assert_eq(codec_decode(cont, clen, NULL, CODEC_F32, *kv, bytes), RK_OK, "%s", rk_error_msg());
    }
    rk_free(resp);
    return recomputed;
}

/* PUT_CHUNK of a chunk of NC tokens (asserting success). */
static void put(ragkv_conn *c, const int32_t *t)
{
    uint8_t key[32];
    cr_assert_eq(ragkv_put_chunk(c, t, NC, key, NULL, NULL), RK_OK, "%s", rk_error_msg());
}

/* A daemon (flags, tenant acme) with the two chunks of prompt seed cached by PUT_CHUNK: the
 * connection of acme, and the prompt's chunks and query in c1, c2, q. */
static ragkv_conn *up_with_pair(svct_daemon *dd, const char *const *flags, int seed, int32_t *c1, int32_t *c2,
                                int32_t *q)
{
    svct_daemon_up(dd, "ragkvd", flags, "acme", NULL);
    ragkv_conn *c = svct_dial(dd->port, dd->token[0]);
    prompt_of(seed, c1, c2, q);
    put(c, c1);
    put(c, c2);
    return c;
}

/* Poll craft_captures_total until it reaches want (deadline 60 s). */
static void wait_captures(const svct_daemon *dd, long long want)
{
    uint64_t end = rk_now_ns() + 60000000000ull;
    long long v;
    while ((v = svct_metric(dd->hport, "craft_captures_total")) < want && rk_now_ns() < end) {
        ragkv_conn *c = svct_dial(dd->port, NULL); /* a round trip, not a sleep */
        ragkv_ping(c);
        ragkv_close(c);
    }
    cr_assert_geq(v, want, "capture done: craft_captures_total %lld, want %lld", v, want);
}

static long long skipped(const svct_daemon *dd, const char *why)
{
    char name[96];
    snprintf(name, sizeof(name), "craft_variants_skipped_total{reason=\"%s\"}", why);
    return svct_metric(dd->hport, name);
}

/* The last row's logits of a prompt KV (NPROMPT tokens, last token `last`): every row but the
 * last imported, the last decoded on it. */
static void last_logits(eng_model *m, eng_backend *be, const float *kv, int32_t last, float *logits)
{
    eng_seq *s;
    int32_t pos[NPROMPT];
    for (int i = 0; i < NPROMPT; i++)
        pos[i] = i;
    cr_assert_eq(eng_seq_new(be, NPROMPT, &s), RK_OK);
    /* [layer][K|V][token]...: import the first NPROMPT - 1 tokens layer by layer */
    const eng_model_info *mi = eng_model_get_info(m);
    size_t row = (size_t)mi->n_kv_heads * (size_t)mi->head_dim, n = NPROMPT - 1;
    float *part = rk_malloc(eng_kv_floats(m, n) * sizeof(float));
    for (int l = 0; l < mi->n_layers; l++)
        for (int kvi = 0; kvi < 2; kvi++)
            memcpy(part + ((size_t)l * 2 + (size_t)kvi) * n * row, kv + ((size_t)l * 2 + (size_t)kvi) * NPROMPT * row,
                   n * row * sizeof(float));
    cr_assert_eq(eng_kv_import(s, 0, n, pos, part), RK_OK, "%s", rk_error_msg());
    cr_assert_eq(eng_decode(be, &s, &last, 1, logits), RK_OK, "%s", rk_error_msg());
    rk_free(part);
    eng_seq_free(s);
}

static double rel_l2(const float *a, const float *b, size_t n)
{
    double d = 0, r = 0;
    for (size_t i = 0; i < n; i++) {
        d += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
        r += (double)a[i] * a[i];
    }
    return sqrt(d / (r > 0 ? r : 1));
}

/* The first scenario under a daemon started with flags; lossless: the codec is fp16 (then
 * the captured variant's result is full prefill's up to fp16 rounding). */
static void used_and_closer(const char *const *flags, bool lossless)
{
    svct_daemon dd;
    int32_t c1[NC], c2[NC], q[NQ];
    ragkv_conn *c = up_with_pair(&dd, flags, 7, c1, c2, q);

    float *kf, *k1, *k2;
    prefill(c, c1, c2, q, 0, &kf); /* full: no capture */
    uint32_t r1 = prefill(c, c1, c2, q, 4, &k1);
    cr_expect_eq(svct_metric(dd.hport, "craft_variants_used_total"), 0);
    wait_captures(&dd, 1);
    cr_expect_eq(svct_metric(dd.hport, "craft_variants_captured_total"), 1, "C2's variant after C1 stored");
    uint32_t r2 = prefill(c, c1, c2, q, 4, &k2);
    cr_expect_eq(svct_metric(dd.hport, "craft_variants_used_total"), 1, "the second request uses it");
    cr_expect_eq(r2, 1 + NQ, "captured in exactly this context: CFO 0, only BOS and the query (%u)", r2);
    cr_expect_lt(r2, r1, "recomputes less (%u < %u)", r2, r1);

    /* closer to full: the whole KV and the last row's logits */
    eng_model *m;
    eng_backend *be;
    cr_assert_eq(eng_model_open(svct_need_model(), &m), RK_OK);
    cr_assert_eq(eng_backend_new(m, "cpu", 1, &be), RK_OK);
    size_t nf = eng_kv_floats(m, NPROMPT);
    double d1 = rel_l2(kf, k1, nf), d2 = rel_l2(kf, k2, nf);
    cr_expect_lt(d2, d1, "KV closer to full (%g < %g)", d2, d1);
    int vocab = eng_model_get_info(m)->vocab;
    float *lf = rk_malloc((size_t)vocab * sizeof(float)), *l1 = rk_malloc((size_t)vocab * sizeof(float)),
          *l2 = rk_malloc((size_t)vocab * sizeof(float));
    last_logits(m, be, kf, q[NQ - 1], lf);
    last_logits(m, be, k1, q[NQ - 1], l1);
    last_logits(m, be, k2, q[NQ - 1], l2);
    double e1 = rel_l2(lf, l1, (size_t)vocab), e2 = rel_l2(lf, l2, (size_t)vocab);
    fprintf(stderr, "cachecraft vs full (%s): recomputed %u -> %u, KV rel-L2 %.4g -> %.4g, last-row logits rel-L2 "
            "%.4g -> %.4g\n", lossless ? "fp16 chunks" : "default codec", r1, r2, d1, d2, e1, e2);
    if (lossless) {
        /* the variant is the prompt's own KV up to fp16: logits as full's, up to that */
        cr_expect_lt(e2, e1, "last-row logits closer to full (%g < %g)", e2, e1);
        cr_expect_lt(e2, 1e-2, "within fp16 rounding of full (%g)", e2);
    }
    rk_free(lf);
    rk_free(l1);
    rk_free(l2);
    eng_backend_free(be);
    eng_model_close(m);
    rk_free(kf);
    rk_free(k1);
    rk_free(k2);

    /* the variant exists now: a third request captures nothing more */
    long long jobs = svct_metric(dd.hport, "craft_captures_total");
    prefill(c, c1, c2, q, 4, NULL);
    cr_expect_eq(svct_metric(dd.hport, "craft_captures_total"), jobs, "nothing left to capture");
    ragkv_close(c);
    svct_daemon_down(&dd);
}

Test(craft, captured_variant_is_used_and_closer_to_full)
{
    used_and_closer(fp16_flags(), true);
}

/* With the default codec (cachegen) the variant's KV carries the codec's loss on every token
 * of C2, where the first request recomputed most of them exactly: the KV as a whole is still
 * closer to full, the last row's logits are only reported (see docs/blend.md). */
Test(craft, captured_variant_is_used_with_the_default_codec)
{
    used_and_closer(model_flags(), false);
}

Test(craft, other_modes_capture_nothing_and_a_small_quota_skips)
{
    svct_daemon dd;
    svct_daemon_up(&dd, "ragkvd", model_flags(), "acme", NULL);
    ragkv_conn *c = svct_dial(dd.port, dd.token[0]);
    int32_t c1[NC], c2[NC], q[NQ];
    prompt_of(11, c1, c2, q);
    /* full, naive, cacheblend (the chunks cached by the first's misses): no capture queued */
    for (uint8_t mode = 0; mode <= 3; mode++)
        if (mode != 1)
            prefill(c, c1, c2, q, mode, NULL);
    /* a cachecraft request of another prompt: captures run in order, so once its capture is
     * done any capture the other modes had queued would be too */
    int32_t d1[NC], d2[NC], dq[NQ];
    prompt_of(21, d1, d2, dq);
    prefill(c, d1, d2, dq, 4, NULL);
    wait_captures(&dd, 1);
    cr_expect_eq(svct_metric(dd.hport, "craft_captures_total"), 1, "only the cachecraft request captured");
    cr_expect_eq(svct_metric(dd.hport, "craft_variants_captured_total"), 1);

    /* a tenant whose quota holds its two chunks, not a third: the variant is skipped */
    ragkv_conn *a = svct_dial(dd.port, dd.adm);
    char tok[256];
    cr_assert_eq(ragkv_admin_tenant_create(a, "small", 0, 2, 0, tok, sizeof(tok)), RK_OK, "%s", rk_error_msg());
    ragkv_close(a);
    ragkv_conn *s = svct_dial(dd.port, tok);
    put(s, c1);
    put(s, c2);
    long long q0 = skipped(&dd, "quota");
    uint32_t r1 = prefill(s, c1, c2, q, 4, NULL);
    wait_captures(&dd, 2);
    cr_expect_eq(skipped(&dd, "quota") - q0, 1, "refused by the quota: skipped, counted");
    cr_expect_eq(svct_metric(dd.hport, "craft_variants_captured_total"), 1, "nothing stored");
    uint32_t r2 = prefill(s, c1, c2, q, 4, NULL);
    cr_expect_eq(r2, r1, "still the standalone caches, the request unharmed");
    ragkv_close(s);
    ragkv_close(c);
    svct_daemon_down(&dd);
}

/* Scan callback: flip a byte near the end of every chunk value whose record is a variant's. */
static int damage_variants(void *arg, const uint8_t *key, size_t klen, const uint8_t *val, size_t vlen)
{
    cc_blobstore *bs = arg;
    cc_record rec;
    size_t used;
    if (cc_record_decode(val, vlen, &rec, &used) != RK_OK)
        return 0;
    bool variant = strstr(rec.model, "|craft-after:") != NULL;
    cc_record_clear(&rec);
    if (!variant)
        return 0;
    uint8_t *v = malloc(vlen);
    memcpy(v, val, vlen);
    v[vlen - 9] ^= 0x20;
    cc_iov part = {v, vlen};
    cr_assert_eq(cc_blobstore_put(bs, CC_SPACE_CHUNKS, key, klen, &part, 1), RK_OK);
    free(v);
    return 0;
}

Test(craft, damaged_variant_falls_back_and_is_captured_again)
{
    svct_daemon dd;
    const char *const *extra = model_flags();
    svct_daemon_up(&dd, "ragkvd", extra, "acme", NULL);
    ragkv_conn *c = svct_dial(dd.port, dd.token[0]);
    int32_t c1[NC], c2[NC], q[NQ];
    prompt_of(31, c1, c2, q);
    put(c, c1);
    put(c, c2);
    uint32_t r1 = prefill(c, c1, c2, q, 4, NULL);
    wait_captures(&dd, 1);
    cr_assert_eq(svct_metric(dd.hport, "craft_variants_captured_total"), 1);
    ragkv_close(c);
    cr_assert_eq(rk_test_stop(&dd.proc, SIGTERM, 20000), 0);

    /* damage the variant's bytes through RocksDB itself (valid CRCs; ragkv's checksum fails) */
    char store[512];
    snprintf(store, sizeof(store), "%s/var/store", dd.tmp);
    cc_blobstore bs;
    cr_assert_eq(cc_blobstore_rocksdb_open(store, NULL, &bs), RK_OK, "%s", rk_error_msg());
    cr_assert_eq(cc_blobstore_scan(&bs, CC_SPACE_CHUNKS, damage_variants, &bs), RK_OK);
    cc_blobstore_close(&bs);

    svct_daemon_start(&dd, "ragkvd", extra);
    c = svct_dial(dd.port, dd.token[0]);
    uint32_t r2 = prefill(c, c1, c2, q, 4, NULL);
    cr_expect_eq(r2, r1, "the standalone cache, as before any capture (%u vs %u)", r2, r1);
    cr_expect_eq(svct_metric(dd.hport, "craft_variants_used_total"), 0, "the damaged variant is not used");
    cr_expect_geq(svct_metric(dd.hport, "store_corrupt_total"), 1, "caught by the store's checksum");
    wait_captures(&dd, 1); /* a miss now: captured again */
    cr_expect_eq(svct_metric(dd.hport, "craft_variants_captured_total"), 1);
    uint32_t r3 = prefill(c, c1, c2, q, 4, NULL);
    cr_expect_eq(svct_metric(dd.hport, "craft_variants_used_total"), 1, "the fresh capture is used");
    cr_expect_eq(r3, 1 + NQ);
    ragkv_close(c);
    svct_daemon_down(&dd);
}

Test(craft, a_tenants_variant_is_never_used_by_another)
{
    svct_daemon dd;
    svct_daemon_up(&dd, "ragkvd", model_flags(), "acme", "globex", NULL);
    ragkv_conn *a = svct_dial(dd.port, dd.token[0]), *b = svct_dial(dd.port, dd.token[1]);
    int32_t c1[NC], c2[NC], q[NQ];
    prompt_of(41, c1, c2, q);
    for (int t = 0; t < 2; t++) {
        ragkv_conn *c = t ? b : a;
        put(c, c1);
        put(c, c2);
    }
    uint32_t ra = prefill(a, c1, c2, q, 4, NULL);
    wait_captures(&dd, 1);
    cr_assert_eq(svct_metric(dd.hport, "craft_variants_captured_total"), 1, "A's variant");
    /* B, the same prompt in its own namespace: A's variant is neither found nor used */
    uint32_t rb = prefill(b, c1, c2, q, 4, NULL);
    cr_expect_eq(rb, ra, "B recomputes as A did before its capture (%u vs %u)", rb, ra);
    cr_expect_eq(svct_metric(dd.hport, "craft_variants_found_total"), 0, "nothing of A's found");
    cr_expect_eq(svct_metric(dd.hport, "craft_variants_used_total"), 0);
    /* B's own capture, then each uses its own */
    wait_captures(&dd, 2);
    cr_expect_eq(svct_metric(dd.hport, "craft_variants_captured_total"), 2, "B's own variant");
    cr_expect_eq(prefill(b, c1, c2, q, 4, NULL), 1 + NQ);
    cr_expect_eq(prefill(a, c1, c2, q, 4, NULL), 1 + NQ);
    cr_expect_eq(svct_metric(dd.hport, "craft_variants_used_total"), 2);
    ragkv_close(a);
    ragkv_close(b);
    svct_daemon_down(&dd);
}

Test(craft, a_shared_corpus_keeps_variants_of_its_own_chunks_only)
{
    svct_daemon dd;
    svct_daemon_up(&dd, "ragkvd", model_flags(), "acme", "globex", "corpus", NULL);
    ragkv_conn *a = svct_dial(dd.port, dd.token[0]), *b = svct_dial(dd.port, dd.token[1]);
    ragkv_conn *corpus = svct_dial(dd.port, dd.token[2]), *adm = svct_dial(dd.port, dd.adm);
    int32_t c1[NC], c2[NC], q[NQ], mine[NC];
    prompt_of(51, c1, c2, q);
    svct_chunk_toks(mine, NC, 57); /* acme's own text, in no namespace's cache */
    put(corpus, c1);
    put(corpus, c2);
    cr_assert_eq(ragkv_admin_grant(adm, "corpus", "acme", 1), RK_OK, "%s", rk_error_msg());
    cr_assert_eq(ragkv_admin_grant(adm, "corpus", "globex", 1), RK_OK, "%s", rk_error_msg());
    /* acme: its own text, then C2 of the corpus: C2's variant would carry acme's text */
    const int32_t *leak[2] = {mine, c2};
    prefill_in(a, "corpus", leak, 2, q, 4, NULL);
    cr_expect_geq(skipped(&dd, "denied"), 1, "not kept in the corpus");
    /* acme: its own cached chunk named by key, then C2: the key is acme's namespace's, so
     * C2's variant would carry acme's chunk: not kept in the corpus either */
    uint8_t kmine[32];
    cr_assert_eq(ragkv_put_chunk(a, mine, NC, kmine, NULL, NULL), RK_OK, "%s", rk_error_msg());
    long long denied = skipped(&dd, "denied");
    const uint8_t *bykey[2] = {kmine, NULL};
    prefill_keys(a, "corpus", leak, bykey, 2, q, 4, NULL);
    cr_expect_eq(skipped(&dd, "denied"), denied + 1, "acme's own chunk before C2");
    cr_expect_eq(svct_metric(dd.hport, "craft_variants_captured_total"), 0);
    /* acme: C1, C2 of the corpus: C2's variant is the corpus's, stored by it */
    const int32_t *both[2] = {c1, c2};
    uint32_t first = prefill_in(a, "corpus", both, 2, q, 4, NULL);
    wait_captures(&dd, 1);
    cr_assert_eq(svct_metric(dd.hport, "craft_variants_captured_total"), 1, "C2 after C1, in the corpus");
    /* globex, granted the corpus, finds and uses it: only BOS and the query are recomputed */
    uint32_t again = prefill_in(b, "corpus", both, 2, q, 4, NULL);
    cr_expect_lt(again, first, "%u vs %u", again, first);
    cr_expect_eq(again, 1 + NQ);
    cr_expect_eq(svct_metric(dd.hport, "craft_variants_used_total"), 1);
    /* the variant is the corpus's chunk: charged to it, not to the tenant whose prompt made it */
    ragkv_tenant_stats ts;
    cr_assert_eq(ragkv_admin_tenant_stats(adm, "corpus", &ts), RK_OK, "%s", rk_error_msg());
    cr_expect_eq(ts.chunks, 3, "C1, C2 and C2's variant");
    cr_assert_eq(ragkv_admin_tenant_stats(adm, "acme", &ts), RK_OK, "%s", rk_error_msg());
    cr_expect_eq(ts.chunks, 1, "acme's own chunk, and no variant");
    ragkv_close(a);
    ragkv_close(b);
    ragkv_close(corpus);
    ragkv_close(adm);
    svct_daemon_down(&dd);
}

/* ---- captures on a busy daemon ------------------------------------------------------------ */

Test(craft, capture_due_rule)
{
    const uint64_t ms = 1000000ull, W = 100 * ms;
    cr_expect(svc_craft_due(true, 5 * ms, 5 * ms, 0, 0), "idle: at once, whatever the wait");
    cr_expect(svc_craft_due(true, 5 * ms, 5 * ms, 4 * ms, W));
    cr_expect_not(svc_craft_due(false, 10000 * ms, 0 * ms, 0, 0), "busy, max wait 0: never");
    cr_expect_not(svc_craft_due(false, 50 * ms + 99 * ms, 50 * ms, 0, W), "busy: not before it waited W");
    cr_expect(svc_craft_due(false, 50 * ms + W, 50 * ms, 0, W), "busy: once it waited W");
    cr_expect_not(svc_craft_due(false, 1000 * ms, 50 * ms, 950 * ms, W), "busy: one per W (the last 50 ms ago)");
    cr_expect(svc_craft_due(false, 1000 * ms, 50 * ms, 900 * ms, W), "busy: the last W ago");
}

/* Load: a connection that runs GENERATE (full prefill, sampled, 150-249 tokens, the length
 * varying with the connection and the round so that the connections do not finish together)
 * back to back until told to stop; done counts the generations finished. */
struct busy_load {
    int port;
    const char *token;
    int seed;
    pthread_mutex_t *mu;
    pthread_cond_t *cv;
    bool *stop;
    int done;
    rk_status st;
};

static void *busy_main(void *arg)
{
    struct busy_load *l = arg;
    ragkv_conn *c = svct_dial(l->port, l->token);
    int32_t q[8];
    svct_chunk_toks(q, 8, 500 + l->seed);
    for (uint64_t i = 0;; i++) {
        pthread_mutex_lock(l->mu);
        bool stop = *l->stop;
        pthread_mutex_unlock(l->mu);
        if (stop)
            break;
        uint32_t len = 150 + (uint32_t)((l->seed * 37 + (int)(i % 1000) * 53) % 100);
        ragkv_gen_params p = {.query = q, .nquery = 8, .max_tokens = len, .temperature = 1.0f,
                              .seed = (uint64_t)l->seed * 1000 + i};
        rk_status st = ragkv_generate(c, &p, NULL, NULL, NULL);
        pthread_mutex_lock(l->mu);
        if (st != RK_OK && l->st == RK_OK)
            l->st = st;
        l->done++;
        pthread_cond_broadcast(l->cv);
        pthread_mutex_unlock(l->mu);
        if (st != RK_OK)
            break;
    }
    ragkv_close(c);
    return NULL;
}

/* Under 5 connections of back-to-back generations (max-batch 4: one more than the batch, so a
 * request is nearly always queued, and lengths that differ, so that the batch does not finish
 * all at once: the executor is busy from the moment the first arrives until the load stops;
 * with 4 connections of equal lengths it could fall idle between two batches and run the
 * capture there, a flake seen under load on 2026-12-08), a cachecraft prompt's capture runs
 * while busy once it has waited max_wait_ms (1): craft_captures_forced_total; with 0, no
 * capture runs until the load stops, and then it does. */
static void busy_capture(const char *max_wait_ms)
{
    static const char *extra[] = {"--model", NULL, "--max-batch", "4", "--craft-capture-max-wait-ms", NULL,
                                  "--craft-capture-min-uses", "1", NULL};
    extra[1] = svct_need_model();
    extra[5] = max_wait_ms;
    bool forced_ok = strcmp(max_wait_ms, "0") != 0;
    svct_daemon dd;
    int32_t c1[NC], c2[NC], q[NQ];
    ragkv_conn *c = up_with_pair(&dd, extra, 61, c1, c2, q);

    enum { NL = 5 };
    pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
    bool stop = false;
    struct busy_load l[NL];
    pthread_t th[NL];
    for (int i = 0; i < NL; i++) {
        l[i] = (struct busy_load){.port = dd.port, .token = dd.token[0], .seed = i + 1, .mu = &mu, .cv = &cv,
                                  .stop = &stop, .st = RK_OK};
        cr_assert_eq(pthread_create(&th[i], NULL, busy_main, &l[i]), 0);
    }
    /* the load is running: every connection has finished a generation */
    pthread_mutex_lock(&mu);
    for (int i = 0; i < NL; i++)
        while (l[i].done == 0 && l[i].st == RK_OK)
            pthread_cond_wait(&cv, &mu);
    pthread_mutex_unlock(&mu);

    prefill(c, c1, c2, q, 4, NULL);
    if (forced_ok) {
        wait_captures(&dd, 1); /* while the load runs */
        cr_expect_geq(svct_metric(dd.hport, "craft_captures_forced_total"), 1, "the capture ran while busy");
    } else {
        /* the load keeps the executor busy for a few more generations per connection (none of
         * them may start the capture: checked below) */
        pthread_mutex_lock(&mu);
        int target[NL];
        for (int i = 0; i < NL; i++)
            target[i] = l[i].done + 3;
        for (int i = 0; i < NL; i++)
            while (l[i].done < target[i] && l[i].st == RK_OK)
                pthread_cond_wait(&cv, &mu);
        pthread_mutex_unlock(&mu);
    }
    pthread_mutex_lock(&mu);
    stop = true;
    pthread_mutex_unlock(&mu);
    for (int i = 0; i < NL; i++) {
        pthread_join(th[i], NULL);
        cr_expect_eq(l[i].st, RK_OK, "load %d: %s", i, rk_status_name(l[i].st));
    }
    if (!forced_ok) {
        cr_expect_eq(svct_metric(dd.hport, "craft_captures_forced_total"), 0, "max wait 0: never while busy");
        wait_captures(&dd, 1); /* idle now: it runs */
    }
    cr_expect_eq(svct_metric(dd.hport, "craft_variants_captured_total"), 1, "C2's variant after C1 stored");
    /* and it is used */
    prefill(c, c1, c2, q, 4, NULL);
    cr_expect_eq(svct_metric(dd.hport, "craft_variants_used_total"), 1);
    ragkv_close(c);
    svct_daemon_down(&dd);
}

Test(craft, busy_daemon_captures_after_max_wait) { busy_capture("1"); }
Test(craft, busy_daemon_with_max_wait_0_captures_when_idle) { busy_capture("0"); }

/* The default craft-capture-min-uses (2): the first prompt of [C1, C2] captures nothing (C2
 * after C1 counted rare), the second captures, the third uses the variant. */
Test(craft, default_captures_a_pair_at_its_second_prompt)
{
    static const char *extra[] = {"--model", NULL, "--max-batch", "4", NULL};
    extra[1] = svct_need_model();
    svct_daemon dd;
    int32_t c1[NC], c2[NC], q[NQ];
    ragkv_conn *c = up_with_pair(&dd, extra, 71, c1, c2, q);
    uint32_t r1 = prefill(c, c1, c2, q, 4, NULL);
    cr_expect_eq(skipped(&dd, "rare"), 1, "C2 after C1, first seen: not captured");
    prefill(c, c1, c2, q, 4, NULL);
    wait_captures(&dd, 1);
    cr_expect_eq(svct_metric(dd.hport, "craft_captures_total"), 1, "one capture job: the second prompt's");
    cr_expect_eq(skipped(&dd, "rare"), 1);
    cr_expect_eq(svct_metric(dd.hport, "craft_variants_captured_total"), 1);
    uint32_t r3 = prefill(c, c1, c2, q, 4, NULL);
    cr_expect_eq(svct_metric(dd.hport, "craft_variants_used_total"), 1, "the third uses it");
    cr_expect_lt(r3, r1, "and recomputes less (%u < %u)", r3, r1);
    ragkv_close(c);
    svct_daemon_down(&dd);
}
