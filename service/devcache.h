/*
 * devcache.h — private to service/: the daemon's device tier (device-budget-mb). A cc_devtier
 * (ragkv/devtier.h) whose objects are decoded chunks resident on the executor's backend: the
 * chunk's tokens and its KV as an eng_kvblock, so that a hit is imported into a prompt's
 * sequence with no blob read, no decode and no upload. The store is given the tier
 * (cc_config.device) and drops an entry whenever its chunk goes.
 *
 * Authorization is not the tier's: the executor asks the store (cc_store_lookup, which checks
 * existence, expiry and the tenant's right to the namespace) for every chunk before it takes
 * the chunk from the tier (exec.c, resolve_segments).
 *
 * Threads: blocks are made, imported, read and freed on the executor thread, which drives the
 * backend. The store drops entries from any thread, so an object whose last reference goes
 * away elsewhere is not freed there: it waits on a list, the waker set by the executor is
 * called, and the executor frees it (svc_devcache_reap). Lock: mu guards that list.
 */
#ifndef RAGKV_SVC_DEVCACHE_H
#define RAGKV_SVC_DEVCACHE_H

#include <stddef.h>
#include <stdint.h>

#include "ragkv/chunkcache.h"
#include "ragkv/devtier.h"
#include "ragkv/engine.h"
#include "ragkv/status.h"

/* One decoded chunk in the tier (the tier's object). */
typedef struct svc_devchunk {
    int32_t *tokens;    /* (n) the chunk's token ids, owned */
    uint32_t n;         /* tokens */
    eng_kvblock *block; /* its KV on the executor's backend, owned */
    struct svc_devchunk *next; /* on the list of objects to free */
} svc_devchunk;

typedef struct svc_devcache svc_devcache;

/* A tier of budget_bytes. *out freed by svc_devcache_close. */
rk_status svc_devcache_open(uint64_t budget_bytes, svc_devcache **out);

/* The tier, for cc_config.device and for lookups (borrowed). */
cc_devtier *svc_devcache_tier(svc_devcache *dc);

/* wake(ctx) is called (from any thread, under the devcache's lock: it may take the caller's
 * own lock, which must never be held across a devcache or tier call) when an object starts
 * waiting to be freed. NULL: none; returns once no call of the previous waker is running. */
void svc_devcache_set_waker(svc_devcache *dc, void (*wake)(void *ctx), void *ctx);

/* Objects waiting to be freed (any thread; a hint for the executor's wait). */
size_t svc_devcache_pending(svc_devcache *dc);

/* Free the objects waiting (the thread that drives the backend). */
void svc_devcache_reap(svc_devcache *dc);

/* Offer chunk key's decoded KV, the block blk of n tokens on the executor's backend (tokens:
 * n ids, copied), to the tier: cost n (the prefill it saves), expiry and pin from rec, ticket
 * taken before the chunk was read. RK_OK: the tier owns blk and *ref holds a reference to the
 * new entry (cc_devtier_release). Otherwise (the tier refused, or memory is short) blk stays
 * the caller's. Executor thread. */
rk_status svc_devcache_admit(svc_devcache *dc, const cc_key *key, const int32_t *tokens, uint32_t n,
                             eng_kvblock *blk, const cc_record *rec, uint64_t ticket, cc_devtier_entry **ref);

/* Free the tier and every object (after the executor stopped and the store closed; on the
 * thread that then drives the backend, before the backend is freed). NULL: no-op. */
void svc_devcache_close(svc_devcache *dc);

#endif
