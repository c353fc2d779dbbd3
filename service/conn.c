/*
 * conn.c — one protocol connection on its worker thread: framing with limits, the frame
 * timer (a started frame must finish within frame-timeout, so trickling clients cannot hold a
 * connection open), request decoding, dispatch, and replies. Framing errors answer with an
 * error frame and close once it is written; request errors answer and keep the connection.
 */
#define RK_LOG_COMPONENT "conn"
#include <arpa/inet.h>
#include <event2/buffer.h>
#include <netinet/in.h>
#include <sodium.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "ragkv/alloc.h"
#include "ragkv/bytes.h"
#include "ragkv/clock.h"
#include "ragkv/log.h"
#include "ragkv/proto.h"
#include "ragkv/version.h"
#include "cluster.h"
#include "exec.h"
#include "limits.h"
#include "meta.h"
#include "ragkv/chunkcache.h"
#include "ragkv/crashpoint.h"
#include "server_int.h"

/* Queue one frame on the connection's output. */
static void conn_send(struct svc_conn *c, uint8_t type, uint16_t op, uint64_t id, rk_status st,
                      const void *payload, size_t len)
{
    rk_proto_hdr h = {.version = RK_PROTO_VERSION, .type = type, .opcode = op, .request_id = id,
                      .status = st, .length = (uint32_t)len};
    uint8_t hdr[RK_PROTO_HDR_SIZE];
    rk_proto_hdr_encode(&h, hdr);
    struct evbuffer *out = bufferevent_get_output(c->bev);
    evbuffer_add(out, hdr, sizeof(hdr));
    if (len)
        evbuffer_add(out, payload, len);
}

/* An error response: status plus a `str` message (docs/protocol.md §3). */
static void conn_send_error(struct svc_conn *c, uint16_t op, uint64_t id, rk_status st, const char *msg)
{
    rk_buf b = RK_BUF_INIT;
    char m[RK_PROTO_MAX_STR + 1];
    snprintf(m, sizeof(m), "%s%s%s", rk_strerror(st), msg && *msg ? ": " : "", msg ? msg : "");
    rk_buf_put_str(&b, m);
    RK_DEBUG("%s req %llu %s (%s): %s", c->peer, (unsigned long long)id, rk_opcode_name(op),
             c->tenant[0] ? c->tenant : "-", m);
    conn_send(c, RK_PT_RESPONSE, op, id, st, b.data, b.failed ? 0 : b.len);
    rk_buf_free(&b);
    svc_metric_add(svc_m.errors, 1);
}

/* Stop reading and close once everything queued has been written. */
static void conn_close_after_write(struct svc_conn *c)
{
    c->closing = true;
    bufferevent_disable(c->bev, EV_READ);
    if (evbuffer_get_length(bufferevent_get_output(c->bev)) == 0)
        svc_conn_free(c);
}

static void on_write(struct bufferevent *bev, void *arg)
{
    struct svc_conn *c = arg;
    if (evbuffer_get_length(bufferevent_get_output(bev)) != 0)
        return;
    if (c->stop_after_write) {
        c->stop_after_write = false;
        svc_server_stop(c->w->srv);
    }
    if (c->closing)
        svc_conn_free(c);
}

static void handle_hello(struct svc_conn *c, const svc_request *rq)
{
    if (rq->min_version > RK_PROTO_VERSION || rq->max_version < RK_PROTO_VERSION) {
        char m[96];
        snprintf(m, sizeof(m), "this server speaks version %d only", RK_PROTO_VERSION);
        conn_send_error(c, rq->opcode, rq->id, RK_ERR_UNSUPPORTED, m);
        return;
    }
    const eng_model_info *mi = c->w->srv->model ? eng_model_get_info(c->w->srv->model) : NULL;
    rk_buf b = RK_BUF_INIT;
    rk_buf_put_u16(&b, RK_PROTO_VERSION);
    rk_buf_put_u32(&b, c->w->srv->max_frame);
    rk_buf_put_str(&b, "ragkvd " RAGKV_VERSION);
    rk_buf_put_str(&b, mi ? mi->id : "");
    rk_buf_put_u32(&b, mi ? (uint32_t)mi->vocab : 0);
    rk_buf_put_u32(&b, mi ? (uint32_t)mi->max_seq : 0);
    conn_send(c, RK_PT_RESPONSE, rq->opcode, rq->id, RK_OK, b.data, b.len);
    rk_buf_free(&b);
}

static void reply_str(struct svc_conn *c, const svc_request *rq, const char *text)
{
    rk_buf b = RK_BUF_INIT;
    rk_buf_put_str(&b, text);
    if (b.failed)
        conn_send_error(c, rq->opcode, rq->id, RK_ERR_NOMEM, "reply too large");
    else
        conn_send(c, RK_PT_RESPONSE, rq->opcode, rq->id, RK_OK, b.data, b.len);
    rk_buf_free(&b);
}

