// gemm_lt.cu — products of many rows through cuBLASLt with a timed choice of algorithm (see
// gemm_lt.h).
#include <cublasLt.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gemm_lt.h"

extern "C" {
#include "ragkv/alloc.h"
}

namespace {

constexpr size_t LT_WORKSPACE = (size_t)32 << 20; // what every candidate may use
constexpr int TUNE_REPS = 3;                       // timed runs per candidate (after one warm-up)

// One tuned shape.
struct tuned_entry {
    size_t out, in;           // the product's columns and inner size
    int yt;                   // output type (cudaDataType_t)
    bool acc;                 // beta 1
    int bucket;               // floor(log2(rows))
    bool ok;                  // algo usable (false: this shape goes through cuBLAS)
    unsigned align;           // the pointer alignment (bytes) the candidates were asked for
    cublasLtMatmulAlgo_t algo; // the chosen algorithm
};

// The alignment of the product's pointers in bytes (the largest power of two dividing every
// address, at most 256: cuBLASLt's default assumption, which its faster algorithms may need).
unsigned ptr_align(const void *y, const void *x, const void *w)
{
    uintptr_t v = (uintptr_t)y | (uintptr_t)x | (uintptr_t)w | 256u;
    return (unsigned)(v & (~v + 1));
}

int rows_bucket(size_t n)
{
    int b = 0;
    while (n >>= 1)
        b++;
    return b;
}

const char *type_name(cudaDataType_t t) { return t == CUDA_R_16BF ? "bf16" : t == CUDA_R_32F ? "fp32" : "?"; }

// The operation and layouts of one product (freed by lt_desc_free).
struct lt_desc {
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t a, b, c;
};

void lt_desc_free(lt_desc *d)
{
    if (d->c)
        cublasLtMatrixLayoutDestroy(d->c);
    if (d->b)
        cublasLtMatrixLayoutDestroy(d->b);
    if (d->a)
        cublasLtMatrixLayoutDestroy(d->a);
    if (d->op)
        cublasLtMatmulDescDestroy(d->op);
}

// Column-major view of y (n, out) row-major = W (out, in) x (n, in)^T: D (out x n) = op_T(A)
// B with A the stored W read as (in x out) and B the stored x read as (in x n).
cublasStatus_t lt_desc_make(lt_desc *d, cudaDataType_t yt, size_t n, size_t in, size_t out)
{
    memset(d, 0, sizeof(*d));
    const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    cublasStatus_t s = cublasLtMatmulDescCreate(&d->op, CUBLAS_COMPUTE_32F, CUDA_R_32F);
    if (s == CUBLAS_STATUS_SUCCESS)
        s = cublasLtMatmulDescSetAttribute(d->op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta));
    if (s == CUBLAS_STATUS_SUCCESS)
        s = cublasLtMatmulDescSetAttribute(d->op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb));
    if (s == CUBLAS_STATUS_SUCCESS)
        s = cublasLtMatrixLayoutCreate(&d->a, CUDA_R_16BF, in, out, (int64_t)in);
    if (s == CUBLAS_STATUS_SUCCESS)
        s = cublasLtMatrixLayoutCreate(&d->b, CUDA_R_16BF, in, n, (int64_t)in);
    if (s == CUBLAS_STATUS_SUCCESS)
        s = cublasLtMatrixLayoutCreate(&d->c, yt, out, n, (int64_t)out);
    return s;
}

} // namespace

struct gemm_tuner {
    int mode;            // 1 timed, 2 first heuristic
    bool log;            // print each choice on stderr
    cublasLtHandle_t lt;
    void *ws;            // (LT_WORKSPACE) device, allocated at the first product
    tuned_entry *e;      // (n_e) the shapes seen
    size_t n_e, cap_e;
};

int gemm_tune_mode_from_env(void)
{
    const char *v = getenv("RAGKV_CUDA_GEMM_TUNE");
    if (!v || !*v)
        return 0; // off until an A/B on the H100 shows a gain (docs/engine.md)
    if ((v[0] == '0' || v[0] == '1' || v[0] == '2') && !v[1])
        return v[0] - '0';
    rk_error_set(RK_ERR_INVALID, "cuda backend: RAGKV_CUDA_GEMM_TUNE=%s: expected 0 (off), 1 (timed) or 2 "
                                 "(first heuristic)", v);
    return -1;
}

rk_status gemm_tuner_new(int mode, bool log, gemm_tuner **out)
{
    *out = NULL;
    if (mode == 0)
        return RK_OK;
    gemm_tuner *t = (gemm_tuner *)rk_calloc(1, sizeof(*t));
    if (!t)
        return rk_error_set(RK_ERR_NOMEM, "cuda backend: out of host memory");
    t->mode = mode;
    t->log = log;
    cublasStatus_t s = cublasLtCreate(&t->lt);
    if (s != CUBLAS_STATUS_SUCCESS) {
        rk_free(t);
        return rk_error_set(RK_ERR_DEVICE, "cuda backend: cublasLtCreate failed: cuBLAS status %d", (int)s);
    }
    *out = t;
    return RK_OK;
}

