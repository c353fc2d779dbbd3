/* redis_async.c — non-blocking metadata operations (see ragkv/redis_async.h). This is the only
 * chunkcache file that includes the event library. Everything runs on the loop thread.
 *
 * An operation (op) is a few pipelined commands and the parsing of their replies. It runs in
 * attempts: an attempt waits for a ready connection (connected, marker key checked, scripts
 * loaded), sends its commands, and ends once every reply is in — hiredis returns NULL replies
 * for everything pending when a connection dies or is freed, so an attempt always ends. A
 * timer bounds each attempt (command_timeout_ms; on expiry the connection is dropped, which
 * ends the attempts of every op on it). A failed attempt is retried after backoff_ms doubling
 * to 1 s, `retries` times, the synchronous backend's schedule (metastore_redis.c do_call_any).
 *
 * States of an op: WAIT (for a ready connection), SENT (replies outstanding), BACKOFF (timer
 * armed for the next attempt), DONE (outcome final, delivery pending on the op's timer). The
 * user's callback always runs from the op's timer, at the top of the loop, so no callback ever
 * runs inside hiredis or inside this file's own state changes. Invariants: an op in WAIT
 * implies a connection exists (a->ac) or, with Sentinels, is being looked for (a->sc); when
 * an attempt ends, none of its replies is still outstanding (so the next attempt may reuse the
 * op's reply slots).
 *
 * With Sentinels, a connection starts with a resolution: the Sentinels are asked in turn
 * (SENTINEL get-master-addr-by-name, each on its own async connection on the loop, within
 * connect_timeout_ms), starting with the one that answered last; the first address named is
 * connected to, and ROLE, sent ahead of the marker check and the script loads, must say master
 * or the connection is dropped like a failed connect (so no op is ever sent to a replica). A
 * resolution outlives an op's deadline: the op's next attempt waits for the same one, which
 * meanwhile moves on to the next Sentinel. */
#define RK_LOG_COMPONENT "cc.redis.async"
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <event2/event.h>
#include <hiredis/async.h>
#include <hiredis/adapters/libevent.h>

#include "ragkv/alloc.h"
#include "ragkv/clock.h"
#include "ragkv/log.h"
#include "ragkv/redis_async.h"
#include "ragkv/redis_sentinel.h"
#include "redis_private.h"

enum op_kind { OP_GET, OP_READABLE, OP_INSERT, OP_REMOVE };
enum op_state { ST_WAIT, ST_SENT, ST_BACKOFF, ST_DONE };
enum { SHA_INSERT, SHA_REMOVE, NSHA }; /* scripts loaded at connect (the ones this file calls) */
enum { CHK_EXISTS, CHK_SHA, CHK_ROLE = CHK_SHA + NSHA }; /* connect-time replies (on_check) */

typedef struct op op;

/* One command's reply callback privdata. */
typedef struct slot {
    op *o;    /* owning op */
    size_t i; /* index of the command in the op */
} slot;

struct op {
    cc_redis_async *a;     /* owner; NULL once delivered by close */
    op *next;              /* in a->ops: every op not yet delivered */
    int kind;              /* enum op_kind */
    int state;             /* enum op_state */
    int attempt;           /* attempts started */
    int phase;             /* OP_INSERT: 0 the script, 1 WAIT after a successful insert */
    size_t ncmd;           /* commands an attempt sends */
    size_t left;           /* replies outstanding on the connection */
    rk_status st;          /* outcome of the current attempt (RK_OK until something fails) */
    bool final;            /* st came from Redis' answer: not to be retried */
    char msg[200];         /* st's message, restored with rk_error_set at delivery */
    struct event *timer;   /* the attempt's deadline (WAIT, SENT), backoff, delivery (DONE) */
    slot *slots;           /* (ncmd) reply privdata */
    /* OP_GET: ncmd keys */
    cc_key *keys;          /* (ncmd) copies */
    cc_record *recs;       /* (ncmd) results (owned until delivery) */
    rk_status *sts;        /* (n) per key (OP_GET) or per pair (OP_READABLE) */
    /* OP_READABLE: n pairs, ncmd of them asked (ns != tenant) */
    char *tenant;          /* owned */
    char **ns;             /* (n) owned copies */
    bool *ok;              /* (n) answers */
    size_t *pair;          /* (ncmd) the pair each command asks about */
    size_t n;              /* pairs (OP_READABLE) */
    /* OP_INSERT */
    cc_redis_insert_args *ins; /* the script's arguments, owned */
    cc_evlist ev;          /* evicted by the insert */
    /* OP_REMOVE */
    cc_redis_remove_args rem; /* the script's arguments */
    cc_record removed;     /* the removed record */
    union {
        cc_lookup_cb get;
        cc_readable_cb readable;
        cc_insert_cb insert;
        cc_remove_cb remove;
    } cb;                  /* completion (by kind) */
    void *arg;             /* its argument */
};

/* A Sentinel's address. */
typedef struct sentinel {
    char host[128];
    int port;
} sentinel;