static void handle_auth(struct svc_conn *c, const svc_request *rq)
{
    svc_auth *auth = c->w->srv->auth;
    uint64_t now = rk_now_ns() / 1000000000ull;
    if (!svc_auth_allowed(auth, c->peer, now)) {
        conn_send_error(c, rq->opcode, rq->id, RK_ERR_BUSY, "too many failed attempts from this address; wait a minute");
        return;
    }
    char tenant[SVC_NAME_MAX];
    bool admin = false;
    if (svc_cluster_is_secret(c->w->srv->cluster, rq->token)) { /* another node of the cluster */
        c->authed = c->peer_node = true;
        reply_str(c, rq, "peer");
        return;
    }
    if (svc_auth_check(auth, rq->token, tenant, &admin) != RK_OK) {
        svc_auth_failed(auth, c->peer, now);
        RK_INFO("failed AUTH from %s (req %llu)", c->peer, (unsigned long long)rq->id);
        conn_send_error(c, rq->opcode, rq->id, RK_ERR_AUTH, "unknown token");
        return;
    }
    if (admin && !c->loopback && !c->w->srv->cfg.admin_remote) {
        conn_send_error(c, rq->opcode, rq->id, RK_ERR_DENIED,
                        "the admin credential is accepted from loopback only (see admin-remote)");
        return;
    }
    c->authed = true;
    c->admin = admin;
    snprintf(c->tenant, sizeof(c->tenant), "%s", tenant);
    RK_DEBUG("%s authenticated as %s", c->peer, tenant);
    reply_str(c, rq, tenant);
}

/* The effective configuration as `key = value` lines (no secrets live in it). */
static void handle_config_get(struct svc_conn *c, const svc_request *rq)
{
    const svc_config *k = &c->w->srv->cfg;
    char text[4096];
    snprintf(text, sizeof(text),
             "bind = %s\nport = %d\nhttp-port = %d\ndata-dir = %s\nmodel = %s\ntokenizer = %s\n"
             "workers = %d\nmax-connections = %d\nmax-frame-mb = %d\nidle-timeout = %d\n"
             "frame-timeout = %d\nadmin-remote = %d\nlog-level = %s\n",
             k->bind, c->w->srv->port, c->w->srv->http_port, k->data_dir, k->model, k->tokenizer,
             c->w->srv->nworkers, k->max_connections, k->max_frame_mb, k->idle_timeout_s,
             k->frame_timeout_s, k->admin_remote, k->log_level);
    reply_str(c, rq, text);
}

