/*
 * keymap.h — private: a hash map from byte-string keys to pointers (chained, grows by
 * doubling). Not thread-safe: every user guards its map with its own lock.
 */
#ifndef RAGKV_CC_KEYMAP_H
#define RAGKV_CC_KEYMAP_H

#include <stddef.h>
#include <stdint.h>

#include "ragkv/status.h"

typedef struct cc_kmnode {
    struct cc_kmnode *next; /* next node of the bucket */
    uint64_t hash;          /* rk_xxh3_64 of the key */
    void *val;              /* the user's value (not owned by the map) */
    size_t klen;            /* bytes of key */
    uint8_t key[];          /* the key, copied */
} cc_kmnode;

typedef struct cc_keymap {
    cc_kmnode **b; /* (nb) bucket heads */
    size_t nb;     /* bucket count, a power of two (0 before the first insert) */
    size_t n;      /* entries */
} cc_keymap;

#define CC_KEYMAP_INIT {NULL, 0, 0}

/* The value stored under key, or NULL. */
void *cc_keymap_get(const cc_keymap *m, const void *key, size_t klen);

/* Store val under key (replacing; *old gets the previous value or NULL). RK_ERR_NOMEM. */
rk_status cc_keymap_put(cc_keymap *m, const void *key, size_t klen, void *val, void **old);

/* Remove key; returns its value or NULL. */
void *cc_keymap_del(cc_keymap *m, const void *key, size_t klen);

/* Call fn for every entry; fn must not modify the map. Stops when fn returns non-zero. */
void cc_keymap_each(const cc_keymap *m, int (*fn)(void *arg, const uint8_t *key, size_t klen, void *val),
                    void *arg);

/* Free the nodes (not the values). */
void cc_keymap_free(cc_keymap *m);

#endif
