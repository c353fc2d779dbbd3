/* store.c — cc_store: tiers, admission, eviction, repair, rebuild (see ragkv/chunkcache.h).
 *
 * Locks (always taken in this order):
 *   gate    rwlock. Every public operation holds it shared; rebuild holds it exclusive, so
 *           nothing reads half-rebuilt metadata. (The event-loop variants, …_async, hold
 *           no gate: see their section.)
 *   ram_mu  mutex. Guards the RAM tier (map, heap, bytes, clock), the buffered touches and
 *           the flusher's stop flag. Never held across a backend call.
 * The backends are thread-safe on their own. */
#define RK_LOG_COMPONENT "cc.store"
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

#include "gdsf_heap.h"
#include "keymap.h"
#include "ragkv/alloc.h"
#include "ragkv/chunkcache.h"
#include "ragkv/clock.h"
#include "ragkv/crashpoint.h"
#include "ragkv/hash.h"
#include "ragkv/log.h"
#include "ragkv/redis_async.h"

#define BKEY_LEN (CC_KEY_BYTES + 8) /* blob store key: chunk key || blob checksum (LE) */

typedef struct ram_ent {
    cc_hnode hn;   /* GDSF priority in the RAM tier, and the entry's place in the heap */
    cc_buf *blob;  /* the blob bytes (a reference) */
    cc_record rec; /* its record (owned copy) */
    uint64_t hits; /* hits while resident */
} ram_ent;

typedef struct counters {
    atomic_uint_fast64_t puts, put_dups, quota_rejects, gets, ram_hits, disk_hits, misses, corrupt,
        repairs, evicted_quota, evicted_disk, expired, ram_evictions, rebuilds, gc_removed;
} counters;

struct cc_store {
    cc_config cfg;           /* copy of the configuration (strings not used after open) */
    cc_blobstore bs;         /* owned */
    cc_metastore ms;         /* owned; closed before bs */
    pthread_rwlock_t gate;   /* see the top of the file */
    pthread_mutex_t ram_mu;  /* see the top of the file */
    cc_keymap ram;           /* key[32] -> ram_ent* */
    cc_heap heap;            /* the RAM tier's entries by GDSF priority (ram_ent.hn) */
    uint64_t ram_bytes;      /* sum of blob lengths in the RAM tier */
    double ram_clock;        /* GDSF clock of the RAM tier */
    cc_touch *pend;          /* (npend) buffered hit counts */
    size_t npend, cappend;
    pthread_t flusher;       /* sends full touch buffers to the metadata store, off the read path */
    pthread_cond_t flush_cv; /* signalled (under ram_mu) when the buffer is full or at close */
    bool flusher_on;         /* the flusher thread was started */
    bool stopping;           /* close asked the flusher to exit (under ram_mu) */
    atomic_uint_fast64_t disk_bytes; /* blob bytes accounted on disk (sum over tenants) */
    atomic_bool lock_warned; /* a page-locked RAM copy failed once (logged once) */
    counters st;             /* statistics */
};

#define BUMP(s, f, n) atomic_fetch_add_explicit(&(s)->st.f, (n), memory_order_relaxed)

/* Defaults documented field by field in ragkv/chunkcache.h. */
cc_config cc_config_default(void)
{
    cc_config c;
    memset(&c, 0, sizeof(c));
    c.redis_prefix = "rk:";
    c.redis = cc_redis_opts_default();
    c.rocks = cc_blobstore_opts_default();
    c.ram_budget_bytes = 256ull << 20;
    c.gc_grace_ms = 60000;
    c.touch_batch = 64;
    c.ram_on_put = true;
    return c;
}

/* The blob store key of one version of a chunk: key || checksum (LE). */
static void bkey_make(uint8_t out[BKEY_LEN], const cc_key *k, uint64_t csum)
{
    memcpy(out, k->b, CC_KEY_BYTES);
    rk_put_le64(out + CC_KEY_BYTES, csum);
}

/* RK_ERR_INVALID unless s is a non-empty name of at most CC_NAME_MAX bytes. */
static rk_status check_name(const char *what, const char *s)
{
    size_t n = s ? strnlen(s, CC_NAME_MAX + 1) : 0;
    if (!n || n > CC_NAME_MAX)
        return rk_error_set(RK_ERR_INVALID, "%s: empty or longer than %d bytes", what, CC_NAME_MAX);
    return RK_OK;
}

/* ---- RAM tier (caller holds ram_mu for the do_ functions) ----------------------------------- */

/* Release an entry that is in neither the map nor the heap. */
static void ram_ent_free(ram_ent *e)
{
    cc_buf_release(e->blob);
    cc_record_clear(&e->rec);
    rk_free(e);
}

/* Remove key from the RAM tier if present. Caller holds ram_mu. */
static void do_ram_drop(cc_store *s, const cc_key *key)
{
    ram_ent *e = cc_keymap_del(&s->ram, key->b, CC_KEY_BYTES);
    if (!e)
        return;
    cc_heap_remove(&s->heap, &e->hn);
    s->ram_bytes -= e->blob->len;
    ram_ent_free(e);
}

/* do_ram_drop under ram_mu. */
static void ram_drop(cc_store *s, const cc_key *key)
{
    pthread_mutex_lock(&s->ram_mu);
    do_ram_drop(s, key);
    pthread_mutex_unlock(&s->ram_mu);
}

/* GDSF priority of a RAM entry against the RAM tier clock. Caller holds ram_mu. */
static double ram_prio(cc_store *s, const ram_ent *e)
{
    return cc_gdsf_priority(s->ram_clock, e->hits + 1, e->rec.cost, e->rec.size);
}

/* A RAM-tier hit on e (ram_mu held): its hit count and eviction priority. */
static void ram_touch(cc_store *s, ram_ent *e)
{
    e->hits++;
    e->hn.prio = ram_prio(s, e);
    cc_heap_fix(&s->heap, &e->hn);
}

/* The form blob takes in the RAM tier (takes over the reference): with ram_page_locked, a copy
 * in page-locked memory, which a GPU loader uploads by DMA while the host goes on; the blob
 * itself when the tier would not take it or no such memory is to be had (logged once). */
static cc_buf *ram_form(cc_store *s, cc_buf *blob)
{
    if (!s->cfg.ram_page_locked || !s->cfg.ram_budget_bytes || blob->len > s->cfg.ram_budget_bytes)
        return blob;
    cc_buf *l = cc_buf_copy_locked(blob->data, blob->len);
    if (!l) {
        if (!atomic_exchange(&s->lock_warned, true))
            RK_WARN("RAM tier: no page-locked memory (%s); chunks stay in pageable memory", rk_error_msg());
        return blob;
    }
    cc_buf_release(blob);
    return l;
}

/* Admit blob (takes over the reference) for rec. Lowest-priority entries leave first. */
static void ram_admit(cc_store *s, const cc_record *rec, cc_buf *blob)
{
    uint64_t budget = s->cfg.ram_budget_bytes;
    if (!budget || blob->len > budget) {
        cc_buf_release(blob);
        return;
    }
    ram_ent *e = rk_calloc(1, sizeof(*e));
    if (!e || cc_record_copy(&e->rec, rec) != RK_OK) {
        rk_free(e);
        cc_buf_release(blob);
        return;
    }
    e->blob = blob;
    pthread_mutex_lock(&s->ram_mu);
    if (cc_keymap_get(&s->ram, rec->key.b, CC_KEY_BYTES)) {
        pthread_mutex_unlock(&s->ram_mu);
        ram_ent_free(e);
        return;
    }
    if (cc_heap_reserve(&s->heap) != RK_OK || cc_keymap_put(&s->ram, rec->key.b, CC_KEY_BYTES, e, NULL) != RK_OK) {
        pthread_mutex_unlock(&s->ram_mu);
        ram_ent_free(e);
        return;
    }
    e->hn.prio = ram_prio(s, e);
    cc_heap_push(&s->heap, &e->hn);
    s->ram_bytes += blob->len;
    while (s->ram_bytes > budget && s->heap.n > 0) {
        ram_ent *v = CC_HEAP_ENTRY(s->heap.v[0], ram_ent, hn);
        s->ram_clock = v->hn.prio;
        do_ram_drop(s, &v->rec.key);
        BUMP(s, ram_evictions, 1);
    }
    pthread_mutex_unlock(&s->ram_mu);
}

/* See ragkv/chunkcache.h. */
void cc_store_drop_ram(cc_store *s)
{
    pthread_mutex_lock(&s->ram_mu);
    while (s->heap.n)
        do_ram_drop(s, &CC_HEAP_ENTRY(s->heap.v[0], ram_ent, hn)->rec.key);
    pthread_mutex_unlock(&s->ram_mu);
}

/* ---- touches ----------------------------------------------------------------------------- */

/* Send buffered touches (caller holds the gate shared). */
static rk_status flush_touches(cc_store *s)
{
    pthread_mutex_lock(&s->ram_mu);
    cc_touch *t = s->pend;
    size_t n = s->npend;
    s->pend = NULL;
    s->npend = s->cappend = 0;
    pthread_mutex_unlock(&s->ram_mu);
    rk_status st = n ? cc_metastore_touch(&s->ms, t, n) : RK_OK;
    rk_free(t);
    return st;
}

