/* cluster.c — membership in Redis, rendezvous placement, and peer calls (see cluster.h). */
#define RK_LOG_COMPONENT "cluster"
#include "cluster.h"

#include <hiredis/hiredis.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "chunk.h"
#include "ragkv/alloc.h"
#include "ragkv/client.h"
#include "ragkv/clock.h"
#include "ragkv/hash.h"
#include "ragkv/log.h"
#include "ragkv/proto.h"
#include "ragkv/redis_sentinel.h"
#include "ragkv/service.h"
#include "ragkv/svc_request.h"

#define MAX_OWNERS 16
#define IDLE_CONNS 4 /* kept per peer; more callers at once open (and then close) their own */
#define HINTS 8192    /* direct-mapped memory of blobs found in the local store */

/* A node this one has seen in the membership set. Never removed (a cluster has few nodes and
 * a dead one may come back); `live` says whether the last listing had it. */
struct peer {
    char id[64];                     /* node id */
    char addr[128];                  /* advertised HOST:PORT */
    bool live;                       /* in the last membership listing */
    uint64_t down_until_ns;          /* skipped until then after a failed call */
    ragkv_conn *idle[IDLE_CONNS];    /* authenticated connections not in use */
    int nidle;
};

struct svc_cluster {
    char id[64], addr[128], secret[256];
    char host[128];                  /* the metadata Redis (rewritten by Sentinel answers) */
    int port;
    char sentinels[256], master[64], prefix[64];
    int replicas, heartbeat_ms, ttl_ms, peer_timeout_ms;
    pthread_t thread;
    bool started;
    pthread_mutex_t mu;              /* guards peers, npeers, cap, stop */
    pthread_cond_t cv;               /* wakes the heartbeat thread to stop */
    bool stop;
    struct peer *peers;              /* (npeers) every node seen */
    size_t npeers, cap;
    redisContext *rc;                /* heartbeat thread only (and open/close around it) */
    _Atomic uint64_t hints[HINTS];   /* hint_of(key, csum) of blobs seen in the local store, so
                                        local_has reads a blob once, not on every request */
};

static struct {
    svc_metric *nodes, *gets, *get_errors, *puts, *put_errors, *served;
} km;

static void cluster_metrics(void)
{
    km.nodes = svc_metric_get(SVC_GAUGE, "cluster_nodes", "", "live nodes in the cluster as this node sees them");
    km.gets = svc_metric_get(SVC_COUNTER, "cluster_remote_gets_total", "", "chunk blobs fetched from owner nodes");
    km.get_errors = svc_metric_get(SVC_COUNTER, "cluster_remote_get_errors_total", "",
                                   "fetches from an owner that failed (unreachable, timeout, bad checksum)");
    km.puts = svc_metric_get(SVC_COUNTER, "cluster_remote_puts_total", "", "chunk blobs stored on owner nodes");
    km.put_errors = svc_metric_get(SVC_COUNTER, "cluster_remote_put_errors_total", "", "stores on an owner that failed");
    km.served = svc_metric_get(SVC_COUNTER, "cluster_peer_requests_total", "", "PEER_GET and PEER_PUT served to other nodes");
}

/* ---- membership ------------------------------------------------------------------------ */

/* Caller holds mu. The peer named id, added when new; NULL on no memory. */
static struct peer *peer_find(svc_cluster *cl, const char *id, bool add)
{
    for (size_t i = 0; i < cl->npeers; i++)
        if (strcmp(cl->peers[i].id, id) == 0)
            return &cl->peers[i];
    if (!add)
        return NULL;
    if (cl->npeers == cl->cap) {
        size_t cap = cl->cap ? 2 * cl->cap : 8;
        struct peer *p = rk_realloc(cl->peers, cap * sizeof(*p));
        if (!p)
            return NULL;
        cl->peers = p;
        cl->cap = cap;
    }
    struct peer *p = &cl->peers[cl->npeers++];
    memset(p, 0, sizeof(*p));
    snprintf(p->id, sizeof(p->id), "%s", id);
    return p;
}

/* Caller holds mu. */
static void peer_drop_conns(struct peer *p)
{
    for (int i = 0; i < p->nidle; i++)
        ragkv_close(p->idle[i]);
    p->nidle = 0;
}

