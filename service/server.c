/*
 * server.c — ragkvd's event plumbing: a listener thread that accepts and hands sockets to
 * worker threads (each with its own event_base, memcached-style), the HTTP endpoint for
 * health and metrics, signals, and the data-directory lock.
 */
#define RK_LOG_COMPONENT "server"
#include <arpa/inet.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/listener.h>
#include <event2/thread.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "ragkv/alloc.h"
#include "ragkv/clock.h"
#include "ragkv/log.h"
#include "ragkv/service.h"
#include "ragkv/version.h"
#include "cluster.h"
#include "devcache.h"
#include "exec.h"
#include "limits.h"
#include "meta.h"
#include "ragkv/chunkcache.h"
#include "ragkv/redis_sentinel.h"
#include "ragkv/codec.h"
#include "ragkv/thread.h"
#include "server_int.h"

struct svc_server_metrics svc_m;

static void metrics_register(void)
{
    char lbl[96];
    snprintf(lbl, sizeof(lbl), "version=\"%s\"", RAGKV_VERSION);
    svc_m.build = svc_metric_get(SVC_GAUGE, "build_info", lbl, "ragkvd build; always 1");
    svc_metric_set(svc_m.build, 1);
    svc_m.uptime = svc_metric_get(SVC_GAUGE, "uptime_seconds", "", "seconds since ragkvd started");
    svc_m.accepted = svc_metric_get(SVC_COUNTER, "connections_accepted_total", "",
                                    "protocol connections accepted");
    svc_m.refused = svc_metric_get(SVC_COUNTER, "connections_refused_total", "",
                                   "protocol connections refused over max-connections");
    svc_m.active = svc_metric_get(SVC_GAUGE, "connections_active", "", "protocol connections open now");
    svc_m.http_requests = svc_metric_get(SVC_COUNTER, "http_requests_total", "",
                                         "requests to the HTTP endpoint");
    svc_m.requests = svc_metric_get(SVC_COUNTER, "requests_total", "", "protocol requests decoded");
    svc_m.errors = svc_metric_get(SVC_COUNTER, "request_errors_total", "",
                                  "protocol requests answered with an error status");
    svc_m.protocol_errors = svc_metric_get(SVC_COUNTER, "protocol_errors_total", "",
                                           "connections closed because framing was lost or a frame was too large");
    svc_m.timeouts = svc_metric_get(SVC_COUNTER, "connection_timeouts_total", "",
                                    "connections closed for idleness or a frame arriving too slowly");
}

/* ---- worker side ------------------------------------------------------------------- */

static void worker_on_notify(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct svc_worker *w = arg;
    for (;;) {
        pthread_mutex_lock(&w->lock);
        int sock = w->npending ? w->pending[--w->npending] : -1;
        pthread_mutex_unlock(&w->lock);
        if (sock < 0)
            return;
        if (!svc_conn_open(w, sock)) {
            RK_WARN("worker %d: out of memory for a connection; closing it", w->id);
            atomic_fetch_sub(&w->srv->active, 1);
            svc_metric_add(svc_m.active, -1);
        }
    }
}

static void worker_on_exit(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct svc_worker *w = arg;
    event_base_loopexit(w->base, NULL);
}

static void *worker_main(void *arg)
{
    struct svc_worker *w = arg;
    event_base_loop(w->base, EVLOOP_NO_EXIT_ON_EMPTY);
    while (w->conns)
        svc_conn_free(w->conns);
    svc_meta_close(w); /* after the connections: their jobs in flight end, cancelled */
    pthread_mutex_lock(&w->lock);
    for (int i = 0; i < w->npending; i++) {
        close(w->pending[i]);
        atomic_fetch_sub(&w->srv->active, 1);
        svc_metric_add(svc_m.active, -1);
    }
    w->npending = 0;
    pthread_mutex_unlock(&w->lock);
    return NULL;
}

/* ---- listener side ----------------------------------------------------------------- */