static void handle_admin(struct svc_conn *c, const svc_request *rq)
{
    svc_auth *auth = c->w->srv->auth;
    struct cc_store *store = c->w->srv->store;
    char token[SVC_TOKEN_MAX];
    rk_status st;
    switch (rq->opcode) {
    case RK_OP_TENANT_CREATE: {
        if ((st = svc_auth_tenant_add(auth, rq->tenant, token)) != RK_OK) {
            conn_send_error(c, rq->opcode, rq->id, st, rk_error_msg());
            return;
        }
        cc_quota q = {rq->quota_bytes, rq->quota_chunks, rq->quota_policy ? CC_QUOTA_EVICT : CC_QUOTA_REJECT};
        st = cc_store_tenant_create(store, rq->tenant, &q);
        if (st == RK_ERR_EXISTS) /* an account left by an earlier tenant of that name: reset it */
            st = cc_store_tenant_delete(store, rq->tenant) == RK_OK ? cc_store_tenant_create(store, rq->tenant, &q) : st;
        if (st != RK_OK) {
            char msg[300];
            snprintf(msg, sizeof(msg), "chunk store: %s", rk_error_msg());
            svc_auth_tenant_remove(auth, rq->tenant); /* not created after all */
            sodium_memzero(token, sizeof(token));
            conn_send_error(c, rq->opcode, rq->id, st, msg);
            return;
        }
        RK_INFO("tenant %s created", rq->tenant);
        reply_str(c, rq, token);
        sodium_memzero(token, sizeof(token));
        return;
    }
    case RK_OP_TOKEN_ROTATE:
        if ((st = svc_auth_tenant_rotate(auth, rq->tenant, token)) != RK_OK) {
            conn_send_error(c, rq->opcode, rq->id, st, rk_error_msg());
            return;
        }
        RK_INFO("tenant %s: token rotated", rq->tenant);
        reply_str(c, rq, token);
        sodium_memzero(token, sizeof(token));
        return;
    case RK_OP_TENANT_DELETE:
        /* the credential first: once it is gone nobody can add chunks the delete would miss */
        if ((st = svc_auth_tenant_remove(auth, rq->tenant)) == RK_OK &&
            (st = cc_store_tenant_delete(store, rq->tenant)) == RK_ERR_NOT_FOUND)
            st = RK_OK; /* no account: nothing stored */
        if (st != RK_OK) {
            conn_send_error(c, rq->opcode, rq->id, st, rk_error_msg());
            return;
        }
        RK_INFO("tenant %s deleted", rq->tenant);
        conn_send(c, RK_PT_RESPONSE, rq->opcode, rq->id, RK_OK, NULL, 0);
        return;
    case RK_OP_TENANT_LIST: {
        char **names;
        size_t n;
        if ((st = svc_auth_tenant_list(auth, &names, &n)) != RK_OK) {
            conn_send_error(c, rq->opcode, rq->id, st, rk_error_msg());
            return;
        }
        rk_buf b = RK_BUF_INIT;
        rk_buf_put_u32(&b, (uint32_t)n);
        for (size_t i = 0; i < n; i++) {
            cc_tenant_info ti;
            if (cc_store_tenant_usage(store, names[i], &ti) != RK_OK)
                memset(&ti, 0, sizeof(ti));
            rk_buf_put_str(&b, names[i]);
            rk_buf_put_u64(&b, ti.bytes);
            rk_buf_put_u64(&b, ti.chunks);
            rk_buf_put_u64(&b, ti.cfg.max_bytes);
            rk_buf_put_u64(&b, ti.cfg.max_chunks);
        }
        svc_auth_names_free(names, n);
        if (b.failed)
            conn_send_error(c, rq->opcode, rq->id, RK_ERR_NOMEM, "tenant list");
        else
            conn_send(c, RK_PT_RESPONSE, rq->opcode, rq->id, RK_OK, b.data, b.len);
        rk_buf_free(&b);
        return;
    }
    case RK_OP_QUOTA_SET: {
        cc_quota q = {rq->quota_bytes, rq->quota_chunks, rq->quota_policy ? CC_QUOTA_EVICT : CC_QUOTA_REJECT};
        if ((st = cc_store_quota_set(store, rq->tenant, &q)) != RK_OK) {
            conn_send_error(c, rq->opcode, rq->id, st, rk_error_msg());
            return;
        }
        RK_INFO("tenant %s: quota %llu bytes, %llu chunks, %s", rq->tenant, (unsigned long long)q.max_bytes,
                (unsigned long long)q.max_chunks, q.policy == CC_QUOTA_EVICT ? "evict" : "reject");
        conn_send(c, RK_PT_RESPONSE, rq->opcode, rq->id, RK_OK, NULL, 0);
        return;
    }
    case RK_OP_QUOTA_GET: {
        cc_tenant_info ti;
        if ((st = cc_store_tenant_usage(store, rq->tenant, &ti)) != RK_OK) {
            conn_send_error(c, rq->opcode, rq->id, st, rk_error_msg());
            return;
        }
        rk_buf b = RK_BUF_INIT;
        rk_buf_put_u64(&b, ti.cfg.max_bytes);
        rk_buf_put_u64(&b, ti.cfg.max_chunks);
        rk_buf_put_u8(&b, ti.cfg.policy == CC_QUOTA_EVICT ? 1 : 0);
        rk_buf_put_u64(&b, ti.bytes);
        rk_buf_put_u64(&b, ti.chunks);
        conn_send(c, RK_PT_RESPONSE, rq->opcode, rq->id, RK_OK, b.data, b.len);
        rk_buf_free(&b);
        return;
    }
    case RK_OP_NS_GRANT:
    case RK_OP_NS_REVOKE:
        st = rq->opcode == RK_OP_NS_GRANT ? cc_store_grant(store, rq->ns, rq->tenant)
                                          : cc_store_revoke(store, rq->ns, rq->tenant);
        if (st != RK_OK) {
            conn_send_error(c, rq->opcode, rq->id, st, rk_error_msg());
            return;
        }
        RK_INFO("namespace %s %s tenant %s", rq->ns, rq->opcode == RK_OP_NS_GRANT ? "granted to" : "revoked from",
                rq->tenant);
        conn_send(c, RK_PT_RESPONSE, rq->opcode, rq->id, RK_OK, NULL, 0);
        return;
    case RK_OP_INSPECT: {
        /* the record as its owner sees it: the namespace is the owner */
        cc_key k;
        cc_record rec;
        cc_buf *blob = NULL;
        memcpy(k.b, rq->key, CC_KEY_BYTES);
        cc_record_init(&rec);
        if ((st = cc_store_get(store, rq->ns, &k, &blob, &rec)) != RK_OK) {
            conn_send_error(c, rq->opcode, rq->id, st, rk_error_msg());
            return;
        }
        cc_buf_release(blob);
        char hex[CC_KEY_HEX_LEN + 1], js[1536];
        snprintf(js, sizeof(js),
                 "{\"key\": \"%s\", \"namespace\": \"%s\", \"model\": \"%s\", \"tokens\": %u, "
                 "\"codec\": \"%s\", \"level\": %u, \"bytes\": %llu, \"checksum\": \"%016llx\", "
                 "\"created_ms\": %llu, \"expires_ms\": %llu, \"pinned\": %s, \"cost\": %.3f, "
                 "\"hits\": %llu, \"last_access_ms\": %llu}",
                 cc_key_to_hex(&rec.key, hex), rec.ns, rec.model, rec.ntokens, codec_id_name((codec_id)rec.codec),
                 rec.level, (unsigned long long)rec.size, (unsigned long long)rec.csum,
                 (unsigned long long)rec.created_ms, (unsigned long long)rec.expires_ms,
                 (rec.flags & CC_RECORD_FLAG_PINNED) ? "true" : "false", rec.cost,
                 (unsigned long long)rec.hits, (unsigned long long)rec.last_access_ms);
        cc_record_clear(&rec);
        reply_str(c, rq, js);
        return;
    }
    case RK_OP_EVICT:
    case RK_OP_FLUSH: {
        uint64_t removed = 0;
        if ((rq->opcode == RK_OP_EVICT && (rq->tenant[0] || rq->evict_bytes)) ||
            (rq->opcode == RK_OP_FLUSH && rq->tenant[0])) {
            conn_send_error(c, rq->opcode, rq->id, RK_ERR_UNSUPPORTED,
                            "per-tenant eviction is not in this version: send an empty tenant (and 0 bytes)");
            return;
        }
        st = rq->opcode == RK_OP_EVICT ? cc_store_evict(store, &removed) : cc_store_flush(store);
        if (st == RK_OK && rq->opcode == RK_OP_FLUSH)
            st = cc_store_gc(store, &removed);
        if (st != RK_OK) {
            conn_send_error(c, rq->opcode, rq->id, st, rk_error_msg());
            return;
        }
        RK_INFO("%s: %llu removed", rk_opcode_name(rq->opcode), (unsigned long long)removed);
        rk_buf b = RK_BUF_INIT;
        rk_buf_put_u64(&b, removed);
        conn_send(c, RK_PT_RESPONSE, rq->opcode, rq->id, RK_OK, b.data, b.len);
        rk_buf_free(&b);
        return;
    }
    case RK_OP_TENANT_STATS: {
        cc_tenant_info ti;
        svc_tenant_stats ts;
        if ((st = cc_store_tenant_usage(store, rq->tenant, &ti)) != RK_OK) {
            conn_send_error(c, rq->opcode, rq->id, st, rk_error_msg());
            return;
        }
        svc_limits_stats(c->w->srv->tlimits, rq->tenant, &ts);
        rk_buf b = RK_BUF_INIT;
        rk_buf_put_u64(&b, ti.bytes);
        rk_buf_put_u64(&b, ti.chunks);
        rk_buf_put_u64(&b, ts.requests);
        rk_buf_put_u64(&b, ts.generations);
        rk_buf_put_u64(&b, ts.hits);
        rk_buf_put_u64(&b, ts.misses);
        rk_buf_put_f32(&b, (float)ts.ttft_p50_ms);
        rk_buf_put_f32(&b, (float)ts.ttft_p99_ms);
        conn_send(c, RK_PT_RESPONSE, rq->opcode, rq->id, RK_OK, b.data, b.len);
        rk_buf_free(&b);
        return;
    }
    case RK_OP_CONFIG_GET:
        handle_config_get(c, rq);
        return;
    case RK_OP_SHUTDOWN:
        RK_INFO("SHUTDOWN requested by the admin at %s", c->peer);
        conn_send(c, RK_PT_RESPONSE, rq->opcode, rq->id, RK_OK, NULL, 0);
        c->stop_after_write = true; /* the admin hears the answer before the stop */
        return;
    default:
        conn_send_error(c, rq->opcode, rq->id, RK_ERR_NOT_IMPLEMENTED, rk_opcode_name(rq->opcode));
    }
}


