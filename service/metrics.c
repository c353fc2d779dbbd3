/* metrics.c — process-wide Prometheus registry (counters and gauges as atomics). */
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

char *svc_metrics_render(size_t *len)
{
    rk_buf b = RK_BUF_INIT;
    char line[512];
    const char *prev = "";
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
