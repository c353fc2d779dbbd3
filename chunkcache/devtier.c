/* devtier.c — the device tier: referenced objects by chunk key under a byte budget, GDSF
 * eviction, pins, TTLs, invalidation by the store (see ragkv/devtier.h).
 *
 * Lock: mu guards everything in the tier (map, heap, counters, clock, generations, every
 * entry's refs and resident flag). free_obj is never called under it: the do_ functions
 * (caller holds mu) chain the entries to free on a list that the caller frees after unlocking. */
#include <math.h>
#include <pthread.h>
#include <string.h>

#include "gdsf_heap.h"
#include "keymap.h"
#include "ragkv/alloc.h"
#include "ragkv/clock.h"
#include "ragkv/devtier.h"
#include "ragkv/record.h"

/* Drop generations: drop() bumps the counter of the key's bucket; a ticket is the counter's
 * value, and admit refuses when it moved. Buckets only cost false refusals (a drop of another
 * key of the same bucket during a read), never a stale admission. */
#define GEN_BUCKETS 1024

struct cc_devtier_entry {
    cc_hnode hn;              /* GDSF priority and heap place (unpinned resident entries only) */
    cc_key key;               /* the chunk */
    void *obj;                /* the caller's object, owned by the tier */
    cc_devtier_meta m;        /* size, cost, expiry, pin */
    uint64_t hits;            /* hits while resident */
    unsigned refs;            /* references handed out and not released */
    bool resident;            /* in the map; false once evicted, dropped or expired */
    struct cc_devtier_entry *next_free; /* on a do_ function's list of entries to free */
};

struct cc_devtier {
    cc_devtier_config cfg;     /* copy */
    pthread_mutex_t mu;        /* see the top of the file */
    cc_keymap map;             /* key[32] -> resident entry */
    cc_heap heap;              /* unpinned resident entries by priority */
    double clock;              /* GDSF clock: the priority of the last eviction */
    uint64_t gen[GEN_BUCKETS]; /* drop generations */
    cc_devtier_stats st;       /* counters and sizes (budget_bytes set at creation) */
};

typedef cc_devtier_entry entry;

static uint64_t now_ms(const cc_devtier *t)
{
    return t->cfg.now_ms ? t->cfg.now_ms(t->cfg.clock_ctx) : rk_wall_ms();
}

static size_t gen_bucket(const cc_key *key)
{
    return ((size_t)key->b[0] | (size_t)key->b[1] << 8) % GEN_BUCKETS;
}

static double prio_of(const cc_devtier *t, const entry *e)
{
    return cc_gdsf_priority(t->clock, e->hits + 1, e->m.cost, e->m.bytes);
}

/* Take e out of the tier (caller holds mu); onto *dead when nobody references it (dead NULL:
 * the caller keeps e). */
static void do_unlink(cc_devtier *t, entry *e, entry **dead)
{
    cc_keymap_del(&t->map, e->key.b, CC_KEY_BYTES);
    if (e->m.pinned)
        t->st.pinned_bytes -= e->m.bytes;
    else
        cc_heap_remove(&t->heap, &e->hn);
    t->st.bytes -= e->m.bytes;
    t->st.entries--;
    e->resident = false;
    if (e->refs) {
        t->st.held_bytes += e->m.bytes; /* freed at the last release */
    } else if (dead) {
        e->next_free = *dead;
        *dead = e;
    }
}

/* Free the entries of a do_ function's list (caller does not hold mu). */
static void free_list(cc_devtier *t, entry *dead)
{
    while (dead) {
        entry *n = dead->next_free;
        t->cfg.free_obj(t->cfg.free_ctx, dead->obj);
        rk_free(dead);
        dead = n;
    }
}

