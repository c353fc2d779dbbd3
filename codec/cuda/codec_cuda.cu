/* codec_cuda.cu — the CUDA decoder: containers decode straight into device memory in the
 * canonical layout, fp16 or bf16, bit-identical to the CPU decoder.
 *
 * cachegen: one thread per independent stream (<= 256 tokens x one channel group); the host
 * parses and validates everything but the entropy-coded bytes (cg_prepare, shared with the
 * CPU path), uploads payload, stream offsets, scales and probability models, and the kernel
 * mirrors decode_streams() in cachegen.c operation for operation (__fmul_rn/__fadd_rn: no
 * fused multiply-add, like the CPU build's -ffp-contract=off). Containers of a transform
 * codebook decode their coefficients (f32, the codebook's reconstruction points) into a
 * device buffer, then a second kernel applies cg_transform_row()'s sums in its order, one
 * thread per output value. q8 and raw have elementwise
 * kernels; lz4 decodes on the CPU (LZ4 is serial per block) and is copied up. */
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "codec_impl.h"
#include "ragkv/alloc.h"

#define CG_CUDA_MAX_GROUP 64

/* Translate a CUDA error: no device/driver -> RK_ERR_UNAVAILABLE, else RK_ERR_DEVICE. */
static rk_status cuda_err(cudaError_t e, const char *what)
{
    if (e == cudaErrorNoDevice || e == cudaErrorInsufficientDriver)
        return rk_error_set(RK_ERR_UNAVAILABLE, "%s: %s", what, cudaGetErrorString(e));
    return rk_error_set(RK_ERR_DEVICE, "%s: %s", what, cudaGetErrorString(e));
}

#define CK(call, what)                                                                        \
    do {                                                                                      \
        cudaError_t e_ = (call);                                                              \
        if (e_ != cudaSuccess) {                                                              \
            st = cuda_err(e_, what);                                                          \
            goto done;                                                                        \
        }                                                                                     \
    } while (0)

extern "C" int codec_cuda_available(void)
{
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError();
        return 0;
    }
    return n > 0;
}

/* Store v at index i as bf16 or fp16, rounding to nearest even (as the CPU does). */
__device__ __forceinline__ void store_out(void *out, int bf16, size_t i, float v)
{
    if (bf16)
        ((__nv_bfloat16 *)out)[i] = __float2bfloat16_rn(v);
    else
        ((__half *)out)[i] = __float2half_rn(v);
}

/* ---- cachegen ---------------------------------------------------------------------------- */

/* Everything the kernel reads, by value (uploaded once per reader). */
struct cg_dev {
    cg_params p;              /* qmax lives here too */
    uint32_t T, H, D, C, n_tblocks, n_groups, models_per_lkv;
    size_t scale_block0, scale_block1;
    const uint8_t *payload;   /* device */
    const uint64_t *offs;     /* device [n_streams + 1] */
    const float *scales;      /* device [n_scales] */
    const rans_model *models; /* device [n_models] */
    const float *recon;       /* device [n_models][CODEC_MAX_SYMBOLS] (transform), or NULL */
    float *coef;              /* device [L][2][T][C] coefficients (transform), or NULL */
    const float *tf_mean;     /* device [L][2][C] (transform) */
    const float *tf_dec;      /* device [L][2][C/B][B][B] (transform) */
    uint32_t tf_B;            /* transform block, 0: none */
    int bf16;
    int *failed;              /* device flag */
};

/* One thread per stream of [s0, s1): decode_streams() of cachegen.c, operation for operation.
 * out holds the canonical layout from (layer, K|V) index lkv0 on. */
