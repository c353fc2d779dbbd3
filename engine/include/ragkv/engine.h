/*
 * ragkv/engine.h — ragkv's transformer runtime: models, compute backends, sequences with
 * their own KV cache, layer-granular forward operations, batched decode and sampling.
 *
 * Three objects:
 *   - eng_model:   the weights of a Llama-family model (llama2.c .bin, a Hugging Face folder,
 *                  or seeded synthetic weights). Read-only once open; share it freely.
 *   - eng_backend: a compute device bound to one model ({iface, ctx}: CPU now, CUDA later).
 *                  Not thread-safe: one thread drives a backend at a time.
 *   - eng_seq:     one sequence's KV cache on a backend: `capacity` slots, each holding a
 *                  token's K and V for every layer and that token's position. Slots need not
 *                  hold contiguous positions; attention follows the exact causal rule by
 *                  position: key j is visible to a query at position p iff pos(j) <= p.
 * plus eng_hidden, a backend-resident block of hidden states (rows, dim), the input and output
 * of the layer-granular operations, and eng_kvblock, a chunk's KV resident on a backend.
 *
 * Generation in a few lines:
 *
 *     eng_model *m;  eng_backend *be;  eng_seq *s;
 *     if (eng_model_open("stories260K.bin", &m) != RK_OK) ... rk_error_msg() ...;
 *     eng_backend_cpu_new(m, 0, &be);                 // 0 threads: one per CPU
 *     eng_seq_new(be, 0, &s);                         // 0: the model's context length
 *     const eng_model_info *mi = eng_model_get_info(m);
 *     float *logits = malloc(mi->vocab * sizeof(float));
 *     eng_prefill(s, prompt, n, NULL, ENG_LOGITS_LAST, logits);   // positions 0..n-1
 *     eng_sampler sm;  eng_sampler_init(&sm, 0.0f, 0, 1.0f, 42);  // greedy
 *     int32_t tok = eng_sample(&sm, logits, mi->vocab);
 *     eng_decode(be, &s, &tok, 1, logits);            // one step, next position
 *     eng_sampler *sp = &sm;  int32_t next;           // or a step and its token at once,
 *     eng_decode_sample(be, &s, &tok, 1, &sp, &next, NULL); // chosen where the logits are
 *     ...
 *     eng_seq_free(s);  eng_backend_free(be);  eng_model_close(m);
 *
 * A whole-prompt prefill is exactly these layer-granular steps (what blend/ uses):
 *
 *     eng_hidden *h;  eng_hidden_new(be, n, &h);
 *     eng_embed(be, h, 0, tokens, n);
 *     for (int l = 0; l < mi->n_layers; l++)
 *         eng_layer_forward(s, l, h, n, pos, slots, NULL, NULL);
 *     eng_logits(be, h, NULL, n, logits);             // final norm + classifier, all rows
 *
 * KV in the API is float32 in the canonical chunk-cache layout
 * `[layer][K|V][token][kv_head][head_dim]`, K *before* RoPE; RoPE is applied at whatever
 * positions the K is imported at.
 *
 * Errors: every fallible call returns rk_status and leaves a detail in rk_error_msg().
 */
#ifndef RAGKV_ENGINE_H
#define RAGKV_ENGINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ragkv/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct eng_model eng_model;
typedef struct eng_backend eng_backend;
typedef struct eng_seq eng_seq;
typedef struct eng_hidden eng_hidden;

/* ---- models ---------------------------------------------------------------------------- */

typedef enum eng_format {
    ENG_FORMAT_LLAMA2C = 0, /* llama2.c checkpoint (version 0) */
    ENG_FORMAT_HF = 1,      /* Hugging Face folder: config.json + safetensors */
    ENG_FORMAT_SYNTH = 2,   /* generated in memory by eng_model_synth */
} eng_format;

