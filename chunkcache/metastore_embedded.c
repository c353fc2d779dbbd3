/* metastore_embedded.c — metadata kept in process, mirrored into a blob store's META space.
 *
 * Every table lives in memory (the authority while running) and in CC_SPACE_META (the
 * authority across restarts). A mutation is computed under `mu`, written as ONE blob store
 * write batch (atomic in RocksDB), and applied to memory only when that write succeeded, so
 * memory and disk never disagree. Usage is not stored: it is recomputed exactly from the
 * records at open.
 *
 * META keys: "r" key[32] -> record encoding | u64 hits | u64 last_access_ms
 *            "t" name    -> u64 max_bytes | u64 max_chunks | u8 policy | u64 clock (double bits)
 *            "g" ns 0 tenant -> "" (tenant may read ns)
 *            "!"         -> "intact"
 *
 * Eviction sorts the namespace's unpinned records by priority: O(n log n) in the records of
 * the whole store, fine for the embedded (single node, no Redis) deployment. */
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "keymap.h"
#include "ragkv/alloc.h"
#include "ragkv/metastore.h"

typedef struct emb_rec {
    cc_record rec; /* full record incl. hits and last access */
    double prio;   /* GDSF priority, updated at insert and touch */
} emb_rec;

typedef struct emb_tenant {
    cc_tenant_info info; /* cfg + usage (usage recomputed at open) */
} emb_tenant;

typedef struct emb_ms {
    pthread_mutex_t mu;   /* guards everything below and orders writes to META */
    cc_blobstore bsv;     /* a copy of the borrowed handle (iface NULL = memory only) */
    cc_blobstore *bs;     /* &bsv, or NULL = memory only */
    cc_keymap recs;       /* key[32] -> emb_rec* (owned) */
    cc_keymap tenants;    /* name -> emb_tenant* (owned) */
    cc_keymap grants;     /* "ns\0tenant" -> (void*)1 */
    bool intact;          /* the "!" marker is present */
} emb_ms;

/* ---- a batch of META writes -------------------------------------------------------------- */

typedef struct batch {
    cc_iov *k;  /* (cap) keys; every base rk_malloc'd and owned */
    cc_iov *v;  /* (cap) values; base NULL = delete; owned */
    size_t n;   /* used */
    size_t cap; /* allocated */
    bool oom;   /* an addition failed: the batch must not be committed */
} batch;

/* An empty batch. */
static void batch_init(batch *b)
{
    memset(b, 0, sizeof(*b));
}

/* Free the batch and every key and value it owns. */
static void batch_free(batch *b)
{
    for (size_t i = 0; i < b->n; i++) {
        rk_free((void *)b->k[i].base);
        rk_free((void *)b->v[i].base);
    }
    rk_free(b->k);
    rk_free(b->v);
    memset(b, 0, sizeof(*b));
}

/* Add key -> val (val NULL: delete). Takes ownership of kbuf and vbuf (rk_malloc'd). */
static void batch_add(batch *b, uint8_t *kbuf, size_t kl, uint8_t *vbuf, size_t vl)
{
    if (b->oom || !kbuf)
        goto oom;
    if (b->n == b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 16;
        cc_iov *k = rk_realloc(b->k, cap * sizeof(cc_iov));
        if (!k)
            goto oom;
        b->k = k;
        cc_iov *v = rk_realloc(b->v, cap * sizeof(cc_iov));
        if (!v)
            goto oom;
        b->v = v;
        b->cap = cap;
    }
    b->k[b->n].base = kbuf;
    b->k[b->n].len = kl;
    b->v[b->n].base = vbuf;
    b->v[b->n].len = vl;
    b->n++;
    return;
oom:
    b->oom = true;
    rk_free(kbuf);
    rk_free(vbuf);
}

/* Write the batch to META atomically (memory-only: nothing to do). */
static rk_status batch_commit(emb_ms *m, batch *b)
{
    if (b->oom)
        return rk_error_set(RK_ERR_NOMEM, "embedded metastore: batch");
    if (!m->bs || !b->n)
        return RK_OK;
    rk_status s = cc_blobstore_write_batch(m->bs, CC_SPACE_META, b->n, b->k, b->v);
    return s == RK_OK ? RK_OK : rk_error_set(RK_ERR_META, "embedded metastore: %s", rk_error_msg());
}

