// sample.h — choosing the next token of each logits row on the device (eng_decode_sample's
// CUDA path). Private to engine/cuda.
//
// One block of SAMPLE_THREADS threads per row. What a row gets, by its eng_sample_row:
//   - temperature 0: the argmax, lowest id on ties, NaN never wins (-1 when all NaN): exactly
//     eng_argmax, for any float values;
//   - otherwise eng_sample's rules with the uniform r the host drew: p = softmax(l / T) (max
//     subtracted; NaN logits weigh 0), then
//       * no top-k, no top-p: the first id i (in id order) whose cumulative p exceeds r;
//       * else candidates with p >= (1 - top_p) / (vocab - 1) (all when none is), ranked by p
//         then lower id, the first top_k of them cut further to the shortest prefix whose
//         mass reaches top_p, and the first of these (in rank order) whose cumulative p
//         exceeds r times the kept mass.
//     Ranks are found by radix selection over the 64-bit key (bits of p, ~id), masses summed
//     as 2^-52 fixed point (integer sums: deterministic, order-free), so only rounding where a
//     cumulative mass meets r or top_p separates a token from the host's (docs/engine.md);
//   - a row whose largest l / T is infinite: its argmax.
#ifndef RAGKV_ENGINE_CUDA_SAMPLE_H
#define RAGKV_ENGINE_CUDA_SAMPLE_H

#include <cuda_runtime.h>
#include <stdint.h>

extern "C" {
#include "engine_impl.h"
}

#define SAMPLE_THREADS 1024 // threads per row (a power of two, multiple of 32)

// out[r] (device, n) = row r's token of logits (n, vocab) device float32 under rows[r]
// (device, n), for r < n. Stochastic rows of logits are overwritten with their probabilities
// (work that reads the logits must be ordered before). Enqueued on stream; the launch's error
// is returned.
cudaError_t sample_launch(float *logits, int vocab, const eng_sample_row *rows, int n, int32_t *out,
                          cudaStream_t stream);

#endif