typedef enum eng_rope_layout {
    ENG_ROPE_INTERLEAVED = 0, /* pairs (2i, 2i+1) within a head: llama2.c, GPT-J */
    ENG_ROPE_HALF = 1,        /* pairs (i, i + head_dim/2): Hugging Face rotate_half */
} eng_rope_layout;

typedef enum eng_dtype {
    ENG_DTYPE_F32 = 0,
    ENG_DTYPE_F16 = 1,
    ENG_DTYPE_BF16 = 2,
} eng_dtype;

#define ENG_MAX_STOP 4

/* What a model is. Returned by eng_model_get_info; lives as long as the model. */
typedef struct eng_model_info {
    eng_format format;        /* where the weights came from */
    char arch[32];            /* "llama", "mistral", "qwen2" */
    char id[80];              /* stable model id: "<name>-<16 hex of BLAKE2b(header/config)>";
                                 same weights file -> same id on every machine (chunk keys) */
    int dim;                  /* model width (hidden_size) */
    int hidden;               /* FFN width (intermediate_size) */
    int n_layers;
    int n_heads;              /* query heads */
    int n_kv_heads;           /* key/value heads (GQA: n_heads % n_kv_heads == 0) */
    int head_dim;             /* per-head width (usually dim / n_heads) */
    int vocab;
    int max_seq;              /* context length: positions are 0..max_seq-1 */
    float rope_theta;         /* RoPE base */
    eng_rope_layout rope;     /* pair layout of q/k within a head */
    bool rope_llama3;         /* rope_scaling {"rope_type": "llama3"} applied to frequencies */
    float rope_factor;        /* llama3 scaling: factor, low/high freq factors, original length */
    float rope_low_freq;
    float rope_high_freq;
    int rope_orig_max;
    float norm_eps;           /* RMSNorm epsilon */
    bool qkv_bias;            /* q/k/v projections have biases (Qwen2) */
    bool tied_embeddings;     /* classifier shares the token embedding matrix */
    eng_dtype dtype;          /* storage type of the weight matrices */
    int bos;                  /* beginning-of-sequence token id (prepended to prompts) */
    int eos;                  /* primary end-of-sequence id */
    int stop[ENG_MAX_STOP];   /* ids that end generation: BOS for llama2.c models (their
                                 stories are separated by BOS), the config's EOS ids for HF */
    int n_stop;
    uint64_t n_params;        /* number of weights */
} eng_model_info;

/* Open a model: a llama2.c .bin file, a Hugging Face folder (config.json plus
 * model.safetensors or model.safetensors.index.json with its shards), or "synth:SHAPE[:SEED]"
 * for eng_model_synth's seeded weights (seed 1 by default; benchmarks at real shapes). Weights are mapped
 * read-only, never copied when usable in place. Bad, truncated or inconsistent files give
 * RK_ERR_FORMAT / RK_ERR_TRUNCATED / RK_ERR_UNSUPPORTED with the reason in rk_error_msg().
 * *out owned by the caller; close with eng_model_close after every backend using it. */
rk_status eng_model_open(const char *path, eng_model **out);

/* Seeded synthetic weights of a named shape, generated in memory (for benchmarks: no disk).
 * Shapes: see eng_synth_shape_names(). Same (shape, seed) -> same weights everywhere. */
rk_status eng_model_synth(const char *shape, uint64_t seed, eng_model **out);

/* Release a model. NULL is a no-op. */
void eng_model_close(eng_model *m);

/* Model description (borrowed: valid until eng_model_close). */
const eng_model_info *eng_model_get_info(const eng_model *m);

/* Path the model was opened from ("" for synthetic). Borrowed. */
const char *eng_model_path(const eng_model *m);

/* NULL-terminated list of shape names for eng_model_synth / eng_model_synth_write
 * (static storage). */
const char *const *eng_synth_shape_names(void);

/* Write the synthetic model of a shape as a Hugging Face folder (config.json,
 * model.safetensors, tokenizer.bin with a byte-level vocabulary) in dir (created if needed).
 * Large shapes are written as bf16, small ones as f32. */
