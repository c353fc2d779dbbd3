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
 *                  measured at each layer.
 *
 *     float *kv = malloc(eng_kv_floats(m, n) * sizeof(float));
 *     bl_chunk_prefill(m, be, chunk, n, kv);               // once per chunk, then cached
 *     bl_segment segs[] = {{chunk, n, kv}, {other, n2, NULL}};
 *     bl_params p;  bl_params_default(&p, BL_CACHEBLEND);  // r = 0.15, check layer 1
 *     eng_seq *s;  eng_seq_new(be, 0, &s);
 *     bl_stats st;
 *     bl_assemble(m, be, s, segs, 2, query, nq, &p, logits, &st);
 *     ... eng_decode(be, &s, &next, 1, logits) ...
 */
#ifndef RAGKV_BLEND_H
#define RAGKV_BLEND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ragkv/blend_math.h"
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
} bl_mode;

/* "full", "prefix", "naive", "cacheblend"; parse returns -1 for an unknown name. */
const char *bl_mode_name(bl_mode m);
int bl_mode_parse(const char *name);

/* One prompt segment: its tokens (no BOS) and, when cached, its chunk KV (borrowed; layout
 * above, eng_kv_floats(model, n) floats). kv NULL: computed from the tokens. */
typedef struct bl_segment {
    const int32_t *tokens; /* (n) */
    size_t n;
    const float *kv;       /* (eng_kv_floats(m, n)) or NULL */
} bl_segment;

typedef struct bl_params {
    bl_mode mode;
    float ratio;          /* CacheBlend: share of reused tokens recomputed (0..1) */
    int check_layer;      /* CacheBlend: layer where deviations are measured (>= 1) */
    bl_schedule schedule; /* gradual filtering; first == 0 means flat at `ratio` */
    bool deviation_v;     /* also count V's deviation, not only K's */
} bl_params;

/* Defaults: ratio 0.15, check layer 1, flat schedule, K-only deviation. */
void bl_params_default(bl_params *p, bl_mode mode);

typedef struct bl_stats {
    size_t prompt_tokens;   /* BOS + segments + query */
    size_t reused_tokens;   /* tokens whose KV came from chunk caches (before repair) */
    size_t recomputed;      /* tokens whose KV at the last layer is fresh */
    double token_layers;    /* token-layers computed / (prompt_tokens * n_layers) */
    double ms;              /* wall time of bl_assemble */
} bl_stats;

/* Standalone chunk prefill: BOS + tokens at positions 0..n on a scratch sequence; writes the
 * chunk tokens' KV (not BOS's) to kv_out (eng_kv_floats(m, n) floats). */
rk_status bl_chunk_prefill(eng_model *m, eng_backend *be, const int32_t *tokens, size_t n,
                           float *kv_out);

/* Fill the empty sequence s (capacity >= prompt length) with the prompt's KV and write the
 * last row's logits (vocab floats). stats may be NULL. RK_ERR_INVALID for an empty prompt,
 * a non-empty s, or bad parameters; RK_ERR_RANGE when the prompt exceeds the context. */
rk_status bl_assemble(eng_model *m, eng_backend *be, eng_seq *s, const bl_segment *segs,
                      size_t nseg, const int32_t *query, size_t nquery, const bl_params *p,
                      float *logits, bl_stats *stats);

#ifdef __cplusplus
}
#endif
#endif
