/*
 * ragkv/blend_math.h — the arithmetic of chunk blending that needs no model: which tokens to
 * recompute (CacheBlend's top-r by deviation, with a gradual-filtering schedule), how many per
 * chunk (Cache-Craft's CCI, prefix overlap, order penalty and CFO), and the fidelity measures
 * that compare a blended prompt with full prefill (KL divergence, top-1 agreement, matched
 * continuation length, relative L2).
 *
 *     uint32_t sel[64];
 *     size_t k = bl_select_count(n, 0.15f);
 *     bl_select_top(deviation, n, k, sel);        // indices of the k largest, ascending
 *
 *     double kl = bl_kl_divergence(full_logits, blend_logits, vocab);
 *
 * All functions are pure and thread-safe; none allocates unless it says so.
 */
#ifndef RAGKV_BLEND_MATH_H
#define RAGKV_BLEND_MATH_H

#include <stddef.h>
#include <stdint.h>

#include "ragkv/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- token selection (CacheBlend) -------------------------------------------------- */

/* Number of tokens a ratio selects out of n: ceil(ratio * n), clamped to [0, n]; a ratio
 * that is not a number selects nothing. */
size_t bl_select_count(size_t n, float ratio);

/* Write to out[k] the indices of the k largest scores, in ascending index order. Ties go to
 * the lower index; NaN scores rank lowest. k > n is RK_ERR_INVALID. Allocates O(n) scratch. */
rk_status bl_select_top(const float *score, size_t n, size_t k, uint32_t *out);

/* Gradual filtering: the first check layer keeps `first` of the reused tokens, and each later
 * layer keeps `step` times the previous ratio, never below `final`. A flat schedule has
 * first == final. CacheBlend's paper averages to the target ratio r over the layers. */
typedef struct bl_schedule {
    float first;  /* ratio kept at the first check layer, 0..1 */
    float step;   /* multiplier per later layer, 0..1 */
    float final;  /* floor, the steady ratio */
} bl_schedule;

/* Ratio kept `layers_after` layers after the first check layer (0 = the check layer). */
float bl_schedule_ratio(const bl_schedule *s, int layers_after);

/* A flat schedule at ratio r. */
bl_schedule bl_schedule_flat(float r);

/* ---- per-chunk budgets (Cache-Craft) ------------------------------------------------ */

/* Cache Context Impact of chunk i from its stored attention metadata: per layer, inter[l] is
 * the attention mass its tokens put on the chunks before it (total size prev_tokens) and
 * intra[l] the mass they put on itself; a = mean_l inter / (chunk_tokens * prev_tokens),
 * b = mean_l intra / chunk_tokens^2, CCI = sigmoid(a / b). A chunk stored with nothing before
 * it (prev_tokens 0) or with no intra mass has CCI 0.5 (no evidence either way). */
double bl_cci(const float *inter, const float *intra, int nlayers, size_t chunk_tokens,
              size_t prev_tokens);

/* Prefix overlap beta: the fraction of the chunks preceding chunk i now (current[nc], chunk ids)
 * that also preceded it when its cache was made (stored[ns]): the share of today's context the
 * cache has already seen. 1 when nothing precedes it now (nothing is missing). */
double bl_prefix_overlap(const uint64_t *stored, size_t ns, const uint64_t *current, size_t nc);

/* Order penalty gamma: the normalised Kendall tau distance between the order of the chunks
 * common to stored and current: discordant pairs / all pairs, 0 when fewer than 2 common. */
double bl_order_penalty(const uint64_t *stored, size_t ns, const uint64_t *current, size_t nc);

/* Cache Fix Overhead: clamp(alpha * cci * (1 - beta * (1 - gamma)), 0, 1): the fraction of the
 * chunk's tokens to recompute. */
double bl_cfo(double alpha, double cci, double beta, double gamma);

/* ---- fidelity ------------------------------------------------------------------------ */

/* KL(softmax(ref) || softmax(x)) over n logits, in nats, computed stably in double. */
double bl_kl_divergence(const float *ref, const float *x, size_t n);

/* Index of the largest value (the lowest index on ties); 0 when n == 0. */
size_t bl_argmax(const float *x, size_t n);

/* Length of the common prefix of a[n] and b[n]. */
size_t bl_matched_prefix(const int32_t *a, const int32_t *b, size_t n);

/* ||x - ref|| / ||ref|| (0 when both are zero; +inf when only ref is). */
double bl_rel_l2(const float *ref, const float *x, size_t n);

#ifdef __cplusplus
}
#endif
#endif
