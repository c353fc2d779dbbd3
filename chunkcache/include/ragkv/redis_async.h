/*
 * ragkv/redis_async.h — non-blocking chunk metadata operations over Redis for event-loop
 * threads.
 *
 * The daemon's worker threads each run a libevent loop and must not block on Redis. This is
 * the Redis metadata backend (same keys, same Lua scripts, same record encoding, the same
 * commands built and the same replies parsed by the same code as cc_metastore_redis_open's)
 * on hiredis' async API with its libevent adapter: record lookups (one pipelined HMGET per
 * key), grant checks, the quota-checked insert and the remove. Each call completes through one
 * callback on the loop thread. Usage accounting, quotas and evictions happen inside the same
 * atomic scripts as with the synchronous backend, so synchronous and asynchronous writers of
 * one tenant can never push it over its quota together.
 *
 * Failure handling mirrors the synchronous backend: an operation whose connection is lost, or
 * that gets no answer within command_timeout_ms (hiredis 0.14 has no async timeout: a timer
 * per attempt drops the connection), is tried again after a backoff (backoff_ms doubling to
 * 1 s) up to `retries` times, then completes with RK_ERR_UNAVAILABLE or RK_ERR_TIMEOUT. A
 * script missing from Redis' cache (NOSCRIPT) is sent again with EVAL. Array replies larger
 * than max_reply_elements are refused (RK_ERR_META); the reader's idle buffer is capped at
 * reader_maxbuf. Every new connection first checks ragkv's marker key: once a connection has
 * seen it, a later one that does not (Redis restarted without its data, or flushed) fails the
 * operations waiting on it with RK_ERR_UNAVAILABLE without sending them, so nothing is ever
 * answered from, or written into, the empty Redis; the synchronous store notices the same
 * loss, rebuilds, and sets the marker again.
 *
 *     static void done(void *arg, rk_status st, const cc_evlist *evicted)
 *     {   // on the loop thread; evicted valid only during the call
 *         if (st == RK_OK) delete_blobs(evicted);
 *     }
 *     cc_redis_async *ra;
 *     cc_redis_async_open(base, "127.0.0.1", 6379, "rk:", NULL, &ra);
 *     cc_redis_async_insert(ra, &rec, 0, done, ctx);     // RK_ERR_QUOTA, RK_ERR_EXISTS in done
 *     ... event_base_dispatch(base) ...
 *     cc_redis_async_close(ra);
 *
 * Redis Sentinel: with opts->sentinels set ("host:port,...", and opts->sentinel_master, default
 * "ragkv"), the host and port given to open are ignored and every (re)connect first asks the
 * Sentinels for the primary's address, as the synchronous backend does (ragkv/redis_sentinel.h),
 * but without blocking the loop: each Sentinel in turn, on its own async connection on the
 * loop, gets connect_timeout_ms to answer SENTINEL get-master-addr-by-name (a dead or silent
 * one costs that once: the Sentinel that answered last is asked first next time). The
 * connection to the address named must then answer ROLE with master before anything else is
 * read or sent; a replica (a stale answer during a failover) is dropped like a failed connect:
 * the operations waiting retry after their backoff and the next attempt resolves again. A
 * connection lost later (the primary died, or Sentinel demoted it and closed its clients) and
 * a write refused with READONLY are retried the same way, through a new resolution. When no
 * Sentinel names a primary the operation fails with RK_ERR_UNAVAILABLE (or RK_ERR_TIMEOUT when
 * its own deadline came first) after its retries, like an unreachable Redis. hiredis resolves
 * host names with a blocking getaddrinfo: Sentinels answer with addresses; list them by
 * address too.
 *
 *     cc_redis_opts o = cc_redis_opts_default();
 *     o.sentinels = "10.0.0.1:26379,10.0.0.2:26379";      // copied at open
 *     o.sentinel_master = "ragkv";
 *     cc_redis_async_open(base, NULL, 0, "rk:", &o, &ra);
 *
 * WAIT-for-replicas: WAIT is sent after each successful insert when opts->wait_replicas is set.
 * Not thread-safe: one cc_redis_async per event loop, used only on that loop's thread.
 */
#ifndef RAGKV_REDIS_ASYNC_H
#define RAGKV_REDIS_ASYNC_H

#include <stdbool.h>
#include <stddef.h>

#include "ragkv/metastore.h"
#include "ragkv/record.h"
#include "ragkv/status.h"