__global__ void cg_decode_kernel(const cg_dev *__restrict__ dp, size_t s0, size_t s1, size_t lkv0, void *out)
{
    const cg_dev &d = *dp;
    size_t si = s0 + (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (si >= s1)
        return;
    const cg_params &p = d.p;
    uint32_t g = (uint32_t)(si % d.n_groups);
    uint32_t tb = (uint32_t)(si / d.n_groups % d.n_tblocks);
    size_t lkv = si / d.n_groups / d.n_tblocks;
    uint32_t kv = (uint32_t)(lkv % 2);
    int qmax = p.qmax[lkv];
    int mode = kv ? p.v_scale_mode : p.k_scale_mode;
    int delta = p.anchor_interval ? 1 : 0;
    uint32_t t0 = tb * p.stream_tokens, t1 = min(t0 + p.stream_tokens, d.T);
    uint32_t c0 = g * p.group, c1 = min(c0 + p.group, d.C);
    uint32_t nc = c1 - c0;
    size_t sbase = (lkv / 2) * (d.scale_block0 + d.scale_block1) + (kv ? d.scale_block0 : 0);
    size_t mbase = lkv * d.models_per_lkv;
    float anchor[CG_CUDA_MAX_GROUP];
    const uint8_t *ptr = d.payload + d.offs[si], *end = d.payload + d.offs[si + 1];
    if (end - ptr < 4) {
        atomicExch(d.failed, 1);
        return;
    }
    uint32_t x = (uint32_t)ptr[0] | (uint32_t)ptr[1] << 8 | (uint32_t)ptr[2] << 16 |
                 (uint32_t)ptr[3] << 24;
    ptr += 4;
    for (uint32_t t = t0; t < t1; t++) {
        int res = 0;
        if (delta) {
            uint32_t b0 = t - t % p.stream_tokens;
            uint32_t a = b0 + (t - b0) / p.anchor_interval * p.anchor_interval;
            res = a != t;
        }
        size_t obase = ((lkv - lkv0) * d.T + t) * d.C + c0;
        for (uint32_t i = 0; i < nc; i++) {
            uint32_t c = c0 + i;
            size_t mi = mbase + (size_t)(c / p.model_group) * (delta ? 2 : 1) + res;
            const rans_model *m = &d.models[mi];
            uint32_t slot = x & (RANS_PROB_SCALE - 1);
            uint32_t s = m->bucket[slot >> 8];
            while (m->cum[s + 1] <= slot)
                s++;
            x = (m->cum[s + 1] - m->cum[s]) * (x >> RANS_PROB_BITS) + slot - m->cum[s];
            while (x < RANS_L) {
                if (ptr == end) {
                    atomicExch(d.failed, 1);
                    return;
                }
                x = (x << 8) | *ptr++;
            }
            float sc = mode == CODEC_SCALE_TOKEN ? d.scales[sbase + (size_t)t * d.H + c / d.D]
                                                 : d.scales[sbase + (res ? d.C : 0) + c];
            float q = d.recon ? d.recon[mi * CODEC_MAX_SYMBOLS + s] : (float)((int)s - qmax);
            float val = __fmul_rn(q, sc);
            if (res)
                val = __fadd_rn(anchor[i], val);
            else
                anchor[i] = val;
            if (d.coef) /* transform: coefficients, at their place in the whole container */
                d.coef[obase + lkv0 * d.T * d.C + i] = val;
            else
                store_out(out, d.bf16, obase + i, val);
        }
    }
    if (x != RANS_L || ptr != end)
        atomicExch(d.failed, 1);
}

/* Transform containers: the n values from value v0 on (whole (layer, K|V) planes) from their
 * blocks' coefficients, cg_transform_row() of cachegen.c operation for operation; out holds
 * them from v0 on. */
__global__ void cg_transform_kernel(const cg_dev *__restrict__ dp, size_t v0, size_t n, void *out)
{
    const cg_dev &d = *dp;
    size_t j = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= n)
        return;
    size_t k = v0 + j;
    uint32_t B = d.tf_B, c = (uint32_t)(k % d.C), c0 = c - c % B;
    size_t row = k / d.C, lkv = row / d.T;
    const float *m = d.tf_dec + (lkv * d.C + c0) * B + (size_t)(c - c0) * B;
    const float *y = d.coef + row * d.C + c0;
    float acc = 0.0f;
    for (uint32_t i = 0; i < B; i++)
        acc = __fadd_rn(acc, __fmul_rn(m[i], y[i]));
    store_out(out, d.bf16, j, __fadd_rn(acc, d.tf_mean[lkv * d.C + c]));
}

/* ---- q8 and raw -------------------------------------------------------------------------- */

__global__ void q8_kernel(const uint16_t *scales, const int8_t *q, size_t n, uint32_t D,
                          void *out, int bf16)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n)
        return;
    float s = __half2float(__ushort_as_half(scales[i / D]));
    store_out(out, bf16, i, __fmul_rn((float)q[i], s));
}

/* One thread per value: fp16 -> bf16. */
__global__ void f16_to_bf16_kernel(const uint16_t *in, size_t n, void *out)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n)
        store_out(out, 1, i, __half2float(__ushort_as_half(in[i])));
}

/* ---- the reader: a container decoded into device memory by layer ranges ---------------- */

/* Layer ranges are enqueued on the reader's stream: their compressed bytes are copied up
 * (cachegen: the range's streams; q8: scales and values; raw: the values), the kernel runs,
 * and an event per layer marks the end of the call that decoded it, so that another stream
 * can wait for exactly those layers (codec_cuda_reader_wait). What does not depend on the
 * range is done once at open: the container parsed and verified (every checksum), raw's and
 * q8's value checks, cachegen's stream offsets, scales and models built (cg_prepare) and
 * uploaded. lz4 decodes layer ranges on the CPU (codec_reader) and copies them up. */
