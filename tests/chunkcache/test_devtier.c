/* The device tier (ragkv/devtier.h): byte budget and GDSF order, references that keep evicted
 * objects alive, pins, TTLs on an injected clock, drop tickets, many threads at once (run
 * under ASan/UBSan too), and the store keeping it valid: delete, quota eviction, disk-budget
 * eviction, tenant deletion, TTL expiry, repair of a corrupt blob, a new version and a
 * metadata rebuild each drop the chunk's entry. */
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>

#include "cc_testlib.h"

#include "ragkv/devtier.h"
#include "ragkv/hash.h"

/* Test objects: a magic word written and checked while referenced (ASan sees any use after
 * free), and counters of creations and frees. */
#define OBJ_MAGIC 0x0b1ec7u

typedef struct obj {
    unsigned magic;
    int id;
} obj;

static atomic_int n_made, n_freed, n_bad;

static obj *obj_new(int id)
{
    obj *o = malloc(sizeof(*o));
    o->magic = OBJ_MAGIC;
    o->id = id;
    atomic_fetch_add(&n_made, 1);
    return o;
}

/* free_obj: records the ids it freed (for the single-threaded tests) */
typedef struct freelog {
    int ids[256];
    int n;
} freelog;

static void free_obj(void *ctx, void *p)
{
    obj *o = p;
    if (o->magic != OBJ_MAGIC) { /* counted, asserted by the test's thread (this may be another) */
        atomic_fetch_add(&n_bad, 1);
        return;
    }
    freelog *fl = ctx;
    if (fl && fl->n < 256)
        fl->ids[fl->n++] = o->id;
    o->magic = 0;
    free(o);
    atomic_fetch_add(&n_freed, 1);
}

static bool was_freed(const freelog *fl, int id)
{
    for (int i = 0; i < fl->n; i++)
        if (fl->ids[i] == id)
            return true;
    return false;
}

static cc_key key_of(int i)
{
    cc_key k;
    memset(&k, 0, sizeof(k));
    int32_t t = i;
    cr_assert_eq(cc_key_compute("m", "ns", &t, 1, &k), RK_OK);
    return k;
}

static cc_devtier *tier_new(uint64_t budget, freelog *fl, uint64_t (*clk)(void *), void *cctx)
{
    cc_devtier_config c = {.budget_bytes = budget, .free_obj = free_obj, .free_ctx = fl, .now_ms = clk,
                           .clock_ctx = cctx};
    cc_devtier *t;
    cr_assert_eq(cc_devtier_new(&c, &t), RK_OK, "%s", rk_error_msg());
    return t;
}

/* Admit a fresh object id under key_of(id); returns the admit status (frees the object on
 * refusal, as a caller would). */
static rk_status put(cc_devtier *t, int id, uint64_t bytes, double cost, bool pinned, uint64_t expires)
{
    cc_key k = key_of(id);
    obj *o = obj_new(id);
    cc_devtier_meta m = {.bytes = bytes, .cost = cost, .pinned = pinned, .expires_ms = expires};
    rk_status st = cc_devtier_admit(t, &k, o, &m, cc_devtier_ticket(t, &k), NULL);
    if (st != RK_OK)
        free_obj(NULL, o);
    return st;
}

/* get + check + release: true on a hit */
static bool hit(cc_devtier *t, int id)
{
    cc_key k = key_of(id);
    cc_devtier_entry *e;
    if (cc_devtier_get(t, &k, &e) != RK_OK)
        return false;
    obj *o = cc_devtier_entry_obj(e);
    cr_assert_eq(o->magic, OBJ_MAGIC);
    cr_assert_eq(o->id, id);
    cc_devtier_release(t, e);
    return true;
}