/* Count a hit; flushes when the buffer is full. */
static void count_hit(cc_store *s, const cc_key *key)
{
    bool full = false;
    pthread_mutex_lock(&s->ram_mu);
    if (s->npend == s->cappend) {
        size_t cap = s->cappend ? 2 * s->cappend : 64;
        cc_touch *p = rk_realloc(s->pend, cap * sizeof(*p));
        if (p) {
            s->pend = p;
            s->cappend = cap;
        }
    }
    if (s->npend < s->cappend) {
        s->pend[s->npend].key = *key;
        s->pend[s->npend].n = 1;
        s->pend[s->npend].now_ms = rk_wall_ms();
        s->npend++;
    }
    full = s->npend >= (s->cfg.touch_batch ? s->cfg.touch_batch : 1);
    if (full && s->flusher_on)
        pthread_cond_signal(&s->flush_cv);
    pthread_mutex_unlock(&s->ram_mu);
    if (full && !s->flusher_on && flush_touches(s) != RK_OK)
        RK_WARN("hit counts not recorded: %s", rk_error_msg());
}

/* The flusher thread: waits for a full buffer, sends it under the shared gate (so never
 * during a rebuild), until close. A read never waits for Redis to count its hit. */
static void *flusher_main(void *arg)
{
    cc_store *s = arg;
    uint32_t batch = s->cfg.touch_batch ? s->cfg.touch_batch : 1;
    pthread_mutex_lock(&s->ram_mu);
    while (!s->stopping) {
        if (s->npend < batch) {
            pthread_cond_wait(&s->flush_cv, &s->ram_mu);
            continue;
        }
        pthread_mutex_unlock(&s->ram_mu);
        pthread_rwlock_rdlock(&s->gate);
        if (flush_touches(s) != RK_OK)
            RK_WARN("hit counts not recorded: %s", rk_error_msg());
        pthread_rwlock_unlock(&s->gate);
        pthread_mutex_lock(&s->ram_mu);
    }
    pthread_mutex_unlock(&s->ram_mu);
    return NULL;
}

/* ---- removal ----------------------------------------------------------------------------- */

/* Chunks the metadata no longer has: delete their blobs, drop them from RAM and the device
 * tier, unaccount. */
static void apply_removed(cc_store *s, const cc_evlist *ev)
{
    for (size_t i = 0; i < ev->n; i++) {
        uint8_t bk[BKEY_LEN];
        bkey_make(bk, &ev->items[i].key, ev->items[i].csum);
        if (cc_blobstore_del(&s->bs, CC_SPACE_CHUNKS, bk, BKEY_LEN) != RK_OK)
            RK_WARN("blob delete failed (gc will collect it): %s", rk_error_msg());
        ram_drop(s, &ev->items[i].key);
        cc_devtier_drop(s->cfg.device, &ev->items[i].key);
        uint64_t cur = atomic_load(&s->disk_bytes);
        uint64_t sz = ev->items[i].size;
        while (!atomic_compare_exchange_weak(&s->disk_bytes, &cur, cur > sz ? cur - sz : 0)) {
        }
    }
}

/* Metadata whose blob is missing or corrupt: remove that exact version. */
static void repair(cc_store *s, const cc_record *r, bool delete_blob)
{
    if (delete_blob) {
        uint8_t bk[BKEY_LEN];
        bkey_make(bk, &r->key, r->csum);
        cc_blobstore_del(&s->bs, CC_SPACE_CHUNKS, bk, BKEY_LEN);
    }
    if (cc_metastore_remove(&s->ms, &r->key, r->csum, NULL) == RK_OK) {
        BUMP(s, repairs, 1);
        cc_evlist one = {0};
        cc_evlist_push(&one, &r->key, r->csum, r->size);
        ram_drop(s, &r->key);
        cc_devtier_drop(s->cfg.device, &r->key);
        uint64_t cur = atomic_load(&s->disk_bytes);
        while (!atomic_compare_exchange_weak(&s->disk_bytes, &cur, cur > r->size ? cur - r->size : 0)) {
        }
        cc_evlist_free(&one);
    }
}

/* ---- disk budget ------------------------------------------------------------------------- */

/* Make room for `need` bytes under the disk budget by evicting from the namespaces that
 * use the most bytes (so a small tenant is never pushed out by a big one). */
static rk_status make_room(cc_store *s, uint64_t need)
{
    uint64_t budget = s->cfg.disk_budget_bytes;
    if (!budget)
        return RK_OK;
    if (need > budget)
        return rk_error_set(RK_ERR_LIMIT, "chunk of %llu bytes exceeds the disk budget", (unsigned long long)need);
    for (int round = 0; round < 64 && atomic_load(&s->disk_bytes) + need > budget; round++) {
        char **names = NULL;
        size_t n = 0;
        rk_status st = cc_metastore_tenant_list(&s->ms, &names, &n);
        if (st != RK_OK)
            return st;
        char best[CC_NAME_MAX + 1] = "";
        uint64_t best_bytes = 0;
        for (size_t i = 0; i < n; i++) {
            cc_tenant_info ti;
            if (cc_metastore_tenant_get(&s->ms, names[i], &ti) == RK_OK &&
                ti.bytes - ti.pinned_bytes > best_bytes) {
                best_bytes = ti.bytes - ti.pinned_bytes;
                snprintf(best, sizeof(best), "%s", names[i]);
            }
        }
        cc_names_free(names, n);
        if (!best_bytes)
            return rk_error_set(RK_ERR_LIMIT, "disk budget full of pinned chunks");
        cc_evlist ev = {0};
        uint64_t want = atomic_load(&s->disk_bytes) + need - budget;
        st = cc_metastore_evict(&s->ms, best, want, &ev);
        BUMP(s, evicted_disk, ev.n);
        apply_removed(s, &ev);
        cc_evlist_free(&ev);
        if (st != RK_OK)
            return st;
    }
    return RK_OK;
}

/* ---- put --------------------------------------------------------------------------------- */

/* A put between its blob write and its finish (ragkv/chunkcache.h). */
struct cc_put_txn {
    cc_record rec;        /* the record to commit (owned: Cache-Craft bytes copied) */
    rk_buf v;             /* the value written: record header then blob (the RAM tier keeps it) */
    size_t hdr;           /* header bytes in v */
    uint8_t bk[BKEY_LEN]; /* its blob store key */
    rk_status commit;     /* the commit's outcome; RK_ERR_CANCELLED until there is one */
    char msg[256];        /* its message */
    cc_evlist ev;         /* chunks the commit evicted */
    bool cur_known;       /* RK_ERR_EXISTS: the stored version's checksum was read */
    uint64_t cur_csum;    /* ... and is this */
};

/* Steps 1-3 of a put: check, key, the value built once, room under the disk budget, the blob
 * written. On RK_OK *tx is the pending put. */
static rk_status put_write(cc_store *s, const char *tenant, const cc_put_args *a, cc_put_txn **tx)
{
    rk_status st;
    if ((st = check_name("tenant", tenant)) != RK_OK)
        return st;
    if (!a || (st = check_name("model id", a->model)) != RK_OK)
        return a ? st : rk_error_set(RK_ERR_INVALID, "put: no arguments");
    if ((!a->blob && a->blob_len) || (!a->tokens && a->ntokens) || !(a->cost >= 0) || !isfinite(a->cost) ||
        a->craft_len > CC_OPAQUE_MAX || a->variants_len > CC_OPAQUE_MAX || (!a->craft && a->craft_len) ||
        (!a->variants && a->variants_len) || a->ntokens > UINT32_MAX)
        return rk_error_set(RK_ERR_INVALID, "put: bad blob, tokens, cost or Cache-Craft fields");
    const char *ns = a->ns ? a->ns : tenant;
    if (strcmp(ns, tenant) != 0)
        return rk_error_set(RK_ERR_DENIED, "put: tenant '%s' may not write namespace '%s'", tenant, ns);
    cc_record r;
    cc_record_init(&r);
    if ((st = cc_key_compute(a->model, ns, a->tokens, a->ntokens, &r.key)) != RK_OK)
        return st;
    snprintf(r.ns, sizeof(r.ns), "%s", ns);
    snprintf(r.model, sizeof(r.model), "%s", a->model);
    r.ntokens = (uint32_t)a->ntokens;
    r.codec = a->codec;
    r.level = a->level;
    r.size = a->blob_len;
    r.csum = rk_xxh3_64(a->blob, a->blob_len);
    r.created_ms = rk_wall_ms();
    r.expires_ms = a->ttl_ms ? r.created_ms + a->ttl_ms : 0;
    r.flags = a->pinned ? CC_RECORD_FLAG_PINNED : 0;
    r.cost = a->cost;
    r.craft = (uint8_t *)a->craft; /* borrowed for the encoding only */
    r.craft_len = (uint32_t)a->craft_len;
    r.variants = (uint8_t *)a->variants;
    r.variants_len = (uint32_t)a->variants_len;

    /* the value: record header then blob, built once; the RAM tier keeps the same bytes */
    rk_buf v = RK_BUF_INIT;
    st = cc_record_encode(&r, &v);
    size_t hdr = v.len;
    rk_buf_append(&v, a->blob, a->blob_len);
    if (st == RK_OK && v.failed)
        st = rk_error_set(RK_ERR_NOMEM, "put: %zu-byte value", a->blob_len);
    if (st != RK_OK)
        goto out;
    if ((st = make_room(s, r.size)) != RK_OK)
        goto out;
    uint8_t bk[BKEY_LEN];
    bkey_make(bk, &r.key, r.csum);
    cc_iov part = {v.data, v.len};
    if ((st = cc_blobstore_put(&s->bs, CC_SPACE_CHUNKS, bk, BKEY_LEN, &part, 1)) != RK_OK)
        goto out;
    RK_CRASHPOINT("put_blob_written"); /* an orphan blob: gc's to remove, never served */
    cc_put_txn *t = rk_calloc(1, sizeof(*t));
    if (!t || cc_record_copy(&t->rec, &r) != RK_OK) {
        rk_free(t);
        cc_blobstore_del(&s->bs, CC_SPACE_CHUNKS, bk, BKEY_LEN); /* never admitted: not an orphan */
        st = rk_error_set(RK_ERR_NOMEM, "put");
        goto out;
    }
    t->v = v; /* the value moves into the pending put */
    v = (rk_buf)RK_BUF_INIT;
    t->hdr = hdr;
    memcpy(t->bk, bk, BKEY_LEN);
    t->commit = RK_ERR_CANCELLED;
    *tx = t;
out:
    rk_buf_free(&v);
    return st;
}

