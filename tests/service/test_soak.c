/* Soak: a fixed number of mixed requests from 4 client threads (two tenants) against ragkvd
 * with Redis metadata, with one Redis kill (SIGKILL, restarted empty: rebuild) and one ragkvd
 * restart along the way. Never wrong bytes or another tenant's chunk; after warm-up the
 * daemon's RSS grows under 5% and its file descriptors stay flat; a final consistency check
 * (every chunk byte-identical, usage exact) passes; the daemon exits 0 (a sanitizer build
 * exits non-zero on any report or leak).
 * RAGKV_SOAK_REQUESTS sets the count: 20000 by default (make test, where RSS is only reported);
 * `make soak` runs 1e6 (RSS asserted from SOAK_LONG requests on). */
#include <criterion/criterion.h>
#include <dirent.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ragkv/alloc.h"
#include "ragkv/bytes.h"
#include "ragkv/client.h"
#include "ragkv/clock.h"
#include "ragkv/hash.h"
#include "svc_testlib.h"
#include "testutil.h"

#define NCHUNK 16  /* chunks per tenant */
#define NTHREAD 4  /* client threads: 0, 2 are acme; 1, 3 globex */
#define NTOK 24
#define SOAK_LONG 200000 /* runs at least this long also assert the RSS bound */

typedef struct tenant {
    char name[16], token[256];
    uint8_t keys[NCHUNK][32];
    uint64_t sums[NCHUNK]; /* xxh3 of each container as first read back */
} tenant;

static tenant tn[2];
static atomic_int cur_port;       /* the daemon's protocol port (changes on restart) */
static atomic_long done;          /* requests answered, all threads */
static atomic_long errors;        /* requests answered with an error (during the faults) */
static atomic_long wrong, leaks;  /* never: wrong bytes, another tenant's chunk visible */
static atomic_int stop;
static long total;

static void tokens_of(int t, int i, int32_t *out)
{
    for (int j = 0; j < NTOK; j++)
        out[j] = 3 + (t * 977 + i * 131 + j * 29) % 500;
}

static ragkv_conn *connect_as(const char *token, bool load)
{
    uint64_t t0 = rk_now_ns();
    while (!(load && atomic_load(&stop)) && rk_now_ns() - t0 < 60000000000ull) {
        ragkv_conn *c;
        if (ragkv_connect("127.0.0.1", atomic_load(&cur_port), 10000, &c) == RK_OK) {
            if (ragkv_auth(c, token, NULL, 0) == RK_OK)
                return c;
            ragkv_close(c);
        }
        struct timespec ts = {0, 20000000};
        nanosleep(&ts, NULL); /* the daemon is restarting: retry */
    }
    return NULL;
}

/* One mixed request number n for tenant t on c. Returns false when the connection is gone. */
static bool one_request(ragkv_conn *c, int t, long n)
{
    tenant *me = &tn[t], *other = &tn[1 - t];
    int i = (int)(n % NCHUNK), kind = (int)(n % 100);
    rk_status st;
    if (kind < 40) {
        st = ragkv_ping(c);
    } else if (kind < 65) { /* LOOKUP: three own keys and one of the other tenant's */
        uint8_t keys[4 * 32], present[4];
        for (int k = 0; k < 3; k++)
            memcpy(keys + 32 * k, me->keys[(i + k) % NCHUNK], 32);
        memcpy(keys + 96, other->keys[i], 32);
        if ((st = ragkv_lookup(c, keys, 4, present)) == RK_OK) {
            if (present[3])
                atomic_fetch_add(&leaks, 1);
            if (!present[0] || !present[1] || !present[2])
                atomic_fetch_add(&wrong, 1);
        }
    } else if (kind < 85) { /* GET_KV: the exact bytes, or an error; never other bytes */
        uint8_t *cont;
        uint32_t len;
        if ((st = ragkv_get_kv(c, me->keys[i], NULL, 0, &cont, &len)) == RK_OK) {
            if (rk_xxh3_64(cont, len) != me->sums[i])
                atomic_fetch_add(&wrong, 1);
            rk_free(cont);
        }
    } else if (kind < 95) {
        st = ragkv_call(c, RK_OP_STATS, NULL, 0, NULL, NULL);
    } else if (kind < 99) { /* PUT_CHUNK of a chunk it has: nothing new is stored */
        int32_t toks[NTOK];
        tokens_of(t, i, toks);
        uint8_t key[32];
        int created = -1;
        if ((st = ragkv_put_chunk(c, toks, NTOK, key, &created, NULL)) == RK_OK &&
            (created != 0 || memcmp(key, me->keys[i], 32) != 0))
            atomic_fetch_add(&wrong, 1);
    } else { /* a one-token generation over one of its chunks, brought as tokens */
        int32_t toks[NTOK];
        tokens_of(t, i, toks);
        const int32_t q[] = {403, 407};
        ragkv_segment seg = {.tokens = toks, .ntokens = NTOK};
        ragkv_gen_params p = {.segs = &seg, .nsegs = 1, .query = q, .nquery = 2, .blend = 3, .recompute = 0.15f,
                              .max_tokens = 1};
        st = ragkv_generate(c, &p, NULL, NULL, NULL);
    }
    if (st != RK_OK)
        atomic_fetch_add(&errors, 1);
    atomic_fetch_add(&done, 1);
    return st != RK_ERR_UNAVAILABLE || ragkv_ping(c) == RK_OK;
}