static void key_of(const svc_cluster *cl, char *buf, size_t n, const char *id)
{
    if (id)
        snprintf(buf, n, "%scluster:node:%s", cl->prefix, id);
    else
        snprintf(buf, n, "%scluster:nodes", cl->prefix);
}

/* Heartbeat thread (or open). Refresh our key, then list the live nodes into peers.
 * On a Redis error the connection is dropped (the next beat reconnects, asking the Sentinels
 * again) and the last listing stays in force. */
static rk_status beat(svc_cluster *cl)
{
    if (!cl->rc) {
        rk_status s = cc_redis_connect_primary(cl->sentinels, cl->master, cl->host, sizeof(cl->host), &cl->port,
                                               cl->peer_timeout_ms, &cl->rc);
        if (s != RK_OK)
            return s;
    }
    char kn[256], ks[256];
    key_of(cl, kn, sizeof(kn), cl->id);
    key_of(cl, ks, sizeof(ks), NULL);
    redisAppendCommand(cl->rc, "SET %s %s PX %d", kn, cl->addr, cl->ttl_ms);
    redisAppendCommand(cl->rc, "SADD %s %s", ks, cl->id);
    redisAppendCommand(cl->rc, "SMEMBERS %s", ks);
    redisReply *rep[3] = {NULL, NULL, NULL};
    bool ok = true;
    for (int i = 0; i < 3; i++)
        ok = redisGetReply(cl->rc, (void **)&rep[i]) == REDIS_OK && rep[i] && ok;
    ok = ok && rep[0]->type == REDIS_REPLY_STATUS && rep[2]->type == REDIS_REPLY_ARRAY;
    redisReply *vals = NULL;
    size_t n = ok ? rep[2]->elements : 0;
    if (ok && n) { /* MGET every member's key: nil = expired = dead */
        const char **argv = rk_calloc(n + 1, sizeof(char *));
        size_t *lens = rk_calloc(n + 1, sizeof(size_t));
        char (*keys)[256] = rk_calloc(n, 256);
        if (argv && lens && keys) {
            argv[0] = "MGET";
            lens[0] = 4;
            for (size_t i = 0; i < n; i++) {
                key_of(cl, keys[i], 256, rep[2]->element[i]->str);
                argv[i + 1] = keys[i];
                lens[i + 1] = strlen(keys[i]);
            }
            vals = redisCommandArgv(cl->rc, (int)n + 1, argv, lens);
        }
        rk_free(argv);
        rk_free(lens);
        rk_free(keys);
        ok = vals && vals->type == REDIS_REPLY_ARRAY && vals->elements == n;
    }
    if (ok) {
        int live = 0;
        pthread_mutex_lock(&cl->mu);
        for (size_t i = 0; i < cl->npeers; i++)
            cl->peers[i].live = false;
        for (size_t i = 0; i < n; i++) {
            const redisReply *id = rep[2]->element[i], *v = vals->element[i];
            if (id->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING)
                continue;
            struct peer *p = peer_find(cl, id->str, true);
            if (!p)
                continue;
            if (strcmp(p->addr, v->str) != 0) { /* new, or restarted elsewhere */
                peer_drop_conns(p);
                snprintf(p->addr, sizeof(p->addr), "%s", v->str);
                p->down_until_ns = 0;
            }
            p->live = true;
            live++;
        }
        pthread_mutex_unlock(&cl->mu);
        svc_metric_set(km.nodes, live);
        for (size_t i = 0; i < n; i++) /* forget the dead in the set (their keys expired) */
            if (rep[2]->element[i]->type == REDIS_REPLY_STRING && vals->element[i]->type == REDIS_REPLY_NIL)
                freeReplyObject(redisCommand(cl->rc, "SREM %s %s", ks, rep[2]->element[i]->str));
    }
    for (int i = 0; i < 3; i++)
        if (rep[i])
            freeReplyObject(rep[i]);
    if (vals)
        freeReplyObject(vals);
    if (ok && !cl->rc->err)
        return RK_OK;
    rk_status s = rk_error_set(RK_ERR_UNAVAILABLE, "cluster heartbeat to redis %s:%d: %s", cl->host, cl->port,
                               cl->rc->err ? cl->rc->errstr : "unexpected reply");
    redisFree(cl->rc);
    cl->rc = NULL;
    return s;
}