/* Record the commit's outcome (with the calling thread's message) in t. */
static void put_committed(cc_put_txn *t, rk_status st)
{
    t->commit = st;
    snprintf(t->msg, sizeof(t->msg), "%s", st == RK_OK || st == RK_ERR_EXISTS ? "" : rk_error_msg());
    if (st == RK_OK)
        RK_CRASHPOINT("put_meta_committed"); /* stored, unacknowledged; evictees' blobs orphans */
}

/* Step 4 through the store's metadata store (caller holds the gate shared). */
static void put_commit(cc_store *s, cc_put_txn *t)
{
    cc_evlist_free(&t->ev);
    rk_status st = cc_metastore_insert(&s->ms, &t->rec, 0, &t->ev);
    put_committed(t, st);
    if (st == RK_ERR_EXISTS) { /* whose blob stays depends on the version stored */
        cc_record cur;
        rk_status gs;
        t->cur_known = cc_metastore_get(&s->ms, &t->rec.key, 1, &cur, &gs) == RK_OK && gs == RK_OK;
        if (t->cur_known) {
            t->cur_csum = cur.csum;
            cc_record_clear(&cur);
        }
    }
}

/* See ragkv/chunkcache.h (cc_put_txn_blocking). */
static bool put_blocking(const cc_put_txn *t)
{
    if (t->commit == RK_OK)
        return t->ev.n > 0; /* the evicted chunks' blobs */
    if (t->commit == RK_ERR_EXISTS)
        return t->cur_known && t->cur_csum != t->rec.csum; /* ours lost to another version */
    return true; /* never admitted: our blob is deleted */
}

/* Steps 5-6 of a put: act on the commit's outcome, then free t. */
static rk_status put_finish(cc_store *s, cc_put_txn *t, cc_key *out)
{
    cc_record r = t->rec; /* a view: t keeps its Cache-Craft bytes */
    rk_buf v = t->v;      /* the value (the RAM tier may take it) */
    size_t hdr = t->hdr;
    const uint8_t *bk = t->bk;
    cc_evlist ev = t->ev;
    rk_status st = t->commit == RK_OK ? RK_OK : rk_error_set(t->commit, "%s", t->msg);
    if (st == RK_ERR_EXISTS) {
        /* someone stored this chunk first; keep theirs, drop ours unless it is the same blob */
        if (t->cur_known && t->cur_csum != r.csum)
            cc_blobstore_del(&s->bs, CC_SPACE_CHUNKS, bk, BKEY_LEN);
        BUMP(s, put_dups, 1);
        st = RK_OK;
    } else if (st != RK_OK) {
        rk_status keep = st;
        char msg[256];
        snprintf(msg, sizeof(msg), "%s", rk_error_msg());
        cc_blobstore_del(&s->bs, CC_SPACE_CHUNKS, bk, BKEY_LEN); /* never admitted: not an orphan */
        if (st == RK_ERR_QUOTA)
            BUMP(s, quota_rejects, 1);
        st = rk_error_set(keep, "%s", msg);
    } else {
        BUMP(s, puts, 1);
        cc_devtier_drop(s->cfg.device, &r.key); /* a new version: whatever was decoded before is not it */
        atomic_fetch_add(&s->disk_bytes, r.size);
        BUMP(s, evicted_quota, ev.n);
        apply_removed(s, &ev);
        if (s->cfg.ram_on_put && s->cfg.ram_budget_bytes >= r.size) {
            size_t len;
            uint8_t *p = rk_buf_steal(&v, &len);
            cc_buf *whole = cc_buf_wrap(p, len);
            if (!whole)
                rk_free(p);
            cc_buf *blob = whole ? cc_buf_slice(whole, hdr, r.size) : NULL;
            cc_buf_release(whole);
            if (blob)
                ram_admit(s, &r, ram_form(s, blob));
        }
    }
    cc_evlist_free(&ev);
    if (st == RK_OK && out)
        *out = r.key;
    rk_buf_free(&v);
    cc_record_clear(&t->rec);
    rk_free(t);
    return st;
}

/* cc_store_put under the gate: the steps in a row. */
static rk_status do_put(cc_store *s, const char *tenant, const cc_put_args *a, cc_key *out)
{
    cc_put_txn *t;
    rk_status st = put_write(s, tenant, a, &t);
    if (st != RK_OK)
        return st;
    put_commit(s, t);
    return put_finish(s, t, out);
}

/* ---- get --------------------------------------------------------------------------------- */

/* The one answer for "absent", "expired", "corrupt" and "not yours". */
static rk_status miss(cc_store *s)
{
    BUMP(s, misses, 1);
    return RK_ERR_NOT_FOUND;
}

/* May tenant read namespace ns? Own namespace without a round trip, else a grant lookup. */
static rk_status readable(cc_store *s, const char *tenant, const char *ns, bool *ok)
{
    if (strcmp(tenant, ns) == 0) {
        *ok = true;
        return RK_OK;
    }
    return cc_metastore_readable(&s->ms, tenant, ns, ok);
}

/* A metadata record that exists but does not decode (flipped bytes in Redis, or a record
 * under the wrong key) is a miss like any other; count it with the corrupt blobs so that
 * /metrics shows it. */
static void note_bad_record(cc_store *s, rk_status gs)
{
    if (gs == RK_OK || gs == RK_ERR_NOT_FOUND) /* RK_OK: an expired record, not a damaged one */
        return;
    RK_WARN("chunk metadata record unreadable (%s): treated as a miss", rk_status_name(gs));
    BUMP(s, corrupt, 1);
}

/* The namespace equal_cost_miss asks about; whether it exists does not matter. */
static const char no_ns[] = "\001absent";

/* The grant check a chunk of another namespace costs, spent on a chunk that is absent, so that
 * "absent" and "another tenant's" take the same metadata round trips (a timing side channel
 * otherwise: tests/service/test_isolation.c measured ~30 us per Redis round trip). The answer
 * is ignored: the caller reports a miss either way. */
static void equal_cost_miss(cc_store *s, const char *tenant)
{
    bool ok;
    (void)cc_metastore_readable(&s->ms, tenant, no_ns, &ok);
}

/* True when r has a TTL that passed at wall-clock time now (ms). */
static bool expired(const cc_record *r, uint64_t now)
{
    return r->expires_ms && r->expires_ms <= now;
}

/* The blob of record r from the blob store: checksum verified (a missing or corrupt blob is a
 * miss and repaired), admitted to the RAM tier, the hit counted. r stays the caller's. */
static rk_status read_blob(cc_store *s, const cc_record *r, cc_buf **blob)
{
    uint8_t bk[BKEY_LEN];
    bkey_make(bk, &r->key, r->csum);
    cc_buf *whole;
    rk_status st = cc_blobstore_get(&s->bs, CC_SPACE_CHUNKS, bk, BKEY_LEN, &whole);
    if (st == RK_ERR_NOT_FOUND) {
        RK_WARN("chunk metadata without its blob: repaired");
        repair(s, r, false);
        return miss(s);
    }
    if (st != RK_OK)
        return st;
    cc_record hdr;
    size_t used = 0;
    bool good = cc_record_decode(whole->data, whole->len, &hdr, &used) == RK_OK;
    if (good) {
        good = cc_key_equal(&hdr.key, &r->key) && hdr.csum == r->csum && hdr.size == r->size &&
               whole->len - used == r->size && rk_xxh3_64(whole->data + used, r->size) == r->csum;
        cc_record_clear(&hdr);
    }
    if (!good) {
        RK_WARN("chunk blob failed its checksum: deleted, metadata repaired");
        BUMP(s, corrupt, 1);
        cc_buf_release(whole);
        repair(s, r, true);
        return miss(s);
    }
    cc_buf *b = cc_buf_slice(whole, used, r->size);
    cc_buf_release(whole);
    if (!b)
        return rk_error_set(RK_ERR_NOMEM, "get: buffer");
    b = ram_form(s, b); /* this read gets the tier's form too */
    ram_admit(s, r, cc_buf_ref(b));
    count_hit(s, &r->key);
    BUMP(s, disk_hits, 1);
    *blob = b;
    return RK_OK;
}

/* cc_store_get under the gate: RAM tier, else metadata + blob store with checksum
 * verification, repair of missing/corrupt blobs, and admission to the RAM tier. */
