/*
 * engine_impl.h — private to engine/: the model's tensor table, the backend interface every
 * backend (cpu.c, cuda/) implements, and the sequence/hidden objects they share with the
 * front end (engine.c). Not API.
 *
 * Division of labour: the front end (engine.c) validates every argument (token ids,
 * positions, slots, sizes) and keeps the host-side bookkeeping of each sequence (length and
 * per-slot positions); a backend receives only validated calls and does the arithmetic.
 */
#ifndef RAGKV_ENGINE_IMPL_H
#define RAGKV_ENGINE_IMPL_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "ragkv/engine.h"

/* Re-raise the calling thread's error detail with a prefix: "<prefix>: <old detail>".
 * (rk_error_set must not be handed rk_error_msg() itself: same buffer.) */
static inline rk_status eng_error_wrap(rk_status st, const char *prefix)
{
    char old[256];
    snprintf(old, sizeof(old), "%s", rk_error_msg());
    return rk_error_set(st, "%s: %s", prefix, old);
}

/* Slot position meaning "empty": larger than any real position, so never visible. */
#define ENG_POS_EMPTY INT32_MAX

/* One weight tensor, row-major (rows, cols); 1-D tensors have rows == 1. */
typedef struct eng_tensor {
    eng_dtype dtype;  /* element type of data */
    const void *data; /* (rows, cols) elements; borrowed from a mapping or model-owned */
    size_t rows;      /* 1 for vectors */
    size_t cols;      /* contiguous elements per row */
} eng_tensor;

/* One transformer layer. Shapes with d = dim, q = n_heads*head_dim, kv = n_kv_heads*head_dim,
 * f = hidden. */
typedef struct eng_layer_weights {
    eng_tensor attn_norm; /* (d) RMSNorm before attention */
    eng_tensor wq;        /* (q, d) */
    eng_tensor wk;        /* (kv, d) */
    eng_tensor wv;        /* (kv, d) */
    eng_tensor bq;        /* (q) Qwen2 only, else data NULL */
    eng_tensor bk;        /* (kv) */
    eng_tensor bv;        /* (kv) */
    eng_tensor wo;        /* (d, q) */
    eng_tensor ffn_norm;  /* (d) RMSNorm before the FFN */
    eng_tensor w1;        /* (f, d) gate_proj */
    eng_tensor w2;        /* (d, f) down_proj */
    eng_tensor w3;        /* (f, d) up_proj */
} eng_layer_weights;

/* A file mapping the model keeps open. */
typedef struct eng_mapping {
    void *addr; /* mmap'd, read-only */
    size_t len; /* bytes mapped */
} eng_mapping;

struct eng_model {
    eng_model_info info;       /* public description */
    char path[1024];           /* where it was opened from ("" for synthetic) */
    eng_tensor tok_emb;        /* (vocab, d) */
    eng_tensor final_norm;     /* (d) */
    eng_tensor wcls;           /* (vocab, d); same data as tok_emb when tied */
    eng_layer_weights *layers; /* (n_layers), owned */
    float *inv_freq;           /* (head_dim/2) RoPE frequency of pair i (scaling applied), owned */
    eng_mapping *maps;         /* (n_maps) file mappings, owned */
    size_t n_maps;
    void **owned;              /* (n_owned) buffers holding converted/generated tensors */
    size_t n_owned;
};

/* Remember a buffer the model frees at close. false when out of memory (p not taken). */
bool eng_model_own(eng_model *m, void *p);
/* Remember a mapping the model unmaps at close. */
bool eng_model_own_map(eng_model *m, void *addr, size_t len);
/* Fill derived fields: inv_freq table, n_params, stop ids default. Checks the shape is sane
 * (positive sizes, heads divide, head_dim even). */
rk_status eng_model_finish(eng_model *m);
/* Set info.id to "<basename>-<16 hex of BLAKE2b(data)>". */
void eng_model_make_id(eng_model *m, const char *path, const void *data, size_t n);
/* Check that every tensor has the shape info implies. */
rk_status eng_model_check_tensors(const eng_model *m);

/* Loaders (model_llama2c.c, model_hf.c). They fill *m (zeroed by the caller) and its info. */
rk_status eng_load_llama2c(eng_model *m, const char *path);
rk_status eng_load_hf(eng_model *m, const char *dir);

/* Parse an HF config.json text into info (arch, shapes, rope, eps, ids). */
rk_status eng_hf_config_parse(const char *text, size_t len, eng_model_info *info);

/* ---- sequences and hidden blocks, shared by the front end and backends ---------------- */