static void *heartbeat_main(void *arg)
{
    svc_cluster *cl = arg;
    bool failing = false;
    pthread_mutex_lock(&cl->mu);
    while (!cl->stop) {
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        uint64_t ns = (uint64_t)until.tv_nsec + (uint64_t)cl->heartbeat_ms * 1000000ull;
        until.tv_sec += (time_t)(ns / 1000000000ull);
        until.tv_nsec = (long)(ns % 1000000000ull);
        pthread_cond_timedwait(&cl->cv, &cl->mu, &until);
        if (cl->stop)
            break;
        pthread_mutex_unlock(&cl->mu);
        rk_status s = beat(cl);
        if (s != RK_OK && !failing)
            RK_WARN("%s", rk_error_msg());
        else if (s == RK_OK && failing)
            RK_INFO("cluster heartbeat restored");
        failing = s != RK_OK;
        pthread_mutex_lock(&cl->mu);
    }
    pthread_mutex_unlock(&cl->mu);
    return NULL;
}

static bool id_ok(const char *id)
{
    return *id && strlen(id) < 64 &&
           strspn(id, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:-") == strlen(id);
}

rk_status svc_cluster_open(const svc_cluster_cfg *cfg, svc_cluster **out)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, cluster_metrics);
    if (cfg->node_id && *cfg->node_id && !id_ok(cfg->node_id))
        return rk_error_set(RK_ERR_INVALID, "node-id '%s': 1-63 characters of A-Z a-z 0-9 . _ : -", cfg->node_id);
    if (!cfg->secret || strlen(cfg->secret) < 16 || strlen(cfg->secret) >= 256)
        return rk_error_set(RK_ERR_INVALID, "the cluster secret must be 16 to 255 characters");
    svc_cluster *cl = rk_calloc(1, sizeof(*cl));
    if (!cl)
        return RK_ERR_NOMEM;
    snprintf(cl->id, sizeof(cl->id), "%s", cfg->node_id ? cfg->node_id : "");
    snprintf(cl->addr, sizeof(cl->addr), "%s", cfg->advertise ? cfg->advertise : "");
    snprintf(cl->secret, sizeof(cl->secret), "%s", cfg->secret);
    snprintf(cl->host, sizeof(cl->host), "%s", cfg->redis_host ? cfg->redis_host : "");
    cl->port = cfg->redis_port;
    snprintf(cl->sentinels, sizeof(cl->sentinels), "%s", cfg->sentinels ? cfg->sentinels : "");
    snprintf(cl->master, sizeof(cl->master), "%s", cfg->master ? cfg->master : "ragkv");
    snprintf(cl->prefix, sizeof(cl->prefix), "%s", cfg->prefix ? cfg->prefix : "rk:");
    cl->replicas = cfg->replicas < 1 ? 1 : cfg->replicas > MAX_OWNERS ? MAX_OWNERS : cfg->replicas;
    cl->heartbeat_ms = cfg->heartbeat_ms > 0 ? cfg->heartbeat_ms : 1000;
    cl->ttl_ms = cfg->ttl_ms > cl->heartbeat_ms ? cfg->ttl_ms : 3 * cl->heartbeat_ms;
    cl->peer_timeout_ms = cfg->peer_timeout_ms > 0 ? cfg->peer_timeout_ms : 1000;
    pthread_mutex_init(&cl->mu, NULL);
    pthread_cond_init(&cl->cv, NULL);
    *out = cl;
    return RK_OK;
}

