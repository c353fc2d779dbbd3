/* meta.c — the chunk metadata calls of LOOKUP, DELETE, GET_KV, PUT_KV, PUT_CHUNK and of a
 * prompt's chunks on the worker's event loop (see meta.h).
 * Every function runs on the worker's thread. A job has at most one Redis operation in flight;
 * it is ended (svc_gen_complete) only when none is, so the callbacks below always find it. */
#define RK_LOG_COMPONENT "meta"
#include "meta.h"

#include <event2/event.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "ragkv/alloc.h"
#include "ragkv/engine.h"
#include "ragkv/clock.h"
#include "ragkv/log.h"
#include "ragkv/proto.h"
#include "ragkv/redis_sentinel.h"
#include "server_int.h"

enum { OP_LOOKUP, OP_INSERT, OP_DELETE, NOPS };

static struct {
    svc_metric *ops[NOPS], *errors[NOPS], *fallbacks[NOPS];
    svc_metric *inflight;
    svc_histogram *ms;
} mm;

static void meta_metrics(void)
{
    static const char *const names[NOPS] = {"lookup", "insert", "delete"};
    for (int i = 0; i < NOPS; i++) {
        char lbl[32];
        snprintf(lbl, sizeof(lbl), "op=\"%s\"", names[i]);
        mm.ops[i] = svc_metric_get(SVC_COUNTER, "meta_async_ops_total", lbl,
                                   "chunk metadata operations answered on a worker's event loop (hiredis async)");
        mm.errors[i] = svc_metric_get(SVC_COUNTER, "meta_async_errors_total", lbl,
                                      "of those, the failed (Redis down, stalled, refusing), not answers such as not found");
        mm.fallbacks[i] = svc_metric_get(SVC_COUNTER, "meta_async_fallbacks_total", lbl,
                                         "re-run through the synchronous store: Redis came back without ragkv's metadata (rebuild)");
    }
    mm.inflight = svc_metric_get(SVC_GAUGE, "meta_async_inflight", "", "metadata operations in flight on the workers' loops");
    mm.ms = svc_histogram_get("meta_async_ms", "one metadata operation on a worker's event loop, issue to answer, ms");
}

/* ---- bookkeeping ------------------------------------------------------------------------- */

static void op_begin(svc_gen *g)
{
    g->meta_t0_ns = rk_now_ns();
    g->meta_losses = cc_redis_async_losses(g->worker->meta);
    svc_metric_add(mm.inflight, 1);
}

/* The operation could not start after all. */
static void op_abort(void)
{
    svc_metric_add(mm.inflight, -1);
}

static void op_end(svc_gen *g, int op, rk_status st)
{
    svc_metric_add(mm.inflight, -1);
    svc_histogram_observe(mm.ms, (double)(rk_now_ns() - g->meta_t0_ns) / 1e6);
    svc_metric_add(mm.ops[op], 1);
    if (st != RK_OK && st != RK_ERR_NOT_FOUND && st != RK_ERR_EXISTS && st != RK_ERR_QUOTA)
        svc_metric_add(mm.errors[op], 1);
}

/* End the job with st (msg: the error's detail). A Redis that stops answering is reported as
 * the synchronous path reports it once its reconnects fail as well: RK_ERR_UNAVAILABLE (the
 * message still says it timed out). */
static void complete(svc_gen *g, rk_status st, const char *msg)
{
    svc_gen_complete(g, st == RK_ERR_TIMEOUT ? RK_ERR_UNAVAILABLE : st, st == RK_OK ? NULL : msg);
}

/* Hand g's next step to the I/O pool, inside the server's submission gate. False when the
 * server is draining (the pool is going away) or the pool refused: the caller does it here. */
static bool to_pool(svc_gen *g, uint8_t step)
{
    struct svc_server *srv = g->srv;
    g->step = step;
    pthread_rwlock_rdlock(&srv->submit_gate);
    rk_status st = srv->draining ? RK_ERR_SHUTDOWN : svc_exec_submit_pool(srv->exec, srv->io_pool, srv->store, g);
    pthread_rwlock_unlock(&srv->submit_gate);
    return st == RK_OK;
}

/* An operation failed with RK_ERR_UNAVAILABLE: when the loop's client found Redis without
 * ragkv's metadata meanwhile, re-run it through the synchronous store on the pool (step), whose
 * recovery rebuilds and whose answer is the client's. False (answer the failure) otherwise — a
 * Redis that is down fails the synchronous path the same way, only later — or when it cannot
 * be done (draining). */