/* A META key: tag, a, and (when b2) a NUL and b2. rk_malloc'd; *kl its length. */
static uint8_t *mk_key(char tag, const void *a, size_t al, const void *b2, size_t bl, size_t *kl)
{
    size_t n = 1 + al + (b2 ? 1 + bl : 0);
    uint8_t *k = rk_malloc(n);
    if (!k)
        return NULL;
    k[0] = (uint8_t)tag;
    memcpy(k + 1, a, al);
    if (b2) {
        k[1 + al] = 0;
        memcpy(k + 2 + al, b2, bl);
    }
    *kl = n;
    return k;
}

/* Add the row of a record (encoding + hits + last access). */
static void batch_rec_put(batch *b, const cc_record *r)
{
    size_t kl = 0;
    uint8_t *k = mk_key('r', r->key.b, CC_KEY_BYTES, NULL, 0, &kl);
    rk_buf v = RK_BUF_INIT;
    if (cc_record_encode(r, &v) != RK_OK)
        v.failed = true;
    rk_buf_put_u64(&v, r->hits);
    rk_buf_put_u64(&v, r->last_access_ms);
    if (v.failed) {
        rk_buf_free(&v);
        rk_free(k);
        b->oom = true;
        return;
    }
    size_t vl;
    uint8_t *vb = rk_buf_steal(&v, &vl);
    batch_add(b, k, kl, vb, vl);
}

/* Add the deletion of a record row. */
static void batch_rec_del(batch *b, const cc_key *key)
{
    size_t kl = 0;
    uint8_t *k = mk_key('r', key->b, CC_KEY_BYTES, NULL, 0, &kl);
    batch_add(b, k, kl, NULL, 0);
}

/* Add the row of a tenant (quota, policy, clock). */
static void batch_tenant_put(batch *b, const cc_tenant_info *t)
{
    size_t kl = 0;
    uint8_t *k = mk_key('t', t->cfg.name, strlen(t->cfg.name), NULL, 0, &kl);
    uint8_t *v = rk_malloc(33);
    if (v) {
        rk_put_le64(v, t->cfg.max_bytes);
        rk_put_le64(v + 8, t->cfg.max_chunks);
        v[16] = (uint8_t)t->cfg.policy;
        uint64_t cb;
        memcpy(&cb, &t->clock, 8);
        rk_put_le64(v + 17, cb);
        rk_put_le64(v + 25, 0);
    }
    batch_add(b, k, kl, v, 33);
}

/* ---- helpers ----------------------------------------------------------------------------- */

static double rec_prio(double clock, const cc_record *r)
{
    return cc_gdsf_priority(clock, r->hits + 1, r->cost, r->size);
}

/* Add (sign > 0) or remove a record's size and count in its tenant's usage. */
static void account(emb_tenant *t, const cc_record *r, int sign)
{
    bool pinned = r->flags & CC_RECORD_FLAG_PINNED;
    if (sign > 0) {
        t->info.bytes += r->size;
        t->info.chunks++;
        if (pinned) {
            t->info.pinned_bytes += r->size;
            t->info.pinned_chunks++;
        }
    } else {
        t->info.bytes -= r->size;
        t->info.chunks--;
        if (pinned) {
            t->info.pinned_bytes -= r->size;
            t->info.pinned_chunks--;
        }
    }
}

/* Free an in-memory record (NULL is a no-op). */
static void free_rec(emb_rec *e)
{
    if (e) {
        cc_record_clear(&e->rec);
        rk_free(e);
    }
}

typedef struct cand {
    emb_rec **v;   /* candidates (borrowed) */
    size_t n, cap;
    const char *ns; /* namespace filter (NULL: any) */
    uint64_t now;   /* expire: records with 0 < expires_ms <= now */
    int mode;       /* 0: unpinned of ns; 1: expired */
    bool oom;
} cand;

/* keymap visitor: gather records matching the cand filter (mode). */
static int cand_collect(void *arg, const uint8_t *key, size_t klen, void *val)
{
    cand *c = arg;
    emb_rec *e = val;
    if (c->mode == 0 && (strcmp(e->rec.ns, c->ns) != 0 || (e->rec.flags & CC_RECORD_FLAG_PINNED)))
        return 0;
    if (c->mode == 1 && !(e->rec.expires_ms && e->rec.expires_ms <= c->now))
        return 0;
    if (c->mode == 2 && strcmp(e->rec.ns, c->ns) != 0)
        return 0;
    if (c->n == c->cap) {
        size_t cap = c->cap ? c->cap * 2 : 64;
        emb_rec **p = rk_realloc(c->v, cap * sizeof(*p));
        if (!p)
            return c->oom = true;
        c->v = p;
        c->cap = cap;
    }
    c->v[c->n++] = e;
    return 0;
}

