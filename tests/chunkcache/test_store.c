/* cc_store over every backend combination: round trip, tenant isolation, shared namespaces,
 * quotas (reject / evict own), repair of corrupt and missing blobs, orphan gc, rebuild,
 * TTL, RAM tier value-aware eviction, disk budget, restart persistence. */
#include "cc_testlib.h"

#include "ragkv/gpu.h"
#include "ragkv/hash.h"

#define COMBOS(X)                                                                                  \
    X(mem_embedded, CCT_BS_MEM, CCT_EMB_MEM)                                                       \
    X(rocksdb_embedded, CCT_BS_ROCKS, CCT_EMB_ROCKS)                                               \
    X(rocksdb_redis, CCT_BS_ROCKS, CCT_REDIS)                                                      \
    X(mem_redis, CCT_BS_MEM, CCT_REDIS)

static void t_round_trip(cct_bs_kind bk, cct_ms_kind mk)
{
    cct_skip_if_unavailable(mk);
    cct_env e;
    cct_env_init(&e, bk, mk);
    cc_store *s = cct_open_store(&e, NULL);
    cct_make_tenant(s, "acme", 0, 0, CC_QUOTA_REJECT);
    cc_key k1, k2;
    cr_assert_eq(cct_put(s, "acme", 1, 5000, 2.0, &k1), RK_OK, "%s", rk_error_msg());
    cr_assert_eq(cct_put(s, "acme", 2, 70000, 2.0, &k2), RK_OK);
    int32_t toks[8];
    for (int i = 0; i < 8; i++)
        toks[i] = 8 + i;
    cc_key want;
    cc_key_compute("m", "acme", toks, 8, &want);
    cr_expect(cc_key_equal(&k1, &want), "the key is BLAKE2b(model, namespace, tokens)");
    cct_expect_blob(s, "acme", &k1, 1, 5000);
    cct_expect_blob(s, "acme", &k2, 2, 70000);
    cc_store_drop_ram(s);
    cct_expect_blob(s, "acme", &k2, 2, 70000); /* from the blob store */
    cc_buf *b;
    cc_record rec;
    cr_assert_eq(cc_store_get(s, "acme", &k2, &b, &rec), RK_OK);
    cr_expect_str_eq(rec.ns, "acme");
    cr_expect_str_eq(rec.model, "m");
    cr_expect_eq(rec.ntokens, 8);
    cr_expect_eq(rec.size, 70000);
    cr_expect_eq(rec.csum, rk_xxh3_64(b->data, b->len));
    cc_record_clear(&rec);
    cc_buf_release(b);

    /* Cache-Craft metadata and variants travel with the chunk, as opaque bytes */
    int32_t ct[2] = {77, 78};
    uint8_t craft[40], variants[9];
    cct_fill(craft, sizeof(craft), 5);
    cct_fill(variants, sizeof(variants), 6);
    cc_put_args ca = {.model = "m", .tokens = ct, .ntokens = 2, .codec = 4, .level = 1, .blob = "kv", .blob_len = 2,
                      .cost = 3, .pinned = true, .craft = craft, .craft_len = sizeof(craft), .variants = variants,
                      .variants_len = sizeof(variants)};
    cc_key kc;
    cr_assert_eq(cc_store_put(s, "acme", &ca, &kc), RK_OK);
    for (int pass = 0; pass < 2; pass++) {
        cr_assert_eq(cc_store_get(s, "acme", &kc, &b, &rec), RK_OK);
        cr_expect(rec.codec == 4 && rec.level == 1 && rec.ntokens == 2 && (rec.flags & CC_RECORD_FLAG_PINNED));
        cr_expect(rec.craft_len == sizeof(craft) && memcmp(rec.craft, craft, sizeof(craft)) == 0);
        cr_expect(rec.variants_len == sizeof(variants) && memcmp(rec.variants, variants, sizeof(variants)) == 0);
        cc_record_clear(&rec);
        cc_buf_release(b);
        cc_store_drop_ram(s); /* second pass: from the blob store */
    }
    cr_assert_eq(cc_store_delete(s, "acme", &kc), RK_OK);

    cr_expect_eq(cct_put(s, "acme", 1, 5000, 2.0, NULL), RK_OK, "a second put of the same chunk is fine");
    cc_stats stt;
    cc_store_stats(s, &stt);
    cr_expect_eq(stt.puts, 3);
    cr_expect_eq(stt.put_dups, 1);
    cr_expect(stt.ram_hits >= 2 && stt.disk_hits >= 1);

    cc_tenant_info ti;
    cr_assert_eq(cc_store_tenant_usage(s, "acme", &ti), RK_OK);
    cr_expect(ti.bytes == 75000 && ti.chunks == 2);

    cc_key none;
    memset(&none, 0x5a, sizeof(none));
    cc_key ks[3] = {k1, none, k2};
    uint8_t pres[3];
    cr_assert_eq(cc_store_lookup(s, "acme", ks, 3, pres), RK_OK);
    cr_expect(pres[0] == 1 && pres[1] == 0 && pres[2] == 1);

    cr_assert_eq(cc_store_delete(s, "acme", &k1), RK_OK);
    cr_expect_eq(cc_store_get(s, "acme", &k1, &b, NULL), RK_ERR_NOT_FOUND);
    cr_expect_eq(cc_store_delete(s, "acme", &k1), RK_ERR_NOT_FOUND);
    cr_assert_eq(cc_store_tenant_usage(s, "acme", &ti), RK_OK);
    cr_expect(ti.bytes == 70000 && ti.chunks == 1);

    /* bad input: clear errors */
    cc_put_args bad = {.model = "m", .blob = NULL, .blob_len = 10};
    cr_expect_eq(cc_store_put(s, "acme", &bad, NULL), RK_ERR_INVALID);
    cc_put_args nan = {.model = "m", .blob = "x", .blob_len = 1, .cost = -1};
    cr_expect_eq(cc_store_put(s, "acme", &nan, NULL), RK_ERR_INVALID);
    cr_expect_eq(cct_put(s, "nobody", 1, 10, 1, NULL), RK_ERR_NOT_FOUND, "no such tenant");
    cr_expect_eq(cct_put(s, "", 1, 10, 1, NULL), RK_ERR_INVALID);
    cr_expect_eq(cc_store_tenant_create(s, "acme", NULL), RK_ERR_EXISTS);
    cc_store_close(s);
    cct_env_fini(&e);
}

