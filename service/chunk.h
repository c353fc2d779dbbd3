/*
 * chunk.h — private to service/: the stored form of a chunk, and the chunk work the executor
 * does with the engine, the codec and the store.
 *
 * A stored chunk blob is the chunk's token ids followed by its KV container (docs/format.md):
 *
 *     off  size  field
 *       0     4  magic "RKC1"
 *       4     4  u32 n_tokens
 *       8   4n   n_tokens x i32 token ids (little-endian)
 *    8+4n   ...  the KV container, to the end
 *
 * The tokens travel with the KV because a prompt may name a chunk by key alone, and blending
 * recomputes some of its tokens. On read, the tokens are checked against the key (the key is
 * BLAKE2b of model, namespace and tokens), so a blob can never be served for another chunk.
 */
#ifndef RAGKV_SVC_CHUNK_H
#define RAGKV_SVC_CHUNK_H

#include <stddef.h>
#include <stdint.h>

#include "ragkv/bytes.h"
#include "ragkv/chunkcache.h"
#include "ragkv/codec.h"
#include "ragkv/engine.h"
#include "ragkv/status.h"
#include "ragkv/thread.h"

/* Append the blob for (tokens, container) to out. */
rk_status svc_chunk_wrap(const int32_t *tokens, uint32_t n, const void *container, size_t clen, rk_buf *out);

/* Split a blob: *tokens gets a fresh array (rk_free) of *n ids; *container points into blob.
 * RK_ERR_FORMAT / RK_ERR_TRUNCATED on a malformed blob. */
rk_status svc_chunk_unwrap(const uint8_t *blob, size_t len, int32_t **tokens, uint32_t *n,
                           const uint8_t **container, size_t *clen);

/* What the chunk work needs: the model, its backend (executor thread only), the store, a
 * pool for the codec, and the codec settings for new chunks. */
typedef struct svc_chunk_ctx {
    eng_model *model;
    eng_backend *backend;
    cc_store *store;
    rk_pool *pool;
    codec_id codec;
    int level;
    struct svc_cluster *cluster; /* placement over the cluster's nodes; NULL: this node only */
    struct svc_devcache *dev;    /* the device tier (devcache.h); NULL: off */
    bool layer_loading;          /* chunks read without a device tier go to the assembly
                                    compressed, decoded a layer ahead of the layer computed */
    bool craft_capture;          /* capture Cache-Craft variants after cachecraft prompts */
    size_t craft_max_tokens;     /* longest prompt prefix one capture prefills */
    uint32_t craft_min_uses;     /* capture a pair once it came in this many cachecraft prompts */
    struct svc_craft_seen *craft_seen; /* the pairs' counts (craft.h; the executor's) */
    uint64_t craft_max_wait_ns;  /* a capture waiting this long runs while the executor is busy
                                    (at most one per this interval); 0: only when idle */
} svc_chunk_ctx;

/* Check a container against the model: geometry (layers, kv heads, head dim) and n tokens,
 * and that it decodes (every checksum verified). kv_out, when not NULL, gets the decoded
 * float32 KV (rk_free). */
rk_status svc_chunk_check(const svc_chunk_ctx *x, const uint8_t *container, size_t clen, uint32_t n,
                          float **kv_out);

/* Fetch a chunk as tenant sees it: by key, verifying its tokens against the key under the
 * record's namespace. *tokens (rk_free) and, when kv is not NULL, the decoded KV (rk_free);
 * rec, when not NULL, gets the chunk's record (cc_record_clear). RK_ERR_NOT_FOUND when absent
 * or unreadable for tenant. */
rk_status svc_chunk_fetch(const svc_chunk_ctx *x, const char *tenant, const cc_key *key, int32_t **tokens,
                          uint32_t *n, float **kv, cc_record *rec);

/* svc_chunk_fetch with the KV decoded into a new KV block on be (bl_kvblock_decode: straight
 * into GPU memory by the CUDA decoder when be keeps bf16 KV). *blk owned by the caller
 * (eng_kvblock_free, on the thread that drives be). Executor thread. */
rk_status svc_chunk_fetch_block(const svc_chunk_ctx *x, eng_backend *be, const char *tenant, const cc_key *key,
                                int32_t **tokens, uint32_t *n, eng_kvblock **blk, cc_record *rec);

/* The stored chunk b of key (its record rec, from the store), checked and opened as
 * svc_chunk_fetch / svc_chunk_fetch_block do: *tokens (rk_free) and *n; with kv the decoded
 * floats (rk_free), with blk (and be) a new KV block (eng_kvblock_free; executor thread), or
 * only the tokens when both are NULL. RK_ERR_CORRUPT when the tokens are not the key's. */
rk_status svc_chunk_open(const svc_chunk_ctx *x, const cc_key *key, const cc_record *rec, const cc_buf *b,
                         int32_t **tokens, uint32_t *n, float **kv, eng_backend *be, eng_kvblock **blk);

/* svc_chunk_open without decoding: *tokens (rk_free) and *n, and the container inside b
 * (borrowed: valid while b is), its geometry checked against the model, for blend's
 * layer-pipelined loading. RK_ERR_CORRUPT when the tokens are not the key's. */
rk_status svc_chunk_view(const svc_chunk_ctx *x, const cc_key *key, const cc_record *rec, const cc_buf *b,
                         int32_t **tokens, uint32_t *n, const uint8_t **container, size_t *clen);

/* Prefill tokens standalone and encode their KV with the context's codec and level: the
 * container appended to *container, the prefill's time in *prefill_ms (the recompute cost a hit
 * saves). Runs the engine: executor thread only. */
rk_status svc_chunk_encode(const svc_chunk_ctx *x, const int32_t *tokens, uint32_t n, rk_buf *container,
                           double *prefill_ms);

/* Encode n tokens' float KV (the model's geometry) with codec at level (-1: the codec's
 * default), the codec threads of x: the container appended to out. */
rk_status svc_kv_encode(const svc_chunk_ctx *x, const float *kv, uint32_t n, codec_id codec, int level, rk_buf *out);

/* What to put for a chunk: its stored form (tokens + container) into blob, and the arguments
 * (model, tokens, codec and level read from the container, cost) pointing into it and tokens. */
rk_status svc_chunk_args(const svc_chunk_ctx *x, const int32_t *tokens, uint32_t n, const rk_buf *container,
                         double cost, rk_buf *blob, cc_put_args *a);

/* Prefill tokens standalone, encode, and store them for tenant in its own namespace.
 * *created 0 when the chunk was already there (no prefill then); *stored_bytes the blob size.
 * Runs the engine: executor thread only. */
rk_status svc_chunk_put(const svc_chunk_ctx *x, const char *tenant, const int32_t *tokens, uint32_t n,
                        cc_key *key, int *created, uint64_t *stored_bytes);

#endif