rk_status svc_cluster_start(svc_cluster *cl, const char *advertise)
{
    char host[128];
    int port;
    if (!cl->addr[0])
        snprintf(cl->addr, sizeof(cl->addr), "%s", advertise);
    if (cc_redis_parse_addr(cl->addr, strlen(cl->addr), host, sizeof(host), &port) != RK_OK ||
        strcmp(host, "0.0.0.0") == 0 || strcmp(host, "::") == 0)
        return rk_error_set(RK_ERR_INVALID, "advertise: '%s' is not an address peers can reach (set advertise)",
                            cl->addr);
    if (!cl->id[0])
        snprintf(cl->id, sizeof(cl->id), "%s", cl->addr);
    if (!id_ok(cl->id))
        return rk_error_set(RK_ERR_INVALID, "node id '%s': 1-63 characters of A-Z a-z 0-9 . _ : -", cl->id);
    if (beat(cl) != RK_OK)
        RK_WARN("%s (the heartbeat keeps trying)", rk_error_msg());
    if (pthread_create(&cl->thread, NULL, heartbeat_main, cl) != 0)
        return rk_error_set(RK_ERR_NOMEM, "cluster heartbeat thread");
    cl->started = true;
    RK_INFO("node %s at %s joined the cluster (replicas %d)", cl->id, cl->addr, cl->replicas);
    return RK_OK;
}

void svc_cluster_close(svc_cluster *cl)
{
    if (!cl)
        return;
    if (cl->started) {
        pthread_mutex_lock(&cl->mu);
        cl->stop = true;
        pthread_cond_signal(&cl->cv);
        pthread_mutex_unlock(&cl->mu);
        pthread_join(cl->thread, NULL);
    }
    if (cl->rc) { /* leave now rather than after the TTL */
        char kn[256], ks[256];
        key_of(cl, kn, sizeof(kn), cl->id);
        key_of(cl, ks, sizeof(ks), NULL);
        redisReply *r = redisCommand(cl->rc, "DEL %s", kn);
        if (r)
            freeReplyObject(r);
        if (!cl->rc->err && (r = redisCommand(cl->rc, "SREM %s %s", ks, cl->id)))
            freeReplyObject(r);
        redisFree(cl->rc);
    }
    for (size_t i = 0; i < cl->npeers; i++)
        peer_drop_conns(&cl->peers[i]);
    rk_free(cl->peers);
    pthread_mutex_destroy(&cl->mu);
    pthread_cond_destroy(&cl->cv);
    memset(cl->secret, 0, sizeof(cl->secret));
    rk_free(cl);
}

bool svc_cluster_is_secret(const svc_cluster *cl, const char *token)
{
    if (!cl || !token)
        return false;
    size_t n = strlen(cl->secret);
    if (strlen(token) != n)
        return false;
    unsigned char d = 0;
    for (size_t i = 0; i < n; i++)
        d |= (unsigned char)(cl->secret[i] ^ token[i]);
    return d == 0;
}

void svc_cluster_nodes_reply(svc_cluster *cl, rk_buf *out)
{
    if (!cl) {
        rk_buf_put_u32(out, 0);
        rk_buf_put_u32(out, 0);
        return;
    }
    pthread_mutex_lock(&cl->mu);
    uint32_t n = 0;
    for (size_t i = 0; i < cl->npeers; i++)
        n += cl->peers[i].live;
    rk_buf_put_u32(out, (uint32_t)cl->replicas);
    rk_buf_put_u32(out, n);
    for (size_t i = 0; i < cl->npeers; i++)
        if (cl->peers[i].live) {
            rk_buf_put_str(out, cl->peers[i].id);
            rk_buf_put_str(out, cl->peers[i].addr);
        }
    pthread_mutex_unlock(&cl->mu);
}

/* ---- placement ------------------------------------------------------------------------- */

/* The owners of key: live nodes not marked down, ranked; at most replicas of them into own.
 * 0 when the listing is empty (not registered yet: serve locally). */
static size_t owners_of(svc_cluster *cl, const cc_key *key, ragkv_node *own, size_t limit)
{
    uint64_t now = rk_now_ns();
    ragkv_node *all = NULL;
    size_t n = 0;
    pthread_mutex_lock(&cl->mu);
    if (cl->npeers && (all = rk_malloc(cl->npeers * sizeof(*all))))
        for (size_t i = 0; i < cl->npeers; i++) {
            const struct peer *p = &cl->peers[i];
            bool self = strcmp(p->id, cl->id) == 0;
            if (p->live && (self || p->down_until_ns <= now)) {
                snprintf(all[n].id, sizeof(all[n].id), "%s", p->id);
                snprintf(all[n].addr, sizeof(all[n].addr), "%s", p->addr);
                n++;
            }
        }
    pthread_mutex_unlock(&cl->mu);
    ragkv_rank_nodes(all, n, key->b);
    if (n > limit)
        n = limit;
    if (n)
        memcpy(own, all, n * sizeof(*own));
    rk_free(all);
    return n;
}

