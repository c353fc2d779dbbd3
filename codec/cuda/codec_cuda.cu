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

/* Everything the kernel reads, by value. */
struct cg_dev {
    cg_params p;              /* qmax lives here too */
    uint32_t T, H, D, C, n_tblocks, n_groups, models_per_lkv;
    size_t scale_block0, scale_block1;
    size_t n_streams;
    const uint8_t *payload;   /* device */
    const uint64_t *offs;     /* device [n_streams + 1] */
    const float *scales;      /* device [n_scales] */
    const rans_model *models; /* device [n_models] */
    const float *recon;       /* device [n_models][CODEC_MAX_SYMBOLS] (transform), or NULL */
    float *coef;              /* device [L][2][T][C] coefficients (transform), or NULL */
    const float *tf_mean;     /* device [L][2][C] (transform) */
    const float *tf_dec;      /* device [L][2][C/B][B][B] (transform) */
    uint32_t tf_B;            /* transform block, 0: none */
    size_t n_values;          /* L * 2 * T * C */
    void *out;                /* device, canonical layout */
    int bf16;
    int *failed;              /* device flag */
};

/* One thread per stream: decode_streams() of cachegen.c, operation for operation. */
__global__ void cg_decode_kernel(const cg_dev *__restrict__ dp)
{
    const cg_dev &d = *dp;
    size_t si = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (si >= d.n_streams)
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
        size_t obase = (lkv * d.T + t) * d.C + c0;
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
            if (d.coef)
                d.coef[obase + i] = val;
            else
                store_out(d.out, d.bf16, obase + i, val);
        }
    }
    if (x != RANS_L || ptr != end)
        atomicExch(d.failed, 1);
}

/* Transform containers: every output value from its block's coefficients, cg_transform_row()
 * of cachegen.c operation for operation. */
__global__ void cg_transform_kernel(const cg_dev *__restrict__ dp)
{
    const cg_dev &d = *dp;
    size_t k = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (k >= d.n_values)
        return;
    uint32_t B = d.tf_B, c = (uint32_t)(k % d.C), c0 = c - c % B;
    size_t row = k / d.C, lkv = row / d.T;
    const float *m = d.tf_dec + (lkv * d.C + c0) * B + (size_t)(c - c0) * B;
    const float *y = d.coef + row * d.C + c0;
    float acc = 0.0f;
    for (uint32_t i = 0; i < B; i++)
        acc = __fadd_rn(acc, __fmul_rn(m[i], y[i]));
    store_out(d.out, d.bf16, k, __fadd_rn(acc, d.tf_mean[lkv * d.C + c]));
}