struct eng_seq {
    eng_backend *be;   /* owner */
    size_t capacity;   /* slots allocated */
    size_t len;        /* slots in use */
    int32_t *pos;      /* (capacity) position of each slot, ENG_POS_EMPTY when empty (host) */
    size_t pos_dirty;  /* lowest slot whose pos[] changed since the backend last copied them
                          (SIZE_MAX: none); engine.c lowers it, a backend keeping a device copy
                          of the positions refreshes [pos_dirty, len) and resets it */
    void *ctx;         /* backend's storage (KV of every layer) */
};

struct eng_hidden {
    eng_backend *be; /* owner */
    size_t rows;     /* rows allocated */
    void *ctx;       /* backend's storage of (rows, dim) float32 */
};

struct eng_kvblock {
    eng_backend *be; /* owner */
    size_t n;        /* tokens */
    size_t bytes;    /* backend memory held (eng_kvblock_bytes) */
    float *host;     /* generic path (backend without kvblock entries): the canonical KV,
                        eng_kv_floats(model, n) float32, owned; NULL on a native backend */
    void *ctx;       /* a native backend's storage of the block */
    eng_kvblock_mem mem; /* where the KV lives (set by kvblock_init on a native backend) */
};

/* One row of a decode_sample call: its sampler's settings and the uniform engine.c drew from
 * the sampler's stream for it (as eng_sample would; unused when temperature is 0). */
typedef struct eng_sample_row {
    float temperature; /* 0: greedy */
    int top_k;         /* 0: off */
    float top_p;       /* >= 1: off */
    float r;           /* uniform in [0, 1) */
} eng_sample_row;

/* White-box test hook (tests/engine/test_gpu_sample.c), not API: the CUDA backend's device
 * sampler on given logits, (n, vocab) host float32 of any vocab > 0, one token per row into
 * out (n) under rows (n). RK_ERR_UNSUPPORTED without CUDA or on another backend. */
rk_status eng_cuda_sample_rows(eng_backend *be, const float *logits, int vocab, size_t n, const eng_sample_row *rows,
                               int32_t *out);

/* White-box test hook (tests/engine/test_gpu_wgmma.c), not API: c (64 x 64, row-major f32) =
 * a (64 x k) b (64 x k)^T, a and b row-major bf16 bit patterns, through the Hopper warpgroup
 * product of engine/cuda/wgmma.cuh on CUDA device `device`; k a multiple of 16 up to 256.
 * RK_ERR_UNSUPPORTED without CUDA, on a device other than compute capability 9.0, or when the
 * device ran code without sm_90a; RK_ERR_DEVICE
 * on a CUDA error; RK_ERR_INVALID for another k. */
rk_status eng_cuda_wgmma_check(int device, size_t k, const uint16_t *a, const uint16_t *b, float *c);

/* Grow a sampler's scratch for vocab-sized rows, so that eng_sample cannot then fail for
 * memory. false when out of memory. */
bool eng_sampler_reserve(eng_sampler *s, int vocab);

/* The backend interface. Every entry is required unless marked optional. All calls are
 * validated by engine.c first. */
struct eng_backend_i {
    const char *name; /* "cpu", "cuda" */
    void (*free)(void *ctx);

    /* allocate/free the KV storage of s->capacity slots into s->ctx */
    rk_status (*seq_init)(void *ctx, eng_seq *s);
    void (*seq_release)(void *ctx, eng_seq *s);

    /* allocate/free h->rows hidden states into h->ctx; copy rows in/out; gather rows */
    rk_status (*hidden_init)(void *ctx, eng_hidden *h);
    void (*hidden_release)(void *ctx, eng_hidden *h);
    rk_status (*hidden_write)(void *ctx, eng_hidden *h, size_t row0, size_t n, const float *src);
    rk_status (*hidden_read)(void *ctx, const eng_hidden *h, size_t row0, size_t n, float *dst);
    rk_status (*hidden_gather)(void *ctx, eng_hidden *dst, const eng_hidden *src,
                               const size_t *idx, size_t n);

    /* eng_embed, eng_layer_forward, eng_logits as in engine.h. s->pos already holds the new
     * positions of `slots` when layer_forward is called (and s->len covers them). */
    rk_status (*embed)(void *ctx, eng_hidden *h, size_t row0, const int32_t *tokens, size_t n);
    rk_status (*layer_forward)(void *ctx, eng_seq *s, int layer, eng_hidden *h, size_t n,
                               const int32_t *pos, const int32_t *slots, float *k_fresh,
                               float *v_fresh, const eng_attn_groups *ag);
    rk_status (*logits)(void *ctx, const eng_hidden *h, const size_t *rows, size_t n,
                        float *logits);

