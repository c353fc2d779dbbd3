/*
 * ragkv/client.h — the public C client API of ragkv (libragkv).
 *
 * A connection speaks protocol v1 (docs/protocol.md) synchronously: ragkv_call() sends one
 * request and reads its response. Pipelining is ragkv_send_frame() several times, then
 * ragkv_recv_frame() as many times (responses carry the request ids). Typed calls for the
 * chunk and generation operations join as the daemon implements them; HELLO and PING are
 * here now, and the HTTP helper serves the admin CLI's health and metrics commands.
 *
 *     ragkv_conn *c;
 *     ragkv_server_info info;
 *     if (ragkv_connect("127.0.0.1", 7470, 5000, &c) == RK_OK && ragkv_hello(c, &info) == RK_OK)
 *         printf("%s serving %s\n", info.server, info.model);
 *     ragkv_close(c);
 *
 *     char *body; int code;
 *     if (ragkv_http_get("127.0.0.1", 7471, "/healthz", 2000, &code, &body) == RK_OK) {
 *         printf("%d %s", code, body);
 *         rk_free(body);
 *     }
 */
#ifndef RAGKV_CLIENT_H
#define RAGKV_CLIENT_H

#include <stdint.h>

#include "ragkv/proto.h"
#include "ragkv/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* HTTP/1.0 GET of path from host:port within timeout_ms. On RK_OK *status holds the HTTP
 * status code and *body the NUL-terminated response body (caller frees with rk_free).
 * RK_ERR_UNAVAILABLE when nothing listens, RK_ERR_TIMEOUT, RK_ERR_PROTOCOL on a reply that
 * is not HTTP, RK_ERR_LIMIT when the body exceeds 16 MiB. */
rk_status ragkv_http_get(const char *host, int port, const char *path, int timeout_ms,
                         int *status, char **body);

/* ---- binary protocol ---------------------------------------------------------------- */

typedef struct ragkv_conn ragkv_conn;

/* Connect to host:port; every later call on the connection waits at most timeout_ms.
 * *out is freed by ragkv_close. RK_ERR_UNAVAILABLE when nothing listens. */
rk_status ragkv_connect(const char *host, int port, int timeout_ms, ragkv_conn **out);

/* Close and free. NULL is a no-op. */
void ragkv_close(ragkv_conn *c);

/* Send one REQUEST frame. */
rk_status ragkv_send_frame(ragkv_conn *c, uint16_t opcode, uint64_t request_id,
                           const void *payload, uint32_t len);

/* Send raw bytes as they are (tests of malformed input use this). */
rk_status ragkv_send_raw(ragkv_conn *c, const void *bytes, size_t len);

/* Read one frame. *payload gets h->length bytes (caller frees with rk_free; NULL when 0).
 * RK_ERR_UNAVAILABLE when the server closed the connection, RK_ERR_TIMEOUT, RK_ERR_PROTOCOL
 * on a malformed frame, RK_ERR_LIMIT above 1 GiB. */
rk_status ragkv_recv_frame(ragkv_conn *c, rk_proto_hdr *h, uint8_t **payload);

/* Send a request and read its final response (stream frames, if any, are skipped). On an
 * error status the server's message is in rk_error_msg() and the status is returned;
 * otherwise *payload and *len hold the response payload (caller frees). */
rk_status ragkv_call(ragkv_conn *c, uint16_t opcode, const void *req, uint32_t req_len,
                     uint8_t **payload, uint32_t *len);

typedef struct ragkv_server_info {
    uint16_t version;      /* protocol version the server speaks */
    uint32_t max_frame;    /* largest request payload after AUTH */
    char server[128];      /* "ragkvd 0.1.0" */
    char model[256];       /* model the daemon serves */
    uint32_t vocab;        /* its vocabulary size (0 when unknown) */
    uint32_t max_context;  /* its context length (0 when unknown) */
} ragkv_server_info;

/* HELLO: negotiate version 1 and describe the server. */
rk_status ragkv_hello(ragkv_conn *c, ragkv_server_info *info);

/* PING: a round trip. */
rk_status ragkv_ping(ragkv_conn *c);

