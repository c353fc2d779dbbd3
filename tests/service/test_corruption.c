/* Corruption behind ragkv's back, detected, counted in /metrics (ragkv_store_corrupt_total),
 * never served, no crash:
 *  - a stored chunk's bytes flipped on disk (RocksDB and blob files) while ragkvd is down: by
 *    key it is a miss (RK_ERR_NOT_FOUND), and a prompt naming it by its tokens is still
 *    answered, recomputing it (and caching it anew);
 *  - a chunk's metadata record flipped in Redis under a running ragkvd: a miss, the same;
 *  - a KV container damaged on the wire (PUT_KV with a flipped byte): refused, not stored. */
#include <criterion/criterion.h>
#include <hiredis/hiredis.h>
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ragkv/alloc.h"
#include "ragkv/blobstore.h"
#include "ragkv/chunk_key.h"
#include "ragkv/client.h"
#include "svc_testlib.h"
#include "testutil.h"

/* Flip a byte 64 bytes past every "RKC1" chunk-blob magic in the files of dir; returns how many. */
static int corrupt_dir(const char *dir)
{
    DIR *d = opendir(dir);
    int n = 0;
    struct dirent *e;
    while (d && (e = readdir(d))) {
        char p[1024];
        snprintf(p, sizeof(p), "%s/%s", dir, e->d_name);
        struct stat st;
        if (stat(p, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size < 128)
            continue;
        FILE *f = fopen(p, "r+b");
        if (!f)
            continue;
        char *buf = malloc((size_t)st.st_size);
        if (buf && fread(buf, 1, (size_t)st.st_size, f) == (size_t)st.st_size) {
            for (off_t i = 0; i + 68 < st.st_size; i++)
                if (memcmp(buf + i, "RKC1", 4) == 0) {
                    buf[i + 64] ^= 0x5a;
                    fseek(f, (long)(i + 64), SEEK_SET);
                    fputc((unsigned char)buf[i + 64], f);
                    n++;
                }
        }
        free(buf);
        fclose(f);
    }
    if (d)
        closedir(d);
    return n;
}

/* A daemon in dd (the real model; the test is skipped without it) with tenant acme and one
 * chunk of n tokens a + i*b stored in ch (its key in key), then stopped cleanly; store gets
 * the RocksDB directory to damage. Returns the daemon's flags, for restarts. */
static const char *const *one_chunk_then_stop(svct_daemon *dd, int32_t *ch, uint32_t n, int a, int b, uint8_t key[32],
                                              char *store, size_t len)
{
    static const char *extra[] = {"--model", NULL, NULL};
    if (!(extra[1] = rk_test_model_path("stories260K.bin")))
        cr_skip_test("skipped: no real model");
    for (uint32_t i = 0; i < n; i++)
        ch[i] = a + (int32_t)i * b;
    svct_daemon_up(dd, "ragkvd", extra, "acme", NULL);
    ragkv_conn *t = svct_dial(dd->port, dd->token[0]);
    cr_assert_eq(ragkv_put_chunk(t, ch, n, key, NULL, NULL), RK_OK, "%s", rk_error_msg());
    ragkv_close(t);
    cr_assert_eq(rk_test_stop(&dd->proc, SIGTERM, 20000), 0); /* flushed and closed */
    snprintf(store, len, "%s/var/store", dd->tmp);
    return extra;
}

/* The damaged chunk is a miss by key, and a prompt that brings its tokens is still answered,
 * recomputing it: never served damaged. */
static void expect_miss_then_recomputed(ragkv_conn *t, const uint8_t key[32], const int32_t *ch, uint32_t n)
{
    uint8_t *cont;
    uint32_t len;
    rk_status st = ragkv_get_kv(t, key, NULL, 0, &cont, &len);
    cr_expect_eq(st, RK_ERR_NOT_FOUND, "a damaged chunk is a miss, got %s", rk_status_name(st));
    if (st == RK_OK)
        rk_free(cont);
    const int32_t q[] = {403, 407};
    ragkv_segment seg = {.tokens = ch, .ntokens = n};
    ragkv_gen_params p = {.segs = &seg, .nsegs = 1, .query = q, .nquery = 2, .blend = 3, .recompute = 0.15f, .max_tokens = 4};
    ragkv_gen_stats gs;
    cr_expect_eq(ragkv_generate(t, &p, NULL, NULL, &gs), RK_OK, "still answered: %s", rk_error_msg());
    cr_expect_eq(gs.chunk_misses, 1, "recomputed, not served damaged");
}

Test(corruption, damaged_chunks_are_misses_never_served, .timeout = 90)
{
    char store[512];
    svct_daemon dd;
    int32_t ch[64];
    uint8_t key[32];
    const char *const *extra = one_chunk_then_stop(&dd, ch, 64, 5, 3, key, store, sizeof(store));
    /* damage it on disk (the RocksDB files and blob files of the store) */
    int hits = corrupt_dir(store);
    DIR *sd = opendir(store);
    struct dirent *e;
    while (sd && (e = readdir(sd))) { /* and one level down (column family or blob dirs) */
        char sub[1024];
        snprintf(sub, sizeof(sub), "%s/%s", store, e->d_name);
        struct stat st;
        if (e->d_name[0] != '.' && stat(sub, &st) == 0 && S_ISDIR(st.st_mode))
            hits += corrupt_dir(sub);
    }
    if (sd)
        closedir(sd);
    cr_assert_gt(hits, 0, "found the stored chunk on disk");
    svct_daemon_start(&dd, "ragkvd", extra); /* it starts over damaged data */
    ragkv_conn *t = svct_dial(dd.port, dd.token[0]);
    /* (whether RocksDB's own CRCs or ragkv's checksums caught it depends on where the flipped
     * byte landed: a WAL record that fails its CRC is dropped at recovery, chunk and all) */
    expect_miss_then_recomputed(t, key, ch, 64);
    /* the miss was cached again, from the tokens the prompt brought */
    int created = -1;
    cr_expect_eq(ragkv_put_chunk(t, ch, 64, key, &created, NULL), RK_OK, "%s", rk_error_msg());
    cr_expect_eq(created, 0, "already cached again by the prompt that missed it");
    uint8_t *cont;
    uint32_t len;
    cr_expect_eq(ragkv_get_kv(t, key, NULL, 0, &cont, &len), RK_OK);
    rk_free(cont);
    ragkv_close(t);
    svct_daemon_down(&dd);
}

/* Scan callback: remember every chunk value (key and bytes) to rewrite it damaged. */
typedef struct kv_list {
    uint8_t *k[16], *v[16];
    size_t kl[16], vl[16], n;
} kv_list;

static int collect_kv(void *arg, const uint8_t *key, size_t klen, const uint8_t *val, size_t vlen)
{
    kv_list *l = arg;
    if (l->n == 16)
        return 1;
    l->k[l->n] = malloc(klen);
    l->v[l->n] = malloc(vlen);
    memcpy(l->k[l->n], key, klen);
    memcpy(l->v[l->n], val, vlen);
    l->kl[l->n] = klen;
    l->vl[l->n] = vlen;
    l->n++;
    return 0;
}

Test(corruption, blob_rewritten_behind_ragkvs_back_is_counted_never_served, .timeout = 90)
{
    char store[512];
    svct_daemon dd;
    int32_t ch[48];
    uint8_t key[32];
    const char *const *extra = one_chunk_then_stop(&dd, ch, 48, 11, 9, key, store, sizeof(store));
    /* rewrite the chunk's value through RocksDB itself (valid CRCs), one byte of its KV flipped */
    cc_blobstore bs;
    cr_assert_eq(cc_blobstore_rocksdb_open(store, NULL, &bs), RK_OK, "%s", rk_error_msg());
    kv_list l = {0};
    cr_assert_eq(cc_blobstore_scan(&bs, CC_SPACE_CHUNKS, collect_kv, &l), RK_OK);
    cr_assert_eq(l.n, 1, "one chunk stored");
    l.v[0][l.vl[0] - 9] ^= 0x20;
    cc_iov part = {l.v[0], l.vl[0]};
    cr_assert_eq(cc_blobstore_put(&bs, CC_SPACE_CHUNKS, l.k[0], l.kl[0], &part, 1), RK_OK);
    cc_blobstore_close(&bs);
    free(l.k[0]);
    free(l.v[0]);
    svct_daemon_start(&dd, "ragkvd", extra);
    ragkv_conn *t = svct_dial(dd.port, dd.token[0]);
    long long c0 = svct_metric(dd.hport, "store_corrupt_total");
    expect_miss_then_recomputed(t, key, ch, 48);
    long long c1 = svct_metric(dd.hport, "store_corrupt_total");
    cr_expect_eq(c1 - c0, 1, "counted once in /metrics (%lld -> %lld)", c0, c1);
    ragkv_close(t);
    svct_daemon_down(&dd);
}

Test(corruption, flipped_redis_record_and_damaged_wire_container, .timeout = 90)
{
    const char *model = rk_test_model_path("stories260K.bin");
    if (!model)
        cr_skip_test("skipped: no real model");
    char host[128], redis[160], prefix[64];
    int rport;
    if (!rk_test_redis(host, sizeof(host), &rport))
        cr_skip_test("skipped: no test Redis (RAGKV_TEST_REDIS; scripts/test.sh starts one)");
    snprintf(redis, sizeof(redis), "%s:%d", host, rport);
    snprintf(prefix, sizeof(prefix), "rkcor%d:", (int)getpid());
    const char *extra[] = {"--model", model, "--redis", redis, "--redis-prefix", prefix, NULL};
    svct_daemon dd;
    svct_daemon_up(&dd, "ragkvd", extra, "acme", NULL);
    const char *tok = dd.token[0];
    ragkv_conn *t = svct_dial(dd.port, tok);
    int32_t ch[40], ch2[40];
    for (int i = 0; i < 40; i++) {
        ch[i] = 7 + i * 5;
        ch2[i] = 9 + i * 7;
    }
    uint8_t key[32];
    cr_assert_eq(ragkv_put_chunk(t, ch, 40, key, NULL, NULL), RK_OK, "%s", rk_error_msg());
    /* a container to send back damaged: a second chunk's, read and deleted again */
    uint8_t key2[32], *cont;
    uint32_t len;
    cr_assert_eq(ragkv_put_chunk(t, ch2, 40, key2, NULL, NULL), RK_OK);
    cr_assert_eq(ragkv_get_kv(t, key2, NULL, 0, &cont, &len), RK_OK);
    cr_assert_eq(ragkv_delete(t, key2), RK_OK);
    long long c0 = svct_metric(dd.hport, "store_corrupt_total");
    cr_assert_geq(c0, 0);

    /* flip one byte of the record in Redis, behind ragkvd's back */
    cc_key k;
    memcpy(k.b, key, 32);
    char hex[65], rkey[160];
    cc_key_to_hex(&k, hex);
    snprintf(rkey, sizeof(rkey), "%sr:%s", prefix, hex);
    redisContext *rc = redisConnect(host, rport);
    cr_assert(rc && !rc->err);
    redisReply *rep = redisCommand(rc, "HGET %s rec", rkey);
    cr_assert(rep && rep->type == REDIS_REPLY_STRING, "record %s in Redis", rkey);
    char *rec = malloc(rep->len);
    size_t rlen = rep->len;
    memcpy(rec, rep->str, rlen);
    freeReplyObject(rep);
    rec[rlen / 2] ^= 0x10;
    rep = redisCommand(rc, "HSET %s rec %b", rkey, rec, rlen);
    cr_assert_not_null(rep);
    freeReplyObject(rep);
    free(rec);
    redisFree(rc);
    /* the RAM tier still holds the verified chunk; a restart empties it, so reads need the record */
    ragkv_close(t);
    cr_expect_eq(rk_test_stop(&dd.proc, SIGTERM, 20000), 0);
    svct_daemon_start(&dd, "ragkvd", extra);
    t = svct_dial(dd.port, tok);
    c0 = svct_metric(dd.hport, "store_corrupt_total");
    uint8_t *got;
    uint32_t glen;
    rk_status st = ragkv_get_kv(t, key, NULL, 0, &got, &glen);
    cr_expect_eq(st, RK_ERR_NOT_FOUND, "a chunk whose record is damaged is a miss, got %s", rk_status_name(st));
    if (st == RK_OK)
        rk_free(got);
    uint8_t present = 9;
    cr_expect_eq(ragkv_lookup(t, key, 1, &present), RK_OK);
    cr_expect_eq(present, 0);
    cr_expect_geq(svct_metric(dd.hport, "store_corrupt_total") - c0, 1, "counted in /metrics");
    const int32_t q[] = {403, 407};
    ragkv_segment seg = {.tokens = ch, .ntokens = 40};
    ragkv_gen_params p = {.segs = &seg, .nsegs = 1, .query = q, .nquery = 2, .blend = 3, .recompute = 0.15f, .max_tokens = 2};
    ragkv_gen_stats gs;
    cr_expect_eq(ragkv_generate(t, &p, NULL, NULL, &gs), RK_OK, "still answered: %s", rk_error_msg());

    /* a container damaged on the wire: every flipped position we try is refused, none stored */
    int refused = 0, tried = 0;
    for (uint32_t off = 0; off < len; off += len / 16 + 1, tried++) {
        cont[off] ^= 0x04;
        uint8_t kk[32];
        st = ragkv_put_kv(t, ch2, 40, cont, len, kk, NULL);
        cont[off] ^= 0x04;
        if (st != RK_OK)
            refused++;
        else
            cr_log_error("PUT_KV accepted a container flipped at byte %u of %u", off, len);
    }
    cr_expect_eq(refused, tried, "damaged containers refused (%d of %d)", refused, tried);
    cr_log_info("wire: %d of %d containers with one flipped byte refused", refused, tried);
    cr_expect_eq(ragkv_lookup(t, key2, 1, &present), RK_OK);
    cr_expect_eq(present, 0, "nothing damaged was stored");
    uint8_t kk[32];
    cr_expect_eq(ragkv_put_kv(t, ch2, 40, cont, len, kk, NULL), RK_OK, "the intact container is accepted: %s", rk_error_msg());
    rk_free(cont);
    ragkv_close(t);
    svct_daemon_down(&dd);
}