static rk_status do_get(cc_store *s, const char *tenant, const cc_key *key, cc_buf **blob, cc_record *rec_out)
{
    rk_status st;
    if ((st = check_name("tenant", tenant)) != RK_OK)
        return st;
    if (!key || !blob)
        return rk_error_set(RK_ERR_INVALID, "get: no key or output");
    BUMP(s, gets, 1);
    uint64_t now = rk_wall_ms();

    /* RAM tier */
    char ns[CC_NAME_MAX + 1];
    cc_buf *b = NULL;
    cc_record r;
    cc_record_init(&r);
    pthread_mutex_lock(&s->ram_mu);
    ram_ent *e = cc_keymap_get(&s->ram, key->b, CC_KEY_BYTES);
    if (e && !expired(&e->rec, now)) {
        b = cc_buf_ref(e->blob);
        memcpy(ns, e->rec.ns, sizeof(ns));
        if (rec_out && cc_record_copy(&r, &e->rec) != RK_OK) {
            cc_buf_release(b);
            b = NULL;
        }
    }
    pthread_mutex_unlock(&s->ram_mu);
    if (b) {
        bool ok;
        if ((st = readable(s, tenant, ns, &ok)) != RK_OK || !ok) {
            cc_buf_release(b);
            cc_record_clear(&r);
            if (st == RK_OK) { /* the record read an absent chunk costs, so both take as long */
                rk_status gs;
                if (cc_metastore_get(&s->ms, key, 1, &r, &gs) == RK_OK && gs == RK_OK)
                    cc_record_clear(&r);
            }
            return st != RK_OK ? st : miss(s);
        }
        pthread_mutex_lock(&s->ram_mu);
        if ((e = cc_keymap_get(&s->ram, key->b, CC_KEY_BYTES)) != NULL)
            ram_touch(s, e);
        pthread_mutex_unlock(&s->ram_mu);
        count_hit(s, key);
        BUMP(s, ram_hits, 1);
        *blob = b;
        if (rec_out)
            *rec_out = r;
        return RK_OK;
    }

    /* metadata, then the blob store */
    rk_status gs;
    if ((st = cc_metastore_get(&s->ms, key, 1, &r, &gs)) != RK_OK)
        return st;
    if (gs != RK_OK) {
        note_bad_record(s, gs);
        equal_cost_miss(s, tenant);
        return miss(s);
    }
    bool ok;
    if ((st = readable(s, tenant, r.ns, &ok)) != RK_OK || !ok) {
        cc_record_clear(&r);
        return st != RK_OK ? st : miss(s);
    }
    if (expired(&r, now)) {
        repair(s, &r, true);
        cc_record_clear(&r);
        return miss(s);
    }
    if ((st = read_blob(s, &r, blob)) != RK_OK || !rec_out)
        cc_record_clear(&r);
    else
        *rec_out = r;
    return st;
}

/* cc_store_read under the gate: a record the caller resolved (readable, not expired). */
static rk_status do_read(cc_store *s, const cc_record *rec, cc_buf **blob)
{
    if (!rec || !blob)
        return rk_error_set(RK_ERR_INVALID, "read: no record or output");
    BUMP(s, gets, 1);
    cc_buf *b = NULL;
    pthread_mutex_lock(&s->ram_mu);
    ram_ent *e = cc_keymap_get(&s->ram, rec->key.b, CC_KEY_BYTES);
    if (e && e->rec.csum == rec->csum) {
        b = cc_buf_ref(e->blob);
        ram_touch(s, e);
    }
    pthread_mutex_unlock(&s->ram_mu);
    if (b) {
        count_hit(s, &rec->key);
        BUMP(s, ram_hits, 1);
        *blob = b;
        return RK_OK;
    }
    return read_blob(s, rec, blob);
}

/* cc_store_lookup under the gate: one pipelined metadata read for all keys. */
static rk_status do_lookup(cc_store *s, const char *tenant, const cc_key *keys, size_t n, uint8_t *present)
{
    rk_status st;
    if ((st = check_name("tenant", tenant)) != RK_OK)
        return st;
    if ((!keys || !present) && n)
        return rk_error_set(RK_ERR_INVALID, "lookup: no keys");
    cc_record *recs = rk_calloc(n ? n : 1, sizeof(*recs));
    rk_status *sts = rk_calloc(n ? n : 1, sizeof(*sts));
    if (!recs || !sts) {
        st = rk_error_set(RK_ERR_NOMEM, "lookup");
        goto out;
    }
    if ((st = cc_metastore_get(&s->ms, keys, n, recs, sts)) != RK_OK)
        goto out;
    uint64_t now = rk_wall_ms();
    for (size_t i = 0; i < n; i++) {
        present[i] = 0;
        bool ok = false;
        if (sts[i] == RK_OK && !expired(&recs[i], now) && (st = readable(s, tenant, recs[i].ns, &ok)) != RK_OK)
            goto out;
        if (sts[i] != RK_OK || expired(&recs[i], now)) {
            note_bad_record(s, sts[i]);
            equal_cost_miss(s, tenant);
        } /* one grant check per key that is not the tenant's own */
        present[i] = ok && sts[i] == RK_OK && !expired(&recs[i], now);
    }
out:
    for (size_t i = 0; recs && i < n; i++)
        cc_record_clear(&recs[i]);
    rk_free(recs);
    rk_free(sts);
    return st;
}

/* cc_store_delete under the gate: only the tenant's own namespace. */
static rk_status do_delete(cc_store *s, const char *tenant, const cc_key *key)
{
    rk_status st, gs;
    if ((st = check_name("tenant", tenant)) != RK_OK)
        return st;
    cc_record r;
    if ((st = cc_metastore_get(&s->ms, key, 1, &r, &gs)) != RK_OK)
        return st;
    if (gs != RK_OK)
        return RK_ERR_NOT_FOUND;
    if (strcmp(r.ns, tenant) != 0) {
        cc_record_clear(&r);
        return RK_ERR_NOT_FOUND;
    }
    st = cc_metastore_remove(&s->ms, key, r.csum, NULL);
    if (st == RK_OK) {
        cc_evlist one = {0};
        cc_evlist_push(&one, &r.key, r.csum, r.size);
        apply_removed(s, &one);
        cc_evlist_free(&one);
    }
    cc_record_clear(&r);
    return st;
}

/* ---- event-loop variants (ragkv/chunkcache.h) ----------------------------------------------
 * The same decisions as do_lookup, do_delete and put_commit, each metadata call going through
 * a cc_redis_async instead of the metadata store, so an event loop never waits. They hold no
 * gate (a loop must not block on a rebuild): cc_redis_async refuses to answer from a Redis
 * that lost its data, and the caller re-runs the call synchronously, which rebuilds. */

/* An asynchronous lookup in flight. */
typedef struct alookup {
    cc_store *s;
    cc_redis_async *ra;
    char tenant[CC_NAME_MAX + 1];
    size_t n;                         /* keys */
    uint8_t *present;                 /* (n) the answers */
    size_t *check;                    /* (n) the grant check deciding key i; SIZE_MAX: none */
    const char **ns;                  /* (m) namespaces asked about (into nsbuf) */
    char (*nsbuf)[CC_NAME_MAX + 1];   /* (n) their storage */
    bool *decides;                    /* (m) the check decides a key (else it only costs what
                                         the check of another tenant's chunk costs) */
    size_t m;                         /* grant checks */
    cc_record *recs;                  /* (n) cc_store_resolve_async: the records it keeps */
    cc_lookup_done cb;                /* one of cb and rcb */
    cc_resolve_done rcb;
    void *arg;
} alookup;

static void alookup_free(alookup *al)
{
    for (size_t i = 0; al->recs && i < al->n; i++)
        cc_record_clear(&al->recs[i]);
    rk_free(al->recs);
    rk_free(al->present);
    rk_free(al->check);
    rk_free(al->ns);
    rk_free(al->nsbuf);
    rk_free(al->decides);
    rk_free(al);
}

static void alookup_end(alookup *al, rk_status st)
{
    if (al->rcb) {
        for (size_t i = 0; st == RK_OK && i < al->n; i++)
            if (!al->present[i]) /* only the readable keys' records are the caller's to see */
                cc_record_clear(&al->recs[i]);
        al->rcb(al->arg, st, al->recs, al->present, al->n);
    } else {
        al->cb(al->arg, st, al->present, al->n);
    }
    alookup_free(al);
}

static void on_lookup_checked(void *arg, rk_status st, const bool *ok, const rk_status *sts, size_t m)
{
    alookup *al = arg;
    for (size_t j = 0; j < m; j++) { /* as do_lookup: a failed check of a key's own grant fails
                                        the lookup; the equal-cost checks' answers are ignored */
        if (!al->decides[j])
            continue;
        if (st != RK_OK) {
            alookup_end(al, st);
            return;
        }
        if (sts[j] != RK_OK) {
            alookup_end(al, rk_error_set(sts[j], "lookup: grant check refused by Redis"));
            return;
        }
    }
    for (size_t i = 0; i < al->n; i++)
        if (al->check[i] != SIZE_MAX)
            al->present[i] = ok[al->check[i]];
    alookup_end(al, RK_OK);
}

/* Queue a grant check of ns for key i (decides: its answer is key i's). */
static void alookup_ask(alookup *al, size_t i, const char *ns, bool decides)
{
    snprintf(al->nsbuf[al->m], sizeof(al->nsbuf[0]), "%s", ns);
    al->ns[al->m] = al->nsbuf[al->m];
    al->decides[al->m] = decides;
    if (decides)
        al->check[i] = al->m;
    al->m++;
}