static void *client_main(void *arg)
{
    int id = (int)(intptr_t)arg, t = id % 2;
    ragkv_conn *c = NULL;
    for (long n = id; !atomic_load(&stop) && atomic_load(&done) < total; n += NTHREAD) {
        if (!c && !(c = connect_as(tn[t].token, true)))
            break;
        if (!one_request(c, t, n)) {
            ragkv_close(c);
            c = NULL;
        }
    }
    ragkv_close(c);
    return NULL;
}

/* Resident set (kB) and open file descriptors of process pid. */
static void proc_usage(pid_t pid, long *rss_kb, int *fds)
{
    char path[64], line[256];
    snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    *rss_kb = -1;
    while (f && fgets(line, sizeof(line), f))
        if (sscanf(line, "VmRSS: %ld", rss_kb) == 1)
            break;
    if (f)
        fclose(f);
    snprintf(path, sizeof(path), "/proc/%d/fd", (int)pid);
    DIR *d = opendir(path);
    *fds = 0;
    struct dirent *e;
    while (d && (e = readdir(d)))
        if (e->d_name[0] != '.')
            (*fds)++;
    if (d)
        closedir(d);
}

/* Wait (polling, bounded by the run's own pace) until `frac` of the requests are done. */
static void wait_progress(double frac)
{
    long target = (long)(frac * (double)total);
    while (atomic_load(&done) < target) {
        struct timespec ts = {0, 20000000};
        nanosleep(&ts, NULL);
    }
}

