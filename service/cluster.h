/*
 * cluster.h — private to service/: several ragkvd nodes over one metadata Redis.
 *
 * Membership: every node keeps `PREFIXcluster:node:<id>` = its advertised HOST:PORT with a
 * TTL (cluster_node_ttl_ms) that a heartbeat thread refreshes every cluster_heartbeat_ms, and
 * its id in the set `PREFIXcluster:nodes`. The same thread lists the set and keeps the ids
 * whose key still exists: the live nodes, a snapshot guarded by a mutex. A node that stops
 * (or is killed) drops out when its key expires; a node that fails a call is also skipped
 * locally for one TTL, so requests stop paying its timeout at once.
 *
 * Placement: the owners of a chunk are the `replicas` live nodes with the highest rendezvous
 * score for its key (ragkv_node_score in ragkv/client.h, which clients use too). Metadata is
 * shared (one Redis, one prefix); blobs live on their owners only:
 *
 *   put  the node that computed a chunk stores it on each owner: locally when it is one,
 *        else with PEER_PUT; acknowledged when at least one owner stored it;
 *   get  an owner reads its own store; any other node asks the owners in rank order with
 *        PEER_GET (the answer carries an xxh3 of the blob, checked on arrival) and skips
 *        owners that are unreachable. No owner reachable is RK_ERR_UNAVAILABLE, which a
 *        prompt that brought its tokens answers by computing them.
 *
 * A chunk whose owner died (or whose owner set changed at a join) is found by its new owner
 * with metadata but no blob: the store repairs that into a miss, which is recomputed and
 * placed again. Peers authenticate with the shared cluster secret; a peer connection may
 * only PEER_GET and PEER_PUT, on behalf of the tenant the calling node authenticated.
 *
 * Without a cluster (cl == NULL) every call goes straight to the local store.
 * Thread safety: every function may be called from any thread.
 */
#ifndef RAGKV_SVC_CLUSTER_H
#define RAGKV_SVC_CLUSTER_H

#include <stdbool.h>
#include <stddef.h>

#include "ragkv/bytes.h"
#include "ragkv/chunkcache.h"
#include "ragkv/status.h"

typedef struct svc_cluster svc_cluster;

typedef struct svc_cluster_cfg {
    const char *node_id;    /* this node's name (unique in the cluster) */
    const char *advertise;  /* HOST:PORT peers reach this node at */
    const char *secret;     /* the shared peer secret */
    const char *redis_host; /* the metadata Redis (ignored when sentinels is set) */
    int redis_port;
    const char *sentinels;  /* "host:port,..." or NULL */
    const char *master;     /* the Sentinels' master name */
    const char *prefix;     /* the Redis key prefix of this deployment */
    int replicas;           /* owners per chunk */
    int heartbeat_ms, ttl_ms, peer_timeout_ms;
} svc_cluster_cfg;

/* Check the configuration and make the object; nothing is registered yet, and until
 * svc_cluster_start every get and put is local. *out freed by svc_cluster_close. */
rk_status svc_cluster_open(const svc_cluster_cfg *cfg, svc_cluster **out);

/* Once the listener is bound: advertise (HOST:PORT; cfg's, if it had one, wins) and node id
 * ("" in cfg: the advertised address) are fixed, this node registers (one heartbeat; an
 * unreachable Redis is retried by the heartbeat rather than failing the start) and the
 * heartbeat thread starts. */
rk_status svc_cluster_start(svc_cluster *cl, const char *advertise);

/* Stop the heartbeat, deregister (the node leaves at once instead of after its TTL), close
 * peer connections. NULL is a no-op. */
void svc_cluster_close(svc_cluster *cl);

/* Is token the cluster secret? (constant time) */
bool svc_cluster_is_secret(const svc_cluster *cl, const char *token);

/* cc_store_get / cc_store_put with placement (see above); cl NULL = local. */
rk_status svc_cluster_get(svc_cluster *cl, cc_store *st, const char *tenant, const cc_key *key, cc_buf **blob,
                          cc_record *rec);
rk_status svc_cluster_put(svc_cluster *cl, cc_store *st, const char *tenant, const cc_put_args *a, cc_key *key);

/* The peer side, on an I/O pool thread (cl may be NULL on a node without a model). PEER_GET: tenant's chunk key from the local store
 * into out (`str ns`, `str model`, `u64 xxh3`, `blob stored`). PEER_PUT: store a chunk blob
 * (docs/protocol.md) for tenant under model, after checking that its tokens give key. */
rk_status svc_cluster_serve_get(svc_cluster *cl, cc_store *st, const char *tenant, const cc_key *key, rk_buf *out);
rk_status svc_cluster_serve_put(cc_store *st, const char *model, const char *tenant, const cc_key *key,
                                uint16_t codec, uint16_t level, float cost, const uint8_t *blob, size_t len);

/* The CLUSTER_NODES reply: `u32 replicas`, `u32 n`, n x (`str id`, `str addr`); for cl NULL
 * replicas 0 and no nodes. */
void svc_cluster_nodes_reply(svc_cluster *cl, rk_buf *out);

#endif