/* ---- generation: submitted to the executor, delivered back here ------------------------- */

static void gen_unlink(struct svc_conn *c, svc_gen *g)
{
    for (svc_gen **p = &c->gens; *p; p = &(*p)->next)
        if (*p == g) {
            *p = g->next;
            return;
        }
}

/* The statistics that end GENERATE and PREFILL_KV responses (docs/protocol.md). */
static void put_gen_stats(rk_buf *b, const svc_gen *g)
{
    rk_buf_put_u32(b, g->prompt_tokens);
    rk_buf_put_u32(b, g->recomputed);
    rk_buf_put_u32(b, g->chunk_hits);
    rk_buf_put_u32(b, g->chunk_misses);
    rk_buf_put_f32(b, g->ttft_ms);
    rk_buf_put_f32(b, g->total_ms);
}

/* The final response of a job: GENERATE (tokens not yet streamed + statistics), PREFILL_KV
 * (the container + statistics) or PUT_CHUNK (key, created, tokens, bytes). */
static void gen_send_final(struct svc_conn *c, svc_gen *g, const int32_t *toks, size_t n)
{
    rk_buf b = RK_BUF_INIT;
    if (g->kind == SVC_JOB_META) {
        rk_buf_append(&b, g->result.data, g->result.len);
    } else if (g->kind == SVC_JOB_PUT) {
        rk_buf_append(&b, g->key.b, CC_KEY_BYTES);
        rk_buf_put_u8(&b, (uint8_t)g->created);
        rk_buf_put_u32(&b, g->segs[0].n);
        rk_buf_put_u64(&b, g->stored_bytes);
    } else if (g->kind == SVC_JOB_GET_KV) {
        rk_buf_put_u32(&b, (uint32_t)g->result.len);
        rk_buf_append(&b, g->result.data, g->result.len);
    } else if (g->kind == SVC_JOB_PUT_KV) {
        rk_buf_append(&b, g->key.b, CC_KEY_BYTES);
        rk_buf_put_u8(&b, (uint8_t)g->created);
        rk_buf_put_u64(&b, g->stored_bytes);
    } else if (g->kind == SVC_JOB_PREFILL) {
        rk_buf_put_u32(&b, (uint32_t)g->result.len);
        rk_buf_append(&b, g->result.data, g->result.len);
        put_gen_stats(&b, g);
    } else {
        rk_buf_put_tokens(&b, toks, (uint32_t)n);
        put_gen_stats(&b, g);
        rk_buf_put_u8(&b, g->finish);
    }
    if (b.failed)
        conn_send_error(c, g->opcode, g->request_id, RK_ERR_NOMEM, "reply");
    else
        conn_send(c, RK_PT_RESPONSE, g->opcode, g->request_id, RK_OK, b.data, b.len);
    rk_buf_free(&b);
}

/* Give back the tenant's job slot (once). */
static void gen_uncount(struct svc_server *srv, svc_gen *g)
{
    if (g->counted) {
        g->counted = false;
        svc_limits_job_end(srv->tlimits, g->tenant);
    }
}

