/*
 * Crash consistency of the write path through the daemon.
 *  - sigkill_during_writes: chunks are written pipelined, ragkvd is killed with SIGKILL right
 *    after the k-th acknowledgement (later requests in flight), then restarted. Every
 *    acknowledged chunk must be present and intact, every unacknowledged one absent or intact,
 *    and the tenant's usage must count exactly the chunks present. (Bounded for CI: 10 rounds;
 *    `make crashtest` runs 50 through RAGKV_CRASH_ROUNDS.)
 *  - crash_points: ragkvd-crashpoints (ragkv/crashpoint.h compiled in) dies by SIGKILL at each
 *    named point of the write path, between blob write, metadata commit and acknowledgement;
 *    after a restart each point leaves exactly the state docs/storage.md promises.
 */
#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ragkv/alloc.h"
#include "ragkv/chunk_key.h"
#include "ragkv/client.h"
#include "ragkv/codec.h"
#include "ragkv/hash.h"
#include "svc_testlib.h"
#include "testutil.h"

#define MAX_ROUNDS 200
#define PER_ROUND 8
#define NTOK_EV 20 /* tokens per chunk in the eviction case */

static void chunk_tokens(int32_t *t, int n, int id)
{
    for (int i = 0; i < n; i++)
        t[i] = 3 + (id * 131 + i * 17) % 500;
}

/* HELLO: the served model's id (part of every chunk key). */
static ragkv_server_info server_info(int port)
{
    ragkv_server_info info;
    ragkv_conn *c = svct_dial(port, NULL);
    cr_assert_eq(ragkv_hello(c, &info), RK_OK);
    ragkv_close(c);
    return info;
}

/* A daemon (`bin`) on the real model with tenant acme, in dd; skips without the model.
 * Returns its flags, for restarts. */
static const char *const *acme_daemon(svct_daemon *dd, const char *bin)
{
    static const char *extra[] = {"--model", NULL, NULL};
    if (!(extra[1] = rk_test_model_path("stories260K.bin")))
        cr_skip_test("skipped: no real model");
    svct_daemon_up(dd, bin, extra, "acme", NULL);
    return extra;
}

