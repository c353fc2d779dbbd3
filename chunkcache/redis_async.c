/* redis_async.c — non-blocking record lookups (see ragkv/redis_async.h). This is the only
 * chunkcache file that includes the event library. Everything runs on the loop thread. */
#define RK_LOG_COMPONENT "cc.redis.async"
#include <stdio.h>
#include <string.h>

#include <event2/event.h>
#include <hiredis/async.h>
#include <hiredis/adapters/libevent.h>

#include "ragkv/alloc.h"
#include "ragkv/clock.h"
#include "ragkv/log.h"
#include "ragkv/redis_async.h"
#include "redis_private.h"

typedef struct batch batch;

/* One HMGET of a batch: its reply callback's privdata. */
typedef struct slot {
    batch *b;  /* owning batch */
    size_t i;  /* index of the key */
} slot;

struct batch {
    cc_redis_async *a;  /* owner (NULL once the owner closed) */
    struct batch *next; /* in a->inflight */
    size_t n;           /* keys */
    size_t left;        /* replies not yet received (the batch is freed at 0) */
    bool done;          /* cb already ran (timeout/close); late replies are only counted */
    rk_status st;       /* batch status so far */
    cc_key *keys;       /* (n) copies */
    cc_record *recs;    /* (n) results */
    rk_status *sts;     /* (n) per-key status */
    slot *slots;        /* (n) reply privdata */
    struct event *timer; /* command timeout */
    cc_lookup_cb cb;    /* completion */
    void *arg;          /* its argument */
};

struct cc_redis_async {
    struct event_base *base; /* borrowed loop */
    redisAsyncContext *ac;   /* connection; NULL while disconnected */
    char *host;              /* owned */
    int port;
    char prefix[64];         /* key prefix */
    cc_redis_opts o;         /* timeouts, backoff, limits */
    uint64_t retry_at_ns;    /* no reconnect before this (after a failed connect) */
    batch *inflight;         /* batches whose callback has not run */
};

/* Run the batch's callback once, then forget it in the owner's list. */
static void deliver(batch *b, rk_status st)
{
    if (b->done)
        return;
    b->done = true;
    if (b->timer)
        event_del(b->timer);
    if (b->a) {
        for (batch **pp = &b->a->inflight; *pp; pp = &(*pp)->next)
            if (*pp == b) {
                *pp = b->next;
                break;
            }
    }
    b->cb(b->arg, st, b->recs, b->sts, b->n);
}

/* Free a batch whose callback ran and whose replies all arrived. */
static void batch_free(batch *b)
{
    for (size_t i = 0; i < b->n; i++)
        cc_record_clear(&b->recs[i]);
    if (b->timer)
        event_free(b->timer);
    rk_free(b->keys);
    rk_free(b->recs);
    rk_free(b->sts);
    rk_free(b->slots);
    rk_free(b);
}

/* hiredis reply callback: reply NULL means the connection went away. */
static void on_reply(redisAsyncContext *ac, void *r, void *privdata)
{
    slot *sl = privdata;
    batch *b = sl->b;
    redisReply *rep = r;
    if (!b->done) {
        if (!rep) {
            b->st = RK_ERR_UNAVAILABLE;
        } else {
            rk_status st = cc_redis_parse_record(rep, &b->keys[sl->i], &b->recs[sl->i]);
            if (st != RK_OK && st != RK_ERR_NOT_FOUND)
                st = RK_ERR_NOT_FOUND; /* a damaged record is a miss, as in the sync backend */
            b->sts[sl->i] = st;
        }
    }
    if (--b->left == 0) {
        deliver(b, b->st);
        batch_free(b);
    }
}

static void on_connect(const redisAsyncContext *ac, int status)
{
    cc_redis_async *a = ac->data;
    if (status != REDIS_OK && a) {
        RK_WARN("redis %s:%d: %s", a->host, a->port, ac->errstr ? ac->errstr : "connect failed");
        a->retry_at_ns = rk_now_ns() + (uint64_t)a->o.backoff_ms * 1000000ull;
        if (a->ac == ac)
            a->ac = NULL; /* hiredis frees the context after this callback */
    }
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    cc_redis_async *a = ac->data;
    if (a && a->ac == ac)
        a->ac = NULL;
}

/* Start a connection if there is none (and the backoff allows). */
static rk_status ensure_connected(cc_redis_async *a)
{
    if (a->ac)
        return RK_OK;
    if (rk_now_ns() < a->retry_at_ns)
        return rk_error_set(RK_ERR_UNAVAILABLE, "redis %s:%d: reconnect backoff", a->host, a->port);
    redisAsyncContext *ac = redisAsyncConnect(a->host, a->port);
    if (!ac || ac->err) {
        rk_status s = rk_error_set(RK_ERR_UNAVAILABLE, "redis %s:%d: %s", a->host, a->port,
                                   ac && ac->errstr ? ac->errstr : "out of memory");
        if (ac)
            redisAsyncFree(ac);
        a->retry_at_ns = rk_now_ns() + (uint64_t)a->o.backoff_ms * 1000000ull;
        return s;
    }
    ac->data = a;
    ac->c.reader->maxbuf = a->o.reader_maxbuf;
    if (redisLibeventAttach(ac, a->base) != REDIS_OK) {
        redisAsyncFree(ac);
        return rk_error_set(RK_ERR_INTERNAL, "redis: libevent attach failed");
    }
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    a->ac = ac;
    return RK_OK;
}