#ifdef __cplusplus
extern "C" {
#endif

struct event_base;
typedef struct cc_redis_async cc_redis_async;

/* Every callback below runs exactly once, on the loop thread, never from inside the call that
 * started the operation; an error returned by that call means its callback will not run
 * (RK_ERR_INVALID, RK_ERR_NOMEM, RK_ERR_CANCELLED after close began). When st is not RK_OK,
 * rk_error_msg() says why during the callback. Pointer arguments are borrowed for the
 * duration of the callback (copy what you keep). */

/* Completion of a lookup batch. st: RK_OK (then sts[i] is RK_OK with recs[i] filled,
 * RK_ERR_NOT_FOUND, or RK_ERR_CORRUPT for a record that exists but does not decode — callers
 * treat it as absent and may count it), RK_ERR_UNAVAILABLE, RK_ERR_TIMEOUT, RK_ERR_META or
 * RK_ERR_CANCELLED. */
typedef void (*cc_lookup_cb)(void *arg, rk_status st, const cc_record *recs, const rk_status *sts, size_t n);

/* Completion of a batch of grant checks: st as above; then ok[i] says whether the tenant may
 * read ns[i] when sts[i] is RK_OK (RK_ERR_META when Redis refused that check). */
typedef void (*cc_readable_cb)(void *arg, rk_status st, const bool *ok, const rk_status *sts, size_t n);

/* Completion of an insert: st is RK_OK (evicted lists the chunks removed to make room: the
 * caller deletes their blobs), RK_ERR_EXISTS, RK_ERR_QUOTA, RK_ERR_NOT_FOUND (no such tenant),
 * RK_ERR_META (e.g. Redis out of memory), RK_ERR_UNAVAILABLE, RK_ERR_TIMEOUT or
 * RK_ERR_CANCELLED — the same codes as cc_metastore_insert. evicted is never NULL. */
typedef void (*cc_insert_cb)(void *arg, rk_status st, const cc_evlist *evicted);

/* Completion of a remove: st is RK_OK (removed holds the record, or an empty initialised one
 * when Redis did not return it), RK_ERR_NOT_FOUND, or a failure as above. */
typedef void (*cc_remove_cb)(void *arg, rk_status st, const cc_record *removed);

/* Bind to base (borrowed; must outlive the handle) and start connecting (a failure here is
 * retried by the first operation). Keys use prefix like cc_metastore_redis_open; opts NULL:
 * defaults (opts and its strings are copied). With opts->sentinels the primary is found
 * through the Sentinels at every connect (see above) and host/port are ignored (may be NULL,
 * 0); RK_ERR_INVALID for a malformed Sentinel list. *out owned by the caller
 * (cc_redis_async_close). */
rk_status cc_redis_async_open(struct event_base *base, const char *host, int port, const char *prefix,
                              const cc_redis_opts *opts, cc_redis_async **out);

/* Look up n records (n >= 1, at most max_reply_elements). keys are copied. */
rk_status cc_redis_async_get(cc_redis_async *a, const cc_key *keys, size_t n, cc_lookup_cb cb, void *arg);

/* May tenant read namespace ns[i], for each i (n >= 1)? Like cc_metastore_readable: true
 * without a round trip when ns[i] is the tenant, else the grant set is asked (one pipelined
 * SISMEMBER each). The strings are copied. */
rk_status cc_redis_async_readable(cc_redis_async *a, const char *tenant, const char *const *ns, size_t n,
                                  cc_readable_cb cb, void *arg);

/* cc_metastore_insert's contract (ragkv/metastore.h), through the same INSERT script: admit
 * rec atomically with the quota check, evicting the namespace's lowest-value unpinned chunks
 * under the evict policy. rec is encoded during the call (not kept). */
rk_status cc_redis_async_insert(cc_redis_async *a, const cc_record *rec, unsigned flags, cc_insert_cb cb, void *arg);

/* cc_metastore_remove's contract: remove one chunk, correcting usage; with expect_csum
 * non-zero only the record with that checksum. */
rk_status cc_redis_async_remove(cc_redis_async *a, const cc_key *key, uint64_t expect_csum, cc_remove_cb cb,
                                void *arg);

/* Operations started and not yet completed. */
size_t cc_redis_async_pending(const cc_redis_async *a);

/* How many times a new connection found ragkv's metadata gone (see the overview). A caller
 * that reads it when it starts an operation and again when that operation failed with
 * RK_ERR_UNAVAILABLE knows whether the failure was (or may have been) a Redis without its data
 * — for which the synchronous store rebuilds — rather than a Redis that is down. */
uint64_t cc_redis_async_losses(const cc_redis_async *a);

/* Drop the connection; operations not yet completed complete with RK_ERR_CANCELLED (those
 * whose answer was already in complete with it), from within this call; their callbacks may
 * not start new operations (those calls return RK_ERR_CANCELLED). NULL is a no-op. */
void cc_redis_async_close(cc_redis_async *a);

#ifdef __cplusplus
}
#endif
#endif