Test(devtier, budget_and_gdsf_order)
{
    freelog fl = {0};
    cc_devtier *t = tier_new(1000, &fl, NULL, NULL);
    cr_assert_eq(put(t, 1, 100, 100, false, 0), RK_OK); /* small, expensive */
    for (int i = 0; i < 5; i++)
        cr_assert(hit(t, 1)); /* ... and hit often */
    cr_assert_eq(put(t, 2, 800, 1, false, 0), RK_OK);   /* big, cheap, never hit */
    cc_devtier_stats s;
    cc_devtier_stats_get(t, &s);
    cr_expect(s.bytes == 900 && s.entries == 2 && s.admits == 2 && s.hits == 5);
    /* 300 more bytes: the cold big entry is the least valuable, it goes */
    cr_assert_eq(put(t, 3, 300, 10, false, 0), RK_OK);
    cr_expect(hit(t, 1), "the frequently hit expensive small entry stays");
    cr_expect(!hit(t, 2), "the cold big one was evicted");
    cr_expect(hit(t, 3));
    cr_expect(was_freed(&fl, 2) && fl.n == 1, "the evicted object was freed, only it");
    cc_devtier_stats_get(t, &s);
    cr_expect(s.bytes == 400 && s.entries == 2 && s.evictions == 1 && s.misses == 1 && s.held_bytes == 0,
              "bytes %llu entries %llu evictions %llu", (unsigned long long)s.bytes, (unsigned long long)s.entries,
              (unsigned long long)s.evictions);
    /* refusals: bigger than the budget; or less valuable than everything it would displace
     * (then nothing is evicted for it and the caller keeps its object) */
    cr_expect_eq(put(t, 4, 1001, 1e9, false, 0), RK_ERR_LIMIT);
    cr_expect_eq(put(t, 5, 700, 0.001, false, 0), RK_ERR_LIMIT, "cheap and big: worth less than 1 and 3");
    cr_expect(hit(t, 1) && hit(t, 3), "a refused admission displaced nothing");
    cr_expect_eq(put(t, 1, 10, 1, false, 0), RK_ERR_EXISTS);
    cc_devtier_stats_get(t, &s);
    cr_expect_eq(s.refusals, 3);
    cr_expect_eq(fl.n, 1, "refused objects are not the tier's to free");
    cr_assert_eq(put(t, 6, 700, 700, false, 0), RK_OK); /* fits by evicting 3 (1 is worth more) */
    cr_expect(!hit(t, 3) && hit(t, 1) && hit(t, 6));
    cc_devtier_free(t);
    cr_expect_eq(fl.n, 4, "free releases what was left (1 and 6)");
    cr_expect_eq(atomic_load(&n_bad), 0);
}

Test(devtier, references_keep_evicted_objects_alive)
{
    freelog fl = {0};
    cc_devtier *t = tier_new(1000, &fl, NULL, NULL);
    cc_key k1 = key_of(1), k2 = key_of(2);
    cc_devtier_meta m = {.bytes = 600, .cost = 1};
    obj *o1 = obj_new(1);
    cc_devtier_entry *ref, *again;
    cr_assert_eq(cc_devtier_admit(t, &k1, o1, &m, cc_devtier_ticket(t, &k1), &ref), RK_OK);
    cr_assert_eq(cc_devtier_get(t, &k1, &again), RK_OK);
    cr_expect_eq(cc_devtier_entry_obj(again), o1);
    /* evicted by a more valuable entry while two references are out */
    cr_assert_eq(put(t, 2, 600, 1000, false, 0), RK_OK);
    cr_expect(!hit(t, 1), "out of the tier at once");
    cc_devtier_stats s;
    cc_devtier_stats_get(t, &s);
    cr_expect(s.bytes == 600 && s.held_bytes == 600 && s.evictions == 1);
    cr_expect_eq(fl.n, 0, "not freed while referenced");
    cr_expect_eq(o1->magic, OBJ_MAGIC);
    cc_devtier_release(t, again);
    cr_expect_eq(fl.n, 0, "one reference left");
    cc_devtier_release(t, ref);
    cr_expect(fl.n == 1 && fl.ids[0] == 1, "freed at the last release");
    cc_devtier_stats_get(t, &s);
    cr_expect_eq(s.held_bytes, 0);
    /* the same for a drop */
    cr_assert_eq(cc_devtier_get(t, &k2, &ref), RK_OK);
    cc_devtier_drop(t, &k2);
    cr_expect(!hit(t, 2));
    cr_expect_eq(fl.n, 1);
    cc_devtier_release(t, ref);
    cr_expect(fl.n == 2 && fl.ids[1] == 2);
    cc_devtier_stats_get(t, &s);
    cr_expect(s.drops == 1 && s.entries == 0 && s.bytes == 0 && s.held_bytes == 0);
    cc_devtier_release(t, NULL);
    cc_devtier_free(t);
}

