/*
 * ragkv/blend.h — assembling a RAG prompt's KV cache from per-chunk caches.
 *
 * A chunk cache is the chunk's KV from a standalone prefill of BOS + chunk (BOS at position 0,
 * the chunk at 1..n), keeping only the chunk tokens, float32 in the canonical layout
 * `[layer][K|V][token][kv_head][head_dim]` with K before RoPE (bl_chunk_prefill makes one).
 * A prompt is BOS, then segments — cached chunks or plain tokens — then the query. bl_assemble
 * fills an empty sequence with the whole prompt's KV and returns the last row's logits, ready
 * for eng_decode, in one of these modes:
 *
 *   BL_FULL        ordinary prefill of every token (the quality reference);
 *   BL_PREFIX      reuse the first segment's cache when it is cached (exact: it is a true
 *                  prefix), prefill the rest — what prefix caching (vLLM, SGLang) can do;
 *   BL_NAIVE       place every cached chunk at its positions, compute only uncached tokens;
 *   BL_CACHEBLEND  layers before the check layer run for every token; at the check layer the
 *                  fresh K of every reused token is compared with its cached K, the `ratio`
 *                  with the largest deviation are selected together with every uncached token
 *                  and the last token, and from the check layer on only the selected rows run,
 *                  writing fresh K/V over the cached ones; attention always follows the exact
 *                  causal rule (a row at position p sees keys at positions <= p). With a
 *                  gradual schedule the selection shrinks layer by layer, by the deviation
 *                  measured at each layer. bl_params.select = BL_SELECT_ATTENTION weights the
 *                  check layer's deviations by the attention the query pays each token.
 *   BL_CACHECRAFT  per chunk, a recompute budget CFO from the Cache-Craft metadata of the
 *                  chunk's cached variant (captured by bl_variant_capture, in whatever context
 *                  the chunk was first seen) and the chunks that precede it now; the variant
 *                  with the lowest CFO is used, its ceil(CFO * n) tokens with the highest
 *                  stored inter-chunk attention are recomputed through every layer together
 *                  with every uncached token and the last token (exact causal rule);
 *   BL_APE         Adaptive Parallel Encoding: every chunk sits at positions 1..n_i right
 *                  after BOS (the context is as long as the longest chunk), the query follows,
 *                  and query rows attend to the chunks' slots with temperature ape_t and their
 *                  softmax weights scaled by ape_s; no chunk token is recomputed.
 *
 *     float *kv = malloc(eng_kv_floats(m, n) * sizeof(float));
 *     bl_chunk_prefill(m, be, chunk, n, kv);               // once per chunk, then cached
 *     bl_segment segs[] = {{chunk, n, kv}, {other, n2, NULL}};
 *     bl_params p;  bl_params_default(&p, BL_CACHEBLEND);  // r = 0.15, check layer 1
 *     eng_seq *s;  eng_seq_new(be, 0, &s);
 *     bl_stats st;
 *     bl_assemble(m, be, s, segs, 2, query, nq, &p, logits, &st);
 *     ... eng_decode(be, &s, &next, 1, logits) ...
 *
 * Cache-Craft: capture a variant of a chunk where it is first seen (after chunks a, b), keep
 * its KV and bl_craft_encode'd metadata, and pass variants plus today's predecessors:
 *
 *     bl_craft_meta md;                                     // owned: bl_craft_meta_clear
 *     bl_variant_capture(m, be, (bl_segment[]){a, b, c}, 3, (uint64_t[]){ida, idb}, kv_c, &md);
 *     bl_variant var = {kv_c, &md};
 *     bl_craft_segment cs[2] = {{0}, {.variants = &var, .n_variants = 1,
 *                                     .prev_ids = (uint64_t[]){idb}, .n_prev = 1}};
 *     bl_params_default(&p, BL_CACHECRAFT);  p.craft = cs;  // alpha BL_CRAFT_ALPHA
 *     bl_assemble(m, be, s, (bl_segment[]){b, c}, 2, query, nq, &p, logits, &st);
 */
