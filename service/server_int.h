/*
 * server_int.h — private to service/: the daemon's objects, shared by server.c (threads,
 * listeners, HTTP, signals) and conn.c (one protocol connection's state machine).
 */
#ifndef RAGKV_SERVER_INT_H
#define RAGKV_SERVER_INT_H

#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/listener.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>

#include "ragkv/blend.h"
#include "ragkv/service.h"
#include "ragkv/svc_auth.h"
#include "ragkv/svc_request.h"

struct svc_conn {
    struct bufferevent *bev;   /* owns the socket */
    struct svc_worker *w;      /* owning worker; only its thread touches the conn */
    struct svc_conn *prev, *next; /* the worker's list of live connections */
    struct event *frame_timer; /* armed while a frame is partly received (slowloris guard) */
    bool authed;               /* AUTH succeeded: larger frames and data operations allowed */
    bool admin;                /* authenticated with the admin credential */
    bool peer_node;            /* authenticated with the cluster secret: PEER_* only */
    bool loopback;             /* the peer is on a loopback address */
    char peer[64];             /* peer address, for logs and failed-auth limiting */
    bool closing;              /* framing lost or shutting down: close once output drains */
    bool stop_after_write;     /* SHUTDOWN: stop the server once the reply is written */
    char tenant[SVC_NAME_MAX]; /* the authenticated tenant ("" before AUTH) */
    struct svc_gen *gens;      /* generations in flight for this connection */
};

struct svc_worker {
    int id;
    struct svc_server *srv;
    pthread_t thread;
    struct event_base *base;   /* this worker's loop; connections live here */
    struct event *notify_ev;   /* activated by the listener when fds are queued */
    struct event *exit_ev;     /* activated to stop the loop */
    pthread_mutex_t lock;      /* protects pending, npending */
    int *pending;              /* accepted fds not yet picked up (cap max_connections) */
    int npending, cap;
    struct svc_conn *conns;    /* live connections (worker thread only) */
    struct cc_redis_async *meta; /* metadata calls on this loop (meta.h); NULL: the pool's path */
};

struct svc_server {
    svc_config cfg;
    /* Read-held by a worker while it hands a job to io_pool or exec; svc_server_run write-holds
     * it to set draining before it frees them, so no submission races the teardown (a request
     * that arrives during shutdown is answered RK_ERR_SHUTDOWN). */
    pthread_rwlock_t submit_gate;
    bool draining;                      /* guarded by submit_gate */
    struct event_base *base;            /* listener + HTTP + signals (the run() thread) */
    struct evconnlistener *listener;
    struct evhttp *http;
    struct event *sig_int, *sig_term, *sig_hup;
    struct event *stop_ev;              /* activated by svc_server_stop from any thread */
    struct svc_worker *workers;         /* (nworkers) */
    int nworkers;
    int next_worker;                    /* round-robin cursor (listener thread only) */
    int port, http_port;                /* bound ports */
    int lock_fd;                        /* flock()ed data_dir/LOCK, -1 when none */
    svc_request_limits limits;          /* caps on decoded requests */
    svc_auth *auth;                     /* tenant and admin credentials */
    struct eng_model *model;            /* the served model; NULL when none is configured */
    struct eng_backend *backend;        /* its compute backend, driven by exec only */
    struct svc_exec *exec;              /* the compute executor; NULL without a model */
    struct cc_store *store;             /* chunk caches, tenants' usage and quotas (thread-safe) */
    struct rk_pool *codec_pool;         /* threads for encoding and decoding chunk KV */
    struct rk_pool *io_pool;            /* GET_KV / PUT_KV jobs (store I/O, decoding), off the workers */
    struct svc_limits *tlimits;         /* per-tenant request rate and concurrent jobs */
    struct svc_cluster *cluster;        /* membership and placement; NULL on a single node */
    struct svc_devcache *devcache;      /* the device tier (device-budget-mb); NULL when off */
    /* /metrics' tenant usage gauges, read by a pool job (the metadata may be a stalled Redis):
     * a scrape starts one unless one runs, and waits for it a bounded time */
    pthread_mutex_t usage_mu;
    pthread_cond_t usage_cv;
    bool usage_running;                 /* guarded by usage_mu */
    uint64_t usage_done;                /* refreshes finished; guarded by usage_mu */
    uint32_t max_frame;                 /* payload cap after AUTH, bytes */
    bl_select blend_select;             /* cacheblend prompts' ranking (config blend-select) */
    atomic_int active;                  /* live protocol connections */
    uint64_t start_ns;
};

/* Series the server and its connections update (registered once, process-wide). */
struct svc_server_metrics {
    svc_metric *accepted, *refused, *active, *http_requests, *uptime, *build;
    svc_metric *requests, *errors, *protocol_errors, *timeouts;
};
extern struct svc_server_metrics svc_m;

/* conn.c: adopt an accepted socket on worker w (worker thread). false on no memory (the
 * socket is then closed). */
bool svc_conn_open(struct svc_worker *w, int sock);

/* conn.c: close and free a connection now (worker thread). */
void svc_conn_free(struct svc_conn *c);

#endif