static bool is_self(const svc_cluster *cl, const ragkv_node *nd)
{
    return strcmp(nd->id, cl->id) == 0;
}

/* A call failed below the protocol (refused, reset, timed out): skip the node for one TTL;
 * by then the membership has dropped it, or it answers again. */
static void mark_down(svc_cluster *cl, const char *id)
{
    pthread_mutex_lock(&cl->mu);
    struct peer *p = peer_find(cl, id, false);
    if (p) {
        p->down_until_ns = rk_now_ns() + (uint64_t)cl->ttl_ms * 1000000ull;
        peer_drop_conns(p);
    }
    pthread_mutex_unlock(&cl->mu);
}

/* One request to a peer and its final response. *transport tells a failure of the node
 * (connect, I/O, timeout, bad secret: try another owner) from the peer's answer (an error
 * status it chose: authoritative). */
static rk_status peer_call(svc_cluster *cl, const ragkv_node *nd, uint16_t op, const rk_buf *req, uint8_t **resp,
                           uint32_t *rlen, bool *transport)
{
    *transport = true;
    ragkv_conn *c = NULL;
    pthread_mutex_lock(&cl->mu);
    struct peer *p = peer_find(cl, nd->id, false);
    if (p && p->nidle)
        c = p->idle[--p->nidle];
    pthread_mutex_unlock(&cl->mu);
    rk_status s = RK_OK;
    char why[200];
    if (!c) {
        char host[128];
        int port;
        char tenant[SVC_NAME_MAX];
        if ((s = cc_redis_parse_addr(nd->addr, strlen(nd->addr), host, sizeof(host), &port)) != RK_OK ||
            (s = ragkv_connect(host, port, cl->peer_timeout_ms, &c)) != RK_OK ||
            (s = ragkv_auth(c, cl->secret, tenant, sizeof(tenant))) != RK_OK) {
            snprintf(why, sizeof(why), "%s", rk_error_msg()); /* rk_error_set reuses its buffer */
            ragkv_close(c);
            return rk_error_set(s, "peer %s (%s): %s", nd->id, nd->addr, why);
        }
    }
    rk_proto_hdr h;
    uint8_t *pl = NULL;
    if ((s = ragkv_send_frame(c, op, 1, req->data, (uint32_t)req->len)) == RK_OK) {
        do {
            rk_free(pl);
            pl = NULL;
            s = ragkv_recv_frame(c, &h, &pl);
        } while (s == RK_OK && h.type != RK_PT_RESPONSE);
    }
    if (s != RK_OK) {
        snprintf(why, sizeof(why), "%s", rk_error_msg());
        ragkv_close(c);
        return rk_error_set(s, "peer %s (%s): %s", nd->id, nd->addr, why);
    }
    *transport = false;
    pthread_mutex_lock(&cl->mu);
    p = peer_find(cl, nd->id, false);
    if (p && p->nidle < IDLE_CONNS && strcmp(p->addr, nd->addr) == 0) {
        p->idle[p->nidle++] = c;
        c = NULL;
    }
    pthread_mutex_unlock(&cl->mu);
    ragkv_close(c);
    if (h.status != RK_OK) {
        char msg[256] = "";
        rk_reader r = rk_reader_make(pl, h.length);
        rk_reader_str(&r, msg, sizeof(msg));
        rk_free(pl);
        return rk_error_set((rk_status)h.status, "peer %s: %s", nd->id, msg);
    }
    *resp = pl;
    *rlen = h.length;
    return RK_OK;
}

