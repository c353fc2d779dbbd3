/* Tests of common/: status codes, fp16/bf16, hashes, bytes, the thread pool. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "ragkv/alloc.h"
#include "ragkv/bytes.h"
#include "ragkv/fp16.h"
#include "ragkv/hash.h"
#include "ragkv/status.h"
#include "ragkv/thread.h"

Test(status, names_and_messages)
{
    cr_expect_str_eq(rk_strerror(RK_OK), "success");
    cr_expect_str_eq(rk_status_name(RK_ERR_QUOTA), "RK_ERR_QUOTA");
    cr_expect_str_eq(rk_strerror((rk_status)-9999), "unknown error");
    /* every code from -1 down to the last has a distinct name */
    for (int c = -1; c >= RK_ERR_NOT_IMPLEMENTED; c--)
        cr_expect_str_neq(rk_status_name((rk_status)c), "RK_ERR_UNKNOWN", "code %d", c);
    cr_expect_eq(rk_error_set(RK_ERR_FORMAT, "bad %s at %d", "thing", 7), RK_ERR_FORMAT);
    cr_expect_str_eq(rk_error_msg(), "bad thing at 7");
    rk_error_clear();
    cr_expect_str_eq(rk_error_msg(), "");
}

Test(fp16, exact_values_round_trip)
{
    /* values exactly representable in half precision survive both ways */
    const float exact[] = {0.0f, -0.0f, 1.0f, -2.5f, 65504.0f, 6.103515625e-05f /* min normal */,
                           5.960464477539063e-08f /* min subnormal */, 0.333251953125f};
    for (size_t i = 0; i < sizeof(exact) / sizeof(exact[0]); i++) {
        float back = rk_f16_to_f32(rk_f32_to_f16(exact[i]));
        cr_expect(memcmp(&back, &exact[i], 4) == 0, "value %g came back as %g", exact[i], back);
    }
    cr_expect_eq(rk_f32_to_f16(1.0f), 0x3c00);
    cr_expect_eq(rk_f32_to_f16(65520.0f), 0x7c00, "overflow rounds to infinity");
    cr_expect_eq(rk_f32_to_f16(INFINITY), 0x7c00);
    cr_expect(isnan(rk_f16_to_f32(rk_f32_to_f16(NAN))));
}

Test(fp16, all_halves_round_trip_and_rounding_is_nearest)
{
    for (uint32_t h = 0; h < 0x10000; h++) {
        if ((h & 0x7c00) == 0x7c00 && (h & 0x3ff))
            continue; /* NaN payloads */
        float f = rk_f16_to_f32((uint16_t)h);
        cr_assert_eq(rk_f32_to_f16(f), h, "half 0x%04x -> %g -> 0x%04x", h, f, rk_f32_to_f16(f));
    }
    /* 1 + 2^-11 is halfway between 1 and 1+2^-10: ties go to even (1.0) */
    cr_expect_eq(rk_f32_to_f16(1.0f + 0.00048828125f), 0x3c00);
    cr_expect_eq(rk_f32_to_f16(1.0f + 0.0009765625f + 0.00048828125f), 0x3c02);
    cr_expect_eq(rk_f32_to_bf16(1.0f), 0x3f80);
    cr_expect_float_eq(rk_bf16_to_f32(rk_f32_to_bf16(3.140625f)), 3.140625f, 0);
}

Test(hash, known_vectors)
{
    /* BLAKE2b-256 of the empty string and XXH3-64 of the empty string (reference values) */
    uint8_t d[32];
    char hex[65];
    cr_assert_eq(rk_blake2b(d, 32, "", 0), RK_OK);
    cr_expect_str_eq(rk_hex(hex, d, 32), "0e5751c026e543b2e8ab2eb06099daa1d1e5df47778f7787faab45cdf12fe3a8");
    cr_expect_eq(rk_xxh3_64("", 0), 0x2D06800538D394C2ull);
    cr_expect_eq(rk_blake2b(d, 8, "x", 1), RK_ERR_INVALID, "digest shorter than 16 bytes");
}

/* rk_xxh3_64 (an AVX2 build where the CPU has AVX2) gives libxxhash's answer for every
 * length class XXH3 distinguishes (0, 1-3, 4-8, 9-16, 17-128, 129-240, long inputs with
 * partial stripes and blocks) and for unaligned starts; a changed byte changes both alike. */
Test(hash, xxh3_fast_build_equals_libxxhash)
{
    size_t cap = (1u << 20) + 64;
    uint8_t *buf = malloc(cap);
    cr_assert(buf);
    uint64_t r = 0x243f6a8885a308d3ull;
    for (size_t i = 0; i < cap; i++) {
        r ^= r << 13, r ^= r >> 7, r ^= r << 17;
        buf[i] = (uint8_t)(r >> 56);
    }
    static const size_t lens[] = {0,   1,   3,   4,    8,    9,    16,   17,   128,   129,    240,
                                  241, 255, 256, 1023, 1024, 1025, 4095, 4096, 65537, 1u << 20};
    for (size_t k = 0; k < sizeof(lens) / sizeof(lens[0]); k++)
        for (size_t off = 0; off < 64; off += 13) {
            size_t n = lens[k];
            cr_expect_eq(rk_xxh3_64(buf + off, n), rk_xxh3_64_lib(buf + off, n), "length %zu at offset %zu", n, off);
        }
    uint64_t before = rk_xxh3_64(buf, 1u << 20);
    buf[777777] ^= 1;
    cr_expect_neq(rk_xxh3_64(buf, 1u << 20), before);
    cr_expect_eq(rk_xxh3_64(buf, 1u << 20), rk_xxh3_64_lib(buf, 1u << 20));
    if (!rk_xxh3_64_simd())
        cr_log_warn("this CPU or build has no faster XXH3: both sides were libxxhash");
    free(buf);
}

