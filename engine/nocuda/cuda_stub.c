/* cuda_stub.c — builds without CUDA: the CUDA backend does not exist here. */
#include "engine_impl.h"

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

void eng_backend_cuda_profile_reset(eng_backend *be)
{
    (void)be;
}

int eng_backend_cuda_graphs(const eng_backend *be, uint64_t *captures, uint64_t *replays)
{
    (void)be;
    if (captures)
        *captures = 0;
    if (replays)
        *replays = 0;
    return 0;
}

int eng_backend_cuda_kv_blocks(const eng_backend *be, size_t *in_use, size_t *total)
{
    (void)be;
    if (in_use)
        *in_use = 0;
    if (total)
        *total = 0;
    return 0;
}

int eng_backend_cuda_device(const eng_backend *be)
{
    (void)be;
    return -1;
}

void *eng_backend_cuda_stream(const eng_backend *be)
{
    (void)be;
    return NULL;
}

rk_status eng_cuda_sample_rows(eng_backend *be, const float *logits, int vocab, size_t n, const eng_sample_row *rows,
                               int32_t *out)
{
    (void)be;
    (void)logits;
    (void)vocab;
    (void)n;
    (void)rows;
    (void)out;
    return rk_error_set(RK_ERR_UNSUPPORTED, "this build of ragkv has no CUDA support");
}

rk_status eng_cuda_wgmma_check(int device, size_t k, const uint16_t *a, const uint16_t *b, float *c)
{
    (void)device;
    (void)k;
    (void)a;
    (void)b;
    (void)c;
    return rk_error_set(RK_ERR_UNSUPPORTED, "this build of ragkv has no CUDA support");
}