rk_status eng_model_synth_write(const char *shape, uint64_t seed, const char *dir);

/* Write an open model (any format) as a Hugging Face folder: config.json + model.safetensors
 * (float32). Interleaved-RoPE models (llama2.c) get their q/k rows permuted per head so that
 * the folder, read with rotate-half RoPE, computes the same function. */
rk_status eng_model_write_hf(const eng_model *m, const char *dir);

const char *eng_dtype_name(eng_dtype t); /* "f32", "f16", "bf16" (static storage) */

/* ---- backends --------------------------------------------------------------------------- */

/* CPU reference backend, float32, nthreads workers (<= 0: one per online CPU). Weights in
 * float32 are used in place from the mapping; f16/bf16 weights are converted to float32 copies
 * at construction. *out owned by the caller (eng_backend_free); the model must outlive it. */
rk_status eng_backend_cpu_new(eng_model *m, int nthreads, eng_backend **out);

/* CUDA backend on device `device`. Storage and arithmetic follow RAGKV_CUDA_MATH:
 *   auto (unset): bf16 for bf16/f16 checkpoints, fp32 for fp32 ones;
 *   fp32: float32 weights and KV, attention by cuBLAS (the exact twin of the CPU backend);
 *   tf32: as fp32 with TF32 tensor-core matrix products;
 *   bf16: bfloat16 weights and KV with fp32 accumulation, fused attention kernels.
 * An unknown value is RK_ERR_INVALID. RK_ERR_UNSUPPORTED in builds without CUDA,
 * RK_ERR_UNAVAILABLE without a device. */
rk_status eng_backend_cuda_new(eng_model *m, int device, eng_backend **out);

/* The mode a CUDA backend runs in: "fp32", "tf32" or "bf16" ("" for other backends). */
const char *eng_backend_cuda_mode(const eng_backend *be);

/* A CUDA backend's layer profiler (RAGKV_CUDA_PROFILE=1: per-phase GPU time, reported on
 * stderr when the backend is freed) forgets what it summed so far, so that a benchmark's
 * set-up stays out of the report. A no-op for other backends and without the variable. */
void eng_backend_cuda_profile_reset(eng_backend *be);

/* Decode-step CUDA graphs of a CUDA backend: how many times eng_decode captured its step (a new
 * batch size, attention grid or buffer address) and how many steps it replayed. Returns 1 while
 * graphs are in use, 0 when they are off (RAGKV_CUDA_GRAPH=0 at the last decode, a capture that
 * failed, a shape the graph path does not take) or for other backends (counts then 0). */
int eng_backend_cuda_graphs(const eng_backend *be, uint64_t *captures, uint64_t *replays);
/* The paged KV cache of a CUDA backend: returns the slots per block (RAGKV_CUDA_KV_BLOCK, default
 * 64), and the blocks held by sequences now (*in_use) and in its pool, used or not (*total: the
 * device memory it keeps for KV, in blocks of n_layers x 3 x slots x kv_dim elements). A
 * sequence holds the blocks of its length, not of its capacity. 0 (counts 0) for other backends. */
int eng_backend_cuda_kv_blocks(const eng_backend *be, size_t *in_use, size_t *total);
/* The CUDA device ordinal of a CUDA backend, -1 for any other backend. */
int eng_backend_cuda_device(const eng_backend *be);
/* The cudaStream_t a CUDA backend orders its prefill, layer and import work on (NULL: the
 * legacy default stream), for work of other streams to be waited for with events; NULL for
 * any other backend. The backend's host waits cover that stream only, never the whole device. */
void *eng_backend_cuda_stream(const eng_backend *be);

/* Backend by name: "cpu" or "cuda" (nthreads is the CPU thread count or the CUDA device). */
rk_status eng_backend_new(eng_model *m, const char *name, int nthreads, eng_backend **out);

/* Release a backend (all its sequences and hidden blocks must be freed first). NULL no-op. */
void eng_backend_free(eng_backend *be);

