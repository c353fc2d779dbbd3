/* exec.c — the compute executor: prompt assembly and continuous-batched decode. */
#define RK_LOG_COMPONENT "exec"
#include "exec.h"

#include "cluster.h"
#include "craft.h"
#include "devcache.h"

#include <stdio.h>
#include <string.h>

#include "ragkv/alloc.h"
#include "ragkv/clock.h"
#include "ragkv/log.h"
#include "ragkv/proto.h"
#include "ragkv/service.h"

#define QUEUE_MAX 4096
#define CRAFT_QUEUE_MAX 8 /* Cache-Craft captures waiting for an idle executor (or their turn) */

static struct {
    svc_metric *gens, *gen_errors, *steps, *step_tokens, *prompt_tokens, *recomputed, *active;
    svc_metric *hits, *misses, *puts, *busy_us, *layer_loads, *cap_forced;
    svc_histogram *ttft, *step_ms, *put_ms;
} xm;

static void exec_metrics(void)
{
    xm.gens = svc_metric_get(SVC_COUNTER, "generations_total", "", "generations started");
    xm.gen_errors = svc_metric_get(SVC_COUNTER, "generation_errors_total", "", "generations that ended in an error");
    xm.steps = svc_metric_get(SVC_COUNTER, "decode_steps_total", "", "batched decode steps");
    xm.step_tokens = svc_metric_get(SVC_COUNTER, "decode_tokens_total", "",
                                    "tokens decoded (over decode_steps_total: the mean batch)");
    xm.prompt_tokens = svc_metric_get(SVC_COUNTER, "prompt_tokens_total", "", "prompt tokens assembled");
    xm.recomputed = svc_metric_get(SVC_COUNTER, "prompt_tokens_recomputed_total", "",
                                   "prompt tokens computed rather than reused from chunk caches");
    xm.active = svc_metric_get(SVC_GAUGE, "generations_active", "", "generations queued or decoding");
    xm.hits = svc_metric_get(SVC_COUNTER, "chunk_hits_total", "", "prompt segments served from the chunk cache");
    xm.misses = svc_metric_get(SVC_COUNTER, "chunk_misses_total", "", "prompt segments not in the cache (computed in context)");
    xm.puts = svc_metric_get(SVC_COUNTER, "chunk_prefills_total", "", "chunks prefilled and stored by PUT_CHUNK");
    xm.cap_forced = svc_metric_get(SVC_COUNTER, "craft_captures_forced_total", "",
                                   "Cache-Craft captures run while generations were queued or decoding, having waited "
                                   "craft-capture-max-wait-ms");
    xm.busy_us = svc_metric_get(SVC_COUNTER, "executor_busy_us_total", "",
                                "microseconds the executor (the one thread that drives the model's backend) spent "
                                "working: GPU time, per request over a run");
    xm.layer_loads = svc_metric_get(SVC_COUNTER, "chunk_layer_loads_total", "",
                                    "cached chunks assembled from their compressed form, decoded a layer ahead of "
                                    "the layer computed (chunks read from RAM or disk without a device tier)");
    xm.ttft = svc_histogram_get("ttft_ms", "time to first token: from submission to the first token sampled, ms");
    xm.step_ms = svc_histogram_get("decode_step_ms", "one batched decode step, ms");
    xm.put_ms = svc_histogram_get("chunk_prefill_ms", "PUT_CHUNK work: prefill, encode, store, ms");
}

struct active {
    svc_gen *g;
    eng_seq *s;
    eng_sampler sm;
    int32_t last;     /* the token to feed next */
};

struct svc_exec {
    svc_chunk_ctx cx;          /* model, backend, store, codec settings */
    eng_model *m;
    eng_backend *be;
    int max_batch;
    pthread_t thread;
    pthread_mutex_t lock;      /* guards queue, nq, stop, load */
    pthread_cond_t wake;
    svc_gen **queue;           /* (QUEUE_MAX) submitted, not started; FIFO from head */
    size_t head, nq;
    bool stop;
    int load;                  /* queued + active */
    /* executor thread only */
    struct active *act;        /* (max_batch) */
    size_t nact;
    float *logits;             /* (max_batch, vocab): a starting generation's prompt logits */
    eng_seq **seqs;            /* (max_batch) batch view for eng_decode_sample */
    int32_t *toks;             /* (max_batch) the tokens fed */
    eng_sampler **sms;         /* (max_batch) the rows' samplers (act[i].sm, rebuilt each step) */
    int32_t *next;             /* (max_batch) the tokens chosen */
    /* Cache-Craft captures (craft.h): low-priority work, one at a time (from its prefill until
     * its variants are stored). The prefill runs one layer per turn of the executor's loop
     * (svc_craft_job_step), so a request that arrives meanwhile waits at most a layer, not a
     * whole prefill: a turn with no generation queued or active runs the next layer; so that a
     * daemon that is never idle still captures, a capture waiting (queued or started) for
     * cx.craft_max_wait_ns is forced — it then takes a layer every turn, beside the decode
     * steps, until done — at most one forced per that interval */
    svc_craft_job *cap[CRAFT_QUEUE_MAX]; /* guarded by lock: waiting captures, FIFO from cap_head */
    uint64_t cap_since[CRAFT_QUEUE_MAX]; /* guarded by lock: when each was queued (rk_now_ns) */
    uint64_t cap_forced_ns;    /* executor thread: when a capture was last forced */
    svc_craft_job *cap_cur;    /* executor thread (read under lock by it): the capture in progress */
    uint64_t cap_cur_since;    /* executor thread: when it was queued */
    bool cap_cur_forced;       /* executor thread: it takes a layer every turn */
    size_t cap_head, ncap;     /* guarded by lock */
    bool cap_busy;             /* guarded by lock: a capture is running or being stored */
    rk_pool *craft_pool;       /* one thread: stores captured variants (blocking store calls) */
};

svc_gen *svc_gen_new(void)
{
    svc_gen *g = rk_calloc(1, sizeof(*g));
    if (!g)
        return NULL;
    atomic_init(&g->refs, 1);
    pthread_mutex_init(&g->lock, NULL);
    return g;
}

void svc_gen_pre_free(svc_gen *g)
{
    for (size_t i = 0; g->pre && i < g->nsegs; i++) {
        svc_gen_pre *p = &g->pre[i];
        cc_record_clear(&p->rec);
        cc_buf_release(p->blob);
        if (p->ent) /* (any thread: the tier defers the block's free to the executor) */
            cc_devtier_release(g->pre_tier, p->ent);
    }
    rk_free(g->pre);
    g->pre = NULL;
}

void svc_gen_release(svc_gen *g)
{
    if (!g || atomic_fetch_sub(&g->refs, 1) != 1)
        return;
    for (size_t i = 0; i < g->nsegs; i++) {
        rk_free(g->segs[i].tokens);
        rk_buf_free(&g->segs[i].enc);
    }
    rk_free(g->segs);
    rk_free(g->query);
    rk_free(g->out);
    rk_free(g->in_owned);
    rk_buf_free(&g->result);
    svc_gen_pre_free(g);
    svc_gen_vars_free(g);
    cc_evlist_free(&g->removed); /* (g->txn: every flow of meta.c finishes its put first) */
    pthread_mutex_destroy(&g->lock);
    rk_free(g);
}

