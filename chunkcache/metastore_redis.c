/* metastore_redis.c — the Redis metadata backend (hiredis, synchronous).
 *
 * One connection guarded by `mu` (ragkv's own locking makes the daemon's async need small:
 * metadata commands are a few per request, and pipelining covers batch lookups). Every
 * command runs through rcall(): on an I/O error, EOF or timeout the connection is dropped
 * and re-established with exponential backoff, up to `retries` times. After a reconnect the
 * backend checks its marker key; if Redis came back empty (restart without persistence) the
 * command fails with RK_ERR_UNAVAILABLE and intact() reports false until a rebuild.
 *
 * Atomic operations are the Lua scripts of metastore_redis_lua.h, loaded with SCRIPT LOAD and
 * called by EVALSHA; a NOSCRIPT answer (script cache flushed, Redis restarted) falls back to
 * EVAL, which also re-caches the script. */
#define RK_LOG_COMPONENT "cc.redis"
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <hiredis/hiredis.h>

#include "redis_private.h"
#include "ragkv/alloc.h"
#include "ragkv/clock.h"
#include "ragkv/log.h"
#include "ragkv/metastore.h"
#include "ragkv/redis_sentinel.h"

typedef struct redis_ms {
    pthread_mutex_t mu;        /* guards c, sha, known_intact (one command at a time) */
    redisContext *c;           /* the connection; NULL while disconnected */
    char host[128];            /* with Sentinels: the primary last resolved */
    int port;
    char *sentinels;           /* owned "host:port,..." of Sentinels, NULL without */
    char *master;              /* owned: the master name the Sentinels monitor */
    char prefix[64];           /* key prefix, e.g. "rk:" */
    size_t plen;               /* strlen(prefix) */
    cc_redis_opts o;           /* timeouts, retries, limits */
    char sha[CC_RS_COUNT][41];     /* SCRIPT LOAD digests ("" until loaded) */
    bool known_intact;         /* marker seen since the last clear/open */
    _Atomic uint64_t wait_skip_until; /* after a WAIT shortfall: no WAIT before this (ms, monotonic) */
    bool lost;                 /* Redis came back without our data: every command but the
                                  rebuild's (clear/intact/mark_intact) fails until clear() */
} redis_ms;

/* Defaults documented in ragkv/metastore.h. */
cc_redis_opts cc_redis_opts_default(void)
{
    cc_redis_opts o = {
        .connect_timeout_ms = 2000,
        .command_timeout_ms = 2000,
        .retries = 5,
        .backoff_ms = 20,
        .max_reply_elements = 1u << 20,
        .reader_maxbuf = 16 * 1024,
        .sentinel_master = "ragkv",
        .wait_timeout_ms = 1000,
    };
    return o;
}

/* Milliseconds as a struct timeval. */
static struct timeval tv_ms(int ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    return tv;
}

/* Sleep for a reconnect backoff (restarted on EINTR). */
static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) == -1 && errno == EINTR) {
    }
}

/* Caller holds mu. */
static void do_disconnect(redis_ms *r)
{
    if (r->c)
        redisFree(r->c);
    r->c = NULL;
}

/* Caller holds mu. Connect and check the marker; *lost = Redis came back without our data
 * while we believed it intact. */
static rk_status do_connect(redis_ms *r, bool *lost)
{
    *lost = false;
    char was[sizeof(r->host)];
    int was_port = r->port;
    snprintf(was, sizeof(was), "%s", r->host);
    redisContext *c = NULL;
    rk_status cs = cc_redis_connect_primary(r->sentinels, r->master, r->host, sizeof(r->host), &r->port,
                                            r->o.connect_timeout_ms, &c);
    if (cs != RK_OK)
        return cs;
    if (r->sentinels && was[0] && (strcmp(was, r->host) != 0 || was_port != r->port))
        RK_WARN("redis primary of %s moved: %s:%d -> %s:%d", r->master, was, was_port, r->host, r->port);
    redisSetTimeout(c, tv_ms(r->o.command_timeout_ms));
    c->reader->maxbuf = r->o.reader_maxbuf;
    char mk[80];
    snprintf(mk, sizeof(mk), "%s!", r->prefix);
    redisReply *rep = redisCommand(c, "EXISTS %s", mk);
    if (!rep || rep->type != REDIS_REPLY_INTEGER) {
        rk_status s = rk_error_set(RK_ERR_UNAVAILABLE, "redis %s:%d: EXISTS failed: %s", r->host, r->port,
                                   c->err ? c->errstr : (rep && rep->str ? rep->str : "bad reply"));
        if (rep)
            freeReplyObject(rep);
        redisFree(c);
        return s;
    }
    bool marker = rep->integer == 1;
    freeReplyObject(rep);
    if (r->known_intact && !marker) {
        RK_WARN("redis %s:%d came back without ragkv metadata (prefix %s): rebuild needed", r->host,
                r->port, r->prefix);
        *lost = true;
        r->known_intact = false;
        r->lost = true;
    }
    r->c = c;
    return RK_OK;
}

