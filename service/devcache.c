/* devcache.c — the daemon's device tier: decoded chunks as KV blocks on the executor's
 * backend (see devcache.h). */
#include "devcache.h"

#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

#include "ragkv/alloc.h"

struct svc_devcache {
    cc_devtier *tier;          /* owned */
    pthread_mutex_t mu;        /* guards dead, wake, wake_ctx; taken before the executor's lock
                                  (the waker takes that one) */
    svc_devchunk *dead;        /* objects out of the tier and unreferenced, to free */
    atomic_size_t ndead;       /* their count (read without mu) */
    void (*wake)(void *ctx);   /* tells the executor there is something to reap */
    void *wake_ctx;
};

static void chunk_free(svc_devchunk *c)
{
    eng_kvblock_free(c->block);
    rk_free(c->tokens);
    rk_free(c);
}

/* The tier's free_obj: may run on any thread, so the block waits for the executor. */
static void defer_free(void *ctx, void *obj)
{
    svc_devcache *dc = ctx;
    svc_devchunk *c = obj;
    pthread_mutex_lock(&dc->mu);
    c->next = dc->dead;
    dc->dead = c;
    atomic_fetch_add(&dc->ndead, 1);
    if (dc->wake) /* under mu: svc_devcache_set_waker(NULL) returns only after any call ended */
        dc->wake(dc->wake_ctx);
    pthread_mutex_unlock(&dc->mu);
}

rk_status svc_devcache_open(uint64_t budget_bytes, svc_devcache **out)
{
    *out = NULL;
    svc_devcache *dc = rk_calloc(1, sizeof(*dc));
    if (!dc)
        return RK_ERR_NOMEM;
    pthread_mutex_init(&dc->mu, NULL);
    cc_devtier_config c = {.budget_bytes = budget_bytes, .free_obj = defer_free, .free_ctx = dc};
    rk_status st = cc_devtier_new(&c, &dc->tier);
    if (st != RK_OK) {
        pthread_mutex_destroy(&dc->mu);
        rk_free(dc);
        return st;
    }
    *out = dc;
    return RK_OK;
}

cc_devtier *svc_devcache_tier(svc_devcache *dc)
{
    return dc ? dc->tier : NULL;
}

void svc_devcache_set_waker(svc_devcache *dc, void (*wake)(void *ctx), void *ctx)
{
    pthread_mutex_lock(&dc->mu);
    dc->wake = wake;
    dc->wake_ctx = ctx;
    pthread_mutex_unlock(&dc->mu);
}

size_t svc_devcache_pending(svc_devcache *dc)
{
    return dc ? atomic_load(&dc->ndead) : 0;
}

void svc_devcache_reap(svc_devcache *dc)
{
    if (!dc || !atomic_load(&dc->ndead))
        return;
    pthread_mutex_lock(&dc->mu);
    svc_devchunk *c = dc->dead;
    dc->dead = NULL;
    atomic_store(&dc->ndead, 0);
    pthread_mutex_unlock(&dc->mu);
    while (c) {
        svc_devchunk *next = c->next;
        chunk_free(c);
        c = next;
    }
}

rk_status svc_devcache_admit(svc_devcache *dc, const cc_key *key, const int32_t *tokens, uint32_t n,
                             eng_kvblock *blk, const cc_record *rec, uint64_t ticket, cc_devtier_entry **ref)
{
    svc_devchunk *c = rk_calloc(1, sizeof(*c));
    if (!c || !(c->tokens = rk_malloc((size_t)n * sizeof(int32_t)))) {
        rk_free(c);
        return rk_error_set(RK_ERR_NOMEM, "device tier: out of memory");
    }
    memcpy(c->tokens, tokens, (size_t)n * sizeof(int32_t));
    c->n = n;
    c->block = blk;
    cc_devtier_meta m = {.bytes = eng_kvblock_bytes(blk), .cost = (double)n, .expires_ms = rec->expires_ms,
                         .pinned = (rec->flags & CC_RECORD_FLAG_PINNED) != 0};
    rk_status st = cc_devtier_admit(dc->tier, key, c, &m, ticket, ref);
    if (st != RK_OK) { /* refused: never the tier's; the block goes back to the caller */
        c->block = NULL;
        chunk_free(c);
    }
    return st;
}

void svc_devcache_close(svc_devcache *dc)
{
    if (!dc)
        return;
    svc_devcache_set_waker(dc, NULL, NULL); /* the executor is gone */
    cc_devtier_free(dc->tier); /* every object onto the list */
    svc_devcache_reap(dc);
    pthread_mutex_destroy(&dc->mu);
    rk_free(dc);
}