/* Append a token to g's outbox and wake its worker. */
static void emit(svc_gen *g, int32_t tok)
{
    pthread_mutex_lock(&g->lock);
    if (g->nout == g->cap) {
        size_t cap = g->cap ? 2 * g->cap : 64;
        int32_t *o = rk_realloc(g->out, cap * sizeof(int32_t));
        if (!o) {
            pthread_mutex_unlock(&g->lock);
            atomic_store(&g->cancelled, true); /* finish() reports it */
            return;
        }
        g->out = o;
        g->cap = cap;
    }
    g->out[g->nout++] = tok;
    if (g->stream)
        event_active(g->notify, EV_READ, 0);
    pthread_mutex_unlock(&g->lock);
}

/* It is a cache: the chunks a prompt brought that were not cached are cached now, in the
 * tenant's own namespace (a shared corpus is written by its owner only), before the client
 * hears that its request is done. Here, on the executor, their KV is computed and encoded
 * (segs[i].enc); the pool stores them (store_encoded). True when there is something to store.
 * Failures (a full quota, say) only cost the cache entry. */
static bool encode_misses(svc_exec *x, svc_gen *g)
{
    if (!x || g->kind == SVC_JOB_PUT || (g->ns[0] && strcmp(g->ns, g->tenant) != 0))
        return false;
    bool any = false;
    for (size_t i = 0; i < g->nsegs; i++) {
        svc_gen_seg *sg = &g->segs[i];
        if (!sg->missed || atomic_load(&g->cancelled))
            continue;
        sg->missed = false;
        rk_buf_free(&sg->enc);
        rk_status st = svc_chunk_encode(&x->cx, sg->tokens, sg->n, &sg->enc, &sg->enc_ms);
        if (st == RK_OK) {
            any = true;
            svc_metric_add(xm.puts, 1);
        } else {
            RK_WARN("segment %zu: not cached (%s: %s)", i, rk_status_name(st), rk_error_msg());
            rk_buf_free(&sg->enc);
        }
    }
    return any;
}

/* SVC_STEP_STORE, on the pool: put the encoded segments (the store looks each up first: one
 * another request stored meanwhile stays as it is). */
static void store_encoded(svc_exec *x, cc_store *store, svc_gen *g)
{
    for (size_t i = 0; i < g->nsegs; i++) {
        svc_gen_seg *sg = &g->segs[i];
        if (!sg->enc.len)
            continue;
        rk_buf blob = RK_BUF_INIT;
        cc_put_args a;
        cc_key k;
        rk_status st = svc_chunk_args(&x->cx, sg->tokens, sg->n, &sg->enc, sg->enc_ms, &blob, &a);
        if (st == RK_OK && !atomic_load(&g->cancelled))
            st = svc_cluster_put(x->cx.cluster, store, g->tenant, &a, &k);
        if (st != RK_OK && st != RK_ERR_CANCELLED)
            RK_WARN("segment %zu: not cached (%s: %s)", i, rk_status_name(st), rk_error_msg());
        rk_buf_free(&blob);
        rk_buf_free(&sg->enc);
    }
}

/* Mark g done (with status and message) and wake its worker. */
static void mark_done(svc_gen *g, rk_status st, const char *msg, uint8_t why)
{
    pthread_mutex_lock(&g->lock);
    g->done = true;
    g->status = st;
    g->finish = why;
    g->total_ms = (float)((rk_now_ns() - g->submit_ns) / 1e6);
    if (msg)
        snprintf(g->errmsg, sizeof(g->errmsg), "%s", msg);
    /* activated under the lock: once the worker sees done, the executor never touches the
     * event again, so the worker may free it */
    event_active(g->notify, EV_READ, 0);
    pthread_mutex_unlock(&g->lock);
}

void svc_gen_complete(svc_gen *g, rk_status st, const char *msg)
{
    mark_done(g, st, msg, g->finish);
}

/* The executor's (or the pool's) reference to g goes, and the job leaves the load. */
static void job_leave(svc_exec *x, svc_gen *g)
{
    svc_gen_release(g);
    svc_metric_add(xm.active, -1);
    if (x) {
        pthread_mutex_lock(&x->lock);
        x->load--;
        pthread_mutex_unlock(&x->lock);
    }
}

/* A pool step of a job that goes on on its worker's loop (svc_step): hand it back with the
 * step's status and the step that ended; the pool's (or the executor's) reference goes. */
static void step_back(svc_exec *x, svc_gen *g, rk_status st, uint8_t step)
{
    pthread_mutex_lock(&g->lock);
    g->step = step;
    g->status = st;
    snprintf(g->errmsg, sizeof(g->errmsg), "%s", st == RK_OK ? "" : rk_error_msg());
    g->stepped = true;
    event_active(g->notify, EV_READ, 0);
    pthread_mutex_unlock(&g->lock);
    job_leave(x, g);
}

/* Mark g done (with status and message) and wake its worker; the executor's reference goes. */
static void finish(svc_exec *x, svc_gen *g, rk_status st, const char *msg, uint8_t why)
{
    if (st == RK_OK && g->step == SVC_STEP_NONE && encode_misses(x, g)) {
        g->finish = why; /* the pool stores them, then ends g (SVC_STEP_STORE) */
        step_back(x, g, RK_OK, SVC_STEP_STORE);
        return;
    }
    mark_done(g, st, msg, why);
    if (st != RK_OK)
        svc_metric_add(xm.gen_errors, 1);
    job_leave(x, g);
}


static bool is_stop(const eng_model_info *mi, int32_t t)
{
    for (int i = 0; i < mi->n_stop; i++)
        if (t == mi->stop[i])
            return true;
    return false;
}

/* With the device tier on: which of g's KV-needing segments (reuse, key known) the tenant may
 * read now, by one pipelined metadata lookup of all of them (existence, expiry, grants), asked
 * whether or not the tier holds the chunk (the same round trip either way). NULL when the tier
 * is off or the lookup failed: then every segment takes the store path, which reports errors. */
static uint8_t *device_readable(svc_exec *x, svc_gen *g, const bool *want)
{
    if (!x->cx.dev)
        return NULL;
    cc_key *keys = rk_malloc(g->nsegs * sizeof(cc_key));
    uint8_t *present = rk_malloc(g->nsegs), *ok = rk_calloc(g->nsegs, 1);
    size_t m = 0;
    for (size_t i = 0; keys && i < g->nsegs; i++)
        if (want[i])
            keys[m++] = g->segs[i].key;
    rk_status st = keys && present && ok ? RK_OK : RK_ERR_NOMEM;
    if (st == RK_OK && m)
        st = cc_store_lookup(x->cx.store, g->tenant, keys, m, present);
    for (size_t i = 0, j = 0; st == RK_OK && i < g->nsegs; i++)
        if (want[i])
            ok[i] = present[j++];
    rk_free(keys);
    rk_free(present);
    if (st != RK_OK) {
        rk_free(ok);
        return NULL;
    }
    return ok;
}

/* A chunk's KV from the store (and the codec), as g's tenant may read it: tokens into *tokens
 * and *n, the floats into *kv — or, with the device tier on, a KV block decoded straight into
 * the backend's memory (on the GPU by the CUDA decoder), offered to the tier: when the tier
 * keeps it *ent references it, else *own gets the block (the job frees it). */
