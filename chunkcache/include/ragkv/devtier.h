/*
 * ragkv/devtier.h — the chunk cache's device tier: decoded chunk KV kept where the engine
 * computes (the daemon keeps engine KV blocks: host memory on the CPU backend, device memory
 * once a backend stores blocks natively), under a byte budget, evicted by value.
 *
 * The tier maps a chunk key to an opaque object the caller made (the daemon's: the chunk's
 * tokens and an eng_kvblock), with the bytes it holds and the recompute cost a hit saves.
 * Eviction is Greedy-Dual-Size-Frequency like the RAM tier's: priority = clock + (hits + 1) x
 * cost / bytes (cc_gdsf_priority), the lowest leaves first, and the tier's clock rises to each
 * evicted priority, so entries not hit for a long time age out. Pinned entries (the chunk's
 * record is pinned) are never evicted; an entry whose chunk's TTL passed is a miss (and leaves).
 *
 * The tier does not know who may read a chunk: it is a cache of bytes by key. Callers check
 * the tenant's right to the chunk with the store (cc_store_lookup) on every hit; the store,
 * given the tier in cc_config.device, drops an entry whenever its chunk stops existing or
 * stops being valid (delete, eviction, expiry, tenant deletion, repair, rebuild).
 *
 * Objects are referenced: get and admit hand out a reference, release gives it back. An entry
 * that is evicted or dropped leaves the tier at once (its bytes no longer count), but its
 * object is freed (cfg.free_obj) only when the last reference is released.
 *
 *     cc_devtier_config c = {.budget_bytes = 1 << 30, .free_obj = free_block, .free_ctx = x};
 *     cc_devtier *t;  cc_devtier_new(&c, &t);
 *     cc_devtier_entry *e;
 *     if (cc_devtier_get(t, &key, &e) == RK_OK) {            // hit
 *         use(cc_devtier_entry_obj(e));  cc_devtier_release(t, e);
 *     } else {                                               // miss
 *         uint64_t ticket = cc_devtier_ticket(t, &key);      // before reading the chunk
 *         void *obj = make(cc_store_get(...));
 *         cc_devtier_meta m = {.bytes = size(obj), .cost = ntokens};
 *         if (cc_devtier_admit(t, &key, obj, &m, ticket, &e) == RK_OK) { use(obj); cc_devtier_release(t, e); }
 *         else { use(obj); free_it(obj); }                   // refused: still the caller's
 *     }
 *
 * Thread safety: every function may be called from many threads at once (one mutex).
 * free_obj runs outside that mutex, on whichever thread dropped the last reference or removed
 * an unreferenced entry.
 */
#ifndef RAGKV_DEVTIER_H
#define RAGKV_DEVTIER_H

#include <stdbool.h>
#include <stdint.h>

#include "ragkv/chunk_key.h"
#include "ragkv/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct cc_devtier cc_devtier;
typedef struct cc_devtier_entry cc_devtier_entry;

typedef struct cc_devtier_config {
    uint64_t budget_bytes;                  /* entry bytes the tier may hold (> 0) */
    void (*free_obj)(void *ctx, void *obj); /* frees an object the tier owned (required) */
    void *free_ctx;                         /* its first argument */
    uint64_t (*now_ms)(void *ctx);          /* wall clock for TTLs; NULL: rk_wall_ms (tests
                                               pass their own) */
    void *clock_ctx;                        /* its argument */
} cc_devtier_config;

/* What an admitted object is worth and how long it is valid. */
typedef struct cc_devtier_meta {
    uint64_t bytes;      /* memory the object holds (> 0): what counts against the budget */
    double cost;         /* recompute cost one hit saves (>= 0, finite; the daemon: tokens) */
    uint64_t expires_ms; /* wall-clock expiry of the chunk (its record's); 0: none */
    bool pinned;         /* the chunk is pinned (its record's flag): never evicted */
} cc_devtier_meta;

/* A new, empty tier. *out owned by the caller (cc_devtier_free). RK_ERR_INVALID without a
 * budget or free_obj. */
rk_status cc_devtier_new(const cc_devtier_config *cfg, cc_devtier **out);

/* Free every object and the tier. Every reference must have been released. NULL: no-op. */
void cc_devtier_free(cc_devtier *t);

/* The key's object with a reference held (*out; release with cc_devtier_release), and the
 * entry's hit counted. RK_ERR_NOT_FOUND (a miss) when absent or expired (an expired entry
 * leaves the tier). */
rk_status cc_devtier_get(cc_devtier *t, const cc_key *key, cc_devtier_entry **out);

/* The object of an entry the caller holds a reference to. */
void *cc_devtier_entry_obj(const cc_devtier_entry *e);

/* Give a reference back; frees the object when the entry left the tier and this was the
 * last reference. NULL: no-op. */
void cc_devtier_release(cc_devtier *t, cc_devtier_entry *e);

/* A token to take before reading a chunk that is then admitted: admit refuses when the key
 * was dropped in between (so a chunk deleted during the read is never admitted stale). */
uint64_t cc_devtier_ticket(cc_devtier *t, const cc_key *key);

/* Offer obj for key. RK_OK: the tier owns obj (freed by free_obj once evicted or dropped and
 * unreferenced) and *ref, when ref is not NULL, holds a reference. Lower-priority unpinned
 * entries are evicted to make room; the new entry competes with them on priority (when it is
 * itself the least valuable, it is refused). On any error obj stays the caller's:
 *   RK_ERR_LIMIT      bigger than the budget, room only by evicting pinned entries, or less
 *                     valuable than every entry it would displace;
 *   RK_ERR_EXISTS     the key is in the tier already;
 *   RK_ERR_NOT_FOUND  the key was dropped since ticket was taken, or m->expires_ms passed;
 *   RK_ERR_INVALID    bad arguments (bytes 0, negative or non-finite cost);
 *   RK_ERR_NOMEM. */
rk_status cc_devtier_admit(cc_devtier *t, const cc_key *key, void *obj, const cc_devtier_meta *m, uint64_t ticket,
                           cc_devtier_entry **ref);

/* Remove key's entry (its chunk was deleted, evicted or repaired below): it is a miss from
 * now on, and admissions with older tickets are refused. t NULL or key absent: no-op. */
void cc_devtier_drop(cc_devtier *t, const cc_key *key);

/* Drop every entry (the metadata was rebuilt). t NULL: no-op. */
void cc_devtier_clear(cc_devtier *t);

typedef struct cc_devtier_stats {
    uint64_t hits;         /* gets that found their key */
    uint64_t misses;       /* gets that did not (absent or expired) */
    uint64_t admits;       /* objects admitted */
    uint64_t refusals;     /* admissions refused (any error) */
    uint64_t evictions;    /* entries evicted for the budget */
    uint64_t drops;        /* entries dropped because their chunk went (cc_devtier_drop/clear) */
    uint64_t expired;      /* entries that left at their TTL */
    uint64_t bytes;        /* bytes of the entries in the tier now */
    uint64_t entries;      /* entries in the tier now */
    uint64_t pinned_bytes; /* of which pinned */
    uint64_t held_bytes;   /* bytes of objects out of the tier but still referenced */
    uint64_t budget_bytes; /* the budget */
} cc_devtier_stats;

void cc_devtier_stats_get(cc_devtier *t, cc_devtier_stats *out);

#ifdef __cplusplus
}
#endif
#endif
