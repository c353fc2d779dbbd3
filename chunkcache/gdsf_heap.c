/* gdsf_heap.c — the GDSF eviction heap of the RAM and device tiers (see gdsf_heap.h). */
#include "gdsf_heap.h"

#include "ragkv/alloc.h"

static void swap(cc_heap *h, size_t i, size_t j)
{
    cc_hnode *t = h->v[i];
    h->v[i] = h->v[j];
    h->v[j] = t;
    h->v[i]->idx = i;
    h->v[j]->idx = j;
}

/* Restore the heap property around position i. */
static void fix_at(cc_heap *h, size_t i)
{
    while (i > 0 && h->v[(i - 1) / 2]->prio > h->v[i]->prio) {
        swap(h, i, (i - 1) / 2);
        i = (i - 1) / 2;
    }
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < h->n && h->v[l]->prio < h->v[m]->prio)
            m = l;
        if (r < h->n && h->v[r]->prio < h->v[m]->prio)
            m = r;
        if (m == i)
            return;
        swap(h, i, m);
        i = m;
    }
}

rk_status cc_heap_reserve(cc_heap *h)
{
    if (h->n < h->cap)
        return RK_OK;
    size_t cap = h->cap ? 2 * h->cap : 64;
    cc_hnode **v = rk_realloc(h->v, cap * sizeof(*v));
    if (!v)
        return RK_ERR_NOMEM;
    h->v = v;
    h->cap = cap;
    return RK_OK;
}

void cc_heap_push(cc_heap *h, cc_hnode *x)
{
    x->idx = h->n;
    h->v[h->n++] = x;
    fix_at(h, x->idx);
}

void cc_heap_fix(cc_heap *h, cc_hnode *x)
{
    fix_at(h, x->idx);
}

void cc_heap_remove(cc_heap *h, cc_hnode *x)
{
    size_t i = x->idx;
    h->n--;
    if (i != h->n) {
        h->v[i] = h->v[h->n];
        h->v[i]->idx = i;
        fix_at(h, i);
    }
}

void cc_heap_free(cc_heap *h)
{
    rk_free(h->v);
    h->v = NULL;
    h->n = h->cap = 0;
}
