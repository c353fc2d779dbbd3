// backend.cu — the CUDA backend. Two storage types behind one code path (template T):
//   - fp32 (RAGKV_CUDA_MATH=fp32, or tf32 for tensor-core products on fp32 storage): weights,
//     KV cache and matrix inputs in float32, attention in the layer-granular calls by the
//     reference path (cuBLAS scores, a softmax kernel, cuBLAS values). Checked against the CPU
//     backend with tight tolerances; greedy tokens equal the CPU's.
//   - bf16 (RAGKV_CUDA_MATH=bf16; the default for bf16/f16 checkpoints): weights, KV cache and
//     matrix inputs in bfloat16, fp32 accumulation and fp32 hidden states; attention by the
//     fused kernels of attn.cu (flash for many rows, split-key decode for few).
// Both: q/k/v and gate/up projections as one matrix product each (weights concatenated at
// load), residual adds done by the o and down products (beta 1), bf16 products of up to 8 rows
// by k_gemv instead of cuBLAS, batched decode in one pass per layer for all
// sequences (each row attends over its own sequence's cache), the slot positions kept on the
// device and refreshed only where engine.c changed them.
//
// Device state per sequence: the KV cache, paged (attn.h, cu_kvdesc): blocks of B slots for
// every layer, each holding k_raw (K before RoPE: what export returns), k_rot (K rotated at
// its slot's position: what attention reads) and v, taken from a backend-wide pool as the
// sequence's length grows (its capacity is a limit, not a reservation) and returned to the pool
// when it is released; the sequence's block table (device), and dpos (capacity) slot
// positions. B is 64, or RAGKV_CUDA_KV_BLOCK (a power of two 1..4096; the tests use small ones
// so that every path crosses blocks). Every CUDA and cuBLAS error becomes RK_ERR_DEVICE
// (RK_ERR_NOMEM for allocations); nothing aborts.
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <mutex>
#include <new>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <type_traits>

#include "attn.h"
#include "gemm_lt.h"
#include "sample.h"

extern "C" {
#include "engine_impl.h"
#include "ragkv/alloc.h"
#include "ragkv/fp16.h"
}

namespace {

typedef __nv_bfloat16 bf16;

enum cu_mode { MODE_FP32, MODE_TF32, MODE_BF16 };

struct cu_layer {
    float *attn_norm, *ffn_norm, *bqkv; // fp32 (d), (d), (qd + 2 kvd) or NULL
    void *wqkv, *wo, *w13, *w2;         // storage type: (qd+2kvd, d), (d, qd), (2f, d), (d, f)
};

// What a captured decode step depends on besides device memory contents: replaying it is
// valid while every field is unchanged.
struct decode_key {
    size_t n;                 // rows
    int split, splits;        // decode attention grid
    const void *scratch, *iscratch, *ddesc, *xdec;
    bool operator==(const decode_key &o) const
    {
        return n == o.n && split == o.split && splits == o.splits && scratch == o.scratch &&
               iscratch == o.iscratch && ddesc == o.ddesc && xdec == o.xdec;
    }
};

// One captured decode step, ready to replay.
struct decode_graph_entry {
    decode_key key;           // what it was captured for
    cudaGraphExec_t exec;     // NULL: a free entry
    uint64_t used;            // graph_clock at its last replay (the least recent is replaced)
};

// Phases of a layer call timed by the profiler (RAGKV_CUDA_PROFILE=1).
enum prof_phase { PH_NORM, PH_QKV, PH_STORE, PH_ROPE, PH_ATTN, PH_WO, PH_NORM2, PH_W13, PH_SWIGLU, PH_W2, PH_N };
const char *const prof_names[PH_N] = {"rmsnorm", "gemm qkv", "kv store", "rope q", "attention", "gemm o +x",
                                      "rmsnorm 2", "gemm gate/up", "swiglu", "gemm down +x"};
constexpr int PROF_MARKS = 24; // events per layer call (a phase may be marked more than once)

// Per-phase GPU time of eager layer calls, from CUDA events on the legacy stream: a layer
// call records an event after each phase and waits for the last one at its end (so profiling
// costs a host wait per layer; timings of a profiled run are not the benchmark's). Decode
// graphs are not profiled. Printed to stderr when the backend is freed.
struct cu_prof {
    bool on;                       // RAGKV_CUDA_PROFILE=1 when the backend was made
    cudaEvent_t ev[PROF_MARKS + 1]; // ev[0] at the call's start, ev[i] after phase ph[i]
    int ph[PROF_MARKS + 1];
    int n;                         // events recorded in this call (0: not profiling it)
    int kind;                      // this call's bucket of rows (prof_bucket)
    double ms[3][PH_N];            // summed phase times per bucket
    double flops[3][PH_N];         // summed matrix-product operations (2 m n k), for TFLOP/s
    uint64_t layer_calls[3], rows[3]; // layer calls profiled and their rows
};
// Layer calls are reported in three buckets by rows: up to PROF_FEW_ROWS (decode), up to
// PROF_MID_ROWS (row subsets: CacheBlend's partial layers), more (prefills).
constexpr size_t PROF_FEW_ROWS = 64, PROF_MID_ROWS = 4096;

constexpr int DECODE_GRAPHS = 8; // executable decode graphs kept per context (batch sizes
                                 // and attention grids that alternate keep theirs)

struct cu_blk_mem {           // a released KV block's allocation (see cu_ctx.blk_cache)
    void *p;
    size_t bytes;
};

struct cu_ctx {
    eng_model *m;
    const eng_model_info *mi;
    int device;
    cublasHandle_t blas;
    cu_mode mode;
    void *tok_emb, *wcls;     // storage type (vocab, d)
    float *final_norm;        // (d)
    float *inv_freq;          // (head_dim/2)
    cu_layer *layers;         // host array of device pointers (n_layers)
    void **owned;             // device allocations freed at the end
    size_t n_owned, cap_owned;
    unsigned char *scratch;   // device scratch, grown on demand
    size_t scratch_bytes;
    int32_t *iscratch;        // device int scratch
    size_t iscratch_n;
    cu_kvdesc *ddesc;         // device descriptors of the sequences of a call
    size_t ddesc_n;
    float *xdec;              // hidden rows of a batched decode step
    size_t xdec_rows;
    cudaStream_t stream;      // where the decode path's kernels go: 0, or gstream while capturing
    cudaStream_t gstream;     // the decode graph's stream (non-blocking; ordered by events)
    cudaEvent_t gready;       // recorded on the legacy stream before a replay: inputs uploaded
    void *blas_ws;            // cuBLAS workspace (device; a graph may not allocate one)
    decode_graph_entry graphs[DECODE_GRAPHS]; // captured decode steps (exec NULL: free)
    uint64_t graph_clock;     // stamps graphs[].used
    bool graph_broken;        // capturing failed once: this context decodes without graphs
    bool graph_used;          // the last decode step went through the graph
    uint64_t captures, replays; // decode graph captures, and steps run through a graph
    eng_sample_row *srows;    // (srows_n) device: the rows' sampling settings of a decode_sample
    int32_t *sout;            // (srows_n) device: the tokens chosen
    size_t srows_n;
    // the KV block pool (every sequence's blocks; guarded by pool_mu: sequences may be made and
    // released on other threads than the one running layers)
    std::mutex *pool_mu;
    int kv_bshift;            // log2 of the slots per block
    size_t kv_block_bytes;    // one block: n_layers x 3 arrays x B slots x kvd, storage type
    void **kv_arenas;         // device allocations holding the blocks (freed at the end)
    size_t kv_n_arenas, kv_cap_arenas;
    void **kv_free;           // blocks not in any sequence
    size_t kv_n_free, kv_cap_free;
    size_t kv_blocks;         // blocks in the pool, used or not
    cu_prof prof;             // per-phase timings (RAGKV_CUDA_PROFILE=1)
    bool gemv;                // bf16 products of up to GEMV_MAX_ROWS rows by k_gemv, not cuBLAS
                              // (RAGKV_CUDA_GEMV=0 turns it off, read when the backend is made)
    gemm_tuner *tuner;        // bf16 products of many rows by timed cuBLASLt algorithms (gemm_lt.h;
                              // NULL: RAGKV_CUDA_GEMM_TUNE=0, or not bf16)
    // released chunk KV blocks' device memory kept for the next block of the same size
    // (RAGKV_CUDA_KVBLOCK_CACHE_MB; 0, the default: every block is cudaMalloc'd and cudaFree'd);
    // guarded by pool_mu
    cu_blk_mem *blk_cache;
    size_t blk_n, blk_cap;
    size_t blk_cached, blk_limit; // bytes kept, and the most to keep
};

struct cu_kv {
    void **hblk;             // (nblk) host copy of the block table; [0, mapped) set
    void **dblk;             // (nblk) the block table on the device (what cu_kvdesc.blk points to)
    size_t nblk, mapped;     // table entries (capacity / B, rounded up), and blocks taken
    int32_t *dpos;           // (capacity) slot positions; 0x7f7f7f7f (above any position): empty
};

rk_status cuda_fail(cudaError_t e, const char *what)
{
    cudaGetLastError(); // clear a non-sticky error
    return rk_error_set(RK_ERR_DEVICE, "cuda backend: %s: %s", what, cudaGetErrorString(e));
}

rk_status blas_fail(cublasStatus_t s, const char *what)
{
    return rk_error_set(RK_ERR_DEVICE, "cuda backend: %s: cuBLAS status %d", what, (int)s);
}

// Every entry point makes the backend's device current on the calling thread first: the
// thread that drives a backend (the service's executor, a blend loader) need not be the one
// that created it, and CUDA's current device is per thread. Cheap when it already is.
rk_status cu_enter(void *ctx)
{
    cudaError_t e = cudaSetDevice(((const cu_ctx *)ctx)->device);
    return e == cudaSuccess ? RK_OK : cuda_fail(e, "cudaSetDevice");
}

#define CU(call, what)                                                                                     \
    do {                                                                                                   \
        cudaError_t e_ = (call);                                                                           \
        if (e_ != cudaSuccess)                                                                             \
            return cuda_fail(e_, what);                                                                    \
    } while (0)

#define CHECK_LAUNCH(what) CU(cudaGetLastError(), what)
#define TRY(x)                                                                                             \
    do {                                                                                                   \
        rk_status st_ = (x);                                                                               \
        if (st_ != RK_OK)                                                                                  \
            return st_;                                                                                    \
    } while (0)

size_t esize(const cu_ctx *c) { return c->mode == MODE_BF16 ? sizeof(bf16) : sizeof(float); }

rk_status dev_alloc(cu_ctx *c, void **p, size_t bytes)
{
    if (cudaMalloc(p, bytes ? bytes : 4) != cudaSuccess) {
        cudaGetLastError();
        *p = NULL;
        return rk_error_set(RK_ERR_NOMEM, "cuda backend: no device memory for %zu bytes of weights", bytes);
    }
    if (c->n_owned == c->cap_owned) {
        size_t cap = c->cap_owned ? 2 * c->cap_owned : 64;
        void **o = (void **)rk_realloc(c->owned, cap * sizeof(void *));
        if (!o) {
            cudaFree(*p);
            return rk_error_set(RK_ERR_NOMEM, "cuda backend: out of host memory");
        }
        c->owned = o;
        c->cap_owned = cap;
    }
    c->owned[c->n_owned++] = *p;
    return RK_OK;
}

float host_f32(const eng_tensor *t, size_t i)
{
    if (t->dtype == ENG_DTYPE_F32)
        return ((const float *)t->data)[i];
    uint16_t h = ((const uint16_t *)t->data)[i];
    return t->dtype == ENG_DTYPE_F16 ? rk_f16_to_f32(h) : rk_bf16_to_f32(h);
}

// Upload the row-wise concatenation of k tensors (same cols) in type `f32 ? float : storage`.
// A tensor without data contributes nothing; all without data: *out = NULL.
rk_status upload_cat(cu_ctx *c, const eng_tensor *const *ts, int k, bool f32, void **out)
{
    *out = NULL;
    size_t total = 0;
    for (int i = 0; i < k; i++)
        if (ts[i]->data)
            total += ts[i]->rows * ts[i]->cols;
    if (total == 0)
        return RK_OK;
    size_t es = f32 ? sizeof(float) : esize(c);
    void *d;
    TRY(dev_alloc(c, &d, total * es));
    size_t off = 0;
    for (int i = 0; i < k; i++) {
        const eng_tensor *t = ts[i];
        if (!t->data)
            continue;
        size_t n = t->rows * t->cols;
        const void *src = t->data;
        void *tmp = NULL;
        bool direct = (es == sizeof(float) && t->dtype == ENG_DTYPE_F32) || (es == 2 && t->dtype == ENG_DTYPE_BF16);
        if (!direct) {
            tmp = rk_malloc(n * es);
            if (!tmp)
                return rk_error_set(RK_ERR_NOMEM, "cuda backend: out of host memory converting weights");
            for (size_t j = 0; j < n; j++) {
                float v = host_f32(t, j);
                if (es == sizeof(float))
                    ((float *)tmp)[j] = v;
                else
                    ((uint16_t *)tmp)[j] = rk_f32_to_bf16(v);
            }
            src = tmp;
        }
        cudaError_t e = cudaMemcpy((unsigned char *)d + off * es, src, n * es, cudaMemcpyHostToDevice);
        rk_free(tmp);
        if (e != cudaSuccess)
            return cuda_fail(e, "upload weights");
        off += n;
    }
    *out = d;
    return RK_OK;
}

rk_status upload1(cu_ctx *c, const eng_tensor *t, bool f32, void **out)
{
    const eng_tensor *ts[1] = {t};
    return upload_cat(c, ts, 1, f32, out);
}

// Device scratch of at least `bytes` (contents undefined). Growing it frees the old one
// (cudaFree waits for the kernels using it).
rk_status scratch(cu_ctx *c, size_t bytes, unsigned char **out)
{
    if (bytes > c->scratch_bytes) {
        cudaFree(c->scratch);
        c->scratch = NULL;
        c->scratch_bytes = 0;
        if (cudaMalloc(&c->scratch, bytes) != cudaSuccess) {
            cudaGetLastError();
            return rk_error_set(RK_ERR_NOMEM, "cuda backend: no device memory for %zu bytes of scratch", bytes);
        }
        c->scratch_bytes = bytes;
    }
    *out = c->scratch;
    return RK_OK;
}

rk_status iscratch(cu_ctx *c, size_t n, int32_t **out)
{
    if (n > c->iscratch_n) {
        cudaFree(c->iscratch);
        c->iscratch = NULL;
        c->iscratch_n = 0;
        CU(cudaMalloc(&c->iscratch, n * sizeof(int32_t)), "int scratch");
        c->iscratch_n = n;
    }
    *out = c->iscratch;
    return RK_OK;
}

// Copy n host int32 values to the device int scratch at offset off (reserve first).
rk_status ints_up(cu_ctx *c, const int32_t *src, size_t n, size_t off, int32_t **out)
{
    int32_t *d = NULL;
    TRY(iscratch(c, off + n, &d));
    if (n)
        CU(cudaMemcpy(d + off, src, n * sizeof(int32_t), cudaMemcpyHostToDevice), "copy indices");
    *out = d + off;
    return RK_OK;
}

// Carves typed pieces out of one scratch allocation (256-byte aligned).
struct carver {
    size_t off = 0;
    unsigned char *base = NULL;
    template <typename X> X *take(size_t n)
    {
        X *p = (X *)(base ? base + off : NULL);
        off += (n * sizeof(X) + 255) / 256 * 256;
        return p;
    }
};

// ---- kernels ----------------------------------------------------------------------------


__device__ float block_sum(float v)
{
    __shared__ float part[32];
    __shared__ float total;
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_down_sync(0xffffffffu, v, o);
    int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
    if (lane == 0)
        part[wid] = v;
    __syncthreads();
    int nw = (blockDim.x + 31) >> 5;
    v = threadIdx.x < nw ? part[threadIdx.x] : 0.0f;
    if (wid == 0)
        for (int o = 16; o > 0; o >>= 1)
            v += __shfl_down_sync(0xffffffffu, v, o);
    if (threadIdx.x == 0)
        total = v;
    __syncthreads();
    float r = total;
    __syncthreads();
    return r;
}

__device__ float block_max(float v)
{
    __shared__ float part[32];
    __shared__ float total;
    for (int o = 16; o > 0; o >>= 1)
        v = fmaxf(v, __shfl_down_sync(0xffffffffu, v, o));
    int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
    if (lane == 0)
        part[wid] = v;
    __syncthreads();
    int nw = (blockDim.x + 31) >> 5;
    v = threadIdx.x < nw ? part[threadIdx.x] : -INFINITY;
    if (wid == 0)
        for (int o = 16; o > 0; o >>= 1)
            v = fmaxf(v, __shfl_down_sync(0xffffffffu, v, o));
    if (threadIdx.x == 0)
        total = v;
    __syncthreads();
    float r = total;
    __syncthreads();
    return r;
}

// x[r] += add[r] when add; out[r] = w * x[src] / rms(x[src]) with src = rows ? rows[r] : r.
// One block per row.
template <typename TO>
__global__ void k_add_rmsnorm(TO *out, float *x, const float *add, const float *w, const int32_t *rows, int d,
                              float eps)
{
    int r = blockIdx.x;
    float *xr = x + (size_t)(rows ? rows[r] : r) * d;
    const float *ar = add ? add + (size_t)r * d : NULL;
    float ss = 0.0f;
    for (int j = threadIdx.x; j < d; j += blockDim.x) {
        float v = xr[j];
        if (ar) {
            v += ar[j];
            xr[j] = v;
        }
        ss += v * v;
    }
    ss = block_sum(ss);
    float inv = 1.0f / sqrtf(ss / (float)d + eps);
    for (int j = threadIdx.x; j < d; j += blockDim.x)
        out[(size_t)r * d + j] = from_f<TO>(w[j] * (inv * xr[j]));
}

// ---- few-row products (decode) ----------------------------------------------------------------
//
// y (NR, out) fp32 or bf16 = x (NR, in) W^T (+ y with acc) for bf16 x and W, NR <= GEMV_MAX_ROWS: the
// decode step's products, which stream the weights once and so are bound by memory bandwidth.
// One warp per output: each lane reads 16 bytes of the weight row at a time (coalesced 512 B
// per warp), several in flight, and multiplies them with the same 8 inputs of every row (read
// through L1: all warps share x); fp32 sums, reduced across the warp. in must be a multiple
// of 8 (16-byte rows); callers check gemv_ok().
constexpr int GEMV_MAX_ROWS = 8;
constexpr int GEMV_WARPS = 8; // warps (outputs) per block
// (16-byte weight pieces in flight per lane, GEMV_UNR in k_gemv: 8 for one or two rows — a
// 4096-wide row is then two round trips to memory; with 4, the small products of the H100 run
// of 2026-12-07 moved 2.3-2.5 TB/s — and 4 for more rows: 8 would take 160 registers at 8 rows,
// one block per SM.)

__device__ __forceinline__ float dot8_bf16(uint4 w, uint4 x)
{
    const __nv_bfloat162 *wp = reinterpret_cast<const __nv_bfloat162 *>(&w);
    const __nv_bfloat162 *xp = reinterpret_cast<const __nv_bfloat162 *>(&x);
    float s = 0.0f;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        float2 a = __bfloat1622float2(wp[i]), b = __bfloat1622float2(xp[i]);
        s = fmaf(a.x, b.x, s);
        s = fmaf(a.y, b.y, s);
    }
    return s;
}

