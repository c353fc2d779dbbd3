/* Backend conformance: the same checks on every blob store (mem, RocksDB) and every metadata
 * store (embedded in memory, embedded in RocksDB, Redis). Redis variants skip without the
 * harness's Redis (scripts/test.sh). */
#include "cc_testlib.h"

/* ---- blob stores ------------------------------------------------------------------------- */

typedef struct scan_acc {
    char keys[16][8];
    size_t n;
} scan_acc;

static int scan_cb(void *arg, const uint8_t *key, size_t klen, const uint8_t *val, size_t vlen)
{
    scan_acc *a = arg;
    if (a->n < 16 && klen < 8) {
        memcpy(a->keys[a->n], key, klen);
        a->keys[a->n][klen] = 0;
    }
    a->n++;
    return 0;
}

static void bs_conformance(cct_bs_kind kind)
{
    cct_env e;
    cct_env_init(&e, kind, CCT_EMB_MEM);
    cc_blobstore bs;
    cct_open_bs(&e, &bs);
    static uint8_t big[300000];
    cct_fill(big, sizeof(big), 7);
    cc_iov parts[2] = {{"head:", 5}, {big, sizeof(big)}};
    cr_assert_eq(cc_blobstore_put(&bs, CC_SPACE_CHUNKS, "k2", 2, parts, 2), RK_OK, "%s", rk_error_msg());
    cc_iov p1 = {"one", 3};
    cr_assert_eq(cc_blobstore_put(&bs, CC_SPACE_CHUNKS, "k1", 2, &p1, 1), RK_OK);
    cc_iov pc = {"cfg", 3};
    cr_assert_eq(cc_blobstore_put(&bs, CC_SPACE_CONFIG, "k1", 2, &pc, 1), RK_OK);

    cc_buf *v;
    cr_assert_eq(cc_blobstore_get(&bs, CC_SPACE_CHUNKS, "k2", 2, &v), RK_OK);
    cr_assert_eq(v->len, 5 + sizeof(big));
    cr_expect(memcmp(v->data, "head:", 5) == 0 && memcmp(v->data + 5, big, sizeof(big)) == 0, "parts gathered");
    cc_buf *v2 = cc_buf_slice(v, 5, sizeof(big));
    cc_buf_release(v);
    cr_expect(memcmp(v2->data, big, sizeof(big)) == 0, "a slice outlives its parent's first reference");
    cc_buf_release(v2);

    cr_assert_eq(cc_blobstore_get(&bs, CC_SPACE_CONFIG, "k1", 2, &v), RK_OK);
    cr_expect(v->len == 3 && memcmp(v->data, "cfg", 3) == 0, "spaces are separate");
    cc_buf_release(v);
    cr_expect_eq(cc_blobstore_get(&bs, CC_SPACE_META, "k1", 2, &v), RK_ERR_NOT_FOUND);
    cr_expect_eq(cc_blobstore_get(&bs, (cc_space)9, "k1", 2, &v), RK_ERR_INVALID);

    /* batch: put k3, delete k1, atomically */
    cc_iov keys[2] = {{"k3", 2}, {"k1", 2}}, vals[2] = {{"three", 5}, {NULL, 0}};
    cr_assert_eq(cc_blobstore_write_batch(&bs, CC_SPACE_CHUNKS, 2, keys, vals), RK_OK);
    cr_expect_eq(cc_blobstore_get(&bs, CC_SPACE_CHUNKS, "k1", 2, &v), RK_ERR_NOT_FOUND);
    scan_acc acc = {0};
    cr_assert_eq(cc_blobstore_scan(&bs, CC_SPACE_CHUNKS, scan_cb, &acc), RK_OK);
    cr_assert_eq(acc.n, 2);
    cr_expect_str_eq(acc.keys[0], "k2", "scan in key order");
    cr_expect_str_eq(acc.keys[1], "k3");
    cr_expect_eq(cc_blobstore_del(&bs, CC_SPACE_CHUNKS, "nope", 4), RK_OK, "deleting a missing key is fine");
    uint64_t u = 0;
    cr_assert_eq(cc_blobstore_usage(&bs, CC_SPACE_CHUNKS, &u), RK_OK);
    cr_expect(u >= sizeof(big) || kind == CCT_BS_ROCKS, "usage counts the values (mem: exact)");

    /* durability across reopen (RocksDB) */
    cc_blobstore_close(&bs);
    if (kind == CCT_BS_ROCKS) {
        cct_open_bs(&e, &bs);
        cr_assert_eq(cc_blobstore_get(&bs, CC_SPACE_CHUNKS, "k3", 2, &v), RK_OK);
        cr_expect(v->len == 5 && memcmp(v->data, "three", 5) == 0);
        cc_buf_release(v);
        cc_blobstore bs2;
        cr_expect_eq(cc_blobstore_rocksdb_open(e.dir, NULL, &bs2), RK_ERR_STORE, "second open is refused (lock)");
        cc_blobstore_close(&bs);
    }
    cct_env_fini(&e);
}