struct codec_cuda_reader {
    codec_info info;
    codec_view v;             /* raw, q8, cachegen: the parsed container (borrows its bytes) */
    codec_reader *host;       /* lz4: the CPU reader */
    int bf16;
    cudaStream_t stream;
    bool own_stream;          /* created here (non-blocking), destroyed at close */
    size_t layer_values;      /* values of one layer (K and V) */
    cudaEvent_t *ev;          /* [n_layers] recorded after the range that decoded the layer (one
                                 event per range, shared by its layers; NULL before) */
    cudaEvent_t *evs;         /* (n_evs) the events created so far, destroyed at close */
    size_t n_evs, cap_evs;
    cudaEvent_t waited;       /* the event codec_cuda_reader_wait last made `waited_on` wait */
    cudaStream_t waited_on;   /* for: waiting on it again from that stream is already done */
    bool *done;               /* [n_layers] enqueued */
    bool *up;                 /* [n_layers] compressed bytes copied up (or on their way) */
    int *d_failed;            /* cachegen: a malformed stream was met */
    void *host_buf;           /* lz4: one range decoded on the CPU */
    size_t host_cap;
    /* cachegen */
    bool cg;
    cg_prepared pr;
    uint8_t *d_cg;            /* the one allocation that d_payload .. d_dec point into */
    cg_dev h;                 /* what d_dev holds, kept for the copy up (reader_open) */
    uint8_t *d_payload;       /* (cachegen streams of more than 64 channels decode on the CPU, as lz4) */
    uint64_t *d_offs;
    float *d_scales;
    rans_model *d_models;
    float *d_recon, *d_coef, *d_mean, *d_dec; /* transform codebooks */
    cg_dev *d_dev;
    size_t streams_per_layer; /* 2 * n_tblocks * n_groups */
    /* q8 (scales then values) and raw (values, for the bf16 conversion) */
    uint8_t *d_buf;
    /* timing of the last range (codec_decode_cuda_timed) */
    cudaEvent_t t0, t1;
    bool pooled;              /* device buffers from the stream-ordered pool (reader_alloc) */
};

/* Device buffers of a reader: by default from the device's stream-ordered memory pool
 * (cudaMallocAsync / cudaFreeAsync on the reader's stream, the pool keeping up to
 * POOL_KEEP_BYTES of freed memory for the next readers), so that opening and closing the
 * containers of a prompt neither maps memory nor waits for the whole device, as cudaMalloc /
 * cudaFree do (a blend opens one reader per chunk while the engine computes; a 512-token
 * chunk of the Llama-3-8B shape at the default level needs about 16 MB). Memory kept above
 * the bound goes back at the next synchronisation, so the engine's own allocations do not
 * find it held. RAGKV_CODEC_CUDA_POOL=0 (read once) or a device without memory pools:
 * cudaMalloc / cudaFree. */
constexpr uint64_t POOL_KEEP_BYTES = (uint64_t)512 << 20;
static bool pool_wanted(void)
{
    static int on = -1; /* (a benign race: every thread computes the same value) */
    if (on < 0) {
        const char *e = getenv("RAGKV_CODEC_CUDA_POOL");
        on = !(e && !strcmp(e, "0"));
    }
    return on;
}

constexpr int POOL_DEVICES = 64; /* devices whose pool was set up (per process) */

/* Whether the current device takes stream-ordered allocations; the first time per device, its
 * default pool is told to keep up to POOL_KEEP_BYTES of freed memory (its release threshold). */
static bool pool_ready(void)
{
    static signed char state[POOL_DEVICES]; /* 0 unknown, 1 ready, -1 not supported */
    int dev = 0;
    if (!pool_wanted() || cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= POOL_DEVICES)
        return false;
    if (state[dev])
        return state[dev] > 0;
    int supported = 0;
    cudaMemPool_t pool;
    uint64_t keep = POOL_KEEP_BYTES;
    if (cudaDeviceGetAttribute(&supported, cudaDevAttrMemoryPoolsSupported, dev) != cudaSuccess || !supported ||
        cudaDeviceGetDefaultMemPool(&pool, dev) != cudaSuccess ||
        cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep) != cudaSuccess) {
        cudaGetLastError();
        state[dev] = -1;
        return false;
    }
    state[dev] = 1;
    return true;
}

/* n bytes of device memory for reader r (see pool_ready), usable on r->stream. */
static cudaError_t reader_alloc(codec_cuda_reader *r, void **p, size_t n)
{
    return r->pooled ? cudaMallocAsync(p, n, r->stream) : cudaMalloc(p, n);
}

/* Returns what reader_alloc gave (NULL: nothing), after the work queued on r->stream. */
static void reader_free(codec_cuda_reader *r, void *p)
{
    if (!p)
        return;
    if (r->pooled)
        cudaFreeAsync(p, r->stream);
    else
        cudaFree(p);
}

