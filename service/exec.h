/*
 * exec.h — private to service/: the compute executor. One thread owns the model's backend
 * and runs every generation: it assembles each new prompt (blend/), then advances all active
 * generations together, one batched decode step at a time (continuous batching: generations
 * join and leave between steps). Tokens flow back to the worker that owns the connection
 * through the generation's outbox and an event activated on that worker's event_base.
 *
 * Ownership: a generation is refcounted; the worker (which submitted it) and the executor
 * hold one reference each. The executor drops its reference after its final notification;
 * the worker drops its own once it has delivered the final frame (or when the connection is
 * gone). Only the worker thread touches conn/notify; the outbox is guarded by g->lock, and the
 * executor activates notify only while holding g->lock, the last time together with setting
 * done: a worker that has seen done under the lock may free the event.
 */
#ifndef RAGKV_SVC_EXEC_H
#define RAGKV_SVC_EXEC_H

#include <event2/event.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "chunk.h"
#include "ragkv/blend.h"
#include "ragkv/bytes.h"
#include "ragkv/devtier.h"
#include "ragkv/engine.h"
#include "ragkv/status.h"
#include "ragkv/svc_request.h"

typedef enum svc_finish {
    SVC_FINISH_LENGTH = 0,  /* max_tokens generated */
    SVC_FINISH_STOP = 1,    /* the model produced an end-of-sequence token */
    SVC_FINISH_CONTEXT = 2, /* the context is full */
} svc_finish;

typedef enum svc_job_kind {
    SVC_JOB_GENERATE = 0, /* assemble, then decode until done (streams tokens) */
    SVC_JOB_PREFILL = 1,  /* assemble, then hand back the prompt's KV as a container */
    SVC_JOB_PUT = 2,      /* prefill one chunk standalone, encode and store it */
    SVC_JOB_GET_KV = 3,   /* (pool) read a stored chunk's container */
    SVC_JOB_PUT_KV = 4,   /* (pool) validate an external container and store it */
    SVC_JOB_META = 5,     /* (pool) LOOKUP, DELETE or STATS: store metadata calls; the reply
                             payload is built in result */
} svc_job_kind;

/* The steps of a job that goes back and forth between the I/O pool and its worker's event loop
 * (meta.c: the chunk metadata calls answered on the loop through the worker's
 * cc_redis_async; the executor takes part in PUT_CHUNK and GENERATE's). A pool step ends by handing the job back (stepped) instead of
 * ending it, except the last ones, which end it like any pool job. */
typedef enum svc_step {
    SVC_STEP_NONE = 0,  /* a plain job: the pool runs it whole, synchronously */
    SVC_STEP_KV_CHECK,  /* PUT_KV: check the container, compute the key; then the loop looks
                           the chunk up */
    SVC_STEP_KV_WRITE,  /* PUT_KV: write the blob (cc_store_put_write); then the loop commits */
    SVC_STEP_KV_FINISH, /* PUT_KV: finish the put (blob deletes: rollback, evictions); ends */
    SVC_STEP_KV_COMMIT, /* PUT_KV: commit synchronously (the loop's Redis lost its data: the
                           store rebuilds), then finish; ends */
    SVC_STEP_FORGET,    /* DELETE: the blob half (cc_store_apply_removed); ends */
    SVC_STEP_PUT_ENCODE, /* PUT_CHUNK (executor): the loop found the chunk absent; prefill and
                           encode it into in_owned, then hand it back: the loop goes on as for
                           PUT_KV from SVC_STEP_KV_WRITE */
    SVC_STEP_STORE,     /* GENERATE / PREFILL: the executor encoded the prompt's uncached
                           chunks (segs[i].enc); the pool stores them (synchronous store), then
                           ends the job with the status and finish it had */
    SVC_STEP_GET_READ,  /* GET_KV: the loop resolved the chunk (pre[0]); read its blob and
                           answer (as stored or transcoded); ends */
    SVC_STEP_GEN_READ,  /* GENERATE / PREFILL: the loop resolved the prompt's chunks; read
                           their blobs (or take them from the device tier); then the loop
                           hands the job to the executor */
} svc_step;

