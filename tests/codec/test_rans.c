/* test_rans.c — white-box (the style guide's exception, so it says so): the decode-only models
 * (rans_dmodel, codec/codec_impl.h) that the AVX2 decoder reads with gathers. For every slot of
 * adversarial and random models, the decoder's look-up done in scalar form — the same reads at
 * the same byte offsets — must find the symbol and interval of the reference model, and never
 * read outside the struct. */
#include <criterion/criterion.h>
#include <stddef.h>
#include <string.h>

#include "../../codec/codec_impl.h"

/* The 32-bit little-endian word at byte offset off of d, as a gather lane reads it. */
static uint32_t word_at(const rans_dmodel *d, size_t off)
{
    cr_assert(off + 4 <= sizeof *d, "read at byte %zu of a %zu-byte model", off, sizeof *d);
    const uint8_t *b = (const uint8_t *)d + off;
    return (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
}

/* Build both forms from freq[nsym] and check every slot; returns the number of steps (up or
 * down) past the bucket's first guess. */
static uint64_t check_model(const uint16_t *freq, int nsym, const char *what)
{
    rans_model m;
    rans_dmodel d;
    cr_assert_eq(rans_model_build(freq, nsym, &m), RK_OK, "%s: %s", what, rk_error_msg());
    rans_dmodel_build(&m, &d);
    const uint32_t bs = 1u << RANS_DBUCKET_BITS;
    uint64_t steps = 0;
    uint32_t ref = 0;
    for (uint32_t slot = 0; slot < RANS_PROB_SCALE; slot++) {
        while (m.cum[ref + 1] <= slot)
            ref++;
        uint32_t e = word_at(&d, offsetof(rans_dmodel, bucket) + 2 * (slot >> RANS_DBUCKET_BITS)) & 0xffff;
        uint32_t s = (e + (slot & (bs - 1))) >> RANS_DBUCKET_BITS, lo, hi, up = 0;
        for (;;) {
            uint32_t w = word_at(&d, offsetof(rans_dmodel, cum) + 2 * (size_t)s);
            lo = w & 0xffff;
            hi = (((w >> 16) - 1) & 0xffff) + 1;
            if (hi > slot && lo <= slot)
                break;
            cr_assert(up < 64, "%s: slot %u: no convergence", what, slot);
            s = hi <= slot ? s + 1 : s - 1;
            up++;
        }
        cr_assert(s == ref && lo == m.cum[s] && hi == m.cum[s + 1],
                  "%s: slot %u: symbol %u [%u, %u), want %u [%u, %u)", what, slot, s, lo, hi, ref,
                  m.cum[ref], m.cum[ref + 1]);
        /* a bucket with at most one boundary inside needs no step-up */
        uint32_t b0 = slot & ~(bs - 1), first = 0;
        while (m.cum[first + 1] <= b0)
            first++;
        if (first + 1 >= (uint32_t)nsym || m.cum[first + 2] >= b0 + bs)
            cr_assert_eq(up, 0, "%s: slot %u: %u step-ups in a bucket with one boundary", what,
                         slot, up);
        steps += up;
    }
    return steps;
}

Test(rans_dmodel, adversarial_models)
{
    uint16_t f[CODEC_MAX_SYMBOLS];
    const uint16_t two[][2] = {{1, 65535}, {65535, 1}, {32768, 32768}, {512, 65024},
                               {511, 65025}, {513, 65023}};
    for (size_t i = 0; i < sizeof two / sizeof two[0]; i++)
        check_model(two[i], 2, "nsym 2");
    for (int big = 0; big < 64; big += 21) { /* one symbol 65536 - 63, the others 1 */
        for (int s = 0; s < 64; s++)
            f[s] = s == big ? 65536 - 63 : 1;
        check_model(f, 64, "nsym 64, one dominant symbol");
    }
    for (int s = 0; s < 64; s++) /* every boundary on a bucket edge */
        f[s] = 1024;
    check_model(f, 64, "nsym 64, 1024 each");
    for (int s = 0; s < 64; s++) /* rare and common symbols alternate */
        f[s] = s % 2 ? 1 : 2047;
    check_model(f, 64, "nsym 64, 1 and 2047");
    for (int s = 0; s < 64; s++) /* 62 symbols of frequency 1 inside one bucket */
        f[s] = s == 0 ? 32768 : s == 63 ? 65536 - 32768 - 62 : 1;
    uint64_t steps = check_model(f, 64, "nsym 64, a run of 1s");
    cr_assert_gt(steps, 0, "the step-up path was not exercised");
    for (int s = 0; s < 63; s++) /* the largest alphabet the quantizer makes, qmax 31 */
        f[s] = s == 31 ? 65536 - 62 : 1;
    check_model(f, 63, "nsym 63, one dominant symbol");
    /* an unused tail of 30 symbols below a common one, all in the first bucket: the common
       symbol's slots there need no steps, only the tails' own 61 slots do (930 steps in all;
       a look-up that only stepped up from the bucket's first symbol took 29 for each of the
       common symbol's 482 slots there: ~14,800) */
    for (int s = 0; s < 63; s++)
        f[s] = s < 30 ? 1 : s == 30 ? 20000 : s == 31 ? 65536 - 20000 - 31 * 1 - 30 : 1;
    steps = check_model(f, 63, "nsym 63, a tail of 1s below");
    cr_assert_lt(steps, 1000, "%llu steps", (unsigned long long)steps);
}

Test(rans_dmodel, random_models)
{
    uint64_t r = 12345;
    uint64_t counts[CODEC_MAX_SYMBOLS];
    uint16_t f[CODEC_MAX_SYMBOLS];
    for (int it = 0; it < 150; it++) {
        r = r * 6364136223846793005ull + 1442695040888963407ull;
        int nsym = 2 + (int)((r >> 33) % 63);
        for (int s = 0; s < nsym; s++) { /* peaked like quantized KV, with empty tails */
            r = r * 6364136223846793005ull + 1442695040888963407ull;
            int dist = s > nsym / 2 ? s - nsym / 2 : nsym / 2 - s;
            counts[s] = (r >> 40) % 2 ? ((r >> 20) % 100000) >> (dist % 20) : 0;
        }
        rans_normalize(counts, nsym, f);
        check_model(f, nsym, "random");
    }
}
