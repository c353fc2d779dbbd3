/* Many writers at once: of one chunk (one record wins, no orphan remains), and of one tenant
 * against its quota (admission is exact: never one chunk or byte over, usage exact). Runs on
 * the embedded (RocksDB) and Redis metadata stores. */
#include <pthread.h>

#include "cc_testlib.h"

enum { NTHREADS = 8 };

typedef struct job {
    cc_store *s;
    int id;
    int nputs;
    int ok, quota, other;
    pthread_barrier_t *start;
} job;

static void *same_chunk(void *arg)
{
    job *j = arg;
    int32_t toks[4] = {1, 2, 3, 4};
    uint8_t blob[4096];
    cct_fill(blob, sizeof(blob), 1000 + (uint64_t)j->id); /* a different encoding per writer */
    cc_put_args a = {.model = "m", .tokens = toks, .ntokens = 4, .blob = blob, .blob_len = sizeof(blob), .cost = 1};
    pthread_barrier_wait(j->start);
    for (int i = 0; i < j->nputs; i++) {
        rk_status st = cc_store_put(j->s, "t", &a, NULL);
        if (st == RK_OK)
            j->ok++;
        else
            j->other++;
    }
    return NULL;
}

static void *many_chunks(void *arg)
{
    job *j = arg;
    pthread_barrier_wait(j->start);
    for (int i = 0; i < j->nputs; i++) {
        rk_status st = cct_put(j->s, "t", (uint64_t)(j->id * 1000 + i), 1000, 1.0 + i, NULL);
        if (st == RK_OK)
            j->ok++;
        else if (st == RK_ERR_QUOTA)
            j->quota++;
        else
            j->other++;
    }
    return NULL;
}

static int count_cb(void *arg, const uint8_t *k, size_t kl, const uint8_t *v, size_t vl)
{
    ++*(int *)arg;
    return 0;
}

static int blob_count(cc_store *s)
{
    int n = 0;
    cr_assert_eq(cc_blobstore_scan(cc_store_blobstore(s), CC_SPACE_CHUNKS, count_cb, &n), RK_OK);
    return n;
}

static void run(cc_store *s, void *(*fn)(void *), int nputs, job *jobs)
{
    pthread_t th[NTHREADS];
    pthread_barrier_t bar;
    pthread_barrier_init(&bar, NULL, NTHREADS);
    for (int i = 0; i < NTHREADS; i++) {
        jobs[i] = (job){.s = s, .id = i, .nputs = nputs, .start = &bar};
        pthread_create(&th[i], NULL, fn, &jobs[i]);
    }
    for (int i = 0; i < NTHREADS; i++)
        pthread_join(th[i], NULL);
    pthread_barrier_destroy(&bar);
}

static void t_one_chunk(cct_ms_kind mk)
{
    cct_skip_if_unavailable(mk);
    cct_env e;
    cct_env_init(&e, CCT_BS_ROCKS, mk);
    cc_store *s = cct_open_store(&e, NULL);
    cct_make_tenant(s, "t", 0, 0, CC_QUOTA_REJECT);
    job jobs[NTHREADS];
    run(s, same_chunk, 3, jobs);
    for (int i = 0; i < NTHREADS; i++)
        cr_expect(jobs[i].ok == 3 && jobs[i].other == 0, "writer %d: %d ok %d failed", i, jobs[i].ok, jobs[i].other);
    cc_tenant_info ti;
    cr_assert_eq(cc_store_tenant_usage(s, "t", &ti), RK_OK);
    cr_expect(ti.chunks == 1 && ti.bytes == 4096, "one record: %llu chunks", (unsigned long long)ti.chunks);
    /* what is served is exactly one writer's blob, checksum-valid */
    int32_t toks[4] = {1, 2, 3, 4};
    cc_key k;
    cc_key_compute("m", "t", toks, 4, &k);
    for (int pass = 0; pass < 2; pass++) {
        cc_buf *b;
        cr_assert_eq(cc_store_get(s, "t", &k, &b, NULL), RK_OK);
        int match = -1;
        uint8_t want[4096];
        for (int i = 0; i < NTHREADS; i++) {
            cct_fill(want, sizeof(want), 1000 + (uint64_t)i);
            if (b->len == sizeof(want) && memcmp(b->data, want, sizeof(want)) == 0)
                match = i;
        }
        cr_expect(match >= 0, "the served blob is one writer's");
        cc_buf_release(b);
        cc_store_drop_ram(s);
    }
    uint64_t removed;
    cr_assert_eq(cc_store_gc(s, &removed), RK_OK);
    cr_expect_eq(blob_count(s), 1, "losers' blobs are gone");
    cc_store_close(s);
    cct_env_fini(&e);
}

static void t_quota_race(cct_ms_kind mk, cc_quota_policy pol)
{
    cct_skip_if_unavailable(mk);
    cct_env e;
    cct_env_init(&e, CCT_BS_ROCKS, mk);
    cc_config cfg = cc_config_default();
    cfg.ram_budget_bytes = 0;
    cc_store *s = cct_open_store(&e, &cfg);
    cct_make_tenant(s, "t", 25000, 23, pol); /* bytes bind at 25, chunks at 23 */
    cct_make_tenant(s, "bystander", 0, 0, CC_QUOTA_REJECT);
    cc_key bk;
    cr_assert_eq(cct_put(s, "bystander", 999999, 1000, 0.0001, &bk), RK_OK);
    job jobs[NTHREADS];
    run(s, many_chunks, 10, jobs);
    int ok = 0, quota = 0, other = 0;
    for (int i = 0; i < NTHREADS; i++) {
        ok += jobs[i].ok;
        quota += jobs[i].quota;
        other += jobs[i].other;
    }
    cr_expect_eq(other, 0);
    cc_tenant_info ti;
    cr_assert_eq(cc_store_tenant_usage(s, "t", &ti), RK_OK);
    if (pol == CC_QUOTA_REJECT) {
        cr_expect_eq(ok, 23, "exactly the quota is admitted (%d)", ok);
        cr_expect_eq(quota, 80 - 23);
    } else {
        cr_expect_eq(ok, 80, "evict policy admits every put");
        cr_expect_eq(quota, 0);
    }
    cr_expect(ti.chunks == 23 && ti.bytes == 23000, "usage %llu chunks %llu bytes", (unsigned long long)ti.chunks,
              (unsigned long long)ti.bytes);
    uint64_t removed;
    cr_assert_eq(cc_store_gc(s, &removed), RK_OK);
    cr_expect_eq(removed, 0, "no orphan blobs were left behind");
    cr_expect_eq(blob_count(s), 24, "23 chunks of t + the bystander's");
    cct_expect_blob(s, "bystander", &bk, 999999, 1000);
    cc_store_close(s);
    cct_env_fini(&e);
}

Test(concurrency_embedded, writers_of_one_chunk) { t_one_chunk(CCT_EMB_ROCKS); }
Test(concurrency_embedded, quota_race_reject) { t_quota_race(CCT_EMB_ROCKS, CC_QUOTA_REJECT); }
Test(concurrency_embedded, quota_race_evict) { t_quota_race(CCT_EMB_ROCKS, CC_QUOTA_EVICT); }
Test(concurrency_redis, writers_of_one_chunk) { t_one_chunk(CCT_REDIS); }
Test(concurrency_redis, quota_race_reject) { t_quota_race(CCT_REDIS, CC_QUOTA_REJECT); }
Test(concurrency_redis, quota_race_evict) { t_quota_race(CCT_REDIS, CC_QUOTA_EVICT); }