template <int NR, typename TO>
__global__ void __launch_bounds__(GEMV_WARPS * 32) k_gemv(TO *__restrict__ y, const bf16 *__restrict__ x,
                                                          const bf16 *__restrict__ w, int in, int out, int acc)
{
    const int lane = threadIdx.x & 31;
    const int o = blockIdx.x * GEMV_WARPS + (threadIdx.x >> 5);
    if (o >= out)
        return;
    const uint4 *wr = reinterpret_cast<const uint4 *>(w + (size_t)o * in);
    const int n8 = in / 8; // 16-byte pieces per row
    float s[NR];
#pragma unroll
    for (int r = 0; r < NR; r++)
        s[r] = 0.0f;
    int i = lane;
    constexpr int GEMV_UNR = NR <= 2 ? 8 : 4;
    for (; i + 32 * (GEMV_UNR - 1) < n8; i += 32 * GEMV_UNR) {
        uint4 wv[GEMV_UNR];
#pragma unroll
        for (int u = 0; u < GEMV_UNR; u++)
            wv[u] = __ldcs(wr + i + 32 * u);
#pragma unroll
        for (int r = 0; r < NR; r++) {
            const uint4 *xr = reinterpret_cast<const uint4 *>(x + (size_t)r * in);
            float part = 0.0f; // (not `acc`: that is the kernel's add-to-y flag)
#pragma unroll
            for (int u = 0; u < GEMV_UNR; u++)
                part += dot8_bf16(wv[u], __ldg(xr + i + 32 * u));
            s[r] += part;
        }
    }
    for (; i < n8; i += 32) {
        uint4 w0 = __ldcs(wr + i);
#pragma unroll
        for (int r = 0; r < NR; r++)
            s[r] += dot8_bf16(w0, __ldg(reinterpret_cast<const uint4 *>(x + (size_t)r * in) + i));
    }
#pragma unroll
    for (int r = 0; r < NR; r++) {
        float v = s[r];
#pragma unroll
        for (int off = 16; off > 0; off >>= 1)
            v += __shfl_xor_sync(0xffffffffu, v, off);
        if (lane == 0)
            y[(size_t)r * out + o] = from_f<TO>(acc ? to_f(y[(size_t)r * out + o]) + v : v);
    }
}

__global__ void k_add_bias(float *y, const float *b, size_t n, int cols)
{
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (i < n)
        y[i] += b[i % cols];
}

// out (n, f) = silu(y[:, :f]) * y[:, f:]  (y (n, 2f): gate then up, fp32 or bf16)
template <typename T, typename TI>
__global__ void k_swiglu(T *out, const TI *y, int f)
{
    // one block per row (no index division): y row r is [gate (f) | up (f)]
    const size_t r = blockIdx.x;
    const TI *gate = y + r * 2 * (size_t)f, *up = gate + f;
    T *o = out + r * (size_t)f;
    if constexpr (std::is_same<T, bf16>::value && std::is_same<TI, bf16>::value) {
        if (f % 8 == 0) { // 16 bytes of gate, of up and of the output per thread and step
            const uint4 *g4 = reinterpret_cast<const uint4 *>(gate), *u4 = reinterpret_cast<const uint4 *>(up);
            uint4 *o4 = reinterpret_cast<uint4 *>(o);
            for (int j = threadIdx.x; j < f / 8; j += blockDim.x) {
                uint4 gv = g4[j], uv = u4[j], ov;
                const __nv_bfloat162 *gp = reinterpret_cast<const __nv_bfloat162 *>(&gv);
                const __nv_bfloat162 *up2 = reinterpret_cast<const __nv_bfloat162 *>(&uv);
                __nv_bfloat162 *op = reinterpret_cast<__nv_bfloat162 *>(&ov);
#pragma unroll
                for (int k = 0; k < 4; k++) {
                    float2 a = __bfloat1622float2(gp[k]), b = __bfloat1622float2(up2[k]);
                    op[k] = __floats2bfloat162_rn(a.x / (1.0f + expf(-a.x)) * b.x, a.y / (1.0f + expf(-a.y)) * b.y);
                }
                o4[j] = ov;
            }
            return;
        }
    }
    for (int j = threadIdx.x; j < f; j += blockDim.x) {
        float a = to_f(gate[j]), b = to_f(up[j]);
        o[j] = from_f<T>(a / (1.0f + expf(-a)) * b);
    }
}

template <typename T>
__global__ void k_embed(float *x, const T *emb, const int32_t *tok, int n, int d)
{
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (i >= (size_t)n * d)
        return;
    int r = (int)(i / d), j = (int)(i % d);
    x[i] = to_f(emb[(size_t)tok[r] * d + j]);
}

__global__ void k_gather(float *out, const float *src, const int32_t *idx, int n, int d)
{
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (i >= (size_t)n * d)
        return;
    int r = (int)(i / d), j = (int)(i % d);
    out[i] = src[(size_t)idx[r] * d + j];
}

template <typename A, typename B>
__global__ void k_convert(B *out, const A *in, size_t n)
{
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (i < n)
        out[i] = from_f<B>(to_f(in[i]));
}

__device__ __forceinline__ void rope_pair(int i, int hd, int inter, int *a, int *b)
{
    *a = inter ? 2 * i : i;
    *b = inter ? 2 * i + 1 : i + hd / 2;
}

// One (row, pair) of k_store_kv and k_import_blocks: K row k and V row v (pre-RoPE) into slot
// `slot` of `layer` of d, K also rotated at position p, pair i of every KV head.
template <typename T, typename S>
__device__ __forceinline__ void store_kv_pair(const cu_kvdesc &d, int layer, long long slot, const S *k,
                                              const S *v, int p, int i, int nkv, int hd, const float *inv_freq,
                                              int inter)
{
    size_t kvd = (size_t)nkv * hd;
    int a, b;
    rope_pair(i, hd, inter, &a, &b);
    float ang = (float)p * inv_freq[i];
    float fc = cosf(ang), fs = sinf(ang);
    T *kraw = kv_row<T>(d, KV_RAW, layer, slot, kvd), *krot = kv_row<T>(d, KV_ROT, layer, slot, kvd),
      *vv = kv_row<T>(d, KV_VAL, layer, slot, kvd);
#pragma unroll 4
    for (int hh = 0; hh < nkv; hh++) {
        const size_t o = (size_t)hh * hd;
        float k0 = to_f(k[o + a]), k1 = to_f(k[o + b]), v0 = to_f(v[o + a]), v1 = to_f(v[o + b]);
        kraw[o + a] = from_f<T>(k0);
        kraw[o + b] = from_f<T>(k1);
        krot[o + a] = from_f<T>(k0 * fc - k1 * fs);
        krot[o + b] = from_f<T>(k0 * fs + k1 * fc);
        vv[o + a] = from_f<T>(v0);
        vv[o + b] = from_f<T>(v1);
    }
}

// Row r of (n rows): K (pre-RoPE) from ksrc, V from vsrc (row stride ld elements) into the
// cache of sequence desc[rseq ? rseq[r] : 0] at `layer`, slot slots ? slots[r] : slot0 + r:
// k_raw = K, k_rot = K rotated at pos[r], v = V. One thread per (row, pair), over every KV
// head: the row's descriptor, slot, block addresses and the pair's angle (sincos) once, not
// once per head (a thread per head made the import of a prompt's cached chunks run at about a
// fifth of the memory's speed; store_kv_blocks() gives the grid). S, the source's element
// type, is float (fresh rows, host imports) or T (a kvblock on the device).
template <typename T, typename S>
__global__ void k_store_kv(const cu_kvdesc *desc, const int32_t *rseq, int layer, const S *ksrc,
                           const S *vsrc, size_t ld, const int32_t *slots, int slot0, const int32_t *pos, int n,
                           int nkv, int hd, const float *inv_freq, int inter)
{
    int half = hd / 2;
    size_t idx = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (idx >= (size_t)n * half)
        return;
    int i = (int)(idx % half);
    int r = (int)(idx / half);
    long long slot = slots ? slots[r] : slot0 + r;
    store_kv_pair<T, S>(desc[rseq ? rseq[r] : 0], layer, slot, ksrc + (size_t)r * ld, vsrc + (size_t)r * ld, pos[r],
                        i, nkv, hd, inv_freq, inter);
}

// One KV block of an import: its canonical layout [layer][K|V][token][kvd] on the device, n
// tokens, going to slots slot0.. at positions pos[pos_off..].
template <typename T> struct cu_import_src {
    const T *src;
    long long slot0;
    int n;
    int pos_off;
};

// Every block of an import and every layer in one launch: grid (pairs of the longest block,
// blocks, layers); block y is srcs[y], layer z is layer0 + z. (A launch per block and layer
// made a 16-chunk prompt's import 512 launches, 4.75 ms for 1 GiB on the H100, 2026-12-07.)
template <typename T>
__global__ void k_import_blocks(const cu_kvdesc *desc, const cu_import_src<T> *srcs, int layer0,
                                const int32_t *pos, int nkv, int hd, const float *inv_freq, int inter)
{
    const cu_import_src<T> sb = srcs[blockIdx.y];
    int half = hd / 2;
    size_t idx = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (idx >= (size_t)sb.n * half)
        return;
    int i = (int)(idx % half);
    int r = (int)(idx / half);
    int layer = layer0 + (int)blockIdx.z;
    size_t kvd = (size_t)nkv * hd, cnt = (size_t)sb.n * kvd;
    const T *k = sb.src + 2 * (size_t)layer * cnt + (size_t)r * kvd;
    store_kv_pair<T, T>(desc[0], layer, sb.slot0 + r, k, k + cnt, pos[sb.pos_off + r], i, nkv, hd, inv_freq, inter);
}

// Blocks of 256 threads for k_store_kv over n rows of head dim hd.
unsigned store_kv_blocks(size_t n, int hd) { return (unsigned)((n * (size_t)(hd / 2) + 255) / 256); }

// dst (n, kvd) in float = rows slot0.. of array arr (KV_RAW, KV_ROT, KV_VAL) of `layer` of the
// paged cache d: a layer's rows made contiguous for cuBLAS and for host copies.
template <typename T>
__global__ void k_gather_rows(float *dst, cu_kvdesc d, int arr, int layer, long long slot0, size_t n, size_t kvd)
{
    size_t idx = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (idx >= n * kvd)
        return;
    size_t r = idx / kvd, j = idx % kvd;
    dst[idx] = to_f(kv_row<const T>(d, arr, layer, slot0 + (long long)r, kvd)[j]);
}

// out (n, H*hd) = q rows of src (stride ld floats) rotated at pos[r]. A thread per (row, pair,
// group of ROPE_HEADS heads): the pair's angle, cosine and sine (accurate: positions reach
// tens of thousands of radians) once for the group's heads instead of once per head; the
// threads of a warp take consecutive pairs, so every head's reads and writes stay coalesced.
constexpr int ROPE_HEADS = 8;
unsigned rope_q_threads(size_t n, int H, int hd) { return (unsigned)(n * (size_t)((H + ROPE_HEADS - 1) / ROPE_HEADS) * (size_t)(hd / 2)); }
template <typename T>
__global__ void k_rope_q(T *out, const float *src, size_t ld, const int32_t *pos, int n, int H, int hd,
                         const float *inv_freq, int inter)
{
    const int half = hd / 2, hg = (H + ROPE_HEADS - 1) / ROPE_HEADS;
    const size_t idx = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (idx >= (size_t)n * hg * half)
        return;
    const int i = (int)(idx % half);
    const int h0 = (int)((idx / half) % hg) * ROPE_HEADS;
    const int r = (int)(idx / half / hg);
    int a, b;
    rope_pair(i, hd, inter, &a, &b);
    float fs, fc;
    sincosf((float)pos[r] * inv_freq[i], &fs, &fc);
#pragma unroll
    for (int k = 0; k < ROPE_HEADS; k++) {
        const int h = h0 + k;
        if (h >= H)
            break;
        const float *q = src + (size_t)r * ld + (size_t)h * hd;
        T *o = out + ((size_t)r * H + h) * hd;
        const float q0 = q[a], q1 = q[b];
        o[a] = from_f<T>(q0 * fc - q1 * fs);
        o[b] = from_f<T>(q0 * fs + q1 * fc);
    }
}