/* Lowest priority first; key order breaks ties (deterministic eviction). */
static int cand_cmp(const void *a, const void *b)
{
    const emb_rec *x = *(emb_rec *const *)a, *y = *(emb_rec *const *)b;
    if (x->prio != y->prio)
        return x->prio < y->prio ? -1 : 1;
    return memcmp(x->rec.key.b, y->rec.key.b, CC_KEY_BYTES);
}

/* Gather and sort the candidates of c. Caller holds mu; frees c->v. */
static rk_status collect(emb_ms *m, cand *c)
{
    cc_keymap_each(&m->recs, cand_collect, c);
    if (c->oom) {
        rk_free(c->v);
        return rk_error_set(RK_ERR_NOMEM, "embedded metastore: candidates");
    }
    if (c->n) /* qsort(NULL, 0) is undefined */
        qsort(c->v, c->n, sizeof(*c->v), cand_cmp);
    return RK_OK;
}

/* Remove records v[0..n) from memory (already deleted on disk), appending to out. */
static void drop_recs(emb_ms *m, emb_rec **v, size_t n, cc_evlist *out)
{
    for (size_t i = 0; i < n; i++) {
        emb_rec *e = v[i];
        emb_tenant *t = cc_keymap_get(&m->tenants, e->rec.ns, strlen(e->rec.ns));
        if (t)
            account(t, &e->rec, -1);
        cc_evlist_push(out, &e->rec.key, e->rec.csum, e->rec.size);
        cc_keymap_del(&m->recs, e->rec.key.b, CC_KEY_BYTES);
        free_rec(e);
    }
}

/* ---- operations -------------------------------------------------------------------------- */

static rk_status e_tenant_put(void *ctx, const cc_tenant_cfg *cfg)
{
    emb_ms *m = ctx;
    size_t nl = strnlen(cfg->name, CC_NAME_MAX + 1);
    if (!nl || nl > CC_NAME_MAX || (cfg->policy != CC_QUOTA_REJECT && cfg->policy != CC_QUOTA_EVICT))
        return rk_error_set(RK_ERR_INVALID, "tenant: bad name or policy");
    pthread_mutex_lock(&m->mu);
    emb_tenant *t = cc_keymap_get(&m->tenants, cfg->name, nl);
    emb_tenant tmp = {0};
    if (t)
        tmp = *t;
    tmp.info.cfg = *cfg;
    batch b;
    batch_init(&b);
    batch_tenant_put(&b, &tmp.info);
    rk_status s = batch_commit(m, &b);
    batch_free(&b);
    if (s == RK_OK) {
        if (t) {
            t->info.cfg = *cfg;
        } else if (!(t = rk_malloc(sizeof(*t)))) {
            s = rk_error_set(RK_ERR_NOMEM, "tenant");
        } else {
            *t = tmp;
            if ((s = cc_keymap_put(&m->tenants, cfg->name, nl, t, NULL)) != RK_OK)
                rk_free(t);
        }
    }
    pthread_mutex_unlock(&m->mu);
    return s;
}

/* cc_metastore_i.tenant_get (contract in ragkv/metastore.h). */
static rk_status e_tenant_get(void *ctx, const char *name, cc_tenant_info *out)
{
    emb_ms *m = ctx;
    pthread_mutex_lock(&m->mu);
    emb_tenant *t = cc_keymap_get(&m->tenants, name, strlen(name));
    if (t)
        *out = t->info;
    pthread_mutex_unlock(&m->mu);
    return t ? RK_OK : RK_ERR_NOT_FOUND;
}

typedef struct gcol {
    const char *name; /* tenant or ns whose grants are collected */
    size_t nl;
    uint8_t **keys;   /* grant keys (borrowed from the map) */
    size_t *lens;
    size_t n, cap;
    bool oom;
} gcol;

/* keymap visitor: grant keys naming g->name on either side. */
static int grant_collect(void *arg, const uint8_t *key, size_t klen, void *val)
{
    gcol *g = arg;
    const uint8_t *z = memchr(key, 0, klen);
    if (!z)
        return 0;
    size_t al = (size_t)(z - key), bl = klen - al - 1;
    bool hit = (al == g->nl && memcmp(key, g->name, al) == 0) ||
               (bl == g->nl && memcmp(z + 1, g->name, bl) == 0);
    if (!hit)
        return 0;
    if (g->n == g->cap) {
        size_t cap = g->cap ? g->cap * 2 : 16;
        uint8_t **k = rk_realloc(g->keys, cap * sizeof(*k));
        if (!k)
            return g->oom = true;
        g->keys = k;
        size_t *l = rk_realloc(g->lens, cap * sizeof(*l));
        if (!l)
            return g->oom = true;
        g->lens = l;
        g->cap = cap;
    }
    g->keys[g->n] = (uint8_t *)key;
    g->lens[g->n++] = klen;
    return 0;
}