/* Executor -> worker: new tokens and/or the end of a generation. */
static void gen_on_notify(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    svc_gen *g = arg;
    struct svc_conn *c = g->conn;
    pthread_mutex_lock(&g->lock);
    if (g->stepped) { /* a pool step of a job the loop goes on with (meta.c) */
        g->stepped = false;
        pthread_mutex_unlock(&g->lock);
        svc_meta_step(g);
        return;
    }
    bool done = g->done;
    size_t n = g->nout - g->nsent;
    int32_t *toks = NULL;
    if (c && n && (toks = rk_malloc(n * sizeof(int32_t))))
        memcpy(toks, g->out + g->nsent, n * sizeof(int32_t));
    pthread_mutex_unlock(&g->lock);
    size_t sent = 0;
    if (c && g->stream && toks && (!done || g->status == RK_OK)) {
        /* one STREAM frame per token, however many a wakeup finds (the executor may be several
         * steps ahead of this loop, or done): the stream a client sees does not depend on
         * scheduling, and libevent writes the frames of one wakeup together */
        for (; sent < n; sent++) {
            rk_buf b = RK_BUF_INIT;
            rk_buf_put_tokens(&b, toks + sent, 1);
            bool ok = !b.failed;
            if (ok)
                conn_send(c, RK_PT_STREAM, g->opcode, g->request_id, RK_OK, b.data, b.len);
            rk_buf_free(&b);
            if (!ok)
                break;
        }
        g->nsent += sent;
    }
    if (c && done) {
        if (g->status != RK_OK)
            conn_send_error(c, g->opcode, g->request_id, g->status, g->errmsg);
        else {
            if (g->kind == SVC_JOB_PUT || g->kind == SVC_JOB_PUT_KV)
                RK_CRASHPOINT("put_before_ack"); /* stored; the client never hears of it */
            /* the tokens not streamed (all of them without streaming); g->out is NULL for jobs
             * without tokens: no arithmetic on it */
            gen_send_final(c, g, toks ? toks + sent : g->out ? g->out + g->nsent : NULL, n - sent);
        }
    }
    rk_free(toks);
    if (done) {
        if (c)
            gen_unlink(c, g);
        if (g->status == RK_OK && (g->kind == SVC_JOB_GENERATE || g->kind == SVC_JOB_PREFILL))
            svc_limits_note_gen(g->srv->tlimits, g->tenant, g->chunk_hits, g->chunk_misses, g->ttft_ms);
        gen_uncount(g->srv, g);
        event_free(g->notify);
        g->notify = NULL;
        svc_gen_release(g);
    }
}

/* A job that never reached the executor: give back its slot and event, answer the error. */
static void job_abort(struct svc_conn *c, const svc_request *rq, svc_gen *g, rk_status st, const char *msg)
{
    char m[300];
    snprintf(m, sizeof(m), "%s", msg ? msg : "");
    gen_uncount(c->w->srv, g);
    event_free(g->notify);
    g->notify = NULL;
    svc_gen_release(g);
    conn_send_error(c, rq->opcode, rq->id, st, m);
}

/* CLUSTER_NODES: the membership snapshot, no I/O (cluster.h). */
static void handle_cluster_nodes(struct svc_conn *c, const svc_request *rq)
{
    rk_buf b = RK_BUF_INIT;
    svc_cluster_nodes_reply(c->w->srv->cluster, &b);
    if (b.failed)
        conn_send_error(c, rq->opcode, rq->id, RK_ERR_NOMEM, "reply");
    else
        conn_send(c, RK_PT_RESPONSE, rq->opcode, rq->id, RK_OK, b.data, b.len);
    rk_buf_free(&b);
}

/* LOOKUP, DELETE, STATS (and a peer node's PEER_GET, PEER_PUT): store calls. LOOKUP and
 * DELETE go through the worker's own asynchronous Redis client when it has one (meta.h); the
 * rest (and everything with embedded metadata) runs on the I/O pool, so the worker's event loop
 * never waits on Redis or the disk. */
static void submit_meta(struct svc_conn *c, const svc_request *rq)
{
    struct svc_server *srv = c->w->srv;
    svc_gen *g = svc_gen_new();
    if (!g || !(g->notify = event_new(c->w->base, -1, 0, gen_on_notify, g))) {
        svc_gen_release(g);
        conn_send_error(c, rq->opcode, rq->id, RK_ERR_NOMEM, "job");
        return;
    }
    g->kind = SVC_JOB_META;
    g->srv = srv;
    snprintf(g->tenant, sizeof(g->tenant), "%s", c->peer_node ? rq->tenant : c->tenant);
    if (rq->opcode == RK_OP_PEER_PUT) { /* the blob lives in the frame buffer: copy it */
        if (!(g->in_owned = rk_malloc(rq->blob_len))) {
            job_abort(c, rq, g, RK_ERR_NOMEM, "PEER_PUT");
            return;
        }
        memcpy(g->in_owned, rq->blob, rq->blob_len);
        g->in_blob = g->in_owned;
        g->in_len = rq->blob_len;
        g->peer_codec = rq->peer_codec;
        g->peer_level = rq->peer_level;
        g->peer_cost = rq->peer_cost;
    }
    g->conn = c;
    g->request_id = rq->id;
    g->opcode = rq->opcode;
    if (rq->opcode == RK_OP_LOOKUP && rq->nkeys) {
        size_t n = (size_t)rq->nkeys * CC_KEY_BYTES;
        if (!(g->in_owned = rk_malloc(n))) {
            job_abort(c, rq, g, RK_ERR_NOMEM, "LOOKUP");
            return;
        }
        memcpy(g->in_owned, rq->keys, n);
        g->in_blob = g->in_owned;
        g->in_len = (uint32_t)n;
    }
    memcpy(g->key.b, rq->key, CC_KEY_BYTES);
    if (rq->opcode == RK_OP_STATS) {
        svc_tenant_stats ts;
        svc_limits_stats(srv->tlimits, c->tenant, &ts);
        g->st_hits = ts.hits;
        g->st_misses = ts.misses;
    }
    rk_status st = svc_meta_start(c->w, g) ? RK_OK : svc_exec_submit_pool(srv->exec, srv->io_pool, srv->store, g);
    if (st != RK_OK) {
        job_abort(c, rq, g, st, rk_error_msg());
        return;
    }
    g->next = c->gens;
    c->gens = g;
}

/* Hand a job to the executor; its result comes back through gen_on_notify. Takes the
 * request's arrays. */
