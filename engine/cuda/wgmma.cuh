// wgmma.cuh — private to engine/cuda: Hopper warpgroup matrix products (wgmma.mma_async), the
// building block of a flash kernel beyond mma.sync (which on the H100 reaches about two thirds
// of the tensor cores' rate at best; the third flash kernel runs at 245 TFLOP/s, 2026-12-07).
// Only for code compiled for sm_90a (wgmma is an arch-specific feature): every helper is
// guarded by RAGKV_WGMMA, set where __CUDA_ARCH_FEAT_SM90_ALL is.
//
// Operands come from shared memory through 64-bit matrix descriptors. The layout used here is
// the one without swizzling, K-major: the matrix (rows x k, bf16) is stored as "core matrices"
// of 8 rows x 8 elements (16 bytes a row, 128 bytes each), ordered [row group][k group][8][8]:
// element (r, c) at ((r / 8) * KG + c / 8) * 64 + (r % 8) * 8 + c % 8, KG = k / 8. In a
// descriptor, the leading byte offset is the distance between core matrices adjacent in k
// (128) and the stride byte offset the distance between row groups (KG * 128).
//
// The accumulator of m64nNk16 with f32 output, per thread of the warpgroup (128 threads):
// warp w = tid / 32 holds rows 16 w + lane / 4 (a) and + 8 (b); for each 8-column block j,
// d[4 j + 0..1] are row a, columns 8 j + 2 (lane % 4) + 0..1, and d[4 j + 2..3] row b — the
// mma.sync m16n8 layout, repeated.
#ifndef RAGKV_ENGINE_CUDA_WGMMA_CUH
#define RAGKV_ENGINE_CUDA_WGMMA_CUH

#include <stdint.h>

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define RAGKV_WGMMA 1
#endif

// Offset (elements) of (r, c) in the core-matrix layout above, kg = k / 8 groups per row group.
static __device__ __forceinline__ int wg_core_offset(int r, int c, int kg)
{
    return ((r >> 3) * kg + (c >> 3)) * 64 + (r & 7) * 8 + (c & 7);
}

// The descriptor of a K-major operand without swizzling at shared address p (16-byte
// aligned): leading byte offset lbo (between k-adjacent core matrices), stride byte offset sbo
// (between row groups). Bits: 0-13 address >> 4, 16-29 lbo >> 4, 32-45 sbo >> 4, 62-63
// swizzle mode (0: none).
static __device__ __forceinline__ uint64_t wg_desc(const void *p, uint32_t lbo, uint32_t sbo)
{
    const uint32_t a = (uint32_t)__cvta_generic_to_shared(p);
    return (uint64_t)((a & 0x3FFFF) >> 4) | ((uint64_t)((lbo & 0x3FFFF) >> 4) << 16) |
           ((uint64_t)((sbo & 0x3FFFF) >> 4) << 32);
}

#ifdef RAGKV_WGMMA
// Shared-memory writes by ordinary stores made visible to the asynchronous proxy that wgmma
// reads through (after them, before a barrier).
static __device__ __forceinline__ void wg_fence_proxy() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }
// Before the first wgmma of a group (the accumulator registers were written by other code).
static __device__ __forceinline__ void wg_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
static __device__ __forceinline__ void wg_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
// Wait until at most N committed groups are still running.
template <int N> static __device__ __forceinline__ void wg_wait()
{
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}

// d (64 x 64, f32, the layout above) = A B^T (+ d when accumulate), A (64 x 16) and B (64 x 16)
// bf16 K-major in shared memory (descriptors da, db). Warpgroup-wide, asynchronous: the result
// is in d after wg_commit and wg_wait.
static __device__ __forceinline__ void wg_mma_64x64x16(float (&d)[32], uint64_t da, uint64_t db, int accumulate)
{
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
                 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, %32, %33, p, 1, 1, 0, 0;\n}\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
                 : "l"(da), "l"(db), "r"(accumulate));
}
#endif

#endif