static rk_status fetch_kv(svc_exec *x, svc_gen *g, const cc_key *key, int32_t **tokens, uint32_t *n, float **kv,
                          cc_devtier_entry **ent, eng_kvblock **own)
{
    cc_devtier *tier = svc_devcache_tier(x->cx.dev);
    if (!tier)
        return svc_chunk_fetch(&x->cx, g->tenant, key, tokens, n, kv, NULL);
    uint64_t ticket = cc_devtier_ticket(tier, key); /* before the read */
    cc_record rec;
    cc_record_init(&rec);
    eng_kvblock *blk = NULL;
    rk_status st = svc_chunk_fetch_block(&x->cx, x->be, g->tenant, key, tokens, n, &blk, &rec);
    if (st == RK_OK && svc_devcache_admit(x->cx.dev, key, *tokens, *n, blk, &rec, ticket, ent) != RK_OK)
        *own = blk;
    cc_record_clear(&rec);
    return st;
}

/* A device-tier hit: a copy of the chunk's tokens (the tier keeps its own). */
static rk_status tier_tokens(const cc_devtier_entry *e, int32_t **tokens, uint32_t *n)
{
    const svc_devchunk *dc = cc_devtier_entry_obj(e);
    if (!(*tokens = rk_malloc((size_t)dc->n * sizeof(int32_t) + 1)))
        return rk_error_set(RK_ERR_NOMEM, "segment tokens");
    memcpy(*tokens, dc->tokens, (size_t)dc->n * sizeof(int32_t));
    *n = dc->n;
    return RK_OK;
}

/* Segment i's chunk as resolved before the executor took g (g->pre: meta.c): the device tier's
 * copy the pool referenced, or the blob it read, opened here: decoded into a KV block offered
 * to the tier when the tier is on, else left compressed (*cont, *clen: inside the blob, which
 * g->pre keeps until the assembly is done) for bl_assemble's layer-pipelined loading. RK_ERR_NOT_FOUND when the tenant may not read it or it is
 * gone; the loop's or the pool's failure otherwise. */
static rk_status pre_chunk(svc_exec *x, svc_gen *g, size_t i, bool reuse, int32_t **tokens, uint32_t *n, float **kv,
                           cc_devtier_entry **ent, eng_kvblock **own, const uint8_t **cont, size_t *clen)
{
    svc_gen_pre *p = &g->pre[i];
    const cc_key *key = &g->segs[i].key;
    if (!p->readable)
        return g->pre_st == RK_OK ? RK_ERR_NOT_FOUND : rk_error_set(g->pre_st, "%s", g->pre_msg);
    if (p->ent) {
        *ent = p->ent;
        p->ent = NULL;
        return tier_tokens(*ent, tokens, n);
    }
    if (p->read_st != RK_OK)
        return p->read_st == RK_ERR_NOT_FOUND ? RK_ERR_NOT_FOUND
                                              : rk_error_set(p->read_st, "reading the chunk failed (%s)",
                                                             rk_status_name(p->read_st));
    cc_devtier *tier = svc_devcache_tier(x->cx.dev);
    if (!reuse) /* the tokens only */
        return svc_chunk_open(&x->cx, key, &p->rec, p->blob, tokens, n, NULL, NULL, NULL);
    if (!tier && x->cx.layer_loading) /* the container itself: bl_assemble decodes it a layer
                                         ahead of the layer it computes (the blob stays until
                                         the assembly is done) */
        return svc_chunk_view(&x->cx, key, &p->rec, p->blob, tokens, n, cont, clen);
    if (!tier)
        return svc_chunk_open(&x->cx, key, &p->rec, p->blob, tokens, n, kv, NULL, NULL);
    eng_kvblock *blk = NULL;
    rk_status st = svc_chunk_open(&x->cx, key, &p->rec, p->blob, tokens, n, NULL, x->be, &blk);
    if (st == RK_OK && svc_devcache_admit(x->cx.dev, key, *tokens, *n, blk, &p->rec, p->ticket, ent) != RK_OK)
        *own = blk;
    return st;
}

/* Segment i's chunk read here, on the executor (no g->pre): from the device tier when the
 * lookup said the tenant may read it (readable) and the tier has it, else from the store. */
static rk_status store_chunk(svc_exec *x, svc_gen *g, size_t i, bool reuse, const uint8_t *readable,
                             int32_t **tokens, uint32_t *n, float **kv, cc_devtier_entry **ent, eng_kvblock **own)
{
    const cc_key *key = &g->segs[i].key;
    if (readable && readable[i] && cc_devtier_get(svc_devcache_tier(x->cx.dev), key, ent) == RK_OK)
        return tier_tokens(*ent, tokens, n);
    return reuse ? fetch_kv(x, g, key, tokens, n, kv, ent, own) : svc_chunk_fetch(&x->cx, g->tenant, key, tokens, n, NULL, NULL);
}

/* Resolve g's segments into bl_segments: chunks by key come from the store (tokens and KV);
 * literal segments are looked up by content unless the mode reuses nothing. With the device
 * tier on, a chunk the tenant may read is taken from the tier when there — no blob read, no
 * decode — and admitted to it after a read from the store otherwise. The metadata and the
 * blobs were read before the executor took g when g->pre is set (meta.c); else they are read
 * here (device_readable, then the store). kvs[i] receives decoded KV to free, ents[i] a
 * device-tier reference to release, own[i] a KV block to free. */
static rk_status resolve_segments(svc_exec *x, svc_gen *g, bl_segment *segs, float **kvs, cc_devtier_entry **ents,
                                  eng_kvblock **own)
{
    const eng_model_info *mi = eng_model_get_info(x->m);
    const char *ns = g->ns[0] ? g->ns : g->tenant;
    bool reuse = g->blend.mode != BL_FULL;
    bool *want = rk_calloc(g->nsegs ? g->nsegs : 1, sizeof(bool));
    rk_status *kst = rk_calloc(g->nsegs ? g->nsegs : 1, sizeof(rk_status));
    if (!want || !kst) {
        rk_free(want);
        rk_free(kst);
        return RK_ERR_NOMEM;
    }
    for (size_t i = 0; i < g->nsegs; i++) {
        svc_gen_seg *sg = &g->segs[i];
        /* its identity, for the lookup and Cache-Craft's predecessor ids (the loop computed
         * it already when it resolved the segment) */
        if (reuse && !sg->by_key && !(g->pre && g->pre[i].asked))
            kst[i] = cc_key_compute(mi->id, ns, sg->tokens, sg->n, &sg->key);
        want[i] = reuse && kst[i] == RK_OK;
        sg->keyed = sg->by_key || want[i];
    }
    uint8_t *readable = g->pre ? NULL : device_readable(x, g, want);
    rk_free(want);
    rk_status st = RK_OK;
    for (size_t i = 0; i < g->nsegs && st == RK_OK; i++) {
        svc_gen_seg *sg = &g->segs[i];
        const uint8_t *cont = NULL; /* the chunk still compressed, inside g->pre[i].blob */
        size_t clen = 0;
        if (sg->by_key || (reuse && kst[i] == RK_OK)) {
            int32_t *t = NULL;
            uint32_t n = 0;
            rk_status fs = g->pre && g->pre[i].asked
                               ? pre_chunk(x, g, i, reuse, &t, &n, &kvs[i], &ents[i], &own[i], &cont, &clen)
                               : store_chunk(x, g, i, reuse, readable, &t, &n, &kvs[i], &ents[i], &own[i]);
            if (fs != RK_OK) {
                cont = NULL;
                clen = 0;
            }
            if (sg->by_key) {
                if (fs == RK_ERR_NOT_FOUND)
                    fs = rk_error_set(fs, "segment %zu: no such chunk", i);
                if ((st = fs) != RK_OK)
                    break;
                sg->tokens = t;
                sg->n = n;
                g->chunk_hits++;
            } else {
                rk_free(t); /* the prompt's own tokens are the chunk's (the key says so) */
                if (fs == RK_OK) {
                    g->chunk_hits++;
                } else if (fs == RK_ERR_NOT_FOUND) {
                    g->chunk_misses++; /* computed in context now, cached when the job ends */
                    sg->missed = true;
                } else {
                    /* the store is unavailable (Redis down, a disk error): it is a cache, and
                     * the prompt brought the tokens, so compute them; caching waits for the store */
                    RK_WARN("segment %zu: chunk store unavailable (%s: %s); computing it", i, rk_status_name(fs),
                            rk_error_msg());
                    rk_free(kvs[i]);
                    kvs[i] = NULL;
                    g->chunk_misses++;
                }
            }
        } else if (reuse) { /* no key (an error computing it): computed, not cached */
            RK_WARN("segment %zu: no chunk key (%s); computing it", i, rk_status_name(kst[i]));
            g->chunk_misses++;
        }
        for (uint32_t t = 0; st == RK_OK && t < sg->n; t++)
            if (sg->tokens[t] < 0 || sg->tokens[t] >= mi->vocab)
                st = rk_error_set(RK_ERR_RANGE, "segment %zu: token %d outside the vocabulary of %d", i,
                                  sg->tokens[t], mi->vocab);
        const svc_devchunk *dc = ents[i] ? cc_devtier_entry_obj(ents[i]) : NULL;
        segs[i] = (bl_segment){.tokens = sg->tokens, .n = sg->n, .kv = kvs[i], .block = dc ? dc->block : own[i],
                               .container = cont, .container_len = clen};
    }
    rk_free(readable);
    rk_free(kst);
    return st;
}