static void on_lookup_records(void *arg, rk_status st, const cc_record *recs, const rk_status *sts, size_t n)
{
    alookup *al = arg;
    if (st != RK_OK) {
        alookup_end(al, st);
        return;
    }
    uint64_t now = rk_wall_ms();
    for (size_t i = 0; i < n; i++) {
        bool live = sts[i] == RK_OK && !expired(&recs[i], now);
        if (live && al->recs && cc_record_copy(&al->recs[i], &recs[i]) != RK_OK) {
            alookup_end(al, rk_error_set(RK_ERR_NOMEM, "lookup: record"));
            return;
        }
        if (live && strcmp(al->tenant, recs[i].ns) == 0) {
            al->present[i] = 1; /* one's own namespace: readable without a round trip */
        } else if (live) {
            alookup_ask(al, i, recs[i].ns, true);
        } else { /* one grant check per key that is not the tenant's own (equal_cost_miss) */
            note_bad_record(al->s, sts[i]);
            alookup_ask(al, i, no_ns, false);
        }
    }
    if (al->m == 0) {
        alookup_end(al, RK_OK);
        return;
    }
    rk_status rs = cc_redis_async_readable(al->ra, al->tenant, al->ns, al->m, on_lookup_checked, al);
    if (rs != RK_OK)
        alookup_end(al, rs);
}

/* An asynchronous delete in flight. */
typedef struct adelete {
    cc_redis_async *ra;
    char tenant[CC_NAME_MAX + 1];
    cc_key key;
    cc_evlist one;       /* the chunk removed (for cc_store_apply_removed) */
    cc_delete_done cb;
    void *arg;
} adelete;

static void adelete_end(adelete *d, rk_status st)
{
    cc_evlist none = {0};
    d->cb(d->arg, st, st == RK_OK ? &d->one : &none);
    cc_evlist_free(&d->one);
    rk_free(d);
}

static void on_delete_removed(void *arg, rk_status st, const cc_record *removed)
{
    (void)removed;
    adelete_end(arg, st);
}

static void on_delete_record(void *arg, rk_status st, const cc_record *recs, const rk_status *sts, size_t n)
{
    (void)n;
    adelete *d = arg;
    if (st != RK_OK) {
        adelete_end(d, st);
        return;
    }
    if (sts[0] != RK_OK || strcmp(recs[0].ns, d->tenant) != 0) { /* absent, or not the tenant's */
        adelete_end(d, rk_error_set(RK_ERR_NOT_FOUND, "no such chunk"));
        return;
    }
    rk_status rs = cc_evlist_push(&d->one, &recs[0].key, recs[0].csum, recs[0].size);
    if (rs == RK_OK)
        rs = cc_redis_async_remove(d->ra, &d->key, recs[0].csum, on_delete_removed, d);
    if (rs != RK_OK)
        adelete_end(d, rs);
}

/* An asynchronous commit in flight. */
typedef struct acommit {
    cc_redis_async *ra;
    cc_put_txn *t;
    cc_commit_done cb;
    void *arg;
} acommit;

static void acommit_end(acommit *c)
{
    c->cb(c->arg, c->t);
    rk_free(c);
}

static void on_commit_current(void *arg, rk_status st, const cc_record *recs, const rk_status *sts, size_t n)
{
    (void)n;
    acommit *c = arg;
    c->t->cur_known = st == RK_OK && sts[0] == RK_OK;
    if (c->t->cur_known)
        c->t->cur_csum = recs[0].csum;
    acommit_end(c);
}

static void on_commit_inserted(void *arg, rk_status st, const cc_evlist *ev)
{
    acommit *c = arg;
    cc_put_txn *t = c->t;
    cc_evlist_free(&t->ev);
    for (size_t i = 0; st == RK_OK && i < ev->n; i++)
        if (cc_evlist_push(&t->ev, &ev->items[i].key, ev->items[i].csum, ev->items[i].size) != RK_OK)
            RK_WARN("evicted chunk's blob left for gc (out of memory)");
    put_committed(t, st);
    if (st == RK_ERR_EXISTS && cc_redis_async_get(c->ra, &t->rec.key, 1, on_commit_current, c) == RK_OK)
        return;
    acommit_end(c);
}

/* ---- tenants (configuration is mirrored in CC_SPACE_CONFIG for rebuilds) ----------------- */

static size_t cfg_key(uint8_t *k, char tag, const char *a, const char *b)
{
    size_t al = strlen(a), n = 1 + al;
    k[0] = (uint8_t)tag;
    memcpy(k + 1, a, al);
    if (b) {
        size_t bl = strlen(b);
        k[n++] = 0;
        memcpy(k + n, b, bl);
        n += bl;
    }
    return n;
}

/* Mirror a tenant's quota and policy into CC_SPACE_CONFIG (for rebuilds). */
static rk_status save_tenant_cfg(cc_store *s, const cc_tenant_cfg *c)
{
    uint8_t k[CC_NAME_MAX + 2], v[17];
    size_t kl = cfg_key(k, 't', c->name, NULL);
    rk_put_le64(v, c->max_bytes);
    rk_put_le64(v + 8, c->max_chunks);
    v[16] = (uint8_t)c->policy;
    cc_iov part = {v, sizeof(v)};
    return cc_blobstore_put(&s->bs, CC_SPACE_CONFIG, k, kl, &part, 1);
}

/* Validate a tenant name and quota policy. */
static rk_status quota_check(const char *name, const cc_quota *q)
{
    rk_status st = check_name("tenant", name);
    if (st != RK_OK)
        return st;
    if (q && q->policy != CC_QUOTA_REJECT && q->policy != CC_QUOTA_EVICT)
        return rk_error_set(RK_ERR_INVALID, "quota: bad policy");
    return RK_OK;
}

/* A cc_tenant_cfg from a name and a quota (NULL: unlimited, reject). */
static cc_tenant_cfg cfg_of(const char *name, const cc_quota *q)
{
    cc_tenant_cfg c;
    memset(&c, 0, sizeof(c));
    snprintf(c.name, sizeof(c.name), "%s", name);
    if (q) {
        c.max_bytes = q->max_bytes;
        c.max_chunks = q->max_chunks;
        c.policy = q->policy;
    }
    return c;
}

/* Create (mode 0, RK_ERR_EXISTS if present) or update (mode 1, RK_ERR_NOT_FOUND if
 * absent) a tenant: configuration first, then the metadata store. */
static rk_status do_tenant_set(cc_store *s, const char *name, const cc_quota *q, int mode /*0 create,1 update*/)
{
    rk_status st = quota_check(name, q);
    if (st != RK_OK)
        return st;
    cc_tenant_info ti;
    st = cc_metastore_tenant_get(&s->ms, name, &ti);
    if (st != RK_OK && st != RK_ERR_NOT_FOUND)
        return st;
    if (mode == 0 && st == RK_OK)
        return rk_error_set(RK_ERR_EXISTS, "tenant '%s' exists", name);
    if (mode == 1 && st == RK_ERR_NOT_FOUND)
        return rk_error_set(RK_ERR_NOT_FOUND, "no tenant '%s'", name);
    cc_tenant_cfg c = cfg_of(name, q);
    if ((st = save_tenant_cfg(s, &c)) != RK_OK)
        return st;
    return cc_metastore_tenant_put(&s->ms, &c);
}

typedef struct grant_scan {
    const char *name; /* delete grants naming this tenant/ns */
    cc_iov *keys;
    size_t n, cap;
    bool oom;
} grant_scan;

/* Collect the CONFIG grant keys that name g->name on either side. */
static int grant_scan_cb(void *arg, const uint8_t *key, size_t klen, const uint8_t *val, size_t vlen)
{
    grant_scan *g = arg;
    if (klen < 3 || key[0] != 'g')
        return 0;
    const uint8_t *z = memchr(key + 1, 0, klen - 1);
    if (!z)
        return 0;
    size_t al = (size_t)(z - key - 1), bl = klen - 2 - al, nl = strlen(g->name);
    if (!((al == nl && memcmp(key + 1, g->name, nl) == 0) || (bl == nl && memcmp(z + 1, g->name, nl) == 0)))
        return 0;
    if (g->n == g->cap) {
        size_t cap = g->cap ? 2 * g->cap : 16;
        cc_iov *k = rk_realloc(g->keys, cap * sizeof(*k));
        if (!k)
            return g->oom = true;
        g->keys = k;
        g->cap = cap;
    }
    uint8_t *c = rk_malloc(klen);
    if (!c)
        return g->oom = true;
    memcpy(c, key, klen);
    g->keys[g->n].base = c;
    g->keys[g->n++].len = klen;
    return 0;
}

/* cc_store_tenant_delete under the gate: configuration, then metadata, then blobs. */
static rk_status do_tenant_delete(cc_store *s, const char *name)
{
    rk_status st = check_name("tenant", name);
    if (st != RK_OK)
        return st;
    cc_tenant_info ti;
    if ((st = cc_metastore_tenant_get(&s->ms, name, &ti)) != RK_OK)
        return st;
    /* configuration first: a crash after this leaves metadata a rebuild drops */
    grant_scan g = {.name = name};
    st = cc_blobstore_scan(&s->bs, CC_SPACE_CONFIG, grant_scan_cb, &g);
    if (st == RK_OK && g.oom)
        st = rk_error_set(RK_ERR_NOMEM, "tenant delete");
    if (st == RK_OK) {
        uint8_t k[CC_NAME_MAX + 2];
        size_t kl = cfg_key(k, 't', name, NULL);
        cc_iov *keys = rk_realloc(g.keys, (g.n + 1) * sizeof(cc_iov));
        cc_iov *vals = rk_calloc(g.n + 1, sizeof(cc_iov));
        if (keys)
            g.keys = keys;
        if (!keys || !vals) {
            st = rk_error_set(RK_ERR_NOMEM, "tenant delete");
        } else {
            g.keys[g.n].base = k;
            g.keys[g.n].len = kl;
            st = cc_blobstore_write_batch(&s->bs, CC_SPACE_CONFIG, g.n + 1, g.keys, vals);
        }
        rk_free(vals);
    }
    for (size_t i = 0; i < g.n; i++)
        rk_free((void *)g.keys[i].base);
    rk_free(g.keys);
    if (st != RK_OK)
        return st;
    cc_evlist ev = {0};
    st = cc_metastore_tenant_del(&s->ms, name, &ev);
    apply_removed(s, &ev);
    cc_evlist_free(&ev);
    return st;
}