static void on_accept(struct evconnlistener *l, evutil_socket_t sock, struct sockaddr *sa,
                      int salen, void *arg)
{
    (void)l;
    (void)sa;
    (void)salen;
    struct svc_server *srv = arg;
    if (atomic_load(&srv->active) >= srv->cfg.max_connections) {
        /* refuse now rather than leave the client hanging */
        svc_metric_add(svc_m.refused, 1);
        RK_WARN("refusing connection: %d connections open (max-connections)", srv->cfg.max_connections);
        close(sock);
        return;
    }
    evutil_make_socket_nonblocking(sock);
    struct svc_worker *w = &srv->workers[srv->next_worker];
    srv->next_worker = (srv->next_worker + 1) % srv->nworkers;
    pthread_mutex_lock(&w->lock);
    if (w->npending == w->cap) {
        pthread_mutex_unlock(&w->lock);
        svc_metric_add(svc_m.refused, 1);
        close(sock);
        return;
    }
    w->pending[w->npending++] = sock;
    pthread_mutex_unlock(&w->lock);
    atomic_fetch_add(&srv->active, 1);
    svc_metric_add(svc_m.accepted, 1);
    svc_metric_add(svc_m.active, 1);
    event_active(w->notify_ev, EV_READ, 0);
}

static void on_accept_error(struct evconnlistener *l, void *arg)
{
    (void)l;
    (void)arg;
    RK_WARN("accept failed: %s", evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
}

static void http_reply(struct evhttp_request *req, int code, const char *reason,
                       const char *ctype, const char *body, size_t len)
{
    struct evbuffer *out = evbuffer_new();
    if (!out) {
        evhttp_send_error(req, 500, "out of memory");
        return;
    }
    evbuffer_add(out, body, len);
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", ctype);
    evhttp_send_reply(req, code, reason, out);
    evbuffer_free(out);
}

static void on_healthz(struct evhttp_request *req, void *arg)
{
    (void)arg;
    svc_metric_add(svc_m.http_requests, 1);
    http_reply(req, 200, "OK", "text/plain; charset=utf-8", "OK\n", 3);
}

static void on_metrics(struct evhttp_request *req, void *arg)
{
    struct svc_server *srv = arg;
    svc_metric_add(svc_m.http_requests, 1);
    svc_metric_set(svc_m.uptime, (int64_t)((rk_now_ns() - srv->start_ns) / 1000000000ull));
    size_t len;
    char *text = svc_metrics_render(&len);
    if (!text) {
        evhttp_send_error(req, 500, "out of memory");
        return;
    }
    http_reply(req, 200, "OK", "text/plain; version=0.0.4; charset=utf-8", text, len);
    rk_free(text);
}

static void on_http_other(struct evhttp_request *req, void *arg)
{
    (void)arg;
    svc_metric_add(svc_m.http_requests, 1);
    static const char msg[] = "not found; try /healthz or /metrics\n";
    http_reply(req, 404, "Not Found", "text/plain; charset=utf-8", msg, sizeof(msg) - 1);
}

static void do_stop(struct svc_server *srv)
{
    event_base_loopexit(srv->base, NULL);
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    (void)what;
    struct svc_server *srv = arg;
    if (sig == SIGHUP) {
        /* tenants (the credential file) and the limits; listeners, model and store stay */
        rk_status st = svc_auth_reload(srv->auth);
        if (st != RK_OK)
            RK_WARN("SIGHUP: keeping the old tenant credentials: %s", rk_error_msg());
        if (srv->cfg.config_file[0]) {
            svc_config fresh;
            char err[512];
            svc_config_defaults(&fresh);
            if (svc_config_load_file(&fresh, srv->cfg.config_file, err, sizeof(err)) != RK_OK) {
                RK_WARN("SIGHUP: keeping the old settings: %s", err);
            } else {
                rk_log_set_level((rk_log_level)rk_log_level_parse(fresh.log_level));
                svc_limits_configure(srv->tlimits, fresh.tenant_rate, fresh.tenant_burst, fresh.tenant_max_jobs);
                RK_INFO("SIGHUP: reloaded %s (log level %s, tenant rate %d/s burst %d, %d jobs)",
                        srv->cfg.config_file, fresh.log_level, fresh.tenant_rate, fresh.tenant_burst,
                        fresh.tenant_max_jobs);
            }
        }
        /* on stdout, like the ready line: scripts and tests wait for it */
        printf("ragkvd reloaded\n");
        fflush(stdout);
        return;
    }
    RK_INFO("%s: shutting down", sig == SIGTERM ? "SIGTERM" : "SIGINT");
    do_stop(srv);
}

static void on_stop(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    do_stop(arg);
}

static int bound_port(evutil_socket_t fd)
{
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    if (getsockname(fd, (struct sockaddr *)&ss, &sl) != 0)
        return -1;
    if (ss.ss_family == AF_INET6)
        return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    return ntohs(((struct sockaddr_in *)&ss)->sin_port);
}

static rk_status mkdir_p(const char *path)
{
    char tmp[SVC_PATH_MAX];
    snprintf(tmp, sizeof(tmp), "%s", path);
    for (char *p = tmp + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(tmp, 0750) != 0 && errno != EEXIST)
            return rk_error_set(RK_ERR_IO, "mkdir %s: %s", tmp, strerror(errno));
        *p = '/';
    }
    if (mkdir(tmp, 0750) != 0 && errno != EEXIST)
        return rk_error_set(RK_ERR_IO, "mkdir %s: %s", tmp, strerror(errno));
    return RK_OK;
}

