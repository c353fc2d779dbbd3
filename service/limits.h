/*
 * limits.h — private to service/: per-tenant admission limits, shared by all workers.
 *
 *  - request rate: a token bucket per tenant (rate per second, burst), checked on every
 *    authenticated request; an empty bucket answers RK_ERR_BUSY;
 *  - concurrent jobs: generations, prefills and chunk prefills a tenant may have in the
 *    executor at once; one more answers RK_ERR_BUSY.
 * The same table keeps each tenant's serving statistics (requests, generations, chunk hits
 * and misses, a time-to-first-token histogram) for STATS and TENANT_STATS.
 * One mutex guards the table (tenants are few; entries are found by linear search).
 */
#ifndef RAGKV_SVC_LIMITS_H
#define RAGKV_SVC_LIMITS_H

#include <stdbool.h>
#include <stdint.h>

#include "ragkv/status.h"

typedef struct svc_limits svc_limits;

/* rate <= 0: no rate limit; max_jobs <= 0: no concurrency limit. */
svc_limits *svc_limits_new(double rate, double burst, int max_jobs);
void svc_limits_free(svc_limits *l);

/* Change the limits (SIGHUP): every bucket starts full under the new rate; job counts carry
 * over. */
void svc_limits_configure(svc_limits *l, double rate, double burst, int max_jobs);

/* Take one request token for tenant at monotonic time now_ns; false when none is left. */
bool svc_limits_request(svc_limits *l, const char *tenant, uint64_t now_ns);

/* Start a job for tenant: false at the concurrency limit. Every true is paired with one
 * svc_limits_job_end. */
bool svc_limits_job_begin(svc_limits *l, const char *tenant);
void svc_limits_job_end(svc_limits *l, const char *tenant);

/* Jobs tenant has now (for tests and metrics). */
int svc_limits_jobs(svc_limits *l, const char *tenant);

/* A finished generation or prefill of tenant: its chunk hits and misses and its TTFT. */
void svc_limits_note_gen(svc_limits *l, const char *tenant, uint32_t hits, uint32_t misses, double ttft_ms);

typedef struct svc_tenant_stats {
    uint64_t requests;       /* authenticated requests admitted */
    uint64_t generations;    /* generations and prefills finished */
    uint64_t hits, misses;   /* prompt segments served from / missing in the cache */
    double ttft_p50_ms;      /* time to first token, from a histogram (bucket upper bounds) */
    double ttft_p99_ms;
} svc_tenant_stats;

/* The tenant's statistics since start (zeros for a tenant not seen). */
void svc_limits_stats(svc_limits *l, const char *tenant, svc_tenant_stats *out);

#endif