/* cc_store_grant / revoke under the gate: configuration, then metadata. */
static rk_status do_grant(cc_store *s, const char *ns, const char *tenant, bool on)
{
    rk_status st;
    if ((st = check_name("namespace", ns)) != RK_OK || (st = check_name("tenant", tenant)) != RK_OK)
        return st;
    cc_tenant_info ti;
    if ((st = cc_metastore_tenant_get(&s->ms, ns, &ti)) != RK_OK ||
        (st = cc_metastore_tenant_get(&s->ms, tenant, &ti)) != RK_OK)
        return st == RK_ERR_NOT_FOUND ? rk_error_set(st, "grant: no such namespace or tenant") : st;
    uint8_t k[2 * CC_NAME_MAX + 3];
    size_t kl = cfg_key(k, 'g', ns, tenant);
    if (on) {
        cc_iov part = {"", 0};
        st = cc_blobstore_put(&s->bs, CC_SPACE_CONFIG, k, kl, &part, 1);
    } else {
        st = cc_blobstore_del(&s->bs, CC_SPACE_CONFIG, k, kl);
    }
    return st != RK_OK ? st : cc_metastore_grant(&s->ms, ns, tenant, on);
}

/* ---- expiry, gc, rebuild ----------------------------------------------------------------- */

static rk_status do_evict(cc_store *s, uint64_t *removed)
{
    cc_evlist ev = {0};
    rk_status st = cc_metastore_expire(&s->ms, rk_wall_ms(), &ev);
    BUMP(s, expired, ev.n);
    uint64_t n = ev.n;
    apply_removed(s, &ev);
    cc_evlist_free(&ev);
    uint64_t before = atomic_load(&s->st.evicted_disk);
    if (st == RK_OK)
        st = make_room(s, 0);
    n += atomic_load(&s->st.evicted_disk) - before;
    if (st == RK_OK)
        st = flush_touches(s);
    if (removed)
        *removed = n;
    return st;
}

typedef struct gc_item {
    uint8_t bk[BKEY_LEN]; /* blob store key */
    uint64_t created_ms;  /* from its header; 0 when unreadable */
    bool parsed;          /* the header decoded */
} gc_item;

typedef struct gc_scan {
    gc_item *v;
    size_t n, cap;
    bool oom;
} gc_scan;

/* Remember every chunk value (blob key, creation time) for do_gc. */
static int gc_scan_cb(void *arg, const uint8_t *key, size_t klen, const uint8_t *val, size_t vlen)
{
    gc_scan *g = arg;
    if (g->n == g->cap) {
        size_t cap = g->cap ? 2 * g->cap : 256;
        gc_item *p = rk_realloc(g->v, cap * sizeof(*p));
        if (!p)
            return g->oom = true;
        g->v = p;
        g->cap = cap;
    }
    gc_item *it = &g->v[g->n];
    memset(it, 0, sizeof(*it));
    if (klen == BKEY_LEN)
        memcpy(it->bk, key, BKEY_LEN);
    cc_record r;
    size_t used;
    if (klen == BKEY_LEN && cc_record_decode(val, vlen, &r, &used) == RK_OK) {
        it->parsed = cc_key_equal(&r.key, (const cc_key *)key) && r.csum == rk_get_le64(key + CC_KEY_BYTES);
        it->created_ms = r.created_ms;
        cc_record_clear(&r);
    }
    if (klen != BKEY_LEN) /* a foreign key: remember it by its first bytes? delete it below */
        memcpy(it->bk, key, klen < BKEY_LEN ? klen : BKEY_LEN);
    g->n++;
    return 0;
}

/* cc_store_gc under the gate: delete blobs no record points to, older than the grace. */
static rk_status do_gc(cc_store *s, uint64_t *removed)
{
    gc_scan g = {0};
    uint64_t n = 0;
    rk_status st = cc_blobstore_scan(&s->bs, CC_SPACE_CHUNKS, gc_scan_cb, &g);
    if (st == RK_OK && g.oom)
        st = rk_error_set(RK_ERR_NOMEM, "gc: scan");
    uint64_t now = rk_wall_ms(), grace = s->cfg.gc_grace_ms;
    enum { B = 128 };
    cc_key keys[B];
    cc_record recs[B];
    rk_status sts[B];
    for (size_t i = 0; st == RK_OK && i < g.n; i += B) {
        size_t m = g.n - i < B ? g.n - i : B;
        for (size_t j = 0; j < m; j++)
            memcpy(keys[j].b, g.v[i + j].bk, CC_KEY_BYTES);
        if ((st = cc_metastore_get(&s->ms, keys, m, recs, sts)) != RK_OK)
            break;
        for (size_t j = 0; j < m; j++) {
            gc_item *it = &g.v[i + j];
            bool live = sts[j] == RK_OK && recs[j].csum == rk_get_le64(it->bk + CC_KEY_BYTES);
            cc_record_clear(&recs[j]);
            if (live || (it->parsed && now < it->created_ms + grace))
                continue;
            if (cc_blobstore_del(&s->bs, CC_SPACE_CHUNKS, it->bk, BKEY_LEN) == RK_OK)
                n++;
        }
    }
    rk_free(g.v);
    BUMP(s, gc_removed, n);
    if (removed)
        *removed = n;
    return st;
}

typedef struct rb_ctx {
    cc_store *s;
    rk_status st;   /* first hard failure */
    uint64_t chunks; /* records restored */
    int pass;        /* 0: tenants, 1: grants */
} rb_ctx;

/* Rebuild pass over CONFIG: tenants (pass 0), then grants (pass 1). */
static int rb_config_cb(void *arg, const uint8_t *key, size_t klen, const uint8_t *val, size_t vlen)
{
    rb_ctx *c = arg;
    if (klen < 2 || klen > 2 * CC_NAME_MAX + 2)
        return 0;
    if (c->pass == 0 && key[0] == 't' && vlen == 17 && klen - 1 <= CC_NAME_MAX) {
        cc_tenant_cfg t;
        memset(&t, 0, sizeof(t));
        memcpy(t.name, key + 1, klen - 1);
        t.max_bytes = rk_get_le64(val);
        t.max_chunks = rk_get_le64(val + 8);
        t.policy = val[16] == CC_QUOTA_EVICT ? CC_QUOTA_EVICT : CC_QUOTA_REJECT;
        if ((c->st = cc_metastore_tenant_put(&c->s->ms, &t)) != RK_OK)
            return 1;
    } else if (c->pass == 1 && key[0] == 'g') {
        char a[CC_NAME_MAX + 1], b[CC_NAME_MAX + 1];
        const uint8_t *z = memchr(key + 1, 0, klen - 1);
        if (!z)
            return 0;
        size_t al = (size_t)(z - key - 1), bl = klen - 2 - al;
        if (!al || !bl || al > CC_NAME_MAX || bl > CC_NAME_MAX)
            return 0;
        memcpy(a, key + 1, al);
        a[al] = 0;
        memcpy(b, z + 1, bl);
        b[bl] = 0;
        rk_status st = cc_metastore_grant(&c->s->ms, a, b, true);
        if (st != RK_OK && st != RK_ERR_NOT_FOUND) {
            c->st = st;
            return 1;
        }
    }
    return 0;
}

/* Rebuild pass over CHUNKS: re-insert each well-formed record, quota unchecked. */
static int rb_chunk_cb(void *arg, const uint8_t *key, size_t klen, const uint8_t *val, size_t vlen)
{
    rb_ctx *c = arg;
    cc_record r;
    size_t used;
    if (klen != BKEY_LEN || cc_record_decode(val, vlen, &r, &used) != RK_OK)
        return 0; /* not a chunk value: gc removes it */
    if (cc_key_equal(&r.key, (const cc_key *)key) && r.csum == rk_get_le64(key + CC_KEY_BYTES) &&
        vlen - used == r.size) {
        rk_status st = cc_metastore_insert(&c->s->ms, &r, CC_INSERT_FORCE, NULL);
        if (st == RK_OK)
            c->chunks++;
        else if (st != RK_ERR_EXISTS && st != RK_ERR_NOT_FOUND) /* duplicates/ownerless: orphans */
            c->st = st;
    }
    cc_record_clear(&r);
    return c->st != RK_OK;
}

/* Blob bytes over all tenants, from the metadata store (0 when unreachable). */
static uint64_t sum_usage(cc_store *s)
{
    char **names = NULL;
    size_t n = 0;
    uint64_t total = 0;
    if (cc_metastore_tenant_list(&s->ms, &names, &n) != RK_OK)
        return 0;
    for (size_t i = 0; i < n; i++) {
        cc_tenant_info ti;
        if (cc_metastore_tenant_get(&s->ms, names[i], &ti) == RK_OK)
            total += ti.bytes;
    }
    cc_names_free(names, n);
    return total;
}