/* PREFILL: the assembled prompt's KV as a container in g->result. */
static rk_status export_prompt(svc_exec *x, svc_gen *g, eng_seq *s)
{
    size_t n = eng_seq_len(s);
    float *kv = rk_malloc(eng_kv_floats(x->m, n) * sizeof(float));
    if (!kv)
        return RK_ERR_NOMEM;
    rk_status st = eng_kv_export(s, 0, n, kv);
    if (st == RK_OK)
        st = svc_kv_encode(&x->cx, kv, (uint32_t)n, x->cx.codec, x->cx.level, &g->result);
    rk_free(kv);
    return st;
}

/* Queue a Cache-Craft capture (NULL: none) for when svc_craft_due says; a full queue drops
 * it (counted). Executor thread. */
static void craft_enqueue(svc_exec *x, svc_craft_job *j)
{
    if (!j)
        return;
    pthread_mutex_lock(&x->lock);
    bool room = x->ncap < CRAFT_QUEUE_MAX && !x->stop;
    if (room) {
        size_t at = (x->cap_head + x->ncap++) % CRAFT_QUEUE_MAX;
        x->cap[at] = j;
        x->cap_since[at] = rk_now_ns();
    }
    pthread_mutex_unlock(&x->lock);
    if (!room)
        svc_craft_job_drop(j);
}

struct craft_store {
    svc_exec *x;
    svc_craft_job *j;
};

/* The capture's end: no longer busy; the executor may take the next one. */
static void craft_done(svc_exec *x)
{
    pthread_mutex_lock(&x->lock);
    x->cap_busy = false;
    pthread_cond_signal(&x->wake);
    pthread_mutex_unlock(&x->lock);
}

/* craft_pool: store a capture's variants. */
static void craft_store_run(void *arg)
{
    struct craft_store *cs = arg;
    svc_craft_job_store(&cs->x->cx, cs->j);
    svc_craft_job_free(cs->j);
    craft_done(cs->x);
    rk_free(cs);
}

/* Executor: the capture in progress is over (st: its prefill's outcome); hand it to
 * craft_pool to store (encoding included). */
static void craft_end(svc_exec *x, rk_status st)
{
    svc_craft_job *j = x->cap_cur;
    x->cap_cur = NULL;
    struct craft_store *cs = st == RK_OK ? rk_malloc(sizeof(*cs)) : NULL;
    if (cs) {
        *cs = (struct craft_store){x, j};
        if (rk_pool_submit(x->craft_pool, craft_store_run, cs) == RK_OK)
            return;
        rk_free(cs);
    }
    if (st == RK_OK) {
        svc_craft_job_drop(j); /* (no memory to hand it over) */
    } else {
        svc_craft_job_store(&x->cx, j); /* nothing to store (the failure was counted): done */
        svc_craft_job_free(j);
    }
    craft_done(x);
}

/* Executor: the next layer of the capture in progress (the first turn also starts it). */
static void craft_step(svc_exec *x, bool start)
{
    uint64_t t0 = rk_now_ns();
    bool done = false;
    rk_status st = start ? svc_craft_job_begin(&x->cx, x->cap_cur, &done) : RK_OK;
    if (st == RK_OK && !done)
        st = svc_craft_job_step(x->cap_cur, &done);
    svc_metric_add(xm.busy_us, (int64_t)((rk_now_ns() - t0) / 1000));
    if (st != RK_OK || done)
        craft_end(x, st);
}

/* Start a job: PUT runs to completion; GENERATE and PREFILL assemble their prompt (GENERATE
 * then joins the active batch with its first token). */