    /* KV of layers [layer0, layer0+n_layers) in the canonical layout; import also receives
     * the positions (already in s->pos) */
    rk_status (*kv_export)(void *ctx, const eng_seq *s, int layer0, int n_layers, size_t slot0, size_t n,
                           float *out);
    rk_status (*kv_import)(void *ctx, eng_seq *s, int layer0, int n_layers, size_t slot0, size_t n,
                           const int32_t *pos, const float *kv);

    /* Batched decode: seqs[i] gets tokens[i] at pos[i] in slot slots[i] (s->pos updated).
     * Optional: NULL means engine.c runs embed + layer_forward per layer per sequence. */
    rk_status (*decode)(void *ctx, eng_seq *const *seqs, const int32_t *tokens,
                        const int32_t *pos, const int32_t *slots, size_t n, float *logits);

    /* KV blocks (eng_kvblock_*), in the backend's own memory and KV format. Optional, all four
     * or none (kept last so that positional initialisers of this struct leave them NULL). When
     * any is NULL, engine.c keeps a float32 host copy in b->host, imports it with kv_import
     * and reads it with memcpy: the CPU backend's implementation, and the reference.
     *   kvblock_init:    store b->n tokens of canonical KV (kv: host float32, eng_kv_floats
     *                    floats, K pre-RoPE) in b->ctx, and set b->bytes to the memory held
     *                    and b->mem to where the canonical KV lives; kv NULL: allocate only
     *                    (the caller fills b->mem); on failure leave nothing allocated.
     *   kvblock_release: free b->ctx.
     *   kvblock_import:  exactly kv_import(ctx, s, layer0, n_layers, slot0, b->n, pos, <the
     *                    floats of those layers of b>) (s->pos already holds pos; b->be ==
     *                    s->be and the layer range checked).
     *   kvblock_read:    layers [layer0, layer0+n_layers) of b as canonical float32 into host
     *                    memory out (range checked). */
    rk_status (*kvblock_init)(void *ctx, eng_kvblock *b, const float *kv);
    void (*kvblock_release)(void *ctx, eng_kvblock *b);
    rk_status (*kvblock_import)(void *ctx, eng_seq *s, size_t slot0, const int32_t *pos, const eng_kvblock *b,
                                int layer0, int n_layers);
    rk_status (*kvblock_read)(void *ctx, const eng_kvblock *b, int layer0, int n_layers, float *out);

    /* Optional (NULL: engine.c exports both sequences' layer and compares on the host, the
     * reference): eng_kv_deviation on the backend's own storage (validated: same backend,
     * layer, slots in range and non-empty in both). */
    rk_status (*kv_deviation)(void *ctx, const eng_seq *a, const eng_seq *b, int layer, size_t slot0, size_t n,
                              bool with_v, float *out);

    /* eng_decode_sample on the device: decode as `decode` does, then out[i] = the token row i's
     * logits give under rows[i] (-1 for an all-NaN row), with greedy rows exactly eng_argmax;
     * logits (n, vocab) host float32 filled only when not NULL. Optional (NULL: engine.c runs
     * decode and eng_sample per row on the host, the reference). Kept last, as above. */
    rk_status (*decode_sample)(void *ctx, eng_seq *const *seqs, const int32_t *tokens, const int32_t *pos,
                               const int32_t *slots, size_t n, const eng_sample_row *rows, int32_t *out,
                               float *logits);

    /* eng_layer_kv: the rows' fresh K and V of `layer` into `slots` as layer_forward writes
     * them, h unchanged (s->pos already holds the positions). Optional (NULL: engine.c runs
     * layer_forward on a copy of the rows, the reference). Kept last, as above. */
    rk_status (*layer_kv)(void *ctx, eng_seq *s, int layer, const eng_hidden *h, size_t n, const int32_t *pos,
                          const int32_t *slots);

    /* eng_kv_import_blocks_layers: kvblock_import of nb blocks (slots claimed already; none
     * with a host copy) in one call. Optional (NULL: engine.c imports block after block). */
    rk_status (*kvblocks_import)(void *ctx, eng_seq *s, size_t nb, const size_t *slot0, const int32_t *const *pos,
                                 const eng_kvblock *const *b, int layer0, int n_layers);
};

struct eng_backend {
    const struct eng_backend_i *iface; /* the implementation */
    void *ctx;                         /* its state */
    eng_model *model;                  /* borrowed; outlives the backend */
};

#endif