/* Caller holds the gate exclusively. */
static rk_status do_rebuild(cc_store *s)
{
    uint64_t t0 = rk_now_ns();
    rk_status st = cc_metastore_clear(&s->ms);
    rb_ctx c = {s, RK_OK, 0, 0};
    if (st == RK_OK)
        st = cc_blobstore_scan(&s->bs, CC_SPACE_CONFIG, rb_config_cb, &c);
    c.pass = 1;
    if (st == RK_OK && c.st == RK_OK)
        st = cc_blobstore_scan(&s->bs, CC_SPACE_CONFIG, rb_config_cb, &c);
    if (st == RK_OK && c.st == RK_OK)
        st = cc_blobstore_scan(&s->bs, CC_SPACE_CHUNKS, rb_chunk_cb, &c);
    if (st == RK_OK)
        st = c.st;
    if (st == RK_OK)
        st = cc_metastore_mark_intact(&s->ms);
    if (st != RK_OK)
        return st;
    cc_devtier_clear(s->cfg.device); /* the chunks now are the blob store's, not what was decoded */
    atomic_store(&s->disk_bytes, sum_usage(s));
    BUMP(s, rebuilds, 1);
    RK_INFO("metadata rebuilt from the blob store: %llu chunks in %.1f ms", (unsigned long long)c.chunks,
            (rk_now_ns() - t0) / 1e6);
    return RK_OK;
}

/* After RK_ERR_UNAVAILABLE: if the metadata store lost its data, rebuild. True when the
 * caller should retry. */
static bool recover(cc_store *s)
{
    bool ok = true;
    if (cc_metastore_intact(&s->ms, &ok) != RK_OK)
        return false; /* still unreachable: report the failure, do not wait twice */
    if (ok)
        return true; /* reachable and intact: the failure was transient, retry once */
    pthread_rwlock_wrlock(&s->gate);
    rk_status st = RK_OK;
    if (cc_metastore_intact(&s->ms, &ok) == RK_OK && !ok)
        st = do_rebuild(s);
    pthread_rwlock_unlock(&s->gate);
    if (st != RK_OK)
        RK_ERROR("metadata rebuild failed: %s", rk_error_msg());
    return st == RK_OK;
}

/* Run expr under the shared gate; on RK_ERR_UNAVAILABLE recover once and retry. */
#define GATED(s, expr)                                                                             \
    do {                                                                                           \
        if (!(s))                                                                                  \
            return rk_error_set(RK_ERR_INVALID, "no store");                                       \
        for (int try_ = 0;; try_++) {                                                              \
            pthread_rwlock_rdlock(&(s)->gate);                                                     \
            rk_status st_ = (expr);                                                                \
            pthread_rwlock_unlock(&(s)->gate);                                                     \
            if (st_ == RK_ERR_UNAVAILABLE && try_ == 0 && recover(s))                              \
                continue;                                                                          \
            return st_;                                                                            \
        }                                                                                          \
    } while (0)

/* ---- public ------------------------------------------------------------------------------ */

rk_status cc_store_put(cc_store *s, const char *tenant, const cc_put_args *a, cc_key *key)
{
    GATED(s, do_put(s, tenant, a, key));
}

/* See ragkv/chunkcache.h. */
rk_status cc_store_put_write(cc_store *s, const char *tenant, const cc_put_args *a, cc_put_txn **t)
{
    if (!t)
        return rk_error_set(RK_ERR_INVALID, "put: no output");
    GATED(s, put_write(s, tenant, a, t));
}

/* See ragkv/chunkcache.h. */
const cc_record *cc_put_txn_record(const cc_put_txn *t)
{
    return &t->rec;
}

/* See ragkv/chunkcache.h. */
rk_status cc_put_txn_status(const cc_put_txn *t)
{
    return t->commit;
}

/* See ragkv/chunkcache.h. */
bool cc_put_txn_blocking(const cc_put_txn *t)
{
    return put_blocking(t);
}

/* See ragkv/chunkcache.h. */
void cc_store_put_commit(cc_store *s, cc_put_txn *t)
{
    for (int try_ = 0;; try_++) {
        pthread_rwlock_rdlock(&s->gate);
        put_commit(s, t);
        pthread_rwlock_unlock(&s->gate);
        if (t->commit != RK_ERR_UNAVAILABLE || try_ > 0)
            return;
        /* as cc_store_put after a commit that found Redis away: the blob goes first (a rebuild
         * must not admit it past the quota), then recovery, then the blob again */
        cc_blobstore_del(&s->bs, CC_SPACE_CHUNKS, t->bk, BKEY_LEN);
        if (!recover(s))
            return;
        cc_iov part = {t->v.data, t->v.len};
        pthread_rwlock_rdlock(&s->gate);
        rk_status st = cc_blobstore_put(&s->bs, CC_SPACE_CHUNKS, t->bk, BKEY_LEN, &part, 1);
        pthread_rwlock_unlock(&s->gate);
        if (st != RK_OK) {
            put_committed(t, st);
            return;
        }
    }
}

/* See ragkv/chunkcache.h. */
rk_status cc_store_put_commit_async(cc_store *s, cc_redis_async *ra, cc_put_txn *t, cc_commit_done cb, void *arg)
{
    if (!s || !ra || !t || !cb)
        return rk_error_set(RK_ERR_INVALID, "commit: bad arguments");
    acommit *c = rk_calloc(1, sizeof(*c));
    if (!c)
        return rk_error_set(RK_ERR_NOMEM, "commit");
    *c = (acommit){ra, t, cb, arg};
    rk_status st = cc_redis_async_insert(ra, &t->rec, 0, on_commit_inserted, c);
    if (st != RK_OK)
        rk_free(c);
    return st;
}

/* See ragkv/chunkcache.h. */
rk_status cc_store_put_finish(cc_store *s, cc_put_txn *t, cc_key *key)
{
    /* a finish with blob deletes holds the gate shared like every other operation; one without
     * touches memory only, and must not wait on a rebuild (an event loop runs it) */
    bool gated = put_blocking(t);
    if (gated)
        pthread_rwlock_rdlock(&s->gate);
    rk_status st = put_finish(s, t, key);
    if (gated)
        pthread_rwlock_unlock(&s->gate);
    return st;
}

/* See ragkv/chunkcache.h. */
static rk_status lookup_start(cc_store *s, cc_redis_async *ra, const char *tenant, const cc_key *keys, size_t n,
                              cc_lookup_done cb, cc_resolve_done rcb, void *arg)
{
    rk_status st;
    if (!s || !ra || !keys || !n || !(cb || rcb))
        return rk_error_set(RK_ERR_INVALID, "lookup: bad arguments");
    if ((st = check_name("tenant", tenant)) != RK_OK)
        return st;
    alookup *al = rk_calloc(1, sizeof(*al));
    if (!al)
        return rk_error_set(RK_ERR_NOMEM, "lookup");
    *al = (alookup){.s = s, .ra = ra, .n = n, .cb = cb, .rcb = rcb, .arg = arg};
    snprintf(al->tenant, sizeof(al->tenant), "%s", tenant);
    al->present = rk_calloc(n, 1);
    al->check = rk_malloc(n * sizeof(size_t));
    al->ns = rk_calloc(n, sizeof(char *));
    al->nsbuf = rk_malloc(n * sizeof(*al->nsbuf));
    al->decides = rk_calloc(n, sizeof(bool));
    al->recs = rcb ? rk_calloc(n, sizeof(cc_record)) : NULL;
    st = al->present && al->check && al->ns && al->nsbuf && al->decides && (al->recs || !rcb)
             ? RK_OK
             : rk_error_set(RK_ERR_NOMEM, "lookup");
    for (size_t i = 0; st == RK_OK && i < n; i++)
        al->check[i] = SIZE_MAX;
    for (size_t i = 0; al->recs && i < n; i++)
        cc_record_init(&al->recs[i]);
    if (st == RK_OK)
        st = cc_redis_async_get(ra, keys, n, on_lookup_records, al);
    if (st != RK_OK)
        alookup_free(al);
    return st;
}

/* See ragkv/chunkcache.h. */
rk_status cc_store_lookup_async(cc_store *s, cc_redis_async *ra, const char *tenant, const cc_key *keys, size_t n,
                                cc_lookup_done cb, void *arg)
{
    return lookup_start(s, ra, tenant, keys, n, cb, NULL, arg);
}

/* See ragkv/chunkcache.h. */
rk_status cc_store_resolve_async(cc_store *s, cc_redis_async *ra, const char *tenant, const cc_key *keys, size_t n,
                                 cc_resolve_done cb, void *arg)
{
    return lookup_start(s, ra, tenant, keys, n, NULL, cb, arg);
}

/* See ragkv/chunkcache.h. */
rk_status cc_store_delete_async(cc_store *s, cc_redis_async *ra, const char *tenant, const cc_key *key,
                                cc_delete_done cb, void *arg)
{
    rk_status st;
    if (!s || !ra || !key || !cb)
        return rk_error_set(RK_ERR_INVALID, "delete: bad arguments");
    if ((st = check_name("tenant", tenant)) != RK_OK)
        return st;
    adelete *d = rk_calloc(1, sizeof(*d));
    if (!d)
        return rk_error_set(RK_ERR_NOMEM, "delete");
    d->ra = ra;
    snprintf(d->tenant, sizeof(d->tenant), "%s", tenant);
    d->key = *key;
    d->cb = cb;
    d->arg = arg;
    if ((st = cc_redis_async_get(ra, key, 1, on_delete_record, d)) != RK_OK)
        rk_free(d);
    return st;
}