/* Whether g's loop client found Redis without ragkv's metadata since g's operation began. */
static bool lost_data(const svc_gen *g)
{
    return g->worker->meta && cc_redis_async_losses(g->worker->meta) != g->meta_losses;
}

static bool fallback(svc_gen *g, int op, uint8_t step)
{
    if (!lost_data(g) || !to_pool(g, step))
        return false;
    svc_metric_add(mm.fallbacks[op], 1);
    return true;
}

/* PUT_KV's last step here, on the loop: the finish touches memory only unless the server is
 * draining (then the blob deletes happen here too: nothing else is left to run them). */
static void kv_finish_here(svc_gen *g)
{
    rk_status st = svc_put_kv_finish(g->srv->store, g);
    if (st == RK_ERR_CANCELLED) /* never committed: closed under it */
        st = rk_error_set(RK_ERR_SHUTDOWN, "ragkvd is shutting down");
    complete(g, st, rk_error_msg());
}

/* ---- LOOKUP, DELETE ---------------------------------------------------------------------- */

static void on_lookup(void *arg, rk_status st, const uint8_t *present, size_t n)
{
    svc_gen *g = arg;
    op_end(g, OP_LOOKUP, st);
    if (st == RK_ERR_UNAVAILABLE && fallback(g, OP_LOOKUP, SVC_STEP_NONE))
        return;
    if (st == RK_OK) {
        rk_buf_put_u32(&g->result, (uint32_t)n);
        rk_buf_append(&g->result, present, n);
        if (g->result.failed)
            st = rk_error_set(RK_ERR_NOMEM, "LOOKUP reply");
    }
    complete(g, st, rk_error_msg());
}

static void on_delete(void *arg, rk_status st, const cc_evlist *removed)
{
    svc_gen *g = arg;
    op_end(g, OP_DELETE, st);
    if (st == RK_ERR_UNAVAILABLE && fallback(g, OP_DELETE, SVC_STEP_NONE))
        return;
    if (st == RK_OK) { /* the metadata is gone; the blob next, on the pool, then the answer */
        for (size_t i = 0; i < removed->n; i++)
            if (cc_evlist_push(&g->removed, &removed->items[i].key, removed->items[i].csum, removed->items[i].size) != RK_OK)
                RK_WARN("a deleted chunk's blob is left for gc (out of memory)");
        if (to_pool(g, SVC_STEP_FORGET))
            return;
        cc_store_apply_removed(g->srv->store, &g->removed);
        cc_evlist_free(&g->removed);
    }
    complete(g, st, rk_error_msg());
}

bool svc_meta_start(struct svc_worker *w, svc_gen *g)
{
    if (!w->meta || g->kind != SVC_JOB_META)
        return false;
    struct svc_server *srv = w->srv;
    rk_status st;
    g->worker = w;
    g->submit_ns = rk_now_ns();
    op_begin(g);
    if (g->opcode == RK_OP_LOOKUP && g->in_len >= CC_KEY_BYTES) {
        size_t n = g->in_len / CC_KEY_BYTES;
        cc_key *keys = rk_malloc(n * sizeof(cc_key));
        st = keys ? RK_OK : RK_ERR_NOMEM;
        for (size_t i = 0; keys && i < n; i++)
            memcpy(keys[i].b, g->in_blob + i * CC_KEY_BYTES, CC_KEY_BYTES);
        if (st == RK_OK)
            st = cc_store_lookup_async(srv->store, w->meta, g->tenant, keys, n, on_lookup, g);
        rk_free(keys);
    } else if (g->opcode == RK_OP_DELETE) {
        st = cc_store_delete_async(srv->store, w->meta, g->tenant, &g->key, on_delete, g);
    } else {
        st = RK_ERR_UNSUPPORTED; /* STATS, peer operations, an empty LOOKUP: the pool */
    }
    if (st != RK_OK)
        op_abort();
    return st == RK_OK;
}

/* ---- GENERATE, PREFILL: the prompt's chunks resolved before the executor ------------------ */

/* Hand g to the executor, inside the submission gate; a refusal ends it. */
static void to_exec(svc_gen *g)
{
    struct svc_server *srv = g->srv;
    pthread_rwlock_rdlock(&srv->submit_gate);
    rk_status st = srv->draining ? rk_error_set(RK_ERR_SHUTDOWN, "ragkvd is shutting down") : svc_exec_submit(srv->exec, g);
    pthread_rwlock_unlock(&srv->submit_gate);
    if (st != RK_OK)
        complete(g, st, rk_error_msg());
}