/* cachegen into device memory: host-side validation, uploads, the kernel, the error flag. */
static rk_status cg_decode_cuda(const codec_view *v, const codec_codebook *cb, int bf16,
                                void *dev_out, cudaStream_t stream, float *kernel_ms)
{
    cg_prepared pr;
    rk_status st = cg_prepare(v, cb, &pr);
    if (st != RK_OK)
        return st;
    uint8_t *d_payload = NULL;
    uint64_t *d_offs = NULL;
    float *d_scales = NULL;
    rans_model *d_models = NULL;
    float *d_recon = NULL, *d_coef = NULL, *d_mean = NULL, *d_dec = NULL;
    cg_dev *d_dev = NULL;
    int *d_failed = NULL;
    cudaEvent_t ev0 = NULL, ev1 = NULL;
    int failed = 0;
    cg_dev h;
    if (pr.p.group > CG_CUDA_MAX_GROUP) {
        st = rk_error_set(RK_ERR_UNSUPPORTED, "codec_decode_cuda: stream group %u > %d",
                          pr.p.group, CG_CUDA_MAX_GROUP);
        goto done;
    }
    CK(cudaMalloc((void **)&d_payload, pr.payload_len ? pr.payload_len : 1), "cudaMalloc");
    CK(cudaMalloc((void **)&d_offs, (pr.lay.n_streams + 1) * sizeof(uint64_t)), "cudaMalloc");
    CK(cudaMalloc((void **)&d_scales, (pr.lay.n_scales + 1) * sizeof(float)), "cudaMalloc");
    CK(cudaMalloc((void **)&d_models, pr.lay.n_models * sizeof(rans_model)), "cudaMalloc");
    CK(cudaMalloc((void **)&d_dev, sizeof(cg_dev)), "cudaMalloc");
    CK(cudaMalloc((void **)&d_failed, sizeof(int)), "cudaMalloc");
    memset(&h, 0, sizeof h);
    h.p = pr.p;
    h.T = pr.lay.T;
    h.H = pr.lay.H;
    h.D = pr.lay.D;
    h.C = pr.lay.C;
    h.n_tblocks = pr.lay.n_tblocks;
    h.n_groups = pr.lay.n_groups;
    h.models_per_lkv = pr.lay.models_per_lkv;
    h.scale_block0 = pr.lay.scale_block[0];
    h.scale_block1 = pr.lay.scale_block[1];
    h.n_streams = pr.lay.n_streams;
    h.payload = d_payload;
    h.offs = d_offs;
    h.scales = d_scales;
    h.models = d_models;
    h.out = dev_out;
    h.bf16 = bf16;
    h.failed = d_failed;
    h.n_values = (size_t)pr.lay.L * 2 * pr.lay.T * pr.lay.C;
    if (pr.tf) {
        size_t nc = (size_t)pr.lay.L * 2 * pr.lay.C;
        CK(cudaMalloc((void **)&d_recon, pr.lay.n_models * CODEC_MAX_SYMBOLS * sizeof(float)), "cudaMalloc");
        CK(cudaMalloc((void **)&d_coef, (h.n_values ? h.n_values : 1) * sizeof(float)), "cudaMalloc");
        CK(cudaMalloc((void **)&d_mean, nc * sizeof(float)), "cudaMalloc");
        CK(cudaMalloc((void **)&d_dec, nc * pr.tf->B * sizeof(float)), "cudaMalloc");
        CK(cudaMemcpyAsync(d_recon, pr.tf->recon, pr.lay.n_models * CODEC_MAX_SYMBOLS * sizeof(float),
                           cudaMemcpyHostToDevice, stream), "upload");
        CK(cudaMemcpyAsync(d_mean, pr.tf->mean, nc * sizeof(float), cudaMemcpyHostToDevice, stream), "upload");
        CK(cudaMemcpyAsync(d_dec, pr.tf->dec, nc * pr.tf->B * sizeof(float), cudaMemcpyHostToDevice,
                           stream), "upload");
        h.recon = d_recon;
        h.coef = d_coef;
        h.tf_mean = d_mean;
        h.tf_dec = d_dec;
        h.tf_B = pr.tf->B;
    }
    CK(cudaMemcpyAsync(d_payload, pr.payload, pr.payload_len, cudaMemcpyHostToDevice, stream), "upload");
    CK(cudaMemcpyAsync(d_offs, pr.offs, (pr.lay.n_streams + 1) * sizeof(uint64_t),
                       cudaMemcpyHostToDevice, stream), "upload");
    CK(cudaMemcpyAsync(d_scales, pr.scales, pr.lay.n_scales * sizeof(float),
                       cudaMemcpyHostToDevice, stream), "upload");
    CK(cudaMemcpyAsync(d_models, pr.models, pr.lay.n_models * sizeof(rans_model),
                       cudaMemcpyHostToDevice, stream), "upload");
    CK(cudaMemcpyAsync(d_dev, &h, sizeof h, cudaMemcpyHostToDevice, stream), "upload");
    CK(cudaMemsetAsync(d_failed, 0, sizeof(int), stream), "memset");
    CK(cudaEventCreate(&ev0), "event");
    CK(cudaEventCreate(&ev1), "event");
    CK(cudaEventRecord(ev0, stream), "event");
    {
        unsigned threads = 128;
        size_t blocks = (pr.lay.n_streams + threads - 1) / threads;
        cg_decode_kernel<<<(unsigned)blocks, threads, 0, stream>>>(d_dev);
        if (pr.tf && h.n_values) {
            CK(cudaGetLastError(), "cachegen kernel launch");
            cg_transform_kernel<<<(unsigned)((h.n_values + 255) / 256), 256, 0, stream>>>(d_dev);
        }
    }
    CK(cudaGetLastError(), "cachegen kernel launch");
    CK(cudaEventRecord(ev1, stream), "event");
    CK(cudaMemcpyAsync(&failed, d_failed, sizeof(int), cudaMemcpyDeviceToHost, stream), "download");
    CK(cudaStreamSynchronize(stream), "cachegen kernel");
    if (kernel_ms)
        CK(cudaEventElapsedTime(kernel_ms, ev0, ev1), "event");
    if (failed)
        st = rk_error_set(RK_ERR_CORRUPT, "cachegen: malformed entropy-coded stream");
done:
    if (ev0)
        cudaEventDestroy(ev0);
    if (ev1)
        cudaEventDestroy(ev1);
    cudaFree(d_payload);
    cudaFree(d_offs);
    cudaFree(d_scales);
    cudaFree(d_models);
    cudaFree(d_recon);
    cudaFree(d_coef);
    cudaFree(d_mean);
    cudaFree(d_dec);
    cudaFree(d_dev);
    cudaFree(d_failed);
    cg_prepared_free(&pr);
    return st;
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

/* raw and q8 into device memory, with the CPU decoder's checks. */
static rk_status simple_decode_cuda(const codec_view *v, int bf16, void *dev_out,
                                    cudaStream_t stream, float *kernel_ms)
{
    rk_status st = RK_OK;
    size_t n = codec_shape_values(&v->info.shape);
    uint32_t D = v->info.shape.head_dim;
    const codec_rsection *pay = codec_view_section(v, SEC_PAYLOAD);
    const codec_rsection *sc = codec_view_section(v, SEC_SCALES);
    uint8_t *d_buf = NULL;
    cudaEvent_t ev0 = NULL, ev1 = NULL;
    unsigned threads = 256;
    size_t blocks = (n + threads - 1) / threads;
    if (v->info.codec == CODEC_RAW) {
        if (v->info.n_sections != 1 || !pay || pay->len != 2 * n)
            return rk_error_set(RK_ERR_FORMAT, "raw: payload does not fit the geometry");
        for (size_t i = 0; i < n; i++) /* same check as the CPU decoder */
            if ((rk_get_le16(pay->data + 2 * i) & 0x7c00) == 0x7c00)
                return rk_error_set(RK_ERR_FORMAT, "raw: Inf or NaN value");
    } else {
        if (v->info.n_sections != 2 || !sc || !pay || sc->len != 2 * (n / D) || pay->len != n)
            return rk_error_set(RK_ERR_FORMAT, "q8: sections do not fit the geometry");
        for (size_t r = 0; r < n / D; r++) { /* same check as the CPU decoder */
            float s = rk_f16_to_f32(rk_get_le16(sc->data + 2 * r));
            if (!(s >= 0.0f && s <= 65504.0f))
                return rk_error_set(RK_ERR_FORMAT, "q8: invalid scale");
        }
    }
    CK(cudaEventCreate(&ev0), "event");
    CK(cudaEventCreate(&ev1), "event");
    if (v->info.codec == CODEC_RAW && !bf16) {
        CK(cudaEventRecord(ev0, stream), "event");
        CK(cudaMemcpyAsync(dev_out, pay->data, 2 * n, cudaMemcpyHostToDevice, stream), "upload");
        CK(cudaEventRecord(ev1, stream), "event");
    } else if (v->info.codec == CODEC_RAW) {
        CK(cudaMalloc((void **)&d_buf, 2 * n), "cudaMalloc");
        CK(cudaMemcpyAsync(d_buf, pay->data, 2 * n, cudaMemcpyHostToDevice, stream), "upload");
        CK(cudaEventRecord(ev0, stream), "event");
        f16_to_bf16_kernel<<<(unsigned)blocks, threads, 0, stream>>>((const uint16_t *)d_buf, n, dev_out);
        CK(cudaGetLastError(), "raw kernel");
        CK(cudaEventRecord(ev1, stream), "event");
    } else {
        size_t sbytes = 2 * (n / D);
        CK(cudaMalloc((void **)&d_buf, sbytes + n), "cudaMalloc");
        CK(cudaMemcpyAsync(d_buf, sc->data, sbytes, cudaMemcpyHostToDevice, stream), "upload");
        CK(cudaMemcpyAsync(d_buf + sbytes, pay->data, n, cudaMemcpyHostToDevice, stream), "upload");
        CK(cudaEventRecord(ev0, stream), "event");
        q8_kernel<<<(unsigned)blocks, threads, 0, stream>>>((const uint16_t *)d_buf,
                                                            (const int8_t *)(d_buf + sbytes), n, D,
                                                            dev_out, bf16);
        CK(cudaGetLastError(), "q8 kernel");
        CK(cudaEventRecord(ev1, stream), "event");
    }
    CK(cudaStreamSynchronize(stream), "decode");
    if (kernel_ms)
        CK(cudaEventElapsedTime(kernel_ms, ev0, ev1), "event");
done:
    if (ev0)
        cudaEventDestroy(ev0);
    if (ev1)
        cudaEventDestroy(ev1);
    cudaFree(d_buf);
    return st;
}

/* ---- entry points ------------------------------------------------------------------------ */

extern "C" rk_status codec_decode_cuda_timed(const void *data, size_t len,
                                             const codec_decode_opts *opts, codec_dtype dtype,
                                             void *dev_out, size_t out_bytes, void *vstream,
                                             float *kernel_ms)
{
    cudaStream_t stream = (cudaStream_t)vstream;
    if (kernel_ms)
        *kernel_ms = 0;
    if (dtype != CODEC_F16 && dtype != CODEC_BF16)
        return rk_error_set(RK_ERR_INVALID, "codec_decode_cuda: dtype must be f16 or bf16");
    if (!codec_cuda_available())
        return rk_error_set(RK_ERR_UNAVAILABLE, "codec_decode_cuda: no CUDA device");
    codec_view v;
    rk_status st = codec_view_parse(data, len, true, &v);
    if (st != RK_OK)
        return st;
    size_t maxv = opts && opts->max_values ? opts->max_values : ((size_t)1 << 32);
    if (codec_shape_values(&v.info.shape) > maxv)
        return rk_error_set(RK_ERR_LIMIT, "codec_decode_cuda: too many values");
    size_t need = codec_decoded_bytes(&v.info, dtype);
    if (!dev_out || out_bytes < need)
        return rk_error_set(RK_ERR_INVALID, "codec_decode_cuda: output holds %zu bytes, needs %zu",
                            out_bytes, need);
    int bf16 = dtype == CODEC_BF16;
    switch (v.info.codec) {
    case CODEC_CACHEGEN: {
        const codec_codebook *cb;
        if ((st = codec_resolve_codebook(&v, opts, &cb)) != RK_OK)
            return st;
        return cg_decode_cuda(&v, cb, bf16, dev_out, stream, kernel_ms);
    }
    case CODEC_RAW:
    case CODEC_Q8:
        return simple_decode_cuda(&v, bf16, dev_out, stream, kernel_ms);
    default: { /* lz4: serial per block, decoded on the CPU and copied up */
        void *host = rk_malloc(need);
        if (!host)
            return rk_error_set(RK_ERR_NOMEM, "codec_decode_cuda: %zu bytes", need);
        st = codec_decode(data, len, opts, dtype, host, need);
        if (st == RK_OK) {
            cudaError_t e = cudaMemcpyAsync(dev_out, host, need, cudaMemcpyHostToDevice, stream);
            if (e == cudaSuccess)
                e = cudaStreamSynchronize(stream);
            if (e != cudaSuccess)
                st = cuda_err(e, "upload");
        }
        rk_free(host);
        return st;
    }
    }
}

extern "C" rk_status codec_decode_cuda(const void *data, size_t len,
                                       const codec_decode_opts *opts, codec_dtype dtype,
                                       void *dev_out, size_t out_bytes, void *stream)
{
    return codec_decode_cuda_timed(data, len, opts, dtype, dev_out, out_bytes, stream, NULL);
}