const char *eng_backend_name(const eng_backend *be); /* "cpu", "cuda"; static storage */
eng_model *eng_backend_model(const eng_backend *be);  /* borrowed */

/* ---- sequences ------------------------------------------------------------------------- */

/* A sequence with room for `capacity` slots (0: the model's max_seq). Starts empty.
 * *out owned by the caller, freed with eng_seq_free before its backend. */
rk_status eng_seq_new(eng_backend *be, size_t capacity, eng_seq **out);
void eng_seq_free(eng_seq *s); /* NULL is a no-op */

size_t eng_seq_len(const eng_seq *s);      /* slots in use: 0..len-1 (some may be empty) */
size_t eng_seq_capacity(const eng_seq *s);
/* Position held by a slot, or -1 for an empty slot or slot >= len. */
int32_t eng_seq_pos(const eng_seq *s, size_t slot);
/* Position the next appended token gets: 1 + the highest position held (0 when empty). */
int32_t eng_seq_next_pos(const eng_seq *s);
/* Forget slots >= n (n <= len). */
rk_status eng_seq_truncate(eng_seq *s, size_t n);
eng_backend *eng_seq_backend(const eng_seq *s); /* borrowed */

/* ---- hidden states ---------------------------------------------------------------------- */

/* A block of `rows` hidden states (rows, dim) float32 in the backend's memory. */
rk_status eng_hidden_new(eng_backend *be, size_t rows, eng_hidden **out);
void eng_hidden_free(eng_hidden *h); /* NULL is a no-op */
size_t eng_hidden_rows(const eng_hidden *h);
/* Copy rows [row0, row0+n) from / to host memory src/dst (n, dim) float32. */
rk_status eng_hidden_write(eng_hidden *h, size_t row0, size_t n, const float *src);
rk_status eng_hidden_read(const eng_hidden *h, size_t row0, size_t n, float *dst);
/* dst row i = src row idx[i], i < n (a gather; dst and src distinct, same backend). */
rk_status eng_hidden_gather(eng_hidden *dst, const eng_hidden *src, const size_t *idx, size_t n);

/* ---- forward operations ----------------------------------------------------------------- */

/* Rows [row0, row0+n) of h = token embeddings of tokens[0..n). RK_ERR_RANGE on a bad id. */
rk_status eng_embed(eng_backend *be, eng_hidden *h, size_t row0, const int32_t *tokens, size_t n);

/* Run transformer layer `layer` on the first n rows of h (in place: input hidden states in,
 * output hidden states out). Row i is the token at position pos[i]; its fresh K (pre-RoPE)
 * and V are written into slot slots[i] of s (slots distinct, < capacity; a slot past the
 * current length extends it, slots skipped over stay empty), which takes position pos[i] for
 * every layer. Then every row's query attends over all of s's slots of this layer with the
 * exact causal rule (slot j visible iff pos(j) <= pos[i]), the fresh ones included.
 * k_fresh/v_fresh, when not NULL, receive the rows' fresh pre-RoPE K and V, (n, n_kv_heads,
 * head_dim) float32 each, as computed (e.g. to measure deviation from a cached K).
 * Arguments are checked before anything changes; if the backend then fails (out of memory,
 * device error) the slots keep their new positions but their contents in this layer are
 * unspecified. */
rk_status eng_layer_forward(eng_seq *s, int layer, eng_hidden *h, size_t n, const int32_t *pos,
                            const int32_t *slots, float *k_fresh, float *v_fresh);