static rk_status lock_data_dir(struct svc_server *srv)
{
    rk_status st = mkdir_p(srv->cfg.data_dir);
    if (st != RK_OK)
        return st;
    char path[SVC_PATH_MAX + 8];
    snprintf(path, sizeof(path), "%s/LOCK", srv->cfg.data_dir);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0640);
    if (fd < 0)
        return rk_error_set(RK_ERR_IO, "%s: %s", path, strerror(errno));
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        char pid[32] = "";
        ssize_t n = pread(fd, pid, sizeof(pid) - 1, 0);
        pid[n > 0 ? n : 0] = '\0';
        close(fd);
        return rk_error_set(RK_ERR_EXISTS, "data dir %s is in use by another ragkvd (pid %s)",
                            srv->cfg.data_dir, n > 0 ? strtok(pid, "\n") : "?");
    }
    char pid[32];
    int n = snprintf(pid, sizeof(pid), "%ld\n", (long)getpid());
    if (ftruncate(fd, 0) != 0 || pwrite(fd, pid, (size_t)n, 0) != n)
        RK_WARN("%s: could not record the pid", path);
    srv->lock_fd = fd;
    return RK_OK;
}

/* Cluster mode (cluster.h): the secret from its file, the Redis (or Sentinels) of the
 * metadata; registration waits for the bound port (svc_cluster_start). */
static rk_status open_cluster(struct svc_server *srv)
{
    const svc_config *cfg = &srv->cfg;
    if (!cfg->redis[0] && !cfg->redis_sentinels[0])
        return rk_error_set(RK_ERR_INVALID, "cluster mode needs the metadata in Redis (redis or redis-sentinels)");
    char secret[256] = "", host[128] = "";
    int port = 0;
    FILE *f = fopen(cfg->cluster_secret_file, "r");
    if (!f)
        return rk_error_set(RK_ERR_IO, "cluster-secret-file %s: %s", cfg->cluster_secret_file, strerror(errno));
    if (!fgets(secret, sizeof(secret), f))
        secret[0] = '\0';
    fclose(f);
    secret[strcspn(secret, "\r\n")] = '\0';
    rk_status st = RK_OK;
    if (!cfg->redis_sentinels[0])
        st = cc_redis_parse_addr(cfg->redis, strlen(cfg->redis), host, sizeof(host), &port);
    svc_cluster_cfg cc = {.node_id = cfg->node_id, .advertise = cfg->advertise, .secret = secret,
                          .redis_host = host, .redis_port = port, .sentinels = cfg->redis_sentinels,
                          .master = cfg->redis_master, .prefix = cfg->redis_prefix,
                          .replicas = cfg->cluster_replicas, .heartbeat_ms = cfg->cluster_heartbeat_ms,
                          .ttl_ms = cfg->cluster_node_ttl_ms, .peer_timeout_ms = cfg->peer_timeout_ms};
    if (st == RK_OK)
        st = svc_cluster_open(&cc, &srv->cluster);
    memset(secret, 0, sizeof(secret));
    return st; /* the messages already say "cluster" or name the option */
}

/* The chunk store in DATA_DIR/store, metadata in Redis or embedded; every credentialed tenant
 * gets an account there (tenants created before the store existed, or a wiped store). */
