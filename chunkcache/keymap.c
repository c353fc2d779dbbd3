/* keymap.c — chained hash map keyed by bytes (see keymap.h). */
#include "keymap.h"

#include <string.h>

#include "ragkv/alloc.h"
#include "ragkv/hash.h"

static cc_kmnode **find(const cc_keymap *m, const void *key, size_t klen, uint64_t h)
{
    if (!m->nb)
        return NULL;
    cc_kmnode **pp = &m->b[h & (m->nb - 1)];
    for (; *pp; pp = &(*pp)->next)
        if ((*pp)->hash == h && (*pp)->klen == klen && memcmp((*pp)->key, key, klen) == 0)
            return pp;
    return pp;
}

void *cc_keymap_get(const cc_keymap *m, const void *key, size_t klen)
{
    cc_kmnode **pp = find(m, key, klen, rk_xxh3_64(key, klen));
    return pp && *pp ? (*pp)->val : NULL;
}

static rk_status grow(cc_keymap *m)
{
    size_t nb = m->nb ? m->nb * 2 : 64;
    cc_kmnode **b = rk_calloc(nb, sizeof(*b));
    if (!b)
        return rk_error_set(RK_ERR_NOMEM, "keymap: %zu buckets", nb);
    for (size_t i = 0; i < m->nb; i++) {
        for (cc_kmnode *x = m->b[i], *next; x; x = next) {
            next = x->next;
            cc_kmnode **h = &b[x->hash & (nb - 1)];
            x->next = *h;
            *h = x;
        }
    }
    rk_free(m->b);
    m->b = b;
    m->nb = nb;
    return RK_OK;
}

rk_status cc_keymap_put(cc_keymap *m, const void *key, size_t klen, void *val, void **old)
{
    uint64_t h = rk_xxh3_64(key, klen);
    if (old)
        *old = NULL;
    cc_kmnode **pp = find(m, key, klen, h);
    if (pp && *pp) {
        if (old)
            *old = (*pp)->val;
        (*pp)->val = val;
        return RK_OK;
    }
    if (m->n + 1 > m->nb / 2 * 1 + m->nb / 4) { /* load factor 0.75 */
        rk_status s = grow(m);
        if (s != RK_OK)
            return s;
    }
    cc_kmnode *x = rk_malloc(sizeof(*x) + klen);
    if (!x)
        return rk_error_set(RK_ERR_NOMEM, "keymap: node");
    x->hash = h;
    x->val = val;
    x->klen = klen;
    memcpy(x->key, key, klen);
    cc_kmnode **head = &m->b[h & (m->nb - 1)];
    x->next = *head;
    *head = x;
    m->n++;
    return RK_OK;
}

void *cc_keymap_del(cc_keymap *m, const void *key, size_t klen)
{
    cc_kmnode **pp = find(m, key, klen, rk_xxh3_64(key, klen));
    if (!pp || !*pp)
        return NULL;
    cc_kmnode *x = *pp;
    void *v = x->val;
    *pp = x->next;
    rk_free(x);
    m->n--;
    return v;
}

void cc_keymap_each(const cc_keymap *m, int (*fn)(void *, const uint8_t *, size_t, void *), void *arg)
{
    for (size_t i = 0; i < m->nb; i++)
        for (cc_kmnode *x = m->b[i]; x; x = x->next)
            if (fn(arg, x->key, x->klen, x->val))
                return;
}

void cc_keymap_free(cc_keymap *m)
{
    if (!m)
        return;
    for (size_t i = 0; i < m->nb; i++)
        for (cc_kmnode *x = m->b[i], *next; x; x = next) {
            next = x->next;
            rk_free(x);
        }
    rk_free(m->b);
    m->b = NULL;
    m->nb = m->n = 0;
}
