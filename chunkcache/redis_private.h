/* redis_private.h — private: what the synchronous (metastore_redis.c) and the asynchronous
 * (redis_async.c) Redis backends share, so that both send the same commands and read the
 * same replies the same way: the Lua scripts and how they are called, the arguments of an
 * insert and a remove, and the parsing of records, script results and eviction lists; and
 * the Sentinel answers both read when they look for the primary. The definitions are in
 * redis_common.c (the Sentinel ones in redis_sentinel.c). */
#ifndef RAGKV_CC_REDIS_PRIVATE_H
#define RAGKV_CC_REDIS_PRIVATE_H

#include <stdbool.h>
#include <stddef.h>

#include <hiredis/hiredis.h>

#include "ragkv/bytes.h"
#include "ragkv/metastore.h"
#include "ragkv/record.h"

/* The Lua scripts (metastore_redis_lua.h), by id. */
enum {
    CC_RS_INSERT,
    CC_RS_REMOVE,
    CC_RS_TOUCH,
    CC_RS_EVICT,
    CC_RS_EXPIRE,
    CC_RS_TENANT_PUT,
    CC_RS_TENANT_DEL,
    CC_RS_GRANT,
    CC_RS_COUNT
};

/* Script bodies by id (static strings). */
extern const char *const cc_redis_scripts[CC_RS_COUNT];

/* Most script arguments one call takes (after the key prefix). */
#define CC_REDIS_MAX_SCRIPT_ARGS 512

/* The argv of one script call: "EVALSHA sha 0 prefix args..." when sha is a loaded digest
 * ("" or NULL: "EVAL body 0 prefix args..."). argv and lens have room for
 * 4 + CC_REDIS_MAX_SCRIPT_ARGS entries; alen NULL means strlen. Returns argc, or -1 when
 * nargs is too large. The strings stay borrowed. */
int cc_redis_script_argv(int id, const char *sha, const char *prefix, int nargs, const char **args,
                         const size_t *alen, const char **argv, size_t *lens);

/* True for the NOSCRIPT error that makes EVALSHA fall back to EVAL. */
bool cc_redis_is_noscript(const redisReply *rep);

/* True for the READONLY error of a primary demoted to a replica (failover): the caller drops
 * the connection and tries again, as after a lost connection. */
bool cc_redis_is_readonly(const redisReply *rep);

/* RK_ERR_META for an unexpected or error reply to `what` (the reply is not freed). */
rk_status cc_redis_reply_error(const redisReply *rep, const char *what);

/* A decimal string reply as u64 (0 for nil or another type). */
uint64_t cc_redis_u64(const redisReply *e);

/* Fill out from the reply to HMGET <record key> rec hits last. RK_ERR_NOT_FOUND for a
 * missing record; RK_ERR_META/FORMAT/CORRUPT for a malformed one. */
rk_status cc_redis_parse_record(const redisReply *rep, const cc_key *key, cc_record *out);

/* Parse the (key hex, checksum, size) triples rep->element[from..] into ev (NULL: checked,
 * not kept). RK_ERR_META when malformed or longer than max_elements. */
rk_status cc_redis_take_triples(const redisReply *rep, size_t from, size_t max_elements, cc_evlist *ev);

/* The INSERT script's arguments for rec (docs/storage.md), owning everything they point at (rec
 * is not kept: an asynchronous insert may be sent after its caller's record is gone). Built in
 * place: a[] points into the struct itself, so the struct must not be copied or moved. */
typedef struct cc_redis_insert_args {
    char hex[CC_KEY_HEX_LEN + 1], size[24], csum[24], cost[40], exp[24], now[24];
    char ns[CC_NAME_MAX + 1];
    rk_buf enc;        /* the record encoding (the `rec` field), owned */
    const char *a[10]; /* hex ns size csum pin cost exp now force rec */
    size_t al[10];     /* their lengths */
} cc_redis_insert_args;

rk_status cc_redis_insert_args_init(cc_redis_insert_args *x, const cc_record *rec, unsigned flags);
void cc_redis_insert_args_free(cc_redis_insert_args *x);

/* The INSERT script's reply: RK_OK with the evicted triples appended to evicted (may be
 * NULL), RK_ERR_NOT_FOUND (no tenant ns), RK_ERR_EXISTS, RK_ERR_QUOTA, or RK_ERR_META. */
rk_status cc_redis_insert_reply(const redisReply *rep, size_t max_elements, const char *ns, cc_evlist *evicted);

/* The REMOVE script's arguments (built in place like cc_redis_insert_args). */
typedef struct cc_redis_remove_args {
    char hex[CC_KEY_HEX_LEN + 1], csum[24];
    const char *a[2];
} cc_redis_remove_args;

void cc_redis_remove_args_init(cc_redis_remove_args *x, const cc_key *key, uint64_t expect_csum);

/* The REMOVE script's reply: RK_OK (removed, when not NULL, gets the record; an
 * initialised empty one when the reply lacks it), RK_ERR_NOT_FOUND, or RK_ERR_META. */
rk_status cc_redis_remove_reply(const redisReply *rep, cc_record *removed);

/* WAIT's arguments for wait_replicas replicas within wait_timeout_ms: "WAIT n ms". */
typedef struct cc_redis_wait_args {
    char n[16], ms[16];
    const char *a[3];
    size_t al[3];
} cc_redis_wait_args;

void cc_redis_wait_args_init(cc_redis_wait_args *x, const cc_redis_opts *o);

/* Judge WAIT's reply (NULL: it failed): false, after logging, when fewer replicas than
 * wanted acknowledged; the caller then stops waiting for a while (10 s). */
bool cc_redis_wait_ok(const redisReply *rep, const cc_redis_opts *o);

/* The answer to SENTINEL get-master-addr-by-name: RK_OK with host (hostlen bytes) and *port
 * filled, else RK_ERR_UNAVAILABLE with a message saying what the answer was (an error, nil
 * for an unknown master, a malformed address). */
rk_status cc_sentinel_addr_reply(const redisReply *rep, char *host, size_t hostlen, int *port);

/* Whether rep, the answer to ROLE, says master: a Sentinel's answer during a failover may
 * still name the demoted primary, which is not to be written to. */
bool cc_redis_role_is_primary(const redisReply *rep);

#endif