/* Slot groups for eng_layer_forward_ex: group g is the slots [bounds[g], bounds[g+1]) (groups
 * need not cover every slot). Two optional inputs change how rows attend to a group's keys,
 * one optional output reports where the attention went:
 *   - temperature[g] > 0: the group's scores q.k/sqrt(head_dim) are divided by it (APE's T);
 *   - log_scale[g]: added to the group's scores after that, i.e. its softmax weights are
 *     multiplied by exp(log_scale[g]) before normalising (APE's ln S, which merges the context
 *     part with the causal part by log-sum-exp weights); -INFINITY hides the group;
 *   - mass (n, n_groups): the attention probability each row puts on each group's slots,
 *     averaged over heads (Cache-Craft's inter/intra-chunk attention), from the very
 *     probabilities the layer used. A row's masses sum to 1 when the groups cover every slot
 *     it sees. A row that sees no key at all (all hidden) gets zero attention output.
 *   - mass_add_rows: mass is (n_groups) instead, a running sum the caller keeps: each row's
 *     masses (as above) are added to it, rows in order, group by group, so that calls over
 *     several layers give the very floats of adding up the (n, n_groups) masses on the host
 *     row by row, without their copy (CacheBlend's lookahead ranking). */
typedef struct eng_attn_groups {
    size_t n_groups;          /* groups (> 0) */
    const size_t *bounds;     /* (n_groups + 1) non-decreasing slot boundaries, <= capacity */
    const float *temperature; /* optional (n_groups), each > 0; NULL: 1 */
    const float *log_scale;   /* optional (n_groups), finite or -INFINITY; NULL: 0 */
    float *mass;              /* optional out: (n, n_groups) float32, host memory */
    bool mass_add_rows;       /* mass is (n_groups), in and out: every row's masses added */
} eng_attn_groups;

/* eng_layer_forward with slot groups (ag may be NULL: then exactly eng_layer_forward). */
rk_status eng_layer_forward_ex(eng_seq *s, int layer, eng_hidden *h, size_t n, const int32_t *pos,
                               const int32_t *slots, float *k_fresh, float *v_fresh, const eng_attn_groups *ag);

/* The start of layer `layer` alone: the first n rows of h (the layer's input) give their fresh
 * K (pre-RoPE) and V, written into slots `slots` of s at positions pos exactly as
 * eng_layer_forward writes them; h is not changed and no attention or MLP runs (a norm and a
 * projection: CacheBlend's probe of fresh against cached K/V at its check layer). Arguments
 * and failures as eng_layer_forward's. */
rk_status eng_layer_kv(eng_seq *s, int layer, const eng_hidden *h, size_t n, const int32_t *pos,
                       const int32_t *slots);

/* Final RMSNorm and classifier for chosen rows of h: logits row i (vocab floats) for h row
 * rows[i] (rows NULL: rows 0..n-1). logits is (n, vocab) float32 host memory. */
rk_status eng_logits(eng_backend *be, const eng_hidden *h, const size_t *rows, size_t n,
                     float *logits);

typedef enum eng_logits_mode {
    ENG_LOGITS_NONE = 0, /* logits not wanted */
    ENG_LOGITS_LAST = 1, /* (1, vocab): the last token's */
    ENG_LOGITS_ALL = 2,  /* (n, vocab): every token's */
} eng_logits_mode;

/* Append n tokens to s in slots len..len+n-1 at positions pos[0..n) (pos NULL: next_pos,
 * next_pos+1, ...) and run every layer over them: exactly embed + layer_forward for each
 * layer + logits. On failure nothing is appended (the sequence is truncated back). */
rk_status eng_prefill(eng_seq *s, const int32_t *tokens, size_t n, const int32_t *pos,
                      eng_logits_mode mode, float *logits);

/* One decode step for a batch: sequence seqs[i] (distinct, all on be) gets tokens[i] appended
 * at its next position (slot len), and logits row i (vocab floats) is the distribution of the
 * token after it. Sequences may join or leave the batch between steps freely. logits is
 * (n, vocab) float32. Equal to n separate calls with n = 1. On failure no sequence grows. */
rk_status eng_decode(eng_backend *be, eng_seq *const *seqs, const int32_t *tokens, size_t n,
                     float *logits);

typedef struct eng_sampler eng_sampler;