Test(devtier, pinned_entries_are_never_evicted)
{
    freelog fl = {0};
    cc_devtier *t = tier_new(1000, &fl, NULL, NULL);
    cr_assert_eq(put(t, 1, 600, 0.001, true, 0), RK_OK); /* pinned, and worth nothing by GDSF */
    cr_assert_eq(put(t, 2, 300, 1000, false, 0), RK_OK);
    for (int i = 0; i < 10; i++)
        cr_assert(hit(t, 2));
    cr_assert_eq(put(t, 3, 300, 1, false, 0), RK_ERR_LIMIT, "room only by evicting 2, which is worth more");
    cr_assert_eq(put(t, 4, 300, 1e6, false, 0), RK_OK, "worth more than 2: 2 goes, never the pinned one");
    cr_expect(hit(t, 1) && !hit(t, 2) && hit(t, 4));
    cr_expect_eq(put(t, 5, 401, 1e9, false, 0), RK_ERR_LIMIT, "more than the budget left beside the pins");
    cr_expect_eq(put(t, 6, 500, 1e9, true, 0), RK_ERR_LIMIT, "pins cannot outgrow the budget either");
    cr_expect(hit(t, 1) && hit(t, 4), "refusals evicted nothing");
    cc_devtier_stats s;
    cc_devtier_stats_get(t, &s);
    cr_expect(s.pinned_bytes == 600 && s.bytes == 900);
    cc_devtier_drop(t, &(cc_key){0}); /* an absent key: nothing happens */
    cc_key k1 = key_of(1);
    cc_devtier_drop(t, &k1); /* a pinned entry still goes when its chunk does */
    cr_expect(!hit(t, 1));
    cc_devtier_stats_get(t, &s);
    cr_expect(s.pinned_bytes == 0 && s.bytes == 300);
    cc_devtier_free(t);
}

static uint64_t fake_now(void *ctx)
{
    return *(uint64_t *)ctx;
}

Test(devtier, expired_entries_are_misses)
{
    freelog fl = {0};
    uint64_t now = 500;
    cc_devtier *t = tier_new(1000, &fl, fake_now, &now);
    cr_assert_eq(put(t, 1, 100, 1, false, 1000), RK_OK);
    cr_assert_eq(put(t, 2, 100, 1, true, 1000), RK_OK);
    cr_assert_eq(put(t, 3, 100, 1, false, 0), RK_OK);
    cr_expect(hit(t, 1) && hit(t, 2));
    now = 999;
    cr_expect(hit(t, 1) && hit(t, 2), "valid until the expiry");
    now = 1000;
    cr_expect(!hit(t, 1) && !hit(t, 2), "expired: misses, pinned or not");
    cr_expect(hit(t, 3), "no TTL: no expiry");
    cr_expect(was_freed(&fl, 1) && was_freed(&fl, 2));
    cc_devtier_stats s;
    cc_devtier_stats_get(t, &s);
    cr_expect(s.expired == 2 && s.entries == 1 && s.bytes == 100 && s.pinned_bytes == 0);
    cr_expect_eq(put(t, 4, 100, 1, false, 1000), RK_ERR_NOT_FOUND, "already expired: refused");
    cc_devtier_free(t);
}

