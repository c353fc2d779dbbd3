/* det_tokens.h — deterministic token ids for the engine's test headers (conformance.h,
 * sample_decode.h). */
#ifndef RAGKV_TESTS_DET_TOKENS_H
#define RAGKV_TESTS_DET_TOKENS_H

#include <stddef.h>
#include <stdint.h>

/* Deterministic token ids in [3, vocab) (xorshift32 from seed). */
static inline void det_tokens(int32_t *t, size_t n, int vocab, uint32_t seed)
{
    uint32_t x = seed * 2654435761u + 1;
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        t[i] = 3 + (int32_t)(x % (uint32_t)(vocab - 3));
    }
}

#endif