/* eng_decode, then row i's next token chosen by samplers[i] into out[i]: what
 * `eng_decode(be, seqs, tokens, n, logits); out[i] = eng_sample(samplers[i], <row i>, vocab)`
 * gives, without the (n, vocab) logits crossing to the host where the backend samples on its
 * device. out[i] is -1 when row i's logits are all NaN. logits, when not NULL, receives the
 * (n, vocab) float32 rows as eng_decode would (the caller pays for their copy); NULL: not
 * returned. samplers: n distinct samplers (the same one twice is RK_ERR_INVALID), each
 * temperature >= 0, top_k >= 0, top_p > 0 as eng_sampler_init leaves them; each advances its
 * PCG32 stream exactly as eng_sample would (one uniform for a stochastic row with a token,
 * none for greedy or all-NaN rows), so a sequence may switch between this call and
 * eng_decode + eng_sample freely.
 *
 * Exactness: on the CPU backend (and every backend without device sampling, with
 * RAGKV_DEVICE_SAMPLE=0 in the environment, or for calls of fewer than 3 rows unless
 * RAGKV_DEVICE_SAMPLE=1: there the host is faster) this is literally eng_decode + eng_sample.
 * On the CUDA backend, greedy rows are exactly eng_argmax of the device's logits (lowest id on ties,
 * NaN never wins); stochastic rows use the same uniform and the same softmax, top-k and top-p
 * rules, with sums in another order (see docs/engine.md), so a token can differ from the
 * host's only where float rounding moves a boundary (a cumulative probability within ~1e-6 of
 * the uniform, or of top_p). Rows whose largest logit / temperature is infinite get their
 * argmax on the device (the host's softmax is NaN there).
 *
 * On failure no sequence grows and no sampler's stream moves. */
rk_status eng_decode_sample(eng_backend *be, eng_seq *const *seqs, const int32_t *tokens, size_t n,
                            eng_sampler *const *samplers, int32_t *out, float *logits);

/* ---- KV export / import ---------------------------------------------------------------- */

/* Per slot, the squared distance between two sequences' pre-RoPE K at one layer (plus that of
 * V when with_v): out[i] = sum over the n_kv_heads * head_dim elements of (Ka - Kb)^2 at slot
 * slot0 + i, accumulated in double. Computed where the KV lives (CUDA: on the device, in the KV
 * storage's precision, nothing copied out but n floats); CacheBlend's deviation of fresh vs
 * cached KV at its check layer. Both sequences on one backend, the slots non-empty in both
 * (RK_ERR_INVALID otherwise), RK_ERR_RANGE for a layer or slots out of range. */
rk_status eng_kv_deviation(const eng_seq *a, const eng_seq *b, int layer, size_t slot0, size_t n, bool with_v,
                           float *out);

/* Floats in the canonical KV block of n tokens: n_layers * 2 * n * n_kv_heads * head_dim. */
size_t eng_kv_floats(const eng_model *m, size_t n);

/* Copy slots [slot0, slot0+n) of s out as float32 `[layer][K|V][token][kv_head][head_dim]`,
 * K before RoPE. out holds eng_kv_floats(model, n) floats. Empty slots: RK_ERR_INVALID. */
rk_status eng_kv_export(const eng_seq *s, size_t slot0, size_t n, float *out);

/* Write n tokens' K (pre-RoPE) and V in the canonical layout into slots [slot0, slot0+n) of
 * s at positions pos[0..n) (RoPE is applied at those positions); extends len as needed. */
rk_status eng_kv_import(eng_seq *s, size_t slot0, size_t n, const int32_t *pos, const float *kv);

/* The same for layers [layer0, layer0+n_layers) only (layout `[layer in range][K|V][token]
 * [kv_head][head_dim]`, n_layers * 2 * n * n_kv_heads * head_dim floats): to load a chunk's
 * cache layer by layer while earlier layers compute, or to restore cached KV of one layer.
 * Import sets the slots' positions for every layer, as eng_kv_import does; a slot whose other
 * layers have not been written holds stale KV there, which the caller fills before using. */
