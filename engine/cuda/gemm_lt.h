// gemm_lt.h — private to engine/cuda: matrix products of many rows through cuBLASLt with an
// algorithm chosen by timing (gemm_lt.cu).
//
// cuBLAS picks one algorithm per product from its heuristics, and the first heuristic is not
// always the fastest: on the H100 (2026-12-07) an 8K prefill's products ran at 573 (q/k/v,
// 8192 x 4096 -> 6144, bf16 in, fp32 out), 605 (o), 747 (gate/up) and 768 TFLOP/s (down). The
// tuner asks cuBLASLt for its candidates for a product's shape, times each on
// the product's own stream once, and keeps the fastest for every later product of that shape.
//
// Shape key: (out, in, output type, accumulate, rows bucket); rows are bucketed by powers of
// two (the first product of a bucket decides for all), so a service that sees every prompt
// length tunes a few dozen times in its life, not once per request. The candidates are asked
// for at the first product's pointer alignment (at most 256 bytes); a later product of the
// shape whose pointers are less aligned goes through cuBLAS. Products of fewer than
// GEMM_TUNE_MIN_ROWS rows, and products issued while the stream is being captured into a graph
// (nothing may be timed there), are not handled: the caller runs them through cuBLAS.
//
// Modes (RAGKV_CUDA_GEMM_TUNE, read when the backend is made): 0 (default) off, every product
// through cublasGemmEx; 1 timed; 2 cuBLASLt's first heuristic without timing (to compare the
// two libraries' choices). Off by default until a side-by-side run on the H100 shows the timed
// choice faster end to end (not yet measured). RAGKV_CUDA_GEMM_TUNE_LOG=1 prints each choice on
// stderr (also with RAGKV_CUDA_PROFILE=1).
//
// A tuner belongs to one backend context and is used by the thread that runs its layers.
#ifndef RAGKV_ENGINE_CUDA_GEMM_LT_H
#define RAGKV_ENGINE_CUDA_GEMM_LT_H

#include <cuda_runtime.h>
#include <library_types.h>
#include <stddef.h>

extern "C" {
#include "ragkv/status.h"
}

#define GEMM_TUNE_MIN_ROWS 128 // fewer rows: cuBLAS (and k_gemv up to 8)
#define GEMM_TUNE_CANDIDATES 8 // algorithms asked of the heuristics and timed

struct gemm_tuner;

// A tuner in the given mode (0, 1, 2 as above); log: print each choice. *out is NULL in mode
// 0 (nothing to do). Errors: RK_ERR_NOMEM, RK_ERR_DEVICE (cublasLtCreate failed).
rk_status gemm_tuner_new(int mode, bool log, gemm_tuner **out);

// Free t (NULL is fine) and its device workspace. The device must be idle with respect to
// products t ran (the backend's end).
void gemm_tuner_free(gemm_tuner *t);

// Mode from RAGKV_CUDA_GEMM_TUNE (unset: 0); -1 with an error set when the value is not 0, 1
// or 2.
int gemm_tune_mode_from_env(void);

// y (n, out) = x (n, in) W^T (+ y when acc), row-major, x and W bf16 (W is (out, in)), y of
// type yt (CUDA_R_32F or CUDA_R_16BF), fp32 accumulation, on stream s. *ran is set when the
// product ran here; false (RK_OK) means the caller must run it itself (t NULL, too few rows,
// stream capturing, no usable algorithm). Tuning a new shape times the candidates on s (a
// host wait); with acc they run on a scratch copy, so y's contents are only changed by the
// real product. Errors: RK_ERR_DEVICE (a CUDA or cuBLASLt failure of the real product).
rk_status gemm_tuned(gemm_tuner *t, cudaStream_t s, void *y, cudaDataType_t yt, const void *x, const void *w,
                     size_t n, size_t in, size_t out, bool acc, bool *ran);

#endif
