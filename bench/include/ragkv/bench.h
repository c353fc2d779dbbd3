/*
 * ragkv/bench.h — benchmark and evaluation pieces that need several modules at once.
 *
 * bench_codec_model_source is the model-backed KV source of `ragkv codec eval --model` and
 * `ragkv bench codec --model`: codec/ cannot depend on the engine, so the `ragkv` tool
 * registers this with codec_eval_set_model_source() at start.
 *
 *     codec_eval_set_model_source(bench_codec_model_source);
 */
#ifndef RAGKV_BENCH_H
#define RAGKV_BENCH_H

#include <stddef.h>
#include <stdint.h>

#include "ragkv/codec_eval.h"
#include "ragkv/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* KV of 4 prompts sampled from the model (BOS, then temperature 1, seeded), stacked along the
 * token axis, pre-RoPE K; fidelity: each prompt's cache replaced by the decoded one, the next
 * tokens of the exact run teacher-forced (next-token KL, top-1) and the greedy continuation
 * compared with the exact one (matched length, of 32). Any model eng_model_open reads. */
rk_status bench_codec_model_source(const char *model_path, uint64_t seed, codec_kv_source *out);

/* Sort v[n] ascending in place (bench/stats.c). */
void bench_sort(double *v, size_t n);

/* The median of v[n] (n >= 1; the upper one for even n), sorting v in place. */
double bench_median(double *v, int n);

/* `ragkv bench engine`: prefill and decode-step times of a backend (bench/engine_bench.c). */
int bench_engine_main(int argc, char **argv);

/* `ragkv bench serve`: the load generator against a running ragkvd (bench/serve.c). */
int bench_serve_main(int argc, char **argv);

/* `ragkv bench blend`: time to first token of blended prompts per mode (bench/blend_bench.c). */
int bench_blend_main(int argc, char **argv);

#ifdef __cplusplus
}
#endif
#endif
