/* codec_cuda_stub.c — the CUDA decoder's entry points in builds without CUDA. */
#include "codec_impl.h"

rk_status codec_decode_cuda(const void *data, size_t len, const codec_decode_opts *opts,
                            codec_dtype dtype, void *dev_out, size_t out_bytes, void *stream)
{
    return rk_error_set(RK_ERR_UNSUPPORTED, "codec_decode_cuda: built without CUDA");
}

int codec_cuda_available(void) { return 0; }