/* Caller holds mu. Run one command (argv form), reconnecting with backoff. *out is the
 * reply (caller frees); a Redis error reply is returned as a reply, not as a failure. */
static rk_status do_call_any(redis_ms *r, bool allow_lost, int argc, const char **argv, const size_t *lens,
                             redisReply **out)
{
    rk_status s = RK_OK;
    int delay = r->o.backoff_ms;
    for (int attempt = 0; attempt <= r->o.retries; attempt++) {
        if (attempt > 0) {
            sleep_ms(delay);
            delay = delay * 2 > 1000 ? 1000 : delay * 2;
        }
        if (!r->c) {
            bool lost;
            if ((s = do_connect(r, &lost)) != RK_OK)
                continue;
            if (lost && !allow_lost)
                return rk_error_set(RK_ERR_UNAVAILABLE, "redis lost ragkv's metadata (restart without persistence?)");
        }
        redisReply *rep = redisCommandArgv(r->c, argc, argv, lens);
        if (rep && cc_redis_is_readonly(rep)) {
            /* this Redis was demoted to a replica (failover): find the primary again */
            s = rk_error_set(RK_ERR_UNAVAILABLE, "redis %s:%d: %s", r->host, r->port, rep->str);
            freeReplyObject(rep);
            do_disconnect(r);
            continue;
        }
        if (rep) {
            *out = rep;
            return RK_OK;
        }
        s = rk_error_set(r->c->err == REDIS_ERR_IO && errno == EAGAIN ? RK_ERR_TIMEOUT : RK_ERR_UNAVAILABLE,
                         "redis %s:%d: %s", r->host, r->port, r->c->errstr);
        do_disconnect(r);
    }
    return s;
}

/* do_call_any, refused while the data is known lost: a command against the empty Redis
 * would answer wrongly ("no such tenant") until the rebuild has run. */
static rk_status do_call(redis_ms *r, int argc, const char **argv, const size_t *lens, redisReply **out)
{
    if (r->lost)
        return rk_error_set(RK_ERR_UNAVAILABLE, "redis lost ragkv's metadata: rebuild pending");
    return do_call_any(r, false, argc, argv, lens, out);
}

/* Caller holds mu. Run script id with args (ARGV[1] = prefix is added here): EVALSHA,
 * falling back to EVAL on NOSCRIPT. */
static rk_status do_script(redis_ms *r, int id, int nargs, const char **args, const size_t *alen,
                           redisReply **out)
{
    const char *argv[4 + CC_REDIS_MAX_SCRIPT_ARGS];
    size_t lens[4 + CC_REDIS_MAX_SCRIPT_ARGS];
    redisReply *rep = NULL;
    rk_status s;
    if (r->sha[id][0]) {
        int argc = cc_redis_script_argv(id, r->sha[id], r->prefix, nargs, args, alen, argv, lens);
        if (argc < 0)
            return rk_error_set(RK_ERR_INTERNAL, "redis: too many script arguments");
        if ((s = do_call(r, argc, argv, lens, &rep)) != RK_OK)
            return s;
        if (!cc_redis_is_noscript(rep)) {
            *out = rep;
            return RK_OK;
        }
        freeReplyObject(rep);
    }
    int argc = cc_redis_script_argv(id, NULL, r->prefix, nargs, args, alen, argv, lens);
    if (argc < 0)
        return rk_error_set(RK_ERR_INTERNAL, "redis: too many script arguments");
    if ((s = do_call(r, argc, argv, lens, &rep)) != RK_OK)
        return s;
    *out = rep;
    return RK_OK;
}