static rk_status reader_check_simple(const codec_view *v)
{
    size_t n = codec_shape_values(&v->info.shape);
    uint32_t D = v->info.shape.head_dim;
    const codec_rsection *pay = codec_view_section(v, SEC_PAYLOAD);
    const codec_rsection *sc = codec_view_section(v, SEC_SCALES);
    if (v->info.codec == CODEC_RAW) {
        if (v->info.n_sections != 1 || !pay || pay->len != 2 * n)
            return rk_error_set(RK_ERR_FORMAT, "raw: payload does not fit the geometry");
        for (size_t i = 0; i < n; i++) /* same check as the CPU decoder */
            if ((rk_get_le16(pay->data + 2 * i) & 0x7c00) == 0x7c00)
                return rk_error_set(RK_ERR_FORMAT, "raw: Inf or NaN value");
        return RK_OK;
    }
    if (v->info.n_sections != 2 || !sc || !pay || sc->len != 2 * (n / D) || pay->len != n)
        return rk_error_set(RK_ERR_FORMAT, "q8: sections do not fit the geometry");
    for (size_t r = 0; r < n / D; r++) { /* same check as the CPU decoder */
        float s = rk_f16_to_f32(rk_get_le16(sc->data + 2 * r));
        if (!(s >= 0.0f && s <= 65504.0f))
            return rk_error_set(RK_ERR_FORMAT, "q8: invalid scale");
    }
    return RK_OK;
}

/* Parse, verify and upload what every range needs. stream NULL with own: a new
 * non-blocking stream. */
