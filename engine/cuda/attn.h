// attn.h — private to engine/cuda: the CUDA backend's fused attention kernels (attn.cu).
//
// Two kernels, both exact causal attention by position (key slot t is visible to a query at
// position p iff spos[t] <= p; empty slots hold a position larger than any real one), GQA
// (query head h reads KV head h / (H / KVH)), optional slot groups (temperature, log-scale):
//   - flash: prefill-shaped work (many query rows of one sequence), bf16 tensor-core tiles
//     (mma.sync m16n8k16) with online softmax; never materialises the scores. Head dims 16,
//     32, 64, 128.
//   - decode: few query rows, each of its own sequence (batched decode), split over the keys
//     (flash-decoding): partial softmax per split, then a combine step. fp32 or bf16 caches,
//     any head dim, query heads per KV head up to ATTN_MAX_GROUP.
// Neither reports attention mass per slot group: the backend takes it from attn_scores (raw
// q.k from the same bf16 queries and cache) and the reference softmax, or from the reference
// path (cuBLAS scores) for everything.
#ifndef RAGKV_ENGINE_CUDA_ATTN_H
#define RAGKV_ENGINE_CUDA_ATTN_H

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stddef.h>
#include <stdint.h>

// fp32 <-> storage type (float or bf16), shared by attn.cu and backend.cu
static __device__ __forceinline__ float to_f(float x) { return x; }
static __device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename T> static __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) { return __float2bfloat16(x); }

#define ATTN_MAX_GROUP 16  // query heads per KV head the decode kernel handles
#define ATTN_SPLIT 256     // the most keys per split of the decode kernel (see attn_decode_split)
#define ATTN_SPLIT_MIN 32  // the fewest
#define ATTN_SPLIT_BLOCKS_PER_SM 4 // splits shrink until the grid has this many blocks per SM
                                   // (H100, 8K context, 2026-12-07: batch 1 7.78 ms at 64 keys per
                                   // split against 8.17 at 256, which batch 32 keeps: 30.6 ms
                                   // against 36.1 at 64)

#include "kvdesc.h"

// What both kernels need besides the tensors.
struct cu_attn_shape {
    int n;                   // query rows
    int H, KVH, hd;          // query heads, KV heads, head dim
    float scale;             // 1/sqrt(hd)
    const int32_t *qpos;     // (n) query positions (device)
    const int32_t *grp;      // (len) slot group, -1 none; NULL: no groups (device)
    const float *temp;       // (G) group temperature or NULL (device)
    const float *lscale;     // (G) group log-scale or NULL (device)
    float lazy;              // flash: a row's running max moves only when a tile's max passes it
                             // by more than this (log2 units; exact either way: the sums and
                             // outputs use the same max); set by attn_flash itself
};

// flash: q (n, H*hd) rotated queries over the first len slots of `layer` of the bf16 cache d
// (a host copy of the descriptor); out (n, H*hd). part: attn_flash_part_floats() floats of
// device scratch (calls of few rows over many keys split the keys, flash-decoding style, and
// merge the splits' partial softmaxes; 0 floats: no split), or NULL: never split. Launches on
// the legacy default stream. Returns the launch error.
bool attn_flash_supported(int hd, int H, int KVH);
size_t attn_flash_part_floats(int n, int H, int hd, int len);
cudaError_t attn_flash(const cu_attn_shape *a, const __nv_bfloat16 *q, const cu_kvdesc *d, int layer, int len,
                       float *part, __nv_bfloat16 *out);

// scores for the attention mass: out (n, H, len) float32, out[(r*H + h)*len + t] = q[r, h] . k[t]
// for the bf16 rotated queries q (n, H*hd) and the rotated keys of the first len slots of
// `layer` of the bf16 cache d (a host copy of the descriptor): raw products, unscaled and
// unmasked, as the reference path's products are before its softmax (fp32 sums of bf16
// inputs, so within rounding of them, not bit for bit). Only a->n, H, KVH and hd are read.
bool attn_scores_supported(int hd, int H, int KVH);
cudaError_t attn_scores(const cu_attn_shape *a, const __nv_bfloat16 *q, const cu_kvdesc *d, int layer, int len,
                        float *out, cudaStream_t stream);

// decode: row r reads descriptor desc[rseq[r]] (rseq NULL: desc[0]) at `layer`; max_len is
// the largest len among them. part: attn_decode_part_floats() floats of device scratch.
size_t attn_decode_part_floats(int n, int H, int KVH, int hd, int max_len);

// Keys per split of the decode kernel for n rows over at most max_len keys: ATTN_SPLIT halved
// (down to ATTN_SPLIT_MIN) while the grid would have fewer than ATTN_SPLIT_BLOCKS_PER_SM blocks
// per SM, so that one long sequence still fills the card; or RAGKV_ATTN_SPLIT (a power of two
// in 16..1024, read once: a knob for benchmarks).
int attn_decode_split(int n, int KVH, int max_len);
// Per-device set-up the kernels need before any launch (the shared-memory opt-in of the decode
// kernels, which must not first happen inside a stream capture); call once per device, with
// it current, outside any capture. Returns the first error.
cudaError_t attn_prepare(void);

template <typename T>
cudaError_t attn_decode(const cu_attn_shape *a, const T *q, const cu_kvdesc *desc, const int32_t *rseq,
                        int layer, int max_len, float *part, T *out, cudaStream_t stream);

#endif