// The reference softmax: exact causal rule by position, slot groups (temperature,
// log-scale), probabilities in place (exactly 0 where masked), optional per-head group mass.
// One block per (query row, head); scores (rows, H, len) hold raw q.k on entry.
__global__ void k_softmax(float *scores_all, const int32_t *spos, int len, const int32_t *qpos, int H, float scale,
                          const int32_t *grp, const float *temp, const float *lscale, int G, float *mass_h,
                          const int32_t *gbounds)
{
    int r = blockIdx.x / H;
    float *sc = scores_all + (size_t)blockIdx.x * len;
    int p = qpos[r];
    float mx = -INFINITY;
    for (int t = threadIdx.x; t < len; t += blockDim.x) {
        float s;
        if (spos[t] > p) {
            s = -INFINITY;
        } else {
            s = sc[t] / scale;
            if (grp && grp[t] >= 0) {
                if (temp)
                    s /= temp[grp[t]];
                if (lscale)
                    s += lscale[grp[t]];
            }
        }
        sc[t] = s;
        mx = fmaxf(mx, s);
    }
    mx = block_max(mx);
    float sum = 0.0f;
    for (int t = threadIdx.x; t < len; t += blockDim.x) {
        float e = (spos[t] > p || mx == -INFINITY) ? 0.0f : expf(sc[t] - mx);
        sc[t] = e;
        sum += e;
    }
    sum = block_sum(sum);
    for (int t = threadIdx.x; t < len; t += blockDim.x)
        sc[t] = sum > 0.0f ? sc[t] / sum : 0.0f;
    if (mass_h) {
        __syncthreads(); // every thread's probabilities are written before the group sums read them
        for (int g = threadIdx.x; g < G; g += blockDim.x) {
            float m = 0.0f;
            int end = gbounds[g + 1] < len ? gbounds[g + 1] : len;
            for (int t = gbounds[g]; t < end; t++)
                m += sc[t];
            mass_h[(size_t)blockIdx.x * G + g] = m;
        }
    }
}

// The attention mass of every (row, group) averaged over heads, summed in head order from 0 and
// divided by H (the CPU backend's order): one thread per (row, group), so that only (n, G)
// floats go to the host, not (n, H, G) — with a group per slot that is H times less to copy
// and to add up there.
__global__ void k_mass_mean(const float *mass_h, size_t n, int H, int G, float *out)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n * (size_t)G)
        return;
    size_t r = i / (size_t)G, g = i % (size_t)G;
    float m = 0.0f;
    for (int h = 0; h < H; h++)
        m += mass_h[(r * (size_t)H + (size_t)h) * (size_t)G + g];
    out[i] = m / (float)H;
}

// k_mass_mean's output (n, G) added row by row, in row order, to a running sum per group
// (acc holds the caller's sums on entry): the floats of adding it up on the host row by row.
__global__ void k_mass_add_rows(const float *mean, size_t n, int G, float *acc)
{
    int g = blockIdx.x * blockDim.x + threadIdx.x;
    if (g >= G)
        return;
    float a = acc[g];
    for (size_t r = 0; r < n; r++)
        a += mean[r * (size_t)G + g];
    acc[g] = a;
}

unsigned blocks(size_t n, unsigned t = 256) { return (unsigned)((n + t - 1) / t); }

// ---- the profiler (RAGKV_CUDA_PROFILE=1) --------------------------------------------------

// Starts timing a layer call of n rows: only eager calls on the legacy stream (a graph capture
// must not be waited on). Any CUDA error turns profiling off; it never fails the call.
void prof_begin(cu_ctx *c, size_t n)
{
    cu_prof *p = &c->prof;
    p->n = 0;
    if (!p->on || c->stream != 0)
        return;
    if (!p->ev[0])
        for (int i = 0; i <= PROF_MARKS; i++)
            if (cudaEventCreate(&p->ev[i]) != cudaSuccess) {
                p->on = false;
                return;
            }
    if (cudaEventRecord(p->ev[0], 0) != cudaSuccess) {
        p->on = false;
        return;
    }
    p->n = 1;
    p->kind = n <= PROF_FEW_ROWS ? 0 : n <= PROF_MID_ROWS ? 1 : 2;
    p->rows[p->kind] += n;
}

// Marks the end of phase ph (the work launched since the previous mark); flops: its matrix
// products' operations (2 m n k), for the report's TFLOP/s.
void prof_mark(cu_ctx *c, prof_phase ph, double flops = 0.0)
{
    cu_prof *p = &c->prof;
    if (!p->n || p->n > PROF_MARKS)
        return;
    if (cudaEventRecord(p->ev[p->n], 0) != cudaSuccess) {
        p->on = false;
        p->n = 0;
        return;
    }
    p->ph[p->n++] = ph;
    p->flops[p->kind][ph] += flops;
}

// Waits for the call's last mark and adds its phases' times.
void prof_end(cu_ctx *c)
{
    cu_prof *p = &c->prof;
    if (p->n < 2) {
        p->n = 0;
        return;
    }
    if (cudaEventSynchronize(p->ev[p->n - 1]) != cudaSuccess) {
        p->on = false;
        p->n = 0;
        return;
    }
    for (int i = 1; i < p->n; i++) {
        float ms = 0.0f;
        if (cudaEventElapsedTime(&ms, p->ev[i - 1], p->ev[i]) == cudaSuccess)
            p->ms[p->kind][p->ph[i]] += ms;
    }
    p->layer_calls[p->kind]++;
    p->n = 0;
}

// Prints the summed phase times to stderr (when any layer call was profiled) and frees the
// events.
void prof_report(cu_ctx *c)
{
    cu_prof *p = &c->prof;
    static const size_t lo[3] = {1, PROF_FEW_ROWS + 1, PROF_MID_ROWS + 1};
    for (int k = 0; k < 3; k++) {
        if (!p->layer_calls[k])
            continue;
        double total = 0.0;
        for (int i = 0; i < PH_N; i++)
            total += p->ms[k][i];
        char span[64];
        if (k < 2)
            snprintf(span, sizeof(span), "%zu to %zu", lo[k], k ? PROF_MID_ROWS : PROF_FEW_ROWS);
        else
            snprintf(span, sizeof(span), "more than %zu", PROF_MID_ROWS);
        fprintf(stderr, "cuda profile: layer calls of %s rows: %llu calls, %llu rows, %.3f ms of GPU time\n", span,
                (unsigned long long)p->layer_calls[k], (unsigned long long)p->rows[k], total);
        fprintf(stderr, "cuda profile: %-14s %12s %12s %7s %9s\n", "phase", "ms", "ms/call", "share", "TFLOP/s");
        for (int i = 0; i < PH_N; i++) {
            if (p->ms[k][i] <= 0.0)
                continue;
            char tf[32] = "";
            if (p->flops[k][i] > 0.0)
                snprintf(tf, sizeof(tf), "%.1f", p->flops[k][i] / (p->ms[k][i] * 1e9));
            fprintf(stderr, "cuda profile: %-14s %12.3f %12.4f %6.1f%% %9s\n", prof_names[i], p->ms[k][i],
                    p->ms[k][i] / (double)p->layer_calls[k], 100.0 * p->ms[k][i] / total, tf);
        }
    }
    for (int i = 0; i <= PROF_MARKS; i++)
        if (p->ev[i])
            cudaEventDestroy(p->ev[i]);
}

// ---- matrix products ----------------------------------------------------------------------