Test(crash, sigkill_during_writes_keeps_acknowledged_chunks, .timeout = 600)
{
    svct_daemon dd;
    const char *const *extra = acme_daemon(&dd, "ragkvd");
    const char *tok = dd.token[0], *adm = dd.adm, *tmp = dd.tmp;
    rk_test_proc d = dd.proc;
    int port = dd.port, hport;
    ragkv_server_info info = server_info(port);

    const char *env = getenv("RAGKV_CRASH_ROUNDS");
    int rounds = env && atoi(env) > 0 ? atoi(env) : 10;
    if (rounds > MAX_ROUNDS)
        rounds = MAX_ROUNDS;
    static cc_key keys[MAX_ROUNDS * PER_ROUND];
    static int acked[MAX_ROUNDS * PER_ROUND];
    int sent = 0;
    unsigned seed = 12345;
    for (int round = 0; round < rounds; round++) {
        ragkv_conn *c;
        cr_assert_eq(ragkv_connect("127.0.0.1", port, 20000, &c), RK_OK);
        cr_assert_eq(ragkv_auth(c, tok, NULL, 0), RK_OK);
        /* send PER_ROUND PUT_CHUNKs at once */
        int base = sent;
        for (int i = 0; i < PER_ROUND; i++) {
            int32_t t[40];
            chunk_tokens(t, 40, base + i);
            cr_assert_eq(cc_key_compute(info.model, "acme", t, 40, &keys[base + i]), RK_OK);
            rk_buf b = RK_BUF_INIT;
            rk_buf_put_str(&b, "");
            rk_buf_put_tokens(&b, t, 40);
            cr_assert_eq(ragkv_send_frame(c, RK_OP_PUT_CHUNK, (uint64_t)(base + i), b.data, (uint32_t)b.len), RK_OK);
            rk_buf_free(&b);
        }
        sent += PER_ROUND;
        /* kill right after the k-th acknowledgement: the rest are in flight */
        seed = seed * 1103515245u + 12345u;
        int k = (int)((seed >> 16) % PER_ROUND);
        for (int got = 0; got < k;) {
            rk_proto_hdr h;
            uint8_t *p;
            cr_assert_eq(ragkv_recv_frame(c, &h, &p), RK_OK);
            cr_assert_eq(h.status, RK_OK, "PUT_CHUNK %llu failed", (unsigned long long)h.request_id);
            cr_assert(h.length >= 32 && memcmp(p, keys[h.request_id].b, 32) == 0, "the acknowledged key is the expected one");
            acked[h.request_id] = 1;
            got++;
            rk_free(p);
        }
        cr_expect_eq(rk_test_stop(&d, SIGKILL, 10000), 128 + SIGKILL);
        ragkv_close(c);
        cr_assert(rk_test_daemon_start(tmp, extra, &d, &port, &hport), "restart after SIGKILL, round %d", round);
    }
    /* verify; the expected bytes of each chunk come from a tenant that never saw a crash: the
     * prefill is deterministic and the container does not name the tenant */
    ragkv_conn *ad = svct_dial(port, adm), *c = svct_dial(port, tok), *ref;
    char rtok[256];
    cr_assert_eq(ragkv_admin_tenant_create(ad, "reference", 0, 0, 0, rtok, sizeof(rtok)), RK_OK);
    ref = svct_dial(port, rtok);
    int present_total = 0, acked_total = 0;
    for (int i = 0; i < sent; i++) {
        uint8_t present = 0;
        cr_assert_eq(ragkv_lookup(c, keys[i].b, 1, &present), RK_OK);
        acked_total += acked[i];
        if (acked[i])
            cr_expect_eq(present, 1, "acknowledged chunk %d lost", i);
        if (!present)
            continue;
        present_total++;
        uint8_t *cont;
        uint32_t len;
        cr_assert_eq(ragkv_get_kv(c, keys[i].b, NULL, 0, &cont, &len), RK_OK, "chunk %d: %s", i, rk_error_msg());
        codec_info ci;
        cr_expect_eq(codec_inspect(cont, len, &ci), RK_OK, "chunk %d intact", i);
        cr_expect_eq(ci.shape.n_tokens, 40);
        int32_t t[40];
        chunk_tokens(t, 40, i);
        uint8_t rk[32], *want;
        uint32_t wlen;
        cr_assert_eq(ragkv_put_chunk(ref, t, 40, rk, NULL, NULL), RK_OK, "%s", rk_error_msg());
        cr_assert_eq(ragkv_get_kv(ref, rk, NULL, 0, &want, &wlen), RK_OK);
        cr_expect(len == wlen && memcmp(cont, want, len) == 0, "chunk %d byte-identical to a fresh prefill", i);
        rk_free(want);
        rk_free(cont);
    }
    ragkv_close(c);
    ragkv_close(ref);
    uint64_t chunks = 0;
    cr_assert_eq(ragkv_admin_quota_get(ad, "acme", NULL, NULL, NULL, NULL, &chunks), RK_OK);
    cr_expect_eq((int)chunks, present_total, "usage counts exactly the chunks present");
    ragkv_close(ad);
    cr_log_info("%d chunks sent, %d acknowledged, %d present after %d SIGKILLs", sent, acked_total, present_total, rounds);
    cr_expect_eq(rk_test_stop(&d, SIGTERM, 20000), 0);
    rk_test_rmrf(tmp);
}

/* One crash point: acknowledged puts 1..nth-1, then the nth put dies at `point`. */
typedef struct cp_case {
    const char *point;   /* RAGKV_CRASHPOINT name */
    bool committed;      /* after the crash the chunk the daemon died on is stored */
} cp_case;

