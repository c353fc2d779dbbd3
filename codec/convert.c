/* convert.c — float32 rows to fp16/bf16, the decoders' last step. With F16C (x86, checked at
 * run time) eight values convert per instruction; both paths round to nearest even and give
 * identical bits (the tests compare them). */
#include <string.h>

#include "codec_impl.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#include <immintrin.h>

__attribute__((target("f16c,avx"))) static void to_f16_f16c(uint16_t *dst, const float *src,
                                                             size_t n)
{
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT);
        _mm_storeu_si128((__m128i *)(dst + i), h);
    }
    for (; i < n; i++)
        dst[i] = rk_f32_to_f16(src[i]);
}

/* Whether the CPU and OS support F16C and AVX (CPUID + XGETBV), cached after the first call. */
static int have_f16c(void)
{
    static int cached = -1;
    int v = __atomic_load_n(&cached, __ATOMIC_RELAXED);
    if (v < 0) {
        unsigned a, b, c, d;
        v = 0;
        /* CPUID.1:ECX bit 29 F16C, 28 AVX, 27 OSXSAVE; XCR0 bits 1-2: the OS saves YMM */
        if (__get_cpuid(1, &a, &b, &c, &d) && (c >> 29 & 1) && (c >> 28 & 1) && (c >> 27 & 1)) {
            unsigned lo, hi;
            __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
            v = (lo & 6) == 6;
        }
        __atomic_store_n(&cached, v, __ATOMIC_RELAXED);
    }
    return v;
}
#endif

void codec_f32_to_f16_row(uint16_t *dst, const float *src, size_t n, int allow_simd)
{
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    if (allow_simd && have_f16c()) {
        to_f16_f16c(dst, src, n);
        return;
    }
#endif
    for (size_t i = 0; i < n; i++)
        dst[i] = rk_f32_to_f16(src[i]);
}

void codec_store_row(void *out, codec_dtype dtype, size_t at, const float *v, size_t n)
{
    if (dtype == CODEC_F32)
        memcpy((float *)out + at, v, n * sizeof(float));
    else if (dtype == CODEC_F16)
        codec_f32_to_f16_row((uint16_t *)out + at, v, n, 1);
    else
        for (size_t i = 0; i < n; i++)
            ((uint16_t *)out)[at + i] = rk_f32_to_bf16(v[i]);
}
