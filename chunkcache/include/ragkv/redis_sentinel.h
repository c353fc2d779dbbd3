/*
 * ragkv/redis_sentinel.h — finding the Redis primary through Redis Sentinel.
 *
 * ragkv does no consensus of its own: Sentinel decides which Redis is the primary, and ragkv
 * asks it. Every connection to the metadata Redis (the metadata store, cluster membership)
 * resolves the primary through the Sentinels when it (re)connects, and checks with ROLE that
 * the answer really is a primary, so a stale answer during a failover costs a retry, never
 * a write to a replica.
 *
 *     char host[128];
 *     int port;
 *     if (cc_sentinel_resolve("127.0.0.1:26379,127.0.0.1:26380", "ragkv", 500, host, sizeof host, &port) == RK_OK)
 *         connect_to(host, port);
 */
#ifndef RAGKV_REDIS_SENTINEL_H
#define RAGKV_REDIS_SENTINEL_H

#include <stddef.h>

#include "ragkv/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Ask the Sentinels in list ("host:port,host:port,...", tried in order) for the address of
 * master `name` (SENTINEL get-master-addr-by-name). Each Sentinel gets timeout_ms to answer.
 * host (hostlen bytes) and *port receive the first answer. RK_ERR_INVALID for a malformed
 * list, RK_ERR_UNAVAILABLE when no Sentinel answers with an address. */
rk_status cc_sentinel_resolve(const char *list, const char *name, int timeout_ms, char *host,
                              size_t hostlen, int *port);

struct redisContext;

/* Connect to the Redis primary with hiredis (connect and command timeouts timeout_ms).
 * Without sentinels (NULL or ""): to host:port as given. With sentinels: host and *port are
 * first overwritten by cc_sentinel_resolve's answer, and the connection is kept only when
 * ROLE says it is a primary. *out: the caller's (redisFree). RK_ERR_UNAVAILABLE. */
rk_status cc_redis_connect_primary(const char *sentinels, const char *master, char *host, size_t hostlen,
                                   int *port, int timeout_ms, struct redisContext **out);

/* Split "host:port" into host (hostlen bytes) and *port. RK_ERR_INVALID when malformed. */
rk_status cc_redis_parse_addr(const char *addr, size_t len, char *host, size_t hostlen, int *port);

#ifdef __cplusplus
}
#endif
#endif
