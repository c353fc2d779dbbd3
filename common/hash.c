/* hash.c — XXH3 and BLAKE2b wrappers. */
#include "ragkv/hash.h"

#include <sodium.h>
#include <string.h>
#include <xxhash.h>

_Static_assert(sizeof(((rk_blake2b_state *)0)->opaque) >= sizeof(crypto_generichash_state),
               "rk_blake2b_state too small for libsodium's state");

#if RK_XXH3_AVX2
uint64_t rk_xxh3_64_avx2(const void *data, size_t n); /* hash_avx2.c */
#endif

/* Whether rk_xxh3_64 takes hash_avx2.c's build. */
static int xxh3_avx2(void)
{
#if RK_XXH3_AVX2
    static int on = -1; /* every thread that races here stores the same answer */
    int v = __atomic_load_n(&on, __ATOMIC_RELAXED);
    if (v < 0) {
        v = __builtin_cpu_supports("avx2") ? 1 : 0;
        __atomic_store_n(&on, v, __ATOMIC_RELAXED);
    }
    return v;
#else
    return 0;
#endif
}

uint64_t rk_xxh3_64_lib(const void *data, size_t n)
{
    static const unsigned char empty[1];
    return XXH3_64bits(n ? data : empty, n);
}

uint64_t rk_xxh3_64(const void *data, size_t n)
{
#if RK_XXH3_AVX2
    if (xxh3_avx2()) {
        static const unsigned char empty[1];
        return rk_xxh3_64_avx2(n ? data : empty, n);
    }
#endif
    return rk_xxh3_64_lib(data, n);
}

int rk_xxh3_64_simd(void)
{
    return xxh3_avx2();
}

rk_status rk_blake2b_init(rk_blake2b_state *st, size_t outlen)
{
    if (outlen < crypto_generichash_BYTES_MIN || outlen > crypto_generichash_BYTES_MAX)
        return rk_error_set(RK_ERR_INVALID, "blake2b digest length %zu not in 16..64", outlen);
    st->outlen = outlen;
    if (crypto_generichash_init((crypto_generichash_state *)st->opaque, NULL, 0, outlen) != 0)
        return RK_ERR_INTERNAL;
    return RK_OK;
}

void rk_blake2b_update(rk_blake2b_state *st, const void *data, size_t n)
{
    if (n)
        crypto_generichash_update((crypto_generichash_state *)st->opaque, data, n);
}

rk_status rk_blake2b_final(rk_blake2b_state *st, uint8_t *out, size_t outlen)
{
    if (outlen != st->outlen)
        return rk_error_set(RK_ERR_INVALID, "blake2b final length %zu != init length %zu",
                            outlen, st->outlen);
    if (crypto_generichash_final((crypto_generichash_state *)st->opaque, out, outlen) != 0)
        return RK_ERR_INTERNAL;
    return RK_OK;
}

rk_status rk_blake2b(uint8_t *out, size_t outlen, const void *data, size_t n)
{
    rk_blake2b_state st;
    rk_status s = rk_blake2b_init(&st, outlen);
    if (s != RK_OK)
        return s;
    rk_blake2b_update(&st, data, n);
    return rk_blake2b_final(&st, out, outlen);
}

char *rk_hex(char *out, const uint8_t *data, size_t n)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[data[i] >> 4];
        out[2 * i + 1] = digits[data[i] & 15];
    }
    out[2 * n] = '\0';
    return out;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

rk_status rk_unhex(uint8_t *out, size_t n, const char *hex)
{
    if (!hex || strlen(hex) != 2 * n)
        return rk_error_set(RK_ERR_FORMAT, "expected %zu hex digits", 2 * n);
    for (size_t i = 0; i < n; i++) {
        int hi = hexval(hex[2 * i]), lo = hexval(hex[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return rk_error_set(RK_ERR_FORMAT, "bad hex digit at offset %zu", 2 * i);
        out[i] = (uint8_t)(hi << 4 | lo);
    }
    return RK_OK;
}