struct cc_redis_async {
    struct event_base *base; /* borrowed loop */
    redisAsyncContext *ac;   /* connection; NULL while disconnected */
    bool ready;              /* ac connected and checked: ops may send */
    int checks_left;         /* connect-time replies still to come */
    bool marker;             /* the connect-time EXISTS found the marker key */
    bool known_intact;       /* a connection saw the marker: a later one without it means loss */
    bool closing;            /* close began: no new operations */
    uint64_t losses;         /* connections that found the marker gone (cc_redis_async_losses) */
    char sha[NSHA][41];      /* SCRIPT LOAD digests ("" : EVAL) */
    char host[128];          /* the primary: as given, or as a Sentinel last named it ("" before) */
    int port;
    char where[160];         /* "host:port", or the master's name before a Sentinel named it (messages) */
    char prefix[64];         /* key prefix */
    cc_redis_opts o;         /* timeouts, retries, backoff, limits */
    uint64_t wait_skip_until_ms; /* after a WAIT shortfall: no WAIT before this (monotonic) */
    op *ops;                 /* every op not yet delivered */
    size_t nops;             /* its length */
    /* with Sentinels (opts->sentinels), else sent is NULL and host:port fixed */
    sentinel *sent;          /* (nsent) the Sentinels, in the order given; owned */
    size_t nsent;
    char *sentinels;         /* the list as given (messages); owned */
    char *master;            /* the master name they monitor; owned */
    redisAsyncContext *sc;   /* the Sentinel being asked; NULL when no resolution runs */
    struct event *stimer;    /* its deadline (connect_timeout_ms) */
    size_t s_first;          /* the Sentinel a resolution asks first: the last that answered */
    size_t s_cur;            /* the one being asked */
    size_t s_tried;          /* how many this resolution asked */
    char s_err[160];         /* the last one's failure */
};

static void start_attempt(op *o);
static void conn_lost(cc_redis_async *a, const redisAsyncContext *ac, const char *why);
static void drop_conn(cc_redis_async *a, rk_status st, const char *why);

/* ---- op lifecycle ------------------------------------------------------------------------ */

static void op_free(op *o)
{
    if (o->timer)
        event_free(o->timer);
    for (size_t i = 0; o->recs && i < o->ncmd; i++)
        cc_record_clear(&o->recs[i]);
    rk_free(o->keys);
    rk_free(o->recs);
    rk_free(o->sts);
    rk_free(o->slots);
    rk_free(o->tenant);
    for (size_t i = 0; o->ns && i < o->n; i++)
        rk_free(o->ns[i]);
    rk_free(o->ns);
    rk_free(o->ok);
    rk_free(o->pair);
    cc_redis_insert_args_free(o->ins);
    rk_free(o->ins);
    cc_evlist_free(&o->ev);
    cc_record_clear(&o->removed);
    rk_free(o);
}

