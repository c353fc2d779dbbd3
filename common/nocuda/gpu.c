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