/* cc_metastore_i.tenant_del (contract in ragkv/metastore.h). */
static rk_status e_tenant_del(void *ctx, const char *name, cc_evlist *removed)
{
    emb_ms *m = ctx;
    size_t nl = strlen(name);
    pthread_mutex_lock(&m->mu);
    rk_status s;
    emb_tenant *t = cc_keymap_get(&m->tenants, name, nl);
    cand c = {.ns = name, .mode = 2};
    gcol g = {.name = name, .nl = nl};
    batch b;
    batch_init(&b);
    if (!t) {
        s = RK_ERR_NOT_FOUND;
        goto out;
    }
    if ((s = collect(m, &c)) != RK_OK)
        goto out;
    cc_keymap_each(&m->grants, grant_collect, &g);
    if (g.oom) {
        s = rk_error_set(RK_ERR_NOMEM, "tenant delete");
        goto out;
    }
    for (size_t i = 0; i < c.n; i++)
        batch_rec_del(&b, &c.v[i]->rec.key);
    for (size_t i = 0; i < g.n; i++) {
        size_t kl = 0;
        uint8_t *k = mk_key('g', g.keys[i], g.lens[i], NULL, 0, &kl);
        batch_add(&b, k, kl, NULL, 0);
    }
    size_t kl = 0;
    batch_add(&b, mk_key('t', name, nl, NULL, 0, &kl), kl, NULL, 0);
    if ((s = batch_commit(m, &b)) != RK_OK)
        goto out;
    drop_recs(m, c.v, c.n, removed);
    for (size_t i = 0; i < g.n; i++) {
        /* copy: the key bytes live in the node being deleted */
        uint8_t tmp[2 * CC_NAME_MAX + 2];
        size_t l = g.lens[i];
        memcpy(tmp, g.keys[i], l);
        cc_keymap_del(&m->grants, tmp, l);
    }
    rk_free(cc_keymap_del(&m->tenants, name, nl));
out:
    batch_free(&b);
    rk_free(c.v);
    rk_free(g.keys);
    rk_free(g.lens);
    pthread_mutex_unlock(&m->mu);
    return s;
}

typedef struct nlist {
    char **v;
    size_t n, cap;
    bool oom;
} nlist;

/* keymap visitor: copy tenant names. */
static int name_collect(void *arg, const uint8_t *key, size_t klen, void *val)
{
    nlist *l = arg;
    if (l->n == l->cap)
        return l->oom = true;
    char *s = rk_malloc(klen + 1);
    if (!s)
        return l->oom = true;
    memcpy(s, key, klen);
    s[klen] = 0;
    l->v[l->n++] = s;
    return 0;
}

/* qsort comparator over C strings. */
static int str_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* cc_metastore_i.tenant_list (contract in ragkv/metastore.h). */
static rk_status e_tenant_list(void *ctx, char ***names, size_t *n)
{
    emb_ms *m = ctx;
    pthread_mutex_lock(&m->mu);
    nlist l = {.cap = m->tenants.n};
    l.v = rk_calloc(l.cap ? l.cap : 1, sizeof(char *));
    if (l.v)
        cc_keymap_each(&m->tenants, name_collect, &l);
    pthread_mutex_unlock(&m->mu);
    if (!l.v || l.oom) {
        cc_names_free(l.v, l.n);
        return rk_error_set(RK_ERR_NOMEM, "tenant list");
    }
    qsort(l.v, l.n, sizeof(char *), str_cmp);
    *names = l.v;
    *n = l.n;
    return RK_OK;
}

/* cc_metastore_i.grant (contract in ragkv/metastore.h). */
static rk_status e_grant(void *ctx, const char *ns, const char *tenant, bool on)
{
    emb_ms *m = ctx;
    size_t al = strlen(ns), bl = strlen(tenant);
    pthread_mutex_lock(&m->mu);
    rk_status s = RK_OK;
    if (!cc_keymap_get(&m->tenants, ns, al) || !cc_keymap_get(&m->tenants, tenant, bl)) {
        s = rk_error_set(RK_ERR_NOT_FOUND, "grant: no such namespace or tenant");
        goto out;
    }
    size_t kl = 0;
    uint8_t *k = mk_key('g', ns, al, tenant, bl, &kl);
    if (!k) {
        s = rk_error_set(RK_ERR_NOMEM, "grant");
        goto out;
    }
    batch b;
    batch_init(&b);
    uint8_t *v = on ? rk_malloc(1) : NULL;
    batch_add(&b, k, kl, v, 0);
    if (on && !v)
        b.oom = true;
    s = batch_commit(m, &b);
    if (s == RK_OK) {
        if (on)
            s = cc_keymap_put(&m->grants, k + 1, kl - 1, (void *)1, NULL);
        else
            cc_keymap_del(&m->grants, k + 1, kl - 1);
    }
    batch_free(&b);
out:
    pthread_mutex_unlock(&m->mu);
    return s;
}