#ifndef RAGKV_BLEND_H
#define RAGKV_BLEND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ragkv/blend_math.h"
#include "ragkv/bytes.h"
#include "ragkv/codec.h"
#include "ragkv/engine.h"
#include "ragkv/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum bl_mode {
    BL_FULL = 0,
    BL_PREFIX = 1,
    BL_NAIVE = 2,
    BL_CACHEBLEND = 3,
    BL_CACHECRAFT = 4,
    BL_APE = 5,
} bl_mode;

/* "full", "prefix", "naive", "cacheblend", "cachecraft", "ape"; parse returns -1 for an
 * unknown name. */
const char *bl_mode_name(bl_mode m);
int bl_mode_parse(const char *name);

/* Cache-Craft metadata of one chunk-cache variant: where the chunk's attention went when its
 * KV was computed in some context (BOS, then the chunks prev_ids, then the chunk). Masses are
 * attention probabilities averaged over heads and summed over the chunk's n_tokens query
 * rows, so inter[l] / (n_tokens * prev_tokens) is the mean weight on one (query, earlier key)
 * pair. BOS (the attention sink) counts as neither inter nor intra. Arrays are owned by the
 * struct when filled by bl_variant_capture or bl_craft_decode (release: bl_craft_meta_clear). */
typedef struct bl_craft_meta {
    uint32_t n_tokens;    /* chunk tokens */
    uint32_t n_layers;    /* model layers */
    uint32_t n_prev;      /* chunks that preceded it when captured (0: standalone) */
    uint32_t prev_tokens; /* their total token count */
    uint64_t *prev_ids;   /* (n_prev) their ids, in prompt order (caller-chosen 64-bit ids) */
    float *inter;         /* (n_layers) mass on the preceding chunks */
    float *intra;         /* (n_layers) mass on the chunk itself */
    float *token_inter;   /* (n_tokens) each token's mass on the preceding chunks, mean over layers */
} bl_craft_meta;

/* One cached version of a chunk: its KV (borrowed, eng_kv_floats(m, n) floats, K pre-RoPE)
 * and its metadata (borrowed; NULL: none, treated as a standalone cache). */
typedef struct bl_variant {
    const float *kv;           /* (eng_kv_floats(m, n)) [layer][K|V][token][kv_head][head_dim] */
    const bl_craft_meta *meta; /* or NULL */
} bl_variant;

/* One prompt segment: its tokens (no BOS) and, when cached, its chunk KV (borrowed): as floats
 * in the layout above (eng_kv_floats(model, n) floats), as a KV block already on the
 * backend (eng_kvblock of n tokens on bl_assemble's backend: imported without an upload, and
 * only the layers CacheBlend measures are read back), or as a codec container of those floats
 * (decoded with bl_params.decode; naive, CacheBlend and Cache-Craft decode it one layer at a
 * time on a thread of their own, a layer ahead of the layer being computed). At most one of
 * the three; none: computed from the tokens. Every mode gives the same result for a block or
 * a container as for the floats it was made from. (Cache-Craft's per-segment inputs travel beside the segments, in
 * bl_params.craft.) */
typedef struct bl_segment {
    const int32_t *tokens;     /* (n) */
    size_t n;                  /* tokens (> 0) */
    const float *kv;           /* (eng_kv_floats(m, n)) or NULL */
    const eng_kvblock *block;  /* n tokens' KV on the backend, or NULL */
    const void *container;     /* a codec container of n tokens' KV in the model's geometry, or NULL */
    size_t container_len;      /* its bytes */
} bl_segment;

/* Cache-Craft inputs of one segment (all optional; zero = none). */
typedef struct bl_craft_segment {
    const bl_variant *variants; /* (n_variants) cached variants of the chunk; when n_variants > 0
                                   they are the candidates and the segment's kv is ignored;
                                   else its kv or block, if any, is a variant without
                                   metadata */
    size_t n_variants;
    const uint64_t *prev_ids;   /* (n_prev) ids of the chunks that precede the segment now */
    size_t n_prev;
} bl_craft_segment;

/* CacheBlend: how the check layer ranks the reused tokens (docs/blend.md, "Selection by the
 * query's attention"). */
