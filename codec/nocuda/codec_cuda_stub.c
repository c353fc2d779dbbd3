/* codec_cuda_stub.c — the CUDA decoder's entry points in builds without CUDA. */
#include <stdio.h>

#include "ragkv/codec_eval.h"
#include "codec_impl.h"

rk_status codec_decode_cuda(const void *data, size_t len, const codec_decode_opts *opts,
                            codec_dtype dtype, void *dev_out, size_t out_bytes, void *stream)
{
    return rk_error_set(RK_ERR_UNSUPPORTED, "codec_decode_cuda: built without CUDA");
}

rk_status codec_decode_cuda_timed(const void *data, size_t len, const codec_decode_opts *opts,
                                  codec_dtype dtype, void *dev_out, size_t out_bytes,
                                  void *stream, float *kernel_ms)
{
    return codec_decode_cuda(data, len, opts, dtype, dev_out, out_bytes, stream);
}

int codec_cuda_available(void) { return 0; }

rk_status codec_cuda_reader_open(const void *data, size_t len, const codec_decode_opts *opts,
                                 codec_dtype dtype, int device, codec_cuda_reader **out)
{
    if (out)
        *out = NULL;
    return rk_error_set(RK_ERR_UNSUPPORTED, "codec_cuda_reader_open: built without CUDA");
}

/* No reader can exist in this build: the functions taking one are never reached with one. */
const codec_info *codec_cuda_reader_info(const codec_cuda_reader *r) { return NULL; }

rk_status codec_cuda_reader_decode_layers(codec_cuda_reader *r, int layer0, int n_layers,
                                          void *dev_out, size_t out_bytes)
{
    return rk_error_set(RK_ERR_UNSUPPORTED, "codec_cuda_reader_decode_layers: built without CUDA");
}

rk_status codec_cuda_reader_upload(codec_cuda_reader *r, int layer0, int n_layers)
{
    return rk_error_set(RK_ERR_UNSUPPORTED, "codec_cuda_reader_upload: built without CUDA");
}

rk_status codec_cuda_reader_wait(codec_cuda_reader *r, int layer0, int n_layers, void *stream)
{
    return rk_error_set(RK_ERR_UNSUPPORTED, "codec_cuda_reader_wait: built without CUDA");
}

rk_status codec_cuda_reader_finish(codec_cuda_reader *r)
{
    return rk_error_set(RK_ERR_UNSUPPORTED, "codec_cuda_reader_finish: built without CUDA");
}

void codec_cuda_reader_close(codec_cuda_reader *r) {}

int codec_bench_cuda(codec_kv_source *src, const codec_codebook *cb, const codec_codebook *cbt,
                     rk_pool *pool, int tokens, int iters, FILE *jf)
{
    fprintf(stderr, "ragkv bench codec --cuda: built without CUDA\n");
    return 0;
}
