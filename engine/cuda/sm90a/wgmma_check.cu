// wgmma_check.cu — the white-box check of wgmma.cuh (tests/engine/test_gpu_wgmma.c): one
// warpgroup multiplies a 64 x k by a 64 x k bf16 matrix through the descriptors and the
// accumulator layout that a flash kernel on wgmma would use, so that they are proven on the
// device before a kernel is built on them. Compiled for sm_90a as well (CMakeLists.txt).
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "../wgmma.cuh"

extern "C" {
#include "../../engine_impl.h"
}

namespace {

typedef __nv_bfloat16 bf16;

constexpr int WG_ROWS = 64;

// c (64 x 64, row-major f32) = a (64 x k) b (64 x k)^T, k a multiple of 16 up to 256; *ok = 0
// when this code was compiled without wgmma (no sm_90a machine code chosen).
__global__ void __launch_bounds__(128) k_wgmma_check(const bf16 *__restrict__ a, const bf16 *__restrict__ b, int k,
                                                     float *__restrict__ c, int *ok)
{
#ifdef RAGKV_WGMMA
    extern __shared__ __align__(128) unsigned char smem_raw[];
    bf16 *As = reinterpret_cast<bf16 *>(smem_raw), *Bs = As + WG_ROWS * k;
    const int kg = k / 8;
    for (int i = threadIdx.x; i < WG_ROWS * k; i += blockDim.x) {
        const int r = i / k, col = i % k;
        As[wg_core_offset(r, col, kg)] = a[i];
        Bs[wg_core_offset(r, col, kg)] = b[i];
    }
    wg_fence_proxy();
    __syncthreads();
    float d[32];
#pragma unroll
    for (int i = 0; i < 32; i++)
        d[i] = 0.0f;
    wg_fence();
    for (int s = 0; s < k / 16; s++) // k groups 2s, 2s + 1 of row group 0: 128 elements on
        wg_mma_64x64x16(d, wg_desc(As + s * 128, 128, kg * 128), wg_desc(Bs + s * 128, 128, kg * 128), s > 0);
    wg_commit();
    wg_wait<0>();
    const int w = threadIdx.x >> 5, lane = threadIdx.x & 31, ra = w * 16 + (lane >> 2), rb = ra + 8;
#pragma unroll
    for (int j = 0; j < 8; j++) {
        const int col = 8 * j + 2 * (lane & 3);
        c[ra * 64 + col] = d[4 * j];
        c[ra * 64 + col + 1] = d[4 * j + 1];
        c[rb * 64 + col] = d[4 * j + 2];
        c[rb * 64 + col + 1] = d[4 * j + 3];
    }
    if (threadIdx.x == 0)
        *ok = 1;
#else
    (void)a, (void)b, (void)k, (void)c;
    if (threadIdx.x == 0)
        *ok = 0;
#endif
}

rk_status fail(cudaError_t e, const char *what)
{
    cudaGetLastError();
    return rk_error_set(RK_ERR_DEVICE, "wgmma check: %s: %s", what, cudaGetErrorString(e));
}

} // namespace

extern "C" rk_status eng_cuda_wgmma_check(int device, size_t k, const uint16_t *a, const uint16_t *b, float *c)
{
    if (k == 0 || k % 16 || k > 256)
        return rk_error_set(RK_ERR_INVALID, "wgmma check: k = %zu: a multiple of 16 up to 256", k);
    cudaError_t e = cudaSetDevice(device);
    if (e != cudaSuccess)
        return fail(e, "cudaSetDevice");
    int major = 0, minor = 0;
    if ((e = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device)) != cudaSuccess ||
        (e = cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device)) != cudaSuccess)
        return fail(e, "compute capability");
    if (major != 9 || minor != 0) // sm_90a code runs on compute capability 9.0 alone
        return rk_error_set(RK_ERR_UNSUPPORTED, "wgmma check: needs compute capability 9.0 (this device: %d.%d)",
                            major, minor);
    const size_t nab = (size_t)WG_ROWS * k * sizeof(bf16), nc = (size_t)WG_ROWS * 64 * sizeof(float);
    bf16 *da = NULL, *db = NULL;
    float *dc = NULL;
    int *dok = NULL, ok = 0;
    rk_status st = RK_OK;
    if ((e = cudaMalloc(&da, nab)) != cudaSuccess || (e = cudaMalloc(&db, nab)) != cudaSuccess ||
        (e = cudaMalloc(&dc, nc)) != cudaSuccess || (e = cudaMalloc(&dok, sizeof(int))) != cudaSuccess) {
        st = fail(e, "cudaMalloc");
        goto out;
    }
    if ((e = cudaMemcpy(da, a, nab, cudaMemcpyHostToDevice)) != cudaSuccess ||
        (e = cudaMemcpy(db, b, nab, cudaMemcpyHostToDevice)) != cudaSuccess ||
        (e = cudaMemset(dok, 0, sizeof(int))) != cudaSuccess) {
        st = fail(e, "upload");
        goto out;
    }
    if (2 * nab > 48 * 1024 &&
        (e = cudaFuncSetAttribute(k_wgmma_check, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)(2 * nab))) !=
            cudaSuccess) {
        st = fail(e, "shared-memory opt-in");
        goto out;
    }
    k_wgmma_check<<<1, 128, 2 * nab>>>(da, db, (int)k, dc, dok);
    if ((e = cudaGetLastError()) != cudaSuccess || (e = cudaDeviceSynchronize()) != cudaSuccess) {
        st = fail(e, "kernel");
        goto out;
    }
    if ((e = cudaMemcpy(c, dc, nc, cudaMemcpyDeviceToHost)) != cudaSuccess ||
        (e = cudaMemcpy(&ok, dok, sizeof(int), cudaMemcpyDeviceToHost)) != cudaSuccess) {
        st = fail(e, "download");
        goto out;
    }
    if (!ok)
        st = rk_error_set(RK_ERR_UNSUPPORTED, "wgmma check: the device ran code compiled without sm_90a (no wgmma)");
out:
    cudaFree(da);
    cudaFree(db);
    cudaFree(dc);
    cudaFree(dok);
    return st;
}