/* A prompt segment resolved before the executor takes the job (meta.c): the loop asked the
 * metadata whether the tenant may read the chunk (and got its record), the pool read its blob
 * or took its device-tier copy. The executor then decodes only: no Redis, no disk. */
typedef struct svc_gen_pre {
    bool asked;                /* the segment's key was looked up */
    bool readable;             /* the tenant may read it; rec is its record */
    cc_record rec;
    rk_status read_st;         /* the pool's read: RK_OK with blob or ent */
    cc_buf *blob;              /* the stored chunk (tokens + container), checksum verified */
    cc_devtier_entry *ent;     /* or the device tier's copy, referenced */
    uint64_t ticket;           /* the tier's ticket, taken before the read */
} svc_gen_pre;

/* The Cache-Craft variant of a cachecraft prompt's segment i >= 1 captured right after
 * segment i - 1 (craft.h), looked up before the executor assembles the prompt: by the pool
 * with the segments' blobs (g->pre), else by the executor. */
typedef struct svc_gen_var {
    bool asked;                /* looked up: key is the variant's key */
    cc_key key;
    rk_status st;              /* RK_OK: found, blob and rec hold it; else why not */
    cc_record rec;             /* its record (rec.craft: the RKCF metadata) */
    cc_buf *blob;              /* the stored variant (tokens + container), checksum verified */
} svc_gen_var;

/* One prompt segment as the client sent it. */
typedef struct svc_gen_seg {
    bool by_key;               /* named by key: tokens come from the store */
    bool missed;               /* literal segment not in the cache: cached when the job ends */
    bool keyed;                /* key holds its identity (by key, or computed for the lookup) */
    cc_key key;
    int32_t *tokens;           /* (n) owned; filled from the store for by_key segments */
    uint32_t n;
    rk_buf enc;                /* a missed segment's encoded KV container, to store */
    double enc_ms;             /* its prefill time (the recompute cost a hit saves) */
} svc_gen_seg;