/* Set the attempt's outcome (the first one set wins) with a message. */
static void op_fail(op *o, rk_status st, bool final, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static void op_fail(op *o, rk_status st, bool final, const char *fmt, ...)
{
    if (o->st != RK_OK || o->final)
        return;
    o->st = st;
    o->final = final;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(o->msg, sizeof(o->msg), fmt, ap);
    va_end(ap);
}

/* Take the outcome of a parse: st and the thread's error message. */
static void op_result(op *o, rk_status st)
{
    o->st = st;
    o->final = true;
    snprintf(o->msg, sizeof(o->msg), "%s", st == RK_OK ? "" : rk_error_msg());
}

/* The outcome is final: deliver it from the op's timer, at the top of the loop. */
static void schedule_delivery(op *o)
{
    o->state = ST_DONE;
    evtimer_del(o->timer);
    event_active(o->timer, EV_TIMEOUT, 0);
}

/* Unlink o from its owner's list. */
static void op_unlink(op *o)
{
    cc_redis_async *a = o->a;
    if (!a)
        return;
    for (op **pp = &a->ops; *pp; pp = &(*pp)->next)
        if (*pp == o) {
            *pp = o->next;
            a->nops--;
            break;
        }
}

/* Run the user's callback with st (the op is unlinked and marked delivered first). */
static void run_callback(op *o, rk_status st)
{
    op_unlink(o);
    o->a = NULL;
    o->state = ST_DONE;
    if (st != RK_OK)
        rk_error_set(st, "%s", o->msg);
    switch (o->kind) {
    case OP_GET:
        o->cb.get(o->arg, st, o->recs, o->sts, o->ncmd);
        break;
    case OP_READABLE:
        o->cb.readable(o->arg, st, o->ok, o->sts, o->n);
        break;
    case OP_INSERT:
        o->cb.insert(o->arg, st, &o->ev);
        break;
    default:
        o->cb.remove(o->arg, st, &o->removed);
        break;
    }
}

/* An attempt failed with st (no reply of it outstanding): retry after the backoff, or give up. */
static void attempt_failed(op *o, rk_status st)
{
    cc_redis_async *a = o->a;
    evtimer_del(o->timer);
    if (o->st == RK_OK)
        op_fail(o, st, false, "redis %s: operation failed", a->where);
    if (o->final || o->attempt > a->o.retries) {
        schedule_delivery(o);
        return;
    }
    int delay = a->o.backoff_ms;
    for (int i = 1; i < o->attempt && delay < 1000; i++)
        delay *= 2;
    if (delay > 1000)
        delay = 1000;
    o->state = ST_BACKOFF;
    struct timeval tv = {delay / 1000, (delay % 1000) * 1000};
    evtimer_add(o->timer, &tv);
}

/* Every reply of the attempt is in. */
static void attempt_end(op *o)
{
    if (o->st == RK_OK || o->final)
        schedule_delivery(o);
    else
        attempt_failed(o, o->st);
}

/* ---- replies ----------------------------------------------------------------------------- */

/* Send one command of o (its reply goes to slot i). False when hiredis refused it. */
static bool send_cmd(op *o, size_t i, int argc, const char **argv, const size_t *lens);

/* Send the op's script call (EVALSHA when the digest is known, else EVAL). */
static bool send_script(op *o, int id, int nargs, const char **args, const size_t *alen, bool by_sha)
{
    const char *argv[16];
    size_t lens[16];
    int sha = id == CC_RS_INSERT ? SHA_INSERT : SHA_REMOVE;
    int argc = cc_redis_script_argv(id, by_sha ? o->a->sha[sha] : NULL, o->a->prefix, nargs, args, alen, argv, lens);
    return argc > 0 && send_cmd(o, 0, argc, argv, lens);
}

/* The reply (NULL: connection gone) to command i of an OP_GET. */
static void reply_get(op *o, size_t i, const redisReply *rep)
{
    if (!rep) {
        op_fail(o, RK_ERR_UNAVAILABLE, false, "redis %s: connection lost", o->a->where);
        return;
    }
    rk_status st = cc_redis_parse_record(rep, &o->keys[i], &o->recs[i]);
    if (st != RK_OK && st != RK_ERR_NOT_FOUND) {
        RK_WARN("record %zu of a batch: %s", i, rk_error_msg());
        st = RK_ERR_CORRUPT; /* a damaged record is a miss the store counts (as in r_get) */
    }
    o->sts[i] = st;
}

/* The reply to command i of an OP_READABLE (a SISMEMBER). */
static void reply_readable(op *o, size_t i, const redisReply *rep)
{
    if (!rep) {
        op_fail(o, RK_ERR_UNAVAILABLE, false, "redis %s: connection lost", o->a->where);
        return;
    }
    size_t p = o->pair[i];
    if (rep->type == REDIS_REPLY_INTEGER) {
        o->ok[p] = rep->integer == 1;
        o->sts[p] = RK_OK;
    } else {
        o->sts[p] = cc_redis_reply_error(rep, "readable");
    }
}

/* The reply to a script call (INSERT or REMOVE) or, after a successful insert, to its WAIT. */
static void reply_script(op *o, const redisReply *rep)
{
    cc_redis_async *a = o->a;
    if (o->kind == OP_INSERT && o->phase == 1) { /* WAIT: the insert is committed either way */
        if (!rep)
            RK_WARN("redis WAIT failed: connection lost");
        else if (!cc_redis_wait_ok(rep, &a->o))
            a->wait_skip_until_ms = rk_now_ns() / 1000000 + 10000;
        return;
    }
    if (!rep) {
        op_fail(o, RK_ERR_UNAVAILABLE, false, "redis %s: connection lost", a->where);
        return;
    }
    if (cc_redis_is_readonly(rep)) { /* a demoted primary: reconnect and try again */
        op_fail(o, RK_ERR_UNAVAILABLE, false, "redis %s: %s", a->where, rep->str);
        drop_conn(a, RK_ERR_UNAVAILABLE, "read-only replica");
        return;
    }
    bool ins = o->kind == OP_INSERT;
    if (cc_redis_is_noscript(rep)) { /* script cache flushed (restart, SCRIPT FLUSH): EVAL */
        a->sha[ins ? SHA_INSERT : SHA_REMOVE][0] = 0;
        bool sent = ins ? send_script(o, CC_RS_INSERT, 10, o->ins->a, o->ins->al, false)
                        : send_script(o, CC_RS_REMOVE, 2, o->rem.a, NULL, false);
        if (!sent)
            op_fail(o, RK_ERR_UNAVAILABLE, false, "redis %s: connection unusable", a->where);
        return;
    }
    rk_error_clear(); /* a parse that sets no message leaves none */
    if (!ins) {
        cc_record_clear(&o->removed);
        op_result(o, cc_redis_remove_reply(rep, &o->removed));
        return;
    }
    cc_evlist_free(&o->ev);
    op_result(o, cc_redis_insert_reply(rep, a->o.max_reply_elements, o->ins->ns, &o->ev));
    if (o->st == RK_OK && a->o.wait_replicas > 0 && rk_now_ns() / 1000000 >= a->wait_skip_until_ms) {
        cc_redis_wait_args w;
        cc_redis_wait_args_init(&w, &a->o);
        o->phase = 1;
        /* WAIT may take up to its own timeout: the attempt's deadline starts again */
        struct timeval tv = {a->o.command_timeout_ms / 1000, (a->o.command_timeout_ms % 1000) * 1000};
        evtimer_add(o->timer, &tv);
        if (!send_cmd(o, 0, 3, w.a, w.al))
            RK_WARN("redis WAIT not sent: connection unusable");
    }
}

/* hiredis reply callback of every op command. */
static void on_reply(redisAsyncContext *ac, void *r, void *privdata)
{
    slot *sl = privdata;
    op *o = sl->o;
    redisReply *rep = r;
    if (o->state == ST_DONE) { /* delivered by close: only its replies are awaited */
        if (--o->left == 0)
            op_free(o);
        return;
    }
    cc_redis_async *a = o->a;
    if (!rep) /* hiredis is freeing this connection (unless we dropped it already) */
        conn_lost(a, ac, "connection lost");
    switch (o->kind) {
    case OP_GET:
        reply_get(o, sl->i, rep);
        break;
    case OP_READABLE:
        reply_readable(o, sl->i, rep);
        break;
    default:
        reply_script(o, rep);
        break;
    }
    if (--o->left == 0)
        attempt_end(o);
}

static bool send_cmd(op *o, size_t i, int argc, const char **argv, const size_t *lens)
{
    if (redisAsyncCommandArgv(o->a->ac, on_reply, &o->slots[i], argc, argv, lens) != REDIS_OK)
        return false;
    o->left++;
    return true;
}

/* Send the current attempt's commands (the connection is ready). */
static void send_op(op *o)
{
    cc_redis_async *a = o->a;
    o->state = ST_SENT;
    bool ok = true;
    switch (o->kind) {
    case OP_GET:
        for (size_t i = 0; ok && i < o->ncmd; i++) {
            char hex[CC_KEY_HEX_LEN + 1], k[128];
            snprintf(k, sizeof(k), "%sr:%s", a->prefix, cc_key_to_hex(&o->keys[i], hex));
            const char *argv[] = {"HMGET", k, "rec", "hits", "last"};
            ok = send_cmd(o, i, 5, argv, NULL);
        }
        break;
    case OP_READABLE:
        for (size_t i = 0; ok && i < o->ncmd; i++) {
            char k[CC_NAME_MAX + 80];
            snprintf(k, sizeof(k), "%sg:%s", a->prefix, o->ns[o->pair[i]]);
            const char *argv[] = {"SISMEMBER", k, o->tenant};
            ok = send_cmd(o, i, 3, argv, NULL);
        }
        break;
    case OP_INSERT:
        ok = send_script(o, CC_RS_INSERT, 10, o->ins->a, o->ins->al, true);
        break;
    default:
        ok = send_script(o, CC_RS_REMOVE, 2, o->rem.a, NULL, true);
        break;
    }
    if (!ok) /* the context is unusable: what was queued comes back NULL when it is freed */
        op_fail(o, RK_ERR_UNAVAILABLE, false, "redis %s: connection unusable", a->where);
    if (o->left == 0)
        attempt_failed(o, RK_ERR_UNAVAILABLE);
}

/* ---- the connection ---------------------------------------------------------------------- */

/* Fail the current attempt of every op waiting for a connection. */
static void fail_waiting(cc_redis_async *a, rk_status st, bool final, const char *why)
{
    for (op *o = a->ops; o; o = o->next)
        if (o->state == ST_WAIT) {
            op_fail(o, st, final, "redis %s: %s", a->where, why);
            attempt_failed(o, st);
        }
}

/* hiredis is freeing ac (connect failed, connection lost): forget it. */
static void conn_lost(cc_redis_async *a, const redisAsyncContext *ac, const char *why)
{
    if (!a || ac != a->ac)
        return;
    a->ac = NULL;
    a->ready = false;
    fail_waiting(a, RK_ERR_UNAVAILABLE, false, why);
}

/* Drop the connection ourselves: waiting ops fail their attempt with st; ops with commands
 * in flight get NULL replies from hiredis (at once, or right after the current callback). */
static void drop_conn(cc_redis_async *a, rk_status st, const char *why)
{
    redisAsyncContext *ac = a->ac;
    if (!ac)
        return;
    a->ac = NULL;
    a->ready = false;
    fail_waiting(a, st, false, why);
    redisAsyncFree(ac);
}

/* The connection is checked: send what waits. */
static void conn_ready(cc_redis_async *a)
{
    a->ready = true;
    for (op *o = a->ops; o; o = o->next)
        if (o->state == ST_WAIT && a->ready)
            send_op(o);
}

/* Replies to the connect-time commands (privdata: enum CHK_*): ROLE first with Sentinels,
 * then EXISTS <marker>, then the SCRIPT LOADs. */
static void on_check(redisAsyncContext *ac, void *r, void *privdata)
{
    cc_redis_async *a = ac->data;
    redisReply *rep = r;
    intptr_t idx = (intptr_t)privdata;
    if (!a || ac != a->ac)
        return; /* an old connection's */
    if (!rep) {
        conn_lost(a, ac, "connection lost");
        return;
    }
    if (idx == CHK_ROLE) {
        if (!cc_redis_role_is_primary(rep)) { /* nothing else was sent: drop it, resolve again */
            RK_WARN("redis %s, named by the Sentinels as master %s, is not a primary", a->where, a->master);
            drop_conn(a, RK_ERR_UNAVAILABLE, "not a primary (failover in progress?)");
            return;
        }
    } else if (idx == CHK_EXISTS) {
        if (rep->type != REDIS_REPLY_INTEGER) {
            char why[160];
            snprintf(why, sizeof(why), "EXISTS failed: %s", rep->type == REDIS_REPLY_ERROR ? rep->str : "bad reply");
            drop_conn(a, RK_ERR_UNAVAILABLE, why);
            return;
        }
        a->marker = rep->integer == 1;
    } else {
        char *sha = a->sha[idx - CHK_SHA];
        if (rep->type == REDIS_REPLY_STRING && rep->len == 40) {
            memcpy(sha, rep->str, 40);
            sha[40] = 0;
        } else {
            sha[0] = 0; /* EVAL then */
        }
    }
    if (--a->checks_left)
        return;
    if (!a->marker && a->known_intact) {
        /* not transient: nothing may be read from or written to the empty Redis until the
         * synchronous store has rebuilt it (and set the marker again) */
        RK_WARN("redis %s came back without ragkv metadata (prefix %s)", a->where, a->prefix);
        a->losses++;
        fail_waiting(a, RK_ERR_UNAVAILABLE, true, "lost ragkv's metadata (restart without persistence?): rebuild pending");
        drop_conn(a, RK_ERR_UNAVAILABLE, "lost ragkv's metadata");
        return;
    }
    if (a->marker)
        a->known_intact = true;
    conn_ready(a);
}

static void on_connect(const redisAsyncContext *ac, int status)
{
    cc_redis_async *a = ac->data;
    if (status != REDIS_OK && a && ac == a->ac) {
        RK_WARN("redis %s: %s", a->where, ac->errstr ? ac->errstr : "connect failed");
        conn_lost(a, ac, ac->errstr ? ac->errstr : "connect failed"); /* hiredis frees ac next */
    }
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    (void)status;
    conn_lost(ac->data, ac, "disconnected");
}

/* Connect to host:port and queue the checks (ROLE with Sentinels, the marker, the scripts'
 * digests). */
static rk_status conn_open(cc_redis_async *a)
{
    redisAsyncContext *ac = redisAsyncConnect(a->host, a->port);
    if (!ac || ac->err) {
        rk_status s = rk_error_set(RK_ERR_UNAVAILABLE, "redis %s: %s", a->where,
                                   ac && ac->errstr ? ac->errstr : "out of memory");
        if (ac)
            redisAsyncFree(ac);
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
    a->ready = false;
    a->marker = false;
    char mk[80];
    snprintf(mk, sizeof(mk), "%s!", a->prefix);
    const char *ro[] = {"ROLE"};
    const char *ex[] = {"EXISTS", mk};
    const char *li[] = {"SCRIPT", "LOAD", cc_redis_scripts[CC_RS_INSERT]};
    const char *lr[] = {"SCRIPT", "LOAD", cc_redis_scripts[CC_RS_REMOVE]};
    a->checks_left = a->sent ? 4 : 3;
    if ((a->sent && redisAsyncCommandArgv(ac, on_check, (void *)(intptr_t)CHK_ROLE, 1, ro, NULL) != REDIS_OK) ||
        redisAsyncCommandArgv(ac, on_check, (void *)(intptr_t)CHK_EXISTS, 2, ex, NULL) != REDIS_OK ||
        redisAsyncCommandArgv(ac, on_check, (void *)(intptr_t)(CHK_SHA + SHA_INSERT), 3, li, NULL) != REDIS_OK ||
        redisAsyncCommandArgv(ac, on_check, (void *)(intptr_t)(CHK_SHA + SHA_REMOVE), 3, lr, NULL) != REDIS_OK) {
        drop_conn(a, RK_ERR_UNAVAILABLE, "connection unusable");
        return rk_error_set(RK_ERR_UNAVAILABLE, "redis %s: connection unusable", a->where);
    }
    return RK_OK;
}

/* ---- Sentinels --------------------------------------------------------------------------- */

static rk_status resolve_next(cc_redis_async *a);

/* Record where the primary is (host as a Sentinel named it). */
static void set_primary(cc_redis_async *a, const char *host, int port)
{
    if (a->host[0] && (strcmp(a->host, host) != 0 || a->port != port))
        RK_WARN("redis primary of %s moved: %s:%d -> %s:%d", a->master, a->host, a->port, host, port);
    snprintf(a->host, sizeof(a->host), "%s", host);
    a->port = port;
    snprintf(a->where, sizeof(a->where), "%s:%d", host, port);
}

/* Stop asking the current Sentinel (its reply, if any, comes back NULL and is ignored). */
static void sentinel_drop(cc_redis_async *a)
{
    redisAsyncContext *sc = a->sc;
    if (!sc)
        return;
    a->sc = NULL;
    evtimer_del(a->stimer);
    redisAsyncFree(sc);
}

/* The current Sentinel failed (why): ask the next; when none is left, the ops waiting for a
 * connection fail their attempt. */
static void sentinel_failed(cc_redis_async *a, const char *why)
{
    const sentinel *s = &a->sent[a->s_cur];
    snprintf(a->s_err, sizeof(a->s_err), "%s:%d: %s", s->host, s->port, why);
    RK_DEBUG("sentinel %s", a->s_err);
    if (resolve_next(a) != RK_OK)
        fail_waiting(a, RK_ERR_UNAVAILABLE, false, rk_error_msg());
}

/* The answer of the Sentinel being asked (NULL: its connection failed or was dropped). */
static void on_sentinel_reply(redisAsyncContext *sc, void *r, void *privdata)
{
    cc_redis_async *a = privdata;
    redisReply *rep = r;
    if (sc != a->sc)
        return; /* dropped: no longer asked */
    if (!rep) { /* hiredis frees sc after this */
        a->sc = NULL;
        evtimer_del(a->stimer);
        sentinel_failed(a, sc->errstr && sc->errstr[0] ? sc->errstr : "connection lost");
        return;
    }
    char host[sizeof(a->host)];
    int port;
    rk_status st = cc_sentinel_addr_reply(rep, host, sizeof(host), &port);
    sentinel_drop(a); /* freed once this callback returns */
    if (st != RK_OK) {
        char why[160];
        snprintf(why, sizeof(why), "no address for master %s (%s)", a->master, rk_error_msg());
        sentinel_failed(a, why);
        return;
    }
    a->s_first = a->s_cur; /* ask it first next time */
    set_primary(a, host, port);
    if (conn_open(a) != RK_OK)
        fail_waiting(a, RK_ERR_UNAVAILABLE, false, rk_error_msg());
}

/* The Sentinel being asked did not answer within connect_timeout_ms. */
static void on_sentinel_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    cc_redis_async *a = arg;
    sentinel_drop(a);
    char why[64];
    snprintf(why, sizeof(why), "no answer within %d ms", a->o.connect_timeout_ms);
    sentinel_failed(a, why);
}

/* Ask Sentinel i for the primary's address (the answer comes to on_sentinel_reply). */
static rk_status sentinel_ask(cc_redis_async *a, size_t i)
{
    const sentinel *s = &a->sent[i];
    redisAsyncContext *sc = redisAsyncConnect(s->host, s->port);
    if (!sc || sc->err) {
        rk_status st = rk_error_set(RK_ERR_UNAVAILABLE, "%s:%d: %s", s->host, s->port,
                                    sc && sc->errstr ? sc->errstr : "out of memory");
        if (sc)
            redisAsyncFree(sc);
        return st;
    }
    sc->data = a;
    const char *argv[] = {"SENTINEL", "get-master-addr-by-name", a->master};
    if (redisLibeventAttach(sc, a->base) != REDIS_OK ||
        redisAsyncCommandArgv(sc, on_sentinel_reply, a, 3, argv, NULL) != REDIS_OK) {
        redisAsyncFree(sc);
        return rk_error_set(RK_ERR_UNAVAILABLE, "%s:%d: connection unusable", s->host, s->port);
    }
    a->sc = sc;
    a->s_cur = i;
    struct timeval tv = {a->o.connect_timeout_ms / 1000, (a->o.connect_timeout_ms % 1000) * 1000};
    evtimer_add(a->stimer, &tv);
    return RK_OK;
}

/* Ask the next Sentinel of this resolution not yet asked. RK_ERR_UNAVAILABLE, saying so, when
 * every one has failed. */
static rk_status resolve_next(cc_redis_async *a)
{
    while (a->s_tried < a->nsent) {
        size_t i = (a->s_first + a->s_tried++) % a->nsent;
        if (sentinel_ask(a, i) == RK_OK)
            return RK_OK;
        snprintf(a->s_err, sizeof(a->s_err), "%s", rk_error_msg());
        RK_DEBUG("sentinel %s", a->s_err);
    }
    return rk_error_set(RK_ERR_UNAVAILABLE, "no Sentinel of %s named master %s (last: %s)", a->sentinels, a->master,
                        a->s_err);
}

/* Start a connection: to host:port, or first a resolution through the Sentinels. */
static rk_status conn_start(cc_redis_async *a)
{
    if (!a->sent)
        return conn_open(a);
    a->s_tried = 0;
    return resolve_next(a);
}

/* ---- attempts ---------------------------------------------------------------------------- */

static void start_attempt(op *o)
{
    cc_redis_async *a = o->a;
    o->attempt++;
    o->st = RK_OK;
    o->final = false;
    o->msg[0] = 0;
    o->phase = 0;
    if (o->kind == OP_GET) {
        for (size_t i = 0; i < o->ncmd; i++) {
            cc_record_clear(&o->recs[i]);
            o->sts[i] = RK_ERR_NOT_FOUND;
        }
    }
    evtimer_del(o->timer);
    struct timeval tv = {a->o.command_timeout_ms / 1000, (a->o.command_timeout_ms % 1000) * 1000};
    evtimer_add(o->timer, &tv);
    if (a->ready) {
        send_op(o);
        return;
    }
    o->state = ST_WAIT;
    if (!a->ac && !a->sc && conn_start(a) != RK_OK) {
        op_fail(o, RK_ERR_UNAVAILABLE, false, "%s", rk_error_msg());
        attempt_failed(o, RK_ERR_UNAVAILABLE);
    }
}

/* The op's timer: the attempt's deadline, the end of a backoff, or the delivery. */
static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    op *o = arg;
    cc_redis_async *a = o->a;
    switch (o->state) {
    case ST_DONE:
        run_callback(o, o->st);
        op_free(o); /* left is 0: delivery is only ever scheduled between attempts */
        return;
    case ST_BACKOFF:
        start_attempt(o);
        return;
    case ST_WAIT: /* the connection did not become ready in time (Redis stalled) */
        op_fail(o, RK_ERR_TIMEOUT, false, "redis %s: %s within %d ms", a->where,
                a->sc ? "no Sentinel named the primary" : "connection not ready", a->o.command_timeout_ms);
        attempt_failed(o, RK_ERR_TIMEOUT);
        drop_conn(a, RK_ERR_UNAVAILABLE, "connect timed out"); /* a resolution goes on (a->sc) */
        return;
    default: /* ST_SENT: stalled; dropping the connection returns our replies NULL */
        if (!(o->kind == OP_INSERT && o->phase == 1)) /* a late WAIT leaves the insert done */
            op_fail(o, RK_ERR_TIMEOUT, false, "redis %s: no answer within %d ms", a->where,
                    a->o.command_timeout_ms);
        drop_conn(a, RK_ERR_UNAVAILABLE, "an operation timed out");
        return;
    }
}

