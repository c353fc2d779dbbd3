/* metrics.c — process-wide Prometheus registry (counters and gauges as atomics). */
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "ragkv/alloc.h"
#include "ragkv/bytes.h"
#include "ragkv/service.h"

struct svc_metric {
    svc_metric_type type;
    char name[96];      /* without the "ragkv_" prefix */
    char labels[160];   /* Prometheus label set without braces, "" for none */
    char help[160];
    atomic_llong value;
    struct svc_metric *next; /* registration order; series of one name stay adjacent */
};

/* Protects the list links only; values are atomics read without it. */
static pthread_mutex_t reg_lock = PTHREAD_MUTEX_INITIALIZER;
static svc_metric *reg_head;

svc_metric *svc_metric_get(svc_metric_type type, const char *name, const char *labels,
                           const char *help)
{
    if (!labels)
        labels = "";
    pthread_mutex_lock(&reg_lock);
    svc_metric *last_same = NULL, **tail = &reg_head;
    for (svc_metric *m = reg_head; m; m = m->next) {
        if (strcmp(m->name, name) == 0) {
            if (strcmp(m->labels, labels) == 0) {
                pthread_mutex_unlock(&reg_lock);
                return m;
            }
            last_same = m;
        }
        tail = &m->next;
    }
    svc_metric *m = rk_calloc(1, sizeof(*m));
    if (m) {
        m->type = type;
        snprintf(m->name, sizeof(m->name), "%s", name);
        snprintf(m->labels, sizeof(m->labels), "%s", labels);
        snprintf(m->help, sizeof(m->help), "%s", help ? help : "");
        if (last_same) { /* keep one name's series together for the text format */
            m->next = last_same->next;
            last_same->next = m;
        } else {
            *tail = m;
        }
    }
    pthread_mutex_unlock(&reg_lock);
    return m;
}

void svc_metric_add(svc_metric *m, int64_t delta)
{
    if (m)
        atomic_fetch_add(&m->value, delta);
}

void svc_metric_set(svc_metric *m, int64_t value)
{
    if (m)
        atomic_store(&m->value, value);
}

int64_t svc_metric_value(const svc_metric *m)
{
    return m ? atomic_load(&((svc_metric *)m)->value) : 0;
}

/* Bucket upper bounds in ms; the last bucket is +Inf. */
static const double hist_bounds[] = {0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000};
#define HIST_N (sizeof(hist_bounds) / sizeof(hist_bounds[0]) + 1)

struct svc_histogram {
    char name[96];
    char help[160];
    atomic_llong counts[HIST_N]; /* per bucket (not cumulative) */
    atomic_llong sum_us;         /* sum of observations, microseconds */
    struct svc_histogram *next;
};

static svc_histogram *hist_head; /* guarded by reg_lock */
static void (*collector)(void *);
static void *collector_ctx;

svc_histogram *svc_histogram_get(const char *name, const char *help)
{
    pthread_mutex_lock(&reg_lock);
    svc_histogram *h = hist_head;
    while (h && strcmp(h->name, name) != 0)
        h = h->next;
    if (!h && (h = rk_calloc(1, sizeof(*h)))) {
        snprintf(h->name, sizeof(h->name), "%s", name);
        snprintf(h->help, sizeof(h->help), "%s", help ? help : "");
        h->next = hist_head;
        hist_head = h;
    }
    pthread_mutex_unlock(&reg_lock);
    return h;
}

void svc_histogram_observe(svc_histogram *h, double ms)
{
    if (!h || !(ms >= 0))
        return;
    size_t i = 0;
    while (i < HIST_N - 1 && ms > hist_bounds[i])
        i++;
    atomic_fetch_add(&h->counts[i], 1);
    atomic_fetch_add(&h->sum_us, (long long)(ms * 1000.0));
}

double svc_histogram_quantile(const svc_histogram *h, double q)
{
    long long total = 0, c[HIST_N];
    for (size_t i = 0; i < HIST_N; i++)
        total += c[i] = atomic_load(&((svc_histogram *)h)->counts[i]);
    if (total == 0)
        return 0;
    long long want = (long long)(q * (double)total + 0.999999), run = 0;
    for (size_t i = 0; i < HIST_N; i++) {
        run += c[i];
        if (run >= want)
            return i < HIST_N - 1 ? hist_bounds[i] : INFINITY;
    }
    return INFINITY;
}

void svc_metrics_set_collector(void (*fn)(void *ctx), void *ctx)
{
    pthread_mutex_lock(&reg_lock);
    collector = fn;
    collector_ctx = ctx;
    pthread_mutex_unlock(&reg_lock);
}

static void render_histograms(rk_buf *b)
{
    char line[512];
    for (svc_histogram *h = hist_head; h; h = h->next) {
        int n = snprintf(line, sizeof(line), "# HELP ragkv_%s %s\n# TYPE ragkv_%s histogram\n", h->name, h->help, h->name);
        rk_buf_append(b, line, (size_t)n);
        long long run = 0;
        for (size_t i = 0; i < HIST_N; i++) {
            run += atomic_load(&h->counts[i]);
            if (i < HIST_N - 1)
                n = snprintf(line, sizeof(line), "ragkv_%s_bucket{le=\"%g\"} %lld\n", h->name, hist_bounds[i], run);
            else
                n = snprintf(line, sizeof(line), "ragkv_%s_bucket{le=\"+Inf\"} %lld\n", h->name, run);
            rk_buf_append(b, line, (size_t)n);
        }
        n = snprintf(line, sizeof(line), "ragkv_%s_sum %.3f\nragkv_%s_count %lld\n", h->name,
                     (double)atomic_load(&h->sum_us) / 1000.0, h->name, run);
        rk_buf_append(b, line, (size_t)n);
    }
}

char *svc_metrics_render(size_t *len)
{
    rk_buf b = RK_BUF_INIT;
    char line[512];
    const char *prev = "";
    pthread_mutex_lock(&reg_lock);
    void (*fn)(void *) = collector;
    void *fctx = collector_ctx;
    pthread_mutex_unlock(&reg_lock);
    if (fn) /* outside the lock: it registers and sets series */
        fn(fctx);
    pthread_mutex_lock(&reg_lock);
    for (svc_metric *m = reg_head; m; m = m->next) {
        int n;
        if (strcmp(prev, m->name) != 0) {
            n = snprintf(line, sizeof(line), "# HELP ragkv_%s %s\n# TYPE ragkv_%s %s\n", m->name,
                         m->help, m->name, m->type == SVC_COUNTER ? "counter" : "gauge");
            rk_buf_append(&b, line, (size_t)n);
            prev = m->name;
        }
        if (m->labels[0])
            n = snprintf(line, sizeof(line), "ragkv_%s{%s} %lld\n", m->name, m->labels,
                         (long long)atomic_load(&m->value));
        else
            n = snprintf(line, sizeof(line), "ragkv_%s %lld\n", m->name,
                         (long long)atomic_load(&m->value));
        rk_buf_append(&b, line, (size_t)n);
    }
    render_histograms(&b);
    pthread_mutex_unlock(&reg_lock);
    rk_buf_put_u8(&b, 0);
    if (b.failed) {
        rk_buf_free(&b);
        return NULL;
    }
    size_t n;
    char *s = (char *)rk_buf_steal(&b, &n);
    if (len)
        *len = n - 1;
    return s;
}
