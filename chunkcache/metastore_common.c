/* metastore_common.c — helpers shared by the metadata backends. */
#include <string.h>

#include "ragkv/alloc.h"
#include "ragkv/metastore.h"

rk_status cc_evlist_push(cc_evlist *l, const cc_key *key, uint64_t csum, uint64_t size)
{
    if (!l)
        return RK_OK;
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 16;
        cc_evicted *p = rk_realloc(l->items, cap * sizeof(*p));
        if (!p)
            return rk_error_set(RK_ERR_NOMEM, "evicted list");
        l->items = p;
        l->cap = cap;
    }
    l->items[l->n].key = *key;
    l->items[l->n].csum = csum;
    l->items[l->n].size = size;
    l->n++;
    return RK_OK;
}

void cc_evlist_free(cc_evlist *l)
{
    if (!l)
        return;
    rk_free(l->items);
    memset(l, 0, sizeof(*l));
}

void cc_names_free(char **names, size_t n)
{
    if (!names)
        return;
    for (size_t i = 0; i < n; i++)
        rk_free(names[i]);
    rk_free(names);
}