/* A new op of kind with ncmd commands (slots allocated), linked to a. NULL on no memory. */
static op *op_new(cc_redis_async *a, int kind, size_t ncmd, void *arg)
{
    op *o = rk_calloc(1, sizeof(*o));
    if (!o)
        return NULL;
    o->kind = kind;
    o->ncmd = ncmd;
    o->arg = arg;
    o->a = a;
    cc_record_init(&o->removed);
    o->timer = evtimer_new(a->base, on_timer, o);
    o->slots = rk_calloc(ncmd ? ncmd : 1, sizeof(slot));
    if (!o->timer || !o->slots) {
        op_free(o);
        return NULL;
    }
    for (size_t i = 0; i < ncmd; i++) {
        o->slots[i].o = o;
        o->slots[i].i = i;
    }
    return o;
}

/* Link o and start its first attempt (or deliver at once when it sends nothing). */
static rk_status op_start(op *o)
{
    cc_redis_async *a = o->a;
    o->next = a->ops;
    a->ops = o;
    a->nops++;
    if (o->ncmd == 0) {
        o->final = true;
        schedule_delivery(o);
    } else {
        start_attempt(o);
    }
    return RK_OK;
}

/* ---- public ------------------------------------------------------------------------------ */

/* See ragkv/redis_async.h. */
rk_status cc_redis_async_get(cc_redis_async *a, const cc_key *keys, size_t n, cc_lookup_cb cb, void *arg)
{
    if (a && a->closing)
        return rk_error_set(RK_ERR_CANCELLED, "async redis: closing");
    if (!a || !keys || !n || !cb || n > a->o.max_reply_elements)
        return rk_error_set(RK_ERR_INVALID, "async get: bad arguments or batch larger than %zu",
                            a ? a->o.max_reply_elements : 0);
    op *o = op_new(a, OP_GET, n, arg);
    if (!o || !(o->keys = rk_malloc(n * sizeof(cc_key))) || !(o->recs = rk_calloc(n, sizeof(cc_record))) ||
        !(o->sts = rk_calloc(n, sizeof(rk_status)))) {
        if (o)
            op_free(o);
        return rk_error_set(RK_ERR_NOMEM, "async get");
    }
    memcpy(o->keys, keys, n * sizeof(cc_key));
    for (size_t i = 0; i < n; i++)
        cc_record_init(&o->recs[i]);
    o->cb.get = cb;
    return op_start(o);
}

