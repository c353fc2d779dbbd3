// attn.cu — fused attention kernels of the CUDA backend (see attn.h).
//
// flash: one block per (64-query tile, query head), four warps of 16 query rows. For every
// 64-key tile that some query of the block can see: S = Q K^T with mma.sync m16n8k16 (bf16 in,
// fp32 accumulate; K fragments by ldmatrix), mask by position and apply the group modifiers in
// registers, online softmax (running max and sum per row), then O += P V with P converted
// from the S accumulators in registers (the C fragment of two n8 tiles is the A fragment of
// one k16 step) and V fragments by ldmatrix.trans. Key tiles no query of the block can see
// (all positions above the block's largest query position) are skipped, which halves the work
// of a causal prefill; heavier query tiles (later positions) are scheduled first. Three
// versions (RAGKV_ATTN_FLASH=1, 2, 3; the third is the default; 4 is the third with one block
// barrier per key tile instead of two): the first as just described,
// the second with 128-row blocks and double-buffered async copies, the third with a per-block
// table of the key tiles' positions and 32 rows per warp (see each below).
//
// decode: one block per (key split, KV head, query row); the block's query heads (those
// sharing the KV head) are scored against the split's keys, softmax'd and summed over V;
// partial (max, sum, output) per split are merged by a second kernel. Arithmetic in fp32
// whatever the cache's storage type. k_decode_vec (the default) loads 16 bytes per thread,
// several keys per thread in flight, query heads in registers; k_decode (one warp per key,
// one thread per dimension) serves the shapes it cannot; k_decode_smem (bf16 caches, only
// with RAGKV_ATTN_DECODE=smem: measured no faster) copies its split's K and V rows into
// shared memory all at once. The split shrinks for short batches
// so that a single long sequence still has blocks for every SM (attn_decode_split).
#include "attn.h"

#include <stdlib.h>
#include <string.h>

#include <math.h>

#include <type_traits>

namespace {

typedef __nv_bfloat16 bf16;

constexpr int BR = 64;  // query rows per flash block
constexpr int BC = 64;  // keys per flash tile
constexpr int NT = 128; // threads per block (4 warps)
constexpr float LOG2E = 1.4426950408889634f;

__device__ __forceinline__ uint32_t smem_u32(const void *p)
{
    return (uint32_t)__cvta_generic_to_shared(p);
}

__device__ __forceinline__ void ldsm_x4(uint32_t addr, uint32_t &r0, uint32_t &r1, uint32_t &r2, uint32_t &r3)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(addr));
}

__device__ __forceinline__ void ldsm_x4_t(uint32_t addr, uint32_t &r0, uint32_t &r1, uint32_t &r2, uint32_t &r3)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(addr));
}

// c (16x8 fp32) += a (16x16 bf16, row) * b (16x8 bf16, col)
__device__ __forceinline__ void mma_bf16(float *c, const uint32_t *a, uint32_t b0, uint32_t b1)
{
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi)
{
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi); // .x (low half) = lo
    return *reinterpret_cast<uint32_t *>(&v);
}

// Copy a (rows x HD) bf16 tile from global rows (stride ld elements, rows >= valid zeroed) to
// shared memory rows of LD elements.
template <int HD, int LD, int NTH = NT>
__device__ __forceinline__ void load_tile(bf16 *dst, const bf16 *src, size_t ld, int rows, int valid)
{
    constexpr int C8 = HD / 8; // 16-byte pieces per row (NTH: the block's threads)
    for (int i = threadIdx.x; i < rows * C8; i += NTH) {
        int r = i / C8, c = (i % C8) * 8;
        uint4 v = make_uint4(0, 0, 0, 0);
        if (r < valid)
            v = *reinterpret_cast<const uint4 *>(src + (size_t)r * ld + c);
        *reinterpret_cast<uint4 *>(dst + r * LD + c) = v;
    }
}

// Copy a (BC x HD) bf16 tile of keys k0.. (k0 a multiple of BC) of KV head kvh, array arr of
// `layer`, from the paged cache (rows >= valid zeroed) to shared memory rows of LD elements.
// With blocks of at least BC slots the tile lies in one block: one table read for the tile
// and plain strided rows (what the kernels read before paging); smaller blocks (tests) look
// each row up.
template <int HD, int LD>
__device__ __forceinline__ void load_kv_tile(bf16 *dst, const cu_kvdesc &d, int arr, int layer, int kvh, size_t kvld,
                                             int k0, int valid)
{
    constexpr int C8 = HD / 8;
    const bool one = (1 << d.bshift) >= BC;
    const bf16 *base = kv_row<const bf16>(d, arr, layer, k0, kvld) + (size_t)kvh * HD; // valid: k0 < len
    for (int i = threadIdx.x; i < BC * C8; i += NT) {
        int r = i / C8, c = (i % C8) * 8;
        uint4 v = make_uint4(0, 0, 0, 0);
        if (r < valid) {
            const bf16 *row = one ? base + (size_t)r * kvld : kv_row<const bf16>(d, arr, layer, k0 + r, kvld) + (size_t)kvh * HD;
            v = *reinterpret_cast<const uint4 *>(row + c);
        }
        *reinterpret_cast<uint4 *>(dst + r * LD + c) = v;
    }
}

// ---- the per-warp pieces of both flash kernels ---------------------------------------------
//
// A warp owns 16 query rows: rows a (lane group g) and b (g + 8) of its m16 tile; its lanes t
// (0..3) hold columns 2t, 2t+1 of every n8 tile. Scores s are BC/8 n8 tiles, outputs o HD/8.

// The warp's Q fragments from shared rows of LD elements.
template <int HD, int LD>
__device__ __forceinline__ void warp_load_q(const bf16 *Qs, int warp, int lane, uint32_t (&qf)[HD / 16][4])
{
#pragma unroll
    for (int kk = 0; kk < HD / 16; kk++) {
        int row = warp * 16 + (lane & 7) + ((lane >> 3) & 1) * 8, col = kk * 16 + (lane >> 4) * 8;
        ldsm_x4(smem_u32(Qs + row * LD + col), qf[kk][0], qf[kk][1], qf[kk][2], qf[kk][3]);
    }
}

// S = Q K^T for the warp's 16 rows x BC keys of the shared tile K (rows of LD).
template <int HD, int LD>
__device__ __forceinline__ void warp_scores(const bf16 *K, const uint32_t (&qf)[HD / 16][4], int lane,
                                            float (&s)[BC / 8][4])
{
#pragma unroll
    for (int j = 0; j < BC / 8; j++)
        s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < HD / 16; kk++) {
#pragma unroll
        for (int jj = 0; jj < BC / 16; jj++) {
            int key = jj * 16 + (lane & 7) + (lane >> 4) * 8, col = kk * 16 + ((lane >> 3) & 1) * 8;
            uint32_t b0, b1, b2, b3;
            ldsm_x4(smem_u32(K + key * LD + col), b0, b1, b2, b3);
            mma_bf16(s[2 * jj], qf[kk], b0, b1);
            mma_bf16(s[2 * jj + 1], qf[kk], b2, b3);
        }
    }
}

// Mask by position (a key at position sp[col] is visible to rows at positions >= it), apply the
// slot groups' modifiers (sg[col] >= 0), scale into log2 units; the rows' maxima over the tile
// (this lane's columns only).
__device__ __forceinline__ void warp_mask(const cu_attn_shape &a, const int *sp, const int *sg, int pa, int pb, int t,
                                          float (&s)[BC / 8][4], float &mxa, float &mxb)
{
    const float sc = a.scale;
#pragma unroll
    for (int j = 0; j < BC / 8; j++) {
#pragma unroll
        for (int e = 0; e < 4; e++) {
            int col = j * 8 + 2 * t + (e & 1);
            int qp = e < 2 ? pa : pb;
            float x = s[j][e] * sc;
            if (sp[col] > qp) {
                x = -INFINITY;
            } else {
                int gi = sg[col];
                if (gi >= 0) {
                    if (a.temp)
                        x /= a.temp[gi];
                    if (a.lscale)
                        x += a.lscale[gi];
                }
            }
            x *= LOG2E;
            s[j][e] = x;
            if (e < 2)
                mxa = fmaxf(mxa, x);
            else
                mxb = fmaxf(mxb, x);
        }
    }
}