typedef enum bl_select {
    BL_SELECT_DEVIATION = 0, /* the largest deviation of fresh from cached K (and V): CacheBlend's
                                rule */
    BL_SELECT_ATTENTION = 1, /* the largest deviation times the attention the query's rows pay the
                                token at the check layer: the query's rows (the prompt's trailing
                                uncached rows, at most BL_SELECT_QUERY_ROWS of them; the last row
                                when the prompt ends in a chunk) run the check layer once more on
                                the probe's fresh keys, which are exact there, so the weights are
                                a full prefill's at that layer; costs those rows one layer (the
                                default: 1.4-2x lower KL than by deviation on the test models,
                                about 1 ms more at 8K tokens on an H100, docs/blend.md) */
    BL_SELECT_LOOKAHEAD = 2, /* the largest deviation times the attention the query's rows pay the
                                token summed over the check layer and every later one, from a
                                naive pass: the prompt's uncached rows run those layers once
                                against the cached chunks' K/V as they are (from their exact
                                states entering the check layer); costs those rows L - c layers
                                and, when loading layer by layer, waits for every layer before
                                the partial layers start (docs/blend.md, "Lookahead") */
} bl_select;
#define BL_SELECT_DEFAULT BL_SELECT_ATTENTION
#define BL_SELECT_QUERY_ROWS 64

/* "deviation" / "attention" / "lookahead" -> bl_select; RK_ERR_INVALID otherwise. */
rk_status bl_select_parse(const char *name, bl_select *out);
const char *bl_select_name(bl_select s); /* "deviation", "attention", "lookahead" or "unknown" */

typedef struct bl_params {
    bl_mode mode;
    float ratio;          /* CacheBlend: share of reused tokens recomputed (0..1) */
    int check_layer;      /* CacheBlend: layer where deviations are measured (>= 1) */
    bl_schedule schedule; /* gradual filtering; first == 0 means flat at `ratio` */
    bool deviation_v;     /* also count V's deviation, not only K's */
    bl_select select;     /* CacheBlend: the check layer's ranking (default BL_SELECT_DEFAULT;
                             a gradual schedule's later shrinking stays by deviation) */
    float alpha;          /* Cache-Craft: CFO = clamp(alpha * CCI * (1 - beta'), 0, 1); >= 0 */
    const bl_craft_segment *craft; /* Cache-Craft: (nseg) per-segment variants and current
                                      predecessors, borrowed; NULL: every cached segment is one
                                      metadata-less variant with nothing before it (CFO 0) */
    float ape_t;          /* APE: attention temperature on the chunks (> 0) */
    float ape_s;          /* APE: scale of the chunks' attention weights (> 0) */
    const codec_decode_opts *decode; /* for container segments (pool, codebooks); NULL: defaults */
} bl_params;

/* Defaults: ratio 0.15, check layer 1, flat schedule, K-only deviation ranked by the query's
 * attention (BL_SELECT_DEFAULT); Cache-Craft alpha
 * BL_CRAFT_ALPHA (fitted on the real models, docs/blend.md); APE T = S = 0.9. */
#define BL_CRAFT_ALPHA 1.4f
void bl_params_default(bl_params *p, bl_mode mode);

/* Where bl_assemble's time went (bl_stats.phase_ms; wall clock, the backends' calls return
 * when their work is done). */
typedef enum bl_phase {
    BL_PHASE_IMPORT = 0,  /* cached segments' KV into the sequence (uploads, block imports) */
    BL_PHASE_FULL = 1,    /* layers run for every computed row: before the check layer; all
                             layers of naive/Cache-Craft; full and prefix prefill */
    BL_PHASE_PROBE = 2,   /* CacheBlend: the check layer's fresh K/V of every row (scratch) */
    BL_PHASE_SELECT = 3,  /* CacheBlend: cached rows read back, deviations, selection, gathers */
    BL_PHASE_PARTIAL = 4, /* CacheBlend: the selected rows' layers from the check layer on */
    BL_PHASE_LOGITS = 5,  /* the last row's logits */
    BL_PHASES = 6
} bl_phase;

const char *bl_phase_name(bl_phase ph); /* "import", "full", "probe", "select", "partial", "logits" */