rk_status cc_devtier_new(const cc_devtier_config *cfg, cc_devtier **out)
{
    if (!out)
        return rk_error_set(RK_ERR_INVALID, "devtier: no output");
    *out = NULL;
    if (!cfg || !cfg->budget_bytes || !cfg->free_obj)
        return rk_error_set(RK_ERR_INVALID, "devtier: needs a budget and a free function");
    cc_devtier *t = rk_calloc(1, sizeof(*t));
    if (!t)
        return rk_error_set(RK_ERR_NOMEM, "devtier");
    t->cfg = *cfg;
    t->st.budget_bytes = cfg->budget_bytes;
    pthread_mutex_init(&t->mu, NULL);
    *out = t;
    return RK_OK;
}

/* cc_keymap_each callback: chain every resident entry through next_free. */
static int chain_cb(void *arg, const uint8_t *key, size_t klen, void *val)
{
    entry **all = arg;
    entry *e = val;
    e->next_free = *all;
    *all = e;
    return 0;
}

void cc_devtier_free(cc_devtier *t)
{
    if (!t)
        return;
    entry *dead = NULL;
    cc_keymap_each(&t->map, chain_cb, &dead);
    free_list(t, dead);
    cc_keymap_free(&t->map);
    cc_heap_free(&t->heap);
    pthread_mutex_destroy(&t->mu);
    rk_free(t);
}

rk_status cc_devtier_get(cc_devtier *t, const cc_key *key, cc_devtier_entry **out)
{
    if (!t || !key || !out)
        return rk_error_set(RK_ERR_INVALID, "devtier get: bad arguments");
    *out = NULL;
    entry *dead = NULL;
    uint64_t now = now_ms(t);
    pthread_mutex_lock(&t->mu);
    entry *e = cc_keymap_get(&t->map, key->b, CC_KEY_BYTES);
    if (e && e->m.expires_ms && e->m.expires_ms <= now) {
        do_unlink(t, e, &dead);
        t->st.expired++;
        e = NULL;
    }
    if (e) {
        e->hits++;
        e->refs++;
        if (!e->m.pinned) {
            e->hn.prio = prio_of(t, e);
            cc_heap_fix(&t->heap, &e->hn);
        }
        t->st.hits++;
        *out = e;
    } else {
        t->st.misses++;
    }
    pthread_mutex_unlock(&t->mu);
    free_list(t, dead);
    return e ? RK_OK : RK_ERR_NOT_FOUND;
}

void *cc_devtier_entry_obj(const cc_devtier_entry *e)
{
    return e->obj;
}

void cc_devtier_release(cc_devtier *t, cc_devtier_entry *e)
{
    if (!t || !e)
        return;
    bool last = false;
    pthread_mutex_lock(&t->mu);
    if (--e->refs == 0 && !e->resident) {
        t->st.held_bytes -= e->m.bytes;
        last = true;
    }
    pthread_mutex_unlock(&t->mu);
    if (last) {
        e->next_free = NULL;
        free_list(t, e);
    }
}

uint64_t cc_devtier_ticket(cc_devtier *t, const cc_key *key)
{
    pthread_mutex_lock(&t->mu);
    uint64_t g = t->gen[gen_bucket(key)];
    pthread_mutex_unlock(&t->mu);
    return g;
}

/* Evict the lowest-priority unpinned entries until the tier fits its budget, or until the
 * lowest is `keep` (then false). Caller holds mu. */
static bool do_make_room(cc_devtier *t, const entry *keep, entry **dead)
{
    while (t->st.bytes > t->cfg.budget_bytes) {
        if (!t->heap.n)
            return false;
        entry *v = CC_HEAP_ENTRY(t->heap.v[0], entry, hn);
        if (v == keep)
            return false;
        t->clock = v->hn.prio;
        do_unlink(t, v, dead);
        t->st.evictions++;
    }
    return true;
}