__device__ __forceinline__ float ex2_ftz(float x)
{
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

// Online softmax over one tile: the rows' maxima over the warp's lanes, the running maxima
// (ma, mb) and per-lane partial sums (la, lb) updated, s turned into exp2 weights, o rescaled.
// s holds scores times f in log2 units (f = 1 for masked tiles, already scaled; the third
// kernel passes raw products of plain tiles with f = scale log2(e)), mxa / mxb the rows'
// maxima of s over this lane's columns. Each weight is one fused multiply-add and one ex2
// (flushed to zero below 2^-126, where a weight is negligible); o is rescaled only when some
// row of the warp moved its maximum (multiplying by exactly 1 changes nothing). lazy: a row
// keeps its running maximum unless the tile's passes it by more than lazy (log2 units), so
// weights reach at most 2^lazy (fp32 sums and bf16 weights hold that with the same relative
// precision) and after the first tiles the rescale of o is almost never needed: the result is
// the same, since the sums and the outputs share whatever maximum the row keeps.
template <int HD>
__device__ __forceinline__ void warp_softmax(float (&s)[BC / 8][4], float f, float lazy, float mxa, float mxb,
                                              float &ma, float &mb, float &la, float &lb, float (&o)[HD / 8][4])
{
    mxa = fmaxf(mxa, __shfl_xor_sync(0xffffffffu, mxa, 1));
    mxa = fmaxf(mxa, __shfl_xor_sync(0xffffffffu, mxa, 2));
    mxb = fmaxf(mxb, __shfl_xor_sync(0xffffffffu, mxb, 1));
    mxb = fmaxf(mxb, __shfl_xor_sync(0xffffffffu, mxb, 2));
    const float ca = mxa * f, cb = mxb * f;
    // (a row that has seen nothing has ma = -inf: any finite maximum passes it)
    float na = ca > ma + lazy ? ca : ma, nb = cb > mb + lazy ? cb : mb;
    float ua = na == -INFINITY ? 0.0f : na, ub = nb == -INFINITY ? 0.0f : nb;
    float alpha_a = ex2_ftz(ma - ua), alpha_b = ex2_ftz(mb - ub); // 0 while nothing was seen
    ma = na;
    mb = nb;
    float suma = 0.0f, sumb = 0.0f;
#pragma unroll
    for (int j = 0; j < BC / 8; j++) {
        s[j][0] = ex2_ftz(fmaf(s[j][0], f, -ua));
        s[j][1] = ex2_ftz(fmaf(s[j][1], f, -ua));
        s[j][2] = ex2_ftz(fmaf(s[j][2], f, -ub));
        s[j][3] = ex2_ftz(fmaf(s[j][3], f, -ub));
        suma += s[j][0] + s[j][1];
        sumb += s[j][2] + s[j][3];
    }
    la = la * alpha_a + suma; // per-thread partial sums: reduced over the row's 4 lanes at the end
    lb = lb * alpha_b + sumb;
    if (!__all_sync(0xffffffffu, alpha_a == 1.0f && alpha_b == 1.0f)) {
#pragma unroll
        for (int j = 0; j < HD / 8; j++) {
            o[j][0] *= alpha_a;
            o[j][1] *= alpha_a;
            o[j][2] *= alpha_b;
            o[j][3] *= alpha_b;
        }
    }
}

// O += P V for the shared tile V (rows of LD): P's A fragments straight from the S accumulators.
template <int HD, int LD>
__device__ __forceinline__ void warp_pv(const bf16 *V, const float (&s)[BC / 8][4], int lane, float (&o)[HD / 8][4])
{
#pragma unroll
    for (int kk = 0; kk < BC / 16; kk++) {
        uint32_t pa4[4] = {pack_bf16(s[2 * kk][0], s[2 * kk][1]), pack_bf16(s[2 * kk][2], s[2 * kk][3]),
                           pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                           pack_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
        for (int jd = 0; jd < HD / 16; jd++) {
            int key = kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8, col = jd * 16 + (lane >> 4) * 8;
            uint32_t b0, b1, b2, b3;
            ldsm_x4_t(smem_u32(V + key * LD + col), b0, b1, b2, b3);
            mma_bf16(o[2 * jd], pa4, b0, b1);
            mma_bf16(o[2 * jd + 1], pa4, b2, b3);
        }
    }
}

// A row's per-lane partial sum totalled over the row's 4 lanes (t = 0..3 of lane group g).
__device__ __forceinline__ float row_total(float v)
{
    v += __shfl_xor_sync(0xffffffffu, v, 1);
    return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

// The rows' sums over their 4 lanes, then out[row, head h] = o / sum for rows a and b (< n).
template <int HD>
__device__ __forceinline__ void warp_store(const cu_attn_shape &a, float la, float lb, const float (&o)[HD / 8][4],
                                           int h, int ra, int rb, int t, bf16 *out)
{
    const size_t qld = (size_t)a.H * HD;
    la = row_total(la);
    lb = row_total(lb);
    float ia = la > 0.0f ? 1.0f / la : 0.0f, ib = lb > 0.0f ? 1.0f / lb : 0.0f;
#pragma unroll
    for (int j = 0; j < HD / 8; j++) {
        int col = h * HD + j * 8 + 2 * t;
        if (ra < a.n)
            *reinterpret_cast<__nv_bfloat162 *>(out + (size_t)ra * qld + col) =
                __floats2bfloat162_rn(o[j][0] * ia, o[j][1] * ia);
        if (rb < a.n)
            *reinterpret_cast<__nv_bfloat162 *>(out + (size_t)rb * qld + col) =
                __floats2bfloat162_rn(o[j][2] * ib, o[j][3] * ib);
    }
}

template <int HD>
__global__ void __launch_bounds__(NT) k_flash(cu_attn_shape a, const bf16 *__restrict__ q, const cu_kvdesc d, int layer,
                                              int len, bf16 *__restrict__ out)
{
    const int32_t *__restrict__ spos = d.spos;
    constexpr int LD = HD + 8; // padded row: ldmatrix rows land in distinct banks
    extern __shared__ __align__(16) unsigned char smem_raw[];
    bf16 *Qs = reinterpret_cast<bf16 *>(smem_raw);
    bf16 *Ks = Qs + BR * LD;
    bf16 *Vs = Ks + BC * LD;
    int *sp = reinterpret_cast<int *>(Vs + BC * LD);
    int *sg = sp + BC;
    __shared__ int qmax_s;

    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
    const int qt = gridDim.x - 1 - blockIdx.x; // heavy (late) tiles first
    const int h = blockIdx.y, kvh = h / (a.H / a.KVH);
    const int r0 = qt * BR;
    const size_t qld = (size_t)a.H * HD, kvld = (size_t)a.KVH * HD;

    // the queries of the block, and the largest position among them
    if (tid == 0)
        qmax_s = -1;
    __syncthreads();
    if (tid < BR && r0 + tid < a.n)
        atomicMax(&qmax_s, a.qpos[r0 + tid]);
    load_tile<HD, LD>(Qs, q + (size_t)r0 * qld + (size_t)h * HD, qld, BR, a.n - r0);
    __syncthreads();
    const int qmax = qmax_s;
    const int ra = r0 + warp * 16 + g, rb = ra + 8;
    const int pa = ra < a.n ? a.qpos[ra] : -1, pb = rb < a.n ? a.qpos[rb] : -1;

    uint32_t qf[HD / 16][4];
    warp_load_q<HD, LD>(Qs, warp, lane, qf);

    float o[HD / 8][4];
#pragma unroll
    for (int j = 0; j < HD / 8; j++)
        o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;
    float ma = -INFINITY, mb = -INFINITY, la = 0.0f, lb = 0.0f;

    for (int k0 = 0; k0 < len; k0 += BC) {
        __syncthreads(); // every warp is done with the previous tile
        int vis = 0;
        if (tid < BC) {
            int key = k0 + tid;
            int p = key < len ? spos[key] : INT32_MAX;
            sp[tid] = p;
            sg[tid] = (a.grp && key < len) ? a.grp[key] : -1;
            vis = p <= qmax;
        }
        if (!__syncthreads_or(vis))
            continue; // no query of this block sees any key of the tile
        load_kv_tile<HD, LD>(Ks, d, KV_ROT, layer, kvh, kvld, k0, len - k0);
        load_kv_tile<HD, LD>(Vs, d, KV_VAL, layer, kvh, kvld, k0, len - k0);
        __syncthreads();

        // S = Q K^T for the warp's 16 rows x 64 keys; mask and modifiers; online softmax; O += P V
        float s[BC / 8][4], mxa = -INFINITY, mxb = -INFINITY;
        warp_scores<HD, LD>(Ks, qf, lane, s);
        warp_mask(a, sp, sg, pa, pb, t, s, mxa, mxb);
        warp_softmax<HD>(s, 1.0f, a.lazy, mxa, mxb, ma, mb, la, lb, o);
        warp_pv<HD, LD>(Vs, s, lane, o);
    }

    warp_store<HD>(a, la, lb, o, h, ra, rb, t, out);
}

constexpr int SMEM_OPT_DEVICES = 64; // devices whose shared-memory opt-in is remembered

// Let kernel f use smem bytes of dynamic shared memory on the current device. The opt-in is
// per device function and per device: once for each (a benign race sets it twice; each f is
// its own instantiation, with its own table); devices past the table ask every time.
template <auto F>
cudaError_t smem_opt_in(size_t smem)
{
    static bool configured[SMEM_OPT_DEVICES] = {};
    int dev = 0;
    cudaError_t e = cudaGetDevice(&dev);
    if (e != cudaSuccess || (dev >= 0 && dev < SMEM_OPT_DEVICES && configured[dev]))
        return e;
    if ((e = cudaFuncSetAttribute(F, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem)) != cudaSuccess)
        return e;
    if (dev >= 0 && dev < SMEM_OPT_DEVICES)
        configured[dev] = true;
    return cudaSuccess;
}

template <int HD>
cudaError_t launch_flash(const cu_attn_shape *a, const bf16 *q, const cu_kvdesc *d, int layer, int len, bf16 *out)
{
    constexpr int LD = HD + 8;
    size_t smem = (size_t)(BR + 2 * BC) * LD * sizeof(bf16) + 2 * BC * sizeof(int);
    cudaError_t e = smem_opt_in<k_flash<HD>>(smem);
    if (e != cudaSuccess)
        return e;
    dim3 grid((unsigned)((a->n + BR - 1) / BR), (unsigned)a->H);
    k_flash<HD><<<grid, NT, smem>>>(*a, q, *d, layer, len, out);
    return cudaGetLastError();
}

// ---- flash, second version ---------------------------------------------------------------
//
// The same per-warp arithmetic as k_flash (16 query rows per warp, m16n8k16 tiles, online
// softmax in registers), reorganised for throughput:
//   - 128 query rows per block (8 warps), so every K/V tile brought on chip serves twice the
//     rows;
//   - K and V tiles double-buffered with cp.async: the copy of the next visible tile runs
//     while the current one is multiplied (16-byte copies, zero-filled past the end);
//   - a tile whose largest key position is at most the warp's smallest query position (and
//     that carries no slot groups) skips the per-element mask, and scale and log2(e) are one
//     multiply there.
// The default since 2026-12-07 (H100: 8K-token prefill of the Llama-3-8B shape 307 ms against
// the first version's 428 with paged KV, docs/benchmarks.md); RAGKV_ATTN_FLASH=1 selects the
// first.
constexpr int BR2 = 128;     // query rows per block
constexpr int NT2 = 256;     // threads per block (8 warps)

__device__ __forceinline__ void cp_async16(uint32_t dst, const void *src, bool valid)
{
    int n = valid ? 16 : 0; // 0 source bytes: the 16 destination bytes are zero-filled
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(n));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> __device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

// Issue the copies of the (BC x HD) tiles of K (rotated) and V of KV head kvh at `layer`, keys
// k0.. (a multiple of BC, below len), from the paged cache into shared rows of LD (rows at or
// past len are zero-filled). When blocks hold at least BC slots the tile lies in one block:
// one table read for both arrays (V sits a fixed distance after K in a block), and each
// thread copies the same 16-byte column of rows r0, r0 + RPS, ... with addresses a constant
// stride apart — a handful of instructions per copy. Until 2026-12-07 (eleventh session) the
// copies were a loop that recomputed the row, the column and the 64-bit source address of
// every copy and read the block table again for V: some 800 instructions per thread and key
// tile against about 700 for the tile's products and softmax (Hopper SASS of k_flash3<128>).
// Smaller blocks (tests) look each row up.
template <int HD, int LD, int NTH = NT2>
__device__ __forceinline__ void async_kv_tile(bf16 *Kd, bf16 *Vd, const cu_kvdesc &d, int layer, int kvh, size_t ld,
                                              int k0, int len)
{
    constexpr int C8 = HD / 8;     // 16-byte pieces per row
    constexpr int RPS = NTH / C8;  // rows one pass of the block covers
    static_assert(NTH % C8 == 0 && (BC % RPS == 0 || RPS % BC == 0), "async_kv_tile: whole rows per pass");
    constexpr int PASSES = RPS <= BC ? BC / RPS : 1; // (more rows than BC per pass: threads past it idle)
    const int c = (threadIdx.x % C8) * 8, r0 = threadIdx.x / C8;
    if (RPS > BC && r0 >= BC)
        return;
    if ((1 << d.bshift) >= BC) {
        const long long B = 1LL << d.bshift;
        const bf16 *ks = kv_row<const bf16>(d, KV_ROT, layer, k0, ld) + (size_t)kvh * HD + (size_t)r0 * ld + c;
        const size_t vo = (size_t)(KV_VAL - KV_ROT) * (size_t)B * ld; // V's rows, in elements after K's
        const uint32_t kd = smem_u32(Kd + r0 * LD + c), vd = smem_u32(Vd + r0 * LD + c);
#pragma unroll
        for (int j = 0; j < PASSES; j++) {
            const bool ok = k0 + r0 + j * RPS < len;
            const bf16 *src = ok ? ks + (size_t)j * RPS * ld : ks - (size_t)r0 * ld; // row 0: valid either way
            cp_async16(kd + (uint32_t)(j * RPS * LD * sizeof(bf16)), src, ok);
            cp_async16(vd + (uint32_t)(j * RPS * LD * sizeof(bf16)), src + vo, ok);
        }
        return;
    }
    const bf16 *kbase = kv_row<const bf16>(d, KV_ROT, layer, k0, ld) + (size_t)kvh * HD;
    const bf16 *vbase = kv_row<const bf16>(d, KV_VAL, layer, k0, ld) + (size_t)kvh * HD;
#pragma unroll 1
    for (int j = 0; j < PASSES; j++) {
        const int r = r0 + j * RPS;
        const bool ok = k0 + r < len;
        const bf16 *kr = ok ? kv_row<const bf16>(d, KV_ROT, layer, k0 + r, ld) + (size_t)kvh * HD : kbase;
        const bf16 *vr = ok ? kv_row<const bf16>(d, KV_VAL, layer, k0 + r, ld) + (size_t)kvh * HD : vbase;
        cp_async16(smem_u32(Kd + r * LD + c), kr + c, ok);
        cp_async16(smem_u32(Vd + r * LD + c), vr + c, ok);
    }
}

// The first key tile at or after t that some query of the block can see (positions and groups
// of its keys into sp/sg, the largest position into *tmax), or ntiles. Block-wide.
__device__ __forceinline__ int next_visible(int t, int ntiles, int len, const int32_t *spos, const int32_t *grp,
                                            int qmax, int *sp, int *sg, int *tmax)
{
    for (; t < ntiles; t++) {
        int key = t * BC + threadIdx.x, p = INT32_MAX, vis = 0;
        if (threadIdx.x < BC) {
            p = key < len ? spos[key] : INT32_MAX;
            sp[threadIdx.x] = p;
            sg[threadIdx.x] = (grp && key < len) ? grp[key] : -1;
            vis = p <= qmax;
        }
        if (threadIdx.x == 0)
            *tmax = INT32_MIN;
        __syncthreads();
        if (threadIdx.x < BC && key < len)
            atomicMax(tmax, p);
        if (__syncthreads_or(vis))
            return t;
    }
    return ntiles;
}

template <int HD>
__global__ void __launch_bounds__(NT2) k_flash2(cu_attn_shape a, const bf16 *__restrict__ q, const cu_kvdesc d,
                                                int layer, int len, bf16 *__restrict__ out)
{
    const int32_t *__restrict__ spos = d.spos;
    constexpr int LD = HD + 8;
    extern __shared__ __align__(16) unsigned char smem_raw[];
    bf16 *Qs = reinterpret_cast<bf16 *>(smem_raw);
    bf16 *Ks = Qs + BR2 * LD;    // 2 stages
    bf16 *Vs = Ks + 2 * BC * LD; // 2 stages
    int *sp = reinterpret_cast<int *>(Vs + 2 * BC * LD); // (2, BC)
    int *sg = sp + 2 * BC;                               // (2, BC)
    __shared__ int qmax_s, tmax_s[2];

    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
    const int qt = gridDim.x - 1 - blockIdx.x; // heavy (late) tiles first
    const int h = blockIdx.y, kvh = h / (a.H / a.KVH);
    const int r0 = qt * BR2;
    const size_t qld = (size_t)a.H * HD, kvld = (size_t)a.KVH * HD;
    const int ntiles = (len + BC - 1) / BC;

    if (tid == 0)
        qmax_s = -1;
    __syncthreads();
    if (tid < BR2 && r0 + tid < a.n)
        atomicMax(&qmax_s, a.qpos[r0 + tid]);
    load_tile<HD, LD, NT2>(Qs, q + (size_t)r0 * qld + (size_t)h * HD, qld, BR2, a.n - r0);
    __syncthreads();
    const int qmax = qmax_s;
    const int ra = r0 + warp * 16 + g, rb = ra + 8;
    const int pa = ra < a.n ? a.qpos[ra] : -1, pb = rb < a.n ? a.qpos[rb] : -1;
    // the warp's smallest real query position (rows past n do not count)
    int wmin = min(ra < a.n ? pa : INT32_MAX, rb < a.n ? pb : INT32_MAX);
    for (int off = 16; off > 0; off >>= 1)
        wmin = min(wmin, __shfl_xor_sync(0xffffffffu, wmin, off));

    uint32_t qf[HD / 16][4];
    warp_load_q<HD, LD>(Qs, warp, lane, qf);

    float o[HD / 8][4];
#pragma unroll
    for (int j = 0; j < HD / 8; j++)
        o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;
    float ma = -INFINITY, mb = -INFINITY, la = 0.0f, lb = 0.0f;
    const float sc2 = a.scale * LOG2E;

    int cur = next_visible(0, ntiles, len, spos, a.grp, qmax, sp, sg, &tmax_s[0]);
    if (cur < ntiles) {
        async_kv_tile<HD, LD>(Ks, Vs, d, layer, kvh, kvld, cur * BC, len);
        cp_async_commit();
    }
    for (int st = 0; cur < ntiles; st ^= 1) {
        const int nst = st ^ 1;
        int nxt = next_visible(cur + 1, ntiles, len, spos, a.grp, qmax, sp + nst * BC, sg + nst * BC, &tmax_s[nst]);
        if (nxt < ntiles) {
            async_kv_tile<HD, LD>(Ks + nst * BC * LD, Vs + nst * BC * LD, d, layer, kvh, kvld, nxt * BC, len);
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads(); // the current stage's copies are visible to every warp
        const bf16 *K = Ks + st * BC * LD, *V = Vs + st * BC * LD;
        const int *spt = sp + st * BC, *sgt = sg + st * BC;
        // every key of a whole tile visible to every row of the warp (a partial last tile's
        // zero-filled keys must stay masked)
        const bool plain = !a.grp && (cur + 1) * BC <= len && tmax_s[st] <= wmin;

        float s[BC / 8][4], mxa = -INFINITY, mxb = -INFINITY;
        warp_scores<HD, LD>(K, qf, lane, s);
        if (plain) {
#pragma unroll
            for (int j = 0; j < BC / 8; j++) {
                s[j][0] *= sc2;
                s[j][1] *= sc2;
                s[j][2] *= sc2;
                s[j][3] *= sc2;
                mxa = fmaxf(mxa, fmaxf(s[j][0], s[j][1]));
                mxb = fmaxf(mxb, fmaxf(s[j][2], s[j][3]));
            }
        } else {
            warp_mask(a, spt, sgt, pa, pb, t, s, mxa, mxb);
        }
        warp_softmax<HD>(s, 1.0f, a.lazy, mxa, mxb, ma, mb, la, lb, o);
        warp_pv<HD, LD>(V, s, lane, o);
        __syncthreads(); // every warp is done with this stage before it is refilled
        cur = nxt;
    }

    warp_store<HD>(a, la, lb, o, h, ra, rb, t, out);
}

template <int HD>
cudaError_t launch_flash2(const cu_attn_shape *a, const bf16 *q, const cu_kvdesc *d, int layer, int len, bf16 *out)
{
    constexpr int LD = HD + 8;
    size_t smem = (size_t)(BR2 + 4 * BC) * LD * sizeof(bf16) + 4 * BC * sizeof(int);
    cudaError_t e = smem_opt_in<k_flash2<HD>>(smem);
    if (e != cudaSuccess)
        return e;
    dim3 grid((unsigned)((a->n + BR2 - 1) / BR2), (unsigned)a->H);
    k_flash2<HD><<<grid, NT2, smem>>>(*a, q, *d, layer, len, out);
    return cudaGetLastError();
}

// ---- flash, third version ----------------------------------------------------------------
//
// What the H100 profile of 2026-12-07 showed of the second version (RAGKV_CUDA_PROFILE=1:
// 113 of 305 ms of an 8K-token prefill in attention, 156 TFLOP/s) and what this one changes:
//   - every key tile began with a global read of its 64 positions (to find the next visible
//     tile) and two block barriers before any warp could go on: a memory latency per tile on
//     the critical path. Here a table of each tile's smallest and largest key position is
//     built in shared memory once per window of TBL3 tiles (a few reads in flight per thread),
//     the next visible tile comes from it without a barrier, and the next tile's positions
//     (and slot groups) are loaded into registers while the current tile is multiplied and
//     stored to its stage afterwards;
//   - each warp owns 32 query rows (two m16 tiles) instead of 16, so every K and V fragment
//     read from shared memory (ldmatrix) feeds two products: shared-memory reads per product
//     drop from 1/2 to 5/16 (Q is read back from shared memory per tile, which the registers
//     of two tiles' outputs and scores leave no room to hold). Four warps (128 rows) per
//     block, two blocks per SM.
// Otherwise the same arithmetic: m16n8k16 products, mask by position and slot-group modifiers
// in registers, online softmax, P from the score accumulators, K/V double-buffered by cp.async.
constexpr int BR3 = 128; // query rows per block
constexpr int NT3 = 128; // threads per block: 4 warps of MT3 m16 tiles
constexpr int MT3 = 2;   // m16 row tiles per warp
constexpr int TBL3 = 256; // key tiles per window of the visibility table (at most; see win)
static_assert(NT3 == BR3 && BR3 == 4 * 16 * MT3, "k_flash3: a thread per query row, 4 warps of MT3 m16 tiles");

// The smallest and largest key position of tiles [w0, min(w0 + win, ntiles)) into tmin/tmax
// (win <= TBL3). Block-wide (barriers at both ends): every thread calls it with the same w0.
// Not inlined: in line, its registers pushed the kernel's loop into spilling (ptxas: 108
// bytes; 20 as a call).
__device__ __noinline__ void tile_table(int w0, int win, int ntiles, int len, const int32_t *__restrict__ spos,
                                        int *tmin, int *tmax)
{
    const int nt = min(win, ntiles - w0);
    __syncthreads(); // nobody reads the previous window's entries any more
#pragma unroll 4
    for (int base = 0; base < nt * 16; base += NT3) { // 16 threads per tile, 4 keys each
        const int i = base + (int)threadIdx.x, tile = i >> 4, k = (w0 + tile) * BC + (i & 15) * 4;
        int mn = INT32_MAX, mx = INT32_MIN;
        if (tile < nt) {
#pragma unroll
            for (int e = 0; e < 4; e++)
                if (k + e < len) {
                    int p = spos[k + e];
                    mn = min(mn, p);
                    mx = max(mx, p);
                }
        }
#pragma unroll
        for (int off = 8; off > 0; off >>= 1) {
            mn = min(mn, __shfl_xor_sync(0xffffffffu, mn, off));
            mx = max(mx, __shfl_xor_sync(0xffffffffu, mx, off));
        }
        if ((i & 15) == 0 && tile < nt) {
            tmin[tile] = mn;
            tmax[tile] = mx;
        }
    }
    __syncthreads();
}

// The first key tile at or after t with a key some query of the block (positions up to qmax)
// can see, or ntiles; *tmx gets its largest key position. w0: the table's window of win tiles
// (rebuilt when t leaves it). Block-uniform: every thread calls it with the same arguments.
__device__ __forceinline__ int next_visible3(int t, int ntiles, int len, const int32_t *__restrict__ spos, int qmax,
                                             int *tmin, int *tmax, int win, int &w0, int &tmx)
{
    for (; t < ntiles; t++) {
        if (t >= w0 + win) {
            w0 = t;
            tile_table(w0, win, ntiles, len, spos, tmin, tmax);
        }
        if (tmin[t - w0] <= qmax) {
            tmx = tmax[t - w0];
            return t;
        }
    }
    return ntiles;
}

// S = Q K^T for the warp's MT3 m16 tiles x BC keys: Q fragments from shared rows (LD), K from
// the shared tile; each K fragment feeds every m tile.
template <int HD, int LD>
__device__ __forceinline__ void warp_scores3(const bf16 *K, const bf16 *Qs, int warp, int lane,
                                             float (&s)[MT3][BC / 8][4])
{
#pragma unroll
    for (int m = 0; m < MT3; m++)
#pragma unroll
        for (int j = 0; j < BC / 8; j++)
            s[m][j][0] = s[m][j][1] = s[m][j][2] = s[m][j][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < HD / 16; kk++) {
        uint32_t qf[MT3][4];
#pragma unroll
        for (int m = 0; m < MT3; m++) {
            int row = warp * 16 * MT3 + m * 16 + (lane & 7) + ((lane >> 3) & 1) * 8, col = kk * 16 + (lane >> 4) * 8;
            ldsm_x4(smem_u32(Qs + row * LD + col), qf[m][0], qf[m][1], qf[m][2], qf[m][3]);
        }
#pragma unroll
        for (int jj = 0; jj < BC / 16; jj++) {
            int key = jj * 16 + (lane & 7) + (lane >> 4) * 8, col = kk * 16 + ((lane >> 3) & 1) * 8;
            uint32_t b0, b1, b2, b3;
            ldsm_x4(smem_u32(K + key * LD + col), b0, b1, b2, b3);
#pragma unroll
            for (int m = 0; m < MT3; m++) {
                mma_bf16(s[m][2 * jj], qf[m], b0, b1);
                mma_bf16(s[m][2 * jj + 1], qf[m], b2, b3);
            }
        }
    }
}

// O += P V for the warp's MT3 m tiles: each V fragment feeds every m tile.
template <int HD, int LD>
__device__ __forceinline__ void warp_pv3(const bf16 *V, const float (&s)[MT3][BC / 8][4], int lane,
                                         float (&o)[MT3][HD / 8][4])
{
#pragma unroll
    for (int kk = 0; kk < BC / 16; kk++) {
        uint32_t pa4[MT3][4];
#pragma unroll
        for (int m = 0; m < MT3; m++) {
            pa4[m][0] = pack_bf16(s[m][2 * kk][0], s[m][2 * kk][1]);
            pa4[m][1] = pack_bf16(s[m][2 * kk][2], s[m][2 * kk][3]);
            pa4[m][2] = pack_bf16(s[m][2 * kk + 1][0], s[m][2 * kk + 1][1]);
            pa4[m][3] = pack_bf16(s[m][2 * kk + 1][2], s[m][2 * kk + 1][3]);
        }
#pragma unroll
        for (int jd = 0; jd < HD / 16; jd++) {
            int key = kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8, col = jd * 16 + (lane >> 4) * 8;
            uint32_t b0, b1, b2, b3;
            ldsm_x4_t(smem_u32(V + key * LD + col), b0, b1, b2, b3);
#pragma unroll
            for (int m = 0; m < MT3; m++) {
                mma_bf16(o[m][2 * jd], pa4[m], b0, b1);
                mma_bf16(o[m][2 * jd + 1], pa4[m], b2, b3);
            }
        }
    }
}

// The rows' partial softmax of one key split (blockIdx.z of gridDim.z) for rows a and b (< n):
// the unnormalised output and, from the lane t == 0 of each row, the running maximum (log2
// units, stored in natural units) and the sum, in the decode kernel's part layout so that
// k_decode_combine merges the splits.
template <int HD>
__device__ __forceinline__ void warp_store_part(const cu_attn_shape &a, float ma, float mb, float la, float lb,
                                                const float (&o)[HD / 8][4], int h, int ra, int rb, int t,
                                                float *part)
{
    constexpr float LN2 = 0.6931471805599453f;
    const int splits = (int)gridDim.z, z = (int)blockIdx.z;
    const size_t nparts = (size_t)a.n * a.H * splits;
    la = row_total(la);
    lb = row_total(lb);
#pragma unroll
    for (int r = 0; r < 2; r++) {
        const int row = r ? rb : ra;
        if (row >= a.n)
            continue;
        const size_t i = ((size_t)row * a.H + h) * splits + z;
        float *po = part + i * HD;
#pragma unroll
        for (int j = 0; j < HD / 8; j++)
            *reinterpret_cast<float2 *>(po + j * 8 + 2 * t) = r ? make_float2(o[j][2], o[j][3])
                                                                 : make_float2(o[j][0], o[j][1]);
        if (t == 0) {
            const float m = r ? mb : ma;
            part[nparts * HD + 2 * i] = m == -INFINITY ? -INFINITY : m * LN2;
            part[nparts * HD + 2 * i + 1] = r ? lb : la;
        }
    }
}

// blockIdx.z: the key split (tiles [z tps, (z + 1) tps)); with part (gridDim.z > 1) the
// block writes its partial softmax there for k_decode_combine, else the rows' output.
// ONEBAR (RAGKV_ATTN_FLASH=4; 2026-12-07, eleventh session): one block barrier per key tile
// instead of two. The next tile's copies are issued after the tile's barrier rather than
// before it: every warp has then passed that barrier, so all are done with the previous tile,
// whose stage the copies refill — the barrier at the end of each tile is not needed. The
// copies still have the whole tile's products to land in.
// PACK (RAGKV_ATTN_FLASH=5; twelfth session, not yet measured): a block holds the G = H / KVH
// query heads of one KV head (blockIdx.y) for P = BR3 / G positions — block row i is query
// head kvh G + i / P at row r0 + i % P — so every K/V tile copied to shared memory (and read
// from L2) serves G heads instead of one: a quarter of the copies per product for Llama-3's
// G = 4. G must be a power of two up to 8 (P a multiple of 16: an m16 tile never straddles two
// heads); the masks read each row's own position, so nothing else changes.
template <int HD, bool ONEBAR, bool PACK = false>
__global__ void __launch_bounds__(NT3, 2) k_flash3(cu_attn_shape a, const bf16 *__restrict__ q, const cu_kvdesc d,
                                                   int layer, int len, int win, int tps, float *__restrict__ part,
                                                   bf16 *__restrict__ out)
{
    const int32_t *__restrict__ spos = d.spos;
    constexpr int LD = HD + 8;
    extern __shared__ __align__(16) unsigned char smem_raw[];
    bf16 *Qs = reinterpret_cast<bf16 *>(smem_raw);
    bf16 *Ks = Qs + BR3 * LD;                            // 2 stages
    bf16 *Vs = Ks + 2 * BC * LD;                         // 2 stages
    int *sp = reinterpret_cast<int *>(Vs + 2 * BC * LD); // (2, BC) key positions per stage
    int *sg = sp + 2 * BC;                               // (2, BC) key slot groups per stage
    int *tmin = sg + 2 * BC;                             // (TBL3) visibility table window
    int *tmax = tmin + TBL3;                             // (TBL3)
    __shared__ int qmax_s, qp_s[BR3];                    // the block's query positions (-1 past n)

    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
    const int qt = gridDim.x - 1 - blockIdx.x; // heavy (late) tiles first
    const int G = a.H / a.KVH, P = PACK ? BR3 / G : BR3; // (PACK) heads per block, positions per head
    const int h = blockIdx.y, kvh = PACK ? h : h / G;   // (PACK: h is the KV head)
    const int r0 = qt * P;
    const size_t qld = (size_t)a.H * HD, kvld = (size_t)a.KVH * HD;
    const int t0 = (int)blockIdx.z * tps, ntiles = min((len + BC - 1) / BC, t0 + tps); // this split's tiles

    if (tid == 0)
        qmax_s = -1;
    __syncthreads();
    { // NT3 == BR3: a thread per block row
        const int row = r0 + (PACK ? tid % P : tid);
        int p = row < a.n ? a.qpos[row] : -1;
        qp_s[tid] = p;
        if (p >= 0)
            atomicMax(&qmax_s, p);
    }
    if (PACK) {
        for (int hs = 0; hs < G; hs++) // block rows [hs P, (hs + 1) P): query head kvh G + hs
            load_tile<HD, LD, NT3>(Qs + hs * P * LD, q + (size_t)r0 * qld + (size_t)(kvh * G + hs) * HD, qld, P,
                                   a.n - r0);
    } else {
        load_tile<HD, LD, NT3>(Qs, q + (size_t)r0 * qld + (size_t)h * HD, qld, BR3, a.n - r0);
    }
    __syncthreads();
    const int qmax = qmax_s;
    // the warp's rows: m tile m holds block rows wr + m * 16 + g (a) and + 8 (b); their
    // positions stay in qp_s (registers are short)
    const int wr = warp * 16 * MT3;
    int wmin = INT32_MAX; // the warp's smallest real query position (rows past n do not count)
    {
        int p = qp_s[wr + lane];
        wmin = p >= 0 ? p : INT32_MAX;
    }
    for (int off = 16; off > 0; off >>= 1)
        wmin = min(wmin, __shfl_xor_sync(0xffffffffu, wmin, off));

    float o[MT3][HD / 8][4];
    float ma[MT3], mb[MT3], la[MT3], lb[MT3];
#pragma unroll
    for (int m = 0; m < MT3; m++) {
#pragma unroll
        for (int j = 0; j < HD / 8; j++)
            o[m][j][0] = o[m][j][1] = o[m][j][2] = o[m][j][3] = 0.0f;
        ma[m] = mb[m] = -INFINITY;
        la[m] = lb[m] = 0.0f;
    }
    const float sc2 = a.scale * LOG2E;

    int w0 = t0 - win, tmx_cur = 0, tmx_nxt = 0;
    int cur = next_visible3(t0, ntiles, len, spos, qmax, tmin, tmax, win, w0, tmx_cur);
    if (cur < ntiles) {
        async_kv_tile<HD, LD, NT3>(Ks, Vs, d, layer, kvh, kvld, cur * BC, len);
        cp_async_commit();
        if (tid < BC) { // (made visible by the loop's first barrier)
            int key = cur * BC + tid;
            sp[tid] = key < len ? spos[key] : INT32_MAX;
            sg[tid] = (a.grp && key < len) ? a.grp[key] : -1;
        }
    }
    for (int st = 0; cur < ntiles; st ^= 1) {
        const int nst = st ^ 1;
        if (ONEBAR) {
            cp_async_wait<0>();
            __syncthreads(); // the current stage is visible to every warp; every warp is done
                             // with the previous tile (stage nst)
        }
        // (next_visible3 may rebuild the table, which has barriers of its own: block-uniform)
        const int nxt = next_visible3(cur + 1, ntiles, len, spos, qmax, tmin, tmax, win, w0, tmx_nxt);
        int pn = INT32_MAX, gn = -1; // the next tile's key position and group of this thread's key
        if (nxt < ntiles) {
            async_kv_tile<HD, LD, NT3>(Ks + nst * BC * LD, Vs + nst * BC * LD, d, layer, kvh, kvld, nxt * BC,
                                       len);
            cp_async_commit();
            if (tid < BC && nxt * BC + tid < len) {
                pn = spos[nxt * BC + tid];
                if (a.grp)
                    gn = a.grp[nxt * BC + tid];
            }
            if (!ONEBAR)
                cp_async_wait<1>();
        } else if (!ONEBAR) {
            cp_async_wait<0>();
        }
        if (!ONEBAR)
            __syncthreads(); // the current stage's copies and positions are visible to every warp
        const bf16 *K = Ks + st * BC * LD, *V = Vs + st * BC * LD;
        const int *spt = sp + st * BC, *sgt = sg + st * BC;
        // every key of a whole tile visible to every row of the warp (a partial last tile's
        // zero-filled keys must stay masked)
        const bool plain = !a.grp && (cur + 1) * BC <= len && tmx_cur <= wmin;

        float s[MT3][BC / 8][4];
        warp_scores3<HD, LD>(K, Qs, warp, lane, s);
#pragma unroll
        for (int m = 0; m < MT3; m++) {
            float mxa = -INFINITY, mxb = -INFINITY;
            if (plain) { // raw products: the scale goes into the exponent's multiply-add
#pragma unroll
                for (int j = 0; j < BC / 8; j++) {
                    mxa = fmaxf(mxa, fmaxf(s[m][j][0], s[m][j][1]));
                    mxb = fmaxf(mxb, fmaxf(s[m][j][2], s[m][j][3]));
                }
            } else {
                warp_mask(a, spt, sgt, qp_s[wr + m * 16 + g], qp_s[wr + m * 16 + g + 8], t, s[m], mxa, mxb);
            }
            warp_softmax<HD>(s[m], plain ? sc2 : 1.0f, a.lazy, mxa, mxb, ma[m], mb[m], la[m], lb[m], o[m]);
        }
        warp_pv3<HD, LD>(V, s, lane, o);
        if (tid < BC) { // stage nst's positions: nobody reads them until the next barrier
            sp[nst * BC + tid] = pn;
            sg[nst * BC + tid] = gn;
        }
        if (!ONEBAR)
            __syncthreads(); // every warp is done with this stage before it is refilled
        cur = nxt;
        tmx_cur = tmx_nxt;
    }

#pragma unroll
    for (int m = 0; m < MT3; m++) {
        const int br = wr + m * 16; // the m tile's first block row
        const int hm = PACK ? kvh * G + br / P : h, ra = r0 + (PACK ? br % P : br) + g, rb = ra + 8;
        if (part)
            warp_store_part<HD>(a, ma[m], mb[m], la[m], lb[m], o[m], hm, ra, rb, t, part);
        else
            warp_store<HD>(a, la[m], lb[m], o[m], hm, ra, rb, t, out);
    }
}

template <typename T>
cudaError_t launch_combine(const float *part, int n, int H, int hd, int splits, T *out, cudaStream_t stream);

// The multiprocessors of the current device (132 when it cannot be asked).
int device_sms()
{
    static int sms = 0; // (a benign race: every thread computes the same value)
    if (!sms) {
        int dev = 0, v = 0;
        if (cudaGetDevice(&dev) != cudaSuccess ||
            cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess || v <= 0)
            v = 132;
        sms = v;
    }
    return sms;
}

// The flash kernel in use: RAGKV_ATTN_FLASH=1|2|4 (4: the third with one barrier per tile),
// else the third (read once).
int flash_version()
{
    static int version = 0; // (a benign race: every thread computes the same value)
    if (!version) {
        const char *e = getenv("RAGKV_ATTN_FLASH");
        version = e && !strcmp(e, "1") ? 1 : e && !strcmp(e, "2") ? 2 : e && !strcmp(e, "4") ? 4
                : e && !strcmp(e, "5") ? 5 : 3;
    }
    return version;
}

// How far a flash row's running maximum may lag a tile's maximum before it moves (log2 units;
// warp_softmax): RAGKV_ATTN_LAZY (read once; 0 moves it on every new maximum, as before
// 2026-12-07's eleventh session), default 8 (weights up to 256, FlashAttention-4's choice).
float flash_lazy()
{
    static float lazy = -1.0f; // (a benign race: every thread computes the same value)
    if (lazy < 0.0f) {
        const char *e = getenv("RAGKV_ATTN_LAZY");
        float v = e ? (float)atof(e) : 8.0f;
        lazy = v >= 0.0f && v <= 16.0f ? v : 8.0f;
    }
    return lazy;
}

// Key splits of the third flash kernel for n query rows over len keys (flash-decoding for
// prefill-shaped calls of few rows: a blend's query rows or its selected rows see thousands
// of keys, and ceil(n / BR3) x H blocks alone leave most SMs idle, each block walking every
// key tile). Only calls of at most half as many rows as keys split: a whole prompt's causal
// prefill of 1K or 2K tokens has few blocks too, but its early blocks see few keys and merging
// every row's splits made it 2-3% slower on the H100 (2026-12-07). Splits are added until the
// grid has FLASH_SPLIT_WAVES blocks per SM, keeping at least FLASH_SPLIT_TILES key tiles per
// split, at most FLASH_SPLIT_MAX; RAGKV_ATTN_FLASH_SPLIT=N (1..64, read once) fixes the count
// (at most one per tile; 1: never split).
constexpr int FLASH_SPLIT_WAVES = 4, FLASH_SPLIT_TILES = 4, FLASH_SPLIT_MAX = 32;
int flash_splits(int n, int H, int len)
{
    static int fixed = -1; // (a benign race: every thread computes the same value)
    if (fixed < 0) {
        const char *e = getenv("RAGKV_ATTN_FLASH_SPLIT");
        int v = e ? atoi(e) : 0;
        fixed = v >= 1 && v <= 64 ? v : 0;
    }
    const int ntiles = (len + BC - 1) / BC;
    if (ntiles <= 1 || n <= 0)
        return 1;
    if (fixed)
        return min(fixed, ntiles);
    if ((long long)n * 2 > len)
        return 1;
    const long long blocks = (long long)((n + BR3 - 1) / BR3) * H, want = (long long)FLASH_SPLIT_WAVES * device_sms();
    if (blocks >= want)
        return 1;
    long long s = (want + blocks - 1) / blocks;
    s = min(s, (long long)(ntiles / FLASH_SPLIT_TILES));
    s = min(s, (long long)FLASH_SPLIT_MAX);
    return s > 1 ? (int)s : 1;
}

// Whether the third kernel can pack a KV head's query heads into one block (PACK): G = H / KVH
// a power of two from 2 to 8.
bool flash_pack_ok(const cu_attn_shape *a)
{
    const int G = a->KVH > 0 && a->H % a->KVH == 0 ? a->H / a->KVH : 0;
    return G >= 2 && G <= 8 && (G & (G - 1)) == 0;
}

template <int HD, bool ONEBAR, bool PACK = false>
cudaError_t launch_flash3(const cu_attn_shape *a, const bf16 *q, const cu_kvdesc *d, int layer, int len, float *part,
                          bf16 *out)
{
    constexpr int LD = HD + 8;
    size_t smem = (size_t)(BR3 + 4 * BC) * LD * sizeof(bf16) + (4 * BC + 2 * TBL3) * sizeof(int);
    cudaError_t e = smem_opt_in<k_flash3<HD, ONEBAR, PACK>>(smem);
    if (e != cudaSuccess)
        return e;
    // tiles per window of the visibility table: TBL3, or RAGKV_ATTN_FLASH_WINDOW (1..TBL3, read
    // once; the tests use a small one so that prompts of a few hundred tokens cross windows)
    static int win = 0; // (a benign race: every thread computes the same value)
    if (!win) {
        const char *w = getenv("RAGKV_ATTN_FLASH_WINDOW");
        int v = w ? atoi(w) : 0;
        win = v >= 1 && v <= TBL3 ? v : TBL3;
    }
    const int ntiles = (len + BC - 1) / BC, splits = part ? flash_splits(a->n, a->H, len) : 1;
    const int tps = splits > 1 ? (ntiles + splits - 1) / splits : ntiles > 0 ? ntiles : 1;
    const int nz = splits > 1 ? (ntiles + tps - 1) / tps : 1; // (flash_splits' count, or fewer)
    const int P = PACK ? BR3 / (a->H / a->KVH) : BR3; // positions per block
    dim3 grid((unsigned)((a->n + P - 1) / P), (unsigned)(PACK ? a->KVH : a->H), (unsigned)nz);
    k_flash3<HD, ONEBAR, PACK><<<grid, NT3, smem>>>(*a, q, *d, layer, len, win, tps, nz > 1 ? part : nullptr, out);
    if (nz > 1) {
        e = cudaGetLastError();
        if (e != cudaSuccess)
            return e;
        return launch_combine<bf16>(part, a->n, a->H, HD, nz, out, 0);
    }
    return cudaGetLastError();
}


// ---- the pieces of both decode kernels -------------------------------------------------------

// A key's score for one query head: q.k scaled, with the key's slot-group modifiers; -inf when
// the key is not visible to the query.
__device__ __forceinline__ float decode_score(const cu_attn_shape &a, float dot, bool visible, int gi)
{
    float x = -INFINITY;
    if (visible) {
        x = dot * a.scale;
        if (gi >= 0) {
            if (a.temp)
                x /= a.temp[gi];
            if (a.lscale)
                x += a.lscale[gi];
        }
    }
    return x;
}

// The split's softmax statistics per query head, one warp per head: the scores ps (nk, G)
// become exp(score - max) in place; ml[2i] = the max (-inf: nothing visible), ml[2i + 1] = the
// sum. Block-wide (every thread calls it).
__device__ __forceinline__ void decode_split_softmax(float *ps, int nk, int G, int warp, int lane, float *ml)
{
    for (int i = warp; i < G; i += NT / 32) {
        float m = -INFINITY;
        for (int k = lane; k < nk; k += 32)
            m = fmaxf(m, ps[k * G + i]);
        for (int off = 16; off > 0; off >>= 1)
            m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, off));
        float mu = m == -INFINITY ? 0.0f : m, l = 0.0f;
        for (int k = lane; k < nk; k += 32) {
            float e = __expf(ps[k * G + i] - mu);
            ps[k * G + i] = e;
            l += e;
        }
        for (int off = 16; off > 0; off >>= 1)
            l += __shfl_xor_sync(0xffffffffu, l, off);
        if (lane == 0) {
            ml[2 * i] = m;
            ml[2 * i + 1] = l;
        }
    }
}

// The end of both vectorised decode kernels: each thread's sums over its keys (acc, the
// group's query heads x its VEC dimensions) are added up over the block's KPI key rows
// through red (KPI, G, hd) in shared memory and written to part with the split's softmax
// statistics ml. Block-wide.
template <int GM, int VEC>
__device__ __forceinline__ void decode_store_parts(const cu_attn_shape &a, const float (&acc)[GM][VEC], float *red,
                                                   const float *ml, int kr, int kl, int KPI, int G, int hd,
                                                   size_t pidx, int splits, float *part)
{
    const int tid = threadIdx.x;
#pragma unroll
    for (int i = 0; i < GM; i++)
        if (i < G)
#pragma unroll
            for (int j = 0; j < VEC; j++)
                red[((size_t)kr * G + i) * hd + kl * VEC + j] = acc[i][j];
    __syncthreads();
    for (int e = tid; e < G * hd; e += NT) {
        const int i = e / hd, c = e % hd;
        float sum = 0.0f;
        for (int row = 0; row < KPI; row++)
            sum += red[((size_t)row * G + i) * hd + c];
        part[(pidx + (size_t)i * splits) * hd + c] = sum;
    }
    if (tid < G) {
        const size_t nparts = (size_t)a.n * a.H * splits;
        part[nparts * hd + 2 * (pidx + (size_t)tid * splits)] = ml[2 * tid];
        part[nparts * hd + 2 * (pidx + (size_t)tid * splits) + 1] = ml[2 * tid + 1];
    }
}

// part layout: o (n, H, splits, hd) then (m, l) pairs (n, H, splits)
template <typename T>
__global__ void __launch_bounds__(NT) k_decode(cu_attn_shape a, const T *__restrict__ q, const cu_kvdesc *desc,
                                               const int32_t *rseq, int layer, int splits, int split, float *part)
{
    extern __shared__ float dsm[];
    const int r = blockIdx.z, kvh = blockIdx.y, sp = blockIdx.x;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int hd = a.hd, G = a.H / a.KVH, h0 = kvh * G;
    const cu_kvdesc d = desc[rseq ? rseq[r] : 0];
    const int t0 = sp * split, t1 = min(d.len, t0 + split);
    const size_t kvd = (size_t)a.KVH * hd;
    const size_t hoff = (size_t)kvh * hd; // the KV head's columns in a row
    const int p = a.qpos[r];
    float *qs = dsm;                // (G, hd)
    float *ps = dsm + G * hd;       // (split, G) scores, then weights
    float *ml = ps + split * G;     // (G, 2)
    size_t pidx = ((size_t)r * a.H + h0) * splits + sp; // part index of head h0; head h0+i adds i*splits

    for (int i = tid; i < G * hd; i += NT)
        qs[i] = to_f(q[(size_t)r * a.H * hd + (size_t)h0 * hd + i]);
    __syncthreads();

    // scores: one warp per key, lanes over the head dimension
    for (int tk = t0 + warp; tk < t1; tk += NT / 32) {
        float acc[ATTN_MAX_GROUP];
#pragma unroll
        for (int i = 0; i < ATTN_MAX_GROUP; i++)
            acc[i] = 0.0f;
        bool visible = d.spos[tk] <= p;
        if (visible) {
            for (int c = lane; c < hd; c += 32) {
                float kv = to_f(kv_row<const T>(d, KV_ROT, layer, tk, kvd)[hoff + c]);
#pragma unroll
                for (int i = 0; i < ATTN_MAX_GROUP; i++)
                    if (i < G)
                        acc[i] += qs[i * hd + c] * kv;
            }
#pragma unroll
            for (int i = 0; i < ATTN_MAX_GROUP; i++)
                if (i < G)
                    for (int off = 16; off > 0; off >>= 1)
                        acc[i] += __shfl_xor_sync(0xffffffffu, acc[i], off);
        }
        if (lane == 0) {
            int gi = (visible && a.grp) ? a.grp[tk] : -1;
#pragma unroll
            for (int i = 0; i < ATTN_MAX_GROUP; i++) {
                if (i >= G)
                    break;
                ps[(tk - t0) * G + i] = decode_score(a, acc[i], visible, gi);
            }
        }
    }
    __syncthreads();

    // softmax statistics per query head: one warp per head
    const int nk = t1 > t0 ? t1 - t0 : 0;
    decode_split_softmax(ps, nk, G, warp, lane, ml);
    __syncthreads();

    // partial outputs: one thread per dimension, every query head of the group at once
    size_t nparts = (size_t)a.n * a.H * splits;
    for (int c = tid; c < hd; c += NT) {
        float acc[ATTN_MAX_GROUP];
#pragma unroll
        for (int i = 0; i < ATTN_MAX_GROUP; i++)
            acc[i] = 0.0f;
        for (int k = 0; k < nk; k++) {
            float vv = to_f(kv_row<const T>(d, KV_VAL, layer, t0 + k, kvd)[hoff + c]);
#pragma unroll
            for (int i = 0; i < ATTN_MAX_GROUP; i++)
                if (i < G)
                    acc[i] += ps[k * G + i] * vv;
        }
#pragma unroll
        for (int i = 0; i < ATTN_MAX_GROUP; i++)
            if (i < G)
                part[(pidx + (size_t)i * splits) * hd + c] = acc[i];
    }
    if (tid < G) {
        part[nparts * hd + 2 * (pidx + (size_t)tid * splits)] = ml[2 * tid];
        part[nparts * hd + 2 * (pidx + (size_t)tid * splits) + 1] = ml[2 * tid + 1];
    }
}

// The vectorised decode kernel: same grid and part layout as k_decode, but every thread moves
// 16 bytes per load. LPK = hd / VEC threads share one key (a power of two up to 32), so a block
// covers NT / LPK keys per step and has UNR steps of loads in flight before it computes; the
// block's query heads (at most GM) live in registers. Scores, then the softmax statistics as in
// k_decode, then V: each thread sums its keys' rows for its VEC dimensions, and the NT / LPK
// key rows are added up through shared memory.
constexpr int UNR = 4;

template <typename T> struct vec16 {
    static constexpr int N = 16 / sizeof(T);
    uint4 raw;
    __device__ __forceinline__ void load(const T *p) { raw = __ldg(reinterpret_cast<const uint4 *>(p)); }
    __device__ __forceinline__ void zero() { raw = make_uint4(0u, 0u, 0u, 0u); }
    __device__ __forceinline__ float at(int j) const { return to_f(reinterpret_cast<const T *>(&raw)[j]); }
};

template <typename T, int GM>
__global__ void __launch_bounds__(NT) k_decode_vec(cu_attn_shape a, const T *__restrict__ q, const cu_kvdesc *desc,
                                                   const int32_t *rseq, int layer, int splits, int split,
                                                   float *part)
{
    constexpr int VEC = vec16<T>::N;
    extern __shared__ float dsm[];
    const int r = blockIdx.z, kvh = blockIdx.y, sp = blockIdx.x;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int hd = a.hd, G = a.H / a.KVH, h0 = kvh * G;
    const int LPK = hd / VEC, KPI = NT / LPK;
    const int kl = tid % LPK, kr = tid / LPK;
    const cu_kvdesc d = desc[rseq ? rseq[r] : 0];
    const int t0 = sp * split, t1 = min(d.len, t0 + split);
    const int nk = t1 > t0 ? t1 - t0 : 0;
    const size_t kvd = (size_t)a.KVH * hd;
    const size_t hoff = (size_t)kvh * hd + (size_t)kl * VEC; // this thread's columns in a row
    const int p = a.qpos[r];
    float *ps = dsm;            // (split, G) scores, then weights
    float *ml = ps + split * G; // (G, 2)
    float *red = ml + 2 * GM;   // (KPI, G, hd) partial outputs per key row
    size_t pidx = ((size_t)r * a.H + h0) * splits + sp; // part index of head h0; head h0+i adds i*splits

    float qr[GM][VEC];
#pragma unroll
    for (int i = 0; i < GM; i++)
#pragma unroll
        for (int j = 0; j < VEC; j++)
            qr[i][j] = i < G ? to_f(q[((size_t)r * a.H + h0 + i) * hd + kl * VEC + j]) : 0.0f;

    // scores: LPK threads per key, UNR keys per thread in flight
    for (int base = 0; base < nk; base += KPI * UNR) {
        vec16<T> kv[UNR];
#pragma unroll
        for (int u = 0; u < UNR; u++) {
            int k = base + u * KPI + kr;
            if (k < nk)
                kv[u].load(kv_row<const T>(d, KV_ROT, layer, t0 + k, kvd) + hoff);
            else
                kv[u].zero();
        }
#pragma unroll
        for (int u = 0; u < UNR; u++) {
            int k = base + u * KPI + kr;
            float acc[GM];
#pragma unroll
            for (int i = 0; i < GM; i++) {
                acc[i] = 0.0f;
#pragma unroll
                for (int j = 0; j < VEC; j++)
                    acc[i] += qr[i][j] * kv[u].at(j);
            }
#pragma unroll
            for (int i = 0; i < GM; i++)
                for (int off = LPK >> 1; off > 0; off >>= 1)
                    acc[i] += __shfl_xor_sync(0xffffffffu, acc[i], off);
            if (kl == 0 && k < nk) {
                int tk = t0 + k;
                bool visible = d.spos[tk] <= p;
                int gi = (visible && a.grp) ? a.grp[tk] : -1;
#pragma unroll
                for (int i = 0; i < GM; i++) {
                    if (i >= G)
                        break;
                    ps[k * G + i] = decode_score(a, acc[i], visible, gi);
                }
            }
        }
    }
    __syncthreads();

    // softmax statistics per query head: one warp per head
    decode_split_softmax(ps, nk, G, warp, lane, ml);
    __syncthreads();

    // V: thread (kr, kl) sums keys kr, kr + KPI, ... over its VEC dimensions
    float acc[GM][VEC];
#pragma unroll
    for (int i = 0; i < GM; i++)
#pragma unroll
        for (int j = 0; j < VEC; j++)
            acc[i][j] = 0.0f;
    for (int base = 0; base < nk; base += KPI * UNR) {
        vec16<T> vv[UNR];
#pragma unroll
        for (int u = 0; u < UNR; u++) {
            int k = base + u * KPI + kr;
            if (k < nk)
                vv[u].load(kv_row<const T>(d, KV_VAL, layer, t0 + k, kvd) + hoff);
            else
                vv[u].zero();
        }
#pragma unroll
        for (int u = 0; u < UNR; u++) {
            int k = base + u * KPI + kr;
            if (k >= nk)
                break;
#pragma unroll
            for (int i = 0; i < GM; i++) {
                if (i >= G)
                    break;
                float w = ps[k * G + i];
#pragma unroll
                for (int j = 0; j < VEC; j++)
                    acc[i][j] += w * vv[u].at(j);
            }
        }
    }
    decode_store_parts<GM, VEC>(a, acc, red, ml, kr, kl, KPI, G, hd, pidx, splits, part);
}

// The shared-memory decode kernel (bf16 caches; RAGKV_ATTN_DECODE=smem): same grid,
// arrangement and part layout as k_decode_vec, but the block
// first issues asynchronous copies of its split's every K and V row (and reads the keys'
// positions and groups) at once, so the whole split is in flight together — one memory round
// trip per block where k_decode_vec waited for UNR keys of K at a time and then again for V —
// and scores, softmax statistics and sums over V come from shared memory. Shared memory:
// K and V (split, hd) bf16 each, scores (split, G), statistics (GM, 2), key visibility
// (split), and the per-key-row partial outputs (KPI, G, hd) fp32 in K's place once the scores
// are done (or after the rest when they do not fit there): decode_smem_bytes(). Written on
// 2026-12-07 (eleventh session) for the decode step's attention at 8K context, which moves
// about 0.7 TB/s; on the H100 it was no faster than k_decode_vec at the same split (batch 1,
// 8K context: 7.90 against 7.78 ms at 64 keys per split, 8.52 against 8.17 at 128 / 256;
// batch 32: 35.1 against 36.1 at 64): the split's size, not the kernel, moved the step
// (ATTN_SPLIT_BLOCKS_PER_SM), so it stays an option.
__host__ __device__ inline bool decode_smem_red_in_k(int split, int hd, int G)
{
    return (size_t)(NT / (hd / 8)) * G * hd * sizeof(float) <= (size_t)split * hd * sizeof(bf16);
}

__host__ __device__ inline size_t decode_smem_bytes(int split, int hd, int G, int GM)
{
    size_t b = 2 * (size_t)split * hd * sizeof(bf16) + ((size_t)split * G + 2 * (size_t)GM) * sizeof(float) +
               (size_t)split * sizeof(int);
    if (!decode_smem_red_in_k(split, hd, G))
        b += (size_t)(NT / (hd / 8)) * G * hd * sizeof(float);
    return b;
}

template <int GM>
__global__ void __launch_bounds__(NT) k_decode_smem(cu_attn_shape a, const bf16 *__restrict__ q,
                                                    const cu_kvdesc *desc, const int32_t *rseq, int layer,
                                                    int splits, int split, float *part)
{
    constexpr int VEC = 8; // bf16 per 16 bytes
    extern __shared__ __align__(16) unsigned char dsm_raw[];
    const int r = blockIdx.z, kvh = blockIdx.y, sp = blockIdx.x;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int hd = a.hd, G = a.H / a.KVH, h0 = kvh * G;
    const int LPK = hd / VEC, KPI = NT / LPK;
    const int kl = tid % LPK, kr = tid / LPK;
    const cu_kvdesc d = desc[rseq ? rseq[r] : 0];
    const int t0 = sp * split, t1 = min(d.len, t0 + split);
    const int nk = t1 > t0 ? t1 - t0 : 0;
    const size_t kvd = (size_t)a.KVH * hd;
    const int p = a.qpos[r];
    bf16 *Ks = reinterpret_cast<bf16 *>(dsm_raw);                   // (split, hd)
    bf16 *Vs = Ks + (size_t)split * hd;                             // (split, hd)
    float *ps = reinterpret_cast<float *>(Vs + (size_t)split * hd); // (split, G) scores, then weights
    float *ml = ps + (size_t)split * G;                             // (GM, 2)
    int *kg = reinterpret_cast<int *>(ml + 2 * GM);                 // (split) -2 hidden, -1 visible, >= 0 group
    float *red = decode_smem_red_in_k(split, hd, G) ? reinterpret_cast<float *>(Ks)
                                                    : reinterpret_cast<float *>(kg + split); // (KPI, G, hd)
    const size_t pidx = ((size_t)r * a.H + h0) * splits + sp; // part index of head h0; head h0+i adds i*splits

    // every copy of the split at once: C8 pieces of 16 bytes per row, K and V
    const int C8 = LPK;
#pragma unroll 4
    for (int i = tid; i < nk * C8; i += NT) {
        const int k = i / C8, c = (i % C8) * VEC;
        const bf16 *kp = kv_row<const bf16>(d, KV_ROT, layer, t0 + k, kvd) + (size_t)kvh * hd + c;
        const bf16 *vp = kv_row<const bf16>(d, KV_VAL, layer, t0 + k, kvd) + (size_t)kvh * hd + c;
        cp_async16(smem_u32(Ks + (size_t)k * hd + c), kp, true);
        cp_async16(smem_u32(Vs + (size_t)k * hd + c), vp, true);
    }
    cp_async_commit();
    for (int k = tid; k < nk; k += NT) {
        const int tk = t0 + k;
        kg[k] = d.spos[tk] > p ? -2 : a.grp ? max(a.grp[tk], -1) : -1;
    }
    float qr[GM][VEC];
    {
        const uint4 *qv = reinterpret_cast<const uint4 *>(q + (size_t)r * a.H * hd + (size_t)kl * VEC);
#pragma unroll
        for (int i = 0; i < GM; i++) {
            uint4 raw = i < G ? __ldg(qv + (size_t)(h0 + i) * (hd / VEC)) : make_uint4(0u, 0u, 0u, 0u);
            const bf16 *e = reinterpret_cast<const bf16 *>(&raw);
#pragma unroll
            for (int j = 0; j < VEC; j++)
                qr[i][j] = to_f(e[j]);
        }
    }
    cp_async_wait<0>();
    __syncthreads();

    // scores: LPK threads per key. The loop runs the same steps in every lane of a warp (keys
    // past nk read row 0 and are not stored): the shuffles below need the whole warp.
#pragma unroll 4
    for (int k0 = 0; k0 < nk; k0 += KPI) {
        const int k = k0 + kr;
        const uint4 raw = *reinterpret_cast<const uint4 *>(Ks + (size_t)(k < nk ? k : 0) * hd + kl * VEC);
        const bf16 *e = reinterpret_cast<const bf16 *>(&raw);
        float acc[GM];
#pragma unroll
        for (int i = 0; i < GM; i++) {
            acc[i] = 0.0f;
#pragma unroll
            for (int j = 0; j < VEC; j++)
                acc[i] = fmaf(qr[i][j], to_f(e[j]), acc[i]);
        }
#pragma unroll
        for (int i = 0; i < GM; i++)
            for (int off = LPK >> 1; off > 0; off >>= 1)
                acc[i] += __shfl_xor_sync(0xffffffffu, acc[i], off);
        if (kl == 0 && k < nk) {
            const int gk = kg[k];
#pragma unroll
            for (int i = 0; i < GM; i++)
                if (i < G)
                    ps[k * G + i] = decode_score(a, acc[i], gk != -2, gk);
        }
    }
    __syncthreads(); // (K is dead from here: red may take its place)

    decode_split_softmax(ps, nk, G, warp, lane, ml);
    __syncthreads();

    // V: thread (kr, kl) sums keys kr, kr + KPI, ... over its VEC dimensions
    float acc[GM][VEC];
#pragma unroll
    for (int i = 0; i < GM; i++)
#pragma unroll
        for (int j = 0; j < VEC; j++)
            acc[i][j] = 0.0f;
#pragma unroll 4
    for (int k = kr; k < nk; k += KPI) {
        const uint4 raw = *reinterpret_cast<const uint4 *>(Vs + (size_t)k * hd + kl * VEC);
        const bf16 *e = reinterpret_cast<const bf16 *>(&raw);
#pragma unroll
        for (int i = 0; i < GM; i++) {
            if (i >= G)
                break;
            const float w = ps[k * G + i];
#pragma unroll
            for (int j = 0; j < VEC; j++)
                acc[i][j] = fmaf(w, to_f(e[j]), acc[i][j]);
        }
    }
    decode_store_parts<GM, VEC>(a, acc, red, ml, kr, kl, KPI, G, hd, pidx, splits, part);
}

// A block-wide reduction (max or sum) of one value per thread (blockDim.x a multiple of 32,
// at most 1024); every thread gets the result. scratch: 33 floats of shared memory.
template <bool MAX> __device__ __forceinline__ float block_reduce(float v, float *scratch)
{
    for (int off = 16; off > 0; off >>= 1) {
        float o = __shfl_xor_sync(0xffffffffu, v, off);
        v = MAX ? fmaxf(v, o) : v + o;
    }
    const int warp = threadIdx.x >> 5, nw = (int)blockDim.x >> 5;
    __syncthreads(); // scratch's previous use is over
    if ((threadIdx.x & 31) == 0)
        scratch[warp] = v;
    __syncthreads();
    if (threadIdx.x == 0) {
        float t = scratch[0];
        for (int w = 1; w < nw; w++)
            t = MAX ? fmaxf(t, scratch[w]) : t + scratch[w];
        scratch[32] = t;
    }
    __syncthreads();
    return scratch[32];
}

// out[r, h] = merge of the splits' partial softmaxes. One block per (row, head): the block
// reads the splits' (max, sum) pairs once, keeps every split's weight exp(max_s - M) in
// shared memory (splits <= COMBINE_SMEM_SPLITS; the launcher's dynamic shared memory), and
// each thread sums its dimensions over the splits with several loads in flight.
constexpr int COMBINE_SMEM_SPLITS = 8192;
template <typename T>
__global__ void k_decode_combine(const float *part, int n, int H, int hd, int splits, T *out)
{
    extern __shared__ float cw[]; // (splits) weights, then 33 floats of reduction scratch
    float *scratch = cw + splits;
    const size_t rh = blockIdx.x;
    const size_t nparts = (size_t)n * H * splits;
    const float *mlp = part + nparts * hd + 2 * rh * splits;
    float m = -INFINITY;
    for (int s = threadIdx.x; s < splits; s += blockDim.x)
        m = fmaxf(m, mlp[2 * s]);
    const float M = block_reduce<true>(m, scratch);
    float l = 0.0f;
    for (int s = threadIdx.x; s < splits; s += blockDim.x) {
        const float ms = mlp[2 * s];
        const float w = ms == -INFINITY ? 0.0f : __expf(ms - M);
        cw[s] = w;
        l += w * mlp[2 * s + 1];
    }
    const float L = block_reduce<false>(l, scratch); // (its barriers publish cw too)
    const float *po = part + rh * splits * hd;
    for (int c = threadIdx.x; c < hd; c += blockDim.x) {
        float acc0 = 0.0f, acc1 = 0.0f, acc2 = 0.0f, acc3 = 0.0f;
        int s = 0;
        for (; s + 4 <= splits; s += 4) {
            acc0 = fmaf(cw[s], po[(size_t)s * hd + c], acc0);
            acc1 = fmaf(cw[s + 1], po[(size_t)(s + 1) * hd + c], acc1);
            acc2 = fmaf(cw[s + 2], po[(size_t)(s + 2) * hd + c], acc2);
            acc3 = fmaf(cw[s + 3], po[(size_t)(s + 3) * hd + c], acc3);
        }
        for (; s < splits; s++)
            acc0 = fmaf(cw[s], po[(size_t)s * hd + c], acc0);
        const float acc = (acc0 + acc1) + (acc2 + acc3);
        out[rh * hd + c] = from_f<T>(L > 0.0f ? acc / L : 0.0f);
    }
}

// Launch k_decode_combine for n rows of H heads (hd dims) over `splits` partial softmaxes.
template <typename T>
cudaError_t launch_combine(const float *part, int n, int H, int hd, int splits, T *out, cudaStream_t stream)
{
    if (splits > COMBINE_SMEM_SPLITS) // (32.9 KB of shared memory at most: no opt-in needed)
        return cudaErrorInvalidValue;
    const unsigned threads = hd < NT ? 32 * ((hd + 31) / 32) : NT;
    const size_t smem = ((size_t)splits + 33) * sizeof(float);
    k_decode_combine<T><<<(unsigned)((size_t)n * H), threads, smem, stream>>>(part, n, H, hd, splits, out);
    return cudaGetLastError();
}

#include "scores_kernel.cuh" // k_scores (in this namespace)

template <int HD>
cudaError_t launch_scores(int n, int H, int KVH, const bf16 *q, const cu_kvdesc *d, int layer, int len, float *out,
                          cudaStream_t stream)
{
    dim3 grid((unsigned)((len + ST - 1) / ST), (unsigned)H, (unsigned)((n + SR - 1) / SR));
    k_scores<HD><<<grid, SNT, 0, stream>>>(n, H, KVH, q, *d, layer, len, out);
    return cudaGetLastError();
}

} // namespace

bool attn_scores_supported(int hd, int H, int KVH)
{
    return attn_flash_supported(hd, H, KVH);
}

cudaError_t attn_scores(const cu_attn_shape *a, const bf16 *q, const cu_kvdesc *d, int layer, int len, float *out,
                        cudaStream_t stream)
{
    if (a->n == 0 || len == 0)
        return cudaSuccess;
    if (!attn_scores_supported(a->hd, a->H, a->KVH) || a->n > 65535 * SR)
        return cudaErrorInvalidValue;
    switch (a->hd) {
    case 16: return launch_scores<16>(a->n, a->H, a->KVH, q, d, layer, len, out, stream);
    case 32: return launch_scores<32>(a->n, a->H, a->KVH, q, d, layer, len, out, stream);
    case 64: return launch_scores<64>(a->n, a->H, a->KVH, q, d, layer, len, out, stream);
    case 128: return launch_scores<128>(a->n, a->H, a->KVH, q, d, layer, len, out, stream);
    default: return cudaErrorInvalidValue;
    }
}

bool attn_flash_supported(int hd, int H, int KVH)
{
    return (hd == 16 || hd == 32 || hd == 64 || hd == 128) && KVH > 0 && H % KVH == 0;
}

size_t attn_flash_part_floats(int n, int H, int hd, int len)
{
    if (flash_version() < 3) // (the third kernel and its variants, 4 and 5, split)
        return 0;
    int s = flash_splits(n, H, len);
    return s > 1 ? (size_t)n * H * s * ((size_t)hd + 2) : 0;
}

cudaError_t attn_flash(const cu_attn_shape *a, const bf16 *q, const cu_kvdesc *d, int layer, int len, float *part,
                       bf16 *out)
{
    if (a->n == 0)
        return cudaSuccess;
    cu_attn_shape b = *a;
    b.lazy = flash_lazy();
    a = &b;
    int version = flash_version();
    if (version == 5 && !flash_pack_ok(a)) // heads per KV head not packable: the third kernel as it is
        version = 3;
    if (version == 3)
        switch (a->hd) {
        case 16: return launch_flash3<16, false>(a, q, d, layer, len, part, out);
        case 32: return launch_flash3<32, false>(a, q, d, layer, len, part, out);
        case 64: return launch_flash3<64, false>(a, q, d, layer, len, part, out);
        case 128: return launch_flash3<128, false>(a, q, d, layer, len, part, out);
        default: return cudaErrorInvalidValue;
        }
    if (version == 5)
        switch (a->hd) {
        case 16: return launch_flash3<16, false, true>(a, q, d, layer, len, part, out);
        case 32: return launch_flash3<32, false, true>(a, q, d, layer, len, part, out);
        case 64: return launch_flash3<64, false, true>(a, q, d, layer, len, part, out);
        case 128: return launch_flash3<128, false, true>(a, q, d, layer, len, part, out);
        default: return cudaErrorInvalidValue;
        }
    if (version == 4)
        switch (a->hd) {
        case 16: return launch_flash3<16, true>(a, q, d, layer, len, part, out);
        case 32: return launch_flash3<32, true>(a, q, d, layer, len, part, out);
        case 64: return launch_flash3<64, true>(a, q, d, layer, len, part, out);
        case 128: return launch_flash3<128, true>(a, q, d, layer, len, part, out);
        default: return cudaErrorInvalidValue;
        }
    if (version == 2)
        switch (a->hd) {
        case 16: return launch_flash2<16>(a, q, d, layer, len, out);
        case 32: return launch_flash2<32>(a, q, d, layer, len, out);
        case 64: return launch_flash2<64>(a, q, d, layer, len, out);
        case 128: return launch_flash2<128>(a, q, d, layer, len, out);
        default: return cudaErrorInvalidValue;
        }
    switch (a->hd) {
    case 16: return launch_flash<16>(a, q, d, layer, len, out);
    case 32: return launch_flash<32>(a, q, d, layer, len, out);
    case 64: return launch_flash<64>(a, q, d, layer, len, out);
    case 128: return launch_flash<128>(a, q, d, layer, len, out);
    default: return cudaErrorInvalidValue;
    }
}

int attn_decode_split(int n, int KVH, int max_len)
{
    static int fixed = -1; // (a benign race: every thread computes the same value)
    if (fixed < 0) {
        const char *e = getenv("RAGKV_ATTN_SPLIT");
        int v = e ? atoi(e) : 0;
        fixed = v >= 16 && v <= 1024 && (v & (v - 1)) == 0 ? v : 0;
    }
    if (fixed)
        return fixed;
    // halve the split while the grid has fewer than ATTN_SPLIT_BLOCKS_PER_SM blocks per SM
    int split = ATTN_SPLIT;
    size_t want = (size_t)ATTN_SPLIT_BLOCKS_PER_SM * (size_t)device_sms();
    while (split > ATTN_SPLIT_MIN) {
        size_t splits = max_len > 0 ? ((size_t)max_len + split - 1) / split : 1;
        if (splits * (size_t)KVH * (size_t)(n > 0 ? n : 1) >= want)
            break;
        split >>= 1;
    }
    return split;
}

size_t attn_decode_part_floats(int n, int H, int KVH, int hd, int max_len)
{
    size_t split = (size_t)attn_decode_split(n, KVH, max_len);
    size_t splits = max_len > 0 ? ((size_t)max_len + split - 1) / split : 1;
    return (size_t)n * H * splits * ((size_t)hd + 2);
}

// The vectorised decode kernel takes head dims whose 16-byte pieces per key are a power of two
// up to a warp, and up to 8 query heads per KV head; RAGKV_ATTN_DECODE=scalar keeps k_decode
// (read once; for comparisons).
template <typename T> static bool decode_vec_ok(int hd, int G)
{
    static int off = -1; // (a benign race: every thread computes the same value)
    if (off < 0) {
        const char *e = getenv("RAGKV_ATTN_DECODE");
        off = e && !strcmp(e, "scalar");
    }
    constexpr int VEC = 16 / sizeof(T);
    int lpk = hd / VEC;
    return !off && G >= 1 && G <= 8 && hd % VEC == 0 && lpk >= 1 && lpk <= 32 && (lpk & (lpk - 1)) == 0;
}

template <typename T, int GM>
static cudaError_t launch_decode_vec(const cu_attn_shape *a, const T *q, const cu_kvdesc *desc, const int32_t *rseq,
                                     int layer, int splits, int split, float *part, dim3 grid,
                                     cudaStream_t stream)
{
    constexpr int VEC = 16 / sizeof(T);
    int G = a->H / a->KVH, kpi = NT / (a->hd / VEC);
    size_t smem = ((size_t)split * G + 2 * GM + (size_t)kpi * G * a->hd) * sizeof(float);
    static size_t allowed = 48 << 10; // per instantiation: the dynamic shared memory allowed so far
    if (smem > allowed) {
        cudaError_t e =
            cudaFuncSetAttribute(k_decode_vec<T, GM>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
        if (e != cudaSuccess)
            return e;
        allowed = smem;
    }
    k_decode_vec<T, GM><<<grid, NT, smem, stream>>>(*a, q, desc, rseq, layer, splits, split, part);
    return cudaGetLastError();
}

// The current device's largest dynamic shared memory per block (with the opt-in).
static size_t smem_optin_max()
{
    int dev = 0, v = 0;
    if (cudaGetDevice(&dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) != cudaSuccess || v <= 0)
        v = 48 << 10;
    return (size_t)v;
}

// The shared-memory decode kernel, when RAGKV_ATTN_DECODE=smem (read once), takes bf16 caches
// whose head dim is 8 x a power of two up to 256, up to 8 query heads per KV head, and a split
// whose rows fit the device's shared memory per block.
static bool decode_smem_ok(int hd, int G, int gm, int split)
{
    static int on = -1; // (a benign race: every thread computes the same value)
    if (on < 0) {
        const char *e = getenv("RAGKV_ATTN_DECODE");
        on = e && !strcmp(e, "smem");
    }
    int lpk = hd / 8;
    return on && G >= 1 && G <= 8 && hd % 8 == 0 && lpk >= 1 && lpk <= 32 && (lpk & (lpk - 1)) == 0 &&
           decode_smem_bytes(split, hd, G, gm) <= smem_optin_max();
}

template <int GM>
static cudaError_t launch_decode_smem(const cu_attn_shape *a, const bf16 *q, const cu_kvdesc *desc,
                                      const int32_t *rseq, int layer, int splits, int split, float *part, dim3 grid,
                                      cudaStream_t stream)
{
    const size_t smem = decode_smem_bytes(split, a->hd, a->H / a->KVH, GM);
    cudaError_t e = smem_opt_in<k_decode_smem<GM>>(smem_optin_max()); // (attn_prepare did it already)
    if (e != cudaSuccess)
        return e;
    k_decode_smem<GM><<<grid, NT, smem, stream>>>(*a, q, desc, rseq, layer, splits, split, part);
    return cudaGetLastError();
}

// The per-split partial softmaxes of attn_decode into part, by the best kernel for the shape.
template <typename T>
static cudaError_t decode_parts(const cu_attn_shape *a, const T *q, const cu_kvdesc *desc, const int32_t *rseq,
                                int layer, int splits, int split, float *part, cudaStream_t stream)
{
    const int G = a->H / a->KVH, gm = G <= 1 ? 1 : G <= 2 ? 2 : G <= 4 ? 4 : 8;
    const dim3 grid((unsigned)splits, (unsigned)a->KVH, (unsigned)a->n);
    if constexpr (std::is_same<T, bf16>::value) {
        if (decode_smem_ok(a->hd, G, gm, split))
            return gm == 1   ? launch_decode_smem<1>(a, q, desc, rseq, layer, splits, split, part, grid, stream)
                   : gm == 2 ? launch_decode_smem<2>(a, q, desc, rseq, layer, splits, split, part, grid, stream)
                   : gm == 4 ? launch_decode_smem<4>(a, q, desc, rseq, layer, splits, split, part, grid, stream)
                             : launch_decode_smem<8>(a, q, desc, rseq, layer, splits, split, part, grid, stream);
    }
    if (decode_vec_ok<T>(a->hd, G))
        return gm == 1   ? launch_decode_vec<T, 1>(a, q, desc, rseq, layer, splits, split, part, grid, stream)
               : gm == 2 ? launch_decode_vec<T, 2>(a, q, desc, rseq, layer, splits, split, part, grid, stream)
               : gm == 4 ? launch_decode_vec<T, 4>(a, q, desc, rseq, layer, splits, split, part, grid, stream)
                         : launch_decode_vec<T, 8>(a, q, desc, rseq, layer, splits, split, part, grid, stream);
    size_t smem = ((size_t)G * a->hd + (size_t)split * G + 2 * (size_t)G) * sizeof(float);
    k_decode<T><<<grid, NT, smem, stream>>>(*a, q, desc, rseq, layer, splits, split, part);
    return cudaGetLastError();
}

cudaError_t attn_prepare(void)
{
    const size_t mx = smem_optin_max();
    cudaError_t e;
    if ((e = smem_opt_in<k_decode_smem<1>>(mx)) != cudaSuccess || (e = smem_opt_in<k_decode_smem<2>>(mx)) != cudaSuccess ||
        (e = smem_opt_in<k_decode_smem<4>>(mx)) != cudaSuccess || (e = smem_opt_in<k_decode_smem<8>>(mx)) != cudaSuccess)
        return e;
    return cudaSuccess;
}

template <typename T>
cudaError_t attn_decode(const cu_attn_shape *a, const T *q, const cu_kvdesc *desc, const int32_t *rseq, int layer,
                        int max_len, float *part, T *out, cudaStream_t stream)
{
    if (a->n == 0)
        return cudaSuccess;
    int G = a->H / a->KVH;
    if (G > ATTN_MAX_GROUP || a->H % a->KVH)
        return cudaErrorInvalidValue;
    int split = attn_decode_split(a->n, a->KVH, max_len);
    int splits = max_len > 0 ? (max_len + split - 1) / split : 1;
    cudaError_t e = decode_parts<T>(a, q, desc, rseq, layer, splits, split, part, stream);
    if (e != cudaSuccess)
        return e;
    return launch_combine<T>(part, a->n, a->H, a->hd, splits, out, stream);
}

template cudaError_t attn_decode<float>(const cu_attn_shape *, const float *, const cu_kvdesc *, const int32_t *, int,
                                        int, float *, float *, cudaStream_t);
template cudaError_t attn_decode<bf16>(const cu_attn_shape *, const bf16 *, const cu_kvdesc *, const int32_t *, int,
                                       int, float *, bf16 *, cudaStream_t);