// Column-major C (m x n, fp32) = op(A) op(B) + beta C with A, B of the storage type (fp32 or
// bf16), accumulation in fp32 (tf32 tensor cores in MODE_TF32). beta is 0 or 1: with 1 the
// product is added to C in fp32 (one rounding, as a separate add of an fp32 product would).
cublasStatus_t mm(cu_ctx *c, bool storage, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                  const void *a, int lda, const void *b, int ldb, float *cm, int ldc, float beta = 0.0f)
{
    const float one = 1.0f;
    if (storage && c->mode == MODE_BF16)
        return cublasGemmEx(c->blas, ta, tb, m, n, k, &one, a, CUDA_R_16BF, lda, b, CUDA_R_16BF, ldb, &beta, cm,
                            CUDA_R_32F, ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    if (c->mode == MODE_TF32)
        return cublasGemmEx(c->blas, ta, tb, m, n, k, &one, a, CUDA_R_32F, lda, b, CUDA_R_32F, ldb, &beta, cm,
                            CUDA_R_32F, ldc, CUBLAS_COMPUTE_32F_FAST_TF32, CUBLAS_GEMM_DEFAULT);
    return cublasSgemm(c->blas, ta, tb, m, n, k, &one, (const float *)a, lda, (const float *)b, ldb, &beta, cm, ldc);
}

// Whether a product of n rows of in inputs goes to k_gemv: bf16, at most GEMV_MAX_ROWS rows,
// 16-byte weight rows, and not turned off.
bool gemv_ok(const cu_ctx *c, size_t n, size_t in)
{
    return c->mode == MODE_BF16 && c->gemv && n >= 1 && n <= (size_t)GEMV_MAX_ROWS && in % 8 == 0;
}

// k_gemv for n rows (gemv_ok): y (n, out) of TO = x (n, in) W^T (+ y with acc).
template <typename TO>
rk_status gemv(cu_ctx *c, TO *y, const void *x, const void *w, size_t n, size_t in, size_t out, bool acc)
{
    unsigned g = (unsigned)((out + GEMV_WARPS - 1) / GEMV_WARPS);
    const bf16 *xb = (const bf16 *)x, *wb = (const bf16 *)w;
    const int a = acc, i = (int)in, o = (int)out;
    switch (n) {
    case 1: k_gemv<1, TO><<<g, GEMV_WARPS * 32, 0, c->stream>>>(y, xb, wb, i, o, a); break;
    case 2: k_gemv<2, TO><<<g, GEMV_WARPS * 32, 0, c->stream>>>(y, xb, wb, i, o, a); break;
    case 3: k_gemv<3, TO><<<g, GEMV_WARPS * 32, 0, c->stream>>>(y, xb, wb, i, o, a); break;
    case 4: k_gemv<4, TO><<<g, GEMV_WARPS * 32, 0, c->stream>>>(y, xb, wb, i, o, a); break;
    case 5: k_gemv<5, TO><<<g, GEMV_WARPS * 32, 0, c->stream>>>(y, xb, wb, i, o, a); break;
    case 6: k_gemv<6, TO><<<g, GEMV_WARPS * 32, 0, c->stream>>>(y, xb, wb, i, o, a); break;
    case 7: k_gemv<7, TO><<<g, GEMV_WARPS * 32, 0, c->stream>>>(y, xb, wb, i, o, a); break;
    default: k_gemv<8, TO><<<g, GEMV_WARPS * 32, 0, c->stream>>>(y, xb, wb, i, o, a); break;
    }
    CU(cudaGetLastError(), "gemv");
    return RK_OK;
}

// y (n, out) fp32 = x (n, in) W^T, W (out, in) row-major, x and W of the storage type; with
// acc, y += x W^T instead (the residual adds: y is the hidden state).
rk_status gemm(cu_ctx *c, float *y, const void *x, const void *w, size_t n, size_t in, size_t out, bool acc = false)
{
    if (gemv_ok(c, n, in))
        return gemv(c, y, x, w, n, in, out, acc);
    bool ran = false; // (c->tuner is NULL outside bf16 mode: gemm_tuned then leaves it to cuBLAS)
    TRY(gemm_tuned(c->tuner, c->stream, y, CUDA_R_32F, x, w, n, in, out, acc, &ran));
    if (ran)
        return RK_OK;
    cublasStatus_t s = mm(c, true, CUBLAS_OP_T, CUBLAS_OP_N, (int)out, (int)n, (int)in, w, (int)in, x, (int)in, y,
                          (int)out, acc ? 1.0f : 0.0f);
    return s == CUBLAS_STATUS_SUCCESS ? RK_OK : blas_fail(s, "gemm");
}

// y (n, out) bf16 = x (n, in) W^T in MODE_BF16 (fp32 accumulation, one rounding to bf16 at the
// end): the gate/up product, whose only reader (SwiGLU) takes bf16 at half the traffic.
rk_status gemm_bf16_out(cu_ctx *c, bf16 *y, const void *x, const void *w, size_t n, size_t in, size_t out)
{
    if (gemv_ok(c, n, in)) // (cuBLAS took twice as long as with fp32 output at one row on the H100)
        return gemv(c, y, x, w, n, in, out, false);
    bool ran = false;
    TRY(gemm_tuned(c->tuner, c->stream, y, CUDA_R_16BF, x, w, n, in, out, false, &ran));
    if (ran)
        return RK_OK;
    const float one = 1.0f, zero = 0.0f;
    cublasStatus_t s = cublasGemmEx(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)out, (int)n, (int)in, &one, w,
                                    CUDA_R_16BF, (int)in, x, CUDA_R_16BF, (int)in, &zero, y, CUDA_R_16BF, (int)out,
                                    CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    return s == CUBLAS_STATUS_SUCCESS ? RK_OK : blas_fail(s, "gemm");
}

// ---- sequences ----------------------------------------------------------------------------

size_t kv_dim(const cu_ctx *c) { return (size_t)c->mi->n_kv_heads * c->mi->head_dim; }

// ---- the KV block pool ----------------------------------------------------------------------

constexpr size_t KV_ARENA_BYTES = (size_t)64 << 20; // the pool grows by about this much at a time

// Slots per KV block: RAGKV_CUDA_KV_BLOCK (a power of two 1..4096) or 64; as log2.
rk_status kv_block_shift(int *out)
{
    const char *e = getenv("RAGKV_CUDA_KV_BLOCK");
    long v = 64;
    if (e && *e) {
        char *end = NULL;
        v = strtol(e, &end, 10);
        if (*end || v < 1 || v > 4096 || (v & (v - 1)))
            return rk_error_set(RK_ERR_INVALID, "cuda backend: RAGKV_CUDA_KV_BLOCK=%s: expected a power of two 1..4096",
                                e);
    }
    int sh = 0;
    while ((1L << sh) < v)
        sh++;
    *out = sh;
    return RK_OK;
}

template <typename P> bool grow_array(P **a, size_t *cap, size_t need)
{
    if (need <= *cap)
        return true;
    size_t n = *cap ? *cap : 16;
    while (n < need)
        n *= 2;
    P *q = (P *)rk_realloc(*a, n * sizeof(P));
    if (!q)
        return false;
    *a = q;
    *cap = n;
    return true;
}

// Take a cleared block (finite zeros: attention multiplies unwritten slots by 0) from the pool,
// growing it by an arena when it is empty. Caller holds pool_mu.
rk_status pool_take(cu_ctx *c, void **out)
{
    if (!c->kv_n_free) {
        size_t bb = c->kv_block_bytes, k = KV_ARENA_BYTES / bb;
        k = k < 1 ? 1 : k > 1024 ? 1024 : k;
        if (!grow_array(&c->kv_arenas, &c->kv_cap_arenas, c->kv_n_arenas + 1) ||
            !grow_array(&c->kv_free, &c->kv_cap_free, c->kv_blocks + k))
            return rk_error_set(RK_ERR_NOMEM, "cuda backend: out of host memory");
        void *a = NULL;
        while (cudaMalloc(&a, k * bb) != cudaSuccess) { // short of memory: a smaller arena
            cudaGetLastError();
            a = NULL;
            if (k == 1)
                return rk_error_set(RK_ERR_NOMEM, "cuda backend: no device memory for another KV block of %zu bytes "
                                    "(%zu blocks in use)", bb, c->kv_blocks);
            k /= 2;
        }
        c->kv_arenas[c->kv_n_arenas++] = a;
        for (size_t i = k; i-- > 0;)
            c->kv_free[c->kv_n_free++] = (unsigned char *)a + i * bb;
        c->kv_blocks += k;
    }
    void *b = c->kv_free[c->kv_n_free - 1];
    CU(cudaMemset(b, 0, c->kv_block_bytes), "clearing a KV block");
    c->kv_n_free--;
    *out = b;
    return RK_OK;
}

// Map the blocks of slots [0, s->len) of s (taking them from the pool) and publish them in its
// device block table. Blocks mapped so far stay mapped when this fails.
rk_status kv_map(cu_ctx *c, eng_seq *s)
{
    cu_kv *kv = (cu_kv *)s->ctx;
    size_t need = (s->len + ((size_t)1 << c->kv_bshift) - 1) >> c->kv_bshift, from = kv->mapped;
    if (need <= from)
        return RK_OK;
    rk_status st = RK_OK;
    {
        std::lock_guard<std::mutex> g(*c->pool_mu);
        while (kv->mapped < need && (st = pool_take(c, &kv->hblk[kv->mapped])) == RK_OK)
            kv->mapped++;
    }
    if (kv->mapped > from)
        CU(cudaMemcpy(kv->dblk + from, kv->hblk + from, (kv->mapped - from) * sizeof(void *), cudaMemcpyHostToDevice),
           "block table");
    return st;
}

// Bring the device copy of s's slot positions up to date with engine.c's host copy.
rk_status sync_pos(eng_seq *s)
{
    cu_kv *kv = (cu_kv *)s->ctx;
    if (s->pos_dirty < s->len)
        CU(cudaMemcpy(kv->dpos + s->pos_dirty, s->pos + s->pos_dirty, (s->len - s->pos_dirty) * sizeof(int32_t),
                      cudaMemcpyHostToDevice),
           "slot positions");
    s->pos_dirty = SIZE_MAX;
    return RK_OK;
}

cu_kvdesc desc_of(const cu_ctx *c, const eng_seq *s)
{
    const cu_kv *kv = (const cu_kv *)s->ctx;
    cu_kvdesc d;
    d.blk = kv->dblk;
    d.spos = kv->dpos;
    d.cap = (long long)s->capacity;
    d.len = (int)s->len;
    d.bshift = c->kv_bshift;
    return d;
}

// Blocks mapped and positions synced: s ready for kernels (its host descriptor in *d).
rk_status kv_ready(cu_ctx *c, eng_seq *s, cu_kvdesc *d)
{
    TRY(kv_map(c, s));
    TRY(sync_pos(s));
    if (d)
        *d = desc_of(c, s);
    return RK_OK;
}

// Upload descriptors of n sequences (positions synced first); *out: device array.
rk_status descs_up(cu_ctx *c, eng_seq *const *seqs, size_t n, cu_kvdesc **out)
{
    if (n > c->ddesc_n) {
        cudaFree(c->ddesc);
        c->ddesc = NULL;
        c->ddesc_n = 0;
        CU(cudaMalloc(&c->ddesc, n * sizeof(cu_kvdesc)), "descriptors");
        c->ddesc_n = n;
    }
    cu_kvdesc *h = (cu_kvdesc *)rk_malloc(n * sizeof(cu_kvdesc));
    if (!h)
        return rk_error_set(RK_ERR_NOMEM, "cuda backend: out of host memory");
    rk_status st = RK_OK;
    for (size_t i = 0; i < n && st == RK_OK; i++)
        st = kv_ready(c, seqs[i], &h[i]);
    cudaError_t e = st == RK_OK ? cudaMemcpy(c->ddesc, h, n * sizeof(cu_kvdesc), cudaMemcpyHostToDevice) : cudaSuccess;
    rk_free(h);
    if (st != RK_OK)
        return st;
    if (e != cudaSuccess)
        return cuda_fail(e, "descriptors");
    *out = c->ddesc;
    return RK_OK;
}

// ---- attention ----------------------------------------------------------------------------

// Which attention a layer-granular call uses.
enum attn_path { PATH_REFERENCE, PATH_FLASH, PATH_DECODE };

constexpr size_t DECODE_ROWS = 16; // at most this many rows: the split-key kernel

// Rows up to which a layer call takes the split-key decode kernel instead of flash:
// DECODE_ROWS, or RAGKV_ATTN_DECODE_ROWS (read at every call; 0: flash for every call it
// supports), which lets tests drive the flash kernels with a few rows.
size_t decode_rows_max()
{
    const char *e = getenv("RAGKV_ATTN_DECODE_ROWS");
    if (!e || !*e)
        return DECODE_ROWS;
    long v = strtol(e, NULL, 10);
    return v < 0 ? 0 : v > (long)DECODE_ROWS ? DECODE_ROWS : (size_t)v;
}

// Whether a layer that reports attention mass keeps its fused attention kernel and takes the
// mass from attn_scores and the reference softmax (bf16 storage, the head dims the scores
// kernel takes), or runs the reference path for everything: RAGKV_ATTN_MASS=reference (read
// at every call) forces the latter, to compare the two.
bool mass_fast(const cu_ctx *c)
{
    const eng_model_info *mi = c->mi;
    const char *e = getenv("RAGKV_ATTN_MASS");
    if (e && strcmp(e, "reference") == 0)
        return false;
    return c->mode == MODE_BF16 && attn_scores_supported(mi->head_dim, mi->n_heads, mi->n_kv_heads);
}

attn_path choose_path(const cu_ctx *c, size_t n, const eng_attn_groups *ag)
{
    const eng_model_info *mi = c->mi;
    if (c->mode != MODE_BF16 || (ag && ag->mass && !mass_fast(c)))
        return PATH_REFERENCE;
    if (n > decode_rows_max() && attn_flash_supported(mi->head_dim, mi->n_heads, mi->n_kv_heads))
        return PATH_FLASH;
    if (mi->n_heads / mi->n_kv_heads <= ATTN_MAX_GROUP)
        return PATH_DECODE;
    return PATH_REFERENCE;
}

// Reference attention in fp32 over rows in chunks (bounded scores memory):
// att (n, H*hd) = softmax(mask(q k^T / sqrt(hd))) v, k/v rows kvd floats apart.
struct ref_args {
    const float *q, *k, *v;
    float *att;
    size_t n, len;
    const int32_t *dqpos, *dspos, *dgrp, *dgb;
    const float *dtemp, *dls;
    size_t G;
    float *dmass; // (n, H, G) or NULL
    float *scores;
    size_t chunk; // rows per chunk
};

rk_status attn_reference(cu_ctx *c, const ref_args *a)
{
    const eng_model_info *mi = c->mi;
    int H = mi->n_heads, hd = mi->head_dim, group = mi->n_heads / mi->n_kv_heads;
    int kvd = (int)kv_dim(c);
    size_t len = a->len;
    for (size_t r0 = 0; r0 < a->n; r0 += a->chunk) {
        size_t n = a->n - r0 < a->chunk ? a->n - r0 : a->chunk;
        const float *q = a->q + r0 * H * hd;
        float *att = a->att + r0 * H * hd;
        for (int h = 0; h < H; h++) {
            size_t kvo = (size_t)(h / group) * hd;
            // scores[(r*H + h)*len + t] = k_t . q_r : (len x n) = K (len x hd) . Q^T
            cublasStatus_t st = mm(c, false, CUBLAS_OP_T, CUBLAS_OP_N, (int)len, (int)n, hd, a->k + kvo, kvd,
                                   q + (size_t)h * hd, H * hd, a->scores + (size_t)h * len, (int)(H * len));
            if (st != CUBLAS_STATUS_SUCCESS)
                return blas_fail(st, "attention scores");
        }
        k_softmax<<<(unsigned)(n * H), 256>>>(a->scores, a->dspos, (int)len, a->dqpos + r0, H, sqrtf((float)hd),
                                              a->dgrp, a->dtemp, a->dls, (int)a->G,
                                              a->dmass ? a->dmass + r0 * H * a->G : NULL, a->dgb);
        CHECK_LAUNCH("attention softmax");
        for (int h = 0; h < H; h++) {
            size_t kvo = (size_t)(h / group) * hd;
            // att[(r*H + h)*hd + i] = sum_t p[r,h,t] v_t[i] : (hd x n) = V^T (hd x len) . P (len x n)
            cublasStatus_t st = mm(c, false, CUBLAS_OP_N, CUBLAS_OP_N, hd, (int)n, (int)len, a->v + kvo, kvd,
                                   a->scores + (size_t)h * len, (int)(H * len), att + (size_t)h * hd, H * hd);
            if (st != CUBLAS_STATUS_SUCCESS)
                return blas_fail(st, "attention values");
        }
    }
    return RK_OK;
}

// ---- the interface ----------------------------------------------------------------------

void cu_free(void *ctx)
{
    cu_ctx *c = (cu_ctx *)ctx;
    if (!c)
        return;
    cu_enter(ctx); // best effort: a release cannot fail
    prof_report(c);
    for (size_t i = 0; i < c->n_owned; i++)
        cudaFree(c->owned[i]);
    cudaFree(c->scratch);
    cudaFree(c->iscratch);
    cudaFree(c->ddesc);
    cudaFree(c->xdec);
    cudaFree(c->srows);
    cudaFree(c->sout);
    for (size_t i = 0; i < c->kv_n_arenas; i++)
        cudaFree(c->kv_arenas[i]);
    rk_free(c->kv_arenas);
    for (size_t i = 0; i < c->blk_n; i++)
        cudaFree(c->blk_cache[i].p);
    rk_free(c->blk_cache);
    rk_free(c->kv_free);
    delete c->pool_mu;
    for (int i = 0; i < DECODE_GRAPHS; i++)
        if (c->graphs[i].exec)
            cudaGraphExecDestroy(c->graphs[i].exec);
    if (c->gready)
        cudaEventDestroy(c->gready);
    if (c->gstream)
        cudaStreamDestroy(c->gstream);
    if (c->blas)
        cublasDestroy(c->blas);
    cudaFree(c->blas_ws);
    gemm_tuner_free(c->tuner);
    rk_free(c->owned);
    rk_free(c->layers);
    rk_free(c);
}

// Return kv's blocks to the pool (after the work that may still read them) and free the rest.
void kv_free(cu_ctx *c, cu_kv *kv)
{
    if (kv->mapped) {
        // kernels of this backend's streams may still use the blocks: wait for them before
        // another sequence can take and clear one (best effort: a release cannot fail)
        cudaStreamSynchronize(0);
        if (c->gstream)
            cudaStreamSynchronize(c->gstream);
        cudaGetLastError();
        std::lock_guard<std::mutex> g(*c->pool_mu);
        for (size_t i = 0; i < kv->mapped; i++) // kv_free has room for every block of the pool
            c->kv_free[c->kv_n_free++] = kv->hblk[i];
    }
    cudaFree(kv->dblk);
    cudaFree(kv->dpos);
    rk_free(kv->hblk);
    rk_free(kv);
}

rk_status cu_seq_init(void *ctx, eng_seq *s)
{
    TRY(cu_enter(ctx));
    cu_ctx *c = (cu_ctx *)ctx;
    cu_kv *kv = (cu_kv *)rk_calloc(1, sizeof(*kv));
    if (!kv)
        return rk_error_set(RK_ERR_NOMEM, "cuda backend: out of host memory");
    kv->nblk = (s->capacity + ((size_t)1 << c->kv_bshift) - 1) >> c->kv_bshift;
    kv->hblk = (void **)rk_calloc(kv->nblk, sizeof(void *));
    if (!kv->hblk) {
        kv_free(c, kv);
        return rk_error_set(RK_ERR_NOMEM, "cuda backend: out of host memory");
    }
    if (cudaMalloc(&kv->dblk, kv->nblk * sizeof(void *)) != cudaSuccess ||
        cudaMalloc(&kv->dpos, s->capacity * sizeof(int32_t)) != cudaSuccess) {
        cudaGetLastError();
        kv_free(c, kv);
        return rk_error_set(RK_ERR_NOMEM, "cuda backend: no device memory for a sequence of %zu slots", s->capacity);
    }
    // no block yet (the table's entries are set as blocks are mapped); positions above any
    // real one (0x7f7f7f7f) so that unwritten slots are never visible
    if (cudaMemset(kv->dblk, 0, kv->nblk * sizeof(void *)) != cudaSuccess ||
        cudaMemset(kv->dpos, 0x7f, s->capacity * sizeof(int32_t)) != cudaSuccess) {
        cudaGetLastError();
        kv_free(c, kv);
        return rk_error_set(RK_ERR_DEVICE, "cuda backend: clearing a sequence failed");
    }
    s->ctx = kv;
    return RK_OK;
}

void cu_seq_release(void *ctx, eng_seq *s)
{
    cu_enter(ctx); // best effort: a release cannot fail
    if (s->ctx)
        kv_free((cu_ctx *)ctx, (cu_kv *)s->ctx);
    s->ctx = NULL;
}

rk_status cu_hidden_init(void *ctx, eng_hidden *h)
{
    TRY(cu_enter(ctx));
    cu_ctx *c = (cu_ctx *)ctx;
    void *p = NULL;
    if (cudaMalloc(&p, (h->rows ? h->rows : 1) * (size_t)c->mi->dim * sizeof(float)) != cudaSuccess) {
        cudaGetLastError();
        return rk_error_set(RK_ERR_NOMEM, "cuda backend: no device memory for %zu hidden rows", h->rows);
    }
    h->ctx = p;
    return RK_OK;
}

void cu_hidden_release(void *ctx, eng_hidden *h)
{
    cu_enter(ctx); // best effort: a release cannot fail
    (void)ctx;
    cudaFree(h->ctx);
    h->ctx = NULL;
}

rk_status cu_hidden_write(void *ctx, eng_hidden *h, size_t row0, size_t n, const float *src)
{
    TRY(cu_enter(ctx));
    cu_ctx *c = (cu_ctx *)ctx;
    size_t d = (size_t)c->mi->dim;
    CU(cudaMemcpy((float *)h->ctx + row0 * d, src, n * d * sizeof(float), cudaMemcpyHostToDevice), "hidden write");
    return RK_OK;
}

rk_status cu_hidden_read(void *ctx, const eng_hidden *h, size_t row0, size_t n, float *dst)
{
    TRY(cu_enter(ctx));
    cu_ctx *c = (cu_ctx *)ctx;
    size_t d = (size_t)c->mi->dim;
    CU(cudaMemcpy(dst, (const float *)h->ctx + row0 * d, n * d * sizeof(float), cudaMemcpyDeviceToHost), "hidden read");
    return RK_OK;
}

rk_status cu_hidden_gather(void *ctx, eng_hidden *dst, const eng_hidden *src, const size_t *idx, size_t n)
{
    TRY(cu_enter(ctx));
    cu_ctx *c = (cu_ctx *)ctx;
    if (n == 0)
        return RK_OK;
    int32_t *hidx = (int32_t *)rk_malloc(n * sizeof(int32_t));
    if (!hidx)
        return rk_error_set(RK_ERR_NOMEM, "cuda backend: out of host memory");
    for (size_t i = 0; i < n; i++)
        hidx[i] = (int32_t)idx[i];
    int32_t *didx;
    rk_status st = ints_up(c, hidx, n, 0, &didx);
    rk_free(hidx);
    if (st != RK_OK)
        return st;
    int d = c->mi->dim;
    if (dst->ctx == src->ctx) { // in place: gather through scratch
        unsigned char *tmp = NULL;
        TRY(scratch(c, n * d * sizeof(float), &tmp));
        k_gather<<<blocks(n * d), 256>>>((float *)tmp, (const float *)src->ctx, didx, (int)n, d);
        CHECK_LAUNCH("gather");
        CU(cudaMemcpy(dst->ctx, tmp, n * d * sizeof(float), cudaMemcpyDeviceToDevice), "gather copy");
        return RK_OK;
    }
    k_gather<<<blocks(n * d), 256>>>((float *)dst->ctx, (const float *)src->ctx, didx, (int)n, d);
    CHECK_LAUNCH("gather");
    return RK_OK;
}

template <typename T>
rk_status embed_rows(cu_ctx *c, float *x, const int32_t *dtok, size_t n)
{
    int d = c->mi->dim;
    k_embed<T><<<blocks(n * d), 256, 0, c->stream>>>(x, (const T *)c->tok_emb, dtok, (int)n, d);
    CHECK_LAUNCH("embed");
    return RK_OK;
}

rk_status cu_embed(void *ctx, eng_hidden *h, size_t row0, const int32_t *tokens, size_t n)
{
    TRY(cu_enter(ctx));
    cu_ctx *c = (cu_ctx *)ctx;
    if (n == 0)
        return RK_OK;
    int32_t *dt = NULL;
    TRY(ints_up(c, tokens, n, 0, &dt));
    float *x = (float *)h->ctx + row0 * c->mi->dim;
    return c->mode == MODE_BF16 ? embed_rows<bf16>(c, x, dt, n) : embed_rows<float>(c, x, dt, n);
}

// Everything one layer needs for n rows, whichever way it was called.
struct layer_call {
    int layer;
    float *x;                 // (n, d) hidden states, in place
    size_t n;
    const int32_t *dpos;      // (n) positions (device)
    const int32_t *dslots;    // (n) slots (device)
    const cu_kvdesc *ddesc;   // sequences (device)
    const int32_t *drseq;     // (n) sequence of each row, NULL: all ddesc[0]
    int max_len;              // largest len among the sequences
    eng_seq *s;               // the single sequence (layer-granular call), NULL in batched decode
    float *k_fresh, *v_fresh; // host outputs or NULL
    const eng_attn_groups *ag;
    bool kv_only;             // stop once K/V are stored (eng_layer_kv; x unchanged)
};

// The per-head masses (n, H, G) on the device to the caller's ag->mass: the mean over heads
// per (row, group), in head order (as the CPU backend), copied out, or with mass_add_rows
// added row by row to the caller's sums (G floats each way). dmean: n * G + G floats.
rk_status mass_out(const eng_attn_groups *ag, const float *dmass, float *dmean, size_t n, size_t H, size_t G)
{
    if (ag->mass_add_rows) {
        float *dsum = dmean + n * G; // after the (n, G) means
        cudaError_t e = cudaMemcpy(dsum, ag->mass, G * sizeof(float), cudaMemcpyHostToDevice);
        if (e == cudaSuccess && n > 0 && G > 0) {
            k_mass_mean<<<blocks(n * G), 256>>>(dmass, n, (int)H, (int)G, dmean);
            k_mass_add_rows<<<blocks(G), 256>>>(dmean, n, (int)G, dsum);
            CHECK_LAUNCH("attention mass");
        }
        if (e != cudaSuccess || (e = cudaMemcpy(ag->mass, dsum, G * sizeof(float), cudaMemcpyDeviceToHost)) != cudaSuccess)
            return cuda_fail(e, "attention mass");
        return RK_OK;
    }
    if (n > 0 && G > 0) {
        k_mass_mean<<<blocks(n * G), 256>>>(dmass, n, (int)H, (int)G, dmean);
        CHECK_LAUNCH("attention mass");
    }
    cudaError_t e = cudaMemcpy(ag->mass, dmean, n * G * sizeof(float), cudaMemcpyDeviceToHost);
    if (e != cudaSuccess)
        return cuda_fail(e, "attention mass");
    return RK_OK;
}

// Rows per pass of a (rows, H, len) float32 scores buffer: ~512 MiB at most, at least one row.
size_t score_rows(size_t n, size_t H, size_t len)
{
    size_t per_row = H * (len ? len : 1) * sizeof(float);
    size_t ch = ((size_t)512 << 20) / per_row;
    return ch < 1 ? 1 : ch > n ? n : ch;
}

// Bytes of scratch a layer of n rows needs on the given attention path (mass: the call
// reports attention mass over G groups). *chunk: rows per pass of the scores buffer.
size_t layer_scratch(const cu_ctx *c, size_t n, size_t len, attn_path path, size_t G, bool mass, size_t *chunk)
{
    const eng_model_info *mi = c->mi;
    size_t d = mi->dim, qd = (size_t)mi->n_heads * mi->head_dim, kvd = kv_dim(c), f = mi->hidden, H = mi->n_heads;
    size_t es = esize(c);
    carver cv;
    cv.take<unsigned char>(n * d * es);                           // xb
    cv.take<float>(n * (qd + 2 * kvd));                           // qkv
    cv.take<unsigned char>(n * qd * es);                          // q (rotated)
    cv.take<unsigned char>(n * qd * es);                          // att
    cv.take<float>(n * (d > 2 * f ? d : 2 * f));                  // y
    cv.take<unsigned char>(n * f * es);                           // hb
    cv.take<float>(2 * G + 2);                                    // temperature, log-scale
    *chunk = n;
    if (path == PATH_REFERENCE) {
        *chunk = score_rows(n, H, len);
        cv.take<float>(*chunk * H * len);                         // scores
        cv.take<float>(n * H * G + 1);                            // mass
        cv.take<float>(n * G + G + 1);                            // mass, mean over heads; sums
        cv.take<float>(2 * len * kvd);                            // k, v fp32, contiguous
        if (c->mode == MODE_BF16) {
            cv.take<float>(n * qd);                               // q fp32
            cv.take<float>(n * qd);                               // att fp32
        }
    } else {
        if (path == PATH_DECODE)
            cv.take<float>(attn_decode_part_floats((int)n, (int)H, mi->n_kv_heads, mi->head_dim, (int)len));
        else
            cv.take<float>(attn_flash_part_floats((int)n, (int)H, mi->head_dim, (int)len));
        if (mass) { // attn_scores, then the reference softmax's masses (layer_run's order)
            *chunk = score_rows(n, H, len);
            cv.take<float>(*chunk * H * len);                     // scores
            cv.take<float>(n * H * G + 1);                        // mass
            cv.take<float>(n * G + G + 1);                        // mass, mean over heads; sums
        }
    }
    return cv.off;
}

template <typename T>
rk_status layer_run(cu_ctx *c, const layer_call *lc, attn_path path)
{
    const eng_model_info *mi = c->mi;
    const cu_layer *w = &c->layers[lc->layer];
    size_t n = lc->n, d = (size_t)mi->dim, hd = (size_t)mi->head_dim, H = (size_t)mi->n_heads, qd = H * hd,
           kvd = kv_dim(c), f = (size_t)mi->hidden, qkvd = qd + 2 * kvd;
    size_t len = (size_t)lc->max_len;
    const eng_attn_groups *ag = lc->ag;
    size_t G = ag ? ag->n_groups : 0;
    size_t chunk = n;
    size_t need = layer_scratch(c, n, len, path, G, ag && ag->mass, &chunk);
    unsigned char *base = NULL;
    TRY(scratch(c, need, &base));
    carver cv;
    cv.base = base;
    T *xb = cv.take<T>(n * d);
    float *qkv = cv.take<float>(n * qkvd);
    T *q = cv.take<T>(n * qd);
    T *att = cv.take<T>(n * qd);
    float *y = cv.take<float>(n * (d > 2 * f ? d : 2 * f));
    T *hb = cv.take<T>(n * f);
    float *gp = cv.take<float>(2 * G + 2);
    int inter = mi->rope == ENG_ROPE_INTERLEAVED;
    prof_begin(c, n);

    // attention block: norm, q/k/v in one product, bias, cache writes with RoPE
    k_add_rmsnorm<T><<<(unsigned)n, 256, 0, c->stream>>>(xb, lc->x, NULL, w->attn_norm, NULL, (int)d, mi->norm_eps);
    CHECK_LAUNCH("rmsnorm");
    prof_mark(c, PH_NORM);
    TRY(gemm(c, qkv, xb, w->wqkv, n, d, qkvd));
    if (w->bqkv) {
        k_add_bias<<<blocks(n * qkvd), 256, 0, c->stream>>>(qkv, w->bqkv, n * qkvd, (int)qkvd);
        CHECK_LAUNCH("bias");
    }
    prof_mark(c, PH_QKV, 2.0 * n * d * qkvd);
    if (lc->k_fresh)
        CU(cudaMemcpy2D(lc->k_fresh, kvd * sizeof(float), qkv + qd, qkvd * sizeof(float), kvd * sizeof(float), n,
                        cudaMemcpyDeviceToHost),
           "fresh K");
    if (lc->v_fresh)
        CU(cudaMemcpy2D(lc->v_fresh, kvd * sizeof(float), qkv + qd + kvd, qkvd * sizeof(float), kvd * sizeof(float),
                        n, cudaMemcpyDeviceToHost),
           "fresh V");
    k_store_kv<T><<<store_kv_blocks(n, (int)hd), 256, 0, c->stream>>>(lc->ddesc, lc->drseq, lc->layer, qkv + qd,
                                                                   qkv + qd + kvd, qkvd, lc->dslots, 0, lc->dpos,
                                                                   (int)n, mi->n_kv_heads, (int)hd, c->inv_freq, inter);
    CHECK_LAUNCH("cache write");
    prof_mark(c, PH_STORE);
    if (lc->kv_only) {
        prof_end(c);
        return RK_OK;
    }

    // group parameters (layer-granular calls only)
    const int32_t *dgrp = NULL, *dgb = NULL;
    float *dtemp = NULL, *dls = NULL;
    if (ag) {
        // ints after the call's positions and slots (2n) in the int scratch
        int32_t *hg = (int32_t *)rk_malloc((len + G + 1) * sizeof(int32_t));
        if (!hg)
            return rk_error_set(RK_ERR_NOMEM, "cuda backend: out of host memory");
        for (size_t t = 0; t < len; t++)
            hg[t] = -1;
        for (size_t g = 0; g < G; g++)
            for (size_t t = ag->bounds[g]; t < ag->bounds[g + 1] && t < len; t++)
                hg[t] = (int32_t)g;
        for (size_t g = 0; g <= G; g++)
            hg[len + g] = (int32_t)ag->bounds[g];
        int32_t *dg = NULL;
        rk_status st = ints_up(c, hg, len + G + 1, 2 * n, &dg);
        rk_free(hg);
        TRY(st);
        dgrp = dg;
        dgb = dg + len;
        dtemp = ag->temperature ? gp : NULL;
        dls = ag->log_scale ? gp + G : NULL;
        if (dtemp)
            CU(cudaMemcpy(dtemp, ag->temperature, G * sizeof(float), cudaMemcpyHostToDevice), "temperature");
        if (dls)
            CU(cudaMemcpy(dls, ag->log_scale, G * sizeof(float), cudaMemcpyHostToDevice), "log-scale");
    }

    if (path == PATH_REFERENCE) {
        size_t chunk_rows = chunk;
        float *scores = cv.take<float>(chunk_rows * H * len);
        float *dmass = cv.take<float>(n * H * G + 1);
        float *dmean = cv.take<float>(n * G + G + 1);
        cu_kv *kv = (cu_kv *)lc->s->ctx;
        const cu_kvdesc dh = desc_of(c, lc->s);
        ref_args ra;
        memset(&ra, 0, sizeof(ra));
        float *qf, *kf, *vf, *attf;
        kf = cv.take<float>(2 * len * kvd); // the layer's rows, contiguous (and widened)
        vf = kf + len * kvd;
        if (sizeof(T) == sizeof(float)) {
            qf = (float *)q;
            attf = (float *)att;
        } else {
            qf = cv.take<float>(n * qd);
            attf = cv.take<float>(n * qd);
        }
        if (len) {
            k_gather_rows<T><<<blocks(len * kvd), 256>>>(kf, dh, KV_ROT, lc->layer, 0, len, kvd);
            k_gather_rows<T><<<blocks(len * kvd), 256>>>(vf, dh, KV_VAL, lc->layer, 0, len, kvd);
            CHECK_LAUNCH("gather cache");
        }
        k_rope_q<float><<<blocks(rope_q_threads(n, (int)H, (int)hd)), 256>>>(qf, qkv, qkvd, lc->dpos, (int)n, (int)H, (int)hd,
                                                           c->inv_freq, inter);
        CHECK_LAUNCH("rope q");
        ra.q = qf;
        ra.k = kf;
        ra.v = vf;
        ra.att = attf;
        ra.n = n;
        ra.len = len;
        ra.dqpos = lc->dpos;
        ra.dspos = kv->dpos;
        ra.dgrp = dgrp;
        ra.dgb = dgb;
        ra.dtemp = dtemp;
        ra.dls = dls;
        ra.G = G;
        ra.dmass = ag && ag->mass ? dmass : NULL;
        ra.scores = scores;
        ra.chunk = chunk_rows;
        TRY(attn_reference(c, &ra));
        if (sizeof(T) != sizeof(float)) {
            k_convert<float, T><<<blocks(n * qd), 256>>>(att, attf, n * qd);
            CHECK_LAUNCH("narrow attention");
        }
        if (ag && ag->mass)
            TRY(mass_out(ag, dmass, dmean, n, H, G));
    } else {
        size_t nf = path == PATH_DECODE ? attn_decode_part_floats((int)n, (int)H, mi->n_kv_heads, (int)hd, (int)len)
                                        : attn_flash_part_floats((int)n, (int)H, (int)hd, (int)len);
        float *part = nf ? cv.take<float>(nf) : NULL;
        k_rope_q<T><<<blocks(rope_q_threads(n, (int)H, (int)hd)), 256, 0, c->stream>>>(q, qkv, qkvd, lc->dpos, (int)n, (int)H, (int)hd, c->inv_freq,
                                                       inter);
        CHECK_LAUNCH("rope q");
        prof_mark(c, PH_ROPE);
        cu_attn_shape sh;
        sh.n = (int)n;
        sh.H = (int)H;
        sh.KVH = mi->n_kv_heads;
        sh.hd = (int)hd;
        sh.scale = 1.0f / sqrtf((float)hd);
        sh.qpos = lc->dpos;
        sh.grp = dgrp;
        sh.temp = dtemp;
        sh.lscale = dls;
        sh.lazy = 0.0f;
        cudaError_t e;
        if (path == PATH_FLASH) {
            const cu_kvdesc dh = desc_of(c, lc->s);
            e = attn_flash(&sh, (const bf16 *)q, &dh, lc->layer, (int)len, part, (bf16 *)att);
        } else {
            e = attn_decode<T>(&sh, q, lc->ddesc, lc->drseq, lc->layer, (int)len, part, att, c->stream);
        }
        if (e != cudaSuccess)
            return cuda_fail(e, "attention");
        if (ag && ag->mass) { // the fused kernels' output stands; the masses come from the same q and K
            if (sizeof(T) != sizeof(bf16)) // (mass_fast: bf16 storage only)
                return rk_error_set(RK_ERR_INTERNAL, "cuda backend: attention mass without bf16 storage");
            float *scores = cv.take<float>(chunk * H * len);
            float *dmass = cv.take<float>(n * H * G + 1);
            float *dmean = cv.take<float>(n * G + G + 1);
            const cu_kvdesc dh = desc_of(c, lc->s);
            const int32_t *dspos = ((cu_kv *)lc->s->ctx)->dpos;
            for (size_t r0 = 0; r0 < n; r0 += chunk) {
                size_t m = n - r0 < chunk ? n - r0 : chunk;
                cu_attn_shape sc = sh;
                sc.n = (int)m;
                e = attn_scores(&sc, reinterpret_cast<const bf16 *>(q) + r0 * qd, &dh, lc->layer, (int)len, scores,
                                c->stream);
                if (e != cudaSuccess)
                    return cuda_fail(e, "attention mass scores");
                if (G > 0) {
                    k_softmax<<<(unsigned)(m * H), 256, 0, c->stream>>>(scores, dspos, (int)len, lc->dpos + r0, (int)H,
                                                                       sqrtf((float)hd), dgrp, dtemp, dls, (int)G,
                                                                       dmass + r0 * H * G, dgb);
                    CHECK_LAUNCH("attention mass softmax");
                }
            }
            TRY(mass_out(ag, dmass, dmean, n, H, G));
        }
    }
    // attention operations if the rows are the last n of len positions, causal: 4 hd per
    // visible (query head, key) pair
    // (a batched decode call's rows are of different sequences: an estimate there)
    {
        double before = len > n ? (double)(len - n) : 0.0;
        prof_mark(c, PH_ATTN, 4.0 * (double)hd * (double)H * ((double)n * before + 0.5 * n * (n + 1.0)));
    }

    // output projection, residual + norm, FFN, residual
    // the residual adds are the products' own (x += ... in fp32, beta 1): no separate pass
    TRY(gemm(c, lc->x, att, w->wo, n, qd, d, true));
    prof_mark(c, PH_WO, 2.0 * n * qd * d);
    k_add_rmsnorm<T><<<(unsigned)n, 256, 0, c->stream>>>(xb, lc->x, NULL, w->ffn_norm, NULL, (int)d, mi->norm_eps);
    CHECK_LAUNCH("norm");
    prof_mark(c, PH_NORM2);
    if (c->mode == MODE_BF16) { // gate/up rounded to bf16 once, as the SwiGLU input
        TRY(gemm_bf16_out(c, (bf16 *)y, xb, w->w13, n, d, 2 * f));
        prof_mark(c, PH_W13, 2.0 * n * d * 2 * f);
        k_swiglu<T, bf16><<<(unsigned)n, 256, 0, c->stream>>>(hb, (const bf16 *)y, (int)f);
    } else {
        TRY(gemm(c, y, xb, w->w13, n, d, 2 * f));
        prof_mark(c, PH_W13, 2.0 * n * d * 2 * f);
        k_swiglu<T, float><<<(unsigned)n, 256, 0, c->stream>>>(hb, y, (int)f);
    }
    CHECK_LAUNCH("swiglu");
    prof_mark(c, PH_SWIGLU);
    TRY(gemm(c, lc->x, hb, w->w2, n, f, d, true));
    prof_mark(c, PH_W2, 2.0 * n * f * d);
    prof_end(c);
    return RK_OK;
}

rk_status run_layer(cu_ctx *c, const layer_call *lc, attn_path path)
{
    return c->mode == MODE_BF16 ? layer_run<bf16>(c, lc, path) : layer_run<float>(c, lc, path);
}

// The layer call both entry points make for one sequence's rows.
rk_status layer_of_seq(cu_ctx *c, eng_seq *s, int layer, const eng_hidden *hid, size_t n, const int32_t *pos,
                       const int32_t *slots, float *k_fresh, float *v_fresh, const eng_attn_groups *ag, bool kv_only)
{
    size_t G = ag ? ag->n_groups : 0;
    // ints: pos (n), slots (n), then group per slot (len) and bounds (G+1); reserved at once
    // (growing the scratch would move what ints_up handed out before)
    int32_t *ibase = NULL, *dpos = NULL, *dslots = NULL;
    TRY(iscratch(c, 2 * n + s->len + G + 1, &ibase));
    TRY(ints_up(c, pos, n, 0, &dpos));
    TRY(ints_up(c, slots, n, n, &dslots));
    cu_kvdesc *dd;
    TRY(descs_up(c, &s, 1, &dd));
    layer_call lc;
    lc.layer = layer;
    lc.x = (float *)hid->ctx;
    lc.n = n;
    lc.dpos = dpos;
    lc.dslots = dslots;
    lc.ddesc = dd;
    lc.drseq = NULL;
    lc.max_len = (int)s->len;
    lc.s = s;
    lc.k_fresh = k_fresh;
    lc.v_fresh = v_fresh;
    lc.ag = ag;
    lc.kv_only = kv_only;
    TRY(run_layer(c, &lc, choose_path(c, n, ag)));
    CU(cudaStreamSynchronize(0), "layer");
    return RK_OK;
}

rk_status cu_layer_forward(void *ctx, eng_seq *s, int layer, eng_hidden *hid, size_t n, const int32_t *pos,
                           const int32_t *slots, float *k_fresh, float *v_fresh, const eng_attn_groups *ag)
{
    TRY(cu_enter(ctx));
    return layer_of_seq((cu_ctx *)ctx, s, layer, hid, n, pos, slots, k_fresh, v_fresh, ag, false);
}

rk_status cu_layer_kv(void *ctx, eng_seq *s, int layer, const eng_hidden *hid, size_t n, const int32_t *pos,
                      const int32_t *slots)
{
    TRY(cu_enter(ctx));
    return layer_of_seq((cu_ctx *)ctx, s, layer, hid, n, pos, slots, NULL, NULL, NULL, true);
}

size_t logits_scratch(const cu_ctx *c, size_t n)
{
    carver sz;
    sz.take<unsigned char>(n * (size_t)c->mi->dim * esize(c));
    sz.take<float>(n * (size_t)c->mi->vocab);
    return sz.off;
}

// *lg (n, vocab) device, in the scratch = classifier(final_norm(x[rows])) for device hidden rows.
template <typename T>
rk_status logits_compute(cu_ctx *c, const float *x, const int32_t *drows, size_t n, float **lg)
{
    size_t d = (size_t)c->mi->dim, V = (size_t)c->mi->vocab;
    unsigned char *base = NULL;
    TRY(scratch(c, logits_scratch(c, n), &base));
    carver cv;
    cv.base = base;
    T *xn = cv.take<T>(n * d);
    *lg = cv.take<float>(n * V);
    k_add_rmsnorm<T><<<(unsigned)n, 256, 0, c->stream>>>(xn, (float *)x, NULL, c->final_norm, drows, (int)d,
                                                         c->mi->norm_eps);
    CHECK_LAUNCH("final norm");
    TRY(gemm(c, *lg, xn, c->wcls, n, d, V));
    return RK_OK;
}

// logits (n, vocab) host = classifier(final_norm(x[rows])) for device hidden rows.
template <typename T>
rk_status logits_rows(cu_ctx *c, const float *x, const int32_t *drows, size_t n, float *logits)
{
    float *lg = NULL;
    TRY(logits_compute<T>(c, x, drows, n, &lg));
    CU(cudaMemcpy(logits, lg, n * (size_t)c->mi->vocab * sizeof(float), cudaMemcpyDeviceToHost), "logits");
    return RK_OK;
}

rk_status cu_logits(void *ctx, const eng_hidden *h, const size_t *rows, size_t n, float *logits)
{
    TRY(cu_enter(ctx));
    cu_ctx *c = (cu_ctx *)ctx;
    if (n == 0)
        return RK_OK;
    int32_t *drows = NULL;
    if (rows) {
        int32_t *hr = (int32_t *)rk_malloc(n * sizeof(int32_t));
        if (!hr)
            return rk_error_set(RK_ERR_NOMEM, "cuda backend: out of host memory");
        for (size_t i = 0; i < n; i++)
            hr[i] = (int32_t)rows[i];
        rk_status st = ints_up(c, hr, n, 0, &drows);
        rk_free(hr);
        TRY(st);
    }
    const float *x = (const float *)h->ctx;
    return c->mode == MODE_BF16 ? logits_rows<bf16>(c, x, drows, n, logits) : logits_rows<float>(c, x, drows, n, logits);
}

// The decode step's device work (embedding, every layer, classifier) on c->stream; *lg: the
// logits in the scratch.
template <typename T>
rk_status decode_body(cu_ctx *c, float *x, const int32_t *dtok, const int32_t *dpos, const int32_t *dslots,
                      cu_kvdesc *dd, const int32_t *drseq, size_t n, int max_len, float **lg)
{
    layer_call lc;
    memset(&lc, 0, sizeof(lc));
    lc.x = x;
    lc.n = n;
    lc.dpos = dpos;
    lc.dslots = dslots;
    lc.ddesc = dd;
    lc.drseq = drseq;
    lc.max_len = max_len;
    TRY(embed_rows<T>(c, x, dtok, n));
    for (int l = 0; l < c->mi->n_layers; l++) {
        lc.layer = l;
        TRY(layer_run<T>(c, &lc, PATH_DECODE));
    }
    return logits_compute<T>(c, x, NULL, n, lg);
}

// decode_body in the context's storage type.
rk_status decode_step(cu_ctx *c, float *x, const int32_t *dtok, const int32_t *dpos, const int32_t *dslots,
                      cu_kvdesc *dd, const int32_t *drseq, size_t n, int max_len, float **lg)
{
    return c->mode == MODE_BF16 ? decode_body<bf16>(c, x, dtok, dpos, dslots, dd, drseq, n, max_len, lg)
                                : decode_body<float>(c, x, dtok, dpos, dslots, dd, drseq, n, max_len, lg);
}

// RAGKV_CUDA_GRAPH=0 turns decode graphs off (read per call: tests compare both ways).
bool graphs_on()
{
    const char *e = getenv("RAGKV_CUDA_GRAPH");
    return !(e && !strcmp(e, "0"));
}

// Decode through a CUDA graph: the step's ~10 launches per layer are captured once and then
// replayed while the key (rows, attention grid, scratch and descriptor addresses) holds; every
// per-step value (tokens, positions, slots, sequence lengths) is read from device memory the
// host filled before the replay. The context keeps the last DECODE_GRAPHS graphs by key, so a
// batch whose size alternates does not re-capture at every step. Returns with the replay
// enqueued on c->gstream and *lg_out where its logits will be; the caller reads them there.
rk_status decode_graph(cu_ctx *c, float *x, const int32_t *dtok, const int32_t *dpos, const int32_t *dslots,
                       cu_kvdesc *dd, const int32_t *drseq, size_t n, int max_len, float **lg_out, bool *capture_failed)
{
    *capture_failed = false;
    const eng_model_info *mi = c->mi;
    // grow the scratch now: nothing may allocate while capturing
    size_t chunk = 0;
    size_t need = layer_scratch(c, n, (size_t)max_len, PATH_DECODE, 0, false, &chunk), lneed = logits_scratch(c, n);
    unsigned char *base = NULL;
    TRY(scratch(c, need > lneed ? need : lneed, &base));
    if (!c->gstream)
        CU(cudaStreamCreateWithFlags(&c->gstream, cudaStreamNonBlocking), "graph stream");
    if (!c->gready)
        CU(cudaEventCreateWithFlags(&c->gready, cudaEventDisableTiming), "graph event");
    if (!c->blas_ws) {
        size_t ws = (size_t)32 << 20;
        CU(cudaMalloc(&c->blas_ws, ws), "cuBLAS workspace");
        if (cublasSetWorkspace(c->blas, c->blas_ws, ws) != CUBLAS_STATUS_SUCCESS)
            return rk_error_set(RK_ERR_DEVICE, "cuda backend: cublasSetWorkspace failed");
    }
    decode_key key;
    key.n = n;
    key.split = attn_decode_split((int)n, mi->n_kv_heads, max_len);
    key.splits = max_len > 0 ? (max_len + key.split - 1) / key.split : 1;
    key.scratch = c->scratch;
    key.iscratch = c->iscratch;
    key.ddesc = dd;
    key.xdec = x;
    float *lg = NULL;
    decode_graph_entry *ge = NULL, *victim = &c->graphs[0];
    for (int i = 0; i < DECODE_GRAPHS && !ge; i++) {
        decode_graph_entry *ent = &c->graphs[i];
        if (ent->exec && ent->key == key)
            ge = ent;
        else if (!ent->exec ? victim->exec != NULL : victim->exec && ent->used < victim->used)
            victim = ent; // a free entry, else the least recently replayed
    }
    if (!ge) {
        cudaGraph_t g = NULL;
        CU(cudaStreamBeginCapture(c->gstream, cudaStreamCaptureModeThreadLocal), "begin capture");
        c->stream = c->gstream;
        cublasSetStream(c->blas, c->gstream);
        rk_status st = decode_step(c, x, dtok, dpos, dslots, dd, drseq, n, max_len, &lg);
        c->stream = 0;
        cublasSetStream(c->blas, 0);
        cudaError_t e = cudaStreamEndCapture(c->gstream, &g);
        if (st != RK_OK || e != cudaSuccess) {
            if (g)
                cudaGraphDestroy(g);
            cudaGetLastError();
            *capture_failed = true;
            return st != RK_OK ? st : cuda_fail(e, "end capture");
        }
        if (victim->exec) {
            cudaGraphExecDestroy(victim->exec);
            victim->exec = NULL;
        }
        e = cudaGraphInstantiate(&victim->exec, g, 0);
        cudaGraphDestroy(g);
        if (e != cudaSuccess) {
            victim->exec = NULL;
            *capture_failed = true;
            return cuda_fail(e, "instantiate decode graph");
        }
        victim->key = key;
        ge = victim;
        c->captures++;
    } else {
        carver cv; // where logits_compute put them: the start of the scratch, after the normed rows
        cv.base = c->scratch;
        cv.take<unsigned char>(n * (size_t)mi->dim * esize(c));
        lg = cv.take<float>(n * (size_t)mi->vocab);
    }
    ge->used = ++c->graph_clock;
    // the inputs were copied on the legacy stream; the logits come back on the graph's
    CU(cudaEventRecord(c->gready, 0), "graph inputs");
    CU(cudaStreamWaitEvent(c->gstream, c->gready, 0), "graph inputs");
    CU(cudaGraphLaunch(ge->exec, c->gstream), "decode graph");
    c->replays++;
    *lg_out = lg; // (n, vocab) once the graph ran: read it on c->gstream
    return RK_OK;
}

// Device room for n rows' sampling settings and tokens, and the settings copied in (on the
// legacy stream, before the step's inputs are released to the graph's stream).
rk_status sample_rows_up(cu_ctx *c, const eng_sample_row *rows, size_t n)
{
    if (n > c->srows_n) {
        cudaFree(c->srows);
        cudaFree(c->sout);
        c->srows = NULL;
        c->sout = NULL;
        c->srows_n = 0;
        eng_sample_row *r = NULL;
        int32_t *o = NULL;
        if (cudaMalloc(&r, n * sizeof(eng_sample_row)) != cudaSuccess || cudaMalloc(&o, n * sizeof(int32_t)) != cudaSuccess) {
            cudaGetLastError();
            cudaFree(r); // NULL (the failed one) is a no-op
            return rk_error_set(RK_ERR_NOMEM, "cuda backend: no device memory for %zu sampled rows", n);
        }
        c->srows = r;
        c->sout = o;
        c->srows_n = n;
    }
    CU(cudaMemcpy(c->srows, rows, n * sizeof(eng_sample_row), cudaMemcpyHostToDevice), "sampling settings");
    return RK_OK;
}

// What a step hands back from its device logits lg (n, vocab), rows [r0, r0+n) of the call, on
// stream: the logits when wanted (logits: that row block's host memory), the sampled tokens
// when sampling (out: host, n), then waits for the stream.
rk_status rows_back(cu_ctx *c, float *lg, size_t r0, size_t n, bool sample, int32_t *out, float *logits,
                    cudaStream_t stream)
{
    size_t V = (size_t)c->mi->vocab;
    cudaError_t e = cudaSuccess;
    const char *what = "decode";
    if (logits) // before the sampler, which overwrites lg with probabilities
        e = cudaMemcpyAsync(logits, lg, n * V * sizeof(float), cudaMemcpyDeviceToHost, stream), what = "logits";
    if (e == cudaSuccess && sample) {
        e = sample_launch(lg, (int)V, c->srows + r0, (int)n, c->sout + r0, stream), what = "sampling";
        if (e == cudaSuccess)
            e = cudaMemcpyAsync(out, c->sout + r0, n * sizeof(int32_t), cudaMemcpyDeviceToHost, stream),
            what = "sampled tokens";
    }
    // on every path: the host waits cover the legacy stream only, so the next call's scratch
    // writes must not race work still queued on this one
    cudaError_t es = cudaStreamSynchronize(stream);
    if (e != cudaSuccess)
        return cuda_fail(e, what);
    if (es != cudaSuccess)
        return cuda_fail(es, "decode");
    return RK_OK;
}

// The classifier of one device hidden row into the scratch: *lg (1, vocab) device.
rk_status row_logits(cu_ctx *c, const float *x, float **lg)
{
    return c->mode == MODE_BF16 ? logits_compute<bf16>(c, x, NULL, 1, lg) : logits_compute<float>(c, x, NULL, 1, lg);
}

// Batched decode: one embedding, one pass per layer over all n rows (each row attends over its
// own sequence by the split-key kernel), one classifier product; then the logits to the host
// (logits not NULL) and/or each row's token chosen on the device (rows not NULL: out[i]).
rk_status decode_rows(cu_ctx *c, eng_seq *const *seqs, const int32_t *tokens, const int32_t *pos,
                      const int32_t *slots, size_t n, const eng_sample_row *rows, int32_t *out, float *logits)
{
    const eng_model_info *mi = c->mi;
    const size_t V = (size_t)mi->vocab;
    c->graph_used = false;
    if (rows)
        TRY(sample_rows_up(c, rows, n));
    if (mi->n_heads / mi->n_kv_heads > ATTN_MAX_GROUP) { // the split-key kernel cannot: one by one
        rk_status st = RK_OK;
        eng_hidden h = {NULL, 1, NULL}; // be, rows, ctx
        TRY(cu_hidden_init(c, &h));
        for (size_t i = 0; i < n && st == RK_OK; i++) {
            st = cu_embed(c, &h, 0, &tokens[i], 1);
            for (int l = 0; l < mi->n_layers && st == RK_OK; l++)
                st = cu_layer_forward(c, seqs[i], l, &h, 1, &pos[i], &slots[i], NULL, NULL, NULL);
            float *lg = NULL;
            if (st == RK_OK)
                st = row_logits(c, (const float *)h.ctx, &lg);
            if (st == RK_OK)
                st = rows_back(c, lg, i, 1, rows != NULL, out ? out + i : NULL, logits ? logits + i * V : NULL, 0);
        }
        cu_hidden_release(c, &h);
        return st;
    }
    // ints: tokens (n), pos (n), slots (n), row -> sequence (n)
    int32_t *ib = NULL, *dtok, *dpos, *dslots, *drseq;
    TRY(iscratch(c, 4 * n, &ib));
    int32_t *rs = (int32_t *)rk_malloc(n * sizeof(int32_t));
    if (!rs)
        return rk_error_set(RK_ERR_NOMEM, "cuda backend: out of host memory");
    int max_len = 0;
    for (size_t i = 0; i < n; i++) {
        rs[i] = (int32_t)i;
        if ((int)seqs[i]->len > max_len)
            max_len = (int)seqs[i]->len;
    }
    rk_status st = ints_up(c, rs, n, 3 * n, &drseq);
    rk_free(rs);
    TRY(st);
    TRY(ints_up(c, tokens, n, 0, &dtok));
    TRY(ints_up(c, pos, n, n, &dpos));
    TRY(ints_up(c, slots, n, 2 * n, &dslots));
    cu_kvdesc *dd;
    TRY(descs_up(c, seqs, n, &dd));
    // hidden rows of the batch: their own buffer (the layer scratch is reused per layer)
    if (n > c->xdec_rows) {
        cudaFree(c->xdec);
        c->xdec = NULL;
        c->xdec_rows = 0;
        CU(cudaMalloc(&c->xdec, n * mi->dim * sizeof(float)), "decode hidden rows");
        c->xdec_rows = n;
    }
    float *x = c->xdec, *lg = NULL;
    if (!c->graph_broken && graphs_on()) {
        bool failed = false;
        st = decode_graph(c, x, dtok, dpos, dslots, dd, drseq, n, max_len, &lg, &failed);
        if (!failed) {
            // sampling (if any) runs after the replay on the graph's stream: outside the
            // graph, so a step that samples and one that does not share the captured graph
            if (st == RK_OK)
                st = rows_back(c, lg, 0, n, rows != NULL, out, logits, c->gstream);
            c->graph_used = st == RK_OK;
            return st;
        }
        // nothing ran: decode this step and the rest without graphs
        fprintf(stderr, "ragkv: cuda backend: decode graphs off: %s\n", rk_error_msg());
        c->graph_broken = true;
    }
    TRY(decode_step(c, x, dtok, dpos, dslots, dd, drseq, n, max_len, &lg));
    return rows_back(c, lg, 0, n, rows != NULL, out, logits, 0);
}

rk_status cu_decode(void *ctx, eng_seq *const *seqs, const int32_t *tokens, const int32_t *pos, const int32_t *slots,
                    size_t n, float *logits)
{
    TRY(cu_enter(ctx));
    return decode_rows((cu_ctx *)ctx, seqs, tokens, pos, slots, n, NULL, NULL, logits);
}

rk_status cu_decode_sample(void *ctx, eng_seq *const *seqs, const int32_t *tokens, const int32_t *pos,
                           const int32_t *slots, size_t n, const eng_sample_row *rows, int32_t *out, float *logits)
{
    TRY(cu_enter(ctx));
    return decode_rows((cu_ctx *)ctx, seqs, tokens, pos, slots, n, rows, out, logits);
}

template <typename T>
rk_status export_layers(cu_ctx *c, const eng_seq *s, int layer0, int n_layers, size_t slot0, size_t n, float *out)
{
    size_t kvd = kv_dim(c), cnt = n * kvd;
    if (cnt == 0)
        return RK_OK;
    cu_kvdesc d;
    TRY(kv_ready(c, (eng_seq *)s, &d)); // maps blocks of slots below len never written (zeros)
    unsigned char *b = NULL;
    TRY(scratch(c, 2 * cnt * sizeof(float), &b));
    float *tmp = (float *)b;
    for (int i = 0; i < n_layers; i++) { // K and V of a layer gathered (and widened), one copy
        k_gather_rows<T><<<blocks(cnt), 256>>>(tmp, d, KV_RAW, layer0 + i, (long long)slot0, n, kvd);
        k_gather_rows<T><<<blocks(cnt), 256>>>(tmp + cnt, d, KV_VAL, layer0 + i, (long long)slot0, n, kvd);
        CHECK_LAUNCH("export gather");
        CU(cudaMemcpy(out + (2 * (size_t)i) * cnt, tmp, 2 * cnt * sizeof(float), cudaMemcpyDeviceToHost), "export");
    }
    return RK_OK;
}

rk_status cu_kv_export(void *ctx, const eng_seq *s, int layer0, int n_layers, size_t slot0, size_t n, float *out)
{
    TRY(cu_enter(ctx));
    cu_ctx *c = (cu_ctx *)ctx;
    return c->mode == MODE_BF16 ? export_layers<bf16>(c, s, layer0, n_layers, slot0, n, out)
                                : export_layers<float>(c, s, layer0, n_layers, slot0, n, out);
}

rk_status cu_kv_import(void *ctx, eng_seq *s, int layer0, int n_layers, size_t slot0, size_t n, const int32_t *pos,
                       const float *kv_in)
{
    TRY(cu_enter(ctx));
    cu_ctx *c = (cu_ctx *)ctx;
    const eng_model_info *mi = c->mi;
    size_t kvd = kv_dim(c), cnt = n * kvd;
    if (n == 0)
        return RK_OK;
    int32_t *dpos;
    TRY(ints_up(c, pos, n, 0, &dpos));
    cu_kvdesc *dd;
    TRY(descs_up(c, &s, 1, &dd));
    unsigned char *b = NULL;
    TRY(scratch(c, 2 * cnt * sizeof(float), &b));
    float *tmp = (float *)b;
    for (int i = 0; i < n_layers; i++) {
        CU(cudaMemcpy(tmp, kv_in + (2 * (size_t)i) * cnt, 2 * cnt * sizeof(float), cudaMemcpyHostToDevice), "import");
        unsigned nb = store_kv_blocks(n, mi->head_dim);
        int inter = mi->rope == ENG_ROPE_INTERLEAVED;
        if (c->mode == MODE_BF16)
            k_store_kv<bf16><<<nb, 256>>>(dd, NULL, layer0 + i, tmp, tmp + cnt, kvd, NULL, (int)slot0, dpos, (int)n,
                                          mi->n_kv_heads, mi->head_dim, c->inv_freq, inter);
        else
            k_store_kv<float><<<nb, 256>>>(dd, NULL, layer0 + i, tmp, tmp + cnt, kvd, NULL, (int)slot0, dpos, (int)n,
                                           mi->n_kv_heads, mi->head_dim, c->inv_freq, inter);
        CHECK_LAUNCH("import");
    }
    CU(cudaStreamSynchronize(0), "import");
    return RK_OK;
}

// ---- kvblocks: a chunk's KV kept on the device ---------------------------------------------
// b->ctx is device memory holding the canonical layout [layer][K|V][token][kv_head][head_dim]
// (K before RoPE) in the element type of the KV storage (bf16 in bf16 mode, fp32 otherwise):
// an import is one kernel per layer from device memory (K copied and rotated at the new
// positions, V copied), with no host copy. Contracts: engine_impl.h.

// A chunk KV block's device memory. With RAGKV_CUDA_KVBLOCK_CACHE_MB > 0, released blocks'
// allocations are kept (up to that many MiB, the oldest freed first) and the next block of the
// same size takes one: a blend from compressed caches allocates a block per container (67 MB
// for 512 tokens of the Llama-3-8B shape) and frees them all at the end, and each cudaFree
// waits for the whole device. An allocation kept was released only after the legacy stream's
// work was done (blk_put), and the engine's readers of a block all run there or wait there
// (imports, reads, deviations; the codec's readers close before their blocks go).
static void *blk_take(cu_ctx *c, size_t bytes)
{
    std::lock_guard<std::mutex> g(*c->pool_mu);
    for (size_t i = c->blk_n; i-- > 0;)
        if (c->blk_cache[i].bytes == bytes) {
            void *p = c->blk_cache[i].p;
            memmove(c->blk_cache + i, c->blk_cache + i + 1, (c->blk_n - i - 1) * sizeof(cu_blk_mem));
            c->blk_n--;
            c->blk_cached -= bytes;
            return p;
        }
    return NULL;
}

static void blk_put(cu_ctx *c, void *p, size_t bytes)
{
    if (!p)
        return;
    if (!bytes || bytes > c->blk_limit || cudaStreamSynchronize(0) != cudaSuccess) {
        cudaGetLastError();
        cudaFree(p);
        return;
    }
    void *drop = NULL; // one allocation pushed out per round, freed outside the lock
    for (;;) {
        {
            std::lock_guard<std::mutex> g(*c->pool_mu);
            if (!c->blk_n || c->blk_cached + bytes <= c->blk_limit) { // room now: keep p
                if (grow_array(&c->blk_cache, &c->blk_cap, c->blk_n + 1)) {
                    c->blk_cache[c->blk_n++] = cu_blk_mem{p, bytes};
                    c->blk_cached += bytes;
                    p = NULL;
                }
                break;
            }
            drop = c->blk_cache[0].p; // the oldest goes first
            c->blk_cached -= c->blk_cache[0].bytes;
            memmove(c->blk_cache, c->blk_cache + 1, (c->blk_n - 1) * sizeof(cu_blk_mem));
            c->blk_n--;
        }
        cudaFree(drop);
    }
    cudaFree(p); // NULL when kept
}

// RAGKV_CUDA_KVBLOCK_CACHE_MB: 0..1048576 MiB of released chunk KV blocks kept (default 0).
static rk_status blk_cache_limit(size_t *out)
{
    const char *e = getenv("RAGKV_CUDA_KVBLOCK_CACHE_MB");
    *out = 0;
    if (!e || !*e)
        return RK_OK;
    char *end = NULL;
    long v = strtol(e, &end, 10);
    if (*end || v < 0 || v > (1L << 20))
        return rk_error_set(RK_ERR_INVALID, "cuda backend: RAGKV_CUDA_KVBLOCK_CACHE_MB=%s: expected 0..1048576", e);
    *out = (size_t)v << 20;
    return RK_OK;
}

void cu_kvblock_release(void *ctx, eng_kvblock *b)
{
    cu_enter(ctx); // best effort: a release cannot fail
    blk_put((cu_ctx *)ctx, b->ctx, b->bytes);
    b->ctx = NULL;
}

rk_status cu_kvblock_init(void *ctx, eng_kvblock *b, const float *kv)
{
    TRY(cu_enter(ctx));
    cu_ctx *c = (cu_ctx *)ctx;
    size_t per = 2 * b->n * kv_dim(c), size = (size_t)c->mi->n_layers * per * esize(c);
    void *d = blk_take(c, size);
    if (!d && cudaMalloc(&d, size) != cudaSuccess) {
        cudaGetLastError();
        return rk_error_set(RK_ERR_NOMEM, "cuda backend: no device memory for a KV block of %zu tokens", b->n);
    }
    rk_status st = RK_OK;
    if (kv && c->mode != MODE_BF16 && cudaMemcpy(d, kv, size, cudaMemcpyHostToDevice) != cudaSuccess)
        st = rk_error_set(RK_ERR_DEVICE, "cuda backend: KV block upload failed");
    for (int l = 0; kv && c->mode == MODE_BF16 && st == RK_OK && l < c->mi->n_layers; l++) {
        unsigned char *tmp = NULL; // one layer at a time through the scratch, narrowed there
        st = scratch(c, per * sizeof(float), &tmp);
        if (st == RK_OK &&
            cudaMemcpy(tmp, kv + (size_t)l * per, per * sizeof(float), cudaMemcpyHostToDevice) != cudaSuccess)
            st = rk_error_set(RK_ERR_DEVICE, "cuda backend: KV block upload failed");
        if (st == RK_OK) {
            k_convert<float, bf16><<<blocks(per), 256>>>((bf16 *)d + (size_t)l * per, (const float *)tmp, per);
            if (cudaGetLastError() != cudaSuccess)
                st = rk_error_set(RK_ERR_DEVICE, "cuda backend: KV block conversion failed");
        }
    }
    if (st == RK_OK && cudaStreamSynchronize(0) != cudaSuccess)
        st = rk_error_set(RK_ERR_DEVICE, "cuda backend: KV block upload failed");
    if (st != RK_OK) {
        cudaGetLastError();
        blk_put(c, d, size);
        return st;
    }
    b->ctx = d;
    b->bytes = size;
    b->mem.data = d;
    b->mem.elem_bytes = (int)esize(c);
    b->mem.device = true;
    return RK_OK;
}

// Copy nb KV blocks into s (K rotated at their positions): every block's positions and
// descriptor up in one copy, one k_import_blocks launch for every block and layer, one wait
// (kvblock_import is nb = 1).
template <typename T>
rk_status kvblocks_import(cu_ctx *c, eng_seq *s, size_t nb, const size_t *slot0, const int32_t *const *pos,
                          const eng_kvblock *const *b, int layer0, int n_layers)
{
    const eng_model_info *mi = c->mi;
    size_t total = 0, maxn = 0;
    for (size_t i = 0; i < nb; i++) {
        total += b[i]->n;
        maxn = b[i]->n > maxn ? b[i]->n : maxn;
    }
    if (!maxn || n_layers <= 0)
        return RK_OK;
    if (nb > 65535 || n_layers > 65535)
        return rk_error_set(RK_ERR_INVALID, "cuda backend: an import of %zu blocks x %d layers is too large", nb,
                            n_layers);
    // host staging: the positions, then the block table (8-byte aligned after the ints)
    size_t ints = (total + 1) / 2 * 2, bytes = ints * sizeof(int32_t) + nb * sizeof(cu_import_src<T>);
    unsigned char *h = (unsigned char *)rk_malloc(bytes);
    if (!h)
        return rk_error_set(RK_ERR_NOMEM, "cuda backend: out of host memory");
    int32_t *hp = (int32_t *)h;
    cu_import_src<T> *hs = (cu_import_src<T> *)(h + ints * sizeof(int32_t));
    for (size_t i = 0, off = 0; i < nb; off += b[i]->n, i++) {
        memcpy(hp + off, pos[i], b[i]->n * sizeof(int32_t));
        hs[i] = cu_import_src<T>{(const T *)b[i]->ctx, (long long)slot0[i], (int)b[i]->n, (int)off};
    }
    int32_t *dbuf = NULL;
    rk_status st = ints_up(c, (const int32_t *)h, bytes / sizeof(int32_t), 0, &dbuf);
    rk_free(h);
    TRY(st);
    cu_kvdesc *dd;
    TRY(descs_up(c, &s, 1, &dd));
    dim3 grid(store_kv_blocks(maxn, mi->head_dim), (unsigned)nb, (unsigned)n_layers);
    k_import_blocks<T><<<grid, 256>>>(dd, (const cu_import_src<T> *)(dbuf + ints), layer0, dbuf, mi->n_kv_heads,
                                      mi->head_dim, c->inv_freq, mi->rope == ENG_ROPE_INTERLEAVED);
    CHECK_LAUNCH("KV blocks import");
    CU(cudaStreamSynchronize(0), "KV blocks import");
    return RK_OK;
}

rk_status cu_kvblocks_import(void *ctx, eng_seq *s, size_t nb, const size_t *slot0, const int32_t *const *pos,
                             const eng_kvblock *const *b, int layer0, int n_layers)
{
    TRY(cu_enter(ctx));
    cu_ctx *c = (cu_ctx *)ctx;
    return c->mode == MODE_BF16 ? kvblocks_import<bf16>(c, s, nb, slot0, pos, b, layer0, n_layers)
                                : kvblocks_import<float>(c, s, nb, slot0, pos, b, layer0, n_layers);
}

rk_status cu_kvblock_import(void *ctx, eng_seq *s, size_t slot0, const int32_t *pos, const eng_kvblock *b, int layer0,
                            int n_layers)
{
    TRY(cu_enter(ctx));
    cu_ctx *c = (cu_ctx *)ctx;
    return c->mode == MODE_BF16 ? kvblocks_import<bf16>(c, s, 1, &slot0, &pos, &b, layer0, n_layers)
                                : kvblocks_import<float>(c, s, 1, &slot0, &pos, &b, layer0, n_layers);
}

rk_status cu_kvblock_read(void *ctx, const eng_kvblock *b, int layer0, int n_layers, float *out)
{
    TRY(cu_enter(ctx));
    cu_ctx *c = (cu_ctx *)ctx;
    size_t per = 2 * b->n * kv_dim(c);
    if (c->mode != MODE_BF16) {
        CU(cudaMemcpy(out, (const float *)b->ctx + (size_t)layer0 * per, (size_t)n_layers * per * sizeof(float),
                      cudaMemcpyDeviceToHost),
           "KV block read");
        return RK_OK;
    }
    for (int l = 0; l < n_layers; l++) { // widened one layer at a time in the scratch
        unsigned char *tmp = NULL;
        TRY(scratch(c, per * sizeof(float), &tmp));
        k_convert<bf16, float><<<blocks(per), 256>>>((float *)tmp, (const bf16 *)b->ctx + ((size_t)layer0 + l) * per,
                                                     per);
        CHECK_LAUNCH("KV block read");
        CU(cudaMemcpy(out + (size_t)l * per, tmp, per * sizeof(float), cudaMemcpyDeviceToHost), "KV block read");
    }
    return RK_OK;
}

// ---- deviation between two sequences' KV at one layer (CacheBlend's check) ---------------

// One block per slot slot0 + blockIdx.x of `layer` of caches a and b: sum of (a - b)^2 over the
// row's K (before RoPE; then V when with_v) elements, in double.
template <typename T>
__global__ void k_kv_deviation(cu_kvdesc da, cu_kvdesc db, int layer, long long slot0, int with_v, int kvd, float *out)
{
    const long long t = slot0 + blockIdx.x;
    const T *ka = kv_row<const T>(da, KV_RAW, layer, t, kvd), *kb = kv_row<const T>(db, KV_RAW, layer, t, kvd);
    const T *va = kv_row<const T>(da, KV_VAL, layer, t, kvd), *vb = kv_row<const T>(db, KV_VAL, layer, t, kvd);
    double acc = 0;
    for (int j = threadIdx.x; j < kvd; j += blockDim.x) {
        float d = to_f(ka[j]) - to_f(kb[j]); // as engine.c's reference
        acc += (double)d * (double)d;
        if (with_v) {
            float e = to_f(va[j]) - to_f(vb[j]);
            acc += (double)e * (double)e;
        }
    }
    __shared__ double part[32];
    for (int o = 16; o > 0; o >>= 1)
        acc += __shfl_down_sync(0xffffffffu, acc, o);
    int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
    if (lane == 0)
        part[wid] = acc;
    __syncthreads();
    if (threadIdx.x == 0) {
        double t = 0;
        for (int i = 0; i < (int)((blockDim.x + 31) >> 5); i++)
            t += part[i];
        out[blockIdx.x] = (float)t;
    }
}

template <typename T>
rk_status kv_deviation(cu_ctx *c, const eng_seq *a, const eng_seq *b, int layer, size_t slot0, size_t n, bool with_v,
                       float *out)
{
    size_t kvd = kv_dim(c);
    if (n == 0)
        return RK_OK;
    cu_kvdesc da, db;
    TRY(kv_ready(c, (eng_seq *)a, &da));
    TRY(kv_ready(c, (eng_seq *)b, &db));
    unsigned char *tmp = NULL;
    TRY(scratch(c, n * sizeof(float), &tmp));
    k_kv_deviation<T><<<(unsigned)n, 128>>>(da, db, layer, (long long)slot0, with_v ? 1 : 0, (int)kvd, (float *)tmp);
    CHECK_LAUNCH("KV deviation");
    CU(cudaMemcpy(out, tmp, n * sizeof(float), cudaMemcpyDeviceToHost), "KV deviation");
    return RK_OK;
}

rk_status cu_kv_deviation(void *ctx, const eng_seq *a, const eng_seq *b, int layer, size_t slot0, size_t n,
                          bool with_v, float *out)
{
    TRY(cu_enter(ctx));
    cu_ctx *c = (cu_ctx *)ctx;
    return c->mode == MODE_BF16 ? kv_deviation<bf16>(c, a, b, layer, slot0, n, with_v, out)
                                : kv_deviation<float>(c, a, b, layer, slot0, n, with_v, out);
}

const struct eng_backend_i cu_iface = {
    "cuda",           cu_free,          cu_seq_init,  cu_seq_release, cu_hidden_init,
    cu_hidden_release, cu_hidden_write, cu_hidden_read, cu_hidden_gather, cu_embed,
    cu_layer_forward, cu_logits,        cu_kv_export, cu_kv_import,     cu_decode,
    cu_kvblock_init,  cu_kvblock_release, cu_kvblock_import, cu_kvblock_read, cu_kv_deviation, cu_decode_sample,
    cu_layer_kv,      cu_kvblocks_import,
};

} // namespace