/* See ragkv/redis_async.h. */
rk_status cc_redis_async_readable(cc_redis_async *a, const char *tenant, const char *const *ns, size_t n,
                                  cc_readable_cb cb, void *arg)
{
    if (a && a->closing)
        return rk_error_set(RK_ERR_CANCELLED, "async redis: closing");
    if (!a || !tenant || !ns || !n || !cb)
        return rk_error_set(RK_ERR_INVALID, "async readable: bad arguments");
    size_t asked = 0;
    for (size_t i = 0; i < n; i++)
        asked += strcmp(tenant, ns[i]) != 0;
    op *o = op_new(a, OP_READABLE, asked, arg);
    if (!o)
        return rk_error_set(RK_ERR_NOMEM, "async readable");
    o->n = n;
    o->cb.readable = cb;
    if (!(o->tenant = rk_strdup(tenant)) || !(o->ns = rk_calloc(n, sizeof(char *))) ||
        !(o->ok = rk_calloc(n, sizeof(bool))) || !(o->sts = rk_calloc(n, sizeof(rk_status))) ||
        !(o->pair = rk_calloc(asked ? asked : 1, sizeof(size_t)))) {
        op_free(o);
        return rk_error_set(RK_ERR_NOMEM, "async readable");
    }
    for (size_t i = 0, j = 0; i < n; i++) {
        if (!(o->ns[i] = rk_strdup(ns[i]))) {
            op_free(o);
            return rk_error_set(RK_ERR_NOMEM, "async readable");
        }
        if (strcmp(tenant, ns[i]) == 0) /* one's own namespace: no round trip */
            o->ok[i] = true;
        else
            o->pair[j++] = i;
    }
    return op_start(o);
}

