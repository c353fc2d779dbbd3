/*
 * scores_kernel_emu.cpp — the attention mass's raw-scores kernel (engine/cuda/scores_kernel.cuh)
 * run on the CPU: one std::thread per CUDA thread, a std::barrier per block (__syncthreads),
 * __shared__ as function statics (one block at a time). It checks the kernel's tiling, its
 * transposed shared-memory stages, the paged cache's row lookup and the edges (rows and slots
 * that do not fill a tile, blocks of slots smaller than a tile, grouped query heads) against a
 * plain loop that sums the same fp32 products in the same order, so every score must be equal
 * bit for bit, and that nothing is written outside the (n, H, len) output. It does not check
 * the CUDA compiler or the backend around the kernel (tests/engine/test_gpu_conformance.c,
 * attention_mass_equals_the_cpu, does, on a device). CTest runs it as
 * engine_test_scores_kernel_emu wherever g++ >= 11 exists (C++20 for std::barrier).
 */
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(x)
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))
#define __restrict__

struct uint4 {
    uint32_t x, y, z, w;
};
struct float4 {
    float x, y, z, w;
};
static inline uint4 make_uint4(uint32_t a, uint32_t b, uint32_t c, uint32_t d) { return uint4{a, b, c, d}; }
static inline float __uint_as_float(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}
struct dim3e {
    unsigned x, y, z;
};
thread_local dim3e threadIdx, blockIdx;
static std::barrier<> *g_block;
static inline void __syncthreads() { g_block->arrive_and_wait(); }
typedef uint16_t bf16;

#include "cuda/kvdesc.h"
#include "cuda/scores_kernel.cuh"

namespace {

uint64_t rng = 0x9e3779b97f4a7c15ull;
uint32_t next_u32()
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng >> 16);
}

/* A random bf16 in about [-2, 2): a float's top half. */
bf16 rand_bf16()
{
    float f = ((float)(next_u32() % 65536) / 16384.0f) - 2.0f;
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return (bf16)(u >> 16);
}

float widen(bf16 b) { return __uint_as_float((uint32_t)b << 16); }

template <int HD>
void launch(int n, int H, int KVH, const bf16 *q, const cu_kvdesc &d, int layer, int len, float *out)
{
    unsigned gx = (unsigned)((len + ST - 1) / ST), gy = (unsigned)H, gz = (unsigned)((n + SR - 1) / SR);
    for (unsigned z = 0; z < gz; z++)
        for (unsigned y = 0; y < gy; y++)
            for (unsigned x = 0; x < gx; x++) {
                std::barrier<> bar(SNT);
                g_block = &bar;
                std::vector<std::thread> th;
                th.reserve(SNT);
                for (int t = 0; t < SNT; t++)
                    th.emplace_back([=] {
                        threadIdx = dim3e{(unsigned)t, 0, 0};
                        blockIdx = dim3e{x, y, z};
                        k_scores<HD>(n, H, KVH, q, d, layer, len, out);
                    });
                for (auto &t : th)
                    t.join();
            }
}

/* One shape: a cache of `layers` layers in blocks of 2^bshift slots, rows n, keys len; checks
 * layer `layer`. Returns the number of mismatches. */
template <int HD>
int check(int n, int H, int KVH, int len, int bshift, int layers, int layer)
{
    const size_t kvd = (size_t)KVH * HD, B = (size_t)1 << bshift;
    const size_t nblk = ((size_t)len + B - 1) / B;
    std::vector<bf16 *> blocks(nblk);
    for (auto &b : blocks) {
        size_t el = (size_t)layers * KV_ARRAYS * B * kvd;
        b = (bf16 *)aligned_alloc(16, ((el * sizeof(bf16) + 15) / 16) * 16);
        for (size_t i = 0; i < el; i++)
            b[i] = rand_bf16();
    }
    std::vector<int32_t> spos((size_t)len);
    cu_kvdesc d;
    d.blk = (void *const *)blocks.data();
    d.spos = spos.data();
    d.cap = (long long)(nblk * B);
    d.len = len;
    d.bshift = bshift;
    size_t qn = (size_t)n * H * HD;
    bf16 *q = (bf16 *)aligned_alloc(16, ((qn * sizeof(bf16) + 15) / 16) * 16);
    for (size_t i = 0; i < qn; i++)
        q[i] = rand_bf16();
    const size_t outn = (size_t)n * H * len, guard = 4096;
    std::vector<float> out(outn + 2 * guard, NAN);
    const float sentinel = -12345.0f;
    for (size_t i = 0; i < guard; i++)
        out[i] = out[guard + outn + i] = sentinel;
    launch<HD>(n, H, KVH, q, d, layer, len, out.data() + guard);

    int bad = 0;
    for (size_t i = 0; i < guard; i++)
        if (out[i] != sentinel || out[guard + outn + i] != sentinel) {
            bad++;
            break;
        }
    for (int r = 0; r < n; r++)
        for (int h = 0; h < H; h++) {
            int kvh = h / (H / KVH);
            for (int t = 0; t < len; t++) {
                const bf16 *k = kv_row<const bf16>(d, KV_ROT, layer, t, kvd) + (size_t)kvh * HD;
                const bf16 *qr = q + ((size_t)r * H + h) * HD;
                float acc = 0.0f;
                for (int i = 0; i < HD; i++)
                    acc = fmaf(widen(qr[i]), widen(k[i]), acc);
                float got = out[guard + ((size_t)r * H + h) * len + t];
                if (!(got == acc)) { // NaN (never written) fails too
                    if (bad < 5)
                        fprintf(stderr, "hd %d H %d KVH %d n %d len %d: row %d head %d slot %d: %.9g, expected %.9g\n",
                                HD, H, KVH, n, len, r, h, t, (double)got, (double)acc);
                    bad++;
                }
            }
        }
    for (auto b : blocks)
        free(b);
    free(q);
    printf("hd %3d  H %d  KVH %d  rows %3d  slots %3d  blocks of %3zu: %s\n", HD, H, KVH, n, len, B,
           bad ? "MISMATCH" : "equal");
    return bad;
}

} // namespace

int main()
{
    int bad = 0;
    /* rows and slots past a tile's edge, small blocks of slots, grouped heads, the last layer */
    bad += check<128>(70, 4, 2, 150, 4, 2, 1);
    bad += check<64>(5, 8, 8, 64, 6, 1, 0);
    bad += check<32>(64, 2, 1, 200, 5, 3, 2);
    bad += check<16>(130, 6, 2, 33, 3, 2, 1);
    bad += check<128>(1, 2, 1, 1, 0, 1, 0);
    if (bad)
        fprintf(stderr, "scores_kernel_emu: %d mismatches\n", bad);
    return bad ? 1 : 0;
}