static void start_gen(svc_exec *x, svc_gen *g)
{
    const eng_model_info *mi = eng_model_get_info(x->m);
    if (atomic_load(&g->cancelled)) {
        finish(x, g, RK_ERR_CANCELLED, "client gone", 0);
        return;
    }
    if (g->kind == SVC_JOB_PUT && g->step == SVC_STEP_PUT_ENCODE) { /* the loop stores it (meta.c) */
        uint64_t t0 = rk_now_ns();
        rk_buf cont = RK_BUF_INIT;
        rk_status st = svc_chunk_encode(&x->cx, g->segs[0].tokens, g->segs[0].n, &cont, &g->put_cost);
        if (st == RK_OK && cont.len > UINT32_MAX)
            st = rk_error_set(RK_ERR_LIMIT, "chunk container of %zu bytes", cont.len);
        if (st == RK_OK) {
            g->in_owned = cont.data;
            g->in_blob = cont.data;
            g->in_len = (uint32_t)cont.len;
            svc_metric_add(xm.puts, 1);
            svc_histogram_observe(xm.put_ms, (double)(rk_now_ns() - t0) / 1e6);
        } else {
            rk_buf_free(&cont);
        }
        step_back(x, g, st, SVC_STEP_PUT_ENCODE);
        return;
    }
    if (g->kind == SVC_JOB_PUT) {
        uint64_t t0 = rk_now_ns();
        rk_status st = svc_chunk_put(&x->cx, g->tenant, g->segs[0].tokens, g->segs[0].n, &g->key, &g->created,
                                     &g->stored_bytes);
        if (st == RK_OK && g->created) {
            svc_metric_add(xm.puts, 1);
            svc_histogram_observe(xm.put_ms, (double)(rk_now_ns() - t0) / 1e6);
        }
        finish(x, g, st, st == RK_OK ? NULL : rk_error_msg(), 0);
        return;
    }
    struct active *a = &x->act[x->nact];
    memset(a, 0, sizeof(*a));
    float *logits = x->logits + x->nact * (size_t)mi->vocab;
    bl_segment *segs = rk_calloc(g->nsegs ? g->nsegs : 1, sizeof(bl_segment));
    float **kvs = rk_calloc(g->nsegs ? g->nsegs : 1, sizeof(float *));
    cc_devtier_entry **ents = rk_calloc(g->nsegs ? g->nsegs : 1, sizeof(*ents));
    eng_kvblock **own = rk_calloc(g->nsegs ? g->nsegs : 1, sizeof(*own)); /* blocks the tier refused */
    rk_status st = segs && kvs && ents && own ? resolve_segments(x, g, segs, kvs, ents, own) : RK_ERR_NOMEM;
    bl_stats bs = {0};
    if (st == RK_OK) {
        /* room for the prompt and the tokens asked for, never the whole context by default
         * (a 128K-context model would reserve gigabytes per generation) */
        size_t plen = 1 + g->nquery;
        for (size_t i = 0; i < g->nsegs; i++)
            plen += segs[i].n;
        size_t cap = plen + (g->kind == SVC_JOB_GENERATE ? (size_t)g->max_tokens + 1 : 0);
        if (cap > (size_t)mi->max_seq)
            cap = (size_t)mi->max_seq;
        if (cap < plen)
            cap = plen; /* bl_assemble reports the prompt as too long for the context */
        st = eng_seq_new(x->be, cap, &a->s);
    }
    /* Cache-Craft: every cached chunk is a standalone variant (no metadata yet: chunks are
     * cached by PUT_CHUNK, outside any prompt); its predecessors now are the segments before
     * it, named by the first 8 bytes of their keys */
    bl_craft_segment *craft = NULL;
    uint64_t *ids = NULL;
    if (st == RK_OK && g->blend.mode == BL_CACHECRAFT && g->nsegs) {
        craft = rk_calloc(g->nsegs, sizeof(*craft));
        ids = rk_calloc(g->nsegs, sizeof(uint64_t));
        if (!craft || !ids)
            st = RK_ERR_NOMEM;
        for (size_t i = 0; st == RK_OK && i < g->nsegs; i++) {
            memcpy(&ids[i], g->segs[i].key.b, sizeof(uint64_t));
            craft[i] = (bl_craft_segment){.prev_ids = ids, .n_prev = i};
        }
        g->blend.craft = craft;
    }
    /* Cache-Craft: variants captured in earlier prompts, after the chunk that precedes each
     * segment now (the executor's own lookups for jobs it resolved itself) */
    svc_craft_use cu = {0};
    if (st == RK_OK && craft) {
        for (size_t i = 1; !g->pre && !x->cx.cluster && i < g->nsegs; i++)
            if (g->segs[i - 1].keyed && (segs[i].kv || segs[i].block || segs[i].container))
                svc_craft_lookup(x->cx.store, mi->id, g, i, segs[i].tokens, (uint32_t)segs[i].n);
        svc_craft_use_prepare(&x->cx, g, segs, craft, ids, g->blend.alpha, &cu);
    }
    codec_decode_opts dopts = {.pool = x->cx.pool}; /* container segments (segments' blobs in g->pre) */
    g->blend.decode = &dopts;
    for (size_t i = 0; st == RK_OK && i < g->nsegs; i++)
        if (segs[i].container && g->blend.mode != BL_FULL)
            svc_metric_add(xm.layer_loads, 1);
    if (st == RK_OK)
        st = bl_assemble(x->m, x->be, a->s, segs, g->nsegs, g->query, g->nquery, &g->blend, logits, &bs);
    g->blend.craft = NULL;
    g->blend.decode = NULL;
    svc_gen_pre_free(g); /* the blobs read for it: decoded or assembled from now */
    svc_gen_vars_free(g);
    if (st == RK_OK && cu.need)
        craft_enqueue(x, svc_craft_job_new(&x->cx, g, &cu));
    svc_craft_use_clear(&cu);
    rk_free(craft);
    rk_free(ids);
    for (size_t i = 0; kvs && i < g->nsegs; i++)
        rk_free(kvs[i]);
    rk_free(kvs);
    for (size_t i = 0; ents && i < g->nsegs; i++)
        cc_devtier_release(svc_devcache_tier(x->cx.dev), ents[i]);
    rk_free(ents);
    for (size_t i = 0; own && i < g->nsegs; i++)
        eng_kvblock_free(own[i]);
    rk_free(own);
    rk_free(segs);
    if (st == RK_OK && g->kind == SVC_JOB_PREFILL)
        st = export_prompt(x, g, a->s);
    g->prompt_tokens = (uint32_t)bs.prompt_tokens;
    g->recomputed = (uint32_t)bs.recomputed;
    g->ttft_ms = (float)((rk_now_ns() - g->submit_ns) / 1e6);
    svc_metric_add(xm.hits, g->chunk_hits);
    svc_metric_add(xm.misses, g->chunk_misses);
    if (st != RK_OK || g->kind == SVC_JOB_PREFILL) {
        char msg[256];
        snprintf(msg, sizeof(msg), "%s", st == RK_OK ? "" : rk_error_msg());
        eng_seq_free(a->s);
        finish(x, g, st, msg, 0);
        return;
    }
    svc_metric_add(xm.gens, 1);
    svc_histogram_observe(xm.ttft, g->ttft_ms);
    svc_metric_add(xm.prompt_tokens, (int64_t)bs.prompt_tokens);
    svc_metric_add(xm.recomputed, (int64_t)bs.recomputed);
    eng_sampler_init(&a->sm, g->temperature, g->top_k, g->top_p, g->seed);
    a->g = g;
    x->nact++;
    int32_t t = eng_sample(&a->sm, logits, mi->vocab);
    if (t < 0) { /* all NaN (the sampler's scratch failing for memory reads the same) */
        x->nact--;
        eng_sampler_free(&a->sm);
        eng_seq_free(a->s);
        finish(x, g, RK_ERR_INTERNAL, "sampling: no token (NaN logits or out of memory)", 0);
        return;
    }
    if (g->max_tokens == 0 || is_stop(mi, t)) {
        x->nact--;
        eng_sampler_free(&a->sm);
        eng_seq_free(a->s);
        finish(x, g, RK_OK, NULL, g->max_tokens == 0 ? SVC_FINISH_LENGTH : SVC_FINISH_STOP);
        return;
    }
    emit(g, t);
    a->last = t;
}

/* Remove active slot i (swap with the last). */
static void drop_active(svc_exec *x, size_t i, rk_status st, const char *msg, uint8_t why)
{
    struct active *a = &x->act[i];
    svc_gen *g = a->g;
    eng_sampler_free(&a->sm);
    eng_seq_free(a->s);
    x->act[i] = x->act[--x->nact];
    finish(x, g, st, msg, why);
}

