/* GENERATE's chunk metadata on the workers' event loops (redis-async): the prompt's chunks, by
 * key and by content, are resolved in one lookup on the loop, their blobs read on the I/O pool,
 * and the executor only decodes — so a Redis that stops answering holds up the generations that
 * need it and no others. Also: the answers are the synchronous path's (hits, misses, another
 * tenant's key, an unknown key), a chunk computed in context is cached afterwards, the device
 * tier serves the second use, GET_KV's record is resolved on the loop, and PUT_CHUNK's lookup
 * and commit run there too. (One test per
 * file: see tests/service/CMakeLists.txt.) */
#include <criterion/criterion.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "ragkv/alloc.h"
#include "ragkv/client.h"
#include "ragkv/clock.h"
#include "svc_testlib.h"
#include "testutil.h"

static const int32_t query[4] = {5, 6, 7, 8};

static rk_status gen(ragkv_conn *c, const ragkv_segment *segs, uint32_t nsegs, svct_tokens *out,
                     ragkv_gen_stats *st)
{
    ragkv_gen_params p = {.segs = segs, .nsegs = nsegs, .query = query, .nquery = 4, .blend = 3, .recompute = 0.15f,
                          .max_tokens = 12};
    memset(out, 0, sizeof(*out));
    return ragkv_generate(c, &p, svct_collect_tokens, out, st);
}

/* A GENERATE on its own thread (it waits on a stopped Redis). */
typedef struct bg_gen {
    ragkv_conn *c;
    const ragkv_segment *segs;
    uint32_t nsegs;
    svct_tokens out;
    ragkv_gen_stats st;
    rk_status rc;
    pthread_mutex_t mu;
    bool done;
} bg_gen;

static void *bg_run(void *arg)
{
    bg_gen *b = arg;
    rk_status rc = gen(b->c, b->segs, b->nsegs, &b->out, &b->st);
    pthread_mutex_lock(&b->mu);
    b->rc = rc;
    b->done = true;
    pthread_mutex_unlock(&b->mu);
    return NULL;
}

static bool bg_done(bg_gen *b)
{
    pthread_mutex_lock(&b->mu);
    bool d = b->done;
    pthread_mutex_unlock(&b->mu);
    return d;
}

/* Poll /metrics until the loops have n metadata operations in flight (at most 20 s). */
static bool wait_inflight(int hport, long long n)
{
    uint64_t t0 = rk_now_ns();
    while (svct_metric(hport, "meta_async_inflight") != n) {
        if (rk_now_ns() - t0 > 20000000000ull)
            return false;
        struct timespec ts = {0, 5000000};
        nanosleep(&ts, NULL); /* polling interval */
    }
    return true;
}

