/* backend_stub.c — CUDA builds: placeholder until the CUDA backend lands (issue 3), which
 * replaces this file with engine/cuda/ kernels implementing struct eng_backend_i. */
#include "ragkv/engine.h"

rk_status eng_backend_cuda_new(eng_model *m, int device, eng_backend **out)
{
    (void)m;
    (void)device;
    *out = NULL;
    return rk_error_set(RK_ERR_NOT_IMPLEMENTED, "the CUDA backend is not built yet in this version");
}