Test(soak, mixed_load_with_a_redis_kill_and_a_restart, .timeout = 3600)
{
    const char *model = rk_test_model_path("stories260K.bin");
    if (!model)
        cr_skip_test("skipped: no real model");
    if (!rk_test_redis_server_path())
        cr_skip_test("skipped: no redis-server");
#if defined(__SANITIZE_ADDRESS__)
    /* ASan's quarantine (256 MiB by default) holds freed memory back and would read as growth
     * for its first few hundred MiB; a small one fills during warm-up. */
    char asan[512];
    const char *prev = getenv("ASAN_OPTIONS");
    snprintf(asan, sizeof(asan), "%s%squarantine_size_mb=16", prev ? prev : "", prev && *prev ? ":" : "");
    setenv("ASAN_OPTIONS", asan, 1);
#endif
    const char *env = getenv("RAGKV_SOAK_REQUESTS");
    total = env && atol(env) > 0 ? atol(env) : 20000;
    char tmp[256], adm[256], redis[64];
    cr_assert_not_null(rk_test_tmpdir(tmp, sizeof(tmp)));
    int rport = rk_test_free_port();
    rk_test_proc r, d;
    cr_assert(rk_test_redis_server(&r, rport, tmp, 0));
    snprintf(redis, sizeof(redis), "127.0.0.1:%d", rport);
    const char *extra[] = {"--model", model, "--redis", redis, NULL};
    int port, hport;
    cr_assert(rk_test_daemon_start(tmp, extra, &d, &port, &hport));
    atomic_store(&cur_port, port);
    cr_assert(rk_test_admin_token(tmp, adm, sizeof(adm)));
    ragkv_conn *a;
    a = svct_dial(port, adm);
    for (int t = 0; t < 2; t++) {
        snprintf(tn[t].name, sizeof(tn[t].name), t ? "globex" : "acme");
        cr_assert_eq(ragkv_admin_tenant_create(a, tn[t].name, 0, 0, 0, tn[t].token, sizeof(tn[t].token)), RK_OK);
        ragkv_conn *c = connect_as(tn[t].token, false);
        cr_assert_not_null(c);
        for (int i = 0; i < NCHUNK; i++) {
            int32_t toks[NTOK];
            tokens_of(t, i, toks);
            cr_assert_eq(ragkv_put_chunk(c, toks, NTOK, tn[t].keys[i], NULL, NULL), RK_OK, "%s", rk_error_msg());
            tn[t].sums[i] = svct_kv_sum(c, tn[t].keys[i]);
        }
        ragkv_close(c);
    }
    ragkv_close(a);

    uint64_t t0 = rk_now_ns();
    pthread_t th[NTHREAD];
    for (int i = 0; i < NTHREAD; i++)
        cr_assert_eq(pthread_create(&th[i], NULL, client_main, (void *)(intptr_t)i), 0);
    /* 20%: Redis dies and comes back empty (the store rebuilds its metadata from RocksDB) */
    wait_progress(0.20);
    long err0 = atomic_load(&errors);
    cr_expect_eq(rk_test_stop(&r, SIGKILL, 10000), 128 + SIGKILL);
    cr_assert(rk_test_redis_server(&r, rport, tmp, 0), "redis-server restarted");
    /* 35%: ragkvd restarts (SIGTERM, then a new process on the same data) */
    wait_progress(0.35);
    int ex = rk_test_stop(&d, SIGTERM, 30000);
    cr_expect_eq(ex, 0, "clean exit under load (status %d)", ex);
    cr_assert(rk_test_daemon_start(tmp, extra, &d, &port, &hport), "restart");
    atomic_store(&cur_port, port);
    /* 50%: warmed up again; the baseline */
    wait_progress(0.50);
    long err1 = atomic_load(&errors);
    long rss0, rss1;
    int fd0, fd1;
    proc_usage(d.pid, &rss0, &fd0);
    wait_progress(1.0);
    proc_usage(d.pid, &rss1, &fd1);
    atomic_store(&stop, 1);
    for (int i = 0; i < NTHREAD; i++)
        pthread_join(th[i], NULL);
    double secs = (double)(rk_now_ns() - t0) / 1e9;
    long errs_late = atomic_load(&errors) - err1;
    cr_log_info("soak: %ld requests in %.1f s (%.0f/s), %ld errors (%ld before the faults, %ld in the second half); "
                "RSS %ld -> %ld kB (%+.2f%%), fds %d -> %d",
                atomic_load(&done), secs, atomic_load(&done) / secs, atomic_load(&errors), err0, errs_late, rss0,
                rss1, 100.0 * (double)(rss1 - rss0) / (double)rss0, fd0, fd1);
    cr_expect_eq(atomic_load(&wrong), 0, "never wrong bytes");
    cr_expect_eq(atomic_load(&leaks), 0, "never another tenant's chunk");
    cr_expect_eq(err0, 0, "no errors before the faults");
    cr_expect_eq(errs_late, 0, "no errors once recovered");
    if (total >= SOAK_LONG) /* a short run's allocator and ASan quarantine are still settling */
        cr_expect_lt((double)(rss1 - rss0), 0.05 * (double)rss0, "RSS grows under 5%% after warm-up");
    cr_expect_leq(fd1, fd0 + 1, "file descriptors flat");

    /* consistency: every chunk byte-identical, usage exact, health */
    for (int t = 0; t < 2; t++) {
        ragkv_conn *c = connect_as(tn[t].token, false);
        cr_assert_not_null(c);
        for (int i = 0; i < NCHUNK; i++) {
            cr_expect_eq(svct_kv_sum(c, tn[t].keys[i]), tn[t].sums[i], "%s chunk %d intact", tn[t].name, i);
        }
        ragkv_close(c);
    }
    a = svct_dial(port, adm);
    for (int t = 0; t < 2; t++) {
        uint64_t chunks = 0;
        cr_assert_eq(ragkv_admin_quota_get(a, tn[t].name, NULL, NULL, NULL, NULL, &chunks), RK_OK);
        cr_expect_eq(chunks, NCHUNK, "%s usage exact", tn[t].name);
    }
    ragkv_close(a);
    int code = 0;
    char *body = NULL;
    cr_expect_eq(ragkv_http_get("127.0.0.1", hport, "/healthz", 5000, &code, &body), RK_OK);
    cr_expect_eq(code, 200);
    rk_free(body);
    cr_expect_eq(rk_test_stop(&d, SIGTERM, 30000), 0, "clean exit (no sanitizer report)");
    cr_expect_eq(rk_test_stop(&r, SIGTERM, 10000), 0);
    rk_test_rmrf(tmp);
}