Test(hash, streaming_equals_one_shot_and_hex_round_trips)
{
    const char msg[] = "the quick brown fox jumps over the lazy dog";
    uint8_t a[32], b[32], c[32];
    rk_blake2b(a, 32, msg, sizeof(msg) - 1);
    rk_blake2b_state st;
    rk_blake2b_init(&st, 32);
    rk_blake2b_update(&st, msg, 10);
    rk_blake2b_update(&st, msg + 10, sizeof(msg) - 11);
    rk_blake2b_final(&st, b, 32);
    cr_expect(memcmp(a, b, 32) == 0);
    char hex[65];
    rk_hex(hex, a, 32);
    cr_expect_eq(rk_unhex(c, 32, hex), RK_OK);
    cr_expect(memcmp(a, c, 32) == 0);
    hex[5] = 'z';
    cr_expect_eq(rk_unhex(c, 32, hex), RK_ERR_FORMAT);
    cr_expect_eq(rk_unhex(c, 32, "abcd"), RK_ERR_FORMAT);
}

Test(bytes, buffer_and_reader)
{
    rk_buf b = RK_BUF_INIT;
    rk_buf_put_u8(&b, 0xab);
    rk_buf_put_u16(&b, 0x1234);
    rk_buf_put_u32(&b, 0xdeadbeef);
    rk_buf_put_u64(&b, 0x0102030405060708ull);
    for (int i = 0; i < 1000; i++)
        rk_buf_append(&b, "xyz", 3);
    cr_assert(!b.failed);
    cr_expect_eq(b.len, 1 + 2 + 4 + 8 + 3000);
    cr_expect_eq(b.data[1], 0x34, "little-endian");
    rk_reader r = rk_reader_make(b.data, b.len);
    cr_expect_eq(rk_reader_u8(&r), 0xab);
    cr_expect_eq(rk_reader_u16(&r), 0x1234);
    cr_expect_eq(rk_reader_u32(&r), 0xdeadbeefu);
    cr_expect_eq(rk_reader_u64(&r), 0x0102030405060708ull);
    cr_expect_not_null(rk_reader_take(&r, 3000));
    cr_expect(!r.short_read);
    cr_expect_eq(rk_reader_u32(&r), 0, "reading past the end gives zero");
    cr_expect(r.short_read);
    rk_buf_free(&b);
    size_t n;
    cr_expect(!rk_mul_size(SIZE_MAX / 2 + 1, 2, &n), "overflow detected");
    cr_expect(rk_mul_size(1000, 1000, &n) && n == 1000000);
}

struct sum_ctx {
    atomic_ullong sum;
    atomic_int calls;
    unsigned char *seen; /* (n) each index visited exactly once */
    rk_pool *pool;
};

static void sum_range(void *arg, size_t b, size_t e)
{
    struct sum_ctx *c = arg;
    atomic_fetch_add(&c->calls, 1);
    for (size_t i = b; i < e; i++) {
        c->seen[i]++;
        atomic_fetch_add(&c->sum, i);
    }
}

Test(thread, parallel_for_covers_range_once)
{
    rk_pool *pool;
    cr_assert_eq(rk_pool_create(3, &pool), RK_OK);
    cr_expect_eq(rk_pool_size(pool), 3);
    const size_t sizes[] = {1, 2, 7, 100, 100003};
    for (size_t s = 0; s < sizeof(sizes) / sizeof(sizes[0]); s++) {
        size_t n = sizes[s];
        struct sum_ctx c = {.seen = calloc(n, 1)};
        rk_pool_for(pool, n, 0, sum_range, &c);
        cr_expect_eq(atomic_load(&c.sum), (unsigned long long)n * (n - 1) / 2, "n=%zu", n);
        for (size_t i = 0; i < n; i++)
            cr_assert_eq(c.seen[i], 1, "n=%zu index %zu visited %d times", n, i, c.seen[i]);
        free(c.seen);
    }
    rk_pool_free(pool);
    rk_pool_free(NULL);
}

static void nested_outer(void *arg, size_t b, size_t e)
{
    struct sum_ctx *c = arg;
    for (size_t i = b; i < e; i++) {
        struct sum_ctx inner = {.seen = calloc(64, 1)};
        rk_pool_for(c->pool, 64, 1, sum_range, &inner);
        atomic_fetch_add(&c->sum, atomic_load(&inner.sum));
        free(inner.seen);
    }
}

Test(thread, nested_parallel_for_does_not_deadlock)
{
    rk_pool *pool;
    cr_assert_eq(rk_pool_create(2, &pool), RK_OK);
    struct sum_ctx c = {.pool = pool};
    rk_pool_for(pool, 32, 1, nested_outer, &c);
    cr_expect_eq(atomic_load(&c.sum), 32ull * (64 * 63 / 2));
    rk_pool_free(pool);
}

static void bump(void *arg)
{
    atomic_fetch_add((atomic_int *)arg, 1);
}

Test(thread, submitted_tasks_all_run_before_free)
{
    rk_pool *pool;
    atomic_int n = 0;
    cr_assert_eq(rk_pool_create(2, &pool), RK_OK);
    for (int i = 0; i < 1000; i++)
        cr_assert_eq(rk_pool_submit(pool, bump, &n), RK_OK);
    rk_pool_free(pool); /* drains the queue */
    cr_expect_eq(atomic_load(&n), 1000);
}