/* cc_metastore_i.readable (contract in ragkv/metastore.h). */
static rk_status e_readable(void *ctx, const char *tenant, const char *ns, bool *ok)
{
    emb_ms *m = ctx;
    if (strcmp(tenant, ns) == 0) {
        *ok = true;
        return RK_OK;
    }
    size_t al = strlen(ns), bl = strlen(tenant);
    uint8_t k[2 * CC_NAME_MAX + 2];
    if (al > CC_NAME_MAX || bl > CC_NAME_MAX) {
        *ok = false;
        return RK_OK;
    }
    memcpy(k, ns, al);
    k[al] = 0;
    memcpy(k + al + 1, tenant, bl);
    pthread_mutex_lock(&m->mu);
    *ok = cc_keymap_get(&m->grants, k, al + 1 + bl) != NULL;
    pthread_mutex_unlock(&m->mu);
    return RK_OK;
}

/* True when bytes or chunks pass the tenant's quota (0 = unlimited). */
static bool over(const cc_tenant_info *t, uint64_t bytes, uint64_t chunks)
{
    return (t->cfg.max_bytes && bytes > t->cfg.max_bytes) || (t->cfg.max_chunks && chunks > t->cfg.max_chunks);
}

/* cc_metastore_i.insert (contract in ragkv/metastore.h). */
static rk_status e_insert(void *ctx, const cc_record *rec, unsigned flags, cc_evlist *evicted)
{
    emb_ms *m = ctx;
    rk_status s = RK_OK;
    emb_rec *e = NULL;
    cand c = {.ns = rec->ns, .mode = 0};
    size_t nev = 0;
    batch b;
    batch_init(&b);
    pthread_mutex_lock(&m->mu);
    emb_tenant *t = cc_keymap_get(&m->tenants, rec->ns, strlen(rec->ns));
    if (!t) {
        s = rk_error_set(RK_ERR_NOT_FOUND, "insert: no tenant/namespace '%s'", rec->ns);
        goto out;
    }
    if (cc_keymap_get(&m->recs, rec->key.b, CC_KEY_BYTES)) {
        s = RK_ERR_EXISTS;
        goto out;
    }
    cc_tenant_info *ti = &t->info;
    double clock = ti->clock;
    if (!(flags & CC_INSERT_FORCE) && over(ti, ti->bytes + rec->size, ti->chunks + 1)) {
        /* evicting every unpinned chunk must be able to make room, or nothing is evicted */
        if (ti->cfg.policy != CC_QUOTA_EVICT || over(ti, ti->pinned_bytes + rec->size, ti->pinned_chunks + 1)) {
            s = rk_error_set(RK_ERR_QUOTA, "tenant '%s' over quota (%llu bytes, %llu chunks used)",
                             rec->ns, (unsigned long long)ti->bytes, (unsigned long long)ti->chunks);
            goto out;
        }
        if ((s = collect(m, &c)) != RK_OK)
            goto out;
        uint64_t bytes = ti->bytes, chunks = ti->chunks;
        while (nev < c.n && over(ti, bytes + rec->size, chunks + 1)) {
            bytes -= c.v[nev]->rec.size;
            chunks--;
            clock = c.v[nev]->prio;
            batch_rec_del(&b, &c.v[nev]->rec.key);
            nev++;
        }
        if (over(ti, bytes + rec->size, chunks + 1)) {
            s = rk_error_set(RK_ERR_INTERNAL, "insert: eviction did not make room");
            goto out;
        }
    }
    if (!(e = rk_calloc(1, sizeof(*e))) || cc_record_copy(&e->rec, rec) != RK_OK) {
        rk_free(e);
        e = NULL;
        s = rk_error_set(RK_ERR_NOMEM, "insert");
        goto out;
    }
    e->rec.hits = 0;
    e->rec.last_access_ms = rec->created_ms;
    e->prio = rec_prio(clock, &e->rec);
    batch_rec_put(&b, &e->rec);
    cc_tenant_info tnew = *ti;
    tnew.clock = clock;
    if (nev)
        batch_tenant_put(&b, &tnew);
    if ((s = batch_commit(m, &b)) != RK_OK)
        goto out;
    if ((s = cc_keymap_put(&m->recs, e->rec.key.b, CC_KEY_BYTES, e, NULL)) != RK_OK)
        goto out; /* memory now lags disk; the next open reloads it */
    drop_recs(m, c.v, nev, evicted);
    ti->clock = clock;
    account(t, &e->rec, +1);
    e = NULL;
out:
    pthread_mutex_unlock(&m->mu);
    if (e)
        free_rec(e);
    batch_free(&b);
    rk_free(c.v);
    return s;
}