static rk_status open_store(struct svc_server *srv)
{
    const svc_config *cfg = &srv->cfg;
    char dir[SVC_PATH_MAX + 16], host[128] = "";
    snprintf(dir, sizeof(dir), "%s/store", cfg->data_dir);
    cc_config cc = cc_config_default();
    cc.data_dir = dir;
    cc.ram_budget_bytes = (uint64_t)cfg->ram_budget_mb << 20;
    cc.ram_page_locked = !strcmp(cfg->ram_page_locked, "on") ||
                         (!strcmp(cfg->ram_page_locked, "auto") && cfg->model[0] && !strcmp(cfg->backend, "cuda"));
    cc.disk_budget_bytes = (uint64_t)cfg->disk_budget_mb << 20;
    /* the device tier holds decoded chunks on the model's backend: only with a model */
    if (cfg->model[0] && cfg->device_budget_mb > 0) {
        rk_status ds = svc_devcache_open((uint64_t)cfg->device_budget_mb << 20, &srv->devcache);
        if (ds != RK_OK)
            return ds;
        cc.device = svc_devcache_tier(srv->devcache);
    }
    cc.redis.sentinels = cfg->redis_sentinels;
    cc.redis.sentinel_master = cfg->redis_master;
    cc.redis.wait_replicas = cfg->redis_wait_replicas;
    if (cfg->redis_sentinels[0]) { /* the primary comes from the Sentinels at every connect */
        cc.redis_host = "";
        cc.redis_prefix = cfg->redis_prefix;
    } else if (cfg->redis[0]) {
        const char *colon = strrchr(cfg->redis, ':');
        int port = colon ? atoi(colon + 1) : 0;
        if (!colon || port <= 0 || port > 65535 || (size_t)(colon - cfg->redis) >= sizeof(host))
            return rk_error_set(RK_ERR_INVALID, "redis: '%s' is not HOST:PORT", cfg->redis);
        memcpy(host, cfg->redis, (size_t)(colon - cfg->redis));
        host[colon - cfg->redis] = '\0';
        cc.redis_host = host;
        cc.redis_port = port;
        cc.redis_prefix = cfg->redis_prefix;
    }
    rk_status st = cc_store_open(&cc, &srv->store);
    if (st != RK_OK)
        return rk_error_set(st, "chunk store in %s: %s", dir, rk_error_msg());
    char **names;
    size_t n;
    if ((st = svc_auth_tenant_list(srv->auth, &names, &n)) != RK_OK)
        return st;
    for (size_t i = 0; i < n && st == RK_OK; i++) {
        cc_quota q = {0};
        st = cc_store_tenant_create(srv->store, names[i], &q);
        if (st == RK_ERR_EXISTS)
            st = RK_OK;
        else if (st == RK_OK)
            RK_WARN("tenant %s had no account in the chunk store; created one without quota", names[i]);
    }
    svc_auth_names_free(names, n);
    RK_INFO("chunk store: %s, metadata %s, RAM tier %d MiB, device tier %d MiB", dir,
            cfg->redis[0] ? cfg->redis : "embedded", cfg->ram_budget_mb, srv->devcache ? cfg->device_budget_mb : 0);
    return st;
}

/* The tenants' usage gauges, on a pool thread (metadata reads: Redis may be slow or down). */
static void usage_job(void *arg)
{
    struct svc_server *srv = arg;
    char **names;
    size_t n;
    if (svc_auth_tenant_list(srv->auth, &names, &n) == RK_OK) {
        for (size_t i = 0; i < n; i++) {
            cc_tenant_info ti;
            if (cc_store_tenant_usage(srv->store, names[i], &ti) != RK_OK)
                continue;
            char lbl[300];
            snprintf(lbl, sizeof(lbl), "tenant=\"%s\"", names[i]); /* names are [A-Za-z0-9._-] */
            svc_metric_set(svc_metric_get(SVC_GAUGE, "tenant_bytes", lbl, "a tenant's stored chunk bytes"), (int64_t)ti.bytes);
            svc_metric_set(svc_metric_get(SVC_GAUGE, "tenant_chunks", lbl, "a tenant's stored chunks"), (int64_t)ti.chunks);
        }
        svc_auth_names_free(names, n);
    }
    pthread_mutex_lock(&srv->usage_mu);
    srv->usage_running = false;
    srv->usage_done++;
    pthread_cond_broadcast(&srv->usage_cv);
    pthread_mutex_unlock(&srv->usage_mu);
}