/* Free rep and translate an unexpected or error reply into RK_ERR_META. */
static rk_status reply_error(redis_ms *r, redisReply *rep, const char *what)
{
    rk_status s = cc_redis_reply_error(rep, what);
    freeReplyObject(rep);
    return s;
}

/* False for an array reply longer than max_reply_elements. */
static bool reply_ok_size(redis_ms *r, const redisReply *rep)
{
    return rep->type != REDIS_REPLY_ARRAY || rep->elements <= r->o.max_reply_elements;
}

/* Run a script whose reply is {code, triples...}; code < 0 is returned in *code. */
static rk_status script_triples(redis_ms *r, int id, int nargs, const char **args, const size_t *alen,
                                long long *code, cc_evlist *ev, const char *what)
{
    redisReply *rep;
    pthread_mutex_lock(&r->mu);
    rk_status s = do_script(r, id, nargs, args, alen, &rep);
    pthread_mutex_unlock(&r->mu);
    if (s != RK_OK)
        return s;
    if (rep->type != REDIS_REPLY_ARRAY || rep->elements < 1 || rep->element[0]->type != REDIS_REPLY_INTEGER)
        return reply_error(r, rep, what);
    *code = rep->element[0]->integer;
    s = *code == 0 ? cc_redis_take_triples(rep, 1, r->o.max_reply_elements, ev) : RK_OK;
    freeReplyObject(rep);
    return s;
}

/* do_call under mu. */
static rk_status simple(redis_ms *r, int argc, const char **argv, const size_t *lens, redisReply **out)
{
    pthread_mutex_lock(&r->mu);
    rk_status s = do_call(r, argc, argv, lens, out);
    pthread_mutex_unlock(&r->mu);
    return s;
}

/* prefix + kind + name into buf. */
static void key_name(redis_ms *r, char *buf, size_t n, const char *kind, const char *name)
{
    snprintf(buf, n, "%s%s%s", r->prefix, kind, name);
}

/* ---- operations -------------------------------------------------------------------------- */

static rk_status check_name(const char *s)
{
    size_t n = strnlen(s, CC_NAME_MAX + 1);
    return n && n <= CC_NAME_MAX ? RK_OK : rk_error_set(RK_ERR_INVALID, "redis: bad name");
}

/* cc_metastore_i.tenant_put (contract in ragkv/metastore.h). */
static rk_status r_tenant_put(void *ctx, const cc_tenant_cfg *cfg)
{
    redis_ms *r = ctx;
    if (check_name(cfg->name) != RK_OK || (cfg->policy != CC_QUOTA_REJECT && cfg->policy != CC_QUOTA_EVICT))
        return rk_error_set(RK_ERR_INVALID, "tenant: bad name or policy");
    char mb[24], mc[24], pol[4];
    snprintf(mb, sizeof(mb), "%" PRIu64, cfg->max_bytes);
    snprintf(mc, sizeof(mc), "%" PRIu64, cfg->max_chunks);
    snprintf(pol, sizeof(pol), "%d", (int)cfg->policy);
    const char *a[4] = {cfg->name, mb, mc, pol};
    redisReply *rep;
    pthread_mutex_lock(&r->mu);
    rk_status s = do_script(r, CC_RS_TENANT_PUT, 4, a, NULL, &rep);
    pthread_mutex_unlock(&r->mu);
    if (s != RK_OK)
        return s;
    if (rep->type != REDIS_REPLY_INTEGER)
        return reply_error(r, rep, "tenant put");
    freeReplyObject(rep);
    return RK_OK;
}