/* cc_metastore_i.get (contract in ragkv/metastore.h). */
static rk_status e_get(void *ctx, const cc_key *keys, size_t n, cc_record *recs, rk_status *st)
{
    emb_ms *m = ctx;
    rk_status s = RK_OK;
    pthread_mutex_lock(&m->mu);
    for (size_t i = 0; i < n; i++) {
        emb_rec *e = cc_keymap_get(&m->recs, keys[i].b, CC_KEY_BYTES);
        cc_record_init(&recs[i]);
        st[i] = e ? cc_record_copy(&recs[i], &e->rec) : RK_ERR_NOT_FOUND;
        if (st[i] == RK_ERR_NOMEM)
            s = RK_ERR_NOMEM;
    }
    pthread_mutex_unlock(&m->mu);
    return s;
}

/* cc_metastore_i.remove (contract in ragkv/metastore.h). */
static rk_status e_remove(void *ctx, const cc_key *key, uint64_t expect_csum, cc_record *removed)
{
    emb_ms *m = ctx;
    rk_status s;
    batch b;
    batch_init(&b);
    pthread_mutex_lock(&m->mu);
    emb_rec *e = cc_keymap_get(&m->recs, key->b, CC_KEY_BYTES);
    if (!e || (expect_csum && e->rec.csum != expect_csum)) {
        s = RK_ERR_NOT_FOUND;
        goto out;
    }
    batch_rec_del(&b, key);
    if ((s = batch_commit(m, &b)) != RK_OK)
        goto out;
    if (removed) {
        *removed = e->rec;
        e->rec.craft = e->rec.variants = NULL;
        e->rec.craft_len = e->rec.variants_len = 0;
    }
    drop_recs(m, &e, 1, NULL);
out:
    pthread_mutex_unlock(&m->mu);
    batch_free(&b);
    return s;
}

/* cc_metastore_i.touch (contract in ragkv/metastore.h). */
static rk_status e_touch(void *ctx, const cc_touch *tv, size_t n)
{
    emb_ms *m = ctx;
    rk_status s = RK_OK;
    pthread_mutex_lock(&m->mu);
    /* in chunks of 32 records per write batch */
    for (size_t i = 0; i < n && s == RK_OK;) {
        batch b;
        batch_init(&b);
        size_t j = i;
        for (; j < n && j < i + 32; j++) {
            emb_rec *e = cc_keymap_get(&m->recs, tv[j].key.b, CC_KEY_BYTES);
            if (!e)
                continue;
            e->rec.hits += tv[j].n;
            if (tv[j].now_ms > e->rec.last_access_ms)
                e->rec.last_access_ms = tv[j].now_ms;
            emb_tenant *t = cc_keymap_get(&m->tenants, e->rec.ns, strlen(e->rec.ns));
            e->prio = rec_prio(t ? t->info.clock : 0, &e->rec);
            batch_rec_put(&b, &e->rec);
        }
        s = batch_commit(m, &b);
        batch_free(&b);
        i = j;
    }
    pthread_mutex_unlock(&m->mu);
    return s;
}

/* cc_metastore_i.evict (contract in ragkv/metastore.h). */
static rk_status e_evict(void *ctx, const char *ns, uint64_t bytes, cc_evlist *evicted)
{
    emb_ms *m = ctx;
    rk_status s;
    cand c = {.ns = ns, .mode = 0};
    batch b;
    batch_init(&b);
    pthread_mutex_lock(&m->mu);
    emb_tenant *t = cc_keymap_get(&m->tenants, ns, strlen(ns));
    if (!t) {
        s = RK_ERR_NOT_FOUND;
        goto out;
    }
    if ((s = collect(m, &c)) != RK_OK)
        goto out;
    uint64_t freed = 0;
    size_t k = 0;
    double clock = t->info.clock;
    for (; k < c.n && freed < bytes; k++) {
        freed += c.v[k]->rec.size;
        clock = c.v[k]->prio;
        batch_rec_del(&b, &c.v[k]->rec.key);
    }
    cc_tenant_info tnew = t->info;
    tnew.clock = clock;
    if (k)
        batch_tenant_put(&b, &tnew);
    if ((s = batch_commit(m, &b)) != RK_OK)
        goto out;
    t->info.clock = clock;
    drop_recs(m, c.v, k, evicted);
out:
    pthread_mutex_unlock(&m->mu);
    batch_free(&b);
    rk_free(c.v);
    return s;
}

