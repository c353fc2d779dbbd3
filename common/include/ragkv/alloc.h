/*
 * ragkv/alloc.h — allocation helpers with overflow checks.
 *
 * rk_malloc/rk_calloc/rk_realloc return NULL on failure (never abort); rk_free(NULL) is a
 * no-op. Sizes that come from untrusted input go through rk_mul_size()/rk_add_size() first:
 *
 *     size_t n;
 *     if (!rk_mul_size(rows, cols, &n) || !rk_mul_size(n, sizeof(float), &n))
 *         return rk_error_set(RK_ERR_LIMIT, "tensor too large");
 *     float *x = rk_malloc(n);
 */
#ifndef RAGKV_ALLOC_H
#define RAGKV_ALLOC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Default alignment of rk_aligned_alloc: one cache line, enough for AVX-512 loads. */
#define RK_ALIGN 64

void *rk_malloc(size_t n);               /* caller frees with rk_free */
void *rk_calloc(size_t count, size_t n); /* zeroed; overflow of count*n returns NULL */
void *rk_realloc(void *p, size_t n);     /* as realloc; on failure p stays valid */
void rk_free(void *p);                   /* NULL is a no-op */
char *rk_strdup(const char *s);          /* caller frees with rk_free; NULL in, NULL out */

/* Aligned to `align` (a power of two, >= sizeof(void*)); free with rk_aligned_free. */
void *rk_aligned_alloc(size_t align, size_t n);
void rk_aligned_free(void *p);

/* *out = a*b or a+b; false (and *out untouched) on overflow. */
static inline bool rk_mul_size(size_t a, size_t b, size_t *out)
{
    size_t r;
    if (__builtin_mul_overflow(a, b, &r))
        return false;
    *out = r;
    return true;
}

static inline bool rk_add_size(size_t a, size_t b, size_t *out)
{
    size_t r;
    if (__builtin_add_overflow(a, b, &r))
        return false;
    *out = r;
    return true;
}

#ifdef __cplusplus
}
#endif
#endif