/* PEER_GET from one owner into blob/rec. */
static rk_status peer_get(svc_cluster *cl, const ragkv_node *nd, const char *tenant, const cc_key *key, cc_buf **blob,
                          cc_record *rec, bool *transport)
{
    rk_buf req = RK_BUF_INIT;
    rk_buf_put_str(&req, tenant);
    rk_buf_append(&req, key->b, CC_KEY_BYTES);
    uint8_t *p = NULL;
    uint32_t n = 0;
    rk_status s = req.failed ? RK_ERR_NOMEM : peer_call(cl, nd, RK_OP_PEER_GET, &req, &p, &n, transport);
    rk_buf_free(&req);
    if (s != RK_OK)
        return s;
    rk_reader r = rk_reader_make(p, n);
    rk_reader_str(&r, rec->ns, sizeof(rec->ns));
    rk_reader_str(&r, rec->model, sizeof(rec->model));
    uint64_t csum = rk_reader_u64(&r);
    uint32_t len = rk_reader_u32(&r);
    const uint8_t *data = rk_reader_take(&r, len);
    if (!data || r.short_read || rk_reader_left(&r) != 0) {
        s = rk_error_set(RK_ERR_PROTOCOL, "peer %s: PEER_GET reply malformed", nd->id);
    } else if (rk_xxh3_64(data, len) != csum) {
        s = rk_error_set(RK_ERR_CORRUPT, "peer %s: chunk blob failed its checksum in transit", nd->id);
    } else if (!(*blob = cc_buf_copy(data, len))) {
        s = RK_ERR_NOMEM;
    } else {
        rec->key = *key;
        rec->size = len;
        rec->csum = csum;
    }
    *transport = s == RK_ERR_PROTOCOL || s == RK_ERR_CORRUPT; /* a broken answer: try another */
    rk_free(p);
    return s;
}

/* Does this node's blob store hold key's blob (the version the shared metadata names)?
 * RK_OK: yes (rec gets the record); RK_ERR_NOT_FOUND: no such chunk anywhere (no metadata);
 * RK_ERR_UNAVAILABLE: the chunk exists but its blob is not here (rec gets the record); another
 * error: the metadata store failed. Asked before a local read because cc_store_get repairs
 * metadata whose blob is missing, and in a cluster "missing here" may only mean "held by
 * another node". */
static uint64_t hint_of(const cc_key *key, uint64_t csum)
{
    uint64_t h;
    memcpy(&h, key->b, sizeof(h));
    return (h ^ (csum * 0x9E3779B97F4A7C15ull)) | 1; /* never 0, the empty slot */
}

static rk_status local_has(svc_cluster *cl, cc_store *st, const cc_key *key, cc_record *rec)
{
    rk_status rs = RK_ERR_NOT_FOUND;
    rk_status s = cc_metastore_get(cc_store_metastore(st), key, 1, rec, &rs);
    if (s != RK_OK)
        return s;
    if (rs != RK_OK)
        return rs == RK_ERR_NOT_FOUND ? RK_ERR_NOT_FOUND : rs;
    /* exact to the checksum: a blob seen here is this version's blob (a chunk deleted and put
     * again with other bytes has another checksum) */
    uint64_t h = hint_of(key, rec->csum);
    if (cl && atomic_load(&cl->hints[h % HINTS]) == h)
        return RK_OK;
    uint8_t bk[CC_KEY_BYTES + 8];
    memcpy(bk, key->b, CC_KEY_BYTES);
    rk_put_le64(bk + CC_KEY_BYTES, rec->csum);
    cc_buf *b = NULL;
    if (cc_blobstore_get(cc_store_blobstore(st), CC_SPACE_CHUNKS, bk, sizeof(bk), &b) != RK_OK)
        return rk_error_set(RK_ERR_UNAVAILABLE, "chunk not held by this node");
    cc_buf_release(b);
    if (cl)
        atomic_store(&cl->hints[h % HINTS], h);
    return RK_OK;
}

/* Read repair: an owner that lacked a chunk another owner served keeps a copy (the same
 * bytes, so the store's duplicate put keeps it beside the existing metadata). */
static void keep_copy(cc_store *st, const cc_record *meta, const cc_buf *blob)
{
    int32_t *tokens = NULL;
    uint32_t n = 0;
    const uint8_t *cont;
    size_t clen;
    if (svc_chunk_unwrap(blob->data, blob->len, &tokens, &n, &cont, &clen) != RK_OK)
        return;
    cc_put_args a = {.model = meta->model, .tokens = tokens, .ntokens = n, .codec = meta->codec,
                     .level = meta->level, .blob = blob->data, .blob_len = blob->len, .cost = meta->cost};
    cc_key k;
    if (cc_store_put(st, meta->ns, &a, &k) != RK_OK)
        RK_WARN("keeping a copy of a chunk fetched from another owner: %s", rk_error_msg());
    rk_free(tokens);
}

