/* stats.c — the small statistics the benchmarks share. */
#include <stdlib.h>

#include "ragkv/bench.h"

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

void bench_sort(double *v, size_t n)
{
    qsort(v, n, sizeof(double), cmp_d);
}

double bench_median(double *v, int n)
{
    bench_sort(v, (size_t)n);
    return v[n / 2];
}