extern "C" rk_status eng_backend_cuda_new(eng_model *m, int device, eng_backend **out)
{
    *out = NULL;
    if (!m)
        return rk_error_set(RK_ERR_INVALID, "cuda backend: no model");
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess || count == 0) {
        cudaGetLastError();
        return rk_error_set(RK_ERR_UNAVAILABLE, "cuda backend: no CUDA device");
    }
    if (device < 0 || device >= count)
        return rk_error_set(RK_ERR_INVALID, "cuda backend: device %d of %d", device, count);
    if ((e = cudaSetDevice(device)) != cudaSuccess)
        return cuda_fail(e, "cudaSetDevice");
    if ((e = attn_prepare()) != cudaSuccess) // (outside any capture: decode graphs launch its kernels)
        return cuda_fail(e, "attention kernels' set-up");
    // storage and math: fp32 (exact reference), tf32 (fp32 storage, tensor-core products) or
    // bf16 (bf16 storage, fused attention); by default bf16 for bf16/f16 checkpoints, else fp32
    cu_mode mode = m->info.dtype == ENG_DTYPE_F32 ? MODE_FP32 : MODE_BF16;
    const char *math = getenv("RAGKV_CUDA_MATH");
    if (math && *math && strcmp(math, "auto") != 0) {
        if (strcmp(math, "fp32") == 0)
            mode = MODE_FP32;
        else if (strcmp(math, "tf32") == 0)
            mode = MODE_TF32;
        else if (strcmp(math, "bf16") == 0)
            mode = MODE_BF16;
        else
            return rk_error_set(RK_ERR_INVALID, "cuda backend: RAGKV_CUDA_MATH=%s: expected auto, fp32, tf32 or bf16",
                                math);
    }
    if (m->info.head_dim % 2 || m->info.n_kv_heads <= 0 || m->info.n_heads % m->info.n_kv_heads)
        return rk_error_set(RK_ERR_UNSUPPORTED, "cuda backend: head layout %d/%d x %d not supported", m->info.n_heads,
                            m->info.n_kv_heads, m->info.head_dim);
    rk_status st = RK_OK;
    eng_backend *be = NULL;
    cu_ctx *c = (cu_ctx *)rk_calloc(1, sizeof(*c));
    if (!c)
        return rk_error_set(RK_ERR_NOMEM, "cuda backend: out of host memory");
    c->m = m;
    c->mi = &m->info;
    c->device = device;
    c->mode = mode;
    {
        const char *pe = getenv("RAGKV_CUDA_PROFILE");
        c->prof.on = pe && strcmp(pe, "1") == 0;
        const char *ge = getenv("RAGKV_CUDA_GEMV");
        c->gemv = !(ge && strcmp(ge, "0") == 0);
    }
    c->pool_mu = new (std::nothrow) std::mutex;
    if (!c->pool_mu) {
        st = rk_error_set(RK_ERR_NOMEM, "cuda backend: out of host memory");
        goto fail;
    }
    if ((st = kv_block_shift(&c->kv_bshift)) != RK_OK || (st = blk_cache_limit(&c->blk_limit)) != RK_OK)
        goto fail;
    c->kv_block_bytes = ((size_t)m->info.n_layers * KV_ARRAYS << c->kv_bshift) * kv_dim(c) * esize(c);
    if (cublasCreate(&c->blas) != CUBLAS_STATUS_SUCCESS) {
        st = rk_error_set(RK_ERR_DEVICE, "cuda backend: cublasCreate failed");
        goto fail;
    }
    cublasSetMathMode(c->blas, CUBLAS_DEFAULT_MATH); // the compute type in mm() alone picks the math
    if (c->mode == MODE_BF16) {
        const int tm = gemm_tune_mode_from_env();
        const char *tl = getenv("RAGKV_CUDA_GEMM_TUNE_LOG");
        if (tm < 0) {
            st = RK_ERR_INVALID;
            goto fail;
        }
        if ((st = gemm_tuner_new(tm, c->prof.on || (tl && strcmp(tl, "1") == 0), &c->tuner)) != RK_OK)
            goto fail;
    }
    c->layers = (cu_layer *)rk_calloc((size_t)m->info.n_layers, sizeof(cu_layer));
    be = (eng_backend *)rk_calloc(1, sizeof(*be));
    if (!c->layers || !be) {
        st = rk_error_set(RK_ERR_NOMEM, "cuda backend: out of host memory");
        goto fail;
    }
    if ((st = upload1(c, &m->tok_emb, false, &c->tok_emb)) ||
        (st = upload1(c, &m->final_norm, true, (void **)&c->final_norm)))
        goto fail;
    if (m->wcls.data == m->tok_emb.data)
        c->wcls = c->tok_emb;
    else if ((st = upload1(c, &m->wcls, false, &c->wcls)))
        goto fail;
    {
        eng_tensor inv = {ENG_DTYPE_F32, m->inv_freq, 1, (size_t)m->info.head_dim / 2};
        if ((st = upload1(c, &inv, true, (void **)&c->inv_freq)))
            goto fail;
    }
    for (int l = 0; l < m->info.n_layers; l++) {
        const eng_layer_weights *w = &m->layers[l];
        cu_layer *o = &c->layers[l];
        const eng_tensor *qkv[3] = {&w->wq, &w->wk, &w->wv}, *b[3] = {&w->bq, &w->bk, &w->bv};
        const eng_tensor *w13[2] = {&w->w1, &w->w3};
        if ((st = upload1(c, &w->attn_norm, true, (void **)&o->attn_norm)) ||
            (st = upload1(c, &w->ffn_norm, true, (void **)&o->ffn_norm)) || (st = upload_cat(c, qkv, 3, false, &o->wqkv)) ||
            (st = upload1(c, &w->wo, false, &o->wo)) || (st = upload_cat(c, w13, 2, false, &o->w13)) ||
            (st = upload1(c, &w->w2, false, &o->w2)))
            goto fail;
        if (w->bq.data && (st = upload_cat(c, b, 3, true, (void **)&o->bqkv)))
            goto fail;
    }
    be->iface = &cu_iface;
    be->ctx = c;
    be->model = m;
    *out = be;
    return RK_OK;