/* Refresh the tenants' usage gauges for a scrape: start a pool job (unless one runs) and wait
 * for a refresh to finish, at most USAGE_WAIT_MS; past that the scrape shows the last values
 * read, so /metrics answers while the metadata store is stalled. */
#define USAGE_WAIT_MS 250
static void refresh_usage(struct svc_server *srv)
{
    pthread_mutex_lock(&srv->usage_mu);
    uint64_t want = srv->usage_done + 1;
    if (!srv->usage_running) {
        pthread_rwlock_rdlock(&srv->submit_gate);
        srv->usage_running = !srv->draining && srv->io_pool && rk_pool_submit(srv->io_pool, usage_job, srv) == RK_OK;
        pthread_rwlock_unlock(&srv->submit_gate);
        if (!srv->usage_running) {
            pthread_mutex_unlock(&srv->usage_mu);
            return;
        }
    }
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    dl.tv_nsec += USAGE_WAIT_MS * 1000000L;
    dl.tv_sec += dl.tv_nsec / 1000000000L;
    dl.tv_nsec %= 1000000000L;
    while (srv->usage_done < want && pthread_cond_timedwait(&srv->usage_cv, &srv->usage_mu, &dl) == 0) {
    }
    pthread_mutex_unlock(&srv->usage_mu);
}

/* /metrics collector: the store's tiers and every tenant's usage, read when scraped. */
static void collect_store(void *ctx)
{
    struct svc_server *srv = ctx;
    cc_stats cs;
    cc_store_stats(srv->store, &cs);
    svc_metric_set(svc_metric_get(SVC_GAUGE, "store_ram_bytes", "", "compressed chunk bytes in the RAM tier"), (int64_t)cs.ram_bytes);
    svc_metric_set(svc_metric_get(SVC_GAUGE, "store_disk_bytes", "", "chunk blob bytes on disk (all tenants)"), (int64_t)cs.disk_bytes);
    svc_metric_set(svc_metric_get(SVC_COUNTER, "store_ram_hits_total", "", "chunk reads served from RAM"), (int64_t)cs.ram_hits);
    svc_metric_set(svc_metric_get(SVC_COUNTER, "store_disk_hits_total", "", "chunk reads served from disk"), (int64_t)cs.disk_hits);
    svc_metric_set(svc_metric_get(SVC_COUNTER, "store_corrupt_total", "", "blobs that failed their checksum (never served)"), (int64_t)cs.corrupt);
    svc_metric_set(svc_metric_get(SVC_COUNTER, "store_evictions_total", "", "chunks evicted for quotas and budgets"),
                   (int64_t)(cs.evicted_quota + cs.evicted_disk + cs.expired));
    if (srv->devcache) {
        cc_devtier_stats ds;
        cc_devtier_stats_get(svc_devcache_tier(srv->devcache), &ds);
        svc_metric_set(svc_metric_get(SVC_GAUGE, "store_device_bytes", "", "decoded chunk bytes in the device tier"), (int64_t)ds.bytes);
        svc_metric_set(svc_metric_get(SVC_GAUGE, "store_device_chunks", "", "decoded chunks in the device tier"), (int64_t)ds.entries);
        svc_metric_set(svc_metric_get(SVC_COUNTER, "store_device_hits_total", "", "prompt chunks served from the device tier (no read, no decode)"), (int64_t)ds.hits);
        svc_metric_set(svc_metric_get(SVC_COUNTER, "store_device_misses_total", "", "prompt chunks the device tier did not hold (read and decoded)"), (int64_t)ds.misses);
        svc_metric_set(svc_metric_get(SVC_COUNTER, "store_device_admits_total", "", "decoded chunks admitted to the device tier"), (int64_t)ds.admits);
        svc_metric_set(svc_metric_get(SVC_COUNTER, "store_device_evictions_total", "", "chunks evicted from the device tier for its budget"), (int64_t)ds.evictions);
        svc_metric_set(svc_metric_get(SVC_COUNTER, "store_device_drops_total", "", "device-tier chunks dropped because the chunk was deleted, evicted or expired"), (int64_t)ds.drops);
    }
    refresh_usage(srv);
}