/* cc_metastore_i.tenant_get (contract in ragkv/metastore.h). */
static rk_status r_tenant_get(void *ctx, const char *name, cc_tenant_info *out)
{
    redis_ms *r = ctx;
    if (check_name(name) != RK_OK)
        return RK_ERR_NOT_FOUND;
    char k[CC_NAME_MAX + 80];
    key_name(r, k, sizeof(k), "t:", name);
    const char *argv[] = {"HMGET", k, "mb", "mc", "pol", "bytes", "chunks", "pb", "pc", "clock"};
    redisReply *rep;
    rk_status s = simple(r, 10, argv, NULL, &rep);
    if (s != RK_OK)
        return s;
    if (rep->type != REDIS_REPLY_ARRAY || rep->elements != 8)
        return reply_error(r, rep, "tenant get");
    if (rep->element[0]->type != REDIS_REPLY_STRING) {
        freeReplyObject(rep);
        return RK_ERR_NOT_FOUND;
    }
    memset(out, 0, sizeof(*out));
    snprintf(out->cfg.name, sizeof(out->cfg.name), "%s", name);
    out->cfg.max_bytes = cc_redis_u64(rep->element[0]);
    out->cfg.max_chunks = cc_redis_u64(rep->element[1]);
    out->cfg.policy = cc_redis_u64(rep->element[2]) == 1 ? CC_QUOTA_EVICT : CC_QUOTA_REJECT;
    out->bytes = cc_redis_u64(rep->element[3]);
    out->chunks = cc_redis_u64(rep->element[4]);
    out->pinned_bytes = cc_redis_u64(rep->element[5]);
    out->pinned_chunks = cc_redis_u64(rep->element[6]);
    out->clock = rep->element[7]->type == REDIS_REPLY_STRING ? strtod(rep->element[7]->str, NULL) : 0;
    freeReplyObject(rep);
    return RK_OK;
}

/* cc_metastore_i.tenant_del (contract in ragkv/metastore.h). */
static rk_status r_tenant_del(void *ctx, const char *name, cc_evlist *removed)
{
    redis_ms *r = ctx;
    if (check_name(name) != RK_OK)
        return RK_ERR_NOT_FOUND;
    const char *a[1] = {name};
    long long code;
    rk_status s = script_triples(r, CC_RS_TENANT_DEL, 1, a, NULL, &code, removed, "tenant delete");
    return s != RK_OK ? s : code < 0 ? RK_ERR_NOT_FOUND : RK_OK;
}

/* qsort comparator over C strings. */
static int str_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* cc_metastore_i.tenant_list (contract in ragkv/metastore.h). */
static rk_status r_tenant_list(void *ctx, char ***names, size_t *n)
{
    redis_ms *r = ctx;
    char k[80];
    key_name(r, k, sizeof(k), "T", "");
    const char *argv[] = {"SMEMBERS", k};
    redisReply *rep;
    rk_status s = simple(r, 2, argv, NULL, &rep);
    if (s != RK_OK)
        return s;
    if (rep->type != REDIS_REPLY_ARRAY || !reply_ok_size(r, rep))
        return reply_error(r, rep, "tenant list");
    char **v = rk_calloc(rep->elements ? rep->elements : 1, sizeof(char *));
    size_t m = 0;
    for (size_t i = 0; v && i < rep->elements; i++) {
        if (rep->element[i]->type != REDIS_REPLY_STRING)
            continue;
        if (!(v[m] = rk_strdup(rep->element[i]->str))) {
            cc_names_free(v, m);
            v = NULL;
            break;
        }
        m++;
    }
    freeReplyObject(rep);
    if (!v)
        return rk_error_set(RK_ERR_NOMEM, "tenant list");
    qsort(v, m, sizeof(char *), str_cmp);
    *names = v;
    *n = m;
    return RK_OK;
}

/* cc_metastore_i.grant (contract in ragkv/metastore.h). */
static rk_status r_grant(void *ctx, const char *ns, const char *tenant, bool on)
{
    redis_ms *r = ctx;
    if (check_name(ns) != RK_OK || check_name(tenant) != RK_OK)
        return rk_error_set(RK_ERR_INVALID, "grant: bad name");
    const char *a[3] = {ns, tenant, on ? "1" : "0"};
    redisReply *rep;
    pthread_mutex_lock(&r->mu);
    rk_status s = do_script(r, CC_RS_GRANT, 3, a, NULL, &rep);
    pthread_mutex_unlock(&r->mu);
    if (s != RK_OK)
        return s;
    if (rep->type != REDIS_REPLY_INTEGER)
        return reply_error(r, rep, "grant");
    long long v = rep->integer;
    freeReplyObject(rep);
    return v < 0 ? rk_error_set(RK_ERR_NOT_FOUND, "grant: no such namespace or tenant") : RK_OK;
}