/* One batched decode step over every active generation. */
static void step(svc_exec *x)
{
    const eng_model_info *mi = eng_model_get_info(x->m);
    /* leave: cancelled, finished by length, or out of context */
    for (size_t i = 0; i < x->nact;) {
        struct active *a = &x->act[i];
        if (atomic_load(&a->g->cancelled))
            drop_active(x, i, RK_ERR_CANCELLED, "cancelled", 0);
        else if (a->g->nout >= a->g->max_tokens)
            drop_active(x, i, RK_OK, NULL, SVC_FINISH_LENGTH);
        else if (eng_seq_len(a->s) >= eng_seq_capacity(a->s))
            drop_active(x, i, RK_OK, NULL, SVC_FINISH_CONTEXT);
        else
            i++;
    }
    if (x->nact == 0)
        return;
    for (size_t i = 0; i < x->nact; i++) {
        x->seqs[i] = x->act[i].s;
        x->toks[i] = x->act[i].last;
        x->sms[i] = &x->act[i].sm;
    }
    uint64_t t0 = rk_now_ns();
    /* the tokens are chosen where the logits are (on the GPU only n ids come back) */
    rk_status st = eng_decode_sample(x->be, x->seqs, x->toks, x->nact, x->sms, x->next, NULL);
    svc_histogram_observe(xm.step_ms, (double)(rk_now_ns() - t0) / 1e6);
    svc_metric_add(xm.steps, 1);
    svc_metric_add(xm.step_tokens, (int64_t)x->nact);
    if (st != RK_OK) {
        char msg[256];
        snprintf(msg, sizeof(msg), "decode: %s", rk_error_msg());
        RK_ERROR("%s", msg);
        while (x->nact)
            drop_active(x, x->nact - 1, st, msg, 0);
        return;
    }
    for (size_t i = 0; i < x->nact;) {
        struct active *a = &x->act[i];
        int32_t t = x->next[i];
        if (t < 0 || is_stop(mi, t)) {
            if (t < 0)
                drop_active(x, i, RK_ERR_INTERNAL, "sampling: no token (NaN logits)", 0);
            else
                drop_active(x, i, RK_OK, NULL, SVC_FINISH_STOP);
            x->next[i] = x->next[x->nact]; /* the former last moved to slot i: so does its token */
            continue;
        }
        emit(a->g, t);
        a->last = t;
        i++;
    }
}

/* The device tier's waker: a decoded chunk left the tier on another thread, and its block
 * is the executor's to free. */
static void exec_wake(void *ctx)
{
    svc_exec *x = ctx;
    pthread_mutex_lock(&x->lock);
    pthread_cond_signal(&x->wake);
    pthread_mutex_unlock(&x->lock);
}

static void *exec_main(void *arg)
{
    svc_exec *x = arg;
    for (;;) {
        pthread_mutex_lock(&x->lock);
        while (!x->stop && x->nq == 0 && x->nact == 0 && !svc_devcache_pending(x->cx.dev) &&
               !(x->ncap && !x->cap_busy) && !x->cap_cur)
            pthread_cond_wait(&x->wake, &x->lock);
        if (x->stop) {
            pthread_mutex_unlock(&x->lock);
            break;
        }
        /* admit new generations up to the batch size */
        svc_gen *admit[64];
        size_t na = 0;
        while (x->nq && x->nact + na < (size_t)x->max_batch && na < 64) {
            admit[na++] = x->queue[x->head];
            x->head = (x->head + 1) % QUEUE_MAX;
            x->nq--;
        }
        pthread_mutex_unlock(&x->lock);
        uint64_t t0 = rk_now_ns();
        svc_devcache_reap(x->cx.dev); /* blocks that left the device tier: freed on this thread */
        for (size_t i = 0; i < na; i++)
            start_gen(x, admit[i]);
        step(x);
        svc_metric_add(xm.busy_us, (int64_t)((rk_now_ns() - t0) / 1000));
        /* low priority: a layer of a Cache-Craft capture when nothing else waits or decodes,
         * or every turn for one that has waited its turn (x->cap's comment) */
        bool start = false, forced = false, run = false;
        pthread_mutex_lock(&x->lock);
        if (!x->stop && (x->cap_cur || (x->ncap && !x->cap_busy))) {
            uint64_t now = rk_now_ns();
            bool idle = x->nq == 0 && x->nact == 0;
            if (x->cap_cur) {
                run = idle || x->cap_cur_forced ||
                      (forced = svc_craft_due(false, now, x->cap_cur_since, x->cap_forced_ns, x->cx.craft_max_wait_ns));
            } else if (svc_craft_due(idle, now, x->cap_since[x->cap_head], x->cap_forced_ns, x->cx.craft_max_wait_ns)) {
                forced = !idle;
                x->cap_cur = x->cap[x->cap_head];
                x->cap_cur_since = x->cap_since[x->cap_head];
                x->cap_cur_forced = false;
                x->cap_head = (x->cap_head + 1) % CRAFT_QUEUE_MAX;
                x->ncap--;
                x->cap_busy = true;
                run = start = true;
            }
            if (forced) {
                x->cap_cur_forced = true;
                x->cap_forced_ns = now;
            }
        }
        pthread_mutex_unlock(&x->lock);
        if (forced)
            svc_metric_add(xm.cap_forced, 1);
        if (run)
            craft_step(x, start);
    }
    if (x->cap_cur) { /* stopped half-way: its candidates counted skipped, as a queued one's */
        svc_craft_job_drop(x->cap_cur);
        x->cap_cur = NULL;
    }
    /* shutdown: everything still here ends with RK_ERR_SHUTDOWN */
    while (x->nact)
        drop_active(x, x->nact - 1, RK_ERR_SHUTDOWN, "server shutting down", 0);
    pthread_mutex_lock(&x->lock);
    while (x->nq) {
        svc_gen *g = x->queue[x->head];
        x->head = (x->head + 1) % QUEUE_MAX;
        x->nq--;
        pthread_mutex_unlock(&x->lock);
        finish(x, g, RK_ERR_SHUTDOWN, "server shutting down", 0);
        pthread_mutex_lock(&x->lock);
    }
    pthread_mutex_unlock(&x->lock);
    return NULL;
}

/* Release the executor's memory (its thread is not running). */
static void exec_free(svc_exec *x)
{
    rk_pool_free(x->craft_pool); /* stores in flight finish (they signal x->wake) */
    svc_craft_seen_free(x->cx.craft_seen);
    while (x->ncap) {
        svc_craft_job_drop(x->cap[x->cap_head]);
        x->cap_head = (x->cap_head + 1) % CRAFT_QUEUE_MAX;
        x->ncap--;
    }
    pthread_mutex_destroy(&x->lock);
    pthread_cond_destroy(&x->wake);
    rk_free(x->queue);
    rk_free(x->act);
    rk_free(x->logits);
    rk_free(x->seqs);
    rk_free(x->toks);
    rk_free(x->sms);
    rk_free(x->next);
    rk_free(x);
}

