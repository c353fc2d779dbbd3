/* alloc.c — thin, checked wrappers over the C allocator. */
#include "ragkv/alloc.h"

#include <stdlib.h>
#include <string.h>

void *rk_malloc(size_t n)
{
    return malloc(n ? n : 1);
}

void *rk_calloc(size_t count, size_t n)
{
    size_t total;
    if (!rk_mul_size(count, n, &total))
        return NULL;
    return calloc(1, total ? total : 1);
}

void *rk_realloc(void *p, size_t n)
{
    return realloc(p, n ? n : 1);
}

void rk_free(void *p)
{
    free(p);
}

char *rk_strdup(const char *s)
{
    if (!s)
        return NULL;
    size_t n = strlen(s) + 1;
    char *d = rk_malloc(n);
    if (d)
        memcpy(d, s, n);
    return d;
}

void *rk_aligned_alloc(size_t align, size_t n)
{
    void *p = NULL;
    if (posix_memalign(&p, align, n ? n : 1) != 0)
        return NULL;
    return p;
}

void rk_aligned_free(void *p)
{
    free(p);
}