rk_status eng_kv_export_layers(const eng_seq *s, int layer0, int n_layers, size_t slot0, size_t n, float *out);
rk_status eng_kv_import_layers(eng_seq *s, int layer0, int n_layers, size_t slot0, size_t n, const int32_t *pos,
                               const float *kv);

/* ---- KV blocks: chunk caches resident in the backend's memory -------------------------- */

/* A chunk's KV kept on a backend, in the backend's own KV format (float32 host memory on the
 * CPU backend; device memory on CUDA), so that importing it into a sequence needs neither a
 * decode nor a host-to-device copy. What the chunk cache's device tier holds.
 *
 *     eng_kvblock *b;
 *     eng_kvblock_new(be, n, kv, &b);                 // kv: eng_kv_floats(m, n) floats, copied
 *     eng_kv_import_block(s, slot0, pos, b);          // == eng_kv_import(s, slot0, n, pos, kv)
 *     eng_kvblock_free(b);
 *
 * A block belongs to its backend: create, import, read and free it on the thread that drives
 * the backend (like every backend call), and free it before the backend. A block is never
 * changed after creation, so one block may be imported into many sequences. */
typedef struct eng_kvblock eng_kvblock;

/* Copy n tokens' KV, float32 in the canonical layout `[layer][K|V][token][kv_head][head_dim]`
 * with K before RoPE (eng_kv_floats(model, n) floats: what eng_kv_import takes), into a new
 * block on be. *out owned by the caller (eng_kvblock_free). RK_ERR_INVALID for no backend, no
 * KV or n == 0; RK_ERR_RANGE for n beyond the model's context; RK_ERR_NOMEM / RK_ERR_DEVICE
 * when the backend's memory is short. */
rk_status eng_kvblock_new(eng_backend *be, size_t n, const float *kv, eng_kvblock **out);

/* Where a block's KV lives, to fill it in place (eng_kvblock_alloc). */
typedef struct eng_kvblock_mem {
    void *data;     /* the canonical layout, n_layers * 2 * n * n_kv_heads * head_dim elements */
    int elem_bytes; /* 4: float32; 2: bf16 */
    bool device;    /* device memory of the backend's CUDA device (else host memory) */
} eng_kvblock_mem;

/* A block of n tokens whose KV the caller writes in place before any import or read — e.g. a
 * codec decoding straight into GPU memory (blend's bl_kvblock_decode); *mem says where and in
 * which element type (the CPU backend: host float32; CUDA: device bf16 or float32 as its KV
 * storage). Until written, the contents are undefined. Errors as eng_kvblock_new. */
rk_status eng_kvblock_alloc(eng_backend *be, size_t n, eng_kvblock **out, eng_kvblock_mem *mem);

/* Release a block and the backend memory it holds. NULL is a no-op. */
void eng_kvblock_free(eng_kvblock *b);

size_t eng_kvblock_tokens(const eng_kvblock *b);      /* n */
size_t eng_kvblock_bytes(const eng_kvblock *b);       /* backend memory it holds */
eng_backend *eng_kvblock_backend(const eng_kvblock *b); /* borrowed */

/* Layers [layer0, layer0+n_layers) of the block as float32 `[layer in range][K|V][token]
 * [kv_head][head_dim]` (n_layers * 2 * n * n_kv_heads * head_dim floats) in host memory out:
 * the floats the block was made from, rounded to the backend's KV storage precision (exact on
 * the CPU backend and in CUDA fp32 mode). RK_ERR_RANGE for layers outside the model. */
rk_status eng_kvblock_read(const eng_kvblock *b, int layer0, int n_layers, float *out);

/* eng_kv_import of the block's KV: its n tokens into slots [slot0, slot0+n) of s at positions
 * pos[0..n) (RoPE at those positions, every layer; len extended as needed), validated the same
 * way. The state of s afterwards equals eng_kv_import of the floats the block was made from
 * (exactly on the CPU backend; within the KV storage precision on CUDA). RK_ERR_INVALID when
 * the block is on another backend than s. */
