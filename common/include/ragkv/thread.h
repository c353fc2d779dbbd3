/*
 * ragkv/thread.h — a fixed pool of worker threads for CPU-heavy work (matmuls, codec,
 * storage), with a blocking parallel-for and fire-and-forget tasks.
 *
 *     rk_pool *pool;
 *     if (rk_pool_create(0, &pool) != RK_OK) ...;        // 0: one thread per online CPU
 *     rk_pool_for(pool, rows, 16, matmul_rows, &args);    // blocks until every row is done
 *     rk_pool_free(pool);
 *
 * rk_pool_for may be called from several threads at once and from inside pool tasks: the
 * calling thread works on the range too, so nested calls cannot deadlock.
 */
#ifndef RAGKV_THREAD_H
#define RAGKV_THREAD_H

#include <stddef.h>

#include "ragkv/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct rk_pool rk_pool;

/* Work on [begin, end) of a range. worker is 0..rk_pool_size() (the caller may be any). */
typedef void (*rk_range_fn)(void *ctx, size_t begin, size_t end);
typedef void (*rk_task_fn)(void *arg);

/* Start nthreads workers (<= 0: the number of online CPUs). *out owned by the caller,
 * released with rk_pool_free. */
rk_status rk_pool_create(int nthreads, rk_pool **out);

/* Finish queued tasks, join the workers, free the pool. NULL is a no-op. */
void rk_pool_free(rk_pool *pool);

/* Number of worker threads. */
int rk_pool_size(const rk_pool *pool);

/* Call fn over [0, n) in pieces of at least `grain` items (0: pick one), spread over the
 * workers and the calling thread; returns when all of [0, n) is done. pool may be NULL:
 * then fn(ctx, 0, n) runs on the calling thread. */
void rk_pool_for(rk_pool *pool, size_t n, size_t grain, rk_range_fn fn, void *ctx);

/* Queue fn(arg) to run on a worker. RK_ERR_NOMEM, or RK_ERR_SHUTDOWN while freeing. */
rk_status rk_pool_submit(rk_pool *pool, rk_task_fn fn, void *arg);

/* Number of online CPUs (at least 1). */
int rk_cpu_count(void);

#ifdef __cplusplus
}
#endif
#endif
