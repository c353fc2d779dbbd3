/*
 * ragkv/redis_async.h — non-blocking chunk record lookups over Redis for event-loop threads.
 *
 * The daemon's worker threads each run a libevent loop and must not block on Redis. This
 * is the read side of the Redis metadata backend (same keys, same record encoding) on
 * hiredis' async API with its libevent adapter: a batch of keys goes out pipelined and one
 * callback, on the loop thread, receives every answer. Writes (admission, eviction, quota
 * changes) stay on the synchronous cc_metastore, which a worker hands to its pool.
 *
 * Failure handling: a lost connection fails the batches in flight with RK_ERR_UNAVAILABLE
 * and the next call reconnects (not sooner than backoff_ms after a failed attempt); a batch
 * not answered within command_timeout_ms completes with RK_ERR_TIMEOUT and the connection is
 * dropped (its late replies are discarded). Array replies larger than max_reply_elements are
 * refused. A Redis that lost its data simply answers "missing": the synchronous store notices
 * the loss and rebuilds.
 *
 *     static void done(void *arg, rk_status st, const cc_record *recs, const rk_status *sts, size_t n)
 *     {   // on the loop thread; recs/sts valid only during the call
 *         for (size_t i = 0; st == RK_OK && i < n; i++)
 *             if (sts[i] == RK_OK) use(&recs[i]);
 *     }
 *     cc_redis_async *ra;
 *     cc_redis_async_open(base, "127.0.0.1", 6379, "rk:", NULL, &ra);
 *     cc_redis_async_get(ra, keys, n, done, ctx);
 *     ... event_base_dispatch(base) ...
 *     cc_redis_async_close(ra);
 *
 * Not thread-safe: one cc_redis_async per event loop, used only on that loop's thread.
 */
#ifndef RAGKV_REDIS_ASYNC_H
#define RAGKV_REDIS_ASYNC_H

#include <stddef.h>

#include "ragkv/metastore.h"
#include "ragkv/record.h"
#include "ragkv/status.h"

#ifdef __cplusplus
extern "C" {
#endif

struct event_base;
typedef struct cc_redis_async cc_redis_async;

/* Completion of a lookup batch. st: RK_OK (then sts[i] is RK_OK with recs[i] filled, or
 * RK_ERR_NOT_FOUND), RK_ERR_UNAVAILABLE, RK_ERR_TIMEOUT or RK_ERR_META. recs and sts are
 * borrowed for the duration of the call (copy what you keep, e.g. with cc_record_copy). */
typedef void (*cc_lookup_cb)(void *arg, rk_status st, const cc_record *recs, const rk_status *sts, size_t n);

/* Bind to base (borrowed; must outlive the handle) and start connecting. Keys use prefix
 * like cc_metastore_redis_open. *out owned by the caller (cc_redis_async_close). */
rk_status cc_redis_async_open(struct event_base *base, const char *host, int port, const char *prefix,
                              const cc_redis_opts *opts, cc_redis_async **out);

/* Look up n records (n >= 1, at most max_reply_elements). keys are copied. cb runs exactly
 * once, on the loop thread, never from inside this call; an error returned here means cb
 * will not run (RK_ERR_INVALID, RK_ERR_NOMEM, RK_ERR_UNAVAILABLE during backoff). */
rk_status cc_redis_async_get(cc_redis_async *a, const cc_key *keys, size_t n, cc_lookup_cb cb, void *arg);

/* Drop the connection; batches in flight complete with RK_ERR_CANCELLED (from within this
 * call). NULL is a no-op. */
void cc_redis_async_close(cc_redis_async *a);

#ifdef __cplusplus
}
#endif
#endif