fail:
    rk_free(be);
    cu_free(c);
    return st;
}

extern "C" int eng_backend_cuda_graphs(const eng_backend *be, uint64_t *captures, uint64_t *replays)
{
    const cu_ctx *c = be && be->iface && !strcmp(be->iface->name, "cuda") ? (const cu_ctx *)be->ctx : NULL;
    if (captures)
        *captures = c ? c->captures : 0;
    if (replays)
        *replays = c ? c->replays : 0;
    return c && c->graph_used;
}

static const cu_ctx *cuda_ctx(const eng_backend *be)
{
    return be && be->iface && !strcmp(be->iface->name, "cuda") ? (const cu_ctx *)be->ctx : NULL;
}

extern "C" int eng_backend_cuda_kv_blocks(const eng_backend *be, size_t *in_use, size_t *total)
{
    cu_ctx *c = (cu_ctx *)cuda_ctx(be);
    size_t u = 0, t = 0;
    if (c) {
        std::lock_guard<std::mutex> g(*c->pool_mu);
        t = c->kv_blocks;
        u = c->kv_blocks - c->kv_n_free;
    }
    if (in_use)
        *in_use = u;
    if (total)
        *total = t;
    return c ? 1 << c->kv_bshift : 0;
}

extern "C" int eng_backend_cuda_device(const eng_backend *be)
{
    const cu_ctx *c = cuda_ctx(be);
    return c ? c->device : -1;
}

