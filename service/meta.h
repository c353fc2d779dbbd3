/*
 * meta.h — private to service/: the metadata calls of LOOKUP, DELETE, PUT_KV, PUT_CHUNK and of
 * GENERATE / PREFILL's prompt chunks answered on the worker's own event loop, through a
 * cc_redis_async per worker (when the metadata is in Redis, reached at `redis` HOST:PORT or
 * through `redis-sentinels`, which the client then asks for the primary at every connect as the
 * synchronous store does, and redis-async is on; embedded metadata keeps the synchronous path).
 *
 *   LOOKUP     the loop alone: cc_store_lookup_async (records, grant checks), then the answer.
 *   DELETE     the loop removes the metadata (cc_store_delete_async); the pool deletes the
 *              blob; then the answer.
 *   PUT_KV     pool: check the container, key  ->  loop: is it there?  ->  pool: write the blob
 *              ->  loop: the quota-checked insert  ->  (pool, when there are blobs to delete:
 *              rollback, evictions)  ->  the acknowledgement. The order of the synchronous
 *              write path exactly: blob, metadata commit, acknowledge.
 *   GET_KV     loop: the chunk's record, readable by the tenant?  ->  pool: read the blob,
 *              the answer (as stored or transcoded).
 *   PUT_CHUNK  loop: is it there?  ->  executor: prefill and encode  ->  PUT_KV's steps from
 *              the blob write on.
 *   GENERATE, PREFILL  loop: one lookup of every chunk the prompt names by key or (when the
 *              mode reuses caches) by content, keeping the records (cc_store_resolve_async)
 *              ->  pool: read the readable chunks' blobs (cc_store_read) or take their
 *              device-tier copies  ->  executor: decode, blend, generate  ->  (pool: store the
 *              chunks the prompt brought that were not cached, SVC_STEP_STORE)  ->  the end.
 *              The executor never waits on Redis or the disk for a job resolved this way.
 *
 * A job stays the worker's (svc_gen, refcounted as with the pool) from start to end: a client
 * that goes away only cancels it (a PUT_KV whose blob is written still commits and finishes,
 * as a pool job would; one not yet written stops). RK_ERR_UNAVAILABLE from the loop's Redis
 * when the worker's client found Redis back without ragkv's metadata meanwhile re-runs the
 * call through the synchronous store on the pool, whose recovery rebuilds and whose answer is
 * the client's; a Redis that is down or stalled is answered RK_ERR_UNAVAILABLE after the
 * client's retries (as the synchronous path answers, which retries twice as long); other
 * outcomes (quota, not found, Redis refusing a write) are answered as they are, the same codes
 * the synchronous path gives.
 *
 * Metrics: meta_async_ops_total{op="lookup|insert|delete"}, meta_async_errors_total{op=...}
 * (failures, not answers such as not-found or over-quota), meta_async_fallbacks_total{op=...}
 * (re-run synchronously after a data loss),
 * the gauge meta_async_inflight, and the histogram meta_async_ms (one Redis-level operation,
 * issue to callback).
 *
 * Worker thread only, except svc_meta_open (before the worker thread starts).
 */
#ifndef RAGKV_SVC_META_H
#define RAGKV_SVC_META_H

#include <stdbool.h>

#include "exec.h"

struct svc_worker;

/* Give w an asynchronous Redis client on its loop when the configuration asks for one (see
 * above). An error only for bad configuration or no memory. */
rk_status svc_meta_open(struct svc_worker *w);

/* Worker exit (its loop stopped, its connections closed): cancel what is in flight, finish
 * it (a pending put is rolled back), and run the loop until every job is released. */
void svc_meta_close(struct svc_worker *w);

/* Start a LOOKUP or DELETE job on w's loop. False (nothing started, nothing changed) when w has
 * no client or g is not one of those: the caller submits it to the pool. g->worker is set. */
bool svc_meta_start(struct svc_worker *w, svc_gen *g);

/* Start a GENERATE or PREFILL job's chunk resolution on w's loop: one pipelined lookup of the
 * chunks the prompt names by key or (when the mode reuses caches) by content, keeping the
 * records (cc_store_resolve_async); then a pool step reads the readable ones' blobs
 * (cc_store_read) or takes their device-tier copies; then the job goes to the executor
 * (svc_exec_submit), which only decodes. False (nothing started, g->pre NULL) when w has no
 * client, the server is a cluster node, or the prompt has no chunk to look up: the caller
 * submits g to the executor, which resolves the segments itself. g->worker is set. */
bool svc_meta_start_gen(struct svc_worker *w, svc_gen *g);

/* PUT_CHUNK through w's loop: the loop looks the chunk up; the executor prefills and encodes
 * it only when absent (SVC_STEP_PUT_ENCODE); then PUT_KV's steps from the blob write on (the
 * pool writes, the loop commits). False (nothing started) when w does not take puts
 * (svc_meta_takes_put): the caller submits g to the executor, which does it all. */
bool svc_meta_start_put(struct svc_worker *w, svc_gen *g);

/* GET_KV through w's loop: the loop resolves the chunk (cc_store_resolve_async: readable by
 * the tenant, its record), then the pool reads the blob (cc_store_read) and answers
 * (SVC_STEP_GET_READ). False (nothing started) as svc_meta_start_put: the caller submits g to
 * the pool, which does it all. */
bool svc_meta_start_get(struct svc_worker *w, svc_gen *g);

/* Whether w answers PUT_KV's metadata calls on its loop (then the job starts with the pool step
 * SVC_STEP_KV_CHECK). */
bool svc_meta_takes_put(const struct svc_worker *w);

/* A pool step came back (gen_on_notify saw g->stepped): go on with the job. */
void svc_meta_step(svc_gen *g);

#endif
