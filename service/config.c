/* config.c — ragkvd options: one table drives the config file, the flags and --help. */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ragkv/blend.h"
#include "ragkv/codec.h"
#include "ragkv/log.h"
#include "ragkv/service.h"
#include "ragkv/version.h"

typedef enum { OPT_STR, OPT_INT } opt_kind;

struct opt_desc {
    const char *name;  /* config key and flag name */
    opt_kind kind;
    size_t offset;     /* into svc_config */
    size_t size;       /* buffer size for OPT_STR */
    long min, max;     /* bounds for OPT_INT */
    const char *help;
};

#define STR_OPT(n, field, h) {n, OPT_STR, offsetof(svc_config, field), sizeof(((svc_config *)0)->field), 0, 0, h}
#define INT_OPT(n, field, lo, hi, h) {n, OPT_INT, offsetof(svc_config, field), 0, lo, hi, h}

static const struct opt_desc opts[] = {
    STR_OPT("bind", bind, "address to listen on (protocol and HTTP)"),
    INT_OPT("port", port, 0, 65535, "protocol port (0: pick a free one)"),
    INT_OPT("http-port", http_port, -1, 65535, "HTTP port for /healthz and /metrics (0: pick, -1: off)"),
    STR_OPT("data-dir", data_dir, "data directory, created if missing"),
    STR_OPT("model", model, "model: llama2.c .bin file or Hugging Face folder"),
    STR_OPT("tokenizer", tokenizer, "tokenizer.bin for llama2.c models"),
    STR_OPT("redis", redis, "chunk metadata in Redis at HOST:PORT (none: embedded in RocksDB)"),
    STR_OPT("redis-prefix", redis_prefix, "key prefix in Redis (one per ragkv cluster)"),
    STR_OPT("redis-sentinels", redis_sentinels, "HOST:PORT,... of Redis Sentinels that name the metadata primary"),
    STR_OPT("redis-master", redis_master, "master name the Sentinels monitor"),
    INT_OPT("redis-wait-replicas", redis_wait_replicas, 0, 16, "replicas that must hold a chunk's metadata before it is acknowledged (WAIT; 0: none)"),
    INT_OPT("redis-async", redis_async, 0, 1, "1: chunk metadata calls (LOOKUP, DELETE, GET_KV, PUT_KV, PUT_CHUNK, prompt chunks) on the workers' event loops; 0: on the I/O pool and the executor"),
    STR_OPT("cluster-secret-file", cluster_secret_file, "file holding the secret cluster peers authenticate with (set: cluster mode)"),
    STR_OPT("node-id", node_id, "this node's name in the cluster (default: the advertised address)"),
    STR_OPT("advertise", advertise, "HOST:PORT peers and clients reach this node at (default: bind:port)"),
    INT_OPT("cluster-replicas", cluster_replicas, 1, 16, "nodes that hold each chunk (replication factor)"),
    INT_OPT("cluster-heartbeat-ms", cluster_heartbeat_ms, 50, 60000, "membership heartbeat period, ms"),
    INT_OPT("cluster-node-ttl-ms", cluster_node_ttl_ms, 100, 600000, "a node that missed heartbeats this long is dead, ms"),
    INT_OPT("peer-timeout-ms", peer_timeout_ms, 10, 60000, "deadline for a call to a peer node, ms"),
    INT_OPT("ram-budget-mb", ram_budget_mb, 0, 1 << 30, "RAM tier of compressed chunks, MiB (0: off)"),
    INT_OPT("disk-budget-mb", disk_budget_mb, 0, 1 << 30, "disk tier over all tenants, MiB (0: unlimited)"),
    INT_OPT("device-budget-mb", device_budget_mb, 0, 1 << 30, "device tier of decoded chunks on the model's backend, MiB (0: off)"),
    INT_OPT("workers", workers, 0, 1024, "connection worker threads (0: one per CPU)"),
    STR_OPT("backend", backend, "compute backend for the model: cpu or cuda"),
    INT_OPT("compute-threads", compute_threads, 0, 1024, "CPU backend threads, and the chunk decoding pool's (0: one per CPU)"),
    INT_OPT("device", device, 0, 1024, "GPU ordinal of the cuda backend"),
    INT_OPT("max-batch", max_batch, 1, 4096, "generations decoded together in one step"),
    INT_OPT("max-connections", max_connections, 1, 1000000, "connections served at once"),
    INT_OPT("max-frame-mb", max_frame_mb, 1, 2047, "largest request payload after AUTH, MiB"),
    INT_OPT("idle-timeout", idle_timeout_s, 1, 86400, "seconds a silent connection stays open"),
    INT_OPT("frame-timeout", frame_timeout_s, 1, 3600, "seconds a started frame may take to arrive (slowloris guard)"),
    INT_OPT("admin-remote", admin_remote, 0, 1, "1: accept the admin credential from non-loopback clients"),
    INT_OPT("tenant-rate", tenant_rate, 0, 10000000, "requests per second per tenant (0: unlimited)"),
    INT_OPT("tenant-burst", tenant_burst, 0, 10000000, "request burst per tenant (0: one second's worth)"),
    INT_OPT("tenant-max-jobs", tenant_max_jobs, 0, 100000, "generations and prefills one tenant may run at once (0: unlimited)"),
    STR_OPT("log-level", log_level, "debug, info, warn or error"),
    STR_OPT("chunk-codec", chunk_codec, "codec of the KV the daemon encodes (PUT_CHUNK, prompt misses, Cache-Craft variants, PREFILL_KV): raw, lz4 (both fp16), q8 or cachegen"),
    INT_OPT("craft-capture", craft_capture, 0, 1, "1: after a cachecraft prompt, capture its chunks' in-context Cache-Craft variants (when the executor is idle, or see craft-capture-max-wait-ms) and store them; 0: off (stored variants are still used)"),
    INT_OPT("craft-capture-max-tokens", craft_capture_max_tokens, 1, 1 << 24, "longest prompt prefix one Cache-Craft capture prefills (chunks ending past it get no variant)"),
    INT_OPT("craft-capture-min-uses", craft_capture_min_uses, 1, 1000000, "capture a chunk's Cache-Craft variant after another chunk once the pair has come in this many cachecraft prompts (1: at the first; a pair seen once is seldom seen again)"),
    INT_OPT("craft-capture-max-wait-ms", craft_capture_max_wait_ms, 0, 3600000, "a Cache-Craft capture waiting this long takes a layer of its prefill between decode steps even while the executor is busy, at most one forced per this interval (0: only when idle)"),
    STR_OPT("ram-page-locked", ram_page_locked, "auto, on or off: keep the RAM tier's compressed chunks in page-locked host memory, which the GPU reads by DMA while the host goes on (uploads from ordinary memory are staged by the driver, the loading thread waiting); it cannot be swapped out. auto (the default): on with a cuda backend, where the GPU loader copies each container up in one piece (on an H100, 2026-12-07, CacheBlend over 16 chunks from RAM took 86.7 ms from page-locked memory and 128.1 from ordinary memory, naive 35.3 and 76.4)"),
    STR_OPT("blend-select", blend_select, "attention, deviation or lookahead: how cacheblend prompts rank the reused tokens at the check layer: by the deviation of fresh from cached K times the attention the query pays each token there (the default: 1.4-2x lower KL at the same ratio than the deviation alone on the test models, about 1 ms more at 8K tokens on an H100), by the deviation alone (CacheBlend's rule), or by the deviation times the query's attention over every later layer of a naive pass (lower KL still; its GPU cost is not yet measured; docs/blend.md)"),
    STR_OPT("layer-loading", layer_loading, "auto, on or off: chunks read from RAM or disk (no device tier, Redis metadata) are decoded a layer ahead of the layer computed (on), or whole first (off); auto: on for GPU backends, off on the CPU backend, where decoding and computing share the cores"),
};
#define NOPTS (sizeof(opts) / sizeof(opts[0]))

