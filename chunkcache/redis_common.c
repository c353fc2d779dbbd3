/* redis_common.c — the commands and reply parsing the synchronous and asynchronous Redis
 * backends share (redis_private.h). */
#define RK_LOG_COMPONENT "cc.redis"
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "metastore_redis_lua.h"
#include "ragkv/log.h"
#include "redis_private.h"

const char *const cc_redis_scripts[CC_RS_COUNT] = {
    LUA_INSERT, LUA_REMOVE, LUA_TOUCH, LUA_EVICT, LUA_EXPIRE, LUA_TENANT_PUT, LUA_TENANT_DEL, LUA_GRANT,
};

/* See redis_private.h. */
int cc_redis_script_argv(int id, const char *sha, const char *prefix, int nargs, const char **args,
                         const size_t *alen, const char **argv, size_t *lens)
{
    if (nargs < 0 || nargs > CC_REDIS_MAX_SCRIPT_ARGS)
        return -1;
    bool by_sha = sha && sha[0];
    argv[0] = by_sha ? "EVALSHA" : "EVAL";
    lens[0] = by_sha ? 7 : 4;
    argv[1] = by_sha ? sha : cc_redis_scripts[id];
    lens[1] = strlen(argv[1]);
    argv[2] = "0";
    lens[2] = 1;
    argv[3] = prefix;
    lens[3] = strlen(prefix);
    for (int i = 0; i < nargs; i++) {
        argv[4 + i] = args[i];
        lens[4 + i] = alen ? alen[i] : strlen(args[i]);
    }
    return 4 + nargs;
}

/* See redis_private.h. */
bool cc_redis_is_noscript(const redisReply *rep)
{
    return rep->type == REDIS_REPLY_ERROR && rep->str && strncmp(rep->str, "NOSCRIPT", 8) == 0;
}

/* See redis_private.h. */
bool cc_redis_is_readonly(const redisReply *rep)
{
    return rep->type == REDIS_REPLY_ERROR && rep->str && strncmp(rep->str, "READONLY", 8) == 0;
}

/* See redis_private.h. */
rk_status cc_redis_reply_error(const redisReply *rep, const char *what)
{
    return rk_error_set(RK_ERR_META, "redis %s: %s", what,
                        rep->type == REDIS_REPLY_ERROR ? rep->str : "unexpected reply type");
}

/* See redis_private.h. */
uint64_t cc_redis_u64(const redisReply *e)
{
    return e->type == REDIS_REPLY_STRING ? strtoull(e->str, NULL, 10) : 0;
}

/* A record like a chunk's (names of 16 bytes, 512 bytes of Cache-Craft metadata), encoded
 * once: what an absent record costs to decode (equal_cost_absent). */
static rk_buf tmpl;
static pthread_once_t tmpl_once = PTHREAD_ONCE_INIT;

static void tmpl_make(void)
{
    static uint8_t craft[512];
    cc_record r;
    cc_record_init(&r);
    memcpy(r.ns, "equal-cost-ns-00", 17);
    memcpy(r.model, "equal-cost-model", 17);
    r.craft = craft;
    r.craft_len = sizeof craft;
    (void)cc_record_encode(&r, &tmpl); /* on failure tmpl stays empty: decoding it fails fast */
}

/* A key with no record costs the decoding of one, so that a tenant asking about another
 * tenant's chunk cannot tell it from an absent one by the time the answer takes (the store's
 * equal_cost_miss does the same for the grant check; tests/service/test_isolation.c measures
 * it). */
static void equal_cost_absent(const cc_key *key)
{
    pthread_once(&tmpl_once, tmpl_make);
    cc_record r;
    size_t used;
    if (cc_record_decode(tmpl.data, tmpl.len, &r, &used) == RK_OK) {
        volatile bool same = cc_key_equal(&r.key, key); /* as a found record's check */
        (void)same;
        cc_record_clear(&r);
    }
}

/* See redis_private.h. */
rk_status cc_redis_parse_record(const redisReply *rep, const cc_key *key, cc_record *out)
{
    if (rep->type != REDIS_REPLY_ARRAY || rep->elements != 3)
        return rk_error_set(RK_ERR_META, "redis: bad record reply");
    const redisReply *rr = rep->element[0];
    if (rr->type != REDIS_REPLY_STRING) {
        equal_cost_absent(key);
        return RK_ERR_NOT_FOUND;
    }
    size_t used;
    rk_status s = cc_record_decode((const uint8_t *)rr->str, rr->len, out, &used);
    if (s != RK_OK)
        return s;
    if (!cc_key_equal(&out->key, key)) {
        cc_record_clear(out);
        return rk_error_set(RK_ERR_CORRUPT, "redis: record under the wrong key");
    }
    out->hits = cc_redis_u64(rep->element[1]);
    out->last_access_ms = cc_redis_u64(rep->element[2]);
    return RK_OK;
}

/* See redis_private.h. */
rk_status cc_redis_take_triples(const redisReply *rep, size_t from, size_t max_elements, cc_evlist *ev)
{
    if (rep->type != REDIS_REPLY_ARRAY || rep->elements > max_elements || rep->elements < from ||
        (rep->elements - from) % 3)
        return rk_error_set(RK_ERR_META, "redis: malformed eviction list");
    for (size_t i = from; i + 2 < rep->elements; i += 3) {
        redisReply *h = rep->element[i], *c = rep->element[i + 1], *z = rep->element[i + 2];
        cc_key k;
        if (h->type != REDIS_REPLY_STRING || c->type != REDIS_REPLY_STRING || z->type != REDIS_REPLY_STRING ||
            cc_key_from_hex(h->str, &k) != RK_OK)
            return rk_error_set(RK_ERR_META, "redis: malformed eviction entry");
        rk_status s = cc_evlist_push(ev, &k, strtoull(c->str, NULL, 10), strtoull(z->str, NULL, 10));
        if (s != RK_OK)
            return s;
    }
    return RK_OK;
}