static void t_isolation(cct_bs_kind bk, cct_ms_kind mk)
{
    cct_skip_if_unavailable(mk);
    cct_env e;
    cct_env_init(&e, bk, mk);
    cc_store *s = cct_open_store(&e, NULL);
    cct_make_tenant(s, "a", 0, 0, CC_QUOTA_REJECT);
    cct_make_tenant(s, "b", 0, 0, CC_QUOTA_REJECT);
    cct_make_tenant(s, "corpus", 0, 0, CC_QUOTA_REJECT);
    cc_key ka, kb, kc;
    cr_assert_eq(cct_put(s, "a", 1, 3000, 1, &ka), RK_OK);
    cr_assert_eq(cct_put(s, "b", 1, 3000, 1, &kb), RK_OK);
    cr_expect(!cc_key_equal(&ka, &kb), "the same tokens in two tenants are two chunks");
    cc_tenant_info ti;
    cc_store_tenant_usage(s, "b", &ti);
    cr_expect_eq(ti.chunks, 1);

    /* b asking for a's chunk: the same answer as for a key nobody has, from RAM and from disk */
    cc_key nobody;
    memset(&nobody, 0x33, sizeof(nobody));
    cc_buf *buf = NULL;
    for (int pass = 0; pass < 2; pass++) {
        rk_status other = cc_store_get(s, "b", &ka, &buf, NULL);
        rk_status none = cc_store_get(s, "b", &nobody, &buf, NULL);
        cr_expect_eq(other, RK_ERR_NOT_FOUND);
        cr_expect_eq(other, none);
        cc_store_drop_ram(s);
    }
    uint8_t pres[2];
    cc_key ks[2] = {ka, nobody};
    cr_assert_eq(cc_store_lookup(s, "b", ks, 2, pres), RK_OK);
    cr_expect(pres[0] == 0 && pres[1] == 0);
    cr_expect_eq(cc_store_delete(s, "b", &ka), RK_ERR_NOT_FOUND);
    cct_expect_blob(s, "a", &ka, 1, 3000);
    cc_put_args cross = {.ns = "a", .model = "m", .blob = "x", .blob_len = 1};
    cr_expect_eq(cc_store_put(s, "b", &cross, NULL), RK_ERR_DENIED);

    /* shared namespace: readable only once granted, and only by the grantee */
    cr_assert_eq(cct_put(s, "corpus", 9, 2000, 1, &kc), RK_OK);
    cr_expect_eq(cc_store_get(s, "a", &kc, &buf, NULL), RK_ERR_NOT_FOUND);
    cr_assert_eq(cc_store_grant(s, "corpus", "a"), RK_OK);
    cct_expect_blob(s, "a", &kc, 9, 2000);
    cr_expect_eq(cc_store_get(s, "b", &kc, &buf, NULL), RK_ERR_NOT_FOUND, "b has no grant (RAM hit path)");
    cr_expect_eq(cc_store_delete(s, "a", &kc), RK_ERR_NOT_FOUND, "grantees read, never delete");
    cr_assert_eq(cc_store_revoke(s, "corpus", "a"), RK_OK);
    cr_expect_eq(cc_store_get(s, "a", &kc, &buf, NULL), RK_ERR_NOT_FOUND);
    cr_expect_eq(cc_store_grant(s, "corpus", "ghost"), RK_ERR_NOT_FOUND);

    /* deleting a tenant removes its chunks only */
    cr_assert_eq(cc_store_tenant_delete(s, "a"), RK_OK);
    cr_expect_eq(cc_store_get(s, "a", &ka, &buf, NULL), RK_ERR_NOT_FOUND);
    cct_expect_blob(s, "b", &kb, 1, 3000);
    char **names;
    size_t n;
    cr_assert_eq(cc_store_tenant_list(s, &names, &n), RK_OK);
    cr_assert_eq(n, 2);
    cr_expect_str_eq(names[0], "b");
    cr_expect_str_eq(names[1], "corpus");
    cc_names_free(names, n);
    cc_store_close(s);
    cct_env_fini(&e);
}