void svc_config_defaults(svc_config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    snprintf(cfg->bind, sizeof(cfg->bind), "127.0.0.1");
    cfg->port = SVC_DEFAULT_PORT;
    cfg->http_port = SVC_DEFAULT_HTTP_PORT;
    snprintf(cfg->data_dir, sizeof(cfg->data_dir), "./var");
    cfg->workers = 0;
    snprintf(cfg->backend, sizeof(cfg->backend), "cpu");
    cfg->max_batch = 32;
    cfg->max_connections = 1024;
    cfg->ram_budget_mb = 256;
    snprintf(cfg->redis_prefix, sizeof(cfg->redis_prefix), "rk:");
    snprintf(cfg->redis_master, sizeof(cfg->redis_master), "ragkv");
    cfg->redis_async = 1;
    cfg->cluster_replicas = 1;
    cfg->cluster_heartbeat_ms = 1000;
    cfg->cluster_node_ttl_ms = 3000;
    cfg->peer_timeout_ms = 1000;
    cfg->tenant_max_jobs = 64;
    cfg->max_frame_mb = 64;
    cfg->idle_timeout_s = 300;
    cfg->frame_timeout_s = 10;
    snprintf(cfg->log_level, sizeof(cfg->log_level), "info");
    snprintf(cfg->layer_loading, sizeof(cfg->layer_loading), "auto");
    snprintf(cfg->ram_page_locked, sizeof(cfg->ram_page_locked), "auto");
    snprintf(cfg->blend_select, sizeof(cfg->blend_select), "%s", bl_select_name(BL_SELECT_DEFAULT));
    snprintf(cfg->chunk_codec, sizeof(cfg->chunk_codec), "cachegen");
    cfg->craft_capture = 1;
    cfg->craft_capture_max_tokens = 4096;
    cfg->craft_capture_max_wait_ms = 2000;
    cfg->craft_capture_min_uses = 2;
}