Test(redis_meta_gen, generate_resolves_chunks_on_the_loop, .timeout = 180)
{
    const char *model = svct_need_model();
    char tmp[256], redis[64];
    int rport;
    rk_test_proc r;
    svct_private_redis(tmp, &r, &rport, redis);
    const char *extra[] = {"--model", model, "--redis", redis, "--device-budget-mb", "8", NULL};
    svct_daemon dd;
    svct_daemon_up(&dd, "ragkvd", extra, "acme", "globex", NULL);
    ragkv_conn *a = svct_dial(dd.port, dd.token[0]), *b = svct_dial(dd.port, dd.token[1]);

    /* PUT_CHUNK: looked up and committed on the loop */
    int32_t t1[30], t2[30], t3[30];
    svct_chunk_toks(t1, 30, 11);
    svct_chunk_toks(t2, 30, 12);
    svct_chunk_toks(t3, 30, 13);
    long long lk0 = svct_meta_metric(dd.hport, "ops", "lookup"), in0 = svct_meta_metric(dd.hport, "ops", "insert");
    uint8_t k1[32], kb[32];
    int created = -1;
    cr_assert_eq(ragkv_put_chunk(a, t1, 30, k1, &created, NULL), RK_OK, "%s", rk_error_msg());
    cr_expect_eq(created, 1);
    cr_expect_eq(svct_meta_metric(dd.hport, "ops", "lookup"), lk0 + 1, "PUT_CHUNK looked the chunk up on the loop");
    cr_expect_eq(svct_meta_metric(dd.hport, "ops", "insert"), in0 + 1, "and committed it there");
    cr_assert_eq(ragkv_put_chunk(a, t1, 30, k1, &created, NULL), RK_OK);
    cr_expect_eq(created, 0, "stored already: nothing computed, nothing committed");
    cr_expect_eq(svct_meta_metric(dd.hport, "ops", "insert"), in0 + 1);
    cr_assert_eq(ragkv_put_chunk(b, t3, 30, kb, NULL, NULL), RK_OK, "%s", rk_error_msg());

    /* GET_KV: the record resolved on the loop, the blob read on the pool */
    long long lk = svct_meta_metric(dd.hport, "ops", "lookup");
    uint8_t *cont = NULL, *cont2 = NULL;
    uint32_t clen = 0, clen2 = 0;
    cr_assert_eq(ragkv_get_kv(a, k1, NULL, 0, &cont, &clen), RK_OK, "%s", rk_error_msg());
    cr_expect_eq(svct_meta_metric(dd.hport, "ops", "lookup"), lk + 1, "GET_KV resolved on the loop");
    cr_assert_eq(ragkv_get_kv(a, NULL, t1, 30, &cont2, &clen2), RK_OK, "by tokens: %s", rk_error_msg());
    cr_expect(clen > 0 && clen == clen2 && memcmp(cont, cont2, clen) == 0, "the same container by key and by tokens");
    rk_free(cont);
    rk_free(cont2);
    cr_expect_eq(ragkv_get_kv(a, kb, NULL, 0, &cont, &clen), RK_ERR_NOT_FOUND, "globex's chunk is not acme's");
    cr_expect_eq(ragkv_get_kv(b, k1, NULL, 0, &cont, &clen), RK_ERR_NOT_FOUND, "nor acme's globex's");

    /* by key (cached) + by content (not cached): one lookup on the loop for both */
    ragkv_segment segs[2] = {{.key = k1}, {.tokens = t2, .ntokens = 30}};
    svct_tokens first, again;
    ragkv_gen_stats st;
    long long lk1 = svct_meta_metric(dd.hport, "ops", "lookup");
    cr_assert_eq(gen(a, segs, 2, &first, &st), RK_OK, "%s", rk_error_msg());
    cr_expect_eq(st.chunk_hits, 1);
    cr_expect_eq(st.chunk_misses, 1, "t2 was not cached");
    cr_expect_eq(first.n, 12);
    cr_expect_eq(svct_meta_metric(dd.hport, "ops", "lookup"), lk1 + 1, "one lookup on the loop for the prompt");
    /* t2 was cached when the generation ended (the pool stored it before the answer) */
    uint8_t k2[32];
    cr_assert_eq(ragkv_put_chunk(a, t2, 30, k2, &created, NULL), RK_OK);
    cr_expect_eq(created, 0, "the chunk computed in context was cached");
    cr_assert_eq(gen(a, segs, 2, &again, &st), RK_OK, "%s", rk_error_msg());
    cr_expect_eq(st.chunk_hits, 2);
    cr_expect_eq(st.chunk_misses, 0);
    long long dh = svct_metric(dd.hport, "store_device_hits_total");
    cr_assert_eq(gen(a, segs, 2, &again, &st), RK_OK, "%s", rk_error_msg());
    cr_expect_eq(svct_metric(dd.hport, "store_device_hits_total"), dh + 2, "the third use: both from the device tier");
    cr_expect_eq(st.chunk_hits, 2);

    /* another tenant's key and an unknown key: no such chunk, either way */
    ragkv_segment other[1] = {{.key = kb}};
    cr_expect_eq(gen(a, other, 1, &again, &st), RK_ERR_NOT_FOUND, "globex's chunk is not acme's: %s", rk_error_msg());
    uint8_t unknown[32];
    memset(unknown, 0x33, sizeof(unknown));
    other[0].key = unknown;
    cr_expect_eq(gen(a, other, 1, &again, &st), RK_ERR_NOT_FOUND);
    other[0].key = kb;
    cr_expect_eq(gen(b, other, 1, &again, &st), RK_OK, "globex reads its own: %s", rk_error_msg());
    cr_expect_eq(svct_meta_metric(dd.hport, "errors", "lookup"), 0);

    /* Redis stopped: a GENERATE that needs chunk metadata waits on the loop; one that needs
     * none is decoded meanwhile (the executor never waits on Redis) */
    int32_t t4[30];
    svct_chunk_toks(t4, 30, 14);
    ragkv_segment waits[1] = {{.tokens = t4, .ntokens = 30}};
    bg_gen bg = {.c = svct_dial(dd.port, dd.token[0]), .segs = waits, .nsegs = 1};
    pthread_mutex_init(&bg.mu, NULL);
    cr_assert_eq(kill(r.pid, SIGSTOP), 0);
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, bg_run, &bg), 0);
    /* (no assertion until Redis runs again: a failed one would leave it stopped) */
    bool parked = wait_inflight(dd.hport, 1);
    svct_tokens plain = {0};
    rk_status prc = parked ? gen(b, NULL, 0, &plain, &st) : RK_ERR_INTERNAL;
    bool waiting = !bg_done(&bg);
    kill(r.pid, SIGCONT);
    pthread_join(th, NULL);
    cr_expect(parked, "the generation's lookup was never seen in flight on a loop");
    cr_expect_eq(prc, RK_OK, "a prompt without chunks: %s", rk_status_name(prc));
    cr_expect_eq(plain.n, 12);
    cr_expect(waiting, "the generation that needs Redis was still waiting for it");
    cr_expect_eq(bg.rc, RK_OK, "answered once Redis is back: %s", rk_status_name(bg.rc));
    cr_expect_eq(bg.out.n, 12);
    cr_expect_eq(bg.st.chunk_misses, 1);
    pthread_mutex_destroy(&bg.mu);
    ragkv_close(bg.c);

    ragkv_close(a);
    ragkv_close(b);
    svct_daemon_down(&dd);
    cr_expect_eq(rk_test_stop(&r, SIGTERM, 10000), 0);
    rk_test_rmrf(tmp);
}