rk_status eng_kv_import_block(eng_seq *s, size_t slot0, const int32_t *pos, const eng_kvblock *b);

/* The same for layers [layer0, layer0+n_layers) of the block only (positions are set for every
 * layer, as eng_kv_import_layers does): to bring in a block whose layers are written in place
 * one after another (blend's layer-pipelined loading). RK_ERR_RANGE for layers outside the
 * model. On CUDA the import is ordered on eng_backend_cuda_stream(): work that stream waits for
 * (e.g. a codec_cuda_reader's layer) is complete before the import reads the block. */
rk_status eng_kv_import_block_layers(eng_seq *s, size_t slot0, const int32_t *pos, const eng_kvblock *b, int layer0,
                                     int n_layers);

/* eng_kv_import_block_layers of nb blocks in one call: block b[i] into slots [slot0[i],
 * slot0[i] + n_i) at positions pos[i][0..n_i) (n_i its tokens). Where the backend keeps blocks
 * (CUDA) the positions go up once and the host waits once for all of them, instead of once
 * per block: a prompt of many cached chunks, or one layer of every chunk of a layer-pipelined
 * load. Every block's backend and the layer range are checked before anything changes; the
 * slots are then claimed block after block, so a failure on block i (slots out of range, a
 * position clash) leaves blocks before it claimed but not imported, as a failed
 * eng_kv_import_block_layers would. nb = 0 is a no-op. */
rk_status eng_kv_import_blocks_layers(eng_seq *s, size_t nb, const size_t *slot0, const int32_t *const *pos,
                                      const eng_kvblock *const *b, int layer0, int n_layers);

/* ---- the generate tool ------------------------------------------------------------------ */

/* Computes a prompt's KV into the empty sequence s and the last row's logits, in place of one
 * plain prefill: how `ragkv generate` lets blend/ assemble prompts from chunk caches. */
typedef rk_status (*eng_prompt_fn)(void *ctx, eng_model *m, eng_backend *be, eng_seq *s,
                                   const int32_t *tokens, size_t n, float *logits);

/* `ragkv generate` with the prompt computed by fn (NULL: eng_prefill). argv as for the tool. */
int eng_cli_generate_with(int argc, char **argv, eng_prompt_fn fn, void *ctx);

/* ---- sampling --------------------------------------------------------------------------- */

/* A seeded sampler. temperature 0: greedy (argmax, lowest id on ties); otherwise softmax of
 * logits/temperature, restricted to the top_k most likely (0: no limit), then to the smallest
 * set whose mass reaches top_p (>= 1: no limit), sampled with its own PCG32 stream: the same
 * seed and logits give the same tokens on every machine. */
struct eng_sampler {
    float temperature; /* 0: greedy */
    int top_k;         /* 0: off */
    float top_p;       /* >= 1: off */
    uint64_t state;    /* PCG32 state */
    uint64_t inc;      /* PCG32 stream (odd) */
    float *scratch;    /* (vocab) probabilities; owned, grown on demand */
    int *order;        /* (vocab) candidate ids; owned */
    size_t cap;        /* floats/ints allocated in scratch/order */
};

void eng_sampler_init(eng_sampler *s, float temperature, int top_k, float top_p, uint64_t seed);
void eng_sampler_free(eng_sampler *s); /* frees scratch; the struct itself is the caller's */
/* Choose a token from vocab logits (left unchanged). Returns -1 when out of memory or when
 * the logits are all NaN. */
int32_t eng_sample(eng_sampler *s, const float *logits, int vocab);
/* Index of the largest logit (lowest index on ties; NaN never wins). */
int32_t eng_argmax(const float *logits, int vocab);
/* A uniform float in [0, 1) from the sampler's stream. */
float eng_sampler_uniform(eng_sampler *s);

#ifdef __cplusplus
}
#endif
#endif