rk_status svc_cluster_get(svc_cluster *cl, cc_store *st, const char *tenant, const cc_key *key, cc_buf **blob,
                          cc_record *rec)
{
    if (!cl)
        return cc_store_get(st, tenant, key, blob, rec);
    /* the owners, then as many nodes again in rank order: after a join or a leave the
     * chunk is usually one rank away from where it was put */
    ragkv_node own[2 * MAX_OWNERS];
    size_t n = owners_of(cl, key, own, 2 * (size_t)cl->replicas), others = 0;
    bool owner = n == 0; /* not registered yet: everything is local */
    for (size_t i = 0; i < n; i++) {
        if (is_self(cl, &own[i]))
            owner = owner || i < (size_t)cl->replicas;
        else
            own[others++] = own[i];
    }
    cc_record meta;
    cc_record_init(&meta);
    rk_status hs = local_has(cl, st, key, &meta);
    if (hs == RK_OK || hs == RK_ERR_NOT_FOUND || others == 0) {
        cc_record_clear(&meta);
        return cc_store_get(st, tenant, key, blob, rec); /* a miss here repairs the metadata */
    }
    cc_record tmp;
    cc_record_init(&tmp);
    rk_status s = RK_ERR_UNAVAILABLE;
    size_t unreachable = 0;
    for (size_t i = 0; i < others; i++) {
        bool transport = false;
        s = peer_get(cl, &own[i], tenant, key, blob, rec ? rec : &tmp, &transport);
        if (s == RK_OK) {
            svc_metric_add(km.gets, 1);
            if (owner && hs == RK_ERR_UNAVAILABLE)
                keep_copy(st, &meta, *blob);
            cc_record_clear(&meta);
            return s;
        }
        if (transport) {
            svc_metric_add(km.get_errors, 1);
            RK_WARN("%s; trying the next node", rk_error_msg());
            mark_down(cl, own[i].id);
            unreachable++;
        } else if (s == RK_ERR_NOT_FOUND || s == RK_ERR_DENIED) {
            cc_record_clear(&meta);
            return s; /* authoritative: no such chunk, or not readable by tenant */
        } /* else: that node does not hold it, or its metadata store is away: ask the next */
    }
    cc_record_clear(&meta);
    if (hs != RK_ERR_UNAVAILABLE) /* our own metadata read failed: say so, decide nothing */
        return rk_error_set(hs, "chunk metadata unavailable");
    if (owner) /* nobody else holds it: the local answer (a miss, and the metadata repaired) */
        return cc_store_get(st, tenant, key, blob, rec);
    if (unreachable)
        return rk_error_set(RK_ERR_UNAVAILABLE, "no node holding the chunk is reachable (%zu tried)", others);
    return rk_error_set(RK_ERR_NOT_FOUND, "no node holds the chunk");
}

/* PEER_PUT of a's blob to one owner. */
static rk_status peer_put(svc_cluster *cl, const ragkv_node *nd, const char *tenant, const cc_key *key,
                          const cc_put_args *a, bool *transport)
{
    rk_buf req = RK_BUF_INIT;
    rk_buf_put_str(&req, tenant);
    rk_buf_append(&req, key->b, CC_KEY_BYTES);
    rk_buf_put_u16(&req, a->codec);
    rk_buf_put_u16(&req, a->level);
    rk_buf_put_f32(&req, (float)a->cost);
    rk_buf_put_u32(&req, (uint32_t)a->blob_len);
    rk_buf_append(&req, a->blob, a->blob_len);
    uint8_t *p = NULL;
    uint32_t n = 0;
    *transport = false;
    rk_status s = req.failed ? RK_ERR_NOMEM : peer_call(cl, nd, RK_OP_PEER_PUT, &req, &p, &n, transport);
    rk_buf_free(&req);
    rk_free(p);
    return s;
}

