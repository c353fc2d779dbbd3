/* Cache-Craft variants with the metadata in Redis and the prompt's chunks resolved on the
 * workers' event loops (redis-async): the variants are looked up by the I/O pool beside the
 * chunks' blobs, for chunks named by content and by key alike, captured after the first
 * request and used by the second (GENERATE, not only PREFILL_KV). (One test per file: see
 * tests/service/CMakeLists.txt.) */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include "ragkv/client.h"
#include "ragkv/clock.h"
#include "svc_testlib.h"
#include "testutil.h"

#define NC 32

static long long metric(const svct_daemon *dd, const char *name)
{
    return svct_metric(dd->hport, name);
}

Test(redis_craft, variants_through_the_async_metadata_path, .timeout = 180)
{
    svct_hflags f;
    const char *const *hf = svct_harness_flags(&f, "craft");
    const char *flags[10]; /* + capture at a pair's first prompt */
    int nf = 0;
    while (hf[nf] && nf < 6) {
        flags[nf] = hf[nf];
        nf++;
    }
    flags[nf++] = "--craft-capture-min-uses";
    flags[nf++] = "1";
    flags[nf] = NULL;
    svct_daemon dd;
    svct_daemon_up(&dd, "ragkvd", flags, "acme", NULL);
    ragkv_conn *c = svct_dial(dd.port, dd.token[0]);
    int32_t c1[NC], c2[NC], c3[NC];
    svct_chunk_toks(c1, NC, 51);
    svct_chunk_toks(c2, NC, 52);
    svct_chunk_toks(c3, NC, 53);
    uint8_t k1[32], k2[32], k3[32];
    cr_assert_eq(ragkv_put_chunk(c, c1, NC, k1, NULL, NULL), RK_OK, "%s", rk_error_msg());
    cr_assert_eq(ragkv_put_chunk(c, c2, NC, k2, NULL, NULL), RK_OK, "%s", rk_error_msg());
    cr_assert_eq(ragkv_put_chunk(c, c3, NC, k3, NULL, NULL), RK_OK, "%s", rk_error_msg());
    /* C1 by content, C2 and C3 by key */
    ragkv_segment segs[3] = {{.tokens = c1, .ntokens = NC}, {.key = k2}, {.key = k3}};
    const int32_t q[3] = {9, 10, 11};
    ragkv_gen_params p = {.segs = segs, .nsegs = 3, .query = q, .nquery = 3, .blend = 4, .max_tokens = 6};
    svct_tokens t1, t2;
    ragkv_gen_stats s1, s2;
    long long lookups = svct_meta_metric(dd.hport, "ops", "lookup");
    memset(&t1, 0, sizeof(t1));
    cr_assert_eq(ragkv_generate(c, &p, svct_collect_tokens, &t1, &s1), RK_OK, "%s", rk_error_msg());
    cr_expect_gt(svct_meta_metric(dd.hport, "ops", "lookup"), lookups, "resolved on the loop");
    cr_expect_eq(s1.chunk_hits, 3);
    /* the capture: C2 after C1 and C3 after C2 */
    uint64_t end = rk_now_ns() + 60000000000ull;
    while (metric(&dd, "craft_captures_total") < 1 && rk_now_ns() < end)
        cr_assert_eq(ragkv_ping(c), RK_OK); /* a round trip, not a sleep */
    cr_assert_eq(metric(&dd, "craft_captures_total"), 1, "capture done");
    cr_expect_eq(metric(&dd, "craft_variants_captured_total"), 2, "two variants stored in Redis's metadata");
    memset(&t2, 0, sizeof(t2));
    cr_assert_eq(ragkv_generate(c, &p, svct_collect_tokens, &t2, &s2), RK_OK, "%s", rk_error_msg());
    cr_expect_eq(metric(&dd, "craft_variants_found_total"), 2, "found by the pool's lookups");
    cr_expect_eq(metric(&dd, "craft_variants_used_total"), 2, "both used");
    cr_expect_eq(s2.recomputed, 1 + 3, "only BOS and the query recomputed (%u; first request %u)", s2.recomputed,
                 s1.recomputed);
    cr_expect_lt(s2.recomputed, s1.recomputed);
    cr_expect_eq(t2.n, 6u);
    ragkv_close(c);
    svct_daemon_down(&dd);
}
