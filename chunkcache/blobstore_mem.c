/* blobstore_mem.c — the in-memory blob store backend (tests, tools). One mutex guards the
 * maps; values are cc_buf so a get is a reference, not a copy. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "keymap.h"
#include "ragkv/alloc.h"
#include "ragkv/blobstore.h"

typedef struct mem_bs {
    pthread_mutex_t mu;               /* guards maps and bytes */
    cc_keymap maps[CC_SPACE_COUNT];   /* key -> cc_buf* (one reference held by the map) */
    uint64_t bytes[CC_SPACE_COUNT];   /* sum of value lengths per space */
} mem_bs;

/* RK_ERR_INVALID for a space outside CC_SPACE_*. */
static rk_status check_space(cc_space sp)
{
    return (unsigned)sp < CC_SPACE_COUNT ? RK_OK : rk_error_set(RK_ERR_INVALID, "blobstore: bad space %d", (int)sp);
}

/* Caller holds mu. Takes over v's reference. */
static rk_status do_put(mem_bs *m, cc_space sp, const void *key, size_t klen, cc_buf *v)
{
    void *old;
    rk_status s = cc_keymap_put(&m->maps[sp], key, klen, v, &old);
    if (s != RK_OK) {
        cc_buf_release(v);
        return s;
    }
    m->bytes[sp] += v->len;
    if (old) {
        m->bytes[sp] -= ((cc_buf *)old)->len;
        cc_buf_release(old);
    }
    return RK_OK;
}

/* Remove key and release its value. Caller holds mu. */
static void do_del(mem_bs *m, cc_space sp, const void *key, size_t klen)
{
    cc_buf *old = cc_keymap_del(&m->maps[sp], key, klen);
    if (old) {
        m->bytes[sp] -= old->len;
        cc_buf_release(old);
    }
}

/* One new buffer holding the concatenation of parts (NULL when out of memory). */
static cc_buf *gather(const cc_iov *parts, size_t n)
{
    size_t total = 0;
    for (size_t i = 0; i < n; i++)
        if (!rk_add_size(total, parts[i].len, &total))
            return NULL;
    uint8_t *p = rk_malloc(total ? total : 1);
    if (!p)
        return NULL;
    size_t off = 0;
    for (size_t i = 0; i < n; i++) {
        if (parts[i].len)
            memcpy(p + off, parts[i].base, parts[i].len);
        off += parts[i].len;
    }
    cc_buf *b = cc_buf_wrap(p, total);
    if (!b)
        rk_free(p);
    return b;
}

/* cc_blobstore_i.put (contract in ragkv/blobstore.h). */
static rk_status mem_put(void *ctx, cc_space sp, const void *key, size_t klen, const cc_iov *parts, size_t n)
{
    mem_bs *m = ctx;
    rk_status s = check_space(sp);
    if (s != RK_OK)
        return s;
    cc_buf *v = gather(parts, n);
    if (!v)
        return rk_error_set(RK_ERR_NOMEM, "blobstore mem: value");
    pthread_mutex_lock(&m->mu);
    s = do_put(m, sp, key, klen, v);
    pthread_mutex_unlock(&m->mu);
    return s;
}

/* cc_blobstore_i.get (contract in ragkv/blobstore.h). */
static rk_status mem_get(void *ctx, cc_space sp, const void *key, size_t klen, cc_buf **out)
{
    mem_bs *m = ctx;
    rk_status s = check_space(sp);
    if (s != RK_OK)
        return s;
    pthread_mutex_lock(&m->mu);
    cc_buf *v = cc_keymap_get(&m->maps[sp], key, klen);
    if (v)
        cc_buf_ref(v);
    pthread_mutex_unlock(&m->mu);
    if (!v)
        return RK_ERR_NOT_FOUND;
    *out = v;
    return RK_OK;
}

/* cc_blobstore_i.del (contract in ragkv/blobstore.h). */
static rk_status mem_del(void *ctx, cc_space sp, const void *key, size_t klen)
{
    mem_bs *m = ctx;
    rk_status s = check_space(sp);
    if (s != RK_OK)
        return s;
    pthread_mutex_lock(&m->mu);
    do_del(m, sp, key, klen);
    pthread_mutex_unlock(&m->mu);
    return RK_OK;
}