void gemm_tuner_free(gemm_tuner *t)
{
    if (!t)
        return;
    cudaFree(t->ws);
    cublasLtDestroy(t->lt);
    rk_free(t->e);
    rk_free(t);
}

namespace {

cublasStatus_t lt_run(gemm_tuner *t, const lt_desc *d, const cublasLtMatmulAlgo_t *algo, cudaStream_t s, void *y,
                      const void *x, const void *w, float beta)
{
    const float one = 1.0f;
    return cublasLtMatmul(t->lt, d->op, &one, w, d->a, x, d->b, &beta, y, d->c, y, d->c, algo, t->ws, LT_WORKSPACE,
                          s);
}

// Time cand[0..nc) on s into y (a scratch copy with acc), set *best to the fastest. RK_OK with
// *best -1 when none ran.
rk_status lt_time(gemm_tuner *t, const lt_desc *d, const cublasLtMatmulHeuristicResult_t *cand, int nc,
                  cudaStream_t s, void *y, const void *x, const void *w, float beta, float *ms, int *best)
{
    *best = -1;
    cudaEvent_t e0 = NULL, e1 = NULL;
    if (cudaEventCreate(&e0) != cudaSuccess || cudaEventCreate(&e1) != cudaSuccess) {
        cudaGetLastError();
        if (e0)
            cudaEventDestroy(e0);
        return rk_error_set(RK_ERR_DEVICE, "cuda backend: gemm tuning: cudaEventCreate failed");
    }
    rk_status st = RK_OK;
    for (int i = 0; i < nc && st == RK_OK; i++) {
        ms[i] = -1.0f;
        if (cand[i].state != CUBLAS_STATUS_SUCCESS || cand[i].workspaceSize > LT_WORKSPACE)
            continue;
        if (lt_run(t, d, &cand[i].algo, s, y, x, w, beta) != CUBLAS_STATUS_SUCCESS)
            continue; // this candidate cannot run this product: skip it
        bool ran = cudaEventRecord(e0, s) == cudaSuccess;
        for (int r = 0; r < TUNE_REPS && ran; r++)
            ran = lt_run(t, d, &cand[i].algo, s, y, x, w, beta) == CUBLAS_STATUS_SUCCESS;
        cudaError_t ce = ran ? cudaEventRecord(e1, s) : cudaSuccess;
        if (ce == cudaSuccess && ran)
            ce = cudaEventSynchronize(e1);
        float el = 0.0f;
        if (ce == cudaSuccess && ran)
            ce = cudaEventElapsedTime(&el, e0, e1);
        if (ce != cudaSuccess) {
            cudaGetLastError();
            st = rk_error_set(RK_ERR_DEVICE, "cuda backend: gemm tuning: %s", cudaGetErrorString(ce));
        } else if (ran) {
            ms[i] = el / TUNE_REPS;
            if (*best < 0 || ms[i] < ms[*best])
                *best = i;
        }
    }
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    return st;
}

// Choose the algorithm for the shape of (d, n, in, out, yt, acc) into ent (ent->ok false when
// none could run: the caller uses cuBLAS). May run products into y (not with acc).
rk_status lt_tune(gemm_tuner *t, const lt_desc *d, tuned_entry *ent, cudaStream_t s, void *y, const void *x,
                  const void *w, size_t n, bool acc)
{
    ent->ok = false;
    cublasLtMatmulPreference_t pref = NULL;
    cublasLtMatmulHeuristicResult_t cand[GEMM_TUNE_CANDIDATES];
    int nc = 0;
    size_t wsb = LT_WORKSPACE;
    cublasStatus_t bs = cublasLtMatmulPreferenceCreate(&pref);
    if (bs == CUBLAS_STATUS_SUCCESS)
        bs = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &wsb, sizeof(wsb));
    // only algorithms that work at this product's pointer alignment (later products of the
    // shape with less aligned pointers go through cuBLAS: gemm_tuned)
    const uint32_t al = ent->align;
    const cublasLtMatmulPreferenceAttributes_t aligns[] = {
        CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
        CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES};
    for (int i = 0; i < 4 && bs == CUBLAS_STATUS_SUCCESS; i++)
        bs = cublasLtMatmulPreferenceSetAttribute(pref, aligns[i], &al, sizeof(al));
    if (bs == CUBLAS_STATUS_SUCCESS)
        bs = cublasLtMatmulAlgoGetHeuristic(t->lt, d->op, d->a, d->b, d->c, d->c, pref,
                                            t->mode == 2 ? 1 : GEMM_TUNE_CANDIDATES, cand, &nc);
    if (pref)
        cublasLtMatmulPreferenceDestroy(pref);
    if (bs != CUBLAS_STATUS_SUCCESS || nc <= 0)
        return RK_OK; // no candidates: cuBLAS runs this shape
    const float beta = acc ? 1.0f : 0.0f;
    int best = 0;
    float ms[GEMM_TUNE_CANDIDATES];
    if (t->mode == 1 && nc > 1) {
        void *dst = y;
        const size_t es = ent->yt == CUDA_R_16BF ? 2 : 4, bytes = n * ent->out * es;
        if (acc) { // y holds the residual: time on a copy (contents do not matter, only the time)
            dst = NULL;
            if (cudaMallocAsync(&dst, bytes, s) != cudaSuccess) {
                cudaGetLastError();
                dst = NULL;
            }
        }
        rk_status st = RK_OK;
        if (dst) {
            st = lt_time(t, d, cand, nc, s, dst, x, w, beta, ms, &best);
            if (acc)
                cudaFreeAsync(dst, s);
        }
        if (st != RK_OK)
            return st;
        if (best < 0)
            return RK_OK;
        if (t->log && !dst)
            fprintf(stderr, "cuda gemm tune: %zu rows x %zu -> %zu: no memory to time on, cuBLASLt's first heuristic\n",
                    n, ent->in, ent->out);
        else if (t->log)
            fprintf(stderr,
                    "cuda gemm tune: %zu rows x %zu -> %zu (%s out%s): %d candidates, first %.3f ms, chose #%d "
                    "%.3f ms (%.0f TFLOP/s)\n",
                    n, ent->in, ent->out, type_name((cudaDataType_t)ent->yt), acc ? ", accumulate" : "", nc,
                    ms[0] >= 0.0f ? ms[0] : 0.0f, best, ms[best], 2.0 * n * ent->in * ent->out / (ms[best] * 1e9));
    } else if (t->log) {
        fprintf(stderr, "cuda gemm tune: %zu rows x %zu -> %zu (%s out%s): cuBLASLt's first heuristic\n", n, ent->in,
                ent->out, type_name((cudaDataType_t)ent->yt), acc ? ", accumulate" : "");
    }
    ent->algo = cand[best].algo;
    ent->ok = true;
    return RK_OK;
}

} // namespace