static void on_gen_resolved(void *arg, rk_status st, const cc_record *recs, const uint8_t *present, size_t n)
{
    svc_gen *g = arg;
    op_end(g, OP_LOOKUP, st);
    if (st == RK_ERR_UNAVAILABLE && lost_data(g)) {
        /* Redis lost ragkv's metadata: the executor resolves through the synchronous store,
         * whose recovery rebuilds */
        svc_metric_add(mm.fallbacks[OP_LOOKUP], 1);
        svc_gen_pre_free(g);
        to_exec(g);
        return;
    }
    if (atomic_load(&g->cancelled)) {
        complete(g, rk_error_set(RK_ERR_CANCELLED, "client gone"), rk_error_msg());
        return;
    }
    bool any = false;
    if (st != RK_OK) { /* Redis down or stalled: the executor answers by-key segments with it
                          and computes literal ones uncached, as the synchronous path does */
        g->pre_st = st == RK_ERR_TIMEOUT ? RK_ERR_UNAVAILABLE : st;
        snprintf(g->pre_msg, sizeof(g->pre_msg), "chunk metadata: %s", rk_error_msg());
    }
    for (size_t i = 0, j = 0; st == RK_OK && i < g->nsegs && j < n; i++) {
        svc_gen_pre *p = &g->pre[i];
        if (!p->asked)
            continue;
        if (present[j] && cc_record_copy(&p->rec, &recs[j]) != RK_OK) {
            complete(g, rk_error_set(RK_ERR_NOMEM, "chunk record"), rk_error_msg());
            return;
        }
        p->readable = present[j++] != 0;
        any |= p->readable;
    }
    if (any && to_pool(g, SVC_STEP_GEN_READ))
        return;
    if (any) { /* the pool is going away */
        complete(g, rk_error_set(RK_ERR_SHUTDOWN, "ragkvd is shutting down"), rk_error_msg());
        return;
    }
    to_exec(g);
}

bool svc_meta_start_gen(struct svc_worker *w, svc_gen *g)
{
    struct svc_server *srv = w->srv;
    if (!w->meta || srv->cluster || !srv->model || (g->kind != SVC_JOB_GENERATE && g->kind != SVC_JOB_PREFILL) ||
        !g->nsegs)
        return false;
    /* the segments whose chunks the executor would read: by key always, literal ones (by
     * content) when the mode reuses caches */
    bool reuse = g->blend.mode != BL_FULL;
    const char *model = eng_model_get_info(srv->model)->id;
    const char *ns = g->ns[0] ? g->ns : g->tenant;
    g->pre = rk_calloc(g->nsegs, sizeof(svc_gen_pre));
    cc_key *keys = rk_malloc(g->nsegs * sizeof(cc_key));
    size_t m = 0;
    for (size_t i = 0; g->pre && keys && i < g->nsegs; i++) {
        svc_gen_seg *sg = &g->segs[i];
        if (!sg->by_key && (!reuse || cc_key_compute(model, ns, sg->tokens, sg->n, &sg->key) != RK_OK))
            continue; /* (a key that cannot be computed: the executor reports it) */
        g->pre[i].asked = true;
        keys[m++] = sg->key;
    }
    g->worker = w;
    g->submit_ns = rk_now_ns();
    rk_status st = g->pre && keys ? RK_OK : RK_ERR_NOMEM;
    if (st == RK_OK && m) {
        op_begin(g);
        if ((st = cc_store_resolve_async(srv->store, w->meta, g->tenant, keys, m, on_gen_resolved, g)) != RK_OK)
            op_abort();
    }
    rk_free(keys);
    if (st != RK_OK || !m) {
        svc_gen_pre_free(g); /* nothing to resolve, or it could not start: the executor's path */
        return false;
    }
    return true;
}

/* ---- GET_KV ------------------------------------------------------------------------------ */

static void on_get_resolved(void *arg, rk_status st, const cc_record *recs, const uint8_t *present, size_t n)
{
    (void)n;
    svc_gen *g = arg;
    op_end(g, OP_LOOKUP, st);
    if (st == RK_ERR_UNAVAILABLE && fallback(g, OP_LOOKUP, SVC_STEP_NONE)) /* the pool's GET_KV, synchronously */
        return;
    if (st == RK_OK && !present[0])
        st = rk_error_set(RK_ERR_NOT_FOUND, "no such chunk"); /* absent, or not this tenant's */
    else if (st == RK_OK && atomic_load(&g->cancelled))
        st = rk_error_set(RK_ERR_CANCELLED, "client gone");
    else if (st == RK_OK && (st = cc_record_copy(&g->pre[0].rec, &recs[0])) == RK_OK) {
        if (to_pool(g, SVC_STEP_GET_READ))
            return;
        st = rk_error_set(RK_ERR_SHUTDOWN, "ragkvd is shutting down");
    }
    complete(g, st, rk_error_msg());
}