/* See redis_private.h. */
rk_status cc_redis_insert_args_init(cc_redis_insert_args *x, const cc_record *rec, unsigned flags)
{
    memset(x, 0, sizeof(*x));
    x->enc = (rk_buf)RK_BUF_INIT;
    rk_status s = cc_record_encode(rec, &x->enc);
    if (s != RK_OK) {
        rk_buf_free(&x->enc);
        return s;
    }
    cc_key_to_hex(&rec->key, x->hex);
    snprintf(x->size, sizeof(x->size), "%" PRIu64, rec->size);
    snprintf(x->csum, sizeof(x->csum), "%" PRIu64, rec->csum);
    snprintf(x->cost, sizeof(x->cost), "%.17g", rec->cost > 0 ? rec->cost : 0.0);
    snprintf(x->exp, sizeof(x->exp), "%" PRIu64, rec->expires_ms);
    snprintf(x->now, sizeof(x->now), "%" PRIu64, rec->created_ms);
    snprintf(x->ns, sizeof(x->ns), "%s", rec->ns);
    const char *a[10] = {x->hex, x->ns, x->size, x->csum, (rec->flags & CC_RECORD_FLAG_PINNED) ? "1" : "0",
                         x->cost, x->exp, x->now, (flags & CC_INSERT_FORCE) ? "1" : "0", (const char *)x->enc.data};
    memcpy(x->a, a, sizeof(a));
    for (int i = 0; i < 9; i++)
        x->al[i] = strlen(a[i]);
    x->al[9] = x->enc.len;
    return RK_OK;
}

/* See redis_private.h. */
void cc_redis_insert_args_free(cc_redis_insert_args *x)
{
    if (x)
        rk_buf_free(&x->enc);
}

/* See redis_private.h. */
rk_status cc_redis_insert_reply(const redisReply *rep, size_t max_elements, const char *ns, cc_evlist *evicted)
{
    if (rep->type != REDIS_REPLY_ARRAY || rep->elements < 1 || rep->element[0]->type != REDIS_REPLY_INTEGER)
        return cc_redis_reply_error(rep, "insert");
    long long code = rep->element[0]->integer;
    switch (code) {
    case 0:
        return cc_redis_take_triples(rep, 1, max_elements, evicted);
    case -1:
        return rk_error_set(RK_ERR_NOT_FOUND, "insert: no tenant/namespace '%s'", ns);
    case -2:
        return RK_ERR_EXISTS;
    case -3:
        return rk_error_set(RK_ERR_QUOTA, "tenant '%s' over quota", ns);
    default:
        return rk_error_set(RK_ERR_META, "insert: script returned %lld", code);
    }
}

/* See redis_private.h. */
void cc_redis_remove_args_init(cc_redis_remove_args *x, const cc_key *key, uint64_t expect_csum)
{
    cc_key_to_hex(key, x->hex);
    snprintf(x->csum, sizeof(x->csum), "%" PRIu64, expect_csum);
    x->a[0] = x->hex;
    x->a[1] = x->csum;
}

/* See redis_private.h. */
rk_status cc_redis_remove_reply(const redisReply *rep, cc_record *removed)
{
    if (rep->type != REDIS_REPLY_ARRAY || rep->elements < 1 || rep->element[0]->type != REDIS_REPLY_INTEGER)
        return cc_redis_reply_error(rep, "remove");
    if (rep->element[0]->integer < 0)
        return RK_ERR_NOT_FOUND;
    if (removed) {
        size_t used;
        cc_record_init(removed);
        if (rep->elements < 2 || rep->element[1]->type != REDIS_REPLY_STRING ||
            cc_record_decode((const uint8_t *)rep->element[1]->str, rep->element[1]->len, removed, &used) != RK_OK)
            cc_record_init(removed); /* removed anyway; the caller only lacks the details */
    }
    return RK_OK;
}

/* See redis_private.h. */
void cc_redis_wait_args_init(cc_redis_wait_args *x, const cc_redis_opts *o)
{
    snprintf(x->n, sizeof(x->n), "%d", o->wait_replicas);
    snprintf(x->ms, sizeof(x->ms), "%d", o->wait_timeout_ms > 0 ? o->wait_timeout_ms : 1000);
    x->a[0] = "WAIT";
    x->a[1] = x->n;
    x->a[2] = x->ms;
    x->al[0] = 4;
    x->al[1] = strlen(x->n);
    x->al[2] = strlen(x->ms);
}

/* See redis_private.h. */
bool cc_redis_wait_ok(const redisReply *rep, const cc_redis_opts *o)
{
    if (rep && rep->type == REDIS_REPLY_INTEGER && rep->integer >= o->wait_replicas)
        return true;
    /* too few replicas (one died, or none is left after a failover): waiting on every
     * insert would only add the timeout to each; replicate asynchronously for a while */
    RK_WARN("redis WAIT: %lld of %d replicas acknowledged within %d ms; not waiting for 10 s",
            rep && rep->type == REDIS_REPLY_INTEGER ? rep->integer : -1LL, o->wait_replicas,
            o->wait_timeout_ms > 0 ? o->wait_timeout_ms : 1000);
    return false;
}