Test(crash, crash_points_between_blob_metadata_and_ack, .timeout = 300)
{
    static const cp_case cases[] = {
        {"put_blob_written", false},  /* blob without metadata: an orphan, never served */
        {"put_meta_committed", true}, /* committed, never acknowledged */
        {"put_before_ack", true},     /* the reply was about to be queued */
    };
    enum { NC = sizeof(cases) / sizeof(cases[0]), NTH = 3, NTOK = 24 };
    svct_daemon dd;
    const char *const *extra = acme_daemon(&dd, "ragkvd-crashpoints");
    const char *tok = dd.token[0], *adm = dd.adm, *tmp = dd.tmp;
    rk_test_proc d = dd.proc;
    int port = dd.port, hport;
    ragkv_server_info info = server_info(port);
    ragkv_conn *a;
    cr_expect_eq(rk_test_stop(&d, SIGTERM, 20000), 0);

    uint8_t keys[NC][NTH][32];
    uint64_t sums[NC][NTH]; /* xxh3 of each acknowledged chunk's container, read back at once */
    for (int ci = 0; ci < NC; ci++) {
        char sel[96];
        snprintf(sel, sizeof(sel), "%s:%d", cases[ci].point, NTH);
        setenv("RAGKV_CRASHPOINT", sel, 1);
        bool up = rk_test_daemon_start_bin("ragkvd-crashpoints", tmp, extra, &d, &port, &hport);
        unsetenv("RAGKV_CRASHPOINT");
        cr_assert(up, "start with %s", sel);
        ragkv_conn *c;
        cr_assert_eq(ragkv_connect("127.0.0.1", port, 20000, &c), RK_OK);
        cr_assert_eq(ragkv_auth(c, tok, NULL, 0), RK_OK);
        for (int i = 0; i < NTH; i++) { /* one at a time: the NTH put is the one that dies */
            int32_t t[NTOK];
            chunk_tokens(t, NTOK, 1000 + ci * 10 + i);
            cc_key k;
            cr_assert_eq(cc_key_compute(info.model, "acme", t, NTOK, &k), RK_OK);
            memcpy(keys[ci][i], k.b, 32);
            uint8_t got[32];
            rk_status st = ragkv_put_chunk(c, t, NTOK, got, NULL, NULL);
            if (i < NTH - 1) {
                cr_assert_eq(st, RK_OK, "%s: put %d: %s", sel, i, rk_error_msg());
                cr_assert_eq(memcmp(got, k.b, 32), 0);
                sums[ci][i] = svct_kv_sum(c, k.b);
            } else {
                cr_expect_neq(st, RK_OK, "%s: the put that reached the point is never acknowledged", sel);
            }
        }
        ragkv_close(c);
        cr_assert_eq(rk_test_wait(&d, 20000), 128 + SIGKILL, "%s: ragkvd died at the crash point", sel);
    }

    /* restart (no crash point) and check what each point left behind */
    cr_assert(rk_test_daemon_start_bin("ragkvd-crashpoints", tmp, extra, &d, &port, &hport));
    ragkv_conn *c;
    c = svct_dial(port, tok);
    int present_total = 0;
    for (int ci = 0; ci < NC; ci++)
        for (int i = 0; i < NTH; i++) {
            uint8_t present = 0;
            cr_assert_eq(ragkv_lookup(c, keys[ci][i], 1, &present), RK_OK);
            present_total += present;
            bool want = i < NTH - 1 || cases[ci].committed;
            cr_expect_eq(present, want, "%s: chunk %d %s", cases[ci].point, i, want ? "lost" : "served without metadata");
            if (!present)
                continue;
            uint8_t *cont;
            uint32_t len;
            cr_assert_eq(ragkv_get_kv(c, keys[ci][i], NULL, 0, &cont, &len), RK_OK, "%s", rk_error_msg());
            codec_info info2;
            cr_expect_eq(codec_inspect(cont, len, &info2), RK_OK, "%s: chunk %d intact", cases[ci].point, i);
            if (i < NTH - 1)
                cr_expect_eq(rk_xxh3_64(cont, len), sums[ci][i], "%s: chunk %d byte-identical", cases[ci].point, i);
            rk_free(cont);
        }
    /* a client that never saw the acknowledgement retries: the put succeeds, nothing is stored twice */
    for (int ci = 0; ci < NC; ci++) {
        int32_t t[NTOK];
        chunk_tokens(t, NTOK, 1000 + ci * 10 + NTH - 1);
        int created = -1;
        uint8_t got[32];
        cr_expect_eq(ragkv_put_chunk(c, t, NTOK, got, &created, NULL), RK_OK, "%s", rk_error_msg());
        cr_expect_eq(created, cases[ci].committed ? 0 : 1, "%s: retry after the crash", cases[ci].point);
        if (created == 1)
            present_total++;
    }
    ragkv_close(c);
    a = svct_dial(port, adm);
    uint64_t chunks = 0;
    cr_assert_eq(ragkv_admin_quota_get(a, "acme", NULL, NULL, NULL, NULL, &chunks), RK_OK);
    cr_expect_eq((int)chunks, present_total, "usage is exact after the crashes");
    ragkv_close(a);
    cr_expect_eq(rk_test_stop(&d, SIGTERM, 20000), 0);
    rk_test_rmrf(tmp);
}