rk_status svc_cluster_put(svc_cluster *cl, cc_store *st, const char *tenant, const cc_put_args *a, cc_key *key)
{
    if (!cl)
        return cc_store_put(st, tenant, a, key);
    cc_key k;
    rk_status s = cc_key_compute(a->model, a->ns ? a->ns : tenant, a->tokens, a->ntokens, &k);
    if (s != RK_OK)
        return s;
    /* the owners; when one cannot be reached, the next node in rank order stands in, so the
     * chunk still gets `replicas` copies (readers look that far down the ranking too) */
    ragkv_node own[2 * MAX_OWNERS];
    size_t n = owners_of(cl, &k, own, 2 * (size_t)cl->replicas);
    if (n == 0)
        return cc_store_put(st, tenant, a, key);
    size_t stored = 0, tried = 0;
    for (size_t i = 0; i < n && stored < (size_t)cl->replicas && tried < (size_t)cl->replicas; i++) {
        bool transport = false;
        s = is_self(cl, &own[i]) ? cc_store_put(st, tenant, a, &k) : peer_put(cl, &own[i], tenant, &k, a, &transport);
        if (s == RK_OK) {
            stored++;
            tried++;
            if (!is_self(cl, &own[i]))
                svc_metric_add(km.puts, 1);
        } else if (transport) { /* does not count as tried: the next rank stands in */
            svc_metric_add(km.put_errors, 1);
            RK_WARN("%s; storing on the other owners", rk_error_msg());
            mark_down(cl, own[i].id);
        } else if (stored == 0) {
            return s; /* refused (quota, no such tenant): the same answer from every owner */
        } else {
            tried++;
            RK_WARN("replica %s refused a chunk another owner holds: %s", own[i].id, rk_error_msg());
        }
    }
    if (!stored)
        return rk_error_set(RK_ERR_UNAVAILABLE, "no owner of the chunk could store it (%zu tried)", n);
    if (key)
        *key = k;
    return RK_OK;
}

/* ---- the peer side ------------------------------------------------------------------------ */

rk_status svc_cluster_serve_get(svc_cluster *cl, cc_store *st, const char *tenant, const cc_key *key, rk_buf *out)
{
    cc_buf *b = NULL;
    cc_record rec;
    cc_record_init(&rec);
    /* never the store's repairing read for a blob that is not here: the asker may have a
     * stale view of the owners, and another node may hold it */
    rk_status s = local_has(cl, st, key, &rec);
    cc_record_clear(&rec);
    cc_record_init(&rec);
    if (s == RK_OK)
        s = cc_store_get(st, tenant, key, &b, &rec);
    else if (s != RK_ERR_NOT_FOUND && s != RK_ERR_UNAVAILABLE) /* the metadata store failed */
        s = rk_error_set(RK_ERR_UNAVAILABLE, "chunk metadata unavailable here");
    if (s == RK_OK) {
        rk_buf_put_str(out, rec.ns);
        rk_buf_put_str(out, rec.model);
        rk_buf_put_u64(out, rk_xxh3_64(b->data, b->len));
        rk_buf_put_u32(out, (uint32_t)b->len);
        rk_buf_append(out, b->data, b->len);
        s = out->failed ? RK_ERR_NOMEM : RK_OK;
        cc_buf_release(b);
    }
    cc_record_clear(&rec);
    svc_metric_add(km.served, 1);
    return s;
}

rk_status svc_cluster_serve_put(cc_store *st, const char *model, const char *tenant, const cc_key *key,
                                uint16_t codec, uint16_t level, float cost, const uint8_t *blob, size_t len)
{
    svc_metric_add(km.served, 1);
    int32_t *tokens = NULL;
    uint32_t n = 0;
    const uint8_t *cont;
    size_t clen;
    rk_status s = svc_chunk_unwrap(blob, len, &tokens, &n, &cont, &clen);
    cc_key k;
    if (s == RK_OK && (s = cc_key_compute(model, tenant, tokens, n, &k)) == RK_OK && !cc_key_equal(&k, key))
        s = rk_error_set(RK_ERR_INVALID, "PEER_PUT: the chunk's tokens do not give its key (another model?)");
    if (s == RK_OK) {
        cc_put_args a = {.model = model, .tokens = tokens, .ntokens = n, .codec = codec, .level = level,
                         .blob = blob, .blob_len = len, .cost = cost >= 0 ? cost : 0};
        s = cc_store_put(st, tenant, &a, &k);
    }
    rk_free(tokens);
    return s;
}
