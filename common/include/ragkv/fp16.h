/*
 * ragkv/fp16.h — IEEE half and bfloat16 conversions (CPU reference; round to nearest even).
 *
 *     uint16_t h = rk_f32_to_f16(1.5f);   float x = rk_f16_to_f32(h);
 */
#ifndef RAGKV_FP16_H
#define RAGKV_FP16_H

#include <stdint.h>
#include <string.h>

static inline uint32_t rk_f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static inline float rk_bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline float rk_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t man = h & 0x3ff;
    if (exp == 0) {
        if (man == 0)
            return rk_bits_f32(sign);
        /* subnormal: value = man * 2^-24 */
        float v = (float)man * (1.0f / 16777216.0f);
        return sign ? -v : v;
    }
    if (exp == 31)
        return rk_bits_f32(sign | 0x7f800000u | (man << 13));
    return rk_bits_f32(sign | ((exp + 112) << 23) | (man << 13));
}

static inline uint16_t rk_f32_to_f16(float f)
{
    uint32_t x = rk_f32_bits(f);
    uint32_t sign = (x >> 16) & 0x8000;
    uint32_t ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u) /* Inf or NaN (NaN stays quiet NaN) */
        return (uint16_t)(sign | 0x7c00 | (ax > 0x7f800000u ? 0x200 : 0));
    if (ax >= 0x477ff000u) /* rounds to >= 65520: overflow to Inf */
        return (uint16_t)(sign | 0x7c00);
    if (ax < 0x38800000u) { /* below 2^-14: subnormal or zero */
        float v = rk_bits_f32(ax) * 16777216.0f; /* scale to units of 2^-24 */
        uint32_t m = (uint32_t)v;
        float rem = v - (float)m;
        if (rem > 0.5f || (rem == 0.5f && (m & 1)))
            m++;
        return (uint16_t)(sign | m);
    }
    uint32_t e = (ax >> 23) - 112;
    uint32_t m = ax & 0x7fffff;
    uint32_t h = (e << 10) | (m >> 13);
    uint32_t rest = m & 0x1fff;
    if (rest > 0x1000 || (rest == 0x1000 && (h & 1)))
        h++; /* may carry into the exponent, which is still correct */
    return (uint16_t)(sign | h);
}

static inline float rk_bf16_to_f32(uint16_t b)
{
    return rk_bits_f32((uint32_t)b << 16);
}

static inline uint16_t rk_f32_to_bf16(float f)
{
    uint32_t x = rk_f32_bits(f);
    if ((x & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((x >> 16) | 0x40); /* quiet NaN */
    x += 0x7fff + ((x >> 16) & 1);
    return (uint16_t)(x >> 16);
}

#endif
