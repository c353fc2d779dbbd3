/*
 * gdsf_heap.h — private: the min-heap of Greedy-Dual-Size-Frequency priorities that the RAM
 * tier (store.c) and the device tier (devtier.c) evict from. Intrusive: each entry embeds a
 * cc_hnode, and the heap keeps the node's position in it, so a hit can re-prioritise its
 * entry in O(log n) and a drop can remove it from the middle. Not thread-safe: the owning
 * tier guards its heap with its own lock.
 *
 *     typedef struct ent { cc_hnode hn; ... } ent;
 *     if (cc_heap_reserve(&h) == RK_OK) { e->hn.prio = p; cc_heap_push(&h, &e->hn); }
 *     ent *lowest = CC_HEAP_ENTRY(h.v[0], ent, hn);
 */
#ifndef RAGKV_CC_GDSF_HEAP_H
#define RAGKV_CC_GDSF_HEAP_H

#include <stddef.h>

#include "ragkv/status.h"

typedef struct cc_hnode {
    double prio; /* GDSF priority: the lowest is evicted first */
    size_t idx;  /* position in the heap's array (maintained by the heap) */
} cc_hnode;

typedef struct cc_heap {
    cc_hnode **v; /* (n) nodes, v[0] the lowest priority */
    size_t n;     /* nodes in the heap */
    size_t cap;   /* slots allocated in v */
} cc_heap;

#define CC_HEAP_INIT {NULL, 0, 0}

/* The entry a node is embedded in. */
#define CC_HEAP_ENTRY(node, type, member) ((type *)((char *)(node) - offsetof(type, member)))

/* Make room for one more node, so that the next push cannot fail. RK_ERR_NOMEM. */
rk_status cc_heap_reserve(cc_heap *h);

/* Insert x (room reserved) at its priority x->prio. */
void cc_heap_push(cc_heap *h, cc_hnode *x);

/* Restore the order around x after its priority changed. */
void cc_heap_fix(cc_heap *h, cc_hnode *x);

/* Take x out of the heap (x itself is the caller's). */
void cc_heap_remove(cc_heap *h, cc_hnode *x);

/* Free the array (not the nodes). */
void cc_heap_free(cc_heap *h);

#endif