rk_status svc_server_open(const svc_config *cfg, svc_server **out)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, metrics_register);
    if (evthread_use_pthreads() != 0)
        return rk_error_set(RK_ERR_INTERNAL, "libevent: no pthreads support");
    bl_select blend_select;
    if (bl_select_parse(cfg->blend_select, &blend_select) != RK_OK) /* a config not made by the parser */
        return rk_error_set(RK_ERR_INVALID, "blend-select: '%s' is not attention, deviation or lookahead", cfg->blend_select);
    rk_status st = RK_ERR_NOMEM;
    struct svc_server *srv = rk_calloc(1, sizeof(*srv));
    if (!srv)
        return RK_ERR_NOMEM;
    srv->cfg = *cfg;
    srv->lock_fd = -1;
    pthread_rwlock_init(&srv->submit_gate, NULL);
    pthread_mutex_init(&srv->usage_mu, NULL);
    pthread_cond_init(&srv->usage_cv, NULL);
    svc_request_limits_default(&srv->limits);
    srv->max_frame = (uint32_t)cfg->max_frame_mb << 20;
    srv->blend_select = blend_select;
    srv->start_ns = rk_now_ns();
    int lvl = rk_log_level_parse(cfg->log_level);
    if (lvl >= 0)
        rk_log_set_level((rk_log_level)lvl);

    if ((st = lock_data_dir(srv)) != RK_OK)
        goto fail;
    if ((st = svc_auth_open(cfg->data_dir, &srv->auth)) != RK_OK)
        goto fail;
    if ((st = open_store(srv)) != RK_OK)
        goto fail;
    if (cfg->cluster_secret_file[0] && (st = open_cluster(srv)) != RK_OK)
        goto fail;
    if ((st = rk_pool_create(2, &srv->io_pool)) != RK_OK)
        goto fail;
    if (!(srv->tlimits = svc_limits_new(cfg->tenant_rate, cfg->tenant_burst, cfg->tenant_max_jobs))) {
        st = RK_ERR_NOMEM;
        goto fail;
    }
    if (cfg->model[0]) {
        if ((st = eng_model_open(cfg->model, &srv->model)) != RK_OK) {
            rk_error_set(st, "model %s: %s", cfg->model, rk_error_msg());
            goto fail;
        }
        /* eng_backend_new's third argument: threads for cpu, the device ordinal for cuda */
        int arg = !strcmp(cfg->backend, "cuda") ? cfg->device : cfg->compute_threads;
        if ((st = eng_backend_new(srv->model, cfg->backend, arg, &srv->backend)) != RK_OK) {
            rk_error_set(st, "backend %s: %s", cfg->backend, rk_error_msg());
            goto fail;
        }
        if ((st = rk_pool_create(cfg->compute_threads, &srv->codec_pool)) != RK_OK)
            goto fail;
        codec_id codec = CODEC_CACHEGEN;
        if (codec_id_parse(cfg->chunk_codec, &codec) != RK_OK) {
            st = rk_error_set(RK_ERR_INVALID, "chunk-codec: '%s' is not raw, lz4, q8 or cachegen", cfg->chunk_codec);
            goto fail;
        }
        svc_chunk_ctx cx = {.model = srv->model, .backend = srv->backend, .store = srv->store,
                            .pool = srv->codec_pool, .codec = codec, .level = -1,
                            .cluster = srv->cluster, .dev = srv->devcache,
                            .layer_loading = !strcmp(cfg->layer_loading, "on") ||
                                             (!strcmp(cfg->layer_loading, "auto") &&
                                              strcmp(eng_backend_name(srv->backend), "cpu") != 0),
                            /* variants are this node's own: not in a cluster (craft.h) */
                            .craft_capture = cfg->craft_capture && !srv->cluster,
                            .craft_max_tokens = (size_t)cfg->craft_capture_max_tokens,
                            .craft_max_wait_ns = (uint64_t)cfg->craft_capture_max_wait_ms * 1000000u,
                            .craft_min_uses = (uint32_t)cfg->craft_capture_min_uses};
        if ((st = svc_exec_start(&cx, cfg->max_batch, &srv->exec)) != RK_OK)
            goto fail;
        const eng_model_info *mi = eng_model_get_info(srv->model);
        RK_INFO("model %s: %s, %d layers, dim %d, vocab %d, context %d, backend %s", cfg->model, mi->id,
                mi->n_layers, mi->dim, mi->vocab, mi->max_seq, eng_backend_name(srv->backend));
    }
    st = RK_ERR_NOMEM;
    if (!(srv->base = event_base_new()))
        goto fail;

    /* protocol listener */
    struct sockaddr_storage ss;
    int sl = sizeof(ss);
    char addr[96];
    snprintf(addr, sizeof(addr), strchr(cfg->bind, ':') ? "[%s]:%d" : "%s:%d", cfg->bind, cfg->port);
    /* parsed without a port (libevent refuses port 0), which is then set by hand */
    if (evutil_parse_sockaddr_port(cfg->bind, (struct sockaddr *)&ss, &sl) != 0) {
        st = rk_error_set(RK_ERR_INVALID, "bind: '%s' is not an IP address", cfg->bind);
        goto fail;
    }
    if (ss.ss_family == AF_INET6)
        ((struct sockaddr_in6 *)&ss)->sin6_port = htons((uint16_t)cfg->port);
    else
        ((struct sockaddr_in *)&ss)->sin_port = htons((uint16_t)cfg->port);
    srv->listener = evconnlistener_new_bind(srv->base, on_accept, srv,
                                            LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE | LEV_OPT_CLOSE_ON_EXEC,
                                            128, (struct sockaddr *)&ss, sl);
    if (!srv->listener) {
        st = rk_error_set(RK_ERR_IO, "listen on %s: %s", addr, strerror(errno));
        goto fail;
    }
    evconnlistener_set_error_cb(srv->listener, on_accept_error);
    srv->port = bound_port(evconnlistener_get_fd(srv->listener));
    if (srv->cluster) {
        snprintf(addr, sizeof(addr), "%s:%d", cfg->bind, srv->port);
        if ((st = svc_cluster_start(srv->cluster, addr)) != RK_OK)
            goto fail;
    }

    /* HTTP: health and metrics */
    if (cfg->http_port >= 0) {
        if (!(srv->http = evhttp_new(srv->base)))
            goto fail;
        struct evhttp_bound_socket *hs = evhttp_bind_socket_with_handle(srv->http, cfg->bind, (uint16_t)cfg->http_port);
        if (!hs) {
            st = rk_error_set(RK_ERR_IO, "HTTP listen on %s port %d: %s", cfg->bind, cfg->http_port, strerror(errno));
            goto fail;
        }
        srv->http_port = bound_port(evhttp_bound_socket_get_fd(hs));
        evhttp_set_allowed_methods(srv->http, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD);
        evhttp_set_timeout(srv->http, 10);
        evhttp_set_cb(srv->http, "/healthz", on_healthz, srv);
        evhttp_set_cb(srv->http, "/metrics", on_metrics, srv);
        evhttp_set_gencb(srv->http, on_http_other, srv);
    } else {
        srv->http_port = -1;
    }

    srv->sig_int = evsignal_new(srv->base, SIGINT, on_signal, srv);
    srv->sig_term = evsignal_new(srv->base, SIGTERM, on_signal, srv);
    srv->sig_hup = evsignal_new(srv->base, SIGHUP, on_signal, srv);
    srv->stop_ev = event_new(srv->base, -1, 0, on_stop, srv);
    if (!srv->sig_int || !srv->sig_term || !srv->sig_hup || !srv->stop_ev)
        goto fail;
    event_add(srv->sig_int, NULL);
    event_add(srv->sig_term, NULL);
    event_add(srv->sig_hup, NULL);

    /* workers */
    srv->nworkers = cfg->workers > 0 ? cfg->workers : (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (srv->nworkers < 1)
        srv->nworkers = 1;
    if (!(srv->workers = rk_calloc((size_t)srv->nworkers, sizeof(*srv->workers))))
        goto fail;
    for (int i = 0; i < srv->nworkers; i++) {
        struct svc_worker *w = &srv->workers[i];
        w->id = i;
        w->srv = srv;
        w->cap = cfg->max_connections;
        pthread_mutex_init(&w->lock, NULL);
        if (!(w->base = event_base_new()) || !(w->pending = rk_calloc((size_t)w->cap, sizeof(int))))
            goto fail;
        w->notify_ev = event_new(w->base, -1, 0, worker_on_notify, w);
        w->exit_ev = event_new(w->base, -1, 0, worker_on_exit, w);
        if (!w->notify_ev || !w->exit_ev)
            goto fail;
        if ((st = svc_meta_open(w)) != RK_OK) {
            rk_error_set(st, "worker %d: asynchronous Redis client: %s", i, rk_error_msg());
            goto fail;
        }
        st = RK_ERR_NOMEM;
    }
    if (srv->workers[0].meta)
        RK_INFO("chunk metadata calls (LOOKUP, DELETE, PUT_KV, PUT_CHUNK, prompt chunks) on the workers' event loops (redis-async)");
    svc_metrics_set_collector(collect_store, srv);
    RK_INFO("ragkvd %s: data dir %s, %d workers, model %s", RAGKV_VERSION, cfg->data_dir,
            srv->nworkers, cfg->model[0] ? cfg->model : "(none)");
    *out = srv;
    return RK_OK;
fail:
    svc_server_close(srv);
    return st;
}