/* cc_metastore_i.readable (contract in ragkv/metastore.h). */
static rk_status r_readable(void *ctx, const char *tenant, const char *ns, bool *ok)
{
    redis_ms *r = ctx;
    if (strcmp(tenant, ns) == 0) {
        *ok = true;
        return RK_OK;
    }
    char k[CC_NAME_MAX + 80];
    key_name(r, k, sizeof(k), "g:", ns);
    const char *argv[] = {"SISMEMBER", k, tenant};
    redisReply *rep;
    rk_status s = simple(r, 3, argv, NULL, &rep);
    if (s != RK_OK)
        return s;
    if (rep->type != REDIS_REPLY_INTEGER)
        return reply_error(r, rep, "readable");
    *ok = rep->integer == 1;
    freeReplyObject(rep);
    return RK_OK;
}

/* WAIT until o.wait_replicas replicas hold the writes so far (bounded by wait_timeout_ms):
 * an acknowledged chunk's metadata then survives a failover to one of them. A shortfall is
 * logged, not failed: the chunk is committed on the primary either way. */
static void wait_replicas(redis_ms *r)
{
    if (r->o.wait_replicas <= 0 || rk_now_ns() / 1000000 < atomic_load(&r->wait_skip_until))
        return;
    cc_redis_wait_args w;
    cc_redis_wait_args_init(&w, &r->o);
    redisReply *rep = NULL;
    if (simple(r, 3, w.a, w.al, &rep) != RK_OK) {
        RK_WARN("redis WAIT failed: %s", rk_error_msg());
        return;
    }
    if (!cc_redis_wait_ok(rep, &r->o))
        atomic_store(&r->wait_skip_until, rk_now_ns() / 1000000 + 10000);
    freeReplyObject(rep);
}

/* cc_metastore_i.insert (contract in ragkv/metastore.h). */
static rk_status r_insert(void *ctx, const cc_record *rec, unsigned flags, cc_evlist *evicted)
{
    redis_ms *r = ctx;
    cc_redis_insert_args x;
    rk_status s = cc_redis_insert_args_init(&x, rec, flags);
    if (s != RK_OK)
        return s;
    redisReply *rep;
    pthread_mutex_lock(&r->mu);
    s = do_script(r, CC_RS_INSERT, 10, x.a, x.al, &rep);
    pthread_mutex_unlock(&r->mu);
    cc_redis_insert_args_free(&x);
    if (s != RK_OK)
        return s;
    s = cc_redis_insert_reply(rep, r->o.max_reply_elements, rec->ns, evicted);
    freeReplyObject(rep);
    if (s == RK_OK)
        wait_replicas(r);
    return s;
}

/* cc_metastore_i.get (contract in ragkv/metastore.h). */
static rk_status r_get(void *ctx, const cc_key *keys, size_t n, cc_record *recs, rk_status *st)
{
    redis_ms *r = ctx;
    rk_status s = RK_OK;
    for (size_t i = 0; i < n; i++) {
        cc_record_init(&recs[i]);
        st[i] = RK_ERR_NOT_FOUND;
    }
    pthread_mutex_lock(&r->mu);
    /* pipelined: append every HMGET, then read the replies; on a connection failure the
     * whole batch is retried once through do_call's reconnect path */
    for (int round = 0; round < 2; round++) {
        if (r->lost) {
            s = rk_error_set(RK_ERR_UNAVAILABLE, "redis lost ragkv's metadata: rebuild pending");
            break;
        }
        if (!r->c) {
            redisReply *ping;
            const char *pv[] = {"PING"};
            if ((s = do_call(r, 1, pv, NULL, &ping)) != RK_OK)
                break;
            freeReplyObject(ping);
        }
        char k[80 + CC_KEY_HEX_LEN];
        for (size_t i = 0; i < n; i++) {
            char hex[CC_KEY_HEX_LEN + 1];
            key_name(r, k, sizeof(k), "r:", cc_key_to_hex(&keys[i], hex));
            const char *argv[] = {"HMGET", k, "rec", "hits", "last"};
            redisAppendCommandArgv(r->c, 5, argv, NULL);
        }
        size_t i = 0;
        for (; i < n; i++) {
            redisReply *rep;
            if (redisGetReply(r->c, (void **)&rep) != REDIS_OK)
                break;
            st[i] = cc_redis_parse_record(rep, &keys[i], &recs[i]);
            if (st[i] != RK_OK && st[i] != RK_ERR_NOT_FOUND) {
                RK_WARN("record %zu of a batch: %s", i, rk_error_msg());
                st[i] = RK_ERR_CORRUPT; /* a damaged record is a miss the store counts */
            }
            freeReplyObject(rep);
        }
        if (i == n) {
            s = RK_OK;
            break;
        }
        s = rk_error_set(RK_ERR_UNAVAILABLE, "redis %s:%d: %s", r->host, r->port, r->c->errstr);
        do_disconnect(r);
        for (size_t j = 0; j < n; j++) {
            cc_record_clear(&recs[j]);
            st[j] = RK_ERR_NOT_FOUND;
        }
    }
    pthread_mutex_unlock(&r->mu);
    return s;
}

