/*
 * ragkv/service.h — the ragkvd daemon as a library: configuration, the server object, and
 * its metrics registry. bin/ragkvd.c is a thin main() over this header, and tests embed a
 * server in-process the same way.
 *
 *     svc_config cfg;
 *     svc_config_defaults(&cfg);
 *     if (svc_config_parse_args(&cfg, argc, argv, err, sizeof err) != RK_OK) ...;
 *     svc_server *srv;
 *     if (svc_server_open(&cfg, &srv) != RK_OK) ...;   // binds, locks the data dir
 *     svc_server_run(srv);                              // until SIGTERM/SIGINT or stop
 *     svc_server_close(srv);
 *
 * Threads: svc_server_run runs the listener and the HTTP endpoint on the calling thread and
 * starts cfg.workers worker threads, each with its own libevent event_base; accepted
 * connections are handed to workers round-robin and stay on that worker for their life.
 */
#ifndef RAGKV_SERVICE_H
#define RAGKV_SERVICE_H

#include <stddef.h>
#include <stdint.h>

#include "ragkv/status.h"

#ifdef __cplusplus
extern "C" {
#endif

#define SVC_DEFAULT_PORT 7470
#define SVC_DEFAULT_HTTP_PORT 7471
#define SVC_PATH_MAX 1024

/* Every option is both a config-file key and a flag of the same name (`port = 7470` in the
 * file, `--port 7470` on the command line); flags override the file. */
typedef struct svc_config {
    char bind[64];               /* address for both listeners; default 127.0.0.1 */
    int port;                    /* protocol port; 0 picks a free one; default 7470 */
    int http_port;               /* health/metrics port; 0 picks a free one; -1 disables */
    char data_dir[SVC_PATH_MAX]; /* RocksDB and state; created if missing; default ./var */
    char model[SVC_PATH_MAX];    /* model checkpoint (llama2.c .bin or HF folder); "" none */
    char tokenizer[SVC_PATH_MAX];/* tokenizer file for llama2.c models; "" none */
    char redis[128];             /* metadata in Redis at host:port; "" = embedded in RocksDB */
    char redis_prefix[64];       /* key prefix in Redis; default "rk:" (one per ragkv cluster) */
    char redis_sentinels[256];   /* "host:port,..." of Redis Sentinels: find the primary there
                                    (then `redis` may be empty); "" = none */
    char redis_master[64];       /* the master name the Sentinels monitor; default "ragkv" */
    int redis_wait_replicas;     /* WAIT for this many replicas after each chunk insert; 0 = none */
    int redis_async;             /* 1 (default): every request's chunk metadata calls on the
                                    workers' event loops (`redis` or `redis-sentinels`); 0: pool */
    /* cluster (docs/deployment.md): on when cluster_secret_file is set; needs Redis */
    char cluster_secret_file[SVC_PATH_MAX]; /* shared secret peers authenticate with; "" = single node */
    char node_id[64];            /* this node's name in the cluster; "" = the advertised address */
    char advertise[128];         /* HOST:PORT peers and clients reach this node at; "" = bind:port */
    int cluster_replicas;        /* owners per chunk (replication factor); default 1 */
    int cluster_heartbeat_ms;    /* membership refresh period; default 1000 */
    int cluster_node_ttl_ms;     /* a node silent this long is dead; default 3000 */
    int peer_timeout_ms;         /* connect/call deadline towards a peer; default 1000 */
    int ram_budget_mb;           /* RAM tier of compressed chunks, MiB; default 256 */
    int disk_budget_mb;          /* disk tier over all tenants, MiB; 0 = unlimited */
    int device_budget_mb;        /* device tier: decoded chunks kept on the model's backend
                                    as KV blocks, MiB; 0 = off (the default) */
    int workers;                 /* connection worker threads; 0 = number of CPUs */
    char backend[16];            /* compute backend: cpu (cuda once built) */
    int compute_threads;         /* CPU backend threads, and the codec pool's; 0 = number of CPUs */
    int device;                  /* GPU ordinal of the cuda backend; default 0 */
    int max_batch;               /* generations decoded together; default 32 */
    int max_connections;         /* accepted at once; extra connections are refused */
    int max_frame_mb;            /* largest frame payload after AUTH, MiB; default 64 */
    int idle_timeout_s;          /* close a connection silent this long; default 300 */
    int frame_timeout_s;         /* a started frame must complete within this; default 10 */
    int admin_remote;            /* 1: accept the admin credential from non-loopback peers */
    int tenant_rate;             /* requests per second per tenant; 0 = unlimited */
    int tenant_burst;            /* request burst per tenant; 0 = the rate */
    int tenant_max_jobs;         /* generations/prefills a tenant may have running; 0 = unlimited */
    char log_level[16];          /* debug|info|warn|error */
    char layer_loading[16];      /* auto|on|off: compressed chunks decoded a layer ahead of the
                                    layer computed (auto: on GPU backends) */
    char ram_page_locked[16];    /* auto|on|off: the RAM tier's chunks in page-locked memory,
                                    uploaded to the GPU by DMA (default auto: with a cuda
                                    backend) */
    char blend_select[16];       /* attention|deviation|lookahead: CacheBlend's ranking of reused
                                    tokens at the check layer (bl_params.select; default
                                    attention) */
    char chunk_codec[16];        /* codec of the chunks the daemon encodes (PUT_CHUNK, prompt
                                    misses, Cache-Craft variants, PREFILL_KV): raw, lz4, q8 or
                                    cachegen (default) */
    int craft_capture;           /* 1 (default): Cache-Craft variants captured after cachecraft
                                    prompts, when the executor is idle (or craft_capture_max_wait_ms); 0: none captured (those
                                    stored are still used) */
    int craft_capture_max_tokens; /* longest prompt prefix (BOS + chunks) one capture prefills;
                                    chunks ending past it get no variant; default 4096 */
    int craft_capture_min_uses;  /* a chunk's variant after another is captured once that pair has
                                    come in this many cachecraft prompts (1: the first); default 2 */
    int craft_capture_max_wait_ms; /* a capture waiting this long goes on a layer at a time
                                    between decode steps even while the executor is busy, at
                                    most one forced per this interval; 0: only when idle;
                                    default 2000 */
    char config_file[SVC_PATH_MAX]; /* the file the options came from, "" when none */
} svc_config;

void svc_config_defaults(svc_config *cfg);

/* Apply `key = value` lines from path ('#' starts a comment). Unknown keys and bad values
 * are errors naming file and line, written to err (errlen bytes). */
rk_status svc_config_load_file(svc_config *cfg, const char *path, char *err, size_t errlen);

/* Parse argv: `--config FILE` is read first, then every other flag overrides it. `--help`
 * and `--version` return RK_ERR_CANCELLED after printing to stdout (the caller exits 0). */
rk_status svc_config_parse_args(svc_config *cfg, int argc, char **argv, char *err, size_t errlen);

/* Print the option table (name, default, help) to stdout: the --help text. */
void svc_config_print_help(const char *prog);

/* ---- metrics ------------------------------------------------------------------------- */

/* A process-wide registry of Prometheus series; every name is prefixed "ragkv_". Counters
 * and gauges are lock-free atomics; registering is done once at start-up. */
typedef struct svc_metric svc_metric;

typedef enum svc_metric_type { SVC_COUNTER, SVC_GAUGE } svc_metric_type;

/* Register (or find) a series. name without the prefix ("connections_total"); labels is ""
 * or a Prometheus label set without braces ('path="/healthz"'). The registry owns it. */
svc_metric *svc_metric_get(svc_metric_type type, const char *name, const char *labels,
                           const char *help);
void svc_metric_add(svc_metric *m, int64_t delta);
void svc_metric_set(svc_metric *m, int64_t value);
int64_t svc_metric_value(const svc_metric *m);

/* A histogram of durations in milliseconds over fixed buckets (0.5 ms .. 10 s, then +Inf),
 * lock-free like the counters. name without the prefix ("ttft_ms"). */
typedef struct svc_histogram svc_histogram;
svc_histogram *svc_histogram_get(const char *name, const char *help);
void svc_histogram_observe(svc_histogram *h, double ms);
/* The q-quantile (0..1) estimated from the buckets (upper bound of the bucket it falls in). */
double svc_histogram_quantile(const svc_histogram *h, double q);

/* A hook that sets gauges just before /metrics is rendered (e.g. sizes read from the store).
 * One hook per process; NULL removes it. */
void svc_metrics_set_collector(void (*fn)(void *ctx), void *ctx);

/* Render every series in the Prometheus text format (0.0.4). Caller frees with rk_free. */
char *svc_metrics_render(size_t *len);

/* ---- server -------------------------------------------------------------------------- */

typedef struct svc_server svc_server;

/* Lock the data dir, bind the listeners. The config is copied. *out freed by _close. */
rk_status svc_server_open(const svc_config *cfg, svc_server **out);

/* Serve until stopped. Returns RK_OK after a clean shutdown. */
rk_status svc_server_run(svc_server *srv);

/* Ask a running server to shut down; safe from any thread and from signal context via
 * the server's own signal handling. */
void svc_server_stop(svc_server *srv);

/* Bound ports (useful with port 0). */
int svc_server_port(const svc_server *srv);
int svc_server_http_port(const svc_server *srv);

/* Release everything. NULL is a no-op. */
void svc_server_close(svc_server *srv);

#ifdef __cplusplus
}
#endif
#endif