/* Without a device tier, chunks the pool read reach the assembly still compressed and are
 * decoded one layer ahead of the layer computed (blend's loader); the answers are, token for
 * token, the ones a daemon with embedded metadata gives (it decodes every chunk whole before
 * assembling), in CacheBlend, naive and Cache-Craft, for chunks named by key and by content. */
Test(redis_meta_gen, compressed_chunks_load_layer_by_layer, .timeout = 180)
{
    const char *model = svct_need_model();
    char tmp[256], redis[64];
    int rport;
    rk_test_proc r;
    svct_private_redis(tmp, &r, &rport, redis);
    const char *ex_redis[] = {"--model", model, "--redis", redis, "--layer-loading", "on", NULL};
    const char *ex_embedded[] = {"--model", model, NULL};
    svct_daemon d1, d2;
    svct_daemon_up(&d1, "ragkvd", ex_redis, "acme", NULL);
    svct_daemon_up(&d2, "ragkvd", ex_embedded, "acme", NULL);
    ragkv_conn *a1 = svct_dial(d1.port, d1.token[0]), *a2 = svct_dial(d2.port, d2.token[0]);
    int32_t t[3][30];
    uint8_t k1[3][32], k2[3][32];
    for (int i = 0; i < 3; i++) {
        svct_chunk_toks(t[i], 30, 21 + i);
        cr_assert_eq(ragkv_put_chunk(a1, t[i], 30, k1[i], NULL, NULL), RK_OK, "%s", rk_error_msg());
        cr_assert_eq(ragkv_put_chunk(a2, t[i], 30, k2[i], NULL, NULL), RK_OK, "%s", rk_error_msg());
        cr_expect(memcmp(k1[i], k2[i], 32) == 0, "the same chunk key on both daemons");
    }
    long long l1 = svct_metric(d1.hport, "chunk_layer_loads_total");
    ragkv_segment segs[3] = {{.key = k1[0]}, {.tokens = t[1], .ntokens = 30}, {.key = k1[2]}};
    const uint8_t modes[3] = {3, 2, 4}; /* cacheblend, naive, cachecraft (wire numbers) */
    for (int m = 0; m < 3; m++) {
        ragkv_gen_params p = {.segs = segs, .nsegs = 3, .query = query, .nquery = 4, .blend = modes[m],
                              .recompute = 0.15f, .max_tokens = 12};
        svct_tokens o1 = {0}, o2 = {0};
        ragkv_gen_stats s1, s2;
        cr_assert_eq(ragkv_generate(a1, &p, svct_collect_tokens, &o1, &s1), RK_OK, "%s", rk_error_msg());
        cr_assert_eq(ragkv_generate(a2, &p, svct_collect_tokens, &o2, &s2), RK_OK, "%s", rk_error_msg());
        cr_expect_eq(s1.chunk_hits, 3, "mode %d: every chunk from the cache", modes[m]);
        cr_expect_eq(s2.chunk_hits, 3);
        cr_expect_eq(s1.recomputed, s2.recomputed, "mode %d: the same rows recomputed", modes[m]);
        cr_expect_eq(o1.n, 12);
        cr_expect(o1.n == o2.n && memcmp(o1.toks, o2.toks, o1.n * sizeof(int32_t)) == 0,
                  "mode %d: the layer-by-layer answer is the whole-decode answer", modes[m]);
    }
    cr_expect_eq(svct_metric(d1.hport, "chunk_layer_loads_total"), l1 + 9, "3 chunks x 3 generations, layer by layer");
    cr_expect_eq(svct_metric(d2.hport, "chunk_layer_loads_total"), 0, "embedded metadata: decoded whole");
    ragkv_close(a1);
    ragkv_close(a2);
    svct_daemon_down(&d1);
    svct_daemon_down(&d2);
    cr_expect_eq(rk_test_stop(&r, SIGTERM, 10000), 0);
    rk_test_rmrf(tmp);
}