/* cc_metastore_i.remove (contract in ragkv/metastore.h). */
static rk_status r_remove(void *ctx, const cc_key *key, uint64_t expect_csum, cc_record *removed)
{
    redis_ms *r = ctx;
    cc_redis_remove_args x;
    cc_redis_remove_args_init(&x, key, expect_csum);
    redisReply *rep;
    pthread_mutex_lock(&r->mu);
    rk_status s = do_script(r, CC_RS_REMOVE, 2, x.a, NULL, &rep);
    pthread_mutex_unlock(&r->mu);
    if (s != RK_OK)
        return s;
    s = cc_redis_remove_reply(rep, removed);
    freeReplyObject(rep);
    return s;
}

/* cc_metastore_i.touch (contract in ragkv/metastore.h). */
static rk_status r_touch(void *ctx, const cc_touch *t, size_t n)
{
    redis_ms *r = ctx;
    enum { PER = 64 };
    char hex[PER][CC_KEY_HEX_LEN + 1], cnt[PER][12], now[PER][24];
    const char *a[3 * PER];
    for (size_t i = 0; i < n; i += PER) {
        size_t m = n - i < PER ? n - i : PER;
        for (size_t j = 0; j < m; j++) {
            cc_key_to_hex(&t[i + j].key, hex[j]);
            snprintf(cnt[j], sizeof(cnt[j]), "%u", t[i + j].n);
            snprintf(now[j], sizeof(now[j]), "%" PRIu64, t[i + j].now_ms);
            a[3 * j] = hex[j];
            a[3 * j + 1] = cnt[j];
            a[3 * j + 2] = now[j];
        }
        redisReply *rep;
        pthread_mutex_lock(&r->mu);
        rk_status s = do_script(r, CC_RS_TOUCH, (int)(3 * m), a, NULL, &rep);
        pthread_mutex_unlock(&r->mu);
        if (s != RK_OK)
            return s;
        if (rep->type != REDIS_REPLY_INTEGER)
            return reply_error(r, rep, "touch");
        freeReplyObject(rep);
    }
    return RK_OK;
}

/* cc_metastore_i.evict (contract in ragkv/metastore.h). */
static rk_status r_evict(void *ctx, const char *ns, uint64_t bytes, cc_evlist *evicted)
{
    redis_ms *r = ctx;
    if (check_name(ns) != RK_OK)
        return RK_ERR_NOT_FOUND;
    char b[24];
    snprintf(b, sizeof(b), "%" PRIu64, bytes);
    const char *a[2] = {ns, b};
    long long code;
    rk_status s = script_triples(r, CC_RS_EVICT, 2, a, NULL, &code, evicted, "evict");
    return s != RK_OK ? s : code < 0 ? RK_ERR_NOT_FOUND : RK_OK;
}

/* cc_metastore_i.expire (contract in ragkv/metastore.h). */
static rk_status r_expire(void *ctx, uint64_t now_ms, cc_evlist *removed)
{
    redis_ms *r = ctx;
    char b[24];
    snprintf(b, sizeof(b), "%" PRIu64, now_ms);
    const char *a[1] = {b};
    long long code;
    size_t before;
    rk_status s;
    do { /* the script removes at most 1000 per call */
        before = removed ? removed->n : 0;
        s = script_triples(r, CC_RS_EXPIRE, 1, a, NULL, &code, removed, "expire");
    } while (s == RK_OK && removed && removed->n - before == 1000);
    return s;
}

