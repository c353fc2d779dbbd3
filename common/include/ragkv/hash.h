/*
 * ragkv/hash.h — the two hashes ragkv uses.
 *
 * - XXH3-64 (libxxhash; an AVX2 build of it where the CPU has AVX2): fast, non-cryptographic; checksums of container sections and blobs.
 * - BLAKE2b (libsodium): cryptographic; content-addressed chunk identity, so that a chunk key
 *   cannot be forged to collide with another tenant's chunk.
 *
 *     uint64_t sum = rk_xxh3_64(buf, n);
 *
 *     rk_blake2b_state st;
 *     rk_blake2b_init(&st, 32);
 *     rk_blake2b_update(&st, model_id, strlen(model_id));
 *     rk_blake2b_update(&st, tokens, ntok * sizeof(int32_t));
 *     uint8_t key[32];
 *     rk_blake2b_final(&st, key, 32);
 */
#ifndef RAGKV_HASH_H
#define RAGKV_HASH_H

#include <stddef.h>
#include <stdint.h>

#include "ragkv/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* XXH3 64-bit hash of n bytes (seed 0). data may be NULL when n == 0. */
uint64_t rk_xxh3_64(const void *data, size_t n);
/* The same hash by libxxhash's own build, and whether rk_xxh3_64 takes a faster one (an AVX2
 * build of the same code, chosen at run time): for tests and benchmarks. */
uint64_t rk_xxh3_64_lib(const void *data, size_t n);
int rk_xxh3_64_simd(void);

/* Opaque-sized BLAKE2b streaming state; large enough for libsodium's state. */
typedef struct rk_blake2b_state {
    _Alignas(64) unsigned char opaque[384];
    size_t outlen; /* digest length requested at init, 16..64 */
} rk_blake2b_state;

/* Start a BLAKE2b digest of outlen bytes (16..64). RK_ERR_INVALID on a bad length. */
rk_status rk_blake2b_init(rk_blake2b_state *st, size_t outlen);
void rk_blake2b_update(rk_blake2b_state *st, const void *data, size_t n);
/* Write the digest (st->outlen bytes) to out; outlen must equal the init length. */
rk_status rk_blake2b_final(rk_blake2b_state *st, uint8_t *out, size_t outlen);

/* One-shot BLAKE2b of n bytes into out[outlen] (16..64). */
rk_status rk_blake2b(uint8_t *out, size_t outlen, const void *data, size_t n);

/* Lower-case hex of n bytes into out (2n+1 bytes, NUL-terminated). Returns out. */
char *rk_hex(char *out, const uint8_t *data, size_t n);

/* Parse 2n hex digits into out[n]; RK_ERR_FORMAT on a bad digit or length. */
rk_status rk_unhex(uint8_t *out, size_t n, const char *hex);

#ifdef __cplusplus
}
#endif
#endif