static void t_quotas(cct_bs_kind bk, cct_ms_kind mk)
{
    cct_skip_if_unavailable(mk);
    cct_env e;
    cct_env_init(&e, bk, mk);
    cc_config cfg = cc_config_default();
    cfg.touch_batch = 1; /* hits reach the metadata at once */
    cc_store *s = cct_open_store(&e, &cfg);
    cct_make_tenant(s, "strict", 0, 3, CC_QUOTA_REJECT);
    cct_make_tenant(s, "lru", 10000, 0, CC_QUOTA_EVICT);
    cct_make_tenant(s, "other", 10000, 0, CC_QUOTA_EVICT);
    for (int i = 0; i < 3; i++)
        cr_assert_eq(cct_put(s, "strict", (uint64_t)i, 100, 1, NULL), RK_OK);
    cr_expect_eq(cct_put(s, "strict", 3, 100, 1, NULL), RK_ERR_QUOTA);
    cc_quota q;
    cr_assert_eq(cc_store_quota_get(s, "strict", &q), RK_OK);
    cr_expect(q.max_chunks == 3 && q.policy == CC_QUOTA_REJECT);
    q.max_chunks = 4;
    cr_assert_eq(cc_store_quota_set(s, "strict", &q), RK_OK);
    cr_expect_eq(cct_put(s, "strict", 3, 100, 1, NULL), RK_OK, "the raised quota admits one more");

    cc_key o1, hot, cold, k3, k4;
    cr_assert_eq(cct_put(s, "other", 50, 4000, 0.001, &o1), RK_OK);
    cr_assert_eq(cct_put(s, "lru", 100, 4000, 1, &hot), RK_OK);
    cr_assert_eq(cct_put(s, "lru", 101, 4000, 1, &cold), RK_OK);
    for (int i = 0; i < 3; i++)
        cct_expect_blob(s, "lru", &hot, 100, 4000);
    cr_assert_eq(cct_put(s, "lru", 102, 4000, 1, &k3), RK_OK, "over quota: evicts its own chunks");
    cc_buf *b;
    cr_expect_eq(cc_store_get(s, "lru", &cold, &b, NULL), RK_ERR_NOT_FOUND, "the cold chunk went");
    cct_expect_blob(s, "lru", &hot, 100, 4000);
    cct_expect_blob(s, "other", &o1, 50, 4000);
    cc_tenant_info ti;
    cr_assert_eq(cc_store_tenant_usage(s, "lru", &ti), RK_OK);
    cr_expect(ti.bytes == 8000 && ti.chunks == 2);
    cr_expect_eq(cct_put(s, "lru", 103, 20000, 1, &k4), RK_ERR_QUOTA, "larger than the whole quota");
    cr_assert_eq(cc_store_tenant_usage(s, "lru", &ti), RK_OK);
    cr_expect(ti.bytes == 8000 && ti.chunks == 2, "a refused put changes nothing");
    cc_stats st;
    cc_store_stats(s, &st);
    cr_expect_eq(st.evicted_quota, 1);
    cr_expect_eq(st.quota_rejects, 2);
    /* the evicted blob is gone from the blob store too (no orphan left behind) */
    uint64_t removed = 99;
    cr_assert_eq(cc_store_gc(s, &removed), RK_OK);
    cr_expect_eq(removed, 0);
    cc_store_close(s);
    cct_env_fini(&e);
}