rk_status cc_devtier_admit(cc_devtier *t, const cc_key *key, void *obj, const cc_devtier_meta *m, uint64_t ticket,
                           cc_devtier_entry **ref)
{
    if (ref)
        *ref = NULL;
    if (!t || !key || !m || !m->bytes || !(m->cost >= 0) || !isfinite(m->cost))
        return rk_error_set(RK_ERR_INVALID, "devtier admit: bad arguments (bytes > 0, finite cost >= 0)");
    entry *e = rk_calloc(1, sizeof(*e));
    if (!e)
        return rk_error_set(RK_ERR_NOMEM, "devtier admit");
    e->key = *key;
    e->obj = obj;
    e->m = *m;
    uint64_t now = now_ms(t);
    entry *dead = NULL;
    rk_status st = RK_OK;
    pthread_mutex_lock(&t->mu);
    if (t->gen[gen_bucket(key)] != ticket)
        st = rk_error_set(RK_ERR_NOT_FOUND, "devtier admit: the chunk was dropped while it was read");
    else if (m->expires_ms && m->expires_ms <= now)
        st = rk_error_set(RK_ERR_NOT_FOUND, "devtier admit: the chunk expired");
    else if (cc_keymap_get(&t->map, key->b, CC_KEY_BYTES))
        st = rk_error_set(RK_ERR_EXISTS, "devtier admit: already in the tier");
    else if (m->bytes > t->cfg.budget_bytes - t->st.pinned_bytes)
        st = rk_error_set(RK_ERR_LIMIT, "devtier admit: %llu bytes do not fit the budget of %llu (%llu pinned)",
                          (unsigned long long)m->bytes, (unsigned long long)t->cfg.budget_bytes,
                          (unsigned long long)t->st.pinned_bytes);
    else if ((!m->pinned && cc_heap_reserve(&t->heap) != RK_OK) ||
             cc_keymap_put(&t->map, key->b, CC_KEY_BYTES, e, NULL) != RK_OK)
        st = rk_error_set(RK_ERR_NOMEM, "devtier admit");
    if (st == RK_OK) {
        e->resident = true;
        t->st.bytes += m->bytes;
        t->st.entries++;
        if (m->pinned) {
            t->st.pinned_bytes += m->bytes;
        } else {
            e->hn.prio = prio_of(t, e);
            cc_heap_push(&t->heap, &e->hn);
        }
        /* room by value: the new entry's bytes already count, so evict until all fit; when the
         * new entry is the least valuable left, it is the one that goes (and stays the caller's) */
        if (!do_make_room(t, e, &dead)) {
            do_unlink(t, e, NULL);
            st = rk_error_set(RK_ERR_LIMIT, "devtier admit: less valuable than the entries it would displace");
        }
    }
    if (st == RK_OK) {
        t->st.admits++;
        if (ref) {
            e->refs++;
            *ref = e;
        }
    } else {
        t->st.refusals++;
    }
    pthread_mutex_unlock(&t->mu);
    free_list(t, dead);
    if (st != RK_OK)
        rk_free(e); /* the entry only: obj is the caller's */
    return st;
}

void cc_devtier_drop(cc_devtier *t, const cc_key *key)
{
    if (!t || !key)
        return;
    entry *dead = NULL;
    pthread_mutex_lock(&t->mu);
    t->gen[gen_bucket(key)]++;
    entry *e = cc_keymap_get(&t->map, key->b, CC_KEY_BYTES);
    if (e) {
        do_unlink(t, e, &dead);
        t->st.drops++;
    }
    pthread_mutex_unlock(&t->mu);
    free_list(t, dead);
}

void cc_devtier_clear(cc_devtier *t)
{
    if (!t)
        return;
    entry *dead = NULL, *all = NULL;
    pthread_mutex_lock(&t->mu);
    for (size_t i = 0; i < GEN_BUCKETS; i++)
        t->gen[i]++;
    cc_keymap_each(&t->map, chain_cb, &all);
    while (all) {
        entry *n = all->next_free;
        do_unlink(t, all, &dead);
        t->st.drops++;
        all = n;
    }
    pthread_mutex_unlock(&t->mu);
    free_list(t, dead);
}

void cc_devtier_stats_get(cc_devtier *t, cc_devtier_stats *out)
{
    pthread_mutex_lock(&t->mu);
    *out = t->st;
    pthread_mutex_unlock(&t->mu);
}