typedef struct bl_stats {
    size_t prompt_tokens;   /* BOS + segments + query */
    size_t reused_tokens;   /* tokens whose KV came from chunk caches (before repair) */
    size_t recomputed;      /* tokens whose KV at the last layer is fresh */
    double token_layers;    /* token-layers computed / (prompt_tokens * n_layers) */
    double ms;              /* wall time of bl_assemble */
    size_t ape_ctx_end;     /* BL_APE: the chunks occupy slots [1, ape_ctx_end); else 0 */
    double phase_ms[BL_PHASES]; /* the wall time split by phase (APE: all under full) */
    double load_wait_ms;    /* of that, time spent waiting for container layers to be decoded */
    /* the layer loader's own times (compressed containers handed over whole; 0 without):
     * wall times, the set-up and the release on the calling thread (in `ms`; the set-up
     * inside the import phase), the opening and the enqueueing on the loader's thread, which
     * overlap the layers computed */
    double load_setup_ms;   /* making the decode targets (GPU: a KV block per container) */
    double load_open_ms;    /* opening every container (checks, tables; GPU: readers, uploads,
                               and by default every layer's copy and kernel enqueued) */
    double load_enqueue_ms; /* decoding (CPU) or enqueueing (GPU, RAGKV_BLEND_UPLOAD=layer;
                               else 0) every layer, after the opens */
    double load_free_ms;    /* closing the readers and releasing the targets */
} bl_stats;

/* Standalone chunk prefill: BOS + tokens at positions 0..n on a scratch sequence; writes the
 * chunk tokens' KV (not BOS's) to kv_out (eng_kv_floats(m, n) floats). */
rk_status bl_chunk_prefill(eng_model *m, eng_backend *be, const int32_t *tokens, size_t n,
                           float *kv_out);

/* RK_ERR_INVALID (with both geometries in the message) unless the container described by ci has
 * the model's layers, KV heads and head dim and n_tokens tokens (0: any number but 0). */
rk_status bl_container_check(const eng_model_info *mi, const codec_info *ci, size_t n_tokens);

/* Decode a codec container of one chunk's KV (canonical layout, the model's geometry) into a
 * new KV block on be, ready for bl_segment.block: on a CUDA backend that stores KV as bf16 the
 * codec's GPU decoder writes straight into the block's device memory (no float32 copy, no
 * upload); otherwise the CPU decoder (opts->pool) writes into the block's host memory, or into
 * floats then copied in. *out owned by the caller (eng_kvblock_free). RK_ERR_INVALID when the
 * container's geometry is not the model's; the codec's errors for damaged containers. */
rk_status bl_kvblock_decode(eng_backend *be, const void *container, size_t len, const codec_decode_opts *opts,
                            eng_kvblock **out);

/* Fill the empty sequence s (capacity >= prompt length) with the prompt's KV and write the
 * last row's logits (vocab floats). stats may be NULL. RK_ERR_INVALID for an empty prompt,
 * a non-empty s, or bad parameters; RK_ERR_RANGE when the prompt exceeds the context. */
rk_status bl_assemble(eng_model *m, eng_backend *be, eng_seq *s, const bl_segment *segs,
                      size_t nseg, const int32_t *query, size_t nquery, const bl_params *p,
                      float *logits, bl_stats *stats);

/* ---- Cache-Craft variants ------------------------------------------------------------ */

/* Capture a variant of the last segment, segs[nseg - 1], in the context BOS + segs[0..nseg-1)
 * (every segment is computed from its tokens, their kv is ignored): a full prefill run layer
 * by layer with one attention group per segment. Writes the chunk's in-context KV (pre-RoPE,
 * eng_kv_floats(m, n) floats) to kv_out and fills *meta (owned by the caller afterwards:
 * bl_craft_meta_clear); prev_ids[nseg - 1] are the ids of the context segments (NULL when
 * nseg == 1: a standalone variant, whose KV equals bl_chunk_prefill's). */
rk_status bl_variant_capture(eng_model *m, eng_backend *be, const bl_segment *segs, size_t nseg,
                             const uint64_t *prev_ids, float *kv_out, bl_craft_meta *meta);

/* Capture, in one prefill of BOS + segs[0..nseg) run as bl_variant_capture runs it, a variant
 * of every segment i whose kv_out[i] is not NULL: its in-context KV (pre-RoPE,
 * eng_kv_floats(m, segs[i].n) floats) into kv_out[i] and its metadata into metas[i] (owned by
 * the caller afterwards: bl_craft_meta_clear), ids[0..i) being the ids of its context. The
 * same as bl_variant_capture(m, be, segs, i + 1, ids, kv_out[i], &metas[i]) for each such i
 * (attention is causal: later segments change nothing; tested), at the cost of one prefill;
 * the prefill stops after the last segment asked for. metas[nseg] are zeroed first (those not
 * captured stay zero); ids (nseg - 1 used) may be NULL when nseg == 1. On error every
 * metadata is cleared. */