static rk_status reader_open(const void *data, size_t len, const codec_decode_opts *opts, codec_dtype dtype,
                             void *vstream, bool own, codec_cuda_reader **out)
{
    *out = NULL;
    if (dtype != CODEC_F16 && dtype != CODEC_BF16)
        return rk_error_set(RK_ERR_INVALID, "codec_decode_cuda: dtype must be f16 or bf16");
    if (!codec_cuda_available())
        return rk_error_set(RK_ERR_UNAVAILABLE, "codec_decode_cuda: no CUDA device");
    codec_cuda_reader *r = (codec_cuda_reader *)rk_calloc(1, sizeof(*r));
    if (!r)
        return rk_error_set(RK_ERR_NOMEM, "codec_decode_cuda: out of memory");
    rk_status st = RK_OK;
    size_t maxv = opts && opts->max_values ? opts->max_values : ((size_t)1 << 32);
    uint32_t L;
    r->bf16 = dtype == CODEC_BF16;
    r->stream = (cudaStream_t)vstream;
    if (own) {
        CK(cudaStreamCreateWithFlags(&r->stream, cudaStreamNonBlocking), "stream");
        r->own_stream = true;
    }
    r->pooled = pool_ready();
    if ((st = codec_view_parse(data, len, false, &r->v)) != RK_OK)
        goto done;
    if (r->v.info.codec == CODEC_LZ4) { /* the CPU reader verifies and decodes */
        if ((st = codec_reader_open(data, len, opts, &r->host)) != RK_OK)
            goto done;
        r->info = *codec_reader_info(r->host);
    } else {
        if ((st = codec_view_parse(data, len, true, &r->v)) != RK_OK)
            goto done;
        r->info = r->v.info;
    }
    if (codec_shape_values(&r->info.shape) > maxv) {
        st = rk_error_set(RK_ERR_LIMIT, "codec_decode_cuda: too many values");
        goto done;
    }
    /* before an event per layer: no encoder writes more layers (codec.c), and a container
     * that claims millions of tiny ones must not cost as many events */
    if (r->info.shape.n_layers > CG_MAX_LAYERS) {
        st = rk_error_set(RK_ERR_LIMIT, "codec_decode_cuda: %u layers (at most %d)",
                          r->info.shape.n_layers, CG_MAX_LAYERS);
        goto done;
    }
    if (r->info.codec != CODEC_RAW && r->info.codec != CODEC_LZ4 && r->info.codec != CODEC_Q8 &&
        r->info.codec != CODEC_CACHEGEN) {
        st = rk_error_set(RK_ERR_UNSUPPORTED, "codec_decode_cuda: codec %d", (int)r->info.codec);
        goto done;
    }
    L = r->info.shape.n_layers;
    r->layer_values = codec_shape_values(&r->info.shape) / L;
    r->ev = (cudaEvent_t *)rk_calloc(L, sizeof(cudaEvent_t));
    r->done = (bool *)rk_calloc(L, sizeof(bool));
    r->up = (bool *)rk_calloc(L, sizeof(bool));
    if (!r->ev || !r->done || !r->up) {
        st = rk_error_set(RK_ERR_NOMEM, "codec_decode_cuda: out of memory");
        goto done;
    }
    if (r->info.codec == CODEC_CACHEGEN) {
        const codec_codebook *cb;
        if ((st = codec_resolve_codebook(&r->v, opts, &cb)) != RK_OK)
            goto done;
        if ((st = cg_prepare(&r->v, cb, &r->pr)) != RK_OK)
            goto done;
        r->cg = true;
        cg_prepared *pr = &r->pr;
        /* too wide for a thread's registers, or K predicted from V (no kernel for it yet): the
           CPU decodes, and the layers are copied up */
        if (pr->p.group > CG_CUDA_MAX_GROUP || (pr->tf && pr->tf->pred)) {
            cg_prepared_free(pr);
            r->cg = false;
            st = codec_reader_open(data, len, opts, &r->host);
            goto done;
        }
        r->streams_per_layer = pr->lay.n_streams / L;
        /* every device buffer of the container in one allocation (each part 256-byte aligned):
         * one call to allocate and one to free instead of six to ten of each, made while the
         * engine computes */
        size_t nc = (size_t)pr->lay.L * 2 * pr->lay.C, nv = nc * pr->lay.T;
        struct {
            void **p;
            size_t n;
        } parts[] = {
            {(void **)&r->d_payload, pr->payload_len ? pr->payload_len : 1},
            {(void **)&r->d_offs, (pr->lay.n_streams + 1) * sizeof(uint64_t)},
            {(void **)&r->d_scales, (pr->lay.n_scales + 1) * sizeof(float)},
            {(void **)&r->d_models, (pr->lay.n_models ? pr->lay.n_models : 1) * sizeof(rans_model)},
            {(void **)&r->d_dev, sizeof(cg_dev)},
            {(void **)&r->d_failed, sizeof(int)},
            {(void **)&r->d_recon, pr->tf ? pr->lay.n_models * CODEC_MAX_SYMBOLS * sizeof(float) : 0},
            {(void **)&r->d_coef, pr->tf ? (nv ? nv : 1) * sizeof(float) : 0},
            {(void **)&r->d_mean, pr->tf ? nc * sizeof(float) : 0},
            {(void **)&r->d_dec, pr->tf ? nc * pr->tf->B * sizeof(float) : 0},
        };
        size_t off[sizeof parts / sizeof parts[0]], total = 0;
        for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++) {
            total = (total + 255) & ~(size_t)255;
            off[i] = total;
            total += parts[i].n;
        }
        CK(reader_alloc(r, (void **)&r->d_cg, total), "cudaMalloc");
        for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++)
            *parts[i].p = parts[i].n ? r->d_cg + off[i] : NULL;
        cg_dev &h = r->h; /* the copy up reads it after we return: it lives in the reader */
        memset(&h, 0, sizeof h);
        h.p = pr->p;
        h.T = pr->lay.T;
        h.H = pr->lay.H;
        h.D = pr->lay.D;
        h.C = pr->lay.C;
        h.n_tblocks = pr->lay.n_tblocks;
        h.n_groups = pr->lay.n_groups;
        h.models_per_lkv = pr->lay.models_per_lkv;
        h.scale_block0 = pr->lay.scale_block[0];
        h.scale_block1 = pr->lay.scale_block[1];
        h.payload = r->d_payload;
        h.offs = r->d_offs;
        h.scales = r->d_scales;
        h.models = r->d_models;
        h.bf16 = r->bf16;
        h.failed = r->d_failed;
        if (pr->tf) {
            CK(cudaMemcpyAsync(r->d_recon, pr->tf->recon, pr->lay.n_models * CODEC_MAX_SYMBOLS * sizeof(float),
                               cudaMemcpyHostToDevice, r->stream), "upload");
            CK(cudaMemcpyAsync(r->d_mean, pr->tf->mean, nc * sizeof(float), cudaMemcpyHostToDevice, r->stream),
               "upload");
            CK(cudaMemcpyAsync(r->d_dec, pr->tf->dec, nc * pr->tf->B * sizeof(float), cudaMemcpyHostToDevice,
                               r->stream), "upload");
            h.recon = r->d_recon;
            h.coef = r->d_coef;
            h.tf_mean = r->d_mean;
            h.tf_dec = r->d_dec;
            h.tf_B = pr->tf->B;
        }
        CK(cudaMemcpyAsync(r->d_offs, pr->offs, (pr->lay.n_streams + 1) * sizeof(uint64_t), cudaMemcpyHostToDevice,
                           r->stream), "upload");
        CK(cudaMemcpyAsync(r->d_scales, pr->scales, pr->lay.n_scales * sizeof(float), cudaMemcpyHostToDevice,
                           r->stream), "upload");
        CK(cudaMemcpyAsync(r->d_models, pr->models, pr->lay.n_models * sizeof(rans_model), cudaMemcpyHostToDevice,
                           r->stream), "upload");
        CK(cudaMemcpyAsync(r->d_dev, &h, sizeof h, cudaMemcpyHostToDevice, r->stream), "upload");
        CK(cudaMemsetAsync(r->d_failed, 0, sizeof(int), r->stream), "memset");
        /* no host wait: the tables copied up are the prepared container's and h is the
         * reader's, both kept until close, which waits for the stream */
    } else if (r->info.codec == CODEC_RAW || r->info.codec == CODEC_Q8) {
        if ((st = reader_check_simple(&r->v)) != RK_OK)
            goto done;
        size_t n = codec_shape_values(&r->info.shape);
        if (r->info.codec == CODEC_Q8) { /* scales (fp16 per head row), then the values */
            const codec_rsection *sc = codec_view_section(&r->v, SEC_SCALES);
            CK(reader_alloc(r, (void **)&r->d_buf, sc->len + n), "cudaMalloc");
            CK(cudaMemcpyAsync(r->d_buf, sc->data, sc->len, cudaMemcpyHostToDevice, r->stream), "upload");
        } else if (r->bf16) {
            CK(reader_alloc(r, (void **)&r->d_buf, 2 * n), "cudaMalloc");
        }
    }
