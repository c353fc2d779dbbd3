/* thread.c — worker pool: a mutex-protected FIFO of tasks and N threads draining it. */
#include "ragkv/thread.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <unistd.h>

#include "ragkv/alloc.h"

struct pool_task {
    rk_task_fn fn;
    void *arg;
    struct pool_task *next;
};

struct rk_pool {
    pthread_mutex_t lock;      /* protects head, tail, stopping */
    pthread_cond_t wake;       /* signalled when a task is queued or on stop */
    struct pool_task *head;    /* FIFO of queued tasks */
    struct pool_task *tail;
    bool stopping;             /* set by rk_pool_free; workers exit once the queue is empty */
    int nthreads;
    pthread_t *threads;        /* (nthreads) */
};

/* A parallel-for in flight. Refcounted because helper tasks may start after the caller
 * has already seen every piece done and returned. */
struct pool_job {
    rk_range_fn fn;
    void *ctx;
    size_t n, grain, npieces;
    atomic_size_t next;        /* next piece to claim */
    atomic_size_t done;        /* pieces finished */
    atomic_int refs;           /* caller + queued helper tasks */
    pthread_mutex_t lock;      /* with cond: the caller sleeps until done == npieces */
    pthread_cond_t cond;
};

int rk_cpu_count(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

static void *pool_worker(void *arg)
{
    rk_pool *p = arg;
    for (;;) {
        pthread_mutex_lock(&p->lock);
        while (!p->head && !p->stopping)
            pthread_cond_wait(&p->wake, &p->lock);
        struct pool_task *t = p->head;
        if (!t) { /* stopping and drained */
            pthread_mutex_unlock(&p->lock);
            return NULL;
        }
        p->head = t->next;
        if (!p->head)
            p->tail = NULL;
        pthread_mutex_unlock(&p->lock);
        t->fn(t->arg);
        rk_free(t);
    }
}

rk_status rk_pool_create(int nthreads, rk_pool **out)
{
    rk_pool *p = rk_calloc(1, sizeof(*p));
    if (!p)
        return RK_ERR_NOMEM;
    if (nthreads <= 0)
        nthreads = rk_cpu_count();
    pthread_mutex_init(&p->lock, NULL);
    pthread_cond_init(&p->wake, NULL);
    p->threads = rk_calloc((size_t)nthreads, sizeof(pthread_t));
    if (!p->threads)
        goto fail;
    for (int i = 0; i < nthreads; i++) {
        if (pthread_create(&p->threads[i], NULL, pool_worker, p) != 0) {
            rk_error_set(RK_ERR_INTERNAL, "pthread_create failed for worker %d", i);
            goto fail;
        }
        p->nthreads++;
    }
    *out = p;
    return RK_OK;
fail:
    rk_pool_free(p);
    return RK_ERR_NOMEM;
}

void rk_pool_free(rk_pool *p)
{
    if (!p)
        return;
    pthread_mutex_lock(&p->lock);
    p->stopping = true;
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->lock);
    for (int i = 0; i < p->nthreads; i++)
        pthread_join(p->threads[i], NULL);
    pthread_mutex_destroy(&p->lock);
    pthread_cond_destroy(&p->wake);
    rk_free(p->threads);
    rk_free(p);
}

int rk_pool_size(const rk_pool *p)
{
    return p ? p->nthreads : 0;
}

rk_status rk_pool_submit(rk_pool *p, rk_task_fn fn, void *arg)
{
    struct pool_task *t = rk_malloc(sizeof(*t));
    if (!t)
        return RK_ERR_NOMEM;
    t->fn = fn;
    t->arg = arg;
    t->next = NULL;
    pthread_mutex_lock(&p->lock);
    if (p->stopping) {
        pthread_mutex_unlock(&p->lock);
        rk_free(t);
        return RK_ERR_SHUTDOWN;
    }
    if (p->tail)
        p->tail->next = t;
    else
        p->head = t;
    p->tail = t;
    pthread_cond_signal(&p->wake);
    pthread_mutex_unlock(&p->lock);
    return RK_OK;
}

static void job_release(struct pool_job *j)
{
    if (atomic_fetch_sub(&j->refs, 1) == 1) {
        pthread_mutex_destroy(&j->lock);
        pthread_cond_destroy(&j->cond);
        rk_free(j);
    }
}

/* Claim and run pieces until none is left. */
static void job_work(struct pool_job *j)
{
    for (;;) {
        size_t k = atomic_fetch_add(&j->next, 1);
        if (k >= j->npieces)
            break;
        size_t b = k * j->grain;
        size_t e = b + j->grain < j->n ? b + j->grain : j->n;
        j->fn(j->ctx, b, e);
        if (atomic_fetch_add(&j->done, 1) + 1 == j->npieces) {
            pthread_mutex_lock(&j->lock);
            pthread_cond_broadcast(&j->cond);
            pthread_mutex_unlock(&j->lock);
        }
    }
}

static void job_helper(void *arg)
{
    struct pool_job *j = arg;
    job_work(j);
    job_release(j);
}

void rk_pool_for(rk_pool *p, size_t n, size_t grain, rk_range_fn fn, void *ctx)
{
    if (n == 0)
        return;
    int nt = rk_pool_size(p);
    if (grain == 0) /* about 4 pieces per thread balances uneven rows */
        grain = (n + (size_t)(nt + 1) * 4 - 1) / ((size_t)(nt + 1) * 4);
    if (grain == 0)
        grain = 1;
    size_t npieces = (n + grain - 1) / grain;
    struct pool_job *j = (nt > 0 && npieces > 1) ? rk_calloc(1, sizeof(*j)) : NULL;
    if (!j) { /* no pool, one piece, or no memory: run inline */
        fn(ctx, 0, n);
        return;
    }
    j->fn = fn;
    j->ctx = ctx;
    j->n = n;
    j->grain = grain;
    j->npieces = npieces;
    pthread_mutex_init(&j->lock, NULL);
    pthread_cond_init(&j->cond, NULL);
    size_t helpers = npieces - 1 < (size_t)nt ? npieces - 1 : (size_t)nt;
    atomic_store(&j->refs, 1);
    for (size_t i = 0; i < helpers; i++) {
        atomic_fetch_add(&j->refs, 1);
        if (rk_pool_submit(p, job_helper, j) != RK_OK)
            atomic_fetch_sub(&j->refs, 1); /* the caller does that share itself */
    }
    job_work(j);
    pthread_mutex_lock(&j->lock);
    while (atomic_load(&j->done) < j->npieces)
        pthread_cond_wait(&j->cond, &j->lock);
    pthread_mutex_unlock(&j->lock);
    job_release(j);
}
