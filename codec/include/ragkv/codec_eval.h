/*
 * ragkv/codec_eval.h — where `ragkv codec eval` and `ragkv bench codec` get KV from, and the
 * evaluation itself.
 *
 * A codec_kv_source yields one KV tensor (canonical layout, float32) and, when it comes from a
 * model, a way to score generation with substituted KV (`fidelity`). Sources: a raw tensor
 * file, the seeded synthetic generator, and a model. codec/ does not depend on the engine:
 * the model source is registered by whoever links one (the `ragkv` tool registers
 * bench/'s engine-backed source at start):
 *
 *     codec_eval_set_model_source(bench_codec_model_source);
 *     codec_kv_source src;
 *     codec_kv_source_model("stories260K.bin", 1, &src);
 */
#ifndef RAGKV_CODEC_EVAL_H
#define RAGKV_CODEC_EVAL_H

#ifdef __cplusplus
extern "C" {
#ifdef __cplusplus
}
#endif
#endif

#include <stdio.h>

#include "ragkv/codec.h"

/* Generation fidelity of decoded KV against the exact KV (filled by an engine source). */
typedef struct codec_fidelity {
    double kl;            /* mean next-token KL(exact || decoded), nats */
    double top1;          /* fraction of positions with the same argmax */
    double greedy_match;  /* mean matched greedy continuation length, tokens */
} codec_fidelity;

typedef struct codec_kv_source {
    const char *name;     /* "synthetic", a file path, a model path */
    codec_shape shape;
    float *kv;            /* [shape] canonical layout, owned by the source */
    uint64_t model_seed;  /* synthetic: seeds of further chunks of the same "model" */
    /* Optional: score decoded KV (same shape) against kv; NULL when the source cannot. */
    rk_status (*fidelity)(void *ctx, const float *decoded, codec_fidelity *out);
    void *ctx;
    void (*free_ctx)(void *ctx); /* optional: releases ctx */
    /* Optional: training chunks for a codebook (other chunks of the same model); returns
     * a fresh tensor of the source's shape (caller frees with rk_free), NULL when none. */
    float *(*train_chunk)(struct codec_kv_source *src, int i);
    /* Optional: the sensitivity of every channel for a weighted rate allocation
     * (codec_params.weights): w[L][2][C] = next-token KL per unit of variance of noise added
     * to that channel, measured on prompts held out from kv and the training chunks. */
    rk_status (*sensitivity)(struct codec_kv_source *src, float *w);
} codec_kv_source;

rk_status codec_kv_source_synthetic(const codec_shape *s, uint64_t seed, codec_kv_source *out);
/* A model source: KV of prompts sampled from the model at model_path, with fidelity scoring. */
typedef rk_status (*codec_model_source_fn)(const char *model_path, uint64_t seed, codec_kv_source *out);

/* Register the model source (process-wide; NULL unregisters). */
void codec_eval_set_model_source(codec_model_source_fn fn);

/* Build a source from a model through the registered function; RK_ERR_UNSUPPORTED when none
 * is registered. */
rk_status codec_kv_source_model(const char *model_path, uint64_t seed, codec_kv_source *out);
rk_status codec_kv_source_file(const char *path, const codec_shape *s, codec_kv_source *out);
void codec_kv_source_free(codec_kv_source *src);

/* One row of an evaluation's table, for callers that combine several. */
typedef struct codec_eval_row {
    char label[64];       /* the row's label ("cachegen L1 codebook wtd transform", ...) */
    size_t bytes;         /* the container, every overhead counted */
    double bits;          /* bits per value */
    double ratio_q8;      /* q8's bytes over this row's (0: no q8 row before it) */
    double rel_l2;        /* relative L2 error of the decoded KV */
    int has_fid;          /* fid measured (a model source) */
    codec_fidelity fid;
} codec_eval_row;

/* What codec_eval_run measures and where it writes. */
typedef struct codec_eval_opts {
    int threads;            /* 1: one core; 0: all */
    const float *weights;   /* optional, [L][2][C], borrowed: also the weighted allocation
                               with a codebook at every level (codec_params.weights) and
                               transform coding */
    float step_scale;       /* 0: the levels' rates; else the weighted and transform rows'
                               codec_params.step_scale (their labels say "x<scale>") */
    int transform_block;    /* 0: the transform rows' blocks are the head (16 channels when
                               head_dim is above 64); else B channels (codec_params) */
    const char *rows;       /* NULL: every row; else only rows whose label contains it (and
                               q8, the ratios' reference) */
    const char *json_path;  /* NULL: no JSON */
    codec_eval_row *rows_out; /* optional: the table's rows, at most max_rows of them */
    int max_rows;
    int *n_rows;            /* with rows_out: how many were written */
} codec_eval_opts;

/* Encode/decode the source's KV with every codec, level and the cachegen variants; print
 * the table (bits per value with every overhead, ratio vs fp16 and q8, relative L2 per
 * layer for K and V, fidelity when the source scores it) and write JSON when asked. */
rk_status codec_eval_run(codec_kv_source *src, const codec_eval_opts *o, FILE *out);

/* Channel sensitivities from k independent measurements (codec_kv_source.sensitivity on k
 * held-out prompt sets), each of n values: out[i] is the geometric mean of w[0..k)[i] over
 * the measurements where it is > 0 (0 where none is: a channel constant on every set). One
 * measurement of 4 prompts is noisy (two sets' values of the same channel differ 3x either
 * way at the 10th and 90th percentiles on stories260K), and rate allocation follows their
 * ratios: docs/codec.md, "Better sensitivities". RK_ERR_INVALID on a negative or non-finite
 * value (out unchanged). */
rk_status codec_weights_combine(const float *const *w, int k, size_t n, float *out);

/* Source i (0 <= i < n) of a multi-source evaluation, e.g. one model's prompts under seed
 * first + i; the caller frees it (codec_kv_source_free). */
typedef rk_status (*codec_eval_source_fn)(void *ctx, int i, codec_kv_source *out);

/* codec_eval_run on n sources, one after another (each table printed as it is done, with
 * o->json_path ignored there), then the rows' means over the n: bits per value, x q8 (q8's
 * mean bits over the row's), relative L2, KL and top-1 with the lowest top-1 of any source
 * ("worst") — the form of docs/codec.md's tables over eight seeds. o->json_path, when set,
 * receives those means. Every source must give the same rows. */
rk_status codec_eval_many(codec_eval_source_fn make, void *ctx, int n, const codec_eval_opts *o, FILE *out);

/* `--cuda` part of the benchmark: time codec_decode_cuda (kernel and end to end, best of
 * iters) and check it is bit-identical to the CPU decoder, on the source's KV or, with
 * tokens > 0 and a synthetic source, on a fresh synthetic tensor of that many tokens.
 * cb: the codebook of the codebook row; cbt (NULL: no such row): a transform codebook's.
 * Prints a table, appends ",\"cuda\":[...]" to jf when set. Returns 1 on success. */
int codec_bench_cuda(codec_kv_source *src, const codec_codebook *cb, const codec_codebook *cbt,
                     rk_pool *pool, int tokens, int iters, FILE *jf);

#ifdef __cplusplus
}
#endif
#endif