done:
    if (st != RK_OK) {
        codec_cuda_reader_close(r);
        return st;
    }
    *out = r;
    return RK_OK;
}

extern "C" rk_status codec_cuda_reader_open(const void *data, size_t len, const codec_decode_opts *opts,
                                            codec_dtype dtype, int device, codec_cuda_reader **out)
{
    if (!out)
        return rk_error_set(RK_ERR_INVALID, "codec_cuda_reader_open: no output");
    *out = NULL;
    if (!data)
        return rk_error_set(RK_ERR_INVALID, "codec_cuda_reader_open: no container");
    if (device >= 0 && codec_cuda_available()) {
        cudaError_t e = cudaSetDevice(device);
        if (e != cudaSuccess)
            return cuda_err(e, "codec_cuda_reader_open: cudaSetDevice");
    }
    return reader_open(data, len, opts, dtype, NULL, true, out);
}

extern "C" const codec_info *codec_cuda_reader_info(const codec_cuda_reader *r)
{
    return &r->info;
}

static unsigned grid(size_t n, unsigned threads)
{
    return (unsigned)((n + threads - 1) / threads);
}

/* Enqueue on the reader's stream the copies up of the compressed bytes of layers [layer0,
 * layer0 + n) not copied yet, a copy per run of such layers, and mark them. Only the paths that
 * stage their input in device memory copy here (cachegen's payload, q8's values, raw's bf16
 * conversion); raw into f16 and the CPU-decoded ones copy their output in reader_range. */
static rk_status upload_layers(codec_cuda_reader *r, int layer0, int n)
{
    rk_status st = RK_OK;
    const codec_rsection *pay = r->cg || r->host ? NULL : codec_view_section(&r->v, SEC_PAYLOAD);
    size_t sbytes = r->info.codec == CODEC_Q8 ? 2 * (codec_shape_values(&r->info.shape) / r->info.shape.head_dim) : 0;
    bool staged = r->cg || (pay && (r->info.codec == CODEC_Q8 || r->bf16));
    for (int l = layer0; l < layer0 + n;) {
        if (r->up[l] || !staged) {
            l++;
            continue;
        }
        int e = l;
        while (e < layer0 + n && !r->up[e])
            r->up[e++] = true;
        if (r->cg) {
            const cg_prepared *pr = &r->pr;
            size_t b0 = pr->offs[(size_t)l * r->streams_per_layer], b1 = pr->offs[(size_t)e * r->streams_per_layer];
            if (b1 > b0)
                CK(cudaMemcpyAsync(r->d_payload + b0, pr->payload + b0, b1 - b0, cudaMemcpyHostToDevice, r->stream),
                   "upload");
        } else {
            size_t v0 = (size_t)l * r->layer_values, nv = (size_t)(e - l) * r->layer_values;
            size_t es = r->info.codec == CODEC_Q8 ? 1 : 2; /* q8's int8 values, raw's f16 */
            CK(cudaMemcpyAsync(r->d_buf + sbytes + es * v0, pay->data + es * v0, es * nv, cudaMemcpyHostToDevice,
                               r->stream), "upload");
        }
        l = e;
    }
done:
    return st;
}

extern "C" rk_status codec_cuda_reader_upload(codec_cuda_reader *r, int layer0, int n_layers)
{
    if (!r || layer0 < 0 || n_layers <= 0 || (uint32_t)layer0 >= r->info.shape.n_layers ||
        (uint32_t)n_layers > r->info.shape.n_layers - (uint32_t)layer0)
        return rk_error_set(RK_ERR_INVALID, "codec_cuda_reader_upload: bad layer range");
    return upload_layers(r, layer0, n_layers);
}