static void t_repair_gc_rebuild(cct_bs_kind bk, cct_ms_kind mk)
{
    cct_skip_if_unavailable(mk);
    cct_env e;
    cct_env_init(&e, bk, mk);
    cc_store *s = cct_open_store(&e, NULL);
    cct_make_tenant(s, "t", 1 << 20, 100, CC_QUOTA_REJECT);
    cct_make_tenant(s, "u", 0, 0, CC_QUOTA_EVICT);
    cr_assert_eq(cc_store_grant(s, "t", "u"), RK_OK);
    cc_key k[4];
    for (int i = 0; i < 4; i++)
        cr_assert_eq(cct_put(s, "t", (uint64_t)i, 1000 + (size_t)i, 1, &k[i]), RK_OK);
    cc_store_drop_ram(s);
    cc_blobstore *bs = cc_store_blobstore(s);

    /* corrupt blob 0: one flipped byte in the blob part */
    uint8_t bk0[40];
    cct_bkey(bk0, &k[0], 0, 1000);
    cct_corrupt(s, &k[0], 0, 1000, 10, 0x40);
    cc_buf *b, *v;
    cr_expect_eq(cc_store_get(s, "t", &k[0], &b, NULL), RK_ERR_NOT_FOUND, "a corrupt blob is never served");
    /* missing blob 1 */
    uint8_t bk1[40];
    cct_bkey(bk1, &k[1], 1, 1001);
    cr_assert_eq(cc_blobstore_del(bs, CC_SPACE_CHUNKS, bk1, 40), RK_OK);
    cr_expect_eq(cc_store_get(s, "t", &k[1], &b, NULL), RK_ERR_NOT_FOUND);
    cc_stats st;
    cc_store_stats(s, &st);
    cr_expect_eq(st.corrupt, 1);
    cr_expect_eq(st.repairs, 2);
    uint8_t pres[2];
    cr_assert_eq(cc_store_lookup(s, "t", k, 2, pres), RK_OK);
    cr_expect(pres[0] == 0 && pres[1] == 0, "repaired: the metadata is gone too");
    cc_tenant_info ti;
    cr_assert_eq(cc_store_tenant_usage(s, "t", &ti), RK_OK);
    cr_expect(ti.chunks == 2 && ti.bytes == 1002 + 1003);
    cr_expect_eq(cc_blobstore_get(bs, CC_SPACE_CHUNKS, bk0, 40, &v), RK_ERR_NOT_FOUND, "corrupt blob deleted");
    /* a put repairs for good */
    cr_assert_eq(cct_put(s, "t", 0, 1000, 1, NULL), RK_OK);
    cct_expect_blob(s, "t", &k[0], 0, 1000);

    /* orphans: a blob without metadata, and garbage under a chunk-sized key */
    uint8_t orphan[40];
    memset(orphan, 0x77, sizeof(orphan));
    cc_iov junk = {"not a chunk", 11};
    cr_assert_eq(cc_blobstore_put(bs, CC_SPACE_CHUNKS, orphan, 40, &junk, 1), RK_OK);
    uint64_t removed = 0;
    cr_assert_eq(cc_store_gc(s, &removed), RK_OK);
    cr_expect_eq(removed, 1);
    cct_expect_blob(s, "t", &k[2], 2, 1002);

    /* lose all metadata; rebuild from the blob store restores chunks, usage, quotas, grants */
    cr_assert_eq(cc_metastore_clear(cc_store_metastore(s)), RK_OK);
    cr_expect_eq(cc_store_tenant_usage(s, "t", &ti), RK_ERR_NOT_FOUND);
    cr_assert_eq(cc_store_rebuild(s), RK_OK, "%s", rk_error_msg());
    cr_assert_eq(cc_store_tenant_usage(s, "t", &ti), RK_OK);
    cr_expect(ti.chunks == 3 && ti.bytes == 1000 + 1002 + 1003, "usage after rebuild %llu/%llu",
              (unsigned long long)ti.chunks, (unsigned long long)ti.bytes);
    cr_expect(ti.cfg.max_bytes == 1 << 20 && ti.cfg.max_chunks == 100);
    cc_store_drop_ram(s);
    cct_expect_blob(s, "u", &k[3], 3, 1003); /* via the restored grant */
    cc_store_close(s);
    cct_env_fini(&e);
}