/* A crash right after a commit that evicted: the tenant's evict policy made room for the new
 * chunk by dropping one of its two others. After the restart the new chunk and the survivor
 * are served, the evicted one is gone (its blob an orphan for gc), and usage is exactly 2. */
Test(crash, crash_after_an_evicting_commit, .timeout = 120)
{
    svct_daemon dd;
    const char *const *extra = acme_daemon(&dd, "ragkvd-crashpoints");
    ragkv_conn *a = svct_dial(dd.port, dd.adm);
    cr_assert_eq(ragkv_admin_quota_set(a, "acme", 0, 2, 1), RK_OK, "2 chunks, evict");
    ragkv_close(a);
    uint8_t keys[3][32];
    uint64_t sums[2];
    ragkv_conn *c = svct_dial(dd.port, dd.token[0]);
    for (int i = 0; i < 2; i++) {
        int32_t t[NTOK_EV];
        chunk_tokens(t, NTOK_EV, 2000 + i);
        cr_assert_eq(ragkv_put_chunk(c, t, NTOK_EV, keys[i], NULL, NULL), RK_OK, "%s", rk_error_msg());
        sums[i] = svct_kv_sum(c, keys[i]);
    }
    ragkv_close(c);
    cr_assert_eq(rk_test_stop(&dd.proc, SIGTERM, 20000), 0);
    setenv("RAGKV_CRASHPOINT", "put_meta_committed", 1);
    svct_daemon_start(&dd, "ragkvd-crashpoints", extra);
    unsetenv("RAGKV_CRASHPOINT");
    c = svct_dial(dd.port, dd.token[0]);
    int32_t t[NTOK_EV];
    chunk_tokens(t, NTOK_EV, 2002);
    cr_expect_neq(ragkv_put_chunk(c, t, NTOK_EV, keys[2], NULL, NULL), RK_OK, "never acknowledged");
    ragkv_close(c);
    cr_assert_eq(rk_test_wait(&dd.proc, 20000), 128 + SIGKILL, "died after the evicting commit");
    ragkv_server_info info;
    svct_daemon_start(&dd, "ragkvd-crashpoints", extra);
    info = server_info(dd.port);
    cc_key k;
    cr_assert_eq(cc_key_compute(info.model, "acme", t, NTOK_EV, &k), RK_OK);
    memcpy(keys[2], k.b, 32);
    c = svct_dial(dd.port, dd.token[0]);
    uint8_t present[3];
    cr_assert_eq(ragkv_lookup(c, keys[0], 3, present), RK_OK);
    cr_expect_eq(present[2], 1, "the committed chunk survives the crash");
    cr_expect_eq(present[0] + present[1], 1, "exactly one of the older chunks was evicted (%d, %d)", present[0], present[1]);
    for (int i = 0; i < 2; i++)
        if (present[i]) {
            cr_expect_eq(svct_kv_sum(c, keys[i]), sums[i], "the survivor is byte-identical");
        }
    uint8_t *cont;
    uint32_t len;
    cr_expect_eq(ragkv_get_kv(c, keys[2], NULL, 0, &cont, &len), RK_OK, "%s", rk_error_msg());
    codec_info ci;
    cr_expect_eq(codec_inspect(cont, len, &ci), RK_OK, "the new chunk is intact");
    rk_free(cont);
    ragkv_close(c);
    a = svct_dial(dd.port, dd.adm);
    uint64_t chunks = 0;
    cr_assert_eq(ragkv_admin_quota_get(a, "acme", NULL, NULL, NULL, NULL, &chunks), RK_OK);
    cr_expect_eq(chunks, 2, "usage exact after the crash");
    ragkv_close(a);
    svct_daemon_down(&dd);
}