/* See ragkv/redis_async.h. */
rk_status cc_redis_async_insert(cc_redis_async *a, const cc_record *rec, unsigned flags, cc_insert_cb cb, void *arg)
{
    if (a && a->closing)
        return rk_error_set(RK_ERR_CANCELLED, "async redis: closing");
    if (!a || !rec || !cb)
        return rk_error_set(RK_ERR_INVALID, "async insert: bad arguments");
    op *o = op_new(a, OP_INSERT, 1, arg);
    if (!o || !(o->ins = rk_malloc(sizeof(*o->ins)))) {
        if (o)
            op_free(o);
        return rk_error_set(RK_ERR_NOMEM, "async insert");
    }
    rk_status s = cc_redis_insert_args_init(o->ins, rec, flags);
    if (s != RK_OK) {
        rk_free(o->ins);
        o->ins = NULL;
        op_free(o);
        return s;
    }
    o->cb.insert = cb;
    return op_start(o);
}

/* See ragkv/redis_async.h. */
rk_status cc_redis_async_remove(cc_redis_async *a, const cc_key *key, uint64_t expect_csum, cc_remove_cb cb,
                                void *arg)
{
    if (a && a->closing)
        return rk_error_set(RK_ERR_CANCELLED, "async redis: closing");
    if (!a || !key || !cb)
        return rk_error_set(RK_ERR_INVALID, "async remove: bad arguments");
    op *o = op_new(a, OP_REMOVE, 1, arg);
    if (!o)
        return rk_error_set(RK_ERR_NOMEM, "async remove");
    cc_redis_remove_args_init(&o->rem, key, expect_csum);
    o->cb.remove = cb;
    return op_start(o);
}