static void do_submit_job(struct svc_conn *c, svc_request *rq, uint8_t kind)
{
    struct svc_server *srv = c->w->srv;
    if (kind == SVC_JOB_META) {
        submit_meta(c, rq);
        return;
    }
    if (!srv->exec) {
        conn_send_error(c, rq->opcode, rq->id, RK_ERR_UNAVAILABLE, "this ragkvd serves no model (--model)");
        return;
    }
    const eng_model_info *mi = eng_model_get_info(srv->model);
    if (kind == SVC_JOB_GET_KV && rq->codec != 0xFF) {
        int dl, ml;
        if (codec_levels((codec_id)rq->codec, &dl, &ml) != RK_OK || (rq->level != 0xFF && rq->level > ml)) {
            conn_send_error(c, rq->opcode, rq->id, RK_ERR_UNSUPPORTED, "GET_KV: unknown codec or level");
            return;
        }
    }
    bool single = kind == SVC_JOB_PUT || kind == SVC_JOB_PUT_KV || kind == SVC_JOB_GET_KV;
    if (single && kind != SVC_JOB_GET_KV && rq->ns[0] && strcmp(rq->ns, c->tenant) != 0) {
        conn_send_error(c, rq->opcode, rq->id, RK_ERR_DENIED, "a tenant writes only its own namespace");
        return;
    }
    if (!single) {
        if (rq->blend == SVC_BLEND_APE && rq->opcode == RK_OP_PREFILL_KV) {
            /* APE's KV holds several slots per position: no plain container can carry it */
            conn_send_error(c, rq->opcode, rq->id, RK_ERR_UNSUPPORTED, "PREFILL_KV does not take mode ape");
            return;
        }
    }
    svc_gen *g = svc_gen_new();
    size_t nseg = single ? 1 : rq->nsegments;
    if (!g || (nseg && !(g->segs = rk_calloc(nseg, sizeof(svc_gen_seg)))) ||
        !(g->notify = event_new(c->w->base, -1, 0, gen_on_notify, g))) {
        svc_gen_release(g);
        conn_send_error(c, rq->opcode, rq->id, RK_ERR_NOMEM, "job");
        return;
    }
    g->kind = kind;
    g->srv = srv;
    snprintf(g->tenant, sizeof(g->tenant), "%s", c->tenant);
    if (!svc_limits_job_begin(srv->tlimits, c->tenant)) {
        event_free(g->notify);
        g->notify = NULL;
        svc_gen_release(g);
        conn_send_error(c, rq->opcode, rq->id, RK_ERR_BUSY, "too many requests of this tenant running; retry later");
        return;
    }
    g->counted = true;
    snprintf(g->ns, sizeof(g->ns), "%s", rq->ns);
    /* the request's token arrays move into the job */
    if (single) {
        g->segs[0] = (svc_gen_seg){.tokens = rq->tokens, .n = rq->ntokens};
        rq->tokens = NULL;
        g->want_codec = rq->codec;
        g->want_level = rq->level;
        if (kind == SVC_JOB_GET_KV) { /* the key, given or computed from the tokens */
            rk_status ks = RK_OK;
            if (rq->by_tokens)
                ks = cc_key_compute(mi->id, rq->ns[0] ? rq->ns : c->tenant, g->segs[0].tokens, g->segs[0].n, &g->key);
            else
                memcpy(g->key.b, rq->key, CC_KEY_BYTES);
            if (ks != RK_OK) {
                job_abort(c, rq, g, ks, rk_error_msg());
                return;
            }
        }
        if (kind == SVC_JOB_PUT_KV) { /* the container lives in the frame buffer: copy it */
            if (!(g->in_owned = rk_malloc(rq->blob_len ? rq->blob_len : 1))) {
                job_abort(c, rq, g, RK_ERR_NOMEM, "PUT_KV");
                return;
            }
            memcpy(g->in_owned, rq->blob, rq->blob_len);
            g->in_blob = g->in_owned;
            g->in_len = rq->blob_len;
        }
    } else {
        for (uint32_t i = 0; i < rq->nsegments; i++) {
            svc_segment *in = &rq->segments[i];
            g->segs[i].by_key = in->kind == SVC_SEG_KEY;
            memcpy(g->segs[i].key.b, in->key, CC_KEY_BYTES);
            g->segs[i].tokens = in->tokens;
            g->segs[i].n = in->ntokens;
            in->tokens = NULL;
        }
        g->query = rq->query;
        g->nquery = rq->nquery;
        rq->query = NULL;
        static const bl_mode bm[] = {BL_FULL, BL_PREFIX, BL_NAIVE, BL_CACHEBLEND, BL_CACHECRAFT, BL_APE};
        bl_params_default(&g->blend, bm[rq->blend]);
        g->blend.ratio = rq->recompute;
        g->blend.select = c->w->srv->blend_select;
        if (rq->blend == SVC_BLEND_CACHECRAFT && rq->recompute > 0)
            g->blend.alpha = 2.0f * rq->recompute; /* the wire's 0..1 scale: alpha 0..2 */
    }
    g->nsegs = nseg;
    g->max_tokens = rq->max_tokens;
    g->temperature = rq->temperature;
    g->top_p = rq->top_p;
    g->top_k = (int)(rq->top_k > 100000 ? 100000 : rq->top_k);
    g->seed = rq->seed;
    g->conn = c;
    g->request_id = rq->id;
    g->opcode = rq->opcode;
    g->stream = kind == SVC_JOB_GENERATE && rq->stream;
    g->worker = c->w;
    if (kind == SVC_JOB_PUT_KV && svc_meta_takes_put(c->w))
        g->step = SVC_STEP_KV_CHECK; /* its metadata calls on this loop (meta.h) */
    rk_status st;
    if (kind == SVC_JOB_GET_KV && svc_meta_start_get(c->w, g)) /* its metadata on this loop first */
        st = RK_OK;
    else if (kind == SVC_JOB_GET_KV || kind == SVC_JOB_PUT_KV)
        st = svc_exec_submit_pool(srv->exec, srv->io_pool, srv->store, g);
    else if (svc_meta_start_gen(c->w, g) || svc_meta_start_put(c->w, g)) /* metadata on this loop first */
        st = RK_OK;
    else
        st = svc_exec_submit(srv->exec, g);
    if (st != RK_OK) {
        job_abort(c, rq, g, st, rk_error_msg());
        return;
    }
    g->next = c->gens;
    c->gens = g;
}