/* Enqueue layers [layer0, layer0 + n) into dev_out; timed: events around the kernel. */
static rk_status reader_range(codec_cuda_reader *r, int layer0, int n, void *dev_out, bool timed)
{
    rk_status st = RK_OK;
    cudaStream_t stream = r->stream;
    size_t v0 = (size_t)layer0 * r->layer_values, nv = (size_t)n * r->layer_values;
    size_t es = 2; /* f16 or bf16 */
    uint32_t D = r->info.shape.head_dim;
    cudaEvent_t ev = NULL;
    if (timed && !r->t0) {
        CK(cudaEventCreate(&r->t0), "event");
        CK(cudaEventCreate(&r->t1), "event");
    }
    if (r->n_evs == r->cap_evs) { /* room for the range's event first: nothing to undo later */
        size_t cap = r->cap_evs ? 2 * r->cap_evs : 4;
        cudaEvent_t *p = (cudaEvent_t *)rk_realloc(r->evs, cap * sizeof(cudaEvent_t));
        if (!p)
            return rk_error_set(RK_ERR_NOMEM, "codec_decode_cuda: out of memory");
        r->evs = p;
        r->cap_evs = cap;
    }
    if (r->cg) {
        const cg_prepared *pr = &r->pr;
        size_t s0 = (size_t)layer0 * r->streams_per_layer, s1 = s0 + (size_t)n * r->streams_per_layer;
        if ((st = upload_layers(r, layer0, n)) != RK_OK)
            return st;
        if (timed)
            CK(cudaEventRecord(r->t0, stream), "event");
        if (s1 > s0)
            cg_decode_kernel<<<grid(s1 - s0, 128), 128, 0, stream>>>(r->d_dev, s0, s1, 2 * (size_t)layer0, dev_out);
        CK(cudaGetLastError(), "cachegen kernel launch");
        if (pr->tf && nv) {
            cg_transform_kernel<<<grid(nv, 256), 256, 0, stream>>>(r->d_dev, v0, nv, dev_out);
            CK(cudaGetLastError(), "cachegen transform kernel launch");
        }
    } else if (r->host) { /* lz4: decoded on the CPU, copied up */
        size_t bytes = nv * es;
        /* the buffer is reused by the next range: let the previous copy finish before it is
         * written or reallocated */
        CK(cudaStreamSynchronize(stream), "upload");
        if (bytes > r->host_cap) {
            void *p = rk_realloc(r->host_buf, bytes);
            if (!p)
                return rk_error_set(RK_ERR_NOMEM, "codec_decode_cuda: %zu bytes", bytes);
            r->host_buf = p;
            r->host_cap = bytes;
        }
        if ((st = codec_reader_decode_layers(r->host, r->bf16 ? CODEC_BF16 : CODEC_F16, layer0, n, r->host_buf,
                                             bytes)) != RK_OK)
            return st;
        if (timed)
            CK(cudaEventRecord(r->t0, stream), "event");
        CK(cudaMemcpyAsync(dev_out, r->host_buf, bytes, cudaMemcpyHostToDevice, stream), "upload");
    } else {
        const codec_rsection *pay = codec_view_section(&r->v, SEC_PAYLOAD);
        if (r->info.codec == CODEC_Q8) {
            size_t sbytes = 2 * (codec_shape_values(&r->info.shape) / D);
            if ((st = upload_layers(r, layer0, n)) != RK_OK)
                return st;
            if (timed)
                CK(cudaEventRecord(r->t0, stream), "event");
            q8_kernel<<<grid(nv, 256), 256, 0, stream>>>((const uint16_t *)r->d_buf + v0 / D,
                                                         (const int8_t *)(r->d_buf + sbytes + v0), nv, D, dev_out,
                                                         r->bf16);
            CK(cudaGetLastError(), "q8 kernel");
        } else if (!r->bf16) {
            if (timed)
                CK(cudaEventRecord(r->t0, stream), "event");
            CK(cudaMemcpyAsync(dev_out, pay->data + 2 * v0, 2 * nv, cudaMemcpyHostToDevice, stream), "upload");
        } else {
            if ((st = upload_layers(r, layer0, n)) != RK_OK)
                return st;
            if (timed)
                CK(cudaEventRecord(r->t0, stream), "event");
            f16_to_bf16_kernel<<<grid(nv, 256), 256, 0, stream>>>((const uint16_t *)(r->d_buf + 2 * v0), nv,
                                                                  dev_out);
            CK(cudaGetLastError(), "raw kernel");
        }
    }
    if (timed)
        CK(cudaEventRecord(r->t1, stream), "event");
    /* one event marks the whole range: fewer driver calls to create, record and wait for
     * than one per layer, when a caller enqueues many layers at once */
    CK(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming), "event");
    r->evs[r->n_evs++] = ev;
    CK(cudaEventRecord(ev, stream), "event");
    for (int l = layer0; l < layer0 + n; l++) {
        r->ev[l] = ev;
        r->done[l] = true;
    }
done:
    return st;
}

extern "C" rk_status codec_cuda_reader_decode_layers(codec_cuda_reader *r, int layer0, int n_layers,
                                                     void *dev_out, size_t out_bytes)
{
    if (!r || !dev_out)
        return rk_error_set(RK_ERR_INVALID, "codec_cuda_reader_decode_layers: bad arguments");
    uint32_t L = r->info.shape.n_layers;
    if (layer0 < 0 || n_layers <= 0 || (uint32_t)layer0 >= L || (uint32_t)n_layers > L - (uint32_t)layer0)
        return rk_error_set(RK_ERR_INVALID, "codec_cuda_reader_decode_layers: layers [%d, %d) outside [0, %u)",
                            layer0, layer0 + n_layers, L);
    size_t need = (size_t)n_layers * r->layer_values * 2;
    if (out_bytes < need)
        return rk_error_set(RK_ERR_INVALID, "codec_cuda_reader_decode_layers: output holds %zu bytes, needs %zu",
                            out_bytes, need);
    return reader_range(r, layer0, n_layers, dev_out, false);
}