/* AUTH with a tenant token or the admin credential; tenant (may be NULL) receives the
 * authenticated name (SVC-side limit: 256 bytes including NUL). */
rk_status ragkv_auth(ragkv_conn *c, const char *token, char *tenant, size_t tenant_len);

/* ---- chunks ---------------------------------------------------------------------------- */

/* PUT_CHUNK: the server prefills tokens (no BOS) standalone and caches the compressed KV in
 * the tenant's namespace. key_out gets the 32-byte key; created/stored_bytes may be NULL. */
rk_status ragkv_put_chunk(ragkv_conn *c, const int32_t *tokens, uint32_t n, uint8_t key_out[32],
                          int *created, uint64_t *stored_bytes);

/* PUT_KV: store an externally computed KV container for tokens. */
rk_status ragkv_put_kv(ragkv_conn *c, const int32_t *tokens, uint32_t n, const void *container,
                       uint32_t len, uint8_t key_out[32], int *created);

/* GET_KV by key (tokens NULL) or by tokens: the stored container (caller frees with rk_free). */
rk_status ragkv_get_kv(ragkv_conn *c, const uint8_t key[32], const int32_t *tokens, uint32_t n,
                       uint8_t **container, uint32_t *len);

/* LOOKUP: present[i] = 1 when keys[i] (32 bytes each) is cached for this tenant. */
rk_status ragkv_lookup(ragkv_conn *c, const uint8_t *keys, uint32_t n, uint8_t *present);

/* DELETE one of the tenant's chunks. */
rk_status ragkv_delete(ragkv_conn *c, const uint8_t key[32]);

/* ---- generation ------------------------------------------------------------------------ */

/* One prompt segment: a cached chunk by key (key != NULL) or literal tokens. */
typedef struct ragkv_segment {
    const uint8_t *key;      /* 32 bytes, or NULL */
    const int32_t *tokens;   /* (ntokens) when key is NULL */
    uint32_t ntokens;
} ragkv_segment;

typedef struct ragkv_gen_params {
    const char *ns;              /* namespace ("" or NULL: the tenant's own) */
    const ragkv_segment *segs;   /* (nsegs) */
    uint32_t nsegs;
    const int32_t *query;        /* (nquery) */
    uint32_t nquery;
    uint8_t blend;               /* 0 full, 1 prefix, 2 naive, 3 cacheblend, 4 cachecraft, 5 ape */
    float recompute;             /* 0..1 */
    uint32_t max_tokens;
    float temperature;           /* 0 = greedy */
    float top_p;                 /* (0, 1]; 0 is taken as 1 */
    uint32_t top_k;              /* 0 = off */
    uint64_t seed;
} ragkv_gen_params;

typedef struct ragkv_gen_stats {
    uint32_t generated, prompt_tokens, recomputed, chunk_hits, chunk_misses;
    float ttft_ms, total_ms;     /* measured by the server */
    uint8_t finish;              /* 0 max_tokens, 1 end of sequence, 2 context full */
} ragkv_gen_stats;

/* Called with each group of new tokens as they stream in; return non-zero to stop reading
 * (the call then returns RK_ERR_CANCELLED and the connection should be closed). */
typedef int (*ragkv_token_cb)(void *ctx, const int32_t *tokens, uint32_t n);

/* GENERATE with streaming. stats may be NULL. */
rk_status ragkv_generate(ragkv_conn *c, const ragkv_gen_params *p, ragkv_token_cb cb, void *ctx,
                         ragkv_gen_stats *stats);

/* ---- admin operations (connection authenticated with the admin credential) ------------ */

typedef struct ragkv_tenant_row {
    char name[256];
    uint64_t bytes, chunks;             /* usage */
    uint64_t quota_bytes, quota_chunks; /* 0 = unlimited */
} ragkv_tenant_row;

/* Create a tenant; its token (shown once) goes to token_out (token_len >= 64). */
rk_status ragkv_admin_tenant_create(ragkv_conn *c, const char *tenant, uint64_t quota_bytes,
                                    uint64_t quota_chunks, int evict_policy, char *token_out,
                                    size_t token_len);