/* See ragkv/chunkcache.h. */
void cc_store_apply_removed(cc_store *s, const cc_evlist *removed)
{
    pthread_rwlock_rdlock(&s->gate);
    apply_removed(s, removed);
    pthread_rwlock_unlock(&s->gate);
}

/* See ragkv/chunkcache.h. */
rk_status cc_store_get(cc_store *s, const char *tenant, const cc_key *key, cc_buf **blob, cc_record *rec)
{
    GATED(s, do_get(s, tenant, key, blob, rec));
}

/* See ragkv/chunkcache.h. */
rk_status cc_store_read(cc_store *s, const cc_record *rec, cc_buf **blob)
{
    GATED(s, do_read(s, rec, blob));
}

/* See ragkv/chunkcache.h. */
rk_status cc_store_lookup(cc_store *s, const char *tenant, const cc_key *keys, size_t n, uint8_t *present)
{
    GATED(s, do_lookup(s, tenant, keys, n, present));
}

/* See ragkv/chunkcache.h. */
rk_status cc_store_delete(cc_store *s, const char *tenant, const cc_key *key)
{
    GATED(s, do_delete(s, tenant, key));
}

/* See ragkv/chunkcache.h. */
rk_status cc_store_tenant_create(cc_store *s, const char *name, const cc_quota *q)
{
    GATED(s, do_tenant_set(s, name, q, 0));
}

/* See ragkv/chunkcache.h. */
rk_status cc_store_quota_set(cc_store *s, const char *name, const cc_quota *q)
{
    GATED(s, do_tenant_set(s, name, q, 1));
}

/* See ragkv/chunkcache.h. */
rk_status cc_store_tenant_delete(cc_store *s, const char *name)
{
    GATED(s, do_tenant_delete(s, name));
}

/* See ragkv/chunkcache.h. */
rk_status cc_store_tenant_list(cc_store *s, char ***names, size_t *n)
{
    GATED(s, cc_metastore_tenant_list(&s->ms, names, n));
}

/* cc_store_tenant_usage under the gate. */
static rk_status do_usage(cc_store *s, const char *name, cc_tenant_info *out)
{
    rk_status st = check_name("tenant", name);
    return st != RK_OK ? st : cc_metastore_tenant_get(&s->ms, name, out);
}

/* See ragkv/chunkcache.h. */
rk_status cc_store_tenant_usage(cc_store *s, const char *name, cc_tenant_info *out)
{
    GATED(s, do_usage(s, name, out));
}

/* cc_store_quota_get under the gate. */
static rk_status do_quota_get(cc_store *s, const char *name, cc_quota *q)
{
    cc_tenant_info ti;
    rk_status st = do_usage(s, name, &ti);
    if (st == RK_OK) {
        q->max_bytes = ti.cfg.max_bytes;
        q->max_chunks = ti.cfg.max_chunks;
        q->policy = ti.cfg.policy;
    }
    return st;
}

/* See ragkv/chunkcache.h. */
rk_status cc_store_quota_get(cc_store *s, const char *name, cc_quota *q)
{
    GATED(s, do_quota_get(s, name, q));
}

/* See ragkv/chunkcache.h. */
rk_status cc_store_grant(cc_store *s, const char *ns, const char *tenant)
{
    GATED(s, do_grant(s, ns, tenant, true));
}

/* See ragkv/chunkcache.h. */
rk_status cc_store_revoke(cc_store *s, const char *ns, const char *tenant)
{
    GATED(s, do_grant(s, ns, tenant, false));
}

/* See ragkv/chunkcache.h. */
rk_status cc_store_evict(cc_store *s, uint64_t *removed)
{
    GATED(s, do_evict(s, removed));
}

/* See ragkv/chunkcache.h. */
rk_status cc_store_flush(cc_store *s)
{
    GATED(s, flush_touches(s));
}

/* See ragkv/chunkcache.h. */
rk_status cc_store_gc(cc_store *s, uint64_t *removed)
{
    GATED(s, do_gc(s, removed));
}

/* See ragkv/chunkcache.h. */
rk_status cc_store_rebuild(cc_store *s)
{
    if (!s)
        return rk_error_set(RK_ERR_INVALID, "no store");
    pthread_rwlock_wrlock(&s->gate);
    rk_status st = do_rebuild(s);
    pthread_rwlock_unlock(&s->gate);
    return st;
}

/* See ragkv/chunkcache.h. */
void cc_store_stats(cc_store *s, cc_stats *o)
{
    memset(o, 0, sizeof(*o));
#define LD(f) o->f = atomic_load_explicit(&s->st.f, memory_order_relaxed)
    LD(puts);
    LD(put_dups);
    LD(quota_rejects);
    LD(gets);
    LD(ram_hits);
    LD(disk_hits);
    LD(misses);
    LD(corrupt);
    LD(repairs);
    LD(evicted_quota);
    LD(evicted_disk);
    LD(expired);
    LD(ram_evictions);
    LD(rebuilds);
    LD(gc_removed);
#undef LD
    pthread_mutex_lock(&s->ram_mu);
    o->ram_bytes = s->ram_bytes;
    o->ram_chunks = s->heap.n;
    pthread_mutex_unlock(&s->ram_mu);
    o->disk_bytes = atomic_load(&s->disk_bytes);
    if (s->cfg.device) {
        cc_devtier_stats ds;
        cc_devtier_stats_get(s->cfg.device, &ds);
        o->device_bytes = ds.bytes;
    }
}

/* See ragkv/chunkcache.h. */
cc_blobstore *cc_store_blobstore(cc_store *s)
{
    return &s->bs;
}

/* See ragkv/chunkcache.h. */
cc_metastore *cc_store_metastore(cc_store *s)
{
    return &s->ms;
}

/* See ragkv/chunkcache.h. */
rk_status cc_store_open_with(const cc_config *cfg, cc_blobstore bs, cc_metastore ms, cc_store **out)
{
    rk_status st;
    cc_store *s = rk_calloc(1, sizeof(*s));
    if (!s) {
        cc_metastore_close(&ms);
        cc_blobstore_close(&bs);
        return rk_error_set(RK_ERR_NOMEM, "store");
    }
    s->cfg = cfg ? *cfg : cc_config_default();
    s->cfg.data_dir = s->cfg.redis_host = s->cfg.redis_prefix = NULL;
    s->bs = bs;
    s->ms = ms;
    pthread_rwlock_init(&s->gate, NULL);
    pthread_mutex_init(&s->ram_mu, NULL);
    pthread_cond_init(&s->flush_cv, NULL);
    bool ok = false;
    if ((st = cc_metastore_intact(&s->ms, &ok)) != RK_OK)
        goto fail;
    if (!ok) {
        RK_INFO("metadata store (%s) not intact: rebuilding from the blob store", s->ms.iface->name);
        if ((st = do_rebuild(s)) != RK_OK)
            goto fail;
    } else {
        atomic_store(&s->disk_bytes, sum_usage(s));
    }
    /* touch_batch 1 means "count every hit before returning": no flusher thread */
    if (s->cfg.touch_batch > 1 && pthread_create(&s->flusher, NULL, flusher_main, s) == 0)
        s->flusher_on = true;
    *out = s;
    return RK_OK;
fail:
    cc_store_close(s);
    return st;
}

/* See ragkv/chunkcache.h. */
rk_status cc_store_open(const cc_config *cfg_in, cc_store **out)
{
    cc_config cfg = cfg_in ? *cfg_in : cc_config_default();
    cc_blobstore bs = {0};
    cc_metastore ms = {0};
    rk_status st;
    if (!out)
        return rk_error_set(RK_ERR_INVALID, "store: no output");
    if (cfg.data_dir)
        st = cc_blobstore_rocksdb_open(cfg.data_dir, &cfg.rocks, &bs);
    else
        st = cc_blobstore_mem_open(&bs);
    if (st != RK_OK)
        return st;
    if (cfg.redis_host)
        st = cc_metastore_redis_open(cfg.redis_host, cfg.redis_port, cfg.redis_prefix, &cfg.redis, &ms);
    else
        st = cc_metastore_embedded_open(&bs, &ms);
    if (st != RK_OK) {
        char msg[256];
        snprintf(msg, sizeof(msg), "%s", rk_error_msg());
        cc_blobstore_close(&bs);
        return rk_error_set(st, "%s", msg);
    }
    return cc_store_open_with(&cfg, bs, ms, out);
}

/* See ragkv/chunkcache.h. */
void cc_store_close(cc_store *s)
{
    if (!s)
        return;
    if (s->flusher_on) {
        pthread_mutex_lock(&s->ram_mu);
        s->stopping = true;
        pthread_cond_signal(&s->flush_cv);
        pthread_mutex_unlock(&s->ram_mu);
        pthread_join(s->flusher, NULL);
    }
    if (s->ms.iface && flush_touches(s) != RK_OK)
        RK_WARN("hit counts lost at close: %s", rk_error_msg());
    cc_store_drop_ram(s);
    cc_metastore_close(&s->ms);
    cc_blobstore_close(&s->bs);
    cc_keymap_free(&s->ram);
    cc_heap_free(&s->heap);
    rk_free(s->pend);
    pthread_rwlock_destroy(&s->gate);
    pthread_mutex_destroy(&s->ram_mu);
    pthread_cond_destroy(&s->flush_cv);
    rk_free(s);
}
