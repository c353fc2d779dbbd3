// backend.cu — the CUDA backend (first version): the CPU reference's arithmetic on the GPU,
// float32 throughout (weights widened to fp32 in device memory, cuBLAS SGEMM in plain fp32
// without TF32), so it can be checked against the CPU backend with tight tolerances by the
// same conformance suite. RAGKV_CUDA_MATH=tf32|bf16 runs the matrix products on tensor cores
// instead (fp32 accumulation), for speed at lower precision. Speed work (bf16 weights, fused
// attention, paged KV, CUDA graphs) comes after; the interface does not change.
//
// Device state per sequence, each (n_layers, capacity, kv_dim) float32 like the CPU backend:
// k_raw (K before RoPE: what export returns), k_rot (K rotated at its slot's position: what
// attention reads), v. Slot positions live on the host (eng_seq.pos) and are copied up for
// each attention call. Every CUDA and cuBLAS error becomes RK_ERR_DEVICE; nothing aborts.
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

extern "C" {
#include "engine_impl.h"
#include "ragkv/alloc.h"
#include "ragkv/fp16.h"
}

namespace {

struct cu_layer {
    float *attn_norm, *wq, *wk, *wv, *bq, *bk, *bv, *wo, *ffn_norm, *w1, *w2, *w3; // device
};

struct cu_ctx {
    eng_model *m;
    const eng_model_info *mi;
    int device;
    cublasHandle_t blas;
    cublasComputeType_t compute; // CUBLAS_COMPUTE_32F (default), or _FAST_TF32 / _FAST_16BF
    cudaStream_t stream;
    float *tok_emb, *final_norm, *wcls; // device (vocab,d), (d), (vocab,d)
    float *inv_freq;                   // device (head_dim/2)
    cu_layer *layers;                  // host array of device pointers (n_layers)
    void **owned;                      // device allocations freed at the end
    size_t n_owned, cap_owned;
    float *scratch;                    // device scratch, grown on demand
    size_t scratch_floats;
    int32_t *iscratch;                 // device int scratch
    size_t iscratch_n;
};

struct cu_kv {
    float *k_raw, *k_rot, *v; // device (n_layers, capacity, kv_dim)
};

rk_status cuda_fail(cudaError_t e, const char *what)
{
    cudaGetLastError(); // clear a sticky launch error
    return rk_error_set(RK_ERR_DEVICE, "cuda backend: %s: %s", what, cudaGetErrorString(e));
}

rk_status blas_fail(cublasStatus_t s, const char *what)
{
    return rk_error_set(RK_ERR_DEVICE, "cuda backend: %s: cuBLAS status %d", what, (int)s);
}

#define CU(call, what)                                                                                     \
    do {                                                                                                   \
        cudaError_t e_ = (call);                                                                           \
        if (e_ != cudaSuccess)                                                                             \
            return cuda_fail(e_, what);                                                                    \
    } while (0)

#define CHECK_LAUNCH(what) CU(cudaGetLastError(), what)

rk_status dev_alloc(cu_ctx *c, void **p, size_t bytes)
{
    CU(cudaMalloc(p, bytes ? bytes : 4), "cudaMalloc");
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

// Upload a tensor as float32 (widening f16/bf16 on the host). NULL data: *out = NULL.
rk_status upload(cu_ctx *c, const eng_tensor *t, float **out)
{
    *out = NULL;
    if (!t->data)
        return RK_OK;
    size_t n = t->rows * t->cols;
    const float *src = (const float *)t->data;
    float *tmp = NULL;
    if (t->dtype != ENG_DTYPE_F32) {
        tmp = (float *)rk_malloc(n * sizeof(float));
        if (!tmp)
            return rk_error_set(RK_ERR_NOMEM, "cuda backend: out of host memory widening weights");
        const uint16_t *h = (const uint16_t *)t->data;
        for (size_t i = 0; i < n; i++)
            tmp[i] = t->dtype == ENG_DTYPE_F16 ? rk_f16_to_f32(h[i]) : rk_bf16_to_f32(h[i]);
        src = tmp;
    }
    void *d;
    rk_status st = dev_alloc(c, &d, n * sizeof(float));
    if (st == RK_OK && cudaMemcpy(d, src, n * sizeof(float), cudaMemcpyHostToDevice) != cudaSuccess)
        st = cuda_fail(cudaGetLastError(), "upload weights");
    rk_free(tmp);
    if (st == RK_OK)
        *out = (float *)d;
    return st;
}

// Device scratch of at least n floats (contents undefined).
rk_status scratch(cu_ctx *c, size_t n, float **out)
{
    if (n > c->scratch_floats) {
        cudaFree(c->scratch);
        c->scratch = NULL;
        c->scratch_floats = 0;
        CU(cudaMalloc(&c->scratch, n * sizeof(float)), "scratch");
        c->scratch_floats = n;
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

// ---- kernels ----------------------------------------------------------------------------

__device__ float block_sum(float v)
{
    __shared__ float part[32];
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
    __shared__ float total;
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
    __shared__ float total;
    if (threadIdx.x == 0)
        total = v;
    __syncthreads();
    float r = total;
    __syncthreads();
    return r;
}

// out[r] = w * x[src_row(r)] / rms(x[src_row(r)]); rows NULL: r itself. One block per row.
__global__ void k_rmsnorm(float *out, const float *x, const float *w, const int32_t *rows, int d, float eps)
{
    int r = blockIdx.x;
    const float *xr = x + (size_t)(rows ? rows[r] : r) * d;
    float ss = 0.0f;
    for (int j = threadIdx.x; j < d; j += blockDim.x)
        ss += xr[j] * xr[j];
    ss = block_sum(ss);
    float inv = 1.0f / sqrtf(ss / (float)d + eps);
    for (int j = threadIdx.x; j < d; j += blockDim.x)
        out[(size_t)r * d + j] = w[j] * (inv * xr[j]);
}

__global__ void k_add_bias(float *y, const float *b, size_t n, int cols)
{
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (i < n)
        y[i] += b[i % cols];
}

__global__ void k_add(float *x, const float *y, size_t n)
{
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (i < n)
        x[i] += y[i];
}

__global__ void k_swiglu(float *a, const float *b, size_t n)
{
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (i < n) {
        float v = a[i];
        v *= 1.0f / (1.0f + expf(-v));
        a[i] = v * b[i];
    }
}

// Rotate nrows rows of nheads heads (row stride = nheads*hd) at pos[row].
__global__ void k_rope(float *vec, int nrows, int nheads, int hd, const int32_t *pos, const float *inv_freq,
                       int interleaved)
{
    int half = hd / 2;
    size_t total = (size_t)nrows * nheads * half;
    size_t idx = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (idx >= total)
        return;
    int i = (int)(idx % half);
    size_t rh = idx / half;
    int h = (int)(rh % nheads);
    int r = (int)(rh / nheads);
    float val = (float)pos[r] * inv_freq[i];
    float fcr = cosf(val), fci = sinf(val);
    float *p = vec + ((size_t)r * nheads + h) * hd;
    int a = interleaved ? 2 * i : i, b = interleaved ? 2 * i + 1 : i + half;
    float v0 = p[a], v1 = p[b];
    p[a] = v0 * fcr - v1 * fci;
    p[b] = v0 * fci + v1 * fcr;
}

// cache[layer][slot[r]] = src[r] for n rows of kvd floats.
__global__ void k_scatter(float *cache, const float *src, const int32_t *slots, int n, int kvd, size_t layer_off)
{
    size_t idx = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (idx >= (size_t)n * kvd)
        return;
    int r = (int)(idx / kvd), j = (int)(idx % kvd);
    cache[layer_off + (size_t)slots[r] * kvd + j] = src[idx];
}

// out[r] = src[idx[r]] for rows of d floats.
__global__ void k_gather(float *out, const float *src, const int32_t *idx, int n, int d)
{
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (i >= (size_t)n * d)
        return;
    int r = (int)(i / d), j = (int)(i % d);
    out[i] = src[(size_t)idx[r] * d + j];
}

// Exact causal rule by position: slot t is visible to a query at position p iff spos[t] <= p
// (empty slots hold INT32_MAX). Optional slot groups: grp[t] (-1 none) with temperature /
// log-scale, and per-head masses per group.
// Attention in three steps per layer: S = K Q^T by cuBLAS (one SGEMM per head), this kernel
// (mask, scale, slot-group modifiers, softmax in place, group mass), then O = V P by cuBLAS.
// One block per (query row, head); scores (n, H, len) hold raw q.k on entry, probabilities on
// exit (exactly 0 where masked, so the V product ignores those slots).
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

unsigned blocks(size_t n, unsigned t = 256) { return (unsigned)((n + t - 1) / t); }

// Every matrix product goes through here: column-major C (m x n) = op(A) op(B), fp32 in and
// out. The compute type is the backend's math mode (RAGKV_CUDA_MATH): plain fp32 by default,
// or tensor-core tf32/bf16 with fp32 accumulation.
cublasStatus_t mm(cu_ctx *c, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, const float *a, int lda,
                  const float *b, int ldb, float *cm, int ldc)
{
    const float one = 1.0f, zero = 0.0f;
    if (c->compute == CUBLAS_COMPUTE_32F)
        return cublasSgemm(c->blas, ta, tb, m, n, k, &one, a, lda, b, ldb, &zero, cm, ldc);
    return cublasGemmEx(c->blas, ta, tb, m, n, k, &one, a, CUDA_R_32F, lda, b, CUDA_R_32F, ldb, &zero, cm, CUDA_R_32F,
                        ldc, c->compute, CUBLAS_GEMM_DEFAULT);
}

// y (n, out) = x (n, in) W^T, W (out, in) row-major, all on the device.
rk_status gemm(cu_ctx *c, float *y, const float *x, const float *w, size_t n, size_t in, size_t out)
{
    cublasStatus_t s = mm(c, CUBLAS_OP_T, CUBLAS_OP_N, (int)out, (int)n, (int)in, w, (int)in, x, (int)in, y, (int)out);
    return s == CUBLAS_STATUS_SUCCESS ? RK_OK : blas_fail(s, "gemm");
}

// Attention for one layer, att (n, H*hd) = softmax(mask(Q K^T / sqrt(hd))) V: attention_scores
// (an SGEMM per head), k_softmax, attention_values (an SGEMM per head). Query head h reads KV
// head h / group; K and V rows are kvd floats apart.
rk_status attention_scores(cu_ctx *c, const float *q, const float *k_rot, float *scores, size_t n, size_t len, int H,
                           int hd, int group, int kvd)
{
    for (int h = 0; h < H; h++) {
        size_t kvo = (size_t)(h / group) * hd;
        // scores[(r*H + h)*len + t] = k_t . q_r : (len x n) = K (len x hd) . Q^T
        cublasStatus_t st = mm(c, CUBLAS_OP_T, CUBLAS_OP_N, (int)len, (int)n, hd, k_rot + kvo, kvd, q + (size_t)h * hd,
                               H * hd, scores + (size_t)h * len, (int)(H * len));
        if (st != CUBLAS_STATUS_SUCCESS)
            return blas_fail(st, "attention scores");
    }
    return RK_OK;
}

rk_status attention_values(cu_ctx *c, float *att, const float *v, const float *scores, size_t n, size_t len, int H,
                           int hd, int group, int kvd)
{
    for (int h = 0; h < H; h++) {
        size_t kvo = (size_t)(h / group) * hd;
        // att[(r*H + h)*hd + i] = sum_t p[r,h,t] v_t[i] : (hd x n) = V^T (hd x len) . P (len x n)
        cublasStatus_t st = mm(c, CUBLAS_OP_N, CUBLAS_OP_N, hd, (int)n, (int)len, v + kvo, kvd,
                               scores + (size_t)h * len, (int)(H * len), att + (size_t)h * hd, H * hd);
        if (st != CUBLAS_STATUS_SUCCESS)
            return blas_fail(st, "attention values");
    }
    return RK_OK;
}

// ---- the interface ----------------------------------------------------------------------

void cu_free(void *ctx)
{
    cu_ctx *c = (cu_ctx *)ctx;
    if (!c)
        return;
    for (size_t i = 0; i < c->n_owned; i++)
        cudaFree(c->owned[i]);
    cudaFree(c->scratch);
    cudaFree(c->iscratch);
    if (c->blas)
        cublasDestroy(c->blas);
    rk_free(c->owned);
    rk_free(c->layers);
    rk_free(c);
}

rk_status cu_seq_init(void *ctx, eng_seq *s)
{
    cu_ctx *c = (cu_ctx *)ctx;
    size_t kvd = (size_t)c->mi->n_kv_heads * c->mi->head_dim;
    size_t bytes = (size_t)c->mi->n_layers * s->capacity * kvd * sizeof(float);
    cu_kv *kv = (cu_kv *)rk_calloc(1, sizeof(*kv));
    if (!kv)
        return rk_error_set(RK_ERR_NOMEM, "cuda backend: out of host memory");
    if (cudaMalloc(&kv->k_raw, bytes) != cudaSuccess || cudaMalloc(&kv->k_rot, bytes) != cudaSuccess ||
        cudaMalloc(&kv->v, bytes) != cudaSuccess) {
        cudaGetLastError();
        cudaFree(kv->k_raw);
        cudaFree(kv->k_rot);
        cudaFree(kv->v);
        rk_free(kv);
        return rk_error_set(RK_ERR_NOMEM, "cuda backend: no device memory for a KV cache of %zu slots", s->capacity);
    }
    // unwritten slots must hold finite values: the value product multiplies them by 0
    if (cudaMemset(kv->k_raw, 0, bytes) != cudaSuccess || cudaMemset(kv->k_rot, 0, bytes) != cudaSuccess ||
        cudaMemset(kv->v, 0, bytes) != cudaSuccess) {
        cudaGetLastError();
        cudaFree(kv->k_raw);
        cudaFree(kv->k_rot);
        cudaFree(kv->v);
        rk_free(kv);
        return rk_error_set(RK_ERR_DEVICE, "cuda backend: clearing a KV cache failed");
    }
    s->ctx = kv;
    return RK_OK;
}

void cu_seq_release(void *ctx, eng_seq *s)
{
    cu_kv *kv = (cu_kv *)s->ctx;
    if (!kv)
        return;
    cudaFree(kv->k_raw);
    cudaFree(kv->k_rot);
    cudaFree(kv->v);
    rk_free(kv);
    s->ctx = NULL;
}

rk_status cu_hidden_init(void *ctx, eng_hidden *h)
{
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
    cudaFree(h->ctx);
    h->ctx = NULL;
}

rk_status cu_hidden_write(void *ctx, eng_hidden *h, size_t row0, size_t n, const float *src)
{
    cu_ctx *c = (cu_ctx *)ctx;
    size_t d = (size_t)c->mi->dim;
    CU(cudaMemcpy((float *)h->ctx + row0 * d, src, n * d * sizeof(float), cudaMemcpyHostToDevice), "hidden write");
    return RK_OK;
}

rk_status cu_hidden_read(void *ctx, const eng_hidden *h, size_t row0, size_t n, float *dst)
{
    cu_ctx *c = (cu_ctx *)ctx;
    size_t d = (size_t)c->mi->dim;
    CU(cudaMemcpy(dst, (const float *)h->ctx + row0 * d, n * d * sizeof(float), cudaMemcpyDeviceToHost), "hidden read");
    return RK_OK;
}

// Copy n host int32 values to the device int scratch (offset off).
rk_status ints_up(cu_ctx *c, const int32_t *src, size_t n, size_t off, int32_t **out)
{
    int32_t *d = NULL;
    rk_status st = iscratch(c, off + n, &d);
    if (st != RK_OK)
        return st;
    CU(cudaMemcpy(d + off, src, n * sizeof(int32_t), cudaMemcpyHostToDevice), "copy indices");
    *out = d + off;
    return RK_OK;
}

rk_status cu_hidden_gather(void *ctx, eng_hidden *dst, const eng_hidden *src, const size_t *idx, size_t n)
{
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
        float *tmp = NULL;
        if ((st = scratch(c, n * d, &tmp)) != RK_OK)
            return st;
        k_gather<<<blocks(n * d), 256>>>(tmp, (const float *)src->ctx, didx, (int)n, d);
        CHECK_LAUNCH("gather");
        CU(cudaMemcpy(dst->ctx, tmp, n * d * sizeof(float), cudaMemcpyDeviceToDevice), "gather copy");
        return RK_OK;
    }
    k_gather<<<blocks(n * d), 256>>>((float *)dst->ctx, (const float *)src->ctx, didx, (int)n, d);
    CHECK_LAUNCH("gather");
    return RK_OK;
}

rk_status cu_embed(void *ctx, eng_hidden *h, size_t row0, const int32_t *tokens, size_t n)
{
    cu_ctx *c = (cu_ctx *)ctx;
    if (n == 0)
        return RK_OK;
    int32_t *dt;
    rk_status st = ints_up(c, tokens, n, 0, &dt);
    if (st != RK_OK)
        return st;
    int d = c->mi->dim;
    k_gather<<<blocks(n * d), 256>>>((float *)h->ctx + row0 * d, c->tok_emb, dt, (int)n, d);
    CHECK_LAUNCH("embed");
    return RK_OK;
}

rk_status cu_layer_forward(void *ctx, eng_seq *s, int layer, eng_hidden *hid, size_t n, const int32_t *pos,
                           const int32_t *slots, float *k_fresh, float *v_fresh, const eng_attn_groups *ag)
{
    cu_ctx *c = (cu_ctx *)ctx;
    const eng_model_info *mi = c->mi;
    const cu_layer *w = &c->layers[layer];
    cu_kv *kv = (cu_kv *)s->ctx;
    size_t d = (size_t)mi->dim, hd = (size_t)mi->head_dim, H = (size_t)mi->n_heads, qd = H * hd,
           kvd = (size_t)mi->n_kv_heads * hd, f = (size_t)mi->hidden, len = s->len;
    size_t G = ag ? ag->n_groups : 0;
    // scratch: xb (n,d) q (n,qd) k (n,kvd) v (n,kvd) att (n,qd) hb (n,f) hb2 (n,f) scores (n*H,len)
    //          + group params (temperature G, log_scale G) + mass (n*H*G)
    size_t need = n * (d + 2 * qd + 2 * kvd + 2 * f) + n * H * len + 2 * G + n * H * G + 16;
    float *buf = NULL;
    rk_status st = scratch(c, need, &buf);
    if (st != RK_OK)
        return st;
    float *xb = buf, *q = xb + n * d, *k = q + n * qd, *v = k + n * kvd, *att = v + n * kvd, *hb = att + n * qd,
          *hb2 = hb + n * f, *scores = hb2 + n * f, *dtemp = scores + n * H * len, *dls = dtemp + G,
          *dmass = dls + G;
    // ints: pos (n), slots (n), slot positions (len), group per slot (len), group bounds (G+1);
    // reserved at once (growing the scratch would move what ints_up handed out before)
    int32_t *dpos = NULL, *dslots = NULL, *dspos = NULL, *dgrp = NULL, *dgb = NULL, *ibase = NULL;
    if ((st = iscratch(c, 2 * n + 2 * len + G + 1, &ibase)) != RK_OK)
        return st;
    if ((st = ints_up(c, pos, n, 0, &dpos)) != RK_OK || (st = ints_up(c, slots, n, n, &dslots)) != RK_OK ||
        (st = ints_up(c, s->pos, len, 2 * n, &dspos)) != RK_OK)
        return st;
    if (ag) {
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
        st = ints_up(c, hg, len + G + 1, 2 * n + len, &dgrp);
        rk_free(hg);
        if (st != RK_OK)
            return st;
        dgb = dgrp + len;
        if (ag->temperature)
            CU(cudaMemcpy(dtemp, ag->temperature, G * sizeof(float), cudaMemcpyHostToDevice), "group temperature");
        if (ag->log_scale)
            CU(cudaMemcpy(dls, ag->log_scale, G * sizeof(float), cudaMemcpyHostToDevice), "group log-scale");
    }
    float *x = (float *)hid->ctx;
    k_rmsnorm<<<(unsigned)n, 256>>>(xb, x, w->attn_norm, NULL, (int)d, mi->norm_eps);
    CHECK_LAUNCH("rmsnorm");
    if ((st = gemm(c, q, xb, w->wq, n, d, qd)) || (st = gemm(c, k, xb, w->wk, n, d, kvd)) ||
        (st = gemm(c, v, xb, w->wv, n, d, kvd)))
        return st;
    if (w->bq) {
        k_add_bias<<<blocks(n * qd), 256>>>(q, w->bq, n * qd, (int)qd);
        k_add_bias<<<blocks(n * kvd), 256>>>(k, w->bk, n * kvd, (int)kvd);
        k_add_bias<<<blocks(n * kvd), 256>>>(v, w->bv, n * kvd, (int)kvd);
        CHECK_LAUNCH("bias");
    }
    if (k_fresh)
        CU(cudaMemcpy(k_fresh, k, n * kvd * sizeof(float), cudaMemcpyDeviceToHost), "fresh K");
    if (v_fresh)
        CU(cudaMemcpy(v_fresh, v, n * kvd * sizeof(float), cudaMemcpyDeviceToHost), "fresh V");
    size_t loff = (size_t)layer * s->capacity * kvd;
    int inter = mi->rope == ENG_ROPE_INTERLEAVED;
    k_scatter<<<blocks(n * kvd), 256>>>(kv->k_raw, k, dslots, (int)n, (int)kvd, loff);
    k_scatter<<<blocks(n * kvd), 256>>>(kv->v, v, dslots, (int)n, (int)kvd, loff);
    k_rope<<<blocks(n * mi->n_kv_heads * (hd / 2)), 256>>>(k, (int)n, mi->n_kv_heads, (int)hd, dpos, c->inv_freq, inter);
    k_scatter<<<blocks(n * kvd), 256>>>(kv->k_rot, k, dslots, (int)n, (int)kvd, loff);
    k_rope<<<blocks(n * H * (hd / 2)), 256>>>(q, (int)n, (int)H, (int)hd, dpos, c->inv_freq, inter);
    CHECK_LAUNCH("rope and cache");
    int group = mi->n_heads / mi->n_kv_heads;
    if ((st = attention_scores(c, q, kv->k_rot + loff, scores, n, len, (int)H, (int)hd, group, (int)kvd)))
        return st;
    k_softmax<<<(unsigned)(n * H), 256>>>(scores, dspos, (int)len, dpos, (int)H, sqrtf((float)hd), dgrp,
                                          ag && ag->temperature ? dtemp : NULL, ag && ag->log_scale ? dls : NULL,
                                          (int)G, ag && ag->mass ? dmass : NULL, dgb);
    CHECK_LAUNCH("attention softmax");
    if ((st = attention_values(c, att, kv->v + loff, scores, n, len, (int)H, (int)hd, group, (int)kvd)))
        return st;
    if (ag && ag->mass) { // mean over heads, in head order (as the CPU backend)
        float *mh = (float *)rk_malloc(n * H * G * sizeof(float));
        if (!mh)
            return rk_error_set(RK_ERR_NOMEM, "cuda backend: out of host memory");
        cudaError_t e = cudaMemcpy(mh, dmass, n * H * G * sizeof(float), cudaMemcpyDeviceToHost);
        if (e != cudaSuccess) {
            rk_free(mh);
            return cuda_fail(e, "attention mass");
        }
        for (size_t r = 0; r < n; r++)
            for (size_t g = 0; g < G; g++) {
                float m = 0.0f;
                for (size_t hh = 0; hh < H; hh++)
                    m += mh[(r * H + hh) * G + g];
                ag->mass[r * G + g] = m / (float)H;
            }
        rk_free(mh);
    }
    if ((st = gemm(c, xb, att, w->wo, n, qd, d)))
        return st;
    k_add<<<blocks(n * d), 256>>>(x, xb, n * d);
    k_rmsnorm<<<(unsigned)n, 256>>>(xb, x, w->ffn_norm, NULL, (int)d, mi->norm_eps);
    CHECK_LAUNCH("residual and norm");
    if ((st = gemm(c, hb, xb, w->w1, n, d, f)) || (st = gemm(c, hb2, xb, w->w3, n, d, f)))
        return st;
    k_swiglu<<<blocks(n * f), 256>>>(hb, hb2, n * f);
    CHECK_LAUNCH("swiglu");
    if ((st = gemm(c, xb, hb, w->w2, n, f, d)))
        return st;
    k_add<<<blocks(n * d), 256>>>(x, xb, n * d);
    CHECK_LAUNCH("residual");
    CU(cudaDeviceSynchronize(), "layer");
    return RK_OK;
}

rk_status cu_logits(void *ctx, const eng_hidden *h, const size_t *rows, size_t n, float *logits)
{
    cu_ctx *c = (cu_ctx *)ctx;
    if (n == 0)
        return RK_OK;
    size_t d = (size_t)c->mi->dim, V = (size_t)c->mi->vocab;
    float *buf = NULL;
    rk_status st = scratch(c, n * d + n * V, &buf);
    if (st != RK_OK)
        return st;
    int32_t *drows = NULL;
    if (rows) {
        int32_t *hr = (int32_t *)rk_malloc(n * sizeof(int32_t));
        if (!hr)
            return rk_error_set(RK_ERR_NOMEM, "cuda backend: out of host memory");
        for (size_t i = 0; i < n; i++)
            hr[i] = (int32_t)rows[i];
        st = ints_up(c, hr, n, 0, &drows);
        rk_free(hr);
        if (st != RK_OK)
            return st;
    }
    float *xn = buf, *lg = buf + n * d;
    k_rmsnorm<<<(unsigned)n, 256>>>(xn, (const float *)h->ctx, c->final_norm, drows, (int)d, c->mi->norm_eps);
    CHECK_LAUNCH("final norm");
    if ((st = gemm(c, lg, xn, c->wcls, n, d, V)))
        return st;
    CU(cudaMemcpy(logits, lg, n * V * sizeof(float), cudaMemcpyDeviceToHost), "logits");
    return RK_OK;
}

rk_status cu_kv_export(void *ctx, const eng_seq *s, int layer0, int n_layers, size_t slot0, size_t n, float *out)
{
    cu_ctx *c = (cu_ctx *)ctx;
    const cu_kv *kv = (const cu_kv *)s->ctx;
    size_t kvd = (size_t)c->mi->n_kv_heads * c->mi->head_dim;
    for (int i = 0; i < n_layers; i++) {
        size_t src = (((size_t)layer0 + i) * s->capacity + slot0) * kvd;
        CU(cudaMemcpy(out + (2 * (size_t)i) * n * kvd, kv->k_raw + src, n * kvd * sizeof(float),
                      cudaMemcpyDeviceToHost), "export K");
        CU(cudaMemcpy(out + (2 * (size_t)i + 1) * n * kvd, kv->v + src, n * kvd * sizeof(float),
                      cudaMemcpyDeviceToHost), "export V");
    }
    return RK_OK;
}

rk_status cu_kv_import(void *ctx, eng_seq *s, int layer0, int n_layers, size_t slot0, size_t n,
                       const int32_t *pos, const float *kv_in)
{
    cu_ctx *c = (cu_ctx *)ctx;
    cu_kv *kv = (cu_kv *)s->ctx;
    const eng_model_info *mi = c->mi;
    size_t kvd = (size_t)mi->n_kv_heads * mi->head_dim;
    if (n == 0)
        return RK_OK;
    int32_t *dpos;
    rk_status st = ints_up(c, pos, n, 0, &dpos);
    if (st != RK_OK)
        return st;
    for (int i = 0; i < n_layers; i++) {
        size_t dst = (((size_t)layer0 + i) * s->capacity + slot0) * kvd;
        CU(cudaMemcpy(kv->k_raw + dst, kv_in + (2 * (size_t)i) * n * kvd, n * kvd * sizeof(float),
                      cudaMemcpyHostToDevice), "import K");
        CU(cudaMemcpy(kv->k_rot + dst, kv_in + (2 * (size_t)i) * n * kvd, n * kvd * sizeof(float),
                      cudaMemcpyHostToDevice), "import K");
        CU(cudaMemcpy(kv->v + dst, kv_in + (2 * (size_t)i + 1) * n * kvd, n * kvd * sizeof(float),
                      cudaMemcpyHostToDevice), "import V");
        k_rope<<<blocks(n * mi->n_kv_heads * (mi->head_dim / 2)), 256>>>(kv->k_rot + dst, (int)n, mi->n_kv_heads,
                                                                         mi->head_dim, dpos, c->inv_freq,
                                                                         mi->rope == ENG_ROPE_INTERLEAVED);
        CHECK_LAUNCH("import rope");
    }
    CU(cudaDeviceSynchronize(), "import");
    return RK_OK;
}

const struct eng_backend_i cu_iface = {
    "cuda",           cu_free,          cu_seq_init,  cu_seq_release, cu_hidden_init,
    cu_hidden_release, cu_hidden_write, cu_hidden_read, cu_hidden_gather, cu_embed,
    cu_layer_forward, cu_logits,        cu_kv_export, cu_kv_import,     NULL, // decode: engine.c runs the layers
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
    // the math mode of every matrix product: fp32 (default; what the conformance suite checks),
    // tf32 or bf16 (tensor cores, fp32 accumulation: faster, ~1e-3 / ~1e-2 relative error)
    cublasComputeType_t compute = CUBLAS_COMPUTE_32F;
    const char *math = getenv("RAGKV_CUDA_MATH");
    if (math && *math && strcmp(math, "fp32") != 0) {
        if (strcmp(math, "tf32") == 0)
            compute = CUBLAS_COMPUTE_32F_FAST_TF32;
        else if (strcmp(math, "bf16") == 0)
            compute = CUBLAS_COMPUTE_32F_FAST_16BF;
        else
            return rk_error_set(RK_ERR_INVALID, "cuda backend: RAGKV_CUDA_MATH=%s: expected fp32, tf32 or bf16", math);
    }
    rk_status st = RK_OK;
    eng_backend *be = NULL;
    cu_ctx *c = (cu_ctx *)rk_calloc(1, sizeof(*c));
    if (!c)
        return rk_error_set(RK_ERR_NOMEM, "cuda backend: out of host memory");
    c->m = m;
    c->mi = &m->info;
    c->device = device;
    c->compute = compute;
    if (cublasCreate(&c->blas) != CUBLAS_STATUS_SUCCESS) {
        st = rk_error_set(RK_ERR_DEVICE, "cuda backend: cublasCreate failed");
        goto fail;
    }
    cublasSetMathMode(c->blas, CUBLAS_DEFAULT_MATH); // the compute type in mm() alone picks tf32/bf16
    c->layers = (cu_layer *)rk_calloc((size_t)m->info.n_layers, sizeof(cu_layer));
    be = (eng_backend *)rk_calloc(1, sizeof(*be));
    if (!c->layers || !be) {
        st = rk_error_set(RK_ERR_NOMEM, "cuda backend: out of host memory");
        goto fail;
    }
    if ((st = upload(c, &m->tok_emb, &c->tok_emb)) || (st = upload(c, &m->final_norm, &c->final_norm)))
        goto fail;
    if (m->wcls.data == m->tok_emb.data)
        c->wcls = c->tok_emb;
    else if ((st = upload(c, &m->wcls, &c->wcls)))
        goto fail;
    {
        eng_tensor inv = {ENG_DTYPE_F32, m->inv_freq, 1, (size_t)m->info.head_dim / 2};
        if ((st = upload(c, &inv, &c->inv_freq)))
            goto fail;
    }
    for (int l = 0; l < m->info.n_layers; l++) {
        const eng_layer_weights *w = &m->layers[l];
        cu_layer *o = &c->layers[l];
        if ((st = upload(c, &w->attn_norm, &o->attn_norm)) || (st = upload(c, &w->wq, &o->wq)) ||
            (st = upload(c, &w->wk, &o->wk)) || (st = upload(c, &w->wv, &o->wv)) ||
            (st = upload(c, &w->bq, &o->bq)) || (st = upload(c, &w->bk, &o->bk)) ||
            (st = upload(c, &w->bv, &o->bv)) || (st = upload(c, &w->wo, &o->wo)) ||
            (st = upload(c, &w->ffn_norm, &o->ffn_norm)) || (st = upload(c, &w->w1, &o->w1)) ||
            (st = upload(c, &w->w2, &o->w2)) || (st = upload(c, &w->w3, &o->w3)))
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