rk_status svc_exec_start(const svc_chunk_ctx *chunks, int max_batch, svc_exec **out)
{
    eng_model *m = chunks->model;
    const eng_model_info *mi = eng_model_get_info(m);
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, exec_metrics);
    svc_craft_metrics_init();
    svc_exec *x = rk_calloc(1, sizeof(*x));
    if (!x)
        return RK_ERR_NOMEM;
    x->cx = *chunks;
    x->m = chunks->model;
    x->be = chunks->backend;
    x->max_batch = max_batch > 0 ? max_batch : 32;
    pthread_mutex_init(&x->lock, NULL);
    pthread_cond_init(&x->wake, NULL);
    x->queue = rk_calloc(QUEUE_MAX, sizeof(svc_gen *));
    x->act = rk_calloc((size_t)x->max_batch, sizeof(struct active));
    x->logits = rk_malloc((size_t)x->max_batch * (size_t)mi->vocab * sizeof(float));
    x->seqs = rk_calloc((size_t)x->max_batch, sizeof(eng_seq *));
    x->toks = rk_calloc((size_t)x->max_batch, sizeof(int32_t));
    x->sms = rk_calloc((size_t)x->max_batch, sizeof(eng_sampler *));
    x->next = rk_calloc((size_t)x->max_batch, sizeof(int32_t));
    if (x->cx.craft_capture && (rk_pool_create(1, &x->craft_pool) != RK_OK || !(x->cx.craft_seen = svc_craft_seen_new())))
        x->cx.craft_capture = false; /* (a pool of one thread, a table: only memory can fail them) */
    if (!x->queue || !x->act || !x->logits || !x->seqs || !x->toks || !x->sms || !x->next ||
        pthread_create(&x->thread, NULL, exec_main, x) != 0) {
        exec_free(x);
        return RK_ERR_NOMEM;
    }
    if (x->cx.dev)
        svc_devcache_set_waker(x->cx.dev, exec_wake, x);
    *out = x;
    return RK_OK;
}

void svc_exec_stop(svc_exec *x)
{
    if (!x)
        return;
    if (x->cx.dev) /* what leaves the tier from now on waits for svc_devcache_close */
        svc_devcache_set_waker(x->cx.dev, NULL, NULL);
    pthread_mutex_lock(&x->lock);
    x->stop = true;
    pthread_cond_signal(&x->wake);
    pthread_mutex_unlock(&x->lock);
    pthread_join(x->thread, NULL);
    exec_free(x);
}

rk_status svc_exec_submit(svc_exec *x, svc_gen *g)
{
    pthread_mutex_lock(&x->lock);
    rk_status st = RK_OK;
    if (x->stop)
        st = rk_error_set(RK_ERR_SHUTDOWN, "server shutting down");
    else if (x->nq == QUEUE_MAX)
        st = rk_error_set(RK_ERR_BUSY, "%d generations queued; try again later", QUEUE_MAX);
    if (st == RK_OK) {
        atomic_fetch_add(&g->refs, 1);
        if (!g->submit_ns) /* (a job resolved on its loop first was submitted then) */
            g->submit_ns = rk_now_ns();
        x->queue[(x->head + x->nq) % QUEUE_MAX] = g;
        x->nq++;
        x->load++;
        svc_metric_add(xm.active, 1);
        pthread_cond_signal(&x->wake);
    }
    pthread_mutex_unlock(&x->lock);
    return st;
}

struct pool_job {
    svc_exec *x;      /* NULL for META jobs of a daemon without a model */
    cc_store *store;
    svc_gen *g;
};

/* Decode a container and encode it again with codec/level (level 0xFF: the codec's default). */
static rk_status transcode(svc_exec *x, const uint8_t *cont, size_t clen, uint32_t n, uint8_t codec,
                           uint8_t level, rk_buf *out)
{
    if (!x)
        return rk_error_set(RK_ERR_UNAVAILABLE, "transcoding needs the model's geometry (--model)");
    float *kv = NULL;
    rk_status st = svc_chunk_check(&x->cx, cont, clen, n, &kv);
    if (st != RK_OK)
        return st;
    st = svc_kv_encode(&x->cx, kv, n, (codec_id)codec, level == 0xFF ? -1 : level, out);
    rk_free(kv);
    return st;
}

/* PUT_KV: the container checked against the model (every checksum), the key in the tenant's
 * namespace. */
static rk_status put_kv_check(svc_exec *x, svc_gen *g)
{
    const eng_model_info *mi = eng_model_get_info(x->m);
    const svc_gen_seg *sg = &g->segs[0];
    rk_status st = svc_chunk_check(&x->cx, g->in_blob, g->in_len, sg->n, NULL);
    return st == RK_OK ? cc_key_compute(mi->id, g->tenant, sg->tokens, sg->n, &g->key) : st;
}

/* PUT_KV (and PUT_CHUNK's encoded chunk): the stored form of the chunk (tokens + container) in
 * blob, and what to put. */
static rk_status put_kv_args(svc_exec *x, svc_gen *g, rk_buf *blob, cc_put_args *a)
{
    const svc_gen_seg *sg = &g->segs[0];
    rk_buf view = {(uint8_t *)g->in_blob, g->in_len, g->in_len, false};
    return svc_chunk_args(&x->cx, sg->tokens, sg->n, &view, g->put_cost > 0 ? g->put_cost : 1.0, blob, a);
}

rk_status svc_put_kv_finish(cc_store *store, svc_gen *g)
{
    rk_status st = cc_store_put_finish(store, g->txn, &g->key);
    g->txn = NULL;
    g->created = st == RK_OK; /* written only when the loop's lookup found it absent */
    if (!g->created)
        g->stored_bytes = 0;
    return st;
}

/* GET_KV: the stored chunk's container into g->result, as stored or transcoded. */
static rk_status get_kv_reply(svc_exec *x, svc_gen *g, const cc_buf *blob)
{
    int32_t *t;
    uint32_t n;
    const uint8_t *cont;
    size_t clen;
    rk_status st = svc_chunk_unwrap(blob->data, blob->len, &t, &n, &cont, &clen);
    if (st != RK_OK)
        return st;
    if (g->want_codec == 0xFF) { /* as stored */
        rk_buf_append(&g->result, cont, clen);
        st = g->result.failed ? RK_ERR_NOMEM : RK_OK;
    } else { /* transcode: decode, then encode with the requested codec and level */
        st = transcode(x, cont, clen, n, g->want_codec, g->want_level, &g->result);
    }
    rk_free(t);
    return st;
}

/* GENERATE / PREFILL (SVC_STEP_GEN_READ): the blobs of the segments the loop resolved as
 * readable, or their device-tier copies (referenced for the executor). A cancelled job reads
 * nothing more. */
static void read_resolved(svc_exec *x, cc_store *store, svc_gen *g)
{
    cc_devtier *tier = x ? svc_devcache_tier(x->cx.dev) : NULL;
    g->pre_tier = tier;
    for (size_t i = 0; i < g->nsegs; i++) {
        svc_gen_pre *p = &g->pre[i];
        if (!p->readable)
            continue;
        if (atomic_load(&g->cancelled)) {
            p->read_st = RK_ERR_CANCELLED;
            continue;
        }
        if (tier) {
            p->ticket = cc_devtier_ticket(tier, &p->rec.key); /* before the read */
            if (g->blend.mode != BL_FULL && cc_devtier_get(tier, &p->rec.key, &p->ent) == RK_OK)
                continue;
        }
        p->read_st = cc_store_read(store, &p->rec, &p->blob);
    }
    /* Cache-Craft: the variant of each chunk read after the chunk that precedes it now
     * (craft.h), here so that the executor never waits on the store for it */
    for (size_t i = 1; x && g->blend.mode == BL_CACHECRAFT && i < g->nsegs; i++) {
        svc_gen_pre *p = &g->pre[i];
        const svc_gen_seg *sg = &g->segs[i];
        if (!p->readable || !g->pre[i - 1].asked || atomic_load(&g->cancelled) || (!p->ent && p->read_st != RK_OK))
            continue;
        int32_t *own = NULL; /* a by-key chunk's tokens, from its blob (checked by the executor) */
        const int32_t *t = sg->tokens;
        uint32_t n = sg->n;
        if (sg->by_key && p->ent) {
            const svc_devchunk *dc = cc_devtier_entry_obj(p->ent);
            t = dc->tokens;
            n = dc->n;
        } else if (sg->by_key) {
            const uint8_t *cont;
            size_t clen;
            if (svc_chunk_unwrap(p->blob->data, p->blob->len, &own, &n, &cont, &clen) != RK_OK)
                continue;
            t = own;
        }
        svc_craft_lookup(store, eng_model_get_info(x->m)->id, g, i, t, n);
        rk_free(own);
    }
}