Test(devtier, tickets_refuse_admissions_across_a_drop)
{
    freelog fl = {0};
    cc_devtier *t = tier_new(1000, &fl, NULL, NULL);
    cc_key k = key_of(7);
    cc_devtier_meta m = {.bytes = 10, .cost = 1};
    uint64_t ticket = cc_devtier_ticket(t, &k);
    cc_devtier_drop(t, &k); /* the chunk was deleted while the caller read it */
    obj *o = obj_new(7);
    cr_expect_eq(cc_devtier_admit(t, &k, o, &m, ticket, NULL), RK_ERR_NOT_FOUND);
    cr_expect_eq(cc_devtier_admit(t, &k, o, &m, cc_devtier_ticket(t, &k), NULL), RK_OK, "a fresh ticket");
    cr_expect(hit(t, 7));
    /* clear: every entry goes, and every older ticket is stale */
    cc_key k8 = key_of(8);
    uint64_t t8 = cc_devtier_ticket(t, &k8);
    cc_devtier_clear(t);
    cr_expect(!hit(t, 7));
    obj *o8 = obj_new(8);
    cr_expect_eq(cc_devtier_admit(t, &k8, o8, &m, t8, NULL), RK_ERR_NOT_FOUND);
    free_obj(NULL, o8);
    /* bad arguments */
    cc_devtier_meta zero = {.bytes = 0, .cost = 1}, nan_cost = {.bytes = 1, .cost = NAN};
    o8 = obj_new(8);
    cr_expect_eq(cc_devtier_admit(t, &k8, o8, &zero, cc_devtier_ticket(t, &k8), NULL), RK_ERR_INVALID);
    cr_expect_eq(cc_devtier_admit(t, &k8, o8, &nan_cost, cc_devtier_ticket(t, &k8), NULL), RK_ERR_INVALID);
    free_obj(NULL, o8);
    cr_expect(fl.n == 1 && fl.ids[0] == 7, "only the admitted object was the tier's to free");
    cc_devtier_config none = {.budget_bytes = 0, .free_obj = free_obj};
    cc_devtier *bad;
    cr_expect_eq(cc_devtier_new(&none, &bad), RK_ERR_INVALID);
    cc_devtier_entry *e;
    cr_expect_eq(cc_devtier_get(t, NULL, &e), RK_ERR_INVALID);
    cc_devtier_free(t);
    cc_devtier_free(NULL);
}

/* ---- many threads -------------------------------------------------------------------------- */

enum { NTHREADS = 4, NKEYS = 48, ROUNDS = 4000 };

typedef struct worker {
    cc_devtier *t;
    int id;
    pthread_barrier_t *start;
    int gets, admits, bad;
} worker;

static void *churn(void *arg)
{
    worker *w = arg;
    uint32_t x = 2654435761u * (uint32_t)(w->id + 1);
    cc_devtier_entry *held[4] = {0};
    pthread_barrier_wait(w->start);
    for (int r = 0; r < ROUNDS; r++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        int id = (int)(x % NKEYS), op = (int)((x >> 8) % 10);
        cc_key k = key_of(id);
        cc_devtier_entry *e = NULL;
        if (op < 6) { /* get: use the object while referenced, keep a few references a while */
            if (cc_devtier_get(w->t, &k, &e) == RK_OK) {
                obj *o = cc_devtier_entry_obj(e);
                w->bad += o->magic != OBJ_MAGIC || o->id != id; /* another key's object, or freed */
                w->gets++;
                int slot = (int)((x >> 16) % 4);
                cc_devtier_release(w->t, held[slot]);
                held[slot] = e;
            } else { /* miss: read the chunk, admit it */
                uint64_t ticket = cc_devtier_ticket(w->t, &k);
                obj *o = obj_new(id);
                cc_devtier_meta m = {.bytes = 64 + (uint64_t)(id % 7) * 32, .cost = 1 + id % 5,
                                     .pinned = id == 0};
                if (cc_devtier_admit(w->t, &k, o, &m, ticket, NULL) == RK_OK)
                    w->admits++;
                else
                    free_obj(NULL, o);
            }
        } else if (op < 9) {
            cc_devtier_drop(w->t, &k);
        } else if (r % 500 == 0) {
            cc_devtier_clear(w->t);
        }
    }
    for (int i = 0; i < 4; i++)
        cc_devtier_release(w->t, held[i]);
    return NULL;
}