/* do_submit_job inside the server's submission gate: once shutdown has begun the I/O pool and
 * the executor are going away, and the request is answered RK_ERR_SHUTDOWN instead. */
static void submit_job(struct svc_conn *c, svc_request *rq, uint8_t kind)
{
    struct svc_server *srv = c->w->srv;
    pthread_rwlock_rdlock(&srv->submit_gate);
    if (srv->draining)
        conn_send_error(c, rq->opcode, rq->id, RK_ERR_SHUTDOWN, "ragkvd is shutting down");
    else
        do_submit_job(c, rq, kind);
    pthread_rwlock_unlock(&srv->submit_gate);
}

static void dispatch(struct svc_conn *c, svc_request *rq)
{
    switch (rq->opcode) {
    case RK_OP_HELLO:
        handle_hello(c, rq);
        return;
    case RK_OP_PING:
        conn_send(c, RK_PT_RESPONSE, rq->opcode, rq->id, RK_OK, NULL, 0);
        return;
    case RK_OP_AUTH:
        handle_auth(c, rq);
        return;
    default:
        break;
    }
    /* every other opcode passes the same gate */
    if (!c->authed) {
        conn_send_error(c, rq->opcode, rq->id, RK_ERR_AUTH, "authenticate first (AUTH)");
        return;
    }
    if (rk_opcode_is_peer(rq->opcode) != c->peer_node) {
        conn_send_error(c, rq->opcode, rq->id, RK_ERR_DENIED,
                        c->peer_node ? "the cluster secret serves peer operations only"
                                     : "peer operations need the cluster secret");
        return;
    }
    if (c->peer_node) { /* the calling node authenticated the tenant and applied its limits */
        submit_job(c, rq, SVC_JOB_META);
        return;
    }
    if (rk_opcode_is_admin(rq->opcode) != c->admin) {
        conn_send_error(c, rq->opcode, rq->id, RK_ERR_DENIED,
                        c->admin ? "the admin credential serves admin operations only"
                                 : "admin operations need the admin credential");
        return;
    }
    if (!c->admin && !svc_limits_request(c->w->srv->tlimits, c->tenant, rk_now_ns())) {
        conn_send_error(c, rq->opcode, rq->id, RK_ERR_BUSY, "request rate limit of this tenant reached; retry later");
        return;
    }
    if (c->admin)
        handle_admin(c, rq);
    else if (rq->opcode == RK_OP_GENERATE)
        submit_job(c, rq, SVC_JOB_GENERATE);
    else if (rq->opcode == RK_OP_PREFILL_KV)
        submit_job(c, rq, SVC_JOB_PREFILL);
    else if (rq->opcode == RK_OP_PUT_CHUNK)
        submit_job(c, rq, SVC_JOB_PUT);
    else if (rq->opcode == RK_OP_GET_KV)
        submit_job(c, rq, SVC_JOB_GET_KV);
    else if (rq->opcode == RK_OP_PUT_KV)
        submit_job(c, rq, SVC_JOB_PUT_KV);
    else if (rq->opcode == RK_OP_LOOKUP || rq->opcode == RK_OP_DELETE || rq->opcode == RK_OP_STATS)
        submit_job(c, rq, SVC_JOB_META);
    else if (rq->opcode == RK_OP_CLUSTER_NODES)
        handle_cluster_nodes(c, rq);
    else /* chunk operations arrive with the chunk store */
        conn_send_error(c, rq->opcode, rq->id, RK_ERR_NOT_IMPLEMENTED, rk_opcode_name(rq->opcode));
}

static void on_frame_timeout(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct svc_conn *c = arg;
    RK_INFO("worker %d: closing a connection whose frame did not arrive within %d s", c->w->id,
            c->w->srv->cfg.frame_timeout_s);
    svc_metric_add(svc_m.timeouts, 1);
    svc_conn_free(c);
}