/* GET_KV, PUT_KV and the metadata calls on a pool thread. */
static void pool_run(void *arg)
{
    struct pool_job *pj = arg;
    svc_exec *x = pj->x;
    cc_store *store = pj->store;
    svc_gen *g = pj->g;
    rk_free(pj);
    rk_status st;
    if (g->step == SVC_STEP_FORGET) { /* steps of jobs the loop answers (svc_step) */
        cc_store_apply_removed(store, &g->removed);
        cc_evlist_free(&g->removed);
        st = RK_OK;
    } else if (g->step == SVC_STEP_KV_CHECK) {
        step_back(x, g, put_kv_check(x, g), SVC_STEP_KV_CHECK);
        return;
    } else if (g->step == SVC_STEP_STORE) {
        store_encoded(x, store, g);
        finish(x, g, RK_OK, NULL, g->finish);
        return;
    } else if (g->step == SVC_STEP_GEN_READ) {
        read_resolved(x, store, g);
        step_back(x, g, RK_OK, SVC_STEP_GEN_READ);
        return;
    } else if (g->step == SVC_STEP_KV_WRITE) {
        rk_buf blob = RK_BUF_INIT;
        cc_put_args a;
        if ((st = put_kv_args(x, g, &blob, &a)) == RK_OK)
            st = cc_store_put_write(store, g->tenant, &a, &g->txn);
        g->stored_bytes = blob.len;
        rk_buf_free(&blob);
        step_back(x, g, st, SVC_STEP_KV_WRITE);
        return;
    } else if (g->step == SVC_STEP_KV_FINISH || g->step == SVC_STEP_KV_COMMIT) {
        if (g->step == SVC_STEP_KV_COMMIT)
            cc_store_put_commit(store, g->txn);
        st = svc_put_kv_finish(store, g);
    } else if (g->kind == SVC_JOB_GET_KV && g->step == SVC_STEP_GET_READ) { /* resolved on the loop */
        cc_buf *blob = NULL;
        if ((st = cc_store_read(store, &g->pre[0].rec, &blob)) == RK_OK) {
            st = get_kv_reply(x, g, blob);
            cc_buf_release(blob);
        }
    } else if (g->kind == SVC_JOB_GET_KV) {
        cc_buf *blob = NULL;
        if ((st = svc_cluster_get(x ? x->cx.cluster : NULL, store, g->tenant, &g->key, &blob, NULL)) == RK_OK) {
            st = get_kv_reply(x, g, blob);
            cc_buf_release(blob);
        }
    } else if (g->kind == SVC_JOB_META) {
        st = RK_OK;
        if (g->opcode == RK_OP_LOOKUP) {
            uint32_t n = g->in_len / CC_KEY_BYTES;
            cc_key *keys = rk_malloc((n ? n : 1) * sizeof(cc_key));
            uint8_t *present = rk_calloc(n ? n : 1, 1);
            st = keys && present ? RK_OK : RK_ERR_NOMEM;
            for (uint32_t i = 0; st == RK_OK && i < n; i++)
                memcpy(keys[i].b, g->in_blob + (size_t)i * CC_KEY_BYTES, CC_KEY_BYTES);
            if (st == RK_OK && n)
                st = cc_store_lookup(store, g->tenant, keys, n, present);
            if (st == RK_OK) {
                rk_buf_put_u32(&g->result, n);
                rk_buf_append(&g->result, present, n);
            }
            rk_free(keys);
            rk_free(present);
        } else if (g->opcode == RK_OP_PEER_GET) {
            st = svc_cluster_serve_get(x ? x->cx.cluster : NULL, store, g->tenant, &g->key, &g->result);
        } else if (g->opcode == RK_OP_PEER_PUT) {
            st = x ? svc_cluster_serve_put(store, eng_model_get_info(x->m)->id, g->tenant, &g->key, g->peer_codec,
                                           g->peer_level, g->peer_cost, g->in_blob, g->in_len)
                   : rk_error_set(RK_ERR_UNAVAILABLE, "this node serves no model");
        } else if (g->opcode == RK_OP_DELETE) {
            st = cc_store_delete(store, g->tenant, &g->key);
        } else { /* STATS */
            cc_tenant_info ti;
            if ((st = cc_store_tenant_usage(store, g->tenant, &ti)) == RK_OK) {
                rk_buf_put_u64(&g->result, ti.chunks);
                rk_buf_put_u64(&g->result, ti.bytes);
                rk_buf_put_u64(&g->result, g->st_hits);
                rk_buf_put_u64(&g->result, g->st_misses);
                rk_buf_put_u64(&g->result, ti.cfg.max_bytes);
                rk_buf_put_u64(&g->result, ti.cfg.max_chunks);
            }
        }
        if (st == RK_OK && g->result.failed)
            st = RK_ERR_NOMEM;
    } else { /* PUT_KV */
        uint8_t present = 0;
        rk_buf blob = RK_BUF_INIT;
        cc_put_args a;
        st = put_kv_check(x, g);
        if (st == RK_OK)
            st = cc_store_lookup(store, g->tenant, &g->key, 1, &present);
        if (st == RK_OK && !present && (st = put_kv_args(x, g, &blob, &a)) == RK_OK)
            st = svc_cluster_put(x->cx.cluster, store, g->tenant, &a, &g->key);
        g->created = st == RK_OK && !present;
        g->stored_bytes = g->created ? blob.len : 0;
        rk_buf_free(&blob);
    }
    finish(x, g, st, st == RK_OK ? NULL : rk_error_msg(), 0);
}

rk_status svc_exec_submit_pool(svc_exec *x, rk_pool *pool, cc_store *store, svc_gen *g)
{
    struct pool_job *pj = rk_malloc(sizeof(*pj));
    if (!pj)
        return RK_ERR_NOMEM;
    pj->x = x;
    pj->store = store;
    pj->g = g;
    atomic_fetch_add(&g->refs, 1);
    g->submit_ns = rk_now_ns();
    if (x) {
        pthread_mutex_lock(&x->lock);
        x->load++;
        pthread_mutex_unlock(&x->lock);
    }
    svc_metric_add(xm.active, 1);
    rk_status st = rk_pool_submit(pool, pool_run, pj);
    if (st != RK_OK) {
        rk_free(pj);
        atomic_fetch_sub(&g->refs, 1);
        if (x) {
            pthread_mutex_lock(&x->lock);
            x->load--;
            pthread_mutex_unlock(&x->lock);
        }
        svc_metric_add(xm.active, -1);
    }
    return st;
}

int svc_exec_load(svc_exec *x)
{
    pthread_mutex_lock(&x->lock);
    int n = x->load;
    pthread_mutex_unlock(&x->lock);
    return n;
}
