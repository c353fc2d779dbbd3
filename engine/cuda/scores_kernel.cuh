// scores_kernel.cuh — private to engine/cuda: the raw-scores kernel of the attention mass,
// included by attn.cu inside its anonymous namespace (after `typedef __nv_bfloat16 bf16`) and
// by tests/engine/scores_kernel_emu.cpp, which runs it on the CPU a thread per CUDA thread
// with the CUDA names defined away (so nothing here but kvdesc.h's kv_row, uint4 / float4,
// __uint_as_float, fmaf and __syncthreads).
//
// k_scores: out[(r*H + h)*len + t] = q[r, h] . k[t] (rotated K of `layer`, kv head h / (H/KVH)),
// the raw products that the reference path's cuBLAS calls produce (no scale, no mask: the
// reference softmax applies both), read straight from the bf16 paged cache instead of an fp32
// copy of the layer's keys and 2H small products. A block computes a (SR rows x ST slots) tile
// of one head, a thread 4 x 4 of it in fp32 registers; the head dimension goes through shared
// memory SD at a time, transposed (dimension-major) so that a thread's 4 rows and its 4 slots
// are one 16-byte load each.
constexpr int SR = 64, ST = 64, SNT = 256;

// Eight bf16 (16 bytes, low half first) widened to fp32 and stored down a column of shared
// floats ld apart (a bf16 is the top half of its float, so the widening is exact).
__device__ __forceinline__ void store_bf16x8_col(float *dst, int ld, uint4 v)
{
    const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int u = 0; u < 4; u++) {
        dst[(2 * u) * ld] = __uint_as_float(w[u] << 16);
        dst[(2 * u + 1) * ld] = __uint_as_float(w[u] & 0xffff0000u);
    }
}

template <int HD>
__global__ void __launch_bounds__(SNT) k_scores(int n, int H, int KVH, const bf16 *__restrict__ q,
                                                 const cu_kvdesc d, int layer, int len, float *__restrict__ out)
{
    constexpr int SD = HD < 32 ? HD : 32; // dimensions per pass
    constexpr int C8 = SD / 8;            // 16-byte pieces of a row per pass
    __shared__ __align__(16) float qs[SD][SR];
    __shared__ __align__(16) float ks[SD][ST + 4];
    const int h = blockIdx.y, kvh = h / (H / KVH);
    const int r0 = blockIdx.z * SR, t0 = blockIdx.x * ST;
    const int tx = threadIdx.x % 16, ty = threadIdx.x / 16; // slots 4tx.., rows 4ty..
    const size_t kvd = (size_t)KVH * HD, qd = (size_t)H * HD;
    float acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 4; j++)
            acc[i][j] = 0.0f;
    for (int d0 = 0; d0 < HD; d0 += SD) {
        // rows fastest across the threads: the transposed stores hit distinct banks
        for (int i = threadIdx.x; i < SR * C8; i += SNT) {
            const int r = i % SR, c = (i / SR) * 8;
            uint4 v = make_uint4(0, 0, 0, 0);
            if (r0 + r < n)
                v = *reinterpret_cast<const uint4 *>(q + (size_t)(r0 + r) * qd + (size_t)h * HD + d0 + c);
            store_bf16x8_col(&qs[c][r], SR, v);
        }
        for (int i = threadIdx.x; i < ST * C8; i += SNT) {
            const int t = i % ST, c = (i / ST) * 8;
            uint4 v = make_uint4(0, 0, 0, 0);
            if (t0 + t < len)
                v = *reinterpret_cast<const uint4 *>(kv_row<const bf16>(d, KV_ROT, layer, t0 + t, kvd) +
                                                     (size_t)kvh * HD + d0 + c);
            store_bf16x8_col(&ks[c][t], ST + 4, v);
        }
        __syncthreads();
#pragma unroll 8
        for (int k = 0; k < SD; k++) {
            const float4 a = *reinterpret_cast<const float4 *>(&qs[k][4 * ty]);
            const float4 b = *reinterpret_cast<const float4 *>(&ks[k][4 * tx]);
            const float av[4] = {a.x, a.y, a.z, a.w}, bv[4] = {b.x, b.y, b.z, b.w};
#pragma unroll
            for (int i = 0; i < 4; i++)
#pragma unroll
                for (int j = 0; j < 4; j++)
                    acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const int r = r0 + 4 * ty + i;
        if (r >= n)
            continue;
        float *o = out + ((size_t)r * H + h) * (size_t)len;
#pragma unroll
        for (int j = 0; j < 4; j++) {
            const int t = t0 + 4 * tx + j;
            if (t < len)
                o[t] = acc[i][j];
        }
    }
}