extern "C" rk_status codec_cuda_reader_wait(codec_cuda_reader *r, int layer0, int n_layers, void *stream)
{
    if (!r || layer0 < 0 || n_layers <= 0 || (uint32_t)layer0 >= r->info.shape.n_layers ||
        (uint32_t)n_layers > r->info.shape.n_layers - (uint32_t)layer0)
        return rk_error_set(RK_ERR_INVALID, "codec_cuda_reader_wait: bad layer range");
    for (int l = layer0; l < layer0 + n_layers; l++) {
        if (!r->done[l])
            return rk_error_set(RK_ERR_INVALID, "codec_cuda_reader_wait: layer %d was not enqueued", l);
        if (r->ev[l] == r->waited && (cudaStream_t)stream == r->waited_on)
            continue; /* the layers of one range share an event: that stream waits already */
        cudaError_t e = cudaStreamWaitEvent((cudaStream_t)stream, r->ev[l], 0);
        if (e != cudaSuccess)
            return cuda_err(e, "codec_cuda_reader_wait");
        r->waited = r->ev[l];
        r->waited_on = (cudaStream_t)stream;
    }
    return RK_OK;
}

extern "C" rk_status codec_cuda_reader_finish(codec_cuda_reader *r)
{
    if (!r)
        return rk_error_set(RK_ERR_INVALID, "codec_cuda_reader_finish: no reader");
    rk_status st = RK_OK;
    int failed = 0;
    if (r->d_failed)
        CK(cudaMemcpyAsync(&failed, r->d_failed, sizeof(int), cudaMemcpyDeviceToHost, r->stream), "download");
    CK(cudaStreamSynchronize(r->stream), "codec_decode_cuda");
    if (failed)
        st = rk_error_set(RK_ERR_CORRUPT, "cachegen: malformed entropy-coded stream");
done:
    return st;
}

extern "C" void codec_cuda_reader_close(codec_cuda_reader *r)
{
    if (!r)
        return;
    cudaStreamSynchronize(r->stream); /* nothing may still read or write our buffers */
    for (size_t i = 0; i < r->n_evs; i++)
        cudaEventDestroy(r->evs[i]);
    rk_free(r->evs);
    if (r->t0)
        cudaEventDestroy(r->t0);
    if (r->t1)
        cudaEventDestroy(r->t1);
    reader_free(r, r->d_cg); /* d_payload .. d_dec live inside it */
    reader_free(r, r->d_buf);
    if (r->own_stream)
        cudaStreamDestroy(r->stream);
    if (r->cg)
        cg_prepared_free(&r->pr);
    codec_reader_close(r->host);
    rk_free(r->host_buf);
    rk_free(r->ev);
    rk_free(r->done);
    rk_free(r->up);
    rk_free(r);
}

/* ---- entry points ------------------------------------------------------------------------ */

extern "C" rk_status codec_decode_cuda_timed(const void *data, size_t len,
                                             const codec_decode_opts *opts, codec_dtype dtype,
                                             void *dev_out, size_t out_bytes, void *stream,
                                             float *kernel_ms)
{
    if (kernel_ms)
        *kernel_ms = 0;
    if (!data)
        return rk_error_set(RK_ERR_INVALID, "codec_decode_cuda: no container");
    codec_cuda_reader *r;
    rk_status st = reader_open(data, len, opts, dtype, stream, false, &r);
    if (st != RK_OK)
        return st;
    size_t need = codec_decoded_bytes(&r->info, dtype);
    if (!dev_out || out_bytes < need)
        st = rk_error_set(RK_ERR_INVALID, "codec_decode_cuda: output holds %zu bytes, needs %zu", out_bytes, need);
    if (st == RK_OK)
        st = reader_range(r, 0, (int)r->info.shape.n_layers, dev_out, true);
    if (st == RK_OK)
        st = codec_cuda_reader_finish(r);
    if (st == RK_OK && kernel_ms && r->info.codec != CODEC_LZ4) {
        cudaError_t e = cudaEventElapsedTime(kernel_ms, r->t0, r->t1);
        if (e != cudaSuccess)
            st = cuda_err(e, "event");
    }
    codec_cuda_reader_close(r);
    return st;
}

extern "C" rk_status codec_decode_cuda(const void *data, size_t len,
                                       const codec_decode_opts *opts, codec_dtype dtype,
                                       void *dev_out, size_t out_bytes, void *stream)
{
    return codec_decode_cuda_timed(data, len, opts, dtype, dev_out, out_bytes, stream, NULL);
}
