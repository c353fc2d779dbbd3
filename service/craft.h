/*
 * craft.h — private to service/: Cache-Craft variants captured inside served prompts.
 *
 * A chunk cached by PUT_CHUNK (or by a prompt's miss) is a standalone variant: its KV saw only
 * BOS. After a cachecraft GENERATE or PREFILL_KV, the executor captures, when it has nothing
 * else to do (or the capture has waited craft-capture-max-wait-ms: svc_craft_due), the in-context KV and the Cache-Craft metadata (bl_craft_meta) of the prompt's
 * chunks — one prefill of BOS + the chunks (bl_variant_capture_all) — and stores each as an
 * ordinary chunk entry of the tenant's namespace:
 *
 *     key    = cc_key_compute("<model id>|craft-after:<hex of P's key>", ns, C's tokens)
 *     blob   = C's tokens + its in-context KV, encoded as PUT_CHUNK encodes (codec, level)
 *     craft  = the RKCF metadata bytes (bl_craft_encode)
 *
 * where C is the chunk and P the chunk right before it in that prompt. The key is found
 * without any list: a later cachecraft prompt in which P precedes C computes it, and the
 * executor passes the variant beside C's standalone cache when its CFO is lower. Quotas,
 * eviction and tenancy apply as to any chunk (a variant is a chunk of the namespace); a
 * variant whose record or blob is missing, corrupt or of the wrong shape is not used
 * (counted), never an error. Clients cannot write such keys (PUT_KV and PUT_CHUNK key by
 * the plain model id). Not in a cluster: variants are this node's own.
 *
 * Metrics: craft_variants_found_total, craft_variants_used_total (chosen: lower CFO than the
 * standalone cache), craft_variants_captured_total, craft_variants_skipped_total{reason=
 * "quota|denied|corrupt|limit|busy|error|rare"}, craft_captures_total (capture jobs finished,
 * whatever their outcome: what tests wait on).
 */
#ifndef RAGKV_SVC_CRAFT_H
#define RAGKV_SVC_CRAFT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "chunk.h"
#include "exec.h"
#include "ragkv/blend.h"
#include "ragkv/chunkcache.h"
#include "ragkv/status.h"

/* The model-id string of variants captured right after the chunk prev: "<model_id>|craft-after:
 * <64 hex digits>" into out (CC_NAME_MAX + 1 bytes). RK_ERR_LIMIT when it would exceed
 * CC_NAME_MAX (a model id longer than 178 bytes: no variants for that model). */
rk_status svc_craft_model(const char *model_id, const cc_key *prev, char *out);

/* The key of the variant of chunk (tokens, n) of namespace ns captured right after prev. */
rk_status svc_craft_key(const char *model_id, const char *ns, const cc_key *prev, const int32_t *tokens, uint32_t n,
                        cc_key *out);

/* Whether the executor starts the oldest waiting capture (queued at queued_ns) now: when it
 * is idle, yes; while generations are queued or decoding, once the capture has waited
 * max_wait_ns (0: never) and the last capture started while busy (at last_forced_ns; 0: none)
 * is at least max_wait_ns ago — at most one capture's prefill per max_wait_ns taken from the
 * generations, and a daemon that is never idle still captures. */
static inline bool svc_craft_due(bool idle, uint64_t now_ns, uint64_t queued_ns, uint64_t last_forced_ns,
                                 uint64_t max_wait_ns)
{
    if (idle)
        return true;
    return max_wait_ns && now_ns - queued_ns >= max_wait_ns &&
           (!last_forced_ns || now_ns - last_forced_ns >= max_wait_ns);
}

/* Register the metrics (once; any thread). */
void svc_craft_metrics_init(void);

/* Look up the variant of g's segment i (tokens, n; i >= 1) captured after segment i - 1 (whose
 * key is g->segs[i - 1].key), as g's tenant may read it, into g->vars[i] (allocated here).
 * Blocking (metadata and blob store): a pool thread, or the executor for jobs it resolves
 * itself. */
void svc_craft_lookup(cc_store *store, const char *model_id, svc_gen *g, size_t i, const int32_t *tokens, uint32_t n);

/* Free g->vars. NULL-safe. */
void svc_gen_vars_free(svc_gen *g);