static void t_ttl_ram_disk(cct_bs_kind bk, cct_ms_kind mk)
{
    cct_skip_if_unavailable(mk);
    cct_env e;
    cct_env_init(&e, bk, mk);
    cc_config cfg = cc_config_default();
    cfg.ram_budget_bytes = 3000;
    cfg.disk_budget_bytes = 12000;
    cc_store *s = cct_open_store(&e, &cfg);
    cct_make_tenant(s, "big", 0, 0, CC_QUOTA_REJECT);
    cct_make_tenant(s, "small", 0, 0, CC_QUOTA_REJECT);

    /* TTL */
    int32_t tok = 1;
    cc_put_args a = {.model = "m", .tokens = &tok, .ntokens = 1, .blob = "abc", .blob_len = 3, .ttl_ms = 1};
    cc_key kt;
    cr_assert_eq(cc_store_put(s, "small", &a, &kt), RK_OK);
    uint64_t t0 = rk_wall_ms();
    while (rk_wall_ms() < t0 + 3) {
        /* the expiry is the behaviour under test: wait for the wall clock to pass it */
    }
    cc_buf *b;
    cr_expect_eq(cc_store_get(s, "small", &kt, &b, NULL), RK_ERR_NOT_FOUND, "expired");

    /* RAM tier: 3000 bytes hold three 1000-byte chunks; the valuable one stays */
    cc_key r[5];
    cr_assert_eq(cct_put(s, "small", 10, 1000, 1000.0, &r[0]), RK_OK); /* high recompute cost */
    for (int i = 1; i < 5; i++)
        cr_assert_eq(cct_put(s, "small", 10 + (uint64_t)i, 1000, 0.5, &r[i]), RK_OK);
    cc_stats st;
    cc_store_stats(s, &st);
    cr_expect(st.ram_bytes <= 3000 && st.ram_chunks == 3, "ram %llu bytes %llu chunks",
              (unsigned long long)st.ram_bytes, (unsigned long long)st.ram_chunks);
    cr_expect_eq(st.ram_evictions, 2);
    uint64_t before = st.ram_hits;
    cct_expect_blob(s, "small", &r[0], 10, 1000);
    cc_store_stats(s, &st);
    cr_expect_eq(st.ram_hits, before + 1, "the high-value chunk survived in RAM");

    /* disk budget 12000: "big" fills it and then pays for new chunks; "small" keeps its own */
    cc_key kb[8];
    for (int i = 0; i < 8; i++)
        cr_assert_eq(cct_put(s, "big", 100 + (uint64_t)i, 1500, 1, &kb[i]), RK_OK, "%d: %s", i, rk_error_msg());
    cc_store_stats(s, &st);
    cr_expect(st.disk_bytes <= 12000, "disk %llu", (unsigned long long)st.disk_bytes);
    cr_expect(st.evicted_disk > 0);
    for (int i = 0; i < 5; i++)
        cct_expect_blob(s, "small", &r[i], 10 + (uint64_t)i, 1000);
    cct_expect_blob(s, "big", &kb[7], 107, 1500);
    cc_store_close(s);

    /* restart: usage and data persist (RocksDB blobs with embedded or Redis metadata) */
    if (bk == CCT_BS_ROCKS) {
        cc_tenant_info ti;
        s = cct_open_store(&e, &cfg);
        cr_assert_eq(cc_store_tenant_usage(s, "small", &ti), RK_OK);
        cr_expect(ti.chunks == 5 && ti.bytes == 5000);
        cct_expect_blob(s, "small", &r[2], 12, 1000);
        cc_store_stats(s, &st);
        cr_expect_eq(st.rebuilds, 0, "intact metadata is not rebuilt");
        cc_store_close(s);
    }
    cct_env_fini(&e);
}

