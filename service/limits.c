/* limits.c — per-tenant token buckets and job counts. */
#include "limits.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "ragkv/alloc.h"
#include "ragkv/svc_request.h"

/* TTFT histogram bucket upper bounds, ms (the last bucket is open). */
static const double ttft_bounds[] = {1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000};
#define TTFT_N (sizeof(ttft_bounds) / sizeof(ttft_bounds[0]) + 1)

struct tenant_limit {
    char name[SVC_NAME_MAX];
    double tokens;      /* request tokens left in the bucket */
    uint64_t last_ns;   /* when tokens was last refilled */
    int jobs;           /* jobs in the executor */
    uint64_t requests, gens, hits, misses;
    uint64_t ttft[TTFT_N]; /* per-bucket counts */
};

struct svc_limits {
    pthread_mutex_t lock;       /* guards v, n, cap */
    double rate, burst;
    int max_jobs;
    struct tenant_limit *v;     /* (n) */
    size_t n, cap;
};

svc_limits *svc_limits_new(double rate, double burst, int max_jobs)
{
    svc_limits *l = rk_calloc(1, sizeof(*l));
    if (!l)
        return NULL;
    pthread_mutex_init(&l->lock, NULL);
    l->rate = rate;
    l->burst = burst > 0 ? burst : (rate > 0 ? rate : 1);
    l->max_jobs = max_jobs;
    return l;
}

void svc_limits_configure(svc_limits *l, double rate, double burst, int max_jobs)
{
    pthread_mutex_lock(&l->lock);
    l->rate = rate;
    l->burst = burst > 0 ? burst : (rate > 0 ? rate : 1);
    l->max_jobs = max_jobs;
    for (size_t i = 0; i < l->n; i++) { /* new limits start from a full bucket */
        l->v[i].tokens = l->burst;
        l->v[i].last_ns = 0; /* refill clock starts at the next request */
    }
    pthread_mutex_unlock(&l->lock);
}

void svc_limits_free(svc_limits *l)
{
    if (!l)
        return;
    pthread_mutex_destroy(&l->lock);
    rk_free(l->v);
    rk_free(l);
}

/* The entry for tenant, created with a full bucket (caller holds the lock); NULL without
 * memory. now_ns 0: its refill clock starts at its first request. */
static struct tenant_limit *entry(svc_limits *l, const char *tenant, uint64_t now_ns)
{
    for (size_t i = 0; i < l->n; i++)
        if (strcmp(l->v[i].name, tenant) == 0)
            return &l->v[i];
    if (l->n == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 16;
        struct tenant_limit *v = rk_realloc(l->v, cap * sizeof(*v));
        if (!v)
            return NULL;
        l->v = v;
        l->cap = cap;
    }
    struct tenant_limit *e = &l->v[l->n++];
    memset(e, 0, sizeof(*e));
    snprintf(e->name, sizeof(e->name), "%s", tenant);
    e->tokens = l->burst;
    e->last_ns = now_ns;
    return e;
}

bool svc_limits_request(svc_limits *l, const char *tenant, uint64_t now_ns)
{
    pthread_mutex_lock(&l->lock);
    if (l->rate <= 0) {
        struct tenant_limit *e = entry(l, tenant, now_ns);
        if (e)
            e->requests++;
        pthread_mutex_unlock(&l->lock);
        return true;
    }
    struct tenant_limit *e = entry(l, tenant, now_ns);
    bool ok = true;
    if (e) {
        if (e->last_ns == 0)
            e->last_ns = now_ns;
        double add = (double)(now_ns - e->last_ns) / 1e9 * l->rate;
        e->tokens = e->tokens + add > l->burst ? l->burst : e->tokens + add;
        e->last_ns = now_ns;
        ok = e->tokens >= 1.0;
        if (ok)
            e->tokens -= 1.0;
    }
    if (e && ok)
        e->requests++;
    pthread_mutex_unlock(&l->lock);
    return ok;
}

bool svc_limits_job_begin(svc_limits *l, const char *tenant)
{
    pthread_mutex_lock(&l->lock);
    struct tenant_limit *e = entry(l, tenant, 0);
    bool ok = e && (l->max_jobs <= 0 || e->jobs < l->max_jobs);
    if (ok)
        e->jobs++;
    pthread_mutex_unlock(&l->lock);
    return ok;
}

void svc_limits_job_end(svc_limits *l, const char *tenant)
{
    pthread_mutex_lock(&l->lock);
    struct tenant_limit *e = entry(l, tenant, 0);
    if (e && e->jobs > 0)
        e->jobs--;
    pthread_mutex_unlock(&l->lock);
}

int svc_limits_jobs(svc_limits *l, const char *tenant)
{
    pthread_mutex_lock(&l->lock);
    struct tenant_limit *e = entry(l, tenant, 0);
    int n = e ? e->jobs : 0;
    pthread_mutex_unlock(&l->lock);
    return n;
}

void svc_limits_note_gen(svc_limits *l, const char *tenant, uint32_t hits, uint32_t misses, double ttft_ms)
{
    pthread_mutex_lock(&l->lock);
    struct tenant_limit *e = entry(l, tenant, 0);
    if (e) {
        e->gens++;
        e->hits += hits;
        e->misses += misses;
        size_t i = 0;
        while (i < TTFT_N - 1 && ttft_ms > ttft_bounds[i])
            i++;
        e->ttft[i]++;
    }
    pthread_mutex_unlock(&l->lock);
}

/* Upper bound of the bucket holding the q-quantile; the open bucket reports twice the last. */
static double ttft_quantile(const uint64_t *c, uint64_t total, double q)
{
    if (total == 0)
        return 0;
    uint64_t want = (uint64_t)(q * (double)total + 0.999999), run = 0;
    for (size_t i = 0; i < TTFT_N; i++) {
        run += c[i];
        if (run >= want)
            return i < TTFT_N - 1 ? ttft_bounds[i] : 2 * ttft_bounds[TTFT_N - 2];
    }
    return 2 * ttft_bounds[TTFT_N - 2];
}

void svc_limits_stats(svc_limits *l, const char *tenant, svc_tenant_stats *out)
{
    memset(out, 0, sizeof(*out));
    pthread_mutex_lock(&l->lock);
    struct tenant_limit *e = entry(l, tenant, 0);
    if (e) {
        out->requests = e->requests;
        out->generations = e->gens;
        out->hits = e->hits;
        out->misses = e->misses;
        out->ttft_p50_ms = ttft_quantile(e->ttft, e->gens, 0.5);
        out->ttft_p99_ms = ttft_quantile(e->ttft, e->gens, 0.99);
    }
    pthread_mutex_unlock(&l->lock);
}