// Prefill, layers and imports run on the legacy default stream (c->stream is 0 outside a
// decode graph's capture), and the backend's host waits are cudaStreamSynchronize(0).
extern "C" void *eng_backend_cuda_stream(const eng_backend *be)
{
    (void)be;
    return NULL;
}

// Forgets the profiler's sums so far (RAGKV_CUDA_PROFILE=1): a benchmark's set-up stays out
// of the report.
extern "C" void eng_backend_cuda_profile_reset(eng_backend *be)
{
    if (!be || !be->iface || strcmp(be->iface->name, "cuda") != 0)
        return;
    cu_prof *p = &((cu_ctx *)be->ctx)->prof;
    memset(p->ms, 0, sizeof(p->ms));
    memset(p->flops, 0, sizeof(p->flops));
    memset(p->layer_calls, 0, sizeof(p->layer_calls));
    memset(p->rows, 0, sizeof(p->rows));
}

// The storage mode a CUDA backend runs in ("fp32", "tf32", "bf16"), for tools and benchmarks.
extern "C" const char *eng_backend_cuda_mode(const eng_backend *be)
{
    if (!be || !be->iface || strcmp(be->iface->name, "cuda") != 0)
        return "";
    const cu_ctx *c = (const cu_ctx *)be->ctx;
    return c->mode == MODE_BF16 ? "bf16" : c->mode == MODE_TF32 ? "tf32" : "fp32";
}