/* Timer: the batch took too long. Answer now and drop the connection; the replies still
 * pending come back NULL and only free their batches. */
static void on_timeout(evutil_socket_t fd, short what, void *arg)
{
    batch *b = arg;
    cc_redis_async *a = b->a;
    deliver(b, rk_error_set(RK_ERR_TIMEOUT, "redis lookup timed out"));
    if (a && a->ac) {
        /* not redisAsyncDisconnect: that waits for the pending replies a stalled server
         * never sends; freeing fails them at once (NULL replies free the batch) */
        redisAsyncContext *ac = a->ac;
        a->ac = NULL;
        redisAsyncFree(ac);
    }
}

rk_status cc_redis_async_get(cc_redis_async *a, const cc_key *keys, size_t n, cc_lookup_cb cb, void *arg)
{
    if (!a || !keys || !n || !cb || n > a->o.max_reply_elements)
        return rk_error_set(RK_ERR_INVALID, "async get: bad arguments or batch larger than %zu",
                            a ? a->o.max_reply_elements : 0);
    rk_status s = ensure_connected(a);
    if (s != RK_OK)
        return s;
    batch *b = rk_calloc(1, sizeof(*b));
    if (!b)
        return rk_error_set(RK_ERR_NOMEM, "async get");
    b->keys = rk_malloc(n * sizeof(cc_key));
    b->recs = rk_calloc(n, sizeof(cc_record));
    b->sts = rk_calloc(n, sizeof(rk_status));
    b->slots = rk_calloc(n, sizeof(slot));
    b->timer = evtimer_new(a->base, on_timeout, b);
    if (!b->keys || !b->recs || !b->sts || !b->slots || !b->timer) {
        b->n = 0;
        batch_free(b);
        return rk_error_set(RK_ERR_NOMEM, "async get");
    }
    memcpy(b->keys, keys, n * sizeof(cc_key));
    b->a = a;
    b->n = n;
    b->cb = cb;
    b->arg = arg;
    b->st = RK_OK;
    for (size_t i = 0; i < n; i++) {
        char hex[CC_KEY_HEX_LEN + 1], k[128];
        snprintf(k, sizeof(k), "%sr:%s", a->prefix, cc_key_to_hex(&keys[i], hex));
        const char *argv[] = {"HMGET", k, "rec", "hits", "last"};
        b->sts[i] = RK_ERR_NOT_FOUND;
        b->slots[i].b = b;
        b->slots[i].i = i;
        if (redisAsyncCommandArgv(a->ac, on_reply, &b->slots[i], 5, argv, NULL) != REDIS_OK) {
            /* the context is unusable: commands already queued get NULL replies later */
            b->st = RK_ERR_UNAVAILABLE;
            break;
        }
        b->left++;
    }
    if (!b->left) { /* nothing was queued: fail synchronously, cb never runs */
        batch_free(b);
        return rk_error_set(RK_ERR_UNAVAILABLE, "redis %s:%d: not connected", a->host, a->port);
    }
    struct timeval tv = {a->o.command_timeout_ms / 1000, (a->o.command_timeout_ms % 1000) * 1000};
    evtimer_add(b->timer, &tv);
    b->next = a->inflight;
    a->inflight = b;
    return RK_OK;
}

rk_status cc_redis_async_open(struct event_base *base, const char *host, int port, const char *prefix,
                              const cc_redis_opts *opts, cc_redis_async **out)
{
    if (!base || !host || !*host || port <= 0 || port > 65535 || !out)
        return rk_error_set(RK_ERR_INVALID, "async redis: bad arguments");
    if (!prefix)
        prefix = "rk:";
    if (strlen(prefix) >= 48)
        return rk_error_set(RK_ERR_INVALID, "async redis: prefix too long");
    cc_redis_async *a = rk_calloc(1, sizeof(*a));
    if (!a || !(a->host = rk_strdup(host))) {
        rk_free(a);
        return rk_error_set(RK_ERR_NOMEM, "async redis");
    }
    a->base = base;
    a->port = port;
    snprintf(a->prefix, sizeof(a->prefix), "%s", prefix);
    a->o = opts ? *opts : cc_redis_opts_default();
    if (!a->o.max_reply_elements)
        a->o.max_reply_elements = 1u << 20;
    if (a->o.backoff_ms < 1)
        a->o.backoff_ms = 1;
    rk_status s = ensure_connected(a);
    if (s != RK_OK) {
        rk_free(a->host);
        rk_free(a);
        return s;
    }
    *out = a;
    return RK_OK;
}

void cc_redis_async_close(cc_redis_async *a)
{
    if (!a)
        return;
    while (a->inflight) {
        batch *b = a->inflight;
        deliver(b, RK_ERR_CANCELLED); /* unlinks b */
        b->a = NULL;
    }
    if (a->ac) {
        redisAsyncContext *ac = a->ac;
        a->ac = NULL;
        ac->data = NULL;
        redisAsyncFree(ac); /* pending replies come back NULL and free their batches */
    }
    rk_free(a->host);
    rk_free(a);
}