rk_status ragkv_admin_tenant_delete(ragkv_conn *c, const char *tenant);
/* *rows: an array of *n rows (caller frees with rk_free). */
rk_status ragkv_admin_tenant_list(ragkv_conn *c, ragkv_tenant_row **rows, size_t *n);
rk_status ragkv_admin_token_rotate(ragkv_conn *c, const char *tenant, char *token_out, size_t token_len);
/* The daemon's effective configuration text (caller frees with rk_free). */
rk_status ragkv_admin_config_get(ragkv_conn *c, char **text);
rk_status ragkv_admin_shutdown(ragkv_conn *c);

/* Quotas (0 = unlimited; evict_policy 1: evict the tenant's own chunks instead of refusing). */
rk_status ragkv_admin_quota_set(ragkv_conn *c, const char *tenant, uint64_t quota_bytes,
                                uint64_t quota_chunks, int evict_policy);
/* Quota and usage; any out pointer may be NULL. */
rk_status ragkv_admin_quota_get(ragkv_conn *c, const char *tenant, uint64_t *quota_bytes,
                                uint64_t *quota_chunks, int *evict_policy, uint64_t *bytes,
                                uint64_t *chunks);
/* Let tenant read namespace ns (a shared corpus), or stop it (grant 0). */
rk_status ragkv_admin_grant(ragkv_conn *c, const char *ns, const char *tenant, int grant);
/* A chunk's record as JSON (caller frees with rk_free). */
rk_status ragkv_admin_inspect(ragkv_conn *c, const char *ns, const uint8_t key[32], char **json);
/* EVICT: expired chunks and the disk budget now; FLUSH: hit counts out, orphan blobs
 * collected. *removed (may be NULL): chunks or blobs removed. */
rk_status ragkv_admin_evict(ragkv_conn *c, uint64_t *removed);

typedef struct ragkv_tenant_stats {
    uint64_t bytes, chunks;          /* stored now */
    uint64_t requests, generations;  /* since the daemon started */
    uint64_t hits, misses;           /* prompt segments from / missing in the cache */
    float ttft_p50_ms, ttft_p99_ms;  /* time to first token (histogram bucket bounds) */
} ragkv_tenant_stats;

/* A tenant's usage and serving statistics. */
rk_status ragkv_admin_tenant_stats(ragkv_conn *c, const char *tenant, ragkv_tenant_stats *out);
rk_status ragkv_admin_flush(ragkv_conn *c, uint64_t *removed);

/* ---- cluster routing (docs/deployment.md) ------------------------------------------------
 *
 * Several ragkvd nodes share one metadata Redis; each chunk lives on `replicas` owner nodes
 * chosen by rendezvous hashing of its key over the live nodes. Any node answers any request
 * (fetching remote chunks from their owners); a client that sends a request to an owner of
 * its (first) chunk saves that hop:
 *
 *     uint32_t replicas; ragkv_node *nodes; size_t n;
 *     if (ragkv_cluster_nodes(c, &replicas, &nodes, &n) == RK_OK && n) {
 *         ragkv_rank_nodes(nodes, n, key);          // nodes[0] is the first owner of key
 *         ... connect to nodes[0].addr ...
 *         rk_free(nodes);
 *     }
 */
typedef struct ragkv_node {
    char id[64];    /* the node's name (node-id) */
    char addr[128]; /* HOST:PORT it serves the protocol at */
} ragkv_node;

/* CLUSTER_NODES: the live nodes as the server sees them and the replication factor. n 0
 * (replicas 0) from a server that is not in a cluster. *nodes caller frees (rk_free). */
rk_status ragkv_cluster_nodes(ragkv_conn *c, uint32_t *replicas, ragkv_node **nodes, size_t *n);

/* Rendezvous score of node id for a chunk key: the first 8 bytes, little-endian, of
 * BLAKE2b-128(id || 0x00 || key). The owners of a key are the nodes with the highest scores. */
uint64_t ragkv_node_score(const char *node_id, const uint8_t key[32]);

/* Sort nodes by score for key, highest first (ties by id): the first `replicas` own it. */
void ragkv_rank_nodes(ragkv_node *nodes, size_t n, const uint8_t key[32]);

#ifdef __cplusplus
}
#endif
#endif
