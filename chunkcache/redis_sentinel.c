/* redis_sentinel.c — the Redis primary's address from Redis Sentinel, and the parsing of the
 * answers (Sentinel's address, ROLE) that the asynchronous client (redis_async.c) shares. */
#define RK_LOG_COMPONENT "sentinel"
#include "ragkv/redis_sentinel.h"

#include <hiredis/hiredis.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ragkv/log.h"
#include "redis_private.h"

rk_status cc_redis_parse_addr(const char *addr, size_t len, char *host, size_t hostlen, int *port)
{
    const char *colon = NULL;
    for (size_t i = 0; i < len; i++)
        if (addr[i] == ':')
            colon = addr + i;
    if (!colon || colon == addr || (size_t)(colon - addr) >= hostlen)
        return rk_error_set(RK_ERR_INVALID, "'%.*s' is not HOST:PORT", (int)len, addr);
    char num[8];
    size_t nl = len - (size_t)(colon + 1 - addr);
    if (nl == 0 || nl >= sizeof(num))
        return rk_error_set(RK_ERR_INVALID, "'%.*s' is not HOST:PORT", (int)len, addr);
    memcpy(num, colon + 1, nl);
    num[nl] = '\0';
    char *end;
    long p = strtol(num, &end, 10);
    if (*end || p <= 0 || p > 65535)
        return rk_error_set(RK_ERR_INVALID, "'%.*s': bad port", (int)len, addr);
    memcpy(host, addr, (size_t)(colon - addr));
    host[colon - addr] = '\0';
    *port = (int)p;
    return RK_OK;
}

/* See redis_private.h. */
rk_status cc_sentinel_addr_reply(const redisReply *rep, char *host, size_t hostlen, int *port)
{
    if (rep->type == REDIS_REPLY_ERROR)
        return rk_error_set(RK_ERR_UNAVAILABLE, "%s", rep->str);
    if (rep->type == REDIS_REPLY_NIL)
        return rk_error_set(RK_ERR_UNAVAILABLE, "unknown name");
    if (rep->type != REDIS_REPLY_ARRAY || rep->elements != 2 || rep->element[0]->type != REDIS_REPLY_STRING ||
        rep->element[1]->type != REDIS_REPLY_STRING || rep->element[0]->len == 0 || rep->element[0]->len >= hostlen)
        return rk_error_set(RK_ERR_UNAVAILABLE, "unexpected answer");
    char *end;
    long p = strtol(rep->element[1]->str, &end, 10);
    if (*end || p <= 0 || p > 65535)
        return rk_error_set(RK_ERR_UNAVAILABLE, "bad port in its answer");
    memcpy(host, rep->element[0]->str, rep->element[0]->len);
    host[rep->element[0]->len] = '\0';
    *port = (int)p;
    return RK_OK;
}

/* See redis_private.h. */
bool cc_redis_role_is_primary(const redisReply *rep)
{
    return rep && rep->type == REDIS_REPLY_ARRAY && rep->elements > 0 && rep->element[0]->type == REDIS_REPLY_STRING &&
           strcmp(rep->element[0]->str, "master") == 0;
}

/* One Sentinel's answer, or an error. */
static rk_status ask_one(const char *shost, int sport, const char *name, int timeout_ms, char *host,
                         size_t hostlen, int *port)
{
    struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    redisContext *c = redisConnectWithTimeout(shost, sport, tv);
    if (!c || c->err) {
        rk_status s = rk_error_set(RK_ERR_UNAVAILABLE, "sentinel %s:%d: %s", shost, sport, c ? c->errstr : "out of memory");
        if (c)
            redisFree(c);
        return s;
    }
    redisSetTimeout(c, tv);
    redisReply *rep = redisCommand(c, "SENTINEL get-master-addr-by-name %s", name);
    rk_status s = rep ? cc_sentinel_addr_reply(rep, host, hostlen, port) : rk_error_set(RK_ERR_UNAVAILABLE, "%s", c->errstr);
    if (s != RK_OK) {
        char why[160];
        snprintf(why, sizeof(why), "%s", rk_error_msg());
        s = rk_error_set(RK_ERR_UNAVAILABLE, "sentinel %s:%d: no address for master %s (%s)", shost, sport, name, why);
    }
    if (rep)
        freeReplyObject(rep);
    redisFree(c);
    return s;
}

rk_status cc_sentinel_resolve(const char *list, const char *name, int timeout_ms, char *host, size_t hostlen,
                              int *port)
{
    if (!list || !*list || !name || !*name)
        return rk_error_set(RK_ERR_INVALID, "sentinel: no sentinels or no master name");
    rk_status s = rk_error_set(RK_ERR_INVALID, "sentinel: empty list");
    const char *p = list;
    while (*p) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        char shost[128];
        int sport;
        if ((s = cc_redis_parse_addr(p, len, shost, sizeof(shost), &sport)) != RK_OK)
            return s;
        if ((s = ask_one(shost, sport, name, timeout_ms, host, hostlen, port)) == RK_OK)
            return RK_OK;
        RK_DEBUG("%s", rk_error_msg());
        p += len + (comma ? 1 : 0);
    }
    char last[200];
    snprintf(last, sizeof(last), "%s", rk_error_msg());
    return rk_error_set(RK_ERR_UNAVAILABLE, "no sentinel of %s knows master %s (last: %s)", list, name, last);
}

rk_status cc_redis_connect_primary(const char *sentinels, const char *master, char *host, size_t hostlen,
                                   int *port, int timeout_ms, struct redisContext **out)
{
    bool sentinel = sentinels && *sentinels;
    rk_status s;
    if (sentinel && (s = cc_sentinel_resolve(sentinels, master, timeout_ms, host, hostlen, port)) != RK_OK)
        return s;
    struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    redisContext *c = redisConnectWithTimeout(host, *port, tv);
    if (!c || c->err) {
        s = rk_error_set(RK_ERR_UNAVAILABLE, "redis %s:%d: %s", host, *port, c ? c->errstr : "out of memory");
        if (c)
            redisFree(c);
        return s;
    }
    redisSetTimeout(c, tv);
    redisEnableKeepAlive(c);
    if (sentinel) { /* during a failover a Sentinel may still name the demoted primary */
        redisReply *role = redisCommand(c, "ROLE");
        bool primary = cc_redis_role_is_primary(role);
        if (role)
            freeReplyObject(role);
        if (!primary) {
            redisFree(c);
            return rk_error_set(RK_ERR_UNAVAILABLE, "redis %s:%d is not a primary (failover in progress?)", host, *port);
        }
    }
    *out = c;
    return RK_OK;
}