// The device sampler on host logits (engine_impl.h: a test hook).
extern "C" rk_status eng_cuda_sample_rows(eng_backend *be, const float *logits, int vocab, size_t n,
                                          const eng_sample_row *rows, int32_t *out)
{
    if (!be || !be->iface || strcmp(be->iface->name, "cuda") != 0)
        return rk_error_set(RK_ERR_UNSUPPORTED, "eng_cuda_sample_rows: not a CUDA backend");
    if (!logits || vocab <= 0 || !rows || !out || n == 0 || n > (size_t)INT32_MAX)
        return rk_error_set(RK_ERR_INVALID, "eng_cuda_sample_rows: bad arguments");
    cu_ctx *c = (cu_ctx *)be->ctx;
    TRY(cu_enter(c));
    float *d = NULL;
    size_t bytes = n * (size_t)vocab * sizeof(float);
    if (cudaMalloc(&d, bytes) != cudaSuccess) {
        cudaGetLastError();
        return rk_error_set(RK_ERR_NOMEM, "eng_cuda_sample_rows: no device memory for %zu bytes", bytes);
    }
    rk_status st = RK_OK;
    cudaError_t e = cudaMemcpy(d, logits, bytes, cudaMemcpyHostToDevice);
    if (e != cudaSuccess)
        st = cuda_fail(e, "sample rows: logits");
    if (st == RK_OK)
        st = sample_rows_up(c, rows, n);
    if (st == RK_OK) {
        // rows_back's stream and copies, with this call's vocab
        if ((e = sample_launch(d, vocab, c->srows, (int)n, c->sout, 0)) != cudaSuccess ||
            (e = cudaMemcpy(out, c->sout, n * sizeof(int32_t), cudaMemcpyDeviceToHost)) != cudaSuccess)
            st = cuda_fail(e, "sample rows");
    }
    cudaFree(d);
    return st;
}