typedef struct svc_gen {
    atomic_int refs;
    /* request (immutable after submit) */
    uint8_t kind;              /* svc_job_kind */
    char tenant[SVC_NAME_MAX]; /* the authenticated tenant */
    char ns[SVC_NAME_MAX];     /* namespace to read chunks from ("" = the tenant's own) */
    svc_gen_seg *segs;         /* (nsegs), owned */
    size_t nsegs;
    int32_t *query;            /* (nquery), owned */
    size_t nquery;
    bl_params blend;
    uint32_t max_tokens;
    float temperature, top_p;
    int top_k;
    uint64_t seed;
    atomic_bool cancelled;     /* set by the worker when the client is gone */
    /* outbox, guarded by lock */
    pthread_mutex_t lock;
    int32_t *out;              /* (nout) generated tokens */
    size_t nout, cap;
    bool done;
    rk_status status;
    char errmsg[256];
    uint32_t prompt_tokens, recomputed, chunk_hits, chunk_misses;
    cc_key key;                /* PUT: the chunk's key */
    int created;               /* PUT: 1 when newly stored */
    uint64_t stored_bytes;     /* PUT: blob bytes */
    rk_buf result;             /* PREFILL, GET_KV: a KV container */
    const uint8_t *in_blob;    /* PUT_KV: the container, in in_owned */
    uint32_t in_len;
    uint8_t *in_owned;         /* PUT_KV: a copy of the request payload; LOOKUP: the keys */
    uint64_t st_hits, st_misses; /* STATS: the tenant's counts, taken on the worker */
    uint8_t want_codec, want_level; /* GET_KV: 0xFF = as stored */
    uint16_t peer_codec, peer_level; /* PEER_PUT: the blob's codec and level */
    float peer_cost;           /* PEER_PUT: its recompute cost */
    double put_cost;           /* PUT (SVC_STEP_PUT_ENCODE): the prefill's ms; 0: PUT_KV's 1.0 */
    float ttft_ms, total_ms;
    uint8_t finish;            /* svc_finish */
    /* worker side only */
    struct event *notify;      /* on the owning worker's base; activated by the executor */
    void *conn;                /* the owning connection, NULL once it is gone */
    struct svc_gen *next;      /* the connection's list of generations */
    uint64_t request_id;
    uint16_t opcode;
    bool stream;
    size_t nsent;              /* tokens already sent in stream frames */
    uint64_t submit_ns;
    bool counted;              /* holds one of its tenant's job slots (svc_limits) */
    struct svc_server *srv;    /* the server (worker side: limits) */
    /* the loop's metadata path (meta.c); worker side except step/stepped/txn (see svc_step) */
    struct svc_worker *worker; /* the owning worker (its loop and its cc_redis_async) */
    uint8_t step;              /* svc_step: what the pool does, or what just came back */
    bool stepped;              /* guarded by lock: a pool step handed the job back */
    struct cc_put_txn *txn;    /* PUT_KV: the blob written, the put not yet finished */
    cc_evlist removed;         /* DELETE: the chunk whose metadata the loop removed */
    uint64_t meta_t0_ns;       /* start of the Redis operation in flight (metrics) */
    uint64_t meta_losses;      /* cc_redis_async_losses when it started */
    svc_gen_pre *pre;          /* (nsegs) resolved on the loop and the pool; NULL: the executor
                                  resolves the segments itself (synchronously) */
    cc_devtier *pre_tier;      /* the tier pre's references are of */
    rk_status pre_st;          /* the loop's lookup failed (Redis down): by-key segments fail
                                  with it, literal ones are computed uncached */
    char pre_msg[128];         /* its message */
    svc_gen_var *vars;         /* (nsegs) Cache-Craft variants looked up (craft.h); NULL: none */
} svc_gen;

typedef struct svc_exec svc_exec;

/* Start the executor thread over the model, backend and store in chunks (copied; the objects
 * are borrowed and must outlive it). max_batch caps the generations decoded together. */
rk_status svc_exec_start(const svc_chunk_ctx *chunks, int max_batch, svc_exec **out);

/* Stop: every queued or active generation finishes with RK_ERR_SHUTDOWN (and is notified),
 * then the thread is joined. NULL is a no-op. */
void svc_exec_stop(svc_exec *x);

/* A new generation with one reference (the caller's); free with svc_gen_release. */
svc_gen *svc_gen_new(void);
void svc_gen_release(svc_gen *g);

/* Free g->pre (records, blobs, device-tier references); any thread. */
void svc_gen_pre_free(svc_gen *g);

/* Hand g to the executor (it takes its own reference). RK_ERR_SHUTDOWN when stopping,
 * RK_ERR_BUSY when the queue is full. */
rk_status svc_exec_submit(svc_exec *x, svc_gen *g);

/* Run a GET_KV, PUT_KV or META job on pool (store I/O, decoding) instead of the executor
 * thread; it finishes and notifies like any other job. x may be NULL (a daemon without a
 * model) for META jobs only. RK_ERR_NOMEM / RK_ERR_SHUTDOWN. */
rk_status svc_exec_submit_pool(svc_exec *x, rk_pool *pool, cc_store *store, svc_gen *g);

/* Generations queued or active now. */
int svc_exec_load(svc_exec *x);

/* End g from its worker's own thread (a job answered on the loop): status, message (NULL:
 * none), done, and its notify activated, as the executor ends a job. */
void svc_gen_complete(svc_gen *g, rk_status st, const char *msg);

/* PUT_KV's last step (any thread; blocking when cc_put_txn_blocking): finish g->txn, set
 * created and stored_bytes. The put's status. */
rk_status svc_put_kv_finish(cc_store *store, svc_gen *g);

#endif