/* See ragkv/redis_async.h. */
size_t cc_redis_async_pending(const cc_redis_async *a)
{
    return a ? a->nops : 0;
}

/* See ragkv/redis_async.h. */
uint64_t cc_redis_async_losses(const cc_redis_async *a)
{
    return a ? a->losses : 0;
}

/* Take the Sentinels of opts (list and master name) into a. */
static rk_status sentinels_init(cc_redis_async *a, const char *list, const char *master)
{
    size_t n = 1;
    for (const char *p = list; *p; p++)
        n += *p == ',';
    if (!(a->sent = rk_calloc(n, sizeof(sentinel))) || !(a->sentinels = rk_strdup(list)) ||
        !(a->master = rk_strdup(master && *master ? master : "ragkv")) ||
        !(a->stimer = evtimer_new(a->base, on_sentinel_timer, a)))
        return rk_error_set(RK_ERR_NOMEM, "async redis");
    for (const char *p = list; a->nsent < n; a->nsent++) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        sentinel *s = &a->sent[a->nsent];
        if (cc_redis_parse_addr(p, len, s->host, sizeof(s->host), &s->port) != RK_OK) {
            char why[160];
            snprintf(why, sizeof(why), "%s", rk_error_msg());
            return rk_error_set(RK_ERR_INVALID, "async redis: sentinels '%s': %s", list, why);
        }
        p += len + (comma ? 1 : 0);
    }
    snprintf(a->where, sizeof(a->where), "master %s", a->master);
    return RK_OK;
}

