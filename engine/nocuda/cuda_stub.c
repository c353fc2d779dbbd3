/* cuda_stub.c — builds without CUDA: the CUDA backend does not exist here. */
#include "ragkv/engine.h"

rk_status eng_backend_cuda_new(eng_model *m, int device, eng_backend **out)
{
    (void)m;
    (void)device;
    *out = NULL;
    return rk_error_set(RK_ERR_UNSUPPORTED, "this build of ragkv has no CUDA support (built with RAGKV_CUDA=OFF "
                        "or without nvcc/cuBLAS)");
}

const char *eng_backend_cuda_mode(const eng_backend *be)
{
    (void)be;
    return "";
}