static const struct opt_desc *opt_find(const char *name, size_t len)
{
    for (size_t i = 0; i < NOPTS; i++)
        if (strlen(opts[i].name) == len && strncmp(opts[i].name, name, len) == 0)
            return &opts[i];
    return NULL;
}

/* Store value into the option; on a bad value write the reason to err. */
static rk_status opt_set(svc_config *cfg, const struct opt_desc *o, const char *value,
                         char *err, size_t errlen)
{
    char *field = (char *)cfg + o->offset;
    if (o->kind == OPT_STR) {
        if (strlen(value) >= o->size) {
            snprintf(err, errlen, "%s: value longer than %zu bytes", o->name, o->size - 1);
            return RK_ERR_INVALID;
        }
        memcpy(field, value, strlen(value) + 1);
        if (strcmp(o->name, "log-level") == 0 && rk_log_level_parse(value) < 0) {
            snprintf(err, errlen, "log-level: '%s' is not debug, info, warn or error", value);
            return RK_ERR_INVALID;
        }
        codec_id cid;
        if (strcmp(o->name, "chunk-codec") == 0 && codec_id_parse(value, &cid) != RK_OK) {
            snprintf(err, errlen, "chunk-codec: '%s' is not raw, lz4, q8 or cachegen", value);
            return RK_ERR_INVALID;
        }
        bl_select bs;
        if (strcmp(o->name, "blend-select") == 0 && bl_select_parse(value, &bs) != RK_OK) {
            snprintf(err, errlen, "blend-select: '%s' is not attention, deviation or lookahead", value);
            return RK_ERR_INVALID;
        }
        if ((strcmp(o->name, "layer-loading") == 0 || strcmp(o->name, "ram-page-locked") == 0) &&
            strcmp(value, "auto") && strcmp(value, "on") && strcmp(value, "off")) {
            snprintf(err, errlen, "%s: '%s' is not auto, on or off", o->name, value);
            return RK_ERR_INVALID;
        }
        return RK_OK;
    }
    char *end;
    errno = 0;
    long v = strtol(value, &end, 10);
    if (errno || end == value || *end != '\0') {
        snprintf(err, errlen, "%s: '%s' is not an integer", o->name, value);
        return RK_ERR_INVALID;
    }
    if (v < o->min || v > o->max) {
        snprintf(err, errlen, "%s: %ld is outside %ld..%ld", o->name, v, o->min, o->max);
        return RK_ERR_INVALID;
    }
    *(int *)field = (int)v;
    return RK_OK;
}

static char *trim(char *s)
{
    while (isspace((unsigned char)*s))
        s++;
    char *e = s + strlen(s);
    while (e > s && isspace((unsigned char)e[-1]))
        *--e = '\0';
    return s;
}

