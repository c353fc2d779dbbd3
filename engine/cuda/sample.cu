// sample.cu — the next token of each logits row, chosen on the device (contract: sample.h). The
// host reference is eng_sample (sample.c); this file follows it step by step, and says where
// its arithmetic differs.
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>

#include "sample.h"

namespace {

#include "sample_kernel.cuh"

} // namespace

cudaError_t sample_launch(float *logits, int vocab, const eng_sample_row *rows, int n, int32_t *out,
                          cudaStream_t stream)
{
    if (n <= 0)
        return cudaSuccess;
    k_sample<<<(unsigned)n, SAMPLE_THREADS, 0, stream>>>(logits, vocab, rows, out);
    return cudaGetLastError();
}