bool svc_meta_start_get(struct svc_worker *w, svc_gen *g)
{
    if (!svc_meta_takes_put(w) || g->kind != SVC_JOB_GET_KV || g->nsegs != 1 ||
        !(g->pre = rk_calloc(1, sizeof(svc_gen_pre))))
        return false;
    g->worker = w;
    g->submit_ns = rk_now_ns();
    op_begin(g);
    if (cc_store_resolve_async(w->srv->store, w->meta, g->tenant, &g->key, 1, on_get_resolved, g) != RK_OK) {
        op_abort();
        svc_gen_pre_free(g);
        return false;
    }
    return true;
}

/* ---- PUT_KV ------------------------------------------------------------------------------ */

bool svc_meta_takes_put(const struct svc_worker *w)
{
    /* cluster mode places blobs on other nodes (svc_cluster_put): the pool's path */
    return w->meta && !w->srv->cluster;
}

/* A put's lookup of its chunk answered (PUT_KV, PUT_CHUNK): true when the chunk is absent and
 * the put goes on; else *st is the answer (a stored chunk is RK_OK, nothing created). */
static bool put_absent(svc_gen *g, rk_status *st, const uint8_t *present)
{
    if (*st != RK_OK)
        return false;
    if (present[0]) { /* stored already: nothing to compute or write */
        g->created = 0;
        g->stored_bytes = 0;
        return false;
    }
    if (atomic_load(&g->cancelled)) {
        *st = rk_error_set(RK_ERR_CANCELLED, "client gone");
        return false;
    }
    return true;
}

/* The chunk's lookup before its blob is written (the synchronous path's order). */
static void on_kv_lookup(void *arg, rk_status st, const uint8_t *present, size_t n)
{
    (void)n;
    svc_gen *g = arg;
    op_end(g, OP_LOOKUP, st);
    if (st == RK_ERR_UNAVAILABLE && fallback(g, OP_LOOKUP, SVC_STEP_NONE)) /* the whole put, synchronously */
        return;
    if (put_absent(g, &st, present)) {
        if (to_pool(g, SVC_STEP_KV_WRITE))
            return;
        st = rk_error_set(RK_ERR_SHUTDOWN, "ragkvd is shutting down");
    }
    complete(g, st, rk_error_msg());
}

/* PUT_CHUNK: the chunk's lookup before the executor prefills it. */
static void on_put_lookup(void *arg, rk_status st, const uint8_t *present, size_t n)
{
    (void)n;
    svc_gen *g = arg;
    op_end(g, OP_LOOKUP, st);
    if (st == RK_ERR_UNAVAILABLE && lost_data(g)) {
        svc_metric_add(mm.fallbacks[OP_LOOKUP], 1);
        g->step = SVC_STEP_NONE; /* the executor's synchronous put, whose recovery rebuilds */
        to_exec(g);
        return;
    }
    if (put_absent(g, &st, present)) { /* the executor computes it */
        g->step = SVC_STEP_PUT_ENCODE;
        to_exec(g);
        return;
    }
    complete(g, st, rk_error_msg());
}

bool svc_meta_start_put(struct svc_worker *w, svc_gen *g)
{
    struct svc_server *srv = w->srv;
    if (!svc_meta_takes_put(w) || !srv->model || g->kind != SVC_JOB_PUT)
        return false;
    const svc_gen_seg *sg = &g->segs[0];
    if (cc_key_compute(eng_model_get_info(srv->model)->id, g->tenant, sg->tokens, sg->n, &g->key) != RK_OK)
        return false; /* the executor's path reports it */
    g->worker = w;
    g->submit_ns = rk_now_ns();
    op_begin(g);
    if (cc_store_lookup_async(srv->store, w->meta, g->tenant, &g->key, 1, on_put_lookup, g) != RK_OK) {
        op_abort();
        return false;
    }
    return true;
}

/* The commit's outcome is in g->txn. */
static void on_kv_commit(void *arg, cc_put_txn *t)
{
    svc_gen *g = arg;
    rk_status st = cc_put_txn_status(t);
    op_end(g, OP_INSERT, st);
    if (st == RK_ERR_UNAVAILABLE && fallback(g, OP_INSERT, SVC_STEP_KV_COMMIT))
        return;
    if (cc_put_txn_blocking(t) && to_pool(g, SVC_STEP_KV_FINISH))
        return;
    kv_finish_here(g);
}