Test(devtier, concurrent_get_admit_drop)
{
    atomic_store(&n_made, 0);
    atomic_store(&n_freed, 0);
    atomic_store(&n_bad, 0);
    cc_devtier *t = tier_new(1500, NULL, NULL, NULL); /* room for ~10 of the 48 keys */
    pthread_barrier_t start;
    pthread_barrier_init(&start, NULL, NTHREADS);
    pthread_t th[NTHREADS];
    worker w[NTHREADS];
    for (int i = 0; i < NTHREADS; i++) {
        w[i] = (worker){.t = t, .id = i, .start = &start};
        cr_assert_eq(pthread_create(&th[i], NULL, churn, &w[i]), 0);
    }
    int gets = 0, admits = 0, bad = 0;
    for (int i = 0; i < NTHREADS; i++) {
        pthread_join(th[i], NULL);
        gets += w[i].gets;
        admits += w[i].admits;
        bad += w[i].bad;
    }
    cr_expect_eq(bad, 0, "every hit was its key's live object");
    pthread_barrier_destroy(&start);
    cc_devtier_stats s;
    cc_devtier_stats_get(t, &s);
    cr_expect_gt(gets, 0);
    cr_expect_gt(admits, 0);
    cr_expect_eq(s.admits, (uint64_t)admits);
    cr_expect_eq(s.hits, (uint64_t)gets);
    cr_expect_leq(s.bytes, 1500, "the budget held");
    cr_expect_eq(s.held_bytes, 0, "every reference released");
    cr_expect_eq(s.admits, s.entries + s.evictions + s.drops + s.expired, "every admitted entry accounted for");
    cr_expect_eq(atomic_load(&n_made) - atomic_load(&n_freed), (int)s.entries, "only resident objects are alive");
    cc_devtier_free(t);
    cr_expect_eq(atomic_load(&n_made), atomic_load(&n_freed), "every object freed exactly once");
    cr_expect_eq(atomic_load(&n_bad), 0, "no object freed twice");
}

/* ---- the store keeps the tier valid -------------------------------------------------------- */

/* Admit an object for a stored chunk, as the daemon does after a read from the store. */
static void admit_chunk(cc_devtier *t, const cc_key *k, int id)
{
    obj *o = obj_new(id);
    cc_devtier_meta m = {.bytes = 100, .cost = 8};
    cr_assert_eq(cc_devtier_admit(t, k, o, &m, cc_devtier_ticket(t, k), NULL), RK_OK, "%s", rk_error_msg());
}

static bool resident(cc_devtier *t, const cc_key *k)
{
    cc_devtier_entry *e;
    if (cc_devtier_get(t, k, &e) != RK_OK)
        return false;
    cc_devtier_release(t, e);
    return true;
}