rk_status svc_server_run(svc_server *srv)
{
    int started = 0;
    rk_status st = RK_OK;
    for (; started < srv->nworkers; started++) {
        struct svc_worker *w = &srv->workers[started];
        if (pthread_create(&w->thread, NULL, worker_main, w) != 0) {
            st = rk_error_set(RK_ERR_INTERNAL, "could not start worker %d", started);
            break;
        }
    }
    if (st == RK_OK) {
        RK_INFO("listening: protocol %s:%d, http %s:%d", srv->cfg.bind, srv->port, srv->cfg.bind,
                srv->http_port);
        event_base_dispatch(srv->base);
    }
    /* stop accepting first, then let every worker close its connections */
    if (srv->listener) {
        evconnlistener_free(srv->listener);
        srv->listener = NULL;
    }
    /* no new submissions (requests still arriving are answered RK_ERR_SHUTDOWN), then pool jobs
     * drain, then the executor ends every generation (each notifying its worker), before the
     * workers stop */
    pthread_rwlock_wrlock(&srv->submit_gate);
    srv->draining = true;
    pthread_rwlock_unlock(&srv->submit_gate);
    rk_pool_free(srv->io_pool);
    srv->io_pool = NULL;
    svc_exec_stop(srv->exec);
    srv->exec = NULL;
    for (int i = 0; i < started; i++)
        event_active(srv->workers[i].exit_ev, EV_READ, 0);
    for (int i = 0; i < started; i++)
        pthread_join(srv->workers[i].thread, NULL);
    RK_INFO("stopped cleanly");
    return st;
}