/* cc_metastore_i.clear (contract in ragkv/metastore.h). */
static rk_status r_clear(void *ctx)
{
    redis_ms *r = ctx;
    char pat[80], mk[80];
    snprintf(pat, sizeof(pat), "%s*", r->prefix);
    snprintf(mk, sizeof(mk), "%s!", r->prefix);
    pthread_mutex_lock(&r->mu);
    r->known_intact = false;
    rk_status s;
    redisReply *rep;
    const char *dm[] = {"DEL", mk};
    if ((s = do_call_any(r, true, 2, dm, NULL, &rep)) != RK_OK)
        goto out;
    r->lost = false; /* the rebuild has started: commands may run again */
    freeReplyObject(rep);
    char cursor[32] = "0";
    do {
        const char *argv[] = {"SCAN", cursor, "MATCH", pat, "COUNT", "1000"};
        if ((s = do_call_any(r, true, 6, argv, NULL, &rep)) != RK_OK)
            goto out;
        if (rep->type != REDIS_REPLY_ARRAY || rep->elements != 2 || rep->element[0]->type != REDIS_REPLY_STRING ||
            rep->element[1]->type != REDIS_REPLY_ARRAY || !reply_ok_size(r, rep->element[1])) {
            s = reply_error(r, rep, "clear");
            goto out;
        }
        snprintf(cursor, sizeof(cursor), "%s", rep->element[0]->str);
        redisReply *keys = rep->element[1];
        if (keys->elements) {
            const char **argv2 = rk_calloc(keys->elements + 1, sizeof(char *));
            size_t *l2 = rk_calloc(keys->elements + 1, sizeof(size_t));
            if (!argv2 || !l2) {
                rk_free(argv2);
                rk_free(l2);
                freeReplyObject(rep);
                s = rk_error_set(RK_ERR_NOMEM, "clear");
                goto out;
            }
            argv2[0] = "DEL";
            l2[0] = 3;
            for (size_t i = 0; i < keys->elements; i++) {
                argv2[i + 1] = keys->element[i]->str;
                l2[i + 1] = keys->element[i]->len;
            }
            redisReply *d;
            s = do_call_any(r, true, (int)keys->elements + 1, argv2, l2, &d);
            rk_free(argv2);
            rk_free(l2);
            if (s == RK_OK)
                freeReplyObject(d);
        }
        freeReplyObject(rep);
        if (s != RK_OK)
            goto out;
    } while (strcmp(cursor, "0") != 0);
out:
    pthread_mutex_unlock(&r->mu);
    return s;
}

/* cc_metastore_i.intact (contract in ragkv/metastore.h). */
static rk_status r_intact(void *ctx, bool *ok)
{
    redis_ms *r = ctx;
    char mk[80];
    snprintf(mk, sizeof(mk), "%s!", r->prefix);
    const char *argv[] = {"EXISTS", mk};
    redisReply *rep;
    pthread_mutex_lock(&r->mu);
    if (r->lost) {
        *ok = false;
        pthread_mutex_unlock(&r->mu);
        return RK_OK;
    }
    rk_status s = do_call_any(r, true, 2, argv, NULL, &rep);
    if (s == RK_OK) {
        if (rep->type == REDIS_REPLY_INTEGER) {
            *ok = r->known_intact = rep->integer == 1 && !r->lost;
        } else {
            s = rk_error_set(RK_ERR_META, "redis EXISTS: unexpected reply");
        }
        freeReplyObject(rep);
    }
    pthread_mutex_unlock(&r->mu);
    return s;
}

/* cc_metastore_i.mark_intact (contract in ragkv/metastore.h). */
static rk_status r_mark_intact(void *ctx)
{
    redis_ms *r = ctx;
    char mk[80];
    snprintf(mk, sizeof(mk), "%s!", r->prefix);
    const char *argv[] = {"SET", mk, "intact"};
    redisReply *rep;
    pthread_mutex_lock(&r->mu);
    rk_status s = do_call_any(r, true, 3, argv, NULL, &rep);
    if (s == RK_OK) {
        if (rep->type == REDIS_REPLY_STATUS)
            r->known_intact = true;
        else
            s = rk_error_set(RK_ERR_META, "redis SET marker failed");
        freeReplyObject(rep);
    }
    pthread_mutex_unlock(&r->mu);
    return s;
}