Test(blobstore_mem, conformance) { bs_conformance(CCT_BS_MEM); }
Test(blobstore_rocksdb, conformance) { bs_conformance(CCT_BS_ROCKS); }

/* ---- metadata stores --------------------------------------------------------------------- */

static bool has(cc_metastore *ms, const cc_key *k)
{
    cc_record r;
    rk_status st;
    cr_assert_eq(cc_metastore_get(ms, k, 1, &r, &st), RK_OK);
    cc_record_clear(&r);
    return st == RK_OK;
}

static void ms_conformance(cct_ms_kind kind)
{
    cct_skip_if_unavailable(kind);
    cct_env e;
    cct_env_init(&e, CCT_BS_ROCKS, kind);
    cc_blobstore bs;
    cct_open_bs(&e, &bs);
    cc_metastore ms;
    cct_open_ms(&e, &bs, &ms);

    bool ok = true;
    cr_assert_eq(cc_metastore_intact(&ms, &ok), RK_OK);
    cr_expect(!ok, "a fresh store is not intact until marked");
    cr_assert_eq(cc_metastore_mark_intact(&ms), RK_OK);
    cr_assert_eq(cc_metastore_intact(&ms, &ok), RK_OK);
    cr_expect(ok);

    /* tenants */
    cct_ms_tenant(&ms, "b", 0, 0, CC_QUOTA_REJECT);
    cct_ms_tenant(&ms, "a", 1000, 3, CC_QUOTA_REJECT);
    cc_tenant_info ti;
    cr_assert_eq(cc_metastore_tenant_get(&ms, "a", &ti), RK_OK);
    cr_expect_eq(ti.cfg.max_bytes, 1000);
    cr_expect_eq(ti.cfg.max_chunks, 3);
    cr_expect_eq(ti.chunks, 0);
    cr_expect_eq(cc_metastore_tenant_get(&ms, "zz", &ti), RK_ERR_NOT_FOUND);
    char **names;
    size_t n;
    cr_assert_eq(cc_metastore_tenant_list(&ms, &names, &n), RK_OK);
    cr_assert_eq(n, 2);
    cr_expect_str_eq(names[0], "a");
    cr_expect_str_eq(names[1], "b");
    cc_names_free(names, n);

    /* insert, exists, quota (reject) */
    cc_record r1 = cct_rec("a", 1, 400, 10, false), r2 = cct_rec("a", 2, 400, 10, false), r3 = cct_rec("a", 3, 400, 10, false);
    cr_assert_eq(cc_metastore_insert(&ms, &r1, 0, NULL), RK_OK, "%s", rk_error_msg());
    cr_expect_eq(cc_metastore_insert(&ms, &r1, 0, NULL), RK_ERR_EXISTS);
    cr_assert_eq(cc_metastore_insert(&ms, &r2, 0, NULL), RK_OK);
    cr_expect_eq(cc_metastore_insert(&ms, &r3, 0, NULL), RK_ERR_QUOTA, "1200 bytes > 1000");
    cc_record nobody = cct_rec("ghost", 1, 1, 1, false);
    cr_expect_eq(cc_metastore_insert(&ms, &nobody, 0, NULL), RK_ERR_NOT_FOUND);
    cr_assert_eq(cc_metastore_tenant_get(&ms, "a", &ti), RK_OK);
    cr_expect(ti.bytes == 800 && ti.chunks == 2, "usage %llu/%llu", (unsigned long long)ti.bytes,
              (unsigned long long)ti.chunks);

    /* batch get */
    cc_key ks[3] = {r1.key, r3.key, r2.key};
    cc_record got[3];
    rk_status sts[3];
    cr_assert_eq(cc_metastore_get(&ms, ks, 3, got, sts), RK_OK);
    cr_expect(sts[0] == RK_OK && sts[1] == RK_ERR_NOT_FOUND && sts[2] == RK_OK);
    cr_expect(cc_key_equal(&got[0].key, &r1.key) && got[0].csum == r1.csum && got[0].size == 400);
    cr_expect_str_eq(got[2].ns, "a");
    for (int i = 0; i < 3; i++)
        cc_record_clear(&got[i]);

    /* evict policy: lowest priority goes first; a touched chunk is worth more */
    cr_assert_eq(cc_metastore_tenant_put(&ms, &(cc_tenant_cfg){.name = "a", .max_bytes = 1000, .max_chunks = 3,
                                                               .policy = CC_QUOTA_EVICT}), RK_OK);
    cc_touch t = {.key = r1.key, .n = 5, .now_ms = rk_wall_ms()};
    cr_assert_eq(cc_metastore_touch(&ms, &t, 1), RK_OK);
    cc_evlist ev = {0};
    cr_assert_eq(cc_metastore_insert(&ms, &r3, 0, &ev), RK_OK, "%s", rk_error_msg());
    cr_assert_eq(ev.n, 1);
    cr_expect(cc_key_equal(&ev.items[0].key, &r2.key), "the untouched chunk is evicted");
    cr_expect_eq(ev.items[0].csum, r2.csum);
    cr_expect_eq(ev.items[0].size, 400);
    cc_evlist_free(&ev);
    cr_expect(has(&ms, &r1.key) && !has(&ms, &r2.key) && has(&ms, &r3.key));
    cr_assert_eq(cc_metastore_get(&ms, &r1.key, 1, got, sts), RK_OK);
    cr_expect_eq(got[0].hits, 5);
    cc_record_clear(&got[0]);
    cr_assert_eq(cc_metastore_tenant_get(&ms, "a", &ti), RK_OK);
    cr_expect(ti.bytes == 800 && ti.chunks == 2);
    cr_expect(ti.clock > 0, "the clock advanced to the evicted priority");

    /* another tenant is never touched by a's evictions */
    cc_record b1 = cct_rec("b", 1, 100, 0.001, false);
    cr_assert_eq(cc_metastore_insert(&ms, &b1, 0, NULL), RK_OK);

    /* pinned chunks are never evicted; when pins fill the quota, admission fails */
    cc_record p1 = cct_rec("a", 10, 900, 1, true);
    ev = (cc_evlist){0};
    cr_assert_eq(cc_metastore_insert(&ms, &p1, 0, &ev), RK_OK);
    cr_expect_eq(ev.n, 2, "both unpinned chunks make room");
    cc_evlist_free(&ev);
    cc_record r4 = cct_rec("a", 4, 200, 1000, false);
    cr_expect_eq(cc_metastore_insert(&ms, &r4, 0, NULL), RK_ERR_QUOTA, "pins leave no room");
    cr_expect_eq(cc_metastore_insert(&ms, &r4, CC_INSERT_FORCE, NULL), RK_OK, "force skips the quota");
    cr_expect(has(&ms, &b1.key));

    /* remove with the expected checksum only */
    cr_expect_eq(cc_metastore_remove(&ms, &r4.key, 99, NULL), RK_ERR_NOT_FOUND);
    cc_record rem;
    cr_expect_eq(cc_metastore_remove(&ms, &r4.key, r4.csum, &rem), RK_OK);
    cr_expect(cc_key_equal(&rem.key, &r4.key));
    cc_record_clear(&rem);
    cr_expect_eq(cc_metastore_remove(&ms, &r4.key, 0, NULL), RK_ERR_NOT_FOUND);
    cr_assert_eq(cc_metastore_tenant_get(&ms, "a", &ti), RK_OK);
    cr_expect(ti.bytes == 900 && ti.chunks == 1 && ti.pinned_bytes == 900 && ti.pinned_chunks == 1);

    /* grants */
    bool rd;
    cr_assert_eq(cc_metastore_readable(&ms, "a", "b", &rd), RK_OK);
    cr_expect(!rd);
    cr_assert_eq(cc_metastore_grant(&ms, "b", "a", true), RK_OK);
    cr_assert_eq(cc_metastore_readable(&ms, "a", "b", &rd), RK_OK);
    cr_expect(rd);
    cr_assert_eq(cc_metastore_readable(&ms, "b", "a", &rd), RK_OK);
    cr_expect(!rd, "grants are one-way");
    cr_expect_eq(cc_metastore_grant(&ms, "b", "nobody", true), RK_ERR_NOT_FOUND);
    cr_assert_eq(cc_metastore_grant(&ms, "b", "a", false), RK_OK);
    cr_assert_eq(cc_metastore_readable(&ms, "a", "b", &rd), RK_OK);
    cr_expect(!rd);

    /* evict by bytes, expire by TTL */
    cc_record b2 = cct_rec("b", 2, 100, 5, false), b3 = cct_rec("b", 3, 100, 1, false);
    b3.expires_ms = rk_wall_ms() - 1;
    cr_assert_eq(cc_metastore_insert(&ms, &b2, 0, NULL), RK_OK);
    cr_assert_eq(cc_metastore_insert(&ms, &b3, 0, NULL), RK_OK);
    ev = (cc_evlist){0};
    cr_assert_eq(cc_metastore_expire(&ms, rk_wall_ms(), &ev), RK_OK);
    cr_assert_eq(ev.n, 1);
    cr_expect(cc_key_equal(&ev.items[0].key, &b3.key));
    cc_evlist_free(&ev);
    ev = (cc_evlist){0};
    cr_assert_eq(cc_metastore_evict(&ms, "b", 1, &ev), RK_OK);
    cr_assert_eq(ev.n, 1);
    cr_expect(cc_key_equal(&ev.items[0].key, &b1.key), "b1 (cost 0.001) is worth less than b2");
    cc_evlist_free(&ev);

    /* tenant delete takes its chunks and grants */
    cr_assert_eq(cc_metastore_grant(&ms, "a", "b", true), RK_OK);
    ev = (cc_evlist){0};
    cr_assert_eq(cc_metastore_tenant_del(&ms, "a", &ev), RK_OK);
    cr_expect_eq(ev.n, 1, "the pinned chunk");
    cc_evlist_free(&ev);
    cr_expect(!has(&ms, &p1.key));
    cr_expect_eq(cc_metastore_tenant_get(&ms, "a", &ti), RK_ERR_NOT_FOUND);
    cr_expect_eq(cc_metastore_tenant_del(&ms, "a", NULL), RK_ERR_NOT_FOUND);

    /* persistence (embedded in RocksDB): reopen sees the same state with exact usage */
    if (kind != CCT_EMB_MEM) {
        cc_metastore_close(&ms);
        cct_open_ms(&e, &bs, &ms);
        cr_assert_eq(cc_metastore_intact(&ms, &ok), RK_OK);
        cr_expect(ok);
        cr_assert_eq(cc_metastore_tenant_get(&ms, "b", &ti), RK_OK);
        cr_expect(ti.bytes == 100 && ti.chunks == 1, "usage after reopen %llu/%llu", (unsigned long long)ti.bytes,
                  (unsigned long long)ti.chunks);
        cr_expect(has(&ms, &b2.key));
    }

    /* clear */
    cr_assert_eq(cc_metastore_clear(&ms), RK_OK);
    cr_assert_eq(cc_metastore_intact(&ms, &ok), RK_OK);
    cr_expect(!ok);
    cr_expect(!has(&ms, &b2.key));
    cr_expect_eq(cc_metastore_tenant_get(&ms, "b", &ti), RK_ERR_NOT_FOUND);

    cc_metastore_close(&ms);
    cc_blobstore_close(&bs);
    cct_env_fini(&e);
}

Test(metastore_embedded_mem, conformance) { ms_conformance(CCT_EMB_MEM); }
Test(metastore_embedded_rocksdb, conformance) { ms_conformance(CCT_EMB_ROCKS); }
Test(metastore_redis, conformance) { ms_conformance(CCT_REDIS); }