/* See ragkv/redis_async.h. */
rk_status cc_redis_async_open(struct event_base *base, const char *host, int port, const char *prefix,
                              const cc_redis_opts *opts, cc_redis_async **out)
{
    bool sentinel = opts && opts->sentinels && *opts->sentinels;
    if (!base || !out || (!sentinel && (!host || !*host || port <= 0 || port > 65535)))
        return rk_error_set(RK_ERR_INVALID, "async redis: bad arguments");
    if (!sentinel && strlen(host) >= sizeof(((cc_redis_async *)0)->host))
        return rk_error_set(RK_ERR_INVALID, "async redis: host name too long");
    if (!prefix)
        prefix = "rk:";
    if (strlen(prefix) >= 48)
        return rk_error_set(RK_ERR_INVALID, "async redis: prefix too long");
    cc_redis_async *a = rk_calloc(1, sizeof(*a));
    if (!a)
        return rk_error_set(RK_ERR_NOMEM, "async redis");
    a->base = base;
    snprintf(a->prefix, sizeof(a->prefix), "%s", prefix);
    a->o = opts ? *opts : cc_redis_opts_default();
    a->o.sentinels = a->o.sentinel_master = NULL; /* borrowed from the caller: copied below */
    if (!a->o.max_reply_elements)
        a->o.max_reply_elements = 1u << 20;
    if (a->o.backoff_ms < 1)
        a->o.backoff_ms = 1;
    if (a->o.retries < 0)
        a->o.retries = 0;
    if (a->o.command_timeout_ms < 1)
        a->o.command_timeout_ms = 1;
    if (a->o.connect_timeout_ms < 1)
        a->o.connect_timeout_ms = 1;
    if (sentinel) {
        rk_status s = sentinels_init(a, opts->sentinels, opts->sentinel_master);
        if (s != RK_OK) {
            cc_redis_async_close(a);
            return s;
        }
    } else {
        snprintf(a->host, sizeof(a->host), "%s", host);
        a->port = port;
        snprintf(a->where, sizeof(a->where), "%s:%d", host, port);
    }
    if (conn_start(a) != RK_OK) /* the first operation tries again */
        RK_WARN("%s", rk_error_msg());
    *out = a;
    return RK_OK;
}

/* See ragkv/redis_async.h. */
void cc_redis_async_close(cc_redis_async *a)
{
    if (!a)
        return;
    a->closing = true;
    while (a->ops) {
        op *o = a->ops;
        evtimer_del(o->timer);
        bool answered = o->state == ST_DONE;
        if (!answered)
            snprintf(o->msg, sizeof(o->msg), "redis %s: connection closed", a->where);
        run_callback(o, answered ? o->st : RK_ERR_CANCELLED); /* unlinks o */
        if (o->left == 0)
            op_free(o); /* else freed by its NULL replies below */
    }
    if (a->ac) {
        redisAsyncContext *ac = a->ac;
        a->ac = NULL;
        a->ready = false;
        redisAsyncFree(ac); /* pending replies come back NULL and free their ops */
    }
    sentinel_drop(a);
    if (a->stimer)
        event_free(a->stimer);
    rk_free(a->sent);
    rk_free(a->sentinels);
    rk_free(a->master);
    rk_free(a);
}