static void on_read(struct bufferevent *bev, void *arg)
{
    struct svc_conn *c = arg;
    struct svc_server *srv = c->w->srv;
    struct evbuffer *in = bufferevent_get_input(bev);
    while (!c->closing) {
        size_t avail = evbuffer_get_length(in);
        if (avail == 0) {
            evtimer_del(c->frame_timer);
            return;
        }
        if (!evtimer_pending(c->frame_timer, NULL)) {
            struct timeval tv = {srv->cfg.frame_timeout_s, 0};
            evtimer_add(c->frame_timer, &tv);
        }
        if (avail < RK_PROTO_HDR_SIZE)
            return;
        const uint8_t *p = evbuffer_pullup(in, RK_PROTO_HDR_SIZE);
        rk_proto_hdr h;
        uint32_t cap = c->authed ? srv->max_frame : RK_PROTO_UNAUTH_MAX_FRAME;
        rk_status st = rk_proto_hdr_decode(p, RK_PROTO_HDR_SIZE, cap, &h);
        if (st != RK_OK) {
            /* framing lost (or a frame we will not read): say why, then close */
            RK_INFO("worker %d: closing connection: %s", c->w->id, rk_error_msg());
            svc_metric_add(svc_m.protocol_errors, 1);
            conn_send_error(c, st == RK_ERR_LIMIT ? h.opcode : 0, st == RK_ERR_LIMIT ? h.request_id : 0,
                            st, rk_error_msg());
            conn_close_after_write(c);
            return;
        }
        if (avail < RK_PROTO_HDR_SIZE + (size_t)h.length)
            return; /* the frame timer bounds the wait */
        evtimer_del(c->frame_timer);
        const uint8_t *frame = evbuffer_pullup(in, RK_PROTO_HDR_SIZE + (ssize_t)h.length);
        svc_request rq;
        st = svc_request_decode(&h, frame + RK_PROTO_HDR_SIZE, h.length, &srv->limits, &rq);
        svc_metric_add(svc_m.requests, 1);
        if (st == RK_ERR_PROTOCOL) { /* e.g. a response frame sent to the server */
            svc_metric_add(svc_m.protocol_errors, 1);
            conn_send_error(c, h.opcode, h.request_id, st, rk_error_msg());
            svc_request_free(&rq);
            conn_close_after_write(c);
            return;
        }
        RK_DEBUG("%s req %llu %s (%s)", c->peer, (unsigned long long)h.request_id, rk_opcode_name(h.opcode),
                 c->tenant[0] ? c->tenant : "-");
        if (st != RK_OK)
            conn_send_error(c, h.opcode, h.request_id, st, rk_error_msg());
        else
            dispatch(c, &rq);
        svc_request_free(&rq);
        evbuffer_drain(in, RK_PROTO_HDR_SIZE + (size_t)h.length);
    }
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
    (void)bev;
    struct svc_conn *c = arg;
    if (what & BEV_EVENT_TIMEOUT)
        svc_metric_add(svc_m.timeouts, 1);
    if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR | BEV_EVENT_TIMEOUT))
        svc_conn_free(c);
}

/* Record the peer's address and whether it is loopback (admin credential policy). */
static void peer_describe(int sock, struct svc_conn *c)
{
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    snprintf(c->peer, sizeof(c->peer), "?");
    if (getpeername(sock, (struct sockaddr *)&ss, &sl) != 0)
        return;
    if (ss.ss_family == AF_INET) {
        struct sockaddr_in *a = (struct sockaddr_in *)&ss;
        inet_ntop(AF_INET, &a->sin_addr, c->peer, sizeof(c->peer));
        c->loopback = (ntohl(a->sin_addr.s_addr) >> 24) == 127;
    } else if (ss.ss_family == AF_INET6) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
        inet_ntop(AF_INET6, &a->sin6_addr, c->peer, sizeof(c->peer));
        c->loopback = IN6_IS_ADDR_LOOPBACK(&a->sin6_addr) ||
                      (IN6_IS_ADDR_V4MAPPED(&a->sin6_addr) && a->sin6_addr.s6_addr[12] == 127);
    } else if (ss.ss_family == AF_UNIX) {
        snprintf(c->peer, sizeof(c->peer), "unix");
        c->loopback = true;
    }
}

bool svc_conn_open(struct svc_worker *w, int sock)
{
    struct svc_conn *c = rk_calloc(1, sizeof(*c));
    struct bufferevent *bev = c ? bufferevent_socket_new(w->base, sock, BEV_OPT_CLOSE_ON_FREE) : NULL;
    struct event *timer = bev ? evtimer_new(w->base, on_frame_timeout, c) : NULL;
    if (!timer) {
        if (bev)
            bufferevent_free(bev);
        else
            close(sock);
        rk_free(c);
        return false;
    }
    c->bev = bev;
    c->w = w;
    c->frame_timer = timer;
    peer_describe(sock, c);
    c->next = w->conns;
    if (w->conns)
        w->conns->prev = c;
    w->conns = c;
    struct timeval idle = {w->srv->cfg.idle_timeout_s, 0};
    bufferevent_set_timeouts(bev, &idle, NULL);
    bufferevent_setcb(bev, on_read, on_write, on_event, c);
    bufferevent_enable(bev, EV_READ | EV_WRITE);
    return true;
}

void svc_conn_free(struct svc_conn *c)
{
    struct svc_worker *w = c->w;
    /* a last, non-blocking attempt to deliver replies still queued (shutdown path) */
    struct evbuffer *out = bufferevent_get_output(c->bev);
    if (evbuffer_get_length(out))
        evbuffer_write(out, bufferevent_getfd(c->bev));
    if (c->prev)
        c->prev->next = c->next;
    else
        w->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    /* generations still running lose their connection: cancel them; the executor's final
     * notification frees them (or now, when they are already done) */
    while (c->gens) {
        svc_gen *g = c->gens;
        c->gens = g->next;
        pthread_mutex_lock(&g->lock);
        bool done = g->done;
        pthread_mutex_unlock(&g->lock);
        if (done) {
            gen_uncount(w->srv, g);
            event_free(g->notify);
            svc_gen_release(g);
        } else {
            g->conn = NULL;
            atomic_store(&g->cancelled, true);
        }
    }
    event_free(c->frame_timer);
    bufferevent_free(c->bev);
    rk_free(c);
    atomic_fetch_sub(&w->srv->active, 1);
    svc_metric_add(svc_m.active, -1);
}
