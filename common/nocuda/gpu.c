/* gpu.c — the accelerator API in a build without CUDA. */
#include <string.h>

#include "ragkv/gpu.h"

rk_status rk_gpu_query(rk_gpu_info *info)
{
    memset(info, 0, sizeof(*info));
    return rk_error_set(RK_ERR_UNSUPPORTED, "built without CUDA (RAGKV_CUDA=OFF or no nvcc)");
}

rk_status rk_gpu_selftest(size_t n)
{
    (void)n;
    return rk_error_set(RK_ERR_UNSUPPORTED, "built without CUDA (RAGKV_CUDA=OFF or no nvcc)");
}

void *rk_gpu_host_alloc(size_t n)
{
    (void)n;
    rk_error_set(RK_ERR_UNSUPPORTED, "built without CUDA (RAGKV_CUDA=OFF or no nvcc)");
    return NULL;
}

void rk_gpu_host_free(void *p)
{
    (void)p;
}

bool rk_gpu_host_locked(const void *p)
{
    (void)p;
    return false;
}