rk_status gemm_tuned(gemm_tuner *t, cudaStream_t s, void *y, cudaDataType_t yt, const void *x, const void *w,
                     size_t n, size_t in, size_t out, bool acc, bool *ran)
{
    *ran = false;
    if (!t || n < GEMM_TUNE_MIN_ROWS)
        return RK_OK;
    cudaStreamCaptureStatus cs = cudaStreamCaptureStatusNone;
    if (cudaStreamIsCapturing(s, &cs) != cudaSuccess) {
        cudaGetLastError();
        return RK_OK;
    }
    if (cs != cudaStreamCaptureStatusNone)
        return RK_OK; // a graph: cuBLAS, as the capture expects
    const int bucket = rows_bucket(n);
    tuned_entry *ent = NULL;
    for (size_t i = 0; i < t->n_e && !ent; i++) {
        tuned_entry *e = &t->e[i];
        if (e->out == out && e->in == in && e->yt == (int)yt && e->acc == acc && e->bucket == bucket)
            ent = e;
    }
    const unsigned align = ptr_align(y, x, w);
    if (ent && (!ent->ok || align < ent->align))
        return RK_OK; // no algorithm, or this call's pointers are less aligned than it was chosen for
    if (!t->ws) {
        if (cudaMalloc(&t->ws, LT_WORKSPACE) != cudaSuccess) {
            cudaGetLastError();
            t->ws = NULL;
            return RK_OK; // no room for the workspace: cuBLAS
        }
    }
    lt_desc d;
    if (lt_desc_make(&d, yt, n, in, out) != CUBLAS_STATUS_SUCCESS) {
        lt_desc_free(&d);
        return RK_OK;
    }
    rk_status st = RK_OK;
    if (!ent) {
        if (t->n_e == t->cap_e) {
            size_t cap = t->cap_e ? 2 * t->cap_e : 16;
            tuned_entry *ne = (tuned_entry *)rk_realloc(t->e, cap * sizeof(*ne));
            if (!ne) {
                lt_desc_free(&d);
                return rk_error_set(RK_ERR_NOMEM, "cuda backend: out of host memory");
            }
            t->e = ne;
            t->cap_e = cap;
        }
        ent = &t->e[t->n_e];
        memset(ent, 0, sizeof(*ent));
        ent->out = out;
        ent->in = in;
        ent->yt = (int)yt;
        ent->acc = acc;
        ent->bucket = bucket;
        ent->align = align;
        st = lt_tune(t, &d, ent, s, y, x, w, n, acc);
        t->n_e++;
    }
    if (st == RK_OK && ent->ok) {
        cublasStatus_t bs = lt_run(t, &d, &ent->algo, s, y, x, w, acc ? 1.0f : 0.0f);
        if (bs == CUBLAS_STATUS_SUCCESS)
            *ran = true;
        else
            ent->ok = false; // e.g. another row count of the bucket this algorithm cannot do
    }
    lt_desc_free(&d);
    return st;
}