/* What one assembly uses of its segments' variants (executor thread). */
typedef struct svc_craft_use {
    size_t nseg;
    float **kv;            /* (nseg) the chosen variants' KV, eng_kv_floats(m, n) floats, or NULL */
    bl_craft_meta *meta;   /* (nseg) their metadata */
    bl_variant *var;       /* (nseg) {kv, meta}: craft[i].variants points here */
    uint8_t *need;         /* (nseg) 0: no capture; 1: capture; 2: capture, replacing a stored
                              variant that could not be used */
    size_t cached_prefix;  /* segments [0, cached_prefix) all came from the cache of the
                              prompt's namespace (none of the tenant's own text or chunks among
                              them: what a shared namespace may keep) */
} svc_craft_use;

/* Open the variants g->vars found for a cachecraft assembly of segs (resolved) whose current
 * predecessors are ids (craft[i].prev_ids): each one that opens (checksum, tokens against its
 * key, container geometry), whose metadata parses and matches the segment (n_tokens,
 * n_layers), and whose CFO is lower than the standalone cache's becomes craft[i]'s only
 * variant — what bl_assemble would pick given both (lowest CFO, the standalone cache first on
 * ties). Fills u (svc_craft_use_clear), including which segments to capture. Failures only
 * cost the variant (counted). */
void svc_craft_use_prepare(const svc_chunk_ctx *x, svc_gen *g, const bl_segment *segs, bl_craft_segment *craft,
                           const uint64_t *ids, float alpha, svc_craft_use *u);

/* Free u's arrays and zero it. NULL-safe. */
void svc_craft_use_clear(svc_craft_use *u);

/* How many cachecraft prompts each (chunk before, chunk) pair came in: a fixed table of 4096
 * counters indexed by the pair's keys (a colliding pair takes the slot over and starts again
 * from 1), so that a variant is captured only for a pair that recurs (craft_min_uses). The
 * executor's alone (no lock). */
typedef struct svc_craft_seen svc_craft_seen;
svc_craft_seen *svc_craft_seen_new(void);
void svc_craft_seen_free(svc_craft_seen *s);
/* Count one more prompt of the pair (prev, key); returns the count, this one included. */
uint32_t svc_craft_seen_add(svc_craft_seen *s, const cc_key *prev, const cc_key *key);

/* A capture of one prompt's chunks: made on the executor after the prompt's assembly, run
 * (prefill) on the executor when svc_craft_due says, encoded and stored on a pool thread. */
typedef struct svc_craft_job svc_craft_job;

/* The capture g's assembly asks for (u->need), or NULL when there is nothing to capture (none
 * needed, capture off, chunks past craft_max_tokens: skipped as limit, pairs that have not yet
 * come in x->craft_min_uses cachecraft prompts, counted in x->craft_seen: skipped as rare; a
 * stored variant that could not be used is captured again whatever the count). In the tenant's own
 * namespace the tenant stores the variants; in a shared namespace (g->ns another tenant's)
 * its owner does, and only for chunks that every segment before them came from the cache
 * (u->cached_prefix), so that no text of the requesting tenant enters a variant others read;
 * the rest are skipped as denied. Owned by the caller (svc_craft_job_free). */
svc_craft_job *svc_craft_job_new(const svc_chunk_ctx *x, const svc_gen *g, const svc_craft_use *u);

/* Executor: one prefill of the job's prompt prefix, in steps so that requests run between them
 * (bl_capture_step: a layer a step); the chosen chunks' in-context KV (floats) and metadata
 * kept in the job. begin allocates and starts it (*done at once when nothing is to be
 * captured), each step runs the next layer, *done after the last. On error nothing is stored
 * (the job's candidates are counted skipped as error). The job's cost (its ms) is the steps'
 * time, not the wall time between them. */
rk_status svc_craft_job_begin(const svc_chunk_ctx *x, svc_craft_job *j, bool *done);
rk_status svc_craft_job_step(svc_craft_job *j, bool *done);

/* Pool: encode the variants run produced (x's codec and level; metadata with bl_craft_encode)
 * and store them with the tenant's rights (a quota refusal, a tenant gone: skipped, counted),
 * then count the job in craft_captures_total. Blocking: the encoding is kept off the
 * executor, which only prefills. */
void svc_craft_job_store(const svc_chunk_ctx *x, svc_craft_job *j);

/* Drop a job never run (queue full, shutdown): its candidates counted skipped as busy, the
 * job counted done. */
void svc_craft_job_drop(svc_craft_job *j);

/* NULL is a no-op. */
void svc_craft_job_free(svc_craft_job *j);

#endif
