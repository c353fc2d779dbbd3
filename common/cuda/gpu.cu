// gpu.cu — device discovery and a self-test kernel; CUDA errors become rk_status.
#include <cuda_runtime.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "ragkv/gpu.h"

static rk_status cuda_err(cudaError_t e, const char *what)
{
    return rk_error_set(RK_ERR_DEVICE, "%s: %s", what, cudaGetErrorString(e));
}

extern "C" rk_status rk_gpu_query(rk_gpu_info *info)
{
    memset(info, 0, sizeof(*info));
    cudaError_t e = cudaGetDeviceCount(&info->count);
    if (e == cudaErrorNoDevice || e == cudaErrorInsufficientDriver) {
        cudaGetLastError(); /* clear the sticky error */
        info->count = 0;
        return RK_OK;
    }
    if (e != cudaSuccess)
        return cuda_err(e, "cudaGetDeviceCount");
    cudaDriverGetVersion(&info->driver_version);
    cudaRuntimeGetVersion(&info->runtime_version);
    if (info->count == 0)
        return RK_OK;
    cudaDeviceProp p;
    if ((e = cudaGetDeviceProperties(&p, 0)) != cudaSuccess)
        return cuda_err(e, "cudaGetDeviceProperties");
    snprintf(info->name, sizeof(info->name), "%s", p.name);
    info->cc_major = p.major;
    info->cc_minor = p.minor;
    info->sm_count = p.multiProcessorCount;
    info->mem_bytes = p.totalGlobalMem;
    return RK_OK;
}

__global__ static void saxpy(size_t n, float a, const float *x, float *y)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        y[i] = a * x[i] + y[i];
}

extern "C" rk_status rk_gpu_selftest(size_t n)
{
    rk_status st = RK_OK;
    float *hx = (float *)malloc(n * sizeof(float)), *hy = (float *)malloc(n * sizeof(float));
    float *dx = NULL, *dy = NULL;
    cudaError_t e;
    if (!hx || !hy) {
        st = RK_ERR_NOMEM;
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        hx[i] = (float)(i % 1000) * 0.5f;
        hy[i] = 1.0f;
    }
    if ((e = cudaMalloc(&dx, n * sizeof(float))) != cudaSuccess ||
        (e = cudaMalloc(&dy, n * sizeof(float))) != cudaSuccess) {
        st = cuda_err(e, "cudaMalloc");
        goto out;
    }
    if ((e = cudaMemcpy(dx, hx, n * sizeof(float), cudaMemcpyHostToDevice)) != cudaSuccess ||
        (e = cudaMemcpy(dy, hy, n * sizeof(float), cudaMemcpyHostToDevice)) != cudaSuccess) {
        st = cuda_err(e, "cudaMemcpy to device");
        goto out;
    }
    saxpy<<<256, 256>>>(n, 2.0f, dx, dy);
    if ((e = cudaGetLastError()) != cudaSuccess || (e = cudaDeviceSynchronize()) != cudaSuccess) {
        st = cuda_err(e, "saxpy kernel");
        goto out;
    }
    if ((e = cudaMemcpy(hy, dy, n * sizeof(float), cudaMemcpyDeviceToHost)) != cudaSuccess) {
        st = cuda_err(e, "cudaMemcpy to host");
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        float want = 2.0f * ((float)(i % 1000) * 0.5f) + 1.0f;
        if (hy[i] != want) {
            st = rk_error_set(RK_ERR_INTERNAL, "selftest: y[%zu] = %g, want %g", i, hy[i], want);
            break;
        }
    }
out:
    cudaFree(dx);
    cudaFree(dy);
    free(hx);
    free(hy);
    return st;
}

extern "C" void *rk_gpu_host_alloc(size_t n)
{
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess || count == 0) {
        cudaGetLastError(); /* clear a sticky "no device" */
        rk_error_set(RK_ERR_UNSUPPORTED, "page-locked host memory: no CUDA device");
        return NULL;
    }
    void *p = NULL;
    if ((e = cudaHostAlloc(&p, n ? n : 1, cudaHostAllocPortable)) != cudaSuccess) {
        cudaGetLastError();
        cuda_err(e, "cudaHostAlloc");
        return NULL;
    }
    return p;
}

extern "C" void rk_gpu_host_free(void *p)
{
    if (p)
        cudaFreeHost(p);
}

extern "C" bool rk_gpu_host_locked(const void *p)
{
    cudaPointerAttributes a;
    if (!p || cudaPointerGetAttributes(&a, p) != cudaSuccess) {
        cudaGetLastError();
        return false;
    }
    return a.type == cudaMemoryTypeHost;
}
