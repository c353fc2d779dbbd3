/*
 * ragkv/clock.h — monotonic and wall clocks.
 *
 *     uint64_t t0 = rk_now_ns();  ...;  double ms = (rk_now_ns() - t0) / 1e6;
 */
#ifndef RAGKV_CLOCK_H
#define RAGKV_CLOCK_H

#include <stdint.h>
#include <time.h>

/* Monotonic nanoseconds (for durations; arbitrary origin). */
static inline uint64_t rk_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Wall-clock milliseconds since the Unix epoch (for timestamps stored in records). */
static inline uint64_t rk_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000ull + (uint64_t)ts.tv_nsec / 1000000ull;
}

#endif