/* cc_blobstore_i.write_batch (contract in ragkv/blobstore.h). */
static rk_status mem_write_batch(void *ctx, cc_space sp, size_t n, const cc_iov *keys, const cc_iov *vals)
{
    mem_bs *m = ctx;
    rk_status s = check_space(sp);
    if (s != RK_OK)
        return s;
    /* copy every value first, so that an allocation failure leaves the store untouched */
    cc_buf **v = rk_calloc(n ? n : 1, sizeof(*v));
    if (!v)
        return rk_error_set(RK_ERR_NOMEM, "blobstore mem: batch");
    for (size_t i = 0; i < n; i++)
        if (vals[i].base && !(v[i] = cc_buf_copy(vals[i].base, vals[i].len))) {
            s = rk_error_set(RK_ERR_NOMEM, "blobstore mem: batch value");
            goto fail;
        }
    pthread_mutex_lock(&m->mu);
    for (size_t i = 0; i < n; i++) {
        if (v[i]) {
            rk_status s2 = do_put(m, sp, keys[i].base, keys[i].len, v[i]);
            v[i] = NULL;
            if (s2 != RK_OK && s == RK_OK)
                s = s2;
        } else {
            do_del(m, sp, keys[i].base, keys[i].len);
        }
    }
    pthread_mutex_unlock(&m->mu);
fail:
    for (size_t i = 0; i < n; i++)
        cc_buf_release(v[i]);
    rk_free(v);
    return s;
}

typedef struct kv {
    uint8_t *key;
    size_t klen;
    cc_buf *val;
} kv;

typedef struct collect {
    kv *items;
    size_t n;
    size_t cap;
    int oom;
} collect;

/* keymap visitor: copy the key, reference the value. */
static int collect_one(void *arg, const uint8_t *key, size_t klen, void *val)
{
    collect *c = arg;
    if (c->n == c->cap)
        return c->oom = 1;
    kv *it = &c->items[c->n];
    if (!(it->key = rk_malloc(klen ? klen : 1)))
        return c->oom = 1;
    memcpy(it->key, key, klen);
    it->klen = klen;
    it->val = cc_buf_ref(val);
    c->n++;
    return 0;
}

/* Byte-wise key order, shorter first on a common prefix (RocksDB's order). */
static int kv_cmp(const void *a, const void *b)
{
    const kv *x = a, *y = b;
    size_t n = x->klen < y->klen ? x->klen : y->klen;
    int c = memcmp(x->key, y->key, n);
    return c ? c : (x->klen > y->klen) - (x->klen < y->klen);
}

/* Snapshot under the lock, visit without it (fn may call back into the store). */
static rk_status mem_scan(void *ctx, cc_space sp, cc_scan_fn fn, void *arg)
{
    mem_bs *m = ctx;
    rk_status s = check_space(sp);
    if (s != RK_OK)
        return s;
    collect c = {0};
    pthread_mutex_lock(&m->mu);
    c.cap = m->maps[sp].n;
    c.items = rk_calloc(c.cap ? c.cap : 1, sizeof(kv));
    if (c.items)
        cc_keymap_each(&m->maps[sp], collect_one, &c);
    pthread_mutex_unlock(&m->mu);
    if (!c.items || c.oom)
        s = rk_error_set(RK_ERR_NOMEM, "blobstore mem: scan");
    else {
        qsort(c.items, c.n, sizeof(kv), kv_cmp);
        for (size_t i = 0; i < c.n; i++)
            if (fn(arg, c.items[i].key, c.items[i].klen, c.items[i].val->data, c.items[i].val->len))
                break;
    }
    for (size_t i = 0; i < c.n; i++) {
        rk_free(c.items[i].key);
        cc_buf_release(c.items[i].val);
    }
    rk_free(c.items);
    return s;
}

/* cc_blobstore_i.usage (contract in ragkv/blobstore.h). */
static rk_status mem_usage(void *ctx, cc_space sp, uint64_t *bytes)
{
    mem_bs *m = ctx;
    rk_status s = check_space(sp);
    if (s != RK_OK)
        return s;
    pthread_mutex_lock(&m->mu);
    *bytes = m->bytes[sp];
    pthread_mutex_unlock(&m->mu);
    return RK_OK;
}

/* keymap visitor: drop the map's reference. */
static int release_one(void *arg, const uint8_t *key, size_t klen, void *val)
{
    cc_buf_release(val);
    return 0;
}

/* cc_blobstore_i.close (contract in ragkv/blobstore.h). */
static void mem_close(void *ctx)
{
    mem_bs *m = ctx;
    if (!m)
        return;
    for (int i = 0; i < CC_SPACE_COUNT; i++) {
        cc_keymap_each(&m->maps[i], release_one, NULL);
        cc_keymap_free(&m->maps[i]);
    }
    pthread_mutex_destroy(&m->mu);
    rk_free(m);
}

static const struct cc_blobstore_i mem_iface = {
    .name = "mem",
    .put = mem_put,
    .get = mem_get,
    .del = mem_del,
    .write_batch = mem_write_batch,
    .scan = mem_scan,
    .usage = mem_usage,
    .close = mem_close,
};

/* See ragkv/blobstore.h. */
rk_status cc_blobstore_mem_open(cc_blobstore *out)
{
    mem_bs *m = rk_calloc(1, sizeof(*m));
    if (!m)
        return rk_error_set(RK_ERR_NOMEM, "blobstore mem: open");
    pthread_mutex_init(&m->mu, NULL);
    out->iface = &mem_iface;
    out->ctx = m;
    return RK_OK;
}