/* cc_metastore_i.expire (contract in ragkv/metastore.h). */
static rk_status e_expire(void *ctx, uint64_t now_ms, cc_evlist *removed)
{
    emb_ms *m = ctx;
    rk_status s;
    cand c = {.mode = 1, .now = now_ms};
    batch b;
    batch_init(&b);
    pthread_mutex_lock(&m->mu);
    if ((s = collect(m, &c)) != RK_OK)
        goto out;
    for (size_t i = 0; i < c.n; i++)
        batch_rec_del(&b, &c.v[i]->rec.key);
    if ((s = batch_commit(m, &b)) != RK_OK)
        goto out;
    drop_recs(m, c.v, c.n, removed);
out:
    pthread_mutex_unlock(&m->mu);
    batch_free(&b);
    rk_free(c.v);
    return s;
}

/* keymap visitor: free a record. */
static int free_rec_cb(void *arg, const uint8_t *k, size_t kl, void *v)
{
    free_rec(v);
    return 0;
}
/* keymap visitor: rk_free the value. */
static int free_ptr_cb(void *arg, const uint8_t *k, size_t kl, void *v)
{
    rk_free(v);
    return 0;
}

/* Caller holds mu (or is the only user). */
static void do_forget(emb_ms *m)
{
    cc_keymap_each(&m->recs, free_rec_cb, NULL);
    cc_keymap_free(&m->recs);
    cc_keymap_each(&m->tenants, free_ptr_cb, NULL);
    cc_keymap_free(&m->tenants);
    cc_keymap_free(&m->grants);
}

typedef struct keycol {
    batch *b;
} keycol;

/* scan visitor: add the deletion of every META row. */
static int del_all_cb(void *arg, const uint8_t *key, size_t klen, const uint8_t *val, size_t vlen)
{
    batch *b = arg;
    uint8_t *k = rk_malloc(klen ? klen : 1);
    if (k)
        memcpy(k, key, klen);
    batch_add(b, k, klen, NULL, 0);
    return b->oom;
}

/* cc_metastore_i.clear (contract in ragkv/metastore.h). */
static rk_status e_clear(void *ctx)
{
    emb_ms *m = ctx;
    rk_status s = RK_OK;
    pthread_mutex_lock(&m->mu);
    if (m->bs) {
        batch b;
        batch_init(&b);
        s = cc_blobstore_scan(m->bs, CC_SPACE_META, del_all_cb, &b);
        if (s == RK_OK)
            s = batch_commit(m, &b);
        batch_free(&b);
    }
    if (s == RK_OK) {
        do_forget(m);
        m->intact = false;
    }
    pthread_mutex_unlock(&m->mu);
    return s;
}

/* cc_metastore_i.intact (contract in ragkv/metastore.h). */
static rk_status e_intact(void *ctx, bool *ok)
{
    emb_ms *m = ctx;
    pthread_mutex_lock(&m->mu);
    *ok = m->intact;
    pthread_mutex_unlock(&m->mu);
    return RK_OK;
}

/* cc_metastore_i.mark_intact (contract in ragkv/metastore.h). */
static rk_status e_mark_intact(void *ctx)
{
    emb_ms *m = ctx;
    pthread_mutex_lock(&m->mu);
    batch b;
    batch_init(&b);
    uint8_t *k = rk_malloc(1), *v = rk_malloc(6);
    if (k)
        k[0] = '!';
    if (v)
        memcpy(v, "intact", 6);
    else
        b.oom = true;
    batch_add(&b, k, 1, v, 6);
    rk_status s = batch_commit(m, &b);
    batch_free(&b);
    if (s == RK_OK)
        m->intact = true;
    pthread_mutex_unlock(&m->mu);
    return s;
}

/* cc_metastore_i.close (contract in ragkv/metastore.h). */
static void e_close(void *ctx)
{
    emb_ms *m = ctx;
    if (!m)
        return;
    do_forget(m);
    pthread_mutex_destroy(&m->mu);
    rk_free(m);
}

static const struct cc_metastore_i emb_iface = {
    .name = "embedded",
    .tenant_put = e_tenant_put,
    .tenant_get = e_tenant_get,
    .tenant_del = e_tenant_del,
    .tenant_list = e_tenant_list,
    .grant = e_grant,
    .readable = e_readable,
    .insert = e_insert,
    .get = e_get,
    .remove = e_remove,
    .touch = e_touch,
    .evict = e_evict,
    .expire = e_expire,
    .clear = e_clear,
    .intact = e_intact,
    .mark_intact = e_mark_intact,
    .close = e_close,
};