static void t_store_drops(cct_bs_kind bk, cct_ms_kind mk)
{
    cct_skip_if_unavailable(mk);
    freelog fl = {0};
    cc_devtier *t = tier_new(1 << 20, &fl, NULL, NULL);
    cct_env e;
    cct_env_init(&e, bk, mk);
    cc_config cfg = cc_config_default();
    cfg.device = t;
    cfg.disk_budget_bytes = 20000;
    cc_store *s = cct_open_store(&e, &cfg);
    cct_make_tenant(s, "acme", 0, 0, CC_QUOTA_REJECT);
    cct_make_tenant(s, "q", 0, 2, CC_QUOTA_EVICT);
    cct_make_tenant(s, "big", 0, 0, CC_QUOTA_REJECT);
    cct_make_tenant(s, "gone", 0, 0, CC_QUOTA_REJECT);

    /* delete */
    cc_key k[6];
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(cct_put(s, "acme", (uint64_t)i, 1000, 1.0 + i, &k[i]), RK_OK);
        admit_chunk(t, &k[i], i);
    }
    cc_stats cs;
    cc_store_stats(s, &cs);
    cr_expect_eq(cs.device_bytes, 300, "the store reports the device tier's bytes");
    cr_assert_eq(cc_store_delete(s, "acme", &k[1]), RK_OK);
    cr_expect(!resident(t, &k[1]) && resident(t, &k[0]) && resident(t, &k[2]), "delete drops that chunk only");
    cr_expect(was_freed(&fl, 1));

    /* quota eviction: a 3rd chunk over q's 2-chunk quota evicts its lowest-value chunk */
    cc_key kq[3];
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(cct_put(s, "q", 10 + (uint64_t)i, 1000, i ? 50 : 1, &kq[i]), RK_OK, "%s", rk_error_msg());
        if (i < 2)
            admit_chunk(t, &kq[i], 10 + i);
    }
    uint8_t pres[8];
    cr_assert_eq(cc_store_lookup(s, "q", kq, 3, pres), RK_OK);
    cr_assert(!pres[0] && pres[1] && pres[2], "the cheapest chunk (cost 1) was evicted for the quota");
    cr_expect(!resident(t, &kq[0]), "quota eviction drops it from the device tier");
    cr_expect(resident(t, &kq[1]));

    /* disk budget: "big" fills 20000 bytes and then pays for its new chunks itself */
    cc_key kb[8];
    for (int i = 0; i < 8; i++) {
        cr_assert_eq(cct_put(s, "big", 100 + (uint64_t)i, 2500, 1, &kb[i]), RK_OK, "%d: %s", i, rk_error_msg());
        admit_chunk(t, &kb[i], 100 + i);
    }
    cr_assert_eq(cc_store_lookup(s, "big", kb, 8, pres), RK_OK);
    int evicted = 0;
    for (int i = 0; i < 8; i++) {
        evicted += !pres[i];
        cr_expect(pres[i] || !resident(t, &kb[i]), "chunk %d left the disk but not the device tier", i);
    }
    cr_expect_gt(evicted, 0, "the disk budget evicted");

    /* tenant deletion */
    cc_key kg;
    cr_assert_eq(cct_put(s, "gone", 200, 100, 1, &kg), RK_OK);
    admit_chunk(t, &kg, 200);
    cr_assert_eq(cc_store_tenant_delete(s, "gone"), RK_OK);
    cr_expect(!resident(t, &kg), "tenant deletion drops its chunks");

    /* TTL expiry (cc_store_evict), and an expired chunk read through get */
    int32_t tok = 77;
    cc_put_args a = {.model = "m", .tokens = &tok, .ntokens = 1, .blob = "abc", .blob_len = 3, .ttl_ms = 1};
    cc_key kt, kt2;
    cr_assert_eq(cc_store_put(s, "acme", &a, &kt), RK_OK);
    tok = 78;
    cr_assert_eq(cc_store_put(s, "acme", &a, &kt2), RK_OK);
    admit_chunk(t, &kt, 300); /* admitted without the TTL: only the store can expire it */
    admit_chunk(t, &kt2, 301);
    uint64_t t0 = rk_wall_ms();
    while (rk_wall_ms() < t0 + 3) {
        /* the expiry is the behaviour under test: wait for the wall clock to pass it */
    }
    cc_buf *b;
    cr_expect_eq(cc_store_get(s, "acme", &kt2, &b, NULL), RK_ERR_NOT_FOUND);
    cr_expect(!resident(t, &kt2), "an expired chunk found by get is dropped");
    uint64_t removed = 0;
    cr_assert_eq(cc_store_evict(s, &removed), RK_OK);
    cr_expect_geq(removed, 1);
    cr_expect(!resident(t, &kt), "expiry drops it");

    /* repair: a corrupt blob is found by a read from disk */
    cc_store_drop_ram(s);
    cct_corrupt(s, &k[2], 2, 1000, 1, 1);
    cr_expect_eq(cc_store_get(s, "acme", &k[2], &b, NULL), RK_ERR_NOT_FOUND);
    cr_expect(!resident(t, &k[2]), "repair drops it");

    /* a new version of a chunk (stored again after its delete) leaves nothing stale */
    cr_assert_eq(cc_store_delete(s, "acme", &k[0]), RK_OK);
    admit_chunk(t, &k[0], 0); /* as if admitted from a read that raced the delete */
    cr_assert_eq(cct_put(s, "acme", 0, 900, 1, NULL), RK_OK);
    cr_expect(!resident(t, &k[0]), "a put of a new version drops what was decoded before");

    /* metadata rebuild (the metadata store was flushed): the tier starts over */
    admit_chunk(t, &k[0], 0);
    cr_assert_eq(cc_store_rebuild(s), RK_OK, "%s", rk_error_msg());
    cr_expect(!resident(t, &k[0]), "a rebuild clears the device tier");
    cc_store_stats(s, &cs);
    cr_expect_eq(cs.device_bytes, 0);

    cc_store_close(s);
    cct_env_fini(&e);
    cc_devtier_stats ds;
    cc_devtier_stats_get(t, &ds);
    cr_expect_eq(ds.entries, 0);
    cc_devtier_free(t);
}

Test(devtier, store_drops_mem_embedded) { t_store_drops(CCT_BS_MEM, CCT_EMB_MEM); }
Test(devtier, store_drops_rocksdb_embedded) { t_store_drops(CCT_BS_ROCKS, CCT_EMB_ROCKS); }
Test(devtier, store_drops_rocksdb_redis) { t_store_drops(CCT_BS_ROCKS, CCT_REDIS); }