#define DEFINE(name, bk, mk)                                                                       \
    Test(store_##name, round_trip) { t_round_trip(bk, mk); }                                       \
    Test(store_##name, tenant_isolation_and_shared_namespaces) { t_isolation(bk, mk); }            \
    Test(store_##name, quotas_reject_and_evict_own) { t_quotas(bk, mk); }                          \
    Test(store_##name, repair_gc_rebuild) { t_repair_gc_rebuild(bk, mk); }                         \
    Test(store_##name, ttl_ram_tier_disk_budget_restart) { t_ttl_ram_disk(bk, mk); }
COMBOS(DEFINE)

/* ram_page_locked: the RAM tier's blobs (from a put, and from a disk read) sit in page-locked
 * memory where a CUDA device gives it, in ordinary memory where none does; the bytes are the
 * same either way, and the tier still evicts and serves. */
Test(store_ram_page_locked, blobs_locked_where_a_device_is)
{
    rk_gpu_info gi;
    bool device = rk_gpu_query(&gi) == RK_OK && gi.count > 0;
    cct_env e;
    cct_env_init(&e, CCT_BS_ROCKS, CCT_EMB_ROCKS);
    cc_config cfg = cc_config_default();
    cfg.ram_page_locked = true;
    cfg.ram_budget_bytes = 3 * 70000;
    cc_store *s = cct_open_store(&e, &cfg);
    cct_make_tenant(s, "acme", 0, 0, CC_QUOTA_REJECT);
    cc_key k[4];
    for (int i = 0; i < 4; i++)
        cr_assert_eq(cct_put(s, "acme", 40 + (uint64_t)i, 70000, 1.0, &k[i]), RK_OK, "%s", rk_error_msg());
    cc_stats st;
    cc_store_stats(s, &st);
    cr_expect_eq(st.ram_chunks, 3, "the budget holds three");
    for (int pass = 0; pass < 2; pass++) { /* from RAM, then from disk after the tier is dropped */
        for (int i = 0; i < 4; i++) {
            cct_expect_blob(s, "acme", &k[i], 40 + (uint64_t)i, 70000);
            cc_buf *b;
            cr_assert_eq(cc_store_get(s, "acme", &k[i], &b, NULL), RK_OK);
            cr_expect_eq(rk_gpu_host_locked(b->data), device, "pass %d chunk %d: page-locked %d, device %d", pass,
                         i, rk_gpu_host_locked(b->data), device);
            cc_buf_release(b);
        }
        cc_store_drop_ram(s);
    }
    cc_store_stats(s, &st);
    cr_expect(st.disk_hits >= 4 && st.ram_hits >= 4);
    cc_store_close(s);
    cct_env_fini(&e);
}