rk_status bl_variant_capture_all(eng_model *m, eng_backend *be, const bl_segment *segs, size_t nseg,
                                 const uint64_t *ids, float *const *kv_out, bl_craft_meta *metas);

/* bl_variant_capture_all in steps, so that the backend serves other work between them (a
 * daemon's executor runs one step between its decode steps, instead of stalling every request
 * for a whole prefill): bl_capture_start checks the arguments as bl_variant_capture_all does,
 * zeroes metas, allocates and embeds the prompt (*out NULL and RK_OK when no segment is asked
 * for); each bl_capture_step runs one layer — the last one also exports the variants' KV and
 * finishes their metadata — and sets *done once the capture is complete, after which kv_out
 * and metas hold exactly what bl_variant_capture_all gives. A failed step clears every
 * metadata and every later step returns its status. The segs array and ids are copied at
 * start; the segments' tokens, kv_out and metas stay borrowed until bl_capture_free (any time;
 * NULL is a no-op; a capture freed before it is done leaves metas partly filled, the caller's
 * to clear). Between steps the backend may run anything else. */
typedef struct bl_capture bl_capture;
rk_status bl_capture_start(eng_model *m, eng_backend *be, const bl_segment *segs, size_t nseg, const uint64_t *ids,
                           float *const *kv_out, bl_craft_meta *metas, bl_capture **out);
rk_status bl_capture_step(bl_capture *c, bool *done);
void bl_capture_free(bl_capture *c);

/* Free a metadata's arrays and zero it. NULL is a no-op. */
void bl_craft_meta_clear(bl_craft_meta *meta);

/* Serialise metadata (format in docs/blend.md: "RKCF", version 1, little-endian) by appending
 * to b (check b->failed). RK_ERR_INVALID when the struct is inconsistent. */
rk_status bl_craft_encode(const bl_craft_meta *meta, rk_buf *b);

/* Parse exactly len bytes into *meta (owned by the caller afterwards: bl_craft_meta_clear).
 * RK_ERR_FORMAT (bad magic, limits, non-finite or negative values, trailing bytes),
 * RK_ERR_UNSUPPORTED (version), RK_ERR_TRUNCATED; on error *meta is zeroed. */
rk_status bl_craft_decode(const void *data, size_t len, bl_craft_meta *meta);

/* CFO of reusing a cache with metadata meta (NULL: standalone, no metadata) for a chunk of
 * chunk_tokens tokens that the chunks cur_prev[n_cur] now precede: bl_cfo(alpha, bl_cci(...),
 * bl_prefix_overlap(...), bl_order_penalty(...)). */
double bl_variant_cfo(const bl_craft_meta *meta, size_t chunk_tokens, const uint64_t *cur_prev,
                      size_t n_cur, double alpha);

/* The variant of a cached segment that BL_CACHECRAFT uses: the lowest CFO (the first on
 * ties); *variant is an index into cs->variants, or 0 for seg->kv when there are none (cs may
 * be NULL). RK_ERR_INVALID when the segment is not cached or a metadata's shape does not
 * match (n_tokens != seg->n or n_layers != the model's). */
rk_status bl_segment_pick_variant(const eng_model *m, const bl_segment *seg, const bl_craft_segment *cs,
                                  double alpha, size_t *variant, double *cfo);

/* ---- APE decode ----------------------------------------------------------------------- */

/* One decode step after a BL_APE assembly that keeps APE's attention: token is appended at
 * the next position (slot len) and attends to the chunk slots [1, ctx_end) (bl_stats.
 * ape_ctx_end) with p->ape_t / p->ape_s, to everything else normally. eng_decode works too
 * but attends to the chunks plainly (T = S = 1). logits: vocab floats. */
rk_status bl_ape_decode(eng_backend *be, eng_seq *s, size_t ctx_end, const bl_params *p,
                        int32_t token, float *logits);

#ifdef __cplusplus
}
#endif
#endif