/* ---- load -------------------------------------------------------------------------------- */

typedef struct loader {
    emb_ms *m;
    rk_status s;
} loader;

/* Open, pass 1: the intact marker, grants and tenants. */
static int load_tenant_cb(void *arg, const uint8_t *key, size_t klen, const uint8_t *val, size_t vlen)
{
    loader *L = arg;
    emb_ms *m = L->m;
    if (klen < 1)
        return 0;
    if (key[0] == '!') {
        m->intact = true;
        return 0;
    }
    if (key[0] == 'g' && klen > 1) {
        if ((L->s = cc_keymap_put(&m->grants, key + 1, klen - 1, (void *)1, NULL)) != RK_OK)
            return 1;
        return 0;
    }
    if (key[0] != 't' || klen < 2 || klen - 1 > CC_NAME_MAX || vlen < 25)
        return 0;
    emb_tenant *t = rk_calloc(1, sizeof(*t));
    if (!t) {
        L->s = RK_ERR_NOMEM;
        return 1;
    }
    memcpy(t->info.cfg.name, key + 1, klen - 1);
    t->info.cfg.max_bytes = rk_get_le64(val);
    t->info.cfg.max_chunks = rk_get_le64(val + 8);
    t->info.cfg.policy = val[16] == CC_QUOTA_EVICT ? CC_QUOTA_EVICT : CC_QUOTA_REJECT;
    uint64_t cb = rk_get_le64(val + 17);
    memcpy(&t->info.clock, &cb, 8);
    if (!isfinite(t->info.clock))
        t->info.clock = 0;
    if ((L->s = cc_keymap_put(&m->tenants, key + 1, klen - 1, t, NULL)) != RK_OK) {
        rk_free(t);
        return 1;
    }
    return 0;
}

/* Open, pass 2: records, accounted to their tenants (damaged rows are skipped). */
static int load_rec_cb(void *arg, const uint8_t *key, size_t klen, const uint8_t *val, size_t vlen)
{
    loader *L = arg;
    emb_ms *m = L->m;
    if (klen != 1 + CC_KEY_BYTES || key[0] != 'r')
        return 0;
    emb_rec *e = rk_calloc(1, sizeof(*e));
    if (!e) {
        L->s = RK_ERR_NOMEM;
        return 1;
    }
    size_t used;
    if (cc_record_decode(val, vlen, &e->rec, &used) != RK_OK || vlen - used != 16 ||
        memcmp(e->rec.key.b, key + 1, CC_KEY_BYTES) != 0) {
        /* a damaged row: skip it (its blob becomes an orphan, collected by gc) */
        rk_free(e);
        return 0;
    }
    e->rec.hits = rk_get_le64(val + used);
    e->rec.last_access_ms = rk_get_le64(val + used + 8);
    emb_tenant *t = cc_keymap_get(&m->tenants, e->rec.ns, strlen(e->rec.ns));
    if (!t) {
        free_rec(e);
        return 0;
    }
    e->prio = rec_prio(t->info.clock, &e->rec);
    if ((L->s = cc_keymap_put(&m->recs, e->rec.key.b, CC_KEY_BYTES, e, NULL)) != RK_OK) {
        free_rec(e);
        return 1;
    }
    account(t, &e->rec, +1);
    return 0;
}

/* See ragkv/metastore.h. */
rk_status cc_metastore_embedded_open(cc_blobstore *bs, cc_metastore *out)
{
    emb_ms *m = rk_calloc(1, sizeof(*m));
    if (!m)
        return rk_error_set(RK_ERR_NOMEM, "embedded metastore");
    pthread_mutex_init(&m->mu, NULL);
    if (bs) {
        m->bsv = *bs;
        m->bs = &m->bsv;
    }
    if (bs) {
        /* tenants first (records are accounted to them), then records */
        loader L = {m, RK_OK};
        rk_status s = cc_blobstore_scan(bs, CC_SPACE_META, load_tenant_cb, &L);
        if (s == RK_OK)
            s = L.s;
        if (s == RK_OK)
            s = cc_blobstore_scan(bs, CC_SPACE_META, load_rec_cb, &L);
        if (s == RK_OK)
            s = L.s;
        if (s != RK_OK) {
            e_close(m);
            return s;
        }
    }
    out->iface = &emb_iface;
    out->ctx = m;
    return RK_OK;
}