/* cc_metastore_i.close (contract in ragkv/metastore.h). */
static void r_close(void *ctx)
{
    redis_ms *r = ctx;
    if (!r)
        return;
    do_disconnect(r);
    rk_free(r->sentinels);
    rk_free(r->master);
    pthread_mutex_destroy(&r->mu);
    rk_free(r);
}

static const struct cc_metastore_i redis_iface = {
    .name = "redis",
    .tenant_put = r_tenant_put,
    .tenant_get = r_tenant_get,
    .tenant_del = r_tenant_del,
    .tenant_list = r_tenant_list,
    .grant = r_grant,
    .readable = r_readable,
    .insert = r_insert,
    .get = r_get,
    .remove = r_remove,
    .touch = r_touch,
    .evict = r_evict,
    .expire = r_expire,
    .clear = r_clear,
    .intact = r_intact,
    .mark_intact = r_mark_intact,
    .close = r_close,
};

/* See ragkv/metastore.h. */
rk_status cc_metastore_redis_open(const char *host, int port, const char *prefix, const cc_redis_opts *opts,
                                  cc_metastore *out)
{
    bool sentinel = opts && opts->sentinels && *opts->sentinels;
    if (!sentinel && (!host || !*host || port <= 0 || port > 65535))
        return rk_error_set(RK_ERR_INVALID, "redis: bad address");
    if (!prefix)
        prefix = "rk:";
    if (strlen(prefix) >= 48 || strpbrk(prefix, "*?[]\\"))
        return rk_error_set(RK_ERR_INVALID, "redis: prefix too long or has glob characters");
    redis_ms *r = rk_calloc(1, sizeof(*r));
    if (!r)
        return rk_error_set(RK_ERR_NOMEM, "redis metastore");
    rk_status s = RK_OK;
    pthread_mutex_init(&r->mu, NULL);
    r->o = opts ? *opts : cc_redis_opts_default();
    if (r->o.retries < 0)
        r->o.retries = 0;
    if (r->o.backoff_ms < 1)
        r->o.backoff_ms = 1;
    if (!r->o.max_reply_elements)
        r->o.max_reply_elements = 1u << 20;
    if (!sentinel && strlen(host) >= sizeof(r->host)) {
        s = rk_error_set(RK_ERR_INVALID, "redis: host name too long");
        goto fail;
    }
    snprintf(r->host, sizeof(r->host), "%s", sentinel ? "" : host);
    r->port = sentinel ? 0 : port;
    if (sentinel) {
        r->sentinels = rk_strdup(opts->sentinels);
        r->master = rk_strdup(opts->sentinel_master && *opts->sentinel_master ? opts->sentinel_master : "ragkv");
        if (!r->sentinels || !r->master) {
            s = rk_error_set(RK_ERR_NOMEM, "redis metastore");
            goto fail;
        }
    }
    r->o.sentinels = r->o.sentinel_master = NULL; /* borrowed from the caller: the copies above serve */
    snprintf(r->prefix, sizeof(r->prefix), "%s", prefix);
    r->plen = strlen(r->prefix);
    bool lost;
    if ((s = do_connect(r, &lost)) != RK_OK)
        goto fail;
    for (int i = 0; i < CC_RS_COUNT; i++) {
        redisReply *rep = redisCommand(r->c, "SCRIPT LOAD %s", cc_redis_scripts[i]);
        if (!rep || rep->type != REDIS_REPLY_STRING || rep->len != 40) {
            s = rk_error_set(RK_ERR_META, "redis SCRIPT LOAD failed: %s",
                             rep && rep->str ? rep->str : r->c->errstr);
            if (rep)
                freeReplyObject(rep);
            goto fail;
        }
        memcpy(r->sha[i], rep->str, 40);
        r->sha[i][40] = 0;
        freeReplyObject(rep);
    }
    out->iface = &redis_iface;
    out->ctx = r;
    return RK_OK;
fail:
    r_close(r);
    return s;
}