rk_status svc_config_load_file(svc_config *cfg, const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return RK_ERR_IO;
    }
    char line[4096], sub[256];
    int lineno = 0;
    rk_status st = RK_OK;
    while (fgets(line, sizeof(line), f)) {
        lineno++;
        char *hash = strchr(line, '#');
        if (hash)
            *hash = '\0';
        char *s = trim(line);
        if (!*s)
            continue;
        char *eq = strchr(s, '=');
        if (!eq) {
            snprintf(err, errlen, "%s:%d: expected 'key = value'", path, lineno);
            st = RK_ERR_FORMAT;
            break;
        }
        *eq = '\0';
        char *key = trim(s), *val = trim(eq + 1);
        size_t vl = strlen(val);
        if (vl >= 2 && val[0] == '"' && val[vl - 1] == '"') { /* optional quotes */
            val[vl - 1] = '\0';
            val++;
        }
        const struct opt_desc *o = opt_find(key, strlen(key));
        if (!o) {
            snprintf(err, errlen, "%s:%d: unknown option '%s'", path, lineno, key);
            st = RK_ERR_FORMAT;
            break;
        }
        if ((st = opt_set(cfg, o, val, sub, sizeof(sub))) != RK_OK) {
            snprintf(err, errlen, "%s:%d: %s", path, lineno, sub);
            break;
        }
    }
    fclose(f);
    if (st == RK_OK)
        snprintf(cfg->config_file, sizeof(cfg->config_file), "%s", path);
    return st;
}

void svc_config_print_help(const char *prog)
{
    svc_config d;
    svc_config_defaults(&d);
    printf("usage: %s [--config FILE] [--OPTION VALUE]...\n\n"
           "ragkvd %s — multi-tenant RAG context cache daemon.\n"
           "Every option can also be set in the config file as `OPTION = VALUE`;\n"
           "flags override the file.\n\n",
           prog, RAGKV_VERSION);
    printf("  --%-18s %s\n", "config FILE", "read options from FILE first");
    for (size_t i = 0; i < NOPTS; i++) {
        const struct opt_desc *o = &opts[i];
        char def[64];
        const char *field = (const char *)&d + o->offset;
        if (o->kind == OPT_STR)
            snprintf(def, sizeof(def), "%s", *field ? field : "none");
        else
            snprintf(def, sizeof(def), "%d", *(const int *)field);
        printf("  --%-18s %s (default: %s)\n", o->name, o->help, def);
    }
    printf("  --%-18s %s\n  --%-18s %s\n", "help", "show this help", "version", "show the version");
    printf("\nSignals: SIGTERM/SIGINT shut down cleanly (exit 0); SIGHUP re-reads the tenant credentials and,\n"
           "from the config file, the log level and the tenant limits (then prints \"ragkvd reloaded\").\n");
}

rk_status svc_config_parse_args(svc_config *cfg, int argc, char **argv, char *err, size_t errlen)
{
    /* pass 1: --help, --version, --config */
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            svc_config_print_help(argv[0]);
            return RK_ERR_CANCELLED;
        }
        if (strcmp(argv[i], "--version") == 0) {
            printf("ragkvd %s\n", RAGKV_VERSION);
            return RK_ERR_CANCELLED;
        }
    }
    for (int i = 1; i < argc; i++) {
        const char *path = NULL;
        if (strcmp(argv[i], "--config") == 0) {
            if (i + 1 >= argc) {
                snprintf(err, errlen, "--config needs a file");
                return RK_ERR_INVALID;
            }
            path = argv[i + 1];
        } else if (strncmp(argv[i], "--config=", 9) == 0) {
            path = argv[i] + 9;
        }
        if (path) {
            rk_status st = svc_config_load_file(cfg, path, err, errlen);
            if (st != RK_OK)
                return st;
        }
    }
    /* pass 2: everything else, overriding the file */
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strncmp(a, "--", 2) != 0) {
            snprintf(err, errlen, "unexpected argument '%s' (try --help)", a);
            return RK_ERR_INVALID;
        }
        a += 2;
        const char *eq = strchr(a, '=');
        size_t nl = eq ? (size_t)(eq - a) : strlen(a);
        const char *val;
        if (nl == 6 && strncmp(a, "config", 6) == 0) {
            if (!eq)
                i++;
            continue;
        }
        const struct opt_desc *o = opt_find(a, nl);
        if (!o) {
            snprintf(err, errlen, "unknown option '--%.*s' (try --help)", (int)nl, a);
            return RK_ERR_INVALID;
        }
        if (eq) {
            val = eq + 1;
        } else {
            if (i + 1 >= argc) {
                snprintf(err, errlen, "--%s needs a value", o->name);
                return RK_ERR_INVALID;
            }
            val = argv[++i];
        }
        rk_status st = opt_set(cfg, o, val, err, errlen);
        if (st != RK_OK)
            return st;
    }
    return RK_OK;
}
