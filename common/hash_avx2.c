/* hash_avx2.c — XXH3-64 compiled for AVX2 (common/CMakeLists.txt builds this file alone with
 * -mavx2 on x86-64; hash.c calls it only where the CPU has AVX2). The algorithm and its
 * output are libxxhash's, from the same header: only the vector width of the long-input loop
 * differs (Debian's libxxhash is built for baseline x86-64, SSE2: about 17 GB/s on the VM of
 * docs/codec.md against 29 here, measured on 15 MB, the size of a 512-token Llama-3-8B
 * container's payload, whose checksum every open verifies). */
#include <stddef.h>
#include <stdint.h>

#if defined(__x86_64__) && defined(__AVX2__)
#define XXH_INLINE_ALL
#include <xxhash.h>

uint64_t rk_xxh3_64_avx2(const void *data, size_t n);

uint64_t rk_xxh3_64_avx2(const void *data, size_t n)
{
    return XXH3_64bits(data, n);
}
#endif