void svc_server_stop(svc_server *srv)
{
    event_active(srv->stop_ev, EV_READ, 0);
}

int svc_server_port(const svc_server *srv) { return srv->port; }
int svc_server_http_port(const svc_server *srv) { return srv->http_port; }

void svc_server_close(svc_server *srv)
{
    if (!srv)
        return;
    if (srv->listener)
        evconnlistener_free(srv->listener);
    if (srv->http)
        evhttp_free(srv->http);
    for (int i = 0; srv->workers && i < srv->nworkers; i++) {
        struct svc_worker *w = &srv->workers[i];
        svc_meta_close(w); /* a worker that never ran */
        if (w->notify_ev)
            event_free(w->notify_ev);
        if (w->exit_ev)
            event_free(w->exit_ev);
        if (w->base)
            event_base_free(w->base);
        pthread_mutex_destroy(&w->lock);
        rk_free(w->pending);
    }
    rk_free(srv->workers);
    struct event *evs[] = {srv->sig_int, srv->sig_term, srv->sig_hup, srv->stop_ev};
    for (size_t i = 0; i < sizeof(evs) / sizeof(evs[0]); i++)
        if (evs[i])
            event_free(evs[i]);
    if (srv->base)
        event_base_free(srv->base);
    svc_metrics_set_collector(NULL, NULL);
    rk_pool_free(srv->io_pool);
    svc_exec_stop(srv->exec);
    svc_cluster_close(srv->cluster); /* after every job that might call a peer */
    cc_store_close(srv->store);
    svc_devcache_close(srv->devcache); /* after the store (it drops entries), before the backend */
    eng_backend_free(srv->backend);
    rk_pool_free(srv->codec_pool);
    eng_model_close(srv->model);
    svc_limits_free(srv->tlimits);
    svc_auth_close(srv->auth);
    if (srv->lock_fd >= 0)
        close(srv->lock_fd); /* releases the flock */
    pthread_rwlock_destroy(&srv->submit_gate);
    pthread_mutex_destroy(&srv->usage_mu);
    pthread_cond_destroy(&srv->usage_cv);
    rk_free(srv);
}