void svc_meta_step(svc_gen *g)
{
    struct svc_worker *w = g->worker;
    struct svc_server *srv = g->srv;
    rk_status st = g->status;
    if (g->step == SVC_STEP_KV_CHECK) { /* the container is good and the key known: present? */
        if (st == RK_OK && atomic_load(&g->cancelled))
            st = rk_error_set(RK_ERR_CANCELLED, "client gone");
        else if (st == RK_OK && !w->meta)
            st = rk_error_set(RK_ERR_SHUTDOWN, "ragkvd is shutting down");
        else if (st != RK_OK)
            rk_error_set(st, "%s", g->errmsg);
        if (st == RK_OK) {
            op_begin(g);
            if ((st = cc_store_lookup_async(srv->store, w->meta, g->tenant, &g->key, 1, on_kv_lookup, g)) == RK_OK)
                return;
            op_abort();
        }
        complete(g, st, rk_error_msg());
    } else if (g->step == SVC_STEP_KV_WRITE) { /* the blob is on disk: commit */
        if (st != RK_OK) { /* nothing was written */
            complete(g, st, g->errmsg);
            return;
        }
        if (w->meta) {
            op_begin(g);
            if (cc_store_put_commit_async(srv->store, w->meta, g->txn, on_kv_commit, g) == RK_OK)
                return;
            op_abort();
        }
        /* no loop client (shutting down) or none free: the synchronous commit, or a rollback */
        if (!to_pool(g, SVC_STEP_KV_COMMIT))
            kv_finish_here(g);
    } else if (g->step == SVC_STEP_PUT_ENCODE) { /* the executor encoded the chunk: write it */
        if (st == RK_OK && atomic_load(&g->cancelled))
            st = rk_error_set(RK_ERR_CANCELLED, "client gone");
        else if (st != RK_OK)
            rk_error_set(st, "%s", g->errmsg);
        if (st == RK_OK && to_pool(g, SVC_STEP_KV_WRITE))
            return;
        complete(g, st == RK_OK ? rk_error_set(RK_ERR_SHUTDOWN, "ragkvd is shutting down") : st, rk_error_msg());
    } else if (g->step == SVC_STEP_STORE) { /* the prompt's uncached chunks are encoded */
        if (!to_pool(g, SVC_STEP_STORE))
            complete(g, RK_OK, NULL); /* shutting down: they stay uncached */
    } else if (g->step == SVC_STEP_GEN_READ) { /* the blobs are read: compute */
        g->step = SVC_STEP_NONE;
        if (atomic_load(&g->cancelled))
            complete(g, rk_error_set(RK_ERR_CANCELLED, "client gone"), rk_error_msg());
        else
            to_exec(g);
    } else {
        complete(g, rk_error_set(RK_ERR_INTERNAL, "job handed back at step %d", g->step), rk_error_msg());
    }
}

/* ---- the worker's client ----------------------------------------------------------------- */

rk_status svc_meta_open(struct svc_worker *w)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, meta_metrics);
    const svc_config *cfg = &w->srv->cfg;
    if (!cfg->redis_async || (!cfg->redis[0] && !cfg->redis_sentinels[0]))
        return RK_OK;
    cc_redis_opts o = cc_redis_opts_default(); /* the synchronous store's timeouts and limits */
    o.wait_replicas = cfg->redis_wait_replicas;
    if (cfg->redis_sentinels[0]) { /* the primary from the Sentinels at every connect, as the store's */
        o.sentinels = cfg->redis_sentinels;
        o.sentinel_master = cfg->redis_master;
        return cc_redis_async_open(w->base, NULL, 0, cfg->redis_prefix, &o, &w->meta);
    }
    char host[128];
    int port;
    rk_status st = cc_redis_parse_addr(cfg->redis, strlen(cfg->redis), host, sizeof(host), &port);
    if (st != RK_OK)
        return st;
    return cc_redis_async_open(w->base, host, port, cfg->redis_prefix, &o, &w->meta);
}

void svc_meta_close(struct svc_worker *w)
{
    if (!w->meta)
        return;
    cc_redis_async *ra = w->meta;
    w->meta = NULL; /* steps handed back from now on finish without it */
    cc_redis_async_close(ra); /* what is in flight completes (cancelled) from within */
    /* deliver those endings (and any step still queued) so every job is released */
    while (event_base_get_num_events(w->base, EVENT_BASE_COUNT_ACTIVE) > 0)
        if (event_base_loop(w->base, EVLOOP_NONBLOCK) < 0)
            break;
}
