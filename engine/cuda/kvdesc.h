// kvdesc.h — private to engine/cuda: the paged KV cache as the kernels see it. Plain C++
// apart from the __device__ qualifiers, so that a CPU emulation of a kernel
// (tests/engine/scores_kernel_emu.cpp) can include it with those defined away.
#ifndef RAGKV_ENGINE_CUDA_KVDESC_H
#define RAGKV_ENGINE_CUDA_KVDESC_H

#include <stddef.h>
#include <stdint.h>

// One sequence's KV cache as the kernels see it (device memory, storage type of the backend).
// Paged: slot t lives in block t >> bshift, a separate device allocation of B = 1 << bshift
// slots for every layer, laid out [layer][K before RoPE | K rotated | V][B][kvd]; blk holds
// the blocks of slots [0, cap) in order (those past the sequence's length may be NULL).
enum { KV_RAW = 0, KV_ROT = 1, KV_VAL = 2, KV_ARRAYS = 3 };
struct cu_kvdesc {
    void *const *blk;        // (cap >> bshift, rounded up) device pointers to the blocks
    const int32_t *spos;     // (cap) position of each slot
    long long cap;           // slots
    int len;                 // slots in use (all of them in mapped blocks)
    int bshift;              // log2 of the slots per block
};

// Row t (kvd elements) of array arr (KV_RAW, KV_ROT, KV_VAL) of `layer`.
template <typename T>
static __device__ __forceinline__ T *kv_row(const cu_kvdesc &d, int arr, int layer, long long t, size_t kvd)
{
    const long long B = 1LL << d.bshift;
    return reinterpret_cast<T *>(d.blk[t >> d.bshift]) +
           ((size_t)(layer * KV_ARRAYS + arr) * (size_t)B + (size_t)(t & (B - 1))) * kvd;
}

#endif
